/*
 * emiot - config.c: emiotd's configuration file (daemon.h), the reader.
 *
 * The parser is table driven: every key is one row naming its section, its
 * kind and where its value goes, so that "unknown key", "set twice" and the
 * range of each value are checked in one place. This file reads the file line
 * by line and sets each key; the rules between keys come after the whole file
 * is read (config_rules.c). Values are never copied into error messages: a
 * mistake in a secret's place (a password pasted where a path belongs) must
 * not end up in a log.
 */
#include <arpa/inet.h>
#include <ctype.h>
#include <errno.h>
#include <fcntl.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/stat.h>
#include <unistd.h>

#include <openssl/crypto.h>

#include "daemon/config_internal.h"
#include "daemon/daemon_internal.h"
#include "emiot/daemon.h"
#include "emiot/pki.h"

/* ---- the key table ----------------------------------------------------- */

static const char *const k_section_names[EM__SEC_COUNT] = {
    "daemon", "mqtt", "store", "retention", "api", "listener", "keystore", "pki", "dynsec"};

typedef enum kind {
    K_PATH,        /* absolute path, at most size - 1 bytes */
    K_TEXT,        /* printable text */
    K_ENVNAME,     /* [A-Za-z_][A-Za-z0-9_]* */
    K_INT,         /* int in [min, max] */
    K_UINT,        /* unsigned in [min, max] */
    K_U32,         /* uint32_t in [min, max] */
    K_U16,         /* uint16_t in [min, max] */
    K_SIZE,        /* size_t in [min, max] */
    K_BOOL,        /* true/false, yes/no, on/off, 1/0 */
    K_LOGLEVEL,    /* trace .. off */
    K_SYNC,        /* full | normal */
    K_CLIENT_AUTH, /* none | optional | required */
    K_ADDRESS,     /* IPv4 or IPv6 literal */
    K_MQTT_URL,    /* mqtt:// or mqtts:// */
    K_STORE_URL,   /* sqlite: or postgres(ql):// without a password */
    K_PREFIX,      /* MQTT topic prefix */
    K_CLIENT_ID,   /* MQTT client id: [A-Za-z0-9_-] */
    K_KEYFILE,     /* a path, or "none" (bootstrap_key_file) */
    K_REFUSED      /* a key that exists only to be refused with a hint */
} kind_t;

typedef struct key_def {
    em__config_section_t sec;
    const char *name;
    kind_t kind;
    size_t off;  /* in em_daemon_config_t, or em_daemon_listener_t for EM__SEC_LISTENER */
    size_t size; /* of the field (strings: the buffer) */
    long long min, max;
    const char *hint; /* K_REFUSED: the reason */
} key_def_t;

#define C(f)  offsetof(em_daemon_config_t, f), sizeof(((em_daemon_config_t *)0)->f)
#define L(f)  offsetof(em_daemon_listener_t, f), sizeof(((em_daemon_listener_t *)0)->f)
#define NOLIM 0, 0, NULL
#define DAY_S 86400LL

static const key_def_t k_keys[] = {
    {EM__SEC_DAEMON, "data_dir", K_PATH, C(data_dir), NOLIM},
    {EM__SEC_DAEMON, "log_level", K_LOGLEVEL, C(log_level), NOLIM},
    {EM__SEC_DAEMON, "log_file", K_PATH, C(log_file), NOLIM},
    {EM__SEC_DAEMON, "bootstrap_key_file", K_KEYFILE, C(bootstrap_key_file), NOLIM},
    {EM__SEC_DAEMON, "bootstrap_key_print", K_BOOL, C(bootstrap_key_print), NOLIM},
    {EM__SEC_DAEMON, "shutdown_timeout", K_INT, C(shutdown_timeout_s), 1, 300, NULL},
    {EM__SEC_DAEMON, "command_expiry_interval", K_INT, C(command_expiry_s), 1, 3600, NULL},
    {EM__SEC_DAEMON, "retention_interval", K_INT, C(retention_interval_s), 60, 86400, NULL},

    {EM__SEC_MQTT, "url", K_MQTT_URL, C(mqtt_url), NOLIM},
    {EM__SEC_MQTT, "ca_file", K_PATH, C(mqtt_ca_file), NOLIM},
    {EM__SEC_MQTT, "ca_path", K_PATH, C(mqtt_ca_path), NOLIM},
    {EM__SEC_MQTT, "cert_file", K_PATH, C(mqtt_cert_file), NOLIM},
    {EM__SEC_MQTT, "key_file", K_PATH, C(mqtt_key_file), NOLIM},
    {EM__SEC_MQTT, "username", K_TEXT, C(mqtt_username), NOLIM},
    {EM__SEC_MQTT, "password_env", K_ENVNAME, C(mqtt_password_env), NOLIM},
    {EM__SEC_MQTT, "password_file", K_PATH, C(mqtt_password_file), NOLIM},
    {EM__SEC_MQTT, "password", K_REFUSED, 0, 0, 0, 0,
     "a password is never written in the configuration: use password_env or password_file"},
    {EM__SEC_MQTT, "client_id", K_CLIENT_ID, C(mqtt_client_id), NOLIM},
    {EM__SEC_MQTT, "allow_plain", K_BOOL, C(mqtt_allow_plain), NOLIM},
    {EM__SEC_MQTT, "keepalive", K_INT, C(mqtt_keepalive_s), 5, 3600, NULL},
    {EM__SEC_MQTT, "reconnect_min", K_INT, C(mqtt_reconnect_min_s), 1, 3600, NULL},
    {EM__SEC_MQTT, "reconnect_max", K_INT, C(mqtt_reconnect_max_s), 1, 3600, NULL},
    {EM__SEC_MQTT, "protocol", K_INT, C(mqtt_protocol), 4, 5, NULL},
    {EM__SEC_MQTT, "topic_prefix", K_PREFIX, C(topic_prefix), NOLIM},
    {EM__SEC_MQTT, "status_interval", K_INT, C(status_interval_s), 1, 86400, NULL},
    {EM__SEC_MQTT, "offline_check", K_INT, C(offline_check_s), 1, 3600, NULL},
    {EM__SEC_MQTT, "command_rate_count", K_UINT, C(command_rate_count), 1, 100000, NULL},
    {EM__SEC_MQTT, "command_rate_window", K_INT, C(command_rate_window_s), 1, 86400, NULL},
    {EM__SEC_MQTT, "command_qos", K_INT, C(command_qos), 0, 2, NULL},
    {EM__SEC_MQTT, "max_devices", K_SIZE, C(max_devices), 0, 100000000, NULL},

    {EM__SEC_STORE, "url", K_STORE_URL, C(store_url), NOLIM},
    {EM__SEC_STORE, "url_env", K_ENVNAME, C(store_url_env), NOLIM},
    {EM__SEC_STORE, "url_file", K_PATH, C(store_url_file), NOLIM},
    {EM__SEC_STORE, "sync", K_SYNC, C(store.sync), NOLIM},
    {EM__SEC_STORE, "batch_max", K_UINT, C(store.batch_max), 1, 100000, NULL},
    {EM__SEC_STORE, "batch_interval_ms", K_UINT, C(store.batch_interval_ms), 1, 10000, NULL},
    {EM__SEC_STORE, "queue_max", K_SIZE, C(store.queue_max), 1, 10000000, NULL},
    {EM__SEC_STORE, "busy_timeout_ms", K_INT, C(store.busy_timeout_ms), 1, 600000, NULL},

    {EM__SEC_RETENTION, "status_history_days", K_INT, C(status_history_days), 0, 36500, NULL},
    {EM__SEC_RETENTION, "telemetry_days", K_INT, C(telemetry_days), 0, 36500, NULL},
    {EM__SEC_RETENTION, "rollup_hour_days", K_INT, C(rollup_hour_days), 0, 36500, NULL},
    {EM__SEC_RETENTION, "rollup_day_days", K_INT, C(rollup_day_days), 0, 36500, NULL},
    {EM__SEC_RETENTION, "events_days", K_INT, C(events_days), 0, 36500, NULL},
    {EM__SEC_RETENTION, "commands_days", K_INT, C(commands_days), 0, 36500, NULL},

    {EM__SEC_API, "max_body", K_SIZE, C(max_body), 1024, (long long)EM_API_BODY_MAX, NULL},
    {EM__SEC_API, "request_timeout", K_INT, C(request_timeout_s), 1, 3600, NULL},
    {EM__SEC_API, "command_ttl", K_INT, C(command_ttl_s), 10, 86400, NULL},
    {EM__SEC_API, "jwt_key_file", K_PATH, C(jwt_key_file), NOLIM},
    {EM__SEC_API, "jwt_issuer", K_TEXT, C(jwt_issuer), NOLIM},
    {EM__SEC_API, "jwt_audience", K_TEXT, C(jwt_audience), NOLIM},
    {EM__SEC_API, "jwt_ttl", K_INT, C(jwt_ttl_s), 60, 86400, NULL},
    {EM__SEC_API, "rate_viewer", K_U32, C(rate_per_min[EM_ROLE_VIEWER]), 1, 1000000, NULL},
    {EM__SEC_API, "rate_operator", K_U32, C(rate_per_min[EM_ROLE_OPERATOR]), 1, 1000000, NULL},
    {EM__SEC_API, "rate_admin", K_U32, C(rate_per_min[EM_ROLE_ADMIN]), 1, 1000000, NULL},
    {EM__SEC_API, "rate_device", K_U32, C(rate_per_min[EM_ROLE_DEVICE]), 1, 1000000, NULL},
    {EM__SEC_API, "auth_fail_per_min", K_U32, C(auth_fail_per_min), 1, 100000, NULL},

    {EM__SEC_KEYSTORE, "passphrase_env", K_ENVNAME, C(keystore_passphrase_env), NOLIM},
    {EM__SEC_KEYSTORE, "passphrase_file", K_PATH, C(keystore_passphrase_file), NOLIM},
    {EM__SEC_KEYSTORE, "key_file", K_PATH, C(keystore_key_file), NOLIM},
    {EM__SEC_KEYSTORE, "passphrase", K_REFUSED, 0, 0, 0, 0,
     "a passphrase is never written in the configuration: use passphrase_env or passphrase_file"},
    {EM__SEC_KEYSTORE, "pkcs11_module", K_PATH, C(pkcs11_module), NOLIM},
    {EM__SEC_KEYSTORE, "pkcs11_pin_env", K_ENVNAME, C(pkcs11_pin_env), NOLIM},
    {EM__SEC_KEYSTORE, "pkcs11_pin_file", K_PATH, C(pkcs11_pin_file), NOLIM},
    {EM__SEC_KEYSTORE, "pkcs11_pin", K_REFUSED, 0, 0, 0, 0,
     "a PIN is never written in the configuration: use pkcs11_pin_env or pkcs11_pin_file"},

    {EM__SEC_PKI, "dir", K_PATH, C(pki_dir), NOLIM},
    {EM__SEC_PKI, "ca_file", K_PATH, C(pki_ca_file), NOLIM},
    {EM__SEC_PKI, "crl_file", K_PATH, C(pki_crl_file), NOLIM},
    {EM__SEC_PKI, "device_cert_days", K_INT, C(device_cert_days), 1, (long long)EM_PKI_DAYS_MAX,
     NULL},
    {EM__SEC_PKI, "enroll_token_ttl", K_INT, C(enroll_token_ttl_s), 1, 31 * DAY_S, NULL},
    {EM__SEC_PKI, "enroll_token_ttl_max", K_INT, C(enroll_token_ttl_max_s), 1, 365 * DAY_S, NULL},
    {EM__SEC_PKI, "device_token_ttl", K_INT, C(device_token_ttl_s), 60, 7 * DAY_S, NULL},
    {EM__SEC_PKI, "nonce_ttl", K_INT, C(nonce_ttl_s), 1, 300, NULL},
    {EM__SEC_PKI, "nonces_max", K_SIZE, C(nonces_max), 1, 1000000, NULL},

    {EM__SEC_DYNSEC, "url", K_MQTT_URL, C(dynsec_url), NOLIM},
    {EM__SEC_DYNSEC, "ca_file", K_PATH, C(dynsec_ca_file), NOLIM},
    {EM__SEC_DYNSEC, "cert_file", K_PATH, C(dynsec_cert_file), NOLIM},
    {EM__SEC_DYNSEC, "key_file", K_PATH, C(dynsec_key_file), NOLIM},
    {EM__SEC_DYNSEC, "username", K_TEXT, C(dynsec_username), NOLIM},
    {EM__SEC_DYNSEC, "password_env", K_ENVNAME, C(dynsec_password_env), NOLIM},
    {EM__SEC_DYNSEC, "password_file", K_PATH, C(dynsec_password_file), NOLIM},
    {EM__SEC_DYNSEC, "password", K_REFUSED, 0, 0, 0, 0,
     "a password is never written in the configuration: use password_env or password_file"},

    {EM__SEC_LISTENER, "address", K_ADDRESS, L(address), NOLIM},
    {EM__SEC_LISTENER, "port", K_U16, L(port), 1, 65535, NULL},
    {EM__SEC_LISTENER, "cert_file", K_PATH, L(cert_file), NOLIM},
    {EM__SEC_LISTENER, "key_file", K_PATH, L(key_file), NOLIM},
    {EM__SEC_LISTENER, "client_ca_file", K_PATH, L(client_ca_file), NOLIM},
    {EM__SEC_LISTENER, "client_auth", K_CLIENT_AUTH, L(client_auth), NOLIM},
    {EM__SEC_LISTENER, "metrics_only", K_BOOL, L(metrics_only), NOLIM},
};

#undef C
#undef L
#undef NOLIM
#undef DAY_S

#define NKEYS (sizeof(k_keys) / sizeof(k_keys[0]))

/* The parser's per-key arrays are sized by the header's count. */
_Static_assert(NKEYS == EM__CONFIG_NKEYS, "EM__CONFIG_NKEYS must be the number of rows of k_keys");

/* ---- parsing ----------------------------------------------------------- */

/* Fills err with "NAME:LINE: [section] key: rule". section/key may be NULL. */
em_err_t em__config_fail_at(em__config_parser_t *p, unsigned line, const char *key, const char *fmt,
                            ...)
{
    char rule[EM_ERROR_MESSAGE_MAX + 1];
    va_list ap;
    va_start(ap, fmt);
    (void)vsnprintf(rule, sizeof(rule), fmt, ap);
    va_end(ap);
    char where[EM_DAEMON_NAME_MAX + 32] = "";
    /* The section only names where a key is; a line-level error stands alone. */
    if (key == NULL)
        where[0] = '\0';
    else if (p->sec == EM__SEC_LISTENER && p->lst != NULL)
        snprintf(where, sizeof(where), "[listener %s] ", p->lst->name);
    else if (p->sec != EM__SEC_NONE)
        snprintf(where, sizeof(where), "[%s] ", k_section_names[p->sec]);
    return em_error_set(p->err, EM_ERR_CONFIGURATION, EM_SEV_HIGH, key, "%s:%u: %s%s%s%s", p->name,
                        line, where, key != NULL ? key : "", key != NULL ? ": " : "", rule);
}

bool em__config_is_space(char c)
{
    return c == ' ' || c == '\t' || c == '\r';
}

static bool is_printable_text(const char *s, size_t len)
{
    for (size_t i = 0; i < len; i++) {
        unsigned char c = (unsigned char)s[i];
        if (c < 0x20 || c == 0x7f)
            return false;
    }
    return true;
}

/* Copies v (vlen bytes) into dst of size bytes; false when it does not fit. */
static bool put_str(char *dst, size_t size, const char *v, size_t vlen)
{
    if (vlen >= size)
        return false;
    memcpy(dst, v, vlen);
    dst[vlen] = '\0';
    return true;
}

/* Parses a decimal integer (optional '-') with no other characters. */
static bool parse_ll(const char *v, size_t vlen, long long *out)
{
    if (vlen == 0 || vlen > 20)
        return false;
    char buf[24];
    memcpy(buf, v, vlen);
    buf[vlen] = '\0';
    size_t i = buf[0] == '-' ? 1 : 0;
    if (buf[i] == '\0')
        return false;
    for (; buf[i] != '\0'; i++) {
        if (!isdigit((unsigned char)buf[i]))
            return false;
    }
    errno = 0;
    char *end = NULL;
    long long x = strtoll(buf, &end, 10);
    if (errno != 0 || end == NULL || *end != '\0')
        return false;
    *out = x;
    return true;
}

bool em__config_word_is(const char *v, size_t vlen, const char *w)
{
    return strlen(w) == vlen && strncasecmp(v, w, vlen) == 0;
}

static bool parse_bool(const char *v, size_t vlen, bool *out)
{
    static const char *const yes[] = {"true", "yes", "on", "1"};
    static const char *const no[] = {"false", "no", "off", "0"};
    for (size_t i = 0; i < 4; i++) {
        if (em__config_word_is(v, vlen, yes[i])) {
            *out = true;
            return true;
        }
        if (em__config_word_is(v, vlen, no[i])) {
            *out = false;
            return true;
        }
    }
    return false;
}

static bool valid_envname(const char *v, size_t vlen)
{
    if (vlen == 0 || isdigit((unsigned char)v[0]))
        return false;
    for (size_t i = 0; i < vlen; i++) {
        if (!isalnum((unsigned char)v[i]) && v[i] != '_')
            return false;
    }
    return true;
}

static bool valid_name_chars(const char *v, size_t vlen, const char *extra)
{
    if (vlen == 0)
        return false;
    for (size_t i = 0; i < vlen; i++) {
        if (!isalnum((unsigned char)v[i]) && strchr(extra, v[i]) == NULL)
            return false;
    }
    return true;
}

/* Strings: paths, text, names, URLs. */
static em_err_t set_string(em__config_parser_t *p, const key_def_t *k, char *field, const char *v,
                           size_t vlen)
{
    switch (k->kind) {
    case K_KEYFILE:
        if (em__config_word_is(v, vlen, "none")) {
            field[0] = '\0';
            p->bootstrap_none = true;
            return EM_OK;
        }
        __attribute__((fallthrough));
    case K_PATH:
        if (vlen == 0 || v[0] != '/')
            return em__config_fail_at(p, p->line, k->name, "must be an absolute path");
        if (!is_printable_text(v, vlen))
            return em__config_fail_at(p, p->line, k->name, "must not contain control characters");
        break;
    case K_TEXT:
        if (vlen == 0 || !is_printable_text(v, vlen))
            return em__config_fail_at(p, p->line, k->name, "must be non-empty printable text");
        break;
    case K_ENVNAME:
        if (!valid_envname(v, vlen) || vlen >= k->size)
            return em__config_fail_at(
                p, p->line, k->name,
                "must be an environment variable name (letters, digits, '_'; at "
                "most %zu)",
                k->size - 1);
        break;
    case K_CLIENT_ID:
        if (!valid_name_chars(v, vlen, "_-") || vlen >= k->size)
            return em__config_fail_at(p, p->line, k->name, "must be 1-%zu of [A-Za-z0-9_-]",
                                      k->size - 1);
        break;
    default:
        return em__config_fail_at(p, p->line, k->name, "internal error: not a string");
    }
    if (!put_str(field, k->size, v, vlen))
        return em__config_fail_at(p, p->line, k->name, "must be at most %zu bytes", k->size - 1);
    return EM_OK;
}

/* Integers of every width, range checked. */
static em_err_t set_number(em__config_parser_t *p, const key_def_t *k, char *field, const char *v,
                           size_t vlen)
{
    long long x = 0;
    if (!parse_ll(v, vlen, &x) || x < k->min || x > k->max)
        return em__config_fail_at(p, p->line, k->name, "must be an integer from %lld to %lld",
                                  k->min, k->max);
    if (k->kind == K_INT)
        *(int *)(void *)field = (int)x;
    else if (k->kind == K_UINT)
        *(unsigned *)(void *)field = (unsigned)x;
    else if (k->kind == K_U32)
        *(uint32_t *)(void *)field = (uint32_t)x;
    else if (k->kind == K_U16)
        *(uint16_t *)(void *)field = (uint16_t)x;
    else
        *(size_t *)(void *)field = (size_t)x;
    return EM_OK;
}

/* Words from a fixed list: booleans, levels, modes. */
static em_err_t set_word(em__config_parser_t *p, const key_def_t *k, char *field, const char *v,
                         size_t vlen)
{
    bool b = false;
    char w[16];
    int lv = -1;
    switch (k->kind) {
    case K_BOOL:
        if (!parse_bool(v, vlen, &b))
            return em__config_fail_at(p, p->line, k->name, "must be true or false");
        *(bool *)(void *)field = b;
        return EM_OK;
    case K_LOGLEVEL:
        if (put_str(w, sizeof(w), v, vlen))
            lv = em_log_level_parse(w);
        if (lv < 0)
            return em__config_fail_at(p, p->line, k->name,
                                      "must be trace, debug, info, warn, error, fatal or off");
        *(em_log_level_t *)(void *)field = (em_log_level_t)lv;
        return EM_OK;
    case K_SYNC:
        if (!em__config_word_is(v, vlen, "full") && !em__config_word_is(v, vlen, "normal"))
            return em__config_fail_at(p, p->line, k->name, "must be full or normal");
        *(em_store_sync_t *)(void *)field =
            em__config_word_is(v, vlen, "full") ? EM_STORE_SYNC_FULL : EM_STORE_SYNC_NORMAL;
        return EM_OK;
    case K_CLIENT_AUTH: {
        static const char *const modes[] = {"none", "optional", "required"};
        static const em_client_auth_t values[] = {EM_CLIENT_AUTH_NONE, EM_CLIENT_AUTH_OPTIONAL,
                                                  EM_CLIENT_AUTH_REQUIRED};
        for (size_t i = 0; i < 3; i++) {
            if (em__config_word_is(v, vlen, modes[i])) {
                *(em_client_auth_t *)(void *)field = values[i];
                return EM_OK;
            }
        }
        return em__config_fail_at(p, p->line, k->name, "must be none, optional or required");
    }
    default:
        return em__config_fail_at(p, p->line, k->name, "internal error: not a word");
    }
}

static bool has_prefix(const char *v, size_t vlen, const char *prefix)
{
    size_t n = strlen(prefix);
    return vlen > n && strncmp(v, prefix, n) == 0;
}

/* Addresses, URLs, the topic prefix: checked for what they are. */
static em_err_t set_special(em__config_parser_t *p, const key_def_t *k, char *field, const char *v,
                            size_t vlen)
{
    char w[EM_DAEMON_ADDRESS_MAX + EM_TOPIC_PREFIX_MAX + 2];
    unsigned char bin[16];
    em_error_t e;
    switch (k->kind) {
    case K_ADDRESS:
        if (!put_str(w, EM_DAEMON_ADDRESS_MAX + 1, v, vlen) ||
            (inet_pton(AF_INET, w, bin) != 1 && inet_pton(AF_INET6, w, bin) != 1))
            return em__config_fail_at(
                p, p->line, k->name,
                "must be an IPv4 or IPv6 address (127.0.0.1, 0.0.0.0, ::1, ::)");
        break;
    case K_MQTT_URL:
        if (!(has_prefix(v, vlen, "mqtt://") || has_prefix(v, vlen, "mqtts://")) ||
            !is_printable_text(v, vlen) || memchr(v, ' ', vlen) != NULL)
            return em__config_fail_at(p, p->line, k->name,
                                      "must be mqtts://HOST[:PORT] or mqtt://HOST[:PORT]");
        if (memchr(v, '@', vlen) != NULL)
            return em__config_fail_at(p, p->line, k->name,
                                      "must not hold credentials: use username and password_env or "
                                      "password_file");
        break;
    case K_STORE_URL:
        if (!is_printable_text(v, vlen) ||
            !(has_prefix(v, vlen, "sqlite:") || has_prefix(v, vlen, "postgresql://") ||
              has_prefix(v, vlen, "postgres://")))
            return em__config_fail_at(p, p->line, k->name,
                                      "must be sqlite:PATH or postgresql://...");
        if (em__daemon_url_has_password(v, vlen))
            return em__config_fail_at(
                p, p->line, k->name,
                "must not hold a password: put the URL in url_env or url_file");
        break;
    case K_PREFIX:
        if (!put_str(w, EM_TOPIC_PREFIX_MAX + 1, v, vlen) ||
            em_topic_prefix_validate(w, &e) != EM_OK)
            return em__config_fail_at(
                p, p->line, k->name,
                "must be a valid MQTT topic prefix (at most %d bytes, no '+' or '#')",
                EM_TOPIC_PREFIX_MAX);
        break;
    default:
        return em__config_fail_at(p, p->line, k->name, "internal error: not special");
    }
    if (!put_str(field, k->size, v, vlen))
        return em__config_fail_at(p, p->line, k->name, "must be at most %zu bytes", k->size - 1);
    return EM_OK;
}

/* Sets one key's value. */
static em_err_t set_value(em__config_parser_t *p, const key_def_t *k, const char *v, size_t vlen)
{
    void *base = k->sec == EM__SEC_LISTENER ? (void *)p->lst : (void *)p->cfg;
    char *field = (char *)base + k->off;
    switch (k->kind) {
    case K_REFUSED:
        return em__config_fail_at(p, p->line, k->name, "%s", k->hint);
    case K_KEYFILE:
    case K_PATH:
    case K_TEXT:
    case K_ENVNAME:
    case K_CLIENT_ID:
        return set_string(p, k, field, v, vlen);
    case K_INT:
    case K_UINT:
    case K_U32:
    case K_U16:
    case K_SIZE:
        return set_number(p, k, field, v, vlen);
    case K_BOOL:
    case K_LOGLEVEL:
    case K_SYNC:
    case K_CLIENT_AUTH:
        return set_word(p, k, field, v, vlen);
    case K_ADDRESS:
    case K_MQTT_URL:
    case K_STORE_URL:
    case K_PREFIX:
        return set_special(p, k, field, v, vlen);
    }
    return em__config_fail_at(p, p->line, k->name, "internal error: unknown kind");
}

static em_err_t section_header(em__config_parser_t *p, const char *s, size_t len)
{
    /* s is the text between '[' and ']', not trimmed yet. */
    while (len > 0 && em__config_is_space(s[0])) {
        s++;
        len--;
    }
    while (len > 0 && em__config_is_space(s[len - 1]))
        len--;
    p->lst = NULL;
    for (int i = 0; i < EM__SEC_COUNT; i++) {
        if (i != EM__SEC_LISTENER && em__config_word_is(s, len, k_section_names[i])) {
            p->sec = (em__config_section_t)i;
            return EM_OK;
        }
    }
    if (len >= 8 && strncmp(s, "listener", 8) == 0 && (len == 8 || em__config_is_space(s[8]))) {
        const char *n = s + 8;
        size_t nlen = len - 8;
        while (nlen > 0 && em__config_is_space(n[0])) {
            n++;
            nlen--;
        }
        p->sec = EM__SEC_NONE;
        if (nlen == 0 || nlen > EM_DAEMON_NAME_MAX || !valid_name_chars(n, nlen, "_.-"))
            return em__config_fail_at(p, p->line, NULL,
                                      "[listener NAME] needs a NAME of 1-%d of [A-Za-z0-9_.-]",
                                      EM_DAEMON_NAME_MAX);
        em_daemon_config_t *cfg = p->cfg;
        for (size_t i = 0; i < cfg->nlisteners; i++) {
            if (strlen(cfg->listeners[i].name) == nlen &&
                memcmp(n, cfg->listeners[i].name, nlen) == 0)
                return em__config_fail_at(p, p->line, NULL,
                                          "listener '%s' is already defined on line %u",
                                          cfg->listeners[i].name, cfg->listeners[i].line);
        }
        if (cfg->nlisteners >= EM_API_LISTENERS_MAX)
            return em__config_fail_at(p, p->line, NULL, "at most %d listeners",
                                      EM_API_LISTENERS_MAX);
        em_daemon_listener_t *l = &cfg->listeners[cfg->nlisteners++];
        memset(l, 0, sizeof(*l));
        put_str(l->name, sizeof(l->name), n, nlen);
        l->line = p->line;
        l->client_auth = EM_CLIENT_AUTH_NONE;
        p->lst = l;
        p->sec = EM__SEC_LISTENER;
        return EM_OK;
    }
    p->sec = EM__SEC_NONE;
    return em__config_fail_at(
        p, p->line, NULL, "unknown section (daemon, mqtt, store, retention, api, listener NAME)");
}

static em_err_t key_line(em__config_parser_t *p, const char *s, size_t len)
{
    const char *eq = memchr(s, '=', len);
    if (eq == NULL)
        return em__config_fail_at(p, p->line, NULL,
                                  "expected 'key = value', a [section] or a # comment");
    size_t klen = (size_t)(eq - s);
    while (klen > 0 && em__config_is_space(s[klen - 1]))
        klen--;
    const char *v = eq + 1;
    size_t vlen = len - (size_t)(v - s);
    while (vlen > 0 && em__config_is_space(v[0])) {
        v++;
        vlen--;
    }
    while (vlen > 0 && em__config_is_space(v[vlen - 1]))
        vlen--;
    if (vlen >= 2 && v[0] == '"' && v[vlen - 1] == '"') {
        v++;
        vlen -= 2;
    }
    char key[EM_DAEMON_NAME_MAX + 1];
    if (klen == 0 || !put_str(key, sizeof(key), s, klen) || !valid_name_chars(key, klen, "_"))
        return em__config_fail_at(p, p->line, NULL, "expected a key name of [a-z0-9_] before '='");
    if (p->sec == EM__SEC_NONE)
        return em__config_fail_at(p, p->line, key, "a key before any [section]");
    for (size_t i = 0; i < NKEYS; i++) {
        const key_def_t *k = &k_keys[i];
        if (k->sec != p->sec || strcmp(k->name, key) != 0)
            continue;
        unsigned *set = p->sec == EM__SEC_LISTENER ? &p->lst_set[p->lst - p->cfg->listeners][i]
                                                   : &p->set_line[i];
        if (*set != 0)
            return em__config_fail_at(p, p->line, key, "set twice (first on line %u)", *set);
        *set = p->line;
        return set_value(p, k, v, vlen);
    }
    return em__config_fail_at(p, p->line, key, "unknown key");
}

static int key_index(em__config_section_t sec, const char *name)
{
    for (size_t i = 0; i < NKEYS; i++) {
        if (k_keys[i].sec == sec && strcmp(k_keys[i].name, name) == 0)
            return (int)i;
    }
    return -1;
}

/* The line that set a global key (0 when unset). */
unsigned em__config_key_line(const em__config_parser_t *p, em__config_section_t sec,
                             const char *name)
{
    int i = key_index(sec, name);
    return i < 0 ? 0 : p->set_line[i];
}

unsigned em__config_listener_key_line(const em__config_parser_t *p, size_t li, const char *name)
{
    int i = key_index(EM__SEC_LISTENER, name);
    return i < 0 ? 0 : p->lst_set[li][i];
}

static const char *base_name(const char *path)
{
    const char *slash = strrchr(path, '/');
    return slash != NULL && slash[1] != '\0' ? slash + 1 : path;
}

em_err_t em_daemon_config_parse(em_daemon_config_t *cfg, const char *text, size_t len,
                                const char *name, em_error_t *err)
{
    if (cfg == NULL || (text == NULL && len > 0))
        return em_error_set(err, EM_ERR_INVALID_ARGUMENT, EM_SEV_MEDIUM, NULL,
                            "configuration and text are required");
    em__config_parser_t *p = calloc(1, sizeof(*p));
    if (p == NULL)
        return em_error_set(err, EM_ERR_NOMEM, EM_SEV_HIGH, NULL, "out of memory");
    p->cfg = cfg;
    p->name = base_name(name != NULL && name[0] != '\0' ? name : "config");
    p->sec = EM__SEC_NONE;
    p->err = err;
    em_err_t rc = EM_OK;
    if (len > EM_DAEMON_CONFIG_SIZE_MAX)
        rc = em__config_fail_at(p, 0, NULL, "the file is larger than %zu bytes",
                                EM_DAEMON_CONFIG_SIZE_MAX);

    size_t pos = 0;
    if (rc == EM_OK && len >= 3 && memcmp(text, "\xEF\xBB\xBF", 3) == 0)
        pos = 3; /* a UTF-8 byte order mark, as some editors write */
    while (rc == EM_OK && pos < len) {
        p->line++;
        const char *s = text + pos;
        const char *nl = memchr(s, '\n', len - pos);
        size_t llen = nl != NULL ? (size_t)(nl - s) : len - pos;
        pos += llen + (nl != NULL ? 1 : 0);
        if (llen > EM_DAEMON_LINE_MAX) {
            rc = em__config_fail_at(p, p->line, NULL, "line longer than %d bytes",
                                    EM_DAEMON_LINE_MAX);
            break;
        }
        if (memchr(s, '\0', llen) != NULL) {
            rc = em__config_fail_at(p, p->line, NULL, "NUL byte");
            break;
        }
        while (llen > 0 && em__config_is_space(s[0])) {
            s++;
            llen--;
        }
        while (llen > 0 && em__config_is_space(s[llen - 1]))
            llen--;
        if (llen == 0 || s[0] == '#' || s[0] == ';')
            continue;
        if (s[0] == '[') {
            if (s[llen - 1] != ']') {
                rc = em__config_fail_at(p, p->line, NULL, "a section header ends with ']'");
                break;
            }
            rc = section_header(p, s + 1, llen - 2);
        } else {
            rc = key_line(p, s, llen);
        }
    }
    if (rc == EM_OK)
        rc = em__config_finish(p);
    free(p);
    return rc;
}

/* Reads a whole regular file of at most max bytes into a new buffer
 * (NUL-terminated). Returns 0, or -1 with errno (EFBIG when too large). */
int em__daemon_read_file(const char *path, size_t max, char **out, size_t *out_len)
{
    int fd = open(path, O_RDONLY | O_CLOEXEC | O_NOCTTY);
    if (fd < 0)
        return -1;
    struct stat st;
    if (fstat(fd, &st) != 0) {
        int e = errno;
        close(fd);
        errno = e;
        return -1;
    }
    if (!S_ISREG(st.st_mode)) {
        close(fd);
        errno = EINVAL;
        return -1;
    }
    if ((uint64_t)st.st_size > max) {
        close(fd);
        errno = EFBIG;
        return -1;
    }
    char *buf = malloc(max + 1);
    if (buf == NULL) {
        close(fd);
        errno = ENOMEM;
        return -1;
    }
    size_t n = 0;
    for (;;) {
        ssize_t r = read(fd, buf + n, max + 1 - n);
        if (r < 0 && errno == EINTR)
            continue;
        if (r < 0) {
            int e = errno;
            OPENSSL_cleanse(buf, n);
            free(buf);
            close(fd);
            errno = e;
            return -1;
        }
        if (r == 0)
            break;
        n += (size_t)r;
        if (n > max) { /* grew while being read */
            OPENSSL_cleanse(buf, n);
            free(buf);
            close(fd);
            errno = EFBIG;
            return -1;
        }
    }
    close(fd);
    buf[n] = '\0';
    *out = buf;
    *out_len = n;
    return 0;
}

em_err_t em_daemon_config_load(em_daemon_config_t *cfg, const char *path, em_error_t *err)
{
    if (cfg == NULL || path == NULL || path[0] == '\0')
        return em_error_set(err, EM_ERR_INVALID_ARGUMENT, EM_SEV_MEDIUM, NULL,
                            "a configuration and a path are required");
    em_daemon_config_init(cfg);
    char *text = NULL;
    size_t len = 0;
    if (em__daemon_read_file(path, EM_DAEMON_CONFIG_SIZE_MAX, &text, &len) != 0) {
        if (errno == EFBIG)
            return em_error_set(err, EM_ERR_CONFIGURATION, EM_SEV_HIGH, NULL,
                                "%s: larger than %zu bytes", path, EM_DAEMON_CONFIG_SIZE_MAX);
        return em_error_set(err, EM_ERR_CONFIGURATION, EM_SEV_HIGH, NULL, "%s: cannot read: %s",
                            path, strerror(errno));
    }
    em_err_t rc = em_daemon_config_parse(cfg, text, len, path, err);
    free(text);
    /* Absolute, so that a reload finds the same file whatever the working
     * directory has become. */
    char *abs = realpath(path, NULL);
    const char *keep = abs != NULL ? abs : path;
    if (rc == EM_OK && !put_str(cfg->path, sizeof(cfg->path), keep, strlen(keep)))
        rc = em_error_set(err, EM_ERR_CONFIGURATION, EM_SEV_HIGH, NULL,
                          "configuration path too long");
    free(abs);
    return rc;
}
