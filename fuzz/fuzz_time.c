/*
 * libFuzzer target: em_time_parse, and format/parse round trips.
 */
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "emiot/clock.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

/* 9999-12-31T23:59:59.999Z */
#define MAX_MS 253402300799999LL

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    int64_t ms = 0;
    em_error_t err;
    char buf[EM_TIME_STR_MAX];
    if (em_time_parse((const char *)data, size, &ms, &err) == EM_OK) {
        /* Offsets can carry 9999-12-31 past the year's end, never before 1970. */
        if (ms < 0 || ms > MAX_MS + 24 * 3600000LL)
            abort();
        size_t n = em_time_format(ms, buf, sizeof(buf));
        if (n == 0)
            abort();
        int64_t back = -1;
        if (ms <= MAX_MS && (em_time_parse(buf, n, &back, &err) != EM_OK || back != ms))
            abort();
    } else if (err.message[0] == '\0') {
        abort();
    }

    /* The first 8 bytes as a time: formatting must never fail or overflow. */
    if (size >= 8) {
        int64_t t;
        memcpy(&t, data, sizeof(t));
        size_t n = em_time_format(t, buf, sizeof(buf));
        if (n == 0 || n >= sizeof(buf) || strlen(buf) != n)
            abort();
        if (t >= 0 && t <= MAX_MS) {
            int64_t back = -1;
            if (em_time_parse(buf, n, &back, &err) != EM_OK || back != t)
                abort();
        }
    }
    return 0;
}
