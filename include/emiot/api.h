/*
 * emiot - api.h: emiotd's HTTPS API.
 *
 * An em_api_t serves the REST API described in docs/API.md on one or more
 * listeners, all on the caller's libevent event_base (one loop, one thread:
 * every function here must be called on the thread that runs that loop).
 *
 * Transport: TLS 1.3 only, with the three TLS 1.3 AEAD suites
 * (TLS_AES_256_GCM_SHA384, TLS_CHACHA20_POLY1305_SHA256,
 * TLS_AES_128_GCM_SHA256); per listener, client certificates are not asked
 * for, optional, or required (verified against client_ca_file). A plain HTTP
 * listener is allowed only on a loopback address and only for metrics.
 *
 * Authentication, in this order: a client certificate (CN = a user's name, or
 * a registered device's id), "Authorization: Bearer iot_..." (an API key) or
 * "Authorization: Bearer <JWT>" (ES256, issuer, audience and expiry checked).
 * Authorisation: every route names the least role it needs (viewer <
 * operator < admin; a device identity reaches only its own device's routes).
 * Errors are {"success":false,"message":"...","errorCode":"..."}; 401 and 403
 * say nothing about why, the reason goes to the log and a security event.
 * Per-identity token buckets answer 429 with Retry-After.
 *
 * The API reads devices from the manager's registry and everything else from
 * the store; writes go to both (the store first). Neither is owned by the API.
 *
 * The program must ignore SIGPIPE (signal(SIGPIPE, SIG_IGN)): a client that
 * hangs up while its answer is being written would otherwise kill the
 * process. em_api_new logs a warning when SIGPIPE is not ignored.
 */
#ifndef EMIOT_API_H
#define EMIOT_API_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "emiot/error.h"
#include "emiot/export.h"
#include "emiot/keystore.h"
#include "emiot/manager.h"
#include "emiot/pki.h"
#include "emiot/store.h"

#ifdef __cplusplus
extern "C" {
#endif

struct event_base;
typedef struct em_api em_api_t;
typedef struct em_dynsec em_dynsec_t; /* dynsec.h */

#define EM_API_LISTENERS_MAX 8
#define EM_API_KEY_LEN       52 /* "iot_" + 48 hex digits */
#define EM_API_BODY_MAX      (1024 * 1024)

typedef enum em_client_auth {
    EM_CLIENT_AUTH_NONE = 0,     /* no client certificate asked for */
    EM_CLIENT_AUTH_OPTIONAL = 1, /* asked for; verified when sent */
    EM_CLIENT_AUTH_REQUIRED = 2  /* the handshake fails without a valid one */
} em_client_auth_t;

typedef struct em_api_listener {
    const char *address;        /* "127.0.0.1", "0.0.0.0", "::1", ... */
    uint16_t port;              /* 0: an ephemeral port (see em_api_port) */
    const char *cert_file;      /* PEM server certificate chain; NULL: plain HTTP */
    const char *key_file;       /* PEM private key */
    const char *client_ca_file; /* CA for client certificates (NONE: may be NULL) */
    em_client_auth_t client_auth;
    bool metrics_only; /* serves only /metrics (no authentication) and /healthz */
} em_api_listener_t;

typedef struct em_api_options {
    em_api_listener_t listeners[EM_API_LISTENERS_MAX];
    size_t nlisteners;
    size_t max_body;            /* request body limit, default 65536, at most EM_API_BODY_MAX */
    int request_timeout_s;      /* idle and read timeout per connection, default 30 */
    const char *jwt_key_file;   /* ES256 key, created (mode 0600) when missing: a keystore file
                                   sealed with keystore, or plain PEM when keystore is NULL */
    const char *jwt_issuer;     /* default "emiotd" */
    const char *jwt_audience;   /* default "emiot-api" */
    int jwt_ttl_s;              /* tokens issued by POST /api/v1/tokens, default 3600 */
    uint32_t rate_per_min[5];   /* indexed by em_role_t; 0: defaults (device 60, others 1200) */
    uint32_t auth_fail_per_min; /* failed authentications per client address before 429 (20) */
    int command_ttl_s;          /* a command not answered after this expires (default 300) */

    /* Device identity (docs/SECURITY.md). Each may be NULL / 0 for the default. */
    const em_keystore_secret_t *keystore; /* seals the JWT key; NULL: a plain 0600 PEM */
    em_pki_t *pki;               /* the CA that signs enrollment CSRs; NULL: no enrollment */
    const char *client_crl_file; /* CRL checked for client certificates (NULL: the CA's when
                                    pki is set, else none) */
    const char *device_ca_file;  /* CA of device certificates in challenge-response (NULL:
                                    the pki's ca.crt; neither: challenge-response refused) */
    int device_token_ttl_s;      /* device JWTs from challenge-response, default 86400 */
    int nonce_ttl_s;             /* challenge nonces, default 300 (1..300) */
    size_t nonces_max;           /* outstanding nonces, default 10000 */
    int enroll_token_ttl_s;      /* default lifetime of an enrollment token, 86400 */
    int enroll_token_ttl_max_s;  /* the longest one may ask for, default 30 days */
    int device_cert_days;        /* validity of certificates issued at enrollment, 365 */
    em_dynsec_t *dynsec;         /* provisions MQTT passwords; NULL: not offered */
} em_api_options_t;

/* Fills opts with the defaults above and no listener. */
EM_EXPORT void em_api_options_init(em_api_options_t *opts);

/*
 * Creates the API on base and starts listening. Files are read now (the JWT
 * key is created when missing); strings are copied. store and mgr must
 * outlive the API.
 * Errors: EM_ERR_CONFIGURATION (no listener, plain HTTP on a non-loopback
 * address or with API routes, bad option), EM_ERR_TLS (certificate, key or CA
 * unreadable or mismatched), EM_ERR_IO (cannot bind), EM_ERR_NOMEM.
 */
EM_EXPORT em_api_t *em_api_new(struct event_base *base, const em_api_options_t *opts,
                               em_store_t *store, em_manager_t *mgr, em_error_t *err);

/* Closes the listeners and every connection at once, frees. Accepts NULL. */
EM_EXPORT void em_api_free(em_api_t *api);

/* The port listener idx listens on (useful with port 0); 0 when idx is out of range. */
EM_EXPORT uint16_t em_api_port(const em_api_t *api, size_t idx);

/*
 * Re-reads what can change without a restart (SIGHUP): the listeners'
 * certificates, keys and client CAs (for new connections), the rate limits
 * and max_body from opts (listener addresses must be unchanged). On error
 * the old settings stay. Errors: as em_api_new.
 */
EM_EXPORT em_err_t em_api_reload(em_api_t *api, const em_api_options_t *opts, em_error_t *err);

/* Stops accepting connections (SIGTERM); requests in progress finish. */
EM_EXPORT void em_api_stop_accepting(em_api_t *api);

/* Requests being served now (for draining). */
EM_EXPORT size_t em_api_active_requests(const em_api_t *api);

/*
 * First start: when the store holds no API key and no user, creates the user
 * "admin" (role admin) and an admin API key, and writes the key into key_out
 * (at least EM_API_KEY_LEN + 1 bytes) for the caller to show once or write to
 * a 0600 file. *created tells whether it happened. The key is never stored
 * or logged in the clear. Errors: the store's.
 */
EM_EXPORT em_err_t em_api_bootstrap(em_store_t *store, char *key_out, size_t size, bool *created,
                                    em_error_t *err);

typedef struct em_api_stats {
    uint64_t requests;
    uint64_t responses[6]; /* by class: [1] 1xx ... [5] 5xx; [0] unused */
    uint64_t auth_failures;
    uint64_t forbidden;
    uint64_t rate_limited;
    uint64_t bad_requests;
    uint64_t tls_handshakes;
    uint64_t tls_failures;
    uint64_t connections_open;
} em_api_stats_t;
EM_EXPORT void em_api_stats(const em_api_t *api, em_api_stats_t *out);

#ifdef __cplusplus
}
#endif

#endif /* EMIOT_API_H */
