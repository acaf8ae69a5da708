/*
 * emiot - manager.h: the energy manager, the heart of libemiot.
 *
 * A manager owns a registry of devices and groups and an MQTT connection. It
 * subscribes to each registered device's topics, validates and applies what
 * devices report, sends validated and rate-limited commands, detects devices
 * that went silent, and tells the application through event callbacks. It is
 * the C counterpart of energy-manager-iot's EnergyManager and speaks the same
 * wire format (docs/PROTOCOL.md).
 *
 * Subscriptions: the manager subscribes to five filters, P+/status,
 * P+/telemetry, P+/response, P+/event and P+/availability, whatever the number
 * of devices, and ignores (and counts) messages from unregistered devices. This
 * is what energy-manager-iot's per-device subscriptions achieve, at a constant
 * cost to the broker: registering or removing a device needs no round trip.
 *
 * Threads: every function may be called from any thread. The manager holds
 * one lock around its state; event callbacks run with that lock held, on the
 * network thread (or inside em_manager_loop), and may call back into the
 * manager (the lock is recursive). A callback must not block for long.
 */
#ifndef EMIOT_MANAGER_H
#define EMIOT_MANAGER_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "emiot/command.h"
#include "emiot/device.h"
#include "emiot/error.h"
#include "emiot/export.h"
#include "emiot/mqtt.h"
#include "emiot/registry.h"
#include "emiot/status.h"

#ifdef __cplusplus
extern "C" {
#endif

typedef struct em_manager em_manager_t;

typedef struct em_manager_options {
    const char *topic_prefix;  /* default "device/" */
    int status_interval_s;     /* expected status period; offline after 2x (default 60) */
    int offline_check_s;       /* how often to look for silent devices (default 10) */
    unsigned rate_limit_count; /* commands per device per window (default 10) */
    int rate_limit_window_s;   /* default 60 */
    int command_qos;           /* default 1 */
    int64_t clock_skew_ms;     /* telemetry timestamps ahead of now (default 300000) */
    size_t capacity_hint;      /* expected number of devices */
    size_t max_devices;        /* 0: EM_REGISTRY_DEVICES_MAX_DEFAULT */
} em_manager_options_t;

/* Fills opts with the defaults above. */
EM_EXPORT void em_manager_options_init(em_manager_options_t *opts);

typedef enum em_event_type {
    EM_EVENT_CONNECTED = 0,
    EM_EVENT_DISCONNECTED = 1,
    EM_EVENT_RECONNECTING = 2,
    EM_EVENT_STATUS = 3,         /* a device's status was updated */
    EM_EVENT_DEVICE_OFFLINE = 4, /* no status for 2x status interval, or availability offline */
    EM_EVENT_DEVICE_REGISTERED = 5,
    EM_EVENT_DEVICE_UPDATED = 6,
    EM_EVENT_DEVICE_REMOVED = 7,
    EM_EVENT_COMMAND_SENT = 8,
    EM_EVENT_COMMAND_RESPONSE = 9, /* a device answered a command */
    EM_EVENT_TELEMETRY = 10,
    EM_EVENT_DEVICE_EVENT = 11,  /* a device reported an event (tamper, ...) */
    EM_EVENT_ERROR = 12,         /* a rejected message, a connection error, ... */
    EM_EVENT_DEVICE_ONLINE = 13, /* availability "online" */
    EM_EVENT_COMMAND_ACKED = 14  /* the broker acknowledged a QoS 1 command */
} em_event_type_t;

#define EM_EVENT_TYPE_COUNT 15
#define EM_EVENT_MASK(t)    (1u << (t))
#define EM_EVENT_MASK_ALL   ((1u << EM_EVENT_TYPE_COUNT) - 1u)

/*
 * What a callback receives. Pointers are valid only during the callback.
 * Which fields are set depends on type:
 *   STATUS: device, status;  TELEMETRY: device, telemetry, energy_delta_wh,
 *   counter_reset;  DEVICE_*: device (REMOVED: device_id only);
 *   COMMAND_SENT: device_id, command;  COMMAND_ACKED: device_id, command (type
 *   and request_id only; the device may have been removed since);
 *   COMMAND_RESPONSE: device, response;
 *   DEVICE_EVENT: device, device_event;  ERROR, DISCONNECTED: error.
 */
typedef struct em_event {
    em_event_type_t type;
    const char *device_id;
    const em_device_t *device;
    const em_status_t *status;
    const em_telemetry_t *telemetry;
    double energy_delta_wh;
    int counter_reset;
    const em_command_t *command;
    const em_response_t *response;
    const em_device_event_t *device_event;
    const em_error_t *error;
} em_event_t;

typedef void (*em_event_fn)(em_manager_t *mgr, const em_event_t *ev, void *userdata);

/* Counters, for monitoring (all since em_manager_new). */
typedef struct em_manager_stats {
    uint64_t messages_received;
    uint64_t status_accepted;
    uint64_t telemetry_accepted;
    uint64_t responses_received;
    uint64_t device_events;
    uint64_t rejected;            /* all rejections below */
    uint64_t rejected_format;     /* not JSON, wrong shape */
    uint64_t rejected_validation; /* out of range, wrong type */
    uint64_t rejected_topic;      /* unknown topic layout */
    uint64_t unknown_device;      /* valid message from an unregistered device */
    uint64_t commands_sent;
    uint64_t commands_rate_limited;
    uint64_t commands_invalid;
    uint64_t offline_detected;
    uint64_t reconnects;
} em_manager_stats_t;

/*
 * Creates a manager (not connected). opts may be NULL for the defaults.
 * Returns NULL on failure with err filled: EM_ERR_CONFIGURATION (bad option),
 * EM_ERR_NOMEM.
 */
EM_EXPORT em_manager_t *em_manager_new(const em_manager_options_t *opts, em_error_t *err);

/* Disconnects, stops threads, frees everything. Accepts NULL. */
EM_EXPORT void em_manager_free(em_manager_t *mgr);

/*
 * Registers a callback for the events in mask (EM_EVENT_MASK(...) bits).
 * Up to 16 callbacks. Errors: EM_ERR_LIMIT, EM_ERR_INVALID_ARGUMENT.
 */
EM_EXPORT em_err_t em_manager_on(em_manager_t *mgr, unsigned mask, em_event_fn fn, void *userdata);

/* Removes every registration of fn with userdata. */
EM_EXPORT void em_manager_off(em_manager_t *mgr, em_event_fn fn, void *userdata);

/*
 * Connects to the broker, subscribes to the device topics and starts the
 * network thread and the offline check. mqtt's strings are
 * copied. Errors: those of em_mqtt_new and em_mqtt_connect; EM_ERR_STATE when
 * already connected.
 */
EM_EXPORT em_err_t em_manager_connect(em_manager_t *mgr, const em_mqtt_options_t *mqtt,
                                      int timeout_ms, em_error_t *err);

/* Disconnects cleanly (pending QoS 1 publishes are flushed first) and stops
 * the threads. Errors: EM_ERR_STATE when called from an event callback,
 * EM_ERR_TIMEOUT when publishes stayed unacknowledged (it disconnects anyway). */
EM_EXPORT em_err_t em_manager_disconnect(em_manager_t *mgr, em_error_t *err);

EM_EXPORT bool em_manager_is_connected(const em_manager_t *mgr);

/* Devices. */

/* Registers a device; from then on its messages are accepted. group (may be
 * NULL) is created when missing and the device added to it (when that fails the
 * device is not registered). Errors: as em_registry_add,
 * em_registry_group_create, em_registry_group_add. */
EM_EXPORT em_err_t em_manager_register_device(em_manager_t *mgr, const char *id, const char *name,
                                              em_device_type_t type, const em_device_config_t *cfg,
                                              const char *group, em_error_t *err);

/* Updates name/type/config (NULL = unchanged). As em_registry_update. */
EM_EXPORT em_err_t em_manager_update_device(em_manager_t *mgr, const char *id, const char *name,
                                            const em_device_type_t *type,
                                            const em_device_config_t *cfg, em_error_t *err);

/* Removes a device; its messages are ignored from then on. EM_ERR_DEVICE_NOT_FOUND. */
EM_EXPORT em_err_t em_manager_remove_device(em_manager_t *mgr, const char *id, em_error_t *err);

/*
 * Copies the device (and its status) into *out. The copy's name and status
 * strings are heap copies: release with em_manager_device_cleanup.
 * Errors: EM_ERR_DEVICE_NOT_FOUND, EM_ERR_NOMEM.
 */
EM_EXPORT em_err_t em_manager_get_device(em_manager_t *mgr, const char *id, em_device_t *out,
                                         em_error_t *err);
EM_EXPORT void em_manager_device_cleanup(em_device_t *dev);

/* Number of registered devices. */
EM_EXPORT size_t em_manager_device_count(em_manager_t *mgr);

/*
 * Direct access to the registry for reading many devices at once: call
 * em_manager_lock, use em_registry_* read functions, then em_manager_unlock.
 * Do not modify the registry directly (the manager keeps subscriptions in step).
 */
EM_EXPORT em_registry_t *em_manager_registry(em_manager_t *mgr);
EM_EXPORT void em_manager_lock(em_manager_t *mgr);
EM_EXPORT void em_manager_unlock(em_manager_t *mgr);

/* Groups. */
EM_EXPORT em_err_t em_manager_create_group(em_manager_t *mgr, const char *name, em_error_t *err);
EM_EXPORT em_err_t em_manager_remove_group(em_manager_t *mgr, const char *name, em_error_t *err);
EM_EXPORT em_err_t em_manager_add_to_group(em_manager_t *mgr, const char *id, const char *group,
                                           em_error_t *err);
EM_EXPORT em_err_t em_manager_remove_from_group(em_manager_t *mgr, const char *id,
                                                const char *group, em_error_t *err);
EM_EXPORT em_err_t em_manager_group_stats(em_manager_t *mgr, const char *group,
                                          em_group_stats_t *out, em_error_t *err);

/* Commands. */

/*
 * Validates, rate-limits and publishes a command to one device (QoS
 * command_qos). payload is a JSON object or NULL. request_id (when not NULL,
 * at least EM_REQUEST_ID_MAX + 1 bytes) receives the command's requestId.
 * Errors: EM_ERR_DEVICE_NOT_FOUND, EM_ERR_VALIDATION, EM_ERR_MESSAGE_FORMAT
 * (nothing is sent), EM_ERR_RATE_LIMIT_EXCEEDED (nothing is sent),
 * EM_ERR_NOT_CONNECTED, EM_ERR_COMMAND_FAILED.
 */
EM_EXPORT em_err_t em_manager_send_command(em_manager_t *mgr, const char *id,
                                           em_command_type_t type, const char *payload,
                                           char *request_id, em_error_t *err);

/*
 * As em_manager_send_command, with the caller's request id instead of a new
 * one: request_id is 1-EM_REQUEST_ID_MAX of [A-Za-z0-9_-] (em_request_id_new
 * makes good ones). For callers that record a command before sending it.
 * Errors: those of em_manager_send_command; EM_ERR_VALIDATION (field
 * "requestId") for a malformed id.
 */
EM_EXPORT em_err_t em_manager_send_command_as(em_manager_t *mgr, const char *id,
                                              em_command_type_t type, const char *payload,
                                              const char *request_id, em_error_t *err);

/*
 * Sends a command to every device of a group. The payload is validated once
 * (an invalid one sends nothing). Devices over their rate limit are skipped.
 * *sent and *skipped (when not NULL) receive the counts. Returns EM_OK when
 * every device was sent the command, EM_ERR_RATE_LIMIT_EXCEEDED when some were
 * skipped, or the first other error.
 * Errors: EM_ERR_GROUP_NOT_FOUND, EM_ERR_VALIDATION, EM_ERR_NOT_CONNECTED, ...
 */
EM_EXPORT em_err_t em_manager_send_group_command(em_manager_t *mgr, const char *group,
                                                 em_command_type_t type, const char *payload,
                                                 size_t *sent, size_t *skipped, em_error_t *err);

/* Helpers: sleep (duration_s 0 = no duration) and wake, for a device or a group. */
EM_EXPORT em_err_t em_manager_sleep_device(em_manager_t *mgr, const char *id, uint32_t duration_s,
                                           em_error_t *err);
EM_EXPORT em_err_t em_manager_wake_device(em_manager_t *mgr, const char *id, em_error_t *err);
EM_EXPORT em_err_t em_manager_sleep_group(em_manager_t *mgr, const char *group, uint32_t duration_s,
                                          em_error_t *err);
EM_EXPORT em_err_t em_manager_wake_group(em_manager_t *mgr, const char *group, em_error_t *err);

/*
 * Waits until every QoS 1 command published so far is acknowledged by the
 * broker, up to timeout_ms. Errors: EM_ERR_TIMEOUT, EM_ERR_NOT_CONNECTED,
 * EM_ERR_STATE (called from an event callback, where it would wait for itself).
 */
EM_EXPORT em_err_t em_manager_flush(em_manager_t *mgr, int timeout_ms, em_error_t *err);

/* Topic prefix. Changing it while connected unsubscribes the old filters and
 * subscribes the new ones. EM_ERR_VALIDATION for a bad prefix. */
EM_EXPORT em_err_t em_manager_set_topic_prefix(em_manager_t *mgr, const char *prefix,
                                               em_error_t *err);
/* Copies the prefix into buf (at least EM_TOPIC_PREFIX_MAX + 1 bytes). */
EM_EXPORT void em_manager_topic_prefix(em_manager_t *mgr, char *buf, size_t size);

/*
 * Handles one incoming message as if it came from the broker: topic (NUL-
 * terminated), payload (len bytes). Exposed for embedding with another
 * transport and for benchmarks. Returns EM_OK when applied, or the reason it was
 * rejected/ignored (EM_ERR_PROTOCOL, EM_ERR_MESSAGE_FORMAT, EM_ERR_VALIDATION,
 * EM_ERR_DEVICE_NOT_FOUND); rejections are also counted and reported as
 * EM_EVENT_ERROR.
 */
EM_EXPORT em_err_t em_manager_handle_message(em_manager_t *mgr, const char *topic,
                                             const void *payload, size_t len);

/* Runs the offline check now (the manager also runs it every offline_check_s
 * while connected). now_ms is the time to judge against. Returns how many
 * devices went offline. */
EM_EXPORT size_t em_manager_check_offline(em_manager_t *mgr, int64_t now_ms);

EM_EXPORT void em_manager_stats(em_manager_t *mgr, em_manager_stats_t *out);

#ifdef __cplusplus
}
#endif

#endif /* EMIOT_MANAGER_H */
