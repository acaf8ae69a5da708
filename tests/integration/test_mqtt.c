/*
 * emiot tests - the MQTT transport against a real mosquitto broker: plain,
 * TLS, mutual TLS and password brokers on loopback, started and stopped by
 * PID (tests/support/broker.h).
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/select.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "broker.h"
#include "emiot/mqtt.h"
#include "mqtt/mqtt_internal.h"
#include "testutil.h"

#define WAIT_MS 10000

/* ---------------------------------------------------------------------- */
/* What the callbacks saw                                                  */

#define REC_EVENTS 512
#define REC_MSGS   64

typedef struct rec {
    pthread_mutex_t mu;
    pthread_cond_t cv;
    int nevents;
    em_mqtt_event_t ev[REC_EVENTS];
    em_err_t code[REC_EVENTS];
    bool has_err[REC_EVENTS];
    char msg[REC_EVENTS][EM_ERROR_MESSAGE_MAX + 1];
    int nmsg;
    char topic[REC_MSGS][128];
    char payload[REC_MSGS][256];
    int qos[REC_MSGS];
    int npub;
    unsigned char acked[65536];
    em_mqtt_t *client;           /* for callbacks that call back in */
    em_err_t disconnect_from_cb; /* what em_mqtt_disconnect answered in a callback */
    bool try_disconnect_in_cb;
} rec_t;

static rec_t R;

static void rec_reset(rec_t *r)
{
    static bool inited;
    if (!inited) {
        pthread_mutex_init(&r->mu, NULL);
        pthread_cond_init(&r->cv, NULL);
        inited = true;
    }
    pthread_mutex_lock(&r->mu);
    r->nevents = 0;
    r->nmsg = 0;
    r->npub = 0;
    memset(r->acked, 0, sizeof(r->acked));
    r->client = NULL;
    r->disconnect_from_cb = EM_OK;
    r->try_disconnect_in_cb = false;
    pthread_mutex_unlock(&r->mu);
}

static void cb_message(void *ud, const char *topic, const void *payload, size_t len, int qos,
                       bool retain)
{
    rec_t *r = ud;
    (void)retain;
    pthread_mutex_lock(&r->mu);
    if (r->nmsg < REC_MSGS) {
        snprintf(r->topic[r->nmsg], sizeof(r->topic[0]), "%s", topic);
        snprintf(r->payload[r->nmsg], sizeof(r->payload[0]), "%.*s", (int)len,
                 (const char *)payload);
        r->qos[r->nmsg] = qos;
    }
    r->nmsg++;
    bool try_disc = r->try_disconnect_in_cb;
    em_mqtt_t *c = r->client;
    pthread_cond_broadcast(&r->cv);
    pthread_mutex_unlock(&r->mu);
    if (try_disc && c != NULL) {
        em_err_t rc = em_mqtt_disconnect(c, NULL);
        pthread_mutex_lock(&r->mu);
        r->disconnect_from_cb = rc;
        r->try_disconnect_in_cb = false;
        pthread_cond_broadcast(&r->cv);
        pthread_mutex_unlock(&r->mu);
    }
}

static void cb_event(void *ud, em_mqtt_event_t ev, const em_error_t *err)
{
    rec_t *r = ud;
    pthread_mutex_lock(&r->mu);
    if (r->nevents < REC_EVENTS) {
        int i = r->nevents;
        r->ev[i] = ev;
        r->has_err[i] = err != NULL;
        r->code[i] = err != NULL ? err->code : EM_OK;
        snprintf(r->msg[i], sizeof(r->msg[0]), "%s", err != NULL ? err->message : "");
        r->nevents++;
    }
    pthread_cond_broadcast(&r->cv);
    pthread_mutex_unlock(&r->mu);
}

static void cb_published(void *ud, int mid)
{
    rec_t *r = ud;
    pthread_mutex_lock(&r->mu);
    r->npub++;
    if (mid > 0 && mid < 65536)
        r->acked[mid] = 1;
    pthread_cond_broadcast(&r->cv);
    pthread_mutex_unlock(&r->mu);
}

static const em_mqtt_callbacks_t CBS = {cb_message, cb_event, cb_published, &R};

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

static int rec_get(rec_t *r, const int *field)
{
    pthread_mutex_lock(&r->mu);
    int v = *field;
    pthread_mutex_unlock(&r->mu);
    return v;
}

#define NMSG()    rec_get(&R, &R.nmsg)
#define NPUB()    rec_get(&R, &R.npub)
#define NEVENTS() rec_get(&R, &R.nevents)

/* Index of the first event ev at or after index from, waiting up to ms; -1. */
static int wait_event(rec_t *r, em_mqtt_event_t ev, int from, int ms)
{
    struct timespec ts;
    deadline_in(&ts, ms);
    pthread_mutex_lock(&r->mu);
    int found = -1;
    for (;;) {
        for (int i = from; i < r->nevents; i++) {
            if (r->ev[i] == ev) {
                found = i;
                break;
            }
        }
        if (found >= 0 || pthread_cond_timedwait(&r->cv, &r->mu, &ts) == ETIMEDOUT)
            break;
    }
    if (found < 0) {
        for (int i = from; i < r->nevents; i++) {
            if (r->ev[i] == ev) {
                found = i;
                break;
            }
        }
    }
    pthread_mutex_unlock(&r->mu);
    return found;
}

static int count_events(rec_t *r, em_mqtt_event_t ev)
{
    pthread_mutex_lock(&r->mu);
    int n = 0;
    for (int i = 0; i < r->nevents; i++)
        n += r->ev[i] == ev;
    pthread_mutex_unlock(&r->mu);
    return n;
}

static bool wait_count(rec_t *r, int *counter, int n, int ms)
{
    struct timespec ts;
    deadline_in(&ts, ms);
    pthread_mutex_lock(&r->mu);
    while (*counter < n) {
        if (pthread_cond_timedwait(&r->cv, &r->mu, &ts) == ETIMEDOUT)
            break;
    }
    bool ok = *counter >= n;
    pthread_mutex_unlock(&r->mu);
    return ok;
}

static bool wait_messages(rec_t *r, int n, int ms)
{
    return wait_count(r, &r->nmsg, n, ms);
}

static bool wait_published(rec_t *r, int n, int ms)
{
    return wait_count(r, &r->npub, n, ms);
}

/* Drives a client without a thread until the recorder has n messages. */
static bool loop_until_messages(em_mqtt_t *m, rec_t *r, int n, int ms)
{
    struct timespec t0, t1;
    clock_gettime(CLOCK_MONOTONIC, &t0);
    for (;;) {
        pthread_mutex_lock(&r->mu);
        bool ok = r->nmsg >= n;
        pthread_mutex_unlock(&r->mu);
        if (ok)
            return true;
        clock_gettime(CLOCK_MONOTONIC, &t1);
        if ((t1.tv_sec - t0.tv_sec) * 1000 + (t1.tv_nsec - t0.tv_nsec) / 1000000 > ms)
            return false;
        if (em_mqtt_loop(m, 50, NULL) != EM_OK)
            return false;
    }
}

/* ---------------------------------------------------------------------- */
/* Brokers shared by the tests that do not stop them                       */

static em_test_broker_t PLAIN, TLS, MTLS, PASSWD;

static const char *PW = "correct horse battery staple";

static int group_setup(void **state)
{
    (void)state;
    em_mqtt_lib_init();
    rec_reset(&R);
    if (em_test_broker_start(&PLAIN, "plain") != 0 || em_test_broker_start(&TLS, "tls") != 0 ||
        em_test_broker_start(&MTLS, "mtls") != 0)
        return -1;
    if (em_test_broker_init(&PASSWD, "tls") != 0 ||
        em_test_broker_add_user(&PASSWD, "manager", PW) != 0 || em_test_broker_launch(&PASSWD) != 0)
        return -1;
    return 0;
}

static int group_teardown(void **state)
{
    (void)state;
    em_test_broker_cleanup(&PLAIN);
    em_test_broker_cleanup(&TLS);
    em_test_broker_cleanup(&MTLS);
    em_test_broker_cleanup(&PASSWD);
    return 0;
}

static int test_setup(void **state)
{
    (void)state;
    rec_reset(&R);
    return 0;
}

static void opts_plain(em_mqtt_options_t *o, em_test_broker_t *b)
{
    em_mqtt_options_init(o);
    o->url = em_test_broker_url(b);
    o->allow_plain = true;
}

static void opts_tls(em_mqtt_options_t *o, em_test_broker_t *b)
{
    em_mqtt_options_init(o);
    o->url = em_test_broker_url(b);
    o->ca_file = em_test_broker_ca(b);
}

static em_mqtt_t *new_client(const em_mqtt_options_t *o)
{
    em_error_t err;
    em_error_clear(&err);
    em_mqtt_t *m = em_mqtt_new(o, &CBS, &err);
    if (m == NULL)
        fail_msg("em_mqtt_new: %s: %s", em_err_name(err.code), err.message);
    R.client = m;
    return m;
}

static void connect_ok(em_mqtt_t *m)
{
    em_error_t err;
    em_error_clear(&err);
    em_err_t rc = em_mqtt_connect(m, WAIT_MS, &err);
    if (rc != EM_OK)
        fail_msg("em_mqtt_connect: %s: %s", em_err_name(rc), err.message);
    assert_true(em_mqtt_is_connected(m));
}

/* new + connect expected to fail with code; returns the error. */
static em_error_t connect_fails(const em_mqtt_options_t *o, em_err_t code)
{
    em_mqtt_t *m = new_client(o);
    em_error_t err;
    em_error_clear(&err);
    em_err_t rc = em_mqtt_connect(m, WAIT_MS, &err);
    if (rc != code)
        fail_msg("expected %s, got %s: %s", em_err_name(code), em_err_name(rc), err.message);
    assert_int_equal(err.code, code);
    assert_false(em_mqtt_is_connected(m));
    em_mqtt_free(m);
    return err;
}

static em_error_t new_fails(const em_mqtt_options_t *o)
{
    em_error_t err;
    em_error_clear(&err);
    em_mqtt_t *m = em_mqtt_new(o, &CBS, &err);
    if (m != NULL) {
        em_mqtt_free(m);
        fail_msg("em_mqtt_new accepted the options");
    }
    assert_int_equal(err.code, EM_ERR_CONFIGURATION);
    return err;
}

static void assert_contains(const char *haystack, const char *needle)
{
    if (strstr(haystack, needle) == NULL)
        fail_msg("'%s' does not contain '%s'", haystack, needle);
}

/* Subscribes to filter, then publishes to topic (which it matches) and waits
 * for the message: from then on the subscription is active at the broker. */
static void roundtrip_on(em_mqtt_t *m, const char *filter, const char *topic)
{
    int before = NMSG();
    assert_int_equal(em_mqtt_subscribe(m, filter, 1, NULL), EM_OK);
    assert_int_equal(em_mqtt_publish(m, topic, "ping", 4, 1, false, NULL, NULL), EM_OK);
    assert_true(wait_messages(&R, before + 1, WAIT_MS));
}

static void roundtrip(em_mqtt_t *m, const char *topic)
{
    roundtrip_on(m, topic, topic);
}

/* ---------------------------------------------------------------------- */
/* Options refused by em_mqtt_new                                          */

static void test_plain_refused_without_allow_plain(void **state)
{
    (void)state;
    em_mqtt_options_t o;
    em_mqtt_options_init(&o);
    o.url = "mqtt://127.0.0.1:1883";
    em_error_t err = new_fails(&o);
    assert_contains(err.message, "allow_plain");
}

static void test_plain_refused_for_non_loopback_host(void **state)
{
    (void)state;
    em_mqtt_options_t o;
    em_mqtt_options_init(&o);
    o.allow_plain = true;
    o.url = "mqtt://broker.example.com:1883";
    em_error_t err = new_fails(&o);
    assert_contains(err.message, "loopback");
    o.url = "mqtt://10.1.2.3";
    new_fails(&o);
}

static void test_tls_files_with_plain_url_refused(void **state)
{
    (void)state;
    em_mqtt_options_t o;
    opts_plain(&o, &PLAIN);
    o.ca_file = em_test_broker_ca(&TLS);
    em_error_t err = new_fails(&o);
    assert_contains(err.message, "mqtts://");
}

static void test_unreadable_ca_file_is_configuration_error(void **state)
{
    (void)state;
    em_mqtt_options_t o;
    opts_tls(&o, &TLS);
    o.ca_file = "/nonexistent/emiot/ca.crt";
    em_error_t err = new_fails(&o);
    assert_string_equal(err.field, "ca_file");
    o.ca_file = NULL;
    o.ca_path = "/nonexistent/emiot/certs";
    err = new_fails(&o);
    assert_string_equal(err.field, "ca_path");
}

static void test_cert_without_key_is_configuration_error(void **state)
{
    (void)state;
    em_mqtt_options_t o;
    opts_tls(&o, &MTLS);
    o.cert_file = em_test_broker_cert(&MTLS);
    em_error_t err = new_fails(&o);
    assert_contains(err.message, "together");
}

static void test_key_not_matching_cert_is_configuration_error(void **state)
{
    (void)state;
    char key[EM_TEST_PATH_MAX];
    em_mqtt_options_t o;
    opts_tls(&o, &MTLS);
    o.cert_file = em_test_broker_cert(&MTLS);
    o.key_file = em_test_broker_path(&MTLS, "other-client.key", key, sizeof(key));
    em_error_t err = new_fails(&o);
    assert_string_equal(err.field, "key_file");
    assert_contains(err.message, "does not match");
}

static void test_missing_password_variable_is_configuration_error(void **state)
{
    (void)state;
    unsetenv("EMIOT_TEST_NO_SUCH_PASSWORD");
    em_mqtt_options_t o;
    opts_tls(&o, &PASSWD);
    o.username = "manager";
    o.password_env = "EMIOT_TEST_NO_SUCH_PASSWORD";
    em_error_t err = new_fails(&o);
    assert_string_equal(err.field, "password_env");
    assert_contains(err.message, "EMIOT_TEST_NO_SUCH_PASSWORD");
}

static void test_missing_password_file_is_configuration_error(void **state)
{
    (void)state;
    em_mqtt_options_t o;
    opts_tls(&o, &PASSWD);
    o.username = "manager";
    o.password_file = "/nonexistent/emiot/password";
    em_error_t err = new_fails(&o);
    assert_string_equal(err.field, "password_file");
}

static void test_too_long_password_file_refused_without_echoing_it(void **state)
{
    (void)state;
    char path[EM_TEST_PATH_MAX];
    em_test_broker_path(&PASSWD, "long-password", path, sizeof(path));
    FILE *f = fopen(path, "w");
    assert_non_null(f);
    for (int i = 0; i < 40; i++)
        fputs("SECRETxx", f);
    fputs("\n", f);
    fclose(f);
    chmod(path, 0600);
    em_mqtt_options_t o;
    opts_tls(&o, &PASSWD);
    o.username = "manager";
    o.password_file = path;
    em_error_t err = new_fails(&o);
    assert_contains(err.message, "longer than");
    assert_null(strstr(err.message, "SECRET"));
    unlink(path);
}

static void test_password_without_username_is_configuration_error(void **state)
{
    (void)state;
    setenv("EMIOT_TEST_PW", PW, 1);
    em_mqtt_options_t o;
    opts_tls(&o, &PASSWD);
    o.password_env = "EMIOT_TEST_PW";
    em_error_t err = new_fails(&o);
    assert_string_equal(err.field, "username");
    unsetenv("EMIOT_TEST_PW");
}

static void test_persistent_session_needs_client_id(void **state)
{
    (void)state;
    em_mqtt_options_t o;
    opts_plain(&o, &PLAIN);
    o.clean_session = false;
    em_error_t err = new_fails(&o);
    assert_string_equal(err.field, "clean_session");
}

static void test_bad_numbers_are_configuration_errors(void **state)
{
    (void)state;
    em_mqtt_options_t o;
    opts_plain(&o, &PLAIN);
    o.keepalive_s = 2;
    new_fails(&o);
    opts_plain(&o, &PLAIN);
    o.reconnect_min_s = 10;
    o.reconnect_max_s = 5;
    new_fails(&o);
    opts_plain(&o, &PLAIN);
    o.protocol = 3;
    new_fails(&o);
    opts_plain(&o, &PLAIN);
    o.max_inflight = 70000;
    new_fails(&o);
    opts_plain(&o, &PLAIN);
    o.will_topic = "a/+/b";
    new_fails(&o);
}

/* ---------------------------------------------------------------------- */
/* Client ids                                                              */

static bool is_hex(const char *s, size_t n)
{
    for (size_t i = 0; i < n; i++) {
        if (!((s[i] >= '0' && s[i] <= '9') || (s[i] >= 'a' && s[i] <= 'f')))
            return false;
    }
    return s[n] == '\0';
}

static void test_random_client_ids_differ(void **state)
{
    (void)state;
    em_mqtt_options_t o;
    opts_plain(&o, &PLAIN);
    em_mqtt_t *a = new_client(&o);
    em_mqtt_t *b = new_client(&o);
    const char *ia = em_mqtt_client_id(a);
    const char *ib = em_mqtt_client_id(b);
    assert_int_equal(strlen(ia), 6 + 16);
    assert_int_equal(strncmp(ia, "emiot-", 6), 0);
    assert_true(is_hex(ia + 6, 16));
    assert_true(is_hex(ib + 6, 16));
    assert_string_not_equal(ia, ib);
    em_mqtt_free(a);
    em_mqtt_free(b);
}

static void test_client_id_prefix_and_fixed_id(void **state)
{
    (void)state;
    em_mqtt_options_t o;
    opts_plain(&o, &PLAIN);
    o.client_id_prefix = "emiotd-";
    em_mqtt_t *a = new_client(&o);
    assert_int_equal(strncmp(em_mqtt_client_id(a), "emiotd-", 7), 0);
    assert_true(is_hex(em_mqtt_client_id(a) + 7, 16));
    em_mqtt_free(a);

    o.client_id = "manager-1";
    em_mqtt_t *b = new_client(&o);
    assert_string_equal(em_mqtt_client_id(b), "manager-1");
    em_mqtt_free(b);

    o.client_id = "bad/id";
    new_fails(&o);
    o.client_id = "bad id";
    new_fails(&o);
}

/* ---------------------------------------------------------------------- */
/* Plain MQTT on loopback                                                  */

static void test_plain_connect_subscribe_publish_receive(void **state)
{
    (void)state;
    em_mqtt_options_t o;
    opts_plain(&o, &PLAIN);
    em_mqtt_t *m = new_client(&o);
    assert_int_equal(em_mqtt_protocol(m), 0);
    connect_ok(m);
    assert_int_equal(em_mqtt_protocol(m), 5);
    assert_int_equal(em_mqtt_start(m, NULL), EM_OK);
    assert_true(wait_event(&R, EM_MQTT_CONNECTED, 0, WAIT_MS) >= 0);

    assert_int_equal(em_mqtt_subscribe(m, "t/plain/#", 1, NULL), EM_OK);
    int mid = 0;
    const char *body = "{\"batteryLevel\":75}";
    assert_int_equal(em_mqtt_publish(m, "t/plain/dev-1", body, strlen(body), 1, false, &mid, NULL),
                     EM_OK);
    assert_true(mid > 0);
    assert_true(wait_messages(&R, 1, WAIT_MS));
    pthread_mutex_lock(&R.mu);
    assert_string_equal(R.topic[0], "t/plain/dev-1");
    assert_string_equal(R.payload[0], body);
    assert_int_equal(R.qos[0], 1);
    pthread_mutex_unlock(&R.mu);
    assert_true(wait_published(&R, 1, WAIT_MS));
    assert_true(R.acked[mid]);
    assert_int_equal(em_mqtt_disconnect(m, NULL), EM_OK);
    assert_false(em_mqtt_is_connected(m));
    em_mqtt_free(m);
}

static void test_connected_event_has_no_error_and_disconnected_says_why(void **state)
{
    (void)state;
    em_mqtt_options_t o;
    opts_plain(&o, &PLAIN);
    em_mqtt_t *m = new_client(&o);
    assert_int_equal(em_mqtt_start(m, NULL), EM_OK);
    int c = wait_event(&R, EM_MQTT_CONNECTED, 0, WAIT_MS);
    assert_true(c >= 0);
    assert_false(R.has_err[c]);
    assert_int_equal(em_mqtt_disconnect(m, NULL), EM_OK);
    int d = wait_event(&R, EM_MQTT_DISCONNECTED, c, WAIT_MS);
    assert_true(d > c);
    assert_true(R.has_err[d]);
    assert_int_equal(R.code[d], EM_OK);
    assert_contains(R.msg[d], "by the client");
    em_mqtt_free(m);
}

static void test_works_with_descriptors_above_fd_setsize(void **state)
{
    (void)state;
    /* A daemon with many connections hands the MQTT socket a descriptor of
     * 1024 or more, which select() cannot watch (libmosquitto's own loop
     * refuses it). Occupy the low descriptors, then connect. */
    struct rlimit rl;
    assert_int_equal(getrlimit(RLIMIT_NOFILE, &rl), 0);
    if (rl.rlim_cur < 1200 && rl.rlim_max >= 1200) {
        rl.rlim_cur = 1200;
        assert_int_equal(setrlimit(RLIMIT_NOFILE, &rl), 0);
    }
    if (rl.rlim_cur < 1200)
        skip();
    enum { FILLERS = 1100 };
    static int fillers[FILLERS];
    int n = 0;
    while (n < FILLERS) {
        int fd = open("/dev/null", O_RDONLY | O_CLOEXEC);
        assert_true(fd >= 0);
        fillers[n++] = fd;
        if (fd >= FD_SETSIZE + 8)
            break;
    }
    em_mqtt_options_t o;
    opts_plain(&o, &PLAIN);
    em_mqtt_t *m = new_client(&o);
    connect_ok(m);
    assert_int_equal(em_mqtt_start(m, NULL), EM_OK);
    roundtrip(m, "t/fdsetsize/a");
    em_mqtt_free(m);
    for (int i = 0; i < n; i++)
        close(fillers[i]);
}

static void test_idle_connection_kept_alive_by_pings(void **state)
{
    (void)state;
    /* mosquitto drops a client silent for 1.5 keepalive periods (7.5 s here,
     * checked every few seconds: 12 s without pings in practice): an idle
     * connection survives only if the driver sends PINGREQ. */
    em_mqtt_options_t o;
    opts_plain(&o, &PLAIN);
    o.keepalive_s = 5;
    em_mqtt_t *m = new_client(&o);
    connect_ok(m);
    assert_int_equal(em_mqtt_start(m, NULL), EM_OK);
    em_test_sleep_ms(16000);
    assert_int_equal(count_events(&R, EM_MQTT_DISCONNECTED), 0);
    assert_true(em_mqtt_is_connected(m));
    roundtrip(m, "t/keepalive/a");
    em_mqtt_free(m);
}

static void test_publish_when_not_connected_is_refused(void **state)
{
    (void)state;
    em_mqtt_options_t o;
    opts_plain(&o, &PLAIN);
    em_mqtt_t *m = new_client(&o);
    em_error_t err;
    em_error_clear(&err);
    assert_int_equal(em_mqtt_publish(m, "t/x", "a", 1, 1, false, NULL, &err), EM_ERR_NOT_CONNECTED);
    assert_int_equal(err.code, EM_ERR_NOT_CONNECTED);
    connect_ok(m);
    assert_int_equal(em_mqtt_disconnect(m, NULL), EM_OK);
    assert_int_equal(em_mqtt_publish(m, "t/x", "a", 1, 0, false, NULL, NULL), EM_ERR_NOT_CONNECTED);
    em_mqtt_free(m);
}

static void test_publish_argument_errors(void **state)
{
    (void)state;
    em_mqtt_options_t o;
    opts_plain(&o, &PLAIN);
    em_mqtt_t *m = new_client(&o);
    connect_ok(m);
    em_error_t err;
    assert_int_equal(em_mqtt_publish(m, "t/x", "a", 1, 3, false, NULL, &err),
                     EM_ERR_INVALID_ARGUMENT);
    assert_int_equal(em_mqtt_publish(m, "t/+/x", "a", 1, 1, false, NULL, &err),
                     EM_ERR_INVALID_ARGUMENT);
    assert_int_equal(em_mqtt_publish(m, "t/#", "a", 1, 1, false, NULL, &err),
                     EM_ERR_INVALID_ARGUMENT);
    assert_int_equal(em_mqtt_publish(m, "", "a", 1, 1, false, NULL, &err), EM_ERR_INVALID_ARGUMENT);
    assert_int_equal(em_mqtt_publish(m, NULL, "a", 1, 1, false, NULL, &err),
                     EM_ERR_INVALID_ARGUMENT);
    assert_int_equal(em_mqtt_publish(m, "t/x", NULL, 5, 1, false, NULL, &err),
                     EM_ERR_INVALID_ARGUMENT);
    assert_int_equal(em_mqtt_publish(m, "t/\xff", "a", 1, 1, false, NULL, &err),
                     EM_ERR_INVALID_ARGUMENT);
    assert_int_equal(em_mqtt_publish(m, "t/x", NULL, 0, 0, false, NULL, &err), EM_OK);
    em_mqtt_free(m);
}

static void test_qos1_publishes_acknowledged_via_on_published(void **state)
{
    (void)state;
    enum { N = 500 };
    static int mids[N];
    em_mqtt_options_t o;
    opts_plain(&o, &PLAIN);
    em_mqtt_t *m = new_client(&o);
    connect_ok(m);
    assert_int_equal(em_mqtt_start(m, NULL), EM_OK);
    for (int i = 0; i < N; i++) {
        char body[32];
        int n = snprintf(body, sizeof(body), "{\"n\":%d}", i);
        assert_int_equal(
            em_mqtt_publish(m, "t/qos1/acks", body, (size_t)n, 1, false, &mids[i], NULL), EM_OK);
    }
    assert_true(wait_published(&R, N, WAIT_MS));
    pthread_mutex_lock(&R.mu);
    for (int i = 0; i < N; i++)
        assert_true(R.acked[mids[i]]);
    pthread_mutex_unlock(&R.mu);
    assert_int_equal(em_mqtt_disconnect(m, NULL), EM_OK);
    em_mqtt_free(m);
}

/* A second client that counts what arrives (its own recorder). */
typedef struct counter {
    pthread_mutex_t mu;
    pthread_cond_t cv;
    int n;
} counter_t;

static void count_message(void *ud, const char *topic, const void *payload, size_t len, int qos,
                          bool retain)
{
    (void)topic;
    (void)payload;
    (void)len;
    (void)qos;
    (void)retain;
    counter_t *c = ud;
    pthread_mutex_lock(&c->mu);
    c->n++;
    pthread_cond_broadcast(&c->cv);
    pthread_mutex_unlock(&c->mu);
}

static bool counter_wait(counter_t *c, int n, int ms)
{
    struct timespec ts;
    deadline_in(&ts, ms);
    pthread_mutex_lock(&c->mu);
    while (c->n < n) {
        if (pthread_cond_timedwait(&c->cv, &c->mu, &ts) == ETIMEDOUT)
            break;
    }
    bool ok = c->n >= n;
    pthread_mutex_unlock(&c->mu);
    return ok;
}

static void test_disconnect_flushes_pending_qos1(void **state)
{
    (void)state;
    enum { N = 2000 };
    counter_t c = {PTHREAD_MUTEX_INITIALIZER, PTHREAD_COND_INITIALIZER, 0};
    em_mqtt_callbacks_t ccb = {count_message, NULL, NULL, &c};
    em_mqtt_options_t o;
    opts_plain(&o, &PLAIN);
    em_mqtt_t *rx = em_mqtt_new(&o, &ccb, NULL);
    assert_non_null(rx);
    assert_int_equal(em_mqtt_connect(rx, WAIT_MS, NULL), EM_OK);
    assert_int_equal(em_mqtt_start(rx, NULL), EM_OK);
    assert_int_equal(em_mqtt_subscribe(rx, "t/flush/#", 1, NULL), EM_OK);
    /* Make sure the subscription is in place before counting. */
    assert_int_equal(em_mqtt_publish(rx, "t/flush/probe", "p", 1, 1, false, NULL, NULL), EM_OK);
    assert_true(counter_wait(&c, 1, WAIT_MS));

    em_mqtt_t *tx = new_client(&o);
    connect_ok(tx);
    assert_int_equal(em_mqtt_start(tx, NULL), EM_OK);
    for (int i = 0; i < N; i++)
        assert_int_equal(em_mqtt_publish(tx, "t/flush/x", "0123456789", 10, 1, false, NULL, NULL),
                         EM_OK);
    /* At once: disconnect must wait for the acknowledgements itself. */
    assert_int_equal(em_mqtt_disconnect(tx, NULL), EM_OK);
    assert_int_equal(NPUB(), N);
    assert_true(counter_wait(&c, N + 1, WAIT_MS));
    em_mqtt_free(tx);
    em_mqtt_free(rx);
}

static void test_subscription_recorded_while_disconnected_is_sent_on_connect(void **state)
{
    (void)state;
    em_mqtt_options_t o;
    opts_plain(&o, &PLAIN);
    em_mqtt_t *m = new_client(&o);
    assert_int_equal(em_mqtt_subscribe(m, "t/early/#", 1, NULL), EM_OK);
    connect_ok(m);
    assert_int_equal(em_mqtt_start(m, NULL), EM_OK);
    assert_int_equal(em_mqtt_publish(m, "t/early/a", "x", 1, 1, false, NULL, NULL), EM_OK);
    assert_true(wait_messages(&R, 1, WAIT_MS));
    em_mqtt_free(m);
}

static void test_unsubscribe_stops_delivery(void **state)
{
    (void)state;
    em_mqtt_options_t o;
    opts_plain(&o, &PLAIN);
    em_mqtt_t *m = new_client(&o);
    connect_ok(m);
    assert_int_equal(em_mqtt_start(m, NULL), EM_OK);
    roundtrip(m, "t/unsub/a");
    roundtrip(m, "t/unsub/b");
    assert_int_equal(em_mqtt_unsubscribe(m, "t/unsub/a", NULL), EM_OK);
    int before = NMSG();
    /* The broker handles one client's packets in order: once the message on
     * b is back, the one on a (sent before it) would have been too. */
    assert_int_equal(em_mqtt_publish(m, "t/unsub/a", "gone", 4, 1, false, NULL, NULL), EM_OK);
    assert_int_equal(em_mqtt_publish(m, "t/unsub/b", "kept", 4, 1, false, NULL, NULL), EM_OK);
    assert_true(wait_messages(&R, before + 1, WAIT_MS));
    pthread_mutex_lock(&R.mu);
    assert_int_equal(R.nmsg, before + 1);
    assert_string_equal(R.topic[before], "t/unsub/b");
    pthread_mutex_unlock(&R.mu);
    em_mqtt_free(m);
}

static void test_subscribe_limits_and_invalid_filters(void **state)
{
    (void)state;
    em_mqtt_options_t o;
    opts_plain(&o, &PLAIN);
    em_mqtt_t *m = new_client(&o);
    assert_int_equal(em_mqtt_subscribe(m, "a/#/b", 0, NULL), EM_ERR_INVALID_ARGUMENT);
    assert_int_equal(em_mqtt_subscribe(m, "a/b+", 0, NULL), EM_ERR_INVALID_ARGUMENT);
    assert_int_equal(em_mqtt_subscribe(m, "", 0, NULL), EM_ERR_INVALID_ARGUMENT);
    assert_int_equal(em_mqtt_subscribe(m, NULL, 0, NULL), EM_ERR_INVALID_ARGUMENT);
    assert_int_equal(em_mqtt_subscribe(m, "a/b", 3, NULL), EM_ERR_INVALID_ARGUMENT);
    for (int i = 0; i < EM_MQTT_SUBSCRIPTIONS_MAX; i++) {
        char f[32];
        snprintf(f, sizeof(f), "t/limit/%d/+", i);
        assert_int_equal(em_mqtt_subscribe(m, f, 1, NULL), EM_OK);
    }
    /* The same filter again only changes its QoS. */
    assert_int_equal(em_mqtt_subscribe(m, "t/limit/0/+", 0, NULL), EM_OK);
    em_error_t err;
    assert_int_equal(em_mqtt_subscribe(m, "t/limit/one-too-many", 1, &err), EM_ERR_LIMIT);
    assert_int_equal(em_mqtt_unsubscribe(m, "t/limit/3/+", NULL), EM_OK);
    assert_int_equal(em_mqtt_subscribe(m, "t/limit/one-too-many", 1, NULL), EM_OK);
    em_mqtt_free(m);
}

static void test_publish_refused_by_acl_reports_permission_denied(void **state)
{
    (void)state;
    em_test_broker_t b;
    assert_int_equal(em_test_broker_init(&b, "plain"), 0);
    assert_int_equal(em_test_broker_set_acl(&b, "topic readwrite allowed/#\n"), 0);
    assert_int_equal(em_test_broker_launch(&b), 0);
    em_mqtt_options_t o;
    opts_plain(&o, &b);
    em_mqtt_t *m = new_client(&o);
    connect_ok(m);
    assert_int_equal(em_mqtt_start(m, NULL), EM_OK);
    int mid = 0;
    assert_int_equal(em_mqtt_publish(m, "forbidden/x", "no", 2, 1, false, &mid, NULL), EM_OK);
    /* MQTT 5: acknowledged with "not authorized", reported before the ack. */
    assert_true(wait_published(&R, 1, WAIT_MS));
    assert_true(R.acked[mid]);
    int e = wait_event(&R, EM_MQTT_ERROR, 0, 0);
    assert_true(e >= 0);
    assert_int_equal(R.code[e], EM_ERR_PERMISSION_DENIED);
    assert_contains(R.msg[e], "refused message");
    em_mqtt_free(m);
    em_test_broker_cleanup(&b);
}

static void test_disconnect_inside_callback_is_state_error(void **state)
{
    (void)state;
    em_mqtt_options_t o;
    opts_plain(&o, &PLAIN);
    em_mqtt_t *m = new_client(&o);
    connect_ok(m);
    assert_int_equal(em_mqtt_start(m, NULL), EM_OK);
    pthread_mutex_lock(&R.mu);
    R.try_disconnect_in_cb = true;
    pthread_mutex_unlock(&R.mu);
    roundtrip(m, "t/cbdisc/x");
    struct timespec ts;
    deadline_in(&ts, WAIT_MS);
    pthread_mutex_lock(&R.mu);
    while (R.try_disconnect_in_cb && pthread_cond_timedwait(&R.cv, &R.mu, &ts) != ETIMEDOUT) {
    }
    assert_int_equal(R.disconnect_from_cb, EM_ERR_STATE);
    pthread_mutex_unlock(&R.mu);
    assert_true(em_mqtt_is_connected(m));
    em_mqtt_free(m);
}

static void test_start_twice_and_loop_with_thread_are_state_errors(void **state)
{
    (void)state;
    em_mqtt_options_t o;
    opts_plain(&o, &PLAIN);
    em_mqtt_t *m = new_client(&o);
    assert_int_equal(em_mqtt_start(m, NULL), EM_OK);
    assert_int_equal(em_mqtt_start(m, NULL), EM_ERR_STATE);
    assert_int_equal(em_mqtt_loop(m, 10, NULL), EM_ERR_STATE);
    assert_int_equal(em_mqtt_disconnect(m, NULL), EM_OK);
    /* Stopped: the caller may drive the network again. */
    assert_int_equal(em_mqtt_loop(m, 10, NULL), EM_OK);
    em_mqtt_free(m);
}

/* ---------------------------------------------------------------------- */
/* Without a network thread                                                */

static void test_connect_without_thread_calls_no_callback(void **state)
{
    (void)state;
    em_mqtt_options_t o;
    opts_plain(&o, &PLAIN);
    em_mqtt_t *m = new_client(&o);
    connect_ok(m);
    assert_int_equal(NEVENTS(), 0);
    /* The held CONNECTED event comes with the next em_mqtt_loop. */
    assert_int_equal(em_mqtt_loop(m, 0, NULL), EM_OK);
    assert_int_equal(count_events(&R, EM_MQTT_CONNECTED), 1);
    em_mqtt_free(m);
}

static void test_loop_without_thread_delivers_messages(void **state)
{
    (void)state;
    em_mqtt_options_t o;
    opts_plain(&o, &PLAIN);
    em_mqtt_t *m = new_client(&o);
    connect_ok(m);
    assert_int_equal(em_mqtt_subscribe(m, "t/loop/#", 1, NULL), EM_OK);
    assert_int_equal(em_mqtt_publish(m, "t/loop/a", "hi", 2, 1, false, NULL, NULL), EM_OK);
    assert_true(loop_until_messages(m, &R, 1, WAIT_MS));
    assert_string_equal(R.payload[0], "hi");
    assert_int_equal(em_mqtt_disconnect(m, NULL), EM_OK);
    /* The acknowledgement and DISCONNECTED, held during disconnect. */
    assert_int_equal(em_mqtt_loop(m, 0, NULL), EM_OK);
    assert_true(NPUB() >= 1);
    assert_int_equal(count_events(&R, EM_MQTT_DISCONNECTED), 1);
    em_mqtt_free(m);
}

/* ---------------------------------------------------------------------- */
/* Connection failures                                                     */

static void test_connection_refused_is_connection_error(void **state)
{
    (void)state;
    char url[64];
    snprintf(url, sizeof(url), "mqtt://127.0.0.1:%d", em_test_free_port());
    em_mqtt_options_t o;
    em_mqtt_options_init(&o);
    o.url = url;
    o.allow_plain = true;
    em_error_t err = connect_fails(&o, EM_ERR_CONNECTION);
    assert_contains(err.message, "refused");
    assert_int_equal(NEVENTS(), 0);
}

static void test_connect_times_out_without_connack(void **state)
{
    (void)state;
    /* A listening socket that never accepts: the kernel completes the TCP
     * handshake, nobody answers CONNECT. */
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    assert_true(fd >= 0);
    struct sockaddr_in sa;
    memset(&sa, 0, sizeof(sa));
    sa.sin_family = AF_INET;
    sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    socklen_t len = sizeof(sa);
    assert_int_equal(bind(fd, (struct sockaddr *)&sa, sizeof(sa)), 0);
    assert_int_equal(listen(fd, 4), 0);
    assert_int_equal(getsockname(fd, (struct sockaddr *)&sa, &len), 0);
    char url[64];
    snprintf(url, sizeof(url), "mqtt://127.0.0.1:%d", ntohs(sa.sin_port));
    em_mqtt_options_t o;
    em_mqtt_options_init(&o);
    o.url = url;
    o.allow_plain = true;
    em_mqtt_t *m = new_client(&o);
    em_error_t err;
    assert_int_equal(em_mqtt_connect(m, 500, &err), EM_ERR_TIMEOUT);
    assert_false(em_mqtt_is_connected(m));
    em_mqtt_free(m);
    close(fd);
}

/* Fake brokers, for what a real mosquitto never does.
 * FAKE_V311 speaks only MQTT 3.1.1: it answers a version 5 CONNECT with a
 * 3.1.1 CONNACK "unacceptable protocol version" (as such brokers do) and a
 * version 4 CONNECT with success. FAKE_SILENT accepts the connection and
 * then reads everything without ever acknowledging a message.
 * Both record the protocol versions they saw. */
typedef enum fake_mode { FAKE_V311, FAKE_SILENT } fake_mode_t;

typedef struct fake_server {
    fake_mode_t mode;
    int fd;
    int port;
    int levels[4];
    int nlevels;
    pthread_t thread;
} fake_server_t;

static bool read_full(int fd, unsigned char *buf, size_t n)
{
    size_t got = 0;
    while (got < n) {
        ssize_t r = read(fd, buf + got, n - got);
        if (r <= 0)
            return false;
        got += (size_t)r;
    }
    return true;
}

static void write_all(int fd, const unsigned char *buf, size_t n)
{
    if (write(fd, buf, n) < 0) {
        /* the client went away: nothing to do */
    }
}

static void *fake_main(void *arg)
{
    fake_server_t *s = arg;
    while (s->nlevels < 4) {
        int c = accept(s->fd, NULL, NULL);
        if (c < 0)
            return NULL;
        unsigned char hdr[2], body[512];
        if (!read_full(c, hdr, 2) || hdr[0] != 0x10 || (hdr[1] & 0x80) != 0 || hdr[1] < 8 ||
            !read_full(c, body, hdr[1])) {
            close(c);
            continue;
        }
        int level = body[6]; /* after the length-prefixed "MQTT" */
        s->levels[s->nlevels++] = level;
        if (s->mode == FAKE_V311 && level != 4) {
            const unsigned char refuse[] = {0x20, 0x02, 0x00, 0x01};
            write_all(c, refuse, sizeof(refuse));
            close(c);
            continue;
        }
        const unsigned char ok4[] = {0x20, 0x02, 0x00, 0x00};
        const unsigned char ok5[] = {0x20, 0x03, 0x00, 0x00, 0x00};
        if (level == 5)
            write_all(c, ok5, sizeof(ok5));
        else
            write_all(c, ok4, sizeof(ok4));
        if (s->mode == FAKE_SILENT) {
            unsigned char sink[4096];
            while (read(c, sink, sizeof(sink)) > 0) {
            }
        } else {
            /* Serve PINGREQ until the client goes. */
            unsigned char p[2];
            while (read_full(c, p, 2) && p[0] != 0xE0) {
                if (p[0] == 0xC0) {
                    const unsigned char pong[] = {0xD0, 0x00};
                    write_all(c, pong, sizeof(pong));
                }
            }
        }
        close(c);
        return NULL;
    }
    return NULL;
}

static void fake_start(fake_server_t *s, fake_mode_t mode)
{
    memset(s, 0, sizeof(*s));
    s->mode = mode;
    s->fd = socket(AF_INET, SOCK_STREAM, 0);
    assert_true(s->fd >= 0);
    struct sockaddr_in sa;
    memset(&sa, 0, sizeof(sa));
    sa.sin_family = AF_INET;
    sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    socklen_t len = sizeof(sa);
    assert_int_equal(bind(s->fd, (struct sockaddr *)&sa, sizeof(sa)), 0);
    assert_int_equal(listen(s->fd, 4), 0);
    assert_int_equal(getsockname(s->fd, (struct sockaddr *)&sa, &len), 0);
    s->port = ntohs(sa.sin_port);
    assert_int_equal(pthread_create(&s->thread, NULL, fake_main, s), 0);
}

static void fake_stop(fake_server_t *s)
{
    shutdown(s->fd, SHUT_RDWR);
    pthread_join(s->thread, NULL);
    close(s->fd);
}

static void fake_opts(em_mqtt_options_t *o, const fake_server_t *s, char *url, size_t size)
{
    snprintf(url, size, "mqtt://127.0.0.1:%d", s->port);
    em_mqtt_options_init(o);
    o->url = url;
    o->allow_plain = true;
}

static void test_mqtt5_refused_falls_back_to_mqtt311(void **state)
{
    (void)state;
    fake_server_t s;
    fake_start(&s, FAKE_V311);
    char url[64];
    em_mqtt_options_t o;
    fake_opts(&o, &s, url, sizeof(url));
    em_mqtt_t *m = new_client(&o);
    connect_ok(m);
    assert_int_equal(em_mqtt_protocol(m), 4);
    assert_int_equal(em_mqtt_disconnect(m, NULL), EM_OK);
    em_mqtt_free(m);
    fake_stop(&s);
    assert_int_equal(s.nlevels, 2);
    assert_int_equal(s.levels[0], 5);
    assert_int_equal(s.levels[1], 4);
}

static void test_unacknowledged_publishes_are_bounded_and_reported_at_disconnect(void **state)
{
    (void)state;
    fake_server_t s;
    fake_start(&s, FAKE_SILENT);
    char url[64];
    em_mqtt_options_t o;
    fake_opts(&o, &s, url, sizeof(url));
    em_mqtt_t *m = new_client(&o);
    connect_ok(m);
    assert_int_equal(em_mqtt_start(m, NULL), EM_OK);
    for (int i = 0; i < EM_MQTT_PENDING_MAX; i++) {
        if (em_mqtt_publish(m, "t/limit", "x", 1, 1, false, NULL, NULL) != EM_OK)
            fail_msg("publish %d refused", i);
    }
    em_error_t err;
    em_error_clear(&err);
    assert_int_equal(em_mqtt_publish(m, "t/limit", "x", 1, 1, false, NULL, &err), EM_ERR_LIMIT);
    assert_int_equal(err.code, EM_ERR_LIMIT);
    /* Nothing was acknowledged: disconnect says so, and disconnects anyway. */
    em_error_clear(&err);
    assert_int_equal(em_mqtt_disconnect(m, &err), EM_ERR_TIMEOUT);
    assert_contains(err.message, "not acknowledged");
    assert_false(em_mqtt_is_connected(m));
    em_mqtt_free(m);
    fake_stop(&s);
}

/* ---------------------------------------------------------------------- */
/* TLS                                                                     */

static void test_tls_connect_with_right_ca(void **state)
{
    (void)state;
    em_mqtt_options_t o;
    opts_tls(&o, &TLS);
    em_mqtt_t *m = new_client(&o);
    connect_ok(m);
    /* The floor is TLS 1.2; a broker that has 1.3 gets 1.3. */
    assert_string_equal(em__mqtt_tls_version(m), "TLSv1.3");
    assert_int_equal(em_mqtt_start(m, NULL), EM_OK);
    roundtrip(m, "t/tls/a");
    em_mqtt_free(m);
}

static void test_tls_client_freed_without_connecting_leaks_nothing(void **state)
{
    (void)state;
    /* Under LeakSanitizer: the TLS context handed to libmosquitto is
     * released whether or not a connection was ever made. */
    em_mqtt_options_t o;
    opts_tls(&o, &MTLS);
    o.cert_file = em_test_broker_cert(&MTLS);
    o.key_file = em_test_broker_key(&MTLS);
    em_mqtt_t *m = new_client(&o);
    assert_false(em_mqtt_is_connected(m));
    assert_int_equal(em_mqtt_disconnect(m, NULL), EM_OK);
    em_mqtt_free(m);
}

static void test_tls_ip_address_url_matches_ip_san(void **state)
{
    (void)state;
    char url[64];
    snprintf(url, sizeof(url), "mqtts://127.0.0.1:%d", em_test_broker_port(&TLS));
    em_mqtt_options_t o;
    opts_tls(&o, &TLS);
    o.url = url;
    em_mqtt_t *m = new_client(&o);
    connect_ok(m);
    em_mqtt_free(m);
}

static void test_tls_wrong_ca_refused_with_tls_error(void **state)
{
    (void)state;
    char ca[EM_TEST_PATH_MAX];
    em_mqtt_options_t o;
    opts_tls(&o, &TLS);
    o.ca_file = em_test_broker_path(&TLS, "other-ca.crt", ca, sizeof(ca));
    em_error_t err = connect_fails(&o, EM_ERR_TLS);
    assert_contains(err.message, "failed verification");
    /* Without a thread, the failure is returned, not also reported. */
    assert_int_equal(NEVENTS(), 0);
}

static void test_tls_wrong_ca_reports_error_event_and_never_connects(void **state)
{
    (void)state;
    char ca[EM_TEST_PATH_MAX];
    em_mqtt_options_t o;
    opts_tls(&o, &TLS);
    o.ca_file = em_test_broker_path(&TLS, "other-ca.crt", ca, sizeof(ca));
    em_mqtt_t *m = new_client(&o);
    assert_int_equal(em_mqtt_start(m, NULL), EM_OK);
    int e = wait_event(&R, EM_MQTT_ERROR, 0, WAIT_MS);
    assert_true(e >= 0);
    assert_int_equal(R.code[e], EM_ERR_TLS);
    assert_true(wait_event(&R, EM_MQTT_RECONNECTING, e, WAIT_MS) > e);
    /* A second attempt fails the same way: no fallback to anything weaker. */
    int e2 = wait_event(&R, EM_MQTT_ERROR, e + 1, WAIT_MS);
    assert_true(e2 > e);
    assert_int_equal(R.code[e2], EM_ERR_TLS);
    assert_int_equal(count_events(&R, EM_MQTT_CONNECTED), 0);
    assert_false(em_mqtt_is_connected(m));
    assert_int_equal(em_mqtt_disconnect(m, NULL), EM_OK);
    em_mqtt_free(m);
}

static void test_tls_connect_with_thread_returns_the_failure(void **state)
{
    (void)state;
    char ca[EM_TEST_PATH_MAX];
    em_mqtt_options_t o;
    opts_tls(&o, &TLS);
    o.ca_file = em_test_broker_path(&TLS, "other-ca.crt", ca, sizeof(ca));
    em_mqtt_t *m = new_client(&o);
    assert_int_equal(em_mqtt_start(m, NULL), EM_OK);
    em_error_t err;
    em_error_clear(&err);
    assert_int_equal(em_mqtt_connect(m, WAIT_MS, &err), EM_ERR_TLS);
    assert_int_equal(err.code, EM_ERR_TLS);
    em_mqtt_free(m);
}

static void test_tls_host_name_mismatch_refused(void **state)
{
    (void)state;
    em_test_broker_t b;
    assert_int_equal(em_test_broker_start(&b, "tls"), 0);
    /* Same CA, but a certificate for another name. */
    char from[EM_TEST_PATH_MAX], to[EM_TEST_PATH_MAX];
    const char *pairs[][2] = {{"wrong-host.crt", "server.crt"}, {"wrong-host.key", "server.key"}};
    for (int i = 0; i < 2; i++) {
        em_test_broker_path(&b, pairs[i][0], from, sizeof(from));
        em_test_broker_path(&b, pairs[i][1], to, sizeof(to));
        assert_int_equal(rename(from, to), 0);
    }
    assert_int_equal(em_test_broker_restart(&b), 0);
    em_mqtt_options_t o;
    opts_tls(&o, &b);
    em_error_t err = connect_fails(&o, EM_ERR_TLS);
    assert_contains(err.message, "hostname mismatch");
    em_test_broker_cleanup(&b);
}

static void test_tls_without_ca_uses_system_store_and_refuses_unknown_ca(void **state)
{
    (void)state;
    unsetenv("SSL_CERT_FILE");
    em_mqtt_options_t o;
    opts_tls(&o, &TLS);
    o.ca_file = NULL;
    em_error_t err = connect_fails(&o, EM_ERR_TLS);
    assert_contains(err.message, "failed verification");
}

static void test_tls_system_store_honours_ssl_cert_file(void **state)
{
    (void)state;
    setenv("SSL_CERT_FILE", em_test_broker_ca(&TLS), 1);
    em_mqtt_options_t o;
    opts_tls(&o, &TLS);
    o.ca_file = NULL;
    em_mqtt_t *m = new_client(&o);
    unsetenv("SSL_CERT_FILE");
    connect_ok(m);
    em_mqtt_free(m);
}

static void test_tls_url_to_plain_listener_fails_as_tls(void **state)
{
    (void)state;
    char url[64];
    snprintf(url, sizeof(url), "mqtts://localhost:%d", em_test_broker_port(&PLAIN));
    em_mqtt_options_t o;
    opts_tls(&o, &TLS);
    o.url = url;
    connect_fails(&o, EM_ERR_TLS);
}

/* ---------------------------------------------------------------------- */
/* Mutual TLS                                                              */

static void test_mtls_without_client_cert_refused(void **state)
{
    (void)state;
    em_mqtt_options_t o;
    opts_tls(&o, &MTLS);
    em_error_t err = connect_fails(&o, EM_ERR_AUTHENTICATION);
    assert_contains(err.message, "requires a client certificate");
}

static void test_mtls_with_manager_cert_accepted(void **state)
{
    (void)state;
    em_mqtt_options_t o;
    opts_tls(&o, &MTLS);
    o.cert_file = em_test_broker_cert(&MTLS);
    o.key_file = em_test_broker_key(&MTLS);
    em_mqtt_t *m = new_client(&o);
    connect_ok(m);
    assert_int_equal(em_mqtt_start(m, NULL), EM_OK);
    roundtrip(m, "t/mtls/a");
    em_mqtt_free(m);
}

static void test_mtls_with_other_ca_client_cert_refused(void **state)
{
    (void)state;
    char cert[EM_TEST_PATH_MAX], key[EM_TEST_PATH_MAX];
    em_mqtt_options_t o;
    opts_tls(&o, &MTLS);
    o.cert_file = em_test_broker_path(&MTLS, "other-client.crt", cert, sizeof(cert));
    o.key_file = em_test_broker_path(&MTLS, "other-client.key", key, sizeof(key));
    em_error_t err = connect_fails(&o, EM_ERR_AUTHENTICATION);
    assert_contains(err.message, "refused the client certificate");
}

/* ---------------------------------------------------------------------- */
/* Username and password                                                   */

static void test_password_from_env_accepted(void **state)
{
    (void)state;
    setenv("EMIOT_TEST_PW", PW, 1);
    em_mqtt_options_t o;
    opts_tls(&o, &PASSWD);
    o.username = "manager";
    o.password_env = "EMIOT_TEST_PW";
    em_mqtt_t *m = new_client(&o);
    unsetenv("EMIOT_TEST_PW");
    connect_ok(m);
    em_mqtt_free(m);
}

static void test_password_from_file_accepted(void **state)
{
    (void)state;
    char path[EM_TEST_PATH_MAX];
    em_test_broker_path(&PASSWD, "client-password", path, sizeof(path));
    FILE *f = fopen(path, "w");
    assert_non_null(f);
    fprintf(f, "%s\r\nsecond line is ignored\n", PW);
    fclose(f);
    chmod(path, 0600);
    em_mqtt_options_t o;
    opts_tls(&o, &PASSWD);
    o.username = "manager";
    o.password_file = path;
    em_mqtt_t *m = new_client(&o);
    connect_ok(m);
    em_mqtt_free(m);
    unlink(path);
}

static void test_wrong_password_refused_with_authentication_error(void **state)
{
    (void)state;
    setenv("EMIOT_TEST_PW", "Tr0ub4dor&3-wrong", 1);
    em_mqtt_options_t o;
    opts_tls(&o, &PASSWD);
    o.username = "manager";
    o.password_env = "EMIOT_TEST_PW";
    em_error_t err = connect_fails(&o, EM_ERR_AUTHENTICATION);
    unsetenv("EMIOT_TEST_PW");
    assert_null(strstr(err.message, "Tr0ub4dor"));
    assert_contains(err.message, "refused the connection");
}

static void test_no_credentials_refused_by_password_broker(void **state)
{
    (void)state;
    em_mqtt_options_t o;
    opts_tls(&o, &PASSWD);
    connect_fails(&o, EM_ERR_AUTHENTICATION);
}

/* ---------------------------------------------------------------------- */
/* Broker crash and restart                                                */

static void test_broker_killed_and_restarted_reconnects_and_resubscribes(void **state)
{
    (void)state;
    em_test_broker_t b;
    assert_int_equal(em_test_broker_start(&b, "plain"), 0);
    em_mqtt_options_t o;
    opts_plain(&o, &b);
    o.reconnect_min_s = 1;
    o.reconnect_max_s = 2;
    em_mqtt_t *m = new_client(&o);
    connect_ok(m);
    assert_int_equal(em_mqtt_start(m, NULL), EM_OK);
    roundtrip_on(m, "t/restart/#", "t/restart/probe");
    int base = NEVENTS();

    assert_int_equal(em_test_broker_kill(&b), 0);
    int d = wait_event(&R, EM_MQTT_DISCONNECTED, base, WAIT_MS);
    assert_true(d >= base);
    assert_int_equal(R.code[d], EM_ERR_CONNECTION);
    int r = wait_event(&R, EM_MQTT_RECONNECTING, d, WAIT_MS);
    assert_true(r > d);
    assert_false(em_mqtt_is_connected(m));
    assert_int_equal(em_mqtt_publish(m, "t/restart/x", "a", 1, 1, false, NULL, NULL),
                     EM_ERR_NOT_CONNECTED);

    assert_int_equal(em_test_broker_restart(&b), 0);
    int c = wait_event(&R, EM_MQTT_CONNECTED, r, 3 * WAIT_MS);
    assert_true(c > r);
    assert_true(em_mqtt_is_connected(m));

    /* The old subscription was renewed: a message from another client
     * arrives. Publish until it does (the SUBSCRIBE may still be on its way). */
    char port[16];
    snprintf(port, sizeof(port), "%d", em_test_broker_port(&b));
    const char *argv[] = {"mosquitto_pub",   "-h", "127.0.0.1", "-p", port, "-t",
                          "t/restart/after", "-m", "back",      "-q", "1",  NULL};
    int before = NMSG();
    bool got = false;
    for (int i = 0; i < 50 && !got; i++) {
        assert_int_equal(em_test_run(argv), 0);
        got = wait_messages(&R, before + 1, 200);
    }
    assert_true(got);
    pthread_mutex_lock(&R.mu);
    assert_string_equal(R.topic[before], "t/restart/after");
    assert_string_equal(R.payload[before], "back");
    pthread_mutex_unlock(&R.mu);
    em_mqtt_free(m);
    em_test_broker_cleanup(&b);
}

/* Drives a client without a thread until event ev (at or after index from)
 * is recorded; returns its index or -1. */
static int loop_until_event(em_mqtt_t *m, em_mqtt_event_t ev, int from, int ms)
{
    struct timespec t0, t1;
    clock_gettime(CLOCK_MONOTONIC, &t0);
    for (;;) {
        int i = wait_event(&R, ev, from, 0);
        if (i >= 0)
            return i;
        clock_gettime(CLOCK_MONOTONIC, &t1);
        if ((t1.tv_sec - t0.tv_sec) * 1000 + (t1.tv_nsec - t0.tv_nsec) / 1000000 > ms)
            return -1;
        if (em_mqtt_loop(m, 50, NULL) != EM_OK)
            return -1;
    }
}

static void test_loop_without_thread_reconnects_after_broker_restart(void **state)
{
    (void)state;
    em_test_broker_t b;
    assert_int_equal(em_test_broker_start(&b, "plain"), 0);
    em_mqtt_options_t o;
    opts_plain(&o, &b);
    o.reconnect_min_s = 1;
    o.reconnect_max_s = 2;
    em_mqtt_t *m = new_client(&o);
    connect_ok(m);
    assert_int_equal(em_mqtt_subscribe(m, "t/loopback/#", 1, NULL), EM_OK);
    int c0 = loop_until_event(m, EM_MQTT_CONNECTED, 0, WAIT_MS);
    assert_true(c0 >= 0);

    assert_int_equal(em_test_broker_kill(&b), 0);
    int d = loop_until_event(m, EM_MQTT_DISCONNECTED, c0, WAIT_MS);
    assert_true(d > c0);
    int r = loop_until_event(m, EM_MQTT_RECONNECTING, d, WAIT_MS);
    assert_true(r > d);
    assert_int_equal(em_test_broker_restart(&b), 0);
    int c1 = loop_until_event(m, EM_MQTT_CONNECTED, r, 3 * WAIT_MS);
    assert_true(c1 > r);

    /* Re-subscribed: its own message comes back. */
    assert_int_equal(em_mqtt_publish(m, "t/loopback/x", "again", 5, 1, false, NULL, NULL), EM_OK);
    assert_true(loop_until_messages(m, &R, 1, WAIT_MS));
    em_mqtt_free(m);
    em_test_broker_cleanup(&b);
}

static void test_will_published_when_connection_drops(void **state)
{
    (void)state;
    em_mqtt_options_t o;
    opts_plain(&o, &PLAIN);
    em_mqtt_t *watcher = new_client(&o);
    connect_ok(watcher);
    assert_int_equal(em_mqtt_start(watcher, NULL), EM_OK);
    roundtrip(watcher, "t/will/dev-9/availability");
    int before = NMSG();

    /* A child process connects with a last will and dies without a
     * DISCONNECT: the broker publishes the will. */
    fflush(NULL);
    pid_t pid = fork();
    assert_true(pid >= 0);
    if (pid == 0) {
        em_mqtt_options_t w;
        opts_plain(&w, &PLAIN);
        w.will_topic = "t/will/dev-9/availability";
        w.will_payload = "offline";
        w.will_qos = 1;
        em_mqtt_t *dev = em_mqtt_new(&w, NULL, NULL);
        int rc = dev != NULL && em_mqtt_connect(dev, WAIT_MS, NULL) == EM_OK ? 0 : 1;
        _exit(rc);
    }
    assert_int_equal(em_test_wait(pid, WAIT_MS), 0);
    assert_true(wait_messages(&R, before + 1, WAIT_MS));
    pthread_mutex_lock(&R.mu);
    assert_string_equal(R.topic[before], "t/will/dev-9/availability");
    assert_string_equal(R.payload[before], "offline");
    pthread_mutex_unlock(&R.mu);
    em_mqtt_free(watcher);
}

/* ---------------------------------------------------------------------- */
/* The child-process helpers the manager tests use                         */

static void test_mosquitto_sub_receives_what_we_publish(void **state)
{
    (void)state;
    char out[EM_TEST_PATH_MAX], port[16];
    em_test_broker_path(&PLAIN, "sub-output.txt", out, sizeof(out));
    unlink(out);
    snprintf(port, sizeof(port), "%d", em_test_broker_port(&PLAIN));
    const char *argv[] = {"mosquitto_sub", "-h", "127.0.0.1", "-p", port, "-t",
                          "t/sub/#",       "-q", "1",         "-C", "3",  NULL};
    pid_t pid = em_test_spawn(argv, out);
    assert_true(pid > 0);

    em_mqtt_options_t o;
    opts_plain(&o, &PLAIN);
    em_mqtt_t *m = new_client(&o);
    connect_ok(m);
    assert_int_equal(em_mqtt_start(m, NULL), EM_OK);
    /* mosquitto_sub subscribes when it is ready: publish until it counts. */
    for (int i = 0; i < 100 && em_test_count_lines(out) == 0; i++) {
        assert_int_equal(em_mqtt_publish(m, "t/sub/first", "1", 1, 1, false, NULL, NULL), EM_OK);
        em_test_sleep_ms(100);
    }
    assert_int_equal(em_mqtt_publish(m, "t/sub/a", "two", 3, 1, false, NULL, NULL), EM_OK);
    assert_int_equal(em_mqtt_publish(m, "t/sub/b", "three", 5, 1, false, NULL, NULL), EM_OK);
    assert_int_equal(em_test_wait_lines(out, 3, WAIT_MS), 0);
    assert_int_equal(em_test_wait(pid, WAIT_MS), 0);
    em_mqtt_free(m);
    unlink(out);
}

static void test_mosquitto_pub_message_is_received(void **state)
{
    (void)state;
    em_mqtt_options_t o;
    opts_plain(&o, &PLAIN);
    em_mqtt_t *m = new_client(&o);
    connect_ok(m);
    assert_int_equal(em_mqtt_start(m, NULL), EM_OK);
    roundtrip_on(m, "t/pub/#", "t/pub/probe");
    char port[16];
    snprintf(port, sizeof(port), "%d", em_test_broker_port(&PLAIN));
    const char *argv[] = {
        "mosquitto_pub",         "-h", "127.0.0.1", "-p", port, "-t", "t/pub/dev-1/status", "-m",
        "{\"batteryLevel\":80}", "-q", "1",         NULL};
    int before = NMSG();
    assert_int_equal(em_test_run(argv), 0);
    assert_true(wait_messages(&R, before + 1, WAIT_MS));
    assert_string_equal(R.payload[before], "{\"batteryLevel\":80}");
    em_mqtt_free(m);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup(test_plain_refused_without_allow_plain, test_setup),
        cmocka_unit_test_setup(test_plain_refused_for_non_loopback_host, test_setup),
        cmocka_unit_test_setup(test_tls_files_with_plain_url_refused, test_setup),
        cmocka_unit_test_setup(test_unreadable_ca_file_is_configuration_error, test_setup),
        cmocka_unit_test_setup(test_cert_without_key_is_configuration_error, test_setup),
        cmocka_unit_test_setup(test_key_not_matching_cert_is_configuration_error, test_setup),
        cmocka_unit_test_setup(test_missing_password_variable_is_configuration_error, test_setup),
        cmocka_unit_test_setup(test_missing_password_file_is_configuration_error, test_setup),
        cmocka_unit_test_setup(test_too_long_password_file_refused_without_echoing_it, test_setup),
        cmocka_unit_test_setup(test_password_without_username_is_configuration_error, test_setup),
        cmocka_unit_test_setup(test_persistent_session_needs_client_id, test_setup),
        cmocka_unit_test_setup(test_bad_numbers_are_configuration_errors, test_setup),
        cmocka_unit_test_setup(test_random_client_ids_differ, test_setup),
        cmocka_unit_test_setup(test_client_id_prefix_and_fixed_id, test_setup),
        cmocka_unit_test_setup(test_plain_connect_subscribe_publish_receive, test_setup),
        cmocka_unit_test_setup(test_connected_event_has_no_error_and_disconnected_says_why,
                               test_setup),
        cmocka_unit_test_setup(test_works_with_descriptors_above_fd_setsize, test_setup),
        cmocka_unit_test_setup(test_idle_connection_kept_alive_by_pings, test_setup),
        cmocka_unit_test_setup(test_publish_when_not_connected_is_refused, test_setup),
        cmocka_unit_test_setup(test_publish_argument_errors, test_setup),
        cmocka_unit_test_setup(test_qos1_publishes_acknowledged_via_on_published, test_setup),
        cmocka_unit_test_setup(test_disconnect_flushes_pending_qos1, test_setup),
        cmocka_unit_test_setup(test_subscription_recorded_while_disconnected_is_sent_on_connect,
                               test_setup),
        cmocka_unit_test_setup(test_unsubscribe_stops_delivery, test_setup),
        cmocka_unit_test_setup(test_subscribe_limits_and_invalid_filters, test_setup),
        cmocka_unit_test_setup(test_publish_refused_by_acl_reports_permission_denied, test_setup),
        cmocka_unit_test_setup(test_disconnect_inside_callback_is_state_error, test_setup),
        cmocka_unit_test_setup(test_start_twice_and_loop_with_thread_are_state_errors, test_setup),
        cmocka_unit_test_setup(test_connect_without_thread_calls_no_callback, test_setup),
        cmocka_unit_test_setup(test_loop_without_thread_delivers_messages, test_setup),
        cmocka_unit_test_setup(test_connection_refused_is_connection_error, test_setup),
        cmocka_unit_test_setup(test_connect_times_out_without_connack, test_setup),
        cmocka_unit_test_setup(test_mqtt5_refused_falls_back_to_mqtt311, test_setup),
        cmocka_unit_test_setup(test_unacknowledged_publishes_are_bounded_and_reported_at_disconnect,
                               test_setup),
        cmocka_unit_test_setup(test_tls_connect_with_right_ca, test_setup),
        cmocka_unit_test_setup(test_tls_client_freed_without_connecting_leaks_nothing, test_setup),
        cmocka_unit_test_setup(test_tls_ip_address_url_matches_ip_san, test_setup),
        cmocka_unit_test_setup(test_tls_wrong_ca_refused_with_tls_error, test_setup),
        cmocka_unit_test_setup(test_tls_wrong_ca_reports_error_event_and_never_connects,
                               test_setup),
        cmocka_unit_test_setup(test_tls_connect_with_thread_returns_the_failure, test_setup),
        cmocka_unit_test_setup(test_tls_host_name_mismatch_refused, test_setup),
        cmocka_unit_test_setup(test_tls_without_ca_uses_system_store_and_refuses_unknown_ca,
                               test_setup),
        cmocka_unit_test_setup(test_tls_system_store_honours_ssl_cert_file, test_setup),
        cmocka_unit_test_setup(test_tls_url_to_plain_listener_fails_as_tls, test_setup),
        cmocka_unit_test_setup(test_mtls_without_client_cert_refused, test_setup),
        cmocka_unit_test_setup(test_mtls_with_manager_cert_accepted, test_setup),
        cmocka_unit_test_setup(test_mtls_with_other_ca_client_cert_refused, test_setup),
        cmocka_unit_test_setup(test_password_from_env_accepted, test_setup),
        cmocka_unit_test_setup(test_password_from_file_accepted, test_setup),
        cmocka_unit_test_setup(test_wrong_password_refused_with_authentication_error, test_setup),
        cmocka_unit_test_setup(test_no_credentials_refused_by_password_broker, test_setup),
        cmocka_unit_test_setup(test_broker_killed_and_restarted_reconnects_and_resubscribes,
                               test_setup),
        cmocka_unit_test_setup(test_loop_without_thread_reconnects_after_broker_restart,
                               test_setup),
        cmocka_unit_test_setup(test_will_published_when_connection_drops, test_setup),
        cmocka_unit_test_setup(test_mosquitto_sub_receives_what_we_publish, test_setup),
        cmocka_unit_test_setup(test_mosquitto_pub_message_is_received, test_setup),
    };
    return cmocka_run_group_tests(tests, group_setup, group_teardown);
}
