/*
 * emiot tests - emiotd keeps what it acknowledged: restarts and kill -9.
 *
 * A real emiotd (tests/support/daemon.h) on a real mosquitto, first with its
 * default SQLite store, then on a throwaway PostgreSQL (tests/support/pg.h,
 * handed over as the store URL). Two checks, for each backend:
 *
 *  - a clean restart keeps devices, groups, memberships, statuses, history,
 *    commands and API keys (an old key still works, a revoked one still does
 *    not): everything is read back with the admin key and compared;
 *  - kill -9 during heavy ingest loses nothing acknowledged: a libmosquitto
 *    publisher sends statuses for many devices at QoS 1 while the test reads
 *    the daemon's committed-record counter (emiot_store_committed_total on
 *    its metrics listener); the value read just before SIGKILL is what the
 *    daemon had acknowledged. After a restart the status history of every
 *    device, read through the API, must hold at least that many rows, every
 *    latest status must match its history, the store must pass its own
 *    integrity check (SQLite) and ingest must carry on.
 *
 * The shared store suite (test_store.c) covers the backends themselves; this
 * covers the daemon on them.
 */
#include <mosquitto.h>
#include <pthread.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include <cjson/cJSON.h>
#include <cmocka.h>

#include "broker.h"
#include "daemon.h"
#include "pg.h"
#include "testutil.h"

#define BODY_MAX (512 * 1024)
#define METRIC   "emiot_store_committed_total"

/* The crash test: NDEV devices, at most PER_DEV statuses each (the history
 * of one device is read in one page of at most 1000 rows), and the daemon
 * is killed once KILL_AFTER records were committed. */
#define NDEV       20
#define PER_DEV    800
#define KILL_AFTER 3000

static em_test_broker_t broker;
static em_test_daemon_t dmn;
static em_test_pg_t pg;
static bool pg_started;
static bool pg_missing;

/* ---- answers ------------------------------------------------------------- */

typedef struct answer {
    int status;
    char *text;
    cJSON *json;
} answer_t;

static void answer_free(answer_t *a)
{
    free(a->text);
    cJSON_Delete(a->json);
    memset(a, 0, sizeof(*a));
}

static answer_t call(const char *key, const char *method, const char *path, const char *body)
{
    answer_t a = {0};
    a.text = malloc(BODY_MAX);
    assert_non_null(a.text);
    a.status = em_test_daemon_request(&dmn, key, method, path, body, a.text, BODY_MAX);
    a.json = cJSON_Parse(a.text);
    return a;
}

static answer_t admin(const char *method, const char *path, const char *body)
{
    return call(dmn.admin_key, method, path, body);
}

static const cJSON *data_of(const answer_t *a)
{
    return cJSON_GetObjectItemCaseSensitive(a->json, "data");
}

static const char *str_of(const cJSON *obj, const char *name)
{
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(obj, name);
    return cJSON_IsString(v) ? v->valuestring : NULL;
}

static void expect_status(const answer_t *a, int status, const char *what)
{
    if (a->status != status)
        fail_msg("%s: expected %d, got %d: %.400s", what, status, a->status, a->text);
}

/* GET path with the admin key, expecting 200; returns a copy of "data". */
static cJSON *get_data(const char *path)
{
    answer_t a = admin("GET", path, NULL);
    expect_status(&a, 200, path);
    cJSON *d = cJSON_Duplicate(data_of(&a), true);
    assert_non_null(d);
    answer_free(&a);
    return d;
}

/* Asserts that member name of a and b is the same JSON. */
static void expect_same(const cJSON *a, const cJSON *b, const char *name, const char *what)
{
    const cJSON *x = cJSON_GetObjectItemCaseSensitive(a, name);
    const cJSON *y = cJSON_GetObjectItemCaseSensitive(b, name);
    if (x == NULL || y == NULL || !cJSON_Compare(x, y, true)) {
        char *sx = x != NULL ? cJSON_PrintUnformatted(x) : NULL;
        char *sy = y != NULL ? cJSON_PrintUnformatted(y) : NULL;
        fail_msg("%s.%s: before %s, after %s", what, name, sx != NULL ? sx : "(none)",
                 sy != NULL ? sy : "(none)");
    }
}

/* ---- the daemon's metrics ------------------------------------------------- */

/* The value of an unlabelled metric on the metrics listener; -1 when absent. */
static double metric(const char *name)
{
    char path[EM_TEST_PATH_MAX], url[160];
    snprintf(path, sizeof(path), "%s/.metrics-%d", dmn.dir, (int)getpid());
    snprintf(url, sizeof(url), "%s/metrics", dmn.metrics_url);
    const char *argv[] = {"curl", "-s", "--max-time", "10", "-o", path, url, NULL};
    if (em_test_run(argv) != 0)
        return -1;
    FILE *f = fopen(path, "r");
    if (f == NULL)
        return -1;
    double v = -1;
    size_t nlen = strlen(name);
    char line[1024];
    while (fgets(line, sizeof(line), f) != NULL) {
        if (strncmp(line, name, nlen) == 0 && line[nlen] == ' ') {
            v = strtod(line + nlen + 1, NULL);
            break;
        }
    }
    fclose(f);
    unlink(path);
    return v;
}

/* ---- a QoS 1 publisher ------------------------------------------------------ */

typedef struct publisher {
    struct mosquitto *m;
    pthread_t thread;
    bool running;
    int ndev;
    int per_dev;
    atomic_int sent;
    atomic_int acked;
    atomic_bool stop;
    atomic_bool connected;
} publisher_t;

static publisher_t *live_pub;

static void on_connect(struct mosquitto *m, void *ud, int rc)
{
    (void)m;
    publisher_t *p = ud;
    if (rc == 0)
        atomic_store(&p->connected, true);
}

static void on_publish(struct mosquitto *m, void *ud, int mid)
{
    (void)m;
    (void)mid;
    publisher_t *p = ud;
    atomic_fetch_add(&p->acked, 1);
}

static void status_body(char *buf, size_t size, int battery)
{
    snprintf(buf, size,
             "{\"batteryLevel\":%d,\"powerMode\":\"normal\",\"connectionStatus\":\"online\","
             "\"firmwareVersion\":\"1.2.3\",\"signalStrength\":-67,\"errors\":[],"
             "\"additionalInfo\":{}}",
             battery);
}

/* Publishes ndev x per_dev statuses round-robin ("dur-N"), at most 200 not
 * yet acknowledged by the broker, until done or told to stop. */
static void *publish_loop(void *arg)
{
    publisher_t *p = arg;
    int total = p->ndev * p->per_dev;
    char topic[64], body[512];
    while (!atomic_load(&p->stop) && atomic_load(&p->sent) < total) {
        int i = atomic_load(&p->sent);
        if (i - atomic_load(&p->acked) >= 200) {
            em_test_sleep_ms(1);
            continue;
        }
        snprintf(topic, sizeof(topic), "device/dur-%d/status", i % p->ndev);
        status_body(body, sizeof(body), (i / p->ndev) % 101);
        int rc = mosquitto_publish(p->m, NULL, topic, (int)strlen(body), body, 1, false);
        if (rc != MOSQ_ERR_SUCCESS) {
            em_test_sleep_ms(5);
            continue;
        }
        atomic_fetch_add(&p->sent, 1);
    }
    return NULL;
}

static void publisher_stop(publisher_t *p)
{
    if (p == NULL)
        return;
    atomic_store(&p->stop, true);
    if (p->running) {
        pthread_join(p->thread, NULL);
        p->running = false;
    }
    if (p->m != NULL) {
        mosquitto_disconnect(p->m);
        mosquitto_loop_stop(p->m, true);
        mosquitto_destroy(p->m);
        p->m = NULL;
    }
    if (live_pub == p)
        live_pub = NULL;
}

static void publisher_start(publisher_t *p, int ndev, int per_dev)
{
    memset(p, 0, sizeof(*p));
    p->ndev = ndev;
    p->per_dev = per_dev;
    p->m = mosquitto_new(NULL, true, p);
    assert_non_null(p->m);
    live_pub = p;
    mosquitto_connect_callback_set(p->m, on_connect);
    mosquitto_publish_callback_set(p->m, on_publish);
    assert_int_equal(mosquitto_connect(p->m, "127.0.0.1", em_test_broker_port(&broker), 30),
                     MOSQ_ERR_SUCCESS);
    assert_int_equal(mosquitto_loop_start(p->m), MOSQ_ERR_SUCCESS);
    for (int i = 0; i < 500 && !atomic_load(&p->connected); i++)
        em_test_sleep_ms(10);
    assert_true(atomic_load(&p->connected));
    assert_int_equal(pthread_create(&p->thread, NULL, publish_loop, p), 0);
    p->running = true;
}

/* One status for device id with mosquitto_pub, QoS 1, as a device would. */
static void publish_status(const char *id, int battery)
{
    char topic[128], body[512], port[16];
    snprintf(topic, sizeof(topic), "device/%s/status", id);
    status_body(body, sizeof(body), battery);
    snprintf(port, sizeof(port), "%d", em_test_broker_port(&broker));
    const char *argv[] = {"mosquitto_pub", "-h", "127.0.0.1", "-p", port, "-q", "1", "-t",
                          topic,           "-m", body,        NULL};
    assert_int_equal(em_test_run(argv), 0);
}

/* ---- set-up ------------------------------------------------------------------ */

static int group_setup(void **state)
{
    (void)state;
    mosquitto_lib_init();
    return 0;
}

static int group_teardown(void **state)
{
    (void)state;
    if (pg_started)
        em_test_pg_cleanup(&pg);
    mosquitto_lib_cleanup();
    return 0;
}

static int test_teardown(void **state)
{
    (void)state;
    publisher_stop(live_pub);
    em_test_daemon_cleanup(&dmn);
    em_test_broker_cleanup(&broker);
    return 0;
}

/* A database of its own on the shared PostgreSQL server, started on first
 * use; false (the test is skipped) when PostgreSQL is not installed. */
static bool pg_database(const char *name, char *url, size_t size)
{
    if (pg_missing || !em_test_pg_available()) {
        pg_missing = true;
        return false;
    }
    if (!pg_started) {
        assert_int_equal(em_test_pg_start(&pg), 0);
        pg_started = true;
    }
    assert_int_equal(em_test_pg_create_db(&pg, name, url, size), 0);
    return true;
}

static void start(const char *store_url)
{
    assert_int_equal(em_test_broker_start(&broker, "plain"), 0);
    em_test_daemon_options_t o = {.store_url = store_url};
    assert_int_equal(em_test_daemon_start(&dmn, &broker, &o), 0);
    assert_true(dmn.admin_key[0] != '\0');
}

static void make_device(const char *body)
{
    answer_t a = admin("POST", "/api/v1/devices", body);
    expect_status(&a, 201, body);
    answer_free(&a);
}

/* The number of status history rows of device id. */
static int history_count(const char *id)
{
    char path[256];
    snprintf(path, sizeof(path), "/api/v1/devices/%s/status/history?limit=1000", id);
    cJSON *d = get_data(path);
    assert_true(cJSON_IsArray(d));
    int n = cJSON_GetArraySize(d);
    cJSON_Delete(d);
    return n;
}

/* Waits until device id has at least n history rows. */
static void wait_history(const char *id, int n)
{
    for (int i = 0; i < 300; i++) {
        if (history_count(id) >= n)
            return;
        em_test_sleep_ms(100);
    }
    fail_msg("%s: fewer than %d history rows after 30 s", id, n);
}

/* ---- a restart keeps everything -------------------------------------------- */

typedef struct snapshot {
    cJSON *dev1, *dev2, *group, *status, *history, *command, *keys, *groups;
} snapshot_t;

static void snapshot_free(snapshot_t *s)
{
    cJSON_Delete(s->dev1);
    cJSON_Delete(s->dev2);
    cJSON_Delete(s->group);
    cJSON_Delete(s->status);
    cJSON_Delete(s->history);
    cJSON_Delete(s->command);
    cJSON_Delete(s->keys);
    cJSON_Delete(s->groups);
    memset(s, 0, sizeof(*s));
}

static void take_snapshot(snapshot_t *s, const char *request_id)
{
    char path[256];
    s->dev1 = get_data("/api/v1/devices/dur-one");
    s->dev2 = get_data("/api/v1/devices/dur-two");
    s->group = get_data("/api/v1/groups/dur%20group");
    s->groups = get_data("/api/v1/groups");
    s->status = get_data("/api/v1/devices/dur-one/status");
    s->history = get_data("/api/v1/devices/dur-one/status/history?limit=1000&order=asc");
    snprintf(path, sizeof(path), "/api/v1/commands/%s", request_id);
    s->command = get_data(path);
    s->keys = get_data("/api/v1/keys");
}

static const cJSON *key_by_id(const cJSON *keys, const char *id)
{
    const cJSON *k;
    cJSON_ArrayForEach(k, keys)
    {
        const char *kid = str_of(k, "keyId");
        if (kid != NULL && strcmp(kid, id) == 0)
            return k;
    }
    return NULL;
}

static void restart_keeps_everything(const char *store_url)
{
    start(store_url);

    /* Devices, a group, memberships (one at creation, one added). */
    answer_t a = admin("POST", "/api/v1/groups", "{\"name\":\"dur group\"}");
    expect_status(&a, 201, "POST /api/v1/groups");
    answer_free(&a);
    make_device("{\"id\":\"dur-one\",\"name\":\"Kitchen plug\",\"type\":\"actuator\","
                "\"groups\":[\"dur group\"],\"config\":{\"reportingInterval\":60},"
                "\"enabled\":true}");
    make_device("{\"id\":\"dur-two\",\"name\":\"Cellar meter\",\"type\":\"sensor\"}");
    a = admin("PUT", "/api/v1/groups/dur%20group/members/dur-two", NULL);
    expect_status(&a, 200, "PUT member dur-two");
    answer_free(&a);
    a = admin("PATCH", "/api/v1/devices/dur-two",
              "{\"name\":\"Cellar meter 2\",\"enabled\":false}");
    expect_status(&a, 200, "PATCH dur-two");
    answer_free(&a);

    /* Statuses from the device, through the broker. */
    publish_status("dur-one", 90);
    wait_history("dur-one", 1);
    publish_status("dur-one", 80);
    wait_history("dur-one", 2);
    publish_status("dur-one", 70);
    wait_history("dur-one", 3);

    /* A command (the device is not there to answer; it stays sent or
     * acknowledged until it expires). */
    a = admin("POST", "/api/v1/devices/dur-one/commands",
              "{\"type\":\"sleep\",\"payload\":{\"duration\":60},\"ttl\":3600}");
    expect_status(&a, 202, "POST command");
    char rid[128];
    assert_non_null(str_of(data_of(&a), "requestId"));
    snprintf(rid, sizeof(rid), "%s", str_of(data_of(&a), "requestId"));
    answer_free(&a);

    /* Keys: one kept, one revoked. */
    char kept[EM_TEST_DAEMON_KEY_MAX], kept_id[32], revoked[EM_TEST_DAEMON_KEY_MAX], revoked_id[32],
        path[256];
    a = admin("POST", "/api/v1/keys", "{\"name\":\"dur-kept\",\"role\":\"viewer\"}");
    expect_status(&a, 201, "POST key kept");
    snprintf(kept, sizeof(kept), "%s", str_of(data_of(&a), "key"));
    snprintf(kept_id, sizeof(kept_id), "%s", str_of(data_of(&a), "keyId"));
    answer_free(&a);
    a = admin("POST", "/api/v1/keys", "{\"name\":\"dur-revoked\",\"role\":\"operator\"}");
    expect_status(&a, 201, "POST key revoked");
    snprintf(revoked, sizeof(revoked), "%s", str_of(data_of(&a), "key"));
    snprintf(revoked_id, sizeof(revoked_id), "%s", str_of(data_of(&a), "keyId"));
    answer_free(&a);
    snprintf(path, sizeof(path), "/api/v1/keys/%s", revoked_id);
    a = admin("DELETE", path, NULL);
    expect_status(&a, 200, "DELETE key");
    answer_free(&a);
    a = call(kept, "GET", "/api/v1/whoami", NULL);
    expect_status(&a, 200, "kept key before the restart");
    answer_free(&a);

    snapshot_t before, after;
    take_snapshot(&before, rid);
    assert_int_equal(em_test_daemon_restart(&dmn), 0);
    take_snapshot(&after, rid);

    static const char *const dev_fields[] = {
        "id", "name", "type", "groups", "config", "enabled", "createdAt", "updatedAt", NULL};
    for (int i = 0; dev_fields[i] != NULL; i++) {
        expect_same(before.dev1, after.dev1, dev_fields[i], "dur-one");
        expect_same(before.dev2, after.dev2, dev_fields[i], "dur-two");
    }
    assert_string_equal(str_of(after.dev2, "name"), "Cellar meter 2");
    assert_true(cJSON_IsFalse(cJSON_GetObjectItemCaseSensitive(after.dev2, "enabled")));

    /* The group with both members, in the list and in its own answer. */
    expect_same(before.group, after.group, "members", "group");
    const cJSON *members = cJSON_GetObjectItemCaseSensitive(after.group, "members");
    assert_int_equal(cJSON_GetArraySize(members), 2);
    if (!cJSON_Compare(before.groups, after.groups, true))
        fail_msg("the group list changed across the restart");

    /* The latest status and the whole history. */
    static const char *const st_fields[] = {"batteryLevel",   "powerMode", "firmwareVersion",
                                            "signalStrength", "lastSeen",  NULL};
    for (int i = 0; st_fields[i] != NULL; i++)
        expect_same(before.status, after.status, st_fields[i], "status");
    assert_int_equal(
        cJSON_GetNumberValue(cJSON_GetObjectItemCaseSensitive(after.status, "batteryLevel")), 70);
    assert_int_equal(cJSON_GetArraySize(after.history), 3);
    if (!cJSON_Compare(before.history, after.history, true))
        fail_msg("the status history changed across the restart");

    /* The command, as it was (its state may only have moved forward). */
    static const char *const cmd_fields[] = {"requestId", "deviceId",  "type",      "payload",
                                             "actor",     "createdAt", "expiresAt", NULL};
    for (int i = 0; cmd_fields[i] != NULL; i++)
        expect_same(before.command, after.command, cmd_fields[i], "command");

    /* The keys, and what they still open. */
    assert_int_equal(cJSON_GetArraySize(before.keys), cJSON_GetArraySize(after.keys));
    const cJSON *k;
    cJSON_ArrayForEach(k, before.keys)
    {
        const char *id = str_of(k, "keyId");
        const cJSON *k2 = key_by_id(after.keys, id);
        if (k2 == NULL)
            fail_msg("key %s lost in the restart", id);
        static const char *const key_fields[] = {"name", "role", "createdAt", "revokedAt", NULL};
        for (int i = 0; key_fields[i] != NULL; i++)
            expect_same(k, k2, key_fields[i], id);
    }
    assert_non_null(str_of(key_by_id(after.keys, revoked_id), "revokedAt"));
    a = call(kept, "GET", "/api/v1/whoami", NULL);
    expect_status(&a, 200, "kept key after the restart");
    answer_free(&a);
    a = call(revoked, "GET", "/api/v1/whoami", NULL);
    expect_status(&a, 401, "revoked key after the restart");
    answer_free(&a);
    a = admin("GET", "/api/v1/whoami", NULL);
    expect_status(&a, 200, "bootstrap admin key after the restart");
    answer_free(&a);
    a = call(revoked, "POST", "/api/v1/devices",
             "{\"id\":\"dur-late\",\"name\":\"x\",\"type\":\"sensor\"}");
    expect_status(&a, 401, "revoked key writing after the restart");
    answer_free(&a);
    a = admin("GET", "/api/v1/devices/dur-late", NULL);
    expect_status(&a, 404, "dur-late");
    answer_free(&a);

    snapshot_free(&before);
    snapshot_free(&after);
    (void)kept_id;
}

static void test_restart_keeps_everything_sqlite(void **state)
{
    (void)state;
    restart_keeps_everything(NULL);
}

static void test_restart_keeps_everything_postgresql(void **state)
{
    (void)state;
    char url[EM_TEST_PG_URL_MAX];
    if (!pg_database("dur_restart", url, sizeof(url)))
        skip();
    restart_keeps_everything(url);
}

/* ---- kill -9 during heavy ingest -------------------------------------------- */

/* PRAGMA integrity_check of the daemon's SQLite store (daemon stopped). */
static void expect_sqlite_intact(void)
{
    char db[EM_TEST_PATH_MAX + 16], out[EM_TEST_PATH_MAX + 16], cmd[3 * EM_TEST_PATH_MAX + 128];
    snprintf(db, sizeof(db), "%s/emiot.db", dmn.data_dir);
    snprintf(out, sizeof(out), "%s/.integrity", dmn.dir);
    snprintf(cmd, sizeof(cmd), "sqlite3 '%s' 'PRAGMA integrity_check;' > '%s' 2>&1", db, out);
    const char *argv[] = {"bash", "-c", cmd, NULL};
    assert_int_equal(em_test_run(argv), 0);
    char text[4096] = "";
    FILE *f = fopen(out, "r");
    assert_non_null(f);
    size_t n = fread(text, 1, sizeof(text) - 1, f);
    text[n] = '\0';
    fclose(f);
    if (strcmp(text, "ok\n") != 0)
        fail_msg("sqlite3 integrity_check: %s", text);
}

static void kill9_loses_nothing_acknowledged(const char *store_url)
{
    start(store_url);
    char body[256], id[32];
    for (int i = 0; i < NDEV; i++) {
        snprintf(body, sizeof(body),
                 "{\"id\":\"dur-%d\",\"name\":\"Meter %d\",\"type\":\"sensor\"}", i, i);
        make_device(body);
    }
    /* Everything committed so far is not a status; the count starts here. */
    double base = -1;
    for (int i = 0; i < 50 && base < 0; i++) {
        base = metric(METRIC);
        if (base < 0)
            em_test_sleep_ms(100);
    }
    if (base < 0)
        fail_msg("no %s on %s/metrics", METRIC, dmn.metrics_url);

    long long start_ms = (long long)time(NULL) * 1000;
    publisher_t pub;
    publisher_start(&pub, NDEV, PER_DEV);
    double committed = base;
    for (int i = 0; i < 600 && committed - base < KILL_AFTER; i++) {
        em_test_sleep_ms(20);
        double v = metric(METRIC);
        if (v >= committed)
            committed = v;
    }
    if (committed - base < KILL_AFTER)
        fail_msg("only %.0f records committed in 12 s (%d published)", committed - base,
                 atomic_load(&pub.sent));
    /* What the API acknowledged during the ingest must survive too: a device
     * created (201) and a key revoked (200) just before the crash. */
    answer_t a = admin("POST", "/api/v1/devices",
                       "{\"id\":\"dur-late\",\"name\":\"Late\",\"type\":\"sensor\"}");
    expect_status(&a, 201, "POST dur-late during the ingest");
    answer_free(&a);
    char late_key[EM_TEST_DAEMON_KEY_MAX], path[256];
    a = admin("POST", "/api/v1/keys", "{\"name\":\"dur-late\",\"role\":\"viewer\"}");
    expect_status(&a, 201, "POST key during the ingest");
    snprintf(late_key, sizeof(late_key), "%s", str_of(data_of(&a), "key"));
    snprintf(path, sizeof(path), "/api/v1/keys/%s", str_of(data_of(&a), "keyId"));
    answer_free(&a);
    a = admin("DELETE", path, NULL);
    expect_status(&a, 200, "DELETE key during the ingest");
    answer_free(&a);
    /* This read is the last thing the daemon says before it dies: all of it
     * was acknowledged. */
    double acked = metric(METRIC);
    assert_true(acked >= committed);
    assert_int_equal(em_test_daemon_kill(&dmn), 0);
    int sent_at_kill = atomic_load(&pub.sent);
    publisher_stop(&pub);
    print_message("killed with %.0f records acknowledged, %d of %d published\n", acked - base,
                  sent_at_kill, NDEV * PER_DEV);

    assert_int_equal(em_test_daemon_restart(&dmn), 0);

    /* Every device is still there (dur-late too), the late revocation
     * holds, and at least every acknowledged status is stored. */
    cJSON *list = get_data("/api/v1/devices?limit=1000");
    assert_int_equal(cJSON_GetArraySize(list), NDEV + 1);
    cJSON_Delete(list);
    a = call(late_key, "GET", "/api/v1/whoami", NULL);
    expect_status(&a, 401, "the key revoked just before kill -9");
    answer_free(&a);
    long rows = 0;
    for (int i = 0; i < NDEV; i++) {
        snprintf(id, sizeof(id), "dur-%d", i);
        snprintf(path, sizeof(path), "/api/v1/devices/%s/status/history?limit=1000&order=desc", id);
        cJSON *h = get_data(path);
        assert_true(cJSON_IsArray(h));
        int n = cJSON_GetArraySize(h);
        assert_true(n < 1000);
        rows += n;
        if (n == 0) {
            cJSON_Delete(h);
            continue;
        }
        /* The latest status is the newest history row (or one of the
         * newest, when several share its millisecond). */
        snprintf(path, sizeof(path), "/api/v1/devices/%s/status", id);
        cJSON *s = get_data(path);
        const cJSON *newest = cJSON_GetArrayItem(h, 0);
        expect_same(newest, s, "lastSeen", id);
        const char *seen = str_of(newest, "lastSeen");
        bool match = false;
        const cJSON *row;
        cJSON_ArrayForEach(row, h)
        {
            const char *t = str_of(row, "lastSeen");
            if (seen != NULL && t != NULL && strcmp(t, seen) == 0 &&
                cJSON_Compare(cJSON_GetObjectItemCaseSensitive(row, "batteryLevel"),
                              cJSON_GetObjectItemCaseSensitive(s, "batteryLevel"), true))
                match = true;
        }
        if (!match)
            fail_msg("%s: the latest status is not among the newest history rows", id);
        double b = cJSON_GetNumberValue(cJSON_GetObjectItemCaseSensitive(s, "batteryLevel"));
        assert_true(b >= 0 && b <= 100);
        cJSON_Delete(h);
        cJSON_Delete(s);
    }
    /* Records other than statuses committed during the ingest (device,
     * validation and audit events) are events: count them all, so that
     * none is mistaken for a status. */
    snprintf(path, sizeof(path), "/api/v1/events?limit=1000&from=%lld", start_ms - 1000);
    cJSON *ev = get_data(path);
    long events = cJSON_GetArraySize(ev);
    cJSON_Delete(ev);
    print_message("after the restart: %ld history rows, %ld events since the ingest began\n", rows,
                  events);
    if ((double)(rows + events) < acked - base)
        fail_msg("%ld history rows (+%ld events) after kill -9, %.0f records were acknowledged",
                 rows, events, acked - base);

    /* Ingest carries on after the crash. */
    publish_status("dur-0", 42);
    snprintf(path, sizeof(path), "/api/v1/devices/dur-0/status");
    assert_int_equal(
        em_test_daemon_poll(&dmn, dmn.admin_key, path, 200, "\"batteryLevel\":42", 30000), 0);
    assert_int_equal(em_test_daemon_stop(&dmn), 0);
    if (store_url == NULL)
        expect_sqlite_intact();
}

static void test_kill9_during_ingest_loses_no_acknowledged_status_sqlite(void **state)
{
    (void)state;
    kill9_loses_nothing_acknowledged(NULL);
}

static void test_kill9_during_ingest_loses_no_acknowledged_status_postgresql(void **state)
{
    (void)state;
    char url[EM_TEST_PG_URL_MAX];
    if (!pg_database("dur_kill", url, sizeof(url)))
        skip();
    kill9_loses_nothing_acknowledged(url);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_teardown(test_restart_keeps_everything_sqlite, test_teardown),
        cmocka_unit_test_teardown(test_kill9_during_ingest_loses_no_acknowledged_status_sqlite,
                                  test_teardown),
        cmocka_unit_test_teardown(test_restart_keeps_everything_postgresql, test_teardown),
        cmocka_unit_test_teardown(test_kill9_during_ingest_loses_no_acknowledged_status_postgresql,
                                  test_teardown),
    };
    return cmocka_run_group_tests(tests, group_setup, group_teardown);
}
