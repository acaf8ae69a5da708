/*
 * Tests for src/model/status.c: status decoding, encoding, copying.
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
#include "model/status_internal.h"

/* energy-manager-iot's example status message (DESIGN.md, "Protocol"). */
static const char EXAMPLE[] =
    "{\"batteryLevel\":75,\"powerMode\":\"normal\",\"connectionStatus\":\"online\","
    "\"firmwareVersion\":\"1.2.3\",\"signalStrength\":-67,\"errors\":[],\"additionalInfo\":{}}";

static em_status_t decode_ok(const char *s)
{
    em_status_t st;
    em_error_t err;
    em_error_clear(&err);
    if (em_status_decode(s, strlen(s), &st, &err) != EM_OK)
        fail_msg("'%s' refused: %s: %s", s, err.field, err.message);
    return st;
}

/* Asserts that s is refused with code, naming field, with a message that
 * contains rule; and that the output holds nothing. */
static void assert_refused(const char *s, em_err_t code, const char *field, const char *rule)
{
    em_status_t st;
    memset(&st, 0xA5, sizeof(st));
    em_error_t err;
    em_error_clear(&err);
    em_err_t rc = em_status_decode(s, strlen(s), &st, &err);
    if (rc != code)
        fail_msg("'%s': got %d (%s: %s), want %d", s, rc, err.field, err.message, code);
    assert_int_equal(err.code, code);
    assert_string_equal(err.field, field);
    if (strstr(err.message, rule) == NULL)
        fail_msg("'%s': message '%s' lacks '%s'", s, err.message, rule);
    assert_int_equal(st.has, 0);
    assert_null(st.errors_json);
    assert_null(st.extra_json);
}

/* Decodes {"key":value}. */
static void refuse_value(const char *key, const char *value, const char *rule)
{
    char buf[512];
    snprintf(buf, sizeof(buf), "{\"%s\":%s}", key, value);
    assert_refused(buf, EM_ERR_VALIDATION, key, rule);
}

static em_status_t accept_value(const char *key, const char *value)
{
    char buf[512];
    snprintf(buf, sizeof(buf), "{\"%s\":%s}", key, value);
    return decode_ok(buf);
}

#define BATTERY_RULE "must be an integer between 0 and 100"
#define SIGNAL_RULE  "must be an integer between -150 and 0"

static void test_decodes_design_example(void **state)
{
    (void)state;
    em_status_t st = decode_ok(EXAMPLE);
    assert_int_equal(st.has, EM_STATUS_HAS_BATTERY | EM_STATUS_HAS_POWER_MODE |
                                 EM_STATUS_HAS_CONNECTION | EM_STATUS_HAS_FIRMWARE |
                                 EM_STATUS_HAS_SIGNAL | EM_STATUS_HAS_ERRORS | EM_STATUS_HAS_EXTRA);
    assert_int_equal(st.battery_level, 75);
    assert_int_equal(st.power_mode, EM_POWER_NORMAL);
    assert_int_equal(st.connection, EM_CONN_ONLINE);
    assert_string_equal(st.firmware_version, "1.2.3");
    assert_int_equal(st.signal_strength, -67);
    assert_null(st.errors_json); /* empty list costs nothing */
    assert_null(st.extra_json);
    assert_int_equal(st.last_seen_ms, 0);
    em_status_cleanup(&st);
}

static void test_empty_object_decodes_to_nothing(void **state)
{
    (void)state;
    em_status_t st = decode_ok("{}");
    assert_int_equal(st.has, 0);
    em_status_cleanup(&st);
}

static void test_unknown_keys_are_ignored(void **state)
{
    (void)state;
    em_status_t st =
        decode_ok("{\"batteryLevel\":5,\"vendor\":{\"x\":[1]},\"b\":1,\"lastSeen\":1}");
    assert_int_equal(st.has, EM_STATUS_HAS_BATTERY);
    assert_int_equal(st.battery_level, 5);
    assert_int_equal(st.last_seen_ms, 0); /* stamped by the manager, never decoded */
    em_status_cleanup(&st);
}

static void test_payload_must_be_an_object(void **state)
{
    (void)state;
    assert_refused("[]", EM_ERR_MESSAGE_FORMAT, "", "must be a JSON object");
    assert_refused("75", EM_ERR_MESSAGE_FORMAT, "", "must be a JSON object");
    assert_refused("\"online\"", EM_ERR_MESSAGE_FORMAT, "", "must be a JSON object");
    assert_refused("null", EM_ERR_MESSAGE_FORMAT, "", "must be a JSON object");
}

static void test_malformed_json_is_a_format_error(void **state)
{
    (void)state;
    assert_refused("{\"batteryLevel\":75", EM_ERR_MESSAGE_FORMAT, "", "invalid JSON");
    assert_refused("{batteryLevel:75}", EM_ERR_MESSAGE_FORMAT, "", "invalid JSON");
    assert_refused("", EM_ERR_MESSAGE_FORMAT, "", "empty payload");
}

static void test_too_deep_is_a_format_error(void **state)
{
    (void)state;
    assert_refused(
        "{\"additionalInfo\":{\"a\":{\"b\":{\"c\":{\"d\":{\"e\":{\"f\":{\"g\":{}}}}}}}}}",
        EM_ERR_MESSAGE_FORMAT, "", "nested deeper");
}

static void test_too_big_is_a_format_error(void **state)
{
    (void)state;
    size_t n = EM_PAYLOAD_MAX + 1;
    char *s = malloc(n + 1);
    assert_non_null(s);
    memset(s, ' ', n);
    s[0] = '{';
    s[n - 1] = '}';
    s[n] = '\0';
    assert_refused(s, EM_ERR_MESSAGE_FORMAT, "", "payload larger than");
    free(s);
}

static void test_battery_boundaries_are_accepted(void **state)
{
    (void)state;
    em_status_t st = accept_value("batteryLevel", "0");
    assert_int_equal(st.battery_level, 0);
    st = accept_value("batteryLevel", "100");
    assert_int_equal(st.battery_level, 100);
    st = accept_value("batteryLevel", "100.0"); /* an integer, however spelled */
    assert_int_equal(st.battery_level, 100);
    st = accept_value("batteryLevel", "1e1");
    assert_int_equal(st.battery_level, 10);
}

static void test_battery_outside_range_is_refused(void **state)
{
    (void)state;
    refuse_value("batteryLevel", "-1", BATTERY_RULE);
    refuse_value("batteryLevel", "101", BATTERY_RULE);
    refuse_value("batteryLevel", "1e300", BATTERY_RULE);
    refuse_value("batteryLevel", "1e999", BATTERY_RULE);
}

static void test_battery_non_integer_is_refused(void **state)
{
    (void)state;
    refuse_value("batteryLevel", "50.5", BATTERY_RULE);
    refuse_value("batteryLevel", "99.999", BATTERY_RULE);
}

static void test_battery_of_wrong_type_is_refused(void **state)
{
    (void)state;
    refuse_value("batteryLevel", "\"75\"", BATTERY_RULE);
    refuse_value("batteryLevel", "true", BATTERY_RULE);
    refuse_value("batteryLevel", "null", BATTERY_RULE);
    refuse_value("batteryLevel", "[75]", BATTERY_RULE);
    refuse_value("batteryLevel", "{}", BATTERY_RULE);
}

static void test_every_power_mode_is_accepted(void **state)
{
    (void)state;
    static const struct {
        const char *json;
        em_power_mode_t mode;
    } cases[] = {{"\"normal\"", EM_POWER_NORMAL},
                 {"\"low_power\"", EM_POWER_LOW_POWER},
                 {"\"sleep\"", EM_POWER_SLEEP},
                 {"\"critical\"", EM_POWER_CRITICAL}};
    for (size_t i = 0; i < 4; i++) {
        em_status_t st = accept_value("powerMode", cases[i].json);
        assert_int_equal(st.power_mode, cases[i].mode);
        assert_int_equal(st.has, EM_STATUS_HAS_POWER_MODE);
    }
}

static void test_unknown_power_mode_is_refused(void **state)
{
    (void)state;
    const char *rule = "must be one of normal, low_power, sleep, critical";
    refuse_value("powerMode", "\"Normal\"", rule);
    refuse_value("powerMode", "\"turbo\"", rule);
    refuse_value("powerMode", "\"\"", rule);
    refuse_value("powerMode", "\"normal \"", rule);
    refuse_value("powerMode", "1", rule);
    refuse_value("powerMode", "null", rule);
}

static void test_every_connection_status_is_accepted(void **state)
{
    (void)state;
    em_status_t st = accept_value("connectionStatus", "\"online\"");
    assert_int_equal(st.connection, EM_CONN_ONLINE);
    st = accept_value("connectionStatus", "\"offline\"");
    assert_int_equal(st.connection, EM_CONN_OFFLINE);
    st = accept_value("connectionStatus", "\"intermittent\"");
    assert_int_equal(st.connection, EM_CONN_INTERMITTENT);
}

static void test_unknown_connection_status_is_refused(void **state)
{
    (void)state;
    const char *rule = "must be one of online, offline, intermittent";
    refuse_value("connectionStatus", "\"ONLINE\"", rule);
    refuse_value("connectionStatus", "\"connected\"", rule);
    refuse_value("connectionStatus", "true", rule);
}

static void test_firmware_version_boundaries(void **state)
{
    (void)state;
    em_status_t st = accept_value("firmwareVersion", "\"1\"");
    assert_string_equal(st.firmware_version, "1");
    /* 31 characters, every allowed class. */
    st = accept_value("firmwareVersion", "\"0123456789ABCXYZabcxyz.+_-1234\"");
    assert_string_equal(st.firmware_version, "0123456789ABCXYZabcxyz.+_-1234");
    assert_int_equal(strlen(st.firmware_version), 30);
    st = accept_value("firmwareVersion", "\"1234567890123456789012345678901\"");
    assert_int_equal(strlen(st.firmware_version), EM_FIRMWARE_VERSION_MAX);
}

static void test_firmware_version_refusals(void **state)
{
    (void)state;
    const char *rule = "must be a string of 1 to 31 characters";
    refuse_value("firmwareVersion", "\"\"", rule);
    refuse_value("firmwareVersion", "\"12345678901234567890123456789012\"", rule); /* 32 */
    refuse_value("firmwareVersion", "\"1.2 beta\"", rule);
    refuse_value("firmwareVersion", "\"1.2/3\"", rule);
    refuse_value("firmwareVersion", "\"1.2\\n\"", rule);
    refuse_value("firmwareVersion", "\"v\xc3\xa9\"", rule);
    refuse_value("firmwareVersion", "1.2", rule);
    refuse_value("firmwareVersion", "null", rule);
}

static void test_firmware_version_with_nul_escape_is_refused(void **state)
{
    (void)state;
    assert_refused("{\"firmwareVersion\":\"1.2\\u0000; rm -rf\"}", EM_ERR_MESSAGE_FORMAT, "",
                   "\\u0000");
}

static void test_signal_strength_boundaries(void **state)
{
    (void)state;
    em_status_t st = accept_value("signalStrength", "-150");
    assert_int_equal(st.signal_strength, -150);
    st = accept_value("signalStrength", "0");
    assert_int_equal(st.signal_strength, 0);
    st = accept_value("signalStrength", "-0");
    assert_int_equal(st.signal_strength, 0);
}

static void test_signal_strength_refusals(void **state)
{
    (void)state;
    refuse_value("signalStrength", "-151", SIGNAL_RULE);
    refuse_value("signalStrength", "1", SIGNAL_RULE);
    refuse_value("signalStrength", "-67.5", SIGNAL_RULE);
    refuse_value("signalStrength", "\"-67\"", SIGNAL_RULE);
    refuse_value("signalStrength", "false", SIGNAL_RULE);
}

static void test_errors_are_kept_as_compact_json(void **state)
{
    (void)state;
    em_status_t st = decode_ok("{\"errors\": [ \"sensor fault\" , \"low \\\"voltage\\\"\" ]}");
    assert_true(st.has & EM_STATUS_HAS_ERRORS);
    assert_string_equal(st.errors_json, "[\"sensor fault\",\"low \\\"voltage\\\"\"]");
    em_status_cleanup(&st);
    assert_null(st.errors_json);
}

static void test_sixteen_errors_of_256_bytes_are_accepted(void **state)
{
    (void)state;
    char entry[EM_STATUS_ERROR_LEN_MAX + 1];
    memset(entry, 'e', EM_STATUS_ERROR_LEN_MAX);
    entry[EM_STATUS_ERROR_LEN_MAX] = '\0';
    char buf[8192];
    size_t n = (size_t)snprintf(buf, sizeof(buf), "{\"errors\":[");
    for (int i = 0; i < EM_STATUS_ERRORS_MAX; i++)
        n += (size_t)snprintf(buf + n, sizeof(buf) - n, "%s\"%s\"", i ? "," : "", entry);
    snprintf(buf + n, sizeof(buf) - n, "]}");
    em_status_t st = decode_ok(buf);
    assert_non_null(st.errors_json);
    assert_int_equal(strlen(st.errors_json), 2 + 16 * 258 + 15);
    em_status_cleanup(&st);
}

static void test_seventeen_errors_are_refused(void **state)
{
    (void)state;
    refuse_value("errors",
                 "[\"1\",\"2\",\"3\",\"4\",\"5\",\"6\",\"7\",\"8\",\"9\",\"10\",\"11\",\"12\","
                 "\"13\",\"14\",\"15\",\"16\",\"17\"]",
                 "at most 16 strings");
}

static void test_error_of_257_bytes_is_refused(void **state)
{
    (void)state;
    char entry[EM_STATUS_ERROR_LEN_MAX + 2];
    memset(entry, 'e', EM_STATUS_ERROR_LEN_MAX + 1);
    entry[EM_STATUS_ERROR_LEN_MAX + 1] = '\0';
    char value[400];
    snprintf(value, sizeof(value), "[\"%s\"]", entry);
    refuse_value("errors", value, "at most 256 bytes");
}

static void test_error_length_counts_bytes_not_characters(void **state)
{
    (void)state;
    /* 128 two-byte characters are 256 bytes: accepted; one more is not. */
    char value[1024];
    size_t n = 0;
    value[n++] = '[';
    value[n++] = '"';
    for (int i = 0; i < 128; i++) {
        value[n++] = '\xc3';
        value[n++] = '\xa9';
    }
    value[n++] = '"';
    value[n++] = ']';
    value[n] = '\0';
    em_status_t st = accept_value("errors", value);
    em_status_cleanup(&st);
    memmove(value + 4, value + 2, n - 1);
    value[2] = '\xc3';
    value[3] = '\xa9';
    refuse_value("errors", value, "at most 256 bytes");
}

static void test_errors_of_wrong_type_are_refused(void **state)
{
    (void)state;
    const char *rule = "must be an array";
    refuse_value("errors", "\"fault\"", rule);
    refuse_value("errors", "{}", rule);
    refuse_value("errors", "[1]", rule);
    refuse_value("errors", "[\"ok\",null]", rule);
    refuse_value("errors", "[[\"nested\"]]", rule);
    refuse_value("errors", "null", rule);
}

static void test_additional_info_is_kept_as_compact_json(void **state)
{
    (void)state;
    em_status_t st =
        decode_ok("{\"additionalInfo\": { \"room\" : \"B12\", \"sensors\": [1, 2.5, true] }}");
    assert_true(st.has & EM_STATUS_HAS_EXTRA);
    assert_string_equal(st.extra_json, "{\"room\":\"B12\",\"sensors\":[1,2.5,true]}");
    em_status_cleanup(&st);
}

/* {"additionalInfo":{"k":"xxx..."}} whose additionalInfo prints as n bytes. */
static char *extra_of_size(size_t n)
{
    size_t fill = n - 8; /* {"k":""} */
    char *s = malloc(fill + 64);
    assert_non_null(s);
    int k = snprintf(s, 64, "{\"additionalInfo\":{\"k\":\"");
    memset(s + k, 'x', fill);
    memcpy(s + k + fill, "\"}}", 4);
    return s;
}

static void test_additional_info_of_max_size_is_accepted(void **state)
{
    (void)state;
    char *s = extra_of_size(EM_STATUS_EXTRA_MAX);
    em_status_t st = decode_ok(s);
    assert_int_equal(strlen(st.extra_json), EM_STATUS_EXTRA_MAX);
    em_status_cleanup(&st);
    free(s);
}

static void test_additional_info_over_max_size_is_refused(void **state)
{
    (void)state;
    char *s = extra_of_size(EM_STATUS_EXTRA_MAX + 1);
    assert_refused(s, EM_ERR_VALIDATION, "additionalInfo", "at most 4096 bytes");
    free(s);
}

static void test_additional_info_of_wrong_type_is_refused(void **state)
{
    (void)state;
    const char *rule = "must be a JSON object";
    refuse_value("additionalInfo", "[]", rule);
    refuse_value("additionalInfo", "\"x\"", rule);
    refuse_value("additionalInfo", "null", rule);
    refuse_value("additionalInfo", "7", rule);
}

static void test_duplicate_keys_are_refused(void **state)
{
    (void)state;
    assert_refused("{\"batteryLevel\":5,\"batteryLevel\":7}", EM_ERR_VALIDATION, "batteryLevel",
                   "more than once");
    assert_refused("{\"errors\":[\"a\"],\"errors\":[\"b\"]}", EM_ERR_VALIDATION, "errors",
                   "more than once");
}

static void test_failure_after_allocation_leaves_nothing(void **state)
{
    (void)state;
    /* errors and additionalInfo are allocated before the bad battery level
     * is seen; the decoder must release them (ASan would see the leak). */
    assert_refused("{\"errors\":[\"a\"],\"additionalInfo\":{\"b\":1},\"batteryLevel\":500}",
                   EM_ERR_VALIDATION, "batteryLevel", BATTERY_RULE);
}

static void test_decode_without_output_is_refused(void **state)
{
    (void)state;
    em_error_t err;
    assert_int_equal(em_status_decode(EXAMPLE, strlen(EXAMPLE), NULL, &err),
                     EM_ERR_INVALID_ARGUMENT);
}

static void test_decode_without_error_details_still_fails(void **state)
{
    (void)state;
    em_status_t st;
    assert_int_equal(em_status_decode("{\"batteryLevel\":-1}", 19, &st, NULL), EM_ERR_VALIDATION);
    assert_int_equal(em_status_decode("{", 1, &st, NULL), EM_ERR_MESSAGE_FORMAT);
}

static void test_encode_writes_present_fields(void **state)
{
    (void)state;
    em_status_t st = decode_ok(EXAMPLE);
    char buf[512];
    size_t n = 0;
    assert_int_equal(em_status_encode(&st, buf, sizeof(buf), &n), EM_OK);
    assert_string_equal(buf, EXAMPLE);
    assert_int_equal(n, strlen(EXAMPLE));
    em_status_cleanup(&st);
}

static void test_encode_of_nothing_is_an_empty_object(void **state)
{
    (void)state;
    em_status_t st;
    memset(&st, 0, sizeof(st));
    char buf[8];
    size_t n = 0;
    assert_int_equal(em_status_encode(&st, buf, sizeof(buf), &n), EM_OK);
    assert_string_equal(buf, "{}");
    assert_int_equal(n, 2);
}

static void test_encode_writes_last_seen_as_iso(void **state)
{
    (void)state;
    em_status_t st;
    memset(&st, 0, sizeof(st));
    st.has = EM_STATUS_HAS_BATTERY | EM_STATUS_HAS_LAST_SEEN;
    st.battery_level = 9;
    st.last_seen_ms = 1795341600123LL;
    char buf[128];
    assert_int_equal(em_status_encode(&st, buf, sizeof(buf), NULL), EM_OK);
    assert_string_equal(buf, "{\"batteryLevel\":9,\"lastSeen\":\"2026-11-22T10:00:00.123Z\"}");
}

static void test_encode_into_small_buffer_reports_it(void **state)
{
    (void)state;
    em_status_t st = decode_ok(EXAMPLE);
    size_t need = strlen(EXAMPLE) + 1;
    char *buf = malloc(need);
    assert_non_null(buf);
    for (size_t size = 0; size < need; size++)
        assert_int_equal(em_status_encode(&st, buf, size, NULL), EM_ERR_BUFFER_TOO_SMALL);
    assert_int_equal(em_status_encode(&st, buf, need, NULL), EM_OK);
    free(buf);
    em_status_cleanup(&st);
}

static void test_encode_decode_round_trip_keeps_everything(void **state)
{
    (void)state;
    const char *s = "{\"batteryLevel\":0,\"powerMode\":\"critical\",\"connectionStatus\":"
                    "\"intermittent\",\"firmwareVersion\":\"2.0.0-rc.1+b7\",\"signalStrength\":"
                    "-150,\"errors\":[\"e1\",\"tab\\there\"],\"additionalInfo\":{\"a\":{\"b\":[1,"
                    "\"\\u00e9\"]}}}";
    em_status_t a = decode_ok(s);
    char buf[1024];
    assert_int_equal(em_status_encode(&a, buf, sizeof(buf), NULL), EM_OK);
    em_status_t b = decode_ok(buf);
    assert_int_equal(a.has, b.has);
    assert_int_equal(a.battery_level, b.battery_level);
    assert_int_equal(a.power_mode, b.power_mode);
    assert_int_equal(a.connection, b.connection);
    assert_string_equal(a.firmware_version, b.firmware_version);
    assert_int_equal(a.signal_strength, b.signal_strength);
    assert_string_equal(a.errors_json, b.errors_json);
    assert_string_equal(a.extra_json, b.extra_json);
    em_status_cleanup(&a);
    em_status_cleanup(&b);
}

static void test_copy_is_deep(void **state)
{
    (void)state;
    em_status_t a =
        decode_ok("{\"batteryLevel\":3,\"errors\":[\"x\"],\"additionalInfo\":{\"y\":1}}");
    em_status_t b;
    assert_int_equal(em_status_copy(&b, &a), EM_OK);
    assert_int_equal(b.battery_level, 3);
    assert_ptr_not_equal(a.errors_json, b.errors_json);
    assert_ptr_not_equal(a.extra_json, b.extra_json);
    em_status_cleanup(&a);
    assert_string_equal(b.errors_json, "[\"x\"]");
    assert_string_equal(b.extra_json, "{\"y\":1}");
    em_status_cleanup(&b);
}

static void test_copy_refuses_null(void **state)
{
    (void)state;
    em_status_t st;
    memset(&st, 0, sizeof(st));
    assert_int_equal(em_status_copy(NULL, &st), EM_ERR_INVALID_ARGUMENT);
    assert_int_equal(em_status_copy(&st, NULL), EM_ERR_INVALID_ARGUMENT);
}

static void test_cleanup_accepts_null(void **state)
{
    (void)state;
    em_status_cleanup(NULL);
}

static void test_names(void **state)
{
    (void)state;
    assert_string_equal(em_power_mode_name(EM_POWER_NORMAL), "normal");
    assert_string_equal(em_power_mode_name(EM_POWER_LOW_POWER), "low_power");
    assert_string_equal(em_power_mode_name(EM_POWER_SLEEP), "sleep");
    assert_string_equal(em_power_mode_name(EM_POWER_CRITICAL), "critical");
    assert_null(em_power_mode_name(EM_POWER_UNKNOWN));
    assert_null(em_power_mode_name((em_power_mode_t)5));
    assert_string_equal(em_conn_status_name(EM_CONN_ONLINE), "online");
    assert_string_equal(em_conn_status_name(EM_CONN_OFFLINE), "offline");
    assert_string_equal(em_conn_status_name(EM_CONN_INTERMITTENT), "intermittent");
    assert_null(em_conn_status_name(EM_CONN_UNKNOWN));
    assert_null(em_conn_status_name((em_conn_status_t)4));
}

/* --- the jsmn fast path against the cJSON reference ---------------------- */

/* What one decoder made of a payload. Prefilled with a pattern, so that what
 * a decoder leaves alone compares equal too. */
typedef struct outcome {
    em_err_t rc;
    em_status_t st;
    em_error_t err;
} outcome_t;

static void prefill(outcome_t *o)
{
    memset(o, 0x5A, sizeof(*o));
}

static bool str_same(const char *a, const char *b)
{
    if (a == NULL || b == NULL)
        return a == b;
    return strcmp(a, b) == 0;
}

static void assert_same_outcome(const char *s, const outcome_t *a, const outcome_t *b)
{
    if (a->rc != b->rc)
        fail_msg("'%s': rc %d vs %d ('%s' vs '%s')", s, a->rc, b->rc, a->err.message,
                 b->err.message);
    assert_int_equal(a->st.has, b->st.has);
    assert_int_equal(a->st.battery_level, b->st.battery_level);
    assert_int_equal(a->st.power_mode, b->st.power_mode);
    assert_int_equal(a->st.connection, b->st.connection);
    assert_int_equal(a->st.signal_strength, b->st.signal_strength);
    assert_memory_equal(a->st.firmware_version, b->st.firmware_version,
                        sizeof(a->st.firmware_version));
    assert_true(a->st.last_seen_ms == b->st.last_seen_ms);
    assert_true(str_same(a->st.errors_json, b->st.errors_json));
    assert_true(str_same(a->st.extra_json, b->st.extra_json));
    if (memcmp(&a->err, &b->err, sizeof(a->err)) != 0)
        fail_msg("'%s': err %d %d '%s' '%s' vs %d %d '%s' '%s'", s, a->err.code, a->err.severity,
                 a->err.field, a->err.message, b->err.code, b->err.severity, b->err.field,
                 b->err.message);
}

static void cleanup_outcome(outcome_t *o)
{
    if (o->rc == EM_OK)
        em_status_cleanup(&o->st);
}

/* The same payload with an unknown member whose key is not ASCII in front,
 * which sends em_status_decode down the cJSON path. */
static char *non_ascii_variant(const char *s)
{
    size_t n = strlen(s);
    const char *brace = strchr(s, '{');
    assert_non_null(brace);
    size_t head = (size_t)(brace - s) + 1;
    const char *rest = s + head;
    while (*rest == ' ')
        rest++;
    char *v = malloc(n + 16);
    assert_non_null(v);
    snprintf(v, n + 16, "%.*s\"\xc3\xa9\":0%s%s", (int)head, s, *rest == '}' ? "" : ",", rest);
    return v;
}

/* Asserts that the fast path decides s, exactly as the cJSON decoder does on
 * the same bytes, and as em_status_decode does on the non-ASCII variant. */
static void assert_fast_matches_tree(const char *s)
{
    size_t n = strlen(s);
    outcome_t fast, tree, slow;
    prefill(&fast);
    prefill(&tree);
    prefill(&slow);
    if (!em__status_decode_fast(s, n, &fast.st, &fast.err, &fast.rc))
        fail_msg("'%s' was declined by the fast path", s);
    assert_null(fast.st.errors_json); /* the fast path never allocates */
    assert_null(fast.st.extra_json);
    tree.rc = em__status_decode_tree(s, n, &tree.st, &tree.err);
    assert_same_outcome(s, &fast, &tree);

    char *v = non_ascii_variant(s);
    outcome_t probe;
    prefill(&probe);
    assert_false(em__status_decode_fast(v, strlen(v), &probe.st, &probe.err, &probe.rc));
    slow.rc = em_status_decode(v, strlen(v), &slow.st, &slow.err);
    assert_same_outcome(v, &fast, &slow);
    free(v);
    cleanup_outcome(&fast);
    cleanup_outcome(&tree);
    cleanup_outcome(&slow);
}

/* Runs assert_fast_matches_tree on {"key":value} for each value. */
static void fast_matches_tree_for_values(const char *key, const char *const *values, size_t count)
{
    for (size_t i = 0; i < count; i++) {
        char buf[512];
        snprintf(buf, sizeof(buf), "{\"%s\":%s}", key, values[i]);
        assert_fast_matches_tree(buf);
    }
}

#define COUNT(a) (sizeof(a) / sizeof((a)[0]))

static void test_fast_path_decodes_design_example_as_tree_does(void **state)
{
    (void)state;
    assert_fast_matches_tree(EXAMPLE);
    assert_fast_matches_tree("{}");
    assert_fast_matches_tree("  { }  ");
    assert_fast_matches_tree(
        "{ \"batteryLevel\" : 75 , \"powerMode\" : \"sleep\" , \"errors\" : [ ] , "
        "\"additionalInfo\" : { } }");
}

static void test_fast_path_battery_rule_matches_tree(void **state)
{
    (void)state;
    static const char *const values[] = {"0",
                                         "100",
                                         "-0",
                                         "75",
                                         "-1",
                                         "101",
                                         "1000",
                                         "-9223372036854775807",
                                         "9223372036854775807",
                                         "\"75\"",
                                         "true",
                                         "false",
                                         "null",
                                         "[]",
                                         "{}",
                                         "\"\""};
    fast_matches_tree_for_values("batteryLevel", values, COUNT(values));
}

static void test_fast_path_signal_rule_matches_tree(void **state)
{
    (void)state;
    static const char *const values[] = {"-150", "0",       "-0",    "-67",  "-151", "1",
                                         "150",  "\"-67\"", "false", "null", "[ ]",  "{ }"};
    fast_matches_tree_for_values("signalStrength", values, COUNT(values));
}

static void test_fast_path_power_mode_rule_matches_tree(void **state)
{
    (void)state;
    static const char *const values[] = {
        "\"normal\"", "\"low_power\"", "\"sleep\"",   "\"critical\"", "\"Normal\"",
        "\"norma\"",  "\"normall\"",   "\"normal \"", "\"\"",         "\"low\"",
        "1",          "null",          "true",        "[]",           "{}"};
    fast_matches_tree_for_values("powerMode", values, COUNT(values));
}

static void test_fast_path_connection_rule_matches_tree(void **state)
{
    (void)state;
    static const char *const values[] = {"\"online\"", "\"offline\"", "\"intermittent\"",
                                         "\"ONLINE\"", "\"onlin\"",   "\"connected\"",
                                         "\"\"",       "0",           "false",
                                         "[]"};
    fast_matches_tree_for_values("connectionStatus", values, COUNT(values));
}

static void test_fast_path_firmware_rule_matches_tree(void **state)
{
    (void)state;
    static const char *const values[] = {"\"1\"",
                                         "\"1.2.3\"",
                                         "\"2.0.0-rc.1+b7_x\"",
                                         "\"1234567890123456789012345678901\"",
                                         "\"12345678901234567890123456789012\"",
                                         "\"\"",
                                         "\"1.2 beta\"",
                                         "\"1.2/3\"",
                                         "\"1,2\"",
                                         "\"\x7f\"",
                                         "1.2",
                                         "123",
                                         "null",
                                         "[]",
                                         "{}"};
    fast_matches_tree_for_values("firmwareVersion", values, COUNT(values));
}

static void test_fast_path_errors_rule_matches_tree(void **state)
{
    (void)state;
    static const char *const values[] = {"[]", "[  ]", "{}", "\"fault\"", "1", "null", "true"};
    fast_matches_tree_for_values("errors", values, COUNT(values));
}

static void test_fast_path_additional_info_rule_matches_tree(void **state)
{
    (void)state;
    static const char *const values[] = {"{}", "{ }", "[]", "\"x\"", "7", "null", "false"};
    fast_matches_tree_for_values("additionalInfo", values, COUNT(values));
}

static void test_fast_path_duplicate_rule_matches_tree(void **state)
{
    (void)state;
    assert_fast_matches_tree("{\"batteryLevel\":5,\"batteryLevel\":7}");
    assert_fast_matches_tree("{\"batteryLevel\":5,\"batteryLevel\":5}");
    assert_fast_matches_tree("{\"errors\":[],\"errors\":[]}");
    assert_fast_matches_tree(
        "{\"additionalInfo\":{},\"powerMode\":\"sleep\",\"additionalInfo\":7}");
    /* The first broken rule wins, a duplicate or not. */
    assert_fast_matches_tree("{\"batteryLevel\":500,\"batteryLevel\":5}");
    assert_fast_matches_tree("{\"batteryLevel\":5,\"batteryLevel\":500}");
    /* Unknown keys may repeat. */
    assert_fast_matches_tree("{\"vendor\":1,\"vendor\":\"x\",\"batteryLevel\":5}");
}

static void test_fast_path_unknown_keys_match_tree(void **state)
{
    (void)state;
    assert_fast_matches_tree(
        "{\"a\":true,\"b\":false,\"c\":null,\"d\":[],\"e\":{},\"f\":\"s\",\"g\":-0.5e+3,"
        "\"h\":12345678901234567890123,\"\":0,\"batteryLevel\":9}");
    assert_fast_matches_tree("{\"batteryleve\":\"x\",\"BatteryLevel\":\"x\",\"errors \":1}");
    assert_fast_matches_tree("{\"lastSeen\":1,\"batteryLevel\":1}");
}

static void test_fast_path_first_broken_rule_wins_as_in_tree(void **state)
{
    (void)state;
    assert_fast_matches_tree("{\"batteryLevel\":500,\"powerMode\":\"turbo\"}");
    assert_fast_matches_tree("{\"powerMode\":\"turbo\",\"batteryLevel\":500}");
    /* A later value that the fast path would decline for no longer matters
     * once a rule is broken: it is valid JSON all the same. */
    assert_fast_matches_tree("{\"powerMode\":1,\"batteryLevel\":50.5}");
}

/* Asserts that the fast path declines s without touching out or err, and
 * that em_status_decode then gives what the cJSON decoder gives. */
static void assert_fast_declines(const char *s, size_t n)
{
    outcome_t fast, untouched, tree, pub;
    prefill(&fast);
    prefill(&untouched);
    prefill(&tree);
    prefill(&pub);
    if (em__status_decode_fast(s, n, &fast.st, &fast.err, &fast.rc))
        fail_msg("'%.*s' was decided by the fast path", (int)n, s);
    assert_memory_equal(&fast, &untouched, sizeof(fast));
    tree.rc = em__status_decode_tree(s, n, &tree.st, &tree.err);
    pub.rc = em_status_decode(s, n, &pub.st, &pub.err);
    assert_same_outcome(s, &tree, &pub);
    cleanup_outcome(&tree);
    cleanup_outcome(&pub);
}

static void test_fast_path_declines_what_it_cannot_decide(void **state)
{
    (void)state;
    static const char *const cases[] = {
        /* numbers cJSON reads its own way */
        "{\"batteryLevel\":50.0}", "{\"batteryLevel\":1e1}", "{\"batteryLevel\":50.5}",
        "{\"batteryLevel\":99999999999999999999}", "{\"batteryLevel\":007}", "{\"x\":007}",
        "{\"x\":1.}", "{\"x\":.5}", "{\"x\":+1}", "{\"x\":-}", "{\"x\":1e}", "{\"x\":0x10}",
        "{\"x\":12345678901234567890123456789012345678901}",
        /* primitives that are not JSON */
        "{\"x\":tru}", "{\"x\":nul}", "{\"x\":truex}", "{\"x\":True}", "{\"x\":1:2}",
        /* containers with something inside */
        "{\"errors\":[\"a\"]}", "{\"additionalInfo\":{\"a\":1}}", "{\"x\":[[]]}",
        /* what jsmn lets through */
        "{,}", "{\"x\":[,]}", "{\"x\":{:}}", "{\"a\" \"b\"}", "{\"a\":1 \"b\":2}",
        "{\"a\":\"b\":\"c\"}", "{\"a\"::1}", "{\"a\":1,}", "{,\"a\":1}", ",{}", "{}:", "{}{}",
        "{} x", "{\"a\":1}}", "{\"a\"}", "{\"a\":}",
        /* not a flat object */
        "[]", "75", "\"online\"", "null", "",
        /* escapes, non-ASCII, control characters, other whitespace */
        "{\"firmwareVersion\":\"1.2\\n\"}", "{\"x\":\"\xc3\xa9\"}", "{\"batteryLevel\":\t75}",
        "{\n\"batteryLevel\":75}\n", "{\"a\":\"\x01\"}",
        /* unterminated */
        "{\"batteryLevel\":75", "{\"a", "{",
        /* a broken rule does not hide invalid JSON later on */
        "{\"batteryLevel\":500,\"x\":tru}", "{\"batteryLevel\":500,}"};
    for (size_t i = 0; i < COUNT(cases); i++)
        assert_fast_declines(cases[i], strlen(cases[i]));
}

static void test_fast_path_declines_more_members_than_tokens(void **state)
{
    (void)state;
    /* 23 members fit in the token array, 24 do not. */
    char buf[512];
    size_t n = 0;
    buf[n++] = '{';
    for (int i = 0; i < 23; i++)
        n += (size_t)snprintf(buf + n, sizeof(buf) - n, "%s\"k%d\":%d", i ? "," : "", i, i);
    snprintf(buf + n, sizeof(buf) - n, "}");
    assert_fast_matches_tree(buf);
    snprintf(buf + n, sizeof(buf) - n, ",\"batteryLevel\":1}");
    assert_fast_declines(buf, strlen(buf));
}

static void test_fast_path_declines_payload_over_limit(void **state)
{
    (void)state;
    size_t n = EM_PAYLOAD_MAX + 1;
    char *s = malloc(n);
    assert_non_null(s);
    memset(s, ' ', n);
    s[0] = '{';
    s[n - 1] = '}';
    assert_fast_declines(s, n);
    assert_fast_declines(s, 0);
    free(s);
}

/* --- counting allocations ------------------------------------------------- */

/* Under ASan (and the other sanitizers that own malloc) the sanitizer's
 * allocation hook counts; in a plain glibc build malloc is replaced by one
 * that counts and forwards to glibc's own allocator. */
#if defined(__SANITIZE_ADDRESS__) || defined(__SANITIZE_THREAD__)
#define COUNT_WITH_SANITIZER 1
#elif defined(__has_feature)
#if __has_feature(address_sanitizer) || __has_feature(thread_sanitizer) ||                         \
    __has_feature(memory_sanitizer)
#define COUNT_WITH_SANITIZER 1
#endif
#endif

static volatile bool g_counting;
static volatile unsigned long g_allocations;

#if defined(COUNT_WITH_SANITIZER)
int __sanitizer_install_malloc_and_free_hooks(void (*malloc_hook)(const volatile void *, size_t),
                                              void (*free_hook)(const volatile void *));

static void count_malloc(const volatile void *p, size_t n)
{
    (void)p;
    (void)n;
    if (g_counting)
        g_allocations++;
}

static void count_free(const volatile void *p)
{
    (void)p;
}

static bool allocation_counter_ready(void)
{
    static int installed = -1;
    if (installed < 0)
        installed = __sanitizer_install_malloc_and_free_hooks(count_malloc, count_free) != 0;
    return installed > 0;
}
#elif defined(__GLIBC__)
extern void *__libc_malloc(size_t n);
extern void *__libc_calloc(size_t n, size_t size);
extern void *__libc_realloc(void *p, size_t n);
extern void __libc_free(void *p);

void *malloc(size_t n)
{
    if (g_counting)
        g_allocations++;
    return __libc_malloc(n);
}

void *calloc(size_t n, size_t size)
{
    if (g_counting)
        g_allocations++;
    return __libc_calloc(n, size);
}

void *realloc(void *p, size_t n)
{
    if (g_counting)
        g_allocations++;
    return __libc_realloc(p, n);
}

void free(void *p)
{
    __libc_free(p);
}

static bool allocation_counter_ready(void)
{
    return true;
}
#else
static bool allocation_counter_ready(void)
{
    return false;
}
#endif

/* Allocations made by em_status_decode on s. */
static unsigned long allocations_of_decode(const char *s)
{
    em_status_t st;
    em_error_t err;
    g_allocations = 0;
    g_counting = true;
    em_err_t rc = em_status_decode(s, strlen(s), &st, &err);
    g_counting = false;
    assert_int_equal(rc, EM_OK);
    em_status_cleanup(&st);
    return g_allocations;
}

static void test_common_message_allocates_nothing(void **state)
{
    (void)state;
    if (!allocation_counter_ready())
        skip();
    /* The counter sees allocations: a non-empty list is copied to the heap. */
    assert_true(allocations_of_decode("{\"errors\":[\"sensor fault\"]}") > 0);
    assert_int_equal(allocations_of_decode(EXAMPLE), 0);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_decodes_design_example),
        cmocka_unit_test(test_empty_object_decodes_to_nothing),
        cmocka_unit_test(test_unknown_keys_are_ignored),
        cmocka_unit_test(test_payload_must_be_an_object),
        cmocka_unit_test(test_malformed_json_is_a_format_error),
        cmocka_unit_test(test_too_deep_is_a_format_error),
        cmocka_unit_test(test_too_big_is_a_format_error),
        cmocka_unit_test(test_battery_boundaries_are_accepted),
        cmocka_unit_test(test_battery_outside_range_is_refused),
        cmocka_unit_test(test_battery_non_integer_is_refused),
        cmocka_unit_test(test_battery_of_wrong_type_is_refused),
        cmocka_unit_test(test_every_power_mode_is_accepted),
        cmocka_unit_test(test_unknown_power_mode_is_refused),
        cmocka_unit_test(test_every_connection_status_is_accepted),
        cmocka_unit_test(test_unknown_connection_status_is_refused),
        cmocka_unit_test(test_firmware_version_boundaries),
        cmocka_unit_test(test_firmware_version_refusals),
        cmocka_unit_test(test_firmware_version_with_nul_escape_is_refused),
        cmocka_unit_test(test_signal_strength_boundaries),
        cmocka_unit_test(test_signal_strength_refusals),
        cmocka_unit_test(test_errors_are_kept_as_compact_json),
        cmocka_unit_test(test_sixteen_errors_of_256_bytes_are_accepted),
        cmocka_unit_test(test_seventeen_errors_are_refused),
        cmocka_unit_test(test_error_of_257_bytes_is_refused),
        cmocka_unit_test(test_error_length_counts_bytes_not_characters),
        cmocka_unit_test(test_errors_of_wrong_type_are_refused),
        cmocka_unit_test(test_additional_info_is_kept_as_compact_json),
        cmocka_unit_test(test_additional_info_of_max_size_is_accepted),
        cmocka_unit_test(test_additional_info_over_max_size_is_refused),
        cmocka_unit_test(test_additional_info_of_wrong_type_is_refused),
        cmocka_unit_test(test_duplicate_keys_are_refused),
        cmocka_unit_test(test_failure_after_allocation_leaves_nothing),
        cmocka_unit_test(test_decode_without_output_is_refused),
        cmocka_unit_test(test_decode_without_error_details_still_fails),
        cmocka_unit_test(test_encode_writes_present_fields),
        cmocka_unit_test(test_encode_of_nothing_is_an_empty_object),
        cmocka_unit_test(test_encode_writes_last_seen_as_iso),
        cmocka_unit_test(test_encode_into_small_buffer_reports_it),
        cmocka_unit_test(test_encode_decode_round_trip_keeps_everything),
        cmocka_unit_test(test_copy_is_deep),
        cmocka_unit_test(test_copy_refuses_null),
        cmocka_unit_test(test_cleanup_accepts_null),
        cmocka_unit_test(test_names),
        cmocka_unit_test(test_fast_path_decodes_design_example_as_tree_does),
        cmocka_unit_test(test_fast_path_battery_rule_matches_tree),
        cmocka_unit_test(test_fast_path_signal_rule_matches_tree),
        cmocka_unit_test(test_fast_path_power_mode_rule_matches_tree),
        cmocka_unit_test(test_fast_path_connection_rule_matches_tree),
        cmocka_unit_test(test_fast_path_firmware_rule_matches_tree),
        cmocka_unit_test(test_fast_path_errors_rule_matches_tree),
        cmocka_unit_test(test_fast_path_additional_info_rule_matches_tree),
        cmocka_unit_test(test_fast_path_duplicate_rule_matches_tree),
        cmocka_unit_test(test_fast_path_unknown_keys_match_tree),
        cmocka_unit_test(test_fast_path_first_broken_rule_wins_as_in_tree),
        cmocka_unit_test(test_fast_path_declines_what_it_cannot_decide),
        cmocka_unit_test(test_fast_path_declines_more_members_than_tokens),
        cmocka_unit_test(test_fast_path_declines_payload_over_limit),
        cmocka_unit_test(test_common_message_allocates_nothing),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
