/*
 * emiot tests - test_device.c: device ids, group names, names, configurations,
 * types, and their JSON forms.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include <cjson/cJSON.h>
#include <cmocka.h>

#include "emiot/emiot.h"

#define S(lit) (lit), (sizeof(lit) - 1)

/* A string of n copies of c (n < 256). */
static const char *rep(char c, size_t n)
{
    static char buf[256];
    assert_true(n < sizeof(buf));
    memset(buf, c, n);
    buf[n] = '\0';
    return buf;
}

static em_err_t id_check(const char *s, size_t len, em_error_t *err)
{
    em_error_clear(err);
    return em_device_id_validate(s, len, err);
}

/* ---- device ids ---- */

static void device_id_accepts_3_to_50_chars(void **state)
{
    (void)state;
    em_error_t err;
    assert_int_equal(id_check(rep('a', 3), 3, &err), EM_OK);
    assert_int_equal(id_check(rep('a', 50), 50, &err), EM_OK);
}

static void device_id_refuses_2_and_51_chars(void **state)
{
    (void)state;
    em_error_t err;
    assert_int_equal(id_check(rep('a', 2), 2, &err), EM_ERR_VALIDATION);
    assert_int_equal(id_check(rep('a', 51), 51, &err), EM_ERR_VALIDATION);
    assert_int_equal(id_check("", 0, &err), EM_ERR_VALIDATION);
}

static void device_id_accepts_every_allowed_character(void **state)
{
    (void)state;
    em_error_t err;
    const char *all = "abcdefghijklmnopqrstuvwxyz_-";
    assert_int_equal(id_check(all, strlen(all), &err), EM_OK);
    all = "ABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789";
    assert_int_equal(id_check(all, strlen(all), &err), EM_OK);
}

static void device_id_refuses_other_characters(void **state)
{
    (void)state;
    const char bad[] = {' ', '.', '/', '+', '#', '*', '\'', '"', '\\', '\n', '\0', '$', '\x7f'};
    for (size_t i = 0; i < sizeof(bad); i++) {
        char id[] = "dev?1";
        id[3] = bad[i];
        em_error_t err;
        assert_int_equal(id_check(id, 5, &err), EM_ERR_VALIDATION);
    }
    em_error_t err;
    assert_int_equal(id_check(S("dev\xc3\xa9"), &err), EM_ERR_VALIDATION);
}

static void device_id_error_names_field_and_rule(void **state)
{
    (void)state;
    em_error_t err;
    assert_int_equal(id_check(S("a/b"), &err), EM_ERR_VALIDATION);
    assert_int_equal(err.code, EM_ERR_VALIDATION);
    assert_string_equal(err.field, "id");
    assert_string_equal(err.message, "must be 3-50 characters of A-Z a-z 0-9 _ -");
}

static void device_id_uses_len_not_terminator(void **state)
{
    (void)state;
    em_error_t err;
    assert_int_equal(id_check("abc/def", 3, &err), EM_OK);
    assert_int_equal(id_check("abc", 2, &err), EM_ERR_VALIDATION);
}

static void device_id_refuses_null(void **state)
{
    (void)state;
    em_error_t err;
    assert_int_equal(id_check(NULL, 5, &err), EM_ERR_VALIDATION);
    assert_int_equal(em_device_id_validate(NULL, 5, NULL), EM_ERR_VALIDATION);
}

/* ---- group names ---- */

static void group_name_accepts_2_to_50_chars(void **state)
{
    (void)state;
    assert_int_equal(em_group_name_validate(rep('g', 2), 2, NULL), EM_OK);
    assert_int_equal(em_group_name_validate(rep('g', 50), 50, NULL), EM_OK);
}

static void group_name_refuses_1_and_51_chars(void **state)
{
    (void)state;
    assert_int_equal(em_group_name_validate(rep('g', 1), 1, NULL), EM_ERR_VALIDATION);
    assert_int_equal(em_group_name_validate(rep('g', 51), 51, NULL), EM_ERR_VALIDATION);
    assert_int_equal(em_group_name_validate(NULL, 4, NULL), EM_ERR_VALIDATION);
}

static void group_name_accepts_space_and_hyphen(void **state)
{
    (void)state;
    assert_int_equal(em_group_name_validate(S("Floor 2 - East"), NULL), EM_OK);
    assert_int_equal(em_group_name_validate(S("  "), NULL), EM_OK);
}

static void group_name_refuses_underscore_and_others(void **state)
{
    (void)state;
    em_error_t err;
    assert_int_equal(em_group_name_validate(S("floor_2"), &err), EM_ERR_VALIDATION);
    assert_string_equal(err.field, "group");
    assert_string_equal(err.message, "must be 2-50 characters of A-Z a-z 0-9 space -");
    assert_int_equal(em_group_name_validate(S("a/b"), NULL), EM_ERR_VALIDATION);
    assert_int_equal(em_group_name_validate(S("a\tb"), NULL), EM_ERR_VALIDATION);
    assert_int_equal(em_group_name_validate(S("caf\xc3\xa9"), NULL), EM_ERR_VALIDATION);
}

/* ---- device names ---- */

static void device_name_accepts_1_to_100_bytes(void **state)
{
    (void)state;
    assert_int_equal(em_device_name_validate(S("x"), NULL), EM_OK);
    assert_int_equal(em_device_name_validate(rep('n', 100), 100, NULL), EM_OK);
}

static void device_name_refuses_0_and_101_bytes(void **state)
{
    (void)state;
    em_error_t err;
    assert_int_equal(em_device_name_validate("", 0, &err), EM_ERR_VALIDATION);
    assert_string_equal(err.field, "name");
    assert_string_equal(err.message, "must be 1-100 bytes long");
    assert_int_equal(em_device_name_validate(rep('n', 101), 101, NULL), EM_ERR_VALIDATION);
    assert_int_equal(em_device_name_validate(NULL, 3, NULL), EM_ERR_VALIDATION);
}

static void device_name_accepts_utf8(void **state)
{
    (void)state;
    /* 2-, 3- and 4-byte sequences, a no-break space, the largest code point */
    assert_int_equal(em_device_name_validate(S("Caf\xc3\xa9 \xe2\x98\x95 \xf0\x9d\x84\x9e"), NULL),
                     EM_OK);
    assert_int_equal(em_device_name_validate(S("a\xc2\xa0z"), NULL), EM_OK);
    assert_int_equal(em_device_name_validate(S("\xf4\x8f\xbf\xbf"), NULL), EM_OK);
    assert_int_equal(em_device_name_validate(S("\xef\xbf\xbd"), NULL), EM_OK);
}

static void device_name_refuses_invalid_utf8(void **state)
{
    (void)state;
    const char *bad[] = {
        "\x80",             /* lone continuation byte */
        "ab\xc3",           /* truncated 2-byte sequence */
        "\xe2\x98",         /* truncated 3-byte sequence */
        "\xc0\xaf",         /* overlong '/' */
        "\xc1\xbf",         /* overlong */
        "\xe0\x80\xaf",     /* overlong 3-byte */
        "\xf0\x80\x80\xaf", /* overlong 4-byte */
        "\xed\xa0\x80",     /* UTF-16 surrogate */
        "\xf4\x90\x80\x80", /* above U+10FFFF */
        "\xf5\x80\x80\x80", /* invalid lead byte */
        "\xff",             /* invalid byte */
        "\xc3\x28",         /* bad continuation */
    };
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        em_error_t err;
        assert_int_equal(em_device_name_validate(bad[i], strlen(bad[i]), &err), EM_ERR_VALIDATION);
        assert_string_equal(err.field, "name");
        assert_string_equal(err.message, "must be valid UTF-8");
    }
}

static void device_name_refuses_control_characters(void **state)
{
    (void)state;
    const char *bad[] = {"a\nb", "a\x01", "\tname", "del\x7f", "c1\xc2\x85", "c1\xc2\x9f"};
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        em_error_t err;
        assert_int_equal(em_device_name_validate(bad[i], strlen(bad[i]), &err), EM_ERR_VALIDATION);
        assert_string_equal(err.message, "must not contain control characters");
    }
    assert_int_equal(em_device_name_validate("ab\0cd", 5, NULL), EM_ERR_VALIDATION);
}

static void device_name_refuses_multibyte_char_split_by_len(void **state)
{
    (void)state;
    /* 99 ASCII bytes then a 2-byte character: 101 bytes, and cut to 100 it
     * ends in half a character. */
    char name[102];
    memset(name, 'a', 99);
    memcpy(name + 99, "\xc3\xa9", 2);
    name[101] = '\0';
    assert_int_equal(em_device_name_validate(name, 101, NULL), EM_ERR_VALIDATION);
    assert_int_equal(em_device_name_validate(name, 100, NULL), EM_ERR_VALIDATION);
    assert_int_equal(em_device_name_validate(name + 1, 100, NULL), EM_OK);
}

/* ---- configuration ---- */

static void config_with_nothing_set_is_valid(void **state)
{
    (void)state;
    em_device_config_t cfg = {0};
    cfg.reporting_interval = 0; /* not flagged: not checked */
    assert_int_equal(em_device_config_validate(&cfg, NULL), EM_OK);
}

static void config_reporting_interval_bounds(void **state)
{
    (void)state;
    em_device_config_t cfg = {.has = EM_CONFIG_HAS_REPORTING_INTERVAL};
    em_error_t err;
    cfg.reporting_interval = 0;
    assert_int_equal(em_device_config_validate(&cfg, &err), EM_ERR_VALIDATION);
    assert_string_equal(err.field, "reportingInterval");
    assert_string_equal(err.message, "must be an integer from 1 to 86400");
    cfg.reporting_interval = 1;
    assert_int_equal(em_device_config_validate(&cfg, NULL), EM_OK);
    cfg.reporting_interval = 86400;
    assert_int_equal(em_device_config_validate(&cfg, NULL), EM_OK);
    cfg.reporting_interval = 86401;
    assert_int_equal(em_device_config_validate(&cfg, NULL), EM_ERR_VALIDATION);
}

static void config_sleep_threshold_bounds(void **state)
{
    (void)state;
    em_device_config_t cfg = {.has = EM_CONFIG_HAS_SLEEP_THRESHOLD};
    em_error_t err;
    cfg.sleep_threshold = 0;
    assert_int_equal(em_device_config_validate(&cfg, NULL), EM_OK);
    cfg.sleep_threshold = 100;
    assert_int_equal(em_device_config_validate(&cfg, NULL), EM_OK);
    cfg.sleep_threshold = 101;
    assert_int_equal(em_device_config_validate(&cfg, &err), EM_ERR_VALIDATION);
    assert_string_equal(err.field, "sleepThreshold");
    assert_string_equal(err.message, "must be an integer from 0 to 100");
}

static void config_security_level_bounds(void **state)
{
    (void)state;
    em_device_config_t cfg = {.has = EM_CONFIG_HAS_SECURITY_LEVEL};
    em_error_t err;
    cfg.security_level = 0;
    assert_int_equal(em_device_config_validate(&cfg, &err), EM_ERR_VALIDATION);
    assert_string_equal(err.field, "securityLevel");
    assert_string_equal(err.message, "must be an integer from 1 to 5");
    cfg.security_level = 1;
    assert_int_equal(em_device_config_validate(&cfg, NULL), EM_OK);
    cfg.security_level = 5;
    assert_int_equal(em_device_config_validate(&cfg, NULL), EM_OK);
    cfg.security_level = 6;
    assert_int_equal(em_device_config_validate(&cfg, NULL), EM_ERR_VALIDATION);
}

static void config_unflagged_fields_are_not_checked(void **state)
{
    (void)state;
    em_device_config_t cfg = {.has = EM_CONFIG_HAS_AUTO_WAKE, .auto_wake = true};
    cfg.sleep_threshold = 200;
    cfg.security_level = 9;
    assert_int_equal(em_device_config_validate(&cfg, NULL), EM_OK);
}

static void config_unknown_flag_bits_are_refused(void **state)
{
    (void)state;
    em_device_config_t cfg = {.has = 0x10};
    em_error_t err;
    assert_int_equal(em_device_config_validate(&cfg, &err), EM_ERR_VALIDATION);
    assert_string_equal(err.field, "config");
}

static void config_null_is_refused(void **state)
{
    (void)state;
    assert_int_equal(em_device_config_validate(NULL, NULL), EM_ERR_VALIDATION);
}

/* ---- types ---- */

static void device_type_names_round_trip(void **state)
{
    (void)state;
    const char *names[] = {"sensor", "camera", "actuator", "gateway", "generic"};
    for (int i = 0; i < 5; i++) {
        assert_string_equal(em_device_type_name((em_device_type_t)i), names[i]);
        em_device_type_t t = EM_DEVICE_GENERIC;
        assert_int_equal(em_device_type_parse(names[i], strlen(names[i]), &t, NULL), EM_OK);
        assert_int_equal(t, i);
    }
}

static void device_type_name_out_of_range_is_null(void **state)
{
    (void)state;
    assert_null(em_device_type_name((em_device_type_t)5));
    assert_null(em_device_type_name((em_device_type_t)-1));
}

static void device_type_parse_is_exact(void **state)
{
    (void)state;
    em_device_type_t t = EM_DEVICE_CAMERA;
    em_error_t err;
    assert_int_equal(em_device_type_parse(S("Sensor"), &t, &err), EM_ERR_VALIDATION);
    assert_string_equal(err.field, "type");
    assert_int_equal(em_device_type_parse(S("sens"), &t, NULL), EM_ERR_VALIDATION);
    assert_int_equal(em_device_type_parse(S("sensors"), &t, NULL), EM_ERR_VALIDATION);
    assert_int_equal(em_device_type_parse(S(""), &t, NULL), EM_ERR_VALIDATION);
    assert_int_equal(em_device_type_parse(NULL, 6, &t, NULL), EM_ERR_VALIDATION);
    assert_int_equal(t, EM_DEVICE_CAMERA); /* untouched on failure */
    assert_int_equal(em_device_type_parse("gateway!", 7, &t, NULL), EM_OK);
    assert_int_equal(t, EM_DEVICE_GATEWAY);
}

/* ---- configuration JSON ---- */

static em_err_t cfg_decode(const char *json, em_device_config_t *cfg, em_error_t *err)
{
    em_error_clear(err);
    return em_device_config_decode(json, strlen(json), cfg, err);
}

static void config_decode_reads_every_field(void **state)
{
    (void)state;
    em_device_config_t cfg;
    em_error_t err;
    assert_int_equal(cfg_decode("{\"reportingInterval\":60,\"sleepThreshold\":20,"
                                "\"autoWake\":true,\"securityLevel\":3}",
                                &cfg, &err),
                     EM_OK);
    assert_int_equal(cfg.has, EM_CONFIG_HAS_REPORTING_INTERVAL | EM_CONFIG_HAS_SLEEP_THRESHOLD |
                                  EM_CONFIG_HAS_AUTO_WAKE | EM_CONFIG_HAS_SECURITY_LEVEL);
    assert_int_equal(cfg.reporting_interval, 60);
    assert_int_equal(cfg.sleep_threshold, 20);
    assert_true(cfg.auto_wake);
    assert_int_equal(cfg.security_level, 3);
}

static void config_decode_empty_object_sets_nothing(void **state)
{
    (void)state;
    em_device_config_t cfg;
    assert_int_equal(cfg_decode(" { } ", &cfg, NULL), EM_OK);
    assert_int_equal(cfg.has, 0);
}

static void config_decode_boundaries(void **state)
{
    (void)state;
    em_device_config_t cfg;
    em_error_t err;
    assert_int_equal(cfg_decode("{\"reportingInterval\":1}", &cfg, &err), EM_OK);
    assert_int_equal(cfg_decode("{\"reportingInterval\":86400}", &cfg, &err), EM_OK);
    assert_int_equal(cfg.reporting_interval, 86400);
    assert_int_equal(cfg_decode("{\"reportingInterval\":0}", &cfg, &err), EM_ERR_VALIDATION);
    assert_string_equal(err.field, "reportingInterval");
    assert_int_equal(cfg_decode("{\"reportingInterval\":86401}", &cfg, &err), EM_ERR_VALIDATION);
    assert_int_equal(cfg_decode("{\"sleepThreshold\":0}", &cfg, &err), EM_OK);
    assert_int_equal(cfg_decode("{\"sleepThreshold\":100}", &cfg, &err), EM_OK);
    assert_int_equal(cfg_decode("{\"sleepThreshold\":-1}", &cfg, &err), EM_ERR_VALIDATION);
    assert_int_equal(cfg_decode("{\"sleepThreshold\":101}", &cfg, &err), EM_ERR_VALIDATION);
    assert_string_equal(err.field, "sleepThreshold");
    assert_int_equal(cfg_decode("{\"securityLevel\":1}", &cfg, &err), EM_OK);
    assert_int_equal(cfg_decode("{\"securityLevel\":5}", &cfg, &err), EM_OK);
    assert_int_equal(cfg_decode("{\"securityLevel\":0}", &cfg, &err), EM_ERR_VALIDATION);
    assert_int_equal(cfg_decode("{\"securityLevel\":6}", &cfg, &err), EM_ERR_VALIDATION);
    assert_string_equal(err.field, "securityLevel");
}

static void config_decode_refuses_non_integers(void **state)
{
    (void)state;
    em_device_config_t cfg;
    em_error_t err;
    assert_int_equal(cfg_decode("{\"securityLevel\":3.5}", &cfg, &err), EM_ERR_VALIDATION);
    assert_int_equal(cfg_decode("{\"securityLevel\":\"3\"}", &cfg, &err), EM_ERR_VALIDATION);
    assert_int_equal(cfg_decode("{\"securityLevel\":true}", &cfg, &err), EM_ERR_VALIDATION);
    assert_int_equal(cfg_decode("{\"securityLevel\":null}", &cfg, &err), EM_ERR_VALIDATION);
    assert_int_equal(cfg_decode("{\"reportingInterval\":[60]}", &cfg, &err), EM_ERR_VALIDATION);
    assert_int_equal(cfg_decode("{\"reportingInterval\":1e999}", &cfg, &err), EM_ERR_VALIDATION);
    assert_string_equal(err.field, "reportingInterval");
}

static void config_decode_accepts_integral_number_spellings(void **state)
{
    (void)state;
    em_device_config_t cfg;
    assert_int_equal(cfg_decode("{\"securityLevel\":3.0,\"reportingInterval\":1e2}", &cfg, NULL),
                     EM_OK);
    assert_int_equal(cfg.security_level, 3);
    assert_int_equal(cfg.reporting_interval, 100);
}

static void config_decode_auto_wake_must_be_boolean(void **state)
{
    (void)state;
    em_device_config_t cfg;
    em_error_t err;
    assert_int_equal(cfg_decode("{\"autoWake\":1}", &cfg, &err), EM_ERR_VALIDATION);
    assert_string_equal(err.field, "autoWake");
    assert_string_equal(err.message, "must be true or false");
    assert_int_equal(cfg_decode("{\"autoWake\":\"true\"}", &cfg, &err), EM_ERR_VALIDATION);
    assert_int_equal(cfg_decode("{\"autoWake\":false}", &cfg, &err), EM_OK);
    assert_int_equal(cfg.has, EM_CONFIG_HAS_AUTO_WAKE);
    assert_false(cfg.auto_wake);
}

static void config_decode_refuses_unknown_keys(void **state)
{
    (void)state;
    em_device_config_t cfg;
    em_error_t err;
    assert_int_equal(cfg_decode("{\"reportingInterval\":60,\"colour\":\"red\"}", &cfg, &err),
                     EM_ERR_VALIDATION);
    assert_string_equal(err.field, "colour");
    assert_int_equal(cfg.has, 0); /* nothing half-filled */
    assert_int_equal(cfg_decode("{\"ReportingInterval\":60}", &cfg, &err), EM_ERR_VALIDATION);
}

static void config_decode_refuses_duplicate_keys(void **state)
{
    (void)state;
    em_device_config_t cfg;
    em_error_t err;
    assert_int_equal(cfg_decode("{\"securityLevel\":1,\"securityLevel\":9}", &cfg, &err),
                     EM_ERR_VALIDATION);
    assert_string_equal(err.field, "securityLevel");
    assert_string_equal(err.message, "must appear only once");
    assert_int_equal(cfg_decode("{\"securityLevel\":1,\"securityLevel\":2}", &cfg, &err),
                     EM_ERR_VALIDATION);
}

static void config_decode_refuses_non_objects(void **state)
{
    (void)state;
    em_device_config_t cfg;
    em_error_t err;
    assert_int_equal(cfg_decode("[]", &cfg, &err), EM_ERR_MESSAGE_FORMAT);
    assert_int_equal(cfg_decode("60", &cfg, &err), EM_ERR_MESSAGE_FORMAT);
    assert_int_equal(cfg_decode("null", &cfg, &err), EM_ERR_MESSAGE_FORMAT);
    assert_int_equal(cfg_decode("{\"securityLevel\":1", &cfg, &err), EM_ERR_MESSAGE_FORMAT);
    assert_int_equal(cfg_decode("{} x", &cfg, &err), EM_ERR_MESSAGE_FORMAT);
    assert_int_equal(cfg_decode("", &cfg, &err), EM_ERR_MESSAGE_FORMAT);
}

static void config_decode_refuses_deep_and_large_input(void **state)
{
    (void)state;
    em_device_config_t cfg;
    em_error_t err;
    assert_int_equal(cfg_decode("{\"a\":[[[[[[[[[[1]]]]]]]]]]}", &cfg, &err),
                     EM_ERR_MESSAGE_FORMAT);
    size_t n = EM_PAYLOAD_MAX + 10;
    char *big = malloc(n + 1);
    assert_non_null(big);
    memset(big, ' ', n);
    big[0] = '{';
    big[n - 1] = '}';
    big[n] = '\0';
    assert_int_equal(em_device_config_decode(big, n, &cfg, &err), EM_ERR_MESSAGE_FORMAT);
    free(big);
}

static void config_encode_writes_set_fields_in_order(void **state)
{
    (void)state;
    em_device_config_t cfg = {.reporting_interval = 60,
                              .sleep_threshold = 20,
                              .auto_wake = true,
                              .security_level = 3,
                              .has = 0x0f};
    char buf[128];
    size_t n = 0;
    assert_int_equal(em_device_config_encode(&cfg, buf, sizeof(buf), &n), EM_OK);
    const char *want =
        "{\"reportingInterval\":60,\"sleepThreshold\":20,\"autoWake\":true,\"securityLevel\":3}";
    assert_string_equal(buf, want);
    assert_int_equal(n, strlen(want));

    cfg.has = EM_CONFIG_HAS_AUTO_WAKE | EM_CONFIG_HAS_SECURITY_LEVEL;
    cfg.auto_wake = false;
    assert_int_equal(em_device_config_encode(&cfg, buf, sizeof(buf), &n), EM_OK);
    assert_string_equal(buf, "{\"autoWake\":false,\"securityLevel\":3}");
    cfg.has = 0;
    assert_int_equal(em_device_config_encode(&cfg, buf, sizeof(buf), &n), EM_OK);
    assert_string_equal(buf, "{}");
    assert_int_equal(n, 2);
}

static void config_encode_reports_buffer_too_small(void **state)
{
    (void)state;
    em_device_config_t cfg = {.sleep_threshold = 5, .has = EM_CONFIG_HAS_SLEEP_THRESHOLD};
    const char *want = "{\"sleepThreshold\":5}";
    size_t len = strlen(want);
    for (size_t size = 0; size <= len; size++) {
        char *buf = malloc(size > 0 ? size : 1);
        assert_non_null(buf);
        assert_int_equal(em_device_config_encode(&cfg, buf, size, NULL), EM_ERR_BUFFER_TOO_SMALL);
        free(buf);
    }
    char *buf = malloc(len + 1);
    assert_non_null(buf);
    size_t n = 0;
    assert_int_equal(em_device_config_encode(&cfg, buf, len + 1, &n), EM_OK);
    assert_string_equal(buf, want);
    free(buf);
}

static void config_round_trips_through_json(void **state)
{
    (void)state;
    for (unsigned has = 0; has < 16; has++) {
        em_device_config_t in = {.reporting_interval = 86400,
                                 .sleep_threshold = 0,
                                 .auto_wake = (has & 1) != 0,
                                 .security_level = 5,
                                 .has = (uint8_t)has};
        char buf[128];
        size_t n;
        assert_int_equal(em_device_config_encode(&in, buf, sizeof(buf), &n), EM_OK);
        em_device_config_t out;
        assert_int_equal(em_device_config_decode(buf, n, &out, NULL), EM_OK);
        assert_int_equal(out.has, in.has);
        if (has & EM_CONFIG_HAS_REPORTING_INTERVAL)
            assert_int_equal(out.reporting_interval, in.reporting_interval);
        if (has & EM_CONFIG_HAS_SLEEP_THRESHOLD)
            assert_int_equal(out.sleep_threshold, in.sleep_threshold);
        if (has & EM_CONFIG_HAS_AUTO_WAKE)
            assert_int_equal(out.auto_wake, in.auto_wake);
        if (has & EM_CONFIG_HAS_SECURITY_LEVEL)
            assert_int_equal(out.security_level, in.security_level);
    }
}

/* ---- device JSON ---- */

static void make_device(em_device_t *dev, char *name)
{
    memset(dev, 0, sizeof(*dev));
    memcpy(dev->id, "plug-01", 8);
    dev->id_len = 7;
    dev->type = EM_DEVICE_ACTUATOR;
    dev->name = name;
    dev->config.has = EM_CONFIG_HAS_REPORTING_INTERVAL;
    dev->config.reporting_interval = 60;
    dev->created_at_ms = INT64_C(1700000000000);
    dev->updated_at_ms = INT64_C(1700000000123);
}

static void device_encode_writes_exact_json(void **state)
{
    (void)state;
    char name[] = "Kitchen \"plug\" \\ caf\xc3\xa9";
    em_device_t dev;
    make_device(&dev, name);
    const char *groups[] = {"floor 1", "kitchen-east"};
    char buf[1024];
    size_t n = 0;
    assert_int_equal(em_device_encode(&dev, groups, 2, buf, sizeof(buf), &n), EM_OK);
    const char *want = "{\"id\":\"plug-01\",\"name\":\"Kitchen \\\"plug\\\" \\\\ caf\xc3\xa9\","
                       "\"type\":\"actuator\",\"groups\":[\"floor 1\",\"kitchen-east\"],"
                       "\"config\":{\"reportingInterval\":60},\"status\":null,"
                       "\"createdAt\":\"2023-11-14T22:13:20.000Z\","
                       "\"updatedAt\":\"2023-11-14T22:13:20.123Z\"}";
    assert_string_equal(buf, want);
    assert_int_equal(n, strlen(want));
}

static void device_encode_without_groups_writes_empty_list(void **state)
{
    (void)state;
    char name[] = "p";
    em_device_t dev;
    make_device(&dev, name);
    char buf[512];
    assert_int_equal(em_device_encode(&dev, NULL, 0, buf, sizeof(buf), NULL), EM_OK);
    assert_non_null(strstr(buf, "\"groups\":[],"));
    cJSON *root = cJSON_Parse(buf);
    assert_non_null(root);
    cJSON_Delete(root);
}

static void device_encode_includes_status(void **state)
{
    (void)state;
    char name[] = "p";
    em_device_t dev;
    make_device(&dev, name);
    dev.status.has = EM_STATUS_HAS_BATTERY | EM_STATUS_HAS_POWER_MODE;
    dev.status.battery_level = 75;
    dev.status.power_mode = EM_POWER_LOW_POWER;
    char buf[1024];
    size_t n;
    assert_int_equal(em_device_encode(&dev, NULL, 0, buf, sizeof(buf), &n), EM_OK);
    assert_int_equal(n, strlen(buf));
    cJSON *root = cJSON_Parse(buf);
    assert_non_null(root);
    const cJSON *st = cJSON_GetObjectItemCaseSensitive(root, "status");
    assert_true(cJSON_IsObject(st));
    const cJSON *bl = cJSON_GetObjectItemCaseSensitive(st, "batteryLevel");
    assert_true(cJSON_IsNumber(bl));
    assert_int_equal(bl->valueint, 75);
    const cJSON *pm = cJSON_GetObjectItemCaseSensitive(st, "powerMode");
    assert_true(cJSON_IsString(pm));
    assert_string_equal(pm->valuestring, "low_power");
    const cJSON *ca = cJSON_GetObjectItemCaseSensitive(root, "createdAt");
    assert_true(cJSON_IsString(ca));
    cJSON_Delete(root);
}

static void device_encode_reports_buffer_too_small_at_every_size(void **state)
{
    (void)state;
    char name[] = "Plug";
    em_device_t dev;
    make_device(&dev, name);
    dev.status.has = EM_STATUS_HAS_BATTERY;
    dev.status.battery_level = 5;
    const char *groups[] = {"g1"};
    char full[1024];
    size_t len;
    assert_int_equal(em_device_encode(&dev, groups, 1, full, sizeof(full), &len), EM_OK);
    /* Exactly sized heap buffers, so that ASan sees any write past the end. */
    for (size_t size = 0; size <= len; size++) {
        char *buf = malloc(size > 0 ? size : 1);
        assert_non_null(buf);
        assert_int_equal(em_device_encode(&dev, groups, 1, buf, size, NULL),
                         EM_ERR_BUFFER_TOO_SMALL);
        free(buf);
    }
    char *buf = malloc(len + 1);
    assert_non_null(buf);
    assert_int_equal(em_device_encode(&dev, groups, 1, buf, len + 1, NULL), EM_OK);
    assert_string_equal(buf, full);
    free(buf);
}

static void device_encode_refuses_bad_arguments(void **state)
{
    (void)state;
    char name[] = "p";
    em_device_t dev;
    make_device(&dev, name);
    char buf[512];
    assert_int_equal(em_device_encode(NULL, NULL, 0, buf, sizeof(buf), NULL),
                     EM_ERR_INVALID_ARGUMENT);
    assert_int_equal(em_device_encode(&dev, NULL, 1, buf, sizeof(buf), NULL),
                     EM_ERR_INVALID_ARGUMENT);
    dev.type = 9;
    assert_int_equal(em_device_encode(&dev, NULL, 0, buf, sizeof(buf), NULL),
                     EM_ERR_INVALID_ARGUMENT);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(device_id_accepts_3_to_50_chars),
        cmocka_unit_test(device_id_refuses_2_and_51_chars),
        cmocka_unit_test(device_id_accepts_every_allowed_character),
        cmocka_unit_test(device_id_refuses_other_characters),
        cmocka_unit_test(device_id_error_names_field_and_rule),
        cmocka_unit_test(device_id_uses_len_not_terminator),
        cmocka_unit_test(device_id_refuses_null),
        cmocka_unit_test(group_name_accepts_2_to_50_chars),
        cmocka_unit_test(group_name_refuses_1_and_51_chars),
        cmocka_unit_test(group_name_accepts_space_and_hyphen),
        cmocka_unit_test(group_name_refuses_underscore_and_others),
        cmocka_unit_test(device_name_accepts_1_to_100_bytes),
        cmocka_unit_test(device_name_refuses_0_and_101_bytes),
        cmocka_unit_test(device_name_accepts_utf8),
        cmocka_unit_test(device_name_refuses_invalid_utf8),
        cmocka_unit_test(device_name_refuses_control_characters),
        cmocka_unit_test(device_name_refuses_multibyte_char_split_by_len),
        cmocka_unit_test(config_with_nothing_set_is_valid),
        cmocka_unit_test(config_reporting_interval_bounds),
        cmocka_unit_test(config_sleep_threshold_bounds),
        cmocka_unit_test(config_security_level_bounds),
        cmocka_unit_test(config_unflagged_fields_are_not_checked),
        cmocka_unit_test(config_unknown_flag_bits_are_refused),
        cmocka_unit_test(config_null_is_refused),
        cmocka_unit_test(device_type_names_round_trip),
        cmocka_unit_test(device_type_name_out_of_range_is_null),
        cmocka_unit_test(device_type_parse_is_exact),
        cmocka_unit_test(config_decode_reads_every_field),
        cmocka_unit_test(config_decode_empty_object_sets_nothing),
        cmocka_unit_test(config_decode_boundaries),
        cmocka_unit_test(config_decode_refuses_non_integers),
        cmocka_unit_test(config_decode_accepts_integral_number_spellings),
        cmocka_unit_test(config_decode_auto_wake_must_be_boolean),
        cmocka_unit_test(config_decode_refuses_unknown_keys),
        cmocka_unit_test(config_decode_refuses_duplicate_keys),
        cmocka_unit_test(config_decode_refuses_non_objects),
        cmocka_unit_test(config_decode_refuses_deep_and_large_input),
        cmocka_unit_test(config_encode_writes_set_fields_in_order),
        cmocka_unit_test(config_encode_reports_buffer_too_small),
        cmocka_unit_test(config_round_trips_through_json),
        cmocka_unit_test(device_encode_writes_exact_json),
        cmocka_unit_test(device_encode_without_groups_writes_empty_list),
        cmocka_unit_test(device_encode_includes_status),
        cmocka_unit_test(device_encode_reports_buffer_too_small_at_every_size),
        cmocka_unit_test(device_encode_refuses_bad_arguments),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
