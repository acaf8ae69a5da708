/*
 * emiot - nonce.c: the challenge nonces of device challenge-response.
 *
 * A fixed pool of entries, allocated once: a hash table by the nonce's bytes
 * (the bytes are random, so their first four are as good a hash as any) and
 * a list in the order they were made. Every nonce lives the same time (until
 * a reload changes it), so the oldest expire first: sweeping walks the list
 * from its old end and stops at the first live one, and a full table knows
 * when room comes (when the oldest expires).
 */
#include <stdbool.h>
#include <stdlib.h>
#include <string.h>

#include <openssl/crypto.h>
#include <openssl/rand.h>

#include "api/nonce.h"

typedef struct entry {
    unsigned char bytes[EM__NONCE_BYTES];
    char device[EM_DEVICE_ID_MAX + 1];
    int64_t expires_ms; /* monotonic */
    int32_t next;       /* hash chain, or the free list */
    int32_t older;      /* age list: toward the oldest */
    int32_t newer;      /* age list: toward the newest */
    bool used;
} entry_t;

struct em__nonces {
    entry_t *pool;
    int32_t *heads;
    size_t max;
    size_t nheads; /* a power of two */
    size_t count;
    int32_t free_head;
    int32_t oldest;
    int32_t newest;
};

static const char b64url[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";

em__nonces_t *em__nonces_new(size_t max)
{
    if (max == 0 || max > EM__NONCES_MAX)
        return NULL;
    em__nonces_t *t = calloc(1, sizeof *t);
    if (t == NULL)
        return NULL;
    size_t nheads = 16;
    while (nheads < max)
        nheads *= 2;
    t->pool = calloc(max, sizeof *t->pool);
    t->heads = malloc(nheads * sizeof *t->heads);
    if (t->pool == NULL || t->heads == NULL) {
        free(t->pool);
        free(t->heads);
        free(t);
        return NULL;
    }
    t->max = max;
    t->nheads = nheads;
    for (size_t i = 0; i < nheads; i++)
        t->heads[i] = -1;
    for (size_t i = 0; i < max; i++)
        t->pool[i].next = i + 1 < max ? (int32_t)(i + 1) : -1;
    t->free_head = 0;
    t->oldest = t->newest = -1;
    return t;
}

void em__nonces_free(em__nonces_t *t)
{
    if (t == NULL)
        return;
    OPENSSL_cleanse(t->pool, t->max * sizeof *t->pool);
    free(t->pool);
    free(t->heads);
    free(t);
}

size_t em__nonces_count(const em__nonces_t *t)
{
    return t != NULL ? t->count : 0;
}

static size_t bucket_of(const em__nonces_t *t, const unsigned char *bytes)
{
    uint32_t h = (uint32_t)bytes[0] | (uint32_t)bytes[1] << 8 | (uint32_t)bytes[2] << 16 |
                 (uint32_t)bytes[3] << 24;
    return h & (t->nheads - 1);
}

/* Unlinks entry i from its hash chain and the age list, wipes it and puts
 * it on the free list. */
static void remove_entry(em__nonces_t *t, int32_t i)
{
    entry_t *e = &t->pool[i];
    int32_t *pp = &t->heads[bucket_of(t, e->bytes)];
    while (*pp >= 0 && *pp != i)
        pp = &t->pool[*pp].next;
    if (*pp == i)
        *pp = e->next;
    if (e->older >= 0)
        t->pool[e->older].newer = e->newer;
    else
        t->oldest = e->newer;
    if (e->newer >= 0)
        t->pool[e->newer].older = e->older;
    else
        t->newest = e->older;
    OPENSSL_cleanse(e, sizeof *e);
    e->next = t->free_head;
    t->free_head = i;
    t->count--;
}

/* Drops expired nonces from the old end of the age list. */
static void sweep(em__nonces_t *t, int64_t now_ms)
{
    while (t->oldest >= 0 && t->pool[t->oldest].expires_ms <= now_ms)
        remove_entry(t, t->oldest);
}

static void encode(const unsigned char in[EM__NONCE_BYTES], char out[EM__NONCE_TEXT + 1])
{
    size_t o = 0;
    uint32_t acc = 0;
    int bits = 0;
    for (size_t i = 0; i < EM__NONCE_BYTES; i++) {
        acc = (acc << 8) | in[i];
        bits += 8;
        while (bits >= 6) {
            bits -= 6;
            out[o++] = b64url[(acc >> bits) & 63];
        }
        acc &= (1u << bits) - 1;
    }
    if (bits > 0)
        out[o++] = b64url[(acc << (6 - bits)) & 63];
    out[o] = '\0';
}

static int b64val(char c)
{
    if (c >= 'A' && c <= 'Z')
        return c - 'A';
    if (c >= 'a' && c <= 'z')
        return c - 'a' + 26;
    if (c >= '0' && c <= '9')
        return c - '0' + 52;
    if (c == '-')
        return 62;
    if (c == '_')
        return 63;
    return -1;
}

/* Decodes exactly EM__NONCE_TEXT characters into 32 bytes; false when they
 * are not the canonical encoding of 32 bytes. */
static bool decode(const char *s, size_t len, unsigned char out[EM__NONCE_BYTES])
{
    if (len != EM__NONCE_TEXT)
        return false;
    uint32_t acc = 0;
    int bits = 0;
    size_t n = 0;
    for (size_t i = 0; i < len; i++) {
        int v = b64val(s[i]);
        if (v < 0)
            return false;
        acc = (acc << 6) | (uint32_t)v;
        bits += 6;
        if (bits >= 8) {
            bits -= 8;
            out[n++] = (unsigned char)(acc >> bits);
        }
        acc &= (1u << bits) - 1;
    }
    /* 43 characters carry 258 bits: the last 2 must be zero. */
    return n == EM__NONCE_BYTES && acc == 0;
}

em_err_t em__nonces_issue(em__nonces_t *t, const char *device_id, int64_t now_ms, int64_t ttl_ms,
                          char out[EM__NONCE_TEXT + 1], uint32_t *retry_after_s)
{
    if (t == NULL || device_id == NULL || out == NULL || ttl_ms <= 0 ||
        ttl_ms > (int64_t)EM__NONCE_TTL_MAX * 1000 ||
        em_device_id_validate(device_id, strlen(device_id), NULL) != EM_OK)
        return EM_ERR_INVALID_ARGUMENT;
    sweep(t, now_ms);
    if (t->free_head < 0) {
        if (retry_after_s != NULL) {
            int64_t wait_ms = t->pool[t->oldest].expires_ms - now_ms;
            int64_t s = (wait_ms + 999) / 1000;
            *retry_after_s = s < 1 ? 1 : (uint32_t)s;
        }
        return EM_ERR_LIMIT;
    }
    int32_t i = t->free_head;
    entry_t *e = &t->pool[i];
    /* 256 random bits: two equal nonces do not happen, but a table that
     * held one would answer the wrong entry, so it is checked anyway. */
    for (int tries = 0;; tries++) {
        if (tries == 4 || RAND_bytes(e->bytes, sizeof e->bytes) != 1) {
            OPENSSL_cleanse(e->bytes, sizeof e->bytes);
            return EM_ERR_INTERNAL;
        }
        bool taken = false;
        for (int32_t j = t->heads[bucket_of(t, e->bytes)]; j >= 0; j = t->pool[j].next)
            if (CRYPTO_memcmp(t->pool[j].bytes, e->bytes, sizeof e->bytes) == 0)
                taken = true;
        if (!taken)
            break;
    }
    t->free_head = e->next;
    size_t idlen = strlen(device_id);
    memcpy(e->device, device_id, idlen + 1);
    e->expires_ms = now_ms + ttl_ms;
    e->used = true;
    size_t b = bucket_of(t, e->bytes);
    e->next = t->heads[b];
    t->heads[b] = i;
    e->older = t->newest;
    e->newer = -1;
    if (t->newest >= 0)
        t->pool[t->newest].newer = i;
    else
        t->oldest = i;
    t->newest = i;
    t->count++;
    encode(e->bytes, out);
    return EM_OK;
}

const char *em__nonce_result_text(em__nonce_result_t r)
{
    switch (r) {
    case EM__NONCE_OK:
        return "ok";
    case EM__NONCE_UNKNOWN:
        return "unknown or already used nonce";
    case EM__NONCE_EXPIRED:
        return "expired nonce";
    case EM__NONCE_WRONG_DEVICE:
        return "nonce issued for another device";
    }
    return "?";
}

em__nonce_result_t em__nonces_take(em__nonces_t *t, const char *text, size_t len,
                                   const char *device_id, int64_t now_ms)
{
    unsigned char bytes[EM__NONCE_BYTES];
    if (t == NULL || text == NULL || device_id == NULL || !decode(text, len, bytes))
        return EM__NONCE_UNKNOWN;
    int32_t found = -1;
    /* Every entry of the chain is compared, so that the time taken does not
     * tell how far along the chain a match was. */
    for (int32_t j = t->heads[bucket_of(t, bytes)]; j >= 0; j = t->pool[j].next)
        if (CRYPTO_memcmp(t->pool[j].bytes, bytes, sizeof bytes) == 0)
            found = j;
    OPENSSL_cleanse(bytes, sizeof bytes);
    if (found < 0)
        return EM__NONCE_UNKNOWN;
    const entry_t *e = &t->pool[found];
    em__nonce_result_t r = EM__NONCE_OK;
    if (e->expires_ms <= now_ms)
        r = EM__NONCE_EXPIRED;
    else if (strcmp(e->device, device_id) != 0)
        r = EM__NONCE_WRONG_DEVICE;
    remove_entry(t, found);
    return r;
}
