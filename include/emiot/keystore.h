/*
 * emiot - keystore.h: secrets at rest, and the private keys emiot signs with.
 *
 * A keystore file holds one secret (a private key, as PKCS#8 PEM) encrypted
 * with AES-256-GCM. Its key comes from one of two sources:
 *   - a passphrase, stretched with scrypt (N = 2^log2_n, r = 8, p = 1; the
 *     parameters and a random salt are in the file);
 *   - a key file of 32 random bytes (written as 64 hex digits), expanded with
 *     HKDF-SHA256 over the file's salt.
 *
 * File format, version 1 (all integers big-endian):
 *   0  "EMKS"              magic
 *   4  u8 version          1
 *   5  u8 kdf              1 scrypt, 2 key file
 *   6  u8 log2_n           scrypt cost (14..20); 0 for a key file
 *   7  u8 r, u8 p          scrypt (8, 1); 0, 0 for a key file
 *   9  3 bytes             zero
 *  12  16 bytes            salt
 *  28  12 bytes            GCM nonce
 *  40  16 bytes            key check: tells a wrong secret from a tampered file
 *  56  u32 length          of the ciphertext (at most EM_KEYSTORE_DATA_MAX)
 *  60  ciphertext, then a 16-byte GCM tag
 * Bytes 0..59 are the GCM additional data: any change to the header, the
 * ciphertext or the tag is detected. Files are written atomically (a
 * temporary file, fsync, rename) with mode 0600.
 * The KDF gives 64 bytes (scrypt over the passphrase and salt, or HKDF-SHA256
 * with the key file's 32 bytes as key, the salt, and info "emiot-keystore
 * v1"): the first 32 are the AES key; the key check is the first 16 bytes of
 * SHA-256("emiot-keystore-check" || the last 32).
 *
 * Private keys are referred to by a string: a path to a keystore file, or a
 * PKCS#11 URI ("pkcs11:token=emiot;object=ca-key", RFC 7512: the attributes
 * token, object, id and serial) naming a key that lives in an HSM and never
 * leaves it. Plain PEM private keys are accepted only where a function says so.
 *
 * Secrets handed to these functions are copied and wiped (OPENSSL_cleanse)
 * when their owner is freed; decrypted data is returned in buffers the caller
 * wipes with em_keystore_data_free.
 */
#ifndef EMIOT_KEYSTORE_H
#define EMIOT_KEYSTORE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include <openssl/evp.h>

#include "emiot/error.h"
#include "emiot/export.h"

#ifdef __cplusplus
extern "C" {
#endif

#define EM_KEYSTORE_VERSION        1
#define EM_KEYSTORE_DATA_MAX       (64 * 1024) /* bytes of secret in one file */
#define EM_KEYSTORE_FILE_MAX       (EM_KEYSTORE_DATA_MAX + 76)
#define EM_KEYSTORE_PASSPHRASE_MIN 12   /* characters */
#define EM_KEYSTORE_PASSPHRASE_MAX 1024 /* bytes */
#define EM_KEYSTORE_LOG2N_DEFAULT  16   /* scrypt N = 65536: 64 MiB, ~0.2 s */
#define EM_KEYSTORE_LOG2N_MIN      14   /* files asking for less are refused */
#define EM_KEYSTORE_LOG2N_MAX      20   /* files asking for more are refused (1 GiB) */

/* ---- the secret that opens a keystore -------------------------------- */

typedef struct em_keystore_secret em_keystore_secret_t;

/*
 * A secret from a passphrase (len bytes, copied). The passphrase must be at
 * least EM_KEYSTORE_PASSPHRASE_MIN characters and not a known placeholder.
 * Errors: EM_ERR_VALIDATION (too short, too long, placeholder; the message
 * never repeats it), EM_ERR_INVALID_ARGUMENT, EM_ERR_NOMEM.
 */
EM_EXPORT em_err_t em_keystore_secret_passphrase(const char *pass, size_t len,
                                                 em_keystore_secret_t **out, em_error_t *err);

/*
 * A passphrase from the environment variable var, or from the first line of
 * the file at path (which must not be readable by group or others). Exactly
 * one of var and path is given. Errors: EM_ERR_CONFIGURATION (variable unset,
 * file unreadable or too open), those of em_keystore_secret_passphrase.
 */
EM_EXPORT em_err_t em_keystore_secret_from_env(const char *var, em_keystore_secret_t **out,
                                               em_error_t *err);
EM_EXPORT em_err_t em_keystore_secret_from_file(const char *path, em_keystore_secret_t **out,
                                                em_error_t *err);

/*
 * A secret from a key file (64 hex digits and an optional newline; mode 0600
 * or stricter). Errors: EM_ERR_CONFIGURATION (unreadable, too open, not 64
 * hex digits), EM_ERR_NOMEM.
 */
EM_EXPORT em_err_t em_keystore_secret_key_file(const char *path, em_keystore_secret_t **out,
                                               em_error_t *err);

/* Writes a new key file of 32 random bytes at path (mode 0600; refuses to
 * replace an existing file). Errors: EM_ERR_EXISTS, EM_ERR_IO, EM_ERR_INTERNAL. */
EM_EXPORT em_err_t em_keystore_key_file_create(const char *path, em_error_t *err);

/* The scrypt cost used when this secret seals (EM_KEYSTORE_LOG2N_MIN..MAX;
 * default EM_KEYSTORE_LOG2N_DEFAULT). No effect on key-file secrets.
 * Errors: EM_ERR_INVALID_ARGUMENT. */
EM_EXPORT em_err_t em_keystore_secret_set_cost(em_keystore_secret_t *s, unsigned log2_n);

/* Wipes and frees. Accepts NULL. */
EM_EXPORT void em_keystore_secret_free(em_keystore_secret_t *s);

/* ---- sealing and opening ----------------------------------------------- */

/*
 * Encrypts len bytes of data (1..EM_KEYSTORE_DATA_MAX) into a keystore file
 * image; *out (malloc'd, *out_len bytes) belongs to the caller (free).
 * Errors: EM_ERR_INVALID_ARGUMENT, EM_ERR_LIMIT (too large), EM_ERR_NOMEM,
 * EM_ERR_INTERNAL (the CSPRNG or the KDF failed).
 */
EM_EXPORT em_err_t em_keystore_seal(const em_keystore_secret_t *s, const void *data, size_t len,
                                    unsigned char **out, size_t *out_len, em_error_t *err);

/*
 * Decrypts a keystore file image. *out (*out_len bytes, plus a NUL after them)
 * is secret: release it with em_keystore_data_free.
 * Errors: EM_ERR_MESSAGE_FORMAT ("not an emiot keystore", truncated, lengths
 * that do not add up, a cost outside LOG2N_MIN..MAX), EM_ERR_CONFIGURATION
 * (a version newer than this build, or a passphrase given for a key-file
 * keystore and the reverse), EM_ERR_CRYPTO ("wrong passphrase or key file",
 * or "the keystore was modified": authentication failed), EM_ERR_NOMEM.
 */
EM_EXPORT em_err_t em_keystore_open(const em_keystore_secret_t *s, const void *file, size_t len,
                                    unsigned char **out, size_t *out_len, em_error_t *err);

/* Wipes len bytes of data and frees it. Accepts NULL. */
EM_EXPORT void em_keystore_data_free(unsigned char *data, size_t len);

/* em_keystore_seal into the file at path (atomic replace, mode 0600). Errors:
 * those of em_keystore_seal, EM_ERR_IO. */
EM_EXPORT em_err_t em_keystore_write_file(const char *path, const em_keystore_secret_t *s,
                                          const void *data, size_t len, em_error_t *err);

/* Reads the file at path (at most EM_KEYSTORE_FILE_MAX bytes) and opens it.
 * Errors: those of em_keystore_open, EM_ERR_IO (unreadable; EM_ERR_NOT_FOUND
 * when it does not exist). */
EM_EXPORT em_err_t em_keystore_read_file(const char *path, const em_keystore_secret_t *s,
                                         unsigned char **out, size_t *out_len, em_error_t *err);

/* True when the first bytes of data are a keystore's magic. */
EM_EXPORT bool em_keystore_is_sealed(const void *data, size_t len);

/* ---- PKCS#11 (an HSM through libp11) ------------------------------------ */

typedef struct em_pkcs11 em_pkcs11_t;

/*
 * Loads the PKCS#11 module (a path, e.g. /usr/lib/softhsm/libsofthsm2.so) and
 * keeps the user PIN (len bytes, copied, wiped on free) to log in to tokens.
 * Errors: EM_ERR_CONFIGURATION (the module cannot be loaded), EM_ERR_NOMEM.
 */
EM_EXPORT em_err_t em_pkcs11_open(const char *module, const char *pin, size_t pin_len,
                                  em_pkcs11_t **out, em_error_t *err);

/* Logs out, unloads the module, wipes the PIN. Accepts NULL. Keys loaded from
 * it must be freed first. */
EM_EXPORT void em_pkcs11_free(em_pkcs11_t *p);

/* ---- private keys ---------------------------------------------------------- */

/*
 * Loads the private key named by ref: a PKCS#11 URI (hsm required) or a
 * keystore file (secret required). When allow_plain is true, ref may also be
 * an unencrypted PEM private key file (mode 0600 or stricter). The caller owns
 * *out (EVP_PKEY_free; for an HSM key, before em_pkcs11_free).
 * An HSM key is an ordinary EVP_PKEY whose private operations run in the
 * token: EVP_DigestSign, X509_sign, X509_REQ_sign and X509_CRL_sign accept it
 * as they are (tested: SoftHSM2, libp11 0.4.12, OpenSSL 3.0, EC P-256). Its
 * public half encodes (i2d_PUBKEY, X509_set_pubkey); its private half never
 * leaves the token.
 * Errors: EM_ERR_NOT_FOUND (no such file, no such key in the token),
 * EM_ERR_CONFIGURATION (a URI without hsm, a file without secret, a plain key
 * where none is allowed, a key file readable by others), EM_ERR_AUTHENTICATION
 * (the token refused the PIN), those of em_keystore_read_file,
 * EM_ERR_MESSAGE_FORMAT (not a private key), EM_ERR_NOMEM.
 */
EM_EXPORT em_err_t em_key_load(const char *ref, const em_keystore_secret_t *secret,
                               em_pkcs11_t *hsm, bool allow_plain, EVP_PKEY **out, em_error_t *err);

/* Writes key (PKCS#8) sealed with secret to path (atomic, mode 0600).
 * Errors: those of em_keystore_write_file. */
EM_EXPORT em_err_t em_key_save(const char *path, EVP_PKEY *key, const em_keystore_secret_t *secret,
                               em_error_t *err);

/* A new ECDSA P-256 key. The caller owns *out. Errors: EM_ERR_INTERNAL,
 * EM_ERR_NOMEM. */
EM_EXPORT em_err_t em_key_generate_p256(EVP_PKEY **out, em_error_t *err);

/* True when ref is a PKCS#11 URI ("pkcs11:" prefix). */
EM_EXPORT bool em_key_ref_is_pkcs11(const char *ref);

#ifdef __cplusplus
}
#endif

#endif /* EMIOT_KEYSTORE_H */
