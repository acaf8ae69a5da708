/*
 * emiotctl - cmd_broker.c: `emiotctl broker config`: the production mosquitto configuration.
 */
#include <stddef.h>

#include "ctl.h"

const ctl_cmd_t ctl_broker_cmds[] = {
    {NULL, NULL, NULL, 0, 0, NULL, NULL, NULL},
};
