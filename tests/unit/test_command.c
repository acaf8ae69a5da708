/*
 * emiot tests - test_command.c: command types, payload rules, request ids and
 * the wire format.
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

#define S(lit) (lit), (sizeof(lit) - 1)

static em_error_t last_err;

/* Validates payload (NUL-terminated, or NULL) for type; the details land in
 * last_err. */
static em_err_t check(em_command_type_t type, const char *payload)
{
    em_error_clear(&last_err);
    return em_command_validate(type, payload, payload != NULL ? strlen(payload) : 0, &last_err);
}

static void assert_refused(em_command_type_t type, const char *payload, const char *field)
{
    em_err_t rc = check(type, payload);
    if (rc != EM_ERR_VALIDATION)
        fail_msg("%s %s: expected a validation error, got %s", em_command_type_name(type),
                 payload != NULL ? payload : "(none)", em_err_name(rc));
    assert_string_equal(last_err.field, field);
}

static void assert_accepted(em_command_type_t type, const char *payload)
{
    em_err_t rc = check(type, payload);
    if (rc != EM_OK)
        fail_msg("%s %s: refused: %s: %s", em_command_type_name(type),
                 payload != NULL ? payload : "(none)", last_err.field, last_err.message);
}

static bool is_lower_hex(const char *s, size_t n)
{
    for (size_t i = 0; i < n; i++) {
        if (!((s[i] >= '0' && s[i] <= '9') || (s[i] >= 'a' && s[i] <= 'f')))
            return false;
    }
    return true;
}

/* ---- types ---- */

static const char *const all_names[] = {
    "sleep",      "wake",      "restart", "update", "set_reporting_interval",
    "get_status", "configure", "reset"};

static void command_type_names_round_trip(void **state)
{
    (void)state;
    for (int i = 0; i < EM_CMD_TYPE_COUNT; i++) {
        assert_string_equal(em_command_type_name((em_command_type_t)i), all_names[i]);
        em_command_type_t t = EM_CMD_RESET;
        assert_int_equal(em_command_type_parse(all_names[i], strlen(all_names[i]), &t, NULL),
                         EM_OK);
        assert_int_equal(t, i);
    }
}

static void command_type_name_out_of_range_is_null(void **state)
{
    (void)state;
    assert_null(em_command_type_name((em_command_type_t)EM_CMD_TYPE_COUNT));
    assert_null(em_command_type_name((em_command_type_t)-1));
}

static void command_type_parse_is_exact(void **state)
{
    (void)state;
    em_command_type_t t = EM_CMD_WAKE;
    em_error_t err;
    assert_int_equal(em_command_type_parse(S("Sleep"), &t, &err), EM_ERR_VALIDATION);
    assert_string_equal(err.field, "type");
    assert_int_equal(em_command_type_parse(S("sleep "), &t, NULL), EM_ERR_VALIDATION);
    assert_int_equal(em_command_type_parse(S("slee"), &t, NULL), EM_ERR_VALIDATION);
    assert_int_equal(em_command_type_parse(S(""), &t, NULL), EM_ERR_VALIDATION);
    assert_int_equal(em_command_type_parse(NULL, 5, &t, NULL), EM_ERR_VALIDATION);
    assert_int_equal(t, EM_CMD_WAKE);
}

/* ---- payload rules ---- */

static void sleep_accepts_no_payload_or_empty_object(void **state)
{
    (void)state;
    assert_accepted(EM_CMD_SLEEP, NULL);
    assert_accepted(EM_CMD_SLEEP, "{}");
    assert_int_equal(em_command_validate(EM_CMD_SLEEP, "", 0, NULL), EM_OK);
}

static void sleep_duration_bounds(void **state)
{
    (void)state;
    assert_refused(EM_CMD_SLEEP, "{\"duration\":0}", "duration");
    assert_string_equal(last_err.message, "must be an integer from 1 to 604800");
    assert_accepted(EM_CMD_SLEEP, "{\"duration\":1}");
    assert_accepted(EM_CMD_SLEEP, "{\"duration\":604800}");
    assert_refused(EM_CMD_SLEEP, "{\"duration\":604801}", "duration");
    assert_refused(EM_CMD_SLEEP, "{\"duration\":-60}", "duration");
}

static void sleep_duration_must_be_an_integer(void **state)
{
    (void)state;
    assert_refused(EM_CMD_SLEEP, "{\"duration\":3.5}", "duration");
    assert_refused(EM_CMD_SLEEP, "{\"duration\":\"3\"}", "duration");
    assert_refused(EM_CMD_SLEEP, "{\"duration\":true}", "duration");
    assert_refused(EM_CMD_SLEEP, "{\"duration\":null}", "duration");
    assert_refused(EM_CMD_SLEEP, "{\"duration\":{}}", "duration");
    assert_accepted(EM_CMD_SLEEP, "{\"duration\":60.0}");
}

static void sleep_refuses_unknown_keys(void **state)
{
    (void)state;
    assert_refused(EM_CMD_SLEEP, "{\"duration\":60,\"force\":true}", "force");
    assert_string_equal(last_err.message, "is not a parameter of sleep");
    assert_refused(EM_CMD_SLEEP, "{\"Duration\":60}", "Duration");
}

static void sleep_refuses_duplicate_duration(void **state)
{
    (void)state;
    assert_refused(EM_CMD_SLEEP, "{\"duration\":60,\"duration\":0}", "duration");
    assert_string_equal(last_err.message, "must appear only once");
}

static void no_parameter_commands_accept_nothing_or_empty_object(void **state)
{
    (void)state;
    em_command_type_t types[] = {EM_CMD_WAKE, EM_CMD_RESTART, EM_CMD_GET_STATUS};
    for (size_t i = 0; i < 3; i++) {
        assert_accepted(types[i], NULL);
        assert_accepted(types[i], " {  } ");
    }
}

static void no_parameter_commands_refuse_any_key(void **state)
{
    (void)state;
    assert_refused(EM_CMD_WAKE, "{\"now\":true}", "now");
    assert_string_equal(last_err.message, "is not allowed: wake takes no parameters");
    assert_refused(EM_CMD_RESTART, "{\"delay\":5}", "delay");
    assert_refused(EM_CMD_GET_STATUS, "{\"verbose\":1}", "verbose");
}

static void update_version_is_optional(void **state)
{
    (void)state;
    assert_accepted(EM_CMD_UPDATE, NULL);
    assert_accepted(EM_CMD_UPDATE, "{}");
    assert_accepted(EM_CMD_UPDATE, "{\"version\":\"1.2.3-rc.1+build_5\"}");
}

static void update_version_length_bounds(void **state)
{
    (void)state;
    char payload[96];
    char v[40];
    memset(v, '9', 31);
    v[31] = '\0';
    snprintf(payload, sizeof(payload), "{\"version\":\"%s\"}", v);
    assert_accepted(EM_CMD_UPDATE, payload);
    v[31] = '9';
    v[32] = '\0';
    snprintf(payload, sizeof(payload), "{\"version\":\"%s\"}", v);
    assert_refused(EM_CMD_UPDATE, payload, "version");
    assert_refused(EM_CMD_UPDATE, "{\"version\":\"\"}", "version");
    assert_string_equal(last_err.message, "must be 1-31 characters of 0-9 A-Z a-z . + _ -");
    assert_accepted(EM_CMD_UPDATE, "{\"version\":\"1\"}");
}

static void update_version_refuses_other_characters_and_types(void **state)
{
    (void)state;
    assert_refused(EM_CMD_UPDATE, "{\"version\":\"1.2 3\"}", "version");
    assert_refused(EM_CMD_UPDATE, "{\"version\":\"../1\"}", "version");
    assert_refused(EM_CMD_UPDATE, "{\"version\":\"1;rm\"}", "version");
    assert_refused(EM_CMD_UPDATE, "{\"version\":\"1\\n\"}", "version");
    assert_refused(EM_CMD_UPDATE, "{\"version\":\"v\\u00e9\"}", "version");
    assert_refused(EM_CMD_UPDATE, "{\"version\":5}", "version");
    assert_refused(EM_CMD_UPDATE, "{\"version\":null}", "version");
}

static void update_refuses_unknown_keys(void **state)
{
    (void)state;
    assert_refused(EM_CMD_UPDATE, "{\"version\":\"2.0.0\",\"url\":\"http://evil\"}", "url");
}

static void set_reporting_interval_bounds(void **state)
{
    (void)state;
    assert_refused(EM_CMD_SET_REPORTING_INTERVAL, "{\"interval\":9}", "interval");
    assert_string_equal(last_err.message, "must be an integer from 10 to 3600");
    assert_accepted(EM_CMD_SET_REPORTING_INTERVAL, "{\"interval\":10}");
    assert_accepted(EM_CMD_SET_REPORTING_INTERVAL, "{\"interval\":3600}");
    assert_refused(EM_CMD_SET_REPORTING_INTERVAL, "{\"interval\":3601}", "interval");
}

static void set_reporting_interval_requires_interval(void **state)
{
    (void)state;
    assert_refused(EM_CMD_SET_REPORTING_INTERVAL, NULL, "interval");
    assert_refused(EM_CMD_SET_REPORTING_INTERVAL, "{}", "interval");
    assert_string_equal(last_err.message, "is required (integer seconds 10 to 3600)");
}

static void set_reporting_interval_refuses_non_integers(void **state)
{
    (void)state;
    assert_refused(EM_CMD_SET_REPORTING_INTERVAL, "{\"interval\":10.5}", "interval");
    assert_refused(EM_CMD_SET_REPORTING_INTERVAL, "{\"interval\":\"60\"}", "interval");
    assert_refused(EM_CMD_SET_REPORTING_INTERVAL, "{\"interval\":[60]}", "interval");
}

static void set_reporting_interval_refuses_unknown_keys(void **state)
{
    (void)state;
    assert_refused(EM_CMD_SET_REPORTING_INTERVAL, "{\"interval\":60,\"unit\":\"s\"}", "unit");
}

static void configure_requires_non_empty_object(void **state)
{
    (void)state;
    assert_refused(EM_CMD_CONFIGURE, NULL, "payload");
    assert_refused(EM_CMD_CONFIGURE, "{}", "payload");
    assert_string_equal(last_err.message, "must be a non-empty object for configure");
}

static void configure_range_checks_config_keys(void **state)
{
    (void)state;
    assert_refused(EM_CMD_CONFIGURE, "{\"reportingInterval\":0}", "reportingInterval");
    assert_refused(EM_CMD_CONFIGURE, "{\"reportingInterval\":86401}", "reportingInterval");
    assert_refused(EM_CMD_CONFIGURE, "{\"sleepThreshold\":101}", "sleepThreshold");
    assert_refused(EM_CMD_CONFIGURE, "{\"securityLevel\":0}", "securityLevel");
    assert_refused(EM_CMD_CONFIGURE, "{\"securityLevel\":6}", "securityLevel");
    assert_refused(EM_CMD_CONFIGURE, "{\"securityLevel\":2.5}", "securityLevel");
    assert_refused(EM_CMD_CONFIGURE, "{\"autoWake\":\"yes\"}", "autoWake");
    assert_accepted(EM_CMD_CONFIGURE, "{\"reportingInterval\":1,\"sleepThreshold\":0,"
                                      "\"autoWake\":false,\"securityLevel\":5}");
    assert_accepted(EM_CMD_CONFIGURE, "{\"reportingInterval\":86400,\"sleepThreshold\":100,"
                                      "\"securityLevel\":1}");
}

static void configure_passes_other_keys_through(void **state)
{
    (void)state;
    assert_accepted(EM_CMD_CONFIGURE, "{\"mode\":\"eco\"}");
    const char *payload =
        "{ \"reportingInterval\": 60, \"mode\": \"eco\", \"limits\": {\"w\": [1, 2.5]} }";
    em_command_t cmd;
    assert_int_equal(em_command_init(&cmd, EM_CMD_CONFIGURE, payload, strlen(payload), NULL),
                     EM_OK);
    assert_string_equal(cmd.payload_json,
                        "{\"reportingInterval\":60,\"mode\":\"eco\",\"limits\":{\"w\":[1,2.5]}}");
    em_command_cleanup(&cmd);
}

static void configure_refuses_duplicate_config_keys(void **state)
{
    (void)state;
    assert_refused(EM_CMD_CONFIGURE, "{\"securityLevel\":2,\"securityLevel\":7}", "securityLevel");
}

/* {"k":"xxx..."} whose compact form is exactly size bytes, written with
 * spaces around so that the raw text is longer than the compact one. */
static char *configure_of_compact_size(size_t size)
{
    size_t n = size - 8; /* {"k":""} */
    char *p = malloc(n + 32);
    assert_non_null(p);
    int k = snprintf(p, 32, "  {  \"k\" :  \"");
    memset(p + k, 'x', n);
    memcpy(p + k + n, "\"  }  ", 7);
    return p;
}

static void configure_payload_size_limit(void **state)
{
    (void)state;
    char *p = configure_of_compact_size(EM_CMD_PAYLOAD_MAX);
    em_command_t cmd;
    assert_int_equal(em_command_init(&cmd, EM_CMD_CONFIGURE, p, strlen(p), NULL), EM_OK);
    assert_int_equal(strlen(cmd.payload_json), EM_CMD_PAYLOAD_MAX);
    em_command_cleanup(&cmd);
    free(p);

    p = configure_of_compact_size(EM_CMD_PAYLOAD_MAX + 1);
    em_error_t err;
    assert_int_equal(em_command_init(&cmd, EM_CMD_CONFIGURE, p, strlen(p), &err),
                     EM_ERR_VALIDATION);
    assert_string_equal(err.field, "payload");
    assert_string_equal(err.message, "must be at most 4096 bytes as compact JSON");
    assert_null(cmd.payload_json);
    free(p);
}

static void configure_refuses_deep_nesting(void **state)
{
    (void)state;
    em_error_t err;
    const char *deep = "{\"a\":[[[[[[[[[[1]]]]]]]]]]}";
    assert_int_equal(em_command_validate(EM_CMD_CONFIGURE, deep, strlen(deep), &err),
                     EM_ERR_MESSAGE_FORMAT);
}

static void payload_nesting_leaves_room_for_the_command_envelope(void **state)
{
    (void)state;
    /* 7 levels of payload are 8 inside the command: still decodable. */
    const char *seven = "{\"a\":[[[[[[1]]]]]]}";
    em_command_t cmd, back;
    assert_int_equal(em_command_init(&cmd, EM_CMD_CONFIGURE, seven, strlen(seven), NULL), EM_OK);
    char wire[EM_COMMAND_WIRE_MAX];
    size_t n;
    assert_int_equal(em_command_encode(&cmd, wire, sizeof(wire), &n), EM_OK);
    assert_int_equal(em_command_decode(wire, n, &back, NULL), EM_OK);
    assert_string_equal(back.payload_json, seven);
    em_command_cleanup(&cmd);
    em_command_cleanup(&back);
    /* 8 levels parse as a payload but could never be delivered. */
    const char *eight = "{\"a\":[[[[[[[1]]]]]]]}";
    em_error_t err;
    assert_int_equal(em_command_validate(EM_CMD_CONFIGURE, eight, strlen(eight), &err),
                     EM_ERR_VALIDATION);
    assert_string_equal(err.field, "payload");
    assert_string_equal(err.message, "must not be nested deeper than 7 levels");
}

static void reset_requires_confirm_true(void **state)
{
    (void)state;
    assert_refused(EM_CMD_RESET, NULL, "confirm");
    assert_refused(EM_CMD_RESET, "{}", "confirm");
    assert_string_equal(last_err.message, "must be true: reset requires {\"confirm\":true}");
    assert_refused(EM_CMD_RESET, "{\"confirm\":false}", "confirm");
    assert_refused(EM_CMD_RESET, "{\"confirm\":\"true\"}", "confirm");
    assert_refused(EM_CMD_RESET, "{\"confirm\":1}", "confirm");
    assert_refused(EM_CMD_RESET, "{\"confirm\":null}", "confirm");
    assert_accepted(EM_CMD_RESET, "{\"confirm\":true}");
}

static void reset_refuses_unknown_keys(void **state)
{
    (void)state;
    assert_refused(EM_CMD_RESET, "{\"confirm\":true,\"wipe\":true}", "wipe");
    assert_refused(EM_CMD_RESET, "{\"confirm\":true,\"confirm\":false}", "confirm");
}

static void payload_must_be_an_object_for_every_type(void **state)
{
    (void)state;
    const char *bad[] = {"[]", "[{}]", "3", "\"x\"", "null", "true"};
    for (int t = 0; t < EM_CMD_TYPE_COUNT; t++) {
        for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++)
            assert_refused((em_command_type_t)t, bad[i], "payload");
    }
    assert_string_equal(last_err.message, "must be a JSON object");
}

static void payload_must_be_well_formed_json(void **state)
{
    (void)state;
    const char *bad[] = {"{", "{\"duration\":}", "{} {}", "{'a':1}", "{\"a\":1,}"};
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++)
        assert_int_equal(check(EM_CMD_SLEEP, bad[i]), EM_ERR_MESSAGE_FORMAT);
}

static void payload_len_is_respected(void **state)
{
    (void)state;
    const char *p = "{\"duration\":5}garbage";
    assert_int_equal(em_command_validate(EM_CMD_SLEEP, p, 14, NULL), EM_OK);
    assert_int_equal(em_command_validate(EM_CMD_SLEEP, p, strlen(p), NULL), EM_ERR_MESSAGE_FORMAT);
}

static void validate_refuses_unknown_type(void **state)
{
    (void)state;
    em_error_t err;
    assert_int_equal(em_command_validate((em_command_type_t)EM_CMD_TYPE_COUNT, NULL, 0, &err),
                     EM_ERR_VALIDATION);
    assert_string_equal(err.field, "type");
    assert_int_equal(em_command_validate((em_command_type_t)-1, NULL, 0, NULL), EM_ERR_VALIDATION);
}

/* ---- em_command_init ---- */

static void init_stores_compact_payload(void **state)
{
    (void)state;
    em_command_t cmd;
    const char *p = " {\n \"duration\" : 60\n} ";
    assert_int_equal(em_command_init(&cmd, EM_CMD_SLEEP, p, strlen(p), NULL), EM_OK);
    assert_int_equal(cmd.type, EM_CMD_SLEEP);
    assert_string_equal(cmd.payload_json, "{\"duration\":60}");
    em_command_cleanup(&cmd);
}

static void init_without_payload_stores_null(void **state)
{
    (void)state;
    em_command_t cmd;
    assert_int_equal(em_command_init(&cmd, EM_CMD_WAKE, NULL, 0, NULL), EM_OK);
    assert_null(cmd.payload_json);
    em_command_cleanup(&cmd);
}

static void init_stamps_current_time(void **state)
{
    (void)state;
    em_command_t cmd;
    int64_t before = em_now_ms();
    assert_int_equal(em_command_init(&cmd, EM_CMD_RESTART, NULL, 0, NULL), EM_OK);
    int64_t after = em_now_ms();
    assert_true(cmd.timestamp_ms >= before);
    assert_true(cmd.timestamp_ms <= after);
    em_command_cleanup(&cmd);
}

static void init_makes_request_id_of_32_hex_digits(void **state)
{
    (void)state;
    em_command_t cmd;
    assert_int_equal(em_command_init(&cmd, EM_CMD_GET_STATUS, NULL, 0, NULL), EM_OK);
    assert_int_equal(strlen(cmd.request_id), EM_REQUEST_ID_LEN);
    assert_memory_equal(cmd.request_id, "req_", 4);
    assert_true(is_lower_hex(cmd.request_id + 4, 32));
    em_command_cleanup(&cmd);
}

static void init_failure_leaves_nothing_to_free(void **state)
{
    (void)state;
    em_command_t cmd;
    memset(&cmd, 0xa5, sizeof(cmd));
    em_error_t err;
    assert_int_equal(em_command_init(&cmd, EM_CMD_RESET, S("{\"confirm\":false}"), &err),
                     EM_ERR_VALIDATION);
    assert_null(cmd.payload_json);
    assert_string_equal(cmd.request_id, "");
    em_command_cleanup(&cmd);
    assert_int_equal(em_command_init(NULL, EM_CMD_WAKE, NULL, 0, &err), EM_ERR_INVALID_ARGUMENT);
}

static void cleanup_accepts_null_and_repeats(void **state)
{
    (void)state;
    em_command_cleanup(NULL);
    em_command_t cmd;
    assert_int_equal(em_command_init(&cmd, EM_CMD_SLEEP, S("{\"duration\":1}"), NULL), EM_OK);
    em_command_cleanup(&cmd);
    assert_null(cmd.payload_json);
    em_command_cleanup(&cmd);
}

/* ---- request ids ---- */

static void request_id_has_prefix_and_32_lowercase_hex(void **state)
{
    (void)state;
    char id[EM_REQUEST_ID_LEN + 1];
    assert_int_equal(em_request_id_new(id, sizeof(id)), EM_OK);
    assert_int_equal(strlen(id), 36);
    assert_memory_equal(id, "req_", 4);
    assert_true(is_lower_hex(id + 4, 32));
}

static int cmp_ids(const void *a, const void *b)
{
    return memcmp(a, b, EM_REQUEST_ID_LEN + 1);
}

static void request_ids_are_unique(void **state)
{
    (void)state;
    enum { N = 10000 };
    char(*ids)[EM_REQUEST_ID_LEN + 1] = calloc(N, sizeof(*ids));
    assert_non_null(ids);
    for (int i = 0; i < N; i++)
        assert_int_equal(em_request_id_new(ids[i], sizeof(ids[i])), EM_OK);
    qsort(ids, N, sizeof(*ids), cmp_ids);
    for (int i = 1; i < N; i++)
        assert_int_not_equal(memcmp(ids[i - 1], ids[i], sizeof(*ids)), 0);
    free(ids);
}

static void request_id_refuses_small_buffer(void **state)
{
    (void)state;
    char id[EM_REQUEST_ID_LEN];
    memset(id, 'z', sizeof(id));
    assert_int_equal(em_request_id_new(id, sizeof(id)), EM_ERR_BUFFER_TOO_SMALL);
    assert_int_equal(id[0], '\0');
    assert_int_equal(em_request_id_new(id, 0), EM_ERR_BUFFER_TOO_SMALL);
    assert_int_equal(em_request_id_new(NULL, 64), EM_ERR_INVALID_ARGUMENT);
}

/* ---- wire format ---- */

static void make_cmd(em_command_t *cmd, em_command_type_t type, char *payload)
{
    memset(cmd, 0, sizeof(*cmd));
    cmd->type = type;
    cmd->payload_json = payload;
    cmd->timestamp_ms = INT64_C(1700000000000);
    memcpy(cmd->request_id, "req_0123456789abcdef0123456789abcdef", EM_REQUEST_ID_LEN + 1);
}

static void encode_writes_exact_wire_format(void **state)
{
    (void)state;
    char payload[] = "{\"duration\":3600}";
    em_command_t cmd;
    make_cmd(&cmd, EM_CMD_SLEEP, payload);
    char buf[EM_COMMAND_WIRE_MAX];
    size_t n = 0;
    assert_int_equal(em_command_encode(&cmd, buf, sizeof(buf), &n), EM_OK);
    const char *want = "{\"type\":\"sleep\",\"payload\":{\"duration\":3600},"
                       "\"timestamp\":1700000000000,"
                       "\"requestId\":\"req_0123456789abcdef0123456789abcdef\"}";
    assert_string_equal(buf, want);
    assert_int_equal(n, strlen(want));
}

static void encode_without_payload_writes_empty_object(void **state)
{
    (void)state;
    em_command_t cmd;
    make_cmd(&cmd, EM_CMD_WAKE, NULL);
    char buf[256];
    assert_int_equal(em_command_encode(&cmd, buf, sizeof(buf), NULL), EM_OK);
    assert_string_equal(buf, "{\"type\":\"wake\",\"payload\":{},\"timestamp\":1700000000000,"
                             "\"requestId\":\"req_0123456789abcdef0123456789abcdef\"}");
}

static void encode_writes_every_type_name(void **state)
{
    (void)state;
    for (int t = 0; t < EM_CMD_TYPE_COUNT; t++) {
        em_command_t cmd;
        make_cmd(&cmd, (em_command_type_t)t, NULL);
        char buf[256], want[64];
        assert_int_equal(em_command_encode(&cmd, buf, sizeof(buf), NULL), EM_OK);
        snprintf(want, sizeof(want), "{\"type\":\"%s\",\"payload\":{},", all_names[t]);
        assert_memory_equal(buf, want, strlen(want));
    }
}

static void encode_writes_extreme_timestamps(void **state)
{
    (void)state;
    em_command_t cmd;
    make_cmd(&cmd, EM_CMD_WAKE, NULL);
    char buf[256];
    cmd.timestamp_ms = INT64_MAX;
    assert_int_equal(em_command_encode(&cmd, buf, sizeof(buf), NULL), EM_OK);
    assert_non_null(strstr(buf, "\"timestamp\":9223372036854775807,"));
    cmd.timestamp_ms = INT64_MIN;
    assert_int_equal(em_command_encode(&cmd, buf, sizeof(buf), NULL), EM_OK);
    assert_non_null(strstr(buf, "\"timestamp\":-9223372036854775808,"));
    cmd.timestamp_ms = 0;
    assert_int_equal(em_command_encode(&cmd, buf, sizeof(buf), NULL), EM_OK);
    assert_non_null(strstr(buf, "\"timestamp\":0,"));
}

static void encode_reports_buffer_too_small_at_every_size(void **state)
{
    (void)state;
    char payload[] = "{\"interval\":60}";
    em_command_t cmd;
    make_cmd(&cmd, EM_CMD_SET_REPORTING_INTERVAL, payload);
    char full[512];
    size_t len;
    assert_int_equal(em_command_encode(&cmd, full, sizeof(full), &len), EM_OK);
    for (size_t size = 0; size <= len; size++) {
        char *buf = malloc(size > 0 ? size : 1);
        assert_non_null(buf);
        assert_int_equal(em_command_encode(&cmd, buf, size, NULL), EM_ERR_BUFFER_TOO_SMALL);
        if (size > 0)
            assert_int_equal(buf[0], '\0');
        free(buf);
    }
    char *buf = malloc(len + 1);
    assert_non_null(buf);
    assert_int_equal(em_command_encode(&cmd, buf, len + 1, NULL), EM_OK);
    assert_string_equal(buf, full);
    free(buf);
}

static void encode_largest_command_fits_wire_max(void **state)
{
    (void)state;
    char *p = configure_of_compact_size(EM_CMD_PAYLOAD_MAX);
    em_command_t cmd;
    assert_int_equal(em_command_init(&cmd, EM_CMD_CONFIGURE, p, strlen(p), NULL), EM_OK);
    free(p);
    char buf[EM_COMMAND_WIRE_MAX];
    size_t n;
    cmd.timestamp_ms = INT64_MIN;
    memset(cmd.request_id, 'r', EM_REQUEST_ID_MAX);
    cmd.request_id[EM_REQUEST_ID_MAX] = '\0';
    assert_int_equal(em_command_encode(&cmd, buf, sizeof(buf), &n), EM_OK);
    assert_true(n < EM_COMMAND_WIRE_MAX);
    em_command_cleanup(&cmd);
}

static void encode_refuses_bad_request_id_and_type(void **state)
{
    (void)state;
    em_command_t cmd;
    char buf[256];
    make_cmd(&cmd, EM_CMD_WAKE, NULL);
    memcpy(cmd.request_id, "req\",\"x", 8);
    assert_int_equal(em_command_encode(&cmd, buf, sizeof(buf), NULL), EM_ERR_INVALID_ARGUMENT);
    cmd.request_id[0] = '\0';
    assert_int_equal(em_command_encode(&cmd, buf, sizeof(buf), NULL), EM_ERR_INVALID_ARGUMENT);
    make_cmd(&cmd, (em_command_type_t)EM_CMD_TYPE_COUNT, NULL);
    assert_int_equal(em_command_encode(&cmd, buf, sizeof(buf), NULL), EM_ERR_INVALID_ARGUMENT);
    assert_int_equal(em_command_encode(NULL, buf, sizeof(buf), NULL), EM_ERR_INVALID_ARGUMENT);
}

/* ---- decoding (the device side) ---- */

static em_err_t decode(const char *json, em_command_t *cmd)
{
    em_error_clear(&last_err);
    return em_command_decode(json, strlen(json), cmd, &last_err);
}

static void assert_decode_refused(const char *json, em_err_t code, const char *field)
{
    em_command_t cmd;
    em_err_t rc = decode(json, &cmd);
    if (rc != code)
        fail_msg("%s: expected %s, got %s (%s)", json, em_err_name(code), em_err_name(rc),
                 last_err.message);
    if (field != NULL)
        assert_string_equal(last_err.field, field);
    assert_null(cmd.payload_json);
}

static void decode_reads_wire_format(void **state)
{
    (void)state;
    em_command_t cmd;
    assert_int_equal(decode("{\"type\":\"sleep\",\"payload\":{ \"duration\" : 3600 },"
                            "\"timestamp\":1700000000000,\"requestId\":\"req_abc-1_X\"}",
                            &cmd),
                     EM_OK);
    assert_int_equal(cmd.type, EM_CMD_SLEEP);
    assert_string_equal(cmd.payload_json, "{\"duration\":3600}");
    assert_int_equal(cmd.timestamp_ms, INT64_C(1700000000000));
    assert_string_equal(cmd.request_id, "req_abc-1_X");
    em_command_cleanup(&cmd);
}

static void decode_without_payload_has_null_payload(void **state)
{
    (void)state;
    em_command_t cmd;
    assert_int_equal(decode("{\"type\":\"wake\",\"timestamp\":1,\"requestId\":\"r\"}", &cmd),
                     EM_OK);
    assert_int_equal(cmd.type, EM_CMD_WAKE);
    assert_null(cmd.payload_json);
    em_command_cleanup(&cmd);
}

static void decode_round_trips_every_type(void **state)
{
    (void)state;
    const char *payloads[EM_CMD_TYPE_COUNT] = {
        "{\"duration\":60}",
        NULL,
        "{}",
        "{\"version\":\"2.1.0\"}",
        "{\"interval\":300}",
        NULL,
        "{\"securityLevel\":4,\"extra\":[\"a\",{\"b\":null}]}",
        "{\"confirm\":true}"};
    for (int t = 0; t < EM_CMD_TYPE_COUNT; t++) {
        const char *p = payloads[t];
        em_command_t in, out;
        assert_int_equal(
            em_command_init(&in, (em_command_type_t)t, p, p != NULL ? strlen(p) : 0, NULL), EM_OK);
        char wire[EM_COMMAND_WIRE_MAX];
        size_t n;
        assert_int_equal(em_command_encode(&in, wire, sizeof(wire), &n), EM_OK);
        assert_int_equal(em_command_decode(wire, n, &out, NULL), EM_OK);
        assert_int_equal(out.type, in.type);
        assert_int_equal(out.timestamp_ms, in.timestamp_ms);
        assert_string_equal(out.request_id, in.request_id);
        if (p != NULL)
            assert_string_equal(out.payload_json, in.payload_json);
        /* Encoding what was decoded gives the same bytes. */
        char again[EM_COMMAND_WIRE_MAX];
        size_t m;
        assert_int_equal(em_command_encode(&out, again, sizeof(again), &m), EM_OK);
        assert_int_equal(m, n);
        assert_memory_equal(again, wire, n);
        em_command_cleanup(&in);
        em_command_cleanup(&out);
    }
}

static void decode_refuses_bad_type(void **state)
{
    (void)state;
    assert_decode_refused("{\"payload\":{},\"timestamp\":1,\"requestId\":\"r\"}", EM_ERR_VALIDATION,
                          "type");
    assert_decode_refused("{\"type\":\"format_disk\",\"timestamp\":1,\"requestId\":\"r\"}",
                          EM_ERR_VALIDATION, "type");
    assert_decode_refused("{\"type\":7,\"timestamp\":1,\"requestId\":\"r\"}", EM_ERR_VALIDATION,
                          "type");
    assert_decode_refused("{\"type\":\"SLEEP\",\"timestamp\":1,\"requestId\":\"r\"}",
                          EM_ERR_VALIDATION, "type");
}

static void decode_applies_payload_rules(void **state)
{
    (void)state;
    assert_decode_refused("{\"type\":\"reset\",\"payload\":{\"confirm\":false},\"timestamp\":1,"
                          "\"requestId\":\"r\"}",
                          EM_ERR_VALIDATION, "confirm");
    assert_decode_refused("{\"type\":\"reset\",\"timestamp\":1,\"requestId\":\"r\"}",
                          EM_ERR_VALIDATION, "confirm");
    assert_decode_refused("{\"type\":\"sleep\",\"payload\":{\"duration\":0},\"timestamp\":1,"
                          "\"requestId\":\"r\"}",
                          EM_ERR_VALIDATION, "duration");
    assert_decode_refused("{\"type\":\"set_reporting_interval\",\"payload\":{\"interval\":9},"
                          "\"timestamp\":1,\"requestId\":\"r\"}",
                          EM_ERR_VALIDATION, "interval");
    assert_decode_refused("{\"type\":\"wake\",\"payload\":{\"x\":1},\"timestamp\":1,"
                          "\"requestId\":\"r\"}",
                          EM_ERR_VALIDATION, "x");
}

static void decode_refuses_non_object_payload(void **state)
{
    (void)state;
    assert_decode_refused("{\"type\":\"wake\",\"payload\":[],\"timestamp\":1,\"requestId\":\"r\"}",
                          EM_ERR_VALIDATION, "payload");
    assert_decode_refused("{\"type\":\"wake\",\"payload\":null,\"timestamp\":1,"
                          "\"requestId\":\"r\"}",
                          EM_ERR_VALIDATION, "payload");
    assert_decode_refused("{\"type\":\"wake\",\"payload\":\"{}\",\"timestamp\":1,"
                          "\"requestId\":\"r\"}",
                          EM_ERR_VALIDATION, "payload");
}

static void decode_request_id_rules(void **state)
{
    (void)state;
    char json[256];
    char id[80];
    em_command_t cmd;
    memset(id, 'a', 64);
    id[64] = '\0';
    snprintf(json, sizeof(json), "{\"type\":\"wake\",\"timestamp\":1,\"requestId\":\"%s\"}", id);
    assert_int_equal(decode(json, &cmd), EM_OK);
    assert_string_equal(cmd.request_id, id);
    em_command_cleanup(&cmd);
    id[64] = 'a';
    id[65] = '\0';
    snprintf(json, sizeof(json), "{\"type\":\"wake\",\"timestamp\":1,\"requestId\":\"%s\"}", id);
    assert_decode_refused(json, EM_ERR_VALIDATION, "requestId");
    assert_string_equal(last_err.message, "must be 1-64 characters of A-Z a-z 0-9 _ -");
    assert_decode_refused("{\"type\":\"wake\",\"timestamp\":1,\"requestId\":\"\"}",
                          EM_ERR_VALIDATION, "requestId");
    assert_decode_refused("{\"type\":\"wake\",\"timestamp\":1,\"requestId\":\"req 1\"}",
                          EM_ERR_VALIDATION, "requestId");
    assert_decode_refused("{\"type\":\"wake\",\"timestamp\":1,\"requestId\":\"req/1\"}",
                          EM_ERR_VALIDATION, "requestId");
    assert_decode_refused("{\"type\":\"wake\",\"timestamp\":1,\"requestId\":\"r\\u0000x\"}",
                          EM_ERR_MESSAGE_FORMAT, NULL);
    assert_decode_refused("{\"type\":\"wake\",\"timestamp\":1,\"requestId\":42}", EM_ERR_VALIDATION,
                          "requestId");
    assert_decode_refused("{\"type\":\"wake\",\"timestamp\":1}", EM_ERR_VALIDATION, "requestId");
}

static void decode_timestamp_must_be_an_integer(void **state)
{
    (void)state;
    assert_decode_refused("{\"type\":\"wake\",\"requestId\":\"r\"}", EM_ERR_VALIDATION,
                          "timestamp");
    assert_decode_refused("{\"type\":\"wake\",\"timestamp\":\"1700000000000\",\"requestId\":\"r\"}",
                          EM_ERR_VALIDATION, "timestamp");
    assert_decode_refused("{\"type\":\"wake\",\"timestamp\":1.5,\"requestId\":\"r\"}",
                          EM_ERR_VALIDATION, "timestamp");
    assert_decode_refused("{\"type\":\"wake\",\"timestamp\":-1,\"requestId\":\"r\"}",
                          EM_ERR_VALIDATION, "timestamp");
    assert_decode_refused("{\"type\":\"wake\",\"timestamp\":1e300,\"requestId\":\"r\"}",
                          EM_ERR_VALIDATION, "timestamp");
}

static void decode_ignores_unknown_top_level_keys(void **state)
{
    (void)state;
    em_command_t cmd;
    assert_int_equal(decode("{\"type\":\"wake\",\"payload\":{},\"timestamp\":5,\"requestId\":"
                            "\"req_1\",\"aud\":\"dev-1\",\"jti\":\"req_1\",\"iat\":1,\"exp\":2}",
                            &cmd),
                     EM_OK);
    assert_string_equal(cmd.payload_json, "{}");
    em_command_cleanup(&cmd);
}

static void decode_refuses_duplicate_keys(void **state)
{
    (void)state;
    assert_decode_refused("{\"type\":\"wake\",\"type\":\"reset\",\"timestamp\":1,"
                          "\"requestId\":\"r\"}",
                          EM_ERR_VALIDATION, "type");
    assert_decode_refused("{\"type\":\"wake\",\"timestamp\":1,\"requestId\":\"a\","
                          "\"requestId\":\"b\"}",
                          EM_ERR_VALIDATION, "requestId");
    assert_decode_refused("{\"type\":\"reset\",\"payload\":{\"confirm\":true},"
                          "\"payload\":{},\"timestamp\":1,\"requestId\":\"r\"}",
                          EM_ERR_VALIDATION, "payload");
    assert_decode_refused("{\"type\":\"wake\",\"timestamp\":1,\"timestamp\":2,\"requestId\":\"r\"}",
                          EM_ERR_VALIDATION, "timestamp");
}

static void decode_refuses_malformed_messages(void **state)
{
    (void)state;
    assert_decode_refused("[]", EM_ERR_MESSAGE_FORMAT, NULL);
    assert_decode_refused("\"sleep\"", EM_ERR_MESSAGE_FORMAT, NULL);
    assert_decode_refused("{\"type\":\"wake\"", EM_ERR_MESSAGE_FORMAT, NULL);
    assert_decode_refused("", EM_ERR_MESSAGE_FORMAT, NULL);
    assert_decode_refused("{\"type\":\"wake\",\"timestamp\":1,\"requestId\":\"r\"} trailing",
                          EM_ERR_MESSAGE_FORMAT, NULL);
    em_command_t cmd;
    assert_int_equal(em_command_decode(NULL, 0, &cmd, NULL), EM_ERR_MESSAGE_FORMAT);
    assert_int_equal(em_command_decode("{}", 2, NULL, NULL), EM_ERR_INVALID_ARGUMENT);
}

static void decode_refuses_oversized_configure_payload(void **state)
{
    (void)state;
    size_t n = EM_CMD_PAYLOAD_MAX; /* {"k":"x..."} is then 8 bytes over */
    size_t size = n + 128;
    char *json = malloc(size);
    assert_non_null(json);
    int k = snprintf(json, size, "{\"type\":\"configure\",\"payload\":{\"k\":\"");
    memset(json + k, 'x', n);
    snprintf(json + k + n, size - k - n, "\"},\"timestamp\":1,\"requestId\":\"r\"}");
    assert_decode_refused(json, EM_ERR_VALIDATION, "payload");
    free(json);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(command_type_names_round_trip),
        cmocka_unit_test(command_type_name_out_of_range_is_null),
        cmocka_unit_test(command_type_parse_is_exact),
        cmocka_unit_test(sleep_accepts_no_payload_or_empty_object),
        cmocka_unit_test(sleep_duration_bounds),
        cmocka_unit_test(sleep_duration_must_be_an_integer),
        cmocka_unit_test(sleep_refuses_unknown_keys),
        cmocka_unit_test(sleep_refuses_duplicate_duration),
        cmocka_unit_test(no_parameter_commands_accept_nothing_or_empty_object),
        cmocka_unit_test(no_parameter_commands_refuse_any_key),
        cmocka_unit_test(update_version_is_optional),
        cmocka_unit_test(update_version_length_bounds),
        cmocka_unit_test(update_version_refuses_other_characters_and_types),
        cmocka_unit_test(update_refuses_unknown_keys),
        cmocka_unit_test(set_reporting_interval_bounds),
        cmocka_unit_test(set_reporting_interval_requires_interval),
        cmocka_unit_test(set_reporting_interval_refuses_non_integers),
        cmocka_unit_test(set_reporting_interval_refuses_unknown_keys),
        cmocka_unit_test(configure_requires_non_empty_object),
        cmocka_unit_test(configure_range_checks_config_keys),
        cmocka_unit_test(configure_passes_other_keys_through),
        cmocka_unit_test(configure_refuses_duplicate_config_keys),
        cmocka_unit_test(configure_payload_size_limit),
        cmocka_unit_test(configure_refuses_deep_nesting),
        cmocka_unit_test(payload_nesting_leaves_room_for_the_command_envelope),
        cmocka_unit_test(reset_requires_confirm_true),
        cmocka_unit_test(reset_refuses_unknown_keys),
        cmocka_unit_test(payload_must_be_an_object_for_every_type),
        cmocka_unit_test(payload_must_be_well_formed_json),
        cmocka_unit_test(payload_len_is_respected),
        cmocka_unit_test(validate_refuses_unknown_type),
        cmocka_unit_test(init_stores_compact_payload),
        cmocka_unit_test(init_without_payload_stores_null),
        cmocka_unit_test(init_stamps_current_time),
        cmocka_unit_test(init_makes_request_id_of_32_hex_digits),
        cmocka_unit_test(init_failure_leaves_nothing_to_free),
        cmocka_unit_test(cleanup_accepts_null_and_repeats),
        cmocka_unit_test(request_id_has_prefix_and_32_lowercase_hex),
        cmocka_unit_test(request_ids_are_unique),
        cmocka_unit_test(request_id_refuses_small_buffer),
        cmocka_unit_test(encode_writes_exact_wire_format),
        cmocka_unit_test(encode_without_payload_writes_empty_object),
        cmocka_unit_test(encode_writes_every_type_name),
        cmocka_unit_test(encode_writes_extreme_timestamps),
        cmocka_unit_test(encode_reports_buffer_too_small_at_every_size),
        cmocka_unit_test(encode_largest_command_fits_wire_max),
        cmocka_unit_test(encode_refuses_bad_request_id_and_type),
        cmocka_unit_test(decode_reads_wire_format),
        cmocka_unit_test(decode_without_payload_has_null_payload),
        cmocka_unit_test(decode_round_trips_every_type),
        cmocka_unit_test(decode_refuses_bad_type),
        cmocka_unit_test(decode_applies_payload_rules),
        cmocka_unit_test(decode_refuses_non_object_payload),
        cmocka_unit_test(decode_request_id_rules),
        cmocka_unit_test(decode_timestamp_must_be_an_integer),
        cmocka_unit_test(decode_ignores_unknown_top_level_keys),
        cmocka_unit_test(decode_refuses_duplicate_keys),
        cmocka_unit_test(decode_refuses_malformed_messages),
        cmocka_unit_test(decode_refuses_oversized_configure_payload),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
