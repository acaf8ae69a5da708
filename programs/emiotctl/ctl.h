/*
 * emiotctl - ctl.h: what the parts of the CLI share.
 *
 * main.c parses the global options and finds the command; conf.c resolves the
 * connection settings (flags, then environment, then a config file) and reads
 * the API key; http.c sends requests with libcurl and turns every failure
 * into a message and an exit code; output.c prints tables or JSON; cmd_*.c
 * hold the commands, one area per file.
 */
#ifndef EMIOTCTL_CTL_H
#define EMIOTCTL_CTL_H

#include <cjson/cJSON.h>
#include <getopt.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>

#define PROGRAM "emiotctl"

/* Exit codes scripts can rely on (docs/EMIOTCTL.md). */
enum {
    CTL_OK = 0,
    CTL_ERROR = 1,     /* anything else */
    CTL_USAGE = 2,     /* bad command line */
    CTL_CONNECT = 3,   /* connection or TLS failure */
    CTL_AUTH = 4,      /* 401 */
    CTL_PERM = 5,      /* 403 */
    CTL_NOTFOUND = 6,  /* 404 */
    CTL_INVALID = 7,   /* 400, 409, 413, or refused before sending */
    CTL_RATE = 8,      /* 429 */
    CTL_SERVER = 9,    /* 5xx */
    CTL_HELP_DONE = -1 /* internal: --help printed, exit 0 */
};

/* Limits: everything read from outside has a maximum. */
#define CTL_RESPONSE_MAX    ((size_t)16 * 1024 * 1024) /* bytes of one answer */
#define CTL_SECRET_MAX      8192                       /* an API key or a JWT */
#define CTL_CONF_MAX        65536                      /* bytes of the config file */
#define CTL_PATH_MAX        4096
#define CTL_URL_MAX         2048
#define CTL_POS_MAX         4      /* positional arguments of one command */
#define CTL_PAGES_MAX       100000 /* pages fetched by --all */
#define CTL_ITEMS_MAX       1000000
#define CTL_TIMEOUT_DEFAULT 30 /* seconds for one request */
#define CTL_TIMEOUT_MAX     3600
#define CTL_CONNECT_TIMEOUT 10

typedef enum { CTL_OUT_TABLE, CTL_OUT_JSON } ctl_format_t;

typedef struct ctl {
    /* Settings given as flags (pointers into argv). */
    const char *flag_url, *flag_ca, *flag_key_file, *flag_cert, *flag_key, *flag_config;
    ctl_format_t format;
    bool quiet;
    long timeout_s;
    /* Resolved settings (owned), filled by ctl_resolve. */
    bool resolved;
    char *url; /* base URL without a trailing slash */
    char *ca;
    char *cert;
    char *tls_key;
    char *secret; /* API key or JWT; wiped and freed by ctl_cleanup */
    size_t secret_len;
    void *curl; /* CURL *, reused between requests (keep-alive) */
} ctl_t;

/* One command: "devices list" and so on. */
typedef struct ctl_cmd {
    const char *area;
    const char *action;
    int (*run)(ctl_t *c, const struct ctl_cmd *cmd, int argc, char **argv);
    int pos_min, pos_max;
    const char *usage;   /* "devices list [--group G] ..." */
    const char *summary; /* one line */
    const char *help;    /* the options, one per line, or NULL */
} ctl_cmd_t;

/* The commands of each area (NULL-area terminated arrays). */
extern const ctl_cmd_t ctl_devices_cmds[];
extern const ctl_cmd_t ctl_groups_cmds[];
extern const ctl_cmd_t ctl_commands_cmds[];
extern const ctl_cmd_t ctl_admin_cmds[];
extern const ctl_cmd_t ctl_identity_cmds[]; /* devices enroll-token, devices certificates */
extern const ctl_cmd_t ctl_mqttcred_cmds[]; /* devices mqtt-credentials */
extern const ctl_cmd_t ctl_pki_cmds[];      /* pki ... (local CA directory) */
extern const ctl_cmd_t ctl_broker_cmds[];   /* broker config */
extern const ctl_cmd_t ctl_keystore_cmds[]; /* keystore seal, open, rekey */

/* ---- main.c: errors and argument parsing ---------------------------------- */

/* Prints "emiotctl: <message>" and, when code is not NULL, " (<code>)", to
 * stderr. Control characters in the message are replaced. */
void ctl_err(const char *code, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

/* The arguments of a command once parsed. */
typedef struct ctl_args {
    int npos;
    const char *pos[CTL_POS_MAX];
} ctl_args_t;

/* Called for each of a command's own options; returns 0 or an exit code. */
typedef int (*ctl_opt_fn)(void *ud, int id, const char *arg);

/*
 * Parses argv (argv[0] is the action) with the command's own options (opts,
 * may be NULL; ids >= 1000) plus the global ones, which may appear anywhere.
 * Positional arguments go to a (between cmd->pos_min and cmd->pos_max).
 * Returns 0, CTL_HELP_DONE after printing the command's help, or CTL_USAGE
 * after printing what is wrong.
 */
int ctl_parse(ctl_t *c, const ctl_cmd_t *cmd, int argc, char **argv, const struct option *opts,
              ctl_opt_fn fn, void *ud, ctl_args_t *a);

/* Number in [min, max] from a flag: CTL_USAGE when not a number, CTL_INVALID
 * when out of range (a message is printed). */
int ctl_parse_long(const char *flag, const char *arg, long min, long max, long *out);

/* ---- conf.c: settings ------------------------------------------------------ */

/* Resolves url, CA, client certificate and API key (flags, environment,
 * config file). Returns 0 or an exit code after printing why. */
int ctl_resolve(ctl_t *c);

/* Frees what ctl_resolve and the requests left, wiping the secret. */
void ctl_cleanup(ctl_t *c);

/* Opens path for reading and refuses it when group or other may access it, or
 * when it is not a regular file owned by the user (or root). Returns the fd,
 * or -1 after printing why (what names the file's role: "API key file"). */
int ctl_open_private(const char *path, const char *what);

/* ---- http.c: requests ------------------------------------------------------ */

typedef struct ctl_resp {
    long status;
    char *body; /* NUL-terminated */
    size_t len;
    cJSON *json;       /* the parsed answer (NULL when not JSON) */
    const cJSON *data; /* json["data"], or json itself for answers without it */
    bool secret;       /* wipe the body on cleanup */
} ctl_resp_t;

/*
 * Sends method path (from the base URL; path already escaped, may carry a
 * query string) with body (may be NULL). A 2xx answer returns 0 with r
 * filled; anything else prints "emiotctl: <message> (<errorCode>)" and
 * returns the exit code (r is cleaned up, safe to clean again). auth: send
 * the credentials. secret: the answer holds a secret (wiped afterwards).
 */
int ctl_request(ctl_t *c, const char *method, const char *path, const cJSON *body, bool auth,
                bool secret, ctl_resp_t *r);

void ctl_resp_cleanup(ctl_resp_t *r);

/* A growing string for paths and query strings (bounded by CTL_URL_MAX). */
typedef struct ctl_buf {
    char s[CTL_URL_MAX];
    size_t len;
    bool overflow;
    bool has_query;
} ctl_buf_t;

void ctl_buf_init(ctl_buf_t *b, const char *prefix);
void ctl_buf_add(ctl_buf_t *b, const char *s);
/* Appends value percent-encoded (a path segment). */
void ctl_buf_seg(ctl_buf_t *b, const char *value);
/* Appends ?name=value or &name=value (value percent-encoded); NULL skips. */
void ctl_buf_query(ctl_buf_t *b, const char *name, const char *value);
void ctl_buf_query_long(ctl_buf_t *b, const char *name, long value);
/* The string, or NULL (with a message) when it overflowed. */
const char *ctl_buf_get(ctl_buf_t *b);

/*
 * GETs a list (path: b, without the cursor), following the `next` cursor as
 * query parameter cursor_name when all is set (at most CTL_PAGES_MAX pages and
 * CTL_ITEMS_MAX items). *items gets the rows (owned); *next (owned, may be
 * NULL) the cursor of the following page when all is not set. Returns 0 or an
 * exit code (after a message).
 */
int ctl_get_list(ctl_t *c, const ctl_buf_t *b, const char *cursor_name, const char *start, bool all,
                 cJSON **items, char **next);

/* ---- output.c: tables and JSON --------------------------------------------- */

typedef enum {
    COL_STR,  /* string or number, as is */
    COL_TIME, /* RFC 3339 string or epoch ms -> local time */
    COL_LIST, /* array of scalars, comma separated */
    COL_JSON  /* any value, compact JSON */
} ctl_col_kind_t;

typedef struct ctl_col {
    const char *header;
    const char *path; /* "name" or "status.batteryLevel" */
    ctl_col_kind_t kind;
} ctl_col_t;

typedef struct ctl_view {
    const ctl_col_t *cols;
    size_t ncols;
} ctl_view_t;

#define CTL_VIEW(cols)                                                                             \
    {                                                                                              \
        (cols), sizeof(cols) / sizeof((cols)[0])                                                   \
    }

/* Views shared between areas (cmd_devices.c). */
extern const ctl_view_t ctl_device_view;    /* one device */
extern const ctl_view_t ctl_telemetry_view; /* samples and rollups */

/* Prints data: JSON (-o json), nothing (-q), or a table (array) / a list of
 * fields (object) with the view's columns; columns absent from every row are
 * left out, and a view that matches nothing prints every scalar field. */
void ctl_print(const ctl_t *c, const cJSON *data, const ctl_view_t *view);

/* One authenticated request whose answer is printed with view. Returns 0 or
 * an exit code. */
int ctl_call(ctl_t *c, const char *method, const char *path, const cJSON *body,
             const ctl_view_t *view);

/* The same for an action whose answer says only that it was done: a table
 * prints done (a line of text), -o json the answer. */
int ctl_call_done(ctl_t *c, const char *method, const char *path, const cJSON *body,
                  const char *done);

/* Prints a list's rows, and in a table a hint naming the next page's flag. */
void ctl_print_list(const ctl_t *c, const cJSON *items, const ctl_view_t *view, const char *next,
                    const char *next_flag);

/* Prints v as indented JSON on stdout. */
void ctl_print_json(const cJSON *v);

/* Writes s to out with control characters replaced by '?' (answers come from
 * the network and must not drive the terminal). */
void ctl_put_safe(FILE *out, const char *s);

/* Formats an RFC 3339 string or epoch-ms number as local "YYYY-MM-DD
 * HH:MM:SS"; falls back to the raw text. */
void ctl_format_time(const cJSON *v, char *buf, size_t size);

/* ---- shared checks (main.c) ------------------------------------------------ */

/* Each prints the rule and returns CTL_INVALID, or returns 0. */
int ctl_check_device_id(const char *id);
int ctl_check_group(const char *name);
int ctl_check_name(const char *flag, const char *name);
int ctl_check_token(const char *what, const char *s); /* [A-Za-z0-9_-], 1-64 */
int ctl_check_one_of(const char *flag, const char *value, const char *const *allowed);
int ctl_check_time(const char *flag, const char *value);
/* Parses a JSON object given on the command line into *out (owned). */
int ctl_parse_json_object(const char *flag, const char *text, cJSON **out);

/* Writes secret and a newline to a new file (O_EXCL, 0600). fd from
 * ctl_create_private. Returns 0 or CTL_ERROR. */
int ctl_create_private(const char *path);
int ctl_write_secret(int fd, const char *path, const char *secret);

/* ==== secret.c: local secrets for pki, broker and keystore (helper "ctl") ====
 * These commands work on local files and never talk to emiotd. Their secrets
 * never come from the command line: the keystore passphrase from
 * EMIOT_KEYSTORE_PASSPHRASE or --passphrase-file, a keystore key file from
 * --keystore-key-file, an HSM PIN from EMIOT_PKCS11_PIN or --pin-file. */

#include <sys/types.h>

#include "emiot/error.h"
#include "emiot/keystore.h"

#define CTL_ENV_PASSPHRASE     "EMIOT_KEYSTORE_PASSPHRASE"
#define CTL_ENV_NEW_PASSPHRASE "EMIOT_KEYSTORE_NEW_PASSPHRASE"
#define CTL_ENV_SCRYPT_COST    "EMIOT_KEYSTORE_SCRYPT_COST" /* log2 N, 14-20 */
#define CTL_ENV_PIN            "EMIOT_PKCS11_PIN"
#define CTL_ENV_PKI_DIR        "EMIOT_PKI_DIR"
#define CTL_PIN_MAX            256

/* Option ids of the shared local options (ctl_parse ids >= 1000). */
enum {
    CTL_SOPT_DIR = 1900,
    CTL_SOPT_PASSPHRASE_FILE,
    CTL_SOPT_KEY_FILE,
    CTL_SOPT_PKCS11_MODULE,
    CTL_SOPT_PIN_FILE
};

/* The struct option entries of those options, for a command's table. */
#define CTL_SECRET_OPTIONS                                                                         \
    {"dir", required_argument, NULL, CTL_SOPT_DIR},                                                \
        {"passphrase-file", required_argument, NULL, CTL_SOPT_PASSPHRASE_FILE},                    \
        {"keystore-key-file", required_argument, NULL, CTL_SOPT_KEY_FILE},                         \
        {"pkcs11-module", required_argument, NULL, CTL_SOPT_PKCS11_MODULE},                        \
    {                                                                                              \
        "pin-file", required_argument, NULL, CTL_SOPT_PIN_FILE                                     \
    }

/* Their help lines. */
#define CTL_SECRET_HELP                                                                            \
    "  --dir D                  the CA directory (env EMIOT_PKI_DIR)\n"                            \
    "  --passphrase-file F      keystore passphrase, first line of F (mode 0600);\n"               \
    "                           default: env EMIOT_KEYSTORE_PASSPHRASE\n"                          \
    "  --keystore-key-file F    open the keystore with a key file instead\n"                       \
    "  --pkcs11-module PATH     the CA key is in an HSM: its PKCS#11 module\n"                     \
    "  --pin-file F             the token's user PIN (default: env EMIOT_PKCS11_PIN)\n"

typedef struct ctl_secret_opts {
    const char *dir;
    const char *passphrase_file;
    const char *key_file;
    const char *pkcs11_module;
    const char *pin_file;
} ctl_secret_opts_t;

/* Stores a shared option's value; false when id is not one of them. */
bool ctl_secret_opt(ctl_secret_opts_t *s, int id, const char *arg);

/* The CA directory: --dir, else EMIOT_PKI_DIR; NULL (after a message) when
 * neither is set. */
const char *ctl_secret_dir(const ctl_secret_opts_t *s);

/*
 * The secret that seals or opens keystores: key_file (a keystore key file),
 * else pass_file (first line), else the environment variable env_var (wiped
 * from the environment once read). The scrypt cost comes from
 * EMIOT_KEYSTORE_SCRYPT_COST when set. Returns 0 or an exit code after a
 * message; *out belongs to the caller (em_keystore_secret_free).
 */
int ctl_secret_keystore(const char *key_file, const char *pass_file, const char *env_var,
                        em_keystore_secret_t **out);

/* The HSM of s->pkcs11_module, logged in with the PIN from --pin-file or
 * EMIOT_PKCS11_PIN. Returns 0 or an exit code; *out: em_pkcs11_free. */
int ctl_secret_pkcs11(const ctl_secret_opts_t *s, em_pkcs11_t **out);

/* Prints "emiotctl: <what>: <message> (<type>)" for a libemiot error and
 * returns the exit code for it (validation 7, not found 6, configuration 2,
 * authentication 4, others 1). */
int ctl_em_fail(const char *what, const em_error_t *e);

/* Reads a whole regular file of at most max bytes (NUL added). private:
 * refuse a file group or others may read, and wipe the buffer on free.
 * Returns 0 or an exit code; *out: ctl_free_file(*out, *len). */
int ctl_read_file(const char *path, const char *what, size_t max, bool private_file, char **out,
                  size_t *len);
void ctl_free_file(char *data, size_t len);

/* Creates path (O_EXCL, mode) and writes len bytes, then fsync. On failure
 * the file is removed. Returns 0 or an exit code. */
int ctl_write_new_file(const char *path, mode_t mode, const void *data, size_t len);

/* Creates path for writing (O_EXCL, O_NOFOLLOW, mode): never overwrites.
 * Returns the descriptor, or -1 after a message (errno kept: EEXIST when the
 * file is there). */
int ctl_create_new_file(const char *path, mode_t mode);

/* Writes len bytes of data to fd (the file path, for the message), then
 * fsync. Returns 0 or CTL_ERROR after a message; fd stays open. */
int ctl_write_fd(int fd, const char *path, const void *data, size_t len);

/* Shows the answer r of a request for a secret, or writes the secret to fd
 * (out: its file's name) when fd >= 0. Returns 0 or an exit code. */
typedef int (*ctl_show_secret_fn)(ctl_t *c, ctl_resp_t *r, int fd, const char *out);

/*
 * POSTs body (may be NULL) to path, whose answer holds a secret shown once,
 * in its string field: with out, the file out is created first (O_EXCL,
 * 0600, before anything is asked of the server) and show writes the secret
 * there; then field's string is wiped in the answer and the answer cleaned
 * up. A failure removes out: no half-written or empty file is left behind.
 * Returns 0 or an exit code.
 */
int ctl_post_secret(ctl_t *c, const char *path, const cJSON *body, const char *field,
                    const char *out, ctl_show_secret_fn show);

/* ==== end of secret.c's declarations ==================================== */

#endif /* EMIOTCTL_CTL_H */
