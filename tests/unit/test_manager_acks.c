/*
 * emiot tests - the table of commands awaiting the broker's acknowledgement
 * (src/manager/acks.c), checked against a plain array indexed by message id.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "manager/manager_internal.h"

static void make_cmd(em_command_t *cmd, unsigned n)
{
    memset(cmd, 0, sizeof(*cmd));
    cmd->type = (em_command_type_t)(n % 8);
    snprintf(cmd->request_id, sizeof(cmd->request_id), "req_%08x", n);
}

static void test_put_then_take_returns_each_command_once(void **state)
{
    (void)state;
    struct em__acks a = {0};
    em_command_t cmd;
    for (unsigned mid = 1; mid <= 1000; mid++) {
        make_cmd(&cmd, mid);
        assert_true(em__acks_put(&a, (uint16_t)mid, &cmd, "plug-01"));
    }
    assert_int_equal(a.len, 1000);
    struct em__ack e;
    for (unsigned mid = 1000; mid >= 1; mid--) {
        assert_true(em__acks_take(&a, (uint16_t)mid, &e));
        char want[EM_REQUEST_ID_MAX + 1];
        snprintf(want, sizeof(want), "req_%08x", mid);
        assert_string_equal(e.request_id, want);
        assert_string_equal(e.device_id, "plug-01");
        assert_int_equal(e.type, mid % 8);
        assert_false(em__acks_take(&a, (uint16_t)mid, &e));
    }
    assert_int_equal(a.len, 0);
    em__acks_clear(&a);
}

static void test_unknown_id_is_not_found(void **state)
{
    (void)state;
    struct em__acks a = {0};
    struct em__ack e;
    assert_false(em__acks_take(&a, 7, &e));
    em_command_t cmd;
    make_cmd(&cmd, 1);
    assert_true(em__acks_put(&a, 1, &cmd, "plug-01"));
    assert_false(em__acks_take(&a, 2, &e));
    em__acks_clear(&a);
}

static void test_an_id_seen_again_replaces_the_stale_entry(void **state)
{
    (void)state;
    struct em__acks a = {0};
    em_command_t cmd;
    make_cmd(&cmd, 1);
    assert_true(em__acks_put(&a, 42, &cmd, "old-device"));
    make_cmd(&cmd, 2);
    assert_true(em__acks_put(&a, 42, &cmd, "new-device"));
    assert_int_equal(a.len, 1);
    struct em__ack e;
    assert_true(em__acks_take(&a, 42, &e));
    assert_string_equal(e.device_id, "new-device");
    em__acks_clear(&a);
}

/* Random interleaving of puts and takes over the whole id space, compared
 * with a reference: guards the backward-shift deletion, which must keep
 * every remaining entry reachable. */
static void test_random_puts_and_takes_match_a_reference(void **state)
{
    (void)state;
    struct em__acks a = {0};
    static unsigned char present[65536];
    memset(present, 0, sizeof(present));
    uint32_t x = 12345;
    em_command_t cmd;
    struct em__ack e;
    for (int i = 0; i < 400000; i++) {
        x = x * 1103515245u + 12345u;
        uint16_t mid = (uint16_t)((x >> 8) % 5000u); /* dense: many collisions */
        if ((x >> 28) & 1u) {
            make_cmd(&cmd, mid);
            assert_true(em__acks_put(&a, mid, &cmd, "d-1"));
            present[mid] = 1;
        } else {
            bool got = em__acks_take(&a, mid, &e);
            assert_int_equal(got, present[mid] != 0);
            if (got) {
                char want[EM_REQUEST_ID_MAX + 1];
                snprintf(want, sizeof(want), "req_%08x", (unsigned)mid);
                assert_string_equal(e.request_id, want);
            }
            present[mid] = 0;
        }
    }
    size_t n = 0;
    for (size_t i = 0; i < 65536; i++)
        n += present[i];
    assert_int_equal(a.len, n);
    for (size_t i = 0; i < 65536; i++)
        assert_int_equal(em__acks_take(&a, (uint16_t)i, &e), present[i] != 0);
    em__acks_clear(&a);
}

static void test_the_whole_id_space_fits(void **state)
{
    (void)state;
    struct em__acks a = {0};
    em_command_t cmd;
    make_cmd(&cmd, 3);
    for (unsigned mid = 0; mid < 65536; mid++)
        assert_true(em__acks_put(&a, (uint16_t)mid, &cmd, "d-1"));
    assert_int_equal(a.len, 65536);
    em__acks_clear(&a);
    assert_int_equal(a.len, 0);
    assert_null(a.v);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_put_then_take_returns_each_command_once),
        cmocka_unit_test(test_unknown_id_is_not_found),
        cmocka_unit_test(test_an_id_seen_again_replaces_the_stale_entry),
        cmocka_unit_test(test_random_puts_and_takes_match_a_reference),
        cmocka_unit_test(test_the_whole_id_space_fits),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
