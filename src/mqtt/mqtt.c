/*
 * emiot - mqtt/mqtt.c: the MQTT transport (see mqtt.h and mqtt_internal.h).
 *
 * Why emiot runs its own network thread instead of mosquitto_loop_start: the
 * thread and em_mqtt_loop share one driver (drive() below), so both reconnect
 * the same way, with a backoff that really doubles (libmosquitto's
 * "exponential" delay grows as n squared and stops the thread for good on a
 * TLS or protocol error), report EM_MQTT_RECONNECTING before each retry, time
 * out an attempt that gets no CONNACK, and fall back from MQTT 5 to 3.1.1.
 * libmosquitto stays in threaded mode (mosquitto_threaded_set), so publish and
 * subscribe are safe from any thread while the driver runs mosquitto_loop.
 */
#include <errno.h>
#include <limits.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>

#include <openssl/crypto.h>
#include <openssl/rand.h>

#include "emiot/clock.h"
#include "emiot/log.h"
#include "mqtt/mqtt_internal.h"

/* Set on the network thread, whose signals are all blocked. */
static _Thread_local bool tl_network_thread;

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

/* ---------------------------------------------------------------------- */
/* Small helpers                                                           */

static pthread_once_t lib_once = PTHREAD_ONCE_INIT;

static void lib_init_once(void)
{
    mosquitto_lib_init();
}

void em_mqtt_lib_init(void)
{
    pthread_once(&lib_once, lib_init_once);
}

void em_mqtt_options_init(em_mqtt_options_t *opts)
{
    if (opts == NULL)
        return;
    memset(opts, 0, sizeof(*opts));
    opts->keepalive_s = 30;
    opts->reconnect_min_s = 1;
    opts->reconnect_max_s = 30;
    opts->protocol = 5;
    opts->clean_session = true;
    opts->max_inflight = 0;
}

/* Waits on cond for at most ms milliseconds (CLOCK_MONOTONIC). */
static void cond_wait_ms(pthread_cond_t *cond, pthread_mutex_t *mu, int64_t ms)
{
    if (ms <= 0)
        return;
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    ts.tv_sec += (time_t)(ms / 1000);
    ts.tv_nsec += (long)(ms % 1000) * 1000000L;
    if (ts.tv_nsec >= 1000000000L) {
        ts.tv_sec++;
        ts.tv_nsec -= 1000000000L;
    }
    pthread_cond_timedwait(cond, mu, &ts);
}

static int init_cond(pthread_cond_t *cond)
{
    pthread_condattr_t attr;
    if (pthread_condattr_init(&attr) != 0)
        return -1;
    int rc = pthread_condattr_setclock(&attr, CLOCK_MONOTONIC);
    if (rc == 0)
        rc = pthread_cond_init(cond, &attr);
    pthread_condattr_destroy(&attr);
    return rc == 0 ? 0 : -1;
}

/* A SIGPIPE raised by a write on a closed TLS socket would kill the process.
 * The network thread blocks every signal; a caller driving the network
 * without a thread gets SIGPIPE blocked around the call, and a SIGPIPE that
 * the call raised is consumed before the mask is restored. */
typedef struct sigpipe_guard {
    bool active;
    bool was_pending;
    sigset_t old;
} sigpipe_guard_t;

static void sigpipe_block(sigpipe_guard_t *g)
{
    g->active = false;
    if (tl_network_thread)
        return;
    sigset_t set, pending;
    sigemptyset(&set);
    sigaddset(&set, SIGPIPE);
    sigemptyset(&pending);
    sigpending(&pending);
    g->was_pending = sigismember(&pending, SIGPIPE) == 1;
    g->active = pthread_sigmask(SIG_BLOCK, &set, &g->old) == 0;
}

static void sigpipe_restore(sigpipe_guard_t *g)
{
    if (!g->active)
        return;
    if (!g->was_pending) {
        sigset_t set, pending;
        sigemptyset(&set);
        sigaddset(&set, SIGPIPE);
        sigemptyset(&pending);
        sigpending(&pending);
        if (sigismember(&pending, SIGPIPE) == 1) {
            struct timespec zero = {0, 0};
            while (sigtimedwait(&set, NULL, &zero) < 0 && errno == EINTR) {
            }
        }
    }
    pthread_sigmask(SIG_SETMASK, &g->old, NULL);
}

/* ---------------------------------------------------------------------- */
/* Callbacks to the application, direct or deferred                        */

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

static void on_message(struct mosquitto *mosq, void *ud, const struct mosquitto_message *msg)
{
    (void)mosq;
    em_mqtt_t *m = ud;
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
    m->cbs.on_message(m->cbs.userdata, msg->topic, payload, len, msg->qos, msg->retain);
}

/* Delivers what was deferred, in order. Driver only, defer off. */
static void deliver_deferred(em_mqtt_t *m)
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
        case DEFERRED_MESSAGE:
            m->deferred_bytes -= strlen(d->topic) + 1 + d->len;
            if (m->cbs.on_message != NULL)
                m->cbs.on_message(m->cbs.userdata, d->topic, d->data + strlen(d->topic) + 1, d->len,
                                  d->qos, d->retain);
            break;
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

static void deferred_free(em_mqtt_t *m)
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

/* ---------------------------------------------------------------------- */
/* Connection state                                                        */

/* Chooses the delay before the next attempt and doubles the next one. A
 * random fifth is added so that a fleet does not reconnect in lockstep after a
 * broker restart. Lock held. */
static int64_t schedule_retry(em_mqtt_t *m)
{
    int64_t max_ms = (int64_t)m->reconnect_max_s * 1000;
    int64_t delay = m->backoff_ms;
    unsigned char r[2] = {0, 0};
    if (delay >= 5 && RAND_bytes(r, sizeof(r)) == 1)
        delay += (int64_t)(((unsigned)r[0] << 8 | r[1]) % (unsigned)(delay / 5 + 1));
    if (delay > max_ms)
        delay = max_ms;
    m->backoff_ms = m->backoff_ms > max_ms / 2 ? max_ms : m->backoff_ms * 2;
    m->state = EM__MQTT_WAITING;
    m->next_attempt_ms = em_mono_ms() + delay;
    return delay;
}

static void emit_reconnecting(em_mqtt_t *m, int64_t delay_ms, const em_error_t *cause)
{
    em_error_t e;
    em_error_clear(&e);
    em_error_set(&e, cause != NULL ? cause->code : EM_ERR_CONNECTION, EM_SEV_MEDIUM, NULL,
                 "reconnecting in %lld.%01lld s", (long long)(delay_ms / 1000),
                 (long long)(delay_ms % 1000 / 100));
    em__mqtt_emit(m, EM_MQTT_RECONNECTING, &e);
}

/* Why a connection that was up went down. */
static void explain_drop(em_mqtt_t *m, int rc, int saved_errno, em_error_t *err)
{
    const char *why;
    if (rc == MOSQ_ERR_KEEPALIVE)
        why = "keepalive timeout: no answer from the broker";
    else if (rc == MOSQ_ERR_ERRNO && saved_errno != 0)
        why = strerror(saved_errno);
    else if (rc == MOSQ_ERR_SUCCESS || rc == MOSQ_ERR_NO_CONN || rc == MOSQ_ERR_CONN_LOST)
        why = "closed by the broker or the network";
    else
        why = mosquitto_strerror(rc);
    em_error_set(err, EM_ERR_CONNECTION, EM_SEV_HIGH, "url", "connection to %s:%d lost: %s",
                 m->url.host, m->url.port, why);
}

/* Maps a refused CONNACK (reason code for MQTT 5, return code for 3.1.1). */
static void explain_connack(em_mqtt_t *m, int protocol, int rc, em_error_t *err)
{
    em_err_t code = EM_ERR_CONNECTION;
    const char *text;
    if (protocol == 5) {
        text = mosquitto_reason_string(rc);
        switch (rc) {
        case MQTT_RC_BAD_USERNAME_OR_PASSWORD:
        case MQTT_RC_NOT_AUTHORIZED:
        case MQTT_RC_BAD_AUTHENTICATION_METHOD:
            code = EM_ERR_AUTHENTICATION;
            break;
        case MQTT_RC_BANNED:
            code = EM_ERR_PERMISSION_DENIED;
            break;
        case MQTT_RC_CLIENTID_NOT_VALID:
            code = EM_ERR_CONFIGURATION;
            break;
        case MQTT_RC_UNSUPPORTED_PROTOCOL_VERSION:
        case MQTT_RC_PROTOCOL_ERROR:
        case MQTT_RC_MALFORMED_PACKET:
            code = EM_ERR_PROTOCOL;
            break;
        case MQTT_RC_CONNECTION_RATE_EXCEEDED:
        case MQTT_RC_QUOTA_EXCEEDED:
            code = EM_ERR_RATE_LIMIT_EXCEEDED;
            break;
        default:
            code = EM_ERR_CONNECTION;
            break;
        }
    } else {
        text = mosquitto_connack_string(rc);
        switch (rc) {
        case CONNACK_REFUSED_PROTOCOL_VERSION:
            code = EM_ERR_PROTOCOL;
            break;
        case CONNACK_REFUSED_IDENTIFIER_REJECTED:
            code = EM_ERR_CONFIGURATION;
            break;
        case CONNACK_REFUSED_BAD_USERNAME_PASSWORD:
        case CONNACK_REFUSED_NOT_AUTHORIZED:
            code = EM_ERR_AUTHENTICATION;
            break;
        default:
            code = EM_ERR_CONNECTION;
            break;
        }
    }
    em_error_set(err, code, EM_SEV_HIGH, code == EM_ERR_AUTHENTICATION ? "username" : "url",
                 "broker %s:%d refused the connection: %s (CONNACK code %d)", m->url.host,
                 m->url.port, text, rc);
}

/* Why the current attempt failed. Driver only. */
static void explain_attempt(em_mqtt_t *m, int protocol, int rc, int saved_errno, em_error_t *err)
{
    const char *host = m->url.host;
    int port = m->url.port;
    if (m->aborted) {
        em_error_set(err, EM_ERR_TIMEOUT, EM_SEV_HIGH, "url",
                     "no answer (CONNACK) from broker %s:%d in time", host, port);
        return;
    }
    if (em__mqtt_tls_explain(m, err))
        return;
    if (m->connack_rc > 0) {
        explain_connack(m, protocol, m->connack_rc, err);
        return;
    }
    if (rc == MOSQ_ERR_EAI) {
        em_error_set(err, EM_ERR_CONNECTION, EM_SEV_HIGH, "url", "cannot resolve host %s", host);
        return;
    }
    if (rc == MOSQ_ERR_ERRNO || rc == MOSQ_ERR_CONN_LOST) {
        switch (saved_errno) {
        case ECONNREFUSED:
            em_error_set(err, EM_ERR_CONNECTION, EM_SEV_HIGH, "url",
                         "connection refused by %s:%d (is the broker running?)", host, port);
            return;
        case ETIMEDOUT:
        case EHOSTUNREACH:
        case ENETUNREACH:
        case EHOSTDOWN:
        case ENETDOWN:
            em_error_set(err, EM_ERR_CONNECTION, EM_SEV_HIGH, "url", "%s:%d is unreachable: %s",
                         host, port, strerror(saved_errno));
            return;
        default:
            break;
        }
    }
    if (m->ssl_ctx != NULL && !m->tls.handshake_done) {
        em_error_set(err, EM_ERR_TLS, EM_SEV_HIGH, "url",
                     "TLS handshake with %s:%d failed (%s; is it a TLS listener?)", host, port,
                     rc == MOSQ_ERR_ERRNO && saved_errno != 0 ? strerror(saved_errno)
                                                              : mosquitto_strerror(rc));
        return;
    }
    if (rc == MOSQ_ERR_ERRNO && saved_errno != 0)
        em_error_set(err, EM_ERR_CONNECTION, EM_SEV_HIGH, "url", "cannot connect to %s:%d: %s",
                     host, port, strerror(saved_errno));
    else
        em_error_set(err, EM_ERR_CONNECTION, EM_SEV_HIGH, "url",
                     "connection to %s:%d closed before the broker answered (%s)", host, port,
                     mosquitto_strerror(rc));
}

static void log_event(em_log_level_t level, em_mqtt_t *m, const char *msg, const em_error_t *e)
{
    if (!em_log_enabled(level))
        return;
    em_log_field_t f[] = {EM_LOG_STR("host", m->url.host), EM_LOG_INT("port", m->url.port),
                          EM_LOG_STR("client_id", m->client_id),
                          EM_LOG_STR("error", e != NULL ? e->message : "")};
    em_log(level, "mqtt", NULL, msg, f, e != NULL ? 4 : 3);
}

/* The connection (or attempt) is gone: libmosquitto has closed the socket.
 * Decides what comes next and tells the application. Driver only. */
static void connection_closed(em_mqtt_t *m, int rc, int saved_errno)
{
    em_error_t e;
    em_error_clear(&e);
    atomic_store_explicit(&m->connected, false, memory_order_release);
    /* QoS 0 packets not yet written are gone with the connection (QoS 1/2
     * ones stay in libmosquitto and are sent again after reconnecting). */
    pthread_mutex_lock(&m->pub_lock);
    m->pending0 = 0;
    pthread_mutex_unlock(&m->pub_lock);

    pthread_mutex_lock(&m->lock);
    em__mqtt_state_t prev = m->state;
    int protocol = m->protocol;
    if (m->closing || !m->auto_connect) {
        m->state = EM__MQTT_IDLE;
        if (prev == EM__MQTT_CONNECTING) {
            em_error_set(&m->last_attempt_err, EM_ERR_CONNECTION, EM_SEV_MEDIUM, NULL,
                         "the connection attempt was cancelled");
            m->attempts_done++;
        }
        pthread_cond_broadcast(&m->cond);
        pthread_mutex_unlock(&m->lock);
        if (prev == EM__MQTT_CONNECTED) {
            em_error_set(&e, EM_ERR_OK, EM_SEV_LOW, NULL, "disconnected by the client");
            log_event(EM_LOG_DEBUG, m, "disconnected", NULL);
            em__mqtt_emit(m, EM_MQTT_DISCONNECTED, &e);
        }
        return;
    }

    if (prev == EM__MQTT_CONNECTED) {
        explain_drop(m, rc, saved_errno, &e);
        m->backoff_ms = (int64_t)m->reconnect_min_s * 1000;
        int64_t delay = schedule_retry(m);
        pthread_cond_broadcast(&m->cond);
        pthread_mutex_unlock(&m->lock);
        log_event(EM_LOG_DEBUG, m, "connection lost", &e);
        em__mqtt_emit(m, EM_MQTT_DISCONNECTED, &e);
        emit_reconnecting(m, delay, &e);
        return;
    }

    /* A failed attempt. A broker that does not speak MQTT 5 gets one more
     * attempt at once, in 3.1.1; the client stays on 3.1.1 from then on. */
    int connack = m->connack_rc;
    if (protocol == 5 && !m->aborted &&
        (connack == MQTT_RC_UNSUPPORTED_PROTOCOL_VERSION ||
         connack == CONNACK_REFUSED_PROTOCOL_VERSION)) {
        m->protocol = 4;
        m->state = EM__MQTT_WAITING;
        m->next_attempt_ms = em_mono_ms();
        m->attempt_now = true;
        pthread_cond_broadcast(&m->cond);
        pthread_mutex_unlock(&m->lock);
        log_event(EM_LOG_DEBUG, m, "broker refused MQTT 5; retrying with MQTT 3.1.1", NULL);
        return;
    }
    explain_attempt(m, protocol, rc, saved_errno, &e);
    m->last_attempt_err = e;
    m->attempts_done++;
    int64_t delay = schedule_retry(m);
    pthread_cond_broadcast(&m->cond);
    pthread_mutex_unlock(&m->lock);
    log_event(EM_LOG_DEBUG, m, "connection attempt failed", &e);
    if (!m->quiet) {
        em__mqtt_emit(m, EM_MQTT_ERROR, &e);
        emit_reconnecting(m, delay, &e);
    }
}

static void on_connect(struct mosquitto *mosq, void *ud, int rc, int flags,
                       const mosquitto_property *props)
{
    (void)mosq;
    (void)flags;
    (void)props;
    em_mqtt_t *m = ud;
    int saved = errno;
    m->connack_rc = rc;
    if (rc != 0) {
        /* Refused: libmosquitto closes the socket and the driver reports
         * the refusal from connection_closed. */
        errno = saved;
        return;
    }
    pthread_mutex_lock(&m->lock);
    m->state = EM__MQTT_CONNECTED;
    atomic_store_explicit(&m->negotiated, m->protocol, memory_order_release);
    atomic_store_explicit(&m->connected, true, memory_order_release);
    m->backoff_ms = (int64_t)m->reconnect_min_s * 1000;
    m->attempts_done++;
    em_error_clear(&m->last_attempt_err);
    em__mqtt_resubscribe(m);
    pthread_cond_broadcast(&m->cond);
    pthread_mutex_unlock(&m->lock);
    log_event(EM_LOG_DEBUG, m, "connected", NULL);
    em__mqtt_emit(m, EM_MQTT_CONNECTED, NULL);
    errno = saved;
}

static void on_disconnect(struct mosquitto *mosq, void *ud, int rc, const mosquitto_property *props)
{
    (void)mosq;
    (void)rc;
    (void)props;
    em_mqtt_t *m = ud;
    /* Publishers see it at once; the driver does the rest when
     * mosquitto_loop returns. */
    atomic_store_explicit(&m->connected, false, memory_order_release);
}

static void on_log(struct mosquitto *mosq, void *ud, int level, const char *str)
{
    (void)mosq;
    (void)level;
    em_mqtt_t *m = ud;
    if (!em_log_enabled(EM_LOG_DEBUG) || str == NULL)
        return;
    em_log_field_t f[] = {EM_LOG_STR("client_id", m->client_id), EM_LOG_STR("libmosquitto", str)};
    em_log(EM_LOG_DEBUG, "mqtt", NULL, "libmosquitto", f, 2);
}

/* ---------------------------------------------------------------------- */
/* The driver                                                              */

/* Starts an attempt; state is already CONNECTING. Driver only, no lock. */
static void attempt_start(em_mqtt_t *m)
{
    m->connack_rc = -1;
    m->aborted = false;
    em__mqtt_tls_diag_reset(m);
    int protocol;
    pthread_mutex_lock(&m->lock);
    protocol = m->protocol;
    pthread_mutex_unlock(&m->lock);
    mosquitto_int_option(m->mosq, MOSQ_OPT_PROTOCOL_VERSION,
                         protocol == 5 ? MQTT_PROTOCOL_V5 : MQTT_PROTOCOL_V311);
    sigpipe_guard_t g;
    sigpipe_block(&g);
    errno = 0;
    int rc = mosquitto_connect_async(m->mosq, m->url.host, m->url.port, m->keepalive_s);
    int saved = errno;
    sigpipe_restore(&g);
    if (rc != MOSQ_ERR_SUCCESS || mosquitto_socket(m->mosq) < 0)
        connection_closed(m, rc != MOSQ_ERR_SUCCESS ? rc : MOSQ_ERR_NO_CONN, saved);
}

/* Cuts the current attempt or connection short: libmosquitto sees the socket
 * fail on its next read and closes it itself. */
static void abort_connection(em_mqtt_t *m)
{
    int fd = mosquitto_socket(m->mosq);
    m->aborted = true;
    if (fd < 0)
        return;
    if (shutdown(fd, SHUT_RDWR) != 0 && errno == ENOTCONN) {
        /* Still connecting: dissolve the association instead. */
        struct sockaddr sa;
        memset(&sa, 0, sizeof(sa));
        sa.sa_family = AF_UNSPEC;
        (void)connect(fd, &sa, sizeof(sa));
    }
}

/* Runs the network once while a socket is open. Driver only. */
static void io_step(em_mqtt_t *m, int timeout_ms)
{
    pthread_mutex_lock(&m->lock);
    em__mqtt_state_t st = m->state;
    int64_t deadline = m->attempt_deadline_ms;
    pthread_mutex_unlock(&m->lock);
    if (st == EM__MQTT_CONNECTING) {
        int64_t left = deadline - em_mono_ms();
        if (left <= 0 && !m->aborted)
            abort_connection(m);
        /* Wake up in time to notice the deadline. */
        if (left < timeout_ms)
            timeout_ms = left > 0 ? (int)left : 0;
        if (timeout_ms > 200)
            timeout_ms = 200;
    }
    sigpipe_guard_t g;
    sigpipe_block(&g);
    errno = 0;
    int rc = mosquitto_loop(m->mosq, timeout_ms, 1);
    int saved = errno;
    sigpipe_restore(&g);
    if (mosquitto_socket(m->mosq) < 0) {
        connection_closed(m, rc, saved);
        return;
    }
    if (rc != MOSQ_ERR_SUCCESS && rc != MOSQ_ERR_NO_CONN) {
        /* The socket is still open but select failed: do not spin. */
        struct timespec ts = {0, 10 * 1000000L};
        nanosleep(&ts, NULL);
    }
}

/* One step of the network: waits, starts an attempt, or runs the socket.
 * Returns within about timeout_ms. Driver only, no lock held. */
static void drive(em_mqtt_t *m, int timeout_ms)
{
    pthread_mutex_lock(&m->lock);
    em__mqtt_state_t st = m->state;
    if (st == EM__MQTT_CONNECTING || st == EM__MQTT_CONNECTED) {
        pthread_mutex_unlock(&m->lock);
        io_step(m, timeout_ms);
        return;
    }
    if (!m->auto_connect || m->stop) {
        if (st == EM__MQTT_WAITING)
            m->state = EM__MQTT_IDLE;
        if (!m->stop)
            cond_wait_ms(&m->cond, &m->lock, timeout_ms);
        pthread_mutex_unlock(&m->lock);
        return;
    }
    int64_t now = em_mono_ms();
    if (st == EM__MQTT_WAITING && !m->attempt_now && now < m->next_attempt_ms) {
        int64_t wait = m->next_attempt_ms - now;
        cond_wait_ms(&m->cond, &m->lock, wait < timeout_ms ? wait : timeout_ms);
        pthread_mutex_unlock(&m->lock);
        return;
    }
    m->attempt_now = false;
    m->state = EM__MQTT_CONNECTING;
    m->attempt_deadline_ms = now + EM__MQTT_CONNECT_TIMEOUT_MS;
    pthread_mutex_unlock(&m->lock);
    attempt_start(m);
}

/* Closes whatever socket is still open, at once (the network thread on its
 * way out, or a disconnect whose DISCONNECT did not go through). */
static void close_now(em_mqtt_t *m)
{
    for (int i = 0; i < 50 && mosquitto_socket(m->mosq) >= 0; i++) {
        abort_connection(m);
        io_step(m, 20);
    }
}

static void *thread_main(void *arg)
{
    em_mqtt_t *m = arg;
    tl_network_thread = true;
    deliver_deferred(m);
    for (;;) {
        pthread_mutex_lock(&m->lock);
        bool stop = m->stop;
        pthread_mutex_unlock(&m->lock);
        if (stop)
            break;
        drive(m, 1000);
    }
    close_now(m);
    return NULL;
}

/* ---------------------------------------------------------------------- */
/* Creation                                                                */

static bool client_id_char_ok(char c)
{
    /* Printable ASCII without space and without the characters that mean
     * something in topics (ACL patterns may substitute the client id). */
    return c > 0x20 && c < 0x7f && c != '+' && c != '#' && c != '/';
}

static em_err_t make_client_id(const em_mqtt_options_t *o, char *out, em_error_t *err)
{
    if (o->client_id != NULL) {
        size_t n = strnlen(o->client_id, EM_MQTT_CLIENT_ID_MAX + 1);
        if (n == 0 || n > EM_MQTT_CLIENT_ID_MAX)
            return em_error_set(err, EM_ERR_CONFIGURATION, EM_SEV_HIGH, "client_id",
                                "client_id must be 1 to %d bytes", EM_MQTT_CLIENT_ID_MAX);
        for (size_t i = 0; i < n; i++) {
            if (!client_id_char_ok(o->client_id[i]))
                return em_error_set(err, EM_ERR_CONFIGURATION, EM_SEV_HIGH, "client_id",
                                    "client_id holds a space, a control character or one of "
                                    "+ # /");
        }
        memcpy(out, o->client_id, n);
        out[n] = '\0';
        return EM_OK;
    }
    const char *prefix = o->client_id_prefix != NULL ? o->client_id_prefix : "emiot-";
    size_t plen = strnlen(prefix, EM_MQTT_CLIENT_ID_MAX + 1);
    if (plen > EM_MQTT_CLIENT_ID_MAX - 16)
        return em_error_set(err, EM_ERR_CONFIGURATION, EM_SEV_HIGH, "client_id_prefix",
                            "client_id_prefix is longer than %d bytes", EM_MQTT_CLIENT_ID_MAX - 16);
    for (size_t i = 0; i < plen; i++) {
        if (!client_id_char_ok(prefix[i]))
            return em_error_set(err, EM_ERR_CONFIGURATION, EM_SEV_HIGH, "client_id_prefix",
                                "client_id_prefix holds a space, a control character or one "
                                "of + # /");
    }
    unsigned char r[8];
    if (RAND_bytes(r, sizeof(r)) != 1)
        return em_error_set(err, EM_ERR_INTERNAL, EM_SEV_HIGH, NULL, "the random generator failed");
    static const char hex[] = "0123456789abcdef";
    memcpy(out, prefix, plen);
    for (size_t i = 0; i < sizeof(r); i++) {
        out[plen + 2 * i] = hex[r[i] >> 4];
        out[plen + 2 * i + 1] = hex[r[i] & 15];
    }
    out[plen + 16] = '\0';
    return EM_OK;
}

static em_err_t check_options(const em_mqtt_options_t *o, int *keepalive, int *rmin, int *rmax,
                              int *protocol, em_error_t *err)
{
    /* Zero means "the default", for callers that zero the structure instead
     * of calling em_mqtt_options_init. */
    *keepalive = o->keepalive_s != 0 ? o->keepalive_s : 30;
    *rmin = o->reconnect_min_s != 0 ? o->reconnect_min_s : 1;
    *rmax = o->reconnect_max_s != 0 ? o->reconnect_max_s : 30;
    *protocol = o->protocol != 0 ? o->protocol : 5;
    if (*keepalive < 5 || *keepalive > 65535)
        return em_error_set(err, EM_ERR_CONFIGURATION, EM_SEV_HIGH, "keepalive_s",
                            "keepalive_s must be 5 to 65535");
    if (*rmin < 1 || *rmin > 3600)
        return em_error_set(err, EM_ERR_CONFIGURATION, EM_SEV_HIGH, "reconnect_min_s",
                            "reconnect_min_s must be 1 to 3600");
    if (*rmax < *rmin || *rmax > 3600)
        return em_error_set(err, EM_ERR_CONFIGURATION, EM_SEV_HIGH, "reconnect_max_s",
                            "reconnect_max_s must be reconnect_min_s to 3600");
    if (*protocol != 4 && *protocol != 5)
        return em_error_set(err, EM_ERR_CONFIGURATION, EM_SEV_HIGH, "protocol",
                            "protocol must be 5 (MQTT 5) or 4 (MQTT 3.1.1)");
    if (o->max_inflight > 65535)
        return em_error_set(err, EM_ERR_CONFIGURATION, EM_SEV_HIGH, "max_inflight",
                            "max_inflight must be 0 (unlimited) to 65535");
    if (!o->clean_session && o->client_id == NULL)
        return em_error_set(err, EM_ERR_CONFIGURATION, EM_SEV_HIGH, "clean_session",
                            "a persistent session (clean_session false) needs a fixed client_id");
    if (o->username != NULL) {
        size_t n = strnlen(o->username, EM__MQTT_USERNAME_MAX + 1);
        if (n == 0 || n > EM__MQTT_USERNAME_MAX ||
            mosquitto_validate_utf8(o->username, (int)n) != MOSQ_ERR_SUCCESS)
            return em_error_set(err, EM_ERR_CONFIGURATION, EM_SEV_HIGH, "username",
                                "username must be 1 to %d bytes of UTF-8", EM__MQTT_USERNAME_MAX);
    }
    if (o->username == NULL && (o->password_env != NULL || o->password_file != NULL))
        return em_error_set(err, EM_ERR_CONFIGURATION, EM_SEV_HIGH, "username",
                            "a password needs a username");
    if (o->will_topic != NULL) {
        size_t n = strnlen(o->will_topic, EM__MQTT_FILTER_MAX + 1);
        if (n == 0 || n > EM__MQTT_FILTER_MAX ||
            mosquitto_validate_utf8(o->will_topic, (int)n) != MOSQ_ERR_SUCCESS ||
            mosquitto_pub_topic_check2(o->will_topic, n) != MOSQ_ERR_SUCCESS)
            return em_error_set(err, EM_ERR_CONFIGURATION, EM_SEV_HIGH, "will_topic",
                                "will_topic must be a topic without wildcards, 1 to %d bytes",
                                EM__MQTT_FILTER_MAX);
        if (o->will_qos < 0 || o->will_qos > 2)
            return em_error_set(err, EM_ERR_CONFIGURATION, EM_SEV_HIGH, "will_qos",
                                "will_qos must be 0, 1 or 2");
        if (o->will_payload != NULL && strnlen(o->will_payload, 65536) > 65535)
            return em_error_set(err, EM_ERR_CONFIGURATION, EM_SEV_HIGH, "will_payload",
                                "will_payload is longer than 65535 bytes");
    }
    return EM_OK;
}

static em_err_t mosq_setup_error(int rc, const char *what, em_error_t *err)
{
    if (rc == MOSQ_ERR_NOMEM)
        return em_error_set(err, EM_ERR_NOMEM, EM_SEV_HIGH, NULL, "out of memory (%s)", what);
    return em_error_set(err, EM_ERR_INTERNAL, EM_SEV_HIGH, NULL, "libmosquitto refused %s: %s",
                        what, mosquitto_strerror(rc));
}

static em_err_t mosq_setup(em_mqtt_t *m, const em_mqtt_options_t *o, em_error_t *err)
{
    int rc = mosquitto_threaded_set(m->mosq, true);
    if (rc == MOSQ_ERR_SUCCESS)
        rc = mosquitto_int_option(m->mosq, MOSQ_OPT_PROTOCOL_VERSION,
                                  m->protocol == 5 ? MQTT_PROTOCOL_V5 : MQTT_PROTOCOL_V311);
    if (rc != MOSQ_ERR_SUCCESS)
        return mosq_setup_error(rc, "the protocol options", err);
    /* Outgoing QoS 1/2 in flight (an MQTT 5 broker may lower it in its
     * CONNACK). libmosquitto 2.0 walks its whole in-flight list on every
     * publish and every acknowledgement, so the window is what bounds that
     * cost: on a local mosquitto, 10,000 QoS 1 publishes go out about twice as
     * fast with 100-500 in flight as with 65535. */
    rc = mosquitto_int_option(m->mosq, MOSQ_OPT_SEND_MAXIMUM,
                              o->max_inflight == 0 ? EM_MQTT_INFLIGHT_DEFAULT
                                                   : (int)o->max_inflight);
    /* Incoming: let the broker send as many unacknowledged QoS 1/2 messages
     * as it likes (libmosquitto's default of 20 would throttle ingestion). */
    if (rc == MOSQ_ERR_SUCCESS)
        rc = mosquitto_int_option(m->mosq, MOSQ_OPT_RECEIVE_MAXIMUM, 65535);
    /* Commands are small and latency matters more than packet count. */
    if (rc == MOSQ_ERR_SUCCESS)
        rc = mosquitto_int_option(m->mosq, MOSQ_OPT_TCP_NODELAY, 1);
    if (rc != MOSQ_ERR_SUCCESS)
        return mosq_setup_error(rc, "the flow control options", err);

    if (o->will_topic != NULL) {
        const char *p = o->will_payload != NULL ? o->will_payload : "";
        rc = mosquitto_will_set(m->mosq, o->will_topic, (int)strlen(p), p, o->will_qos,
                                o->will_retain);
        if (rc != MOSQ_ERR_SUCCESS)
            return rc == MOSQ_ERR_NOMEM
                       ? mosq_setup_error(rc, "the last will", err)
                       : em_error_set(err, EM_ERR_CONFIGURATION, EM_SEV_HIGH, "will_topic",
                                      "invalid last will: %s", mosquitto_strerror(rc));
    }

    if (o->username != NULL) {
        char pw[EM_MQTT_PASSWORD_MAX + 1];
        size_t pwlen = 0;
        em_err_t erc = em__mqtt_password_read(o, pw, sizeof(pw), &pwlen, err);
        if (erc != EM_OK)
            return erc;
        rc = mosquitto_username_pw_set(m->mosq, o->username, pwlen > 0 ? pw : NULL);
        OPENSSL_cleanse(pw, sizeof(pw));
        if (rc != MOSQ_ERR_SUCCESS)
            return mosq_setup_error(rc, "the username and password", err);
    }

    if (m->url.tls) {
        m->ssl_ctx = em__mqtt_tls_ctx_new(m, o, err);
        if (m->ssl_ctx == NULL)
            return err != NULL ? err->code : EM_ERR_TLS;
        rc = mosquitto_void_option(m->mosq, MOSQ_OPT_SSL_CTX, m->ssl_ctx);
        if (rc == MOSQ_ERR_SUCCESS)
            rc = mosquitto_int_option(m->mosq, MOSQ_OPT_SSL_CTX_WITH_DEFAULTS, 0);
        if (rc != MOSQ_ERR_SUCCESS)
            return mosq_setup_error(rc, "the TLS context", err);
        /* libmosquitto's own check is off with a context of ours; OpenSSL
         * checks the host name (tls.c). Stated anyway, never relaxed. */
        mosquitto_tls_insecure_set(m->mosq, false);
    }

    mosquitto_connect_v5_callback_set(m->mosq, on_connect);
    mosquitto_disconnect_v5_callback_set(m->mosq, on_disconnect);
    mosquitto_message_callback_set(m->mosq, on_message);
    mosquitto_publish_v5_callback_set(m->mosq, em__mqtt_on_publish);
    mosquitto_subscribe_callback_set(m->mosq, em__mqtt_on_subscribe);
    /* libmosquitto formats a line for every packet when a log callback is
     * set: only pay for it when debug logging is on. */
    if (em_log_enabled(EM_LOG_DEBUG))
        mosquitto_log_callback_set(m->mosq, on_log);
    return EM_OK;
}

em_mqtt_t *em_mqtt_new(const em_mqtt_options_t *opts, const em_mqtt_callbacks_t *cbs,
                       em_error_t *err)
{
    em_mqtt_lib_init();
    if (opts == NULL) {
        em_error_set(err, EM_ERR_CONFIGURATION, EM_SEV_HIGH, NULL, "no MQTT options given");
        return NULL;
    }
    em__mqtt_url_t url;
    if (em__mqtt_url_parse(opts->url, &url, err) != EM_OK ||
        em__mqtt_url_check_plain(&url, opts->allow_plain, err) != EM_OK)
        return NULL;
    if (!url.tls && (opts->ca_file != NULL || opts->ca_path != NULL || opts->cert_file != NULL ||
                     opts->key_file != NULL)) {
        em_error_set(err, EM_ERR_CONFIGURATION, EM_SEV_HIGH, "url",
                     "TLS files are set but the URL is plain mqtt://; use mqtts://");
        return NULL;
    }
    int keepalive, rmin, rmax, protocol;
    if (check_options(opts, &keepalive, &rmin, &rmax, &protocol, err) != EM_OK)
        return NULL;

    em_mqtt_t *m = calloc(1, sizeof(*m));
    if (m == NULL) {
        em_error_set(err, EM_ERR_NOMEM, EM_SEV_HIGH, NULL, "out of memory");
        return NULL;
    }
    if (make_client_id(opts, m->client_id, err) != EM_OK) {
        free(m);
        return NULL;
    }
    if (pthread_mutex_init(&m->lock, NULL) != 0) {
        free(m);
        em_error_set(err, EM_ERR_INTERNAL, EM_SEV_HIGH, NULL, "cannot create a mutex");
        return NULL;
    }
    if (pthread_mutex_init(&m->pub_lock, NULL) != 0) {
        pthread_mutex_destroy(&m->lock);
        free(m);
        em_error_set(err, EM_ERR_INTERNAL, EM_SEV_HIGH, NULL, "cannot create a mutex");
        return NULL;
    }
    if (init_cond(&m->cond) != 0) {
        pthread_mutex_destroy(&m->pub_lock);
        pthread_mutex_destroy(&m->lock);
        free(m);
        em_error_set(err, EM_ERR_INTERNAL, EM_SEV_HIGH, NULL, "cannot create a condition");
        return NULL;
    }
    if (init_cond(&m->pub_cond) != 0) {
        pthread_cond_destroy(&m->cond);
        pthread_mutex_destroy(&m->pub_lock);
        pthread_mutex_destroy(&m->lock);
        free(m);
        em_error_set(err, EM_ERR_INTERNAL, EM_SEV_HIGH, NULL, "cannot create a condition");
        return NULL;
    }
    m->url = url;
    if (cbs != NULL)
        m->cbs = *cbs;
    m->keepalive_s = keepalive;
    m->reconnect_min_s = rmin;
    m->reconnect_max_s = rmax;
    m->protocol = protocol;
    m->backoff_ms = (int64_t)rmin * 1000;
    m->state = EM__MQTT_IDLE;
    m->connack_rc = -1;
    atomic_init(&m->connected, false);
    atomic_init(&m->negotiated, 0);

    m->mosq = mosquitto_new(m->client_id, opts->clean_session, m);
    if (m->mosq == NULL) {
        em_error_set(err, errno == ENOMEM ? EM_ERR_NOMEM : EM_ERR_INTERNAL, EM_SEV_HIGH, NULL,
                     "cannot create the MQTT client");
        em_mqtt_free(m);
        return NULL;
    }
    if (mosq_setup(m, opts, err) != EM_OK) {
        em_mqtt_free(m);
        return NULL;
    }
    return m;
}

void em_mqtt_free(em_mqtt_t *m)
{
    if (m == NULL)
        return;
    if (m->mosq != NULL) {
        em_error_t e;
        if (em_mqtt_disconnect(m, &e) == EM_ERR_STATE) {
            /* Called from a callback on the network thread: freeing now would
             * pull the memory from under it. Leak rather than crash. */
            return;
        }
        mosquitto_destroy(m->mosq);
    }
    /* libmosquitto took its own reference to the context. */
    SSL_CTX_free(m->ssl_ctx);
    pthread_mutex_lock(&m->lock);
    em__mqtt_subs_free(m);
    pthread_mutex_unlock(&m->lock);
    deferred_free(m);
    pthread_cond_destroy(&m->pub_cond);
    pthread_cond_destroy(&m->cond);
    pthread_mutex_destroy(&m->pub_lock);
    pthread_mutex_destroy(&m->lock);
    free(m);
}

/* ---------------------------------------------------------------------- */
/* Connect, start, loop, disconnect                                        */

static em_err_t state_error(em_error_t *err, const char *msg)
{
    return em_error_set(err, EM_ERR_STATE, EM_SEV_MEDIUM, NULL, "%s", msg);
}

static em_err_t copy_attempt_error(em_mqtt_t *m, em_error_t *err)
{
    em_err_t code =
        m->last_attempt_err.code != EM_OK ? m->last_attempt_err.code : EM_ERR_CONNECTION;
    if (err != NULL) {
        *err = m->last_attempt_err;
        err->code = code;
    }
    return code;
}

/* em_mqtt_connect while the network thread runs: ask it for an attempt now
 * and wait for the outcome. */
static em_err_t connect_threaded(em_mqtt_t *m, int timeout_ms, em_error_t *err)
{
    int64_t deadline = em_mono_ms() + timeout_ms;
    uint64_t start = m->attempts_done;
    if (m->state == EM__MQTT_WAITING || m->state == EM__MQTT_IDLE) {
        m->attempt_now = true;
        m->backoff_ms = (int64_t)m->reconnect_min_s * 1000;
    }
    pthread_cond_broadcast(&m->cond);
    em_err_t rc;
    for (;;) {
        if (m->state == EM__MQTT_CONNECTED) {
            rc = EM_OK;
            break;
        }
        if (m->attempts_done > start && m->state != EM__MQTT_CONNECTING) {
            rc = copy_attempt_error(m, err);
            break;
        }
        int64_t left = deadline - em_mono_ms();
        if (left <= 0) {
            rc = em_error_set(err, EM_ERR_TIMEOUT, EM_SEV_HIGH, "url",
                              "not connected to %s:%d within %d ms", m->url.host, m->url.port,
                              timeout_ms);
            break;
        }
        cond_wait_ms(&m->cond, &m->lock, left);
    }
    pthread_mutex_unlock(&m->lock);
    return rc;
}

em_err_t em_mqtt_connect(em_mqtt_t *m, int timeout_ms, em_error_t *err)
{
    if (m == NULL || timeout_ms <= 0)
        return em_error_set(err, EM_ERR_INVALID_ARGUMENT, EM_SEV_MEDIUM, NULL,
                            "a client and a positive timeout are required");
    pthread_mutex_lock(&m->lock);
    if (m->state == EM__MQTT_CONNECTED) {
        pthread_mutex_unlock(&m->lock);
        return EM_OK;
    }
    if (m->thread_running && pthread_equal(pthread_self(), m->thread)) {
        pthread_mutex_unlock(&m->lock);
        return state_error(err, "em_mqtt_connect cannot wait inside a callback");
    }
    m->auto_connect = true;
    m->closing = false;
    if (m->thread_running)
        return connect_threaded(m, timeout_ms, err); /* unlocks */
    if (m->driving) {
        pthread_mutex_unlock(&m->lock);
        return state_error(err, "another call is driving the network");
    }
    m->driving = true;
    int64_t deadline = em_mono_ms() + timeout_ms;
    uint64_t start = m->attempts_done;
    bool begin = m->state != EM__MQTT_CONNECTING;
    if (begin) {
        m->state = EM__MQTT_CONNECTING;
        m->attempt_now = false;
        m->attempt_deadline_ms = deadline;
    }
    pthread_mutex_unlock(&m->lock);

    /* Without a thread this call drives the network itself; callbacks wait
     * for the next em_mqtt_loop, and a failure is returned, not reported. */
    m->defer = true;
    m->quiet = true;
    if (begin)
        attempt_start(m);
    em_err_t rc;
    for (;;) {
        pthread_mutex_lock(&m->lock);
        em__mqtt_state_t st = m->state;
        uint64_t done = m->attempts_done;
        if (st == EM__MQTT_CONNECTED) {
            pthread_mutex_unlock(&m->lock);
            rc = EM_OK;
            break;
        }
        if (done > start && st != EM__MQTT_CONNECTING) {
            rc = copy_attempt_error(m, err);
            pthread_mutex_unlock(&m->lock);
            break;
        }
        int64_t left = deadline - em_mono_ms();
        if (left <= 0 && st != EM__MQTT_CONNECTING) {
            pthread_mutex_unlock(&m->lock);
            rc = em_error_set(err, EM_ERR_TIMEOUT, EM_SEV_HIGH, "url",
                              "not connected to %s:%d within %d ms", m->url.host, m->url.port,
                              timeout_ms);
            break;
        }
        if (left <= 0)
            m->attempt_deadline_ms = deadline; /* io_step aborts the attempt */
        pthread_mutex_unlock(&m->lock);
        drive(m, left > 100 ? 100 : (left > 0 ? (int)left : 0));
    }
    m->quiet = false;
    m->defer = false;
    pthread_mutex_lock(&m->lock);
    m->driving = false;
    pthread_mutex_unlock(&m->lock);
    return rc;
}

em_err_t em_mqtt_start(em_mqtt_t *m, em_error_t *err)
{
    if (m == NULL)
        return em_error_set(err, EM_ERR_INVALID_ARGUMENT, EM_SEV_MEDIUM, NULL, "no client");
    pthread_mutex_lock(&m->lock);
    if (m->thread_running) {
        pthread_mutex_unlock(&m->lock);
        return state_error(err, "the network thread is already running");
    }
    if (m->driving) {
        pthread_mutex_unlock(&m->lock);
        return state_error(err, "another call is driving the network");
    }
    m->auto_connect = true;
    m->closing = false;
    m->stop = false;
    m->thread_running = true;

    /* The thread takes no process signal: they belong to the program's own
     * threads, and SIGPIPE from a write on a closed socket stays harmless. */
    sigset_t all, old;
    sigfillset(&all);
    pthread_sigmask(SIG_SETMASK, &all, &old);
    int rc = pthread_create(&m->thread, NULL, thread_main, m);
    pthread_sigmask(SIG_SETMASK, &old, NULL);
    if (rc != 0) {
        m->thread_running = false;
        pthread_mutex_unlock(&m->lock);
        return em_error_set(err, EM_ERR_INTERNAL, EM_SEV_HIGH, NULL,
                            "cannot start the network thread: %s", strerror(rc));
    }
    pthread_mutex_unlock(&m->lock);
    return EM_OK;
}

em_err_t em_mqtt_loop(em_mqtt_t *m, int timeout_ms, em_error_t *err)
{
    if (m == NULL || timeout_ms < 0)
        return em_error_set(err, EM_ERR_INVALID_ARGUMENT, EM_SEV_MEDIUM, NULL,
                            "a client and a timeout of 0 or more are required");
    pthread_mutex_lock(&m->lock);
    if (m->thread_running) {
        pthread_mutex_unlock(&m->lock);
        return state_error(err, "the network thread is running");
    }
    if (m->driving) {
        pthread_mutex_unlock(&m->lock);
        return state_error(err, "another call is driving the network");
    }
    m->driving = true;
    pthread_mutex_unlock(&m->lock);

    deliver_deferred(m);
    drive(m, timeout_ms);

    pthread_mutex_lock(&m->lock);
    m->driving = false;
    pthread_mutex_unlock(&m->lock);
    return EM_OK;
}

/* Waits (threaded) or drives (no thread) until pred holds or ms pass. */
static bool state_is_open(em_mqtt_t *m)
{
    return m->state == EM__MQTT_CONNECTED || m->state == EM__MQTT_CONNECTING;
}

static void wait_closed(em_mqtt_t *m, bool threaded, int64_t ms)
{
    int64_t deadline = em_mono_ms() + ms;
    pthread_mutex_lock(&m->lock);
    for (;;) {
        int64_t left = deadline - em_mono_ms();
        if (!state_is_open(m) || left <= 0)
            break;
        if (threaded) {
            cond_wait_ms(&m->cond, &m->lock, left);
        } else {
            pthread_mutex_unlock(&m->lock);
            drive(m, left > 50 ? 50 : (int)left);
            pthread_mutex_lock(&m->lock);
        }
    }
    pthread_mutex_unlock(&m->lock);
}

static unsigned flush_pending(em_mqtt_t *m, bool threaded, int64_t ms)
{
    int64_t deadline = em_mono_ms() + ms;
    pthread_mutex_lock(&m->pub_lock);
    for (;;) {
        int64_t left = deadline - em_mono_ms();
        if (m->pending == 0 || left <= 0 || !atomic_load(&m->connected))
            break;
        if (threaded) {
            cond_wait_ms(&m->pub_cond, &m->pub_lock, left);
        } else {
            pthread_mutex_unlock(&m->pub_lock);
            drive(m, left > 50 ? 50 : (int)left);
            pthread_mutex_lock(&m->pub_lock);
        }
    }
    unsigned left = m->pending;
    pthread_mutex_unlock(&m->pub_lock);
    return left;
}

em_err_t em_mqtt_disconnect(em_mqtt_t *m, em_error_t *err)
{
    if (m == NULL)
        return em_error_set(err, EM_ERR_INVALID_ARGUMENT, EM_SEV_MEDIUM, NULL, "no client");
    pthread_mutex_lock(&m->lock);
    bool threaded = m->thread_running;
    if (threaded && pthread_equal(pthread_self(), m->thread)) {
        pthread_mutex_unlock(&m->lock);
        return state_error(err, "em_mqtt_disconnect cannot run inside a callback");
    }
    if (!threaded && m->driving) {
        pthread_mutex_unlock(&m->lock);
        return state_error(err, "em_mqtt_disconnect cannot run inside a callback or while "
                                "another call drives the network");
    }
    m->auto_connect = false;
    m->attempt_now = false;
    if (!threaded)
        m->driving = true;
    em__mqtt_state_t st = m->state;
    pthread_cond_broadcast(&m->cond);
    pthread_mutex_unlock(&m->lock);

    if (!threaded)
        m->defer = true;
    unsigned unacked = 0;
    if (st == EM__MQTT_CONNECTED) {
        unacked = flush_pending(m, threaded, EM__MQTT_FLUSH_MS);
        pthread_mutex_lock(&m->lock);
        m->closing = true;
        pthread_mutex_unlock(&m->lock);
        if (mosquitto_disconnect(m->mosq) == MOSQ_ERR_SUCCESS)
            wait_closed(m, threaded, EM__MQTT_CLOSE_MS);
    } else if (st == EM__MQTT_CONNECTING) {
        pthread_mutex_lock(&m->lock);
        m->closing = true;
        pthread_mutex_unlock(&m->lock);
    }
    if (threaded) {
        /* The thread closes whatever is still open on its way out. */
        pthread_mutex_lock(&m->lock);
        m->stop = true;
        pthread_cond_broadcast(&m->cond);
        pthread_mutex_unlock(&m->lock);
        pthread_join(m->thread, NULL);
        pthread_mutex_lock(&m->lock);
        m->thread_running = false;
        m->stop = false;
        pthread_mutex_unlock(&m->lock);
    } else {
        close_now(m);
        m->defer = false;
    }
    pthread_mutex_lock(&m->lock);
    m->state = EM__MQTT_IDLE;
    m->closing = false;
    if (!threaded)
        m->driving = false;
    pthread_mutex_unlock(&m->lock);
    atomic_store(&m->connected, false);

    if (unacked > 0)
        return em_error_set(err, EM_ERR_TIMEOUT, EM_SEV_MEDIUM, NULL,
                            "disconnected with %u QoS 1/2 messages not acknowledged", unacked);
    return EM_OK;
}

bool em_mqtt_is_connected(const em_mqtt_t *m)
{
    if (m == NULL)
        return false;
    return atomic_load_explicit(&((em_mqtt_t *)m)->connected, memory_order_acquire);
}

const char *em_mqtt_client_id(const em_mqtt_t *m)
{
    return m != NULL ? m->client_id : NULL;
}

int em_mqtt_protocol(const em_mqtt_t *m)
{
    if (m == NULL)
        return 0;
    return atomic_load_explicit(&((em_mqtt_t *)m)->negotiated, memory_order_acquire);
}

const char *em__mqtt_tls_version(em_mqtt_t *m)
{
    return m->tls_version;
}
