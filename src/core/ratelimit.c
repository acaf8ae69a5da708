/*
 * emiot - ratelimit.c: the sliding-window limiter (see ratelimit.h).
 */
#include "core/ratelimit.h"

#include <stdlib.h>

#define EM__WINDOW_LIMIT_MAX 10000u

em__window_t *em__window_new(uint32_t limit)
{
    if (limit == 0 || limit > EM__WINDOW_LIMIT_MAX)
        return NULL;
    em__window_t *w = calloc(1, sizeof(*w) + (size_t)limit * sizeof(int64_t));
    if (w == NULL)
        return NULL;
    w->limit = limit;
    return w;
}

void em__window_free(em__window_t *w)
{
    free(w);
}

/* Drops entries that have left the window. Entries are in time order, so the
 * expired ones are always at the head. */
static void expire(em__window_t *w, int64_t now_ms, int64_t window_ms)
{
    while (w->count > 0 && w->t[w->head] <= now_ms - window_ms) {
        w->head = (w->head + 1) % w->limit;
        w->count--;
    }
}

bool em__window_allow(em__window_t *w, int64_t now_ms, int64_t window_ms, int64_t *retry_after_ms)
{
    expire(w, now_ms, window_ms);
    if (w->count >= w->limit) {
        if (retry_after_ms != NULL)
            *retry_after_ms = w->t[w->head] + window_ms - now_ms;
        return false;
    }
    w->t[(w->head + w->count) % w->limit] = now_ms;
    w->count++;
    if (retry_after_ms != NULL)
        *retry_after_ms = 0;
    return true;
}

uint32_t em__window_used(em__window_t *w, int64_t now_ms, int64_t window_ms)
{
    expire(w, now_ms, window_ms);
    return w->count;
}
