/*
 * libFuzzer target: the keystore file parser (em_keystore_open) and the
 * PKCS#11 URI parser behind em_key_load.
 *
 * The first byte chooses. Keystore images are opened with a fixed key-file
 * secret, so that derivation is a cheap HKDF (a passphrase image is refused
 * before scrypt: wrong secret kind). An image that opens must be what the
 * same secret seals, and must still open after a round trip; one that does
 * not must fail with a documented code and return nothing. A URI that is
 * accepted must start with "pkcs11:".
 */
#include <fcntl.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "emiot/keystore.h"
#include "emiot/log.h"
#include "security/security_internal.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

/* The key the corpus seeds were sealed with (fuzz/corpus/keystore/). */
#define FUZZ_KEY "000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f\n"

static em_keystore_secret_t *secret_once(void)
{
    static em_keystore_secret_t *s;
    if (s != NULL)
        return s;
    em_log_set_level(EM_LOG_OFF);
    char dir[] = "/tmp/emiot-fuzz-keystore-XXXXXX";
    if (mkdtemp(dir) == NULL)
        abort();
    char path[64];
    snprintf(path, sizeof path, "%s/key", dir);
    /* 0600: a key file anyone may read is refused. */
    int fd = open(path, O_WRONLY | O_CREAT | O_EXCL, 0600);
    if (fd < 0 || write(fd, FUZZ_KEY, sizeof FUZZ_KEY - 1) != (ssize_t)(sizeof FUZZ_KEY - 1) ||
        close(fd) != 0)
        abort();
    if (em_keystore_secret_key_file(path, &s, NULL) != EM_OK)
        abort();
    unlink(path);
    rmdir(dir);
    return s;
}

static void fuzz_open(const uint8_t *data, size_t size)
{
    em_keystore_secret_t *s = secret_once();
    unsigned char *out = (unsigned char *)"x";
    size_t out_len = 1;
    em_error_t err;
    em_err_t rc = em_keystore_open(s, data, size, &out, &out_len, &err);
    if (rc != EM_OK) {
        if (out != NULL || out_len != 0)
            abort();
        if (rc != EM_ERR_MESSAGE_FORMAT && rc != EM_ERR_CONFIGURATION && rc != EM_ERR_CRYPTO &&
            rc != EM_ERR_NOMEM)
            abort();
        if (rc != EM_ERR_NOMEM && !em_keystore_is_sealed(data, size) && rc != EM_ERR_MESSAGE_FORMAT)
            abort();
        return;
    }
    if (out_len == 0 || out_len > EM_KEYSTORE_DATA_MAX || out[out_len] != '\0' ||
        size != out_len + 76 || !em_keystore_is_sealed(data, size))
        abort();
    unsigned char *again = NULL;
    size_t again_len = 0;
    if (em_keystore_seal(s, out, out_len, &again, &again_len, NULL) != EM_OK)
        abort();
    unsigned char *back = NULL;
    size_t back_len = 0;
    if (em_keystore_open(s, again, again_len, &back, &back_len, NULL) != EM_OK ||
        back_len != out_len || memcmp(back, out, out_len) != 0)
        abort();
    em_keystore_data_free(back, back_len);
    free(again);
    em_keystore_data_free(out, out_len);
}

static void fuzz_uri(const uint8_t *data, size_t size)
{
    char *ref = malloc(size + 1);
    if (ref == NULL)
        return;
    memcpy(ref, data, size);
    ref[size] = '\0';
    em_error_t err;
    em_err_t rc = em__pkcs11_uri_check(ref, &err);
    if (rc == EM_OK && strncmp(ref, "pkcs11:", 7) != 0)
        abort();
    if (rc != EM_OK && rc != EM_ERR_CONFIGURATION)
        abort();
    free(ref);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size == 0)
        return 0;
    if (data[0] == 'u')
        fuzz_uri(data + 1, size - 1);
    else
        fuzz_open(data + 1, size - 1);
    return 0;
}
