/*
 * emiot - keystore.c: secrets at rest (keystore.h). The secret that opens a
 * keystore (a passphrase or a key file), sealing and opening the file format
 * described in keystore.h, and the atomic file writes the keys share.
 *
 * Key derivation gives 64 bytes: the first 32 are the AES-256-GCM key, and
 * the first 16 bytes of SHA-256("emiot-keystore-check" || last 32) are the
 * key check stored in the header. A wrong secret therefore shows as a check
 * mismatch before any decryption, and a right secret with a failing tag can
 * only mean that the file was modified. The check gives an attacker nothing
 * the tag would not: both need the full KDF per guess.
 */
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <openssl/core_names.h>
#include <openssl/crypto.h>
#include <openssl/err.h>
#include <openssl/evp.h>
#include <openssl/kdf.h>
#include <openssl/params.h>
#include <openssl/rand.h>

#include "emiot/daemon.h"
#include "emiot/keystore.h"
#include "security/security_internal.h"

#define KS_MAGIC_LEN  4
#define KS_HEADER_LEN 60
#define KS_TAG_LEN    16
#define KS_SALT_OFF   12
#define KS_SALT_LEN   16
#define KS_NONCE_OFF  28
#define KS_NONCE_LEN  12
#define KS_CHECK_OFF  40
#define KS_CHECK_LEN  16
#define KS_LEN_OFF    56
#define KS_KDF_SCRYPT 1
#define KS_KDF_KEY    2
#define KS_SCRYPT_R   8
#define KS_SCRYPT_P   1
#define KS_KEY_LEN    32
#define KS_KEY_HEX    ((size_t)2 * KS_KEY_LEN) /* digits of a key file */
#define KS_OKM_LEN    64
#define KS_HKDF_INFO  "emiot-keystore v1"
#define KS_CHECK_TAG  "emiot-keystore-check"

/* The most a passphrase file or a key file may hold: only the first line is
 * used, but a file much larger than a line is not what it claims to be. */
#define SECRET_FILE_MAX 4096

/* The file starts with these four bytes; they are not a C string. */
static const unsigned char ks_magic[KS_MAGIC_LEN] = {'E', 'M', 'K', 'S'};

_Static_assert(EM_KEYSTORE_FILE_MAX == EM_KEYSTORE_DATA_MAX + KS_HEADER_LEN + KS_TAG_LEN,
               "the largest file is the largest secret, a header and a tag");

struct em_keystore_secret {
    int kind;            /* KS_KDF_SCRYPT or KS_KDF_KEY */
    unsigned log2_n;     /* scrypt cost when sealing */
    unsigned char *pass; /* the passphrase (kind scrypt), len bytes */
    size_t len;
    unsigned char key[KS_KEY_LEN]; /* the key file's bytes (kind key) */
};

/* ---- secrets ------------------------------------------------------------ */

static em_err_t nomem(em_error_t *err)
{
    return em_error_set(err, EM_ERR_NOMEM, EM_SEV_HIGH, NULL, "out of memory");
}

/* Characters, not bytes: a UTF-8 passphrase of 12 accented letters is as long
 * as the rule asks; a continuation byte does not start a character. */
static size_t utf8_chars(const unsigned char *p, size_t len)
{
    size_t n = 0;
    for (size_t i = 0; i < len; i++)
        n += (p[i] & 0xC0) != 0x80;
    return n;
}

static bool all_same_byte(const unsigned char *p, size_t len)
{
    for (size_t i = 1; i < len; i++) {
        if (p[i] != p[0])
            return false;
    }
    return true;
}

em_err_t em_keystore_secret_passphrase(const char *pass, size_t len, em_keystore_secret_t **out,
                                       em_error_t *err)
{
    if (out == NULL || (pass == NULL && len > 0))
        return em_error_set(err, EM_ERR_INVALID_ARGUMENT, EM_SEV_MEDIUM, NULL,
                            "pass and out are required");
    *out = NULL;
    const unsigned char *p = (const unsigned char *)pass;
    /* The messages describe the rule, never the passphrase. */
    if (len > EM_KEYSTORE_PASSPHRASE_MAX)
        return em_error_set(err, EM_ERR_VALIDATION, EM_SEV_HIGH, "passphrase",
                            "passphrase: at most %d bytes", EM_KEYSTORE_PASSPHRASE_MAX);
    if (len == 0 || utf8_chars(p, len) < EM_KEYSTORE_PASSPHRASE_MIN)
        return em_error_set(err, EM_ERR_VALIDATION, EM_SEV_HIGH, "passphrase",
                            "passphrase: at least %d characters", EM_KEYSTORE_PASSPHRASE_MIN);
    /* A NUL would cut the passphrase short wherever it passes through a C
     * string (a file, the environment): refuse it everywhere alike. */
    if (memchr(p, '\0', len) != NULL)
        return em_error_set(err, EM_ERR_VALIDATION, EM_SEV_HIGH, "passphrase",
                            "passphrase: must not contain NUL bytes");
    if (em_daemon_secret_is_placeholder(pass, len) || all_same_byte(p, len))
        return em_error_set(err, EM_ERR_VALIDATION, EM_SEV_HIGH, "passphrase",
                            "passphrase: a placeholder or a repeated character; choose a real one");
    em_keystore_secret_t *s = calloc(1, sizeof *s);
    if (s == NULL)
        return nomem(err);
    s->pass = malloc(len);
    if (s->pass == NULL) {
        free(s);
        return nomem(err);
    }
    memcpy(s->pass, p, len);
    s->len = len;
    s->kind = KS_KDF_SCRYPT;
    s->log2_n = EM_KEYSTORE_LOG2N_DEFAULT;
    *out = s;
    return EM_OK;
}

em_err_t em_keystore_secret_from_env(const char *var, em_keystore_secret_t **out, em_error_t *err)
{
    if (var == NULL || var[0] == '\0' || out == NULL)
        return em_error_set(err, EM_ERR_INVALID_ARGUMENT, EM_SEV_MEDIUM, NULL,
                            "var and out are required");
    *out = NULL;
    const char *v = getenv(var);
    if (v == NULL)
        return em_error_set(err, EM_ERR_CONFIGURATION, EM_SEV_HIGH, "passphrase",
                            "the environment variable %s is not set", var);
    return em_keystore_secret_passphrase(v, strlen(v), out, err);
}

/* Reads a small secret file that only its owner may read. */
static em_err_t read_private_file(const char *what, const char *path, unsigned char **buf,
                                  size_t *len, em_error_t *err)
{
    unsigned mode = 0;
    em_error_t e;
    em_error_clear(&e);
    em_err_t rc = em__security_read_file(path, SECRET_FILE_MAX, buf, len, &mode, &e);
    if (rc == EM_ERR_NOMEM)
        return nomem(err);
    if (rc != EM_OK)
        return em_error_set(err, EM_ERR_CONFIGURATION, EM_SEV_HIGH, what, "%s: %s", what,
                            e.message);
    if ((mode & 077) != 0) {
        em_keystore_data_free(*buf, *len);
        *buf = NULL;
        *len = 0;
        return em_error_set(err, EM_ERR_CONFIGURATION, EM_SEV_HIGH, what,
                            "%s: %s must not be accessible by group or others (chmod 600)", what,
                            path);
    }
    return EM_OK;
}

/* How both secret-file constructors begin: path and out required, *out
 * NULL, then the file read (read_private_file, as what). */
static em_err_t read_secret_file(const char *what, const char *path, em_keystore_secret_t **out,
                                 unsigned char **buf, size_t *len, em_error_t *err)
{
    if (path == NULL || path[0] == '\0' || out == NULL)
        return em_error_set(err, EM_ERR_INVALID_ARGUMENT, EM_SEV_MEDIUM, NULL,
                            "path and out are required");
    *out = NULL;
    return read_private_file(what, path, buf, len, err);
}

em_err_t em_keystore_secret_from_file(const char *path, em_keystore_secret_t **out, em_error_t *err)
{
    unsigned char *buf = NULL;
    size_t len = 0;
    em_err_t rc = read_secret_file("passphrase_file", path, out, &buf, &len, err);
    if (rc != EM_OK)
        return rc;
    size_t line = 0;
    while (line < len && buf[line] != '\n')
        line++;
    if (line > 0 && buf[line - 1] == '\r')
        line--;
    rc = em_keystore_secret_passphrase((const char *)buf, line, out, err);
    em_keystore_data_free(buf, len);
    return rc;
}

static int hex_value(unsigned char c)
{
    if (c >= '0' && c <= '9')
        return c - '0';
    if (c >= 'a' && c <= 'f')
        return c - 'a' + 10;
    if (c >= 'A' && c <= 'F')
        return c - 'A' + 10;
    return -1;
}

em_err_t em_keystore_secret_key_file(const char *path, em_keystore_secret_t **out, em_error_t *err)
{
    unsigned char *buf = NULL;
    size_t len = 0;
    em_err_t rc = read_secret_file("key_file", path, out, &buf, &len, err);
    if (rc != EM_OK)
        return rc;
    size_t end = len;
    if (end > 0 && buf[end - 1] == '\n')
        end--;
    if (end > 0 && buf[end - 1] == '\r')
        end--;
    em_keystore_secret_t *s = NULL;
    bool ok = end == KS_KEY_HEX;
    if (ok) {
        s = calloc(1, sizeof *s);
        if (s == NULL) {
            em_keystore_data_free(buf, len);
            return nomem(err);
        }
        for (size_t i = 0; i < KS_KEY_LEN && ok; i++) {
            int hi = hex_value(buf[2 * i]);
            int lo = hex_value(buf[2 * i + 1]);
            ok = hi >= 0 && lo >= 0;
            if (ok)
                s->key[i] = (unsigned char)(hi << 4 | lo);
        }
    }
    em_keystore_data_free(buf, len);
    if (!ok) {
        em_keystore_secret_free(s);
        return em_error_set(err, EM_ERR_CONFIGURATION, EM_SEV_HIGH, "key_file",
                            "key_file: %s must hold 64 hex digits", path);
    }
    s->kind = KS_KDF_KEY;
    *out = s;
    return EM_OK;
}

/* fsync of the directory holding path, so that a new name survives a crash.
 * Some file systems cannot sync a directory (EINVAL): nothing more to do. */
static em_err_t sync_parent_dir(const char *path, em_error_t *err)
{
    char dir[PATH_MAX];
    const char *slash = strrchr(path, '/');
    if (slash == NULL) {
        dir[0] = '.';
        dir[1] = '\0';
    } else {
        size_t n = (size_t)(slash - path);
        if (n == 0)
            n = 1; /* "/file": the root */
        if (n >= sizeof dir)
            return em_error_set(err, EM_ERR_INVALID_ARGUMENT, EM_SEV_HIGH, "path", "path too long");
        memcpy(dir, path, n);
        dir[n] = '\0';
    }
    int fd = open(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (fd < 0)
        return em_error_set(err, EM_ERR_IO, EM_SEV_HIGH, "path", "cannot open directory %s: %s",
                            dir, strerror(errno));
    int rc = fsync(fd);
    int e = errno;
    close(fd);
    if (rc != 0 && e != EINVAL && e != EROFS)
        return em_error_set(err, EM_ERR_IO, EM_SEV_HIGH, "path", "cannot sync directory %s: %s",
                            dir, strerror(e));
    return EM_OK;
}

static bool write_all(int fd, const void *data, size_t len)
{
    const unsigned char *p = data;
    size_t done = 0;
    while (done < len) {
        ssize_t n = write(fd, p + done, len - done);
        if (n < 0 && errno == EINTR)
            continue;
        if (n <= 0) {
            if (n == 0)
                errno = EIO;
            return false;
        }
        done += (size_t)n;
    }
    return true;
}

em_err_t em_keystore_key_file_create(const char *path, em_error_t *err)
{
    if (path == NULL || path[0] == '\0')
        return em_error_set(err, EM_ERR_INVALID_ARGUMENT, EM_SEV_MEDIUM, NULL, "path is required");
    unsigned char key[KS_KEY_LEN];
    char hex[KS_KEY_HEX + 1];
    static const char digits[] = "0123456789abcdef";
    if (RAND_bytes(key, sizeof key) != 1) {
        ERR_clear_error();
        return em_error_set(err, EM_ERR_INTERNAL, EM_SEV_HIGH, NULL, "the CSPRNG failed");
    }
    for (size_t i = 0; i < KS_KEY_LEN; i++) {
        hex[2 * i] = digits[key[i] >> 4];
        hex[2 * i + 1] = digits[key[i] & 15];
    }
    hex[KS_KEY_HEX] = '\n';
    OPENSSL_cleanse(key, sizeof key);
    /* O_EXCL: an existing key file may be the only way into existing
     * keystores; it is never replaced. */
    int fd = open(path, O_WRONLY | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC, 0600);
    if (fd < 0) {
        int e = errno;
        OPENSSL_cleanse(hex, sizeof hex);
        if (e == EEXIST)
            return em_error_set(err, EM_ERR_EXISTS, EM_SEV_MEDIUM, "key_file",
                                "key_file: %s already exists", path);
        return em_error_set(err, EM_ERR_IO, EM_SEV_HIGH, "key_file",
                            "key_file: cannot create %s: %s", path, strerror(e));
    }
    bool ok = fchmod(fd, 0600) == 0 && write_all(fd, hex, sizeof hex) && fsync(fd) == 0;
    int e = errno;
    OPENSSL_cleanse(hex, sizeof hex);
    if (close(fd) != 0 && ok) {
        ok = false;
        e = errno;
    }
    if (!ok) {
        unlink(path);
        return em_error_set(err, EM_ERR_IO, EM_SEV_HIGH, "key_file",
                            "key_file: cannot write %s: %s", path, strerror(e));
    }
    return sync_parent_dir(path, err);
}

em_err_t em_keystore_secret_set_cost(em_keystore_secret_t *s, unsigned log2_n)
{
    if (s == NULL || log2_n < EM_KEYSTORE_LOG2N_MIN || log2_n > EM_KEYSTORE_LOG2N_MAX)
        return EM_ERR_INVALID_ARGUMENT;
    s->log2_n = log2_n;
    return EM_OK;
}

void em_keystore_secret_free(em_keystore_secret_t *s)
{
    if (s == NULL)
        return;
    if (s->pass != NULL) {
        OPENSSL_cleanse(s->pass, s->len);
        free(s->pass);
    }
    OPENSSL_cleanse(s, sizeof *s);
    free(s);
}

/* ---- key derivation ------------------------------------------------------ */

/* The 64 bytes of key material for a header's kdf and salt. */
static bool derive(const em_keystore_secret_t *s, unsigned log2_n, const unsigned char *salt,
                   unsigned char okm[KS_OKM_LEN])
{
    EVP_KDF *kdf = EVP_KDF_fetch(NULL, s->kind == KS_KDF_SCRYPT ? "SCRYPT" : "HKDF", NULL);
    EVP_KDF_CTX *ctx = kdf != NULL ? EVP_KDF_CTX_new(kdf) : NULL;
    EVP_KDF_free(kdf);
    if (ctx == NULL)
        return false;
    OSSL_PARAM params[7];
    size_t i = 0;
    if (s->kind == KS_KDF_SCRYPT) {
        uint64_t n = (uint64_t)1 << log2_n;
        uint32_t r = KS_SCRYPT_R;
        uint32_t p = KS_SCRYPT_P;
        /* OpenSSL's budget is 128 r (N + 2) for V plus 128 r p for B; the
         * default 32 MiB would refuse the costs the format allows. */
        uint64_t maxmem = 128 * (uint64_t)r * (n + 2 + p) + (uint64_t)1024 * 1024;
        params[i++] = OSSL_PARAM_construct_octet_string(OSSL_KDF_PARAM_PASSWORD, s->pass, s->len);
        params[i++] =
            OSSL_PARAM_construct_octet_string(OSSL_KDF_PARAM_SALT, (void *)salt, KS_SALT_LEN);
        params[i++] = OSSL_PARAM_construct_uint64(OSSL_KDF_PARAM_SCRYPT_N, &n);
        params[i++] = OSSL_PARAM_construct_uint32(OSSL_KDF_PARAM_SCRYPT_R, &r);
        params[i++] = OSSL_PARAM_construct_uint32(OSSL_KDF_PARAM_SCRYPT_P, &p);
        params[i++] = OSSL_PARAM_construct_uint64(OSSL_KDF_PARAM_SCRYPT_MAXMEM, &maxmem);
        params[i] = OSSL_PARAM_construct_end();
        bool ok = EVP_KDF_derive(ctx, okm, KS_OKM_LEN, params) == 1;
        EVP_KDF_CTX_free(ctx);
        return ok;
    }
    params[i++] = OSSL_PARAM_construct_utf8_string(OSSL_KDF_PARAM_DIGEST, (char *)"SHA256", 0);
    params[i++] = OSSL_PARAM_construct_octet_string(OSSL_KDF_PARAM_KEY, (void *)s->key, KS_KEY_LEN);
    params[i++] = OSSL_PARAM_construct_octet_string(OSSL_KDF_PARAM_SALT, (void *)salt, KS_SALT_LEN);
    params[i++] = OSSL_PARAM_construct_octet_string(OSSL_KDF_PARAM_INFO, (void *)KS_HKDF_INFO,
                                                    sizeof KS_HKDF_INFO - 1);
    params[i] = OSSL_PARAM_construct_end();
    bool ok = EVP_KDF_derive(ctx, okm, KS_OKM_LEN, params) == 1;
    EVP_KDF_CTX_free(ctx);
    return ok;
}

/* check = SHA-256("emiot-keystore-check" || okm[32..64])[0..16] */
static bool key_check(const unsigned char okm[KS_OKM_LEN], unsigned char check[KS_CHECK_LEN])
{
    unsigned char md[32];
    EVP_MD_CTX *ctx = EVP_MD_CTX_new();
    bool ok = ctx != NULL && EVP_DigestInit_ex(ctx, EVP_sha256(), NULL) == 1 &&
              EVP_DigestUpdate(ctx, KS_CHECK_TAG, sizeof KS_CHECK_TAG - 1) == 1 &&
              EVP_DigestUpdate(ctx, okm + KS_KEY_LEN, KS_OKM_LEN - KS_KEY_LEN) == 1 &&
              EVP_DigestFinal_ex(ctx, md, NULL) == 1;
    EVP_MD_CTX_free(ctx);
    if (ok)
        memcpy(check, md, KS_CHECK_LEN);
    OPENSSL_cleanse(md, sizeof md);
    return ok;
}

static void put_u32(unsigned char *p, uint32_t v)
{
    p[0] = (unsigned char)(v >> 24);
    p[1] = (unsigned char)(v >> 16);
    p[2] = (unsigned char)(v >> 8);
    p[3] = (unsigned char)v;
}

static uint32_t get_u32(const unsigned char *p)
{
    return (uint32_t)p[0] << 24 | (uint32_t)p[1] << 16 | (uint32_t)p[2] << 8 | (uint32_t)p[3];
}

/* AES-256-GCM over in (len bytes) with the header as additional data.
 * Encrypting writes the tag to tag; decrypting checks it. Returns 1 on
 * success, 0 when (decrypting) the tag does not match, -1 when OpenSSL
 * could not do the work at all (out of memory). */
static int gcm(bool enc, const unsigned char *key, const unsigned char *header,
               const unsigned char *in, size_t len, unsigned char *out, unsigned char *tag)
{
    EVP_CIPHER_CTX *ctx = EVP_CIPHER_CTX_new();
    if (ctx == NULL)
        return -1;
    int outl = 0;
    int n = (int)len; /* len <= EM_KEYSTORE_DATA_MAX */
    const unsigned char *nonce = header + KS_NONCE_OFF;
    int rc = -1;
    if (enc) {
        if (EVP_EncryptInit_ex(ctx, EVP_aes_256_gcm(), NULL, NULL, NULL) == 1 &&
            EVP_CIPHER_CTX_ctrl(ctx, EVP_CTRL_GCM_SET_IVLEN, KS_NONCE_LEN, NULL) == 1 &&
            EVP_EncryptInit_ex(ctx, NULL, NULL, key, nonce) == 1 &&
            EVP_EncryptUpdate(ctx, NULL, &outl, header, KS_HEADER_LEN) == 1 &&
            EVP_EncryptUpdate(ctx, out, &outl, in, n) == 1 && outl == n &&
            EVP_EncryptFinal_ex(ctx, out + outl, &outl) == 1 && outl == 0 &&
            EVP_CIPHER_CTX_ctrl(ctx, EVP_CTRL_GCM_GET_TAG, KS_TAG_LEN, tag) == 1)
            rc = 1;
    } else if (EVP_DecryptInit_ex(ctx, EVP_aes_256_gcm(), NULL, NULL, NULL) == 1 &&
               EVP_CIPHER_CTX_ctrl(ctx, EVP_CTRL_GCM_SET_IVLEN, KS_NONCE_LEN, NULL) == 1 &&
               EVP_DecryptInit_ex(ctx, NULL, NULL, key, nonce) == 1 &&
               EVP_DecryptUpdate(ctx, NULL, &outl, header, KS_HEADER_LEN) == 1 &&
               EVP_DecryptUpdate(ctx, out, &outl, in, n) == 1 && outl == n &&
               EVP_CIPHER_CTX_ctrl(ctx, EVP_CTRL_GCM_SET_TAG, KS_TAG_LEN, tag) == 1) {
        /* Only the final step judges the tag. */
        rc = EVP_DecryptFinal_ex(ctx, out + outl, &outl) == 1 && outl == 0 ? 1 : 0;
    }
    EVP_CIPHER_CTX_free(ctx);
    return rc;
}

/* ---- sealing and opening ----------------------------------------------- */

em_err_t em_keystore_seal(const em_keystore_secret_t *s, const void *data, size_t len,
                          unsigned char **out, size_t *out_len, em_error_t *err)
{
    if (s == NULL || data == NULL || out == NULL || out_len == NULL || len == 0)
        return em_error_set(err, EM_ERR_INVALID_ARGUMENT, EM_SEV_MEDIUM, NULL,
                            "secret, data (at least one byte) and out are required");
    *out = NULL;
    *out_len = 0;
    if (len > EM__KEYSTORE_DATA_MAX)
        return em_error_set(err, EM_ERR_LIMIT, EM_SEV_MEDIUM, "data",
                            "a keystore holds at most %d bytes", EM_KEYSTORE_DATA_MAX);
    size_t total = KS_HEADER_LEN + len + KS_TAG_LEN;
    unsigned char *f = malloc(total);
    if (f == NULL)
        return nomem(err);
    memset(f, 0, KS_HEADER_LEN);
    memcpy(f, ks_magic, KS_MAGIC_LEN);
    f[4] = EM_KEYSTORE_VERSION;
    f[5] = (unsigned char)s->kind;
    if (s->kind == KS_KDF_SCRYPT) {
        f[6] = (unsigned char)s->log2_n;
        f[7] = KS_SCRYPT_R;
        f[8] = KS_SCRYPT_P;
    }
    put_u32(f + KS_LEN_OFF, (uint32_t)len);

    unsigned char okm[KS_OKM_LEN];
    em_err_t rc = EM_OK;
    if (RAND_bytes(f + KS_SALT_OFF, KS_SALT_LEN + KS_NONCE_LEN) != 1)
        rc = em_error_set(err, EM_ERR_INTERNAL, EM_SEV_HIGH, NULL, "the CSPRNG failed");
    else if (!derive(s, s->log2_n, f + KS_SALT_OFF, okm) || !key_check(okm, f + KS_CHECK_OFF))
        rc = em_error_set(err, EM_ERR_INTERNAL, EM_SEV_HIGH, NULL, "key derivation failed");
    else if (gcm(true, okm, f, data, len, f + KS_HEADER_LEN, f + KS_HEADER_LEN + len) != 1)
        rc = em_error_set(err, EM_ERR_NOMEM, EM_SEV_HIGH, NULL,
                          "encryption failed (out of memory?)");
    OPENSSL_cleanse(okm, sizeof okm);
    if (rc != EM_OK) {
        ERR_clear_error();
        OPENSSL_cleanse(f, total);
        free(f);
        return rc;
    }
    *out = f;
    *out_len = total;
    return EM_OK;
}

/* Returns the code itself rather than em_error_set's result, so that the
 * callers' "not EM_OK" is visible here (the analyzers do not see into
 * em_error_set). */
static em_err_t bad_format(em_error_t *err, const char *what)
{
    (void)em_error_set(err, EM_ERR_MESSAGE_FORMAT, EM_SEV_HIGH, "keystore", "keystore: %s", what);
    return EM_ERR_MESSAGE_FORMAT;
}

/* Everything in the header that can be judged without the secret. */
static em_err_t check_header(const em_keystore_secret_t *s, const unsigned char *f, size_t len,
                             size_t *ct_len, em_error_t *err)
{
    if (len < KS_MAGIC_LEN || memcmp(f, ks_magic, KS_MAGIC_LEN) != 0)
        return bad_format(err, "not an emiot keystore");
    if (len < 5)
        return bad_format(err, "truncated");
    if (f[4] > EM_KEYSTORE_VERSION)
        return em_error_set(err, EM_ERR_CONFIGURATION, EM_SEV_HIGH, "keystore",
                            "keystore: version %u is newer than this build reads (%d)", f[4],
                            EM_KEYSTORE_VERSION);
    if (f[4] == 0)
        return bad_format(err, "version 0 does not exist");
    if (len < KS_HEADER_LEN + KS_TAG_LEN)
        return bad_format(err, "truncated");
    unsigned kdf = f[5];
    if (kdf == KS_KDF_SCRYPT) {
        if (f[6] < EM_KEYSTORE_LOG2N_MIN || f[6] > EM_KEYSTORE_LOG2N_MAX)
            return em_error_set(err, EM_ERR_MESSAGE_FORMAT, EM_SEV_HIGH, "keystore",
                                "keystore: scrypt cost 2^%u outside 2^%d..2^%d", f[6],
                                EM_KEYSTORE_LOG2N_MIN, EM_KEYSTORE_LOG2N_MAX);
        if (f[7] != KS_SCRYPT_R || f[8] != KS_SCRYPT_P)
            return bad_format(err, "scrypt parameters r and p must be 8 and 1");
    } else if (kdf == KS_KDF_KEY) {
        if (f[6] != 0 || f[7] != 0 || f[8] != 0)
            return bad_format(err, "key-file parameters must be zero");
    } else {
        return bad_format(err, "unknown key derivation");
    }
    if (f[9] != 0 || f[10] != 0 || f[11] != 0)
        return bad_format(err, "reserved bytes must be zero");
    uint32_t n = get_u32(f + KS_LEN_OFF);
    if (n == 0 || n > EM_KEYSTORE_DATA_MAX || (size_t)n + KS_HEADER_LEN + KS_TAG_LEN != len)
        return bad_format(err, "lengths do not add up (truncated or extended)");
    if ((int)kdf != s->kind)
        return em_error_set(err, EM_ERR_CONFIGURATION, EM_SEV_HIGH, "keystore",
                            kdf == KS_KDF_SCRYPT
                                ? "keystore: sealed with a passphrase, not a key file"
                                : "keystore: sealed with a key file, not a passphrase");
    *ct_len = n;
    return EM_OK;
}

em_err_t em_keystore_open(const em_keystore_secret_t *s, const void *file, size_t len,
                          unsigned char **out, size_t *out_len, em_error_t *err)
{
    if (s == NULL || (file == NULL && len > 0) || out == NULL || out_len == NULL)
        return em_error_set(err, EM_ERR_INVALID_ARGUMENT, EM_SEV_MEDIUM, NULL,
                            "secret, file and out are required");
    *out = NULL;
    *out_len = 0;
    const unsigned char *f = file;
    size_t n = 0;
    em_err_t rc = check_header(s, f, len, &n, err);
    if (rc != EM_OK)
        return rc;

    unsigned char okm[KS_OKM_LEN];
    unsigned char check[KS_CHECK_LEN];
    if (!derive(s, f[6], f + KS_SALT_OFF, okm) || !key_check(okm, check)) {
        OPENSSL_cleanse(okm, sizeof okm);
        ERR_clear_error();
        return em_error_set(err, EM_ERR_NOMEM, EM_SEV_HIGH, NULL,
                            "key derivation failed (out of memory?)");
    }
    if (CRYPTO_memcmp(check, f + KS_CHECK_OFF, KS_CHECK_LEN) != 0) {
        OPENSSL_cleanse(okm, sizeof okm);
        return em_error_set(err, EM_ERR_CRYPTO, EM_SEV_HIGH, "keystore",
                            "wrong passphrase or key file");
    }
    unsigned char *plain = malloc(n + 1);
    if (plain == NULL) {
        OPENSSL_cleanse(okm, sizeof okm);
        return nomem(err);
    }
    /* GCM writes the plaintext before it checks the tag: on failure what it
     * wrote is wiped, never returned. */
    unsigned char tag[KS_TAG_LEN];
    memcpy(tag, f + KS_HEADER_LEN + n, KS_TAG_LEN);
    int ok = gcm(false, okm, f, f + KS_HEADER_LEN, n, plain, tag);
    OPENSSL_cleanse(okm, sizeof okm);
    if (ok != 1) {
        ERR_clear_error();
        OPENSSL_cleanse(plain, n + 1);
        free(plain);
        if (ok < 0)
            return em_error_set(err, EM_ERR_NOMEM, EM_SEV_HIGH, NULL,
                                "decryption failed (out of memory?)");
        return em_error_set(err, EM_ERR_CRYPTO, EM_SEV_HIGH, "keystore",
                            "the keystore was modified (authentication failed)");
    }
    plain[n] = '\0';
    *out = plain;
    *out_len = n;
    return EM_OK;
}

void em_keystore_data_free(unsigned char *data, size_t len)
{
    if (data == NULL)
        return;
    OPENSSL_cleanse(data, len);
    free(data);
}

bool em_keystore_is_sealed(const void *data, size_t len)
{
    return data != NULL && len >= KS_MAGIC_LEN && memcmp(data, ks_magic, KS_MAGIC_LEN) == 0;
}

/* ---- files ----------------------------------------------------------------- */

em_err_t em__security_read_file(const char *path, size_t max, unsigned char **out, size_t *out_len,
                                unsigned *mode_out, em_error_t *err)
{
    *out = NULL;
    *out_len = 0;
    int fd = open(path, O_RDONLY | O_CLOEXEC | O_NOCTTY);
    if (fd < 0) {
        int e = errno;
        return em_error_set(err, e == ENOENT ? EM_ERR_NOT_FOUND : EM_ERR_IO, EM_SEV_HIGH, "path",
                            "cannot open %s: %s", path, strerror(e));
    }
    struct stat st;
    if (fstat(fd, &st) != 0 || !S_ISREG(st.st_mode)) {
        close(fd);
        return em_error_set(err, EM_ERR_IO, EM_SEV_HIGH, "path", "%s is not a regular file", path);
    }
    if (st.st_size < 0 || (uint64_t)st.st_size > max) {
        close(fd);
        return em_error_set(err, EM_ERR_MESSAGE_FORMAT, EM_SEV_HIGH, "path",
                            "%s is larger than %zu bytes", path, max);
    }
    size_t len = (size_t)st.st_size;
    unsigned char *buf = malloc(len + 1);
    if (buf == NULL) {
        close(fd);
        return nomem(err);
    }
    size_t got = 0;
    int e = 0;
    while (got < len) {
        ssize_t n = read(fd, buf + got, len - got);
        if (n < 0 && errno == EINTR)
            continue;
        if (n <= 0) {
            e = n < 0 ? errno : 0;
            break;
        }
        got += (size_t)n;
    }
    close(fd);
    if (got != len) {
        em_keystore_data_free(buf, len + 1);
        return em_error_set(err, EM_ERR_IO, EM_SEV_HIGH, "path", "cannot read %s: %s", path,
                            e != 0 ? strerror(e) : "short read");
    }
    buf[len] = '\0';
    if (mode_out != NULL)
        *mode_out = (unsigned)(st.st_mode & 07777);
    *out = buf;
    *out_len = len;
    return EM_OK;
}

em_err_t em__security_write_file(const char *path, const void *data, size_t len, bool replace,
                                 em_error_t *err)
{
    if (path == NULL || path[0] == '\0' || (data == NULL && len > 0))
        return em_error_set(err, EM_ERR_INVALID_ARGUMENT, EM_SEV_MEDIUM, NULL,
                            "path and data are required");
    char tmp[PATH_MAX];
    int w = snprintf(tmp, sizeof tmp, "%s.tmp-XXXXXX", path);
    if (w < 0 || (size_t)w >= sizeof tmp)
        return em_error_set(err, EM_ERR_INVALID_ARGUMENT, EM_SEV_MEDIUM, "path", "path too long");
    /* mkostemp creates the file with mode 0600 whatever the umask; the
     * temporary name keeps a reader from ever seeing half a file. */
    int fd = mkostemp(tmp, O_CLOEXEC);
    if (fd < 0)
        return em_error_set(err, EM_ERR_IO, EM_SEV_HIGH, "path",
                            "cannot create a file beside %s: %s", path, strerror(errno));
    bool ok = fchmod(fd, 0600) == 0 && write_all(fd, data, len) && fsync(fd) == 0;
    int e = errno;
    if (close(fd) != 0 && ok) {
        ok = false;
        e = errno;
    }
    if (!ok) {
        unlink(tmp);
        return em_error_set(err, EM_ERR_IO, EM_SEV_HIGH, "path", "cannot write %s: %s", path,
                            strerror(e));
    }
    if (replace) {
        if (rename(tmp, path) != 0) {
            e = errno;
            unlink(tmp);
            return em_error_set(err, EM_ERR_IO, EM_SEV_HIGH, "path", "cannot rename onto %s: %s",
                                path, strerror(e));
        }
    } else {
        /* link() fails when path exists: creation without replacing, and
         * still never a half-written file under the final name. */
        int lrc = link(tmp, path);
        e = errno;
        unlink(tmp);
        if (lrc != 0) {
            if (e == EEXIST)
                return em_error_set(err, EM_ERR_EXISTS, EM_SEV_MEDIUM, "path", "%s already exists",
                                    path);
            return em_error_set(err, EM_ERR_IO, EM_SEV_HIGH, "path", "cannot create %s: %s", path,
                                strerror(e));
        }
    }
    return sync_parent_dir(path, err);
}

static em_err_t write_sealed(const char *path, const em_keystore_secret_t *s, const void *data,
                             size_t len, bool replace, em_error_t *err)
{
    if (path == NULL || path[0] == '\0')
        return em_error_set(err, EM_ERR_INVALID_ARGUMENT, EM_SEV_MEDIUM, NULL, "path is required");
    unsigned char *f = NULL;
    size_t flen = 0;
    em_err_t rc = em_keystore_seal(s, data, len, &f, &flen, err);
    if (rc != EM_OK)
        return rc;
    rc = em__security_write_file(path, f, flen, replace, err);
    free(f); /* ciphertext: nothing to wipe */
    return rc;
}

em_err_t em_keystore_write_file(const char *path, const em_keystore_secret_t *s, const void *data,
                                size_t len, em_error_t *err)
{
    return write_sealed(path, s, data, len, true, err);
}

em_err_t em__keystore_write_new(const char *path, const em_keystore_secret_t *s, const void *data,
                                size_t len, em_error_t *err)
{
    return write_sealed(path, s, data, len, false, err);
}

em_err_t em_keystore_read_file(const char *path, const em_keystore_secret_t *s, unsigned char **out,
                               size_t *out_len, em_error_t *err)
{
    if (path == NULL || path[0] == '\0' || s == NULL || out == NULL || out_len == NULL)
        return em_error_set(err, EM_ERR_INVALID_ARGUMENT, EM_SEV_MEDIUM, NULL,
                            "path, secret and out are required");
    *out = NULL;
    *out_len = 0;
    unsigned char *f = NULL;
    size_t flen = 0;
    em_err_t rc = em__security_read_file(path, EM_KEYSTORE_FILE_MAX, &f, &flen, NULL, err);
    if (rc != EM_OK)
        return rc;
    rc = em_keystore_open(s, f, flen, out, out_len, err);
    free(f);
    return rc;
}
