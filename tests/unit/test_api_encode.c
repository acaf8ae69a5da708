/*
 * emiot - test_api_encode.c: the API's tree-free device answer
 * (em__enc_device_answer) says byte for byte what the general path (cJSON
 * trees from em__enc_device and em__enc_status, printed as em__api_reply
 * prints them) says, and the hand-written time formatter agrees with
 * em_time_format.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cjson/cJSON.h>

#include "api/encode.h"
#include "emiot/clock.h"
#include "emiot/registry.h"
#include "emiot/status.h"

#define T_2026 INT64_C(1795345163595) /* 2026-11-22T10:59:23.595Z */

/* ---- the reference: what em__api_reply prints --------------------------- */

static int add_name(const char *name, size_t size, void *userdata)
{
    (void)size;
    cJSON *arr = userdata;
    cJSON_AddItemToArray(arr, cJSON_CreateString(name));
    return 0;
}

static char *reference(const em_store_device_t *dev, const em_registry_t *reg, const em_device_t *d)
{
    cJSON *groups = cJSON_CreateArray();
    assert_non_null(groups);
    em_registry_device_groups(reg, d, add_name, groups);
    cJSON *status = NULL;
    if (d->status.has != 0) {
        status = em__enc_status(&d->status);
        assert_non_null(status);
    }
    cJSON *data = em__enc_device(dev, groups, status);
    assert_non_null(data);
    cJSON *root = cJSON_CreateObject();
    assert_non_null(root);
    assert_non_null(cJSON_AddBoolToObject(root, "success", 1));
    assert_true(cJSON_AddItemToObject(root, "data", data));
    char *txt = cJSON_PrintUnformatted(root);
    cJSON_Delete(root);
    assert_non_null(txt);
    return txt;
}

/* Compares the fast answer with the reference. */
static void assert_same(const em_store_device_t *dev, const em_registry_t *reg,
                        const em_device_t *d)
{
    char buf[8192];
    size_t len = 0;
    assert_int_equal(em__enc_device_answer(dev, reg, d, buf, sizeof(buf), &len), EM_OK);
    char *ref = reference(dev, reg, d);
    assert_int_equal(len, strlen(buf));
    assert_string_equal(buf, ref);
    cJSON_free(ref);
}

/* ---- fixtures ------------------------------------------------------------- */

typedef struct fx {
    em_registry_t *reg;
    em_device_t *d;
    em_store_device_t dev;
} fx_t;

static void fx_init(fx_t *f, const char *id)
{
    f->reg = em_registry_new(0, 0);
    assert_non_null(f->reg);
    assert_int_equal(em_registry_add(f->reg, id, NULL, EM_DEVICE_SENSOR, NULL, T_2026, &f->d, NULL),
                     EM_OK);
    memset(&f->dev, 0, sizeof(f->dev));
    snprintf(f->dev.id, sizeof(f->dev.id), "%s", id);
    snprintf(f->dev.name, sizeof(f->dev.name), "W5 device");
    f->dev.type = EM_DEVICE_SENSOR;
    f->dev.enabled = true;
    f->dev.created_at_ms = T_2026;
    f->dev.updated_at_ms = T_2026 + 1;
}

static void fx_status(fx_t *f, const char *payload, int64_t last_seen_ms)
{
    em_status_t st;
    em_error_t e;
    assert_int_equal(em_status_decode(payload, strlen(payload), &st, &e), EM_OK);
    if (last_seen_ms != 0) {
        st.has |= EM_STATUS_HAS_LAST_SEEN;
        st.last_seen_ms = last_seen_ms;
    }
    em_registry_set_status(f->reg, f->d, &st);
}

static void fx_group(fx_t *f, const char *name)
{
    assert_int_equal(em_registry_group_create(f->reg, name, NULL), EM_OK);
    assert_int_equal(em_registry_group_add(f->reg, name, f->dev.id, NULL), EM_OK);
}

/* ---- device answers -------------------------------------------------------- */

static void test_answer_without_status_groups_or_config_matches_reference(void **state)
{
    (void)state;
    fx_t f;
    fx_init(&f, "w5-dev-0001");
    assert_same(&f.dev, f.reg, f.d);
    em_registry_free(f.reg);
}

static void test_answer_with_groups_config_and_status_matches_reference(void **state)
{
    (void)state;
    fx_t f;
    fx_init(&f, "meter_01");
    fx_group(&f, "floor 1");
    fx_group(&f, "Building-A");
    fx_group(&f, "zz");
    f.dev.config.has = EM_CONFIG_HAS_REPORTING_INTERVAL | EM_CONFIG_HAS_SLEEP_THRESHOLD |
                       EM_CONFIG_HAS_AUTO_WAKE | EM_CONFIG_HAS_SECURITY_LEVEL;
    f.dev.config.reporting_interval = 3600;
    f.dev.config.sleep_threshold = 0;
    f.dev.config.auto_wake = true;
    f.dev.config.security_level = 5;
    fx_status(&f,
              "{\"batteryLevel\":75,\"powerMode\":\"low_power\",\"connectionStatus\":\"online\","
              "\"firmwareVersion\":\"1.2.3-rc+b_7\",\"signalStrength\":-67,\"errors\":[],"
              "\"additionalInfo\":{}}",
              T_2026 + 5000);
    assert_same(&f.dev, f.reg, f.d);
    em_registry_free(f.reg);
}

static void test_answer_with_each_config_field_alone_matches_reference(void **state)
{
    (void)state;
    fx_t f;
    fx_init(&f, "cfg-dev");
    const uint8_t bits[] = {EM_CONFIG_HAS_REPORTING_INTERVAL, EM_CONFIG_HAS_SLEEP_THRESHOLD,
                            EM_CONFIG_HAS_AUTO_WAKE, EM_CONFIG_HAS_SECURITY_LEVEL,
                            EM_CONFIG_HAS_SLEEP_THRESHOLD | EM_CONFIG_HAS_SECURITY_LEVEL};
    f.dev.config.reporting_interval = 4294967295u; /* beyond int: cJSON's other branch */
    f.dev.config.sleep_threshold = 100;
    f.dev.config.security_level = 1;
    for (size_t i = 0; i < sizeof(bits); i++) {
        f.dev.config.has = bits[i];
        f.dev.config.auto_wake = (i % 2) == 0;
        assert_same(&f.dev, f.reg, f.d);
    }
    em_registry_free(f.reg);
}

static void test_answer_escapes_the_name_as_cjson_does(void **state)
{
    (void)state;
    fx_t f;
    fx_init(&f, "esc-dev");
    const char *names[] = {"quote \" and \\ backslash", "caf\xc3\xa9 \xf0\x9f\x94\x8c plug",
                           "tab\tnew\nline\rcr\bbs\fff", "\x01\x1f\x7f del", "slash / </script>"};
    for (size_t i = 0; i < sizeof(names) / sizeof(names[0]); i++) {
        snprintf(f.dev.name, sizeof(f.dev.name), "%s", names[i]);
        assert_same(&f.dev, f.reg, f.d);
    }
    em_registry_free(f.reg);
}

static void test_answer_for_partial_statuses_matches_reference(void **state)
{
    (void)state;
    fx_t f;
    fx_init(&f, "partial");
    const char *payloads[] = {"{\"batteryLevel\":0}", "{\"signalStrength\":-150}",
                              "{\"connectionStatus\":\"intermittent\",\"powerMode\":\"critical\"}",
                              "{\"firmwareVersion\":\"2\"}", "{\"errors\":[]}"};
    for (size_t i = 0; i < sizeof(payloads) / sizeof(payloads[0]); i++) {
        fx_status(&f, payloads[i], i % 2 ? T_2026 : 0);
        assert_same(&f.dev, f.reg, f.d);
    }
    em_registry_free(f.reg);
}

static void test_answer_for_disabled_unknown_type_and_odd_times_matches_reference(void **state)
{
    (void)state;
    fx_t f;
    fx_init(&f, "odd-dev");
    f.dev.enabled = false;
    f.dev.type = (em_device_type_t)99; /* no name: null */
    const int64_t times[][2] = {{0, 0},
                                {1, -1},
                                {INT64_C(253402300799999), INT64_C(253402300800000)},
                                {INT64_C(-62167219200000), INT64_C(-62167219200001)}};
    for (size_t i = 0; i < sizeof(times) / sizeof(times[0]); i++) {
        f.dev.created_at_ms = times[i][0];
        f.dev.updated_at_ms = times[i][1];
        assert_same(&f.dev, f.reg, f.d);
    }
    em_registry_free(f.reg);
}

static void test_answer_with_the_most_groups_fits_the_route_buffer(void **state)
{
    (void)state;
    fx_t f;
    fx_init(&f, "many-groups-device-with-a-long-id-0123456789abcdef");
    char name[EM_GROUP_NAME_MAX + 1];
    for (int i = 0; i < EM_DEVICE_GROUPS_MAX; i++) {
        snprintf(name, sizeof(name), "group %02d %.*s", i, EM_GROUP_NAME_MAX - 9,
                 "xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx");
        fx_group(&f, name);
    }
    memset(f.dev.name, '"', EM_DEVICE_NAME_MAX); /* the longest escape of the longest name */
    f.dev.name[EM_DEVICE_NAME_MAX] = '\0';
    fx_status(&f,
              "{\"batteryLevel\":100,\"powerMode\":\"low_power\",\"connectionStatus\":"
              "\"intermittent\",\"firmwareVersion\":\"1.2.3.4.5.6.7.8.9.10.11.12\","
              "\"signalStrength\":-150}",
              T_2026);
    assert_same(&f.dev, f.reg, f.d); /* assert_same uses the route's 8192 bytes */
    em_registry_free(f.reg);
}

static uint64_t next_rand(uint64_t *x)
{
    *x ^= *x << 13;
    *x ^= *x >> 7;
    *x ^= *x << 17;
    return *x;
}

/* Statuses the decoder would never make (out-of-range numbers and names,
 * firmware bytes it refuses, odd times) are written as em_status_encode
 * writes them all the same. */
static void test_answer_for_random_statuses_matches_reference(void **state)
{
    (void)state;
    fx_t f;
    fx_init(&f, "random-status");
    static const char fw_bytes[] = "0123456789.+_-abcXYZ \"\\/\x01\xc3";
    uint64_t x = 0x9e3779b97f4a7c15u;
    for (int i = 0; i < 20000; i++) {
        em_status_t st;
        memset(&st, 0, sizeof(st));
        st.has = (uint16_t)(next_rand(&x) & 0xFF & ~(EM_STATUS_HAS_ERRORS | EM_STATUS_HAS_EXTRA));
        if (next_rand(&x) % 4 == 0)
            st.has |= (uint16_t)(next_rand(&x) % 2 ? EM_STATUS_HAS_ERRORS : EM_STATUS_HAS_EXTRA);
        if (st.has == 0)
            st.has = EM_STATUS_HAS_BATTERY;
        st.battery_level = (uint8_t)next_rand(&x);
        st.power_mode = (uint8_t)(next_rand(&x) % 6);
        st.connection = (uint8_t)(next_rand(&x) % 5);
        st.signal_strength = (int16_t)next_rand(&x);
        size_t n = next_rand(&x) % (EM_FIRMWARE_VERSION_MAX + 1);
        for (size_t k = 0; k < n; k++)
            st.firmware_version[k] = fw_bytes[next_rand(&x) % (sizeof(fw_bytes) - 1)];
        st.firmware_version[n] = '\0';
        switch (next_rand(&x) % 4) {
        case 0:
            st.last_seen_ms = (int64_t)(next_rand(&x) % UINT64_C(253402300800000));
            break;
        case 1:
            st.last_seen_ms = T_2026;
            break;
        case 2:
            st.last_seen_ms = -(int64_t)(next_rand(&x) % UINT64_C(100000000000000));
            break;
        default:
            st.last_seen_ms = 0;
            break;
        }
        em_registry_set_status(f.reg, f.d, &st);
        assert_same(&f.dev, f.reg, f.d);
    }
    em_registry_free(f.reg);
}

static void test_answer_declines_a_status_with_errors(void **state)
{
    (void)state;
    fx_t f;
    fx_init(&f, "err-dev");
    fx_status(&f, "{\"batteryLevel\":5,\"errors\":[\"low battery\"]}", T_2026);
    char buf[8192];
    size_t len = 0;
    assert_int_equal(em__enc_device_answer(&f.dev, f.reg, f.d, buf, sizeof(buf), &len),
                     EM_ERR_STATE);
    em_registry_free(f.reg);
}

static void test_answer_declines_a_status_with_additional_info(void **state)
{
    (void)state;
    fx_t f;
    fx_init(&f, "extra-dev");
    fx_status(&f, "{\"additionalInfo\":{\"temp\":21.5}}", 0);
    char buf[8192];
    size_t len = 0;
    assert_int_equal(em__enc_device_answer(&f.dev, f.reg, f.d, buf, sizeof(buf), &len),
                     EM_ERR_STATE);
    em_registry_free(f.reg);
}

static void test_answer_reports_a_buffer_too_small(void **state)
{
    (void)state;
    fx_t f;
    fx_init(&f, "small-buf");
    fx_status(&f, "{\"batteryLevel\":50,\"powerMode\":\"normal\"}", T_2026);
    char full[8192];
    size_t need = 0;
    assert_int_equal(em__enc_device_answer(&f.dev, f.reg, f.d, full, sizeof(full), &need), EM_OK);
    /* Every size short of the answer and its NUL fails, at every field. */
    char buf[8192];
    for (size_t size = 0; size <= need; size++) {
        size_t len = 0;
        assert_int_equal(em__enc_device_answer(&f.dev, f.reg, f.d, buf, size, &len),
                         EM_ERR_BUFFER_TOO_SMALL);
    }
    size_t len = 0;
    assert_int_equal(em__enc_device_answer(&f.dev, f.reg, f.d, buf, need + 1, &len), EM_OK);
    assert_int_equal(len, need);
    assert_string_equal(buf, full);
    em_registry_free(f.reg);
}

/* ---- times ------------------------------------------------------------------- */

static void assert_time_same(int64_t ms)
{
    char a[EM_TIME_STR_MAX], b[EM_TIME_STR_MAX];
    size_t na = em__enc_time_text(ms, a, sizeof(a));
    size_t nb = em_time_format(ms, b, sizeof(b));
    assert_int_equal(na, nb);
    assert_string_equal(a, b);
}

static void test_time_text_matches_em_time_format_at_the_edges(void **state)
{
    (void)state;
    const int64_t day = INT64_C(86400000);
    const int64_t edges[] = {0,
                             1,
                             999,
                             day - 1,
                             day,
                             INT64_C(951782400000), /* 2000-02-29 */
                             INT64_C(951868800000) - 1,
                             INT64_C(4107542400000), /* 2100-03-01 */
                             INT64_C(4107542400000) - 1,
                             INT64_C(1709164800000), /* 2024-02-29 */
                             INT64_C(253402300799999),
                             INT64_C(253402300800000),
                             INT64_C(253402300800001),
                             -1,
                             -day,
                             INT64_C(-62167219200000),
                             INT64_C(-62167219200001),
                             INT64_MAX / 1000,
                             T_2026};
    for (size_t i = 0; i < sizeof(edges) / sizeof(edges[0]); i++)
        assert_time_same(edges[i]);
}

static void test_time_text_matches_em_time_format_over_the_range(void **state)
{
    (void)state;
    /* A deterministic sweep over 1970-9999, every day boundary of the first
     * years and random instants after. */
    for (int64_t ms = 0; ms < INT64_C(4) * 366 * 86400000; ms += 86400000)
        assert_time_same(ms);
    uint64_t x = 88172645463325252u;
    for (int i = 0; i < 200000; i++) {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        assert_time_same((int64_t)(x % UINT64_C(253402300800000)));
    }
}

static void test_time_text_reports_a_small_buffer(void **state)
{
    (void)state;
    char buf[24];
    /* 24 characters and the NUL need 25 bytes: as em_time_format, "" and 0. */
    assert_int_equal(em__enc_time_text(T_2026, buf, sizeof(buf)), 0);
    assert_string_equal(buf, "");
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_answer_without_status_groups_or_config_matches_reference),
        cmocka_unit_test(test_answer_with_groups_config_and_status_matches_reference),
        cmocka_unit_test(test_answer_with_each_config_field_alone_matches_reference),
        cmocka_unit_test(test_answer_escapes_the_name_as_cjson_does),
        cmocka_unit_test(test_answer_for_partial_statuses_matches_reference),
        cmocka_unit_test(test_answer_for_disabled_unknown_type_and_odd_times_matches_reference),
        cmocka_unit_test(test_answer_with_the_most_groups_fits_the_route_buffer),
        cmocka_unit_test(test_answer_for_random_statuses_matches_reference),
        cmocka_unit_test(test_answer_declines_a_status_with_errors),
        cmocka_unit_test(test_answer_declines_a_status_with_additional_info),
        cmocka_unit_test(test_answer_reports_a_buffer_too_small),
        cmocka_unit_test(test_time_text_matches_em_time_format_at_the_edges),
        cmocka_unit_test(test_time_text_matches_em_time_format_over_the_range),
        cmocka_unit_test(test_time_text_reports_a_small_buffer),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
