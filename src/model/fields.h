/*
 * emiot - fields.h (internal): checks shared by the model decoders (status,
 * telemetry, events, responses, commands, device configurations).
 */
#ifndef EM_MODEL_FIELDS_H
#define EM_MODEL_FIELDS_H

#include <stdbool.h>
#include <stdint.h>

#include "core/json.h"
#include "emiot/error.h"

/*
 * Parses payload (len bytes) with em__json_parse and requires a JSON object:
 * the opening every decoder shares. EM_OK with the tree in *root (free it with
 * em__json_free); otherwise *root is NULL and err is filled: em__json_parse's
 * errors, or EM_ERR_MESSAGE_FORMAT (field, may be NULL, and rule) when the
 * root is not an object.
 */
em_err_t em__field_parse_object(const char *payload, size_t len, const char *field,
                                const char *rule, cJSON **root, em_error_t *err);

/* True when v is a JSON number with an integral value in [lo, hi] (so 50 and
 * 50.0 pass, 50.5, booleans and strings do not); *out gets the value. lo and hi
 * must lie within +-2^53. */
bool em__field_int(const cJSON *v, int64_t lo, int64_t hi, int64_t *out);

/* True when v is a JSON number with a finite value; *out gets it. */
bool em__field_finite(const cJSON *v, double *out);

/*
 * Reads a timestamp: an RFC 3339 string or an integral number of epoch
 * milliseconds (0 .. 253402300799999, the end of year 9999). On failure fills
 * err (EM_ERR_VALIDATION, field) and returns the code.
 */
em_err_t em__field_timestamp(const cJSON *v, const char *field, int64_t *out, em_error_t *err);

/*
 * Copies the container v as compact JSON into *out (heap; free()), or sets *out
 * to NULL when v has no children. EM_ERR_VALIDATION (field, "must be at most N
 * bytes of compact JSON") when longer than max; EM_ERR_NOMEM.
 */
em_err_t em__field_compact(const cJSON *v, const char *field, const char *rule, size_t max,
                           char **out, em_error_t *err);

/* Sets err for a broken rule: EM_ERR_VALIDATION, severity low, field, rule. */
em_err_t em__field_invalid(em_error_t *err, const char *field, const char *rule);

/* Time bound of em__field_timestamp: 9999-12-31T23:59:59.999Z. */
#define EM__TIMESTAMP_MAX_MS 253402300799999LL

#endif /* EM_MODEL_FIELDS_H */
