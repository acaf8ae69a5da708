/*
 * emiot tests - test_emiotd_enroll.c: device identity end to end, with a real
 * emiotd (tests/support/daemon.h) configured with a CA directory ([pki] dir)
 * and a keystore key file ([keystore] key_file), its API listener trusting
 * that CA for client certificates. Driven as a device and an operator would
 * drive it: curl for HTTPS, `openssl req` for CSRs, `openssl dgst -sign` for
 * challenge signatures, `openssl verify` for what comes back, python3 (PyJWT)
 * for the device JWT.
 *
 * Each refusal is checked for its status, the security event it leaves
 * (through GET /api/v1/events) and what it must not change: nothing issued
 * by the CA (its index, read by the test), nothing registered for the device
 * (GET /api/v1/devices/{id}/certificates).
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include <fcntl.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include <cjson/cJSON.h>
#include <openssl/pem.h>
#include <openssl/x509.h>

#include "broker.h"
#include "cli.h"
#include "daemon.h"
#include "emiot/clock.h"
#include "emiot/keystore.h"
#include "emiot/pki.h"
#include "testutil.h"

#define PYTHON   "/usr/bin/python3"
#define PATHSZ   512
#define BODY_MAX 65536

typedef struct world {
    char dir[256];
    char pki_dir[PATHSZ], ca[PATHSZ], ks_key[PATHSZ];
    char extra[2048];
    em_keystore_secret_t *secret;
    em_test_daemon_t d;
    int files;
} world_t;

static world_t W;
static char body[BODY_MAX]; /* the last answer's body */

/* ---- files and processes ----------------------------------------------- */

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

static char *file_text(const char *path)
{
    static char buf[65536];
    assert_true(em_test_read_file(path, buf, sizeof buf) > 0);
    return buf;
}

/* ---- requests ---------------------------------------------------------------- */

static int req(const char *cred, const char *method, const char *path, const char *json)
{
    return em_test_daemon_request(&W.d, cred, method, path, json, body, sizeof body);
}

static int admin(const char *method, const char *path, const char *json)
{
    return req(W.d.admin_key, method, path, json);
}

static cJSON *answer(void)
{
    cJSON *j = cJSON_Parse(body);
    if (j == NULL)
        fprintf(stderr, "not JSON: %.300s\n", body);
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

static void expect(int got, int want)
{
    if (got != want)
        fprintf(stderr, "expected %d, got %d: %.500s\n", want, got, body);
    assert_int_equal(got, want);
}

static void create_device(const char *id)
{
    char json[256];
    snprintf(json, sizeof json, "{\"id\":\"%s\",\"name\":\"%s\",\"type\":\"sensor\"}", id, id);
    expect(admin("POST", "/api/v1/devices", json), 201);
}

/* Security events of type about device, through the API. */
static int events(const char *type, const char *device, const char *must_not_contain)
{
    char path[256];
    snprintf(path, sizeof path, "/api/v1/events?kind=security&type=%s&device=%s&limit=1000", type,
             device);
    expect(admin("GET", path, NULL), 200);
    if (must_not_contain != NULL)
        assert_null(strstr(body, must_not_contain));
    cJSON *j = answer();
    int n = cJSON_GetArraySize(cJSON_GetObjectItemCaseSensitive(j, "data"));
    cJSON_Delete(j);
    return n;
}

/* Certificates registered for a device, through the API. */
static int registered(const char *id)
{
    char path[128];
    snprintf(path, sizeof path, "/api/v1/devices/%s/certificates", id);
    expect(admin("GET", path, NULL), 200);
    cJSON *j = answer();
    int n = cJSON_GetArraySize(cJSON_GetObjectItemCaseSensitive(j, "data"));
    cJSON_Delete(j);
    return n;
}

static int count_cert(const em_pki_cert_t *c, void *ud)
{
    (void)c;
    (*(size_t *)ud)++;
    return 0;
}

/* Certificates the CA has issued (its index, read by the test). */
static size_t issued(void)
{
    em_pki_t *pki = NULL;
    assert_int_equal(em_pki_open(W.pki_dir, NULL, NULL, &pki, NULL), EM_OK);
    size_t n = 0;
    assert_int_equal(em_pki_list(pki, count_cert, &n, NULL), EM_OK);
    em_pki_free(pki);
    return n;
}

/* ---- the device side ----------------------------------------------------------- */

typedef struct devkey {
    char id[64];
    char key[PATHSZ], csr[PATHSZ], crt[PATHSZ];
    char serial[64];
} devkey_t;

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

static void new_token(const char *id, int ttl, char tok[64])
{
    char path[128], json[64];
    snprintf(path, sizeof path, "/api/v1/devices/%s/enrollment-tokens", id);
    snprintf(json, sizeof json, "{\"ttl\":%d}", ttl);
    expect(admin("POST", path, ttl > 0 ? json : NULL), 201);
    cJSON *j = answer();
    const char *t = jstr(j, "data", "token");
    assert_non_null(t);
    assert_int_equal(strlen(t), 52);
    snprintf(tok, 64, "%s", t);
    cJSON_Delete(j);
}

static int post_enroll(const char *id, const char *tok, const char *csr_text)
{
    cJSON *o = cJSON_CreateObject();
    cJSON_AddStringToObject(o, "deviceId", id);
    cJSON_AddStringToObject(o, "token", tok);
    cJSON_AddStringToObject(o, "csr", csr_text);
    char *s = cJSON_PrintUnformatted(o);
    cJSON_Delete(o);
    int st = req(NULL, "POST", "/api/v1/enroll", s);
    free(s);
    return st;
}

static void enroll_ok(devkey_t *d, const char *id)
{
    snprintf(d->id, sizeof d->id, "%s", id);
    make_csr(d, id, "ec");
    char tok[64];
    new_token(id, 0, tok);
    expect(post_enroll(id, tok, file_text(d->csr)), 201);
    cJSON *j = answer();
    const char *crt = jstr(j, "data", "certificate");
    assert_non_null(crt);
    write_file(d->crt, crt, strlen(crt));
    snprintf(d->serial, sizeof d->serial, "%s", jstr(j, "data", "serial"));
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

static void get_nonce(const char *id, char nonce[64])
{
    char json[128];
    snprintf(json, sizeof json, "{\"deviceId\":\"%s\"}", id);
    expect(req(NULL, "POST", "/api/v1/auth/challenge", json), 200);
    cJSON *j = answer();
    const char *n = jstr(j, "data", "nonce");
    assert_non_null(n);
    assert_int_equal(strlen(n), 43);
    snprintf(nonce, 64, "%s", n);
    cJSON_Delete(j);
}

/* `openssl dgst -sha256 -sign` over "emiot-device-auth-v1\n<id>\n<nonce>". */
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
    b64url(raw, len, sig, size);
}

static int post_token(const char *id, const char *nonce, const char *sig, const char *cert_file)
{
    cJSON *o = cJSON_CreateObject();
    cJSON_AddStringToObject(o, "deviceId", id);
    cJSON_AddStringToObject(o, "nonce", nonce);
    cJSON_AddStringToObject(o, "signature", sig);
    if (cert_file != NULL)
        cJSON_AddStringToObject(o, "certificate", file_text(cert_file));
    char *s = cJSON_PrintUnformatted(o);
    cJSON_Delete(o);
    int st = req(NULL, "POST", "/api/v1/auth/device-token", s);
    free(s);
    return st;
}

static int login(const char *id, const char *key, const char *cert_file, char *tok, size_t size)
{
    char nonce[64], sig[1400];
    get_nonce(id, nonce);
    sign(key, id, nonce, sig, sizeof sig);
    int st = post_token(id, nonce, sig, cert_file);
    if (st == 200 && tok != NULL) {
        cJSON *j = answer();
        snprintf(tok, size, "%s", jstr(j, "data", "token"));
        assert_string_equal(jstr(j, "data", "tokenType"), "Bearer");
        cJSON_Delete(j);
    }
    return st;
}

/* Revokes serial in the CA directory the daemon uses (as `emiotctl pki
 * revoke` does), then gives the daemon the second it may take to see it. */
static void revoke_serial(const char *serial)
{
    em_pki_t *pki = NULL;
    assert_int_equal(em_pki_open(W.pki_dir, W.secret, NULL, &pki, NULL), EM_OK);
    assert_int_equal(em_pki_revoke(pki, serial, EM_CRL_KEY_COMPROMISE, NULL), EM_OK);
    em_pki_free(pki);
    em_test_sleep_ms(1100);
}

/* A key and certificate issued directly by the CA, valid [nb, na] (0, 0:
 * the default period). */
static void issue(devkey_t *d, const char *cn, int64_t nb, int64_t na)
{
    snprintf(d->id, sizeof d->id, "%s", cn);
    tmp_path(d->key, sizeof d->key, "iss.key");
    tmp_path(d->crt, sizeof d->crt, "iss.crt");
    em_pki_t *pki = NULL;
    assert_int_equal(em_pki_open(W.pki_dir, W.secret, NULL, &pki, NULL), EM_OK);
    em_pki_issue_options_t io;
    memset(&io, 0, sizeof io);
    io.profile = EM_CERT_DEVICE;
    io.common_name = cn;
    io.not_before_ms = nb;
    io.not_after_ms = na;
    char *key = NULL, *crt = NULL;
    em_pki_cert_t info;
    assert_int_equal(em_pki_issue_new_key(pki, &io, &key, &crt, &info, NULL), EM_OK);
    write_file(d->key, key, strlen(key));
    write_file(d->crt, crt, strlen(crt));
    snprintf(d->serial, sizeof d->serial, "%s", info.serial);
    em_keystore_data_free((unsigned char *)key, strlen(key));
    free(crt);
    em_pki_free(pki);
}

static void foreign_cert(devkey_t *d, const char *cn)
{
    char cakey[PATHSZ], cacrt[PATHSZ], ext[PATHSZ];
    tmp_path(cakey, sizeof cakey, "other-ca.key");
    tmp_path(cacrt, sizeof cacrt, "other-ca.crt");
    tmp_path(ext, sizeof ext, "ext");
    const char *ca_argv[] = {
        "openssl", "req",     "-x509", "-newkey", "ec",  "-pkeyopt", "ec_paramgen_curve:P-256",
        "-nodes",  "-keyout", cakey,   "-out",    cacrt, "-subj",    "/CN=other CA",
        "-days",   "30",      NULL};
    assert_int_equal(run_quiet(ca_argv), 0);
    snprintf(d->id, sizeof d->id, "%s", cn);
    make_csr(d, cn, "ec");
    static const char exts[] = "keyUsage = critical, digitalSignature\n"
                               "extendedKeyUsage = clientAuth\n";
    write_file(ext, exts, sizeof exts - 1);
    const char *argv[] = {
        "openssl",         "x509", "-req", "-in",   d->csr, "-CA",      cacrt, "-CAkey", cakey,
        "-CAcreateserial", "-out", d->crt, "-days", "30",   "-extfile", ext,   NULL};
    assert_int_equal(run_quiet(argv), 0);
}

/* ---- set-up ---------------------------------------------------------------------- */

static int start_daemon(int nonce_ttl)
{
    int n = snprintf(W.extra, sizeof W.extra,
                     "[keystore]\nkey_file = %s\n[pki]\ndir = %s\nnonce_ttl = %d\n", W.ks_key,
                     W.pki_dir, nonce_ttl);
    if (n < 0 || (size_t)n >= sizeof W.extra)
        return -1;
    em_test_daemon_options_t o;
    memset(&o, 0, sizeof o);
    o.extra_config = W.extra;
    o.client_ca_file = W.ca;
    return em_test_daemon_start(&W.d, NULL, &o);
}

static int setup(void **state)
{
    (void)state;
    signal(SIGPIPE, SIG_IGN);
    if (em_test_mkdtemp(W.dir, sizeof W.dir) != 0)
        return -1;
    snprintf(W.pki_dir, sizeof W.pki_dir, "%s/ca", W.dir);
    snprintf(W.ca, sizeof W.ca, "%s/ca/ca.crt", W.dir);
    snprintf(W.ks_key, sizeof W.ks_key, "%s/keystore.key", W.dir);
    em_error_t err;
    if (em_keystore_key_file_create(W.ks_key, &err) != EM_OK ||
        em_keystore_secret_key_file(W.ks_key, &W.secret, &err) != EM_OK) {
        fprintf(stderr, "keystore: %s\n", err.message);
        return -1;
    }
    em_pki_init_options_t io;
    em_pki_init_options_init(&io);
    io.common_name = "emiotd enroll test CA";
    io.secret = W.secret;
    if (em_pki_init(W.pki_dir, &io, &err) != EM_OK) {
        fprintf(stderr, "pki: %s\n", err.message);
        return -1;
    }
    return start_daemon(300);
}

static int teardown(void **state)
{
    (void)state;
    em_test_daemon_cleanup(&W.d);
    em_keystore_secret_free(W.secret);
    if (W.dir[0] != '\0')
        em_test_rmtree(W.dir);
    return 0;
}

/* ---- enrollment -------------------------------------------------------------------- */

static void test_enroll_with_an_openssl_csr_gives_a_certificate_openssl_verifies(void **state)
{
    (void)state;
    create_device("e2e-ok");
    size_t before = issued();
    devkey_t d;
    enroll_ok(&d, "e2e-ok");
    assert_int_equal(issued(), before + 1);
    char out[4096];
    const char *argv[] = {"openssl", "verify", "-CAfile", W.ca, d.crt, NULL};
    assert_int_equal(run_capture(argv, out, sizeof out), 0);
    assert_non_null(strstr(out, ": OK"));
    assert_int_equal(registered("e2e-ok"), 1);
    char path[128];
    snprintf(path, sizeof path, "/api/v1/events?kind=audit&type=device_enrolled&device=e2e-ok");
    expect(admin("GET", path, NULL), 200);
    assert_non_null(strstr(body, "device_enrolled"));
}

typedef struct before {
    int events;
    size_t issued;
    int registered;
} before_t;

static before_t snapshot(const char *id)
{
    before_t b = {events("enroll_refused", id, NULL), issued(), registered(id)};
    return b;
}

/* One more enroll_refused event about id (never holding tok), nothing issued,
 * nothing registered. */
static void refused(const before_t *b, const char *id, const char *tok)
{
    assert_int_equal(events("enroll_refused", id, tok), b->events + 1);
    assert_int_equal(issued(), b->issued);
    assert_int_equal(registered(id), b->registered);
}

static void test_enroll_reused_token_is_refused(void **state)
{
    (void)state;
    create_device("e2e-reuse");
    devkey_t d;
    make_csr(&d, "e2e-reuse", "ec");
    char tok[64];
    new_token("e2e-reuse", 0, tok);
    expect(post_enroll("e2e-reuse", tok, file_text(d.csr)), 201);
    before_t b = snapshot("e2e-reuse");
    expect(post_enroll("e2e-reuse", tok, file_text(d.csr)), 401);
    refused(&b, "e2e-reuse", tok);
    expect(admin("GET",
                 "/api/v1/events?kind=security&type=enroll_refused&device=e2e-reuse&severity=high",
                 NULL),
           200);
    assert_non_null(strstr(body, "\"severity\":\"high\""));
}

static void test_enroll_expired_token_is_refused(void **state)
{
    (void)state;
    create_device("e2e-expired");
    devkey_t d;
    make_csr(&d, "e2e-expired", "ec");
    char tok[64];
    new_token("e2e-expired", 1, tok);
    em_test_sleep_ms(2100);
    before_t b = snapshot("e2e-expired");
    expect(post_enroll("e2e-expired", tok, file_text(d.csr)), 401);
    refused(&b, "e2e-expired", tok);
}

static void test_enroll_token_of_device_a_used_for_b_is_refused(void **state)
{
    (void)state;
    create_device("e2e-a");
    create_device("e2e-b");
    devkey_t d;
    make_csr(&d, "e2e-b", "ec");
    char tok[64];
    new_token("e2e-a", 0, tok);
    before_t b = snapshot("e2e-b");
    expect(post_enroll("e2e-b", tok, file_text(d.csr)), 401);
    refused(&b, "e2e-b", tok);
}

static void test_enroll_csr_cn_mismatch_is_refused(void **state)
{
    (void)state;
    create_device("e2e-cn");
    devkey_t d;
    make_csr(&d, "e2e-not-me", "ec");
    char tok[64];
    new_token("e2e-cn", 0, tok);
    before_t b = snapshot("e2e-cn");
    expect(post_enroll("e2e-cn", tok, file_text(d.csr)), 400);
    assert_non_null(strstr(body, "csr: CN must be the device id"));
    refused(&b, "e2e-cn", tok);
}

static void test_enroll_weak_rsa1024_key_is_refused(void **state)
{
    (void)state;
    create_device("e2e-weak");
    devkey_t d;
    make_csr(&d, "e2e-weak", "rsa:1024");
    char tok[64];
    new_token("e2e-weak", 0, tok);
    before_t b = snapshot("e2e-weak");
    expect(post_enroll("e2e-weak", tok, file_text(d.csr)), 400);
    assert_non_null(strstr(body, "csr: "));
    refused(&b, "e2e-weak", tok);
}

static void test_enroll_csr_with_a_broken_signature_is_refused(void **state)
{
    (void)state;
    create_device("e2e-badsig");
    devkey_t d;
    make_csr(&d, "e2e-badsig", "ec");
    BIO *in = BIO_new_file(d.csr, "r");
    X509_REQ *x = PEM_read_bio_X509_REQ(in, NULL, NULL, NULL);
    BIO_free(in);
    assert_non_null(x);
    unsigned char *der = NULL;
    int len = i2d_X509_REQ(x, &der);
    X509_REQ_free(x);
    der[len - 1] ^= 0x01;
    BIO *out = BIO_new(BIO_s_mem());
    assert_true(PEM_write_bio(out, "CERTIFICATE REQUEST", "", der, len) > 0);
    OPENSSL_free(der);
    char *p = NULL;
    long n = BIO_get_mem_data(out, &p);
    char *bad = strndup(p, (size_t)n);
    BIO_free(out);
    char tok[64];
    new_token("e2e-badsig", 0, tok);
    before_t b = snapshot("e2e-badsig");
    expect(post_enroll("e2e-badsig", tok, bad), 400);
    free(bad);
    assert_non_null(strstr(body, "csr: signature does not verify"));
    refused(&b, "e2e-badsig", tok);
}

static void test_enroll_disabled_device_is_refused(void **state)
{
    (void)state;
    create_device("e2e-off");
    devkey_t d;
    make_csr(&d, "e2e-off", "ec");
    char tok[64];
    new_token("e2e-off", 0, tok);
    expect(admin("PATCH", "/api/v1/devices/e2e-off", "{\"enabled\":false}"), 200);
    before_t b = snapshot("e2e-off");
    expect(post_enroll("e2e-off", tok, file_text(d.csr)), 403);
    refused(&b, "e2e-off", tok);
}

static void test_enroll_unknown_token_is_refused(void **state)
{
    (void)state;
    create_device("e2e-unknown");
    devkey_t d;
    make_csr(&d, "e2e-unknown", "ec");
    const char *tok = "enr_0123456789abcdef0123456789abcdef0123456789abcdef";
    before_t b = snapshot("e2e-unknown");
    expect(post_enroll("e2e-unknown", tok, file_text(d.csr)), 401);
    refused(&b, "e2e-unknown", tok);
}

/* ---- challenge-response --------------------------------------------------------------- */

/* The daemon's JWT signing key is sealed with the keystore: its public half,
 * as PEM, into path. */
static void jwt_public_key(const char *path)
{
    char jwt_key[EM_TEST_PATH_MAX + 16];
    snprintf(jwt_key, sizeof jwt_key, "%s/jwt.key", W.d.data_dir);
    EVP_PKEY *k = NULL;
    em_error_t err;
    if (em_key_load(jwt_key, W.secret, NULL, true, &k, &err) != EM_OK)
        fail_msg("JWT key: %s", err.message);
    BIO *b = BIO_new_file(path, "w");
    assert_non_null(b);
    assert_int_equal(PEM_write_bio_PUBKEY(b, k), 1);
    BIO_free(b);
    EVP_PKEY_free(k);
}

static void test_device_token_works_on_its_own_device_and_pyjwt_verifies_it(void **state)
{
    (void)state;
    create_device("e2e-cr");
    create_device("e2e-cr-other");
    devkey_t d;
    enroll_ok(&d, "e2e-cr");
    char tok[4096];
    expect(login("e2e-cr", d.key, NULL, tok, sizeof tok), 200);
    expect(req(tok, "GET", "/api/v1/devices/e2e-cr", NULL), 200);
    expect(req(tok, "GET", "/api/v1/devices/e2e-cr-other", NULL), 403);
    expect(req(tok, "GET", "/api/v1/devices", NULL), 403);

    char pub[PATHSZ], py[PATHSZ], out[8192];
    tmp_path(pub, sizeof pub, "jwt.pub");
    jwt_public_key(pub);
    static const char prog[] =
        "import sys, json, jwt\n"
        "from cryptography.hazmat.primitives.serialization import load_pem_public_key\n"
        "key = load_pem_public_key(open(sys.argv[1], 'rb').read())\n"
        "c = jwt.decode(sys.argv[2], key, algorithms=['ES256'], audience='emiot-api',\n"
        "               issuer='emiotd')\n"
        "sys.stdout.write(json.dumps(c))\n";
    tmp_path(py, sizeof py, "verify.py");
    write_file(py, prog, sizeof prog - 1);
    const char *argv[] = {PYTHON, py, pub, tok, NULL};
    int rc = run_capture(argv, out, sizeof out);
    if (rc != 0)
        fprintf(stderr, "pyjwt: %s\n", out);
    assert_int_equal(rc, 0);
    cJSON *c = cJSON_Parse(out);
    assert_non_null(c);
    assert_string_equal(jstr(c, "sub", NULL), "e2e-cr");
    assert_string_equal(jstr(c, "role", NULL), "device");
    assert_string_equal(jstr(c, "iss", NULL), "emiotd");
    assert_string_equal(jstr(c, "aud", NULL), "emiot-api");
    const cJSON *caps = cJSON_GetObjectItemCaseSensitive(c, "caps");
    assert_true(cJSON_IsArray(caps));
    assert_int_equal(cJSON_GetArraySize(caps), 4);
    assert_string_equal(cJSON_GetArrayItem(caps, 0)->valuestring, "device:read");
    double iat = cJSON_GetObjectItemCaseSensitive(c, "iat")->valuedouble;
    double exp = cJSON_GetObjectItemCaseSensitive(c, "exp")->valuedouble;
    assert_true(exp - iat == 86400);
    assert_true(exp - (double)time(NULL) > 86400 - 120);
    cJSON_Delete(c);
}

static void test_device_token_reused_nonce_is_refused(void **state)
{
    (void)state;
    create_device("e2e-nreuse");
    devkey_t d;
    enroll_ok(&d, "e2e-nreuse");
    char nonce[64], sig[1400];
    get_nonce("e2e-nreuse", nonce);
    sign(d.key, "e2e-nreuse", nonce, sig, sizeof sig);
    expect(post_token("e2e-nreuse", nonce, sig, NULL), 200);
    int n = events("device_auth_refused", "e2e-nreuse", NULL);
    expect(post_token("e2e-nreuse", nonce, sig, NULL), 401);
    assert_int_equal(events("device_auth_refused", "e2e-nreuse", nonce), n + 1);
}

static void test_device_token_nonce_asked_for_a_used_for_b_is_refused(void **state)
{
    (void)state;
    create_device("e2e-na");
    create_device("e2e-nb");
    devkey_t b;
    enroll_ok(&b, "e2e-nb");
    char nonce[64], sig[1400];
    get_nonce("e2e-na", nonce);
    sign(b.key, "e2e-nb", nonce, sig, sizeof sig);
    int n = events("device_auth_refused", "e2e-nb", NULL);
    expect(post_token("e2e-nb", nonce, sig, NULL), 401);
    assert_int_equal(events("device_auth_refused", "e2e-nb", NULL), n + 1);
}

static void test_device_token_signature_by_another_key_is_refused(void **state)
{
    (void)state;
    create_device("e2e-okey");
    devkey_t d, x;
    enroll_ok(&d, "e2e-okey");
    make_csr(&x, "e2e-okey", "ec");
    int n = events("device_auth_refused", "e2e-okey", NULL);
    expect(login("e2e-okey", x.key, NULL, NULL, 0), 401);
    assert_int_equal(events("device_auth_refused", "e2e-okey", NULL), n + 1);
}

static void test_device_token_revoked_certificate_is_refused(void **state)
{
    (void)state;
    create_device("e2e-rev");
    devkey_t d;
    enroll_ok(&d, "e2e-rev");
    expect(login("e2e-rev", d.key, NULL, NULL, 0), 200);
    revoke_serial(d.serial);
    int n = events("device_auth_refused", "e2e-rev", NULL);
    expect(login("e2e-rev", d.key, NULL, NULL, 0), 401);
    assert_int_equal(events("device_auth_refused", "e2e-rev", NULL), n + 1);
}

static void test_device_token_certificate_of_another_ca_is_refused(void **state)
{
    (void)state;
    create_device("e2e-foreign");
    devkey_t f;
    foreign_cert(&f, "e2e-foreign");
    int n = events("device_auth_refused", "e2e-foreign", NULL);
    expect(login("e2e-foreign", f.key, f.crt, NULL, 0), 401);
    assert_int_equal(events("device_auth_refused", "e2e-foreign", NULL), n + 1);
    assert_int_equal(registered("e2e-foreign"), 0);
}

/* ---- client certificates on the API ------------------------------------------------------ */

static int with_cert(const devkey_t *d, const char *path)
{
    return em_test_daemon_request_cert(&W.d, d->crt, d->key, NULL, "GET", path, NULL, body,
                                       sizeof body);
}

static void test_client_certificate_valid_works_revoked_does_not(void **state)
{
    (void)state;
    create_device("e2e-cc");
    devkey_t d;
    enroll_ok(&d, "e2e-cc");
    expect(with_cert(&d, "/api/v1/devices/e2e-cc"), 200);
    expect(with_cert(&d, "/api/v1/whoami"), 200);
    assert_non_null(strstr(body, "\"method\":\"certificate\""));
    revoke_serial(d.serial);
    int st = with_cert(&d, "/api/v1/devices/e2e-cc");
    assert_true(st == 401 || st == -1);
    /* By now the listener's TLS context holds the new CRL. */
    assert_int_equal(with_cert(&d, "/api/v1/devices/e2e-cc"), -1);
}

static void test_client_certificate_expired_is_refused(void **state)
{
    (void)state;
    create_device("e2e-ccexp");
    BIO *b = BIO_new_file(W.ca, "r");
    X509 *ca = PEM_read_bio_X509(b, NULL, NULL, NULL);
    BIO_free(b);
    assert_non_null(ca);
    struct tm tm;
    assert_int_equal(ASN1_TIME_to_tm(X509_get0_notBefore(ca), &tm), 1);
    X509_free(ca);
    int64_t nb = (int64_t)timegm(&tm) * 1000;
    devkey_t d;
    issue(&d, "e2e-ccexp", nb, em_now_ms() + 2000);
    em_test_sleep_ms(3100);
    int st = with_cert(&d, "/api/v1/devices/e2e-ccexp");
    assert_true(st == 401 || st == -1);
}

/* Last: it restarts the daemon with a one-second nonce lifetime. */
static void test_device_token_expired_nonce_is_refused(void **state)
{
    (void)state;
    create_device("e2e-nexp");
    devkey_t d;
    enroll_ok(&d, "e2e-nexp");
    int n = snprintf(W.extra, sizeof W.extra,
                     "[keystore]\nkey_file = %s\n[pki]\ndir = %s\nnonce_ttl = 1\n", W.ks_key,
                     W.pki_dir);
    assert_true(n > 0 && (size_t)n < sizeof W.extra);
    assert_int_equal(em_test_daemon_set_extra_config(&W.d, W.extra), 0);
    assert_int_equal(em_test_daemon_restart(&W.d), 0);
    char nonce[64], sig[1400];
    get_nonce("e2e-nexp", nonce);
    sign(d.key, "e2e-nexp", nonce, sig, sizeof sig);
    em_test_sleep_ms(2100);
    int before = events("device_auth_refused", "e2e-nexp", NULL);
    expect(post_token("e2e-nexp", nonce, sig, NULL), 401);
    assert_int_equal(events("device_auth_refused", "e2e-nexp", NULL), before + 1);
}

/* After all of it the daemon stops cleanly (under the sanitizers: no leak,
 * no error on the way out). */
static void test_daemon_stops_cleanly(void **state)
{
    (void)state;
    int rc = em_test_daemon_stop(&W.d);
    if (rc != 0)
        em_test_daemon_print_log(&W.d);
    assert_int_equal(rc, 0);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_enroll_with_an_openssl_csr_gives_a_certificate_openssl_verifies),
        cmocka_unit_test(test_enroll_reused_token_is_refused),
        cmocka_unit_test(test_enroll_expired_token_is_refused),
        cmocka_unit_test(test_enroll_token_of_device_a_used_for_b_is_refused),
        cmocka_unit_test(test_enroll_csr_cn_mismatch_is_refused),
        cmocka_unit_test(test_enroll_weak_rsa1024_key_is_refused),
        cmocka_unit_test(test_enroll_csr_with_a_broken_signature_is_refused),
        cmocka_unit_test(test_enroll_disabled_device_is_refused),
        cmocka_unit_test(test_enroll_unknown_token_is_refused),
        cmocka_unit_test(test_device_token_works_on_its_own_device_and_pyjwt_verifies_it),
        cmocka_unit_test(test_device_token_reused_nonce_is_refused),
        cmocka_unit_test(test_device_token_nonce_asked_for_a_used_for_b_is_refused),
        cmocka_unit_test(test_device_token_signature_by_another_key_is_refused),
        cmocka_unit_test(test_device_token_revoked_certificate_is_refused),
        cmocka_unit_test(test_device_token_certificate_of_another_ca_is_refused),
        cmocka_unit_test(test_client_certificate_valid_works_revoked_does_not),
        cmocka_unit_test(test_client_certificate_expired_is_refused),
        cmocka_unit_test(test_device_token_expired_nonce_is_refused),
        cmocka_unit_test(test_daemon_stops_cleanly),
    };
    return cmocka_run_group_tests(tests, setup, teardown);
}
