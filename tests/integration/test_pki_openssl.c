/*
 * emiot tests - test_pki_openssl.c: interoperability of emiot's PKI with the
 * openssl command line. Certificates and CRLs made by libemiot pass
 * `openssl verify` and `openssl crl`; CSRs made by `openssl req` are issued;
 * a device certificate signed by `openssl x509 -req` with the CA's key is
 * accepted by em_verifier_check_device.
 */
#include <fcntl.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cmocka.h>

#include <openssl/pem.h>
#include <openssl/x509.h>

#include "emiot/clock.h"
#include "emiot/pki.h"
#include "testutil.h"

#define PASS    "correct horse battery staple"
#define OUT_MAX 16384

typedef struct fx {
    char tmp[256];
    char dir[300];
    em_keystore_secret_t *secret;
    em_pki_t *pki;
    char out[OUT_MAX]; /* what the last command printed (stdout and stderr) */
} fx_t;

static void path_in(char *buf, size_t size, const char *dir, const char *name)
{
    int n = snprintf(buf, size, "%s/%s", dir, name);
    assert_true(n > 0 && (size_t)n < size);
}

/* Runs argv, collecting stdout and stderr into f->out; the exit status. */
static int run(fx_t *f, const char *const argv[])
{
    int fds[2];
    assert_int_equal(pipe(fds), 0);
    pid_t pid = fork();
    assert_true(pid >= 0);
    if (pid == 0) {
        close(fds[0]);
        dup2(fds[1], 1);
        dup2(fds[1], 2);
        close(fds[1]);
        execvp(argv[0], (char *const *)argv);
        _exit(127);
    }
    close(fds[1]);
    size_t len = 0;
    for (;;) {
        ssize_t r = read(fds[0], f->out + len, sizeof(f->out) - 1 - len);
        if (r <= 0)
            break;
        len += (size_t)r;
        if (len == sizeof(f->out) - 1)
            break;
    }
    f->out[len] = '\0';
    close(fds[0]);
    int st;
    assert_int_equal(waitpid(pid, &st, 0), pid);
    return WIFEXITED(st) ? WEXITSTATUS(st) : -1;
}

static void write_file(const char *path, const char *text)
{
    FILE *fp = fopen(path, "w");
    assert_non_null(fp);
    assert_int_equal(fputs(text, fp) >= 0, 1);
    assert_int_equal(fclose(fp), 0);
}

static char *read_file(const char *path)
{
    FILE *fp = fopen(path, "r");
    assert_non_null(fp);
    char *buf = calloc(1, 65536);
    size_t n = fread(buf, 1, 65535, fp);
    fclose(fp);
    buf[n] = '\0';
    return buf;
}

static int setup(void **state)
{
    fx_t *f = calloc(1, sizeof(*f));
    assert_non_null(f);
    assert_int_equal(em_test_mkdtemp(f->tmp, sizeof(f->tmp)), 0);
    path_in(f->dir, sizeof(f->dir), f->tmp, "ca");
    assert_int_equal(em_keystore_secret_passphrase(PASS, strlen(PASS), &f->secret, NULL), EM_OK);
    assert_int_equal(em_keystore_secret_set_cost(f->secret, EM_KEYSTORE_LOG2N_MIN), EM_OK);
    em_pki_init_options_t o;
    em_pki_init_options_init(&o);
    o.secret = f->secret;
    em_error_t err;
    assert_int_equal(em_pki_init(f->dir, &o, &err), EM_OK);
    assert_int_equal(em_pki_open(f->dir, f->secret, NULL, &f->pki, &err), EM_OK);
    *state = f;
    return 0;
}

static int teardown(void **state)
{
    fx_t *f = *state;
    em_pki_free(f->pki);
    em_keystore_secret_free(f->secret);
    em_test_rmtree(f->tmp);
    free(f);
    return 0;
}

/* Issues a certificate with a new key; writes it to tmp/<file>. */
static void issue_to(fx_t *f, em_cert_profile_t p, const char *cn, const char *file,
                     em_pki_cert_t *info)
{
    em_pki_issue_options_t o;
    memset(&o, 0, sizeof(o));
    o.profile = p;
    o.common_name = cn;
    const char *ips[] = {"127.0.0.1"};
    if (p == EM_CERT_SERVER) {
        o.ip_addresses = ips;
        o.nips = 1;
    }
    char *key = NULL, *cert = NULL;
    em_error_t err;
    em_err_t rc = em_pki_issue_new_key(f->pki, &o, &key, &cert, info, &err);
    if (rc != EM_OK)
        fail_msg("issue %s: %s", cn, err.message);
    char path[512];
    path_in(path, sizeof(path), f->tmp, file);
    write_file(path, cert);
    free(cert);
    em_keystore_data_free((unsigned char *)key, strlen(key));
}

static int openssl_verify(fx_t *f, const char *purpose, const char *file, bool crl)
{
    char cert[512];
    path_in(cert, sizeof(cert), f->tmp, file);
    const char *with_crl[] = {"openssl",
                              "verify",
                              "-x509_strict",
                              "-purpose",
                              purpose,
                              "-CAfile",
                              em_pki_ca_file(f->pki),
                              "-crl_check_all",
                              "-CRLfile",
                              em_pki_crl_file(f->pki),
                              cert,
                              NULL};
    const char *plain[] = {"openssl", "verify",  "-x509_strict",         "-purpose",
                           purpose,   "-CAfile", em_pki_ca_file(f->pki), cert,
                           NULL};
    return run(f, crl ? with_crl : plain);
}

static void test_openssl_verifies_every_profile(void **state)
{
    fx_t *f = *state;
    issue_to(f, EM_CERT_DEVICE, "sensor-01", "device.pem", NULL);
    issue_to(f, EM_CERT_SERVER, "broker.local", "server.pem", NULL);
    issue_to(f, EM_CERT_CLIENT, "emiotd.manager", "client.pem", NULL);
    const char *files[] = {"device.pem", "server.pem", "client.pem"};
    const char *purposes[] = {"sslclient", "sslserver", "sslclient"};
    for (int i = 0; i < 3; i++) {
        for (int crl = 0; crl <= 1; crl++) {
            if (openssl_verify(f, purposes[i], files[i], crl) != 0 ||
                strstr(f->out, ": OK") == NULL)
                fail_msg("openssl verify %s (crl %d): %s", files[i], crl, f->out);
        }
    }
    /* And the usages are exclusive: a device certificate is no server's. */
    assert_int_not_equal(openssl_verify(f, "sslserver", "device.pem", false), 0);
    assert_int_not_equal(openssl_verify(f, "sslclient", "server.pem", false), 0);
}

static void test_openssl_says_revoked_after_revoke(void **state)
{
    fx_t *f = *state;
    em_pki_cert_t info;
    issue_to(f, EM_CERT_DEVICE, "sensor-01", "device.pem", &info);
    issue_to(f, EM_CERT_DEVICE, "sensor-02", "other.pem", NULL);
    em_error_t err;
    assert_int_equal(em_pki_revoke(f->pki, info.serial, EM_CRL_KEY_COMPROMISE, &err), EM_OK);
    assert_int_not_equal(openssl_verify(f, "sslclient", "device.pem", true), 0);
    if (strstr(f->out, "certificate revoked") == NULL)
        fail_msg("openssl verify: %s", f->out);
    /* The other certificate is still good. */
    assert_int_equal(openssl_verify(f, "sslclient", "other.pem", true), 0);
    /* Without the CRL, openssl cannot know. */
    assert_int_equal(openssl_verify(f, "sslclient", "device.pem", false), 0);
}

static void test_openssl_verifies_the_crl(void **state)
{
    fx_t *f = *state;
    em_pki_cert_t info;
    issue_to(f, EM_CERT_DEVICE, "sensor-01", "device.pem", &info);
    em_error_t err;
    assert_int_equal(em_pki_revoke(f->pki, info.serial, EM_CRL_KEY_COMPROMISE, &err), EM_OK);
    const char *verify[] = {
        "openssl", "crl", "-in", em_pki_crl_file(f->pki), "-CAfile", em_pki_ca_file(f->pki),
        "-noout",  NULL};
    if (run(f, verify) != 0 || strstr(f->out, "verify OK") == NULL)
        fail_msg("openssl crl: %s", f->out);
    const char *text[] = {"openssl", "crl",   "-in", em_pki_crl_file(f->pki),
                          "-noout",  "-text", NULL};
    assert_int_equal(run(f, text), 0);
    assert_non_null(strstr(f->out, "Version 2"));
    assert_non_null(strstr(f->out, "X509v3 CRL Number"));
    assert_non_null(strstr(f->out, "X509v3 Authority Key Identifier"));
    assert_non_null(strstr(f->out, "Key Compromise"));
    /* openssl prints the serial in upper case. */
    char upper[EM_PKI_SERIAL_LEN + 1];
    for (size_t i = 0; i <= EM_PKI_SERIAL_LEN; i++)
        upper[i] = (char)(info.serial[i] >= 'a' ? info.serial[i] - 32 : info.serial[i]);
    const char *skip = upper;
    while (skip[0] == '0' && skip[1] == '0')
        skip += 2; /* openssl drops leading zero bytes */
    if (strstr(f->out, skip) == NULL)
        fail_msg("serial %s not in the CRL: %s", info.serial, f->out);
    /* A CRL from another CA does not verify against ours. */
    char other[512];
    path_in(other, sizeof(other), f->tmp, "other");
    em_pki_init_options_t o;
    em_pki_init_options_init(&o);
    o.secret = f->secret;
    assert_int_equal(em_pki_init(other, &o, &err), EM_OK);
    char other_crl[600];
    path_in(other_crl, sizeof(other_crl), other, "crl.pem");
    const char *foreign[] = {"openssl", "crl", "-in", other_crl, "-CAfile", em_pki_ca_file(f->pki),
                             "-noout",  NULL};
    run(f, foreign);
    assert_null(strstr(f->out, "verify OK"));
}

static void test_a_csr_made_by_openssl_req_is_issued(void **state)
{
    fx_t *f = *state;
    char key[512], csr[512], crt[512];
    path_in(key, sizeof(key), f->tmp, "dev.key");
    path_in(csr, sizeof(csr), f->tmp, "dev.csr");
    path_in(crt, sizeof(crt), f->tmp, "dev.pem");
    const char *req[] = {
        "openssl", "req",     "-new", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256",
        "-nodes",  "-keyout", key,    "-out",    csr,  "-subj",    "/CN=sensor-01",
        NULL};
    if (run(f, req) != 0)
        fail_msg("openssl req: %s", f->out);
    char *pem = read_file(csr);
    em_pki_issue_options_t o;
    memset(&o, 0, sizeof(o));
    o.profile = EM_CERT_DEVICE;
    o.common_name = "sensor-01";
    char *cert = NULL;
    em_error_t err;
    assert_int_equal(em_pki_issue_csr(f->pki, &o, pem, strlen(pem), &cert, NULL, &err), EM_OK);
    write_file(crt, cert);
    /* The certificate carries the key openssl made. */
    const char *check[] = {"openssl", "x509", "-in", crt, "-noout", "-pubkey", NULL};
    assert_int_equal(run(f, check), 0);
    char from_cert[OUT_MAX];
    memcpy(from_cert, f->out, sizeof(from_cert));
    const char *pub[] = {"openssl", "pkey", "-in", key, "-pubout", NULL};
    assert_int_equal(run(f, pub), 0);
    assert_string_equal(from_cert, f->out);
    assert_int_equal(openssl_verify(f, "sslclient", "dev.pem", true), 0);
    free(cert);
    free(pem);

    /* An RSA-1024 request from openssl is refused for its key. */
    const char *weak[] = {"openssl", "req",           "-new", "-newkey", "rsa:1024",
                          "-nodes",  "-keyout",       key,    "-out",    csr,
                          "-subj",   "/CN=sensor-01", NULL};
    if (run(f, weak) != 0)
        fail_msg("openssl req rsa:1024: %s", f->out);
    pem = read_file(csr);
    assert_int_equal(em_pki_issue_csr(f->pki, &o, pem, strlen(pem), &cert, NULL, &err),
                     EM_ERR_VALIDATION);
    assert_string_equal(err.field, "key");
    assert_null(cert);
    free(pem);
}

static em_err_t registered(const char *id, void *userdata)
{
    return strcmp(id, (const char *)userdata) == 0 ? EM_OK : EM_ERR_DEVICE_NOT_FOUND;
}

static void test_a_device_certificate_made_by_openssl_x509_is_accepted(void **state)
{
    fx_t *f = *state;
    /* A CA made with openssl, whose plain key we keep, imported into emiot. */
    char ca_key[512], ca_crt[512], dir[512];
    path_in(ca_key, sizeof(ca_key), f->tmp, "op.key");
    path_in(ca_crt, sizeof(ca_crt), f->tmp, "op.crt");
    path_in(dir, sizeof(dir), f->tmp, "imported");
    const char *mkca[] = {"openssl",
                          "req",
                          "-x509",
                          "-newkey",
                          "ec",
                          "-pkeyopt",
                          "ec_paramgen_curve:P-256",
                          "-nodes",
                          "-keyout",
                          ca_key,
                          "-out",
                          ca_crt,
                          "-days",
                          "30",
                          "-subj",
                          "/CN=Operator CA",
                          "-addext",
                          "basicConstraints=critical,CA:TRUE",
                          "-addext",
                          "keyUsage=critical,keyCertSign,cRLSign",
                          NULL};
    if (run(f, mkca) != 0)
        fail_msg("openssl req -x509: %s", f->out);
    assert_int_equal(chmod(ca_key, 0600), 0);
    em_error_t err;
    em_err_t rc = em_pki_import(dir, ca_crt, ca_key, f->secret, NULL, 0, &err);
    if (rc != EM_OK)
        fail_msg("import: %s", err.message);
    em_pki_t *op = NULL;
    assert_int_equal(em_pki_open(dir, NULL, NULL, &op, &err), EM_OK);

    /* The device's key and CSR, and its certificate, all by openssl. */
    char key[512], csr[512], crt[512], ext[512], srl[512];
    path_in(key, sizeof(key), f->tmp, "dev.key");
    path_in(csr, sizeof(csr), f->tmp, "dev.csr");
    path_in(crt, sizeof(crt), f->tmp, "dev.pem");
    path_in(ext, sizeof(ext), f->tmp, "dev.ext");
    path_in(srl, sizeof(srl), f->tmp, "op.srl");
    write_file(ext, "basicConstraints=critical,CA:FALSE\n"
                    "keyUsage=critical,digitalSignature\n"
                    "extendedKeyUsage=clientAuth\n");
    const char *req[] = {
        "openssl", "req",     "-new", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256",
        "-nodes",  "-keyout", key,    "-out",    csr,  "-subj",    "/CN=plug-42",
        NULL};
    assert_int_equal(run(f, req), 0);
    const char *sign[] = {"openssl",
                          "x509",
                          "-req",
                          "-in",
                          csr,
                          "-CA",
                          em_pki_ca_file(op),
                          "-CAkey",
                          ca_key,
                          "-CAserial",
                          srl,
                          "-CAcreateserial",
                          "-days",
                          "7",
                          "-sha256",
                          "-extfile",
                          ext,
                          "-out",
                          crt,
                          NULL};
    if (run(f, sign) != 0)
        fail_msg("openssl x509 -req: %s", f->out);
    char *pem = read_file(crt);

    em_verifier_t *v = NULL;
    assert_int_equal(em_verifier_new(em_pki_ca_file(op), em_pki_crl_file(op), &v, &err), EM_OK);
    BIO *bio = BIO_new_mem_buf(pem, -1);
    X509 *x = PEM_read_bio_X509(bio, NULL, NULL, NULL);
    BIO_free(bio);
    assert_non_null(x);
    em_cert_identity_t id;
    rc = em_verifier_check_device(v, x, NULL, em_now_ms(), registered, "plug-42", &id, &err);
    if (rc != EM_OK)
        fail_msg("check_device: %s", err.message);
    assert_string_equal(id.common_name, "plug-42");
    /* Registered under another id: refused. */
    assert_int_equal(
        em_verifier_check_device(v, x, NULL, em_now_ms(), registered, "plug-43", &id, &err),
        EM_ERR_CERTIFICATE);
    assert_string_equal(err.message, "device not registered");
    X509_free(x);
    free(pem);

    /* Signed by openssl without the device profile's extensions: refused. */
    const char *bare[] = {"openssl", "x509", "-req",      "-in", csr,     "-CA", em_pki_ca_file(op),
                          "-CAkey",  ca_key, "-CAserial", srl,   "-days", "7",   "-out",
                          crt,       NULL};
    assert_int_equal(run(f, bare), 0);
    pem = read_file(crt);
    rc = em_verifier_check_pem(v, pem, strlen(pem), EM_CERT_DEVICE, em_now_ms(), &id, &err);
    assert_int_equal(rc, EM_ERR_CERTIFICATE);
    assert_string_equal(err.message, "key usage");
    free(pem);
    em_verifier_free(v);
    em_pki_free(op);
}

int main(void)
{
#define T(name) cmocka_unit_test_setup_teardown(name, setup, teardown)
    const struct CMUnitTest tests[] = {
        T(test_openssl_verifies_every_profile),
        T(test_openssl_says_revoked_after_revoke),
        T(test_openssl_verifies_the_crl),
        T(test_a_csr_made_by_openssl_req_is_issued),
        T(test_a_device_certificate_made_by_openssl_x509_is_accepted),
    };
#undef T
    return cmocka_run_group_tests(tests, NULL, NULL);
}
