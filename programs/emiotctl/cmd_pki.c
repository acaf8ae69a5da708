/*
 * emiotctl - cmd_pki.c: `emiotctl pki ...`: the local CA directory.
 */
#include <stddef.h>

#include "ctl.h"

const ctl_cmd_t ctl_pki_cmds[] = {
    {NULL, NULL, NULL, 0, 0, NULL, NULL, NULL},
};
