/*
 * emiot - sqlite_internal.h: what sqlite.c shares with the SQLite backend's
 * other files (sqlite_identity.c). Same conventions as store_internal.h.
 */
#ifndef EMIOT_STORE_SQLITE_INTERNAL_H
#define EMIOT_STORE_SQLITE_INTERNAL_H

#include <sqlite3.h>

#include "store/store_internal.h"

/* Statement slots the other files may use (em__sq_stmt_slot). */
#define EM__SQ_SLOTS 16

/* The statement sql, prepared on first use in slot (< EM__SQ_SLOTS) of the
 * connection and reused after; one slot always holds the same sql. NULL on
 * error (err filled). */
sqlite3_stmt *em__sq_stmt_slot(em__store_conn_t *c, unsigned slot, const char *sql,
                               em_error_t *err);
sqlite3 *em__sq_db(em__store_conn_t *c);
/* A failed SQLite call as em_err_t: EM_ERR_EXISTS for a unique violation,
 * EM_ERR_NOMEM, else EM_ERR_IO. */
em_err_t em__sq_error(em__store_conn_t *c, int rc, const char *what, em_error_t *err);
/* Steps a statement that returns no row, then resets it. */
em_err_t em__sq_exec(em__store_conn_t *c, sqlite3_stmt *s, const char *what, em_error_t *err);
/* Resets a statement and clears its bindings. */
void em__sq_done(sqlite3_stmt *s);
/* BEGIN IMMEDIATE (the write lock), and the end: commit when rc is EM_OK,
 * else roll back; returns the result. */
em_err_t em__sq_tx_begin(em__store_conn_t *c, em_error_t *err);
em_err_t em__sq_tx_end(em__store_conn_t *c, em_err_t rc, em_error_t *err);
/* The surrogate key of a device: EM_ERR_DEVICE_NOT_FOUND. */
em_err_t em__sq_device_pk(em__store_conn_t *c, const char *id, sqlite3_int64 *pk, em_error_t *err);
/* Copies a text column into buf, truncated to size - 1 bytes. */
void em__sq_col_copy(sqlite3_stmt *s, int i, char *buf, size_t size);

/* Migration 1 -> 2 (sqlite_identity.c). */
extern const char em__sq_schema_v2[];

/* Device identity (sqlite_identity.c); see em__store_backend_t. */
em_err_t em__sq_enroll_token_insert(em__store_conn_t *c, const em_store_enroll_token_t *t,
                                    em_error_t *err);
em_err_t em__sq_enroll_token_use(em__store_conn_t *c, const unsigned char hash[32], int64_t now_ms,
                                 em_store_enroll_token_t *out, em_error_t *err);
em_err_t em__sq_enroll_token_list(em__store_conn_t *c, const char *device_id,
                                  em_store_enroll_token_fn fn, void *ud, em_error_t *err);
em_err_t em__sq_device_cert_insert(em__store_conn_t *c, const em_store_device_cert_t *cert,
                                   em_error_t *err);
em_err_t em__sq_device_cert_latest(em__store_conn_t *c, const char *device_id,
                                   em_store_device_cert_t *out, em_error_t *err);
em_err_t em__sq_device_cert_list(em__store_conn_t *c, const char *device_id,
                                 em_store_device_cert_fn fn, void *ud, em_error_t *err);
/* Inside the caller's transaction: deletes the enrollment tokens that
 * expired before before_ms; adds the rows deleted to *total. */
em_err_t em__sq_identity_prune(em__store_conn_t *c, int64_t before_ms, uint64_t *total,
                               em_error_t *err);

#endif /* EMIOT_STORE_SQLITE_INTERNAL_H */
