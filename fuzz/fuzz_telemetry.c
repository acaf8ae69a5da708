/*
 * libFuzzer target: em_telemetry_decode, and encode/decode round trips of
 * what it accepts.
 */
#include <math.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "emiot/status.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

/* A fixed receiver clock (2100-01-01) keeps runs reproducible. */
#define NOW_MS 4102444800000LL

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    em_telemetry_t a;
    em_error_t err;
    if (em_telemetry_decode((const char *)data, size, NOW_MS, EM_CLOCK_SKEW_MS_DEFAULT, &a, &err) !=
        EM_OK) {
        if (err.code != EM_ERR_MESSAGE_FORMAT && err.code != EM_ERR_VALIDATION)
            abort();
        if (err.message[0] == '\0')
            abort();
        return 0;
    }
    if (a.timestamp_ms < 0 || a.timestamp_ms > NOW_MS + EM_CLOCK_SKEW_MS_DEFAULT)
        abort();
    if (a.battery > 100)
        abort();
    if (((a.has & EM_TELEMETRY_HAS_TEMPERATURE) &&
         !(a.temperature >= -50 && a.temperature <= 100)) ||
        ((a.has & EM_TELEMETRY_HAS_HUMIDITY) && !(a.humidity >= 0 && a.humidity <= 100)) ||
        ((a.has & EM_TELEMETRY_HAS_ENERGY) && !(isfinite(a.energy_wh) && a.energy_wh >= 0)) ||
        ((a.has & EM_TELEMETRY_HAS_VOLTAGE) && !(isfinite(a.voltage_v) && a.voltage_v >= 0)) ||
        !isfinite(a.power_w) || !isfinite(a.current_a))
        abort();

    char buf[1024];
    size_t n = 0;
    if (em_telemetry_encode(&a, buf, sizeof(buf), &n) != EM_OK || n != strlen(buf))
        abort();
    em_telemetry_t b;
    if (em_telemetry_decode(buf, n, NOW_MS, EM_CLOCK_SKEW_MS_DEFAULT, &b, &err) != EM_OK)
        abort();
    if (a.has != b.has || a.timestamp_ms != b.timestamp_ms || a.battery != b.battery ||
        a.power_w != b.power_w || a.energy_wh != b.energy_wh || a.voltage_v != b.voltage_v ||
        a.current_a != b.current_a || a.temperature != b.temperature || a.humidity != b.humidity)
        abort();
    return 0;
}
