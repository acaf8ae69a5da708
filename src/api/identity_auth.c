/*
 * emiot - identity_auth.c: challenge-response (docs/API.md, "Device
 * identity"): the public POST /api/v1/auth/challenge gives a device a
 * one-time nonce; POST /api/v1/auth/device-token takes that nonce signed
 * with the device's key, checks the device's certificate against the device
 * CA and its CRL, and answers a device JWT. The route table and what the
 * public routes share (gate, security events, refusals) are
 * routes_identity.c's.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <openssl/crypto.h>
#include <openssl/err.h>
#include <openssl/pem.h>
#include <openssl/x509.h>

#include "api/api_core.h"
#include "api/encode.h"
#include "api/identity_routes.h"
#include "api/nonce.h"
#include "emiot/clock.h"
#include "emiot/log.h"

#define CHAIN_MAX       8 /* certificates presented after the device's */
#define TOKEN_BUF       4096
#define AUTH_MSG_PREFIX "emiot-device-auth-v1\n"

/* The capabilities of a device JWT. */
static const char *const device_caps[] = {"device:read", "status:read", "telemetry:read",
                                          "commands:read"};

/* ---- small helpers ------------------------------------------------------- */

/* em_verifier_check_device's question, asked of the store (not a cache:
 * enrollment and device tokens are rare, and must see a disable at once). */
static em_err_t device_check(const char *device_id, void *userdata)
{
    em__api_req_t *r = userdata;
    bool enabled = false;
    em_error_t e;
    em_error_clear(&e);
    em_err_t rc = em__id_device_state(r, device_id, &enabled, &e);
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

/* ---- challenge-response ------------------------------------------------ */

/* How both challenge-response routes begin: no query parameters, the gate
 * of the public routes, device authentication configured (the verifier into
 * *v when v is not NULL), the body (em__id_pub_body with type) into *b.
 * Returns the body (the caller frees it), or NULL when it answered. */
static cJSON *open_route(em__api_req_t *r, em__id_route_t route, const char *type,
                         em_verifier_t **v, em__id_body_t *b)
{
    if (!em__id_no_params(r) || !em__id_public_gate(r))
        return NULL;
    em_verifier_t *verifier = device_verifier(r->api);
    if (verifier == NULL) {
        em__api_error(r, 503, "configuration", "device authentication is not configured", NULL);
        return NULL;
    }
    if (v != NULL)
        *v = verifier;
    return em__id_pub_body(r, route, type, b);
}

void em__id_challenge(em__api_req_t *r)
{
    em_api_t *api = r->api;
    em__id_body_t b;
    cJSON *body = open_route(r, EM__ID_CHALLENGE, "challenge_refused", NULL, &b);
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
        char key[EM__BUCKET_KEY_MAX + 1];
        em__id_public_key(r, key, sizeof key);
        if (em__buckets_report(api->buckets, key, em_mono_ms(), 60000))
            em__id_sec_event(r, "nonces_exhausted", EM_SEV_HIGH, id,
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
    if (data == NULL || !em__id_add(data, "nonce", cJSON_CreateString(nonce)) ||
        !em__id_add(data, "expiresAt", em__enc_time(r->now_ms + ttl_ms))) {
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
    char *pem = em__id_cert_pem(cert, EM_STORE_CERT_PEM_MAX);
    bool ok = false;
    if (dc != NULL && pem != NULL) {
        em__id_copy_id(dc->device_id, id);
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

void em__id_device_token(em__api_req_t *r)
{
    static const char *const type = "device_auth_refused";
    em_api_t *api = r->api;
    em_verifier_t *v = NULL;
    em__id_body_t b;
    cJSON *body = open_route(r, EM__ID_DEVICE_TOKEN, type, &v, &b);
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
        em__id_refuse(r, 401, NULL, NULL, type, EM_SEV_MEDIUM, id, em__nonce_result_text(nr));
        goto out;
    }

    size_t slen = strlen(sig_text);
    sig = malloc(EM__ID_SIG_MAX);
    long sig_len = sig != NULL && slen > 0 && slen <= EM__ID_SIG_TEXT_MAX
                       ? em__b64url_decode(sig_text, slen, sig, EM__ID_SIG_MAX)
                       : -1;
    if (sig == NULL) {
        em__api_error(r, 500, NULL, NULL, "out of memory");
        goto out;
    }
    if (sig_len <= 0) {
        em__id_refuse(r, 400, "validation", "signature: must be base64url without padding", type,
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
            em__id_refuse(r, status, status == 400 ? "message_format" : NULL, why, type,
                          EM_SEV_MEDIUM, id, why);
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
        em__id_refuse(r, 401, NULL, NULL, type, revoked ? EM_SEV_HIGH : EM_SEV_MEDIUM, id, reason);
        goto out;
    }
    if (strcmp(ci.common_name, id) != 0) {
        em__id_refuse(r, 401, NULL, NULL, type, EM_SEV_HIGH, id, "certificate of another device");
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
        em__id_refuse(r, 401, NULL, NULL, type, EM_SEV_HIGH, id, "signature does not verify");
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
    em__id_copy_id(who.name, id);
    em__id_copy_id(who.device_id, id);
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
    bool ok = data != NULL && em__id_add(data, "token", cJSON_CreateString(tok)) &&
              em__id_add(data, "tokenType", cJSON_CreateString("Bearer")) &&
              em__id_add(data, "expiresAt", em__enc_time(exp_ms));
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
