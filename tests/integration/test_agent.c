/*
 * emiot tests - emiot-agent against a real mosquitto.
 *
 * The agent is run as a user runs it (the built binary, as a child process);
 * a plain libmosquitto subscriber watches what it publishes and mosquitto_pub
 * sends it commands in the wire format of docs/PROTOCOL.md. Most tests share
 * one plain loopback broker and one `--simulate 3` agent (group set-up); the
 * tests about process life (SIGTERM, last will, exit codes), reconnection and
 * TLS start their own.
 */
#include <dirent.h>
#include <mosquitto.h>
#include <pthread.h>
#include <setjmp.h>
#include <signal.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <time.h>
#include <unistd.h>

#include <cmocka.h>

#include "broker.h"
#include "emiot/emiot.h"
#include "testutil.h"

#define AGENT   EM_TEST_BINARY_DIR "/emiot-agent"
#define WAIT_MS 15000

/* ---- a subscriber that keeps everything it receives --------------------- */

typedef struct msg {
    struct msg *next;
    char *topic;
    char *payload; /* NUL-terminated copy */
    size_t len;
    bool retain;
} msg_t;

typedef struct sub {
    struct mosquitto *mosq;
    pthread_mutex_t lock;
    pthread_cond_t cond;
    msg_t *head, *tail;
    int subacks;
    bool connected;
} sub_t;

/* Everything a test starts is tracked, so that a failed assertion (which
 * leaves the test function at once) still gets it stopped and freed by
 * test_teardown: no subscriber thread outlives its test, no agent or broker
 * outlives the run. */
#define TRACK_MAX 16
static sub_t *open_subs[TRACK_MAX];
static pid_t live_pids[TRACK_MAX];
static em_test_broker_t *extra_brokers[TRACK_MAX];

static void track(void **slots, void *p)
{
    for (int i = 0; i < TRACK_MAX; i++) {
        if (!slots[i]) {
            slots[i] = p;
            return;
        }
    }
    fail_msg("more than %d tracked objects", TRACK_MAX);
}

static void untrack(void **slots, const void *p)
{
    for (int i = 0; i < TRACK_MAX; i++) {
        if (slots[i] == p)
            slots[i] = NULL;
    }
}

static void track_sub(sub_t *s)
{
    track((void **)open_subs, s);
}

static void untrack_sub(sub_t *s)
{
    untrack((void **)open_subs, s);
}

static void track_pid(pid_t pid)
{
    for (int i = 0; i < TRACK_MAX; i++) {
        if (live_pids[i] == 0) {
            live_pids[i] = pid;
            return;
        }
    }
    fail_msg("more than %d tracked processes", TRACK_MAX);
}

static void untrack_pid(pid_t pid)
{
    for (int i = 0; i < TRACK_MAX; i++) {
        if (live_pids[i] == pid)
            live_pids[i] = 0;
    }
}

static void sub_on_connect(struct mosquitto *mosq, void *ud, int rc)
{
    sub_t *s = ud;
    (void)mosq;
    pthread_mutex_lock(&s->lock);
    s->connected = rc == 0;
    pthread_cond_broadcast(&s->cond);
    pthread_mutex_unlock(&s->lock);
}

static void sub_on_subscribe(struct mosquitto *mosq, void *ud, int mid, int n, const int *granted)
{
    sub_t *s = ud;
    (void)mosq, (void)mid, (void)n, (void)granted;
    pthread_mutex_lock(&s->lock);
    s->subacks++;
    pthread_cond_broadcast(&s->cond);
    pthread_mutex_unlock(&s->lock);
}

static void sub_on_message(struct mosquitto *mosq, void *ud, const struct mosquitto_message *m)
{
    sub_t *s = ud;
    msg_t *e = calloc(1, sizeof *e);
    (void)mosq;
    if (!e)
        return;
    e->topic = strdup(m->topic);
    e->payload = malloc((size_t)m->payloadlen + 1);
    if (!e->topic || !e->payload) {
        free(e->topic);
        free(e->payload);
        free(e);
        return;
    }
    memcpy(e->payload, m->payload, (size_t)m->payloadlen);
    e->payload[m->payloadlen] = '\0';
    e->len = (size_t)m->payloadlen;
    e->retain = m->retain;
    pthread_mutex_lock(&s->lock);
    if (s->tail)
        s->tail->next = e;
    else
        s->head = e;
    s->tail = e;
    pthread_cond_broadcast(&s->cond);
    pthread_mutex_unlock(&s->lock);
}

static void deadline_in(struct timespec *ts, int ms)
{
    clock_gettime(CLOCK_REALTIME, ts);
    ts->tv_sec += ms / 1000;
    ts->tv_nsec += (long)(ms % 1000) * 1000000L;
    if (ts->tv_nsec >= 1000000000L) {
        ts->tv_sec++;
        ts->tv_nsec -= 1000000000L;
    }
}

/* Connects (with the manager's certificate when the broker uses TLS) and
 * subscribes to filters, returning once every SUBACK is in: from then on
 * nothing published on those filters is missed. */
static sub_t *sub_open(em_test_broker_t *b, const char *const *filters, int n)
{
    bool tls = strcmp(b->mode, "plain") != 0;
    struct timespec ts;
    sub_t *s = calloc(1, sizeof *s);

    assert_non_null(s);
    track_sub(s);
    pthread_mutex_init(&s->lock, NULL);
    pthread_cond_init(&s->cond, NULL);
    s->mosq = mosquitto_new(NULL, true, s);
    assert_non_null(s->mosq);
    mosquitto_connect_callback_set(s->mosq, sub_on_connect);
    mosquitto_subscribe_callback_set(s->mosq, sub_on_subscribe);
    mosquitto_message_callback_set(s->mosq, sub_on_message);
    if (tls)
        assert_int_equal(mosquitto_tls_set(s->mosq, em_test_broker_ca(b), NULL,
                                           em_test_broker_cert(b), em_test_broker_key(b), NULL),
                         MOSQ_ERR_SUCCESS);
    assert_int_equal(
        mosquitto_connect(s->mosq, tls ? "localhost" : "127.0.0.1", em_test_broker_port(b), 30),
        MOSQ_ERR_SUCCESS);
    assert_int_equal(mosquitto_loop_start(s->mosq), MOSQ_ERR_SUCCESS);
    deadline_in(&ts, WAIT_MS);
    pthread_mutex_lock(&s->lock);
    while (!s->connected && pthread_cond_timedwait(&s->cond, &s->lock, &ts) == 0) {
    }
    pthread_mutex_unlock(&s->lock);
    assert_true(s->connected);
    for (int i = 0; i < n; i++)
        assert_int_equal(mosquitto_subscribe(s->mosq, NULL, filters[i], 1), MOSQ_ERR_SUCCESS);
    pthread_mutex_lock(&s->lock);
    while (s->subacks < n && pthread_cond_timedwait(&s->cond, &s->lock, &ts) == 0) {
    }
    pthread_mutex_unlock(&s->lock);
    assert_int_equal(s->subacks, n);
    return s;
}

static void sub_close(sub_t *s)
{
    if (!s)
        return;
    untrack_sub(s);
    if (!s->mosq) {
        free(s);
        return;
    }
    mosquitto_disconnect(s->mosq);
    mosquitto_loop_stop(s->mosq, false);
    mosquitto_destroy(s->mosq);
    s->mosq = NULL;
    for (msg_t *e = s->head, *next; e; e = next) {
        next = e->next;
        free(e->topic);
        free(e->payload);
        free(e);
    }
    pthread_cond_destroy(&s->cond);
    pthread_mutex_destroy(&s->lock);
    free(s);
}

typedef bool (*msg_pred_t)(const msg_t *m, const void *ud);

/*
 * Returns the first message on topic, received after `after` (NULL: from the
 * start), for which pred (may be NULL) holds; waits up to timeout_ms for it.
 * Messages stay owned by the subscriber until sub_close.
 */
static const msg_t *sub_find(sub_t *s, const msg_t *after, const char *topic, msg_pred_t pred,
                             const void *ud, int timeout_ms)
{
    struct timespec ts;
    const msg_t *found = NULL;
    const msg_t *prev = after; /* the last message already looked at */

    deadline_in(&ts, timeout_ms);
    pthread_mutex_lock(&s->lock);
    for (;;) {
        /* The list only grows: carry on from where the last scan stopped. */
        for (const msg_t *e = prev ? prev->next : s->head; e; e = e->next) {
            if (strcmp(e->topic, topic) == 0 && (!pred || pred(e, ud))) {
                found = e;
                break;
            }
            prev = e;
        }
        if (found || pthread_cond_timedwait(&s->cond, &s->lock, &ts) != 0)
            break;
    }
    pthread_mutex_unlock(&s->lock);
    return found;
}

static bool payload_is(const msg_t *m, const void *ud)
{
    return strcmp(m->payload, ud) == 0;
}

static bool response_for(const msg_t *m, const void *ud)
{
    em_response_t r;
    bool match;
    if (em_response_decode(m->payload, m->len, &r, NULL) != EM_OK)
        return false;
    match = strcmp(r.request_id, ud) == 0;
    em_response_cleanup(&r);
    return match;
}

static bool status_mode_is(const msg_t *m, const void *ud)
{
    em_status_t st;
    bool match;
    if (em_status_decode(m->payload, m->len, &st, NULL) != EM_OK)
        return false;
    match = (st.has & EM_STATUS_HAS_POWER_MODE) && st.power_mode == *(const em_power_mode_t *)ud;
    em_status_cleanup(&st);
    return match;
}

static bool status_mode_is_not(const msg_t *m, const void *ud)
{
    em_status_t st;
    bool match;
    if (em_status_decode(m->payload, m->len, &st, NULL) != EM_OK)
        return false;
    match = (st.has & EM_STATUS_HAS_POWER_MODE) && st.power_mode != *(const em_power_mode_t *)ud;
    em_status_cleanup(&st);
    return match;
}

static bool status_firmware_is(const msg_t *m, const void *ud)
{
    em_status_t st;
    bool match;
    if (em_status_decode(m->payload, m->len, &st, NULL) != EM_OK)
        return false;
    match = strcmp(st.firmware_version, ud) == 0;
    em_status_cleanup(&st);
    return match;
}

static bool contains(const msg_t *m, const void *ud)
{
    return strstr(m->payload, ud) != NULL;
}

/* ---- the shared broker and agent --------------------------------------- */

typedef struct fixture {
    em_test_broker_t broker;
    char dir[256];
    char log[EM_TEST_PATH_MAX];
    pid_t agent;
    int serial; /* makes request ids unique across tests */
} fixture_t;

static fixture_t fx;

static void make_log_path(char *buf, size_t size, const char *name)
{
    int n = snprintf(buf, size, "%s/%s", fx.dir, name);
    assert_true(n > 0 && (size_t)n < size);
}

static void next_request_id(char *buf, size_t size, const char *tag)
{
    snprintf(buf, size, "req_%s_%d_%d", tag, (int)getpid(), ++fx.serial);
}

/* Publishes a command with mosquitto_pub, exactly as a manager would send it. */
static void send_raw(em_test_broker_t *b, const char *device, const char *payload)
{
    char topic[EM_TOPIC_MAX], port[16];
    bool tls = strcmp(b->mode, "plain") != 0;

    snprintf(topic, sizeof topic, "device/%s/command", device);
    snprintf(port, sizeof port, "%d", em_test_broker_port(b));
    if (tls) {
        const char *argv[] = {"mosquitto_pub",
                              "-h",
                              "localhost",
                              "-p",
                              port,
                              "--cafile",
                              em_test_broker_ca(b),
                              "--cert",
                              em_test_broker_cert(b),
                              "--key",
                              em_test_broker_key(b),
                              "-q",
                              "1",
                              "-t",
                              topic,
                              "-m",
                              payload,
                              NULL};
        assert_int_equal(em_test_run(argv), 0);
    } else {
        const char *argv[] = {"mosquitto_pub", "-h", "127.0.0.1", "-p", port, "-q", "1", "-t",
                              topic,           "-m", payload,     NULL};
        assert_int_equal(em_test_run(argv), 0);
    }
}

static void send_command(em_test_broker_t *b, const char *device, const char *type,
                         const char *payload_json, const char *rid, long long timestamp_ms)
{
    char buf[1024];
    int n;
    if (payload_json)
        n = snprintf(buf, sizeof buf,
                     "{\"type\":\"%s\",\"payload\":%s,\"timestamp\":%lld,\"requestId\":\"%s\"}",
                     type, payload_json, timestamp_ms, rid);
    else
        n = snprintf(buf, sizeof buf, "{\"type\":\"%s\",\"timestamp\":%lld,\"requestId\":\"%s\"}",
                     type, timestamp_ms, rid);
    assert_true(n > 0 && (size_t)n < sizeof buf);
    send_raw(b, device, buf);
}

/* Waits for the response to rid and decodes it into r (clean up after). */
static void expect_response(sub_t *s, const char *device, const char *rid, em_response_t *r)
{
    char topic[EM_TOPIC_MAX];
    const msg_t *m;

    snprintf(topic, sizeof topic, "device/%s/response", device);
    m = sub_find(s, NULL, topic, response_for, rid, WAIT_MS);
    assert_non_null(m);
    assert_int_equal(em_response_decode(m->payload, m->len, r, NULL), EM_OK);
}

static pid_t spawn_agent(const char *const *argv, const char *log)
{
    pid_t pid = em_test_spawn(argv, log);
    assert_true(pid > 0);
    track_pid(pid);
    return pid;
}

/* em_test_wait, forgetting the process once it is gone (exited or killed). */
static int agent_wait(pid_t pid, int timeout_ms)
{
    int rc = em_test_wait(pid, timeout_ms);
    if (rc >= 0 || kill(pid, 0) != 0)
        untrack_pid(pid);
    return rc;
}

static int agent_stop(pid_t pid)
{
    int rc = em_test_stop(pid);
    untrack_pid(pid);
    return rc;
}

/* A broker of the test's own (besides the shared one). launch: start it now. */
static em_test_broker_t *broker_new(const char *mode, bool launch)
{
    em_test_broker_t *b = calloc(1, sizeof *b);
    assert_non_null(b);
    track((void **)extra_brokers, b);
    assert_int_equal(launch ? em_test_broker_start(b, mode) : em_test_broker_init(b, mode), 0);
    return b;
}

static void broker_free(em_test_broker_t *b)
{
    untrack((void **)extra_brokers, b);
    em_test_broker_cleanup(b);
    free(b);
}

static int test_teardown(void **state)
{
    (void)state;
    for (int i = 0; i < TRACK_MAX; i++) {
        if (open_subs[i])
            sub_close(open_subs[i]);
        if (live_pids[i] > 0)
            agent_stop(live_pids[i]);
        if (extra_brokers[i])
            broker_free(extra_brokers[i]);
    }
    return 0;
}

/* Waits until the retained availability of device is `online`. */
static void wait_online(em_test_broker_t *b, const char *device)
{
    const char *filter = "device/+/availability";
    char topic[EM_TOPIC_MAX];
    sub_t *s;

    snprintf(topic, sizeof topic, "device/%s/availability", device);
    s = sub_open(b, &filter, 1);
    assert_non_null(sub_find(s, NULL, topic, payload_is, "online", WAIT_MS));
    sub_close(s);
}

static int group_setup(void **state)
{
    (void)state;

    memset(&fx, 0, sizeof fx);
    if (access(AGENT, X_OK) != 0) {
        fprintf(stderr, "test_agent: %s is not built\n", AGENT);
        return -1;
    }
    if (em_test_mkdtemp(fx.dir, sizeof fx.dir) != 0)
        return -1;
    if (em_test_broker_start(&fx.broker, "plain") != 0)
        return -1;
    snprintf(fx.log, sizeof fx.log, "%s/agent.log", fx.dir);
    {
        const char *argv[] = {AGENT,
                              "--url",
                              em_test_broker_url(&fx.broker),
                              "--allow-plain",
                              "--simulate",
                              "3",
                              "--interval",
                              "1",
                              "--telemetry-interval",
                              "1",
                              "--seed",
                              "42",
                              "--log-level",
                              "debug",
                              NULL};
        fx.agent = em_test_spawn(argv, fx.log);
    }
    if (fx.agent <= 0)
        return -1;
    /* Every test starts with the three devices announced. */
    for (int i = 1; i <= 3; i++) {
        char id[16];
        snprintf(id, sizeof id, "sim-%03d", i);
        wait_online(&fx.broker, id);
    }
    return 0;
}

static int group_teardown(void **state)
{
    int rc = 0;

    test_teardown(state);
    if (fx.agent > 0) {
        /* The shared agent must also stop cleanly (and, under ASan, leak-free). */
        int status = em_test_stop(fx.agent);
        if (status != 0) {
            fprintf(stderr, "test_agent: the shared agent exited with %d; its log: %s\n", status,
                    fx.log);
            rc = -1;
        }
    }
    em_test_broker_cleanup(&fx.broker);
    if (rc == 0 && fx.dir[0])
        em_test_rmtree(fx.dir);
    return rc;
}

/* ---- what a device publishes ------------------------------------------- */

static void test_every_device_is_online_retained(void **state)
{
    const char *filter = "device/+/availability";
    sub_t *s;
    (void)state;

    s = sub_open(&fx.broker, &filter, 1);
    for (int i = 1; i <= 3; i++) {
        char topic[EM_TOPIC_MAX];
        const msg_t *m;
        snprintf(topic, sizeof topic, "device/sim-%03d/availability", i);
        m = sub_find(s, NULL, topic, payload_is, "online", WAIT_MS);
        assert_non_null(m);
        assert_true(m->retain);
    }
    sub_close(s);
}

static void test_status_is_valid_and_periodic(void **state)
{
    const char *filter = "device/sim-002/status";
    const msg_t *first, *second;
    em_status_t st;
    sub_t *s;
    (void)state;

    s = sub_open(&fx.broker, &filter, 1);
    first = sub_find(s, NULL, filter, NULL, NULL, WAIT_MS);
    assert_non_null(first);
    second = sub_find(s, first, filter, NULL, NULL, WAIT_MS);
    assert_non_null(second);
    for (const msg_t *m = first; m; m = m == first ? second : NULL) {
        assert_int_equal(em_status_decode(m->payload, m->len, &st, NULL), EM_OK);
        assert_true(st.has & EM_STATUS_HAS_BATTERY);
        assert_true(st.has & EM_STATUS_HAS_POWER_MODE);
        assert_true(st.has & EM_STATUS_HAS_SIGNAL);
        assert_int_equal(st.connection, EM_CONN_ONLINE);
        assert_true(st.battery_level <= 100);
        assert_true(st.power_mode >= EM_POWER_NORMAL && st.power_mode <= EM_POWER_CRITICAL);
        assert_true(st.firmware_version[0] != '\0');
        assert_non_null(st.extra_json);
        assert_non_null(strstr(st.extra_json, "\"type\":\"sensor\""));
        em_status_cleanup(&st);
    }
    sub_close(s);
}

static void test_telemetry_is_valid_and_energy_never_decreases(void **state)
{
    const char *filter = "device/sim-003/telemetry";
    const msg_t *m = NULL;
    em_telemetry_t t;
    double energy = -1.0;
    sub_t *s;
    (void)state;

    s = sub_open(&fx.broker, &filter, 1);
    for (int i = 0; i < 3; i++) {
        m = sub_find(s, m, filter, NULL, NULL, WAIT_MS);
        assert_non_null(m);
        assert_int_equal(em_telemetry_decode(m->payload, m->len, em_now_ms(),
                                             EM_CLOCK_SKEW_MS_DEFAULT, &t, NULL),
                         EM_OK);
        assert_true(t.has & EM_TELEMETRY_HAS_ENERGY);
        assert_true(t.has & EM_TELEMETRY_HAS_POWER);
        assert_true(t.energy_wh >= energy);
        energy = t.energy_wh;
        /* Mains voltage, and the current that follows from it. */
        assert_true(t.voltage_v > 200.0 && t.voltage_v < 260.0);
        assert_true(t.power_w >= 0.0);
        assert_true(t.current_a >= 0.0 && t.current_a <= t.power_w / 200.0 + 0.001);
    }
    sub_close(s);
}

/* ---- commands ---------------------------------------------------------- */

static void test_sleep_command_is_answered_and_applied(void **state)
{
    const char *filters[] = {"device/sim-001/response", "device/sim-001/status"};
    em_power_mode_t sleep = EM_POWER_SLEEP;
    char rid[EM_REQUEST_ID_MAX + 1], rid2[EM_REQUEST_ID_MAX + 1];
    em_response_t r;
    const msg_t *asleep;
    sub_t *s;
    (void)state;

    s = sub_open(&fx.broker, filters, 2);
    next_request_id(rid, sizeof rid, "sleep");
    send_command(&fx.broker, "sim-001", "sleep", "{\"duration\":600}", rid, (long long)em_now_ms());
    expect_response(s, "sim-001", rid, &r);
    assert_string_equal(r.request_id, rid);
    assert_true(r.success);
    assert_non_null(strstr(r.message, "600"));
    assert_true(r.timestamp_ms > 0);
    em_response_cleanup(&r);
    asleep = sub_find(s, NULL, "device/sim-001/status", status_mode_is, &sleep, WAIT_MS);
    assert_non_null(asleep);

    next_request_id(rid2, sizeof rid2, "wake");
    send_command(&fx.broker, "sim-001", "wake", "{}", rid2, (long long)em_now_ms());
    expect_response(s, "sim-001", rid2, &r);
    assert_true(r.success);
    em_response_cleanup(&r);
    /* Awake: back to whatever the battery allows (normal or low_power). */
    assert_non_null(
        sub_find(s, asleep, "device/sim-001/status", status_mode_is_not, &sleep, WAIT_MS));
    sub_close(s);
}

static void test_reset_without_confirm_is_refused(void **state)
{
    const char *filter = "device/sim-002/response";
    char rid[EM_REQUEST_ID_MAX + 1];
    em_response_t r;
    sub_t *s;
    (void)state;

    s = sub_open(&fx.broker, &filter, 1);
    next_request_id(rid, sizeof rid, "reset");
    send_command(&fx.broker, "sim-002", "reset", "{}", rid, (long long)em_now_ms());
    expect_response(s, "sim-002", rid, &r);
    assert_false(r.success);
    assert_non_null(strstr(r.message, "confirm"));
    em_response_cleanup(&r);
    sub_close(s);
}

static void test_unknown_command_type_is_refused(void **state)
{
    const char *filter = "device/sim-002/response";
    char rid[EM_REQUEST_ID_MAX + 1];
    em_response_t r;
    sub_t *s;
    (void)state;

    s = sub_open(&fx.broker, &filter, 1);
    next_request_id(rid, sizeof rid, "selfdestruct");
    send_command(&fx.broker, "sim-002", "self_destruct", "{}", rid, (long long)em_now_ms());
    expect_response(s, "sim-002", rid, &r);
    assert_false(r.success);
    assert_non_null(strstr(r.message, "invalid command"));
    em_response_cleanup(&r);
    sub_close(s);
}

static void test_replayed_request_id_is_refused(void **state)
{
    const char *filter = "device/sim-002/response";
    char rid[EM_REQUEST_ID_MAX + 1], cmd[256];
    const msg_t *first, *second;
    em_response_t r;
    sub_t *s;
    (void)state;

    s = sub_open(&fx.broker, &filter, 1);
    next_request_id(rid, sizeof rid, "replay");
    snprintf(cmd, sizeof cmd, "{\"type\":\"get_status\",\"timestamp\":%lld,\"requestId\":\"%s\"}",
             (long long)em_now_ms(), rid);
    send_raw(&fx.broker, "sim-002", cmd);
    send_raw(&fx.broker, "sim-002", cmd); /* the very same bytes, replayed */

    first = sub_find(s, NULL, filter, response_for, rid, WAIT_MS);
    assert_non_null(first);
    second = sub_find(s, first, filter, response_for, rid, WAIT_MS);
    assert_non_null(second);
    assert_int_equal(em_response_decode(first->payload, first->len, &r, NULL), EM_OK);
    assert_true(r.success);
    em_response_cleanup(&r);
    assert_int_equal(em_response_decode(second->payload, second->len, &r, NULL), EM_OK);
    assert_false(r.success);
    assert_string_equal(r.message, "duplicate requestId");
    em_response_cleanup(&r);
    sub_close(s);
}

static void test_expired_command_is_refused(void **state)
{
    const char *filter = "device/sim-002/response";
    char rid[EM_REQUEST_ID_MAX + 1];
    em_response_t r;
    sub_t *s;
    (void)state;

    s = sub_open(&fx.broker, &filter, 1);
    next_request_id(rid, sizeof rid, "old");
    send_command(&fx.broker, "sim-002", "restart", "{}", rid,
                 (long long)em_now_ms() - 3600 * 1000LL);
    expect_response(s, "sim-002", rid, &r);
    assert_false(r.success);
    assert_non_null(strstr(r.message, "expired"));
    em_response_cleanup(&r);
    sub_close(s);
}

static void test_get_status_publishes_status_at_once(void **state)
{
    const char *filters[] = {"device/sim-002/response", "device/sim-002/status"};
    char rid[EM_REQUEST_ID_MAX + 1];
    em_response_t r;
    const msg_t *resp;
    sub_t *s;
    (void)state;

    s = sub_open(&fx.broker, filters, 2);
    next_request_id(rid, sizeof rid, "status");
    send_command(&fx.broker, "sim-002", "get_status", NULL, rid, (long long)em_now_ms());
    expect_response(s, "sim-002", rid, &r);
    assert_true(r.success);
    em_response_cleanup(&r);
    resp = sub_find(s, NULL, "device/sim-002/response", response_for, rid, WAIT_MS);
    /* The status follows the response on the same client, so in order. */
    assert_non_null(sub_find(s, resp, "device/sim-002/status", NULL, NULL, WAIT_MS));
    sub_close(s);
}

static void test_configure_applies_known_keys_and_reports_ignored(void **state)
{
    const char *filters[] = {"device/sim-002/response", "device/sim-002/status"};
    char rid[EM_REQUEST_ID_MAX + 1];
    em_response_t r;
    sub_t *s;
    (void)state;

    s = sub_open(&fx.broker, filters, 2);
    next_request_id(rid, sizeof rid, "configure");
    send_command(&fx.broker, "sim-002", "configure", "{\"securityLevel\":5,\"colour\":\"blue\"}",
                 rid, (long long)em_now_ms());
    expect_response(s, "sim-002", rid, &r);
    assert_true(r.success);
    assert_non_null(strstr(r.message, "securityLevel=5"));
    assert_non_null(strstr(r.message, "ignored: colour"));
    em_response_cleanup(&r);
    assert_non_null(
        sub_find(s, NULL, "device/sim-002/status", contains, "\"securityLevel\":5", WAIT_MS));
    sub_close(s);
}

static void test_update_bumps_firmware_after_a_reboot(void **state)
{
    const char *filters[] = {"device/sim-003/response", "device/sim-003/status",
                             "device/sim-003/availability"};
    char rid[EM_REQUEST_ID_MAX + 1];
    em_response_t r;
    const msg_t *resp, *off;
    sub_t *s;
    (void)state;

    s = sub_open(&fx.broker, filters, 3);
    next_request_id(rid, sizeof rid, "update");
    send_command(&fx.broker, "sim-003", "update", "{}", rid, (long long)em_now_ms());
    expect_response(s, "sim-003", rid, &r);
    assert_true(r.success);
    assert_non_null(strstr(r.message, "1.0.1"));
    em_response_cleanup(&r);
    resp = sub_find(s, NULL, "device/sim-003/response", response_for, rid, WAIT_MS);
    off = sub_find(s, resp, "device/sim-003/availability", payload_is, "offline", WAIT_MS);
    assert_non_null(off);
    assert_non_null(sub_find(s, off, "device/sim-003/availability", payload_is, "online", WAIT_MS));
    assert_non_null(
        sub_find(s, off, "device/sim-003/status", status_firmware_is, "1.0.1", WAIT_MS));
    sub_close(s);
}

static void test_update_to_older_version_is_refused(void **state)
{
    const char *filter = "device/sim-001/response";
    char rid[EM_REQUEST_ID_MAX + 1];
    em_response_t r;
    sub_t *s;
    (void)state;

    s = sub_open(&fx.broker, &filter, 1);
    next_request_id(rid, sizeof rid, "downgrade");
    send_command(&fx.broker, "sim-001", "update", "{\"version\":\"0.9.0\"}", rid,
                 (long long)em_now_ms());
    expect_response(s, "sim-001", rid, &r);
    assert_false(r.success);
    assert_non_null(strstr(r.message, "downgrade"));
    em_response_cleanup(&r);
    sub_close(s);
}

static void test_set_reporting_interval_is_applied(void **state)
{
    const char *filters[] = {"device/sim-001/response", "device/sim-001/status"};
    char rid[EM_REQUEST_ID_MAX + 1];
    em_response_t r;
    sub_t *s;
    (void)state;

    s = sub_open(&fx.broker, filters, 2);
    next_request_id(rid, sizeof rid, "interval");
    send_command(&fx.broker, "sim-001", "set_reporting_interval", "{\"interval\":20}", rid,
                 (long long)em_now_ms());
    expect_response(s, "sim-001", rid, &r);
    assert_true(r.success);
    assert_non_null(strstr(r.message, "20 s"));
    em_response_cleanup(&r);
    /* The next status (asked for) carries the new period. */
    next_request_id(rid, sizeof rid, "interval_check");
    send_command(&fx.broker, "sim-001", "get_status", NULL, rid, (long long)em_now_ms());
    assert_non_null(
        sub_find(s, NULL, "device/sim-001/status", contains, "\"reportingInterval\":20", WAIT_MS));
    sub_close(s);
}

static void test_unreadable_command_is_dropped_and_agent_keeps_working(void **state)
{
    const char *filter = "device/sim-003/response";
    char rid[EM_REQUEST_ID_MAX + 1];
    em_response_t r;
    const msg_t *m;
    sub_t *s;
    (void)state;

    s = sub_open(&fx.broker, &filter, 1);
    send_raw(&fx.broker, "sim-003", "not json at all {{{");
    send_raw(&fx.broker, "sim-003", "{\"type\":\"wake\",\"requestId\":\"bad id with spaces\"}");
    next_request_id(rid, sizeof rid, "after_garbage");
    send_command(&fx.broker, "sim-003", "get_status", NULL, rid, (long long)em_now_ms());
    expect_response(s, "sim-003", rid, &r);
    assert_true(r.success);
    em_response_cleanup(&r);
    /* Neither unreadable command got an answer: the only response is ours. */
    m = sub_find(s, NULL, filter, NULL, NULL, 0);
    assert_non_null(m);
    assert_true(response_for(m, rid));
    assert_int_equal(kill(fx.agent, 0), 0);
    sub_close(s);
}

/* ---- process life ------------------------------------------------------ */

static void test_sigterm_publishes_offline_and_exits_zero(void **state)
{
    const char *filter = "device/term-dev/availability";
    char log[EM_TEST_PATH_MAX];
    const msg_t *m;
    pid_t pid;
    sub_t *s;
    (void)state;

    make_log_path(log, sizeof log, "term.log");
    {
        const char *argv[] = {AGENT,           "--url",    em_test_broker_url(&fx.broker),
                              "--allow-plain", "--id",     "term-dev",
                              "--type",        "actuator", NULL};
        pid = spawn_agent(argv, log);
    }
    wait_online(&fx.broker, "term-dev");
    assert_int_equal(kill(pid, SIGTERM), 0);
    assert_int_equal(agent_wait(pid, WAIT_MS), 0);

    /* A new subscriber sees the retained state the agent left behind. */
    s = sub_open(&fx.broker, &filter, 1);
    m = sub_find(s, NULL, filter, NULL, NULL, WAIT_MS);
    assert_non_null(m);
    assert_string_equal(m->payload, "offline");
    assert_true(m->retain);
    sub_close(s);
}

static void test_killed_agent_leaves_last_will_offline(void **state)
{
    const char *filter = "device/will-dev/availability";
    char log[EM_TEST_PATH_MAX];
    const msg_t *m;
    pid_t pid;
    sub_t *s;
    (void)state;

    make_log_path(log, sizeof log, "will.log");
    {
        const char *argv[] = {
            AGENT,      "--url", em_test_broker_url(&fx.broker), "--allow-plain", "--id",
            "will-dev", NULL};
        pid = spawn_agent(argv, log);
    }
    wait_online(&fx.broker, "will-dev");
    s = sub_open(&fx.broker, &filter, 1);
    assert_int_equal(kill(pid, SIGKILL), 0);
    assert_int_equal(agent_wait(pid, WAIT_MS), -1); /* killed: no exit status */
    /* The broker publishes the will once it sees the socket close. */
    m = sub_find(s, NULL, filter, payload_is, "offline", WAIT_MS);
    assert_non_null(m);
    sub_close(s);
}

static void test_duration_ends_the_run_with_status_zero(void **state)
{
    char log[EM_TEST_PATH_MAX];
    const char *filter = "device/short-dev/availability";
    sub_t *s;
    pid_t pid;
    (void)state;

    make_log_path(log, sizeof log, "duration.log");
    s = sub_open(&fx.broker, &filter, 1);
    {
        const char *argv[] = {AGENT,           "--url", em_test_broker_url(&fx.broker),
                              "--allow-plain", "--id",  "short-dev",
                              "--duration",    "1",     NULL};
        pid = spawn_agent(argv, log);
    }
    assert_int_equal(agent_wait(pid, 30000), 0);
    {
        const msg_t *on = sub_find(s, NULL, filter, payload_is, "online", WAIT_MS);
        assert_non_null(on);
        assert_non_null(sub_find(s, on, filter, payload_is, "offline", WAIT_MS));
    }
    sub_close(s);
}

static void test_password_on_command_line_is_refused(void **state)
{
    const char *argv[] = {AGENT,           "--url",   em_test_broker_url(&fx.broker),
                          "--allow-plain", "--id",    "pw-dev",
                          "--password",    "hunter2", NULL};
    (void)state;
    assert_int_equal(em_test_run(argv), 2);
}

static void test_conflicting_options_are_usage_errors(void **state)
{
    const char *both[] = {AGENT, "--url", "mqtt://127.0.0.1:1", "--id", "abc", "--simulate",
                          "2",   NULL};
    const char *neither[] = {AGENT, "--url", "mqtt://127.0.0.1:1", NULL};
    const char *no_url[] = {AGENT, "--id", "abc", NULL};
    const char *bad_id[] = {AGENT, "--url", "mqtt://127.0.0.1:1", "--id", "a/b", NULL};
    const char *bad_interval[] = {AGENT, "--url", "mqtt://127.0.0.1:1", "--id", "abc", "--interval",
                                  "10x", NULL};
    const char *bad_prefix[] = {AGENT,    "--url", "mqtt://127.0.0.1:1", "--id", "abc", "--prefix",
                                "dev/#/", NULL};
    (void)state;
    assert_int_equal(em_test_run(both), 2);
    assert_int_equal(em_test_run(neither), 2);
    assert_int_equal(em_test_run(no_url), 2);
    assert_int_equal(em_test_run(bad_id), 2);
    assert_int_equal(em_test_run(bad_interval), 2);
    assert_int_equal(em_test_run(bad_prefix), 2);
}

static void test_plain_url_without_allow_plain_fails(void **state)
{
    const char *argv[] = {AGENT,  "--url",     em_test_broker_url(&fx.broker),
                          "--id", "plain-dev", NULL};
    (void)state;
    assert_int_equal(em_test_run(argv), 1);
}

static void test_help_documents_every_option(void **state)
{
    static const char *const names[] = {"--url",           "--ca",
                                        "--ca-path",       "--cert",
                                        "--key",           "--cert-dir",
                                        "--username",      "--password-env",
                                        "--password-file", "--allow-plain",
                                        "--prefix",        "--id",
                                        "--simulate",      "--id-prefix",
                                        "--first",         "--type",
                                        "--interval",      "--telemetry-interval",
                                        "--duration",      "--seed",
                                        "--firmware",      "--command-max-age",
                                        "--mqtt-version",  "--keepalive",
                                        "--log-level",     "--help",
                                        "--version"};
    char out[EM_TEST_PATH_MAX], text[8192];
    const char *argv[] = {AGENT, "--help", NULL};
    FILE *f;
    size_t n;
    pid_t pid;
    (void)state;

    make_log_path(out, sizeof out, "help.txt");
    pid = spawn_agent(argv, out);
    assert_int_equal(agent_wait(pid, WAIT_MS), 0);
    f = fopen(out, "r");
    assert_non_null(f);
    n = fread(text, 1, sizeof text - 1, f);
    fclose(f);
    text[n] = '\0';
    for (size_t i = 0; i < sizeof names / sizeof names[0]; i++) {
        char needle[64];
        snprintf(needle, sizeof needle, "  %s ", names[i]);
        if (!strstr(text, needle)) {
            snprintf(needle, sizeof needle, "  %s\n", names[i]);
            assert_non_null(strstr(text, needle));
        }
    }
}

/* ---- fleet size and file descriptors ----------------------------------- */

/* More devices than the 300 of a process in the days of select(); four
 * descriptors each put the agent's descriptors past 1024. */
#define BIG_FLEET 320
/* What the agent asks of RLIMIT_NOFILE (docs/AGENT.md, "Limits"). */
#define AGENT_FDS(n) (32 + 5 * (n))

/* Waits up to timeout_ms until each of <prefix>-001 .. <prefix>-n has
 * published `payload` on its availability topic; returns how many did. */
static int count_availability(sub_t *s, const char *prefix, int n, const char *payload,
                              int timeout_ms)
{
    char head[64];
    size_t head_len;
    bool *seen = calloc((size_t)n + 1, sizeof *seen);
    const msg_t *prev = NULL; /* the last message already looked at */
    struct timespec ts;
    int count = 0;

    assert_non_null(seen);
    snprintf(head, sizeof head, "device/%s-", prefix);
    head_len = strlen(head);
    deadline_in(&ts, timeout_ms);
    pthread_mutex_lock(&s->lock);
    for (;;) {
        for (const msg_t *e = prev ? prev->next : s->head; e; e = e->next) {
            prev = e;
            if (strncmp(e->topic, head, head_len) == 0 && strcmp(e->payload, payload) == 0) {
                char *end = NULL;
                long k = strtol(e->topic + head_len, &end, 10);
                if (strcmp(end, "/availability") == 0 && k >= 1 && k <= n && !seen[k]) {
                    seen[k] = true;
                    count++;
                }
            }
        }
        if (count == n || pthread_cond_timedwait(&s->cond, &s->lock, &ts) != 0)
            break;
    }
    pthread_mutex_unlock(&s->lock);
    free(seen);
    return count;
}

/* The highest descriptor number process pid has open, or -1. */
static int highest_descriptor(pid_t pid)
{
    char path[64];
    struct dirent *e;
    DIR *d;
    int max = -1;

    snprintf(path, sizeof path, "/proc/%d/fd", (int)pid);
    d = opendir(path);
    if (!d)
        return -1;
    while ((e = readdir(d)) != NULL) {
        char *end = NULL;
        long v = strtol(e->d_name, &end, 10);
        if (e->d_name[0] != '.' && *end == '\0' && v > max)
            max = (int)v;
    }
    closedir(d);
    return max;
}

static bool file_contains(const char *path, const char *needle)
{
    char text[8192];
    size_t n;
    FILE *f = fopen(path, "r");

    if (!f)
        return false;
    n = fread(text, 1, sizeof text - 1, f);
    fclose(f);
    text[n] = '\0';
    return strstr(text, needle) != NULL;
}

/* Regression: the agent refused more than 300 devices, because libmosquitto's
 * select() loop cannot watch a descriptor numbered 1024 or more. Started with
 * the common soft limit of 1024 (which it raises by itself), the fleet uses
 * descriptors past 1024, and every device still comes online and goes
 * offline cleanly. */
static void test_fleet_past_descriptor_1024_comes_online_and_stops_cleanly(void **state)
{
    const char *filter = "device/+/availability";
    char log[EM_TEST_PATH_MAX], count[16];
    struct rlimit rl;
    em_test_broker_t *b;
    sub_t *s;
    pid_t pid;
    (void)state;

    assert_int_equal(getrlimit(RLIMIT_NOFILE, &rl), 0);
    if (rl.rlim_max != RLIM_INFINITY && rl.rlim_max < AGENT_FDS(BIG_FLEET))
        skip(); /* this machine's hard limit does not allow the fleet */
    b = broker_new("plain", true);
    s = sub_open(b, &filter, 1);
    make_log_path(log, sizeof log, "big-fleet.log");
    snprintf(count, sizeof count, "%d", BIG_FLEET);
    {
        const char *argv[] = {"prlimit",
                              "--nofile=1024:",
                              AGENT,
                              "--url",
                              em_test_broker_url(b),
                              "--allow-plain",
                              "--simulate",
                              count,
                              "--id-prefix",
                              "big",
                              "--interval",
                              "3600",
                              "--telemetry-interval",
                              "0",
                              "--log-level",
                              "warn",
                              NULL};
        pid = spawn_agent(argv, log);
    }
    assert_int_equal(count_availability(s, "big", BIG_FLEET, "online", 60000), BIG_FLEET);
    /* prlimit execs the agent: pid is the agent's. */
    assert_true(highest_descriptor(pid) >= 1024);
    assert_int_equal(agent_stop(pid), 0);
    assert_int_equal(count_availability(s, "big", BIG_FLEET, "offline", WAIT_MS), BIG_FLEET);
    sub_close(s);
    broker_free(b);
}

static void test_fleet_beyond_descriptor_limit_is_refused(void **state)
{
    char log[EM_TEST_PATH_MAX];
    pid_t pid;
    (void)state;

    make_log_path(log, sizeof log, "fd-limit.log");
    {
        /* 20 devices need more than 64 descriptors. */
        const char *argv[] = {"prlimit",
                              "--nofile=64:64",
                              AGENT,
                              "--url",
                              em_test_broker_url(&fx.broker),
                              "--allow-plain",
                              "--simulate",
                              "20",
                              "--id-prefix",
                              "nofd",
                              NULL};
        pid = spawn_agent(argv, log);
    }
    assert_int_equal(agent_wait(pid, WAIT_MS), 1);
    assert_true(file_contains(log, "file descriptors"));
}

static void test_fleet_within_a_low_descriptor_limit_runs(void **state)
{
    char log[EM_TEST_PATH_MAX];
    pid_t pid;
    (void)state;

    make_log_path(log, sizeof log, "fd-small.log");
    {
        /* 4 devices fit in 64 descriptors. */
        const char *argv[] = {"prlimit",
                              "--nofile=64:64",
                              AGENT,
                              "--url",
                              em_test_broker_url(&fx.broker),
                              "--allow-plain",
                              "--simulate",
                              "4",
                              "--id-prefix",
                              "fewfd",
                              "--duration",
                              "1",
                              NULL};
        pid = spawn_agent(argv, log);
    }
    assert_int_equal(agent_wait(pid, 30000), 0);
}

static void test_simulate_out_of_range_is_a_usage_error(void **state)
{
    const char *zero[] = {AGENT, "--url", "mqtt://127.0.0.1:1", "--simulate", "0", NULL};
    const char *too_many[] = {AGENT, "--url", "mqtt://127.0.0.1:1", "--simulate", "10001", NULL};
    (void)state;
    assert_int_equal(em_test_run(zero), 2);
    assert_int_equal(em_test_run(too_many), 2);
}

/* The transport reconnects after a broker restart, and the agent announces
 * itself again: a broker without persistence has forgotten the retained
 * "online", so seeing it again proves the re-announcement. */
static void test_agent_reannounces_after_broker_restart(void **state)
{
    em_test_broker_t *b;
    char log[EM_TEST_PATH_MAX];
    pid_t pid;
    (void)state;

    b = broker_new("plain", true);
    make_log_path(log, sizeof log, "restart.log");
    {
        const char *argv[] = {AGENT,     "--url", em_test_broker_url(b), "--allow-plain", "--id",
                              "phoenix", NULL};
        pid = spawn_agent(argv, log);
    }
    wait_online(b, "phoenix");
    assert_int_equal(em_test_broker_restart(b), 0);
    /* Reconnection backoff starts at 1 s and doubles: allow for several rounds. */
    {
        const char *filter = "device/phoenix/availability";
        sub_t *s;
        s = sub_open(b, &filter, 1);
        assert_non_null(sub_find(s, NULL, filter, payload_is, "online", 45000));
        sub_close(s);
    }
    assert_int_equal(agent_stop(pid), 0);
    broker_free(b);
}

/* A device may boot before its broker: the agent keeps trying and announces
 * itself once the broker is there. */
static void test_agent_started_before_broker_connects_later(void **state)
{
    char log[EM_TEST_PATH_MAX];
    em_test_broker_t *b;
    pid_t pid;
    (void)state;

    b = broker_new("plain", false); /* port chosen, nothing listening yet */
    make_log_path(log, sizeof log, "early.log");
    {
        const char *argv[] = {AGENT,        "--url", em_test_broker_url(b), "--allow-plain", "--id",
                              "early-bird", NULL};
        pid = spawn_agent(argv, log);
    }
    em_test_sleep_ms(300); /* let its first attempt fail */
    assert_int_equal(kill(pid, 0), 0);
    assert_int_equal(em_test_broker_launch(b), 0);
    wait_online(b, "early-bird");
    assert_int_equal(agent_stop(pid), 0);
    broker_free(b);
}

/* ---- TLS --------------------------------------------------------------- */

static void test_tls_devices_with_own_certificates_work(void **state)
{
    const char *filters[] = {"device/+/availability", "device/tls-002/response"};
    char certs[EM_TEST_PATH_MAX], log[EM_TEST_PATH_MAX];
    char rid[EM_REQUEST_ID_MAX + 1];
    em_test_broker_t *b;
    em_response_t r;
    pid_t pid;
    sub_t *s;
    (void)state;

    b = broker_new("mtls", false);
    assert_int_equal(em_test_broker_add_device(b, "tls-001"), 0);
    assert_int_equal(em_test_broker_add_device(b, "tls-002"), 0);
    assert_int_equal(em_test_broker_launch(b), 0);
    assert_non_null(em_test_broker_path(b, "devices", certs, sizeof certs));
    make_log_path(log, sizeof log, "tls.log");
    {
        const char *argv[] = {
            AGENT,        "--url", em_test_broker_url(b), "--ca", em_test_broker_ca(b),
            "--cert-dir", certs,   "--simulate",          "2",    "--id-prefix",
            "tls",        NULL};
        pid = spawn_agent(argv, log);
    }
    s = sub_open(b, filters, 2);
    assert_non_null(
        sub_find(s, NULL, "device/tls-001/availability", payload_is, "online", WAIT_MS));
    assert_non_null(
        sub_find(s, NULL, "device/tls-002/availability", payload_is, "online", WAIT_MS));
    next_request_id(rid, sizeof rid, "tls");
    send_command(b, "tls-002", "get_status", NULL, rid, (long long)em_now_ms());
    expect_response(s, "tls-002", rid, &r);
    assert_true(r.success);
    em_response_cleanup(&r);
    sub_close(s);
    assert_int_equal(agent_stop(pid), 0);
    broker_free(b);
}

static void test_tls_broker_from_unknown_ca_is_refused(void **state)
{
    char other_ca[EM_TEST_PATH_MAX];
    em_test_broker_t *b;
    (void)state;

    b = broker_new("tls", true);
    assert_non_null(em_test_broker_path(b, "other-ca.crt", other_ca, sizeof other_ca));
    {
        const char *argv[] = {AGENT,    "--url", em_test_broker_url(b), "--ca",
                              other_ca, "--id",  "mitm-victim",         NULL};
        assert_int_equal(em_test_run(argv), 1);
    }
    broker_free(b);
}

static void test_missing_device_certificate_is_refused(void **state)
{
    char certs[EM_TEST_PATH_MAX];
    em_test_broker_t *b;
    (void)state;

    b = broker_new("mtls", false);
    assert_int_equal(em_test_broker_add_device(b, "known-001"), 0);
    assert_int_equal(em_test_broker_launch(b), 0);
    assert_non_null(em_test_broker_path(b, "devices", certs, sizeof certs));
    {
        /* known-002 has no certificate in the directory. */
        const char *argv[] = {
            AGENT,        "--url", em_test_broker_url(b), "--ca", em_test_broker_ca(b),
            "--cert-dir", certs,   "--simulate",          "2",    "--id-prefix",
            "known",      NULL};
        assert_int_equal(em_test_run(argv), 1);
    }
    broker_free(b);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_teardown(test_every_device_is_online_retained, test_teardown),
        cmocka_unit_test_teardown(test_status_is_valid_and_periodic, test_teardown),
        cmocka_unit_test_teardown(test_telemetry_is_valid_and_energy_never_decreases,
                                  test_teardown),
        cmocka_unit_test_teardown(test_sleep_command_is_answered_and_applied, test_teardown),
        cmocka_unit_test_teardown(test_reset_without_confirm_is_refused, test_teardown),
        cmocka_unit_test_teardown(test_unknown_command_type_is_refused, test_teardown),
        cmocka_unit_test_teardown(test_replayed_request_id_is_refused, test_teardown),
        cmocka_unit_test_teardown(test_expired_command_is_refused, test_teardown),
        cmocka_unit_test_teardown(test_get_status_publishes_status_at_once, test_teardown),
        cmocka_unit_test_teardown(test_configure_applies_known_keys_and_reports_ignored,
                                  test_teardown),
        cmocka_unit_test_teardown(test_update_bumps_firmware_after_a_reboot, test_teardown),
        cmocka_unit_test_teardown(test_update_to_older_version_is_refused, test_teardown),
        cmocka_unit_test_teardown(test_set_reporting_interval_is_applied, test_teardown),
        cmocka_unit_test_teardown(test_unreadable_command_is_dropped_and_agent_keeps_working,
                                  test_teardown),
        cmocka_unit_test_teardown(test_sigterm_publishes_offline_and_exits_zero, test_teardown),
        cmocka_unit_test_teardown(test_killed_agent_leaves_last_will_offline, test_teardown),
        cmocka_unit_test_teardown(test_duration_ends_the_run_with_status_zero, test_teardown),
        cmocka_unit_test_teardown(test_password_on_command_line_is_refused, test_teardown),
        cmocka_unit_test_teardown(test_conflicting_options_are_usage_errors, test_teardown),
        cmocka_unit_test_teardown(test_plain_url_without_allow_plain_fails, test_teardown),
        cmocka_unit_test_teardown(test_help_documents_every_option, test_teardown),
        cmocka_unit_test_teardown(test_fleet_past_descriptor_1024_comes_online_and_stops_cleanly,
                                  test_teardown),
        cmocka_unit_test_teardown(test_fleet_beyond_descriptor_limit_is_refused, test_teardown),
        cmocka_unit_test_teardown(test_fleet_within_a_low_descriptor_limit_runs, test_teardown),
        cmocka_unit_test_teardown(test_simulate_out_of_range_is_a_usage_error, test_teardown),
        cmocka_unit_test_teardown(test_agent_reannounces_after_broker_restart, test_teardown),
        cmocka_unit_test_teardown(test_agent_started_before_broker_connects_later, test_teardown),
        cmocka_unit_test_teardown(test_tls_devices_with_own_certificates_work, test_teardown),
        cmocka_unit_test_teardown(test_tls_broker_from_unknown_ca_is_refused, test_teardown),
        cmocka_unit_test_teardown(test_missing_device_certificate_is_refused, test_teardown),
    };
    int rc;

    signal(SIGPIPE, SIG_IGN);
    mosquitto_lib_init();
    rc = cmocka_run_group_tests(tests, group_setup, group_teardown);
    mosquitto_lib_cleanup();
    return rc;
}
