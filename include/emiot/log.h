/*
 * emiot - log.h: the structured logger.
 *
 * One process-wide logger writes JSON lines:
 *   {"ts":"2026-11-22T10:00:00.123Z","level":"info","module":"mqtt",
 *    "msg":"connected","cid":"req_ab12","broker":"mqtts://..."}
 * cid is left out when NULL, module too. A field whose key is one of the
 * line's own ("ts", "level", "module", "msg", "cid", "truncated") is written
 * with a leading '_'. Strings are escaped (\n, \r, \t; other control
 * characters, DEL, U+2028 and U+2029 as \uXXXX) and invalid UTF-8 bytes
 * become U+FFFD.
 *
 * Fields whose key names a secret (see em_log_key_is_secret) are written as
 * "[REDACTED]" whatever their value and kind. Messages must not embed secrets;
 * the logger additionally masks, inside msg: the value after a secret name
 * and '=' or ':' ("password=...", "token: ...", "\"apiKey\":\"...\"",
 * "Authorization: Bearer ..."), JWT-like strings ("eyJ..." with three or more
 * dot-separated base64url segments), emiot API keys ("iot_" and 48 hex
 * digits) and the password of "scheme://user:password@host". Field values
 * other than secrets are written as given.
 *
 * The logger is thread-safe: each line is formatted into a bounded buffer and
 * written by one call to the sink, so lines never interleave.
 */
#ifndef EMIOT_LOG_H
#define EMIOT_LOG_H

#include <stdarg.h>
#include <stddef.h>

#include "emiot/export.h"

#ifdef __cplusplus
extern "C" {
#endif

typedef enum em_log_level {
    EM_LOG_TRACE = 0,
    EM_LOG_DEBUG = 1,
    EM_LOG_INFO = 2,
    EM_LOG_WARN = 3,
    EM_LOG_ERROR = 4,
    EM_LOG_FATAL = 5,
    EM_LOG_OFF = 6
} em_log_level_t;

/* A line is at most EM_LOG_LINE_MAX - 1 bytes, newline included. A longer
 * one is truncated, stays valid JSON and ends with "truncated":true: fields
 * are dropped from the end (a long string value is cut instead) and the
 * message keeps up to its first 512 bytes. */
#define EM_LOG_LINE_MAX 2048

/* One structured field. Use the EM_LOG_* helpers below to build them. */
typedef enum em_log_field_kind {
    EM_LOG_FIELD_STR,
    EM_LOG_FIELD_INT,
    EM_LOG_FIELD_DOUBLE,
    EM_LOG_FIELD_BOOL
} em_log_field_kind_t;

typedef struct em_log_field {
    const char *key;
    em_log_field_kind_t kind;
    const char *s;
    long long i;
    double d;
} em_log_field_t;

#define EM_LOG_STR(k, v)  ((em_log_field_t){(k), EM_LOG_FIELD_STR, (v), 0, 0.0})
#define EM_LOG_INT(k, v)  ((em_log_field_t){(k), EM_LOG_FIELD_INT, NULL, (long long)(v), 0.0})
#define EM_LOG_DBL(k, v)  ((em_log_field_t){(k), EM_LOG_FIELD_DOUBLE, NULL, 0, (double)(v)})
#define EM_LOG_BOOL(k, v) ((em_log_field_t){(k), EM_LOG_FIELD_BOOL, NULL, (v) ? 1 : 0, 0.0})

/*
 * Where finished lines go. line is NUL-terminated, ends with '\n', and is only
 * valid during the call. The default sink writes to stderr.
 */
typedef void (*em_log_sink_fn)(em_log_level_t level, const char *line, size_t len, void *userdata);

/* Sets the minimum level written (default EM_LOG_INFO; EM_LOG_OFF writes
 * nothing). A value that is not a level is ignored. */
EM_EXPORT void em_log_set_level(em_log_level_t level);
EM_EXPORT em_log_level_t em_log_get_level(void);

/*
 * Replaces the sink; NULL restores the default stderr sink (userdata is then
 * ignored). When it returns, no other thread is still inside the previous
 * sink, so that sink's userdata may be freed. A sink may log or call this
 * function itself, but must not wait for another thread that is calling it.
 */
EM_EXPORT void em_log_set_sink(em_log_sink_fn sink, void *userdata);

/* Parses "trace".."fatal", "off"; returns -1 for anything else. */
EM_EXPORT int em_log_level_parse(const char *name);
EM_EXPORT const char *em_log_level_name(em_log_level_t level);

/* True when a line at level would be written: check before costly formatting. */
EM_EXPORT int em_log_enabled(em_log_level_t level);

/*
 * Writes one line. module names the part of emiot ("mqtt", "manager", ...);
 * cid is a correlation id (a requestId, say) or NULL; msg is plain text;
 * fields may be NULL when nfields is 0.
 */
EM_EXPORT void em_log(em_log_level_t level, const char *module, const char *cid, const char *msg,
                      const em_log_field_t *fields, size_t nfields);

/* printf-style convenience without fields. */
EM_EXPORT void em_logf(em_log_level_t level, const char *module, const char *fmt, ...)
    EM_PRINTF(3, 4);

/*
 * True when key names a secret and its value would be redacted: the key,
 * lower-cased and with separators dropped, contains password, passwd,
 * passphrase, secret, token, apikey, credential, cookie, private or
 * authorization; or one of its words (split at separators and camelCase)
 * starts or ends with "key" or "pass" ("keyfile", "privKey"), or is "auth",
 * "pwd" or "jwt". Errs on the side of redacting. NULL and "" are not secret.
 */
EM_EXPORT int em_log_key_is_secret(const char *key);

#ifdef __cplusplus
}
#endif

#endif /* EMIOT_LOG_H */
