/*
 * emiot - command.h: commands to devices and their responses.
 *
 * Wire format (P<id>/command):
 *   {"type":"sleep","payload":{"duration":3600},"timestamp":1700000000000,
 *    "requestId":"req_..."}
 * Payload rules (checked before anything is sent):
 *   sleep                   {duration?: integer seconds 1..604800}
 *   wake, restart, get_status  {} or no payload
 *   update                  {version?: 1-31 of [0-9A-Za-z.+_-]}
 *   set_reporting_interval  {interval: integer seconds 10..3600} (required)
 *   configure               {...}: a non-empty object; the keys of a device
 *                           configuration are range checked as em_device_config_t,
 *                           other keys are passed through (bounded size/depth)
 *   reset                   {confirm: true} (required; refused otherwise)
 * Fixed-schema payloads refuse unknown keys.
 */
#ifndef EMIOT_COMMAND_H
#define EMIOT_COMMAND_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "emiot/error.h"
#include "emiot/export.h"

#ifdef __cplusplus
extern "C" {
#endif

typedef enum em_command_type {
    EM_CMD_SLEEP = 0,
    EM_CMD_WAKE = 1,
    EM_CMD_RESTART = 2,
    EM_CMD_UPDATE = 3,
    EM_CMD_SET_REPORTING_INTERVAL = 4,
    EM_CMD_GET_STATUS = 5,
    EM_CMD_CONFIGURE = 6,
    EM_CMD_RESET = 7
} em_command_type_t;

#define EM_CMD_TYPE_COUNT       8
#define EM_SLEEP_DURATION_MIN   1
#define EM_SLEEP_DURATION_MAX   604800
#define EM_CMD_INTERVAL_MIN     10
#define EM_CMD_INTERVAL_MAX     3600
#define EM_CMD_PAYLOAD_MAX      4096 /* bytes of compact payload JSON */
#define EM_REQUEST_ID_MAX       64   /* longest requestId accepted from a device */
#define EM_REQUEST_ID_LEN       36   /* "req_" + 32 hex characters, as emiot makes them */
#define EM_RESPONSE_MESSAGE_MAX 512
#define EM_COMMAND_WIRE_MAX     (EM_CMD_PAYLOAD_MAX + 256) /* largest encoded command */

/*
 * A command. payload_json is a compact JSON object owned by the command (NULL
 * means no payload). Initialise with em_command_init, free with
 * em_command_cleanup.
 */
typedef struct em_command {
    em_command_type_t type;
    char *payload_json;
    int64_t timestamp_ms;
    char request_id[EM_REQUEST_ID_MAX + 1];
} em_command_t;

/* "sleep", "wake", ..., NULL when out of range. */
EM_EXPORT const char *em_command_type_name(em_command_type_t type);
EM_EXPORT em_err_t em_command_type_parse(const char *name, size_t len, em_command_type_t *out,
                                         em_error_t *err);

/*
 * Builds a validated command: checks payload (JSON object text or NULL; not
 * NUL-terminated, payload_len bytes) against type's rules, stores its compact
 * form, stamps timestamp (now) and a fresh requestId "req_" + 32 random hex
 * digits (from the OS CSPRNG). On failure cmd holds nothing to free.
 * Errors: EM_ERR_VALIDATION, EM_ERR_MESSAGE_FORMAT, EM_ERR_NOMEM, EM_ERR_INTERNAL
 * (no randomness).
 */
EM_EXPORT em_err_t em_command_init(em_command_t *cmd, em_command_type_t type, const char *payload,
                                   size_t payload_len, em_error_t *err);

EM_EXPORT void em_command_cleanup(em_command_t *cmd);

/* Validates a payload for type without building a command. */
EM_EXPORT em_err_t em_command_validate(em_command_type_t type, const char *payload,
                                       size_t payload_len, em_error_t *err);

/* Encodes cmd in the wire format into buf. EM_ERR_BUFFER_TOO_SMALL. */
EM_EXPORT em_err_t em_command_encode(const em_command_t *cmd, char *buf, size_t size,
                                     size_t *out_len);

/*
 * Decodes a command as a device receives it (the agent uses this): type known,
 * payload valid for the type, requestId 1-64 of [A-Za-z0-9_-], timestamp a
 * number. On success cmd must be cleaned up.
 */
EM_EXPORT em_err_t em_command_decode(const char *json, size_t len, em_command_t *cmd,
                                     em_error_t *err);

/* Fills buf with "req_" + 32 hex digits from the CSPRNG (size >= 37). */
EM_EXPORT em_err_t em_request_id_new(char *buf, size_t size);

/* A device's answer on P<id>/response. */
typedef struct em_response {
    char request_id[EM_REQUEST_ID_MAX + 1];
    bool success;
    char message[EM_RESPONSE_MESSAGE_MAX + 1]; /* "" when absent */
    int64_t timestamp_ms;                      /* 0 when absent */
    char *data_json;                           /* optional "data" object, or NULL */
} em_response_t;

/* requestId and success are required. Errors: EM_ERR_MESSAGE_FORMAT,
 * EM_ERR_VALIDATION, EM_ERR_NOMEM. On success, clean up with em_response_cleanup. */
EM_EXPORT em_err_t em_response_decode(const char *payload, size_t len, em_response_t *out,
                                      em_error_t *err);
EM_EXPORT em_err_t em_response_encode(const em_response_t *r, char *buf, size_t size,
                                      size_t *out_len);
EM_EXPORT void em_response_cleanup(em_response_t *r);

#ifdef __cplusplus
}
#endif

#endif /* EMIOT_COMMAND_H */
