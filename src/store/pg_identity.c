/*
 * emiot - pg_identity.c: device identity in the PostgreSQL backend (schema
 * version 2): one-time enrollment tokens and the certificates registered
 * for each device.
 *
 * Both tables reference devices (id) ON DELETE CASCADE: deleting a device
 * takes its tokens and certificates with it, and nothing is written for a
 * device that does not exist (the foreign key's name holds "device", which
 * the backend reports as EM_ERR_DEVICE_NOT_FOUND). seq breaks ties between
 * equal creation times in insertion order, as SQLite's rowid does.
 *
 * Using a token is one statement, atomic across connections and daemons:
 * it locks the token's row (FOR UPDATE), reads it, and marks it used only
 * when it was not. A second use running at the same time waits for the
 * lock, then reads the row as the first left it (READ COMMITTED re-reads a
 * locked row's newest version), so exactly one of them sees used_at_ms 0.
 * When the connection breaks, the statement may be sent again on a new one
 * (pg.c): if the first had committed, the second reads the token as used,
 * which refuses a genuine enrollment rather than letting a token work twice.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <openssl/crypto.h>

#include "store/pg_internal.h"

const char em__pg_schema_v2[] =
    "CREATE TABLE enroll_tokens ("
    " seq BIGINT GENERATED ALWAYS AS IDENTITY,"
    " token_id TEXT COLLATE \"C\" PRIMARY KEY,"
    " hash BYTEA NOT NULL UNIQUE CHECK (length(hash) = 32),"
    " device_id TEXT COLLATE \"C\" NOT NULL"
    "  CONSTRAINT enroll_tokens_device_fk REFERENCES devices (id) ON DELETE CASCADE,"
    " owner TEXT NOT NULL,"
    " created_at_ms BIGINT NOT NULL,"
    " expires_at_ms BIGINT NOT NULL,"
    " used_at_ms BIGINT NOT NULL DEFAULT 0);"
    "CREATE INDEX enroll_tokens_device ON enroll_tokens (device_id, created_at_ms, seq);"
    "CREATE INDEX enroll_tokens_expires ON enroll_tokens (expires_at_ms);"
    "CREATE TABLE device_certs ("
    " seq BIGINT GENERATED ALWAYS AS IDENTITY,"
    " device_id TEXT COLLATE \"C\" NOT NULL"
    "  CONSTRAINT device_certs_device_fk REFERENCES devices (id) ON DELETE CASCADE,"
    " serial TEXT COLLATE \"C\" NOT NULL,"
    " sha256 TEXT NOT NULL,"
    " pem TEXT NOT NULL,"
    " not_after_ms BIGINT NOT NULL,"
    " created_at_ms BIGINT NOT NULL,"
    " PRIMARY KEY (device_id, serial));";

#define TOKEN_COLS "token_id, device_id, owner, hash, created_at_ms, expires_at_ms, used_at_ms"
#define CERT_COLS  "c.serial, c.sha256, c.pem, c.not_after_ms, c.created_at_ms"

static const em__pg_stmt_t s_token_insert = {0, "em_ENROLL_TOKEN_INSERT",
                                             "INSERT INTO enroll_tokens (" TOKEN_COLS
                                             ") VALUES ($1, $2, $3, $4, $5, $6, $7)"};

/* o is the row as it was (locked); u marks it used only if it was not. */
static const em__pg_stmt_t s_token_use = {
    1, "em_ENROLL_TOKEN_USE",
    "WITH o AS (SELECT " TOKEN_COLS " FROM enroll_tokens WHERE hash = $1 FOR UPDATE), "
    "u AS (UPDATE enroll_tokens t SET used_at_ms = $2 FROM o WHERE t.token_id = o.token_id "
    "AND o.used_at_ms = 0 AND t.used_at_ms = 0 RETURNING 1) "
    "SELECT " TOKEN_COLS " FROM o"};

static const em__pg_stmt_t s_token_list = {
    2, "em_ENROLL_TOKEN_LIST",
    "SELECT " TOKEN_COLS " FROM enroll_tokens WHERE ($1::text IS NULL OR device_id = $1) "
    "ORDER BY created_at_ms, seq"};

static const em__pg_stmt_t s_token_prune = {3, "em_ENROLL_TOKEN_PRUNE",
                                            "DELETE FROM enroll_tokens WHERE expires_at_ms < $1"};

static const em__pg_stmt_t s_cert_insert = {
    4, "em_DEVICE_CERT_INSERT",
    "INSERT INTO device_certs (device_id, serial, sha256, pem, not_after_ms, created_at_ms) "
    "VALUES ($1, $2, $3, $4, $5, $6)"};

/* No row: no such device. One row of NULLs: a device without certificates. */
static const em__pg_stmt_t s_cert_latest = {
    5, "em_DEVICE_CERT_LATEST",
    "SELECT " CERT_COLS " FROM devices d LEFT JOIN device_certs c ON c.device_id = d.id "
    "WHERE d.id = $1 ORDER BY c.created_at_ms DESC, c.seq DESC LIMIT 1"};

static const em__pg_stmt_t s_cert_list = {
    6, "em_DEVICE_CERT_LIST",
    "SELECT " CERT_COLS " FROM devices d LEFT JOIN device_certs c ON c.device_id = d.id "
    "WHERE d.id = $1 ORDER BY c.created_at_ms, c.seq"};

static em_err_t no_device(const char *id, em_error_t *err)
{
    em_error_set(err, EM_ERR_DEVICE_NOT_FOUND, EM_SEV_LOW, "deviceId", "no such device");
    em_error_set_device(err, id);
    return EM_ERR_DEVICE_NOT_FOUND;
}

/* ---- enrollment tokens -------------------------------------------------- */

static void read_token(const PGresult *res, int row, em_store_enroll_token_t *t)
{
    memset(t, 0, sizeof(*t));
    em__pg_col_str(res, row, 0, t->token_id, sizeof(t->token_id));
    em__pg_col_str(res, row, 1, t->device_id, sizeof(t->device_id));
    em__pg_col_str(res, row, 2, t->owner, sizeof(t->owner));
    em__pg_col_hash(res, row, 3, t->hash);
    t->created_at_ms = em__pg_col_i64(res, row, 4);
    t->expires_at_ms = em__pg_col_i64(res, row, 5);
    t->used_at_ms = em__pg_col_i64(res, row, 6);
}

em_err_t em__pg_enroll_token_insert(em__store_conn_t *c, const em_store_enroll_token_t *t,
                                    em_error_t *err)
{
    em_err_t rc = em__pg_ensure_conn(c, err);
    if (rc != EM_OK)
        return rc;
    char h[67];
    em__pg_hash_param(t->hash, h);
    em__pg_params_t p = {0};
    em__pg_p_str(&p, t->token_id);
    em__pg_p_str(&p, t->device_id);
    em__pg_p_str(&p, t->owner);
    em__pg_p_str(&p, h);
    em__pg_p_i64(&p, t->created_at_ms);
    em__pg_p_i64(&p, t->expires_at_ms);
    em__pg_p_i64(&p, t->used_at_ms);
    rc = em__pg_run(c, &s_token_insert, &p, NULL, err);
    OPENSSL_cleanse(h, sizeof(h));
    if (rc == EM_ERR_EXISTS)
        return em_error_set(err, EM_ERR_EXISTS, EM_SEV_LOW, "tokenId",
                            "an enrollment token with this id or hash exists");
    if (rc == EM_ERR_DEVICE_NOT_FOUND)
        return no_device(t->device_id, err);
    return rc;
}

em_err_t em__pg_enroll_token_use(em__store_conn_t *c, const unsigned char hash[32], int64_t now_ms,
                                 em_store_enroll_token_t *out, em_error_t *err)
{
    em_err_t rc = em__pg_ensure_conn(c, err);
    if (rc != EM_OK)
        return rc;
    char h[67];
    em__pg_hash_param(hash, h);
    em__pg_params_t p = {0};
    em__pg_p_str(&p, h);
    em__pg_p_i64(&p, now_ms);
    PGresult *res = NULL;
    rc = em__pg_run(c, &s_token_use, &p, &res, err);
    OPENSSL_cleanse(h, sizeof(h));
    if (rc != EM_OK)
        return rc;
    if (PQntuples(res) == 1)
        read_token(res, 0, out); /* the record before this call */
    else
        rc = em_error_set(err, EM_ERR_NOT_FOUND, EM_SEV_LOW, "token", "no such enrollment token");
    PQclear(res);
    return rc;
}

typedef struct token_ctx {
    em_store_enroll_token_fn fn;
    void *ud;
} token_ctx_t;

static int token_row(PGresult *res, int row, void *ctx)
{
    token_ctx_t *l = ctx;
    em_store_enroll_token_t t;
    read_token(res, row, &t);
    int stop = l->fn(&t, l->ud);
    OPENSSL_cleanse(t.hash, sizeof(t.hash));
    return stop;
}

em_err_t em__pg_enroll_token_list(em__store_conn_t *c, const char *device_id,
                                  em_store_enroll_token_fn fn, void *ud, em_error_t *err)
{
    em_err_t rc = em__pg_ensure_conn(c, err);
    if (rc != EM_OK)
        return rc;
    em__pg_params_t p = {0};
    em__pg_p_str(&p, device_id);
    token_ctx_t l = {fn, ud};
    return em__pg_rows(c, &s_token_list, &p, token_row, &l, NULL, err);
}

em_err_t em__pg_identity_prune(em__store_conn_t *c, int64_t before_ms, uint64_t *total,
                               em_error_t *err)
{
    em__pg_params_t p = {0};
    em__pg_p_i64(&p, before_ms);
    PGresult *res = NULL;
    em_err_t rc = em__pg_run(c, &s_token_prune, &p, &res, err);
    if (rc == EM_OK)
        *total += em__pg_changed(res);
    PQclear(res);
    return rc;
}

/* ---- device certificates ------------------------------------------------ */

static void read_cert(const PGresult *res, int row, const char *device_id,
                      em_store_device_cert_t *cert)
{
    memset(cert, 0, sizeof(*cert));
    snprintf(cert->device_id, sizeof(cert->device_id), "%s", device_id);
    em__pg_col_str(res, row, 0, cert->serial, sizeof(cert->serial));
    em__pg_col_str(res, row, 1, cert->sha256, sizeof(cert->sha256));
    em__pg_col_str(res, row, 2, cert->pem, sizeof(cert->pem));
    cert->not_after_ms = em__pg_col_i64(res, row, 3);
    cert->created_at_ms = em__pg_col_i64(res, row, 4);
}

em_err_t em__pg_device_cert_insert(em__store_conn_t *c, const em_store_device_cert_t *cert,
                                   em_error_t *err)
{
    em_err_t rc = em__pg_ensure_conn(c, err);
    if (rc != EM_OK)
        return rc;
    em__pg_params_t p = {0};
    em__pg_p_str(&p, cert->device_id);
    em__pg_p_str(&p, cert->serial);
    em__pg_p_str(&p, cert->sha256);
    em__pg_p_str(&p, cert->pem);
    em__pg_p_i64(&p, cert->not_after_ms);
    em__pg_p_i64(&p, cert->created_at_ms);
    rc = em__pg_run(c, &s_cert_insert, &p, NULL, err);
    if (rc == EM_ERR_EXISTS)
        return em_error_set(err, EM_ERR_EXISTS, EM_SEV_LOW, "serial",
                            "this device has a certificate with this serial");
    if (rc == EM_ERR_DEVICE_NOT_FOUND)
        return no_device(cert->device_id, err);
    return rc;
}

em_err_t em__pg_device_cert_latest(em__store_conn_t *c, const char *device_id,
                                   em_store_device_cert_t *out, em_error_t *err)
{
    em_err_t rc = em__pg_ensure_conn(c, err);
    if (rc != EM_OK)
        return rc;
    em__pg_params_t p = {0};
    em__pg_p_str(&p, device_id);
    PGresult *res = NULL;
    if ((rc = em__pg_run(c, &s_cert_latest, &p, &res, err)) != EM_OK)
        return rc;
    if (PQntuples(res) == 0) {
        rc = no_device(device_id, err);
    } else if (PQgetisnull(res, 0, 0)) {
        rc = em_error_set(err, EM_ERR_NOT_FOUND, EM_SEV_LOW, "deviceId",
                          "the device has no registered certificate");
        em_error_set_device(err, device_id);
    } else {
        read_cert(res, 0, device_id, out);
    }
    PQclear(res);
    return rc;
}

typedef struct cert_ctx {
    em_store_device_cert_fn fn;
    void *ud;
    const char *device_id;
    em_store_device_cert_t *cert; /* 8 KiB of PEM: on the heap */
} cert_ctx_t;

static int cert_row(PGresult *res, int row, void *ctx)
{
    cert_ctx_t *l = ctx;
    if (PQgetisnull(res, row, 0))
        return 0; /* the device has no certificate */
    read_cert(res, row, l->device_id, l->cert);
    return l->fn(l->cert, l->ud);
}

em_err_t em__pg_device_cert_list(em__store_conn_t *c, const char *device_id,
                                 em_store_device_cert_fn fn, void *ud, em_error_t *err)
{
    em_err_t rc = em__pg_ensure_conn(c, err);
    if (rc != EM_OK)
        return rc;
    cert_ctx_t l = {fn, ud, device_id, malloc(sizeof(em_store_device_cert_t))};
    if (l.cert == NULL)
        return em_error_set(err, EM_ERR_NOMEM, EM_SEV_HIGH, NULL, "out of memory");
    em__pg_params_t p = {0};
    em__pg_p_str(&p, device_id);
    size_t rows = 0;
    rc = em__pg_rows(c, &s_cert_list, &p, cert_row, &l, &rows, err);
    free(l.cert);
    /* Every known device gives at least one row (the LEFT JOIN). */
    if (rc == EM_OK && rows == 0)
        return no_device(device_id, err);
    return rc;
}
