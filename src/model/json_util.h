/*
 * emiot - json_util.h (internal): small helpers shared by the model encoders
 * and decoders of devices, commands and responses.
 *
 * em__jw_* is a bounded writer into a caller's buffer: it never allocates and
 * never writes past the buffer; once something does not fit it remembers the
 * overflow and em__jw_finish reports EM_ERR_BUFFER_TOO_SMALL.
 */
#ifndef EM_MODEL_JSON_UTIL_H
#define EM_MODEL_JSON_UTIL_H

#include <cjson/cJSON.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include "emiot/device.h"
#include "emiot/error.h"

/* Results of em__utf8_check. */
#define EM__UTF8_OK      0
#define EM__UTF8_INVALID 1 /* malformed, overlong, surrogate or above U+10FFFF */
#define EM__UTF8_CONTROL 2 /* a C0 or C1 control character, or DEL */

/* Checks that s (len bytes) is well-formed UTF-8. With reject_control, C0
 * controls (including NUL), DEL and C1 controls (U+0080..U+009F) are refused. */
int em__utf8_check(const char *s, size_t len, bool reject_control);

/* 1 when every byte of s is in [A-Za-z0-9_-] (the request id alphabet). */
bool em__is_token(const char *s, size_t len);

typedef struct em__jw {
    char *buf;
    size_t size;
    size_t len;
    bool overflow;
} em__jw_t;

void em__jw_init(em__jw_t *w, char *buf, size_t size);

/* Appends n raw bytes. Inline: the command encoder, which the group fan-out
 * runs once per device, is a handful of these. */
static inline void em__jw_raw(em__jw_t *w, const char *s, size_t n)
{
    if (w->overflow)
        return;
    /* One byte is always kept for the terminating NUL. */
    if (w->size == 0 || n > w->size - 1 - w->len) {
        w->overflow = true;
        return;
    }
    memcpy(w->buf + w->len, s, n);
    w->len += n;
}

/* Appends a string literal. */
#define em__jw_lit(w, lit) em__jw_raw((w), (lit), sizeof(lit) - 1)

/* Appends s (len bytes) as a quoted JSON string, escaping '"', '\\' and
 * control characters (bytes >= 0x80 are copied: callers pass valid UTF-8). */
void em__jw_str(em__jw_t *w, const char *s, size_t len);

/* Appends v in decimal. */
void em__jw_i64(em__jw_t *w, int64_t v);

/* NUL-terminates the output. EM_OK with the length (without the NUL) in
 * *out_len (when not NULL), or EM_ERR_BUFFER_TOO_SMALL (buf then holds "" when
 * it has room for anything). */
em_err_t em__jw_finish(em__jw_t *w, size_t *out_len);

/*
 * Reads item as an integer in [min, max] (|bounds| <= 2^53). Numbers with a
 * fraction, strings, booleans and non-finite values are refused with
 * EM_ERR_VALIDATION naming field: "must be an integer from <min> to <max>".
 */
em_err_t em__json_int(const cJSON *item, const char *field, int64_t min, int64_t max, int64_t *out,
                      em_error_t *err);

/* Number of members of obj called key (cJSON keeps duplicates). */
size_t em__json_key_count(const cJSON *obj, const char *key);

/*
 * Reads the device configuration keys of obj (a JSON object) into out (zeroed
 * first; out->has says which were present), range checking each as
 * em_device_config_validate does. A configuration key given twice is refused.
 * With allow_unknown, other keys are skipped (the configure command passes
 * them through); without it they are refused. Errors: EM_ERR_VALIDATION with
 * err->field naming the key. Implemented in device_json.c.
 */
em_err_t em__device_config_from_json(const cJSON *obj, bool allow_unknown, em_device_config_t *out,
                                     em_error_t *err);

/*
 * Reads obj's "requestId" (required, once): 1-EM_REQUEST_ID_MAX characters of
 * [A-Za-z0-9_-], copied NUL-terminated into out (size bytes). Errors:
 * EM_ERR_VALIDATION (field "requestId"). Implemented in command.c.
 */
em_err_t em__request_id_read(const cJSON *obj, char *out, size_t size, em_error_t *err);

#endif /* EM_MODEL_JSON_UTIL_H */
