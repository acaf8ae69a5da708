/*
 * emiot - pki/sig.c: checking a signature made with a certificate's key
 * (challenge-response: the device signs a nonce with its key).
 */
#include <string.h>

#include <openssl/err.h>
#include <openssl/rsa.h>

#include "pki/pki_internal.h"

/* One verification with the given RSA padding (0: the key's default). */
static bool verify_once(EVP_PKEY *pub, int rsa_padding, const void *msg, size_t msg_len,
                        const void *sig, size_t sig_len)
{
    EVP_MD_CTX *mctx = EVP_MD_CTX_new();
    EVP_PKEY_CTX *pctx = NULL;
    bool ok =
        mctx != NULL && EVP_DigestVerifyInit(mctx, &pctx, em__pki_sign_md(pub), NULL, pub) == 1;
    if (ok && rsa_padding == RSA_PKCS1_PSS_PADDING)
        ok = EVP_PKEY_CTX_set_rsa_padding(pctx, RSA_PKCS1_PSS_PADDING) == 1 &&
             EVP_PKEY_CTX_set_rsa_pss_saltlen(pctx, RSA_PSS_SALTLEN_AUTO) == 1;
    ok = ok && EVP_DigestVerify(mctx, sig, sig_len, msg, msg_len) == 1;
    EVP_MD_CTX_free(mctx);
    ERR_clear_error();
    return ok;
}

em_err_t em_pki_verify_signature(X509 *cert, const void *msg, size_t msg_len, const void *sig,
                                 size_t sig_len, em_error_t *err)
{
    if (cert == NULL || (msg == NULL && msg_len > 0) || (sig == NULL && sig_len > 0))
        return em_error_set(err, EM_ERR_INVALID_ARGUMENT, EM_SEV_MEDIUM, NULL,
                            "no certificate, message or signature");
    EVP_PKEY *pub = X509_get0_pubkey(cert);
    ERR_clear_error();
    em_err_t rc = em_pki_key_acceptable(pub, err);
    if (rc != EM_OK)
        return rc;
    static const unsigned char empty[1] = {0};
    if (msg == NULL)
        msg = empty;
    if (sig_len == 0 || sig_len > EM__PKI_SIG_MAX)
        return em_error_set(err, EM_ERR_CRYPTO, EM_SEV_HIGH, "signature",
                            "signature does not verify");
    if (verify_once(pub, 0, msg, msg_len, sig, sig_len))
        return EM_OK;
    /* RSA keys may sign with PSS as well as PKCS#1 v1.5. */
    if (EVP_PKEY_get_base_id(pub) == EVP_PKEY_RSA &&
        verify_once(pub, RSA_PKCS1_PSS_PADDING, msg, msg_len, sig, sig_len))
        return EM_OK;
    return em_error_set(err, EM_ERR_CRYPTO, EM_SEV_HIGH, "signature", "signature does not verify");
}
