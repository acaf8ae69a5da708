/*
 * emiot - mqtt/callbacks.c: calling the application, at once or later.
 *
 * A user callback runs on the driver with no lock of the transport held. When
 * em_mqtt_connect or em_mqtt_disconnect drive the network without a thread,
 * the header promises that no callback runs inside them: what is due then
 * (CONNECTED, a message, an acknowledgement) is copied into a bounded queue
 * and delivered, in order, by the next em_mqtt_loop (or by the network thread
 * when it starts).
 */
#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "mqtt/mqtt_internal.h"

struct em__mqtt_deferred {
    em__mqtt_deferred_t *next;
    enum { DEFERRED_EVENT, DEFERRED_MESSAGE, DEFERRED_PUBLISHED } kind;
    em_mqtt_event_t ev;
    bool has_err;
    em_error_t err;
    int mid;
    int qos;
    bool retain;
    size_t len;
    char *topic;
    unsigned char data[]; /* topic, NUL, payload */
};

static void defer_push(em_mqtt_t *m, em__mqtt_deferred_t *d, size_t bytes)
{
    d->next = NULL;
    if (m->deferred_tail != NULL)
        m->deferred_tail->next = d;
    else
        m->deferred_head = d;
    m->deferred_tail = d;
    m->deferred_count++;
    m->deferred_bytes += bytes;
}

static em__mqtt_deferred_t *defer_alloc(em_mqtt_t *m, size_t extra)
{
    if (m->deferred_count >= EM__MQTT_DEFERRED_MAX ||
        extra > EM__MQTT_DEFERRED_BYTES_MAX - m->deferred_bytes) {
        m->deferred_dropped++;
        return NULL;
    }
    em__mqtt_deferred_t *d = calloc(1, sizeof(*d) + extra);
    if (d == NULL)
        m->deferred_dropped++;
    return d;
}

void em__mqtt_emit(em_mqtt_t *m, em_mqtt_event_t ev, const em_error_t *err)
{
    if (m->cbs.on_event == NULL)
        return;
    if (m->defer) {
        em__mqtt_deferred_t *d = defer_alloc(m, 0);
        if (d == NULL)
            return;
        d->kind = DEFERRED_EVENT;
        d->ev = ev;
        if (err != NULL) {
            d->has_err = true;
            d->err = *err;
        }
        defer_push(m, d, 0);
        return;
    }
    m->cbs.on_event(m->cbs.userdata, ev, err);
}

void em__mqtt_emit_published(em_mqtt_t *m, int mid)
{
    if (m->cbs.on_published == NULL)
        return;
    if (m->defer) {
        em__mqtt_deferred_t *d = defer_alloc(m, 0);
        if (d == NULL)
            return;
        d->kind = DEFERRED_PUBLISHED;
        d->mid = mid;
        defer_push(m, d, 0);
        return;
    }
    m->cbs.on_published(m->cbs.userdata, mid);
}

void em__mqtt_on_message(struct mosquitto *mosq, void *ud, const struct mosquitto_message *msg)
{
    (void)mosq;
    em_mqtt_t *m = ud;
    m->rx_packets++;
    m->rx_messages++;
    if (m->cbs.on_message == NULL || msg == NULL || msg->topic == NULL || msg->payloadlen < 0)
        return;
    static const unsigned char empty[1] = {0};
    const void *payload = msg->payload != NULL ? msg->payload : empty;
    size_t len = (size_t)msg->payloadlen;
    if (m->defer) {
        size_t tlen = strlen(msg->topic);
        if (tlen > EM__MQTT_DEFERRED_BYTES_MAX || len > EM__MQTT_DEFERRED_BYTES_MAX - tlen - 1) {
            m->deferred_dropped++;
            return;
        }
        em__mqtt_deferred_t *d = defer_alloc(m, tlen + 1 + len);
        if (d == NULL)
            return;
        d->kind = DEFERRED_MESSAGE;
        d->topic = (char *)d->data;
        memcpy(d->data, msg->topic, tlen + 1);
        memcpy(d->data + tlen + 1, payload, len);
        d->len = len;
        d->qos = msg->qos;
        d->retain = msg->retain;
        defer_push(m, d, tlen + 1 + len);
        return;
    }
    /* libmosquitto goes on reading packets after this callback only while
     * errno is not EAGAIN: keep the application from changing it. */
    int saved = errno;
    m->cbs.on_message(m->cbs.userdata, msg->topic, payload, len, msg->qos, msg->retain);
    errno = saved;
}

/* Delivers what was deferred, in order. Driver only, defer off. */
void em__mqtt_deliver_deferred(em_mqtt_t *m)
{
    while (m->deferred_head != NULL) {
        em__mqtt_deferred_t *d = m->deferred_head;
        m->deferred_head = d->next;
        if (m->deferred_head == NULL)
            m->deferred_tail = NULL;
        m->deferred_count--;
        switch (d->kind) {
        case DEFERRED_EVENT:
            if (m->cbs.on_event != NULL)
                m->cbs.on_event(m->cbs.userdata, d->ev, d->has_err ? &d->err : NULL);
            break;
        case DEFERRED_MESSAGE: {
            size_t tlen = strlen(d->topic);
            m->deferred_bytes -= tlen + 1 + d->len;
            if (m->cbs.on_message != NULL)
                m->cbs.on_message(m->cbs.userdata, d->topic, d->data + tlen + 1, d->len, d->qos,
                                  d->retain);
            break;
        }
        case DEFERRED_PUBLISHED:
            if (m->cbs.on_published != NULL)
                m->cbs.on_published(m->cbs.userdata, d->mid);
            break;
        }
        free(d);
    }
    m->deferred_bytes = 0;
    if (m->deferred_dropped > 0) {
        size_t n = m->deferred_dropped;
        m->deferred_dropped = 0;
        em_error_t e;
        em_error_clear(&e);
        em_error_set(&e, EM_ERR_LIMIT, EM_SEV_HIGH, NULL,
                     "%zu callbacks were dropped while connecting or disconnecting without a "
                     "network thread (limit reached)",
                     n);
        if (m->cbs.on_event != NULL)
            m->cbs.on_event(m->cbs.userdata, EM_MQTT_ERROR, &e);
    }
}

void em__mqtt_deferred_free(em_mqtt_t *m)
{
    while (m->deferred_head != NULL) {
        em__mqtt_deferred_t *d = m->deferred_head;
        m->deferred_head = d->next;
        free(d);
    }
    m->deferred_tail = NULL;
    m->deferred_count = 0;
    m->deferred_bytes = 0;
}
