/*
 * emiot tests - test_log.c: the structured logger.
 *
 * Lines are captured with a sink and parsed back with cJSON: every assertion
 * about content is made on the parsed object, and every line must parse.
 */
#include <cjson/cJSON.h>
#include <errno.h>
#include <fcntl.h>
#include <math.h>
#include <pthread.h>
#include <sched.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <cmocka.h>

#include "emiot/log.h"

/* ------------------------------------------------------------------------ */
/* Capture sink                                                             */

#define CAP_LINES 64

typedef struct capture {
    pthread_mutex_t lock;
    size_t count;
    char lines[CAP_LINES][EM_LOG_LINE_MAX];
    size_t lens[CAP_LINES];
    em_log_level_t levels[CAP_LINES];
    int bad; /* a line that was not NUL-terminated or did not end in '\n' */
} capture_t;

static capture_t g_cap;

static void capture_sink(em_log_level_t level, const char *line, size_t len, void *userdata)
{
    capture_t *c = userdata;
    pthread_mutex_lock(&c->lock);
    if (len == 0 || len >= EM_LOG_LINE_MAX || line[len] != '\0' || line[len - 1] != '\n' ||
        strlen(line) != len)
        c->bad++;
    if (c->count < CAP_LINES && len < EM_LOG_LINE_MAX) {
        memcpy(c->lines[c->count], line, len + 1);
        c->lens[c->count] = len;
        c->levels[c->count] = level;
    }
    c->count++;
    pthread_mutex_unlock(&c->lock);
}

static int setup(void **state)
{
    (void)state;
    memset(&g_cap, 0, sizeof(g_cap));
    pthread_mutex_init(&g_cap.lock, NULL);
    em_log_set_level(EM_LOG_INFO);
    em_log_set_sink(capture_sink, &g_cap);
    return 0;
}

static int teardown(void **state)
{
    (void)state;
    em_log_set_sink(NULL, NULL);
    em_log_set_level(EM_LOG_INFO);
    pthread_mutex_destroy(&g_cap.lock);
    return 0;
}

/* Parses captured line i; fails the test when it is not one JSON object. */
static cJSON *parse_line(size_t i)
{
    assert_true(i < g_cap.count);
    assert_int_equal(g_cap.bad, 0);
    const char *line = g_cap.lines[i];
    size_t len = g_cap.lens[i];
    assert_true(len > 0 && len <= EM_LOG_LINE_MAX - 1);
    assert_int_equal(line[len - 1], '\n');
    /* Exactly one newline, the last byte; no raw control characters. */
    for (size_t k = 0; k + 1 < len; k++)
        assert_true((unsigned char)line[k] >= 0x20);
    const char *end = NULL;
    cJSON *root = cJSON_ParseWithLengthOpts(line, len - 1, &end, 0);
    assert_non_null(root);
    assert_true(cJSON_IsObject(root));
    assert_ptr_equal(end, line + len - 1);
    return root;
}

static cJSON *last_line(void)
{
    assert_true(g_cap.count > 0);
    return parse_line(g_cap.count - 1);
}

static const char *str_of(const cJSON *root, const char *key)
{
    const cJSON *item = cJSON_GetObjectItemCaseSensitive(root, key);
    assert_non_null(item);
    assert_true(cJSON_IsString(item));
    return item->valuestring;
}

/* Logs msg at info and returns the parsed "msg" (copied into buf). */
static const char *logged_msg(const char *msg, char *buf, size_t size)
{
    em_log(EM_LOG_INFO, "test", NULL, msg, NULL, 0);
    cJSON *root = last_line();
    snprintf(buf, size, "%s", str_of(root, "msg"));
    cJSON_Delete(root);
    return buf;
}

/* True when s is well-formed UTF-8. */
static int valid_utf8(const unsigned char *s, size_t n)
{
    size_t i = 0;
    while (i < n) {
        unsigned char c = s[i];
        size_t len;
        uint32_t cp;
        if (c < 0x80) {
            i++;
            continue;
        } else if (c >= 0xC2 && c <= 0xDF) {
            len = 2;
            cp = c & 0x1F;
        } else if (c >= 0xE0 && c <= 0xEF) {
            len = 3;
            cp = c & 0x0F;
        } else if (c >= 0xF0 && c <= 0xF4) {
            len = 4;
            cp = c & 0x07;
        } else {
            return 0;
        }
        if (i + len > n)
            return 0;
        for (size_t k = 1; k < len; k++) {
            if ((s[i + k] & 0xC0) != 0x80)
                return 0;
            cp = (cp << 6) | (s[i + k] & 0x3F);
        }
        if ((len == 3 && cp < 0x800) || (len == 4 && (cp < 0x10000 || cp > 0x10FFFF)) ||
            (cp >= 0xD800 && cp <= 0xDFFF))
            return 0;
        i += len;
    }
    return 1;
}

/* ------------------------------------------------------------------------ */
/* Levels                                                                   */

static void test_default_level_is_info(void **state)
{
    (void)state;
    assert_int_equal(em_log_get_level(), EM_LOG_INFO);
    assert_true(em_log_enabled(EM_LOG_INFO));
    assert_false(em_log_enabled(EM_LOG_DEBUG));
}

static void test_lines_below_level_are_dropped(void **state)
{
    (void)state;
    em_log_set_level(EM_LOG_WARN);
    em_log(EM_LOG_INFO, "test", NULL, "dropped", NULL, 0);
    em_log(EM_LOG_DEBUG, "test", NULL, "dropped", NULL, 0);
    em_logf(EM_LOG_INFO, "test", "dropped %d", 1);
    assert_int_equal(g_cap.count, 0);
    em_log(EM_LOG_WARN, "test", NULL, "kept", NULL, 0);
    em_log(EM_LOG_ERROR, "test", NULL, "kept", NULL, 0);
    em_logf(EM_LOG_FATAL, "test", "kept %d", 2);
    assert_int_equal(g_cap.count, 3);
    assert_int_equal(g_cap.levels[0], EM_LOG_WARN);
    assert_int_equal(g_cap.levels[1], EM_LOG_ERROR);
    assert_int_equal(g_cap.levels[2], EM_LOG_FATAL);
    cJSON *root = parse_line(2);
    assert_string_equal(str_of(root, "level"), "fatal");
    assert_string_equal(str_of(root, "msg"), "kept 2");
    cJSON_Delete(root);
}

static void test_trace_level_writes_everything(void **state)
{
    (void)state;
    em_log_set_level(EM_LOG_TRACE);
    for (int l = EM_LOG_TRACE; l <= EM_LOG_FATAL; l++)
        em_log((em_log_level_t)l, "test", NULL, "x", NULL, 0);
    assert_int_equal(g_cap.count, 6);
    for (size_t i = 0; i < 6; i++) {
        cJSON *root = parse_line(i);
        assert_string_equal(str_of(root, "level"), em_log_level_name((em_log_level_t)i));
        cJSON_Delete(root);
    }
}

static void test_level_off_drops_everything(void **state)
{
    (void)state;
    em_log_set_level(EM_LOG_OFF);
    for (int l = EM_LOG_TRACE; l <= EM_LOG_FATAL; l++) {
        assert_false(em_log_enabled((em_log_level_t)l));
        em_log((em_log_level_t)l, "test", NULL, "x", NULL, 0);
    }
    assert_int_equal(g_cap.count, 0);
}

static void test_off_and_out_of_range_levels_are_never_enabled(void **state)
{
    (void)state;
    em_log_set_level(EM_LOG_TRACE);
    assert_false(em_log_enabled(EM_LOG_OFF));
    assert_false(em_log_enabled((em_log_level_t)7));
    assert_false(em_log_enabled((em_log_level_t)-1));
    em_log(EM_LOG_OFF, "test", NULL, "x", NULL, 0);
    em_log((em_log_level_t)42, "test", NULL, "x", NULL, 0);
    em_logf((em_log_level_t)-3, "test", "x");
    assert_int_equal(g_cap.count, 0);
}

static void test_set_level_ignores_invalid_values(void **state)
{
    (void)state;
    em_log_set_level(EM_LOG_ERROR);
    em_log_set_level((em_log_level_t)7);
    em_log_set_level((em_log_level_t)-1);
    assert_int_equal(em_log_get_level(), EM_LOG_ERROR);
}

static void test_level_parse_accepts_every_name(void **state)
{
    (void)state;
    assert_int_equal(em_log_level_parse("trace"), EM_LOG_TRACE);
    assert_int_equal(em_log_level_parse("debug"), EM_LOG_DEBUG);
    assert_int_equal(em_log_level_parse("info"), EM_LOG_INFO);
    assert_int_equal(em_log_level_parse("warn"), EM_LOG_WARN);
    assert_int_equal(em_log_level_parse("error"), EM_LOG_ERROR);
    assert_int_equal(em_log_level_parse("fatal"), EM_LOG_FATAL);
    assert_int_equal(em_log_level_parse("off"), EM_LOG_OFF);
}

static void test_level_parse_rejects_anything_else(void **state)
{
    (void)state;
    const char *bad[] = {"", "inf", "infos", "info ", " info", "warning", "INFO", "0", "none"};
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++)
        assert_int_equal(em_log_level_parse(bad[i]), -1);
    assert_int_equal(em_log_level_parse(NULL), -1);
}

static void test_level_name_round_trips_and_unknown(void **state)
{
    (void)state;
    for (int l = EM_LOG_TRACE; l <= EM_LOG_OFF; l++)
        assert_int_equal(em_log_level_parse(em_log_level_name((em_log_level_t)l)), l);
    assert_string_equal(em_log_level_name((em_log_level_t)7), "unknown");
    assert_string_equal(em_log_level_name((em_log_level_t)-1), "unknown");
}

/* ------------------------------------------------------------------------ */
/* Line format                                                              */

static void test_line_has_standard_keys_in_order(void **state)
{
    (void)state;
    em_log(EM_LOG_INFO, "mqtt", "req_ab12", "connected", NULL, 0);
    assert_int_equal(g_cap.count, 1);
    cJSON *root = last_line();
    const char *order[] = {"ts", "level", "module", "msg", "cid"};
    const cJSON *item = root->child;
    for (size_t i = 0; i < 5; i++) {
        assert_non_null(item);
        assert_string_equal(item->string, order[i]);
        item = item->next;
    }
    assert_null(item);
    assert_string_equal(str_of(root, "level"), "info");
    assert_string_equal(str_of(root, "module"), "mqtt");
    assert_string_equal(str_of(root, "msg"), "connected");
    assert_string_equal(str_of(root, "cid"), "req_ab12");
    cJSON_Delete(root);
}

static void test_timestamp_is_rfc3339_utc_with_milliseconds(void **state)
{
    (void)state;
    em_log(EM_LOG_INFO, "test", NULL, "x", NULL, 0);
    cJSON *root = last_line();
    const char *ts = str_of(root, "ts");
    assert_int_equal(strlen(ts), 24);
    const char *pattern = "dddd-dd-ddTdd:dd:dd.dddZ";
    for (size_t i = 0; i < 24; i++) {
        if (pattern[i] == 'd')
            assert_true(ts[i] >= '0' && ts[i] <= '9');
        else
            assert_int_equal(ts[i], pattern[i]);
    }
    assert_true(strncmp(ts, "2020", 4) > 0);
    cJSON_Delete(root);
}

static void test_null_cid_module_and_msg_are_handled(void **state)
{
    (void)state;
    em_log(EM_LOG_INFO, NULL, NULL, NULL, NULL, 0);
    cJSON *root = last_line();
    assert_null(cJSON_GetObjectItemCaseSensitive(root, "cid"));
    assert_null(cJSON_GetObjectItemCaseSensitive(root, "module"));
    assert_string_equal(str_of(root, "msg"), "");
    cJSON_Delete(root);
}

static void test_fields_of_every_kind_are_written(void **state)
{
    (void)state;
    em_log_field_t f[] = {
        EM_LOG_STR("device_id", "sensor-01"),
        EM_LOG_INT("battery", 75),
        EM_LOG_INT("big", -9223372036854775807LL),
        EM_LOG_DBL("power_w", 12.5),
        EM_LOG_BOOL("online", 1),
        EM_LOG_BOOL("sleeping", 0),
    };
    em_log(EM_LOG_INFO, "manager", NULL, "status", f, sizeof(f) / sizeof(f[0]));
    cJSON *root = last_line();
    assert_string_equal(str_of(root, "device_id"), "sensor-01");
    assert_true(cJSON_GetObjectItem(root, "battery")->valuedouble == 75.0);
    assert_true(cJSON_GetObjectItem(root, "power_w")->valuedouble == 12.5);
    assert_true(cJSON_IsTrue(cJSON_GetObjectItem(root, "online")));
    assert_true(cJSON_IsFalse(cJSON_GetObjectItem(root, "sleeping")));
    assert_non_null(strstr(g_cap.lines[0], "\"big\":-9223372036854775807"));
    cJSON_Delete(root);
}

static void test_non_finite_double_is_null(void **state)
{
    (void)state;
    em_log_field_t f[] = {EM_LOG_DBL("a", NAN), EM_LOG_DBL("b", INFINITY),
                          EM_LOG_DBL("c", -INFINITY), EM_LOG_DBL("d", 1e300)};
    em_log(EM_LOG_INFO, "test", NULL, "x", f, 4);
    cJSON *root = last_line();
    assert_true(cJSON_IsNull(cJSON_GetObjectItem(root, "a")));
    assert_true(cJSON_IsNull(cJSON_GetObjectItem(root, "b")));
    assert_true(cJSON_IsNull(cJSON_GetObjectItem(root, "c")));
    assert_true(cJSON_GetObjectItem(root, "d")->valuedouble == 1e300);
    cJSON_Delete(root);
}

static void test_null_string_value_is_null_and_null_key_is_skipped(void **state)
{
    (void)state;
    em_log_field_t f[] = {EM_LOG_STR("v", NULL), EM_LOG_STR(NULL, "orphan"),
                          EM_LOG_INT("after", 1)};
    em_log(EM_LOG_INFO, "test", NULL, "x", f, 3);
    cJSON *root = last_line();
    assert_true(cJSON_IsNull(cJSON_GetObjectItem(root, "v")));
    assert_null(strstr(g_cap.lines[0], "orphan"));
    assert_non_null(cJSON_GetObjectItem(root, "after"));
    cJSON_Delete(root);
}

static void test_null_fields_with_count_is_safe(void **state)
{
    (void)state;
    em_log(EM_LOG_INFO, "test", NULL, "x", NULL, 5);
    cJSON *root = last_line();
    assert_string_equal(str_of(root, "msg"), "x");
    cJSON_Delete(root);
}

static void test_field_cannot_impersonate_line_keys(void **state)
{
    (void)state;
    em_log_field_t f[] = {EM_LOG_STR("level", "fatal"), EM_LOG_STR("msg", "spoof"),
                          EM_LOG_STR("truncated", "no")};
    em_log(EM_LOG_INFO, "test", NULL, "real", f, 3);
    cJSON *root = last_line();
    assert_string_equal(str_of(root, "level"), "info");
    assert_string_equal(str_of(root, "msg"), "real");
    assert_string_equal(str_of(root, "_level"), "fatal");
    assert_string_equal(str_of(root, "_msg"), "spoof");
    assert_string_equal(str_of(root, "_truncated"), "no");
    cJSON_Delete(root);
}

static void test_logf_formats_message(void **state)
{
    (void)state;
    em_logf(EM_LOG_WARN, "registry", "device %s has %d errors (%.1f%%)", "d-1", 3, 12.5);
    cJSON *root = last_line();
    assert_string_equal(str_of(root, "msg"), "device d-1 has 3 errors (12.5%)");
    assert_string_equal(str_of(root, "module"), "registry");
    assert_null(cJSON_GetObjectItem(root, "cid"));
    cJSON_Delete(root);
}

static void test_logging_preserves_errno(void **state)
{
    (void)state;
    errno = ERANGE;
    em_log(EM_LOG_INFO, "test", NULL, "x", NULL, 0);
    assert_int_equal(errno, ERANGE);
    em_logf(EM_LOG_INFO, "test", "y %d", 1);
    assert_int_equal(errno, ERANGE);
}

/* ------------------------------------------------------------------------ */
/* Escaping                                                                 */

static void test_quotes_and_backslashes_round_trip(void **state)
{
    (void)state;
    const char *hostile = "a \"quoted\" \\ back\\slash \\\" \"}, \"level\":\"fatal";
    em_log_field_t f[] = {EM_LOG_STR("v", hostile)};
    em_log(EM_LOG_INFO, "te\"st", "c\\id", hostile, f, 1);
    cJSON *root = last_line();
    assert_string_equal(str_of(root, "msg"), hostile);
    assert_string_equal(str_of(root, "v"), hostile);
    assert_string_equal(str_of(root, "module"), "te\"st");
    assert_string_equal(str_of(root, "cid"), "c\\id");
    assert_string_equal(str_of(root, "level"), "info");
    cJSON_Delete(root);
}

static void test_control_characters_are_escaped(void **state)
{
    (void)state;
    char s[40];
    size_t n = 0;
    for (int c = 1; c < 0x20; c++)
        s[n++] = (char)c;
    s[n++] = 0x7f;
    s[n++] = 'z';
    s[n] = '\0';
    em_log_field_t f[] = {EM_LOG_STR("v", s)};
    em_log(EM_LOG_INFO, "test", NULL, s, f, 1);
    cJSON *root = last_line(); /* also checks no raw control byte */
    assert_string_equal(str_of(root, "msg"), s);
    assert_string_equal(str_of(root, "v"), s);
    assert_non_null(strstr(g_cap.lines[0], "\\u0001"));
    assert_non_null(strstr(g_cap.lines[0], "\\u001b"));
    assert_non_null(strstr(g_cap.lines[0], "\\u007f"));
    assert_non_null(strstr(g_cap.lines[0], "\\n"));
    cJSON_Delete(root);
}

static void test_newline_in_message_cannot_forge_a_line(void **state)
{
    (void)state;
    em_log(EM_LOG_INFO, "test", NULL,
           "ok\n{\"ts\":\"x\",\"level\":\"fatal\",\"msg\":\"forged\"}\r\n", NULL, 0);
    assert_int_equal(g_cap.count, 1);
    assert_null(memchr(g_cap.lines[0], '\n', g_cap.lens[0] - 1));
    cJSON *root = last_line();
    assert_string_equal(str_of(root, "level"), "info");
    cJSON_Delete(root);
}

static void test_valid_utf8_is_kept(void **state)
{
    (void)state;
    const char *s = "caf\xc3\xa9 \xe2\x82\xac \xf0\x9f\x98\x80 \xef\xbf\xbf end";
    char buf[256];
    assert_string_equal(logged_msg(s, buf, sizeof(buf)), s);
}

static void test_line_separators_are_escaped(void **state)
{
    (void)state;
    const char *s = "a\xe2\x80\xa8"
                    "b\xe2\x80\xa9"
                    "c";
    char buf[64];
    assert_string_equal(logged_msg(s, buf, sizeof(buf)), s);
    assert_non_null(strstr(g_cap.lines[0], "\\u2028"));
    assert_non_null(strstr(g_cap.lines[0], "\\u2029"));
}

static void test_invalid_utf8_is_replaced(void **state)
{
    (void)state;
    const char *bad[] = {
        "\x80",             /* lone continuation */
        "\xc0\xaf",         /* overlong '/' */
        "\xe0\x80\xaf",     /* overlong, 3 bytes */
        "\xed\xa0\x80",     /* UTF-16 surrogate */
        "\xf4\x90\x80\x80", /* above U+10FFFF */
        "\xf5\x80\x80\x80", /* invalid lead */
        "\xe2\x82",         /* truncated sequence */
        "\xff\xfe",         /* never valid */
        "abc\xc3",          /* truncated at the end */
    };
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        char msg[64];
        snprintf(msg, sizeof(msg), "<%s>", bad[i]);
        em_log_field_t f[] = {EM_LOG_STR("v", msg)};
        em_log(EM_LOG_INFO, "test", NULL, msg, f, 1);
        cJSON *root = last_line();
        const char *got = str_of(root, "msg");
        assert_true(valid_utf8((const unsigned char *)got, strlen(got)));
        assert_non_null(strstr(got, "\xef\xbf\xbd"));
        assert_int_equal(got[0], '<');
        assert_int_equal(got[strlen(got) - 1], '>');
        assert_string_equal(str_of(root, "v"), got);
        assert_true(valid_utf8((const unsigned char *)g_cap.lines[g_cap.count - 1],
                               g_cap.lens[g_cap.count - 1]));
        cJSON_Delete(root);
    }
}

static void test_binary_bytes_yield_valid_json(void **state)
{
    (void)state;
    char s[256];
    for (int i = 0; i < 255; i++)
        s[i] = (char)(i + 1);
    s[255] = '\0';
    em_log_field_t f[] = {EM_LOG_STR(s, s)};
    em_log(EM_LOG_INFO, s, s, s, f, 1);
    cJSON *root = last_line();
    const char *got = str_of(root, "msg");
    assert_true(valid_utf8((const unsigned char *)got, strlen(got)));
    /* The ASCII half survives unchanged. */
    assert_memory_equal(got, s, 127);
    cJSON_Delete(root);
}

/* ------------------------------------------------------------------------ */
/* Truncation                                                               */

static void assert_truncated(const cJSON *root)
{
    const cJSON *t = cJSON_GetObjectItemCaseSensitive(root, "truncated");
    assert_non_null(t);
    assert_true(cJSON_IsTrue(t));
}

static void test_long_message_is_cut_and_flagged(void **state)
{
    (void)state;
    char *msg = malloc(10000);
    assert_non_null(msg);
    memset(msg, 'm', 9999);
    msg[9999] = '\0';
    em_log_field_t f[] = {EM_LOG_STR("device_id", "sensor-01")};
    em_log(EM_LOG_INFO, "test", "req_1", msg, f, 1);
    cJSON *root = last_line();
    assert_truncated(root);
    const char *got = str_of(root, "msg");
    assert_true(strlen(got) > 1000);
    assert_memory_equal(got, msg, strlen(got));
    /* The short fields after the message survive. */
    assert_string_equal(str_of(root, "cid"), "req_1");
    assert_string_equal(str_of(root, "device_id"), "sensor-01");
    assert_int_equal(g_cap.lens[0], EM_LOG_LINE_MAX - 1);
    cJSON_Delete(root);
    free(msg);
}

static void test_line_just_fitting_is_not_truncated(void **state)
{
    (void)state;
    char msg[EM_LOG_LINE_MAX];
    memset(msg, 'a', sizeof(msg));
    /* Grow the message until the line first gets truncated. */
    size_t n = 1500;
    for (;; n++) {
        msg[n] = '\0';
        g_cap.count = 0;
        em_log(EM_LOG_INFO, "test", NULL, msg, NULL, 0);
        cJSON *root = last_line();
        int truncated = cJSON_GetObjectItem(root, "truncated") != NULL;
        if (!truncated) {
            assert_int_equal(strlen(str_of(root, "msg")), n);
        }
        cJSON_Delete(root);
        msg[n] = 'a';
        if (truncated)
            break;
        assert_true(n < sizeof(msg) - 1);
    }
    /* The longest untruncated line used the whole buffer. */
    msg[n - 1] = '\0';
    g_cap.count = 0;
    em_log(EM_LOG_INFO, "test", NULL, msg, NULL, 0);
    assert_int_equal(g_cap.lens[0], EM_LOG_LINE_MAX - 1);
}

static void test_escapes_are_never_split_by_truncation(void **state)
{
    (void)state;
    /* Messages made of 2- and 6-byte escapes and multi-byte characters, at
     * every alignment against the end of the line. */
    const char *units[] = {"\"", "\\", "\x01", "\xe2\x82\xac", "\xf0\x9f\x98\x80", "\xff"};
    char *msg = malloc(4200);
    assert_non_null(msg);
    for (size_t u = 0; u < sizeof(units) / sizeof(units[0]); u++) {
        for (size_t pad = 0; pad < 6; pad++) {
            size_t n = 0;
            for (size_t p = 0; p < pad; p++)
                msg[n++] = 'p';
            size_t ul = strlen(units[u]);
            while (n + ul < 4100) {
                memcpy(msg + n, units[u], ul);
                n += ul;
            }
            msg[n] = '\0';
            g_cap.count = 0;
            em_log(EM_LOG_INFO, "test", NULL, msg, NULL, 0);
            cJSON *root = last_line();
            assert_truncated(root);
            const char *got = str_of(root, "msg");
            assert_true(valid_utf8((const unsigned char *)got, strlen(got)));
            cJSON_Delete(root);
        }
    }
    free(msg);
}

static void test_fields_that_do_not_fit_are_dropped_whole(void **state)
{
    (void)state;
    em_log_field_t f[200];
    char keys[200][16];
    for (int i = 0; i < 200; i++) {
        snprintf(keys[i], sizeof(keys[i]), "field_%03d", i);
        f[i] = EM_LOG_STR(keys[i], "some value");
    }
    em_log(EM_LOG_INFO, "test", NULL, "many fields", f, 200);
    cJSON *root = last_line();
    assert_truncated(root);
    assert_string_equal(str_of(root, "msg"), "many fields");
    assert_string_equal(str_of(root, "field_000"), "some value");
    int present = 0;
    for (int i = 0; i < 200; i++) {
        const cJSON *item = cJSON_GetObjectItem(root, keys[i]);
        if (item != NULL) {
            assert_string_equal(item->valuestring, "some value");
            present++;
        } else {
            /* Fields are dropped from the end, never from the middle. */
            for (int j = i; j < 200; j++)
                assert_null(cJSON_GetObjectItem(root, keys[j]));
            break;
        }
    }
    assert_true(present > 10 && present < 200);
    cJSON_Delete(root);
}

static void test_huge_field_value_is_cut(void **state)
{
    (void)state;
    char *v = malloc(5000);
    assert_non_null(v);
    memset(v, 'v', 4999);
    v[4999] = '\0';
    em_log_field_t f[] = {EM_LOG_STR("payload", v), EM_LOG_INT("after", 7)};
    em_log(EM_LOG_INFO, "test", NULL, "message kept", f, 2);
    cJSON *root = last_line();
    assert_truncated(root);
    assert_string_equal(str_of(root, "msg"), "message kept");
    const char *got = str_of(root, "payload");
    assert_true(strlen(got) > 1000);
    assert_memory_equal(got, v, strlen(got));
    cJSON_Delete(root);
    free(v);
}

static void test_long_message_and_huge_field_share_the_line(void **state)
{
    (void)state;
    char *big = malloc(5000);
    assert_non_null(big);
    memset(big, 'x', 4999);
    big[4999] = '\0';
    em_log_field_t f[] = {EM_LOG_STR("payload", big)};
    em_log(EM_LOG_INFO, "test", "req", big, f, 1);
    cJSON *root = last_line();
    assert_truncated(root);
    assert_true(strlen(str_of(root, "msg")) >= 256);
    assert_non_null(cJSON_GetObjectItem(root, "payload"));
    assert_int_equal(g_cap.lens[0], EM_LOG_LINE_MAX - 1);
    cJSON_Delete(root);
    free(big);
}

static void test_long_module_cid_and_key_are_cut(void **state)
{
    (void)state;
    char big[600];
    memset(big, 'k', sizeof(big) - 1);
    big[sizeof(big) - 1] = '\0';
    em_log_field_t f[] = {EM_LOG_INT(big, 1)};
    em_log(EM_LOG_INFO, big, big, "m", f, 1);
    cJSON *root = last_line();
    assert_truncated(root);
    assert_true(strlen(str_of(root, "module")) < 100);
    assert_true(strlen(str_of(root, "cid")) < 200);
    assert_string_equal(str_of(root, "msg"), "m");
    cJSON_Delete(root);
}

static void test_logf_overflow_is_flagged(void **state)
{
    (void)state;
    char big[3000];
    memset(big, 'y', sizeof(big) - 1);
    big[sizeof(big) - 1] = '\0';
    em_logf(EM_LOG_ERROR, "test", "start %s end", big);
    cJSON *root = last_line();
    assert_truncated(root);
    assert_true(strncmp(str_of(root, "msg"), "start yyy", 9) == 0);
    cJSON_Delete(root);
}

static void test_logf_cut_inside_multibyte_character_stays_valid(void **state)
{
    (void)state;
    char big[2100];
    size_t n = 0;
    big[n++] = 'a';
    while (n + 3 < sizeof(big)) {
        memcpy(big + n, "\xe2\x82\xac", 3);
        n += 3;
    }
    big[n] = '\0';
    em_logf(EM_LOG_INFO, "test", "%s", big);
    cJSON *root = last_line();
    const char *got = str_of(root, "msg");
    assert_true(valid_utf8((const unsigned char *)got, strlen(got)));
    assert_null(strstr(got, "\xef\xbf\xbd"));
    cJSON_Delete(root);
}

/* ------------------------------------------------------------------------ */
/* Redaction                                                                */

static void test_secret_keys_are_recognised(void **state)
{
    (void)state;
    const char *secret[] = {
        "password",   "PASSWORD",       "mqtt_password", "passwd",        "pass",
        "pass_word",  "db.pass",        "secret",        "clientSecret",  "token",
        "jwtToken",   "auth_token",     "access-token",  "key",           "apikey",
        "api_key",    "API_KEY",        "apiKey",        "x-api-key",     "keyfile",
        "privkey",    "signingKeyPath", "authorization", "Authorization", "passphrase",
        "credential", "credentials",    "private",       "private_key",   "cookie",
        "Set-Cookie", "auth",           "jwt",           "pwd",           "passkey",
    };
    for (size_t i = 0; i < sizeof(secret) / sizeof(secret[0]); i++) {
        if (!em_log_key_is_secret(secret[i]))
            fail_msg("key \"%s\" should be secret", secret[i]);
    }
}

static void test_ordinary_keys_are_not_secret(void **state)
{
    (void)state;
    const char *plain[] = {"device_id", "topic",  "battery",   "module",  "count",     "firmware",
                           "group",     "author", "keepalive", "broker",  "requestId", "monkeys",
                           "ts",        "host",   "signal",    "power_w", "kid_count"};
    for (size_t i = 0; i < sizeof(plain) / sizeof(plain[0]); i++) {
        if (em_log_key_is_secret(plain[i]))
            fail_msg("key \"%s\" should not be secret", plain[i]);
    }
    assert_false(em_log_key_is_secret(NULL));
    assert_false(em_log_key_is_secret(""));
}

static void test_secret_word_anywhere_in_a_long_key_is_found(void **state)
{
    (void)state;
    /* Long keys are checked in windows: a word across a window edge, with
     * separators inside, must still be found. */
    const char *words[] = {"password", "pass_phrase", "authori-zation", "api.key"};
    for (size_t w = 0; w < sizeof(words) / sizeof(words[0]); w++) {
        for (size_t at = 230; at < 270; at++) {
            char key[600];
            memset(key, 'x', at);
            key[0] = 'y'; /* "x" alone is not a word boundary */
            snprintf(key + at, sizeof(key) - at, "%s_zzzz", words[w]);
            if (!em_log_key_is_secret(key))
                fail_msg("\"%s\" at %zu not found", words[w], at);
        }
    }
    char plain[600];
    memset(plain, 'x', sizeof(plain) - 1);
    plain[sizeof(plain) - 1] = '\0';
    assert_false(em_log_key_is_secret(plain));
}

static void test_secret_fields_are_redacted_whatever_their_kind(void **state)
{
    (void)state;
    em_log_field_t f[] = {
        EM_LOG_STR("password", "hunter2"),
        EM_LOG_STR("mqtt_password", "hunter3"),
        EM_LOG_STR("jwtToken", "eyJabc"),
        EM_LOG_STR("api_key", "k-123"),
        EM_LOG_STR("Authorization", "Bearer abc"),
        EM_LOG_INT("pin_secret", 1234),
        EM_LOG_DBL("token_value", 3.5),
        EM_LOG_BOOL("has_passphrase", 1),
        EM_LOG_STR("keyfile", "/etc/emiot/key.pem"),
        EM_LOG_STR("cookie", "sid=1"),
        EM_LOG_STR("secret", NULL),
    };
    size_t n = sizeof(f) / sizeof(f[0]);
    em_log(EM_LOG_INFO, "test", NULL, "x", f, n);
    cJSON *root = last_line();
    for (size_t i = 0; i < n; i++)
        assert_string_equal(str_of(root, f[i].key), "[REDACTED]");
    const char *line = g_cap.lines[0];
    const char *leaks[] = {"hunter", "eyJabc", "k-123", "Bearer", "1234", "key.pem", "sid="};
    for (size_t i = 0; i < sizeof(leaks) / sizeof(leaks[0]); i++)
        assert_null(strstr(line, leaks[i]));
    cJSON_Delete(root);
}

static void test_non_secret_fields_are_untouched(void **state)
{
    (void)state;
    em_log_field_t f[] = {
        EM_LOG_STR("device_id", "sensor-01"), EM_LOG_STR("topic", "device/sensor-01/status"),
        EM_LOG_STR("note", "password=visible-because-not-msg"), EM_LOG_INT("battery", 75)};
    em_log(EM_LOG_INFO, "test", NULL, "x", f, 4);
    cJSON *root = last_line();
    assert_string_equal(str_of(root, "device_id"), "sensor-01");
    assert_string_equal(str_of(root, "topic"), "device/sensor-01/status");
    assert_string_equal(str_of(root, "note"), "password=visible-because-not-msg");
    assert_true(cJSON_GetObjectItem(root, "battery")->valuedouble == 75.0);
    cJSON_Delete(root);
}

static void test_message_secret_pairs_are_masked(void **state)
{
    (void)state;
    struct {
        const char *in;
        const char *out;
    } cases[] = {
        {"login password=hunter2 ok", "login password=[REDACTED] ok"},
        {"PASSWORD:hunter2", "PASSWORD:[REDACTED]"},
        {"password: hunter2 next", "password: [REDACTED] next"},
        {"token=abc.def,user=bob", "token=[REDACTED],user=bob"},
        {"url?key=k1&secret=s2&x=3", "url?key=[REDACTED]&secret=[REDACTED]&x=3"},
        {"Secret=s3\tTab", "Secret=[REDACTED]\tTab"},
        {"api_key=zz'quoted", "api_key=[REDACTED]'quoted"},
        {"mqtt_password=p1 jwtToken=t1", "mqtt_password=[REDACTED] jwtToken=[REDACTED]"},
        {"password=\"two words\" after", "password=\"[REDACTED]\" after"},
        {"{\"password\":\"hunter2\",\"user\":\"bob\"}",
         "{\"password\":\"[REDACTED]\",\"user\":\"bob\"}"},
        {"{\\\"token\\\":\\\"abc\\\"}", "{\\\"token\\\":\\\"[REDACTED]\\\"}"},
        {"Authorization: Bearer opaque-credential", "Authorization: Bearer [REDACTED]"},
        {"Authorization: Basic dXNlcjpwdw==", "Authorization: Basic [REDACTED]"},
        {"password=", "password="},
    };
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        char buf[256];
        g_cap.count = 0;
        const char *got = logged_msg(cases[i].in, buf, sizeof(buf));
        if (strcmp(got, cases[i].out) != 0)
            fail_msg("masking \"%s\": got \"%s\", want \"%s\"", cases[i].in, got, cases[i].out);
    }
}

static void test_message_jwt_is_masked(void **state)
{
    (void)state;
    const char *jwt = "eyJhbGciOiJFUzI1NiJ9.eyJzdWIiOiJzZW5zb3ItMDEifQ.MEUCIQDx-_abc123";
    char msg[256];
    char buf[256];
    snprintf(msg, sizeof(msg), "issued %s to sensor-01.", jwt);
    assert_string_equal(logged_msg(msg, buf, sizeof(buf)), "issued [REDACTED] to sensor-01.");
    /* A JWE (five segments) and a token with an empty signature. */
    g_cap.count = 0;
    assert_string_equal(logged_msg("t=eyJa.eyJb.c.d.e end", buf, sizeof(buf)), "t=[REDACTED] end");
    g_cap.count = 0;
    assert_string_equal(logged_msg("(eyJhbGciOiJub25lIn0.eyJ4IjoxfQ.)", buf, sizeof(buf)),
                        "([REDACTED])");
}

static void test_message_api_key_is_masked(void **state)
{
    (void)state;
    const char *key = "iot_0123456789abcdef0123456789abcdef0123456789abcdef";
    char msg[256];
    char buf[256];
    snprintf(msg, sizeof(msg), "created %s for ops", key);
    assert_string_equal(logged_msg(msg, buf, sizeof(buf)), "created [REDACTED] for ops");
    /* 47 hex digits is not a key. */
    g_cap.count = 0;
    const char *short_key = "iot_0123456789abcdef0123456789abcdef0123456789a";
    assert_string_equal(logged_msg(short_key, buf, sizeof(buf)), short_key);
}

static void test_message_url_password_is_masked(void **state)
{
    (void)state;
    char buf[256];
    assert_string_equal(
        logged_msg("connecting to mqtts://admin:s3cr3t@broker:8883/x", buf, sizeof(buf)),
        "connecting to mqtts://admin:[REDACTED]@broker:8883/x");
    g_cap.count = 0;
    assert_string_equal(logged_msg("see https://example.com:443/path", buf, sizeof(buf)),
                        "see https://example.com:443/path");
}

static void test_message_without_secrets_is_untouched(void **state)
{
    (void)state;
    const char *plain = "device sensor-01 status: battery=75, mode=normal at 10:00:00 "
                        "(topic device/sensor-01/status, monkey business aside)";
    char buf[256];
    assert_string_equal(logged_msg(plain, buf, sizeof(buf)), plain);
}

static void test_logf_masks_secrets_from_arguments(void **state)
{
    (void)state;
    em_logf(EM_LOG_INFO, "test", "user %s password=%s token=%s", "bob", "hunter2",
            "eyJhbGciOiJIUzI1NiJ9.eyJ4IjoxfQ.sig");
    cJSON *root = last_line();
    assert_string_equal(str_of(root, "msg"), "user bob password=[REDACTED] token=[REDACTED]");
    assert_null(strstr(g_cap.lines[0], "hunter2"));
    cJSON_Delete(root);
}

static void test_secret_at_truncation_point_does_not_leak(void **state)
{
    (void)state;
    /* Masked JWTs shrink the message, so the end of what em_logf could format
     * lands inside the line: an API key cut there must not show its start. */
    const char *jwt = "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxIn0.c2lnbmF0dXJl ";
    const char *key = "iot_0123456789abcdef0123456789abcdef0123456789abcdef";
    char msg[4000];
    for (size_t shift = 5; shift <= 50; shift += 5) {
        size_t n = 0;
        while (n + strlen(jwt) <= 1900) {
            memcpy(msg + n, jwt, strlen(jwt));
            n += strlen(jwt);
        }
        while (n < EM_LOG_LINE_MAX - 1 - shift)
            msg[n++] = ' ';
        memcpy(msg + n, key, strlen(key) + 1);
        g_cap.count = 0;
        em_logf(EM_LOG_INFO, "test", "%s", msg);
        cJSON *root = last_line();
        assert_truncated(root);
        const char *got = str_of(root, "msg");
        assert_true(strlen(got) < 1000);
        assert_null(strstr(got, "iot_"));
        assert_null(strstr(got, "0123"));
        cJSON_Delete(root);
    }
}

static void test_secret_value_at_end_of_long_message_is_masked(void **state)
{
    (void)state;
    /* "password=" fits in the line but its value would straddle the end:
     * masking happens before cutting, so no part of the value is written. */
    char *msg = malloc(8000);
    assert_non_null(msg);
    size_t n = 0;
    memset(msg, 'a', 1930);
    n += 1930;
    memcpy(msg + n, " password=", 10);
    n += 10;
    for (int i = 0; i < 50; i++, n += 7)
        memcpy(msg + n, "hunter2", 7);
    msg[n++] = ' ';
    memset(msg + n, 'b', 100);
    n += 100;
    msg[n] = '\0';
    em_log(EM_LOG_INFO, "test", NULL, msg, NULL, 0);
    cJSON *root = last_line();
    assert_truncated(root);
    assert_non_null(strstr(str_of(root, "msg"), "password="));
    assert_null(strstr(g_cap.lines[0], "hunter"));
    cJSON_Delete(root);
    free(msg);
}

/* ------------------------------------------------------------------------ */
/* Sinks                                                                    */

typedef struct counting {
    atomic_int lines;
    atomic_int bad;
    atomic_int last_level;
} counting_t;

static void counting_sink(em_log_level_t level, const char *line, size_t len, void *userdata)
{
    counting_t *c = userdata;
    cJSON *root = cJSON_ParseWithLength(line, len);
    if (root == NULL || len == 0 || line[len - 1] != '\n')
        atomic_fetch_add(&c->bad, 1);
    cJSON_Delete(root);
    atomic_store(&c->last_level, (int)level);
    atomic_fetch_add(&c->lines, 1);
}

static void test_sink_receives_level_and_userdata(void **state)
{
    (void)state;
    counting_t a = {0};
    em_log_set_sink(counting_sink, &a);
    em_log(EM_LOG_ERROR, "test", NULL, "x", NULL, 0);
    assert_int_equal(atomic_load(&a.lines), 1);
    assert_int_equal(atomic_load(&a.bad), 0);
    assert_int_equal(atomic_load(&a.last_level), EM_LOG_ERROR);
    assert_int_equal(g_cap.count, 0);
}

static void test_sink_replacement_takes_effect_at_once(void **state)
{
    (void)state;
    counting_t a = {0};
    counting_t b = {0};
    em_log_set_sink(counting_sink, &a);
    em_log(EM_LOG_INFO, "test", NULL, "1", NULL, 0);
    em_log_set_sink(counting_sink, &b);
    em_log(EM_LOG_INFO, "test", NULL, "2", NULL, 0);
    em_log(EM_LOG_INFO, "test", NULL, "3", NULL, 0);
    assert_int_equal(atomic_load(&a.lines), 1);
    assert_int_equal(atomic_load(&b.lines), 2);
    em_log_set_sink(capture_sink, &g_cap);
    em_log(EM_LOG_INFO, "test", NULL, "4", NULL, 0);
    assert_int_equal(g_cap.count, 1);
}

/* Runs fn with stderr redirected to a temporary file; returns what was written. */
static size_t with_stderr_captured(void (*fn)(void), char *out, size_t size)
{
    FILE *tmp = tmpfile();
    assert_non_null(tmp);
    fflush(stderr);
    int saved = dup(STDERR_FILENO);
    assert_true(saved >= 0);
    assert_true(dup2(fileno(tmp), STDERR_FILENO) >= 0);
    fn();
    assert_true(dup2(saved, STDERR_FILENO) >= 0);
    close(saved);
    rewind(tmp);
    size_t n = fread(out, 1, size - 1, tmp);
    out[n] = '\0';
    fclose(tmp);
    return n;
}

static void log_default_line(void)
{
    em_log_set_sink(NULL, &g_cap); /* userdata is ignored with the default */
    em_log(EM_LOG_WARN, "stderr", NULL, "to stderr", NULL, 0);
}

static void test_null_sink_restores_default_stderr_sink(void **state)
{
    (void)state;
    char out[EM_LOG_LINE_MAX];
    size_t n = with_stderr_captured(log_default_line, out, sizeof(out));
    assert_int_equal(g_cap.count, 0);
    assert_true(n > 0);
    assert_int_equal(out[n - 1], '\n');
    assert_null(memchr(out, '\n', n - 1));
    cJSON *root = cJSON_ParseWithLength(out, n);
    assert_non_null(root);
    assert_string_equal(str_of(root, "msg"), "to stderr");
    assert_string_equal(str_of(root, "level"), "warn");
    cJSON_Delete(root);
}

static void reentrant_sink(em_log_level_t level, const char *line, size_t len, void *userdata)
{
    (void)level;
    (void)line;
    (void)len;
    counting_t *c = userdata;
    atomic_fetch_add(&c->lines, 1);
    /* A sink that replaces itself must not deadlock. */
    em_log_set_sink(capture_sink, &g_cap);
}

static void test_sink_may_replace_itself(void **state)
{
    (void)state;
    counting_t a = {0};
    em_log_set_sink(reentrant_sink, &a);
    em_log(EM_LOG_INFO, "test", NULL, "first", NULL, 0);
    em_log(EM_LOG_INFO, "test", NULL, "second", NULL, 0);
    assert_int_equal(atomic_load(&a.lines), 1);
    assert_int_equal(g_cap.count, 1);
    cJSON *root = last_line();
    assert_string_equal(str_of(root, "msg"), "second");
    cJSON_Delete(root);
}

/* ------------------------------------------------------------------------ */
/* Concurrency                                                              */

#define THREADS          4
#define LINES_PER_THREAD 2000

typedef struct worker {
    int id;
} worker_t;

static void *log_worker(void *arg)
{
    worker_t *w = arg;
    char payload[600];
    memset(payload, 'a' + w->id, sizeof(payload) - 1);
    payload[sizeof(payload) - 1] = '\0';
    for (int i = 0; i < LINES_PER_THREAD; i++) {
        em_log_field_t f[] = {EM_LOG_INT("thread", w->id), EM_LOG_INT("seq", i),
                              EM_LOG_STR("payload", payload)};
        em_log(EM_LOG_INFO, "worker", NULL, "line", f, 3);
    }
    return NULL;
}

typedef struct pipe_reader {
    int fd;
    char *buf;
    size_t len;
    size_t cap;
} pipe_reader_t;

static void *read_pipe(void *arg)
{
    pipe_reader_t *r = arg;
    for (;;) {
        if (r->cap - r->len < 65536) {
            size_t ncap = r->cap * 2;
            char *nb = realloc(r->buf, ncap);
            if (nb == NULL)
                return NULL;
            r->buf = nb;
            r->cap = ncap;
        }
        ssize_t n = read(r->fd, r->buf + r->len, r->cap - r->len);
        if (n < 0 && errno == EINTR)
            continue;
        if (n <= 0)
            return NULL;
        r->len += (size_t)n;
    }
}

static void test_concurrent_lines_to_a_pipe_stay_whole(void **state)
{
    (void)state;
    int fds[2];
    assert_int_equal(pipe(fds), 0);
    pipe_reader_t reader = {fds[0], malloc(1 << 20), 0, 1 << 20};
    assert_non_null(reader.buf);
    pthread_t rt;
    assert_int_equal(pthread_create(&rt, NULL, read_pipe, &reader), 0);

    fflush(stderr);
    int saved = dup(STDERR_FILENO);
    assert_true(saved >= 0);
    assert_true(dup2(fds[1], STDERR_FILENO) >= 0);
    em_log_set_sink(NULL, NULL);

    pthread_t t[THREADS];
    worker_t w[THREADS];
    for (int i = 0; i < THREADS; i++) {
        w[i].id = i;
        assert_int_equal(pthread_create(&t[i], NULL, log_worker, &w[i]), 0);
    }
    for (int i = 0; i < THREADS; i++)
        pthread_join(t[i], NULL);

    em_log_set_sink(capture_sink, &g_cap);
    assert_true(dup2(saved, STDERR_FILENO) >= 0);
    close(saved);
    close(fds[1]);
    pthread_join(rt, NULL);
    close(fds[0]);

    /* Every line parses, belongs to one thread, and each thread's lines
     * arrive complete and in order. */
    int next_seq[THREADS] = {0};
    size_t lines = 0;
    char *p = reader.buf;
    char *end = reader.buf + reader.len;
    while (p < end) {
        char *nl = memchr(p, '\n', (size_t)(end - p));
        assert_non_null(nl);
        cJSON *root = cJSON_ParseWithLength(p, (size_t)(nl - p));
        assert_non_null(root);
        int id = cJSON_GetObjectItem(root, "thread")->valueint;
        int seq = cJSON_GetObjectItem(root, "seq")->valueint;
        assert_true(id >= 0 && id < THREADS);
        assert_int_equal(seq, next_seq[id]);
        next_seq[id]++;
        const char *payload = str_of(root, "payload");
        assert_int_equal(strlen(payload), 599);
        assert_int_equal(payload[0], 'a' + id);
        assert_int_equal(payload[598], 'a' + id);
        cJSON_Delete(root);
        lines++;
        p = nl + 1;
    }
    assert_int_equal(lines, (size_t)THREADS * LINES_PER_THREAD);
    free(reader.buf);
}

typedef struct swapper {
    atomic_int stop;
    counting_t a;
    counting_t b;
} swapper_t;

static swapper_t g_swap;

static void *swap_logger(void *arg)
{
    (void)arg;
    int i = 0;
    while (!atomic_load(&g_swap.stop)) {
        em_log_field_t f[] = {EM_LOG_INT("i", i++)};
        em_log(EM_LOG_INFO, "swap", NULL, "line", f, 1);
    }
    return NULL;
}

static void test_old_sink_is_never_called_after_replacement(void **state)
{
    (void)state;
    memset(&g_swap, 0, sizeof(g_swap));
    em_log_set_sink(counting_sink, &g_swap.a);
    pthread_t t[THREADS];
    for (int i = 0; i < THREADS; i++)
        assert_int_equal(pthread_create(&t[i], NULL, swap_logger, NULL), 0);
    for (int round = 0; round < 50; round++) {
        counting_t *from = (round % 2 == 0) ? &g_swap.a : &g_swap.b;
        counting_t *to = (round % 2 == 0) ? &g_swap.b : &g_swap.a;
        em_log_set_sink(counting_sink, to);
        /* Once set_sink has returned, the old sink sees no more lines, while
         * the new one goes on receiving them. */
        int before = atomic_load(&from->lines);
        int target = atomic_load(&to->lines) + 4 * THREADS;
        while (atomic_load(&to->lines) < target)
            sched_yield();
        assert_int_equal(atomic_load(&from->lines), before);
        em_log_set_sink(capture_sink, &g_cap);
        em_log_set_sink(counting_sink, from);
        em_log_set_sink(counting_sink, to);
    }
    atomic_store(&g_swap.stop, 1);
    for (int i = 0; i < THREADS; i++)
        pthread_join(t[i], NULL);
    em_log_set_sink(capture_sink, &g_cap);
    assert_int_equal(atomic_load(&g_swap.a.bad), 0);
    assert_int_equal(atomic_load(&g_swap.b.bad), 0);
    assert_true(atomic_load(&g_swap.a.lines) + atomic_load(&g_swap.b.lines) > 0);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
#define T(fn) cmocka_unit_test_setup_teardown(fn, setup, teardown)
        T(test_default_level_is_info),
        T(test_lines_below_level_are_dropped),
        T(test_trace_level_writes_everything),
        T(test_level_off_drops_everything),
        T(test_off_and_out_of_range_levels_are_never_enabled),
        T(test_set_level_ignores_invalid_values),
        T(test_level_parse_accepts_every_name),
        T(test_level_parse_rejects_anything_else),
        T(test_level_name_round_trips_and_unknown),
        T(test_line_has_standard_keys_in_order),
        T(test_timestamp_is_rfc3339_utc_with_milliseconds),
        T(test_null_cid_module_and_msg_are_handled),
        T(test_fields_of_every_kind_are_written),
        T(test_non_finite_double_is_null),
        T(test_null_string_value_is_null_and_null_key_is_skipped),
        T(test_null_fields_with_count_is_safe),
        T(test_field_cannot_impersonate_line_keys),
        T(test_logf_formats_message),
        T(test_logging_preserves_errno),
        T(test_quotes_and_backslashes_round_trip),
        T(test_control_characters_are_escaped),
        T(test_newline_in_message_cannot_forge_a_line),
        T(test_valid_utf8_is_kept),
        T(test_line_separators_are_escaped),
        T(test_invalid_utf8_is_replaced),
        T(test_binary_bytes_yield_valid_json),
        T(test_long_message_is_cut_and_flagged),
        T(test_line_just_fitting_is_not_truncated),
        T(test_escapes_are_never_split_by_truncation),
        T(test_fields_that_do_not_fit_are_dropped_whole),
        T(test_huge_field_value_is_cut),
        T(test_long_message_and_huge_field_share_the_line),
        T(test_long_module_cid_and_key_are_cut),
        T(test_logf_overflow_is_flagged),
        T(test_logf_cut_inside_multibyte_character_stays_valid),
        T(test_secret_keys_are_recognised),
        T(test_ordinary_keys_are_not_secret),
        T(test_secret_word_anywhere_in_a_long_key_is_found),
        T(test_secret_fields_are_redacted_whatever_their_kind),
        T(test_non_secret_fields_are_untouched),
        T(test_message_secret_pairs_are_masked),
        T(test_message_jwt_is_masked),
        T(test_message_api_key_is_masked),
        T(test_message_url_password_is_masked),
        T(test_message_without_secrets_is_untouched),
        T(test_logf_masks_secrets_from_arguments),
        T(test_secret_at_truncation_point_does_not_leak),
        T(test_secret_value_at_end_of_long_message_is_masked),
        T(test_sink_receives_level_and_userdata),
        T(test_sink_replacement_takes_effect_at_once),
        T(test_null_sink_restores_default_stderr_sink),
        T(test_sink_may_replace_itself),
        T(test_concurrent_lines_to_a_pipe_stay_whole),
        T(test_old_sink_is_never_called_after_replacement),
#undef T
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
