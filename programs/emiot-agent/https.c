/*
 * emiot-agent - https.c: the few requests a device makes to emiotd's API
 * (enrollment, challenge-response), with libcurl.
 *
 * The channel is what makes the answers trustworthy: the enrollment answer
 * carries the CA certificate the device will trust from then on. So TLS is
 * not negotiable here: TLS 1.3 only, the server's certificate checked
 * against the one CA file given with --ca (no system store, no CA directory)
 * and its name against the URL's host, no redirects, https only. Nothing
 * turns that off. Answers are read into memory up to AGENT_ANSWER_MAX, and
 * every buffer that held a request or an answer is wiped before it is freed:
 * they carry enrollment tokens and device JWTs.
 */
#include <curl/curl.h>
#include <openssl/crypto.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "agent.h"
#include "emiot/version.h"

#define AGENT_CONNECT_TIMEOUT_S 10
#define AGENT_REQUEST_TIMEOUT_S 30
#define AGENT_URL_MAX           2048
#define AGENT_MESSAGE_SHOWN_MAX 200 /* characters of a server's message we print */

void agent_fail(const char *program, const char *fmt, ...)
{
    va_list ap;

    (void)fprintf(stderr, "%s: ", program);
    va_start(ap, fmt);
    (void)vfprintf(stderr, fmt, ap);
    va_end(ap);
    (void)fputc('\n', stderr);
}

/* ---- the answer -------------------------------------------------------- */

typedef struct sink {
    char *buf;
    size_t len, cap;
    bool too_large;
    bool oom;
} sink_t;

/* Grows by doubling up to the maximum; never realloc()s, so that no copy of
 * a secret is left behind unwiped in a freed block. */
static size_t on_data(char *ptr, size_t size, size_t nmemb, void *ud)
{
    sink_t *s = ud;
    size_t n = size * nmemb; /* libcurl guarantees size == 1 */

    if (n > AGENT_ANSWER_MAX - s->len) {
        s->too_large = true;
        return 0; /* makes libcurl stop with CURLE_WRITE_ERROR */
    }
    if (s->len + n + 1 > s->cap) {
        size_t cap = s->cap != 0 ? s->cap : 4096;
        char *p;
        while (cap < s->len + n + 1)
            cap *= 2;
        if (cap > AGENT_ANSWER_MAX + 1)
            cap = AGENT_ANSWER_MAX + 1;
        p = malloc(cap);
        if (!p) {
            s->oom = true;
            return 0;
        }
        if (s->buf) {
            memcpy(p, s->buf, s->len);
            OPENSSL_cleanse(s->buf, s->cap);
            free(s->buf);
        }
        s->buf = p;
        s->cap = cap;
    }
    memcpy(s->buf + s->len, ptr, n);
    s->len += n;
    s->buf[s->len] = '\0';
    return n;
}

static void sink_free(sink_t *s)
{
    if (s->buf) {
        OPENSSL_cleanse(s->buf, s->cap);
        free(s->buf);
    }
    memset(s, 0, sizeof *s);
}

/* Wipes every string of a JSON tree before freeing it: the request of
 * enroll holds the token, the answer of device-token the JWT. Each call
 * walks one level's siblings, frees their children first, then lets
 * cJSON_Delete free that level (it follows next by itself). cJSON_Parse
 * bounds the nesting (CJSON_NESTING_LIMIT), so the recursion is bounded. */
// NOLINTNEXTLINE(misc-no-recursion): bounded by cJSON's CJSON_NESTING_LIMIT (see above)
void agent_json_free(cJSON *j)
{
    for (cJSON *c = j; c != NULL; c = c->next) {
        if (c->child) {
            agent_json_free(c->child);
            c->child = NULL;
        }
        if (c->valuestring)
            OPENSSL_cleanse(c->valuestring, strlen(c->valuestring));
    }
    cJSON_Delete(j);
}

void agent_answer_cleanup(agent_answer_t *a)
{
    if (!a)
        return;
    if (a->body) {
        OPENSSL_cleanse(a->body, a->len);
        free(a->body);
    }
    agent_json_free(a->json);
    memset(a, 0, sizeof *a);
}

const char *agent_json_str(const cJSON *o, const char *name)
{
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(o, name);
    return cJSON_IsString(v) ? v->valuestring : NULL;
}

/* ---- the client -------------------------------------------------------- */

bool agent_https_url_ok(const char *url)
{
    size_t n = strlen(url);
    if (n <= sizeof "https://" - 1 || n > AGENT_URL_MAX ||
        strncasecmp(url, "https://", sizeof "https://" - 1) != 0)
        return false;
    for (size_t i = 0; i < n; i++) {
        unsigned char c = (unsigned char)url[i];
        if (c <= ' ' || c >= 0x7f)
            return false;
    }
    return true;
}

int agent_https_init(agent_https_t *h, const char *program, const char *api_url,
                     const char *ca_file)
{
    CURL *c;
    bool ok = true;
    char ua[64];
    size_t n;

    memset(h, 0, sizeof *h);
    h->program = program;
    if (!agent_https_url_ok(api_url)) {
        agent_fail(program, "--api: '%s' is not an https:// URL (TLS is required)", api_url);
        return AGENT_EXIT_USAGE;
    }
    n = strlen(api_url);
    while (n > 0 && api_url[n - 1] == '/')
        n--;
    h->base = strndup(api_url, n);
    if (!h->base || curl_global_init(CURL_GLOBAL_DEFAULT) != CURLE_OK) {
        free(h->base);
        h->base = NULL;
        agent_fail(program, "cannot set up libcurl (out of memory?)");
        return AGENT_EXIT_FAILURE;
    }
    h->global = true;
    c = curl_easy_init();
    if (!c) {
        agent_https_cleanup(h);
        agent_fail(program, "cannot set up libcurl (out of memory?)");
        return AGENT_EXIT_FAILURE;
    }
    h->curl = c;
    snprintf(ua, sizeof ua, "emiot-agent/%s", em_version());
    ok &= curl_easy_setopt(c, CURLOPT_PROTOCOLS_STR, "https") == CURLE_OK;
    ok &= curl_easy_setopt(c, CURLOPT_FOLLOWLOCATION, 0L) == CURLE_OK;
    ok &=
        curl_easy_setopt(c, CURLOPT_SSLVERSION,
                         (long)(CURL_SSLVERSION_TLSv1_3 | CURL_SSLVERSION_MAX_DEFAULT)) == CURLE_OK;
    ok &= curl_easy_setopt(c, CURLOPT_SSL_VERIFYPEER, 1L) == CURLE_OK;
    ok &= curl_easy_setopt(c, CURLOPT_SSL_VERIFYHOST, 2L) == CURLE_OK;
    ok &= curl_easy_setopt(c, CURLOPT_CAINFO, ca_file) == CURLE_OK;
    ok &= curl_easy_setopt(c, CURLOPT_CAPATH, NULL) == CURLE_OK;
    ok &= curl_easy_setopt(c, CURLOPT_CONNECTTIMEOUT, (long)AGENT_CONNECT_TIMEOUT_S) == CURLE_OK;
    ok &= curl_easy_setopt(c, CURLOPT_TIMEOUT, (long)AGENT_REQUEST_TIMEOUT_S) == CURLE_OK;
    ok &= curl_easy_setopt(c, CURLOPT_NOSIGNAL, 1L) == CURLE_OK;
    ok &= curl_easy_setopt(c, CURLOPT_MAXFILESIZE_LARGE, (curl_off_t)AGENT_ANSWER_MAX) == CURLE_OK;
    ok &= curl_easy_setopt(c, CURLOPT_WRITEFUNCTION, on_data) == CURLE_OK;
    ok &= curl_easy_setopt(c, CURLOPT_USERAGENT, ua) == CURLE_OK;
    if (!ok) {
        agent_https_cleanup(h);
        agent_fail(program, "cannot set up libcurl: this libcurl lacks TLS 1.3 or https");
        return AGENT_EXIT_FAILURE;
    }
    return AGENT_EXIT_OK;
}

void agent_https_cleanup(agent_https_t *h)
{
    if (!h)
        return;
    if (h->curl)
        curl_easy_cleanup(h->curl);
    if (h->global)
        curl_global_cleanup();
    free(h->base);
    memset(h, 0, sizeof *h);
}

/* Prints what the server said, keeping only printable ASCII: the text comes
 * from the network and goes to a terminal. */
static void server_message(const cJSON *json, char *out, size_t size)
{
    const char *msg = agent_json_str(json, "message");
    size_t j = 0;

    out[0] = '\0';
    if (!msg || size == 0)
        return;
    for (size_t i = 0; msg[i] != '\0' && j + 1 < size && i < AGENT_MESSAGE_SHOWN_MAX; i++) {
        unsigned char c = (unsigned char)msg[i];
        if (c >= ' ' && c < 0x7f)
            out[j++] = msg[i];
        else
            out[j++] = '?';
    }
    out[j] = '\0';
}

int agent_exit_for_status(long status)
{
    switch (status) {
    case 401:
    case 403:
        return AGENT_EXIT_REFUSED;
    case 400:
    case 409:
    case 413:
    case 415:
    case 422:
        return AGENT_EXIT_INVALID;
    default:
        /* 404 (a daemon without these routes), 429, 5xx and anything odd:
         * the server cannot do it now; the request itself may be fine. */
        return AGENT_EXIT_SERVER;
    }
}

static int report_http_error(agent_https_t *h, const char *path, const agent_answer_t *a)
{
    char msg[AGENT_MESSAGE_SHOWN_MAX + 1];
    const char *what;
    int rc = agent_exit_for_status(a->status);
    curl_off_t wait = -1;

    server_message(a->json, msg, sizeof msg);
    what = rc == AGENT_EXIT_REFUSED   ? "refused"
           : rc == AGENT_EXIT_INVALID ? "invalid request"
                                      : "server error";
    if (a->status == 429 && curl_easy_getinfo(h->curl, CURLINFO_RETRY_AFTER, &wait) == CURLE_OK &&
        wait > 0)
        agent_fail(h->program, "%s: %s answered HTTP 429 (%s); retry in %lld s", what, path,
                   msg[0] ? msg : "too many requests", (long long)wait);
    else
        agent_fail(h->program, "%s: %s answered HTTP %ld%s%s%s", what, path, a->status,
                   msg[0] ? " (" : "", msg, msg[0] ? ")" : "");
    return rc;
}

static int report_curl_error(agent_https_t *h, CURLcode rc, const sink_t *s, const char *errbuf)
{
    const char *detail = errbuf[0] ? errbuf : curl_easy_strerror(rc);
    bool tls = rc == CURLE_SSL_CONNECT_ERROR || rc == CURLE_PEER_FAILED_VERIFICATION ||
               rc == CURLE_SSL_CERTPROBLEM || rc == CURLE_SSL_CIPHER ||
               rc == CURLE_SSL_CACERT_BADFILE || rc == CURLE_SSL_ISSUER_ERROR ||
               rc == CURLE_USE_SSL_FAILED || rc == CURLE_SSL_INVALIDCERTSTATUS ||
               rc == CURLE_SSL_PINNEDPUBKEYNOTMATCH || rc == CURLE_SSL_CRL_BADFILE;

    if (s->too_large || rc == CURLE_FILESIZE_EXCEEDED) {
        agent_fail(h->program, "server error: the answer is larger than %u KiB",
                   (unsigned)(AGENT_ANSWER_MAX / 1024));
        return AGENT_EXIT_SERVER;
    }
    if (s->oom || rc == CURLE_OUT_OF_MEMORY) {
        agent_fail(h->program, "out of memory");
        return AGENT_EXIT_FAILURE;
    }
    agent_fail(h->program, "cannot reach %s%s: %s", h->base, tls ? " over TLS" : "", detail);
    return AGENT_EXIT_CONNECT;
}

/* Frees the header list. None of ours carries a secret, but curl copies the
 * lines, so there is nothing else to wipe. */
static struct curl_slist *json_headers(void)
{
    struct curl_slist *l = NULL, *n;
    static const char *const lines[] = {"Accept: application/json",
                                        "Content-Type: application/json", "Expect:"};

    for (size_t i = 0; i < sizeof lines / sizeof lines[0]; i++) {
        n = curl_slist_append(l, lines[i]);
        if (!n) {
            curl_slist_free_all(l);
            return NULL;
        }
        l = n;
    }
    return l;
}

int agent_https_post(agent_https_t *h, const char *path, const cJSON *body, agent_answer_t *ans)
{
    char errbuf[CURL_ERROR_SIZE];
    char url[AGENT_URL_MAX + 128];
    struct curl_slist *hdrs = NULL;
    sink_t sink;
    char *text = NULL;
    int rc;
    int n;

    memset(ans, 0, sizeof *ans);
    memset(&sink, 0, sizeof sink);
    errbuf[0] = '\0';
    n = snprintf(url, sizeof url, "%s%s", h->base, path);
    if (n < 0 || (size_t)n >= sizeof url) {
        agent_fail(h->program, "--api: the URL is too long");
        return AGENT_EXIT_USAGE;
    }
    text = cJSON_PrintUnformatted(body);
    hdrs = json_headers();
    if (!text || !hdrs) {
        agent_fail(h->program, "out of memory");
        rc = AGENT_EXIT_FAILURE;
        goto out;
    }
    if (curl_easy_setopt(h->curl, CURLOPT_URL, url) != CURLE_OK ||
        curl_easy_setopt(h->curl, CURLOPT_HTTPHEADER, hdrs) != CURLE_OK ||
        curl_easy_setopt(h->curl, CURLOPT_WRITEDATA, &sink) != CURLE_OK ||
        curl_easy_setopt(h->curl, CURLOPT_ERRORBUFFER, errbuf) != CURLE_OK ||
        curl_easy_setopt(h->curl, CURLOPT_POSTFIELDS, text) != CURLE_OK ||
        curl_easy_setopt(h->curl, CURLOPT_POSTFIELDSIZE_LARGE, (curl_off_t)strlen(text)) !=
            CURLE_OK) {
        agent_fail(h->program, "cannot set up the request");
        rc = AGENT_EXIT_FAILURE;
        goto out;
    }
    {
        CURLcode cc = curl_easy_perform(h->curl);
        if (cc != CURLE_OK) {
            rc = report_curl_error(h, cc, &sink, errbuf);
            goto out;
        }
    }
    (void)curl_easy_getinfo(h->curl, CURLINFO_RESPONSE_CODE, &ans->status);
    if (sink.buf) {
        ans->json = cJSON_ParseWithLength(sink.buf, sink.len);
        ans->body = sink.buf;
        ans->len = sink.len;
        sink.buf = NULL; /* the answer owns it now (wiped by agent_answer_cleanup) */
    }
    if (ans->status < 200 || ans->status > 299) {
        rc = report_http_error(h, path, ans);
        goto out;
    }
    ans->data = cJSON_GetObjectItemCaseSensitive(ans->json, "data");
    if (!cJSON_IsObject(ans->data)) {
        agent_fail(h->program,
                   "server error: the answer of %s (HTTP %ld) is not a JSON object "
                   "with data",
                   path, ans->status);
        rc = AGENT_EXIT_SERVER;
        goto out;
    }
    rc = AGENT_EXIT_OK;
out:
    (void)curl_easy_setopt(h->curl, CURLOPT_HTTPHEADER, NULL);
    (void)curl_easy_setopt(h->curl, CURLOPT_ERRORBUFFER, NULL);
    (void)curl_easy_setopt(h->curl, CURLOPT_WRITEDATA, NULL);
    (void)curl_easy_setopt(h->curl, CURLOPT_POSTFIELDS, NULL);
    curl_slist_free_all(hdrs);
    sink_free(&sink);
    if (text) {
        OPENSSL_cleanse(text, strlen(text));
        free(text);
    }
    if (rc != AGENT_EXIT_OK)
        agent_answer_cleanup(ans);
    return rc;
}
