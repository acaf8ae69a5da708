/*
 * emiot tests - `emiot-agent enroll` and `emiot-agent token` against a real
 * emiotd with a CA directory.
 *
 * One emiotd serves the whole group: its [pki] dir is a CA made here with
 * em_pki_init (sealed with a passphrase handed over in the environment), and
 * its API certificate comes from tests/support (a different CA: the agent
 * pins that one with --ca and learns the device CA from the enrollment
 * answer). The agent runs as the built binary, as a device runs it. Each test
 * uses its own device ids and output directories, so that the tests do not
 * depend on each other's order.
 */
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <openssl/evp.h>
#include <openssl/pem.h>
#include <openssl/x509.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cjson/cJSON.h>
#include <cmocka.h>

#include "broker.h"
#include "daemon.h"
#include "emiot/emiot.h"
#include "testutil.h"

#define AGENT      EM_TEST_BINARY_DIR "/emiot-agent"
#define PASS_ENV   "EMIOT_TEST_AGENT_ENROLL_PASS"
#define PASSPHRASE "agent-enroll-test-passphrase-7f3a"
#define TOKEN_ENV  "EMIOT_TEST_AGENT_ENROLL_TOKEN"
#define BODY_MAX   16384

/* Exit codes documented in `emiot-agent enroll --help` and docs/AGENT.md. */
enum {
    ST_OK = 0,
    ST_FAILURE = 1,
    ST_USAGE = 2,
    ST_CONNECT = 3,
    ST_REFUSED = 4,
    ST_INVALID = 5,
    ST_SERVER = 6
};

static struct {
    char dir[256];
    char ca_dir[EM_TEST_PATH_MAX]; /* the emiot CA directory emiotd signs with */
    char ca_crt[EM_TEST_PATH_MAX]; /* its ca.crt */
    em_test_daemon_t d;
    int outs; /* output directories made so far */
} fx;

/* ---- helpers ------------------------------------------------------------ */

static void path_in(char *out, size_t size, const char *dir, const char *name)
{
    int n = snprintf(out, size, "%s/%s", dir, name);
    assert_true(n > 0 && (size_t)n < size);
}

/* A fresh, empty directory for one run's files. */
static void new_dir(char *out, size_t size)
{
    char name[32];
    snprintf(name, sizeof name, "out-%d", ++fx.outs);
    path_in(out, size, fx.dir, name);
    assert_int_equal(mkdir(out, 0700), 0);
}

static int count_entries(const char *dir)
{
    DIR *d = opendir(dir);
    struct dirent *e;
    int n = 0;
    assert_non_null(d);
    while ((e = readdir(d)) != NULL) {
        if (strcmp(e->d_name, ".") != 0 && strcmp(e->d_name, "..") != 0)
            n++;
    }
    closedir(d);
    return n;
}

static void write_file(const char *path, const char *text, mode_t mode)
{
    int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, mode);
    size_t n = strlen(text);
    assert_true(fd >= 0);
    assert_int_equal(write(fd, text, n), (ssize_t)n);
    assert_int_equal(close(fd), 0);
}

static void read_file(const char *path, char *buf, size_t size)
{
    FILE *f = fopen(path, "r");
    size_t n;
    assert_non_null(f);
    n = fread(buf, 1, size - 1, f);
    buf[n] = '\0';
    fclose(f);
}

static bool file_contains(const char *path, const char *needle)
{
    static char buf[65536];
    if (access(path, R_OK) != 0)
        return false;
    read_file(path, buf, sizeof buf);
    return strstr(buf, needle) != NULL;
}

static mode_t file_mode(const char *path)
{
    struct stat st;
    assert_int_equal(stat(path, &st), 0);
    return st.st_mode & 07777;
}

/* Runs the agent to completion with stdout and stderr into out (may be
 * NULL); returns its exit status. */
static int agent(const char *const *argv, const char *out)
{
    pid_t pid = em_test_spawn(argv, out);
    int rc;
    assert_true(pid > 0);
    rc = em_test_wait(pid, 60000);
    if (rc < 0)
        (void)em_test_stop(pid);
    return rc;
}

static void register_device(const char *id)
{
    char body[512], out[BODY_MAX];
    int status;
    snprintf(body, sizeof body, "{\"id\":\"%s\",\"name\":\"%s\",\"type\":\"sensor\"}", id, id);
    status = em_test_daemon_request(&fx.d, fx.d.admin_key, "POST", "/api/v1/devices", body, out,
                                    sizeof out);
    if (status != 201)
        fprintf(stderr, "POST /api/v1/devices: %d %s\n", status, out);
    assert_int_equal(status, 201);
}

/* A new enrollment token for id into token (at least 64 bytes). */
static void new_token(const char *id, char *token, size_t size)
{
    char path[256], out[BODY_MAX];
    cJSON *j, *data, *t;
    int status;

    snprintf(path, sizeof path, "/api/v1/devices/%s/enrollment-tokens", id);
    status = em_test_daemon_request(&fx.d, fx.d.admin_key, "POST", path, "{}", out, sizeof out);
    if (status != 201)
        fprintf(stderr, "POST %s: %d %s\n", path, status, out);
    assert_int_equal(status, 201);
    j = cJSON_Parse(out);
    assert_non_null(j);
    data = cJSON_GetObjectItemCaseSensitive(j, "data");
    t = cJSON_GetObjectItemCaseSensitive(data, "token");
    assert_true(cJSON_IsString(t));
    assert_true(strlen(t->valuestring) < size);
    snprintf(token, size, "%s", t->valuestring);
    cJSON_Delete(j);
}

typedef struct enroll_files {
    char dir[EM_TEST_PATH_MAX]; /* where the outputs go */
    char key[EM_TEST_PATH_MAX];
    char cert[EM_TEST_PATH_MAX];
    char ca[EM_TEST_PATH_MAX];
    char tok[EM_TEST_PATH_MAX]; /* the token file (outside dir) */
    char log[EM_TEST_PATH_MAX]; /* the agent's stdout and stderr (outside dir) */
} enroll_files_t;

static void files_init(enroll_files_t *f)
{
    char aux[EM_TEST_PATH_MAX];
    new_dir(f->dir, sizeof f->dir);
    new_dir(aux, sizeof aux);
    path_in(f->key, sizeof f->key, f->dir, "device.key");
    path_in(f->cert, sizeof f->cert, f->dir, "device.crt");
    path_in(f->ca, sizeof f->ca, f->dir, "ca.crt");
    path_in(f->log, sizeof f->log, aux, "agent.out");
    path_in(f->tok, sizeof f->tok, aux, "token");
}

/* emiot-agent enroll for id with the token in f->tok; extra: NULL or one
 * more option ("--force"). */
static int run_enroll(const char *id, const enroll_files_t *f, const char *extra)
{
    const char *argv[] = {AGENT,        "enroll", "--api",        fx.d.url, "--ca",      fx.d.ca,
                          "--id",       id,       "--token-file", f->tok,   "--key-out", f->key,
                          "--cert-out", f->cert,  "--ca-out",     f->ca,    extra,       NULL};
    return agent(argv, f->log);
}

/* A registered device enrolled: its files in f. */
static void enrolled_device(const char *id, enroll_files_t *f)
{
    char token[128];
    files_init(f);
    register_device(id);
    new_token(id, token, sizeof token);
    write_file(f->tok, token, 0600);
    assert_int_equal(run_enroll(id, f, NULL), ST_OK);
}

static X509 *load_cert(const char *path)
{
    FILE *f = fopen(path, "r");
    X509 *c;
    assert_non_null(f);
    c = PEM_read_X509(f, NULL, NULL, NULL);
    fclose(f);
    assert_non_null(c);
    return c;
}

static EVP_PKEY *load_key(const char *path)
{
    FILE *f = fopen(path, "r");
    EVP_PKEY *k;
    assert_non_null(f);
    k = PEM_read_PrivateKey(f, NULL, NULL, NULL);
    fclose(f);
    assert_non_null(k);
    return k;
}

static void expect_cn(X509 *c, const char *cn)
{
    char buf[128];
    assert_true(
        X509_NAME_get_text_by_NID(X509_get_subject_name(c), NID_commonName, buf, sizeof buf) > 0);
    assert_string_equal(buf, cn);
}

static int openssl_verify(const char *ca, const char *cert)
{
    const char *argv[] = {"openssl", "verify", "-CAfile", ca, "-purpose", "sslclient", cert, NULL};
    return em_test_run(argv);
}

/* emiot-agent token; out: --out FILE or NULL (then the JWT goes to log). */
static int run_token(const char *id, const char *key, const char *cert, const char *out,
                     const char *log)
{
    const char *argv[14];
    int i = 0;
    argv[i++] = AGENT;
    argv[i++] = "token";
    argv[i++] = "--api";
    argv[i++] = fx.d.url;
    argv[i++] = "--ca";
    argv[i++] = fx.d.ca;
    argv[i++] = "--id";
    argv[i++] = id;
    argv[i++] = "--key";
    argv[i++] = key;
    if (cert) {
        argv[i++] = "--cert";
        argv[i++] = cert;
    }
    if (out) {
        argv[i++] = "--out";
        argv[i++] = out;
    }
    argv[i] = NULL;
    return agent(argv, log);
}

/* The first line of path (a JWT) into buf. */
static void first_line(const char *path, char *buf, size_t size)
{
    read_file(path, buf, size);
    buf[strcspn(buf, "\n")] = '\0';
}

/* A device certificate from the CA for a key made with the openssl command
 * (algorithm: "ED25519", "RSA" ...), issued by emiot's CA from its CSR. */
static void foreign_key_cert(const char *id, const char *algorithm, const char *dir, char *key,
                             char *cert)
{
    char csr[EM_TEST_PATH_MAX], subj[96], pem[8192];
    em_keystore_secret_t *secret = NULL;
    em_pki_issue_options_t io;
    em_pki_t *pki = NULL;
    char *cert_pem = NULL;
    em_error_t err;

    path_in(key, EM_TEST_PATH_MAX, dir, "dev.key");
    path_in(csr, sizeof csr, dir, "dev.csr");
    path_in(cert, EM_TEST_PATH_MAX, dir, "dev.crt");
    snprintf(subj, sizeof subj, "/CN=%s", id);
    {
        const char *gen[] = {"openssl",
                             "genpkey",
                             "-algorithm",
                             algorithm,
                             "-out",
                             key,
                             strcmp(algorithm, "RSA") == 0 ? "-pkeyopt" : NULL,
                             "rsa_keygen_bits:2048",
                             NULL};
        assert_int_equal(em_test_run(gen), 0);
    }
    {
        const char *req[] = {"openssl", "req",  "-new", "-key",    key, "-subj",
                             subj,      "-out", csr,    "-sha256", NULL};
        assert_int_equal(em_test_run(req), 0);
    }
    read_file(csr, pem, sizeof pem);
    em_error_clear(&err);
    assert_int_equal(em_keystore_secret_passphrase(PASSPHRASE, strlen(PASSPHRASE), &secret, &err),
                     EM_OK);
    assert_int_equal(em_pki_open(fx.ca_dir, secret, NULL, &pki, &err), EM_OK);
    memset(&io, 0, sizeof io);
    io.profile = EM_CERT_DEVICE;
    io.common_name = id;
    io.days = 30;
    if (em_pki_issue_csr(pki, &io, pem, strlen(pem), &cert_pem, NULL, &err) != EM_OK)
        fail_msg("em_pki_issue_csr: %s", err.message);
    write_file(cert, cert_pem, 0644);
    free(cert_pem);
    em_pki_free(pki);
    em_keystore_secret_free(secret);
}

/* ---- set-up ------------------------------------------------------------- */

static int group_setup(void **state)
{
    char extra[2048];
    em_keystore_secret_t *secret = NULL;
    em_pki_init_options_t po;
    em_test_daemon_options_t dopts;
    em_error_t err;
    (void)state;

    memset(&fx, 0, sizeof fx);
    if (em_test_mkdtemp(fx.dir, sizeof fx.dir) != 0)
        return -1;
    snprintf(fx.ca_dir, sizeof fx.ca_dir, "%s/ca", fx.dir);
    snprintf(fx.ca_crt, sizeof fx.ca_crt, "%s/ca/ca.crt", fx.dir);
    em_error_clear(&err);
    if (em_keystore_secret_passphrase(PASSPHRASE, strlen(PASSPHRASE), &secret, &err) != EM_OK ||
        em_keystore_secret_set_cost(secret, EM_KEYSTORE_LOG2N_MIN) != EM_OK) {
        fprintf(stderr, "keystore secret: %s\n", err.message);
        em_keystore_secret_free(secret);
        return -1;
    }
    em_pki_init_options_init(&po);
    po.common_name = "emiot test device CA";
    po.secret = secret;
    if (em_pki_init(fx.ca_dir, &po, &err) != EM_OK) {
        fprintf(stderr, "em_pki_init: %s\n", err.message);
        em_keystore_secret_free(secret);
        return -1;
    }
    em_keystore_secret_free(secret);
    /* emiotd inherits the passphrase through its environment, as in
     * production ([keystore] passphrase_env). A generous failure budget:
     * several tests fail authentication on purpose. */
    setenv(PASS_ENV, PASSPHRASE, 1);
    snprintf(extra, sizeof extra,
             "[keystore]\npassphrase_env = %s\n[pki]\ndir = %s\n[api]\nauth_fail_per_min = "
             "10000\n",
             PASS_ENV, fx.ca_dir);
    memset(&dopts, 0, sizeof dopts);
    dopts.extra_config = extra;
    if (em_test_daemon_start(&fx.d, NULL, &dopts) != 0)
        return -1;
    return 0;
}

static int group_teardown(void **state)
{
    (void)state;
    em_test_daemon_cleanup(&fx.d);
    if (fx.dir[0])
        em_test_rmtree(fx.dir);
    unsetenv(PASS_ENV);
    return 0;
}

/* ---- enroll ------------------------------------------------------------- */

static void test_enroll_writes_a_private_key_and_a_certificate_that_verifies(void **state)
{
    enroll_files_t f;
    X509 *cert;
    EVP_PKEY *key;
    (void)state;

    enrolled_device("enr-happy-01", &f);
    assert_int_equal(file_mode(f.key), 0600);
    assert_int_equal(file_mode(f.cert), 0644);
    assert_int_equal(file_mode(f.ca), 0644);
    assert_int_equal(count_entries(f.dir), 3); /* no temporary file left behind */
    /* The CA it wrote is emiot's (not the API's), and both verify the
     * certificate as openssl sees it. */
    assert_int_equal(openssl_verify(f.ca, f.cert), 0);
    assert_int_equal(openssl_verify(fx.ca_crt, f.cert), 0);
    cert = load_cert(f.cert);
    key = load_key(f.key);
    expect_cn(cert, "enr-happy-01");
    assert_int_equal(X509_check_private_key(cert, key), 1);
    assert_int_equal(EVP_PKEY_get_base_id(key), EVP_PKEY_EC);
    X509_free(cert);
    EVP_PKEY_free(key);
    /* What it printed names the files, never the token. */
    assert_true(file_contains(f.log, "enrolled enr-happy-01"));
    assert_false(file_contains(f.log, "enr_"));
}

static void test_enroll_reads_the_token_from_the_environment(void **state)
{
    enroll_files_t f;
    char token[128];
    int rc;
    (void)state;

    files_init(&f);
    register_device("enr-env-01");
    new_token("enr-env-01", token, sizeof token);
    setenv(TOKEN_ENV, token, 1);
    {
        const char *argv[] = {AGENT,       "enroll", "--api",      fx.d.url,      "--ca",
                              fx.d.ca,     "--id",   "enr-env-01", "--token-env", TOKEN_ENV,
                              "--key-out", f.key,    "--cert-out", f.cert,        NULL};
        rc = agent(argv, f.log);
    }
    unsetenv(TOKEN_ENV);
    assert_int_equal(rc, ST_OK);
    assert_int_equal(openssl_verify(fx.ca_crt, f.cert), 0);
    assert_int_equal(count_entries(f.dir), 2);
}

static void test_reused_token_is_refused_and_nothing_is_written(void **state)
{
    enroll_files_t f, again;
    char token[128];
    (void)state;

    files_init(&f);
    register_device("enr-reuse-01");
    new_token("enr-reuse-01", token, sizeof token);
    write_file(f.tok, token, 0600);
    assert_int_equal(run_enroll("enr-reuse-01", &f, NULL), ST_OK);

    files_init(&again);
    write_file(again.tok, token, 0600);
    assert_int_equal(run_enroll("enr-reuse-01", &again, NULL), ST_REFUSED);
    assert_int_equal(count_entries(again.dir), 0);
    assert_true(file_contains(again.log, "refused"));
    assert_false(file_contains(again.log, token));
}

static void test_wrong_token_is_refused_and_nothing_is_written(void **state)
{
    enroll_files_t f;
    (void)state;

    files_init(&f);
    register_device("enr-wrong-01");
    write_file(f.tok, "enr_0123456789abcdef0123456789abcdef0123456789abcdef\n", 0600);
    assert_int_equal(run_enroll("enr-wrong-01", &f, NULL), ST_REFUSED);
    assert_int_equal(count_entries(f.dir), 0);
    assert_false(file_contains(f.log, "0123456789abcdef0123"));
}

static void test_token_of_another_device_is_refused(void **state)
{
    enroll_files_t f;
    char token[128];
    (void)state;

    files_init(&f);
    register_device("enr-owner-01");
    register_device("enr-thief-01");
    new_token("enr-owner-01", token, sizeof token);
    write_file(f.tok, token, 0600);
    assert_int_equal(run_enroll("enr-thief-01", &f, NULL), ST_REFUSED);
    assert_int_equal(count_entries(f.dir), 0);
}

static void test_malformed_token_is_a_usage_error_that_sends_nothing(void **state)
{
    enroll_files_t f;
    char token[128];
    (void)state;

    files_init(&f);
    register_device("enr-shape-01");
    write_file(f.tok, "not-a-token-at-all\n", 0600);
    assert_int_equal(run_enroll("enr-shape-01", &f, NULL), ST_USAGE);
    assert_false(file_contains(f.log, "not-a-token-at-all"));
    assert_int_equal(count_entries(f.dir), 0);
    /* Nothing was sent: a real token still works afterwards. */
    new_token("enr-shape-01", token, sizeof token);
    write_file(f.tok, token, 0600);
    assert_int_equal(run_enroll("enr-shape-01", &f, NULL), ST_OK);
}

static void test_token_on_the_command_line_is_refused_without_echo(void **state)
{
    char log[EM_TEST_PATH_MAX], dir[EM_TEST_PATH_MAX];
    const char *secret = "enr_ffffffffffffffffffffffffffffffffffffffffffffffff";
    (void)state;

    new_dir(dir, sizeof dir);
    path_in(log, sizeof log, dir, "agent.out");
    {
        const char *argv[] = {AGENT,       "enroll",     "--api",       fx.d.url,     "--ca",
                              fx.d.ca,     "--id",       "enr-argv-01", "--token",    secret,
                              "--key-out", "/tmp/x.key", "--cert-out",  "/tmp/x.crt", NULL};
        assert_int_equal(agent(argv, log), ST_USAGE);
    }
    assert_true(file_contains(log, "never taken on the command line"));
    assert_false(file_contains(log, "ffffffff"));
}

static void test_existing_key_is_kept_and_the_token_not_spent_without_force(void **state)
{
    enroll_files_t f;
    char token[128], text[64];
    (void)state;

    files_init(&f);
    register_device("enr-exists-01");
    new_token("enr-exists-01", token, sizeof token);
    write_file(f.tok, token, 0600);
    write_file(f.key, "the old key\n", 0600);
    assert_int_equal(run_enroll("enr-exists-01", &f, NULL), ST_FAILURE);
    assert_true(file_contains(f.log, "--force"));
    read_file(f.key, text, sizeof text);
    assert_string_equal(text, "the old key\n");
    assert_int_equal(count_entries(f.dir), 1);
    /* The refusal came before the request: the same token still enrolls. */
    assert_int_equal(run_enroll("enr-exists-01", &f, "--force"), ST_OK);
    assert_int_equal(file_mode(f.key), 0600);
    assert_int_equal(openssl_verify(fx.ca_crt, f.cert), 0);
    {
        X509 *cert = load_cert(f.cert);
        EVP_PKEY *key = load_key(f.key);
        assert_int_equal(X509_check_private_key(cert, key), 1);
        X509_free(cert);
        EVP_PKEY_free(key);
    }
}

static void test_unwritable_directory_fails_before_the_token_is_spent(void **state)
{
    enroll_files_t f, ok;
    char token[128];
    (void)state;

    files_init(&f);
    register_device("enr-nodir-01");
    new_token("enr-nodir-01", token, sizeof token);
    write_file(f.tok, token, 0600);
    path_in(f.key, sizeof f.key, f.dir, "missing/device.key");
    assert_int_equal(run_enroll("enr-nodir-01", &f, NULL), ST_FAILURE);
    assert_int_equal(count_entries(f.dir), 0);
    files_init(&ok);
    write_file(ok.tok, token, 0600);
    assert_int_equal(run_enroll("enr-nodir-01", &ok, NULL), ST_OK);
}

static void test_disabled_device_is_refused(void **state)
{
    enroll_files_t f;
    char token[128], out[BODY_MAX];
    (void)state;

    files_init(&f);
    register_device("enr-off-01");
    new_token("enr-off-01", token, sizeof token);
    write_file(f.tok, token, 0600);
    assert_int_equal(em_test_daemon_request(&fx.d, fx.d.admin_key, "PATCH",
                                            "/api/v1/devices/enr-off-01", "{\"enabled\":false}",
                                            out, sizeof out),
                     200);
    assert_int_equal(run_enroll("enr-off-01", &f, NULL), ST_REFUSED);
    assert_int_equal(count_entries(f.dir), 0);
}

static void test_daemon_without_a_ca_is_a_server_error(void **state)
{
    em_test_daemon_t bare;
    enroll_files_t f;
    (void)state;

    memset(&bare, 0, sizeof bare);
    assert_int_equal(em_test_daemon_start(&bare, NULL, NULL), 0);
    files_init(&f);
    write_file(f.tok, "enr_0123456789abcdef0123456789abcdef0123456789abcdef\n", 0600);
    {
        const char *argv[] = {AGENT,       "enroll", "--api",       bare.url,       "--ca",
                              bare.ca,     "--id",   "enr-bare-01", "--token-file", f.tok,
                              "--key-out", f.key,    "--cert-out",  f.cert,         NULL};
        int rc = agent(argv, f.log);
        em_test_daemon_cleanup(&bare);
        assert_int_equal(rc, ST_SERVER);
    }
    assert_true(file_contains(f.log, "503"));
    assert_int_equal(count_entries(f.dir), 0);
}

static void test_api_certificate_from_another_ca_is_a_connection_error(void **state)
{
    enroll_files_t f;
    char token[128];
    (void)state;

    files_init(&f);
    register_device("enr-mitm-01");
    new_token("enr-mitm-01", token, sizeof token);
    write_file(f.tok, token, 0600);
    {
        /* The device CA did not sign the API's certificate. */
        const char *argv[] = {AGENT,       "enroll", "--api",       fx.d.url,       "--ca",
                              fx.ca_crt,   "--id",   "enr-mitm-01", "--token-file", f.tok,
                              "--key-out", f.key,    "--cert-out",  f.cert,         NULL};
        assert_int_equal(agent(argv, f.log), ST_CONNECT);
    }
    assert_int_equal(count_entries(f.dir), 0);
    /* Nothing reached emiotd: the token is still good. */
    assert_int_equal(run_enroll("enr-mitm-01", &f, NULL), ST_OK);
}

static void test_unreachable_api_is_a_connection_error(void **state)
{
    enroll_files_t f;
    char url[64];
    (void)state;

    files_init(&f);
    write_file(f.tok, "enr_0123456789abcdef0123456789abcdef0123456789abcdef\n", 0600);
    snprintf(url, sizeof url, "https://localhost:%d", em_test_free_port());
    {
        const char *argv[] = {AGENT,          "enroll", "--api",     url,
                              "--ca",         fx.d.ca,  "--id",      "enr-gone-01",
                              "--token-file", f.tok,    "--key-out", f.key,
                              "--cert-out",   f.cert,   NULL};
        assert_int_equal(agent(argv, f.log), ST_CONNECT);
    }
    assert_int_equal(count_entries(f.dir), 0);
}

static void test_plain_http_api_is_a_usage_error(void **state)
{
    enroll_files_t f;
    (void)state;

    files_init(&f);
    write_file(f.tok, "enr_0123456789abcdef0123456789abcdef0123456789abcdef\n", 0600);
    {
        const char *argv[] = {AGENT,       "enroll", "--api",       fx.d.metrics_url, "--ca",
                              fx.d.ca,     "--id",   "enr-http-01", "--token-file",   f.tok,
                              "--key-out", f.key,    "--cert-out",  f.cert,           NULL};
        assert_int_equal(agent(argv, f.log), ST_USAGE);
    }
    assert_true(file_contains(f.log, "https://"));
    assert_int_equal(count_entries(f.dir), 0);
}

static void test_missing_options_are_usage_errors(void **state)
{
    (void)state;
    {
        const char *argv[] = {AGENT, "enroll", "--api", fx.d.url, "--ca", fx.d.ca, NULL};
        assert_int_equal(agent(argv, NULL), ST_USAGE);
    }
    {
        const char *argv[] = {AGENT,       "enroll", "--api",      fx.d.url,      "--ca",
                              fx.d.ca,     "--id",   "x",          "--token-env", TOKEN_ENV,
                              "--key-out", "/tmp/k", "--cert-out", "/tmp/c",      NULL};
        assert_int_equal(agent(argv, NULL), ST_USAGE); /* "x" is not a device id */
    }
    {
        const char *argv[] = {AGENT,   "token", "--api",           fx.d.url, "--ca",
                              fx.d.ca, "--id",  "tok-missing-key", NULL};
        assert_int_equal(agent(argv, NULL), ST_USAGE);
    }
}

static void test_help_documents_the_exit_codes(void **state)
{
    char dir[EM_TEST_PATH_MAX], log[EM_TEST_PATH_MAX];
    (void)state;

    new_dir(dir, sizeof dir);
    path_in(log, sizeof log, dir, "help.out");
    {
        const char *argv[] = {AGENT, "enroll", "--help", NULL};
        assert_int_equal(agent(argv, log), 0);
    }
    assert_true(file_contains(log, "--token-file"));
    assert_true(file_contains(log, "--ca-out"));
    assert_true(file_contains(log, "4  refused"));
    assert_true(file_contains(log, "6  server error"));
    path_in(log, sizeof log, dir, "help-token.out");
    {
        const char *argv[] = {AGENT, "token", "--help", NULL};
        assert_int_equal(agent(argv, log), 0);
    }
    assert_true(file_contains(log, "--out FILE"));
    assert_true(file_contains(log, "3  cannot reach"));
}

/* ---- token -------------------------------------------------------------- */

static void test_token_gives_a_jwt_that_reads_the_device(void **state)
{
    enroll_files_t f;
    char jwt_file[EM_TEST_PATH_MAX], jwt[8192], body[BODY_MAX];
    (void)state;

    enrolled_device("tok-ok-01", &f);
    path_in(jwt_file, sizeof jwt_file, f.dir, "device.jwt");
    assert_int_equal(run_token("tok-ok-01", f.key, NULL, jwt_file, f.log), ST_OK);
    assert_int_equal(file_mode(jwt_file), 0600);
    first_line(jwt_file, jwt, sizeof jwt);
    assert_int_equal(em_test_daemon_request(&fx.d, jwt, "GET", "/api/v1/devices/tok-ok-01", NULL,
                                            body, sizeof body),
                     200);
    assert_non_null(strstr(body, "\"tok-ok-01\""));
}

static void test_token_prints_the_jwt_on_stdout(void **state)
{
    enroll_files_t f;
    char out[EM_TEST_PATH_MAX], jwt[8192], body[BODY_MAX];
    (void)state;

    enrolled_device("tok-stdout-01", &f);
    path_in(out, sizeof out, f.dir, "stdout");
    assert_int_equal(run_token("tok-stdout-01", f.key, f.cert, NULL, out), ST_OK);
    first_line(out, jwt, sizeof jwt);
    assert_int_equal(em_test_daemon_request(&fx.d, jwt, "GET", "/api/v1/devices/tok-stdout-01",
                                            NULL, body, sizeof body),
                     200);
}

static void test_token_with_another_devices_key_is_refused(void **state)
{
    enroll_files_t a, b;
    (void)state;

    enrolled_device("tok-key-a", &a);
    enrolled_device("tok-key-b", &b);
    /* b's key does not match a's registered certificate. */
    assert_int_equal(run_token("tok-key-a", b.key, NULL, NULL, b.log), ST_REFUSED);
}

static void test_token_with_a_certificate_of_another_key_fails_locally(void **state)
{
    enroll_files_t a, b;
    (void)state;

    enrolled_device("tok-mix-a", &a);
    enrolled_device("tok-mix-b", &b);
    assert_int_equal(run_token("tok-mix-a", a.key, b.cert, NULL, a.log), ST_FAILURE);
    assert_true(file_contains(a.log, "not the certificate of --key"));
}

static void test_token_signs_with_an_ed25519_key(void **state)
{
    char dir[EM_TEST_PATH_MAX], key[EM_TEST_PATH_MAX], cert[EM_TEST_PATH_MAX];
    char log[EM_TEST_PATH_MAX], jwt[8192], body[BODY_MAX];
    (void)state;

    new_dir(dir, sizeof dir);
    path_in(log, sizeof log, dir, "agent.out");
    register_device("tok-ed-01");
    foreign_key_cert("tok-ed-01", "ED25519", dir, key, cert);
    /* emiotd does not know this certificate yet: --cert registers it. */
    assert_int_equal(run_token("tok-ed-01", key, cert, NULL, log), ST_OK);
    first_line(log, jwt, sizeof jwt);
    assert_int_equal(em_test_daemon_request(&fx.d, jwt, "GET", "/api/v1/devices/tok-ed-01", NULL,
                                            body, sizeof body),
                     200);
}

static void test_token_signs_with_an_rsa_key(void **state)
{
    char dir[EM_TEST_PATH_MAX], key[EM_TEST_PATH_MAX], cert[EM_TEST_PATH_MAX];
    char log[EM_TEST_PATH_MAX];
    (void)state;

    new_dir(dir, sizeof dir);
    path_in(log, sizeof log, dir, "agent.out");
    register_device("tok-rsa-01");
    foreign_key_cert("tok-rsa-01", "RSA", dir, key, cert);
    assert_int_equal(run_token("tok-rsa-01", key, cert, NULL, log), ST_OK);
}

static void test_token_refuses_a_weak_key_locally(void **state)
{
    char dir[EM_TEST_PATH_MAX], key[EM_TEST_PATH_MAX], log[EM_TEST_PATH_MAX];
    (void)state;

    new_dir(dir, sizeof dir);
    path_in(key, sizeof key, dir, "weak.key");
    path_in(log, sizeof log, dir, "agent.out");
    {
        const char *gen[] = {"openssl", "genpkey",  "-algorithm",
                             "EC",      "-pkeyopt", "ec_paramgen_curve:secp256k1",
                             "-out",    key,        NULL};
        assert_int_equal(em_test_run(gen), 0);
    }
    assert_int_equal(run_token("tok-weak-01", key, NULL, NULL, log), ST_FAILURE);
    assert_true(file_contains(log, "does not accept it"));
}

static void test_token_for_an_unenrolled_device_is_refused(void **state)
{
    enroll_files_t f;
    (void)state;

    enrolled_device("tok-known-01", &f);
    register_device("tok-nocert-01");
    /* A registered device without a certificate, whose key is someone
     * else's: nothing to verify the signature against. */
    assert_int_equal(run_token("tok-nocert-01", f.key, NULL, NULL, f.log), ST_REFUSED);
}

/* ---- the enrolled files on MQTT -------------------------------------------- */

static void test_enrolled_certificate_connects_to_a_broker(void **state)
{
    enroll_files_t f;
    em_test_broker_t b;
    char broker_ca[EM_TEST_PATH_MAX], sub_out[EM_TEST_PATH_MAX], port[16];
    pid_t agent_pid, sub_pid;
    (void)state;

    enrolled_device("mqtt-enr-01", &f);
    memset(&b, 0, sizeof b);
    assert_int_equal(em_test_broker_init(&b, "mtls"), 0);
    /* The broker trusts its own test CA and emiot's device CA for client
     * certificates; the agent verifies the broker with the same bundle. */
    snprintf(broker_ca, sizeof broker_ca, "%s", em_test_broker_ca(&b));
    {
        static char dev_ca[16384];
        FILE *fp;
        read_file(fx.ca_crt, dev_ca, sizeof dev_ca);
        fp = fopen(broker_ca, "a");
        assert_non_null(fp);
        assert_int_equal(fputs(dev_ca, fp) >= 0, 1);
        fclose(fp);
    }
    assert_int_equal(em_test_broker_launch(&b), 0);
    snprintf(port, sizeof port, "%d", em_test_broker_port(&b));
    path_in(sub_out, sizeof sub_out, f.dir, "sub.out");
    {
        const char *argv[] = {AGENT,         "--url",   em_test_broker_url(&b),
                              "--ca",        broker_ca, "--id",
                              "mqtt-enr-01", "--cert",  f.cert,
                              "--key",       f.key,     "--interval",
                              "1",           NULL};
        agent_pid = em_test_spawn(argv, f.log);
        assert_true(agent_pid > 0);
    }
    {
        const char *argv[] = {"mosquitto_sub",
                              "-h",
                              "localhost",
                              "-p",
                              port,
                              "--cafile",
                              broker_ca,
                              "--cert",
                              em_test_broker_cert(&b),
                              "--key",
                              em_test_broker_key(&b),
                              "-t",
                              "device/mqtt-enr-01/status",
                              "-C",
                              "1",
                              "-W",
                              "20",
                              NULL};
        sub_pid = em_test_spawn(argv, sub_out);
        assert_true(sub_pid > 0);
    }
    assert_int_equal(em_test_wait(sub_pid, 30000), 0);
    assert_true(file_contains(sub_out, "batteryLevel"));
    assert_int_equal(em_test_stop(agent_pid), 0);
    em_test_broker_cleanup(&b);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_enroll_writes_a_private_key_and_a_certificate_that_verifies),
        cmocka_unit_test(test_enroll_reads_the_token_from_the_environment),
        cmocka_unit_test(test_reused_token_is_refused_and_nothing_is_written),
        cmocka_unit_test(test_wrong_token_is_refused_and_nothing_is_written),
        cmocka_unit_test(test_token_of_another_device_is_refused),
        cmocka_unit_test(test_malformed_token_is_a_usage_error_that_sends_nothing),
        cmocka_unit_test(test_token_on_the_command_line_is_refused_without_echo),
        cmocka_unit_test(test_existing_key_is_kept_and_the_token_not_spent_without_force),
        cmocka_unit_test(test_unwritable_directory_fails_before_the_token_is_spent),
        cmocka_unit_test(test_disabled_device_is_refused),
        cmocka_unit_test(test_daemon_without_a_ca_is_a_server_error),
        cmocka_unit_test(test_api_certificate_from_another_ca_is_a_connection_error),
        cmocka_unit_test(test_unreachable_api_is_a_connection_error),
        cmocka_unit_test(test_plain_http_api_is_a_usage_error),
        cmocka_unit_test(test_missing_options_are_usage_errors),
        cmocka_unit_test(test_help_documents_the_exit_codes),
        cmocka_unit_test(test_token_gives_a_jwt_that_reads_the_device),
        cmocka_unit_test(test_token_prints_the_jwt_on_stdout),
        cmocka_unit_test(test_token_with_another_devices_key_is_refused),
        cmocka_unit_test(test_token_with_a_certificate_of_another_key_fails_locally),
        cmocka_unit_test(test_token_signs_with_an_ed25519_key),
        cmocka_unit_test(test_token_signs_with_an_rsa_key),
        cmocka_unit_test(test_token_refuses_a_weak_key_locally),
        cmocka_unit_test(test_token_for_an_unenrolled_device_is_refused),
        cmocka_unit_test(test_enrolled_certificate_connects_to_a_broker),
    };
    return cmocka_run_group_tests(tests, group_setup, group_teardown);
}
