/*
 * emiot - mqtt/driver.c: the one loop that runs the network, on the network
 * thread or in the caller of em_mqtt_connect / em_mqtt_loop / em_mqtt_disconnect.
 *
 * Why emiot runs its own network thread instead of mosquitto_loop_start: the
 * thread and em_mqtt_loop share this driver, so both reconnect the same way,
 * with a backoff that really doubles (libmosquitto's "exponential" delay grows
 * as n squared, and its thread stops for good on a TLS or protocol error),
 * report EM_MQTT_RECONNECTING before each retry, time out an attempt that
 * gets no CONNACK, and fall back from MQTT 5 to 3.1.1. The socket is run
 * with poll() and libmosquitto's loop_read/loop_write/loop_misc rather than
 * mosquitto_loop, whose select() cannot take a descriptor of 1024 or more.
 * libmosquitto stays in threaded mode (mosquitto_threaded_set), so publish
 * and subscribe are safe from any thread while the driver runs the socket.
 *
 * States: IDLE -> CONNECTING (attempt_start) -> CONNECTED (on_connect) or
 * WAITING (connection_closed schedules a retry) -> CONNECTING ... and back to
 * IDLE when the client disconnects.
 */
#include <errno.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include <openssl/rand.h>

#include "emiot/clock.h"
#include "emiot/log.h"
#include "mqtt/mqtt_internal.h"

/* Set on the network thread, whose signals are all blocked. */
static _Thread_local bool tl_network_thread;

/* Waits on cond for at most ms milliseconds (CLOCK_MONOTONIC). */
void em__mqtt_cond_wait_ms(pthread_cond_t *cond, pthread_mutex_t *mu, int64_t ms)
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
    if (rc == MOSQ_ERR_CONN_LOST ||
        (rc == MOSQ_ERR_ERRNO && (saved_errno == EPROTO || saved_errno == ECONNRESET))) {
        if (em__mqtt_tls_explain_early_close(m, err))
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
    em__mqtt_outbox_lost_qos0(m);

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

void em__mqtt_on_connect(struct mosquitto *mosq, void *ud, int rc, int flags,
                         const mosquitto_property *props)
{
    (void)mosq;
    (void)flags;
    em_mqtt_t *m = ud;
    int saved = errno;
    m->connack_rc = rc;
    if (rc != 0) {
        /* Refused: libmosquitto closes the socket and the driver reports
         * the refusal from connection_closed. */
        errno = saved;
        return;
    }
    em__mqtt_outbox_limits(m, props);
    em__mqtt_tls_buffer_io(m);
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

void em__mqtt_on_disconnect(struct mosquitto *mosq, void *ud, int rc,
                            const mosquitto_property *props)
{
    (void)mosq;
    (void)rc;
    (void)props;
    em_mqtt_t *m = ud;
    /* Publishers see it at once; the driver does the rest (connection_closed)
     * once libmosquitto has closed the socket. */
    atomic_store_explicit(&m->connected, false, memory_order_release);
}

void em__mqtt_on_log(struct mosquitto *mosq, void *ud, int level, const char *str)
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
void em__mqtt_attempt_start(em_mqtt_t *m)
{
    m->connack_rc = -1;
    m->aborted = false;
    m->lowat_fd = -1; /* a new socket, perhaps with the old one's number */
    m->read_more = false;
    m->rx_busy = false;
    m->rx_window_count = 0;
    m->rx_messages = 0;
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
void em__mqtt_abort(em_mqtt_t *m)
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

void em__mqtt_wake(em_mqtt_t *m)
{
    /* Pairs with the fence in poll_once: either the driver sees the packet
     * just queued before it sleeps, or this sees it polling and wakes it. */
    atomic_thread_fence(memory_order_seq_cst);
    if (atomic_load_explicit(&m->polling, memory_order_relaxed))
        em__mqtt_wake_always(m);
}

void em__mqtt_wake_always(em_mqtt_t *m)
{
    uint64_t one = 1;
    if (write(m->wake_fd, &one, sizeof(one)) < 0) {
        /* EAGAIN: the counter is already non-zero, a wake-up is pending. */
    }
}

/* Receive batching. While many QoS 1/2 publishes await their PUBACK (4
 * bytes each, or more), waking the driver for every one of them costs a
 * poll() and a context switch per message. SO_RCVLOWAT asks the kernel to
 * report the socket readable only once a few are there: a quarter of those in
 * flight, at most 16, so the window keeps flowing. Anything else that arrives
 * (a message, a larger packet, the broker closing) passes the mark at once or
 * wakes poll anyway, and a short timeout bounds the wait should the
 * acknowledgements stall (a PINGRESP alone does not pass the mark). */
#define BATCH_ACKS_MAX 16
#define BATCH_WAIT_MS  5

/* The same for a busy stream of messages (a daemon ingesting statuses):
 * woken for each message, the driver would pay a poll() and a read burst per
 * message while the broker, on the other core, sends them one by one. Once
 * the last window brought RX_BUSY_COUNT messages or more (2,000/s), poll
 * waits for RX_LOWAT bytes (a dozen or more status messages) or RX_WAIT_MS,
 * whichever comes first: at most that much latency, and only under load. */
#define RX_LOWAT      16384
#define RX_WAIT_MS    2
#define RX_WINDOW_MS  50
#define RX_BUSY_COUNT 100

/* Sets the socket's low-water mark for the acknowledgements awaited and the
 * stream of messages; returns whether it is above one byte. m->lowat -1:
 * the socket refused it. */
static bool set_lowat(em_mqtt_t *m, int fd, bool connecting)
{
    if (fd == m->lowat_fd && m->lowat < 0)
        return false;
    unsigned acks = atomic_load_explicit(&m->inflight_count, memory_order_relaxed) / 4;
    if (acks > BATCH_ACKS_MAX)
        acks = BATCH_ACKS_MAX;
    int lowat = !connecting && acks >= 2 ? (int)acks * 4 : 1;
    if (!connecting && m->rx_busy && lowat < RX_LOWAT)
        lowat = RX_LOWAT;
    if (fd != m->lowat_fd || lowat != m->lowat) {
        m->lowat_fd = fd;
        m->lowat = setsockopt(fd, SOL_SOCKET, SO_RCVLOWAT, &lowat, sizeof(lowat)) == 0 ? lowat : -1;
    }
    return m->lowat > 1;
}

/* Counts the messages read since the last call into the current window (not
 * the acknowledgements: a stream of those has its own batching above); at the
 * end of a window, decides whether the next one batches. */
static void rx_account(em_mqtt_t *m)
{
    m->rx_window_count += m->rx_messages;
    m->rx_messages = 0;
    int64_t now = em_mono_ms();
    if (now - m->rx_window_ms >= RX_WINDOW_MS) {
        m->rx_busy = m->rx_window_count >= RX_BUSY_COUNT;
        m->rx_window_ms = now;
        m->rx_window_count = 0;
    }
}

static int set_cork(int fd, int on)
{
    return setsockopt(fd, IPPROTO_TCP, TCP_CORK, &on, sizeof(on));
}

/* Packets read per wake-up at most: enough to take what a busy broker sent
 * since the last poll in one go, few enough that the writes queued meanwhile
 * (PUBACKs, publishes) do not wait long. */
#define READ_BURST 64

/* Reads packets until none is complete or READ_BURST were read; *packets
 * gets how many. libmosquitto reads one packet per mosquitto_loop_read (its
 * max_packets is replaced by the number of messages in flight, and its loop
 * stops at the EAGAIN that queueing a PUBACK leaves in errno), so a poll()
 * per packet would cost a system call per message on top of the reads: here
 * one poll() serves a burst. A packet read shows as a callback (message or
 * acknowledgement); a read that brings none ends the burst. */
static int read_burst(em_mqtt_t *m, int *packets)
{
    int n = 0;
    m->read_more = false;
    for (;;) {
        unsigned before = m->rx_packets;
        int rc = mosquitto_loop_read(m->mosq, 1);
        if (rc != MOSQ_ERR_SUCCESS || mosquitto_socket(m->mosq) < 0) {
            *packets = n;
            return rc;
        }
        if (m->rx_packets == before)
            break;
        n += (int)(m->rx_packets - before);
        if (n >= READ_BURST) {
            m->read_more = true;
            break;
        }
    }
    /* Records in the read buffer, or the rest of a record OpenSSL has
     * decrypted: read them without waiting for poll(), which cannot see
     * them. */
    if (!m->read_more && em__mqtt_tls_rpending(m))
        m->read_more = true;
    *packets = n;
    return MOSQ_ERR_SUCCESS;
}

/* What mosquitto_loop does, with poll() instead of select(): libmosquitto's
 * select() refuses descriptors from FD_SETSIZE (1024) on, which a daemon with
 * many connections reaches. Other threads wake the driver through wake_fd
 * (em__mqtt_wake) rather than libmosquitto's internal socket pair, which is
 * never read here (its writes fail harmlessly once its buffer is full). */
static int poll_once(em_mqtt_t *m, int timeout_ms, bool connecting)
{
    int fd = mosquitto_socket(m->mosq);
    if (fd < 0)
        return MOSQ_ERR_NO_CONN;
    bool batching = set_lowat(m, fd, connecting);
    int batch_wait = m->rx_busy ? RX_WAIT_MS : BATCH_WAIT_MS;
    if (batching && timeout_ms > batch_wait)
        timeout_ms = batch_wait;
    bool more = m->read_more;
    if (more)
        timeout_ms = 0;
    atomic_store_explicit(&m->polling, true, memory_order_relaxed);
    atomic_thread_fence(memory_order_seq_cst);
    bool want_write = mosquitto_want_write(m->mosq) || em__mqtt_tls_wpending(m);
    struct pollfd p[2] = {{fd, (short)(POLLIN | (want_write ? POLLOUT : 0)), 0},
                          {m->wake_fd, POLLIN, 0}};
    int n = poll(p, 2, timeout_ms);
    atomic_store_explicit(&m->polling, false, memory_order_relaxed);
    if (n < 0)
        return errno == EINTR ? MOSQ_ERR_SUCCESS : MOSQ_ERR_ERRNO;
    if (p[1].revents & POLLIN) {
        uint64_t v;
        if (read(m->wake_fd, &v, sizeof(v)) < 0) {
            /* EAGAIN: another read took it */
        }
    }
    int rc;
    int packets = 0;
    /* During a TLS handshake, libmosquitto advances it from the read side
     * (mosquitto_loop does the same when the socket turns writable). Below
     * the low-water mark the socket may hold packets poll did not report:
     * they are read when poll gives up waiting. */
    if ((p[0].revents & (POLLIN | POLLHUP | POLLERR)) || (connecting && (p[0].revents & POLLOUT)) ||
        (batching && n == 0) || more) {
        rc = read_burst(m, &packets);
        if (rc != MOSQ_ERR_SUCCESS || mosquitto_socket(m->mosq) < 0)
            return rc;
        /* A broker that coalesces its acknowledgements (Nagle's algorithm,
         * mosquitto's default) holds the next ones until this side ACKs the
         * last: with nothing to send back, the kernel would delay that ACK by
         * up to 40 ms. While more acknowledgements are awaited, ACK at once;
         * the same while batching a busy stream of messages, whose next
         * packets the broker holds until it sees this ACK. */
        if (m->rx_busy || atomic_load_explicit(&m->inflight_count, memory_order_relaxed) > 0) {
            int one = 1;
            (void)setsockopt(fd, IPPROTO_TCP, TCP_QUICKACK, &one, sizeof(one));
        }
    }
    rx_account(m);
    /* The acknowledgements just read made room in the window (or the
     * connection is back): hand queued publishes over, then write them all. */
    em__mqtt_pump(m);
    if (mosquitto_want_write(m->mosq)) {
        /* libmosquitto writes each packet with its own write(), and with
         * TCP_NODELAY each would be a TCP segment of its own, carried
         * through the loopback or the network stack and waking the broker
         * one by one. When several packets are ready (publishes handed over,
         * or the PUBACKs of the QoS 1 messages just read), the socket is
         * corked while they are written and uncorked at once: the same bytes
         * leave now, in a few segments. Over TLS the write buffer
         * (em__mqtt_tls_buffer_io) already makes them one write(). */
        unsigned handed = atomic_exchange_explicit(&m->handed, 0, memory_order_relaxed);
        bool corked = m->ssl_ctx == NULL && (handed >= 2 || packets >= 2) && set_cork(fd, 1) == 0;
        rc = mosquitto_loop_write(m->mosq, 1);
        if (rc == MOSQ_ERR_SUCCESS && mosquitto_socket(m->mosq) == fd)
            (void)em__mqtt_tls_flush(m);
        if (corked && mosquitto_socket(m->mosq) == fd)
            set_cork(fd, 0);
        if (rc != MOSQ_ERR_SUCCESS || mosquitto_socket(m->mosq) < 0)
            return rc;
    } else if (em__mqtt_tls_wpending(m)) {
        /* What a full socket did not take last time, or what OpenSSL wrote
         * on its own while reading (a TLS 1.3 KeyUpdate answer). */
        (void)em__mqtt_tls_flush(m);
    }
    return mosquitto_loop_misc(m->mosq);
}

/* Runs the network once while a socket is open. Driver only. */
static void io_step(em_mqtt_t *m, int timeout_ms)
{
    pthread_mutex_lock(&m->lock);
    em__mqtt_state_t st = m->state;
    int64_t deadline = m->attempt_deadline_ms;
    pthread_mutex_unlock(&m->lock);
    /* Keepalive pings are sent from loop_misc: run it at least every second. */
    if (timeout_ms > 1000)
        timeout_ms = 1000;
    if (st == EM__MQTT_CONNECTING) {
        int64_t left = deadline - em_mono_ms();
        if (left <= 0 && !m->aborted)
            em__mqtt_abort(m);
        /* Wake up in time to notice the deadline. */
        if (left < timeout_ms)
            timeout_ms = left > 0 ? (int)left : 0;
        if (timeout_ms > 200)
            timeout_ms = 200;
    }
    sigpipe_guard_t g;
    sigpipe_block(&g);
    errno = 0;
    int rc = poll_once(m, timeout_ms, st == EM__MQTT_CONNECTING);
    int saved = errno;
    sigpipe_restore(&g);
    if (mosquitto_socket(m->mosq) < 0) {
        connection_closed(m, rc, saved);
        return;
    }
    if (rc != MOSQ_ERR_SUCCESS && rc != MOSQ_ERR_NO_CONN) {
        /* The socket is still open but poll failed: do not spin. */
        struct timespec ts = {0, 10 * 1000000L};
        nanosleep(&ts, NULL);
    }
}

/* One step of the network: waits, starts an attempt, or runs the socket.
 * Returns within about timeout_ms. Driver only, no lock held. */
void em__mqtt_drive(em_mqtt_t *m, int timeout_ms)
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
            em__mqtt_cond_wait_ms(&m->cond, &m->lock, timeout_ms);
        pthread_mutex_unlock(&m->lock);
        return;
    }
    int64_t now = em_mono_ms();
    if (st == EM__MQTT_WAITING && !m->attempt_now && now < m->next_attempt_ms) {
        int64_t wait = m->next_attempt_ms - now;
        em__mqtt_cond_wait_ms(&m->cond, &m->lock, wait < timeout_ms ? wait : timeout_ms);
        pthread_mutex_unlock(&m->lock);
        return;
    }
    m->attempt_now = false;
    m->state = EM__MQTT_CONNECTING;
    m->attempt_deadline_ms = now + EM__MQTT_CONNECT_TIMEOUT_MS;
    pthread_mutex_unlock(&m->lock);
    em__mqtt_attempt_start(m);
}

/* Closes whatever socket is still open, at once (the network thread on its
 * way out, or a disconnect whose DISCONNECT did not go through). */
void em__mqtt_close_now(em_mqtt_t *m)
{
    for (int i = 0; i < 50 && mosquitto_socket(m->mosq) >= 0; i++) {
        em__mqtt_abort(m);
        io_step(m, 20);
    }
}

void *em__mqtt_thread_main(void *arg)
{
    em_mqtt_t *m = arg;
    tl_network_thread = true;
    /* Named for top, perf and debuggers. */
    pthread_setname_np(pthread_self(), "emiot-mqtt");
    em__mqtt_deliver_deferred(m);
    for (;;) {
        pthread_mutex_lock(&m->lock);
        bool stop = m->stop;
        pthread_mutex_unlock(&m->lock);
        if (stop)
            break;
        em__mqtt_drive(m, 1000);
    }
    em__mqtt_close_now(m);
    return NULL;
}
