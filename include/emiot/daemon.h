/*
 * emiot - daemon.h: emiotd, the daemon on top of libemiot, and its
 * configuration file.
 *
 * The configuration (deploy/emiotd.conf is the annotated example) is a text
 * file of sections and keys:
 *
 *   # a comment (a whole line starting with '#' or ';')
 *   [daemon]
 *   data_dir = /var/lib/emiot
 *   [listener public]
 *   address = 0.0.0.0
 *   port = 8443
 *
 * Sections: [daemon], [mqtt], [store], [retention], [api], [keystore],
 * [pki], [dynsec] and any number (at most EM_API_LISTENERS_MAX) of
 * [listener NAME]. A section may be opened
 * again; a key may be set once. A value runs to the end of the line (there
 * are no trailing comments) and may be wrapped in double quotes to keep
 * leading or trailing spaces. Paths must be absolute. Parsing is strict: an
 * unknown section or key, a key set twice, a value out of range or of the
 * wrong kind is EM_ERR_CONFIGURATION, with err->message
 * "FILE:LINE: [section] key: rule" (never the value: it may be a secret) and
 * err->field the key.
 *
 * Secrets never sit in the configuration: the MQTT password comes from an
 * environment variable (password_env) or a file (password_file), the store
 * URL, when it holds a password, from url_env or url_file. Secret files must
 * not be readable by other users. The daemon refuses to start when a secret
 * is empty or a known placeholder (em_daemon_secret_is_placeholder).
 */
#ifndef EMIOT_DAEMON_H
#define EMIOT_DAEMON_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "emiot/api.h"
#include "emiot/dynsec.h"
#include "emiot/error.h"
#include "emiot/export.h"
#include "emiot/log.h"
#include "emiot/manager.h"
#include "emiot/mqtt.h"
#include "emiot/store.h"
#include "emiot/topic.h"

#ifdef __cplusplus
extern "C" {
#endif

#define EM_DAEMON_CONFIG_SIZE_MAX ((size_t)256 * 1024) /* bytes in a configuration file */
#define EM_DAEMON_LINE_MAX        4096                 /* bytes in one line */
#define EM_DAEMON_PATH_MAX        1024
#define EM_DAEMON_NAME_MAX        64 /* listener names, environment variable names */
#define EM_DAEMON_ADDRESS_MAX     64
#define EM_DAEMON_TEXT_MAX        128 /* user names, JWT issuer and audience */

/* emiotd's exit codes. */
#define EM_DAEMON_EXIT_OK 0 /* stopped cleanly (SIGTERM, SIGINT); --check-config: valid */
#define EM_DAEMON_EXIT_FAILURE                                                                     \
    1                            /* a failure while running or starting (store, bind, ...);        \
                                    --check-config: invalid */
#define EM_DAEMON_EXIT_USAGE  2  /* bad command line */
#define EM_DAEMON_EXIT_CONFIG 78 /* the configuration is invalid (sysexits' EX_CONFIG) */

typedef struct em_daemon_listener {
    char name[EM_DAEMON_NAME_MAX + 1];       /* from [listener NAME]: [A-Za-z0-9_.-] */
    char address[EM_DAEMON_ADDRESS_MAX + 1]; /* IPv4 or IPv6 literal (required) */
    uint16_t port;                           /* 1-65535 (required) */
    char cert_file[EM_DAEMON_PATH_MAX + 1];  /* "" (plain HTTP: metrics_only, loopback only) */
    char key_file[EM_DAEMON_PATH_MAX + 1];
    char client_ca_file[EM_DAEMON_PATH_MAX + 1];
    em_client_auth_t client_auth; /* none (default), optional, required */
    bool metrics_only;
    unsigned line; /* line of the section header */
} em_daemon_listener_t;

/* A parsed configuration. Every field has the default documented in
 * deploy/emiotd.conf until the file sets it. */
typedef struct em_daemon_config {
    char path[EM_DAEMON_PATH_MAX + 1]; /* the file it was loaded from ("" when parsed) */

    /* [daemon] */
    char data_dir[EM_DAEMON_PATH_MAX + 1];           /* default /var/lib/emiot, created 0700 */
    em_log_level_t log_level;                        /* default info */
    char log_file[EM_DAEMON_PATH_MAX + 1];           /* "": stderr */
    char bootstrap_key_file[EM_DAEMON_PATH_MAX + 1]; /* default DATA/bootstrap-admin.key;
                                                        "" when set to none */
    bool bootstrap_key_print; /* also hand the first key to the program (stderr) */
    int shutdown_timeout_s;   /* SIGTERM: wait for requests in progress (10) */
    int command_expiry_s;     /* how often expired commands are marked (5) */
    int retention_interval_s; /* how often retention runs (3600) */

    /* [mqtt] */
    char mqtt_url[EM_MQTT_URL_MAX + 1]; /* default mqtts://localhost:8883 */
    char mqtt_ca_file[EM_DAEMON_PATH_MAX + 1];
    char mqtt_ca_path[EM_DAEMON_PATH_MAX + 1];
    char mqtt_cert_file[EM_DAEMON_PATH_MAX + 1];
    char mqtt_key_file[EM_DAEMON_PATH_MAX + 1];
    char mqtt_username[EM_DAEMON_TEXT_MAX + 1];
    char mqtt_password_env[EM_DAEMON_NAME_MAX + 1];
    char mqtt_password_file[EM_DAEMON_PATH_MAX + 1];
    char mqtt_client_id[EM_MQTT_CLIENT_ID_MAX + 1]; /* "": "emiotd-" + random */
    bool mqtt_allow_plain;
    int mqtt_keepalive_s;                       /* 30 */
    int mqtt_reconnect_min_s;                   /* 1 */
    int mqtt_reconnect_max_s;                   /* 30 */
    int mqtt_protocol;                          /* 5 or 4 */
    char topic_prefix[EM_TOPIC_PREFIX_MAX + 1]; /* "device/" */
    int status_interval_s;                      /* 60 */
    int offline_check_s;                        /* 10 */
    unsigned command_rate_count;                /* 10 */
    int command_rate_window_s;                  /* 60 */
    int command_qos;                            /* 1 */
    size_t max_devices;                         /* 0: the library's default */

    /* [store] */
    char store_url[EM_STORE_URL_MAX + 1]; /* "": sqlite:DATA/emiot.db; never a password */
    char store_url_env[EM_DAEMON_NAME_MAX + 1];
    char store_url_file[EM_DAEMON_PATH_MAX + 1];
    em_store_options_t store;

    /* [retention], in days; 0 keeps forever */
    int status_history_days; /* 30 */
    int telemetry_days;      /* 90 */
    int rollup_hour_days;    /* 365 */
    int rollup_day_days;     /* 0 */
    int events_days;         /* 180 */
    int commands_days;       /* 90 */

    /* [api] */
    size_t max_body;                           /* 65536 */
    int request_timeout_s;                     /* 30 */
    int command_ttl_s;                         /* 300 */
    char jwt_key_file[EM_DAEMON_PATH_MAX + 1]; /* default DATA/jwt.key */
    char jwt_issuer[EM_DAEMON_TEXT_MAX + 1];   /* emiotd */
    char jwt_audience[EM_DAEMON_TEXT_MAX + 1]; /* emiot-api */
    int jwt_ttl_s;                             /* 3600 */
    uint32_t rate_per_min[5];   /* by em_role_t: viewer, operator, admin 1200; device 60 */
    uint32_t auth_fail_per_min; /* 20 */

    /* [keystore]: the secret that seals the JWT key (and opens the CA key).
     * At most one of passphrase_env, passphrase_file and key_file; with none,
     * key_file defaults to DATA/keystore.key, created at the first start. */
    char keystore_passphrase_env[EM_DAEMON_NAME_MAX + 1];
    char keystore_passphrase_file[EM_DAEMON_PATH_MAX + 1];
    char keystore_key_file[EM_DAEMON_PATH_MAX + 1];
    char pkcs11_module[EM_DAEMON_PATH_MAX + 1]; /* an HSM holds the CA key ("" none) */
    char pkcs11_pin_env[EM_DAEMON_NAME_MAX + 1];
    char pkcs11_pin_file[EM_DAEMON_PATH_MAX + 1];

    /* [pki] */
    char pki_dir[EM_DAEMON_PATH_MAX + 1];      /* the CA directory: enrollment ("" none) */
    char pki_ca_file[EM_DAEMON_PATH_MAX + 1];  /* trusted for device certificates (default:
                                                  DIR/ca.crt) */
    char pki_crl_file[EM_DAEMON_PATH_MAX + 1]; /* default DIR/crl.pem */
    int device_cert_days;                      /* 365 */
    int enroll_token_ttl_s;                    /* 86400 */
    int enroll_token_ttl_max_s;                /* 2592000 */
    int device_token_ttl_s;                    /* 86400 */
    int nonce_ttl_s;                           /* 300 */
    size_t nonces_max;                         /* 10000 */

    /* [dynsec]: MQTT passwords through mosquitto's dynamic-security plugin */
    char dynsec_url[EM_MQTT_URL_MAX + 1]; /* "": not used */
    char dynsec_ca_file[EM_DAEMON_PATH_MAX + 1];
    char dynsec_cert_file[EM_DAEMON_PATH_MAX + 1];
    char dynsec_key_file[EM_DAEMON_PATH_MAX + 1];
    char dynsec_username[EM_DAEMON_TEXT_MAX + 1];
    char dynsec_password_env[EM_DAEMON_NAME_MAX + 1];
    char dynsec_password_file[EM_DAEMON_PATH_MAX + 1];

    em_daemon_listener_t listeners[EM_API_LISTENERS_MAX];
    size_t nlisteners;
} em_daemon_config_t;

/* Fills cfg with the defaults (no listener). */
EM_EXPORT void em_daemon_config_init(em_daemon_config_t *cfg);

/*
 * Parses len bytes of text (need not be NUL-terminated) into cfg, after
 * em_daemon_config_init; name is used in error messages (NULL: "config").
 * Checks syntax, values and the rules between keys (at least one API
 * listener; TLS or metrics_only on loopback; client_auth needs a CA; one
 * store URL source; ...). Touches no file and no environment variable.
 * Errors: EM_ERR_CONFIGURATION (cfg then holds a partial result),
 * EM_ERR_INVALID_ARGUMENT (NULL cfg, or NULL text with len > 0).
 */
EM_EXPORT em_err_t em_daemon_config_parse(em_daemon_config_t *cfg, const char *text, size_t len,
                                          const char *name, em_error_t *err);

/*
 * Reads the file at path (at most EM_DAEMON_CONFIG_SIZE_MAX bytes) and
 * parses it as em_daemon_config_parse does; cfg->path records path.
 * Errors: EM_ERR_CONFIGURATION (unreadable, too large, invalid),
 * EM_ERR_INVALID_ARGUMENT.
 */
EM_EXPORT em_err_t em_daemon_config_load(em_daemon_config_t *cfg, const char *path,
                                         em_error_t *err);

/*
 * What --check-config adds to parsing: every file named is readable (secret
 * files not readable by other users), TLS certificates and keys load and
 * match, the MQTT settings are accepted by the transport, the data
 * directory exists or can be created, the MQTT password and the store URL
 * can be read, and no secret is empty or a placeholder (a password inside
 * the store URL included). Secrets read are wiped before it returns.
 * Errors: EM_ERR_CONFIGURATION with the reason (never a secret).
 */
EM_EXPORT em_err_t em_daemon_config_check(const em_daemon_config_t *cfg, em_error_t *err);

/*
 * The store URL in buf: from url, url_env or url_file (its first line), or
 * "sqlite:DATA/emiot.db". It may hold a password: wipe buf
 * (OPENSSL_cleanse) after use. Errors: EM_ERR_CONFIGURATION (variable unset,
 * file unreadable or readable by others, URL too long, placeholder
 * password), EM_ERR_BUFFER_TOO_SMALL.
 */
EM_EXPORT em_err_t em_daemon_config_store_url(const em_daemon_config_t *cfg, char *buf, size_t size,
                                              em_error_t *err);

/* Option structures for the library from cfg. Their strings point into cfg,
 * which must outlive their use. */
EM_EXPORT void em_daemon_config_mqtt_options(const em_daemon_config_t *cfg, em_mqtt_options_t *out);
EM_EXPORT void em_daemon_config_manager_options(const em_daemon_config_t *cfg,
                                                em_manager_options_t *out);
EM_EXPORT void em_daemon_config_api_options(const em_daemon_config_t *cfg, em_api_options_t *out);
EM_EXPORT void em_daemon_config_retention(const em_daemon_config_t *cfg, em_store_retention_t *out);
/* The dynsec client's options ([dynsec]; meaningful when dynsec_url is set). */
EM_EXPORT void em_daemon_config_dynsec_options(const em_daemon_config_t *cfg,
                                               em_dynsec_options_t *out);

/*
 * True when secret (len bytes) must not be used: empty or only white space,
 * a known placeholder compared without case (changeme, change_me, password,
 * secret, admin, example, default, test, ... ), only x's ("xxx"), or
 * "<...>" / "${...}" (a template left unfilled).
 */
EM_EXPORT bool em_daemon_secret_is_placeholder(const char *secret, size_t len);

/* ---- the daemon ------------------------------------------------------- */

typedef struct em_daemon em_daemon_t;

/* Called once, on the first start only, with the bootstrap admin key (when
 * bootstrap_key_print is set) and the file it was written to ("" when none).
 * The key is wiped after the call: do not keep the pointer. */
typedef void (*em_daemon_key_fn)(const char *key, const char *file, void *userdata);

typedef struct em_daemon_hooks {
    em_daemon_key_fn on_bootstrap_key; /* may be NULL */
    void *userdata;
} em_daemon_hooks_t;

/*
 * Starts a daemon from cfg (copied; cfg->path is re-read on reload): the log
 * (level, file), the data directory (created 0700), the store, the manager
 * loaded with the stored devices, groups, memberships and latest statuses,
 * the bootstrap admin key on the first start (written 0600), the HTTPS API,
 * the signal handlers (SIGTERM and SIGINT stop, SIGHUP reloads) and the
 * timers. The broker is connected in the background: when it is down the API
 * is served meanwhile and the connection retried with backoff. hooks may be
 * NULL. The caller should ignore SIGPIPE.
 * Errors: EM_ERR_CONFIGURATION (em_daemon_config_check failed, or the API
 * refused its options), EM_ERR_IO (data directory, store, bind), EM_ERR_TLS,
 * EM_ERR_NOMEM, the store's.
 */
EM_EXPORT em_err_t em_daemon_new(const em_daemon_config_t *cfg, const em_daemon_hooks_t *hooks,
                                 em_daemon_t **out, em_error_t *err);

/*
 * Runs the event loop until a stop: SIGTERM or SIGINT (or em_daemon_stop)
 * stops accepting connections, waits for requests in progress (at most
 * shutdown_timeout), disconnects from the broker (flushing QoS 1 publishes),
 * flushes the store's queue. Returns EM_OK after a clean stop, or the error
 * that made the stop unclean (EM_ERR_IO: the store could not flush).
 */
EM_EXPORT em_err_t em_daemon_run(em_daemon_t *d, em_error_t *err);

/* Asks the loop to stop as SIGTERM does. Any thread. */
EM_EXPORT void em_daemon_stop(em_daemon_t *d);

/*
 * Re-reads the configuration file (as SIGHUP does) and applies what can
 * change while running: log level and file, the API's rate limits, body
 * limit and TLS certificates, retention, the topic prefix, the maintenance
 * intervals. Other changes are logged as needing a restart. On error the
 * running settings stay. Call on the loop's thread (SIGHUP does).
 * Errors: EM_ERR_CONFIGURATION, those of em_api_reload.
 */
EM_EXPORT em_err_t em_daemon_reload(em_daemon_t *d, em_error_t *err);

/* Frees everything (stopping what runs). Accepts NULL. */
EM_EXPORT void em_daemon_free(em_daemon_t *d);

/* The exit code for a failure of em_daemon_new or em_daemon_run with code. */
EM_EXPORT int em_daemon_exit_code(em_err_t code);

#ifdef __cplusplus
}
#endif

#endif /* EMIOT_DAEMON_H */
