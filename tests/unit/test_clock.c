/*
 * Tests for src/core/clock.c: clocks, RFC 3339 parsing and formatting.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "emiot/clock.h"

static int64_t parse_ok(const char *s)
{
    int64_t ms = -1;
    em_error_t err;
    em_error_clear(&err);
    em_err_t rc = em_time_parse(s, strlen(s), &ms, &err);
    if (rc != EM_OK)
        fail_msg("'%s' refused: %s", s, err.message);
    return ms;
}

static void assert_parse_refused(const char *s, const char *want)
{
    int64_t ms = 12345;
    em_error_t err;
    em_error_clear(&err);
    assert_int_equal(em_time_parse(s, strlen(s), &ms, &err), EM_ERR_VALIDATION);
    assert_int_equal(err.code, EM_ERR_VALIDATION);
    if (strstr(err.message, want) == NULL)
        fail_msg("'%s': message '%s' lacks '%s'", s, err.message, want);
    assert_int_equal(ms, 12345); /* untouched on failure */
}

static void test_now_is_after_2020(void **state)
{
    (void)state;
    assert_true(em_now_ms() > 1577836800000LL);
}

static void test_monotonic_clock_never_goes_back(void **state)
{
    (void)state;
    int64_t a = em_mono_ms();
    int64_t b = em_mono_ms();
    assert_true(a > 0);
    assert_true(b >= a);
}

static void test_parses_epoch(void **state)
{
    (void)state;
    assert_int_equal(parse_ok("1970-01-01T00:00:00Z"), 0);
}

static void test_parses_design_example(void **state)
{
    (void)state;
    /* 2026-11-22T10:00:00Z, as `date -u -d ... +%s` gives it. */
    assert_int_equal(parse_ok("2026-11-22T10:00:00Z"), 1795341600000LL);
}

static void test_parses_lowercase_t_and_z(void **state)
{
    (void)state;
    assert_int_equal(parse_ok("2026-11-22t10:00:00z"), 1795341600000LL);
}

static void test_parses_fraction_of_one_to_nine_digits(void **state)
{
    (void)state;
    assert_int_equal(parse_ok("1970-01-01T00:00:01.5Z"), 1500);
    assert_int_equal(parse_ok("1970-01-01T00:00:01.25Z"), 1250);
    assert_int_equal(parse_ok("1970-01-01T00:00:01.125Z"), 1125);
    assert_int_equal(parse_ok("1970-01-01T00:00:01.123999999Z"), 1123); /* truncated */
}

static void test_refuses_fraction_of_ten_digits(void **state)
{
    (void)state;
    assert_parse_refused("1970-01-01T00:00:01.1234567890Z", "1 to 9 digits");
}

static void test_refuses_empty_fraction(void **state)
{
    (void)state;
    assert_parse_refused("1970-01-01T00:00:01.Z", "1 to 9 digits");
}

static void test_applies_positive_and_negative_offsets(void **state)
{
    (void)state;
    assert_int_equal(parse_ok("2026-11-22T11:30:00+01:30"), 1795341600000LL);
    assert_int_equal(parse_ok("2026-11-22T05:00:00-05:00"), 1795341600000LL);
    assert_int_equal(parse_ok("2026-11-22T10:00:00+00:00"), 1795341600000LL);
    assert_int_equal(parse_ok("2026-11-22T10:00:00-00:00"), 1795341600000LL);
}

static void test_offset_limits(void **state)
{
    (void)state;
    assert_int_equal(parse_ok("2026-11-22T23:59:00+23:59"), 1795341600000LL - 10 * 3600000LL);
    assert_parse_refused("2026-11-22T10:00:00+24:00", "offset");
    assert_parse_refused("2026-11-22T10:00:00+01:60", "offset");
    assert_parse_refused("2026-11-22T10:00:00+0100", "offset");
    assert_parse_refused("2026-11-22T10:00:00+01", "offset");
}

static void test_leap_day_in_leap_years(void **state)
{
    (void)state;
    assert_int_equal(parse_ok("2024-02-29T00:00:00Z"), 1709164800000LL);
    assert_int_equal(parse_ok("2000-02-29T00:00:00Z"), 951782400000LL); /* divisible by 400 */
}

static void test_refuses_leap_day_in_common_years(void **state)
{
    (void)state;
    assert_parse_refused("2023-02-29T00:00:00Z", "day");
    assert_parse_refused("2100-02-29T00:00:00Z", "day"); /* divisible by 100, not 400 */
    assert_parse_refused("2024-02-30T00:00:00Z", "day");
}

static void test_month_lengths(void **state)
{
    (void)state;
    parse_ok("2026-01-31T00:00:00Z");
    parse_ok("2026-04-30T00:00:00Z");
    assert_parse_refused("2026-04-31T00:00:00Z", "day");
    assert_parse_refused("2026-06-31T00:00:00Z", "day");
    assert_parse_refused("2026-09-31T00:00:00Z", "day");
    assert_parse_refused("2026-11-31T00:00:00Z", "day");
    parse_ok("2026-12-31T23:59:59Z");
}

static void test_refuses_out_of_range_fields(void **state)
{
    (void)state;
    assert_parse_refused("2026-00-10T00:00:00Z", "month");
    assert_parse_refused("2026-13-10T00:00:00Z", "month");
    assert_parse_refused("2026-01-00T00:00:00Z", "day");
    assert_parse_refused("2026-01-32T00:00:00Z", "day");
    assert_parse_refused("2026-01-10T24:00:00Z", "hour");
    assert_parse_refused("2026-01-10T23:60:00Z", "minute");
    assert_parse_refused("2026-01-10T23:59:60Z", "second");
}

static void test_year_range_is_1970_to_9999(void **state)
{
    (void)state;
    assert_parse_refused("1969-12-31T23:59:59Z", "year");
    assert_int_equal(parse_ok("9999-12-31T23:59:59.999Z"), 253402300799999LL);
}

static void test_refuses_time_before_epoch_after_offset(void **state)
{
    (void)state;
    assert_parse_refused("1970-01-01T00:30:00+01:00", "before 1970");
}

static void test_refuses_malformed_shapes(void **state)
{
    (void)state;
    const char *bad[] = {
        "",
        "2026",
        "2026-11-22",
        "2026-11-22 10:00:00Z",
        "2026-11-22T10:00Z",
        "2026-11-22T10:00:00",
        "26-11-22T10:00:00Z",
        "2026-1-22T10:00:00Z",
        "2026-11-22T1:00:00Z",
        "2026/11/22T10:00:00Z",
        "+2026-11-22T10:00:00Z",
        "2026-11-22T10:00:00ZZ",
        "2026-11-22T10:00:00Z ",
        " 2026-11-22T10:00:00Z",
        "2026-11-22T10:00:00.5.5Z",
        "2026-1a-22T10:00:00Z",
    };
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        int64_t ms;
        em_error_t err;
        em_error_clear(&err);
        if (em_time_parse(bad[i], strlen(bad[i]), &ms, &err) != EM_ERR_VALIDATION)
            fail_msg("'%s' accepted", bad[i]);
        assert_true(err.message[0] != '\0');
    }
}

static void test_parse_reads_only_len_bytes(void **state)
{
    (void)state;
    const char *s = "2026-11-22T10:00:00Zgarbage";
    int64_t ms;
    assert_int_equal(em_time_parse(s, 20, &ms, NULL), EM_OK);
    assert_int_equal(ms, 1795341600000LL);
    /* A cut-off timestamp is refused, not read past its length. */
    assert_int_equal(em_time_parse(s, 19, &ms, NULL), EM_ERR_VALIDATION);
}

static void test_parse_refuses_null_arguments(void **state)
{
    (void)state;
    int64_t ms;
    assert_int_equal(em_time_parse(NULL, 0, &ms, NULL), EM_ERR_INVALID_ARGUMENT);
    assert_int_equal(em_time_parse("1970-01-01T00:00:00Z", 20, NULL, NULL),
                     EM_ERR_INVALID_ARGUMENT);
}

static void test_format_epoch_and_example(void **state)
{
    (void)state;
    char buf[EM_TIME_STR_MAX];
    assert_int_equal(em_time_format(0, buf, sizeof(buf)), 24);
    assert_string_equal(buf, "1970-01-01T00:00:00.000Z");
    em_time_format(1795341600123LL, buf, sizeof(buf));
    assert_string_equal(buf, "2026-11-22T10:00:00.123Z");
    em_time_format(951782400000LL, buf, sizeof(buf));
    assert_string_equal(buf, "2000-02-29T00:00:00.000Z");
}

static void test_format_before_epoch_uses_floor(void **state)
{
    (void)state;
    char buf[EM_TIME_STR_MAX];
    em_time_format(-1, buf, sizeof(buf));
    assert_string_equal(buf, "1969-12-31T23:59:59.999Z");
}

static void test_format_extreme_values_fit(void **state)
{
    (void)state;
    char buf[EM_TIME_STR_MAX];
    assert_true(em_time_format(INT64_MAX, buf, sizeof(buf)) > 0);
    assert_string_equal(buf, "+292278994-08-17T07:12:55.807Z");
    assert_true(em_time_format(INT64_MIN, buf, sizeof(buf)) > 0);
    assert_string_equal(buf, "-292275055-05-16T16:47:04.192Z");
    em_time_format(253402300800000LL, buf, sizeof(buf));
    assert_string_equal(buf, "+010000-01-01T00:00:00.000Z");
}

static void test_format_into_small_buffer_writes_nothing(void **state)
{
    (void)state;
    char buf[10] = "xxxxxxxxx";
    assert_int_equal(em_time_format(0, buf, sizeof(buf)), 0);
    assert_string_equal(buf, "");
    assert_int_equal(em_time_format(0, NULL, 0), 0);
}

static void test_format_then_parse_round_trips(void **state)
{
    (void)state;
    const int64_t samples[] = {0,
                               1,
                               999,
                               86399999,
                               86400000,
                               951782399999LL,
                               1709164800000LL,
                               1795341600123LL,
                               4102444800000LL,
                               253402300799999LL};
    for (size_t i = 0; i < sizeof(samples) / sizeof(samples[0]); i++) {
        char buf[EM_TIME_STR_MAX];
        size_t n = em_time_format(samples[i], buf, sizeof(buf));
        int64_t back = -1;
        assert_int_equal(em_time_parse(buf, n, &back, NULL), EM_OK);
        assert_int_equal(back, samples[i]);
    }
}

static void test_every_day_of_four_centuries_round_trips(void **state)
{
    (void)state;
    /* 1970-01-01 to 2370-01-01 at noon: covers every calendar rule. */
    for (int64_t day = 0; day < 146097; day++) {
        int64_t ms = day * 86400000LL + 43200000LL;
        char buf[EM_TIME_STR_MAX];
        size_t n = em_time_format(ms, buf, sizeof(buf));
        int64_t back = -1;
        if (em_time_parse(buf, n, &back, NULL) != EM_OK || back != ms)
            fail_msg("day %lld (%s) does not round-trip", (long long)day, buf);
    }
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_now_is_after_2020),
        cmocka_unit_test(test_monotonic_clock_never_goes_back),
        cmocka_unit_test(test_parses_epoch),
        cmocka_unit_test(test_parses_design_example),
        cmocka_unit_test(test_parses_lowercase_t_and_z),
        cmocka_unit_test(test_parses_fraction_of_one_to_nine_digits),
        cmocka_unit_test(test_refuses_fraction_of_ten_digits),
        cmocka_unit_test(test_refuses_empty_fraction),
        cmocka_unit_test(test_applies_positive_and_negative_offsets),
        cmocka_unit_test(test_offset_limits),
        cmocka_unit_test(test_leap_day_in_leap_years),
        cmocka_unit_test(test_refuses_leap_day_in_common_years),
        cmocka_unit_test(test_month_lengths),
        cmocka_unit_test(test_refuses_out_of_range_fields),
        cmocka_unit_test(test_year_range_is_1970_to_9999),
        cmocka_unit_test(test_refuses_time_before_epoch_after_offset),
        cmocka_unit_test(test_refuses_malformed_shapes),
        cmocka_unit_test(test_parse_reads_only_len_bytes),
        cmocka_unit_test(test_parse_refuses_null_arguments),
        cmocka_unit_test(test_format_epoch_and_example),
        cmocka_unit_test(test_format_before_epoch_uses_floor),
        cmocka_unit_test(test_format_extreme_values_fit),
        cmocka_unit_test(test_format_into_small_buffer_writes_nothing),
        cmocka_unit_test(test_format_then_parse_round_trips),
        cmocka_unit_test(test_every_day_of_four_centuries_round_trips),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
