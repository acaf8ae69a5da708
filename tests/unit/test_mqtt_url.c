/*
 * emiot tests - broker URL parsing and the plain-MQTT policy (src/mqtt/url.c).
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>

#include <cmocka.h>

#include "emiot/mqtt.h"
#include "mqtt/url.h"

static em__mqtt_url_t parse_ok(const char *s)
{
    em__mqtt_url_t u;
    em_error_t err;
    em_error_clear(&err);
    em_err_t rc = em__mqtt_url_parse(s, &u, &err);
    if (rc != EM_OK)
        fail_msg("'%s' refused: %s", s, err.message);
    return u;
}

/* Asserts that s is refused as a configuration error whose message contains
 * fragment. */
static void parse_bad(const char *s, const char *fragment)
{
    em__mqtt_url_t u;
    em_error_t err;
    em_error_clear(&err);
    em_err_t rc = em__mqtt_url_parse(s, &u, &err);
    if (rc == EM_OK)
        fail_msg("'%s' accepted", s);
    assert_int_equal(rc, EM_ERR_CONFIGURATION);
    assert_int_equal(err.code, EM_ERR_CONFIGURATION);
    assert_string_equal(err.field, "url");
    if (strstr(err.message, fragment) == NULL)
        fail_msg("'%s': message '%s' lacks '%s'", s, err.message, fragment);
}

static void test_mqtts_host_and_port(void **state)
{
    (void)state;
    em__mqtt_url_t u = parse_ok("mqtts://broker.example.com:8884");
    assert_true(u.tls);
    assert_string_equal(u.host, "broker.example.com");
    assert_int_equal(u.port, 8884);
    assert_false(u.ip);
    assert_false(u.loopback);
}

static void test_default_ports(void **state)
{
    (void)state;
    assert_int_equal(parse_ok("mqtt://localhost").port, 1883);
    assert_int_equal(parse_ok("mqtts://localhost").port, 8883);
}

static void test_scheme_is_case_insensitive(void **state)
{
    (void)state;
    em__mqtt_url_t u = parse_ok("MQTTS://Broker:1");
    assert_true(u.tls);
    assert_string_equal(u.host, "Broker");
    assert_int_equal(u.port, 1);
}

static void test_port_bounds(void **state)
{
    (void)state;
    assert_int_equal(parse_ok("mqtt://h:65535").port, 65535);
    assert_int_equal(parse_ok("mqtt://h:1").port, 1);
    parse_bad("mqtt://h:0", "port is out of range");
    parse_bad("mqtt://h:65536", "port is out of range");
    parse_bad("mqtt://h:123456", "port is out of range");
    parse_bad("mqtt://h:", "port after ':' is missing");
    parse_bad("mqtt://h:x1", "port after ':' is missing");
    parse_bad("mqtt://h:+1", "port after ':' is missing");
    parse_bad("mqtt://h:01883", "leading zero");
    parse_bad("mqtt://h:18x", "unexpected characters");
}

static void test_ipv4_literal(void **state)
{
    (void)state;
    em__mqtt_url_t u = parse_ok("mqtt://192.168.1.20:1883");
    assert_true(u.ip);
    assert_false(u.ipv6);
    assert_false(u.loopback);
    assert_string_equal(u.host, "192.168.1.20");
}

static void test_ipv4_ambiguous_spellings_refused(void **state)
{
    (void)state;
    /* Forms getaddrinfo would read as 127.0.0.1 (or something else) but that
     * are not a plain dotted quad. */
    parse_bad("mqtt://127.1", "invalid IPv4 address");
    parse_bad("mqtt://2130706433", "invalid IPv4 address");
    parse_bad("mqtt://0x7f.0.0.1", "invalid IPv4 address");
    parse_bad("mqtt://0177.0.0.1", "invalid IPv4 address");
    parse_bad("mqtt://127.000.000.001", "invalid IPv4 address");
    parse_bad("mqtt://256.1.1.1", "invalid IPv4 address");
    parse_bad("mqtt://1.2.3.4.5", "invalid IPv4 address");
}

static void test_ipv6_literal_in_brackets(void **state)
{
    (void)state;
    em__mqtt_url_t u = parse_ok("mqtts://[::1]:8883");
    assert_true(u.ipv6);
    assert_true(u.ip);
    assert_true(u.loopback);
    assert_string_equal(u.host, "::1");
    assert_int_equal(u.port, 8883);

    u = parse_ok("mqtt://[2001:db8::17]");
    assert_false(u.loopback);
    assert_int_equal(u.port, 1883);
    assert_string_equal(u.host, "2001:db8::17");

    u = parse_ok("mqtt://[::ffff:127.0.0.5]:1");
    assert_true(u.loopback);
}

static void test_ipv6_errors(void **state)
{
    (void)state;
    parse_bad("mqtt://[::1", "closing ']'");
    parse_bad("mqtt://[]:1883", "invalid IPv6 address");
    parse_bad("mqtt://[fe80::1%eth0]:1883", "zone ids");
    parse_bad("mqtt://[1:2:3]:1883", "invalid IPv6 address");
    parse_bad("mqtt://[::1]x", "unexpected characters");
    parse_bad("mqtt://::1:1883", "brackets");
    parse_bad("mqtt://2001:db8::1", "brackets");
}

static void test_loopback_detection(void **state)
{
    (void)state;
    assert_true(parse_ok("mqtt://127.0.0.1").loopback);
    assert_true(parse_ok("mqtt://127.255.3.4").loopback);
    assert_true(parse_ok("mqtt://localhost").loopback);
    assert_true(parse_ok("mqtt://LocalHost").loopback);
    assert_false(parse_ok("mqtt://128.0.0.1").loopback);
    assert_false(parse_ok("mqtt://localhost.example.com").loopback);
    assert_false(parse_ok("mqtt://mylocalhost").loopback);
    assert_false(parse_ok("mqtt://[::2]").loopback);
}

static void test_userinfo_refused_without_echoing_it(void **state)
{
    (void)state;
    em__mqtt_url_t u;
    em_error_t err;
    em_error_clear(&err);
    assert_int_equal(em__mqtt_url_parse("mqtts://alice:s3cr3t-pw@broker:8883", &u, &err),
                     EM_ERR_CONFIGURATION);
    assert_non_null(strstr(err.message, "credentials"));
    assert_null(strstr(err.message, "s3cr3t-pw"));
    assert_null(strstr(err.message, "alice"));
    parse_bad("mqtt://user@localhost", "credentials");
}

static void test_path_query_fragment_refused(void **state)
{
    (void)state;
    parse_bad("mqtt://localhost/", "path");
    parse_bad("mqtt://localhost:1883/mqtt", "path");
    parse_bad("mqtt://localhost?x=1", "query");
    parse_bad("mqtt://localhost#frag", "fragment");
}

static void test_bad_schemes_refused(void **state)
{
    (void)state;
    parse_bad("tcp://localhost:1883", "mqtt:// or mqtts://");
    parse_bad("ssl://localhost:8883", "mqtt:// or mqtts://");
    parse_bad("ws://localhost", "mqtt:// or mqtts://");
    parse_bad("localhost:1883", "mqtt:// or mqtts://");
    parse_bad("mqtt:/localhost", "mqtt:// or mqtts://");
    parse_bad("", "empty");
}

static void test_host_name_rules(void **state)
{
    (void)state;
    assert_string_equal(parse_ok("mqtt://broker_1.internal").host, "broker_1.internal");
    parse_bad("mqtt://", "no host");
    parse_bad("mqtt://:1883", "no host");
    parse_bad("mqtt://a..b", "empty label");
    parse_bad("mqtt://.a", "empty label");
    parse_bad("mqtt://a.", "empty label");
    parse_bad("mqtt://-a.b", "starts or ends with '-'");
    parse_bad("mqtt://a-.b", "starts or ends with '-'");
    parse_bad("mqtt://bro ker", "invalid character");
    parse_bad("mqtt://bro\tker", "invalid character");
    parse_bad("mqtt://br\xc3\xb6ker", "invalid character");

    char label[80];
    memset(label, 'a', 64);
    label[64] = '\0';
    char url[128];
    snprintf(url, sizeof(url), "mqtt://%s", label);
    parse_bad(url, "longer than 63");

    char host[300];
    size_t n = 0;
    while (n + 10 <= 270) {
        memcpy(host + n, "abcdefghi.", 10);
        n += 10;
    }
    host[n - 1] = '\0';
    char long_url[400];
    snprintf(long_url, sizeof(long_url), "mqtt://%s", host);
    parse_bad(long_url, "longer than 253");
}

static void test_url_length_limit(void **state)
{
    (void)state;
    char url[EM_MQTT_URL_MAX + 10];
    memset(url, 'a', sizeof(url) - 1);
    url[sizeof(url) - 1] = '\0';
    memcpy(url, "mqtt://", 7);
    parse_bad(url, "longer than");
    em__mqtt_url_t u;
    assert_int_equal(em__mqtt_url_parse(NULL, &u, NULL), EM_ERR_CONFIGURATION);
}

static em_err_t policy(const char *url, bool allow_plain, em_error_t *err)
{
    em__mqtt_url_t u = parse_ok(url);
    return em__mqtt_url_check_plain(&u, allow_plain, err);
}

static void test_plain_refused_without_allow_plain(void **state)
{
    (void)state;
    em_error_t err;
    em_error_clear(&err);
    assert_int_equal(policy("mqtt://127.0.0.1:1883", false, &err), EM_ERR_CONFIGURATION);
    assert_non_null(strstr(err.message, "allow_plain"));
}

static void test_plain_refused_for_non_loopback_host(void **state)
{
    (void)state;
    em_error_t err;
    em_error_clear(&err);
    assert_int_equal(policy("mqtt://broker.example.com", true, &err), EM_ERR_CONFIGURATION);
    assert_non_null(strstr(err.message, "loopback"));
    assert_int_equal(policy("mqtt://10.0.0.1", true, NULL), EM_ERR_CONFIGURATION);
    assert_int_equal(policy("mqtt://[2001:db8::1]", true, NULL), EM_ERR_CONFIGURATION);
}

static void test_plain_allowed_for_loopback_with_allow_plain(void **state)
{
    (void)state;
    assert_int_equal(policy("mqtt://127.0.0.1:1883", true, NULL), EM_OK);
    assert_int_equal(policy("mqtt://127.8.9.10", true, NULL), EM_OK);
    assert_int_equal(policy("mqtt://localhost", true, NULL), EM_OK);
    assert_int_equal(policy("mqtt://[::1]:1883", true, NULL), EM_OK);
}

static void test_tls_always_passes_policy(void **state)
{
    (void)state;
    assert_int_equal(policy("mqtts://broker.example.com", false, NULL), EM_OK);
    assert_int_equal(policy("mqtts://10.0.0.1", false, NULL), EM_OK);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_mqtts_host_and_port),
        cmocka_unit_test(test_default_ports),
        cmocka_unit_test(test_scheme_is_case_insensitive),
        cmocka_unit_test(test_port_bounds),
        cmocka_unit_test(test_ipv4_literal),
        cmocka_unit_test(test_ipv4_ambiguous_spellings_refused),
        cmocka_unit_test(test_ipv6_literal_in_brackets),
        cmocka_unit_test(test_ipv6_errors),
        cmocka_unit_test(test_loopback_detection),
        cmocka_unit_test(test_userinfo_refused_without_echoing_it),
        cmocka_unit_test(test_path_query_fragment_refused),
        cmocka_unit_test(test_bad_schemes_refused),
        cmocka_unit_test(test_host_name_rules),
        cmocka_unit_test(test_url_length_limit),
        cmocka_unit_test(test_plain_refused_without_allow_plain),
        cmocka_unit_test(test_plain_refused_for_non_loopback_host),
        cmocka_unit_test(test_plain_allowed_for_loopback_with_allow_plain),
        cmocka_unit_test(test_tls_always_passes_policy),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
