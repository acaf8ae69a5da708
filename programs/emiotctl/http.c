/*
 * emiotctl - http.c: requests to emiotd with libcurl.
 *
 * TLS is never optional: TLS 1.3 at least, the server's certificate checked
 * against the one CA file given (no system store, no CA directory) and its
 * name against the URL's host; there is no switch to turn that off. The
 * answer is read into memory up to CTL_RESPONSE_MAX; a bigger one is an
 * error, not a growing buffer. One handle serves every request of a run, so
 * paging and polling reuse the connection.
 */
#include <curl/curl.h>
#include <openssl/crypto.h>
#include <stdlib.h>
#include <string.h>

#include "ctl.h"
#include "emiot/version.h"

typedef struct sink {
    char *buf;
    size_t len, cap;
    bool too_large;
    bool oom;
} sink_t;

static size_t on_data(char *ptr, size_t size, size_t nmemb, void *ud)
{
    sink_t *s = ud;
    size_t n = size * nmemb; /* libcurl guarantees size == 1 */
    if (n > CTL_RESPONSE_MAX - s->len) {
        s->too_large = true;
        return 0; /* makes libcurl stop with CURLE_WRITE_ERROR */
    }
    if (s->len + n + 1 > s->cap) {
        size_t cap = s->cap != 0 ? s->cap : 4096;
        while (cap < s->len + n + 1)
            cap *= 2;
        if (cap > CTL_RESPONSE_MAX + 1)
            cap = CTL_RESPONSE_MAX + 1;
        char *p = realloc(s->buf, cap);
        if (p == NULL) {
            s->oom = true;
            return 0;
        }
        s->buf = p;
        s->cap = cap;
    }
    memcpy(s->buf + s->len, ptr, n);
    s->len += n;
    s->buf[s->len] = '\0';
    return n;
}

void ctl_resp_cleanup(ctl_resp_t *r)
{
    if (r == NULL)
        return;
    if (r->secret) {
        if (r->body != NULL)
            OPENSSL_cleanse(r->body, r->len);
    }
    free(r->body);
    cJSON_Delete(r->json);
    memset(r, 0, sizeof *r);
}

static CURL *handle(ctl_t *c)
{
    if (c->curl != NULL)
        return c->curl;
    CURL *h = curl_easy_init();
    if (h == NULL)
        return NULL;
    bool ok = true;
    ok &= curl_easy_setopt(h, CURLOPT_PROTOCOLS_STR, "https") == CURLE_OK;
    ok &= curl_easy_setopt(h, CURLOPT_FOLLOWLOCATION, 0L) == CURLE_OK;
    ok &= curl_easy_setopt(h, CURLOPT_SSLVERSION, (long)CURL_SSLVERSION_TLSv1_3) == CURLE_OK;
    ok &= curl_easy_setopt(h, CURLOPT_SSL_VERIFYPEER, 1L) == CURLE_OK;
    ok &= curl_easy_setopt(h, CURLOPT_SSL_VERIFYHOST, 2L) == CURLE_OK;
    ok &= curl_easy_setopt(h, CURLOPT_CAINFO, c->ca) == CURLE_OK;
    ok &= curl_easy_setopt(h, CURLOPT_CAPATH, NULL) == CURLE_OK;
    if (c->cert != NULL)
        ok &= curl_easy_setopt(h, CURLOPT_SSLCERT, c->cert) == CURLE_OK;
    if (c->tls_key != NULL)
        ok &= curl_easy_setopt(h, CURLOPT_SSLKEY, c->tls_key) == CURLE_OK;
    ok &= curl_easy_setopt(h, CURLOPT_CONNECTTIMEOUT, (long)CTL_CONNECT_TIMEOUT) == CURLE_OK;
    ok &= curl_easy_setopt(h, CURLOPT_TIMEOUT, c->timeout_s) == CURLE_OK;
    ok &= curl_easy_setopt(h, CURLOPT_NOSIGNAL, 1L) == CURLE_OK;
    ok &= curl_easy_setopt(h, CURLOPT_MAXFILESIZE_LARGE, (curl_off_t)CTL_RESPONSE_MAX) == CURLE_OK;
    ok &= curl_easy_setopt(h, CURLOPT_WRITEFUNCTION, on_data) == CURLE_OK;
    char ua[64];
    snprintf(ua, sizeof ua, PROGRAM "/%s", em_version());
    ok &= curl_easy_setopt(h, CURLOPT_USERAGENT, ua) == CURLE_OK;
    if (!ok) {
        curl_easy_cleanup(h);
        return NULL;
    }
    c->curl = h;
    return h;
}

/* The exit code for an HTTP status that is not 2xx. */
static int exit_for_status(long status)
{
    switch (status) {
    case 401:
        return CTL_AUTH;
    case 403:
        return CTL_PERM;
    case 404:
        return CTL_NOTFOUND;
    case 400:
    case 409:
    case 413:
    case 422:
        return CTL_INVALID;
    case 429:
        return CTL_RATE;
    default:
        return status >= 500 && status <= 599 ? CTL_SERVER : CTL_ERROR;
    }
}

static const char *json_str(const cJSON *o, const char *name)
{
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(o, name);
    return cJSON_IsString(v) ? v->valuestring : NULL;
}

static int report_http_error(ctl_t *c, CURL *h, ctl_resp_t *r)
{
    const char *msg = json_str(r->json, "message");
    const char *code = json_str(r->json, "errorCode");
    char fallback[64];
    if (msg == NULL) {
        /* /healthz answers {"status":"stopping"} while the daemon drains. */
        const char *st = json_str(r->json, "status");
        snprintf(fallback, sizeof fallback, "the server answered HTTP %ld%s%s", r->status,
                 st != NULL ? ": " : "", st != NULL ? st : "");
        msg = fallback;
    }
    if (r->status == 429) {
        curl_off_t wait = -1;
        if (curl_easy_getinfo(h, CURLINFO_RETRY_AFTER, &wait) == CURLE_OK && wait > 0)
            ctl_err(code, "%s; retry in %lld s", msg, (long long)wait);
        else
            ctl_err(code, "%s", msg);
    } else if (r->status == 401 && c->secret == NULL && c->cert == NULL) {
        ctl_err(code,
                "%s: no credentials given (EMIOT_API_KEY, EMIOT_API_KEY_FILE, "
                "--api-key-file, api_key_file or --cert)",
                msg);
    } else {
        ctl_err(code, "%s", msg);
    }
    return exit_for_status(r->status);
}

static int report_curl_error(const ctl_t *c, CURLcode rc, const sink_t *s, const char *errbuf)
{
    if (s->too_large || rc == CURLE_FILESIZE_EXCEEDED) {
        ctl_err("limit_reached", "the answer is larger than %u MiB",
                (unsigned)(CTL_RESPONSE_MAX >> 20));
        return CTL_ERROR;
    }
    if (s->oom || rc == CURLE_OUT_OF_MEMORY) {
        ctl_err("out_of_memory", "out of memory");
        return CTL_ERROR;
    }
    const char *detail = errbuf[0] != '\0' ? errbuf : curl_easy_strerror(rc);
    bool tls = rc == CURLE_SSL_CONNECT_ERROR || rc == CURLE_PEER_FAILED_VERIFICATION ||
               rc == CURLE_SSL_CERTPROBLEM || rc == CURLE_SSL_CIPHER ||
               rc == CURLE_SSL_CACERT_BADFILE || rc == CURLE_SSL_ISSUER_ERROR ||
               rc == CURLE_SSL_ENGINE_NOTFOUND || rc == CURLE_SSL_ENGINE_SETFAILED ||
               rc == CURLE_USE_SSL_FAILED || rc == CURLE_SSL_INVALIDCERTSTATUS ||
               rc == CURLE_SSL_PINNEDPUBKEYNOTMATCH || rc == CURLE_SSL_CRL_BADFILE;
    ctl_err(tls ? "tls" : "connection", "cannot reach %s: %s", c->url, detail);
    return CTL_CONNECT;
}

/* Appends line to *list; false when out of memory (the list stays). */
static bool add_header(struct curl_slist **list, const char *line)
{
    struct curl_slist *next = curl_slist_append(*list, line);
    if (next == NULL)
        return false;
    *list = next;
    return true;
}

/* Frees headers after wiping them: one of them carries the credential. */
static void free_headers(struct curl_slist *list)
{
    for (struct curl_slist *l = list; l != NULL; l = l->next)
        if (l->data != NULL)
            OPENSSL_cleanse(l->data, strlen(l->data));
    curl_slist_free_all(list);
}

static struct curl_slist *make_headers(const ctl_t *c, bool json_body, bool auth, bool *ok)
{
    struct curl_slist *list = NULL;
    *ok = add_header(&list, "Accept: application/json") &&
          add_header(&list, json_body ? "Content-Type: application/json" : "Content-Type:") &&
          add_header(&list, "Expect:");
    if (*ok && auth && c->secret != NULL) {
        size_t len = sizeof "Authorization: Bearer " + c->secret_len;
        char *line = malloc(len);
        *ok = line != NULL;
        if (line != NULL) {
            (void)snprintf(line, len, "Authorization: Bearer %s", c->secret);
            *ok = add_header(&list, line);
            OPENSSL_cleanse(line, len);
            free(line);
        }
    }
    return list;
}

/* Sets what changes from one request to the next. text: the body or NULL. */
static bool set_request(CURL *h, const char *method, const char *url, struct curl_slist *hdrs,
                        sink_t *sink, char *errbuf, const char *text)
{
    bool ok = curl_easy_setopt(h, CURLOPT_URL, url) == CURLE_OK &&
              curl_easy_setopt(h, CURLOPT_HTTPHEADER, hdrs) == CURLE_OK &&
              curl_easy_setopt(h, CURLOPT_WRITEDATA, sink) == CURLE_OK &&
              curl_easy_setopt(h, CURLOPT_ERRORBUFFER, errbuf) == CURLE_OK;
    if (strcmp(method, "GET") == 0 || strcmp(method, "DELETE") == 0) {
        ok = ok && curl_easy_setopt(h, CURLOPT_HTTPGET, 1L) == CURLE_OK &&
             curl_easy_setopt(h, CURLOPT_CUSTOMREQUEST,
                              strcmp(method, "GET") == 0 ? NULL : method) == CURLE_OK;
        return ok;
    }
    /* POST, PUT, PATCH: always a Content-Length, 0 when there is no body. */
    const char *data = text != NULL ? text : "";
    return ok && curl_easy_setopt(h, CURLOPT_POSTFIELDS, data) == CURLE_OK &&
           curl_easy_setopt(h, CURLOPT_POSTFIELDSIZE_LARGE, (curl_off_t)strlen(data)) == CURLE_OK &&
           curl_easy_setopt(h, CURLOPT_CUSTOMREQUEST,
                            strcmp(method, "POST") == 0 ? NULL : method) == CURLE_OK;
}

/* Makes the handle forget what pointed into the finished request. */
static void clear_request(CURL *h)
{
    (void)curl_easy_setopt(h, CURLOPT_HTTPHEADER, NULL);
    (void)curl_easy_setopt(h, CURLOPT_ERRORBUFFER, NULL);
    (void)curl_easy_setopt(h, CURLOPT_WRITEDATA, NULL);
    (void)curl_easy_setopt(h, CURLOPT_POSTFIELDS, NULL);
}

/* Takes the answer from sink into r and judges it. */
static int read_answer(ctl_t *c, CURL *h, sink_t *sink, ctl_resp_t *r)
{
    (void)curl_easy_getinfo(h, CURLINFO_RESPONSE_CODE, &r->status);
    r->body = sink->buf;
    r->len = sink->len;
    sink->buf = NULL;
    if (r->body != NULL)
        r->json = cJSON_ParseWithLength(r->body, r->len);
    if (r->status < 200 || r->status > 299)
        return report_http_error(c, h, r);
    if (r->json == NULL) {
        ctl_err("message_format", "the server's answer is not JSON (HTTP %ld)", r->status);
        return CTL_ERROR;
    }
    const cJSON *data = cJSON_GetObjectItemCaseSensitive(r->json, "data");
    r->data = data != NULL ? data : r->json;
    return 0;
}

static char *make_url(const ctl_t *c, const char *path)
{
    size_t len = strlen(c->url) + strlen(path) + 1;
    char *url = malloc(len);
    if (url != NULL)
        (void)snprintf(url, len, "%s%s", c->url, path);
    return url;
}

int ctl_request(ctl_t *c, const char *method, const char *path, const cJSON *body, bool auth,
                bool secret, ctl_resp_t *r)
{
    memset(r, 0, sizeof *r);
    r->secret = secret;
    int rc = ctl_resolve(c);
    if (rc != 0)
        return rc;
    CURL *h = handle(c);
    if (h == NULL) {
        ctl_err("internal", "cannot set up libcurl");
        return CTL_ERROR;
    }
    char *url = make_url(c, path);
    char *text = body != NULL ? cJSON_PrintUnformatted(body) : NULL;
    bool ok = false;
    struct curl_slist *hdrs = make_headers(c, text != NULL, auth, &ok);
    sink_t sink;
    memset(&sink, 0, sizeof sink);
    char errbuf[CURL_ERROR_SIZE];
    errbuf[0] = '\0';
    if (url == NULL || (body != NULL && text == NULL) || !ok) {
        ctl_err("out_of_memory", "out of memory");
        rc = CTL_ERROR;
    } else if (!set_request(h, method, url, hdrs, &sink, errbuf, text)) {
        ctl_err("internal", "cannot set up the request");
        rc = CTL_ERROR;
    } else {
        CURLcode cc = curl_easy_perform(h);
        rc = cc != CURLE_OK ? report_curl_error(c, cc, &sink, errbuf) : read_answer(c, h, &sink, r);
    }
    clear_request(h);
    free_headers(hdrs);
    if (sink.buf != NULL) {
        OPENSSL_cleanse(sink.buf, sink.len);
        free(sink.buf);
    }
    if (text != NULL) {
        OPENSSL_cleanse(text, strlen(text));
        free(text);
    }
    free(url);
    if (rc != 0)
        ctl_resp_cleanup(r);
    return rc;
}

/* ---- paths and query strings ------------------------------------------- */

void ctl_buf_init(ctl_buf_t *b, const char *prefix)
{
    memset(b, 0, sizeof *b);
    ctl_buf_add(b, prefix);
}

void ctl_buf_add(ctl_buf_t *b, const char *s)
{
    size_t n = strlen(s);
    if (b->overflow || n >= sizeof b->s - b->len) {
        b->overflow = true;
        return;
    }
    memcpy(b->s + b->len, s, n + 1);
    b->len += n;
}

static void add_escaped(ctl_buf_t *b, const char *v)
{
    static const char hex[] = "0123456789ABCDEF";
    for (const unsigned char *p = (const unsigned char *)v; *p != '\0' && !b->overflow; p++) {
        char tmp[4];
        if ((*p >= 'A' && *p <= 'Z') || (*p >= 'a' && *p <= 'z') || (*p >= '0' && *p <= '9') ||
            *p == '-' || *p == '_' || *p == '.' || *p == '~') {
            tmp[0] = (char)*p;
            tmp[1] = '\0';
        } else {
            tmp[0] = '%';
            tmp[1] = hex[*p >> 4];
            tmp[2] = hex[*p & 15];
            tmp[3] = '\0';
        }
        ctl_buf_add(b, tmp);
    }
}

void ctl_buf_seg(ctl_buf_t *b, const char *value)
{
    ctl_buf_add(b, "/");
    add_escaped(b, value);
}

void ctl_buf_query(ctl_buf_t *b, const char *name, const char *value)
{
    if (value == NULL)
        return;
    ctl_buf_add(b, b->has_query ? "&" : "?");
    b->has_query = true;
    ctl_buf_add(b, name);
    ctl_buf_add(b, "=");
    add_escaped(b, value);
}

void ctl_buf_query_long(ctl_buf_t *b, const char *name, long value)
{
    char num[32];
    snprintf(num, sizeof num, "%ld", value);
    ctl_buf_query(b, name, num);
}

const char *ctl_buf_get(ctl_buf_t *b)
{
    if (b->overflow) {
        ctl_err("validation", "the request's URL would be longer than %d bytes", CTL_URL_MAX);
        return NULL;
    }
    return b->s;
}

/* ---- lists ----------------------------------------------------------------- */

/* The cursor as text: emiotd sends a string (device id) or a number (event id). */
static char *cursor_text(const cJSON *next)
{
    char num[32];
    if (cJSON_IsString(next) && next->valuestring[0] != '\0')
        return strdup(next->valuestring);
    if (cJSON_IsNumber(next)) {
        snprintf(num, sizeof num, "%.0f", next->valuedouble);
        return strdup(num);
    }
    return NULL;
}

int ctl_get_list(ctl_t *c, const ctl_buf_t *b, const char *cursor_name, const char *start, bool all,
                 cJSON **items, char **next)
{
    *items = NULL;
    *next = NULL;
    cJSON *acc = cJSON_CreateArray();
    char *cursor = start != NULL ? strdup(start) : NULL;
    if (acc == NULL || (start != NULL && cursor == NULL)) {
        cJSON_Delete(acc);
        free(cursor);
        ctl_err("out_of_memory", "out of memory");
        return CTL_ERROR;
    }
    int rc = 0;
    size_t count = 0;
    for (long page = 0;; page++) {
        if (page >= CTL_PAGES_MAX) {
            ctl_err("limit_reached", "more than %d pages; stopped", CTL_PAGES_MAX);
            rc = CTL_ERROR;
            break;
        }
        ctl_buf_t p = *b;
        ctl_buf_query(&p, cursor_name, cursor);
        const char *path = ctl_buf_get(&p);
        if (path == NULL) {
            rc = CTL_INVALID;
            break;
        }
        ctl_resp_t r;
        rc = ctl_request(c, "GET", path, NULL, true, false, &r);
        if (rc != 0)
            break;
        cJSON *data = cJSON_GetObjectItemCaseSensitive(r.json, "data");
        if (!cJSON_IsArray(data)) {
            ctl_err("message_format", "the server's answer holds no list");
            ctl_resp_cleanup(&r);
            rc = CTL_ERROR;
            break;
        }
        cJSON *it;
        while ((it = cJSON_DetachItemFromArray(data, 0)) != NULL) {
            cJSON_AddItemToArray(acc, it);
            count++;
        }
        free(cursor);
        cursor = cursor_text(cJSON_GetObjectItemCaseSensitive(r.json, "next"));
        ctl_resp_cleanup(&r);
        if (!all || cursor == NULL)
            break;
        if (count > CTL_ITEMS_MAX) {
            ctl_err("limit_reached", "more than %d items; stopped", CTL_ITEMS_MAX);
            rc = CTL_ERROR;
            break;
        }
    }
    if (rc != 0) {
        cJSON_Delete(acc);
        free(cursor);
        return rc;
    }
    *items = acc;
    *next = cursor;
    return 0;
}
