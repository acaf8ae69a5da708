/*
 * emiot - pki/issue.c: making certificates: the CA's own, and those of the
 * three profiles (device, server, client), with their serials, validity
 * periods and extensions.
 *
 * Only the public key and the CN come from the requester; everything else
 * (usages, constraints, names, validity) is decided here by the profile, so
 * that a CSR asking for CA:TRUE or serverAuth gets nothing of the sort.
 */
#include <arpa/inet.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <time.h>
#include <unistd.h>

#include <openssl/bn.h>
#include <openssl/err.h>
#include <openssl/pem.h>
#include <openssl/rand.h>
#include <openssl/x509v3.h>

#include "emiot/clock.h"
#include "pki/pki_internal.h"

#define DAY_MS          (86400 * 1000LL)
#define SERIAL_BYTES    16
#define SERIAL_ATTEMPTS 8
#define DNS_NAME_MAX    253

/* ---- small helpers shared by the PKI ---------------------------------------- */

/* n bytes as 2n lower-case hex digits and a NUL. */
static void hex_encode(const unsigned char *in, size_t n, char *out)
{
    static const char HEX[] = "0123456789abcdef";
    for (size_t i = 0; i < n; i++) {
        out[2 * i] = HEX[in[i] >> 4];
        out[2 * i + 1] = HEX[in[i] & 15];
    }
    out[2 * n] = '\0';
}

bool em__pki_asn1_time_ms(const ASN1_TIME *t, int64_t *out)
{
    struct tm tm;
    if (t == NULL || ASN1_TIME_to_tm(t, &tm) != 1)
        return false;
    time_t s = timegm(&tm);
    if (s < 0 || s > INT64_MAX / 1000)
        return false;
    *out = (int64_t)s * 1000;
    return true;
}

bool em__pki_serial_hex(const ASN1_INTEGER *serial, char *out, size_t size)
{
    BIGNUM *bn = serial != NULL ? ASN1_INTEGER_to_BN(serial, NULL) : NULL;
    if (bn == NULL || BN_is_negative(bn) || BN_num_bytes(bn) > 64) {
        BN_free(bn);
        return false;
    }
    unsigned char buf[64];
    int n = BN_num_bytes(bn);
    if (n < SERIAL_BYTES)
        n = SERIAL_BYTES;
    if ((size_t)n * 2 + 1 > size || BN_bn2binpad(bn, buf, n) != n) {
        BN_free(bn);
        return false;
    }
    BN_free(bn);
    hex_encode(buf, (size_t)n, out);
    return true;
}

const EVP_MD *em__pki_sign_md(EVP_PKEY *key)
{
    int id = EVP_PKEY_get_base_id(key);
    return id == EVP_PKEY_ED25519 || id == EVP_PKEY_ED448 ? NULL : EVP_sha256();
}

bool em__pki_name_cn(const X509_NAME *name, char out[EM_PKI_CN_MAX + 1])
{
    if (name == NULL)
        return false;
    int at = X509_NAME_get_index_by_NID(name, NID_commonName, -1);
    if (at < 0 || X509_NAME_get_index_by_NID(name, NID_commonName, at) >= 0)
        return false; /* none, or more than one */
    const ASN1_STRING *s = X509_NAME_ENTRY_get_data(X509_NAME_get_entry(name, at));
    unsigned char *utf8 = NULL;
    int n = ASN1_STRING_to_UTF8(&utf8, s);
    bool ok = n >= 1 && n <= EM_PKI_CN_MAX;
    for (int i = 0; ok && i < n; i++)
        ok = utf8[i] >= 0x20 && utf8[i] < 0x7f;
    if (ok) {
        memcpy(out, utf8, (size_t)n);
        out[n] = '\0';
    }
    OPENSSL_free(utf8);
    return ok;
}

bool em__pki_pem_certs(const char *pem, size_t len, int max, X509 **first, STACK_OF(X509) * *rest)
{
    *first = NULL;
    *rest = NULL;
    BIO *bio = BIO_new_mem_buf(pem, (int)len);
    STACK_OF(X509) *chain = sk_X509_new_null();
    if (bio == NULL || chain == NULL) {
        BIO_free(bio);
        sk_X509_free(chain);
        return false;
    }
    X509 *cert = PEM_read_bio_X509(bio, NULL, NULL, NULL);
    X509 *x;
    /* Past max, or at the first block that is not a certificate, the rest
     * is left unread. */
    while (cert != NULL && sk_X509_num(chain) < max &&
           (x = PEM_read_bio_X509(bio, NULL, NULL, NULL)) != NULL) {
        if (sk_X509_push(chain, x) <= 0) {
            X509_free(x);
            break;
        }
    }
    ERR_clear_error();
    BIO_free(bio);
    *first = cert;
    *rest = chain;
    return true;
}

char *em__pki_cert_pem(X509 *cert, size_t *len)
{
    BIO *bio = BIO_new(BIO_s_mem());
    if (bio == NULL || PEM_write_bio_X509(bio, cert) != 1) {
        BIO_free(bio);
        return NULL;
    }
    char *data;
    long n = BIO_get_mem_data(bio, &data);
    char *pem = n > 0 ? malloc((size_t)n + 1) : NULL;
    if (pem != NULL) {
        memcpy(pem, data, (size_t)n);
        pem[n] = '\0';
        if (len != NULL)
            *len = (size_t)n;
    }
    BIO_free(bio);
    return pem;
}

void em_pki_fingerprint(X509 *cert, char out[EM_PKI_SHA256_LEN + 1])
{
    unsigned char md[EVP_MAX_MD_SIZE];
    unsigned int n = 0;
    out[0] = '\0';
    if (cert == NULL || X509_digest(cert, EVP_sha256(), md, &n) != 1 || n != 32)
        return;
    hex_encode(md, n, out);
}

/* ---- building certificates --------------------------------------------------- */

em_err_t em__pki_openssl_fail(em_error_t *err, const char *what)
{
    unsigned long e = ERR_peek_last_error();
    const char *r = e != 0 ? ERR_reason_error_string(e) : NULL;
    em_error_set(err, EM_ERR_INTERNAL, EM_SEV_HIGH, NULL, "%s: %s", what,
                 r != NULL ? r : "unknown reason");
    ERR_clear_error();
    return EM_ERR_INTERNAL;
}

static bool add_ext(X509 *cert, X509V3_CTX *ctx, int nid, const char *value)
{
    X509_EXTENSION *ext = X509V3_EXT_conf_nid(NULL, ctx, nid, value);
    if (ext == NULL)
        return false;
    int ok = X509_add_ext(cert, ext, -1);
    X509_EXTENSION_free(ext);
    return ok == 1;
}

/* A random positive 128-bit serial (the top bit cleared, never zero). */
static bool random_serial(unsigned char b[SERIAL_BYTES])
{
    for (int tries = 0; tries < 4; tries++) {
        if (RAND_bytes(b, SERIAL_BYTES) != 1)
            return false;
        b[0] &= 0x7f;
        for (int i = 0; i < SERIAL_BYTES; i++) {
            if (b[i] != 0)
                return true;
        }
    }
    return false;
}

static bool set_serial(X509 *cert, const unsigned char b[SERIAL_BYTES])
{
    BIGNUM *bn = BN_bin2bn(b, SERIAL_BYTES, NULL);
    ASN1_INTEGER *ai = bn != NULL ? BN_to_ASN1_INTEGER(bn, NULL) : NULL;
    int ok = ai != NULL && X509_set_serialNumber(cert, ai) == 1;
    ASN1_INTEGER_free(ai);
    BN_free(bn);
    return ok;
}

static bool set_times(X509 *cert, int64_t nb_ms, int64_t na_ms)
{
    ASN1_TIME *nb = ASN1_TIME_set(NULL, (time_t)(nb_ms / 1000));
    ASN1_TIME *na = ASN1_TIME_set(NULL, (time_t)(na_ms / 1000));
    bool ok = nb != NULL && na != NULL && X509_set1_notBefore(cert, nb) == 1 &&
              X509_set1_notAfter(cert, na) == 1;
    ASN1_TIME_free(nb);
    ASN1_TIME_free(na);
    return ok;
}

static X509_NAME *cn_name(const char *cn)
{
    X509_NAME *name = X509_NAME_new();
    if (name != NULL && X509_NAME_add_entry_by_NID(name, NID_commonName, MBSTRING_UTF8,
                                                   (const unsigned char *)cn, -1, -1, 0) != 1) {
        X509_NAME_free(name);
        return NULL;
    }
    return name;
}

static bool sign(X509 *cert, EVP_PKEY *key)
{
    return X509_sign(cert, key, em__pki_sign_md(key)) > 0;
}

em_err_t em__pki_make_ca_cert(EVP_PKEY *key, const char *cn, int days, X509 **out, em_error_t *err)
{
    *out = NULL;
    unsigned char serial[SERIAL_BYTES];
    X509 *cert = X509_new();
    X509_NAME *name = cn_name(cn);
    int64_t now = em_now_ms();
    bool ok = cert != NULL && name != NULL && random_serial(serial) &&
              X509_set_version(cert, X509_VERSION_3) == 1 && set_serial(cert, serial) &&
              X509_set_subject_name(cert, name) == 1 && X509_set_issuer_name(cert, name) == 1 &&
              set_times(cert, now - EM__PKI_SKEW_S * 1000LL, now + days * DAY_MS) &&
              X509_set_pubkey(cert, key) == 1;
    X509_NAME_free(name);
    if (ok) {
        X509V3_CTX ctx;
        X509V3_set_ctx(&ctx, cert, cert, NULL, NULL, 0);
        /* pathlen 0: this CA signs end entities only, never another CA. */
        ok = add_ext(cert, &ctx, NID_basic_constraints, "critical,CA:TRUE,pathlen:0") &&
             add_ext(cert, &ctx, NID_key_usage, "critical,keyCertSign,cRLSign") &&
             add_ext(cert, &ctx, NID_subject_key_identifier, "hash") &&
             add_ext(cert, &ctx, NID_authority_key_identifier, "keyid:always") && sign(cert, key);
    }
    if (!ok) {
        X509_free(cert);
        return em__pki_openssl_fail(err, "cannot make the CA certificate");
    }
    *out = cert;
    return EM_OK;
}

/* A DNS name for a SAN: LDH labels of 1-63, 253 at most, an optional "*."
 * in front. */
static bool dns_name_valid(const char *s)
{
    size_t len = strnlen(s, DNS_NAME_MAX + 1);
    if (len == 0 || len > DNS_NAME_MAX)
        return false;
    if (len > 2 && s[0] == '*' && s[1] == '.') {
        s += 2;
        len -= 2;
    }
    size_t label = 0;
    for (size_t i = 0; i <= len; i++) {
        char c = '.';
        if (i < len)
            c = s[i];
        if (c == '.') {
            if (label == 0 || label > 63 || s[i - 1] == '-')
                return false;
            label = 0;
        } else if ((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
                   (c == '-' && label > 0)) {
            label++;
        } else {
            return false;
        }
    }
    return true;
}

static bool ip_valid(const char *s)
{
    unsigned char buf[16];
    return inet_pton(AF_INET, s, buf) == 1 || inet_pton(AF_INET6, s, buf) == 1;
}

static bool push_name(GENERAL_NAMES *gens, int type, const char *value)
{
    GENERAL_NAME *g = NULL;
    if (type == GEN_DNS) {
        ASN1_IA5STRING *ia5 = ASN1_IA5STRING_new();
        if (ia5 == NULL || ASN1_STRING_set(ia5, value, -1) != 1) {
            ASN1_IA5STRING_free(ia5);
            return false;
        }
        g = GENERAL_NAME_new();
        if (g == NULL) {
            ASN1_IA5STRING_free(ia5);
            return false;
        }
        GENERAL_NAME_set0_value(g, GEN_DNS, ia5);
    } else {
        g = a2i_GENERAL_NAME(NULL, NULL, NULL, GEN_IPADD, value, 0);
        if (g == NULL)
            return false;
    }
    if (sk_GENERAL_NAME_push(gens, g) <= 0) {
        GENERAL_NAME_free(g);
        return false;
    }
    return true;
}

/* The subjectAltName of a server certificate: the names given, or the CN
 * when none is (clients check SANs, not the CN). */
static em_err_t add_san(X509 *cert, const em_pki_issue_options_t *o, const char *cn,
                        em_error_t *err)
{
    GENERAL_NAMES *gens = sk_GENERAL_NAME_new_null();
    bool ok = gens != NULL;
    for (size_t i = 0; ok && i < o->ndns; i++)
        ok = push_name(gens, GEN_DNS, o->dns_names[i]);
    for (size_t i = 0; ok && i < o->nips; i++)
        ok = push_name(gens, GEN_IPADD, o->ip_addresses[i]);
    if (ok && o->ndns == 0 && o->nips == 0)
        ok = ip_valid(cn) ? push_name(gens, GEN_IPADD, cn)
                          : !dns_name_valid(cn) || push_name(gens, GEN_DNS, cn);
    if (ok && sk_GENERAL_NAME_num(gens) > 0)
        ok = X509_add1_ext_i2d(cert, NID_subject_alt_name, gens, 0, X509V3_ADD_DEFAULT) == 1;
    GENERAL_NAMES_free(gens);
    return ok ? EM_OK : em__pki_openssl_fail(err, "cannot add the subjectAltName");
}

static em_err_t check_sans(const em_pki_issue_options_t *o, em_error_t *err)
{
    if (o->ndns + o->nips == 0)
        return EM_OK;
    if (o->profile != EM_CERT_SERVER)
        return em_error_set(err, EM_ERR_VALIDATION, EM_SEV_MEDIUM, "san",
                            "subjectAltNames are for server certificates only");
    if (o->ndns > EM_PKI_SAN_MAX || o->nips > EM_PKI_SAN_MAX || o->ndns + o->nips > EM_PKI_SAN_MAX)
        return em_error_set(err, EM_ERR_VALIDATION, EM_SEV_MEDIUM, "san",
                            "at most %d subjectAltNames", EM_PKI_SAN_MAX);
    if ((o->ndns > 0 && o->dns_names == NULL) || (o->nips > 0 && o->ip_addresses == NULL))
        return em_error_set(err, EM_ERR_INVALID_ARGUMENT, EM_SEV_MEDIUM, "san",
                            "subjectAltName counts without names");
    for (size_t i = 0; i < o->ndns; i++) {
        if (o->dns_names[i] == NULL || !dns_name_valid(o->dns_names[i]))
            return em_error_set(err, EM_ERR_VALIDATION, EM_SEV_MEDIUM, "san",
                                "DNS name %zu is not a valid host name", i + 1);
    }
    for (size_t i = 0; i < o->nips; i++) {
        if (o->ip_addresses[i] == NULL || !ip_valid(o->ip_addresses[i]))
            return em_error_set(err, EM_ERR_VALIDATION, EM_SEV_MEDIUM, "san",
                                "IP address %zu is not an IPv4 or IPv6 literal", i + 1);
    }
    return EM_OK;
}

/* The validity period, in whole seconds (as milliseconds), inside the CA's. */
static em_err_t period(const em_pki_t *pki, const em_pki_issue_options_t *o, int64_t *nb,
                       int64_t *na, em_error_t *err)
{
    int64_t now = em_now_ms();
    if (now > pki->ca_not_after_ms)
        return em_error_set(err, EM_ERR_CERTIFICATE, EM_SEV_HIGH, NULL,
                            "the CA certificate has expired");
    if (o->not_before_ms != 0 || o->not_after_ms != 0) {
        if (o->not_before_ms <= 0 || o->not_after_ms <= 0 || o->not_after_ms <= o->not_before_ms)
            return em_error_set(err, EM_ERR_VALIDATION, EM_SEV_MEDIUM, "period",
                                "an explicit period needs not_before < not_after");
        if (o->not_before_ms < pki->ca_not_before_ms || o->not_after_ms > pki->ca_not_after_ms)
            return em_error_set(err, EM_ERR_VALIDATION, EM_SEV_MEDIUM, "period",
                                "the period must lie within the CA's validity");
        *nb = o->not_before_ms / 1000 * 1000;
        *na = o->not_after_ms / 1000 * 1000;
    } else {
        int days = o->days;
        if (days == 0)
            days = o->profile == EM_CERT_SERVER ? 397 : 365;
        if (days < 1 || days > EM_PKI_DAYS_MAX)
            return em_error_set(err, EM_ERR_VALIDATION, EM_SEV_MEDIUM, "days",
                                "validity must be 1-%d days", EM_PKI_DAYS_MAX);
        /* A certificate never outlives its CA: it would fail verification
         * from that day on anyway. */
        *nb = (now / 1000 - EM__PKI_SKEW_S) * 1000;
        if (*nb < pki->ca_not_before_ms)
            *nb = pki->ca_not_before_ms;
        *na = now / 1000 * 1000 + days * DAY_MS;
        if (*na > pki->ca_not_after_ms)
            *na = pki->ca_not_after_ms;
    }
    if (*na <= *nb)
        return em_error_set(err, EM_ERR_VALIDATION, EM_SEV_MEDIUM, "period",
                            "the validity period is empty (the CA expires too soon?)");
    return EM_OK;
}

static em_err_t build(em_pki_t *pki, const em_pki_issue_options_t *o, EVP_PKEY *pub, const char *cn,
                      const unsigned char serial[SERIAL_BYTES], int64_t nb, int64_t na, X509 **out,
                      em_error_t *err)
{
    *out = NULL;
    X509 *cert = X509_new();
    X509_NAME *name = cn_name(cn);
    bool ok = cert != NULL && name != NULL && X509_set_version(cert, X509_VERSION_3) == 1 &&
              set_serial(cert, serial) && X509_set_subject_name(cert, name) == 1 &&
              X509_set_issuer_name(cert, X509_get_subject_name(pki->ca)) == 1 &&
              set_times(cert, nb, na) && X509_set_pubkey(cert, pub) == 1;
    X509_NAME_free(name);
    if (ok) {
        X509V3_CTX ctx;
        X509V3_set_ctx(&ctx, pki->ca, cert, NULL, NULL, 0);
        const char *ku = o->profile == EM_CERT_SERVER ? "critical,digitalSignature,keyEncipherment"
                                                      : "critical,digitalSignature";
        const char *eku = o->profile == EM_CERT_SERVER ? "serverAuth" : "clientAuth";
        ok = add_ext(cert, &ctx, NID_basic_constraints, "critical,CA:FALSE") &&
             add_ext(cert, &ctx, NID_key_usage, ku) &&
             add_ext(cert, &ctx, NID_ext_key_usage, eku) &&
             add_ext(cert, &ctx, NID_subject_key_identifier, "hash");
        /* keyid from the CA's subjectKeyIdentifier; an operator CA without
         * one is identified by its issuer and serial instead. */
        if (ok && !add_ext(cert, &ctx, NID_authority_key_identifier, "keyid:always")) {
            ERR_clear_error();
            ok = add_ext(cert, &ctx, NID_authority_key_identifier, "issuer:always");
        }
    }
    if (!ok) {
        X509_free(cert);
        return em__pki_openssl_fail(err, "cannot build the certificate");
    }
    if (o->profile == EM_CERT_SERVER) {
        em_err_t rc = add_san(cert, o, cn, err);
        if (rc != EM_OK) {
            X509_free(cert);
            return rc;
        }
    }
    if (!sign(cert, pki->key)) {
        X509_free(cert);
        return em__pki_openssl_fail(err, "cannot sign the certificate");
    }
    *out = cert;
    return EM_OK;
}

/* Writes certs/S.pem and adds the record to the index (under the lock). */
static em_err_t record(em_pki_t *pki, const em_pki_cert_t *c, const char *pem, size_t len,
                       em_error_t *err)
{
    char name[EM_PKI_SERIAL_LEN + 16];
    snprintf(name, sizeof(name), "%s.pem", c->serial);
    char *path = em__pki_path(pki->certs_dir, name);
    if (path == NULL)
        return em_error_set(err, EM_ERR_NOMEM, EM_SEV_HIGH, NULL, "out of memory");
    em_err_t rc = em__pki_write_atomic(path, pem, len, 0600, err);
    if (rc == EM_OK)
        rc = em__pki_index_add(&pki->index, c, err);
    if (rc == EM_OK) {
        rc = em__pki_index_save(pki, err);
        if (rc != EM_OK)
            pki->index.n--; /* the file keeps the old index; so does memory */
    }
    if (rc != EM_OK)
        unlink(path); /* a certificate the index does not know was never issued */
    free(path);
    return rc;
}

em_err_t em__pki_issue_key(em_pki_t *pki, const em_pki_issue_options_t *o, EVP_PKEY *pub,
                           const char *cn, char **cert_pem, em_pki_cert_t *info, em_error_t *err)
{
    int64_t nb = 0, na = 0;
    em_err_t rc = check_sans(o, err);
    if (rc == EM_OK)
        rc = period(pki, o, &nb, &na, err);
    if (rc != EM_OK)
        return rc;
    rc = em__pki_lock(pki, LOCK_EX, err);
    if (rc != EM_OK)
        return rc;
    rc = em__pki_sync(pki, err);
    if (rc != EM_OK) {
        em__pki_unlock(pki);
        return rc;
    }
    em_pki_cert_t c;
    memset(&c, 0, sizeof(c));
    unsigned char serial[SERIAL_BYTES];
    bool fresh = false;
    for (int i = 0; i < SERIAL_ATTEMPTS && !fresh; i++) {
        if (!random_serial(serial))
            break;
        hex_encode(serial, SERIAL_BYTES, c.serial);
        fresh = em__pki_index_find(&pki->index, c.serial) == NULL;
    }
    X509 *cert = NULL;
    if (!fresh)
        rc = em_error_set(err, EM_ERR_INTERNAL, EM_SEV_HIGH, NULL,
                          "cannot draw a fresh serial number");
    else
        rc = build(pki, o, pub, cn, serial, nb, na, &cert, err);
    char *pem = NULL;
    size_t len = 0;
    if (rc == EM_OK) {
        c.profile = o->profile;
        snprintf(c.common_name, sizeof(c.common_name), "%s", cn);
        c.not_before_ms = nb;
        c.not_after_ms = na;
        em_pki_fingerprint(cert, c.sha256);
        pem = em__pki_cert_pem(cert, &len);
        if (pem == NULL)
            rc = em_error_set(err, EM_ERR_NOMEM, EM_SEV_HIGH, NULL, "out of memory");
    }
    if (rc == EM_OK)
        rc = record(pki, &c, pem, len, err);
    em__pki_unlock(pki);
    X509_free(cert);
    if (rc != EM_OK) {
        free(pem);
        return rc;
    }
    if (info != NULL)
        *info = c;
    if (cert_pem != NULL)
        *cert_pem = pem;
    else
        free(pem);
    return EM_OK;
}

/* What every issue checks before touching the CSR or a key. */
static em_err_t check_issue(const em_pki_t *pki, const em_pki_issue_options_t *o, em_error_t *err)
{
    if (pki == NULL || o == NULL)
        return em_error_set(err, EM_ERR_INVALID_ARGUMENT, EM_SEV_MEDIUM, NULL, "no CA or options");
    if (pki->iterating)
        return em_error_set(err, EM_ERR_STATE, EM_SEV_MEDIUM, NULL,
                            "em_pki_list's callback may not use the CA");
    if (pki->key == NULL)
        return em_error_set(err, EM_ERR_STATE, EM_SEV_MEDIUM, NULL,
                            "the CA was opened without its key: it can only be read");
    if (em_cert_profile_name(o->profile) == NULL)
        return em_error_set(err, EM_ERR_VALIDATION, EM_SEV_MEDIUM, "profile",
                            "the profile must be device, server or client");
    return EM_OK;
}

em_err_t em_pki_issue_csr(em_pki_t *pki, const em_pki_issue_options_t *opts, const char *csr_pem,
                          size_t len, char **cert_pem, em_pki_cert_t *info, em_error_t *err)
{
    if (cert_pem != NULL)
        *cert_pem = NULL;
    em_err_t rc = check_issue(pki, opts, err);
    if (rc != EM_OK)
        return rc;
    X509_REQ *req = NULL;
    char cn[EM_PKI_CN_MAX + 1];
    rc = em__pki_csr_check(csr_pem, len, &req, err);
    if (rc == EM_OK)
        rc = em__pki_csr_cn(req, opts->profile, opts->common_name, cn, err);
    if (rc == EM_OK)
        rc = em__pki_issue_key(pki, opts, X509_REQ_get0_pubkey(req), cn, cert_pem, info, err);
    X509_REQ_free(req);
    return rc;
}

/* The private key as PKCS#8 PEM in a buffer the caller wipes. The PEM is
 * written to a secure-heap BIO so that no copy of it is left in free memory. */
static char *key_pem(EVP_PKEY *key)
{
    BIO *bio = BIO_new(BIO_s_secmem());
    if (bio == NULL)
        return NULL;
    char *out = NULL;
    if (PEM_write_bio_PKCS8PrivateKey(bio, key, NULL, NULL, 0, NULL, NULL) == 1) {
        char *data;
        long n = BIO_get_mem_data(bio, &data);
        out = n > 0 ? malloc((size_t)n + 1) : NULL;
        if (out != NULL) {
            memcpy(out, data, (size_t)n);
            out[n] = '\0';
        }
    }
    BIO_free(bio);
    return out;
}

em_err_t em_pki_issue_new_key(em_pki_t *pki, const em_pki_issue_options_t *opts, char **key_pem_out,
                              char **cert_pem, em_pki_cert_t *info, em_error_t *err)
{
    if (key_pem_out != NULL)
        *key_pem_out = NULL;
    if (cert_pem != NULL)
        *cert_pem = NULL;
    em_err_t rc = check_issue(pki, opts, err);
    if (rc != EM_OK)
        return rc;
    if (key_pem_out == NULL)
        return em_error_set(err, EM_ERR_INVALID_ARGUMENT, EM_SEV_MEDIUM, NULL,
                            "nowhere to put the key");
    const char *cn = opts->common_name;
    if (cn == NULL || !em__pki_cn_valid(opts->profile, cn, strnlen(cn, EM_PKI_CN_MAX + 1)))
        return em_error_set(err, EM_ERR_VALIDATION, EM_SEV_MEDIUM, "cn",
                            "the CN is missing or not allowed for a %s certificate",
                            em_cert_profile_name(opts->profile));
    EVP_PKEY *key = EVP_EC_gen("P-256");
    if (key == NULL)
        return em__pki_openssl_fail(err, "cannot generate a P-256 key");
    char *pem = key_pem(key);
    if (pem == NULL) {
        EVP_PKEY_free(key);
        return em_error_set(err, EM_ERR_NOMEM, EM_SEV_HIGH, NULL, "out of memory");
    }
    rc = em__pki_issue_key(pki, opts, key, cn, cert_pem, info, err);
    EVP_PKEY_free(key);
    if (rc != EM_OK) {
        OPENSSL_cleanse(pem, strlen(pem));
        free(pem);
        return rc;
    }
    *key_pem_out = pem;
    return EM_OK;
}
