/*
 * emiot - config_internal.h: what the files of emiotd's configuration share.
 *
 * The configuration (daemon.h) is read in two passes over one parser state:
 * config.c reads the file line by line, sets each key through the key table
 * and remembers the line that set it; config_rules.c then applies the rules
 * between keys and the defaults that depend on data_dir, naming the line of
 * the key at fault. config_secret.c holds what touches secrets (placeholder
 * detection, secret files, the store URL and its passwords), config_check.c
 * the file checks of --check-config, config_options.c the defaults and the
 * option structs the library is given.
 */
#ifndef EMIOT_DAEMON_CONFIG_INTERNAL_H
#define EMIOT_DAEMON_CONFIG_INTERNAL_H

#include <stdbool.h>
#include <stddef.h>

#include "emiot/daemon.h"
#include "emiot/error.h"
#include "emiot/export.h"

/* The rows of the key table (config.c checks it at compile time). */
#define EM__CONFIG_NKEYS 88

/* The section a key belongs to; [listener NAME] sections share one. */
typedef enum em__config_section {
    EM__SEC_NONE = -1,
    EM__SEC_DAEMON = 0,
    EM__SEC_MQTT,
    EM__SEC_STORE,
    EM__SEC_RETENTION,
    EM__SEC_API,
    EM__SEC_LISTENER,
    EM__SEC_KEYSTORE,
    EM__SEC_PKI,
    EM__SEC_DYNSEC,
    EM__SEC_COUNT
} em__config_section_t;

/* The state of one em_daemon_config_parse. */
typedef struct em__config_parser {
    em_daemon_config_t *cfg;
    const char *name; /* file name for messages (its last component) */
    unsigned line;
    em__config_section_t sec;
    em_daemon_listener_t *lst;           /* EM__SEC_LISTENER: the listener being filled */
    unsigned set_line[EM__CONFIG_NKEYS]; /* global keys: the line that set them (0: unset) */
    unsigned lst_set[EM_API_LISTENERS_MAX][EM__CONFIG_NKEYS]; /* listener keys, per listener */
    bool bootstrap_none;                                      /* bootstrap_key_file = none */
    em_error_t *err;
} em__config_parser_t;

/* ---- the reader (config.c) --------------------------------------------- */

/*
 * Fills p->err with "NAME:LINE: [section] key: rule" (EM_ERR_CONFIGURATION)
 * and returns EM_ERR_CONFIGURATION. The section is p->sec (p->lst for a
 * listener); key may be NULL for a line-level error, which names no section.
 */
em_err_t em__config_fail_at(em__config_parser_t *p, unsigned line, const char *key, const char *fmt,
                            ...) EM_PRINTF(4, 5);

/* The line that set the global key name of section sec (0 when unset). */
unsigned em__config_key_line(const em__config_parser_t *p, em__config_section_t sec,
                             const char *name);

/* The line that set the key name of listener li (0 when unset). */
unsigned em__config_listener_key_line(const em__config_parser_t *p, size_t li, const char *name);

/* White space within a line: ' ', '\t', '\r'. */
bool em__config_is_space(char c);

/* True when v (vlen bytes) is the word w, ignoring case. */
bool em__config_word_is(const char *v, size_t vlen, const char *w);

/* ---- rules between keys (config_rules.c) ------------------------------- */

/*
 * Applies the rules between keys once the whole file is read (listeners,
 * [mqtt], [store], [daemon]) and fills the defaults that depend on data_dir
 * (bootstrap_key_file, jwt_key_file). Returns EM_OK or the error of
 * em__config_fail_at.
 */
em_err_t em__config_finish(em__config_parser_t *p);

/* ---- secrets (config_secret.c) ----------------------------------------- */

/* Refuses (EM_ERR_CONFIGURATION) a secret file that is missing or that other
 * users may read or write; what names the key in the message. */
em_err_t em__config_secret_file_private(const char *what, const char *path, em_error_t *err);

/*
 * Reads the first line of the secret file path into buf (size bytes, without
 * the line end), after em__config_secret_file_private. The rest of the file
 * is wiped from memory. EM_ERR_CONFIGURATION when unreadable or when the line
 * does not fit.
 */
em_err_t em__config_read_secret_file(const char *what, const char *path, char *buf, size_t size,
                                     em_error_t *err);

/* The longest secret read by em__config_read_secret callers (passwords, PINs). */
#define EM__CONFIG_SECRET_MAX 1024

/*
 * Reads a secret from the environment variable env (when not empty) or the
 * secret file file, into buf (size bytes, NUL-terminated). Refuses an unset
 * variable, an unreadable or too open file, a value that does not fit, and an
 * empty or placeholder secret (em_daemon_secret_is_placeholder); buf is then
 * wiped. what names the key in messages, which never hold the secret.
 * Errors: EM_ERR_CONFIGURATION.
 */
em_err_t em__config_read_secret(const char *what, const char *env, const char *file, char *buf,
                                size_t size, em_error_t *err);

/* ---- --check-config of [keystore], [pki], [dynsec] (config_check_identity.c) */

/* The keystore secret can be read (the key file may be missing: it is made at
 * the first start), the HSM's module loads and takes the PIN, the CA directory
 * opens with them (which proves the passphrase), the CA and CRL files load,
 * the dynsec password can be read. Errors: EM_ERR_CONFIGURATION and the
 * libraries' errors, each naming the key. */
em_err_t em__config_check_identity(const em_daemon_config_t *cfg, em_error_t *err);

#endif /* EMIOT_DAEMON_CONFIG_INTERNAL_H */
