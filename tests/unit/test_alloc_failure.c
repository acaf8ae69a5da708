/*
 * emiot tests - test_alloc_failure.c: every allocation that can fail, fails.
 *
 * As SQLite and curl test themselves: for each operation, the 1st, 2nd, ...
 * allocation is made to fail in turn until the operation succeeds. Each
 * failing run must return an error (never crash, never claim success) and
 * must leave no allocation behind once the caller has cleaned up what the
 * documentation says it owns. Lazy one-time set-up (OpenSSL's random
 * generator, the JSON arena) is done by a first, successful run.
 *
 * malloc cannot be replaced under the sanitizers (they own it): there the
 * tests are skipped, and they run in the plain build.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "emiot/emiot.h"

#include "alloc_hook.h"

/* One operation under test: returns EM_OK or an error, and releases on its
 * own whatever it obtained (so that `live` can be compared afterwards). */
typedef em_err_t (*op_fn)(void);

/*
 * Runs op once to warm up, then with the 1st, 2nd, ... allocation failing
 * until it succeeds. Every failing run must fail and leak nothing.
 */
static void exhaust(op_fn op)
{
#if !ALLOC_HOOK
    (void)op;
    skip();
#else
    assert_int_equal(op(), EM_OK);
    int refused_runs = 0;
    for (long n = 0; n < 10000; n++) {
        long before = live;
        long refused = failures;
        fail_countdown = n;
        em_err_t rc = op();
        fail_countdown = -1;
        if (failures == refused) {
            /* Allocation n was never reached: the operation ran to its end. */
            assert_int_equal(rc, EM_OK);
            assert_true(refused_runs > 0); /* it does allocate */
            return;
        }
        refused_runs++;
        assert_int_not_equal(rc, EM_OK);
        assert_int_equal(live, before);
    }
    fail_msg("operation kept allocating");
#endif
}

static em_err_t op_status_with_errors_and_info(void)
{
    static const char p[] =
        "{\"batteryLevel\":75,\"powerMode\":\"normal\",\"errors\":[\"e1\",\"e2\"],"
        "\"additionalInfo\":{\"room\":\"hall\",\"floor\":2}}";
    em_status_t st;
    em_err_t rc = em_status_decode(p, sizeof(p) - 1, &st, NULL);
    if (rc == EM_OK) {
        em_status_t copy;
        rc = em_status_copy(&copy, &st);
        if (rc == EM_OK)
            em_status_cleanup(&copy);
    }
    em_status_cleanup(&st);
    return rc;
}

static em_err_t op_configure_command(void)
{
    static const char p[] = "{\"reportingInterval\":60,\"mode\":\"eco\",\"limits\":{\"max\":3}}";
    em_command_t cmd;
    em_err_t rc = em_command_init(&cmd, EM_CMD_CONFIGURE, p, sizeof(p) - 1, NULL);
    if (rc == EM_OK) {
        char buf[EM_COMMAND_WIRE_MAX];
        size_t n;
        rc = em_command_encode(&cmd, buf, sizeof(buf), &n);
        em_command_cleanup(&cmd);
    }
    return rc;
}

static em_err_t op_response_with_data(void)
{
    static const char p[] = "{\"requestId\":\"req_1\",\"success\":true,\"message\":\"ok\","
                            "\"data\":{\"slots\":[1,2]}}";
    em_response_t r;
    em_err_t rc = em_response_decode(p, sizeof(p) - 1, &r, NULL);
    if (rc == EM_OK)
        em_response_cleanup(&r);
    return rc;
}

static em_err_t op_device_event_with_details(void)
{
    static const char p[] = "{\"type\":\"tamper\",\"details\":{\"sensor\":\"case\"},"
                            "\"timestamp\":1700000000000}";
    em_device_event_t ev;
    em_err_t rc = em_device_event_decode(p, sizeof(p) - 1, &ev, NULL);
    if (rc == EM_OK)
        em_device_event_cleanup(&ev);
    return rc;
}

/* A manager's life: creation, registration into a new group, a status with
 * heap strings, telemetry (which allocates the device's extension), a copy of
 * the device, statistics, removal and free. */
static em_err_t op_manager_life(void)
{
    em_error_t err;
    em_manager_t *mgr = em_manager_new(NULL, &err);
    if (mgr == NULL)
        return err.code;
    em_err_t rc = em_manager_register_device(mgr, "dev-1", "Hall sensor", EM_DEVICE_SENSOR, NULL,
                                             "floor 1", &err);
    if (rc == EM_OK) {
        static const char st[] = "{\"batteryLevel\":9,\"errors\":[\"low\"]}";
        rc = em_manager_handle_message(mgr, "device/dev-1/status", st, sizeof(st) - 1);
    }
    if (rc == EM_OK) {
        static const char t[] = "{\"timestamp\":1700000000000,\"energy_wh\":5}";
        rc = em_manager_handle_message(mgr, "device/dev-1/telemetry", t, sizeof(t) - 1);
    }
    if (rc == EM_OK) {
        em_device_t copy;
        rc = em_manager_get_device(mgr, "dev-1", &copy, &err);
        if (rc == EM_OK)
            em_manager_device_cleanup(&copy);
    }
    if (rc == EM_OK) {
        em_group_stats_t gs;
        rc = em_manager_group_stats(mgr, "floor 1", &gs, &err);
    }
    if (rc == EM_OK)
        rc = em_manager_remove_device(mgr, "dev-1", &err);
    em_manager_free(mgr);
    return rc;
}

static void test_status_decode_survives_every_allocation_failure(void **state)
{
    (void)state;
    exhaust(op_status_with_errors_and_info);
}

static void test_command_init_survives_every_allocation_failure(void **state)
{
    (void)state;
    exhaust(op_configure_command);
}

static void test_response_decode_survives_every_allocation_failure(void **state)
{
    (void)state;
    exhaust(op_response_with_data);
}

static void test_device_event_decode_survives_every_allocation_failure(void **state)
{
    (void)state;
    exhaust(op_device_event_with_details);
}

static void test_manager_survives_every_allocation_failure(void **state)
{
    (void)state;
    exhaust(op_manager_life);
}

int main(void)
{
    em_log_set_level(EM_LOG_OFF);
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_status_decode_survives_every_allocation_failure),
        cmocka_unit_test(test_command_init_survives_every_allocation_failure),
        cmocka_unit_test(test_response_decode_survives_every_allocation_failure),
        cmocka_unit_test(test_device_event_decode_survives_every_allocation_failure),
        cmocka_unit_test(test_manager_survives_every_allocation_failure),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
