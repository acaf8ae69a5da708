/*
 * emiot - key.c: the private keys emiot signs with (keystore.h): generated,
 * saved sealed in a keystore file, loaded from one, from an HSM, or (where a
 * caller allows it) from a plain PEM file only its owner can read.
 */
#include <stdlib.h>
#include <string.h>

#include <openssl/bio.h>
#include <openssl/crypto.h>
#include <openssl/err.h>
#include <openssl/evp.h>
#include <openssl/pem.h>

#include "emiot/keystore.h"
#include "security/security_internal.h"

/* A plain PEM key file is small; the bound is the keystore's own. */
#define PLAIN_KEY_MAX EM_KEYSTORE_FILE_MAX

bool em_key_ref_is_pkcs11(const char *ref)
{
    return ref != NULL && strncmp(ref, "pkcs11:", 7) == 0;
}

em_err_t em_key_generate_p256(EVP_PKEY **out, em_error_t *err)
{
    if (out == NULL)
        return em_error_set(err, EM_ERR_INVALID_ARGUMENT, EM_SEV_MEDIUM, NULL, "out is required");
    *out = EVP_PKEY_Q_keygen(NULL, NULL, "EC", "P-256");
    if (*out == NULL) {
        ERR_clear_error();
        return em_error_set(err, EM_ERR_INTERNAL, EM_SEV_HIGH, NULL, "cannot generate a P-256 key");
    }
    return EM_OK;
}

/* Never prompt: a passphrase-protected PEM is not something emiot opens. */
// NOLINTNEXTLINE(readability-non-const-parameter): pem_password_cb's signature
static int no_password(char *buf, int size, int rwflag, void *u)
{
    (void)buf;
    (void)size;
    (void)rwflag;
    (void)u;
    return -1;
}

em_err_t em__key_from_pem(const unsigned char *pem, size_t len, EVP_PKEY **out, em_error_t *err)
{
    *out = NULL;
    if (len == 0 || len > PLAIN_KEY_MAX)
        return em_error_set(err, EM_ERR_MESSAGE_FORMAT, EM_SEV_HIGH, "key",
                            "not a PEM private key");
    BIO *b = BIO_new_mem_buf(pem, (int)len);
    if (b == NULL)
        return em_error_set(err, EM_ERR_NOMEM, EM_SEV_HIGH, NULL, "out of memory");
    EVP_PKEY *k = PEM_read_bio_PrivateKey(b, NULL, no_password, NULL);
    BIO_free(b);
    ERR_clear_error();
    if (k == NULL)
        return em_error_set(err, EM_ERR_MESSAGE_FORMAT, EM_SEV_HIGH, "key",
                            "not a PEM private key (PKCS#8 or traditional, unencrypted)");
    *out = k;
    return EM_OK;
}

em_err_t em__key_to_pem(EVP_PKEY *key, unsigned char **out, size_t *out_len, em_error_t *err)
{
    *out = NULL;
    *out_len = 0;
    BIO *b = BIO_new(BIO_s_mem());
    if (b == NULL)
        return em_error_set(err, EM_ERR_NOMEM, EM_SEV_HIGH, NULL, "out of memory");
    em_err_t rc = EM_OK;
    char *p = NULL;
    long n = 0;
    if (PEM_write_bio_PKCS8PrivateKey(b, key, NULL, NULL, 0, NULL, NULL) != 1) {
        /* A key held in an HSM cannot be exported; that is the point. */
        rc = em_error_set(err, EM_ERR_INVALID_ARGUMENT, EM_SEV_HIGH, "key",
                          "the key cannot be exported (not a private key, or held in an HSM)");
    } else if ((n = BIO_get_mem_data(b, &p)) <= 0 || (size_t)n > EM__KEYSTORE_DATA_MAX) {
        rc = em_error_set(err, EM_ERR_LIMIT, EM_SEV_HIGH, "key", "the key does not fit a keystore");
    } else if ((*out = malloc((size_t)n + 1)) == NULL) {
        rc = em_error_set(err, EM_ERR_NOMEM, EM_SEV_HIGH, NULL, "out of memory");
    } else {
        memcpy(*out, p, (size_t)n);
        (*out)[n] = '\0';
        *out_len = (size_t)n;
    }
    /* The memory BIO held the key in the clear. */
    n = BIO_get_mem_data(b, &p);
    if (n > 0)
        OPENSSL_cleanse(p, (size_t)n);
    BIO_free(b);
    ERR_clear_error();
    return rc;
}

em_err_t em_key_save(const char *path, EVP_PKEY *key, const em_keystore_secret_t *secret,
                     em_error_t *err)
{
    if (path == NULL || path[0] == '\0' || key == NULL || secret == NULL)
        return em_error_set(err, EM_ERR_INVALID_ARGUMENT, EM_SEV_MEDIUM, NULL,
                            "path, key and secret are required");
    unsigned char *pem = NULL;
    size_t len = 0;
    em_err_t rc = em__key_to_pem(key, &pem, &len, err);
    if (rc != EM_OK)
        return rc;
    rc = em_keystore_write_file(path, secret, pem, len, err);
    em_keystore_data_free(pem, len);
    return rc;
}

em_err_t em_key_load(const char *ref, const em_keystore_secret_t *secret, em_pkcs11_t *hsm,
                     bool allow_plain, EVP_PKEY **out, em_error_t *err)
{
    if (ref == NULL || ref[0] == '\0' || out == NULL)
        return em_error_set(err, EM_ERR_INVALID_ARGUMENT, EM_SEV_MEDIUM, NULL,
                            "ref and out are required");
    *out = NULL;
    if (em_key_ref_is_pkcs11(ref)) {
        if (hsm == NULL)
            return em_error_set(err, EM_ERR_CONFIGURATION, EM_SEV_HIGH, "key",
                                "a PKCS#11 key needs an HSM module configured");
        return em__pkcs11_load_key(hsm, ref, out, err);
    }

    unsigned char *raw = NULL;
    size_t raw_len = 0;
    unsigned mode = 0;
    em_err_t rc = em__security_read_file(ref, EM_KEYSTORE_FILE_MAX, &raw, &raw_len, &mode, err);
    if (rc != EM_OK)
        return rc;
    if (em_keystore_is_sealed(raw, raw_len)) {
        if (secret == NULL) {
            free(raw); /* sealed: nothing secret in it */
            return em_error_set(err, EM_ERR_CONFIGURATION, EM_SEV_HIGH, "key",
                                "%s is a keystore file: a passphrase or key file is needed", ref);
        }
        unsigned char *pem = NULL;
        size_t pem_len = 0;
        rc = em_keystore_open(secret, raw, raw_len, &pem, &pem_len, err);
        free(raw);
        if (rc != EM_OK)
            return rc;
        rc = em__key_from_pem(pem, pem_len, out, err);
        em_keystore_data_free(pem, pem_len);
        return rc;
    }
    if (!allow_plain) {
        em_keystore_data_free(raw, raw_len);
        return em_error_set(err, EM_ERR_CONFIGURATION, EM_SEV_HIGH, "key",
                            "%s is not a keystore file; plain private keys are refused here", ref);
    }
    if ((mode & 077) != 0) {
        em_keystore_data_free(raw, raw_len);
        return em_error_set(err, EM_ERR_CONFIGURATION, EM_SEV_HIGH, "key",
                            "%s must not be accessible by group or others (chmod 600)", ref);
    }
    rc = em__key_from_pem(raw, raw_len, out, err);
    em_keystore_data_free(raw, raw_len);
    return rc;
}
