/*
 * emiot - api_core.h: what the API server's own files share (server.c,
 * server_request.c, tls.c, auth.c, auth_jwt.c, bucket.c, respond.c,
 * metrics.c, devcache.c, routes_access.c, routes_identity.c, identity_enroll.c,
 * identity_auth.c). Route handlers in other files use api_internal.h only.
 *
 * Everything here runs on the thread of the event loop the API was created on,
 * so nothing is locked.
 */
#ifndef EMIOT_API_CORE_H
#define EMIOT_API_CORE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include <openssl/ssl.h>

#include "api/api_internal.h"

struct event_base;
struct evhttp;
struct evhttp_bound_socket;
struct evkeyvalq;

/* ---- token buckets (bucket.c) ------------------------------------------ */

/* One token bucket: capacity = rate per minute, continuous refill. */
typedef struct em__bucket {
    double tokens;
    int64_t last_ms; /* monotonic time of the last refill */
} em__bucket_t;

/* Starts a bucket full. */
void em__bucket_init(em__bucket_t *b, uint32_t per_min, int64_t now_ms);

/*
 * Takes one token at now_ms (monotonic) from a bucket of capacity per_min
 * refilled at per_min per minute. Returns true when taken; otherwise false
 * with *retry_after_s (when not NULL) the whole seconds, at least 1, until a
 * token is there. per_min 0 refuses everything (retry after 60 s).
 */
bool em__bucket_take(em__bucket_t *b, uint32_t per_min, int64_t now_ms, uint32_t *retry_after_s);

/* True when a token is there now (takes nothing). */
bool em__bucket_peek(em__bucket_t *b, uint32_t per_min, int64_t now_ms, uint32_t *retry_after_s);

/* A bounded table of buckets by key (an identity or a client address). */
typedef struct em__buckets em__buckets_t;

#define EM__BUCKET_KEY_MAX 72

/* max_entries 16..1000000. NULL on allocation failure. */
em__buckets_t *em__buckets_new(size_t max_entries);
void em__buckets_free(em__buckets_t *t);

/*
 * em__bucket_take / em__bucket_peek on key's bucket (created full when
 * missing; a key longer than EM__BUCKET_KEY_MAX is cut). When the table is
 * full, idle buckets (full again) are dropped first, then the least recently
 * used one: a bucket forgotten that way is full, which is what it would be
 * after that long anyway, or the oldest active one.
 */
bool em__buckets_take(em__buckets_t *t, const char *key, uint32_t per_min, int64_t now_ms,
                      uint32_t *retry_after_s);
bool em__buckets_peek(em__buckets_t *t, const char *key, uint32_t per_min, int64_t now_ms,
                      uint32_t *retry_after_s);
size_t em__buckets_count(const em__buckets_t *t);

/* True when key's refusals should be reported now: at most once per every_ms
 * for one key (so that a flood is one security event a minute, not one per
 * request). false for a key without a bucket. */
bool em__buckets_report(em__buckets_t *t, const char *key, int64_t now_ms, int64_t every_ms);

/* ---- the server --------------------------------------------------------- */

typedef struct em__api_listener {
    em_api_t *api;
    size_t idx;
    struct evhttp *http;
    struct evhttp_bound_socket *sock;
    SSL_CTX *ctx; /* NULL: plain HTTP */
    bool metrics_only;
    em_client_auth_t client_auth;
    uint16_t port;
    em_verifier_t *verifier;  /* client certificates (tls.c); NULL: none asked for */
    int64_t verifier_mono_ms; /* when its files were last looked at */
} em__api_listener_t;

typedef struct em__auth_cache em__auth_cache_t;
struct em__devcache;
struct em__nonces;

struct em_api {
    struct event_base *base;
    em_store_t *store;
    em_manager_t *mgr;
    em_api_options_t opts; /* strings point into strs */
    char *strs[EM_API_LISTENERS_MAX * 4 + 8];
    size_t nstrs;
    em__api_listener_t listeners[EM_API_LISTENERS_MAX];
    size_t nlisteners;
    em_api_stats_t stats;
    bool stopping;
    size_t active;
    int64_t started_mono_ms;
    /* JWT signing key (auth_jwt.c) */
    unsigned char *jwt_priv_pem;
    int jwt_priv_len;
    unsigned char *jwt_pub_pem;
    int jwt_pub_len;
    unsigned char rnd[512]; /* random bytes for correlation ids, drawn in bulk */
    size_t rnd_used;        /* bytes of rnd already used */
    em__auth_cache_t *cache;
    em__buckets_t *buckets;        /* per identity (actor) */
    em__buckets_t *fail_buckets;   /* failed authentications per client address */
    struct em__devcache *devcache; /* stored device records (devcache.h); NULL: none */
    char date[40];                 /* the Date header of answers (respond.c), for date_s */
    int64_t date_s;                /* the second date was made for */
    /* device identity (routes_identity.c, identity_enroll.c, identity_auth.c, tls.c) */
    struct em__nonces *nonces;    /* challenge nonces (nonce.h) */
    em_verifier_t *dev_verifier;  /* device certificates against the pki's CA; NULL: no pki */
    int64_t dev_verifier_mono_ms; /* when its files were last looked at */
    uint64_t cert_gen;            /* changes when a client CA or CRL changes (from 1) */
};

/* What the server keeps per request beside what handlers see. */
typedef struct em__api_call {
    em__api_req_t r;
    int status; /* 0 until answered */
    int64_t start_mono_ms;
    const char *method_name;
    const char *path;        /* without the query string */
    const char *retry_after; /* a Retry-After value to send, or NULL */
    const char *allow;       /* an Allow value to send (405), or NULL */
    uint32_t key_rate;       /* the authenticating API key's own rate (0: none) */
    bool jwt_user;           /* a JWT bound to a user ("user" claim) */
    char retry_buf[16];      /* storage for retry_after */
} em__api_call_t;

/* Answers with body (len bytes) of content type ctype; adds the security
 * headers and X-Request-Id, counts and logs the request. A second answer to
 * the same request is ignored. */
void em__api_send(em__api_req_t *r, int status, const char *ctype, const char *body, size_t len);

/* Records a security event (queued) with the request's source and actor. */
void em__api_security_event(em__api_req_t *r, const char *type, em_severity_t sev,
                            const char *message);

/* ---- TLS (tls.c) ------------------------------------------------------ */

/* The CRL file for client certificates under options o: client_crl_file,
 * else the pki's crl.pem, else NULL. */
const char *em__api_tls_crl_for(const em_api_options_t *o);

/*
 * A server SSL_CTX for listener l under options o: TLS 1.3 only, the three
 * AEAD suites, client certificates as l asks, the CRLs of em__api_tls_crl_for
 * that a client CA issued; and, when verifier is not NULL and l asks for
 * client certificates, an em_verifier_t of the same CA and CRL (else NULL).
 * Errors: EM_ERR_TLS (files unreadable or mismatched), those of
 * em_verifier_new, EM_ERR_NOMEM; nothing is left to free.
 */
em_err_t em__api_tls_setup(const em_api_listener_t *l, const em_api_options_t *o, SSL_CTX **ctx,
                           em_verifier_t **verifier, em_error_t *err);

/* The verified client certificate's CN of the connection the request came on,
 * into cn (at least EM_STORE_NAME_MAX + 1 bytes). false when none. */
bool em__api_tls_peer_cn(struct evhttp_request *req, char *cn, size_t size);

/*
 * Verifies the client certificate of the connection req came on with its
 * listener's verifier (chain, validity, CRL, key usage and extended key
 * usage for purpose; em_verifier_check) at now_ms. The files are looked at
 * again at most once a second; a changed CRL also rebuilds the listener's
 * SSL_CTX. The outcome is kept with the connection until the certificate
 * expires or a CA or CRL changes. Errors: EM_ERR_CERTIFICATE with the
 * reason in err->message.
 */
em_err_t em__api_tls_peer_verify(em_api_t *api, struct evhttp_request *req,
                                 em_cert_profile_t purpose, int64_t now_ms, em_error_t *err);

/* The verifier of device certificates under o: device_ca_file, else the
 * pki's ca.crt, with em__api_tls_crl_for's CRL; *out NULL with neither CA.
 * Errors: those of em_verifier_new. */
em_err_t em__api_tls_device_verifier(const em_api_options_t *o, em_verifier_t **out,
                                     em_error_t *err);

/* ---- authentication (auth.c, auth_jwt.c) ------------------------------ */

/* The longest credential a request may present, and so the longest JWT. */
#define EM__API_JWT_MAX 4096

/* The longest lifetime of a device JWT from challenge-response (other JWTs:
 * a day). */
#define EM__API_DEVICE_JWT_TTL_MAX (7 * 86400)

/* Loads or creates the JWT key of opts->jwt_key_file into api.
 * EM_ERR_CONFIGURATION (permissions, not an ES256 key), EM_ERR_IO, EM_ERR_NOMEM. */
em_err_t em__api_auth_init(em_api_t *api, em_error_t *err);
void em__api_auth_cleanup(em_api_t *api);

/*
 * Authenticates the request into r->who. On failure it has answered (401, or
 * 429 when the client address failed too often) and returns false.
 */
bool em__api_authenticate(em__api_req_t *r);

/* The client address's failed-authentication bucket: true when the address
 * failed too often, after answering 429 with Retry-After (and a security
 * event at most once a minute); false when it may go on. */
bool em__api_fail_blocked(em__api_req_t *r);

/* Counts one failed authentication against the request's client address. */
void em__api_fail_count(em__api_req_t *r);

/* True when s (len bytes) is an API key id: "k_" + 12 lower-case hex digits. */
bool em__api_key_id_valid(const char *s, size_t len);

/* The JWT half of em__api_auth_init / em__api_auth_cleanup (auth_jwt.c): loads
 * or creates the key of opts->jwt_key_file into api (errors as
 * em__api_auth_init's), and wipes and frees it (api's key may be unset). */
em_err_t em__api_jwt_key_load(em_api_t *api, em_error_t *err);
void em__api_jwt_key_free(em_api_t *api);

/*
 * Verifies a JWT (ES256 with the API's key, iss, aud, exp, nbf, iat, sub,
 * role) at now_ms into who. Returns NULL when valid, else the reason (static
 * text, for the log).
 */
const char *em__api_jwt_verify(em_api_t *api, const char *token, size_t len, int64_t now_ms,
                               em__api_identity_t *who);

/*
 * As em__api_jwt_issue; user_bound adds a "user" claim (= sub): the token is
 * refused once that user is deleted or disabled. em__api_jwt_issue binds
 * tokens of certificate users.
 */
em_err_t em__api_jwt_issue_bound(em_api_t *api, const em__api_identity_t *who, bool user_bound,
                                 int ttl_s, char *buf, size_t size, int64_t *expires_at_ms);

/* As em__api_jwt_issue, with a "caps" claim: the ncaps strings of caps (a
 * device's capabilities). */
em_err_t em__api_jwt_issue_caps(em_api_t *api, const em__api_identity_t *who,
                                const char *const *caps, size_t ncaps, int ttl_s, char *buf,
                                size_t size, int64_t *expires_at_ms);

/* As em__api_jwt_verify; *user_bound (may be NULL) tells whether the token
 * has a "user" claim (the caller checks that user). */
const char *em__api_jwt_verify_bound(em_api_t *api, const char *token, size_t len, int64_t now_ms,
                                     em__api_identity_t *who, bool *user_bound);

/*
 * Parses an Authorization header value: "Bearer " + a credential of 1..4096
 * bytes of visible ASCII. Returns the credential and its length, or NULL.
 */
const char *em__api_bearer(const char *header, size_t *len);

/* Decodes canonical base64url without padding (len characters) into out (at
 * most size bytes); the number of bytes, or -1 when it is not that (a bad
 * character, a lone trailing character, bits left over that are not zero). */
long em__b64url_decode(const char *s, size_t len, unsigned char *out, size_t size);

/* Forgets a cached user (created, deleted) so that the next certificate
 * with that name is looked up again. */
void em__api_auth_forget_user(em_api_t *api, const char *name);

/* The per-minute rate of an identity (its key's own rate, else the role's). */
uint32_t em__api_rate_for(const em_api_t *api, const em__api_identity_t *who, uint32_t key_rate);

/* ---- the request pipeline (server_request.c) --------------------------- */

/* Starts call for req arriving on l: zeroed, the request's times, method
 * name and correlation id; counts the request. The source is the caller's. */
void em__api_call_init(em__api_call_t *call, em__api_listener_t *l, struct evhttp_request *req);

/* Serves call (made by em__api_call_init, its source set) arriving on l:
 * path, health and metrics, route, authentication, rate limit, role,
 * handler. It may leave the request unanswered only through a bug: the
 * caller answers 500 then. */
void em__api_serve(em__api_call_t *call, em__api_listener_t *l);

/* ---- routing (server_request.c) --------------------------------------- */

/*
 * Matches path (no query string) against pattern, percent-decoding each
 * captured segment into caps (EM__API_CAPTURES_MAX of EM__API_CAPTURE_MAX + 1).
 * Returns 1 on a match, 0 when it does not match, -1 when it matches but a
 * capture is bad (bad escape, '/', control character, empty or too long).
 */
int em__api_path_match(const char *pattern, const char *path,
                       char caps[EM__API_CAPTURES_MAX][EM__API_CAPTURE_MAX + 1], size_t *ncaps);

/* ---- metrics (metrics.c) ---------------------------------------------- */

/* Answers /metrics (Prometheus text format 0.0.4). */
void em__api_metrics(em__api_req_t *r);

#endif /* EMIOT_API_CORE_H */
