/*
 * emiot - pg.c: the PostgreSQL store backend (libpq).
 *
 * One em__store_conn is one libpq connection. Every statement is prepared
 * once per connection, on first use, and run with text parameters; a
 * connection that broke (server restart, network) is reset before the next
 * operation and its statements are prepared again.
 *
 * The hot path is write_batch: a batch of thousands of statuses or telemetry
 * samples is one transaction of a handful of statements: history and
 * telemetry rows go in with COPY, the latest statuses, rollup increments and
 * events as statements whose parameters are PostgreSQL arrays (unnest), so
 * the cost per row is parsing, not a round trip. The devices a batch writes
 * are locked FOR KEY SHARE first (and rows of devices that do not exist are
 * dropped then): a concurrent device_delete waits for the batch and removes
 * what it wrote, instead of leaving history behind for a device that no
 * longer exists.
 *
 * Identifiers are stored with COLLATE "C" so that ordering and keyset paging
 * ("ids > after") are bytewise, as in SQLite, whatever the database's locale.
 */
#include <inttypes.h>
#include <libpq-fe.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <openssl/crypto.h>

#include "emiot/clock.h"
#include "model/json_util.h"
#include "store/pg_internal.h"

/* Session-level advisory lock key held while migrating ("emiot" in ASCII). */
#define PG_MIGRATE_LOCK "435627323252"
/* Longest array literal or COPY data one batch statement may carry. */
#define PG_ARRAY_MAX ((size_t)256 * 1024 * 1024)

/* ---------------------------------------------------------------------- */
/* Schema                                                                  */

/* Version 1. Hot tables (history, telemetry, rollups) carry no foreign keys:
 * batches check the devices they write for themselves (see write_batch),
 * which saves a trigger per row; device_delete removes their rows. seq
 * columns break ties between equal times in insertion order, as SQLite's
 * rowid does (history and telemetry cache theirs per session: only the
 * writer inserts those rows). Costs per ingested row are what W2 measures:
 * the time indexes only retention uses are BRIN (a few pages, nearly free to
 * maintain for rows that arrive in time order), and the rows updated on
 * every batch (latest status, rollups) leave room for HOT updates. */
static const char schema_v1[] =
    "CREATE TABLE devices ("
    " id TEXT COLLATE \"C\" PRIMARY KEY,"
    " name TEXT NOT NULL,"
    " type INTEGER NOT NULL,"
    " cfg_has INTEGER NOT NULL,"
    " reporting_interval BIGINT NOT NULL,"
    " sleep_threshold INTEGER NOT NULL,"
    " security_level INTEGER NOT NULL,"
    " auto_wake BOOLEAN NOT NULL,"
    " enabled BOOLEAN NOT NULL,"
    " created_at_ms BIGINT NOT NULL,"
    " updated_at_ms BIGINT NOT NULL);"
    "CREATE INDEX devices_type ON devices (type, id);"
    "CREATE TABLE groups ("
    " name TEXT COLLATE \"C\" PRIMARY KEY,"
    " created_at_ms BIGINT NOT NULL);"
    "CREATE TABLE memberships ("
    " group_name TEXT COLLATE \"C\" NOT NULL"
    "  CONSTRAINT memberships_group_fk REFERENCES groups (name) ON DELETE CASCADE,"
    " device_id TEXT COLLATE \"C\" NOT NULL"
    "  CONSTRAINT memberships_device_fk REFERENCES devices (id) ON DELETE CASCADE,"
    " PRIMARY KEY (group_name, device_id));"
    "CREATE INDEX memberships_device ON memberships (device_id);"
    "CREATE TABLE status_latest ("
    " device_id TEXT COLLATE \"C\" PRIMARY KEY,"
    " time_ms BIGINT NOT NULL,"
    " has INTEGER NOT NULL,"
    " battery INTEGER NOT NULL,"
    " power_mode INTEGER NOT NULL,"
    " connection INTEGER NOT NULL,"
    " signal INTEGER NOT NULL,"
    " firmware TEXT NOT NULL,"
    " errors_json TEXT,"
    " extra_json TEXT) WITH (fillfactor = 70);"
    "CREATE TABLE status_history ("
    " seq BIGINT GENERATED ALWAYS AS IDENTITY (CACHE 1000),"
    " device_id TEXT COLLATE \"C\" NOT NULL,"
    " time_ms BIGINT NOT NULL,"
    " has INTEGER NOT NULL,"
    " battery INTEGER NOT NULL,"
    " power_mode INTEGER NOT NULL,"
    " connection INTEGER NOT NULL,"
    " signal INTEGER NOT NULL,"
    " firmware TEXT NOT NULL,"
    " errors_json TEXT,"
    " extra_json TEXT);"
    "CREATE INDEX status_history_device_time ON status_history (device_id, time_ms);"
    "CREATE INDEX status_history_time ON status_history USING brin (time_ms);"
    "CREATE TABLE telemetry ("
    " seq BIGINT GENERATED ALWAYS AS IDENTITY (CACHE 1000),"
    " device_id TEXT COLLATE \"C\" NOT NULL,"
    " time_ms BIGINT NOT NULL,"
    " has INTEGER NOT NULL,"
    " battery INTEGER NOT NULL,"
    " power_w DOUBLE PRECISION NOT NULL,"
    " energy_wh DOUBLE PRECISION NOT NULL,"
    " voltage_v DOUBLE PRECISION NOT NULL,"
    " current_a DOUBLE PRECISION NOT NULL,"
    " temperature DOUBLE PRECISION NOT NULL,"
    " humidity DOUBLE PRECISION NOT NULL,"
    " delta_wh DOUBLE PRECISION NOT NULL,"
    " counter_reset BOOLEAN NOT NULL);"
    "CREATE INDEX telemetry_device_time ON telemetry (device_id, time_ms);"
    "CREATE INDEX telemetry_time ON telemetry USING brin (time_ms);"
    "CREATE TABLE rollups ("
    " device_id TEXT COLLATE \"C\" NOT NULL,"
    " kind INTEGER NOT NULL,"
    " bucket_ms BIGINT NOT NULL,"
    " samples BIGINT NOT NULL,"
    " energy_wh DOUBLE PRECISION NOT NULL,"
    " power_sum_w DOUBLE PRECISION NOT NULL,"
    " power_samples BIGINT NOT NULL,"
    " power_max_w DOUBLE PRECISION,"
    " resets BIGINT NOT NULL,"
    " PRIMARY KEY (device_id, kind, bucket_ms)) WITH (fillfactor = 70);"
    "CREATE INDEX rollups_kind_bucket ON rollups (kind, bucket_ms);"
    "CREATE TABLE commands ("
    " seq BIGINT GENERATED ALWAYS AS IDENTITY,"
    " request_id TEXT COLLATE \"C\" PRIMARY KEY,"
    " device_id TEXT COLLATE \"C\" NOT NULL,"
    " group_name TEXT COLLATE \"C\" NOT NULL,"
    " type INTEGER NOT NULL,"
    " payload_json TEXT,"
    " state INTEGER NOT NULL,"
    " actor TEXT NOT NULL,"
    " created_at_ms BIGINT NOT NULL,"
    " updated_at_ms BIGINT NOT NULL,"
    " expires_at_ms BIGINT NOT NULL,"
    " has_response BOOLEAN NOT NULL,"
    " response_success BOOLEAN NOT NULL,"
    " response_message TEXT NOT NULL);"
    "CREATE INDEX commands_created ON commands (created_at_ms, request_id);"
    "CREATE INDEX commands_device ON commands (device_id, created_at_ms);"
    "CREATE INDEX commands_open ON commands (expires_at_ms) WHERE state < 3;"
    "CREATE TABLE events ("
    " id BIGSERIAL PRIMARY KEY,"
    " time_ms BIGINT NOT NULL,"
    " kind INTEGER NOT NULL,"
    " type TEXT COLLATE \"C\" NOT NULL,"
    " severity INTEGER NOT NULL,"
    " device_id TEXT COLLATE \"C\" NOT NULL,"
    " actor TEXT NOT NULL,"
    " source TEXT NOT NULL,"
    " message TEXT NOT NULL,"
    " details_json TEXT);"
    "CREATE INDEX events_time ON events (time_ms);"
    "CREATE INDEX events_device ON events (device_id, id);"
    "CREATE INDEX events_kind ON events (kind, id);"
    "CREATE TABLE users ("
    " name TEXT COLLATE \"C\" PRIMARY KEY,"
    " role INTEGER NOT NULL,"
    " disabled BOOLEAN NOT NULL,"
    " created_at_ms BIGINT NOT NULL);"
    "CREATE TABLE api_keys ("
    " seq BIGSERIAL UNIQUE,"
    " key_id TEXT COLLATE \"C\" PRIMARY KEY,"
    " name TEXT NOT NULL,"
    " role INTEGER NOT NULL,"
    " device_id TEXT COLLATE \"C\" NOT NULL,"
    " owner TEXT NOT NULL,"
    " hash BYTEA NOT NULL,"
    " rate_per_min BIGINT NOT NULL,"
    " created_at_ms BIGINT NOT NULL,"
    " expires_at_ms BIGINT NOT NULL,"
    " last_used_ms BIGINT NOT NULL,"
    " revoked_at_ms BIGINT NOT NULL);";

/* migrations[i] takes the schema from version i to i + 1 (version 2, device
 * identity, is in pg_identity.c). */
static const char *const migrations[EM__STORE_SCHEMA_VERSION] = {schema_v1, em__pg_schema_v2};

/* ---------------------------------------------------------------------- */
/* Statements                                                              */

#define COLS_DEVICE                                                                                \
    "id, name, type, cfg_has, reporting_interval, sleep_threshold, security_level, auto_wake, "    \
    "enabled, created_at_ms, updated_at_ms"
#define COLS_STATUS                                                                                \
    "device_id, time_ms, has, battery, power_mode, connection, signal, firmware, errors_json, "    \
    "extra_json"
#define COLS_TELEMETRY                                                                             \
    "device_id, time_ms, has, battery, power_w, energy_wh, voltage_v, current_a, temperature, "    \
    "humidity"
#define COLS_COMMAND                                                                               \
    "request_id, device_id, group_name, type, payload_json, state, actor, created_at_ms, "         \
    "updated_at_ms, expires_at_ms, has_response, response_success, response_message"
#define COLS_EVENT                                                                                 \
    "id, time_ms, kind, type, severity, device_id, actor, source, message, details_json"
#define COLS_KEY                                                                                   \
    "key_id, name, role, device_id, owner, hash, rate_per_min, created_at_ms, expires_at_ms, "     \
    "last_used_ms, revoked_at_ms"

/* clang-format off: the SQL reads better laid out by hand. */
/* $2 from (inclusive, 0: none), $3 to (exclusive, 0: none) on column col. */
#define RANGE(col) " ($2::bigint = 0 OR " col " >= $2) AND ($3::bigint = 0 OR " col " < $3) "

#define SQL_HISTORY(dir)                                                                           \
    "SELECT " COLS_STATUS                                                                          \
    " FROM status_history WHERE device_id = $1 AND" RANGE("time_ms") "ORDER BY time_ms " dir       \
                                                                     ", seq " dir " LIMIT $4"
#define SQL_TELEMETRY(dir)                                                                         \
    "SELECT " COLS_TELEMETRY                                                                       \
    " FROM telemetry WHERE device_id = $1 AND" RANGE("time_ms") "ORDER BY time_ms " dir            \
                                                                ", seq " dir " LIMIT $4"
#define SQL_ROLLUP_DEVICE(dir)                                                                     \
    "SELECT bucket_ms, samples, energy_wh, power_sum_w, power_samples, power_max_w, resets, 1 "    \
    "FROM rollups WHERE device_id = $1 AND kind = $5 AND" RANGE(                                   \
        "bucket_ms") "ORDER BY bucket_ms " dir " LIMIT $4"
/* Summed over the group's current members: power_avg is then the mean over
 * every sample of every member (power_sum / power_samples of the sums). */
#define SQL_ROLLUP_GROUP(dir)                                                                      \
    "SELECT r.bucket_ms, sum(r.samples), sum(r.energy_wh), sum(r.power_sum_w), "                   \
    "sum(r.power_samples), max(r.power_max_w), sum(r.resets), count(*) "                           \
    "FROM rollups r JOIN memberships m ON m.device_id = r.device_id AND m.group_name = $1 "        \
    "WHERE r.kind = $5 AND" RANGE("r.bucket_ms") "GROUP BY r.bucket_ms ORDER BY r.bucket_ms " dir  \
                                                 " LIMIT $4"
/* $1 device, $2 from, $3 to, $4 limit, $5 group, $6 state. */
#define SQL_COMMANDS(dir)                                                                          \
    "SELECT " COLS_COMMAND                                                                         \
    " FROM commands WHERE" RANGE("created_at_ms") "AND ($1::text IS NULL OR device_id = $1) AND "  \
                                                  "($5::text IS NULL OR group_name = $5) "         \
                                                  "AND ($6::int < 0 OR state = $6) "               \
                                                  "ORDER BY created_at_ms " dir ", seq " dir       \
                                                  " LIMIT $4"
/* $1 device, $2 from, $3 to, $4 limit, $5 kind, $6 type, $7 min severity,
 * $8 before id. */
#define SQL_EVENTS(dir)                                                                            \
    "SELECT " COLS_EVENT " FROM events WHERE" RANGE(                                               \
        "time_ms") "AND ($1::text IS NULL OR device_id = $1) AND ($5::int < 0 OR kind = $5) "      \
                   "AND ($6::text IS NULL OR type = $6) AND ($7::int < 0 OR severity >= $7) "      \
                   "AND ($8::bigint = 0 OR id < $8) ORDER BY id " dir " LIMIT $4"
/* clang-format on */

/* Arrays of the batch statements: one element per row. */
#define UNNEST_LATEST                                                                              \
    "unnest($1::text[], $2::bigint[], $3::int[], $4::int[], $5::int[], $6::int[], $7::int[], "     \
    "$8::text[], $9::text[], $10::text[]) AS u (" COLS_STATUS ")"
#define UNNEST_ROLLUP                                                                              \
    "unnest($1::text[], $2::int[], $3::bigint[], $4::bigint[], $5::float8[], $6::float8[], "       \
    "$7::bigint[], $8::float8[], $9::bigint[]) AS u (device_id, kind, bucket_ms, samples, "        \
    "energy_wh, power_sum_w, power_samples, power_max_w, resets)"
#define UNNEST_EVENT                                                                               \
    "unnest($1::bigint[], $2::int[], $3::text[], $4::int[], $5::text[], $6::text[], $7::text[], "  \
    "$8::text[], $9::text[]) WITH ORDINALITY AS u (time_ms, kind, type, severity, device_id, "     \
    "actor, source, message, details_json, ord)"

/* History and telemetry rows go in with COPY, the cheapest way into
 * PostgreSQL (measured: about half the server time per row of an INSERT
 * from arrays), in queue order so that seq follows it. */
#define COPY_HISTORY   "COPY status_history (" COLS_STATUS ") FROM STDIN"
#define COPY_TELEMETRY "COPY telemetry (" COLS_TELEMETRY ", delta_wh, counter_reset) FROM STDIN"

/* X(name, sql) */
#define PG_STMTS(X)                                                                                \
    X(DEVICE_INSERT, "INSERT INTO devices (" COLS_DEVICE ") VALUES "                               \
                     "($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11)")                             \
    X(DEVICE_UPDATE, "UPDATE devices SET name = $2, type = $3, cfg_has = $4, "                     \
                     "reporting_interval = $5, sleep_threshold = $6, security_level = $7, "        \
                     "auto_wake = $8, enabled = $9, updated_at_ms = $10 WHERE id = $1")            \
    X(DEVICE_DELETE, "DELETE FROM devices WHERE id = $1")                                          \
    X(DEVICE_DELETE_ROWS, "WITH a AS (DELETE FROM status_latest WHERE device_id = $1), "           \
                          "b AS (DELETE FROM status_history WHERE device_id = $1), "               \
                          "c AS (DELETE FROM telemetry WHERE device_id = $1) "                     \
                          "DELETE FROM rollups WHERE device_id = $1")                              \
    X(DEVICE_GET, "SELECT " COLS_DEVICE " FROM devices WHERE id = $1")                             \
    X(DEVICE_LIST, "SELECT " COLS_DEVICE " FROM devices d WHERE "                                  \
                   "($1::text IS NULL OR EXISTS (SELECT 1 FROM memberships m "                     \
                   "WHERE m.group_name = $1 AND m.device_id = d.id)) "                             \
                   "AND ($2::int < 0 OR d.type = $2) AND ($3::text IS NULL OR d.id > $3) "         \
                   "ORDER BY d.id LIMIT $4")                                                       \
    X(GROUP_INSERT, "INSERT INTO groups (name, created_at_ms) VALUES ($1, $2)")                    \
    X(GROUP_DELETE, "DELETE FROM groups WHERE name = $1")                                          \
    X(GROUP_EXISTS, "SELECT 1 FROM groups WHERE name = $1")                                        \
    X(GROUP_LIST, "SELECT g.name, g.created_at_ms, (SELECT count(*) FROM memberships m "           \
                  "WHERE m.group_name = g.name) FROM groups g ORDER BY g.name")                    \
    X(MEMBER_ADD, "INSERT INTO memberships (group_name, device_id) VALUES ($1, $2) "               \
                  "ON CONFLICT DO NOTHING")                                                        \
    X(MEMBER_REMOVE, "DELETE FROM memberships WHERE group_name = $1 AND device_id = $2")           \
    X(MEMBER_LIST, "SELECT group_name, device_id FROM memberships ORDER BY group_name, device_id") \
    X(STATUS_LATEST_ONE, "SELECT " COLS_STATUS " FROM status_latest WHERE device_id = $1")         \
    X(STATUS_LATEST_ALL, "SELECT " COLS_STATUS " FROM status_latest ORDER BY device_id")           \
    X(STATUS_HISTORY_ASC, SQL_HISTORY("ASC"))                                                      \
    X(STATUS_HISTORY_DESC, SQL_HISTORY("DESC"))                                                    \
    X(TELEMETRY_ASC, SQL_TELEMETRY("ASC"))                                                         \
    X(TELEMETRY_DESC, SQL_TELEMETRY("DESC"))                                                       \
    X(ROLLUP_DEVICE_ASC, SQL_ROLLUP_DEVICE("ASC"))                                                 \
    X(ROLLUP_DEVICE_DESC, SQL_ROLLUP_DEVICE("DESC"))                                               \
    X(ROLLUP_GROUP_ASC, SQL_ROLLUP_GROUP("ASC"))                                                   \
    X(ROLLUP_GROUP_DESC, SQL_ROLLUP_GROUP("DESC"))                                                 \
    X(COMMAND_INSERT, "INSERT INTO commands (" COLS_COMMAND ") VALUES "                            \
                      "($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13)")                  \
    /* Forward only; final states (3 and above) never change. */                                   \
    X(COMMAND_STATE, "WITH u AS (UPDATE commands SET state = $2, updated_at_ms = $3 "              \
                     "WHERE request_id = $1 AND state < $2 AND state < 3 RETURNING 1) "            \
                     "SELECT EXISTS (SELECT 1 FROM commands WHERE request_id = $1)")               \
    /* A device only answers its own commands: an answer naming another                            \
     * device's request id is an orphan. */                                                        \
    X(COMMAND_RESPONSE,                                                                            \
      "WITH u AS (UPDATE commands SET state = CASE WHEN $2::bool THEN 3 ELSE 4 END, "              \
      "updated_at_ms = $3, has_response = true, response_success = $2, "                           \
      "response_message = $4 WHERE request_id = $1 AND device_id = $5 AND state < 3 "              \
      "RETURNING 1) SELECT EXISTS (SELECT 1 FROM commands WHERE request_id = $1 "                  \
      "AND device_id = $5)")                                                                       \
    /* expires_at_ms 0: never expires. */                                                          \
    X(COMMAND_EXPIRE, "UPDATE commands SET state = 5, updated_at_ms = $1 "                         \
                      "WHERE state < 3 AND expires_at_ms > 0 AND expires_at_ms <= $1")             \
    X(COMMAND_GET, "SELECT " COLS_COMMAND " FROM commands WHERE request_id = $1")                  \
    X(COMMAND_LIST_ASC, SQL_COMMANDS("ASC"))                                                       \
    X(COMMAND_LIST_DESC, SQL_COMMANDS("DESC"))                                                     \
    X(EVENT_INSERT, "INSERT INTO events (time_ms, kind, type, severity, device_id, actor, "        \
                    "source, message, details_json) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)")  \
    X(EVENT_LIST_ASC, SQL_EVENTS("ASC"))                                                           \
    X(EVENT_LIST_DESC, SQL_EVENTS("DESC"))                                                         \
    X(USER_INSERT, "INSERT INTO users (name, role, disabled, created_at_ms) "                      \
                   "VALUES ($1, $2, $3, $4)")                                                      \
    X(USER_GET, "SELECT name, role, disabled, created_at_ms FROM users WHERE name = $1")           \
    X(USER_DELETE, "DELETE FROM users WHERE name = $1")                                            \
    X(USER_LIST, "SELECT name, role, disabled, created_at_ms FROM users ORDER BY name")            \
    X(KEY_INSERT, "INSERT INTO api_keys (" COLS_KEY ") VALUES "                                    \
                  "($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11)")                                \
    X(KEY_GET, "SELECT " COLS_KEY " FROM api_keys WHERE key_id = $1")                              \
    /* The first revocation wins. */                                                               \
    X(KEY_REVOKE, "WITH u AS (UPDATE api_keys SET revoked_at_ms = $2 "                             \
                  "WHERE key_id = $1 AND revoked_at_ms = 0 RETURNING 1) "                          \
                  "SELECT EXISTS (SELECT 1 FROM api_keys WHERE key_id = $1)")                      \
    X(KEY_USED, "UPDATE api_keys SET last_used_ms = $2 WHERE key_id = $1 AND last_used_ms < $2")   \
    X(KEY_LIST, "SELECT " COLS_KEY " FROM api_keys ORDER BY created_at_ms, seq")                   \
    X(BATCH_LOCK, "SELECT id FROM devices WHERE id = ANY ($1::text[]) ORDER BY id FOR KEY SHARE")  \
    /* One row per device: the newest of the batch, never older than the one                       \
     * already stored. */                                                                          \
    X(BATCH_LATEST, "INSERT INTO status_latest (" COLS_STATUS ") SELECT * FROM " UNNEST_LATEST     \
                    " ON CONFLICT (device_id) DO UPDATE SET "                                      \
                    "time_ms = EXCLUDED.time_ms, has = EXCLUDED.has, battery = EXCLUDED.battery, " \
                    "power_mode = EXCLUDED.power_mode, connection = EXCLUDED.connection, "         \
                    "signal = EXCLUDED.signal, firmware = EXCLUDED.firmware, "                     \
                    "errors_json = EXCLUDED.errors_json, extra_json = EXCLUDED.extra_json "        \
                    "WHERE EXCLUDED.time_ms >= status_latest.time_ms")                             \
    /* Grouped, so that two increments of one bucket cannot meet in one                            \
     * ON CONFLICT (which PostgreSQL refuses). */                                                  \
    X(BATCH_ROLLUP,                                                                                \
      "INSERT INTO rollups AS r (device_id, kind, bucket_ms, samples, energy_wh, power_sum_w, "    \
      "power_samples, power_max_w, resets) SELECT device_id, kind, bucket_ms, sum(samples), "      \
      "sum(energy_wh), sum(power_sum_w), sum(power_samples), max(power_max_w), sum(resets) "       \
      "FROM " UNNEST_ROLLUP " GROUP BY device_id, kind, bucket_ms "                                \
      "ON CONFLICT (device_id, kind, bucket_ms) DO UPDATE SET "                                    \
      "samples = r.samples + EXCLUDED.samples, energy_wh = r.energy_wh + EXCLUDED.energy_wh, "     \
      "power_sum_w = r.power_sum_w + EXCLUDED.power_sum_w, "                                       \
      "power_samples = r.power_samples + EXCLUDED.power_samples, "                                 \
      "power_max_w = GREATEST(r.power_max_w, EXCLUDED.power_max_w), "                              \
      "resets = r.resets + EXCLUDED.resets")                                                       \
    X(BATCH_EVENT, "INSERT INTO events (time_ms, kind, type, severity, device_id, actor, source, " \
                   "message, details_json) SELECT time_ms, kind, type, severity, device_id, "      \
                   "actor, source, message, details_json FROM " UNNEST_EVENT " ORDER BY ord")      \
    X(PRUNE_HISTORY, "DELETE FROM status_history WHERE time_ms < $1")                              \
    X(PRUNE_TELEMETRY, "DELETE FROM telemetry WHERE time_ms < $1")                                 \
    X(PRUNE_ROLLUP, "DELETE FROM rollups WHERE kind = $2 AND bucket_ms < $1")                      \
    X(PRUNE_EVENTS, "DELETE FROM events WHERE time_ms < $1")                                       \
    X(PRUNE_COMMANDS, "DELETE FROM commands WHERE state >= 3 AND created_at_ms < $1")

typedef enum stmt_id {
#define PG_STMT_ENUM(name, sql) ST_##name,
    PG_STMTS(PG_STMT_ENUM)
#undef PG_STMT_ENUM
        ST_COUNT
} stmt_id_t;

static const struct {
    const char *name;
    const char *sql;
} stmts[ST_COUNT] = {
#define PG_STMT_ROW(n, s) [ST_##n] = {"em_" #n, s},
    PG_STMTS(PG_STMT_ROW)
#undef PG_STMT_ROW
};

/* A statement to prepare and run: one of stmts (index = its id) or one of
 * another file's (index ST_COUNT + its slot). */
typedef struct stmt_ref {
    size_t index;
    const char *name;
    const char *sql;
} stmt_ref_t;

static stmt_ref_t ref_of(stmt_id_t id)
{
    stmt_ref_t r = {(size_t)id, stmts[id].name, stmts[id].sql};
    return r;
}

/* ---------------------------------------------------------------------- */
/* Connection                                                              */

struct em__store_conn {
    PGconn *pg;
    em_store_options_t opts;
    uint64_t prepared[(ST_COUNT + EM__PG_SLOTS + 63) / 64];
};

/* libpq prints notices (CREATE ... IF NOT EXISTS "skipping") on stderr by
 * default; a library does not print. */
static void quiet_notice(void *arg, const char *message)
{
    (void)arg;
    (void)message;
}

/* The primary part of a database message: one line, no "ERROR:" prefix. */
static const char *pg_msg(const PGconn *pg, const PGresult *res, char *buf, size_t size)
{
    const char *m = res != NULL ? PQresultErrorField(res, PG_DIAG_MESSAGE_PRIMARY) : NULL;
    if (m == NULL || m[0] == '\0')
        m = pg != NULL ? PQerrorMessage(pg) : "";
    snprintf(buf, size, "%s", m != NULL && m[0] != '\0' ? m : "unknown error");
    char *nl = strchr(buf, '\n');
    if (nl != NULL)
        *nl = '\0';
    return buf;
}

static em_err_t io_error(em__store_conn_t *c, const PGresult *res, const char *what,
                         em_error_t *err)
{
    char m[EM_ERROR_MESSAGE_MAX + 1];
    return em_error_set(err, EM_ERR_IO, EM_SEV_HIGH, NULL, "postgresql: %s: %s", what,
                        pg_msg(c != NULL ? c->pg : NULL, res, m, sizeof(m)));
}

/* Runs one or more statements without parameters (simple query protocol). */
static em_err_t exec_simple(em__store_conn_t *c, const char *sql, const char *what, em_error_t *err)
{
    PGresult *res = PQexec(c->pg, sql);
    ExecStatusType s = PQresultStatus(res);
    em_err_t rc = EM_OK;
    if (s != PGRES_COMMAND_OK && s != PGRES_TUPLES_OK)
        rc = io_error(c, res, what, err);
    PQclear(res);
    return rc;
}

/* Session settings, after every (re)connection. */
static em_err_t session_setup(em__store_conn_t *c, em_error_t *err)
{
    PQsetNoticeProcessor(c->pg, quiet_notice, NULL);
    memset(c->prepared, 0, sizeof(c->prepared));
    /* synchronous_commit: "on" waits for the local WAL flush (and for
     * synchronous standbys, if any); "local" only for the local flush. Both
     * keep a committed batch across kill -9 of the daemon and a server crash,
     * which "off" would not, so NORMAL is not allowed to mean "off".
     * force_custom_plan: the list statements use "$n IS NULL OR ..." filters,
     * which only a plan made for the actual values can simplify. */
    char sql[256];
    snprintf(sql, sizeof(sql),
             "SET statement_timeout = %d; SET synchronous_commit = %s; "
             "SET plan_cache_mode = force_custom_plan; SET client_min_messages = warning",
             c->opts.busy_timeout_ms > 0 ? c->opts.busy_timeout_ms : 0,
             c->opts.sync == EM_STORE_SYNC_FULL ? "on" : "local");
    return exec_simple(c, sql, "session set-up", err);
}

/* A broken connection (server restarted, network cut) is reset before the
 * next operation rather than failing every call until the daemon restarts. */
static em_err_t ensure_conn(em__store_conn_t *c, em_error_t *err)
{
    if (PQstatus(c->pg) == CONNECTION_OK)
        return EM_OK;
    PQreset(c->pg);
    if (PQstatus(c->pg) != CONNECTION_OK)
        return io_error(c, NULL, "reconnect", err);
    return session_setup(c, err);
}

/*
 * A statement sent outside a transaction that failed because the connection
 * broke (the server restarted, a proxy cut it) is sent once more on a new
 * connection, so that a restart costs the caller nothing rather than one
 * error per connection. A write whose commit reached the server just before
 * the connection broke is then applied twice: an insert reports
 * EM_ERR_EXISTS, the updates here are idempotent.
 */
static bool reconnected(em__store_conn_t *c, bool was_idle, int attempt)
{
    if (attempt > 0 || !was_idle || PQstatus(c->pg) != CONNECTION_BAD)
        return false;
    em_error_t ignored;
    return ensure_conn(c, &ignored) == EM_OK;
}

static em_err_t prepare(em__store_conn_t *c, const stmt_ref_t *r, em_error_t *err)
{
    uint64_t bit = (uint64_t)1 << (r->index % 64);
    if ((c->prepared[r->index / 64] & bit) != 0)
        return EM_OK;
    PGresult *res = PQprepare(c->pg, r->name, r->sql, 0, NULL);
    em_err_t rc = EM_OK;
    if (PQresultStatus(res) != PGRES_COMMAND_OK)
        rc = io_error(c, res, "prepare", err);
    else
        c->prepared[r->index / 64] |= bit;
    PQclear(res);
    return rc;
}

/* Removes the URL's password (when it has one) from a connection error:
 * libpq does not normally repeat it, but an error about a malformed
 * parameter quotes the parameter. */
static void scrub(char *msg, const char *secret)
{
    size_t n = secret != NULL ? strlen(secret) : 0;
    if (n == 0)
        return;
    for (char *p = strstr(msg, secret); p != NULL; p = strstr(p, secret)) {
        memset(p, '*', n);
        p += n;
    }
}

static em_err_t pg_open(const char *url, const em_store_options_t *opts, em__store_conn_t **out,
                        em_error_t *err)
{
    *out = NULL;
    /* Parsed first, so that a malformed URL is reported without quoting it
     * (libpq's parse errors repeat the offending part, which may be the
     * password). */
    char *perr = NULL;
    PQconninfoOption *info = PQconninfoParse(url, &perr);
    if (info == NULL) {
        PQfreemem(perr);
        return em_error_set(err, EM_ERR_CONFIGURATION, EM_SEV_HIGH, "url",
                            "the postgresql URL cannot be parsed");
    }
    const char *password = NULL;
    for (PQconninfoOption *o = info; o->keyword != NULL; o++) {
        if (strcmp(o->keyword, "password") == 0)
            password = o->val;
    }
    em__store_conn_t *c = calloc(1, sizeof(*c));
    if (c == NULL) {
        PQconninfoFree(info);
        return em_error_set(err, EM_ERR_NOMEM, EM_SEV_HIGH, NULL, "out of memory");
    }
    c->opts = *opts;
    /* Keywords before dbname are defaults the URL may override; those after
     * it win. Without a connect timeout and keepalives, an unreachable
     * server would hold a reconnect (and the store's lock) for minutes. */
    const char *const keys[] = {
        "connect_timeout", "keepalives_idle",           "keepalives_interval", "keepalives_count",
        "dbname",          "fallback_application_name", "client_encoding",     NULL};
    const char *const vals[] = {"10", "30", "10", "3", url, "emiot", "UTF8", NULL};
    c->pg = PQconnectdbParams(keys, vals, 1);
    em_err_t rc = EM_OK;
    if (c->pg == NULL) {
        rc = em_error_set(err, EM_ERR_NOMEM, EM_SEV_HIGH, NULL, "out of memory");
    } else if (PQstatus(c->pg) != CONNECTION_OK) {
        char m[EM_ERROR_MESSAGE_MAX + 1];
        pg_msg(c->pg, NULL, m, sizeof(m));
        scrub(m, password);
        rc = em_error_set(err, EM_ERR_IO, EM_SEV_HIGH, "url", "postgresql: connect: %s", m);
    } else {
        rc = session_setup(c, err);
    }
    /* The parsed options hold the password: wipe before freeing. */
    for (PQconninfoOption *o = info; o->keyword != NULL; o++) {
        if (o->val != NULL)
            OPENSSL_cleanse(o->val, strlen(o->val));
    }
    PQconninfoFree(info);
    if (rc != EM_OK) {
        PQfinish(c->pg);
        free(c);
        return rc;
    }
    *out = c;
    return EM_OK;
}

static void pg_close(em__store_conn_t *c)
{
    if (c == NULL)
        return;
    PQfinish(c->pg);
    free(c);
}

/* ---------------------------------------------------------------------- */
/* Parameters                                                              */

#define NUM_MAX EM__PG_NUM_MAX

/* Text parameters of one statement (pg_internal.h). */
typedef em__pg_params_t params_t;

static void params_free(params_t *p)
{
    for (int i = 0; i < p->n; i++)
        free(p->owned[i]);
}

/* A copy of s (len bytes) with every byte of a malformed sequence made '?'. */
static char *utf8_sanitise(const char *s, size_t len)
{
    char *out = malloc(len + 1);
    if (out == NULL)
        return NULL;
    size_t i = 0;
    while (i < len) {
        unsigned char b = (unsigned char)s[i];
        size_t n = b < 0x80             ? 1
                   : (b & 0xE0) == 0xC0 ? 2
                   : (b & 0xF0) == 0xE0 ? 3
                   : (b & 0xF8) == 0xF0 ? 4
                                        : 0;
        if (n > 0 && i + n <= len && em__utf8_check(s + i, n, false) == EM__UTF8_OK) {
            memcpy(out + i, s + i, n);
            i += n;
        } else {
            out[i++] = '?';
        }
    }
    out[len] = '\0';
    return out;
}

static void p_str(params_t *p, const char *s)
{
    int i = p->n++;
    p->owned[i] = NULL;
    p->v[i] = s;
    if (s == NULL)
        return;
    size_t len = strlen(s);
    if (em__utf8_check(s, len, false) != EM__UTF8_OK) {
        p->owned[i] = utf8_sanitise(s, len);
        p->v[i] = p->owned[i];
        if (p->owned[i] == NULL)
            p->oom = true;
    }
}

static void p_i64(params_t *p, int64_t v)
{
    int i = p->n++;
    p->owned[i] = NULL;
    snprintf(p->num[i], NUM_MAX, "%" PRId64, v);
    p->v[i] = p->num[i];
}

static void p_bool(params_t *p, bool v)
{
    int i = p->n++;
    p->owned[i] = NULL;
    p->v[i] = v ? "t" : "f";
}

/* ---------------------------------------------------------------------- */
/* Running statements                                                      */

/* Maps a failed statement's SQLSTATE: unique violation -> EM_ERR_EXISTS,
 * foreign key violation -> the NOT_FOUND code of the missing parent (by the
 * constraint's name), anything else EM_ERR_IO. */
static em_err_t stmt_error(em__store_conn_t *c, const PGresult *res, const char *what,
                           em_error_t *err)
{
    const char *state = res != NULL ? PQresultErrorField(res, PG_DIAG_SQLSTATE) : NULL;
    if (state != NULL && strcmp(state, "23505") == 0)
        return em_error_set(err, EM_ERR_EXISTS, EM_SEV_LOW, NULL, "%s: already exists", what);
    if (state != NULL && strcmp(state, "23503") == 0) {
        const char *cons = PQresultErrorField(res, PG_DIAG_CONSTRAINT_NAME);
        if (cons != NULL && strstr(cons, "group") != NULL)
            return em_error_set(err, EM_ERR_GROUP_NOT_FOUND, EM_SEV_LOW, "group", "no such group");
        if (cons != NULL && strstr(cons, "device") != NULL)
            return em_error_set(err, EM_ERR_DEVICE_NOT_FOUND, EM_SEV_LOW, "id", "no such device");
        return em_error_set(err, EM_ERR_NOT_FOUND, EM_SEV_LOW, NULL, "%s: no such object", what);
    }
    return io_error(c, res, what, err);
}

/* Runs a statement to completion. On success *out (when not NULL) receives
 * the result (the caller PQclears it). Frees p's copies in every case. */
static em_err_t run_ref(em__store_conn_t *c, const stmt_ref_t *r, params_t *p, PGresult **out,
                        em_error_t *err)
{
    if (out != NULL)
        *out = NULL;
    em_err_t rc = EM_OK;
    if (p->oom) {
        rc = em_error_set(err, EM_ERR_NOMEM, EM_SEV_HIGH, NULL, "out of memory");
        goto done;
    }
    bool idle = PQtransactionStatus(c->pg) == PQTRANS_IDLE;
    for (int attempt = 0;; attempt++) {
        if ((rc = prepare(c, r, err)) != EM_OK) {
            if (reconnected(c, idle, attempt))
                continue;
            goto done;
        }
        PGresult *res = PQexecPrepared(c->pg, r->name, p->n, p->v, NULL, NULL, 0);
        ExecStatusType s = PQresultStatus(res);
        if (s == PGRES_COMMAND_OK || s == PGRES_TUPLES_OK) {
            if (out != NULL)
                *out = res;
            else
                PQclear(res);
            break;
        }
        if (reconnected(c, idle, attempt)) {
            PQclear(res);
            continue;
        }
        rc = stmt_error(c, res, r->name + 3, err);
        PQclear(res);
        break;
    }
done:
    params_free(p);
    return rc;
}

static em_err_t run(em__store_conn_t *c, stmt_id_t id, params_t *p, PGresult **out, em_error_t *err)
{
    stmt_ref_t r = ref_of(id);
    return run_ref(c, &r, p, out, err);
}

/* Rows a statement changed. */
static uint64_t changed(PGresult *res)
{
    const char *t = PQcmdTuples(res);
    return t != NULL && t[0] != '\0' ? strtoull(t, NULL, 10) : 0;
}

/* Runs a statement and returns how many rows it changed in *n. */
static em_err_t run_count(em__store_conn_t *c, stmt_id_t id, params_t *p, uint64_t *n,
                          em_error_t *err)
{
    PGresult *res = NULL;
    em_err_t rc = run(c, id, p, &res, err);
    *n = rc == EM_OK ? changed(res) : 0;
    PQclear(res);
    return rc;
}

/* Runs a statement whose single row and column is a boolean (the EXISTS of
 * the WITH ... UPDATE statements). */
static em_err_t run_bool(em__store_conn_t *c, stmt_id_t id, params_t *p, bool *v, em_error_t *err)
{
    PGresult *res = NULL;
    em_err_t rc = run(c, id, p, &res, err);
    *v = rc == EM_OK && PQntuples(res) == 1 && PQgetvalue(res, 0, 0)[0] == 't';
    PQclear(res);
    return rc;
}

typedef em__pg_row_fn row_fn;

/*
 * Runs a query in single-row mode, so that a listing of every device does
 * not hold the whole answer in memory, and calls fn per row until it returns
 * non-zero. The remaining rows are then read and dropped: a cancel request
 * could arrive after the query ended and cancel the next one instead.
 */
static em_err_t run_rows_ref(em__store_conn_t *c, const stmt_ref_t *r, params_t *p, row_fn fn,
                             void *ctx, size_t *count, em_error_t *err)
{
    size_t delivered = 0;
    em_err_t rc = EM_OK;
    if (count != NULL)
        *count = 0;
    if (p->oom) {
        params_free(p);
        return em_error_set(err, EM_ERR_NOMEM, EM_SEV_HIGH, NULL, "out of memory");
    }
    bool idle = PQtransactionStatus(c->pg) == PQTRANS_IDLE;
    for (int attempt = 0;; attempt++) {
        rc = prepare(c, r, err);
        if (rc == EM_OK && !PQsendQueryPrepared(c->pg, r->name, p->n, p->v, NULL, NULL, 0))
            rc = io_error(c, NULL, r->name + 3, err);
        if (rc != EM_OK) {
            if (reconnected(c, idle, attempt))
                continue;
            break;
        }
        PQsetSingleRowMode(c->pg);
        bool stopped = false;
        PGresult *res;
        while ((res = PQgetResult(c->pg)) != NULL) {
            ExecStatusType s = PQresultStatus(res);
            if (s == PGRES_SINGLE_TUPLE) {
                if (!stopped && rc == EM_OK) {
                    delivered++;
                    stopped = fn(res, 0, ctx) != 0;
                }
            } else if (s != PGRES_TUPLES_OK && s != PGRES_COMMAND_OK && rc == EM_OK) {
                rc = stmt_error(c, res, r->name + 3, err);
            }
            PQclear(res);
        }
        /* Sent again only when the caller has seen nothing of it. */
        if (rc != EM_OK && delivered == 0 && reconnected(c, idle, attempt))
            continue; /* rc is set again at the top */
        break;
    }
    params_free(p);
    if (count != NULL)
        *count = delivered;
    return rc;
}

static em_err_t run_rows(em__store_conn_t *c, stmt_id_t id, params_t *p, row_fn fn, void *ctx,
                         size_t *count, em_error_t *err)
{
    stmt_ref_t r = ref_of(id);
    return run_rows_ref(c, &r, p, fn, ctx, count, err);
}

static em_err_t tx_begin(em__store_conn_t *c, em_error_t *err)
{
    em_err_t rc = exec_simple(c, "BEGIN", "begin", err);
    if (rc != EM_OK && reconnected(c, true, 0))
        rc = exec_simple(c, "BEGIN", "begin", err);
    return rc;
}

static em_err_t tx_commit(em__store_conn_t *c, em_error_t *err)
{
    return exec_simple(c, "COMMIT", "commit", err);
}

static void tx_rollback(em__store_conn_t *c)
{
    PGresult *res = PQexec(c->pg, "ROLLBACK");
    PQclear(res);
}

/* ---------------------------------------------------------------------- */
/* Reading values                                                          */

static int64_t col_i64(const PGresult *res, int row, int col)
{
    if (PQgetisnull(res, row, col))
        return 0;
    return strtoll(PQgetvalue(res, row, col), NULL, 10);
}

static double col_dbl(const PGresult *res, int row, int col)
{
    if (PQgetisnull(res, row, col))
        return 0.0;
    return strtod(PQgetvalue(res, row, col), NULL);
}

static bool col_bool(const PGresult *res, int row, int col)
{
    return !PQgetisnull(res, row, col) && PQgetvalue(res, row, col)[0] == 't';
}

static void col_str(const PGresult *res, int row, int col, char *buf, size_t size)
{
    snprintf(buf, size, "%s", PQgetisnull(res, row, col) ? "" : PQgetvalue(res, row, col));
}

/* The value, valid as long as res; NULL for SQL NULL. */
static char *col_ptr(const PGresult *res, int row, int col)
{
    return PQgetisnull(res, row, col) ? NULL : PQgetvalue(res, row, col);
}

static void read_device(const PGresult *res, int row, em_store_device_t *d)
{
    memset(d, 0, sizeof(*d));
    col_str(res, row, 0, d->id, sizeof(d->id));
    col_str(res, row, 1, d->name, sizeof(d->name));
    d->type = (em_device_type_t)col_i64(res, row, 2);
    d->config.has = (uint8_t)col_i64(res, row, 3);
    d->config.reporting_interval = (uint32_t)col_i64(res, row, 4);
    d->config.sleep_threshold = (uint8_t)col_i64(res, row, 5);
    d->config.security_level = (uint8_t)col_i64(res, row, 6);
    d->config.auto_wake = col_bool(res, row, 7);
    d->enabled = col_bool(res, row, 8);
    d->created_at_ms = col_i64(res, row, 9);
    d->updated_at_ms = col_i64(res, row, 10);
}

/* History and latest rows: the row's time is the status's last_seen. */
static void read_status(const PGresult *res, int row, em_status_t *s)
{
    memset(s, 0, sizeof(*s));
    s->last_seen_ms = col_i64(res, row, 1);
    s->has = (uint16_t)(col_i64(res, row, 2) | EM_STATUS_HAS_LAST_SEEN);
    s->battery_level = (uint8_t)col_i64(res, row, 3);
    s->power_mode = (uint8_t)col_i64(res, row, 4);
    s->connection = (uint8_t)col_i64(res, row, 5);
    s->signal_strength = (int16_t)col_i64(res, row, 6);
    col_str(res, row, 7, s->firmware_version, sizeof(s->firmware_version));
    s->errors_json = col_ptr(res, row, 8);
    s->extra_json = col_ptr(res, row, 9);
}

static void read_telemetry(const PGresult *res, int row, em_telemetry_t *t)
{
    memset(t, 0, sizeof(*t));
    t->timestamp_ms = col_i64(res, row, 1);
    t->has = (uint16_t)col_i64(res, row, 2);
    t->battery = (uint8_t)col_i64(res, row, 3);
    t->power_w = col_dbl(res, row, 4);
    t->energy_wh = col_dbl(res, row, 5);
    t->voltage_v = col_dbl(res, row, 6);
    t->current_a = col_dbl(res, row, 7);
    t->temperature = col_dbl(res, row, 8);
    t->humidity = col_dbl(res, row, 9);
}

static void read_command(const PGresult *res, int row, em_store_command_t *cmd)
{
    memset(cmd, 0, sizeof(*cmd));
    col_str(res, row, 0, cmd->request_id, sizeof(cmd->request_id));
    col_str(res, row, 1, cmd->device_id, sizeof(cmd->device_id));
    col_str(res, row, 2, cmd->group, sizeof(cmd->group));
    cmd->type = (em_command_type_t)col_i64(res, row, 3);
    cmd->payload_json = col_ptr(res, row, 4);
    cmd->state = (em_command_state_t)col_i64(res, row, 5);
    col_str(res, row, 6, cmd->actor, sizeof(cmd->actor));
    cmd->created_at_ms = col_i64(res, row, 7);
    cmd->updated_at_ms = col_i64(res, row, 8);
    cmd->expires_at_ms = col_i64(res, row, 9);
    cmd->has_response = col_bool(res, row, 10);
    cmd->response_success = col_bool(res, row, 11);
    col_str(res, row, 12, cmd->response_message, sizeof(cmd->response_message));
}

static void read_event(const PGresult *res, int row, em_store_event_t *ev)
{
    memset(ev, 0, sizeof(*ev));
    ev->id = col_i64(res, row, 0);
    ev->time_ms = col_i64(res, row, 1);
    ev->kind = (em_event_kind_t)col_i64(res, row, 2);
    col_str(res, row, 3, ev->type, sizeof(ev->type));
    ev->severity = (em_severity_t)col_i64(res, row, 4);
    col_str(res, row, 5, ev->device_id, sizeof(ev->device_id));
    col_str(res, row, 6, ev->actor, sizeof(ev->actor));
    col_str(res, row, 7, ev->source, sizeof(ev->source));
    col_str(res, row, 8, ev->message, sizeof(ev->message));
    ev->details_json = col_ptr(res, row, 9);
}

static void read_user(const PGresult *res, int row, em_store_user_t *u)
{
    memset(u, 0, sizeof(*u));
    col_str(res, row, 0, u->name, sizeof(u->name));
    u->role = (em_role_t)col_i64(res, row, 1);
    u->disabled = col_bool(res, row, 2);
    u->created_at_ms = col_i64(res, row, 3);
}

static int hexval(char ch)
{
    if (ch >= '0' && ch <= '9')
        return ch - '0';
    if (ch >= 'a' && ch <= 'f')
        return ch - 'a' + 10;
    if (ch >= 'A' && ch <= 'F')
        return ch - 'A' + 10;
    return -1;
}

static void read_key(const PGresult *res, int row, em_store_api_key_t *k)
{
    memset(k, 0, sizeof(*k));
    col_str(res, row, 0, k->key_id, sizeof(k->key_id));
    col_str(res, row, 1, k->name, sizeof(k->name));
    k->role = (em_role_t)col_i64(res, row, 2);
    col_str(res, row, 3, k->device_id, sizeof(k->device_id));
    col_str(res, row, 4, k->owner, sizeof(k->owner));
    /* A hash of any other length (impossible through this backend) stays
     * zero, which matches no key. */
    em__pg_col_hash(res, row, 5, k->hash);
    k->rate_per_min = (uint32_t)col_i64(res, row, 6);
    k->created_at_ms = col_i64(res, row, 7);
    k->expires_at_ms = col_i64(res, row, 8);
    k->last_used_ms = col_i64(res, row, 9);
    k->revoked_at_ms = col_i64(res, row, 10);
}

/* ---------------------------------------------------------------------- */
/* Shared with pg_identity.c (pg_internal.h)                               */

void em__pg_col_hash(const PGresult *res, int row, int col, unsigned char out[32])
{
    memset(out, 0, 32);
    /* bytea in the hex output format: "\x" + 2 digits per byte. */
    const char *h = PQgetisnull(res, row, col) ? "" : PQgetvalue(res, row, col);
    if (strlen(h) != 2 + 2 * 32 || h[0] != '\\' || h[1] != 'x')
        return;
    for (size_t i = 0; i < 32; i++) {
        int hi = hexval(h[2 + 2 * i]), lo = hexval(h[3 + 2 * i]);
        if (hi < 0 || lo < 0) {
            memset(out, 0, 32);
            return;
        }
        out[i] = (unsigned char)(hi << 4 | lo);
    }
}

void em__pg_hash_param(const unsigned char hash[32], char out[67])
{
    static const char hex[] = "0123456789abcdef";
    out[0] = '\\';
    out[1] = 'x';
    for (size_t i = 0; i < 32; i++) {
        out[2 + 2 * i] = hex[hash[i] >> 4];
        out[3 + 2 * i] = hex[hash[i] & 15];
    }
    out[66] = '\0';
}

void em__pg_p_str(em__pg_params_t *p, const char *s)
{
    p_str(p, s);
}

void em__pg_p_i64(em__pg_params_t *p, int64_t v)
{
    p_i64(p, v);
}

em_err_t em__pg_ensure_conn(em__store_conn_t *c, em_error_t *err)
{
    return ensure_conn(c, err);
}

static em_err_t slot_ref(const em__pg_stmt_t *s, stmt_ref_t *r, em_error_t *err)
{
    if (s->slot >= EM__PG_SLOTS)
        return em_error_set(err, EM_ERR_INTERNAL, EM_SEV_HIGH, NULL,
                            "postgresql: statement slot %u", s->slot);
    r->index = (size_t)ST_COUNT + s->slot;
    r->name = s->name;
    r->sql = s->sql;
    return EM_OK;
}

em_err_t em__pg_run(em__store_conn_t *c, const em__pg_stmt_t *s, em__pg_params_t *p, PGresult **out,
                    em_error_t *err)
{
    stmt_ref_t r;
    em_err_t rc = slot_ref(s, &r, err);
    if (rc != EM_OK) {
        if (out != NULL)
            *out = NULL;
        params_free(p);
        return rc;
    }
    return run_ref(c, &r, p, out, err);
}

em_err_t em__pg_rows(em__store_conn_t *c, const em__pg_stmt_t *s, em__pg_params_t *p,
                     em__pg_row_fn fn, void *ctx, size_t *count, em_error_t *err)
{
    stmt_ref_t r;
    em_err_t rc = slot_ref(s, &r, err);
    if (rc != EM_OK) {
        if (count != NULL)
            *count = 0;
        params_free(p);
        return rc;
    }
    return run_rows_ref(c, &r, p, fn, ctx, count, err);
}

uint64_t em__pg_changed(PGresult *res)
{
    return changed(res);
}

int64_t em__pg_col_i64(const PGresult *res, int row, int col)
{
    return col_i64(res, row, col);
}

void em__pg_col_str(const PGresult *res, int row, int col, char *buf, size_t size)
{
    col_str(res, row, col, buf, size);
}

/* ---------------------------------------------------------------------- */
/* Migrations                                                              */

static em_err_t db_version(em__store_conn_t *c, int *version, em_error_t *err)
{
    PGresult *res = PQexec(c->pg, "SELECT coalesce(max(version), 0) FROM schema_migrations");
    em_err_t rc = EM_OK;
    if (PQresultStatus(res) != PGRES_TUPLES_OK || PQntuples(res) != 1)
        rc = io_error(c, res, "schema version", err);
    else
        *version = (int)col_i64(res, 0, 0);
    PQclear(res);
    return rc;
}

static em_err_t apply_migration(em__store_conn_t *c, int v, em_error_t *err)
{
    em_err_t rc = tx_begin(c, err);
    if (rc != EM_OK)
        return rc;
    if ((rc = exec_simple(c, migrations[v - 1], "migrate", err)) != EM_OK)
        goto fail;
    params_t p = {0};
    p_i64(&p, v);
    p_i64(&p, em_now_ms());
    PGresult *res = PQexecParams(c->pg,
                                 "INSERT INTO schema_migrations (version, applied_at_ms) "
                                 "VALUES ($1::int, $2::bigint)",
                                 p.n, NULL, p.v, NULL, NULL, 0);
    params_free(&p);
    if (PQresultStatus(res) != PGRES_COMMAND_OK) {
        rc = io_error(c, res, "migrate", err);
        PQclear(res);
        goto fail;
    }
    PQclear(res);
    if ((rc = tx_commit(c, err)) != EM_OK)
        goto fail;
    return EM_OK;
fail:
    tx_rollback(c);
    return rc;
}

/* Two daemons starting together: the advisory lock makes the second wait
 * while the first migrates, then find nothing left to do. No statement
 * timeout while waiting for it: a long migration is not an error. */
static em_err_t pg_migrate(em__store_conn_t *c, int *version, em_error_t *err)
{
    em_err_t rc = ensure_conn(c, err);
    if (rc != EM_OK)
        return rc;
    if ((rc = exec_simple(c, "SET statement_timeout = 0", "migrate", err)) != EM_OK)
        return rc;
    if ((rc = exec_simple(c, "SELECT pg_advisory_lock(" PG_MIGRATE_LOCK ")", "migration lock",
                          err)) != EM_OK)
        return rc;
    rc = exec_simple(c,
                     "CREATE TABLE IF NOT EXISTS schema_migrations ("
                     " version INTEGER PRIMARY KEY, applied_at_ms BIGINT NOT NULL)",
                     "migrate", err);
    int v = 0;
    if (rc == EM_OK)
        rc = db_version(c, &v, err);
    if (rc == EM_OK && v > EM__STORE_SCHEMA_VERSION)
        rc = em_error_set(err, EM_ERR_CONFIGURATION, EM_SEV_HIGH, NULL,
                          "the database schema (version %d) is newer than this build knows (%d)", v,
                          EM__STORE_SCHEMA_VERSION);
    while (rc == EM_OK && v < EM__STORE_SCHEMA_VERSION) {
        rc = apply_migration(c, v + 1, err);
        if (rc == EM_OK)
            v++;
    }
    em_error_t ignored;
    exec_simple(c, "SELECT pg_advisory_unlock(" PG_MIGRATE_LOCK ")", "migration unlock", &ignored);
    char sql[64];
    snprintf(sql, sizeof(sql), "SET statement_timeout = %d",
             c->opts.busy_timeout_ms > 0 ? c->opts.busy_timeout_ms : 0);
    em_err_t rc2 = exec_simple(c, sql, "migrate", rc == EM_OK ? err : &ignored);
    if (rc == EM_OK)
        rc = rc2;
    if (rc == EM_OK)
        *version = v;
    return rc;
}

/* ---------------------------------------------------------------------- */
/* Batches                                                                 */

/* A growing buffer for array literals; past PG_ARRAY_MAX it refuses. */
typedef struct sbuf {
    char *p;
    size_t len, cap;
    bool failed;
} sbuf_t;

static bool sb_reserve(sbuf_t *b, size_t more)
{
    if (b->failed)
        return false;
    if (more > PG_ARRAY_MAX - b->len) {
        b->failed = true;
        return false;
    }
    if (b->len + more + 1 <= b->cap)
        return true;
    size_t cap = b->cap != 0 ? b->cap : 1024;
    while (cap < b->len + more + 1)
        cap *= 2;
    char *np = realloc(b->p, cap);
    if (np == NULL) {
        b->failed = true;
        return false;
    }
    b->p = np;
    b->cap = cap;
    return true;
}

static void sb_put(sbuf_t *b, const char *s, size_t n)
{
    if (!sb_reserve(b, n))
        return;
    memcpy(b->p + b->len, s, n);
    b->len += n;
    b->p[b->len] = '\0';
}

static void sb_c(sbuf_t *b, char ch)
{
    sb_put(b, &ch, 1);
}

/* An array element separator: '{' before the first, ',' after. */
static void a_sep(sbuf_t *b)
{
    sb_c(b, b->len == 0 ? '{' : ',');
}

static void a_i64(sbuf_t *b, int64_t v)
{
    char num[NUM_MAX];
    int n = snprintf(num, sizeof(num), "%" PRId64, v);
    a_sep(b);
    sb_put(b, num, (size_t)n);
}

/* Doubles with 17 significant digits read back to the same value. */
static void a_dbl(sbuf_t *b, double v)
{
    char num[NUM_MAX];
    int n;
    if (isnan(v))
        n = snprintf(num, sizeof(num), "NaN");
    else if (isinf(v))
        n = snprintf(num, sizeof(num), "%sInfinity", v < 0 ? "-" : "");
    else
        n = snprintf(num, sizeof(num), "%.17g", v);
    a_sep(b);
    sb_put(b, num, (size_t)n);
}

static void a_null(sbuf_t *b)
{
    a_sep(b);
    sb_put(b, "NULL", 4);
}

/* A quoted element: backslash before '"' and '\'; malformed UTF-8 made '?'. */
static void a_str(sbuf_t *b, const char *s)
{
    if (s == NULL) {
        a_null(b);
        return;
    }
    size_t len = strlen(s);
    char *clean = NULL;
    if (em__utf8_check(s, len, false) != EM__UTF8_OK) {
        clean = utf8_sanitise(s, len);
        if (clean == NULL) {
            b->failed = true;
            return;
        }
        s = clean;
    }
    a_sep(b);
    if (len <= SIZE_MAX / 2 - 2 && sb_reserve(b, 2 * len + 2)) {
        char *o = b->p + b->len;
        *o++ = '"';
        for (size_t i = 0; i < len; i++) {
            if (s[i] == '"' || s[i] == '\\')
                *o++ = '\\';
            *o++ = s[i];
        }
        *o++ = '"';
        b->len = (size_t)(o - b->p);
        b->p[b->len] = '\0';
    } else {
        b->failed = true;
    }
    free(clean);
}

/* Closes an array; an empty one is "{}". */
static const char *a_end(sbuf_t *b)
{
    if (b->len == 0)
        sb_c(b, '{');
    sb_c(b, '}');
    return b->p;
}

#define COLS_MAX 12

typedef struct arrays {
    int n;
    sbuf_t col[COLS_MAX];
} arrays_t;

static void arrays_free(arrays_t *a)
{
    for (int i = 0; i < COLS_MAX; i++)
        free(a->col[i].p);
    memset(a, 0, sizeof(*a));
}

/* Runs a batch statement whose parameters are the n columns of a; *out
 * (when not NULL) receives the result. */
static em_err_t run_arrays(em__store_conn_t *c, stmt_id_t id, arrays_t *a, PGresult **out,
                           em_error_t *err)
{
    params_t p = {0};
    for (int i = 0; i < a->n; i++) {
        p.owned[p.n] = NULL;
        p.v[p.n++] = a_end(&a->col[i]);
        if (a->col[i].failed)
            return em_error_set(err, EM_ERR_NOMEM, EM_SEV_HIGH, NULL,
                                "postgresql: batch too large or out of memory");
    }
    return run(c, id, &p, out, err);
}

/* The devices of a batch that exist, locked FOR KEY SHARE until it
 * commits: an open-addressing set of the ids in the lock's result. Checking
 * here, once per device, spares the server an index probe per row. */
typedef struct devset {
    PGresult *res;
    const char **slot;
    size_t mask;
} devset_t;

static uint64_t hash_id(const char *s)
{
    uint64_t h = UINT64_C(1469598103934665603);
    for (const unsigned char *p = (const unsigned char *)s; *p != '\0'; p++)
        h = (h ^ *p) * UINT64_C(1099511628211);
    return h;
}

static bool devset_has(const devset_t *set, const char *id)
{
    if (set->slot == NULL)
        return false;
    for (size_t i = (size_t)hash_id(id) & set->mask; set->slot[i] != NULL;
         i = (i + 1) & set->mask) {
        if (strcmp(set->slot[i], id) == 0)
            return true;
    }
    return false;
}

static void devset_free(devset_t *set)
{
    free(set->slot);
    PQclear(set->res);
    memset(set, 0, sizeof(*set));
}

static em_err_t batch_lock(em__store_conn_t *c, const em__store_rec_t *recs, size_t n,
                           devset_t *set, em_error_t *err)
{
    memset(set, 0, sizeof(*set));
    arrays_t a = {.n = 1};
    bool any = false;
    for (size_t i = 0; i < n; i++) {
        if (recs[i].kind == EM__REC_STATUS || recs[i].kind == EM__REC_TELEMETRY) {
            a_str(&a.col[0], recs[i].device_id);
            any = true;
        }
    }
    em_err_t rc = any ? run_arrays(c, ST_BATCH_LOCK, &a, &set->res, err) : EM_OK;
    arrays_free(&a);
    if (rc != EM_OK || set->res == NULL)
        return rc;
    /* At most half full; the ids are at most n. */
    size_t rows = (size_t)PQntuples(set->res), size = 16;
    while (size < 2 * rows)
        size *= 2;
    set->slot = calloc(size, sizeof(*set->slot));
    if (set->slot == NULL) {
        devset_free(set);
        return em_error_set(err, EM_ERR_NOMEM, EM_SEV_HIGH, NULL, "out of memory");
    }
    set->mask = size - 1;
    for (size_t r = 0; r < rows; r++) {
        const char *id = PQgetvalue(set->res, (int)r, 0);
        size_t i = (size_t)hash_id(id) & set->mask;
        while (set->slot[i] != NULL)
            i = (i + 1) & set->mask;
        set->slot[i] = id;
    }
    return EM_OK;
}

/* COPY text format: tab between columns, newline after a row, \\N for
 * NULL; backslash, tab, newline and carriage return escaped. */
static void cp_sep(sbuf_t *b, bool first)
{
    if (!first)
        sb_c(b, '\t');
}

static void cp_i64(sbuf_t *b, bool first, int64_t v)
{
    char num[NUM_MAX];
    int n = snprintf(num, sizeof(num), "%" PRId64, v);
    cp_sep(b, first);
    sb_put(b, num, (size_t)n);
}

static void cp_dbl(sbuf_t *b, double v)
{
    char num[NUM_MAX];
    int n;
    if (isnan(v))
        n = snprintf(num, sizeof(num), "NaN");
    else if (isinf(v))
        n = snprintf(num, sizeof(num), "%sInfinity", v < 0 ? "-" : "");
    else
        n = snprintf(num, sizeof(num), "%.17g", v);
    cp_sep(b, false);
    sb_put(b, num, (size_t)n);
}

static void cp_str(sbuf_t *b, bool first, const char *s)
{
    cp_sep(b, first);
    if (s == NULL) {
        sb_put(b, "\\N", 2);
        return;
    }
    size_t len = strlen(s);
    char *clean = NULL;
    if (em__utf8_check(s, len, false) != EM__UTF8_OK) {
        clean = utf8_sanitise(s, len);
        if (clean == NULL) {
            b->failed = true;
            return;
        }
        s = clean;
    }
    if (len <= SIZE_MAX / 2 && sb_reserve(b, 2 * len)) {
        char *o = b->p + b->len;
        for (size_t i = 0; i < len; i++) {
            char ch = s[i];
            if (ch == '\\' || ch == '\t' || ch == '\n' || ch == '\r') {
                *o++ = '\\';
                ch = (char)(ch == '\t' ? 't' : ch == '\n' ? 'n' : ch == '\r' ? 'r' : '\\');
            }
            *o++ = ch;
        }
        b->len = (size_t)(o - b->p);
        b->p[b->len] = '\0';
    } else {
        b->failed = true;
    }
    free(clean);
}

static void cp_row_end(sbuf_t *b)
{
    sb_c(b, '\n');
}

/* Sends data with COPY ... FROM STDIN (inside the batch's transaction). */
static em_err_t copy_in(em__store_conn_t *c, const char *sql, sbuf_t *data, em_error_t *err)
{
    if (data->failed)
        return em_error_set(err, EM_ERR_NOMEM, EM_SEV_HIGH, NULL,
                            "postgresql: batch too large or out of memory");
    PGresult *res = PQexec(c->pg, sql);
    if (PQresultStatus(res) != PGRES_COPY_IN) {
        em_err_t rc = io_error(c, res, "copy", err);
        PQclear(res);
        return rc;
    }
    PQclear(res);
    em_err_t rc = EM_OK;
    /* In chunks: an int carries the length. */
    for (size_t off = 0; off < data->len && rc == EM_OK;) {
        size_t chunk = data->len - off > ((size_t)1 << 20) ? (size_t)1 << 20 : data->len - off;
        if (PQputCopyData(c->pg, data->p + off, (int)chunk) != 1)
            rc = io_error(c, NULL, "copy", err);
        off += chunk;
    }
    if (PQputCopyEnd(c->pg, rc == EM_OK ? NULL : "emiot: copy aborted") != 1 && rc == EM_OK)
        rc = io_error(c, NULL, "copy", err);
    while ((res = PQgetResult(c->pg)) != NULL) {
        if (PQresultStatus(res) != PGRES_COMMAND_OK && rc == EM_OK)
            rc = io_error(c, res, "copy", err);
        PQclear(res);
    }
    return rc;
}

/* The newest status of each device in a batch (the last queued among equal
 * times): an open-addressing map from device id to record index. */
typedef struct latest {
    const char **id;
    size_t *idx;
    size_t mask, count;
} latest_t;

static void latest_free(latest_t *l)
{
    free(l->id);
    free(l->idx);
    memset(l, 0, sizeof(*l));
}

static em_err_t latest_build(latest_t *l, const em__store_rec_t *recs, size_t n,
                             const devset_t *set, em_error_t *err)
{
    memset(l, 0, sizeof(*l));
    size_t size = 16;
    while (size < 2 * n)
        size *= 2;
    l->id = calloc(size, sizeof(*l->id));
    l->idx = calloc(size, sizeof(*l->idx));
    if (l->id == NULL || l->idx == NULL) {
        latest_free(l);
        em_error_set(err, EM_ERR_NOMEM, EM_SEV_HIGH, NULL, "out of memory");
        return EM_ERR_NOMEM; /* by name: the analyzer loses em_error_set's code */
    }
    l->mask = size - 1;
    for (size_t r = 0; r < n; r++) {
        if (recs[r].kind != EM__REC_STATUS || !devset_has(set, recs[r].device_id))
            continue;
        size_t i = (size_t)hash_id(recs[r].device_id) & l->mask;
        while (l->id[i] != NULL && strcmp(l->id[i], recs[r].device_id) != 0)
            i = (i + 1) & l->mask;
        if (l->id[i] == NULL) {
            l->id[i] = recs[r].device_id;
            l->idx[i] = r;
            l->count++;
        } else if (recs[r].time_ms >= recs[l->idx[i]].time_ms) {
            l->idx[i] = r;
        }
    }
    return EM_OK;
}

static em_err_t batch_status(em__store_conn_t *c, const em__store_rec_t *recs, size_t n,
                             const devset_t *set, em_error_t *err)
{
    sbuf_t data = {0};
    size_t rows = 0;
    for (size_t i = 0; i < n; i++) {
        if (recs[i].kind != EM__REC_STATUS || !devset_has(set, recs[i].device_id))
            continue;
        const em_status_t *s = &recs[i].u.status;
        cp_str(&data, true, recs[i].device_id);
        cp_i64(&data, false, recs[i].time_ms);
        cp_i64(&data, false, s->has);
        cp_i64(&data, false, s->battery_level);
        cp_i64(&data, false, s->power_mode);
        cp_i64(&data, false, s->connection);
        cp_i64(&data, false, s->signal_strength);
        cp_str(&data, false, s->firmware_version);
        cp_str(&data, false, s->errors_json);
        cp_str(&data, false, s->extra_json);
        cp_row_end(&data);
        rows++;
    }
    if (rows == 0)
        return EM_OK;
    em_err_t rc = copy_in(c, COPY_HISTORY, &data, err);
    free(data.p);
    if (rc != EM_OK)
        return rc;

    latest_t l;
    if ((rc = latest_build(&l, recs, n, set, err)) != EM_OK)
        return rc;
    arrays_t a = {.n = 10};
    for (size_t k = 0; k <= l.mask; k++) {
        if (l.id[k] == NULL)
            continue;
        const em__store_rec_t *r = &recs[l.idx[k]];
        const em_status_t *s = &r->u.status;
        a_str(&a.col[0], r->device_id);
        a_i64(&a.col[1], r->time_ms);
        a_i64(&a.col[2], s->has);
        a_i64(&a.col[3], s->battery_level);
        a_i64(&a.col[4], s->power_mode);
        a_i64(&a.col[5], s->connection);
        a_i64(&a.col[6], s->signal_strength);
        a_str(&a.col[7], s->firmware_version);
        a_str(&a.col[8], s->errors_json);
        a_str(&a.col[9], s->extra_json);
    }
    rc = run_arrays(c, ST_BATCH_LATEST, &a, NULL, err);
    arrays_free(&a);
    latest_free(&l);
    return rc;
}

static em_err_t batch_rollups(em__store_conn_t *c, const em__store_rec_t *recs, size_t n,
                              const devset_t *set, em_error_t *err)
{
    em__rollup_delta_t *d = NULL;
    size_t nd = 0;
    if (em__store_rollups(recs, n, &d, &nd) != EM_OK)
        return em_error_set(err, EM_ERR_NOMEM, EM_SEV_HIGH, NULL, "out of memory");
    arrays_t a = {.n = 9};
    size_t rows = 0;
    for (size_t i = 0; i < nd; i++) {
        if (!devset_has(set, d[i].device_id))
            continue;
        rows++;
        a_str(&a.col[0], d[i].device_id);
        a_i64(&a.col[1], d[i].kind);
        a_i64(&a.col[2], d[i].bucket_ms);
        a_i64(&a.col[3], (int64_t)d[i].samples);
        a_dbl(&a.col[4], d[i].energy_wh);
        a_dbl(&a.col[5], d[i].power_sum_w);
        a_i64(&a.col[6], (int64_t)d[i].power_samples);
        if (d[i].power_samples > 0)
            a_dbl(&a.col[7], d[i].power_max_w);
        else
            a_null(&a.col[7]);
        a_i64(&a.col[8], d[i].resets);
    }
    em_err_t rc = rows > 0 ? run_arrays(c, ST_BATCH_ROLLUP, &a, NULL, err) : EM_OK;
    arrays_free(&a);
    free(d);
    return rc;
}

static em_err_t batch_telemetry(em__store_conn_t *c, const em__store_rec_t *recs, size_t n,
                                const devset_t *set, em_error_t *err)
{
    sbuf_t data = {0};
    size_t rows = 0;
    for (size_t i = 0; i < n; i++) {
        if (recs[i].kind != EM__REC_TELEMETRY || !devset_has(set, recs[i].device_id))
            continue;
        const em_telemetry_t *t = &recs[i].u.tel.t;
        cp_str(&data, true, recs[i].device_id);
        cp_i64(&data, false, t->timestamp_ms);
        cp_i64(&data, false, t->has);
        cp_i64(&data, false, t->battery);
        cp_dbl(&data, t->power_w);
        cp_dbl(&data, t->energy_wh);
        cp_dbl(&data, t->voltage_v);
        cp_dbl(&data, t->current_a);
        cp_dbl(&data, t->temperature);
        cp_dbl(&data, t->humidity);
        cp_dbl(&data, recs[i].u.tel.delta_wh);
        cp_sep(&data, false);
        sb_c(&data, recs[i].u.tel.reset ? 't' : 'f');
        cp_row_end(&data);
        rows++;
    }
    if (rows == 0)
        return EM_OK;
    em_err_t rc = copy_in(c, COPY_TELEMETRY, &data, err);
    free(data.p);
    if (rc == EM_OK)
        rc = batch_rollups(c, recs, n, set, err);
    return rc;
}

static em_err_t batch_events(em__store_conn_t *c, const em__store_rec_t *recs, size_t n,
                             em_error_t *err)
{
    arrays_t a = {.n = 9};
    size_t rows = 0;
    for (size_t i = 0; i < n; i++) {
        if (recs[i].kind != EM__REC_EVENT)
            continue;
        const em_store_event_t *ev = &recs[i].u.event.ev;
        a_i64(&a.col[0], ev->time_ms > 0 ? ev->time_ms : recs[i].time_ms);
        a_i64(&a.col[1], ev->kind);
        a_str(&a.col[2], ev->type);
        a_i64(&a.col[3], ev->severity);
        a_str(&a.col[4], ev->device_id);
        a_str(&a.col[5], ev->actor);
        a_str(&a.col[6], ev->source);
        a_str(&a.col[7], ev->message);
        a_str(&a.col[8], ev->details_json);
        rows++;
    }
    em_err_t rc = rows > 0 ? run_arrays(c, ST_BATCH_EVENT, &a, NULL, err) : EM_OK;
    arrays_free(&a);
    return rc;
}

/* Responses, command states and key times, one statement each, in queue
 * order: a device's answer queued after "sent" must land after it, and an
 * "acknowledged" queued after the answer must not undo it (it cannot: final
 * states stay). */
static em_err_t batch_ordered(em__store_conn_t *c, const em__store_rec_t *recs, size_t n,
                              uint64_t *orphans, em_error_t *err)
{
    for (size_t i = 0; i < n; i++) {
        const em__store_rec_t *r = &recs[i];
        params_t p = {0};
        bool exists = true;
        uint64_t changed_rows;
        em_err_t rc = EM_OK;
        switch (r->kind) {
        case EM__REC_RESPONSE:
            p_str(&p, r->u.resp.request_id);
            p_bool(&p, r->u.resp.success);
            p_i64(&p, r->time_ms);
            p_str(&p, r->u.resp.message);
            p_str(&p, r->device_id);
            rc = run_bool(c, ST_COMMAND_RESPONSE, &p, &exists, err);
            if (rc == EM_OK && !exists)
                (*orphans)++;
            break;
        case EM__REC_COMMAND_STATE:
            p_str(&p, r->u.cmd.request_id);
            p_i64(&p, r->u.cmd.state);
            p_i64(&p, r->time_ms);
            rc = run_bool(c, ST_COMMAND_STATE, &p, &exists, err);
            break;
        case EM__REC_KEY_USED:
            p_str(&p, r->device_id);
            p_i64(&p, r->time_ms);
            rc = run_count(c, ST_KEY_USED, &p, &changed_rows, err);
            break;
        default:
            break;
        }
        if (rc != EM_OK)
            return rc;
    }
    return EM_OK;
}

static em_err_t pg_write_batch(em__store_conn_t *c, const em__store_rec_t *recs, size_t n,
                               uint64_t *orphans, em_error_t *err)
{
    em_err_t rc = ensure_conn(c, err);
    if (rc != EM_OK)
        return rc;
    if ((rc = tx_begin(c, err)) != EM_OK)
        return rc;
    uint64_t found = 0;
    devset_t set;
    rc = batch_lock(c, recs, n, &set, err);
    if (rc == EM_OK && set.slot != NULL)
        rc = batch_status(c, recs, n, &set, err);
    if (rc == EM_OK && set.slot != NULL)
        rc = batch_telemetry(c, recs, n, &set, err);
    devset_free(&set);
    if (rc == EM_OK)
        rc = batch_events(c, recs, n, err);
    if (rc == EM_OK)
        rc = batch_ordered(c, recs, n, &found, err);
    if (rc == EM_OK)
        rc = tx_commit(c, err);
    if (rc != EM_OK) {
        tx_rollback(c);
        return rc;
    }
    /* Counted only once the batch is committed: a retried batch must not
     * count its orphans twice. */
    if (orphans != NULL)
        *orphans += found;
    return EM_OK;
}

/* ---------------------------------------------------------------------- */
/* Devices, groups                                                         */

/* The columns both insert and update write; insert adds the times. */
static void device_params(params_t *p, const em_store_device_t *d)
{
    p_str(p, d->id);
    p_str(p, d->name);
    p_i64(p, d->type);
    p_i64(p, d->config.has);
    p_i64(p, d->config.reporting_interval);
    p_i64(p, d->config.sleep_threshold);
    p_i64(p, d->config.security_level);
    p_bool(p, d->config.auto_wake);
    p_bool(p, d->enabled);
}

static em_err_t pg_device_insert(em__store_conn_t *c, const em_store_device_t *d, em_error_t *err)
{
    em_err_t rc = ensure_conn(c, err);
    if (rc != EM_OK)
        return rc;
    params_t p = {0};
    device_params(&p, d);
    p_i64(&p, d->created_at_ms);
    p_i64(&p, d->updated_at_ms);
    rc = run(c, ST_DEVICE_INSERT, &p, NULL, err);
    if (rc == EM_ERR_EXISTS) {
        em_error_set(err, EM_ERR_EXISTS, EM_SEV_LOW, "id", "a device with this id exists");
        em_error_set_device(err, d->id);
    }
    return rc;
}

static em_err_t device_not_found(const char *id, em_error_t *err)
{
    em_error_set(err, EM_ERR_DEVICE_NOT_FOUND, EM_SEV_LOW, "id", "no such device");
    em_error_set_device(err, id);
    return EM_ERR_DEVICE_NOT_FOUND;
}

static em_err_t pg_device_update(em__store_conn_t *c, const em_store_device_t *d, em_error_t *err)
{
    em_err_t rc = ensure_conn(c, err);
    if (rc != EM_OK)
        return rc;
    params_t p = {0};
    device_params(&p, d);
    p_i64(&p, d->updated_at_ms);
    uint64_t n = 0;
    if ((rc = run_count(c, ST_DEVICE_UPDATE, &p, &n, err)) != EM_OK)
        return rc;
    return n == 0 ? device_not_found(d->id, err) : EM_OK;
}

static em_err_t pg_device_delete(em__store_conn_t *c, const char *id, em_error_t *err)
{
    em_err_t rc = ensure_conn(c, err);
    if (rc != EM_OK)
        return rc;
    if ((rc = tx_begin(c, err)) != EM_OK)
        return rc;
    /* The device row first: it waits for a batch writing this device (which
     * holds it FOR KEY SHARE), and the rows below then include that batch. */
    params_t p = {0};
    p_str(&p, id);
    uint64_t n = 0;
    rc = run_count(c, ST_DEVICE_DELETE, &p, &n, err);
    if (rc == EM_OK && n == 0)
        rc = device_not_found(id, err);
    if (rc == EM_OK) {
        params_t q = {0};
        p_str(&q, id);
        rc = run(c, ST_DEVICE_DELETE_ROWS, &q, NULL, err);
    }
    if (rc == EM_OK)
        rc = tx_commit(c, err);
    if (rc != EM_OK)
        tx_rollback(c);
    return rc;
}

/* Runs a statement keyed by one string and reads its first row, if any. */
static em_err_t get_one(em__store_conn_t *c, stmt_id_t id, const char *key, void *out,
                        void (*read)(const PGresult *, int, void *), bool *found, em_error_t *err)
{
    *found = false;
    em_err_t rc = ensure_conn(c, err);
    if (rc != EM_OK)
        return rc;
    params_t p = {0};
    p_str(&p, key);
    PGresult *res = NULL;
    if ((rc = run(c, id, &p, &res, err)) != EM_OK)
        return rc;
    *found = PQntuples(res) > 0;
    if (*found)
        read(res, 0, out);
    PQclear(res);
    return EM_OK;
}

static void read_device_v(const PGresult *res, int row, void *out)
{
    read_device(res, row, out);
}

static em_err_t pg_device_get(em__store_conn_t *c, const char *id, em_store_device_t *out,
                              em_error_t *err)
{
    bool found = false;
    em_err_t rc = get_one(c, ST_DEVICE_GET, id, out, read_device_v, &found, err);
    if (rc == EM_OK && !found)
        return device_not_found(id, err);
    return rc;
}

/* The caller's callback (cast back to its own type by each row function). */
typedef struct list_ctx {
    void (*fn)(void);
    void *ud;
} list_ctx_t;

static int device_row(PGresult *res, int row, void *ctx)
{
    list_ctx_t *l = ctx;
    em_store_device_t d;
    read_device(res, row, &d);
    return ((em_store_device_fn)l->fn)(&d, l->ud);
}

static em_err_t group_not_found(em_error_t *err)
{
    return em_error_set(err, EM_ERR_GROUP_NOT_FOUND, EM_SEV_LOW, "group", "no such group");
}

static em_err_t group_exists(em__store_conn_t *c, const char *name, bool *exists, em_error_t *err)
{
    params_t p = {0};
    p_str(&p, name);
    PGresult *res = NULL;
    em_err_t rc = run(c, ST_GROUP_EXISTS, &p, &res, err);
    *exists = rc == EM_OK && PQntuples(res) > 0;
    PQclear(res);
    return rc;
}

static unsigned page_limit(unsigned limit)
{
    if (limit == 0)
        return EM_STORE_PAGE_DEFAULT;
    return limit > EM_STORE_PAGE_MAX ? EM_STORE_PAGE_MAX : limit;
}

static em_err_t pg_device_list(em__store_conn_t *c, const em_store_device_filter_t *f,
                               em_store_device_fn fn, void *ud, size_t *count, em_error_t *err)
{
    if (count != NULL)
        *count = 0;
    em_err_t rc = ensure_conn(c, err);
    if (rc != EM_OK)
        return rc;
    const char *group = f != NULL ? f->group : NULL;
    if (group != NULL) {
        bool exists = false;
        if ((rc = group_exists(c, group, &exists, err)) != EM_OK)
            return rc;
        if (!exists)
            return group_not_found(err);
    }
    params_t p = {0};
    p_str(&p, group);
    p_i64(&p, f != NULL ? f->type : -1);
    p_str(&p, f != NULL ? f->after : NULL);
    p_i64(&p, page_limit(f != NULL ? f->limit : 0));
    list_ctx_t l = {(void (*)(void))fn, ud};
    return run_rows(c, ST_DEVICE_LIST, &p, device_row, &l, count, err);
}

static em_err_t pg_group_insert(em__store_conn_t *c, const char *name, int64_t now_ms,
                                em_error_t *err)
{
    em_err_t rc = ensure_conn(c, err);
    if (rc != EM_OK)
        return rc;
    params_t p = {0};
    p_str(&p, name);
    p_i64(&p, now_ms);
    rc = run(c, ST_GROUP_INSERT, &p, NULL, err);
    if (rc == EM_ERR_EXISTS)
        em_error_set(err, EM_ERR_EXISTS, EM_SEV_LOW, "name", "a group with this name exists");
    return rc;
}

static em_err_t pg_group_delete(em__store_conn_t *c, const char *name, em_error_t *err)
{
    em_err_t rc = ensure_conn(c, err);
    if (rc != EM_OK)
        return rc;
    params_t p = {0};
    p_str(&p, name);
    uint64_t n = 0;
    if ((rc = run_count(c, ST_GROUP_DELETE, &p, &n, err)) != EM_OK)
        return rc;
    return n == 0 ? group_not_found(err) : EM_OK;
}

static int group_row(PGresult *res, int row, void *ctx)
{
    list_ctx_t *l = ctx;
    return ((em_store_group_fn)l->fn)(PQgetvalue(res, row, 0), (size_t)col_i64(res, row, 2),
                                      col_i64(res, row, 1), l->ud);
}

static em_err_t pg_group_list(em__store_conn_t *c, em_store_group_fn fn, void *ud, em_error_t *err)
{
    em_err_t rc = ensure_conn(c, err);
    if (rc != EM_OK)
        return rc;
    params_t p = {0};
    list_ctx_t l = {(void (*)(void))fn, ud};
    return run_rows(c, ST_GROUP_LIST, &p, group_row, &l, NULL, err);
}

static em_err_t pg_member_add(em__store_conn_t *c, const char *group, const char *id,
                              em_error_t *err)
{
    em_err_t rc = ensure_conn(c, err);
    if (rc != EM_OK)
        return rc;
    params_t p = {0};
    p_str(&p, group);
    p_str(&p, id);
    rc = run(c, ST_MEMBER_ADD, &p, NULL, err);
    if (rc == EM_ERR_DEVICE_NOT_FOUND)
        em_error_set_device(err, id);
    return rc;
}

static em_err_t pg_member_remove(em__store_conn_t *c, const char *group, const char *id,
                                 em_error_t *err)
{
    em_err_t rc = ensure_conn(c, err);
    if (rc != EM_OK)
        return rc;
    params_t p = {0};
    p_str(&p, group);
    p_str(&p, id);
    uint64_t n = 0;
    if ((rc = run_count(c, ST_MEMBER_REMOVE, &p, &n, err)) != EM_OK || n > 0)
        return rc;
    bool exists = false;
    if ((rc = group_exists(c, group, &exists, err)) != EM_OK)
        return rc;
    if (!exists)
        return group_not_found(err);
    em_error_set(err, EM_ERR_DEVICE_NOT_FOUND, EM_SEV_LOW, "id", "the device is not a member");
    em_error_set_device(err, id);
    return EM_ERR_DEVICE_NOT_FOUND;
}

static int member_row(PGresult *res, int row, void *ctx)
{
    list_ctx_t *l = ctx;
    return ((em_store_member_fn)l->fn)(PQgetvalue(res, row, 0), PQgetvalue(res, row, 1), l->ud);
}

static em_err_t pg_member_list(em__store_conn_t *c, em_store_member_fn fn, void *ud,
                               em_error_t *err)
{
    em_err_t rc = ensure_conn(c, err);
    if (rc != EM_OK)
        return rc;
    params_t p = {0};
    list_ctx_t l = {(void (*)(void))fn, ud};
    return run_rows(c, ST_MEMBER_LIST, &p, member_row, &l, NULL, err);
}

/* ---------------------------------------------------------------------- */
/* Status, telemetry, rollups                                              */

static int status_row(PGresult *res, int row, void *ctx)
{
    list_ctx_t *l = ctx;
    em_status_t s;
    read_status(res, row, &s);
    return ((em_store_status_fn)l->fn)(PQgetvalue(res, row, 0), &s, l->ud);
}

static em_err_t pg_status_latest(em__store_conn_t *c, const char *id, em_store_status_fn fn,
                                 void *ud, em_error_t *err)
{
    em_err_t rc = ensure_conn(c, err);
    if (rc != EM_OK)
        return rc;
    params_t p = {0};
    list_ctx_t l = {(void (*)(void))fn, ud};
    if (id == NULL)
        return run_rows(c, ST_STATUS_LATEST_ALL, &p, status_row, &l, NULL, err);
    p_str(&p, id);
    size_t n = 0;
    if ((rc = run_rows(c, ST_STATUS_LATEST_ONE, &p, status_row, &l, &n, err)) != EM_OK)
        return rc;
    if (n == 0) {
        em_error_set(err, EM_ERR_DEVICE_NOT_FOUND, EM_SEV_LOW, "id", "no status for this device");
        em_error_set_device(err, id);
        return EM_ERR_DEVICE_NOT_FOUND;
    }
    return EM_OK;
}

/* $1 key, $2 from, $3 to, $4 limit. */
static void range_params(params_t *p, const char *key, const em_store_range_t *r)
{
    p_str(p, key);
    p_i64(p, r != NULL ? r->from_ms : 0);
    p_i64(p, r != NULL ? r->to_ms : 0);
    p_i64(p, page_limit(r != NULL ? r->limit : 0));
}

static bool descending(const em_store_range_t *r)
{
    return r != NULL && r->descending;
}

/* Per-device reads that found nothing: an unknown device is an error (the
 * API answers 404), a known one simply has no rows yet. */
static em_err_t device_rows(em__store_conn_t *c, const char *id, em_err_t rc, size_t rows,
                            em_error_t *err)
{
    if (rc != EM_OK || rows > 0)
        return rc;
    params_t p = {0};
    p_str(&p, id);
    PGresult *res = NULL;
    if ((rc = run(c, ST_DEVICE_GET, &p, &res, err)) != EM_OK)
        return rc;
    bool found = PQntuples(res) > 0;
    PQclear(res);
    return found ? EM_OK : device_not_found(id, err);
}

static em_err_t pg_status_history(em__store_conn_t *c, const char *id, const em_store_range_t *r,
                                  em_store_status_fn fn, void *ud, em_error_t *err)
{
    em_err_t rc = ensure_conn(c, err);
    if (rc != EM_OK)
        return rc;
    params_t p = {0};
    range_params(&p, id, r);
    list_ctx_t l = {(void (*)(void))fn, ud};
    size_t n = 0;
    rc = run_rows(c, descending(r) ? ST_STATUS_HISTORY_DESC : ST_STATUS_HISTORY_ASC, &p, status_row,
                  &l, &n, err);
    return device_rows(c, id, rc, n, err);
}

static int telemetry_row(PGresult *res, int row, void *ctx)
{
    list_ctx_t *l = ctx;
    em_telemetry_t t;
    read_telemetry(res, row, &t);
    return ((em_store_telemetry_fn)l->fn)(PQgetvalue(res, row, 0), &t, l->ud);
}

static em_err_t pg_telemetry_list(em__store_conn_t *c, const char *id, const em_store_range_t *r,
                                  em_store_telemetry_fn fn, void *ud, em_error_t *err)
{
    em_err_t rc = ensure_conn(c, err);
    if (rc != EM_OK)
        return rc;
    params_t p = {0};
    range_params(&p, id, r);
    list_ctx_t l = {(void (*)(void))fn, ud};
    size_t n = 0;
    rc = run_rows(c, descending(r) ? ST_TELEMETRY_DESC : ST_TELEMETRY_ASC, &p, telemetry_row, &l,
                  &n, err);
    return device_rows(c, id, rc, n, err);
}

static int rollup_row(PGresult *res, int row, void *ctx)
{
    list_ctx_t *l = ctx;
    em_store_rollup_t r;
    memset(&r, 0, sizeof(r));
    r.bucket_ms = col_i64(res, row, 0);
    r.samples = (uint64_t)col_i64(res, row, 1);
    r.energy_wh = col_dbl(res, row, 2);
    int64_t power_samples = col_i64(res, row, 4);
    r.power_avg_w = power_samples > 0 ? col_dbl(res, row, 3) / (double)power_samples : 0.0;
    r.power_max_w = power_samples > 0 ? col_dbl(res, row, 5) : 0.0;
    r.resets = (uint32_t)col_i64(res, row, 6);
    r.devices = (uint32_t)col_i64(res, row, 7);
    return ((em_store_rollup_fn)l->fn)(&r, l->ud);
}

static em_err_t pg_rollup_device(em__store_conn_t *c, const char *id, em_rollup_t kind,
                                 const em_store_range_t *r, em_store_rollup_fn fn, void *ud,
                                 em_error_t *err)
{
    em_err_t rc = ensure_conn(c, err);
    if (rc != EM_OK)
        return rc;
    params_t p = {0};
    range_params(&p, id, r);
    p_i64(&p, kind);
    list_ctx_t l = {(void (*)(void))fn, ud};
    size_t n = 0;
    rc = run_rows(c, descending(r) ? ST_ROLLUP_DEVICE_DESC : ST_ROLLUP_DEVICE_ASC, &p, rollup_row,
                  &l, &n, err);
    return device_rows(c, id, rc, n, err);
}

static em_err_t pg_rollup_group(em__store_conn_t *c, const char *group, em_rollup_t kind,
                                const em_store_range_t *r, em_store_rollup_fn fn, void *ud,
                                em_error_t *err)
{
    em_err_t rc = ensure_conn(c, err);
    if (rc != EM_OK)
        return rc;
    bool exists = false;
    if ((rc = group_exists(c, group, &exists, err)) != EM_OK)
        return rc;
    if (!exists)
        return group_not_found(err);
    params_t p = {0};
    range_params(&p, group, r);
    p_i64(&p, kind);
    list_ctx_t l = {(void (*)(void))fn, ud};
    return run_rows(c, descending(r) ? ST_ROLLUP_GROUP_DESC : ST_ROLLUP_GROUP_ASC, &p, rollup_row,
                    &l, NULL, err);
}

/* ---------------------------------------------------------------------- */
/* Commands                                                                */

static em_err_t command_not_found(em_error_t *err)
{
    return em_error_set(err, EM_ERR_NOT_FOUND, EM_SEV_LOW, "requestId", "no such command");
}

static em_err_t pg_command_insert(em__store_conn_t *c, const em_store_command_t *cmd,
                                  em_error_t *err)
{
    em_err_t rc = ensure_conn(c, err);
    if (rc != EM_OK)
        return rc;
    params_t p = {0};
    p_str(&p, cmd->request_id);
    p_str(&p, cmd->device_id);
    p_str(&p, cmd->group);
    p_i64(&p, cmd->type);
    p_str(&p, cmd->payload_json);
    p_i64(&p, cmd->state);
    p_str(&p, cmd->actor);
    p_i64(&p, cmd->created_at_ms);
    p_i64(&p, cmd->updated_at_ms);
    p_i64(&p, cmd->expires_at_ms);
    p_bool(&p, cmd->has_response);
    p_bool(&p, cmd->response_success);
    p_str(&p, cmd->response_message);
    rc = run(c, ST_COMMAND_INSERT, &p, NULL, err);
    if (rc == EM_ERR_EXISTS)
        em_error_set(err, EM_ERR_EXISTS, EM_SEV_LOW, "requestId",
                     "a command with this request id exists");
    return rc;
}

static em_err_t pg_command_set_state(em__store_conn_t *c, const char *request_id,
                                     em_command_state_t state, int64_t now_ms, em_error_t *err)
{
    em_err_t rc = ensure_conn(c, err);
    if (rc != EM_OK)
        return rc;
    params_t p = {0};
    p_str(&p, request_id);
    p_i64(&p, state);
    p_i64(&p, now_ms);
    bool exists = false;
    if ((rc = run_bool(c, ST_COMMAND_STATE, &p, &exists, err)) != EM_OK)
        return rc;
    return exists ? EM_OK : command_not_found(err);
}

static em_err_t pg_command_expire(em__store_conn_t *c, int64_t now_ms, size_t *expired,
                                  em_error_t *err)
{
    if (expired != NULL)
        *expired = 0;
    em_err_t rc = ensure_conn(c, err);
    if (rc != EM_OK)
        return rc;
    params_t p = {0};
    p_i64(&p, now_ms);
    uint64_t n = 0;
    if ((rc = run_count(c, ST_COMMAND_EXPIRE, &p, &n, err)) == EM_OK && expired != NULL)
        *expired = (size_t)n;
    return rc;
}

static int command_row(PGresult *res, int row, void *ctx)
{
    list_ctx_t *l = ctx;
    em_store_command_t cmd;
    read_command(res, row, &cmd);
    return ((em_store_command_fn)l->fn)(&cmd, l->ud);
}

static em_err_t pg_command_get(em__store_conn_t *c, const char *request_id, em_store_command_fn fn,
                               void *ud, em_error_t *err)
{
    em_err_t rc = ensure_conn(c, err);
    if (rc != EM_OK)
        return rc;
    params_t p = {0};
    p_str(&p, request_id);
    list_ctx_t l = {(void (*)(void))fn, ud};
    size_t n = 0;
    if ((rc = run_rows(c, ST_COMMAND_GET, &p, command_row, &l, &n, err)) != EM_OK)
        return rc;
    return n == 0 ? command_not_found(err) : EM_OK;
}

/* $1 device, $2 from, $3 to, $4 limit, $5 group, $6 state. */
static em_err_t pg_command_list(em__store_conn_t *c, const em_store_command_filter_t *f,
                                em_store_command_fn fn, void *ud, em_error_t *err)
{
    em_err_t rc = ensure_conn(c, err);
    if (rc != EM_OK)
        return rc;
    const em_store_range_t *r = f != NULL ? &f->range : NULL;
    params_t p = {0};
    range_params(&p, f != NULL ? f->device_id : NULL, r);
    p_str(&p, f != NULL ? f->group : NULL);
    p_i64(&p, f != NULL ? f->state : -1);
    list_ctx_t l = {(void (*)(void))fn, ud};
    return run_rows(c, descending(r) ? ST_COMMAND_LIST_DESC : ST_COMMAND_LIST_ASC, &p, command_row,
                    &l, NULL, err);
}

/* ---------------------------------------------------------------------- */
/* Events                                                                  */

static em_err_t pg_event_insert(em__store_conn_t *c, const em_store_event_t *ev, em_error_t *err)
{
    em_err_t rc = ensure_conn(c, err);
    if (rc != EM_OK)
        return rc;
    params_t p = {0};
    p_i64(&p, ev->time_ms > 0 ? ev->time_ms : em_now_ms());
    p_i64(&p, ev->kind);
    p_str(&p, ev->type);
    p_i64(&p, ev->severity);
    p_str(&p, ev->device_id);
    p_str(&p, ev->actor);
    p_str(&p, ev->source);
    p_str(&p, ev->message);
    p_str(&p, ev->details_json);
    return run(c, ST_EVENT_INSERT, &p, NULL, err);
}

static int event_row(PGresult *res, int row, void *ctx)
{
    list_ctx_t *l = ctx;
    em_store_event_t ev;
    read_event(res, row, &ev);
    return ((em_store_event_fn)l->fn)(&ev, l->ud);
}

/* $1 device, $2 from, $3 to, $4 limit, $5 kind, $6 type, $7 min severity,
 * $8 before id. */
static em_err_t pg_event_list(em__store_conn_t *c, const em_store_event_filter_t *f,
                              em_store_event_fn fn, void *ud, em_error_t *err)
{
    em_err_t rc = ensure_conn(c, err);
    if (rc != EM_OK)
        return rc;
    const em_store_range_t *r = f != NULL ? &f->range : NULL;
    params_t p = {0};
    range_params(&p, f != NULL ? f->device_id : NULL, r);
    p_i64(&p, f != NULL ? f->kind : -1);
    p_str(&p, f != NULL ? f->type : NULL);
    p_i64(&p, f != NULL ? f->min_severity : -1);
    p_i64(&p, f != NULL ? f->before_id : 0);
    list_ctx_t l = {(void (*)(void))fn, ud};
    return run_rows(c, descending(r) ? ST_EVENT_LIST_DESC : ST_EVENT_LIST_ASC, &p, event_row, &l,
                    NULL, err);
}

/* ---------------------------------------------------------------------- */
/* Users, API keys                                                         */

static em_err_t pg_user_insert(em__store_conn_t *c, const em_store_user_t *u, em_error_t *err)
{
    em_err_t rc = ensure_conn(c, err);
    if (rc != EM_OK)
        return rc;
    params_t p = {0};
    p_str(&p, u->name);
    p_i64(&p, u->role);
    p_bool(&p, u->disabled);
    p_i64(&p, u->created_at_ms);
    rc = run(c, ST_USER_INSERT, &p, NULL, err);
    if (rc == EM_ERR_EXISTS)
        em_error_set(err, EM_ERR_EXISTS, EM_SEV_LOW, "name", "a user with this name exists");
    return rc;
}

static void read_user_v(const PGresult *res, int row, void *out)
{
    read_user(res, row, out);
}

static em_err_t user_not_found(em_error_t *err)
{
    return em_error_set(err, EM_ERR_NOT_FOUND, EM_SEV_LOW, "name", "no such user");
}

static em_err_t pg_user_get(em__store_conn_t *c, const char *name, em_store_user_t *out,
                            em_error_t *err)
{
    bool found = false;
    em_err_t rc = get_one(c, ST_USER_GET, name, out, read_user_v, &found, err);
    if (rc == EM_OK && !found)
        return user_not_found(err);
    return rc;
}

static em_err_t pg_user_delete(em__store_conn_t *c, const char *name, em_error_t *err)
{
    em_err_t rc = ensure_conn(c, err);
    if (rc != EM_OK)
        return rc;
    params_t p = {0};
    p_str(&p, name);
    uint64_t n = 0;
    if ((rc = run_count(c, ST_USER_DELETE, &p, &n, err)) != EM_OK)
        return rc;
    return n == 0 ? user_not_found(err) : EM_OK;
}

static int user_row(PGresult *res, int row, void *ctx)
{
    list_ctx_t *l = ctx;
    em_store_user_t u;
    read_user(res, row, &u);
    return ((em_store_user_fn)l->fn)(&u, l->ud);
}

static em_err_t pg_user_list(em__store_conn_t *c, em_store_user_fn fn, void *ud, em_error_t *err)
{
    em_err_t rc = ensure_conn(c, err);
    if (rc != EM_OK)
        return rc;
    params_t p = {0};
    list_ctx_t l = {(void (*)(void))fn, ud};
    return run_rows(c, ST_USER_LIST, &p, user_row, &l, NULL, err);
}

static em_err_t pg_api_key_insert(em__store_conn_t *c, const em_store_api_key_t *k, em_error_t *err)
{
    em_err_t rc = ensure_conn(c, err);
    if (rc != EM_OK)
        return rc;
    /* bytea input in hex: "\x" + 64 digits. */
    char h[67];
    em__pg_hash_param(k->hash, h);
    params_t p = {0};
    p_str(&p, k->key_id);
    p_str(&p, k->name);
    p_i64(&p, k->role);
    p_str(&p, k->device_id);
    p_str(&p, k->owner);
    p_str(&p, h);
    p_i64(&p, k->rate_per_min);
    p_i64(&p, k->created_at_ms);
    p_i64(&p, k->expires_at_ms);
    p_i64(&p, k->last_used_ms);
    p_i64(&p, k->revoked_at_ms);
    rc = run(c, ST_KEY_INSERT, &p, NULL, err);
    OPENSSL_cleanse(h, sizeof(h));
    if (rc == EM_ERR_EXISTS)
        em_error_set(err, EM_ERR_EXISTS, EM_SEV_LOW, "keyId", "a key with this id exists");
    return rc;
}

static void read_key_v(const PGresult *res, int row, void *out)
{
    read_key(res, row, out);
}

static em_err_t key_not_found(em_error_t *err)
{
    return em_error_set(err, EM_ERR_NOT_FOUND, EM_SEV_LOW, "keyId", "no such key");
}

static em_err_t pg_api_key_get(em__store_conn_t *c, const char *key_id, em_store_api_key_t *out,
                               em_error_t *err)
{
    bool found = false;
    em_err_t rc = get_one(c, ST_KEY_GET, key_id, out, read_key_v, &found, err);
    if (rc == EM_OK && !found)
        return key_not_found(err);
    return rc;
}

static em_err_t pg_api_key_revoke(em__store_conn_t *c, const char *key_id, int64_t now_ms,
                                  em_error_t *err)
{
    em_err_t rc = ensure_conn(c, err);
    if (rc != EM_OK)
        return rc;
    params_t p = {0};
    p_str(&p, key_id);
    p_i64(&p, now_ms);
    bool exists = false;
    if ((rc = run_bool(c, ST_KEY_REVOKE, &p, &exists, err)) != EM_OK)
        return rc;
    return exists ? EM_OK : key_not_found(err);
}

static int key_row(PGresult *res, int row, void *ctx)
{
    list_ctx_t *l = ctx;
    em_store_api_key_t k;
    read_key(res, row, &k);
    int stop = ((em_store_api_key_fn)l->fn)(&k, l->ud);
    OPENSSL_cleanse(k.hash, sizeof(k.hash));
    return stop;
}

static em_err_t pg_api_key_list(em__store_conn_t *c, em_store_api_key_fn fn, void *ud,
                                em_error_t *err)
{
    em_err_t rc = ensure_conn(c, err);
    if (rc != EM_OK)
        return rc;
    params_t p = {0};
    list_ctx_t l = {(void (*)(void))fn, ud};
    return run_rows(c, ST_KEY_LIST, &p, key_row, &l, NULL, err);
}

/* ---------------------------------------------------------------------- */
/* Maintenance                                                             */

/* Deletes what one retention period (0: keep forever) leaves behind. */
static em_err_t prune_one(em__store_conn_t *c, stmt_id_t id, int64_t now_ms, int64_t period,
                          int kind, uint64_t *total, em_error_t *err)
{
    if (period <= 0)
        return EM_OK;
    params_t p = {0};
    p_i64(&p, now_ms > INT64_MIN + period ? now_ms - period : INT64_MIN);
    if (kind >= 0)
        p_i64(&p, kind);
    uint64_t n = 0;
    em_err_t rc = run_count(c, id, &p, &n, err);
    *total += n;
    return rc;
}

static em_err_t pg_prune(em__store_conn_t *c, const em_store_retention_t *r, int64_t now_ms,
                         uint64_t *deleted, em_error_t *err)
{
    if (deleted != NULL)
        *deleted = 0;
    em_err_t rc = ensure_conn(c, err);
    if (rc != EM_OK)
        return rc;
    if ((rc = tx_begin(c, err)) != EM_OK)
        return rc;
    uint64_t total = 0;
    rc = em__pg_identity_prune(
        c,
        now_ms > INT64_MIN + EM__STORE_TOKEN_KEEP_MS ? now_ms - EM__STORE_TOKEN_KEEP_MS : INT64_MIN,
        &total, err);
    if (rc == EM_OK)
        rc = prune_one(c, ST_PRUNE_HISTORY, now_ms, r->status_history_ms, -1, &total, err);
    if (rc == EM_OK)
        rc = prune_one(c, ST_PRUNE_TELEMETRY, now_ms, r->telemetry_ms, -1, &total, err);
    if (rc == EM_OK)
        rc = prune_one(c, ST_PRUNE_ROLLUP, now_ms, r->rollup_hour_ms, EM_ROLLUP_HOUR, &total, err);
    if (rc == EM_OK)
        rc = prune_one(c, ST_PRUNE_ROLLUP, now_ms, r->rollup_day_ms, EM_ROLLUP_DAY, &total, err);
    if (rc == EM_OK)
        rc = prune_one(c, ST_PRUNE_EVENTS, now_ms, r->events_ms, -1, &total, err);
    if (rc == EM_OK)
        rc = prune_one(c, ST_PRUNE_COMMANDS, now_ms, r->commands_ms, -1, &total, err);
    if (rc == EM_OK)
        rc = tx_commit(c, err);
    if (rc != EM_OK) {
        tx_rollback(c);
        return rc;
    }
    if (deleted != NULL)
        *deleted = total;
    return EM_OK;
}

const em__store_backend_t em__store_pg = {
    .name = "postgresql",
    .open = pg_open,
    .close = pg_close,
    .migrate = pg_migrate,
    .write_batch = pg_write_batch,
    .device_insert = pg_device_insert,
    .device_update = pg_device_update,
    .device_delete = pg_device_delete,
    .device_get = pg_device_get,
    .device_list = pg_device_list,
    .group_insert = pg_group_insert,
    .group_delete = pg_group_delete,
    .group_list = pg_group_list,
    .member_add = pg_member_add,
    .member_remove = pg_member_remove,
    .member_list = pg_member_list,
    .status_latest = pg_status_latest,
    .status_history = pg_status_history,
    .telemetry_list = pg_telemetry_list,
    .rollup_device = pg_rollup_device,
    .rollup_group = pg_rollup_group,
    .command_insert = pg_command_insert,
    .command_set_state = pg_command_set_state,
    .command_expire = pg_command_expire,
    .command_get = pg_command_get,
    .command_list = pg_command_list,
    .event_insert = pg_event_insert,
    .event_list = pg_event_list,
    .user_insert = pg_user_insert,
    .user_get = pg_user_get,
    .user_delete = pg_user_delete,
    .user_list = pg_user_list,
    .api_key_insert = pg_api_key_insert,
    .api_key_get = pg_api_key_get,
    .api_key_revoke = pg_api_key_revoke,
    .api_key_list = pg_api_key_list,
    .enroll_token_insert = em__pg_enroll_token_insert,
    .enroll_token_use = em__pg_enroll_token_use,
    .enroll_token_list = em__pg_enroll_token_list,
    .device_cert_insert = em__pg_device_cert_insert,
    .device_cert_latest = em__pg_device_cert_latest,
    .device_cert_list = em__pg_device_cert_list,
    .prune = pg_prune,
};
