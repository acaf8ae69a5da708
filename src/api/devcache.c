/*
 * emiot - devcache.c: stored device records kept for the API's reads (see
 * devcache.h).
 */
#include "api/devcache.h"

#include <stdbool.h>
#include <stdlib.h>
#include <string.h>

#include "api/api_core.h"

typedef struct slot {
    bool used;
    int64_t fetched_ms; /* monotonic */
    em_store_device_t dev;
} slot_t;

struct em__devcache {
    slot_t slots[EM__DEVCACHE_SLOTS];
};

em__devcache_t *em__devcache_new(void)
{
    return calloc(1, sizeof(em__devcache_t));
}

void em__devcache_free(em__devcache_t *c)
{
    free(c);
}

/* FNV-1a over the id; ids are at most EM_DEVICE_ID_MAX bytes. */
static slot_t *slot_of(em__devcache_t *c, const char *id)
{
    uint32_t h = 2166136261u;
    for (const char *p = id; *p != '\0'; p++) {
        h ^= (unsigned char)*p;
        h *= 16777619u;
    }
    return &c->slots[h & (EM__DEVCACHE_SLOTS - 1)];
}

em_err_t em__devcache_get(em_api_t *api, const char *id, int64_t mono_ms, em_store_device_t *out,
                          em_error_t *err)
{
    slot_t *s = api->devcache != NULL ? slot_of(api->devcache, id) : NULL;
    if (s != NULL && s->used && mono_ms - s->fetched_ms < EM__DEVCACHE_TTL_MS &&
        mono_ms >= s->fetched_ms && strcmp(s->dev.id, id) == 0) {
        *out = s->dev;
        return EM_OK;
    }
    em_err_t rc = em_store_device_get(api->store, id, out, err);
    if (rc != EM_OK) {
        /* The slot may hold this id's record: it is gone or unreadable. */
        if (s != NULL && s->used && strcmp(s->dev.id, id) == 0)
            s->used = false;
        return rc;
    }
    if (s != NULL) {
        s->dev = *out;
        s->fetched_ms = mono_ms;
        s->used = true;
    }
    return EM_OK;
}

void em__devcache_forget(em_api_t *api, const char *id)
{
    if (api == NULL || api->devcache == NULL || id == NULL)
        return;
    slot_t *s = slot_of(api->devcache, id);
    if (s->used && strcmp(s->dev.id, id) == 0)
        s->used = false;
}
