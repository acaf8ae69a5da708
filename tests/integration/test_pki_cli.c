/*
 * emiot tests - emiotctl pki and emiotctl keystore, run as an operator runs
 * them: the built binary as a child process, secrets in the environment or in
 * 0600 files, and the results checked with the openssl command line (verify,
 * crl, req, x509) and python3's cryptography (an operator's own CA).
 *
 * One CA directory is shared by the file (made by the first test, as
 * `pki init`); each test uses its own certificate names. Every run checks
 * that no secret (the passphrases, a private key) reached stdout or stderr.
 */
#include <dirent.h>
#include <fcntl.h>
#include <setjmp.h>
#include <signal.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <cjson/cJSON.h>
#include <cmocka.h>

#include "broker.h"
#include "cli.h"
#include "testutil.h"

#define CTL_BIN    EM_TEST_BINARY_DIR "/emiotctl"
#define PASS       "correct horse battery staple 42"
#define PASS_NEW   "a brand new passphrase for rekey 7"
#define PASS_WRONG "this is not the passphrase at all"
#define RUN_MS     60000
#define OUT_MAX    262144

static struct {
    char dir[256];
    char ca[EM_TEST_PATH_MAX]; /* the CA directory */
    char out_file[EM_TEST_PATH_MAX];
    char err_file[EM_TEST_PATH_MAX];
    bool ca_ready;
} fx;

/* The children's environment (large: not on the stack). */
static em_test_env_t child_env;

static struct {
    int rc;
    char out[OUT_MAX];
    char err[16384];
} R;

/* ---- helpers ------------------------------------------------------------------ */

/* a/b into out (a/b and suffix), failing the test when it does not fit. */
static void join2(char *out, size_t size, const char *a, const char *b, const char *suffix)
{
    char tmp[EM_TEST_PATH_MAX * 2];
    int n = snprintf(tmp, sizeof tmp, "%s/%s%s", a, b, suffix);
    assert_true(n > 0 && (size_t)n < size);
    memcpy(out, tmp, (size_t)n + 1);
}

static void join(char *out, size_t size, const char *a, const char *b)
{
    join2(out, size, a, b, "");
}

static void path_in(char *out, size_t size, const char *name)
{
    int n = snprintf(out, size, "%s/%s", fx.dir, name);
    assert_true(n > 0 && (size_t)n < size);
}

static void write_file(const char *path, const char *text, mode_t mode)
{
    unlink(path);
    int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC, mode);
    assert_true(fd >= 0);
    assert_int_equal(write(fd, text, strlen(text)), (ssize_t)strlen(text));
    assert_int_equal(fchmod(fd, mode), 0);
    close(fd);
}

static bool exists(const char *path)
{
    struct stat st;
    return lstat(path, &st) == 0;
}

static unsigned mode_of(const char *path)
{
    struct stat st;
    assert_int_equal(stat(path, &st), 0);
    return (unsigned)(st.st_mode & 0777);
}

/* Runs argv (a path, or a name looked up in PATH) with the basic environment
 * and extra ("NAME=value" replaces NAME; "-NAME" removes it); stdout and
 * stderr into R. */
static int run_env(const char *const *extra, const char *const *argv)
{
    static char home[EM_TEST_PATH_MAX + 64], pki[EM_TEST_PATH_MAX + 64];
    snprintf(home, sizeof home, "HOME=%s", fx.dir);
    snprintf(pki, sizeof pki, "EMIOT_PKI_DIR=%s", fx.ca);
    const char *const base[] = {
        home, pki, "EMIOT_KEYSTORE_PASSPHRASE=" PASS,
        "EMIOT_KEYSTORE_SCRYPT_COST=14", /* fast tests; files record their cost */
        NULL};
    em_test_env_build(&child_env, base, extra);
    R.rc = em_test_run_env(child_env.envp, argv, fx.out_file, fx.err_file, RUN_MS);
    em_test_read_file(fx.out_file, R.out, sizeof R.out);
    em_test_read_file(fx.err_file, R.err, sizeof R.err);
    /* Whatever happened, no secret is ever printed. */
    static const char *const secrets[] = {PASS, PASS_NEW, PASS_WRONG, "PRIVATE KEY"};
    if (strcmp(argv[0], CTL_BIN) == 0)
        for (size_t i = 0; i < sizeof secrets / sizeof secrets[0]; i++)
            if (strstr(R.out, secrets[i]) != NULL || strstr(R.err, secrets[i]) != NULL) {
                fprintf(stderr, "a secret (%s...) was printed:\n%s\n%s\n", secrets[i], R.out,
                        R.err);
                fail();
            }
    return R.rc;
}

#define RUN(...)          run_env(NULL, (const char *const[]){__VA_ARGS__, NULL})
#define CTL(...)          run_env(NULL, (const char *const[]){CTL_BIN, __VA_ARGS__, NULL})
#define CTL_ENV(env, ...) run_env((env), (const char *const[]){CTL_BIN, __VA_ARGS__, NULL})

static void dump(int expected)
{
    fprintf(stderr, "exit %d, expected %d\n--- stdout:\n%s\n--- stderr:\n%s\n", R.rc, expected,
            R.out, R.err);
}

#define EXPECT(code, call)                                                                         \
    do {                                                                                           \
        if ((call) != (code)) {                                                                    \
            dump(code);                                                                            \
            fail();                                                                                \
        }                                                                                          \
    } while (0)

#define EXPECT_FAIL(call)                                                                          \
    do {                                                                                           \
        if ((call) == 0) {                                                                         \
            dump(-1);                                                                              \
            fail();                                                                                \
        }                                                                                          \
    } while (0)

static void expect_in(const char *hay, const char *needle)
{
    if (strstr(hay, needle) == NULL) {
        fprintf(stderr, "expected \"%s\" in:\n%s\n", needle, hay);
        fail();
    }
}

/* The string field name of the last run's -o json output (static copy). */
static const char *json_field(const char *name)
{
    static char val[1024];
    cJSON *j = cJSON_Parse(R.out);
    if (j == NULL) {
        fprintf(stderr, "not JSON:\n%s\n", R.out);
        fail();
    }
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(j, name);
    if (!cJSON_IsString(v)) {
        fprintf(stderr, "no string %s in:\n%s\n", name, R.out);
        cJSON_Delete(j);
        fail();
    }
    snprintf(val, sizeof val, "%s", v->valuestring);
    cJSON_Delete(j);
    return val;
}

/* Issues a certificate with a new key: dir/NAME.crt and dir/NAME.key.
 * Returns the serial (static copy). */
static const char *issue(const char *profile, const char *cn, const char *name,
                         const char *const *more)
{
    char crt[EM_TEST_PATH_MAX], key[EM_TEST_PATH_MAX];
    char nc[64], nk[64];
    snprintf(nc, sizeof nc, "%s.crt", name);
    snprintf(nk, sizeof nk, "%s.key", name);
    path_in(crt, sizeof crt, nc);
    path_in(key, sizeof key, nk);
    const char *argv[24] = {CTL_BIN, "-o", "json",       "pki", "issue",     "--profile", profile,
                            "--cn",  cn,   "--out-cert", crt,   "--out-key", key};
    size_t n = 13;
    for (size_t i = 0; more != NULL && more[i] != NULL && n < 22; i++)
        argv[n++] = more[i];
    argv[n] = NULL;
    EXPECT(0, run_env(NULL, argv));
    return json_field("serial");
}

static int ossl_verify(const char *purpose, const char *name, bool crl_check)
{
    char ca[EM_TEST_PATH_MAX], crl[EM_TEST_PATH_MAX], crt[EM_TEST_PATH_MAX], nc[64];
    join(ca, sizeof ca, fx.ca, "ca.crt");
    join(crl, sizeof crl, fx.ca, "crl.pem");
    snprintf(nc, sizeof nc, "%s.crt", name);
    path_in(crt, sizeof crt, nc);
    if (crl_check)
        return RUN("openssl", "verify", "-purpose", purpose, "-CAfile", ca, "-crl_check",
                   "-CRLfile", crl, crt);
    return RUN("openssl", "verify", "-purpose", purpose, "-CAfile", ca, crt);
}

/* Makes dir/NAME.csr (and NAME.key) with openssl req. */
static void make_csr(const char *name, const char *cn, const char *newkey, const char *pkeyopt)
{
    char csr[EM_TEST_PATH_MAX], key[EM_TEST_PATH_MAX], subj[128], nc[64], nk[64];
    snprintf(nc, sizeof nc, "%s.csr", name);
    snprintf(nk, sizeof nk, "%s.key", name);
    path_in(csr, sizeof csr, nc);
    path_in(key, sizeof key, nk);
    snprintf(subj, sizeof subj, "/CN=%s", cn);
    if (pkeyopt != NULL)
        EXPECT(0, RUN("openssl", "req", "-new", "-newkey", newkey, "-pkeyopt", pkeyopt, "-nodes",
                      "-keyout", key, "-subj", subj, "-out", csr));
    else
        EXPECT(0, RUN("openssl", "req", "-new", "-newkey", newkey, "-nodes", "-keyout", key,
                      "-subj", subj, "-out", csr));
}

/* The CA directory's index, for "nothing changed" checks. */
static void snapshot_index(char *buf, size_t size)
{
    char p[EM_TEST_PATH_MAX];
    join(p, sizeof p, fx.ca, "index");
    em_test_read_file(p, buf, size);
}

/* ---- set-up ------------------------------------------------------------------------ */

static int group_setup(void **state)
{
    (void)state;
    memset(&fx, 0, sizeof fx);
    if (access(CTL_BIN, X_OK) != 0) {
        fprintf(stderr, "test_pki_cli: %s is not built\n", CTL_BIN);
        return -1;
    }
    if (em_test_mkdtemp(fx.dir, sizeof fx.dir) != 0)
        return -1;
    join(fx.ca, sizeof fx.ca, fx.dir, "ca");
    join(fx.out_file, sizeof fx.out_file, fx.dir, "run.out");
    join(fx.err_file, sizeof fx.err_file, fx.dir, "run.err");
    return 0;
}

static int group_teardown(void **state)
{
    (void)state;
    em_test_rmtree(fx.dir);
    return 0;
}

/* The shared CA, made once (by the first test that needs it). */
static void need_ca(void)
{
    if (fx.ca_ready)
        return;
    EXPECT(0, CTL("pki", "init", "--cn", "emiot test CA"));
    fx.ca_ready = true;
}

/* ---- pki init --------------------------------------------------------------------- */

static void test_init_without_secret_refused(void **state)
{
    (void)state;
    char d[EM_TEST_PATH_MAX];
    path_in(d, sizeof d, "ca-nosecret");
    const char *const env[] = {"-EMIOT_KEYSTORE_PASSPHRASE", NULL};
    EXPECT(2, CTL_ENV(env, "pki", "init", "--dir", d));
    expect_in(R.err, "EMIOT_KEYSTORE_PASSPHRASE");
    assert_false(exists(d));
}

static void test_init_short_passphrase_refused(void **state)
{
    (void)state;
    char d[EM_TEST_PATH_MAX];
    path_in(d, sizeof d, "ca-short");
    const char *const env[] = {"EMIOT_KEYSTORE_PASSPHRASE=short", NULL};
    EXPECT_FAIL(CTL_ENV(env, "pki", "init", "--dir", d));
    assert_null(strstr(R.err, "short\n"));
    assert_false(exists(d));
}

static void test_init_makes_private_ca_directory(void **state)
{
    (void)state;
    need_ca();
    expect_in(R.out, "emiot test CA");
    char p[EM_TEST_PATH_MAX], buf[8];
    assert_int_equal(mode_of(fx.ca), 0700);
    join(p, sizeof p, fx.ca, "ca.key");
    assert_int_equal(mode_of(p), 0600);
    /* The key is sealed, never plain PEM. */
    em_test_read_file(p, buf, sizeof buf);
    assert_memory_equal(buf, "EMKS", 4);
    join(p, sizeof p, fx.ca, "ca.crt");
    EXPECT(0, RUN("openssl", "x509", "-in", p, "-noout", "-text"));
    expect_in(R.out, "CA:TRUE");
    expect_in(R.out, "Certificate Sign, CRL Sign");
    expect_in(R.out, "ecdsa-with-SHA256");
    expect_in(R.out, "prime256v1");
}

static void test_init_twice_refused_and_ca_kept(void **state)
{
    (void)state;
    need_ca();
    char p[EM_TEST_PATH_MAX], before[8192], after[8192];
    join(p, sizeof p, fx.ca, "ca.crt");
    em_test_read_file(p, before, sizeof before);
    EXPECT(7, CTL("pki", "init"));
    em_test_read_file(p, after, sizeof after);
    assert_string_equal(before, after);
}

/* ---- pki issue ----------------------------------------------------------------------- */

static void test_issue_device_passes_openssl_verify(void **state)
{
    (void)state;
    need_ca();
    const char *serial = issue("device", "dev-001", "dev-001", NULL);
    assert_int_equal(strlen(serial), 32);
    char key[EM_TEST_PATH_MAX], crt[EM_TEST_PATH_MAX];
    path_in(key, sizeof key, "dev-001.key");
    path_in(crt, sizeof crt, "dev-001.crt");
    assert_int_equal(mode_of(key), 0600);
    EXPECT(0, ossl_verify("sslclient", "dev-001", false));
    EXPECT(0, ossl_verify("sslclient", "dev-001", true));
    EXPECT(0, RUN("openssl", "x509", "-in", crt, "-noout", "-subject", "-ext",
                  "keyUsage,extendedKeyUsage,basicConstraints"));
    expect_in(R.out, "CN = dev-001");
    expect_in(R.out, "Digital Signature");
    expect_in(R.out, "TLS Web Client Authentication");
    expect_in(R.out, "CA:FALSE");
    /* The key and certificate belong together. */
    EXPECT(0, RUN("openssl", "x509", "-in", crt, "-noout", "-pubkey"));
    char *pub1 = strdup(R.out);
    assert_non_null(pub1);
    EXPECT(0, RUN("openssl", "pkey", "-in", key, "-pubout"));
    assert_string_equal(pub1, R.out);
    free(pub1);
}

static void test_issue_table_output_names_serial_and_expiry(void **state)
{
    (void)state;
    need_ca();
    char crt[EM_TEST_PATH_MAX], key[EM_TEST_PATH_MAX];
    path_in(crt, sizeof crt, "dev-table.crt");
    path_in(key, sizeof key, "dev-table.key");
    EXPECT(0, CTL("pki", "issue", "--profile", "device", "--cn", "dev-table", "--out-cert", crt,
                  "--out-key", key));
    expect_in(R.out, "Serial");
    expect_in(R.out, "dev-table");
    expect_in(R.out, "Not after");
}

static void test_issue_server_passes_openssl_verify_with_san(void **state)
{
    (void)state;
    need_ca();
    const char *const more[] = {"--dns", "localhost", "--dns", "broker.example.net",
                                "--ip",  "127.0.0.1", NULL};
    issue("server", "broker.example.net", "server1", more);
    EXPECT(0, ossl_verify("sslserver", "server1", true));
    char crt[EM_TEST_PATH_MAX];
    path_in(crt, sizeof crt, "server1.crt");
    EXPECT(0, RUN("openssl", "x509", "-in", crt, "-noout", "-ext", "subjectAltName"));
    expect_in(R.out, "DNS:localhost");
    expect_in(R.out, "DNS:broker.example.net");
    expect_in(R.out, "IP Address:127.0.0.1");
    /* A server certificate is not a client certificate. */
    EXPECT_FAIL(ossl_verify("sslclient", "server1", false));
}

static void test_issue_client_passes_openssl_verify(void **state)
{
    (void)state;
    need_ca();
    issue("client", "emiotd.manager", "manager1", NULL);
    EXPECT(0, ossl_verify("sslclient", "manager1", true));
}

static void test_client_profile_refuses_a_device_id(void **state)
{
    (void)state;
    need_ca();
    char crt[EM_TEST_PATH_MAX], key[EM_TEST_PATH_MAX];
    path_in(crt, sizeof crt, "cli-bad.crt");
    path_in(key, sizeof key, "cli-bad.key");
    EXPECT(7, CTL("pki", "issue", "--profile", "client", "--cn", "manager", "--out-cert", crt,
                  "--out-key", key));
    assert_false(exists(crt));
    assert_false(exists(key));
}

static void test_device_profile_refuses_a_bad_device_id(void **state)
{
    (void)state;
    need_ca();
    char crt[EM_TEST_PATH_MAX], key[EM_TEST_PATH_MAX];
    path_in(crt, sizeof crt, "devbad.crt");
    path_in(key, sizeof key, "devbad.key");
    EXPECT(7, CTL("pki", "issue", "--profile", "device", "--cn", "a/b#c", "--out-cert", crt,
                  "--out-key", key));
    assert_false(exists(crt));
}

static void test_issue_never_overwrites_files(void **state)
{
    (void)state;
    need_ca();
    char crt[EM_TEST_PATH_MAX], key[EM_TEST_PATH_MAX];
    path_in(crt, sizeof crt, "keep.crt");
    path_in(key, sizeof key, "keep.key");
    write_file(key, "do not touch\n", 0600);
    EXPECT(7, CTL("pki", "issue", "--profile", "device", "--cn", "dev-keep", "--out-cert", crt,
                  "--out-key", key));
    char buf[64];
    em_test_read_file(key, buf, sizeof buf);
    assert_string_equal(buf, "do not touch\n");
    assert_false(exists(crt)); /* nothing half made */
    /* and nothing was issued */
    assert_false(strstr(R.out, "dev-keep") != NULL);
    EXPECT(0, CTL("-o", "json", "pki", "list"));
    assert_null(strstr(R.out, "dev-keep"));
}

static void test_openssl_req_csr_accepted(void **state)
{
    (void)state;
    need_ca();
    make_csr("dev-csr", "dev-csr", "ec", "ec_paramgen_curve:P-256");
    char csr[EM_TEST_PATH_MAX], crt[EM_TEST_PATH_MAX];
    path_in(csr, sizeof csr, "dev-csr.csr");
    path_in(crt, sizeof crt, "dev-csr.crt");
    EXPECT(0, CTL("pki", "issue", "--profile", "device", "--cn", "dev-csr", "--csr", csr,
                  "--out-cert", crt));
    EXPECT(0, ossl_verify("sslclient", "dev-csr", true));
    /* Ed25519 and RSA 2048 are accepted too; the CN may come from the CSR. */
    make_csr("dev-ed", "dev-ed", "ed25519", NULL);
    path_in(csr, sizeof csr, "dev-ed.csr");
    path_in(crt, sizeof crt, "dev-ed.crt");
    EXPECT(0, CTL("pki", "issue", "--profile", "device", "--csr", csr, "--out-cert", crt));
    EXPECT(0, ossl_verify("sslclient", "dev-ed", true));
    make_csr("dev-rsa", "dev-rsa", "rsa:2048", NULL);
    path_in(csr, sizeof csr, "dev-rsa.csr");
    path_in(crt, sizeof crt, "dev-rsa.crt");
    EXPECT(0, CTL("pki", "issue", "--profile", "device", "--cn", "dev-rsa", "--csr", csr,
                  "--out-cert", crt));
    EXPECT(0, ossl_verify("sslclient", "dev-rsa", false));
}

static void test_csr_cn_mismatch_refused(void **state)
{
    (void)state;
    need_ca();
    make_csr("mism", "dev-other", "ec", "ec_paramgen_curve:P-256");
    char csr[EM_TEST_PATH_MAX], crt[EM_TEST_PATH_MAX], before[65536], after[65536];
    path_in(csr, sizeof csr, "mism.csr");
    path_in(crt, sizeof crt, "mism.crt");
    snapshot_index(before, sizeof before);
    EXPECT(7, CTL("pki", "issue", "--profile", "device", "--cn", "dev-mine", "--csr", csr,
                  "--out-cert", crt));
    expect_in(R.err, "cn");
    assert_false(exists(crt));
    snapshot_index(after, sizeof after);
    assert_string_equal(before, after);
}

static void test_weak_rsa1024_csr_refused(void **state)
{
    (void)state;
    need_ca();
    make_csr("weak", "dev-weak", "rsa:1024", NULL);
    char csr[EM_TEST_PATH_MAX], crt[EM_TEST_PATH_MAX];
    path_in(csr, sizeof csr, "weak.csr");
    path_in(crt, sizeof crt, "weak.crt");
    EXPECT(7, CTL("pki", "issue", "--profile", "device", "--cn", "dev-weak", "--csr", csr,
                  "--out-cert", crt));
    expect_in(R.err, "key");
    assert_false(exists(crt));
}

static void test_csr_with_broken_signature_refused(void **state)
{
    (void)state;
    need_ca();
    make_csr("forged", "dev-forged", "ec", "ec_paramgen_curve:P-256");
    char csr[EM_TEST_PATH_MAX], crt[EM_TEST_PATH_MAX];
    path_in(csr, sizeof csr, "forged.csr");
    path_in(crt, sizeof crt, "forged.crt");
    /* The last byte of the DER lies in the signature's s value. */
    EXPECT(0, RUN("python3", "-c",
                  "import sys,base64\n"
                  "p=sys.argv[1]; t=open(p).read()\n"
                  "b=t.split('-----')[2]; d=bytearray(base64.b64decode(b))\n"
                  "d[-1]^=1\n"
                  "open(p,'w').write('-----BEGIN CERTIFICATE REQUEST-----\\n'+"
                  "base64.encodebytes(bytes(d)).decode()+'-----END CERTIFICATE REQUEST-----\\n')\n",
                  csr));
    EXPECT(7, CTL("pki", "issue", "--profile", "device", "--cn", "dev-forged", "--csr", csr,
                  "--out-cert", crt));
    assert_false(exists(crt));
}

static void test_issue_usage_errors(void **state)
{
    (void)state;
    need_ca();
    char crt[EM_TEST_PATH_MAX];
    path_in(crt, sizeof crt, "usage.crt");
    /* no --out-key and no --csr: the key would have nowhere to go */
    EXPECT(2, CTL("pki", "issue", "--profile", "device", "--cn", "dev-usage", "--out-cert", crt));
    EXPECT(7, CTL("pki", "issue", "--profile", "gadget", "--cn", "dev-usage", "--out-cert", crt));
    EXPECT(2, CTL("pki", "issue", "--profile", "device", "--cn", "dev-usage", "--out-cert", crt,
                  "--out-key", crt));
    assert_false(exists(crt));
}

/* ---- revoke, crl, list, show ------------------------------------------------------------ */

static void test_revoked_certificate_fails_openssl_crl_check(void **state)
{
    (void)state;
    need_ca();
    char serial[64];
    snprintf(serial, sizeof serial, "%s", issue("device", "dev-rev", "dev-rev", NULL));
    EXPECT(0, ossl_verify("sslclient", "dev-rev", true));
    EXPECT(0, CTL("pki", "revoke", serial, "--reason", "keyCompromise"));
    expect_in(R.out, "SIGHUP");
    EXPECT_FAIL(ossl_verify("sslclient", "dev-rev", true));
    expect_in(R.err, "certificate revoked");
    /* Revoking twice is refused; an unknown serial is not found. */
    EXPECT(7, CTL("pki", "revoke", serial));
    EXPECT(6, CTL("pki", "revoke", "0123456789abcdef0123456789abcdef"));
    EXPECT(7, CTL("pki", "revoke", "not-a-serial"));
    /* The other certificates are still good. */
    EXPECT(0, ossl_verify("sslclient", "dev-001", true));
}

static void test_crl_verifies_with_openssl(void **state)
{
    (void)state;
    need_ca();
    EXPECT(0, CTL("pki", "crl", "--days", "7"));
    char ca[EM_TEST_PATH_MAX], crl[EM_TEST_PATH_MAX];
    join(ca, sizeof ca, fx.ca, "ca.crt");
    join(crl, sizeof crl, fx.ca, "crl.pem");
    EXPECT(0, RUN("openssl", "crl", "-in", crl, "-CAfile", ca, "-noout"));
    expect_in(R.err, "verify OK");
    EXPECT(0, RUN("openssl", "crl", "-in", crl, "-noout", "-text"));
    expect_in(R.out, "X509v3 CRL Number");
    expect_in(R.out, "Next Update");
}

static void test_list_shows_expiry_and_status(void **state)
{
    (void)state;
    need_ca();
    const char *const ten[] = {"--days", "10", NULL};
    issue("device", "dev-soon", "dev-soon", ten);
    char serial[64];
    snprintf(serial, sizeof serial, "%s", issue("device", "dev-gone", "dev-gone", NULL));
    EXPECT(0, CTL("pki", "revoke", serial));

    EXPECT(0, CTL("-o", "json", "pki", "list"));
    cJSON *j = cJSON_Parse(R.out);
    assert_non_null(j);
    assert_true(cJSON_IsArray(j));
    bool soon = false, gone = false;
    const cJSON *row;
    cJSON_ArrayForEach(row, j)
    {
        const char *cn = cJSON_GetStringValue(cJSON_GetObjectItem(row, "commonName"));
        const char *st = cJSON_GetStringValue(cJSON_GetObjectItem(row, "status"));
        assert_non_null(cn);
        assert_non_null(st);
        assert_non_null(cJSON_GetStringValue(cJSON_GetObjectItem(row, "notAfter")));
        if (strcmp(cn, "dev-soon") == 0) {
            soon = true;
            assert_string_equal(st, "valid");
            double left = cJSON_GetNumberValue(cJSON_GetObjectItem(row, "daysLeft"));
            assert_true(left >= 9 && left <= 10);
        }
        if (strcmp(cn, "dev-gone") == 0) {
            gone = true;
            assert_string_equal(st, "revoked");
        }
    }
    cJSON_Delete(j);
    assert_true(soon && gone);

    EXPECT(0, CTL("pki", "list"));
    expect_in(R.out, "DAYS LEFT");
    expect_in(R.out, "revoked");
    expect_in(R.out, "dev-soon");

    /* --expiring: those that need renewing soon, and not the revoked ones. */
    EXPECT(0, CTL("-o", "json", "pki", "list", "--expiring", "30"));
    expect_in(R.out, "dev-soon");
    assert_null(strstr(R.out, "dev-gone"));
    assert_null(strstr(R.out, "dev-001"));
}

static void test_list_needs_no_secret(void **state)
{
    (void)state;
    need_ca();
    const char *const env[] = {"-EMIOT_KEYSTORE_PASSPHRASE", NULL};
    EXPECT(0, CTL_ENV(env, "pki", "list"));
    EXPECT(2, CTL_ENV(env, "pki", "crl"));
}

static void test_show_prints_the_certificate(void **state)
{
    (void)state;
    need_ca();
    char serial[64];
    snprintf(serial, sizeof serial, "%s", issue("device", "dev-show", "dev-show", NULL));
    EXPECT(0, CTL("pki", "show", serial));
    char crt[EM_TEST_PATH_MAX], file[8192];
    path_in(crt, sizeof crt, "dev-show.crt");
    em_test_read_file(crt, file, sizeof file);
    assert_string_equal(R.out, file);
    EXPECT(6, CTL("pki", "show", "0123456789abcdef0123456789abcdef"));
}

static void test_missing_ca_directory_is_not_found(void **state)
{
    (void)state;
    char d[EM_TEST_PATH_MAX];
    path_in(d, sizeof d, "no-such-ca");
    EXPECT(6, CTL("pki", "list", "--dir", d));
    const char *const env[] = {"-EMIOT_PKI_DIR", NULL};
    EXPECT(2, CTL_ENV(env, "pki", "list"));
}

/* ---- wrong secrets ------------------------------------------------------------------------ */

static void test_wrong_passphrase_refused_and_nothing_changed(void **state)
{
    (void)state;
    need_ca();
    char before[65536], after[65536], crl_before[8192], crl_after[8192], crl[EM_TEST_PATH_MAX];
    char crt[EM_TEST_PATH_MAX], key[EM_TEST_PATH_MAX];
    join(crl, sizeof crl, fx.ca, "crl.pem");
    path_in(crt, sizeof crt, "wrongpass.crt");
    path_in(key, sizeof key, "wrongpass.key");
    snapshot_index(before, sizeof before);
    em_test_read_file(crl, crl_before, sizeof crl_before);
    const char *const env[] = {"EMIOT_KEYSTORE_PASSPHRASE=" PASS_WRONG, NULL};
    EXPECT_FAIL(CTL_ENV(env, "pki", "issue", "--profile", "device", "--cn", "dev-wrong",
                        "--out-cert", crt, "--out-key", key));
    expect_in(R.err, "wrong passphrase");
    assert_false(exists(crt));
    assert_false(exists(key));
    EXPECT_FAIL(CTL_ENV(env, "pki", "crl"));
    expect_in(R.err, "wrong passphrase");
    snapshot_index(after, sizeof after);
    em_test_read_file(crl, crl_after, sizeof crl_after);
    assert_string_equal(before, after);
    assert_string_equal(crl_before, crl_after);
}

static void test_passphrase_file_must_be_private(void **state)
{
    (void)state;
    need_ca();
    char pf[EM_TEST_PATH_MAX];
    path_in(pf, sizeof pf, "pass.txt");
    write_file(pf, PASS "\n", 0644);
    const char *const env[] = {"-EMIOT_KEYSTORE_PASSPHRASE", NULL};
    EXPECT_FAIL(CTL_ENV(env, "pki", "crl", "--passphrase-file", pf));
    assert_int_equal(chmod(pf, 0600), 0);
    EXPECT(0, CTL_ENV(env, "pki", "crl", "--passphrase-file", pf));
}

/* ---- pki import: the operator's own CA ------------------------------------------------------ */

static void test_import_operator_ca(void **state)
{
    (void)state;
    char d[EM_TEST_PATH_MAX], crt[EM_TEST_PATH_MAX], key[EM_TEST_PATH_MAX];
    path_in(d, sizeof d, "ca-imported");
    path_in(crt, sizeof crt, "op-ca.crt");
    path_in(key, sizeof key, "op-ca.key");
    EXPECT(0, RUN("python3", "-c",
                  "import sys,os,datetime\n"
                  "from cryptography import x509\n"
                  "from cryptography.x509.oid import NameOID\n"
                  "from cryptography.hazmat.primitives import hashes, serialization\n"
                  "from cryptography.hazmat.primitives.asymmetric import ec\n"
                  "k=ec.generate_private_key(ec.SECP256R1())\n"
                  "n=x509.Name([x509.NameAttribute(NameOID.COMMON_NAME,'Operator Root')])\n"
                  "now=datetime.datetime.utcnow()\n"
                  "c=(x509.CertificateBuilder().subject_name(n).issuer_name(n)"
                  ".public_key(k.public_key()).serial_number(x509.random_serial_number())"
                  ".not_valid_before(now-datetime.timedelta(days=30))"
                  ".not_valid_after(now+datetime.timedelta(days=3650))"
                  ".add_extension(x509.BasicConstraints(ca=True,path_length=None),True)"
                  ".add_extension(x509.KeyUsage(False,False,False,False,False,True,True,False,"
                  "False),True)"
                  ".add_extension(x509.SubjectKeyIdentifier.from_public_key(k.public_key()),"
                  "False).sign(k,hashes.SHA256()))\n"
                  "open(sys.argv[1],'wb').write(c.public_bytes(serialization.Encoding.PEM))\n"
                  "fd=os.open(sys.argv[2],os.O_WRONLY|os.O_CREAT|os.O_EXCL,0o600)\n"
                  "os.write(fd,k.private_bytes(serialization.Encoding.PEM,"
                  "serialization.PrivateFormat.PKCS8,serialization.NoEncryption()))\n",
                  crt, key));
    EXPECT(0, CTL("pki", "import", "--dir", d, "--cert", crt, "--key", key));
    expect_in(R.out, "Operator Root");
    char p[EM_TEST_PATH_MAX], buf[8];
    join(p, sizeof p, d, "ca.key");
    em_test_read_file(p, buf, sizeof buf);
    assert_memory_equal(buf, "EMKS", 4);
    /* It issues certificates that chain to the operator's CA. */
    char dc[EM_TEST_PATH_MAX], dk[EM_TEST_PATH_MAX], cadir[EM_TEST_PATH_MAX];
    path_in(dc, sizeof dc, "imp-dev.crt");
    path_in(dk, sizeof dk, "imp-dev.key");
    EXPECT(0, CTL("pki", "issue", "--dir", d, "--profile", "device", "--cn", "imp-dev",
                  "--out-cert", dc, "--out-key", dk));
    join(cadir, sizeof cadir, d, "ca.crt");
    EXPECT(0, RUN("openssl", "verify", "-CAfile", crt, "-purpose", "sslclient", dc));
    EXPECT(0, RUN("openssl", "verify", "-CAfile", cadir, dc));
    /* A non-CA certificate is not imported. */
    char d2[EM_TEST_PATH_MAX];
    path_in(d2, sizeof d2, "ca-bad-import");
    EXPECT(7, CTL("pki", "import", "--dir", d2, "--cert", dc, "--key", dk));
    join(p, sizeof p, d2, "ca.crt");
    assert_false(exists(p));
}

/* ---- keystore ----------------------------------------------------------------------------------
 */

static void make_secret_file(const char *name, char *path, size_t size)
{
    path_in(path, size, name);
    unlink(path);
    EXPECT(0, RUN("openssl", "genpkey", "-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-256",
                  "-out", path));
    assert_int_equal(chmod(path, 0600), 0);
}

static void test_keystore_seal_open_round_trip(void **state)
{
    (void)state;
    char plain[EM_TEST_PATH_MAX], sealed[EM_TEST_PATH_MAX], back[EM_TEST_PATH_MAX];
    make_secret_file("rt.pem", plain, sizeof plain);
    path_in(sealed, sizeof sealed, "rt.ks");
    path_in(back, sizeof back, "rt.back.pem");
    EXPECT(0, CTL("keystore", "seal", "--in", plain, "--out", sealed));
    assert_int_equal(mode_of(sealed), 0600);
    char a[8192], b[8192];
    size_t na = em_test_read_file(plain, a, sizeof a);
    em_test_read_file(sealed, b, sizeof b);
    assert_memory_equal(b, "EMKS", 4);
    assert_null(strstr(b, "PRIVATE KEY"));
    EXPECT(0, CTL("keystore", "verify", "--in", sealed));
    expect_in(R.out, "OK");
    expect_in(R.out, "EC");
    EXPECT(0, CTL("keystore", "open", "--in", sealed, "--out", back));
    assert_int_equal(mode_of(back), 0600);
    size_t nb = em_test_read_file(back, b, sizeof b);
    assert_int_equal(na, nb);
    assert_memory_equal(a, b, na);
    /* open never overwrites */
    EXPECT(7, CTL("keystore", "open", "--in", sealed, "--out", back));
    EXPECT(7, CTL("keystore", "seal", "--in", plain, "--out", sealed));
}

static void test_keystore_wrong_passphrase_is_a_clear_error(void **state)
{
    (void)state;
    char plain[EM_TEST_PATH_MAX], sealed[EM_TEST_PATH_MAX], out[EM_TEST_PATH_MAX];
    make_secret_file("wp.pem", plain, sizeof plain);
    path_in(sealed, sizeof sealed, "wp.ks");
    path_in(out, sizeof out, "wp.out");
    EXPECT(0, CTL("keystore", "seal", "--in", plain, "--out", sealed));
    const char *const env[] = {"EMIOT_KEYSTORE_PASSPHRASE=" PASS_WRONG, NULL};
    EXPECT_FAIL(CTL_ENV(env, "keystore", "open", "--in", sealed, "--out", out));
    expect_in(R.err, "wrong passphrase or key file");
    assert_false(exists(out));
    EXPECT_FAIL(CTL_ENV(env, "keystore", "verify", "--in", sealed));
    expect_in(R.err, "wrong passphrase or key file");
}

static void test_keystore_flipped_byte_is_detected(void **state)
{
    (void)state;
    char plain[EM_TEST_PATH_MAX], sealed[EM_TEST_PATH_MAX], out[EM_TEST_PATH_MAX];
    make_secret_file("fb.pem", plain, sizeof plain);
    path_in(sealed, sizeof sealed, "fb.ks");
    path_in(out, sizeof out, "fb.out");
    EXPECT(0, CTL("keystore", "seal", "--in", plain, "--out", sealed));
    /* One bit of the ciphertext (byte 70, after the 60-byte header). */
    int fd = open(sealed, O_RDWR);
    assert_true(fd >= 0);
    unsigned char c;
    assert_int_equal(pread(fd, &c, 1, 70), 1);
    c ^= 0x01;
    assert_int_equal(pwrite(fd, &c, 1, 70), 1);
    close(fd);
    EXPECT_FAIL(CTL("keystore", "open", "--in", sealed, "--out", out));
    expect_in(R.err, "modified");
    assert_false(exists(out));
    EXPECT_FAIL(CTL("keystore", "verify", "--in", sealed));
    expect_in(R.err, "modified");
    /* A file that is not a keystore at all. */
    EXPECT_FAIL(CTL("keystore", "verify", "--in", plain));
    expect_in(R.err, "not an emiot keystore");
}

static void test_keystore_rekey_changes_the_passphrase(void **state)
{
    (void)state;
    char plain[EM_TEST_PATH_MAX], sealed[EM_TEST_PATH_MAX], out[EM_TEST_PATH_MAX];
    make_secret_file("rk.pem", plain, sizeof plain);
    path_in(sealed, sizeof sealed, "rk.ks");
    path_in(out, sizeof out, "rk.out");
    EXPECT(0, CTL("keystore", "seal", "--in", plain, "--out", sealed));
    /* Without the new passphrase: refused, and the file still opens. */
    EXPECT(2, CTL("keystore", "rekey", "--in", sealed));
    EXPECT(0, CTL("keystore", "verify", "--in", sealed));
    const char *const env[] = {"EMIOT_KEYSTORE_NEW_PASSPHRASE=" PASS_NEW, NULL};
    EXPECT(0, CTL_ENV(env, "keystore", "rekey", "--in", sealed));
    assert_int_equal(mode_of(sealed), 0600);
    EXPECT_FAIL(CTL("keystore", "verify", "--in", sealed));
    expect_in(R.err, "wrong passphrase");
    const char *const newenv[] = {"EMIOT_KEYSTORE_PASSPHRASE=" PASS_NEW, NULL};
    EXPECT(0, CTL_ENV(newenv, "keystore", "open", "--in", sealed, "--out", out));
    char a[8192], b[8192];
    size_t na = em_test_read_file(plain, a, sizeof a);
    size_t nb = em_test_read_file(out, b, sizeof b);
    assert_int_equal(na, nb);
    assert_memory_equal(a, b, na);
    /* A wrong old passphrase changes nothing. */
    char before[8192], after[8192];
    size_t n1 = em_test_read_file(sealed, before, sizeof before);
    EXPECT_FAIL(CTL_ENV(env, "keystore", "rekey", "--in", sealed));
    size_t n2 = em_test_read_file(sealed, after, sizeof after);
    assert_int_equal(n1, n2);
    assert_memory_equal(before, after, n1);
}

static void test_keystore_key_file_round_trip(void **state)
{
    (void)state;
    char kf[EM_TEST_PATH_MAX], plain[EM_TEST_PATH_MAX], sealed[EM_TEST_PATH_MAX],
        out[EM_TEST_PATH_MAX];
    path_in(kf, sizeof kf, "ks.keyfile");
    make_secret_file("kf.pem", plain, sizeof plain);
    path_in(sealed, sizeof sealed, "kf.ks");
    path_in(out, sizeof out, "kf.out");
    EXPECT(0, CTL("keystore", "keyfile", "--out", kf));
    assert_int_equal(mode_of(kf), 0600);
    EXPECT(7, CTL("keystore", "keyfile", "--out", kf)); /* never replaced */
    const char *const env[] = {"-EMIOT_KEYSTORE_PASSPHRASE", NULL};
    EXPECT(0, CTL_ENV(env, "keystore", "seal", "--keystore-key-file", kf, "--in", plain, "--out",
                      sealed));
    /* The passphrase does not open a key-file keystore. */
    EXPECT_FAIL(CTL("keystore", "verify", "--in", sealed));
    EXPECT(0, CTL_ENV(env, "keystore", "open", "--keystore-key-file", kf, "--in", sealed, "--out",
                      out));
    char a[8192], b[8192];
    size_t na = em_test_read_file(plain, a, sizeof a);
    size_t nb = em_test_read_file(out, b, sizeof b);
    assert_int_equal(na, nb);
    assert_memory_equal(a, b, na);
}

static void test_keystore_usage_errors(void **state)
{
    (void)state;
    char p[EM_TEST_PATH_MAX];
    path_in(p, sizeof p, "x.ks");
    EXPECT(2, CTL("keystore", "seal", "--in", p));
    EXPECT(2, CTL("keystore", "seal", "--out", p));
    EXPECT(2, CTL("keystore", "seal", "--in", p, "--out", p));
    /* A passphrase on the command line is not an option. */
    EXPECT(2, CTL("keystore", "seal", "--passphrase", PASS_WRONG, "--in", p, "--out", p));
    assert_null(strstr(R.err, PASS_WRONG));
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_init_without_secret_refused),
        cmocka_unit_test(test_init_short_passphrase_refused),
        cmocka_unit_test(test_init_makes_private_ca_directory),
        cmocka_unit_test(test_init_twice_refused_and_ca_kept),
        cmocka_unit_test(test_issue_device_passes_openssl_verify),
        cmocka_unit_test(test_issue_table_output_names_serial_and_expiry),
        cmocka_unit_test(test_issue_server_passes_openssl_verify_with_san),
        cmocka_unit_test(test_issue_client_passes_openssl_verify),
        cmocka_unit_test(test_client_profile_refuses_a_device_id),
        cmocka_unit_test(test_device_profile_refuses_a_bad_device_id),
        cmocka_unit_test(test_issue_never_overwrites_files),
        cmocka_unit_test(test_openssl_req_csr_accepted),
        cmocka_unit_test(test_csr_cn_mismatch_refused),
        cmocka_unit_test(test_weak_rsa1024_csr_refused),
        cmocka_unit_test(test_csr_with_broken_signature_refused),
        cmocka_unit_test(test_issue_usage_errors),
        cmocka_unit_test(test_revoked_certificate_fails_openssl_crl_check),
        cmocka_unit_test(test_crl_verifies_with_openssl),
        cmocka_unit_test(test_list_shows_expiry_and_status),
        cmocka_unit_test(test_list_needs_no_secret),
        cmocka_unit_test(test_show_prints_the_certificate),
        cmocka_unit_test(test_missing_ca_directory_is_not_found),
        cmocka_unit_test(test_wrong_passphrase_refused_and_nothing_changed),
        cmocka_unit_test(test_passphrase_file_must_be_private),
        cmocka_unit_test(test_import_operator_ca),
        cmocka_unit_test(test_keystore_seal_open_round_trip),
        cmocka_unit_test(test_keystore_wrong_passphrase_is_a_clear_error),
        cmocka_unit_test(test_keystore_flipped_byte_is_detected),
        cmocka_unit_test(test_keystore_rekey_changes_the_passphrase),
        cmocka_unit_test(test_keystore_key_file_round_trip),
        cmocka_unit_test(test_keystore_usage_errors),
    };
    return cmocka_run_group_tests(tests, group_setup, group_teardown);
}
