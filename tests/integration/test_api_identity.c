/*
 * emiot tests - test_api_identity.c: device identity through the HTTPS API,
 * in one process: em_api on an event loop run by a thread, a SQLite store in
 * a temporary directory, a manager that is not connected, and a real CA
 * directory made with em_pki_init. Driven as a device would drive it, with
 * the curl, openssl and python3 (PyJWT) command lines: enrollment tokens,
 * enrollment with a CSR made by `openssl req`, challenge-response with a
 * signature made by `openssl dgst -sign`, and client certificates checked
 * against the CA and its CRL.
 *
 * Each refusal is checked for its answer, for the security event it leaves
 * (naming the device, never the token) and for what it must not change: no
 * certificate issued by the CA, none registered in the store.
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
#include <time.h>
#include <unistd.h>

#include <cjson/cJSON.h>
#include <event2/event.h>
#include <event2/thread.h>
#include <openssl/pem.h>
#include <openssl/x509.h>

#include "broker.h"
#include "cli.h"
#include "emiot/api.h"
#include "emiot/clock.h"
#include "emiot/keystore.h"
#include "emiot/log.h"
#include "emiot/manager.h"
#include "emiot/pki.h"
#include "emiot/store.h"
#include "evloop.h"
#include "testutil.h"

#define PYTHON     "/usr/bin/python3"
#define PASSPHRASE "identity test passphrase"
#define PATHSZ     512

typedef struct world {
    char dir[256];
    char pki_dir[PATHSZ], ca[PATHSZ], jwt_key[PATHSZ], db[PATHSZ];
    char server_crt[PATHSZ], server_key[PATHSZ];
    em_keystore_secret_t *secret;
    em_pki_t *pki;
    em_store_t *store;
    em_manager_t *mgr;
    struct event_base *base;
    em_api_t *api;  /* with the CA: enrollment, challenge-response, client certificates */
    em_api_t *api2; /* without a CA (enrollment 503), two nonces at most */
    em_api_options_t opts;
    pthread_t loop;
    bool loop_running;
    int port, port2;
    char admin_key[EM_API_KEY_LEN + 1];
    int files;
} world_t;

static world_t W;

/* ---- the log: no secret may reach it ---------------------------------- */

static pthread_mutex_t log_lock = PTHREAD_MUTEX_INITIALIZER;
static char secret_watch[64][64];
static size_t nsecret_watch;
static bool secret_leaked;

static void log_sink(em_log_level_t level, const char *line, size_t len, void *ud)
{
    (void)level;
    (void)len;
    (void)ud;
    pthread_mutex_lock(&log_lock);
    for (size_t i = 0; i < nsecret_watch; i++)
        if (strstr(line, secret_watch[i]) != NULL)
            secret_leaked = true;
    pthread_mutex_unlock(&log_lock);
}

static void watch_secret(const char *s)
{
    pthread_mutex_lock(&log_lock);
    if (nsecret_watch < 64)
        snprintf(secret_watch[nsecret_watch++], sizeof secret_watch[0], "%s", s);
    pthread_mutex_unlock(&log_lock);
}

/* ---- the event loop thread ---------------------------------------------- */

static void *loop_main(void *arg)
{
    (void)arg;
    return em_test_loop_main(W.base);
}

/* Runs fn(arg) on the loop thread: the API and the CA it uses belong there. */
static void run_on_loop(void (*fn)(void *), void *arg)
{
    assert_int_equal(em_test_run_on_loop(W.base, fn, arg), 0);
}

/* ---- files and child processes ------------------------------------------ */

static void tmp_path(char *buf, size_t size, const char *what)
{
    snprintf(buf, size, "%s/%s-%d", W.dir, what, ++W.files);
}

static void write_file(const char *path, const void *data, size_t len)
{
    int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC, 0600);
    assert_true(fd >= 0);
    assert_int_equal(write(fd, data, len), (ssize_t)len);
    close(fd);
}

/* Runs argv with its output (stdout and stderr) into buf; returns the exit
 * status. */
static int run_capture(const char *const argv[], char *buf, size_t size)
{
    char out[PATHSZ];
    tmp_path(out, sizeof out, "out");
    return em_test_run_capture(argv, out, buf, size, 60000);
}

static int run_quiet(const char *const argv[])
{
    char buf[4096];
    int rc = run_capture(argv, buf, sizeof buf);
    if (rc != 0)
        fprintf(stderr, "%s exited %d: %s\n", argv[0], rc, buf);
    return rc;
}

typedef struct resp {
    int status; /* 0: no HTTP answer */
    int curl_exit;
    char body[65536];
    char headers[8192];
} resp_t;

static resp_t R; /* the last answer */

/*
 * One request with curl to port. cred: an API key or JWT sent as a bearer
 * credential through a 0600 header file, or NULL. body: JSON or NULL.
 * cert/key: a client certificate, or NULL.
 */
static int http_to(int port, const char *method, const char *path, const char *cred,
                   const char *body, const char *cert, const char *key)
{
    char bodyf[PATHSZ], hdrf[PATHSZ], credf[PATHSZ], dataf[PATHSZ], out[PATHSZ];
    char data_arg[PATHSZ + 2], cred_arg[PATHSZ + 2], url[256];
    tmp_path(bodyf, sizeof bodyf, "body");
    tmp_path(hdrf, sizeof hdrf, "hdr");
    tmp_path(credf, sizeof credf, "cred");
    tmp_path(dataf, sizeof dataf, "data");
    snprintf(url, sizeof url, "https://localhost:%d%s", port, path);
    const char *argv[40];
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
        int len = snprintf(line, sizeof line, "Authorization: Bearer %s\n", cred);
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
    if (cert != NULL) {
        argv[n++] = "--cert";
        argv[n++] = cert;
        argv[n++] = "--key";
        argv[n++] = key;
    }
    argv[n++] = url;
    argv[n] = NULL;
    tmp_path(out, sizeof out, "code");
    pid_t pid = em_test_spawn(argv, out);
    assert_true(pid > 0);
    R.curl_exit = em_test_wait(pid, 30000);
    char code[64];
    em_test_read_file(out, code, sizeof code);
    R.status = (int)strtol(code, NULL, 10);
    em_test_read_file(bodyf, R.body, sizeof R.body);
    em_test_read_file(hdrf, R.headers, sizeof R.headers);
    unlink(out);
    unlink(bodyf);
    unlink(hdrf);
    unlink(credf);
    unlink(dataf);
    return R.status;
}

static int api(const char *method, const char *path, const char *cred, const char *body)
{
    return http_to(W.port, method, path, cred, body, NULL, NULL);
}

static cJSON *json(void)
{
    cJSON *j = cJSON_Parse(R.body);
    if (j == NULL)
        fprintf(stderr, "not JSON: %s\n", R.body);
    assert_non_null(j);
    return j;
}

static const char *jstr(const cJSON *o, const char *k1, const char *k2)
{
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(o, k1);
    if (k2 != NULL)
        v = cJSON_GetObjectItemCaseSensitive(v, k2);
    return cJSON_IsString(v) ? v->valuestring : NULL;
}

static void expect_status(int status)
{
    if (R.status != status)
        fprintf(stderr, "expected %d, got %d: %s\n", status, R.status, R.body);
    assert_int_equal(R.status, status);
}

/* An error answer: status, errorCode and a message containing msg. */
static void assert_error(int status, const char *code, const char *msg)
{
    expect_status(status);
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

/* ---- the CA, the store, devices ------------------------------------------ */

typedef struct pki_count_arg {
    size_t n;
} pki_count_arg_t;

static int count_cert(const em_pki_cert_t *c, void *ud)
{
    (void)c;
    ((pki_count_arg_t *)ud)->n++;
    return 0;
}

static void pki_count_on_loop(void *arg)
{
    assert_int_equal(em_pki_list(W.pki, count_cert, arg, NULL), EM_OK);
}

/* Certificates the CA has issued. */
static size_t pki_count(void)
{
    pki_count_arg_t a = {0};
    run_on_loop(pki_count_on_loop, &a);
    return a.n;
}

static int count_dev_cert(const em_store_device_cert_t *c, void *ud)
{
    (void)c;
    (*(size_t *)ud)++;
    return 0;
}

/* Certificates registered for a device in the store. */
static size_t store_cert_count(const char *id)
{
    size_t n = 0;
    em_err_t rc = em_store_device_cert_list(W.store, id, count_dev_cert, &n, NULL);
    assert_true(rc == EM_OK || rc == EM_ERR_DEVICE_NOT_FOUND);
    return n;
}

typedef struct ev_count {
    const char *needle; /* must not appear in any event (a token, a nonce) */
    size_t n;
    int max_sev;
    bool leaked;
} ev_count_t;

static int count_event(const em_store_event_t *ev, void *ud)
{
    ev_count_t *c = ud;
    c->n++;
    if ((int)ev->severity > c->max_sev)
        c->max_sev = (int)ev->severity;
    if (c->needle != NULL && (strstr(ev->message, c->needle) != NULL ||
                              (ev->details_json && strstr(ev->details_json, c->needle))))
        c->leaked = true;
    return 0;
}

/* Security events of type about device (NULL: any). */
static ev_count_t security_events(const char *type, const char *device, const char *needle)
{
    assert_int_equal(em_store_flush(W.store, 10000, NULL), EM_OK);
    em_store_event_filter_t f;
    memset(&f, 0, sizeof f);
    f.kind = EM_EVKIND_SECURITY;
    f.type = type;
    f.device_id = device;
    f.min_severity = -1;
    f.range.limit = 1000;
    ev_count_t c = {needle, 0, -1, false};
    assert_int_equal(em_store_event_list(W.store, &f, count_event, &c, NULL), EM_OK);
    return c;
}

static void add_device(const char *id, bool enabled)
{
    em_error_t err;
    if (enabled)
        assert_int_equal(
            em_manager_register_device(W.mgr, id, NULL, EM_DEVICE_SENSOR, NULL, NULL, &err), EM_OK);
    em_store_device_t d;
    memset(&d, 0, sizeof d);
    snprintf(d.id, sizeof d.id, "%s", id);
    snprintf(d.name, sizeof d.name, "%s", id);
    d.type = EM_DEVICE_SENSOR;
    d.enabled = enabled;
    d.created_at_ms = d.updated_at_ms = em_now_ms();
    assert_int_equal(em_store_device_insert(W.store, &d, &err), EM_OK);
}

/* ---- device side: keys, CSRs, tokens, signatures -------------------------- */

typedef struct dev {
    char id[64];
    char key[PATHSZ], csr[PATHSZ], crt[PATHSZ];
    char serial[64];
} devkey_t;

/* A key (alg: "ec", "rsa:1024", "rsa:2048") and a CSR with CN=cn, made by
 * `openssl req`. */
static void make_csr(devkey_t *d, const char *cn, const char *alg)
{
    tmp_path(d->key, sizeof d->key, "dev.key");
    tmp_path(d->csr, sizeof d->csr, "dev.csr");
    tmp_path(d->crt, sizeof d->crt, "dev.crt");
    char subj[128];
    snprintf(subj, sizeof subj, "/CN=%s", cn);
    if (strcmp(alg, "ec") == 0) {
        const char *argv[] = {
            "openssl", "req",     "-new", "-newkey", "ec",   "-pkeyopt", "ec_paramgen_curve:P-256",
            "-nodes",  "-keyout", d->key, "-out",    d->csr, "-subj",    subj,
            NULL};
        assert_int_equal(run_quiet(argv), 0);
    } else {
        const char *argv[] = {"openssl", "req",  "-new", "-newkey", alg,  "-nodes", "-keyout",
                              d->key,    "-out", d->csr, "-subj",   subj, NULL};
        assert_int_equal(run_quiet(argv), 0);
    }
}

static char *file_text(const char *path)
{
    static char buf[65536];
    assert_true(em_test_read_file(path, buf, sizeof buf) > 0);
    return buf;
}

/* Creates an enrollment token for id (ttl 0: the default) as admin. */
static void new_token(const char *id, int ttl, char tok[64])
{
    char path[128], body[64];
    snprintf(path, sizeof path, "/api/v1/devices/%s/enrollment-tokens", id);
    snprintf(body, sizeof body, "{\"ttl\":%d}", ttl);
    api("POST", path, W.admin_key, ttl > 0 ? body : NULL);
    expect_status(201);
    cJSON *j = json();
    const char *t = jstr(j, "data", "token");
    assert_non_null(t);
    assert_int_equal(strlen(t), 52);
    assert_memory_equal(t, "enr_", 4);
    snprintf(tok, 64, "%s", t);
    assert_string_equal(jstr(j, "data", "deviceId"), id);
    assert_non_null(jstr(j, "data", "tokenId"));
    assert_memory_equal(jstr(j, "data", "tokenId"), "e_", 2);
    assert_memory_equal(jstr(j, "data", "tokenId") + 2, t + 4, 12);
    assert_non_null(jstr(j, "data", "expiresAt"));
    cJSON_Delete(j);
    watch_secret(tok);
}

/* The body of POST /api/v1/enroll (the CSR from a file, or csr_text). */
static char *enroll_body(const char *id, const char *tok, const char *csr_text)
{
    cJSON *o = cJSON_CreateObject();
    cJSON_AddStringToObject(o, "deviceId", id);
    cJSON_AddStringToObject(o, "token", tok);
    cJSON_AddStringToObject(o, "csr", csr_text);
    char *s = cJSON_PrintUnformatted(o);
    cJSON_Delete(o);
    return s;
}

static int post_enroll(int port, const char *id, const char *tok, const char *csr_text)
{
    char *b = enroll_body(id, tok, csr_text);
    int st = http_to(port, "POST", "/api/v1/enroll", NULL, b, NULL, NULL);
    free(b);
    return st;
}

/* Enrolls d (a new EC key) as device id: the certificate goes to d->crt. */
static void enroll_ok(devkey_t *d, const char *id)
{
    snprintf(d->id, sizeof d->id, "%s", id);
    make_csr(d, id, "ec");
    char tok[64];
    new_token(id, 0, tok);
    post_enroll(W.port, id, tok, file_text(d->csr));
    expect_status(201);
    cJSON *j = json();
    const char *crt = jstr(j, "data", "certificate");
    assert_non_null(crt);
    write_file(d->crt, crt, strlen(crt));
    assert_non_null(strstr(jstr(j, "data", "caCertificate"), "BEGIN CERTIFICATE"));
    const char *serial = jstr(j, "data", "serial");
    assert_non_null(serial);
    assert_int_equal(strlen(serial), 32);
    snprintf(d->serial, sizeof d->serial, "%s", serial);
    assert_non_null(jstr(j, "data", "notAfter"));
    cJSON_Delete(j);
}

static void b64url(const unsigned char *in, size_t len, char *out, size_t size)
{
    static const char tab[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    size_t o = 0;
    uint32_t acc = 0;
    int bits = 0;
    for (size_t i = 0; i < len; i++) {
        acc = (acc << 8) | in[i];
        bits += 8;
        while (bits >= 6) {
            bits -= 6;
            assert_true(o + 1 < size);
            out[o++] = tab[(acc >> bits) & 63];
        }
        acc &= (1u << bits) - 1;
    }
    if (bits > 0) {
        assert_true(o + 1 < size);
        out[o++] = tab[(acc << (6 - bits)) & 63];
    }
    out[o] = '\0';
}

/* POST /api/v1/auth/challenge for id on port: the nonce into nonce. */
static void get_nonce(int port, const char *id, char nonce[64])
{
    char body[128];
    snprintf(body, sizeof body, "{\"deviceId\":\"%s\"}", id);
    http_to(port, "POST", "/api/v1/auth/challenge", NULL, body, NULL, NULL);
    expect_status(200);
    cJSON *j = json();
    const char *n = jstr(j, "data", "nonce");
    assert_non_null(n);
    assert_int_equal(strlen(n), 43);
    assert_null(strchr(n, '='));
    assert_non_null(jstr(j, "data", "expiresAt"));
    snprintf(nonce, 64, "%s", n);
    cJSON_Delete(j);
    watch_secret(nonce);
}

/* The signature of "emiot-device-auth-v1\n<id>\n<nonce>" by key, made by
 * `openssl dgst -sha256 -sign`, as base64url without padding. */
static void sign(const char *key, const char *id, const char *nonce, char *sig, size_t size)
{
    char msgf[PATHSZ], sigf[PATHSZ], msg[256];
    tmp_path(msgf, sizeof msgf, "msg");
    tmp_path(sigf, sizeof sigf, "sig");
    int n = snprintf(msg, sizeof msg, "emiot-device-auth-v1\n%s\n%s", id, nonce);
    write_file(msgf, msg, (size_t)n);
    const char *argv[] = {"openssl", "dgst", "-sha256", "-sign", key, "-out", sigf, msgf, NULL};
    assert_int_equal(run_quiet(argv), 0);
    unsigned char raw[2048];
    FILE *f = fopen(sigf, "rb");
    assert_non_null(f);
    size_t len = fread(raw, 1, sizeof raw, f);
    fclose(f);
    assert_true(len > 0);
    b64url(raw, len, sig, size);
}

/* POST /api/v1/auth/device-token; cert_file (may be NULL) is presented. */
static int post_device_token(int port, const char *id, const char *nonce, const char *sig,
                             const char *cert_file)
{
    cJSON *o = cJSON_CreateObject();
    cJSON_AddStringToObject(o, "deviceId", id);
    cJSON_AddStringToObject(o, "nonce", nonce);
    cJSON_AddStringToObject(o, "signature", sig);
    if (cert_file != NULL)
        cJSON_AddStringToObject(o, "certificate", file_text(cert_file));
    char *b = cJSON_PrintUnformatted(o);
    cJSON_Delete(o);
    int st = http_to(port, "POST", "/api/v1/auth/device-token", NULL, b, NULL, NULL);
    free(b);
    return st;
}

/* The whole challenge-response for id with key; the JWT into tok on 200. */
static int device_login(const char *id, const char *key, const char *cert_file, char *tok,
                        size_t size)
{
    char nonce[64], sig[1400];
    get_nonce(W.port, id, nonce);
    sign(key, id, nonce, sig, sizeof sig);
    int st = post_device_token(W.port, id, nonce, sig, cert_file);
    if (st == 200 && tok != NULL) {
        cJSON *j = json();
        assert_string_equal(jstr(j, "data", "tokenType"), "Bearer");
        assert_non_null(jstr(j, "data", "expiresAt"));
        snprintf(tok, size, "%s", jstr(j, "data", "token"));
        cJSON_Delete(j);
    }
    return st;
}

typedef struct revoke_arg {
    const char *serial;
    em_err_t rc;
} revoke_arg_t;

static void revoke_on_loop(void *arg)
{
    revoke_arg_t *a = arg;
    a->rc = em_pki_revoke(W.pki, a->serial, EM_CRL_KEY_COMPROMISE, NULL);
}

static void revoke_serial(const char *serial)
{
    revoke_arg_t a = {serial, EM_ERR_INTERNAL};
    run_on_loop(revoke_on_loop, &a);
    assert_int_equal(a.rc, EM_OK);
    /* The API looks at the CRL at most once a second. */
    em_test_sleep_ms(1100);
}

typedef struct issue_arg {
    const char *cn;
    em_cert_profile_t profile;
    int64_t not_before_ms, not_after_ms;
    const char *key_path, *crt_path;
    em_err_t rc;
} issue_arg_t;

static void issue_on_loop(void *arg)
{
    issue_arg_t *a = arg;
    em_pki_issue_options_t io;
    memset(&io, 0, sizeof io);
    io.profile = a->profile;
    io.common_name = a->cn;
    io.not_before_ms = a->not_before_ms;
    io.not_after_ms = a->not_after_ms;
    char *key = NULL, *crt = NULL;
    em_error_t err;
    a->rc = em_pki_issue_new_key(W.pki, &io, &key, &crt, NULL, &err);
    if (a->rc != EM_OK) {
        fprintf(stderr, "issue: %s\n", err.message);
        return;
    }
    write_file(a->key_path, key, strlen(key));
    write_file(a->crt_path, crt, strlen(crt));
    em_keystore_data_free((unsigned char *)key, strlen(key));
    free(crt);
}

/* A key and certificate issued by the CA (not through enrollment). */
static void issue(devkey_t *d, const char *cn, em_cert_profile_t profile, int64_t nb, int64_t na)
{
    snprintf(d->id, sizeof d->id, "%s", cn);
    tmp_path(d->key, sizeof d->key, "iss.key");
    tmp_path(d->crt, sizeof d->crt, "iss.crt");
    issue_arg_t a = {cn, profile, nb, na, d->key, d->crt, EM_ERR_INTERNAL};
    run_on_loop(issue_on_loop, &a);
    assert_int_equal(a.rc, EM_OK);
}

/* A key and a device certificate from another CA, made with openssl. */
static void foreign_cert(devkey_t *d, const char *cn)
{
    char cakey[PATHSZ], cacrt[PATHSZ], subj[128];
    tmp_path(cakey, sizeof cakey, "other-ca.key");
    tmp_path(cacrt, sizeof cacrt, "other-ca.crt");
    const char *ca_argv[] = {
        "openssl", "req",     "-x509", "-newkey", "ec",  "-pkeyopt", "ec_paramgen_curve:P-256",
        "-nodes",  "-keyout", cakey,   "-out",    cacrt, "-subj",    "/CN=other CA",
        "-days",   "30",      NULL};
    assert_int_equal(run_quiet(ca_argv), 0);
    snprintf(d->id, sizeof d->id, "%s", cn);
    make_csr(d, cn, "ec");
    char ext[PATHSZ];
    tmp_path(ext, sizeof ext, "ext");
    static const char exts[] = "keyUsage = critical, digitalSignature\n"
                               "extendedKeyUsage = clientAuth\n";
    write_file(ext, exts, sizeof exts - 1);
    snprintf(subj, sizeof subj, "/CN=%s", cn);
    const char *argv[] = {
        "openssl",         "x509", "-req", "-in",   d->csr, "-CA",      cacrt, "-CAkey", cakey,
        "-CAcreateserial", "-out", d->crt, "-days", "30",   "-extfile", ext,   NULL};
    assert_int_equal(run_quiet(argv), 0);
}

/* ---- set-up ------------------------------------------------------------------ */

typedef struct reload_arg {
    em_api_options_t *o;
    em_err_t rc;
} reload_arg_t;

static void reload_on_loop(void *arg)
{
    reload_arg_t *a = arg;
    em_error_t err;
    a->rc = em_api_reload(W.api, a->o, &err);
    if (a->rc != EM_OK)
        fprintf(stderr, "reload: %s\n", err.message);
}

/* Reloads the API with W.opts. */
static void reload(void)
{
    reload_arg_t a = {&W.opts, EM_ERR_INTERNAL};
    run_on_loop(reload_on_loop, &a);
    assert_int_equal(a.rc, EM_OK);
}

static int make_server_cert(void)
{
    em_pki_issue_options_t io;
    memset(&io, 0, sizeof io);
    const char *dns[] = {"localhost"};
    const char *ips[] = {"127.0.0.1"};
    io.profile = EM_CERT_SERVER;
    io.common_name = "localhost";
    io.dns_names = dns;
    io.ndns = 1;
    io.ip_addresses = ips;
    io.nips = 1;
    char *key = NULL, *crt = NULL;
    em_error_t err;
    if (em_pki_issue_new_key(W.pki, &io, &key, &crt, NULL, &err) != EM_OK) {
        fprintf(stderr, "server certificate: %s\n", err.message);
        return -1;
    }
    snprintf(W.server_key, sizeof W.server_key, "%s/server.key", W.dir);
    snprintf(W.server_crt, sizeof W.server_crt, "%s/server.crt", W.dir);
    write_file(W.server_key, key, strlen(key));
    write_file(W.server_crt, crt, strlen(crt));
    em_keystore_data_free((unsigned char *)key, strlen(key));
    free(crt);
    return 0;
}

static int setup(void **state)
{
    (void)state;
    signal(SIGPIPE, SIG_IGN);
    em_log_set_sink(log_sink, NULL);
    em_log_set_level(EM_LOG_DEBUG);
    if (evthread_use_pthreads() != 0 || em_test_mkdtemp(W.dir, sizeof W.dir) != 0)
        return -1;
    snprintf(W.pki_dir, sizeof W.pki_dir, "%s/ca", W.dir);
    snprintf(W.jwt_key, sizeof W.jwt_key, "%s/jwt.pem", W.dir);
    snprintf(W.db, sizeof W.db, "sqlite:%s/emiot.db", W.dir);

    em_error_t err;
    if (em_keystore_secret_passphrase(PASSPHRASE, strlen(PASSPHRASE), &W.secret, &err) != EM_OK ||
        em_keystore_secret_set_cost(W.secret, 14) != EM_OK)
        return -1;
    em_pki_init_options_t io;
    em_pki_init_options_init(&io);
    io.common_name = "identity test CA";
    io.secret = W.secret;
    if (em_pki_init(W.pki_dir, &io, &err) != EM_OK ||
        em_pki_open(W.pki_dir, W.secret, NULL, &W.pki, &err) != EM_OK) {
        fprintf(stderr, "pki: %s\n", err.message);
        return -1;
    }
    snprintf(W.ca, sizeof W.ca, "%s", em_pki_ca_file(W.pki));
    if (make_server_cert() != 0)
        return -1;

    if (em_store_open(W.db, NULL, &W.store, &err) != EM_OK) {
        fprintf(stderr, "store: %s\n", err.message);
        return -1;
    }
    W.mgr = em_manager_new(NULL, &err);
    if (W.mgr == NULL)
        return -1;
    bool created = false;
    if (em_api_bootstrap(W.store, W.admin_key, sizeof W.admin_key, &created, &err) != EM_OK ||
        !created)
        return -1;
    watch_secret(W.admin_key);

    W.base = event_base_new();
    if (W.base == NULL)
        return -1;
    em_api_options_t *o = &W.opts;
    em_api_options_init(o);
    o->nlisteners = 1;
    o->listeners[0] = (em_api_listener_t){
        "127.0.0.1", 0, W.server_crt, W.server_key, W.ca, EM_CLIENT_AUTH_OPTIONAL, false};
    o->jwt_key_file = W.jwt_key;
    o->auth_fail_per_min = 100000; /* until the test about it */
    o->pki = W.pki;
    W.api = em_api_new(W.base, o, W.store, W.mgr, &err);
    if (W.api == NULL) {
        fprintf(stderr, "em_api_new: %s: %s\n", err.field, err.message);
        return -1;
    }
    W.port = em_api_port(W.api, 0);

    em_api_options_t o2;
    em_api_options_init(&o2);
    o2.nlisteners = 1;
    o2.listeners[0] = (em_api_listener_t){
        "127.0.0.1", 0, W.server_crt, W.server_key, NULL, EM_CLIENT_AUTH_NONE, false};
    o2.jwt_key_file = W.jwt_key;
    o2.auth_fail_per_min = 100000;
    o2.device_ca_file = W.ca;
    o2.nonces_max = 2;
    W.api2 = em_api_new(W.base, &o2, W.store, W.mgr, &err);
    if (W.api2 == NULL) {
        fprintf(stderr, "em_api_new (2): %s: %s\n", err.field, err.message);
        return -1;
    }
    W.port2 = em_api_port(W.api2, 0);
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
    em_api_free(W.api2);
    if (W.base != NULL)
        event_base_free(W.base);
    em_manager_free(W.mgr);
    em_store_close(W.store);
    em_pki_free(W.pki);
    em_keystore_secret_free(W.secret);
    em_log_set_sink(NULL, NULL);
    assert_false(secret_leaked);
    em_test_rmtree(W.dir);
    return 0;
}

/* ---- enrollment tokens --------------------------------------------------------- */

static void test_enroll_token_is_shown_once_and_listed_without_secret(void **state)
{
    (void)state;
    add_device("tok-dev-1", true);
    char tok[64];
    new_token("tok-dev-1", 0, tok);
    api("GET", "/api/v1/devices/tok-dev-1/enrollment-tokens", W.admin_key, NULL);
    expect_status(200);
    assert_null(strstr(R.body, tok));
    assert_null(strstr(R.body, tok + 4));
    cJSON *j = json();
    cJSON *arr = cJSON_GetObjectItemCaseSensitive(j, "data");
    assert_int_equal(cJSON_GetArraySize(arr), 1);
    cJSON *t = cJSON_GetArrayItem(arr, 0);
    assert_string_equal(jstr(t, "state", NULL), "unused");
    assert_string_equal(jstr(t, "deviceId", NULL), "tok-dev-1");
    assert_non_null(jstr(t, "owner", NULL));
    assert_true(cJSON_IsNull(cJSON_GetObjectItemCaseSensitive(t, "usedAt")));
    cJSON_Delete(j);
}

static void test_enroll_token_for_unknown_or_disabled_device_is_refused(void **state)
{
    (void)state;
    add_device("tok-dev-off", false);
    api("POST", "/api/v1/devices/tok-nobody/enrollment-tokens", W.admin_key, NULL);
    assert_error(404, "device_not_found", NULL);
    api("POST", "/api/v1/devices/tok-dev-off/enrollment-tokens", W.admin_key, NULL);
    assert_error(409, "invalid_state", "device disabled");
    api("POST", "/api/v1/devices/tok-dev-off/enrollment-tokens", W.admin_key, "{\"ttl\":99999999}");
    assert_error(400, "validation", "ttl:");
    api("GET", "/api/v1/devices/tok-nobody/enrollment-tokens", W.admin_key, NULL);
    assert_error(404, "device_not_found", NULL);
}

static void test_enroll_token_needs_operator(void **state)
{
    (void)state;
    add_device("tok-dev-2", true);
    char viewer[EM_API_KEY_LEN + 1];
    api("POST", "/api/v1/keys", W.admin_key, "{\"name\":\"v\",\"role\":\"viewer\"}");
    expect_status(201);
    cJSON *j = json();
    snprintf(viewer, sizeof viewer, "%s", jstr(j, "data", "key"));
    cJSON_Delete(j);
    watch_secret(viewer);
    api("POST", "/api/v1/devices/tok-dev-2/enrollment-tokens", viewer, NULL);
    assert_error(403, "permission_denied", NULL);
    api("POST", "/api/v1/devices/tok-dev-2/enrollment-tokens", NULL, NULL);
    assert_error(401, "authentication", NULL);
}

/* ---- enrollment ------------------------------------------------------------------ */

static void test_enroll_issues_a_certificate_openssl_verifies(void **state)
{
    (void)state;
    add_device("enr-ok-1", true);
    size_t before = pki_count();
    devkey_t d;
    enroll_ok(&d, "enr-ok-1");
    assert_int_equal(pki_count(), before + 1);
    char out[4096];
    const char *argv[] = {"openssl", "verify", "-CAfile", W.ca, d.crt, NULL};
    assert_int_equal(run_capture(argv, out, sizeof out), 0);
    assert_non_null(strstr(out, "OK"));
    /* CN = the device id, clientAuth. */
    const char *argv2[] = {"openssl",          "x509", "-in", d.crt, "-noout", "-subject", "-ext",
                           "extendedKeyUsage", NULL};
    assert_int_equal(run_capture(argv2, out, sizeof out), 0);
    assert_non_null(strstr(out, "CN = enr-ok-1"));
    assert_non_null(strstr(out, "TLS Web Client Authentication"));
    assert_int_equal(store_cert_count("enr-ok-1"), 1);
    api("GET", "/api/v1/devices/enr-ok-1/certificates", W.admin_key, NULL);
    expect_status(200);
    cJSON *j = json();
    cJSON *c = cJSON_GetArrayItem(cJSON_GetObjectItemCaseSensitive(j, "data"), 0);
    assert_non_null(c);
    assert_string_equal(jstr(c, "serial", NULL), d.serial);
    assert_string_equal(jstr(c, "state", NULL), "valid");
    cJSON_Delete(j);
    /* The token is now used. */
    api("GET", "/api/v1/devices/enr-ok-1/enrollment-tokens", W.admin_key, NULL);
    assert_non_null(strstr(R.body, "\"state\":\"used\""));
}

/* Every refusal: the status, one more enroll_refused event about the device
 * (without the token), nothing issued, nothing registered. */
typedef struct refusal {
    size_t events, issued, registered;
} refusal_t;

static refusal_t before_refusal(const char *id)
{
    refusal_t b = {security_events("enroll_refused", id, NULL).n, pki_count(),
                   store_cert_count(id)};
    return b;
}

static void after_refusal(const refusal_t *b, const char *id, const char *tok, int min_sev)
{
    ev_count_t e = security_events("enroll_refused", id, tok);
    assert_int_equal(e.n, b->events + 1);
    assert_false(e.leaked);
    assert_true(e.max_sev >= min_sev);
    assert_int_equal(pki_count(), b->issued);
    assert_int_equal(store_cert_count(id), b->registered);
}

static void test_enroll_reused_token_is_401_with_a_high_event(void **state)
{
    (void)state;
    add_device("enr-reuse", true);
    devkey_t d;
    make_csr(&d, "enr-reuse", "ec");
    char tok[64];
    new_token("enr-reuse", 0, tok);
    post_enroll(W.port, "enr-reuse", tok, file_text(d.csr));
    expect_status(201);
    refusal_t b = before_refusal("enr-reuse");
    post_enroll(W.port, "enr-reuse", tok, file_text(d.csr));
    assert_error(401, "authentication", NULL);
    after_refusal(&b, "enr-reuse", tok, EM_SEV_HIGH);
}

static void test_enroll_expired_token_is_401(void **state)
{
    (void)state;
    add_device("enr-expired", true);
    devkey_t d;
    make_csr(&d, "enr-expired", "ec");
    char tok[64];
    new_token("enr-expired", 1, tok);
    em_test_sleep_ms(2100);
    refusal_t b = before_refusal("enr-expired");
    post_enroll(W.port, "enr-expired", tok, file_text(d.csr));
    assert_error(401, "authentication", NULL);
    after_refusal(&b, "enr-expired", tok, EM_SEV_MEDIUM);
}

static void test_enroll_token_of_device_a_used_for_b_is_401_and_burnt(void **state)
{
    (void)state;
    add_device("enr-a", true);
    add_device("enr-b", true);
    devkey_t d;
    make_csr(&d, "enr-b", "ec");
    char tok[64];
    new_token("enr-a", 0, tok);
    refusal_t b = before_refusal("enr-b");
    post_enroll(W.port, "enr-b", tok, file_text(d.csr));
    assert_error(401, "authentication", NULL);
    after_refusal(&b, "enr-b", tok, EM_SEV_MEDIUM);
    /* Any presentation burns it: A cannot use it now either. */
    devkey_t a;
    make_csr(&a, "enr-a", "ec");
    post_enroll(W.port, "enr-a", tok, file_text(a.csr));
    assert_error(401, "authentication", NULL);
    assert_int_equal(store_cert_count("enr-a"), 0);
}

static void test_enroll_csr_cn_mismatch_is_400(void **state)
{
    (void)state;
    add_device("enr-cn", true);
    devkey_t d;
    make_csr(&d, "enr-someone-else", "ec");
    char tok[64];
    new_token("enr-cn", 0, tok);
    refusal_t b = before_refusal("enr-cn");
    post_enroll(W.port, "enr-cn", tok, file_text(d.csr));
    assert_error(400, "validation", "csr: CN must be the device id");
    after_refusal(&b, "enr-cn", tok, EM_SEV_MEDIUM);
}

static void test_enroll_weak_rsa1024_key_is_400(void **state)
{
    (void)state;
    add_device("enr-weak", true);
    devkey_t d;
    make_csr(&d, "enr-weak", "rsa:1024");
    char tok[64];
    new_token("enr-weak", 0, tok);
    refusal_t b = before_refusal("enr-weak");
    post_enroll(W.port, "enr-weak", tok, file_text(d.csr));
    assert_error(400, "validation", "csr: ");
    after_refusal(&b, "enr-weak", tok, EM_SEV_MEDIUM);
}

/* The CSR's DER with the last byte of its signature flipped, as PEM. */
static char *broken_csr(const char *csr_file)
{
    BIO *in = BIO_new_file(csr_file, "r");
    assert_non_null(in);
    X509_REQ *req = PEM_read_bio_X509_REQ(in, NULL, NULL, NULL);
    BIO_free(in);
    assert_non_null(req);
    unsigned char *der = NULL;
    int len = i2d_X509_REQ(req, &der);
    X509_REQ_free(req);
    assert_true(len > 10);
    der[len - 1] ^= 0x01;
    BIO *out = BIO_new(BIO_s_mem());
    assert_true(PEM_write_bio(out, "CERTIFICATE REQUEST", "", der, len) > 0);
    OPENSSL_free(der);
    char *p = NULL;
    long n = BIO_get_mem_data(out, &p);
    char *s = malloc((size_t)n + 1);
    memcpy(s, p, (size_t)n);
    s[n] = '\0';
    BIO_free(out);
    return s;
}

static void test_enroll_csr_with_a_broken_signature_is_400(void **state)
{
    (void)state;
    add_device("enr-badsig", true);
    devkey_t d;
    make_csr(&d, "enr-badsig", "ec");
    char *bad = broken_csr(d.csr);
    char tok[64];
    new_token("enr-badsig", 0, tok);
    refusal_t b = before_refusal("enr-badsig");
    post_enroll(W.port, "enr-badsig", tok, bad);
    free(bad);
    assert_error(400, "validation", "csr: signature does not verify");
    after_refusal(&b, "enr-badsig", tok, EM_SEV_MEDIUM);
}

static void test_enroll_garbage_csr_is_400_message_format(void **state)
{
    (void)state;
    add_device("enr-garbage", true);
    char tok[64];
    new_token("enr-garbage", 0, tok);
    refusal_t b = before_refusal("enr-garbage");
    post_enroll(W.port, "enr-garbage", tok, "-----BEGIN CERTIFICATE REQUEST-----\nnope\n");
    assert_error(400, "message_format", "csr:");
    after_refusal(&b, "enr-garbage", tok, EM_SEV_MEDIUM);
}

static void test_enroll_disabled_device_is_403(void **state)
{
    (void)state;
    add_device("enr-off", true);
    devkey_t d;
    make_csr(&d, "enr-off", "ec");
    char tok[64];
    new_token("enr-off", 0, tok);
    /* Disabled after the token was made. */
    api("PATCH", "/api/v1/devices/enr-off", W.admin_key, "{\"enabled\":false}");
    expect_status(200);
    refusal_t b = before_refusal("enr-off");
    post_enroll(W.port, "enr-off", tok, file_text(d.csr));
    assert_error(403, "permission_denied", NULL);
    after_refusal(&b, "enr-off", tok, EM_SEV_MEDIUM);
}

static void test_enroll_unknown_and_malformed_tokens_are_401(void **state)
{
    (void)state;
    add_device("enr-unknown", true);
    devkey_t d;
    make_csr(&d, "enr-unknown", "ec");
    const char *unknown = "enr_000000000000000000000000000000000000000000000000";
    refusal_t b = before_refusal("enr-unknown");
    post_enroll(W.port, "enr-unknown", unknown, file_text(d.csr));
    assert_error(401, "authentication", NULL);
    after_refusal(&b, "enr-unknown", unknown, EM_SEV_MEDIUM);
    b = before_refusal("enr-unknown");
    post_enroll(W.port, "enr-unknown", "enr_XYZ", file_text(d.csr));
    assert_error(401, "authentication", NULL);
    after_refusal(&b, "enr-unknown", NULL, EM_SEV_MEDIUM);
}

static void test_enroll_bad_body_is_400(void **state)
{
    (void)state;
    http_to(W.port, "POST", "/api/v1/enroll", NULL, "{\"deviceId\":\"x-1\",\"token\":5}", NULL,
            NULL);
    assert_error(400, "validation", "token: must be a string");
    http_to(W.port, "POST", "/api/v1/enroll", NULL, "{\"deviceId\":\"x-1\",\"extra\":1}", NULL,
            NULL);
    assert_error(400, "validation", "body: unknown or repeated member");
    http_to(W.port, "POST", "/api/v1/enroll", NULL, "[1,2", NULL, NULL);
    assert_error(400, "message_format", NULL);
}

static void test_enroll_without_a_ca_is_503(void **state)
{
    (void)state;
    add_device("enr-noca", true);
    devkey_t d;
    make_csr(&d, "enr-noca", "ec");
    post_enroll(W.port2, "enr-noca", "enr_000000000000000000000000000000000000000000000000",
                file_text(d.csr));
    assert_error(503, "configuration", "enrollment is not configured");
}

/* ---- challenge-response ---------------------------------------------------------- */

/* PyJWT verifies tok with the public half of the API's key and prints the
 * claims. */
static cJSON *pyjwt_claims(const char *tok)
{
    static const char prog[] =
        "import sys, json, jwt\n"
        "from cryptography.hazmat.primitives.serialization import load_pem_private_key\n"
        "key = load_pem_private_key(open(sys.argv[1], 'rb').read(), None).public_key()\n"
        "c = jwt.decode(sys.argv[2], key, algorithms=['ES256'], audience='emiot-api',\n"
        "               issuer='emiotd')\n"
        "sys.stdout.write(json.dumps(c))\n";
    char py[PATHSZ], out[8192];
    tmp_path(py, sizeof py, "verify.py");
    write_file(py, prog, sizeof prog - 1);
    const char *argv[] = {PYTHON, py, W.jwt_key, tok, NULL};
    int rc = run_capture(argv, out, sizeof out);
    if (rc != 0)
        fprintf(stderr, "pyjwt: %s\n", out);
    assert_int_equal(rc, 0);
    cJSON *c = cJSON_Parse(out);
    assert_non_null(c);
    return c;
}

static void test_device_token_works_on_its_own_device_only_and_pyjwt_verifies_it(void **state)
{
    (void)state;
    add_device("cr-ok", true);
    add_device("cr-other", true);
    devkey_t d;
    enroll_ok(&d, "cr-ok");
    char tok[4096];
    assert_int_equal(device_login("cr-ok", d.key, NULL, tok, sizeof tok), 200);
    api("GET", "/api/v1/devices/cr-ok", tok, NULL);
    expect_status(200);
    api("GET", "/api/v1/whoami", tok, NULL);
    expect_status(200);
    assert_non_null(strstr(R.body, "\"role\":\"device\""));
    api("GET", "/api/v1/devices/cr-other", tok, NULL);
    assert_error(403, "permission_denied", NULL);
    api("GET", "/api/v1/devices", tok, NULL);
    assert_error(403, "permission_denied", NULL);

    cJSON *c = pyjwt_claims(tok);
    assert_string_equal(jstr(c, "sub", NULL), "cr-ok");
    assert_string_equal(jstr(c, "device", NULL), "cr-ok");
    assert_string_equal(jstr(c, "role", NULL), "device");
    assert_string_equal(jstr(c, "iss", NULL), "emiotd");
    assert_string_equal(jstr(c, "aud", NULL), "emiot-api");
    assert_non_null(jstr(c, "jti", NULL));
    double iat = cJSON_GetObjectItemCaseSensitive(c, "iat")->valuedouble;
    double exp = cJSON_GetObjectItemCaseSensitive(c, "exp")->valuedouble;
    assert_true(exp - iat == 86400);
    const cJSON *caps = cJSON_GetObjectItemCaseSensitive(c, "caps");
    assert_int_equal(cJSON_GetArraySize(caps), 4);
    const char *want[] = {"device:read", "status:read", "telemetry:read", "commands:read"};
    for (int i = 0; i < 4; i++)
        assert_string_equal(cJSON_GetArrayItem(caps, i)->valuestring, want[i]);
    cJSON_Delete(c);
}

static void test_device_token_with_an_rsa_key_works(void **state)
{
    (void)state;
    add_device("cr-rsa", true);
    devkey_t d;
    snprintf(d.id, sizeof d.id, "cr-rsa");
    make_csr(&d, "cr-rsa", "rsa:2048");
    char tok[64];
    new_token("cr-rsa", 0, tok);
    post_enroll(W.port, "cr-rsa", tok, file_text(d.csr));
    expect_status(201);
    assert_int_equal(device_login("cr-rsa", d.key, NULL, NULL, 0), 200);
}

static size_t refused_auth(const char *id)
{
    return security_events("device_auth_refused", id, NULL).n;
}

static void test_device_token_reused_nonce_is_401(void **state)
{
    (void)state;
    add_device("cr-reuse", true);
    devkey_t d;
    enroll_ok(&d, "cr-reuse");
    char nonce[64], sig[1400];
    get_nonce(W.port, "cr-reuse", nonce);
    sign(d.key, "cr-reuse", nonce, sig, sizeof sig);
    assert_int_equal(post_device_token(W.port, "cr-reuse", nonce, sig, NULL), 200);
    size_t n = refused_auth("cr-reuse");
    post_device_token(W.port, "cr-reuse", nonce, sig, NULL);
    assert_error(401, "authentication", NULL);
    ev_count_t e = security_events("device_auth_refused", "cr-reuse", nonce);
    assert_int_equal(e.n, n + 1);
    assert_false(e.leaked);
}

static void test_device_token_expired_nonce_is_401(void **state)
{
    (void)state;
    add_device("cr-expired", true);
    devkey_t d;
    enroll_ok(&d, "cr-expired");
    W.opts.nonce_ttl_s = 1;
    reload();
    char nonce[64], sig[1400];
    get_nonce(W.port, "cr-expired", nonce);
    W.opts.nonce_ttl_s = 300;
    reload();
    sign(d.key, "cr-expired", nonce, sig, sizeof sig);
    em_test_sleep_ms(2100);
    size_t n = refused_auth("cr-expired");
    post_device_token(W.port, "cr-expired", nonce, sig, NULL);
    assert_error(401, "authentication", NULL);
    assert_int_equal(refused_auth("cr-expired"), n + 1);
}

static void test_device_token_nonce_asked_for_a_used_for_b_is_401(void **state)
{
    (void)state;
    add_device("cr-a", true);
    add_device("cr-b", true);
    devkey_t b;
    enroll_ok(&b, "cr-b");
    char nonce[64], sig[1400];
    get_nonce(W.port, "cr-a", nonce);
    sign(b.key, "cr-b", nonce, sig, sizeof sig);
    size_t n = refused_auth("cr-b");
    post_device_token(W.port, "cr-b", nonce, sig, NULL);
    assert_error(401, "authentication", NULL);
    assert_int_equal(refused_auth("cr-b"), n + 1);
}

static void test_device_token_signature_by_another_key_is_401(void **state)
{
    (void)state;
    add_device("cr-otherkey", true);
    devkey_t d, x;
    enroll_ok(&d, "cr-otherkey");
    make_csr(&x, "cr-otherkey", "ec"); /* a key the certificate is not for */
    size_t n = refused_auth("cr-otherkey");
    assert_int_equal(device_login("cr-otherkey", x.key, NULL, NULL, 0), 401);
    assert_int_equal(refused_auth("cr-otherkey"), n + 1);
    /* A garbled signature likewise. */
    char nonce[64];
    get_nonce(W.port, "cr-otherkey", nonce);
    post_device_token(W.port, "cr-otherkey", nonce, "AAAA", NULL);
    assert_error(401, "authentication", NULL);
}

static void test_device_token_revoked_certificate_is_401(void **state)
{
    (void)state;
    add_device("cr-revoked", true);
    devkey_t d;
    enroll_ok(&d, "cr-revoked");
    assert_int_equal(device_login("cr-revoked", d.key, NULL, NULL, 0), 200);
    revoke_serial(d.serial);
    size_t n = refused_auth("cr-revoked");
    assert_int_equal(device_login("cr-revoked", d.key, NULL, NULL, 0), 401);
    ev_count_t e = security_events("device_auth_refused", "cr-revoked", NULL);
    assert_int_equal(e.n, n + 1);
    assert_int_equal(e.max_sev, EM_SEV_HIGH);
    api("GET", "/api/v1/devices/cr-revoked/certificates", W.admin_key, NULL);
    assert_non_null(strstr(R.body, "\"state\":\"revoked\""));
}

static void test_device_token_certificate_of_another_ca_is_401_and_not_registered(void **state)
{
    (void)state;
    add_device("cr-foreign", true);
    devkey_t f;
    foreign_cert(&f, "cr-foreign");
    size_t n = refused_auth("cr-foreign");
    assert_int_equal(device_login("cr-foreign", f.key, f.crt, NULL, 0), 401);
    assert_int_equal(refused_auth("cr-foreign"), n + 1);
    assert_int_equal(store_cert_count("cr-foreign"), 0);
}

static void test_device_token_unregistered_ca_certificate_is_registered(void **state)
{
    (void)state;
    add_device("cr-present", true);
    devkey_t d;
    issue(&d, "cr-present", EM_CERT_DEVICE, 0, 0);
    /* Nothing registered: without the certificate there is nothing to check. */
    assert_int_equal(device_login("cr-present", d.key, NULL, NULL, 0), 401);
    assert_int_equal(device_login("cr-present", d.key, d.crt, NULL, 0), 200);
    assert_int_equal(store_cert_count("cr-present"), 1);
    /* Now the registered one is used. */
    assert_int_equal(device_login("cr-present", d.key, NULL, NULL, 0), 200);
}

static void test_device_token_for_a_disabled_device_is_401(void **state)
{
    (void)state;
    add_device("cr-off", true);
    devkey_t d;
    enroll_ok(&d, "cr-off");
    api("PATCH", "/api/v1/devices/cr-off", W.admin_key, "{\"enabled\":false}");
    expect_status(200);
    assert_int_equal(device_login("cr-off", d.key, NULL, NULL, 0), 401);
}

static void test_challenge_answers_any_valid_id_and_refuses_a_bad_one(void **state)
{
    (void)state;
    char nonce[64];
    get_nonce(W.port, "no-such-device-here", nonce);
    http_to(W.port, "POST", "/api/v1/auth/challenge", NULL, "{\"deviceId\":\"a b\"}", NULL, NULL);
    assert_error(400, "validation", "deviceId");
}

static void test_challenge_table_full_is_503_with_retry_after(void **state)
{
    (void)state;
    char nonce[64];
    get_nonce(W.port2, "full-1", nonce);
    get_nonce(W.port2, "full-2", nonce);
    http_to(W.port2, "POST", "/api/v1/auth/challenge", NULL, "{\"deviceId\":\"full-3\"}", NULL,
            NULL);
    assert_error(503, "limit_reached", NULL);
    assert_non_null(strcasestr(R.headers, "\nRetry-After: "));
}

/* ---- client certificates ------------------------------------------------------------- */

static int with_cert(const devkey_t *d, const char *path)
{
    return http_to(W.port, "GET", path, NULL, NULL, d->crt, d->key);
}

static void test_client_certificate_of_an_enrolled_device_works(void **state)
{
    (void)state;
    add_device("cc-ok", true);
    devkey_t d;
    enroll_ok(&d, "cc-ok");
    assert_int_equal(with_cert(&d, "/api/v1/whoami"), 200);
    assert_non_null(strstr(R.body, "\"method\":\"certificate\""));
    assert_non_null(strstr(R.body, "\"deviceId\":\"cc-ok\""));
    assert_int_equal(with_cert(&d, "/api/v1/devices/cc-ok/certificates"), 200);
}

static void test_client_certificate_revoked_is_refused(void **state)
{
    (void)state;
    add_device("cc-revoked", true);
    devkey_t d;
    enroll_ok(&d, "cc-revoked");
    assert_int_equal(with_cert(&d, "/api/v1/whoami"), 200);
    revoke_serial(d.serial);
    int st = with_cert(&d, "/api/v1/whoami");
    /* 401 from the request's check, or no answer: the handshake refused it. */
    if (st != 0)
        assert_error(401, "authentication", NULL);
    /* The next connection fails its handshake (the CRL is in the context). */
    assert_int_equal(with_cert(&d, "/api/v1/whoami"), 0);
}

static void test_client_certificate_expired_is_refused(void **state)
{
    (void)state;
    add_device("cc-expired", true);
    X509 *ca = em_pki_ca_cert(W.pki);
    struct tm tm;
    assert_int_equal(ASN1_TIME_to_tm(X509_get0_notBefore(ca), &tm), 1);
    int64_t nb = (int64_t)timegm(&tm) * 1000;
    int64_t now = em_now_ms();
    devkey_t d;
    issue(&d, "cc-expired", EM_CERT_DEVICE, nb, now + 2000);
    em_test_sleep_ms(3100);
    int st = with_cert(&d, "/api/v1/whoami");
    if (st != 0)
        assert_error(401, "authentication", NULL);
}

static void test_client_certificate_of_another_ca_fails_the_handshake(void **state)
{
    (void)state;
    add_device("cc-foreign", true);
    devkey_t f;
    foreign_cert(&f, "cc-foreign");
    assert_int_equal(with_cert(&f, "/api/v1/whoami"), 0);
}

static void test_client_certificate_with_server_usage_is_refused(void **state)
{
    (void)state;
    devkey_t s;
    issue(&s, "srv.example", EM_CERT_SERVER, 0, 0);
    int st = with_cert(&s, "/api/v1/whoami");
    if (st != 0)
        assert_error(401, "authentication", NULL);
}

/* ---- emiotctl ----------------------------------------------------------------------- */

/* Runs the built emiotctl against the API as admin; its stdout (and stderr)
 * into out. Returns its exit status. */
static int ctl(char *out, size_t size, const char *a1, const char *a2, const char *a3,
               const char *a4, const char *a5)
{
    char keyf[PATHSZ], url[64];
    tmp_path(keyf, sizeof keyf, "admin.key");
    write_file(keyf, W.admin_key, strlen(W.admin_key));
    snprintf(url, sizeof url, "https://localhost:%d", W.port);
    const char *argv[] = {EM_TEST_BINARY_DIR "/emiotctl",
                          "--url",
                          url,
                          "--ca",
                          W.ca,
                          "--api-key-file",
                          keyf,
                          a1,
                          a2,
                          a3,
                          a4,
                          a5,
                          NULL};
    int rc = run_capture(argv, out, size);
    unlink(keyf);
    return rc;
}

static void test_emiotctl_enroll_token_quiet_prints_only_the_token(void **state)
{
    (void)state;
    add_device("ctl-enr", true);
    char out[8192];
    assert_int_equal(ctl(out, sizeof out, "-q", "devices", "enroll-token", "ctl-enr", NULL), 0);
    char tok[64];
    assert_int_equal(strlen(out), 53); /* the token and a newline */
    memcpy(tok, out, 52);
    tok[52] = '\0';
    assert_memory_equal(tok, "enr_", 4);
    watch_secret(tok);
    devkey_t d;
    make_csr(&d, "ctl-enr", "ec");
    post_enroll(W.port, "ctl-enr", tok, file_text(d.csr));
    expect_status(201);

    assert_int_equal(ctl(out, sizeof out, "-o", "json", "devices", "enroll-tokens", "ctl-enr"), 0);
    assert_non_null(strstr(out, "\"used\""));
    assert_null(strstr(out, tok));
    assert_int_equal(ctl(out, sizeof out, "devices", "certificates", "ctl-enr", NULL, NULL), 0);
    assert_non_null(strstr(out, "valid"));
    /* A device that is not there: exit 6. */
    assert_int_equal(ctl(out, sizeof out, "devices", "enroll-token", "ctl-nobody", NULL, NULL), 6);
    /* --ttl out of range is refused before sending. */
    assert_int_equal(ctl(out, sizeof out, "devices", "enroll-token", "ctl-enr", "--ttl", "0"), 7);
}

static void test_emiotctl_enroll_token_out_writes_a_private_file(void **state)
{
    (void)state;
    add_device("ctl-out", true);
    char out[8192], path[PATHSZ];
    tmp_path(path, sizeof path, "token");
    assert_int_equal(ctl(out, sizeof out, "devices", "enroll-token", "ctl-out", "--out", path), 0);
    assert_null(strstr(out, "enr_"));
    struct stat st;
    assert_int_equal(stat(path, &st), 0);
    assert_int_equal(st.st_mode & 0777, 0600);
    char tok[128];
    em_test_read_file(path, tok, sizeof tok);
    assert_int_equal(strlen(tok), 53);
    tok[52] = '\0';
    watch_secret(tok);
    /* Never over an existing file. */
    assert_int_not_equal(ctl(out, sizeof out, "devices", "enroll-token", "ctl-out", "--out", path),
                         0);
}

/* ---- failures count against the address -------------------------------------------- */

static void test_public_route_failures_block_the_address(void **state)
{
    (void)state;
    W.opts.auth_fail_per_min = 3;
    reload();
    for (int i = 0; i < 3; i++) {
        post_enroll(W.port, "blk-dev", "enr_000000000000000000000000000000000000000000000000", "x");
        assert_error(401, "authentication", NULL);
    }
    post_enroll(W.port, "blk-dev", "enr_000000000000000000000000000000000000000000000000", "x");
    assert_error(429, "rate_limit_exceeded", NULL);
    assert_non_null(strcasestr(R.headers, "\nRetry-After: "));
    /* Authenticated routes from this address are blocked too. */
    api("GET", "/api/v1/whoami", W.admin_key, NULL);
    expect_status(429);
    W.opts.auth_fail_per_min = 100000;
    reload();
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_enroll_token_is_shown_once_and_listed_without_secret),
        cmocka_unit_test(test_enroll_token_for_unknown_or_disabled_device_is_refused),
        cmocka_unit_test(test_enroll_token_needs_operator),
        cmocka_unit_test(test_enroll_issues_a_certificate_openssl_verifies),
        cmocka_unit_test(test_enroll_reused_token_is_401_with_a_high_event),
        cmocka_unit_test(test_enroll_expired_token_is_401),
        cmocka_unit_test(test_enroll_token_of_device_a_used_for_b_is_401_and_burnt),
        cmocka_unit_test(test_enroll_csr_cn_mismatch_is_400),
        cmocka_unit_test(test_enroll_weak_rsa1024_key_is_400),
        cmocka_unit_test(test_enroll_csr_with_a_broken_signature_is_400),
        cmocka_unit_test(test_enroll_garbage_csr_is_400_message_format),
        cmocka_unit_test(test_enroll_disabled_device_is_403),
        cmocka_unit_test(test_enroll_unknown_and_malformed_tokens_are_401),
        cmocka_unit_test(test_enroll_bad_body_is_400),
        cmocka_unit_test(test_enroll_without_a_ca_is_503),
        cmocka_unit_test(test_device_token_works_on_its_own_device_only_and_pyjwt_verifies_it),
        cmocka_unit_test(test_device_token_with_an_rsa_key_works),
        cmocka_unit_test(test_device_token_reused_nonce_is_401),
        cmocka_unit_test(test_device_token_expired_nonce_is_401),
        cmocka_unit_test(test_device_token_nonce_asked_for_a_used_for_b_is_401),
        cmocka_unit_test(test_device_token_signature_by_another_key_is_401),
        cmocka_unit_test(test_device_token_revoked_certificate_is_401),
        cmocka_unit_test(test_device_token_certificate_of_another_ca_is_401_and_not_registered),
        cmocka_unit_test(test_device_token_unregistered_ca_certificate_is_registered),
        cmocka_unit_test(test_device_token_for_a_disabled_device_is_401),
        cmocka_unit_test(test_challenge_answers_any_valid_id_and_refuses_a_bad_one),
        cmocka_unit_test(test_challenge_table_full_is_503_with_retry_after),
        cmocka_unit_test(test_client_certificate_of_an_enrolled_device_works),
        cmocka_unit_test(test_client_certificate_revoked_is_refused),
        cmocka_unit_test(test_client_certificate_expired_is_refused),
        cmocka_unit_test(test_client_certificate_of_another_ca_fails_the_handshake),
        cmocka_unit_test(test_client_certificate_with_server_usage_is_refused),
        cmocka_unit_test(test_emiotctl_enroll_token_quiet_prints_only_the_token),
        cmocka_unit_test(test_emiotctl_enroll_token_out_writes_a_private_file),
        cmocka_unit_test(test_public_route_failures_block_the_address),
    };
    return cmocka_run_group_tests(tests, setup, teardown);
}
