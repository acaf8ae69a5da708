/*
 * emiot - config_rules.c: the rules between the keys of emiotd's
 * configuration (daemon.h), applied once the whole file is read.
 *
 * A rule that involves two keys can only be checked when both have been read,
 * in whatever order the file gives them. Each error names the line of the key
 * at fault (em__config_key_line), so that the message points at what to
 * change.
 */
#include <arpa/inet.h>
#include <netinet/in.h>
#include <stdio.h>
#include <string.h>

#include "daemon/config_internal.h"
#include "emiot/daemon.h"

static bool is_loopback(const char *address)
{
    struct in_addr a4;
    struct in6_addr a6;
    if (inet_pton(AF_INET, address, &a4) == 1)
        return (ntohl(a4.s_addr) >> 24) == 127;
    if (inet_pton(AF_INET6, address, &a6) == 1)
        return IN6_IS_ADDR_LOOPBACK(&a6) || (IN6_IS_ADDR_V4MAPPED(&a6) && a6.s6_addr[12] == 127);
    return false;
}

/* The rules of one listener (index i). */
static em_err_t check_listener(em__config_parser_t *p, size_t i)
{
    em_daemon_config_t *cfg = p->cfg;
    em_daemon_listener_t *l = &cfg->listeners[i];
    p->sec = EM__SEC_LISTENER;
    p->lst = l;
    if (l->address[0] == '\0')
        return em__config_fail_at(p, l->line, "address", "is required");
    if (l->port == 0)
        return em__config_fail_at(p, l->line, "port", "is required");
    bool tls = l->cert_file[0] != '\0';
    if (tls != (l->key_file[0] != '\0'))
        return em__config_fail_at(
            p, em__config_listener_key_line(p, i, tls ? "cert_file" : "key_file"),
            tls ? "key_file" : "cert_file", "cert_file and key_file go together");
    if (!tls && !l->metrics_only)
        return em__config_fail_at(p, l->line, "cert_file",
                                  "is required: only a metrics_only listener may be plain HTTP");
    if (!tls && !is_loopback(l->address))
        return em__config_fail_at(p, em__config_listener_key_line(p, i, "address"), "address",
                                  "a plain-HTTP listener must be on a loopback address");
    if (l->client_auth != EM_CLIENT_AUTH_NONE && (!tls || l->client_ca_file[0] == '\0'))
        return em__config_fail_at(p, em__config_listener_key_line(p, i, "client_auth"),
                                  "client_auth", "needs cert_file, key_file and client_ca_file");
    if (l->client_ca_file[0] != '\0' && l->client_auth == EM_CLIENT_AUTH_NONE)
        return em__config_fail_at(p, em__config_listener_key_line(p, i, "client_ca_file"),
                                  "client_ca_file",
                                  "is used only with client_auth = optional or required");
    for (size_t j = 0; j < i; j++) {
        if (cfg->listeners[j].port == l->port && strcmp(cfg->listeners[j].address, l->address) == 0)
            return em__config_fail_at(p, em__config_listener_key_line(p, i, "port"), "port",
                                      "listener '%s' already uses this address and port",
                                      cfg->listeners[j].name);
    }
    return EM_OK;
}

static em_err_t check_listeners(em__config_parser_t *p)
{
    em_daemon_config_t *cfg = p->cfg;
    if (cfg->nlisteners == 0)
        return em__config_fail_at(p, p->line, NULL,
                                  "no [listener NAME] section: the API needs one");
    size_t api_listeners = 0;
    for (size_t i = 0; i < cfg->nlisteners; i++) {
        em_err_t rc = check_listener(p, i);
        if (rc != EM_OK)
            return rc;
        api_listeners += !cfg->listeners[i].metrics_only;
    }
    p->sec = EM__SEC_NONE;
    p->lst = NULL;
    if (api_listeners == 0)
        return em__config_fail_at(p, cfg->listeners[0].line, NULL,
                                  "every listener is metrics_only: the API needs one more");
    return EM_OK;
}

static em_err_t check_mqtt(em__config_parser_t *p)
{
    const em_daemon_config_t *cfg = p->cfg;
    bool pw_env = cfg->mqtt_password_env[0] != '\0';
    bool pw_file = cfg->mqtt_password_file[0] != '\0';
    bool cert = cfg->mqtt_cert_file[0] != '\0';
    p->sec = EM__SEC_MQTT;
    if (pw_env && pw_file)
        return em__config_fail_at(p, em__config_key_line(p, EM__SEC_MQTT, "password_file"),
                                  "password_file",
                                  "password_env and password_file exclude each other");
    if (cert != (cfg->mqtt_key_file[0] != '\0'))
        return em__config_fail_at(
            p, em__config_key_line(p, EM__SEC_MQTT, cert ? "cert_file" : "key_file"),
            cert ? "key_file" : "cert_file", "cert_file and key_file go together");
    if (cfg->mqtt_reconnect_max_s < cfg->mqtt_reconnect_min_s)
        return em__config_fail_at(p, em__config_key_line(p, EM__SEC_MQTT, "reconnect_max"),
                                  "reconnect_max", "must be at least reconnect_min");
    if (strncmp(cfg->mqtt_url, "mqtt://", 7) == 0 && !cfg->mqtt_allow_plain)
        return em__config_fail_at(p, em__config_key_line(p, EM__SEC_MQTT, "url"), "url",
                                  "plain mqtt:// needs allow_plain = true (loopback brokers only)");
    if ((pw_env || pw_file) && cfg->mqtt_username[0] == '\0')
        return em__config_fail_at(
            p, em__config_key_line(p, EM__SEC_MQTT, pw_env ? "password_env" : "password_file"),
            "username", "a password needs a username");
    return EM_OK;
}

static em_err_t check_store_and_daemon(em__config_parser_t *p)
{
    const em_daemon_config_t *cfg = p->cfg;
    p->sec = EM__SEC_STORE;
    int sources = (cfg->store_url[0] != '\0') + (cfg->store_url_env[0] != '\0') +
                  (cfg->store_url_file[0] != '\0');
    if (sources > 1) {
        unsigned l = em__config_key_line(p, EM__SEC_STORE, "url_file");
        if (l == 0)
            l = em__config_key_line(p, EM__SEC_STORE, "url_env");
        return em__config_fail_at(p, l, "url", "url, url_env and url_file exclude each other");
    }
    p->sec = EM__SEC_DAEMON;
    if (p->bootstrap_none && !cfg->bootstrap_key_print)
        return em__config_fail_at(
            p, em__config_key_line(p, EM__SEC_DAEMON, "bootstrap_key_file"), "bootstrap_key_file",
            "none needs bootstrap_key_print = true, or the first key is shown "
            "nowhere");
    p->sec = EM__SEC_NONE;
    return EM_OK;
}

/* The first of names (keys of section sec) that is set: its line, and its name in *which. */
static unsigned first_set(em__config_parser_t *p, em__config_section_t sec,
                          const char *const *names, const char **which)
{
    for (size_t i = 0; names[i] != NULL; i++) {
        unsigned l = em__config_key_line(p, sec, names[i]);
        if (l != 0) {
            *which = names[i];
            return l;
        }
    }
    *which = names[0];
    return p->line;
}

/* [keystore], [pki], [dynsec]. */
static em_err_t check_identity(em__config_parser_t *p)
{
    const em_daemon_config_t *cfg = p->cfg;
    const char *which;
    unsigned l;
    p->sec = EM__SEC_KEYSTORE;
    int sources = (cfg->keystore_passphrase_env[0] != '\0') +
                  (cfg->keystore_passphrase_file[0] != '\0') + (cfg->keystore_key_file[0] != '\0');
    if (sources > 1) {
        static const char *const names[] = {"key_file", "passphrase_file", NULL};
        l = first_set(p, EM__SEC_KEYSTORE, names, &which);
        return em__config_fail_at(
            p, l, which, "passphrase_env, passphrase_file and key_file exclude each other");
    }
    bool pin = cfg->pkcs11_pin_env[0] != '\0' || cfg->pkcs11_pin_file[0] != '\0';
    if (cfg->pkcs11_pin_env[0] != '\0' && cfg->pkcs11_pin_file[0] != '\0')
        return em__config_fail_at(p, em__config_key_line(p, EM__SEC_KEYSTORE, "pkcs11_pin_file"),
                                  "pkcs11_pin_file",
                                  "pkcs11_pin_env and pkcs11_pin_file exclude each other");
    if (pin != (cfg->pkcs11_module[0] != '\0')) {
        static const char *const names[] = {"pkcs11_module", "pkcs11_pin_env", "pkcs11_pin_file",
                                            NULL};
        l = first_set(p, EM__SEC_KEYSTORE, names, &which);
        return em__config_fail_at(p, l, which,
                                  "pkcs11_module needs a PIN (pkcs11_pin_env or pkcs11_pin_file)");
    }

    p->sec = EM__SEC_PKI;
    if (cfg->pki_dir[0] == '\0' && cfg->pki_crl_file[0] != '\0' && cfg->pki_ca_file[0] == '\0')
        return em__config_fail_at(p, em__config_key_line(p, EM__SEC_PKI, "crl_file"), "crl_file",
                                  "needs dir or ca_file (the CA the CRL belongs to)");
    if (cfg->enroll_token_ttl_s > cfg->enroll_token_ttl_max_s)
        return em__config_fail_at(p, em__config_key_line(p, EM__SEC_PKI, "enroll_token_ttl"),
                                  "enroll_token_ttl", "must be at most enroll_token_ttl_max");

    p->sec = EM__SEC_DYNSEC;
    bool url = cfg->dynsec_url[0] != '\0';
    bool pw_env = cfg->dynsec_password_env[0] != '\0';
    bool pw_file = cfg->dynsec_password_file[0] != '\0';
    bool any = pw_env || pw_file || cfg->dynsec_username[0] != '\0' ||
               cfg->dynsec_ca_file[0] != '\0' || cfg->dynsec_cert_file[0] != '\0' ||
               cfg->dynsec_key_file[0] != '\0';
    if (!url && any) {
        static const char *const names[] = {
            "username", "password_env", "password_file", "ca_file", "cert_file", "key_file", NULL};
        l = first_set(p, EM__SEC_DYNSEC, names, &which);
        return em__config_fail_at(p, l, which, "[dynsec] needs url");
    }
    if (url) {
        if (pw_env && pw_file)
            return em__config_fail_at(p, em__config_key_line(p, EM__SEC_DYNSEC, "password_file"),
                                      "password_file",
                                      "password_env and password_file exclude each other");
        if (cfg->dynsec_username[0] == '\0' || !(pw_env || pw_file))
            return em__config_fail_at(p, em__config_key_line(p, EM__SEC_DYNSEC, "url"), "url",
                                      "needs username and password_env or password_file (the "
                                      "plugin's administrator)");
        bool cert = cfg->dynsec_cert_file[0] != '\0';
        if (cert != (cfg->dynsec_key_file[0] != '\0'))
            return em__config_fail_at(
                p, em__config_key_line(p, EM__SEC_DYNSEC, cert ? "cert_file" : "key_file"),
                cert ? "key_file" : "cert_file", "cert_file and key_file go together");
        if (strncmp(cfg->dynsec_url, "mqtt://", 7) == 0 && !cfg->mqtt_allow_plain)
            return em__config_fail_at(
                p, em__config_key_line(p, EM__SEC_DYNSEC, "url"), "url",
                "plain mqtt:// needs [mqtt] allow_plain = true (loopback brokers only)");
    }
    p->sec = EM__SEC_NONE;
    return EM_OK;
}

/* dst = dir + "/" + name, unless dst is set or dir is empty. */
static em_err_t default_in_dir(em__config_parser_t *p, char *dst, size_t size, const char *dir,
                               const char *name, const char *key)
{
    if (dst[0] != '\0' || dir[0] == '\0')
        return EM_OK;
    int n = snprintf(dst, size, "%s/%s", dir, name);
    if (n < 0 || (size_t)n >= size) {
        p->sec = EM__SEC_PKI;
        return em__config_fail_at(p, em__config_key_line(p, EM__SEC_PKI, key), key, "is too long");
    }
    return EM_OK;
}

/* path = data_dir + "/" + name, unless already set. */
static em_err_t default_in_data_dir(em__config_parser_t *p, char *path, size_t size,
                                    const char *name)
{
    if (path[0] != '\0')
        return EM_OK;
    int n = snprintf(path, size, "%s/%s", p->cfg->data_dir, name);
    if (n < 0 || (size_t)n >= size) {
        p->sec = EM__SEC_DAEMON;
        return em__config_fail_at(p, em__config_key_line(p, EM__SEC_DAEMON, "data_dir"), "data_dir",
                                  "is too long");
    }
    return EM_OK;
}

/* Rules between keys, and the defaults that depend on data_dir. */
em_err_t em__config_finish(em__config_parser_t *p)
{
    em_daemon_config_t *cfg = p->cfg;
    p->sec = EM__SEC_NONE;
    p->lst = NULL;
    em_err_t rc = check_listeners(p);
    if (rc == EM_OK)
        rc = check_mqtt(p);
    if (rc == EM_OK)
        rc = check_store_and_daemon(p);
    if (rc == EM_OK && !p->bootstrap_none)
        rc = default_in_data_dir(p, cfg->bootstrap_key_file, sizeof(cfg->bootstrap_key_file),
                                 "bootstrap-admin.key");
    if (rc == EM_OK)
        rc = default_in_data_dir(p, cfg->jwt_key_file, sizeof(cfg->jwt_key_file), "jwt.key");
    if (rc == EM_OK)
        rc = check_identity(p);
    /* No passphrase configured: a key file in the data directory, made at the
     * first start, seals the keys (never a default secret). */
    if (rc == EM_OK && cfg->keystore_passphrase_env[0] == '\0' &&
        cfg->keystore_passphrase_file[0] == '\0')
        rc = default_in_data_dir(p, cfg->keystore_key_file, sizeof(cfg->keystore_key_file),
                                 "keystore.key");
    if (rc == EM_OK)
        rc = default_in_dir(p, cfg->pki_ca_file, sizeof(cfg->pki_ca_file), cfg->pki_dir, "ca.crt",
                            "dir");
    if (rc == EM_OK)
        rc = default_in_dir(p, cfg->pki_crl_file, sizeof(cfg->pki_crl_file), cfg->pki_dir,
                            "crl.pem", "dir");
    return rc;
}
