/*
 * emiot tests - test_api_server.c: the HTTPS API in-process (em_api on an
 * event loop run by a thread, a SQLite store in a temporary directory, a
 * manager that is not connected), driven with the curl, openssl and python3
 * command lines as a client would: TLS, authentication, authorisation, limits,
 * metrics, bootstrap, and JWT interoperability with PyJWT.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include <fcntl.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cjson/cJSON.h>
#include <event2/event.h>
#include <event2/thread.h>

#include "api/api_core.h"
#include "broker.h"
#include "emiot/clock.h"
#include "emiot/log.h"
#include "evloop.h"
#include "testutil.h"

#define PYTHON "/usr/bin/python3"

typedef struct world {
    char dir[256];
    char tls[400], ca[450], jwt_key[400], db[400];
    em_store_t *store;
    em_manager_t *mgr;
    struct event_base *base;
    em_api_t *api;
    pthread_t loop;
    bool loop_running;
    int port, mtls_port, metrics_port;
    char admin_key[EM_API_KEY_LEN + 1];
    int files; /* counter for unique temporary file names */
} world_t;

static world_t W;

/* ---- the log: nothing secret may reach it -------------------------------- */

static pthread_mutex_t log_lock = PTHREAD_MUTEX_INITIALIZER;
static char secret_watch[8][EM_API_KEY_LEN + 1];
static size_t nsecret_watch;
static bool secret_leaked;
static size_t log_lines;

/* The level of the last "request" line for each path of interest. */
static const char *const watched_paths[] = {"/api/v1/whoami", "/api/v1/log-level-check",
                                            "/api/v1/keys"};
static int request_level[3] = {-1, -1, -1};

static void log_sink(em_log_level_t level, const char *line, size_t len, void *ud)
{
    (void)len;
    (void)ud;
    pthread_mutex_lock(&log_lock);
    log_lines++;
    if (strstr(line, "\"msg\":\"request\"") != NULL) {
        char want[64];
        for (size_t i = 0; i < 3; i++) {
            snprintf(want, sizeof want, "\"path\":\"%s\"", watched_paths[i]);
            if (strstr(line, want) != NULL)
                request_level[i] = (int)level;
        }
    }
    for (size_t i = 0; i < nsecret_watch; i++)
        if (strstr(line, secret_watch[i]) != NULL)
            secret_leaked = true;
    pthread_mutex_unlock(&log_lock);
}

static void watch_secret(const char *s)
{
    pthread_mutex_lock(&log_lock);
    if (nsecret_watch < 8)
        snprintf(secret_watch[nsecret_watch++], sizeof secret_watch[0], "%s", s);
    pthread_mutex_unlock(&log_lock);
}

/* ---- the event loop thread -------------------------------------------------- */

static void *loop_main(void *arg)
{
    (void)arg;
    return em_test_loop_main(W.base);
}

/* Runs fn(arg) on the loop thread (the API's functions belong there). */
static void run_on_loop(void (*fn)(void *), void *arg)
{
    assert_int_equal(em_test_run_on_loop(W.base, fn, arg), 0);
}

static void get_stats(void *arg)
{
    em_api_stats(W.api, arg);
}

/* ---- files and child processes -------------------------------------------- */

static void tmp_path(char *buf, size_t size, const char *what)
{
    snprintf(buf, size, "%s/%s-%d", W.dir, what, ++W.files);
}

static void write_file(const char *path, const char *text, size_t len)
{
    int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC, 0600);
    assert_true(fd >= 0);
    assert_int_equal(write(fd, text, len), (ssize_t)len);
    close(fd);
}

static size_t read_file(const char *path, char *buf, size_t size)
{
    buf[0] = '\0';
    FILE *f = fopen(path, "r");
    if (f == NULL)
        return 0;
    size_t n = fread(buf, 1, size - 1, f);
    buf[n] = '\0';
    fclose(f);
    return n;
}

/* Runs argv with its output into buf; returns the exit status. */
static int run_capture(const char *const argv[], char *buf, size_t size)
{
    char out[512];
    tmp_path(out, sizeof out, "out");
    pid_t pid = em_test_spawn(argv, out);
    assert_true(pid > 0);
    int rc = em_test_wait(pid, 60000);
    if (rc == -1)
        em_test_stop(pid);
    read_file(out, buf, size);
    unlink(out);
    return rc;
}

typedef struct resp {
    int status; /* 0: no HTTP answer */
    int curl_exit;
    char body[65536];
    char headers[8192];
} resp_t;

static resp_t R; /* the last answer (large: not on the stack) */

/*
 * One request with curl. cred: "Bearer ..." value sent through a 0600 header
 * file (never on the command line), or NULL. body: sent as JSON, or NULL.
 * extra: more curl arguments (NULL-terminated) or NULL.
 */
static int http(const char *method, const char *url, const char *cred, const char *body,
                const char *const *extra)
{
    char bodyf[512], hdrf[512], credf[512], dataf[512], data_arg[520], cred_arg[520], out[512];
    tmp_path(bodyf, sizeof bodyf, "body");
    tmp_path(hdrf, sizeof hdrf, "hdr");
    tmp_path(credf, sizeof credf, "cred");
    tmp_path(dataf, sizeof dataf, "data");
    const char *argv[64];
    size_t n = 0;
    argv[n++] = "curl";
    argv[n++] = "-s";
    argv[n++] = "-o";
    argv[n++] = bodyf;
    argv[n++] = "-D";
    argv[n++] = hdrf;
    argv[n++] = "-w";
    argv[n++] = "%{http_code}";
    argv[n++] = "--max-time";
    argv[n++] = "20";
    argv[n++] = "--cacert";
    argv[n++] = W.ca;
    argv[n++] = "-X";
    argv[n++] = method;
    if (cred != NULL) {
        char line[4200];
        int len = snprintf(line, sizeof line, "Authorization: %s\n", cred);
        write_file(credf, line, (size_t)len);
        snprintf(cred_arg, sizeof cred_arg, "@%s", credf);
        argv[n++] = "-H";
        argv[n++] = cred_arg;
    }
    if (body != NULL) {
        write_file(dataf, body, strlen(body));
        snprintf(data_arg, sizeof data_arg, "@%s", dataf);
        argv[n++] = "-H";
        argv[n++] = "Content-Type: application/json";
        argv[n++] = "--data-binary";
        argv[n++] = data_arg;
    }
    for (size_t i = 0; extra != NULL && extra[i] != NULL && n < 60; i++)
        argv[n++] = extra[i];
    argv[n++] = url;
    argv[n] = NULL;

    tmp_path(out, sizeof out, "code");
    pid_t pid = em_test_spawn(argv, out);
    assert_true(pid > 0);
    R.curl_exit = em_test_wait(pid, 30000);
    char code[64];
    read_file(out, code, sizeof code);
    R.status = atoi(code);
    read_file(bodyf, R.body, sizeof R.body);
    read_file(hdrf, R.headers, sizeof R.headers);
    unlink(out);
    unlink(bodyf);
    unlink(hdrf);
    unlink(credf);
    unlink(dataf);
    return R.status;
}

static char *url(const char *path, char *buf, size_t size)
{
    snprintf(buf, size, "https://localhost:%d%s", W.port, path);
    return buf;
}

static int api(const char *method, const char *path, const char *key, const char *body)
{
    char u[256], cred[4200];
    if (key != NULL)
        snprintf(cred, sizeof cred, "Bearer %s", key);
    return http(method, url(path, u, sizeof u), key ? cred : NULL, body, NULL);
}

/* The answer's JSON (the caller deletes it). */
static cJSON *json(void)
{
    cJSON *j = cJSON_Parse(R.body);
    if (j == NULL)
        fprintf(stderr, "not JSON: %s\n", R.body);
    assert_non_null(j);
    return j;
}

static const char *jstr(const cJSON *o, const char *path1, const char *path2)
{
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(o, path1);
    if (path2 != NULL)
        v = cJSON_GetObjectItemCaseSensitive(v, path2);
    return cJSON_IsString(v) ? v->valuestring : NULL;
}

/* Asserts an error answer with status, errorCode and a message containing msg. */
static void assert_error(int status, const char *code, const char *msg)
{
    if (R.status != status)
        fprintf(stderr, "expected %d, got %d: %s\n", status, R.status, R.body);
    assert_int_equal(R.status, status);
    cJSON *j = json();
    assert_true(cJSON_IsFalse(cJSON_GetObjectItemCaseSensitive(j, "success")));
    assert_string_equal(jstr(j, "errorCode", NULL), code);
    if (msg != NULL) {
        const char *m = jstr(j, "message", NULL);
        assert_non_null(m);
        if (strstr(m, msg) == NULL)
            fprintf(stderr, "message \"%s\" lacks \"%s\"\n", m, msg);
        assert_non_null(strstr(m, msg));
    }
    cJSON_Delete(j);
}

static bool header_has(const char *name_value)
{
    return strcasestr(R.headers, name_value) != NULL;
}

/* Creates a key through the API as admin; returns it in key. */
static void make_key(const char *body, char key[EM_API_KEY_LEN + 1], char *key_id, size_t id_size)
{
    assert_int_equal(api("POST", "/api/v1/keys", W.admin_key, body), 201);
    cJSON *j = json();
    const char *k = jstr(j, "data", "key");
    assert_non_null(k);
    snprintf(key, EM_API_KEY_LEN + 1, "%s", k);
    if (key_id != NULL)
        snprintf(key_id, id_size, "%s", jstr(j, "data", "keyId"));
    cJSON_Delete(j);
    watch_secret(key);
}

/* ---- set-up ------------------------------------------------------------ */

static int setup(void **state)
{
    (void)state;
    /* As emiotd does: a client that hangs up early must not kill the server. */
    signal(SIGPIPE, SIG_IGN);
    em_log_set_sink(log_sink, NULL);
    em_log_set_level(EM_LOG_INFO);
    if (evthread_use_pthreads() != 0 || em_test_mkdtemp(W.dir, sizeof W.dir) != 0)
        return -1;
    snprintf(W.tls, sizeof W.tls, "%s/tls", W.dir);
    snprintf(W.ca, sizeof W.ca, "%s/ca.crt", W.tls);
    snprintf(W.jwt_key, sizeof W.jwt_key, "%s/jwt.pem", W.dir);
    snprintf(W.db, sizeof W.db, "sqlite:%s/emiot.db", W.dir);
    char script[600];
    snprintf(script, sizeof script, "%s/scripts/gen-certs.sh", EM_TEST_SOURCE_DIR);
    const char *gen[] = {"bash",     script,  W.tls,   "plug-001", "plug-002",
                         "plug-003", "alice", "carol", NULL};
    if (em_test_run(gen) != 0)
        return -1;

    em_error_t err;
    if (em_store_open(W.db, NULL, &W.store, &err) != EM_OK) {
        fprintf(stderr, "store: %s\n", err.message);
        return -1;
    }
    W.mgr = em_manager_new(NULL, &err);
    if (W.mgr == NULL)
        return -1;
    const char *ids[] = {"plug-001", "plug-002", "plug-003"};
    for (int i = 0; i < 3; i++) {
        if (em_manager_register_device(W.mgr, ids[i], NULL, EM_DEVICE_ACTUATOR, NULL, NULL, &err) !=
            EM_OK)
            return -1;
        em_store_device_t d;
        memset(&d, 0, sizeof d);
        snprintf(d.id, sizeof d.id, "%s", ids[i]);
        snprintf(d.name, sizeof d.name, "%s", ids[i]);
        d.type = EM_DEVICE_ACTUATOR;
        d.enabled = i != 2; /* plug-003 is disabled */
        d.created_at_ms = d.updated_at_ms = em_now_ms();
        if (em_store_device_insert(W.store, &d, &err) != EM_OK)
            return -1;
    }

    bool created = false;
    if (em_api_bootstrap(W.store, W.admin_key, sizeof W.admin_key, &created, &err) != EM_OK ||
        !created)
        return -1;
    watch_secret(W.admin_key);

    W.base = event_base_new();
    if (W.base == NULL)
        return -1;
    char cert[450], key[450];
    snprintf(cert, sizeof cert, "%s/server.crt", W.tls);
    snprintf(key, sizeof key, "%s/server.key", W.tls);
    em_api_options_t o;
    em_api_options_init(&o);
    o.nlisteners = 3;
    o.listeners[0] =
        (em_api_listener_t){"127.0.0.1", 0, cert, key, NULL, EM_CLIENT_AUTH_NONE, false};
    o.listeners[1] =
        (em_api_listener_t){"127.0.0.1", 0, cert, key, W.ca, EM_CLIENT_AUTH_REQUIRED, false};
    o.listeners[2] =
        (em_api_listener_t){"127.0.0.1", 0, NULL, NULL, NULL, EM_CLIENT_AUTH_NONE, true};
    o.max_body = 4096;
    o.jwt_key_file = W.jwt_key;
    o.auth_fail_per_min = 100000; /* until the test about it */
    W.api = em_api_new(W.base, &o, W.store, W.mgr, &err);
    if (W.api == NULL) {
        fprintf(stderr, "em_api_new: %s: %s\n", err.field, err.message);
        return -1;
    }
    W.port = em_api_port(W.api, 0);
    W.mtls_port = em_api_port(W.api, 1);
    W.metrics_port = em_api_port(W.api, 2);
    if (W.port == 0 || W.mtls_port == 0 || W.metrics_port == 0 || em_api_port(W.api, 3) != 0)
        return -1;
    if (pthread_create(&W.loop, NULL, loop_main, NULL) != 0)
        return -1;
    W.loop_running = true;
    return 0;
}

static int teardown(void **state)
{
    (void)state;
    if (W.loop_running) {
        event_base_loopbreak(W.base);
        pthread_join(W.loop, NULL);
    }
    em_api_free(W.api);
    if (W.base != NULL)
        event_base_free(W.base);
    em_manager_free(W.mgr);
    em_store_close(W.store);
    em_log_set_sink(NULL, NULL);
    em_test_rmtree(W.dir);
    return 0;
}

/* ---- transport ------------------------------------------------------------ */

static void test_healthz_answers_without_credentials(void **state)
{
    (void)state;
    assert_int_equal(api("GET", "/healthz", NULL, NULL), 200);
    assert_string_equal(R.body, "{\"status\":\"ok\"}");
    assert_true(header_has("Cache-Control: no-store"));
    assert_true(header_has("X-Content-Type-Options: nosniff"));
    const char *cid = strcasestr(R.headers, "X-Request-Id: ");
    assert_non_null(cid);
    cid += strlen("X-Request-Id: ");
    for (int i = 0; i < EM__API_CID_LEN; i++)
        assert_non_null(strchr("0123456789abcdef", cid[i]));
}

static void test_tls12_client_is_refused(void **state)
{
    (void)state;
    const char *extra[] = {"--tls-max", "1.2", NULL};
    char u[256];
    assert_int_equal(http("GET", url("/healthz", u, sizeof u), NULL, NULL, extra), 0);
    assert_int_not_equal(R.curl_exit, 0);
    /* TLS 1.3 itself works on the same port. */
    const char *v13[] = {"--tlsv1.3", NULL};
    assert_int_equal(http("GET", url("/healthz", u, sizeof u), NULL, NULL, v13), 200);
}

static void test_plain_http_on_the_tls_port_is_refused(void **state)
{
    (void)state;
    char u[256];
    snprintf(u, sizeof u, "http://127.0.0.1:%d/healthz", W.port);
    assert_int_equal(http("GET", u, NULL, NULL, NULL), 0);
    assert_int_not_equal(R.curl_exit, 0);
}

static void test_openssl_s_client_negotiates_a_tls13_aead_suite(void **state)
{
    (void)state;
    char connect[64], out[16384];
    snprintf(connect, sizeof connect, "127.0.0.1:%d", W.port);
    const char *argv[] = {"sh",
                          "-c",
                          "openssl s_client -connect \"$0\" -tls1_3 -CAfile \"$1\" "
                          "-servername localhost </dev/null 2>&1",
                          connect,
                          W.ca,
                          NULL};
    run_capture(argv, out, sizeof out);
    assert_non_null(strstr(out, "TLSv1.3"));
    assert_true(strstr(out, "TLS_AES_256_GCM_SHA384") != NULL ||
                strstr(out, "TLS_CHACHA20_POLY1305_SHA256") != NULL ||
                strstr(out, "TLS_AES_128_GCM_SHA256") != NULL);
    assert_non_null(strstr(out, "Verify return code: 0 (ok)"));
    /* A TLS 1.3 suite outside the three (CCM) finds no common suite. */
    const char *ccm[] = {"sh",
                         "-c",
                         "openssl s_client -connect \"$0\" -tls1_3 -ciphersuites "
                         "TLS_AES_128_CCM_SHA256 -CAfile \"$1\" </dev/null 2>&1",
                         connect,
                         W.ca,
                         NULL};
    run_capture(ccm, out, sizeof out);
    assert_null(strstr(out, "Cipher is TLS_AES_128_CCM_SHA256"));
}

/* ---- authentication ------------------------------------------------------ */

static void test_no_credentials_is_401_and_says_nothing(void **state)
{
    (void)state;
    api("GET", "/api/v1/whoami", NULL, NULL);
    assert_error(401, "authentication", "authentication required");
    /* An unknown route says the same: nothing is revealed before authentication. */
    api("GET", "/api/v1/no-such-thing", NULL, NULL);
    assert_error(401, "authentication", "authentication required");
}

static void test_bootstrap_key_works_and_is_not_logged(void **state)
{
    (void)state;
    assert_int_equal(api("GET", "/api/v1/whoami", W.admin_key, NULL), 200);
    cJSON *j = json();
    assert_string_equal(jstr(j, "data", "role"), "admin");
    assert_string_equal(jstr(j, "data", "method"), "api_key");
    assert_string_equal(jstr(j, "data", "name"), "bootstrap");
    cJSON_Delete(j);
    /* A second bootstrap does nothing: the store holds a key. */
    char again[EM_API_KEY_LEN + 1];
    bool created = true;
    assert_int_equal(em_api_bootstrap(W.store, again, sizeof again, &created, NULL), EM_OK);
    assert_false(created);
    pthread_mutex_lock(&log_lock);
    bool leaked = secret_leaked;
    size_t lines = log_lines;
    pthread_mutex_unlock(&log_lock);
    assert_true(lines > 0); /* the log was written, and the key is not in it */
    assert_false(leaked);
}

static void test_wrong_key_is_401_and_nothing_changes(void **state)
{
    (void)state;
    const char *wrong = "iot_0000000000000000000000000000000000000000deadbeef";
    api("POST", "/api/v1/users", wrong, "{\"name\":\"eve\",\"role\":\"admin\"}");
    assert_error(401, "authentication", "authentication required");
    api("GET", "/api/v1/whoami", "iot_not-even-a-key", NULL);
    assert_error(401, "authentication", NULL);
    /* Right key id, wrong secret part. */
    char forged[EM_API_KEY_LEN + 1];
    snprintf(forged, sizeof forged, "%s", W.admin_key);
    forged[EM_API_KEY_LEN - 1] = forged[EM_API_KEY_LEN - 1] == '0' ? '1' : '0';
    api("GET", "/api/v1/whoami", forged, NULL);
    assert_error(401, "authentication", NULL);
    assert_int_equal(api("GET", "/api/v1/users", W.admin_key, NULL), 200);
    assert_null(strstr(R.body, "\"eve\""));
    /* The refusals are security events. */
    em_store_event_filter_t f;
    memset(&f, 0, sizeof f);
    f.kind = EM_EVKIND_SECURITY;
    f.type = "auth_failure";
    f.min_severity = -1;
    assert_int_equal(em_store_flush(W.store, 10000, NULL), EM_OK);
    assert_int_equal(
        api("GET", "/api/v1/events?kind=security&type=auth_failure", W.admin_key, NULL), 200);
    assert_non_null(strstr(R.body, "wrong API key"));
    assert_null(strstr(R.body, forged + 4)); /* never the presented secret */
}

static void test_revoked_key_is_401(void **state)
{
    (void)state;
    char key[EM_API_KEY_LEN + 1], id[32], path[64];
    make_key("{\"name\":\"soon-revoked\",\"role\":\"viewer\"}", key, id, sizeof id);
    assert_int_equal(api("GET", "/api/v1/whoami", key, NULL), 200);
    snprintf(path, sizeof path, "/api/v1/keys/%s", id);
    assert_int_equal(api("DELETE", path, W.admin_key, NULL), 200);
    api("GET", "/api/v1/whoami", key, NULL);
    assert_error(401, "authentication", "authentication required");
    /* The list shows it revoked; a second revocation of an unknown key is 404. */
    assert_int_equal(api("GET", "/api/v1/keys", W.admin_key, NULL), 200);
    assert_non_null(strstr(R.body, id));
    assert_null(strstr(R.body, key));
    api("DELETE", "/api/v1/keys/k_000000000000", W.admin_key, NULL);
    assert_error(404, "not_found", NULL);
}

static void test_tokens_minted_from_a_key_die_with_it(void **state)
{
    (void)state;
    char key[EM_API_KEY_LEN + 1], id[32], path[64], tok[4096];
    make_key("{\"name\":\"token-parent\",\"role\":\"operator\"}", key, id, sizeof id);
    assert_int_equal(api("POST", "/api/v1/tokens", key, "{\"ttl\":600}"), 201);
    cJSON *j = json();
    snprintf(tok, sizeof tok, "%s", jstr(j, "data", "token"));
    cJSON_Delete(j);
    assert_int_equal(api("GET", "/api/v1/whoami", tok, NULL), 200);
    j = json();
    assert_string_equal(jstr(j, "data", "method"), "jwt");
    assert_string_equal(jstr(j, "data", "role"), "operator");
    assert_string_equal(jstr(j, "data", "keyId"), id);
    cJSON_Delete(j);
    snprintf(path, sizeof path, "/api/v1/keys/%s", id);
    assert_int_equal(api("DELETE", path, W.admin_key, NULL), 200);
    api("GET", "/api/v1/whoami", tok, NULL);
    assert_error(401, "authentication", NULL);
}

static void test_token_ttl_out_of_range_is_400(void **state)
{
    (void)state;
    api("POST", "/api/v1/tokens", W.admin_key, "{\"ttl\":10}");
    assert_error(400, "validation", "ttl: must be an integer from 60 to 86400");
    api("POST", "/api/v1/tokens", W.admin_key, "{\"ttl\":\"600\"}");
    assert_error(400, "validation", "ttl:");
}

/* Signs claims with the API's key file using PyJWT; token into tok. */
static void pyjwt_sign(const char *aud, int iat_off, int exp_off, char *tok, size_t size)
{
    static const char prog[] =
        "import sys, time, jwt\n"
        "from cryptography.hazmat.primitives.serialization import load_pem_private_key\n"
        "key = load_pem_private_key(open(sys.argv[1], 'rb').read(), None)\n"
        "now = int(time.time())\n"
        "c = {'iss': 'emiotd', 'aud': sys.argv[2], 'sub': 'py-client', 'role': 'viewer',\n"
        "     'iat': now + int(sys.argv[3]), 'exp': now + int(sys.argv[4])}\n"
        "sys.stdout.write(jwt.encode(c, key, algorithm='ES256'))\n";
    char py[512], iat[16], exp[16];
    tmp_path(py, sizeof py, "sign.py");
    write_file(py, prog, sizeof prog - 1);
    snprintf(iat, sizeof iat, "%d", iat_off);
    snprintf(exp, sizeof exp, "%d", exp_off);
    const char *argv[] = {PYTHON, py, W.jwt_key, aud, iat, exp, NULL};
    assert_int_equal(run_capture(argv, tok, size), 0);
    assert_non_null(strchr(tok, '.'));
}

static void test_pyjwt_token_signed_with_the_key_file_is_accepted(void **state)
{
    (void)state;
    char tok[4096];
    pyjwt_sign("emiot-api", 0, 300, tok, sizeof tok);
    assert_int_equal(api("GET", "/api/v1/whoami", tok, NULL), 200);
    cJSON *j = json();
    assert_string_equal(jstr(j, "data", "method"), "jwt");
    assert_string_equal(jstr(j, "data", "name"), "py-client");
    assert_string_equal(jstr(j, "data", "role"), "viewer");
    cJSON_Delete(j);
}

static void test_expired_jwt_is_401(void **state)
{
    (void)state;
    char tok[4096];
    pyjwt_sign("emiot-api", -600, -10, tok, sizeof tok);
    api("GET", "/api/v1/whoami", tok, NULL);
    assert_error(401, "authentication", "authentication required");
}

static void test_wrong_audience_jwt_is_401(void **state)
{
    (void)state;
    char tok[4096];
    pyjwt_sign("someone-else", 0, 300, tok, sizeof tok);
    api("GET", "/api/v1/whoami", tok, NULL);
    assert_error(401, "authentication", "authentication required");
}

static void test_issued_token_verifies_with_pyjwt(void **state)
{
    (void)state;
    assert_int_equal(api("POST", "/api/v1/tokens", W.admin_key, NULL), 201);
    cJSON *j = json();
    const char *tok = jstr(j, "data", "token");
    assert_non_null(tok);
    assert_non_null(jstr(j, "data", "expiresAt"));
    char tokf[512], py[512], out[4096];
    tmp_path(tokf, sizeof tokf, "token");
    write_file(tokf, tok, strlen(tok));
    cJSON_Delete(j);
    static const char prog[] =
        "import sys, jwt\n"
        "from cryptography.hazmat.primitives.serialization import load_pem_private_key\n"
        "pub = load_pem_private_key(open(sys.argv[1], 'rb').read(), None).public_key()\n"
        "c = jwt.decode(open(sys.argv[2]).read().strip(), pub, algorithms=['ES256'],\n"
        "               audience='emiot-api', issuer='emiotd')\n"
        "assert jwt.get_unverified_header(open(sys.argv[2]).read().strip())['alg'] == 'ES256'\n"
        "sys.stdout.write('%s %s %d' % (c['sub'], c['role'], c['exp'] - c['iat']))\n";
    tmp_path(py, sizeof py, "verify.py");
    write_file(py, prog, sizeof prog - 1);
    const char *argv[] = {PYTHON, py, W.jwt_key, tokf, NULL};
    int rc = run_capture(argv, out, sizeof out);
    if (rc != 0)
        fprintf(stderr, "%s\n", out);
    assert_int_equal(rc, 0);
    assert_string_equal(out, "bootstrap admin 3600");
}

/* ---- authorisation --------------------------------------------------------- */

static void test_viewer_creating_a_key_is_403_and_nothing_changes(void **state)
{
    (void)state;
    char key[EM_API_KEY_LEN + 1];
    make_key("{\"name\":\"watcher\",\"role\":\"viewer\"}", key, NULL, 0);
    assert_int_equal(api("GET", "/api/v1/keys", W.admin_key, NULL), 200);
    cJSON *before = json();
    int n = cJSON_GetArraySize(cJSON_GetObjectItem(before, "data"));
    cJSON_Delete(before);
    api("POST", "/api/v1/keys", key, "{\"name\":\"escalate\",\"role\":\"admin\"}");
    assert_error(403, "permission_denied", "forbidden");
    assert_int_equal(api("GET", "/api/v1/keys", W.admin_key, NULL), 200);
    cJSON *after = json();
    assert_int_equal(cJSON_GetArraySize(cJSON_GetObjectItem(after, "data")), n);
    cJSON_Delete(after);
    assert_null(strstr(R.body, "escalate"));
    /* Reading is what a viewer may do. */
    assert_int_equal(api("GET", "/api/v1/whoami", key, NULL), 200);
}

static void test_key_role_above_the_creator_is_refused(void **state)
{
    (void)state;
    api("POST", "/api/v1/keys", W.admin_key, "{\"name\":\"d\",\"role\":\"device\"}");
    assert_error(400, "validation", "deviceId:");
    api("POST", "/api/v1/keys", W.admin_key,
        "{\"name\":\"d\",\"role\":\"device\",\"deviceId\":\"nope-404\"}");
    assert_error(400, "validation", "deviceId: must name an existing device");
    api("POST", "/api/v1/keys", W.admin_key, "{\"name\":\"d\",\"role\":\"root\"}");
    assert_error(400, "validation", "role:");
}

static void test_device_key_reaches_only_its_own_device(void **state)
{
    (void)state;
    char key[EM_API_KEY_LEN + 1];
    make_key("{\"name\":\"plug1\",\"role\":\"device\",\"deviceId\":\"plug-001\"}", key, NULL, 0);
    assert_int_equal(api("GET", "/api/v1/whoami", key, NULL), 200);
    cJSON *j = json();
    assert_string_equal(jstr(j, "data", "deviceId"), "plug-001");
    cJSON_Delete(j);
    api("GET", "/api/v1/devices/plug-002", key, NULL);
    assert_error(403, "permission_denied", "forbidden");
    api("GET", "/api/v1/devices", key, NULL);
    assert_error(403, "permission_denied", "forbidden");
    api("GET", "/metrics", key, NULL);
    assert_error(403, "permission_denied", "forbidden");
    assert_int_equal(api("GET", "/api/v1/devices/plug-001", key, NULL), 200);
    /* The key of a disabled device does not authenticate. */
    char key3[EM_API_KEY_LEN + 1];
    make_key("{\"name\":\"plug3\",\"role\":\"device\",\"deviceId\":\"plug-003\"}", key3, NULL, 0);
    api("GET", "/api/v1/whoami", key3, NULL);
    assert_error(401, "authentication", NULL);
}

static void test_unknown_route_404_and_wrong_method_405(void **state)
{
    (void)state;
    api("GET", "/api/v1/nothing-here", W.admin_key, NULL);
    assert_error(404, "not_found", NULL);
    api("PUT", "/api/v1/whoami", W.admin_key, NULL);
    assert_error(405, "protocol", NULL);
    assert_true(header_has("Allow: GET"));
    api("GET", "/api/v1/keys/k_0123%2F", W.admin_key, NULL);
    assert_int_equal(R.status, 405); /* keys/{id} exists only as DELETE */
    api("DELETE", "/api/v1/keys/a%2Fb", W.admin_key, NULL);
    assert_error(400, "validation", "path:");
}

/* The level of the request line logged for watched path i, waiting up to
 * 2 s for it (the server's thread logs it around the answer); -1 if none. */
static int request_line_level(size_t i)
{
    int level = -1;
    for (int k = 0; k < 200 && level < 0; k++) {
        pthread_mutex_lock(&log_lock);
        level = request_level[i];
        pthread_mutex_unlock(&log_lock);
        if (level < 0)
            usleep(10000);
    }
    return level;
}

static void forget_request_lines(void)
{
    pthread_mutex_lock(&log_lock);
    for (size_t i = 0; i < 3; i++)
        request_level[i] = -1;
    pthread_mutex_unlock(&log_lock);
}

static void test_reads_are_logged_at_debug_refusals_and_writes_at_info(void **state)
{
    (void)state;
    em_log_set_level(EM_LOG_DEBUG);
    forget_request_lines();
    assert_int_equal(api("GET", "/api/v1/whoami", W.admin_key, NULL), 200);
    assert_int_equal(api("GET", "/api/v1/log-level-check", W.admin_key, NULL), 404);
    assert_int_equal(
        api("POST", "/api/v1/keys", W.admin_key, "{\"name\":\"log-level\",\"role\":\"viewer\"}"),
        201);
    assert_int_equal(request_line_level(0), EM_LOG_DEBUG);
    assert_int_equal(request_line_level(1), EM_LOG_INFO);
    assert_int_equal(request_line_level(2), EM_LOG_INFO);

    /* At info (the default), an answered read writes no line at all. */
    em_log_set_level(EM_LOG_INFO);
    forget_request_lines();
    assert_int_equal(api("GET", "/api/v1/whoami", W.admin_key, NULL), 200);
    assert_int_equal(api("GET", "/api/v1/log-level-check", W.admin_key, NULL), 404);
    assert_int_equal(request_line_level(1), EM_LOG_INFO); /* logged after the read */
    pthread_mutex_lock(&log_lock);
    int read_level = request_level[0];
    pthread_mutex_unlock(&log_lock);
    assert_int_equal(read_level, -1);
}

/* ---- bodies ------------------------------------------------------------------ */

static void test_oversized_body_is_413(void **state)
{
    (void)state;
    char *big = malloc(8192);
    assert_non_null(big);
    memset(big, ' ', 8191);
    memcpy(big, "{\"name\":\"", 9);
    big[8190] = '}';
    big[8191] = '\0';
    api("POST", "/api/v1/users", W.admin_key, big);
    free(big);
    assert_error(413, "limit_reached", "body: too large");
}

static void test_malformed_json_is_400(void **state)
{
    (void)state;
    api("POST", "/api/v1/users", W.admin_key, "{\"name\":\"bob\",");
    assert_error(400, "message_format", "body: invalid JSON");
    api("POST", "/api/v1/users", W.admin_key, "[1,2]");
    assert_error(400, "validation", "body: must be a JSON object");
    api("POST", "/api/v1/users", W.admin_key, "{\"name\":\"b\xff\"}");
    assert_error(400, "message_format", "body:");
}

static void test_wrong_type_is_400_with_the_field(void **state)
{
    (void)state;
    api("POST", "/api/v1/users", W.admin_key, "{\"name\":42,\"role\":\"viewer\"}");
    assert_error(400, "validation", "name: must be a string");
    api("POST", "/api/v1/keys", W.admin_key,
        "{\"name\":\"x\",\"role\":\"viewer\",\"ratePerMinute\":\"lots\"}");
    assert_error(400, "validation", "ratePerMinute: must be an integer");
    api("POST", "/api/v1/keys", W.admin_key,
        "{\"name\":\"x\",\"role\":\"viewer\",\"expiresIn\":5}");
    assert_error(400, "validation", "expiresIn:");
}

/* A key may allow 100,000 requests a second (above W5's 20,000), no more. */
static void test_key_rate_up_to_six_million_a_minute(void **state)
{
    (void)state;
    assert_int_equal(api("POST", "/api/v1/keys", W.admin_key,
                         "{\"name\":\"fast\",\"role\":\"viewer\",\"ratePerMinute\":6000000}"),
                     201);
    api("POST", "/api/v1/keys", W.admin_key,
        "{\"name\":\"faster\",\"role\":\"viewer\",\"ratePerMinute\":6000001}");
    assert_error(400, "validation", "ratePerMinute: must be an integer from 1 to 6000000");
}

static void test_unknown_field_is_400_with_the_field(void **state)
{
    (void)state;
    api("POST", "/api/v1/users", W.admin_key, "{\"name\":\"bob\",\"role\":\"viewer\",\"x\":1}");
    assert_error(400, "validation", "x: unknown field");
    api("POST", "/api/v1/users", W.admin_key,
        "{\"name\":\"bob\",\"role\":\"viewer\",\"name\":\"eve\"}");
    assert_error(400, "validation", "name: must appear only once");
    api("GET", "/api/v1/users?limit=5", W.admin_key, NULL);
    assert_error(400, "validation", "limit: unknown parameter");
    /* And the right body is taken. */
    assert_int_equal(
        api("POST", "/api/v1/users", W.admin_key, "{\"name\":\"bob\",\"role\":\"viewer\"}"), 201);
    api("POST", "/api/v1/users", W.admin_key, "{\"name\":\"bob\",\"role\":\"viewer\"}");
    assert_error(409, "already_exists", NULL);
    assert_int_equal(api("DELETE", "/api/v1/users/bob", W.admin_key, NULL), 200);
    api("DELETE", "/api/v1/users/bob", W.admin_key, NULL);
    assert_error(404, "not_found", NULL);
}

/* ---- rate limits -------------------------------------------------------------- */

static void test_rate_limit_429_with_retry_after_then_recovers(void **state)
{
    (void)state;
    char key[EM_API_KEY_LEN + 1];
    /* 30 a minute: a token every 2 s. */
    make_key("{\"name\":\"slow\",\"role\":\"viewer\",\"ratePerMinute\":30}", key, NULL, 0);
    char u[256], cred[128], codes[4096];
    snprintf(u, sizeof u, "https://localhost:%d/api/v1/whoami#[1-45]", W.port);
    snprintf(cred, sizeof cred, "Authorization: Bearer %s\n", key);
    char credf[512], credarg[520];
    tmp_path(credf, sizeof credf, "cred");
    write_file(credf, cred, strlen(cred));
    snprintf(credarg, sizeof credarg, "@%s", credf);
    /* 45 requests on one keep-alive connection: past the 30 (and the few that
     * refill while they run, however slow the machine), they are refused. */
    const char *argv[] = {"curl",      "-s", "--cacert",       W.ca, "-H", credarg, "-o",
                          "/dev/null", "-w", "%{http_code}\n", u,    NULL};
    assert_int_equal(run_capture(argv, codes, sizeof codes), 0);
    unlink(credf);
    assert_non_null(strstr(codes, "200"));
    assert_non_null(strstr(codes, "429"));
    api("GET", "/api/v1/whoami", key, NULL);
    assert_error(429, "rate_limit_exceeded", NULL);
    const char *ra = strcasestr(R.headers, "Retry-After: ");
    assert_non_null(ra);
    int secs = atoi(ra + strlen("Retry-After: "));
    assert_true(secs >= 1 && secs <= 2);
    /* After Retry-After, it recovers. */
    em_test_sleep_ms(secs * 1000 + 300);
    assert_int_equal(api("GET", "/api/v1/whoami", key, NULL), 200);
    em_api_stats_t st;
    run_on_loop(get_stats, &st);
    assert_true(st.rate_limited >= 2);
}

/* ---- client certificates ------------------------------------------------------ */

static int mtls(const char *path, const char *cn, const char *cred)
{
    char u[256], cert[512], key[512], bearer[4200];
    snprintf(u, sizeof u, "https://localhost:%d%s", W.mtls_port, path);
    snprintf(cert, sizeof cert, "%s/devices/%s.crt", W.tls, cn);
    snprintf(key, sizeof key, "%s/devices/%s.key", W.tls, cn);
    const char *extra[] = {"--cert", cert, "--key", key, NULL};
    if (cred != NULL)
        snprintf(bearer, sizeof bearer, "Bearer %s", cred);
    return http("GET", u, cred ? bearer : NULL, NULL, cn ? extra : NULL);
}

static void test_mtls_listener_refuses_a_client_without_certificate(void **state)
{
    (void)state;
    assert_int_equal(mtls("/healthz", NULL, NULL), 0);
    assert_int_not_equal(R.curl_exit, 0);
    /* Even with a valid key: the handshake needs the certificate. */
    assert_int_equal(mtls("/api/v1/whoami", NULL, W.admin_key), 0);
    /* A certificate from another CA is refused too. */
    char u[256], cert[512], key[512];
    snprintf(u, sizeof u, "https://localhost:%d/healthz", W.mtls_port);
    snprintf(cert, sizeof cert, "%s/other-client.crt", W.tls);
    snprintf(key, sizeof key, "%s/other-client.key", W.tls);
    const char *extra[] = {"--cert", cert, "--key", key, NULL};
    assert_int_equal(http("GET", u, NULL, NULL, extra), 0);
}

static void test_mtls_user_certificate_maps_to_its_role(void **state)
{
    (void)state;
    assert_int_equal(
        api("POST", "/api/v1/users", W.admin_key, "{\"name\":\"alice\",\"role\":\"operator\"}"),
        201);
    assert_int_equal(mtls("/api/v1/whoami", "alice", NULL), 200);
    cJSON *j = json();
    assert_string_equal(jstr(j, "data", "method"), "certificate");
    assert_string_equal(jstr(j, "data", "role"), "operator");
    assert_string_equal(jstr(j, "data", "name"), "alice");
    cJSON_Delete(j);
    /* An operator may not manage users. */
    mtls("/api/v1/users", "alice", NULL);
    assert_error(403, "permission_denied", NULL);
    /* A certificate whose CN is nobody: 401; with a key as well, the key counts. */
    mtls("/api/v1/whoami", "carol", NULL);
    assert_error(401, "authentication", NULL);
    assert_int_equal(mtls("/api/v1/whoami", "carol", W.admin_key), 200);
    /* A token minted with the certificate works without it... */
    char u[256], cert[512], key[512], tok[4096];
    snprintf(u, sizeof u, "https://localhost:%d/api/v1/tokens", W.mtls_port);
    snprintf(cert, sizeof cert, "%s/devices/alice.crt", W.tls);
    snprintf(key, sizeof key, "%s/devices/alice.key", W.tls);
    const char *extra[] = {"--cert", cert, "--key", key, NULL};
    assert_int_equal(http("POST", u, NULL, NULL, extra), 201);
    j = json();
    snprintf(tok, sizeof tok, "%s", jstr(j, "data", "token"));
    cJSON_Delete(j);
    assert_int_equal(api("GET", "/api/v1/whoami", tok, NULL), 200);
    /* ...until the user is deleted: then neither the certificate nor the token works. */
    assert_int_equal(api("DELETE", "/api/v1/users/alice", W.admin_key, NULL), 200);
    mtls("/api/v1/whoami", "alice", NULL);
    assert_error(401, "authentication", NULL);
    api("GET", "/api/v1/whoami", tok, NULL);
    assert_error(401, "authentication", NULL);
}

static void test_mtls_device_certificate_reaches_only_its_own_device(void **state)
{
    (void)state;
    assert_int_equal(mtls("/api/v1/whoami", "plug-001", NULL), 200);
    cJSON *j = json();
    assert_string_equal(jstr(j, "data", "role"), "device");
    assert_string_equal(jstr(j, "data", "deviceId"), "plug-001");
    cJSON_Delete(j);
    assert_int_equal(mtls("/api/v1/devices/plug-001", "plug-001", NULL), 200);
    mtls("/api/v1/devices/plug-002", "plug-001", NULL);
    assert_error(403, "permission_denied", "forbidden");
    /* A device disabled in the store is refused. */
    mtls("/api/v1/whoami", "plug-003", NULL);
    assert_error(401, "authentication", NULL);
}

/* ---- metrics -------------------------------------------------------------------- */

static void test_metrics_needs_authentication_on_the_api_listener(void **state)
{
    (void)state;
    api("GET", "/metrics", NULL, NULL);
    assert_error(401, "authentication", NULL);
    assert_int_equal(api("GET", "/metrics", W.admin_key, NULL), 200);
    assert_true(header_has("Content-Type: text/plain; version=0.0.4"));
    assert_non_null(strstr(R.body, "# TYPE emiot_api_requests_total counter\n"));
    assert_non_null(strstr(R.body, "emiot_api_responses_total{class=\"2xx\"} "));
    assert_non_null(strstr(R.body, "emiot_devices_registered 3\n"));
    assert_non_null(strstr(R.body, "# TYPE emiot_store_queue_depth gauge\n"));
    assert_non_null(strstr(R.body, "emiot_uptime_seconds "));
}

static void test_metrics_loopback_listener_needs_no_credentials(void **state)
{
    (void)state;
    char u[256];
    snprintf(u, sizeof u, "http://127.0.0.1:%d/metrics", W.metrics_port);
    assert_int_equal(http("GET", u, NULL, NULL, NULL), 200);
    assert_non_null(strstr(R.body, "# HELP emiot_api_tls_handshakes_total "));
    snprintf(u, sizeof u, "http://127.0.0.1:%d/healthz", W.metrics_port);
    assert_int_equal(http("GET", u, NULL, NULL, NULL), 200);
    /* Nothing else is served there, whatever the credentials. */
    char cred[128];
    snprintf(cred, sizeof cred, "Bearer %s", W.admin_key);
    snprintf(u, sizeof u, "http://127.0.0.1:%d/api/v1/whoami", W.metrics_port);
    http("GET", u, cred, NULL, NULL);
    assert_error(404, "not_found", NULL);
}

/* ---- configuration -------------------------------------------------------------- */

static void test_bad_configurations_are_refused(void **state)
{
    (void)state;
    struct event_base *base = event_base_new();
    assert_non_null(base);
    char cert[450], key[450], missing[450];
    snprintf(cert, sizeof cert, "%s/server.crt", W.tls);
    snprintf(key, sizeof key, "%s/server.key", W.tls);
    snprintf(missing, sizeof missing, "%s/missing.crt", W.tls);
    em_api_options_t o;
    em_error_t err;
    struct {
        em_api_listener_t l;
        em_err_t want;
    } cases[] = {
        {{"0.0.0.0", 0, NULL, NULL, NULL, EM_CLIENT_AUTH_NONE, true}, EM_ERR_CONFIGURATION},
        {{"127.0.0.1", 0, NULL, NULL, NULL, EM_CLIENT_AUTH_NONE, false}, EM_ERR_CONFIGURATION},
        {{"127.0.0.1", 0, cert, key, NULL, EM_CLIENT_AUTH_OPTIONAL, false}, EM_ERR_CONFIGURATION},
        {{"127.0.0.1", 0, missing, key, NULL, EM_CLIENT_AUTH_NONE, false}, EM_ERR_TLS},
        {{"127.0.0.1", 0, cert, missing, NULL, EM_CLIENT_AUTH_NONE, false}, EM_ERR_TLS},
        {{"127.0.0.1", 0, cert, key, missing, EM_CLIENT_AUTH_REQUIRED, false}, EM_ERR_TLS},
        {{"127.0.0.1", (uint16_t)W.port, cert, key, NULL, EM_CLIENT_AUTH_NONE, false}, EM_ERR_IO},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        em_api_options_init(&o);
        o.nlisteners = 1;
        o.listeners[0] = cases[i].l;
        o.jwt_key_file = W.jwt_key;
        em_error_clear(&err);
        assert_null(em_api_new(base, &o, W.store, W.mgr, &err));
        if (err.code != cases[i].want)
            fprintf(stderr, "case %zu: %s\n", i, err.message);
        assert_int_equal(err.code, cases[i].want);
    }
    em_api_options_init(&o);
    assert_null(em_api_new(base, &o, W.store, W.mgr, &err)); /* no listener */
    assert_int_equal(err.code, EM_ERR_CONFIGURATION);
    o.nlisteners = 1;
    o.listeners[0] =
        (em_api_listener_t){"127.0.0.1", 0, cert, key, NULL, EM_CLIENT_AUTH_NONE, false};
    o.max_body = EM_API_BODY_MAX + 1;
    assert_null(em_api_new(base, &o, W.store, W.mgr, &err));
    assert_int_equal(err.code, EM_ERR_CONFIGURATION);
    event_base_free(base);
}

/* ---- last: what changes the shared server ----------------------------------- */

typedef struct reload_arg {
    em_api_options_t o;
    em_err_t rc;
    em_error_t err;
} reload_arg_t;

static void do_reload(void *arg)
{
    reload_arg_t *a = arg;
    a->rc = em_api_reload(W.api, &a->o, &a->err);
}

static void test_reload_swaps_the_certificate_for_new_connections(void **state)
{
    (void)state;
    static reload_arg_t a;
    char cert[450], key[450], wcert[450], wkey[450];
    snprintf(cert, sizeof cert, "%s/server.crt", W.tls);
    snprintf(key, sizeof key, "%s/server.key", W.tls);
    snprintf(wcert, sizeof wcert, "%s/wrong-host.crt", W.tls);
    snprintf(wkey, sizeof wkey, "%s/wrong-host.key", W.tls);
    em_api_options_init(&a.o);
    a.o.nlisteners = 3;
    a.o.listeners[0] =
        (em_api_listener_t){"127.0.0.1", 0, wcert, wkey, NULL, EM_CLIENT_AUTH_NONE, false};
    a.o.listeners[1] =
        (em_api_listener_t){"127.0.0.1", 0, cert, key, W.ca, EM_CLIENT_AUTH_REQUIRED, false};
    a.o.listeners[2] =
        (em_api_listener_t){"127.0.0.1", 0, NULL, NULL, NULL, EM_CLIENT_AUTH_NONE, true};
    a.o.max_body = 4096;
    a.o.auth_fail_per_min = 100000;
    run_on_loop(do_reload, &a);
    assert_int_equal(a.rc, EM_OK);
    /* The new certificate names another host: curl refuses it for localhost. */
    assert_int_equal(api("GET", "/healthz", NULL, NULL), 0);
    assert_int_not_equal(R.curl_exit, 0);
    /* A reload with an unreadable key keeps what works. */
    a.o.listeners[0].key_file = "/nonexistent/key.pem";
    run_on_loop(do_reload, &a);
    assert_int_equal(a.rc, EM_ERR_TLS);
    a.o.listeners[0].cert_file = cert;
    a.o.listeners[0].key_file = key;
    run_on_loop(do_reload, &a);
    assert_int_equal(a.rc, EM_OK);
    assert_int_equal(api("GET", "/healthz", NULL, NULL), 200);
}

static void test_auth_failures_from_one_address_are_429(void **state)
{
    (void)state;
    static reload_arg_t a;
    char cert[450], key[450];
    snprintf(cert, sizeof cert, "%s/server.crt", W.tls);
    snprintf(key, sizeof key, "%s/server.key", W.tls);
    em_api_options_init(&a.o);
    a.o.nlisteners = 3;
    a.o.listeners[0] = (em_api_listener_t){"127.0.0.1", (uint16_t)W.port,    cert, key,
                                           NULL,        EM_CLIENT_AUTH_NONE, false};
    a.o.listeners[1] = (em_api_listener_t){"127.0.0.1", (uint16_t)W.mtls_port,   cert, key,
                                           W.ca,        EM_CLIENT_AUTH_REQUIRED, false};
    a.o.listeners[2] = (em_api_listener_t){"127.0.0.1", (uint16_t)W.metrics_port, NULL, NULL,
                                           NULL,        EM_CLIENT_AUTH_NONE,      true};
    a.o.max_body = 4096;
    a.o.auth_fail_per_min = 3;
    run_on_loop(do_reload, &a);
    assert_int_equal(a.rc, EM_OK);
    for (int i = 0; i < 3; i++) {
        api("GET", "/api/v1/whoami", "iot_0000000000000000000000000000000000000000000000ff", NULL);
        assert_error(401, "authentication", NULL);
    }
    /* Now even the right key is refused from this address, with Retry-After. */
    api("GET", "/api/v1/whoami", W.admin_key, NULL);
    assert_error(429, "rate_limit_exceeded", NULL);
    assert_true(header_has("Retry-After: "));
    /* A reload that moves a listener is refused and changes nothing. */
    a.o.listeners[0].port = (uint16_t)(W.port == 65535 ? 1 : W.port + 1);
    run_on_loop(do_reload, &a);
    assert_int_equal(a.rc, EM_ERR_CONFIGURATION);
}

static void do_stop(void *arg)
{
    (void)arg;
    em_api_stop_accepting(W.api);
}

static void test_stop_accepting_drains(void **state)
{
    (void)state;
    /* A client keeps its connection open across the stop. */
    static const char prog[] =
        "import http.client, os, ssl, sys, time\n"
        "ctx = ssl.create_default_context(cafile=sys.argv[1])\n"
        "c = http.client.HTTPSConnection('localhost', int(sys.argv[2]), context=ctx)\n"
        "c.request('GET', '/healthz'); r = c.getresponse(); r.read()\n"
        "print(r.status, flush=True)\n"
        "for i in range(400):\n"
        "    if os.path.exists(sys.argv[3]): break\n"
        "    time.sleep(0.05)\n"
        "c.request('GET', '/healthz'); r = c.getresponse()\n"
        "print(r.status, r.read().decode(), flush=True)\n";
    char py[512], flag[512], out[512], port[16], text[1024];
    tmp_path(py, sizeof py, "drain.py");
    tmp_path(flag, sizeof flag, "stopped");
    tmp_path(out, sizeof out, "drain.out");
    write_file(py, prog, sizeof prog - 1);
    snprintf(port, sizeof port, "%d", W.port);
    const char *argv[] = {PYTHON, py, W.ca, port, flag, NULL};
    pid_t pid = em_test_spawn(argv, out);
    assert_true(pid > 0);
    assert_int_equal(em_test_wait_lines(out, 1, 30000), 0);
    run_on_loop(do_stop, NULL);
    write_file(flag, "", 0);
    assert_int_equal(em_test_wait(pid, 30000), 0);
    read_file(out, text, sizeof text);
    assert_string_equal(text, "200\n503 {\"status\":\"stopping\"}\n");
    /* New connections are not accepted any more. */
    assert_int_equal(api("GET", "/healthz", NULL, NULL), 0);
    assert_int_not_equal(R.curl_exit, 0);
    assert_int_equal(em_api_active_requests(W.api), 0);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_healthz_answers_without_credentials),
        cmocka_unit_test(test_tls12_client_is_refused),
        cmocka_unit_test(test_plain_http_on_the_tls_port_is_refused),
        cmocka_unit_test(test_openssl_s_client_negotiates_a_tls13_aead_suite),
        cmocka_unit_test(test_no_credentials_is_401_and_says_nothing),
        cmocka_unit_test(test_bootstrap_key_works_and_is_not_logged),
        cmocka_unit_test(test_wrong_key_is_401_and_nothing_changes),
        cmocka_unit_test(test_revoked_key_is_401),
        cmocka_unit_test(test_tokens_minted_from_a_key_die_with_it),
        cmocka_unit_test(test_token_ttl_out_of_range_is_400),
        cmocka_unit_test(test_pyjwt_token_signed_with_the_key_file_is_accepted),
        cmocka_unit_test(test_expired_jwt_is_401),
        cmocka_unit_test(test_wrong_audience_jwt_is_401),
        cmocka_unit_test(test_issued_token_verifies_with_pyjwt),
        cmocka_unit_test(test_viewer_creating_a_key_is_403_and_nothing_changes),
        cmocka_unit_test(test_key_role_above_the_creator_is_refused),
        cmocka_unit_test(test_device_key_reaches_only_its_own_device),
        cmocka_unit_test(test_unknown_route_404_and_wrong_method_405),
        cmocka_unit_test(test_reads_are_logged_at_debug_refusals_and_writes_at_info),
        cmocka_unit_test(test_oversized_body_is_413),
        cmocka_unit_test(test_malformed_json_is_400),
        cmocka_unit_test(test_wrong_type_is_400_with_the_field),
        cmocka_unit_test(test_key_rate_up_to_six_million_a_minute),
        cmocka_unit_test(test_unknown_field_is_400_with_the_field),
        cmocka_unit_test(test_rate_limit_429_with_retry_after_then_recovers),
        cmocka_unit_test(test_mtls_listener_refuses_a_client_without_certificate),
        cmocka_unit_test(test_mtls_user_certificate_maps_to_its_role),
        cmocka_unit_test(test_mtls_device_certificate_reaches_only_its_own_device),
        cmocka_unit_test(test_metrics_needs_authentication_on_the_api_listener),
        cmocka_unit_test(test_metrics_loopback_listener_needs_no_credentials),
        cmocka_unit_test(test_bad_configurations_are_refused),
        cmocka_unit_test(test_reload_swaps_the_certificate_for_new_connections),
        cmocka_unit_test(test_auth_failures_from_one_address_are_429),
        cmocka_unit_test(test_stop_accepting_drains),
    };
    return cmocka_run_group_tests(tests, setup, teardown);
}
