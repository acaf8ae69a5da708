/*
 * emiot - server_request.c: the API server's request pipeline. Routing (the
 * route tables, path matching with captures), then for each request:
 * correlation id, authentication, rate limit, route, role, handler.
 * Listeners and connections are server.c's.
 */
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <event2/buffer.h>
#include <event2/http.h>
#include <event2/keyvalq_struct.h>
#include <openssl/crypto.h>
#include <openssl/rand.h>

#include "api/api_core.h"
#include "emiot/clock.h"
#include "emiot/log.h"

#define QUERY_MAX        4096
#define QUERY_PARAMS_MAX 32
#define PATH_MAX_LEN     2048

static const em__api_route_table_t *const route_tables[] = {
    &em__api_routes_devices,  &em__api_routes_groups, &em__api_routes_commands,
    &em__api_routes_events,   &em__api_routes_access, &em__api_routes_identity,
    &em__api_routes_mqttcred,
};

/* ---- routing ------------------------------------------------------------ */

static int hexval(char c)
{
    if (c >= '0' && c <= '9')
        return c - '0';
    if (c >= 'a' && c <= 'f')
        return c - 'a' + 10;
    if (c >= 'A' && c <= 'F')
        return c - 'A' + 10;
    return -1;
}

/* Percent-decodes one path segment into out; false when it is not a valid
 * capture. */
static bool decode_capture(const char *s, size_t len, char *out)
{
    size_t n = 0;
    if (len == 0)
        return false;
    for (size_t i = 0; i < len; i++) {
        unsigned char c = (unsigned char)s[i];
        if (c == '%') {
            if (i + 2 >= len)
                return false;
            int hi = hexval(s[i + 1]), lo = hexval(s[i + 2]);
            if (hi < 0 || lo < 0)
                return false;
            c = (unsigned char)(hi * 16 + lo);
            i += 2;
        }
        if (c < 0x20 || c == 0x7F || c == '/')
            return false;
        if (n >= EM__API_CAPTURE_MAX)
            return false;
        out[n++] = (char)c;
    }
    out[n] = '\0';
    return true;
}

int em__api_path_match(const char *pattern, const char *path,
                       char caps[EM__API_CAPTURES_MAX][EM__API_CAPTURE_MAX + 1], size_t *ncaps)
{
    /* Every request is matched against every route (to tell 404 from 405),
     * so this is one pass without library calls that leaves at the first
     * byte that differs, and captures are decoded only once all matched. */
    const char *p = pattern, *s = path;
    const char *cap[EM__API_CAPTURES_MAX];
    size_t cap_len[EM__API_CAPTURES_MAX];
    size_t nc = 0;
    *ncaps = 0;
    if (*p != '/' || *s != '/')
        return 0;
    while (*p == '/' && *s == '/') {
        p++;
        s++;
        if (*p == '{') {
            const char *pe = p;
            while (*pe != '\0' && *pe != '/')
                pe++;
            if (pe - p >= 2 && pe[-1] == '}') {
                const char *se = s;
                while (*se != '\0' && *se != '/')
                    se++;
                if (se == s || nc >= EM__API_CAPTURES_MAX)
                    return 0;
                cap[nc] = s;
                cap_len[nc++] = (size_t)(se - s);
                p = pe;
                s = se;
                continue;
            }
        }
        /* A literal segment: the same bytes up to the same end. */
        while (*p != '\0' && *p != '/') {
            if (*s != *p)
                return 0;
            p++;
            s++;
        }
        if (*s != '\0' && *s != '/')
            return 0;
    }
    if (*p != '\0' || *s != '\0')
        return 0;
    bool bad = false;
    for (size_t i = 0; i < nc; i++)
        if (!decode_capture(cap[i], cap_len[i], caps[i]))
            bad = true;
    *ncaps = nc;
    return bad ? -1 : 1;
}

static const char *method_name(enum evhttp_cmd_type m)
{
    switch (m) {
    case EVHTTP_REQ_GET:
        return "GET";
    case EVHTTP_REQ_POST:
        return "POST";
    case EVHTTP_REQ_PUT:
        return "PUT";
    case EVHTTP_REQ_PATCH:
        return "PATCH";
    case EVHTTP_REQ_DELETE:
        return "DELETE";
    case EVHTTP_REQ_HEAD:
        return "HEAD";
    case EVHTTP_REQ_OPTIONS:
        return "OPTIONS";
    default:
        return "OTHER";
    }
}

/* The length of each route's literal start (up to its first capture): one
 * memcmp against the path rules out most routes before em__api_path_match
 * walks them (every request is tried against every route). */
#define ROUTE_TABLES (sizeof route_tables / sizeof route_tables[0])
#define ROUTES_MAX   128 /* per table; routes beyond it are simply walked */
static size_t route_prefix[ROUTE_TABLES][ROUTES_MAX];
static pthread_once_t prefix_once = PTHREAD_ONCE_INIT;

static void prefix_init(void)
{
    for (size_t t = 0; t < ROUTE_TABLES; t++)
        for (size_t i = 0; i < route_tables[t]->count && i < ROUTES_MAX; i++)
            route_prefix[t][i] = strcspn(route_tables[t]->routes[i].pattern, "{");
}

/* Finds the route for method and path. Returns it, or NULL with *status 404,
 * 405 (allow lists the methods) or 400 (a bad capture). */
static const em__api_route_t *find_route(em__api_req_t *r, int method, const char *path,
                                         int *status, char *allow, size_t allow_size)
{
    const em__api_route_t *found = NULL;
    bool bad = false;
    size_t alen = 0;
    allow[0] = '\0';
    *status = 404;
    pthread_once(&prefix_once, prefix_init);
    size_t path_len = strlen(path);
    for (size_t t = 0; t < ROUTE_TABLES; t++) {
        const em__api_route_table_t *tab = route_tables[t];
        for (size_t i = 0; i < tab->count; i++) {
            const em__api_route_t *rt = &tab->routes[i];
            size_t pl = i < ROUTES_MAX ? route_prefix[t][i] : 0;
            if (pl > path_len || memcmp(rt->pattern, path, pl) != 0)
                continue; /* em__api_path_match would say 0 */
            char caps[EM__API_CAPTURES_MAX][EM__API_CAPTURE_MAX + 1];
            size_t nc = 0;
            int m = em__api_path_match(rt->pattern, path, caps, &nc);
            if (m == 0)
                continue;
            if (rt->method != method) {
                const char *mn = method_name((enum evhttp_cmd_type)rt->method);
                if (strstr(allow, mn) == NULL) {
                    int w = snprintf(allow + alen, allow_size - alen, "%s%s", alen ? ", " : "", mn);
                    if (w > 0 && (size_t)w < allow_size - alen)
                        alen += (size_t)w;
                }
                if (*status == 404)
                    *status = 405;
                continue;
            }
            if (m < 0) {
                bad = true;
                continue;
            }
            if (found == NULL) {
                found = rt;
                memcpy(r->captures, caps, sizeof caps);
                r->ncaptures = nc;
            }
        }
    }
    if (found == NULL && bad)
        *status = 400;
    return found;
}

/* ---- the request pipeline ------------------------------------------------ */

/* 16 hex digits from the CSPRNG. The bytes are drawn 512 at a time: one
 * RAND_bytes call per request costs more than the rest of the id. */
static void make_cid(em_api_t *api, char *cid)
{
    static const char hex[] = "0123456789abcdef";
    const size_t n = EM__API_CID_LEN / 2;
    if (api->rnd_used + n > sizeof api->rnd) {
        if (RAND_bytes(api->rnd, sizeof api->rnd) != 1)
            memset(api->rnd, 0, sizeof api->rnd);
        api->rnd_used = 0;
    }
    const unsigned char *b = api->rnd + api->rnd_used;
    api->rnd_used += n;
    for (size_t i = 0; i < n; i++) {
        cid[2 * i] = hex[b[i] >> 4];
        cid[2 * i + 1] = hex[b[i] & 15];
    }
    cid[EM__API_CID_LEN] = '\0';
}

static void healthz(em__api_req_t *r)
{
    static const char ok[] = "{\"status\":\"ok\"}";
    static const char stopping[] = "{\"status\":\"stopping\"}";
    if (r->api->stopping)
        em__api_send(r, 503, "application/json", stopping, sizeof stopping - 1);
    else
        em__api_send(r, 200, "application/json", ok, sizeof ok - 1);
}

/* Parses the query string and takes the body, then calls the route's
 * handler (which answers). */
static void call_handler(em__api_req_t *r, const em__api_route_t *rt, const char *query)
{
    em_api_t *api = r->api;
    struct evkeyvalq q;
    q.tqh_first = NULL;
    q.tqh_last = &q.tqh_first;
    if (query != NULL) {
        size_t n = 0;
        if (strlen(query) > QUERY_MAX || evhttp_parse_query_str(query, &q) != 0) {
            evhttp_clear_headers(&q);
            em__api_error(r, 400, "validation", "query: malformed or too long", NULL);
            return;
        }
        for (struct evkeyval *kv = q.tqh_first; kv != NULL; kv = kv->next.tqe_next)
            n++;
        if (n > QUERY_PARAMS_MAX) {
            evhttp_clear_headers(&q);
            em__api_error(r, 400, "validation", "query: too many parameters", NULL);
            return;
        }
        r->query = &q;
    }

    /* The body, NUL-terminated in place (no copy). */
    struct evbuffer *in = evhttp_request_get_input_buffer(r->req);
    size_t blen = in != NULL ? evbuffer_get_length(in) : 0;
    if (blen > api->opts.max_body) {
        em__api_error(r, 413, "limit_reached", "body: too large", NULL);
    } else if (blen > 0 && (evbuffer_add(in, "", 1) != 0 ||
                            (r->body = (const char *)evbuffer_pullup(in, -1)) == NULL)) {
        em__api_error(r, 500, NULL, NULL, "out of memory");
    } else {
        r->body_len = blen;
        rt->fn(r);
        if (!r->answered)
            em__api_error(r, 500, NULL, NULL, "the handler did not answer");
    }
    r->query = NULL;
    r->body = NULL;
    evhttp_clear_headers(&q);
}

void em__api_serve(em__api_call_t *call, em__api_listener_t *l)
{
    em__api_req_t *r = &call->r;
    em_api_t *api = l->api;
    struct evhttp_request *req = r->req;
    int method = (int)evhttp_request_get_command(req);

    const struct evhttp_uri *uri = evhttp_request_get_evhttp_uri(req);
    const char *path = uri != NULL ? evhttp_uri_get_path(uri) : NULL;
    const char *query = uri != NULL ? evhttp_uri_get_query(uri) : NULL;
    call->path = path;
    if (path == NULL || path[0] != '/' || strlen(path) > PATH_MAX_LEN) {
        em__api_error(r, 400, "validation", "path: must be an absolute path", NULL);
        return;
    }

    bool is_health = strcmp(path, "/healthz") == 0;
    bool is_metrics = strcmp(path, "/metrics") == 0;
    if (is_health || (is_metrics && l->metrics_only)) {
        if (method != EVHTTP_REQ_GET) {
            call->allow = "GET";
            em__api_error(r, 405, "protocol", "method not allowed", NULL);
        } else if (is_health) {
            healthz(r);
        } else {
            em__api_metrics(r);
        }
        return;
    }
    if (l->metrics_only) {
        em__api_error(r, 404, "not_found", "no such route", NULL);
        return;
    }

    /* The route is found first so that a public one needs no credentials;
     * a miss is answered only after authentication, so that an anonymous
     * client learns nothing about which routes exist. */
    int status = 404;
    char allow[64];
    const em__api_route_t *rt = find_route(r, method, path, &status, allow, sizeof allow);
    if (rt != NULL && (rt->flags & EM__ROUTE_PUBLIC)) {
        call_handler(r, rt, query);
        return;
    }

    if (!em__api_authenticate(r))
        return;

    /* The caller's token bucket. */
    uint32_t retry = 0;
    uint32_t rate = em__api_rate_for(api, &r->who, call->key_rate);
    int64_t mono = em_mono_ms();
    if (!em__buckets_take(api->buckets, r->who.actor, rate, mono, &retry)) {
        if (em__buckets_report(api->buckets, r->who.actor, mono, 60000)) {
            char msg[96];
            snprintf(msg, sizeof msg, "over %u requests a minute", rate);
            em__api_security_event(r, "rate_limited", EM_SEV_LOW, msg);
        }
        snprintf(call->retry_buf, sizeof call->retry_buf, "%u", retry);
        call->retry_after = call->retry_buf;
        em__api_error(r, 429, "rate_limit_exceeded", "rate limit exceeded", NULL);
        return;
    }

    if (is_metrics) {
        if (method != EVHTTP_REQ_GET) {
            call->allow = "GET";
            em__api_error(r, 405, "protocol", "method not allowed", NULL);
        } else if (r->who.role == EM_ROLE_DEVICE) {
            em__api_security_event(r, "forbidden", EM_SEV_MEDIUM, "device identity on /metrics");
            em__api_error(r, 403, NULL, NULL, "device identity on /metrics");
        } else {
            em__api_metrics(r);
        }
        return;
    }

    if (rt == NULL) {
        if (status == 405) {
            call->allow = allow;
            em__api_error(r, 405, "protocol", "method not allowed", NULL);
        } else if (status == 400) {
            em__api_error(r, 400, "validation",
                          "path: a path segment is empty, too long or badly escaped", NULL);
        } else {
            em__api_error(r, 404, "not_found", "no such route", NULL);
        }
        return;
    }

    /* Authorisation: a device reaches only its own device's routes (and
     * routes about itself with no capture, such as whoami). */
    bool allowed;
    if (r->who.role == EM_ROLE_DEVICE)
        allowed = (rt->flags & EM__ROUTE_DEVICE_OK) &&
                  (r->ncaptures == 0 || strcmp(r->captures[0], r->who.device_id) == 0);
    else
        allowed = r->who.role != EM_ROLE_NONE && r->who.role >= rt->min_role;
    if (!allowed) {
        char msg[128];
        snprintf(msg, sizeof msg, "%s %.100s needs %s", method_name((enum evhttp_cmd_type)method),
                 rt->pattern, em_role_name(rt->min_role) ? em_role_name(rt->min_role) : "?");
        em__api_security_event(r, "forbidden", EM_SEV_MEDIUM, msg);
        em__api_error(r, 403, NULL, NULL, msg);
        return;
    }
    call_handler(r, rt, query);
}

void em__api_call_init(em__api_call_t *call, em__api_listener_t *l, struct evhttp_request *req)
{
    em_api_t *api = l->api;
    memset(call, 0, sizeof *call);
    call->r.req = req;
    call->r.api = api;
    call->r.store = api->store;
    call->r.mgr = api->mgr;
    call->r.now_ms = em_now_ms();
    call->start_mono_ms = em_mono_ms();
    call->method_name = method_name(evhttp_request_get_command(req));
    make_cid(api, call->r.cid);
    api->stats.requests++;
}
