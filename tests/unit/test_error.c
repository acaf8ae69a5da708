/*
 * emiot tests - test_error.c: error codes, names, descriptions and details.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include <cmocka.h>

#include "emiot/error.h"

/* Every code in the table, in order, from the table itself. */
static const em_err_t ALL_CODES[] = {
#define CODE(name, value, type_name, desc) EM_ERR_##name,
    EM_ERR_TABLE(CODE)
#undef CODE
};
#define NCODES (sizeof(ALL_CODES) / sizeof(ALL_CODES[0]))

static void test_codes_are_numbered_densely_from_zero(void **state)
{
    (void)state;
    for (size_t i = 0; i < NCODES; i++)
        assert_int_equal(ALL_CODES[i], (int)i);
    assert_int_equal(EM_OK, 0);
    assert_int_equal(EM_OK, EM_ERR_OK);
}

static void test_every_code_has_a_distinct_name(void **state)
{
    (void)state;
    for (size_t i = 0; i < NCODES; i++) {
        const char *a = em_err_name(ALL_CODES[i]);
        assert_non_null(a);
        assert_true(strlen(a) > 0);
        assert_string_not_equal(a, "unknown");
        for (size_t j = i + 1; j < NCODES; j++)
            assert_string_not_equal(a, em_err_name(ALL_CODES[j]));
    }
}

static void test_every_code_has_a_distinct_description(void **state)
{
    (void)state;
    for (size_t i = 0; i < NCODES; i++) {
        const char *a = em_strerror(ALL_CODES[i]);
        assert_non_null(a);
        assert_true(strlen(a) > 0);
        assert_string_not_equal(a, "unknown error");
        for (size_t j = i + 1; j < NCODES; j++)
            assert_string_not_equal(a, em_strerror(ALL_CODES[j]));
    }
}

static void test_names_are_snake_case(void **state)
{
    (void)state;
    for (size_t i = 0; i < NCODES; i++) {
        for (const char *p = em_err_name(ALL_CODES[i]); *p != '\0'; p++)
            assert_true((*p >= 'a' && *p <= 'z') || *p == '_');
    }
}

static void test_names_match_energy_manager_iot_categories(void **state)
{
    (void)state;
    /* energy-manager-iot's ErrorType values, in its order, for codes 1..13. */
    static const char *const EMIOT_TYPES[] = {
        "connection",      "validation",     "authentication",    "device_not_found",
        "group_not_found", "command_failed", "configuration",     "timeout",
        "message_format",  "protocol",       "permission_denied", "rate_limit_exceeded",
        "internal",
    };
    for (size_t i = 0; i < sizeof(EMIOT_TYPES) / sizeof(EMIOT_TYPES[0]); i++)
        assert_string_equal(em_err_name((em_err_t)(i + 1)), EMIOT_TYPES[i]);
    assert_string_equal(em_err_name(EM_ERR_CONNECTION), "connection");
    assert_string_equal(em_err_name(EM_ERR_RATE_LIMIT_EXCEEDED), "rate_limit_exceeded");
    assert_string_equal(em_err_name(EM_ERR_INTERNAL), "internal");
    assert_string_equal(em_err_name(EM_OK), "ok");
}

static void test_unknown_codes_have_fallback_name_and_description(void **state)
{
    (void)state;
    const int unknown[] = {-1, (int)NCODES, 1000, INT32_MIN, INT32_MAX};
    for (size_t i = 0; i < sizeof(unknown) / sizeof(unknown[0]); i++) {
        assert_string_equal(em_err_name((em_err_t)unknown[i]), "unknown");
        assert_string_equal(em_strerror((em_err_t)unknown[i]), "unknown error");
    }
}

static void test_severity_names(void **state)
{
    (void)state;
    assert_string_equal(em_severity_name(EM_SEV_LOW), "low");
    assert_string_equal(em_severity_name(EM_SEV_MEDIUM), "medium");
    assert_string_equal(em_severity_name(EM_SEV_HIGH), "high");
    assert_string_equal(em_severity_name(EM_SEV_CRITICAL), "critical");
    assert_string_equal(em_severity_name((em_severity_t)4), "unknown");
    assert_string_equal(em_severity_name((em_severity_t)-1), "unknown");
}

static void test_error_set_fills_every_field_and_returns_code(void **state)
{
    (void)state;
    em_error_t err;
    em_error_clear(&err);
    em_err_t rc = em_error_set(&err, EM_ERR_VALIDATION, EM_SEV_HIGH, "batteryLevel",
                               "must be 0..%d, got %d", 100, 130);
    assert_int_equal(rc, EM_ERR_VALIDATION);
    assert_int_equal(err.code, EM_ERR_VALIDATION);
    assert_int_equal(err.severity, EM_SEV_HIGH);
    assert_string_equal(err.field, "batteryLevel");
    assert_string_equal(err.message, "must be 0..100, got 130");
    assert_string_equal(err.device_id, "");
}

static void test_error_set_accepts_null_err(void **state)
{
    (void)state;
    assert_int_equal(em_error_set(NULL, EM_ERR_TIMEOUT, EM_SEV_LOW, "f", "x %d", 1),
                     EM_ERR_TIMEOUT);
    assert_int_equal(em_error_set(NULL, EM_OK, EM_SEV_LOW, NULL, NULL), EM_OK);
}

static void test_error_set_null_field_is_empty(void **state)
{
    (void)state;
    em_error_t err;
    memset(&err, 'x', sizeof(err));
    em_error_set(&err, EM_ERR_PROTOCOL, EM_SEV_MEDIUM, NULL, "bad");
    assert_string_equal(err.field, "");
    assert_string_equal(err.message, "bad");
}

static void test_error_set_null_format_uses_description(void **state)
{
    (void)state;
    em_error_t err;
    em_error_clear(&err);
    em_error_set(&err, EM_ERR_GROUP_NOT_FOUND, EM_SEV_LOW, "group", NULL);
    assert_string_equal(err.message, em_strerror(EM_ERR_GROUP_NOT_FOUND));
}

static void test_error_set_truncates_long_message(void **state)
{
    (void)state;
    char big[EM_ERROR_MESSAGE_MAX * 3];
    memset(big, 'm', sizeof(big) - 1);
    big[sizeof(big) - 1] = '\0';
    em_error_t err;
    em_error_clear(&err);
    em_error_set(&err, EM_ERR_VALIDATION, EM_SEV_LOW, NULL, "%s", big);
    assert_int_equal(strlen(err.message), EM_ERROR_MESSAGE_MAX);
    assert_memory_equal(err.message, big, EM_ERROR_MESSAGE_MAX);
}

static void test_error_set_truncates_long_field(void **state)
{
    (void)state;
    char big[EM_ERROR_FIELD_MAX * 2];
    memset(big, 'f', sizeof(big) - 1);
    big[sizeof(big) - 1] = '\0';
    em_error_t err;
    em_error_clear(&err);
    em_error_set(&err, EM_ERR_VALIDATION, EM_SEV_LOW, big, "m");
    assert_int_equal(strlen(err.field), EM_ERROR_FIELD_MAX);
    assert_memory_equal(err.field, big, EM_ERROR_FIELD_MAX);
    assert_string_equal(err.message, "m");
}

static void test_error_set_field_exactly_at_maximum_is_kept(void **state)
{
    (void)state;
    char exact[EM_ERROR_FIELD_MAX + 1];
    memset(exact, 'e', EM_ERROR_FIELD_MAX);
    exact[EM_ERROR_FIELD_MAX] = '\0';
    em_error_t err;
    em_error_clear(&err);
    em_error_set(&err, EM_ERR_VALIDATION, EM_SEV_LOW, exact, "m");
    assert_string_equal(err.field, exact);
}

static void test_error_set_device_copies_and_truncates(void **state)
{
    (void)state;
    em_error_t err;
    em_error_clear(&err);
    em_error_set_device(&err, "sensor-01");
    assert_string_equal(err.device_id, "sensor-01");
    char big[EM_ERROR_DEVICE_MAX * 2];
    memset(big, 'd', sizeof(big) - 1);
    big[sizeof(big) - 1] = '\0';
    em_error_set_device(&err, big);
    assert_int_equal(strlen(err.device_id), EM_ERROR_DEVICE_MAX);
    em_error_set_device(&err, NULL);
    assert_string_equal(err.device_id, "");
}

static void test_error_set_device_accepts_null_err(void **state)
{
    (void)state;
    em_error_set_device(NULL, "sensor-01");
    em_error_set_device(NULL, NULL);
}

static void test_error_set_leaves_device_id_alone(void **state)
{
    (void)state;
    em_error_t err;
    em_error_clear(&err);
    em_error_set_device(&err, "sensor-01");
    em_error_set(&err, EM_ERR_DEVICE_NOT_FOUND, EM_SEV_LOW, NULL, "gone");
    assert_string_equal(err.device_id, "sensor-01");
}

static void test_error_clear_resets_everything(void **state)
{
    (void)state;
    em_error_t err;
    em_error_set(&err, EM_ERR_TLS, EM_SEV_CRITICAL, "cert", "expired");
    em_error_set_device(&err, "sensor-01");
    em_error_clear(&err);
    assert_int_equal(err.code, EM_OK);
    assert_int_equal(err.severity, EM_SEV_LOW);
    assert_string_equal(err.field, "");
    assert_string_equal(err.device_id, "");
    assert_string_equal(err.message, "");
}

static void test_error_clear_accepts_null(void **state)
{
    (void)state;
    em_error_clear(NULL);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_codes_are_numbered_densely_from_zero),
        cmocka_unit_test(test_every_code_has_a_distinct_name),
        cmocka_unit_test(test_every_code_has_a_distinct_description),
        cmocka_unit_test(test_names_are_snake_case),
        cmocka_unit_test(test_names_match_energy_manager_iot_categories),
        cmocka_unit_test(test_unknown_codes_have_fallback_name_and_description),
        cmocka_unit_test(test_severity_names),
        cmocka_unit_test(test_error_set_fills_every_field_and_returns_code),
        cmocka_unit_test(test_error_set_accepts_null_err),
        cmocka_unit_test(test_error_set_null_field_is_empty),
        cmocka_unit_test(test_error_set_null_format_uses_description),
        cmocka_unit_test(test_error_set_truncates_long_message),
        cmocka_unit_test(test_error_set_truncates_long_field),
        cmocka_unit_test(test_error_set_field_exactly_at_maximum_is_kept),
        cmocka_unit_test(test_error_set_device_copies_and_truncates),
        cmocka_unit_test(test_error_set_device_accepts_null_err),
        cmocka_unit_test(test_error_set_leaves_device_id_alone),
        cmocka_unit_test(test_error_clear_resets_everything),
        cmocka_unit_test(test_error_clear_accepts_null),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
