/*
 * emiot - routes_mqttcred.c: MQTT passwords for devices without certificates, through mosquitto's
 * dynamic-security plugin (docs/API.md, "MQTT credentials").
 *
 * POST makes (or replaces) the device's client in the plugin with a new
 * random password and answers it this once; emiot keeps no copy. DELETE
 * removes the client and its role. Both are audited, never with the password.
 * The broker is asked while the request waits (dynsec.h: a few round trips on
 * the broker connection), so these routes answer 503 when it is unreachable.
 */
#include <stdarg.h>
#include <stdio.h>
#include <string.h>

#include <event2/http.h>
#include <openssl/crypto.h>

#include "api/api_internal.h"
#include "api/encode.h"
#include "api/identity_routes.h"
#include "api/mqttcred.h"
#include "emiot/clock.h"
#include "emiot/dynsec.h"
#include "emiot/log.h"

static const char *const no_params[] = {NULL};

/* The API's dynsec handle, or NULL after answering 503. */
static em_dynsec_t *dynsec_or_503(em__api_req_t *r)
{
    em_dynsec_t *d = em__api_options(r->api)->dynsec;
    if (d == NULL)
        em__api_error(r, 503, "not_connected", "MQTT credentials are not configured", NULL);
    return d;
}

/* Answers a failed dynsec call. */
static void dynsec_error(em__api_req_t *r, em_err_t rc, const em_error_t *e)
{
    char detail[EM_ERROR_FIELD_MAX + EM_ERROR_MESSAGE_MAX + 32];
    snprintf(detail, sizeof detail, "dynsec: %s: %s", em_err_name(rc), e->message);
    switch (rc) {
    case EM_ERR_NOT_CONNECTED:
        em__api_error(r, 503, "not_connected", "the MQTT broker is unreachable", detail);
        break;
    case EM_ERR_TIMEOUT:
        em__api_error(r, 503, "timeout", "the MQTT broker did not answer in time", detail);
        break;
    case EM_ERR_EXISTS:
        em__api_error(r, 409, "already_exists",
                      "the broker has an MQTT client of this name that emiot did not create",
                      detail);
        break;
    case EM_ERR_NOT_FOUND:
        em__api_error(r, 404, "not_found", "the device has no MQTT credentials", NULL);
        break;
    case EM_ERR_PROTOCOL:
    case EM_ERR_PERMISSION_DENIED:
        em__api_error(r, 502, "protocol", "the broker's dynamic-security plugin refused the change",
                      detail);
        break;
    default:
        em__api_error(r, 500, NULL, NULL, detail);
        break;
    }
}

/* An empty body, or {}: the routes take nothing. Answers 400 otherwise. */
static bool no_body(em__api_req_t *r)
{
    static const char *const none[] = {NULL};
    if (r->body == NULL)
        return true;
    cJSON *body = em__api_body_object(r);
    if (body == NULL)
        return false;
    bool ok = em__api_only_fields(r, body, none);
    cJSON_Delete(body);
    return ok;
}

static void create_credentials(em__api_req_t *r)
{
    if (!em__api_only_params(r, no_params) || !no_body(r))
        return;
    const char *id = r->captures[0];
    em_store_device_t dev;
    if (!em__routes_device_get(r, id, &dev))
        return;
    em_dynsec_t *d = dynsec_or_503(r);
    if (d == NULL)
        return;
    if (!dev.enabled) {
        em__api_error(r, 409, "invalid_state", "device disabled", NULL);
        return;
    }

    char pw[EM_DYNSEC_PASSWORD_LEN + 1];
    em_error_t e;
    em_error_clear(&e);
    em_err_t rc = em_dynsec_provision(d, dev.id, pw, sizeof pw, &e);
    if (rc != EM_OK) {
        dynsec_error(r, rc, &e);
        return;
    }
    em__api_audit(r, "mqtt_credentials_issued", dev.id, "MQTT password issued for device %s",
                  dev.id);
    /* Written by hand rather than through cJSON, so that every copy of the
     * password this process makes can be wiped (the id is [A-Za-z0-9_-] and
     * the password base64url: nothing to escape). libevent's output buffer
     * keeps one more until the connection frees it. */
    char body[128 + EM_DEVICE_ID_MAX + EM_DYNSEC_PASSWORD_LEN];
    int n = snprintf(body, sizeof body,
                     "{\"success\":true,\"data\":{\"username\":\"%s\",\"password\":\"%s\"}}",
                     dev.id, pw);
    OPENSSL_cleanse(pw, sizeof pw);
    if (n < 0 || (size_t)n >= sizeof body)
        em__api_error(r, 500, NULL, NULL, "mqtt credentials answer too long");
    else
        em__api_reply_raw(r, 201, body, (size_t)n);
    OPENSSL_cleanse(body, sizeof body);
}

static void delete_credentials(em__api_req_t *r)
{
    if (!em__api_only_params(r, no_params) || !no_body(r))
        return;
    const char *id = r->captures[0];
    if (!em__routes_device_get(r, id, NULL))
        return;
    em_dynsec_t *d = dynsec_or_503(r);
    if (d == NULL)
        return;
    em_error_t e;
    em_error_clear(&e);
    em_err_t rc = em_dynsec_remove(d, id, &e);
    if (rc != EM_OK) {
        dynsec_error(r, rc, &e);
        return;
    }
    em__api_audit(r, "mqtt_credentials_revoked", id, "MQTT password of device %s revoked", id);
    /* {"success":true}, as every other DELETE of the API answers. */
    em__api_reply(r, 200, NULL, NULL);
}

/* ---- following device changes (routes_devices.c) -------------------------- */

static void security_event(em__api_req_t *r, const char *device_id, em_severity_t sev,
                           const char *fmt, ...) __attribute__((format(printf, 4, 5)));
static void security_event(em__api_req_t *r, const char *device_id, em_severity_t sev,
                           const char *fmt, ...)
{
    /* device_id is a device the store has just changed: a valid id. */
    em_store_event_t ev;
    va_list ap;
    va_start(ap, fmt);
    em__id_sec_vrecord(r, &ev, "mqtt_credentials_out_of_sync", sev, device_id, fmt, ap);
    va_end(ap);
}

void em__mqttcred_device_changed(em__api_req_t *r, const char *device_id,
                                 em__mqttcred_change_t change)
{
    em_dynsec_t *d = em__api_options(r->api)->dynsec;
    if (d == NULL)
        return;
    em_error_t e;
    em_error_clear(&e);
    em_err_t rc;
    const char *what;
    switch (change) {
    case EM__MQTTCRED_DISABLED:
        what = "disable";
        rc = em_dynsec_set_enabled(d, device_id, 0, &e);
        break;
    case EM__MQTTCRED_ENABLED:
        what = "enable";
        rc = em_dynsec_set_enabled(d, device_id, 1, &e);
        break;
    default:
        what = "remove";
        rc = em_dynsec_remove(d, device_id, &e);
        break;
    }
    /* A device without MQTT credentials has nothing to follow. */
    if (rc == EM_OK || rc == EM_ERR_NOT_FOUND)
        return;
    em_log_field_t f[4] = {EM_LOG_STR("device", device_id), EM_LOG_STR("action", what),
                           EM_LOG_STR("code", em_err_name(rc)), EM_LOG_STR("error", e.message)};
    em_log(EM_LOG_WARN, "api", r->cid, "could not update the device's MQTT client", f, 4);
    /* A disabled or deleted device that can still log in to the broker is
     * the dangerous half; an enabled one that cannot is only an outage. */
    security_event(r, device_id, change == EM__MQTTCRED_ENABLED ? EM_SEV_MEDIUM : EM_SEV_HIGH,
                   "could not %s the MQTT client of device %s (%s: %s)%s", what, device_id,
                   em_err_name(rc), e.message,
                   change == EM__MQTTCRED_ENABLED
                       ? ""
                       : "; its MQTT password may still work: revoke it with DELETE "
                         "/api/v1/devices/{id}/mqtt-credentials");
}

static const em__api_route_t routes[] = {
    {EVHTTP_REQ_POST, "/api/v1/devices/{id}/mqtt-credentials", EM_ROLE_OPERATOR, 0,
     create_credentials},
    {EVHTTP_REQ_DELETE, "/api/v1/devices/{id}/mqtt-credentials", EM_ROLE_OPERATOR, 0,
     delete_credentials},
};

const em__api_route_table_t em__api_routes_mqttcred = {routes, sizeof routes / sizeof routes[0]};
