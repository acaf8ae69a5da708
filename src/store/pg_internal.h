/*
 * emiot - pg_internal.h: what pg.c shares with the PostgreSQL backend's
 * other files (pg_identity.c). Same conventions as store_internal.h.
 */
#ifndef EMIOT_STORE_PG_INTERNAL_H
#define EMIOT_STORE_PG_INTERNAL_H

#include <libpq-fe.h>

#include "store/store_internal.h"

#define EM__PG_PARAMS_MAX 16
#define EM__PG_NUM_MAX    32

/* Text parameters of one statement. Numbers are formatted into num; strings
 * are used in place unless they are not valid UTF-8 (PostgreSQL would refuse
 * the whole statement): those get a sanitised heap copy. Start from {0};
 * running the statement frees the copies. */
typedef struct em__pg_params {
    int n;
    const char *v[EM__PG_PARAMS_MAX];
    char num[EM__PG_PARAMS_MAX][EM__PG_NUM_MAX];
    char *owned[EM__PG_PARAMS_MAX];
    bool oom;
} em__pg_params_t;

void em__pg_p_str(em__pg_params_t *p, const char *s);
void em__pg_p_i64(em__pg_params_t *p, int64_t v);

/* Statement slots the other files may use. */
#define EM__PG_SLOTS 16

/* A statement of another file: prepared as name once per connection (again
 * after a reconnection), recorded in slot (< EM__PG_SLOTS). Names start with
 * "em_" (error messages show the rest). */
typedef struct em__pg_stmt {
    unsigned slot;
    const char *name;
    const char *sql;
} em__pg_stmt_t;

/* Reconnects a broken connection before an operation. */
em_err_t em__pg_ensure_conn(em__store_conn_t *c, em_error_t *err);
/* Runs a statement to completion (sent again once on a new connection when
 * the connection broke outside a transaction). On success *out (when not
 * NULL) receives the result, which the caller PQclears. Errors: a unique
 * violation is EM_ERR_EXISTS, a foreign key violation of a constraint whose
 * name holds "device" EM_ERR_DEVICE_NOT_FOUND, anything else EM_ERR_IO.
 * Frees p's copies in every case. */
em_err_t em__pg_run(em__store_conn_t *c, const em__pg_stmt_t *s, em__pg_params_t *p, PGresult **out,
                    em_error_t *err);
/* Runs a query in single-row mode and calls fn per row until it returns
 * non-zero; *count (may be NULL) gets the rows delivered. */
typedef int (*em__pg_row_fn)(PGresult *res, int row, void *ctx);
em_err_t em__pg_rows(em__store_conn_t *c, const em__pg_stmt_t *s, em__pg_params_t *p,
                     em__pg_row_fn fn, void *ctx, size_t *count, em_error_t *err);
/* Rows a statement changed. */
uint64_t em__pg_changed(PGresult *res);

/* Column readers: NULL reads as 0 or "". */
int64_t em__pg_col_i64(const PGresult *res, int row, int col);
void em__pg_col_str(const PGresult *res, int row, int col, char *buf, size_t size);
/* A 32-byte bytea column (hex output format) into out; zeroes otherwise. */
void em__pg_col_hash(const PGresult *res, int row, int col, unsigned char out[32]);
/* A 32-byte value as bytea input: "\x" + 64 hex digits. */
void em__pg_hash_param(const unsigned char hash[32], char out[67]);

/* Migration 1 -> 2 (pg_identity.c). */
extern const char em__pg_schema_v2[];

/* Device identity (pg_identity.c); see em__store_backend_t. */
em_err_t em__pg_enroll_token_insert(em__store_conn_t *c, const em_store_enroll_token_t *t,
                                    em_error_t *err);
em_err_t em__pg_enroll_token_use(em__store_conn_t *c, const unsigned char hash[32], int64_t now_ms,
                                 em_store_enroll_token_t *out, em_error_t *err);
em_err_t em__pg_enroll_token_list(em__store_conn_t *c, const char *device_id,
                                  em_store_enroll_token_fn fn, void *ud, em_error_t *err);
em_err_t em__pg_device_cert_insert(em__store_conn_t *c, const em_store_device_cert_t *cert,
                                   em_error_t *err);
em_err_t em__pg_device_cert_latest(em__store_conn_t *c, const char *device_id,
                                   em_store_device_cert_t *out, em_error_t *err);
em_err_t em__pg_device_cert_list(em__store_conn_t *c, const char *device_id,
                                 em_store_device_cert_fn fn, void *ud, em_error_t *err);
/* Inside the caller's transaction: deletes the enrollment tokens that
 * expired before before_ms; adds the rows deleted to *total. */
em_err_t em__pg_identity_prune(em__store_conn_t *c, int64_t before_ms, uint64_t *total,
                               em_error_t *err);

#endif /* EMIOT_STORE_PG_INTERNAL_H */
