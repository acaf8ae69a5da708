/*
 * emiot tests - test_manager.c: the manager without a broker, messages fed
 * straight to em_manager_handle_message.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>

#include <cmocka.h>

#include "emiot/emiot.h"

#define STATUS_OK                                                                                  \
    "{\"batteryLevel\":75,\"powerMode\":\"normal\",\"connectionStatus\":\"online\","               \
    "\"firmwareVersion\":\"1.2.3\",\"signalStrength\":-67,\"errors\":[],\"additionalInfo\":{}}"

struct recorder {
    int counts[EM_EVENT_TYPE_COUNT];
    em_event_type_t last_type;
    char last_device[EM_DEVICE_ID_MAX + 1];
    em_err_t last_error;
    char last_field[EM_ERROR_FIELD_MAX + 1];
    int last_battery;
    double last_delta;
    int last_reset;
};

static void record(em_manager_t *mgr, const em_event_t *ev, void *ud)
{
    (void)mgr;
    struct recorder *r = ud;
    r->counts[ev->type]++;
    r->last_type = ev->type;
    snprintf(r->last_device, sizeof(r->last_device), "%s", ev->device_id ? ev->device_id : "");
    if (ev->error != NULL) {
        r->last_error = ev->error->code;
        snprintf(r->last_field, sizeof(r->last_field), "%s", ev->error->field);
    }
    if (ev->status != NULL)
        r->last_battery = ev->status->battery_level;
    if (ev->type == EM_EVENT_TELEMETRY) {
        r->last_delta = ev->energy_delta_wh;
        r->last_reset = ev->counter_reset;
    }
}

static em_manager_t *new_manager(struct recorder *r)
{
    em_error_t err;
    em_log_set_level(EM_LOG_OFF);
    em_manager_t *mgr = em_manager_new(NULL, &err);
    assert_non_null(mgr);
    memset(r, 0, sizeof(*r));
    assert_int_equal(em_manager_on(mgr, EM_EVENT_MASK_ALL, record, r), EM_OK);
    return mgr;
}

/* Registers a sensor with no name, configuration or group. */
static void register_sensor(em_manager_t *mgr, const char *id)
{
    assert_int_equal(em_manager_register_device(mgr, id, NULL, EM_DEVICE_SENSOR, NULL, NULL, NULL),
                     EM_OK);
}

static em_err_t feed(em_manager_t *mgr, const char *topic, const char *payload)
{
    return em_manager_handle_message(mgr, topic, payload, strlen(payload));
}

static void test_new_rejects_bad_options(void **state)
{
    (void)state;
    em_manager_options_t o;
    em_error_t err;
    em_manager_options_init(&o);
    o.status_interval_s = 0;
    assert_null(em_manager_new(&o, &err));
    assert_int_equal(err.code, EM_ERR_CONFIGURATION);
    assert_string_equal(err.field, "status_interval_s");

    em_manager_options_init(&o);
    o.topic_prefix = "bad/#/";
    assert_null(em_manager_new(&o, &err));
    assert_int_equal(err.code, EM_ERR_CONFIGURATION);

    em_manager_options_init(&o);
    o.command_qos = 3;
    assert_null(em_manager_new(&o, &err));
    assert_string_equal(err.field, "command_qos");
}

static void test_register_emits_event_and_refuses_duplicates(void **state)
{
    (void)state;
    struct recorder r;
    em_manager_t *mgr = new_manager(&r);
    em_error_t err;
    assert_int_equal(em_manager_register_device(mgr, "plug-01", "Kitchen plug", EM_DEVICE_ACTUATOR,
                                                NULL, "kitchen", &err),
                     EM_OK);
    assert_int_equal(r.counts[EM_EVENT_DEVICE_REGISTERED], 1);
    assert_string_equal(r.last_device, "plug-01");
    assert_int_equal(
        em_manager_register_device(mgr, "plug-01", NULL, EM_DEVICE_ACTUATOR, NULL, NULL, &err),
        EM_ERR_EXISTS);
    assert_int_equal(em_manager_register_device(mgr, "x", NULL, EM_DEVICE_SENSOR, NULL, NULL, &err),
                     EM_ERR_VALIDATION);
    assert_int_equal(em_manager_device_count(mgr), 1);
    em_group_stats_t gs;
    assert_int_equal(em_manager_group_stats(mgr, "kitchen", &gs, &err), EM_OK);
    assert_int_equal(gs.total, 1);
    em_manager_free(mgr);
}

static void test_register_with_invalid_group_leaves_nothing(void **state)
{
    (void)state;
    struct recorder r;
    em_manager_t *mgr = new_manager(&r);
    em_error_t err;
    assert_int_equal(em_manager_register_device(mgr, "plug-01", NULL, EM_DEVICE_GENERIC, NULL,
                                                "bad/group", &err),
                     EM_ERR_VALIDATION);
    assert_int_equal(em_manager_device_count(mgr), 0);
    assert_int_equal(r.counts[EM_EVENT_DEVICE_REGISTERED], 0);
    em_manager_free(mgr);
}

static void test_status_from_registered_device_is_applied(void **state)
{
    (void)state;
    struct recorder r;
    em_manager_t *mgr = new_manager(&r);
    register_sensor(mgr, "dev-1");
    assert_int_equal(feed(mgr, "device/dev-1/status", STATUS_OK), EM_OK);
    assert_int_equal(r.counts[EM_EVENT_STATUS], 1);
    assert_int_equal(r.last_battery, 75);

    em_device_t copy;
    assert_int_equal(em_manager_get_device(mgr, "dev-1", &copy, NULL), EM_OK);
    assert_int_equal(copy.status.battery_level, 75);
    assert_int_equal(copy.status.power_mode, EM_POWER_NORMAL);
    assert_int_equal(copy.status.connection, EM_CONN_ONLINE);
    assert_string_equal(copy.status.firmware_version, "1.2.3");
    assert_int_equal(copy.status.signal_strength, -67);
    assert_true(copy.status.has & EM_STATUS_HAS_LAST_SEEN);
    em_manager_device_cleanup(&copy);

    em_manager_stats_t st;
    em_manager_stats(mgr, &st);
    assert_int_equal(st.messages_received, 1);
    assert_int_equal(st.status_accepted, 1);
    assert_int_equal(st.rejected, 0);
    em_manager_free(mgr);
}

static void test_status_from_unregistered_device_is_ignored(void **state)
{
    (void)state;
    struct recorder r;
    em_manager_t *mgr = new_manager(&r);
    assert_int_equal(feed(mgr, "device/stranger/status", STATUS_OK), EM_ERR_DEVICE_NOT_FOUND);
    assert_int_equal(r.counts[EM_EVENT_STATUS], 0);
    em_manager_stats_t st;
    em_manager_stats(mgr, &st);
    assert_int_equal(st.unknown_device, 1);
    assert_int_equal(em_manager_device_count(mgr), 0);
    em_manager_free(mgr);
}

static void test_malformed_json_is_rejected_counted_and_reported(void **state)
{
    (void)state;
    struct recorder r;
    em_manager_t *mgr = new_manager(&r);
    register_sensor(mgr, "dev-1");
    assert_int_equal(feed(mgr, "device/dev-1/status", STATUS_OK), EM_OK);
    assert_int_equal(feed(mgr, "device/dev-1/status", "{\"batteryLevel\":"), EM_ERR_MESSAGE_FORMAT);
    assert_int_equal(r.counts[EM_EVENT_ERROR], 1);
    assert_int_equal(r.last_error, EM_ERR_MESSAGE_FORMAT);
    assert_string_equal(r.last_device, "dev-1");
    /* The stored status is untouched. */
    em_device_t copy;
    assert_int_equal(em_manager_get_device(mgr, "dev-1", &copy, NULL), EM_OK);
    assert_int_equal(copy.status.battery_level, 75);
    em_manager_device_cleanup(&copy);
    em_manager_stats_t st;
    em_manager_stats(mgr, &st);
    assert_int_equal(st.rejected, 1);
    assert_int_equal(st.rejected_format, 1);
    em_manager_free(mgr);
}

static void test_out_of_range_and_wrong_types_are_rejected_with_field(void **state)
{
    (void)state;
    struct recorder r;
    em_manager_t *mgr = new_manager(&r);
    register_sensor(mgr, "dev-1");
    assert_int_equal(feed(mgr, "device/dev-1/status", "{\"batteryLevel\":101}"), EM_ERR_VALIDATION);
    assert_string_equal(r.last_field, "batteryLevel");
    assert_int_equal(feed(mgr, "device/dev-1/status", "{\"powerMode\":\"turbo\"}"),
                     EM_ERR_VALIDATION);
    assert_string_equal(r.last_field, "powerMode");
    assert_int_equal(feed(mgr, "device/dev-1/status", "{\"batteryLevel\":\"75\"}"),
                     EM_ERR_VALIDATION);
    assert_string_equal(r.last_field, "batteryLevel");
    assert_int_equal(feed(mgr, "device/dev-1/status", "[1,2,3]"), EM_ERR_MESSAGE_FORMAT);
    em_manager_stats_t st;
    em_manager_stats(mgr, &st);
    assert_int_equal(st.rejected, 4);
    assert_int_equal(st.rejected_validation, 3);
    assert_int_equal(st.status_accepted, 0);
    em_manager_free(mgr);
}

static void test_bad_topics_are_rejected_as_protocol_errors(void **state)
{
    (void)state;
    struct recorder r;
    em_manager_t *mgr = new_manager(&r);
    assert_int_equal(feed(mgr, "other/dev-1/status", STATUS_OK), EM_ERR_PROTOCOL);
    assert_int_equal(feed(mgr, "device/dev-1/unknown", STATUS_OK), EM_ERR_PROTOCOL);
    assert_int_equal(feed(mgr, "device/d/status", STATUS_OK), EM_ERR_PROTOCOL);
    assert_int_equal(feed(mgr, "device/dev-1/status/extra", STATUS_OK), EM_ERR_PROTOCOL);
    em_manager_stats_t st;
    em_manager_stats(mgr, &st);
    assert_int_equal(st.rejected_topic, 4);
    em_manager_free(mgr);
}

static void test_command_topic_from_a_device_is_refused(void **state)
{
    (void)state;
    struct recorder r;
    em_manager_t *mgr = new_manager(&r);
    register_sensor(mgr, "dev-1");
    assert_int_equal(feed(mgr, "device/dev-1/command", "{\"type\":\"wake\"}"), EM_ERR_PROTOCOL);
    em_manager_free(mgr);
}

static void test_telemetry_counter_reset_is_never_negative(void **state)
{
    (void)state;
    struct recorder r;
    em_manager_t *mgr = new_manager(&r);
    register_sensor(mgr, "meter-1");
    assert_int_equal(feed(mgr, "device/meter-1/telemetry",
                          "{\"timestamp\":\"2026-01-01T00:00:00Z\",\"energy_wh\":1000.0}"),
                     EM_OK);
    assert_int_equal(feed(mgr, "device/meter-1/telemetry",
                          "{\"timestamp\":\"2026-01-01T00:01:00Z\",\"energy_wh\":1010.5}"),
                     EM_OK);
    assert_float_equal(r.last_delta, 10.5, 1e-9);
    assert_int_equal(r.last_reset, 0);
    assert_int_equal(feed(mgr, "device/meter-1/telemetry",
                          "{\"timestamp\":\"2026-01-01T00:02:00Z\",\"energy_wh\":3.0}"),
                     EM_OK);
    assert_int_equal(r.last_reset, 1);
    assert_true(r.last_delta >= 0);
    assert_int_equal(r.counts[EM_EVENT_TELEMETRY], 3);
    em_manager_free(mgr);
}

static void test_telemetry_from_the_future_is_rejected(void **state)
{
    (void)state;
    struct recorder r;
    em_manager_t *mgr = new_manager(&r);
    register_sensor(mgr, "meter-1");
    assert_int_equal(feed(mgr, "device/meter-1/telemetry",
                          "{\"timestamp\":\"2999-01-01T00:00:00Z\",\"power_w\":1}"),
                     EM_ERR_VALIDATION);
    assert_string_equal(r.last_field, "timestamp");
    em_manager_free(mgr);
}

static void test_availability_drives_online_and_offline_events(void **state)
{
    (void)state;
    struct recorder r;
    em_manager_t *mgr = new_manager(&r);
    register_sensor(mgr, "dev-1");
    assert_int_equal(feed(mgr, "device/dev-1/availability", "online"), EM_OK);
    assert_int_equal(r.counts[EM_EVENT_DEVICE_ONLINE], 1);
    assert_int_equal(feed(mgr, "device/dev-1/availability", "offline"), EM_OK);
    assert_int_equal(r.counts[EM_EVENT_DEVICE_OFFLINE], 1);
    assert_int_equal(feed(mgr, "device/dev-1/availability", "offline"), EM_OK);
    assert_int_equal(r.counts[EM_EVENT_DEVICE_OFFLINE], 1); /* no change, no event */
    assert_int_equal(feed(mgr, "device/dev-1/availability", "maybe"), EM_ERR_VALIDATION);
    em_manager_free(mgr);
}

static void test_silent_device_goes_offline_after_twice_the_interval(void **state)
{
    (void)state;
    struct recorder r;
    em_manager_t *mgr = new_manager(&r);
    register_sensor(mgr, "dev-1");
    register_sensor(mgr, "dev-2");
    assert_int_equal(feed(mgr, "device/dev-1/status", STATUS_OK), EM_OK);
    int64_t now = em_now_ms();
    /* Default status interval 60 s: not yet at 119 s, offline at 121 s. */
    assert_int_equal(em_manager_check_offline(mgr, now + 119000), 0);
    assert_int_equal(em_manager_check_offline(mgr, now + 121000), 1);
    assert_int_equal(r.counts[EM_EVENT_DEVICE_OFFLINE], 1);
    assert_string_equal(r.last_device, "dev-1");
    /* Already offline: reported once only; dev-2 never reported: not judged. */
    assert_int_equal(em_manager_check_offline(mgr, now + 500000), 0);
    /* A new status brings it back. */
    assert_int_equal(feed(mgr, "device/dev-1/status", "{\"batteryLevel\":50}"), EM_OK);
    em_device_t copy;
    assert_int_equal(em_manager_get_device(mgr, "dev-1", &copy, NULL), EM_OK);
    assert_int_equal(copy.status.connection, EM_CONN_ONLINE);
    em_manager_device_cleanup(&copy);
    em_manager_free(mgr);
}

static void test_device_reporting_interval_overrides_status_interval(void **state)
{
    (void)state;
    struct recorder r;
    em_manager_t *mgr = new_manager(&r);
    em_device_config_t cfg = {.reporting_interval = 10, .has = EM_CONFIG_HAS_REPORTING_INTERVAL};
    assert_int_equal(
        em_manager_register_device(mgr, "fast-1", NULL, EM_DEVICE_SENSOR, &cfg, NULL, NULL), EM_OK);
    assert_int_equal(feed(mgr, "device/fast-1/status", STATUS_OK), EM_OK);
    assert_int_equal(em_manager_check_offline(mgr, em_now_ms() + 21000), 1);
    em_manager_free(mgr);
}

static void test_commands_need_a_valid_payload_a_device_and_a_connection(void **state)
{
    (void)state;
    struct recorder r;
    em_manager_t *mgr = new_manager(&r);
    em_error_t err;
    assert_int_equal(
        em_manager_register_device(mgr, "dev-1", NULL, EM_DEVICE_SENSOR, NULL, "all", NULL), EM_OK);
    assert_int_equal(em_manager_send_command(mgr, "dev-1", EM_CMD_SET_REPORTING_INTERVAL,
                                             "{\"interval\":5}", NULL, &err),
                     EM_ERR_VALIDATION);
    assert_int_equal(em_manager_send_command(mgr, "dev-1", EM_CMD_RESET, NULL, NULL, &err),
                     EM_ERR_VALIDATION);
    assert_int_equal(em_manager_send_command(mgr, "nobody", EM_CMD_WAKE, NULL, NULL, &err),
                     EM_ERR_DEVICE_NOT_FOUND);
    assert_int_equal(em_manager_send_command(mgr, "dev-1", EM_CMD_WAKE, NULL, NULL, &err),
                     EM_ERR_NOT_CONNECTED);
    assert_int_equal(em_manager_sleep_group(mgr, "nogroup", 60, &err), EM_ERR_GROUP_NOT_FOUND);
    assert_int_equal(em_manager_sleep_group(mgr, "all", 60, &err), EM_ERR_NOT_CONNECTED);
    assert_int_equal(r.counts[EM_EVENT_COMMAND_SENT], 0);
    em_manager_stats_t st;
    em_manager_stats(mgr, &st);
    assert_int_equal(st.commands_invalid, 2);
    assert_int_equal(st.commands_sent, 0);
    em_manager_free(mgr);
}

static void test_changing_the_prefix_changes_what_is_accepted(void **state)
{
    (void)state;
    struct recorder r;
    em_manager_t *mgr = new_manager(&r);
    em_error_t err;
    register_sensor(mgr, "dev-1");
    assert_int_equal(em_manager_set_topic_prefix(mgr, "site-a/", &err), EM_OK);
    char buf[EM_TOPIC_PREFIX_MAX + 1];
    em_manager_topic_prefix(mgr, buf, sizeof(buf));
    assert_string_equal(buf, "site-a/");
    assert_int_equal(feed(mgr, "device/dev-1/status", STATUS_OK), EM_ERR_PROTOCOL);
    assert_int_equal(feed(mgr, "site-a/dev-1/status", STATUS_OK), EM_OK);
    assert_int_equal(em_manager_set_topic_prefix(mgr, "no-slash", &err), EM_ERR_VALIDATION);
    assert_int_equal(em_manager_set_topic_prefix(mgr, "a/+/", &err), EM_ERR_VALIDATION);
    em_manager_free(mgr);
}

static void test_removed_device_is_ignored_afterwards(void **state)
{
    (void)state;
    struct recorder r;
    em_manager_t *mgr = new_manager(&r);
    em_error_t err;
    assert_int_equal(
        em_manager_register_device(mgr, "dev-1", NULL, EM_DEVICE_SENSOR, NULL, "g1", NULL), EM_OK);
    assert_int_equal(em_manager_remove_device(mgr, "dev-1", &err), EM_OK);
    assert_int_equal(r.counts[EM_EVENT_DEVICE_REMOVED], 1);
    assert_string_equal(r.last_device, "dev-1");
    assert_int_equal(feed(mgr, "device/dev-1/status", STATUS_OK), EM_ERR_DEVICE_NOT_FOUND);
    assert_int_equal(em_manager_remove_device(mgr, "dev-1", &err), EM_ERR_DEVICE_NOT_FOUND);
    em_group_stats_t gs;
    assert_int_equal(em_manager_group_stats(mgr, "g1", &gs, &err), EM_OK);
    assert_int_equal(gs.total, 0);
    em_manager_free(mgr);
}

static void test_group_membership_and_statistics(void **state)
{
    (void)state;
    struct recorder r;
    em_manager_t *mgr = new_manager(&r);
    em_error_t err;
    assert_int_equal(em_manager_create_group(mgr, "floor 1", &err), EM_OK);
    assert_int_equal(em_manager_create_group(mgr, "floor 1", &err), EM_ERR_EXISTS);
    const char *ids[] = {"s-001", "s-002", "s-003"};
    for (int i = 0; i < 3; i++) {
        assert_int_equal(
            em_manager_register_device(mgr, ids[i], NULL, EM_DEVICE_SENSOR, NULL, NULL, NULL),
            EM_OK);
        assert_int_equal(em_manager_add_to_group(mgr, ids[i], "floor 1", &err), EM_OK);
    }
    assert_int_equal(feed(mgr, "device/s-001/status",
                          "{\"batteryLevel\":80,\"powerMode\":\"normal\","
                          "\"connectionStatus\":\"online\"}"),
                     EM_OK);
    assert_int_equal(feed(mgr, "device/s-002/status",
                          "{\"batteryLevel\":40,\"powerMode\":\"low_power\","
                          "\"connectionStatus\":\"offline\"}"),
                     EM_OK);
    em_group_stats_t gs;
    assert_int_equal(em_manager_group_stats(mgr, "floor 1", &gs, &err), EM_OK);
    assert_int_equal(gs.total, 3);
    assert_int_equal(gs.online, 1);
    assert_int_equal(gs.offline, 2); /* s-003 has no status yet */
    assert_float_equal(gs.average_battery, 60.0, 1e-9);
    assert_int_equal(gs.power_modes[EM_POWER_NORMAL], 1);
    assert_int_equal(gs.power_modes[EM_POWER_LOW_POWER], 1);
    assert_int_equal(em_manager_remove_from_group(mgr, "s-003", "floor 1", &err), EM_OK);
    assert_int_equal(em_manager_group_stats(mgr, "floor 1", &gs, &err), EM_OK);
    assert_int_equal(gs.total, 2);
    assert_int_equal(em_manager_remove_group(mgr, "floor 1", &err), EM_OK);
    assert_int_equal(em_manager_group_stats(mgr, "floor 1", &gs, &err), EM_ERR_GROUP_NOT_FOUND);
    em_manager_free(mgr);
}

static int g_off_calls;
static void count_calls(em_manager_t *mgr, const em_event_t *ev, void *ud)
{
    (void)mgr;
    (void)ev;
    (void)ud;
    g_off_calls++;
}

static void test_callbacks_filter_by_mask_and_can_be_removed(void **state)
{
    (void)state;
    em_log_set_level(EM_LOG_OFF);
    em_manager_t *mgr = em_manager_new(NULL, NULL);
    assert_non_null(mgr);
    g_off_calls = 0;
    assert_int_equal(em_manager_on(mgr, EM_EVENT_MASK(EM_EVENT_DEVICE_REMOVED), count_calls, NULL),
                     EM_OK);
    assert_int_equal(em_manager_on(mgr, 0, count_calls, NULL), EM_ERR_INVALID_ARGUMENT);
    assert_int_equal(em_manager_on(mgr, EM_EVENT_MASK_ALL, NULL, NULL), EM_ERR_INVALID_ARGUMENT);
    register_sensor(mgr, "dev-1");
    assert_int_equal(g_off_calls, 0);
    assert_int_equal(em_manager_remove_device(mgr, "dev-1", NULL), EM_OK);
    assert_int_equal(g_off_calls, 1);
    em_manager_off(mgr, count_calls, NULL);
    register_sensor(mgr, "dev-1");
    assert_int_equal(em_manager_remove_device(mgr, "dev-1", NULL), EM_OK);
    assert_int_equal(g_off_calls, 1);
    for (int i = 0; i < 16; i++)
        assert_int_equal(em_manager_on(mgr, EM_EVENT_MASK_ALL, count_calls, NULL), EM_OK);
    assert_int_equal(em_manager_on(mgr, EM_EVENT_MASK_ALL, count_calls, NULL), EM_ERR_LIMIT);
    em_manager_free(mgr);
}

static void test_flush_without_connection_is_immediate(void **state)
{
    (void)state;
    em_log_set_level(EM_LOG_OFF);
    em_manager_t *mgr = em_manager_new(NULL, NULL);
    assert_non_null(mgr);
    assert_int_equal(em_manager_flush(mgr, 10, NULL), EM_OK);
    assert_false(em_manager_is_connected(mgr));
    assert_int_equal(em_manager_disconnect(mgr, NULL), EM_OK);
    em_manager_free(mgr);
    em_manager_free(NULL);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_new_rejects_bad_options),
        cmocka_unit_test(test_register_emits_event_and_refuses_duplicates),
        cmocka_unit_test(test_register_with_invalid_group_leaves_nothing),
        cmocka_unit_test(test_status_from_registered_device_is_applied),
        cmocka_unit_test(test_status_from_unregistered_device_is_ignored),
        cmocka_unit_test(test_malformed_json_is_rejected_counted_and_reported),
        cmocka_unit_test(test_out_of_range_and_wrong_types_are_rejected_with_field),
        cmocka_unit_test(test_bad_topics_are_rejected_as_protocol_errors),
        cmocka_unit_test(test_command_topic_from_a_device_is_refused),
        cmocka_unit_test(test_telemetry_counter_reset_is_never_negative),
        cmocka_unit_test(test_telemetry_from_the_future_is_rejected),
        cmocka_unit_test(test_availability_drives_online_and_offline_events),
        cmocka_unit_test(test_silent_device_goes_offline_after_twice_the_interval),
        cmocka_unit_test(test_device_reporting_interval_overrides_status_interval),
        cmocka_unit_test(test_commands_need_a_valid_payload_a_device_and_a_connection),
        cmocka_unit_test(test_changing_the_prefix_changes_what_is_accepted),
        cmocka_unit_test(test_removed_device_is_ignored_afterwards),
        cmocka_unit_test(test_group_membership_and_statistics),
        cmocka_unit_test(test_callbacks_filter_by_mask_and_can_be_removed),
        cmocka_unit_test(test_flush_without_connection_is_immediate),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
