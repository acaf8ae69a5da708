/*
 * emiot - sqlite_identity.c: device identity in the SQLite backend (schema
 * version 2): one-time enrollment tokens and the certificates registered
 * for each device.
 *
 * Both tables name their device by its surrogate key with a foreign key ON
 * DELETE CASCADE, so that deleting a device takes its tokens and
 * certificates with it in the same transaction, and no token or certificate
 * can be written for a device that does not exist (inserts select the key
 * from devices: no row, no device).
 *
 * Using a token is atomic across connections and processes: the read of the
 * row and the update that marks it used run in one BEGIN IMMEDIATE
 * transaction, which holds the database's write lock, so of two concurrent
 * uses exactly one reads used_at_ms == 0.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <openssl/crypto.h>

#include "store/sqlite_internal.h"

const char em__sq_schema_v2[] =
    "CREATE TABLE enroll_tokens("
    " token_id TEXT NOT NULL UNIQUE,"
    " hash BLOB NOT NULL UNIQUE CHECK(length(hash) = 32),"
    " device_pk INTEGER NOT NULL REFERENCES devices(pk) ON DELETE CASCADE,"
    " owner TEXT NOT NULL DEFAULT '',"
    " created_at_ms INTEGER NOT NULL,"
    " expires_at_ms INTEGER NOT NULL,"
    " used_at_ms INTEGER NOT NULL DEFAULT 0);"
    "CREATE INDEX enroll_tokens_device ON enroll_tokens(device_pk, created_at_ms);"
    "CREATE INDEX enroll_tokens_expires ON enroll_tokens(expires_at_ms);"
    "CREATE TABLE device_certs("
    " device_pk INTEGER NOT NULL REFERENCES devices(pk) ON DELETE CASCADE,"
    " serial TEXT NOT NULL,"
    " sha256 TEXT NOT NULL,"
    " pem TEXT NOT NULL,"
    " not_after_ms INTEGER NOT NULL,"
    " created_at_ms INTEGER NOT NULL,"
    " PRIMARY KEY(device_pk, serial));";

#define TOKEN_COLS                                                                                 \
    "t.token_id, d.id, t.owner, t.hash, t.created_at_ms, t.expires_at_ms, t.used_at_ms"            \
    " FROM enroll_tokens t JOIN devices d ON d.pk = t.device_pk"
#define CERT_COLS "c.serial, c.sha256, c.pem, c.not_after_ms, c.created_at_ms"

/* Statement slots (sqlite_internal.h), one per statement below. */
enum slot {
    SL_TOKEN_INSERT,
    SL_TOKEN_BY_HASH,
    SL_TOKEN_MARK,
    SL_TOKEN_LIST_ALL,
    SL_TOKEN_LIST_DEVICE,
    SL_TOKEN_PRUNE,
    SL_CERT_INSERT,
    SL_CERT_LATEST,
    SL_CERT_LIST,
    SL_COUNT
};
_Static_assert(SL_COUNT <= EM__SQ_SLOTS, "sqlite_internal.h has a slot per statement");

static const char *const slot_sql[SL_COUNT] = {
    [SL_TOKEN_INSERT] = "INSERT INTO enroll_tokens(token_id, hash, device_pk, owner,"
                        " created_at_ms, expires_at_ms, used_at_ms)"
                        " SELECT ?1, ?2, pk, ?4, ?5, ?6, ?7 FROM devices WHERE id = ?3",
    [SL_TOKEN_BY_HASH] = "SELECT " TOKEN_COLS " WHERE t.hash = ?1",
    [SL_TOKEN_MARK] = "UPDATE enroll_tokens SET used_at_ms = ?2 WHERE hash = ?1"
                      " AND used_at_ms = 0",
    [SL_TOKEN_LIST_ALL] = "SELECT " TOKEN_COLS " ORDER BY t.created_at_ms, t.rowid",
    [SL_TOKEN_LIST_DEVICE] = "SELECT " TOKEN_COLS " WHERE d.id = ?1"
                             " ORDER BY t.created_at_ms, t.rowid",
    [SL_TOKEN_PRUNE] = "DELETE FROM enroll_tokens WHERE expires_at_ms < ?1",
    [SL_CERT_INSERT] = "INSERT INTO device_certs(device_pk, serial, sha256, pem, not_after_ms,"
                       " created_at_ms) SELECT pk, ?2, ?3, ?4, ?5, ?6 FROM devices WHERE id = ?1",
    /* One row for a known device: its newest certificate, or NULLs. */
    [SL_CERT_LATEST] = "SELECT " CERT_COLS " FROM devices d LEFT JOIN device_certs c"
                       " ON c.device_pk = d.pk WHERE d.id = ?1"
                       " ORDER BY c.created_at_ms DESC, c.rowid DESC LIMIT 1",
    [SL_CERT_LIST] = "SELECT " CERT_COLS " FROM device_certs c WHERE c.device_pk = ?1"
                     " ORDER BY c.created_at_ms, c.rowid",
};

static sqlite3_stmt *slot(em__store_conn_t *c, enum slot id, em_error_t *err)
{
    return em__sq_stmt_slot(c, (unsigned)id, slot_sql[id], err);
}

static void bind_text(sqlite3_stmt *s, int i, const char *v)
{
    sqlite3_bind_text(s, i, v, -1, SQLITE_STATIC);
}

static em_err_t no_device(const char *id, em_error_t *err)
{
    em_error_set(err, EM_ERR_DEVICE_NOT_FOUND, EM_SEV_LOW, "deviceId", "no such device");
    em_error_set_device(err, id);
    return EM_ERR_DEVICE_NOT_FOUND;
}

/* ---- enrollment tokens -------------------------------------------------- */

static void read_token(sqlite3_stmt *s, em_store_enroll_token_t *t)
{
    memset(t, 0, sizeof(*t));
    em__sq_col_copy(s, 0, t->token_id, sizeof(t->token_id));
    em__sq_col_copy(s, 1, t->device_id, sizeof(t->device_id));
    em__sq_col_copy(s, 2, t->owner, sizeof(t->owner));
    const void *h = sqlite3_column_blob(s, 3);
    if (h != NULL && sqlite3_column_bytes(s, 3) == (int)sizeof(t->hash)) {
        memcpy(t->hash, h, sizeof(t->hash));
    }
    t->created_at_ms = sqlite3_column_int64(s, 4);
    t->expires_at_ms = sqlite3_column_int64(s, 5);
    t->used_at_ms = sqlite3_column_int64(s, 6);
}

em_err_t em__sq_enroll_token_insert(em__store_conn_t *c, const em_store_enroll_token_t *t,
                                    em_error_t *err)
{
    sqlite3_stmt *s = slot(c, SL_TOKEN_INSERT, err);
    if (s == NULL) {
        return EM_ERR_IO;
    }
    bind_text(s, 1, t->token_id);
    sqlite3_bind_blob(s, 2, t->hash, (int)sizeof(t->hash), SQLITE_STATIC);
    bind_text(s, 3, t->device_id);
    bind_text(s, 4, t->owner);
    sqlite3_bind_int64(s, 5, t->created_at_ms);
    sqlite3_bind_int64(s, 6, t->expires_at_ms);
    sqlite3_bind_int64(s, 7, t->used_at_ms);
    em_err_t rc = em__sq_exec(c, s, "enrollment token", err);
    if (rc == EM_ERR_EXISTS) {
        return em_error_set(err, EM_ERR_EXISTS, EM_SEV_LOW, "tokenId",
                            "an enrollment token with this id or hash exists");
    }
    if (rc == EM_OK && sqlite3_changes(em__sq_db(c)) == 0) {
        return no_device(t->device_id, err);
    }
    return rc;
}

em_err_t em__sq_enroll_token_use(em__store_conn_t *c, const unsigned char hash[32], int64_t now_ms,
                                 em_store_enroll_token_t *out, em_error_t *err)
{
    em_err_t rc = em__sq_tx_begin(c, err);
    if (rc != EM_OK) {
        return rc;
    }
    sqlite3_stmt *s = slot(c, SL_TOKEN_BY_HASH, err);
    if (s == NULL) {
        return em__sq_tx_end(c, EM_ERR_IO, err);
    }
    sqlite3_bind_blob(s, 1, hash, 32, SQLITE_STATIC);
    int src = sqlite3_step(s);
    if (src == SQLITE_ROW) {
        read_token(s, out); /* the record before this call */
    } else if (src == SQLITE_DONE) {
        rc = em_error_set(err, EM_ERR_NOT_FOUND, EM_SEV_LOW, "token", "no such enrollment token");
    } else {
        rc = em__sq_error(c, src, "enrollment token", err);
    }
    em__sq_done(s);
    if (rc == EM_OK && out->used_at_ms == 0) {
        s = slot(c, SL_TOKEN_MARK, err);
        if (s == NULL) {
            rc = EM_ERR_IO;
        } else {
            sqlite3_bind_blob(s, 1, hash, 32, SQLITE_STATIC);
            sqlite3_bind_int64(s, 2, now_ms);
            rc = em__sq_exec(c, s, "enrollment token use", err);
        }
    }
    rc = em__sq_tx_end(c, rc, err);
    if (rc != EM_OK) {
        OPENSSL_cleanse(out, sizeof(*out));
    }
    return rc;
}

em_err_t em__sq_enroll_token_list(em__store_conn_t *c, const char *device_id,
                                  em_store_enroll_token_fn fn, void *ud, em_error_t *err)
{
    sqlite3_stmt *s = slot(c, device_id != NULL ? SL_TOKEN_LIST_DEVICE : SL_TOKEN_LIST_ALL, err);
    if (s == NULL) {
        return EM_ERR_IO;
    }
    if (device_id != NULL) {
        bind_text(s, 1, device_id);
    }
    int rc;
    em_store_enroll_token_t t;
    while ((rc = sqlite3_step(s)) == SQLITE_ROW) {
        read_token(s, &t);
        int stop = fn(&t, ud);
        OPENSSL_cleanse(t.hash, sizeof(t.hash));
        if (stop != 0) {
            rc = SQLITE_DONE;
            break;
        }
    }
    em_err_t e = rc == SQLITE_DONE ? EM_OK : em__sq_error(c, rc, "enrollment tokens", err);
    em__sq_done(s);
    return e;
}

em_err_t em__sq_identity_prune(em__store_conn_t *c, int64_t before_ms, uint64_t *total,
                               em_error_t *err)
{
    sqlite3_stmt *s = slot(c, SL_TOKEN_PRUNE, err);
    if (s == NULL) {
        return EM_ERR_IO;
    }
    sqlite3_bind_int64(s, 1, before_ms);
    em_err_t rc = em__sq_exec(c, s, "prune enrollment tokens", err);
    if (rc == EM_OK) {
        *total += (uint64_t)sqlite3_changes(em__sq_db(c));
    }
    return rc;
}

/* ---- device certificates ------------------------------------------------ */

static void read_cert(sqlite3_stmt *s, const char *device_id, em_store_device_cert_t *cert)
{
    memset(cert, 0, sizeof(*cert));
    snprintf(cert->device_id, sizeof(cert->device_id), "%s", device_id);
    em__sq_col_copy(s, 0, cert->serial, sizeof(cert->serial));
    em__sq_col_copy(s, 1, cert->sha256, sizeof(cert->sha256));
    em__sq_col_copy(s, 2, cert->pem, sizeof(cert->pem));
    cert->not_after_ms = sqlite3_column_int64(s, 3);
    cert->created_at_ms = sqlite3_column_int64(s, 4);
}

em_err_t em__sq_device_cert_insert(em__store_conn_t *c, const em_store_device_cert_t *cert,
                                   em_error_t *err)
{
    sqlite3_stmt *s = slot(c, SL_CERT_INSERT, err);
    if (s == NULL) {
        return EM_ERR_IO;
    }
    bind_text(s, 1, cert->device_id);
    bind_text(s, 2, cert->serial);
    bind_text(s, 3, cert->sha256);
    bind_text(s, 4, cert->pem);
    sqlite3_bind_int64(s, 5, cert->not_after_ms);
    sqlite3_bind_int64(s, 6, cert->created_at_ms);
    em_err_t rc = em__sq_exec(c, s, "device certificate", err);
    if (rc == EM_ERR_EXISTS) {
        return em_error_set(err, EM_ERR_EXISTS, EM_SEV_LOW, "serial",
                            "this device has a certificate with this serial");
    }
    if (rc == EM_OK && sqlite3_changes(em__sq_db(c)) == 0) {
        return no_device(cert->device_id, err);
    }
    return rc;
}

em_err_t em__sq_device_cert_latest(em__store_conn_t *c, const char *device_id,
                                   em_store_device_cert_t *out, em_error_t *err)
{
    sqlite3_stmt *s = slot(c, SL_CERT_LATEST, err);
    if (s == NULL) {
        return EM_ERR_IO;
    }
    bind_text(s, 1, device_id);
    int src = sqlite3_step(s);
    em_err_t rc = EM_OK;
    if (src == SQLITE_DONE) {
        rc = no_device(device_id, err);
    } else if (src != SQLITE_ROW) {
        rc = em__sq_error(c, src, "device certificate", err);
    } else if (sqlite3_column_type(s, 0) == SQLITE_NULL) {
        rc = em_error_set(err, EM_ERR_NOT_FOUND, EM_SEV_LOW, "deviceId",
                          "the device has no registered certificate");
        em_error_set_device(err, device_id);
    } else {
        read_cert(s, device_id, out);
    }
    em__sq_done(s);
    return rc;
}

em_err_t em__sq_device_cert_list(em__store_conn_t *c, const char *device_id,
                                 em_store_device_cert_fn fn, void *ud, em_error_t *err)
{
    sqlite3_int64 pk = 0;
    em_err_t e = em__sq_device_pk(c, device_id, &pk, err);
    if (e != EM_OK) {
        return e;
    }
    sqlite3_stmt *s = slot(c, SL_CERT_LIST, err);
    if (s == NULL) {
        return EM_ERR_IO;
    }
    sqlite3_bind_int64(s, 1, pk);
    /* A certificate holds up to 8 KiB of PEM: one on the heap, not the stack. */
    em_store_device_cert_t *cert = malloc(sizeof(*cert));
    if (cert == NULL) {
        em__sq_done(s);
        return em_error_set(err, EM_ERR_NOMEM, EM_SEV_HIGH, NULL, "out of memory");
    }
    int rc;
    while ((rc = sqlite3_step(s)) == SQLITE_ROW) {
        read_cert(s, device_id, cert);
        if (fn(cert, ud) != 0) {
            rc = SQLITE_DONE;
            break;
        }
    }
    e = rc == SQLITE_DONE ? EM_OK : em__sq_error(c, rc, "device certificates", err);
    em__sq_done(s);
    free(cert);
    return e;
}
