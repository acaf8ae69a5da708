/*
 * emiot - status.h: what devices report: status, telemetry and events.
 *
 * Decoders take the raw MQTT payload (not NUL-terminated), validate every
 * field and fill a caller-provided structure. They never crash on hostile
 * input: payloads larger than EM_PAYLOAD_MAX, nesting deeper than
 * EM_JSON_DEPTH_MAX, wrong types and out-of-range values are rejected with
 * EM_ERR_MESSAGE_FORMAT or EM_ERR_VALIDATION, and err names the field and rule.
 * Unknown top-level keys are ignored, so devices may send more than emiot reads.
 */
#ifndef EMIOT_STATUS_H
#define EMIOT_STATUS_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "emiot/error.h"
#include "emiot/export.h"

#ifdef __cplusplus
extern "C" {
#endif

#define EM_PAYLOAD_MAX           16384 /* largest payload any decoder accepts */
#define EM_JSON_DEPTH_MAX        8     /* deepest JSON nesting accepted */
#define EM_FIRMWARE_VERSION_MAX  31
#define EM_STATUS_ERRORS_MAX     16     /* entries in "errors" */
#define EM_STATUS_ERROR_LEN_MAX  256    /* bytes per entry */
#define EM_STATUS_EXTRA_MAX      4096   /* bytes of compact JSON kept for additionalInfo */
#define EM_SIGNAL_MIN            (-150) /* dBm */
#define EM_SIGNAL_MAX            0
#define EM_CLOCK_SKEW_MS_DEFAULT 300000 /* telemetry timestamps may lead the clock by this */

typedef enum em_power_mode {
    EM_POWER_UNKNOWN = 0,
    EM_POWER_NORMAL = 1,
    EM_POWER_LOW_POWER = 2,
    EM_POWER_SLEEP = 3,
    EM_POWER_CRITICAL = 4
} em_power_mode_t;

typedef enum em_conn_status {
    EM_CONN_UNKNOWN = 0,
    EM_CONN_ONLINE = 1,
    EM_CONN_OFFLINE = 2,
    EM_CONN_INTERMITTENT = 3
} em_conn_status_t;

/* Bits of em_status_t.has. */
#define EM_STATUS_HAS_BATTERY    (1u << 0)
#define EM_STATUS_HAS_POWER_MODE (1u << 1)
#define EM_STATUS_HAS_CONNECTION (1u << 2)
#define EM_STATUS_HAS_FIRMWARE   (1u << 3)
#define EM_STATUS_HAS_SIGNAL     (1u << 4)
#define EM_STATUS_HAS_ERRORS     (1u << 5)
#define EM_STATUS_HAS_EXTRA      (1u << 6)
#define EM_STATUS_HAS_LAST_SEEN  (1u << 7)

/*
 * A device status. errors_json and extra_json are heap strings owned by the
 * status (free them with em_status_cleanup); both are NULL when the device sent
 * an empty list/object or none, which is the common case and costs nothing.
 */
typedef struct em_status {
    uint16_t has;                                       /* EM_STATUS_HAS_* */
    uint8_t battery_level;                              /* 0..100 */
    uint8_t power_mode;                                 /* em_power_mode_t */
    uint8_t connection;                                 /* em_conn_status_t */
    int16_t signal_strength;                            /* dBm, -150..0 */
    char firmware_version[EM_FIRMWARE_VERSION_MAX + 1]; /* [0-9A-Za-z.+_-], "" if absent */
    int64_t last_seen_ms;                               /* when the manager received it */
    char *errors_json;                                  /* compact JSON array of strings, or NULL */
    char *extra_json; /* compact JSON object (additionalInfo), or NULL */
} em_status_t;

/* Frees the heap strings of st and zeroes it. Accepts NULL. */
EM_EXPORT void em_status_cleanup(em_status_t *st);

/* Deep copy; dst must be cleaned up by the caller. EM_ERR_NOMEM on failure
 * (dst is then zeroed). */
EM_EXPORT em_err_t em_status_copy(em_status_t *dst, const em_status_t *src);

/*
 * Decodes a status payload:
 * {"batteryLevel":75,"powerMode":"normal","connectionStatus":"online",
 *  "firmwareVersion":"1.2.3","signalStrength":-67,"errors":[],"additionalInfo":{}}
 * Every field is optional; present fields must be valid. out is zeroed first;
 * on failure it holds nothing to free. Errors: EM_ERR_MESSAGE_FORMAT,
 * EM_ERR_VALIDATION, EM_ERR_NOMEM.
 */
EM_EXPORT em_err_t em_status_decode(const char *payload, size_t len, em_status_t *out,
                                    em_error_t *err);

/* Encodes st (fields in st->has only; lastSeen as ISO 8601 when set) as JSON.
 * EM_ERR_BUFFER_TOO_SMALL when buf cannot hold it and its NUL. */
EM_EXPORT em_err_t em_status_encode(const em_status_t *st, char *buf, size_t size, size_t *out_len);

EM_EXPORT const char *em_power_mode_name(em_power_mode_t m);   /* "normal"...; NULL if unknown */
EM_EXPORT const char *em_conn_status_name(em_conn_status_t c); /* "online"...; NULL if unknown */

/* Bits of em_telemetry_t.has. */
#define EM_TELEMETRY_HAS_POWER       (1u << 0)
#define EM_TELEMETRY_HAS_ENERGY      (1u << 1)
#define EM_TELEMETRY_HAS_VOLTAGE     (1u << 2)
#define EM_TELEMETRY_HAS_CURRENT     (1u << 3)
#define EM_TELEMETRY_HAS_TEMPERATURE (1u << 4)
#define EM_TELEMETRY_HAS_HUMIDITY    (1u << 5)
#define EM_TELEMETRY_HAS_BATTERY     (1u << 6)

/*
 * A telemetry sample. timestamp is required: an RFC 3339 string or a number of
 * epoch milliseconds; it may not be later than now + skew. power_w, energy_wh,
 * voltage_v, current_a finite (energy_wh, voltage_v >= 0); temperature
 * -50..100; humidity 0..100; battery 0..100.
 */
typedef struct em_telemetry {
    uint16_t has; /* EM_TELEMETRY_HAS_* */
    uint8_t battery;
    int64_t timestamp_ms;
    double power_w;
    double energy_wh;
    double voltage_v;
    double current_a;
    double temperature;
    double humidity;
} em_telemetry_t;

/*
 * Decodes a telemetry payload. now_ms is the receiver's clock and skew_ms how
 * far into the future a timestamp may be (EM_CLOCK_SKEW_MS_DEFAULT is usual).
 * Errors: EM_ERR_MESSAGE_FORMAT, EM_ERR_VALIDATION.
 */
EM_EXPORT em_err_t em_telemetry_decode(const char *payload, size_t len, int64_t now_ms,
                                       int64_t skew_ms, em_telemetry_t *out, em_error_t *err);

/* Encodes t with the timestamp as RFC 3339. EM_ERR_BUFFER_TOO_SMALL. */
EM_EXPORT em_err_t em_telemetry_encode(const em_telemetry_t *t, char *buf, size_t size,
                                       size_t *out_len);

#define EM_EVENT_TYPE_MAX    32
#define EM_EVENT_DETAILS_MAX 4096

/*
 * A device-side event ({"type":"tamper","details":{...},"timestamp":...}).
 * type is 1-32 of [a-z0-9_]; details is a JSON object (kept compact, heap,
 * NULL when empty); timestamp epoch ms (number) or RFC 3339, optional.
 */
typedef struct em_device_event {
    char type[EM_EVENT_TYPE_MAX + 1];
    int64_t timestamp_ms; /* 0 when absent */
    char *details_json;
} em_device_event_t;

EM_EXPORT em_err_t em_device_event_decode(const char *payload, size_t len, em_device_event_t *out,
                                          em_error_t *err);
EM_EXPORT void em_device_event_cleanup(em_device_event_t *ev);

/* Availability payloads ("online"/"offline", exact). EM_ERR_VALIDATION otherwise. */
EM_EXPORT em_err_t em_availability_decode(const char *payload, size_t len, bool *online,
                                          em_error_t *err);

#ifdef __cplusplus
}
#endif

#endif /* EMIOT_STATUS_H */
