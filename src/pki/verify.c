/*
 * emiot - pki/verify.c: deciding whether a certificate may be used, and by
 * whom (em_verifier_*).
 *
 * OpenSSL builds and checks the chain (trust, validity at the time given,
 * revocation, the purpose's usages); then the profile's own rules are checked
 * explicitly, because OpenSSL accepts certificates without keyUsage or
 * extendedKeyUsage (meaning "any use") where emiot wants a certificate made
 * for this use. Reasons are short words a log and an API error can carry.
 *
 * Every certificate in ca_file is a trust anchor (X509_V_FLAG_PARTIAL_CHAIN),
 * so a file holding an operator's intermediate CA trusts that CA without its
 * root. Revocation: with a CRL file, the leaf's issuer must have a CRL
 * (X509_V_FLAG_CRL_CHECK); when every CA in ca_file has one, the whole chain
 * is checked (X509_V_FLAG_CRL_CHECK_ALL).
 */
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include <openssl/err.h>
#include <openssl/pem.h>
#include <openssl/x509v3.h>

#include "pki/pki_internal.h"

#define VERIFY_CERTS_MAX 256 /* CA certificates, CRLs in one file */
#define CHAIN_MAX        10

typedef struct file_id {
    bool present;
    dev_t dev;
    ino_t ino;
    off_t size;
    struct timespec mtime;
} file_id_t;

struct em_verifier {
    char *ca_file;
    char *crl_file;
    X509_STORE *store;
    file_id_t ca_id;
    file_id_t crl_id;
};

static void file_id_get(const char *path, file_id_t *id)
{
    struct stat st;
    memset(id, 0, sizeof(*id));
    if (path == NULL || stat(path, &st) != 0)
        return;
    id->present = true;
    id->dev = st.st_dev;
    id->ino = st.st_ino;
    id->size = st.st_size;
    id->mtime = st.st_mtim;
}

static bool file_id_same(const file_id_t *a, const file_id_t *b)
{
    return a->present == b->present && a->dev == b->dev && a->ino == b->ino && a->size == b->size &&
           a->mtime.tv_sec == b->mtime.tv_sec && a->mtime.tv_nsec == b->mtime.tv_nsec;
}

/* Reads every PEM object of one kind from a file. */
static em_err_t read_pem_all(const char *path, size_t max, bool crls, STACK_OF(X509) * certs,
                             STACK_OF(X509_CRL) * crl_list, em_error_t *err)
{
    char *buf;
    size_t len;
    em_err_t rc = em__pki_read_file(path, max, &buf, &len, err);
    if (rc != EM_OK)
        return em_error_set(err, EM_ERR_CONFIGURATION, EM_SEV_HIGH, NULL, "cannot read %s", path);
    BIO *bio = len <= INT32_MAX ? BIO_new_mem_buf(buf, (int)len) : NULL;
    if (bio == NULL) {
        free(buf);
        return em_error_set(err, EM_ERR_NOMEM, EM_SEV_HIGH, NULL, "out of memory");
    }
    int n = 0;
    for (;;) {
        if (crls) {
            X509_CRL *c = PEM_read_bio_X509_CRL(bio, NULL, NULL, NULL);
            if (c == NULL)
                break;
            if (n >= VERIFY_CERTS_MAX || sk_X509_CRL_push(crl_list, c) <= 0) {
                X509_CRL_free(c);
                break;
            }
        } else {
            X509 *c = PEM_read_bio_X509(bio, NULL, NULL, NULL);
            if (c == NULL)
                break;
            if (n >= VERIFY_CERTS_MAX || sk_X509_push(certs, c) <= 0) {
                X509_free(c);
                break;
            }
        }
        n++;
    }
    ERR_clear_error();
    BIO_free(bio);
    free(buf);
    if (n == 0)
        return em_error_set(err, EM_ERR_CONFIGURATION, EM_SEV_HIGH, NULL, "%s holds no PEM %s",
                            path, crls ? "CRL" : "certificate");
    return EM_OK;
}

/* The CA certificate of cas that issued and signed crl, or NULL. */
static X509 *crl_issuer(STACK_OF(X509) * cas, X509_CRL *crl)
{
    for (int i = 0; i < sk_X509_num(cas); i++) {
        X509 *ca = sk_X509_value(cas, i);
        if (X509_NAME_cmp(X509_CRL_get_issuer(crl), X509_get_subject_name(ca)) != 0)
            continue;
        EVP_PKEY *pub = X509_get0_pubkey(ca);
        if (pub != NULL && X509_CRL_verify(crl, pub) == 1)
            return ca;
        ERR_clear_error();
    }
    return NULL;
}

static em_err_t load_store(const char *ca_file, const char *crl_file, X509_STORE **out,
                           em_error_t *err)
{
    *out = NULL;
    STACK_OF(X509) *cas = sk_X509_new_null();
    STACK_OF(X509_CRL) *crls = sk_X509_CRL_new_null();
    X509_STORE *store = X509_STORE_new();
    em_err_t rc = EM_OK;
    if (cas == NULL || crls == NULL || store == NULL) {
        rc = em_error_set(err, EM_ERR_NOMEM, EM_SEV_HIGH, NULL, "out of memory");
        goto done;
    }
    rc = read_pem_all(ca_file, EM__PKI_PEM_FILE_MAX, false, cas, NULL, err);
    if (rc == EM_OK && crl_file != NULL)
        rc = read_pem_all(crl_file, EM__PKI_CRL_FILE_MAX, true, NULL, crls, err);
    if (rc != EM_OK)
        goto done;
    for (int i = 0; i < sk_X509_num(cas); i++) {
        if (X509_STORE_add_cert(store, sk_X509_value(cas, i)) != 1) {
            ERR_clear_error(); /* the same certificate twice is harmless */
        }
    }
    int covered = 0;
    for (int i = 0; i < sk_X509_CRL_num(crls); i++) {
        X509_CRL *crl = sk_X509_CRL_value(crls, i);
        if (crl_issuer(cas, crl) == NULL) {
            rc = em_error_set(err, EM_ERR_CERTIFICATE, EM_SEV_HIGH, NULL,
                              "CRL %d of %s is not signed by a CA of %s", i + 1, crl_file, ca_file);
            goto done;
        }
        X509_STORE_add_crl(store, crl);
        ERR_clear_error();
    }
    for (int i = 0; i < sk_X509_num(cas); i++) {
        X509 *ca = sk_X509_value(cas, i);
        for (int j = 0; j < sk_X509_CRL_num(crls); j++) {
            if (crl_issuer(cas, sk_X509_CRL_value(crls, j)) == ca) {
                covered++;
                break;
            }
        }
    }
    unsigned long flags = X509_V_FLAG_PARTIAL_CHAIN;
    if (crl_file != NULL) {
        flags |= X509_V_FLAG_CRL_CHECK;
        if (covered == sk_X509_num(cas))
            flags |= X509_V_FLAG_CRL_CHECK_ALL;
    }
    X509_STORE_set_flags(store, flags);
done:
    sk_X509_pop_free(cas, X509_free);
    sk_X509_CRL_pop_free(crls, X509_CRL_free);
    if (rc != EM_OK) {
        X509_STORE_free(store);
        return rc;
    }
    *out = store;
    return EM_OK;
}

void em_verifier_free(em_verifier_t *v)
{
    if (v == NULL)
        return;
    X509_STORE_free(v->store);
    free(v->ca_file);
    free(v->crl_file);
    free(v);
}

em_err_t em_verifier_new(const char *ca_file, const char *crl_file, em_verifier_t **out,
                         em_error_t *err)
{
    if (out == NULL)
        return em_error_set(err, EM_ERR_INVALID_ARGUMENT, EM_SEV_MEDIUM, NULL, "no output");
    *out = NULL;
    if (ca_file == NULL || ca_file[0] == '\0')
        return em_error_set(err, EM_ERR_CONFIGURATION, EM_SEV_HIGH, "ca_file", "no CA file");
    em_verifier_t *v = calloc(1, sizeof(*v));
    if (v == NULL)
        return em_error_set(err, EM_ERR_NOMEM, EM_SEV_HIGH, NULL, "out of memory");
    v->ca_file = strdup(ca_file);
    v->crl_file = crl_file != NULL ? strdup(crl_file) : NULL;
    if (v->ca_file == NULL || (crl_file != NULL && v->crl_file == NULL)) {
        em_verifier_free(v);
        return em_error_set(err, EM_ERR_NOMEM, EM_SEV_HIGH, NULL, "out of memory");
    }
    /* Identities first: a change during the load is then seen by the next
     * reload rather than missed. */
    file_id_get(v->ca_file, &v->ca_id);
    file_id_get(v->crl_file, &v->crl_id);
    em_err_t rc = load_store(v->ca_file, v->crl_file, &v->store, err);
    if (rc != EM_OK) {
        em_verifier_free(v);
        return rc;
    }
    *out = v;
    return EM_OK;
}

em_err_t em_verifier_reload(em_verifier_t *v, bool *changed, em_error_t *err)
{
    if (changed != NULL)
        *changed = false;
    if (v == NULL)
        return em_error_set(err, EM_ERR_INVALID_ARGUMENT, EM_SEV_MEDIUM, NULL, "no verifier");
    file_id_t ca_id, crl_id;
    file_id_get(v->ca_file, &ca_id);
    file_id_get(v->crl_file, &crl_id);
    if (file_id_same(&ca_id, &v->ca_id) && file_id_same(&crl_id, &v->crl_id))
        return EM_OK;
    X509_STORE *store;
    em_err_t rc = load_store(v->ca_file, v->crl_file, &store, err);
    if (rc != EM_OK)
        return rc;
    X509_STORE_free(v->store);
    v->store = store;
    v->ca_id = ca_id;
    v->crl_id = crl_id;
    if (changed != NULL)
        *changed = true;
    return EM_OK;
}

/* Why the chain was refused, in a word or three. */
static const char *chain_reason(int e, int depth)
{
    switch (e) {
    case X509_V_ERR_CERT_HAS_EXPIRED:
        return depth == 0 ? "expired" : "issuer expired";
    case X509_V_ERR_CERT_NOT_YET_VALID:
        return depth == 0 ? "not yet valid" : "issuer not yet valid";
    case X509_V_ERR_CERT_REVOKED:
        return depth == 0 ? "revoked" : "issuer revoked";
    case X509_V_ERR_UNABLE_TO_GET_ISSUER_CERT:
    case X509_V_ERR_UNABLE_TO_GET_ISSUER_CERT_LOCALLY:
    case X509_V_ERR_UNABLE_TO_VERIFY_LEAF_SIGNATURE:
    case X509_V_ERR_DEPTH_ZERO_SELF_SIGNED_CERT:
    case X509_V_ERR_SELF_SIGNED_CERT_IN_CHAIN:
    case X509_V_ERR_CERT_UNTRUSTED:
    case X509_V_ERR_CERT_SIGNATURE_FAILURE:
    case X509_V_ERR_CERT_CHAIN_TOO_LONG:
    case X509_V_ERR_AKID_SKID_MISMATCH:
    case X509_V_ERR_AKID_ISSUER_SERIAL_MISMATCH:
    case X509_V_ERR_SUBJECT_ISSUER_MISMATCH:
    case X509_V_ERR_PATH_LENGTH_EXCEEDED:
        return "untrusted issuer";
    case X509_V_ERR_INVALID_CA:
    case X509_V_ERR_KEYUSAGE_NO_CERTSIGN:
        return "issuer is not a CA";
    case X509_V_ERR_UNABLE_TO_GET_CRL:
    case X509_V_ERR_UNABLE_TO_GET_CRL_ISSUER:
    case X509_V_ERR_CRL_HAS_EXPIRED:
    case X509_V_ERR_CRL_NOT_YET_VALID:
    case X509_V_ERR_CRL_SIGNATURE_FAILURE:
    case X509_V_ERR_KEYUSAGE_NO_CRL_SIGN:
    case X509_V_ERR_DIFFERENT_CRL_SCOPE:
        return "revocation status unknown";
    default:
        return NULL;
    }
}

static bool has_ku(X509 *cert, uint32_t bit)
{
    return (X509_get_extension_flags(cert) & EXFLAG_KUSAGE) && (X509_get_key_usage(cert) & bit);
}

static bool has_eku(X509 *cert, uint32_t bit)
{
    return (X509_get_extension_flags(cert) & EXFLAG_XKUSAGE) &&
           (X509_get_extended_key_usage(cert) & bit);
}

/* The profile's rules on the leaf: the reason it breaks, or NULL. */
static const char *usage_reason(X509 *cert, em_cert_profile_t purpose)
{
    if (X509_get_extension_flags(cert) & EXFLAG_CA)
        return "a CA certificate is not an end-entity certificate";
    if (!has_ku(cert, KU_DIGITAL_SIGNATURE))
        return "key usage";
    if (!has_eku(cert, purpose == EM_CERT_SERVER ? XKU_SSL_SERVER : XKU_SSL_CLIENT))
        return "extended key usage";
    return NULL;
}

static em_err_t refuse(em_error_t *err, const char *reason)
{
    return em_error_set(err, EM_ERR_CERTIFICATE, EM_SEV_HIGH, "certificate", "%s", reason);
}

em_err_t em_verifier_check(em_verifier_t *v, X509 *cert, STACK_OF(X509) * chain,
                           em_cert_profile_t purpose, int64_t now_ms, em_cert_identity_t *id,
                           em_error_t *err)
{
    if (v == NULL || cert == NULL || em_cert_profile_name(purpose) == NULL || now_ms < 0)
        return em_error_set(err, EM_ERR_INVALID_ARGUMENT, EM_SEV_MEDIUM, NULL,
                            "no verifier, no certificate, or no purpose");
    X509_STORE_CTX *ctx = X509_STORE_CTX_new();
    if (ctx == NULL || X509_STORE_CTX_init(ctx, v->store, cert, chain) != 1) {
        X509_STORE_CTX_free(ctx);
        ERR_clear_error();
        return em_error_set(err, EM_ERR_NOMEM, EM_SEV_HIGH, NULL, "out of memory");
    }
    X509_STORE_CTX_set_time(ctx, 0, (time_t)(now_ms / 1000));
    X509_STORE_CTX_set_purpose(ctx, purpose == EM_CERT_SERVER ? X509_PURPOSE_SSL_SERVER
                                                              : X509_PURPOSE_SSL_CLIENT);
    int ok = X509_verify_cert(ctx);
    int e = X509_STORE_CTX_get_error(ctx);
    int depth = X509_STORE_CTX_get_error_depth(ctx);
    X509_STORE_CTX_free(ctx);
    ERR_clear_error();
    if (ok != 1) {
        const char *why = chain_reason(e, depth);
        if (why == NULL && e == X509_V_ERR_INVALID_PURPOSE)
            why = depth == 0 ? usage_reason(cert, purpose) : "issuer is not a CA for this use";
        if (why == NULL && e == X509_V_ERR_INVALID_PURPOSE)
            why = "extended key usage";
        if (why == NULL)
            return em_error_set(err, EM_ERR_CERTIFICATE, EM_SEV_HIGH, "certificate",
                                "verification failed: %s", X509_verify_cert_error_string(e));
        return refuse(err, why);
    }
    const char *why = usage_reason(cert, purpose);
    if (why != NULL)
        return refuse(err, why);
    char cn[EM_PKI_CN_MAX + 1];
    if (!em__pki_name_cn(X509_get_subject_name(cert), cn))
        return refuse(err, "CN missing or invalid");
    if (purpose == EM_CERT_DEVICE && em_device_id_validate(cn, strlen(cn), NULL) != EM_OK)
        return refuse(err, "CN is not a device id");
    em_cert_identity_t ident;
    memset(&ident, 0, sizeof(ident));
    memcpy(ident.common_name, cn, sizeof(cn));
    if (!em__pki_serial_hex(X509_get0_serialNumber(cert), ident.serial, sizeof(ident.serial)))
        return refuse(err, "serial number too long");
    em_pki_fingerprint(cert, ident.sha256);
    if (!em__pki_asn1_time_ms(X509_get0_notAfter(cert), &ident.not_after_ms))
        return refuse(err, "unreadable validity period");
    if (id != NULL)
        *id = ident;
    return EM_OK;
}

em_err_t em_verifier_check_device(em_verifier_t *v, X509 *cert, STACK_OF(X509) * chain,
                                  int64_t now_ms, em_device_check_fn check, void *userdata,
                                  em_cert_identity_t *id, em_error_t *err)
{
    if (check == NULL)
        return em_error_set(err, EM_ERR_INVALID_ARGUMENT, EM_SEV_MEDIUM, NULL, "no device check");
    em_cert_identity_t ident;
    em_err_t rc = em_verifier_check(v, cert, chain, EM_CERT_DEVICE, now_ms, &ident, err);
    if (rc != EM_OK)
        return rc;
    rc = check(ident.common_name, userdata);
    if (rc == EM_ERR_DEVICE_NOT_FOUND)
        rc = refuse(err, "device not registered");
    else if (rc == EM_ERR_PERMISSION_DENIED)
        rc = refuse(err, "device disabled");
    else if (rc != EM_OK)
        em_error_set(err, rc, EM_SEV_HIGH, NULL, "cannot check device %s: %s", ident.common_name,
                     em_strerror(rc));
    if (rc != EM_OK) {
        em_error_set_device(err, ident.common_name);
        return rc;
    }
    if (id != NULL)
        *id = ident;
    return EM_OK;
}

em_err_t em_verifier_check_pem(em_verifier_t *v, const char *pem, size_t len,
                               em_cert_profile_t purpose, int64_t now_ms, em_cert_identity_t *id,
                               em_error_t *err)
{
    if (pem == NULL || len == 0 || len > EM__PKI_VERIFY_PEM_MAX)
        return em_error_set(err, EM_ERR_MESSAGE_FORMAT, EM_SEV_MEDIUM, "certificate",
                            "no certificate, or one larger than %ld bytes", EM__PKI_VERIFY_PEM_MAX);
    X509 *cert;
    STACK_OF(X509) * chain;
    if (!em__pki_pem_certs(pem, len, CHAIN_MAX, &cert, &chain))
        return em_error_set(err, EM_ERR_NOMEM, EM_SEV_HIGH, NULL, "out of memory");
    em_err_t rc;
    if (cert == NULL)
        rc = em_error_set(err, EM_ERR_MESSAGE_FORMAT, EM_SEV_MEDIUM, "certificate",
                          "not a PEM certificate");
    else
        rc = em_verifier_check(v, cert, chain, purpose, now_ms, id, err);
    X509_free(cert);
    sk_X509_pop_free(chain, X509_free);
    return rc;
}
