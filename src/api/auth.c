/*
 * emiot - auth.c: who is calling. API keys, JWTs (ES256) and client
 * certificates; the JWT signing key; a short-lived cache of key, user and
 * device records so that an authenticated request does no database read.
 */
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <event2/http.h>
#include <event2/keyvalq_struct.h>
#include <jwt.h>
#include <openssl/bio.h>
#include <openssl/core_names.h>
#include <openssl/crypto.h>
#include <openssl/evp.h>
#include <openssl/pem.h>
#include <openssl/rand.h>

#include "api/api_core.h"
#include "emiot/clock.h"
#include "emiot/log.h"

#define CACHE_MAX           10000
#define CACHE_TTL_MS        5000  /* another daemon's revocation is seen this late at most */
#define KEY_USED_MS         60000 /* last-used is written at most this often per key */
#define JWT_MAX             4096
#define JWT_SKEW_S          60 /* clock skew allowed for nbf and iat */
#define JWT_TTL_MAX_S       86400
#define KEY_FILE_MAX        16384
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
static bool key_id_valid(const char *s, size_t len)
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

/* ---- the JWT key ----------------------------------------------------- */

static em_err_t read_key_file(const char *path, char **out, size_t *out_len, em_error_t *err)
{
    int fd = open(path, O_RDONLY | O_NOFOLLOW | O_CLOEXEC);
    if (fd < 0)
        return em_error_set(err, EM_ERR_IO, EM_SEV_HIGH, "jwt_key_file", "cannot open: %s",
                            strerror(errno));
    struct stat st;
    if (fstat(fd, &st) != 0 || !S_ISREG(st.st_mode)) {
        close(fd);
        return em_error_set(err, EM_ERR_CONFIGURATION, EM_SEV_HIGH, "jwt_key_file",
                            "must be a regular file");
    }
    if ((st.st_mode & 077) != 0) {
        close(fd);
        return em_error_set(err, EM_ERR_CONFIGURATION, EM_SEV_HIGH, "jwt_key_file",
                            "must not be accessible by group or others (chmod 600)");
    }
    if (st.st_size <= 0 || st.st_size > KEY_FILE_MAX) {
        close(fd);
        return em_error_set(err, EM_ERR_CONFIGURATION, EM_SEV_HIGH, "jwt_key_file",
                            "must be a PEM key of at most %d bytes", KEY_FILE_MAX);
    }
    size_t len = (size_t)st.st_size;
    char *buf = malloc(len + 1);
    if (buf == NULL) {
        close(fd);
        return em_error_set(err, EM_ERR_NOMEM, EM_SEV_HIGH, NULL, "out of memory");
    }
    size_t got = 0;
    while (got < len) {
        ssize_t n = read(fd, buf + got, len - got);
        if (n < 0 && errno == EINTR)
            continue;
        if (n <= 0)
            break;
        got += (size_t)n;
    }
    close(fd);
    if (got != len) {
        OPENSSL_cleanse(buf, len);
        free(buf);
        return em_error_set(err, EM_ERR_IO, EM_SEV_HIGH, "jwt_key_file", "short read");
    }
    buf[len] = '\0';
    *out = buf;
    *out_len = len;
    return EM_OK;
}

/* Writes pem to a new file (O_EXCL, 0600), synced. */
static em_err_t write_key_file(const char *path, const char *pem, size_t len, em_error_t *err)
{
    int fd = open(path, O_WRONLY | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC, 0600);
    if (fd < 0)
        return em_error_set(err, EM_ERR_IO, EM_SEV_HIGH, "jwt_key_file", "cannot create: %s",
                            strerror(errno));
    bool ok = fchmod(fd, 0600) == 0;
    size_t done = 0;
    while (ok && done < len) {
        ssize_t n = write(fd, pem + done, len - done);
        if (n < 0 && errno == EINTR)
            continue;
        if (n <= 0)
            ok = false;
        else
            done += (size_t)n;
    }
    if (ok && fsync(fd) != 0)
        ok = false;
    if (close(fd) != 0)
        ok = false;
    if (!ok) {
        unlink(path);
        return em_error_set(err, EM_ERR_IO, EM_SEV_HIGH, "jwt_key_file", "cannot write: %s",
                            strerror(errno));
    }
    return EM_OK;
}

/* Copies a memory BIO's contents into a new buffer. */
static unsigned char *bio_copy(BIO *b, int *len)
{
    char *p = NULL;
    long n = BIO_get_mem_data(b, &p);
    if (n <= 0 || n > KEY_FILE_MAX)
        return NULL;
    unsigned char *out = malloc((size_t)n + 1);
    if (out == NULL)
        return NULL;
    memcpy(out, p, (size_t)n);
    out[n] = '\0';
    *len = (int)n;
    return out;
}

/* True when pkey is an EC key on P-256. */
static bool is_p256(EVP_PKEY *pkey)
{
    char group[64];
    size_t glen = 0;
    return EVP_PKEY_is_a(pkey, "EC") &&
           EVP_PKEY_get_utf8_string_param(pkey, OSSL_PKEY_PARAM_GROUP_NAME, group, sizeof group,
                                          &glen) == 1 &&
           (strcmp(group, "prime256v1") == 0 || strcmp(group, "P-256") == 0);
}

em_err_t em__api_auth_init(em_api_t *api, em_error_t *err)
{
    const char *path = api->opts.jwt_key_file;
    EVP_PKEY *pkey = NULL;
    char *pem = NULL;
    size_t pem_len = 0;
    em_err_t rc = EM_OK;

    api->cache = cache_new();
    if (api->cache == NULL)
        return em_error_set(err, EM_ERR_NOMEM, EM_SEV_HIGH, NULL, "out of memory");

    bool exists = false;
    if (path != NULL) {
        struct stat st;
        exists = lstat(path, &st) == 0;
    }
    if (exists) {
        rc = read_key_file(path, &pem, &pem_len, err);
        if (rc != EM_OK)
            return rc;
        BIO *b = BIO_new_mem_buf(pem, (int)pem_len);
        pkey = b != NULL ? PEM_read_bio_PrivateKey(b, NULL, NULL, NULL) : NULL;
        BIO_free(b);
        OPENSSL_cleanse(pem, pem_len);
        free(pem);
        if (pkey == NULL || !is_p256(pkey)) {
            EVP_PKEY_free(pkey);
            return em_error_set(err, EM_ERR_CONFIGURATION, EM_SEV_HIGH, "jwt_key_file",
                                "must hold an EC P-256 private key (PEM)");
        }
    } else {
        pkey = EVP_PKEY_Q_keygen(NULL, NULL, "EC", "P-256");
        if (pkey == NULL)
            return em_error_set(err, EM_ERR_INTERNAL, EM_SEV_HIGH, NULL,
                                "cannot generate the JWT key");
    }

    BIO *priv = BIO_new(BIO_s_mem());
    BIO *pub = BIO_new(BIO_s_mem());
    if (priv == NULL || pub == NULL ||
        PEM_write_bio_PrivateKey(priv, pkey, NULL, NULL, 0, NULL, NULL) != 1 ||
        PEM_write_bio_PUBKEY(pub, pkey) != 1) {
        rc = em_error_set(err, EM_ERR_NOMEM, EM_SEV_HIGH, NULL, "cannot encode the JWT key");
        goto out;
    }
    api->jwt_priv_pem = bio_copy(priv, &api->jwt_priv_len);
    api->jwt_pub_pem = bio_copy(pub, &api->jwt_pub_len);
    if (api->jwt_priv_pem == NULL || api->jwt_pub_pem == NULL) {
        rc = em_error_set(err, EM_ERR_NOMEM, EM_SEV_HIGH, NULL, "out of memory");
        goto out;
    }
    if (!exists && path != NULL) {
        rc = write_key_file(path, (const char *)api->jwt_priv_pem, (size_t)api->jwt_priv_len, err);
        if (rc == EM_OK)
            em_log(EM_LOG_INFO, "api", NULL, "JWT signing key created", &EM_LOG_STR("path", path),
                   1);
    } else if (path == NULL) {
        em_log(EM_LOG_WARN, "api", NULL,
               "no jwt_key_file: tokens are signed with a key that lives until exit", NULL, 0);
    }
out:
    if (priv != NULL) {
        char *p = NULL;
        long n = BIO_get_mem_data(priv, &p);
        if (n > 0)
            OPENSSL_cleanse(p, (size_t)n);
    }
    BIO_free(priv);
    BIO_free(pub);
    EVP_PKEY_free(pkey);
    return rc;
}

void em__api_auth_cleanup(em_api_t *api)
{
    if (api->jwt_priv_pem != NULL) {
        OPENSSL_cleanse(api->jwt_priv_pem, (size_t)api->jwt_priv_len);
        free(api->jwt_priv_pem);
        api->jwt_priv_pem = NULL;
    }
    free(api->jwt_pub_pem);
    api->jwt_pub_pem = NULL;
    cache_free(api->cache);
    api->cache = NULL;
}

/* ---- JWT ------------------------------------------------------------------ */

em_err_t em__api_jwt_issue(em_api_t *api, const em__api_identity_t *who, int ttl_s, char *buf,
                           size_t size, int64_t *expires_at_ms)
{
    bool user = who->method == EM__AUTHN_CERT && who->role != EM_ROLE_DEVICE;
    return em__api_jwt_issue_bound(api, who, user, ttl_s, buf, size, expires_at_ms);
}

em_err_t em__api_jwt_issue_bound(em_api_t *api, const em__api_identity_t *who, bool user_bound,
                                 int ttl_s, char *buf, size_t size, int64_t *expires_at_ms)
{
    unsigned char rnd[8];
    char jti[17];
    static const char hex[] = "0123456789abcdef";
    if (RAND_bytes(rnd, sizeof rnd) != 1)
        return EM_ERR_INTERNAL;
    for (size_t i = 0; i < sizeof rnd; i++) {
        jti[2 * i] = hex[rnd[i] >> 4];
        jti[2 * i + 1] = hex[rnd[i] & 15];
    }
    jti[16] = '\0';
    const char *role = em_role_name(who->role);
    if (role == NULL || ttl_s <= 0)
        return EM_ERR_INTERNAL;

    int64_t now_s = em_now_ms() / 1000;
    int64_t exp_s = now_s + ttl_s;
    jwt_t *jwt = NULL;
    char *tok = NULL;
    em_err_t rc = EM_ERR_INTERNAL;
    if (jwt_new(&jwt) != 0)
        return EM_ERR_INTERNAL;
    if (jwt_add_grant(jwt, "iss", api->opts.jwt_issuer) != 0 ||
        jwt_add_grant(jwt, "aud", api->opts.jwt_audience) != 0 ||
        jwt_add_grant(jwt, "sub", who->name) != 0 || jwt_add_grant(jwt, "role", role) != 0 ||
        jwt_add_grant(jwt, "jti", jti) != 0 || jwt_add_grant_int(jwt, "iat", (long)now_s) != 0 ||
        jwt_add_grant_int(jwt, "exp", (long)exp_s) != 0)
        goto out;
    if (who->device_id[0] != '\0' && jwt_add_grant(jwt, "device", who->device_id) != 0)
        goto out;
    if (who->key_id[0] != '\0' && jwt_add_grant(jwt, "key", who->key_id) != 0)
        goto out;
    if (user_bound && jwt_add_grant(jwt, "user", who->name) != 0)
        goto out;
    if (jwt_set_alg(jwt, JWT_ALG_ES256, api->jwt_priv_pem, api->jwt_priv_len) != 0)
        goto out;
    tok = jwt_encode_str(jwt);
    if (tok == NULL)
        goto out;
    size_t len = strlen(tok);
    if (len + 1 > size) {
        rc = EM_ERR_BUFFER_TOO_SMALL;
        goto out;
    }
    memcpy(buf, tok, len + 1);
    if (expires_at_ms != NULL)
        *expires_at_ms = exp_s * 1000;
    rc = EM_OK;
out:
    free(tok);
    jwt_free(jwt); /* libjwt wipes its copy of the key */
    return rc;
}

/* Decodes base64url (no padding) into out (at most size bytes). -1 on bad input. */
static long b64url_decode(const char *s, size_t len, unsigned char *out, size_t size)
{
    uint32_t acc = 0;
    int bits = 0;
    size_t n = 0;
    for (size_t i = 0; i < len; i++) {
        char c = s[i];
        int v;
        if (c >= 'A' && c <= 'Z')
            v = c - 'A';
        else if (c >= 'a' && c <= 'z')
            v = c - 'a' + 26;
        else if (c >= '0' && c <= '9')
            v = c - '0' + 52;
        else if (c == '-')
            v = 62;
        else if (c == '_')
            v = 63;
        else
            return -1;
        acc = (acc << 6) | (uint32_t)v;
        bits += 6;
        if (bits >= 8) {
            bits -= 8;
            if (n >= size)
                return -1;
            out[n++] = (unsigned char)(acc >> bits);
        }
        acc &= (1u << bits) - 1;
    }
    if (bits >= 6 || acc != 0) /* a lone character, or bits left over */
        return -1;
    return (long)n;
}

/* Parses one base64url JSON segment into an object. */
static cJSON *segment_json(const char *s, size_t len)
{
    unsigned char buf[JWT_MAX];
    long n = b64url_decode(s, len, buf, sizeof buf - 1);
    if (n <= 0)
        return NULL;
    if (memchr(buf, '\0', (size_t)n) != NULL)
        return NULL;
    buf[n] = '\0';
    cJSON *j = cJSON_ParseWithLengthOpts((const char *)buf, (size_t)n + 1, NULL, 1);
    if (j != NULL && !cJSON_IsObject(j)) {
        cJSON_Delete(j);
        return NULL;
    }
    return j;
}

/* An integer NumericDate claim. */
static bool claim_time(const cJSON *o, const char *name, int64_t *out)
{
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(o, name);
    if (!cJSON_IsNumber(v) || v->valuedouble < 0 || v->valuedouble > 253402300799.0 ||
        v->valuedouble != (double)(int64_t)v->valuedouble)
        return false;
    *out = (int64_t)v->valuedouble;
    return true;
}

static const char *claim_str(const cJSON *o, const char *name)
{
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(o, name);
    return cJSON_IsString(v) ? v->valuestring : NULL;
}

static bool printable_name(const char *s, size_t max)
{
    size_t len = strlen(s);
    if (len == 0 || len > max)
        return false;
    for (size_t i = 0; i < len; i++)
        if ((unsigned char)s[i] < 0x20 || s[i] == 0x7F)
            return false;
    return true;
}

/* Checks the claims of a token whose signature was verified. */
static const char *check_claims(em_api_t *api, const cJSON *c, int64_t now_ms,
                                em__api_identity_t *who, bool *user_bound)
{
    int64_t now_s = now_ms / 1000, exp_s, iat_s, nbf_s;
    const char *iss = claim_str(c, "iss");
    if (iss == NULL || strcmp(iss, api->opts.jwt_issuer) != 0)
        return "wrong issuer";
    const cJSON *aud = cJSON_GetObjectItemCaseSensitive(c, "aud");
    bool aud_ok = false;
    if (cJSON_IsString(aud)) {
        aud_ok = strcmp(aud->valuestring, api->opts.jwt_audience) == 0;
    } else if (cJSON_IsArray(aud)) {
        const cJSON *a;
        cJSON_ArrayForEach(a, aud) if (cJSON_IsString(a) &&
                                       strcmp(a->valuestring, api->opts.jwt_audience) == 0) aud_ok =
            true;
    }
    if (!aud_ok)
        return "wrong audience";
    if (!claim_time(c, "exp", &exp_s))
        return "no valid exp";
    if (now_s >= exp_s)
        return "expired";
    if (!claim_time(c, "iat", &iat_s))
        return "no valid iat";
    if (iat_s > now_s + JWT_SKEW_S)
        return "issued in the future";
    if (exp_s - iat_s > JWT_TTL_MAX_S)
        return "lifetime too long";
    if (cJSON_GetObjectItemCaseSensitive(c, "nbf") != NULL) {
        if (!claim_time(c, "nbf", &nbf_s))
            return "bad nbf";
        if (nbf_s > now_s + JWT_SKEW_S)
            return "not yet valid";
    }
    const char *sub = claim_str(c, "sub");
    if (sub == NULL || !printable_name(sub, EM_STORE_NAME_MAX))
        return "no valid sub";
    const char *role_s = claim_str(c, "role");
    em_role_t role;
    if (role_s == NULL || em_role_parse(role_s, &role) != EM_OK || role == EM_ROLE_NONE)
        return "no valid role";
    const char *dev = claim_str(c, "device");
    if (role == EM_ROLE_DEVICE) {
        if (dev == NULL || em_device_id_validate(dev, strlen(dev), NULL) != EM_OK)
            return "device token without a valid device";
    } else if (cJSON_GetObjectItemCaseSensitive(c, "device") != NULL) {
        return "device claim on a non-device token";
    }
    const char *usr = claim_str(c, "user");
    if (cJSON_GetObjectItemCaseSensitive(c, "user") != NULL &&
        (usr == NULL || strcmp(usr, sub) != 0 || role == EM_ROLE_DEVICE))
        return "bad user claim";
    const char *kid = claim_str(c, "key");
    if (cJSON_GetObjectItemCaseSensitive(c, "key") != NULL &&
        (kid == NULL || !key_id_valid(kid, strlen(kid))))
        return "bad key claim";

    memset(who, 0, sizeof *who);
    who->method = EM__AUTHN_JWT;
    who->role = role;
    snprintf(who->name, sizeof who->name, "%s", sub);
    if (kid != NULL)
        snprintf(who->key_id, sizeof who->key_id, "%s", kid);
    if (dev != NULL)
        snprintf(who->device_id, sizeof who->device_id, "%s", dev);
    snprintf(who->actor, sizeof who->actor, "jwt:%.60s", sub);
    who->expires_at_ms = exp_s * 1000;
    if (user_bound != NULL)
        *user_bound = usr != NULL;
    return NULL;
}

const char *em__api_jwt_verify(em_api_t *api, const char *token, size_t len, int64_t now_ms,
                               em__api_identity_t *who)
{
    return em__api_jwt_verify_bound(api, token, len, now_ms, who, NULL);
}

const char *em__api_jwt_verify_bound(em_api_t *api, const char *token, size_t len, int64_t now_ms,
                                     em__api_identity_t *who, bool *user_bound)
{
    if (token == NULL || len == 0 || len >= JWT_MAX)
        return "token too long";
    const char *d1 = memchr(token, '.', len);
    const char *d2 = d1 != NULL ? memchr(d1 + 1, '.', len - (size_t)(d1 + 1 - token)) : NULL;
    if (d1 == NULL || d2 == NULL || memchr(d2 + 1, '.', len - (size_t)(d2 + 1 - token)) != NULL)
        return "not a JWS compact token";
    if (d2 + 1 == token + len)
        return "no signature";

    /* The header is checked here, before libjwt: ES256 exactly ("none" and
     * HS256 keyed with the public key are the classic forgeries). */
    cJSON *hdr = segment_json(token, (size_t)(d1 - token));
    if (hdr == NULL)
        return "bad header";
    const char *alg = claim_str(hdr, "alg");
    bool alg_ok = alg != NULL && strcmp(alg, "ES256") == 0 &&
                  cJSON_GetObjectItemCaseSensitive(hdr, "crit") == NULL;
    cJSON_Delete(hdr);
    if (!alg_ok)
        return "algorithm not ES256";

    char tok[JWT_MAX];
    memcpy(tok, token, len);
    tok[len] = '\0';
    jwt_t *jwt = NULL;
    int rc = jwt_decode(&jwt, tok, api->jwt_pub_pem, api->jwt_pub_len);
    bool sig_ok = rc == 0 && jwt != NULL && jwt_get_alg(jwt) == JWT_ALG_ES256;
    jwt_free(jwt);
    if (!sig_ok)
        return "bad signature";

    cJSON *claims = segment_json(d1 + 1, (size_t)(d2 - d1 - 1));
    if (claims == NULL)
        return "bad payload";
    const char *why = check_claims(api, claims, now_ms, who, user_bound);
    cJSON_Delete(claims);
    return why;
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
    while (n <= JWT_MAX && p[n] != '\0') {
        unsigned char c = (unsigned char)p[n];
        if (c <= 0x20 || c >= 0x7F)
            break;
        n++;
    }
    const char *q = p + n;
    while (*q == ' ')
        q++;
    if (n == 0 || n > JWT_MAX || *q != '\0')
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

/* Refuses: 401, a security event with the reason, a token from the client
 * address's failure bucket. */
static bool refuse(em__api_req_t *r, const char *reason)
{
    char host[EM__BUCKET_KEY_MAX + 1];
    source_host(r->source, host, sizeof host);
    em__buckets_take(r->api->fail_buckets, host, r->api->opts.auth_fail_per_min, em_mono_ms(),
                     NULL);
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

/* A client certificate's CN: a device, else a user. NULL reason when mapped;
 * *mapped false when the CN is neither. */
static const char *auth_cert(em__api_req_t *r, const char *cn, int64_t mono, bool *mapped)
{
    em__api_identity_t *who = &r->who;
    *mapped = true;
    if (em_device_id_validate(cn, strlen(cn), NULL) == EM_OK && device_ok(r, cn, mono)) {
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
    em_api_t *api = r->api;
    int64_t mono = em_mono_ms();
    memset(&r->who, 0, sizeof r->who);

    /* A client address that failed too often is refused before any check. */
    char host[EM__BUCKET_KEY_MAX + 1];
    uint32_t retry = 0;
    source_host(r->source, host, sizeof host);
    if (!em__buckets_peek(api->fail_buckets, host, api->opts.auth_fail_per_min, mono, &retry)) {
        em__api_call_t *call = (em__api_call_t *)r;
        if (em__buckets_report(api->fail_buckets, host, mono, 60000))
            em__api_security_event(r, "auth_blocked", EM_SEV_HIGH,
                                   "too many failed authentications from this address");
        snprintf(call->retry_buf, sizeof call->retry_buf, "%u", retry);
        call->retry_after = call->retry_buf;
        em__api_error(r, 429, "rate_limit_exceeded", "too many failed authentications",
                      "authentication failures from this address over the limit");
        return false;
    }

    const char *why = NULL;
    char cn[EM_STORE_NAME_MAX + 1];
    const char *authz =
        evhttp_find_header(evhttp_request_get_input_headers(r->req), "Authorization");
    if (em__api_tls_peer_cn(r->req, cn, sizeof cn)) {
        bool mapped = false;
        why = auth_cert(r, cn, mono, &mapped);
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
