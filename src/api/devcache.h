/*
 * emiot - devcache.h (internal): stored device records kept in memory for the
 * API's reads of one device (GET /api/v1/devices/{id}).
 *
 * The store is the truth for a device's name, type, configuration, enabled
 * flag and times, but reading it costs a transaction (two file locks in
 * SQLite, a round trip to PostgreSQL) on the API's hottest route. The cache is
 * direct-mapped (EM__DEVCACHE_SLOTS slots, a record in the slot its id hashes
 * to, replacing what was there), so it is bounded and never searches. A
 * record is used for at most EM__DEVCACHE_TTL_MS after it was read; every
 * write to a device through this API forgets it at once, so only a change
 * made by another daemon sharing the store shows this late.
 *
 * Everything runs on the event loop's thread: nothing is locked.
 */
#ifndef EM_API_DEVCACHE_H
#define EM_API_DEVCACHE_H

#include <stdint.h>

#include "emiot/api.h"
#include "emiot/error.h"
#include "emiot/store.h"

#define EM__DEVCACHE_SLOTS  4096 /* a power of two */
#define EM__DEVCACHE_TTL_MS 1000

typedef struct em__devcache em__devcache_t;

/* A new, empty cache. NULL when memory ran out. */
em__devcache_t *em__devcache_new(void);

/* Frees the cache. Accepts NULL. */
void em__devcache_free(em__devcache_t *c);

/*
 * Fills *out with the stored record of device id: the cached one when it was
 * read less than EM__DEVCACHE_TTL_MS before mono_ms (monotonic), else the
 * store's (em_store_device_get), which is then cached. Errors as
 * em_store_device_get (EM_ERR_DEVICE_NOT_FOUND, the store's); a failed or
 * empty read caches nothing.
 */
em_err_t em__devcache_get(em_api_t *api, const char *id, int64_t mono_ms, em_store_device_t *out,
                          em_error_t *err);

/* Forgets the record of id (after a write to it, whether or not it worked). */
void em__devcache_forget(em_api_t *api, const char *id);

#endif /* EM_API_DEVCACHE_H */
