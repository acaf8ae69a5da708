/*
 * emiot - auth_jwt.c: JWTs (ES256). The signing key (loaded from
 * jwt_key_file, or made and written there: sealed in a keystore file when the
 * API has a keystore secret, a plain 0600 PEM otherwise), issuing tokens,
 * verifying them and their claims. Which requests present one is auth.c's.
 */
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <jwt.h>
#include <openssl/bio.h>
#include <openssl/core_names.h>
#include <openssl/crypto.h>
#include <openssl/err.h>
#include <openssl/evp.h>
#include <openssl/pem.h>
#include <openssl/rand.h>

#include "api/api_core.h"
#include "emiot/clock.h"
#include "emiot/log.h"
#include "security/security_internal.h"

#define JWT_SKEW_S    60 /* clock skew allowed for nbf and iat */
#define JWT_TTL_MAX_S 86400
#define KEY_FILE_MAX  16384

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

/* Parses the key file's contents (raw_len bytes): a keystore file opened
 * with ks, or a plain PEM key (*was_plain set). The key must be EC P-256. */
static em_err_t parse_key_file(const char *raw, size_t raw_len, const em_keystore_secret_t *ks,
                               EVP_PKEY **out, bool *was_plain, em_error_t *err)
{
    *out = NULL;
    *was_plain = false;
    unsigned char *pem = NULL;
    size_t pem_len = 0;
    if (em_keystore_is_sealed(raw, raw_len)) {
        if (ks == NULL)
            return em_error_set(err, EM_ERR_CONFIGURATION, EM_SEV_HIGH, "jwt_key_file",
                                "jwt_key_file is sealed in a keystore: configure [keystore]");
        em_error_t e;
        em_error_clear(&e);
        em_err_t rc = em_keystore_open(ks, raw, raw_len, &pem, &pem_len, &e);
        if (rc != EM_OK)
            return em_error_set(err, rc, EM_SEV_HIGH, "jwt_key_file", "jwt_key_file: %s",
                                e.message);
    } else {
        *was_plain = true;
    }
    const char *text = pem != NULL ? (const char *)pem : raw;
    size_t text_len = pem != NULL ? pem_len : raw_len;
    BIO *b = text_len <= KEY_FILE_MAX ? BIO_new_mem_buf(text, (int)text_len) : NULL;
    EVP_PKEY *pkey = b != NULL ? PEM_read_bio_PrivateKey(b, NULL, NULL, NULL) : NULL;
    BIO_free(b);
    ERR_clear_error();
    em_keystore_data_free(pem, pem_len);
    if (pkey == NULL || !is_p256(pkey)) {
        EVP_PKEY_free(pkey);
        return em_error_set(err, EM_ERR_CONFIGURATION, EM_SEV_HIGH, "jwt_key_file",
                            "must hold an EC P-256 private key (PEM)");
    }
    *out = pkey;
    return EM_OK;
}

/* Reads and parses the existing key file at path. */
static em_err_t load_key_file(const char *path, const em_keystore_secret_t *ks, EVP_PKEY **out,
                              bool *was_plain, em_error_t *err)
{
    char *raw = NULL;
    size_t raw_len = 0;
    em_err_t rc = read_key_file(path, &raw, &raw_len, err);
    if (rc != EM_OK)
        return rc;
    rc = parse_key_file(raw, raw_len, ks, out, was_plain, err);
    OPENSSL_cleanse(raw, raw_len);
    free(raw);
    return rc;
}

/* Fills api's PEM copies of pkey (private and public). */
static em_err_t encode_key(em_api_t *api, EVP_PKEY *pkey, em_error_t *err)
{
    em_err_t rc = EM_OK;
    BIO *priv = BIO_new(BIO_s_mem());
    BIO *pub = BIO_new(BIO_s_mem());
    if (priv == NULL || pub == NULL ||
        PEM_write_bio_PrivateKey(priv, pkey, NULL, NULL, 0, NULL, NULL) != 1 ||
        PEM_write_bio_PUBKEY(pub, pkey) != 1) {
        rc = em_error_set(err, EM_ERR_NOMEM, EM_SEV_HIGH, NULL, "cannot encode the JWT key");
    } else {
        api->jwt_priv_pem = bio_copy(priv, &api->jwt_priv_len);
        api->jwt_pub_pem = bio_copy(pub, &api->jwt_pub_len);
        if (api->jwt_priv_pem == NULL || api->jwt_pub_pem == NULL) {
            em__api_jwt_key_free(api);
            rc = em_error_set(err, EM_ERR_NOMEM, EM_SEV_HIGH, NULL, "out of memory");
        }
    }
    if (priv != NULL) {
        char *p = NULL;
        long n = BIO_get_mem_data(priv, &p);
        if (n > 0)
            OPENSSL_cleanse(p, (size_t)n);
    }
    BIO_free(priv);
    BIO_free(pub);
    return rc;
}

em_err_t em__api_jwt_key_load(em_api_t *api, em_error_t *err)
{
    const char *path = api->opts.jwt_key_file;
    const em_keystore_secret_t *ks = api->opts.keystore;
    EVP_PKEY *pkey = NULL;
    em_err_t rc = EM_OK;
    bool exists = false;
    bool was_plain = false;

    if (path != NULL) {
        struct stat st;
        exists = lstat(path, &st) == 0;
    }
    if (exists) {
        rc = load_key_file(path, ks, &pkey, &was_plain, err);
        if (rc != EM_OK)
            return rc;
    } else {
        pkey = EVP_PKEY_Q_keygen(NULL, NULL, "EC", "P-256");
        if (pkey == NULL)
            return em_error_set(err, EM_ERR_INTERNAL, EM_SEV_HIGH, NULL,
                                "cannot generate the JWT key");
    }
    rc = encode_key(api, pkey, err);
    if (rc != EM_OK)
        goto out;

    if (!exists && path != NULL && ks != NULL) {
        /* Created sealed, and never over a file another process made in the
         * meantime: daemons sharing the directory must agree on one key, so
         * the loser of that race takes the winner's. */
        rc = em__keystore_write_new(path, ks, api->jwt_priv_pem, (size_t)api->jwt_priv_len, err);
        if (rc == EM_OK) {
            em_log(EM_LOG_INFO, "api", NULL, "JWT signing key created (sealed in the keystore)",
                   &EM_LOG_STR("path", path), 1);
        } else if (rc == EM_ERR_EXISTS) {
            em__api_jwt_key_free(api);
            EVP_PKEY_free(pkey);
            pkey = NULL;
            exists = true;
            rc = load_key_file(path, ks, &pkey, &was_plain, err);
            if (rc == EM_OK)
                rc = encode_key(api, pkey, err);
        }
    } else if (!exists && path != NULL) {
        rc = write_key_file(path, (const char *)api->jwt_priv_pem, (size_t)api->jwt_priv_len, err);
        if (rc == EM_OK)
            em_log(EM_LOG_INFO, "api", NULL, "JWT signing key created", &EM_LOG_STR("path", path),
                   1);
    } else if (path == NULL) {
        em_log(EM_LOG_WARN, "api", NULL,
               "no jwt_key_file: tokens are signed with a key that lives until exit", NULL, 0);
    }
    if (rc == EM_OK && exists && was_plain && ks != NULL) {
        /* A key written before the keystore was configured: sealed in place,
         * atomically (the plain file is replaced, never half-written). */
        rc = em_keystore_write_file(path, ks, api->jwt_priv_pem, (size_t)api->jwt_priv_len, err);
        if (rc == EM_OK)
            em_log(EM_LOG_WARN, "api", NULL,
                   "JWT signing key was a plain PEM file: sealed it in the keystore",
                   &EM_LOG_STR("path", path), 1);
    }
out:
    if (rc != EM_OK)
        em__api_jwt_key_free(api);
    EVP_PKEY_free(pkey);
    return rc;
}

void em__api_jwt_key_free(em_api_t *api)
{
    if (api->jwt_priv_pem != NULL) {
        OPENSSL_cleanse(api->jwt_priv_pem, (size_t)api->jwt_priv_len);
        free(api->jwt_priv_pem);
        api->jwt_priv_pem = NULL;
    }
    free(api->jwt_pub_pem);
    api->jwt_pub_pem = NULL;
}

/* ---- JWT ------------------------------------------------------------------ */

em_err_t em__api_jwt_issue(em_api_t *api, const em__api_identity_t *who, int ttl_s, char *buf,
                           size_t size, int64_t *expires_at_ms)
{
    bool user = who->method == EM__AUTHN_CERT && who->role != EM_ROLE_DEVICE;
    return em__api_jwt_issue_bound(api, who, user, ttl_s, buf, size, expires_at_ms);
}

/* The "caps" claim: a JSON array of the ncaps strings (plain names, checked
 * by the caller's table: nothing here needs escaping). */
static int add_caps(jwt_t *jwt, const char *const *caps, size_t ncaps)
{
    char json[512];
    size_t n = 0;
    int w = snprintf(json, sizeof json, "{\"caps\":[");
    if (w < 0)
        return -1;
    n = (size_t)w;
    for (size_t i = 0; i < ncaps; i++) {
        for (const char *c = caps[i]; *c != '\0'; c++)
            if (*c == '"' || *c == '\\' || (unsigned char)*c < 0x20)
                return -1;
        w = snprintf(json + n, sizeof json - n, "%s\"%s\"", i > 0 ? "," : "", caps[i]);
        if (w < 0 || (size_t)w >= sizeof json - n)
            return -1;
        n += (size_t)w;
    }
    if (n + 3 > sizeof json)
        return -1;
    memcpy(json + n, "]}", 3);
    return jwt_add_grants_json(jwt, json);
}

static em_err_t issue(em_api_t *api, const em__api_identity_t *who, bool user_bound,
                      const char *const *caps, size_t ncaps, int ttl_s, char *buf, size_t size,
                      int64_t *expires_at_ms);

em_err_t em__api_jwt_issue_bound(em_api_t *api, const em__api_identity_t *who, bool user_bound,
                                 int ttl_s, char *buf, size_t size, int64_t *expires_at_ms)
{
    return issue(api, who, user_bound, NULL, 0, ttl_s, buf, size, expires_at_ms);
}

em_err_t em__api_jwt_issue_caps(em_api_t *api, const em__api_identity_t *who,
                                const char *const *caps, size_t ncaps, int ttl_s, char *buf,
                                size_t size, int64_t *expires_at_ms)
{
    return issue(api, who, false, caps, ncaps, ttl_s, buf, size, expires_at_ms);
}

static em_err_t issue(em_api_t *api, const em__api_identity_t *who, bool user_bound,
                      const char *const *caps, size_t ncaps, int ttl_s, char *buf, size_t size,
                      int64_t *expires_at_ms)
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
    if (ncaps > 0 && add_caps(jwt, caps, ncaps) != 0)
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

long em__b64url_decode(const char *s, size_t len, unsigned char *out, size_t size)
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
    unsigned char buf[EM__API_JWT_MAX];
    long n = em__b64url_decode(s, len, buf, sizeof buf - 1);
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
    if (exp_s - iat_s > (int64_t)EM__API_DEVICE_JWT_TTL_MAX)
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
    /* Device tokens from challenge-response may live longer than a day
     * (device_token_ttl_s); every other token at most a day. */
    if (role != EM_ROLE_DEVICE && exp_s - iat_s > JWT_TTL_MAX_S)
        return "lifetime too long";
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
        (kid == NULL || !em__api_key_id_valid(kid, strlen(kid))))
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
    if (token == NULL || len == 0 || len >= EM__API_JWT_MAX)
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

    char tok[EM__API_JWT_MAX];
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
