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
 * Clients emiot creates carry the text name "emiot device <id>"; a client of
 * the same name that lacks it (the plugin's administrator, an account made
 * by hand) is never changed, disabled or deleted by emiot.
 *
 * Work factor: mosquitto 2.0's plugin hashes passwords set through its
 * control API with PBKDF2-SHA512 and a fixed 101 iterations (it ignores any
 * "iterations" given). That is why these passwords are 256 random bits, which
 * no work factor would protect better; the administrator's password, chosen
 * by a person, gets a strong iteration count in the plugin's configuration
 * file (emiotctl broker config), which the plugin honours.
 *
 * Each call blocks (at most timeout_ms per round trip to the broker; a call
 * makes two or three) and calls are serialised, so any thread may call.
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

/* Connects (waits at most timeout_ms), then checks with one harmless command
 * that the plugin answers this account. Strings are copied. The connection is
 * kept up (reconnecting by itself) until em_dynsec_free. Errors: those of
 * em_mqtt_new and em_mqtt_connect (EM_ERR_CONNECTION, EM_ERR_TLS,
 * EM_ERR_AUTHENTICATION for a wrong administrator password, ...),
 * EM_ERR_CONFIGURATION (bad topic_prefix or timeout_ms), EM_ERR_TIMEOUT (the
 * plugin did not answer: not loaded on this listener, or an MQTT 3.1.1
 * account without the rights), EM_ERR_PERMISSION_DENIED (the broker refused
 * the account the plugin's control topic), EM_ERR_PROTOCOL. */
EM_EXPORT em_err_t em_dynsec_new(const em_dynsec_options_t *opts, em_dynsec_t **out,
                                 em_error_t *err);
EM_EXPORT void em_dynsec_free(em_dynsec_t *d);

/*
 * Creates (or replaces) device_id's role and client with a new password,
 * written to password (at least EM_DYNSEC_PASSWORD_LEN + 1 bytes; wipe it
 * after use). The device's existing sessions are disconnected by the plugin
 * when its password changes. The client ends up enabled, with that role
 * only and in no group. On failure password is "". Errors: EM_ERR_VALIDATION
 * (not a device id), EM_ERR_BUFFER_TOO_SMALL, EM_ERR_EXISTS (the broker has a
 * client of that name that emiot did not create), EM_ERR_PROTOCOL (the plugin
 * refused: its reason in err->message), EM_ERR_PERMISSION_DENIED,
 * EM_ERR_TIMEOUT, EM_ERR_NOT_CONNECTED (not connected, or the connection was
 * lost before the answer: the change may or may not have been made).
 */
EM_EXPORT em_err_t em_dynsec_provision(em_dynsec_t *d, const char *device_id, char *password,
                                       size_t size, em_error_t *err);

/* Deletes device_id's client and role (its sessions end). EM_ERR_NOT_FOUND
 * when it has neither (a client of that name emiot did not create is left
 * alone and counts as none); otherwise as em_dynsec_provision. */
EM_EXPORT em_err_t em_dynsec_remove(em_dynsec_t *d, const char *device_id, em_error_t *err);

/* Disables or enables device_id's client (a disabled device is refused at
 * CONNECT). Errors: as em_dynsec_remove. */
EM_EXPORT em_err_t em_dynsec_set_enabled(em_dynsec_t *d, const char *device_id, int enabled,
                                         em_error_t *err);

#ifdef __cplusplus
}
#endif

#endif /* EMIOT_DYNSEC_H */
