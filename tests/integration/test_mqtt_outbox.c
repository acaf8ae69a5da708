/*
 * emiot tests - the MQTT transport's outbox (src/mqtt/outbox.c): QoS 1/2
 * publishes beyond the in-flight window wait in the client, in order, and go
 * out as acknowledgements make room; ids are the client's own; the broker's
 * CONNACK limits are enforced before a message is queued.
 *
 * Most tests talk to a fake broker on loopback that records every PUBLISH and
 * acknowledges only as many as the test allows, so that the window can be
 * seen on the wire. One test uses a real mosquitto (tests/support/broker.h).
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <poll.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include "broker.h"
#include "emiot/mqtt.h"
#include "testutil.h"

#define WAIT_MS  10000
#define MAX_PUBS 1024

/* ---------------------------------------------------------------------- */
/* What the client reported                                                */

typedef struct rec {
    pthread_mutex_t mu;
    pthread_cond_t cv;
    int npub;                   /* on_published calls */
    unsigned char acked[65536]; /* on_published calls per id */
    int nerrors;                /* EM_MQTT_ERROR events */
    int nconnected;             /* EM_MQTT_CONNECTED events */
} rec_t;

static rec_t R = {.mu = PTHREAD_MUTEX_INITIALIZER, .cv = PTHREAD_COND_INITIALIZER};

static void rec_reset(void)
{
    pthread_mutex_lock(&R.mu);
    R.npub = 0;
    memset(R.acked, 0, sizeof(R.acked));
    R.nerrors = 0;
    R.nconnected = 0;
    pthread_mutex_unlock(&R.mu);
}

static void cb_event(void *ud, em_mqtt_event_t ev, const em_error_t *err)
{
    (void)ud;
    (void)err;
    pthread_mutex_lock(&R.mu);
    R.nerrors += ev == EM_MQTT_ERROR;
    R.nconnected += ev == EM_MQTT_CONNECTED;
    pthread_cond_broadcast(&R.cv);
    pthread_mutex_unlock(&R.mu);
}

static void cb_published(void *ud, int mid)
{
    (void)ud;
    pthread_mutex_lock(&R.mu);
    R.npub++;
    if (mid > 0 && mid < 65536)
        R.acked[mid]++;
    pthread_cond_broadcast(&R.cv);
    pthread_mutex_unlock(&R.mu);
}

static const em_mqtt_callbacks_t CBS = {NULL, cb_event, cb_published, NULL};

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

/* Waits until *counter (under R.mu) reaches n. */
static bool wait_rec(const int *counter, int n, int ms)
{
    struct timespec ts;
    deadline_in(&ts, ms);
    pthread_mutex_lock(&R.mu);
    while (*counter < n && pthread_cond_timedwait(&R.cv, &R.mu, &ts) != ETIMEDOUT) {
    }
    bool ok = *counter >= n;
    pthread_mutex_unlock(&R.mu);
    return ok;
}

/* ---------------------------------------------------------------------- */
/* A fake broker that acknowledges on demand                               */

typedef struct fake_pub {
    int qos;
    int mid;
    char payload[64];
} fake_pub_t;

typedef struct fake {
    int lfd;
    int port;
    pthread_t thread;
    pthread_mutex_t mu;
    pthread_cond_t cv;
    bool stop;
    /* CONNACK properties: 0 leaves them out. */
    uint32_t max_packet;
    int max_qos; /* -1: left out */
    uint16_t receive_max;
    /* Acknowledgements: allowed (how many more may be sent), or all. */
    bool ack_all;
    int ack_allowance;
    /* Close the connection once this many PUBLISH arrived on it (0: never). */
    int drop_after;
    int connections;
    int npubs;
    fake_pub_t pubs[MAX_PUBS];
} fake_t;

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

static bool write_full(int fd, const unsigned char *buf, size_t n)
{
    while (n > 0) {
        ssize_t w = write(fd, buf, n);
        if (w <= 0)
            return false;
        buf += w;
        n -= (size_t)w;
    }
    return true;
}

/* Reads one packet: *type is the first byte, body[0..*len) the rest. */
static bool read_packet(int fd, unsigned char *type, unsigned char *body, size_t size, size_t *len)
{
    unsigned char b;
    if (!read_full(fd, type, 1))
        return false;
    size_t rl = 0, mult = 1;
    for (int i = 0; i < 4; i++) {
        if (!read_full(fd, &b, 1))
            return false;
        rl += (size_t)(b & 127) * mult;
        mult *= 128;
        if ((b & 128) == 0)
            break;
    }
    if (rl > size)
        return false;
    *len = rl;
    return read_full(fd, body, rl);
}

static void send_connack(fake_t *f, int fd, int level)
{
    unsigned char p[32];
    size_t n = 0;
    p[n++] = 0x20;
    p[n++] = 0; /* remaining length, below */
    p[n++] = 0; /* no session present */
    p[n++] = 0; /* success */
    if (level == 5) {
        size_t at = n++;
        if (f->max_packet > 0) {
            p[n++] = 0x27;
            p[n++] = (unsigned char)(f->max_packet >> 24);
            p[n++] = (unsigned char)(f->max_packet >> 16);
            p[n++] = (unsigned char)(f->max_packet >> 8);
            p[n++] = (unsigned char)f->max_packet;
        }
        if (f->receive_max > 0) {
            p[n++] = 0x21;
            p[n++] = (unsigned char)(f->receive_max >> 8);
            p[n++] = (unsigned char)f->receive_max;
        }
        if (f->max_qos >= 0) {
            p[n++] = 0x24;
            p[n++] = (unsigned char)f->max_qos;
        }
        p[at] = (unsigned char)(n - at - 1);
    }
    p[1] = (unsigned char)(n - 2);
    write_full(fd, p, n);
}

/* Records a PUBLISH; returns its message id (0 for QoS 0). */
static int record_publish(fake_t *f, unsigned char type, const unsigned char *b, size_t len,
                          int level)
{
    int qos = (type >> 1) & 3;
    if (len < 2)
        return 0;
    size_t tlen = (size_t)b[0] << 8 | b[1];
    size_t at = 2 + tlen;
    int mid = 0;
    if (qos > 0 && at + 2 <= len) {
        mid = b[at] << 8 | b[at + 1];
        at += 2;
    }
    if (level == 5 && at < len)
        at += 1 + b[at]; /* properties (short in these tests) */
    pthread_mutex_lock(&f->mu);
    if (f->npubs < MAX_PUBS && at <= len) {
        fake_pub_t *p = &f->pubs[f->npubs++];
        p->qos = qos;
        p->mid = mid;
        snprintf(p->payload, sizeof(p->payload), "%.*s", (int)(len - at), (const char *)b + at);
    }
    pthread_cond_broadcast(&f->cv);
    pthread_mutex_unlock(&f->mu);
    return mid;
}

/* Serves one client until it goes, the test stops the fake, or drop_after. */
static void serve(fake_t *f, int fd)
{
    unsigned char type, body[4096];
    size_t len;
    if (!read_packet(fd, &type, body, sizeof(body), &len) || type != 0x10 || len < 7)
        return;
    int level = body[6];
    send_connack(f, fd, level);
    int unacked[MAX_PUBS], nunacked = 0, seen = 0;
    for (;;) {
        struct pollfd p = {fd, POLLIN, 0};
        int n = poll(&p, 1, 20);
        pthread_mutex_lock(&f->mu);
        bool stop = f->stop;
        pthread_mutex_unlock(&f->mu);
        if (stop || n < 0)
            return;
        if (n > 0) {
            if (!read_packet(fd, &type, body, sizeof(body), &len))
                return;
            if ((type & 0xf0) == 0x30) {
                int mid = record_publish(f, type, body, len, level);
                if (mid > 0 && nunacked < MAX_PUBS)
                    unacked[nunacked++] = mid;
                pthread_mutex_lock(&f->mu);
                int drop_after = f->drop_after;
                pthread_mutex_unlock(&f->mu);
                if (drop_after > 0 && ++seen >= drop_after)
                    return;
            } else if (type == 0xC0) {
                const unsigned char pong[] = {0xD0, 0x00};
                write_full(fd, pong, sizeof(pong));
            } else if ((type & 0xf0) == 0xE0) {
                return;
            }
        }
        /* Acknowledge, in order, what the test allows. */
        int k = 0;
        pthread_mutex_lock(&f->mu);
        while (k < nunacked && (f->ack_all || f->ack_allowance > 0)) {
            unsigned char ack[] = {0x40, 0x02, (unsigned char)(unacked[k] >> 8),
                                   (unsigned char)unacked[k]};
            write_full(fd, ack, sizeof(ack));
            if (!f->ack_all)
                f->ack_allowance--;
            k++;
        }
        pthread_mutex_unlock(&f->mu);
        memmove(unacked, unacked + k, (size_t)(nunacked - k) * sizeof(unacked[0]));
        nunacked -= k;
    }
}

static void *fake_main(void *arg)
{
    fake_t *f = arg;
    for (;;) {
        int c = accept(f->lfd, NULL, NULL);
        if (c < 0)
            return NULL;
        pthread_mutex_lock(&f->mu);
        f->connections++;
        pthread_cond_broadcast(&f->cv);
        pthread_mutex_unlock(&f->mu);
        serve(f, c);
        close(c);
        pthread_mutex_lock(&f->mu);
        bool stop = f->stop;
        pthread_mutex_unlock(&f->mu);
        if (stop)
            return NULL;
    }
}

static void fake_start(fake_t *f)
{
    f->lfd = socket(AF_INET, SOCK_STREAM, 0);
    assert_true(f->lfd >= 0);
    struct sockaddr_in sa;
    memset(&sa, 0, sizeof(sa));
    sa.sin_family = AF_INET;
    sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    socklen_t len = sizeof(sa);
    assert_int_equal(bind(f->lfd, (struct sockaddr *)&sa, sizeof(sa)), 0);
    assert_int_equal(listen(f->lfd, 4), 0);
    assert_int_equal(getsockname(f->lfd, (struct sockaddr *)&sa, &len), 0);
    f->port = ntohs(sa.sin_port);
    pthread_mutex_init(&f->mu, NULL);
    pthread_cond_init(&f->cv, NULL);
    assert_int_equal(pthread_create(&f->thread, NULL, fake_main, f), 0);
}

static fake_t *fake_new(void)
{
    fake_t *f = calloc(1, sizeof(*f));
    assert_non_null(f);
    f->max_qos = -1;
    return f;
}

static void fake_free(fake_t *f)
{
    pthread_mutex_lock(&f->mu);
    f->stop = true;
    pthread_mutex_unlock(&f->mu);
    shutdown(f->lfd, SHUT_RDWR);
    pthread_join(f->thread, NULL);
    close(f->lfd);
    pthread_cond_destroy(&f->cv);
    pthread_mutex_destroy(&f->mu);
    free(f);
}

static void fake_allow(fake_t *f, int acks, bool all)
{
    pthread_mutex_lock(&f->mu);
    f->ack_allowance += acks;
    f->ack_all = all;
    pthread_mutex_unlock(&f->mu);
}

static bool fake_wait_pubs(fake_t *f, int n, int ms)
{
    struct timespec ts;
    deadline_in(&ts, ms);
    pthread_mutex_lock(&f->mu);
    while (f->npubs < n && pthread_cond_timedwait(&f->cv, &f->mu, &ts) != ETIMEDOUT) {
    }
    bool ok = f->npubs >= n;
    pthread_mutex_unlock(&f->mu);
    return ok;
}

static int fake_npubs(fake_t *f)
{
    pthread_mutex_lock(&f->mu);
    int n = f->npubs;
    pthread_mutex_unlock(&f->mu);
    return n;
}

/* A started client of the fake, with the given window. */
static em_mqtt_t *client_of(fake_t *f, unsigned window, char *url, size_t size)
{
    snprintf(url, size, "mqtt://127.0.0.1:%d", f->port);
    em_mqtt_options_t o;
    em_mqtt_options_init(&o);
    o.url = url;
    o.allow_plain = true;
    o.max_inflight = window;
    em_error_t err;
    em_mqtt_t *m = em_mqtt_new(&o, &CBS, &err);
    assert_non_null(m);
    assert_int_equal(em_mqtt_connect(m, WAIT_MS, &err), EM_OK);
    assert_int_equal(em_mqtt_start(m, &err), EM_OK);
    return m;
}

static int publish_n(em_mqtt_t *m, int qos, int first, int n, int *ids)
{
    for (int i = 0; i < n; i++) {
        char body[32];
        int len = snprintf(body, sizeof(body), "m%d", first + i);
        int id = 0;
        em_err_t rc = em_mqtt_publish(m, "t/outbox", body, (size_t)len, qos, false, &id, NULL);
        if (rc != EM_OK)
            return -1;
        if (ids != NULL)
            ids[i] = id;
    }
    return 0;
}

/* ---------------------------------------------------------------------- */
/* Tests                                                                   */

static int test_setup(void **state)
{
    (void)state;
    em_mqtt_lib_init();
    rec_reset();
    return 0;
}

static void test_window_bounds_unacknowledged_publishes(void **state)
{
    (void)state;
    fake_t *f = fake_new();
    fake_start(f);
    char url[64];
    em_mqtt_t *m = client_of(f, 8, url, sizeof(url));
    assert_int_equal(publish_n(m, 1, 0, 50, NULL), 0);
    assert_true(fake_wait_pubs(f, 8, WAIT_MS));
    /* Nothing acknowledged: nothing beyond the window may follow. */
    em_test_sleep_ms(300);
    assert_int_equal(fake_npubs(f), 8);
    /* Each acknowledgement lets one more go. */
    fake_allow(f, 3, false);
    assert_true(fake_wait_pubs(f, 11, WAIT_MS));
    em_test_sleep_ms(300);
    assert_int_equal(fake_npubs(f), 11);
    fake_allow(f, 0, true);
    assert_true(wait_rec(&R.npub, 50, WAIT_MS));
    assert_int_equal(fake_npubs(f), 50);
    em_mqtt_free(m);
    fake_free(f);
}

static void test_broker_receive_maximum_bounds_the_window(void **state)
{
    (void)state;
    fake_t *f = fake_new();
    f->receive_max = 3;
    fake_start(f);
    char url[64];
    em_mqtt_t *m = client_of(f, 8, url, sizeof(url));
    assert_int_equal(publish_n(m, 1, 0, 20, NULL), 0);
    assert_true(fake_wait_pubs(f, 3, WAIT_MS));
    em_test_sleep_ms(300);
    assert_int_equal(fake_npubs(f), 3);
    fake_allow(f, 0, true);
    assert_true(wait_rec(&R.npub, 20, WAIT_MS));
    assert_int_equal(fake_npubs(f), 20);
    em_mqtt_free(m);
    fake_free(f);
}

static void test_queued_publishes_go_out_in_order(void **state)
{
    (void)state;
    fake_t *f = fake_new();
    f->ack_all = true;
    fake_start(f);
    char url[64];
    em_mqtt_t *m = client_of(f, 4, url, sizeof(url));
    enum { N = 300 };
    assert_int_equal(publish_n(m, 1, 0, N, NULL), 0);
    assert_true(wait_rec(&R.npub, N, WAIT_MS));
    pthread_mutex_lock(&f->mu);
    assert_int_equal(f->npubs, N);
    for (int i = 0; i < N; i++) {
        char want[32];
        snprintf(want, sizeof(want), "m%d", i);
        assert_string_equal(f->pubs[i].payload, want);
        assert_int_equal(f->pubs[i].qos, 1);
    }
    pthread_mutex_unlock(&f->mu);
    em_mqtt_free(m);
    fake_free(f);
}

static void test_each_id_is_acknowledged_exactly_once(void **state)
{
    (void)state;
    fake_t *f = fake_new();
    f->ack_all = true;
    fake_start(f);
    char url[64];
    em_mqtt_t *m = client_of(f, 16, url, sizeof(url));
    enum { N = 500 };
    static int ids[N];
    assert_int_equal(publish_n(m, 1, 0, N, ids), 0);
    assert_true(wait_rec(&R.npub, N, WAIT_MS));
    em_test_sleep_ms(100);
    pthread_mutex_lock(&R.mu);
    assert_int_equal(R.npub, N);
    for (int i = 0; i < N; i++) {
        assert_true(ids[i] > 0 && ids[i] < 65536);
        assert_int_equal(R.acked[ids[i]], 1);
        for (int j = 0; j < i; j++)
            assert_int_not_equal(ids[i], ids[j]);
    }
    pthread_mutex_unlock(&R.mu);
    em_mqtt_free(m);
    fake_free(f);
}

static void test_qos0_is_reported_written_while_the_window_is_full(void **state)
{
    (void)state;
    fake_t *f = fake_new();
    fake_start(f);
    char url[64];
    em_mqtt_t *m = client_of(f, 2, url, sizeof(url));
    int q1[10], q0[5];
    assert_int_equal(publish_n(m, 1, 0, 10, q1), 0);
    assert_int_equal(publish_n(m, 0, 100, 5, q0), 0);
    /* QoS 0 does not wait for the window: all five are written and
     * reported, while eight QoS 1 messages still wait in the client. */
    assert_true(wait_rec(&R.npub, 5, WAIT_MS));
    assert_true(fake_wait_pubs(f, 7, WAIT_MS));
    pthread_mutex_lock(&R.mu);
    for (int i = 0; i < 5; i++)
        assert_int_equal(R.acked[q0[i]], 1);
    for (int i = 0; i < 10; i++)
        assert_int_equal(R.acked[q1[i]], 0);
    pthread_mutex_unlock(&R.mu);
    fake_allow(f, 0, true);
    assert_true(wait_rec(&R.npub, 15, WAIT_MS));
    pthread_mutex_lock(&R.mu);
    for (int i = 0; i < 10; i++)
        assert_int_equal(R.acked[q1[i]], 1);
    pthread_mutex_unlock(&R.mu);
    em_mqtt_free(m);
    fake_free(f);
}

static void test_queued_publishes_are_sent_after_a_reconnection(void **state)
{
    (void)state;
    fake_t *f = fake_new();
    f->drop_after = 4; /* the first connection dies with 4 unacknowledged */
    fake_start(f);
    char url[64];
    em_mqtt_t *m = client_of(f, 4, url, sizeof(url));
    enum { N = 40 };
    int ids[N];
    assert_int_equal(publish_n(m, 1, 0, N, ids), 0);
    assert_true(wait_rec(&R.nconnected, 2, WAIT_MS));
    pthread_mutex_lock(&f->mu);
    f->drop_after = 0;
    pthread_mutex_unlock(&f->mu);
    fake_allow(f, 0, true);
    assert_true(wait_rec(&R.npub, N, 3 * WAIT_MS));
    /* Every message reached the broker (the four in flight twice, as
     * duplicates), and every id was acknowledged once. */
    pthread_mutex_lock(&f->mu);
    static bool seen[N];
    for (int i = 0; i < f->npubs; i++) {
        int k = atoi(f->pubs[i].payload + 1);
        assert_true(k >= 0 && k < N);
        seen[k] = true;
    }
    pthread_mutex_unlock(&f->mu);
    pthread_mutex_lock(&R.mu);
    for (int i = 0; i < N; i++) {
        assert_true(seen[i]);
        assert_int_equal(R.acked[ids[i]], 1);
    }
    pthread_mutex_unlock(&R.mu);
    em_mqtt_free(m);
    fake_free(f);
}

static void test_message_above_broker_maximum_packet_size_refused_at_publish(void **state)
{
    (void)state;
    fake_t *f = fake_new();
    f->max_packet = 100;
    fake_start(f);
    char url[64];
    em_mqtt_t *m = client_of(f, 1, url, sizeof(url));
    char big[200];
    memset(big, 'x', sizeof(big));
    em_error_t err;
    /* Refused whether it would go out at once or wait in the queue. */
    assert_int_equal(em_mqtt_publish(m, "t/big", big, sizeof(big), 1, false, NULL, &err),
                     EM_ERR_INVALID_ARGUMENT);
    assert_string_equal(err.field, "payload");
    assert_int_equal(em_mqtt_publish(m, "t/small", "a", 1, 1, false, NULL, &err), EM_OK);
    assert_int_equal(em_mqtt_publish(m, "t/big", big, sizeof(big), 1, false, NULL, &err),
                     EM_ERR_INVALID_ARGUMENT);
    assert_int_equal(em_mqtt_publish(m, "t/big", big, 60, 1, false, NULL, &err), EM_OK);
    fake_allow(f, 0, true);
    assert_true(wait_rec(&R.npub, 2, WAIT_MS));
    em_mqtt_free(m);
    fake_free(f);
}

static void test_qos_above_broker_maximum_refused_at_publish(void **state)
{
    (void)state;
    fake_t *f = fake_new();
    f->max_qos = 0;
    f->ack_all = true;
    fake_start(f);
    char url[64];
    em_mqtt_t *m = client_of(f, 4, url, sizeof(url));
    em_error_t err;
    assert_int_equal(em_mqtt_publish(m, "t/q", "a", 1, 1, false, NULL, &err),
                     EM_ERR_INVALID_ARGUMENT);
    assert_string_equal(err.field, "qos");
    assert_int_equal(em_mqtt_publish(m, "t/q", "a", 1, 0, false, NULL, &err), EM_OK);
    em_mqtt_free(m);
    fake_free(f);
}

static void test_topic_rules_are_libmosquittos(void **state)
{
    (void)state;
    fake_t *f = fake_new();
    f->ack_all = true;
    fake_start(f);
    char url[64];
    em_mqtt_t *m = client_of(f, 4, url, sizeof(url));
    em_error_t err;
    /* Control characters, DEL, wildcards and bad UTF-8 are refused. */
    const char *bad[] = {"t/\x01", "t/\x7f", "t/a+", "t/#", "t/\xc3"};
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++)
        assert_int_equal(em_mqtt_publish(m, bad[i], "a", 1, 1, false, NULL, &err),
                         EM_ERR_INVALID_ARGUMENT);
    /* 200 separators pass, 201 do not. */
    char deep[512];
    size_t n = 0;
    for (int i = 0; i < 200; i++) {
        deep[n++] = 'a';
        deep[n++] = '/';
    }
    deep[n] = '\0';
    assert_int_equal(em_mqtt_publish(m, deep, "a", 1, 1, false, NULL, &err), EM_OK);
    deep[n++] = '/';
    deep[n] = '\0';
    assert_int_equal(em_mqtt_publish(m, deep, "a", 1, 1, false, NULL, &err),
                     EM_ERR_INVALID_ARGUMENT);
    /* UTF-8 beyond ASCII is fine. */
    assert_int_equal(em_mqtt_publish(m, "t/\xc3\xa9t\xc3\xa9", "a", 1, 1, false, NULL, &err),
                     EM_OK);
    assert_true(wait_rec(&R.npub, 2, WAIT_MS));
    em_mqtt_free(m);
    fake_free(f);
}

static void test_disconnect_waits_for_queued_publishes(void **state)
{
    (void)state;
    em_test_broker_t b;
    assert_int_equal(em_test_broker_start(&b, "plain"), 0);
    em_mqtt_options_t o;
    em_mqtt_options_init(&o);
    o.url = em_test_broker_url(&b);
    o.allow_plain = true;
    o.max_inflight = 2;
    em_error_t err;
    em_mqtt_t *m = em_mqtt_new(&o, &CBS, &err);
    assert_non_null(m);
    assert_int_equal(em_mqtt_connect(m, WAIT_MS, &err), EM_OK);
    assert_int_equal(em_mqtt_start(m, &err), EM_OK);
    enum { N = 200 };
    assert_int_equal(publish_n(m, 1, 0, N, NULL), 0);
    assert_int_equal(em_mqtt_disconnect(m, &err), EM_OK);
    assert_int_equal(wait_rec(&R.npub, N, 0), true);
    em_mqtt_free(m);
    em_test_broker_cleanup(&b);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup(test_window_bounds_unacknowledged_publishes, test_setup),
        cmocka_unit_test_setup(test_broker_receive_maximum_bounds_the_window, test_setup),
        cmocka_unit_test_setup(test_queued_publishes_go_out_in_order, test_setup),
        cmocka_unit_test_setup(test_each_id_is_acknowledged_exactly_once, test_setup),
        cmocka_unit_test_setup(test_qos0_is_reported_written_while_the_window_is_full, test_setup),
        cmocka_unit_test_setup(test_queued_publishes_are_sent_after_a_reconnection, test_setup),
        cmocka_unit_test_setup(test_message_above_broker_maximum_packet_size_refused_at_publish,
                               test_setup),
        cmocka_unit_test_setup(test_qos_above_broker_maximum_refused_at_publish, test_setup),
        cmocka_unit_test_setup(test_topic_rules_are_libmosquittos, test_setup),
        cmocka_unit_test_setup(test_disconnect_waits_for_queued_publishes, test_setup),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
