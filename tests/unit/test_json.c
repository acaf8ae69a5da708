/*
 * Tests for src/core/json.c: bounded parsing, the per-thread arena, printing.
 */
#include <pthread.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "core/json.h"
#include "emiot/status.h"

static cJSON *parse_str(const char *s, em_error_t *err)
{
    return em__json_parse(s, strlen(s), err);
}

/* Asserts that s is refused with EM_ERR_MESSAGE_FORMAT and a message starting
 * with want. */
static void assert_refused(const char *s, size_t len, const char *want)
{
    em_error_t err;
    em_error_clear(&err);
    cJSON *root = em__json_parse(s, len, &err);
    assert_null(root);
    assert_int_equal(err.code, EM_ERR_MESSAGE_FORMAT);
    assert_true(strncmp(err.message, want, strlen(want)) == 0);
}

/* A JSON array nested depth times: [[...]]. */
static char *nested(unsigned depth)
{
    char *s = malloc(2 * depth + 1);
    assert_non_null(s);
    memset(s, '[', depth);
    memset(s + depth, ']', depth);
    s[2 * depth] = '\0';
    return s;
}

static void test_parses_exactly_len_bytes_without_nul(void **state)
{
    (void)state;
    const char buf[] = {'{', '"', 'a', '"', ':', '1', '}', 'x', 'y'};
    em_error_t err;
    cJSON *root = em__json_parse(buf, 7, &err);
    assert_non_null(root);
    assert_int_equal(cJSON_GetObjectItem(root, "a")->valueint, 1);
    em__json_free(root);
}

static void test_empty_payload_is_refused(void **state)
{
    (void)state;
    assert_refused("", 0, "empty payload");
    assert_refused(NULL, 0, "empty payload");
}

static void test_payload_of_max_size_is_accepted(void **state)
{
    (void)state;
    char *s = malloc(EM_PAYLOAD_MAX);
    assert_non_null(s);
    memset(s, ' ', EM_PAYLOAD_MAX);
    s[0] = '[';
    s[EM_PAYLOAD_MAX - 1] = ']';
    em_error_t err;
    cJSON *root = em__json_parse(s, EM_PAYLOAD_MAX, &err);
    assert_non_null(root);
    em__json_free(root);
    free(s);
}

static void test_payload_over_max_size_is_refused(void **state)
{
    (void)state;
    char *s = malloc(EM_PAYLOAD_MAX + 1);
    assert_non_null(s);
    memset(s, ' ', EM_PAYLOAD_MAX + 1);
    s[0] = '[';
    s[EM_PAYLOAD_MAX] = ']';
    assert_refused(s, EM_PAYLOAD_MAX + 1, "payload larger than 16384 bytes");
    free(s);
}

static void test_nesting_at_max_depth_is_accepted(void **state)
{
    (void)state;
    char *s = nested(EM_JSON_DEPTH_MAX);
    em_error_t err;
    cJSON *root = parse_str(s, &err);
    assert_non_null(root);
    em__json_free(root);
    free(s);
}

static void test_nesting_deeper_than_max_is_refused(void **state)
{
    (void)state;
    char *s = nested(EM_JSON_DEPTH_MAX + 1);
    assert_refused(s, strlen(s), "JSON nested deeper than 8");
    free(s);
}

static void test_deep_nesting_of_objects_is_refused(void **state)
{
    (void)state;
    const char *s = "{\"a\":{\"a\":{\"a\":{\"a\":{\"a\":{\"a\":{\"a\":{\"a\":{\"a\":1}}}}}}}}}";
    assert_refused(s, strlen(s), "JSON nested deeper than 8");
}

/* Compact ASCII payloads have their depth checked on the tree, others by the
 * byte scan: both must draw the line at the same place. */
static void test_depth_limit_is_the_same_for_plain_and_non_ascii_payloads(void **state)
{
    (void)state;
    const char *plain_ok = "[[[[[[[[\"x\"]]]]]]]]";
    const char *utf8_ok = "[[[[[[[[\"\xc3\xa9\"]]]]]]]]";
    const char *tab_ok = "[[[[[[[[\t1]]]]]]]]";
    const char *plain_deep = "[[[[[[[[[\"x\"]]]]]]]]]";
    const char *utf8_deep = "[[[[[[[[[\"\xc3\xa9\"]]]]]]]]]";
    const char *tab_deep = "[[[[[[[[[\t1]]]]]]]]]";
    const char *ok[] = {plain_ok, utf8_ok, tab_ok};
    for (size_t i = 0; i < 3; i++) {
        em_error_t err;
        cJSON *root = parse_str(ok[i], &err);
        assert_non_null(root);
        em__json_free(root);
    }
    assert_refused(plain_deep, strlen(plain_deep), "JSON nested deeper than 8");
    assert_refused(utf8_deep, strlen(utf8_deep), "JSON nested deeper than 8");
    assert_refused(tab_deep, strlen(tab_deep), "JSON nested deeper than 8");
}

static void test_brackets_inside_strings_do_not_count_as_nesting(void **state)
{
    (void)state;
    const char *s = "{\"k\":\"[[[[[[[[[[{{{{{{{{{{\\\"[[[[[[[[[[\"}";
    em_error_t err;
    cJSON *root = parse_str(s, &err);
    assert_non_null(root);
    assert_string_equal(cJSON_GetObjectItem(root, "k")->valuestring,
                        "[[[[[[[[[[{{{{{{{{{{\"[[[[[[[[[[");
    em__json_free(root);
}

static void test_escaped_backslash_before_quote_ends_string(void **state)
{
    (void)state;
    /* "\\" is a complete string; the brackets after it are real nesting. */
    char s[64];
    snprintf(s, sizeof(s), "[\"\\\\\",%s]", "[[[[[[[[1]]]]]]]]");
    assert_refused(s, strlen(s), "JSON nested deeper than 8");
}

static void test_trailing_garbage_is_refused(void **state)
{
    (void)state;
    assert_refused("{} x", 4, "invalid JSON at offset 3");
    assert_refused("{}{}", 4, "invalid JSON at offset 2");
}

static void test_trailing_whitespace_is_accepted(void **state)
{
    (void)state;
    em_error_t err;
    cJSON *root = parse_str(" {\"a\":true} \r\n\t", &err);
    assert_non_null(root);
    em__json_free(root);
}

static void test_malformed_json_reports_offset(void **state)
{
    (void)state;
    assert_refused("{\"a\":}", 6, "invalid JSON at offset");
    assert_refused("{\"a\"", 4, "invalid JSON at offset");
    assert_refused("nul", 3, "invalid JSON at offset");
    assert_refused("[1,]", 4, "invalid JSON at offset");
    assert_refused("\"abc", 4, "invalid JSON at offset");
}

static void test_valid_utf8_is_accepted(void **state)
{
    (void)state;
    const char *s = "[\"caf\xc3\xa9\",\"\xe2\x82\xac\",\"\xf0\x9f\x94\x8b\",\"\\u00e9\"]";
    em_error_t err;
    cJSON *root = parse_str(s, &err);
    assert_non_null(root);
    assert_string_equal(cJSON_GetArrayItem(root, 3)->valuestring, "\xc3\xa9");
    em__json_free(root);
}

static void test_invalid_utf8_is_refused(void **state)
{
    (void)state;
    assert_refused("[\"\xc0\x80\"]", 6, "invalid UTF-8 at offset 2");         /* overlong */
    assert_refused("[\"\xed\xa0\x80\"]", 7, "invalid UTF-8 at offset 2");     /* surrogate */
    assert_refused("[\"\xf4\x90\x80\x80\"]", 8, "invalid UTF-8 at offset 2"); /* > U+10FFFF */
    assert_refused("[\"\xe2\x82\"]", 6, "invalid UTF-8 at offset 2");         /* truncated */
    assert_refused("[\"\xff\"]", 5, "invalid UTF-8 at offset 2");
    assert_refused("[\"\x80\"]", 5, "invalid UTF-8 at offset 2");
}

static void test_raw_control_character_in_string_is_refused(void **state)
{
    (void)state;
    assert_refused("[\"a\x01\"]", 6, "invalid JSON at offset 3");
    assert_refused("[\"a\nb\"]", 7, "invalid JSON at offset 3");
}

static void test_nul_escape_is_refused(void **state)
{
    (void)state;
    const char *s = "{\"firmwareVersion\":\"1.2\\u0000evil\"}";
    assert_refused(s, strlen(s), "\\u0000 in a JSON string at offset 23");
}

static void test_escaped_backslash_before_u0000_is_text(void **state)
{
    (void)state;
    const char *s = "[\"\\\\u0000\"]";
    em_error_t err;
    cJSON *root = parse_str(s, &err);
    assert_non_null(root);
    assert_string_equal(cJSON_GetArrayItem(root, 0)->valuestring, "\\u0000");
    em__json_free(root);
}

static void test_scan_finds_bad_bytes_at_every_offset_of_long_strings(void **state)
{
    (void)state;
    /* Long runs take the sixteen-bytes-at-a-time path; a bad byte must be
     * found wherever it sits within, or after, a block. */
    for (size_t k = 0; k < 48; k++) {
        char s[64];
        memset(s, 'a', sizeof(s));
        s[0] = '[';
        s[1] = '"';
        s[52] = '"';
        s[53] = ']';
        char want[64];
        snprintf(want, sizeof(want), "invalid JSON at offset %zu", 2 + k);
        s[2 + k] = '\x1f';
        assert_refused(s, 54, want);
        snprintf(want, sizeof(want), "invalid UTF-8 at offset %zu", 2 + k);
        s[2 + k] = '\xff';
        assert_refused(s, 54, want);
        s[2 + k] = '\\';
        s[3 + k] = '"'; /* escaped quote: the string goes on */
        em_error_t err;
        cJSON *root = em__json_parse(s, 54, &err);
        assert_non_null(root);
        em__json_free(root);
    }
}

static void test_scan_counts_brackets_after_long_runs(void **state)
{
    (void)state;
    for (size_t pad = 0; pad < 40; pad++) {
        char s[128];
        size_t n = 0;
        s[n++] = '[';
        memset(s + n, ' ', pad);
        n += pad;
        memcpy(s + n, "1,[[[[[[[[2]]]]]]]]]", 20);
        n += 20;
        char want[64];
        snprintf(want, sizeof(want), "JSON nested deeper than 8");
        assert_refused(s, n, want);
        /* One level less is fine. */
        n = 0;
        s[n++] = '[';
        memset(s + n, ' ', pad);
        n += pad;
        memcpy(s + n, "1,[[[[[[[2]]]]]]]]", 18);
        n += 18;
        em_error_t err;
        cJSON *root = em__json_parse(s, n, &err);
        assert_non_null(root);
        em__json_free(root);
    }
}

static void test_scan_checks_utf8_outside_strings(void **state)
{
    (void)state;
    /* Not JSON either way, but the UTF-8 check comes first. */
    assert_refused("[1,\xc3]", 5, "invalid UTF-8 at offset 3");
    assert_refused("[                    \xff]", 23, "invalid UTF-8 at offset 21");
}

static void test_print_is_compact_and_outlives_the_tree(void **state)
{
    (void)state;
    em_error_t err;
    cJSON *root = parse_str("{ \"a\" : [ 1 , \"x\" ] , \"b\" : { } }", &err);
    assert_non_null(root);
    char *s = em__json_print(root, 100);
    assert_non_null(s);
    em__json_free(root);
    /* A new parse reuses the arena; the printed string must be untouched. */
    cJSON *other = parse_str("{\"zzzzzzzzzzzzzzzz\":\"yyyyyyyyyyyyyyyyyyyyyyyyy\"}", &err);
    assert_non_null(other);
    assert_string_equal(s, "{\"a\":[1,\"x\"],\"b\":{}}");
    em__json_free(other);
    free(s);
}

static void test_print_of_exactly_max_bytes_succeeds(void **state)
{
    (void)state;
    em_error_t err;
    cJSON *root = parse_str("[1,2,3]", &err);
    assert_non_null(root);
    char *s = em__json_print(root, 7);
    assert_non_null(s);
    assert_string_equal(s, "[1,2,3]");
    free(s);
    em__json_free(root);
}

static void test_print_longer_than_max_returns_null(void **state)
{
    (void)state;
    em_error_t err;
    cJSON *root = parse_str("[1,2,3]", &err);
    assert_non_null(root);
    assert_null(em__json_print(root, 6));
    char *out = (char *)1;
    assert_int_equal(em__json_print_bounded(root, 6, &out), EM_ERR_LIMIT);
    assert_null(out);
    em__json_free(root);
}

static void test_print_larger_than_stack_buffer(void **state)
{
    (void)state;
    cJSON *arr = cJSON_CreateArray();
    assert_non_null(arr);
    for (int i = 0; i < 2000; i++)
        cJSON_AddItemToArray(arr, cJSON_CreateNumber(1000 + i));
    char *out = NULL;
    assert_int_equal(em__json_print_bounded(arr, 20000, &out), EM_OK);
    assert_non_null(out);
    assert_int_equal(strlen(out), 2 + 2000 * 4 + 1999);
    free(out);
    assert_int_equal(em__json_print_bounded(arr, 9000, &out), EM_ERR_LIMIT);
    cJSON_Delete(arr);
}

static void test_print_bounded_rejects_null_arguments(void **state)
{
    (void)state;
    char *out = (char *)1;
    assert_int_equal(em__json_print_bounded(NULL, 10, &out), EM_ERR_INVALID_ARGUMENT);
    assert_null(out);
    assert_null(em__json_print(NULL, 10));
}

static void test_free_accepts_null(void **state)
{
    (void)state;
    em__json_free(NULL);
}

static void test_two_live_trees_stay_valid_until_both_freed(void **state)
{
    (void)state;
    em_error_t err;
    cJSON *a = parse_str("{\"name\":\"first\"}", &err);
    cJSON *b = parse_str("{\"name\":\"second\"}", &err);
    assert_non_null(a);
    assert_non_null(b);
    em__json_free(a);
    /* b must not be overwritten by a parse after a was freed. */
    cJSON *c = parse_str("{\"name\":\"third-xxxxxxxxxxxxxxxxxxxxxxxx\"}", &err);
    assert_non_null(c);
    assert_string_equal(cJSON_GetObjectItem(b, "name")->valuestring, "second");
    em__json_free(b);
    em__json_free(c);
}

static void test_tree_larger_than_arena_falls_back_to_malloc(void **state)
{
    (void)state;
    /* 5000 numbers need about 320 KiB of nodes, well past the 64 KiB arena. */
    size_t cap = 2 + 5000 * 3;
    char *s = malloc(cap);
    assert_non_null(s);
    size_t n = 0;
    s[n++] = '[';
    for (int i = 0; i < 5000; i++) {
        if (i > 0)
            s[n++] = ',';
        s[n++] = (char)('0' + i % 10);
    }
    s[n++] = ']';
    em_error_t err;
    cJSON *root = em__json_parse(s, n, &err);
    assert_non_null(root);
    assert_int_equal(cJSON_GetArraySize(root), 5000);
    assert_int_equal(cJSON_GetArrayItem(root, 4999)->valueint, 9);
    em__json_free(root);
    free(s);
}

static void test_items_created_while_tree_alive_outlive_it(void **state)
{
    (void)state;
    em_error_t err;
    cJSON *root = parse_str("{\"a\":1}", &err);
    assert_non_null(root);
    cJSON *mine = cJSON_CreateString("kept on the heap");
    assert_non_null(mine);
    em__json_free(root);
    cJSON *other = parse_str("[\"overwrite the arena with something else entirely\"]", &err);
    assert_non_null(other);
    assert_string_equal(mine->valuestring, "kept on the heap");
    em__json_free(other);
    cJSON_Delete(mine);
}

static void test_failed_parse_leaves_no_live_tree(void **state)
{
    (void)state;
    em_error_t err;
    for (int i = 0; i < 10000; i++)
        assert_null(parse_str("{\"a\":[1,2,3,\"xxxxxxxxxxxxxxxxxx\"", &err));
    /* Were failures counted as live trees, the arena would never reset and
     * this parse would fall back to malloc; either way it must succeed. */
    cJSON *root = parse_str("{\"a\":1}", &err);
    assert_non_null(root);
    em__json_free(root);
}

static void *parse_many(void *arg)
{
    uintptr_t id = (uintptr_t)arg;
    char buf[64];
    for (int i = 0; i < 20000; i++) {
        int n = snprintf(buf, sizeof(buf), "{\"t\":%u,\"i\":%d,\"s\":\"x%d\"}", (unsigned)id, i, i);
        em_error_t err;
        cJSON *root = em__json_parse(buf, (size_t)n, &err);
        if (root == NULL)
            return (void *)1;
        cJSON *t = cJSON_GetObjectItem(root, "t");
        cJSON *iv = cJSON_GetObjectItem(root, "i");
        bool ok = t != NULL && (uintptr_t)t->valueint == id && iv != NULL && iv->valueint == i;
        em__json_free(root);
        if (!ok)
            return (void *)1;
    }
    return NULL;
}

static void test_threads_parse_independently(void **state)
{
    (void)state;
    pthread_t th[4];
    for (uintptr_t i = 0; i < 4; i++)
        assert_int_equal(pthread_create(&th[i], NULL, parse_many, (void *)i), 0);
    for (int i = 0; i < 4; i++) {
        void *res = (void *)1;
        assert_int_equal(pthread_join(th[i], &res), 0);
        assert_null(res);
    }
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_parses_exactly_len_bytes_without_nul),
        cmocka_unit_test(test_empty_payload_is_refused),
        cmocka_unit_test(test_payload_of_max_size_is_accepted),
        cmocka_unit_test(test_payload_over_max_size_is_refused),
        cmocka_unit_test(test_nesting_at_max_depth_is_accepted),
        cmocka_unit_test(test_nesting_deeper_than_max_is_refused),
        cmocka_unit_test(test_deep_nesting_of_objects_is_refused),
        cmocka_unit_test(test_depth_limit_is_the_same_for_plain_and_non_ascii_payloads),
        cmocka_unit_test(test_brackets_inside_strings_do_not_count_as_nesting),
        cmocka_unit_test(test_escaped_backslash_before_quote_ends_string),
        cmocka_unit_test(test_trailing_garbage_is_refused),
        cmocka_unit_test(test_trailing_whitespace_is_accepted),
        cmocka_unit_test(test_malformed_json_reports_offset),
        cmocka_unit_test(test_valid_utf8_is_accepted),
        cmocka_unit_test(test_invalid_utf8_is_refused),
        cmocka_unit_test(test_raw_control_character_in_string_is_refused),
        cmocka_unit_test(test_nul_escape_is_refused),
        cmocka_unit_test(test_escaped_backslash_before_u0000_is_text),
        cmocka_unit_test(test_scan_finds_bad_bytes_at_every_offset_of_long_strings),
        cmocka_unit_test(test_scan_counts_brackets_after_long_runs),
        cmocka_unit_test(test_scan_checks_utf8_outside_strings),
        cmocka_unit_test(test_print_is_compact_and_outlives_the_tree),
        cmocka_unit_test(test_print_of_exactly_max_bytes_succeeds),
        cmocka_unit_test(test_print_longer_than_max_returns_null),
        cmocka_unit_test(test_print_larger_than_stack_buffer),
        cmocka_unit_test(test_print_bounded_rejects_null_arguments),
        cmocka_unit_test(test_free_accepts_null),
        cmocka_unit_test(test_two_live_trees_stay_valid_until_both_freed),
        cmocka_unit_test(test_tree_larger_than_arena_falls_back_to_malloc),
        cmocka_unit_test(test_items_created_while_tree_alive_outlive_it),
        cmocka_unit_test(test_failed_parse_leaves_no_live_tree),
        cmocka_unit_test(test_threads_parse_independently),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
