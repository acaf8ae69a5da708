/*
 * emiot - pki.h: emiot's certificate authority and certificate verification.
 *
 * A CA directory (mode 0700) holds:
 *   ca.crt        the CA certificate (PEM), then any intermediate chain
 *   ca.key        the CA private key, sealed in a keystore file (keystore.h),
 *                 or ca.key.uri: the PKCS#11 URI of a key held in an HSM
 *   index         one line per issued certificate (see below)
 *   certs/S.pem   each issued certificate, by serial S
 *   crl.pem       the current CRL (PEM), signed by the CA; crlnumber its number
 *   lock          locked (flock) while the directory changes: emiotctl and
 *                 emiotd may share it
 * The index is text, one certificate per line, fields separated by one tab:
 *   serial profile not_before_ms not_after_ms revoked_at_ms reason sha256 cn
 * (serial: 32 lower-case hex digits; profile: device|server|client;
 * revoked_at_ms 0 when valid; reason "-" while valid, else a name of
 * em_crl_reason_name; sha256 of the DER, 64 hex digits; cn by the profile's
 * rule). Every line ends with a newline and is at most EM_PKI_INDEX_LINE_MAX
 * bytes; a line that breaks a rule (or repeats a serial) makes the whole
 * index refused (EM_ERR_MESSAGE_FORMAT naming the line).
 *
 * Profiles (what the issued certificate says):
 *   device  CN = a device id (3-50 of [A-Za-z0-9_-]); keyUsage digitalSignature
 *           (critical); extendedKeyUsage clientAuth
 *   client  CN = an operator or service name (1-64 of [A-Za-z0-9_.@:-], and not
 *           a valid device id, so that no device can take a user's or the
 *           manager's MQTT identity); keyUsage digitalSignature; EKU clientAuth
 *   server  CN (1-64 of [A-Za-z0-9_.@:-]) and subjectAltName DNS names / IP
 *           addresses (without any, the CN when it is a host name or an IP
 *           address); keyUsage digitalSignature, keyEncipherment; EKU
 *           serverAuth
 * Every certificate: X.509 v3, a random 128-bit positive serial (unique in the
 * index), basicConstraints CA:FALSE (critical), subject and authority key
 * identifiers, ECDSA-SHA256 signature by the CA (P-256; an imported CA's key
 * signs with SHA-256 in its own scheme). The CA certificate: CA:TRUE,
 * pathlen 0 (critical), keyUsage keyCertSign, cRLSign (critical).
 * A certificate issued for a number of days never outlives the CA: its
 * notAfter is the CA's when that comes first.
 *
 * Keys accepted in a CSR: EC P-256 or P-384, Ed25519, RSA of 2048 bits or
 * more. Anything else is refused as weak or unsupported.
 *
 * Thread safety: an em_pki_t may be used by one thread at a time; an
 * em_verifier_t likewise.
 */
#ifndef EMIOT_PKI_H
#define EMIOT_PKI_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include <openssl/x509.h>

#include "emiot/device.h"
#include "emiot/error.h"
#include "emiot/export.h"
#include "emiot/keystore.h"

#ifdef __cplusplus
extern "C" {
#endif

#define EM_PKI_SERIAL_LEN      32 /* hex digits */
#define EM_PKI_SHA256_LEN      64 /* hex digits */
#define EM_PKI_CN_MAX          64
#define EM_PKI_SAN_MAX         16 /* DNS names plus IP addresses in one certificate */
#define EM_PKI_DAYS_MAX        (20 * 366)
#define EM_PKI_CSR_MAX         (16 * 1024) /* bytes of PEM */
#define EM_PKI_INDEX_LINE_MAX  512
#define EM_PKI_INDEX_LINES_MAX 10000000

typedef enum em_cert_profile {
    EM_CERT_NONE = 0,
    EM_CERT_DEVICE = 1,
    EM_CERT_SERVER = 2,
    EM_CERT_CLIENT = 3
} em_cert_profile_t;

/* "device", "server", "client"; NULL for others. */
EM_EXPORT const char *em_cert_profile_name(em_cert_profile_t p);
/* EM_ERR_VALIDATION for an unknown name. */
EM_EXPORT em_err_t em_cert_profile_parse(const char *name, em_cert_profile_t *out);

/* CRL reasons (RFC 5280 values). */
typedef enum em_crl_reason {
    EM_CRL_UNSPECIFIED = 0,
    EM_CRL_KEY_COMPROMISE = 1,
    EM_CRL_CA_COMPROMISE = 2,
    EM_CRL_AFFILIATION_CHANGED = 3,
    EM_CRL_SUPERSEDED = 4,
    EM_CRL_CESSATION_OF_OPERATION = 5
} em_crl_reason_t;

/* "unspecified", "keyCompromise", "caCompromise", "affiliationChanged",
 * "superseded", "cessationOfOperation". */
EM_EXPORT const char *em_crl_reason_name(em_crl_reason_t r);
EM_EXPORT em_err_t em_crl_reason_parse(const char *name, em_crl_reason_t *out);

/* One issued certificate, as the index records it. */
typedef struct em_pki_cert {
    char serial[EM_PKI_SERIAL_LEN + 1];
    em_cert_profile_t profile;
    char common_name[EM_PKI_CN_MAX + 1];
    int64_t not_before_ms;
    int64_t not_after_ms;
    int64_t revoked_at_ms; /* 0: not revoked */
    em_crl_reason_t reason;
    char sha256[EM_PKI_SHA256_LEN + 1]; /* fingerprint of the DER */
} em_pki_cert_t;

/* ---- the CA --------------------------------------------------------------- */

typedef struct em_pki em_pki_t;

typedef struct em_pki_init_options {
    const char *common_name;            /* default "emiot CA" */
    int days;                           /* CA validity, default 3650 (1..EM_PKI_DAYS_MAX) */
    int crl_days;                       /* nextUpdate of each CRL, default 30 (1..366) */
    const char *key_ref;                /* NULL: generate a P-256 key and seal it in
                                           ca.key; a "pkcs11:" URI: use that key (hsm) */
    const em_keystore_secret_t *secret; /* seals ca.key (required unless key_ref is a URI) */
    em_pkcs11_t *hsm;                   /* for a URI key_ref */
} em_pki_init_options_t;

/* Fills opts with the defaults (no secret, no HSM). */
EM_EXPORT void em_pki_init_options_init(em_pki_init_options_t *opts);

/*
 * Creates a CA directory at dir (created 0700; must not hold a CA already):
 * the key, a self-signed CA certificate, an empty index and a first CRL.
 * Errors: EM_ERR_EXISTS (dir holds a CA), EM_ERR_CONFIGURATION (bad option,
 * no secret), EM_ERR_IO, the errors of em_key_load for an HSM key,
 * EM_ERR_NOMEM, EM_ERR_INTERNAL.
 */
EM_EXPORT em_err_t em_pki_init(const char *dir, const em_pki_init_options_t *opts, em_error_t *err);

/*
 * Creates a CA directory from the operator's CA: cert_file (PEM: the CA
 * certificate, then optionally its chain up to a root) and key_ref (a plain PEM
 * private key file, sealed into ca.key with secret; or a "pkcs11:" URI, with
 * hsm). The certificate must be a CA (basicConstraints CA:TRUE, keyCertSign),
 * currently valid, and match the key. Then an empty index and a first CRL.
 * Errors: EM_ERR_EXISTS, EM_ERR_CERTIFICATE (not a CA, expired, key
 * mismatch), EM_ERR_MESSAGE_FORMAT (unreadable PEM), EM_ERR_CONFIGURATION,
 * EM_ERR_IO, EM_ERR_NOMEM.
 */
EM_EXPORT em_err_t em_pki_import(const char *dir, const char *cert_file, const char *key_ref,
                                 const em_keystore_secret_t *secret, em_pkcs11_t *hsm, int crl_days,
                                 em_error_t *err);

/*
 * Opens the CA directory at dir. With secret (or hsm, for an HSM key) the CA
 * key is loaded and the CA can issue and revoke; with neither, only reading
 * (list, get) works. secret and hsm must outlive the em_pki_t. The CRL
 * period used by em_pki_crl_publish(.., 0, ..) is that of the current crl.pem.
 * Errors: EM_ERR_NOT_FOUND (no CA there), EM_ERR_MESSAGE_FORMAT (a damaged
 * index or certificate), the errors of em_key_load, EM_ERR_CERTIFICATE (the
 * key does not match ca.crt), EM_ERR_IO, EM_ERR_NOMEM.
 */
EM_EXPORT em_err_t em_pki_open(const char *dir, const em_keystore_secret_t *secret,
                               em_pkcs11_t *hsm, em_pki_t **out, em_error_t *err);

/* Frees (the CA key is freed and wiped). Accepts NULL. */
EM_EXPORT void em_pki_free(em_pki_t *pki);

/* Paths inside the directory (valid while pki lives). */
EM_EXPORT const char *em_pki_ca_file(const em_pki_t *pki);
EM_EXPORT const char *em_pki_crl_file(const em_pki_t *pki);

/* The CA certificate (owned by pki; do not free). */
EM_EXPORT X509 *em_pki_ca_cert(const em_pki_t *pki);

typedef struct em_pki_issue_options {
    em_cert_profile_t profile;
    const char *common_name;      /* device: the device id; NULL: take the CSR's (then checked) */
    const char *const *dns_names; /* server: subjectAltName DNS names */
    size_t ndns;
    const char *const *ip_addresses; /* server: subjectAltName IP addresses (literals) */
    size_t nips;
    int days;              /* validity from now (default: device 365, client 365, server 397) */
    int64_t not_before_ms; /* when not 0 with not_after_ms: an explicit period, which must */
    int64_t not_after_ms;  /* lie within the CA's (for renewals, and tests of expiry) */
} em_pki_issue_options_t;

/*
 * Issues a certificate for the public key in a CSR (PEM, at most
 * EM_PKI_CSR_MAX bytes). The CSR's signature must verify, its key must be
 * acceptable, and its subject CN must equal opts->common_name when that is
 * given; only the CN is taken from the CSR (its requested extensions are
 * ignored: the profile decides). The certificate is added to the index and
 * written to certs/. *cert_pem (NUL-terminated) belongs to the caller (free);
 * info (may be NULL) receives its index record.
 * Errors: EM_ERR_MESSAGE_FORMAT (not a CSR), EM_ERR_CRYPTO (the CSR's
 * signature does not verify), EM_ERR_VALIDATION (weak or unsupported key,
 * field "key"; CN missing, mismatched or not allowed for the profile, field
 * "cn"; bad SAN or period), EM_ERR_STATE (opened without the CA key),
 * EM_ERR_CERTIFICATE (the CA itself has expired), EM_ERR_IO, EM_ERR_NOMEM.
 */
EM_EXPORT em_err_t em_pki_issue_csr(em_pki_t *pki, const em_pki_issue_options_t *opts,
                                    const char *csr_pem, size_t len, char **cert_pem,
                                    em_pki_cert_t *info, em_error_t *err);

/*
 * Generates a P-256 key and issues its certificate (for devices that cannot
 * make their own key, servers and clients); opts->common_name is required.
 * *key_pem (PKCS#8 PEM, secret: release it with
 * em_keystore_data_free(*key_pem, strlen(*key_pem))) and *cert_pem belong to
 * the caller. Errors: as em_pki_issue_csr.
 */
EM_EXPORT em_err_t em_pki_issue_new_key(em_pki_t *pki, const em_pki_issue_options_t *opts,
                                        char **key_pem, char **cert_pem, em_pki_cert_t *info,
                                        em_error_t *err);

/*
 * Revokes the certificate with serial (32 hex digits, any case) and publishes
 * a new CRL. Errors: EM_ERR_NOT_FOUND, EM_ERR_STATE (already revoked, or no
 * CA key), EM_ERR_VALIDATION (not a serial), EM_ERR_IO.
 */
EM_EXPORT em_err_t em_pki_revoke(em_pki_t *pki, const char *serial, em_crl_reason_t reason,
                                 em_error_t *err);

/* Writes a new CRL (crl.pem, number + 1) valid for days (0: the CA's crl_days).
 * It must be published again before its nextUpdate: after that, verifiers
 * (emiot's, OpenSSL's, mosquitto's) refuse every certificate of the CA.
 * Errors: EM_ERR_STATE (no CA key), EM_ERR_VALIDATION (days outside 0..366),
 * EM_ERR_IO, EM_ERR_INTERNAL. */
EM_EXPORT em_err_t em_pki_crl_publish(em_pki_t *pki, int days, em_error_t *err);

/* Calls fn for each certificate in the index, oldest first; fn returning
 * non-zero stops. Re-reads the index when another process changed it. The
 * index stays locked (shared) while fn runs: fn must not call em_pki_*
 * functions on the same pki (they return EM_ERR_STATE). */
typedef int (*em_pki_cert_fn)(const em_pki_cert_t *cert, void *userdata);
EM_EXPORT em_err_t em_pki_list(em_pki_t *pki, em_pki_cert_fn fn, void *userdata, em_error_t *err);

/* The record and (when pem is not NULL) the PEM of the certificate with serial;
 * *pem belongs to the caller. Errors: EM_ERR_NOT_FOUND, EM_ERR_VALIDATION. */
EM_EXPORT em_err_t em_pki_get(em_pki_t *pki, const char *serial, em_pki_cert_t *info, char **pem,
                              em_error_t *err);

/* ---- verification ----------------------------------------------------------- */

typedef struct em_verifier em_verifier_t;

/*
 * A verifier trusting the CA certificates in ca_file (PEM; several allowed;
 * each is a trust anchor, so an intermediate CA is trusted without its root)
 * and, when crl_file is not NULL, refusing what its CRLs revoke (a CA without
 * a CRL in the file then fails every check: the CRL is required once given;
 * when every CA of ca_file has a CRL, the whole chain is checked).
 * Errors: EM_ERR_CONFIGURATION (unreadable or empty files), EM_ERR_CERTIFICATE
 * (a CRL whose signature does not verify against ca_file), EM_ERR_NOMEM.
 */
EM_EXPORT em_err_t em_verifier_new(const char *ca_file, const char *crl_file, em_verifier_t **out,
                                   em_error_t *err);

/* Re-reads the files when they changed on disk (mtime, size); on error the
 * old ones stay in force. *changed (may be NULL) tells whether they were. */
EM_EXPORT em_err_t em_verifier_reload(em_verifier_t *v, bool *changed, em_error_t *err);

EM_EXPORT void em_verifier_free(em_verifier_t *v);

/* What a verified certificate says. */
typedef struct em_cert_identity {
    char common_name[EM_PKI_CN_MAX + 1];
    char serial[EM_PKI_SERIAL_LEN + 1 + 8]; /* hex; longer serials of foreign CAs fit */
    char sha256[EM_PKI_SHA256_LEN + 1];
    int64_t not_after_ms;
} em_cert_identity_t;

/*
 * Verifies cert (with untrusted intermediates chain, may be NULL) at now_ms
 * for purpose: the chain to a trusted CA, the validity period, revocation, the
 * key usage (digitalSignature) and extended key usage (clientAuth for device
 * and client, serverAuth for server), and for a device a CN that is a valid
 * device id. id (may be NULL) receives the identity.
 * keyUsage and extendedKeyUsage must be present (a certificate without them
 * was not made for this use), and a CA certificate is refused.
 * Errors: EM_ERR_CERTIFICATE, with the reason in err->message ("untrusted
 * issuer", "expired", "not yet valid", "revoked", "key usage", "extended key
 * usage", "CN is not a device id", "CN missing or invalid", "revocation
 * status unknown" (no CRL for the issuer, or an expired one), "issuer
 * expired", "issuer is not a CA", "a CA certificate is not an end-entity
 * certificate", ...), EM_ERR_INVALID_ARGUMENT.
 */
EM_EXPORT em_err_t em_verifier_check(em_verifier_t *v, X509 *cert, STACK_OF(X509) * chain,
                                     em_cert_profile_t purpose, int64_t now_ms,
                                     em_cert_identity_t *id, em_error_t *err);

/* Tells whether a device may use its certificate: EM_OK when device_id is
 * registered and enabled, EM_ERR_DEVICE_NOT_FOUND, or EM_ERR_PERMISSION_DENIED
 * (disabled). */
typedef em_err_t (*em_device_check_fn)(const char *device_id, void *userdata);

/*
 * em_verifier_check for a device, then check(id, userdata) (required).
 * Errors: those of em_verifier_check; EM_ERR_CERTIFICATE "device not
 * registered" or "device disabled" when check refuses (err->device_id is
 * set); any other error of check is returned as it is.
 */
EM_EXPORT em_err_t em_verifier_check_device(em_verifier_t *v, X509 *cert, STACK_OF(X509) * chain,
                                            int64_t now_ms, em_device_check_fn check,
                                            void *userdata, em_cert_identity_t *id,
                                            em_error_t *err);

/* Parses a PEM certificate (the first of pem, len bytes; the others become
 * the chain) and calls em_verifier_check. Errors: EM_ERR_MESSAGE_FORMAT, and
 * those of em_verifier_check. */
EM_EXPORT em_err_t em_verifier_check_pem(em_verifier_t *v, const char *pem, size_t len,
                                         em_cert_profile_t purpose, int64_t now_ms,
                                         em_cert_identity_t *id, em_error_t *err);

/* ---- helpers ------------------------------------------------------------------ */

/* Checks that key is acceptable (see above); on refusal EM_ERR_VALIDATION with
 * field "key" and the reason ("RSA key of 1024 bits is too weak", ...). */
EM_EXPORT em_err_t em_pki_key_acceptable(EVP_PKEY *key, em_error_t *err);

/* Verifies a signature (DER ECDSA, raw Ed25519, or RSA PKCS#1 v1.5 / PSS with
 * SHA-256) by cert's public key over msg. Errors: EM_ERR_CRYPTO (does not
 * verify), EM_ERR_VALIDATION (a key type that is not accepted). */
EM_EXPORT em_err_t em_pki_verify_signature(X509 *cert, const void *msg, size_t msg_len,
                                           const void *sig, size_t sig_len, em_error_t *err);

/* The lower-case hex SHA-256 of cert's DER into out. */
EM_EXPORT void em_pki_fingerprint(X509 *cert, char out[EM_PKI_SHA256_LEN + 1]);

#ifdef __cplusplus
}
#endif

#endif /* EMIOT_PKI_H */
