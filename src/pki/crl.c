/*
 * emiot - pki/crl.c: revoking certificates and publishing the CRL.
 *
 * The index is the truth about revocations; crl.pem is made from it, whole,
 * every time (version 2, a CRL number, the authority key identifier, one entry
 * per revoked certificate with its reason). Revocation writes the index
 * first: should the CRL then fail to be written, the revocation is still
 * recorded and the next publication carries it.
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <time.h>

#include <openssl/bn.h>
#include <openssl/err.h>
#include <openssl/pem.h>
#include <openssl/x509v3.h>

#include "emiot/clock.h"
#include "pki/pki_internal.h"

#define DAY_S         86400
#define CRLNUMBER_MAX 32

/* The number of the last CRL (0 when none was published). */
static em_err_t read_crlnumber(const em_pki_t *pki, int64_t *out, em_error_t *err)
{
    *out = 0;
    char *buf;
    size_t len;
    em_err_t rc = em__pki_read_file(pki->crlnumber_file, CRLNUMBER_MAX, &buf, &len, err);
    if (rc == EM_ERR_NOT_FOUND)
        return EM_OK;
    if (rc != EM_OK)
        return rc;
    int64_t v = 0;
    size_t i = 0;
    for (; i < len && buf[i] >= '0' && buf[i] <= '9'; i++) {
        if (v > (INT64_MAX - 1 - (buf[i] - '0')) / 10)
            break;
        v = v * 10 + (buf[i] - '0');
    }
    bool ok = i > 0 && (i == len || (i + 1 == len && buf[i] == '\n'));
    free(buf);
    if (!ok)
        return em_error_set(err, EM_ERR_MESSAGE_FORMAT, EM_SEV_HIGH, "crlnumber", "%s is damaged",
                            pki->crlnumber_file);
    *out = v;
    return EM_OK;
}

static X509_REVOKED *revoked_entry(const em_pki_cert_t *c)
{
    X509_REVOKED *r = X509_REVOKED_new();
    BIGNUM *bn = NULL;
    ASN1_INTEGER *serial = NULL;
    ASN1_TIME *when = NULL;
    ASN1_ENUMERATED *reason = NULL;
    bool ok = r != NULL && BN_hex2bn(&bn, c->serial) == EM_PKI_SERIAL_LEN &&
              (serial = BN_to_ASN1_INTEGER(bn, NULL)) != NULL &&
              X509_REVOKED_set_serialNumber(r, serial) == 1 &&
              (when = ASN1_TIME_set(NULL, (time_t)(c->revoked_at_ms / 1000))) != NULL &&
              X509_REVOKED_set_revocationDate(r, when) == 1;
    /* RFC 5280 5.3.1: the reason code unspecified SHOULD be absent. */
    if (ok && c->reason != EM_CRL_UNSPECIFIED)
        ok = (reason = ASN1_ENUMERATED_new()) != NULL &&
             ASN1_ENUMERATED_set(reason, (long)c->reason) == 1 &&
             X509_REVOKED_add1_ext_i2d(r, NID_crl_reason, reason, 0, 0) == 1;
    ASN1_ENUMERATED_free(reason);
    ASN1_TIME_free(when);
    ASN1_INTEGER_free(serial);
    BN_free(bn);
    if (!ok) {
        X509_REVOKED_free(r);
        return NULL;
    }
    return r;
}

static X509_CRL *build_crl(const em_pki_t *pki, int days, int64_t number)
{
    X509_CRL *crl = X509_CRL_new();
    time_t now = (time_t)(em_now_ms() / 1000);
    ASN1_TIME *last = ASN1_TIME_set(NULL, now);
    ASN1_TIME *next = ASN1_TIME_set(NULL, now + (time_t)days * DAY_S);
    ASN1_INTEGER *num = ASN1_INTEGER_new();
    bool ok = crl != NULL && last != NULL && next != NULL && num != NULL &&
              X509_CRL_set_version(crl, X509_CRL_VERSION_2) == 1 &&
              X509_CRL_set_issuer_name(crl, X509_get_subject_name(pki->ca)) == 1 &&
              X509_CRL_set1_lastUpdate(crl, last) == 1 && X509_CRL_set1_nextUpdate(crl, next) == 1;
    for (size_t i = 0; ok && i < pki->index.n; i++) {
        const em_pki_cert_t *c = &pki->index.certs[i];
        if (c->revoked_at_ms == 0)
            continue;
        X509_REVOKED *r = revoked_entry(c);
        ok = r != NULL && X509_CRL_add0_revoked(crl, r) == 1;
        if (!ok)
            X509_REVOKED_free(r);
    }
    ok = ok && X509_CRL_sort(crl) == 1 && ASN1_INTEGER_set_int64(num, number) == 1 &&
         X509_CRL_add1_ext_i2d(crl, NID_crl_number, num, 0, 0) == 1;
    if (ok) {
        X509V3_CTX ctx;
        X509V3_set_ctx(&ctx, pki->ca, NULL, NULL, crl, 0);
        X509_EXTENSION *aki =
            X509V3_EXT_conf_nid(NULL, &ctx, NID_authority_key_identifier, "keyid:always");
        if (aki == NULL) {
            ERR_clear_error();
            aki = X509V3_EXT_conf_nid(NULL, &ctx, NID_authority_key_identifier, "issuer:always");
        }
        ok = aki != NULL && X509_CRL_add_ext(crl, aki, -1) == 1;
        X509_EXTENSION_free(aki);
    }
    ok = ok && X509_CRL_sign(crl, pki->key, em__pki_sign_md(pki->key)) > 0;
    ASN1_TIME_free(last);
    ASN1_TIME_free(next);
    ASN1_INTEGER_free(num);
    if (!ok) {
        X509_CRL_free(crl);
        return NULL;
    }
    return crl;
}

em_err_t em__pki_crl_write(em_pki_t *pki, int days, em_error_t *err)
{
    if (days == 0)
        days = pki->crl_days;
    int64_t number;
    em_err_t rc = read_crlnumber(pki, &number, err);
    if (rc != EM_OK)
        return rc;
    number++;
    /* The number is spent before the CRL is written: a gap after a failure
     * is harmless, two different CRLs with one number are not. */
    char text[CRLNUMBER_MAX];
    int n = snprintf(text, sizeof(text), "%lld\n", (long long)number);
    rc = em__pki_write_atomic(pki->crlnumber_file, text, (size_t)n, 0600, err);
    if (rc != EM_OK)
        return rc;
    X509_CRL *crl = build_crl(pki, days, number);
    if (crl == NULL)
        return em__pki_openssl_fail(err, "cannot make the CRL");
    BIO *bio = BIO_new(BIO_s_mem());
    if (bio == NULL || PEM_write_bio_X509_CRL(bio, crl) != 1) {
        BIO_free(bio);
        X509_CRL_free(crl);
        return em__pki_openssl_fail(err, "cannot encode the CRL");
    }
    char *data;
    long len = BIO_get_mem_data(bio, &data);
    rc = em__pki_write_atomic(pki->crl_file, data, (size_t)len, 0644, err);
    BIO_free(bio);
    X509_CRL_free(crl);
    return rc;
}

int em__pki_crl_period_days(const char *pem, size_t len)
{
    if (pem == NULL || len == 0 || len > INT32_MAX)
        return 0;
    BIO *bio = BIO_new_mem_buf(pem, (int)len);
    X509_CRL *crl = bio != NULL ? PEM_read_bio_X509_CRL(bio, NULL, NULL, NULL) : NULL;
    BIO_free(bio);
    ERR_clear_error();
    int64_t last, next;
    int days = 0;
    if (crl != NULL && em__pki_asn1_time_ms(X509_CRL_get0_lastUpdate(crl), &last) &&
        em__pki_asn1_time_ms(X509_CRL_get0_nextUpdate(crl), &next) && next > last)
        days = (int)((next - last + DAY_S * 500LL) / (DAY_S * 1000LL));
    X509_CRL_free(crl);
    return days;
}

/* What em_pki_crl_publish, em_pki_revoke and em_pki_get check first: a CA,
 * and not a call from em_pki_list's callback. */
static em_err_t usable(const em_pki_t *pki, em_error_t *err)
{
    if (pki == NULL)
        return em_error_set(err, EM_ERR_INVALID_ARGUMENT, EM_SEV_MEDIUM, NULL, "no CA");
    if (pki->iterating)
        return em_error_set(err, EM_ERR_STATE, EM_SEV_MEDIUM, NULL,
                            "em_pki_list's callback may not use the CA");
    return EM_OK;
}

/* usable, then serial (any case) normalised into s. */
static em_err_t usable_serial(const em_pki_t *pki, const char *serial,
                              char s[EM_PKI_SERIAL_LEN + 1], em_error_t *err)
{
    em_err_t rc = usable(pki, err);
    if (rc != EM_OK)
        return rc;
    if (!em__pki_serial_normalise(serial, s))
        return em_error_set(err, EM_ERR_VALIDATION, EM_SEV_MEDIUM, "serial",
                            "a serial is %d hex digits", EM_PKI_SERIAL_LEN);
    return EM_OK;
}

em_err_t em_pki_crl_publish(em_pki_t *pki, int days, em_error_t *err)
{
    em_err_t rc = usable(pki, err);
    if (rc != EM_OK)
        return rc;
    if (pki->key == NULL)
        return em_error_set(err, EM_ERR_STATE, EM_SEV_MEDIUM, NULL,
                            "the CA was opened without its key: it can only be read");
    if (days < 0 || days > 366)
        return em_error_set(err, EM_ERR_VALIDATION, EM_SEV_MEDIUM, "days",
                            "a CRL is valid for 1-366 days");
    rc = em__pki_lock(pki, LOCK_EX, err);
    if (rc != EM_OK)
        return rc;
    rc = em__pki_sync(pki, err);
    if (rc == EM_OK)
        rc = em__pki_crl_write(pki, days, err);
    em__pki_unlock(pki);
    return rc;
}

em_err_t em_pki_revoke(em_pki_t *pki, const char *serial, em_crl_reason_t reason, em_error_t *err)
{
    char s[EM_PKI_SERIAL_LEN + 1];
    em_err_t rc = usable_serial(pki, serial, s, err);
    if (rc != EM_OK)
        return rc;
    if (em_crl_reason_name(reason) == NULL)
        return em_error_set(err, EM_ERR_VALIDATION, EM_SEV_MEDIUM, "reason",
                            "unknown revocation reason");
    if (pki->key == NULL)
        return em_error_set(err, EM_ERR_STATE, EM_SEV_MEDIUM, NULL,
                            "the CA was opened without its key: it can only be read");
    rc = em__pki_lock(pki, LOCK_EX, err);
    if (rc != EM_OK)
        return rc;
    rc = em__pki_sync(pki, err);
    em_pki_cert_t *c = rc == EM_OK ? em__pki_index_find(&pki->index, s) : NULL;
    if (rc == EM_OK && c == NULL)
        rc = em_error_set(err, EM_ERR_NOT_FOUND, EM_SEV_MEDIUM, "serial",
                          "no certificate with serial %s", s);
    if (rc == EM_OK && c != NULL && c->revoked_at_ms != 0)
        rc = em_error_set(err, EM_ERR_STATE, EM_SEV_MEDIUM, "serial",
                          "certificate %s is already revoked", s);
    if (rc == EM_OK && c != NULL) {
        int64_t now = em_now_ms();
        c->revoked_at_ms = now > 0 ? now : 1;
        c->reason = reason;
        rc = em__pki_index_save(pki, err);
        if (rc != EM_OK) {
            c->revoked_at_ms = 0;
            c->reason = EM_CRL_UNSPECIFIED;
        }
    }
    if (rc == EM_OK) {
        rc = em__pki_crl_write(pki, 0, err);
        if (rc != EM_OK && err != NULL) {
            char why[EM_ERROR_MESSAGE_MAX + 1];
            snprintf(why, sizeof(why), "%s", err->message);
            em_error_set(err, rc, EM_SEV_HIGH, NULL,
                         "revoked, but the CRL was not written (publish it again): %s", why);
        }
    }
    em__pki_unlock(pki);
    return rc;
}

em_err_t em_pki_list(em_pki_t *pki, em_pki_cert_fn fn, void *userdata, em_error_t *err)
{
    if (pki == NULL || fn == NULL)
        return em_error_set(err, EM_ERR_INVALID_ARGUMENT, EM_SEV_MEDIUM, NULL,
                            "no CA or no callback");
    if (pki->iterating)
        return em_error_set(err, EM_ERR_STATE, EM_SEV_MEDIUM, NULL,
                            "em_pki_list's callback may not use the CA");
    em_err_t rc = em__pki_lock(pki, LOCK_SH, err);
    if (rc != EM_OK)
        return rc;
    rc = em__pki_sync(pki, err);
    pki->iterating = true;
    for (size_t i = 0; rc == EM_OK && i < pki->index.n; i++) {
        em_pki_cert_t c = pki->index.certs[i];
        if (fn(&c, userdata) != 0)
            break;
    }
    pki->iterating = false;
    em__pki_unlock(pki);
    return rc;
}

em_err_t em_pki_get(em_pki_t *pki, const char *serial, em_pki_cert_t *info, char **pem,
                    em_error_t *err)
{
    if (pem != NULL)
        *pem = NULL;
    char s[EM_PKI_SERIAL_LEN + 1];
    em_err_t rc = usable_serial(pki, serial, s, err);
    if (rc != EM_OK)
        return rc;
    rc = em__pki_lock(pki, LOCK_SH, err);
    if (rc != EM_OK)
        return rc;
    rc = em__pki_sync(pki, err);
    const em_pki_cert_t *c = rc == EM_OK ? em__pki_index_find(&pki->index, s) : NULL;
    if (rc == EM_OK && c == NULL)
        rc = em_error_set(err, EM_ERR_NOT_FOUND, EM_SEV_MEDIUM, "serial",
                          "no certificate with serial %s", s);
    if (rc == EM_OK && pem != NULL) {
        char name[EM_PKI_SERIAL_LEN + 8];
        snprintf(name, sizeof(name), "%s.pem", s);
        char *path = em__pki_path(pki->certs_dir, name);
        size_t len;
        if (path == NULL)
            rc = em_error_set(err, EM_ERR_NOMEM, EM_SEV_HIGH, NULL, "out of memory");
        else
            rc = em__pki_read_file(path, EM__PKI_PEM_FILE_MAX, pem, &len, err);
        if (rc == EM_ERR_NOT_FOUND || rc == EM_ERR_LIMIT)
            rc = em_error_set(err, EM_ERR_IO, EM_SEV_HIGH, NULL,
                              "the certificate file of %s is missing or damaged", s);
        free(path);
    }
    if (rc == EM_OK && c != NULL && info != NULL)
        *info = *c;
    em__pki_unlock(pki);
    return rc;
}
