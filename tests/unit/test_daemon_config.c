/*
 * emiot tests - test_daemon_config.c: emiotd's configuration file
 * (include/emiot/daemon.h, src/daemon/config.c).
 *
 * Parsing is tested from strings; the checks that touch files (certificates,
 * secret files, the data directory) on a private temporary directory with
 * certificates from scripts/gen-certs.sh.
 */
#include <errno.h>
#include <fcntl.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cmocka.h>

#include "broker.h"
#include "daemon/daemon_internal.h"
#include "emiot/daemon.h"
#include "testutil.h"

/* A minimal valid configuration: one TLS API listener. */
#define LISTENER                                                                                   \
    "[listener api]\n"                                                                             \
    "address = 127.0.0.1\n"                                                                        \
    "port = 8443\n"                                                                                \
    "cert_file = /etc/emiot/server.crt\n"                                                          \
    "key_file = /etc/emiot/server.key\n"

static em_daemon_config_t *cfg_new(void)
{
    em_daemon_config_t *c = malloc(sizeof(*c));
    assert_non_null(c);
    em_daemon_config_init(c);
    return c;
}

static em_err_t parse(em_daemon_config_t *c, const char *text, em_error_t *err)
{
    em_daemon_config_init(c);
    em_error_clear(err);
    return em_daemon_config_parse(c, text, strlen(text), "/etc/emiot/emiotd.conf", err);
}

/* Parses text, expects EM_ERR_CONFIGURATION whose message contains each of
 * the (NULL-terminated) strings. */
static void expect_error(const char *text, ...)
{
    em_daemon_config_t *c = cfg_new();
    em_error_t err;
    em_err_t rc = parse(c, text, &err);
    if (rc != EM_ERR_CONFIGURATION)
        fail_msg("expected a configuration error for:\n%s\ngot %d", text, rc);
    va_list ap;
    va_start(ap, text);
    for (const char *s = va_arg(ap, const char *); s != NULL; s = va_arg(ap, const char *)) {
        if (strstr(err.message, s) == NULL)
            fail_msg("message '%s' lacks '%s'", err.message, s);
    }
    va_end(ap);
    free(c);
}

static void parse_ok(em_daemon_config_t *c, const char *text)
{
    em_error_t err;
    em_err_t rc = parse(c, text, &err);
    if (rc != EM_OK)
        fail_msg("unexpected error: %s", err.message);
}

/* ---- defaults and every key ------------------------------------------- */

static void test_defaults_with_one_listener(void **state)
{
    (void)state;
    em_daemon_config_t *c = cfg_new();
    parse_ok(c, LISTENER);
    assert_string_equal(c->data_dir, "/var/lib/emiot");
    assert_int_equal(c->log_level, EM_LOG_INFO);
    assert_string_equal(c->log_file, "");
    assert_string_equal(c->bootstrap_key_file, "/var/lib/emiot/bootstrap-admin.key");
    assert_false(c->bootstrap_key_print);
    assert_int_equal(c->shutdown_timeout_s, 10);
    assert_int_equal(c->command_expiry_s, 5);
    assert_int_equal(c->retention_interval_s, 3600);
    assert_string_equal(c->mqtt_url, "mqtts://localhost:8883");
    assert_false(c->mqtt_allow_plain);
    assert_int_equal(c->mqtt_protocol, 5);
    assert_string_equal(c->topic_prefix, "device/");
    assert_int_equal(c->status_interval_s, 60);
    assert_int_equal(c->command_rate_count, 10);
    assert_int_equal(c->command_qos, 1);
    assert_string_equal(c->store_url, "");
    assert_int_equal(c->store.sync, EM_STORE_SYNC_FULL);
    assert_int_equal(c->store.batch_max, 2000);
    assert_int_equal(c->status_history_days, 30);
    assert_int_equal(c->rollup_day_days, 0);
    assert_int_equal(c->max_body, 65536);
    assert_string_equal(c->jwt_key_file, "/var/lib/emiot/jwt.key");
    assert_string_equal(c->jwt_issuer, "emiotd");
    assert_string_equal(c->jwt_audience, "emiot-api");
    assert_int_equal(c->rate_per_min[EM_ROLE_DEVICE], 60);
    assert_int_equal(c->rate_per_min[EM_ROLE_ADMIN], 1200);
    assert_int_equal(c->auth_fail_per_min, 20);
    assert_int_equal(c->nlisteners, 1);
    assert_string_equal(c->listeners[0].name, "api");
    assert_int_equal(c->listeners[0].port, 8443);
    assert_int_equal(c->listeners[0].client_auth, EM_CLIENT_AUTH_NONE);
    assert_false(c->listeners[0].metrics_only);
    assert_int_equal(c->listeners[0].line, 1);
    free(c);
}

static const char k_full[] = "# every key\n"
                             "[daemon]\n"
                             "data_dir = /srv/emiot\n"
                             "log_level = debug\n"
                             "log_file = /var/log/emiot/emiotd.log\n"
                             "bootstrap_key_file = /root/admin.key\n"
                             "bootstrap_key_print = yes\n"
                             "shutdown_timeout = 20\n"
                             "command_expiry_interval = 2\n"
                             "retention_interval = 600\n"
                             "\n"
                             "[mqtt]\n"
                             "url = mqtts://broker.example.net:8883\n"
                             "ca_file = /etc/emiot/ca.crt\n"
                             "ca_path = /etc/ssl/certs\n"
                             "cert_file = /etc/emiot/manager.crt\n"
                             "key_file = /etc/emiot/manager.key\n"
                             "username = emiotd\n"
                             "password_env = EMIOT_MQTT_PASSWORD\n"
                             "client_id = emiotd-1\n"
                             "allow_plain = false\n"
                             "keepalive = 45\n"
                             "reconnect_min = 2\n"
                             "reconnect_max = 60\n"
                             "protocol = 4\n"
                             "topic_prefix = site1/devices/\n"
                             "status_interval = 120\n"
                             "offline_check = 15\n"
                             "command_rate_count = 20\n"
                             "command_rate_window = 30\n"
                             "command_qos = 2\n"
                             "max_devices = 500000\n"
                             "\n"
                             "[store]\n"
                             "url_env = EMIOT_STORE_URL\n"
                             "sync = normal\n"
                             "batch_max = 500\n"
                             "batch_interval_ms = 50\n"
                             "queue_max = 10000\n"
                             "busy_timeout_ms = 2000\n"
                             "\n"
                             "[retention]\n"
                             "status_history_days = 7\n"
                             "telemetry_days = 14\n"
                             "rollup_hour_days = 100\n"
                             "rollup_day_days = 1000\n"
                             "events_days = 60\n"
                             "commands_days = 0\n"
                             "\n"
                             "[api]\n"
                             "max_body = 131072\n"
                             "request_timeout = 15\n"
                             "command_ttl = 600\n"
                             "jwt_key_file = /etc/emiot/jwt.key\n"
                             "jwt_issuer = emiot-prod\n"
                             "jwt_audience = \"emiot api\"\n"
                             "jwt_ttl = 900\n"
                             "rate_viewer = 100\n"
                             "rate_operator = 200\n"
                             "rate_admin = 300\n"
                             "rate_device = 30\n"
                             "auth_fail_per_min = 5\n"
                             "\n"
                             "[listener public]\n"
                             "address = ::\n"
                             "port = 443\n"
                             "cert_file = /etc/emiot/server.crt\n"
                             "key_file = /etc/emiot/server.key\n"
                             "client_ca_file = /etc/emiot/clients.crt\n"
                             "client_auth = required\n"
                             "\n"
                             "[listener metrics]\n"
                             "address = 127.0.0.1\n"
                             "port = 9100\n"
                             "metrics_only = on\n";

static void test_every_key_is_applied(void **state)
{
    (void)state;
    em_daemon_config_t *c = cfg_new();
    parse_ok(c, k_full);
    assert_string_equal(c->data_dir, "/srv/emiot");
    assert_int_equal(c->log_level, EM_LOG_DEBUG);
    assert_string_equal(c->log_file, "/var/log/emiot/emiotd.log");
    assert_string_equal(c->bootstrap_key_file, "/root/admin.key");
    assert_true(c->bootstrap_key_print);
    assert_int_equal(c->shutdown_timeout_s, 20);
    assert_int_equal(c->command_expiry_s, 2);
    assert_int_equal(c->retention_interval_s, 600);
    assert_string_equal(c->mqtt_url, "mqtts://broker.example.net:8883");
    assert_string_equal(c->mqtt_ca_file, "/etc/emiot/ca.crt");
    assert_string_equal(c->mqtt_ca_path, "/etc/ssl/certs");
    assert_string_equal(c->mqtt_cert_file, "/etc/emiot/manager.crt");
    assert_string_equal(c->mqtt_key_file, "/etc/emiot/manager.key");
    assert_string_equal(c->mqtt_username, "emiotd");
    assert_string_equal(c->mqtt_password_env, "EMIOT_MQTT_PASSWORD");
    assert_string_equal(c->mqtt_client_id, "emiotd-1");
    assert_false(c->mqtt_allow_plain);
    assert_int_equal(c->mqtt_keepalive_s, 45);
    assert_int_equal(c->mqtt_reconnect_min_s, 2);
    assert_int_equal(c->mqtt_reconnect_max_s, 60);
    assert_int_equal(c->mqtt_protocol, 4);
    assert_string_equal(c->topic_prefix, "site1/devices/");
    assert_int_equal(c->status_interval_s, 120);
    assert_int_equal(c->offline_check_s, 15);
    assert_int_equal(c->command_rate_count, 20);
    assert_int_equal(c->command_rate_window_s, 30);
    assert_int_equal(c->command_qos, 2);
    assert_int_equal(c->max_devices, 500000);
    assert_string_equal(c->store_url_env, "EMIOT_STORE_URL");
    assert_int_equal(c->store.sync, EM_STORE_SYNC_NORMAL);
    assert_int_equal(c->store.batch_max, 500);
    assert_int_equal(c->store.batch_interval_ms, 50);
    assert_int_equal(c->store.queue_max, 10000);
    assert_int_equal(c->store.busy_timeout_ms, 2000);
    assert_int_equal(c->status_history_days, 7);
    assert_int_equal(c->telemetry_days, 14);
    assert_int_equal(c->rollup_hour_days, 100);
    assert_int_equal(c->rollup_day_days, 1000);
    assert_int_equal(c->events_days, 60);
    assert_int_equal(c->commands_days, 0);
    assert_int_equal(c->max_body, 131072);
    assert_int_equal(c->request_timeout_s, 15);
    assert_int_equal(c->command_ttl_s, 600);
    assert_string_equal(c->jwt_key_file, "/etc/emiot/jwt.key");
    assert_string_equal(c->jwt_issuer, "emiot-prod");
    assert_string_equal(c->jwt_audience, "emiot api");
    assert_int_equal(c->jwt_ttl_s, 900);
    assert_int_equal(c->rate_per_min[EM_ROLE_VIEWER], 100);
    assert_int_equal(c->rate_per_min[EM_ROLE_OPERATOR], 200);
    assert_int_equal(c->rate_per_min[EM_ROLE_ADMIN], 300);
    assert_int_equal(c->rate_per_min[EM_ROLE_DEVICE], 30);
    assert_int_equal(c->auth_fail_per_min, 5);
    assert_int_equal(c->nlisteners, 2);
    assert_string_equal(c->listeners[0].name, "public");
    assert_string_equal(c->listeners[0].address, "::");
    assert_int_equal(c->listeners[0].port, 443);
    assert_string_equal(c->listeners[0].client_ca_file, "/etc/emiot/clients.crt");
    assert_int_equal(c->listeners[0].client_auth, EM_CLIENT_AUTH_REQUIRED);
    assert_string_equal(c->listeners[1].name, "metrics");
    assert_true(c->listeners[1].metrics_only);
    assert_string_equal(c->listeners[1].cert_file, "");
    free(c);
}

static void test_options_follow_the_configuration(void **state)
{
    (void)state;
    em_daemon_config_t *c = cfg_new();
    parse_ok(c, k_full);
    em_api_options_t ao;
    em_daemon_config_api_options(c, &ao);
    assert_int_equal(ao.nlisteners, 2);
    assert_string_equal(ao.listeners[0].address, "::");
    assert_int_equal(ao.listeners[0].port, 443);
    assert_int_equal(ao.listeners[0].client_auth, EM_CLIENT_AUTH_REQUIRED);
    assert_null(ao.listeners[1].cert_file);
    assert_true(ao.listeners[1].metrics_only);
    assert_int_equal(ao.max_body, 131072);
    assert_int_equal(ao.rate_per_min[EM_ROLE_DEVICE], 30);
    assert_int_equal(ao.command_ttl_s, 600);
    assert_string_equal(ao.jwt_audience, "emiot api");

    em_mqtt_options_t mo;
    em_daemon_config_mqtt_options(c, &mo);
    assert_string_equal(mo.url, "mqtts://broker.example.net:8883");
    assert_string_equal(mo.password_env, "EMIOT_MQTT_PASSWORD");
    assert_null(mo.password_file);
    assert_int_equal(mo.protocol, 4);

    em_manager_options_t mg;
    em_daemon_config_manager_options(c, &mg);
    assert_string_equal(mg.topic_prefix, "site1/devices/");
    assert_int_equal(mg.rate_limit_count, 20);
    assert_int_equal(mg.command_qos, 2);

    em_store_retention_t r;
    em_daemon_config_retention(c, &r);
    assert_true(r.status_history_ms == 7 * 86400000LL);
    assert_true(r.commands_ms == 0);
    assert_true(r.rollup_day_ms == 1000 * 86400000LL);
    free(c);
}

static void test_comments_blank_lines_quotes_and_reopened_sections(void **state)
{
    (void)state;
    em_daemon_config_t *c = cfg_new();
    parse_ok(c, "\xEF\xBB\xBF; a semicolon comment\r\n"
                "   # an indented comment\n"
                "\n"
                "[daemon]\r\n"
                "  log_level   =   warn  \r\n"
                "[ api ]\n"
                "jwt_issuer = \"  spaced  \"\n"
                "[daemon]\n"
                "data_dir = /d\n" LISTENER);
    assert_int_equal(c->log_level, EM_LOG_WARN);
    assert_string_equal(c->jwt_issuer, "  spaced  ");
    assert_string_equal(c->data_dir, "/d");
    assert_string_equal(c->jwt_key_file, "/d/jwt.key");
    free(c);
}

static void test_bootstrap_key_file_none_with_print(void **state)
{
    (void)state;
    em_daemon_config_t *c = cfg_new();
    parse_ok(c, "[daemon]\nbootstrap_key_file = none\nbootstrap_key_print = true\n" LISTENER);
    assert_string_equal(c->bootstrap_key_file, "");
    assert_true(c->bootstrap_key_print);
    free(c);
}

/* ---- errors: file:line and the key ------------------------------------ */

static void test_unknown_section_is_refused(void **state)
{
    (void)state;
    expect_error(LISTENER "[web]\n", "emiotd.conf:6:", "unknown section", NULL);
}

static void test_unknown_key_is_refused_with_its_line(void **state)
{
    (void)state;
    expect_error("[daemon]\n\ndata_dirs = /x\n" LISTENER, "emiotd.conf:3:", "[daemon] data_dirs",
                 "unknown key", NULL);
}

static void test_key_of_another_section_is_unknown(void **state)
{
    (void)state;
    expect_error("[daemon]\nport = 1\n" LISTENER, "emiotd.conf:2:", "[daemon] port", "unknown key",
                 NULL);
}

static void test_duplicate_key_names_both_lines(void **state)
{
    (void)state;
    expect_error("[api]\nrate_admin = 5\n[daemon]\n[api]\nrate_admin = 6\n" LISTENER,
                 "emiotd.conf:5:", "rate_admin", "set twice (first on line 2)", NULL);
}

static void test_key_before_any_section_is_refused(void **state)
{
    (void)state;
    expect_error("data_dir = /x\n" LISTENER, "emiotd.conf:1:", "data_dir", "before any [section]",
                 NULL);
}

static void test_line_without_equals_is_refused(void **state)
{
    (void)state;
    expect_error("[daemon]\ndata_dir /x\n" LISTENER, "emiotd.conf:2:", "expected 'key = value'",
                 NULL);
}

static void test_bad_values_are_refused_per_kind(void **state)
{
    (void)state;
    expect_error("[daemon]\nshutdown_timeout = 0\n" LISTENER, ":2:", "shutdown_timeout",
                 "integer from 1 to 300", NULL);
    expect_error("[daemon]\nshutdown_timeout = 10s\n" LISTENER, ":2:", "integer", NULL);
    expect_error("[daemon]\nshutdown_timeout = 99999999999999999999999\n" LISTENER,
                 ":2:", "integer", NULL);
    expect_error("[mqtt]\nallow_plain = maybe\n" LISTENER, ":2:", "allow_plain", "true or false",
                 NULL);
    expect_error("[daemon]\nlog_level = loud\n" LISTENER, ":2:", "log_level", "trace, debug", NULL);
    expect_error("[store]\nsync = sometimes\n" LISTENER, ":2:", "sync", "full or normal", NULL);
    expect_error("[daemon]\ndata_dir = relative/dir\n" LISTENER, ":2:", "data_dir", "absolute path",
                 NULL);
    expect_error("[mqtt]\npassword_env = 1BAD\n" LISTENER, ":2:", "password_env",
                 "environment variable", NULL);
    expect_error("[mqtt]\nurl = http://x\n" LISTENER, ":2:", "url", "mqtts://", NULL);
    expect_error("[mqtt]\ntopic_prefix = a/+/b/\n" LISTENER, ":2:", "topic_prefix", NULL);
    expect_error("[mqtt]\nclient_id = a b\n" LISTENER, ":2:", "client_id", NULL);
    expect_error("[api]\nmax_body = 100\n" LISTENER, ":2:", "max_body", "1024", NULL);
    expect_error("[api]\njwt_issuer = \n" LISTENER, ":2:", "jwt_issuer", NULL);
    expect_error("[listener a]\naddress = localhost\nport = 1\n", ":2:", "[listener a] address",
                 "IPv4 or IPv6", NULL);
    expect_error("[listener a]\naddress = 127.0.0.1\nport = 70000\n", ":3:", "port", "1 to 65535",
                 NULL);
    expect_error(LISTENER "client_auth = sometimes\n", ":6:", "client_auth",
                 "none, optional or required", NULL);
}

static void test_values_are_never_echoed(void **state)
{
    (void)state;
    em_daemon_config_t *c = cfg_new();
    em_error_t err;
    assert_int_equal(parse(c, "[daemon]\ndata_dir = hunter2-secret\n" LISTENER, &err),
                     EM_ERR_CONFIGURATION);
    assert_null(strstr(err.message, "hunter2"));
    assert_int_equal(
        parse(c, "[store]\nurl = postgresql://emiot:Sup3rS3cret@db/emiot\n" LISTENER, &err),
        EM_ERR_CONFIGURATION);
    assert_null(strstr(err.message, "Sup3rS3cret"));
    assert_non_null(strstr(err.message, "url_env or url_file"));
    assert_string_equal(err.field, "url");
    free(c);
}

static void test_mqtt_password_key_is_refused_with_a_hint(void **state)
{
    (void)state;
    expect_error("[mqtt]\npassword = s3cret\n" LISTENER, ":2:", "[mqtt] password",
                 "password_env or password_file", NULL);
}

static void test_mqtt_url_with_credentials_is_refused(void **state)
{
    (void)state;
    expect_error("[mqtt]\nurl = mqtts://u:p@broker:8883\n" LISTENER, ":2:", "credentials", NULL);
}

static void test_store_url_with_query_password_is_refused(void **state)
{
    (void)state;
    expect_error("[store]\nurl = postgresql:///emiot?host=/run/pg&password=abc\n" LISTENER,
                 ":2:", "must not hold a password", NULL);
}

static void test_store_url_sources_exclude_each_other(void **state)
{
    (void)state;
    expect_error("[store]\nurl = sqlite:/x.db\nurl_env = X\n" LISTENER, ":3:", "exclude each other",
                 NULL);
}

static void test_listener_rules(void **state)
{
    (void)state;
    expect_error("[daemon]\n", "no [listener NAME]", NULL);
    expect_error("[listener]\n", ":1:", "needs a NAME", NULL);
    expect_error("[listener bad name!]\n", ":1:", "needs a NAME", NULL);
    expect_error(LISTENER "[listener api]\n", ":6:", "already defined on line 1", NULL);
    expect_error("[listener a]\nport = 1\n", "[listener a] address", "is required", NULL);
    expect_error("[listener a]\naddress = ::1\n", "[listener a] port", "is required", NULL);
    expect_error("[listener m]\naddress = 127.0.0.1\nport = 9\nmetrics_only = true\n",
                 "the API needs one more", NULL);
    expect_error("[listener p]\naddress = 127.0.0.1\nport = 80\n", "[listener p] cert_file",
                 "metrics_only", NULL);
    expect_error(LISTENER "[listener m]\naddress = 0.0.0.0\nport = 9100\nmetrics_only = true\n",
                 ":7:", "loopback", NULL);
    expect_error("[listener a]\naddress = 127.0.0.1\nport = 1\ncert_file = /c\n",
                 "cert_file and key_file go together", NULL);
    expect_error(LISTENER "client_auth = required\n", ":6:", "client_ca_file", NULL);
    expect_error(LISTENER "client_ca_file = /ca\n", ":6:", "client_auth = optional", NULL);
    expect_error(LISTENER "[listener b]\naddress = 127.0.0.1\nport = 8443\ncert_file = /c\n"
                          "key_file = /k\n",
                 ":8:", "listener 'api' already uses", NULL);
}

static void test_at_most_eight_listeners(void **state)
{
    (void)state;
    char text[4096] = "";
    size_t n = 0;
    for (int i = 0; i <= EM_API_LISTENERS_MAX; i++)
        n += (size_t)snprintf(text + n, sizeof(text) - n,
                              "[listener l%d]\naddress = 127.0.0.1\nport = %d\ncert_file = "
                              "/c\nkey_file = /k\n",
                              i, 1000 + i);
    expect_error(text, ":41:", "at most 8 listeners", NULL);
}

static void test_mqtt_rules(void **state)
{
    (void)state;
    expect_error("[mqtt]\nurl = mqtt://127.0.0.1:1883\n" LISTENER, ":2:", "allow_plain", NULL);
    expect_error("[mqtt]\nusername = u\npassword_env = A\npassword_file = /p\n" LISTENER,
                 ":4:", "exclude each other", NULL);
    expect_error("[mqtt]\npassword_env = A\n" LISTENER, ":2:", "needs a username", NULL);
    expect_error("[mqtt]\ncert_file = /c\n" LISTENER, ":2:", "go together", NULL);
    expect_error("[mqtt]\nreconnect_min = 10\nreconnect_max = 5\n" LISTENER,
                 ":3:", "at least reconnect_min", NULL);
}

static void test_identity_rules(void **state)
{
    (void)state;
    expect_error("[keystore]\npassphrase_env = P\nkey_file = /k\n" LISTENER,
                 ":3:", "[keystore] key_file", "exclude each other", NULL);
    expect_error("[keystore]\npassphrase = s3cret-value-here\n" LISTENER,
                 ":2:", "never written in the configuration", NULL);
    expect_error("[keystore]\npkcs11_pin = 1234\n" LISTENER, ":2:", "pkcs11_pin_env", NULL);
    expect_error("[keystore]\npkcs11_module = /m.so\n" LISTENER, ":2:", "needs a PIN", NULL);
    expect_error("[keystore]\npkcs11_pin_env = PIN\n" LISTENER, ":2:", "needs a PIN", NULL);
    expect_error(
        "[keystore]\npkcs11_module = /m.so\npkcs11_pin_env = A\npkcs11_pin_file = /p\n" LISTENER,
        ":4:", "exclude each other", NULL);
    expect_error("[pki]\ncrl_file = /crl.pem\n" LISTENER, ":2:", "needs dir or ca_file", NULL);
    expect_error("[pki]\nenroll_token_ttl = 7200\nenroll_token_ttl_max = 3600\n" LISTENER,
                 ":2:", "at most enroll_token_ttl_max", NULL);
    expect_error("[pki]\nnonce_ttl = 301\n" LISTENER, ":2:", "nonce_ttl", NULL);
    expect_error("[pki]\ndevice_token_ttl = 10\n" LISTENER, ":2:", "device_token_ttl", NULL);
    expect_error("[dynsec]\nusername = admin\n" LISTENER, ":2:", "[dynsec] needs url", NULL);
    expect_error("[dynsec]\nurl = mqtts://127.0.0.1:8884\n" LISTENER,
                 ":2:", "needs username and password", NULL);
    expect_error("[dynsec]\nurl = mqtt://127.0.0.1:1884\nusername = a\npassword_env = P\n" LISTENER,
                 ":2:", "allow_plain", NULL);
    expect_error("[dynsec]\npassword = hunter2-long\n" LISTENER, ":2:", "password_env", NULL);
}

static void test_identity_defaults_follow_the_data_and_ca_directories(void **state)
{
    (void)state;
    em_daemon_config_t *c = cfg_new();
    em_error_t err;
    assert_int_equal(parse(c,
                           "[daemon]\ndata_dir = /srv/emiot\n[pki]\ndir = /srv/ca\n"
                           "[dynsec]\nurl = mqtts://127.0.0.1:8884\nusername = admin\n"
                           "password_file = /etc/emiot/dynsec.pw\n" LISTENER,
                           &err),
                     EM_OK);
    assert_string_equal(c->keystore_key_file, "/srv/emiot/keystore.key");
    assert_string_equal(c->pki_ca_file, "/srv/ca/ca.crt");
    assert_string_equal(c->pki_crl_file, "/srv/ca/crl.pem");
    assert_int_equal(c->device_cert_days, 365);
    assert_int_equal(c->device_token_ttl_s, 86400);
    assert_int_equal(c->nonce_ttl_s, 300);
    em_api_options_t ao;
    em_daemon_config_api_options(c, &ao);
    assert_string_equal(ao.device_ca_file, "/srv/ca/ca.crt");
    assert_string_equal(ao.client_crl_file, "/srv/ca/crl.pem");
    assert_int_equal(ao.device_token_ttl_s, 86400);
    assert_null(ao.pki); /* the daemon's own objects */
    em_dynsec_options_t dso;
    em_daemon_config_dynsec_options(c, &dso);
    assert_string_equal(dso.mqtt.url, "mqtts://127.0.0.1:8884");
    assert_string_equal(dso.mqtt.username, "admin");
    assert_string_equal(dso.mqtt.password_file, "/etc/emiot/dynsec.pw");
    assert_string_equal(dso.topic_prefix, "device/");

    /* A passphrase replaces the key file; no CA directory, no defaults. */
    assert_int_equal(parse(c, "[keystore]\npassphrase_env = EMIOT_KS\n" LISTENER, &err), EM_OK);
    assert_string_equal(c->keystore_key_file, "");
    assert_string_equal(c->pki_ca_file, "");
    free(c);
}

static void test_bootstrap_key_none_without_print_is_refused(void **state)
{
    (void)state;
    expect_error("[daemon]\nbootstrap_key_file = none\n" LISTENER, ":2:", "shown nowhere", NULL);
}

static void test_limits_size_line_and_nul(void **state)
{
    (void)state;
    em_daemon_config_t *c = cfg_new();
    em_error_t err;
    size_t big = EM_DAEMON_CONFIG_SIZE_MAX + 1;
    char *text = malloc(big);
    assert_non_null(text);
    memset(text, '#', big);
    assert_int_equal(em_daemon_config_parse(c, text, big, "big.conf", &err), EM_ERR_CONFIGURATION);
    assert_non_null(strstr(err.message, "larger than"));

    /* One line over the line limit. */
    size_t len = EM_DAEMON_LINE_MAX + 20;
    memcpy(text, "[daemon]\n#", 10);
    memset(text + 10, 'x', len - 10);
    em_daemon_config_init(c);
    assert_int_equal(em_daemon_config_parse(c, text, len, "long.conf", &err), EM_ERR_CONFIGURATION);
    if (strstr(err.message, "long.conf:2:") == NULL ||
        strstr(err.message, "line longer than") == NULL)
        fail_msg("%s", err.message);

    static const char nul[] = "[daemon]\nlog_level = info\0debug\n";
    em_daemon_config_init(c);
    assert_int_equal(em_daemon_config_parse(c, nul, sizeof(nul) - 1, "nul.conf", &err),
                     EM_ERR_CONFIGURATION);
    assert_non_null(strstr(err.message, "nul.conf:2: NUL byte"));
    free(text);
    free(c);
}

static void test_invalid_arguments(void **state)
{
    (void)state;
    em_error_t err;
    assert_int_equal(em_daemon_config_parse(NULL, "", 0, NULL, &err), EM_ERR_INVALID_ARGUMENT);
    em_daemon_config_t *c = cfg_new();
    assert_int_equal(em_daemon_config_parse(c, NULL, 3, NULL, &err), EM_ERR_INVALID_ARGUMENT);
    assert_int_equal(em_daemon_config_load(c, NULL, &err), EM_ERR_INVALID_ARGUMENT);
    assert_int_equal(em_daemon_config_check(NULL, &err), EM_ERR_INVALID_ARGUMENT);
    char buf[8];
    assert_int_equal(em_daemon_config_store_url(NULL, buf, sizeof(buf), &err),
                     EM_ERR_INVALID_ARGUMENT);
    em_daemon_config_init(NULL); /* ignored */
    /* An empty text has no listener. */
    assert_int_equal(em_daemon_config_parse(c, "", 0, NULL, &err), EM_ERR_CONFIGURATION);
    assert_non_null(strstr(err.message, "config:0:"));
    free(c);
}

/* ---- placeholders and URL passwords ----------------------------------- */

static bool ph(const char *s)
{
    return em_daemon_secret_is_placeholder(s, strlen(s));
}

static void test_placeholders_are_recognised(void **state)
{
    (void)state;
    const char *bad[] = {"",
                         "   ",
                         "changeme",
                         "CHANGEME",
                         "change_me",
                         "Change-Me",
                         "password",
                         "Password",
                         "secret",
                         "admin",
                         "example",
                         "default",
                         "test",
                         "xxx",
                         "XXXXXXXX",
                         "<password>",
                         "<your db password>",
                         "${DB_PASSWORD}",
                         " changeme\n",
                         "123456"};
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        if (!ph(bad[i]))
            fail_msg("'%s' should be a placeholder", bad[i]);
    }
    assert_true(em_daemon_secret_is_placeholder(NULL, 0));
    const char *good[] = {"x",
                          "xx",
                          "s3cr3t-Tr0mbone",
                          "passwordless-but-long-2",
                          "correct horse battery staple",
                          "<unbalanced",
                          "xxy"};
    for (size_t i = 0; i < sizeof(good) / sizeof(good[0]); i++) {
        if (ph(good[i]))
            fail_msg("'%s' should not be a placeholder", good[i]);
    }
}

static void test_url_passwords_are_found(void **state)
{
    (void)state;
    const char *pw;
    size_t len;
    const char *u = "postgresql://emiot:pa:ss@db.example:5432/emiot?sslmode=require";
    assert_int_equal(em__daemon_url_password(u, strlen(u), &pw, &len, 0), 0);
    assert_int_equal(len, 5);
    assert_memory_equal(pw, "pa:ss", 5);
    assert_int_equal(em__daemon_url_password(u, strlen(u), &pw, &len, 1), -1);

    u = "postgresql://emiot@db/emiot?password=abc&sslmode=require";
    assert_int_equal(em__daemon_url_password(u, strlen(u), &pw, &len, 0), 0);
    assert_int_equal(len, 3);
    assert_memory_equal(pw, "abc", 3);

    u = "postgresql://db/emiot?mypassword=abc";
    assert_false(em__daemon_url_has_password(u, strlen(u)));
    u = "sqlite:/var/lib/emiot/emiot.db";
    assert_false(em__daemon_url_has_password(u, strlen(u)));
    u = "postgresql://emiot@db/emiot";
    assert_false(em__daemon_url_has_password(u, strlen(u)));
    u = "postgresql://emiot:@db/emiot";
    assert_true(em__daemon_url_has_password(u, strlen(u)));
}

/* ---- files: secrets, certificates, check ------------------------------ */

typedef struct fixture {
    char dir[256];
    char path[EM_TEST_PATH_MAX];
} fixture_t;

static int fx_setup(void **state)
{
    fixture_t *f = calloc(1, sizeof(*f));
    if (f == NULL || em_test_mkdtemp(f->dir, sizeof(f->dir)) != 0)
        return -1;
    char script[EM_TEST_PATH_MAX], tls[EM_TEST_PATH_MAX];
    snprintf(script, sizeof(script), "%s/scripts/gen-certs.sh", EM_TEST_SOURCE_DIR);
    snprintf(tls, sizeof(tls), "%s/tls", f->dir);
    const char *argv[] = {"bash", script, tls, NULL};
    if (em_test_run(argv) != 0)
        return -1;
    *state = f;
    return 0;
}

static int fx_teardown(void **state)
{
    fixture_t *f = *state;
    unsetenv("EMIOT_TEST_URL");
    unsetenv("EMIOT_TEST_MQTT_PW");
    em_test_rmtree(f->dir);
    free(f);
    return 0;
}

static const char *fx_path(fixture_t *f, const char *name)
{
    snprintf(f->path, sizeof(f->path), "%s/%s", f->dir, name);
    return f->path;
}

static void fx_write(fixture_t *f, const char *name, const char *text, mode_t mode)
{
    const char *p = fx_path(f, name);
    unlink(p);
    int fd = open(p, O_WRONLY | O_CREAT | O_TRUNC, mode);
    assert_true(fd >= 0);
    assert_int_equal(write(fd, text, strlen(text)), (ssize_t)strlen(text));
    close(fd);
    assert_int_equal(chmod(p, mode), 0);
}

/* A valid configuration for check: data dir, TLS listener, plain loopback
 * MQTT, plus extra text. */
static em_err_t fx_parse(fixture_t *f, em_daemon_config_t *c, const char *extra, em_error_t *err)
{
    char text[8192];
    snprintf(text, sizeof(text),
             "[daemon]\ndata_dir = %s/data\n"
             "[mqtt]\nurl = mqtt://127.0.0.1:1883\nallow_plain = true\n"
             "[listener api]\naddress = 127.0.0.1\nport = 8443\n"
             "cert_file = %s/tls/server.crt\nkey_file = %s/tls/server.key\n"
             "client_ca_file = %s/tls/ca.crt\nclient_auth = optional\n%s",
             f->dir, f->dir, f->dir, f->dir, extra != NULL ? extra : "");
    return parse(c, text, err);
}

static void test_check_accepts_a_valid_configuration(void **state)
{
    fixture_t *f = *state;
    em_daemon_config_t *c = cfg_new();
    em_error_t err;
    assert_int_equal(fx_parse(f, c, NULL, &err), EM_OK);
    em_error_clear(&err);
    if (em_daemon_config_check(c, &err) != EM_OK)
        fail_msg("check: %s", err.message);
    free(c);
}

static void test_load_reads_a_file_and_records_its_absolute_path(void **state)
{
    fixture_t *f = *state;
    fx_write(f, "emiotd.conf", LISTENER, 0600);
    em_daemon_config_t *c = cfg_new();
    em_error_t err;
    assert_int_equal(em_daemon_config_load(c, fx_path(f, "emiotd.conf"), &err), EM_OK);
    assert_string_equal(c->path, fx_path(f, "emiotd.conf"));
    assert_int_equal(c->nlisteners, 1);
    assert_int_equal(em_daemon_config_load(c, fx_path(f, "missing.conf"), &err),
                     EM_ERR_CONFIGURATION);
    assert_non_null(strstr(err.message, "cannot read"));
    assert_int_equal(em_daemon_config_load(c, f->dir, &err), EM_ERR_CONFIGURATION);
    fx_write(f, "bad.conf", "[daemon]\nbogus = 1\n", 0600);
    assert_int_equal(em_daemon_config_load(c, fx_path(f, "bad.conf"), &err), EM_ERR_CONFIGURATION);
    assert_non_null(strstr(err.message, "bad.conf:2: [daemon] bogus: unknown key"));
    free(c);
}

static void test_check_refuses_missing_and_mismatched_certificates(void **state)
{
    fixture_t *f = *state;
    em_daemon_config_t *c = cfg_new();
    em_error_t err;
    char extra[1024];
    snprintf(extra, sizeof(extra),
             "[listener other]\naddress = 127.0.0.1\nport = 8444\n"
             "cert_file = %s/tls/server.crt\nkey_file = %s/tls/manager.key\n",
             f->dir, f->dir);
    assert_int_equal(fx_parse(f, c, extra, &err), EM_OK);
    assert_int_equal(em_daemon_config_check(c, &err), EM_ERR_CONFIGURATION);
    if (strstr(err.message, "[listener other]") == NULL ||
        strstr(err.message, "does not match") == NULL)
        fail_msg("%s", err.message);

    snprintf(extra, sizeof(extra),
             "[listener other]\naddress = 127.0.0.1\nport = 8444\n"
             "cert_file = %s/tls/nope.crt\nkey_file = %s/tls/server.key\n",
             f->dir, f->dir);
    assert_int_equal(fx_parse(f, c, extra, &err), EM_OK);
    assert_int_equal(em_daemon_config_check(c, &err), EM_ERR_CONFIGURATION);
    assert_non_null(strstr(err.message, "cannot read"));

    fx_write(f, "notca.pem", "not a certificate\n", 0644);
    snprintf(extra, sizeof(extra), "[mqtt]\nca_file = %s/notca.pem\n", f->dir);
    assert_int_equal(fx_parse(f, c, extra, &err), EM_OK);
    assert_int_equal(em_daemon_config_check(c, &err), EM_ERR_CONFIGURATION);
    assert_non_null(strstr(err.message, "[mqtt] ca_file"));
    free(c);
}

static void test_check_refuses_a_data_dir_without_parent(void **state)
{
    fixture_t *f = *state;
    em_daemon_config_t *c = cfg_new();
    em_error_t err;
    assert_int_equal(fx_parse(f, c, NULL, &err), EM_OK);
    snprintf(c->data_dir, sizeof(c->data_dir), "%s/no/such/dir", f->dir);
    assert_int_equal(em_daemon_config_check(c, &err), EM_ERR_CONFIGURATION);
    assert_non_null(strstr(err.message, "data_dir"));
    fx_write(f, "file", "x", 0600);
    snprintf(c->data_dir, sizeof(c->data_dir), "%s/file", f->dir);
    assert_int_equal(em_daemon_config_check(c, &err), EM_ERR_CONFIGURATION);
    assert_non_null(strstr(err.message, "not a directory"));
    free(c);
}

static void test_store_url_defaults_to_sqlite_in_the_data_dir(void **state)
{
    fixture_t *f = *state;
    em_daemon_config_t *c = cfg_new();
    em_error_t err;
    assert_int_equal(fx_parse(f, c, NULL, &err), EM_OK);
    char url[EM_STORE_URL_MAX + 1], want[EM_STORE_URL_MAX + 1];
    assert_int_equal(em_daemon_config_store_url(c, url, sizeof(url), &err), EM_OK);
    snprintf(want, sizeof(want), "sqlite:%s/data/emiot.db", f->dir);
    assert_string_equal(url, want);
    char small[8];
    assert_int_equal(em_daemon_config_store_url(c, small, sizeof(small), &err),
                     EM_ERR_BUFFER_TOO_SMALL);
    free(c);
}

static void test_store_url_from_the_environment(void **state)
{
    fixture_t *f = *state;
    em_daemon_config_t *c = cfg_new();
    em_error_t err;
    assert_int_equal(fx_parse(f, c, "[store]\nurl_env = EMIOT_TEST_URL\n", &err), EM_OK);
    unsetenv("EMIOT_TEST_URL");
    char url[EM_STORE_URL_MAX + 1];
    assert_int_equal(em_daemon_config_store_url(c, url, sizeof(url), &err), EM_ERR_CONFIGURATION);
    assert_non_null(strstr(err.message, "EMIOT_TEST_URL is not set"));
    assert_int_equal(em_daemon_config_check(c, &err), EM_ERR_CONFIGURATION);

    setenv("EMIOT_TEST_URL", "postgresql://emiot:Tr0mbone-42@db/emiot", 1);
    assert_int_equal(em_daemon_config_store_url(c, url, sizeof(url), &err), EM_OK);
    assert_string_equal(url, "postgresql://emiot:Tr0mbone-42@db/emiot");
    assert_int_equal(em_daemon_config_check(c, &err), EM_OK);
    free(c);
}

static void test_store_url_placeholder_password_is_refused(void **state)
{
    fixture_t *f = *state;
    em_daemon_config_t *c = cfg_new();
    em_error_t err;
    assert_int_equal(fx_parse(f, c, "[store]\nurl_env = EMIOT_TEST_URL\n", &err), EM_OK);
    const char *bad[] = {"postgresql://emiot:changeme@db/emiot", "postgresql://emiot:@db/emiot",
                         "postgresql://emiot@db/emiot?password=secret",
                         "postgresql://emiot:<password>@db/emiot"};
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        setenv("EMIOT_TEST_URL", bad[i], 1);
        char url[EM_STORE_URL_MAX + 1] = "untouched";
        assert_int_equal(em_daemon_config_store_url(c, url, sizeof(url), &err),
                         EM_ERR_CONFIGURATION);
        assert_non_null(strstr(err.message, "placeholder"));
        assert_null(strstr(err.message, "changeme"));
        assert_int_equal(url[0], '\0'); /* wiped */
        assert_int_equal(em_daemon_config_check(c, &err), EM_ERR_CONFIGURATION);
    }
    free(c);
}

static void test_store_url_from_a_private_file(void **state)
{
    fixture_t *f = *state;
    em_daemon_config_t *c = cfg_new();
    em_error_t err;
    char extra[512];
    snprintf(extra, sizeof(extra), "[store]\nurl_file = %s/store-url\n", f->dir);
    assert_int_equal(fx_parse(f, c, extra, &err), EM_OK);
    char url[EM_STORE_URL_MAX + 1];
    assert_int_equal(em_daemon_config_store_url(c, url, sizeof(url), &err), EM_ERR_CONFIGURATION);
    assert_non_null(strstr(err.message, "cannot read"));

    fx_write(f, "store-url", "postgresql://emiot:Tr0mbone-42@db/emiot\nignored\n", 0600);
    assert_int_equal(em_daemon_config_store_url(c, url, sizeof(url), &err), EM_OK);
    assert_string_equal(url, "postgresql://emiot:Tr0mbone-42@db/emiot");

    fx_write(f, "store-url", "postgresql://emiot:Tr0mbone-42@db/emiot\n", 0644);
    assert_int_equal(em_daemon_config_store_url(c, url, sizeof(url), &err), EM_ERR_CONFIGURATION);
    assert_non_null(strstr(err.message, "other users"));

    fx_write(f, "store-url", "\n", 0600);
    assert_int_equal(em_daemon_config_store_url(c, url, sizeof(url), &err), EM_ERR_CONFIGURATION);
    assert_non_null(strstr(err.message, "is empty"));
    free(c);
}

static void test_mqtt_password_from_env_and_file_and_placeholders(void **state)
{
    fixture_t *f = *state;
    em_daemon_config_t *c = cfg_new();
    em_error_t err;
    assert_int_equal(
        fx_parse(f, c, "[mqtt]\nusername = emiotd\npassword_env = EMIOT_TEST_MQTT_PW\n", &err),
        EM_OK);
    unsetenv("EMIOT_TEST_MQTT_PW");
    assert_int_equal(em_daemon_config_check(c, &err), EM_ERR_CONFIGURATION);
    assert_non_null(strstr(err.message, "EMIOT_TEST_MQTT_PW is not set"));
    setenv("EMIOT_TEST_MQTT_PW", "changeme", 1);
    assert_int_equal(em_daemon_config_check(c, &err), EM_ERR_CONFIGURATION);
    assert_non_null(strstr(err.message, "placeholder"));
    setenv("EMIOT_TEST_MQTT_PW", "Vr8-long-random", 1);
    if (em_daemon_config_check(c, &err) != EM_OK)
        fail_msg("check: %s", err.message);

    char extra[512];
    snprintf(extra, sizeof(extra), "[mqtt]\nusername = emiotd\npassword_file = %s/mqtt-pw\n",
             f->dir);
    assert_int_equal(fx_parse(f, c, extra, &err), EM_OK);
    fx_write(f, "mqtt-pw", "xxxxxx\n", 0600);
    assert_int_equal(em_daemon_config_check(c, &err), EM_ERR_CONFIGURATION);
    assert_non_null(strstr(err.message, "placeholder"));
    fx_write(f, "mqtt-pw", "Vr8-long-random\n", 0640);
    assert_int_equal(em_daemon_config_check(c, &err), EM_OK);
    fx_write(f, "mqtt-pw", "Vr8-long-random\n", 0604);
    assert_int_equal(em_daemon_config_check(c, &err), EM_ERR_CONFIGURATION);
    assert_non_null(strstr(err.message, "other users"));
    free(c);
}

static void test_check_refuses_a_public_jwt_key(void **state)
{
    fixture_t *f = *state;
    em_daemon_config_t *c = cfg_new();
    em_error_t err;
    char extra[512];
    snprintf(extra, sizeof(extra), "[api]\njwt_key_file = %s/jwt.key\n", f->dir);
    assert_int_equal(fx_parse(f, c, extra, &err), EM_OK);
    assert_int_equal(em_daemon_config_check(c, &err), EM_OK); /* created at start */
    fx_write(f, "jwt.key", "-----BEGIN PRIVATE KEY-----\n", 0644);
    assert_int_equal(em_daemon_config_check(c, &err), EM_ERR_CONFIGURATION);
    assert_non_null(strstr(err.message, "jwt_key_file"));
    free(c);
}

static void test_deploy_example_parses(void **state)
{
    (void)state;
    char path[EM_TEST_PATH_MAX];
    snprintf(path, sizeof(path), "%s/deploy/emiotd.conf", EM_TEST_SOURCE_DIR);
    em_daemon_config_t *c = cfg_new();
    em_error_t err;
    if (em_daemon_config_load(c, path, &err) != EM_OK)
        fail_msg("deploy/emiotd.conf: %s", err.message);
    assert_int_equal(c->nlisteners, 2);
    assert_string_equal(c->data_dir, "/var/lib/emiot");
    free(c);
}

/* Every key the example documents (commented out or not) is a key the
 * parser knows, in the section it is documented in. */
static void test_deploy_example_documents_only_real_keys(void **state)
{
    (void)state;
    char path[EM_TEST_PATH_MAX];
    snprintf(path, sizeof(path), "%s/deploy/emiotd.conf", EM_TEST_SOURCE_DIR);
    FILE *f = fopen(path, "r");
    assert_non_null(f);
    char section[1024] = "", line[1024];
    em_daemon_config_t *c = cfg_new();
    int keys = 0;
    while (fgets(line, sizeof(line), f) != NULL) {
        line[strcspn(line, "\n")] = '\0';
        if (line[0] == '[') {
            snprintf(section, sizeof(section), "%s", line);
            continue;
        }
        const char *kv = line[0] == '#' ? line + 1 : line;
        size_t k = strspn(kv, "abcdefghijklmnopqrstuvwxyz_");
        if (k == 0 || strncmp(kv + k, " = ", 3) != 0)
            continue;
        /* One key alone in its section: unknown keys fail, valid ones may
         * fail only on rules between keys, never as "unknown key". */
        char text[2100];
        snprintf(text, sizeof(text), "%s\n%s\n", section, kv);
        em_error_t err;
        em_daemon_config_init(c);
        em_error_clear(&err);
        (void)em_daemon_config_parse(c, text, strlen(text), "example", &err);
        if (strstr(err.message, "unknown") != NULL)
            fail_msg("%s %s: %s", section, kv, err.message);
        keys++;
    }
    fclose(f);
    free(c);
    assert_true(keys >= 60);
}

static void test_exit_codes(void **state)
{
    (void)state;
    assert_int_equal(em_daemon_exit_code(EM_OK), 0);
    assert_int_equal(em_daemon_exit_code(EM_ERR_CONFIGURATION), 78);
    assert_int_equal(em_daemon_exit_code(EM_ERR_IO), 1);
    assert_int_equal(em_daemon_exit_code(EM_ERR_TLS), 1);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_defaults_with_one_listener),
        cmocka_unit_test(test_every_key_is_applied),
        cmocka_unit_test(test_options_follow_the_configuration),
        cmocka_unit_test(test_comments_blank_lines_quotes_and_reopened_sections),
        cmocka_unit_test(test_bootstrap_key_file_none_with_print),
        cmocka_unit_test(test_unknown_section_is_refused),
        cmocka_unit_test(test_unknown_key_is_refused_with_its_line),
        cmocka_unit_test(test_key_of_another_section_is_unknown),
        cmocka_unit_test(test_duplicate_key_names_both_lines),
        cmocka_unit_test(test_key_before_any_section_is_refused),
        cmocka_unit_test(test_line_without_equals_is_refused),
        cmocka_unit_test(test_bad_values_are_refused_per_kind),
        cmocka_unit_test(test_values_are_never_echoed),
        cmocka_unit_test(test_mqtt_password_key_is_refused_with_a_hint),
        cmocka_unit_test(test_mqtt_url_with_credentials_is_refused),
        cmocka_unit_test(test_store_url_with_query_password_is_refused),
        cmocka_unit_test(test_store_url_sources_exclude_each_other),
        cmocka_unit_test(test_listener_rules),
        cmocka_unit_test(test_at_most_eight_listeners),
        cmocka_unit_test(test_mqtt_rules),
        cmocka_unit_test(test_identity_rules),
        cmocka_unit_test(test_identity_defaults_follow_the_data_and_ca_directories),
        cmocka_unit_test(test_bootstrap_key_none_without_print_is_refused),
        cmocka_unit_test(test_limits_size_line_and_nul),
        cmocka_unit_test(test_invalid_arguments),
        cmocka_unit_test(test_placeholders_are_recognised),
        cmocka_unit_test(test_url_passwords_are_found),
        cmocka_unit_test(test_exit_codes),
        cmocka_unit_test(test_deploy_example_parses),
        cmocka_unit_test(test_deploy_example_documents_only_real_keys),
        cmocka_unit_test_setup_teardown(test_check_accepts_a_valid_configuration, fx_setup,
                                        fx_teardown),
        cmocka_unit_test_setup_teardown(test_load_reads_a_file_and_records_its_absolute_path,
                                        fx_setup, fx_teardown),
        cmocka_unit_test_setup_teardown(test_check_refuses_missing_and_mismatched_certificates,
                                        fx_setup, fx_teardown),
        cmocka_unit_test_setup_teardown(test_check_refuses_a_data_dir_without_parent, fx_setup,
                                        fx_teardown),
        cmocka_unit_test_setup_teardown(test_store_url_defaults_to_sqlite_in_the_data_dir, fx_setup,
                                        fx_teardown),
        cmocka_unit_test_setup_teardown(test_store_url_from_the_environment, fx_setup, fx_teardown),
        cmocka_unit_test_setup_teardown(test_store_url_placeholder_password_is_refused, fx_setup,
                                        fx_teardown),
        cmocka_unit_test_setup_teardown(test_store_url_from_a_private_file, fx_setup, fx_teardown),
        cmocka_unit_test_setup_teardown(test_mqtt_password_from_env_and_file_and_placeholders,
                                        fx_setup, fx_teardown),
        cmocka_unit_test_setup_teardown(test_check_refuses_a_public_jwt_key, fx_setup, fx_teardown),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
