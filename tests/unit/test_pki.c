/*
 * emiot tests - test_pki.c: the CA directory (init, import, open), issuing
 * for each profile, the CSR and key policy, serials, revocation and the CRL,
 * the index, the verifier, and signatures by a certificate's key.
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

#include <openssl/bn.h>
#include <openssl/ec.h>
#include <openssl/err.h>
#include <openssl/pem.h>
#include <openssl/rsa.h>
#include <openssl/x509v3.h>

#include "emiot/clock.h"
#include "emiot/pki.h"
#include "pki/pki_internal.h"
#include "testutil.h"

#define PASS   "correct horse battery staple"
#define DAY_MS (86400 * 1000LL)
#define MIN_MS (60 * 1000LL)

typedef struct fx {
    char tmp[256];
    char dir[300];
    em_keystore_secret_t *secret;
    em_pki_t *pki;
} fx_t;

/* ---- helpers ------------------------------------------------------------------ */

static void path_in(char *buf, size_t size, const char *dir, const char *name)
{
    int n = snprintf(buf, size, "%s/%s", dir, name);
    assert_true(n > 0 && (size_t)n < size);
}

static em_keystore_secret_t *make_secret(const char *pass)
{
    em_keystore_secret_t *s = NULL;
    assert_int_equal(em_keystore_secret_passphrase(pass, strlen(pass), &s, NULL), EM_OK);
    assert_int_equal(em_keystore_secret_set_cost(s, EM_KEYSTORE_LOG2N_MIN), EM_OK);
    return s;
}

static int setup(void **state)
{
    fx_t *f = calloc(1, sizeof(*f));
    assert_non_null(f);
    assert_int_equal(em_test_mkdtemp(f->tmp, sizeof(f->tmp)), 0);
    path_in(f->dir, sizeof(f->dir), f->tmp, "ca");
    f->secret = make_secret(PASS);
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

static EVP_PKEY *gen_key(const char *kind)
{
    EVP_PKEY *k = NULL;
    if (strcmp(kind, "P-256") == 0 || strcmp(kind, "P-384") == 0 ||
        strcmp(kind, "prime192v1") == 0 || strcmp(kind, "secp256k1") == 0)
        k = EVP_PKEY_Q_keygen(NULL, NULL, "EC", kind);
    else if (strcmp(kind, "ED25519") == 0)
        k = EVP_PKEY_Q_keygen(NULL, NULL, "ED25519");
    else if (strcmp(kind, "RSA1024") == 0)
        k = EVP_PKEY_Q_keygen(NULL, NULL, "RSA", (size_t)1024);
    else if (strcmp(kind, "RSA2048") == 0)
        k = EVP_PKEY_Q_keygen(NULL, NULL, "RSA", (size_t)2048);
    else if (strcmp(kind, "DSA") == 0) {
        EVP_PKEY_CTX *pc = EVP_PKEY_CTX_new_from_name(NULL, "DSA", NULL);
        EVP_PKEY *params = NULL;
        assert_non_null(pc);
        assert_int_equal(EVP_PKEY_paramgen_init(pc), 1);
        assert_int_equal(EVP_PKEY_CTX_set_dsa_paramgen_bits(pc, 1024), 1);
        assert_int_equal(EVP_PKEY_paramgen(pc, &params), 1);
        EVP_PKEY_CTX_free(pc);
        EVP_PKEY_CTX *kc = EVP_PKEY_CTX_new(params, NULL);
        assert_int_equal(EVP_PKEY_keygen_init(kc), 1);
        assert_int_equal(EVP_PKEY_keygen(kc, &k), 1);
        EVP_PKEY_CTX_free(kc);
        EVP_PKEY_free(params);
    }
    assert_non_null(k);
    return k;
}

static X509_REQ *make_req(EVP_PKEY *key, const char *cn, bool ask_ca)
{
    X509_REQ *req = X509_REQ_new();
    assert_non_null(req);
    X509_NAME *name = X509_REQ_get_subject_name(req);
    if (cn != NULL)
        assert_int_equal(X509_NAME_add_entry_by_NID(name, NID_commonName, MBSTRING_UTF8,
                                                    (const unsigned char *)cn, -1, -1, 0),
                         1);
    assert_int_equal(X509_REQ_set_pubkey(req, key), 1);
    if (ask_ca) {
        STACK_OF(X509_EXTENSION) *exts = sk_X509_EXTENSION_new_null();
        X509_EXTENSION *bc =
            X509V3_EXT_conf_nid(NULL, NULL, NID_basic_constraints, "critical,CA:TRUE");
        X509_EXTENSION *eku = X509V3_EXT_conf_nid(NULL, NULL, NID_ext_key_usage, "serverAuth");
        sk_X509_EXTENSION_push(exts, bc);
        sk_X509_EXTENSION_push(exts, eku);
        assert_int_equal(X509_REQ_add_extensions(req, exts), 1);
        sk_X509_EXTENSION_pop_free(exts, X509_EXTENSION_free);
    }
    int id = EVP_PKEY_get_base_id(key);
    assert_true(X509_REQ_sign(req, key, id == EVP_PKEY_ED25519 ? NULL : EVP_sha256()) > 0);
    return req;
}

static char *req_pem(X509_REQ *req)
{
    BIO *bio = BIO_new(BIO_s_mem());
    assert_int_equal(PEM_write_bio_X509_REQ(bio, req), 1);
    char *data;
    long n = BIO_get_mem_data(bio, &data);
    char *pem = malloc((size_t)n + 1);
    memcpy(pem, data, (size_t)n);
    pem[n] = '\0';
    BIO_free(bio);
    return pem;
}

/* A CSR (PEM, caller frees) for a new key of kind; *key_out keeps the key. */
static char *make_csr(const char *kind, const char *cn, EVP_PKEY **key_out)
{
    EVP_PKEY *key = gen_key(kind);
    X509_REQ *req = make_req(key, cn, false);
    char *pem = req_pem(req);
    X509_REQ_free(req);
    if (key_out != NULL)
        *key_out = key;
    else
        EVP_PKEY_free(key);
    return pem;
}

static X509 *parse_cert(const char *pem)
{
    BIO *bio = BIO_new_mem_buf(pem, -1);
    X509 *x = PEM_read_bio_X509(bio, NULL, NULL, NULL);
    BIO_free(bio);
    assert_non_null(x);
    return x;
}

static void opts_for(em_pki_issue_options_t *o, em_cert_profile_t p, const char *cn)
{
    memset(o, 0, sizeof(*o));
    o->profile = p;
    o->common_name = cn;
}

/* Issues a certificate for a new P-256 key from a CSR; returns the X509. */
static X509 *issue(fx_t *f, em_cert_profile_t p, const char *cn, em_pki_cert_t *info)
{
    em_pki_issue_options_t o;
    opts_for(&o, p, cn);
    char *csr = make_csr("P-256", cn, NULL);
    char *pem = NULL;
    em_error_t err;
    em_err_t rc = em_pki_issue_csr(f->pki, &o, csr, strlen(csr), &pem, info, &err);
    if (rc != EM_OK)
        fail_msg("issue %s: %s", cn, err.message);
    X509 *x = parse_cert(pem);
    free(csr);
    free(pem);
    return x;
}

static em_err_t issue_err(fx_t *f, const em_pki_issue_options_t *o, const char *kind,
                          const char *csr_cn, em_error_t *err)
{
    char *csr = make_csr(kind, csr_cn, NULL);
    char *pem = NULL;
    em_err_t rc = em_pki_issue_csr(f->pki, o, csr, strlen(csr), &pem, NULL, err);
    assert_null(pem);
    free(csr);
    return rc;
}

static int run(const char *const argv[])
{
    pid_t pid = fork();
    assert_true(pid >= 0);
    if (pid == 0) {
        int null = open("/dev/null", O_WRONLY);
        if (null >= 0) {
            dup2(null, 1);
            dup2(null, 2);
        }
        execvp(argv[0], (char *const *)argv);
        _exit(127);
    }
    int st;
    assert_int_equal(waitpid(pid, &st, 0), pid);
    return WIFEXITED(st) ? WEXITSTATUS(st) : -1;
}

static mode_t mode_of(const char *dir, const char *name)
{
    char p[512];
    path_in(p, sizeof(p), dir, name);
    struct stat st;
    assert_int_equal(stat(p, &st), 0);
    return st.st_mode & 07777;
}

static void write_text(const char *path, const char *text)
{
    FILE *fp = fopen(path, "w");
    assert_non_null(fp);
    fputs(text, fp);
    fclose(fp);
}

static char *read_text(const char *path)
{
    char *buf;
    size_t len;
    assert_int_equal(em__pki_read_file(path, 1 << 24, &buf, &len, NULL), EM_OK);
    return buf;
}

static X509_CRL *read_crl(fx_t *f)
{
    char *pem = read_text(em_pki_crl_file(f->pki));
    BIO *bio = BIO_new_mem_buf(pem, -1);
    X509_CRL *crl = PEM_read_bio_X509_CRL(bio, NULL, NULL, NULL);
    BIO_free(bio);
    free(pem);
    assert_non_null(crl);
    return crl;
}

static bool crl_has(X509_CRL *crl, X509 *cert, int *reason)
{
    X509_REVOKED *r = NULL;
    if (X509_CRL_get0_by_serial(crl, &r, X509_get0_serialNumber(cert)) != 1)
        return false;
    int crit = 0;
    ASN1_ENUMERATED *e = X509_REVOKED_get_ext_d2i(r, NID_crl_reason, &crit, NULL);
    *reason = e != NULL ? (int)ASN1_ENUMERATED_get(e) : -1;
    ASN1_ENUMERATED_free(e);
    return true;
}

/* ---- names -------------------------------------------------------------------- */

static void test_profile_and_reason_names_round_trip(void **state)
{
    (void)state;
    for (int p = EM_CERT_DEVICE; p <= EM_CERT_CLIENT; p++) {
        em_cert_profile_t back = EM_CERT_NONE;
        assert_int_equal(em_cert_profile_parse(em_cert_profile_name(p), &back), EM_OK);
        assert_int_equal(back, p);
    }
    assert_null(em_cert_profile_name(EM_CERT_NONE));
    em_cert_profile_t p;
    assert_int_equal(em_cert_profile_parse("root", &p), EM_ERR_VALIDATION);
    for (int r = EM_CRL_UNSPECIFIED; r <= EM_CRL_CESSATION_OF_OPERATION; r++) {
        em_crl_reason_t back;
        assert_int_equal(em_crl_reason_parse(em_crl_reason_name(r), &back), EM_OK);
        assert_int_equal(back, r);
    }
    assert_string_equal(em_crl_reason_name(EM_CRL_KEY_COMPROMISE), "keyCompromise");
    assert_null(em_crl_reason_name((em_crl_reason_t)6));
    em_crl_reason_t r;
    assert_int_equal(em_crl_reason_parse("stolen", &r), EM_ERR_VALIDATION);
}

/* ---- init, open ------------------------------------------------------------------ */

static void test_init_writes_the_directory_with_private_modes(void **state)
{
    fx_t *f = *state;
    assert_int_equal(mode_of(f->tmp, "ca"), 0700);
    assert_int_equal(mode_of(f->dir, "ca.crt"), 0644);
    assert_int_equal(mode_of(f->dir, "crl.pem"), 0644);
    assert_int_equal(mode_of(f->dir, "ca.key"), 0600);
    assert_int_equal(mode_of(f->dir, "index"), 0600);
    assert_int_equal(mode_of(f->dir, "crlnumber"), 0600);
    assert_int_equal(mode_of(f->dir, "certs"), 0700);
    char p[512];
    path_in(p, sizeof(p), f->dir, "ca.key");
    char *key = read_text(p);
    assert_true(em_keystore_is_sealed(key, 4)); /* never a plain key on disk */
    free(key);
    path_in(p, sizeof(p), f->dir, "crlnumber");
    char *num = read_text(p);
    assert_string_equal(num, "1\n");
    free(num);
}

static void test_init_makes_a_p256_ca_certificate(void **state)
{
    fx_t *f = *state;
    X509 *ca = em_pki_ca_cert(f->pki);
    assert_non_null(ca);
    assert_int_equal(X509_get_version(ca), X509_VERSION_3);
    uint32_t flags = X509_get_extension_flags(ca);
    assert_true(flags & EXFLAG_CA);
    assert_true(flags & EXFLAG_SS);
    assert_int_equal(X509_get_key_usage(ca), KU_KEY_CERT_SIGN | KU_CRL_SIGN);
    int crit = 0;
    BASIC_CONSTRAINTS *bc = X509_get_ext_d2i(ca, NID_basic_constraints, &crit, NULL);
    assert_non_null(bc);
    assert_int_equal(crit, 1);
    BASIC_CONSTRAINTS_free(bc);
    ASN1_BIT_STRING *ku = X509_get_ext_d2i(ca, NID_key_usage, &crit, NULL);
    assert_non_null(ku);
    assert_int_equal(crit, 1);
    ASN1_BIT_STRING_free(ku);
    assert_non_null(X509_get0_subject_key_id(ca));
    EVP_PKEY *pub = X509_get0_pubkey(ca);
    assert_int_equal(EVP_PKEY_get_base_id(pub), EVP_PKEY_EC);
    char group[32];
    size_t len;
    assert_int_equal(EVP_PKEY_get_group_name(pub, group, sizeof(group), &len), 1);
    assert_string_equal(group, "prime256v1");
    assert_int_equal(X509_verify(ca, pub), 1);
    char cn[EM_PKI_CN_MAX + 1];
    assert_true(em__pki_name_cn(X509_get_subject_name(ca), cn));
    assert_string_equal(cn, "emiot CA");
}

static void test_init_refuses_a_directory_that_holds_a_ca(void **state)
{
    fx_t *f = *state;
    em_pki_init_options_t o;
    em_pki_init_options_init(&o);
    o.secret = f->secret;
    em_error_t err;
    assert_int_equal(em_pki_init(f->dir, &o, &err), EM_ERR_EXISTS);
    /* The existing CA is untouched. */
    em_pki_t *again = NULL;
    assert_int_equal(em_pki_open(f->dir, f->secret, NULL, &again, &err), EM_OK);
    assert_int_equal(X509_cmp(em_pki_ca_cert(again), em_pki_ca_cert(f->pki)), 0);
    em_pki_free(again);
}

static void test_init_refuses_bad_options(void **state)
{
    fx_t *f = *state;
    char dir[512];
    path_in(dir, sizeof(dir), f->tmp, "other");
    em_pki_init_options_t o;
    em_error_t err;
    em_pki_init_options_init(&o);
    assert_int_equal(em_pki_init(dir, &o, &err), EM_ERR_CONFIGURATION); /* no secret */
    assert_string_equal(err.field, "secret");
    o.secret = f->secret;
    o.days = EM_PKI_DAYS_MAX + 1;
    assert_int_equal(em_pki_init(dir, &o, &err), EM_ERR_CONFIGURATION);
    o.days = 10;
    o.crl_days = 400;
    assert_int_equal(em_pki_init(dir, &o, &err), EM_ERR_CONFIGURATION);
    o.crl_days = 7;
    o.common_name = "";
    assert_int_equal(em_pki_init(dir, &o, &err), EM_ERR_CONFIGURATION);
    o.common_name = "ok";
    o.key_ref = "/some/key.pem";
    assert_int_equal(em_pki_init(dir, &o, &err), EM_ERR_CONFIGURATION);
    o.key_ref = "pkcs11:token=x;object=y";
    assert_int_equal(em_pki_init(dir, &o, &err), EM_ERR_CONFIGURATION); /* no HSM */
    assert_int_equal(access(dir, F_OK), -1);                            /* nothing was created */
}

static void test_open_without_secret_is_read_only(void **state)
{
    fx_t *f = *state;
    em_pki_cert_t info;
    X509 *x = issue(f, EM_CERT_DEVICE, "sensor-1", &info);
    X509_free(x);
    em_pki_t *ro = NULL;
    em_error_t err;
    assert_int_equal(em_pki_open(f->dir, NULL, NULL, &ro, &err), EM_OK);
    em_pki_issue_options_t o;
    opts_for(&o, EM_CERT_DEVICE, "sensor-2");
    char *csr = make_csr("P-256", "sensor-2", NULL);
    char *pem = NULL;
    assert_int_equal(em_pki_issue_csr(ro, &o, csr, strlen(csr), &pem, NULL, &err), EM_ERR_STATE);
    assert_null(pem);
    free(csr);
    assert_int_equal(em_pki_revoke(ro, info.serial, EM_CRL_SUPERSEDED, &err), EM_ERR_STATE);
    assert_int_equal(em_pki_crl_publish(ro, 0, &err), EM_ERR_STATE);
    em_pki_cert_t got;
    assert_int_equal(em_pki_get(ro, info.serial, &got, NULL, &err), EM_OK);
    assert_string_equal(got.common_name, "sensor-1");
    em_pki_free(ro);
}

static void test_open_of_a_missing_ca_is_not_found(void **state)
{
    fx_t *f = *state;
    char dir[512];
    path_in(dir, sizeof(dir), f->tmp, "nothing");
    em_pki_t *p = NULL;
    em_error_t err;
    assert_int_equal(em_pki_open(dir, NULL, NULL, &p, &err), EM_ERR_NOT_FOUND);
    assert_null(p);
}

static void test_open_with_a_wrong_passphrase_fails(void **state)
{
    fx_t *f = *state;
    em_keystore_secret_t *wrong = make_secret("not the right passphrase");
    em_pki_t *p = NULL;
    em_error_t err;
    assert_int_equal(em_pki_open(f->dir, wrong, NULL, &p, &err), EM_ERR_CRYPTO);
    assert_null(p);
    em_keystore_secret_free(wrong);
}

/* ---- issuing --------------------------------------------------------------------- */

static void check_common(fx_t *f, X509 *x, const em_pki_cert_t *info, const char *cn)
{
    X509 *ca = em_pki_ca_cert(f->pki);
    assert_int_equal(X509_get_version(x), X509_VERSION_3);
    assert_int_equal(X509_verify(x, X509_get0_pubkey(ca)), 1);
    assert_int_equal(X509_check_issued(ca, x), X509_V_OK);
    assert_int_equal(X509_get_signature_nid(x), NID_ecdsa_with_SHA256);
    char serial[64];
    assert_true(em__pki_serial_hex(X509_get0_serialNumber(x), serial, sizeof(serial)));
    assert_string_equal(serial, info->serial);
    assert_int_equal(strlen(info->serial), EM_PKI_SERIAL_LEN);
    assert_true(info->serial[0] <= '7'); /* positive: the top bit is clear */
    char fp[EM_PKI_SHA256_LEN + 1];
    em_pki_fingerprint(x, fp);
    assert_string_equal(fp, info->sha256);
    char got_cn[EM_PKI_CN_MAX + 1];
    assert_true(em__pki_name_cn(X509_get_subject_name(x), got_cn));
    assert_string_equal(got_cn, cn);
    assert_string_equal(info->common_name, cn);
    int crit = 0;
    BASIC_CONSTRAINTS *bc = X509_get_ext_d2i(x, NID_basic_constraints, &crit, NULL);
    assert_non_null(bc);
    assert_int_equal(crit, 1);
    assert_int_equal(bc->ca, 0);
    BASIC_CONSTRAINTS_free(bc);
    ASN1_BIT_STRING *ku = X509_get_ext_d2i(x, NID_key_usage, &crit, NULL);
    assert_non_null(ku);
    assert_int_equal(crit, 1);
    ASN1_BIT_STRING_free(ku);
    assert_non_null(X509_get0_subject_key_id(x));
    const ASN1_OCTET_STRING *akid = X509_get0_authority_key_id(x);
    assert_non_null(akid);
    assert_int_equal(ASN1_OCTET_STRING_cmp(akid, X509_get0_subject_key_id(ca)), 0);
    int64_t nb, na, now = em_now_ms();
    assert_true(em__pki_asn1_time_ms(X509_get0_notBefore(x), &nb));
    assert_true(em__pki_asn1_time_ms(X509_get0_notAfter(x), &na));
    assert_int_equal(nb, info->not_before_ms);
    assert_int_equal(na, info->not_after_ms);
    assert_true(nb <= now - 4 * MIN_MS && nb >= now - 6 * MIN_MS); /* five minutes of skew */
    assert_int_equal(info->revoked_at_ms, 0);
    char p[512];
    char name[64];
    snprintf(name, sizeof(name), "certs/%s.pem", info->serial);
    path_in(p, sizeof(p), f->dir, name);
    assert_int_equal(mode_of(f->dir, name), 0600);
}

static void test_issue_device_certificate_from_csr(void **state)
{
    fx_t *f = *state;
    em_pki_cert_t info;
    X509 *x = issue(f, EM_CERT_DEVICE, "sensor-01", &info);
    check_common(f, x, &info, "sensor-01");
    assert_int_equal(info.profile, EM_CERT_DEVICE);
    assert_int_equal(X509_get_key_usage(x), KU_DIGITAL_SIGNATURE);
    assert_int_equal(X509_get_extended_key_usage(x), XKU_SSL_CLIENT);
    assert_null(X509_get_ext_d2i(x, NID_subject_alt_name, NULL, NULL));
    int64_t span = info.not_after_ms - em_now_ms();
    assert_true(span > 364 * DAY_MS && span <= 365 * DAY_MS);
    /* The record is in the index, and em_pki_get returns the same PEM. */
    em_pki_cert_t got;
    char *pem = NULL;
    em_error_t err;
    assert_int_equal(em_pki_get(f->pki, info.serial, &got, &pem, &err), EM_OK);
    assert_memory_equal(&got, &info, sizeof(got));
    X509 *back = parse_cert(pem);
    assert_int_equal(X509_cmp(back, x), 0);
    X509_free(back);
    free(pem);
    X509_free(x);
}

static void test_issue_client_certificate(void **state)
{
    fx_t *f = *state;
    em_pki_cert_t info;
    X509 *x = issue(f, EM_CERT_CLIENT, "emiotd.manager", &info);
    check_common(f, x, &info, "emiotd.manager");
    assert_int_equal(X509_get_key_usage(x), KU_DIGITAL_SIGNATURE);
    assert_int_equal(X509_get_extended_key_usage(x), XKU_SSL_CLIENT);
    X509_free(x);
}

static void test_issue_server_certificate_with_names(void **state)
{
    fx_t *f = *state;
    em_pki_issue_options_t o;
    opts_for(&o, EM_CERT_SERVER, NULL);
    const char *dns[] = {"broker.example.net", "localhost"};
    const char *ips[] = {"127.0.0.1", "::1"};
    o.dns_names = dns;
    o.ndns = 2;
    o.ip_addresses = ips;
    o.nips = 2;
    char *csr = make_csr("P-256", "broker.example.net", NULL);
    char *pem = NULL;
    em_pki_cert_t info;
    em_error_t err;
    assert_int_equal(em_pki_issue_csr(f->pki, &o, csr, strlen(csr), &pem, &info, &err), EM_OK);
    X509 *x = parse_cert(pem);
    check_common(f, x, &info, "broker.example.net");
    assert_int_equal(X509_get_key_usage(x), KU_DIGITAL_SIGNATURE | KU_KEY_ENCIPHERMENT);
    assert_int_equal(X509_get_extended_key_usage(x), XKU_SSL_SERVER);
    assert_int_equal(X509_check_host(x, "localhost", 0, 0, NULL), 1);
    assert_int_equal(X509_check_host(x, "broker.example.net", 0, 0, NULL), 1);
    assert_int_equal(X509_check_ip_asc(x, "127.0.0.1", 0), 1);
    assert_int_equal(X509_check_ip_asc(x, "::1", 0), 1);
    assert_int_equal(X509_check_host(x, "other.example.net", 0, 0, NULL), 0);
    int64_t span = info.not_after_ms - em_now_ms();
    assert_true(span > 396 * DAY_MS && span <= 397 * DAY_MS);
    X509_free(x);
    free(pem);
    free(csr);
}

static void test_issue_server_without_names_puts_the_cn_in_the_san(void **state)
{
    fx_t *f = *state;
    em_pki_cert_t info;
    X509 *x = issue(f, EM_CERT_SERVER, "mqtt.local", &info);
    assert_int_equal(X509_check_host(x, "mqtt.local", 0, 0, NULL), 1);
    X509_free(x);
    x = issue(f, EM_CERT_SERVER, "10.0.0.7", &info);
    assert_int_equal(X509_check_ip_asc(x, "10.0.0.7", 0), 1);
    X509_free(x);
}

static void test_issue_refuses_bad_subject_alt_names(void **state)
{
    fx_t *f = *state;
    em_pki_issue_options_t o;
    em_error_t err;
    const char *bad_dns[] = {"bad host"};
    opts_for(&o, EM_CERT_SERVER, "srv");
    o.dns_names = bad_dns;
    o.ndns = 1;
    assert_int_equal(issue_err(f, &o, "P-256", "srv", &err), EM_ERR_VALIDATION);
    assert_string_equal(err.field, "san");
    const char *bad_ip[] = {"300.1.1.1"};
    opts_for(&o, EM_CERT_SERVER, "srv");
    o.ip_addresses = bad_ip;
    o.nips = 1;
    assert_int_equal(issue_err(f, &o, "P-256", "srv", &err), EM_ERR_VALIDATION);
    const char *ok_dns[] = {"a.example"};
    opts_for(&o, EM_CERT_DEVICE, "dev-1"); /* names are for servers only */
    o.dns_names = ok_dns;
    o.ndns = 1;
    assert_int_equal(issue_err(f, &o, "P-256", "dev-1", &err), EM_ERR_VALIDATION);
}

static void test_issue_ignores_extensions_requested_in_the_csr(void **state)
{
    fx_t *f = *state;
    EVP_PKEY *key = gen_key("P-256");
    X509_REQ *req = make_req(key, "sneaky-1", true);
    char *csr = req_pem(req);
    em_pki_issue_options_t o;
    opts_for(&o, EM_CERT_DEVICE, NULL); /* CN taken from the CSR */
    char *pem = NULL;
    em_pki_cert_t info;
    em_error_t err;
    assert_int_equal(em_pki_issue_csr(f->pki, &o, csr, strlen(csr), &pem, &info, &err), EM_OK);
    X509 *x = parse_cert(pem);
    assert_false(X509_get_extension_flags(x) & EXFLAG_CA);
    assert_int_equal(X509_get_extended_key_usage(x), XKU_SSL_CLIENT);
    assert_string_equal(info.common_name, "sneaky-1");
    X509_free(x);
    free(pem);
    free(csr);
    X509_REQ_free(req);
    EVP_PKEY_free(key);
}

static void test_issue_refuses_a_cn_that_does_not_match(void **state)
{
    fx_t *f = *state;
    em_pki_issue_options_t o;
    opts_for(&o, EM_CERT_DEVICE, "sensor-01");
    em_error_t err;
    assert_int_equal(issue_err(f, &o, "P-256", "sensor-02", &err), EM_ERR_VALIDATION);
    assert_string_equal(err.field, "cn");
}

static void test_issue_refuses_a_device_cn_that_is_not_a_device_id(void **state)
{
    fx_t *f = *state;
    em_pki_issue_options_t o;
    opts_for(&o, EM_CERT_DEVICE, NULL);
    em_error_t err;
    assert_int_equal(issue_err(f, &o, "P-256", "alice@ops", &err), EM_ERR_VALIDATION);
    assert_string_equal(err.field, "cn");
    assert_int_equal(issue_err(f, &o, "P-256", "ab", &err), EM_ERR_VALIDATION);
    /* A CSR without a CN. */
    assert_int_equal(issue_err(f, &o, "P-256", NULL, &err), EM_ERR_VALIDATION);
    assert_string_equal(err.field, "cn");
}

static void test_issue_refuses_a_client_cn_that_is_a_device_id(void **state)
{
    fx_t *f = *state;
    em_pki_issue_options_t o;
    opts_for(&o, EM_CERT_CLIENT, NULL);
    em_error_t err;
    /* "manager" would let a certificate named like a device carry a user's
     * identity, or the reverse. */
    assert_int_equal(issue_err(f, &o, "P-256", "manager", &err), EM_ERR_VALIDATION);
    assert_string_equal(err.field, "cn");
    opts_for(&o, EM_CERT_CLIENT, "sensor-9");
    assert_int_equal(issue_err(f, &o, "P-256", "sensor-9", &err), EM_ERR_VALIDATION);
    char *key = NULL, *pem = NULL;
    assert_int_equal(em_pki_issue_new_key(f->pki, &o, &key, &pem, NULL, &err), EM_ERR_VALIDATION);
    assert_null(key);
    assert_null(pem);
}

static void expect_weak(fx_t *f, const char *kind, const char *words)
{
    em_pki_issue_options_t o;
    opts_for(&o, EM_CERT_DEVICE, "weak-1");
    em_error_t err;
    assert_int_equal(issue_err(f, &o, kind, "weak-1", &err), EM_ERR_VALIDATION);
    assert_string_equal(err.field, "key");
    if (strstr(err.message, words) == NULL)
        fail_msg("%s: \"%s\" does not say \"%s\"", kind, err.message, words);
}

static void test_issue_refuses_weak_or_unsupported_keys(void **state)
{
    fx_t *f = *state;
    expect_weak(f, "RSA1024", "1024 bits");
    expect_weak(f, "prime192v1", "prime192v1");
    expect_weak(f, "secp256k1", "secp256k1");
    expect_weak(f, "DSA", "DSA");
}

static void test_issue_accepts_p384_ed25519_and_rsa2048_keys(void **state)
{
    fx_t *f = *state;
    const char *kinds[] = {"P-384", "ED25519", "RSA2048"};
    for (size_t i = 0; i < 3; i++) {
        em_pki_issue_options_t o;
        opts_for(&o, EM_CERT_DEVICE, "good-1");
        char *csr = make_csr(kinds[i], "good-1", NULL);
        char *pem = NULL;
        em_error_t err;
        assert_int_equal(em_pki_issue_csr(f->pki, &o, csr, strlen(csr), &pem, NULL, &err), EM_OK);
        free(pem);
        free(csr);
    }
}

static void test_issue_refuses_a_csr_whose_signature_does_not_verify(void **state)
{
    fx_t *f = *state;
    EVP_PKEY *key = gen_key("P-256");
    X509_REQ *req = make_req(key, "sensor-01", false);
    unsigned char *der = NULL;
    int n = i2d_X509_REQ(req, &der);
    assert_true(n > 10);
    der[n - 3] ^= 0x01; /* inside the signature's last INTEGER */
    const unsigned char *p = der;
    X509_REQ *bad = d2i_X509_REQ(NULL, &p, n);
    assert_non_null(bad);
    char *csr = req_pem(bad);
    em_pki_issue_options_t o;
    opts_for(&o, EM_CERT_DEVICE, "sensor-01");
    char *pem = NULL;
    em_error_t err;
    assert_int_equal(em_pki_issue_csr(f->pki, &o, csr, strlen(csr), &pem, NULL, &err),
                     EM_ERR_CRYPTO);
    assert_string_equal(err.message, "signature does not verify");
    free(csr);
    X509_REQ_free(bad);
    X509_REQ_free(req);
    OPENSSL_free(der);
    EVP_PKEY_free(key);
}

static void test_issue_refuses_garbage_csrs(void **state)
{
    fx_t *f = *state;
    em_pki_issue_options_t o;
    opts_for(&o, EM_CERT_DEVICE, "sensor-01");
    char *pem = NULL;
    em_error_t err;
    const char *junk =
        "-----BEGIN CERTIFICATE REQUEST-----\nAAAA\n-----END CERTIFICATE REQUEST-----\n";
    assert_int_equal(em_pki_issue_csr(f->pki, &o, junk, strlen(junk), &pem, NULL, &err),
                     EM_ERR_MESSAGE_FORMAT);
    assert_int_equal(em_pki_issue_csr(f->pki, &o, "hello", 5, &pem, NULL, &err),
                     EM_ERR_MESSAGE_FORMAT);
    assert_int_equal(em_pki_issue_csr(f->pki, &o, NULL, 0, &pem, NULL, &err),
                     EM_ERR_MESSAGE_FORMAT);
    char *big = malloc(EM_PKI_CSR_MAX + 2);
    memset(big, 'A', EM_PKI_CSR_MAX + 1);
    big[EM_PKI_CSR_MAX + 1] = '\0';
    assert_int_equal(em_pki_issue_csr(f->pki, &o, big, EM_PKI_CSR_MAX + 1, &pem, NULL, &err),
                     EM_ERR_MESSAGE_FORMAT);
    free(big);
    assert_null(pem);
}

static void test_issue_refuses_bad_periods(void **state)
{
    fx_t *f = *state;
    em_pki_issue_options_t o;
    em_error_t err;
    opts_for(&o, EM_CERT_DEVICE, "sensor-01");
    o.days = EM_PKI_DAYS_MAX + 1;
    assert_int_equal(issue_err(f, &o, "P-256", "sensor-01", &err), EM_ERR_VALIDATION);
    assert_string_equal(err.field, "days");
    opts_for(&o, EM_CERT_DEVICE, "sensor-01");
    o.not_before_ms = em_now_ms() - 400 * DAY_MS; /* before the CA */
    o.not_after_ms = em_now_ms();
    assert_int_equal(issue_err(f, &o, "P-256", "sensor-01", &err), EM_ERR_VALIDATION);
    assert_string_equal(err.field, "period");
    o.not_before_ms = em_now_ms() + DAY_MS;
    o.not_after_ms = em_now_ms(); /* backwards */
    assert_int_equal(issue_err(f, &o, "P-256", "sensor-01", &err), EM_ERR_VALIDATION);
    o.not_before_ms = em_now_ms();
    o.not_after_ms = em_now_ms() + 20 * 366 * DAY_MS; /* after the CA */
    assert_int_equal(issue_err(f, &o, "P-256", "sensor-01", &err), EM_ERR_VALIDATION);
}

static void test_issue_days_never_outlive_the_ca(void **state)
{
    fx_t *f = *state;
    em_pki_issue_options_t o;
    opts_for(&o, EM_CERT_DEVICE, "sensor-01");
    o.days = EM_PKI_DAYS_MAX;
    char *csr = make_csr("P-256", "sensor-01", NULL);
    em_pki_cert_t info;
    em_error_t err;
    assert_int_equal(em_pki_issue_csr(f->pki, &o, csr, strlen(csr), NULL, &info, &err), EM_OK);
    int64_t ca_na;
    assert_true(em__pki_asn1_time_ms(X509_get0_notAfter(em_pki_ca_cert(f->pki)), &ca_na));
    assert_int_equal(info.not_after_ms, ca_na);
    free(csr);
}

static void test_issue_new_key_returns_a_matching_key(void **state)
{
    fx_t *f = *state;
    em_pki_issue_options_t o;
    opts_for(&o, EM_CERT_DEVICE, "plug-7");
    char *key_pem = NULL, *cert_pem = NULL;
    em_pki_cert_t info;
    em_error_t err;
    assert_int_equal(em_pki_issue_new_key(f->pki, &o, &key_pem, &cert_pem, &info, &err), EM_OK);
    assert_non_null(strstr(key_pem, "BEGIN PRIVATE KEY"));
    BIO *bio = BIO_new_mem_buf(key_pem, -1);
    EVP_PKEY *key = PEM_read_bio_PrivateKey(bio, NULL, NULL, NULL);
    BIO_free(bio);
    X509 *x = parse_cert(cert_pem);
    assert_int_equal(X509_check_private_key(x, key), 1);
    check_common(f, x, &info, "plug-7");
    X509_free(x);
    EVP_PKEY_free(key);
    free(cert_pem);
    em_keystore_data_free((unsigned char *)key_pem, strlen(key_pem));
    /* new_key needs a CN: there is no CSR to take one from. */
    opts_for(&o, EM_CERT_DEVICE, NULL);
    assert_int_equal(em_pki_issue_new_key(f->pki, &o, &key_pem, &cert_pem, NULL, &err),
                     EM_ERR_VALIDATION);
}

static int collect(const em_pki_cert_t *c, void *userdata)
{
    em__pki_index_t *idx = userdata;
    return em__pki_index_add(idx, c, NULL) == EM_OK ? 0 : 1;
}

static int cmp_serials(const void *a, const void *b)
{
    return memcmp(((const em_pki_cert_t *)a)->serial, ((const em_pki_cert_t *)b)->serial,
                  EM_PKI_SERIAL_LEN);
}

static void test_serials_are_unique_over_many_issues(void **state)
{
    fx_t *f = *state;
    em_pki_issue_options_t o;
    opts_for(&o, EM_CERT_DEVICE, "meter-1");
    char *csr = make_csr("P-256", "meter-1", NULL);
    em_error_t err;
    for (int i = 0; i < 200; i++)
        assert_int_equal(em_pki_issue_csr(f->pki, &o, csr, strlen(csr), NULL, NULL, &err), EM_OK);
    free(csr);
    em__pki_index_t all = {0};
    assert_int_equal(em_pki_list(f->pki, collect, &all, &err), EM_OK);
    assert_int_equal(all.n, 200);
    qsort(all.certs, all.n, sizeof(all.certs[0]), cmp_serials);
    for (size_t i = 1; i < all.n; i++)
        assert_true(memcmp(all.certs[i].serial, all.certs[i - 1].serial, EM_PKI_SERIAL_LEN) != 0);
    em__pki_index_clear(&all);
}

static int stop_at_two(const em_pki_cert_t *c, void *userdata)
{
    (void)c;
    int *n = userdata;
    return ++*n == 2;
}

static void test_list_stops_when_the_callback_asks(void **state)
{
    fx_t *f = *state;
    for (int i = 0; i < 3; i++)
        X509_free(issue(f, EM_CERT_DEVICE, "meter-2", NULL));
    int n = 0;
    assert_int_equal(em_pki_list(f->pki, stop_at_two, &n, NULL), EM_OK);
    assert_int_equal(n, 2);
}

typedef struct reenter {
    em_pki_t *pki;
    em_err_t get, list, revoke;
} reenter_t;

static int nothing(const em_pki_cert_t *c, void *userdata)
{
    (void)c;
    (void)userdata;
    return 0;
}

static int call_back_in(const em_pki_cert_t *c, void *userdata)
{
    reenter_t *r = userdata;
    r->get = em_pki_get(r->pki, c->serial, NULL, NULL, NULL);
    r->list = em_pki_list(r->pki, nothing, NULL, NULL);
    r->revoke = em_pki_revoke(r->pki, c->serial, EM_CRL_SUPERSEDED, NULL);
    return 1;
}

static void test_list_callback_may_not_use_the_ca(void **state)
{
    fx_t *f = *state;
    em_pki_cert_t info;
    X509_free(issue(f, EM_CERT_DEVICE, "meter-3", &info));
    reenter_t r = {f->pki, EM_OK, EM_OK, EM_OK};
    assert_int_equal(em_pki_list(f->pki, call_back_in, &r, NULL), EM_OK);
    assert_int_equal(r.get, EM_ERR_STATE);
    assert_int_equal(r.list, EM_ERR_STATE);
    assert_int_equal(r.revoke, EM_ERR_STATE);
    /* After the listing, all is usable again. */
    assert_int_equal(em_pki_get(f->pki, info.serial, NULL, NULL, NULL), EM_OK);
}

/* ---- revocation and the CRL --------------------------------------------------------- */

static void test_revoke_puts_the_certificate_in_a_new_crl(void **state)
{
    fx_t *f = *state;
    em_pki_cert_t info, other;
    X509 *x = issue(f, EM_CERT_DEVICE, "sensor-01", &info);
    X509 *y = issue(f, EM_CERT_DEVICE, "sensor-02", &other);
    em_error_t err;
    /* Serials are taken in any case. */
    char upper[EM_PKI_SERIAL_LEN + 1];
    for (size_t i = 0; i <= EM_PKI_SERIAL_LEN; i++)
        upper[i] = (char)(info.serial[i] >= 'a' ? info.serial[i] - 32 : info.serial[i]);
    assert_int_equal(em_pki_revoke(f->pki, upper, EM_CRL_KEY_COMPROMISE, &err), EM_OK);
    X509_CRL *crl = read_crl(f);
    X509 *ca = em_pki_ca_cert(f->pki);
    assert_int_equal(X509_CRL_verify(crl, X509_get0_pubkey(ca)), 1);
    assert_int_equal(X509_CRL_get_version(crl), X509_CRL_VERSION_2);
    assert_int_equal(X509_NAME_cmp(X509_CRL_get_issuer(crl), X509_get_subject_name(ca)), 0);
    ASN1_INTEGER *num = X509_CRL_get_ext_d2i(crl, NID_crl_number, NULL, NULL);
    assert_non_null(num);
    assert_int_equal(ASN1_INTEGER_get(num), 2);
    ASN1_INTEGER_free(num);
    AUTHORITY_KEYID *akid = X509_CRL_get_ext_d2i(crl, NID_authority_key_identifier, NULL, NULL);
    assert_non_null(akid);
    assert_int_equal(ASN1_OCTET_STRING_cmp(akid->keyid, X509_get0_subject_key_id(ca)), 0);
    AUTHORITY_KEYID_free(akid);
    int reason = 0;
    assert_true(crl_has(crl, x, &reason));
    assert_int_equal(reason, EM_CRL_KEY_COMPROMISE);
    assert_false(crl_has(crl, y, &reason));
    int64_t last, next;
    assert_true(em__pki_asn1_time_ms(X509_CRL_get0_lastUpdate(crl), &last));
    assert_true(em__pki_asn1_time_ms(X509_CRL_get0_nextUpdate(crl), &next));
    assert_int_equal(next - last, 30 * DAY_MS);
    X509_CRL_free(crl);
    em_pki_cert_t got;
    assert_int_equal(em_pki_get(f->pki, info.serial, &got, NULL, &err), EM_OK);
    assert_true(got.revoked_at_ms > 0);
    assert_int_equal(got.reason, EM_CRL_KEY_COMPROMISE);
    X509_free(x);
    X509_free(y);
}

static void test_revoke_twice_is_refused(void **state)
{
    fx_t *f = *state;
    em_pki_cert_t info;
    X509_free(issue(f, EM_CERT_DEVICE, "sensor-01", &info));
    em_error_t err;
    assert_int_equal(em_pki_revoke(f->pki, info.serial, EM_CRL_SUPERSEDED, &err), EM_OK);
    assert_int_equal(em_pki_revoke(f->pki, info.serial, EM_CRL_KEY_COMPROMISE, &err), EM_ERR_STATE);
    em_pki_cert_t got;
    assert_int_equal(em_pki_get(f->pki, info.serial, &got, NULL, &err), EM_OK);
    assert_int_equal(got.reason, EM_CRL_SUPERSEDED); /* the first reason stays */
}

static void test_revoke_of_unknown_or_bad_serials(void **state)
{
    fx_t *f = *state;
    em_error_t err;
    assert_int_equal(
        em_pki_revoke(f->pki, "0123456789abcdef0123456789abcdef", EM_CRL_UNSPECIFIED, &err),
        EM_ERR_NOT_FOUND);
    assert_int_equal(em_pki_revoke(f->pki, "0123", EM_CRL_UNSPECIFIED, &err), EM_ERR_VALIDATION);
    assert_int_equal(
        em_pki_revoke(f->pki, "0123456789abcdef0123456789abcdeg", EM_CRL_UNSPECIFIED, &err),
        EM_ERR_VALIDATION);
    assert_int_equal(em_pki_get(f->pki, "zz", NULL, NULL, &err), EM_ERR_VALIDATION);
    assert_int_equal(em_pki_get(f->pki, "0123456789abcdef0123456789abcdef", NULL, NULL, &err),
                     EM_ERR_NOT_FOUND);
}

static void test_crl_publish_counts_up_and_takes_a_period(void **state)
{
    fx_t *f = *state;
    em_error_t err;
    assert_int_equal(em_pki_crl_publish(f->pki, 0, &err), EM_OK);
    assert_int_equal(em_pki_crl_publish(f->pki, 3, &err), EM_OK);
    X509_CRL *crl = read_crl(f);
    ASN1_INTEGER *num = X509_CRL_get_ext_d2i(crl, NID_crl_number, NULL, NULL);
    assert_int_equal(ASN1_INTEGER_get(num), 3);
    ASN1_INTEGER_free(num);
    int64_t last, next;
    assert_true(em__pki_asn1_time_ms(X509_CRL_get0_lastUpdate(crl), &last));
    assert_true(em__pki_asn1_time_ms(X509_CRL_get0_nextUpdate(crl), &next));
    assert_int_equal(next - last, 3 * DAY_MS);
    X509_CRL_free(crl);
    assert_int_equal(em_pki_crl_publish(f->pki, 367, &err), EM_ERR_VALIDATION);
}

/* ---- the index ------------------------------------------------------------------------ */

#define GOOD_LINE                                                                                  \
    "0123456789abcdef0123456789abcdef\tdevice\t1000\t2000\t0\t-\t"                                 \
    "00112233445566778899aabbccddeeff00112233445566778899aabbccddeeff\tsensor-01\n"

static void test_index_parses_and_formats_back_the_same(void **state)
{
    (void)state;
    const char *text =
        GOOD_LINE "7123456789abcdef0123456789abcdef\tclient\t1000\t2000\t1500\tkeyCompromise\t"
                  "00112233445566778899aabbccddeeff00112233445566778899aabbccddeeff\talice@ops\n";
    em__pki_index_t idx;
    em_error_t err;
    assert_int_equal(em__pki_index_parse(text, strlen(text), &idx, &err), EM_OK);
    assert_int_equal(idx.n, 2);
    assert_int_equal(idx.certs[1].reason, EM_CRL_KEY_COMPROMISE);
    assert_int_equal(idx.certs[1].revoked_at_ms, 1500);
    char *out;
    size_t len;
    assert_int_equal(em__pki_index_format(&idx, &out, &len, &err), EM_OK);
    assert_string_equal(out, text);
    free(out);
    em__pki_index_clear(&idx);
}

static void expect_bad_index(const char *text, const char *line)
{
    em__pki_index_t idx;
    em_error_t err;
    assert_int_equal(em__pki_index_parse(text, strlen(text), &idx, &err), EM_ERR_MESSAGE_FORMAT);
    if (strstr(err.message, line) == NULL)
        fail_msg("\"%s\" does not name %s", err.message, line);
    assert_null(idx.certs);
    assert_int_equal(idx.n, 0);
}

static void test_index_refuses_damaged_lines_naming_them(void **state)
{
    (void)state;
    expect_bad_index(GOOD_LINE "0123", "line 2");    /* torn */
    expect_bad_index(GOOD_LINE GOOD_LINE, "line 2"); /* duplicate */
    expect_bad_index("x" GOOD_LINE, "line 1");       /* bad serial */
    expect_bad_index(GOOD_LINE "\n", "line 2");      /* empty line */
    expect_bad_index(
        "0123456789abcdef0123456789abcdef\tdevice\t1000\t2000\t0\tkeyCompromise\t"
        "00112233445566778899aabbccddeeff00112233445566778899aabbccddeeff\tsensor-01\n",
        "line 1"); /* a reason without a revocation */
    expect_bad_index(
        "0123456789abcdef0123456789abcdef\tclient\t1000\t2000\t0\t-\t"
        "00112233445566778899aabbccddeeff00112233445566778899aabbccddeeff\tsensor-01\n",
        "line 1"); /* a client CN that is a device id */
    expect_bad_index(
        "0123456789abcdef0123456789abcdef\tdevice\t2000\t1000\t0\t-\t"
        "00112233445566778899aabbccddeeff00112233445566778899aabbccddeeff\tsensor-01\n",
        "line 1"); /* backwards period */
    expect_bad_index(
        "0123456789abcdef0123456789abcdef\tdevice\t01000\t2000\t0\t-\t"
        "00112233445566778899aabbccddeeff00112233445566778899aabbccddeeff\tsensor-01\n",
        "line 1"); /* leading zero */
    expect_bad_index(
        "0123456789abcdef0123456789abcdef\tdevice\t1000\t2000\t0\t-\t"
        "00112233445566778899aabbccddeeff00112233445566778899aabbccddeeff\tsensor-01\textra\n",
        "line 1");
}

static void test_open_refuses_a_damaged_index(void **state)
{
    fx_t *f = *state;
    X509_free(issue(f, EM_CERT_DEVICE, "sensor-01", NULL));
    char p[512];
    path_in(p, sizeof(p), f->dir, "index");
    char *text = read_text(p);
    size_t n = strlen(text);
    char *damaged = malloc(2 * n + 8);
    memcpy(damaged, text, n);
    memcpy(damaged + n, text, n);
    damaged[n + 3] = 'Z'; /* second line's serial */
    damaged[2 * n] = '\0';
    write_text(p, damaged);
    em_pki_t *other = NULL;
    em_error_t err;
    assert_int_equal(em_pki_open(f->dir, NULL, NULL, &other, &err), EM_ERR_MESSAGE_FORMAT);
    assert_non_null(strstr(err.message, "line 2"));
    /* The open em_pki_t notices the change too, and refuses to issue on it. */
    em_pki_issue_options_t o;
    opts_for(&o, EM_CERT_DEVICE, "sensor-02");
    assert_int_equal(issue_err(f, &o, "P-256", "sensor-02", &err), EM_ERR_MESSAGE_FORMAT);
    free(damaged);
    free(text);
}

/* ---- the verifier ------------------------------------------------------------------------ */

static em_verifier_t *verifier(fx_t *f, bool crl)
{
    em_verifier_t *v = NULL;
    em_error_t err;
    em_err_t rc =
        em_verifier_new(em_pki_ca_file(f->pki), crl ? em_pki_crl_file(f->pki) : NULL, &v, &err);
    if (rc != EM_OK)
        fail_msg("verifier: %s", err.message);
    return v;
}

static void expect_refused(em_verifier_t *v, X509 *x, em_cert_profile_t purpose, const char *reason)
{
    em_error_t err;
    assert_int_equal(em_verifier_check(v, x, NULL, purpose, em_now_ms(), NULL, &err),
                     EM_ERR_CERTIFICATE);
    if (strcmp(err.message, reason) != 0)
        fail_msg("refused with \"%s\", expected \"%s\"", err.message, reason);
}

typedef struct devices {
    const char *registered;
    const char *disabled;
} devices_t;

static em_err_t device_check(const char *id, void *userdata)
{
    const devices_t *d = userdata;
    if (d->disabled != NULL && strcmp(id, d->disabled) == 0)
        return EM_ERR_PERMISSION_DENIED;
    if (d->registered != NULL && strcmp(id, d->registered) == 0)
        return EM_OK;
    return EM_ERR_DEVICE_NOT_FOUND;
}

static void test_verifier_accepts_a_good_device_certificate(void **state)
{
    fx_t *f = *state;
    em_pki_cert_t info;
    X509 *x = issue(f, EM_CERT_DEVICE, "sensor-01", &info);
    em_verifier_t *v = verifier(f, true);
    em_cert_identity_t id;
    em_error_t err;
    devices_t d = {"sensor-01", NULL};
    assert_int_equal(em_verifier_check_device(v, x, NULL, em_now_ms(), device_check, &d, &id, &err),
                     EM_OK);
    assert_string_equal(id.common_name, "sensor-01");
    assert_string_equal(id.serial, info.serial);
    assert_string_equal(id.sha256, info.sha256);
    assert_int_equal(id.not_after_ms, info.not_after_ms);
    char *pem = NULL;
    assert_int_equal(em_pki_get(f->pki, info.serial, NULL, &pem, &err), EM_OK);
    assert_int_equal(
        em_verifier_check_pem(v, pem, strlen(pem), EM_CERT_DEVICE, em_now_ms(), &id, &err), EM_OK);
    assert_int_equal(em_verifier_check_pem(v, "junk", 4, EM_CERT_DEVICE, em_now_ms(), &id, &err),
                     EM_ERR_MESSAGE_FORMAT);
    free(pem);
    em_verifier_free(v);
    X509_free(x);
}

static void test_verifier_refuses_a_certificate_of_another_ca(void **state)
{
    fx_t *f = *state;
    char dir[512];
    path_in(dir, sizeof(dir), f->tmp, "other");
    em_pki_init_options_t o;
    em_pki_init_options_init(&o);
    o.secret = f->secret;
    o.common_name = "emiot CA"; /* even the same name */
    em_error_t err;
    assert_int_equal(em_pki_init(dir, &o, &err), EM_OK);
    em_pki_t *other = NULL;
    assert_int_equal(em_pki_open(dir, f->secret, NULL, &other, &err), EM_OK);
    fx_t g = *f;
    g.pki = other;
    X509 *x = issue(&g, EM_CERT_DEVICE, "sensor-01", NULL);
    em_verifier_t *v = verifier(f, true);
    expect_refused(v, x, EM_CERT_DEVICE, "untrusted issuer");
    em_verifier_free(v);
    /* A CRL that the CA file's CAs did not sign is refused at once. */
    assert_int_equal(em_verifier_new(em_pki_ca_file(f->pki), em_pki_crl_file(other), &v, &err),
                     EM_ERR_CERTIFICATE);
    X509_free(x);
    em_pki_free(other);
}

static X509 *issue_period(fx_t *f, int64_t nb, int64_t na)
{
    em_pki_issue_options_t o;
    opts_for(&o, EM_CERT_DEVICE, "sensor-01");
    o.not_before_ms = nb;
    o.not_after_ms = na;
    char *csr = make_csr("P-256", "sensor-01", NULL);
    char *pem = NULL;
    em_error_t err;
    em_err_t rc = em_pki_issue_csr(f->pki, &o, csr, strlen(csr), &pem, NULL, &err);
    if (rc != EM_OK)
        fail_msg("issue: %s", err.message);
    X509 *x = parse_cert(pem);
    free(pem);
    free(csr);
    return x;
}

static void test_verifier_refuses_expired_and_not_yet_valid_certificates(void **state)
{
    fx_t *f = *state;
    int64_t now = em_now_ms();
    int64_t ca_nb;
    assert_true(em__pki_asn1_time_ms(X509_get0_notBefore(em_pki_ca_cert(f->pki)), &ca_nb));
    /* Issued for a period that is over (allowed: it is the operator's CA). */
    X509 *old = issue_period(f, ca_nb + 1000, now - 2000);
    X509 *future = issue_period(f, now + DAY_MS, now + 2 * DAY_MS);
    em_verifier_t *v = verifier(f, true);
    expect_refused(v, old, EM_CERT_DEVICE, "expired");
    expect_refused(v, future, EM_CERT_DEVICE, "not yet valid");
    /* The time is the caller's: the future certificate is good tomorrow. */
    em_error_t err;
    assert_int_equal(
        em_verifier_check(v, future, NULL, EM_CERT_DEVICE, now + DAY_MS + 60000, NULL, &err),
        EM_OK);
    em_verifier_free(v);
    X509_free(old);
    X509_free(future);
}

static void test_verifier_refuses_a_revoked_certificate_after_reload(void **state)
{
    fx_t *f = *state;
    em_pki_cert_t info;
    X509 *x = issue(f, EM_CERT_DEVICE, "sensor-01", &info);
    em_verifier_t *v = verifier(f, true);
    em_error_t err;
    bool changed = true;
    assert_int_equal(em_verifier_reload(v, &changed, &err), EM_OK);
    assert_false(changed);
    assert_int_equal(em_verifier_check(v, x, NULL, EM_CERT_DEVICE, em_now_ms(), NULL, &err), EM_OK);
    assert_int_equal(em_pki_revoke(f->pki, info.serial, EM_CRL_KEY_COMPROMISE, &err), EM_OK);
    assert_int_equal(em_verifier_reload(v, &changed, &err), EM_OK);
    assert_true(changed);
    expect_refused(v, x, EM_CERT_DEVICE, "revoked");
    /* A damaged CRL file is refused on reload, and the old one stays. */
    write_text(em_pki_crl_file(f->pki), "not a crl\n");
    assert_int_equal(em_verifier_reload(v, &changed, &err), EM_ERR_CONFIGURATION);
    expect_refused(v, x, EM_CERT_DEVICE, "revoked");
    em_verifier_free(v);
    X509_free(x);
}

static void test_verifier_refuses_the_wrong_use(void **state)
{
    fx_t *f = *state;
    X509 *server = issue(f, EM_CERT_SERVER, "broker.local", NULL);
    X509 *client = issue(f, EM_CERT_CLIENT, "alice@ops", NULL);
    X509 *device = issue(f, EM_CERT_DEVICE, "sensor-01", NULL);
    em_verifier_t *v = verifier(f, true);
    expect_refused(v, server, EM_CERT_DEVICE, "extended key usage");
    expect_refused(v, client, EM_CERT_DEVICE, "CN is not a device id");
    expect_refused(v, device, EM_CERT_SERVER, "extended key usage");
    /* The CA itself is no end-entity certificate. */
    expect_refused(v, em_pki_ca_cert(f->pki), EM_CERT_CLIENT,
                   "a CA certificate is not an end-entity certificate");
    em_error_t err;
    assert_int_equal(em_verifier_check(v, server, NULL, EM_CERT_SERVER, em_now_ms(), NULL, &err),
                     EM_OK);
    assert_int_equal(em_verifier_check(v, client, NULL, EM_CERT_CLIENT, em_now_ms(), NULL, &err),
                     EM_OK);
    em_verifier_free(v);
    X509_free(server);
    X509_free(client);
    X509_free(device);
}

static void test_verifier_refuses_unregistered_and_disabled_devices(void **state)
{
    fx_t *f = *state;
    X509 *x = issue(f, EM_CERT_DEVICE, "sensor-01", NULL);
    em_verifier_t *v = verifier(f, true);
    em_error_t err;
    devices_t none = {NULL, NULL};
    assert_int_equal(
        em_verifier_check_device(v, x, NULL, em_now_ms(), device_check, &none, NULL, &err),
        EM_ERR_CERTIFICATE);
    assert_string_equal(err.message, "device not registered");
    assert_string_equal(err.device_id, "sensor-01");
    devices_t disabled = {"sensor-01", "sensor-01"};
    assert_int_equal(
        em_verifier_check_device(v, x, NULL, em_now_ms(), device_check, &disabled, NULL, &err),
        EM_ERR_CERTIFICATE);
    assert_string_equal(err.message, "device disabled");
    em_verifier_free(v);
    X509_free(x);
}

static void test_verifier_needs_readable_files(void **state)
{
    fx_t *f = *state;
    em_verifier_t *v = NULL;
    em_error_t err;
    char p[512];
    path_in(p, sizeof(p), f->tmp, "missing.pem");
    assert_int_equal(em_verifier_new(p, NULL, &v, &err), EM_ERR_CONFIGURATION);
    assert_null(v);
    path_in(p, sizeof(p), f->tmp, "empty.pem");
    write_text(p, "");
    assert_int_equal(em_verifier_new(p, NULL, &v, &err), EM_ERR_CONFIGURATION);
    assert_int_equal(em_verifier_new(em_pki_ca_file(f->pki), p, &v, &err), EM_ERR_CONFIGURATION);
}

/* ---- import ----------------------------------------------------------------------------- */

static void openssl_ca(const char *dir, const char *name, bool ca)
{
    char key[512], crt[512];
    char kname[64], cname[64];
    snprintf(kname, sizeof(kname), "%s.key", name);
    snprintf(cname, sizeof(cname), "%s.crt", name);
    path_in(key, sizeof(key), dir, kname);
    path_in(crt, sizeof(crt), dir, cname);
    const char *argv[] = {"openssl",
                          "req",
                          "-x509",
                          "-newkey",
                          "ec",
                          "-pkeyopt",
                          "ec_paramgen_curve:P-256",
                          "-nodes",
                          "-keyout",
                          key,
                          "-out",
                          crt,
                          "-days",
                          "30",
                          "-subj",
                          ca ? "/CN=Operator Root CA" : "/CN=not-a-ca",
                          "-addext",
                          ca ? "basicConstraints=critical,CA:TRUE"
                             : "basicConstraints=critical,CA:FALSE",
                          NULL};
    assert_int_equal(run(argv), 0);
    assert_int_equal(chmod(key, 0600), 0);
}

static void test_import_of_an_operator_ca(void **state)
{
    fx_t *f = *state;
    openssl_ca(f->tmp, "op", true);
    char crt[512], key[512], dir[512];
    path_in(crt, sizeof(crt), f->tmp, "op.crt");
    path_in(key, sizeof(key), f->tmp, "op.key");
    path_in(dir, sizeof(dir), f->tmp, "imported");
    em_error_t err;
    em_err_t rc = em_pki_import(dir, crt, key, f->secret, NULL, 0, &err);
    if (rc != EM_OK)
        fail_msg("import: %s", err.message);
    em_pki_t *op = NULL;
    assert_int_equal(em_pki_open(dir, f->secret, NULL, &op, &err), EM_OK);
    fx_t g = *f;
    g.pki = op;
    em_pki_cert_t info;
    X509 *x = issue(&g, EM_CERT_DEVICE, "sensor-01", &info);
    em_verifier_t *v = verifier(&g, true);
    assert_int_equal(em_verifier_check(v, x, NULL, EM_CERT_DEVICE, em_now_ms(), NULL, &err), EM_OK);
    assert_int_equal(em_pki_revoke(op, info.serial, EM_CRL_UNSPECIFIED, &err), EM_OK);
    assert_int_equal(em_verifier_reload(v, NULL, &err), EM_OK);
    expect_refused(v, x, EM_CERT_DEVICE, "revoked");
    em_verifier_free(v);
    X509_free(x);
    em_pki_free(op);
    /* The key went into the keystore, not as a copy of the plain file. */
    assert_int_equal(mode_of(dir, "ca.key"), 0600);
    char p[512];
    path_in(p, sizeof(p), dir, "ca.key");
    char *sealed = read_text(p);
    assert_true(em_keystore_is_sealed(sealed, 4));
    free(sealed);
    /* Once there, a second import is refused. */
    assert_int_equal(em_pki_import(dir, crt, key, f->secret, NULL, 0, &err), EM_ERR_EXISTS);
}

static void test_import_refuses_a_certificate_that_is_not_a_ca(void **state)
{
    fx_t *f = *state;
    openssl_ca(f->tmp, "leaf", false);
    char crt[512], key[512], dir[512];
    path_in(crt, sizeof(crt), f->tmp, "leaf.crt");
    path_in(key, sizeof(key), f->tmp, "leaf.key");
    path_in(dir, sizeof(dir), f->tmp, "imported");
    em_error_t err;
    assert_int_equal(em_pki_import(dir, crt, key, f->secret, NULL, 0, &err), EM_ERR_CERTIFICATE);
    assert_int_equal(access(dir, F_OK), -1);
}

static void test_import_refuses_a_key_that_does_not_match(void **state)
{
    fx_t *f = *state;
    openssl_ca(f->tmp, "op", true);
    openssl_ca(f->tmp, "op2", true);
    char crt[512], key[512], dir[512];
    path_in(crt, sizeof(crt), f->tmp, "op.crt");
    path_in(key, sizeof(key), f->tmp, "op2.key");
    path_in(dir, sizeof(dir), f->tmp, "imported");
    em_error_t err;
    assert_int_equal(em_pki_import(dir, crt, key, f->secret, NULL, 0, &err), EM_ERR_CERTIFICATE);
    assert_string_equal(err.field, "key");
    path_in(crt, sizeof(crt), f->tmp, "nothing.crt");
    assert_int_equal(em_pki_import(dir, crt, key, f->secret, NULL, 0, &err), EM_ERR_CONFIGURATION);
    path_in(crt, sizeof(crt), f->tmp, "op.key"); /* a key is no certificate */
    assert_int_equal(em_pki_import(dir, crt, key, f->secret, NULL, 0, &err), EM_ERR_MESSAGE_FORMAT);
}

/* ---- two processes ---------------------------------------------------------------------- */

static void test_two_processes_issuing_at_once_keep_the_index_whole(void **state)
{
    fx_t *f = *state;
    char *csr = make_csr("P-256", "meter-1", NULL);
    enum { PER_CHILD = 25 };
    pid_t kids[2];
    for (int k = 0; k < 2; k++) {
        kids[k] = fork();
        assert_true(kids[k] >= 0);
        if (kids[k] == 0) {
            /* Each process opens the directory itself: its own lock. */
            em_pki_t *p = NULL;
            if (em_pki_open(f->dir, f->secret, NULL, &p, NULL) != EM_OK)
                _exit(2);
            em_pki_issue_options_t o;
            opts_for(&o, EM_CERT_DEVICE, "meter-1");
            for (int i = 0; i < PER_CHILD; i++) {
                if (em_pki_issue_csr(p, &o, csr, strlen(csr), NULL, NULL, NULL) != EM_OK)
                    _exit(3);
            }
            em_pki_free(p);
            _exit(0);
        }
    }
    for (int k = 0; k < 2; k++) {
        int st;
        assert_int_equal(waitpid(kids[k], &st, 0), kids[k]);
        assert_true(WIFEXITED(st));
        assert_int_equal(WEXITSTATUS(st), 0);
    }
    free(csr);
    em__pki_index_t all = {0};
    em_error_t err;
    assert_int_equal(em_pki_list(f->pki, collect, &all, &err), EM_OK);
    assert_int_equal(all.n, 2 * PER_CHILD);
    for (size_t i = 0; i < all.n; i++) {
        char name[64], p[512];
        snprintf(name, sizeof(name), "certs/%s.pem", all.certs[i].serial);
        path_in(p, sizeof(p), f->dir, name);
        assert_int_equal(access(p, R_OK), 0);
    }
    em__pki_index_clear(&all);
}

/* ---- signatures ------------------------------------------------------------------------- */

static unsigned char *sign_msg(EVP_PKEY *key, int pad, const char *msg, size_t *len)
{
    EVP_MD_CTX *m = EVP_MD_CTX_new();
    EVP_PKEY_CTX *pc = NULL;
    int id = EVP_PKEY_get_base_id(key);
    assert_int_equal(
        EVP_DigestSignInit(m, &pc, id == EVP_PKEY_ED25519 ? NULL : EVP_sha256(), NULL, key), 1);
    if (pad != 0)
        assert_int_equal(EVP_PKEY_CTX_set_rsa_padding(pc, pad), 1);
    size_t n = 0;
    assert_int_equal(EVP_DigestSign(m, NULL, &n, (const unsigned char *)msg, strlen(msg)), 1);
    unsigned char *sig = malloc(n);
    assert_int_equal(EVP_DigestSign(m, sig, &n, (const unsigned char *)msg, strlen(msg)), 1);
    EVP_MD_CTX_free(m);
    *len = n;
    return sig;
}

static void test_verify_signature_by_each_key_type(void **state)
{
    fx_t *f = *state;
    const char *kinds[] = {"P-256", "P-384", "ED25519", "RSA2048", "RSA2048"};
    const int pads[] = {0, 0, 0, 0, RSA_PKCS1_PSS_PADDING};
    const char *msg = "emiot-device-auth-v1\nsensor-01\nnonce";
    for (size_t i = 0; i < 5; i++) {
        EVP_PKEY *key = NULL;
        char *csr = make_csr(kinds[i], "sensor-01", &key);
        em_pki_issue_options_t o;
        opts_for(&o, EM_CERT_DEVICE, "sensor-01");
        char *pem = NULL;
        em_error_t err;
        assert_int_equal(em_pki_issue_csr(f->pki, &o, csr, strlen(csr), &pem, NULL, &err), EM_OK);
        X509 *x = parse_cert(pem);
        size_t n;
        unsigned char *sig = sign_msg(key, pads[i], msg, &n);
        assert_int_equal(em_pki_verify_signature(x, msg, strlen(msg), sig, n, &err), EM_OK);
        /* Another message, or a changed signature, does not verify. */
        assert_int_equal(em_pki_verify_signature(x, msg, strlen(msg) - 1, sig, n, &err),
                         EM_ERR_CRYPTO);
        sig[n / 2] ^= 0x40;
        assert_int_equal(em_pki_verify_signature(x, msg, strlen(msg), sig, n, &err), EM_ERR_CRYPTO);
        assert_int_equal(em_pki_verify_signature(x, msg, strlen(msg), sig, 0, &err), EM_ERR_CRYPTO);
        free(sig);
        X509_free(x);
        free(pem);
        free(csr);
        EVP_PKEY_free(key);
    }
}

static void test_key_acceptable_names_the_reason(void **state)
{
    (void)state;
    em_error_t err;
    EVP_PKEY *k = gen_key("RSA1024");
    assert_int_equal(em_pki_key_acceptable(k, &err), EM_ERR_VALIDATION);
    assert_string_equal(err.field, "key");
    assert_string_equal(err.message, "RSA key of 1024 bits is too weak (2048 at least)");
    EVP_PKEY_free(k);
    k = gen_key("P-256");
    assert_int_equal(em_pki_key_acceptable(k, &err), EM_OK);
    EVP_PKEY_free(k);
    assert_int_equal(em_pki_key_acceptable(NULL, &err), EM_ERR_VALIDATION);
}

int main(void)
{
#define T(name) cmocka_unit_test_setup_teardown(name, setup, teardown)
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_profile_and_reason_names_round_trip),
        T(test_init_writes_the_directory_with_private_modes),
        T(test_init_makes_a_p256_ca_certificate),
        T(test_init_refuses_a_directory_that_holds_a_ca),
        T(test_init_refuses_bad_options),
        T(test_open_without_secret_is_read_only),
        T(test_open_of_a_missing_ca_is_not_found),
        T(test_open_with_a_wrong_passphrase_fails),
        T(test_issue_device_certificate_from_csr),
        T(test_issue_client_certificate),
        T(test_issue_server_certificate_with_names),
        T(test_issue_server_without_names_puts_the_cn_in_the_san),
        T(test_issue_refuses_bad_subject_alt_names),
        T(test_issue_ignores_extensions_requested_in_the_csr),
        T(test_issue_refuses_a_cn_that_does_not_match),
        T(test_issue_refuses_a_device_cn_that_is_not_a_device_id),
        T(test_issue_refuses_a_client_cn_that_is_a_device_id),
        T(test_issue_refuses_weak_or_unsupported_keys),
        T(test_issue_accepts_p384_ed25519_and_rsa2048_keys),
        T(test_issue_refuses_a_csr_whose_signature_does_not_verify),
        T(test_issue_refuses_garbage_csrs),
        T(test_issue_refuses_bad_periods),
        T(test_issue_days_never_outlive_the_ca),
        T(test_issue_new_key_returns_a_matching_key),
        T(test_serials_are_unique_over_many_issues),
        T(test_list_stops_when_the_callback_asks),
        T(test_list_callback_may_not_use_the_ca),
        T(test_revoke_puts_the_certificate_in_a_new_crl),
        T(test_revoke_twice_is_refused),
        T(test_revoke_of_unknown_or_bad_serials),
        T(test_crl_publish_counts_up_and_takes_a_period),
        cmocka_unit_test(test_index_parses_and_formats_back_the_same),
        cmocka_unit_test(test_index_refuses_damaged_lines_naming_them),
        T(test_open_refuses_a_damaged_index),
        T(test_verifier_accepts_a_good_device_certificate),
        T(test_verifier_refuses_a_certificate_of_another_ca),
        T(test_verifier_refuses_expired_and_not_yet_valid_certificates),
        T(test_verifier_refuses_a_revoked_certificate_after_reload),
        T(test_verifier_refuses_the_wrong_use),
        T(test_verifier_refuses_unregistered_and_disabled_devices),
        T(test_verifier_needs_readable_files),
        T(test_import_of_an_operator_ca),
        T(test_import_refuses_a_certificate_that_is_not_a_ca),
        T(test_import_refuses_a_key_that_does_not_match),
        T(test_two_processes_issuing_at_once_keep_the_index_whole),
        T(test_verify_signature_by_each_key_type),
        cmocka_unit_test(test_key_acceptable_names_the_reason),
    };
#undef T
    return cmocka_run_group_tests(tests, NULL, NULL);
}
