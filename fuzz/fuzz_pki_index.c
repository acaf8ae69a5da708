/*
 * libFuzzer target: the CA's index parser (em__pki_index_parse), and
 * parse -> format -> parse round trips.
 */
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "pki/pki_internal.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    em__pki_index_t idx;
    em_error_t err;
    em_err_t rc = em__pki_index_parse((const char *)data, size, &idx, &err);
    if (rc != EM_OK) {
        /* A refusal names its line and leaves nothing behind. */
        if (err.message[0] == '\0' || idx.certs != NULL || idx.n != 0)
            abort();
        return 0;
    }
    for (size_t i = 0; i < idx.n; i++) {
        if (!em__pki_cert_valid(&idx.certs[i]))
            abort();
    }
    /* What was accepted formats back to exactly the input. */
    char *out = NULL;
    size_t len = 0;
    if (em__pki_index_format(&idx, &out, &len, &err) != EM_OK)
        abort();
    if (len != size || memcmp(out, data, size) != 0)
        abort();
    em__pki_index_t again;
    if (em__pki_index_parse(out, len, &again, &err) != EM_OK || again.n != idx.n)
        abort();
    if (idx.n > 0 && memcmp(again.certs, idx.certs, idx.n * sizeof(idx.certs[0])) != 0)
        abort();
    free(out);
    em__pki_index_clear(&again);
    em__pki_index_clear(&idx);
    return 0;
}
