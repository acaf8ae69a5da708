/*
 * emiot - store_internal.h: the contract between the store front (store.c)
 * and its backends (sqlite.c, pg.c).
 *
 * The front validates arguments, serialises synchronous calls on one
 * connection behind a mutex, owns the queue and the writer thread, and calls
 * the backend. A backend implements every operation below on one connection;
 * it never sees the queue or the threads. Both backends must behave
 * identically: tests/integration/test_store.c runs one suite against both.
 *
 * Conventions for every backend function:
 *  - arguments are already validated by the front (ids, names, lengths,
 *    enum ranges, limits clamped to 1..EM_STORE_PAGE_MAX);
 *  - return EM_OK or the error named in store.h, with err filled; a database
 *    failure is EM_ERR_IO with the database's message (never the URL);
 *  - list functions call fn for each row and stop early, returning EM_OK,
 *    when fn returns non-zero; *count (when the signature has it) gets the
 *    rows delivered;
 *  - each synchronous write is its own transaction.
 */
#ifndef EMIOT_STORE_INTERNAL_H
#define EMIOT_STORE_INTERNAL_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "emiot/store.h"

/* Newest schema version this build knows; both backends reach it.
 * 1: devices, groups, status, telemetry, commands, events, users, API keys.
 * 2: device identity (enroll_tokens, device_certs). */
#define EM__STORE_SCHEMA_VERSION 2

/* em_store_prune deletes enrollment tokens (used or not) that expired more
 * than this long before now: kept a week so that a late or replayed
 * presentation is still recognised as "already used" or "expired". */
#define EM__STORE_TOKEN_KEEP_MS ((int64_t)7 * 24 * 3600 * 1000)

typedef struct em__store_conn em__store_conn_t; /* backend-defined */

typedef enum em__rec_kind {
    EM__REC_STATUS = 0,
    EM__REC_TELEMETRY = 1,
    EM__REC_RESPONSE = 2,
    EM__REC_EVENT = 3,
    EM__REC_KEY_USED = 4,
    EM__REC_COMMAND_STATE = 5
} em__rec_kind_t;

/*
 * One queued record. The front makes deep copies when enqueueing: heap
 * strings inside (status errors_json/extra_json, response data_json, event
 * details) belong to the record and the front frees them after the batch.
 */
typedef struct em__store_rec {
    em__rec_kind_t kind;
    char device_id[EM_DEVICE_ID_MAX + 1]; /* KEY_USED: the key id */
    int64_t time_ms;                      /* status: received; telemetry: sample time;
                                             response: received; key: used */
    union {
        em_status_t status;
        struct {
            em_telemetry_t t;
            double delta_wh;
            bool reset;
        } tel;
        em_response_t resp;
        struct {
            char request_id[EM_REQUEST_ID_MAX + 1];
            em_command_state_t state;
        } cmd; /* COMMAND_STATE (time_ms is "now") */
        struct {
            em_store_event_t ev; /* ev.details_json points into the record's heap copy */
            char *details;
        } event;
    } u;
} em__store_rec_t;

/* One rollup increment for (device, bucket), computed from a batch. */
typedef struct em__rollup_delta {
    char device_id[EM_DEVICE_ID_MAX + 1];
    em_rollup_t kind;
    int64_t bucket_ms;
    uint64_t samples;
    double energy_wh;
    double power_sum_w; /* sum of power_w over power_samples */
    uint64_t power_samples;
    double power_max_w; /* -INFINITY when power_samples == 0 */
    uint32_t resets;
} em__rollup_delta_t;

/*
 * Aggregates the telemetry records of a batch into hour and day increments
 * (implemented in store.c; backends call it from write_batch and then add
 * each increment to its row: samples, energy, power_sum and power_samples add
 * up, power_max takes the maximum, resets add up). *out is a heap array the
 * caller frees; *nout may be 0 (then *out is NULL). EM_ERR_NOMEM.
 */
em_err_t em__store_rollups(const em__store_rec_t *recs, size_t n, em__rollup_delta_t **out,
                           size_t *nout);

/* Start of the UTC hour or day holding t_ms. */
int64_t em__rollup_bucket(em_rollup_t kind, int64_t t_ms);

typedef struct em__store_backend {
    const char *name; /* "sqlite", "postgresql" */

    /* Opens a connection. The first connection of a store then runs migrate. */
    em_err_t (*open)(const char *url, const em_store_options_t *opts, em__store_conn_t **out,
                     em_error_t *err);
    void (*close)(em__store_conn_t *c); /* accepts NULL */
    /* Applies every migration the database lacks, each in its own transaction
     * recorded in schema_migrations(version, applied_at_ms); *version gets the
     * resulting version. EM_ERR_CONFIGURATION when the database is newer than
     * EM__STORE_SCHEMA_VERSION. Safe when two daemons start together (PG:
     * an advisory lock; SQLite: BEGIN IMMEDIATE). */
    em_err_t (*migrate)(em__store_conn_t *c, int *version, em_error_t *err);

    /* Writes a batch in ONE transaction: status (latest upsert + history row),
     * telemetry (sample row + rollup increments from em__store_rollups),
     * responses (command -> succeeded/failed unless already final; unknown
     * request ids counted in *orphans), command states (forward only, as
     * command_set_state; unknown ids ignored), events, key last-used times. Records
     * for devices that no longer exist are skipped (not an error). On failure
     * nothing of the batch is committed. */
    em_err_t (*write_batch)(em__store_conn_t *c, const em__store_rec_t *recs, size_t n,
                            uint64_t *orphans, em_error_t *err);

    em_err_t (*device_insert)(em__store_conn_t *c, const em_store_device_t *d, em_error_t *err);
    em_err_t (*device_update)(em__store_conn_t *c, const em_store_device_t *d, em_error_t *err);
    em_err_t (*device_delete)(em__store_conn_t *c, const char *id, em_error_t *err);
    em_err_t (*device_get)(em__store_conn_t *c, const char *id, em_store_device_t *out,
                           em_error_t *err);
    em_err_t (*device_list)(em__store_conn_t *c, const em_store_device_filter_t *f,
                            em_store_device_fn fn, void *ud, size_t *count, em_error_t *err);

    em_err_t (*group_insert)(em__store_conn_t *c, const char *name, int64_t now_ms,
                             em_error_t *err);
    em_err_t (*group_delete)(em__store_conn_t *c, const char *name, em_error_t *err);
    em_err_t (*group_list)(em__store_conn_t *c, em_store_group_fn fn, void *ud, em_error_t *err);
    em_err_t (*member_add)(em__store_conn_t *c, const char *group, const char *id, em_error_t *err);
    em_err_t (*member_remove)(em__store_conn_t *c, const char *group, const char *id,
                              em_error_t *err);
    em_err_t (*member_list)(em__store_conn_t *c, em_store_member_fn fn, void *ud, em_error_t *err);

    em_err_t (*status_latest)(em__store_conn_t *c, const char *id, em_store_status_fn fn, void *ud,
                              em_error_t *err);
    em_err_t (*status_history)(em__store_conn_t *c, const char *id, const em_store_range_t *r,
                               em_store_status_fn fn, void *ud, em_error_t *err);
    em_err_t (*telemetry_list)(em__store_conn_t *c, const char *id, const em_store_range_t *r,
                               em_store_telemetry_fn fn, void *ud, em_error_t *err);
    em_err_t (*rollup_device)(em__store_conn_t *c, const char *id, em_rollup_t kind,
                              const em_store_range_t *r, em_store_rollup_fn fn, void *ud,
                              em_error_t *err);
    em_err_t (*rollup_group)(em__store_conn_t *c, const char *group, em_rollup_t kind,
                             const em_store_range_t *r, em_store_rollup_fn fn, void *ud,
                             em_error_t *err);

    em_err_t (*command_insert)(em__store_conn_t *c, const em_store_command_t *cmd, em_error_t *err);
    em_err_t (*command_set_state)(em__store_conn_t *c, const char *request_id,
                                  em_command_state_t state, int64_t now_ms, em_error_t *err);
    em_err_t (*command_expire)(em__store_conn_t *c, int64_t now_ms, size_t *expired,
                               em_error_t *err);
    em_err_t (*command_get)(em__store_conn_t *c, const char *request_id, em_store_command_fn fn,
                            void *ud, em_error_t *err);
    em_err_t (*command_list)(em__store_conn_t *c, const em_store_command_filter_t *f,
                             em_store_command_fn fn, void *ud, em_error_t *err);

    em_err_t (*event_insert)(em__store_conn_t *c, const em_store_event_t *ev, em_error_t *err);
    em_err_t (*event_list)(em__store_conn_t *c, const em_store_event_filter_t *f,
                           em_store_event_fn fn, void *ud, em_error_t *err);

    em_err_t (*user_insert)(em__store_conn_t *c, const em_store_user_t *u, em_error_t *err);
    em_err_t (*user_get)(em__store_conn_t *c, const char *name, em_store_user_t *out,
                         em_error_t *err);
    em_err_t (*user_delete)(em__store_conn_t *c, const char *name, em_error_t *err);
    em_err_t (*user_list)(em__store_conn_t *c, em_store_user_fn fn, void *ud, em_error_t *err);

    em_err_t (*api_key_insert)(em__store_conn_t *c, const em_store_api_key_t *k, em_error_t *err);
    em_err_t (*api_key_get)(em__store_conn_t *c, const char *key_id, em_store_api_key_t *out,
                            em_error_t *err);
    em_err_t (*api_key_revoke)(em__store_conn_t *c, const char *key_id, int64_t now_ms,
                               em_error_t *err);
    em_err_t (*api_key_list)(em__store_conn_t *c, em_store_api_key_fn fn, void *ud,
                             em_error_t *err);

    /* Device identity (schema version 2). A device's certificates and
     * enrollment tokens go when the device goes (device_delete). */
    /* EM_ERR_EXISTS (token id or hash taken), EM_ERR_DEVICE_NOT_FOUND. */
    em_err_t (*enroll_token_insert)(em__store_conn_t *c, const em_store_enroll_token_t *t,
                                    em_error_t *err);
    /* Atomic across connections: of two concurrent uses of one token exactly
     * one sees out->used_at_ms == 0. EM_ERR_NOT_FOUND. */
    em_err_t (*enroll_token_use)(em__store_conn_t *c, const unsigned char hash[32], int64_t now_ms,
                                 em_store_enroll_token_t *out, em_error_t *err);
    /* device_id NULL: every token. Oldest first (created_at_ms, insertion). */
    em_err_t (*enroll_token_list)(em__store_conn_t *c, const char *device_id,
                                  em_store_enroll_token_fn fn, void *ud, em_error_t *err);
    /* EM_ERR_DEVICE_NOT_FOUND, EM_ERR_EXISTS. */
    em_err_t (*device_cert_insert)(em__store_conn_t *c, const em_store_device_cert_t *cert,
                                   em_error_t *err);
    /* EM_ERR_DEVICE_NOT_FOUND, EM_ERR_NOT_FOUND (no certificate). */
    em_err_t (*device_cert_latest)(em__store_conn_t *c, const char *device_id,
                                   em_store_device_cert_t *out, em_error_t *err);
    /* EM_ERR_DEVICE_NOT_FOUND. */
    em_err_t (*device_cert_list)(em__store_conn_t *c, const char *device_id,
                                 em_store_device_cert_fn fn, void *ud, em_error_t *err);

    /* Applies the retention periods, and always deletes the enrollment
     * tokens that expired more than EM__STORE_TOKEN_KEEP_MS before now_ms;
     * one transaction. */
    em_err_t (*prune)(em__store_conn_t *c, const em_store_retention_t *r, int64_t now_ms,
                      uint64_t *deleted, em_error_t *err);
} em__store_backend_t;

/* For the front's other files (identity.c): the synchronous connection,
 * locked until em__store_sync_end. */
em__store_conn_t *em__store_sync_begin(em_store_t *st);
void em__store_sync_end(em_store_t *st);
const em__store_backend_t *em__store_be(const em_store_t *st);

/* The front's argument checks, shared with identity.c (store.c). */
em_err_t em__store_check_id(const char *id, const char *field, em_error_t *err);
/* 1..max characters of [A-Za-z0-9] plus extra. */
em_err_t em__store_check_token(const char *s, size_t max, const char *extra, const char *field,
                               em_error_t *err);
/* At most max bytes, no control characters; empty_ok allows "". */
em_err_t em__store_check_text(const char *s, size_t max, bool empty_ok, const char *field,
                              em_error_t *err);

extern const em__store_backend_t em__store_sqlite;
extern const em__store_backend_t em__store_pg;

#endif /* EMIOT_STORE_INTERNAL_H */
