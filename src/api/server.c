/*
 * emiot - server.c: the API server. Listeners (evhttp on the caller's event
 * base, TLS through bufferevent_openssl), connections, reload, draining,
 * bootstrap. The request pipeline (routing, authentication, rate limit, role,
 * handler) is server_request.c's.
 */
#include <arpa/inet.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>

#include <event2/buffer.h>
#include <event2/bufferevent.h>
#include <event2/bufferevent_ssl.h>
#include <event2/event.h>
#include <event2/http.h>
#include <event2/util.h>
#include <openssl/crypto.h>

#include "api/api_core.h"
#include "api/devcache.h"
#include "api/nonce.h"
#include "emiot/clock.h"
#include "emiot/log.h"

#define HEADERS_MAX      16384 /* all request headers together */
#define BUCKETS_MAX      65536
#define FAIL_BUCKETS_MAX 65536
#define BODY_LIMIT       ((size_t)EM_API_BODY_MAX)
#define CONNECTIONS_MAX  10000 /* TLS connections open at once, per API */

/* Device identity defaults (api.h). */
#define DEVICE_TOKEN_TTL_S     86400
#define NONCE_TTL_S            300
#define NONCES_DEFAULT         10000
#define ENROLL_TOKEN_TTL_S     86400
#define ENROLL_TOKEN_TTL_MAX_S (30 * 86400)
#define ENROLL_TOKEN_TTL_LIMIT (366 * 86400) /* the longest enroll_token_ttl_max_s */
#define DEVICE_CERT_DAYS       365

void em_api_options_init(em_api_options_t *opts)
{
    if (opts == NULL)
        return;
    memset(opts, 0, sizeof *opts);
    opts->max_body = 65536;
    opts->request_timeout_s = 30;
    opts->jwt_issuer = "emiotd";
    opts->jwt_audience = "emiot-api";
    opts->jwt_ttl_s = 3600;
    opts->auth_fail_per_min = 20;
    opts->command_ttl_s = 300;
    opts->device_token_ttl_s = DEVICE_TOKEN_TTL_S;
    opts->nonce_ttl_s = NONCE_TTL_S;
    opts->nonces_max = NONCES_DEFAULT;
    opts->enroll_token_ttl_s = ENROLL_TOKEN_TTL_S;
    opts->enroll_token_ttl_max_s = ENROLL_TOKEN_TTL_MAX_S;
    opts->device_cert_days = DEVICE_CERT_DAYS;
}

const em_api_options_t *em__api_options(const em_api_t *api)
{
    return &api->opts;
}

/* ---- options ------------------------------------------------------------- */

static bool is_loopback(const char *addr)
{
    struct in_addr a4;
    struct in6_addr a6;
    if (addr == NULL)
        return false;
    if (inet_pton(AF_INET, addr, &a4) == 1)
        return (ntohl(a4.s_addr) >> 24) == 127;
    if (inet_pton(AF_INET6, addr, &a6) == 1)
        return IN6_IS_ADDR_LOOPBACK(&a6);
    return false;
}

/* Checks one listener (index i, for messages). */
static em_err_t check_listener(const em_api_listener_t *l, size_t i, em_error_t *err)
{
    if (l->address == NULL || l->address[0] == '\0' || strlen(l->address) > 255)
        return em_error_set(err, EM_ERR_CONFIGURATION, EM_SEV_HIGH, "address",
                            "listener %zu needs an address", i);
    if (l->cert_file == NULL) {
        if (!l->metrics_only || !is_loopback(l->address))
            return em_error_set(err, EM_ERR_CONFIGURATION, EM_SEV_HIGH, "cert_file",
                                "listener %zu: plain HTTP only on a loopback address and "
                                "only for metrics",
                                i);
        if (l->client_auth != EM_CLIENT_AUTH_NONE)
            return em_error_set(err, EM_ERR_CONFIGURATION, EM_SEV_HIGH, "client_auth",
                                "listener %zu: client certificates need TLS", i);
    } else {
        if (l->key_file == NULL)
            return em_error_set(err, EM_ERR_CONFIGURATION, EM_SEV_HIGH, "key_file",
                                "listener %zu needs a key_file", i);
        if (l->client_auth != EM_CLIENT_AUTH_NONE && l->client_ca_file == NULL)
            return em_error_set(err, EM_ERR_CONFIGURATION, EM_SEV_HIGH, "client_ca_file",
                                "listener %zu asks for client certificates: it needs "
                                "client_ca_file",
                                i);
    }
    if ((unsigned)l->client_auth > EM_CLIENT_AUTH_REQUIRED)
        return em_error_set(err, EM_ERR_CONFIGURATION, EM_SEV_HIGH, "client_auth",
                            "listener %zu: unknown client_auth", i);
    return EM_OK;
}

/* The device identity options of o: defaults for zeros, then the ranges. */
static em_err_t check_identity_options(em_api_options_t *o, em_error_t *err)
{
    if (o->device_token_ttl_s == 0)
        o->device_token_ttl_s = DEVICE_TOKEN_TTL_S;
    if (o->nonce_ttl_s == 0)
        o->nonce_ttl_s = NONCE_TTL_S;
    if (o->nonces_max == 0)
        o->nonces_max = NONCES_DEFAULT;
    if (o->enroll_token_ttl_s == 0)
        o->enroll_token_ttl_s = ENROLL_TOKEN_TTL_S;
    if (o->enroll_token_ttl_max_s == 0)
        o->enroll_token_ttl_max_s = ENROLL_TOKEN_TTL_MAX_S;
    if (o->device_cert_days == 0)
        o->device_cert_days = DEVICE_CERT_DAYS;
    if (o->device_token_ttl_s < 60 || o->device_token_ttl_s > EM__API_DEVICE_JWT_TTL_MAX)
        return em_error_set(err, EM_ERR_CONFIGURATION, EM_SEV_HIGH, "device_token_ttl_s",
                            "must be 60-%d", EM__API_DEVICE_JWT_TTL_MAX);
    if (o->nonce_ttl_s < 1 || o->nonce_ttl_s > EM__NONCE_TTL_MAX)
        return em_error_set(err, EM_ERR_CONFIGURATION, EM_SEV_HIGH, "nonce_ttl_s", "must be 1-%d",
                            EM__NONCE_TTL_MAX);
    if (o->nonces_max > EM__NONCES_MAX)
        return em_error_set(err, EM_ERR_CONFIGURATION, EM_SEV_HIGH, "nonces_max", "must be 1-%d",
                            EM__NONCES_MAX);
    if (o->enroll_token_ttl_max_s < 1 || o->enroll_token_ttl_max_s > ENROLL_TOKEN_TTL_LIMIT)
        return em_error_set(err, EM_ERR_CONFIGURATION, EM_SEV_HIGH, "enroll_token_ttl_max_s",
                            "must be 1-%d", ENROLL_TOKEN_TTL_LIMIT);
    if (o->enroll_token_ttl_s < 1 || o->enroll_token_ttl_s > o->enroll_token_ttl_max_s)
        return em_error_set(err, EM_ERR_CONFIGURATION, EM_SEV_HIGH, "enroll_token_ttl_s",
                            "must be 1-enroll_token_ttl_max_s");
    if (o->device_cert_days < 1 || o->device_cert_days > EM_PKI_DAYS_MAX)
        return em_error_set(err, EM_ERR_CONFIGURATION, EM_SEV_HIGH, "device_cert_days",
                            "must be 1-%d", EM_PKI_DAYS_MAX);
    if (o->client_crl_file != NULL &&
        (o->client_crl_file[0] == '\0' || strlen(o->client_crl_file) > 4095))
        return em_error_set(err, EM_ERR_CONFIGURATION, EM_SEV_HIGH, "client_crl_file",
                            "must be a path");
    if (o->device_ca_file != NULL &&
        (o->device_ca_file[0] == '\0' || strlen(o->device_ca_file) > 4095))
        return em_error_set(err, EM_ERR_CONFIGURATION, EM_SEV_HIGH, "device_ca_file",
                            "must be a path");
    return EM_OK;
}

/* Checks opts and fills defaults into out; the strings still point into the
 * caller's memory (copied by own_strings). */
static em_err_t check_options(const em_api_options_t *in, em_api_options_t *out, em_error_t *err)
{
    *out = *in;
    if (in->nlisteners == 0 || in->nlisteners > EM_API_LISTENERS_MAX)
        return em_error_set(err, EM_ERR_CONFIGURATION, EM_SEV_HIGH, "listeners",
                            "must be 1-%d listeners", EM_API_LISTENERS_MAX);
    for (size_t i = 0; i < in->nlisteners; i++) {
        em_err_t rc = check_listener(&in->listeners[i], i, err);
        if (rc != EM_OK)
            return rc;
    }
    if (out->max_body == 0)
        out->max_body = 65536;
    if (out->max_body > BODY_LIMIT)
        return em_error_set(err, EM_ERR_CONFIGURATION, EM_SEV_HIGH, "max_body",
                            "must be at most %zu bytes", BODY_LIMIT);
    if (out->request_timeout_s == 0)
        out->request_timeout_s = 30;
    if (out->request_timeout_s < 1 || out->request_timeout_s > 3600)
        return em_error_set(err, EM_ERR_CONFIGURATION, EM_SEV_HIGH, "request_timeout_s",
                            "must be 1-3600");
    if (out->jwt_issuer == NULL)
        out->jwt_issuer = "emiotd";
    if (out->jwt_audience == NULL)
        out->jwt_audience = "emiot-api";
    if (out->jwt_issuer[0] == '\0' || strlen(out->jwt_issuer) > 255 ||
        out->jwt_audience[0] == '\0' || strlen(out->jwt_audience) > 255)
        return em_error_set(err, EM_ERR_CONFIGURATION, EM_SEV_HIGH, "jwt_issuer",
                            "issuer and audience must be 1-255 characters");
    if (out->jwt_ttl_s == 0)
        out->jwt_ttl_s = 3600;
    if (out->jwt_ttl_s < 60 || out->jwt_ttl_s > 86400)
        return em_error_set(err, EM_ERR_CONFIGURATION, EM_SEV_HIGH, "jwt_ttl_s",
                            "must be 60-86400");
    if (out->auth_fail_per_min == 0)
        out->auth_fail_per_min = 20;
    if (out->command_ttl_s == 0)
        out->command_ttl_s = 300;
    if (out->command_ttl_s < 10 || out->command_ttl_s > 86400)
        return em_error_set(err, EM_ERR_CONFIGURATION, EM_SEV_HIGH, "command_ttl_s",
                            "must be 10-86400");
    for (int r = 0; r < 5; r++)
        if (out->rate_per_min[r] == 0)
            out->rate_per_min[r] = r == EM_ROLE_DEVICE ? 60 : 1200;
    return check_identity_options(out, err);
}

typedef struct strset {
    char *s[EM_API_LISTENERS_MAX * 4 + 8];
    size_t n;
} strset_t;

static void strset_free(strset_t *ss)
{
    for (size_t i = 0; i < ss->n; i++)
        free(ss->s[i]);
    ss->n = 0;
}

static bool dup_into(strset_t *ss, const char **p)
{
    if (*p == NULL)
        return true;
    char *c = strdup(*p);
    if (c == NULL)
        return false;
    ss->s[ss->n++] = c;
    *p = c;
    return true;
}

/* Makes every string of o point at a copy owned by ss. */
static bool own_strings(em_api_options_t *o, strset_t *ss)
{
    bool ok = dup_into(ss, &o->jwt_key_file) && dup_into(ss, &o->jwt_issuer) &&
              dup_into(ss, &o->jwt_audience) && dup_into(ss, &o->client_crl_file) &&
              dup_into(ss, &o->device_ca_file);
    for (size_t i = 0; ok && i < o->nlisteners; i++) {
        em_api_listener_t *l = &o->listeners[i];
        ok = dup_into(ss, &l->address) && dup_into(ss, &l->cert_file) &&
             dup_into(ss, &l->key_file) && dup_into(ss, &l->client_ca_file);
    }
    if (!ok)
        strset_free(ss);
    return ok;
}

/* ---- connections ------------------------------------------------------- */

/* Per TLS connection: which listener, and requests not yet fully answered.
 * It lives in the SSL's ex_data and dies with the SSL (conn_free), which is
 * how closed connections are counted. */
typedef struct conn_state {
    em__api_listener_t *l;
    size_t in_flight;
    bool nodelay; /* TCP_NODELAY set on its socket */
    bool over;    /* opened beyond CONNECTIONS_MAX: answered 503, then closed */
    char source[EM_STORE_NAME_MAX + 1]; /* the client's "ip:port", "" until the first request */
} conn_state_t;

static pthread_once_t ex_once = PTHREAD_ONCE_INIT;
static int ex_index = -1;

static void conn_free(void *parent, void *ptr, CRYPTO_EX_DATA *ad, int idx, long argl, void *argp)
{
    (void)parent;
    (void)ad;
    (void)idx;
    (void)argl;
    (void)argp;
    conn_state_t *cs = ptr;
    if (cs == NULL)
        return;
    em_api_t *api = cs->l->api;
    if (api->stats.connections_open > 0)
        api->stats.connections_open--;
    api->active = api->active >= cs->in_flight ? api->active - cs->in_flight : 0;
    free(cs);
}

static void ex_init(void)
{
    ex_index = SSL_get_ex_new_index(0, NULL, NULL, NULL, conn_free);
}

static struct bufferevent *bev_cb(struct event_base *base, void *arg)
{
    em__api_listener_t *l = arg;
    SSL *ssl = SSL_new(l->ctx);
    conn_state_t *cs = calloc(1, sizeof *cs);
    if (ssl == NULL || cs == NULL || ex_index < 0) {
        /* evhttp would fall back to a plain socket on NULL; the request
         * callback refuses anything that arrives on one (see guard). */
        SSL_free(ssl);
        free(cs);
        return NULL;
    }
    cs->l = l;
    /* evhttp has no connection limit of its own (2.1); past ours the
     * connection is still made, and its requests are answered 503. */
    cs->over = l->api->stats.connections_open >= CONNECTIONS_MAX;
    if (SSL_set_ex_data(ssl, ex_index, cs) != 1) {
        SSL_free(ssl);
        free(cs);
        return NULL;
    }
    struct bufferevent *bev = bufferevent_openssl_socket_new(
        base, -1, ssl, BUFFEREVENT_SSL_ACCEPTING, BEV_OPT_CLOSE_ON_FREE);
    if (bev == NULL) {
        SSL_free(ssl); /* frees cs through conn_free... */
        return NULL;
    }
    l->api->stats.connections_open++; /* ...and only now does it count */
    return bev;
}

static conn_state_t *conn_of(struct evhttp_request *req)
{
    struct evhttp_connection *conn = evhttp_request_get_connection(req);
    struct bufferevent *bev = conn != NULL ? evhttp_connection_get_bufferevent(conn) : NULL;
    SSL *ssl = bev != NULL ? bufferevent_openssl_get_ssl(bev) : NULL;
    return ssl != NULL && ex_index >= 0 ? SSL_get_ex_data(ssl, ex_index) : NULL;
}

static void on_complete(struct evhttp_request *req, void *arg)
{
    (void)req;
    conn_state_t *cs = arg;
    if (cs->in_flight > 0) {
        cs->in_flight--;
        if (cs->l->api->active > 0)
            cs->l->api->active--;
    }
}

static void set_source(struct evhttp_request *req, char *out, size_t size)
{
    struct evhttp_connection *conn = evhttp_request_get_connection(req);
    char *addr = NULL;
    ev_uint16_t port = 0;
    if (conn != NULL)
        evhttp_connection_get_peer(conn, &addr, &port);
    if (addr == NULL) {
        snprintf(out, size, "unknown");
    } else if (strchr(addr, ':') != NULL) {
        snprintf(out, size, "[%s]:%u", addr, (unsigned)port);
    } else {
        snprintf(out, size, "%s:%u", addr, (unsigned)port);
    }
}

static void gen_cb(struct evhttp_request *req, void *arg)
{
    em__api_listener_t *l = arg;
    em_api_t *api = l->api;
    em__api_call_t call;
    em__api_call_init(&call, l, req);
    conn_state_t *cs = l->ctx != NULL ? conn_of(req) : NULL;
    if (cs != NULL) {
        /* A connection's address does not change: formatted once. */
        if (cs->source[0] == '\0')
            set_source(req, cs->source, sizeof cs->source);
        memcpy(call.r.source, cs->source, sizeof call.r.source);
    } else {
        set_source(req, call.r.source, sizeof call.r.source);
    }

    if (l->ctx != NULL) {
        if (cs == NULL) {
            /* A TLS listener whose TLS set-up failed for this connection:
             * answer nothing the client sent. */
            evhttp_add_header(evhttp_request_get_output_headers(req), "Connection", "close");
            evhttp_send_reply(req, 400, "Bad Request", NULL);
            return;
        }
        if (!cs->nodelay) {
            /* Answers go out as written: Nagle's algorithm against the
             * client's delayed ACK would hold each one back ~40 ms. */
            struct evhttp_connection *conn = evhttp_request_get_connection(req);
            evutil_socket_t fd = bufferevent_getfd(evhttp_connection_get_bufferevent(conn));
            int one = 1;
            if (fd >= 0)
                setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
            cs->nodelay = true;
        }
        cs->in_flight++;
        api->active++;
        evhttp_request_set_on_complete_cb(req, on_complete, cs);
        if (cs->over) {
            evhttp_add_header(evhttp_request_get_output_headers(req), "Connection", "close");
            em__api_error(&call.r, 503, "limit_reached", "too many connections",
                          "connection over the limit");
            return;
        }
    }
    em__api_serve(&call, l);
    if (!call.r.answered)
        em__api_error(&call.r, 500, NULL, NULL, "no answer");
    OPENSSL_cleanse(&call.r.who, sizeof call.r.who);
}

/* ---- life cycle ---------------------------------------------------------- */

/*
 * What evhttp itself reads at most. Over it, evhttp answers 413 with its own
 * HTML page and no hook (libevent 2.1 calls nothing before the body is read);
 * between max_body and it, the request reaches us and gets a JSON 413. Four
 * times max_body (64 KiB to 4 MiB) gives JSON answers to near misses without
 * letting one request hold much more memory than an accepted one.
 */
static ev_ssize_t evhttp_body_cap(size_t max_body)
{
    size_t cap = max_body * 4;
    if (cap < 65536)
        cap = 65536;
    if (cap > 4 * BODY_LIMIT)
        cap = 4 * BODY_LIMIT;
    return (ev_ssize_t)cap;
}

static em_err_t bind_listener(em_api_t *api, size_t i, em_error_t *err)
{
    em__api_listener_t *l = &api->listeners[i];
    const em_api_listener_t *o = &api->opts.listeners[i];
    l->api = api;
    l->idx = i;
    l->metrics_only = o->metrics_only;
    l->client_auth = o->client_auth;
    if (o->cert_file != NULL) {
        em_err_t rc = em__api_tls_setup(o, &api->opts, &l->ctx, &l->verifier, err);
        if (rc != EM_OK)
            return rc;
        SSL_CTX_set_app_data(l->ctx, l);
        l->verifier_mono_ms = em_mono_ms();
    }
    l->http = evhttp_new(api->base);
    if (l->http == NULL)
        return em_error_set(err, EM_ERR_NOMEM, EM_SEV_HIGH, NULL, "out of memory");
    evhttp_set_max_body_size(l->http, evhttp_body_cap(api->opts.max_body));
    evhttp_set_max_headers_size(l->http, HEADERS_MAX);
    evhttp_set_timeout(l->http, api->opts.request_timeout_s);
    evhttp_set_allowed_methods(l->http, EVHTTP_REQ_GET | EVHTTP_REQ_POST | EVHTTP_REQ_PUT |
                                            EVHTTP_REQ_PATCH | EVHTTP_REQ_DELETE);
    evhttp_set_gencb(l->http, gen_cb, l);
    if (l->ctx != NULL)
        evhttp_set_bevcb(l->http, bev_cb, l);
    l->sock = evhttp_bind_socket_with_handle(l->http, o->address, o->port);
    if (l->sock == NULL)
        return em_error_set(err, EM_ERR_IO, EM_SEV_HIGH, "address", "cannot listen on %s port %u",
                            o->address, (unsigned)o->port);
    struct sockaddr_storage ss;
    memset(&ss, 0, sizeof ss);
    socklen_t sl = sizeof ss;
    evutil_socket_t fd = evhttp_bound_socket_get_fd(l->sock);
    l->port = o->port;
    if (getsockname(fd, (struct sockaddr *)&ss, &sl) == 0) {
        if (ss.ss_family == AF_INET)
            l->port = ntohs(((struct sockaddr_in *)&ss)->sin_port);
        else if (ss.ss_family == AF_INET6)
            l->port = ntohs(((struct sockaddr_in6 *)&ss)->sin6_port);
    }
    return EM_OK;
}

em_api_t *em_api_new(struct event_base *base, const em_api_options_t *opts, em_store_t *store,
                     em_manager_t *mgr, em_error_t *err)
{
    if (base == NULL || opts == NULL || store == NULL || mgr == NULL) {
        em_error_set(err, EM_ERR_INVALID_ARGUMENT, EM_SEV_HIGH, NULL,
                     "base, options, store and manager are required");
        return NULL;
    }
    pthread_once(&ex_once, ex_init);
    /* OpenSSL writes to sockets with write(): a client gone before its answer
     * raises SIGPIPE, which kills a program that has not ignored it. Which
     * signals a program ignores is the program's choice; say so loudly. */
    struct sigaction sa;
    if (sigaction(SIGPIPE, NULL, &sa) == 0 && sa.sa_handler == SIG_DFL)
        em_log(EM_LOG_WARN, "api", NULL,
               "SIGPIPE is not ignored: a client that disconnects early would kill the process",
               NULL, 0);
    em_api_t *api = calloc(1, sizeof *api);
    if (api == NULL) {
        em_error_set(err, EM_ERR_NOMEM, EM_SEV_HIGH, NULL, "out of memory");
        return NULL;
    }
    api->base = base;
    api->store = store;
    api->mgr = mgr;
    api->started_mono_ms = em_mono_ms();
    api->rnd_used = sizeof api->rnd; /* drawn at the first request */
    api->cert_gen = 1;
    if (check_options(opts, &api->opts, err) != EM_OK) {
        free(api);
        return NULL;
    }
    strset_t ss = {.n = 0};
    if (!own_strings(&api->opts, &ss)) {
        free(api);
        em_error_set(err, EM_ERR_NOMEM, EM_SEV_HIGH, NULL, "out of memory");
        return NULL;
    }
    memcpy(api->strs, ss.s, sizeof ss.s);
    api->nstrs = ss.n;
    api->buckets = em__buckets_new(BUCKETS_MAX);
    api->fail_buckets = em__buckets_new(FAIL_BUCKETS_MAX);
    api->devcache = em__devcache_new();
    api->nonces = em__nonces_new(api->opts.nonces_max);
    if (api->buckets == NULL || api->fail_buckets == NULL || api->devcache == NULL ||
        api->nonces == NULL) {
        em_error_set(err, EM_ERR_NOMEM, EM_SEV_HIGH, NULL, "out of memory");
        em_api_free(api);
        return NULL;
    }
    if (em__api_auth_init(api, err) != EM_OK ||
        em__api_tls_device_verifier(&api->opts, &api->dev_verifier, err) != EM_OK) {
        em_api_free(api);
        return NULL;
    }
    api->dev_verifier_mono_ms = em_mono_ms();
    for (size_t i = 0; i < api->opts.nlisteners; i++) {
        api->nlisteners = i + 1;
        if (bind_listener(api, i, err) != EM_OK) {
            em_api_free(api);
            return NULL;
        }
    }
    for (size_t i = 0; i < api->nlisteners; i++) {
        const em_api_listener_t *o = &api->opts.listeners[i];
        em_log_field_t f[4] = {
            EM_LOG_STR("address", o->address), EM_LOG_INT("port", api->listeners[i].port),
            EM_LOG_BOOL("tls", o->cert_file != NULL), EM_LOG_BOOL("metrics_only", o->metrics_only)};
        em_log(EM_LOG_INFO, "api", NULL, "listening", f, 4);
    }
    return api;
}

void em_api_free(em_api_t *api)
{
    if (api == NULL)
        return;
    /* Connections first: their SSLs report back into api while freed. */
    for (size_t i = 0; i < api->nlisteners; i++) {
        if (api->listeners[i].http != NULL)
            evhttp_free(api->listeners[i].http);
        api->listeners[i].http = NULL;
    }
    for (size_t i = 0; i < api->nlisteners; i++) {
        SSL_CTX_free(api->listeners[i].ctx);
        api->listeners[i].ctx = NULL;
        em_verifier_free(api->listeners[i].verifier);
        api->listeners[i].verifier = NULL;
    }
    em_verifier_free(api->dev_verifier);
    em__nonces_free(api->nonces);
    em__api_auth_cleanup(api);
    em__buckets_free(api->buckets);
    em__buckets_free(api->fail_buckets);
    em__devcache_free(api->devcache);
    for (size_t i = 0; i < api->nstrs; i++)
        free(api->strs[i]);
    free(api);
}

uint16_t em_api_port(const em_api_t *api, size_t idx)
{
    if (api == NULL || idx >= api->nlisteners)
        return 0;
    return api->listeners[idx].port;
}

em_err_t em_api_reload(em_api_t *api, const em_api_options_t *opts, em_error_t *err)
{
    if (api == NULL || opts == NULL)
        return em_error_set(err, EM_ERR_INVALID_ARGUMENT, EM_SEV_HIGH, NULL,
                            "api and options are required");
    em_api_options_t o;
    em_err_t rc = check_options(opts, &o, err);
    if (rc != EM_OK)
        return rc;
    if (o.nlisteners != api->opts.nlisteners)
        return em_error_set(err, EM_ERR_CONFIGURATION, EM_SEV_HIGH, "listeners",
                            "listeners cannot be added or removed by a reload");
    for (size_t i = 0; i < o.nlisteners; i++) {
        const em_api_listener_t *a = &o.listeners[i], *b = &api->opts.listeners[i];
        /* Port 0 at start means the port it got. */
        if (strcmp(a->address, b->address) != 0 ||
            (a->port != b->port && a->port != api->listeners[i].port) ||
            (a->cert_file == NULL) != (b->cert_file == NULL) || a->metrics_only != b->metrics_only)
            return em_error_set(err, EM_ERR_CONFIGURATION, EM_SEV_HIGH, "listeners",
                                "listener %zu: address, port, TLS and role cannot change by a "
                                "reload",
                                i);
    }
    /* The JWT key, issuer and audience stay as started: tokens in use stay
     * valid. So do the keystore, the CA and the nonce table's size. */
    o.jwt_key_file = api->opts.jwt_key_file;
    o.jwt_issuer = api->opts.jwt_issuer;
    o.jwt_audience = api->opts.jwt_audience;
    o.keystore = api->opts.keystore;
    o.pki = api->opts.pki;
    o.nonces_max = api->opts.nonces_max;

    SSL_CTX *ctxs[EM_API_LISTENERS_MAX] = {0};
    em_verifier_t *vers[EM_API_LISTENERS_MAX] = {0};
    em_verifier_t *dev_verifier = NULL;
    strset_t ss = {.n = 0};
    for (size_t i = 0; i < o.nlisteners; i++) {
        if (o.listeners[i].cert_file == NULL)
            continue;
        rc = em__api_tls_setup(&o.listeners[i], &o, &ctxs[i], &vers[i], err);
        if (rc != EM_OK)
            goto fail;
    }
    rc = em__api_tls_device_verifier(&o, &dev_verifier, err);
    if (rc != EM_OK)
        goto fail;
    o.jwt_key_file = NULL; /* kept from api->strs below */
    o.jwt_issuer = NULL;
    o.jwt_audience = NULL;
    if (!own_strings(&o, &ss)) {
        rc = em_error_set(err, EM_ERR_NOMEM, EM_SEV_HIGH, NULL, "out of memory");
        goto fail;
    }
    o.jwt_key_file = api->opts.jwt_key_file;
    o.jwt_issuer = api->opts.jwt_issuer;
    o.jwt_audience = api->opts.jwt_audience;

    /* Commit: nothing below fails. Old contexts live on in their connections. */
    for (size_t i = 0; i < o.nlisteners; i++) {
        em__api_listener_t *l = &api->listeners[i];
        if (ctxs[i] != NULL) {
            SSL_CTX_set_app_data(ctxs[i], l);
            SSL_CTX_free(l->ctx);
            l->ctx = ctxs[i];
        }
        em_verifier_free(l->verifier);
        l->verifier = vers[i];
        l->verifier_mono_ms = em_mono_ms();
        l->client_auth = o.listeners[i].client_auth;
        evhttp_set_max_body_size(l->http, evhttp_body_cap(o.max_body));
        evhttp_set_timeout(l->http, o.request_timeout_s);
    }
    /* Keep the three JWT strings (first in strs), replace the listeners'. */
    size_t keep = 0;
    char *kept[3];
    for (size_t i = 0; i < api->nstrs; i++) {
        char *s = api->strs[i];
        if (s == api->opts.jwt_key_file || s == api->opts.jwt_issuer || s == api->opts.jwt_audience)
            kept[keep++] = s;
        else
            free(s);
    }
    api->nstrs = 0;
    for (size_t i = 0; i < keep; i++)
        api->strs[api->nstrs++] = kept[i];
    for (size_t i = 0; i < ss.n; i++)
        api->strs[api->nstrs++] = ss.s[i];
    api->opts = o;
    em_verifier_free(api->dev_verifier);
    api->dev_verifier = dev_verifier;
    api->dev_verifier_mono_ms = em_mono_ms();
    api->cert_gen++; /* connections check their certificates again */
    em_logf(EM_LOG_INFO, "api", "reloaded: certificates, CRLs, rate limits and max_body");
    return EM_OK;
fail:
    for (size_t i = 0; i < o.nlisteners; i++) {
        SSL_CTX_free(ctxs[i]);
        em_verifier_free(vers[i]);
    }
    em_verifier_free(dev_verifier);
    return rc;
}

void em_api_stop_accepting(em_api_t *api)
{
    if (api == NULL || api->stopping)
        return;
    api->stopping = true;
    for (size_t i = 0; i < api->nlisteners; i++) {
        em__api_listener_t *l = &api->listeners[i];
        if (l->http != NULL && l->sock != NULL)
            evhttp_del_accept_socket(l->http, l->sock);
        l->sock = NULL;
    }
}

size_t em_api_active_requests(const em_api_t *api)
{
    return api != NULL ? api->active : 0;
}

void em_api_stats(const em_api_t *api, em_api_stats_t *out)
{
    if (out == NULL)
        return;
    if (api == NULL) {
        memset(out, 0, sizeof *out);
        return;
    }
    *out = api->stats;
}

/* ---- bootstrap ----------------------------------------------------------- */

static int count_one_key(const em_store_api_key_t *k, void *ud)
{
    (void)k;
    (*(size_t *)ud)++;
    return 1;
}

static int count_one_user(const em_store_user_t *u, void *ud)
{
    (void)u;
    (*(size_t *)ud)++;
    return 1;
}

em_err_t em_api_bootstrap(em_store_t *store, char *key_out, size_t size, bool *created,
                          em_error_t *err)
{
    if (created != NULL)
        *created = false;
    if (store == NULL || key_out == NULL || size < EM_API_KEY_LEN + 1)
        return em_error_set(err, EM_ERR_INVALID_ARGUMENT, EM_SEV_HIGH, NULL,
                            "store and a key buffer of %d bytes are required", EM_API_KEY_LEN + 1);
    size_t keys = 0, users = 0;
    em_err_t rc = em_store_api_key_list(store, count_one_key, &keys, err);
    if (rc == EM_OK)
        rc = em_store_user_list(store, count_one_user, &users, err);
    if (rc != EM_OK || keys > 0 || users > 0)
        return rc;

    em_store_api_key_t rec;
    memset(&rec, 0, sizeof rec);
    rc = em__api_key_generate(key_out, size, &rec);
    if (rc != EM_OK)
        return em_error_set(err, rc, EM_SEV_HIGH, NULL, "cannot generate a key");
    int64_t now = em_now_ms();
    snprintf(rec.name, sizeof rec.name, "bootstrap");
    snprintf(rec.owner, sizeof rec.owner, "user:admin");
    rec.role = EM_ROLE_ADMIN;
    rec.created_at_ms = now;
    /* The key first: if the user then fails, the key still lets the admin in. */
    rc = em_store_api_key_insert(store, &rec, err);
    OPENSSL_cleanse(rec.hash, sizeof rec.hash);
    if (rc != EM_OK) {
        OPENSSL_cleanse(key_out, size);
        return rc;
    }
    em_store_user_t u;
    memset(&u, 0, sizeof u);
    snprintf(u.name, sizeof u.name, "admin");
    u.role = EM_ROLE_ADMIN;
    u.created_at_ms = now;
    rc = em_store_user_insert(store, &u, err);
    if (rc != EM_OK && rc != EM_ERR_EXISTS) {
        em_logf(EM_LOG_WARN, "api", "bootstrap: the admin user was not created");
    }
    em_store_event_t ev;
    memset(&ev, 0, sizeof ev);
    ev.time_ms = now;
    ev.kind = EM_EVKIND_AUDIT;
    ev.severity = EM_SEV_MEDIUM;
    snprintf(ev.type, sizeof ev.type, "bootstrap");
    snprintf(ev.actor, sizeof ev.actor, "system");
    snprintf(ev.message, sizeof ev.message, "first start: user admin and admin key %s created",
             rec.key_id);
    em_store_event_insert(store, &ev, NULL);
    em_logf(EM_LOG_INFO, "api", "bootstrap: user admin and admin key %s created", rec.key_id);
    if (created != NULL)
        *created = true;
    return EM_OK;
}
