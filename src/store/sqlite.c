/*
 * emiot - sqlite.c: the SQLite store backend (see store_internal.h).
 *
 * One file in WAL mode, created 0600 (SQLite gives its -wal and -shm files
 * the database file's permissions). Devices have an integer surrogate key so
 * that the rows that pile up (status history, telemetry, rollups) are small;
 * those rows go when their device goes, while commands and events name the
 * device by its id and stay for audit.
 *
 * The write path is what W2 measures, so the per-device tables carry no
 * foreign key (a check per row): the writer resolves each device inside its
 * own transaction, which holds the write lock, so a row is only ever written
 * for a device that exists, and device_delete removes the rows itself. The
 * writer keeps an id -> key cache across batches; every device deletion bumps
 * store_meta.device_generation in the same transaction, and the writer drops
 * its cache when it sees the generation move (in this process or another).
 *
 * Every statement is prepared once per connection and reset after use; the
 * few list queries whose WHERE clause depends on which filters are set are
 * assembled from fixed fragments (never from input) and cached per variant.
 * All values are bound as parameters.
 *
 * Behaviour both backends share (tests/integration/test_store.c): lists are
 * in id / time / bucket order, ascending unless range.descending, ties broken
 * by insertion order; events are ordered by id; status history, telemetry and
 * rollups of an unknown device are EM_ERR_DEVICE_NOT_FOUND; a command's
 * expires_at_ms of 0 means it never expires; a response only moves a command
 * addressed to the device that answers.
 */
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <math.h>
#include <sqlite3.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "emiot/clock.h"
#include "store/sqlite_internal.h"

/* ---- schema ------------------------------------------------------------- */

static const char schema_v1[] =
    "CREATE TABLE devices("
    " pk INTEGER PRIMARY KEY AUTOINCREMENT,"
    " id TEXT NOT NULL UNIQUE,"
    " name TEXT NOT NULL,"
    " type INTEGER NOT NULL,"
    " cfg_has INTEGER NOT NULL,"
    " reporting_interval INTEGER NOT NULL,"
    " sleep_threshold INTEGER NOT NULL,"
    " security_level INTEGER NOT NULL,"
    " auto_wake INTEGER NOT NULL,"
    " enabled INTEGER NOT NULL,"
    " created_at_ms INTEGER NOT NULL,"
    " updated_at_ms INTEGER NOT NULL);"
    "CREATE TABLE groups("
    " pk INTEGER PRIMARY KEY AUTOINCREMENT,"
    " name TEXT NOT NULL UNIQUE,"
    " created_at_ms INTEGER NOT NULL);"
    "CREATE TABLE memberships("
    " group_pk INTEGER NOT NULL REFERENCES groups(pk) ON DELETE CASCADE,"
    " device_pk INTEGER NOT NULL REFERENCES devices(pk) ON DELETE CASCADE,"
    " PRIMARY KEY(group_pk, device_pk)) WITHOUT ROWID;"
    "CREATE INDEX memberships_device ON memberships(device_pk);"
    "CREATE TABLE status_latest("
    " device_pk INTEGER PRIMARY KEY,"
    " time_ms INTEGER NOT NULL, has INTEGER NOT NULL, battery INTEGER, power_mode INTEGER,"
    " connection INTEGER, signal INTEGER, firmware TEXT, errors TEXT, extra TEXT);"
    "CREATE TABLE status_history("
    " device_pk INTEGER NOT NULL,"
    " time_ms INTEGER NOT NULL, has INTEGER NOT NULL, battery INTEGER, power_mode INTEGER,"
    " connection INTEGER, signal INTEGER, firmware TEXT, errors TEXT, extra TEXT);"
    "CREATE INDEX status_history_device_time ON status_history(device_pk, time_ms);"
    "CREATE TABLE telemetry("
    " device_pk INTEGER NOT NULL,"
    " ts_ms INTEGER NOT NULL, has INTEGER NOT NULL, power_w REAL, energy_wh REAL,"
    " voltage_v REAL, current_a REAL, temperature REAL, humidity REAL, battery INTEGER);"
    "CREATE INDEX telemetry_device_ts ON telemetry(device_pk, ts_ms);"
    "CREATE TABLE rollup_hour("
    " device_pk INTEGER NOT NULL,"
    " bucket_ms INTEGER NOT NULL, samples INTEGER NOT NULL, energy_wh REAL NOT NULL,"
    " power_sum REAL NOT NULL, power_samples INTEGER NOT NULL, power_max REAL,"
    " resets INTEGER NOT NULL, PRIMARY KEY(device_pk, bucket_ms)) WITHOUT ROWID;"
    "CREATE TABLE rollup_day("
    " device_pk INTEGER NOT NULL,"
    " bucket_ms INTEGER NOT NULL, samples INTEGER NOT NULL, energy_wh REAL NOT NULL,"
    " power_sum REAL NOT NULL, power_samples INTEGER NOT NULL, power_max REAL,"
    " resets INTEGER NOT NULL, PRIMARY KEY(device_pk, bucket_ms)) WITHOUT ROWID;"
    "CREATE TABLE commands("
    " request_id TEXT PRIMARY KEY,"
    " device_id TEXT NOT NULL,"
    " group_name TEXT NOT NULL DEFAULT '',"
    " type INTEGER NOT NULL,"
    " payload TEXT,"
    " state INTEGER NOT NULL CHECK(state BETWEEN 0 AND 5),"
    " actor TEXT NOT NULL DEFAULT '',"
    " created_at_ms INTEGER NOT NULL,"
    " updated_at_ms INTEGER NOT NULL,"
    " expires_at_ms INTEGER NOT NULL,"
    " has_response INTEGER NOT NULL DEFAULT 0,"
    " response_success INTEGER NOT NULL DEFAULT 0,"
    " response_message TEXT NOT NULL DEFAULT '',"
    " response_data TEXT);"
    "CREATE INDEX commands_device_created ON commands(device_id, created_at_ms);"
    "CREATE INDEX commands_group_created ON commands(group_name, created_at_ms);"
    "CREATE INDEX commands_state_expires ON commands(state, expires_at_ms);"
    "CREATE INDEX commands_created ON commands(created_at_ms);"
    "CREATE TABLE events("
    " id INTEGER PRIMARY KEY AUTOINCREMENT,"
    " time_ms INTEGER NOT NULL, kind INTEGER NOT NULL, type TEXT NOT NULL,"
    " severity INTEGER NOT NULL, device_id TEXT NOT NULL DEFAULT '',"
    " actor TEXT NOT NULL DEFAULT '', source TEXT NOT NULL DEFAULT '',"
    " message TEXT NOT NULL DEFAULT '', details TEXT);"
    "CREATE INDEX events_time ON events(time_ms);"
    "CREATE INDEX events_kind ON events(kind, id);"
    "CREATE INDEX events_type ON events(type, id);"
    "CREATE INDEX events_device ON events(device_id, id);"
    "CREATE TABLE users("
    " name TEXT PRIMARY KEY, role INTEGER NOT NULL, disabled INTEGER NOT NULL,"
    " created_at_ms INTEGER NOT NULL);"
    "CREATE TABLE api_keys("
    " key_id TEXT PRIMARY KEY, name TEXT NOT NULL, role INTEGER NOT NULL,"
    " device_id TEXT NOT NULL DEFAULT '', owner TEXT NOT NULL DEFAULT '',"
    " hash BLOB NOT NULL, rate_per_min INTEGER NOT NULL, created_at_ms INTEGER NOT NULL,"
    " expires_at_ms INTEGER NOT NULL, last_used_ms INTEGER NOT NULL,"
    " revoked_at_ms INTEGER NOT NULL);"
    "CREATE TABLE store_meta(key TEXT PRIMARY KEY, value INTEGER NOT NULL);"
    "INSERT INTO store_meta(key, value) VALUES('device_generation', 0);";

/* migrations[i] takes the schema from version i to i + 1 (version 2, device
 * identity, is in sqlite_identity.c). */
static const char *const migrations[] = {schema_v1, em__sq_schema_v2};
#define MIGRATION_COUNT ((int)(sizeof(migrations) / sizeof(migrations[0])))
_Static_assert(MIGRATION_COUNT == EM__STORE_SCHEMA_VERSION, "one migration per schema version");

/* ---- statements ------------------------------------------------------- */

#define DEV_COLS                                                                                   \
    "id, name, type, cfg_has, reporting_interval, sleep_threshold, security_level, auto_wake,"     \
    " enabled, created_at_ms, updated_at_ms"
#define STATUS_COLS "time_ms, has, battery, power_mode, connection, signal, firmware, errors, extra"
#define TEL_COLS                                                                                   \
    "ts_ms, has, power_w, energy_wh, voltage_v, current_a, temperature, humidity, battery"
#define CMD_COLS                                                                                   \
    "request_id, device_id, group_name, type, payload, state, actor, created_at_ms,"               \
    " updated_at_ms, expires_at_ms, has_response, response_success, response_message"
#define EV_COLS "id, time_ms, kind, type, severity, device_id, actor, source, message, details"
#define KEY_COLS                                                                                   \
    "key_id, name, role, device_id, owner, hash, rate_per_min, created_at_ms, expires_at_ms,"      \
    " last_used_ms, revoked_at_ms"
#define ROLL_COLS "bucket_ms, samples, energy_wh, power_sum, power_samples, power_max, resets"

/* The multi-row history insert: HIST_CHUNK rows of HIST_COLS parameters. */
#define HIST_CHUNK     32u
#define HIST_COLS      10u
#define HIST_ROW       "(?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
#define HIST_ROWS_4    HIST_ROW ", " HIST_ROW ", " HIST_ROW ", " HIST_ROW
#define HIST_ROWS_16   HIST_ROWS_4 ", " HIST_ROWS_4 ", " HIST_ROWS_4 ", " HIST_ROWS_4
#define HIST_VALUES_32 HIST_ROWS_16 ", " HIST_ROWS_16

#define ROLL_UPSERT(t)                                                                             \
    "INSERT INTO " t "(device_pk, bucket_ms, samples, energy_wh, power_sum, power_samples,"        \
    " power_max, resets) VALUES(?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)"                                   \
    " ON CONFLICT(device_pk, bucket_ms) DO UPDATE SET samples = samples + excluded.samples,"       \
    " energy_wh = energy_wh + excluded.energy_wh, power_sum = power_sum + excluded.power_sum,"     \
    " power_samples = power_samples + excluded.power_samples,"                                     \
    " power_max = CASE WHEN excluded.power_max IS NULL THEN power_max"                             \
    " WHEN power_max IS NULL OR excluded.power_max > power_max THEN excluded.power_max"            \
    " ELSE power_max END, resets = resets + excluded.resets"
#define ROLL_DEV(t, order)                                                                         \
    "SELECT " ROLL_COLS ", 1 FROM " t " WHERE device_pk = ?1 AND bucket_ms >= ?2"                  \
    " AND bucket_ms < ?3 ORDER BY bucket_ms " order " LIMIT ?4"
#define ROLL_GROUP(t, order)                                                                       \
    "SELECT r.bucket_ms, sum(r.samples), sum(r.energy_wh), sum(r.power_sum),"                      \
    " sum(r.power_samples), max(r.power_max), sum(r.resets), count(*) FROM " t " r"                \
    " JOIN memberships m ON m.device_pk = r.device_pk WHERE m.group_pk = ?1"                       \
    " AND r.bucket_ms >= ?2 AND r.bucket_ms < ?3 GROUP BY r.bucket_ms"                             \
    " ORDER BY r.bucket_ms " order " LIMIT ?4"
#define PRUNE_PER_DEVICE(t, col)                                                                   \
    "DELETE FROM " t " WHERE device_pk IN (SELECT pk FROM devices) AND " col " < ?1"

enum stmt_id {
    S_BEGIN,
    S_COMMIT,
    S_ROLLBACK,
    S_DEV_PK,
    S_DEV_INSERT,
    S_DEV_UPDATE,
    S_DEV_DELETE,
    S_DEV_GET,
    S_DEV_LIST,
    S_GROUP_PK,
    S_GROUP_INSERT,
    S_GROUP_DELETE,
    S_GROUP_LIST,
    S_MEMBER_ADD,
    S_MEMBER_REMOVE,
    S_MEMBER_LIST,
    S_STATUS_HIST_INSERT,
    S_STATUS_HIST_INSERT_CHUNK,
    S_STATUS_LATEST_UPSERT,
    S_STATUS_LATEST_ONE,
    S_STATUS_LATEST_ALL,
    S_STATUS_HIST_ASC,
    S_STATUS_HIST_DESC,
    S_TEL_INSERT,
    S_TEL_ASC,
    S_TEL_DESC,
    S_ROLL_UPSERT_HOUR,
    S_ROLL_UPSERT_DAY,
    S_ROLL_DEV_HOUR_ASC,
    S_ROLL_DEV_HOUR_DESC,
    S_ROLL_DEV_DAY_ASC,
    S_ROLL_DEV_DAY_DESC,
    S_ROLL_GROUP_HOUR_ASC,
    S_ROLL_GROUP_HOUR_DESC,
    S_ROLL_GROUP_DAY_ASC,
    S_ROLL_GROUP_DAY_DESC,
    S_CMD_INSERT,
    S_CMD_SET_STATE,
    S_CMD_EXISTS,
    S_CMD_RESPONSE,
    S_CMD_EXISTS_FOR_DEVICE,
    S_CMD_EXPIRE,
    S_CMD_GET,
    S_EV_INSERT,
    S_USER_INSERT,
    S_USER_GET,
    S_USER_DELETE,
    S_USER_LIST,
    S_KEY_INSERT,
    S_KEY_GET,
    S_KEY_REVOKE,
    S_KEY_EXISTS,
    S_KEY_USED,
    S_KEY_LIST,
    S_PRUNE_HISTORY,
    S_PRUNE_TELEMETRY,
    S_PRUNE_HOUR,
    S_PRUNE_DAY,
    S_PRUNE_EVENTS,
    S_PRUNE_COMMANDS,
    S_VERSION,
    S_VERSION_INSERT,
    S_GENERATION,
    S_GENERATION_BUMP,
    S_DEL_HISTORY,
    S_DEL_TELEMETRY,
    S_DEL_LATEST,
    S_DEL_HOUR,
    S_DEL_DAY,
    S_COUNT
};

static const char *const stmt_sql[S_COUNT] = {
    [S_BEGIN] = "BEGIN IMMEDIATE",
    [S_COMMIT] = "COMMIT",
    [S_ROLLBACK] = "ROLLBACK",
    [S_DEV_PK] = "SELECT pk FROM devices WHERE id = ?1",
    [S_DEV_INSERT] =
        "INSERT INTO devices(" DEV_COLS ") VALUES(?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11)",
    [S_DEV_UPDATE] = "UPDATE devices SET name = ?2, type = ?3, cfg_has = ?4,"
                     " reporting_interval = ?5, sleep_threshold = ?6, security_level = ?7,"
                     " auto_wake = ?8, enabled = ?9, updated_at_ms = ?11 WHERE id = ?1",
    [S_DEV_DELETE] = "DELETE FROM devices WHERE id = ?1",
    [S_DEV_GET] = "SELECT " DEV_COLS " FROM devices WHERE id = ?1",
    [S_DEV_LIST] = "SELECT " DEV_COLS " FROM devices WHERE id > ?1 AND (?2 < 0 OR type = ?2)"
                   " AND (?3 IS NULL OR pk IN (SELECT device_pk FROM memberships"
                   " WHERE group_pk = ?3)) ORDER BY id LIMIT ?4",
    [S_GROUP_PK] = "SELECT pk FROM groups WHERE name = ?1",
    [S_GROUP_INSERT] = "INSERT INTO groups(name, created_at_ms) VALUES(?1, ?2)",
    [S_GROUP_DELETE] = "DELETE FROM groups WHERE name = ?1",
    [S_GROUP_LIST] = "SELECT g.name, (SELECT count(*) FROM memberships m WHERE m.group_pk = g.pk),"
                     " g.created_at_ms FROM groups g ORDER BY g.name",
    [S_MEMBER_ADD] = "INSERT OR IGNORE INTO memberships(group_pk, device_pk) VALUES(?1, ?2)",
    [S_MEMBER_REMOVE] = "DELETE FROM memberships WHERE group_pk = ?1 AND device_pk = ?2",
    [S_MEMBER_LIST] = "SELECT g.name, d.id FROM memberships m JOIN groups g ON g.pk = m.group_pk"
                      " JOIN devices d ON d.pk = m.device_pk ORDER BY g.name, d.id",
    [S_STATUS_HIST_INSERT] = "INSERT INTO status_history(device_pk, " STATUS_COLS
                             ") VALUES(?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10)",
    [S_STATUS_HIST_INSERT_CHUNK] =
        "INSERT INTO status_history(device_pk, " STATUS_COLS ") VALUES" HIST_VALUES_32,
    [S_STATUS_LATEST_UPSERT] =
        "INSERT INTO status_latest(device_pk, " STATUS_COLS
        ") VALUES(?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10)"
        " ON CONFLICT(device_pk) DO UPDATE SET time_ms = excluded.time_ms, has = excluded.has,"
        " battery = excluded.battery, power_mode = excluded.power_mode,"
        " connection = excluded.connection, signal = excluded.signal,"
        " firmware = excluded.firmware, errors = excluded.errors, extra = excluded.extra"
        " WHERE excluded.time_ms >= status_latest.time_ms",
    [S_STATUS_LATEST_ONE] = "SELECT " STATUS_COLS " FROM status_latest WHERE device_pk = ?1",
    [S_STATUS_LATEST_ALL] = "SELECT d.id, s.time_ms, s.has, s.battery, s.power_mode,"
                            " s.connection, s.signal, s.firmware, s.errors, s.extra"
                            " FROM status_latest s JOIN devices d ON d.pk = s.device_pk"
                            " ORDER BY d.id",
    [S_STATUS_HIST_ASC] = "SELECT " STATUS_COLS " FROM status_history WHERE device_pk = ?1"
                          " AND time_ms >= ?2 AND time_ms < ?3 ORDER BY time_ms, rowid LIMIT ?4",
    [S_STATUS_HIST_DESC] = "SELECT " STATUS_COLS " FROM status_history WHERE device_pk = ?1"
                           " AND time_ms >= ?2 AND time_ms < ?3"
                           " ORDER BY time_ms DESC, rowid DESC LIMIT ?4",
    [S_TEL_INSERT] = "INSERT INTO telemetry(device_pk, " TEL_COLS
                     ") VALUES(?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10)",
    [S_TEL_ASC] = "SELECT " TEL_COLS " FROM telemetry WHERE device_pk = ?1 AND ts_ms >= ?2"
                  " AND ts_ms < ?3 ORDER BY ts_ms, rowid LIMIT ?4",
    [S_TEL_DESC] = "SELECT " TEL_COLS " FROM telemetry WHERE device_pk = ?1 AND ts_ms >= ?2"
                   " AND ts_ms < ?3 ORDER BY ts_ms DESC, rowid DESC LIMIT ?4",
    [S_ROLL_UPSERT_HOUR] = ROLL_UPSERT("rollup_hour"),
    [S_ROLL_UPSERT_DAY] = ROLL_UPSERT("rollup_day"),
    [S_ROLL_DEV_HOUR_ASC] = ROLL_DEV("rollup_hour", "ASC"),
    [S_ROLL_DEV_HOUR_DESC] = ROLL_DEV("rollup_hour", "DESC"),
    [S_ROLL_DEV_DAY_ASC] = ROLL_DEV("rollup_day", "ASC"),
    [S_ROLL_DEV_DAY_DESC] = ROLL_DEV("rollup_day", "DESC"),
    [S_ROLL_GROUP_HOUR_ASC] = ROLL_GROUP("rollup_hour", "ASC"),
    [S_ROLL_GROUP_HOUR_DESC] = ROLL_GROUP("rollup_hour", "DESC"),
    [S_ROLL_GROUP_DAY_ASC] = ROLL_GROUP("rollup_day", "ASC"),
    [S_ROLL_GROUP_DAY_DESC] = ROLL_GROUP("rollup_day", "DESC"),
    [S_CMD_INSERT] = "INSERT INTO commands(" CMD_COLS
                     ") VALUES(?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13)",
    /* Forward only, and a final state (succeeded, failed, expired) stays. */
    [S_CMD_SET_STATE] = "UPDATE commands SET state = ?2, updated_at_ms = ?3"
                        " WHERE request_id = ?1 AND state < ?2 AND state < 3",
    [S_CMD_EXISTS] = "SELECT 1 FROM commands WHERE request_id = ?1",
    [S_CMD_RESPONSE] = "UPDATE commands SET state = ?3, updated_at_ms = ?4, has_response = 1,"
                       " response_success = ?5, response_message = ?6, response_data = ?7"
                       " WHERE request_id = ?1 AND device_id = ?2 AND state < 3",
    [S_CMD_EXISTS_FOR_DEVICE] = "SELECT 1 FROM commands WHERE request_id = ?1 AND device_id = ?2",
    [S_CMD_EXPIRE] = "UPDATE commands SET state = 5, updated_at_ms = ?1"
                     " WHERE state < 3 AND expires_at_ms > 0 AND expires_at_ms <= ?1",
    [S_CMD_GET] = "SELECT " CMD_COLS " FROM commands WHERE request_id = ?1",
    [S_EV_INSERT] = "INSERT INTO events(time_ms, kind, type, severity, device_id, actor, source,"
                    " message, details) VALUES(?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)",
    [S_USER_INSERT] = "INSERT INTO users(name, role, disabled, created_at_ms)"
                      " VALUES(?1, ?2, ?3, ?4)",
    [S_USER_GET] = "SELECT name, role, disabled, created_at_ms FROM users WHERE name = ?1",
    [S_USER_DELETE] = "DELETE FROM users WHERE name = ?1",
    [S_USER_LIST] = "SELECT name, role, disabled, created_at_ms FROM users ORDER BY name",
    [S_KEY_INSERT] =
        "INSERT INTO api_keys(" KEY_COLS ") VALUES(?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11)",
    [S_KEY_GET] = "SELECT " KEY_COLS " FROM api_keys WHERE key_id = ?1",
    [S_KEY_REVOKE] = "UPDATE api_keys SET revoked_at_ms = ?2 WHERE key_id = ?1"
                     " AND revoked_at_ms = 0",
    [S_KEY_EXISTS] = "SELECT 1 FROM api_keys WHERE key_id = ?1",
    [S_KEY_USED] = "UPDATE api_keys SET last_used_ms = ?2 WHERE key_id = ?1"
                   " AND last_used_ms < ?2",
    [S_KEY_LIST] = "SELECT " KEY_COLS " FROM api_keys ORDER BY created_at_ms, rowid",
    [S_PRUNE_HISTORY] = PRUNE_PER_DEVICE("status_history", "time_ms"),
    [S_PRUNE_TELEMETRY] = PRUNE_PER_DEVICE("telemetry", "ts_ms"),
    [S_PRUNE_HOUR] = PRUNE_PER_DEVICE("rollup_hour", "bucket_ms"),
    [S_PRUNE_DAY] = PRUNE_PER_DEVICE("rollup_day", "bucket_ms"),
    [S_PRUNE_EVENTS] = "DELETE FROM events WHERE time_ms < ?1",
    [S_PRUNE_COMMANDS] = "DELETE FROM commands WHERE state >= 3 AND created_at_ms < ?1",
    [S_VERSION] = "SELECT coalesce(max(version), 0) FROM schema_migrations",
    [S_VERSION_INSERT] = "INSERT INTO schema_migrations(version, applied_at_ms) VALUES(?1, ?2)",
    [S_GENERATION] = "SELECT value FROM store_meta WHERE key = 'device_generation'",
    [S_GENERATION_BUMP] = "UPDATE store_meta SET value = value + 1 WHERE key = 'device_generation'",
    [S_DEL_HISTORY] = "DELETE FROM status_history WHERE device_pk = ?1",
    [S_DEL_TELEMETRY] = "DELETE FROM telemetry WHERE device_pk = ?1",
    [S_DEL_LATEST] = "DELETE FROM status_latest WHERE device_pk = ?1",
    [S_DEL_HOUR] = "DELETE FROM rollup_hour WHERE device_pk = ?1",
    [S_DEL_DAY] = "DELETE FROM rollup_day WHERE device_pk = ?1",
};

/* Variants of the filtered lists (a bit per filter that is set). */
#define CMD_F_DEVICE 1u
#define CMD_F_GROUP  2u
#define CMD_F_STATE  4u
#define CMD_F_FROM   8u
#define CMD_F_TO     16u
#define CMD_F_DESC   32u
#define CMD_VARIANTS 64u
#define EV_F_KIND    1u
#define EV_F_TYPE    2u
#define EV_F_DEVICE  4u
#define EV_F_SEV     8u
#define EV_F_BEFORE  16u
#define EV_F_FROM    32u
#define EV_F_TO      64u
#define EV_F_DESC    128u
#define EV_VARIANTS  256u

/* The writer's device cache: id -> surrogate key, open addressing. */
#define PK_CACHE_MIN 1024u
#define PK_CACHE_MAX (1u << 18) /* 16 MiB; past it the cache starts over */

typedef struct pk_entry {
    char id[EM_DEVICE_ID_MAX + 1]; /* "" when the slot is free */
    sqlite3_int64 pk;
} pk_entry_t;

/* A status of the batch: the newest one per device is upserted once. */
typedef struct latest_ref {
    sqlite3_int64 pk;
    int64_t time_ms;
    size_t index;
} latest_ref_t;

struct em__store_conn {
    sqlite3 *db;
    sqlite3_stmt *st[S_COUNT];
    sqlite3_stmt *cmd_list[CMD_VARIANTS];
    sqlite3_stmt *ev_list[EV_VARIANTS];
    sqlite3_stmt *slots[EM__SQ_SLOTS]; /* the other files' statements */
    pk_entry_t *cache;
    size_t cache_cap; /* power of two, or 0 */
    size_t cache_used;
    sqlite3_int64 cache_gen;
    latest_ref_t *latest;
    size_t latest_cap;
};

/* ---- helpers ------------------------------------------------------------ */

static em_err_t db_error(em__store_conn_t *c, int rc, const char *what, em_error_t *err)
{
    int ext = sqlite3_extended_errcode(c->db);
    if (ext == SQLITE_CONSTRAINT_UNIQUE || ext == SQLITE_CONSTRAINT_PRIMARYKEY) {
        return em_error_set(err, EM_ERR_EXISTS, EM_SEV_LOW, NULL, "%s: already exists", what);
    }
    if (rc == SQLITE_NOMEM) {
        return em_error_set(err, EM_ERR_NOMEM, EM_SEV_HIGH, NULL, "%s: out of memory", what);
    }
    /* sqlite3_errmsg never holds the file name; SQLite URLs hold no secret. */
    return em_error_set(err, EM_ERR_IO, EM_SEV_HIGH, NULL, "sqlite: %s: %s", what,
                        sqlite3_errmsg(c->db));
}

static sqlite3_stmt *prepare(em__store_conn_t *c, const char *sql, em_error_t *err)
{
    sqlite3_stmt *s = NULL;
    int rc = sqlite3_prepare_v3(c->db, sql, -1, SQLITE_PREPARE_PERSISTENT, &s, NULL);
    if (rc != SQLITE_OK) {
        db_error(c, rc, "prepare", err);
        sqlite3_finalize(s);
        return NULL;
    }
    return s;
}

/* The cached statement id, prepared on first use. */
static sqlite3_stmt *stmt(em__store_conn_t *c, enum stmt_id id, em_error_t *err)
{
    if (c->st[id] == NULL) {
        c->st[id] = prepare(c, stmt_sql[id], err);
    }
    return c->st[id];
}

static void done(sqlite3_stmt *s)
{
    sqlite3_reset(s);
    sqlite3_clear_bindings(s);
}

/* Steps a statement that returns no row; resets it. */
static em_err_t exec_stmt(em__store_conn_t *c, sqlite3_stmt *s, const char *what, em_error_t *err)
{
    int rc = sqlite3_step(s);
    em_err_t e = EM_OK;
    if (rc != SQLITE_DONE && rc != SQLITE_ROW) {
        e = db_error(c, rc, what, err);
    }
    done(s);
    return e;
}

static void bind_text(sqlite3_stmt *s, int i, const char *v)
{
    if (v == NULL) {
        sqlite3_bind_null(s, i);
    } else {
        sqlite3_bind_text(s, i, v, -1, SQLITE_STATIC);
    }
}

static void col_copy(sqlite3_stmt *s, int i, char *buf, size_t size)
{
    if (size == 0) {
        return;
    }
    const unsigned char *t = sqlite3_column_text(s, i);
    size_t n = t != NULL ? (size_t)sqlite3_column_bytes(s, i) : 0;
    if (n >= size) {
        n = size - 1;
    }
    if (n > 0) {
        memcpy(buf, t, n);
    }
    buf[n] = '\0';
}

static const char *col_text_or_null(sqlite3_stmt *s, int i)
{
    return (const char *)sqlite3_column_text(s, i);
}

static em_err_t tx_begin(em__store_conn_t *c, em_error_t *err)
{
    sqlite3_stmt *s = stmt(c, S_BEGIN, err);
    return s != NULL ? exec_stmt(c, s, "begin", err) : EM_ERR_IO;
}

static em_err_t tx_commit(em__store_conn_t *c, em_error_t *err)
{
    sqlite3_stmt *s = stmt(c, S_COMMIT, err);
    return s != NULL ? exec_stmt(c, s, "commit", err) : EM_ERR_IO;
}

static void tx_rollback(em__store_conn_t *c)
{
    if (sqlite3_get_autocommit(c->db)) {
        return; /* SQLite already rolled back (or nothing began) */
    }
    em_error_t ignored;
    sqlite3_stmt *s = stmt(c, S_ROLLBACK, &ignored);
    if (s != NULL) {
        exec_stmt(c, s, "rollback", &ignored);
    }
}

/* Ends a transaction: commits when rc is EM_OK, else rolls back. */
static em_err_t tx_end(em__store_conn_t *c, em_err_t rc, em_error_t *err)
{
    if (rc == EM_OK) {
        rc = tx_commit(c, err);
    }
    if (rc != EM_OK) {
        tx_rollback(c);
    }
    return rc;
}

/* Looks up a surrogate key by text key: EM_OK with *pk, notfound, or an I/O
 * error. */
static em_err_t lookup_pk(em__store_conn_t *c, enum stmt_id id, const char *key, em_err_t notfound,
                          const char *what, sqlite3_int64 *pk, em_error_t *err)
{
    *pk = 0; /* defined on every path, found or not */
    sqlite3_stmt *s = stmt(c, id, err);
    if (s == NULL) {
        return EM_ERR_IO;
    }
    bind_text(s, 1, key);
    int rc = sqlite3_step(s);
    em_err_t e = EM_OK;
    if (rc == SQLITE_ROW) {
        *pk = sqlite3_column_int64(s, 0);
    } else if (rc == SQLITE_DONE) {
        e = notfound == EM_OK ? EM_ERR_NOT_FOUND
                              : em_error_set(err, notfound, EM_SEV_LOW, NULL, "%s", what);
    } else {
        e = db_error(c, rc, what, err);
    }
    done(s);
    return e;
}

static em_err_t device_pk(em__store_conn_t *c, const char *id, sqlite3_int64 *pk, em_error_t *err)
{
    em_err_t rc = lookup_pk(c, S_DEV_PK, id, EM_ERR_DEVICE_NOT_FOUND, "no such device", pk, err);
    if (rc == EM_ERR_DEVICE_NOT_FOUND) {
        em_error_set_device(err, id);
    }
    return rc;
}

static em_err_t group_pk(em__store_conn_t *c, const char *name, sqlite3_int64 *pk, em_error_t *err)
{
    return lookup_pk(c, S_GROUP_PK, name, EM_ERR_GROUP_NOT_FOUND, "no such group", pk, err);
}

/* Whether a row exists for a one-parameter existence query. */
static em_err_t exists(em__store_conn_t *c, enum stmt_id id, const char *a, const char *b,
                       bool *found, em_error_t *err)
{
    sqlite3_stmt *s = stmt(c, id, err);
    if (s == NULL) {
        return EM_ERR_IO;
    }
    bind_text(s, 1, a);
    if (b != NULL) {
        bind_text(s, 2, b);
    }
    int rc = sqlite3_step(s);
    em_err_t e = EM_OK;
    if (rc == SQLITE_ROW || rc == SQLITE_DONE) {
        *found = rc == SQLITE_ROW;
    } else {
        e = db_error(c, rc, "lookup", err);
    }
    done(s);
    return e;
}

/* The helpers above, for sqlite_identity.c (sqlite_internal.h). */
sqlite3_stmt *em__sq_stmt_slot(em__store_conn_t *c, unsigned slot, const char *sql, em_error_t *err)
{
    if (slot >= EM__SQ_SLOTS) {
        em_error_set(err, EM_ERR_INTERNAL, EM_SEV_HIGH, NULL, "sqlite: statement slot %u", slot);
        return NULL;
    }
    if (c->slots[slot] == NULL) {
        c->slots[slot] = prepare(c, sql, err);
    }
    return c->slots[slot];
}

sqlite3 *em__sq_db(em__store_conn_t *c)
{
    return c->db;
}

em_err_t em__sq_error(em__store_conn_t *c, int rc, const char *what, em_error_t *err)
{
    return db_error(c, rc, what, err);
}

em_err_t em__sq_exec(em__store_conn_t *c, sqlite3_stmt *s, const char *what, em_error_t *err)
{
    return exec_stmt(c, s, what, err);
}

void em__sq_done(sqlite3_stmt *s)
{
    done(s);
}

em_err_t em__sq_tx_begin(em__store_conn_t *c, em_error_t *err)
{
    return tx_begin(c, err);
}

em_err_t em__sq_tx_end(em__store_conn_t *c, em_err_t rc, em_error_t *err)
{
    return tx_end(c, rc, err);
}

em_err_t em__sq_device_pk(em__store_conn_t *c, const char *id, sqlite3_int64 *pk, em_error_t *err)
{
    return device_pk(c, id, pk, err);
}

void em__sq_col_copy(sqlite3_stmt *s, int i, char *buf, size_t size)
{
    col_copy(s, i, buf, size);
}

/* Range bounds as a half-open interval the indexes can use directly. */
static sqlite3_int64 range_from(const em_store_range_t *r)
{
    return r->from_ms != 0 ? r->from_ms : INT64_MIN;
}

static sqlite3_int64 range_to(const em_store_range_t *r)
{
    return r->to_ms != 0 ? r->to_ms : INT64_MAX;
}

/* ---- open, close, migrate ------------------------------------------------ */

/* sqlite:PATH or sqlite:///ABSOLUTE/PATH. */
static em_err_t url_path(const char *url, const char **path, em_error_t *err)
{
    if (strncmp(url, "sqlite:", 7) != 0) {
        return em_error_set(err, EM_ERR_CONFIGURATION, EM_SEV_MEDIUM, "store",
                            "not an sqlite: URL");
    }
    const char *p = url + 7;
    if (strncmp(p, "//", 2) == 0) {
        p += 2;
        if (*p != '/') {
            return em_error_set(err, EM_ERR_CONFIGURATION, EM_SEV_MEDIUM, "store",
                                "sqlite:// takes an absolute path (sqlite:///path)");
        }
    }
    if (*p == '\0' || strcmp(p, ":memory:") == 0) {
        return em_error_set(err, EM_ERR_CONFIGURATION, EM_SEV_MEDIUM, "store",
                            "the sqlite URL needs a file path");
    }
    *path = p;
    return EM_OK;
}

static void conn_free(em__store_conn_t *c)
{
    if (c == NULL) {
        return;
    }
    for (size_t i = 0; i < S_COUNT; i++) {
        sqlite3_finalize(c->st[i]);
    }
    for (size_t i = 0; i < CMD_VARIANTS; i++) {
        sqlite3_finalize(c->cmd_list[i]);
    }
    for (size_t i = 0; i < EV_VARIANTS; i++) {
        sqlite3_finalize(c->ev_list[i]);
    }
    for (size_t i = 0; i < EM__SQ_SLOTS; i++) {
        sqlite3_finalize(c->slots[i]);
    }
    sqlite3_close_v2(c->db);
    free(c->cache);
    free(c->latest);
    free(c);
}

/* Checkpoints every 16,384 pages (64 MiB of WAL) rather than SQLite's
 * 1,000: an ingest batch dirties about one history index page per
 * device, so with 1,000 devices the default checkpointed after nearly
 * every batch, copying (and fsyncing) the same hot pages each time; a
 * checkpoint copies only the newest version of a page, so spacing them
 * copies each hot page once per many batches (W2: store writer 13-14 ->
 * 11.6 us per status). After a checkpoint the WAL file is cut back to
 * 64 MiB. */
#define SQ_PRAGMAS_COMMON                                                                          \
    " PRAGMA foreign_keys=ON; PRAGMA temp_store=MEMORY; PRAGMA cache_size=-16384;"                 \
    " PRAGMA wal_autocheckpoint=16384; PRAGMA journal_size_limit=67108864;"

static em_err_t sq_open(const char *url, const em_store_options_t *opts, em__store_conn_t **out,
                        em_error_t *err)
{
    *out = NULL;
    const char *path = NULL;
    em_err_t rc = url_path(url, &path, err);
    if (rc != EM_OK || path == NULL) {
        return rc != EM_OK ? rc
                           : em_error_set(err, EM_ERR_CONFIGURATION, EM_SEV_MEDIUM, "store",
                                          "the sqlite URL needs a file path");
    }
    /* Create the file ourselves so that it is 0600 from its first byte,
     * whatever the umask; SQLite would use 0644. */
    int fd = open(path, O_RDWR | O_CREAT | O_CLOEXEC, S_IRUSR | S_IWUSR);
    if (fd < 0) {
        return em_error_set(err, EM_ERR_IO, EM_SEV_HIGH, "store",
                            "cannot open the database file: %s", strerror(errno));
    }
    close(fd);

    em__store_conn_t *c = calloc(1, sizeof(*c));
    if (c == NULL) {
        return em_error_set(err, EM_ERR_NOMEM, EM_SEV_HIGH, NULL, "out of memory");
    }
    int src = sqlite3_open_v2(path, &c->db, SQLITE_OPEN_READWRITE | SQLITE_OPEN_NOMUTEX, NULL);
    if (src != SQLITE_OK) {
        em_err_t e = c->db != NULL
                         ? db_error(c, src, "open", err)
                         : em_error_set(err, EM_ERR_NOMEM, EM_SEV_HIGH, NULL, "out of memory");
        conn_free(c);
        return e;
    }
    sqlite3_extended_result_codes(c->db, 1);
    sqlite3_busy_timeout(c->db, opts->busy_timeout_ms);
    const char *pragmas =
        opts->sync == EM_STORE_SYNC_FULL
            ? "PRAGMA journal_mode=WAL; PRAGMA synchronous=FULL;" SQ_PRAGMAS_COMMON
            : "PRAGMA journal_mode=WAL; PRAGMA synchronous=NORMAL;" SQ_PRAGMAS_COMMON;
    src = sqlite3_exec(c->db, pragmas, NULL, NULL, NULL);
    if (src != SQLITE_OK) {
        em_err_t e = db_error(c, src, "configure", err);
        conn_free(c);
        return e;
    }
    *out = c;
    return EM_OK;
}

static void sq_close(em__store_conn_t *c)
{
    conn_free(c);
}

static em_err_t read_version(em__store_conn_t *c, int *version, em_error_t *err)
{
    sqlite3_stmt *s = stmt(c, S_VERSION, err);
    if (s == NULL) {
        return EM_ERR_IO;
    }
    int rc = sqlite3_step(s);
    em_err_t e = EM_OK;
    if (rc == SQLITE_ROW) {
        sqlite3_int64 v = sqlite3_column_int64(s, 0);
        *version = v > INT_MAX ? INT_MAX : (int)v;
    } else {
        e = db_error(c, rc, "read the schema version", err);
    }
    done(s);
    return e;
}

static em_err_t sq_migrate(em__store_conn_t *c, int *version, em_error_t *err)
{
    int src = sqlite3_exec(c->db,
                           "CREATE TABLE IF NOT EXISTS schema_migrations("
                           " version INTEGER PRIMARY KEY, applied_at_ms INTEGER NOT NULL)",
                           NULL, NULL, NULL);
    if (src != SQLITE_OK) {
        return db_error(c, src, "create schema_migrations", err);
    }
    for (;;) {
        /* BEGIN IMMEDIATE takes the write lock before reading the version, so
         * a second process starting at the same time waits, then sees the
         * migration done. */
        em_err_t rc = tx_begin(c, err);
        if (rc != EM_OK) {
            return rc;
        }
        int v = 0;
        rc = read_version(c, &v, err);
        if (rc == EM_OK && v < 0) {
            rc = em_error_set(err, EM_ERR_CONFIGURATION, EM_SEV_HIGH, "store",
                              "the database records a negative schema version (%d)", v);
        }
        if (rc == EM_OK && v > EM__STORE_SCHEMA_VERSION) {
            rc = em_error_set(err, EM_ERR_CONFIGURATION, EM_SEV_HIGH, "store",
                              "the database schema (version %d) is newer than this build (%d)", v,
                              EM__STORE_SCHEMA_VERSION);
        }
        if (rc == EM_OK && v == EM__STORE_SCHEMA_VERSION) {
            *version = v;
            return tx_end(c, EM_OK, err);
        }
        if (rc == EM_OK && v < MIGRATION_COUNT) {
            src = sqlite3_exec(c->db, migrations[v], NULL, NULL, NULL);
            if (src != SQLITE_OK) {
                rc = db_error(c, src, "migrate", err);
            }
        }
        if (rc == EM_OK) {
            sqlite3_stmt *s = stmt(c, S_VERSION_INSERT, err);
            if (s == NULL) {
                rc = EM_ERR_IO;
            } else {
                sqlite3_bind_int(s, 1, v + 1);
                sqlite3_bind_int64(s, 2, em_now_ms());
                rc = exec_stmt(c, s, "record the migration", err);
            }
        }
        rc = tx_end(c, rc, err);
        if (rc != EM_OK) {
            return rc;
        }
    }
}

/* ---- the batch writer ------------------------------------------------- */

/* Binds one status row to parameters base + 1 .. base + 10. */
static void bind_status(sqlite3_stmt *s, int base, sqlite3_int64 pk, int64_t time_ms,
                        const em_status_t *st)
{
    sqlite3_bind_int64(s, base + 1, pk);
    sqlite3_bind_int64(s, base + 2, time_ms);
    sqlite3_bind_int(s, base + 3, st->has);
    if (st->has & EM_STATUS_HAS_BATTERY) {
        sqlite3_bind_int(s, base + 4, st->battery_level);
    }
    if (st->has & EM_STATUS_HAS_POWER_MODE) {
        sqlite3_bind_int(s, base + 5, st->power_mode);
    }
    if (st->has & EM_STATUS_HAS_CONNECTION) {
        sqlite3_bind_int(s, base + 6, st->connection);
    }
    if (st->has & EM_STATUS_HAS_SIGNAL) {
        sqlite3_bind_int(s, base + 7, st->signal_strength);
    }
    if (st->has & EM_STATUS_HAS_FIRMWARE) {
        bind_text(s, base + 8, st->firmware_version);
    }
    bind_text(s, base + 9, st->errors_json);
    bind_text(s, base + 10, st->extra_json);
}

static size_t pk_hash(const char *id)
{
    uint64_t h = UINT64_C(1469598103934665603);
    for (const unsigned char *p = (const unsigned char *)id; *p != '\0'; p++) {
        h = (h ^ *p) * UINT64_C(1099511628211);
    }
    return (size_t)h;
}

static void cache_clear(em__store_conn_t *c)
{
    if (c->cache != NULL) {
        memset(c->cache, 0, c->cache_cap * sizeof(*c->cache));
    }
    c->cache_used = 0;
}

static pk_entry_t *cache_slot(pk_entry_t *tab, size_t cap, const char *id)
{
    size_t i = pk_hash(id) & (cap - 1);
    while (tab[i].id[0] != '\0' && strcmp(tab[i].id, id) != 0) {
        i = (i + 1) & (cap - 1);
    }
    return &tab[i];
}

/* Remembers id -> pk. Best effort: out of memory only means no caching. */
static void cache_put(em__store_conn_t *c, const char *id, sqlite3_int64 pk)
{
    if ((c->cache_used + 1) * 2 > c->cache_cap) {
        size_t ncap = c->cache_cap == 0 ? PK_CACHE_MIN : c->cache_cap * 2;
        if (ncap > PK_CACHE_MAX) {
            cache_clear(c);
        } else {
            pk_entry_t *n = calloc(ncap, sizeof(*n));
            if (n == NULL) {
                cache_clear(c);
                if (c->cache == NULL) {
                    return;
                }
            } else {
                for (size_t i = 0; c->cache != NULL && i < c->cache_cap; i++) {
                    if (c->cache[i].id[0] != '\0') {
                        *cache_slot(n, ncap, c->cache[i].id) = c->cache[i];
                    }
                }
                free(c->cache);
                c->cache = n;
                c->cache_cap = ncap;
            }
        }
    }
    if (c->cache == NULL) {
        return; /* cleared with no table to refill */
    }
    pk_entry_t *e = cache_slot(c->cache, c->cache_cap, id);
    if (e->id[0] == '\0') {
        snprintf(e->id, sizeof(e->id), "%s", id);
        c->cache_used++;
    }
    e->pk = pk;
}

/* Called inside the batch's transaction: drops the cache when a device was
 * deleted since it was filled. */
static em_err_t cache_check_generation(em__store_conn_t *c, em_error_t *err)
{
    sqlite3_stmt *s = stmt(c, S_GENERATION, err);
    if (s == NULL) {
        return EM_ERR_IO;
    }
    int rc = sqlite3_step(s);
    em_err_t e = EM_OK;
    if (rc == SQLITE_ROW) {
        sqlite3_int64 g = sqlite3_column_int64(s, 0);
        if (g != c->cache_gen) {
            cache_clear(c);
            c->cache_gen = g;
        }
    } else {
        e = db_error(c, rc, "device generation", err);
    }
    done(s);
    return e;
}

/* EM_OK with *found false when the device is gone (its records are skipped). */
static em_err_t batch_device(em__store_conn_t *c, const char *id, bool *found, sqlite3_int64 *pk,
                             em_error_t *err)
{
    if (c->cache != NULL) {
        const pk_entry_t *e = cache_slot(c->cache, c->cache_cap, id);
        if (e->id[0] != '\0') {
            *found = true;
            *pk = e->pk;
            return EM_OK;
        }
    }
    em_err_t rc = lookup_pk(c, S_DEV_PK, id, EM_OK, "device", pk, err);
    if (rc == EM_ERR_NOT_FOUND) {
        *found = false;
        return EM_OK;
    }
    if (rc == EM_OK) {
        *found = true;
        cache_put(c, id, *pk);
    }
    return rc;
}

/* Resolves a status's device and notes the record for the history and
 * latest-status passes; a status of a device that is gone is skipped. */
static em_err_t note_status(em__store_conn_t *c, const em__store_rec_t *r, size_t index,
                            size_t *nlatest, em_error_t *err)
{
    bool found;
    sqlite3_int64 pk;
    em_err_t rc = batch_device(c, r->device_id, &found, &pk, err);
    if (rc == EM_OK && found) {
        c->latest[(*nlatest)++] = (latest_ref_t){pk, r->time_ms, index};
    }
    return rc;
}

/* History rows, HIST_CHUNK per statement: one statement execution costs
 * about as much as the row it inserts, so this nearly halves the work of
 * the hottest write. Rows keep the batch's order. */
static em_err_t write_history(em__store_conn_t *c, const em__store_rec_t *recs, size_t nlatest,
                              em_error_t *err)
{
    size_t i = 0;
    em_err_t rc = EM_OK;
    while (i < nlatest && rc == EM_OK) {
        bool chunk = nlatest - i >= HIST_CHUNK;
        sqlite3_stmt *h = stmt(c, chunk ? S_STATUS_HIST_INSERT_CHUNK : S_STATUS_HIST_INSERT, err);
        if (h == NULL) {
            return EM_ERR_IO;
        }
        size_t rows = chunk ? HIST_CHUNK : 1;
        for (size_t j = 0; j < rows; j++) {
            const latest_ref_t *l = &c->latest[i + j];
            const em__store_rec_t *r = &recs[l->index];
            bind_status(h, (int)(j * HIST_COLS), l->pk, r->time_ms, &r->u.status);
        }
        rc = exec_stmt(c, h, "status history", err);
        i += rows;
    }
    return rc;
}

static int latest_cmp(const void *a, const void *b)
{
    const latest_ref_t *x = a;
    const latest_ref_t *y = b;
    if (x->pk != y->pk) {
        return x->pk < y->pk ? -1 : 1;
    }
    if (x->time_ms != y->time_ms) {
        return x->time_ms < y->time_ms ? -1 : 1;
    }
    return x->index < y->index ? -1 : (x->index > y->index ? 1 : 0);
}

/* One upsert per device per batch: its newest status in the batch (of equal
 * times, the last queued), as the upsert itself keeps the newest across
 * batches. */
static em_err_t write_latest(em__store_conn_t *c, const em__store_rec_t *recs, size_t nlatest,
                             em_error_t *err)
{
    if (nlatest == 0) {
        return EM_OK;
    }
    sqlite3_stmt *l = stmt(c, S_STATUS_LATEST_UPSERT, err);
    if (l == NULL) {
        return EM_ERR_IO;
    }
    qsort(c->latest, nlatest, sizeof(*c->latest), latest_cmp);
    em_err_t rc = EM_OK;
    for (size_t i = 0; i < nlatest && rc == EM_OK; i++) {
        if (i + 1 < nlatest && c->latest[i + 1].pk == c->latest[i].pk) {
            continue; /* a newer status of the same device follows */
        }
        const em__store_rec_t *r = &recs[c->latest[i].index];
        bind_status(l, 0, c->latest[i].pk, r->time_ms, &r->u.status);
        rc = exec_stmt(c, l, "latest status", err);
    }
    return rc;
}

static void bind_opt_double(sqlite3_stmt *s, int i, bool has, double v)
{
    if (has && isfinite(v)) {
        sqlite3_bind_double(s, i, v);
    }
}

static em_err_t write_telemetry(em__store_conn_t *c, const em__store_rec_t *r, em_error_t *err)
{
    bool found;
    sqlite3_int64 pk;
    em_err_t rc = batch_device(c, r->device_id, &found, &pk, err);
    if (rc != EM_OK || !found) {
        return rc;
    }
    sqlite3_stmt *s = stmt(c, S_TEL_INSERT, err);
    if (s == NULL) {
        return EM_ERR_IO;
    }
    const em_telemetry_t *t = &r->u.tel.t;
    sqlite3_bind_int64(s, 1, pk);
    sqlite3_bind_int64(s, 2, t->timestamp_ms);
    sqlite3_bind_int(s, 3, t->has);
    bind_opt_double(s, 4, t->has & EM_TELEMETRY_HAS_POWER, t->power_w);
    bind_opt_double(s, 5, t->has & EM_TELEMETRY_HAS_ENERGY, t->energy_wh);
    bind_opt_double(s, 6, t->has & EM_TELEMETRY_HAS_VOLTAGE, t->voltage_v);
    bind_opt_double(s, 7, t->has & EM_TELEMETRY_HAS_CURRENT, t->current_a);
    bind_opt_double(s, 8, t->has & EM_TELEMETRY_HAS_TEMPERATURE, t->temperature);
    bind_opt_double(s, 9, t->has & EM_TELEMETRY_HAS_HUMIDITY, t->humidity);
    if (t->has & EM_TELEMETRY_HAS_BATTERY) {
        sqlite3_bind_int(s, 10, t->battery);
    }
    return exec_stmt(c, s, "telemetry", err);
}

static em_err_t write_response(em__store_conn_t *c, const em__store_rec_t *r, uint64_t *orphans,
                               em_error_t *err)
{
    sqlite3_stmt *s = stmt(c, S_CMD_RESPONSE, err);
    if (s == NULL) {
        return EM_ERR_IO;
    }
    const em_response_t *resp = &r->u.resp;
    bind_text(s, 1, resp->request_id);
    bind_text(s, 2, r->device_id);
    sqlite3_bind_int(s, 3, resp->success ? EM_CMD_SUCCEEDED : EM_CMD_FAILED);
    sqlite3_bind_int64(s, 4, r->time_ms);
    sqlite3_bind_int(s, 5, resp->success ? 1 : 0);
    bind_text(s, 6, resp->message);
    bind_text(s, 7, resp->data_json);
    em_err_t rc = exec_stmt(c, s, "command response", err);
    if (rc != EM_OK || sqlite3_changes(c->db) > 0) {
        return rc;
    }
    /* Nothing moved: a late answer to a final command is fine; an answer
     * to a request this device was never sent is an orphan. */
    bool found = false;
    rc = exists(c, S_CMD_EXISTS_FOR_DEVICE, resp->request_id, r->device_id, &found, err);
    if (rc == EM_OK && !found) {
        (*orphans)++;
    }
    return rc;
}

static em_err_t write_command_state(em__store_conn_t *c, const char *request_id, int state,
                                    int64_t now_ms, const char *what, em_error_t *err)
{
    sqlite3_stmt *s = stmt(c, S_CMD_SET_STATE, err);
    if (s == NULL) {
        return EM_ERR_IO;
    }
    bind_text(s, 1, request_id);
    sqlite3_bind_int(s, 2, state);
    sqlite3_bind_int64(s, 3, now_ms);
    return exec_stmt(c, s, what, err);
}

static em_err_t write_event(em__store_conn_t *c, const em_store_event_t *ev, em_error_t *err)
{
    sqlite3_stmt *s = stmt(c, S_EV_INSERT, err);
    if (s == NULL) {
        return EM_ERR_IO;
    }
    sqlite3_bind_int64(s, 1, ev->time_ms);
    sqlite3_bind_int(s, 2, (int)ev->kind);
    bind_text(s, 3, ev->type);
    sqlite3_bind_int(s, 4, (int)ev->severity);
    bind_text(s, 5, ev->device_id);
    bind_text(s, 6, ev->actor);
    bind_text(s, 7, ev->source);
    bind_text(s, 8, ev->message);
    bind_text(s, 9, ev->details_json);
    return exec_stmt(c, s, "event", err);
}

static em_err_t write_key_used(em__store_conn_t *c, const em__store_rec_t *r, em_error_t *err)
{
    sqlite3_stmt *s = stmt(c, S_KEY_USED, err);
    if (s == NULL) {
        return EM_ERR_IO;
    }
    bind_text(s, 1, r->device_id);
    sqlite3_bind_int64(s, 2, r->time_ms);
    return exec_stmt(c, s, "key last use", err);
}

static em_err_t write_rollups(em__store_conn_t *c, const em__store_rec_t *recs, size_t n,
                              em_error_t *err)
{
    em__rollup_delta_t *d = NULL;
    size_t nd = 0;
    if (em__store_rollups(recs, n, &d, &nd) != EM_OK) {
        return em_error_set(err, EM_ERR_NOMEM, EM_SEV_HIGH, NULL, "out of memory");
    }
    em_err_t rc = EM_OK;
    for (size_t i = 0; i < nd && rc == EM_OK; i++) {
        bool found;
        sqlite3_int64 pk;
        rc = batch_device(c, d[i].device_id, &found, &pk, err);
        if (rc != EM_OK || !found) {
            continue;
        }
        sqlite3_stmt *s =
            stmt(c, d[i].kind == EM_ROLLUP_DAY ? S_ROLL_UPSERT_DAY : S_ROLL_UPSERT_HOUR, err);
        if (s == NULL) {
            rc = EM_ERR_IO;
            break;
        }
        sqlite3_bind_int64(s, 1, pk);
        sqlite3_bind_int64(s, 2, d[i].bucket_ms);
        sqlite3_bind_int64(s, 3, (sqlite3_int64)d[i].samples);
        sqlite3_bind_double(s, 4, d[i].energy_wh);
        sqlite3_bind_double(s, 5, d[i].power_sum_w);
        sqlite3_bind_int64(s, 6, (sqlite3_int64)d[i].power_samples);
        if (d[i].power_samples > 0) {
            sqlite3_bind_double(s, 7, d[i].power_max_w);
        }
        sqlite3_bind_int64(s, 8, d[i].resets);
        rc = exec_stmt(c, s, "rollup", err);
    }
    free(d);
    return rc;
}

static em_err_t sq_write_batch(em__store_conn_t *c, const em__store_rec_t *recs, size_t n,
                               uint64_t *orphans, em_error_t *err)
{
    *orphans = 0;
    if (n > c->latest_cap) {
        latest_ref_t *l = realloc(c->latest, n * sizeof(*l));
        if (l == NULL) {
            return em_error_set(err, EM_ERR_NOMEM, EM_SEV_HIGH, NULL, "out of memory");
        }
        c->latest = l;
        c->latest_cap = n;
    }
    em_err_t rc = tx_begin(c, err);
    if (rc == EM_OK) {
        rc = cache_check_generation(c, err);
    }
    if (rc != EM_OK) {
        tx_rollback(c);
        return rc;
    }
    size_t nlatest = 0;
    uint64_t orph = 0;
    bool has_telemetry = false;
    for (size_t i = 0; i < n && rc == EM_OK; i++) {
        const em__store_rec_t *r = &recs[i];
        switch (r->kind) {
        case EM__REC_STATUS:
            rc = note_status(c, r, i, &nlatest, err);
            break;
        case EM__REC_TELEMETRY:
            has_telemetry = true;
            rc = write_telemetry(c, r, err);
            break;
        case EM__REC_RESPONSE:
            rc = write_response(c, r, &orph, err);
            break;
        case EM__REC_COMMAND_STATE:
            rc = write_command_state(c, r->u.cmd.request_id, (int)r->u.cmd.state, r->time_ms,
                                     "command state", err);
            break;
        case EM__REC_EVENT:
            rc = write_event(c, &r->u.event.ev, err);
            break;
        case EM__REC_KEY_USED:
            rc = write_key_used(c, r, err);
            break;
        }
    }
    if (rc == EM_OK) {
        rc = write_history(c, recs, nlatest, err);
    }
    if (rc == EM_OK) {
        rc = write_latest(c, recs, nlatest, err); /* sorts c->latest: after the history */
    }
    if (rc == EM_OK && has_telemetry) {
        rc = write_rollups(c, recs, n, err);
    }
    rc = tx_end(c, rc, err);
    if (rc == EM_OK) {
        *orphans = orph;
    }
    return rc;
}

/* ---- devices, groups -------------------------------------------------- */

static void bind_device(sqlite3_stmt *s, const em_store_device_t *d)
{
    bind_text(s, 1, d->id);
    bind_text(s, 2, d->name);
    sqlite3_bind_int(s, 3, (int)d->type);
    sqlite3_bind_int(s, 4, d->config.has);
    sqlite3_bind_int64(s, 5, d->config.reporting_interval);
    sqlite3_bind_int(s, 6, d->config.sleep_threshold);
    sqlite3_bind_int(s, 7, d->config.security_level);
    sqlite3_bind_int(s, 8, d->config.auto_wake ? 1 : 0);
    sqlite3_bind_int(s, 9, d->enabled ? 1 : 0);
    sqlite3_bind_int64(s, 10, d->created_at_ms);
    sqlite3_bind_int64(s, 11, d->updated_at_ms);
}

static void read_device(sqlite3_stmt *s, em_store_device_t *d)
{
    memset(d, 0, sizeof(*d));
    col_copy(s, 0, d->id, sizeof(d->id));
    col_copy(s, 1, d->name, sizeof(d->name));
    d->type = (em_device_type_t)sqlite3_column_int(s, 2);
    d->config.has = (uint8_t)sqlite3_column_int(s, 3);
    d->config.reporting_interval = (uint32_t)sqlite3_column_int64(s, 4);
    d->config.sleep_threshold = (uint8_t)sqlite3_column_int(s, 5);
    d->config.security_level = (uint8_t)sqlite3_column_int(s, 6);
    d->config.auto_wake = sqlite3_column_int(s, 7) != 0;
    d->enabled = sqlite3_column_int(s, 8) != 0;
    d->created_at_ms = sqlite3_column_int64(s, 9);
    d->updated_at_ms = sqlite3_column_int64(s, 10);
}

static em_err_t sq_device_insert(em__store_conn_t *c, const em_store_device_t *d, em_error_t *err)
{
    sqlite3_stmt *s = stmt(c, S_DEV_INSERT, err);
    if (s == NULL) {
        return EM_ERR_IO;
    }
    bind_device(s, d);
    em_err_t rc = exec_stmt(c, s, "device", err);
    if (rc == EM_ERR_EXISTS) {
        em_error_set_device(err, d->id);
    }
    return rc;
}

static em_err_t sq_device_update(em__store_conn_t *c, const em_store_device_t *d, em_error_t *err)
{
    sqlite3_stmt *s = stmt(c, S_DEV_UPDATE, err);
    if (s == NULL) {
        return EM_ERR_IO;
    }
    bind_device(s, d);
    em_err_t rc = exec_stmt(c, s, "device update", err);
    if (rc == EM_OK && sqlite3_changes(c->db) == 0) {
        rc = em_error_set(err, EM_ERR_DEVICE_NOT_FOUND, EM_SEV_LOW, "id", "no such device");
        em_error_set_device(err, d->id);
    }
    return rc;
}

/* Runs a statement whose only parameter is a device key. */
static em_err_t exec_pk(em__store_conn_t *c, enum stmt_id id, sqlite3_int64 pk, em_error_t *err)
{
    sqlite3_stmt *s = stmt(c, id, err);
    if (s == NULL) {
        return EM_ERR_IO;
    }
    sqlite3_bind_int64(s, 1, pk);
    return exec_stmt(c, s, "device delete", err);
}

static em_err_t sq_device_delete(em__store_conn_t *c, const char *id, em_error_t *err)
{
    static const enum stmt_id children[] = {S_DEL_HISTORY, S_DEL_TELEMETRY, S_DEL_LATEST,
                                            S_DEL_HOUR, S_DEL_DAY};
    em_err_t rc = tx_begin(c, err);
    if (rc != EM_OK) {
        return rc;
    }
    sqlite3_int64 pk = 0;
    rc = device_pk(c, id, &pk, err);
    for (size_t i = 0; i < sizeof(children) / sizeof(children[0]) && rc == EM_OK; i++) {
        rc = exec_pk(c, children[i], pk, err);
    }
    if (rc == EM_OK) {
        /* Memberships, certificates and enrollment tokens go by their
         * foreign keys. */
        sqlite3_stmt *s = stmt(c, S_DEV_DELETE, err);
        if (s == NULL) {
            rc = EM_ERR_IO;
        } else {
            bind_text(s, 1, id);
            rc = exec_stmt(c, s, "device delete", err);
        }
    }
    if (rc == EM_OK) {
        sqlite3_stmt *s = stmt(c, S_GENERATION_BUMP, err);
        rc = s != NULL ? exec_stmt(c, s, "device generation", err) : EM_ERR_IO;
    }
    return tx_end(c, rc, err);
}

static em_err_t sq_device_get(em__store_conn_t *c, const char *id, em_store_device_t *out,
                              em_error_t *err)
{
    sqlite3_stmt *s = stmt(c, S_DEV_GET, err);
    if (s == NULL) {
        return EM_ERR_IO;
    }
    bind_text(s, 1, id);
    int rc = sqlite3_step(s);
    em_err_t e = EM_OK;
    if (rc == SQLITE_ROW) {
        read_device(s, out);
    } else if (rc == SQLITE_DONE) {
        e = em_error_set(err, EM_ERR_DEVICE_NOT_FOUND, EM_SEV_LOW, "id", "no such device");
        em_error_set_device(err, id);
    } else {
        e = db_error(c, rc, "device", err);
    }
    done(s);
    return e;
}

static em_err_t sq_device_list(em__store_conn_t *c, const em_store_device_filter_t *f,
                               em_store_device_fn fn, void *ud, size_t *count, em_error_t *err)
{
    sqlite3_int64 gpk = 0;
    if (f->group != NULL) {
        em_err_t rc = group_pk(c, f->group, &gpk, err);
        if (rc != EM_OK) {
            return rc;
        }
    }
    sqlite3_stmt *s = stmt(c, S_DEV_LIST, err);
    if (s == NULL) {
        return EM_ERR_IO;
    }
    bind_text(s, 1, f->after != NULL ? f->after : "");
    sqlite3_bind_int(s, 2, f->type);
    if (f->group != NULL) {
        sqlite3_bind_int64(s, 3, gpk);
    }
    sqlite3_bind_int(s, 4, (int)f->limit);
    size_t n = 0;
    int rc;
    em_store_device_t d;
    while ((rc = sqlite3_step(s)) == SQLITE_ROW) {
        read_device(s, &d);
        n++;
        if (fn(&d, ud) != 0) {
            rc = SQLITE_DONE;
            break;
        }
    }
    em_err_t e = rc == SQLITE_DONE ? EM_OK : db_error(c, rc, "device list", err);
    done(s);
    if (count != NULL) {
        *count = n;
    }
    return e;
}

static em_err_t sq_group_insert(em__store_conn_t *c, const char *name, int64_t now_ms,
                                em_error_t *err)
{
    sqlite3_stmt *s = stmt(c, S_GROUP_INSERT, err);
    if (s == NULL) {
        return EM_ERR_IO;
    }
    bind_text(s, 1, name);
    sqlite3_bind_int64(s, 2, now_ms);
    return exec_stmt(c, s, "group", err);
}

static em_err_t sq_group_delete(em__store_conn_t *c, const char *name, em_error_t *err)
{
    sqlite3_stmt *s = stmt(c, S_GROUP_DELETE, err);
    if (s == NULL) {
        return EM_ERR_IO;
    }
    bind_text(s, 1, name);
    em_err_t rc = exec_stmt(c, s, "group delete", err);
    if (rc == EM_OK && sqlite3_changes(c->db) == 0) {
        rc = em_error_set(err, EM_ERR_GROUP_NOT_FOUND, EM_SEV_LOW, "group", "no such group");
    }
    return rc;
}

static em_err_t sq_group_list(em__store_conn_t *c, em_store_group_fn fn, void *ud, em_error_t *err)
{
    sqlite3_stmt *s = stmt(c, S_GROUP_LIST, err);
    if (s == NULL) {
        return EM_ERR_IO;
    }
    int rc;
    char name[EM_GROUP_NAME_MAX + 1];
    while ((rc = sqlite3_step(s)) == SQLITE_ROW) {
        col_copy(s, 0, name, sizeof(name));
        if (fn(name, (size_t)sqlite3_column_int64(s, 1), sqlite3_column_int64(s, 2), ud) != 0) {
            rc = SQLITE_DONE;
            break;
        }
    }
    em_err_t e = rc == SQLITE_DONE ? EM_OK : db_error(c, rc, "group list", err);
    done(s);
    return e;
}

static em_err_t member_change(em__store_conn_t *c, enum stmt_id id, const char *group,
                              const char *dev, em_error_t *err)
{
    em_err_t rc = tx_begin(c, err);
    if (rc != EM_OK) {
        return rc;
    }
    sqlite3_int64 gpk = 0;
    sqlite3_int64 dpk = 0;
    rc = group_pk(c, group, &gpk, err);
    if (rc == EM_OK) {
        rc = device_pk(c, dev, &dpk, err);
    }
    if (rc == EM_OK) {
        sqlite3_stmt *s = stmt(c, id, err);
        if (s == NULL) {
            rc = EM_ERR_IO;
        } else {
            sqlite3_bind_int64(s, 1, gpk);
            sqlite3_bind_int64(s, 2, dpk);
            rc = exec_stmt(c, s, "membership", err);
            if (rc == EM_OK && id == S_MEMBER_REMOVE && sqlite3_changes(c->db) == 0) {
                rc = em_error_set(err, EM_ERR_DEVICE_NOT_FOUND, EM_SEV_LOW, "id",
                                  "the device is not a member of the group");
                em_error_set_device(err, dev);
            }
        }
    }
    return tx_end(c, rc, err);
}

static em_err_t sq_member_add(em__store_conn_t *c, const char *group, const char *id,
                              em_error_t *err)
{
    return member_change(c, S_MEMBER_ADD, group, id, err);
}

static em_err_t sq_member_remove(em__store_conn_t *c, const char *group, const char *id,
                                 em_error_t *err)
{
    return member_change(c, S_MEMBER_REMOVE, group, id, err);
}

static em_err_t sq_member_list(em__store_conn_t *c, em_store_member_fn fn, void *ud,
                               em_error_t *err)
{
    sqlite3_stmt *s = stmt(c, S_MEMBER_LIST, err);
    if (s == NULL) {
        return EM_ERR_IO;
    }
    int rc;
    char g[EM_GROUP_NAME_MAX + 1];
    char id[EM_DEVICE_ID_MAX + 1];
    while ((rc = sqlite3_step(s)) == SQLITE_ROW) {
        col_copy(s, 0, g, sizeof(g));
        col_copy(s, 1, id, sizeof(id));
        if (fn(g, id, ud) != 0) {
            rc = SQLITE_DONE;
            break;
        }
    }
    em_err_t e = rc == SQLITE_DONE ? EM_OK : db_error(c, rc, "member list", err);
    done(s);
    return e;
}

/* ---- status, telemetry, rollups -------------------------------------- */

/* Reads STATUS_COLS starting at column i0; the strings point into the row. */
static void read_status(sqlite3_stmt *s, int i0, em_status_t *st)
{
    memset(st, 0, sizeof(*st));
    st->last_seen_ms = sqlite3_column_int64(s, i0);
    st->has = (uint16_t)sqlite3_column_int(s, i0 + 1);
    st->battery_level = (uint8_t)sqlite3_column_int(s, i0 + 2);
    st->power_mode = (uint8_t)sqlite3_column_int(s, i0 + 3);
    st->connection = (uint8_t)sqlite3_column_int(s, i0 + 4);
    st->signal_strength = (int16_t)sqlite3_column_int(s, i0 + 5);
    col_copy(s, i0 + 6, st->firmware_version, sizeof(st->firmware_version));
    /* em_status_t's strings are not const (it owns them elsewhere); here
     * they only lend the row's text for the callback. */
    st->errors_json = (char *)(uintptr_t)col_text_or_null(s, i0 + 7);
    st->extra_json = (char *)(uintptr_t)col_text_or_null(s, i0 + 8);
}

static em_err_t sq_status_latest(em__store_conn_t *c, const char *id, em_store_status_fn fn,
                                 void *ud, em_error_t *err)
{
    sqlite3_stmt *s;
    if (id != NULL) {
        sqlite3_int64 pk;
        em_err_t rc = device_pk(c, id, &pk, err);
        if (rc != EM_OK) {
            return rc;
        }
        s = stmt(c, S_STATUS_LATEST_ONE, err);
        if (s == NULL) {
            return EM_ERR_IO;
        }
        sqlite3_bind_int64(s, 1, pk);
    } else {
        s = stmt(c, S_STATUS_LATEST_ALL, err);
        if (s == NULL) {
            return EM_ERR_IO;
        }
    }
    int rc;
    size_t n = 0;
    char dev[EM_DEVICE_ID_MAX + 1];
    em_status_t st;
    while ((rc = sqlite3_step(s)) == SQLITE_ROW) {
        n++;
        if (id == NULL) {
            col_copy(s, 0, dev, sizeof(dev));
            read_status(s, 1, &st);
        } else {
            snprintf(dev, sizeof(dev), "%s", id);
            read_status(s, 0, &st);
        }
        if (fn(dev, &st, ud) != 0) {
            rc = SQLITE_DONE;
            break;
        }
    }
    em_err_t e = rc == SQLITE_DONE ? EM_OK : db_error(c, rc, "latest status", err);
    done(s);
    if (e == EM_OK && id != NULL && n == 0) {
        e = em_error_set(err, EM_ERR_DEVICE_NOT_FOUND, EM_SEV_LOW, "id",
                         "the device has no status yet");
        em_error_set_device(err, id);
    }
    return e;
}

/* Binds device, range and limit (?1..?4) of a per-device time query. */
static em_err_t bind_device_range(em__store_conn_t *c, sqlite3_stmt *s, const char *id,
                                  const em_store_range_t *r, em_error_t *err)
{
    sqlite3_int64 pk;
    em_err_t rc = device_pk(c, id, &pk, err);
    if (rc != EM_OK) {
        return rc;
    }
    sqlite3_bind_int64(s, 1, pk);
    sqlite3_bind_int64(s, 2, range_from(r));
    sqlite3_bind_int64(s, 3, range_to(r));
    sqlite3_bind_int(s, 4, (int)r->limit);
    return EM_OK;
}

static em_err_t sq_status_history(em__store_conn_t *c, const char *id, const em_store_range_t *r,
                                  em_store_status_fn fn, void *ud, em_error_t *err)
{
    sqlite3_stmt *s = stmt(c, r->descending ? S_STATUS_HIST_DESC : S_STATUS_HIST_ASC, err);
    if (s == NULL) {
        return EM_ERR_IO;
    }
    em_err_t e = bind_device_range(c, s, id, r, err);
    if (e != EM_OK) {
        done(s);
        return e;
    }
    int rc;
    em_status_t st;
    while ((rc = sqlite3_step(s)) == SQLITE_ROW) {
        read_status(s, 0, &st);
        if (fn(id, &st, ud) != 0) {
            rc = SQLITE_DONE;
            break;
        }
    }
    e = rc == SQLITE_DONE ? EM_OK : db_error(c, rc, "status history", err);
    done(s);
    return e;
}

static double col_double(sqlite3_stmt *s, int i)
{
    return sqlite3_column_type(s, i) == SQLITE_NULL ? 0.0 : sqlite3_column_double(s, i);
}

static em_err_t sq_telemetry_list(em__store_conn_t *c, const char *id, const em_store_range_t *r,
                                  em_store_telemetry_fn fn, void *ud, em_error_t *err)
{
    sqlite3_stmt *s = stmt(c, r->descending ? S_TEL_DESC : S_TEL_ASC, err);
    if (s == NULL) {
        return EM_ERR_IO;
    }
    em_err_t e = bind_device_range(c, s, id, r, err);
    if (e != EM_OK) {
        done(s);
        return e;
    }
    int rc;
    em_telemetry_t t;
    while ((rc = sqlite3_step(s)) == SQLITE_ROW) {
        memset(&t, 0, sizeof(t));
        t.timestamp_ms = sqlite3_column_int64(s, 0);
        t.has = (uint16_t)sqlite3_column_int(s, 1);
        t.power_w = col_double(s, 2);
        t.energy_wh = col_double(s, 3);
        t.voltage_v = col_double(s, 4);
        t.current_a = col_double(s, 5);
        t.temperature = col_double(s, 6);
        t.humidity = col_double(s, 7);
        t.battery = (uint8_t)sqlite3_column_int(s, 8);
        if (fn(id, &t, ud) != 0) {
            rc = SQLITE_DONE;
            break;
        }
    }
    e = rc == SQLITE_DONE ? EM_OK : db_error(c, rc, "telemetry", err);
    done(s);
    return e;
}

static em_err_t rollup_rows(em__store_conn_t *c, sqlite3_stmt *s, em_store_rollup_fn fn, void *ud,
                            em_error_t *err)
{
    int rc;
    em_store_rollup_t r;
    while ((rc = sqlite3_step(s)) == SQLITE_ROW) {
        memset(&r, 0, sizeof(r));
        r.bucket_ms = sqlite3_column_int64(s, 0);
        r.samples = (uint64_t)sqlite3_column_int64(s, 1);
        r.energy_wh = col_double(s, 2);
        double psum = col_double(s, 3);
        sqlite3_int64 pn = sqlite3_column_int64(s, 4);
        r.power_avg_w = pn > 0 ? psum / (double)pn : 0.0;
        r.power_max_w = col_double(s, 5);
        r.resets = (uint32_t)sqlite3_column_int64(s, 6);
        r.devices = (uint32_t)sqlite3_column_int64(s, 7);
        if (fn(&r, ud) != 0) {
            rc = SQLITE_DONE;
            break;
        }
    }
    em_err_t e = rc == SQLITE_DONE ? EM_OK : db_error(c, rc, "rollups", err);
    done(s);
    return e;
}

static em_err_t sq_rollup_device(em__store_conn_t *c, const char *id, em_rollup_t kind,
                                 const em_store_range_t *r, em_store_rollup_fn fn, void *ud,
                                 em_error_t *err)
{
    enum stmt_id sid = kind == EM_ROLLUP_DAY
                           ? (r->descending ? S_ROLL_DEV_DAY_DESC : S_ROLL_DEV_DAY_ASC)
                           : (r->descending ? S_ROLL_DEV_HOUR_DESC : S_ROLL_DEV_HOUR_ASC);
    sqlite3_stmt *s = stmt(c, sid, err);
    if (s == NULL) {
        return EM_ERR_IO;
    }
    em_err_t e = bind_device_range(c, s, id, r, err);
    if (e != EM_OK) {
        done(s);
        return e;
    }
    return rollup_rows(c, s, fn, ud, err);
}

static em_err_t sq_rollup_group(em__store_conn_t *c, const char *group, em_rollup_t kind,
                                const em_store_range_t *r, em_store_rollup_fn fn, void *ud,
                                em_error_t *err)
{
    sqlite3_int64 gpk;
    em_err_t e = group_pk(c, group, &gpk, err);
    if (e != EM_OK) {
        return e;
    }
    enum stmt_id sid = kind == EM_ROLLUP_DAY
                           ? (r->descending ? S_ROLL_GROUP_DAY_DESC : S_ROLL_GROUP_DAY_ASC)
                           : (r->descending ? S_ROLL_GROUP_HOUR_DESC : S_ROLL_GROUP_HOUR_ASC);
    sqlite3_stmt *s = stmt(c, sid, err);
    if (s == NULL) {
        return EM_ERR_IO;
    }
    sqlite3_bind_int64(s, 1, gpk);
    sqlite3_bind_int64(s, 2, range_from(r));
    sqlite3_bind_int64(s, 3, range_to(r));
    sqlite3_bind_int(s, 4, (int)r->limit);
    return rollup_rows(c, s, fn, ud, err);
}

/* ---- commands ----------------------------------------------------------- */

static em_err_t sq_command_insert(em__store_conn_t *c, const em_store_command_t *cmd,
                                  em_error_t *err)
{
    sqlite3_stmt *s = stmt(c, S_CMD_INSERT, err);
    if (s == NULL) {
        return EM_ERR_IO;
    }
    bind_text(s, 1, cmd->request_id);
    bind_text(s, 2, cmd->device_id);
    bind_text(s, 3, cmd->group);
    sqlite3_bind_int(s, 4, (int)cmd->type);
    bind_text(s, 5, cmd->payload_json);
    sqlite3_bind_int(s, 6, (int)cmd->state);
    bind_text(s, 7, cmd->actor);
    sqlite3_bind_int64(s, 8, cmd->created_at_ms);
    sqlite3_bind_int64(s, 9, cmd->updated_at_ms);
    sqlite3_bind_int64(s, 10, cmd->expires_at_ms);
    sqlite3_bind_int(s, 11, cmd->has_response ? 1 : 0);
    sqlite3_bind_int(s, 12, cmd->response_success ? 1 : 0);
    bind_text(s, 13, cmd->response_message);
    return exec_stmt(c, s, "command", err);
}

static em_err_t sq_command_set_state(em__store_conn_t *c, const char *request_id,
                                     em_command_state_t state, int64_t now_ms, em_error_t *err)
{
    em_err_t rc = write_command_state(c, request_id, (int)state, now_ms, "command state", err);
    if (rc != EM_OK || sqlite3_changes(c->db) > 0) {
        return rc;
    }
    bool found = false;
    rc = exists(c, S_CMD_EXISTS, request_id, NULL, &found, err);
    if (rc == EM_OK && !found) {
        rc = em_error_set(err, EM_ERR_NOT_FOUND, EM_SEV_LOW, "requestId", "no such command");
    }
    return rc;
}

static em_err_t sq_command_expire(em__store_conn_t *c, int64_t now_ms, size_t *expired,
                                  em_error_t *err)
{
    sqlite3_stmt *s = stmt(c, S_CMD_EXPIRE, err);
    if (s == NULL) {
        return EM_ERR_IO;
    }
    sqlite3_bind_int64(s, 1, now_ms);
    em_err_t rc = exec_stmt(c, s, "command expiry", err);
    *expired = rc == EM_OK ? (size_t)sqlite3_changes(c->db) : 0;
    return rc;
}

static void read_command(sqlite3_stmt *s, em_store_command_t *cmd)
{
    memset(cmd, 0, sizeof(*cmd));
    col_copy(s, 0, cmd->request_id, sizeof(cmd->request_id));
    col_copy(s, 1, cmd->device_id, sizeof(cmd->device_id));
    col_copy(s, 2, cmd->group, sizeof(cmd->group));
    cmd->type = (em_command_type_t)sqlite3_column_int(s, 3);
    cmd->payload_json = col_text_or_null(s, 4);
    cmd->state = (em_command_state_t)sqlite3_column_int(s, 5);
    col_copy(s, 6, cmd->actor, sizeof(cmd->actor));
    cmd->created_at_ms = sqlite3_column_int64(s, 7);
    cmd->updated_at_ms = sqlite3_column_int64(s, 8);
    cmd->expires_at_ms = sqlite3_column_int64(s, 9);
    cmd->has_response = sqlite3_column_int(s, 10) != 0;
    cmd->response_success = sqlite3_column_int(s, 11) != 0;
    col_copy(s, 12, cmd->response_message, sizeof(cmd->response_message));
}

static em_err_t command_rows(em__store_conn_t *c, sqlite3_stmt *s, em_store_command_fn fn, void *ud,
                             size_t *n, em_error_t *err)
{
    int rc;
    em_store_command_t cmd;
    *n = 0;
    while ((rc = sqlite3_step(s)) == SQLITE_ROW) {
        read_command(s, &cmd);
        (*n)++;
        if (fn(&cmd, ud) != 0) {
            rc = SQLITE_DONE;
            break;
        }
    }
    em_err_t e = rc == SQLITE_DONE ? EM_OK : db_error(c, rc, "commands", err);
    done(s);
    return e;
}

static em_err_t sq_command_get(em__store_conn_t *c, const char *request_id, em_store_command_fn fn,
                               void *ud, em_error_t *err)
{
    sqlite3_stmt *s = stmt(c, S_CMD_GET, err);
    if (s == NULL) {
        return EM_ERR_IO;
    }
    bind_text(s, 1, request_id);
    size_t n = 0;
    em_err_t e = command_rows(c, s, fn, ud, &n, err);
    if (e == EM_OK && n == 0) {
        e = em_error_set(err, EM_ERR_NOT_FOUND, EM_SEV_LOW, "requestId", "no such command");
    }
    return e;
}

/* Appends a fixed SQL fragment; the buffers are sized for every variant. */
static void sql_add(char *buf, size_t size, const char *frag)
{
    size_t len = strlen(buf);
    snprintf(buf + len, size - len, "%s", frag);
}

static sqlite3_stmt *variant(em__store_conn_t *c, sqlite3_stmt **cache, unsigned key,
                             const char *sql, em_error_t *err)
{
    if (cache[key] == NULL) {
        cache[key] = prepare(c, sql, err);
    }
    return cache[key];
}

static em_err_t sq_command_list(em__store_conn_t *c, const em_store_command_filter_t *f,
                                em_store_command_fn fn, void *ud, em_error_t *err)
{
    unsigned key = (f->device_id != NULL ? CMD_F_DEVICE : 0) |
                   (f->group != NULL ? CMD_F_GROUP : 0) | (f->state >= 0 ? CMD_F_STATE : 0) |
                   (f->range.from_ms != 0 ? CMD_F_FROM : 0) | (f->range.to_ms != 0 ? CMD_F_TO : 0) |
                   (f->range.descending ? CMD_F_DESC : 0);
    sqlite3_stmt *s = c->cmd_list[key];
    if (s == NULL) {
        char sql[1024] = "SELECT " CMD_COLS " FROM commands WHERE 1";
        if (key & CMD_F_DEVICE) {
            sql_add(sql, sizeof(sql), " AND device_id = ?1");
        }
        if (key & CMD_F_GROUP) {
            sql_add(sql, sizeof(sql), " AND group_name = ?2");
        }
        if (key & CMD_F_STATE) {
            sql_add(sql, sizeof(sql), " AND state = ?3");
        }
        if (key & CMD_F_FROM) {
            sql_add(sql, sizeof(sql), " AND created_at_ms >= ?4");
        }
        if (key & CMD_F_TO) {
            sql_add(sql, sizeof(sql), " AND created_at_ms < ?5");
        }
        sql_add(sql, sizeof(sql),
                (key & CMD_F_DESC) ? " ORDER BY created_at_ms DESC, rowid DESC LIMIT ?6"
                                   : " ORDER BY created_at_ms, rowid LIMIT ?6");
        s = variant(c, c->cmd_list, key, sql, err);
        if (s == NULL) {
            return EM_ERR_IO;
        }
    }
    if (key & CMD_F_DEVICE) {
        bind_text(s, 1, f->device_id);
    }
    if (key & CMD_F_GROUP) {
        bind_text(s, 2, f->group);
    }
    if (key & CMD_F_STATE) {
        sqlite3_bind_int(s, 3, f->state);
    }
    if (key & CMD_F_FROM) {
        sqlite3_bind_int64(s, 4, f->range.from_ms);
    }
    if (key & CMD_F_TO) {
        sqlite3_bind_int64(s, 5, f->range.to_ms);
    }
    sqlite3_bind_int(s, 6, (int)f->range.limit);
    size_t n;
    return command_rows(c, s, fn, ud, &n, err);
}

/* ---- events ------------------------------------------------------------- */

static em_err_t sq_event_insert(em__store_conn_t *c, const em_store_event_t *ev, em_error_t *err)
{
    return write_event(c, ev, err);
}

static em_err_t sq_event_list(em__store_conn_t *c, const em_store_event_filter_t *f,
                              em_store_event_fn fn, void *ud, em_error_t *err)
{
    unsigned key = (f->kind >= 0 ? EV_F_KIND : 0) | (f->type != NULL ? EV_F_TYPE : 0) |
                   (f->device_id != NULL ? EV_F_DEVICE : 0) |
                   (f->min_severity >= 0 ? EV_F_SEV : 0) | (f->before_id > 0 ? EV_F_BEFORE : 0) |
                   (f->range.from_ms != 0 ? EV_F_FROM : 0) | (f->range.to_ms != 0 ? EV_F_TO : 0) |
                   (f->range.descending ? EV_F_DESC : 0);
    sqlite3_stmt *s = c->ev_list[key];
    if (s == NULL) {
        char sql[1024] = "SELECT " EV_COLS " FROM events WHERE 1";
        if (key & EV_F_KIND) {
            sql_add(sql, sizeof(sql), " AND kind = ?1");
        }
        if (key & EV_F_TYPE) {
            sql_add(sql, sizeof(sql), " AND type = ?2");
        }
        if (key & EV_F_DEVICE) {
            sql_add(sql, sizeof(sql), " AND device_id = ?3");
        }
        if (key & EV_F_SEV) {
            sql_add(sql, sizeof(sql), " AND severity >= ?4");
        }
        if (key & EV_F_BEFORE) {
            sql_add(sql, sizeof(sql), " AND id < ?5");
        }
        if (key & EV_F_FROM) {
            sql_add(sql, sizeof(sql), " AND time_ms >= ?6");
        }
        if (key & EV_F_TO) {
            sql_add(sql, sizeof(sql), " AND time_ms < ?7");
        }
        sql_add(sql, sizeof(sql),
                (key & EV_F_DESC) ? " ORDER BY id DESC LIMIT ?8" : " ORDER BY id LIMIT ?8");
        s = variant(c, c->ev_list, key, sql, err);
        if (s == NULL) {
            return EM_ERR_IO;
        }
    }
    if (key & EV_F_KIND) {
        sqlite3_bind_int(s, 1, f->kind);
    }
    if (key & EV_F_TYPE) {
        bind_text(s, 2, f->type);
    }
    if (key & EV_F_DEVICE) {
        bind_text(s, 3, f->device_id);
    }
    if (key & EV_F_SEV) {
        sqlite3_bind_int(s, 4, f->min_severity);
    }
    if (key & EV_F_BEFORE) {
        sqlite3_bind_int64(s, 5, f->before_id);
    }
    if (key & EV_F_FROM) {
        sqlite3_bind_int64(s, 6, f->range.from_ms);
    }
    if (key & EV_F_TO) {
        sqlite3_bind_int64(s, 7, f->range.to_ms);
    }
    sqlite3_bind_int(s, 8, (int)f->range.limit);
    int rc;
    em_store_event_t ev;
    while ((rc = sqlite3_step(s)) == SQLITE_ROW) {
        memset(&ev, 0, sizeof(ev));
        ev.id = sqlite3_column_int64(s, 0);
        ev.time_ms = sqlite3_column_int64(s, 1);
        ev.kind = (em_event_kind_t)sqlite3_column_int(s, 2);
        col_copy(s, 3, ev.type, sizeof(ev.type));
        ev.severity = (em_severity_t)sqlite3_column_int(s, 4);
        col_copy(s, 5, ev.device_id, sizeof(ev.device_id));
        col_copy(s, 6, ev.actor, sizeof(ev.actor));
        col_copy(s, 7, ev.source, sizeof(ev.source));
        col_copy(s, 8, ev.message, sizeof(ev.message));
        ev.details_json = col_text_or_null(s, 9);
        if (fn(&ev, ud) != 0) {
            rc = SQLITE_DONE;
            break;
        }
    }
    em_err_t e = rc == SQLITE_DONE ? EM_OK : db_error(c, rc, "events", err);
    done(s);
    return e;
}

/* ---- users, API keys ------------------------------------------------- */

static void read_user(sqlite3_stmt *s, em_store_user_t *u)
{
    memset(u, 0, sizeof(*u));
    col_copy(s, 0, u->name, sizeof(u->name));
    u->role = (em_role_t)sqlite3_column_int(s, 1);
    u->disabled = sqlite3_column_int(s, 2) != 0;
    u->created_at_ms = sqlite3_column_int64(s, 3);
}

static em_err_t sq_user_insert(em__store_conn_t *c, const em_store_user_t *u, em_error_t *err)
{
    sqlite3_stmt *s = stmt(c, S_USER_INSERT, err);
    if (s == NULL) {
        return EM_ERR_IO;
    }
    bind_text(s, 1, u->name);
    sqlite3_bind_int(s, 2, (int)u->role);
    sqlite3_bind_int(s, 3, u->disabled ? 1 : 0);
    sqlite3_bind_int64(s, 4, u->created_at_ms);
    return exec_stmt(c, s, "user", err);
}

static em_err_t sq_user_get(em__store_conn_t *c, const char *name, em_store_user_t *out,
                            em_error_t *err)
{
    sqlite3_stmt *s = stmt(c, S_USER_GET, err);
    if (s == NULL) {
        return EM_ERR_IO;
    }
    bind_text(s, 1, name);
    int rc = sqlite3_step(s);
    em_err_t e = EM_OK;
    if (rc == SQLITE_ROW) {
        read_user(s, out);
    } else if (rc == SQLITE_DONE) {
        e = em_error_set(err, EM_ERR_NOT_FOUND, EM_SEV_LOW, "name", "no such user");
    } else {
        e = db_error(c, rc, "user", err);
    }
    done(s);
    return e;
}

static em_err_t sq_user_delete(em__store_conn_t *c, const char *name, em_error_t *err)
{
    sqlite3_stmt *s = stmt(c, S_USER_DELETE, err);
    if (s == NULL) {
        return EM_ERR_IO;
    }
    bind_text(s, 1, name);
    em_err_t rc = exec_stmt(c, s, "user delete", err);
    if (rc == EM_OK && sqlite3_changes(c->db) == 0) {
        rc = em_error_set(err, EM_ERR_NOT_FOUND, EM_SEV_LOW, "name", "no such user");
    }
    return rc;
}

static em_err_t sq_user_list(em__store_conn_t *c, em_store_user_fn fn, void *ud, em_error_t *err)
{
    sqlite3_stmt *s = stmt(c, S_USER_LIST, err);
    if (s == NULL) {
        return EM_ERR_IO;
    }
    int rc;
    em_store_user_t u;
    while ((rc = sqlite3_step(s)) == SQLITE_ROW) {
        read_user(s, &u);
        if (fn(&u, ud) != 0) {
            rc = SQLITE_DONE;
            break;
        }
    }
    em_err_t e = rc == SQLITE_DONE ? EM_OK : db_error(c, rc, "users", err);
    done(s);
    return e;
}

static void read_key(sqlite3_stmt *s, em_store_api_key_t *k)
{
    memset(k, 0, sizeof(*k));
    col_copy(s, 0, k->key_id, sizeof(k->key_id));
    col_copy(s, 1, k->name, sizeof(k->name));
    k->role = (em_role_t)sqlite3_column_int(s, 2);
    col_copy(s, 3, k->device_id, sizeof(k->device_id));
    col_copy(s, 4, k->owner, sizeof(k->owner));
    const void *h = sqlite3_column_blob(s, 5);
    if (h != NULL && sqlite3_column_bytes(s, 5) == (int)sizeof(k->hash)) {
        memcpy(k->hash, h, sizeof(k->hash));
    }
    k->rate_per_min = (uint32_t)sqlite3_column_int64(s, 6);
    k->created_at_ms = sqlite3_column_int64(s, 7);
    k->expires_at_ms = sqlite3_column_int64(s, 8);
    k->last_used_ms = sqlite3_column_int64(s, 9);
    k->revoked_at_ms = sqlite3_column_int64(s, 10);
}

static em_err_t sq_api_key_insert(em__store_conn_t *c, const em_store_api_key_t *k, em_error_t *err)
{
    sqlite3_stmt *s = stmt(c, S_KEY_INSERT, err);
    if (s == NULL) {
        return EM_ERR_IO;
    }
    bind_text(s, 1, k->key_id);
    bind_text(s, 2, k->name);
    sqlite3_bind_int(s, 3, (int)k->role);
    bind_text(s, 4, k->device_id);
    bind_text(s, 5, k->owner);
    sqlite3_bind_blob(s, 6, k->hash, (int)sizeof(k->hash), SQLITE_STATIC);
    sqlite3_bind_int64(s, 7, k->rate_per_min);
    sqlite3_bind_int64(s, 8, k->created_at_ms);
    sqlite3_bind_int64(s, 9, k->expires_at_ms);
    sqlite3_bind_int64(s, 10, k->last_used_ms);
    sqlite3_bind_int64(s, 11, k->revoked_at_ms);
    return exec_stmt(c, s, "api key", err);
}

static em_err_t sq_api_key_get(em__store_conn_t *c, const char *key_id, em_store_api_key_t *out,
                               em_error_t *err)
{
    sqlite3_stmt *s = stmt(c, S_KEY_GET, err);
    if (s == NULL) {
        return EM_ERR_IO;
    }
    bind_text(s, 1, key_id);
    int rc = sqlite3_step(s);
    em_err_t e = EM_OK;
    if (rc == SQLITE_ROW) {
        read_key(s, out);
    } else if (rc == SQLITE_DONE) {
        e = em_error_set(err, EM_ERR_NOT_FOUND, EM_SEV_LOW, "keyId", "no such key");
    } else {
        e = db_error(c, rc, "api key", err);
    }
    done(s);
    return e;
}

static em_err_t sq_api_key_revoke(em__store_conn_t *c, const char *key_id, int64_t now_ms,
                                  em_error_t *err)
{
    sqlite3_stmt *s = stmt(c, S_KEY_REVOKE, err);
    if (s == NULL) {
        return EM_ERR_IO;
    }
    bind_text(s, 1, key_id);
    sqlite3_bind_int64(s, 2, now_ms);
    em_err_t rc = exec_stmt(c, s, "api key revoke", err);
    if (rc != EM_OK || sqlite3_changes(c->db) > 0) {
        return rc;
    }
    bool found = false;
    rc = exists(c, S_KEY_EXISTS, key_id, NULL, &found, err);
    if (rc == EM_OK && !found) {
        rc = em_error_set(err, EM_ERR_NOT_FOUND, EM_SEV_LOW, "keyId", "no such key");
    }
    return rc;
}

static em_err_t sq_api_key_list(em__store_conn_t *c, em_store_api_key_fn fn, void *ud,
                                em_error_t *err)
{
    sqlite3_stmt *s = stmt(c, S_KEY_LIST, err);
    if (s == NULL) {
        return EM_ERR_IO;
    }
    int rc;
    em_store_api_key_t k;
    while ((rc = sqlite3_step(s)) == SQLITE_ROW) {
        read_key(s, &k);
        if (fn(&k, ud) != 0) {
            rc = SQLITE_DONE;
            break;
        }
    }
    em_err_t e = rc == SQLITE_DONE ? EM_OK : db_error(c, rc, "api keys", err);
    done(s);
    return e;
}

/* ---- retention -------------------------------------------------------- */

static em_err_t sq_prune(em__store_conn_t *c, const em_store_retention_t *r, int64_t now_ms,
                         uint64_t *deleted, em_error_t *err)
{
    const struct {
        enum stmt_id id;
        int64_t period;
    } steps[] = {
        {S_PRUNE_HISTORY, r->status_history_ms}, {S_PRUNE_TELEMETRY, r->telemetry_ms},
        {S_PRUNE_HOUR, r->rollup_hour_ms},       {S_PRUNE_DAY, r->rollup_day_ms},
        {S_PRUNE_EVENTS, r->events_ms},          {S_PRUNE_COMMANDS, r->commands_ms},
    };
    *deleted = 0;
    em_err_t rc = tx_begin(c, err);
    if (rc != EM_OK) {
        return rc;
    }
    uint64_t total = 0;
    /* Both are >= 0 (checked by the front): no overflow. */
    rc = em__sq_identity_prune(c, now_ms - EM__STORE_TOKEN_KEEP_MS, &total, err);
    for (size_t i = 0; i < sizeof(steps) / sizeof(steps[0]) && rc == EM_OK; i++) {
        if (steps[i].period <= 0) {
            continue; /* keep forever */
        }
        sqlite3_stmt *s = stmt(c, steps[i].id, err);
        if (s == NULL) {
            rc = EM_ERR_IO;
            break;
        }
        /* Both are >= 0 (checked by the front): no overflow. */
        sqlite3_bind_int64(s, 1, now_ms - steps[i].period);
        rc = exec_stmt(c, s, "prune", err);
        if (rc == EM_OK) {
            total += (uint64_t)sqlite3_changes(c->db);
        }
    }
    rc = tx_end(c, rc, err);
    if (rc == EM_OK) {
        *deleted = total;
    }
    return rc;
}

const em__store_backend_t em__store_sqlite = {
    .name = "sqlite",
    .open = sq_open,
    .close = sq_close,
    .migrate = sq_migrate,
    .write_batch = sq_write_batch,
    .device_insert = sq_device_insert,
    .device_update = sq_device_update,
    .device_delete = sq_device_delete,
    .device_get = sq_device_get,
    .device_list = sq_device_list,
    .group_insert = sq_group_insert,
    .group_delete = sq_group_delete,
    .group_list = sq_group_list,
    .member_add = sq_member_add,
    .member_remove = sq_member_remove,
    .member_list = sq_member_list,
    .status_latest = sq_status_latest,
    .status_history = sq_status_history,
    .telemetry_list = sq_telemetry_list,
    .rollup_device = sq_rollup_device,
    .rollup_group = sq_rollup_group,
    .command_insert = sq_command_insert,
    .command_set_state = sq_command_set_state,
    .command_expire = sq_command_expire,
    .command_get = sq_command_get,
    .command_list = sq_command_list,
    .event_insert = sq_event_insert,
    .event_list = sq_event_list,
    .user_insert = sq_user_insert,
    .user_get = sq_user_get,
    .user_delete = sq_user_delete,
    .user_list = sq_user_list,
    .api_key_insert = sq_api_key_insert,
    .api_key_get = sq_api_key_get,
    .api_key_revoke = sq_api_key_revoke,
    .api_key_list = sq_api_key_list,
    .enroll_token_insert = em__sq_enroll_token_insert,
    .enroll_token_use = em__sq_enroll_token_use,
    .enroll_token_list = em__sq_enroll_token_list,
    .device_cert_insert = em__sq_device_cert_insert,
    .device_cert_latest = em__sq_device_cert_latest,
    .device_cert_list = em__sq_device_cert_list,
    .prune = sq_prune,
};
