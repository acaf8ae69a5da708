/*
 * emiot tests - test_dynsec_answer.c: how the dynamic-security client reads
 * the plugin's answers (src/dynsec/dynsec_internal.h): which answer is taken
 * for an exchange, when it matches the commands sent, and what a getClient
 * response says about the client's owner. The exchange itself, against a
 * real mosquitto with the plugin, is tests/integration/test_dynsec.c.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "dynsec/dynsec_internal.h"

#define WANT "0123456789abcdef-1"
#define MARK "emiot device dev-1"

static cJSON *take(const char *text, const char *want)
{
    return em__dynsec_answer_take(text, strlen(text), want);
}

/* [{"command":names[0]}, ...] */
static cJSON *commands(const char *const *names, size_t n)
{
    cJSON *arr = cJSON_CreateArray();
    assert_non_null(arr);
    for (size_t i = 0; i < n; i++) {
        cJSON *c = cJSON_CreateObject();
        assert_non_null(c);
        assert_true(cJSON_AddItemToArray(arr, c));
        assert_non_null(cJSON_AddStringToObject(c, "command", names[i]));
    }
    return arr;
}

static void test_answer_for_the_awaited_exchange_is_taken_whole(void **state)
{
    (void)state;
    cJSON *a = take("{\"responses\":[{\"command\":\"createRole\",\"correlationData\":\"" WANT
                    "\"},{\"command\":\"modifyRole\",\"error\":\"Role not found\","
                    "\"correlationData\":\"" WANT "\"}],\"extra\":1}",
                    WANT);
    assert_non_null(a);
    assert_true(cJSON_IsArray(a));
    assert_int_equal(cJSON_GetArraySize(a), 2);
    assert_string_equal(em__dynsec_response_error(cJSON_GetArrayItem(a, 1)), "Role not found");
    cJSON_Delete(a);
}

static void test_answer_is_read_within_its_length_only(void **state)
{
    (void)state;
    /* The payload is not NUL-terminated: a length that stops before the
     * closing brace leaves an incomplete document. */
    static const char text[] =
        "{\"responses\":[{\"command\":\"getClient\",\"correlationData\":\"" WANT "\"}]}";
    assert_null(em__dynsec_answer_take(text, sizeof text - 2, WANT));
    cJSON *a = em__dynsec_answer_take(text, sizeof text - 1, WANT);
    assert_non_null(a);
    cJSON_Delete(a);
}

static void test_answer_to_another_exchange_is_ignored(void **state)
{
    (void)state;
    assert_null(take("{\"responses\":[{\"command\":\"getClient\",\"correlationData\":"
                     "\"0123456789abcdef-2\"}]}",
                     WANT));
    assert_null(take("{\"responses\":[{\"command\":\"getClient\",\"correlationData\":"
                     "\"fedcba9876543210-1\"}]}",
                     WANT));
    /* Only the first response names the exchange. */
    assert_null(take("{\"responses\":[{\"command\":\"getClient\"},{\"command\":\"getClient\","
                     "\"correlationData\":\"" WANT "\"}]}",
                     WANT));
}

static void test_answer_without_a_correlation_string_is_ignored(void **state)
{
    (void)state;
    assert_null(take("{\"responses\":[{\"command\":\"getClient\"}]}", WANT));
    assert_null(take("{\"responses\":[{\"command\":\"getClient\",\"correlationData\":1}]}", WANT));
    assert_null(
        take("{\"responses\":[{\"command\":\"getClient\",\"correlationData\":null}]}", WANT));
}

static void test_malformed_answers_are_ignored(void **state)
{
    (void)state;
    static const char *const bad[] = {
        "",
        "not json",
        "{\"responses\":[{\"command\":\"getClient\",\"correlationData\":\"" WANT "\"}]",
        "[{\"command\":\"getClient\",\"correlationData\":\"" WANT "\"}]",
        "{\"responses\":{\"command\":\"getClient\",\"correlationData\":\"" WANT "\"}}",
        "{\"responses\":[]}",
        "{\"responses\":null}",
        "{\"Responses\":[{\"command\":\"getClient\",\"correlationData\":\"" WANT "\"}]}",
    };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++)
        assert_null(take(bad[i], WANT));
}

static void test_answer_needs_a_correlation_to_wait_for(void **state)
{
    (void)state;
    static const char text[] =
        "{\"responses\":[{\"command\":\"getClient\",\"correlationData\":\"\"}]}";
    assert_null(take(text, ""));
    assert_null(take(text, NULL));
    assert_null(em__dynsec_answer_take(NULL, 10, WANT));
}

static void test_answer_longer_than_the_limit_is_ignored(void **state)
{
    (void)state;
    static const char head[] =
        "{\"responses\":[{\"command\":\"getClient\",\"correlationData\":\"" WANT "\"}],\"pad\":\"";
    size_t len = EM__DYNSEC_ANSWER_MAX + 1;
    char *text = malloc(len);
    assert_non_null(text);
    memset(text, 'x', len);
    memcpy(text, head, sizeof head - 1);
    memcpy(text + len - 2, "\"}", 2);
    assert_null(em__dynsec_answer_take(text, len, WANT));
    /* The same answer one byte shorter is within the limit. */
    memcpy(text + len - 3, "\"}", 2);
    cJSON *a = em__dynsec_answer_take(text, len - 1, WANT);
    assert_non_null(a);
    cJSON_Delete(a);
    free(text);
}

static void test_answer_matches_its_commands_in_order(void **state)
{
    (void)state;
    static const char *const names[] = {"deleteClient", "deleteRole"};
    cJSON *cmds = commands(names, 2);
    cJSON *a = take("{\"responses\":[{\"command\":\"deleteClient\",\"correlationData\":\"" WANT
                    "\"},{\"command\":\"deleteRole\"}]}",
                    WANT);
    assert_non_null(a);
    assert_true(em__dynsec_answer_matches(cmds, a));
    cJSON_Delete(a);
    cJSON_Delete(cmds);
}

static void test_answer_out_of_order_or_of_another_size_does_not_match(void **state)
{
    (void)state;
    static const char *const names[] = {"deleteClient", "deleteRole"};
    cJSON *cmds = commands(names, 2);
    static const char *const answers[] = {
        "{\"responses\":[{\"command\":\"deleteRole\",\"correlationData\":\"" WANT
        "\"},{\"command\":\"deleteClient\"}]}",
        "{\"responses\":[{\"command\":\"deleteClient\",\"correlationData\":\"" WANT "\"}]}",
        "{\"responses\":[{\"command\":\"deleteClient\",\"correlationData\":\"" WANT
        "\"},{\"command\":\"deleteRole\"},{\"command\":\"deleteRole\"}]}",
        "{\"responses\":[{\"command\":\"deleteClient\",\"correlationData\":\"" WANT
        "\"},{\"command\":1}]}",
        "{\"responses\":[{\"command\":\"deleteClient\",\"correlationData\":\"" WANT "\"},{}]}",
        "{\"responses\":[{\"command\":\"deleteClient\",\"correlationData\":\"" WANT
        "\"},{\"command\":\"deleterole\"}]}",
    };
    for (size_t i = 0; i < sizeof answers / sizeof answers[0]; i++) {
        cJSON *a = take(answers[i], WANT);
        assert_non_null(a);
        assert_false(em__dynsec_answer_matches(cmds, a));
        cJSON_Delete(a);
    }
    cJSON_Delete(cmds);
}

static void test_match_needs_two_arrays(void **state)
{
    (void)state;
    static const char *const names[] = {"getClient"};
    cJSON *cmds = commands(names, 1);
    cJSON *obj = cJSON_CreateObject();
    assert_non_null(obj);
    assert_false(em__dynsec_answer_matches(NULL, cmds));
    assert_false(em__dynsec_answer_matches(cmds, NULL));
    assert_false(em__dynsec_answer_matches(cmds, obj));
    assert_false(em__dynsec_answer_matches(obj, cmds));
    cJSON_Delete(obj);
    cJSON_Delete(cmds);
}

static void test_error_is_the_string_null_when_absent_and_generic_otherwise(void **state)
{
    (void)state;
    cJSON *r = cJSON_Parse("[{\"error\":\"Client not found\"},{},{\"error\":null},{\"error\":7}]");
    assert_non_null(r);
    assert_string_equal(em__dynsec_response_error(cJSON_GetArrayItem(r, 0)), "Client not found");
    assert_null(em__dynsec_response_error(cJSON_GetArrayItem(r, 1)));
    assert_null(em__dynsec_response_error(cJSON_GetArrayItem(r, 2)));
    assert_string_equal(em__dynsec_response_error(cJSON_GetArrayItem(r, 3)), "error");
    assert_null(em__dynsec_response_error(NULL));
    cJSON_Delete(r);
}

static void test_not_found_is_the_errors_ending(void **state)
{
    (void)state;
    assert_true(em__dynsec_is_not_found("Client not found"));
    assert_true(em__dynsec_is_not_found("Role Not Found"));
    assert_true(em__dynsec_is_not_found("not found"));
    assert_false(em__dynsec_is_not_found("ot found"));
    assert_false(em__dynsec_is_not_found("Client not found here"));
    assert_false(em__dynsec_is_not_found("Permission denied"));
    assert_false(em__dynsec_is_not_found(NULL));
}

static em__dynsec_owner_t owner_of(const char *json, const char **why)
{
    cJSON *r = cJSON_Parse(json);
    assert_non_null(r);
    em__dynsec_owner_t o = em__dynsec_client_owner(r, MARK, why);
    /* why points into r: the callers here only compare it with NULL. */
    cJSON_Delete(r);
    return o;
}

static void test_client_with_the_marker_is_ours(void **state)
{
    (void)state;
    const char *why = "unset";
    assert_int_equal(owner_of("{\"command\":\"getClient\",\"data\":{\"client\":{\"username\":"
                              "\"dev-1\",\"textname\":\"" MARK "\"}}}",
                              &why),
                     EM__DYNSEC_CLIENT_OURS);
    assert_null(why);
}

static void test_client_without_the_exact_marker_is_foreign(void **state)
{
    (void)state;
    static const char *const answers[] = {
        "{\"data\":{\"client\":{\"username\":\"dev-1\",\"textname\":\"Dynsec admin user\"}}}",
        "{\"data\":{\"client\":{\"username\":\"dev-1\"}}}",
        "{\"data\":{\"client\":{\"textname\":\"" MARK " \"}}}",
        "{\"data\":{\"client\":{\"textname\":\"emiot device dev-2\"}}}",
        "{\"data\":{\"client\":{\"textname\":1}}}",
        "{\"data\":{\"textname\":\"" MARK "\"}}",
        "{\"textname\":\"" MARK "\"}",
        "{}",
    };
    for (size_t i = 0; i < sizeof answers / sizeof answers[0]; i++) {
        const char *why = "unset";
        assert_int_equal(owner_of(answers[i], &why), EM__DYNSEC_CLIENT_FOREIGN);
        assert_null(why);
    }
}

static void test_client_not_found_is_none(void **state)
{
    (void)state;
    const char *why = NULL;
    assert_int_equal(owner_of("{\"command\":\"getClient\",\"error\":\"Client not found\"}", &why),
                     EM__DYNSEC_CLIENT_NONE);
    assert_non_null(why);
}

static void test_refused_question_is_foreign_with_its_error(void **state)
{
    (void)state;
    const char *why = NULL;
    /* Even with the marker: an answer with an error says nothing about the
     * client. */
    assert_int_equal(owner_of("{\"error\":\"Permission denied\",\"data\":{\"client\":"
                              "{\"textname\":\"" MARK "\"}}}",
                              &why),
                     EM__DYNSEC_CLIENT_FOREIGN);
    assert_non_null(why);
    assert_int_equal(owner_of("{\"error\":false}", NULL), EM__DYNSEC_CLIENT_FOREIGN);
}

static void test_no_response_or_no_marker_is_foreign(void **state)
{
    (void)state;
    const char *why = "unset";
    assert_int_equal(em__dynsec_client_owner(NULL, MARK, &why), EM__DYNSEC_CLIENT_FOREIGN);
    assert_null(why);
    cJSON *r = cJSON_Parse("{\"data\":{\"client\":{\"textname\":\"" MARK "\"}}}");
    assert_non_null(r);
    assert_int_equal(em__dynsec_client_owner(r, NULL, NULL), EM__DYNSEC_CLIENT_FOREIGN);
    cJSON_Delete(r);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_answer_for_the_awaited_exchange_is_taken_whole),
        cmocka_unit_test(test_answer_is_read_within_its_length_only),
        cmocka_unit_test(test_answer_to_another_exchange_is_ignored),
        cmocka_unit_test(test_answer_without_a_correlation_string_is_ignored),
        cmocka_unit_test(test_malformed_answers_are_ignored),
        cmocka_unit_test(test_answer_needs_a_correlation_to_wait_for),
        cmocka_unit_test(test_answer_longer_than_the_limit_is_ignored),
        cmocka_unit_test(test_answer_matches_its_commands_in_order),
        cmocka_unit_test(test_answer_out_of_order_or_of_another_size_does_not_match),
        cmocka_unit_test(test_match_needs_two_arrays),
        cmocka_unit_test(test_error_is_the_string_null_when_absent_and_generic_otherwise),
        cmocka_unit_test(test_not_found_is_the_errors_ending),
        cmocka_unit_test(test_client_with_the_marker_is_ours),
        cmocka_unit_test(test_client_without_the_exact_marker_is_foreign),
        cmocka_unit_test(test_client_not_found_is_none),
        cmocka_unit_test(test_refused_question_is_foreign_with_its_error),
        cmocka_unit_test(test_no_response_or_no_marker_is_foreign),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
