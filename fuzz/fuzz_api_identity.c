/*
 * libFuzzer target: the JSON bodies of the three public device identity
 * routes (POST /api/v1/enroll, /api/v1/auth/challenge,
 * /api/v1/auth/device-token), parsed and checked as routes_identity.c,
 * identity_enroll.c and identity_auth.c do before they look anything up: em__id_body_validate, then
 * the shape of the enrollment token, the CSR's PEM, the nonce, the signature's base64url and the
 * presented certificate's PEM. The first byte chooses the route.
 */
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include <cjson/cJSON.h>
#include <openssl/err.h>
#include <openssl/pem.h>
#include <openssl/x509.h>

#include "api/identity.h"
#include "api/nonce.h"
#include "emiot/log.h"
#include "emiot/pki.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static em__nonces_t *nonces_once(void)
{
    static em__nonces_t *t;
    if (t == NULL) {
        em_log_set_level(EM_LOG_OFF);
        t = em__nonces_new(16);
        if (t == NULL)
            abort();
    }
    return t;
}

static void check_pem_csr(const char *csr)
{
    size_t len = strlen(csr);
    if (len == 0 || len > EM_PKI_CSR_MAX)
        return;
    BIO *b = BIO_new_mem_buf(csr, (int)len);
    X509_REQ *req = b != NULL ? PEM_read_bio_X509_REQ(b, NULL, NULL, NULL) : NULL;
    if (req != NULL) {
        EVP_PKEY *key = X509_REQ_get0_pubkey(req);
        if (key != NULL) {
            (void)X509_REQ_verify(req, key);
            (void)em_pki_key_acceptable(key, NULL);
        }
    }
    X509_REQ_free(req);
    BIO_free(b);
    ERR_clear_error();
}

static void check_pem_cert(const char *pem)
{
    size_t len = strlen(pem);
    if (len == 0 || len > EM__ID_CERT_TEXT_MAX)
        return;
    BIO *b = BIO_new_mem_buf(pem, (int)len);
    X509 *c = b != NULL ? PEM_read_bio_X509(b, NULL, NULL, NULL) : NULL;
    if (c != NULL) {
        char fp[EM_PKI_SHA256_LEN + 1];
        em_pki_fingerprint(c, fp);
        if (strlen(fp) != EM_PKI_SHA256_LEN)
            abort();
    }
    X509_free(c);
    BIO_free(b);
    ERR_clear_error();
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size < 1 || size > 65536)
        return 0;
    em__nonces_t *nonces = nonces_once();
    em__id_route_t route = (em__id_route_t)(data[0] % 3);
    cJSON *obj = cJSON_ParseWithLength((const char *)data + 1, size - 1);
    if (obj == NULL)
        return 0;
    em__id_body_t b;
    em_error_t err;
    if (em__id_body_validate(route, obj, &b, &err) != EM_OK) {
        if (err.code != EM_ERR_VALIDATION || err.field[0] == '\0')
            abort();
        cJSON_Delete(obj);
        return 0;
    }
    if (b.device_id == NULL)
        abort();
    switch (route) {
    case EM__ID_ENROLL:
        if (b.token == NULL || b.csr == NULL)
            abort();
        if (em__id_token_shape_ok(b.token, strlen(b.token)) &&
            (strlen(b.token) != EM__ENROLL_TOKEN_LEN || memcmp(b.token, "enr_", 4) != 0))
            abort();
        check_pem_csr(b.csr);
        break;
    case EM__ID_CHALLENGE:
        if (em_device_id_validate(b.device_id, strlen(b.device_id), NULL) != EM_OK)
            abort();
        break;
    case EM__ID_DEVICE_TOKEN: {
        if (b.nonce == NULL || b.signature == NULL)
            abort();
        /* Nothing was issued: every nonce is unknown. */
        if (em__nonces_take(nonces, b.nonce, strlen(b.nonce), b.device_id, 0) != EM__NONCE_UNKNOWN)
            abort();
        unsigned char sig[EM__ID_SIG_MAX];
        size_t slen = strlen(b.signature);
        if (slen <= EM__ID_SIG_TEXT_MAX) {
            long n = em__b64url_decode(b.signature, slen, sig, sizeof sig);
            if (n > (long)sizeof sig || (n >= 0 && (size_t)n != slen * 6 / 8))
                abort();
        }
        if (b.certificate != NULL)
            check_pem_cert(b.certificate);
        break;
    }
    }
    cJSON_Delete(obj);
    return 0;
}
