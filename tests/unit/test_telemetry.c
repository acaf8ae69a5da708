/*
 * Tests for src/model/telemetry.c: telemetry decoding and encoding.
 */
#include <math.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "emiot/status.h"

/* energy-manager-iot's example telemetry message (DESIGN.md, "Protocol"). */
static const char EXAMPLE[] =
    "{\"timestamp\":\"2026-11-22T10:00:00Z\",\"power_w\":12.5,\"energy_wh\":10450.2,"
    "\"voltage_v\":230.1,\"current_a\":0.05,\"temperature\":21.5,\"humidity\":40,\"battery\":80}";

#define EXAMPLE_MS 1795341600000LL
/* The receiver's clock in these tests: one hour after the example. */
#define NOW  (EXAMPLE_MS + 3600000LL)
#define SKEW EM_CLOCK_SKEW_MS_DEFAULT

static em_telemetry_t decode_ok(const char *s)
{
    em_telemetry_t t;
    em_error_t err;
    em_error_clear(&err);
    if (em_telemetry_decode(s, strlen(s), NOW, SKEW, &t, &err) != EM_OK)
        fail_msg("'%s' refused: %s: %s", s, err.field, err.message);
    return t;
}

static void assert_refused(const char *s, em_err_t code, const char *field, const char *rule)
{
    em_telemetry_t t;
    memset(&t, 0xA5, sizeof(t));
    em_error_t err;
    em_error_clear(&err);
    em_err_t rc = em_telemetry_decode(s, strlen(s), NOW, SKEW, &t, &err);
    if (rc != code)
        fail_msg("'%s': got %d (%s: %s), want %d", s, rc, err.field, err.message, code);
    assert_int_equal(err.code, code);
    assert_string_equal(err.field, field);
    if (strstr(err.message, rule) == NULL)
        fail_msg("'%s': message '%s' lacks '%s'", s, err.message, rule);
    assert_int_equal(t.has, 0);
}

/* {"timestamp":0,"key":value} */
static em_telemetry_t accept_value(const char *key, const char *value)
{
    char buf[256];
    snprintf(buf, sizeof(buf), "{\"timestamp\":0,\"%s\":%s}", key, value);
    return decode_ok(buf);
}

static void refuse_value(const char *key, const char *value, const char *rule)
{
    char buf[256];
    snprintf(buf, sizeof(buf), "{\"timestamp\":0,\"%s\":%s}", key, value);
    assert_refused(buf, EM_ERR_VALIDATION, key, rule);
}

static void test_decodes_design_example(void **state)
{
    (void)state;
    em_telemetry_t t = decode_ok(EXAMPLE);
    assert_int_equal(t.timestamp_ms, EXAMPLE_MS);
    assert_int_equal(t.has, EM_TELEMETRY_HAS_POWER | EM_TELEMETRY_HAS_ENERGY |
                                EM_TELEMETRY_HAS_VOLTAGE | EM_TELEMETRY_HAS_CURRENT |
                                EM_TELEMETRY_HAS_TEMPERATURE | EM_TELEMETRY_HAS_HUMIDITY |
                                EM_TELEMETRY_HAS_BATTERY);
    assert_true(t.power_w == 12.5);
    assert_true(t.energy_wh == 10450.2);
    assert_true(t.voltage_v == 230.1);
    assert_true(t.current_a == 0.05);
    assert_true(t.temperature == 21.5);
    assert_true(t.humidity == 40);
    assert_int_equal(t.battery, 80);
}

static void test_timestamp_only_is_enough(void **state)
{
    (void)state;
    em_telemetry_t t = decode_ok("{\"timestamp\":\"2026-11-22T10:00:00Z\"}");
    assert_int_equal(t.has, 0);
    assert_int_equal(t.timestamp_ms, EXAMPLE_MS);
}

static void test_timestamp_is_required(void **state)
{
    (void)state;
    assert_refused("{\"power_w\":1}", EM_ERR_VALIDATION, "timestamp", "is required");
    assert_refused("{}", EM_ERR_VALIDATION, "timestamp", "is required");
}

static void test_numeric_timestamp_is_epoch_ms(void **state)
{
    (void)state;
    char buf[64];
    snprintf(buf, sizeof(buf), "{\"timestamp\":%lld}", (long long)EXAMPLE_MS);
    em_telemetry_t t = decode_ok(buf);
    assert_int_equal(t.timestamp_ms, EXAMPLE_MS);
}

static void test_timestamp_at_skew_limit_is_accepted(void **state)
{
    (void)state;
    char buf[64];
    snprintf(buf, sizeof(buf), "{\"timestamp\":%lld}", (long long)(NOW + SKEW));
    decode_ok(buf);
}

static void test_timestamp_past_skew_limit_is_refused(void **state)
{
    (void)state;
    char buf[64];
    snprintf(buf, sizeof(buf), "{\"timestamp\":%lld}", (long long)(NOW + SKEW + 1));
    assert_refused(buf, EM_ERR_VALIDATION, "timestamp", "must not be in the future");
    assert_refused("{\"timestamp\":\"2030-01-01T00:00:00Z\"}", EM_ERR_VALIDATION, "timestamp",
                   "must not be in the future");
}

static void test_negative_skew_means_none(void **state)
{
    (void)state;
    char buf[64];
    int n = snprintf(buf, sizeof(buf), "{\"timestamp\":%lld}", (long long)(NOW + 1));
    em_telemetry_t t;
    assert_int_equal(em_telemetry_decode(buf, (size_t)n, NOW, -5, &t, NULL), EM_ERR_VALIDATION);
    n = snprintf(buf, sizeof(buf), "{\"timestamp\":%lld}", (long long)NOW);
    assert_int_equal(em_telemetry_decode(buf, (size_t)n, NOW, -5, &t, NULL), EM_OK);
}

static void test_huge_now_and_skew_do_not_overflow(void **state)
{
    (void)state;
    em_telemetry_t t;
    const char *s = "{\"timestamp\":1}";
    assert_int_equal(em_telemetry_decode(s, strlen(s), INT64_MAX, INT64_MAX, &t, NULL), EM_OK);
}

static void test_bad_timestamps_are_refused(void **state)
{
    (void)state;
    const char *rule_num = "must be an RFC 3339 string or an integer";
    assert_refused("{\"timestamp\":-1}", EM_ERR_VALIDATION, "timestamp", rule_num);
    assert_refused("{\"timestamp\":1.5}", EM_ERR_VALIDATION, "timestamp", rule_num);
    assert_refused("{\"timestamp\":true}", EM_ERR_VALIDATION, "timestamp", rule_num);
    assert_refused("{\"timestamp\":null}", EM_ERR_VALIDATION, "timestamp", rule_num);
    assert_refused("{\"timestamp\":{}}", EM_ERR_VALIDATION, "timestamp", rule_num);
    assert_refused("{\"timestamp\":1e300}", EM_ERR_VALIDATION, "timestamp", rule_num);
    assert_refused("{\"timestamp\":\"yesterday\"}", EM_ERR_VALIDATION, "timestamp", "RFC 3339");
    assert_refused("{\"timestamp\":\"2026-02-30T00:00:00Z\"}", EM_ERR_VALIDATION, "timestamp",
                   "day");
    assert_refused("{\"timestamp\":\"\"}", EM_ERR_VALIDATION, "timestamp", "RFC 3339");
}

static void test_power_accepts_any_finite_value(void **state)
{
    (void)state;
    em_telemetry_t t = accept_value("power_w", "-1500.25"); /* export to the grid */
    assert_true(t.power_w == -1500.25);
    assert_true(t.has & EM_TELEMETRY_HAS_POWER);
    t = accept_value("power_w", "1.7976931348623157e308");
    assert_true(t.power_w == 1.7976931348623157e308);
    t = accept_value("power_w", "0");
    assert_true(t.power_w == 0);
}

static void test_non_finite_numbers_are_refused(void **state)
{
    (void)state;
    refuse_value("power_w", "1e400", "must be a finite number");
    refuse_value("current_a", "-1e400", "must be a finite number");
    refuse_value("energy_wh", "1e999", "must be a finite number >= 0");
}

static void test_energy_and_voltage_must_not_be_negative(void **state)
{
    (void)state;
    em_telemetry_t t = accept_value("energy_wh", "0");
    assert_true(t.energy_wh == 0);
    t = accept_value("voltage_v", "0");
    assert_true(t.voltage_v == 0);
    refuse_value("energy_wh", "-0.001", "must be a finite number >= 0");
    refuse_value("voltage_v", "-1", "must be a finite number >= 0");
}

static void test_current_may_be_negative(void **state)
{
    (void)state;
    em_telemetry_t t = accept_value("current_a", "-0.5");
    assert_true(t.current_a == -0.5);
}

static void test_temperature_boundaries(void **state)
{
    (void)state;
    em_telemetry_t t = accept_value("temperature", "-50");
    assert_true(t.temperature == -50);
    t = accept_value("temperature", "100");
    assert_true(t.temperature == 100);
    refuse_value("temperature", "-50.01", "must be a number between -50 and 100");
    refuse_value("temperature", "100.5", "must be a number between -50 and 100");
}

static void test_humidity_boundaries(void **state)
{
    (void)state;
    em_telemetry_t t = accept_value("humidity", "0");
    assert_true(t.humidity == 0);
    t = accept_value("humidity", "100");
    assert_true(t.humidity == 100);
    t = accept_value("humidity", "55.5");
    assert_true(t.humidity == 55.5);
    refuse_value("humidity", "-0.1", "must be a number between 0 and 100");
    refuse_value("humidity", "100.1", "must be a number between 0 and 100");
}

static void test_battery_boundaries(void **state)
{
    (void)state;
    em_telemetry_t t = accept_value("battery", "0");
    assert_int_equal(t.battery, 0);
    t = accept_value("battery", "100");
    assert_int_equal(t.battery, 100);
    refuse_value("battery", "-1", "must be an integer between 0 and 100");
    refuse_value("battery", "101", "must be an integer between 0 and 100");
    refuse_value("battery", "80.5", "must be an integer between 0 and 100");
}

static void test_numbers_of_wrong_type_are_refused(void **state)
{
    (void)state;
    static const char *const keys[] = {"power_w",     "energy_wh", "voltage_v", "current_a",
                                       "temperature", "humidity",  "battery"};
    static const char *const values[] = {"\"12.5\"", "true", "null", "[1]", "{}"};
    for (size_t k = 0; k < sizeof(keys) / sizeof(keys[0]); k++)
        for (size_t v = 0; v < sizeof(values) / sizeof(values[0]); v++)
            refuse_value(keys[k], values[v], "must be");
}

static void test_unknown_keys_are_ignored(void **state)
{
    (void)state;
    em_telemetry_t t = decode_ok("{\"timestamp\":5,\"frequency_hz\":50,\"meta\":{\"a\":[1]}}");
    assert_int_equal(t.has, 0);
    assert_int_equal(t.timestamp_ms, 5);
}

static void test_duplicate_keys_are_refused(void **state)
{
    (void)state;
    assert_refused("{\"timestamp\":1,\"timestamp\":2}", EM_ERR_VALIDATION, "timestamp",
                   "more than once");
    assert_refused("{\"timestamp\":1,\"power_w\":1,\"power_w\":2}", EM_ERR_VALIDATION, "power_w",
                   "more than once");
    assert_refused("{\"timestamp\":1,\"battery\":1,\"battery\":2}", EM_ERR_VALIDATION, "battery",
                   "more than once");
}

static void test_payload_must_be_an_object(void **state)
{
    (void)state;
    assert_refused("[{\"timestamp\":1}]", EM_ERR_MESSAGE_FORMAT, "", "must be a JSON object");
    assert_refused("1", EM_ERR_MESSAGE_FORMAT, "", "must be a JSON object");
}

static void test_malformed_deep_and_big_payloads_are_format_errors(void **state)
{
    (void)state;
    assert_refused("{\"timestamp\":1,", EM_ERR_MESSAGE_FORMAT, "", "invalid JSON");
    assert_refused("{\"timestamp\":1,\"x\":[[[[[[[[1]]]]]]]]}", EM_ERR_MESSAGE_FORMAT, "",
                   "nested deeper");
    char *big = malloc(EM_PAYLOAD_MAX + 2);
    assert_non_null(big);
    memset(big, ' ', EM_PAYLOAD_MAX + 1);
    big[0] = '{';
    big[EM_PAYLOAD_MAX] = '}';
    big[EM_PAYLOAD_MAX + 1] = '\0';
    assert_refused(big, EM_ERR_MESSAGE_FORMAT, "", "payload larger than");
    free(big);
}

static void test_decode_without_output_is_refused(void **state)
{
    (void)state;
    assert_int_equal(em_telemetry_decode(EXAMPLE, strlen(EXAMPLE), NOW, SKEW, NULL, NULL),
                     EM_ERR_INVALID_ARGUMENT);
}

static void test_encode_design_example(void **state)
{
    (void)state;
    em_telemetry_t t = decode_ok(EXAMPLE);
    char buf[512];
    size_t n = 0;
    assert_int_equal(em_telemetry_encode(&t, buf, sizeof(buf), &n), EM_OK);
    assert_string_equal(buf, "{\"timestamp\":\"2026-11-22T10:00:00.000Z\",\"power_w\":12.5,"
                             "\"energy_wh\":10450.2,\"voltage_v\":230.1,\"current_a\":0.05,"
                             "\"temperature\":21.5,\"humidity\":40,\"battery\":80}");
    assert_int_equal(n, strlen(buf));
}

static void test_encode_decode_round_trip_is_exact(void **state)
{
    (void)state;
    em_telemetry_t a;
    memset(&a, 0, sizeof(a));
    a.has = EM_TELEMETRY_HAS_POWER | EM_TELEMETRY_HAS_ENERGY | EM_TELEMETRY_HAS_CURRENT |
            EM_TELEMETRY_HAS_HUMIDITY;
    a.timestamp_ms = 1700000000123LL;
    a.power_w = 0.1 + 0.2; /* needs 17 digits */
    a.energy_wh = 1e-300;
    a.current_a = -2.5e10;
    a.humidity = 33.333333333333336;
    char buf[512];
    assert_int_equal(em_telemetry_encode(&a, buf, sizeof(buf), NULL), EM_OK);
    em_telemetry_t b = decode_ok(buf);
    assert_int_equal(b.has, a.has);
    assert_int_equal(b.timestamp_ms, a.timestamp_ms);
    assert_true(b.power_w == a.power_w);
    assert_true(b.energy_wh == a.energy_wh);
    assert_true(b.current_a == a.current_a);
    assert_true(b.humidity == a.humidity);
}

static void test_encode_refuses_non_finite_values(void **state)
{
    (void)state;
    em_telemetry_t t;
    memset(&t, 0, sizeof(t));
    t.has = EM_TELEMETRY_HAS_POWER;
    t.power_w = NAN;
    char buf[256];
    assert_int_equal(em_telemetry_encode(&t, buf, sizeof(buf), NULL), EM_ERR_INVALID_ARGUMENT);
    t.power_w = INFINITY;
    assert_int_equal(em_telemetry_encode(&t, buf, sizeof(buf), NULL), EM_ERR_INVALID_ARGUMENT);
}

static void test_encode_into_small_buffer_reports_it(void **state)
{
    (void)state;
    em_telemetry_t t = decode_ok(EXAMPLE);
    char buf[512];
    size_t need = 0;
    assert_int_equal(em_telemetry_encode(&t, buf, sizeof(buf), &need), EM_OK);
    for (size_t size = 0; size <= need; size++)
        assert_int_equal(em_telemetry_encode(&t, buf, size, NULL), EM_ERR_BUFFER_TOO_SMALL);
    assert_int_equal(em_telemetry_encode(&t, buf, need + 1, NULL), EM_OK);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_decodes_design_example),
        cmocka_unit_test(test_timestamp_only_is_enough),
        cmocka_unit_test(test_timestamp_is_required),
        cmocka_unit_test(test_numeric_timestamp_is_epoch_ms),
        cmocka_unit_test(test_timestamp_at_skew_limit_is_accepted),
        cmocka_unit_test(test_timestamp_past_skew_limit_is_refused),
        cmocka_unit_test(test_negative_skew_means_none),
        cmocka_unit_test(test_huge_now_and_skew_do_not_overflow),
        cmocka_unit_test(test_bad_timestamps_are_refused),
        cmocka_unit_test(test_power_accepts_any_finite_value),
        cmocka_unit_test(test_non_finite_numbers_are_refused),
        cmocka_unit_test(test_energy_and_voltage_must_not_be_negative),
        cmocka_unit_test(test_current_may_be_negative),
        cmocka_unit_test(test_temperature_boundaries),
        cmocka_unit_test(test_humidity_boundaries),
        cmocka_unit_test(test_battery_boundaries),
        cmocka_unit_test(test_numbers_of_wrong_type_are_refused),
        cmocka_unit_test(test_unknown_keys_are_ignored),
        cmocka_unit_test(test_duplicate_keys_are_refused),
        cmocka_unit_test(test_payload_must_be_an_object),
        cmocka_unit_test(test_malformed_deep_and_big_payloads_are_format_errors),
        cmocka_unit_test(test_decode_without_output_is_refused),
        cmocka_unit_test(test_encode_design_example),
        cmocka_unit_test(test_encode_decode_round_trip_is_exact),
        cmocka_unit_test(test_encode_refuses_non_finite_values),
        cmocka_unit_test(test_encode_into_small_buffer_reports_it),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
