/*
 * emiot - respond.c: answering API requests, reading bodies and query
 * parameters, audit and security events.
 */
#include <errno.h>
#include <inttypes.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <event2/buffer.h>
#include <event2/bufferevent.h>
#include <event2/bufferevent_struct.h>
#include <event2/event.h>
#include <event2/http.h>
#include <event2/http_struct.h>
#include <event2/keyvalq_struct.h>

#include "api/api_core.h"
#include "emiot/clock.h"
#include "emiot/log.h"

/* Nesting accepted in request bodies (api_internal.h). */
#define BODY_DEPTH_MAX 16

/* Answers up to one TLS record long are sent as one piece (em__api_send). */
#define PULLUP_MAX 16384

static const char *reason_phrase(int status)
{
    switch (status) {
    case 200:
        return "OK";
    case 201:
        return "Created";
    case 202:
        return "Accepted";
    case 400:
        return "Bad Request";
    case 401:
        return "Unauthorized";
    case 403:
        return "Forbidden";
    case 404:
        return "Not Found";
    case 405:
        return "Method Not Allowed";
    case 409:
        return "Conflict";
    case 413:
        return "Payload Too Large";
    case 429:
        return "Too Many Requests";
    case 500:
        return "Internal Server Error";
    case 503:
        return "Service Unavailable";
    default:
        return status < 400 ? "OK" : "Error";
    }
}

/*
 * The Date header evhttp adds to HTTP/1.1 answers, as it writes it
 * (evutil_date_rfc1123: RFC 7231's IMF-fixdate of time()), made once a second
 * instead of with gmtime and a printf for every answer. NULL when the time
 * cannot be had (evhttp then writes its own).
 */
static const char *http_date(em_api_t *api)
{
    static const char *const days[] = {"Sun", "Mon", "Tue", "Wed", "Thu", "Fri", "Sat"};
    static const char *const months[] = {"Jan", "Feb", "Mar", "Apr", "May", "Jun",
                                         "Jul", "Aug", "Sep", "Oct", "Nov", "Dec"};
    time_t now = time(NULL);
    if (api->date[0] == '\0' || (int64_t)now != api->date_s) {
        struct tm tm;
        if (gmtime_r(&now, &tm) == NULL || tm.tm_wday < 0 || tm.tm_wday > 6 || tm.tm_mon < 0 ||
            tm.tm_mon > 11)
            return NULL;
        int n = snprintf(api->date, sizeof api->date, "%s, %02d %s %4d %02d:%02d:%02d GMT",
                         days[tm.tm_wday], tm.tm_mday, months[tm.tm_mon], 1900 + tm.tm_year,
                         tm.tm_hour, tm.tm_min, tm.tm_sec);
        if (n < 0 || (size_t)n >= sizeof api->date) {
            api->date[0] = '\0';
            return NULL;
        }
        api->date_s = (int64_t)now;
    }
    return api->date;
}

void em__api_send(em__api_req_t *r, int status, const char *ctype, const char *body, size_t len)
{
    em__api_call_t *call = (em__api_call_t *)r; /* r is the first member of its call */
    if (r->answered) {
        em_log(EM_LOG_WARN, "api", r->cid, "second answer to a request ignored", NULL, 0);
        return;
    }
    r->answered = true;
    call->status = status;

    struct evkeyvalq *h = evhttp_request_get_output_headers(r->req);
    if (ctype != NULL)
        evhttp_add_header(h, "Content-Type", ctype);
    evhttp_add_header(h, "Cache-Control", "no-store");
    evhttp_add_header(h, "X-Content-Type-Options", "nosniff");
    evhttp_add_header(h, "X-Request-Id", r->cid);
    if (call->retry_after != NULL)
        evhttp_add_header(h, "Retry-After", call->retry_after);
    if (call->allow != NULL)
        evhttp_add_header(h, "Allow", call->allow);
    /* Where evhttp would put its own (it adds one only when there is none). */
    const char *date = r->req->major == 1 && r->req->minor >= 1 ? http_date(r->api) : NULL;
    if (date != NULL)
        evhttp_add_header(h, "Date", date);
    if (body != NULL && len > 0)
        evbuffer_add(evhttp_request_get_output_buffer(r->req), body, len);
    struct evhttp_connection *conn = evhttp_request_get_connection(r->req);
    evhttp_send_reply(r->req, status, reason_phrase(status), NULL);
    /* evhttp queued the headers and the body as two chains; bufferevent_openssl
     * would make each its own TLS record, write and TCP segment. One chain
     * makes one: a copy of a few hundred bytes saves a system call. */
    struct bufferevent *bev = conn != NULL ? evhttp_connection_get_bufferevent(conn) : NULL;
    struct evbuffer *out = bev != NULL ? bufferevent_get_output(bev) : NULL;
    if (out != NULL && evbuffer_get_length(out) <= PULLUP_MAX)
        evbuffer_pullup(out, -1);
    /* The bufferevent writes when epoll next reports the socket writable:
     * another trip through the loop and, for a keep-alive connection, two
     * epoll_ctl calls (writing on, reading off; then the other way round).
     * Running its write callback now, in this loop iteration, sends the
     * answer at once and lets evhttp start reading the next request before
     * the loop applies its changes, which then cancel out. The event is
     * pending (evhttp enabled writing), so activating it is what epoll would
     * have done; a socket that cannot take the bytes yet is waited for as
     * before. */
    if (out != NULL && evbuffer_get_length(out) > 0 &&
        event_pending(&bev->ev_write, EV_WRITE, NULL))
        event_active(&bev->ev_write, EV_WRITE, 1);

    em_api_stats_t *s = &r->api->stats;
    if (status >= 100 && status < 600)
        s->responses[status / 100]++;
    switch (status) {
    case 400:
    case 413:
        s->bad_requests++;
        break;
    case 401:
        s->auth_failures++;
        break;
    case 403:
        s->forbidden++;
        break;
    case 429:
        s->rate_limited++;
        break;
    default:
        break;
    }

    /* Refusals, failures and writes are logged at info; answered reads at
     * debug: a line per read is a write(2) and a few microseconds at
     * thousands of reads a second (and more than a journal keeps), while
     * /metrics counts them (emiot_api_responses_total) and the refusals are
     * what an operator looks for. */
    em_log_level_t level = status >= 400 || evhttp_request_get_command(r->req) != EVHTTP_REQ_GET
                               ? EM_LOG_INFO
                               : EM_LOG_DEBUG;
    if (em_log_enabled(level)) {
        int64_t dur = em_mono_ms() - call->start_mono_ms;
        em_log_field_t f[5] = {
            EM_LOG_STR("method", call->method_name ? call->method_name : "?"),
            EM_LOG_STR("path", call->path ? call->path : "?"),
            EM_LOG_INT("status", status),
            EM_LOG_INT("duration_ms", dur < 0 ? 0 : dur),
            EM_LOG_STR("actor", r->who.actor),
        };
        em_log(level, "api", r->cid, "request", f, 5);
    }
}

void em__api_reply_raw(em__api_req_t *r, int status, const char *json, size_t len)
{
    em__api_send(r, status, "application/json", json, len);
}

/* Sends a cJSON tree; on an allocation failure answers 500 with a fixed body. */
static void send_tree(em__api_req_t *r, int status, cJSON *root)
{
    char *txt = root != NULL ? cJSON_PrintUnformatted(root) : NULL;
    cJSON_Delete(root);
    if (txt == NULL) {
        static const char oom[] =
            "{\"success\":false,\"message\":\"internal error\",\"errorCode\":\"internal\"}";
        em_log(EM_LOG_ERROR, "api", r->cid, "out of memory writing an answer", NULL, 0);
        em__api_send(r, 500, "application/json", oom, sizeof oom - 1);
        return;
    }
    em__api_send(r, status, "application/json", txt, strlen(txt));
    cJSON_free(txt);
}

void em__api_reply(em__api_req_t *r, int status, cJSON *data, cJSON *extra)
{
    cJSON *root = cJSON_CreateObject();
    if (root == NULL || cJSON_AddBoolToObject(root, "success", 1) == NULL) {
        cJSON_Delete(data);
        cJSON_Delete(extra);
        cJSON_Delete(root);
        send_tree(r, status, NULL);
        return;
    }
    if (data != NULL && !cJSON_AddItemToObject(root, "data", data)) {
        cJSON_Delete(data);
        cJSON_Delete(extra);
        cJSON_Delete(root);
        send_tree(r, status, NULL);
        return;
    }
    if (extra != NULL) {
        /* Move extra's members to the top level. */
        while (extra->child != NULL) {
            cJSON *it = cJSON_DetachItemViaPointer(extra, extra->child);
            if (it->string == NULL || strcmp(it->string, "success") == 0 ||
                strcmp(it->string, "data") == 0) {
                cJSON_Delete(it);
                continue;
            }
            /* cJSON copies the key before releasing the item's own. */
            if (!cJSON_AddItemToObject(root, it->string, it))
                cJSON_Delete(it);
        }
        cJSON_Delete(extra);
    }
    send_tree(r, status, root);
}

void em__api_error(em__api_req_t *r, int status, const char *code, const char *msg,
                   const char *detail)
{
    /* 401 and 403 reveal nothing; a 500 never leaks what went wrong. */
    if (status == 401) {
        msg = "authentication required";
        code = "authentication";
    } else if (status == 403) {
        msg = "forbidden";
        code = "permission_denied";
    } else if (status == 500) {
        msg = "internal error";
        code = "internal";
    }
    if (msg == NULL)
        msg = reason_phrase(status);
    if (code == NULL)
        code = status >= 500 ? "internal" : "validation";
    if (detail != NULL) {
        em_log_field_t f[3] = {EM_LOG_INT("status", status), EM_LOG_STR("code", code),
                               EM_LOG_STR("detail", detail)};
        em_log(status >= 500 ? EM_LOG_ERROR : EM_LOG_INFO, "api", r->cid, "request refused", f, 3);
    }
    cJSON *root = cJSON_CreateObject();
    if (root != NULL) {
        if (cJSON_AddBoolToObject(root, "success", 0) == NULL ||
            cJSON_AddStringToObject(root, "message", msg) == NULL ||
            cJSON_AddStringToObject(root, "errorCode", code) == NULL) {
            cJSON_Delete(root);
            root = NULL;
        }
    }
    send_tree(r, status, root);
}

void em__api_error_from(em__api_req_t *r, em_err_t code, const em_error_t *err)
{
    int status;
    switch (code) {
    case EM_ERR_VALIDATION:
    case EM_ERR_MESSAGE_FORMAT:
    case EM_ERR_INVALID_ARGUMENT:
        status = 400;
        break;
    case EM_ERR_DEVICE_NOT_FOUND:
    case EM_ERR_GROUP_NOT_FOUND:
    case EM_ERR_NOT_FOUND:
        status = 404;
        break;
    case EM_ERR_EXISTS:
        status = 409;
        break;
    case EM_ERR_RATE_LIMIT_EXCEEDED:
        status = 429;
        break;
    case EM_ERR_NOT_CONNECTED:
        status = 503;
        break;
    case EM_ERR_PERMISSION_DENIED:
        status = 403;
        break;
    default:
        status = 500;
        break;
    }
    char msg[EM_ERROR_FIELD_MAX + EM_ERROR_MESSAGE_MAX + 4];
    if (status >= 500) {
        snprintf(msg, sizeof msg, "%s", status == 503 ? em_strerror(code) : "internal error");
    } else if (err != NULL && err->message[0] != '\0') {
        if (err->field[0] != '\0')
            snprintf(msg, sizeof msg, "%s: %s", err->field, err->message);
        else
            snprintf(msg, sizeof msg, "%s", err->message);
    } else {
        snprintf(msg, sizeof msg, "%s", em_strerror(code));
    }
    const char *detail = NULL;
    char dbuf[EM_ERROR_FIELD_MAX + EM_ERROR_MESSAGE_MAX + 64];
    if (status >= 500 && err != NULL) {
        snprintf(dbuf, sizeof dbuf, "%s: %s%s%s", em_err_name(code), err->field,
                 err->field[0] ? ": " : "", err->message);
        detail = dbuf;
    }
    em__api_error(r, status, em_err_name(code), msg, detail);
}

/* ---- bodies --------------------------------------------------------- */

/* True when p[0..len) is well-formed UTF-8 (no overlongs, no surrogates). */
static bool utf8_valid(const unsigned char *p, size_t len)
{
    size_t i = 0;
    while (i < len) {
        unsigned c = p[i];
        if (c < 0x80) {
            i++;
            continue;
        }
        size_t n;
        unsigned min;
        if (c >= 0xC2 && c <= 0xDF) {
            n = 1;
            min = 0x80;
        } else if (c >= 0xE0 && c <= 0xEF) {
            n = 2;
            min = 0x800;
        } else if (c >= 0xF0 && c <= 0xF4) {
            n = 3;
            min = 0x10000;
        } else {
            return false;
        }
        if (len - i <= n)
            return false;
        unsigned cp = c & (0x3Fu >> n);
        for (size_t k = 1; k <= n; k++) {
            if ((p[i + k] & 0xC0) != 0x80)
                return false;
            cp = (cp << 6) | (p[i + k] & 0x3Fu);
        }
        if (cp < min || cp > 0x10FFFF || (cp >= 0xD800 && cp <= 0xDFFF))
            return false;
        i += n + 1;
    }
    return true;
}

/* Deepest nesting of arrays and objects outside strings. */
static size_t json_depth(const char *p, size_t len)
{
    size_t depth = 0, max = 0;
    bool in_str = false;
    for (size_t i = 0; i < len; i++) {
        char c = p[i];
        if (in_str) {
            if (c == '\\')
                i++;
            else if (c == '"')
                in_str = false;
        } else if (c == '"') {
            in_str = true;
        } else if (c == '[' || c == '{') {
            if (++depth > max)
                max = depth;
        } else if ((c == ']' || c == '}') && depth > 0) {
            depth--;
        }
    }
    return max;
}

cJSON *em__api_body_object(em__api_req_t *r)
{
    if (r->body == NULL || r->body_len == 0) {
        em__api_error(r, 400, "validation", "body: must be a JSON object", "empty body");
        return NULL;
    }
    /* The copy is NUL-terminated; a NUL inside would end cJSON's input early. */
    if (memchr(r->body, '\0', r->body_len) != NULL ||
        !utf8_valid((const unsigned char *)r->body, r->body_len)) {
        em__api_error(r, 400, "message_format", "body: must be UTF-8 JSON", NULL);
        return NULL;
    }
    if (json_depth(r->body, r->body_len) > BODY_DEPTH_MAX) {
        em__api_error(r, 400, "message_format", "body: JSON nested too deeply", NULL);
        return NULL;
    }
    /* Plain cJSON (not em__json_parse): the answer a handler builds while the
     * body is alive must not live in the parser's per-thread arena. */
    const char *end = NULL;
    cJSON *root = cJSON_ParseWithLengthOpts(r->body, r->body_len + 1, &end, 1);
    if (root == NULL) {
        char msg[64];
        size_t off = end != NULL && end >= r->body ? (size_t)(end - r->body) : 0;
        snprintf(msg, sizeof msg, "body: invalid JSON at offset %zu", off);
        em__api_error(r, 400, "message_format", msg, NULL);
        return NULL;
    }
    if (!cJSON_IsObject(root)) {
        cJSON_Delete(root);
        em__api_error(r, 400, "validation", "body: must be a JSON object", NULL);
        return NULL;
    }
    return root;
}

static bool name_allowed(const char *name, const char *const *allowed)
{
    for (size_t i = 0; allowed != NULL && allowed[i] != NULL; i++)
        if (strcmp(allowed[i], name) == 0)
            return true;
    return false;
}

/* Writes name into buf for a message, cut and with control bytes replaced. */
static void printable(const char *name, char *buf, size_t size)
{
    size_t i = 0;
    for (; name[i] != '\0' && i + 1 < size; i++) {
        unsigned char c = (unsigned char)name[i];
        buf[i] = name[i];
        if (c < 0x20 || c == 0x7F)
            buf[i] = '?';
    }
    buf[i] = '\0';
}

bool em__api_only_fields(em__api_req_t *r, const cJSON *obj, const char *const *allowed)
{
    char msg[128], shown[64];
    for (const cJSON *it = obj != NULL ? obj->child : NULL; it != NULL; it = it->next) {
        const char *name = it->string != NULL ? it->string : "";
        printable(name, shown, sizeof shown);
        if (!name_allowed(name, allowed)) {
            snprintf(msg, sizeof msg, "%s: unknown field", shown);
            em__api_error(r, 400, "validation", msg, NULL);
            return false;
        }
        for (const cJSON *o = obj->child; o != it; o = o->next) {
            if (o->string != NULL && strcmp(o->string, name) == 0) {
                snprintf(msg, sizeof msg, "%s: must appear only once", shown);
                em__api_error(r, 400, "validation", msg, NULL);
                return false;
            }
        }
    }
    return true;
}

/* ---- query parameters ------------------------------------------------ */

static const char *query_get(em__api_req_t *r, const char *name)
{
    struct evkeyvalq *q = r->query;
    return q != NULL ? evhttp_find_header(q, name) : NULL;
}

static bool query_fail(em__api_req_t *r, const char *name, const char *rule)
{
    char msg[160];
    snprintf(msg, sizeof msg, "%s: %s", name, rule);
    em__api_error(r, 400, "validation", msg, NULL);
    return false;
}

bool em__api_query_str(em__api_req_t *r, const char *name, size_t max_len, const char **out)
{
    const char *v = query_get(r, name);
    *out = NULL;
    if (v == NULL)
        return true;
    size_t len = strlen(v);
    char rule[64];
    if (len == 0 || len > max_len) {
        snprintf(rule, sizeof rule, "must be 1-%zu characters", max_len);
        return query_fail(r, name, rule);
    }
    for (size_t i = 0; i < len; i++) {
        unsigned char c = (unsigned char)v[i];
        if (c < 0x20 || c == 0x7F)
            return query_fail(r, name, "must not contain control characters");
    }
    if (!utf8_valid((const unsigned char *)v, len))
        return query_fail(r, name, "must be UTF-8");
    *out = v;
    return true;
}

/* Parses a whole decimal integer (optional '-'); false on anything else. */
static bool parse_i64(const char *s, int64_t *out)
{
    if (s == NULL || *s == '\0')
        return false;
    const char *p = s;
    if (*p == '-')
        p++;
    if (*p < '0' || *p > '9')
        return false;
    for (const char *q = p; *q != '\0'; q++)
        if (*q < '0' || *q > '9')
            return false;
    errno = 0;
    char *end = NULL;
    long long v = strtoll(s, &end, 10);
    if (errno != 0 || end == NULL || *end != '\0')
        return false;
    *out = (int64_t)v;
    return true;
}

bool em__api_query_int(em__api_req_t *r, const char *name, int64_t def, int64_t min, int64_t max,
                       int64_t *out)
{
    const char *v = query_get(r, name);
    if (v == NULL) {
        *out = def;
        return true;
    }
    int64_t x;
    if (!parse_i64(v, &x) || x < min || x > max) {
        char rule[96];
        snprintf(rule, sizeof rule, "must be an integer from %" PRId64 " to %" PRId64, min, max);
        return query_fail(r, name, rule);
    }
    *out = x;
    return true;
}

/* 9999-12-31T23:59:59.999Z: the last instant RFC 3339 times can name here. */
#define TIME_MAX_MS INT64_C(253402300799999)

bool em__api_query_time(em__api_req_t *r, const char *name, int64_t def, int64_t *out_ms)
{
    const char *v = query_get(r, name);
    if (v == NULL) {
        *out_ms = def;
        return true;
    }
    int64_t x;
    if (parse_i64(v, &x)) {
        if (x < 0 || x > TIME_MAX_MS)
            return query_fail(r, name, "must be an RFC 3339 time or epoch milliseconds");
        *out_ms = x;
        return true;
    }
    size_t len = strlen(v);
    if (len > 64 || em_time_parse(v, len, &x, NULL) != EM_OK)
        return query_fail(r, name, "must be an RFC 3339 time or epoch milliseconds");
    *out_ms = x;
    return true;
}

bool em__api_only_params(em__api_req_t *r, const char *const *allowed)
{
    struct evkeyvalq *q = r->query;
    if (q == NULL)
        return true;
    char shown[64], msg[128];
    for (struct evkeyval *kv = q->tqh_first; kv != NULL; kv = kv->next.tqe_next) {
        printable(kv->key, shown, sizeof shown);
        if (!name_allowed(kv->key, allowed)) {
            snprintf(msg, sizeof msg, "%s: unknown parameter", shown);
            em__api_error(r, 400, "validation", msg, NULL);
            return false;
        }
        for (struct evkeyval *o = q->tqh_first; o != kv; o = o->next.tqe_next) {
            if (strcmp(o->key, kv->key) == 0) {
                snprintf(msg, sizeof msg, "%s: must appear only once", shown);
                em__api_error(r, 400, "validation", msg, NULL);
                return false;
            }
        }
    }
    return true;
}

/* ---- events ------------------------------------------------------------ */

static void copy_str(char *dst, size_t size, const char *src)
{
    snprintf(dst, size, "%s", src != NULL ? src : "");
}

void em__api_audit(em__api_req_t *r, const char *type, const char *device_id, const char *fmt, ...)
{
    em_store_event_t ev;
    memset(&ev, 0, sizeof ev);
    ev.time_ms = em_now_ms();
    ev.kind = EM_EVKIND_AUDIT;
    ev.severity = EM_SEV_LOW;
    copy_str(ev.type, sizeof ev.type, type);
    copy_str(ev.device_id, sizeof ev.device_id, device_id);
    copy_str(ev.actor, sizeof ev.actor, r->who.actor);
    copy_str(ev.source, sizeof ev.source, r->source);
    va_list ap;
    va_start(ap, fmt);
    (void)vsnprintf(ev.message, sizeof ev.message, fmt, ap); /* cut when longer */
    va_end(ap);
    em_error_t err;
    em_error_clear(&err);
    if (em_store_event_insert(r->store, &ev, &err) != EM_OK) {
        em_log_field_t f[2] = {EM_LOG_STR("type", ev.type), EM_LOG_STR("error", err.message)};
        em_log(EM_LOG_ERROR, "api", r->cid, "audit event not recorded", f, 2);
    }
}

void em__api_security_event(em__api_req_t *r, const char *type, em_severity_t sev,
                            const char *message)
{
    em_store_event_t ev;
    memset(&ev, 0, sizeof ev);
    ev.time_ms = em_now_ms();
    ev.kind = EM_EVKIND_SECURITY;
    ev.severity = sev;
    copy_str(ev.type, sizeof ev.type, type);
    copy_str(ev.actor, sizeof ev.actor, r->who.actor);
    copy_str(ev.source, sizeof ev.source, r->source);
    copy_str(ev.message, sizeof ev.message, message);
    em_error_t err;
    em_error_clear(&err);
    if (em_store_enqueue_event(r->store, &ev, &err) != EM_OK) {
        em_log_field_t f[2] = {EM_LOG_STR("type", ev.type), EM_LOG_STR("error", err.message)};
        em_log(EM_LOG_ERROR, "api", r->cid, "security event not recorded", f, 2);
    }
    em_log_field_t f[3] = {EM_LOG_STR("type", ev.type), EM_LOG_STR("source", ev.source),
                           EM_LOG_STR("reason", ev.message)};
    em_log(EM_LOG_WARN, "api", r->cid, "security event", f, 3);
}
