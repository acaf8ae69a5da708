/*
 * Tests for src/model/event.c: device events and availability payloads.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "emiot/status.h"

static em_device_event_t decode_ok(const char *s)
{
    em_device_event_t ev;
    em_error_t err;
    em_error_clear(&err);
    if (em_device_event_decode(s, strlen(s), &ev, &err) != EM_OK)
        fail_msg("'%s' refused: %s: %s", s, err.field, err.message);
    return ev;
}

static void assert_refused(const char *s, em_err_t code, const char *field, const char *rule)
{
    em_device_event_t ev;
    memset(&ev, 0xA5, sizeof(ev));
    em_error_t err;
    em_error_clear(&err);
    em_err_t rc = em_device_event_decode(s, strlen(s), &ev, &err);
    if (rc != code)
        fail_msg("'%s': got %d (%s: %s), want %d", s, rc, err.field, err.message, code);
    assert_string_equal(err.field, field);
    if (strstr(err.message, rule) == NULL)
        fail_msg("'%s': message '%s' lacks '%s'", s, err.message, rule);
    assert_null(ev.details_json);
    assert_string_equal(ev.type, "");
}

#define TYPE_RULE    "must be a string of 1 to 32 characters of a-z 0-9 _"
#define DETAILS_RULE "must be a JSON object of at most 4096 bytes"

static void test_decodes_tamper_event(void **state)
{
    (void)state;
    em_device_event_t ev = decode_ok(
        "{\"type\":\"tamper\",\"details\":{\"sensor\":\"lid\",\"open\":true},\"timestamp\":"
        "1700000000000}");
    assert_string_equal(ev.type, "tamper");
    assert_string_equal(ev.details_json, "{\"sensor\":\"lid\",\"open\":true}");
    assert_int_equal(ev.timestamp_ms, 1700000000000LL);
    em_device_event_cleanup(&ev);
    assert_null(ev.details_json);
}

static void test_type_alone_is_enough(void **state)
{
    (void)state;
    em_device_event_t ev = decode_ok("{\"type\":\"reboot\"}");
    assert_string_equal(ev.type, "reboot");
    assert_null(ev.details_json);
    assert_int_equal(ev.timestamp_ms, 0);
    em_device_event_cleanup(&ev);
}

static void test_empty_details_cost_nothing(void **state)
{
    (void)state;
    em_device_event_t ev = decode_ok("{\"type\":\"x\",\"details\":{}}");
    assert_null(ev.details_json);
    em_device_event_cleanup(&ev);
}

static void test_rfc3339_timestamp_is_accepted(void **state)
{
    (void)state;
    em_device_event_t ev = decode_ok("{\"type\":\"x\",\"timestamp\":\"2026-11-22T10:00:00Z\"}");
    assert_int_equal(ev.timestamp_ms, 1795341600000LL);
    em_device_event_cleanup(&ev);
}

static void test_type_is_required(void **state)
{
    (void)state;
    assert_refused("{\"details\":{\"a\":1}}", EM_ERR_VALIDATION, "type", "is required");
}

static void test_type_boundaries(void **state)
{
    (void)state;
    em_device_event_t ev = decode_ok("{\"type\":\"a\"}");
    em_device_event_cleanup(&ev);
    ev = decode_ok("{\"type\":\"abcdefghijklmnopqrstuvwxyz_01234\"}"); /* 32 */
    assert_string_equal(ev.type, "abcdefghijklmnopqrstuvwxyz_01234");
    em_device_event_cleanup(&ev);
    assert_refused("{\"type\":\"abcdefghijklmnopqrstuvwxyz_012345\"}", EM_ERR_VALIDATION, "type",
                   TYPE_RULE); /* 33 */
    assert_refused("{\"type\":\"\"}", EM_ERR_VALIDATION, "type", TYPE_RULE);
}

static void test_type_characters(void **state)
{
    (void)state;
    assert_refused("{\"type\":\"Tamper\"}", EM_ERR_VALIDATION, "type", TYPE_RULE);
    assert_refused("{\"type\":\"tam-per\"}", EM_ERR_VALIDATION, "type", TYPE_RULE);
    assert_refused("{\"type\":\"tam per\"}", EM_ERR_VALIDATION, "type", TYPE_RULE);
    assert_refused("{\"type\":\"t\\u00e9\"}", EM_ERR_VALIDATION, "type", TYPE_RULE);
}

static void test_type_of_wrong_type_is_refused(void **state)
{
    (void)state;
    assert_refused("{\"type\":1}", EM_ERR_VALIDATION, "type", TYPE_RULE);
    assert_refused("{\"type\":null}", EM_ERR_VALIDATION, "type", TYPE_RULE);
    assert_refused("{\"type\":[\"tamper\"]}", EM_ERR_VALIDATION, "type", TYPE_RULE);
}

static void test_details_must_be_an_object(void **state)
{
    (void)state;
    assert_refused("{\"type\":\"x\",\"details\":[1]}", EM_ERR_VALIDATION, "details", DETAILS_RULE);
    assert_refused("{\"type\":\"x\",\"details\":\"lid\"}", EM_ERR_VALIDATION, "details",
                   DETAILS_RULE);
    assert_refused("{\"type\":\"x\",\"details\":null}", EM_ERR_VALIDATION, "details", DETAILS_RULE);
}

/* {"type":"x","details":{"k":"xxx"}} whose details print as n bytes. */
static char *details_of_size(size_t n)
{
    size_t fill = n - 8;
    char *s = malloc(fill + 64);
    assert_non_null(s);
    int k = snprintf(s, 64, "{\"type\":\"x\",\"details\":{\"k\":\"");
    memset(s + k, 'x', fill);
    memcpy(s + k + fill, "\"}}", 4);
    return s;
}

static void test_details_size_limit(void **state)
{
    (void)state;
    char *s = details_of_size(EM_EVENT_DETAILS_MAX);
    em_device_event_t ev = decode_ok(s);
    assert_int_equal(strlen(ev.details_json), EM_EVENT_DETAILS_MAX);
    em_device_event_cleanup(&ev);
    free(s);
    s = details_of_size(EM_EVENT_DETAILS_MAX + 1);
    assert_refused(s, EM_ERR_VALIDATION, "details", DETAILS_RULE);
    free(s);
}

static void test_bad_timestamps_are_refused(void **state)
{
    (void)state;
    assert_refused("{\"type\":\"x\",\"timestamp\":-5}", EM_ERR_VALIDATION, "timestamp",
                   "must be an RFC 3339 string or an integer");
    assert_refused("{\"type\":\"x\",\"timestamp\":1.25}", EM_ERR_VALIDATION, "timestamp",
                   "must be an RFC 3339 string or an integer");
    assert_refused("{\"type\":\"x\",\"timestamp\":\"2026-13-01T00:00:00Z\"}", EM_ERR_VALIDATION,
                   "timestamp", "month");
}

static void test_failure_after_details_frees_them(void **state)
{
    (void)state;
    assert_refused("{\"details\":{\"a\":1},\"type\":\"BAD\"}", EM_ERR_VALIDATION, "type",
                   TYPE_RULE);
    assert_refused("{\"type\":\"x\",\"details\":{\"a\":1},\"details\":{\"b\":1}}",
                   EM_ERR_VALIDATION, "details", "more than once");
}

static void test_unknown_keys_are_ignored(void **state)
{
    (void)state;
    em_device_event_t ev = decode_ok("{\"type\":\"x\",\"severity\":\"high\",\"n\":[1,2]}");
    assert_string_equal(ev.type, "x");
    em_device_event_cleanup(&ev);
}

static void test_format_errors(void **state)
{
    (void)state;
    assert_refused("[]", EM_ERR_MESSAGE_FORMAT, "", "must be a JSON object");
    assert_refused("{\"type\":", EM_ERR_MESSAGE_FORMAT, "", "invalid JSON");
    assert_refused("{\"type\":\"x\",\"details\":{\"a\":{\"b\":{\"c\":{\"d\":{\"e\":{\"f\":{\"g\":"
                   "{}}}}}}}}}",
                   EM_ERR_MESSAGE_FORMAT, "", "nested deeper");
}

static void test_decode_without_output_is_refused(void **state)
{
    (void)state;
    assert_int_equal(em_device_event_decode("{}", 2, NULL, NULL), EM_ERR_INVALID_ARGUMENT);
}

static void test_cleanup_accepts_null(void **state)
{
    (void)state;
    em_device_event_cleanup(NULL);
}

static void test_availability_online_and_offline(void **state)
{
    (void)state;
    bool online = false;
    assert_int_equal(em_availability_decode("online", 6, &online, NULL), EM_OK);
    assert_true(online);
    assert_int_equal(em_availability_decode("offline", 7, &online, NULL), EM_OK);
    assert_false(online);
}

static void test_availability_is_exact(void **state)
{
    (void)state;
    static const char *const bad[] = {"Online", "online ",   " online", "\"online\"", "on",
                                      "",       "offline\n", "OFFLINE", "true"};
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        bool online = true;
        em_error_t err;
        em_error_clear(&err);
        assert_int_equal(em_availability_decode(bad[i], strlen(bad[i]), &online, &err),
                         EM_ERR_VALIDATION);
        assert_string_equal(err.field, "availability");
        assert_string_equal(err.message, "must be exactly online or offline");
        assert_true(online); /* untouched */
    }
}

static void test_availability_reads_only_len_bytes(void **state)
{
    (void)state;
    bool online = false;
    assert_int_equal(em_availability_decode("onlinexyz", 6, &online, NULL), EM_OK);
    assert_true(online);
    assert_int_equal(em_availability_decode(NULL, 0, &online, NULL), EM_ERR_VALIDATION);
    assert_int_equal(em_availability_decode("online", 6, NULL, NULL), EM_ERR_INVALID_ARGUMENT);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_decodes_tamper_event),
        cmocka_unit_test(test_type_alone_is_enough),
        cmocka_unit_test(test_empty_details_cost_nothing),
        cmocka_unit_test(test_rfc3339_timestamp_is_accepted),
        cmocka_unit_test(test_type_is_required),
        cmocka_unit_test(test_type_boundaries),
        cmocka_unit_test(test_type_characters),
        cmocka_unit_test(test_type_of_wrong_type_is_refused),
        cmocka_unit_test(test_details_must_be_an_object),
        cmocka_unit_test(test_details_size_limit),
        cmocka_unit_test(test_bad_timestamps_are_refused),
        cmocka_unit_test(test_failure_after_details_frees_them),
        cmocka_unit_test(test_unknown_keys_are_ignored),
        cmocka_unit_test(test_format_errors),
        cmocka_unit_test(test_decode_without_output_is_refused),
        cmocka_unit_test(test_cleanup_accepts_null),
        cmocka_unit_test(test_availability_online_and_offline),
        cmocka_unit_test(test_availability_is_exact),
        cmocka_unit_test(test_availability_reads_only_len_bytes),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
