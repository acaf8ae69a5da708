/*
 * emiot - device.h: devices, their configuration and their identifiers.
 *
 * Device ids are 3-50 characters of [A-Za-z0-9_-]; group names are 2-50
 * characters of [A-Za-z0-9 -] (as energy-manager-iot). Names are 1-100 bytes
 * of printable UTF-8 without control characters.
 */
#ifndef EMIOT_DEVICE_H
#define EMIOT_DEVICE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "emiot/error.h"
#include "emiot/export.h"
#include "emiot/status.h"

#ifdef __cplusplus
extern "C" {
#endif

#define EM_DEVICE_ID_MIN   3
#define EM_DEVICE_ID_MAX   50
#define EM_GROUP_NAME_MIN  2
#define EM_GROUP_NAME_MAX  50
#define EM_DEVICE_NAME_MAX 100

typedef enum em_device_type {
    EM_DEVICE_SENSOR = 0,
    EM_DEVICE_CAMERA = 1,
    EM_DEVICE_ACTUATOR = 2,
    EM_DEVICE_GATEWAY = 3,
    EM_DEVICE_GENERIC = 4
} em_device_type_t;

/* Bits of em_device_config_t.has: which fields are set. */
#define EM_CONFIG_HAS_REPORTING_INTERVAL (1u << 0)
#define EM_CONFIG_HAS_SLEEP_THRESHOLD    (1u << 1)
#define EM_CONFIG_HAS_AUTO_WAKE          (1u << 2)
#define EM_CONFIG_HAS_SECURITY_LEVEL     (1u << 3)

#define EM_REPORTING_INTERVAL_MIN 1
#define EM_REPORTING_INTERVAL_MAX 86400
#define EM_SLEEP_THRESHOLD_MAX    100
#define EM_SECURITY_LEVEL_MIN     1
#define EM_SECURITY_LEVEL_MAX     5

typedef struct em_device_config {
    uint32_t reporting_interval; /* seconds, 1..86400 */
    uint8_t sleep_threshold;     /* battery percent, 0..100 */
    uint8_t security_level;      /* 1..5 */
    bool auto_wake;
    uint8_t has; /* EM_CONFIG_HAS_* */
} em_device_config_t;

/*
 * A registered device, as the registry stores it. Read the public fields; do
 * not write them (use the registry or manager functions), and do not touch the
 * fields after the "private" marker. A pointer to a device is valid until the
 * device is removed or the registry is freed; in a manager running its network
 * thread, hold em_manager_lock() while reading.
 */
typedef struct em_device {
    char id[EM_DEVICE_ID_MAX + 1];
    uint8_t id_len;
    uint8_t type;     /* em_device_type_t */
    uint16_t ngroups; /* number of groups the device belongs to */
    uint32_t hash;    /* hash of id (private use) */
    em_device_config_t config;
    char *name;            /* NUL-terminated; never NULL for a registered device */
    int64_t created_at_ms; /* Unix epoch milliseconds */
    int64_t updated_at_ms;
    em_status_t status; /* status.has == 0 until the first status */
    /* private */
    struct em__device_group *groups; /* ngroups entries */
    struct em__device_ext *ext;      /* lazily allocated: telemetry, rate limit */
} em_device_t;

/* Validation: each returns EM_OK or EM_ERR_VALIDATION with err filled (field
 * and rule). len is the length of the string (ids need not be NUL-terminated). */
EM_EXPORT em_err_t em_device_id_validate(const char *id, size_t len, em_error_t *err);
EM_EXPORT em_err_t em_group_name_validate(const char *name, size_t len, em_error_t *err);
EM_EXPORT em_err_t em_device_name_validate(const char *name, size_t len, em_error_t *err);
EM_EXPORT em_err_t em_device_config_validate(const em_device_config_t *cfg, em_error_t *err);

/* "sensor", "camera", "actuator", "gateway", "generic"; NULL if out of range. */
EM_EXPORT const char *em_device_type_name(em_device_type_t type);

/* Parses a type name (exact, lower case). EM_ERR_VALIDATION if unknown. */
EM_EXPORT em_err_t em_device_type_parse(const char *name, size_t len, em_device_type_t *out,
                                        em_error_t *err);

/*
 * Parses a device configuration JSON object ({"reportingInterval":60,
 * "sleepThreshold":20,"autoWake":true,"securityLevel":3}) into out. Unknown keys
 * are rejected; every present key is range checked.
 * Errors: EM_ERR_MESSAGE_FORMAT (not JSON, not an object, too deep or too
 * large), EM_ERR_VALIDATION (a rule broken; err->field names the key).
 */
EM_EXPORT em_err_t em_device_config_decode(const char *json, size_t len, em_device_config_t *out,
                                           em_error_t *err);

/*
 * Writes cfg as a JSON object into buf (NUL-terminated). Returns EM_OK and the
 * length in *out_len, or EM_ERR_BUFFER_TOO_SMALL.
 */
EM_EXPORT em_err_t em_device_config_encode(const em_device_config_t *cfg, char *buf, size_t size,
                                           size_t *out_len);

/*
 * Writes the device as the JSON object energy-manager-iot uses:
 * {"id","name","type","groups":[...],"config":{...},"status":{...}|null,
 *  "createdAt","updatedAt"} with ISO 8601 times. group_names lists the
 * device's groups (may be NULL when n_groups is 0).
 * Returns EM_OK, EM_ERR_BUFFER_TOO_SMALL or EM_ERR_NOMEM.
 */
EM_EXPORT em_err_t em_device_encode(const em_device_t *dev, const char *const *group_names,
                                    size_t n_groups, char *buf, size_t size, size_t *out_len);

#ifdef __cplusplus
}
#endif

#endif /* EMIOT_DEVICE_H */
