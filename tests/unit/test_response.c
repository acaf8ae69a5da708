/*
 * emiot tests - test_response.c: devices' answers to commands.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "emiot/emiot.h"

static em_error_t last_err;

static em_err_t decode(const char *json, em_response_t *r)
{
    em_error_clear(&last_err);
    return em_response_decode(json, strlen(json), r, &last_err);
}

static void assert_refused(const char *json, em_err_t code, const char *field)
{
    em_response_t r;
    em_err_t rc = decode(json, &r);
    if (rc != code)
        fail_msg("%s: expected %s, got %s (%s)", json, em_err_name(code), em_err_name(rc),
                 last_err.message);
    if (field != NULL)
        assert_string_equal(last_err.field, field);
    assert_null(r.data_json);
}

static void decode_reads_every_field(void **state)
{
    (void)state;
    em_response_t r;
    assert_int_equal(decode("{\"requestId\":\"req_42\",\"success\":true,\"message\":\"slept\","
                            "\"timestamp\":1700000000000,\"data\":{ \"battery\" : 80 }}",
                            &r),
                     EM_OK);
    assert_string_equal(r.request_id, "req_42");
    assert_true(r.success);
    assert_string_equal(r.message, "slept");
    assert_int_equal(r.timestamp_ms, INT64_C(1700000000000));
    assert_string_equal(r.data_json, "{\"battery\":80}");
    em_response_cleanup(&r);
}

static void decode_needs_only_request_id_and_success(void **state)
{
    (void)state;
    em_response_t r;
    assert_int_equal(decode("{\"requestId\":\"r1\",\"success\":false}", &r), EM_OK);
    assert_false(r.success);
    assert_string_equal(r.message, "");
    assert_int_equal(r.timestamp_ms, 0);
    assert_null(r.data_json);
    em_response_cleanup(&r);
}

static void decode_treats_null_optional_fields_as_absent(void **state)
{
    (void)state;
    em_response_t r;
    assert_int_equal(decode("{\"requestId\":\"r1\",\"success\":true,\"message\":null,"
                            "\"timestamp\":null,\"data\":null}",
                            &r),
                     EM_OK);
    assert_string_equal(r.message, "");
    assert_int_equal(r.timestamp_ms, 0);
    assert_null(r.data_json);
    em_response_cleanup(&r);
}

static void decode_requires_request_id(void **state)
{
    (void)state;
    assert_refused("{\"success\":true}", EM_ERR_VALIDATION, "requestId");
    assert_refused("{\"requestId\":\"\",\"success\":true}", EM_ERR_VALIDATION, "requestId");
    assert_refused("{\"requestId\":null,\"success\":true}", EM_ERR_VALIDATION, "requestId");
    assert_refused("{\"requestId\":12,\"success\":true}", EM_ERR_VALIDATION, "requestId");
    assert_refused("{\"requestId\":\"a b\",\"success\":true}", EM_ERR_VALIDATION, "requestId");
    assert_refused("{\"requestId\":\"a\\\"b\",\"success\":true}", EM_ERR_VALIDATION, "requestId");
}

static void decode_request_id_length_bounds(void **state)
{
    (void)state;
    char id[70], json[160];
    memset(id, 'Z', 64);
    id[64] = '\0';
    snprintf(json, sizeof(json), "{\"requestId\":\"%s\",\"success\":true}", id);
    em_response_t r;
    assert_int_equal(decode(json, &r), EM_OK);
    assert_string_equal(r.request_id, id);
    em_response_cleanup(&r);
    id[64] = 'Z';
    id[65] = '\0';
    snprintf(json, sizeof(json), "{\"requestId\":\"%s\",\"success\":true}", id);
    assert_refused(json, EM_ERR_VALIDATION, "requestId");
}

static void decode_requires_boolean_success(void **state)
{
    (void)state;
    assert_refused("{\"requestId\":\"r\"}", EM_ERR_VALIDATION, "success");
    assert_string_equal(last_err.message, "is required and must be true or false");
    assert_refused("{\"requestId\":\"r\",\"success\":1}", EM_ERR_VALIDATION, "success");
    assert_refused("{\"requestId\":\"r\",\"success\":\"true\"}", EM_ERR_VALIDATION, "success");
    assert_refused("{\"requestId\":\"r\",\"success\":null}", EM_ERR_VALIDATION, "success");
}

static void decode_message_length_bounds(void **state)
{
    (void)state;
    size_t size = EM_RESPONSE_MESSAGE_MAX + 128;
    char *json = malloc(size);
    assert_non_null(json);
    char *msg = malloc(EM_RESPONSE_MESSAGE_MAX + 2);
    assert_non_null(msg);
    memset(msg, 'm', EM_RESPONSE_MESSAGE_MAX);
    msg[EM_RESPONSE_MESSAGE_MAX] = '\0';
    snprintf(json, size, "{\"requestId\":\"r\",\"success\":true,\"message\":\"%s\"}", msg);
    em_response_t r;
    assert_int_equal(decode(json, &r), EM_OK);
    assert_string_equal(r.message, msg);
    em_response_cleanup(&r);
    msg[EM_RESPONSE_MESSAGE_MAX] = 'm';
    msg[EM_RESPONSE_MESSAGE_MAX + 1] = '\0';
    snprintf(json, size, "{\"requestId\":\"r\",\"success\":true,\"message\":\"%s\"}", msg);
    assert_refused(json, EM_ERR_VALIDATION, "message");
    assert_string_equal(last_err.message, "must be a string of at most 512 bytes");
    free(msg);
    free(json);
}

static void decode_message_must_be_a_string(void **state)
{
    (void)state;
    assert_refused("{\"requestId\":\"r\",\"success\":true,\"message\":42}", EM_ERR_VALIDATION,
                   "message");
    assert_refused("{\"requestId\":\"r\",\"success\":true,\"message\":[\"a\"]}", EM_ERR_VALIDATION,
                   "message");
}

static void decode_message_keeps_utf8_and_escapes(void **state)
{
    (void)state;
    em_response_t r;
    assert_int_equal(decode("{\"requestId\":\"r\",\"success\":false,"
                            "\"message\":\"caf\\u00e9 \\\"hot\\\"\\nline\"}",
                            &r),
                     EM_OK);
    assert_string_equal(r.message, "caf\xc3\xa9 \"hot\"\nline");
    em_response_cleanup(&r);
}

static void decode_timestamp_accepts_number_or_rfc3339(void **state)
{
    (void)state;
    em_response_t r;
    assert_int_equal(
        decode("{\"requestId\":\"r\",\"success\":true,\"timestamp\":\"2023-11-14T22:13:20Z\"}", &r),
        EM_OK);
    assert_int_equal(r.timestamp_ms, INT64_C(1700000000000));
    em_response_cleanup(&r);
    assert_int_equal(decode("{\"requestId\":\"r\",\"success\":true,\"timestamp\":5}", &r), EM_OK);
    assert_int_equal(r.timestamp_ms, 5);
    em_response_cleanup(&r);
}

static void decode_refuses_bad_timestamps(void **state)
{
    (void)state;
    assert_refused("{\"requestId\":\"r\",\"success\":true,\"timestamp\":-1}", EM_ERR_VALIDATION,
                   "timestamp");
    assert_refused("{\"requestId\":\"r\",\"success\":true,\"timestamp\":1.5}", EM_ERR_VALIDATION,
                   "timestamp");
    assert_refused("{\"requestId\":\"r\",\"success\":true,\"timestamp\":\"yesterday\"}",
                   EM_ERR_VALIDATION, "timestamp");
    assert_refused("{\"requestId\":\"r\",\"success\":true,\"timestamp\":true}", EM_ERR_VALIDATION,
                   "timestamp");
}

static void decode_data_must_be_an_object(void **state)
{
    (void)state;
    assert_refused("{\"requestId\":\"r\",\"success\":true,\"data\":[1]}", EM_ERR_VALIDATION,
                   "data");
    assert_refused("{\"requestId\":\"r\",\"success\":true,\"data\":\"{}\"}", EM_ERR_VALIDATION,
                   "data");
}

static void decode_refuses_duplicate_keys(void **state)
{
    (void)state;
    assert_refused("{\"requestId\":\"a\",\"requestId\":\"b\",\"success\":true}", EM_ERR_VALIDATION,
                   "requestId");
    assert_refused("{\"requestId\":\"a\",\"success\":false,\"success\":true}", EM_ERR_VALIDATION,
                   "success");
    assert_refused("{\"requestId\":\"a\",\"success\":true,\"data\":{},\"data\":{\"x\":1}}",
                   EM_ERR_VALIDATION, "data");
}

static void decode_ignores_unknown_keys(void **state)
{
    (void)state;
    em_response_t r;
    assert_int_equal(decode("{\"requestId\":\"r\",\"success\":true,\"deviceId\":\"d1\","
                            "\"extra\":{\"a\":[1,2]}}",
                            &r),
                     EM_OK);
    em_response_cleanup(&r);
}

static void decode_refuses_malformed_messages(void **state)
{
    (void)state;
    assert_refused("", EM_ERR_MESSAGE_FORMAT, NULL);
    assert_refused("[]", EM_ERR_MESSAGE_FORMAT, NULL);
    assert_refused("true", EM_ERR_MESSAGE_FORMAT, NULL);
    assert_refused("{\"requestId\":\"r\",\"success\":true", EM_ERR_MESSAGE_FORMAT, NULL);
    assert_refused("{\"requestId\":\"r\",\"success\":true}}", EM_ERR_MESSAGE_FORMAT, NULL);
    assert_refused("{\"requestId\":\"r\",\"success\":true,\"data\":[[[[[[[[[[]]]]]]]]]]}",
                   EM_ERR_MESSAGE_FORMAT, NULL);
    em_response_t r;
    assert_int_equal(em_response_decode("{}", 2, NULL, NULL), EM_ERR_INVALID_ARGUMENT);
    assert_int_equal(em_response_decode(NULL, 0, &r, NULL), EM_ERR_MESSAGE_FORMAT);
}

static void decode_failure_leaves_nothing_to_free(void **state)
{
    (void)state;
    /* A failure leaves the struct empty, whatever it held before and
     * whatever was read before the broken field. */
    em_response_t r;
    memset(&r, 0x5a, sizeof(r));
    assert_int_equal(decode("{\"requestId\":\"r\",\"success\":true,\"data\":{\"a\":1},"
                            "\"timestamp\":\"no\"}",
                            &r),
                     EM_ERR_VALIDATION);
    assert_null(r.data_json);
    assert_string_equal(r.request_id, "");
    em_response_cleanup(&r);
}

static void encode_writes_exact_json(void **state)
{
    (void)state;
    char data[] = "{\"battery\":80}";
    em_response_t r = {.success = true, .timestamp_ms = INT64_C(1700000000000), .data_json = data};
    memcpy(r.request_id, "req_1", 6);
    memcpy(r.message, "ok \"done\"", 10);
    char buf[256];
    size_t n = 0;
    assert_int_equal(em_response_encode(&r, buf, sizeof(buf), &n), EM_OK);
    const char *want = "{\"requestId\":\"req_1\",\"success\":true,\"message\":\"ok \\\"done\\\"\","
                       "\"timestamp\":1700000000000,\"data\":{\"battery\":80}}";
    assert_string_equal(buf, want);
    assert_int_equal(n, strlen(want));
}

static void encode_omits_absent_timestamp_and_data(void **state)
{
    (void)state;
    em_response_t r = {.success = false};
    memcpy(r.request_id, "r", 2);
    char buf[128];
    assert_int_equal(em_response_encode(&r, buf, sizeof(buf), NULL), EM_OK);
    assert_string_equal(buf, "{\"requestId\":\"r\",\"success\":false,\"message\":\"\"}");
}

static void encode_escapes_control_characters_in_message(void **state)
{
    (void)state;
    em_response_t r = {.success = false};
    memcpy(r.request_id, "r", 2);
    memcpy(r.message, "a\tb\nc\x01\\", 8);
    char buf[128];
    assert_int_equal(em_response_encode(&r, buf, sizeof(buf), NULL), EM_OK);
    assert_string_equal(
        buf, "{\"requestId\":\"r\",\"success\":false,\"message\":\"a\\tb\\nc\\u0001\\\\\"}");
}

static void encode_reports_buffer_too_small_at_every_size(void **state)
{
    (void)state;
    char data[] = "{\"x\":[1,2,3]}";
    em_response_t r = {.success = true, .timestamp_ms = 77, .data_json = data};
    memcpy(r.request_id, "req_abc", 8);
    memcpy(r.message, "fine", 5);
    char full[256];
    size_t len;
    assert_int_equal(em_response_encode(&r, full, sizeof(full), &len), EM_OK);
    for (size_t size = 0; size <= len; size++) {
        char *buf = malloc(size > 0 ? size : 1);
        assert_non_null(buf);
        assert_int_equal(em_response_encode(&r, buf, size, NULL), EM_ERR_BUFFER_TOO_SMALL);
        free(buf);
    }
    char *buf = malloc(len + 1);
    assert_non_null(buf);
    assert_int_equal(em_response_encode(&r, buf, len + 1, NULL), EM_OK);
    assert_string_equal(buf, full);
    free(buf);
}

static void encode_refuses_invalid_request_id(void **state)
{
    (void)state;
    em_response_t r = {.success = true};
    char buf[128];
    assert_int_equal(em_response_encode(&r, buf, sizeof(buf), NULL), EM_ERR_INVALID_ARGUMENT);
    memcpy(r.request_id, "a\"b", 4);
    assert_int_equal(em_response_encode(&r, buf, sizeof(buf), NULL), EM_ERR_INVALID_ARGUMENT);
    assert_int_equal(em_response_encode(NULL, buf, sizeof(buf), NULL), EM_ERR_INVALID_ARGUMENT);
}

static void response_round_trips(void **state)
{
    (void)state;
    const char *in = "{\"requestId\":\"req_9\",\"success\":false,\"message\":\"low battery "
                     "\xe2\x9a\xa1\",\"timestamp\":123456,\"data\":{\"level\":3,\"ok\":false}}";
    em_response_t r;
    assert_int_equal(decode(in, &r), EM_OK);
    char buf[512];
    size_t n;
    assert_int_equal(em_response_encode(&r, buf, sizeof(buf), &n), EM_OK);
    assert_string_equal(buf, in);
    em_response_t again;
    assert_int_equal(em_response_decode(buf, n, &again, NULL), EM_OK);
    assert_string_equal(again.request_id, r.request_id);
    assert_int_equal(again.success, r.success);
    assert_string_equal(again.message, r.message);
    assert_int_equal(again.timestamp_ms, r.timestamp_ms);
    assert_string_equal(again.data_json, r.data_json);
    em_response_cleanup(&r);
    em_response_cleanup(&again);
}

static void cleanup_accepts_null_and_repeats(void **state)
{
    (void)state;
    em_response_cleanup(NULL);
    em_response_t r;
    assert_int_equal(decode("{\"requestId\":\"r\",\"success\":true,\"data\":{\"a\":1}}", &r),
                     EM_OK);
    em_response_cleanup(&r);
    assert_null(r.data_json);
    em_response_cleanup(&r);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(decode_reads_every_field),
        cmocka_unit_test(decode_needs_only_request_id_and_success),
        cmocka_unit_test(decode_treats_null_optional_fields_as_absent),
        cmocka_unit_test(decode_requires_request_id),
        cmocka_unit_test(decode_request_id_length_bounds),
        cmocka_unit_test(decode_requires_boolean_success),
        cmocka_unit_test(decode_message_length_bounds),
        cmocka_unit_test(decode_message_must_be_a_string),
        cmocka_unit_test(decode_message_keeps_utf8_and_escapes),
        cmocka_unit_test(decode_timestamp_accepts_number_or_rfc3339),
        cmocka_unit_test(decode_refuses_bad_timestamps),
        cmocka_unit_test(decode_data_must_be_an_object),
        cmocka_unit_test(decode_refuses_duplicate_keys),
        cmocka_unit_test(decode_ignores_unknown_keys),
        cmocka_unit_test(decode_refuses_malformed_messages),
        cmocka_unit_test(decode_failure_leaves_nothing_to_free),
        cmocka_unit_test(encode_writes_exact_json),
        cmocka_unit_test(encode_omits_absent_timestamp_and_data),
        cmocka_unit_test(encode_escapes_control_characters_in_message),
        cmocka_unit_test(encode_reports_buffer_too_small_at_every_size),
        cmocka_unit_test(encode_refuses_invalid_request_id),
        cmocka_unit_test(response_round_trips),
        cmocka_unit_test(cleanup_accepts_null_and_repeats),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
