/*
 * emiot tests - streams of messages through the MQTT transport against a real
 * mosquitto, plain and TLS: what the driver's receive path does under load
 * (bursts of packets per wake-up, a receive low-water mark while the stream
 * is busy, TLS read-ahead whose records poll() cannot see, PUBACKs and
 * publishes coalesced into one TLS write) must deliver every message once, in
 * order, and keep the protocol's clean endings (a DISCONNECT that leaves
 * through the write buffer: no last will).
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "broker.h"
#include "emiot/mqtt.h"
#include "testutil.h"

#define WAIT_MS     20000
#define STREAM_MSGS 20000

/* What a subscriber saw: messages in order by their sequence number. */
typedef struct seen {
    pthread_mutex_t mu;
    pthread_cond_t cv;
    long count; /* stream messages received */
    long next;  /* sequence number expected next */
    long out_of_order;
    long others; /* messages on other topics */
    char last_other[128];
    long published; /* QoS 1 publishes acknowledged (publisher side) */
} seen_t;

static seen_t S;

static void seen_reset(seen_t *s)
{
    pthread_mutex_lock(&s->mu);
    s->count = 0;
    s->next = 0;
    s->out_of_order = 0;
    s->others = 0;
    s->last_other[0] = '\0';
    s->published = 0;
    pthread_mutex_unlock(&s->mu);
}

static void cb_message(void *ud, const char *topic, const void *payload, size_t len, int qos,
                       bool retain)
{
    seen_t *s = ud;
    (void)qos;
    (void)retain;
    pthread_mutex_lock(&s->mu);
    if (strncmp(topic, "t/stream/", 9) == 0) {
        char buf[32];
        size_t n = len < sizeof(buf) - 1 ? len : sizeof(buf) - 1;
        memcpy(buf, payload, n);
        buf[n] = '\0';
        long seq = strtol(buf, NULL, 10);
        if (seq != s->next)
            s->out_of_order++;
        s->next = seq + 1;
        s->count++;
    } else {
        s->others++;
        snprintf(s->last_other, sizeof(s->last_other), "%s=%.*s", topic, (int)len,
                 (const char *)payload);
    }
    pthread_cond_broadcast(&s->cv);
    pthread_mutex_unlock(&s->mu);
}

static void cb_event(void *ud, em_mqtt_event_t ev, const em_error_t *err)
{
    (void)ud;
    (void)ev;
    (void)err;
}

static void cb_published(void *ud, int mid)
{
    seen_t *s = ud;
    (void)mid;
    pthread_mutex_lock(&s->mu);
    s->published++;
    pthread_cond_broadcast(&s->cv);
    pthread_mutex_unlock(&s->mu);
}

static const em_mqtt_callbacks_t CBS = {cb_message, cb_event, cb_published, &S};

/* Waits until *field >= n (at most ms); returns whether it got there. */
static bool wait_for(long *field, long n, int ms)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    ts.tv_sec += ms / 1000;
    ts.tv_nsec += (long)(ms % 1000) * 1000000L;
    if (ts.tv_nsec >= 1000000000L) {
        ts.tv_sec++;
        ts.tv_nsec -= 1000000000L;
    }
    pthread_mutex_lock(&S.mu);
    while (*field < n && pthread_cond_timedwait(&S.cv, &S.mu, &ts) == 0) {
    }
    bool ok = *field >= n;
    pthread_mutex_unlock(&S.mu);
    return ok;
}

static long get(const long *field)
{
    pthread_mutex_lock(&S.mu);
    long v = *field;
    pthread_mutex_unlock(&S.mu);
    return v;
}

static em_test_broker_t PLAIN, TLS;

static int group_setup(void **state)
{
    (void)state;
    em_mqtt_lib_init();
    pthread_mutex_init(&S.mu, NULL);
    pthread_cond_init(&S.cv, NULL);
    return em_test_broker_start(&PLAIN, "plain") == 0 && em_test_broker_start(&TLS, "tls") == 0
               ? 0
               : -1;
}

static int group_teardown(void **state)
{
    (void)state;
    em_test_broker_cleanup(&PLAIN);
    em_test_broker_cleanup(&TLS);
    return 0;
}

static int test_setup(void **state)
{
    (void)state;
    seen_reset(&S);
    return 0;
}

static void opts_for(em_mqtt_options_t *o, em_test_broker_t *b)
{
    em_mqtt_options_init(o);
    o->url = em_test_broker_url(b);
    if (strcmp(b->mode, "plain") == 0)
        o->allow_plain = true;
    else
        o->ca_file = em_test_broker_ca(b);
}

static em_mqtt_t *started_client(em_test_broker_t *b, const em_mqtt_callbacks_t *cbs)
{
    em_mqtt_options_t o;
    opts_for(&o, b);
    em_error_t err;
    em_error_clear(&err);
    em_mqtt_t *m = em_mqtt_new(&o, cbs, &err);
    if (m == NULL)
        fail_msg("em_mqtt_new: %s", err.message);
    if (em_mqtt_connect(m, WAIT_MS, &err) != EM_OK)
        fail_msg("em_mqtt_connect: %s", err.message);
    assert_int_equal(em_mqtt_start(m, NULL), EM_OK);
    return m;
}

/* A subscriber at QoS 1 that is ready: a probe on another topic went through. */
static em_mqtt_t *ready_subscriber(em_test_broker_t *b)
{
    em_mqtt_t *sub = started_client(b, &CBS);
    assert_int_equal(em_mqtt_subscribe(sub, "t/#", 1, NULL), EM_OK);
    for (int i = 0; i < 100 && get(&S.others) == 0; i++) {
        assert_int_equal(em_mqtt_publish(sub, "t/probe", "p", 1, 1, false, NULL, NULL), EM_OK);
        em_test_sleep_ms(50);
    }
    assert_true(get(&S.others) > 0);
    return sub;
}

/* Publishes STREAM_MSGS numbered QoS 1 messages as fast as the window lets
 * the publisher, and checks that the subscriber got each once, in order; then
 * that one more message after the stream (the busy receive path has to
 * notice the stream thinning out) still arrives. */
static void stream_all_received_in_order(em_test_broker_t *b)
{
    em_mqtt_t *sub = ready_subscriber(b);
    /* The publisher's own callbacks count acknowledgements. */
    em_mqtt_t *pub = started_client(b, &CBS);
    long pub_before = get(&S.published);
    for (long i = 0; i < STREAM_MSGS; i++) {
        char payload[64];
        int n = snprintf(payload, sizeof(payload), "%ld {\"batteryLevel\":%ld}", i, i % 101);
        em_err_t rc;
        /* EM_ERR_LIMIT: EM_MQTT_PENDING_MAX await the broker; wait for acks. */
        while ((rc = em_mqtt_publish(pub, "t/stream/dev-1/status", payload, (size_t)n, 1, false,
                                     NULL, NULL)) == EM_ERR_LIMIT)
            em_test_sleep_ms(1);
        assert_int_equal(rc, EM_OK);
    }
    assert_true(wait_for(&S.count, STREAM_MSGS, WAIT_MS));
    assert_true(wait_for(&S.published, pub_before + STREAM_MSGS, WAIT_MS));
    assert_int_equal(get(&S.count), STREAM_MSGS);
    assert_int_equal(get(&S.out_of_order), 0);

    long others = get(&S.others);
    assert_int_equal(em_mqtt_publish(pub, "t/after", "after", 5, 1, false, NULL, NULL), EM_OK);
    assert_true(wait_for(&S.others, others + 1, WAIT_MS));
    pthread_mutex_lock(&S.mu);
    assert_string_equal(S.last_other, "t/after=after");
    pthread_mutex_unlock(&S.mu);
    em_mqtt_free(pub);
    em_mqtt_free(sub);
}

static void test_plain_stream_of_qos1_messages_all_received_in_order(void **state)
{
    (void)state;
    stream_all_received_in_order(&PLAIN);
}

static void test_tls_stream_of_qos1_messages_all_received_in_order(void **state)
{
    (void)state;
    stream_all_received_in_order(&TLS);
}

/* A client with a last will disconnects cleanly over TLS: its DISCONNECT
 * goes out through the TLS write buffer before the socket closes, so the
 * broker drops the will. The watcher sees the marker published after the
 * disconnect and no will before it. */
static void test_tls_clean_disconnect_reaches_broker_so_no_will(void **state)
{
    (void)state;
    em_mqtt_t *watcher = ready_subscriber(&TLS);
    long others = get(&S.others);

    em_mqtt_options_t w;
    opts_for(&w, &TLS);
    w.will_topic = "t/will/dev-7/availability";
    w.will_payload = "offline";
    w.will_qos = 1;
    em_mqtt_t *dev = em_mqtt_new(&w, NULL, NULL);
    assert_non_null(dev);
    assert_int_equal(em_mqtt_connect(dev, WAIT_MS, NULL), EM_OK);
    assert_int_equal(em_mqtt_start(dev, NULL), EM_OK);
    /* Traffic first, so that the write buffer has been in use. */
    for (int i = 0; i < 50; i++)
        assert_int_equal(em_mqtt_publish(dev, "t/dev-7/x", "x", 1, 1, false, NULL, NULL), EM_OK);
    assert_true(wait_for(&S.others, others + 50, WAIT_MS));
    assert_int_equal(em_mqtt_disconnect(dev, NULL), EM_OK);
    em_mqtt_free(dev);

    /* The broker has handled the disconnect by the time it forwards a
     * message published afterwards on another connection... */
    em_test_sleep_ms(200);
    assert_int_equal(em_mqtt_publish(watcher, "t/marker", "m", 1, 1, false, NULL, NULL), EM_OK);
    assert_true(wait_for(&S.others, others + 51, WAIT_MS));
    /* ...and what came last is the marker, not the will. */
    em_test_sleep_ms(200);
    pthread_mutex_lock(&S.mu);
    assert_string_equal(S.last_other, "t/marker=m");
    assert_int_equal(S.others, others + 51);
    pthread_mutex_unlock(&S.mu);
    em_mqtt_free(watcher);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup(test_plain_stream_of_qos1_messages_all_received_in_order,
                               test_setup),
        cmocka_unit_test_setup(test_tls_stream_of_qos1_messages_all_received_in_order, test_setup),
        cmocka_unit_test_setup(test_tls_clean_disconnect_reaches_broker_so_no_will, test_setup),
    };
    return cmocka_run_group_tests(tests, group_setup, group_teardown);
}
