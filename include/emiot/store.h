/*
 * emiot - store.h: what emiotd keeps, in SQLite or PostgreSQL.
 *
 * One interface, two backends chosen by URL:
 *   sqlite:PATH, sqlite:///ABSOLUTE/PATH   an SQLite file in WAL mode (default)
 *   postgresql://..., postgres://...       a PostgreSQL server via libpq
 * em_store_open applies the versioned schema migrations the database lacks, in
 * one transaction each, and refuses a database whose schema is newer than
 * this build knows.
 *
 * It holds devices, groups and memberships, each device's latest status,
 * status history, telemetry (raw samples plus hourly and daily rollups of
 * energy), commands with their lifecycle, security and audit events, users and
 * API keys.
 *
 * Two ways to write:
 *  - synchronous calls (em_store_device_put, em_store_command_insert, ...)
 *    return once the row is committed: an API can answer 201 after them;
 *  - em_store_enqueue_* calls (status, telemetry, device events, command
 *    answers), made on the ingest hot path, copy the record into a bounded
 *    queue and return at once; a writer thread commits the queue in batches
 *    (up to batch_max rows per transaction, at most batch_interval_ms after the
 *    first row queued). When the queue is full, enqueue waits for room
 *    (backpressure: nothing is dropped). A queued record is acknowledged when
 *    its batch is committed: em_store_flush waits for that, and
 *    em_store_stats().committed counts acknowledged records. With the default
 *    sync = full, a committed batch survives kill -9 and power loss.
 *
 * Rules both backends keep (tests/integration/test_store.c pins them):
 * reads of status history, telemetry and device rollups for an unknown device
 * are EM_ERR_DEVICE_NOT_FOUND; the latest status is the newest by time, never
 * replaced by an older one; rows with equal times come back in the order they
 * were queued; expires_at_ms 0 means a command never expires; a response moves
 * only a command addressed to the device that answers (else it is an orphan);
 * command retention prunes by created_at_ms; a group rollup's average power
 * is its total power over its power samples, and `devices` counts the members
 * that reported.
 *
 * Reads are synchronous. List functions call a callback once per row; the
 * row and every pointer in it are valid only during the callback. A callback
 * returning non-zero stops the listing (not an error).
 *
 * Threads: every function may be called from any thread. Synchronous calls
 * share one database connection behind a mutex; the writer thread has its own.
 * Callbacks must not call back into the store.
 *
 * Errors common to every function: EM_ERR_INVALID_ARGUMENT (NULL where a value
 * is needed, a string over its maximum), EM_ERR_IO (the database failed; the
 * detail, never a secret such as the URL's password, is in err->message),
 * EM_ERR_NOMEM, EM_ERR_STATE (the store is closing, or the writer stopped after
 * a database error).
 */
#ifndef EMIOT_STORE_H
#define EMIOT_STORE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "emiot/command.h"
#include "emiot/device.h"
#include "emiot/error.h"
#include "emiot/export.h"
#include "emiot/status.h"

#ifdef __cplusplus
extern "C" {
#endif

typedef struct em_store em_store_t;

#define EM_STORE_URL_MAX      1024
#define EM_STORE_NAME_MAX     64  /* user names, key names */
#define EM_STORE_KEY_ID_MAX   16  /* public part of an API key ("k_" + 12 hex) */
#define EM_STORE_TEXT_MAX     512 /* event messages, command answers */
#define EM_STORE_JSON_MAX     8192
#define EM_STORE_PAGE_MAX     1000 /* most rows one list call returns */
#define EM_STORE_PAGE_DEFAULT 100

typedef enum em_store_sync {
    EM_STORE_SYNC_FULL = 0,  /* fsync every commit (SQLite synchronous=FULL; PG default) */
    EM_STORE_SYNC_NORMAL = 1 /* survives a process crash, may lose the last commits on power loss */
} em_store_sync_t;

typedef struct em_store_options {
    unsigned batch_max;         /* rows per transaction (default 2000, 1..100000) */
    unsigned batch_interval_ms; /* longest wait before a batch commits (default 100, 1..10000) */
    size_t queue_max;           /* queued records before enqueue waits (default 65536) */
    em_store_sync_t sync;       /* default EM_STORE_SYNC_FULL */
    int busy_timeout_ms;        /* SQLite lock wait / PG statement timeout (default 5000) */
} em_store_options_t;

/* Fills opts with the defaults above. */
EM_EXPORT void em_store_options_init(em_store_options_t *opts);

/*
 * Opens (and for SQLite creates, mode 0600) the store at url, applies missing
 * migrations and starts the writer thread. opts may be NULL for the defaults.
 * url is not kept (it may hold a password; the caller wipes it).
 * Errors: EM_ERR_CONFIGURATION (unknown scheme, bad option, schema newer than
 * this build), EM_ERR_IO (cannot open, connect or migrate), EM_ERR_NOMEM.
 */
EM_EXPORT em_err_t em_store_open(const char *url, const em_store_options_t *opts, em_store_t **out,
                                 em_error_t *err);

/* Commits what is queued, stops the writer and closes. Accepts NULL. */
EM_EXPORT void em_store_close(em_store_t *st);

/* "sqlite" or "postgresql". */
EM_EXPORT const char *em_store_backend(const em_store_t *st);

/* Schema version the database is at after em_store_open. */
EM_EXPORT int em_store_schema_version(const em_store_t *st);

/* ---- devices, groups ---------------------------------------------------- */

typedef struct em_store_device {
    char id[EM_DEVICE_ID_MAX + 1];
    char name[EM_DEVICE_NAME_MAX + 1];
    em_device_type_t type;
    em_device_config_t config;
    bool enabled; /* a disabled device's messages and credentials are refused */
    int64_t created_at_ms;
    int64_t updated_at_ms;
} em_store_device_t;

/* Inserts a device. EM_ERR_EXISTS when the id is taken. */
EM_EXPORT em_err_t em_store_device_insert(em_store_t *st, const em_store_device_t *dev,
                                          em_error_t *err);
/* Replaces name, type, config, enabled and updated_at of an existing device.
 * EM_ERR_DEVICE_NOT_FOUND. */
EM_EXPORT em_err_t em_store_device_update(em_store_t *st, const em_store_device_t *dev,
                                          em_error_t *err);
/* Deletes a device with its memberships, latest status, history, telemetry,
 * rollups, certificates and enrollment tokens (commands and events are kept
 * for audit). EM_ERR_DEVICE_NOT_FOUND. */
EM_EXPORT em_err_t em_store_device_delete(em_store_t *st, const char *id, em_error_t *err);
/* EM_ERR_DEVICE_NOT_FOUND. */
EM_EXPORT em_err_t em_store_device_get(em_store_t *st, const char *id, em_store_device_t *out,
                                       em_error_t *err);

typedef struct em_store_device_filter {
    const char *group; /* NULL: any; else only members of this group */
    int type;          /* -1: any; else an em_device_type_t */
    const char *after; /* NULL: from the start; else ids > after (keyset paging) */
    unsigned limit;    /* 0: EM_STORE_PAGE_DEFAULT; at most EM_STORE_PAGE_MAX */
} em_store_device_filter_t;

typedef int (*em_store_device_fn)(const em_store_device_t *dev, void *userdata);
/* Lists devices in id order. f may be NULL (all, first page). *count (may be
 * NULL) receives the rows delivered. EM_ERR_GROUP_NOT_FOUND for a missing group. */
EM_EXPORT em_err_t em_store_device_list(em_store_t *st, const em_store_device_filter_t *f,
                                        em_store_device_fn fn, void *userdata, size_t *count,
                                        em_error_t *err);

/* EM_ERR_EXISTS. */
EM_EXPORT em_err_t em_store_group_insert(em_store_t *st, const char *name, int64_t now_ms,
                                         em_error_t *err);
/* Deletes the group and its memberships (not the devices). EM_ERR_GROUP_NOT_FOUND. */
EM_EXPORT em_err_t em_store_group_delete(em_store_t *st, const char *name, em_error_t *err);
typedef int (*em_store_group_fn)(const char *name, size_t members, int64_t created_at_ms,
                                 void *userdata);
/* All groups in name order with their member counts. */
EM_EXPORT em_err_t em_store_group_list(em_store_t *st, em_store_group_fn fn, void *userdata,
                                       em_error_t *err);
/* Adds a device to a group (EM_OK if already a member). EM_ERR_GROUP_NOT_FOUND,
 * EM_ERR_DEVICE_NOT_FOUND. */
EM_EXPORT em_err_t em_store_member_add(em_store_t *st, const char *group, const char *id,
                                       em_error_t *err);
/* EM_ERR_GROUP_NOT_FOUND, EM_ERR_DEVICE_NOT_FOUND (not a member). */
EM_EXPORT em_err_t em_store_member_remove(em_store_t *st, const char *group, const char *id,
                                          em_error_t *err);
typedef int (*em_store_member_fn)(const char *group, const char *id, void *userdata);
/* Every (group, device) pair, for loading the registry at start. */
EM_EXPORT em_err_t em_store_member_list(em_store_t *st, em_store_member_fn fn, void *userdata,
                                        em_error_t *err);

/* ---- status ----------------------------------------------------------- */

/* Queues a device's status: it becomes the latest status and a history row
 * (time = status->last_seen_ms, or now when unset). */
EM_EXPORT em_err_t em_store_enqueue_status(em_store_t *st, const char *id,
                                           const em_status_t *status, em_error_t *err);

typedef int (*em_store_status_fn)(const char *id, const em_status_t *status, void *userdata);
/* The latest status of one device (fn called once), or of every device (id
 * NULL), e.g. to load the registry at start. EM_ERR_DEVICE_NOT_FOUND when id
 * has no status. */
EM_EXPORT em_err_t em_store_status_latest(em_store_t *st, const char *id, em_store_status_fn fn,
                                          void *userdata, em_error_t *err);

typedef struct em_store_range {
    int64_t from_ms; /* inclusive; 0: no bound */
    int64_t to_ms;   /* exclusive; 0: no bound */
    unsigned limit;  /* 0: EM_STORE_PAGE_DEFAULT; at most EM_STORE_PAGE_MAX */
    bool descending; /* newest first */
} em_store_range_t;

/* History of one device in time order (status->last_seen_ms is the time). */
EM_EXPORT em_err_t em_store_status_history(em_store_t *st, const char *id,
                                           const em_store_range_t *r, em_store_status_fn fn,
                                           void *userdata, em_error_t *err);

/* ---- telemetry ---------------------------------------------------------- */

/* Queues one sample. energy_delta_wh is what the manager computed from the
 * monotonic counter: 0 on the first sample; after a reset (counter_reset set)
 * the new reading itself, since the counter restarted from zero. It is never
 * negative; the hourly and daily rollups add it up. */
EM_EXPORT em_err_t em_store_enqueue_telemetry(em_store_t *st, const char *id,
                                              const em_telemetry_t *t, double energy_delta_wh,
                                              bool counter_reset, em_error_t *err);

typedef int (*em_store_telemetry_fn)(const char *id, const em_telemetry_t *t, void *userdata);
/* Raw samples of one device by sample timestamp. */
EM_EXPORT em_err_t em_store_telemetry_list(em_store_t *st, const char *id,
                                           const em_store_range_t *r, em_store_telemetry_fn fn,
                                           void *userdata, em_error_t *err);

typedef enum em_rollup { EM_ROLLUP_HOUR = 0, EM_ROLLUP_DAY = 1 } em_rollup_t;

typedef struct em_store_rollup {
    int64_t bucket_ms;  /* start of the UTC hour or day */
    uint64_t samples;   /* telemetry samples in the bucket */
    double energy_wh;   /* sum of energy deltas */
    double power_avg_w; /* mean of power_w over samples that had it (0 if none) */
    double power_max_w;
    uint32_t resets;  /* counter resets seen */
    uint32_t devices; /* group rollups: devices that reported; 1 for a device */
} em_store_rollup_t;

typedef int (*em_store_rollup_fn)(const em_store_rollup_t *r, void *userdata);
/* Rollups of one device, in bucket order, buckets within the range. */
EM_EXPORT em_err_t em_store_rollup_device(em_store_t *st, const char *id, em_rollup_t kind,
                                          const em_store_range_t *r, em_store_rollup_fn fn,
                                          void *userdata, em_error_t *err);
/* Rollups summed over a group's current members. EM_ERR_GROUP_NOT_FOUND. */
EM_EXPORT em_err_t em_store_rollup_group(em_store_t *st, const char *group, em_rollup_t kind,
                                         const em_store_range_t *r, em_store_rollup_fn fn,
                                         void *userdata, em_error_t *err);

/* ---- commands ----------------------------------------------------------- */

typedef enum em_command_state {
    EM_CMD_QUEUED = 0,       /* stored, not yet published */
    EM_CMD_SENT = 1,         /* published to the broker */
    EM_CMD_ACKNOWLEDGED = 2, /* the broker acknowledged the QoS 1 publish */
    EM_CMD_SUCCEEDED = 3,    /* the device answered success:true */
    EM_CMD_FAILED = 4,       /* the device answered success:false, or sending failed */
    EM_CMD_EXPIRED = 5       /* no answer before expires_at */
} em_command_state_t;

/* "queued", "sent", ... ; NULL when out of range. */
EM_EXPORT const char *em_command_state_name(em_command_state_t s);
/* EM_ERR_VALIDATION for an unknown name. */
EM_EXPORT em_err_t em_command_state_parse(const char *name, em_command_state_t *out);

typedef struct em_store_command {
    char request_id[EM_REQUEST_ID_MAX + 1];
    char device_id[EM_DEVICE_ID_MAX + 1];
    char group[EM_GROUP_NAME_MAX + 1]; /* "" unless sent to a group */
    em_command_type_t type;
    const char *payload_json; /* NULL: none. Not owned; in results valid during the callback */
    em_command_state_t state;
    char actor[EM_STORE_NAME_MAX + 1]; /* who asked: "key:k_...", "user:NAME", ... */
    int64_t created_at_ms;
    int64_t updated_at_ms;
    int64_t expires_at_ms;
    bool has_response;
    bool response_success;
    char response_message[EM_STORE_TEXT_MAX + 1];
} em_store_command_t;

/* Inserts a command (usually state queued). EM_ERR_EXISTS for a known requestId. */
EM_EXPORT em_err_t em_store_command_insert(em_store_t *st, const em_store_command_t *cmd,
                                           em_error_t *err);
/* Moves a command to state now (synchronous). Transitions only go forward:
 * queued -> sent -> acknowledged -> succeeded | failed | expired; a final state
 * never changes, a backward move is ignored (EM_OK). EM_ERR_NOT_FOUND when no
 * command has that request id. */
EM_EXPORT em_err_t em_store_command_set_state(em_store_t *st, const char *request_id,
                                              em_command_state_t state, int64_t now_ms,
                                              em_error_t *err);
/* As em_store_command_set_state, queued (for the network thread, which must
 * not wait for the database): the writer applies it in order with the rest. */
EM_EXPORT em_err_t em_store_enqueue_command_state(em_store_t *st, const char *request_id,
                                                  em_command_state_t state, int64_t now_ms,
                                                  em_error_t *err);
/* Queues a device's answer: the command becomes succeeded or failed with the
 * message. An answer to an unknown request id is ignored by the writer and
 * counted in em_store_stats().orphan_responses. */
EM_EXPORT em_err_t em_store_enqueue_response(em_store_t *st, const char *device_id,
                                             const em_response_t *resp, int64_t now_ms,
                                             em_error_t *err);
/* Marks every command not final whose expires_at_ms <= now_ms expired;
 * *expired (may be NULL) receives how many. */
EM_EXPORT em_err_t em_store_command_expire(em_store_t *st, int64_t now_ms, size_t *expired,
                                           em_error_t *err);

typedef int (*em_store_command_fn)(const em_store_command_t *cmd, void *userdata);
/* EM_ERR_NOT_FOUND when unknown. */
EM_EXPORT em_err_t em_store_command_get(em_store_t *st, const char *request_id,
                                        em_store_command_fn fn, void *userdata, em_error_t *err);

typedef struct em_store_command_filter {
    const char *device_id;  /* NULL: any */
    const char *group;      /* NULL: any */
    int state;              /* -1: any; else em_command_state_t */
    em_store_range_t range; /* on created_at_ms; newest first when descending */
} em_store_command_filter_t;
EM_EXPORT em_err_t em_store_command_list(em_store_t *st, const em_store_command_filter_t *f,
                                         em_store_command_fn fn, void *userdata, em_error_t *err);

/* ---- events (security, audit, device) ----------------------------------- */

typedef enum em_event_kind {
    EM_EVKIND_SECURITY = 0,  /* authentication failure, rate limit, replay, tamper, ... */
    EM_EVKIND_AUDIT = 1,     /* who changed what through the API */
    EM_EVKIND_DEVICE = 2,    /* what devices reported on P<id>/event */
    EM_EVKIND_VALIDATION = 3 /* rejected device messages */
} em_event_kind_t;

/* "security", "audit", "device", "validation"; NULL when out of range. */
EM_EXPORT const char *em_event_kind_name(em_event_kind_t k);
EM_EXPORT em_err_t em_event_kind_parse(const char *name, em_event_kind_t *out);

typedef struct em_store_event {
    int64_t id; /* assigned by the store, increasing */
    int64_t time_ms;
    em_event_kind_t kind;
    char type[EM_STORE_NAME_MAX + 1]; /* "auth_failure", "device_created", "tamper", ... */
    em_severity_t severity;
    char device_id[EM_DEVICE_ID_MAX + 1]; /* "" when none */
    char actor[EM_STORE_NAME_MAX + 1];    /* "" when none */
    char source[EM_STORE_NAME_MAX + 1];   /* client address, "" when none */
    char message[EM_STORE_TEXT_MAX + 1];  /* never a secret */
    const char *details_json;             /* NULL: none; not owned */
} em_store_event_t;

/* Records an event now (synchronous; id is ignored): audit and security
 * events are committed before the API answers. */
EM_EXPORT em_err_t em_store_event_insert(em_store_t *st, const em_store_event_t *ev,
                                         em_error_t *err);
/* Queues an event (device events and validation rejections on the hot path). */
EM_EXPORT em_err_t em_store_enqueue_event(em_store_t *st, const em_store_event_t *ev,
                                          em_error_t *err);

typedef struct em_store_event_filter {
    int kind;              /* -1: any */
    const char *type;      /* NULL: any */
    const char *device_id; /* NULL: any */
    int min_severity;      /* -1: any */
    int64_t before_id;     /* 0: none; else id < before_id (paging newest first) */
    em_store_range_t range;
} em_store_event_filter_t;
typedef int (*em_store_event_fn)(const em_store_event_t *ev, void *userdata);
EM_EXPORT em_err_t em_store_event_list(em_store_t *st, const em_store_event_filter_t *f,
                                       em_store_event_fn fn, void *userdata, em_error_t *err);

/* ---- users, API keys ---------------------------------------------------- */

typedef enum em_role {
    EM_ROLE_NONE = 0,
    EM_ROLE_VIEWER = 1,   /* read only */
    EM_ROLE_OPERATOR = 2, /* read, devices, groups, commands */
    EM_ROLE_ADMIN = 3,    /* everything, keys and users included */
    EM_ROLE_DEVICE = 4    /* one device, its own resources only */
} em_role_t;

/* "viewer", "operator", "admin", "device"; NULL for EM_ROLE_NONE or out of range. */
EM_EXPORT const char *em_role_name(em_role_t r);
EM_EXPORT em_err_t em_role_parse(const char *name, em_role_t *out);

/* An operator identity; a client certificate whose CN is a user's name
 * authenticates as that user. */
typedef struct em_store_user {
    char name[EM_STORE_NAME_MAX + 1]; /* 1-64 of [A-Za-z0-9._@-] */
    em_role_t role;                   /* not EM_ROLE_DEVICE */
    bool disabled;
    int64_t created_at_ms;
} em_store_user_t;

EM_EXPORT em_err_t em_store_user_insert(em_store_t *st, const em_store_user_t *u,
                                        em_error_t *err); /* EM_ERR_EXISTS */
EM_EXPORT em_err_t em_store_user_get(em_store_t *st, const char *name, em_store_user_t *out,
                                     em_error_t *err); /* EM_ERR_NOT_FOUND */
EM_EXPORT em_err_t em_store_user_delete(em_store_t *st, const char *name,
                                        em_error_t *err); /* EM_ERR_NOT_FOUND */
typedef int (*em_store_user_fn)(const em_store_user_t *u, void *userdata);
EM_EXPORT em_err_t em_store_user_list(em_store_t *st, em_store_user_fn fn, void *userdata,
                                      em_error_t *err);

/*
 * An API key as stored: never the key itself. The key is "iot_" + 48 hex
 * digits; key_id is "k_" + its first 12 hex digits (the public handle, shown
 * in lists and logs) and hash is SHA-256 over the whole key string.
 */
typedef struct em_store_api_key {
    char key_id[EM_STORE_KEY_ID_MAX + 1];
    char name[EM_STORE_NAME_MAX + 1];
    em_role_t role;
    char device_id[EM_DEVICE_ID_MAX + 1]; /* role device: the device; else "" */
    char owner[EM_STORE_NAME_MAX + 1];    /* user or key that created it */
    unsigned char hash[32];
    uint32_t rate_per_min; /* 0: the role's default */
    int64_t created_at_ms;
    int64_t expires_at_ms; /* 0: never */
    int64_t last_used_ms;  /* 0: never used */
    int64_t revoked_at_ms; /* 0: not revoked */
} em_store_api_key_t;

EM_EXPORT em_err_t em_store_api_key_insert(em_store_t *st, const em_store_api_key_t *k,
                                           em_error_t *err); /* EM_ERR_EXISTS */
/* EM_ERR_NOT_FOUND when unknown. */
EM_EXPORT em_err_t em_store_api_key_get(em_store_t *st, const char *key_id, em_store_api_key_t *out,
                                        em_error_t *err);
/* Sets revoked_at_ms (first revocation wins). EM_ERR_NOT_FOUND when unknown. */
EM_EXPORT em_err_t em_store_api_key_revoke(em_store_t *st, const char *key_id, int64_t now_ms,
                                           em_error_t *err);
/* Queues a last-used time (the API calls this at most once a minute per key). */
EM_EXPORT em_err_t em_store_enqueue_key_used(em_store_t *st, const char *key_id, int64_t now_ms,
                                             em_error_t *err);
typedef int (*em_store_api_key_fn)(const em_store_api_key_t *k, void *userdata);
/* All keys (revoked ones included) in creation order. */
EM_EXPORT em_err_t em_store_api_key_list(em_store_t *st, em_store_api_key_fn fn, void *userdata,
                                         em_error_t *err);

/* ---- device identity (schema version 2) ---------------------------------- */

/*
 * A one-time enrollment token as stored: never the token itself. The token is
 * "enr_" + 48 hex digits; token_id is "e_" + its first 12 hex digits (the
 * public handle) and hash is SHA-256 over the whole token string.
 */
typedef struct em_store_enroll_token {
    char token_id[EM_STORE_KEY_ID_MAX + 1];
    char device_id[EM_DEVICE_ID_MAX + 1];
    char owner[EM_STORE_NAME_MAX + 1]; /* who created it (actor) */
    unsigned char hash[32];
    int64_t created_at_ms;
    int64_t expires_at_ms;
    int64_t used_at_ms; /* 0: not used yet */
} em_store_enroll_token_t;

/* EM_ERR_EXISTS when token_id or hash is taken, EM_ERR_DEVICE_NOT_FOUND. */
EM_EXPORT em_err_t em_store_enroll_token_insert(em_store_t *st, const em_store_enroll_token_t *t,
                                                em_error_t *err);

/*
 * Uses the token whose hash is hash, atomically: when it was not used, sets
 * used_at_ms = now_ms. *out receives the record as it was before the call
 * (out->used_at_ms != 0: it had been used already, and nothing changed). The
 * caller checks the expiry and the device. A token is used by any
 * presentation, successful or not: it never works twice.
 * Errors: EM_ERR_NOT_FOUND (no such token).
 */
EM_EXPORT em_err_t em_store_enroll_token_use(em_store_t *st, const unsigned char hash[32],
                                             int64_t now_ms, em_store_enroll_token_t *out,
                                             em_error_t *err);

typedef int (*em_store_enroll_token_fn)(const em_store_enroll_token_t *t, void *userdata);
/* The tokens of device_id (NULL: all), oldest first. */
EM_EXPORT em_err_t em_store_enroll_token_list(em_store_t *st, const char *device_id,
                                              em_store_enroll_token_fn fn, void *userdata,
                                              em_error_t *err);

#define EM_STORE_CERT_PEM_MAX 8192

/* A device's certificate as registered with emiotd (at enrollment, or when a
 * device first proves a CA-issued certificate). */
typedef struct em_store_device_cert {
    char device_id[EM_DEVICE_ID_MAX + 1];
    char serial[41]; /* hex */
    char sha256[65]; /* fingerprint of the DER, hex */
    char pem[EM_STORE_CERT_PEM_MAX + 1];
    int64_t not_after_ms;
    int64_t created_at_ms;
} em_store_device_cert_t;

/* Registers a certificate. EM_ERR_DEVICE_NOT_FOUND, EM_ERR_EXISTS (same
 * device and serial). */
EM_EXPORT em_err_t em_store_device_cert_insert(em_store_t *st, const em_store_device_cert_t *c,
                                               em_error_t *err);
/* The device's newest registered certificate (by created_at_ms, then insertion).
 * EM_ERR_NOT_FOUND when it has none, EM_ERR_DEVICE_NOT_FOUND. */
EM_EXPORT em_err_t em_store_device_cert_latest(em_store_t *st, const char *device_id,
                                               em_store_device_cert_t *out, em_error_t *err);
typedef int (*em_store_device_cert_fn)(const em_store_device_cert_t *c, void *userdata);
/* The device's certificates, oldest first. EM_ERR_DEVICE_NOT_FOUND. */
EM_EXPORT em_err_t em_store_device_cert_list(em_store_t *st, const char *device_id,
                                             em_store_device_cert_fn fn, void *userdata,
                                             em_error_t *err);

/* ---- maintenance ------------------------------------------------------ */

typedef struct em_store_retention {
    int64_t status_history_ms; /* 0: keep forever */
    int64_t telemetry_ms;      /* raw samples */
    int64_t rollup_hour_ms;
    int64_t rollup_day_ms;
    int64_t events_ms;
    int64_t commands_ms; /* final commands only */
} em_store_retention_t;

/* Deletes rows older than now_ms minus each period. *deleted (may be NULL)
 * receives the rows deleted. */
EM_EXPORT em_err_t em_store_prune(em_store_t *st, const em_store_retention_t *r, int64_t now_ms,
                                  uint64_t *deleted, em_error_t *err);

/* Waits until every record queued before the call is committed (or the writer
 * failed: EM_ERR_STATE), up to timeout_ms (-1: no limit). EM_ERR_TIMEOUT. */
EM_EXPORT em_err_t em_store_flush(em_store_t *st, int timeout_ms, em_error_t *err);

typedef struct em_store_stats {
    uint64_t enqueued;         /* records queued since open */
    uint64_t committed;        /* of those, committed (acknowledged) */
    uint64_t batches;          /* transactions the writer committed */
    uint64_t queue_depth;      /* queued, not yet committed */
    uint64_t queue_waits;      /* enqueues that waited for room */
    uint64_t write_errors;     /* failed batches (the writer retries, then stops) */
    uint64_t orphan_responses; /* answers to unknown request ids */
    uint64_t last_batch_us;    /* duration of the last commit */
} em_store_stats_t;
EM_EXPORT void em_store_stats(em_store_t *st, em_store_stats_t *out);

#ifdef __cplusplus
}
#endif

#endif /* EMIOT_STORE_H */
