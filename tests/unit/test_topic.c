/*
 * Tests for src/model/topic.c: the topic layout P<id>/<kind>.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "emiot/topic.h"

#define P     EM_TOPIC_PREFIX_DEFAULT
#define P_LEN (sizeof(EM_TOPIC_PREFIX_DEFAULT) - 1)

static em_err_t parse(const char *topic, const char **id, size_t *id_len, em_topic_kind_t *kind,
                      em_error_t *err)
{
    return em_topic_parse(P, P_LEN, topic, strlen(topic), id, id_len, kind, err);
}

static void assert_parse_fails(const char *topic, em_err_t code, const char *rule)
{
    const char *id = NULL;
    size_t id_len = 0;
    em_topic_kind_t kind = EM_TOPIC_STATUS;
    em_error_t err;
    em_error_clear(&err);
    em_err_t rc = parse(topic, &id, &id_len, &kind, &err);
    if (rc != code)
        fail_msg("'%s': got %d (%s), want %d", topic, rc, err.message, code);
    if (strstr(err.message, rule) == NULL)
        fail_msg("'%s': message '%s' lacks '%s'", topic, err.message, rule);
    assert_null(id);
}

static void test_parses_every_kind(void **state)
{
    (void)state;
    static const struct {
        const char *topic;
        em_topic_kind_t kind;
    } cases[] = {
        {"device/sensor-01/status", EM_TOPIC_STATUS},
        {"device/sensor-01/telemetry", EM_TOPIC_TELEMETRY},
        {"device/sensor-01/command", EM_TOPIC_COMMAND},
        {"device/sensor-01/response", EM_TOPIC_RESPONSE},
        {"device/sensor-01/event", EM_TOPIC_EVENT},
        {"device/sensor-01/availability", EM_TOPIC_AVAILABILITY},
    };
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        const char *id = NULL;
        size_t id_len = 0;
        em_topic_kind_t kind = (em_topic_kind_t)99;
        assert_int_equal(parse(cases[i].topic, &id, &id_len, &kind, NULL), EM_OK);
        assert_int_equal(kind, cases[i].kind);
        assert_int_equal(id_len, 9);
        assert_memory_equal(id, "sensor-01", 9);
        assert_ptr_equal(id, cases[i].topic + P_LEN); /* points into the topic */
    }
}

static void test_id_length_boundaries(void **state)
{
    (void)state;
    const char *id;
    size_t id_len;
    em_topic_kind_t kind;
    assert_int_equal(parse("device/abc/status", &id, &id_len, &kind, NULL), EM_OK);
    assert_int_equal(id_len, 3);
    char topic[128];
    snprintf(topic, sizeof(topic), "device/%s/status",
             "A123456789_123456789-1234567890123456789012345678z"); /* 50 */
    assert_int_equal(parse(topic, &id, &id_len, &kind, NULL), EM_OK);
    assert_int_equal(id_len, 50);
    assert_parse_fails("device/ab/status", EM_ERR_VALIDATION, "3 to 50");
    snprintf(topic, sizeof(topic), "device/%s/status",
             "A123456789_123456789-12345678901234567890123456789z"); /* 51 */
    assert_parse_fails(topic, EM_ERR_VALIDATION, "3 to 50");
    assert_parse_fails("device//status", EM_ERR_VALIDATION, "3 to 50");
}

static void test_id_characters(void **state)
{
    (void)state;
    assert_parse_fails("device/abc.d/status", EM_ERR_VALIDATION, "A-Z a-z 0-9 _ -");
    assert_parse_fails("device/a+b/status", EM_ERR_VALIDATION, "A-Z a-z 0-9 _ -");
    assert_parse_fails("device/a#b/status", EM_ERR_VALIDATION, "A-Z a-z 0-9 _ -");
    assert_parse_fails("device/ab c/status", EM_ERR_VALIDATION, "A-Z a-z 0-9 _ -");
    assert_parse_fails("device/ab\xc3\xa9/status", EM_ERR_VALIDATION, "A-Z a-z 0-9 _ -");
}

static void test_id_with_nul_byte_is_refused(void **state)
{
    (void)state;
    const char topic[] = "device/ab\0cd/status";
    const char *id;
    size_t id_len;
    em_topic_kind_t kind;
    assert_int_equal(em_topic_parse(P, P_LEN, topic, sizeof(topic) - 1, &id, &id_len, &kind, NULL),
                     EM_ERR_VALIDATION);
}

static void test_wrong_prefix_is_a_protocol_error(void **state)
{
    (void)state;
    assert_parse_fails("devices/abc/status", EM_ERR_PROTOCOL, "prefix");
    assert_parse_fails("Device/abc/status", EM_ERR_PROTOCOL, "prefix");
    assert_parse_fails("dev", EM_ERR_PROTOCOL, "prefix");
    assert_parse_fails("", EM_ERR_PROTOCOL, "prefix");
}

static void test_unknown_kind_is_a_protocol_error(void **state)
{
    (void)state;
    assert_parse_fails("device/abc/state", EM_ERR_PROTOCOL, "unknown topic kind");
    assert_parse_fails("device/abc/Status", EM_ERR_PROTOCOL, "unknown topic kind");
    assert_parse_fails("device/abc/statuss", EM_ERR_PROTOCOL, "unknown topic kind");
    assert_parse_fails("device/abc/", EM_ERR_PROTOCOL, "unknown topic kind");
}

static void test_missing_kind_is_a_protocol_error(void **state)
{
    (void)state;
    assert_parse_fails("device/abc", EM_ERR_PROTOCOL, "no kind level");
    assert_parse_fails("device/", EM_ERR_PROTOCOL, "no kind level");
}

static void test_extra_levels_are_a_protocol_error(void **state)
{
    (void)state;
    assert_parse_fails("device/abc/status/x", EM_ERR_PROTOCOL, "levels after the kind");
    assert_parse_fails("device/abc/status/", EM_ERR_PROTOCOL, "levels after the kind");
    assert_parse_fails("device/a/b/status", EM_ERR_PROTOCOL, "levels after the kind");
}

static void test_overlong_topic_is_a_protocol_error(void **state)
{
    (void)state;
    char topic[EM_TOPIC_MAX + 2];
    memset(topic, 'a', sizeof(topic) - 1);
    memcpy(topic, P, P_LEN);
    topic[sizeof(topic) - 1] = '\0';
    assert_parse_fails(topic, EM_ERR_PROTOCOL, "longer than 160");
}

static void test_parse_reads_only_len_bytes(void **state)
{
    (void)state;
    const char *topic = "device/abc/statusXYZ";
    const char *id;
    size_t id_len;
    em_topic_kind_t kind;
    assert_int_equal(em_topic_parse(P, P_LEN, topic, 17, &id, &id_len, &kind, NULL), EM_OK);
    assert_int_equal(kind, EM_TOPIC_STATUS);
}

static void test_custom_prefix_with_levels(void **state)
{
    (void)state;
    const char *prefix = "site/a1/meters/";
    const char *topic = "site/a1/meters/m-001/telemetry";
    const char *id;
    size_t id_len;
    em_topic_kind_t kind;
    assert_int_equal(
        em_topic_parse(prefix, strlen(prefix), topic, strlen(topic), &id, &id_len, &kind, NULL),
        EM_OK);
    assert_int_equal(id_len, 5);
    assert_memory_equal(id, "m-001", 5);
    assert_int_equal(kind, EM_TOPIC_TELEMETRY);
}

static void test_parse_refuses_missing_arguments(void **state)
{
    (void)state;
    const char *id;
    size_t id_len;
    em_topic_kind_t kind;
    const char *t = "device/abc/status";
    size_t n = strlen(t);
    assert_int_equal(em_topic_parse(P, P_LEN, NULL, 0, &id, &id_len, &kind, NULL),
                     EM_ERR_INVALID_ARGUMENT);
    assert_int_equal(em_topic_parse(NULL, 3, t, n, &id, &id_len, &kind, NULL),
                     EM_ERR_INVALID_ARGUMENT);
    assert_int_equal(em_topic_parse(P, P_LEN, t, n, NULL, &id_len, &kind, NULL),
                     EM_ERR_INVALID_ARGUMENT);
    assert_int_equal(em_topic_parse(P, P_LEN, t, n, &id, NULL, &kind, NULL),
                     EM_ERR_INVALID_ARGUMENT);
    assert_int_equal(em_topic_parse(P, P_LEN, t, n, &id, &id_len, NULL, NULL),
                     EM_ERR_INVALID_ARGUMENT);
}

static void test_kind_names(void **state)
{
    (void)state;
    assert_string_equal(em_topic_kind_name(EM_TOPIC_STATUS), "status");
    assert_string_equal(em_topic_kind_name(EM_TOPIC_TELEMETRY), "telemetry");
    assert_string_equal(em_topic_kind_name(EM_TOPIC_COMMAND), "command");
    assert_string_equal(em_topic_kind_name(EM_TOPIC_RESPONSE), "response");
    assert_string_equal(em_topic_kind_name(EM_TOPIC_EVENT), "event");
    assert_string_equal(em_topic_kind_name(EM_TOPIC_AVAILABILITY), "availability");
    assert_null(em_topic_kind_name((em_topic_kind_t)6));
    assert_null(em_topic_kind_name((em_topic_kind_t)-1));
}

static void test_prefix_validation_accepts(void **state)
{
    (void)state;
    assert_int_equal(em_topic_prefix_validate("device/", NULL), EM_OK);
    assert_int_equal(em_topic_prefix_validate("/", NULL), EM_OK);
    assert_int_equal(em_topic_prefix_validate("a b/c~d/", NULL), EM_OK);
    char p[EM_TOPIC_PREFIX_MAX + 1];
    memset(p, 'x', EM_TOPIC_PREFIX_MAX);
    p[EM_TOPIC_PREFIX_MAX - 1] = '/';
    p[EM_TOPIC_PREFIX_MAX] = '\0';
    assert_int_equal(em_topic_prefix_validate(p, NULL), EM_OK);
}

static void test_prefix_validation_refuses(void **state)
{
    (void)state;
    char p[EM_TOPIC_PREFIX_MAX + 2];
    memset(p, 'x', EM_TOPIC_PREFIX_MAX + 1);
    p[EM_TOPIC_PREFIX_MAX] = '/';
    p[EM_TOPIC_PREFIX_MAX + 1] = '\0';
    const char *bad[] = {"", "device", "dev+ice/", "dev#/", "d\tev/", "d\xc3\xa9v/", "dev\x7f/", p};
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        em_error_t err;
        em_error_clear(&err);
        if (em_topic_prefix_validate(bad[i], &err) != EM_ERR_VALIDATION)
            fail_msg("prefix '%s' accepted", bad[i]);
        assert_string_equal(err.field, "prefix");
    }
    assert_int_equal(em_topic_prefix_validate(NULL, NULL), EM_ERR_VALIDATION);
}

static void test_build_every_kind_and_parse_back(void **state)
{
    (void)state;
    for (int k = EM_TOPIC_STATUS; k <= EM_TOPIC_AVAILABILITY; k++) {
        char buf[EM_TOPIC_MAX];
        size_t n = 0;
        assert_int_equal(em_topic_build(P, "plug_42", (em_topic_kind_t)k, buf, sizeof(buf), &n),
                         EM_OK);
        assert_int_equal(n, strlen(buf));
        const char *id;
        size_t id_len;
        em_topic_kind_t kind;
        assert_int_equal(em_topic_parse(P, P_LEN, buf, n, &id, &id_len, &kind, NULL), EM_OK);
        assert_int_equal(kind, k);
        assert_int_equal(id_len, 7);
    }
}

static void test_build_writes_expected_topic(void **state)
{
    (void)state;
    char buf[64];
    assert_int_equal(em_topic_build(P, "sensor-01", EM_TOPIC_COMMAND, buf, sizeof(buf), NULL),
                     EM_OK);
    assert_string_equal(buf, "device/sensor-01/command");
}

static void test_build_into_small_buffer_reports_it(void **state)
{
    (void)state;
    char buf[64];
    const size_t need = strlen("device/abc/status") + 1;
    assert_int_equal(em_topic_build(P, "abc", EM_TOPIC_STATUS, buf, need - 1, NULL),
                     EM_ERR_BUFFER_TOO_SMALL);
    assert_int_equal(em_topic_build(P, "abc", EM_TOPIC_STATUS, buf, 0, NULL),
                     EM_ERR_BUFFER_TOO_SMALL);
    assert_int_equal(em_topic_build(P, "abc", EM_TOPIC_STATUS, buf, need, NULL), EM_OK);
}

static void test_build_refuses_bad_ids_and_prefixes(void **state)
{
    (void)state;
    char buf[128];
    assert_int_equal(em_topic_build(P, "ab", EM_TOPIC_STATUS, buf, sizeof(buf), NULL),
                     EM_ERR_VALIDATION);
    assert_int_equal(em_topic_build(P, "a/bc", EM_TOPIC_STATUS, buf, sizeof(buf), NULL),
                     EM_ERR_VALIDATION);
    assert_int_equal(em_topic_build(P, "+++", EM_TOPIC_STATUS, buf, sizeof(buf), NULL),
                     EM_ERR_VALIDATION);
    assert_int_equal(em_topic_build(P, NULL, EM_TOPIC_STATUS, buf, sizeof(buf), NULL),
                     EM_ERR_VALIDATION);
    assert_int_equal(em_topic_build(P, "A123456789_123456789-12345678901234567890123456789z",
                                    EM_TOPIC_STATUS, buf, sizeof(buf), NULL),
                     EM_ERR_VALIDATION);
    assert_int_equal(em_topic_build("dev#/", "abc", EM_TOPIC_STATUS, buf, sizeof(buf), NULL),
                     EM_ERR_VALIDATION);
    assert_int_equal(em_topic_build(P, "abc", (em_topic_kind_t)6, buf, sizeof(buf), NULL),
                     EM_ERR_INVALID_ARGUMENT);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_parses_every_kind),
        cmocka_unit_test(test_id_length_boundaries),
        cmocka_unit_test(test_id_characters),
        cmocka_unit_test(test_id_with_nul_byte_is_refused),
        cmocka_unit_test(test_wrong_prefix_is_a_protocol_error),
        cmocka_unit_test(test_unknown_kind_is_a_protocol_error),
        cmocka_unit_test(test_missing_kind_is_a_protocol_error),
        cmocka_unit_test(test_extra_levels_are_a_protocol_error),
        cmocka_unit_test(test_overlong_topic_is_a_protocol_error),
        cmocka_unit_test(test_parse_reads_only_len_bytes),
        cmocka_unit_test(test_custom_prefix_with_levels),
        cmocka_unit_test(test_parse_refuses_missing_arguments),
        cmocka_unit_test(test_kind_names),
        cmocka_unit_test(test_prefix_validation_accepts),
        cmocka_unit_test(test_prefix_validation_refuses),
        cmocka_unit_test(test_build_every_kind_and_parse_back),
        cmocka_unit_test(test_build_writes_expected_topic),
        cmocka_unit_test(test_build_into_small_buffer_reports_it),
        cmocka_unit_test(test_build_refuses_bad_ids_and_prefixes),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
