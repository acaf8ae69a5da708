/*
 * emiot tests - test_api_nonce.c: the challenge nonces of device
 * challenge-response (src/api/nonce.c) on a fake monotonic clock, and the
 * checks of the public identity routes' bodies (src/api/identity_body.c).
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include <stdio.h>
#include <string.h>

#include "api/identity.h"
#include "api/nonce.h"

#define T0 1000000

static void test_nonce_is_43_base64url_characters(void **state)
{
    (void)state;
    em__nonces_t *t = em__nonces_new(4);
    assert_non_null(t);
    char n[EM__NONCE_TEXT + 1];
    assert_int_equal(em__nonces_issue(t, "dev-1", T0, 300000, n, NULL), EM_OK);
    assert_int_equal(strlen(n), 43);
    for (size_t i = 0; i < 43; i++)
        assert_non_null(
            strchr("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_", n[i]));
    assert_int_equal(em__nonces_count(t), 1);
    em__nonces_free(t);
}

static void test_nonce_works_once_for_its_device(void **state)
{
    (void)state;
    em__nonces_t *t = em__nonces_new(4);
    char n[EM__NONCE_TEXT + 1];
    assert_int_equal(em__nonces_issue(t, "dev-1", T0, 300000, n, NULL), EM_OK);
    assert_int_equal(em__nonces_take(t, n, strlen(n), "dev-1", T0 + 10), EM__NONCE_OK);
    assert_int_equal(em__nonces_take(t, n, strlen(n), "dev-1", T0 + 20), EM__NONCE_UNKNOWN);
    assert_int_equal(em__nonces_count(t), 0);
    em__nonces_free(t);
}

static void test_nonce_for_another_device_is_refused_and_burnt(void **state)
{
    (void)state;
    em__nonces_t *t = em__nonces_new(4);
    char n[EM__NONCE_TEXT + 1];
    assert_int_equal(em__nonces_issue(t, "dev-a", T0, 300000, n, NULL), EM_OK);
    assert_int_equal(em__nonces_take(t, n, strlen(n), "dev-b", T0 + 1), EM__NONCE_WRONG_DEVICE);
    assert_int_equal(em__nonces_take(t, n, strlen(n), "dev-a", T0 + 2), EM__NONCE_UNKNOWN);
    em__nonces_free(t);
}

static void test_nonce_expired_is_refused_and_burnt(void **state)
{
    (void)state;
    em__nonces_t *t = em__nonces_new(4);
    char n[EM__NONCE_TEXT + 1];
    assert_int_equal(em__nonces_issue(t, "dev-1", T0, 1000, n, NULL), EM_OK);
    assert_int_equal(em__nonces_take(t, n, strlen(n), "dev-1", T0 + 1000), EM__NONCE_EXPIRED);
    assert_int_equal(em__nonces_take(t, n, strlen(n), "dev-1", T0 + 1001), EM__NONCE_UNKNOWN);
    em__nonces_free(t);
}

static void test_nonce_malformed_or_altered_is_unknown(void **state)
{
    (void)state;
    em__nonces_t *t = em__nonces_new(4);
    char n[EM__NONCE_TEXT + 1];
    assert_int_equal(em__nonces_issue(t, "dev-1", T0, 300000, n, NULL), EM_OK);
    assert_int_equal(em__nonces_take(t, n, 42, "dev-1", T0), EM__NONCE_UNKNOWN);
    assert_int_equal(em__nonces_take(t, "", 0, "dev-1", T0), EM__NONCE_UNKNOWN);
    char bad[EM__NONCE_TEXT + 1];
    memcpy(bad, n, sizeof bad);
    bad[10] = bad[10] == 'A' ? 'B' : 'A';
    assert_int_equal(em__nonces_take(t, bad, 43, "dev-1", T0), EM__NONCE_UNKNOWN);
    memcpy(bad, n, sizeof bad);
    bad[5] = '=';
    assert_int_equal(em__nonces_take(t, bad, 43, "dev-1", T0), EM__NONCE_UNKNOWN);
    /* The same 32 bytes spelled with non-zero trailing bits are not it. */
    memcpy(bad, n, sizeof bad);
    const char *tab = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    int v = (int)(strchr(tab, bad[42]) - tab);
    bad[42] = tab[v | 1];
    if (bad[42] != n[42])
        assert_int_equal(em__nonces_take(t, bad, 43, "dev-1", T0), EM__NONCE_UNKNOWN);
    /* None of that used it up. */
    assert_int_equal(em__nonces_take(t, n, 43, "dev-1", T0), EM__NONCE_OK);
    em__nonces_free(t);
}

static void test_nonce_table_full_refuses_until_the_oldest_expires(void **state)
{
    (void)state;
    em__nonces_t *t = em__nonces_new(2);
    char a[EM__NONCE_TEXT + 1], b[EM__NONCE_TEXT + 1], c[EM__NONCE_TEXT + 1];
    uint32_t retry = 0;
    assert_int_equal(em__nonces_issue(t, "dev-1", T0, 10000, a, NULL), EM_OK);
    assert_int_equal(em__nonces_issue(t, "dev-2", T0 + 4000, 10000, b, NULL), EM_OK);
    assert_int_equal(em__nonces_issue(t, "dev-3", T0 + 5000, 10000, c, &retry), EM_ERR_LIMIT);
    assert_int_equal(retry, 5);
    assert_int_equal(em__nonces_issue(t, "dev-3", T0 + 9999, 10000, c, &retry), EM_ERR_LIMIT);
    assert_int_equal(retry, 1);
    /* The oldest expired: swept, room for one. */
    assert_int_equal(em__nonces_issue(t, "dev-3", T0 + 10000, 10000, c, NULL), EM_OK);
    assert_int_equal(em__nonces_count(t), 2);
    assert_int_equal(em__nonces_take(t, a, 43, "dev-1", T0 + 10001), EM__NONCE_UNKNOWN);
    assert_int_equal(em__nonces_take(t, b, 43, "dev-2", T0 + 10001), EM__NONCE_OK);
    assert_int_equal(em__nonces_take(t, c, 43, "dev-3", T0 + 10001), EM__NONCE_OK);
    em__nonces_free(t);
}

static void test_nonce_table_taken_in_any_order_keeps_working(void **state)
{
    (void)state;
    enum { N = 64 };
    em__nonces_t *t = em__nonces_new(N);
    static char n[N][EM__NONCE_TEXT + 1];
    char id[16];
    for (int round = 0; round < 3; round++) {
        for (int i = 0; i < N; i++) {
            snprintf(id, sizeof id, "dev-%d", i);
            assert_int_equal(em__nonces_issue(t, id, T0, 300000, n[i], NULL), EM_OK);
        }
        for (int i = 0; i < N; i += 2) {
            snprintf(id, sizeof id, "dev-%d", i);
            assert_int_equal(em__nonces_take(t, n[i], 43, id, T0 + 1), EM__NONCE_OK);
        }
        for (int i = N - 1; i > 0; i -= 2) {
            snprintf(id, sizeof id, "dev-%d", i);
            assert_int_equal(em__nonces_take(t, n[i], 43, id, T0 + 1), EM__NONCE_OK);
        }
        assert_int_equal(em__nonces_count(t), 0);
    }
    em__nonces_free(t);
}

static void test_nonce_bad_arguments_are_refused(void **state)
{
    (void)state;
    assert_null(em__nonces_new(0));
    assert_null(em__nonces_new(EM__NONCES_MAX + 1));
    em__nonces_free(NULL);
    em__nonces_t *t = em__nonces_new(2);
    char n[EM__NONCE_TEXT + 1];
    assert_int_equal(em__nonces_issue(t, "a b", T0, 1000, n, NULL), EM_ERR_INVALID_ARGUMENT);
    assert_int_equal(em__nonces_issue(t, "dev-1", T0, 0, n, NULL), EM_ERR_INVALID_ARGUMENT);
    assert_int_equal(em__nonces_issue(t, "dev-1", T0, 301000, n, NULL), EM_ERR_INVALID_ARGUMENT);
    assert_int_equal(em__nonces_count(t), 0);
    em__nonces_free(t);
}

/* ---- bodies of the public routes ------------------------------------------ */

static em_err_t validate(em__id_route_t route, const char *json, em__id_body_t *b, em_error_t *err)
{
    cJSON *o = cJSON_Parse(json);
    assert_non_null(o);
    em_err_t rc = em__id_body_validate(route, o, b, err);
    cJSON_Delete(o);
    return rc;
}

static void test_body_enroll_needs_three_strings(void **state)
{
    (void)state;
    em__id_body_t b;
    em_error_t e;
    assert_int_equal(
        validate(EM__ID_ENROLL, "{\"deviceId\":\"d-1\",\"token\":\"t\",\"csr\":\"c\"}", &b, &e),
        EM_OK);
    assert_int_equal(validate(EM__ID_ENROLL, "{\"deviceId\":\"d-1\",\"token\":\"t\"}", &b, &e),
                     EM_ERR_VALIDATION);
    assert_string_equal(e.field, "csr");
    assert_int_equal(
        validate(EM__ID_ENROLL, "{\"deviceId\":\"d-1\",\"token\":1,\"csr\":\"c\"}", &b, &e),
        EM_ERR_VALIDATION);
    assert_string_equal(e.field, "token");
    assert_string_equal(e.message, "must be a string");
}

static void test_body_unknown_or_repeated_member_is_refused(void **state)
{
    (void)state;
    em__id_body_t b;
    em_error_t e;
    assert_int_equal(validate(EM__ID_CHALLENGE, "{\"deviceId\":\"d-1\",\"x\":1}", &b, &e),
                     EM_ERR_VALIDATION);
    assert_string_equal(e.field, "body");
    assert_int_equal(
        validate(EM__ID_CHALLENGE, "{\"deviceId\":\"d-1\",\"deviceId\":\"d-2\"}", &b, &e),
        EM_ERR_VALIDATION);
    assert_string_equal(e.field, "body");
}

static void test_body_challenge_and_token_need_a_valid_device_id(void **state)
{
    (void)state;
    em__id_body_t b;
    em_error_t e;
    assert_int_equal(validate(EM__ID_CHALLENGE, "{\"deviceId\":\"a b\"}", &b, &e),
                     EM_ERR_VALIDATION);
    assert_string_equal(e.field, "deviceId");
    /* The body's pointers point into the parsed object. */
    cJSON *o = cJSON_Parse("{\"deviceId\":\"dev-1\",\"nonce\":\"n\",\"signature\":\"s\"}");
    assert_non_null(o);
    assert_int_equal(em__id_body_validate(EM__ID_DEVICE_TOKEN, o, &b, &e), EM_OK);
    assert_null(b.certificate);
    assert_string_equal(b.nonce, "n");
    assert_string_equal(b.signature, "s");
    assert_string_equal(b.device_id, "dev-1");
    cJSON_Delete(o);
}

static void test_token_shape_and_base64url(void **state)
{
    (void)state;
    const char *ok = "enr_0123456789abcdef0123456789abcdef0123456789abcdef";
    assert_true(em__id_token_shape_ok(ok, strlen(ok)));
    const char *upper = "enr_0123456789ABCDEF0123456789abcdef0123456789abcdef";
    assert_false(em__id_token_shape_ok(upper, strlen(upper)));
    assert_false(em__id_token_shape_ok(ok, strlen(ok) - 1));
    unsigned char out[8];
    assert_int_equal(em__b64url_decode("QUJD", 4, out, sizeof out), 3);
    assert_memory_equal(out, "ABC", 3);
    assert_int_equal(em__b64url_decode("QUI", 3, out, sizeof out), 2);
    assert_int_equal(em__b64url_decode("QUJ", 3, out, sizeof out), -1); /* bits left */
    assert_int_equal(em__b64url_decode("QUJD=", 5, out, sizeof out), -1);
    assert_int_equal(em__b64url_decode("Q", 1, out, sizeof out), -1);
    assert_int_equal(em__b64url_decode("QUJDQUJDQUJD", 12, out, sizeof out), -1); /* 9 > 8 */
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_nonce_is_43_base64url_characters),
        cmocka_unit_test(test_nonce_works_once_for_its_device),
        cmocka_unit_test(test_nonce_for_another_device_is_refused_and_burnt),
        cmocka_unit_test(test_nonce_expired_is_refused_and_burnt),
        cmocka_unit_test(test_nonce_malformed_or_altered_is_unknown),
        cmocka_unit_test(test_nonce_table_full_refuses_until_the_oldest_expires),
        cmocka_unit_test(test_nonce_table_taken_in_any_order_keeps_working),
        cmocka_unit_test(test_nonce_bad_arguments_are_refused),
        cmocka_unit_test(test_body_enroll_needs_three_strings),
        cmocka_unit_test(test_body_unknown_or_repeated_member_is_refused),
        cmocka_unit_test(test_body_challenge_and_token_need_a_valid_device_id),
        cmocka_unit_test(test_token_shape_and_base64url),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
