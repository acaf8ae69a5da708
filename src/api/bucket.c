/*
 * emiot - bucket.c: token buckets, and a bounded table of them by key.
 *
 * A bucket holds up to per_min tokens and gains per_min tokens a minute,
 * continuously: a client may burst its whole minute, then goes at the rate.
 * Times are monotonic milliseconds passed in by the caller (tests pass their
 * own clock).
 */
#include <stdlib.h>
#include <string.h>

#include "api/api_core.h"

#define MINUTE_MS 60000.0

static void refill(em__bucket_t *b, uint32_t per_min, int64_t now_ms)
{
    if (now_ms > b->last_ms) {
        double add = (double)(now_ms - b->last_ms) * (double)per_min / MINUTE_MS;
        b->tokens += add;
        if (b->tokens > (double)per_min)
            b->tokens = (double)per_min;
        b->last_ms = now_ms;
    } else if (b->tokens > (double)per_min) {
        /* The rate went down (reload): never keep more than the new capacity. */
        b->tokens = (double)per_min;
    }
}

/* Whole seconds, at least 1, until the bucket holds a whole token. */
static uint32_t retry_after(const em__bucket_t *b, uint32_t per_min)
{
    if (per_min == 0)
        return 60;
    double missing = 1.0 - b->tokens;
    double ms = missing * MINUTE_MS / (double)per_min;
    double s = ms / 1000.0;
    uint32_t whole = (uint32_t)s;
    if ((double)whole < s)
        whole++;
    return whole < 1 ? 1 : whole;
}

void em__bucket_init(em__bucket_t *b, uint32_t per_min, int64_t now_ms)
{
    b->tokens = (double)per_min;
    b->last_ms = now_ms;
}

bool em__bucket_peek(em__bucket_t *b, uint32_t per_min, int64_t now_ms, uint32_t *retry_after_s)
{
    refill(b, per_min, now_ms);
    if (per_min > 0 && b->tokens >= 1.0) {
        if (retry_after_s != NULL)
            *retry_after_s = 0;
        return true;
    }
    if (retry_after_s != NULL)
        *retry_after_s = retry_after(b, per_min);
    return false;
}

bool em__bucket_take(em__bucket_t *b, uint32_t per_min, int64_t now_ms, uint32_t *retry_after_s)
{
    if (!em__bucket_peek(b, per_min, now_ms, retry_after_s))
        return false;
    b->tokens -= 1.0;
    return true;
}

/* ---- the table -------------------------------------------------------- */

/*
 * A chained hash table over a fixed pool of entries, with a doubly linked
 * least-recently-used list through the pool. Nothing is allocated after
 * em__buckets_new.
 */
typedef struct entry {
    char key[EM__BUCKET_KEY_MAX + 1];
    uint32_t hash;
    int32_t next;               /* next in the hash chain, -1 ends */
    int32_t lru_prev, lru_next; /* -1 ends */
    bool used;
    uint32_t per_min;    /* the rate last used, to tell idle (full) buckets */
    int64_t reported_ms; /* last refusal reported (em__buckets_report), 0: never */
    em__bucket_t b;
} entry_t;

struct em__buckets {
    size_t max;
    size_t count;
    size_t nheads;               /* power of two */
    int32_t *heads;              /* nheads chains */
    entry_t *pool;               /* max entries */
    int32_t free_head;           /* through next */
    int32_t lru_first, lru_last; /* first: most recently used */
};

static uint32_t hash_str(const char *s, size_t len)
{
    uint32_t h = 2166136261u; /* FNV-1a */
    for (size_t i = 0; i < len; i++) {
        h ^= (unsigned char)s[i];
        h *= 16777619u;
    }
    return h;
}

em__buckets_t *em__buckets_new(size_t max_entries)
{
    if (max_entries < 16 || max_entries > 1000000)
        return NULL;
    em__buckets_t *t = calloc(1, sizeof *t);
    if (t == NULL)
        return NULL;
    t->max = max_entries;
    t->nheads = 16;
    while (t->nheads < max_entries)
        t->nheads <<= 1;
    t->heads = malloc(t->nheads * sizeof *t->heads);
    t->pool = calloc(max_entries, sizeof *t->pool);
    if (t->heads == NULL || t->pool == NULL) {
        em__buckets_free(t);
        return NULL;
    }
    for (size_t i = 0; i < t->nheads; i++)
        t->heads[i] = -1;
    for (size_t i = 0; i < max_entries; i++)
        t->pool[i].next = i + 1 < max_entries ? (int32_t)(i + 1) : -1;
    t->free_head = 0;
    t->lru_first = t->lru_last = -1;
    return t;
}

void em__buckets_free(em__buckets_t *t)
{
    if (t == NULL)
        return;
    free(t->heads);
    free(t->pool);
    free(t);
}

size_t em__buckets_count(const em__buckets_t *t)
{
    return t != NULL ? t->count : 0;
}

static void lru_unlink(em__buckets_t *t, int32_t i)
{
    entry_t *e = &t->pool[i];
    if (e->lru_prev >= 0)
        t->pool[e->lru_prev].lru_next = e->lru_next;
    else
        t->lru_first = e->lru_next;
    if (e->lru_next >= 0)
        t->pool[e->lru_next].lru_prev = e->lru_prev;
    else
        t->lru_last = e->lru_prev;
    e->lru_prev = e->lru_next = -1;
}

static void lru_push_front(em__buckets_t *t, int32_t i)
{
    entry_t *e = &t->pool[i];
    e->lru_prev = -1;
    e->lru_next = t->lru_first;
    if (t->lru_first >= 0)
        t->pool[t->lru_first].lru_prev = i;
    t->lru_first = i;
    if (t->lru_last < 0)
        t->lru_last = i;
}

static void remove_entry(em__buckets_t *t, int32_t i)
{
    entry_t *e = &t->pool[i];
    int32_t *pp = &t->heads[e->hash & (t->nheads - 1)];
    while (*pp >= 0 && *pp != i)
        pp = &t->pool[*pp].next;
    if (*pp == i)
        *pp = e->next;
    lru_unlink(t, i);
    e->used = false;
    e->next = t->free_head;
    t->free_head = i;
    t->count--;
}

/* Drops buckets that are full again (idle for as long as a refill takes);
 * when none is, the least recently used one. */
static void make_room(em__buckets_t *t, int64_t now_ms)
{
    size_t dropped = 0;
    int32_t i = t->lru_last;
    while (i >= 0) {
        int32_t prev = t->pool[i].lru_prev;
        entry_t *e = &t->pool[i];
        refill(&e->b, e->per_min, now_ms);
        if (e->b.tokens >= (double)e->per_min) {
            remove_entry(t, i);
            dropped++;
        }
        i = prev;
    }
    if (dropped == 0 && t->lru_last >= 0)
        remove_entry(t, t->lru_last);
}

static entry_t *find(em__buckets_t *t, const char *key, size_t len, uint32_t h)
{
    for (int32_t i = t->heads[h & (t->nheads - 1)]; i >= 0; i = t->pool[i].next) {
        entry_t *e = &t->pool[i];
        if (e->hash == h && strncmp(e->key, key, len) == 0 && e->key[len] == '\0') {
            lru_unlink(t, i);
            lru_push_front(t, i);
            return e;
        }
    }
    return NULL;
}

static entry_t *lookup(em__buckets_t *t, const char *key, uint32_t per_min, int64_t now_ms)
{
    size_t len = strnlen(key, EM__BUCKET_KEY_MAX);
    uint32_t h = hash_str(key, len);
    entry_t *found = find(t, key, len, h);
    if (found != NULL)
        return found;
    if (t->free_head < 0)
        make_room(t, now_ms);
    int32_t i = t->free_head;
    entry_t *e = &t->pool[i];
    t->free_head = e->next;
    memcpy(e->key, key, len);
    e->key[len] = '\0';
    e->hash = h;
    e->used = true;
    e->per_min = per_min;
    e->reported_ms = 0;
    em__bucket_init(&e->b, per_min, now_ms);
    e->next = t->heads[h & (t->nheads - 1)];
    t->heads[h & (t->nheads - 1)] = i;
    lru_push_front(t, i);
    t->count++;
    return e;
}

bool em__buckets_take(em__buckets_t *t, const char *key, uint32_t per_min, int64_t now_ms,
                      uint32_t *retry_after_s)
{
    entry_t *e = lookup(t, key, per_min, now_ms);
    e->per_min = per_min;
    return em__bucket_take(&e->b, per_min, now_ms, retry_after_s);
}

bool em__buckets_peek(em__buckets_t *t, const char *key, uint32_t per_min, int64_t now_ms,
                      uint32_t *retry_after_s)
{
    /* A key without a bucket has a full one: nothing to create. */
    size_t len = strnlen(key, EM__BUCKET_KEY_MAX);
    entry_t *e = find(t, key, len, hash_str(key, len));
    if (e == NULL) {
        if (retry_after_s != NULL)
            *retry_after_s = per_min > 0 ? 0 : 60;
        return per_min > 0;
    }
    e->per_min = per_min;
    return em__bucket_peek(&e->b, per_min, now_ms, retry_after_s);
}

bool em__buckets_report(em__buckets_t *t, const char *key, int64_t now_ms, int64_t every_ms)
{
    size_t len = strnlen(key, EM__BUCKET_KEY_MAX);
    entry_t *e = find(t, key, len, hash_str(key, len));
    if (e == NULL)
        return false;
    if (e->reported_ms != 0 && now_ms - e->reported_ms < every_ms)
        return false;
    e->reported_ms = now_ms;
    return true;
}
