/*
 * emiot - security_internal.h: what the keystore, key and PKCS#11 files
 * share with each other and with the rest of libemiot (not public API).
 */
#ifndef EMIOT_SECURITY_INTERNAL_H
#define EMIOT_SECURITY_INTERNAL_H

#include <stdbool.h>
#include <stddef.h>

#include <openssl/evp.h>

#include "emiot/error.h"
#include "emiot/keystore.h"

/* EM_KEYSTORE_DATA_MAX as a size_t, for comparisons with lengths (the public
 * macro is an int product). */
#define EM__KEYSTORE_DATA_MAX ((size_t)EM_KEYSTORE_DATA_MAX)

/*
 * Reads a whole file (at most max bytes) into a malloc'd buffer with a NUL
 * after the data. When mode_out is not NULL it receives the file's mode.
 * Errors: EM_ERR_NOT_FOUND (no such file), EM_ERR_IO (unreadable, not a
 * regular file), EM_ERR_MESSAGE_FORMAT (larger than max), EM_ERR_NOMEM.
 * The buffer may hold a secret: release it with em_keystore_data_free.
 */
em_err_t em__security_read_file(const char *path, size_t max, unsigned char **out, size_t *out_len,
                                unsigned *mode_out, em_error_t *err);

/*
 * Writes len bytes to path atomically with mode 0600: a temporary file in the
 * same directory, fsync, then rename (replace true) or link (replace false:
 * EM_ERR_EXISTS when path exists, so that two processes creating the same
 * file never both believe they won), then fsync of the directory.
 * Errors: EM_ERR_IO, EM_ERR_EXISTS, EM_ERR_INVALID_ARGUMENT.
 */
em_err_t em__security_write_file(const char *path, const void *data, size_t len, bool replace,
                                 em_error_t *err);

/* em_keystore_write_file that refuses to replace an existing file
 * (EM_ERR_EXISTS). */
em_err_t em__keystore_write_new(const char *path, const em_keystore_secret_t *s, const void *data,
                                size_t len, em_error_t *err);

/* Encodes key as unencrypted PKCS#8 PEM into a malloc'd buffer (NUL after
 * it; a secret: em_keystore_data_free). Errors: EM_ERR_INVALID_ARGUMENT (not
 * an exportable private key), EM_ERR_NOMEM. */
em_err_t em__key_to_pem(EVP_PKEY *key, unsigned char **out, size_t *out_len, em_error_t *err);

/* Parses a PEM private key (never prompts for a password).
 * Errors: EM_ERR_MESSAGE_FORMAT, EM_ERR_NOMEM. */
em_err_t em__key_from_pem(const unsigned char *pem, size_t len, EVP_PKEY **out, em_error_t *err);

/* Loads the private key named by the PKCS#11 URI ref from hsm.
 * Errors: as em_key_load for a URI. */
em_err_t em__pkcs11_load_key(em_pkcs11_t *hsm, const char *ref, EVP_PKEY **out, em_error_t *err);

/* Checks that ref is a PKCS#11 URI em_key_load accepts (the same parser),
 * without a module. Errors: EM_ERR_CONFIGURATION. For the fuzzer. */
em_err_t em__pkcs11_uri_check(const char *ref, em_error_t *err);

#endif /* EMIOT_SECURITY_INTERNAL_H */
