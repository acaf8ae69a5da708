/*
 * emiot - status_internal.h (internal): the two status decoders behind
 * em_status_decode, and what they share.
 *
 * em_status_decode tries em__status_decode_fast first (jsmn tokens, no
 * allocation, only the common flat shape of a status message) and falls back
 * to em__status_decode_tree (cJSON, every case) whenever the fast path
 * declines. Both must give the same result for every input the fast path
 * decides; fuzz/fuzz_status_fast.c and tests/unit/test_status.c check that.
 */
#ifndef EM_MODEL_STATUS_INTERNAL_H
#define EM_MODEL_STATUS_INTERNAL_H

#include <stdbool.h>
#include <stddef.h>

#include "emiot/error.h"
#include "emiot/status.h"

/* The rules as err->message spells them; one spelling for both decoders. */
#define EM__STATUS_RULE_BATTERY    "must be an integer between 0 and 100"
#define EM__STATUS_RULE_POWER_MODE "must be one of normal, low_power, sleep, critical"
#define EM__STATUS_RULE_CONNECTION "must be one of online, offline, intermittent"
#define EM__STATUS_RULE_FIRMWARE   "must be a string of 1 to 31 characters of 0-9 A-Z a-z . + _ -"
#define EM__STATUS_RULE_SIGNAL     "must be an integer between -150 and 0"
#define EM__STATUS_RULE_ERRORS     "must be an array of at most 16 strings of at most 256 bytes each"
#define EM__STATUS_RULE_EXTRA      "must be a JSON object of at most 4096 bytes as compact JSON"
#define EM__STATUS_RULE_DUPLICATE  "appears more than once"
#define EM__STATUS_RULE_NOT_OBJECT "status must be a JSON object"

#define EM__STATUS_POWER_MODES 5 /* entries of em__status_power_mode_names, [0] NULL */
#define EM__STATUS_CONNS       4 /* entries of em__status_conn_names, [0] NULL */

/* Wire names indexed by em_power_mode_t / em_conn_status_t; [0] is NULL. */
extern const char *const em__status_power_mode_names[EM__STATUS_POWER_MODES];
extern const char *const em__status_conn_names[EM__STATUS_CONNS];

/* True for the bytes a firmware version may hold: [0-9A-Za-z.+_-]. */
static inline bool em__status_firmware_char(unsigned char c)
{
    return (c >= '0' && c <= '9') || (c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') || c == '.' ||
           c == '+' || c == '_' || c == '-';
}

/*
 * The reference decoder, on a cJSON tree: em_status_decode's contract for
 * every input (out must not be NULL; it is zeroed first and holds nothing to
 * free on failure).
 */
em_err_t em__status_decode_tree(const char *payload, size_t len, em_status_t *out, em_error_t *err);

/*
 * The fast decoder, on jsmn tokens, for a compact ASCII payload without
 * escapes holding one flat object whose values are strings, numbers, true,
 * false, null, [] or {} (at most EM_PAYLOAD_MAX bytes, at most 23 members).
 * Returns false ("declined") for anything else, and for anything it is not
 * sure to decide exactly as em__status_decode_tree would (non-integral
 * numbers in known fields, spellings cJSON reads differently); out and err are
 * then untouched. Returns true when it decided: *rc is what
 * em__status_decode_tree would return, and out and err hold what it would
 * have written. Never allocates. out, rc must not be NULL.
 */
bool em__status_decode_fast(const char *payload, size_t len, em_status_t *out, em_error_t *err,
                            em_err_t *rc);

#endif /* EM_MODEL_STATUS_INTERNAL_H */
