/*
 * emiot - mqtt/mqtt_internal.h: what the files of src/mqtt share (internal).
 *
 * Threads. One "driver" runs the network at a time: the network thread
 * (em_mqtt_start), or else the caller of em_mqtt_connect, em_mqtt_loop or
 * em_mqtt_disconnect. Only the driver reads and writes the socket and calls
 * the connect functions of libmosquitto, so every libmosquitto callback runs
 * on it. Other threads publish and subscribe: libmosquitto is in threaded
 * mode, so those calls only queue packets, then wake the driver.
 *
 * Locks, never taken in the other order: lock (state, subscriptions) and
 * pub_lock (outstanding publishes). User callbacks are called with neither
 * held, so they may call back into the transport.
 */
#ifndef EM_MQTT_INTERNAL_H
#define EM_MQTT_INTERNAL_H

#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>

#include <mosquitto.h>
#include <mqtt_protocol.h>
#include <openssl/ssl.h>

#include "emiot/mqtt.h"
#include "mqtt/url.h"

/* A subscription filter is at most this long (MQTT allows 65535; emiot's
 * filters are a prefix plus a few levels). */
#define EM__MQTT_FILTER_MAX   1024
#define EM__MQTT_USERNAME_MAX 1024
/* Largest payload MQTT can carry. */
#define EM__MQTT_PAYLOAD_MAX 268435455u
/* A background connection attempt gives up without a CONNACK after this. */
#define EM__MQTT_CONNECT_TIMEOUT_MS 10000
/* em_mqtt_disconnect waits this long for outstanding QoS 1/2 publishes, then
 * as long again for the broker to see the DISCONNECT. */
#define EM__MQTT_FLUSH_MS 2000
#define EM__MQTT_CLOSE_MS 1000
/* Callbacks deferred while em_mqtt_connect or em_mqtt_disconnect drive the
 * network without a thread are bounded (see em_mqtt_loop). */
#define EM__MQTT_DEFERRED_MAX       100000u
#define EM__MQTT_DEFERRED_BYTES_MAX ((size_t)64 * 1024 * 1024)

typedef enum em__mqtt_state {
    EM__MQTT_IDLE = 0,       /* no connection, none wanted */
    EM__MQTT_WAITING = 1,    /* no connection; the next attempt is due at next_attempt_ms */
    EM__MQTT_CONNECTING = 2, /* an attempt is under way, no CONNACK yet */
    EM__MQTT_CONNECTED = 3
} em__mqtt_state_t;

typedef struct em__mqtt_sub {
    char *filter;
    int qos;
    int mid; /* of the last SUBSCRIBE sent for it, to match the SUBACK */
} em__mqtt_sub_t;

/* What the TLS layer saw during the current connection attempt. Written and
 * read by the driver only (from OpenSSL's info callback). */
typedef struct em__mqtt_tls_diag {
    int alert_sent;     /* fatal alert we sent, -1 if none */
    int alert_received; /* fatal alert the broker sent, -1 if none */
    long verify_result; /* our verification of the broker's certificate */
    bool handshake_done;
    bool tls13; /* the handshake negotiated TLS 1.3 */
} em__mqtt_tls_diag_t;

typedef struct em__mqtt_deferred em__mqtt_deferred_t;

/* A QoS 1/2 publish waiting in the client for room in the window (outbox.c). */
typedef struct em__mqtt_queued em__mqtt_queued_t;

/* The ids of publishes handed to libmosquitto, oldest first: libmosquitto's
 * message id and the one em_mqtt_publish returned. An acknowledged entry in
 * the middle becomes a hole (mosq_mid 0, an id libmosquitto never uses). */
typedef struct em__mqtt_idmap {
    uint16_t mosq_mid;
    uint16_t id;
} em__mqtt_idmap_t;

typedef struct em__mqtt_idring {
    em__mqtt_idmap_t *v;
    unsigned cap;  /* entries allocated */
    unsigned head; /* oldest entry */
    unsigned len;  /* entries from head, holes included */
} em__mqtt_idring_t;

struct em_mqtt {
    struct mosquitto *mosq;
    SSL_CTX *ssl_ctx; /* NULL for mqtt:// */
    em_mqtt_callbacks_t cbs;
    em__mqtt_url_t url;
    char client_id[EM_MQTT_CLIENT_ID_MAX + 1];
    int keepalive_s;
    int reconnect_min_s;
    int reconnect_max_s;
    bool has_client_cert;
    atomic_bool connected;
    atomic_int negotiated; /* protocol of the current/last connection, 0 before */
    int wake_fd;           /* eventfd: other threads wake the driver's poll */
    atomic_bool polling;   /* the driver is (about to be) asleep in poll */

    pthread_mutex_t lock; /* guards everything down to nsubs */
    pthread_cond_t cond;  /* broadcast on every state change */
    em__mqtt_state_t state;
    bool auto_connect; /* connect/start asked for a connection, disconnect not since */
    bool attempt_now;  /* em_mqtt_connect wants the next attempt without waiting */
    bool closing;      /* the client is disconnecting on purpose */
    bool stop;         /* the network thread must exit */
    bool thread_running;
    bool driving; /* a caller drives the network (no thread) */
    pthread_t thread;
    int protocol;            /* MQTT version of the next attempt: 5 or 4 */
    int64_t next_attempt_ms; /* monotonic */
    int64_t attempt_deadline_ms;
    int64_t backoff_ms;          /* delay before the next retry */
    uint64_t attempts_done;      /* attempts finished, successful or not */
    em_error_t last_attempt_err; /* code EM_OK when the last one succeeded */
    char tls_version[16];        /* "TLSv1.3" once a handshake completed */
    em__mqtt_sub_t subs[EM_MQTT_SUBSCRIPTIONS_MAX];
    size_t nsubs;

    /* The socket's SO_RCVLOWAT as last set (driver only; fd -1: not set). */
    int lowat_fd;
    int lowat;
    /* The last read stopped with data left to read that poll() may not
     * report (a burst cut short, or TLS records OpenSSL already holds):
     * the next poll does not wait. Driver only. */
    bool read_more;
    /* Messages and acknowledgements read (counted by their callbacks, which
     * run in the driver): how a read burst knows a packet came. */
    unsigned rx_packets;
    unsigned rx_messages; /* of which messages (on_message) */
    /* Receive batching (driver.c): messages read in the current window, and
     * whether the last window was busy enough to batch. */
    int64_t rx_window_ms;
    unsigned rx_window_count;
    bool rx_busy;

    /* The current attempt, driver only. */
    int connack_rc; /* -1 until a CONNACK arrives */
    bool aborted;   /* the driver cut the attempt short (timeout) */
    em__mqtt_tls_diag_t tls;

    /* Publishes (outbox.c), all under pub_lock. */
    pthread_mutex_t pub_lock;
    pthread_cond_t pub_cond;
    unsigned window;            /* QoS 1/2 publishes libmosquitto holds at most */
    unsigned pending;           /* QoS 1/2 not acknowledged yet: in flight and queued */
    unsigned pending0;          /* QoS 0 not yet written (libmosquitto drops them on a reconnect) */
    uint16_t last_id;           /* the last id em_mqtt_publish returned */
    em__mqtt_idring_t inflight; /* QoS 1/2 handed to libmosquitto (capacity: window) */
    em__mqtt_idring_t unwritten0;  /* QoS 0 handed to libmosquitto, not written yet */
    em__mqtt_queued_t *queue_head; /* QoS 1/2 waiting for room in the window */
    em__mqtt_queued_t *queue_tail;
    atomic_uint inflight_count; /* QoS 1/2 handed over, not acknowledged (read unlocked) */
    atomic_uint handed;         /* publishes handed over since the driver last wrote */
    /* What the broker's CONNACK allows (MQTT 5), checked before queueing. */
    atomic_uint broker_max_packet;  /* bytes, 0: no limit */
    atomic_uint broker_receive_max; /* QoS 1/2 in flight it accepts, 0: no limit */
    atomic_int broker_max_qos;

    /* Driver only: callbacks are queued instead of called (see em_mqtt_loop),
     * and failed attempts are not reported as events (the caller gets them). */
    bool defer;
    bool quiet;
    em__mqtt_deferred_t *deferred_head;
    em__mqtt_deferred_t *deferred_tail;
    size_t deferred_count;
    size_t deferred_bytes;
    size_t deferred_dropped;
};

/* tls.c */

/* Builds the client SSL_CTX for m (certificate verification, host name,
 * protocol floor, CA, client certificate). Errors: EM_ERR_CONFIGURATION,
 * EM_ERR_NOMEM, EM_ERR_TLS. */
SSL_CTX *em__mqtt_tls_ctx_new(em_mqtt_t *m, const em_mqtt_options_t *opts, em_error_t *err);

/* Puts a read buffer and a write buffer between OpenSSL and the socket of the
 * current connection (after its handshake): one read() per buffer-full of
 * records, and the packets one round of writes produces leave in one write().
 * Without TLS, or when it cannot, does nothing. */
void em__mqtt_tls_buffer_io(em_mqtt_t *m);

/* Whether OpenSSL or the read buffer holds received bytes (poll() cannot
 * see them). */
bool em__mqtt_tls_rpending(em_mqtt_t *m);

/* Whether the write buffer holds bytes not yet given to the socket. */
bool em__mqtt_tls_wpending(em_mqtt_t *m);

/* Writes the buffer out; returns false when some is left (the socket is
 * full, or failed). */
bool em__mqtt_tls_flush(em_mqtt_t *m);

/* Resets m->tls before an attempt. */
void em__mqtt_tls_diag_reset(em_mqtt_t *m);

/* When a TLS alert explains why the current attempt failed, fills err
 * (EM_ERR_TLS: the broker's certificate failed verification or the handshake
 * failed; EM_ERR_AUTHENTICATION: the broker refused our certificate) and
 * returns true. */
bool em__mqtt_tls_explain(em_mqtt_t *m, em_error_t *err);

/* When the connection ended, without an alert and before any CONNACK, right
 * after a TLS 1.3 handshake (how a refused client certificate can look),
 * fills err (EM_ERR_AUTHENTICATION) and returns true. */
bool em__mqtt_tls_explain_early_close(em_mqtt_t *m, em_error_t *err);

/* secret.c */

/* Reads the password from opts->password_env or opts->password_file into buf
 * (size > EM_MQTT_PASSWORD_MAX). *len receives its length; 0 and EM_OK when
 * neither option is set. On failure buf is wiped. Errors: EM_ERR_CONFIGURATION. */
em_err_t em__mqtt_password_read(const em_mqtt_options_t *opts, char *buf, size_t size, size_t *len,
                                em_error_t *err);

/* pubsub.c */

/* Sends a SUBSCRIBE for every remembered filter. Driver only, lock held. */
void em__mqtt_resubscribe(em_mqtt_t *m);

/* libmosquitto's SUBACK callback. */
void em__mqtt_on_subscribe(struct mosquitto *mosq, void *ud, int mid, int count,
                           const int *granted);
void em__mqtt_subs_free(em_mqtt_t *m);

/* outbox.c */

/* Sets up the publish state for a window of `window` QoS 1/2 messages.
 * Returns -1 when out of memory. */
int em__mqtt_outbox_init(em_mqtt_t *m, unsigned window);

/* Frees the queue and the id rings. */
void em__mqtt_outbox_free(em_mqtt_t *m);

/* Hands queued publishes to libmosquitto while the window has room and the
 * connection is up. Returns how many. No lock held. */
unsigned em__mqtt_pump(em_mqtt_t *m);

/* The connection is gone: libmosquitto dropped the QoS 0 packets it had not
 * written. No lock held. */
void em__mqtt_outbox_lost_qos0(em_mqtt_t *m);

/* Records what the broker's CONNACK allows (MQTT 5 properties). */
void em__mqtt_outbox_limits(em_mqtt_t *m, const mosquitto_property *props);

/* libmosquitto's PUBACK/PUBCOMP (and QoS 0 written) callback. */
void em__mqtt_on_publish(struct mosquitto *mosq, void *ud, int mid, int reason,
                         const mosquitto_property *props);

/* callbacks.c */

/* Reports an event to the application (or defers it). No lock held. */
void em__mqtt_emit(em_mqtt_t *m, em_mqtt_event_t ev, const em_error_t *err);

/* Reports a PUBACK to the application (or defers it). No lock held. */
void em__mqtt_emit_published(em_mqtt_t *m, int mid);

/* libmosquitto's message callback. */
void em__mqtt_on_message(struct mosquitto *mosq, void *ud, const struct mosquitto_message *msg);

/* Delivers the deferred callbacks, in order (driver, defer off). */
void em__mqtt_deliver_deferred(em_mqtt_t *m);

/* Drops the deferred callbacks. */
void em__mqtt_deferred_free(em_mqtt_t *m);

/* driver.c */

/* libmosquitto's CONNACK, disconnect and log callbacks. */
void em__mqtt_on_connect(struct mosquitto *mosq, void *ud, int rc, int flags,
                         const mosquitto_property *props);
void em__mqtt_on_disconnect(struct mosquitto *mosq, void *ud, int rc,
                            const mosquitto_property *props);
void em__mqtt_on_log(struct mosquitto *mosq, void *ud, int level, const char *str);

/* Waits on cond (CLOCK_MONOTONIC) for at most ms milliseconds. */
void em__mqtt_cond_wait_ms(pthread_cond_t *cond, pthread_mutex_t *mu, int64_t ms);

/* Starts a connection attempt; the caller has set state to CONNECTING. */
void em__mqtt_attempt_start(em_mqtt_t *m);

/* Cuts the current attempt or connection short (libmosquitto then closes). */
void em__mqtt_abort(em_mqtt_t *m);

/* One step of the network, returning within about timeout_ms. No lock held. */
void em__mqtt_drive(em_mqtt_t *m, int timeout_ms);

/* Closes whatever socket is still open, at once. */
void em__mqtt_close_now(em_mqtt_t *m);

/* The network thread. */
void *em__mqtt_thread_main(void *arg);

/* Wakes the driver if it sleeps in poll (after queueing a packet from
 * another thread); em__mqtt_wake_always wakes it whatever it does. */
void em__mqtt_wake(em_mqtt_t *m);
void em__mqtt_wake_always(em_mqtt_t *m);

/* Test hooks. */

/* The TLS version of the last handshake ("TLSv1.3"), "" before any. */
const char *em__mqtt_tls_version(em_mqtt_t *m);

#endif /* EM_MQTT_INTERNAL_H */
