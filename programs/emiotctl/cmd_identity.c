/*
 * emiotctl - cmd_identity.c: `emiotctl devices enroll-token` and the device identity commands.
 */
#include <stddef.h>

#include "ctl.h"

const ctl_cmd_t ctl_identity_cmds[] = {
    {NULL, NULL, NULL, 0, 0, NULL, NULL, NULL},
};
