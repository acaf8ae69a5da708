/*
 * emiot tests - hostile input to emiotd, end to end.
 *
 * One real emiotd (tests/support/daemon.h) on a real mosquitto, attacked the
 * way a client on the network can: TLS 1.2 and plain HTTP on its TLS port
 * (curl, openssl s_client), oversized and malformed bodies, wrong types, out
 * of range values, unknown fields and parameters, unknown routes and methods,
 * a key with a small rate limit, percent-encoded and raw hostile paths
 * (curl --path-as-is, and raw bytes written by python3 over TLS). Each
 * refusal is checked by status and body ({"success":false,"message",
 * "errorCode"}, the message naming the field), nothing is changed by it, and
 * the daemon is still up and answering after it.
 *
 * The tests share one daemon; the one that exhausts the failed-authentication
 * limit of 127.0.0.1 runs last.
 */
#include <setjmp.h>
#include <signal.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <cjson/cJSON.h>
#include <cmocka.h>

#include "broker.h"
#include "daemon.h"
#include "testutil.h"
#include "track.h"

#define PYTHON   "/usr/bin/python3"
#define BODY_MAX (256 * 1024)

static em_test_broker_t broker;
static em_test_daemon_t dmn;
static char viewer_key[EM_TEST_DAEMON_KEY_MAX];

/* ---- running things ------------------------------------------------------ */

static long read_whole(const char *path, char *buf, size_t size)
{
    FILE *f = fopen(path, "r");
    if (f == NULL)
        return -1;
    size_t n = fread(buf, 1, size - 1, f);
    buf[n] = '\0';
    fclose(f);
    return (long)n;
}

static void tmp_path(char *buf, size_t size, const char *what)
{
    static unsigned seq;
    snprintf(buf, size, "%s/.e2e-%d-%u.%s", dmn.dir, (int)getpid(), ++seq, what);
}

/* Runs argv with stdout and stderr captured into out (may be NULL). Returns
 * the exit status, -1 when it did not finish in 30 s. */
static int run_capture(const char *const argv[], char *out, size_t size)
{
    char path[EM_TEST_PATH_MAX];
    tmp_path(path, sizeof(path), "out");
    pid_t pid = em_test_spawn(argv, path);
    int rc = pid > 0 ? em_test_wait(pid, 30000) : -1;
    if (rc == -1 && pid > 0)
        em_test_stop(pid);
    if (out != NULL && size > 0 && read_whole(path, out, size) < 0)
        out[0] = '\0';
    unlink(path);
    return rc;
}

typedef struct answer {
    int status;  /* HTTP status; -1 when no answer */
    int curl_rc; /* curl's exit code */
    char *text;  /* body */
    char *heads; /* response headers */
    cJSON *json; /* parsed body or NULL */
} answer_t;

static void answer_free(answer_t *a)
{
    em_test_untrack(a->text, a->json);
    em_test_untrack(a->heads, NULL);
    free(a->text);
    free(a->heads);
    cJSON_Delete(a->json);
    memset(a, 0, sizeof(*a));
}

/*
 * One request with curl: url is a full URL or, starting with '/', a path on
 * the API listener (sent as is: --path-as-is). key: bearer credential or
 * NULL. body: a string, or NULL; body_file: a file sent as the body instead.
 * extra: more curl arguments (NULL-terminated, may be NULL).
 */
static answer_t curl_call(const char *key, const char *method, const char *url, const char *body,
                          const char *body_file, const char *const *extra)
{
    answer_t a = {.status = -1};
    a.text = calloc(1, BODY_MAX);
    a.heads = calloc(1, 16384);
    assert_non_null(a.text);
    assert_non_null(a.heads);
    char hdr[EM_TEST_PATH_MAX], bodyf[EM_TEST_PATH_MAX], outf[EM_TEST_PATH_MAX],
        headf[EM_TEST_PATH_MAX];
    tmp_path(hdr, sizeof(hdr), "hdr");
    tmp_path(bodyf, sizeof(bodyf), "body");
    tmp_path(outf, sizeof(outf), "out");
    tmp_path(headf, sizeof(headf), "heads");
    FILE *f = fopen(hdr, "w");
    assert_non_null(f);
    fprintf(f, "Content-Type: application/json\n");
    if (key != NULL)
        fprintf(f, "Authorization: Bearer %s\n", key);
    fclose(f);
    if (body != NULL) {
        f = fopen(bodyf, "w");
        assert_non_null(f);
        fputs(body, f);
        fclose(f);
        body_file = bodyf;
    }
    char hdr_arg[EM_TEST_PATH_MAX + 2], body_arg[EM_TEST_PATH_MAX + 2];
    size_t full_size = strlen(url) + sizeof(dmn.url) + 1;
    char *full = malloc(full_size);
    assert_non_null(full);
    snprintf(full, full_size, "%s%s", url[0] == '/' ? dmn.url : "", url);
    snprintf(hdr_arg, sizeof(hdr_arg), "@%s", hdr);
    const char *argv[48];
    int n = 0;
    const char *base[] = {"curl", "-s",   "--max-time", "20",           "--cacert",    dmn.ca,
                          "-X",   method, "-H",         hdr_arg,        "-o",          outf,
                          "-D",   headf,  "-w",         "%{http_code}", "--path-as-is"};
    for (size_t i = 0; i < sizeof(base) / sizeof(base[0]); i++)
        argv[n++] = base[i];
    if (body_file != NULL) {
        snprintf(body_arg, sizeof(body_arg), "@%s", body_file);
        argv[n++] = "--data-binary";
        argv[n++] = body_arg;
    }
    for (int i = 0; extra != NULL && extra[i] != NULL && n < 45; i++)
        argv[n++] = extra[i];
    argv[n++] = full;
    argv[n] = NULL;
    char code[256];
    a.curl_rc = run_capture(argv, code, sizeof(code));
    if (a.curl_rc == 0) {
        long v = strtol(code, NULL, 10);
        if (v > 0 && v < 600)
            a.status = (int)v;
    }
    if (read_whole(outf, a.text, BODY_MAX) < 0)
        a.text[0] = '\0';
    if (read_whole(headf, a.heads, 16384) < 0)
        a.heads[0] = '\0';
    a.json = cJSON_Parse(a.text);
    em_test_track(a.text, a.json);
    em_test_track(a.heads, NULL);
    free(full);
    unlink(hdr);
    unlink(bodyf);
    unlink(outf);
    unlink(headf);
    return a;
}

static answer_t call(const char *key, const char *method, const char *path, const char *body)
{
    return curl_call(key, method, path, body, NULL, NULL);
}

static const cJSON *data_of(const answer_t *a)
{
    return cJSON_GetObjectItemCaseSensitive(a->json, "data");
}

static const char *str_of(const cJSON *obj, const char *name)
{
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(obj, name);
    return cJSON_IsString(v) ? v->valuestring : NULL;
}

static void expect_status(const answer_t *a, int status, const char *what)
{
    if (a->status != status)
        fail_msg("%s: expected %d, got %d (curl %d): %.400s", what, status, a->status, a->curl_rc,
                 a->text);
}

/* An error body: {"success":false,"message":"...","errorCode":code}; code
 * NULL accepts any. */
static void expect_error_body(const answer_t *a, const char *code, const char *what)
{
    if (a->json == NULL)
        fail_msg("%s: the %d answer is not JSON: %.300s", what, a->status, a->text);
    if (!cJSON_IsFalse(cJSON_GetObjectItemCaseSensitive(a->json, "success")))
        fail_msg("%s: no \"success\":false: %.300s", what, a->text);
    const char *msg = str_of(a->json, "message"), *ec = str_of(a->json, "errorCode");
    if (msg == NULL || msg[0] == '\0' || ec == NULL || ec[0] == '\0')
        fail_msg("%s: no message or errorCode: %.300s", what, a->text);
    if (code != NULL && strcmp(ec, code) != 0)
        fail_msg("%s: errorCode %s, expected %s: %.300s", what, ec, code, a->text);
}

/* 400 whose message names field (and errorCode code, NULL: validation). */
static void expect_400_naming(const answer_t *a, const char *field, const char *code,
                              const char *what)
{
    expect_status(a, 400, what);
    expect_error_body(a, code != NULL ? code : "validation", what);
    const char *msg = str_of(a->json, "message");
    if (field != NULL && strstr(msg, field) == NULL)
        fail_msg("%s: the message does not name %s: %s", what, field, msg);
}

/* The value of response header name (case-insensitive) into out, or false. */
static bool header_value(const answer_t *a, const char *name, char *out, size_t size)
{
    size_t nlen = strlen(name);
    const char *p = a->heads;
    while (p != NULL && *p != '\0') {
        if (strncasecmp(p, name, nlen) == 0 && p[nlen] == ':') {
            const char *v = p + nlen + 1;
            while (*v == ' ')
                v++;
            size_t len = strcspn(v, "\r\n");
            snprintf(out, size, "%.*s", (int)len, v);
            return true;
        }
        p = strchr(p, '\n');
        if (p != NULL)
            p++;
    }
    return false;
}

static void expect_daemon_up(void)
{
    assert_true(dmn.pid > 0);
    assert_int_equal(kill(dmn.pid, 0), 0);
    answer_t a = call(NULL, "GET", "/healthz", NULL);
    expect_status(&a, 200, "GET /healthz");
    answer_free(&a);
    a = call(dmn.admin_key, "GET", "/api/v1/devices", NULL);
    expect_status(&a, 200, "GET /api/v1/devices");
    answer_free(&a);
}

static void expect_no_device(const char *id)
{
    char path[256];
    snprintf(path, sizeof(path), "/api/v1/devices/%s", id);
    answer_t a = call(dmn.admin_key, "GET", path, NULL);
    expect_status(&a, 404, path);
    answer_free(&a);
}

static void make_device(const char *id)
{
    char body[256];
    snprintf(body, sizeof(body), "{\"id\":\"%s\",\"name\":\"Device %s\",\"type\":\"sensor\"}", id,
             id);
    answer_t a = call(dmn.admin_key, "POST", "/api/v1/devices", body);
    expect_status(&a, 201, "POST /api/v1/devices");
    answer_free(&a);
}

/* ---- set-up -------------------------------------------------------------- */

static int group_setup(void **state)
{
    (void)state;
    if (em_test_broker_start(&broker, "tls") != 0)
        return -1;
    if (em_test_daemon_start(&dmn, &broker, NULL) != 0)
        return -1;
    if (dmn.admin_key[0] == '\0')
        return -1;
    char *buf = malloc(BODY_MAX);
    if (buf == NULL)
        return -1;
    int status =
        em_test_daemon_request(&dmn, dmn.admin_key, "POST", "/api/v1/keys",
                               "{\"name\":\"input-viewer\",\"role\":\"viewer\"}", buf, BODY_MAX);
    cJSON *j = cJSON_Parse(buf);
    const char *k = str_of(cJSON_GetObjectItemCaseSensitive(j, "data"), "key");
    int rc = status == 201 && k != NULL ? 0 : -1;
    if (rc == 0)
        snprintf(viewer_key, sizeof(viewer_key), "%s", k);
    else
        fprintf(stderr, "POST /api/v1/keys: %d %.300s\n", status, buf);
    cJSON_Delete(j);
    free(buf);
    return rc;
}

static int group_teardown(void **state)
{
    (void)state;
    em_test_daemon_cleanup(&dmn);
    em_test_broker_cleanup(&broker);
    return 0;
}

/* ---- transport -------------------------------------------------------------- */

static void test_tls12_client_is_refused_by_curl(void **state)
{
    (void)state;
    /* The control: the same curl with TLS 1.3 gets in. */
    answer_t a = call(NULL, "GET", "/healthz", NULL);
    expect_status(&a, 200, "TLS 1.3 /healthz");
    answer_free(&a);
    const char *tls12[] = {"--tls-max", "1.2", NULL};
    a = curl_call(NULL, "GET", "/healthz", NULL, NULL, tls12);
    if (a.curl_rc == 0 || a.status != -1)
        fail_msg("a TLS 1.2 client was answered: curl %d, HTTP %d", a.curl_rc, a.status);
    answer_free(&a);
    expect_daemon_up();
}

/* Runs openssl s_client against the API port with the given protocol
 * options; returns its exit status (stdin is /dev/null, so a completed
 * handshake exits 0). */
static int s_client(const char *opts)
{
    char cmd[1024];
    snprintf(cmd, sizeof(cmd),
             "exec openssl s_client -connect 127.0.0.1:%d -servername localhost -CAfile '%s' "
             "-verify_return_error %s </dev/null",
             dmn.port, dmn.ca, opts);
    const char *argv[] = {"bash", "-c", cmd, NULL};
    return run_capture(argv, NULL, 0);
}

static void test_tls12_client_is_refused_by_openssl(void **state)
{
    (void)state;
    assert_int_equal(s_client("-tls1_3"), 0);
    assert_int_not_equal(s_client("-tls1_2"), 0);
    assert_int_not_equal(s_client("-tls1_1"), 0);
    expect_daemon_up();
}

static void test_tls13_suites_outside_the_three_aeads_are_refused(void **state)
{
    (void)state;
    /* TLS_AES_128_CCM_SHA256 is a TLS 1.3 suite, but not one of the three. */
    assert_int_not_equal(s_client("-tls1_3 -ciphersuites TLS_AES_128_CCM_SHA256"), 0);
    assert_int_equal(s_client("-tls1_3 -ciphersuites TLS_CHACHA20_POLY1305_SHA256"), 0);
    assert_int_equal(s_client("-tls1_3 -ciphersuites TLS_AES_128_GCM_SHA256"), 0);
    assert_int_equal(s_client("-tls1_3 -ciphersuites TLS_AES_256_GCM_SHA384"), 0);
}

static void test_plain_http_on_the_tls_port_is_refused(void **state)
{
    (void)state;
    char url[128];
    snprintf(url, sizeof(url), "http://127.0.0.1:%d/api/v1/devices", dmn.port);
    answer_t a = curl_call(dmn.admin_key, "GET", url, NULL, NULL, NULL);
    if (a.status >= 200 && a.status < 300)
        fail_msg("plain HTTP was served: %d %.300s", a.status, a.text);
    assert_null(strstr(a.text, "\"success\":true"));
    answer_free(&a);
    snprintf(url, sizeof(url), "http://127.0.0.1:%d/healthz", dmn.port);
    a = curl_call(NULL, "GET", url, NULL, NULL, NULL);
    if (a.status >= 200 && a.status < 300)
        fail_msg("plain HTTP was served: %d %.300s", a.status, a.text);
    answer_free(&a);
    expect_daemon_up();
}

static void test_api_routes_are_not_served_on_the_metrics_listener(void **state)
{
    (void)state;
    /* The plain metrics_only listener serves /metrics, never the API. */
    char url[160];
    snprintf(url, sizeof(url), "%s/api/v1/devices", dmn.metrics_url);
    answer_t a = curl_call(dmn.admin_key, "GET", url, NULL, NULL, NULL);
    if (a.status >= 200 && a.status < 300)
        fail_msg("the metrics listener served the API: %d %.300s", a.status, a.text);
    answer_free(&a);
    snprintf(url, sizeof(url), "%s/metrics", dmn.metrics_url);
    a = curl_call(NULL, "GET", url, NULL, NULL, NULL);
    expect_status(&a, 200, "GET /metrics on the metrics listener");
    answer_free(&a);
}

/* ---- bodies ------------------------------------------------------------------- */

static void test_oversized_body_is_413(void **state)
{
    (void)state;
    /* Valid JSON, 80 KiB: over the default max_body of 64 KiB. */
    size_t len = 80 * 1024;
    char *body = malloc(len + 128);
    assert_non_null(body);
    int n = snprintf(body, 128, "{\"id\":\"in-big\",\"type\":\"sensor\",\"name\":\"");
    memset(body + n, 'a', len);
    snprintf(body + n + len, 16, "\"}");
    answer_t a = call(dmn.admin_key, "POST", "/api/v1/devices", body);
    free(body);
    expect_status(&a, 413, "80 KiB body");
    expect_error_body(&a, NULL, "80 KiB body");
    answer_free(&a);
    expect_no_device("in-big");
    expect_daemon_up();
}

static void test_malformed_json_is_400_message_format(void **state)
{
    (void)state;
    const char *bad[] = {
        "{\"id\":\"in-bad1\",\"name\":\"x\",\"type\":",
        "{\"id\":\"in-bad2\",\"name\":\"x\",\"type\":\"sensor\"} trailing",
        "{'id':'in-bad3'}",
        "{\"id\":\"in-bad4\",\"name\":\"x\",\"type\":\"sensor\",}",
        "\xff\xfe{}",
        "nul",
        NULL,
    };
    for (int i = 0; bad[i] != NULL; i++) {
        answer_t a = call(dmn.admin_key, "POST", "/api/v1/devices", bad[i]);
        expect_status(&a, 400, bad[i]);
        expect_error_body(&a, "message_format", bad[i]);
        answer_free(&a);
    }
    expect_no_device("in-bad1");
    expect_no_device("in-bad2");
    expect_no_device("in-bad4");
}

static void test_body_that_is_not_an_object_is_400(void **state)
{
    (void)state;
    const char *bad[] = {"[]", "42", "\"device\"", "null", NULL};
    for (int i = 0; bad[i] != NULL; i++) {
        answer_t a = call(dmn.admin_key, "POST", "/api/v1/devices", bad[i]);
        expect_status(&a, 400, bad[i]);
        expect_error_body(&a, NULL, bad[i]);
        answer_free(&a);
    }
}

static void test_deeply_nested_json_is_400(void **state)
{
    (void)state;
    /* 2000 levels in config: past any sane depth limit. */
    char *body = malloc(8192);
    assert_non_null(body);
    int n =
        snprintf(body, 8192, "{\"id\":\"in-deep\",\"name\":\"x\",\"type\":\"sensor\",\"config\":");
    for (int i = 0; i < 2000; i++)
        body[n++] = '[';
    for (int i = 0; i < 2000; i++)
        body[n++] = ']';
    body[n++] = '}';
    body[n] = '\0';
    answer_t a = call(dmn.admin_key, "POST", "/api/v1/devices", body);
    free(body);
    expect_status(&a, 400, "2000 nested arrays");
    expect_error_body(&a, NULL, "2000 nested arrays");
    answer_free(&a);
    expect_no_device("in-deep");
    expect_daemon_up();
}

static void test_wrong_types_are_400_naming_the_field(void **state)
{
    (void)state;
    static const struct {
        const char *body, *field;
    } cases[] = {
        {"{\"id\":\"in-type1\",\"name\":5,\"type\":\"sensor\"}", "name"},
        {"{\"id\":7,\"name\":\"x\",\"type\":\"sensor\"}", "id"},
        {"{\"id\":\"in-type3\",\"name\":\"x\",\"type\":\"sensor\",\"enabled\":\"yes\"}", "enabled"},
        {"{\"id\":\"in-type4\",\"name\":\"x\",\"type\":\"sensor\",\"groups\":\"kitchen\"}",
         "groups"},
        {"{\"id\":\"in-type5\",\"name\":\"x\",\"type\":\"sensor\",\"config\":[1]}", "config"},
        {"{\"id\":\"in-type6\",\"name\":\"x\",\"type\":\"toaster\"}", "type"},
        {"{\"id\":\"in-type7\",\"name\":\"x\",\"type\":null}", "type"},
    };
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        answer_t a = call(dmn.admin_key, "POST", "/api/v1/devices", cases[i].body);
        expect_400_naming(&a, cases[i].field, NULL, cases[i].body);
        answer_free(&a);
    }
    expect_no_device("in-type1");
    expect_no_device("in-type3");
    expect_no_device("in-type6");
}

static void test_bad_ids_and_names_are_400_naming_the_field(void **state)
{
    (void)state;
    char long_id[128];
    memset(long_id, 'x', 51);
    long_id[51] = '\0';
    char body[512];
    snprintf(body, sizeof(body), "{\"id\":\"%s\",\"name\":\"x\",\"type\":\"sensor\"}", long_id);
    const char *cases[][2] = {
        {"{\"id\":\"ab\",\"name\":\"x\",\"type\":\"sensor\"}", "id"},
        {"{\"id\":\"a/b/c\",\"name\":\"x\",\"type\":\"sensor\"}", "id"},
        {"{\"id\":\"in bad\",\"name\":\"x\",\"type\":\"sensor\"}", "id"},
        {body, "id"},
        {"{\"id\":\"in-noname\",\"name\":\"\",\"type\":\"sensor\"}", "name"},
        {"{\"name\":\"x\",\"type\":\"sensor\"}", "id"},
    };
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        answer_t a = call(dmn.admin_key, "POST", "/api/v1/devices", cases[i][0]);
        expect_400_naming(&a, cases[i][1], NULL, cases[i][0]);
        answer_free(&a);
    }
}

static void test_bad_group_names_are_400_naming_the_field(void **state)
{
    (void)state;
    /* The body's field is "name": the message names it. */
    answer_t a = call(dmn.admin_key, "POST", "/api/v1/groups", "{\"name\":\"x\"}");
    expect_400_naming(&a, "name", NULL, "group name of 1 character");
    answer_free(&a);
    a = call(dmn.admin_key, "POST", "/api/v1/groups", "{\"name\":\"bad/group\"}");
    expect_400_naming(&a, "name", NULL, "group name with a slash");
    answer_free(&a);
    a = call(dmn.admin_key, "GET", "/api/v1/groups", NULL);
    expect_status(&a, 200, "GET /api/v1/groups");
    assert_int_equal(cJSON_GetArraySize(data_of(&a)), 0);
    answer_free(&a);
}

/* cJSON turns "\u0000" into a NUL byte: a string with one inside must be
 * refused, not cut short at it (an id "in-nul\u0000..." must not become the
 * device "in-nul", nor a group name "ab\u0000..." the group "ab"). */
static void test_escaped_nul_in_a_string_is_refused_not_truncated(void **state)
{
    (void)state;
    answer_t a = call(dmn.admin_key, "POST", "/api/v1/devices",
                      "{\"id\":\"in-nul\\u0000-rest\",\"name\":\"x\",\"type\":\"sensor\"}");
    expect_400_naming(&a, "id", NULL, "an id with \\u0000");
    answer_free(&a);
    expect_no_device("in-nul");
    a = call(dmn.admin_key, "POST", "/api/v1/groups", "{\"name\":\"nul\\u0000group\"}");
    expect_400_naming(&a, "name", NULL, "a group name with \\u0000");
    answer_free(&a);
    a = call(dmn.admin_key, "GET", "/api/v1/groups/nul", NULL);
    expect_status(&a, 404, "group nul");
    answer_free(&a);
}

static void test_out_of_range_values_are_400_naming_the_field(void **state)
{
    (void)state;
    make_device("in-range");
    static const struct {
        const char *path, *body, *field;
    } cases[] = {
        {"/api/v1/devices/in-range/commands",
         "{\"type\":\"set_reporting_interval\",\"payload\":{\"interval\":5}}", "interval"},
        {"/api/v1/devices/in-range/commands",
         "{\"type\":\"set_reporting_interval\",\"payload\":{\"interval\":100000}}", "interval"},
        {"/api/v1/devices/in-range/commands", "{\"type\":\"restart\",\"ttl\":5}", "ttl"},
        {"/api/v1/devices/in-range/commands", "{\"type\":\"restart\",\"ttl\":86401}", "ttl"},
        {"/api/v1/devices/in-range/commands", "{\"type\":\"self_destruct\"}", "type"},
        {"/api/v1/devices/in-range/commands", "{\"type\":\"reset\",\"payload\":{}}", "confirm"},
        {"/api/v1/keys", "{\"name\":\"in-k1\",\"role\":\"viewer\",\"ratePerMinute\":-1}",
         "ratePerMinute"},
        {"/api/v1/keys", "{\"name\":\"in-k2\",\"role\":\"viewer\",\"expiresIn\":1}", "expiresIn"},
        {"/api/v1/keys", "{\"name\":\"in-k3\",\"role\":\"superuser\"}", "role"},
        {"/api/v1/tokens", "{\"ttl\":1}", "ttl"},
        {"/api/v1/tokens", "{\"ttl\":1e300}", "ttl"},
    };
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        answer_t a = call(dmn.admin_key, "POST", cases[i].path, cases[i].body);
        expect_400_naming(&a, cases[i].field, NULL, cases[i].body);
        answer_free(&a);
    }
    /* None of those commands was stored. */
    answer_t a = call(dmn.admin_key, "GET", "/api/v1/devices/in-range/commands", NULL);
    expect_status(&a, 200, "commands of in-range");
    assert_int_equal(cJSON_GetArraySize(data_of(&a)), 0);
    answer_free(&a);
}

static void test_unknown_fields_are_400(void **state)
{
    (void)state;
    make_device("in-known");
    static const struct {
        const char *method, *path, *body, *field;
    } cases[] = {
        {"POST", "/api/v1/devices",
         "{\"id\":\"in-unknown\",\"name\":\"x\",\"type\":\"sensor\",\"color\":\"red\"}", "color"},
        {"PATCH", "/api/v1/devices/in-known", "{\"name\":\"y\",\"id\":\"in-renamed\"}", "id"},
        {"PATCH", "/api/v1/devices/in-known", "{\"isAdmin\":true}", "isAdmin"},
        {"POST", "/api/v1/groups", "{\"name\":\"in group\",\"owner\":\"me\"}", "owner"},
        {"POST", "/api/v1/keys", "{\"name\":\"in-k4\",\"role\":\"viewer\",\"hash\":\"00\"}",
         "hash"},
        {"POST", "/api/v1/devices/in-known/commands", "{\"type\":\"wake\",\"priority\":1}",
         "priority"},
    };
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        answer_t a = call(dmn.admin_key, cases[i].method, cases[i].path, cases[i].body);
        expect_400_naming(&a, cases[i].field, NULL, cases[i].body);
        answer_free(&a);
    }
    expect_no_device("in-unknown");
    expect_no_device("in-renamed");
    answer_t a = call(dmn.admin_key, "GET", "/api/v1/devices/in-known", NULL);
    expect_status(&a, 200, "in-known");
    assert_string_equal(str_of(data_of(&a), "name"), "Device in-known");
    answer_free(&a);
    a = call(dmn.admin_key, "GET", "/api/v1/groups/in%20group", NULL);
    expect_status(&a, 404, "group in group");
    answer_free(&a);
}

static void test_bad_query_parameters_are_400_naming_them(void **state)
{
    (void)state;
    make_device("in-query");
    static const struct {
        const char *path, *param;
    } cases[] = {
        {"/api/v1/devices?limit=0", "limit"},
        {"/api/v1/devices?limit=1001", "limit"},
        {"/api/v1/devices?limit=ten", "limit"},
        {"/api/v1/devices?limit=99999999999999999999999", "limit"},
        {"/api/v1/devices?limit=-5", "limit"},
        {"/api/v1/devices?bogus=1", "bogus"},
        {"/api/v1/devices?type=toaster", "type"},
        {"/api/v1/events?kind=gossip", "kind"},
        {"/api/v1/events?severity=apocalyptic", "severity"},
        {"/api/v1/events?from=yesterday", "from"},
        {"/api/v1/events?to=2026-13-45T99:99:99Z", "to"},
        {"/api/v1/commands?state=pondering", "state"},
        {"/api/v1/devices/in-query/telemetry?rollup=week", "rollup"},
        {"/api/v1/devices/in-query/status/history?order=sideways", "order"},
        {"/api/v1/devices/in-query/status/history?limit=%00", "limit"},
    };
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        answer_t a = call(viewer_key, "GET", cases[i].path, NULL);
        expect_400_naming(&a, cases[i].param, NULL, cases[i].path);
        answer_free(&a);
    }
}

/* ---- routes and methods ---------------------------------------------------- */

static void test_unknown_route_is_404(void **state)
{
    (void)state;
    const char *paths[] = {"/api/v1/nothing",
                           "/api/v2/devices",
                           "/api/v1/devices/in-x/y/z",
                           "/",
                           "/api/v1",
                           "/api/v1/devices/in-x/status/history/more",
                           NULL};
    for (int i = 0; paths[i] != NULL; i++) {
        answer_t a = call(dmn.admin_key, "GET", paths[i], NULL);
        expect_status(&a, 404, paths[i]);
        expect_error_body(&a, "not_found", paths[i]);
        answer_free(&a);
    }
}

static void test_unknown_device_is_404_device_not_found(void **state)
{
    (void)state;
    answer_t a = call(dmn.admin_key, "GET", "/api/v1/devices/in-nobody", NULL);
    expect_status(&a, 404, "in-nobody");
    expect_error_body(&a, "device_not_found", "in-nobody");
    answer_free(&a);
}

static void test_wrong_method_is_405(void **state)
{
    (void)state;
    static const struct {
        const char *method, *path;
    } cases[] = {
        {"PUT", "/api/v1/devices"}, {"DELETE", "/api/v1/devices"}, {"DELETE", "/api/v1/events"},
        {"PATCH", "/api/v1/keys"},  {"POST", "/api/v1/whoami"},    {"PUT", "/api/v1/commands"},
        {"POST", "/healthz"},
    };
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        answer_t a = call(dmn.admin_key, cases[i].method, cases[i].path, NULL);
        expect_status(&a, 405, cases[i].path);
        expect_error_body(&a, NULL, cases[i].path);
        answer_free(&a);
    }
    /* The devices list is still there and no device was deleted. */
    expect_daemon_up();
}

/* ---- rate limits --------------------------------------------------------------- */

static void test_key_rate_limit_reaches_429_and_recovers(void **state)
{
    (void)state;
    answer_t a = call(dmn.admin_key, "POST", "/api/v1/keys",
                      "{\"name\":\"in-slow\",\"role\":\"viewer\",\"ratePerMinute\":6}");
    expect_status(&a, 201, "POST /api/v1/keys ratePerMinute 6");
    char key[EM_TEST_DAEMON_KEY_MAX];
    assert_non_null(str_of(data_of(&a), "key"));
    snprintf(key, sizeof(key), "%s", str_of(data_of(&a), "key"));
    answer_free(&a);

    /* A bucket of 6 per minute is empty after at most 6 requests (allow a
     * few more for a refill while the loop runs). */
    int ok = 0;
    answer_t limited = {0};
    for (int i = 0; i < 12; i++) {
        a = call(key, "GET", "/api/v1/whoami", NULL);
        if (a.status == 429) {
            limited = a;
            break;
        }
        expect_status(&a, 200, "whoami under the limit");
        ok++;
        answer_free(&a);
    }
    if (limited.status != 429)
        fail_msg("12 requests with a key of 6 per minute were never limited");
    assert_true(ok >= 1);
    expect_error_body(&limited, "rate_limit_exceeded", "429");
    char ra[64];
    if (!header_value(&limited, "Retry-After", ra, sizeof(ra)))
        fail_msg("429 without Retry-After: %s", limited.heads);
    char *end = NULL;
    long wait_s = strtol(ra, &end, 10);
    assert_true(end != ra && *end == '\0');
    assert_in_range(wait_s, 1, 60);
    answer_free(&limited);

    /* Another identity is not limited by this key's bucket. */
    a = call(dmn.admin_key, "GET", "/api/v1/whoami", NULL);
    expect_status(&a, 200, "admin while in-slow is limited");
    answer_free(&a);

    em_test_sleep_ms((int)wait_s * 1000);
    a = call(key, "GET", "/api/v1/whoami", NULL);
    expect_status(&a, 200, "whoami after Retry-After");
    answer_free(&a);
}

/* ---- hostile paths ------------------------------------------------------------- */

static void test_hostile_paths_get_400_or_404(void **state)
{
    (void)state;
    make_device("in-host");
    char long_id[400], long_enc[700];
    memset(long_id, 'a', 300);
    long_id[300] = '\0';
    for (int i = 0; i < 200; i++)
        memcpy(long_enc + 3 * i, "%41", 3);
    long_enc[600] = '\0';
    char p_long[512], p_enc[800];
    snprintf(p_long, sizeof(p_long), "/api/v1/devices/%s", long_id);
    snprintf(p_enc, sizeof(p_enc), "/api/v1/devices/%s", long_enc);
    const char *paths[] = {
        "/api/v1/devices/in-host%2Fstatus",
        "/api/v1/devices/..%2F..%2Fkeys",
        "/api/v1/devices/%2e%2e/%2e%2e/keys",
        "/api/v1/devices/../../v1/keys",
        "/api/v1/devices/in-host/../../keys",
        "/api/v1/devices/in-host%00",
        "/api/v1/devices/in%00host",
        "/api/v1/devices/in%0ahost",
        "/api/v1/devices/in%0d%0aX-Injected:%201",
        "/api/v1/devices/in%1bhost",
        "/api/v1/devices/%ff%fe%fd",
        "/api/v1/devices/%c0%af",
        "/api/v1/devices/%zz",
        "/api/v1/devices/abc%",
        "/api/v1/devices/%",
        "/api/v1/devices/in%20host",
        "/api/v1//devices",
        "/api/v1/devices//status",
        "/api/v1/commands/%00",
        p_long,
        p_enc,
        NULL,
    };
    for (int i = 0; paths[i] != NULL; i++) {
        answer_t a = call(viewer_key, "GET", paths[i], NULL);
        if (a.status != 400 && a.status != 404)
            fail_msg("GET %.80s: expected 400 or 404, got %d: %.300s", paths[i], a.status, a.text);
        expect_error_body(&a, NULL, paths[i]);
        assert_null(strstr(a.heads, "X-Injected"));
        answer_free(&a);
    }
    /* Writes through hostile paths change nothing. */
    static const struct {
        const char *method, *path;
    } writes[] = {
        {"DELETE", "/api/v1/devices/in-host%2F.."},
        {"DELETE", "/api/v1/devices/in-host%00"},
        {"PUT", "/api/v1/groups/a%2Fb/members/in-host"},
        {"PUT", "/api/v1/groups/in%00group/members/in-host"},
        {"PATCH", "/api/v1/devices/in-host%2F"},
        {"DELETE", "/api/v1/keys/%2e%2e"},
        {"DELETE", "/api/v1/keys/..%2F..%2Fdevices%2Fin-host"},
    };
    answer_t a;
    for (size_t i = 0; i < sizeof(writes) / sizeof(writes[0]); i++) {
        a = call(dmn.admin_key, writes[i].method, writes[i].path,
                 strcmp(writes[i].method, "PATCH") == 0 ? "{\"name\":\"hostile\"}" : NULL);
        if (a.status != 400 && a.status != 404)
            fail_msg("%s %s: expected 400 or 404, got %d: %.300s", writes[i].method, writes[i].path,
                     a.status, a.text);
        expect_error_body(&a, NULL, writes[i].path);
        answer_free(&a);
    }
    a = call(dmn.admin_key, "GET", "/api/v1/groups", NULL);
    expect_status(&a, 200, "GET /api/v1/groups");
    assert_int_equal(cJSON_GetArraySize(data_of(&a)), 0);
    answer_free(&a);
    a = call(dmn.admin_key, "GET", "/api/v1/devices/in-host", NULL);
    expect_status(&a, 200, "in-host after the hostile paths");
    assert_string_equal(str_of(data_of(&a), "name"), "Device in-host");
    answer_free(&a);
    expect_daemon_up();
}

static void test_very_long_url_and_query_are_refused(void **state)
{
    (void)state;
    size_t n = 60000;
    char *path = malloc(n + 64);
    assert_non_null(path);
    int off = snprintf(path, 64, "/api/v1/events?type=");
    memset(path + off, 'q', n);
    path[off + n] = '\0';
    answer_t a = call(viewer_key, "GET", path, NULL);
    /* Refused whole: 414 or 400 from the parser, 400 naming type, or the
     * connection closed before an answer. */
    if (a.status != -1 && a.status != 400 && a.status != 414 && a.status != 431)
        fail_msg("a 60 KB query: expected 400/414/431 or a closed connection, got %d (curl %d)",
                 a.status, a.curl_rc);
    answer_free(&a);
    free(path);
    expect_daemon_up();
}

/* Sends raw bytes (from a file, so that NUL and CR/LF survive) over TLS with
 * python3 and returns the status of the answer's first line: 0 when the
 * daemon closed the connection without one. */
static const char PY_RAW[] =
    "import sys, ssl, socket\n"
    "port, ca, raw = int(sys.argv[1]), sys.argv[2], open(sys.argv[3], 'rb').read()\n"
    "ctx = ssl.create_default_context(cafile=ca)\n"
    "s = ctx.wrap_socket(socket.create_connection(('127.0.0.1', port), timeout=5),\n"
    "                    server_hostname='localhost')\n"
    "data = b''\n"
    "try:\n"
    "    s.sendall(raw)\n"
    "    while b'\\r\\n' not in data and len(data) < 65536:\n"
    "        d = s.recv(4096)\n"
    "        if not d:\n"
    "            break\n"
    "        data += d\n"
    "except (OSError, ssl.SSLError):\n"
    "    pass\n"
    "line = data.split(b'\\r\\n', 1)[0].split(b' ')\n"
    "print(int(line[1]) if len(line) > 1 and line[1].isdigit() else 0)\n";

static int raw_status(const char *raw, size_t len)
{
    char path[EM_TEST_PATH_MAX];
    tmp_path(path, sizeof(path), "raw");
    FILE *f = fopen(path, "wb");
    assert_non_null(f);
    assert_int_equal(fwrite(raw, 1, len, f), len);
    fclose(f);
    char port[16], out[256];
    snprintf(port, sizeof(port), "%d", dmn.port);
    const char *argv[] = {PYTHON, "-c", PY_RAW, port, dmn.ca, path, NULL};
    int rc = run_capture(argv, out, sizeof(out));
    unlink(path);
    if (rc != 0)
        fail_msg("python3 raw request failed (%d): %s", rc, out);
    return (int)strtol(out, NULL, 10);
}

static void test_raw_control_characters_never_get_500(void **state)
{
    (void)state;
    static const struct {
        const char *raw;
        size_t len;
    } cases[] = {
#define RAW(s) {s, sizeof(s) - 1}
        RAW("GET /api/v1/devices/in\x01host HTTP/1.1\r\nHost: localhost\r\nConnection: "
            "close\r\n\r\n"),
        RAW("GET /api/v1/devices/in\x00host HTTP/1.1\r\nHost: localhost\r\nConnection: "
            "close\r\n\r\n"),
        RAW("GET /api/v1/devices/in\x7fhost HTTP/1.1\r\nHost: localhost\r\nConnection: "
            "close\r\n\r\n"),
        RAW("GET /api/v1/devices/\xc3\xa9t\xc3\xa9 HTTP/1.1\r\nHost: localhost\r\nConnection: "
            "close\r\n\r\n"),
        RAW("GET /api/v1/devices/in\rhost HTTP/1.1\r\nHost: localhost\r\nConnection: "
            "close\r\n\r\n"),
        RAW("GET\t/api/v1/devices HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n"),
        RAW("GET api/v1/devices HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n"),
        RAW("GET /api/v1/devices HTTP/1.1\r\nAuthorization: Bearer \x00\x01\x02\r\nConnection: "
            "close\r\n\r\n"),
        RAW("POST /api/v1/devices HTTP/1.1\r\nHost: localhost\r\nContent-Length: -5\r\nConnection: "
            "close\r\n\r\n"),
        RAW("POST /api/v1/devices HTTP/1.1\r\nHost: localhost\r\nContent-Length: "
            "99999999999999999999\r\nConnection: close\r\n\r\n"),
        RAW("POST /api/v1/devices HTTP/1.1\r\nHost: localhost\r\nTransfer-Encoding: "
            "chunked\r\nConnection: close\r\n\r\nffffffffffffffff\r\n"),
        RAW("\r\n\r\n\r\n"),
#undef RAW
    };
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        int status = raw_status(cases[i].raw, cases[i].len);
        if (status >= 500 || (status != 0 && status < 400))
            fail_msg("raw request %zu: got %d (expected a 4xx or a closed connection)", i, status);
    }
    /* An unknown method: 501 is HTTP's answer (RFC 9110, 15.6.2), or a 4xx. */
    static const char brew[] =
        "BREW /api/v1/devices HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n";
    int st = raw_status(brew, sizeof(brew) - 1);
    if (st != 501 && st != 405 && st != 400)
        fail_msg("BREW: got %d (expected 501, 405 or 400)", st);
    /* A header line of 100 KB. */
    size_t big = 100 * 1024;
    char *raw = malloc(big + 256);
    assert_non_null(raw);
    int n = snprintf(raw, 256, "GET /api/v1/devices HTTP/1.1\r\nHost: localhost\r\nX-Big: ");
    memset(raw + n, 'b', big);
    memcpy(raw + n + big, "\r\nConnection: close\r\n\r\n", 24);
    int status = raw_status(raw, (size_t)n + big + 24);
    free(raw);
    if (status >= 500 || (status != 0 && status < 400))
        fail_msg("a 100 KB header: got %d (expected a 4xx or a closed connection)", status);
    expect_daemon_up();
}

/* Last: it leaves 127.0.0.1 limited for failed authentications. */
static void test_failed_authentications_are_limited_per_address(void **state)
{
    (void)state;
    answer_t limited = {0};
    for (int i = 0; i < 60; i++) {
        answer_t a = call("iot_badbadbadbadbadbadbadbadbadbadbadbadbadbadbadbadb", "GET",
                          "/api/v1/devices", NULL);
        if (a.status == 429) {
            limited = a;
            break;
        }
        expect_status(&a, 401, "a wrong key before the limit");
        answer_free(&a);
    }
    if (limited.status != 429)
        fail_msg("60 failed authentications from one address were never limited");
    expect_error_body(&limited, "rate_limit_exceeded", "429 after failed authentications");
    char ra[64];
    if (!header_value(&limited, "Retry-After", ra, sizeof(ra)))
        fail_msg("429 without Retry-After: %s", limited.heads);
    assert_true(strtol(ra, NULL, 10) >= 1);
    answer_free(&limited);
    answer_t a = call(NULL, "GET", "/healthz", NULL);
    expect_status(&a, 200, "healthz while the address is limited");
    answer_free(&a);
    assert_int_equal(kill(dmn.pid, 0), 0);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_teardown(test_tls12_client_is_refused_by_curl, em_test_free_tracked),
        cmocka_unit_test_teardown(test_tls12_client_is_refused_by_openssl, em_test_free_tracked),
        cmocka_unit_test_teardown(test_tls13_suites_outside_the_three_aeads_are_refused,
                                  em_test_free_tracked),
        cmocka_unit_test_teardown(test_plain_http_on_the_tls_port_is_refused, em_test_free_tracked),
        cmocka_unit_test_teardown(test_api_routes_are_not_served_on_the_metrics_listener,
                                  em_test_free_tracked),
        cmocka_unit_test_teardown(test_oversized_body_is_413, em_test_free_tracked),
        cmocka_unit_test_teardown(test_malformed_json_is_400_message_format, em_test_free_tracked),
        cmocka_unit_test_teardown(test_body_that_is_not_an_object_is_400, em_test_free_tracked),
        cmocka_unit_test_teardown(test_deeply_nested_json_is_400, em_test_free_tracked),
        cmocka_unit_test_teardown(test_wrong_types_are_400_naming_the_field, em_test_free_tracked),
        cmocka_unit_test_teardown(test_bad_ids_and_names_are_400_naming_the_field,
                                  em_test_free_tracked),
        cmocka_unit_test_teardown(test_bad_group_names_are_400_naming_the_field,
                                  em_test_free_tracked),
        cmocka_unit_test_teardown(test_escaped_nul_in_a_string_is_refused_not_truncated,
                                  em_test_free_tracked),
        cmocka_unit_test_teardown(test_out_of_range_values_are_400_naming_the_field,
                                  em_test_free_tracked),
        cmocka_unit_test_teardown(test_unknown_fields_are_400, em_test_free_tracked),
        cmocka_unit_test_teardown(test_bad_query_parameters_are_400_naming_them,
                                  em_test_free_tracked),
        cmocka_unit_test_teardown(test_unknown_route_is_404, em_test_free_tracked),
        cmocka_unit_test_teardown(test_unknown_device_is_404_device_not_found,
                                  em_test_free_tracked),
        cmocka_unit_test_teardown(test_wrong_method_is_405, em_test_free_tracked),
        cmocka_unit_test_teardown(test_key_rate_limit_reaches_429_and_recovers,
                                  em_test_free_tracked),
        cmocka_unit_test_teardown(test_hostile_paths_get_400_or_404, em_test_free_tracked),
        cmocka_unit_test_teardown(test_very_long_url_and_query_are_refused, em_test_free_tracked),
        cmocka_unit_test_teardown(test_raw_control_characters_never_get_500, em_test_free_tracked),
        cmocka_unit_test_teardown(test_failed_authentications_are_limited_per_address,
                                  em_test_free_tracked),
    };
    return cmocka_run_group_tests(tests, group_setup, group_teardown);
}
