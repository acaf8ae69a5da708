/*
 * emiot - error.h: error codes and error details.
 *
 * Every fallible function returns an em_err_t; EM_OK (0) is success. Codes
 * are only ever added at the end of the table, never renumbered. Where a caller
 * needs to know more (which field, which rule), functions also fill an
 * optional em_error_t supplied by the caller.
 */
#ifndef EMIOT_ERROR_H
#define EMIOT_ERROR_H

#include <stddef.h>

#include "emiot/export.h"

#ifdef __cplusplus
extern "C" {
#endif

/*
 * X(NAME, value, type_name, description)
 * type_name follows energy-manager-iot's error categories where one exists.
 */
#define EM_ERR_TABLE(X)                                                                            \
    X(OK, 0, "ok", "success")                                                                      \
    X(CONNECTION, 1, "connection", "connection to the broker failed or lost")                      \
    X(VALIDATION, 2, "validation", "a value breaks a validation rule")                             \
    X(AUTHENTICATION, 3, "authentication", "authentication failed")                                \
    X(DEVICE_NOT_FOUND, 4, "device_not_found", "no such device")                                   \
    X(GROUP_NOT_FOUND, 5, "group_not_found", "no such group")                                      \
    X(COMMAND_FAILED, 6, "command_failed", "the command could not be sent")                        \
    X(CONFIGURATION, 7, "configuration", "invalid configuration")                                  \
    X(TIMEOUT, 8, "timeout", "the operation timed out")                                            \
    X(MESSAGE_FORMAT, 9, "message_format", "malformed message")                                    \
    X(PROTOCOL, 10, "protocol", "protocol error")                                                  \
    X(PERMISSION_DENIED, 11, "permission_denied", "permission denied")                             \
    X(RATE_LIMIT_EXCEEDED, 12, "rate_limit_exceeded", "rate limit exceeded")                       \
    X(INTERNAL, 13, "internal", "internal error")                                                  \
    X(NOMEM, 14, "out_of_memory", "out of memory")                                                 \
    X(INVALID_ARGUMENT, 15, "invalid_argument", "invalid argument")                                \
    X(EXISTS, 16, "already_exists", "already exists")                                              \
    X(LIMIT, 17, "limit_reached", "a configured maximum was reached")                              \
    X(TLS, 18, "tls", "TLS set-up or verification failed")                                         \
    X(NOT_CONNECTED, 19, "not_connected", "not connected to the broker")                           \
    X(IO, 20, "io", "input/output error")                                                          \
    X(BUFFER_TOO_SMALL, 21, "buffer_too_small", "output buffer too small")                         \
    X(STATE, 22, "invalid_state", "operation not valid in the current state")                      \
    X(NOT_FOUND, 23, "not_found", "no such object")                                                \
    X(CRYPTO, 24, "crypto", "a cryptographic check failed (wrong key, bad signature, tampering)")  \
    X(CERTIFICATE, 25, "certificate", "certificate refused (trust, validity, revocation, usage)")

typedef enum em_err {
#define EM__ERR_ENUM(name, value, type_name, desc) EM_ERR_##name = (value),
    EM_ERR_TABLE(EM__ERR_ENUM)
#undef EM__ERR_ENUM
} em_err_t;

/* EM_OK is the usual spelling of success. */
#define EM_OK EM_ERR_OK

typedef enum em_severity {
    EM_SEV_LOW = 0,
    EM_SEV_MEDIUM = 1,
    EM_SEV_HIGH = 2,
    EM_SEV_CRITICAL = 3
} em_severity_t;

#define EM_ERROR_FIELD_MAX   64
#define EM_ERROR_MESSAGE_MAX 192
#define EM_ERROR_DEVICE_MAX  50

/*
 * Details of an error. Callers allocate it (usually on the stack) and pass a
 * pointer; functions that fail fill it, functions that succeed leave it alone.
 * No field ever holds a secret.
 */
typedef struct em_error {
    em_err_t code;
    em_severity_t severity;
    char field[EM_ERROR_FIELD_MAX + 1];      /* offending field, "" if none */
    char device_id[EM_ERROR_DEVICE_MAX + 1]; /* device concerned, "" if none */
    char message[EM_ERROR_MESSAGE_MAX + 1];  /* the rule that was broken */
} em_error_t;

/* Human-readable description of code; never NULL ("unknown error" if unknown). */
EM_EXPORT const char *em_strerror(em_err_t code);

/* The error's type name ("validation", "rate_limit_exceeded", ...); never NULL. */
EM_EXPORT const char *em_err_name(em_err_t code);

/* The name of a severity ("low", "medium", "high", "critical"). */
EM_EXPORT const char *em_severity_name(em_severity_t sev);

/*
 * Fills err (when not NULL) with code, severity, field (may be NULL) and a
 * printf-style message, truncating each to its buffer. Returns code, so a
 * failing function can `return em_error_set(err, ...)`.
 */
EM_EXPORT em_err_t em_error_set(em_error_t *err, em_err_t code, em_severity_t sev,
                                const char *field, const char *fmt, ...) EM_PRINTF(5, 6);

/* Sets err->device_id (truncated) when err is not NULL. */
EM_EXPORT void em_error_set_device(em_error_t *err, const char *device_id);

/* Resets err to EM_OK with empty strings. Accepts NULL. */
EM_EXPORT void em_error_clear(em_error_t *err);

#ifdef __cplusplus
}
#endif

#endif /* EMIOT_ERROR_H */
