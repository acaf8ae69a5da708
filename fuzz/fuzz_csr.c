/*
 * libFuzzer target: the front half of em_pki_issue_csr on arbitrary bytes:
 * the PEM and DER parse, the CSR's self-signature, the key policy and the CN
 * rules of each profile. No certificate is signed (that needs a CA and is not
 * input parsing).
 */
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include <openssl/err.h>
#include <openssl/x509.h>

#include "pki/pki_internal.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    X509_REQ *req = NULL;
    em_error_t err;
    em_err_t rc = em__pki_csr_check((const char *)data, size, &req, &err);
    if (rc != EM_OK) {
        if (req != NULL || err.message[0] == '\0')
            abort();
        if (rc != EM_ERR_MESSAGE_FORMAT && rc != EM_ERR_CRYPTO && rc != EM_ERR_VALIDATION &&
            rc != EM_ERR_NOMEM)
            abort();
        ERR_clear_error();
        return 0;
    }
    /* An accepted CSR has an acceptable key. */
    if (em_pki_key_acceptable(X509_REQ_get0_pubkey(req), NULL) != EM_OK)
        abort();
    for (int p = EM_CERT_DEVICE; p <= EM_CERT_CLIENT; p++) {
        char cn[EM_PKI_CN_MAX + 1];
        if (em__pki_csr_cn(req, (em_cert_profile_t)p, NULL, cn, &err) == EM_OK) {
            size_t n = strlen(cn);
            if (n == 0 || n > EM_PKI_CN_MAX || !em__pki_cn_valid((em_cert_profile_t)p, cn, n))
                abort();
            /* The CN it carries is the one it must match. */
            if (em__pki_csr_cn(req, (em_cert_profile_t)p, cn, cn, &err) != EM_OK)
                abort();
        }
    }
    X509_REQ_free(req);
    ERR_clear_error();
    return 0;
}
