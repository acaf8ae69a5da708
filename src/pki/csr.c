/*
 * emiot - pki/csr.c: reading a certificate signing request, and the key
 * policy.
 *
 * A CSR arrives from the network (enrollment) or from an operator's file: it
 * is bounded before it is parsed, its self-signature must verify (proof that
 * the requester holds the private key), and its key must be one we accept.
 * Only its CN is used; whatever else it asks for is ignored.
 */
#include <string.h>

#include <openssl/err.h>
#include <openssl/pem.h>

#include "pki/pki_internal.h"

#define GROUP_NAME_MAX 64

em_err_t em_pki_key_acceptable(EVP_PKEY *key, em_error_t *err)
{
    if (key == NULL)
        return em_error_set(err, EM_ERR_VALIDATION, EM_SEV_MEDIUM, "key", "no public key");
    int id = EVP_PKEY_get_base_id(key);
    if (id == EVP_PKEY_ED25519)
        return EM_OK;
    if (id == EVP_PKEY_RSA) {
        int bits = EVP_PKEY_get_bits(key);
        if (bits < 2048)
            return em_error_set(err, EM_ERR_VALIDATION, EM_SEV_MEDIUM, "key",
                                "RSA key of %d bits is too weak (2048 at least)", bits);
        if (bits > EM__PKI_RSA_BITS_MAX)
            return em_error_set(err, EM_ERR_VALIDATION, EM_SEV_MEDIUM, "key",
                                "RSA key of %d bits is larger than %d", bits, EM__PKI_RSA_BITS_MAX);
        return EM_OK;
    }
    if (id == EVP_PKEY_EC) {
        char group[GROUP_NAME_MAX];
        size_t len = 0;
        ERR_set_mark();
        int ok = EVP_PKEY_get_group_name(key, group, sizeof(group), &len);
        ERR_pop_to_mark();
        if (ok != 1 || len == 0)
            return em_error_set(err, EM_ERR_VALIDATION, EM_SEV_MEDIUM, "key",
                                "EC key with explicit curve parameters is not accepted");
        if (strcmp(group, "prime256v1") == 0 || strcmp(group, "P-256") == 0 ||
            strcmp(group, "secp384r1") == 0 || strcmp(group, "P-384") == 0)
            return EM_OK;
        return em_error_set(err, EM_ERR_VALIDATION, EM_SEV_MEDIUM, "key",
                            "EC key on curve %s is not accepted (P-256 or P-384)", group);
    }
    const char *name = EVP_PKEY_get0_type_name(key);
    if (name == NULL)
        name = OBJ_nid2sn(id);
    return em_error_set(err, EM_ERR_VALIDATION, EM_SEV_MEDIUM, "key",
                        "%s keys are not accepted (EC P-256/P-384, Ed25519, RSA >= 2048)",
                        name != NULL ? name : "unknown");
}

em_err_t em__pki_csr_check(const char *csr_pem, size_t len, X509_REQ **req, em_error_t *err)
{
    *req = NULL;
    if (csr_pem == NULL || len == 0)
        return em_error_set(err, EM_ERR_MESSAGE_FORMAT, EM_SEV_MEDIUM, "csr", "no CSR");
    if (len > (size_t)EM_PKI_CSR_MAX)
        return em_error_set(err, EM_ERR_MESSAGE_FORMAT, EM_SEV_MEDIUM, "csr",
                            "the CSR is larger than %d bytes", EM_PKI_CSR_MAX);
    BIO *bio = BIO_new_mem_buf(csr_pem, (int)len);
    if (bio == NULL)
        return em_error_set(err, EM_ERR_NOMEM, EM_SEV_HIGH, NULL, "out of memory");
    X509_REQ *r = PEM_read_bio_X509_REQ(bio, NULL, NULL, NULL);
    BIO_free(bio);
    ERR_clear_error();
    if (r == NULL)
        return em_error_set(err, EM_ERR_MESSAGE_FORMAT, EM_SEV_MEDIUM, "csr",
                            "not a PEM certificate signing request");
    EVP_PKEY *pub = X509_REQ_get0_pubkey(r);
    ERR_clear_error();
    if (pub == NULL) {
        X509_REQ_free(r);
        return em_error_set(err, EM_ERR_MESSAGE_FORMAT, EM_SEV_MEDIUM, "csr",
                            "the CSR's public key is unreadable");
    }
    int ok = X509_REQ_verify(r, pub);
    ERR_clear_error();
    if (ok != 1) {
        X509_REQ_free(r);
        return em_error_set(err, EM_ERR_CRYPTO, EM_SEV_HIGH, "csr", "signature does not verify");
    }
    em_err_t rc = em_pki_key_acceptable(pub, err);
    if (rc != EM_OK) {
        X509_REQ_free(r);
        return rc;
    }
    *req = r;
    return EM_OK;
}

static const char *cn_rule(em_cert_profile_t profile)
{
    switch (profile) {
    case EM_CERT_DEVICE:
        return "a device CN must be a device id (3-50 of [A-Za-z0-9_-])";
    case EM_CERT_CLIENT:
        return "a client CN must be 1-64 of [A-Za-z0-9_.@:-] and not a device id";
    default:
        return "a server CN must be 1-64 of [A-Za-z0-9_.@:-]";
    }
}

em_err_t em__pki_csr_cn(X509_REQ *req, em_cert_profile_t profile, const char *want,
                        char cn[EM_PKI_CN_MAX + 1], em_error_t *err)
{
    if (want != NULL && !em__pki_cn_valid(profile, want, strnlen(want, EM_PKI_CN_MAX + 1)))
        return em_error_set(err, EM_ERR_VALIDATION, EM_SEV_MEDIUM, "cn", "%s", cn_rule(profile));
    if (!em__pki_name_cn(X509_REQ_get_subject_name(req), cn))
        return em_error_set(err, EM_ERR_VALIDATION, EM_SEV_MEDIUM, "cn",
                            "the CSR's subject must hold exactly one CN of 1-%d printable "
                            "characters",
                            EM_PKI_CN_MAX);
    if (want != NULL && strcmp(cn, want) != 0)
        return em_error_set(err, EM_ERR_VALIDATION, EM_SEV_MEDIUM, "cn",
                            "the CSR's CN is not the expected one");
    if (!em__pki_cn_valid(profile, cn, strlen(cn)))
        return em_error_set(err, EM_ERR_VALIDATION, EM_SEV_MEDIUM, "cn", "%s", cn_rule(profile));
    return EM_OK;
}
