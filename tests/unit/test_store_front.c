/*
 * emiot tests - test_store_front.c: the store front (URL, argument checks,
 * queue, writer thread, rollup aggregation) and what is specific to the
 * SQLite backend (file mode, schema version, two processes on one file).
 * Backend-neutral behaviour is in tests/integration/test_store.c.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include <math.h>
#include <pthread.h>
#include <sqlite3.h>
#include <sys/stat.h>
#include <unistd.h>

#include "emiot/clock.h"
#include "emiot/log.h"
#include "emiot/store.h"
#include "store/store_internal.h"
#include "testutil.h"

#define HOUR_MS INT64_C(3600000)
#define DAY_MS  INT64_C(86400000)
/* 2026-11-22T00:00:00Z: a day boundary, so hours and days line up. */
#define T0 INT64_C(1795305600000)

typedef struct fixture {
    char dir[256];
    char path[300];
    char url[320];
    em_store_t *st;
} fixture_t;

static em_store_options_t fast_options(void)
{
    em_store_options_t o;
    em_store_options_init(&o);
    o.sync = EM_STORE_SYNC_NORMAL; /* the tests need no power-loss safety */
    return o;
}

static int setup(void **state)
{
    fixture_t *f = calloc(1, sizeof(*f));
    if (f == NULL || em_test_mkdtemp(f->dir, sizeof(f->dir)) != 0) {
        free(f);
        return -1;
    }
    snprintf(f->path, sizeof(f->path), "%s/emiot.db", f->dir);
    snprintf(f->url, sizeof(f->url), "sqlite:%s", f->path);
    *state = f;
    return 0;
}

static int teardown(void **state)
{
    fixture_t *f = *state;
    em_store_close(f->st);
    em_test_rmtree(f->dir);
    free(f);
    return 0;
}

static em_store_t *open_store(fixture_t *f, const em_store_options_t *o)
{
    em_error_t err;
    em_store_t *st = NULL;
    em_err_t rc = em_store_open(f->url, o, &st, &err);
    if (rc != EM_OK) {
        print_error("open: %s\n", err.message);
    }
    assert_int_equal(rc, EM_OK);
    return st;
}

static void open_fixture(fixture_t *f)
{
    em_store_options_t o = fast_options();
    f->st = open_store(f, &o);
}

static void add_device(em_store_t *st, const char *id)
{
    em_store_device_t d;
    memset(&d, 0, sizeof(d));
    snprintf(d.id, sizeof(d.id), "%s", id);
    snprintf(d.name, sizeof(d.name), "Device %s", id);
    d.type = EM_DEVICE_SENSOR;
    d.enabled = true;
    d.created_at_ms = d.updated_at_ms = T0;
    em_error_t err;
    assert_int_equal(em_store_device_insert(st, &d, &err), EM_OK);
}

static em_status_t a_status(uint8_t battery, int64_t t)
{
    em_status_t s;
    memset(&s, 0, sizeof(s));
    s.has = EM_STATUS_HAS_BATTERY | EM_STATUS_HAS_POWER_MODE | EM_STATUS_HAS_LAST_SEEN;
    s.battery_level = battery;
    s.power_mode = EM_POWER_NORMAL;
    s.last_seen_ms = t;
    return s;
}

/* Counts rows with a query on a separate connection (SQLite specifics). */
static long long count_rows(const fixture_t *f, const char *sql)
{
    sqlite3 *db = NULL;
    assert_int_equal(sqlite3_open_v2(f->path, &db, SQLITE_OPEN_READONLY, NULL), SQLITE_OK);
    sqlite3_stmt *s = NULL;
    assert_int_equal(sqlite3_prepare_v2(db, sql, -1, &s, NULL), SQLITE_OK);
    assert_int_equal(sqlite3_step(s), SQLITE_ROW);
    long long n = sqlite3_column_int64(s, 0);
    sqlite3_finalize(s);
    sqlite3_close(db);
    return n;
}

static void exec_sql(const fixture_t *f, const char *sql)
{
    sqlite3 *db = NULL;
    assert_int_equal(sqlite3_open(f->path, &db), SQLITE_OK);
    sqlite3_busy_timeout(db, 5000);
    char *msg = NULL;
    int rc = sqlite3_exec(db, sql, NULL, NULL, &msg);
    if (rc != SQLITE_OK) {
        print_error("sql: %s\n", msg != NULL ? msg : "?");
    }
    sqlite3_free(msg);
    sqlite3_close(db);
    assert_int_equal(rc, SQLITE_OK);
}

/* ---- names -------------------------------------------------------------- */

static void test_command_state_names_round_trip(void **state)
{
    (void)state;
    for (int i = EM_CMD_QUEUED; i <= EM_CMD_EXPIRED; i++) {
        const char *n = em_command_state_name((em_command_state_t)i);
        assert_non_null(n);
        em_command_state_t back;
        assert_int_equal(em_command_state_parse(n, &back), EM_OK);
        assert_int_equal(back, i);
    }
    assert_string_equal(em_command_state_name(EM_CMD_ACKNOWLEDGED), "acknowledged");
    assert_null(em_command_state_name((em_command_state_t)6));
    em_command_state_t s;
    assert_int_equal(em_command_state_parse("done", &s), EM_ERR_VALIDATION);
    assert_int_equal(em_command_state_parse(NULL, &s), EM_ERR_INVALID_ARGUMENT);
}

static void test_event_kind_names_round_trip(void **state)
{
    (void)state;
    const char *names[] = {"security", "audit", "device", "validation"};
    for (int i = 0; i < 4; i++) {
        assert_string_equal(em_event_kind_name((em_event_kind_t)i), names[i]);
        em_event_kind_t k;
        assert_int_equal(em_event_kind_parse(names[i], &k), EM_OK);
        assert_int_equal(k, i);
    }
    assert_null(em_event_kind_name((em_event_kind_t)4));
    em_event_kind_t k;
    assert_int_equal(em_event_kind_parse("Security", &k), EM_ERR_VALIDATION);
}

static void test_role_names_exclude_none(void **state)
{
    (void)state;
    assert_null(em_role_name(EM_ROLE_NONE));
    assert_string_equal(em_role_name(EM_ROLE_VIEWER), "viewer");
    assert_string_equal(em_role_name(EM_ROLE_DEVICE), "device");
    assert_null(em_role_name((em_role_t)5));
    em_role_t r;
    assert_int_equal(em_role_parse("operator", &r), EM_OK);
    assert_int_equal(r, EM_ROLE_OPERATOR);
    assert_int_equal(em_role_parse("", &r), EM_ERR_VALIDATION);
    assert_int_equal(em_role_parse("root", &r), EM_ERR_VALIDATION);
}

/* ---- rollup aggregation ---------------------------------------------- */

static void test_rollup_bucket_floors_to_utc_hour_and_day(void **state)
{
    (void)state;
    assert_int_equal(em__rollup_bucket(EM_ROLLUP_HOUR, T0 + 90 * 60000), T0 + HOUR_MS);
    assert_int_equal(em__rollup_bucket(EM_ROLLUP_DAY, T0 + 25 * HOUR_MS), T0 + DAY_MS);
    assert_int_equal(em__rollup_bucket(EM_ROLLUP_HOUR, T0), T0);
    /* Before the epoch a time belongs to the bucket that starts before it. */
    assert_int_equal(em__rollup_bucket(EM_ROLLUP_HOUR, -1), -HOUR_MS);
    assert_int_equal(em__rollup_bucket(EM_ROLLUP_DAY, -1), -DAY_MS);
}

static em__store_rec_t tel_rec(const char *id, int64_t t, bool has_power, double power,
                               double delta, bool reset)
{
    em__store_rec_t r;
    memset(&r, 0, sizeof(r));
    r.kind = EM__REC_TELEMETRY;
    snprintf(r.device_id, sizeof(r.device_id), "%s", id);
    r.time_ms = t;
    r.u.tel.t.timestamp_ms = t;
    if (has_power) {
        r.u.tel.t.has = EM_TELEMETRY_HAS_POWER;
        r.u.tel.t.power_w = power;
    }
    r.u.tel.delta_wh = delta;
    r.u.tel.reset = reset;
    return r;
}

/* The increment for (id, kind, bucket); fails the test when there is none. */
static em__rollup_delta_t find_delta(const em__rollup_delta_t *d, size_t n, const char *id,
                                     em_rollup_t kind, int64_t bucket)
{
    for (size_t i = 0; i < n; i++) {
        if (strcmp(d[i].device_id, id) == 0 && d[i].kind == kind && d[i].bucket_ms == bucket) {
            return d[i];
        }
    }
    fail_msg("no increment for %s", id);
    em__rollup_delta_t none;
    memset(&none, 0, sizeof(none));
    return none;
}

static void test_rollups_aggregate_a_batch_per_device_and_bucket(void **state)
{
    (void)state;
    em__store_rec_t recs[6];
    recs[0] = tel_rec("dev-a", T0 + 60000, true, 10.0, 0.0, false);
    recs[1] = tel_rec("dev-a", T0 + 120000, true, 30.0, 4.0, false);
    recs[2] = tel_rec("dev-b", T0 + 180000, false, 0.0, 1.5, true);
    memset(&recs[3], 0, sizeof(recs[3]));
    recs[3].kind = EM__REC_STATUS; /* not telemetry: ignored */
    snprintf(recs[3].device_id, sizeof(recs[3].device_id), "dev-a");
    recs[4] = tel_rec("dev-a", T0 + HOUR_MS + 5, true, 20.0, 2.0, false);
    recs[5] = tel_rec("dev-a", T0 + DAY_MS, false, 0.0, 8.0, false);

    em__rollup_delta_t *d = NULL;
    size_t n = 0;
    assert_int_equal(em__store_rollups(recs, 6, &d, &n), EM_OK);
    /* dev-a: hours T0, T0+1h, T0+1d; days T0, T0+1d. dev-b: hour T0, day T0. */
    assert_int_equal(n, 7);
    em__rollup_delta_t h0 = find_delta(d, n, "dev-a", EM_ROLLUP_HOUR, T0);
    assert_int_equal(h0.samples, 2);
    assert_true(h0.energy_wh == 4.0);
    assert_int_equal(h0.power_samples, 2);
    assert_true(h0.power_sum_w == 40.0);
    assert_true(h0.power_max_w == 30.0);
    assert_int_equal(h0.resets, 0);
    em__rollup_delta_t day = find_delta(d, n, "dev-a", EM_ROLLUP_DAY, T0);
    assert_int_equal(day.samples, 3);
    assert_true(day.energy_wh == 6.0);
    em__rollup_delta_t b = find_delta(d, n, "dev-b", EM_ROLLUP_HOUR, T0);
    assert_int_equal(b.resets, 1);
    assert_int_equal(b.power_samples, 0);
    assert_true(isinf(b.power_max_w) && b.power_max_w < 0);
    free(d);
}

static void test_rollups_of_a_batch_without_telemetry_are_empty(void **state)
{
    (void)state;
    em__store_rec_t r;
    memset(&r, 0, sizeof(r));
    r.kind = EM__REC_KEY_USED;
    em__rollup_delta_t *d = (em__rollup_delta_t *)(uintptr_t)1; /* must be reset to NULL */
    size_t n = 99;
    assert_int_equal(em__store_rollups(&r, 1, &d, &n), EM_OK);
    assert_null(d);
    assert_int_equal(n, 0);
}

/* ---- URL and options ------------------------------------------------- */

static void test_open_refuses_empty_url(void **state)
{
    (void)state;
    em_store_t *st = (em_store_t *)(uintptr_t)1; /* must be reset to NULL */
    em_error_t err;
    assert_int_equal(em_store_open("", NULL, &st, &err), EM_ERR_CONFIGURATION);
    assert_null(st);
    assert_int_equal(em_store_open(NULL, NULL, &st, &err), EM_ERR_CONFIGURATION);
    assert_int_equal(em_store_open("sqlite:", NULL, &st, &err), EM_ERR_CONFIGURATION);
    assert_null(st);
}

static void test_open_refuses_unknown_scheme_without_echoing_the_url(void **state)
{
    (void)state;
    em_store_t *st = NULL;
    em_error_t err;
    assert_int_equal(em_store_open("mysql://admin:s3cretpw@db/emiot", NULL, &st, &err),
                     EM_ERR_CONFIGURATION);
    assert_null(st);
    assert_null(strstr(err.message, "s3cretpw"));
    assert_null(strstr(err.message, "admin"));
    assert_int_equal(em_store_open("SQLITE:/tmp/x.db", NULL, &st, &err), EM_ERR_CONFIGURATION);
    assert_int_equal(em_store_open("/tmp/x.db", NULL, &st, &err), EM_ERR_CONFIGURATION);
}

static void test_open_refuses_sqlite_url_with_a_host_or_memory(void **state)
{
    (void)state;
    em_store_t *st = NULL;
    em_error_t err;
    assert_int_equal(em_store_open("sqlite://host/emiot.db", NULL, &st, &err),
                     EM_ERR_CONFIGURATION);
    assert_int_equal(em_store_open("sqlite::memory:", NULL, &st, &err), EM_ERR_CONFIGURATION);
    assert_null(st);
}

static void test_open_refuses_options_out_of_range(void **state)
{
    fixture_t *f = *state;
    em_store_t *st = NULL;
    em_error_t err;
    em_store_options_t o = fast_options();
    o.batch_max = 0;
    assert_int_equal(em_store_open(f->url, &o, &st, &err), EM_ERR_CONFIGURATION);
    o = fast_options();
    o.batch_interval_ms = 10001;
    assert_int_equal(em_store_open(f->url, &o, &st, &err), EM_ERR_CONFIGURATION);
    o = fast_options();
    o.queue_max = 0;
    assert_int_equal(em_store_open(f->url, &o, &st, &err), EM_ERR_CONFIGURATION);
    o = fast_options();
    o.sync = (em_store_sync_t)7;
    assert_int_equal(em_store_open(f->url, &o, &st, &err), EM_ERR_CONFIGURATION);
    assert_null(st);
    /* Nothing was created either. */
    assert_int_equal(access(f->path, F_OK), -1);
}

static void test_open_accepts_absolute_url_form(void **state)
{
    fixture_t *f = *state;
    snprintf(f->url, sizeof(f->url), "sqlite://%s", f->path);
    open_fixture(f);
    assert_string_equal(em_store_backend(f->st), "sqlite");
    assert_int_equal(access(f->path, F_OK), 0);
}

static void test_open_creates_the_file_mode_0600(void **state)
{
    fixture_t *f = *state;
    mode_t old = umask(0);
    open_fixture(f);
    umask(old);
    struct stat sb;
    assert_int_equal(stat(f->path, &sb), 0);
    assert_int_equal(sb.st_mode & 0777, 0600);
}

static void test_open_reaches_the_newest_schema_version(void **state)
{
    fixture_t *f = *state;
    open_fixture(f);
    assert_int_equal(em_store_schema_version(f->st), EM__STORE_SCHEMA_VERSION);
    assert_int_equal(count_rows(f, "SELECT count(*) FROM schema_migrations"),
                     EM__STORE_SCHEMA_VERSION);
    /* Opening again applies nothing more. */
    em_store_close(f->st);
    open_fixture(f);
    assert_int_equal(count_rows(f, "SELECT count(*) FROM schema_migrations"),
                     EM__STORE_SCHEMA_VERSION);
}

static void test_open_refuses_a_newer_schema(void **state)
{
    fixture_t *f = *state;
    open_fixture(f);
    em_store_close(f->st);
    f->st = NULL;
    exec_sql(f, "INSERT INTO schema_migrations(version, applied_at_ms) VALUES(999, 0)");
    em_store_t *st = NULL;
    em_error_t err;
    em_store_options_t o = fast_options();
    assert_int_equal(em_store_open(f->url, &o, &st, &err), EM_ERR_CONFIGURATION);
    assert_null(st);
    assert_non_null(strstr(err.message, "newer"));
}

static void test_reopen_keeps_devices_groups_and_statuses(void **state)
{
    fixture_t *f = *state;
    open_fixture(f);
    em_error_t err;
    add_device(f->st, "dev-keep");
    assert_int_equal(em_store_group_insert(f->st, "floor 1", T0, &err), EM_OK);
    assert_int_equal(em_store_member_add(f->st, "floor 1", "dev-keep", &err), EM_OK);
    em_status_t s = a_status(77, T0 + 1000);
    assert_int_equal(em_store_enqueue_status(f->st, "dev-keep", &s, &err), EM_OK);
    em_store_close(f->st); /* no flush: close drains */
    open_fixture(f);
    em_store_device_t d;
    assert_int_equal(em_store_device_get(f->st, "dev-keep", &d, &err), EM_OK);
    assert_string_equal(d.name, "Device dev-keep");
    assert_int_equal(count_rows(f, "SELECT count(*) FROM memberships"), 1);
    assert_int_equal(count_rows(f, "SELECT battery FROM status_latest"), 77);
}

/* ---- argument checks ------------------------------------------------- */

static void test_device_insert_refuses_a_bad_id_and_writes_nothing(void **state)
{
    fixture_t *f = *state;
    open_fixture(f);
    em_store_device_t d;
    memset(&d, 0, sizeof(d));
    snprintf(d.id, sizeof(d.id), "a!");
    snprintf(d.name, sizeof(d.name), "x");
    em_error_t err;
    assert_int_equal(em_store_device_insert(f->st, &d, &err), EM_ERR_VALIDATION);
    snprintf(d.id, sizeof(d.id), "dev 1");
    assert_int_equal(em_store_device_insert(f->st, &d, &err), EM_ERR_VALIDATION);
    assert_int_equal(count_rows(f, "SELECT count(*) FROM devices"), 0);
}

static void test_device_insert_refuses_an_unterminated_name(void **state)
{
    fixture_t *f = *state;
    open_fixture(f);
    em_store_device_t d;
    memset(&d, 0, sizeof(d));
    snprintf(d.id, sizeof(d.id), "dev-1");
    memset(d.name, 'n', sizeof(d.name)); /* no NUL anywhere */
    em_error_t err;
    assert_int_equal(em_store_device_insert(f->st, &d, &err), EM_ERR_INVALID_ARGUMENT);
    assert_int_equal(count_rows(f, "SELECT count(*) FROM devices"), 0);
}

static void test_device_insert_refuses_an_unknown_type(void **state)
{
    fixture_t *f = *state;
    open_fixture(f);
    em_store_device_t d;
    memset(&d, 0, sizeof(d));
    snprintf(d.id, sizeof(d.id), "dev-1");
    snprintf(d.name, sizeof(d.name), "x");
    d.type = (em_device_type_t)42;
    em_error_t err;
    assert_int_equal(em_store_device_insert(f->st, &d, &err), EM_ERR_VALIDATION);
    assert_string_equal(err.field, "type");
    assert_int_equal(count_rows(f, "SELECT count(*) FROM devices"), 0);
}

static void test_enqueue_refuses_bad_records_and_queues_nothing(void **state)
{
    fixture_t *f = *state;
    open_fixture(f);
    add_device(f->st, "dev-1");
    em_error_t err;
    em_status_t s = a_status(50, T0);
    s.power_mode = 9;
    assert_int_equal(em_store_enqueue_status(f->st, "dev-1", &s, &err), EM_ERR_VALIDATION);
    s = a_status(101, T0);
    assert_int_equal(em_store_enqueue_status(f->st, "dev-1", &s, &err), EM_ERR_VALIDATION);
    s = a_status(50, T0);
    assert_int_equal(em_store_enqueue_status(f->st, "x", &s, &err), EM_ERR_VALIDATION);
    assert_int_equal(em_store_enqueue_status(f->st, "dev-1", NULL, &err), EM_ERR_INVALID_ARGUMENT);
    em_telemetry_t t;
    memset(&t, 0, sizeof(t));
    t.timestamp_ms = T0;
    assert_int_equal(em_store_enqueue_telemetry(f->st, "dev-1", &t, -1.0, false, &err),
                     EM_ERR_VALIDATION);
    assert_int_equal(em_store_enqueue_telemetry(f->st, "dev-1", &t, NAN, false, &err),
                     EM_ERR_VALIDATION);
    t.has = EM_TELEMETRY_HAS_POWER;
    t.power_w = INFINITY;
    assert_int_equal(em_store_enqueue_telemetry(f->st, "dev-1", &t, 0.0, false, &err),
                     EM_ERR_VALIDATION);
    assert_string_equal(err.field, "power_w");
    em_store_event_t ev;
    memset(&ev, 0, sizeof(ev));
    ev.kind = (em_event_kind_t)9;
    snprintf(ev.type, sizeof(ev.type), "tamper");
    assert_int_equal(em_store_enqueue_event(f->st, &ev, &err), EM_ERR_VALIDATION);
    ev.kind = EM_EVKIND_DEVICE;
    snprintf(ev.type, sizeof(ev.type), "bad type!");
    assert_int_equal(em_store_enqueue_event(f->st, &ev, &err), EM_ERR_VALIDATION);
    assert_int_equal(em_store_enqueue_command_state(f->st, "req_1", (em_command_state_t)6, 0, &err),
                     EM_ERR_VALIDATION);
    assert_int_equal(em_store_enqueue_key_used(f->st, "k_../etc", 0, &err), EM_ERR_VALIDATION);
    em_store_stats_t ss;
    em_store_stats(f->st, &ss);
    assert_int_equal(ss.enqueued, 0);
}

static void test_enqueue_refuses_json_over_the_maximum(void **state)
{
    fixture_t *f = *state;
    open_fixture(f);
    add_device(f->st, "dev-1");
    char *big = malloc(EM_STORE_JSON_MAX + 2);
    assert_non_null(big);
    memset(big, 'x', EM_STORE_JSON_MAX + 1);
    big[EM_STORE_JSON_MAX + 1] = '\0';
    em_status_t s = a_status(50, T0);
    s.has |= EM_STATUS_HAS_EXTRA;
    s.extra_json = big;
    em_error_t err;
    assert_int_equal(em_store_enqueue_status(f->st, "dev-1", &s, &err), EM_ERR_INVALID_ARGUMENT);
    assert_string_equal(err.field, "additionalInfo");
    em_store_event_t ev;
    memset(&ev, 0, sizeof(ev));
    ev.kind = EM_EVKIND_DEVICE;
    snprintf(ev.type, sizeof(ev.type), "tamper");
    ev.details_json = big;
    assert_int_equal(em_store_event_insert(f->st, &ev, &err), EM_ERR_INVALID_ARGUMENT);
    free(big);
    assert_int_equal(count_rows(f, "SELECT count(*) FROM events"), 0);
}

static int no_status(const char *id, const em_status_t *s, void *ud)
{
    (void)id;
    (void)s;
    (void)ud;
    fail_msg("no row was expected");
    return 1;
}

static int no_sample(const char *id, const em_telemetry_t *t, void *ud)
{
    (void)id;
    (void)t;
    (void)ud;
    fail_msg("no row was expected");
    return 1;
}

static void test_range_with_from_after_to_is_refused(void **state)
{
    fixture_t *f = *state;
    open_fixture(f);
    add_device(f->st, "dev-1");
    em_store_range_t r = {T0 + 10, T0, 10, false};
    em_error_t err;
    assert_int_equal(em_store_status_history(f->st, "dev-1", &r, no_status, NULL, &err),
                     EM_ERR_VALIDATION);
    r.from_ms = -5;
    r.to_ms = 0;
    assert_int_equal(em_store_telemetry_list(f->st, "dev-1", &r, no_sample, NULL, &err),
                     EM_ERR_VALIDATION);
}

static int count_device(const em_store_device_t *d, void *ud)
{
    (void)d;
    (*(size_t *)ud)++;
    return 0;
}

static void test_list_limit_is_clamped_to_the_page_maximum(void **state)
{
    fixture_t *f = *state;
    open_fixture(f);
    /* One transaction for the many devices: faster than 1001 commits. */
    exec_sql(f, "WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < 1001)"
                " INSERT INTO devices(id, name, type, cfg_has, reporting_interval,"
                " sleep_threshold, security_level, auto_wake, enabled, created_at_ms,"
                " updated_at_ms) SELECT printf('dev-%05d', i), 'n', 0, 0, 0, 0, 0, 0, 1, 0, 0"
                " FROM n");
    em_error_t err;
    size_t seen = 0;
    size_t count = 0;
    em_store_device_filter_t flt = {NULL, -1, NULL, 5000};
    assert_int_equal(em_store_device_list(f->st, &flt, count_device, &seen, &count, &err), EM_OK);
    assert_int_equal(count, EM_STORE_PAGE_MAX);
    assert_int_equal(seen, EM_STORE_PAGE_MAX);
    flt.limit = 0;
    assert_int_equal(em_store_device_list(f->st, &flt, count_device, &seen, &count, &err), EM_OK);
    assert_int_equal(count, EM_STORE_PAGE_DEFAULT);
    /* Keyset paging continues after the last id. */
    flt.after = "dev-01000";
    assert_int_equal(em_store_device_list(f->st, &flt, count_device, &seen, &count, &err), EM_OK);
    assert_int_equal(count, 1);
}

static void test_user_with_device_role_is_refused(void **state)
{
    fixture_t *f = *state;
    open_fixture(f);
    em_store_user_t u;
    memset(&u, 0, sizeof(u));
    snprintf(u.name, sizeof(u.name), "alice@example.org");
    u.role = EM_ROLE_DEVICE;
    em_error_t err;
    assert_int_equal(em_store_user_insert(f->st, &u, &err), EM_ERR_VALIDATION);
    snprintf(u.name, sizeof(u.name), "alice smith");
    u.role = EM_ROLE_ADMIN;
    assert_int_equal(em_store_user_insert(f->st, &u, &err), EM_ERR_VALIDATION);
    assert_int_equal(count_rows(f, "SELECT count(*) FROM users"), 0);
}

static void test_api_key_role_and_device_must_agree(void **state)
{
    fixture_t *f = *state;
    open_fixture(f);
    em_store_api_key_t k;
    memset(&k, 0, sizeof(k));
    snprintf(k.key_id, sizeof(k.key_id), "k_0123456789ab");
    snprintf(k.name, sizeof(k.name), "ci");
    k.role = EM_ROLE_DEVICE; /* without a device */
    em_error_t err;
    assert_int_equal(em_store_api_key_insert(f->st, &k, &err), EM_ERR_VALIDATION);
    k.role = EM_ROLE_VIEWER;
    snprintf(k.device_id, sizeof(k.device_id), "dev-1"); /* a viewer names no device */
    assert_int_equal(em_store_api_key_insert(f->st, &k, &err), EM_ERR_VALIDATION);
    k.device_id[0] = '\0';
    assert_int_equal(em_store_api_key_insert(f->st, &k, &err), EM_OK);
    assert_int_equal(em_store_api_key_insert(f->st, &k, &err), EM_ERR_EXISTS);
}

/* ---- device identity: argument checks ----------------------------------- */

static em_store_enroll_token_t a_token(void)
{
    em_store_enroll_token_t t;
    memset(&t, 0, sizeof(t));
    snprintf(t.token_id, sizeof(t.token_id), "e_0123456789ab");
    snprintf(t.device_id, sizeof(t.device_id), "dev-1");
    snprintf(t.owner, sizeof(t.owner), "user:alice");
    memset(t.hash, 0x5a, sizeof(t.hash));
    t.created_at_ms = T0;
    t.expires_at_ms = T0 + HOUR_MS;
    return t;
}

static void test_enroll_token_insert_refuses_bad_fields_and_writes_nothing(void **state)
{
    fixture_t *f = *state;
    open_fixture(f);
    add_device(f->st, "dev-1");
    em_error_t err;
    em_store_enroll_token_t t = a_token();
    snprintf(t.token_id, sizeof(t.token_id), "e_01 23");
    assert_int_equal(em_store_enroll_token_insert(f->st, &t, &err), EM_ERR_VALIDATION);
    assert_string_equal(err.field, "tokenId");
    t = a_token();
    t.token_id[0] = '\0';
    assert_int_equal(em_store_enroll_token_insert(f->st, &t, &err), EM_ERR_VALIDATION);
    t = a_token();
    snprintf(t.device_id, sizeof(t.device_id), "a/b");
    assert_int_equal(em_store_enroll_token_insert(f->st, &t, &err), EM_ERR_VALIDATION);
    t = a_token();
    snprintf(t.owner, sizeof(t.owner), "user:\nalice");
    assert_int_equal(em_store_enroll_token_insert(f->st, &t, &err), EM_ERR_VALIDATION);
    t = a_token();
    t.expires_at_ms = -1;
    assert_int_equal(em_store_enroll_token_insert(f->st, &t, &err), EM_ERR_VALIDATION);
    t = a_token();
    t.used_at_ms = -1;
    assert_int_equal(em_store_enroll_token_insert(f->st, &t, &err), EM_ERR_VALIDATION);
    assert_int_equal(count_rows(f, "SELECT count(*) FROM enroll_tokens"), 0);
    t = a_token();
    assert_int_equal(em_store_enroll_token_insert(f->st, &t, &err), EM_OK);
    assert_int_equal(count_rows(f, "SELECT count(*) FROM enroll_tokens"), 1);
}

static void test_enroll_token_strings_past_their_maximum_are_invalid_arguments(void **state)
{
    fixture_t *f = *state;
    open_fixture(f);
    add_device(f->st, "dev-1");
    em_error_t err;
    em_store_enroll_token_t t = a_token();
    memset(t.owner, 'a', sizeof(t.owner)); /* no terminating NUL */
    assert_int_equal(em_store_enroll_token_insert(f->st, &t, &err), EM_ERR_INVALID_ARGUMENT);
    t = a_token();
    memset(t.token_id, 'a', sizeof(t.token_id));
    assert_int_equal(em_store_enroll_token_insert(f->st, &t, &err), EM_ERR_INVALID_ARGUMENT);
    t = a_token();
    memset(t.device_id, 'a', sizeof(t.device_id));
    assert_int_equal(em_store_enroll_token_insert(f->st, &t, &err), EM_ERR_INVALID_ARGUMENT);
    assert_int_equal(count_rows(f, "SELECT count(*) FROM enroll_tokens"), 0);
}

static int count_token(const em_store_enroll_token_t *t, void *ud)
{
    (void)t;
    (*(int *)ud)++;
    return 0;
}

static void test_enroll_token_calls_refuse_null_arguments(void **state)
{
    fixture_t *f = *state;
    open_fixture(f);
    em_error_t err;
    unsigned char hash[32] = {0};
    em_store_enroll_token_t out;
    assert_int_equal(em_store_enroll_token_insert(NULL, NULL, &err), EM_ERR_INVALID_ARGUMENT);
    assert_int_equal(em_store_enroll_token_insert(f->st, NULL, &err), EM_ERR_INVALID_ARGUMENT);
    assert_int_equal(em_store_enroll_token_use(f->st, NULL, T0, &out, &err),
                     EM_ERR_INVALID_ARGUMENT);
    assert_int_equal(em_store_enroll_token_use(f->st, hash, T0, NULL, &err),
                     EM_ERR_INVALID_ARGUMENT);
    assert_int_equal(em_store_enroll_token_use(NULL, hash, T0, &out, &err),
                     EM_ERR_INVALID_ARGUMENT);
    assert_int_equal(em_store_enroll_token_list(f->st, NULL, NULL, NULL, &err),
                     EM_ERR_INVALID_ARGUMENT);
    int n = 0;
    assert_int_equal(em_store_enroll_token_list(f->st, "a/b", count_token, &n, &err),
                     EM_ERR_VALIDATION);
    assert_int_equal(n, 0);
}

/* used_at_ms 0 means "not used": a use without a time records the clock's. */
static void test_enroll_token_use_without_a_time_records_now(void **state)
{
    fixture_t *f = *state;
    open_fixture(f);
    add_device(f->st, "dev-1");
    em_error_t err;
    em_store_enroll_token_t t = a_token();
    assert_int_equal(em_store_enroll_token_insert(f->st, &t, &err), EM_OK);
    int64_t before = em_now_ms();
    em_store_enroll_token_t out;
    assert_int_equal(em_store_enroll_token_use(f->st, t.hash, 0, &out, &err), EM_OK);
    assert_int_equal(out.used_at_ms, 0);
    assert_int_equal(em_store_enroll_token_use(f->st, t.hash, 0, &out, &err), EM_OK);
    assert_true(out.used_at_ms >= before);
}

static em_store_device_cert_t a_cert(void)
{
    em_store_device_cert_t c;
    memset(&c, 0, sizeof(c));
    snprintf(c.device_id, sizeof(c.device_id), "dev-1");
    snprintf(c.serial, sizeof(c.serial), "7F3A00C1D2E3F40516273849AABBCCDD");
    memset(c.sha256, 'e', 64);
    snprintf(c.pem, sizeof(c.pem),
             "-----BEGIN CERTIFICATE-----\r\nMIIB\r\n"
             "-----END CERTIFICATE-----\r\n");
    c.not_after_ms = T0 + DAY_MS;
    c.created_at_ms = T0;
    return c;
}

static void test_device_cert_insert_refuses_bad_fields_and_writes_nothing(void **state)
{
    fixture_t *f = *state;
    open_fixture(f);
    add_device(f->st, "dev-1");
    em_error_t err;
    em_store_device_cert_t *c = malloc(sizeof(*c));
    assert_non_null(c);
    *c = a_cert();
    c->serial[0] = '\0';
    assert_int_equal(em_store_device_cert_insert(f->st, c, &err), EM_ERR_VALIDATION);
    assert_string_equal(err.field, "serial");
    *c = a_cert();
    c->serial[3] = 'g';
    assert_int_equal(em_store_device_cert_insert(f->st, c, &err), EM_ERR_VALIDATION);
    *c = a_cert();
    c->sha256[63] = '\0';
    assert_int_equal(em_store_device_cert_insert(f->st, c, &err), EM_ERR_VALIDATION);
    assert_string_equal(err.field, "sha256");
    *c = a_cert();
    c->sha256[0] = 'x';
    assert_int_equal(em_store_device_cert_insert(f->st, c, &err), EM_ERR_VALIDATION);
    *c = a_cert();
    snprintf(c->pem, sizeof(c->pem), "MIIB...");
    assert_int_equal(em_store_device_cert_insert(f->st, c, &err), EM_ERR_VALIDATION);
    assert_string_equal(err.field, "pem");
    *c = a_cert();
    snprintf(c->pem, sizeof(c->pem), "-----BEGIN PRIVATE KEY-----\nMIIB\n");
    assert_int_equal(em_store_device_cert_insert(f->st, c, &err), EM_ERR_VALIDATION);
    *c = a_cert();
    c->pem[30] = '\x01';
    assert_int_equal(em_store_device_cert_insert(f->st, c, &err), EM_ERR_VALIDATION);
    *c = a_cert();
    snprintf(c->device_id, sizeof(c->device_id), "x");
    assert_int_equal(em_store_device_cert_insert(f->st, c, &err), EM_ERR_VALIDATION);
    *c = a_cert();
    c->not_after_ms = -1;
    assert_int_equal(em_store_device_cert_insert(f->st, c, &err), EM_ERR_VALIDATION);
    assert_int_equal(count_rows(f, "SELECT count(*) FROM device_certs"), 0);
    /* Upper-case hex and CRLF line ends are fine. */
    *c = a_cert();
    assert_int_equal(em_store_device_cert_insert(f->st, c, &err), EM_OK);
    assert_int_equal(count_rows(f, "SELECT count(*) FROM device_certs"), 1);
    free(c);
}

static void test_device_cert_strings_past_their_maximum_are_invalid_arguments(void **state)
{
    fixture_t *f = *state;
    open_fixture(f);
    add_device(f->st, "dev-1");
    em_error_t err;
    em_store_device_cert_t *c = malloc(sizeof(*c));
    assert_non_null(c);
    *c = a_cert();
    memset(c->serial, 'a', sizeof(c->serial)); /* 41 hex digits, no NUL */
    assert_int_equal(em_store_device_cert_insert(f->st, c, &err), EM_ERR_INVALID_ARGUMENT);
    *c = a_cert();
    memset(c->sha256, 'a', sizeof(c->sha256));
    assert_int_equal(em_store_device_cert_insert(f->st, c, &err), EM_ERR_INVALID_ARGUMENT);
    *c = a_cert();
    memset(c->pem, 'A', sizeof(c->pem));
    assert_int_equal(em_store_device_cert_insert(f->st, c, &err), EM_ERR_INVALID_ARGUMENT);
    assert_int_equal(count_rows(f, "SELECT count(*) FROM device_certs"), 0);
    /* 40 hex digits is the longest serial. */
    *c = a_cert();
    memset(c->serial, 'a', sizeof(c->serial) - 1);
    assert_int_equal(em_store_device_cert_insert(f->st, c, &err), EM_OK);
    free(c);
}

static int count_cert(const em_store_device_cert_t *c, void *ud)
{
    (void)c;
    (*(int *)ud)++;
    return 0;
}

static void test_device_cert_calls_refuse_null_arguments(void **state)
{
    fixture_t *f = *state;
    open_fixture(f);
    em_error_t err;
    em_store_device_cert_t *out = malloc(sizeof(*out));
    assert_non_null(out);
    int n = 0;
    assert_int_equal(em_store_device_cert_insert(f->st, NULL, &err), EM_ERR_INVALID_ARGUMENT);
    assert_int_equal(em_store_device_cert_latest(f->st, "dev-1", NULL, &err),
                     EM_ERR_INVALID_ARGUMENT);
    assert_int_equal(em_store_device_cert_latest(f->st, NULL, out, &err), EM_ERR_INVALID_ARGUMENT);
    assert_int_equal(em_store_device_cert_latest(NULL, "dev-1", out, &err),
                     EM_ERR_INVALID_ARGUMENT);
    assert_int_equal(em_store_device_cert_list(f->st, "dev-1", NULL, NULL, &err),
                     EM_ERR_INVALID_ARGUMENT);
    assert_int_equal(em_store_device_cert_list(f->st, NULL, count_cert, &n, &err),
                     EM_ERR_INVALID_ARGUMENT);
    assert_int_equal(n, 0);
    free(out);
}

/* ---- the queue and the writer ------------------------------------------ */

static void test_enqueued_statuses_are_all_committed_after_flush(void **state)
{
    fixture_t *f = *state;
    open_fixture(f);
    char id[16];
    for (int d = 0; d < 10; d++) {
        snprintf(id, sizeof(id), "dev-%d", d);
        add_device(f->st, id);
    }
    em_error_t err;
    const int n = 20000;
    for (int i = 0; i < n; i++) {
        snprintf(id, sizeof(id), "dev-%d", i % 10);
        em_status_t s = a_status((uint8_t)(i % 101), T0 + i);
        assert_int_equal(em_store_enqueue_status(f->st, id, &s, &err), EM_OK);
    }
    assert_int_equal(em_store_flush(f->st, -1, &err), EM_OK);
    em_store_stats_t ss;
    em_store_stats(f->st, &ss);
    assert_int_equal(ss.enqueued, n);
    assert_int_equal(ss.committed, n);
    assert_int_equal(ss.queue_depth, 0);
    assert_true(ss.batches >= (uint64_t)n / 2000);
    assert_int_equal(count_rows(f, "SELECT count(*) FROM status_history"), n);
    /* The latest status of each device is its last one. */
    assert_int_equal(count_rows(f, "SELECT count(*) FROM status_latest"), 10);
    assert_int_equal(count_rows(f, "SELECT max(time_ms) FROM status_latest"), T0 + n - 1);
    assert_int_equal(count_rows(f, "SELECT min(time_ms) FROM status_latest"), T0 + n - 10);
}

typedef struct producer {
    em_store_t *st;
    int first;
    int n;
    int failures;
} producer_t;

static void *produce(void *arg)
{
    producer_t *p = arg;
    for (int i = 0; i < p->n; i++) {
        em_status_t s = a_status(1, T0 + p->first + i);
        em_error_t err;
        if (em_store_enqueue_status(p->st, "dev-bp", &s, &err) != EM_OK) {
            p->failures++;
        }
    }
    return NULL;
}

static void test_a_full_queue_makes_enqueue_wait_and_loses_nothing(void **state)
{
    fixture_t *f = *state;
    em_store_options_t o = fast_options();
    o.queue_max = 4;
    o.batch_max = 2;
    o.batch_interval_ms = 1;
    f->st = open_store(f, &o);
    add_device(f->st, "dev-bp");
    producer_t p[2] = {{f->st, 0, 1500, 0}, {f->st, 100000, 1500, 0}};
    pthread_t th[2];
    for (int i = 0; i < 2; i++) {
        assert_int_equal(pthread_create(&th[i], NULL, produce, &p[i]), 0);
    }
    for (int i = 0; i < 2; i++) {
        pthread_join(th[i], NULL);
        assert_int_equal(p[i].failures, 0);
    }
    em_error_t err;
    assert_int_equal(em_store_flush(f->st, -1, &err), EM_OK);
    em_store_stats_t ss;
    em_store_stats(f->st, &ss);
    assert_int_equal(ss.committed, 3000);
    assert_true(ss.queue_waits > 0);
    assert_int_equal(count_rows(f, "SELECT count(*) FROM status_history"), 3000);
}

/* Regression: the writer lingered for a batch_max the queue could never hold,
 * so every queue-full of records waited batch_interval_ms (here 10 s each). */
static void test_a_queue_smaller_than_a_batch_does_not_hold_producers(void **state)
{
    fixture_t *f = *state;
    em_store_options_t o = fast_options();
    o.queue_max = 4;
    o.batch_max = 2000;
    o.batch_interval_ms = 10000;
    f->st = open_store(f, &o);
    add_device(f->st, "dev-1");
    em_error_t err;
    for (int i = 0; i < 40; i++) {
        em_status_t s = a_status(1, T0 + i);
        assert_int_equal(em_store_enqueue_status(f->st, "dev-1", &s, &err), EM_OK);
    }
    assert_int_equal(em_store_flush(f->st, -1, &err), EM_OK);
    assert_int_equal(count_rows(f, "SELECT count(*) FROM status_history"), 40);
}

static void test_close_drains_the_queue(void **state)
{
    fixture_t *f = *state;
    em_store_options_t o = fast_options();
    o.batch_interval_ms = 10000; /* the writer would linger; close must not wait for it */
    o.batch_max = 100000;
    f->st = open_store(f, &o);
    add_device(f->st, "dev-1");
    em_error_t err;
    for (int i = 0; i < 5000; i++) {
        em_telemetry_t t;
        memset(&t, 0, sizeof(t));
        t.timestamp_ms = T0 + i;
        assert_int_equal(em_store_enqueue_telemetry(f->st, "dev-1", &t, 0.0, false, &err), EM_OK);
    }
    em_store_close(f->st);
    f->st = NULL;
    assert_int_equal(count_rows(f, "SELECT count(*) FROM telemetry"), 5000);
}

static void test_flush_with_nothing_queued_returns_at_once(void **state)
{
    fixture_t *f = *state;
    open_fixture(f);
    em_error_t err;
    assert_int_equal(em_store_flush(f->st, 0, &err), EM_OK);
}

/* Captures log lines so that the writer's failure report can be checked. */
static char last_log[EM_LOG_LINE_MAX];
static void capture_log(em_log_level_t level, const char *line, size_t len, void *ud)
{
    (void)ud;
    if (level >= EM_LOG_ERROR && len < sizeof(last_log)) {
        memcpy(last_log, line, len + 1);
    }
}

static void test_writer_stops_after_a_failing_batch_and_refuses_more(void **state)
{
    fixture_t *f = *state;
    open_fixture(f);
    add_device(f->st, "dev-1");
    /* Every history insert now fails, as a full disk would. */
    exec_sql(f, "CREATE TRIGGER boom BEFORE INSERT ON status_history"
                " BEGIN SELECT RAISE(ABORT, 'disk full'); END");
    last_log[0] = '\0';
    em_log_set_sink(capture_log, NULL);
    em_error_t err;
    em_status_t s = a_status(5, T0);
    assert_int_equal(em_store_enqueue_status(f->st, "dev-1", &s, &err), EM_OK);
    assert_int_equal(em_store_flush(f->st, -1, &err), EM_ERR_STATE);
    assert_int_equal(em_store_enqueue_status(f->st, "dev-1", &s, &err), EM_ERR_STATE);
    em_log_set_sink(NULL, NULL);
    em_store_stats_t ss;
    em_store_stats(f->st, &ss);
    assert_int_equal(ss.write_errors, 1);
    assert_int_equal(ss.committed, 0);
    assert_int_equal(ss.enqueued, 1);
    assert_non_null(strstr(last_log, "\"module\":\"store\""));
    assert_non_null(strstr(last_log, "disk full"));
    /* Synchronous calls still work: the API can report the trouble. */
    em_store_device_t d;
    assert_int_equal(em_store_device_get(f->st, "dev-1", &d, &err), EM_OK);
}

static void test_records_of_a_deleted_device_are_skipped_and_a_new_one_is_written(void **state)
{
    fixture_t *f = *state;
    open_fixture(f);
    add_device(f->st, "dev-1");
    add_device(f->st, "dev-2");
    em_error_t err;
    em_status_t s = a_status(10, T0);
    assert_int_equal(em_store_enqueue_status(f->st, "dev-1", &s, &err), EM_OK);
    assert_int_equal(em_store_flush(f->st, -1, &err), EM_OK); /* the writer caches dev-1 */
    assert_int_equal(em_store_device_delete(f->st, "dev-1", &err), EM_OK);
    assert_int_equal(count_rows(f, "SELECT count(*) FROM status_history"), 0);
    s = a_status(20, T0 + 1);
    assert_int_equal(em_store_enqueue_status(f->st, "dev-1", &s, &err), EM_OK);
    assert_int_equal(em_store_enqueue_status(f->st, "dev-2", &s, &err), EM_OK);
    assert_int_equal(em_store_flush(f->st, -1, &err), EM_OK);
    assert_int_equal(count_rows(f, "SELECT count(*) FROM status_history"), 1);
    /* The same id again is a new device: its records land under it. */
    add_device(f->st, "dev-1");
    s = a_status(30, T0 + 2);
    assert_int_equal(em_store_enqueue_status(f->st, "dev-1", &s, &err), EM_OK);
    assert_int_equal(em_store_flush(f->st, -1, &err), EM_OK);
    assert_int_equal(count_rows(f, "SELECT count(*) FROM status_history h JOIN devices d"
                                   " ON d.pk = h.device_pk WHERE d.id = 'dev-1'"),
                     1);
    assert_int_equal(count_rows(f, "SELECT count(*) FROM status_history h WHERE NOT EXISTS"
                                   " (SELECT 1 FROM devices d WHERE d.pk = h.device_pk)"),
                     0);
}

/* ---- rollups end to end ---------------------------------------------- */

typedef struct rollups {
    em_store_rollup_t r[8];
    size_t n;
} rollups_t;

static int collect_rollup(const em_store_rollup_t *r, void *ud)
{
    rollups_t *c = ud;
    if (c->n < 8) {
        c->r[c->n++] = *r;
    }
    return 0;
}

static void enqueue_tel(em_store_t *st, const char *id, int64_t t, double power, double delta,
                        bool reset)
{
    em_telemetry_t tel;
    memset(&tel, 0, sizeof(tel));
    tel.has = EM_TELEMETRY_HAS_POWER | EM_TELEMETRY_HAS_ENERGY;
    tel.timestamp_ms = t;
    tel.power_w = power;
    em_error_t err;
    assert_int_equal(em_store_enqueue_telemetry(st, id, &tel, delta, reset, &err), EM_OK);
}

static void test_rollups_sum_a_counter_sequence_with_a_reset(void **state)
{
    fixture_t *f = *state;
    open_fixture(f);
    add_device(f->st, "meter-1");
    em_error_t err;
    /* Counter 100 -> 105 -> (reset) 2 -> 9 (next hour): deltas 0, 5, 0, 7. */
    enqueue_tel(f->st, "meter-1", T0 + 10 * 60000, 10.0, 0.0, false);
    enqueue_tel(f->st, "meter-1", T0 + 20 * 60000, 20.0, 5.0, false);
    assert_int_equal(em_store_flush(f->st, -1, &err), EM_OK);
    /* A second batch adds to the same hour's row. */
    enqueue_tel(f->st, "meter-1", T0 + 30 * 60000, 30.0, 0.0, true);
    enqueue_tel(f->st, "meter-1", T0 + 70 * 60000, 40.0, 7.0, false);
    assert_int_equal(em_store_flush(f->st, -1, &err), EM_OK);

    rollups_t h = {0};
    assert_int_equal(
        em_store_rollup_device(f->st, "meter-1", EM_ROLLUP_HOUR, NULL, collect_rollup, &h, &err),
        EM_OK);
    assert_int_equal(h.n, 2);
    assert_int_equal(h.r[0].bucket_ms, T0);
    assert_int_equal(h.r[0].samples, 3);
    assert_true(h.r[0].energy_wh == 5.0);
    assert_true(h.r[0].power_avg_w == 20.0);
    assert_true(h.r[0].power_max_w == 30.0);
    assert_int_equal(h.r[0].resets, 1);
    assert_int_equal(h.r[0].devices, 1);
    assert_int_equal(h.r[1].bucket_ms, T0 + HOUR_MS);
    assert_true(h.r[1].energy_wh == 7.0);
    assert_int_equal(h.r[1].resets, 0);

    rollups_t d = {0};
    assert_int_equal(
        em_store_rollup_device(f->st, "meter-1", EM_ROLLUP_DAY, NULL, collect_rollup, &d, &err),
        EM_OK);
    assert_int_equal(d.n, 1);
    assert_int_equal(d.r[0].bucket_ms, T0);
    assert_int_equal(d.r[0].samples, 4);
    assert_true(d.r[0].energy_wh == 12.0);
    assert_true(d.r[0].power_avg_w == 25.0);
    assert_true(d.r[0].power_max_w == 40.0);
    assert_int_equal(d.r[0].resets, 1);
}

static void test_group_rollups_sum_current_members_only(void **state)
{
    fixture_t *f = *state;
    open_fixture(f);
    em_error_t err;
    add_device(f->st, "m-1");
    add_device(f->st, "m-2");
    add_device(f->st, "m-3");
    assert_int_equal(em_store_group_insert(f->st, "site", T0, &err), EM_OK);
    assert_int_equal(em_store_member_add(f->st, "site", "m-1", &err), EM_OK);
    assert_int_equal(em_store_member_add(f->st, "site", "m-2", &err), EM_OK);
    enqueue_tel(f->st, "m-1", T0 + 1000, 10.0, 1.0, false);
    enqueue_tel(f->st, "m-2", T0 + 2000, 30.0, 2.0, false);
    enqueue_tel(f->st, "m-3", T0 + 3000, 99.0, 50.0, false); /* not a member */
    assert_int_equal(em_store_flush(f->st, -1, &err), EM_OK);
    rollups_t g = {0};
    assert_int_equal(
        em_store_rollup_group(f->st, "site", EM_ROLLUP_HOUR, NULL, collect_rollup, &g, &err),
        EM_OK);
    assert_int_equal(g.n, 1);
    assert_int_equal(g.r[0].devices, 2);
    assert_int_equal(g.r[0].samples, 2);
    assert_true(g.r[0].energy_wh == 3.0);
    assert_true(g.r[0].power_avg_w == 20.0);
    assert_true(g.r[0].power_max_w == 30.0);
    assert_int_equal(
        em_store_rollup_group(f->st, "nowhere", EM_ROLLUP_HOUR, NULL, collect_rollup, &g, &err),
        EM_ERR_GROUP_NOT_FOUND);
}

/* ---- two daemons on one file --------------------------------------------- */

static void test_two_stores_share_one_file(void **state)
{
    fixture_t *f = *state;
    open_fixture(f);
    em_store_options_t o = fast_options();
    em_store_t *other = open_store(f, &o);
    assert_int_equal(em_store_schema_version(other), EM__STORE_SCHEMA_VERSION);
    add_device(f->st, "dev-a");
    add_device(other, "dev-b");
    em_error_t err;
    for (int i = 0; i < 500; i++) {
        em_status_t s = a_status(1, T0 + i);
        assert_int_equal(em_store_enqueue_status(f->st, "dev-b", &s, &err), EM_OK);
        assert_int_equal(em_store_enqueue_status(other, "dev-a", &s, &err), EM_OK);
    }
    assert_int_equal(em_store_flush(f->st, -1, &err), EM_OK);
    assert_int_equal(em_store_flush(other, -1, &err), EM_OK);
    em_store_device_t d;
    assert_int_equal(em_store_device_get(f->st, "dev-b", &d, &err), EM_OK);
    assert_int_equal(em_store_device_get(other, "dev-a", &d, &err), EM_OK);
    /* A device one deletes is gone for the other's writer too. */
    assert_int_equal(em_store_device_delete(other, "dev-b", &err), EM_OK);
    em_status_t s = a_status(2, T0 + 1000);
    assert_int_equal(em_store_enqueue_status(f->st, "dev-b", &s, &err), EM_OK);
    assert_int_equal(em_store_flush(f->st, -1, &err), EM_OK);
    em_store_close(other);
    assert_int_equal(count_rows(f, "SELECT count(*) FROM status_history"), 500);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_command_state_names_round_trip),
        cmocka_unit_test(test_event_kind_names_round_trip),
        cmocka_unit_test(test_role_names_exclude_none),
        cmocka_unit_test(test_rollup_bucket_floors_to_utc_hour_and_day),
        cmocka_unit_test(test_rollups_aggregate_a_batch_per_device_and_bucket),
        cmocka_unit_test(test_rollups_of_a_batch_without_telemetry_are_empty),
        cmocka_unit_test(test_open_refuses_empty_url),
        cmocka_unit_test(test_open_refuses_unknown_scheme_without_echoing_the_url),
        cmocka_unit_test(test_open_refuses_sqlite_url_with_a_host_or_memory),
        cmocka_unit_test_setup_teardown(test_open_refuses_options_out_of_range, setup, teardown),
        cmocka_unit_test_setup_teardown(test_open_accepts_absolute_url_form, setup, teardown),
        cmocka_unit_test_setup_teardown(test_open_creates_the_file_mode_0600, setup, teardown),
        cmocka_unit_test_setup_teardown(test_open_reaches_the_newest_schema_version, setup,
                                        teardown),
        cmocka_unit_test_setup_teardown(test_open_refuses_a_newer_schema, setup, teardown),
        cmocka_unit_test_setup_teardown(test_reopen_keeps_devices_groups_and_statuses, setup,
                                        teardown),
        cmocka_unit_test_setup_teardown(test_device_insert_refuses_a_bad_id_and_writes_nothing,
                                        setup, teardown),
        cmocka_unit_test_setup_teardown(test_device_insert_refuses_an_unterminated_name, setup,
                                        teardown),
        cmocka_unit_test_setup_teardown(test_device_insert_refuses_an_unknown_type, setup,
                                        teardown),
        cmocka_unit_test_setup_teardown(test_enqueue_refuses_bad_records_and_queues_nothing, setup,
                                        teardown),
        cmocka_unit_test_setup_teardown(test_enqueue_refuses_json_over_the_maximum, setup,
                                        teardown),
        cmocka_unit_test_setup_teardown(test_range_with_from_after_to_is_refused, setup, teardown),
        cmocka_unit_test_setup_teardown(test_list_limit_is_clamped_to_the_page_maximum, setup,
                                        teardown),
        cmocka_unit_test_setup_teardown(test_user_with_device_role_is_refused, setup, teardown),
        cmocka_unit_test_setup_teardown(test_api_key_role_and_device_must_agree, setup, teardown),
        cmocka_unit_test_setup_teardown(
            test_enroll_token_insert_refuses_bad_fields_and_writes_nothing, setup, teardown),
        cmocka_unit_test_setup_teardown(
            test_enroll_token_strings_past_their_maximum_are_invalid_arguments, setup, teardown),
        cmocka_unit_test_setup_teardown(test_enroll_token_calls_refuse_null_arguments, setup,
                                        teardown),
        cmocka_unit_test_setup_teardown(test_enroll_token_use_without_a_time_records_now, setup,
                                        teardown),
        cmocka_unit_test_setup_teardown(
            test_device_cert_insert_refuses_bad_fields_and_writes_nothing, setup, teardown),
        cmocka_unit_test_setup_teardown(
            test_device_cert_strings_past_their_maximum_are_invalid_arguments, setup, teardown),
        cmocka_unit_test_setup_teardown(test_device_cert_calls_refuse_null_arguments, setup,
                                        teardown),
        cmocka_unit_test_setup_teardown(test_enqueued_statuses_are_all_committed_after_flush, setup,
                                        teardown),
        cmocka_unit_test_setup_teardown(test_a_full_queue_makes_enqueue_wait_and_loses_nothing,
                                        setup, teardown),
        cmocka_unit_test_setup_teardown(test_a_queue_smaller_than_a_batch_does_not_hold_producers,
                                        setup, teardown),
        cmocka_unit_test_setup_teardown(test_close_drains_the_queue, setup, teardown),
        cmocka_unit_test_setup_teardown(test_flush_with_nothing_queued_returns_at_once, setup,
                                        teardown),
        cmocka_unit_test_setup_teardown(test_writer_stops_after_a_failing_batch_and_refuses_more,
                                        setup, teardown),
        cmocka_unit_test_setup_teardown(
            test_records_of_a_deleted_device_are_skipped_and_a_new_one_is_written, setup, teardown),
        cmocka_unit_test_setup_teardown(test_rollups_sum_a_counter_sequence_with_a_reset, setup,
                                        teardown),
        cmocka_unit_test_setup_teardown(test_group_rollups_sum_current_members_only, setup,
                                        teardown),
        cmocka_unit_test_setup_teardown(test_two_stores_share_one_file, setup, teardown),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
