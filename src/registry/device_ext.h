/*
 * emiot - device_ext.h (internal): the rarely used parts of a device.
 *
 * Most devices only ever have a status. What only some devices need (latest
 * telemetry, the command rate-limit window) lives in an extension allocated on
 * first use, so that a million idle devices do not pay for it.
 */
#ifndef EM_REGISTRY_DEVICE_EXT_H
#define EM_REGISTRY_DEVICE_EXT_H

#include <stdbool.h>

#include "core/ratelimit.h"
#include "emiot/device.h"
#include "emiot/status.h"

struct em__device_ext {
    em_telemetry_t telemetry; /* latest sample, valid when has_telemetry */
    bool has_telemetry;
    /* The last energy counter seen, kept even when a later sample has no
     * energy field, so consumption is always measured against it. */
    bool has_energy;
    double energy_wh;
    em__window_t *cmd_window; /* command rate limit; owned, NULL until first command */
};

/* The device's extension, allocated (zeroed) on first call. NULL on OOM. */
struct em__device_ext *em__device_ext(em_device_t *dev);

/* Frees an extension and what it owns. Accepts NULL. */
void em__device_ext_free(struct em__device_ext *ext);

#endif /* EM_REGISTRY_DEVICE_EXT_H */
