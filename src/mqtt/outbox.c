/*
 * emiot - mqtt/outbox.c: publishing. The in-flight window, the queue behind
 * it, and the message ids em_mqtt_publish returns.
 *
 * Why the client keeps its own queue. libmosquitto 2.0 keeps every QoS 1/2
 * message it was given, in flight or waiting for room, in one list, and walks
 * that list on every publish (looking for a duplicate message id) and on
 * every acknowledgement (looking for a message to release). A group command
 * to 10,000 devices would make each of those walks thousands of entries long.
 * So libmosquitto is given at most `window` QoS 1/2 messages; the rest wait
 * here, in order, and the driver hands them over as acknowledgements make
 * room (em__mqtt_pump). Waiting here also costs the publisher nothing but a
 * copy: no system call, no wake-up of the driver.
 *
 * Ids. A queued message has no libmosquitto message id yet, so
 * em_mqtt_publish returns ids of its own (1..65535, in order), and the two
 * rings below map libmosquitto's ids back to them when libmosquitto reports
 * a PUBACK/PUBCOMP (QoS 1/2) or a written packet (QoS 0).
 *
 * Locking. pub_lock guards everything here and is held across
 * mosquitto_publish and in the acknowledgement callback, so an
 * acknowledgement is always matched after the hand-over that recorded its
 * id. libmosquitto holds none of the locks a publisher waits for while it
 * runs that callback, so the two cannot deadlock.
 */
#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "emiot/log.h"
#include "mqtt/mqtt_internal.h"

struct em__mqtt_queued {
    em__mqtt_queued_t *next;
    int len; /* payload bytes */
    uint16_t id;
    uint16_t tlen; /* topic bytes (check_topic: at most 65535) */
    uint8_t qos;
    bool retain;
    char topic[]; /* NUL-terminated, then the payload */
};

/* QoS 0 packets libmosquitto has not written yet: at most as many as may be
 * pending, plus room for holes. */
#define UNWRITTEN0_MAX 65536u

/* ---------------------------------------------------------------------- */
/* Id rings                                                                */

static em__mqtt_idmap_t *ring_at(em__mqtt_idring_t *r, unsigned i)
{
    unsigned k = r->head + i;
    return &r->v[k >= r->cap ? k - r->cap : k];
}

static bool ring_full(const em__mqtt_idring_t *r)
{
    return r->len >= r->cap;
}

/* Doubles the capacity (up to max), keeping the order. */
static bool ring_grow(em__mqtt_idring_t *r, unsigned max)
{
    if (r->cap >= max)
        return false;
    unsigned cap = r->cap == 0 ? 16 : (r->cap > max / 2 ? max : r->cap * 2);
    em__mqtt_idmap_t *v = malloc((size_t)cap * sizeof(*v));
    if (v == NULL)
        return false;
    for (unsigned i = 0; i < r->len; i++)
        v[i] = *ring_at(r, i);
    free(r->v);
    r->v = v;
    r->cap = cap;
    r->head = 0;
    return true;
}

static void ring_push(em__mqtt_idring_t *r, int mosq_mid, uint16_t id)
{
    r->len++;
    em__mqtt_idmap_t *e = ring_at(r, r->len - 1);
    e->mosq_mid = (uint16_t)mosq_mid;
    e->id = id;
}

/* Finds libmosquitto's mosq_mid, removes it and returns its id through *id.
 * Acknowledgements nearly always come in order: the oldest entry matches. */
static bool ring_take(em__mqtt_idring_t *r, int mosq_mid, uint16_t *id)
{
    if (mosq_mid <= 0 || mosq_mid > 65535)
        return false;
    for (unsigned i = 0; i < r->len; i++) {
        em__mqtt_idmap_t *e = ring_at(r, i);
        if (e->mosq_mid != mosq_mid)
            continue;
        *id = e->id;
        e->mosq_mid = 0;
        while (r->len > 0 && r->v[r->head].mosq_mid == 0) {
            r->head = r->head + 1 == r->cap ? 0 : r->head + 1;
            r->len--;
        }
        return true;
    }
    return false;
}

static bool ring_head_is(em__mqtt_idring_t *r, int mosq_mid)
{
    return r->len > 0 && r->v[r->head].mosq_mid == mosq_mid;
}

static void ring_clear(em__mqtt_idring_t *r)
{
    r->head = 0;
    r->len = 0;
}

/* Room for one more QoS 1/2 message in libmosquitto: fewer than the window,
 * and fewer than the broker's Receive Maximum (MQTT 5 CONNACK; mosquitto's
 * default is 20), beyond which libmosquitto would hold them itself and walk
 * them on every acknowledgement. */
static bool window_open(em_mqtt_t *m)
{
    unsigned max = atomic_load_explicit(&m->broker_receive_max, memory_order_relaxed);
    return !ring_full(&m->inflight) && (max == 0 || m->inflight.len < max);
}

/* ---------------------------------------------------------------------- */
/* Set-up                                                                  */

int em__mqtt_outbox_init(em_mqtt_t *m, unsigned window)
{
    m->window = window;
    m->inflight.v = malloc((size_t)window * sizeof(*m->inflight.v));
    if (m->inflight.v == NULL)
        return -1;
    m->inflight.cap = window;
    atomic_init(&m->inflight_count, 0);
    atomic_init(&m->handed, 0);
    atomic_init(&m->broker_max_packet, 0);
    atomic_init(&m->broker_receive_max, 0);
    atomic_init(&m->broker_max_qos, 2);
    return 0;
}

void em__mqtt_outbox_free(em_mqtt_t *m)
{
    while (m->queue_head != NULL) {
        em__mqtt_queued_t *q = m->queue_head;
        m->queue_head = q->next;
        free(q);
    }
    m->queue_tail = NULL;
    free(m->inflight.v);
    free(m->unwritten0.v);
    memset(&m->inflight, 0, sizeof(m->inflight));
    memset(&m->unwritten0, 0, sizeof(m->unwritten0));
}

void em__mqtt_outbox_limits(em_mqtt_t *m, const mosquitto_property *props)
{
    uint32_t max_packet = 0;
    uint8_t max_qos = 2;
    uint16_t receive_max = 0;
    if (props != NULL) {
        mosquitto_property_read_int32(props, MQTT_PROP_MAXIMUM_PACKET_SIZE, &max_packet, false);
        mosquitto_property_read_byte(props, MQTT_PROP_MAXIMUM_QOS, &max_qos, false);
        mosquitto_property_read_int16(props, MQTT_PROP_RECEIVE_MAXIMUM, &receive_max, false);
    }
    atomic_store(&m->broker_receive_max, receive_max);
    atomic_store(&m->broker_max_packet, max_packet);
    atomic_store(&m->broker_max_qos, max_qos > 2 ? 2 : (int)max_qos);
}

void em__mqtt_outbox_lost_qos0(em_mqtt_t *m)
{
    pthread_mutex_lock(&m->pub_lock);
    m->pending0 = 0;
    ring_clear(&m->unwritten0);
    pthread_mutex_unlock(&m->pub_lock);
}

/* ---------------------------------------------------------------------- */
/* Publishing                                                              */

static em_err_t publish_error(int rc, em_error_t *err)
{
    switch (rc) {
    case MOSQ_ERR_NO_CONN:
        return em_error_set(err, EM_ERR_NOT_CONNECTED, EM_SEV_MEDIUM, NULL,
                            "not connected to the broker");
    case MOSQ_ERR_NOMEM:
        return em_error_set(err, EM_ERR_NOMEM, EM_SEV_HIGH, NULL, "out of memory");
    case MOSQ_ERR_INVAL:
        return em_error_set(err, EM_ERR_INVALID_ARGUMENT, EM_SEV_MEDIUM, "topic",
                            "invalid topic (empty, wildcards, or too long)");
    case MOSQ_ERR_MALFORMED_UTF8:
        return em_error_set(err, EM_ERR_INVALID_ARGUMENT, EM_SEV_MEDIUM, "topic",
                            "the topic is not valid UTF-8");
    case MOSQ_ERR_PAYLOAD_SIZE:
    case MOSQ_ERR_OVERSIZE_PACKET:
        return em_error_set(err, EM_ERR_INVALID_ARGUMENT, EM_SEV_MEDIUM, "payload",
                            "the message is larger than the broker accepts");
    case MOSQ_ERR_QOS_NOT_SUPPORTED:
        return em_error_set(err, EM_ERR_INVALID_ARGUMENT, EM_SEV_MEDIUM, "qos",
                            "the broker does not support this QoS");
    case MOSQ_ERR_RETAIN_NOT_SUPPORTED:
        return em_error_set(err, EM_ERR_INVALID_ARGUMENT, EM_SEV_MEDIUM, "retain",
                            "the broker does not support retained messages");
    case MOSQ_ERR_PROTOCOL:
        return em_error_set(err, EM_ERR_PROTOCOL, EM_SEV_HIGH, NULL, "MQTT protocol error");
    default:
        return em_error_set(err, EM_ERR_CONNECTION, EM_SEV_HIGH, NULL, "publish failed: %s",
                            mosquitto_strerror(rc));
    }
}

/* Levels a topic may have (libmosquitto's TOPIC_HIERARCHY_LIMIT). */
#define TOPIC_LEVELS_MAX 200

/* libmosquitto's topic checks (no wildcard, at most 200 levels, UTF-8
 * without control characters). Printable ASCII, which every topic emiot
 * builds is, passes both in one cheap loop; anything else is left to
 * libmosquitto's own functions. */
static int check_topic(const char *topic, size_t tlen)
{
    if (tlen > 65535)
        return MOSQ_ERR_INVAL;
    size_t i, slashes = 0;
    for (i = 0; i < tlen; i++) {
        unsigned char c = (unsigned char)topic[i];
        if (c < 0x20 || c > 0x7e)
            break;
        if (c == '+' || c == '#')
            return MOSQ_ERR_INVAL;
        slashes += c == '/';
    }
    if (i == tlen)
        return slashes > TOPIC_LEVELS_MAX ? MOSQ_ERR_INVAL : MOSQ_ERR_SUCCESS;
    if (mosquitto_pub_topic_check2(topic, tlen) != MOSQ_ERR_SUCCESS)
        return MOSQ_ERR_INVAL;
    if (mosquitto_validate_utf8(topic, (int)tlen) != MOSQ_ERR_SUCCESS)
        return MOSQ_ERR_MALFORMED_UTF8;
    return MOSQ_ERR_SUCCESS;
}

/* What libmosquitto would refuse, checked before a message is queued (a
 * queued message can no longer fail in the caller's hands). Returns a
 * MOSQ_ERR_ code. */
static int check_message(em_mqtt_t *m, const char *topic, size_t tlen, size_t len, int qos)
{
    int rc = check_topic(topic, tlen);
    if (rc != MOSQ_ERR_SUCCESS)
        return rc;
    if (qos > atomic_load_explicit(&m->broker_max_qos, memory_order_relaxed))
        return MOSQ_ERR_QOS_NOT_SUPPORTED;
    /* The whole packet: fixed header, topic, message id, an empty property
     * list (MQTT 5), payload. */
    size_t rl = 2 + tlen + (qos > 0 ? 2 : 0) + 1 + len;
    if (rl > EM__MQTT_PAYLOAD_MAX)
        return MOSQ_ERR_PAYLOAD_SIZE;
    size_t packet = 1 + (rl < 128 ? 1 : rl < 16384 ? 2 : rl < 2097152 ? 3 : 4) + rl;
    uint32_t max = atomic_load_explicit(&m->broker_max_packet, memory_order_relaxed);
    if (max > 0 && packet > max)
        return MOSQ_ERR_OVERSIZE_PACKET;
    return MOSQ_ERR_SUCCESS;
}

static uint16_t next_id(em_mqtt_t *m)
{
    m->last_id = m->last_id == 65535 ? 1 : (uint16_t)(m->last_id + 1);
    return m->last_id;
}

/* Gives one message to libmosquitto and records its id. For QoS 1/2 the
 * caller has checked that the window has room. pub_lock held. */
static int hand_over(em_mqtt_t *m, uint16_t id, const char *topic, const void *payload, int len,
                     int qos, bool retain)
{
    em__mqtt_idring_t *r = qos > 0 ? &m->inflight : &m->unwritten0;
    if (qos == 0 && ring_full(r) && !ring_grow(r, UNWRITTEN0_MAX))
        return MOSQ_ERR_NOMEM;
    int mosq_mid = 0;
    int rc = mosquitto_publish(m->mosq, &mosq_mid, topic, len, payload, qos, retain);
    if (rc != MOSQ_ERR_SUCCESS)
        return rc;
    ring_push(r, mosq_mid, id);
    atomic_fetch_add_explicit(&m->handed, 1, memory_order_relaxed);
    if (qos == 0)
        m->pending0++;
    else
        atomic_fetch_add_explicit(&m->inflight_count, 1, memory_order_relaxed);
    return MOSQ_ERR_SUCCESS;
}

static int enqueue(em_mqtt_t *m, uint16_t id, const char *topic, size_t tlen, const void *payload,
                   size_t len, int qos, bool retain)
{
    if (len > SIZE_MAX - sizeof(em__mqtt_queued_t) - tlen - 1)
        return MOSQ_ERR_NOMEM;
    em__mqtt_queued_t *q = malloc(sizeof(*q) + tlen + 1 + len);
    if (q == NULL)
        return MOSQ_ERR_NOMEM;
    q->next = NULL;
    q->id = id;
    q->tlen = (uint16_t)tlen;
    q->qos = (uint8_t)qos;
    q->retain = retain;
    q->len = (int)len;
    memcpy(q->topic, topic, tlen + 1);
    if (len > 0)
        memcpy(q->topic + tlen + 1, payload, len);
    if (m->queue_tail != NULL)
        m->queue_tail->next = q;
    else
        m->queue_head = q;
    m->queue_tail = q;
    return MOSQ_ERR_SUCCESS;
}

/* A queued message libmosquitto refused (the broker's limits changed on a
 * reconnection): it is dropped, and the application told. No lock held. */
static void report_dropped(em_mqtt_t *m, uint16_t id, int rc)
{
    em_error_t e;
    em_error_clear(&e);
    em_error_t why;
    em_error_clear(&why);
    publish_error(rc, &why);
    em_error_set(&e, EM_ERR_COMMAND_FAILED, EM_SEV_HIGH, why.field,
                 "queued message %u was dropped: %s", (unsigned)id, why.message);
    em__mqtt_emit(m, EM_MQTT_ERROR, &e);
}

/* Hands queued messages over while the window has room. Driver only (a
 * refused message is reported as an event), pub_lock held. *dropped_id and
 * *dropped_rc receive the first message libmosquitto refused for good, for
 * the caller to report without the lock. */
static unsigned pump_locked(em_mqtt_t *m, uint16_t *dropped_id, int *dropped_rc)
{
    unsigned n = 0;
    while (m->queue_head != NULL && window_open(m) &&
           atomic_load_explicit(&m->connected, memory_order_acquire)) {
        em__mqtt_queued_t *q = m->queue_head;
        int rc = hand_over(m, q->id, q->topic, q->topic + q->tlen + 1, q->len, q->qos, q->retain);
        if (rc == MOSQ_ERR_NOMEM)
            break; /* try again on the next round of the driver */
        m->queue_head = q->next;
        if (m->queue_head == NULL)
            m->queue_tail = NULL;
        if (rc != MOSQ_ERR_SUCCESS) {
            if (*dropped_rc == MOSQ_ERR_SUCCESS) {
                *dropped_id = q->id;
                *dropped_rc = rc;
            }
            if (--m->pending == 0)
                pthread_cond_broadcast(&m->pub_cond);
        } else {
            n++;
        }
        free(q);
    }
    return n;
}

unsigned em__mqtt_pump(em_mqtt_t *m)
{
    uint16_t dropped_id = 0;
    int dropped_rc = MOSQ_ERR_SUCCESS;
    pthread_mutex_lock(&m->pub_lock);
    unsigned n = m->queue_head != NULL ? pump_locked(m, &dropped_id, &dropped_rc) : 0;
    pthread_mutex_unlock(&m->pub_lock);
    if (dropped_rc != MOSQ_ERR_SUCCESS)
        report_dropped(m, dropped_id, dropped_rc);
    return n;
}

em_err_t em_mqtt_publish(em_mqtt_t *m, const char *topic, const void *payload, size_t len, int qos,
                         bool retain, int *mid, em_error_t *err)
{
    if (m == NULL || topic == NULL || topic[0] == '\0')
        return em_error_set(err, EM_ERR_INVALID_ARGUMENT, EM_SEV_MEDIUM, "topic",
                            "a client and a topic are required");
    if (qos < 0 || qos > 2)
        return em_error_set(err, EM_ERR_INVALID_ARGUMENT, EM_SEV_MEDIUM, "qos",
                            "qos must be 0, 1 or 2");
    if (len > EM__MQTT_PAYLOAD_MAX || (len > 0 && payload == NULL))
        return em_error_set(err, EM_ERR_INVALID_ARGUMENT, EM_SEV_MEDIUM, "payload",
                            "payload missing or larger than 268435455 bytes");
    /* Refuse rather than queue while disconnected: the caller decides what
     * an undelivered command means. */
    if (!atomic_load_explicit(&m->connected, memory_order_acquire))
        return em_error_set(err, EM_ERR_NOT_CONNECTED, EM_SEV_MEDIUM, NULL,
                            "not connected to the broker");
    size_t tlen = strnlen(topic, 65536);
    int rc = check_message(m, topic, tlen, len, qos);
    if (rc != MOSQ_ERR_SUCCESS)
        return publish_error(rc, err);

    pthread_mutex_lock(&m->pub_lock);
    /* Bounded: a queue that only grows means the broker cannot keep up. */
    if ((qos > 0 ? m->pending : m->pending0) >= EM_MQTT_PENDING_MAX) {
        pthread_mutex_unlock(&m->pub_lock);
        return em_error_set(err, EM_ERR_LIMIT, EM_SEV_HIGH, NULL,
                            "%d publishes already await the broker", EM_MQTT_PENDING_MAX);
    }
    uint16_t id = next_id(m);
    bool wake = false;
    if (qos == 0 || (m->queue_head == NULL && window_open(m))) {
        /* A packet is ready for the network. */
        rc = hand_over(m, id, topic, payload, (int)len, qos, retain);
        wake = rc == MOSQ_ERR_SUCCESS;
    } else {
        /* A queued message needs no wake-up while the window is full: the
         * acknowledgements to come make the driver pump it. When room has
         * opened since the driver last pumped, it is about to pump (it has
         * not yet since reading the acknowledgement) or must be woken. */
        rc = enqueue(m, id, topic, tlen, payload, len, qos, retain);
        wake = rc == MOSQ_ERR_SUCCESS && window_open(m);
    }
    if (rc == MOSQ_ERR_SUCCESS && qos > 0)
        m->pending++;
    pthread_mutex_unlock(&m->pub_lock);
    if (rc != MOSQ_ERR_SUCCESS)
        return publish_error(rc, err);
    if (wake)
        em__mqtt_wake(m);
    if (mid != NULL)
        *mid = id;
    return EM_OK;
}

void em__mqtt_on_publish(struct mosquitto *mosq, void *ud, int mid, int reason,
                         const mosquitto_property *props)
{
    (void)mosq;
    (void)props;
    em_mqtt_t *m = ud;
    m->rx_packets++;
    /* libmosquitto goes on reading packets after this callback only while
     * errno is not EAGAIN: keep the callback from changing it. */
    int saved = errno;
    uint16_t id = 0;
    bool found;
    pthread_mutex_lock(&m->pub_lock);
    /* QoS 0 packets are written, and reported, in the order they were handed
     * over: if this is one, it is the oldest. */
    bool qos0 = ring_head_is(&m->unwritten0, mid);
    uint16_t dropped_id = 0;
    int dropped_rc = MOSQ_ERR_SUCCESS;
    found = !qos0 && ring_take(&m->inflight, mid, &id);
    if (found) {
        atomic_fetch_sub_explicit(&m->inflight_count, 1, memory_order_relaxed);
        if (--m->pending == 0)
            pthread_cond_broadcast(&m->pub_cond);
        /* Refill the window now rather than after the read: libmosquitto
         * walks its list looking for a message to release right after this
         * callback, a walk that stops at once when the window is full. */
        if (m->queue_head != NULL)
            pump_locked(m, &dropped_id, &dropped_rc);
    } else if (ring_take(&m->unwritten0, mid, &id)) {
        found = true;
        if (m->pending0 > 0)
            m->pending0--;
    }
    pthread_mutex_unlock(&m->pub_lock);
    if (dropped_rc != MOSQ_ERR_SUCCESS)
        report_dropped(m, dropped_id, dropped_rc);
    if (found && reason >= 0x80) {
        /* MQTT 5: the broker acknowledged the message but did not accept it
         * (not authorized, quota exceeded, ...). */
        em_error_t e;
        em_error_clear(&e);
        em_error_set(
            &e, reason == MQTT_RC_NOT_AUTHORIZED ? EM_ERR_PERMISSION_DENIED : EM_ERR_COMMAND_FAILED,
            EM_SEV_HIGH, "topic", "the broker refused message %u: %s", (unsigned)id,
            mosquitto_reason_string(reason));
        em__mqtt_emit(m, EM_MQTT_ERROR, &e);
    }
    if (found)
        em__mqtt_emit_published(m, id);
    errno = saved;
}
