/*
 * emiot - auth.c: who is calling. API keys, JWTs and client certificates
 * presented by a request; a short-lived cache of key, user and device records
 * so that an authenticated request does no database read. Issuing and
 * verifying JWTs, and their signing key, are auth_jwt.c's; verifying a client
 * certificate (chain, validity, CRL, usages) is tls.c's.
 */
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <event2/http.h>
#include <event2/keyvalq_struct.h>
#include <openssl/crypto.h>
#include <openssl/evp.h>
#include <openssl/rand.h>

#include "api/api_core.h"
#include "emiot/clock.h"
#include "emiot/log.h"

#define CACHE_MAX           10000
#define CACHE_TTL_MS        5000  /* another daemon's revocation is seen this late at most */
#define KEY_USED_MS         60000 /* last-used is written at most this often per key */
#define ROLE_DEFAULT_DEVICE 60u
#define ROLE_DEFAULT_OTHER  1200u

/* ---- API keys ------------------------------------------------------------ */

static pthread_once_t md_once = PTHREAD_ONCE_INIT;
static EVP_MD *md_sha256;

static void md_init(void)
{
    md_sha256 = EVP_MD_fetch(NULL, "SHA256", NULL);
}

static bool sha256(const void *data, size_t len, unsigned char out[32])
{
    pthread_once(&md_once, md_init);
    unsigned int n = 0;
    return md_sha256 != NULL && EVP_Digest(data, len, out, &n, md_sha256, NULL) == 1 && n == 32;
}

static bool is_lower_hex(char c)
{
    return (c >= '0' && c <= '9') || (c >= 'a' && c <= 'f');
}

em_err_t em__api_key_generate(char *key, size_t size, em_store_api_key_t *rec)
{
    static const char hex[] = "0123456789abcdef";
    unsigned char rnd[24];
    if (key == NULL || size < EM_API_KEY_LEN + 1 || rec == NULL)
        return EM_ERR_INVALID_ARGUMENT;
    if (RAND_bytes(rnd, sizeof rnd) != 1)
        return EM_ERR_INTERNAL;
    memcpy(key, "iot_", 4);
    for (size_t i = 0; i < sizeof rnd; i++) {
        key[4 + 2 * i] = hex[rnd[i] >> 4];
        key[4 + 2 * i + 1] = hex[rnd[i] & 15];
    }
    key[EM_API_KEY_LEN] = '\0';
    OPENSSL_cleanse(rnd, sizeof rnd);
    if (!em__api_key_parse(key, EM_API_KEY_LEN, rec->key_id, rec->hash)) {
        OPENSSL_cleanse(key, size);
        return EM_ERR_INTERNAL;
    }
    return EM_OK;
}

bool em__api_key_parse(const char *key, size_t len, char key_id[EM_STORE_KEY_ID_MAX + 1],
                       unsigned char hash[32])
{
    if (key == NULL || len != EM_API_KEY_LEN || memcmp(key, "iot_", 4) != 0)
        return false;
    for (size_t i = 4; i < len; i++)
        if (!is_lower_hex(key[i]))
            return false;
    memcpy(key_id, "k_", 2);
    memcpy(key_id + 2, key + 4, 12);
    key_id[14] = '\0';
    return sha256(key, len, hash);
}

/* "k_" + 12 lower-case hex digits. */
bool em__api_key_id_valid(const char *s, size_t len)
{
    if (len != 14 || s[0] != 'k' || s[1] != '_')
        return false;
    for (size_t i = 2; i < len; i++)
        if (!is_lower_hex(s[i]))
            return false;
    return true;
}

uint32_t em__api_rate_for(const em_api_t *api, const em__api_identity_t *who, uint32_t key_rate)
{
    if (key_rate > 0)
        return key_rate;
    uint32_t r = (unsigned)who->role < 5 ? api->opts.rate_per_min[who->role] : 0;
    if (r > 0)
        return r;
    return who->role == EM_ROLE_DEVICE ? ROLE_DEFAULT_DEVICE : ROLE_DEFAULT_OTHER;
}

/* Copies src (an array of src_size bytes) into dst (size >= 1 bytes), cut to
 * fit and NUL-terminated, as snprintf(dst, size, "%s", src) does without its
 * formatting machinery (a few hundred instructions a call, on the path every
 * request takes). */
static void put_str(char *dst, size_t size, const char *src, size_t src_size)
{
    size_t n = strnlen(src, size - 1 < src_size ? size - 1 : src_size);
    memcpy(dst, src, n);
    dst[n] = '\0';
}

/* ---- the record cache --------------------------------------------------- */

typedef enum ckind { C_KEY = 'k', C_USER = 'u', C_DEVICE = 'd' } ckind_t;

typedef struct centry {
    char key[EM_STORE_NAME_MAX + 3]; /* kind letter, ':', name */
    uint32_t hash;
    int32_t next;
    bool used;
    int64_t fetched_ms;  /* monotonic */
    int64_t key_used_ms; /* monotonic time last-used was last queued (keys) */
    union {
        em_store_api_key_t k;
        em_store_user_t u;
        bool device_enabled;
    } v;
} centry_t;

#define CACHE_HEADS 16384

struct em__auth_cache {
    int32_t heads[CACHE_HEADS];
    centry_t pool[CACHE_MAX];
    int32_t free_head;
    size_t count;
};

static uint32_t hash_str(const char *s)
{
    uint32_t h = 2166136261u;
    for (; *s != '\0'; s++) {
        h ^= (unsigned char)*s;
        h *= 16777619u;
    }
    return h;
}

static em__auth_cache_t *cache_new(void)
{
    em__auth_cache_t *c = calloc(1, sizeof *c);
    if (c == NULL)
        return NULL;
    for (size_t i = 0; i < CACHE_HEADS; i++)
        c->heads[i] = -1;
    for (size_t i = 0; i < CACHE_MAX; i++)
        c->pool[i].next = i + 1 < CACHE_MAX ? (int32_t)(i + 1) : -1;
    c->free_head = 0;
    return c;
}

static void cache_free(em__auth_cache_t *c)
{
    if (c == NULL)
        return;
    OPENSSL_cleanse(c->pool, sizeof c->pool); /* key hashes */
    free(c);
}

static centry_t *cache_find(em__auth_cache_t *c, const char *key)
{
    uint32_t h = hash_str(key);
    for (int32_t i = c->heads[h % CACHE_HEADS]; i >= 0; i = c->pool[i].next)
        if (c->pool[i].hash == h && strcmp(c->pool[i].key, key) == 0)
            return &c->pool[i];
    return NULL;
}

static void cache_remove(em__auth_cache_t *c, centry_t *e)
{
    int32_t idx = (int32_t)(e - c->pool);
    int32_t *pp = &c->heads[e->hash % CACHE_HEADS];
    while (*pp >= 0 && *pp != idx)
        pp = &c->pool[*pp].next;
    if (*pp == idx)
        *pp = e->next;
    OPENSSL_cleanse(e, sizeof *e);
    e->next = c->free_head;
    c->free_head = idx;
    c->count--;
}

/* Drops stale entries; when none is stale, everything (the cache refills). */
static void cache_make_room(em__auth_cache_t *c, int64_t now_ms)
{
    size_t dropped = 0;
    for (size_t i = 0; i < CACHE_MAX; i++) {
        if (c->pool[i].used && now_ms - c->pool[i].fetched_ms >= CACHE_TTL_MS) {
            cache_remove(c, &c->pool[i]);
            dropped++;
        }
    }
    if (dropped > 0)
        return;
    for (size_t i = 0; i < CACHE_MAX; i++)
        if (c->pool[i].used)
            cache_remove(c, &c->pool[i]);
}

static centry_t *cache_add(em__auth_cache_t *c, const char *key, int64_t now_ms)
{
    if (c->free_head < 0)
        cache_make_room(c, now_ms);
    int32_t i = c->free_head;
    centry_t *e = &c->pool[i];
    c->free_head = e->next;
    memset(e, 0, sizeof *e);
    snprintf(e->key, sizeof e->key, "%s", key);
    e->hash = hash_str(e->key);
    e->used = true;
    e->next = c->heads[e->hash % CACHE_HEADS];
    c->heads[e->hash % CACHE_HEADS] = i;
    c->count++;
    return e;
}

static void forget(em_api_t *api, char kind, const char *name)
{
    char ck[EM_STORE_NAME_MAX + 3];
    if (api == NULL || api->cache == NULL || name == NULL)
        return;
    snprintf(ck, sizeof ck, "%c:%s", kind, name);
    centry_t *e = cache_find(api->cache, ck);
    if (e != NULL)
        cache_remove(api->cache, e);
}

void em__api_auth_forget_key(em_api_t *api, const char *key_id)
{
    forget(api, C_KEY, key_id);
}

void em__api_auth_forget_user(em_api_t *api, const char *name)
{
    forget(api, C_USER, name);
}

/*
 * The record of kind/name, from the cache when fetched less than
 * CACHE_TTL_MS ago, else from the store. NULL when the store has none (or
 * failed: *failed is set, so that a database outage is not a flood of
 * "unknown key" events).
 */
static centry_t *cache_get(em_api_t *api, ckind_t kind, const char *name, int64_t mono,
                           bool *failed)
{
    char ck[EM_STORE_NAME_MAX + 3];
    *failed = false;
    ck[0] = (char)kind;
    ck[1] = ':';
    put_str(ck + 2, sizeof ck - 2, name, strlen(name));
    centry_t *e = cache_find(api->cache, ck);
    if (e != NULL && mono - e->fetched_ms < CACHE_TTL_MS)
        return e;

    em_error_t err;
    em_error_clear(&err);
    em_err_t rc;
    em_store_api_key_t k;
    em_store_user_t u;
    em_store_device_t d;
    switch (kind) {
    case C_KEY:
        rc = em_store_api_key_get(api->store, name, &k, &err);
        break;
    case C_USER:
        rc = em_store_user_get(api->store, name, &u, &err);
        break;
    default:
        rc = em_store_device_get(api->store, name, &d, &err);
        break;
    }
    if (rc != EM_OK) {
        if (e != NULL)
            cache_remove(api->cache, e);
        if (rc != EM_ERR_NOT_FOUND && rc != EM_ERR_DEVICE_NOT_FOUND) {
            *failed = true;
            em_logf(EM_LOG_ERROR, "api", "authentication lookup failed: %s", err.message);
        }
        OPENSSL_cleanse(&k, sizeof k);
        return NULL;
    }
    if (e == NULL)
        e = cache_add(api->cache, ck, mono);
    e->fetched_ms = mono;
    switch (kind) {
    case C_KEY:
        e->v.k = k;
        break;
    case C_USER:
        e->v.u = u;
        break;
    default:
        e->v.device_enabled = d.enabled;
        break;
    }
    OPENSSL_cleanse(&k, sizeof k);
    return e;
}

/* ---- set-up ------------------------------------------------------------- */

em_err_t em__api_auth_init(em_api_t *api, em_error_t *err)
{
    api->cache = cache_new();
    if (api->cache == NULL)
        return em_error_set(err, EM_ERR_NOMEM, EM_SEV_HIGH, NULL, "out of memory");
    return em__api_jwt_key_load(api, err);
}

void em__api_auth_cleanup(em_api_t *api)
{
    em__api_jwt_key_free(api);
    cache_free(api->cache);
    api->cache = NULL;
}

/* ---- authenticating a request ------------------------------------------ */

const char *em__api_bearer(const char *header, size_t *len)
{
    if (header == NULL || strncasecmp(header, "Bearer ", 7) != 0)
        return NULL;
    const char *p = header + 7;
    while (*p == ' ')
        p++;
    size_t n = 0;
    while (n <= EM__API_JWT_MAX && p[n] != '\0') {
        unsigned char c = (unsigned char)p[n];
        if (c <= 0x20 || c >= 0x7F)
            break;
        n++;
    }
    const char *q = p + n;
    while (*q == ' ')
        q++;
    if (n == 0 || n > EM__API_JWT_MAX || *q != '\0')
        return NULL;
    *len = n;
    return p;
}

/* The client address without the port, for the failure buckets. */
static void source_host(const char *source, char *out, size_t size)
{
    const char *colon = strrchr(source, ':');
    size_t n = colon != NULL ? (size_t)(colon - source) : strlen(source);
    if (n >= size)
        n = size - 1;
    memcpy(out, source, n);
    out[n] = '\0';
}

void em__api_fail_count(em__api_req_t *r)
{
    char host[EM__BUCKET_KEY_MAX + 1];
    source_host(r->source, host, sizeof host);
    em__buckets_take(r->api->fail_buckets, host, r->api->opts.auth_fail_per_min, em_mono_ms(),
                     NULL);
}

bool em__api_fail_blocked(em__api_req_t *r)
{
    em_api_t *api = r->api;
    int64_t mono = em_mono_ms();
    char host[EM__BUCKET_KEY_MAX + 1];
    uint32_t retry = 0;
    source_host(r->source, host, sizeof host);
    if (em__buckets_peek(api->fail_buckets, host, api->opts.auth_fail_per_min, mono, &retry))
        return false;
    em__api_call_t *call = (em__api_call_t *)r;
    if (em__buckets_report(api->fail_buckets, host, mono, 60000))
        em__api_security_event(r, "auth_blocked", EM_SEV_HIGH,
                               "too many failed authentications from this address");
    snprintf(call->retry_buf, sizeof call->retry_buf, "%u", retry);
    call->retry_after = call->retry_buf;
    em__api_error(r, 429, "rate_limit_exceeded", "too many failed authentications",
                  "authentication failures from this address over the limit");
    return true;
}

/* Refuses: 401, a security event with the reason, a token from the client
 * address's failure bucket. */
static bool refuse(em__api_req_t *r, const char *reason)
{
    em__api_fail_count(r);
    em__api_security_event(r, "auth_failure", EM_SEV_MEDIUM, reason);
    memset(&r->who, 0, sizeof r->who);
    em__api_error(r, 401, NULL, NULL, reason);
    return false;
}

/* A key's record, checked against the presented hash (hash NULL: a JWT's
 * parent key, only its state is checked). */
static const char *check_key(em__api_req_t *r, const char *key_id, const unsigned char *hash,
                             int64_t mono, const em_store_api_key_t **out, centry_t **entry)
{
    bool failed = false;
    centry_t *e = cache_get(r->api, C_KEY, key_id, mono, &failed);
    if (e == NULL)
        return failed ? "key lookup failed" : "unknown API key";
    const em_store_api_key_t *k = &e->v.k;
    if (hash != NULL && CRYPTO_memcmp(k->hash, hash, 32) != 0)
        return "wrong API key";
    if (k->revoked_at_ms != 0)
        return "revoked API key";
    if (k->expires_at_ms != 0 && r->now_ms >= k->expires_at_ms)
        return "expired API key";
    *out = k;
    *entry = e;
    return NULL;
}

/* True when id is a registered device (and not disabled in the store). */
static bool device_ok(em__api_req_t *r, const char *id, int64_t mono)
{
    em_manager_lock(r->mgr);
    bool registered = em_registry_get(em_manager_registry(r->mgr), id) != NULL;
    em_manager_unlock(r->mgr);
    if (!registered)
        return false;
    bool failed = false;
    centry_t *e = cache_get(r->api, C_DEVICE, id, mono, &failed);
    /* A device the registry has and the store does not (an embedding without
     * persistence) counts as enabled; a store error refuses. */
    return e != NULL ? e->v.device_enabled : !failed;
}

static const char *auth_key(em__api_req_t *r, const char *cred, size_t len, int64_t mono)
{
    char key_id[EM_STORE_KEY_ID_MAX + 1];
    unsigned char hash[32];
    if (!em__api_key_parse(cred, len, key_id, hash))
        return "malformed API key";
    const em_store_api_key_t *k = NULL;
    centry_t *e = NULL;
    const char *why = check_key(r, key_id, hash, mono, &k, &e);
    OPENSSL_cleanse(hash, sizeof hash);
    if (why != NULL)
        return why;
    /* A device's key works while its device is registered and enabled. */
    if (k->role == EM_ROLE_DEVICE && !device_ok(r, k->device_id, mono))
        return "key of an unknown or disabled device";
    em__api_identity_t *who = &r->who;
    who->method = EM__AUTHN_API_KEY;
    who->role = k->role;
    put_str(who->name, sizeof who->name, k->name, sizeof k->name);
    put_str(who->key_id, sizeof who->key_id, k->key_id, sizeof k->key_id);
    put_str(who->device_id, sizeof who->device_id, k->device_id, sizeof k->device_id);
    memcpy(who->actor, "key:", 4);
    put_str(who->actor + 4, sizeof who->actor - 4, k->key_id, sizeof k->key_id);
    who->expires_at_ms = k->expires_at_ms;
    ((em__api_call_t *)r)->key_rate = k->rate_per_min;
    if (e->key_used_ms == 0 || mono - e->key_used_ms >= KEY_USED_MS) {
        e->key_used_ms = mono;
        em_error_t err;
        if (em_store_enqueue_key_used(r->store, k->key_id, r->now_ms, &err) != EM_OK)
            em_log(EM_LOG_WARN, "api", r->cid, "last-used time not queued",
                   &EM_LOG_STR("error", err.message), 1);
    }
    return NULL;
}

static const char *auth_jwt(em__api_req_t *r, const char *cred, size_t len, int64_t mono)
{
    em__api_identity_t who;
    bool user_bound = false;
    const char *why = em__api_jwt_verify_bound(r->api, cred, len, r->now_ms, &who, &user_bound);
    if (why != NULL)
        return why;
    if (user_bound) {
        /* A token minted for a certificate's user dies with that user. */
        bool failed = false;
        centry_t *e = cache_get(r->api, C_USER, who.name, mono, &failed);
        if (e == NULL)
            return failed ? "user lookup failed" : "token of a deleted user";
        if (e->v.u.disabled)
            return "token of a disabled user";
        ((em__api_call_t *)r)->jwt_user = true;
    }
    if (who.key_id[0] != '\0') {
        /* A token minted from an API key dies with that key. */
        const em_store_api_key_t *k = NULL;
        centry_t *e = NULL;
        why = check_key(r, who.key_id, NULL, mono, &k, &e);
        if (why != NULL)
            return why;
        ((em__api_call_t *)r)->key_rate = k->rate_per_min;
    }
    if (who.role == EM_ROLE_DEVICE && !device_ok(r, who.device_id, mono))
        return "token for an unknown or disabled device";
    r->who = who;
    return NULL;
}

/*
 * A client certificate's CN: a device, else a user. NULL reason when mapped;
 * *mapped false when the CN is neither. The certificate itself is verified
 * first (tls.c: chain, validity, CRL, key usages; for a CN that is a device
 * id, the device profile): a revoked, expired or wrongly used certificate is
 * refused whatever else the request carries (*mapped stays true), its reason
 * in why_buf.
 */
static const char *auth_cert(em__api_req_t *r, const char *cn, int64_t mono, bool *mapped,
                             char *why_buf, size_t why_size)
{
    em__api_identity_t *who = &r->who;
    *mapped = true;
    bool device_cn = em_device_id_validate(cn, strlen(cn), NULL) == EM_OK;
    em_error_t verr;
    em_error_clear(&verr);
    if (em__api_tls_peer_verify(r->api, r->req, device_cn ? EM_CERT_DEVICE : EM_CERT_CLIENT,
                                r->now_ms, &verr) != EM_OK) {
        snprintf(why_buf, why_size, "client certificate refused: %s", verr.message);
        return why_buf;
    }
    /* em_verifier_check_device's rule, with the record cache: a device
     * certificate works while its device is registered and enabled. */
    if (device_cn && device_ok(r, cn, mono)) {
        who->method = EM__AUTHN_CERT;
        who->role = EM_ROLE_DEVICE;
        snprintf(who->name, sizeof who->name, "%s", cn);
        snprintf(who->device_id, sizeof who->device_id, "%s", cn);
        snprintf(who->actor, sizeof who->actor, "device:%s", cn);
        return NULL;
    }
    bool failed = false;
    centry_t *e = cache_get(r->api, C_USER, cn, mono, &failed);
    if (e == NULL) {
        *mapped = false;
        return failed ? "user lookup failed" : "certificate of an unknown identity";
    }
    if (e->v.u.disabled)
        return "certificate of a disabled user";
    if (e->v.u.role == EM_ROLE_NONE || e->v.u.role == EM_ROLE_DEVICE)
        return "certificate of a user without a role";
    who->method = EM__AUTHN_CERT;
    who->role = e->v.u.role;
    snprintf(who->name, sizeof who->name, "%s", e->v.u.name);
    snprintf(who->actor, sizeof who->actor, "user:%.59s", e->v.u.name);
    return NULL;
}

bool em__api_authenticate(em__api_req_t *r)
{
    int64_t mono = em_mono_ms();
    memset(&r->who, 0, sizeof r->who);

    /* A client address that failed too often is refused before any check. */
    if (em__api_fail_blocked(r))
        return false;

    const char *why = NULL;
    char cn[EM_STORE_NAME_MAX + 1];
    const char *authz =
        evhttp_find_header(evhttp_request_get_input_headers(r->req), "Authorization");
    if (em__api_tls_peer_cn(r->req, cn, sizeof cn)) {
        bool mapped = false;
        char why_buf[EM_ERROR_MESSAGE_MAX + 40];
        why = auth_cert(r, cn, mono, &mapped, why_buf, sizeof why_buf);
        if (why == NULL)
            return true;
        /* An unmapped certificate (a gateway's, a tool's) may still carry a
         * bearer credential; a disabled identity may not. */
        if (mapped || authz == NULL)
            return refuse(r, why);
        memset(&r->who, 0, sizeof r->who);
    }
    if (authz == NULL)
        return refuse(r, "no credentials");
    size_t len = 0;
    const char *cred = em__api_bearer(authz, &len);
    if (cred == NULL)
        return refuse(r, "malformed Authorization header");
    if (len >= 4 && memcmp(cred, "iot_", 4) == 0)
        why = auth_key(r, cred, len, mono);
    else
        why = auth_jwt(r, cred, len, mono);
    if (why != NULL)
        return refuse(r, why);
    return true;
}
