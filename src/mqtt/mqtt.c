/*
 * emiot - mqtt/mqtt.c: the MQTT transport's public functions: options,
 * creation, connect, start, loop, disconnect (see mqtt.h). The network itself
 * is run by driver.c; callbacks go through callbacks.c.
 */
#include <errno.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <time.h>
#include <unistd.h>

#include <openssl/crypto.h>
#include <openssl/rand.h>

#include "emiot/clock.h"
#include "emiot/log.h"
#include "mqtt/mqtt_internal.h"

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
                            "max_inflight must be 0 (the default window) to 65535");
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
     * CONNACK). libmosquitto 2.0 walks its whole list of messages on every
     * publish and every acknowledgement, so it is never given more than the
     * window (outbox.c). */
    rc = mosquitto_int_option(m->mosq, MOSQ_OPT_SEND_MAXIMUM, (int)m->window);
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

    mosquitto_connect_v5_callback_set(m->mosq, em__mqtt_on_connect);
    mosquitto_disconnect_v5_callback_set(m->mosq, em__mqtt_on_disconnect);
    mosquitto_message_callback_set(m->mosq, em__mqtt_on_message);
    mosquitto_publish_v5_callback_set(m->mosq, em__mqtt_on_publish);
    mosquitto_subscribe_callback_set(m->mosq, em__mqtt_on_subscribe);
    /* libmosquitto formats a line for every packet when a log callback is
     * set: only pay for it when debug logging is on. */
    if (em_log_enabled(EM_LOG_DEBUG))
        mosquitto_log_callback_set(m->mosq, em__mqtt_on_log);
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
    m->wake_fd = -1;
    m->lowat_fd = -1;
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
    /* From here on em_mqtt_free undoes whatever was done. */
    if (em__mqtt_outbox_init(m, opts->max_inflight == 0 ? EM_MQTT_INFLIGHT_DEFAULT
                                                        : opts->max_inflight) != 0) {
        em_error_set(err, EM_ERR_NOMEM, EM_SEV_HIGH, NULL, "out of memory");
        em_mqtt_free(m);
        return NULL;
    }
    m->wake_fd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
    if (m->wake_fd < 0) {
        em_error_set(err, errno == ENOMEM ? EM_ERR_NOMEM : EM_ERR_INTERNAL, EM_SEV_HIGH, NULL,
                     "cannot create an eventfd: %s", strerror(errno));
        em_mqtt_free(m);
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
    atomic_init(&m->polling, false);

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
    em__mqtt_deferred_free(m);
    em__mqtt_outbox_free(m);
    if (m->wake_fd >= 0)
        close(m->wake_fd);
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
        em__mqtt_cond_wait_ms(&m->cond, &m->lock, left);
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
        em__mqtt_attempt_start(m);
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
        /* Past the deadline the attempt is aborted; should the socket not
         * close within EM__MQTT_CLOSE_MS more, give up waiting anyway. */
        if (left <= 0 && (st != EM__MQTT_CONNECTING || left < -EM__MQTT_CLOSE_MS)) {
            pthread_mutex_unlock(&m->lock);
            rc = em_error_set(err, EM_ERR_TIMEOUT, EM_SEV_HIGH, "url",
                              "not connected to %s:%d within %d ms", m->url.host, m->url.port,
                              timeout_ms);
            break;
        }
        if (left <= 0)
            m->attempt_deadline_ms = deadline; /* io_step aborts the attempt */
        pthread_mutex_unlock(&m->lock);
        em__mqtt_drive(m, left > 100 ? 100 : (left > 0 ? (int)left : 0));
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
    int rc = pthread_create(&m->thread, NULL, em__mqtt_thread_main, m);
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

    em__mqtt_deliver_deferred(m);
    em__mqtt_drive(m, timeout_ms);

    pthread_mutex_lock(&m->lock);
    m->driving = false;
    pthread_mutex_unlock(&m->lock);
    return EM_OK;
}

/* A socket is open, or being opened. Lock held. */
static bool state_is_open(em_mqtt_t *m)
{
    return m->state == EM__MQTT_CONNECTED || m->state == EM__MQTT_CONNECTING;
}

/* Waits (threaded) or drives (no thread) until the socket is closed or ms
 * pass. */
static void wait_closed(em_mqtt_t *m, bool threaded, int64_t ms)
{
    int64_t deadline = em_mono_ms() + ms;
    pthread_mutex_lock(&m->lock);
    for (;;) {
        int64_t left = deadline - em_mono_ms();
        if (!state_is_open(m) || left <= 0)
            break;
        if (threaded) {
            em__mqtt_cond_wait_ms(&m->cond, &m->lock, left);
        } else {
            pthread_mutex_unlock(&m->lock);
            em__mqtt_drive(m, left > 50 ? 50 : (int)left);
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
            em__mqtt_cond_wait_ms(&m->pub_cond, &m->pub_lock, left);
        } else {
            pthread_mutex_unlock(&m->pub_lock);
            em__mqtt_drive(m, left > 50 ? 50 : (int)left);
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
        if (mosquitto_disconnect(m->mosq) == MOSQ_ERR_SUCCESS) {
            em__mqtt_wake(m);
            wait_closed(m, threaded, EM__MQTT_CLOSE_MS);
        }
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
        em__mqtt_wake_always(m);
        pthread_join(m->thread, NULL);
        pthread_mutex_lock(&m->lock);
        m->thread_running = false;
        m->stop = false;
        pthread_mutex_unlock(&m->lock);
    } else {
        em__mqtt_close_now(m);
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
