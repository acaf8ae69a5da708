/*
 * emiot - json.h (internal): bounded, allocation-light JSON parsing with cJSON.
 *
 * em__json_parse checks the size (EM_PAYLOAD_MAX) and nesting depth
 * (EM_JSON_DEPTH_MAX) before cJSON sees the bytes, then parses with cJSON.
 * While a parse tree from em__json_parse is alive, cJSON's allocations on this
 * thread come from a per-thread arena (a bump allocator reset when the last
 * tree is freed), so decoding a status message costs no malloc. libemiot
 * installs cJSON hooks once (em__json_init); pointers not from the arena are
 * passed to malloc/free, so other cJSON users in the process are unaffected
 * as long as they do not replace the hooks themselves.
 */
#ifndef EM_CORE_JSON_H
#define EM_CORE_JSON_H

#include <cjson/cJSON.h>
#include <stdbool.h>
#include <stddef.h>

#include "emiot/error.h"

/* True when p[0..len) holds no byte >= 0x80, none < 0x20 and no backslash: a
 * compact ASCII payload without escapes (what devices send). Decoders with a
 * fast path for that shape use it to choose (src/model/status_fast.c). */
bool em__json_plain_ascii(const char *p, size_t len);

/* Installs the allocation hooks (idempotent, thread-safe). */
void em__json_init(void);

/*
 * Parses exactly len bytes (no NUL needed). Returns the root, or NULL with err
 * filled: EM_ERR_MESSAGE_FORMAT ("empty payload", "payload larger than N
 * bytes", "JSON nested deeper than N", "invalid UTF-8 at offset K",
 * "\u0000 in a JSON string at offset K", "invalid JSON at offset K"; bytes
 * after the value other than JSON whitespace are invalid). cJSON cannot tell a
 * failed allocation from bad input, so one is reported as invalid JSON too.
 * The tree must be freed on the thread that parsed it, and no item detached
 * from it may outlive it.
 */
cJSON *em__json_parse(const char *buf, size_t len, em_error_t *err);

/* Frees a tree from em__json_parse, on the thread that parsed it. Trees are
 * read-only: never add, replace or detach items (freeing may skip the walk of
 * a tree that lives wholly in the arena). Accepts NULL. */
void em__json_free(cJSON *root);

/*
 * Prints item compactly into a new heap string (plain malloc, so it may outlive
 * the tree; free with free()). Returns NULL on allocation failure or when the
 * result is longer than max bytes.
 */
char *em__json_print(const cJSON *item, size_t max);

/*
 * Like em__json_print, telling the failures apart: *out gets the string
 * (plain malloc) and EM_OK is returned; EM_ERR_LIMIT when the compact text
 * would be longer than max bytes, EM_ERR_NOMEM, EM_ERR_INVALID_ARGUMENT (NULL
 * item or out). *out is NULL on failure.
 */
em_err_t em__json_print_bounded(const cJSON *item, size_t max, char **out);

#endif /* EM_CORE_JSON_H */
