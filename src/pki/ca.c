/*
 * emiot - pki/ca.c: the CA directory: creating it (a new CA or the
 * operator's) and opening it.
 *
 * A creation checks everything it can before writing anything, writes under
 * the directory's lock, puts ca.crt last (its presence is what says "a CA
 * lives here"), and removes what it wrote when a later step fails.
 */
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <unistd.h>

#include <openssl/err.h>
#include <openssl/pem.h>
#include <openssl/x509v3.h>

#include "emiot/clock.h"
#include "pki/pki_internal.h"

#define URI_MAX 1024

/* ---- the em_pki_t ------------------------------------------------------------ */

void em_pki_free(em_pki_t *pki)
{
    if (pki == NULL)
        return;
    EVP_PKEY_free(pki->key); /* OpenSSL wipes private key material on free */
    X509_free(pki->ca);
    sk_X509_pop_free(pki->chain, X509_free);
    if (pki->lock_fd >= 0)
        close(pki->lock_fd);
    em__pki_index_clear(&pki->index);
    free(pki->dir);
    free(pki->ca_file);
    free(pki->crl_file);
    free(pki->index_file);
    free(pki->crlnumber_file);
    free(pki->certs_dir);
    free(pki);
}

/* An em_pki_t with its paths set and nothing else; NULL (err filled with
 * EM_ERR_NOMEM) when out of memory. */
static em_pki_t *pki_alloc(const char *dir, em_error_t *err)
{
    em_pki_t *pki = calloc(1, sizeof(*pki));
    if (pki == NULL) {
        em_error_set(err, EM_ERR_NOMEM, EM_SEV_HIGH, NULL, "out of memory");
        return NULL;
    }
    pki->lock_fd = -1;
    pki->crl_days = EM__PKI_CRL_DAYS;
    pki->dir = strdup(dir);
    pki->ca_file = em__pki_path(dir, EM__PKI_CA_CRT);
    pki->crl_file = em__pki_path(dir, EM__PKI_CRL);
    pki->index_file = em__pki_path(dir, EM__PKI_INDEX);
    pki->crlnumber_file = em__pki_path(dir, EM__PKI_CRLNUMBER);
    pki->certs_dir = em__pki_path(dir, EM__PKI_CERTS);
    if (pki->dir == NULL || pki->ca_file == NULL || pki->crl_file == NULL ||
        pki->index_file == NULL || pki->crlnumber_file == NULL || pki->certs_dir == NULL) {
        em_pki_free(pki);
        em_error_set(err, EM_ERR_NOMEM, EM_SEV_HIGH, NULL,
                     "out of memory (or a CA directory path that is too long)");
        return NULL;
    }
    return pki;
}

static em_err_t open_lock(em_pki_t *pki, bool create, em_error_t *err)
{
    char *path = em__pki_path(pki->dir, EM__PKI_LOCK);
    if (path == NULL)
        return em_error_set(err, EM_ERR_NOMEM, EM_SEV_HIGH, NULL, "out of memory");
    int fd = open(path, O_RDWR | O_CLOEXEC | (create ? O_CREAT : 0), 0600);
    if (fd < 0 && !create && errno == ENOENT)
        fd = open(path, O_RDWR | O_CREAT | O_CLOEXEC, 0600);
    if (fd < 0 && (errno == EACCES || errno == EROFS))
        fd = open(path, O_RDONLY | O_CLOEXEC); /* a reader without write access */
    if (fd < 0) {
        em_error_set(err, EM_ERR_IO, EM_SEV_HIGH, NULL, "cannot open %s: %s", path,
                     strerror(errno));
        free(path);
        return EM_ERR_IO;
    }
    free(path);
    pki->lock_fd = fd;
    return EM_OK;
}

/* Reads the certificates of a PEM file: the first, then the others. */
static em_err_t read_certs(const char *path, X509 **first, STACK_OF(X509) * *rest, em_error_t *err)
{
    *first = NULL;
    *rest = NULL;
    char *pem;
    size_t len;
    em_err_t rc = em__pki_read_file(path, EM__PKI_PEM_FILE_MAX, &pem, &len, err);
    if (rc != EM_OK)
        return rc;
    X509 *ca;
    STACK_OF(X509) * chain;
    bool ok = em__pki_pem_certs(pem, len, 16, &ca, &chain);
    free(pem);
    if (!ok)
        return em_error_set(err, EM_ERR_NOMEM, EM_SEV_HIGH, NULL, "out of memory");
    if (ca == NULL) {
        sk_X509_pop_free(chain, X509_free);
        return em_error_set(err, EM_ERR_MESSAGE_FORMAT, EM_SEV_HIGH, NULL,
                            "%s holds no PEM certificate", path);
    }
    *first = ca;
    *rest = chain;
    return EM_OK;
}

static em_err_t load_ca_times(em_pki_t *pki, em_error_t *err)
{
    if (!em__pki_asn1_time_ms(X509_get0_notBefore(pki->ca), &pki->ca_not_before_ms) ||
        !em__pki_asn1_time_ms(X509_get0_notAfter(pki->ca), &pki->ca_not_after_ms))
        return em_error_set(err, EM_ERR_MESSAGE_FORMAT, EM_SEV_HIGH, NULL,
                            "the CA certificate's validity is unreadable");
    return EM_OK;
}

static em_err_t check_key_matches(X509 *ca, EVP_PKEY *key, em_error_t *err)
{
    ERR_set_mark();
    int ok = X509_check_private_key(ca, key);
    ERR_pop_to_mark();
    if (ok != 1)
        return em_error_set(err, EM_ERR_CERTIFICATE, EM_SEV_HIGH, "key",
                            "the CA key does not match the CA certificate");
    return EM_OK;
}

static em_err_t ca_key_acceptable(EVP_PKEY *key, em_error_t *err)
{
    em_error_t e;
    if (em_pki_key_acceptable(key, &e) != EM_OK)
        return em_error_set(err, EM_ERR_CERTIFICATE, EM_SEV_HIGH, "key", "CA key: %s", e.message);
    return EM_OK;
}

/* Reads the URI of an HSM key from ca.key.uri. */
static em_err_t read_uri(const char *dir, char uri[URI_MAX + 1], em_error_t *err)
{
    char *path = em__pki_path(dir, EM__PKI_CA_URI);
    if (path == NULL)
        return em_error_set(err, EM_ERR_NOMEM, EM_SEV_HIGH, NULL, "out of memory");
    char *buf;
    size_t len;
    em_err_t rc = em__pki_read_file(path, URI_MAX + 1, &buf, &len, err);
    free(path);
    if (rc != EM_OK)
        return rc;
    while (len > 0 && (buf[len - 1] == '\n' || buf[len - 1] == '\r'))
        len--;
    buf[len] = '\0';
    if (len == 0 || len > URI_MAX || strlen(buf) != len || !em_key_ref_is_pkcs11(buf)) {
        free(buf);
        return em_error_set(err, EM_ERR_MESSAGE_FORMAT, EM_SEV_HIGH, NULL,
                            "%s/%s is not a pkcs11: URI", dir, EM__PKI_CA_URI);
    }
    memcpy(uri, buf, len + 1);
    free(buf);
    return EM_OK;
}

em_err_t em_pki_open(const char *dir, const em_keystore_secret_t *secret, em_pkcs11_t *hsm,
                     em_pki_t **out, em_error_t *err)
{
    if (out == NULL || dir == NULL || dir[0] == '\0')
        return em_error_set(err, EM_ERR_INVALID_ARGUMENT, EM_SEV_MEDIUM, NULL, "no CA directory");
    *out = NULL;
    em_pki_t *pki = pki_alloc(dir, err);
    if (pki == NULL)
        return EM_ERR_NOMEM;
    em_err_t rc;
    rc = read_certs(pki->ca_file, &pki->ca, &pki->chain, err);
    if (rc == EM_ERR_NOT_FOUND)
        em_error_set(err, EM_ERR_NOT_FOUND, EM_SEV_MEDIUM, NULL, "no CA in %s", dir);
    if (rc == EM_OK)
        rc = load_ca_times(pki, err);
    if (rc != EM_OK)
        goto fail;

    char uri[URI_MAX + 1];
    char *uri_path = em__pki_path(dir, EM__PKI_CA_URI);
    char *key_path = em__pki_path(dir, EM__PKI_CA_KEY);
    if (uri_path == NULL || key_path == NULL) {
        free(uri_path);
        free(key_path);
        rc = em_error_set(err, EM_ERR_NOMEM, EM_SEV_HIGH, NULL, "out of memory");
        goto fail;
    }
    bool in_hsm = access(uri_path, F_OK) == 0;
    free(uri_path);
    if (in_hsm && (hsm != NULL || secret != NULL)) {
        rc = read_uri(dir, uri, err);
        if (rc == EM_OK)
            rc = em_key_load(uri, NULL, hsm, false, &pki->key, err);
    } else if (!in_hsm && secret != NULL) {
        rc = em_key_load(key_path, secret, NULL, false, &pki->key, err);
    } else if (!in_hsm && hsm != NULL) {
        rc = em_error_set(err, EM_ERR_CONFIGURATION, EM_SEV_HIGH, NULL,
                          "the CA key of %s is a keystore file: a secret is needed, not an HSM",
                          dir);
    }
    OPENSSL_cleanse(uri, sizeof(uri));
    free(key_path);
    if (rc == EM_OK && pki->key != NULL)
        rc = check_key_matches(pki->ca, pki->key, err);
    if (rc != EM_OK)
        goto fail;

    char *crl;
    size_t crl_len;
    if (em__pki_read_file(pki->crl_file, EM__PKI_CRL_FILE_MAX, &crl, &crl_len, NULL) == EM_OK) {
        int days = em__pki_crl_period_days(crl, crl_len);
        if (days >= 1 && days <= 366)
            pki->crl_days = days;
        free(crl);
    }

    rc = open_lock(pki, false, err);
    if (rc == EM_OK)
        rc = em__pki_lock(pki, LOCK_SH, err);
    if (rc != EM_OK)
        goto fail;
    rc = em__pki_sync(pki, err);
    em__pki_unlock(pki);
    if (rc != EM_OK)
        goto fail;
    *out = pki;
    return EM_OK;
fail:
    em_pki_free(pki);
    return rc;
}

const char *em_pki_ca_file(const em_pki_t *pki)
{
    return pki != NULL ? pki->ca_file : NULL;
}

const char *em_pki_crl_file(const em_pki_t *pki)
{
    return pki != NULL ? pki->crl_file : NULL;
}

X509 *em_pki_ca_cert(const em_pki_t *pki)
{
    return pki != NULL ? pki->ca : NULL;
}

/* ---- creating a CA directory ------------------------------------------------ */

void em_pki_init_options_init(em_pki_init_options_t *opts)
{
    if (opts == NULL)
        return;
    memset(opts, 0, sizeof(*opts));
    opts->common_name = "emiot CA";
    opts->days = EM__PKI_CA_DAYS;
    opts->crl_days = EM__PKI_CRL_DAYS;
}

/* What a creation wrote, to remove it again when a later step fails. */
typedef struct created {
    bool dir, certs, lock, key, uri, index, crlnumber, crl, ca;
} created_t;

static void unlink_in(const char *dir, const char *name)
{
    char *p = em__pki_path(dir, name);
    if (p != NULL) {
        unlink(p);
        free(p);
    }
}

static void undo(const char *dir, const created_t *c)
{
    if (c->ca)
        unlink_in(dir, EM__PKI_CA_CRT);
    if (c->crl)
        unlink_in(dir, EM__PKI_CRL);
    if (c->crlnumber)
        unlink_in(dir, EM__PKI_CRLNUMBER);
    if (c->index)
        unlink_in(dir, EM__PKI_INDEX);
    if (c->key)
        unlink_in(dir, EM__PKI_CA_KEY);
    if (c->uri)
        unlink_in(dir, EM__PKI_CA_URI);
    if (c->certs) {
        char *p = em__pki_path(dir, EM__PKI_CERTS);
        if (p != NULL) {
            rmdir(p);
            free(p);
        }
    }
    if (c->lock)
        unlink_in(dir, EM__PKI_LOCK);
    if (c->dir)
        rmdir(dir);
}

/* Creates dir (0700) and certs/, or accepts an existing directory that holds
 * no CA; then takes the lock. */
static em_err_t make_dir(em_pki_t *pki, created_t *c, em_error_t *err)
{
    if (mkdir(pki->dir, 0700) == 0) {
        c->dir = true;
    } else if (errno != EEXIST) {
        return em_error_set(err, EM_ERR_IO, EM_SEV_HIGH, NULL, "cannot create %s: %s", pki->dir,
                            strerror(errno));
    } else {
        struct stat st;
        if (stat(pki->dir, &st) != 0 || !S_ISDIR(st.st_mode))
            return em_error_set(err, EM_ERR_IO, EM_SEV_HIGH, NULL, "%s is not a directory",
                                pki->dir);
        if (chmod(pki->dir, 0700) != 0)
            return em_error_set(err, EM_ERR_IO, EM_SEV_HIGH, NULL, "cannot chmod %s: %s", pki->dir,
                                strerror(errno));
    }
    char *lock = em__pki_path(pki->dir, EM__PKI_LOCK);
    if (lock == NULL)
        return em_error_set(err, EM_ERR_NOMEM, EM_SEV_HIGH, NULL, "out of memory");
    c->lock = access(lock, F_OK) != 0;
    free(lock);
    em_err_t rc = open_lock(pki, true, err);
    if (rc == EM_OK)
        rc = em__pki_lock(pki, LOCK_EX, err);
    if (rc != EM_OK)
        return rc;
    /* Checked under the lock, so that two creations cannot both succeed. */
    if (access(pki->ca_file, F_OK) == 0 || access(pki->index_file, F_OK) == 0) {
        c->lock = false;
        return em_error_set(err, EM_ERR_EXISTS, EM_SEV_MEDIUM, NULL, "%s already holds a CA",
                            pki->dir);
    }
    if (mkdir(pki->certs_dir, 0700) == 0)
        c->certs = true;
    else if (errno != EEXIST)
        return em_error_set(err, EM_ERR_IO, EM_SEV_HIGH, NULL, "cannot create %s: %s",
                            pki->certs_dir, strerror(errno));
    return EM_OK;
}

/* Writes the key reference (ca.key sealed, or ca.key.uri). */
static em_err_t save_key(em_pki_t *pki, const char *uri, const em_keystore_secret_t *secret,
                         created_t *c, em_error_t *err)
{
    if (uri != NULL) {
        char *path = em__pki_path(pki->dir, EM__PKI_CA_URI);
        if (path == NULL)
            return em_error_set(err, EM_ERR_NOMEM, EM_SEV_HIGH, NULL, "out of memory");
        size_t n = strlen(uri);
        char *line = malloc(n + 2);
        em_err_t rc;
        if (line == NULL) {
            rc = em_error_set(err, EM_ERR_NOMEM, EM_SEV_HIGH, NULL, "out of memory");
        } else {
            memcpy(line, uri, n);
            line[n] = '\n';
            line[n + 1] = '\0';
            rc = em__pki_write_atomic(path, line, n + 1, 0600, err);
            free(line);
        }
        free(path);
        c->uri = rc == EM_OK;
        return rc;
    }
    char *path = em__pki_path(pki->dir, EM__PKI_CA_KEY);
    if (path == NULL)
        return em_error_set(err, EM_ERR_NOMEM, EM_SEV_HIGH, NULL, "out of memory");
    em_err_t rc = em_key_save(path, pki->key, secret, err);
    free(path);
    c->key = rc == EM_OK;
    return rc;
}

/* The files that follow the key: index, CRL, then ca.crt last (its presence
 * is what says "a CA lives here"). */
static em_err_t write_rest(em_pki_t *pki, created_t *c, em_error_t *err)
{
    em_err_t rc = em__pki_write_atomic(pki->index_file, "", 0, 0600, err);
    if (rc != EM_OK)
        return rc;
    c->index = true;
    rc = em__pki_sync(pki, err);
    if (rc != EM_OK)
        return rc;
    c->crlnumber = c->crl = true;
    rc = em__pki_crl_write(pki, 0, err);
    if (rc != EM_OK)
        return rc;
    size_t len;
    char *pem = em__pki_cert_pem(pki->ca, &len);
    if (pem == NULL)
        return em_error_set(err, EM_ERR_NOMEM, EM_SEV_HIGH, NULL, "out of memory");
    BIO *bio = BIO_new(BIO_s_mem());
    for (int i = 0; bio != NULL && i < sk_X509_num(pki->chain); i++)
        PEM_write_bio_X509(bio, sk_X509_value(pki->chain, i));
    char *chain = NULL;
    long chain_len = bio != NULL ? BIO_get_mem_data(bio, &chain) : -1;
    char *all = chain_len >= 0 ? malloc(len + (size_t)chain_len) : NULL;
    if (all == NULL) {
        free(pem);
        BIO_free(bio);
        return em_error_set(err, EM_ERR_NOMEM, EM_SEV_HIGH, NULL, "out of memory");
    }
    memcpy(all, pem, len);
    if (chain_len > 0)
        memcpy(all + len, chain, (size_t)chain_len);
    rc = em__pki_write_atomic(pki->ca_file, all, len + (size_t)chain_len, 0644, err);
    free(all);
    free(pem);
    BIO_free(bio);
    c->ca = rc == EM_OK;
    return rc;
}

em_err_t em_pki_init(const char *dir, const em_pki_init_options_t *opts, em_error_t *err)
{
    em_pki_init_options_t o;
    if (opts == NULL)
        em_pki_init_options_init(&o);
    else
        o = *opts;
    if (dir == NULL || dir[0] == '\0')
        return em_error_set(err, EM_ERR_CONFIGURATION, EM_SEV_HIGH, "dir", "no CA directory");
    const char *cn = o.common_name != NULL ? o.common_name : "emiot CA";
    size_t cn_len = strnlen(cn, EM_PKI_CN_MAX + 1);
    bool cn_ok = cn_len >= 1 && cn_len <= EM_PKI_CN_MAX;
    for (size_t i = 0; cn_ok && i < cn_len; i++)
        cn_ok = cn[i] >= 0x20 && cn[i] < 0x7f;
    if (!cn_ok)
        return em_error_set(err, EM_ERR_CONFIGURATION, EM_SEV_HIGH, "common_name",
                            "the CA's CN must be 1-%d printable ASCII characters", EM_PKI_CN_MAX);
    int days = o.days == 0 ? EM__PKI_CA_DAYS : o.days;
    if (days < 1 || days > EM_PKI_DAYS_MAX)
        return em_error_set(err, EM_ERR_CONFIGURATION, EM_SEV_HIGH, "days",
                            "CA validity must be 1-%d days", EM_PKI_DAYS_MAX);
    int crl_days = o.crl_days == 0 ? EM__PKI_CRL_DAYS : o.crl_days;
    if (crl_days < 1 || crl_days > 366)
        return em_error_set(err, EM_ERR_CONFIGURATION, EM_SEV_HIGH, "crl_days",
                            "crl_days must be 1-366");
    bool uri = o.key_ref != NULL;
    if (uri && !em_key_ref_is_pkcs11(o.key_ref))
        return em_error_set(err, EM_ERR_CONFIGURATION, EM_SEV_HIGH, "key_ref",
                            "key_ref must be a pkcs11: URI (em_pki_import takes a key file)");
    if (uri && o.hsm == NULL)
        return em_error_set(err, EM_ERR_CONFIGURATION, EM_SEV_HIGH, "hsm",
                            "a pkcs11: key needs an HSM");
    if (!uri && o.secret == NULL)
        return em_error_set(err, EM_ERR_CONFIGURATION, EM_SEV_HIGH, "secret",
                            "a secret is needed to seal the CA key");

    em_pki_t *pki = pki_alloc(dir, err);
    if (pki == NULL)
        return EM_ERR_NOMEM;
    em_err_t rc;
    pki->crl_days = crl_days;
    created_t c = {0};
    rc = make_dir(pki, &c, err);
    if (rc != EM_OK)
        goto done;
    if (uri)
        rc = em_key_load(o.key_ref, NULL, o.hsm, false, &pki->key, err);
    else
        rc = em_key_generate_p256(&pki->key, err);
    if (rc == EM_OK)
        rc = ca_key_acceptable(pki->key, err);
    if (rc == EM_OK)
        rc = em__pki_make_ca_cert(pki->key, cn, days, &pki->ca, err);
    if (rc == EM_OK)
        rc = load_ca_times(pki, err);
    if (rc == EM_OK)
        pki->chain = sk_X509_new_null();
    if (rc == EM_OK && pki->chain == NULL)
        rc = em_error_set(err, EM_ERR_NOMEM, EM_SEV_HIGH, NULL, "out of memory");
    if (rc == EM_OK)
        rc = save_key(pki, uri ? o.key_ref : NULL, o.secret, &c, err);
    if (rc == EM_OK)
        rc = write_rest(pki, &c, err);
done:
    if (rc != EM_OK)
        undo(dir, &c);
    em_pki_free(pki);
    return rc;
}

/* The operator's CA certificate must be one: CA:TRUE, allowed to sign
 * certificates and CRLs, valid now. */
static em_err_t check_operator_ca(X509 *ca, em_error_t *err)
{
    uint32_t flags = X509_get_extension_flags(ca);
    if (!(flags & EXFLAG_BCONS) || !(flags & EXFLAG_CA))
        return em_error_set(err, EM_ERR_CERTIFICATE, EM_SEV_HIGH, "cert",
                            "not a CA certificate (basicConstraints CA:TRUE is missing)");
    if ((flags & EXFLAG_KUSAGE) && (X509_get_key_usage(ca) & (KU_KEY_CERT_SIGN | KU_CRL_SIGN)) !=
                                       (KU_KEY_CERT_SIGN | KU_CRL_SIGN))
        return em_error_set(err, EM_ERR_CERTIFICATE, EM_SEV_HIGH, "cert",
                            "the CA's keyUsage must allow keyCertSign and cRLSign");
    int64_t nb, na;
    if (!em__pki_asn1_time_ms(X509_get0_notBefore(ca), &nb) ||
        !em__pki_asn1_time_ms(X509_get0_notAfter(ca), &na))
        return em_error_set(err, EM_ERR_MESSAGE_FORMAT, EM_SEV_HIGH, "cert",
                            "the CA certificate's validity is unreadable");
    int64_t now = em_now_ms();
    if (now > na)
        return em_error_set(err, EM_ERR_CERTIFICATE, EM_SEV_HIGH, "cert",
                            "the CA certificate has expired");
    if (now < nb)
        return em_error_set(err, EM_ERR_CERTIFICATE, EM_SEV_HIGH, "cert",
                            "the CA certificate is not yet valid");
    return EM_OK;
}

em_err_t em_pki_import(const char *dir, const char *cert_file, const char *key_ref,
                       const em_keystore_secret_t *secret, em_pkcs11_t *hsm, int crl_days,
                       em_error_t *err)
{
    if (dir == NULL || dir[0] == '\0' || cert_file == NULL || key_ref == NULL)
        return em_error_set(err, EM_ERR_CONFIGURATION, EM_SEV_HIGH, NULL,
                            "a CA directory, a certificate and a key are needed");
    if (crl_days == 0)
        crl_days = EM__PKI_CRL_DAYS;
    if (crl_days < 1 || crl_days > 366)
        return em_error_set(err, EM_ERR_CONFIGURATION, EM_SEV_HIGH, "crl_days",
                            "crl_days must be 1-366");
    bool uri = em_key_ref_is_pkcs11(key_ref);
    if (uri && hsm == NULL)
        return em_error_set(err, EM_ERR_CONFIGURATION, EM_SEV_HIGH, "hsm",
                            "a pkcs11: key needs an HSM");
    if (!uri && secret == NULL)
        return em_error_set(err, EM_ERR_CONFIGURATION, EM_SEV_HIGH, "secret",
                            "a secret is needed to seal the CA key");
    /* Check everything before creating anything. */
    X509 *ca;
    STACK_OF(X509) * chain;
    em_err_t rc = read_certs(cert_file, &ca, &chain, err);
    if (rc == EM_ERR_NOT_FOUND || rc == EM_ERR_LIMIT)
        rc = em_error_set(err, EM_ERR_CONFIGURATION, EM_SEV_HIGH, "cert", "cannot read %s",
                          cert_file);
    if (rc != EM_OK)
        return rc;
    EVP_PKEY *key = NULL;
    rc = check_operator_ca(ca, err);
    if (rc == EM_OK)
        rc = em_key_load(key_ref, uri ? NULL : secret, uri ? hsm : NULL, true, &key, err);
    if (rc == EM_OK)
        rc = ca_key_acceptable(key, err);
    if (rc == EM_OK)
        rc = check_key_matches(ca, key, err);
    if (rc != EM_OK) {
        EVP_PKEY_free(key);
        X509_free(ca);
        sk_X509_pop_free(chain, X509_free);
        return rc;
    }

    em_pki_t *pki = pki_alloc(dir, err);
    if (pki == NULL) {
        rc = EM_ERR_NOMEM;
        EVP_PKEY_free(key);
        X509_free(ca);
        sk_X509_pop_free(chain, X509_free);
        return rc;
    }
    pki->ca = ca;
    pki->chain = chain;
    pki->key = key;
    pki->crl_days = crl_days;
    created_t c = {0};
    rc = load_ca_times(pki, err);
    if (rc == EM_OK)
        rc = make_dir(pki, &c, err);
    if (rc == EM_OK)
        rc = save_key(pki, uri ? key_ref : NULL, secret, &c, err);
    if (rc == EM_OK)
        rc = write_rest(pki, &c, err);
    if (rc != EM_OK)
        undo(dir, &c);
    em_pki_free(pki);
    return rc;
}
