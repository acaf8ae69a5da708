/*
 * emiot - registry.h: the device registry and groups.
 *
 * An in-memory index of devices by id and of groups by name, sized for
 * millions of devices (a device costs well under 300 bytes). The registry is
 * not thread-safe: the manager serialises access to it with its own lock.
 *
 * Device pointers returned by the registry stay valid until that device is
 * removed or the registry is freed (devices never move in memory).
 */
#ifndef EMIOT_REGISTRY_H
#define EMIOT_REGISTRY_H

#include <stddef.h>
#include <stdint.h>

#include "emiot/device.h"
#include "emiot/error.h"
#include "emiot/export.h"
#include "emiot/status.h"

#ifdef __cplusplus
extern "C" {
#endif

typedef struct em_registry em_registry_t;

#define EM_REGISTRY_DEVICES_MAX_DEFAULT 10000000u
#define EM_REGISTRY_GROUPS_MAX_DEFAULT  100000u
#define EM_DEVICE_GROUPS_MAX            64 /* groups one device may belong to */

/*
 * Creates an empty registry. capacity_hint pre-sizes the index (0 is fine);
 * max_devices caps it (0 means EM_REGISTRY_DEVICES_MAX_DEFAULT).
 * Returns NULL on allocation failure.
 */
EM_EXPORT em_registry_t *em_registry_new(size_t capacity_hint, size_t max_devices);

/* Frees the registry and every device and group. Accepts NULL. */
EM_EXPORT void em_registry_free(em_registry_t *reg);

EM_EXPORT size_t em_registry_count(const em_registry_t *reg);
EM_EXPORT size_t em_registry_group_count(const em_registry_t *reg);

/*
 * Registers a device. id is validated (em_device_id_validate), name
 * (em_device_name_validate; NULL or "" means "use the id"), type must be a
 * known em_device_type_t, cfg (may be NULL) is validated. created_at and
 * updated_at are set to now_ms. On success *out (when not NULL) points to it.
 * Errors: EM_ERR_VALIDATION, EM_ERR_EXISTS, EM_ERR_LIMIT (max_devices),
 * EM_ERR_NOMEM.
 */
EM_EXPORT em_err_t em_registry_add(em_registry_t *reg, const char *id, const char *name,
                                   em_device_type_t type, const em_device_config_t *cfg,
                                   int64_t now_ms, em_device_t **out, em_error_t *err);

/* Looks a device up by id (len bytes, not NUL-terminated). NULL if absent. */
EM_EXPORT em_device_t *em_registry_find(const em_registry_t *reg, const char *id, size_t len);

/* As em_registry_find with a NUL-terminated id. */
EM_EXPORT em_device_t *em_registry_get(const em_registry_t *reg, const char *id);

/*
 * Updates a device: name (NULL = unchanged), type (NULL = unchanged), config
 * (NULL = unchanged; fields set in cfg->has are merged into the device's).
 * updated_at becomes now_ms. Errors: EM_ERR_DEVICE_NOT_FOUND, EM_ERR_VALIDATION,
 * EM_ERR_NOMEM (device unchanged).
 */
EM_EXPORT em_err_t em_registry_update(em_registry_t *reg, const char *id, const char *name,
                                      const em_device_type_t *type, const em_device_config_t *cfg,
                                      int64_t now_ms, em_error_t *err);

/* Removes a device from the registry and from all its groups, and frees it.
 * Errors: EM_ERR_DEVICE_NOT_FOUND. */
EM_EXPORT em_err_t em_registry_remove(em_registry_t *reg, const char *id, em_error_t *err);

/*
 * Replaces the device's status with *st, taking ownership of st's heap
 * strings (st is zeroed on return). updated_at is not changed: status is not
 * a change of the device's definition. Never fails.
 */
EM_EXPORT void em_registry_set_status(em_registry_t *reg, em_device_t *dev, em_status_t *st);

/*
 * Records a telemetry sample as the device's latest. When the new energy
 * counter is lower than the previous one, *counter_reset (when not NULL) is set
 * to 1 and the consumption since the previous sample is counted from zero;
 * *delta_wh (when not NULL) receives the consumption since the previous sample
 * (never negative; 0 for the first sample). Errors: EM_ERR_NOMEM.
 */
EM_EXPORT em_err_t em_registry_set_telemetry(em_registry_t *reg, em_device_t *dev,
                                             const em_telemetry_t *t, double *delta_wh,
                                             int *counter_reset);

/* The device's latest telemetry, or NULL if none was recorded. */
EM_EXPORT const em_telemetry_t *em_registry_telemetry(const em_device_t *dev);

/*
 * Calls fn for every device (in no particular order) until fn returns non-zero.
 * fn must not add or remove devices. Returns the number of devices visited.
 */
typedef int (*em_device_fn)(em_device_t *dev, void *userdata);
EM_EXPORT size_t em_registry_foreach(const em_registry_t *reg, em_device_fn fn, void *userdata);

/* Groups. */

/* Creates a group. Errors: EM_ERR_VALIDATION (name), EM_ERR_EXISTS,
 * EM_ERR_LIMIT, EM_ERR_NOMEM. */
EM_EXPORT em_err_t em_registry_group_create(em_registry_t *reg, const char *name, em_error_t *err);

/* Removes a group (its devices stay registered). EM_ERR_GROUP_NOT_FOUND. */
EM_EXPORT em_err_t em_registry_group_remove(em_registry_t *reg, const char *name, em_error_t *err);

/* 1 when the group exists, else 0. */
EM_EXPORT int em_registry_group_exists(const em_registry_t *reg, const char *name);

/*
 * Adds a device to a group. Adding a device already in the group is not an
 * error (EM_OK, nothing changes). Errors: EM_ERR_DEVICE_NOT_FOUND,
 * EM_ERR_GROUP_NOT_FOUND, EM_ERR_LIMIT (EM_DEVICE_GROUPS_MAX), EM_ERR_NOMEM.
 */
EM_EXPORT em_err_t em_registry_group_add(em_registry_t *reg, const char *group, const char *id,
                                         em_error_t *err);

/* Removes a device from a group. Errors: EM_ERR_DEVICE_NOT_FOUND,
 * EM_ERR_GROUP_NOT_FOUND, EM_ERR_INVALID_ARGUMENT (device not in the group). */
EM_EXPORT em_err_t em_registry_group_remove_device(em_registry_t *reg, const char *group,
                                                   const char *id, em_error_t *err);

/* Number of devices in a group (0 when the group does not exist). */
EM_EXPORT size_t em_registry_group_size(const em_registry_t *reg, const char *name);

/*
 * Calls fn for each device of group, in insertion order except that removals
 * may reorder, until fn returns non-zero. fn must not change group
 * membership. Errors: EM_ERR_GROUP_NOT_FOUND.
 */
EM_EXPORT em_err_t em_registry_group_foreach(const em_registry_t *reg, const char *name,
                                             em_device_fn fn, void *userdata);

/* Calls fn for every group name until fn returns non-zero. */
typedef int (*em_group_fn)(const char *name, size_t size, void *userdata);
EM_EXPORT void em_registry_groups_foreach(const em_registry_t *reg, em_group_fn fn, void *userdata);

/*
 * Calls fn(name) for each group dev belongs to, until fn returns non-zero.
 */
EM_EXPORT void em_registry_device_groups(const em_registry_t *reg, const em_device_t *dev,
                                         em_group_fn fn, void *userdata);

/* Group statistics, as energy-manager-iot's getGroupStatus computes them. */
typedef struct em_group_stats {
    size_t total;           /* devices in the group */
    size_t online;          /* connectionStatus online */
    size_t offline;         /* connectionStatus offline, or no status yet */
    size_t with_battery;    /* devices that reported a battery level */
    double average_battery; /* mean over with_battery (0 when none) */
    size_t power_modes[5];  /* indexed by em_power_mode_t; [EM_POWER_UNKNOWN] = no status */
} em_group_stats_t;

/* Errors: EM_ERR_GROUP_NOT_FOUND. */
EM_EXPORT em_err_t em_registry_group_stats(const em_registry_t *reg, const char *name,
                                           em_group_stats_t *out, em_error_t *err);

/* Approximate heap bytes held by the registry (index, devices, groups). */
EM_EXPORT size_t em_registry_memory(const em_registry_t *reg);

#ifdef __cplusplus
}
#endif

#endif /* EMIOT_REGISTRY_H */
