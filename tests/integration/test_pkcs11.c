/*
 * emiot tests - test_pkcs11.c: private keys in an HSM (keystore.h), against a
 * real SoftHSM2 token in a private directory: a P-256 key made with OpenSC's
 * pkcs11-tool is loaded by URI, signs (digests and certificates) and is
 * checked with the public key the token exports; a wrong PIN, an unknown key
 * and malformed URIs fail as documented; and a CA whose key lives in the
 * token issues a device certificate that `openssl verify` accepts.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cmocka.h>

#include <openssl/evp.h>
#include <openssl/x509.h>

#include "broker.h"
#include "emiot/emiot.h"
#include "emiot/keystore.h"
#include "emiot/pki.h"
#include "testutil.h"

#define MODULE  "/usr/lib/softhsm/libsofthsm2.so"
#define PIN     "271828"
#define SO_PIN  "31415926"
#define KEY_URI "pkcs11:token=emiot-test;object=ca-key"

static char dir[256];
static char pubkey_file[320];
static bool have_hsm;

static void path_in(const char *name, char *buf, size_t size)
{
    int n = snprintf(buf, size, "%s/%s", dir, name);
    assert_true(n > 0 && (size_t)n < size);
}

/* One token for the whole file: initialising one takes a while. */
static int group_setup(void **state)
{
    (void)state;
    if (access(MODULE, R_OK) != 0)
        return 0; /* have_hsm stays false: every test skips */
    if (em_test_mkdtemp(dir, sizeof dir) != 0)
        return -1;
    char conf[320], tokens[320], text[400];
    snprintf(conf, sizeof conf, "%s/softhsm2.conf", dir);
    snprintf(tokens, sizeof tokens, "%s/tokens", dir);
    snprintf(pubkey_file, sizeof pubkey_file, "%s/ca-key.pub.der", dir);
    if (mkdir(tokens, 0700) != 0)
        return -1;
    FILE *fp = fopen(conf, "w");
    if (fp == NULL)
        return -1;
    snprintf(text, sizeof text,
             "directories.tokendir = %s\nobjectstore.backend = file\nlog.level = ERROR\n", tokens);
    fputs(text, fp);
    fclose(fp);
    /* The module reads its configuration when it is initialised: the child
     * processes and this process's em_pkcs11_open all see this one. */
    if (setenv("SOFTHSM2_CONF", conf, 1) != 0)
        return -1;
    const char *init[] = {
        "softhsm2-util", "--init-token", "--free", "--label", "emiot-test", "--pin", PIN,
        "--so-pin",      SO_PIN,         NULL};
    const char *keygen[] = {"pkcs11-tool",
                            "--module",
                            MODULE,
                            "--token-label",
                            "emiot-test",
                            "--login",
                            "--pin",
                            PIN,
                            "--keypairgen",
                            "--key-type",
                            "EC:prime256v1",
                            "--label",
                            "ca-key",
                            "--id",
                            "01",
                            NULL};
    const char *readpub[] = {"pkcs11-tool", "--module",
                             MODULE,        "--token-label",
                             "emiot-test",  "--read-object",
                             "--type",      "pubkey",
                             "--id",        "01",
                             "-o",          pubkey_file,
                             NULL};
    if (em_test_run(init) != 0 || em_test_run(keygen) != 0 || em_test_run(readpub) != 0)
        return -1;
    have_hsm = true;
    return 0;
}

static int group_teardown(void **state)
{
    (void)state;
    if (dir[0] != '\0')
        em_test_rmtree(dir);
    return 0;
}

#define NEED_HSM()                                                                                 \
    do {                                                                                           \
        if (!have_hsm)                                                                             \
            skip();                                                                                \
    } while (0)

static em_pkcs11_t *hsm_open(const char *pin)
{
    em_pkcs11_t *h = NULL;
    em_error_t err;
    assert_int_equal(em_pkcs11_open(MODULE, pin, strlen(pin), &h, &err), EM_OK);
    return h;
}

/* The public key as the token exports it (pkcs11-tool --read-object). */
static EVP_PKEY *token_public_key(void)
{
    unsigned char der[512];
    FILE *fp = fopen(pubkey_file, "rb");
    assert_non_null(fp);
    size_t n = fread(der, 1, sizeof der, fp);
    fclose(fp);
    const unsigned char *p = der;
    EVP_PKEY *pub = d2i_PUBKEY(NULL, &p, (long)n);
    assert_non_null(pub);
    return pub;
}

static void test_hsm_key_signs_and_the_token_public_key_verifies(void **state)
{
    (void)state;
    NEED_HSM();
    em_pkcs11_t *h = hsm_open(PIN);
    EVP_PKEY *key = NULL;
    em_error_t err;
    assert_int_equal(em_key_load(KEY_URI, NULL, h, false, &key, &err), EM_OK);
    assert_true(EVP_PKEY_is_a(key, "EC"));

    static const unsigned char msg[] = "emiot-device-auth-v1\ndev-1\nnonce";
    unsigned char sig[256];
    size_t siglen = sizeof sig;
    EVP_MD_CTX *ctx = EVP_MD_CTX_new();
    assert_non_null(ctx);
    assert_int_equal(EVP_DigestSignInit(ctx, NULL, EVP_sha256(), NULL, key), 1);
    assert_int_equal(EVP_DigestSign(ctx, sig, &siglen, msg, sizeof msg - 1), 1);
    EVP_MD_CTX_free(ctx);

    EVP_PKEY *pub = token_public_key();
    ctx = EVP_MD_CTX_new();
    assert_non_null(ctx);
    assert_int_equal(EVP_DigestVerifyInit(ctx, NULL, EVP_sha256(), NULL, pub), 1);
    assert_int_equal(EVP_DigestVerify(ctx, sig, siglen, msg, sizeof msg - 1), 1);
    /* And not for another message. */
    assert_int_equal(EVP_DigestVerifyInit(ctx, NULL, EVP_sha256(), NULL, pub), 1);
    assert_int_not_equal(EVP_DigestVerify(ctx, sig, siglen, msg, sizeof msg - 2), 1);
    EVP_MD_CTX_free(ctx);
    EVP_PKEY_free(pub);
    EVP_PKEY_free(key);
    em_pkcs11_free(h);
}

static void test_hsm_key_signs_a_certificate_through_x509_sign(void **state)
{
    (void)state;
    NEED_HSM();
    em_pkcs11_t *h = hsm_open(PIN);
    EVP_PKEY *key = NULL;
    em_error_t err;
    assert_int_equal(em_key_load(KEY_URI, NULL, h, false, &key, &err), EM_OK);
    X509 *x = X509_new();
    assert_non_null(x);
    assert_int_equal(X509_set_version(x, 2), 1);
    assert_int_equal(ASN1_INTEGER_set(X509_get_serialNumber(x), 42), 1);
    X509_NAME *name = X509_get_subject_name(x);
    assert_int_equal(X509_NAME_add_entry_by_txt(name, "CN", MBSTRING_ASC,
                                                (const unsigned char *)"hsm test", -1, -1, 0),
                     1);
    assert_int_equal(X509_set_issuer_name(x, name), 1);
    assert_non_null(X509_gmtime_adj(X509_getm_notBefore(x), 0));
    assert_non_null(X509_gmtime_adj(X509_getm_notAfter(x), 3600));
    /* The public half of an HSM key encodes like any other. */
    assert_int_equal(X509_set_pubkey(x, key), 1);
    assert_true(X509_sign(x, key, EVP_sha256()) > 0);
    EVP_PKEY *pub = token_public_key();
    assert_int_equal(X509_verify(x, pub), 1);
    EVP_PKEY_free(pub);
    X509_free(x);
    EVP_PKEY_free(key);
    em_pkcs11_free(h);
}

static void test_hsm_key_is_found_by_id(void **state)
{
    (void)state;
    NEED_HSM();
    em_pkcs11_t *h = hsm_open(PIN);
    EVP_PKEY *key = NULL;
    em_error_t err;
    assert_int_equal(
        em_key_load("pkcs11:token=emiot-test;id=%01;type=private", NULL, h, false, &key, &err),
        EM_OK);
    EVP_PKEY *pub = token_public_key();
    assert_int_equal(EVP_PKEY_eq(key, pub), 1);
    EVP_PKEY_free(pub);
    EVP_PKEY_free(key);
    /* Without a token: the first token that holds the key. */
    assert_int_equal(em_key_load("pkcs11:object=ca-key", NULL, h, false, &key, &err), EM_OK);
    EVP_PKEY_free(key);
    em_pkcs11_free(h);
}

static void test_a_wrong_pin_is_an_authentication_error(void **state)
{
    (void)state;
    NEED_HSM();
    em_pkcs11_t *h = hsm_open("000000");
    EVP_PKEY *key = NULL;
    em_error_t err;
    assert_int_equal(em_key_load(KEY_URI, NULL, h, false, &key, &err), EM_ERR_AUTHENTICATION);
    assert_null(key);
    assert_null(strstr(err.message, "000000"));
    em_pkcs11_free(h);
}

static void test_no_pin_for_a_token_that_needs_one_is_an_authentication_error(void **state)
{
    (void)state;
    NEED_HSM();
    em_pkcs11_t *h = NULL;
    em_error_t err;
    assert_int_equal(em_pkcs11_open(MODULE, NULL, 0, &h, &err), EM_OK);
    EVP_PKEY *key = NULL;
    assert_int_equal(em_key_load(KEY_URI, NULL, h, false, &key, &err), EM_ERR_AUTHENTICATION);
    em_pkcs11_free(h);
}

static void test_an_unknown_object_is_not_found(void **state)
{
    (void)state;
    NEED_HSM();
    em_pkcs11_t *h = hsm_open(PIN);
    EVP_PKEY *key = NULL;
    em_error_t err;
    assert_int_equal(
        em_key_load("pkcs11:token=emiot-test;object=no-such-key", NULL, h, false, &key, &err),
        EM_ERR_NOT_FOUND);
    assert_int_equal(em_key_load("pkcs11:token=emiot-test;id=%02", NULL, h, false, &key, &err),
                     EM_ERR_NOT_FOUND);
    assert_int_equal(
        em_key_load("pkcs11:token=no-such-token;object=ca-key", NULL, h, false, &key, &err),
        EM_ERR_NOT_FOUND);
    assert_int_equal(em_key_load("pkcs11:token=emiot-test;object=ca-key;serial=0000", NULL, h,
                                 false, &key, &err),
                     EM_ERR_NOT_FOUND);
    assert_null(key);
    em_pkcs11_free(h);
}

static void test_malformed_uris_are_configuration_errors(void **state)
{
    (void)state;
    NEED_HSM();
    em_pkcs11_t *h = hsm_open(PIN);
    char longuri[1100];
    memset(longuri, 'a', sizeof longuri);
    memcpy(longuri, "pkcs11:object=", 14);
    longuri[sizeof longuri - 1] = '\0';
    const char *bad[] = {
        "pkcs11:",
        "pkcs11:token=emiot-test",                              /* names no key */
        "pkcs11:token=emiot-test;object=ca-key?pin-value=" PIN, /* no PIN in URIs */
        "pkcs11:token=emiot-test;object=ca-key;module-name=softhsm2",
        "pkcs11:object=ca-key;object=ca-key",
        "pkcs11:object=%zz",
        "pkcs11:object=%4",
        "pkcs11:object=",
        "pkcs11:object=ca-key;",
        "pkcs11:;object=ca-key",
        "pkcs11:object",
        "pkcs11:object=a%00b",
        "pkcs11:object=ca key",
        "pkcs11:object=ca-key;type=public",
        longuri,
    };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        EVP_PKEY *key = NULL;
        em_error_t err;
        em_err_t rc = em_key_load(bad[i], NULL, h, false, &key, &err);
        if (rc != EM_ERR_CONFIGURATION)
            fail_msg("%s: %s", bad[i], em_err_name(rc));
        assert_null(key);
    }
    /* An escaped character is the character. */
    EVP_PKEY *key = NULL;
    em_error_t err;
    assert_int_equal(
        em_key_load("pkcs11:token=emiot%2dtest;object=%63a-key", NULL, h, false, &key, &err),
        EM_OK);
    EVP_PKEY_free(key);
    em_pkcs11_free(h);
}

static void test_a_module_that_does_not_load_is_a_configuration_error(void **state)
{
    (void)state;
    em_pkcs11_t *h = (em_pkcs11_t *)&h;
    em_error_t err;
    assert_int_equal(em_pkcs11_open("/nonexistent/libpkcs11.so", PIN, strlen(PIN), &h, &err),
                     EM_ERR_CONFIGURATION);
    assert_null(h);
    assert_int_equal(em_pkcs11_open(NULL, PIN, strlen(PIN), &h, &err), EM_ERR_INVALID_ARGUMENT);
    assert_int_equal(em_pkcs11_open(MODULE,
                                    "12\0"
                                    "34",
                                    5, &h, &err),
                     EM_ERR_CONFIGURATION);
    em_pkcs11_free(NULL);
}

static void test_a_ca_with_its_key_in_the_hsm_issues_a_certificate_openssl_verifies(void **state)
{
    (void)state;
    NEED_HSM();
    em_pkcs11_t *h = hsm_open(PIN);
    char ca_dir[320], ca_crt[400], key_file[400], dev_crt[400];
    path_in("ca", ca_dir, sizeof ca_dir);
    em_pki_init_options_t o;
    em_pki_init_options_init(&o);
    o.common_name = "emiot HSM test CA";
    o.key_ref = KEY_URI;
    o.hsm = h;
    em_error_t err;
    assert_int_equal(em_pki_init(ca_dir, &o, &err), EM_OK);
    snprintf(key_file, sizeof key_file, "%s/ca.key", ca_dir);
    assert_int_equal(access(key_file, F_OK), -1); /* the key stays in the token */

    em_pki_t *pki = NULL;
    assert_int_equal(em_pki_open(ca_dir, NULL, h, &pki, &err), EM_OK);
    em_pki_issue_options_t io;
    memset(&io, 0, sizeof io);
    io.profile = EM_CERT_DEVICE;
    io.common_name = "dev-hsm-1";
    char *key_pem = NULL, *cert_pem = NULL;
    assert_int_equal(em_pki_issue_new_key(pki, &io, &key_pem, &cert_pem, NULL, &err), EM_OK);
    snprintf(ca_crt, sizeof ca_crt, "%s", em_pki_ca_file(pki));
    path_in("dev.crt", dev_crt, sizeof dev_crt);
    FILE *fp = fopen(dev_crt, "w");
    assert_non_null(fp);
    fputs(cert_pem, fp);
    fclose(fp);
    em_keystore_data_free((unsigned char *)key_pem, strlen(key_pem));
    free(cert_pem);

    const char *verify[] = {"openssl", "verify", "-CAfile", ca_crt, dev_crt, NULL};
    assert_int_equal(em_test_run(verify), 0);
    /* The CA certificate carries the token's key. */
    X509 *ca = em_pki_ca_cert(pki);
    EVP_PKEY *pub = token_public_key();
    assert_int_equal(X509_verify(ca, pub), 1);
    EVP_PKEY_free(pub);
    em_pki_free(pki);
    em_pkcs11_free(h);
}

int main(void)
{
    em_log_set_level(EM_LOG_OFF);
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_hsm_key_signs_and_the_token_public_key_verifies),
        cmocka_unit_test(test_hsm_key_signs_a_certificate_through_x509_sign),
        cmocka_unit_test(test_hsm_key_is_found_by_id),
        cmocka_unit_test(test_a_wrong_pin_is_an_authentication_error),
        cmocka_unit_test(test_no_pin_for_a_token_that_needs_one_is_an_authentication_error),
        cmocka_unit_test(test_an_unknown_object_is_not_found),
        cmocka_unit_test(test_malformed_uris_are_configuration_errors),
        cmocka_unit_test(test_a_module_that_does_not_load_is_a_configuration_error),
        cmocka_unit_test(test_a_ca_with_its_key_in_the_hsm_issues_a_certificate_openssl_verifies),
    };
    return cmocka_run_group_tests(tests, group_setup, group_teardown);
}
