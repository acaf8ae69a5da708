/*
 * emiot - nonce.h (internal): the challenge nonces of device
 * challenge-response (docs/API.md, "Device identity").
 *
 * A nonce is 32 random bytes, shown as 43 characters of base64url without
 * padding, bound to the device id it was asked for, valid for a fixed time
 * and good for one presentation: it is removed the first time it is shown,
 * whatever the outcome. The table has a fixed capacity; expired nonces are
 * swept when a new one is made, and a full table refuses new ones.
 *
 * One thread (the API's event loop) uses a table: nothing is locked.
 */
#ifndef EM_API_NONCE_H
#define EM_API_NONCE_H

#include <stddef.h>
#include <stdint.h>

#include "emiot/device.h"
#include "emiot/error.h"

#define EM__NONCE_BYTES   32
#define EM__NONCE_TEXT    43 /* base64url characters, no padding */
#define EM__NONCES_MAX    1000000
#define EM__NONCE_TTL_MAX 300 /* seconds */

typedef struct em__nonces em__nonces_t;

/* A table for at most max nonces (1..EM__NONCES_MAX). NULL when max is out
 * of range or memory ran out. */
em__nonces_t *em__nonces_new(size_t max);

/* Wipes and frees. Accepts NULL. */
void em__nonces_free(em__nonces_t *t);

/* Nonces held now (expired ones not yet swept included). */
size_t em__nonces_count(const em__nonces_t *t);

/*
 * Makes a nonce for device_id (a valid device id) at now_ms (a monotonic
 * clock), valid ttl_ms (1..EM__NONCE_TTL_MAX s): its text goes into out
 * (EM__NONCE_TEXT + 1 bytes, NUL-terminated).
 * Errors: EM_ERR_LIMIT when the table is full of unexpired nonces, with
 * *retry_after_s (may be NULL) the whole seconds, at least 1, until the
 * oldest one expires; EM_ERR_INVALID_ARGUMENT; EM_ERR_INTERNAL (the CSPRNG
 * failed).
 */
em_err_t em__nonces_issue(em__nonces_t *t, const char *device_id, int64_t now_ms, int64_t ttl_ms,
                          char out[EM__NONCE_TEXT + 1], uint32_t *retry_after_s);

typedef enum em__nonce_result {
    EM__NONCE_OK = 0,          /* known, unexpired, for this device: now used */
    EM__NONCE_UNKNOWN = 1,     /* malformed, never issued, or already used */
    EM__NONCE_EXPIRED = 2,     /* was issued, its time has passed: now removed */
    EM__NONCE_WRONG_DEVICE = 3 /* was issued for another device: now removed */
} em__nonce_result_t;

/* "ok", "unknown or already used", "expired", "issued for another device". */
const char *em__nonce_result_text(em__nonce_result_t r);

/*
 * Takes the nonce whose text is text (len bytes) for device_id at now_ms: it
 * is removed from the table whatever the result (except UNKNOWN, where there
 * was nothing to remove). The bytes are compared in constant time.
 */
em__nonce_result_t em__nonces_take(em__nonces_t *t, const char *text, size_t len,
                                   const char *device_id, int64_t now_ms);

#endif /* EM_API_NONCE_H */
