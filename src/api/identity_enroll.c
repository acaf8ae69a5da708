/*
 * emiot - identity_enroll.c: enrollment (docs/API.md, "Device identity"):
 * an operator's one-time enrollment tokens for a device, the public
 * POST /api/v1/enroll (a CSR signed by the CA for such a token), and a
 * device's registered certificates. The route table and what the public
 * routes share (gate, security events, refusals) are routes_identity.c's.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <openssl/crypto.h>
#include <openssl/evp.h>
#include <openssl/pem.h>
#include <openssl/rand.h>
#include <openssl/x509.h>

#include "api/api_core.h"
#include "api/encode.h"
#include "api/identity_routes.h"
#include "emiot/log.h"

#define ENROLL_TOKEN_LEN EM__ENROLL_TOKEN_LEN
#define CA_FILE_MAX      65536

/* ---- small helpers ------------------------------------------------------- */

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
    if (!em__id_valid_id(id)) {
        em__api_error(r, 404, "device_not_found", "no such device", NULL);
        return false;
    }
    em_error_t e;
    em_error_clear(&e);
    em_err_t rc = em__id_device_state(r, id, enabled, &e);
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

void em__id_create_enroll_token(em__api_req_t *r)
{
    static const char *const fields[] = {"ttl", NULL};
    if (!em__id_no_params(r))
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
    em__id_copy_id(rec.device_id, id);
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
    bool ok = data != NULL && em__id_add(data, "token", cJSON_CreateString(tok)) &&
              em__id_add(data, "tokenId", cJSON_CreateString(rec.token_id)) &&
              em__id_add(data, "deviceId", cJSON_CreateString(id)) &&
              em__id_add(data, "expiresAt", em__enc_time(rec.expires_at_ms));
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

/* Appends the row o to the listing when it was built (ok), else, or when it
 * cannot be appended, frees it and stops the listing: memory ran out. */
static int row_done(list_ctx_t *c, cJSON *o, bool ok)
{
    if (!ok || !cJSON_AddItemToArray(c->arr, o)) {
        cJSON_Delete(o);
        c->oom = true;
        return 1;
    }
    return 0;
}

static int token_row(const em_store_enroll_token_t *t, void *ud)
{
    list_ctx_t *c = ud;
    const char *state = t->used_at_ms != 0              ? "used"
                        : t->expires_at_ms <= c->now_ms ? "expired"
                                                        : "unused";
    cJSON *o = cJSON_CreateObject();
    bool ok = o != NULL && em__id_add(o, "tokenId", cJSON_CreateString(t->token_id)) &&
              em__id_add(o, "deviceId", cJSON_CreateString(t->device_id)) &&
              em__id_add(o, "owner", em__enc_str_or_null(t->owner)) &&
              em__id_add(o, "state", cJSON_CreateString(state)) &&
              em__id_add(o, "createdAt", em__enc_time(t->created_at_ms)) &&
              em__id_add(o, "expiresAt", em__enc_time(t->expires_at_ms)) &&
              em__id_add(o, "usedAt", em__enc_time(t->used_at_ms));
    return row_done(c, o, ok);
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

void em__id_list_enroll_tokens(em__api_req_t *r)
{
    if (!em__id_no_params(r))
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
    bool ok = o != NULL && em__id_add(o, "serial", cJSON_CreateString(dc->serial)) &&
              em__id_add(o, "state", cJSON_CreateString(state)) &&
              em__id_add(o, "sha256", cJSON_CreateString(dc->sha256)) &&
              em__id_add(o, "notAfter", em__enc_time(dc->not_after_ms)) &&
              em__id_add(o, "createdAt", em__enc_time(dc->created_at_ms)) &&
              em__id_add(o, "certificate", cJSON_CreateString(dc->pem));
    return row_done(c, o, ok);
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
        if (!em__id_add(row, "revokedAt", em__enc_time(revoked_at)))
            return false;
    }
    return true;
}

void em__id_list_certificates(em__api_req_t *r)
{
    if (!em__id_no_params(r))
        return;
    const char *id = r->captures[0];
    if (!em__id_valid_id(id)) {
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
        em__id_refuse(r, 400, "validation", msg, "enroll_refused", EM_SEV_MEDIUM, id, msg);
        return false;
    }
    BIO *b = BIO_new_mem_buf(csr, (int)len);
    X509_REQ *req = b != NULL ? PEM_read_bio_X509_REQ(b, NULL, NULL, NULL) : NULL;
    BIO_free(b);
    if (req == NULL) {
        em__id_refuse(r, 400, "message_format", "csr: not a PEM certificate request",
                      "enroll_refused", EM_SEV_MEDIUM, id, "csr: not a PEM certificate request");
        return false;
    }
    bool ok = false;
    EVP_PKEY *key = X509_REQ_get0_pubkey(req);
    em_error_t e;
    em_error_clear(&e);
    if (key == NULL || X509_REQ_verify(req, key) != 1) {
        em__id_refuse(r, 400, "validation", "csr: signature does not verify", "enroll_refused",
                      EM_SEV_MEDIUM, id, "csr: signature does not verify");
    } else if (em_pki_key_acceptable(key, &e) != EM_OK) {
        snprintf(msg, sizeof msg, "csr: %s", e.message);
        em__id_refuse(r, 400, "validation", msg, "enroll_refused", EM_SEV_MEDIUM, id, msg);
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
            em__id_refuse(r, 400, "validation", "csr: CN must be the device id", "enroll_refused",
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
        ca = em__id_cert_pem(em_pki_ca_cert(pki), CA_FILE_MAX);
    cJSON *data = cJSON_CreateObject();
    bool ok = data != NULL && ca != NULL &&
              em__id_add(data, "certificate", cJSON_CreateString(pem)) &&
              em__id_add(data, "caCertificate", cJSON_CreateString(ca)) &&
              em__id_add(data, "serial", cJSON_CreateString(info->serial)) &&
              em__id_add(data, "notAfter", em__enc_time(info->not_after_ms));
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
        em__id_refuse(r, 401, NULL, NULL, type, EM_SEV_MEDIUM, id, "malformed enrollment token");
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
        em__id_refuse(r, 401, NULL, NULL, type, EM_SEV_MEDIUM, id, "unknown enrollment token");
        return false;
    }
    if (rc != EM_OK) {
        em__api_error_from(r, rc, &e);
        return false;
    }
    char why[160];
    if (t->used_at_ms != 0) {
        snprintf(why, sizeof why, "enrollment token %s used again", t->token_id);
        em__id_refuse(r, 401, NULL, NULL, type, EM_SEV_HIGH, id, why);
        return false;
    }
    if (t->expires_at_ms <= r->now_ms) {
        snprintf(why, sizeof why, "enrollment token %s expired", t->token_id);
        em__id_refuse(r, 401, NULL, NULL, type, EM_SEV_MEDIUM, id, why);
        return false;
    }
    if (strcmp(t->device_id, id) != 0) {
        snprintf(why, sizeof why, "enrollment token %s of device %s presented for another",
                 t->token_id, t->device_id);
        em__id_refuse(r, 401, NULL, NULL, type, EM_SEV_MEDIUM, id, why);
        return false;
    }
    return true;
}

void em__id_enroll(em__api_req_t *r)
{
    static const char *const type = "enroll_refused";
    if (!em__id_no_params(r) || !em__id_public_gate(r))
        return;
    em_api_t *api = r->api;
    const em_api_options_t *o = em__api_options(api);
    if (o->pki == NULL) {
        em__api_error(r, 503, "configuration", "enrollment is not configured", NULL);
        return;
    }
    em__id_body_t b;
    cJSON *body = em__id_pub_body(r, EM__ID_ENROLL, type, &b);
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
    em_err_t rc = em__id_device_state(r, id, &enabled, &e);
    if (rc != EM_OK && rc != EM_ERR_DEVICE_NOT_FOUND) {
        em__api_error_from(r, rc, &e);
        goto out;
    }
    if (rc == EM_ERR_DEVICE_NOT_FOUND || !enabled) {
        em__id_refuse(r, 403, NULL, NULL, type, EM_SEV_MEDIUM, id,
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
            em__id_refuse(r, 400, rc == EM_ERR_MESSAGE_FORMAT ? "message_format" : "validation",
                          msg, type, EM_SEV_MEDIUM, id, msg);
        } else if (rc == EM_ERR_STATE || rc == EM_ERR_CERTIFICATE) {
            /* The CA cannot sign (no key, or expired): the operator's to fix. */
            em__id_sec_event(r, "enroll_failed", EM_SEV_HIGH, id, "the CA cannot sign: %s",
                             e.message);
            em__api_error(r, 503, "configuration", "enrollment is not available", e.message);
        } else {
            em__api_error_from(r, rc, &e);
        }
        goto out;
    }

    em_store_device_cert_t dc;
    memset(&dc, 0, sizeof dc);
    em__id_copy_id(dc.device_id, id);
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
