/*
 * libFuzzer target: route matching and capture decoding
 * (em__api_path_match), query parameters (evhttp_parse_query_str and the
 * em__api_query_* readers) and request bodies (em__api_body_object,
 * em__api_only_fields). Input: one byte choosing a route pattern, then
 * "PATH?QUERY\nBODY".
 */
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include <event2/http.h>
#include <event2/keyvalq_struct.h>

#include "api/api_core.h"
#include "emiot/log.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static const char *const patterns[] = {
    "/api/v1/devices",
    "/api/v1/devices/{id}",
    "/api/v1/devices/{id}/status/history",
    "/api/v1/groups/{name}/members/{id}",
    "/api/v1/keys/{keyId}",
    "/api/v1/{a}/{b}/{c}",
    "/healthz",
};

static em_api_t api; /* for the counters answers update */
static em__api_call_t call;

/* A fresh request to answer into (an answer frees an unconnected request). */
static em__api_req_t *fresh(void)
{
    em__api_req_t *r = &call.r;
    if (r->req != NULL && !r->answered)
        evhttp_request_free(r->req);
    r->req = evhttp_request_new(NULL, NULL);
    r->answered = false;
    r->api = &api;
    return r->req != NULL ? r : NULL;
}

static void done(void)
{
    if (call.r.req != NULL && !call.r.answered)
        evhttp_request_free(call.r.req);
    call.r.req = NULL;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    em_log_set_level(EM_LOG_OFF);
    if (size < 1 || size > 16384)
        return 0;
    const char *pattern = patterns[data[0] % (sizeof patterns / sizeof patterns[0])];
    char *s = malloc(size);
    if (s == NULL)
        return 0;
    memcpy(s, data + 1, size - 1);
    s[size - 1] = '\0';
    size_t slen = size - 1;

    char *body = memchr(s, '\n', slen);
    size_t body_len = 0;
    if (body != NULL) {
        *body++ = '\0';
        body_len = slen - (size_t)(body - s);
    }
    char *query = strchr(s, '?');
    if (query != NULL)
        *query++ = '\0';

    char caps[EM__API_CAPTURES_MAX][EM__API_CAPTURE_MAX + 1];
    size_t n = 0;
    int m = em__api_path_match(pattern, s, caps, &n);
    if (m < -1 || m > 1 || n > EM__API_CAPTURES_MAX)
        abort();
    if (m == 1) {
        for (size_t i = 0; i < n; i++) {
            size_t len = strlen(caps[i]);
            if (len == 0 || len > EM__API_CAPTURE_MAX)
                abort();
            for (size_t k = 0; k < len; k++)
                if ((unsigned char)caps[i][k] < 0x20 || caps[i][k] == '/' || caps[i][k] == 0x7F)
                    abort();
        }
    }

    memset(&call, 0, sizeof call);
    struct evkeyvalq q;
    q.tqh_first = NULL;
    q.tqh_last = &q.tqh_first;
    if (query != NULL && evhttp_parse_query_str(query, &q) == 0) {
        static const char *const allowed[] = {"limit", "from", "to", "group", NULL};
        em__api_req_t *r;
        const char *v;
        int64_t x;
        if ((r = fresh()) != NULL) {
            r->query = &q;
            em__api_only_params(r, allowed);
        }
        if ((r = fresh()) != NULL && em__api_query_str(r, "group", 50, &v) && v != NULL &&
            (strlen(v) == 0 || strlen(v) > 50))
            abort();
        if ((r = fresh()) != NULL && em__api_query_int(r, "limit", 100, 1, 1000, &x) &&
            (x < 1 || x > 1000))
            abort();
        if ((r = fresh()) != NULL && em__api_query_time(r, "from", 0, &x) && x < 0)
            abort();
        if ((r = fresh()) != NULL)
            em__api_query_time(r, "to", 0, &x);
    }
    evhttp_clear_headers(&q);
    call.r.query = NULL;

    em__api_req_t *r = fresh();
    if (r != NULL && body != NULL) {
        r->body = body;
        r->body_len = body_len;
        cJSON *obj = em__api_body_object(r);
        if (obj != NULL) {
            if (!cJSON_IsObject(obj) || r->answered)
                abort();
            static const char *const fields[] = {"name", "role", "ttl", NULL};
            if ((r = fresh()) != NULL)
                em__api_only_fields(r, obj, fields);
            cJSON_Delete(obj);
        } else if (!r->answered) {
            abort();
        }
    }
    done();
    free(s);
    return 0;
}
