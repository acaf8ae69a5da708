/*
 * emiot tests - test_ratelimit.c: the sliding-window limiter.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include "core/ratelimit.h"

#define WINDOW 60000 /* ms */

static void test_bad_limits_are_refused(void **state)
{
    (void)state;
    assert_null(em__window_new(0));
    assert_null(em__window_new(10001));
    assert_null(em__window_new(UINT32_MAX));
    em__window_t *w = em__window_new(10000);
    assert_non_null(w);
    assert_int_equal(w->limit, 10000);
    em__window_free(w);
    em__window_free(NULL);
}

static void test_events_are_allowed_until_the_limit(void **state)
{
    (void)state;
    em__window_t *w = em__window_new(3);
    assert_non_null(w);
    assert_true(em__window_allow(w, 1000, WINDOW, NULL));
    assert_true(em__window_allow(w, 1001, WINDOW, NULL));
    assert_true(em__window_allow(w, 1002, WINDOW, NULL));
    assert_false(em__window_allow(w, 1003, WINDOW, NULL));
    assert_false(em__window_allow(w, 30000, WINDOW, NULL));
    em__window_free(w);
}

static void test_refused_events_are_not_counted(void **state)
{
    (void)state;
    em__window_t *w = em__window_new(2);
    assert_true(em__window_allow(w, 0, WINDOW, NULL));
    assert_true(em__window_allow(w, 10, WINDOW, NULL));
    for (int i = 0; i < 100; i++)
        assert_false(em__window_allow(w, 20 + i, WINDOW, NULL));
    assert_int_equal(em__window_used(w, 200, WINDOW), 2);
    /* Only the two accepted events had to expire, not the refused ones. */
    assert_true(em__window_allow(w, WINDOW, WINDOW, NULL));
    em__window_free(w);
}

static void test_window_slides(void **state)
{
    (void)state;
    em__window_t *w = em__window_new(3);
    assert_true(em__window_allow(w, 0, WINDOW, NULL));
    assert_true(em__window_allow(w, 20000, WINDOW, NULL));
    assert_true(em__window_allow(w, 40000, WINDOW, NULL));
    assert_false(em__window_allow(w, WINDOW - 1, WINDOW, NULL));
    /* At exactly one window after the first event, it has left the window. */
    assert_true(em__window_allow(w, WINDOW, WINDOW, NULL));
    assert_false(em__window_allow(w, WINDOW + 1, WINDOW, NULL));
    assert_true(em__window_allow(w, 20000 + WINDOW, WINDOW, NULL));
    em__window_free(w);
}

static void test_retry_after_is_time_until_oldest_expires(void **state)
{
    (void)state;
    em__window_t *w = em__window_new(2);
    int64_t retry = -1;
    assert_true(em__window_allow(w, 1000, WINDOW, &retry));
    assert_int_equal(retry, 0);
    assert_true(em__window_allow(w, 5000, WINDOW, &retry));
    assert_int_equal(retry, 0);
    assert_false(em__window_allow(w, 11000, WINDOW, &retry));
    assert_int_equal(retry, 1000 + WINDOW - 11000);
    /* Waiting exactly that long is enough. */
    assert_true(em__window_allow(w, 11000 + retry, WINDOW, &retry));
    assert_int_equal(retry, 0);
    em__window_free(w);
}

static void test_used_counts_events_inside_the_window(void **state)
{
    (void)state;
    em__window_t *w = em__window_new(5);
    assert_int_equal(em__window_used(w, 0, WINDOW), 0);
    assert_true(em__window_allow(w, 0, WINDOW, NULL));
    assert_true(em__window_allow(w, 30000, WINDOW, NULL));
    assert_int_equal(em__window_used(w, 30000, WINDOW), 2);
    assert_int_equal(em__window_used(w, WINDOW, WINDOW), 1);
    assert_int_equal(em__window_used(w, 30000 + WINDOW, WINDOW), 0);
    em__window_free(w);
}

static void test_ring_wraps_around_over_many_events(void **state)
{
    (void)state;
    em__window_t *w = em__window_new(4);
    /* One event every WINDOW/4 ms: exactly at the limit, always allowed;
     * a fifth in between is always refused. */
    int64_t t = 0;
    for (int i = 0; i < 1000; i++) {
        assert_true(em__window_allow(w, t, WINDOW, NULL));
        if (i >= 3)
            assert_false(em__window_allow(w, t + 1, WINDOW, NULL));
        t += WINDOW / 4;
    }
    assert_int_equal(em__window_used(w, t - WINDOW / 4, WINDOW), 4);
    em__window_free(w);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_bad_limits_are_refused),
        cmocka_unit_test(test_events_are_allowed_until_the_limit),
        cmocka_unit_test(test_refused_events_are_not_counted),
        cmocka_unit_test(test_window_slides),
        cmocka_unit_test(test_retry_after_is_time_until_oldest_expires),
        cmocka_unit_test(test_used_counts_events_inside_the_window),
        cmocka_unit_test(test_ring_wraps_around_over_many_events),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
