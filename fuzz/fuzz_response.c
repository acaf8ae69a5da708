/*
 * emiot fuzz - fuzz_response.c: the response decoder (what devices answer).
 *
 * A decoded response encodes; when the encoding still fits the decoder's size
 * limit, it decodes to the same response and re-encodes to the same bytes.
 */
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "emiot/command.h"
#include "emiot/status.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

#define CHECK(cond)                                                                                \
    do {                                                                                           \
        if (!(cond))                                                                               \
            __builtin_trap();                                                                      \
    } while (0)

/* Room for the largest encoding: the message fully escaped (6 bytes per byte)
 * and data printed from a payload of EM_PAYLOAD_MAX bytes. */
#define OUT_MAX (8u * EM_PAYLOAD_MAX)

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    static char out[OUT_MAX], again[OUT_MAX];
    em_response_t r;
    em_error_t err;
    if (em_response_decode((const char *)data, size, &r, &err) != EM_OK) {
        CHECK(r.data_json == NULL);
        CHECK(err.code != EM_OK);
        return 0;
    }
    CHECK(strlen(r.request_id) >= 1 && strlen(r.request_id) <= EM_REQUEST_ID_MAX);
    CHECK(strlen(r.message) <= EM_RESPONSE_MESSAGE_MAX);
    size_t n = 0;
    CHECK(em_response_encode(&r, out, sizeof(out), &n) == EM_OK);
    CHECK(n == strlen(out));
    if (n <= EM_PAYLOAD_MAX) {
        em_response_t back;
        CHECK(em_response_decode(out, n, &back, &err) == EM_OK);
        CHECK(strcmp(back.request_id, r.request_id) == 0);
        CHECK(back.success == r.success);
        CHECK(strcmp(back.message, r.message) == 0);
        CHECK(back.timestamp_ms == r.timestamp_ms);
        CHECK((back.data_json == NULL) == (r.data_json == NULL));
        if (r.data_json != NULL)
            CHECK(strcmp(back.data_json, r.data_json) == 0);
        size_t m = 0;
        CHECK(em_response_encode(&back, again, sizeof(again), &m) == EM_OK);
        CHECK(m == n && memcmp(again, out, n) == 0);
        em_response_cleanup(&back);
    }
    CHECK(em_response_encode(&r, again, n, NULL) == EM_ERR_BUFFER_TOO_SMALL);
    em_response_cleanup(&r);
    return 0;
}
