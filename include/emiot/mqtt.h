/*
 * emiot - mqtt.h: the MQTT transport (libmosquitto underneath).
 *
 * One em_mqtt_t is one client connection. URLs are mqtt://host[:port] (plain;
 * refused unless the host is a loopback address and allow_plain is set) and
 * mqtts://host[:port] (TLS; the server certificate is always verified against
 * ca_file or ca_path, or the system store when neither is given; there is no
 * switch to turn verification off). Client certificates give mTLS. Passwords
 * come from an environment variable or a file, never from the command line,
 * and are wiped from memory once handed to libmosquitto.
 *
 * The transport reconnects by itself with exponential backoff (reconnect_min_s
 * doubling up to reconnect_max_s) and re-subscribes every subscription after
 * each reconnection. Callbacks run on the network thread (em_mqtt_start) or
 * inside em_mqtt_loop, never inside a function that returns an error.
 *
 * Threads: publish and subscribe may be called from any thread at any time.
 * Without a network thread, callbacks due while em_mqtt_connect or
 * em_mqtt_disconnect run the network (CONNECTED, a message, an
 * acknowledgement) are held and delivered by the next em_mqtt_loop.
 * em_mqtt_connect (waiting), em_mqtt_disconnect and em_mqtt_free must not be
 * called from a callback (EM_ERR_STATE for the first two).
 */
#ifndef EMIOT_MQTT_H
#define EMIOT_MQTT_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "emiot/error.h"
#include "emiot/export.h"

#ifdef __cplusplus
extern "C" {
#endif

typedef struct em_mqtt em_mqtt_t;

#define EM_MQTT_URL_MAX           512
#define EM_MQTT_CLIENT_ID_MAX     64
#define EM_MQTT_SUBSCRIPTIONS_MAX 64
#define EM_MQTT_PASSWORD_MAX      256
/* In-flight window when max_inflight is 0 (see max_inflight). */
#define EM_MQTT_INFLIGHT_DEFAULT 256
/* At most this many QoS 1/2 publishes (and as many QoS 0) may await the
 * broker at once; em_mqtt_publish answers EM_ERR_LIMIT beyond. */
#define EM_MQTT_PENDING_MAX 65000

typedef struct em_mqtt_options {
    const char *url;       /* mqtt:// or mqtts://, required */
    const char *ca_file;   /* PEM CA bundle to verify the broker */
    const char *ca_path;   /* directory of hashed CA certificates */
    const char *cert_file; /* client certificate (mTLS) */
    const char *key_file;  /* client private key (mTLS) */
    const char *username;
    const char *password_env;     /* name of an environment variable holding the password */
    const char *password_file;    /* file whose first line is the password */
    const char *client_id;        /* NULL: client_id_prefix + 16 random hex digits */
    const char *client_id_prefix; /* default "emiot-" */
    int keepalive_s;              /* default 30 */
    int reconnect_min_s;          /* default 1 */
    int reconnect_max_s;          /* default 30 */
    int protocol;           /* 5 (default) or 4 (MQTT 3.1.1); 5 falls back to 4 when refused */
    bool allow_plain;       /* permit mqtt:// (loopback hosts only) */
    bool clean_session;     /* start without a stored session (em_mqtt_options_init: true) */
    const char *will_topic; /* optional last will */
    const char *will_payload;
    bool will_retain;
    int will_qos;
    unsigned max_inflight; /* QoS 1/2 messages in flight, 1-65535; 0 (the default) means
                              EM_MQTT_INFLIGHT_DEFAULT. Publishes beyond the window wait
                              in order in the client and are never refused for it. The
                              window is not unlimited because libmosquitto scans it on
                              every publish and acknowledgement: a bigger one costs more
                              than it gains. An MQTT 5 broker may lower it. */
} em_mqtt_options_t;

/* Fills opts with the defaults (keepalive 30, reconnect 1..30 s, protocol 5,
 * clean session, max_inflight 0). A zero keepalive_s, reconnect_min_s,
 * reconnect_max_s or protocol also means its default. */
EM_EXPORT void em_mqtt_options_init(em_mqtt_options_t *opts);

/* Events the transport reports. */
typedef enum em_mqtt_event {
    EM_MQTT_CONNECTED = 0,    /* (re)connected and subscriptions re-sent */
    EM_MQTT_DISCONNECTED = 1, /* connection lost or closed; err says why */
    EM_MQTT_RECONNECTING = 2, /* about to retry after a delay */
    EM_MQTT_ERROR = 3         /* connection refused, TLS failure, ... */
} em_mqtt_event_t;

typedef struct em_mqtt_callbacks {
    /* A message arrived. topic is NUL-terminated; payload is not (len bytes). */
    void (*on_message)(void *ud, const char *topic, const void *payload, size_t len, int qos,
                       bool retain);
    /* Connection state changed; err is NULL for EM_MQTT_CONNECTED. */
    void (*on_event)(void *ud, em_mqtt_event_t ev, const em_error_t *err);
    /* A QoS 1/2 publish with this mid was acknowledged by the broker (a QoS 0
     * one: was written to the network). Never called before em_mqtt_publish
     * has returned the mid. When an MQTT 5 broker acknowledges a message but
     * refuses it (not authorized, ...), an EM_MQTT_ERROR event with
     * EM_ERR_PERMISSION_DENIED or EM_ERR_COMMAND_FAILED comes first. */
    void (*on_published)(void *ud, int mid);
    void *userdata;
} em_mqtt_callbacks_t;

/*
 * Creates a client from opts (strings are copied; opts need not outlive the
 * call) and cbs (copied; may be NULL). Does not connect.
 * Errors (NULL returned, err filled): EM_ERR_CONFIGURATION (bad URL, plain MQTT
 * not allowed, unreadable CA/cert/key/password file, missing password
 * variable), EM_ERR_NOMEM, EM_ERR_INTERNAL.
 */
EM_EXPORT em_mqtt_t *em_mqtt_new(const em_mqtt_options_t *opts, const em_mqtt_callbacks_t *cbs,
                                 em_error_t *err);

/* Disconnects if needed, stops the network thread, frees. Accepts NULL. */
EM_EXPORT void em_mqtt_free(em_mqtt_t *m);

/*
 * Connects, waiting up to timeout_ms for the broker's CONNACK (the network is
 * driven internally while waiting, or by the network thread when it runs).
 * MQTT 5 falls back to 3.1.1 at once when the broker refuses the protocol.
 * Already connected: EM_OK at once. After a failure the transport keeps trying
 * (the network thread, or em_mqtt_loop) until em_mqtt_disconnect.
 * Errors: EM_ERR_CONNECTION (unreachable, refused), EM_ERR_TLS (handshake or
 * verification of the broker's certificate failed), EM_ERR_AUTHENTICATION (bad
 * username/password, or the broker refused our certificate), EM_ERR_TIMEOUT,
 * EM_ERR_PROTOCOL, EM_ERR_PERMISSION_DENIED (banned), EM_ERR_RATE_LIMIT_EXCEEDED
 * (the broker's connection rate or quota), EM_ERR_CONFIGURATION (client id
 * refused), EM_ERR_INVALID_ARGUMENT (timeout_ms <= 0), EM_ERR_STATE (called
 * from a callback, or while another thread runs em_mqtt_loop).
 */
EM_EXPORT em_err_t em_mqtt_connect(em_mqtt_t *m, int timeout_ms, em_error_t *err);

/* Starts the network thread, which connects (if not connected) and reconnects
 * automatically. EM_ERR_STATE if started, EM_ERR_INTERNAL if the thread cannot
 * be created. */
EM_EXPORT em_err_t em_mqtt_start(em_mqtt_t *m, em_error_t *err);

/* Drives the network from the caller's thread for up to timeout_ms (for
 * programs without a network thread): delivers held callbacks, handles what
 * the socket has, and reconnects (after em_mqtt_connect was called once) when
 * the connection dropped. Returns after one round of network activity or
 * timeout_ms. Connection failures are reported as events, not returned.
 * Errors: EM_ERR_STATE (the network thread runs, or called from a callback),
 * EM_ERR_INVALID_ARGUMENT. */
EM_EXPORT em_err_t em_mqtt_loop(em_mqtt_t *m, int timeout_ms, em_error_t *err);

/* Waits up to 2 s for outstanding QoS 1/2 publishes to be acknowledged, sends
 * DISCONNECT (the will is not published), closes the connection, stops the
 * network thread and any reconnection. EM_ERR_TIMEOUT (still disconnected)
 * when some publishes were not acknowledged in time; EM_ERR_STATE from a
 * callback. */
EM_EXPORT em_err_t em_mqtt_disconnect(em_mqtt_t *m, em_error_t *err);

EM_EXPORT bool em_mqtt_is_connected(const em_mqtt_t *m);

/* Subscribes (and remembers the filter, for re-subscription; subscribing to a
 * remembered filter again changes its QoS). Subscribing while disconnected only
 * records it. A broker that refuses the subscription is reported by an
 * EM_MQTT_ERROR event with EM_ERR_PERMISSION_DENIED. Errors:
 * EM_ERR_INVALID_ARGUMENT (bad filter or QoS), EM_ERR_LIMIT
 * (EM_MQTT_SUBSCRIPTIONS_MAX), EM_ERR_NOMEM, EM_ERR_CONNECTION. */
EM_EXPORT em_err_t em_mqtt_subscribe(em_mqtt_t *m, const char *filter, int qos, em_error_t *err);
EM_EXPORT em_err_t em_mqtt_unsubscribe(em_mqtt_t *m, const char *filter, em_error_t *err);

/*
 * Publishes payload (len bytes) on topic. *mid (when not NULL) receives the
 * message id that on_published will report. Nothing is queued while
 * disconnected. Errors: EM_ERR_NOT_CONNECTED, EM_ERR_INVALID_ARGUMENT (topic,
 * QoS or size), EM_ERR_LIMIT (EM_MQTT_PENDING_MAX publishes await the broker),
 * EM_ERR_NOMEM, EM_ERR_CONNECTION, EM_ERR_PROTOCOL.
 */
EM_EXPORT em_err_t em_mqtt_publish(em_mqtt_t *m, const char *topic, const void *payload, size_t len,
                                   int qos, bool retain, int *mid, em_error_t *err);

/* The client id in use (random unless set in the options). */
EM_EXPORT const char *em_mqtt_client_id(const em_mqtt_t *m);

/* The MQTT protocol version negotiated (5 or 4), 0 before the first connect. */
EM_EXPORT int em_mqtt_protocol(const em_mqtt_t *m);

/* Initialises libmosquitto once per process; called by em_mqtt_new. */
EM_EXPORT void em_mqtt_lib_init(void);

#ifdef __cplusplus
}
#endif

#endif /* EMIOT_MQTT_H */
