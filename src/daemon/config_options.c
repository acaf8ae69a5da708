/*
 * emiot - config_options.c: the defaults of emiotd's configuration, and what
 * it becomes for the library (daemon.h).
 *
 * The daemon configures each part of libemiot through that part's own option
 * struct; these functions are where a key of the file meets the option it
 * sets.
 */
#include <stdint.h>
#include <stdio.h>
#include <string.h>

#include "emiot/daemon.h"

/* ---- defaults ---------------------------------------------------------- */

void em_daemon_config_init(em_daemon_config_t *cfg)
{
    if (cfg == NULL)
        return;
    memset(cfg, 0, sizeof(*cfg));
    snprintf(cfg->data_dir, sizeof(cfg->data_dir), "%s", "/var/lib/emiot");
    cfg->log_level = EM_LOG_INFO;
    cfg->shutdown_timeout_s = 10;
    cfg->command_expiry_s = 5;
    cfg->retention_interval_s = 3600;

    snprintf(cfg->mqtt_url, sizeof(cfg->mqtt_url), "%s", "mqtts://localhost:8883");
    cfg->mqtt_keepalive_s = 30;
    cfg->mqtt_reconnect_min_s = 1;
    cfg->mqtt_reconnect_max_s = 30;
    cfg->mqtt_protocol = 5;
    snprintf(cfg->topic_prefix, sizeof(cfg->topic_prefix), "%s", "device/");
    cfg->status_interval_s = 60;
    cfg->offline_check_s = 10;
    cfg->command_rate_count = 10;
    cfg->command_rate_window_s = 60;
    cfg->command_qos = 1;

    em_store_options_init(&cfg->store);

    cfg->status_history_days = 30;
    cfg->telemetry_days = 90;
    cfg->rollup_hour_days = 365;
    cfg->rollup_day_days = 0;
    cfg->events_days = 180;
    cfg->commands_days = 90;

    cfg->max_body = 65536;
    cfg->request_timeout_s = 30;
    cfg->command_ttl_s = 300;
    snprintf(cfg->jwt_issuer, sizeof(cfg->jwt_issuer), "%s", "emiotd");
    snprintf(cfg->jwt_audience, sizeof(cfg->jwt_audience), "%s", "emiot-api");
    cfg->jwt_ttl_s = 3600;
    cfg->rate_per_min[EM_ROLE_VIEWER] = 1200;
    cfg->rate_per_min[EM_ROLE_OPERATOR] = 1200;
    cfg->rate_per_min[EM_ROLE_ADMIN] = 1200;
    cfg->rate_per_min[EM_ROLE_DEVICE] = 60;
    cfg->auth_fail_per_min = 20;

    cfg->device_cert_days = 365;
    cfg->enroll_token_ttl_s = 86400;
    cfg->enroll_token_ttl_max_s = 30 * 86400;
    cfg->device_token_ttl_s = 86400;
    cfg->nonce_ttl_s = 300;
    cfg->nonces_max = 10000;
}

/* ---- options for the library ------------------------------------------ */

static const char *or_null(const char *s)
{
    return s[0] != '\0' ? s : NULL;
}

void em_daemon_config_mqtt_options(const em_daemon_config_t *cfg, em_mqtt_options_t *out)
{
    em_mqtt_options_init(out);
    out->url = cfg->mqtt_url;
    out->ca_file = or_null(cfg->mqtt_ca_file);
    out->ca_path = or_null(cfg->mqtt_ca_path);
    out->cert_file = or_null(cfg->mqtt_cert_file);
    out->key_file = or_null(cfg->mqtt_key_file);
    out->username = or_null(cfg->mqtt_username);
    out->password_env = or_null(cfg->mqtt_password_env);
    out->password_file = or_null(cfg->mqtt_password_file);
    out->client_id = or_null(cfg->mqtt_client_id);
    out->client_id_prefix = "emiotd-";
    out->keepalive_s = cfg->mqtt_keepalive_s;
    out->reconnect_min_s = cfg->mqtt_reconnect_min_s;
    out->reconnect_max_s = cfg->mqtt_reconnect_max_s;
    out->protocol = cfg->mqtt_protocol;
    out->allow_plain = cfg->mqtt_allow_plain;
    /* A persistent session would replay commands' answers and statuses
     * queued while the daemon was away; the store already has what came
     * before, and the devices report again. */
    out->clean_session = true;
}

void em_daemon_config_manager_options(const em_daemon_config_t *cfg, em_manager_options_t *out)
{
    em_manager_options_init(out);
    out->topic_prefix = cfg->topic_prefix;
    out->status_interval_s = cfg->status_interval_s;
    out->offline_check_s = cfg->offline_check_s;
    out->rate_limit_count = cfg->command_rate_count;
    out->rate_limit_window_s = cfg->command_rate_window_s;
    out->command_qos = cfg->command_qos;
    out->max_devices = cfg->max_devices;
}

void em_daemon_config_api_options(const em_daemon_config_t *cfg, em_api_options_t *out)
{
    em_api_options_init(out);
    for (size_t i = 0; i < cfg->nlisteners && i < EM_API_LISTENERS_MAX; i++) {
        const em_daemon_listener_t *l = &cfg->listeners[i];
        em_api_listener_t *o = &out->listeners[i];
        o->address = l->address;
        o->port = l->port;
        o->cert_file = or_null(l->cert_file);
        o->key_file = or_null(l->key_file);
        o->client_ca_file = or_null(l->client_ca_file);
        o->client_auth = l->client_auth;
        o->metrics_only = l->metrics_only;
    }
    out->nlisteners = cfg->nlisteners;
    out->max_body = cfg->max_body;
    out->request_timeout_s = cfg->request_timeout_s;
    out->jwt_key_file = cfg->jwt_key_file;
    out->jwt_issuer = cfg->jwt_issuer;
    out->jwt_audience = cfg->jwt_audience;
    out->jwt_ttl_s = cfg->jwt_ttl_s;
    for (size_t r = 0; r < 5; r++)
        out->rate_per_min[r] = cfg->rate_per_min[r];
    out->auth_fail_per_min = cfg->auth_fail_per_min;
    out->command_ttl_s = cfg->command_ttl_s;
    /* The keystore secret, the CA and the dynsec client are the daemon's
     * objects: em_daemon_new sets those pointers once it has made them. */
    out->client_crl_file = or_null(cfg->pki_crl_file);
    out->device_ca_file = or_null(cfg->pki_ca_file);
    out->device_token_ttl_s = cfg->device_token_ttl_s;
    out->nonce_ttl_s = cfg->nonce_ttl_s;
    out->nonces_max = cfg->nonces_max;
    out->enroll_token_ttl_s = cfg->enroll_token_ttl_s;
    out->enroll_token_ttl_max_s = cfg->enroll_token_ttl_max_s;
    out->device_cert_days = cfg->device_cert_days;
}

void em_daemon_config_dynsec_options(const em_daemon_config_t *cfg, em_dynsec_options_t *out)
{
    /* As em_dynsec_options_init would, without a link to the dynsec client
     * for a program that only reads configurations. */
    memset(out, 0, sizeof(*out));
    out->timeout_ms = 5000;
    em_mqtt_options_init(&out->mqtt);
    out->mqtt.url = cfg->dynsec_url;
    out->mqtt.ca_file = or_null(cfg->dynsec_ca_file);
    out->mqtt.cert_file = or_null(cfg->dynsec_cert_file);
    out->mqtt.key_file = or_null(cfg->dynsec_key_file);
    out->mqtt.username = or_null(cfg->dynsec_username);
    out->mqtt.password_env = or_null(cfg->dynsec_password_env);
    out->mqtt.password_file = or_null(cfg->dynsec_password_file);
    out->mqtt.client_id_prefix = "emiotd-dynsec-";
    out->mqtt.allow_plain = cfg->mqtt_allow_plain;
    out->mqtt.clean_session = true;
    out->topic_prefix = cfg->topic_prefix;
}

void em_daemon_config_retention(const em_daemon_config_t *cfg, em_store_retention_t *out)
{
    const int64_t day = 86400000;
    out->status_history_ms = cfg->status_history_days * day;
    out->telemetry_ms = cfg->telemetry_days * day;
    out->rollup_hour_ms = cfg->rollup_hour_days * day;
    out->rollup_day_ms = cfg->rollup_day_days * day;
    out->events_ms = cfg->events_days * day;
    out->commands_ms = cfg->commands_days * day;
}
