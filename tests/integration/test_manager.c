/*
 * emiot tests - the manager against a real mosquitto.
 *
 * The "device" here is written only to energy-manager-iot's wire format: it is
 * mosquitto_pub and mosquitto_sub, driven by the test, with no emiot code on
 * its side. Each test starts its own broker on a free loopback port (stopped by
 * PID in the teardown, even when an assertion fails).
 */
#include <pthread.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <cmocka.h>

#include "broker.h"
#include "emiot/emiot.h"
#include "testutil.h"

#define WAIT_MS 15000

/* What the callbacks saw; written on the network thread. */
struct seen {
    pthread_mutex_t lock;
    int counts[EM_EVENT_TYPE_COUNT];
    int last_battery;
    char last_request_id[EM_REQUEST_ID_MAX + 1];
    bool last_success;
    em_err_t last_error;
    char last_error_field[EM_ERROR_FIELD_MAX + 1];
    char last_device[EM_DEVICE_ID_MAX + 1];
    char last_acked_id[EM_REQUEST_ID_MAX + 1];
};

struct fixture {
    em_test_broker_t broker;
    em_manager_t *mgr;
    struct seen seen;
    pid_t sub_pid;
    char sub_file[EM_TEST_PATH_MAX];
};

static void on_event(em_manager_t *mgr, const em_event_t *ev, void *ud)
{
    (void)mgr;
    struct seen *s = ud;
    pthread_mutex_lock(&s->lock);
    s->counts[ev->type]++;
    if (ev->device_id != NULL)
        snprintf(s->last_device, sizeof(s->last_device), "%s", ev->device_id);
    if (ev->type == EM_EVENT_STATUS)
        s->last_battery = ev->status->battery_level;
    if (ev->type == EM_EVENT_COMMAND_RESPONSE) {
        snprintf(s->last_request_id, sizeof(s->last_request_id), "%s", ev->response->request_id);
        s->last_success = ev->response->success;
    }
    if (ev->type == EM_EVENT_COMMAND_ACKED)
        snprintf(s->last_acked_id, sizeof(s->last_acked_id), "%s", ev->command->request_id);
    if (ev->type == EM_EVENT_ERROR && ev->error != NULL) {
        s->last_error = ev->error->code;
        snprintf(s->last_error_field, sizeof(s->last_error_field), "%s", ev->error->field);
    }
    pthread_mutex_unlock(&s->lock);
}

static int count(struct seen *s, em_event_type_t t)
{
    pthread_mutex_lock(&s->lock);
    int n = s->counts[t];
    pthread_mutex_unlock(&s->lock);
    return n;
}

/* Waits until at least n events of type t were seen. */
static bool wait_count(struct seen *s, em_event_type_t t, int n)
{
    for (int i = 0; i < WAIT_MS / 10; i++) {
        if (count(s, t) >= n)
            return true;
        em_test_sleep_ms(10);
    }
    return false;
}

static int setup_mode(void **state, const char *mode)
{
    struct fixture *fx = calloc(1, sizeof(*fx));
    if (fx == NULL)
        return -1;
    pthread_mutex_init(&fx->seen.lock, NULL);
    *state = fx;
    em_log_set_level(EM_LOG_ERROR);
    if (em_test_broker_start(&fx->broker, mode) != 0)
        return -1;
    fx->mgr = em_manager_new(NULL, NULL);
    if (fx->mgr == NULL)
        return -1;
    em_manager_on(fx->mgr, EM_EVENT_MASK_ALL, on_event, &fx->seen);
    return 0;
}

static int setup_tls(void **state)
{
    return setup_mode(state, "tls");
}

static int setup_plain(void **state)
{
    return setup_mode(state, "plain");
}

static int setup_mtls(void **state)
{
    return setup_mode(state, "mtls");
}

static int teardown(void **state)
{
    struct fixture *fx = *state;
    if (fx == NULL)
        return 0;
    if (fx->sub_pid > 0)
        em_test_stop(fx->sub_pid);
    em_manager_free(fx->mgr);
    em_test_broker_cleanup(&fx->broker);
    pthread_mutex_destroy(&fx->seen.lock);
    free(fx);
    return 0;
}

static void mqtt_opts(struct fixture *fx, em_mqtt_options_t *o)
{
    em_mqtt_options_init(o);
    o->url = em_test_broker_url(&fx->broker);
    if (strcmp(fx->broker.mode, "plain") == 0) {
        o->allow_plain = true;
    } else {
        o->ca_file = em_test_broker_ca(&fx->broker);
        if (strcmp(fx->broker.mode, "mtls") == 0) {
            o->cert_file = em_test_broker_cert(&fx->broker);
            o->key_file = em_test_broker_key(&fx->broker);
        }
    }
    o->reconnect_min_s = 1;
    o->reconnect_max_s = 2;
}

/* Registers the actuator "plug-01", alone and in no group. */
static void register_plug(struct fixture *fx)
{
    assert_int_equal(
        em_manager_register_device(fx->mgr, "plug-01", NULL, EM_DEVICE_ACTUATOR, NULL, NULL, NULL),
        EM_OK);
}

static void connect_manager(struct fixture *fx)
{
    em_mqtt_options_t o;
    em_error_t err;
    mqtt_opts(fx, &o);
    em_err_t rc = em_manager_connect(fx->mgr, &o, 10000, &err);
    if (rc != EM_OK)
        fprintf(stderr, "connect: %s\n", err.message);
    assert_int_equal(rc, EM_OK);
    assert_true(em_manager_is_connected(fx->mgr));
}

/* Builds the TLS arguments of mosquitto_pub/sub for the fixture's broker. */
static int tls_args(struct fixture *fx, const char **argv, int n)
{
    if (strcmp(fx->broker.mode, "plain") == 0)
        return n;
    argv[n++] = "--cafile";
    argv[n++] = em_test_broker_ca(&fx->broker);
    if (strcmp(fx->broker.mode, "mtls") == 0) {
        /* The device side of the test presents a device certificate. */
        static char crt[EM_TEST_PATH_MAX], key[EM_TEST_PATH_MAX];
        em_test_broker_path(&fx->broker, "manager.crt", crt, sizeof(crt));
        em_test_broker_path(&fx->broker, "manager.key", key, sizeof(key));
        argv[n++] = "--cert";
        argv[n++] = crt;
        argv[n++] = "--key";
        argv[n++] = key;
    }
    return n;
}

/* A device's publish, with the stock mosquitto_pub. */
static void device_pub(struct fixture *fx, const char *topic, const char *payload, bool retain)
{
    char port[16];
    snprintf(port, sizeof(port), "%d", em_test_broker_port(&fx->broker));
    const char *argv[24];
    int n = 0;
    argv[n++] = "mosquitto_pub";
    argv[n++] = "-h";
    argv[n++] = strcmp(fx->broker.mode, "plain") == 0 ? "127.0.0.1" : "localhost";
    argv[n++] = "-p";
    argv[n++] = port;
    n = tls_args(fx, argv, n);
    argv[n++] = "-q";
    argv[n++] = "1";
    if (retain)
        argv[n++] = "-r";
    argv[n++] = "-t";
    argv[n++] = topic;
    argv[n++] = "-m";
    argv[n++] = payload;
    argv[n] = NULL;
    assert_int_equal(em_test_run(argv), 0);
}

/* A device listening on its command topic with the stock mosquitto_sub;
 * each message becomes one line of fx->sub_file. Returns once subscribed. */
static void device_sub(struct fixture *fx, const char *filter)
{
    char port[16];
    snprintf(port, sizeof(port), "%d", em_test_broker_port(&fx->broker));
    assert_non_null(
        em_test_broker_path(&fx->broker, "commands.txt", fx->sub_file, sizeof(fx->sub_file)));
    const char *argv[24];
    int n = 0;
    argv[n++] = "mosquitto_sub";
    argv[n++] = "-h";
    argv[n++] = strcmp(fx->broker.mode, "plain") == 0 ? "127.0.0.1" : "localhost";
    argv[n++] = "-p";
    argv[n++] = port;
    n = tls_args(fx, argv, n);
    argv[n++] = "-q";
    argv[n++] = "1";
    argv[n++] = "-t";
    argv[n++] = filter;
    argv[n] = NULL;
    fx->sub_pid = em_test_spawn(argv, fx->sub_file);
    assert_true(fx->sub_pid > 0);
    /* mosquitto_sub prints nothing when subscribed: probe with a marker
     * message until it shows up. */
    char probe_topic[EM_TOPIC_MAX];
    snprintf(probe_topic, sizeof(probe_topic), "%s", filter);
    char *plus = strchr(probe_topic, '+');
    if (plus != NULL)
        *plus = 'z'; /* device/+/command -> device/z/command is not a valid id, fine for a probe */
    for (int i = 0; i < 100; i++) {
        device_pub(fx, probe_topic, "probe", false);
        if (em_test_wait_lines(fx->sub_file, 1, 200) == 0)
            return;
    }
    fail_msg("mosquitto_sub never subscribed");
}

/* Reads line `index` (0-based) of path into buf. */
static bool read_line(const char *path, int index, char *buf, size_t size)
{
    FILE *f = fopen(path, "r");
    if (f == NULL)
        return false;
    bool ok = false;
    for (int i = 0; i <= index; i++) {
        if (fgets(buf, (int)size, f) == NULL)
            break;
        if (i == index) {
            buf[strcspn(buf, "\n")] = '\0';
            ok = true;
        }
    }
    fclose(f);
    return ok;
}

#define STATUS_75                                                                                  \
    "{\"batteryLevel\":75,\"powerMode\":\"normal\",\"connectionStatus\":\"online\","               \
    "\"firmwareVersion\":\"1.2.3\",\"signalStrength\":-67,\"errors\":[],\"additionalInfo\":{}}"

static void test_status_over_tls_from_a_wire_format_device_is_applied(void **state)
{
    struct fixture *fx = *state;
    assert_int_equal(em_manager_register_device(fx->mgr, "plug-01", "Plug", EM_DEVICE_ACTUATOR,
                                                NULL, "kitchen", NULL),
                     EM_OK);
    connect_manager(fx);
    assert_true(wait_count(&fx->seen, EM_EVENT_CONNECTED, 1));
    device_pub(fx, "device/plug-01/status", STATUS_75, false);
    assert_true(wait_count(&fx->seen, EM_EVENT_STATUS, 1));
    em_device_t d;
    assert_int_equal(em_manager_get_device(fx->mgr, "plug-01", &d, NULL), EM_OK);
    assert_int_equal(d.status.battery_level, 75);
    assert_string_equal(d.status.firmware_version, "1.2.3");
    assert_int_equal(d.status.connection, EM_CONN_ONLINE);
    em_manager_device_cleanup(&d);
}

static void test_unregistered_and_malformed_messages_are_counted_not_applied(void **state)
{
    struct fixture *fx = *state;
    register_plug(fx);
    connect_manager(fx);
    device_pub(fx, "device/stranger-9/status", STATUS_75, false);
    device_pub(fx, "device/plug-01/status", "{\"batteryLevel\":", false);
    device_pub(fx, "device/plug-01/status", "{\"batteryLevel\":\"high\"}", false);
    device_pub(fx, "device/plug-01/status", "{\"signalStrength\":20}", false);
    assert_true(wait_count(&fx->seen, EM_EVENT_ERROR, 3));
    /* A good one after the bad ones still goes through: nothing crashed. */
    device_pub(fx, "device/plug-01/status", "{\"batteryLevel\":42}", false);
    assert_true(wait_count(&fx->seen, EM_EVENT_STATUS, 1));
    em_manager_stats_t st;
    em_manager_stats(fx->mgr, &st);
    assert_int_equal(st.unknown_device, 1);
    assert_int_equal(st.rejected_format, 1);
    assert_int_equal(st.rejected_validation, 2);
    assert_int_equal(st.status_accepted, 1);
    assert_string_equal(fx->seen.last_error_field, "signalStrength");
    em_device_t d;
    assert_int_equal(em_manager_get_device(fx->mgr, "plug-01", &d, NULL), EM_OK);
    assert_int_equal(d.status.battery_level, 42);
    em_manager_device_cleanup(&d);
    assert_null(em_registry_get(em_manager_registry(fx->mgr), "stranger-9"));
}

static void test_command_reaches_the_device_and_its_answer_is_matched(void **state)
{
    struct fixture *fx = *state;
    em_error_t err;
    register_plug(fx);
    connect_manager(fx);
    device_sub(fx, "device/plug-01/command");
    char rid[EM_REQUEST_ID_MAX + 1];
    assert_int_equal(
        em_manager_send_command(fx->mgr, "plug-01", EM_CMD_SLEEP, "{\"duration\":3600}", rid, &err),
        EM_OK);
    assert_int_equal(em_manager_flush(fx->mgr, 5000, &err), EM_OK);
    assert_int_equal(em_test_wait_lines(fx->sub_file, 2, WAIT_MS), 0);
    char line[1024];
    assert_true(read_line(fx->sub_file, 1, line, sizeof(line)));
    /* The device sees energy-manager-iot's command format. */
    em_command_t cmd;
    assert_int_equal(em_command_decode(line, strlen(line), &cmd, &err), EM_OK);
    assert_int_equal(cmd.type, EM_CMD_SLEEP);
    assert_string_equal(cmd.request_id, rid);
    assert_string_equal(cmd.payload_json, "{\"duration\":3600}");
    assert_true(cmd.timestamp_ms > 0);
    em_command_cleanup(&cmd);
    assert_non_null(strstr(line, "\"type\":\"sleep\""));

    char answer[256];
    snprintf(answer, sizeof(answer),
             "{\"requestId\":\"%s\",\"success\":true,\"message\":\"sleeping\",\"timestamp\":%lld}",
             rid, (long long)em_now_ms());
    device_pub(fx, "device/plug-01/response", answer, false);
    assert_true(wait_count(&fx->seen, EM_EVENT_COMMAND_RESPONSE, 1));
    assert_string_equal(fx->seen.last_request_id, rid);
    assert_true(fx->seen.last_success);
}

static void test_command_with_the_callers_request_id_is_sent_and_its_ack_reported(void **state)
{
    struct fixture *fx = *state;
    em_error_t err;
    register_plug(fx);
    connect_manager(fx);
    device_sub(fx, "device/plug-01/command");
    const char *rid = "req_0123456789abcdef0123456789abcdef";
    assert_int_equal(em_manager_send_command_as(fx->mgr, "plug-01", EM_CMD_WAKE, NULL, rid, &err),
                     EM_OK);
    /* The broker's PUBACK is reported with the command it acknowledged. */
    assert_true(wait_count(&fx->seen, EM_EVENT_COMMAND_ACKED, 1));
    pthread_mutex_lock(&fx->seen.lock);
    assert_string_equal(fx->seen.last_acked_id, rid);
    assert_string_equal(fx->seen.last_device, "plug-01");
    pthread_mutex_unlock(&fx->seen.lock);
    assert_int_equal(em_test_wait_lines(fx->sub_file, 2, WAIT_MS), 0);
    char line[1024];
    assert_true(read_line(fx->sub_file, 1, line, sizeof(line)));
    em_command_t cmd;
    assert_int_equal(em_command_decode(line, strlen(line), &cmd, &err), EM_OK);
    assert_string_equal(cmd.request_id, rid);
    assert_int_equal(cmd.type, EM_CMD_WAKE);
    em_command_cleanup(&cmd);
}

static void test_command_with_a_malformed_request_id_is_refused_and_not_sent(void **state)
{
    struct fixture *fx = *state;
    em_error_t err;
    register_plug(fx);
    connect_manager(fx);
    const char *bad[] = {"", "req with space", "req/slash", "req\"quote"};
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        assert_int_equal(
            em_manager_send_command_as(fx->mgr, "plug-01", EM_CMD_WAKE, NULL, bad[i], &err),
            EM_ERR_VALIDATION);
        assert_string_equal(err.field, "requestId");
    }
    assert_int_equal(em_manager_send_command_as(fx->mgr, "plug-01", EM_CMD_WAKE, NULL, NULL, &err),
                     EM_ERR_VALIDATION);
    char longid[EM_REQUEST_ID_MAX + 2];
    memset(longid, 'a', sizeof(longid) - 1);
    longid[sizeof(longid) - 1] = '\0';
    assert_int_equal(
        em_manager_send_command_as(fx->mgr, "plug-01", EM_CMD_WAKE, NULL, longid, &err),
        EM_ERR_VALIDATION);
    em_manager_stats_t st;
    em_manager_stats(fx->mgr, &st);
    assert_int_equal(st.commands_sent, 0);
    assert_int_equal(st.commands_invalid, 6);
}

/* 40 members: more than one batch of request ids drawn at once (16), so the
 * test also guards against a batch handing out the same id twice. */
#define GROUP_MEMBERS 40

static void test_group_command_reaches_every_member_with_its_own_request_id(void **state)
{
    struct fixture *fx = *state;
    em_error_t err;
    for (int i = 0; i < GROUP_MEMBERS; i++) {
        char id[16];
        snprintf(id, sizeof(id), "s-%03d", i);
        assert_int_equal(
            em_manager_register_device(fx->mgr, id, NULL, EM_DEVICE_SENSOR, NULL, "floor", NULL),
            EM_OK);
    }
    assert_int_equal(
        em_manager_register_device(fx->mgr, "other-1", NULL, EM_DEVICE_SENSOR, NULL, NULL, NULL),
        EM_OK);
    connect_manager(fx);
    device_sub(fx, "device/+/command");
    size_t sent = 0, skipped = 0;
    assert_int_equal(em_manager_send_group_command(fx->mgr, "floor", EM_CMD_SLEEP,
                                                   "{\"duration\":60}", &sent, &skipped, &err),
                     EM_OK);
    assert_int_equal(sent, GROUP_MEMBERS);
    assert_int_equal(skipped, 0);
    assert_int_equal(em_manager_flush(fx->mgr, 5000, &err), EM_OK);
    assert_int_equal(em_test_wait_lines(fx->sub_file, GROUP_MEMBERS + 1, WAIT_MS), 0);
    em_test_sleep_ms(300);
    /* The probe, then one command per member, and none for other-1. */
    assert_int_equal(em_test_count_lines(fx->sub_file), GROUP_MEMBERS + 1);
    static char seen_ids[GROUP_MEMBERS][EM_REQUEST_ID_MAX + 1];
    for (int i = 0; i < GROUP_MEMBERS; i++) {
        char line[1024];
        em_command_t cmd;
        assert_true(read_line(fx->sub_file, i + 1, line, sizeof(line)));
        assert_int_equal(em_command_decode(line, strlen(line), &cmd, &err), EM_OK);
        assert_int_equal(cmd.type, EM_CMD_SLEEP);
        assert_int_equal(strlen(cmd.request_id), EM_REQUEST_ID_LEN);
        snprintf(seen_ids[i], sizeof(seen_ids[i]), "%s", cmd.request_id);
        for (int j = 0; j < i; j++)
            assert_string_not_equal(seen_ids[i], seen_ids[j]);
        em_command_cleanup(&cmd);
    }
    /* A standard tool reads the same commands: jq checks every one after
     * the probe line (exit status 0 only when each matches). */
    char script[1024];
    snprintf(script, sizeof(script),
             "tail -n +2 '%s' | jq -e -s 'length == %d and all(.[]; .type == \"sleep\" and "
             ".payload == {\"duration\": 60} and (.timestamp | type) == \"number\" and "
             "(.requestId | test(\"^req_[0-9a-f]{32}$\")))' >/dev/null",
             fx->sub_file, GROUP_MEMBERS);
    const char *argv[] = {"sh", "-c", script, NULL};
    assert_int_equal(em_test_run(argv), 0);
}

static void test_rate_limit_stops_the_eleventh_command_and_sends_nothing(void **state)
{
    struct fixture *fx = *state;
    em_error_t err;
    register_plug(fx);
    connect_manager(fx);
    device_sub(fx, "device/plug-01/command");
    for (int i = 0; i < 10; i++)
        assert_int_equal(
            em_manager_send_command(fx->mgr, "plug-01", EM_CMD_GET_STATUS, NULL, NULL, &err),
            EM_OK);
    assert_int_equal(
        em_manager_send_command(fx->mgr, "plug-01", EM_CMD_GET_STATUS, NULL, NULL, &err),
        EM_ERR_RATE_LIMIT_EXCEEDED);
    assert_string_equal(err.device_id, "plug-01");
    assert_int_equal(em_manager_flush(fx->mgr, 5000, &err), EM_OK);
    assert_int_equal(em_test_wait_lines(fx->sub_file, 11, WAIT_MS), 0);
    em_test_sleep_ms(300);
    assert_int_equal(em_test_count_lines(fx->sub_file), 11); /* probe + 10 */
    em_manager_stats_t st;
    em_manager_stats(fx->mgr, &st);
    assert_int_equal(st.commands_sent, 10);
    assert_int_equal(st.commands_rate_limited, 1);
    /* An invalid command is refused before the rate limit and sends nothing. */
    assert_int_equal(em_manager_send_command(fx->mgr, "plug-01", EM_CMD_RESET, "{}", NULL, &err),
                     EM_ERR_VALIDATION);
}

static void test_broker_restart_reconnects_and_resubscribes(void **state)
{
    struct fixture *fx = *state;
    register_plug(fx);
    connect_manager(fx);
    assert_true(wait_count(&fx->seen, EM_EVENT_CONNECTED, 1));
    device_pub(fx, "device/plug-01/status", "{\"batteryLevel\":10}", false);
    assert_true(wait_count(&fx->seen, EM_EVENT_STATUS, 1));

    assert_int_equal(em_test_broker_kill(&fx->broker), 0);
    assert_true(wait_count(&fx->seen, EM_EVENT_DISCONNECTED, 1));
    em_error_t err;
    assert_int_equal(em_manager_send_command(fx->mgr, "plug-01", EM_CMD_WAKE, NULL, NULL, &err),
                     EM_ERR_NOT_CONNECTED);
    assert_int_equal(em_test_broker_restart(&fx->broker), 0);
    assert_true(wait_count(&fx->seen, EM_EVENT_CONNECTED, 2));
    assert_true(count(&fx->seen, EM_EVENT_RECONNECTING) >= 1);

    /* The subscriptions were sent again: status flows once more. */
    for (int i = 0; i < 50 && count(&fx->seen, EM_EVENT_STATUS) < 2; i++) {
        device_pub(fx, "device/plug-01/status", "{\"batteryLevel\":11}", false);
        em_test_sleep_ms(100);
    }
    assert_true(count(&fx->seen, EM_EVENT_STATUS) >= 2);
    assert_int_equal(fx->seen.last_battery, 11);
    assert_true(em_manager_is_connected(fx->mgr));
}

static void test_wrong_ca_is_refused_without_fallback(void **state)
{
    struct fixture *fx = *state;
    em_mqtt_options_t o;
    em_error_t err;
    mqtt_opts(fx, &o);
    char other[EM_TEST_PATH_MAX];
    assert_non_null(em_test_broker_path(&fx->broker, "other-ca.crt", other, sizeof(other)));
    o.ca_file = other;
    em_err_t rc = em_manager_connect(fx->mgr, &o, 5000, &err);
    assert_int_equal(rc, EM_ERR_TLS);
    assert_false(em_manager_is_connected(fx->mgr));
    assert_int_equal(count(&fx->seen, EM_EVENT_STATUS), 0);
    assert_int_equal(count(&fx->seen, EM_EVENT_CONNECTED), 0);
    /* The manager can connect properly afterwards. */
    connect_manager(fx);
}

static void test_mtls_manager_with_certificate_is_accepted(void **state)
{
    struct fixture *fx = *state;
    register_plug(fx);
    connect_manager(fx);
    device_pub(fx, "device/plug-01/status", "{\"batteryLevel\":33}", false);
    assert_true(wait_count(&fx->seen, EM_EVENT_STATUS, 1));
    assert_int_equal(fx->seen.last_battery, 33);
}

static void test_mtls_manager_without_certificate_is_refused(void **state)
{
    struct fixture *fx = *state;
    em_mqtt_options_t o;
    em_error_t err;
    mqtt_opts(fx, &o);
    o.cert_file = NULL;
    o.key_file = NULL;
    assert_int_not_equal(em_manager_connect(fx->mgr, &o, 5000, &err), EM_OK);
    assert_false(em_manager_is_connected(fx->mgr));
}

static void test_retained_offline_availability_marks_the_device_offline(void **state)
{
    struct fixture *fx = *state;
    register_plug(fx);
    device_pub(fx, "device/plug-01/availability", "offline", true);
    connect_manager(fx);
    assert_true(wait_count(&fx->seen, EM_EVENT_DEVICE_OFFLINE, 1));
    device_pub(fx, "device/plug-01/availability", "online", true);
    assert_true(wait_count(&fx->seen, EM_EVENT_DEVICE_ONLINE, 1));
    device_pub(fx, "device/plug-01/availability", "", true); /* clear the retained message */
}

static void test_prefix_change_while_connected_resubscribes(void **state)
{
    struct fixture *fx = *state;
    em_error_t err;
    register_plug(fx);
    connect_manager(fx);
    assert_int_equal(em_manager_set_topic_prefix(fx->mgr, "site-a/", &err), EM_OK);
    for (int i = 0; i < 50 && count(&fx->seen, EM_EVENT_STATUS) < 1; i++) {
        device_pub(fx, "site-a/plug-01/status", "{\"batteryLevel\":64}", false);
        em_test_sleep_ms(100);
    }
    assert_true(count(&fx->seen, EM_EVENT_STATUS) >= 1);
    assert_int_equal(fx->seen.last_battery, 64);
    /* The old prefix is no longer subscribed: nothing arrives from it. */
    em_manager_stats_t before, after;
    em_manager_stats(fx->mgr, &before);
    device_pub(fx, "device/plug-01/status", "{\"batteryLevel\":1}", false);
    em_test_sleep_ms(500);
    em_manager_stats(fx->mgr, &after);
    assert_int_equal(after.messages_received, before.messages_received);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_status_over_tls_from_a_wire_format_device_is_applied,
                                        setup_tls, teardown),
        cmocka_unit_test_setup_teardown(
            test_unregistered_and_malformed_messages_are_counted_not_applied, setup_plain,
            teardown),
        cmocka_unit_test_setup_teardown(
            test_command_with_the_callers_request_id_is_sent_and_its_ack_reported, setup_tls,
            teardown),
        cmocka_unit_test_setup_teardown(
            test_command_with_a_malformed_request_id_is_refused_and_not_sent, setup_tls, teardown),
        cmocka_unit_test_setup_teardown(test_command_reaches_the_device_and_its_answer_is_matched,
                                        setup_tls, teardown),
        cmocka_unit_test_setup_teardown(
            test_group_command_reaches_every_member_with_its_own_request_id, setup_plain, teardown),
        cmocka_unit_test_setup_teardown(
            test_rate_limit_stops_the_eleventh_command_and_sends_nothing, setup_plain, teardown),
        cmocka_unit_test_setup_teardown(test_broker_restart_reconnects_and_resubscribes, setup_tls,
                                        teardown),
        cmocka_unit_test_setup_teardown(test_wrong_ca_is_refused_without_fallback, setup_tls,
                                        teardown),
        cmocka_unit_test_setup_teardown(test_mtls_manager_with_certificate_is_accepted, setup_mtls,
                                        teardown),
        cmocka_unit_test_setup_teardown(test_mtls_manager_without_certificate_is_refused,
                                        setup_mtls, teardown),
        cmocka_unit_test_setup_teardown(test_retained_offline_availability_marks_the_device_offline,
                                        setup_plain, teardown),
        cmocka_unit_test_setup_teardown(test_prefix_change_while_connected_resubscribes,
                                        setup_plain, teardown),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
