/*
 * emiot - routes_identity.c: the device identity routes' table (docs/API.md,
 * "Device identity"; the handlers are identity_enroll.c's and
 * identity_auth.c's) and what they share (identity_routes.h).
 *
 * The three public routes (enroll, challenge, device-token) need no
 * credentials. They are what an attacker reaches first, so: a client address
 * blocked for failed authentications is refused before anything else
 * (429), each address has a bucket of requests (PUBLIC_PER_MIN), every
 * refusal counts as a failed authentication of its address and is a
 * security event naming the device and the address (never the token, the
 * nonce or the signature), and 401/403 answers say nothing about why.
 */
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <event2/http.h>
#include <openssl/pem.h>
#include <openssl/x509.h>

#include "api/api_core.h"
#include "api/identity_routes.h"
#include "emiot/clock.h"
#include "emiot/log.h"

#define PUBLIC_PER_MIN 600 /* requests to the public routes per client address */

/* ---- shared by the identity routes --------------------------------------- */

bool em__id_valid_id(const char *s)
{
    return s != NULL && em_device_id_validate(s, strlen(s), NULL) == EM_OK;
}

void em__id_copy_id(char *dst, const char *id)
{
    size_t n = strnlen(id, EM_DEVICE_ID_MAX);
    memcpy(dst, id, n);
    dst[n] = '\0';
}

bool em__id_add(cJSON *o, const char *name, cJSON *v)
{
    if (v == NULL)
        return false;
    if (!cJSON_AddItemToObject(o, name, v)) {
        cJSON_Delete(v);
        return false;
    }
    return true;
}

bool em__id_no_params(em__api_req_t *r)
{
    static const char *const none[] = {NULL};
    return em__api_only_params(r, none);
}

/* The client address without the port. */
static void source_host(const char *source, char *out, size_t size)
{
    const char *colon = strrchr(source, ':');
    size_t n = colon != NULL ? (size_t)(colon - source) : strlen(source);
    if (n >= size)
        n = size - 1;
    memcpy(out, source, n);
    out[n] = '\0';
}

void em__id_public_key(const em__api_req_t *r, char *key, size_t size)
{
    char host[EM__BUCKET_KEY_MAX - 3];
    source_host(r->source, host, sizeof host);
    snprintf(key, size, "pub:%s", host);
}

void em__id_sec_vrecord(em__api_req_t *r, em_store_event_t *ev, const char *type, em_severity_t sev,
                        const char *device_id, const char *fmt, va_list ap)
{
    memset(ev, 0, sizeof *ev);
    ev->time_ms = em_now_ms();
    ev->kind = EM_EVKIND_SECURITY;
    ev->severity = sev;
    snprintf(ev->type, sizeof ev->type, "%s", type);
    if (em__id_valid_id(device_id))
        em__id_copy_id(ev->device_id, device_id);
    snprintf(ev->actor, sizeof ev->actor, "%s", r->who.actor);
    snprintf(ev->source, sizeof ev->source, "%s", r->source);
    (void)vsnprintf(ev->message, sizeof ev->message, fmt, ap); /* cut when longer */
    em_error_t err;
    em_error_clear(&err);
    if (em_store_event_insert(r->store, ev, &err) != EM_OK) {
        em_log_field_t f[2] = {EM_LOG_STR("type", ev->type), EM_LOG_STR("error", err.message)};
        em_log(EM_LOG_ERROR, "api", r->cid, "security event not recorded", f, 2);
    }
}

void em__id_sec_event(em__api_req_t *r, const char *type, em_severity_t sev, const char *device_id,
                      const char *fmt, ...)
{
    em_store_event_t ev;
    va_list ap;
    va_start(ap, fmt);
    em__id_sec_vrecord(r, &ev, type, sev, device_id, fmt, ap);
    va_end(ap);
    em_log_field_t f[4] = {EM_LOG_STR("type", ev.type), EM_LOG_STR("device", ev.device_id),
                           EM_LOG_STR("source", ev.source), EM_LOG_STR("reason", ev.message)};
    em_log(EM_LOG_WARN, "api", r->cid, "security event", f, 4);
}

void em__id_refuse(em__api_req_t *r, int status, const char *code, const char *msg,
                   const char *type, em_severity_t sev, const char *device_id, const char *reason)
{
    em__api_fail_count(r);
    em__id_sec_event(r, type, sev, device_id, "%s", reason);
    em__api_error(r, status, code, msg, reason);
}

bool em__id_public_gate(em__api_req_t *r)
{
    if (em__api_fail_blocked(r))
        return false;
    char key[EM__BUCKET_KEY_MAX + 1];
    em__id_public_key(r, key, sizeof key);
    uint32_t retry = 0;
    int64_t mono = em_mono_ms();
    if (em__buckets_take(r->api->buckets, key, PUBLIC_PER_MIN, mono, &retry))
        return true;
    em__api_call_t *call = (em__api_call_t *)r;
    if (em__buckets_report(r->api->buckets, key, mono, 60000))
        em__id_sec_event(r, "rate_limited", EM_SEV_LOW, NULL,
                         "over %u requests a minute to the public identity routes", PUBLIC_PER_MIN);
    snprintf(call->retry_buf, sizeof call->retry_buf, "%u", retry);
    call->retry_after = call->retry_buf;
    em__api_error(r, 429, "rate_limit_exceeded", "rate limit exceeded", NULL);
    return false;
}

cJSON *em__id_pub_body(em__api_req_t *r, em__id_route_t route, const char *type, em__id_body_t *b)
{
    cJSON *body = em__api_body_object(r);
    if (body == NULL) {
        em__api_fail_count(r);
        em__id_sec_event(r, type, EM_SEV_LOW, NULL, "malformed body");
        return NULL;
    }
    em_error_t e;
    em_error_clear(&e);
    if (em__id_body_validate(route, body, b, &e) != EM_OK) {
        char msg[EM_ERROR_FIELD_MAX + EM_ERROR_MESSAGE_MAX + 4];
        snprintf(msg, sizeof msg, "%s: %s", e.field, e.message);
        const cJSON *id = cJSON_GetObjectItemCaseSensitive(body, "deviceId");
        em__id_refuse(r, 400, "validation", msg, type, EM_SEV_LOW,
                      cJSON_IsString(id) ? id->valuestring : NULL, msg);
        cJSON_Delete(body);
        return NULL;
    }
    return body;
}

char *em__id_cert_pem(X509 *cert, size_t max)
{
    BIO *b = BIO_new(BIO_s_mem());
    char *out = NULL;
    if (b != NULL && PEM_write_bio_X509(b, cert) == 1) {
        char *p = NULL;
        long n = BIO_get_mem_data(b, &p);
        if (n > 0 && (size_t)n <= max && (out = malloc((size_t)n + 1)) != NULL) {
            memcpy(out, p, (size_t)n);
            out[n] = '\0';
        }
    }
    BIO_free(b);
    return out;
}

em_err_t em__id_device_state(em__api_req_t *r, const char *id, bool *enabled, em_error_t *e)
{
    em_store_device_t d;
    em_err_t rc = em_store_device_get(r->store, id, &d, e);
    if (rc == EM_ERR_NOT_FOUND)
        rc = EM_ERR_DEVICE_NOT_FOUND;
    if (rc == EM_OK)
        *enabled = d.enabled;
    return rc;
}

/* ---- the route table ------------------------------------------------------ */

static const em__api_route_t routes[] = {
    {EVHTTP_REQ_POST, "/api/v1/devices/{id}/enrollment-tokens", EM_ROLE_OPERATOR, EM__ROUTE_BODY,
     em__id_create_enroll_token},
    {EVHTTP_REQ_GET, "/api/v1/devices/{id}/enrollment-tokens", EM_ROLE_OPERATOR, 0,
     em__id_list_enroll_tokens},
    {EVHTTP_REQ_GET, "/api/v1/devices/{id}/certificates", EM_ROLE_OPERATOR, EM__ROUTE_DEVICE_OK,
     em__id_list_certificates},
    {EVHTTP_REQ_POST, "/api/v1/enroll", EM_ROLE_NONE, EM__ROUTE_PUBLIC | EM__ROUTE_BODY,
     em__id_enroll},
    {EVHTTP_REQ_POST, "/api/v1/auth/challenge", EM_ROLE_NONE, EM__ROUTE_PUBLIC | EM__ROUTE_BODY,
     em__id_challenge},
    {EVHTTP_REQ_POST, "/api/v1/auth/device-token", EM_ROLE_NONE, EM__ROUTE_PUBLIC | EM__ROUTE_BODY,
     em__id_device_token},
};

const em__api_route_table_t em__api_routes_identity = {routes, sizeof routes / sizeof routes[0]};
