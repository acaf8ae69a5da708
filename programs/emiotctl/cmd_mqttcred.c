/*
 * emiotctl - cmd_mqttcred.c: `emiotctl devices mqtt-credentials`.
 */
#include <stddef.h>

#include "ctl.h"

const ctl_cmd_t ctl_mqttcred_cmds[] = {
    {NULL, NULL, NULL, 0, 0, NULL, NULL, NULL},
};
