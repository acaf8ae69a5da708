/*
 * emiot - dynsec.h: MQTT passwords for devices that cannot use client
 * certificates, provisioned through mosquitto's dynamic-security plugin.
 *
 * An em_dynsec_t holds its own MQTT connection to the broker listener that
 * runs the plugin, logged in as the plugin's administrator, and sends the
 * plugin's commands on $CONTROL/dynamic-security/v1, waiting for each answer
 * on $CONTROL/dynamic-security/v1/response (correlated by correlationData).
 *
 * For a device D it keeps a role "emiot-device-D" whose ACLs are exactly what
 * the certificate listener's ACL patterns allow (docs/SECURITY.md): publish
 * P D/status, telemetry, response, event, availability; subscribe and receive
 * P D/command; nothing else (the plugin's defaults deny the rest). The client
 * "D" has that role only. Passwords are 32 random bytes, base64url (43
 * characters), generated here, handed to the caller once, never stored or
 * logged by emiot.
 *
 * Calls block (at most the timeout) and may be made from any one thread at a
 * time.
 */
#ifndef EMIOT_DYNSEC_H
#define EMIOT_DYNSEC_H

#include <stddef.h>

#include "emiot/error.h"
#include "emiot/export.h"
#include "emiot/mqtt.h"

#ifdef __cplusplus
extern "C" {
#endif

#define EM_DYNSEC_PASSWORD_LEN 43

typedef struct em_dynsec em_dynsec_t;

typedef struct em_dynsec_options {
    em_mqtt_options_t mqtt;   /* url, TLS, username and password of the plugin's admin */
    const char *topic_prefix; /* default "device/" */
    int timeout_ms;           /* for each command, default 5000 */
} em_dynsec_options_t;

EM_EXPORT void em_dynsec_options_init(em_dynsec_options_t *opts);

/* Connects (waits at most timeout_ms). Strings are copied. Errors: those of
 * em_mqtt_new and EM_ERR_CONNECTION, EM_ERR_AUTHENTICATION, EM_ERR_TIMEOUT. */
EM_EXPORT em_err_t em_dynsec_new(const em_dynsec_options_t *opts, em_dynsec_t **out,
                                 em_error_t *err);
EM_EXPORT void em_dynsec_free(em_dynsec_t *d);

/*
 * Creates (or replaces) device_id's role and client with a new password,
 * written to password (at least EM_DYNSEC_PASSWORD_LEN + 1 bytes; wipe it
 * after use). The device's existing sessions are disconnected by the plugin
 * when its password changes. Errors: EM_ERR_VALIDATION (not a device id),
 * EM_ERR_BUFFER_TOO_SMALL, EM_ERR_PROTOCOL (the plugin refused: its reason in
 * err->message), EM_ERR_TIMEOUT, EM_ERR_NOT_CONNECTED.
 */
EM_EXPORT em_err_t em_dynsec_provision(em_dynsec_t *d, const char *device_id, char *password,
                                       size_t size, em_error_t *err);

/* Deletes device_id's client and role (its sessions end). EM_ERR_NOT_FOUND
 * when it has none; otherwise as em_dynsec_provision. */
EM_EXPORT em_err_t em_dynsec_remove(em_dynsec_t *d, const char *device_id, em_error_t *err);

/* Disables or enables device_id's client (a disabled device is refused at
 * CONNECT). Errors: as em_dynsec_remove. */
EM_EXPORT em_err_t em_dynsec_set_enabled(em_dynsec_t *d, const char *device_id, int enabled,
                                         em_error_t *err);

#ifdef __cplusplus
}
#endif

#endif /* EMIOT_DYNSEC_H */
