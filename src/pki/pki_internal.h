/*
 * emiot - pki/pki_internal.h: what the files of src/pki share.
 *
 * An em_pki_t keeps the CA certificate, the CA key (when opened with a
 * secret or an HSM), the lock file descriptor and an in-memory copy of the
 * index. The copy is refreshed whenever the index file changed on disk
 * (another process issued or revoked): every public function takes the lock
 * (shared to read, exclusive to change) and then calls em__pki_sync.
 */
#ifndef EMIOT_PKI_INTERNAL_H
#define EMIOT_PKI_INTERNAL_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

#include <openssl/x509.h>

#include "emiot/pki.h"

/* Files of a CA directory. */
#define EM__PKI_CA_CRT    "ca.crt"
#define EM__PKI_CA_KEY    "ca.key"
#define EM__PKI_CA_URI    "ca.key.uri"
#define EM__PKI_INDEX     "index"
#define EM__PKI_CERTS     "certs"
#define EM__PKI_CRL       "crl.pem"
#define EM__PKI_CRLNUMBER "crlnumber"
#define EM__PKI_LOCK      "lock"

#define EM__PKI_PATH_MAX       4096
#define EM__PKI_PEM_FILE_MAX   (1024L * 1024) /* ca.crt, a certificate, a CRL head */
#define EM__PKI_CRL_FILE_MAX   (256L * 1024 * 1024)
#define EM__PKI_SKEW_S         300 /* not_before = now - 5 minutes */
#define EM__PKI_CRL_DAYS       30
#define EM__PKI_CA_DAYS        3650
#define EM__PKI_RSA_BITS_MAX   8192
#define EM__PKI_SIG_MAX        1024 /* bytes: an RSA-8192 signature */
#define EM__PKI_VERIFY_PEM_MAX (64L * 1024)

/* The index in memory: records in file order. */
typedef struct em__pki_index {
    em_pki_cert_t *certs;
    size_t n;
    size_t cap;
} em__pki_index_t;

struct em_pki {
    char *dir;
    char *ca_file;
    char *crl_file;
    char *index_file;
    char *crlnumber_file;
    char *certs_dir;
    X509 *ca;               /* the CA certificate */
    STACK_OF(X509) * chain; /* what follows it in ca.crt (may be empty) */
    EVP_PKEY *key;          /* NULL: opened read-only */
    int64_t ca_not_before_ms;
    int64_t ca_not_after_ms;
    int crl_days;
    int lock_fd;
    em__pki_index_t index;
    /* What the index file was when last read (to notice other writers). */
    bool index_loaded;
    dev_t index_dev;
    ino_t index_ino;
    off_t index_size;
    struct timespec index_mtime;
    bool iterating; /* inside em_pki_list's callback */
};

/* ---- index.c -------------------------------------------------------------- */

/* Parses an index image (len bytes, need not be NUL-terminated) into out
 * (which must be empty: zeroed). Strict: every field checked, duplicate
 * serials refused; EM_ERR_MESSAGE_FORMAT naming the line, EM_ERR_LIMIT (too
 * many lines), EM_ERR_NOMEM. On error out is left empty. */
em_err_t em__pki_index_parse(const char *buf, size_t len, em__pki_index_t *out, em_error_t *err);

/* Serialises idx; *out (malloc'd, *out_len bytes, NUL-terminated) belongs to
 * the caller. EM_ERR_NOMEM, EM_ERR_INTERNAL (a record that breaks a rule). */
em_err_t em__pki_index_format(const em__pki_index_t *idx, char **out, size_t *out_len,
                              em_error_t *err);

/* One record as an index line, without the newline; 0 when it breaks a rule. */
size_t em__pki_index_line(const em_pki_cert_t *c, char *buf, size_t size);

/* Checks one record against the index rules (the parser's and the writer's). */
bool em__pki_cert_valid(const em_pki_cert_t *c);

/* Appends a copy of c (EM_ERR_NOMEM, EM_ERR_LIMIT). */
em_err_t em__pki_index_add(em__pki_index_t *idx, const em_pki_cert_t *c, em_error_t *err);

/* The record with serial (32 lower-case hex digits), or NULL. */
em_pki_cert_t *em__pki_index_find(const em__pki_index_t *idx, const char *serial);

void em__pki_index_clear(em__pki_index_t *idx);

/* ---- names.c ---------------------------------------------------------------- */

/* CN rules: device (a device id), client (1-64 of [A-Za-z0-9_.@:-], not a
 * device id), server (1-64 of [A-Za-z0-9_.@:-]). */
bool em__pki_cn_valid(em_cert_profile_t profile, const char *cn, size_t len);

/* 32 hex digits of any case into 32 lower-case ones; false when not a serial. */
bool em__pki_serial_normalise(const char *in, char out[EM_PKI_SERIAL_LEN + 1]);

/* ---- files (files.c) ----------------------------------------------------------- */

/* dir/name, malloc'd; NULL when out of memory or too long. */
char *em__pki_path(const char *dir, const char *name);

/* Writes len bytes to path atomically (temporary file, fsync, rename, fsync of
 * the directory) with mode. EM_ERR_IO. */
em_err_t em__pki_write_atomic(const char *path, const void *data, size_t len, mode_t mode,
                              em_error_t *err);

/* Reads a whole file of at most max bytes; *out is NUL-terminated. EM_ERR_NOT_FOUND,
 * EM_ERR_IO, EM_ERR_LIMIT, EM_ERR_NOMEM. */
em_err_t em__pki_read_file(const char *path, size_t max, char **out, size_t *out_len,
                           em_error_t *err);

/* flock on the lock file: LOCK_SH or LOCK_EX; em__pki_unlock releases. */
em_err_t em__pki_lock(em_pki_t *pki, int how, em_error_t *err);
void em__pki_unlock(em_pki_t *pki);

/* Re-reads the index when the file changed (caller holds the lock). */
em_err_t em__pki_sync(em_pki_t *pki, em_error_t *err);

/* Writes the in-memory index to the file (caller holds the exclusive lock). */
em_err_t em__pki_index_save(em_pki_t *pki, em_error_t *err);

/* ---- time and X.509 helpers (issue.c) --------------------------------------- */

/* Sets err to EM_ERR_INTERNAL "what: <OpenSSL's last reason>", clears
 * OpenSSL's error queue and returns EM_ERR_INTERNAL. */
em_err_t em__pki_openssl_fail(em_error_t *err, const char *what);

/* ASN1_TIME to milliseconds since the epoch; false when unreadable. */
bool em__pki_asn1_time_ms(const ASN1_TIME *t, int64_t *out);

/* The serial of cert as lower-case hex, at least 32 digits (zero-padded);
 * false when it does not fit size. */
bool em__pki_serial_hex(const ASN1_INTEGER *serial, char *out, size_t size);

/* The digest to sign with key: SHA-256, or NULL for Ed25519/Ed448. */
const EVP_MD *em__pki_sign_md(EVP_PKEY *key);

/* The only CN of name, NUL-terminated, 1..EM_PKI_CN_MAX printable bytes. */
bool em__pki_name_cn(const X509_NAME *name, char out[EM_PKI_CN_MAX + 1]);

/* Builds a self-signed CA certificate for key (init). */
em_err_t em__pki_make_ca_cert(EVP_PKEY *key, const char *cn, int days, X509 **out, em_error_t *err);

/* ---- crl.c ------------------------------------------------------------------ */

/* Builds and writes crl.pem and crlnumber (caller holds the exclusive lock
 * and has synced the index). days 0: pki->crl_days. */
em_err_t em__pki_crl_write(em_pki_t *pki, int days, em_error_t *err);

/* The period (nextUpdate - lastUpdate, in days, rounded) of the CRL in pem;
 * 0 when unreadable. */
int em__pki_crl_period_days(const char *pem, size_t len);

/* ---- csr.c ------------------------------------------------------------------ */

/* Parses and checks a CSR: PEM, signature, key policy. *req belongs to the
 * caller. Errors as em_pki_issue_csr's front half. */
em_err_t em__pki_csr_check(const char *csr_pem, size_t len, X509_REQ **req, em_error_t *err);

/* The CN the certificate will carry: the CSR's, checked against the profile
 * and against want (when not NULL). */
em_err_t em__pki_csr_cn(X509_REQ *req, em_cert_profile_t profile, const char *want,
                        char cn[EM_PKI_CN_MAX + 1], em_error_t *err);

/* ---- issue.c ------------------------------------------------------------------ */

/* Issues a certificate for pub with cn under opts (the key, profile and CN
 * already checked). */
em_err_t em__pki_issue_key(em_pki_t *pki, const em_pki_issue_options_t *opts, EVP_PKEY *pub,
                           const char *cn, char **cert_pem, em_pki_cert_t *info, em_error_t *err);

/* PEM of cert, malloc'd and NUL-terminated. */
char *em__pki_cert_pem(X509 *cert, size_t *len);

/* The PEM certificates of pem (len bytes, at most INT_MAX): *first the first
 * (NULL when there is none), *rest (never NULL; the caller frees both) up to
 * max of those that follow it. false, with nothing to free, when memory ran
 * out. Leaves OpenSSL's error queue empty after reading. */
bool em__pki_pem_certs(const char *pem, size_t len, int max, X509 **first, STACK_OF(X509) * *rest);

#endif /* EMIOT_PKI_INTERNAL_H */
