/*
 * emiot integration tests - test_store.c: one suite, run against both store
 * backends through the public store.h API only: SQLite (a file in a temporary
 * directory) and PostgreSQL (a throwaway server from tests/support/pg.h, its
 * database emptied before each test). Both must behave identically.
 *
 * The PostgreSQL half is skipped (with a message) only when the server
 * binaries are not installed; scripts/deps.sh installs them, so on CI it runs.
 */
#include <errno.h>
#include <libpq-fe.h>
#include <math.h>
#include <pthread.h>
#include <setjmp.h>
#include <signal.h>
#include <sqlite3.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cmocka.h>

#include "emiot/store.h"
#include "pg.h"
#include "testutil.h"

/* 2023-11-14T00:00:00Z: the start of a UTC day (and hour). */
#define DAY0  INT64_C(1699920000000)
#define HOUR  INT64_C(3600000)
#define DAY   INT64_C(86400000)
#define MIN   INT64_C(60000)
#define EPS   1e-9
#define URL_N 600

typedef enum backend { BE_SQLITE, BE_PG } backend_t;

/* Per suite (group). */
static backend_t g_backend;
static bool g_pg_skip;
static em_test_pg_t g_pg;
static int g_db_seq;

/* Per test. */
typedef struct fixture {
    char dir[256]; /* SQLite: the temporary directory */
    char url[URL_N];
    char db_path[400]; /* SQLite: the file */
    em_store_t *st;
} fixture_t;

/* ---------------------------------------------------------------------- */
/* Fixtures                                                                */

static int group_setup_sqlite(void **state)
{
    (void)state;
    g_backend = BE_SQLITE;
    return 0;
}

static int group_setup_pg(void **state)
{
    (void)state;
    g_backend = BE_PG;
    g_pg_skip = !em_test_pg_available();
    if (g_pg_skip) {
        print_message("PostgreSQL server binaries not found (initdb, postgres under "
                      "/usr/lib/postgresql/*/bin): skipping the PostgreSQL half; "
                      "scripts/deps.sh installs them\n");
        return 0;
    }
    return em_test_pg_start(&g_pg);
}

static int group_teardown_pg(void **state)
{
    (void)state;
    em_test_pg_cleanup(&g_pg);
    return 0;
}

static void options(em_store_options_t *o)
{
    em_store_options_init(o);
    o->batch_interval_ms = 5;
}

static em_err_t open_store(fixture_t *fx, em_error_t *err)
{
    em_store_options_t o;
    options(&o);
    return em_store_open(fx->url, &o, &fx->st, err);
}

/* A fresh, empty store for every test. */
static int setup(void **state)
{
    fixture_t *fx = calloc(1, sizeof(*fx));
    if (fx == NULL)
        return -1;
    *state = fx;
    if (g_backend == BE_SQLITE) {
        if (em_test_mkdtemp(fx->dir, sizeof(fx->dir)) != 0)
            return -1;
        snprintf(fx->db_path, sizeof(fx->db_path), "%s/emiot.db", fx->dir);
        snprintf(fx->url, sizeof(fx->url), "sqlite:%s", fx->db_path);
    } else {
        if (g_pg_skip)
            return 0;
        if (em_test_pg_reset_db(&g_pg, "emiot") != 0)
            return -1;
        snprintf(fx->url, sizeof(fx->url), "%s", em_test_pg_url(&g_pg));
    }
    em_error_t err;
    em_err_t rc = open_store(fx, &err);
    if (rc != EM_OK) {
        fprintf(stderr, "em_store_open: %s: %s\n", em_err_name(rc), err.message);
        return -1;
    }
    return 0;
}

static int teardown(void **state)
{
    fixture_t *fx = *state;
    if (fx == NULL)
        return 0;
    em_store_close(fx->st);
    if (fx->dir[0] != '\0')
        em_test_rmtree(fx->dir);
    free(fx);
    return 0;
}

/* Every test starts with this: the fixture, or a skip when PostgreSQL is
 * not installed. */
static fixture_t *fixture(void **state)
{
    if (g_backend == BE_PG && g_pg_skip)
        skip();
    return *state;
}

static void reopen(fixture_t *fx)
{
    em_store_close(fx->st);
    fx->st = NULL;
    em_error_t err;
    em_err_t rc = open_store(fx, &err);
    if (rc != EM_OK)
        fail_msg("reopen: %s: %s", em_err_name(rc), err.message);
}

#define OK(call)                                                                                   \
    do {                                                                                           \
        em_error_t ok_err_;                                                                        \
        memset(&ok_err_, 0, sizeof(ok_err_));                                                      \
        em_err_t ok_rc_ = (call);                                                                  \
        if (ok_rc_ != EM_OK)                                                                       \
            fail_msg("%s: %s: %s", #call, em_err_name(ok_rc_), ok_err_.message);                   \
    } while (0)

/* The calls below take `&ok_err_` through this name. */
#define E (&ok_err_)

#define FAILS_WITH(code, call)                                                                     \
    do {                                                                                           \
        em_error_t ok_err_;                                                                        \
        memset(&ok_err_, 0, sizeof(ok_err_));                                                      \
        em_err_t ok_rc_ = (call);                                                                  \
        if (ok_rc_ != (code))                                                                      \
            fail_msg("%s: expected %s, got %s (%s)", #call, em_err_name(code),                     \
                     em_err_name(ok_rc_), ok_err_.message);                                        \
    } while (0)

static void flush(fixture_t *fx)
{
    OK(em_store_flush(fx->st, 30000, E));
}

/* ---------------------------------------------------------------------- */
/* Builders                                                                */

static em_store_device_t device(const char *id, em_device_type_t type)
{
    em_store_device_t d;
    memset(&d, 0, sizeof(d));
    snprintf(d.id, sizeof(d.id), "%s", id);
    snprintf(d.name, sizeof(d.name), "Device %s", id);
    d.type = type;
    d.enabled = true;
    d.created_at_ms = DAY0;
    d.updated_at_ms = DAY0;
    return d;
}

static void add_device(fixture_t *fx, const char *id)
{
    em_store_device_t d = device(id, EM_DEVICE_SENSOR);
    OK(em_store_device_insert(fx->st, &d, E));
}

static em_status_t status_at(int64_t t, uint8_t battery)
{
    em_status_t s;
    memset(&s, 0, sizeof(s));
    s.has = EM_STATUS_HAS_BATTERY | EM_STATUS_HAS_LAST_SEEN;
    s.battery_level = battery;
    s.last_seen_ms = t;
    return s;
}

static em_telemetry_t sample(int64_t t, double energy, bool has_power, double power)
{
    em_telemetry_t x;
    memset(&x, 0, sizeof(x));
    x.timestamp_ms = t;
    x.has = EM_TELEMETRY_HAS_ENERGY;
    x.energy_wh = energy;
    if (has_power) {
        x.has |= EM_TELEMETRY_HAS_POWER;
        x.power_w = power;
    }
    return x;
}

static void rid(char *buf, size_t size, unsigned n)
{
    snprintf(buf, size, "req_%032x", n);
}

static em_store_command_t command(unsigned n, const char *dev, const char *group, int64_t created)
{
    em_store_command_t c;
    memset(&c, 0, sizeof(c));
    rid(c.request_id, sizeof(c.request_id), n);
    snprintf(c.device_id, sizeof(c.device_id), "%s", dev);
    snprintf(c.group, sizeof(c.group), "%s", group != NULL ? group : "");
    c.type = EM_CMD_SLEEP;
    c.payload_json = "{\"duration\":60}";
    c.state = EM_CMD_QUEUED;
    snprintf(c.actor, sizeof(c.actor), "key:k_0123456789ab");
    c.created_at_ms = created;
    c.updated_at_ms = created;
    c.expires_at_ms = created + 10 * MIN;
    return c;
}

static em_store_event_t event(em_event_kind_t kind, const char *type, em_severity_t sev,
                              const char *dev, int64_t t)
{
    em_store_event_t ev;
    memset(&ev, 0, sizeof(ev));
    ev.kind = kind;
    snprintf(ev.type, sizeof(ev.type), "%s", type);
    ev.severity = sev;
    snprintf(ev.device_id, sizeof(ev.device_id), "%s", dev != NULL ? dev : "");
    snprintf(ev.actor, sizeof(ev.actor), "user:alice");
    snprintf(ev.source, sizeof(ev.source), "127.0.0.1");
    snprintf(ev.message, sizeof(ev.message), "%s happened", type);
    ev.time_ms = t;
    return ev;
}

static em_store_api_key_t api_key(const char *key_id, em_role_t role, int64_t created)
{
    em_store_api_key_t k;
    memset(&k, 0, sizeof(k));
    snprintf(k.key_id, sizeof(k.key_id), "%s", key_id);
    snprintf(k.name, sizeof(k.name), "key %s", key_id);
    k.role = role;
    snprintf(k.owner, sizeof(k.owner), "user:admin");
    for (size_t i = 0; i < sizeof(k.hash); i++)
        k.hash[i] = (unsigned char)(i * 7 + (unsigned char)key_id[2]);
    k.rate_per_min = 120;
    k.created_at_ms = created;
    return k;
}

static em_store_range_t range(int64_t from, int64_t to, unsigned limit, bool desc)
{
    em_store_range_t r = {from, to, limit, desc};
    return r;
}

static em_store_device_filter_t dev_filter(void)
{
    em_store_device_filter_t f = {NULL, -1, NULL, 0};
    return f;
}

static em_store_command_filter_t cmd_filter(void)
{
    em_store_command_filter_t f;
    memset(&f, 0, sizeof(f));
    f.state = -1;
    return f;
}

static em_store_event_filter_t ev_filter(void)
{
    em_store_event_filter_t f;
    memset(&f, 0, sizeof(f));
    f.kind = -1;
    f.min_severity = -1;
    return f;
}

/* ---------------------------------------------------------------------- */
/* Collectors                                                              */

#define ROWS_MAX 1100

typedef struct rows {
    size_t n;
    size_t stop_after; /* 0: never stop */
    char key[ROWS_MAX][80];
    int64_t t[ROWS_MAX];
    int64_t v[ROWS_MAX];
} rows_t;

static int rows_add(rows_t *r, const char *key, int64_t t, int64_t v)
{
    if (r->n < ROWS_MAX) {
        snprintf(r->key[r->n], sizeof(r->key[0]), "%s", key != NULL ? key : "");
        r->t[r->n] = t;
        r->v[r->n] = v;
    }
    r->n++;
    return r->stop_after != 0 && r->n >= r->stop_after;
}

static rows_t *rows_new(void)
{
    rows_t *r = calloc(1, sizeof(*r));
    assert_non_null(r);
    return r;
}

static int on_device(const em_store_device_t *d, void *ud)
{
    return rows_add(ud, d->id, d->created_at_ms, d->type);
}

static int on_group(const char *name, size_t members, int64_t created, void *ud)
{
    return rows_add(ud, name, created, (int64_t)members);
}

static int on_member(const char *group, const char *id, void *ud)
{
    char k[80];
    snprintf(k, sizeof(k), "%s/%s", group, id);
    return rows_add(ud, k, 0, 0);
}

static int on_status(const char *id, const em_status_t *s, void *ud)
{
    return rows_add(ud, id, s->last_seen_ms, s->battery_level);
}

static int on_telemetry(const char *id, const em_telemetry_t *t, void *ud)
{
    return rows_add(ud, id, t->timestamp_ms, (int64_t)llround(t->energy_wh * 1000));
}

static int on_command(const em_store_command_t *c, void *ud)
{
    return rows_add(ud, c->request_id, c->created_at_ms, c->state);
}

static int on_event(const em_store_event_t *ev, void *ud)
{
    return rows_add(ud, ev->type, ev->time_ms, ev->id);
}

static int on_user(const em_store_user_t *u, void *ud)
{
    return rows_add(ud, u->name, u->created_at_ms, u->role);
}

static int on_key(const em_store_api_key_t *k, void *ud)
{
    return rows_add(ud, k->key_id, k->created_at_ms, k->revoked_at_ms);
}

typedef struct rollups {
    size_t n;
    em_store_rollup_t r[64];
} rollups_t;

static int on_rollup(const em_store_rollup_t *r, void *ud)
{
    rollups_t *x = ud;
    if (x->n < 64)
        x->r[x->n] = *r;
    x->n++;
    return 0;
}

/* Copies of the full status / command of the last row seen. */
typedef struct status_copy {
    int calls;
    char id[64];
    em_status_t s;
    char firmware[64], errors[256], extra[256];
    bool errors_null, extra_null;
} status_copy_t;

static int on_status_copy(const char *id, const em_status_t *s, void *ud)
{
    status_copy_t *c = ud;
    c->calls++;
    snprintf(c->id, sizeof(c->id), "%s", id);
    c->s = *s;
    snprintf(c->firmware, sizeof(c->firmware), "%s", s->firmware_version);
    c->errors_null = s->errors_json == NULL;
    c->extra_null = s->extra_json == NULL;
    snprintf(c->errors, sizeof(c->errors), "%s", s->errors_json ? s->errors_json : "");
    snprintf(c->extra, sizeof(c->extra), "%s", s->extra_json ? s->extra_json : "");
    c->s.errors_json = NULL;
    c->s.extra_json = NULL;
    return 0;
}

typedef struct command_copy {
    int calls;
    em_store_command_t c;
    char payload[256];
    bool payload_null;
} command_copy_t;

static int on_command_copy(const em_store_command_t *c, void *ud)
{
    command_copy_t *x = ud;
    x->calls++;
    x->c = *c;
    x->payload_null = c->payload_json == NULL;
    snprintf(x->payload, sizeof(x->payload), "%s", c->payload_json ? c->payload_json : "");
    x->c.payload_json = NULL;
    return 0;
}

static em_command_state_t state_of(fixture_t *fx, unsigned n)
{
    char r[EM_REQUEST_ID_MAX + 1];
    rid(r, sizeof(r), n);
    command_copy_t c = {0};
    OK(em_store_command_get(fx->st, r, on_command_copy, &c, E));
    assert_int_equal(c.calls, 1);
    return c.c.state;
}

static size_t count_history(fixture_t *fx, const char *id)
{
    rows_t *r = rows_new();
    OK(em_store_status_history(fx->st, id, NULL, on_status, r, E));
    size_t n = r->n;
    free(r);
    return n;
}

static size_t count_all_history(fixture_t *fx, const char *id);

/* ---------------------------------------------------------------------- */
/* Opening                                                                 */

static void test_open_names_backend_and_schema(void **state)
{
    fixture_t *fx = fixture(state);
    assert_string_equal(em_store_backend(fx->st), g_backend == BE_SQLITE ? "sqlite" : "postgresql");
    assert_true(em_store_schema_version(fx->st) >= 1);
}

static void test_open_unknown_scheme_is_configuration_error(void **state)
{
    (void)fixture(state);
    em_store_t *st = NULL;
    FAILS_WITH(EM_ERR_CONFIGURATION, em_store_open("mysql://localhost/emiot", NULL, &st, E));
    assert_null(st);
}

/* The error of a failed connection never repeats the URL's password. */
static void test_open_failure_does_not_reveal_password(void **state)
{
    fixture_t *fx = fixture(state);
    em_store_t *st = NULL;
    em_error_t err;
    memset(&err, 0, sizeof(err));
    em_err_t rc;
    if (g_backend == BE_PG) {
        rc = em_store_open("postgresql://emiot:Sup3rSecretPw@/nosuchdb?host=/nonexistent-dir"
                           "&connect_timeout=2",
                           NULL, &st, &err);
        assert_int_equal(rc, EM_ERR_IO);
        assert_null(strstr(err.message, "Sup3rSecretPw"));
        /* A malformed URL is not quoted back either. */
        rc = em_store_open("postgresql://emiot:Sup3rSecretPw@/db?sslmode=%zz", NULL, &st, &err);
        assert_int_not_equal(rc, EM_OK);
        assert_null(strstr(err.message, "Sup3rSecretPw"));
    } else {
        char url[URL_N];
        snprintf(url, sizeof(url), "sqlite:%s/no/such/dir/emiot.db", fx->dir);
        rc = em_store_open(url, NULL, &st, &err);
        assert_int_equal(rc, EM_ERR_IO);
    }
    assert_null(st);
}

/* Writes schema_migrations version 99 directly, as a newer emiot would. */
static void mark_newer_schema(fixture_t *fx)
{
    if (g_backend == BE_SQLITE) {
        sqlite3 *db = NULL;
        assert_int_equal(sqlite3_open(fx->db_path, &db), SQLITE_OK);
        assert_int_equal(sqlite3_exec(db,
                                      "INSERT INTO schema_migrations (version, applied_at_ms) "
                                      "VALUES (99, 0)",
                                      NULL, NULL, NULL),
                         SQLITE_OK);
        sqlite3_close(db);
    } else {
        PGconn *c = PQconnectdb(fx->url);
        assert_int_equal(PQstatus(c), CONNECTION_OK);
        PGresult *res = PQexec(c, "INSERT INTO schema_migrations (version, applied_at_ms) "
                                  "VALUES (99, 0)");
        assert_int_equal(PQresultStatus(res), PGRES_COMMAND_OK);
        PQclear(res);
        PQfinish(c);
    }
}

static void test_open_refuses_newer_schema(void **state)
{
    fixture_t *fx = fixture(state);
    em_store_close(fx->st);
    fx->st = NULL;
    mark_newer_schema(fx);
    FAILS_WITH(EM_ERR_CONFIGURATION, open_store(fx, E));
    assert_null(fx->st);
}

typedef struct opener {
    const char *url;
    em_err_t rc;
    int version;
} opener_t;

static void *open_thread(void *arg)
{
    opener_t *o = arg;
    em_store_t *st = NULL;
    em_error_t err;
    em_store_options_t opts;
    options(&opts);
    o->rc = em_store_open(o->url, &opts, &st, &err);
    if (o->rc == EM_OK)
        o->version = em_store_schema_version(st);
    em_store_close(st);
    return NULL;
}

/* Two daemons starting together on a fresh database: both open, the schema
 * is applied once. */
static void test_concurrent_open_migrates_once(void **state)
{
    fixture_t *fx = fixture(state);
    em_store_close(fx->st);
    fx->st = NULL;
    char url[URL_N];
    if (g_backend == BE_SQLITE) {
        snprintf(url, sizeof(url), "sqlite:%s/fresh.db", fx->dir);
    } else {
        char name[32];
        snprintf(name, sizeof(name), "t%d", ++g_db_seq);
        assert_int_equal(em_test_pg_create_db(&g_pg, name, url, sizeof(url)), 0);
    }
    opener_t o[4];
    pthread_t th[4];
    for (int i = 0; i < 4; i++) {
        o[i].url = url;
        o[i].rc = EM_ERR_INTERNAL;
        o[i].version = 0;
        assert_int_equal(pthread_create(&th[i], NULL, open_thread, &o[i]), 0);
    }
    for (int i = 0; i < 4; i++)
        pthread_join(th[i], NULL);
    for (int i = 0; i < 4; i++) {
        assert_int_equal(o[i].rc, EM_OK);
        assert_int_equal(o[i].version, o[0].version);
    }
    snprintf(fx->url, sizeof(fx->url), "%s", url);
    reopen(fx);
    add_device(fx, "dev-1");
}

/* ---------------------------------------------------------------------- */
/* Devices                                                                 */

static void test_device_insert_get_roundtrip(void **state)
{
    fixture_t *fx = fixture(state);
    em_store_device_t d = device("dev-1", EM_DEVICE_ACTUATOR);
    snprintf(d.name, sizeof(d.name), "Pompe \"cave\" \\ chaudière");
    d.config.has = EM_CONFIG_HAS_REPORTING_INTERVAL | EM_CONFIG_HAS_AUTO_WAKE |
                   EM_CONFIG_HAS_SECURITY_LEVEL | EM_CONFIG_HAS_SLEEP_THRESHOLD;
    d.config.reporting_interval = 300;
    d.config.auto_wake = true;
    d.config.security_level = 4;
    d.config.sleep_threshold = 15;
    d.enabled = false;
    d.created_at_ms = DAY0 + 1;
    d.updated_at_ms = DAY0 + 2;
    OK(em_store_device_insert(fx->st, &d, E));
    em_store_device_t got;
    OK(em_store_device_get(fx->st, "dev-1", &got, E));
    assert_string_equal(got.id, "dev-1");
    assert_string_equal(got.name, d.name);
    assert_int_equal(got.type, EM_DEVICE_ACTUATOR);
    assert_int_equal(got.config.has, d.config.has);
    assert_int_equal(got.config.reporting_interval, 300);
    assert_true(got.config.auto_wake);
    assert_int_equal(got.config.security_level, 4);
    assert_int_equal(got.config.sleep_threshold, 15);
    assert_false(got.enabled);
    assert_int_equal(got.created_at_ms, DAY0 + 1);
    assert_int_equal(got.updated_at_ms, DAY0 + 2);
}

static void test_device_insert_duplicate_is_exists(void **state)
{
    fixture_t *fx = fixture(state);
    add_device(fx, "dev-1");
    em_store_device_t d = device("dev-1", EM_DEVICE_CAMERA);
    FAILS_WITH(EM_ERR_EXISTS, em_store_device_insert(fx->st, &d, E));
    em_store_device_t got;
    OK(em_store_device_get(fx->st, "dev-1", &got, E));
    assert_int_equal(got.type, EM_DEVICE_SENSOR);
}

static void test_device_get_missing_is_not_found(void **state)
{
    fixture_t *fx = fixture(state);
    em_store_device_t got;
    FAILS_WITH(EM_ERR_DEVICE_NOT_FOUND, em_store_device_get(fx->st, "nobody", &got, E));
}

static void test_device_update_replaces_fields(void **state)
{
    fixture_t *fx = fixture(state);
    add_device(fx, "dev-1");
    em_store_device_t d = device("dev-1", EM_DEVICE_GATEWAY);
    snprintf(d.name, sizeof(d.name), "renamed");
    d.enabled = false;
    d.created_at_ms = DAY0 + 999; /* ignored: creation time stays */
    d.updated_at_ms = DAY0 + HOUR;
    OK(em_store_device_update(fx->st, &d, E));
    em_store_device_t got;
    OK(em_store_device_get(fx->st, "dev-1", &got, E));
    assert_string_equal(got.name, "renamed");
    assert_int_equal(got.type, EM_DEVICE_GATEWAY);
    assert_false(got.enabled);
    assert_int_equal(got.created_at_ms, DAY0);
    assert_int_equal(got.updated_at_ms, DAY0 + HOUR);
}

static void test_device_update_missing_is_not_found(void **state)
{
    fixture_t *fx = fixture(state);
    em_store_device_t d = device("ghost", EM_DEVICE_SENSOR);
    FAILS_WITH(EM_ERR_DEVICE_NOT_FOUND, em_store_device_update(fx->st, &d, E));
}

/* Memberships, status, history, telemetry and rollups go with the device;
 * commands and events stay for audit. */
static void test_device_delete_keeps_commands_and_events(void **state)
{
    fixture_t *fx = fixture(state);
    add_device(fx, "dev-1");
    add_device(fx, "dev-2");
    OK(em_store_group_insert(fx->st, "floor 1", DAY0, E));
    OK(em_store_member_add(fx->st, "floor 1", "dev-1", E));
    OK(em_store_member_add(fx->st, "floor 1", "dev-2", E));
    em_status_t s = status_at(DAY0 + 1000, 50);
    OK(em_store_enqueue_status(fx->st, "dev-1", &s, E));
    OK(em_store_enqueue_status(fx->st, "dev-2", &s, E));
    em_telemetry_t t = sample(DAY0 + 1000, 10, true, 5);
    OK(em_store_enqueue_telemetry(fx->st, "dev-1", &t, 0, false, E));
    flush(fx);
    em_store_command_t c = command(1, "dev-1", NULL, DAY0);
    OK(em_store_command_insert(fx->st, &c, E));
    em_store_event_t ev = event(EM_EVKIND_DEVICE, "tamper", EM_SEV_HIGH, "dev-1", DAY0);
    OK(em_store_event_insert(fx->st, &ev, E));

    OK(em_store_device_delete(fx->st, "dev-1", E));

    em_store_device_t got;
    FAILS_WITH(EM_ERR_DEVICE_NOT_FOUND, em_store_device_get(fx->st, "dev-1", &got, E));
    FAILS_WITH(EM_ERR_DEVICE_NOT_FOUND,
               em_store_status_latest(fx->st, "dev-1", on_status, &(rows_t){0}, E));
    assert_int_equal(count_history(fx, "dev-2"), 1);
    rows_t *r = rows_new();
    FAILS_WITH(EM_ERR_DEVICE_NOT_FOUND,
               em_store_status_history(fx->st, "dev-1", NULL, on_status, r, E));
    FAILS_WITH(EM_ERR_DEVICE_NOT_FOUND,
               em_store_telemetry_list(fx->st, "dev-1", NULL, on_telemetry, r, E));
    rollups_t ru = {0};
    FAILS_WITH(EM_ERR_DEVICE_NOT_FOUND,
               em_store_rollup_device(fx->st, "dev-1", EM_ROLLUP_HOUR, NULL, on_rollup, &ru, E));
    assert_int_equal(r->n, 0);
    assert_int_equal(ru.n, 0);
    /* A device made again with the same id starts with nothing. */
    add_device(fx, "dev-1");
    assert_int_equal(count_history(fx, "dev-1"), 0);
    OK(em_store_rollup_device(fx->st, "dev-1", EM_ROLLUP_HOUR, NULL, on_rollup, &ru, E));
    OK(em_store_telemetry_list(fx->st, "dev-1", NULL, on_telemetry, r, E));
    assert_int_equal(r->n, 0);
    assert_int_equal(ru.n, 0);
    OK(em_store_device_delete(fx->st, "dev-1", E));
    OK(em_store_member_list(fx->st, on_member, r, E));
    assert_int_equal(r->n, 1);
    assert_string_equal(r->key[0], "floor 1/dev-2");

    assert_int_equal(state_of(fx, 1), EM_CMD_QUEUED);
    memset(r, 0, sizeof(*r));
    em_store_event_filter_t f = ev_filter();
    f.device_id = "dev-1";
    OK(em_store_event_list(fx->st, &f, on_event, r, E));
    assert_int_equal(r->n, 1);
    free(r);
}

static void test_device_delete_missing_is_not_found(void **state)
{
    fixture_t *fx = fixture(state);
    FAILS_WITH(EM_ERR_DEVICE_NOT_FOUND, em_store_device_delete(fx->st, "ghost", E));
}

/* Ids sort bytewise (upper case before lower case, '-' before digits),
 * whatever the database's locale. */
static void test_device_list_orders_by_id_and_pages(void **state)
{
    fixture_t *fx = fixture(state);
    const char *ids[] = {"b-2", "B-1", "a-10", "a-9", "a_1", "A-0", "c-3"};
    for (size_t i = 0; i < 7; i++)
        add_device(fx, ids[i]);
    const char *sorted[] = {"A-0", "B-1", "a-10", "a-9", "a_1", "b-2", "c-3"};
    rows_t *r = rows_new();
    size_t count = 0;
    OK(em_store_device_list(fx->st, NULL, on_device, r, &count, E));
    assert_int_equal(r->n, 7);
    assert_int_equal(count, 7);
    for (size_t i = 0; i < 7; i++)
        assert_string_equal(r->key[i], sorted[i]);

    /* Keyset paging: 3 at a time, after the last id of the page before. */
    size_t seen = 0;
    char after[64] = "";
    for (int page = 0; page < 4; page++) {
        memset(r, 0, sizeof(*r));
        em_store_device_filter_t f = dev_filter();
        f.limit = 3;
        f.after = after[0] != '\0' ? after : NULL;
        OK(em_store_device_list(fx->st, &f, on_device, r, &count, E));
        assert_int_equal(count, r->n);
        assert_int_equal(r->n, page < 2 ? 3 : page == 2 ? 1 : 0);
        for (size_t i = 0; i < r->n; i++)
            assert_string_equal(r->key[i], sorted[seen + i]);
        seen += r->n;
        if (r->n > 0)
            snprintf(after, sizeof(after), "%s", r->key[r->n - 1]);
    }
    assert_int_equal(seen, 7);
    free(r);
}

static void test_device_list_default_limit_is_page_default(void **state)
{
    fixture_t *fx = fixture(state);
    for (int i = 0; i < EM_STORE_PAGE_DEFAULT + 5; i++) {
        char id[16];
        snprintf(id, sizeof(id), "dev-%04d", i);
        add_device(fx, id);
    }
    rows_t *r = rows_new();
    OK(em_store_device_list(fx->st, NULL, on_device, r, NULL, E));
    assert_int_equal(r->n, EM_STORE_PAGE_DEFAULT);
    free(r);
}

static void test_device_list_filters_type(void **state)
{
    fixture_t *fx = fixture(state);
    em_store_device_t a = device("cam-1", EM_DEVICE_CAMERA);
    em_store_device_t b = device("sen-1", EM_DEVICE_SENSOR);
    em_store_device_t c = device("cam-2", EM_DEVICE_CAMERA);
    OK(em_store_device_insert(fx->st, &a, E));
    OK(em_store_device_insert(fx->st, &b, E));
    OK(em_store_device_insert(fx->st, &c, E));
    rows_t *r = rows_new();
    em_store_device_filter_t f = dev_filter();
    f.type = EM_DEVICE_CAMERA;
    OK(em_store_device_list(fx->st, &f, on_device, r, NULL, E));
    assert_int_equal(r->n, 2);
    assert_string_equal(r->key[0], "cam-1");
    assert_string_equal(r->key[1], "cam-2");
    free(r);
}

static void test_device_list_filters_group(void **state)
{
    fixture_t *fx = fixture(state);
    add_device(fx, "dev-1");
    add_device(fx, "dev-2");
    add_device(fx, "dev-3");
    OK(em_store_group_insert(fx->st, "roof", DAY0, E));
    OK(em_store_member_add(fx->st, "roof", "dev-3", E));
    OK(em_store_member_add(fx->st, "roof", "dev-1", E));
    rows_t *r = rows_new();
    em_store_device_filter_t f = dev_filter();
    f.group = "roof";
    OK(em_store_device_list(fx->st, &f, on_device, r, NULL, E));
    assert_int_equal(r->n, 2);
    assert_string_equal(r->key[0], "dev-1");
    assert_string_equal(r->key[1], "dev-3");
    /* An empty group is not a missing one. */
    OK(em_store_group_insert(fx->st, "empty", DAY0, E));
    memset(r, 0, sizeof(*r));
    f.group = "empty";
    OK(em_store_device_list(fx->st, &f, on_device, r, NULL, E));
    assert_int_equal(r->n, 0);
    free(r);
}

static void test_device_list_missing_group_is_group_not_found(void **state)
{
    fixture_t *fx = fixture(state);
    em_store_device_filter_t f = dev_filter();
    f.group = "nowhere";
    FAILS_WITH(EM_ERR_GROUP_NOT_FOUND,
               em_store_device_list(fx->st, &f, on_device, &(rows_t){0}, NULL, E));
}

static void test_device_list_stops_when_callback_says_so(void **state)
{
    fixture_t *fx = fixture(state);
    for (int i = 0; i < 5; i++) {
        char id[16];
        snprintf(id, sizeof(id), "dev-%d", i);
        add_device(fx, id);
    }
    rows_t *r = rows_new();
    r->stop_after = 2;
    size_t count = 0;
    OK(em_store_device_list(fx->st, NULL, on_device, r, &count, E));
    assert_int_equal(r->n, 2);
    assert_int_equal(count, 2);
    /* The connection is usable right after an early stop. */
    em_store_device_t got;
    OK(em_store_device_get(fx->st, "dev-4", &got, E));
    free(r);
}

/* ---------------------------------------------------------------------- */
/* Groups and members                                                      */

static void test_group_list_counts_members(void **state)
{
    fixture_t *fx = fixture(state);
    add_device(fx, "dev-1");
    add_device(fx, "dev-2");
    OK(em_store_group_insert(fx->st, "zeta", DAY0 + 1, E));
    OK(em_store_group_insert(fx->st, "Alpha", DAY0 + 2, E));
    OK(em_store_group_insert(fx->st, "beta", DAY0 + 3, E));
    OK(em_store_member_add(fx->st, "beta", "dev-1", E));
    OK(em_store_member_add(fx->st, "beta", "dev-2", E));
    OK(em_store_member_add(fx->st, "zeta", "dev-2", E));
    rows_t *r = rows_new();
    OK(em_store_group_list(fx->st, on_group, r, E));
    assert_int_equal(r->n, 3);
    assert_string_equal(r->key[0], "Alpha");
    assert_int_equal(r->v[0], 0);
    assert_int_equal(r->t[0], DAY0 + 2);
    assert_string_equal(r->key[1], "beta");
    assert_int_equal(r->v[1], 2);
    assert_string_equal(r->key[2], "zeta");
    assert_int_equal(r->v[2], 1);
    free(r);
}

static void test_group_insert_duplicate_is_exists(void **state)
{
    fixture_t *fx = fixture(state);
    OK(em_store_group_insert(fx->st, "roof", DAY0, E));
    FAILS_WITH(EM_ERR_EXISTS, em_store_group_insert(fx->st, "roof", DAY0 + 1, E));
}

static void test_group_delete_keeps_devices(void **state)
{
    fixture_t *fx = fixture(state);
    add_device(fx, "dev-1");
    OK(em_store_group_insert(fx->st, "roof", DAY0, E));
    OK(em_store_member_add(fx->st, "roof", "dev-1", E));
    OK(em_store_group_delete(fx->st, "roof", E));
    rows_t *r = rows_new();
    OK(em_store_group_list(fx->st, on_group, r, E));
    assert_int_equal(r->n, 0);
    OK(em_store_member_list(fx->st, on_member, r, E));
    assert_int_equal(r->n, 0);
    em_store_device_t got;
    OK(em_store_device_get(fx->st, "dev-1", &got, E));
    /* The name is free again. */
    OK(em_store_group_insert(fx->st, "roof", DAY0, E));
    free(r);
}

static void test_group_delete_missing_is_group_not_found(void **state)
{
    fixture_t *fx = fixture(state);
    FAILS_WITH(EM_ERR_GROUP_NOT_FOUND, em_store_group_delete(fx->st, "nowhere", E));
}

static void test_member_add_twice_is_ok(void **state)
{
    fixture_t *fx = fixture(state);
    add_device(fx, "dev-1");
    OK(em_store_group_insert(fx->st, "roof", DAY0, E));
    OK(em_store_member_add(fx->st, "roof", "dev-1", E));
    OK(em_store_member_add(fx->st, "roof", "dev-1", E));
    rows_t *r = rows_new();
    OK(em_store_member_list(fx->st, on_member, r, E));
    assert_int_equal(r->n, 1);
    free(r);
}

static void test_member_add_missing_group_or_device(void **state)
{
    fixture_t *fx = fixture(state);
    add_device(fx, "dev-1");
    OK(em_store_group_insert(fx->st, "roof", DAY0, E));
    FAILS_WITH(EM_ERR_GROUP_NOT_FOUND, em_store_member_add(fx->st, "nowhere", "dev-1", E));
    FAILS_WITH(EM_ERR_DEVICE_NOT_FOUND, em_store_member_add(fx->st, "roof", "ghost", E));
}

static void test_member_remove_codes(void **state)
{
    fixture_t *fx = fixture(state);
    add_device(fx, "dev-1");
    add_device(fx, "dev-2");
    OK(em_store_group_insert(fx->st, "roof", DAY0, E));
    OK(em_store_member_add(fx->st, "roof", "dev-1", E));
    FAILS_WITH(EM_ERR_GROUP_NOT_FOUND, em_store_member_remove(fx->st, "nowhere", "dev-1", E));
    FAILS_WITH(EM_ERR_DEVICE_NOT_FOUND, em_store_member_remove(fx->st, "roof", "dev-2", E));
    OK(em_store_member_remove(fx->st, "roof", "dev-1", E));
    FAILS_WITH(EM_ERR_DEVICE_NOT_FOUND, em_store_member_remove(fx->st, "roof", "dev-1", E));
}

static void test_member_list_every_pair_in_order(void **state)
{
    fixture_t *fx = fixture(state);
    add_device(fx, "dev-1");
    add_device(fx, "dev-2");
    OK(em_store_group_insert(fx->st, "b-group", DAY0, E));
    OK(em_store_group_insert(fx->st, "a-group", DAY0, E));
    OK(em_store_member_add(fx->st, "b-group", "dev-2", E));
    OK(em_store_member_add(fx->st, "b-group", "dev-1", E));
    OK(em_store_member_add(fx->st, "a-group", "dev-2", E));
    rows_t *r = rows_new();
    OK(em_store_member_list(fx->st, on_member, r, E));
    assert_int_equal(r->n, 3);
    assert_string_equal(r->key[0], "a-group/dev-2");
    assert_string_equal(r->key[1], "b-group/dev-1");
    assert_string_equal(r->key[2], "b-group/dev-2");
    free(r);
}

/* ---------------------------------------------------------------------- */
/* Status                                                                  */

static void test_status_latest_is_last_enqueued(void **state)
{
    fixture_t *fx = fixture(state);
    add_device(fx, "dev-1");
    for (int i = 0; i < 5; i++) {
        em_status_t s = status_at(DAY0 + i * 1000, (uint8_t)(90 - i));
        OK(em_store_enqueue_status(fx->st, "dev-1", &s, E));
    }
    flush(fx);
    status_copy_t c = {0};
    OK(em_store_status_latest(fx->st, "dev-1", on_status_copy, &c, E));
    assert_int_equal(c.calls, 1);
    assert_int_equal(c.s.battery_level, 86);
    assert_int_equal(c.s.last_seen_ms, DAY0 + 4000);
    assert_int_equal(count_history(fx, "dev-1"), 5);
}

static void test_status_fields_roundtrip(void **state)
{
    fixture_t *fx = fixture(state);
    add_device(fx, "dev-1");
    em_status_t s = status_at(DAY0 + 5, 75);
    s.has |= EM_STATUS_HAS_POWER_MODE | EM_STATUS_HAS_CONNECTION | EM_STATUS_HAS_FIRMWARE |
             EM_STATUS_HAS_SIGNAL | EM_STATUS_HAS_ERRORS | EM_STATUS_HAS_EXTRA;
    s.power_mode = EM_POWER_LOW_POWER;
    s.connection = EM_CONN_INTERMITTENT;
    s.signal_strength = -67;
    snprintf(s.firmware_version, sizeof(s.firmware_version), "1.2.3-rc.1");
    s.errors_json = "[\"sensor \\\"A\\\" drift\",\"low\\\\battery\"]";
    s.extra_json = "{\"room\":\"salle de bains\",\n\t\"floor\":2,\"path\":\"C:\\\\x\"}\r";
    OK(em_store_enqueue_status(fx->st, "dev-1", &s, E));
    flush(fx);
    status_copy_t c = {0};
    OK(em_store_status_latest(fx->st, "dev-1", on_status_copy, &c, E));
    assert_int_equal(c.calls, 1);
    assert_string_equal(c.id, "dev-1");
    assert_int_equal(c.s.has & ~EM_STATUS_HAS_LAST_SEEN, s.has & ~EM_STATUS_HAS_LAST_SEEN);
    assert_int_equal(c.s.battery_level, 75);
    assert_int_equal(c.s.power_mode, EM_POWER_LOW_POWER);
    assert_int_equal(c.s.connection, EM_CONN_INTERMITTENT);
    assert_int_equal(c.s.signal_strength, -67);
    assert_string_equal(c.firmware, "1.2.3-rc.1");
    assert_string_equal(c.errors, s.errors_json);
    assert_string_equal(c.extra, s.extra_json);
    /* The history row holds the same. */
    memset(&c, 0, sizeof(c));
    OK(em_store_status_history(fx->st, "dev-1", NULL, on_status_copy, &c, E));
    assert_int_equal(c.calls, 1);
    assert_string_equal(c.extra, s.extra_json);
    assert_int_equal(c.s.last_seen_ms, DAY0 + 5);
}

static void test_status_without_json_reads_back_null(void **state)
{
    fixture_t *fx = fixture(state);
    add_device(fx, "dev-1");
    em_status_t s = status_at(DAY0, 10);
    OK(em_store_enqueue_status(fx->st, "dev-1", &s, E));
    flush(fx);
    status_copy_t c = {0};
    OK(em_store_status_latest(fx->st, "dev-1", on_status_copy, &c, E));
    assert_true(c.errors_null);
    assert_true(c.extra_null);
}

static void test_status_latest_missing_is_device_not_found(void **state)
{
    fixture_t *fx = fixture(state);
    add_device(fx, "dev-1");
    FAILS_WITH(EM_ERR_DEVICE_NOT_FOUND,
               em_store_status_latest(fx->st, "dev-1", on_status, &(rows_t){0}, E));
}

static void test_status_latest_of_every_device(void **state)
{
    fixture_t *fx = fixture(state);
    add_device(fx, "dev-2");
    add_device(fx, "dev-1");
    add_device(fx, "dev-3");
    em_status_t s1 = status_at(DAY0 + 1, 11), s2 = status_at(DAY0 + 2, 22);
    OK(em_store_enqueue_status(fx->st, "dev-2", &s2, E));
    OK(em_store_enqueue_status(fx->st, "dev-1", &s1, E));
    flush(fx);
    rows_t *r = rows_new();
    OK(em_store_status_latest(fx->st, NULL, on_status, r, E));
    assert_int_equal(r->n, 2);
    assert_string_equal(r->key[0], "dev-1");
    assert_int_equal(r->v[0], 11);
    assert_string_equal(r->key[1], "dev-2");
    assert_int_equal(r->v[1], 22);
    free(r);
}

/* Records for a device that does not exist are dropped, not an error that
 * would stop the writer. */
static void test_status_for_unknown_device_is_skipped(void **state)
{
    fixture_t *fx = fixture(state);
    add_device(fx, "dev-1");
    em_status_t s = status_at(DAY0, 10);
    OK(em_store_enqueue_status(fx->st, "ghost", &s, E));
    em_telemetry_t t = sample(DAY0, 5, false, 0);
    OK(em_store_enqueue_telemetry(fx->st, "ghost", &t, 1, false, E));
    OK(em_store_enqueue_status(fx->st, "dev-1", &s, E));
    flush(fx);
    em_store_stats_t stats;
    em_store_stats(fx->st, &stats);
    assert_int_equal(stats.write_errors, 0);
    assert_int_equal(stats.committed, 3);
    FAILS_WITH(EM_ERR_DEVICE_NOT_FOUND,
               em_store_status_latest(fx->st, "ghost", on_status, &(rows_t){0}, E));
    assert_int_equal(count_history(fx, "dev-1"), 1);
    /* The device made afterwards finds none of them. */
    add_device(fx, "ghost");
    assert_int_equal(count_history(fx, "ghost"), 0);
    rollups_t ru = {0};
    OK(em_store_rollup_device(fx->st, "ghost", EM_ROLLUP_HOUR, NULL, on_rollup, &ru, E));
    assert_int_equal(ru.n, 0);
}

/* History, telemetry and rollups of a device that does not exist: 404, not
 * an empty list. */
static void test_reads_of_unknown_device_are_device_not_found(void **state)
{
    fixture_t *fx = fixture(state);
    add_device(fx, "dev-1");
    rows_t *r = rows_new();
    rollups_t ru = {0};
    FAILS_WITH(EM_ERR_DEVICE_NOT_FOUND,
               em_store_status_history(fx->st, "ghost", NULL, on_status, r, E));
    FAILS_WITH(EM_ERR_DEVICE_NOT_FOUND,
               em_store_telemetry_list(fx->st, "ghost", NULL, on_telemetry, r, E));
    FAILS_WITH(EM_ERR_DEVICE_NOT_FOUND,
               em_store_rollup_device(fx->st, "ghost", EM_ROLLUP_DAY, NULL, on_rollup, &ru, E));
    /* A known device without rows: an empty list. */
    OK(em_store_status_history(fx->st, "dev-1", NULL, on_status, r, E));
    OK(em_store_telemetry_list(fx->st, "dev-1", NULL, on_telemetry, r, E));
    OK(em_store_rollup_device(fx->st, "dev-1", EM_ROLLUP_DAY, NULL, on_rollup, &ru, E));
    assert_int_equal(r->n, 0);
    assert_int_equal(ru.n, 0);
    free(r);
}

/* The latest status is the newest by time: a late, older status goes to
 * history only. */
static void test_status_latest_ignores_older_status(void **state)
{
    fixture_t *fx = fixture(state);
    add_device(fx, "dev-1");
    em_status_t newer = status_at(DAY0 + HOUR, 70);
    OK(em_store_enqueue_status(fx->st, "dev-1", &newer, E));
    flush(fx);
    em_status_t older = status_at(DAY0, 20);
    OK(em_store_enqueue_status(fx->st, "dev-1", &older, E));
    flush(fx);
    status_copy_t c = {0};
    OK(em_store_status_latest(fx->st, "dev-1", on_status_copy, &c, E));
    assert_int_equal(c.s.battery_level, 70);
    /* Within one batch too. */
    em_status_t a = status_at(DAY0 + 3 * HOUR, 33), b = status_at(DAY0 + 2 * HOUR, 22);
    OK(em_store_enqueue_status(fx->st, "dev-1", &a, E));
    OK(em_store_enqueue_status(fx->st, "dev-1", &b, E));
    flush(fx);
    memset(&c, 0, sizeof(c));
    OK(em_store_status_latest(fx->st, "dev-1", on_status_copy, &c, E));
    assert_int_equal(c.s.battery_level, 33);
    assert_int_equal(count_history(fx, "dev-1"), 4);
}

/* Statuses with the same time come back in the order they were queued
 * (and the latest is the last of them). */
static void test_status_history_equal_times_keep_queue_order(void **state)
{
    fixture_t *fx = fixture(state);
    add_device(fx, "dev-1");
    for (int i = 0; i < 6; i++) {
        em_status_t s = status_at(DAY0, (uint8_t)(10 + i));
        OK(em_store_enqueue_status(fx->st, "dev-1", &s, E));
        if (i == 2)
            flush(fx);
    }
    flush(fx);
    rows_t *r = rows_new();
    OK(em_store_status_history(fx->st, "dev-1", NULL, on_status, r, E));
    assert_int_equal(r->n, 6);
    for (int i = 0; i < 6; i++)
        assert_int_equal(r->v[i], 10 + i);
    memset(r, 0, sizeof(*r));
    em_store_range_t rg = range(0, 0, 0, true);
    OK(em_store_status_history(fx->st, "dev-1", &rg, on_status, r, E));
    for (int i = 0; i < 6; i++)
        assert_int_equal(r->v[i], 15 - i);
    status_copy_t c = {0};
    OK(em_store_status_latest(fx->st, "dev-1", on_status_copy, &c, E));
    assert_int_equal(c.s.battery_level, 15);
    free(r);
}
static void test_status_history_range_order_limit(void **state)
{
    fixture_t *fx = fixture(state);
    add_device(fx, "dev-1");
    add_device(fx, "dev-2");
    /* Enqueued out of time order: history is read in time order. */
    int order[] = {3, 0, 9, 1, 8, 2, 7, 4, 6, 5};
    for (int i = 0; i < 10; i++) {
        em_status_t s = status_at(DAY0 + order[i] * MIN, (uint8_t)order[i]);
        OK(em_store_enqueue_status(fx->st, "dev-1", &s, E));
    }
    em_status_t other = status_at(DAY0 + 5 * MIN, 99);
    OK(em_store_enqueue_status(fx->st, "dev-2", &other, E));
    flush(fx);

    rows_t *r = rows_new();
    OK(em_store_status_history(fx->st, "dev-1", NULL, on_status, r, E));
    assert_int_equal(r->n, 10);
    for (int i = 0; i < 10; i++)
        assert_int_equal(r->t[i], DAY0 + i * MIN);

    /* [2 min, 6 min): from inclusive, to exclusive. */
    memset(r, 0, sizeof(*r));
    em_store_range_t rg = range(DAY0 + 2 * MIN, DAY0 + 6 * MIN, 0, false);
    OK(em_store_status_history(fx->st, "dev-1", &rg, on_status, r, E));
    assert_int_equal(r->n, 4);
    assert_int_equal(r->v[0], 2);
    assert_int_equal(r->v[3], 5);

    /* Newest first, limited. */
    memset(r, 0, sizeof(*r));
    rg = range(0, 0, 3, true);
    OK(em_store_status_history(fx->st, "dev-1", &rg, on_status, r, E));
    assert_int_equal(r->n, 3);
    assert_int_equal(r->v[0], 9);
    assert_int_equal(r->v[1], 8);
    assert_int_equal(r->v[2], 7);

    /* Only a lower bound; newest first within it. */
    memset(r, 0, sizeof(*r));
    rg = range(DAY0 + 8 * MIN, 0, 0, true);
    OK(em_store_status_history(fx->st, "dev-1", &rg, on_status, r, E));
    assert_int_equal(r->n, 2);
    assert_int_equal(r->v[0], 9);

    /* Early stop. */
    memset(r, 0, sizeof(*r));
    r->stop_after = 1;
    OK(em_store_status_history(fx->st, "dev-1", NULL, on_status, r, E));
    assert_int_equal(r->n, 1);
    free(r);
}

/* ---------------------------------------------------------------------- */
/* Telemetry and rollups                                                   */

static void test_telemetry_list_range_roundtrip(void **state)
{
    fixture_t *fx = fixture(state);
    add_device(fx, "dev-1");
    for (int i = 0; i < 6; i++) {
        em_telemetry_t t = sample(DAY0 + i * MIN, 1000.5 + i, true, 12.25);
        t.has |= EM_TELEMETRY_HAS_VOLTAGE | EM_TELEMETRY_HAS_CURRENT |
                 EM_TELEMETRY_HAS_TEMPERATURE | EM_TELEMETRY_HAS_HUMIDITY |
                 EM_TELEMETRY_HAS_BATTERY;
        t.voltage_v = 230.1;
        t.current_a = 0.053;
        t.temperature = -12.5;
        t.humidity = 40.125;
        t.battery = 80;
        OK(em_store_enqueue_telemetry(fx->st, "dev-1", &t, i == 0 ? 0 : 1, false, E));
    }
    flush(fx);
    rows_t *r = rows_new();
    em_store_range_t rg = range(DAY0 + MIN, DAY0 + 4 * MIN, 0, false);
    OK(em_store_telemetry_list(fx->st, "dev-1", &rg, on_telemetry, r, E));
    assert_int_equal(r->n, 3);
    assert_int_equal(r->t[0], DAY0 + MIN);
    assert_int_equal(r->v[0], 1001500);
    memset(r, 0, sizeof(*r));
    rg = range(0, 0, 2, true);
    OK(em_store_telemetry_list(fx->st, "dev-1", &rg, on_telemetry, r, E));
    assert_int_equal(r->n, 2);
    assert_int_equal(r->t[0], DAY0 + 5 * MIN);
    free(r);
}

typedef struct tel_copy {
    int calls;
    em_telemetry_t t;
} tel_copy_t;

static int on_tel_copy(const char *id, const em_telemetry_t *t, void *ud)
{
    (void)id;
    tel_copy_t *c = ud;
    c->calls++;
    c->t = *t;
    return 0;
}

static void test_telemetry_fields_roundtrip_exactly(void **state)
{
    fixture_t *fx = fixture(state);
    add_device(fx, "dev-1");
    em_telemetry_t t = sample(DAY0, 10450.2, true, 0.1 + 0.2);
    t.has |= EM_TELEMETRY_HAS_VOLTAGE | EM_TELEMETRY_HAS_CURRENT | EM_TELEMETRY_HAS_TEMPERATURE |
             EM_TELEMETRY_HAS_HUMIDITY | EM_TELEMETRY_HAS_BATTERY;
    t.voltage_v = 230.1;
    t.current_a = 1.0 / 3.0;
    t.temperature = -49.999999999;
    t.humidity = 99.5;
    t.battery = 7;
    OK(em_store_enqueue_telemetry(fx->st, "dev-1", &t, 0, false, E));
    flush(fx);
    tel_copy_t c = {0};
    OK(em_store_telemetry_list(fx->st, "dev-1", NULL, on_tel_copy, &c, E));
    assert_int_equal(c.calls, 1);
    assert_int_equal(c.t.has, t.has);
    assert_int_equal(c.t.timestamp_ms, DAY0);
    assert_true(c.t.energy_wh == t.energy_wh);
    assert_true(c.t.power_w == t.power_w);
    assert_true(c.t.voltage_v == t.voltage_v);
    assert_true(c.t.current_a == t.current_a);
    assert_true(c.t.temperature == t.temperature);
    assert_true(c.t.humidity == t.humidity);
    assert_int_equal(c.t.battery, 7);
}

/* Energy is the sum of the deltas the manager computed (a reset contributes
 * 0 and is counted); power is averaged over the samples that had it. The
 * samples come in two batches: rollup rows add up across batches. */
static void enqueue_d1_samples(fixture_t *fx)
{
    struct {
        int64_t t;
        double energy, delta;
        bool has_power;
        double power;
        bool reset;
    } s[] = {
        {DAY0 + 10 * MIN, 100, 0, true, 10, false},  {DAY0 + 20 * MIN, 150, 50, true, 20, false},
        {DAY0 + 70 * MIN, 175, 25, true, 30, false}, {DAY0 + 80 * MIN, 5, 0, true, 40, true},
        {DAY0 + 90 * MIN, 10, 5, false, 0, false},   {DAY0 + DAY + MIN, 20, 10, true, 4, false},
    };
    for (size_t i = 0; i < sizeof(s) / sizeof(s[0]); i++) {
        em_telemetry_t t = sample(s[i].t, s[i].energy, s[i].has_power, s[i].power);
        OK(em_store_enqueue_telemetry(fx->st, "dev-1", &t, s[i].delta, s[i].reset, E));
        if (i == 2)
            flush(fx);
    }
    flush(fx);
}

static void test_rollup_device_hour_and_day(void **state)
{
    fixture_t *fx = fixture(state);
    add_device(fx, "dev-1");
    enqueue_d1_samples(fx);

    rollups_t h = {0};
    OK(em_store_rollup_device(fx->st, "dev-1", EM_ROLLUP_HOUR, NULL, on_rollup, &h, E));
    assert_int_equal(h.n, 3);
    assert_int_equal(h.r[0].bucket_ms, DAY0);
    assert_int_equal(h.r[0].samples, 2);
    assert_true(fabs(h.r[0].energy_wh - 50) < EPS);
    assert_true(fabs(h.r[0].power_avg_w - 15) < EPS);
    assert_true(fabs(h.r[0].power_max_w - 20) < EPS);
    assert_int_equal(h.r[0].resets, 0);
    assert_int_equal(h.r[0].devices, 1);
    assert_int_equal(h.r[1].bucket_ms, DAY0 + HOUR);
    assert_int_equal(h.r[1].samples, 3);
    assert_true(fabs(h.r[1].energy_wh - 30) < EPS);
    assert_true(fabs(h.r[1].power_avg_w - 35) < EPS);
    assert_true(fabs(h.r[1].power_max_w - 40) < EPS);
    assert_int_equal(h.r[1].resets, 1);
    assert_int_equal(h.r[2].bucket_ms, DAY0 + DAY);

    rollups_t d = {0};
    OK(em_store_rollup_device(fx->st, "dev-1", EM_ROLLUP_DAY, NULL, on_rollup, &d, E));
    assert_int_equal(d.n, 2);
    assert_int_equal(d.r[0].bucket_ms, DAY0);
    assert_int_equal(d.r[0].samples, 5);
    assert_true(fabs(d.r[0].energy_wh - 80) < EPS);
    assert_true(fabs(d.r[0].power_avg_w - 25) < EPS);
    assert_true(fabs(d.r[0].power_max_w - 40) < EPS);
    assert_int_equal(d.r[0].resets, 1);
    assert_int_equal(d.r[1].bucket_ms, DAY0 + DAY);
    assert_true(fabs(d.r[1].energy_wh - 10) < EPS);
}

static void test_rollup_device_range_and_order(void **state)
{
    fixture_t *fx = fixture(state);
    add_device(fx, "dev-1");
    enqueue_d1_samples(fx);
    rollups_t h = {0};
    em_store_range_t rg = range(DAY0 + HOUR, DAY0 + DAY, 0, false);
    OK(em_store_rollup_device(fx->st, "dev-1", EM_ROLLUP_HOUR, &rg, on_rollup, &h, E));
    assert_int_equal(h.n, 1);
    assert_int_equal(h.r[0].bucket_ms, DAY0 + HOUR);
    memset(&h, 0, sizeof(h));
    rg = range(0, 0, 2, true);
    OK(em_store_rollup_device(fx->st, "dev-1", EM_ROLLUP_HOUR, &rg, on_rollup, &h, E));
    assert_int_equal(h.n, 2);
    assert_int_equal(h.r[0].bucket_ms, DAY0 + DAY);
    assert_int_equal(h.r[1].bucket_ms, DAY0 + HOUR);
}

static void test_rollup_without_power_reports_zero(void **state)
{
    fixture_t *fx = fixture(state);
    add_device(fx, "dev-1");
    em_telemetry_t t = sample(DAY0 + MIN, 10, false, 0);
    OK(em_store_enqueue_telemetry(fx->st, "dev-1", &t, 2.5, false, E));
    flush(fx);
    rollups_t h = {0};
    OK(em_store_rollup_device(fx->st, "dev-1", EM_ROLLUP_HOUR, NULL, on_rollup, &h, E));
    assert_int_equal(h.n, 1);
    assert_int_equal(h.r[0].samples, 1);
    assert_true(fabs(h.r[0].energy_wh - 2.5) < EPS);
    assert_true(h.r[0].power_avg_w == 0);
    assert_true(h.r[0].power_max_w == 0);
}

/* Group rollups sum the rollups of the group's current members. */
static void test_rollup_group_sums_current_members(void **state)
{
    fixture_t *fx = fixture(state);
    add_device(fx, "dev-1");
    add_device(fx, "dev-2");
    add_device(fx, "dev-3");
    OK(em_store_group_insert(fx->st, "plant", DAY0, E));
    OK(em_store_member_add(fx->st, "plant", "dev-1", E));
    OK(em_store_member_add(fx->st, "plant", "dev-2", E));
    enqueue_d1_samples(fx);
    em_telemetry_t t = sample(DAY0 + 30 * MIN, 500, true, 50);
    OK(em_store_enqueue_telemetry(fx->st, "dev-2", &t, 10, false, E));
    em_telemetry_t x = sample(DAY0 + 30 * MIN, 9999, true, 1000);
    OK(em_store_enqueue_telemetry(fx->st, "dev-3", &x, 1000, false, E));
    flush(fx);

    rollups_t g = {0};
    em_store_range_t rg = range(DAY0, DAY0 + HOUR, 0, false);
    OK(em_store_rollup_group(fx->st, "plant", EM_ROLLUP_HOUR, &rg, on_rollup, &g, E));
    assert_int_equal(g.n, 1);
    assert_int_equal(g.r[0].bucket_ms, DAY0);
    assert_int_equal(g.r[0].samples, 3);
    assert_true(fabs(g.r[0].energy_wh - 60) < EPS);
    assert_true(fabs(g.r[0].power_avg_w - 80.0 / 3.0) < 1e-6);
    assert_true(fabs(g.r[0].power_max_w - 50) < EPS);
    assert_int_equal(g.r[0].devices, 2);

    /* dev-2 leaves: the group's figures are those of its members now. */
    OK(em_store_member_remove(fx->st, "plant", "dev-2", E));
    memset(&g, 0, sizeof(g));
    OK(em_store_rollup_group(fx->st, "plant", EM_ROLLUP_HOUR, &rg, on_rollup, &g, E));
    assert_int_equal(g.n, 1);
    assert_int_equal(g.r[0].samples, 2);
    assert_true(fabs(g.r[0].energy_wh - 50) < EPS);
    assert_int_equal(g.r[0].devices, 1);

    memset(&g, 0, sizeof(g));
    OK(em_store_rollup_group(fx->st, "plant", EM_ROLLUP_DAY, NULL, on_rollup, &g, E));
    assert_int_equal(g.n, 2);
    assert_int_equal(g.r[0].resets, 1);
}

static void test_rollup_group_missing_is_group_not_found(void **state)
{
    fixture_t *fx = fixture(state);
    FAILS_WITH(EM_ERR_GROUP_NOT_FOUND, em_store_rollup_group(fx->st, "nowhere", EM_ROLLUP_DAY, NULL,
                                                             on_rollup, &(rollups_t){0}, E));
}

/* ---------------------------------------------------------------------- */
/* Commands                                                                */

static void test_command_insert_get_roundtrip(void **state)
{
    fixture_t *fx = fixture(state);
    add_device(fx, "dev-1");
    em_store_command_t c = command(1, "dev-1", "floor-2", DAY0);
    c.type = EM_CMD_SET_REPORTING_INTERVAL;
    c.payload_json = "{\"interval\":60,\"note\":\"\\\"quoted\\\"\"}";
    OK(em_store_command_insert(fx->st, &c, E));
    em_store_command_t n = command(2, "dev-1", NULL, DAY0 + 1);
    n.payload_json = NULL;
    OK(em_store_command_insert(fx->st, &n, E));

    command_copy_t got = {0};
    OK(em_store_command_get(fx->st, c.request_id, on_command_copy, &got, E));
    assert_int_equal(got.calls, 1);
    assert_string_equal(got.c.request_id, c.request_id);
    assert_string_equal(got.c.device_id, "dev-1");
    assert_string_equal(got.c.group, "floor-2");
    assert_int_equal(got.c.type, EM_CMD_SET_REPORTING_INTERVAL);
    assert_string_equal(got.payload, c.payload_json);
    assert_int_equal(got.c.state, EM_CMD_QUEUED);
    assert_string_equal(got.c.actor, c.actor);
    assert_int_equal(got.c.created_at_ms, DAY0);
    assert_int_equal(got.c.expires_at_ms, DAY0 + 10 * MIN);
    assert_false(got.c.has_response);

    memset(&got, 0, sizeof(got));
    OK(em_store_command_get(fx->st, n.request_id, on_command_copy, &got, E));
    assert_true(got.payload_null);
    assert_string_equal(got.c.group, "");
}

static void test_command_insert_duplicate_is_exists(void **state)
{
    fixture_t *fx = fixture(state);
    em_store_command_t c = command(1, "dev-1", NULL, DAY0);
    OK(em_store_command_insert(fx->st, &c, E));
    FAILS_WITH(EM_ERR_EXISTS, em_store_command_insert(fx->st, &c, E));
}

static void test_command_get_missing_is_not_found(void **state)
{
    fixture_t *fx = fixture(state);
    char r[EM_REQUEST_ID_MAX + 1];
    rid(r, sizeof(r), 42);
    FAILS_WITH(EM_ERR_NOT_FOUND,
               em_store_command_get(fx->st, r, on_command_copy, &(command_copy_t){0}, E));
    FAILS_WITH(EM_ERR_NOT_FOUND, em_store_command_set_state(fx->st, r, EM_CMD_SENT, DAY0 + 1, E));
}

static void test_command_state_only_moves_forward(void **state)
{
    fixture_t *fx = fixture(state);
    em_store_command_t c = command(1, "dev-1", NULL, DAY0);
    OK(em_store_command_insert(fx->st, &c, E));
    OK(em_store_command_set_state(fx->st, c.request_id, EM_CMD_ACKNOWLEDGED, DAY0 + 2, E));
    assert_int_equal(state_of(fx, 1), EM_CMD_ACKNOWLEDGED);
    /* Backward: ignored, not an error. */
    OK(em_store_command_set_state(fx->st, c.request_id, EM_CMD_SENT, DAY0 + 3, E));
    assert_int_equal(state_of(fx, 1), EM_CMD_ACKNOWLEDGED);
    command_copy_t got = {0};
    OK(em_store_command_get(fx->st, c.request_id, on_command_copy, &got, E));
    assert_int_equal(got.c.updated_at_ms, DAY0 + 2);
}

static void test_command_final_state_sticks(void **state)
{
    fixture_t *fx = fixture(state);
    em_store_command_t c = command(1, "dev-1", NULL, DAY0);
    OK(em_store_command_insert(fx->st, &c, E));
    OK(em_store_command_set_state(fx->st, c.request_id, EM_CMD_FAILED, DAY0 + 1, E));
    OK(em_store_command_set_state(fx->st, c.request_id, EM_CMD_SUCCEEDED, DAY0 + 2, E));
    OK(em_store_command_set_state(fx->st, c.request_id, EM_CMD_EXPIRED, DAY0 + 3, E));
    assert_int_equal(state_of(fx, 1), EM_CMD_FAILED);
}

static void test_enqueued_command_states_apply_in_order(void **state)
{
    fixture_t *fx = fixture(state);
    em_store_command_t c = command(1, "dev-1", NULL, DAY0);
    OK(em_store_command_insert(fx->st, &c, E));
    OK(em_store_enqueue_command_state(fx->st, c.request_id, EM_CMD_SENT, DAY0 + 1, E));
    em_response_t resp;
    memset(&resp, 0, sizeof(resp));
    snprintf(resp.request_id, sizeof(resp.request_id), "%s", c.request_id);
    resp.success = true;
    snprintf(resp.message, sizeof(resp.message), "sleeping");
    OK(em_store_enqueue_response(fx->st, "dev-1", &resp, DAY0 + 5, E));
    /* The broker's acknowledgement arrives after the answer: no effect. */
    OK(em_store_enqueue_command_state(fx->st, c.request_id, EM_CMD_ACKNOWLEDGED, DAY0 + 6, E));
    char unknown[EM_REQUEST_ID_MAX + 1];
    rid(unknown, sizeof(unknown), 77);
    OK(em_store_enqueue_command_state(fx->st, unknown, EM_CMD_SENT, DAY0 + 6, E));
    flush(fx);
    command_copy_t got = {0};
    OK(em_store_command_get(fx->st, c.request_id, on_command_copy, &got, E));
    assert_int_equal(got.c.state, EM_CMD_SUCCEEDED);
    assert_true(got.c.has_response);
    assert_true(got.c.response_success);
    assert_string_equal(got.c.response_message, "sleeping");
    assert_int_equal(got.c.updated_at_ms, DAY0 + 5);
    em_store_stats_t stats;
    em_store_stats(fx->st, &stats);
    assert_int_equal(stats.write_errors, 0);
}

static void test_response_failure_marks_failed(void **state)
{
    fixture_t *fx = fixture(state);
    em_store_command_t c = command(1, "dev-1", NULL, DAY0);
    OK(em_store_command_insert(fx->st, &c, E));
    em_response_t resp;
    memset(&resp, 0, sizeof(resp));
    snprintf(resp.request_id, sizeof(resp.request_id), "%s", c.request_id);
    resp.success = false;
    snprintf(resp.message, sizeof(resp.message), "battery too low");
    OK(em_store_enqueue_response(fx->st, "dev-1", &resp, DAY0 + 7, E));
    flush(fx);
    command_copy_t got = {0};
    OK(em_store_command_get(fx->st, c.request_id, on_command_copy, &got, E));
    assert_int_equal(got.c.state, EM_CMD_FAILED);
    assert_true(got.c.has_response);
    assert_false(got.c.response_success);
    assert_string_equal(got.c.response_message, "battery too low");
}

static void test_response_to_final_command_changes_nothing(void **state)
{
    fixture_t *fx = fixture(state);
    em_store_command_t c = command(1, "dev-1", NULL, DAY0);
    OK(em_store_command_insert(fx->st, &c, E));
    OK(em_store_command_set_state(fx->st, c.request_id, EM_CMD_EXPIRED, DAY0 + 1, E));
    em_response_t resp;
    memset(&resp, 0, sizeof(resp));
    snprintf(resp.request_id, sizeof(resp.request_id), "%s", c.request_id);
    resp.success = true;
    OK(em_store_enqueue_response(fx->st, "dev-1", &resp, DAY0 + 9, E));
    flush(fx);
    assert_int_equal(state_of(fx, 1), EM_CMD_EXPIRED);
    em_store_stats_t stats;
    em_store_stats(fx->st, &stats);
    assert_int_equal(stats.orphan_responses, 0);
}

static void test_orphan_response_is_counted(void **state)
{
    fixture_t *fx = fixture(state);
    em_response_t resp;
    memset(&resp, 0, sizeof(resp));
    rid(resp.request_id, sizeof(resp.request_id), 99);
    resp.success = true;
    OK(em_store_enqueue_response(fx->st, "dev-1", &resp, DAY0, E));
    OK(em_store_enqueue_response(fx->st, "dev-1", &resp, DAY0 + 1, E));
    flush(fx);
    em_store_stats_t stats;
    em_store_stats(fx->st, &stats);
    assert_int_equal(stats.orphan_responses, 2);
    assert_int_equal(stats.write_errors, 0);
    assert_int_equal(stats.committed, 2);
}

static void test_command_expire_marks_open_commands(void **state)
{
    fixture_t *fx = fixture(state);
    em_store_command_t a = command(1, "dev-1", NULL, DAY0); /* expires DAY0 + 10 min */
    em_store_command_t b = command(2, "dev-1", NULL, DAY0);
    b.expires_at_ms = DAY0 + 30 * MIN;
    em_store_command_t c = command(3, "dev-1", NULL, DAY0);
    em_store_command_t d = command(4, "dev-1", NULL, DAY0);
    OK(em_store_command_insert(fx->st, &a, E));
    OK(em_store_command_insert(fx->st, &b, E));
    OK(em_store_command_insert(fx->st, &c, E));
    OK(em_store_command_insert(fx->st, &d, E));
    OK(em_store_command_set_state(fx->st, c.request_id, EM_CMD_SUCCEEDED, DAY0 + 1, E));
    OK(em_store_command_set_state(fx->st, d.request_id, EM_CMD_ACKNOWLEDGED, DAY0 + 1, E));
    size_t n = 99;
    OK(em_store_command_expire(fx->st, DAY0 + 10 * MIN, &n, E));
    assert_int_equal(n, 2); /* a (exactly at expiry) and d */
    assert_int_equal(state_of(fx, 1), EM_CMD_EXPIRED);
    assert_int_equal(state_of(fx, 2), EM_CMD_QUEUED);
    assert_int_equal(state_of(fx, 3), EM_CMD_SUCCEEDED);
    assert_int_equal(state_of(fx, 4), EM_CMD_EXPIRED);
    OK(em_store_command_expire(fx->st, DAY0 + 10 * MIN, &n, E));
    assert_int_equal(n, 0);
    OK(em_store_command_expire(fx->st, DAY0 + HOUR, NULL, E));
    assert_int_equal(state_of(fx, 2), EM_CMD_EXPIRED);
}

/* A device only answers its own commands. */
static void test_response_from_another_device_is_orphan(void **state)
{
    fixture_t *fx = fixture(state);
    em_store_command_t c = command(1, "dev-1", NULL, DAY0);
    OK(em_store_command_insert(fx->st, &c, E));
    em_response_t resp;
    memset(&resp, 0, sizeof(resp));
    snprintf(resp.request_id, sizeof(resp.request_id), "%s", c.request_id);
    resp.success = true;
    OK(em_store_enqueue_response(fx->st, "dev-2", &resp, DAY0 + 1, E));
    flush(fx);
    assert_int_equal(state_of(fx, 1), EM_CMD_QUEUED);
    em_store_stats_t stats;
    em_store_stats(fx->st, &stats);
    assert_int_equal(stats.orphan_responses, 1);
}

static void test_command_without_expiry_never_expires(void **state)
{
    fixture_t *fx = fixture(state);
    em_store_command_t c = command(1, "dev-1", NULL, DAY0);
    c.expires_at_ms = 0;
    OK(em_store_command_insert(fx->st, &c, E));
    size_t n = 99;
    OK(em_store_command_expire(fx->st, DAY0 + 365 * DAY, &n, E));
    assert_int_equal(n, 0);
    assert_int_equal(state_of(fx, 1), EM_CMD_QUEUED);
}

/* Commands created in the same millisecond list in creation order. */
static void test_command_list_equal_times_keep_insert_order(void **state)
{
    fixture_t *fx = fixture(state);
    unsigned order[] = {5, 1, 4, 2, 3};
    for (size_t i = 0; i < 5; i++) {
        em_store_command_t c = command(order[i], "dev-1", NULL, DAY0);
        OK(em_store_command_insert(fx->st, &c, E));
    }
    rows_t *r = rows_new();
    em_store_command_filter_t f = cmd_filter();
    OK(em_store_command_list(fx->st, &f, on_command, r, E));
    assert_int_equal(r->n, 5);
    for (size_t i = 0; i < 5; i++) {
        char want[EM_REQUEST_ID_MAX + 1];
        rid(want, sizeof(want), order[i]);
        assert_string_equal(r->key[i], want);
    }
    free(r);
}

static void test_command_list_filters_and_order(void **state)
{
    fixture_t *fx = fixture(state);
    for (unsigned i = 0; i < 6; i++) {
        em_store_command_t c = command(i + 1, i % 2 ? "dev-2" : "dev-1", i < 3 ? "floor-1" : NULL,
                                       DAY0 + (int64_t)i * MIN);
        OK(em_store_command_insert(fx->st, &c, E));
    }
    char r2[EM_REQUEST_ID_MAX + 1];
    rid(r2, sizeof(r2), 2);
    OK(em_store_command_set_state(fx->st, r2, EM_CMD_SENT, DAY0 + HOUR, E));

    rows_t *r = rows_new();
    em_store_command_filter_t f = cmd_filter();
    OK(em_store_command_list(fx->st, &f, on_command, r, E));
    assert_int_equal(r->n, 6);
    for (size_t i = 0; i < 6; i++)
        assert_int_equal(r->t[i], DAY0 + (int64_t)i * MIN);

    memset(r, 0, sizeof(*r));
    f.device_id = "dev-2";
    OK(em_store_command_list(fx->st, &f, on_command, r, E));
    assert_int_equal(r->n, 3);

    memset(r, 0, sizeof(*r));
    f = cmd_filter();
    f.group = "floor-1";
    OK(em_store_command_list(fx->st, &f, on_command, r, E));
    assert_int_equal(r->n, 3);

    memset(r, 0, sizeof(*r));
    f = cmd_filter();
    f.state = EM_CMD_SENT;
    OK(em_store_command_list(fx->st, &f, on_command, r, E));
    assert_int_equal(r->n, 1);
    assert_string_equal(r->key[0], r2);

    memset(r, 0, sizeof(*r));
    f = cmd_filter();
    f.range = range(DAY0 + MIN, DAY0 + 4 * MIN, 2, true);
    OK(em_store_command_list(fx->st, &f, on_command, r, E));
    assert_int_equal(r->n, 2);
    assert_int_equal(r->t[0], DAY0 + 3 * MIN);
    assert_int_equal(r->t[1], DAY0 + 2 * MIN);
    free(r);
}

/* ---------------------------------------------------------------------- */
/* Events                                                                  */

static void insert_events(fixture_t *fx)
{
    em_store_event_t evs[] = {
        event(EM_EVKIND_SECURITY, "auth_failure", EM_SEV_MEDIUM, NULL, DAY0 + 1 * MIN),
        event(EM_EVKIND_AUDIT, "device_created", EM_SEV_LOW, "dev-1", DAY0 + 2 * MIN),
        event(EM_EVKIND_DEVICE, "tamper", EM_SEV_CRITICAL, "dev-1", DAY0 + 3 * MIN),
        event(EM_EVKIND_VALIDATION, "bad_status", EM_SEV_LOW, "dev-2", DAY0 + 4 * MIN),
        event(EM_EVKIND_SECURITY, "rate_limited", EM_SEV_HIGH, "dev-2", DAY0 + 5 * MIN),
    };
    evs[2].details_json = "{\"case\":\"opened\"}";
    for (size_t i = 0; i < 5; i++)
        OK(em_store_event_insert(fx->st, &evs[i], E));
}

static void test_event_insert_assigns_increasing_ids(void **state)
{
    fixture_t *fx = fixture(state);
    insert_events(fx);
    rows_t *r = rows_new();
    em_store_event_filter_t f = ev_filter();
    OK(em_store_event_list(fx->st, &f, on_event, r, E));
    assert_int_equal(r->n, 5);
    for (size_t i = 1; i < 5; i++)
        assert_true(r->v[i] > r->v[i - 1]);
    assert_string_equal(r->key[0], "auth_failure");
    assert_int_equal(r->t[0], DAY0 + MIN);
    free(r);
}

typedef struct event_copy {
    int calls;
    em_store_event_t ev;
    char details[128];
} event_copy_t;

static int on_event_copy(const em_store_event_t *ev, void *ud)
{
    event_copy_t *c = ud;
    c->calls++;
    c->ev = *ev;
    snprintf(c->details, sizeof(c->details), "%s", ev->details_json ? ev->details_json : "(null)");
    c->ev.details_json = NULL;
    return 0;
}

static void test_event_fields_roundtrip(void **state)
{
    fixture_t *fx = fixture(state);
    insert_events(fx);
    event_copy_t c = {0};
    em_store_event_filter_t f = ev_filter();
    f.type = "tamper";
    OK(em_store_event_list(fx->st, &f, on_event_copy, &c, E));
    assert_int_equal(c.calls, 1);
    assert_int_equal(c.ev.kind, EM_EVKIND_DEVICE);
    assert_int_equal(c.ev.severity, EM_SEV_CRITICAL);
    assert_string_equal(c.ev.device_id, "dev-1");
    assert_string_equal(c.ev.actor, "user:alice");
    assert_string_equal(c.ev.source, "127.0.0.1");
    assert_string_equal(c.ev.message, "tamper happened");
    assert_string_equal(c.details, "{\"case\":\"opened\"}");
    memset(&c, 0, sizeof(c));
    f.type = "auth_failure";
    OK(em_store_event_list(fx->st, &f, on_event_copy, &c, E));
    assert_string_equal(c.details, "(null)");
    assert_string_equal(c.ev.device_id, "");
}

static void test_event_list_filters(void **state)
{
    fixture_t *fx = fixture(state);
    insert_events(fx);
    rows_t *r = rows_new();

    em_store_event_filter_t f = ev_filter();
    f.kind = EM_EVKIND_SECURITY;
    OK(em_store_event_list(fx->st, &f, on_event, r, E));
    assert_int_equal(r->n, 2);

    memset(r, 0, sizeof(*r));
    f = ev_filter();
    f.device_id = "dev-2";
    OK(em_store_event_list(fx->st, &f, on_event, r, E));
    assert_int_equal(r->n, 2);

    memset(r, 0, sizeof(*r));
    f = ev_filter();
    f.min_severity = EM_SEV_HIGH;
    OK(em_store_event_list(fx->st, &f, on_event, r, E));
    assert_int_equal(r->n, 2);
    assert_string_equal(r->key[0], "tamper");
    assert_string_equal(r->key[1], "rate_limited");

    memset(r, 0, sizeof(*r));
    f = ev_filter();
    f.range = range(DAY0 + 2 * MIN, DAY0 + 4 * MIN, 0, false);
    OK(em_store_event_list(fx->st, &f, on_event, r, E));
    assert_int_equal(r->n, 2);
    assert_string_equal(r->key[0], "device_created");
    free(r);
}

/* Newest first, one page at a time, each page before the last id seen. */
static void test_event_list_pages_newest_first_with_before_id(void **state)
{
    fixture_t *fx = fixture(state);
    insert_events(fx);
    rows_t *r = rows_new();
    em_store_event_filter_t f = ev_filter();
    f.range = range(0, 0, 2, true);
    OK(em_store_event_list(fx->st, &f, on_event, r, E));
    assert_int_equal(r->n, 2);
    assert_string_equal(r->key[0], "rate_limited");
    assert_string_equal(r->key[1], "bad_status");
    int64_t before = r->v[1];
    memset(r, 0, sizeof(*r));
    f.before_id = before;
    OK(em_store_event_list(fx->st, &f, on_event, r, E));
    assert_int_equal(r->n, 2);
    assert_string_equal(r->key[0], "tamper");
    assert_string_equal(r->key[1], "device_created");
    before = r->v[1];
    memset(r, 0, sizeof(*r));
    f.before_id = before;
    f.range.limit = 10;
    OK(em_store_event_list(fx->st, &f, on_event, r, E));
    assert_int_equal(r->n, 1);
    assert_string_equal(r->key[0], "auth_failure");
    free(r);
}

static void test_enqueued_events_are_stored_in_order(void **state)
{
    fixture_t *fx = fixture(state);
    for (int i = 0; i < 20; i++) {
        em_store_event_t ev = event(EM_EVKIND_VALIDATION, i % 2 ? "bad_status" : "bad_telemetry",
                                    EM_SEV_LOW, "dev-9", DAY0 + 1000 - i);
        ev.details_json = "{\"field\":\"batteryLevel\"}";
        OK(em_store_enqueue_event(fx->st, &ev, E));
    }
    flush(fx);
    rows_t *r = rows_new();
    em_store_event_filter_t f = ev_filter();
    f.kind = EM_EVKIND_VALIDATION;
    OK(em_store_event_list(fx->st, &f, on_event, r, E));
    assert_int_equal(r->n, 20);
    for (int i = 0; i < 20; i++) {
        assert_int_equal(r->t[i], DAY0 + 1000 - i);
        if (i > 0)
            assert_true(r->v[i] > r->v[i - 1]);
    }
    free(r);
}

/* ---------------------------------------------------------------------- */
/* Users and API keys                                                      */

static void test_user_insert_get_list_delete(void **state)
{
    fixture_t *fx = fixture(state);
    em_store_user_t u = {"zoe@example.org", EM_ROLE_OPERATOR, false, DAY0};
    em_store_user_t v = {"alice", EM_ROLE_VIEWER, true, DAY0 + 1};
    OK(em_store_user_insert(fx->st, &u, E));
    OK(em_store_user_insert(fx->st, &v, E));
    FAILS_WITH(EM_ERR_EXISTS, em_store_user_insert(fx->st, &u, E));
    em_store_user_t got;
    OK(em_store_user_get(fx->st, "alice", &got, E));
    assert_string_equal(got.name, "alice");
    assert_int_equal(got.role, EM_ROLE_VIEWER);
    assert_true(got.disabled);
    assert_int_equal(got.created_at_ms, DAY0 + 1);
    rows_t *r = rows_new();
    OK(em_store_user_list(fx->st, on_user, r, E));
    assert_int_equal(r->n, 2);
    assert_string_equal(r->key[0], "alice");
    assert_string_equal(r->key[1], "zoe@example.org");
    OK(em_store_user_delete(fx->st, "alice", E));
    FAILS_WITH(EM_ERR_NOT_FOUND, em_store_user_get(fx->st, "alice", &got, E));
    FAILS_WITH(EM_ERR_NOT_FOUND, em_store_user_delete(fx->st, "alice", E));
    free(r);
}

static void test_api_key_insert_get_roundtrip(void **state)
{
    fixture_t *fx = fixture(state);
    em_store_api_key_t k = api_key("k_0123456789ab", EM_ROLE_DEVICE, DAY0);
    snprintf(k.device_id, sizeof(k.device_id), "dev-1");
    k.expires_at_ms = DAY0 + DAY;
    OK(em_store_api_key_insert(fx->st, &k, E));
    FAILS_WITH(EM_ERR_EXISTS, em_store_api_key_insert(fx->st, &k, E));
    em_store_api_key_t got;
    OK(em_store_api_key_get(fx->st, "k_0123456789ab", &got, E));
    assert_string_equal(got.key_id, k.key_id);
    assert_string_equal(got.name, k.name);
    assert_int_equal(got.role, EM_ROLE_DEVICE);
    assert_string_equal(got.device_id, "dev-1");
    assert_string_equal(got.owner, "user:admin");
    assert_memory_equal(got.hash, k.hash, sizeof(k.hash));
    assert_int_equal(got.rate_per_min, 120);
    assert_int_equal(got.created_at_ms, DAY0);
    assert_int_equal(got.expires_at_ms, DAY0 + DAY);
    assert_int_equal(got.last_used_ms, 0);
    assert_int_equal(got.revoked_at_ms, 0);
    FAILS_WITH(EM_ERR_NOT_FOUND, em_store_api_key_get(fx->st, "k_ffffffffffff", &got, E));
}

static void test_api_key_first_revocation_wins(void **state)
{
    fixture_t *fx = fixture(state);
    em_store_api_key_t k = api_key("k_0123456789ab", EM_ROLE_ADMIN, DAY0);
    OK(em_store_api_key_insert(fx->st, &k, E));
    OK(em_store_api_key_revoke(fx->st, k.key_id, DAY0 + 5, E));
    OK(em_store_api_key_revoke(fx->st, k.key_id, DAY0 + 9, E));
    em_store_api_key_t got;
    OK(em_store_api_key_get(fx->st, k.key_id, &got, E));
    assert_int_equal(got.revoked_at_ms, DAY0 + 5);
    FAILS_WITH(EM_ERR_NOT_FOUND, em_store_api_key_revoke(fx->st, "k_ffffffffffff", DAY0, E));
}

static void test_api_key_last_used_is_queued(void **state)
{
    fixture_t *fx = fixture(state);
    em_store_api_key_t k = api_key("k_0123456789ab", EM_ROLE_VIEWER, DAY0);
    OK(em_store_api_key_insert(fx->st, &k, E));
    OK(em_store_enqueue_key_used(fx->st, k.key_id, DAY0 + 2 * MIN, E));
    OK(em_store_enqueue_key_used(fx->st, "k_ffffffffffff", DAY0 + 2 * MIN, E));
    flush(fx);
    em_store_api_key_t got;
    OK(em_store_api_key_get(fx->st, k.key_id, &got, E));
    assert_int_equal(got.last_used_ms, DAY0 + 2 * MIN);
    em_store_stats_t stats;
    em_store_stats(fx->st, &stats);
    assert_int_equal(stats.write_errors, 0);
}

static void test_api_key_list_in_creation_order_with_revoked(void **state)
{
    fixture_t *fx = fixture(state);
    em_store_api_key_t a = api_key("k_bbbbbbbbbbbb", EM_ROLE_ADMIN, DAY0 + 1);
    em_store_api_key_t b = api_key("k_aaaaaaaaaaaa", EM_ROLE_OPERATOR, DAY0 + 2);
    em_store_api_key_t c = api_key("k_cccccccccccc", EM_ROLE_VIEWER, DAY0 + 3);
    OK(em_store_api_key_insert(fx->st, &a, E));
    OK(em_store_api_key_insert(fx->st, &b, E));
    OK(em_store_api_key_insert(fx->st, &c, E));
    OK(em_store_api_key_revoke(fx->st, b.key_id, DAY0 + 10, E));
    rows_t *r = rows_new();
    OK(em_store_api_key_list(fx->st, on_key, r, E));
    assert_int_equal(r->n, 3);
    assert_string_equal(r->key[0], "k_bbbbbbbbbbbb");
    assert_string_equal(r->key[1], "k_aaaaaaaaaaaa");
    assert_int_equal(r->v[1], DAY0 + 10);
    assert_string_equal(r->key[2], "k_cccccccccccc");
    free(r);
}

/* ---------------------------------------------------------------------- */
/* Maintenance                                                             */

static void test_prune_deletes_what_retention_leaves_behind(void **state)
{
    fixture_t *fx = fixture(state);
    add_device(fx, "dev-1");
    const int64_t now = DAY0 + 10 * DAY;
    /* Old rows: 9 days back; new rows: 1 hour back. */
    int64_t old_t = now - 9 * DAY, new_t = now - HOUR;
    em_status_t s_old = status_at(old_t, 1), s_new = status_at(new_t, 2);
    OK(em_store_enqueue_status(fx->st, "dev-1", &s_old, E));
    OK(em_store_enqueue_status(fx->st, "dev-1", &s_new, E));
    em_telemetry_t t_old = sample(old_t, 1, false, 0), t_new = sample(new_t, 2, false, 0);
    OK(em_store_enqueue_telemetry(fx->st, "dev-1", &t_old, 0, false, E));
    OK(em_store_enqueue_telemetry(fx->st, "dev-1", &t_new, 1, false, E));
    flush(fx);
    em_store_event_t e_old = event(EM_EVKIND_AUDIT, "old", EM_SEV_LOW, NULL, old_t);
    em_store_event_t e_new = event(EM_EVKIND_AUDIT, "new", EM_SEV_LOW, NULL, new_t);
    OK(em_store_event_insert(fx->st, &e_old, E));
    OK(em_store_event_insert(fx->st, &e_new, E));
    em_store_command_t c_done = command(1, "dev-1", NULL, old_t);
    em_store_command_t c_open = command(2, "dev-1", NULL, old_t);
    c_open.expires_at_ms = now + DAY;
    em_store_command_t c_recent = command(3, "dev-1", NULL, new_t);
    OK(em_store_command_insert(fx->st, &c_done, E));
    OK(em_store_command_insert(fx->st, &c_open, E));
    OK(em_store_command_insert(fx->st, &c_recent, E));
    OK(em_store_command_set_state(fx->st, c_done.request_id, EM_CMD_SUCCEEDED, old_t, E));
    OK(em_store_command_set_state(fx->st, c_recent.request_id, EM_CMD_SUCCEEDED, new_t, E));

    /* Nothing configured: nothing deleted. */
    em_store_retention_t keep;
    memset(&keep, 0, sizeof(keep));
    uint64_t deleted = 99;
    OK(em_store_prune(fx->st, &keep, now, &deleted, E));
    assert_int_equal(deleted, 0);

    em_store_retention_t r = {DAY, DAY, DAY, 2 * DAY, DAY, DAY};
    OK(em_store_prune(fx->st, &r, now, &deleted, E));
    /* history 1, telemetry 1, hour rollup 1, day rollup 1, event 1, command 1 */
    assert_int_equal(deleted, 6);

    assert_int_equal(count_history(fx, "dev-1"), 1);
    rows_t *rows = rows_new();
    OK(em_store_telemetry_list(fx->st, "dev-1", NULL, on_telemetry, rows, E));
    assert_int_equal(rows->n, 1);
    assert_int_equal(rows->t[0], new_t);
    rollups_t ru = {0};
    OK(em_store_rollup_device(fx->st, "dev-1", EM_ROLLUP_HOUR, NULL, on_rollup, &ru, E));
    assert_int_equal(ru.n, 1);
    memset(&ru, 0, sizeof(ru));
    OK(em_store_rollup_device(fx->st, "dev-1", EM_ROLLUP_DAY, NULL, on_rollup, &ru, E));
    assert_int_equal(ru.n, 1);
    memset(rows, 0, sizeof(*rows));
    em_store_event_filter_t f = ev_filter();
    OK(em_store_event_list(fx->st, &f, on_event, rows, E));
    assert_int_equal(rows->n, 1);
    assert_string_equal(rows->key[0], "new");
    memset(rows, 0, sizeof(*rows));
    em_store_command_filter_t cf = cmd_filter();
    OK(em_store_command_list(fx->st, &cf, on_command, rows, E));
    assert_int_equal(rows->n, 2); /* the open one stays, however old */
    /* The latest status is not history: it stays. */
    status_copy_t sc = {0};
    OK(em_store_status_latest(fx->st, "dev-1", on_status_copy, &sc, E));
    assert_int_equal(sc.s.last_seen_ms, new_t);
    free(rows);
}

static void test_flush_and_stats_count_records(void **state)
{
    fixture_t *fx = fixture(state);
    add_device(fx, "dev-1");
    for (int i = 0; i < 250; i++) {
        em_status_t s = status_at(DAY0 + i, (uint8_t)(i % 100));
        OK(em_store_enqueue_status(fx->st, "dev-1", &s, E));
    }
    flush(fx);
    em_store_stats_t stats;
    em_store_stats(fx->st, &stats);
    assert_int_equal(stats.enqueued, 250);
    assert_int_equal(stats.committed, 250);
    assert_int_equal(stats.queue_depth, 0);
    assert_true(stats.batches >= 1);
    assert_int_equal(stats.write_errors, 0);
    assert_int_equal(count_all_history(fx, "dev-1"), 250);
}

/* A batch larger than batch_max is split, and everything lands. */
static void test_large_ingest_lands_completely(void **state)
{
    fixture_t *fx = fixture(state);
    char ids[20][16];
    for (int d = 0; d < 20; d++) {
        snprintf(ids[d], sizeof(ids[d]), "dev-%02d", d);
        add_device(fx, ids[d]);
    }
    for (int i = 0; i < 20000; i++) {
        em_status_t s = status_at(DAY0 + i, (uint8_t)(i % 101));
        OK(em_store_enqueue_status(fx->st, ids[i % 20], &s, E));
        em_telemetry_t t = sample(DAY0 + i, i, true, 1);
        OK(em_store_enqueue_telemetry(fx->st, ids[i % 20], &t, 1, false, E));
    }
    flush(fx);
    em_store_stats_t stats;
    em_store_stats(fx->st, &stats);
    assert_int_equal(stats.committed, 40000);
    assert_int_equal(stats.write_errors, 0);
    rollups_t ru = {0};
    OK(em_store_rollup_device(fx->st, "dev-07", EM_ROLLUP_DAY, NULL, on_rollup, &ru, E));
    assert_int_equal(ru.n, 1);
    assert_int_equal(ru.r[0].samples, 1000);
    assert_true(fabs(ru.r[0].energy_wh - 1000) < EPS);
    status_copy_t sc = {0};
    OK(em_store_status_latest(fx->st, "dev-07", on_status_copy, &sc, E));
    assert_int_equal(sc.s.last_seen_ms, DAY0 + 19987);
}

static void test_reopen_keeps_everything(void **state)
{
    fixture_t *fx = fixture(state);
    add_device(fx, "dev-1");
    OK(em_store_group_insert(fx->st, "roof", DAY0, E));
    OK(em_store_member_add(fx->st, "roof", "dev-1", E));
    em_status_t s = status_at(DAY0 + 1, 42);
    OK(em_store_enqueue_status(fx->st, "dev-1", &s, E));
    em_telemetry_t t = sample(DAY0 + 1, 10, true, 3);
    OK(em_store_enqueue_telemetry(fx->st, "dev-1", &t, 4, false, E));
    em_store_command_t c = command(1, "dev-1", NULL, DAY0);
    OK(em_store_command_insert(fx->st, &c, E));
    em_store_event_t ev = event(EM_EVKIND_AUDIT, "device_created", EM_SEV_LOW, "dev-1", DAY0);
    OK(em_store_event_insert(fx->st, &ev, E));
    em_store_user_t u = {"alice", EM_ROLE_ADMIN, false, DAY0};
    OK(em_store_user_insert(fx->st, &u, E));
    em_store_api_key_t k = api_key("k_0123456789ab", EM_ROLE_ADMIN, DAY0);
    OK(em_store_api_key_insert(fx->st, &k, E));
    int version = em_store_schema_version(fx->st);
    /* No flush: close commits what is queued. */
    reopen(fx);

    assert_int_equal(em_store_schema_version(fx->st), version);
    em_store_device_t d;
    OK(em_store_device_get(fx->st, "dev-1", &d, E));
    rows_t *r = rows_new();
    OK(em_store_member_list(fx->st, on_member, r, E));
    assert_int_equal(r->n, 1);
    status_copy_t sc = {0};
    OK(em_store_status_latest(fx->st, "dev-1", on_status_copy, &sc, E));
    assert_int_equal(sc.s.battery_level, 42);
    assert_int_equal(count_history(fx, "dev-1"), 1);
    memset(r, 0, sizeof(*r));
    OK(em_store_telemetry_list(fx->st, "dev-1", NULL, on_telemetry, r, E));
    assert_int_equal(r->n, 1);
    rollups_t ru = {0};
    OK(em_store_rollup_device(fx->st, "dev-1", EM_ROLLUP_HOUR, NULL, on_rollup, &ru, E));
    assert_int_equal(ru.n, 1);
    assert_true(fabs(ru.r[0].energy_wh - 4) < EPS);
    assert_int_equal(state_of(fx, 1), EM_CMD_QUEUED);
    memset(r, 0, sizeof(*r));
    em_store_event_filter_t f = ev_filter();
    OK(em_store_event_list(fx->st, &f, on_event, r, E));
    assert_int_equal(r->n, 1);
    em_store_user_t gu;
    OK(em_store_user_get(fx->st, "alice", &gu, E));
    em_store_api_key_t gk;
    OK(em_store_api_key_get(fx->st, k.key_id, &gk, E));
    assert_memory_equal(gk.hash, k.hash, sizeof(k.hash));
    /* Ids keep increasing after a reopen. */
    OK(em_store_event_insert(fx->st, &ev, E));
    memset(r, 0, sizeof(*r));
    OK(em_store_event_list(fx->st, &f, on_event, r, E));
    assert_int_equal(r->n, 2);
    assert_true(r->v[1] > r->v[0]);
    free(r);
}

/* Bytes that are not UTF-8 (the store does not check text it is handed
 * beyond control characters) are stored without stopping the writer:
 * PostgreSQL would refuse them, so that backend replaces them. */
static void test_invalid_utf8_does_not_stop_the_writer(void **state)
{
    fixture_t *fx = fixture(state);
    add_device(fx, "dev-1");
    em_status_t s = status_at(DAY0, 5);
    s.has |= EM_STATUS_HAS_EXTRA;
    s.extra_json = "{\"name\":\"caf\xe9 \xff\xfe\"}";
    OK(em_store_enqueue_status(fx->st, "dev-1", &s, E));
    em_store_event_t ev = event(EM_EVKIND_VALIDATION, "bad_status", EM_SEV_LOW, "dev-1", DAY0);
    snprintf(ev.message, sizeof(ev.message), "bad byte \xc3( here");
    ev.details_json = "{\"raw\":\"\xf0\x28\x8c\"}";
    OK(em_store_enqueue_event(fx->st, &ev, E));
    flush(fx);
    OK(em_store_event_insert(fx->st, &ev, E));
    em_store_stats_t stats;
    em_store_stats(fx->st, &stats);
    assert_int_equal(stats.write_errors, 0);
    assert_int_equal(stats.committed, 2);
    assert_int_equal(count_history(fx, "dev-1"), 1);
    rows_t *r = rows_new();
    em_store_event_filter_t f = ev_filter();
    OK(em_store_event_list(fx->st, &f, on_event, r, E));
    assert_int_equal(r->n, 2);
    free(r);
}

/* PostgreSQL only: a restarted server costs the store nothing: both of its
 * connections reconnect on their next statement. */
static void test_pg_server_restart_is_survived(void **state)
{
    fixture_t *fx = fixture(state);
    if (g_backend != BE_PG)
        skip();
    add_device(fx, "dev-1");
    em_status_t s = status_at(DAY0, 5);
    OK(em_store_enqueue_status(fx->st, "dev-1", &s, E));
    flush(fx);
    assert_int_equal(em_test_pg_restart(&g_pg), 0);
    em_store_device_t got;
    OK(em_store_device_get(fx->st, "dev-1", &got, E));
    s = status_at(DAY0 + 1, 6);
    OK(em_store_enqueue_status(fx->st, "dev-1", &s, E));
    flush(fx);
    em_store_stats_t stats;
    em_store_stats(fx->st, &stats);
    assert_int_equal(stats.committed, 2);
    assert_int_equal(stats.write_errors, 0);
    assert_int_equal(count_history(fx, "dev-1"), 2);
}

/* ---------------------------------------------------------------------- */
/* Device identity (schema version 2)                                      */

/* A token record whose hash is derived from n (the store never sees the
 * token itself, only its SHA-256: any 32 bytes do here). */
static em_store_enroll_token_t enroll_token(unsigned n, const char *dev, int64_t created,
                                            int64_t expires)
{
    em_store_enroll_token_t t;
    memset(&t, 0, sizeof(t));
    snprintf(t.token_id, sizeof(t.token_id), "e_%012x", n);
    snprintf(t.device_id, sizeof(t.device_id), "%s", dev);
    snprintf(t.owner, sizeof(t.owner), "user:alice");
    for (size_t i = 0; i < sizeof(t.hash); i++)
        t.hash[i] = (unsigned char)(n * 31u + i * 7u + 1u);
    t.created_at_ms = created;
    t.expires_at_ms = expires;
    return t;
}

static int on_token(const em_store_enroll_token_t *t, void *ud)
{
    return rows_add(ud, t->token_id, t->created_at_ms, t->used_at_ms);
}

static em_store_device_cert_t device_cert(const char *dev, const char *serial, int64_t created)
{
    em_store_device_cert_t c;
    memset(&c, 0, sizeof(c));
    snprintf(c.device_id, sizeof(c.device_id), "%s", dev);
    snprintf(c.serial, sizeof(c.serial), "%s", serial);
    for (size_t i = 0; i < 64; i++)
        c.sha256[i] = "0123456789abcdef"[(i + strlen(serial)) % 16];
    snprintf(c.pem, sizeof(c.pem),
             "-----BEGIN CERTIFICATE-----\nMIIB%s\n-----END CERTIFICATE-----\n", serial);
    c.not_after_ms = created + 365 * DAY;
    c.created_at_ms = created;
    return c;
}

static int on_cert(const em_store_device_cert_t *c, void *ud)
{
    return rows_add(ud, c->serial, c->created_at_ms, c->not_after_ms);
}

static size_t count_tokens(fixture_t *fx, const char *dev)
{
    rows_t *r = rows_new();
    OK(em_store_enroll_token_list(fx->st, dev, on_token, r, E));
    size_t n = r->n;
    free(r);
    return n;
}

static void test_enroll_token_insert_list_roundtrip(void **state)
{
    fixture_t *fx = fixture(state);
    add_device(fx, "dev-1");
    add_device(fx, "dev-2");
    em_store_enroll_token_t a = enroll_token(1, "dev-1", DAY0 + 2 * MIN, DAY0 + HOUR);
    em_store_enroll_token_t b = enroll_token(2, "dev-2", DAY0 + MIN, DAY0 + HOUR);
    em_store_enroll_token_t c = enroll_token(3, "dev-1", DAY0 + 2 * MIN, DAY0 + 2 * HOUR);
    em_store_enroll_token_t d = enroll_token(4, "dev-1", DAY0, DAY0 + HOUR);
    OK(em_store_enroll_token_insert(fx->st, &a, E));
    OK(em_store_enroll_token_insert(fx->st, &b, E));
    OK(em_store_enroll_token_insert(fx->st, &c, E));
    OK(em_store_enroll_token_insert(fx->st, &d, E));

    /* Oldest first; equal creation times in insertion order. */
    rows_t *r = rows_new();
    OK(em_store_enroll_token_list(fx->st, "dev-1", on_token, r, E));
    assert_int_equal(r->n, 3);
    assert_string_equal(r->key[0], d.token_id);
    assert_string_equal(r->key[1], a.token_id);
    assert_string_equal(r->key[2], c.token_id);
    memset(r, 0, sizeof(*r));
    OK(em_store_enroll_token_list(fx->st, NULL, on_token, r, E));
    assert_int_equal(r->n, 4);
    assert_string_equal(r->key[0], d.token_id);
    assert_string_equal(r->key[1], b.token_id);
    assert_string_equal(r->key[2], a.token_id);
    assert_string_equal(r->key[3], c.token_id);
    /* A device without tokens (or an unknown one) lists nothing. */
    memset(r, 0, sizeof(*r));
    OK(em_store_enroll_token_list(fx->st, "dev-none", on_token, r, E));
    assert_int_equal(r->n, 0);
    /* The callback may stop the listing. */
    memset(r, 0, sizeof(*r));
    r->stop_after = 2;
    OK(em_store_enroll_token_list(fx->st, NULL, on_token, r, E));
    assert_int_equal(r->n, 2);
    free(r);
}

typedef struct token_copy {
    size_t n;
    em_store_enroll_token_t t;
} token_copy_t;

static int on_token_copy(const em_store_enroll_token_t *t, void *ud)
{
    token_copy_t *c = ud;
    c->t = *t;
    c->n++;
    return 0;
}

static void test_enroll_token_fields_roundtrip(void **state)
{
    fixture_t *fx = fixture(state);
    add_device(fx, "dev-1");
    em_store_enroll_token_t t = enroll_token(7, "dev-1", DAY0, DAY0 + HOUR);
    t.hash[0] = 0; /* bytes of every value survive, NUL included */
    t.hash[31] = 0xff;
    snprintf(t.owner, sizeof(t.owner), "key:k_0123456789ab");
    OK(em_store_enroll_token_insert(fx->st, &t, E));
    token_copy_t got = {0};
    OK(em_store_enroll_token_list(fx->st, "dev-1", on_token_copy, &got, E));
    assert_int_equal(got.n, 1);
    assert_string_equal(got.t.token_id, t.token_id);
    assert_string_equal(got.t.device_id, "dev-1");
    assert_string_equal(got.t.owner, t.owner);
    assert_memory_equal(got.t.hash, t.hash, sizeof(t.hash));
    assert_int_equal(got.t.created_at_ms, DAY0);
    assert_int_equal(got.t.expires_at_ms, DAY0 + HOUR);
    assert_int_equal(got.t.used_at_ms, 0);
}

static void test_enroll_token_insert_duplicate_id_or_hash_is_exists(void **state)
{
    fixture_t *fx = fixture(state);
    add_device(fx, "dev-1");
    em_store_enroll_token_t t = enroll_token(1, "dev-1", DAY0, DAY0 + HOUR);
    OK(em_store_enroll_token_insert(fx->st, &t, E));
    em_store_enroll_token_t same_id = enroll_token(2, "dev-1", DAY0, DAY0 + HOUR);
    snprintf(same_id.token_id, sizeof(same_id.token_id), "%s", t.token_id);
    FAILS_WITH(EM_ERR_EXISTS, em_store_enroll_token_insert(fx->st, &same_id, E));
    em_store_enroll_token_t same_hash = enroll_token(3, "dev-1", DAY0, DAY0 + HOUR);
    memcpy(same_hash.hash, t.hash, sizeof(t.hash));
    FAILS_WITH(EM_ERR_EXISTS, em_store_enroll_token_insert(fx->st, &same_hash, E));
    assert_int_equal(count_tokens(fx, NULL), 1);
}

static void test_enroll_token_insert_for_unknown_device_is_device_not_found(void **state)
{
    fixture_t *fx = fixture(state);
    em_store_enroll_token_t t = enroll_token(1, "dev-none", DAY0, DAY0 + HOUR);
    FAILS_WITH(EM_ERR_DEVICE_NOT_FOUND, em_store_enroll_token_insert(fx->st, &t, E));
    assert_int_equal(count_tokens(fx, NULL), 0);
}

static void test_enroll_token_use_works_once_and_reports_the_first_use(void **state)
{
    fixture_t *fx = fixture(state);
    add_device(fx, "dev-1");
    em_store_enroll_token_t t = enroll_token(1, "dev-1", DAY0, DAY0 + HOUR);
    OK(em_store_enroll_token_insert(fx->st, &t, E));
    em_store_enroll_token_t out;
    OK(em_store_enroll_token_use(fx->st, t.hash, DAY0 + MIN, &out, E));
    /* The record as it was before: not used. */
    assert_int_equal(out.used_at_ms, 0);
    assert_string_equal(out.token_id, t.token_id);
    assert_string_equal(out.device_id, "dev-1");
    assert_string_equal(out.owner, t.owner);
    assert_memory_equal(out.hash, t.hash, sizeof(t.hash));
    assert_int_equal(out.expires_at_ms, DAY0 + HOUR);
    /* Again: it was used, at the first use's time, and that stays. */
    OK(em_store_enroll_token_use(fx->st, t.hash, DAY0 + 2 * MIN, &out, E));
    assert_int_equal(out.used_at_ms, DAY0 + MIN);
    OK(em_store_enroll_token_use(fx->st, t.hash, DAY0 + 3 * MIN, &out, E));
    assert_int_equal(out.used_at_ms, DAY0 + MIN);
    rows_t *r = rows_new();
    OK(em_store_enroll_token_list(fx->st, "dev-1", on_token, r, E));
    assert_int_equal(r->n, 1);
    assert_int_equal(r->v[0], DAY0 + MIN);
    free(r);
}

static void test_enroll_token_use_of_unknown_hash_is_not_found(void **state)
{
    fixture_t *fx = fixture(state);
    add_device(fx, "dev-1");
    em_store_enroll_token_t t = enroll_token(1, "dev-1", DAY0, DAY0 + HOUR);
    OK(em_store_enroll_token_insert(fx->st, &t, E));
    em_store_enroll_token_t other = enroll_token(2, "dev-1", DAY0, DAY0 + HOUR);
    em_store_enroll_token_t out;
    FAILS_WITH(EM_ERR_NOT_FOUND, em_store_enroll_token_use(fx->st, other.hash, DAY0, &out, E));
    /* The known token is untouched. */
    OK(em_store_enroll_token_use(fx->st, t.hash, DAY0 + MIN, &out, E));
    assert_int_equal(out.used_at_ms, 0);
}

/* The store does not judge expiry: it hands the record to the caller, who
 * refuses it; the token is burnt all the same. */
static void test_enroll_token_use_of_expired_token_is_left_to_the_caller(void **state)
{
    fixture_t *fx = fixture(state);
    add_device(fx, "dev-1");
    em_store_enroll_token_t t = enroll_token(1, "dev-1", DAY0, DAY0 + HOUR);
    OK(em_store_enroll_token_insert(fx->st, &t, E));
    em_store_enroll_token_t out;
    OK(em_store_enroll_token_use(fx->st, t.hash, DAY0 + 2 * HOUR, &out, E));
    assert_int_equal(out.used_at_ms, 0);
    assert_int_equal(out.expires_at_ms, DAY0 + HOUR);
    assert_true(out.expires_at_ms < DAY0 + 2 * HOUR);
    OK(em_store_enroll_token_use(fx->st, t.hash, DAY0 + 3 * HOUR, &out, E));
    assert_int_equal(out.used_at_ms, DAY0 + 2 * HOUR);
}

/* Concurrent uses of one token, each on its own store (own connections):
 * exactly one sees it unused. */
#define RACERS      6
#define RACE_TOKENS 12

typedef struct racer {
    const char *url;
    pthread_barrier_t *start;
    int64_t used_before[RACE_TOKENS];
    em_err_t rc;
} racer_t;

static void *racer_main(void *arg)
{
    racer_t *r = arg;
    em_store_options_t o;
    options(&o);
    em_store_t *st = NULL;
    em_error_t err;
    r->rc = em_store_open(r->url, &o, &st, &err);
    pthread_barrier_wait(r->start);
    for (unsigned i = 0; i < RACE_TOKENS && r->rc == EM_OK; i++) {
        em_store_enroll_token_t t = enroll_token(100 + i, "dev-1", DAY0, DAY0 + HOUR);
        em_store_enroll_token_t out;
        r->rc = em_store_enroll_token_use(st, t.hash, DAY0 + 1 + i, &out, &err);
        r->used_before[i] = out.used_at_ms;
    }
    em_store_close(st);
    return NULL;
}

static void add_race_tokens(fixture_t *fx)
{
    add_device(fx, "dev-1");
    for (unsigned i = 0; i < RACE_TOKENS; i++) {
        em_store_enroll_token_t t = enroll_token(100 + i, "dev-1", DAY0, DAY0 + HOUR);
        OK(em_store_enroll_token_insert(fx->st, &t, E));
    }
}

static void test_enroll_token_concurrent_uses_in_threads_exactly_one_wins(void **state)
{
    fixture_t *fx = fixture(state);
    add_race_tokens(fx);
    pthread_barrier_t start;
    assert_int_equal(pthread_barrier_init(&start, NULL, RACERS), 0);
    racer_t r[RACERS];
    pthread_t th[RACERS];
    for (int i = 0; i < RACERS; i++) {
        memset(&r[i], 0, sizeof(r[i]));
        r[i].url = fx->url;
        r[i].start = &start;
        assert_int_equal(pthread_create(&th[i], NULL, racer_main, &r[i]), 0);
    }
    for (int i = 0; i < RACERS; i++)
        pthread_join(th[i], NULL);
    pthread_barrier_destroy(&start);
    for (int i = 0; i < RACERS; i++)
        assert_int_equal(r[i].rc, EM_OK);
    for (unsigned k = 0; k < RACE_TOKENS; k++) {
        int winners = 0;
        for (int i = 0; i < RACERS; i++)
            winners += r[i].used_before[k] == 0;
        assert_int_equal(winners, 1);
    }
}

/* The same across processes (two daemons on one database). Each child
 * writes, per token, whether it saw it unused. */
static void race_child(const char *url, int fd)
{
    em_store_options_t o;
    options(&o);
    em_store_t *st = NULL;
    if (em_store_open(url, &o, &st, NULL) != EM_OK)
        _exit(2);
    /* Let every child get this far before racing. */
    usleep(200000);
    for (unsigned i = 0; i < RACE_TOKENS; i++) {
        em_store_enroll_token_t t = enroll_token(100 + i, "dev-1", DAY0, DAY0 + HOUR);
        em_store_enroll_token_t out;
        if (em_store_enroll_token_use(st, t.hash, DAY0 + 1 + i, &out, NULL) != EM_OK)
            _exit(3);
        unsigned char won = out.used_at_ms == 0;
        if (write(fd, &won, 1) != 1)
            _exit(4);
    }
    em_store_close(st);
    _exit(0);
}

static void test_enroll_token_concurrent_uses_in_processes_exactly_one_wins(void **state)
{
    fixture_t *fx = fixture(state);
    add_race_tokens(fx);
    /* The children open their own stores: no thread of ours may cross the
     * fork. */
    em_store_close(fx->st);
    fx->st = NULL;
    int fds[RACERS];
    pid_t pids[RACERS];
    pid_t parent = getpid();
    for (int i = 0; i < RACERS; i++) {
        int p[2];
        assert_int_equal(pipe(p), 0);
        pids[i] = fork();
        assert_true(pids[i] >= 0);
        if (pids[i] == 0) {
            close(p[0]);
            prctl(PR_SET_PDEATHSIG, SIGKILL);
            if (getppid() != parent)
                _exit(1);
            race_child(fx->url, p[1]);
        }
        close(p[1]);
        fds[i] = p[0];
    }
    int winners[RACE_TOKENS] = {0};
    for (int i = 0; i < RACERS; i++) {
        unsigned char won[RACE_TOKENS];
        size_t got = 0;
        while (got < RACE_TOKENS) {
            ssize_t n = read(fds[i], won + got, RACE_TOKENS - got);
            if (n <= 0)
                break;
            got += (size_t)n;
        }
        close(fds[i]);
        int st = 0;
        assert_int_equal(waitpid(pids[i], &st, 0), pids[i]);
        assert_true(WIFEXITED(st));
        assert_int_equal(WEXITSTATUS(st), 0);
        assert_int_equal(got, RACE_TOKENS);
        for (unsigned k = 0; k < RACE_TOKENS; k++)
            winners[k] += won[k];
    }
    for (unsigned k = 0; k < RACE_TOKENS; k++)
        assert_int_equal(winners[k], 1);
    reopen(fx);
}

typedef struct cert_copy {
    size_t n;
    em_store_device_cert_t c;
} cert_copy_t;

static void test_device_cert_insert_latest_roundtrip(void **state)
{
    fixture_t *fx = fixture(state);
    add_device(fx, "dev-1");
    em_store_device_cert_t c = device_cert("dev-1", "0a1b2c3d4e5f60718293a4b5c6d7e8f9", DAY0);
    /* A PEM as long as the maximum comes back whole. */
    size_t len = sizeof(c.pem) - 1;
    memset(c.pem, 'A', len);
    memcpy(c.pem, "-----BEGIN CERTIFICATE-----\n", 28);
    c.pem[100] = '\n';
    c.pem[len] = '\0';
    OK(em_store_device_cert_insert(fx->st, &c, E));
    em_store_device_cert_t *got = malloc(sizeof(*got));
    assert_non_null(got);
    OK(em_store_device_cert_latest(fx->st, "dev-1", got, E));
    assert_string_equal(got->device_id, "dev-1");
    assert_string_equal(got->serial, c.serial);
    assert_string_equal(got->sha256, c.sha256);
    assert_string_equal(got->pem, c.pem);
    assert_int_equal(got->not_after_ms, c.not_after_ms);
    assert_int_equal(got->created_at_ms, DAY0);
    free(got);
}

static void test_device_cert_latest_is_newest_then_last_inserted(void **state)
{
    fixture_t *fx = fixture(state);
    add_device(fx, "dev-1");
    em_store_device_cert_t a = device_cert("dev-1", "aa01", DAY0);
    em_store_device_cert_t b = device_cert("dev-1", "bb02", DAY0 + DAY);
    em_store_device_cert_t c = device_cert("dev-1", "cc03", DAY0); /* older than b */
    OK(em_store_device_cert_insert(fx->st, &a, E));
    OK(em_store_device_cert_insert(fx->st, &b, E));
    OK(em_store_device_cert_insert(fx->st, &c, E));
    em_store_device_cert_t *got = malloc(sizeof(*got));
    assert_non_null(got);
    OK(em_store_device_cert_latest(fx->st, "dev-1", got, E));
    assert_string_equal(got->serial, "bb02");
    /* Same time as the newest: the one inserted last wins. Serials sort
     * before it both as text and as numbers, so the order is not theirs. */
    em_store_device_cert_t d = device_cert("dev-1", "0001", DAY0 + DAY);
    OK(em_store_device_cert_insert(fx->st, &d, E));
    OK(em_store_device_cert_latest(fx->st, "dev-1", got, E));
    assert_string_equal(got->serial, "0001");
    free(got);

    /* The list: oldest first, equal times in insertion order. */
    rows_t *r = rows_new();
    OK(em_store_device_cert_list(fx->st, "dev-1", on_cert, r, E));
    assert_int_equal(r->n, 4);
    assert_string_equal(r->key[0], "aa01");
    assert_string_equal(r->key[1], "cc03");
    assert_string_equal(r->key[2], "bb02");
    assert_string_equal(r->key[3], "0001");
    memset(r, 0, sizeof(*r));
    r->stop_after = 1;
    OK(em_store_device_cert_list(fx->st, "dev-1", on_cert, r, E));
    assert_int_equal(r->n, 1);
    free(r);
}

static void test_device_cert_duplicate_serial_is_exists_per_device(void **state)
{
    fixture_t *fx = fixture(state);
    add_device(fx, "dev-1");
    add_device(fx, "dev-2");
    em_store_device_cert_t a = device_cert("dev-1", "aa01", DAY0);
    OK(em_store_device_cert_insert(fx->st, &a, E));
    em_store_device_cert_t again = device_cert("dev-1", "aa01", DAY0 + DAY);
    FAILS_WITH(EM_ERR_EXISTS, em_store_device_cert_insert(fx->st, &again, E));
    /* The key is (device, serial): another device may hold the serial. */
    em_store_device_cert_t other = device_cert("dev-2", "aa01", DAY0);
    OK(em_store_device_cert_insert(fx->st, &other, E));
    rows_t *r = rows_new();
    OK(em_store_device_cert_list(fx->st, "dev-1", on_cert, r, E));
    assert_int_equal(r->n, 1);
    assert_int_equal(r->t[0], DAY0);
    free(r);
}

static void test_device_cert_of_unknown_device_is_device_not_found(void **state)
{
    fixture_t *fx = fixture(state);
    em_store_device_cert_t c = device_cert("dev-none", "aa01", DAY0);
    FAILS_WITH(EM_ERR_DEVICE_NOT_FOUND, em_store_device_cert_insert(fx->st, &c, E));
    em_store_device_cert_t *got = malloc(sizeof(*got));
    assert_non_null(got);
    FAILS_WITH(EM_ERR_DEVICE_NOT_FOUND, em_store_device_cert_latest(fx->st, "dev-none", got, E));
    rows_t *r = rows_new();
    FAILS_WITH(EM_ERR_DEVICE_NOT_FOUND,
               em_store_device_cert_list(fx->st, "dev-none", on_cert, r, E));
    assert_int_equal(r->n, 0);
    /* A known device without certificates: latest is NOT_FOUND, the list
     * is empty. */
    add_device(fx, "dev-1");
    FAILS_WITH(EM_ERR_NOT_FOUND, em_store_device_cert_latest(fx->st, "dev-1", got, E));
    OK(em_store_device_cert_list(fx->st, "dev-1", on_cert, r, E));
    assert_int_equal(r->n, 0);
    free(r);
    free(got);
}

static void test_device_delete_removes_its_certificates_and_tokens(void **state)
{
    fixture_t *fx = fixture(state);
    add_device(fx, "dev-1");
    add_device(fx, "dev-2");
    em_store_device_cert_t c1 = device_cert("dev-1", "aa01", DAY0);
    em_store_device_cert_t c2 = device_cert("dev-2", "bb02", DAY0);
    OK(em_store_device_cert_insert(fx->st, &c1, E));
    OK(em_store_device_cert_insert(fx->st, &c2, E));
    em_store_enroll_token_t t1 = enroll_token(1, "dev-1", DAY0, DAY0 + HOUR);
    em_store_enroll_token_t t2 = enroll_token(2, "dev-2", DAY0, DAY0 + HOUR);
    OK(em_store_enroll_token_insert(fx->st, &t1, E));
    OK(em_store_enroll_token_insert(fx->st, &t2, E));

    OK(em_store_device_delete(fx->st, "dev-1", E));
    /* A new device of the same id starts with nothing. */
    add_device(fx, "dev-1");
    em_store_device_cert_t *got = malloc(sizeof(*got));
    assert_non_null(got);
    FAILS_WITH(EM_ERR_NOT_FOUND, em_store_device_cert_latest(fx->st, "dev-1", got, E));
    assert_int_equal(count_tokens(fx, "dev-1"), 0);
    em_store_enroll_token_t out;
    FAILS_WITH(EM_ERR_NOT_FOUND, em_store_enroll_token_use(fx->st, t1.hash, DAY0, &out, E));
    /* The other device keeps its own. */
    OK(em_store_device_cert_latest(fx->st, "dev-2", got, E));
    assert_string_equal(got->serial, "bb02");
    assert_int_equal(count_tokens(fx, "dev-2"), 1);
    /* The old serial may be registered again for the new device. */
    OK(em_store_device_cert_insert(fx->st, &c1, E));
    free(got);
}

static void test_prune_deletes_enrollment_tokens_a_week_after_expiry(void **state)
{
    fixture_t *fx = fixture(state);
    add_device(fx, "dev-1");
    const int64_t now = DAY0 + 30 * DAY;
    em_store_enroll_token_t old_unused = enroll_token(1, "dev-1", DAY0, now - 8 * DAY);
    em_store_enroll_token_t old_used = enroll_token(2, "dev-1", DAY0, now - 8 * DAY);
    em_store_enroll_token_t recent = enroll_token(3, "dev-1", DAY0, now - 6 * DAY);
    em_store_enroll_token_t live = enroll_token(4, "dev-1", DAY0, now + HOUR);
    OK(em_store_enroll_token_insert(fx->st, &old_unused, E));
    OK(em_store_enroll_token_insert(fx->st, &old_used, E));
    OK(em_store_enroll_token_insert(fx->st, &recent, E));
    OK(em_store_enroll_token_insert(fx->st, &live, E));
    em_store_enroll_token_t out;
    OK(em_store_enroll_token_use(fx->st, old_used.hash, DAY0 + MIN, &out, E));

    /* Whatever the retention periods say (here: keep everything). */
    em_store_retention_t keep;
    memset(&keep, 0, sizeof(keep));
    uint64_t deleted = 0;
    OK(em_store_prune(fx->st, &keep, now, &deleted, E));
    assert_int_equal(deleted, 2);
    rows_t *r = rows_new();
    OK(em_store_enroll_token_list(fx->st, NULL, on_token, r, E));
    assert_int_equal(r->n, 2);
    assert_string_equal(r->key[0], recent.token_id);
    assert_string_equal(r->key[1], live.token_id);
    free(r);
    /* The week is counted from the expiry: exactly 7 days is kept. */
    OK(em_store_prune(fx->st, &keep, recent.expires_at_ms + 7 * DAY, &deleted, E));
    assert_int_equal(deleted, 0);
    OK(em_store_prune(fx->st, &keep, recent.expires_at_ms + 7 * DAY + 1, &deleted, E));
    assert_int_equal(deleted, 1);
}

/* Takes the database back to schema version 1: the identity tables and
 * migration 2's record go, the version-1 tables stay as they are. */
static void downgrade_to_v1(fixture_t *fx)
{
    const char *sql = "DROP TABLE device_certs; DROP TABLE enroll_tokens;"
                      " DELETE FROM schema_migrations WHERE version = 2;";
    if (g_backend == BE_SQLITE) {
        sqlite3 *db = NULL;
        assert_int_equal(sqlite3_open(fx->db_path, &db), SQLITE_OK);
        assert_int_equal(sqlite3_exec(db, sql, NULL, NULL, NULL), SQLITE_OK);
        sqlite3_close(db);
    } else {
        PGconn *c = PQconnectdb(fx->url);
        assert_int_equal(PQstatus(c), CONNECTION_OK);
        PGresult *res = PQexec(c, sql);
        assert_int_equal(PQresultStatus(res), PGRES_COMMAND_OK);
        PQclear(res);
        PQfinish(c);
    }
}

static void test_migration_2_upgrades_a_version_1_database_in_place(void **state)
{
    fixture_t *fx = fixture(state);
    assert_int_equal(em_store_schema_version(fx->st), 2);
    add_device(fx, "dev-1");
    OK(em_store_group_insert(fx->st, "Floor one", DAY0, E));
    OK(em_store_member_add(fx->st, "Floor one", "dev-1", E));
    em_status_t s = status_at(DAY0, 42);
    OK(em_store_enqueue_status(fx->st, "dev-1", &s, E));
    flush(fx);
    em_store_close(fx->st);
    fx->st = NULL;
    downgrade_to_v1(fx);

    reopen(fx);
    assert_int_equal(em_store_schema_version(fx->st), 2);
    /* Version-1 data is intact. */
    em_store_device_t d;
    OK(em_store_device_get(fx->st, "dev-1", &d, E));
    status_copy_t sc = {0};
    OK(em_store_status_latest(fx->st, "dev-1", on_status_copy, &sc, E));
    assert_int_equal(sc.s.battery_level, 42);
    assert_int_equal(count_history(fx, "dev-1"), 1);
    rows_t *r = rows_new();
    OK(em_store_member_list(fx->st, on_member, r, E));
    assert_int_equal(r->n, 1);
    free(r);
    /* And the new tables work. */
    em_store_enroll_token_t t = enroll_token(1, "dev-1", DAY0, DAY0 + HOUR);
    OK(em_store_enroll_token_insert(fx->st, &t, E));
    em_store_device_cert_t c = device_cert("dev-1", "aa01", DAY0);
    OK(em_store_device_cert_insert(fx->st, &c, E));
    OK(em_store_device_delete(fx->st, "dev-1", E));
    assert_int_equal(count_tokens(fx, NULL), 0);
}

/* ---------------------------------------------------------------------- */
/* kill -9 loses nothing acknowledged                                      */

#define KILL_DEVICE "dev-kill"

/* The child: enqueues statuses one millisecond apart as fast as it can and,
 * after every em_store_flush that returned EM_OK, writes the number of
 * records committed so far to the pipe. It never returns. */
static void kill_child(const char *url, int fd)
{
    em_store_options_t o;
    options(&o);
    em_store_t *st = NULL;
    if (em_store_open(url, &o, &st, NULL) != EM_OK)
        _exit(2);
    for (int64_t i = 0;; i++) {
        em_status_t s = status_at(DAY0 + i, (uint8_t)(i % 101));
        if (em_store_enqueue_status(st, KILL_DEVICE, &s, NULL) != EM_OK)
            _exit(3);
        if (i % 97 == 96) {
            if (em_store_flush(st, 30000, NULL) != EM_OK)
                _exit(4);
            em_store_stats_t stats;
            em_store_stats(st, &stats);
            uint64_t committed = stats.committed;
            if (write(fd, &committed, sizeof(committed)) != (ssize_t)sizeof(committed))
                _exit(5);
        }
    }
}

static size_t count_all_history(fixture_t *fx, const char *id)
{
    rows_t *r = rows_new();
    size_t total = 0;
    int64_t from = 0;
    for (;;) {
        memset(r, 0, sizeof(*r));
        em_store_range_t rg = range(from, 0, EM_STORE_PAGE_MAX, false);
        OK(em_store_status_history(fx->st, id, &rg, on_status, r, E));
        total += r->n;
        if (r->n < EM_STORE_PAGE_MAX)
            break;
        from = r->t[r->n - 1] + 1;
    }
    free(r);
    return total;
}

static void check_sqlite_integrity(const char *path)
{
    sqlite3 *db = NULL;
    assert_int_equal(sqlite3_open_v2(path, &db, SQLITE_OPEN_READONLY, NULL), SQLITE_OK);
    sqlite3_stmt *q = NULL;
    assert_int_equal(sqlite3_prepare_v2(db, "PRAGMA integrity_check", -1, &q, NULL), SQLITE_OK);
    assert_int_equal(sqlite3_step(q), SQLITE_ROW);
    assert_string_equal((const char *)sqlite3_column_text(q, 0), "ok");
    sqlite3_finalize(q);
    sqlite3_close(db);
}

static void test_kill9_loses_nothing_acknowledged(void **state)
{
    fixture_t *fx = fixture(state);
    add_device(fx, KILL_DEVICE);
    /* The child opens its own store: no thread of ours may cross the fork. */
    em_store_close(fx->st);
    fx->st = NULL;
    int p[2];
    assert_int_equal(pipe(p), 0);
    pid_t parent = getpid();
    pid_t pid = fork();
    assert_true(pid >= 0);
    if (pid == 0) {
        close(p[0]);
        prctl(PR_SET_PDEATHSIG, SIGKILL);
        if (getppid() != parent)
            _exit(1);
        kill_child(fx->url, p[1]);
    }
    close(p[1]);
    /* Let it acknowledge a few thousand records, then kill it between two
     * flushes, with more queued and a batch likely in flight. */
    uint64_t last = 0, reports = 0;
    while (last < 3000) {
        uint64_t v;
        ssize_t n = read(p[0], &v, sizeof(v));
        if (n != (ssize_t)sizeof(v))
            break;
        last = v;
        reports++;
    }
    kill(pid, SIGKILL);
    int st;
    waitpid(pid, &st, 0);
    /* Reports written just before the kill still count. */
    uint64_t v;
    while (read(p[0], &v, sizeof(v)) == (ssize_t)sizeof(v))
        last = v;
    close(p[0]);
    assert_true(WIFSIGNALED(st));
    assert_true(reports > 0);
    assert_true(last >= 3000);

    if (g_backend == BE_SQLITE)
        check_sqlite_integrity(fx->db_path);
    reopen(fx);
    size_t stored = count_all_history(fx, KILL_DEVICE);
    assert_true(stored >= last);
    /* The latest status is one of the stored ones, and the store still
     * takes writes. */
    status_copy_t sc = {0};
    OK(em_store_status_latest(fx->st, KILL_DEVICE, on_status_copy, &sc, E));
    assert_true(sc.s.last_seen_ms >= DAY0 + (int64_t)last - 1);
    em_status_t s = status_at(DAY0 + 10000000, 1);
    OK(em_store_enqueue_status(fx->st, KILL_DEVICE, &s, E));
    flush(fx);
    assert_int_equal(count_all_history(fx, KILL_DEVICE), stored + 1);
}

/* ---------------------------------------------------------------------- */

#define T(f) cmocka_unit_test_setup_teardown(f, setup, teardown)

static const struct CMUnitTest tests[] = {
    T(test_open_names_backend_and_schema),
    T(test_open_unknown_scheme_is_configuration_error),
    T(test_open_failure_does_not_reveal_password),
    T(test_open_refuses_newer_schema),
    T(test_concurrent_open_migrates_once),
    T(test_device_insert_get_roundtrip),
    T(test_device_insert_duplicate_is_exists),
    T(test_device_get_missing_is_not_found),
    T(test_device_update_replaces_fields),
    T(test_device_update_missing_is_not_found),
    T(test_device_delete_keeps_commands_and_events),
    T(test_device_delete_missing_is_not_found),
    T(test_device_list_orders_by_id_and_pages),
    T(test_device_list_default_limit_is_page_default),
    T(test_device_list_filters_type),
    T(test_device_list_filters_group),
    T(test_device_list_missing_group_is_group_not_found),
    T(test_device_list_stops_when_callback_says_so),
    T(test_group_list_counts_members),
    T(test_group_insert_duplicate_is_exists),
    T(test_group_delete_keeps_devices),
    T(test_group_delete_missing_is_group_not_found),
    T(test_member_add_twice_is_ok),
    T(test_member_add_missing_group_or_device),
    T(test_member_remove_codes),
    T(test_member_list_every_pair_in_order),
    T(test_status_latest_is_last_enqueued),
    T(test_status_fields_roundtrip),
    T(test_status_without_json_reads_back_null),
    T(test_status_latest_missing_is_device_not_found),
    T(test_status_latest_of_every_device),
    T(test_status_for_unknown_device_is_skipped),
    T(test_status_history_range_order_limit),
    T(test_reads_of_unknown_device_are_device_not_found),
    T(test_status_latest_ignores_older_status),
    T(test_status_history_equal_times_keep_queue_order),
    T(test_telemetry_list_range_roundtrip),
    T(test_telemetry_fields_roundtrip_exactly),
    T(test_rollup_device_hour_and_day),
    T(test_rollup_device_range_and_order),
    T(test_rollup_without_power_reports_zero),
    T(test_rollup_group_sums_current_members),
    T(test_rollup_group_missing_is_group_not_found),
    T(test_command_insert_get_roundtrip),
    T(test_command_insert_duplicate_is_exists),
    T(test_command_get_missing_is_not_found),
    T(test_command_state_only_moves_forward),
    T(test_command_final_state_sticks),
    T(test_enqueued_command_states_apply_in_order),
    T(test_response_failure_marks_failed),
    T(test_response_to_final_command_changes_nothing),
    T(test_orphan_response_is_counted),
    T(test_response_from_another_device_is_orphan),
    T(test_command_expire_marks_open_commands),
    T(test_command_without_expiry_never_expires),
    T(test_command_list_equal_times_keep_insert_order),
    T(test_command_list_filters_and_order),
    T(test_event_insert_assigns_increasing_ids),
    T(test_event_fields_roundtrip),
    T(test_event_list_filters),
    T(test_event_list_pages_newest_first_with_before_id),
    T(test_enqueued_events_are_stored_in_order),
    T(test_user_insert_get_list_delete),
    T(test_api_key_insert_get_roundtrip),
    T(test_api_key_first_revocation_wins),
    T(test_api_key_last_used_is_queued),
    T(test_api_key_list_in_creation_order_with_revoked),
    T(test_prune_deletes_what_retention_leaves_behind),
    T(test_flush_and_stats_count_records),
    T(test_large_ingest_lands_completely),
    T(test_reopen_keeps_everything),
    T(test_invalid_utf8_does_not_stop_the_writer),
    T(test_enroll_token_insert_list_roundtrip),
    T(test_enroll_token_fields_roundtrip),
    T(test_enroll_token_insert_duplicate_id_or_hash_is_exists),
    T(test_enroll_token_insert_for_unknown_device_is_device_not_found),
    T(test_enroll_token_use_works_once_and_reports_the_first_use),
    T(test_enroll_token_use_of_unknown_hash_is_not_found),
    T(test_enroll_token_use_of_expired_token_is_left_to_the_caller),
    T(test_enroll_token_concurrent_uses_in_threads_exactly_one_wins),
    T(test_enroll_token_concurrent_uses_in_processes_exactly_one_wins),
    T(test_device_cert_insert_latest_roundtrip),
    T(test_device_cert_latest_is_newest_then_last_inserted),
    T(test_device_cert_duplicate_serial_is_exists_per_device),
    T(test_device_cert_of_unknown_device_is_device_not_found),
    T(test_device_delete_removes_its_certificates_and_tokens),
    T(test_prune_deletes_enrollment_tokens_a_week_after_expiry),
    T(test_migration_2_upgrades_a_version_1_database_in_place),
    T(test_pg_server_restart_is_survived),
    T(test_kill9_loses_nothing_acknowledged),
};

int main(void)
{
    int failed = cmocka_run_group_tests_name("store_sqlite", tests, group_setup_sqlite, NULL);
    failed +=
        cmocka_run_group_tests_name("store_postgresql", tests, group_setup_pg, group_teardown_pg);
    return failed;
}
