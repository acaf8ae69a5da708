/*
 * emiot - daemon_reload.c: emiotd's configuration reload (SIGHUP,
 * em_daemon_reload): what is taken from the new file at once, and which
 * changed settings wait for a restart.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <event2/event.h>

#include "daemon/daemon_internal.h"
#include "emiot/daemon.h"

#define MODULE "daemon"

/* ---- reload ------------------------------------------------------------ */

/* Appends name to list (comma separated, bounded). */
static void note(char *list, size_t size, const char *name)
{
    size_t len = strlen(list);
    if (len + strlen(name) + 3 >= size)
        return;
    snprintf(list + len, size - len, "%s%s", len > 0 ? ", " : "", name);
}

#define SAME_STR(f) (strcmp(a->f, b->f) == 0)
#define SAME(f)     (a->f == b->f)

/* Names the settings that differ between a and b and need a restart. */
static void restart_only_changes(const em_daemon_config_t *a, const em_daemon_config_t *b,
                                 char *list, size_t size)
{
    list[0] = '\0';
    if (!SAME_STR(data_dir))
        note(list, size, "daemon.data_dir");
    if (!SAME_STR(bootstrap_key_file) || !SAME(bootstrap_key_print))
        note(list, size, "daemon.bootstrap_key_*");
    if (!SAME_STR(mqtt_url) || !SAME_STR(mqtt_ca_file) || !SAME_STR(mqtt_ca_path) ||
        !SAME_STR(mqtt_cert_file) || !SAME_STR(mqtt_key_file) || !SAME_STR(mqtt_username) ||
        !SAME_STR(mqtt_password_env) || !SAME_STR(mqtt_password_file) ||
        !SAME_STR(mqtt_client_id) || !SAME(mqtt_allow_plain) || !SAME(mqtt_keepalive_s) ||
        !SAME(mqtt_reconnect_min_s) || !SAME(mqtt_reconnect_max_s) || !SAME(mqtt_protocol))
        note(list, size, "mqtt connection");
    if (!SAME(status_interval_s) || !SAME(offline_check_s) || !SAME(command_rate_count) ||
        !SAME(command_rate_window_s) || !SAME(command_qos) || !SAME(max_devices))
        note(list, size, "mqtt manager settings");
    if (!SAME_STR(store_url) || !SAME_STR(store_url_env) || !SAME_STR(store_url_file) ||
        memcmp(&a->store, &b->store, sizeof(a->store)) != 0)
        note(list, size, "store");
    if (!SAME(request_timeout_s) || !SAME(command_ttl_s) || !SAME_STR(jwt_key_file) ||
        !SAME_STR(jwt_issuer) || !SAME_STR(jwt_audience) || !SAME(jwt_ttl_s))
        note(list, size, "api (timeouts, ttl, jwt)");
    if (!SAME_STR(keystore_passphrase_env) || !SAME_STR(keystore_passphrase_file) ||
        !SAME_STR(keystore_key_file) || !SAME_STR(pkcs11_module) || !SAME_STR(pkcs11_pin_env) ||
        !SAME_STR(pkcs11_pin_file))
        note(list, size, "keystore");
    if (!SAME_STR(pki_dir) || !SAME_STR(pki_ca_file) || !SAME_STR(pki_crl_file) ||
        !SAME(device_cert_days) || !SAME(enroll_token_ttl_s) || !SAME(enroll_token_ttl_max_s) ||
        !SAME(device_token_ttl_s) || !SAME(nonce_ttl_s) || !SAME(nonces_max))
        note(list, size, "pki");
    if (!SAME_STR(dynsec_url) || !SAME_STR(dynsec_ca_file) || !SAME_STR(dynsec_cert_file) ||
        !SAME_STR(dynsec_key_file) || !SAME_STR(dynsec_username) ||
        !SAME_STR(dynsec_password_env) || !SAME_STR(dynsec_password_file))
        note(list, size, "dynsec");
    bool listeners_same = SAME(nlisteners);
    for (size_t i = 0; listeners_same && i < a->nlisteners; i++) {
        const em_daemon_listener_t *x = &a->listeners[i], *y = &b->listeners[i];
        listeners_same = strcmp(x->name, y->name) == 0 && strcmp(x->address, y->address) == 0 &&
                         x->port == y->port && x->metrics_only == y->metrics_only &&
                         x->client_auth == y->client_auth &&
                         (x->cert_file[0] != '\0') == (y->cert_file[0] != '\0');
    }
    if (!listeners_same)
        note(list, size, "listeners (names, addresses, ports, client_auth, TLS on/off)");
}

#undef SAME_STR
#undef SAME

em_err_t em_daemon_reload(em_daemon_t *d, em_error_t *err)
{
    if (d == NULL || d->cfg.path[0] == '\0')
        return em_error_set(err, EM_ERR_INVALID_ARGUMENT, EM_SEV_MEDIUM, NULL,
                            "the daemon has no configuration file to reload");
    em_log_field_t fp[] = {EM_LOG_STR("config", d->cfg.path)};
    em_log(EM_LOG_INFO, MODULE, NULL, "SIGHUP: reloading the configuration", fp, 1);
    em_daemon_config_t *nc = malloc(sizeof(*nc));
    em_daemon_config_t *merged = malloc(sizeof(*merged));
    if (nc == NULL || merged == NULL) {
        free(nc);
        free(merged);
        return em_error_set(err, EM_ERR_NOMEM, EM_SEV_HIGH, NULL, "out of memory");
    }
    em_err_t rc = em_daemon_config_load(nc, d->cfg.path, err);
    if (rc == EM_OK)
        rc = em_daemon_config_check(nc, err);
    if (rc != EM_OK) {
        free(nc);
        free(merged);
        return rc;
    }

    /* merged: the running settings with the reloadable ones from nc. */
    *merged = d->cfg;
    char restart[512];
    restart_only_changes(&d->cfg, nc, restart, sizeof(restart));
    bool listeners_same = strstr(restart, "listeners") == NULL;
    if (listeners_same) {
        for (size_t i = 0; i < nc->nlisteners; i++) {
            memcpy(merged->listeners[i].cert_file, nc->listeners[i].cert_file,
                   sizeof(nc->listeners[i].cert_file));
            memcpy(merged->listeners[i].key_file, nc->listeners[i].key_file,
                   sizeof(nc->listeners[i].key_file));
            memcpy(merged->listeners[i].client_ca_file, nc->listeners[i].client_ca_file,
                   sizeof(nc->listeners[i].client_ca_file));
        }
    }
    merged->max_body = nc->max_body;
    memcpy(merged->rate_per_min, nc->rate_per_min, sizeof(merged->rate_per_min));
    merged->auth_fail_per_min = nc->auth_fail_per_min;

    em_api_options_t ao;
    em_daemon_config_api_options(merged, &ao);
    em__daemon_identity_api_options(d, &ao);
    rc = em_api_reload(d->api, &ao, err);
    if (rc == EM_OK && strcmp(nc->topic_prefix, d->cfg.topic_prefix) != 0)
        rc = em_manager_set_topic_prefix(d->mgr, nc->topic_prefix, err);
    if (rc == EM_OK && strcmp(nc->log_file, d->cfg.log_file) != 0)
        rc = em__daemon_open_log(d, nc->log_file, err);
    else if (rc == EM_OK && nc->log_file[0] != '\0')
        (void)em__daemon_open_log(d, nc->log_file,
                                  NULL); /* reopen: the file may have been rotated */
    if (rc != EM_OK) {
        free(nc);
        free(merged);
        return rc;
    }
    memcpy(merged->topic_prefix, nc->topic_prefix, sizeof(merged->topic_prefix));
    memcpy(merged->log_file, nc->log_file, sizeof(merged->log_file));
    merged->log_level = nc->log_level;
    merged->shutdown_timeout_s = nc->shutdown_timeout_s;
    merged->command_expiry_s = nc->command_expiry_s;
    merged->retention_interval_s = nc->retention_interval_s;
    merged->status_history_days = nc->status_history_days;
    merged->telemetry_days = nc->telemetry_days;
    merged->rollup_hour_days = nc->rollup_hour_days;
    merged->rollup_day_days = nc->rollup_day_days;
    merged->events_days = nc->events_days;
    merged->commands_days = nc->commands_days;
    em_log_set_level(merged->log_level);

    bool prune_changed = d->cfg.retention_interval_s != merged->retention_interval_s;
    d->cfg = *merged;
    if (prune_changed && d->ev_prune != NULL) {
        /* Re-armed now: waiting out the old interval could take an hour. */
        struct timeval tv = {d->cfg.retention_interval_s, 0};
        evtimer_add(d->ev_prune, &tv);
    }
    free(nc);
    free(merged);

    em_log_field_t f[] = {EM_LOG_STR("log_level", em_log_level_name(d->cfg.log_level)),
                          EM_LOG_INT("rate_viewer", d->cfg.rate_per_min[EM_ROLE_VIEWER]),
                          EM_LOG_INT("rate_operator", d->cfg.rate_per_min[EM_ROLE_OPERATOR]),
                          EM_LOG_INT("rate_admin", d->cfg.rate_per_min[EM_ROLE_ADMIN]),
                          EM_LOG_INT("rate_device", d->cfg.rate_per_min[EM_ROLE_DEVICE]),
                          EM_LOG_INT("max_body", (long long)d->cfg.max_body)};
    em_log(EM_LOG_INFO, MODULE, NULL,
           "configuration reloaded: log, API limits and certificates, retention, topic prefix", f,
           6);
    if (restart[0] != '\0') {
        em_log_field_t fr[] = {EM_LOG_STR("unchanged_until_restart", restart)};
        em_log(EM_LOG_WARN, MODULE, NULL,
               "some changed settings apply only after a restart; they are not in force", fr, 1);
    }
    return EM_OK;
}
