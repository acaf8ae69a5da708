/*
 * emiot - ratelimit.h (internal): an exact sliding-window limiter.
 *
 * Remembers the times of the last `limit` accepted events; an event is allowed
 * when fewer than `limit` accepted events fall inside the window ending now.
 * This is the "N per window" rule energy-manager-iot documents, without the
 * burst a token bucket would allow at a window edge.
 */
#ifndef EM_CORE_RATELIMIT_H
#define EM_CORE_RATELIMIT_H

#include <stdbool.h>
#include <stdint.h>

typedef struct em__window {
    uint32_t limit; /* capacity of t[] */
    uint32_t head;  /* index of the oldest entry */
    uint32_t count; /* entries in use */
    int64_t t[];    /* accepted event times, monotonic ms */
} em__window_t;

/* A window for `limit` events (1..10000). NULL on allocation failure. */
em__window_t *em__window_new(uint32_t limit);
void em__window_free(em__window_t *w);

/*
 * Records an event at now_ms and returns true when fewer than w->limit
 * accepted events lie in (now_ms - window_ms, now_ms]; otherwise records
 * nothing and returns false. *retry_after_ms (when not NULL) receives how long
 * until the next event would be allowed (0 when allowed).
 */
bool em__window_allow(em__window_t *w, int64_t now_ms, int64_t window_ms, int64_t *retry_after_ms);

/* Number of accepted events inside the window ending at now_ms. */
uint32_t em__window_used(em__window_t *w, int64_t now_ms, int64_t window_ms);

#endif /* EM_CORE_RATELIMIT_H */
