/*
 * libFuzzer target: em_status_decode, and encode/decode round trips of what
 * it accepts.
 */
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "emiot/status.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static int str_eq(const char *a, const char *b)
{
    if (a == NULL || b == NULL)
        return a == b;
    return strcmp(a, b) == 0;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    em_status_t a;
    em_error_t err;
    if (em_status_decode((const char *)data, size, &a, &err) != EM_OK) {
        /* Every rejection carries a code and a reason. */
        if (err.code != EM_ERR_MESSAGE_FORMAT && err.code != EM_ERR_VALIDATION &&
            err.code != EM_ERR_NOMEM)
            abort();
        if (err.message[0] == '\0')
            abort();
        return 0;
    }
    if ((a.has & EM_STATUS_HAS_LAST_SEEN) || a.last_seen_ms != 0)
        abort(); /* never decoded from the payload */
    if (a.battery_level > 100 || a.signal_strength < EM_SIGNAL_MIN ||
        a.signal_strength > EM_SIGNAL_MAX)
        abort();
    if (a.extra_json != NULL && strlen(a.extra_json) > EM_STATUS_EXTRA_MAX)
        abort();

    static char buf[2 * EM_PAYLOAD_MAX + 1024];
    size_t n = 0;
    if (em_status_encode(&a, buf, sizeof(buf), &n) != EM_OK || n != strlen(buf))
        abort();
    /* Numbers in additionalInfo may print longer than they were written, so
     * a re-encoded status can outgrow the payload limit; only then is the
     * round trip skipped. */
    if (n <= EM_PAYLOAD_MAX) {
        em_status_t b;
        if (em_status_decode(buf, n, &b, &err) != EM_OK)
            abort();
        if (a.has != b.has || a.battery_level != b.battery_level || a.power_mode != b.power_mode ||
            a.connection != b.connection || a.signal_strength != b.signal_strength ||
            strcmp(a.firmware_version, b.firmware_version) != 0 ||
            !str_eq(a.errors_json, b.errors_json) || !str_eq(a.extra_json, b.extra_json))
            abort();
        em_status_cleanup(&b);
    }

    em_status_t c;
    if (em_status_copy(&c, &a) != EM_OK)
        abort();
    if (!str_eq(a.errors_json, c.errors_json) || !str_eq(a.extra_json, c.extra_json))
        abort();
    em_status_cleanup(&c);
    em_status_cleanup(&a);
    return 0;
}
