/*
 * emiot - config.c: emiotd's configuration file (daemon.h).
 *
 * The parser is table driven: every key is one row naming its section, its
 * kind and where its value goes, so that "unknown key", "set twice" and the
 * range of each value are checked in one place. Values are never copied into
 * error messages: a mistake in a secret's place (a password pasted where a
 * path belongs) must not end up in a log.
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
#include <openssl/err.h>
#include <openssl/evp.h>
#include <openssl/pem.h>
#include <openssl/ssl.h>

#include "daemon/daemon_internal.h"
#include "emiot/daemon.h"

/* ---- the key table ----------------------------------------------------- */

typedef enum section {
    SEC_NONE = -1,
    SEC_DAEMON = 0,
    SEC_MQTT,
    SEC_STORE,
    SEC_RETENTION,
    SEC_API,
    SEC_LISTENER,
    SEC_COUNT
} section_t;

static const char *const k_section_names[SEC_COUNT] = {"daemon",    "mqtt", "store",
                                                       "retention", "api",  "listener"};

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
    section_t sec;
    const char *name;
    kind_t kind;
    size_t off;  /* in em_daemon_config_t, or em_daemon_listener_t for SEC_LISTENER */
    size_t size; /* of the field (strings: the buffer) */
    long long min, max;
    const char *hint; /* K_REFUSED: the reason */
} key_def_t;

#define C(f)  offsetof(em_daemon_config_t, f), sizeof(((em_daemon_config_t *)0)->f)
#define L(f)  offsetof(em_daemon_listener_t, f), sizeof(((em_daemon_listener_t *)0)->f)
#define NOLIM 0, 0, NULL

static const key_def_t k_keys[] = {
    {SEC_DAEMON, "data_dir", K_PATH, C(data_dir), NOLIM},
    {SEC_DAEMON, "log_level", K_LOGLEVEL, C(log_level), NOLIM},
    {SEC_DAEMON, "log_file", K_PATH, C(log_file), NOLIM},
    {SEC_DAEMON, "bootstrap_key_file", K_KEYFILE, C(bootstrap_key_file), NOLIM},
    {SEC_DAEMON, "bootstrap_key_print", K_BOOL, C(bootstrap_key_print), NOLIM},
    {SEC_DAEMON, "shutdown_timeout", K_INT, C(shutdown_timeout_s), 1, 300, NULL},
    {SEC_DAEMON, "command_expiry_interval", K_INT, C(command_expiry_s), 1, 3600, NULL},
    {SEC_DAEMON, "retention_interval", K_INT, C(retention_interval_s), 60, 86400, NULL},

    {SEC_MQTT, "url", K_MQTT_URL, C(mqtt_url), NOLIM},
    {SEC_MQTT, "ca_file", K_PATH, C(mqtt_ca_file), NOLIM},
    {SEC_MQTT, "ca_path", K_PATH, C(mqtt_ca_path), NOLIM},
    {SEC_MQTT, "cert_file", K_PATH, C(mqtt_cert_file), NOLIM},
    {SEC_MQTT, "key_file", K_PATH, C(mqtt_key_file), NOLIM},
    {SEC_MQTT, "username", K_TEXT, C(mqtt_username), NOLIM},
    {SEC_MQTT, "password_env", K_ENVNAME, C(mqtt_password_env), NOLIM},
    {SEC_MQTT, "password_file", K_PATH, C(mqtt_password_file), NOLIM},
    {SEC_MQTT, "password", K_REFUSED, 0, 0, 0, 0,
     "a password is never written in the configuration: use password_env or password_file"},
    {SEC_MQTT, "client_id", K_CLIENT_ID, C(mqtt_client_id), NOLIM},
    {SEC_MQTT, "allow_plain", K_BOOL, C(mqtt_allow_plain), NOLIM},
    {SEC_MQTT, "keepalive", K_INT, C(mqtt_keepalive_s), 5, 3600, NULL},
    {SEC_MQTT, "reconnect_min", K_INT, C(mqtt_reconnect_min_s), 1, 3600, NULL},
    {SEC_MQTT, "reconnect_max", K_INT, C(mqtt_reconnect_max_s), 1, 3600, NULL},
    {SEC_MQTT, "protocol", K_INT, C(mqtt_protocol), 4, 5, NULL},
    {SEC_MQTT, "topic_prefix", K_PREFIX, C(topic_prefix), NOLIM},
    {SEC_MQTT, "status_interval", K_INT, C(status_interval_s), 1, 86400, NULL},
    {SEC_MQTT, "offline_check", K_INT, C(offline_check_s), 1, 3600, NULL},
    {SEC_MQTT, "command_rate_count", K_UINT, C(command_rate_count), 1, 100000, NULL},
    {SEC_MQTT, "command_rate_window", K_INT, C(command_rate_window_s), 1, 86400, NULL},
    {SEC_MQTT, "command_qos", K_INT, C(command_qos), 0, 2, NULL},
    {SEC_MQTT, "max_devices", K_SIZE, C(max_devices), 0, 100000000, NULL},

    {SEC_STORE, "url", K_STORE_URL, C(store_url), NOLIM},
    {SEC_STORE, "url_env", K_ENVNAME, C(store_url_env), NOLIM},
    {SEC_STORE, "url_file", K_PATH, C(store_url_file), NOLIM},
    {SEC_STORE, "sync", K_SYNC, C(store.sync), NOLIM},
    {SEC_STORE, "batch_max", K_UINT, C(store.batch_max), 1, 100000, NULL},
    {SEC_STORE, "batch_interval_ms", K_UINT, C(store.batch_interval_ms), 1, 10000, NULL},
    {SEC_STORE, "queue_max", K_SIZE, C(store.queue_max), 1, 10000000, NULL},
    {SEC_STORE, "busy_timeout_ms", K_INT, C(store.busy_timeout_ms), 1, 600000, NULL},

    {SEC_RETENTION, "status_history_days", K_INT, C(status_history_days), 0, 36500, NULL},
    {SEC_RETENTION, "telemetry_days", K_INT, C(telemetry_days), 0, 36500, NULL},
    {SEC_RETENTION, "rollup_hour_days", K_INT, C(rollup_hour_days), 0, 36500, NULL},
    {SEC_RETENTION, "rollup_day_days", K_INT, C(rollup_day_days), 0, 36500, NULL},
    {SEC_RETENTION, "events_days", K_INT, C(events_days), 0, 36500, NULL},
    {SEC_RETENTION, "commands_days", K_INT, C(commands_days), 0, 36500, NULL},

    {SEC_API, "max_body", K_SIZE, C(max_body), 1024, (long long)EM_API_BODY_MAX, NULL},
    {SEC_API, "request_timeout", K_INT, C(request_timeout_s), 1, 3600, NULL},
    {SEC_API, "command_ttl", K_INT, C(command_ttl_s), 10, 86400, NULL},
    {SEC_API, "jwt_key_file", K_PATH, C(jwt_key_file), NOLIM},
    {SEC_API, "jwt_issuer", K_TEXT, C(jwt_issuer), NOLIM},
    {SEC_API, "jwt_audience", K_TEXT, C(jwt_audience), NOLIM},
    {SEC_API, "jwt_ttl", K_INT, C(jwt_ttl_s), 60, 86400, NULL},
    {SEC_API, "rate_viewer", K_U32, C(rate_per_min[EM_ROLE_VIEWER]), 1, 1000000, NULL},
    {SEC_API, "rate_operator", K_U32, C(rate_per_min[EM_ROLE_OPERATOR]), 1, 1000000, NULL},
    {SEC_API, "rate_admin", K_U32, C(rate_per_min[EM_ROLE_ADMIN]), 1, 1000000, NULL},
    {SEC_API, "rate_device", K_U32, C(rate_per_min[EM_ROLE_DEVICE]), 1, 1000000, NULL},
    {SEC_API, "auth_fail_per_min", K_U32, C(auth_fail_per_min), 1, 100000, NULL},

    {SEC_LISTENER, "address", K_ADDRESS, L(address), NOLIM},
    {SEC_LISTENER, "port", K_U16, L(port), 1, 65535, NULL},
    {SEC_LISTENER, "cert_file", K_PATH, L(cert_file), NOLIM},
    {SEC_LISTENER, "key_file", K_PATH, L(key_file), NOLIM},
    {SEC_LISTENER, "client_ca_file", K_PATH, L(client_ca_file), NOLIM},
    {SEC_LISTENER, "client_auth", K_CLIENT_AUTH, L(client_auth), NOLIM},
    {SEC_LISTENER, "metrics_only", K_BOOL, L(metrics_only), NOLIM},
};

#undef C
#undef L
#undef NOLIM

#define NKEYS (sizeof(k_keys) / sizeof(k_keys[0]))

/* The most a secret file may hold (only its first line is used). */
#define SECRET_FILE_MAX ((size_t)64 * 1024)

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
}

/* ---- parsing ----------------------------------------------------------- */

typedef struct parser {
    em_daemon_config_t *cfg;
    const char *name; /* file name for messages (its last component) */
    unsigned line;
    section_t sec;
    em_daemon_listener_t *lst; /* SEC_LISTENER: the listener being filled */
    unsigned set_line[NKEYS];  /* global keys: the line that set them (0: unset) */
    unsigned lst_set[EM_API_LISTENERS_MAX][NKEYS]; /* listener keys, per listener */
    bool bootstrap_none;                           /* bootstrap_key_file = none */
    em_error_t *err;
} parser_t;

/* Fills err with "NAME:LINE: [section] key: rule". section/key may be NULL. */
static em_err_t fail_at(parser_t *p, unsigned line, const char *key, const char *fmt, ...)
    EM_PRINTF(4, 5);
static em_err_t fail_at(parser_t *p, unsigned line, const char *key, const char *fmt, ...)
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
    else if (p->sec == SEC_LISTENER && p->lst != NULL)
        snprintf(where, sizeof(where), "[listener %s] ", p->lst->name);
    else if (p->sec != SEC_NONE)
        snprintf(where, sizeof(where), "[%s] ", k_section_names[p->sec]);
    return em_error_set(p->err, EM_ERR_CONFIGURATION, EM_SEV_HIGH, key, "%s:%u: %s%s%s%s", p->name,
                        line, where, key != NULL ? key : "", key != NULL ? ": " : "", rule);
}

static bool is_space(char c)
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

static bool word_is(const char *v, size_t vlen, const char *w)
{
    return strlen(w) == vlen && strncasecmp(v, w, vlen) == 0;
}

static bool parse_bool(const char *v, size_t vlen, bool *out)
{
    static const char *const yes[] = {"true", "yes", "on", "1"};
    static const char *const no[] = {"false", "no", "off", "0"};
    for (size_t i = 0; i < 4; i++) {
        if (word_is(v, vlen, yes[i])) {
            *out = true;
            return true;
        }
        if (word_is(v, vlen, no[i])) {
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

bool em__daemon_url_has_password(const char *url, size_t len)
{
    const char *pw;
    size_t pwlen;
    return em__daemon_url_password(url, len, &pw, &pwlen, 0) == 0;
}

/*
 * Finds the nth password in a store URL: the userinfo password of
 * "scheme://user:password@host" or a "password=" query parameter. Returns 0
 * and the span, or -1 when there is no nth one.
 */
int em__daemon_url_password(const char *url, size_t len, const char **pw, size_t *pwlen, int nth)
{
    int seen = 0;
    const char *sep = memmem(url, len, "://", 3);
    if (sep != NULL) {
        const char *auth = sep + 3;
        const char *end = url + len;
        /* The authority ends at the first '/', '?' or '#'. */
        const char *a_end = auth;
        while (a_end < end && *a_end != '/' && *a_end != '?' && *a_end != '#')
            a_end++;
        /* userinfo ends at the last '@' of the authority. */
        const char *at = NULL;
        for (const char *c = auth; c < a_end; c++) {
            if (*c == '@')
                at = c;
        }
        if (at != NULL) {
            const char *colon = memchr(auth, ':', (size_t)(at - auth));
            if (colon != NULL) {
                if (seen++ == nth) {
                    *pw = colon + 1;
                    *pwlen = (size_t)(at - colon - 1);
                    return 0;
                }
            }
        }
    }
    /* password=VALUE anywhere after '?' or '&' (or at the start of a
     * keyword/value string), up to '&' or white space. */
    for (size_t i = 0; i + 9 <= len; i++) {
        if (strncasecmp(url + i, "password=", 9) != 0)
            continue;
        if (i > 0 && url[i - 1] != '?' && url[i - 1] != '&' && !is_space(url[i - 1]))
            continue;
        size_t j = i + 9;
        while (j < len && url[j] != '&' && url[j] != ' ' && url[j] != '\t')
            j++;
        if (seen++ == nth) {
            *pw = url + i + 9;
            *pwlen = j - i - 9;
            return 0;
        }
    }
    return -1;
}

/* Strings: paths, text, names, URLs. */
static em_err_t set_string(parser_t *p, const key_def_t *k, char *field, const char *v, size_t vlen)
{
    switch (k->kind) {
    case K_KEYFILE:
        if (word_is(v, vlen, "none")) {
            field[0] = '\0';
            p->bootstrap_none = true;
            return EM_OK;
        }
        __attribute__((fallthrough));
    case K_PATH:
        if (vlen == 0 || v[0] != '/')
            return fail_at(p, p->line, k->name, "must be an absolute path");
        if (!is_printable_text(v, vlen))
            return fail_at(p, p->line, k->name, "must not contain control characters");
        break;
    case K_TEXT:
        if (vlen == 0 || !is_printable_text(v, vlen))
            return fail_at(p, p->line, k->name, "must be non-empty printable text");
        break;
    case K_ENVNAME:
        if (!valid_envname(v, vlen) || vlen >= k->size)
            return fail_at(p, p->line, k->name,
                           "must be an environment variable name (letters, digits, '_'; at "
                           "most %zu)",
                           k->size - 1);
        break;
    case K_CLIENT_ID:
        if (!valid_name_chars(v, vlen, "_-") || vlen >= k->size)
            return fail_at(p, p->line, k->name, "must be 1-%zu of [A-Za-z0-9_-]", k->size - 1);
        break;
    default:
        return fail_at(p, p->line, k->name, "internal error: not a string");
    }
    if (!put_str(field, k->size, v, vlen))
        return fail_at(p, p->line, k->name, "must be at most %zu bytes", k->size - 1);
    return EM_OK;
}

/* Integers of every width, range checked. */
static em_err_t set_number(parser_t *p, const key_def_t *k, char *field, const char *v, size_t vlen)
{
    long long x = 0;
    if (!parse_ll(v, vlen, &x) || x < k->min || x > k->max)
        return fail_at(p, p->line, k->name, "must be an integer from %lld to %lld", k->min, k->max);
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
static em_err_t set_word(parser_t *p, const key_def_t *k, char *field, const char *v, size_t vlen)
{
    bool b = false;
    char w[16];
    int lv = -1;
    switch (k->kind) {
    case K_BOOL:
        if (!parse_bool(v, vlen, &b))
            return fail_at(p, p->line, k->name, "must be true or false");
        *(bool *)(void *)field = b;
        return EM_OK;
    case K_LOGLEVEL:
        if (put_str(w, sizeof(w), v, vlen))
            lv = em_log_level_parse(w);
        if (lv < 0)
            return fail_at(p, p->line, k->name,
                           "must be trace, debug, info, warn, error, fatal or off");
        *(em_log_level_t *)(void *)field = (em_log_level_t)lv;
        return EM_OK;
    case K_SYNC:
        if (!word_is(v, vlen, "full") && !word_is(v, vlen, "normal"))
            return fail_at(p, p->line, k->name, "must be full or normal");
        *(em_store_sync_t *)(void *)field =
            word_is(v, vlen, "full") ? EM_STORE_SYNC_FULL : EM_STORE_SYNC_NORMAL;
        return EM_OK;
    case K_CLIENT_AUTH: {
        static const char *const modes[] = {"none", "optional", "required"};
        static const em_client_auth_t values[] = {EM_CLIENT_AUTH_NONE, EM_CLIENT_AUTH_OPTIONAL,
                                                  EM_CLIENT_AUTH_REQUIRED};
        for (size_t i = 0; i < 3; i++) {
            if (word_is(v, vlen, modes[i])) {
                *(em_client_auth_t *)(void *)field = values[i];
                return EM_OK;
            }
        }
        return fail_at(p, p->line, k->name, "must be none, optional or required");
    }
    default:
        return fail_at(p, p->line, k->name, "internal error: not a word");
    }
}

static bool has_prefix(const char *v, size_t vlen, const char *prefix)
{
    size_t n = strlen(prefix);
    return vlen > n && strncmp(v, prefix, n) == 0;
}

/* Addresses, URLs, the topic prefix: checked for what they are. */
static em_err_t set_special(parser_t *p, const key_def_t *k, char *field, const char *v,
                            size_t vlen)
{
    char w[EM_DAEMON_ADDRESS_MAX + EM_TOPIC_PREFIX_MAX + 2];
    unsigned char bin[16];
    em_error_t e;
    switch (k->kind) {
    case K_ADDRESS:
        if (!put_str(w, EM_DAEMON_ADDRESS_MAX + 1, v, vlen) ||
            (inet_pton(AF_INET, w, bin) != 1 && inet_pton(AF_INET6, w, bin) != 1))
            return fail_at(p, p->line, k->name,
                           "must be an IPv4 or IPv6 address (127.0.0.1, 0.0.0.0, ::1, ::)");
        break;
    case K_MQTT_URL:
        if (!(has_prefix(v, vlen, "mqtt://") || has_prefix(v, vlen, "mqtts://")) ||
            !is_printable_text(v, vlen) || memchr(v, ' ', vlen) != NULL)
            return fail_at(p, p->line, k->name,
                           "must be mqtts://HOST[:PORT] or mqtt://HOST[:PORT]");
        if (memchr(v, '@', vlen) != NULL)
            return fail_at(p, p->line, k->name,
                           "must not hold credentials: use username and password_env or "
                           "password_file");
        break;
    case K_STORE_URL:
        if (!is_printable_text(v, vlen) ||
            !(has_prefix(v, vlen, "sqlite:") || has_prefix(v, vlen, "postgresql://") ||
              has_prefix(v, vlen, "postgres://")))
            return fail_at(p, p->line, k->name, "must be sqlite:PATH or postgresql://...");
        if (em__daemon_url_has_password(v, vlen))
            return fail_at(p, p->line, k->name,
                           "must not hold a password: put the URL in url_env or url_file");
        break;
    case K_PREFIX:
        if (!put_str(w, EM_TOPIC_PREFIX_MAX + 1, v, vlen) ||
            em_topic_prefix_validate(w, &e) != EM_OK)
            return fail_at(p, p->line, k->name,
                           "must be a valid MQTT topic prefix (at most %d bytes, no '+' or '#')",
                           EM_TOPIC_PREFIX_MAX);
        break;
    default:
        return fail_at(p, p->line, k->name, "internal error: not special");
    }
    if (!put_str(field, k->size, v, vlen))
        return fail_at(p, p->line, k->name, "must be at most %zu bytes", k->size - 1);
    return EM_OK;
}

/* Sets one key's value. */
static em_err_t set_value(parser_t *p, const key_def_t *k, const char *v, size_t vlen)
{
    void *base = k->sec == SEC_LISTENER ? (void *)p->lst : (void *)p->cfg;
    char *field = (char *)base + k->off;
    switch (k->kind) {
    case K_REFUSED:
        return fail_at(p, p->line, k->name, "%s", k->hint);
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
    return fail_at(p, p->line, k->name, "internal error: unknown kind");
}

static em_err_t section_header(parser_t *p, const char *s, size_t len)
{
    /* s is the text between '[' and ']', not trimmed yet. */
    while (len > 0 && is_space(s[0])) {
        s++;
        len--;
    }
    while (len > 0 && is_space(s[len - 1]))
        len--;
    p->lst = NULL;
    for (int i = 0; i < SEC_COUNT; i++) {
        if (i != SEC_LISTENER && word_is(s, len, k_section_names[i])) {
            p->sec = (section_t)i;
            return EM_OK;
        }
    }
    if (len >= 8 && strncmp(s, "listener", 8) == 0 && (len == 8 || is_space(s[8]))) {
        const char *n = s + 8;
        size_t nlen = len - 8;
        while (nlen > 0 && is_space(n[0])) {
            n++;
            nlen--;
        }
        p->sec = SEC_NONE;
        if (nlen == 0 || nlen > EM_DAEMON_NAME_MAX || !valid_name_chars(n, nlen, "_.-"))
            return fail_at(p, p->line, NULL,
                           "[listener NAME] needs a NAME of 1-%d of [A-Za-z0-9_.-]",
                           EM_DAEMON_NAME_MAX);
        em_daemon_config_t *cfg = p->cfg;
        for (size_t i = 0; i < cfg->nlisteners; i++) {
            if (strlen(cfg->listeners[i].name) == nlen &&
                memcmp(n, cfg->listeners[i].name, nlen) == 0)
                return fail_at(p, p->line, NULL, "listener '%s' is already defined on line %u",
                               cfg->listeners[i].name, cfg->listeners[i].line);
        }
        if (cfg->nlisteners >= EM_API_LISTENERS_MAX)
            return fail_at(p, p->line, NULL, "at most %d listeners", EM_API_LISTENERS_MAX);
        em_daemon_listener_t *l = &cfg->listeners[cfg->nlisteners++];
        memset(l, 0, sizeof(*l));
        put_str(l->name, sizeof(l->name), n, nlen);
        l->line = p->line;
        l->client_auth = EM_CLIENT_AUTH_NONE;
        p->lst = l;
        p->sec = SEC_LISTENER;
        return EM_OK;
    }
    p->sec = SEC_NONE;
    return fail_at(p, p->line, NULL,
                   "unknown section (daemon, mqtt, store, retention, api, listener NAME)");
}

static em_err_t key_line(parser_t *p, const char *s, size_t len)
{
    const char *eq = memchr(s, '=', len);
    if (eq == NULL)
        return fail_at(p, p->line, NULL, "expected 'key = value', a [section] or a # comment");
    size_t klen = (size_t)(eq - s);
    while (klen > 0 && is_space(s[klen - 1]))
        klen--;
    const char *v = eq + 1;
    size_t vlen = len - (size_t)(v - s);
    while (vlen > 0 && is_space(v[0])) {
        v++;
        vlen--;
    }
    while (vlen > 0 && is_space(v[vlen - 1]))
        vlen--;
    if (vlen >= 2 && v[0] == '"' && v[vlen - 1] == '"') {
        v++;
        vlen -= 2;
    }
    char key[EM_DAEMON_NAME_MAX + 1];
    if (klen == 0 || !put_str(key, sizeof(key), s, klen) || !valid_name_chars(key, klen, "_"))
        return fail_at(p, p->line, NULL, "expected a key name of [a-z0-9_] before '='");
    if (p->sec == SEC_NONE)
        return fail_at(p, p->line, key, "a key before any [section]");
    for (size_t i = 0; i < NKEYS; i++) {
        const key_def_t *k = &k_keys[i];
        if (k->sec != p->sec || strcmp(k->name, key) != 0)
            continue;
        unsigned *set =
            p->sec == SEC_LISTENER ? &p->lst_set[p->lst - p->cfg->listeners][i] : &p->set_line[i];
        if (*set != 0)
            return fail_at(p, p->line, key, "set twice (first on line %u)", *set);
        *set = p->line;
        return set_value(p, k, v, vlen);
    }
    return fail_at(p, p->line, key, "unknown key");
}

static int key_index(section_t sec, const char *name)
{
    for (size_t i = 0; i < NKEYS; i++) {
        if (k_keys[i].sec == sec && strcmp(k_keys[i].name, name) == 0)
            return (int)i;
    }
    return -1;
}

/* The line that set a global key (0 when unset). */
static unsigned line_of(const parser_t *p, section_t sec, const char *name)
{
    int i = key_index(sec, name);
    return i < 0 ? 0 : p->set_line[i];
}

static unsigned lst_line_of(const parser_t *p, size_t li, const char *name)
{
    int i = key_index(SEC_LISTENER, name);
    return i < 0 ? 0 : p->lst_set[li][i];
}

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
static em_err_t check_listener(parser_t *p, size_t i)
{
    em_daemon_config_t *cfg = p->cfg;
    em_daemon_listener_t *l = &cfg->listeners[i];
    p->sec = SEC_LISTENER;
    p->lst = l;
    if (l->address[0] == '\0')
        return fail_at(p, l->line, "address", "is required");
    if (l->port == 0)
        return fail_at(p, l->line, "port", "is required");
    bool tls = l->cert_file[0] != '\0';
    if (tls != (l->key_file[0] != '\0'))
        return fail_at(p, lst_line_of(p, i, tls ? "cert_file" : "key_file"),
                       tls ? "key_file" : "cert_file", "cert_file and key_file go together");
    if (!tls && !l->metrics_only)
        return fail_at(p, l->line, "cert_file",
                       "is required: only a metrics_only listener may be plain HTTP");
    if (!tls && !is_loopback(l->address))
        return fail_at(p, lst_line_of(p, i, "address"), "address",
                       "a plain-HTTP listener must be on a loopback address");
    if (l->client_auth != EM_CLIENT_AUTH_NONE && (!tls || l->client_ca_file[0] == '\0'))
        return fail_at(p, lst_line_of(p, i, "client_auth"), "client_auth",
                       "needs cert_file, key_file and client_ca_file");
    if (l->client_ca_file[0] != '\0' && l->client_auth == EM_CLIENT_AUTH_NONE)
        return fail_at(p, lst_line_of(p, i, "client_ca_file"), "client_ca_file",
                       "is used only with client_auth = optional or required");
    for (size_t j = 0; j < i; j++) {
        if (cfg->listeners[j].port == l->port && strcmp(cfg->listeners[j].address, l->address) == 0)
            return fail_at(p, lst_line_of(p, i, "port"), "port",
                           "listener '%s' already uses this address and port",
                           cfg->listeners[j].name);
    }
    return EM_OK;
}

static em_err_t check_listeners(parser_t *p)
{
    em_daemon_config_t *cfg = p->cfg;
    if (cfg->nlisteners == 0)
        return fail_at(p, p->line, NULL, "no [listener NAME] section: the API needs one");
    size_t api_listeners = 0;
    for (size_t i = 0; i < cfg->nlisteners; i++) {
        em_err_t rc = check_listener(p, i);
        if (rc != EM_OK)
            return rc;
        api_listeners += !cfg->listeners[i].metrics_only;
    }
    p->sec = SEC_NONE;
    p->lst = NULL;
    if (api_listeners == 0)
        return fail_at(p, cfg->listeners[0].line, NULL,
                       "every listener is metrics_only: the API needs one more");
    return EM_OK;
}

static em_err_t check_mqtt(parser_t *p)
{
    const em_daemon_config_t *cfg = p->cfg;
    bool pw_env = cfg->mqtt_password_env[0] != '\0';
    bool pw_file = cfg->mqtt_password_file[0] != '\0';
    bool cert = cfg->mqtt_cert_file[0] != '\0';
    p->sec = SEC_MQTT;
    if (pw_env && pw_file)
        return fail_at(p, line_of(p, SEC_MQTT, "password_file"), "password_file",
                       "password_env and password_file exclude each other");
    if (cert != (cfg->mqtt_key_file[0] != '\0'))
        return fail_at(p, line_of(p, SEC_MQTT, cert ? "cert_file" : "key_file"),
                       cert ? "key_file" : "cert_file", "cert_file and key_file go together");
    if (cfg->mqtt_reconnect_max_s < cfg->mqtt_reconnect_min_s)
        return fail_at(p, line_of(p, SEC_MQTT, "reconnect_max"), "reconnect_max",
                       "must be at least reconnect_min");
    if (strncmp(cfg->mqtt_url, "mqtt://", 7) == 0 && !cfg->mqtt_allow_plain)
        return fail_at(p, line_of(p, SEC_MQTT, "url"), "url",
                       "plain mqtt:// needs allow_plain = true (loopback brokers only)");
    if ((pw_env || pw_file) && cfg->mqtt_username[0] == '\0')
        return fail_at(p, line_of(p, SEC_MQTT, pw_env ? "password_env" : "password_file"),
                       "username", "a password needs a username");
    return EM_OK;
}

static em_err_t check_store_and_daemon(parser_t *p)
{
    const em_daemon_config_t *cfg = p->cfg;
    p->sec = SEC_STORE;
    int sources = (cfg->store_url[0] != '\0') + (cfg->store_url_env[0] != '\0') +
                  (cfg->store_url_file[0] != '\0');
    if (sources > 1) {
        unsigned l = line_of(p, SEC_STORE, "url_file");
        if (l == 0)
            l = line_of(p, SEC_STORE, "url_env");
        return fail_at(p, l, "url", "url, url_env and url_file exclude each other");
    }
    p->sec = SEC_DAEMON;
    if (p->bootstrap_none && !cfg->bootstrap_key_print)
        return fail_at(p, line_of(p, SEC_DAEMON, "bootstrap_key_file"), "bootstrap_key_file",
                       "none needs bootstrap_key_print = true, or the first key is shown "
                       "nowhere");
    p->sec = SEC_NONE;
    return EM_OK;
}

/* path = data_dir + "/" + name, unless already set. */
static em_err_t default_in_data_dir(parser_t *p, char *path, size_t size, const char *name)
{
    if (path[0] != '\0')
        return EM_OK;
    int n = snprintf(path, size, "%s/%s", p->cfg->data_dir, name);
    if (n < 0 || (size_t)n >= size) {
        p->sec = SEC_DAEMON;
        return fail_at(p, line_of(p, SEC_DAEMON, "data_dir"), "data_dir", "is too long");
    }
    return EM_OK;
}

/* Rules between keys, and the defaults that depend on data_dir. */
static em_err_t finish(parser_t *p)
{
    em_daemon_config_t *cfg = p->cfg;
    p->sec = SEC_NONE;
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
    return rc;
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
    parser_t *p = calloc(1, sizeof(*p));
    if (p == NULL)
        return em_error_set(err, EM_ERR_NOMEM, EM_SEV_HIGH, NULL, "out of memory");
    p->cfg = cfg;
    p->name = base_name(name != NULL && name[0] != '\0' ? name : "config");
    p->sec = SEC_NONE;
    p->err = err;
    em_err_t rc = EM_OK;
    if (len > EM_DAEMON_CONFIG_SIZE_MAX)
        rc = fail_at(p, 0, NULL, "the file is larger than %zu bytes", EM_DAEMON_CONFIG_SIZE_MAX);

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
            rc = fail_at(p, p->line, NULL, "line longer than %d bytes", EM_DAEMON_LINE_MAX);
            break;
        }
        if (memchr(s, '\0', llen) != NULL) {
            rc = fail_at(p, p->line, NULL, "NUL byte");
            break;
        }
        while (llen > 0 && is_space(s[0])) {
            s++;
            llen--;
        }
        while (llen > 0 && is_space(s[llen - 1]))
            llen--;
        if (llen == 0 || s[0] == '#' || s[0] == ';')
            continue;
        if (s[0] == '[') {
            if (s[llen - 1] != ']') {
                rc = fail_at(p, p->line, NULL, "a section header ends with ']'");
                break;
            }
            rc = section_header(p, s + 1, llen - 2);
        } else {
            rc = key_line(p, s, llen);
        }
    }
    if (rc == EM_OK)
        rc = finish(p);
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

/* ---- secrets ----------------------------------------------------------- */

bool em_daemon_secret_is_placeholder(const char *secret, size_t len)
{
    if (secret == NULL)
        return true;
    while (len > 0 && (is_space(secret[0]) || secret[0] == '\n')) {
        secret++;
        len--;
    }
    while (len > 0 && (is_space(secret[len - 1]) || secret[len - 1] == '\n'))
        len--;
    if (len == 0)
        return true;
    static const char *const words[] = {
        "changeme",      "change_me",  "change-me", "changeit",   "change_it",     "password",
        "passwd",        "pass",       "secret",    "admin",      "example",       "default",
        "test",          "testing",    "guest",     "root",       "toor",          "emiot",
        "mosquitto",     "postgres",   "123456",    "12345678",   "letmein",       "qwerty",
        "none",          "null",       "todo",      "fixme",      "your_password", "yourpassword",
        "your-password", "mypassword", "secret123", "password123"};
    for (size_t i = 0; i < sizeof(words) / sizeof(words[0]); i++) {
        if (word_is(secret, len, words[i]))
            return true;
    }
    bool all_x = len >= 3;
    for (size_t i = 0; i < len && all_x; i++)
        all_x = secret[i] == 'x' || secret[i] == 'X';
    if (all_x)
        return true;
    if (secret[0] == '<' && secret[len - 1] == '>')
        return true;
    if (len >= 3 && secret[0] == '$' && secret[1] == '{' && secret[len - 1] == '}')
        return true;
    return false;
}

/* Refuses a secret file that other users may read (or write). */
static em_err_t secret_file_private(const char *what, const char *path, em_error_t *err)
{
    struct stat st;
    if (stat(path, &st) != 0)
        return em_error_set(err, EM_ERR_CONFIGURATION, EM_SEV_HIGH, what, "%s: cannot read %s: %s",
                            what, path, strerror(errno));
    if ((st.st_mode & 0007) != 0)
        return em_error_set(err, EM_ERR_CONFIGURATION, EM_SEV_HIGH, what,
                            "%s: %s is accessible to other users (chmod o-rwx)", what, path);
    return EM_OK;
}

/*
 * Reads the first line of a secret file into buf (without the line end).
 * The file's other content is wiped from memory.
 */
static em_err_t read_secret_file(const char *what, const char *path, char *buf, size_t size,
                                 em_error_t *err)
{
    em_err_t rc = secret_file_private(what, path, err);
    if (rc != EM_OK)
        return rc;
    char *text = NULL;
    size_t len = 0;
    if (em__daemon_read_file(path, SECRET_FILE_MAX, &text, &len) != 0)
        return em_error_set(err, EM_ERR_CONFIGURATION, EM_SEV_HIGH, what, "%s: cannot read %s: %s",
                            what, path, strerror(errno));
    size_t line = strcspn(text, "\r\n");
    if (line >= size)
        rc =
            em_error_set(err, EM_ERR_CONFIGURATION, EM_SEV_HIGH, what,
                         "%s: the first line of %s is longer than %zu bytes", what, path, size - 1);
    else {
        memcpy(buf, text, line);
        buf[line] = '\0';
    }
    OPENSSL_cleanse(text, len);
    free(text);
    return rc;
}

/* Refuses a URL whose password (any of them) is a placeholder. */
static em_err_t check_url_passwords(const char *url, em_error_t *err)
{
    size_t len = strlen(url);
    const char *pw;
    size_t pwlen;
    for (int i = 0; em__daemon_url_password(url, len, &pw, &pwlen, i) == 0; i++) {
        if (em_daemon_secret_is_placeholder(pw, pwlen))
            return em_error_set(err, EM_ERR_CONFIGURATION, EM_SEV_HIGH, "store.url",
                                "the store URL's password is empty or a placeholder: set a "
                                "real one");
    }
    return EM_OK;
}

em_err_t em_daemon_config_store_url(const em_daemon_config_t *cfg, char *buf, size_t size,
                                    em_error_t *err)
{
    if (cfg == NULL || buf == NULL || size == 0)
        return em_error_set(err, EM_ERR_INVALID_ARGUMENT, EM_SEV_MEDIUM, NULL,
                            "configuration and buffer are required");
    buf[0] = '\0';
    em_err_t rc = EM_OK;
    if (cfg->store_url_env[0] != '\0') {
        const char *v = getenv(cfg->store_url_env);
        if (v == NULL || v[0] == '\0')
            return em_error_set(err, EM_ERR_CONFIGURATION, EM_SEV_HIGH, "store.url_env",
                                "[store] url_env: the environment variable %s is not set",
                                cfg->store_url_env);
        if (strlen(v) >= size || strlen(v) > EM_STORE_URL_MAX)
            return em_error_set(err, EM_ERR_CONFIGURATION, EM_SEV_HIGH, "store.url_env",
                                "[store] url_env: the URL in %s is too long", cfg->store_url_env);
        snprintf(buf, size, "%s", v);
    } else if (cfg->store_url_file[0] != '\0') {
        char tmp[EM_STORE_URL_MAX + 1];
        rc = read_secret_file("[store] url_file", cfg->store_url_file, tmp, sizeof(tmp), err);
        if (rc == EM_OK) {
            if (strlen(tmp) >= size)
                rc = em_error_set(err, EM_ERR_BUFFER_TOO_SMALL, EM_SEV_MEDIUM, NULL,
                                  "buffer too small for the store URL");
            else
                snprintf(buf, size, "%s", tmp);
        }
        OPENSSL_cleanse(tmp, sizeof(tmp));
        if (rc == EM_OK && buf[0] == '\0')
            rc = em_error_set(err, EM_ERR_CONFIGURATION, EM_SEV_HIGH, "store.url_file",
                              "[store] url_file: %s is empty", cfg->store_url_file);
    } else if (cfg->store_url[0] != '\0') {
        if (strlen(cfg->store_url) >= size)
            return em_error_set(err, EM_ERR_BUFFER_TOO_SMALL, EM_SEV_MEDIUM, NULL,
                                "buffer too small for the store URL");
        snprintf(buf, size, "%s", cfg->store_url);
    } else {
        int n = snprintf(buf, size, "sqlite:%s/emiot.db", cfg->data_dir);
        if (n < 0 || (size_t)n >= size)
            return em_error_set(err, EM_ERR_BUFFER_TOO_SMALL, EM_SEV_MEDIUM, NULL,
                                "buffer too small for the store URL");
    }
    if (rc == EM_OK)
        rc = check_url_passwords(buf, err);
    if (rc != EM_OK)
        OPENSSL_cleanse(buf, size);
    return rc;
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

/* ---- check ------------------------------------------------------------- */

static em_err_t readable(const char *what, const char *path, em_error_t *err)
{
    if (path[0] == '\0')
        return EM_OK;
    int fd = open(path, O_RDONLY | O_CLOEXEC | O_NOCTTY);
    if (fd < 0)
        return em_error_set(err, EM_ERR_CONFIGURATION, EM_SEV_HIGH, what, "%s: cannot read %s: %s",
                            what, path, strerror(errno));
    close(fd);
    return EM_OK;
}

/* The directory holding path exists (the file may not yet). */
static em_err_t parent_exists(const char *what, const char *path, em_error_t *err)
{
    char dir[EM_DAEMON_PATH_MAX + 1];
    snprintf(dir, sizeof(dir), "%s", path);
    char *slash = strrchr(dir, '/');
    if (slash == NULL)
        return EM_OK;
    if (slash == dir)
        slash[1] = '\0';
    else
        *slash = '\0';
    struct stat st;
    if (stat(dir, &st) != 0 || !S_ISDIR(st.st_mode))
        return em_error_set(err, EM_ERR_CONFIGURATION, EM_SEV_HIGH, what,
                            "%s: the directory %s does not exist", what, dir);
    return EM_OK;
}

/* The certificate chain and key load and match. */
static em_err_t check_tls_pair(const char *what, const char *cert, const char *key, em_error_t *err)
{
    em_err_t rc = readable(what, cert, err);
    if (rc == EM_OK)
        rc = readable(what, key, err);
    if (rc != EM_OK)
        return rc;
    SSL_CTX *ctx = SSL_CTX_new(TLS_server_method());
    if (ctx == NULL)
        return em_error_set(err, EM_ERR_NOMEM, EM_SEV_HIGH, what, "out of memory");
    if (SSL_CTX_use_certificate_chain_file(ctx, cert) != 1)
        rc = em_error_set(err, EM_ERR_CONFIGURATION, EM_SEV_HIGH, what,
                          "%s: %s is not a PEM certificate chain", what, cert);
    EVP_PKEY *pkey = NULL;
    if (rc == EM_OK) {
        /* Read apart from the certificate, so that an unreadable key and a
         * key of another certificate get their own messages. */
        FILE *f = fopen(key, "re");
        if (f != NULL) {
            /* An empty passphrase: an encrypted key is refused, never
             * prompted for. */
            pkey = PEM_read_PrivateKey(f, NULL, NULL, (void *)"");
            (void)fclose(f);
        }
        if (pkey == NULL)
            rc = em_error_set(err, EM_ERR_CONFIGURATION, EM_SEV_HIGH, what,
                              "%s: %s is not a PEM private key (or it is encrypted)", what, key);
        else if (SSL_CTX_use_PrivateKey(ctx, pkey) != 1 || SSL_CTX_check_private_key(ctx) != 1)
            rc = em_error_set(err, EM_ERR_CONFIGURATION, EM_SEV_HIGH, what,
                              "%s: the key %s does not match the certificate %s", what, key, cert);
    }
    EVP_PKEY_free(pkey);
    ERR_clear_error();
    SSL_CTX_free(ctx);
    return rc;
}

static em_err_t check_ca(const char *what, const char *ca, em_error_t *err)
{
    em_err_t rc = readable(what, ca, err);
    if (rc != EM_OK || ca[0] == '\0')
        return rc;
    SSL_CTX *ctx = SSL_CTX_new(TLS_server_method());
    if (ctx == NULL)
        return em_error_set(err, EM_ERR_NOMEM, EM_SEV_HIGH, what, "out of memory");
    if (SSL_CTX_load_verify_locations(ctx, ca, NULL) != 1)
        rc = em_error_set(err, EM_ERR_CONFIGURATION, EM_SEV_HIGH, what,
                          "%s: %s holds no PEM CA certificate", what, ca);
    ERR_clear_error();
    SSL_CTX_free(ctx);
    return rc;
}

static em_err_t check_mqtt_password(const em_daemon_config_t *cfg, em_error_t *err)
{
    char pw[EM_MQTT_PASSWORD_MAX + 1] = "";
    em_err_t rc = EM_OK;
    if (cfg->mqtt_password_env[0] != '\0') {
        const char *v = getenv(cfg->mqtt_password_env);
        if (v == NULL)
            return em_error_set(err, EM_ERR_CONFIGURATION, EM_SEV_HIGH, "mqtt.password_env",
                                "[mqtt] password_env: the environment variable %s is not set",
                                cfg->mqtt_password_env);
        if (em_daemon_secret_is_placeholder(v, strlen(v)))
            return em_error_set(err, EM_ERR_CONFIGURATION, EM_SEV_HIGH, "mqtt.password_env",
                                "[mqtt] password_env: the password in %s is empty or a "
                                "placeholder: set a real one",
                                cfg->mqtt_password_env);
        return EM_OK;
    }
    if (cfg->mqtt_password_file[0] != '\0') {
        rc = read_secret_file("[mqtt] password_file", cfg->mqtt_password_file, pw, sizeof(pw), err);
        if (rc == EM_OK && em_daemon_secret_is_placeholder(pw, strlen(pw)))
            rc = em_error_set(err, EM_ERR_CONFIGURATION, EM_SEV_HIGH, "mqtt.password_file",
                              "[mqtt] password_file: the password in %s is empty or a "
                              "placeholder: set a real one",
                              cfg->mqtt_password_file);
        OPENSSL_cleanse(pw, sizeof(pw));
    }
    return rc;
}

em_err_t em_daemon_config_check(const em_daemon_config_t *cfg, em_error_t *err)
{
    if (cfg == NULL)
        return em_error_set(err, EM_ERR_INVALID_ARGUMENT, EM_SEV_MEDIUM, NULL,
                            "a configuration is required");
    em_err_t rc = EM_OK;

    /* [daemon] */
    struct stat st;
    if (stat(cfg->data_dir, &st) == 0) {
        if (!S_ISDIR(st.st_mode))
            return em_error_set(err, EM_ERR_CONFIGURATION, EM_SEV_HIGH, "data_dir",
                                "[daemon] data_dir: %s is not a directory", cfg->data_dir);
        if (access(cfg->data_dir, R_OK | W_OK | X_OK) != 0)
            return em_error_set(err, EM_ERR_CONFIGURATION, EM_SEV_HIGH, "data_dir",
                                "[daemon] data_dir: %s is not writable: %s", cfg->data_dir,
                                strerror(errno));
    } else if ((rc = parent_exists("[daemon] data_dir", cfg->data_dir, err)) != EM_OK) {
        return rc;
    }
    if (cfg->log_file[0] != '\0' &&
        (rc = parent_exists("[daemon] log_file", cfg->log_file, err)) != EM_OK)
        return rc;

    /* [mqtt] */
    if ((rc = check_ca("[mqtt] ca_file", cfg->mqtt_ca_file, err)) != EM_OK)
        return rc;
    if (cfg->mqtt_ca_path[0] != '\0' && (stat(cfg->mqtt_ca_path, &st) != 0 || !S_ISDIR(st.st_mode)))
        return em_error_set(err, EM_ERR_CONFIGURATION, EM_SEV_HIGH, "ca_path",
                            "[mqtt] ca_path: %s is not a directory", cfg->mqtt_ca_path);
    if (cfg->mqtt_cert_file[0] != '\0' &&
        (rc = check_tls_pair("[mqtt] cert_file/key_file", cfg->mqtt_cert_file, cfg->mqtt_key_file,
                             err)) != EM_OK)
        return rc;
    if ((rc = check_mqtt_password(cfg, err)) != EM_OK)
        return rc;
    /* The transport's own checks (URL, plain on loopback only, files,
     * password), without connecting. */
    em_mqtt_options_t mo;
    em_daemon_config_mqtt_options(cfg, &mo);
    em_error_t me;
    em_error_clear(&me);
    em_mqtt_t *m = em_mqtt_new(&mo, NULL, &me);
    if (m == NULL)
        return em_error_set(err, EM_ERR_CONFIGURATION, EM_SEV_HIGH, "mqtt", "[mqtt] %s",
                            me.message);
    em_mqtt_free(m);

    /* [store] */
    char url[EM_STORE_URL_MAX + 1];
    rc = em_daemon_config_store_url(cfg, url, sizeof(url), err);
    OPENSSL_cleanse(url, sizeof(url));
    if (rc != EM_OK)
        return rc;

    /* [api] */
    struct stat jst;
    if (stat(cfg->jwt_key_file, &jst) == 0) {
        if ((rc = secret_file_private("[api] jwt_key_file", cfg->jwt_key_file, err)) != EM_OK ||
            (rc = readable("[api] jwt_key_file", cfg->jwt_key_file, err)) != EM_OK)
            return rc;
    } else if (strncmp(cfg->jwt_key_file, cfg->data_dir, strlen(cfg->data_dir)) != 0 &&
               (rc = parent_exists("[api] jwt_key_file", cfg->jwt_key_file, err)) != EM_OK) {
        return rc;
    }

    /* [listener NAME] */
    for (size_t i = 0; i < cfg->nlisteners; i++) {
        const em_daemon_listener_t *l = &cfg->listeners[i];
        char what[EM_DAEMON_NAME_MAX + 32];
        snprintf(what, sizeof(what), "[listener %s]", l->name);
        if (l->cert_file[0] != '\0' &&
            (rc = check_tls_pair(what, l->cert_file, l->key_file, err)) != EM_OK)
            return rc;
        if ((rc = check_ca(what, l->client_ca_file, err)) != EM_OK)
            return rc;
    }
    return EM_OK;
}
