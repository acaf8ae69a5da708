/*
 * emiot - clock.h: wall-clock time and ISO 8601 / RFC 3339 timestamps.
 *
 * emiot keeps times as int64_t milliseconds since the Unix epoch (UTC), the
 * unit of energy-manager-iot's numeric timestamps.
 */
#ifndef EMIOT_CLOCK_H
#define EMIOT_CLOCK_H

#include <stddef.h>
#include <stdint.h>

#include "emiot/error.h"
#include "emiot/export.h"

#ifdef __cplusplus
extern "C" {
#endif

/* Buffer size that holds any timestamp em_time_format() writes, with its NUL. */
#define EM_TIME_STR_MAX 32

/* Current wall-clock time in epoch milliseconds. */
EM_EXPORT int64_t em_now_ms(void);

/* Monotonic clock in milliseconds, for timeouts and rate limits. */
EM_EXPORT int64_t em_mono_ms(void);

/*
 * Parses an RFC 3339 timestamp: "2026-11-22T10:00:00Z", with optional
 * fraction of a second (up to 9 digits) and "Z" or "+hh:mm"/"-hh:mm" offset;
 * 't' and 'z' accepted. Years 1970-9999. The string need not be NUL-terminated.
 * Errors: EM_ERR_VALIDATION (err->message says which part is wrong).
 */
EM_EXPORT em_err_t em_time_parse(const char *s, size_t len, int64_t *out_ms, em_error_t *err);

/* Writes ms as "YYYY-MM-DDTHH:MM:SS.mmmZ" into buf (at least EM_TIME_STR_MAX
 * bytes). Returns the length written. Years outside 0000-9999 are written in
 * ISO 8601's expanded form ("+010000-01-01T..."), as JavaScript does. When
 * size is too small, writes "" (if size > 0) and returns 0. */
EM_EXPORT size_t em_time_format(int64_t ms, char *buf, size_t size);

#ifdef __cplusplus
}
#endif

#endif /* EMIOT_CLOCK_H */
