/*
 * emiot - pkcs11.c: private keys in an HSM (keystore.h), through libp11.
 *
 * libp11 hands out an EVP_PKEY whose private operations go to the token:
 * with OpenSSL 3.0 such a key (a legacy EC_KEY or RSA with libp11's method)
 * signs through EVP_DigestSign, X509_sign, X509_REQ_sign and X509_CRL_sign
 * like any other key, so callers need nothing HSM-specific. The key refers
 * to the slot it came from: the slots stay enumerated until em_pkcs11_free,
 * which is why keys must be freed before it.
 *
 * URIs follow RFC 7512 for the attributes emiot needs: token, object, id
 * (percent-encoded bytes), serial, and type=private. Anything else,
 * including query attributes such as pin-value, is refused: the PIN comes
 * from emiot's configuration, never from a URI that may end up in a log.
 */
#include <pthread.h>
#include <stdlib.h>
#include <string.h>

#include <libp11.h>
#include <openssl/crypto.h>
#include <openssl/err.h>

#include "emiot/keystore.h"
#include "security/security_internal.h"

#define URI_MAX       1024
#define URI_VALUE_MAX 255 /* a token label is 32 bytes, an object label rarely longer */
#define URI_ID_MAX    128
#define PIN_MAX       256

/* PKCS#11 return values (pkcs11.h), as libp11 reports them in the error queue. */
#define CKR_PIN_INCORRECT 0xA0UL
#define CKR_PIN_INVALID   0xA1UL
#define CKR_PIN_LEN_RANGE 0xA2UL
#define CKR_PIN_EXPIRED   0xA3UL
#define CKR_PIN_LOCKED    0xA4UL

struct em_pkcs11 {
    PKCS11_CTX *ctx;
    PKCS11_SLOT *slots;
    unsigned int nslots;
    char *pin; /* NUL-terminated, pin_len bytes; NULL: no PIN */
    size_t pin_len;
    pthread_mutex_t lock; /* libp11's slot state is not ours to share unguarded */
};

typedef struct uri {
    char token[URI_VALUE_MAX + 1];
    char object[URI_VALUE_MAX + 1];
    char serial[URI_VALUE_MAX + 1];
    unsigned char id[URI_ID_MAX];
    size_t id_len;
    bool has_token, has_object, has_serial, has_id, has_type;
} uri_t;

/* ---- URIs ---------------------------------------------------------------- */

static int hexval(char c)
{
    if (c >= '0' && c <= '9')
        return c - '0';
    if (c >= 'a' && c <= 'f')
        return c - 'a' + 10;
    if (c >= 'A' && c <= 'F')
        return c - 'A' + 10;
    return -1;
}

/* Percent-decodes v (n bytes) into out (at most max bytes). Returns the
 * decoded length, or -1 (bad escape, too long, or a NUL where text is). */
static long pct_decode(const char *v, size_t n, unsigned char *out, size_t max, bool text)
{
    size_t o = 0;
    for (size_t i = 0; i < n; i++) {
        unsigned char c = (unsigned char)v[i];
        if (c == '%') {
            if (i + 2 >= n)
                return -1;
            int hi = hexval(v[i + 1]);
            int lo = hexval(v[i + 2]);
            if (hi < 0 || lo < 0)
                return -1;
            c = (unsigned char)(hi << 4 | lo);
            i += 2;
        } else if (c == '/' || c == '?' || c == '#' || c < 0x21 || c > 0x7e) {
            /* Reserved or not printable ASCII: RFC 7512 wants these encoded. */
            return -1;
        }
        if (o >= max || (text && c == '\0'))
            return -1;
        out[o++] = c;
    }
    return (long)o;
}

static em_err_t uri_error(em_error_t *err, const char *why)
{
    return em_error_set(err, EM_ERR_CONFIGURATION, EM_SEV_HIGH, "key", "PKCS#11 URI: %s", why);
}

static em_err_t text_attr(const char *v, size_t n, char *out, bool *has, em_error_t *err)
{
    if (*has)
        return uri_error(err, "an attribute is given twice");
    long d = pct_decode(v, n, (unsigned char *)out, URI_VALUE_MAX, true);
    if (d <= 0)
        return uri_error(err, "a value is empty, too long or badly encoded");
    out[d] = '\0';
    *has = true;
    return EM_OK;
}

static em_err_t id_attr(const char *v, size_t n, uri_t *u, em_error_t *err)
{
    if (u->has_id)
        return uri_error(err, "an attribute is given twice");
    long d = pct_decode(v, n, u->id, sizeof u->id, false);
    if (d <= 0)
        return uri_error(err, "id is empty, too long or badly encoded");
    u->id_len = (size_t)d;
    u->has_id = true;
    return EM_OK;
}

static em_err_t type_attr(const char *v, size_t n, uri_t *u, em_error_t *err)
{
    if (u->has_type)
        return uri_error(err, "an attribute is given twice");
    if (n != 7 || memcmp(v, "private", 7) != 0)
        return uri_error(err, "type must be private (a private key)");
    u->has_type = true;
    return EM_OK;
}

/* One name=value attribute of the path (name: nlen bytes, value: vlen). */
static em_err_t uri_attr(const char *name, size_t nlen, const char *v, size_t vlen, uri_t *u,
                         em_error_t *err)
{
    if (nlen == 5 && memcmp(name, "token", 5) == 0)
        return text_attr(v, vlen, u->token, &u->has_token, err);
    if (nlen == 6 && memcmp(name, "object", 6) == 0)
        return text_attr(v, vlen, u->object, &u->has_object, err);
    if (nlen == 6 && memcmp(name, "serial", 6) == 0)
        return text_attr(v, vlen, u->serial, &u->has_serial, err);
    if (nlen == 2 && memcmp(name, "id", 2) == 0)
        return id_attr(v, vlen, u, err);
    if (nlen == 4 && memcmp(name, "type", 4) == 0)
        return type_attr(v, vlen, u, err);
    return uri_error(err, "unknown attribute (token, object, id, serial, type accepted)");
}

static em_err_t uri_parse(const char *ref, uri_t *u, em_error_t *err)
{
    memset(u, 0, sizeof *u);
    size_t len = strnlen(ref, URI_MAX + 1);
    if (len > URI_MAX)
        return uri_error(err, "too long");
    if (len < 7 || strncmp(ref, "pkcs11:", 7) != 0)
        return uri_error(err, "must start with pkcs11:");
    const char *p = ref + 7;
    const char *end = ref + len;
    if (memchr(p, '?', (size_t)(end - p)) != NULL)
        return uri_error(err, "query attributes (pin-value, module-path, ...) are not accepted");
    if (p == end)
        return uri_error(err, "names no key (object= or id=)");
    while (p <= end) {
        const char *semi = memchr(p, ';', (size_t)(end - p));
        const char *stop = semi != NULL ? semi : end;
        const char *eq = memchr(p, '=', (size_t)(stop - p));
        if (eq == NULL || eq == p)
            return uri_error(err, "each attribute is name=value, separated by ;");
        const char *v = eq + 1;
        em_err_t rc = uri_attr(p, (size_t)(eq - p), v, (size_t)(stop - v), u, err);
        if (rc != EM_OK)
            return rc;
        if (semi == NULL)
            break;
        p = semi + 1;
        if (p == end)
            return uri_error(err, "an empty attribute after ;");
    }
    if (!u->has_object && !u->has_id)
        return uri_error(err, "names no key (object= or id=)");
    return EM_OK;
}

em_err_t em__pkcs11_uri_check(const char *ref, em_error_t *err)
{
    uri_t u;
    return uri_parse(ref, &u, err);
}

/* ---- the module ------------------------------------------------------------ */

em_err_t em_pkcs11_open(const char *module, const char *pin, size_t pin_len, em_pkcs11_t **out,
                        em_error_t *err)
{
    if (module == NULL || module[0] == '\0' || out == NULL || (pin == NULL && pin_len > 0))
        return em_error_set(err, EM_ERR_INVALID_ARGUMENT, EM_SEV_MEDIUM, NULL,
                            "module and out are required");
    *out = NULL;
    if (pin_len > PIN_MAX || (pin != NULL && memchr(pin, '\0', pin_len) != NULL))
        return em_error_set(err, EM_ERR_CONFIGURATION, EM_SEV_HIGH, "pin",
                            "the PIN must be at most %d bytes, without NUL", PIN_MAX);
    em_pkcs11_t *p = calloc(1, sizeof *p);
    if (p == NULL)
        return em_error_set(err, EM_ERR_NOMEM, EM_SEV_HIGH, NULL, "out of memory");
    if (pin_len > 0) {
        p->pin = malloc(pin_len + 1);
        if (p->pin == NULL) {
            free(p);
            return em_error_set(err, EM_ERR_NOMEM, EM_SEV_HIGH, NULL, "out of memory");
        }
        memcpy(p->pin, pin, pin_len);
        p->pin[pin_len] = '\0';
        p->pin_len = pin_len;
    }
    if (pthread_mutex_init(&p->lock, NULL) != 0) {
        em_pkcs11_free(p);
        return em_error_set(err, EM_ERR_NOMEM, EM_SEV_HIGH, NULL, "cannot create a mutex");
    }
    p->ctx = PKCS11_CTX_new();
    if (p->ctx == NULL) {
        em_pkcs11_free(p);
        return em_error_set(err, EM_ERR_NOMEM, EM_SEV_HIGH, NULL, "out of memory");
    }
    if (PKCS11_CTX_load(p->ctx, module) != 0) {
        ERR_clear_error();
        PKCS11_CTX_free(p->ctx);
        p->ctx = NULL;
        em_pkcs11_free(p);
        return em_error_set(err, EM_ERR_CONFIGURATION, EM_SEV_HIGH, "module",
                            "cannot load the PKCS#11 module %s", module);
    }
    if (PKCS11_enumerate_slots(p->ctx, &p->slots, &p->nslots) != 0) {
        ERR_clear_error();
        em_pkcs11_free(p);
        return em_error_set(err, EM_ERR_CONFIGURATION, EM_SEV_HIGH, "module",
                            "the PKCS#11 module %s lists no slots", module);
    }
    *out = p;
    return EM_OK;
}

void em_pkcs11_free(em_pkcs11_t *p)
{
    if (p == NULL)
        return;
    if (p->ctx != NULL) {
        for (unsigned int i = 0; p->slots != NULL && i < p->nslots; i++) {
            int in = 0;
            if (p->slots[i].token != NULL && PKCS11_is_logged_in(&p->slots[i], 0, &in) == 0 && in)
                PKCS11_logout(&p->slots[i]);
        }
        if (p->slots != NULL)
            PKCS11_release_all_slots(p->ctx, p->slots, p->nslots);
        PKCS11_CTX_unload(p->ctx);
        PKCS11_CTX_free(p->ctx);
        ERR_clear_error();
        pthread_mutex_destroy(&p->lock);
    }
    if (p->pin != NULL) {
        OPENSSL_cleanse(p->pin, p->pin_len);
        free(p->pin);
    }
    OPENSSL_cleanse(p, sizeof *p);
    free(p);
}

/* ---- keys ------------------------------------------------------------------ */

/* The PKCS#11 code behind libp11's last failure, 0 when there is none. */
static unsigned long last_ckr(void)
{
    unsigned long e;
    unsigned long ckr = 0;
    int lib = ERR_get_CKR_code();
    while ((e = ERR_get_error()) != 0) {
        if (ERR_GET_LIB(e) == lib)
            ckr = (unsigned long)ERR_GET_REASON(e);
    }
    return ckr;
}

static em_err_t login(em_pkcs11_t *p, PKCS11_SLOT *slot, em_error_t *err)
{
    PKCS11_TOKEN *tok = slot->token;
    if (!tok->loginRequired)
        return EM_OK;
    int in = 0;
    if (PKCS11_is_logged_in(slot, 0, &in) == 0 && in)
        return EM_OK;
    if (p->pin == NULL)
        return em_error_set(err, EM_ERR_AUTHENTICATION, EM_SEV_HIGH, "pin",
                            "token %s needs a PIN and none is configured", tok->label);
    ERR_clear_error();
    if (PKCS11_login(slot, 0, p->pin) == 0)
        return EM_OK;
    unsigned long ckr = last_ckr();
    const char *why = "the token refused the login";
    if (ckr == CKR_PIN_INCORRECT || ckr == CKR_PIN_INVALID || ckr == CKR_PIN_LEN_RANGE)
        why = "the token refused the PIN";
    else if (ckr == CKR_PIN_LOCKED)
        why = "the token's PIN is locked";
    else if (ckr == CKR_PIN_EXPIRED)
        why = "the token's PIN has expired";
    return em_error_set(err, EM_ERR_AUTHENTICATION, EM_SEV_HIGH, "pin", "%s (token %s)", why,
                        tok->label);
}

static bool key_matches(const PKCS11_KEY *k, const uri_t *u)
{
    if (u->has_object && (k->label == NULL || strcmp(k->label, u->object) != 0))
        return false;
    if (u->has_id && (k->id_len != u->id_len || memcmp(k->id, u->id, u->id_len) != 0))
        return false;
    return true;
}

/* With the lock held: the first key matching u in the tokens matching u. */
static em_err_t find_key(em_pkcs11_t *p, const uri_t *u, EVP_PKEY **out, em_error_t *err)
{
    bool token_seen = false;
    for (unsigned int i = 0; i < p->nslots; i++) {
        PKCS11_SLOT *slot = &p->slots[i];
        PKCS11_TOKEN *tok = slot->token;
        if (tok == NULL || !tok->initialized)
            continue;
        if (u->has_token && (tok->label == NULL || strcmp(tok->label, u->token) != 0))
            continue;
        if (u->has_serial && (tok->serialnr == NULL || strcmp(tok->serialnr, u->serial) != 0))
            continue;
        token_seen = true;
        em_err_t rc = login(p, slot, err);
        if (rc != EM_OK)
            return rc;
        PKCS11_KEY *keys = NULL;
        unsigned int nkeys = 0;
        if (PKCS11_enumerate_keys(tok, &keys, &nkeys) != 0) {
            ERR_clear_error();
            continue;
        }
        for (unsigned int k = 0; k < nkeys; k++) {
            if (!key_matches(&keys[k], u))
                continue;
            EVP_PKEY *pk = PKCS11_get_private_key(&keys[k]);
            if (pk == NULL) {
                ERR_clear_error();
                return em_error_set(err, EM_ERR_CONFIGURATION, EM_SEV_HIGH, "key",
                                    "key %s in token %s cannot be used (unsupported type)",
                                    keys[k].label != NULL ? keys[k].label : "(no label)",
                                    tok->label);
            }
            *out = pk;
            return EM_OK;
        }
    }
    if (!token_seen)
        return em_error_set(err, EM_ERR_NOT_FOUND, EM_SEV_HIGH, "key",
                            "no PKCS#11 token matches the URI");
    return em_error_set(err, EM_ERR_NOT_FOUND, EM_SEV_HIGH, "key",
                        "no such private key in the PKCS#11 token");
}

em_err_t em__pkcs11_load_key(em_pkcs11_t *hsm, const char *ref, EVP_PKEY **out, em_error_t *err)
{
    *out = NULL;
    uri_t u;
    em_err_t rc = uri_parse(ref, &u, err);
    if (rc != EM_OK)
        return rc;
    pthread_mutex_lock(&hsm->lock);
    rc = find_key(hsm, &u, out, err);
    pthread_mutex_unlock(&hsm->lock);
    ERR_clear_error();
    return rc;
}
