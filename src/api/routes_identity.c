/*
 * emiot - routes_identity.c: device identity (docs/API.md, "Device
 * identity"): enrollment tokens, enrollment (a CSR signed by the CA for a
 * one-time token), challenge-response (a nonce signed with the device's key
 * for a device JWT), and a device's registered certificates.
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
#include <openssl/crypto.h>
#include <openssl/err.h>
#include <openssl/evp.h>
#include <openssl/pem.h>
#include <openssl/rand.h>
#include <openssl/x509.h>

#include "api/api_core.h"
#include "api/encode.h"
#include "api/identity.h"
#include "api/nonce.h"
#include "emiot/clock.h"
#include "emiot/log.h"

#define ENROLL_TOKEN_LEN EM__ENROLL_TOKEN_LEN
#define PUBLIC_PER_MIN   600 /* requests to the public routes per client address */
#define CHAIN_MAX        8   /* certificates presented after the device's */
#define CA_FILE_MAX      65536
#define TOKEN_BUF        4096
#define AUTH_MSG_PREFIX  "emiot-device-auth-v1\n"

/* The capabilities of a device JWT. */
static const char *const device_caps[] = {"device:read", "status:read", "telemetry:read",
                                          "commands:read"};

/* ---- small helpers ------------------------------------------------------- */

static bool add(cJSON *o, const char *name, cJSON *v)
{
    if (v == NULL)
        return false;
    if (!cJSON_AddItemToObject(o, name, v)) {
        cJSON_Delete(v);
        return false;
    }
    return true;
}

static bool no_params(em__api_req_t *r)
{
    static const char *const none[] = {NULL};
    return em__api_only_params(r, none);
}

static bool valid_id(const char *s)
{
    return s != NULL && em_device_id_validate(s, strlen(s), NULL) == EM_OK;
}

/* Copies a device id (validated: at most EM_DEVICE_ID_MAX bytes) into dst
 * (EM_DEVICE_ID_MAX + 1 bytes). */
static void copy_id(char *dst, const char *id)
{
    size_t n = strnlen(id, EM_DEVICE_ID_MAX);
    memcpy(dst, id, n);
    dst[n] = '\0';
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

/*
 * Records a security event (synchronously: it is on record before the
 * answer) about device_id (NULL or not a valid id: none) from the request's
 * address, and logs it.
 */
static void sec_event(em__api_req_t *r, const char *type, em_severity_t sev, const char *device_id,
                      const char *fmt, ...) __attribute__((format(printf, 5, 6)));
static void sec_event(em__api_req_t *r, const char *type, em_severity_t sev, const char *device_id,
                      const char *fmt, ...)
{
    em_store_event_t ev;
    memset(&ev, 0, sizeof ev);
    ev.time_ms = em_now_ms();
    ev.kind = EM_EVKIND_SECURITY;
    ev.severity = sev;
    snprintf(ev.type, sizeof ev.type, "%s", type);
    if (valid_id(device_id))
        copy_id(ev.device_id, device_id);
    snprintf(ev.actor, sizeof ev.actor, "%s", r->who.actor);
    snprintf(ev.source, sizeof ev.source, "%s", r->source);
    va_list ap;
    va_start(ap, fmt);
    (void)vsnprintf(ev.message, sizeof ev.message, fmt, ap); /* cut when longer */
    va_end(ap);
    em_error_t err;
    em_error_clear(&err);
    if (em_store_event_insert(r->store, &ev, &err) != EM_OK) {
        em_log_field_t f[2] = {EM_LOG_STR("type", ev.type), EM_LOG_STR("error", err.message)};
        em_log(EM_LOG_ERROR, "api", r->cid, "security event not recorded", f, 2);
    }
    em_log_field_t f[4] = {EM_LOG_STR("type", ev.type), EM_LOG_STR("device", ev.device_id),
                           EM_LOG_STR("source", ev.source), EM_LOG_STR("reason", ev.message)};
    em_log(EM_LOG_WARN, "api", r->cid, "security event", f, 4);
}

/*
 * Refuses a request to a public route: counts a failed authentication of
 * the client address, records the security event (type, sev, device_id,
 * reason) and answers status. For 401 and 403 the answer is the generic one;
 * for others code and msg are shown.
 */
static void refuse(em__api_req_t *r, int status, const char *code, const char *msg,
                   const char *type, em_severity_t sev, const char *device_id, const char *reason)
{
    em__api_fail_count(r);
    sec_event(r, type, sev, device_id, "%s", reason);
    em__api_error(r, status, code, msg, reason);
}

/*
 * The gate of the public routes: a blocked address (too many failed
 * authentications) is refused, then the address's request bucket is taken
 * from. Returns false when it answered.
 */
static bool public_gate(em__api_req_t *r)
{
    if (em__api_fail_blocked(r))
        return false;
    char key[EM__BUCKET_KEY_MAX + 1];
    char host[EM__BUCKET_KEY_MAX - 3];
    source_host(r->source, host, sizeof host);
    snprintf(key, sizeof key, "pub:%s", host);
    uint32_t retry = 0;
    int64_t mono = em_mono_ms();
    if (em__buckets_take(r->api->buckets, key, PUBLIC_PER_MIN, mono, &retry))
        return true;
    em__api_call_t *call = (em__api_call_t *)r;
    if (em__buckets_report(r->api->buckets, key, mono, 60000))
        sec_event(r, "rate_limited", EM_SEV_LOW, NULL,
                  "over %u requests a minute to the public identity routes", PUBLIC_PER_MIN);
    snprintf(call->retry_buf, sizeof call->retry_buf, "%u", retry);
    call->retry_after = call->retry_buf;
    em__api_error(r, 429, "rate_limit_exceeded", "rate limit exceeded", NULL);
    return false;
}

/*
 * The body of a public route, parsed (em__api_body_object: UTF-8, depth,
 * JSON) and checked (em__id_body_validate) into *b. NULL when it answered
 * (400, counted as a failure, with a security event of type).
 */
static cJSON *pub_body(em__api_req_t *r, em__id_route_t route, const char *type, em__id_body_t *b)
{
    cJSON *body = em__api_body_object(r);
    if (body == NULL) {
        em__api_fail_count(r);
        sec_event(r, type, EM_SEV_LOW, NULL, "malformed body");
        return NULL;
    }
    em_error_t e;
    em_error_clear(&e);
    if (em__id_body_validate(route, body, b, &e) != EM_OK) {
        char msg[EM_ERROR_FIELD_MAX + EM_ERROR_MESSAGE_MAX + 4];
        snprintf(msg, sizeof msg, "%s: %s", e.field, e.message);
        const cJSON *id = cJSON_GetObjectItemCaseSensitive(body, "deviceId");
        refuse(r, 400, "validation", msg, type, EM_SEV_LOW,
               cJSON_IsString(id) ? id->valuestring : NULL, msg);
        cJSON_Delete(body);
        return NULL;
    }
    return body;
}

static bool sha256(const void *data, size_t len, unsigned char out[32])
{
    unsigned int n = 0;
    return EVP_Digest(data, len, out, &n, EVP_sha256(), NULL) == 1 && n == 32;
}

/* The whole of a (small) file as a NUL-terminated string; NULL when it cannot
 * be read or is larger than max. */
static char *read_text_file(const char *path, size_t max)
{
    FILE *f = fopen(path, "rb");
    if (f == NULL)
        return NULL;
    char *buf = malloc(max + 1);
    size_t n = buf != NULL ? fread(buf, 1, max + 1, f) : 0;
    bool ok = buf != NULL && !ferror(f) && n > 0 && n <= max;
    (void)fclose(f); /* read only: nothing to lose */
    if (!ok) {
        free(buf);
        return NULL;
    }
    buf[n] = '\0';
    return buf;
}

/* cert as PEM, NUL-terminated (free); NULL when memory ran out or it is
 * longer than max bytes. */
static char *cert_pem(X509 *cert, size_t max)
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

/* The device record: EM_OK with *enabled, EM_ERR_DEVICE_NOT_FOUND, or the
 * store's error (in e). */
static em_err_t device_state(em__api_req_t *r, const char *id, bool *enabled, em_error_t *e)
{
    em_store_device_t d;
    em_err_t rc = em_store_device_get(r->store, id, &d, e);
    if (rc == EM_ERR_NOT_FOUND)
        rc = EM_ERR_DEVICE_NOT_FOUND;
    if (rc == EM_OK)
        *enabled = d.enabled;
    return rc;
}

/* em_verifier_check_device's question, asked of the store (not a cache:
 * enrollment and device tokens are rare, and must see a disable at once). */
static em_err_t device_check(const char *device_id, void *userdata)
{
    em__api_req_t *r = userdata;
    bool enabled = false;
    em_error_t e;
    em_error_clear(&e);
    em_err_t rc = device_state(r, device_id, &enabled, &e);
    if (rc == EM_ERR_DEVICE_NOT_FOUND)
        return rc;
    if (rc != EM_OK) {
        em_log(EM_LOG_ERROR, "api", r->cid, "device lookup failed", &EM_LOG_STR("error", e.message),
               1);
        return EM_ERR_DEVICE_NOT_FOUND; /* refused: nothing is vouched for without the store */
    }
    return enabled ? EM_OK : EM_ERR_PERMISSION_DENIED;
}

/* The device verifier, its files looked at again at most once a second.
 * NULL without one (no device CA configured). */
static em_verifier_t *device_verifier(em_api_t *api)
{
    if (api->dev_verifier == NULL)
        return NULL;
    int64_t mono = em_mono_ms();
    if (mono - api->dev_verifier_mono_ms >= 1000) {
        api->dev_verifier_mono_ms = mono;
        em_error_t e;
        em_error_clear(&e);
        bool changed = false;
        if (em_verifier_reload(api->dev_verifier, &changed, &e) != EM_OK)
            em_log(EM_LOG_WARN, "api", NULL, "device CA or CRL not reloaded",
                   &EM_LOG_STR("error", e.message), 1);
        else if (changed)
            em_logf(EM_LOG_INFO, "api", "device CA or CRL reloaded");
    }
    return api->dev_verifier;
}

/* ---- enrollment tokens ----------------------------------------------- */

/* Makes "enr_" + 48 hex digits into tok (ENROLL_TOKEN_LEN + 1 bytes) and
 * fills rec's token_id and hash. */
static bool token_generate(char *tok, em_store_enroll_token_t *rec)
{
    static const char hex[] = "0123456789abcdef";
    unsigned char rnd[24];
    if (RAND_bytes(rnd, sizeof rnd) != 1)
        return false;
    memcpy(tok, "enr_", 4);
    for (size_t i = 0; i < sizeof rnd; i++) {
        tok[4 + 2 * i] = hex[rnd[i] >> 4];
        tok[4 + 2 * i + 1] = hex[rnd[i] & 15];
    }
    tok[ENROLL_TOKEN_LEN] = '\0';
    OPENSSL_cleanse(rnd, sizeof rnd);
    memcpy(rec->token_id, "e_", 2);
    memcpy(rec->token_id + 2, tok + 4, 12);
    rec->token_id[14] = '\0';
    return sha256(tok, ENROLL_TOKEN_LEN, rec->hash);
}

/* The device of an operator route ({id}): 404 when unknown. Returns false
 * when it answered; *enabled receives its state. */
static bool route_device(em__api_req_t *r, const char *id, bool *enabled)
{
    if (!valid_id(id)) {
        em__api_error(r, 404, "device_not_found", "no such device", NULL);
        return false;
    }
    em_error_t e;
    em_error_clear(&e);
    em_err_t rc = device_state(r, id, enabled, &e);
    if (rc == EM_ERR_DEVICE_NOT_FOUND) {
        em__api_error(r, 404, "device_not_found", "no such device", NULL);
        return false;
    }
    if (rc != EM_OK) {
        em__api_error_from(r, rc, &e);
        return false;
    }
    return true;
}

static void create_enroll_token(em__api_req_t *r)
{
    static const char *const fields[] = {"ttl", NULL};
    if (!no_params(r))
        return;
    const em_api_options_t *o = em__api_options(r->api);
    const char *id = r->captures[0];
    int64_t ttl = o->enroll_token_ttl_s;
    if (r->body != NULL && r->body_len > 0) {
        cJSON *body = em__api_body_object(r);
        if (body == NULL)
            return;
        if (!em__api_only_fields(r, body, fields)) {
            cJSON_Delete(body);
            return;
        }
        const cJSON *v = cJSON_GetObjectItemCaseSensitive(body, "ttl");
        if (v != NULL) {
            if (!cJSON_IsNumber(v) || v->valuedouble != (double)(int64_t)v->valuedouble ||
                v->valuedouble < 1 || v->valuedouble > o->enroll_token_ttl_max_s) {
                char msg[96];
                snprintf(msg, sizeof msg, "ttl: must be an integer from 1 to %d",
                         o->enroll_token_ttl_max_s);
                em__api_error(r, 400, "validation", msg, NULL);
                cJSON_Delete(body);
                return;
            }
            ttl = (int64_t)v->valuedouble;
        }
        cJSON_Delete(body);
    }
    bool enabled = false;
    if (!route_device(r, id, &enabled))
        return;
    if (!enabled) {
        em__api_error(r, 409, "invalid_state", "device disabled", NULL);
        return;
    }

    char tok[ENROLL_TOKEN_LEN + 1];
    em_store_enroll_token_t rec;
    memset(&rec, 0, sizeof rec);
    if (!token_generate(tok, &rec)) {
        OPENSSL_cleanse(tok, sizeof tok);
        em__api_error(r, 500, NULL, NULL, "CSPRNG failure");
        return;
    }
    copy_id(rec.device_id, id);
    snprintf(rec.owner, sizeof rec.owner, "%s", r->who.actor);
    rec.created_at_ms = r->now_ms;
    rec.expires_at_ms = r->now_ms + ttl * 1000;
    em_error_t e;
    em_error_clear(&e);
    em_err_t rc = em_store_enroll_token_insert(r->store, &rec, &e);
    OPENSSL_cleanse(rec.hash, sizeof rec.hash);
    if (rc != EM_OK) {
        OPENSSL_cleanse(tok, sizeof tok);
        if (rc == EM_ERR_DEVICE_NOT_FOUND)
            em__api_error(r, 404, "device_not_found", "no such device", NULL);
        else
            em__api_error(r, 500, NULL, NULL, "enrollment token not stored");
        return;
    }
    em__api_audit(r, "enroll_token_created", id, "enrollment token %s for %s, valid %lld s",
                  rec.token_id, id, (long long)ttl);
    cJSON *data = cJSON_CreateObject();
    bool ok = data != NULL && add(data, "token", cJSON_CreateString(tok)) &&
              add(data, "tokenId", cJSON_CreateString(rec.token_id)) &&
              add(data, "deviceId", cJSON_CreateString(id)) &&
              add(data, "expiresAt", em__enc_time(rec.expires_at_ms));
    OPENSSL_cleanse(tok, sizeof tok);
    if (!ok) {
        cJSON_Delete(data);
        em__api_error(r, 500, NULL, NULL, "out of memory");
        return;
    }
    /* The answer holds the token: em__api_reply prints and frees the tree;
     * the printed copy lives in the answer's buffer only. */
    em__api_reply(r, 201, data, NULL);
}

typedef struct list_ctx {
    cJSON *arr;
    int64_t now_ms;
    bool oom;
} list_ctx_t;

static int token_row(const em_store_enroll_token_t *t, void *ud)
{
    list_ctx_t *c = ud;
    const char *state = t->used_at_ms != 0              ? "used"
                        : t->expires_at_ms <= c->now_ms ? "expired"
                                                        : "unused";
    cJSON *o = cJSON_CreateObject();
    bool ok = o != NULL && add(o, "tokenId", cJSON_CreateString(t->token_id)) &&
              add(o, "deviceId", cJSON_CreateString(t->device_id)) &&
              add(o, "owner", em__enc_str_or_null(t->owner)) &&
              add(o, "state", cJSON_CreateString(state)) &&
              add(o, "createdAt", em__enc_time(t->created_at_ms)) &&
              add(o, "expiresAt", em__enc_time(t->expires_at_ms)) &&
              add(o, "usedAt", em__enc_time(t->used_at_ms)) && cJSON_AddItemToArray(c->arr, o);
    if (!ok) {
        cJSON_Delete(o);
        c->oom = true;
        return 1;
    }
    return 0;
}

static void answer_list(em__api_req_t *r, em_err_t rc, const em_error_t *e, list_ctx_t *c)
{
    if (rc != EM_OK || c->oom) {
        cJSON_Delete(c->arr);
        if (rc == EM_ERR_DEVICE_NOT_FOUND || rc == EM_ERR_NOT_FOUND)
            em__api_error(r, 404, "device_not_found", "no such device", NULL);
        else if (rc != EM_OK)
            em__api_error_from(r, rc, e);
        else
            em__api_error(r, 500, NULL, NULL, "out of memory");
        return;
    }
    em__api_reply(r, 200, c->arr, NULL);
}

static void list_enroll_tokens(em__api_req_t *r)
{
    if (!no_params(r))
        return;
    const char *id = r->captures[0];
    bool enabled = false;
    if (!route_device(r, id, &enabled))
        return;
    list_ctx_t c = {cJSON_CreateArray(), r->now_ms, false};
    if (c.arr == NULL) {
        em__api_error(r, 500, NULL, NULL, "out of memory");
        return;
    }
    em_error_t e;
    em_error_clear(&e);
    em_err_t rc = em_store_enroll_token_list(r->store, id, token_row, &c, &e);
    answer_list(r, rc, &e, &c);
}

/* ---- a device's certificates ------------------------------------------- */

static int cert_row(const em_store_device_cert_t *dc, void *ud)
{
    list_ctx_t *c = ud;
    cJSON *o = cJSON_CreateObject();
    const char *state = dc->not_after_ms <= c->now_ms ? "expired" : "valid";
    bool ok = o != NULL && add(o, "serial", cJSON_CreateString(dc->serial)) &&
              add(o, "state", cJSON_CreateString(state)) &&
              add(o, "sha256", cJSON_CreateString(dc->sha256)) &&
              add(o, "notAfter", em__enc_time(dc->not_after_ms)) &&
              add(o, "createdAt", em__enc_time(dc->created_at_ms)) &&
              add(o, "certificate", cJSON_CreateString(dc->pem)) && cJSON_AddItemToArray(c->arr, o);
    if (!ok) {
        cJSON_Delete(o);
        c->oom = true;
        return 1;
    }
    return 0;
}

/* Adds "revokedAt" to each row (null unless the CA's index says it is
 * revoked), and makes a revoked one's state "revoked". Done after the
 * listing: the store's callbacks must not wait on anything else. */
static bool add_revocations(em__api_req_t *r, cJSON *arr)
{
    em_pki_t *pki = em__api_options(r->api)->pki;
    cJSON *row;
    cJSON_ArrayForEach(row, arr)
    {
        const cJSON *serial = cJSON_GetObjectItemCaseSensitive(row, "serial");
        em_pki_cert_t info;
        int64_t revoked_at = 0;
        if (pki != NULL && cJSON_IsString(serial) &&
            em_pki_get(pki, serial->valuestring, &info, NULL, NULL) == EM_OK)
            revoked_at = info.revoked_at_ms;
        if (revoked_at != 0) {
            cJSON *state = cJSON_CreateString("revoked");
            if (state == NULL || !cJSON_ReplaceItemInObjectCaseSensitive(row, "state", state)) {
                cJSON_Delete(state);
                return false;
            }
        }
        if (!add(row, "revokedAt", em__enc_time(revoked_at)))
            return false;
    }
    return true;
}

static void list_certificates(em__api_req_t *r)
{
    if (!no_params(r))
        return;
    const char *id = r->captures[0];
    if (!valid_id(id)) {
        em__api_error(r, 404, "device_not_found", "no such device", NULL);
        return;
    }
    list_ctx_t c = {cJSON_CreateArray(), r->now_ms, false};
    if (c.arr == NULL) {
        em__api_error(r, 500, NULL, NULL, "out of memory");
        return;
    }
    em_error_t e;
    em_error_clear(&e);
    em_err_t rc = em_store_device_cert_list(r->store, id, cert_row, &c, &e);
    if (rc == EM_OK && !c.oom && !add_revocations(r, c.arr))
        c.oom = true;
    answer_list(r, rc, &e, &c);
}

/* ---- enrollment ---------------------------------------------------------- */

/* Checks the CSR as context.md orders it (parse, signature, key, CN) so that
 * each refusal says which rule it broke. Returns false when it answered. */
static bool csr_ok(em__api_req_t *r, const char *id, const char *csr, size_t len)
{
    char msg[EM_ERROR_MESSAGE_MAX + 16];
    if (len == 0 || len > (size_t)EM_PKI_CSR_MAX) {
        snprintf(msg, sizeof msg, "csr: must be a PEM certificate request of at most %d bytes",
                 EM_PKI_CSR_MAX);
        refuse(r, 400, "validation", msg, "enroll_refused", EM_SEV_MEDIUM, id, msg);
        return false;
    }
    BIO *b = BIO_new_mem_buf(csr, (int)len);
    X509_REQ *req = b != NULL ? PEM_read_bio_X509_REQ(b, NULL, NULL, NULL) : NULL;
    BIO_free(b);
    if (req == NULL) {
        refuse(r, 400, "message_format", "csr: not a PEM certificate request", "enroll_refused",
               EM_SEV_MEDIUM, id, "csr: not a PEM certificate request");
        return false;
    }
    bool ok = false;
    EVP_PKEY *key = X509_REQ_get0_pubkey(req);
    em_error_t e;
    em_error_clear(&e);
    if (key == NULL || X509_REQ_verify(req, key) != 1) {
        refuse(r, 400, "validation", "csr: signature does not verify", "enroll_refused",
               EM_SEV_MEDIUM, id, "csr: signature does not verify");
    } else if (em_pki_key_acceptable(key, &e) != EM_OK) {
        snprintf(msg, sizeof msg, "csr: %s", e.message);
        refuse(r, 400, "validation", msg, "enroll_refused", EM_SEV_MEDIUM, id, msg);
    } else {
        X509_NAME *subj = X509_REQ_get_subject_name(req);
        int idx = X509_NAME_get_index_by_NID(subj, NID_commonName, -1);
        unsigned char *utf8 = NULL;
        int n = -1;
        if (idx >= 0 && X509_NAME_get_index_by_NID(subj, NID_commonName, idx) < 0)
            n = ASN1_STRING_to_UTF8(&utf8,
                                    X509_NAME_ENTRY_get_data(X509_NAME_get_entry(subj, idx)));
        ok = n > 0 && (size_t)n == strlen(id) && memcmp(utf8, id, (size_t)n) == 0;
        OPENSSL_free(utf8);
        if (!ok)
            refuse(r, 400, "validation", "csr: CN must be the device id", "enroll_refused",
                   EM_SEV_MEDIUM, id, "csr: CN must be the device id");
    }
    X509_REQ_free(req);
    return ok;
}

/* The answer to a successful enrollment. NULL when memory ran out. */
static cJSON *enroll_answer(em__api_req_t *r, const char *pem, const em_pki_cert_t *info)
{
    em_pki_t *pki = em__api_options(r->api)->pki;
    char *ca = read_text_file(em_pki_ca_file(pki), CA_FILE_MAX);
    if (ca == NULL)
        ca = cert_pem(em_pki_ca_cert(pki), CA_FILE_MAX);
    cJSON *data = cJSON_CreateObject();
    bool ok = data != NULL && ca != NULL && add(data, "certificate", cJSON_CreateString(pem)) &&
              add(data, "caCertificate", cJSON_CreateString(ca)) &&
              add(data, "serial", cJSON_CreateString(info->serial)) &&
              add(data, "notAfter", em__enc_time(info->not_after_ms));
    free(ca);
    if (!ok) {
        cJSON_Delete(data);
        return NULL;
    }
    return data;
}

/*
 * The enrollment token tok presented for device id: its shape, then used
 * (burnt) by this presentation whatever follows; unknown, already used,
 * expired or another device's is refused. Returns false when it answered;
 * *t receives the token's record.
 */
static bool use_token(em__api_req_t *r, const char *id, const char *tok, em_store_enroll_token_t *t)
{
    static const char *const type = "enroll_refused";
    size_t tlen = strlen(tok);
    if (!em__id_token_shape_ok(tok, tlen)) {
        refuse(r, 401, NULL, NULL, type, EM_SEV_MEDIUM, id, "malformed enrollment token");
        return false;
    }
    unsigned char hash[32];
    if (!sha256(tok, tlen, hash)) {
        em__api_error(r, 500, NULL, NULL, "SHA-256 failed");
        return false;
    }
    memset(t, 0, sizeof *t);
    em_error_t e;
    em_error_clear(&e);
    em_err_t rc = em_store_enroll_token_use(r->store, hash, r->now_ms, t, &e);
    OPENSSL_cleanse(hash, sizeof hash);
    if (rc == EM_ERR_NOT_FOUND) {
        refuse(r, 401, NULL, NULL, type, EM_SEV_MEDIUM, id, "unknown enrollment token");
        return false;
    }
    if (rc != EM_OK) {
        em__api_error_from(r, rc, &e);
        return false;
    }
    char why[160];
    if (t->used_at_ms != 0) {
        snprintf(why, sizeof why, "enrollment token %s used again", t->token_id);
        refuse(r, 401, NULL, NULL, type, EM_SEV_HIGH, id, why);
        return false;
    }
    if (t->expires_at_ms <= r->now_ms) {
        snprintf(why, sizeof why, "enrollment token %s expired", t->token_id);
        refuse(r, 401, NULL, NULL, type, EM_SEV_MEDIUM, id, why);
        return false;
    }
    if (strcmp(t->device_id, id) != 0) {
        snprintf(why, sizeof why, "enrollment token %s of device %s presented for another",
                 t->token_id, t->device_id);
        refuse(r, 401, NULL, NULL, type, EM_SEV_MEDIUM, id, why);
        return false;
    }
    return true;
}

static void enroll(em__api_req_t *r)
{
    static const char *const type = "enroll_refused";
    if (!no_params(r) || !public_gate(r))
        return;
    em_api_t *api = r->api;
    const em_api_options_t *o = em__api_options(api);
    if (o->pki == NULL) {
        em__api_error(r, 503, "configuration", "enrollment is not configured", NULL);
        return;
    }
    em__id_body_t b;
    cJSON *body = pub_body(r, EM__ID_ENROLL, type, &b);
    if (body == NULL)
        return;
    const char *id = b.device_id, *tok = b.token, *csr = b.csr;

    em_store_enroll_token_t t;
    if (!use_token(r, id, tok, &t))
        goto out;

    /* The device: registered and enabled. */
    bool enabled = false;
    em_error_t e;
    em_error_clear(&e);
    em_err_t rc = device_state(r, id, &enabled, &e);
    if (rc != EM_OK && rc != EM_ERR_DEVICE_NOT_FOUND) {
        em__api_error_from(r, rc, &e);
        goto out;
    }
    if (rc == EM_ERR_DEVICE_NOT_FOUND || !enabled) {
        refuse(r, 403, NULL, NULL, type, EM_SEV_MEDIUM, id,
               rc == EM_ERR_DEVICE_NOT_FOUND ? "enrollment of an unknown device"
                                             : "enrollment of a disabled device");
        goto out;
    }

    size_t clen = strlen(csr);
    if (!csr_ok(r, id, csr, clen))
        goto out;

    em_pki_issue_options_t io;
    memset(&io, 0, sizeof io);
    io.profile = EM_CERT_DEVICE;
    io.common_name = id;
    io.days = o->device_cert_days;
    char *pem = NULL;
    em_pki_cert_t info;
    memset(&info, 0, sizeof info);
    em_error_clear(&e);
    rc = em_pki_issue_csr(o->pki, &io, csr, clen, &pem, &info, &e);
    if (rc != EM_OK) {
        char msg[EM_ERROR_MESSAGE_MAX + 16];
        snprintf(msg, sizeof msg, "csr: %s", e.message);
        if (rc == EM_ERR_VALIDATION || rc == EM_ERR_MESSAGE_FORMAT || rc == EM_ERR_CRYPTO) {
            refuse(r, 400, rc == EM_ERR_MESSAGE_FORMAT ? "message_format" : "validation", msg, type,
                   EM_SEV_MEDIUM, id, msg);
        } else if (rc == EM_ERR_STATE || rc == EM_ERR_CERTIFICATE) {
            /* The CA cannot sign (no key, or expired): the operator's to fix. */
            sec_event(r, "enroll_failed", EM_SEV_HIGH, id, "the CA cannot sign: %s", e.message);
            em__api_error(r, 503, "configuration", "enrollment is not available", e.message);
        } else {
            em__api_error_from(r, rc, &e);
        }
        goto out;
    }

    em_store_device_cert_t dc;
    memset(&dc, 0, sizeof dc);
    copy_id(dc.device_id, id);
    snprintf(dc.serial, sizeof dc.serial, "%s", info.serial);
    snprintf(dc.sha256, sizeof dc.sha256, "%s", info.sha256);
    size_t plen = strlen(pem);
    if (plen <= EM_STORE_CERT_PEM_MAX)
        memcpy(dc.pem, pem, plen + 1);
    dc.not_after_ms = info.not_after_ms;
    dc.created_at_ms = r->now_ms;
    em_error_clear(&e);
    rc = plen <= EM_STORE_CERT_PEM_MAX ? em_store_device_cert_insert(r->store, &dc, &e)
                                       : EM_ERR_LIMIT;
    if (rc != EM_OK) {
        /* Issued but not registered: the device never gets it, so it is
         * never used; the index keeps it for the record. */
        em_log_field_t f[2] = {EM_LOG_STR("serial", info.serial), EM_LOG_STR("error", e.message)};
        em_log(EM_LOG_ERROR, "api", r->cid, "issued certificate not registered", f, 2);
        em__api_error(r, 500, NULL, NULL, "certificate not registered");
        free(pem);
        goto out;
    }
    snprintf(r->who.actor, sizeof r->who.actor, "device:%s", id);
    em__api_audit(r, "device_enrolled", id,
                  "device %s enrolled with token %s: certificate %s until %lld", id, t.token_id,
                  info.serial, (long long)(info.not_after_ms / 1000));
    cJSON *data = enroll_answer(r, pem, &info);
    free(pem);
    if (data == NULL)
        em__api_error(r, 500, NULL, NULL, "out of memory");
    else
        em__api_reply(r, 201, data, NULL);
out:
    cJSON_Delete(body);
}

/* ---- challenge-response ------------------------------------------------ */

static void challenge(em__api_req_t *r)
{
    static const char *const type = "challenge_refused";
    if (!no_params(r) || !public_gate(r))
        return;
    em_api_t *api = r->api;
    if (device_verifier(api) == NULL) {
        em__api_error(r, 503, "configuration", "device authentication is not configured", NULL);
        return;
    }
    em__id_body_t b;
    cJSON *body = pub_body(r, EM__ID_CHALLENGE, type, &b);
    if (body == NULL)
        return;
    const char *id = b.device_id;
    /* Any valid id gets a nonce: the answer does not tell which devices
     * exist. */
    char nonce[EM__NONCE_TEXT + 1];
    uint32_t retry = 0;
    int64_t ttl_ms = (int64_t)em__api_options(api)->nonce_ttl_s * 1000;
    em_err_t rc = em__nonces_issue(api->nonces, id, em_mono_ms(), ttl_ms, nonce, &retry);
    if (rc == EM_ERR_LIMIT) {
        char key[EM__BUCKET_KEY_MAX + 1], host[EM__BUCKET_KEY_MAX - 3];
        source_host(r->source, host, sizeof host);
        snprintf(key, sizeof key, "pub:%s", host);
        if (em__buckets_report(api->buckets, key, em_mono_ms(), 60000))
            sec_event(r, "nonces_exhausted", EM_SEV_HIGH, id,
                      "%zu challenge nonces outstanding: new ones refused",
                      em__nonces_count(api->nonces));
        em__api_call_t *call = (em__api_call_t *)r;
        snprintf(call->retry_buf, sizeof call->retry_buf, "%u", retry);
        call->retry_after = call->retry_buf;
        em__api_error(r, 503, "limit_reached", "too many outstanding challenges", NULL);
        goto out;
    }
    if (rc != EM_OK) {
        em__api_error(r, 500, NULL, NULL, "nonce not made");
        goto out;
    }
    cJSON *data = cJSON_CreateObject();
    if (data == NULL || !add(data, "nonce", cJSON_CreateString(nonce)) ||
        !add(data, "expiresAt", em__enc_time(r->now_ms + ttl_ms))) {
        cJSON_Delete(data);
        em__api_error(r, 500, NULL, NULL, "out of memory");
        goto out;
    }
    em__api_reply(r, 200, data, NULL);
out:
    cJSON_Delete(body);
}

/* A presented certificate: the first PEM certificate of text, the others
 * into *chain (NULL when none). NULL when text holds none. */
static X509 *parse_presented(const char *text, size_t len, STACK_OF(X509) * *chain)
{
    *chain = NULL;
    BIO *b = BIO_new_mem_buf(text, (int)len);
    if (b == NULL)
        return NULL;
    X509 *leaf = PEM_read_bio_X509(b, NULL, NULL, NULL);
    if (leaf != NULL) {
        X509 *c;
        for (int i = 0; i < CHAIN_MAX && (c = PEM_read_bio_X509(b, NULL, NULL, NULL)) != NULL;
             i++) {
            if (*chain == NULL)
                *chain = sk_X509_new_null();
            if (*chain == NULL || sk_X509_push(*chain, c) <= 0) {
                X509_free(c);
                break;
            }
        }
    }
    BIO_free(b);
    ERR_clear_error();
    return leaf;
}

typedef struct find_ctx {
    const char *sha256;
    bool found;
} find_ctx_t;

static int find_row(const em_store_device_cert_t *c, void *ud)
{
    find_ctx_t *f = ud;
    if (strcmp(c->sha256, f->sha256) == 0) {
        f->found = true;
        return 1;
    }
    return 0;
}

/* The device certificate to check: the presented one (*is_new when it is
 * not registered yet), or the latest registered one. NULL with *why set when
 * there is none; *status then tells how to answer (400 or 401; 500 on a
 * store failure). */
static X509 *pick_cert(em__api_req_t *r, const char *id, const char *presented,
                       STACK_OF(X509) * *chain, bool *is_new, const char **why, int *status)
{
    em_error_t e;
    em_error_clear(&e);
    *is_new = false;
    *status = 401;
    if (presented != NULL) {
        size_t len = strlen(presented);
        X509 *cert =
            len > 0 && len <= EM__ID_CERT_TEXT_MAX ? parse_presented(presented, len, chain) : NULL;
        if (cert == NULL) {
            *why = "certificate: not a PEM certificate";
            *status = 400;
            return NULL;
        }
        char fp[EM_PKI_SHA256_LEN + 1];
        em_pki_fingerprint(cert, fp);
        find_ctx_t f = {fp, false};
        em_err_t rc = em_store_device_cert_list(r->store, id, find_row, &f, &e);
        if (rc != EM_OK && rc != EM_ERR_DEVICE_NOT_FOUND && rc != EM_ERR_NOT_FOUND) {
            *why = "certificate lookup failed";
            *status = 500;
        } else if (rc != EM_OK) {
            *why = "unknown device";
        } else {
            *is_new = !f.found;
            return cert;
        }
        X509_free(cert);
        sk_X509_pop_free(*chain, X509_free);
        *chain = NULL;
        return NULL;
    }
    em_store_device_cert_t *dc = calloc(1, sizeof *dc);
    if (dc == NULL) {
        *why = "out of memory";
        *status = 500;
        return NULL;
    }
    em_err_t rc = em_store_device_cert_latest(r->store, id, dc, &e);
    X509 *cert = NULL;
    if (rc == EM_OK) {
        BIO *b = BIO_new_mem_buf(dc->pem, -1);
        cert = b != NULL ? PEM_read_bio_X509(b, NULL, NULL, NULL) : NULL;
        BIO_free(b);
        if (cert == NULL) {
            *why = "registered certificate unreadable";
            *status = 500;
        }
    } else if (rc == EM_ERR_NOT_FOUND) {
        *why = "no registered certificate";
    } else if (rc == EM_ERR_DEVICE_NOT_FOUND) {
        *why = "unknown device";
    } else {
        *why = "certificate lookup failed";
        *status = 500;
    }
    free(dc);
    return cert;
}

/* Registers a presented certificate that has just proved itself. */
static bool register_cert(em__api_req_t *r, const char *id, X509 *cert,
                          const em_cert_identity_t *ci)
{
    em_store_device_cert_t *dc = calloc(1, sizeof *dc);
    char *pem = cert_pem(cert, EM_STORE_CERT_PEM_MAX);
    bool ok = false;
    if (dc != NULL && pem != NULL) {
        copy_id(dc->device_id, id);
        snprintf(dc->serial, sizeof dc->serial, "%s", ci->serial);
        snprintf(dc->sha256, sizeof dc->sha256, "%s", ci->sha256);
        memcpy(dc->pem, pem, strlen(pem) + 1);
        dc->not_after_ms = ci->not_after_ms;
        dc->created_at_ms = r->now_ms;
        em_error_t e;
        em_error_clear(&e);
        em_err_t rc = em_store_device_cert_insert(r->store, dc, &e);
        ok = rc == EM_OK || rc == EM_ERR_EXISTS;
        if (rc == EM_OK)
            em__api_audit(r, "device_cert_registered", id,
                          "certificate %s of %s registered at its first device token", ci->serial,
                          id);
        else if (!ok)
            em_log(EM_LOG_ERROR, "api", r->cid, "certificate not registered",
                   &EM_LOG_STR("error", e.message), 1);
    }
    free(pem);
    free(dc);
    return ok;
}

static void device_token(em__api_req_t *r)
{
    static const char *const type = "device_auth_refused";
    if (!no_params(r) || !public_gate(r))
        return;
    em_api_t *api = r->api;
    em_verifier_t *v = device_verifier(api);
    if (v == NULL) {
        em__api_error(r, 503, "configuration", "device authentication is not configured", NULL);
        return;
    }
    em__id_body_t b;
    cJSON *body = pub_body(r, EM__ID_DEVICE_TOKEN, type, &b);
    if (body == NULL)
        return;
    X509 *cert = NULL;
    STACK_OF(X509) *chain = NULL;
    unsigned char *sig = NULL;
    const char *id = b.device_id, *nonce = b.nonce, *sig_text = b.signature,
               *presented = b.certificate;

    /* The nonce first: whatever follows, it has been used. */
    size_t nlen = strlen(nonce);
    em__nonce_result_t nr = em__nonces_take(api->nonces, nonce, nlen, id, em_mono_ms());
    if (nr != EM__NONCE_OK) {
        refuse(r, 401, NULL, NULL, type, EM_SEV_MEDIUM, id, em__nonce_result_text(nr));
        goto out;
    }

    size_t slen = strlen(sig_text);
    sig = malloc(EM__ID_SIG_MAX);
    long sig_len = sig != NULL && slen > 0 && slen <= EM__ID_SIG_TEXT_MAX
                       ? em__id_b64url_decode(sig_text, slen, sig, EM__ID_SIG_MAX)
                       : -1;
    if (sig == NULL) {
        em__api_error(r, 500, NULL, NULL, "out of memory");
        goto out;
    }
    if (sig_len <= 0) {
        refuse(r, 400, "validation", "signature: must be base64url without padding", type,
               EM_SEV_MEDIUM, id, "signature: not base64url");
        goto out;
    }

    bool is_new = false;
    const char *why = NULL;
    int status = 401;
    cert = pick_cert(r, id, presented, &chain, &is_new, &why, &status);
    if (cert == NULL) {
        if (status == 500)
            em__api_error(r, 500, NULL, NULL, why);
        else
            refuse(r, status, status == 400 ? "message_format" : NULL, why, type, EM_SEV_MEDIUM, id,
                   why);
        goto out;
    }

    /* The certificate now: chain, validity, CRL, usages, CN, device state. */
    em_cert_identity_t ci;
    memset(&ci, 0, sizeof ci);
    em_error_t e;
    em_error_clear(&e);
    if (em_verifier_check_device(v, cert, chain, r->now_ms, device_check, r, &ci, &e) != EM_OK) {
        char reason[EM_ERROR_MESSAGE_MAX + 32];
        snprintf(reason, sizeof reason, "certificate refused: %s", e.message);
        bool revoked = strstr(e.message, "revoked") != NULL;
        refuse(r, 401, NULL, NULL, type, revoked ? EM_SEV_HIGH : EM_SEV_MEDIUM, id, reason);
        goto out;
    }
    if (strcmp(ci.common_name, id) != 0) {
        refuse(r, 401, NULL, NULL, type, EM_SEV_HIGH, id, "certificate of another device");
        goto out;
    }

    /* The signature over exactly "emiot-device-auth-v1\n<id>\n<nonce>" (the
     * id is a valid id and the nonce was one: both are short). */
    char msg[sizeof AUTH_MSG_PREFIX + EM_DEVICE_ID_MAX + 1 + EM__NONCE_TEXT + 1];
    int mlen = snprintf(msg, sizeof msg, AUTH_MSG_PREFIX "%s\n%s", id, nonce);
    if (mlen < 0 || (size_t)mlen >= sizeof msg) {
        em__api_error(r, 500, NULL, NULL, "challenge message too long");
        goto out;
    }
    em_error_clear(&e);
    if (em_pki_verify_signature(cert, msg, (size_t)mlen, sig, (size_t)sig_len, &e) != EM_OK) {
        refuse(r, 401, NULL, NULL, type, EM_SEV_HIGH, id, "signature does not verify");
        goto out;
    }
    snprintf(r->who.actor, sizeof r->who.actor, "device:%s", id);
    if (is_new && !register_cert(r, id, cert, &ci)) {
        em__api_error(r, 500, NULL, NULL, "certificate not registered");
        goto out;
    }

    em__api_identity_t who;
    memset(&who, 0, sizeof who);
    who.method = EM__AUTHN_JWT;
    who.role = EM_ROLE_DEVICE;
    copy_id(who.name, id);
    copy_id(who.device_id, id);
    snprintf(who.actor, sizeof who.actor, "device:%s", id);
    char *tok = malloc(TOKEN_BUF);
    int64_t exp_ms = 0;
    int ttl = em__api_options(api)->device_token_ttl_s;
    if (tok == NULL ||
        em__api_jwt_issue_caps(api, &who, device_caps, sizeof device_caps / sizeof device_caps[0],
                               ttl, tok, TOKEN_BUF, &exp_ms) != EM_OK) {
        free(tok);
        em__api_error(r, 500, NULL, NULL, "token not issued");
        goto out;
    }
    em__api_audit(r, "device_token_issued", id, "device token for %s (certificate %s), %d s", id,
                  ci.serial, ttl);
    cJSON *data = cJSON_CreateObject();
    bool ok = data != NULL && add(data, "token", cJSON_CreateString(tok)) &&
              add(data, "tokenType", cJSON_CreateString("Bearer")) &&
              add(data, "expiresAt", em__enc_time(exp_ms));
    OPENSSL_cleanse(tok, TOKEN_BUF);
    free(tok);
    if (!ok) {
        cJSON_Delete(data);
        em__api_error(r, 500, NULL, NULL, "out of memory");
        goto out;
    }
    em__api_reply(r, 200, data, NULL);
out:
    X509_free(cert);
    sk_X509_pop_free(chain, X509_free);
    free(sig);
    cJSON_Delete(body);
}

static const em__api_route_t routes[] = {
    {EVHTTP_REQ_POST, "/api/v1/devices/{id}/enrollment-tokens", EM_ROLE_OPERATOR, EM__ROUTE_BODY,
     create_enroll_token},
    {EVHTTP_REQ_GET, "/api/v1/devices/{id}/enrollment-tokens", EM_ROLE_OPERATOR, 0,
     list_enroll_tokens},
    {EVHTTP_REQ_GET, "/api/v1/devices/{id}/certificates", EM_ROLE_OPERATOR, EM__ROUTE_DEVICE_OK,
     list_certificates},
    {EVHTTP_REQ_POST, "/api/v1/enroll", EM_ROLE_NONE, EM__ROUTE_PUBLIC | EM__ROUTE_BODY, enroll},
    {EVHTTP_REQ_POST, "/api/v1/auth/challenge", EM_ROLE_NONE, EM__ROUTE_PUBLIC | EM__ROUTE_BODY,
     challenge},
    {EVHTTP_REQ_POST, "/api/v1/auth/device-token", EM_ROLE_NONE, EM__ROUTE_PUBLIC | EM__ROUTE_BODY,
     device_token},
};

const em__api_route_table_t em__api_routes_identity = {routes, sizeof routes / sizeof routes[0]};
