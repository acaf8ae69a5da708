/*
 * emiot tests - test_emiotd.c: emiotd as an operator runs it.
 *
 * A real mosquitto (TLS), the real emiotd (tests/support/daemon.h), curl for
 * the API, mosquitto_pub for devices. Nothing here asserts a timing: what
 * happens "after a moment" is polled for, with generous limits.
 */
#include <errno.h>
#include <fcntl.h>
#include <setjmp.h>
#include <signal.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cmocka.h>

#include "broker.h"
#include "daemon.h"
#include "testutil.h"

#define BODY_MAX (64 * 1024)
#define REJECTED "emiot_messages_rejected_total{reason=\"validation\"}"

static char body[BODY_MAX];

static int count_of(const char *hay, const char *needle)
{
    int n = 0;
    for (const char *p = strstr(hay, needle); p != NULL; p = strstr(p + 1, needle))
        n++;
    return n;
}

/* Occurrences of needle in the daemon's output file. */
static int log_count(em_test_daemon_t *d, const char *needle)
{
    FILE *f = fopen(d->out, "r");
    if (f == NULL)
        return 0;
    int n = 0;
    char line[8192];
    while (fgets(line, sizeof(line), f) != NULL)
        n += strstr(line, needle) != NULL;
    fclose(f);
    return n;
}

static int req(em_test_daemon_t *d, const char *method, const char *path, const char *json)
{
    return em_test_daemon_request(d, d->admin_key, method, path, json, body, sizeof(body));
}

/* Publishes one message as a device would (QoS 1, TLS with the broker's CA). */
static void publish(em_test_broker_t *b, const char *topic, const char *payload)
{
    char port[16];
    snprintf(port, sizeof(port), "%d", em_test_broker_port(b));
    const char *argv[] = {"mosquitto_pub",
                          "-h",
                          "localhost",
                          "-p",
                          port,
                          "--cafile",
                          em_test_broker_ca(b),
                          "-q",
                          "1",
                          "-t",
                          topic,
                          "-m",
                          payload,
                          NULL};
    assert_int_equal(em_test_run(argv), 0);
}

/* Publishes every line of a file, one message each, with one client. */
static void publish_lines(em_test_broker_t *b, const char *topic, const char *file)
{
    char cmd[2048];
    snprintf(cmd, sizeof(cmd),
             "mosquitto_pub -h localhost -p %d --cafile '%s' -q 1 -t '%s' -l < '%s'",
             em_test_broker_port(b), em_test_broker_ca(b), topic, file);
    const char *argv[] = {"bash", "-c", cmd, NULL};
    assert_int_equal(em_test_run(argv), 0);
}

static void create_device(em_test_daemon_t *d, const char *id)
{
    char json[256];
    snprintf(json, sizeof(json), "{\"id\":\"%s\",\"name\":\"Plug %s\",\"type\":\"actuator\"}", id,
             id);
    int st = req(d, "POST", "/api/v1/devices", json);
    if (st != 201)
        fail_msg("POST /api/v1/devices: %d %s", st, body);
}

static void wait_connected(em_test_daemon_t *d)
{
    for (int i = 0; i < 300; i++) {
        if (em_test_daemon_metric(d, "emiot_mqtt_connected") == 1)
            return;
        em_test_sleep_ms(100);
    }
    em_test_daemon_print_log(d);
    fail_msg("emiotd did not connect to the broker within 30 s");
}

static mode_t mode_of(const char *path)
{
    struct stat st;
    assert_int_equal(stat(path, &st), 0);
    return st.st_mode & 07777;
}

/* ---- fixture: one broker per test, one daemon per test ---------------- */

typedef struct fx {
    em_test_broker_t broker;
    em_test_daemon_t d;
} fx_t;

static int setup(void **state)
{
    fx_t *f = calloc(1, sizeof(*f));
    if (f == NULL || em_test_broker_start(&f->broker, "tls") != 0)
        return -1;
    *state = f;
    return 0;
}

static int teardown(void **state)
{
    fx_t *f = *state;
    em_test_daemon_cleanup(&f->d);
    em_test_broker_cleanup(&f->broker);
    free(f);
    return 0;
}

static void start(fx_t *f, const char *extra)
{
    em_test_daemon_options_t o = {.extra_config = extra};
    assert_int_equal(em_test_daemon_start(&f->d, &f->broker, &o), 0);
    assert_true(f->d.admin_key[0] != '\0');
}

/* Runs emiotd --check-config on path; returns its exit status. */
static int check_config(const char *path)
{
    char exe[EM_TEST_PATH_MAX];
    snprintf(exe, sizeof(exe), "%s/emiotd", EM_TEST_BINARY_DIR);
    const char *argv[] = {exe, "--check-config", "--config", path, NULL};
    return em_test_run(argv);
}

/* ---- tests ------------------------------------------------------------ */

static void test_check_config_accepts_valid_and_refuses_bad_and_placeholder(void **state)
{
    fx_t *f = *state;
    assert_int_equal(em_test_daemon_init(&f->d, &f->broker, NULL), 0);
    assert_int_equal(check_config(f->d.config), 0);

    assert_int_equal(em_test_daemon_set_extra_config(&f->d, "[api]\nrate_admin = fast\n"), 0);
    assert_int_equal(check_config(f->d.config), 1);

    assert_int_equal(em_test_daemon_set_extra_config(&f->d, "[mqtt]\npassword = hunter2\n"), 0);
    assert_int_equal(check_config(f->d.config), 1);

    setenv("EMIOTD_TEST_PW", "changeme", 1);
    assert_int_equal(em_test_daemon_set_extra_config(
                         &f->d, "[mqtt]\nusername = emiotd\npassword_env = EMIOTD_TEST_PW\n"),
                     0);
    assert_int_equal(check_config(f->d.config), 1);
    setenv("EMIOTD_TEST_PW", "Tr0mbone-gallop-42", 1);
    assert_int_equal(check_config(f->d.config), 0);
    unsetenv("EMIOTD_TEST_PW");
    assert_int_equal(check_config("/nonexistent/emiotd.conf"), 1);
}

static void test_placeholder_store_password_refuses_to_start(void **state)
{
    fx_t *f = *state;
    em_test_daemon_options_t o = {.store_url = "postgresql://emiot:changeme@127.0.0.1/emiot",
                                  .no_wait = true};
    assert_int_equal(em_test_daemon_start(&f->d, &f->broker, &o), 0);
    assert_int_equal(em_test_daemon_wait_exit(&f->d, 30000), 78);
    assert_true(em_test_daemon_log_contains(&f->d, "placeholder"));
    assert_false(em_test_daemon_log_contains(&f->d, "changeme"));
    /* Nothing was created: the refusal comes before the data directory. */
    assert_int_not_equal(access(f->d.key_file, F_OK), 0);
}

static void test_first_start_creates_private_keys_and_the_key_works(void **state)
{
    fx_t *f = *state;
    start(f, NULL);
    assert_int_equal(mode_of(f->d.data_dir), 0700);
    assert_int_equal(mode_of(f->d.key_file), 0600);
    char jwt[EM_TEST_PATH_MAX + 16];
    snprintf(jwt, sizeof(jwt), "%s/jwt.key", f->d.data_dir);
    assert_int_equal(mode_of(jwt), 0600);
    assert_int_equal(strlen(f->d.admin_key), 52);
    assert_memory_equal(f->d.admin_key, "iot_", 4);

    assert_int_equal(req(&f->d, "GET", "/api/v1/whoami", NULL), 200);
    assert_non_null(strstr(body, "\"admin\""));
    /* The key is in the file, never in the log. */
    assert_false(em_test_daemon_log_contains(&f->d, f->d.admin_key));
    assert_int_equal(log_count(&f->d, "first start"), 1);
    /* A wrong key is refused. */
    char wrong[64];
    snprintf(wrong, sizeof(wrong), "%s", f->d.admin_key);
    wrong[10] = wrong[10] == 'a' ? 'b' : 'a';
    assert_int_equal(
        em_test_daemon_request(&f->d, wrong, "GET", "/api/v1/whoami", NULL, body, sizeof(body)),
        401);
}

static void test_second_start_does_not_create_another_key(void **state)
{
    fx_t *f = *state;
    start(f, NULL);
    char first[EM_TEST_DAEMON_KEY_MAX];
    snprintf(first, sizeof(first), "%s", f->d.admin_key);
    assert_int_equal(em_test_daemon_stop(&f->d), 0);
    /* The operator read the key and deleted the file, as the log asks. */
    assert_int_equal(unlink(f->d.key_file), 0);
    assert_int_equal(em_test_daemon_restart(&f->d), 0);
    assert_int_not_equal(access(f->d.key_file, F_OK), 0);
    assert_int_equal(log_count(&f->d, "first start"), 1);
    assert_int_equal(
        em_test_daemon_request(&f->d, first, "GET", "/api/v1/keys", NULL, body, sizeof(body)), 200);
    assert_int_equal(count_of(body, "\"keyId\""), 1);
}

static void test_published_status_is_stored(void **state)
{
    fx_t *f = *state;
    start(f, NULL);
    wait_connected(&f->d);
    create_device(&f->d, "plug-001");
    publish(&f->broker, "device/plug-001/status",
            "{\"batteryLevel\":75,\"powerMode\":\"normal\",\"connectionStatus\":\"online\"}");
    assert_int_equal(em_test_daemon_poll(&f->d, f->d.admin_key,
                                         "/api/v1/devices/plug-001/status/history", 200,
                                         "\"batteryLevel\":75", 30000),
                     0);
    assert_int_equal(req(&f->d, "GET", "/api/v1/devices/plug-001/status", NULL), 200);
    assert_non_null(strstr(body, "\"batteryLevel\":75"));
}

static void test_rejected_message_becomes_a_validation_event(void **state)
{
    fx_t *f = *state;
    start(f, NULL);
    wait_connected(&f->d);
    create_device(&f->d, "plug-002");
    publish(&f->broker, "device/plug-002/status", "{\"batteryLevel\":250}");
    assert_int_equal(em_test_daemon_poll(&f->d, f->d.admin_key, "/api/v1/events?kind=validation",
                                         200, "plug-002", 30000),
                     0);
}

static void test_validation_events_are_bounded_per_device(void **state)
{
    fx_t *f = *state;
    start(f, NULL);
    wait_connected(&f->d);
    create_device(&f->d, "plug-008");
    char file[EM_TEST_PATH_MAX];
    snprintf(file, sizeof(file), "%s/bad.txt", f->d.dir);
    FILE *fp = fopen(file, "w");
    assert_non_null(fp);
    for (int i = 0; i < 30; i++)
        fprintf(fp, "{\"batteryLevel\":%d}\n", 200 + i);
    fclose(fp);
    double before = em_test_daemon_metric(&f->d, REJECTED);
    assert_true(before >= 0);
    publish_lines(&f->broker, "device/plug-008/status", file);
    for (int i = 0; i < 300; i++) {
        if (em_test_daemon_metric(&f->d, REJECTED) >= before + 30)
            break;
        em_test_sleep_ms(100);
    }
    assert_true(em_test_daemon_metric(&f->d, REJECTED) >= before + 30);
    /* A clean stop commits every queued event: then count them. */
    assert_int_equal(em_test_daemon_stop(&f->d), 0);
    assert_int_equal(em_test_daemon_restart(&f->d), 0);
    assert_int_equal(
        req(&f->d, "GET", "/api/v1/events?kind=validation&device=plug-008&limit=1000", NULL), 200);
    int n = count_of(body, "\"kind\":\"validation\"");
    assert_true(n >= 1 && n <= 5);
}

static void test_restart_keeps_devices_groups_statuses_and_commands(void **state)
{
    fx_t *f = *state;
    start(f, NULL);
    wait_connected(&f->d);
    create_device(&f->d, "plug-003");
    create_device(&f->d, "plug-004");
    assert_int_equal(req(&f->d, "POST", "/api/v1/groups", "{\"name\":\"kitchen\"}"), 201);
    assert_int_equal(req(&f->d, "PUT", "/api/v1/groups/kitchen/members/plug-003", NULL), 200);
    publish(&f->broker, "device/plug-003/status", "{\"batteryLevel\":42,\"powerMode\":\"normal\"}");
    assert_int_equal(em_test_daemon_poll(&f->d, f->d.admin_key, "/api/v1/devices/plug-003/status",
                                         200, "\"batteryLevel\":42", 30000),
                     0);
    assert_int_equal(req(&f->d, "POST", "/api/v1/devices/plug-004/commands", "{\"type\":\"wake\"}"),
                     202);
    char *rid = strstr(body, "\"requestId\":\"");
    assert_non_null(rid);
    rid += strlen("\"requestId\":\"");
    char request_id[128];
    size_t n = strcspn(rid, "\"");
    assert_true(n > 0 && n < sizeof(request_id));
    memcpy(request_id, rid, n);
    request_id[n] = '\0';

    assert_int_equal(em_test_daemon_restart(&f->d), 0);
    assert_int_equal(req(&f->d, "GET", "/api/v1/devices/plug-004", NULL), 200);
    assert_int_equal(req(&f->d, "GET", "/api/v1/groups/kitchen", NULL), 200);
    assert_non_null(strstr(body, "plug-003"));
    assert_null(strstr(body, "plug-004"));
    /* The latest status was loaded back into the manager. */
    assert_int_equal(req(&f->d, "GET", "/api/v1/devices/plug-003", NULL), 200);
    assert_non_null(strstr(body, "\"batteryLevel\":42"));
    char path[256];
    snprintf(path, sizeof(path), "/api/v1/commands/%s", request_id);
    assert_int_equal(req(&f->d, "GET", path, NULL), 200);
    assert_non_null(strstr(body, "plug-004"));
    assert_non_null(strstr(body, "\"wake\""));
    /* The restarted daemon still takes statuses for loaded devices. */
    wait_connected(&f->d);
    publish(&f->broker, "device/plug-004/status", "{\"batteryLevel\":9}");
    assert_int_equal(em_test_daemon_poll(&f->d, f->d.admin_key, "/api/v1/devices/plug-004/status",
                                         200, "\"batteryLevel\":9", 30000),
                     0);
}

static void test_command_acknowledged_by_the_broker_is_recorded(void **state)
{
    fx_t *f = *state;
    start(f, NULL);
    wait_connected(&f->d);
    create_device(&f->d, "plug-005");
    assert_int_equal(req(&f->d, "POST", "/api/v1/devices/plug-005/commands", "{\"type\":\"wake\"}"),
                     202);
    char *rid = strstr(body, "\"requestId\":\"");
    assert_non_null(rid);
    rid += strlen("\"requestId\":\"");
    char path[256];
    int n = snprintf(path, sizeof(path), "/api/v1/commands/%.*s", (int)strcspn(rid, "\""), rid);
    assert_true(n > 0 && (size_t)n < sizeof(path));
    assert_int_equal(
        em_test_daemon_poll(&f->d, f->d.admin_key, path, 200, "\"state\":\"acknowledged\"", 30000),
        0);
}

static void test_sighup_applies_a_new_rate_limit_and_log_level(void **state)
{
    fx_t *f = *state;
    start(f, NULL);
    for (int i = 0; i < 6; i++)
        assert_int_equal(req(&f->d, "GET", "/api/v1/whoami", NULL), 200);
    assert_int_equal(log_count(&f->d, "\"level\":\"debug\""), 0);

    assert_int_equal(em_test_daemon_set_extra_config(
                         &f->d, "[api]\nrate_admin = 2\n[daemon]\nlog_level = debug\n"),
                     0);
    int reloads = log_count(&f->d, "configuration reloaded");
    assert_int_equal(em_test_daemon_signal(&f->d, SIGHUP), 0);
    for (int i = 0; i < 300 && log_count(&f->d, "configuration reloaded") == reloads; i++)
        em_test_sleep_ms(100);
    assert_int_equal(log_count(&f->d, "configuration reloaded"), reloads + 1);
    assert_true(em_test_daemon_log_contains(&f->d, "\"log_level\":\"debug\""));

    bool limited = false;
    for (int i = 0; i < 10 && !limited; i++)
        limited = req(&f->d, "GET", "/api/v1/whoami", NULL) == 429;
    assert_true(limited);

    /* A broken file is refused and the running settings stay. */
    assert_int_equal(em_test_daemon_set_extra_config(&f->d, "[api]\nrate_admin = -1\n"), 0);
    assert_int_equal(em_test_daemon_signal(&f->d, SIGHUP), 0);
    for (int i = 0; i < 300 && !em_test_daemon_log_contains(&f->d, "reload failed"); i++)
        em_test_sleep_ms(100);
    assert_true(em_test_daemon_log_contains(&f->d, "reload failed"));
    assert_int_equal(
        em_test_daemon_request(&f->d, NULL, "GET", "/healthz", NULL, body, sizeof(body)), 200);
}

static void test_sigterm_exits_0_and_loses_nothing_queued(void **state)
{
    fx_t *f = *state;
    /* Batches wait up to 10 s: at SIGTERM the statuses are still queued, and
     * only the drain commits them. */
    start(f, "[store]\nbatch_interval_ms = 10000\nbatch_max = 100000\n");
    wait_connected(&f->d);
    create_device(&f->d, "plug-006");
    char file[EM_TEST_PATH_MAX];
    snprintf(file, sizeof(file), "%s/statuses.txt", f->d.dir);
    FILE *fp = fopen(file, "w");
    assert_non_null(fp);
    const int n = 50;
    for (int i = 0; i < n; i++)
        fprintf(fp, "{\"batteryLevel\":%d}\n", i + 1);
    fclose(fp);
    double before = em_test_daemon_metric(&f->d, "emiot_status_accepted_total");
    assert_true(before >= 0);
    publish_lines(&f->broker, "device/plug-006/status", file);
    for (int i = 0; i < 300; i++) {
        if (em_test_daemon_metric(&f->d, "emiot_status_accepted_total") >= before + n)
            break;
        em_test_sleep_ms(100);
    }
    assert_true(em_test_daemon_metric(&f->d, "emiot_status_accepted_total") >= before + n);

    assert_int_equal(em_test_daemon_stop(&f->d), 0);
    assert_true(em_test_daemon_log_contains(&f->d, "stopped cleanly"));
    assert_int_equal(em_test_daemon_restart(&f->d), 0);
    assert_int_equal(req(&f->d, "GET", "/api/v1/devices/plug-006/status/history?limit=1000", NULL),
                     200);
    assert_int_equal(count_of(body, "\"batteryLevel\""), n);
}

static void test_broker_down_at_start_connects_later(void **state)
{
    fx_t *f = *state;
    em_test_broker_stop(&f->broker);
    start(f, "[mqtt]\nreconnect_max = 2\n");
    /* The API serves without the broker. */
    assert_int_equal(req(&f->d, "GET", "/api/v1/devices", NULL), 200);
    create_device(&f->d, "plug-007");
    for (int i = 0; i < 300 && !em_test_daemon_log_contains(&f->d, "cannot connect to the broker");
         i++)
        em_test_sleep_ms(100);
    assert_true(em_test_daemon_log_contains(&f->d, "cannot connect to the broker"));
    assert_int_equal(em_test_broker_restart(&f->broker), 0);
    wait_connected(&f->d);
    publish(&f->broker, "device/plug-007/status", "{\"batteryLevel\":77}");
    assert_int_equal(em_test_daemon_poll(&f->d, f->d.admin_key, "/api/v1/devices/plug-007/status",
                                         200, "\"batteryLevel\":77", 30000),
                     0);
}

static void test_unknown_argument_and_version(void **state)
{
    (void)state;
    char exe[EM_TEST_PATH_MAX];
    snprintf(exe, sizeof(exe), "%s/emiotd", EM_TEST_BINARY_DIR);
    const char *bad[] = {exe, "--frobnicate", NULL};
    assert_int_equal(em_test_run(bad), 2);
    const char *version[] = {exe, "--version", NULL};
    assert_int_equal(em_test_run(version), 0);
    const char *help[] = {exe, "--help", NULL};
    assert_int_equal(em_test_run(help), 0);
    const char *missing[] = {exe, "--config", "/nonexistent/emiotd.conf", NULL};
    assert_int_equal(em_test_run(missing), 78);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_unknown_argument_and_version),
        cmocka_unit_test_setup_teardown(
            test_check_config_accepts_valid_and_refuses_bad_and_placeholder, setup, teardown),
        cmocka_unit_test_setup_teardown(test_placeholder_store_password_refuses_to_start, setup,
                                        teardown),
        cmocka_unit_test_setup_teardown(test_first_start_creates_private_keys_and_the_key_works,
                                        setup, teardown),
        cmocka_unit_test_setup_teardown(test_second_start_does_not_create_another_key, setup,
                                        teardown),
        cmocka_unit_test_setup_teardown(test_published_status_is_stored, setup, teardown),
        cmocka_unit_test_setup_teardown(test_rejected_message_becomes_a_validation_event, setup,
                                        teardown),
        cmocka_unit_test_setup_teardown(test_validation_events_are_bounded_per_device, setup,
                                        teardown),
        cmocka_unit_test_setup_teardown(test_restart_keeps_devices_groups_statuses_and_commands,
                                        setup, teardown),
        cmocka_unit_test_setup_teardown(test_command_acknowledged_by_the_broker_is_recorded, setup,
                                        teardown),
        cmocka_unit_test_setup_teardown(test_sighup_applies_a_new_rate_limit_and_log_level, setup,
                                        teardown),
        cmocka_unit_test_setup_teardown(test_sigterm_exits_0_and_loses_nothing_queued, setup,
                                        teardown),
        cmocka_unit_test_setup_teardown(test_broker_down_at_start_connects_later, setup, teardown),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
