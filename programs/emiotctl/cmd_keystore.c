/*
 * emiotctl - cmd_keystore.c: `emiotctl keystore ...`: sealed key files.
 */
#include <stddef.h>

#include "ctl.h"

const ctl_cmd_t ctl_keystore_cmds[] = {
    {NULL, NULL, NULL, 0, 0, NULL, NULL, NULL},
};
