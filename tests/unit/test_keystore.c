/*
 * emiot tests - test_keystore.c: the keystore (keystore.h): secrets, sealing
 * and opening, every way a file can be damaged, file permissions, private
 * keys, and emiotd's JWT key sealed in a keystore (auth_jwt.c).
 *
 * scrypt runs at cost 14 (em_keystore_secret_set_cost) to keep the tests
 * fast; the exhaustive damage tests use a key-file secret (HKDF, cheap).
 */
#include <errno.h>
#include <fcntl.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cmocka.h>

#include <openssl/evp.h>
#include <openssl/pem.h>

#include "api/api_core.h"
#include "emiot/emiot.h"
#include "emiot/keystore.h"
#include "testutil.h"

#define PASS      "correct horse battery staple"
#define OTHERPASS "correct horse battery stapler"

/* ---- allocation failures (tests/support/alloc_hook.h) --------------------- */

#include "alloc_hook.h"

/* ---- helpers --------------------------------------------------------------- */

typedef struct fx {
    char dir[256];
    char keyfile[320];
    em_keystore_secret_t *pass; /* PASS at cost 14 */
    em_keystore_secret_t *key;  /* the key file at keyfile */
} fx_t;

static int fx_setup(void **state)
{
    fx_t *f = calloc(1, sizeof *f);
    if (f == NULL || em_test_mkdtemp(f->dir, sizeof f->dir) != 0)
        return -1;
    snprintf(f->keyfile, sizeof f->keyfile, "%s/keystore.key", f->dir);
    em_error_t err;
    if (em_keystore_secret_passphrase(PASS, strlen(PASS), &f->pass, &err) != EM_OK ||
        em_keystore_secret_set_cost(f->pass, 14) != EM_OK ||
        em_keystore_key_file_create(f->keyfile, &err) != EM_OK ||
        em_keystore_secret_key_file(f->keyfile, &f->key, &err) != EM_OK)
        return -1;
    *state = f;
    return 0;
}

static int fx_teardown(void **state)
{
    fx_t *f = *state;
    em_keystore_secret_free(f->pass);
    em_keystore_secret_free(f->key);
    em_test_rmtree(f->dir);
    free(f);
    return 0;
}

static void path_in(const fx_t *f, const char *name, char *buf, size_t size)
{
    int n = snprintf(buf, size, "%s/%s", f->dir, name);
    assert_true(n > 0 && (size_t)n < size);
}

static void write_file(const char *path, const void *data, size_t len, mode_t mode)
{
    int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC, 0600);
    assert_true(fd >= 0);
    assert_int_equal(write(fd, data, len), (ssize_t)len);
    assert_int_equal(close(fd), 0);
    assert_int_equal(chmod(path, mode), 0);
}

static em_keystore_secret_t *passphrase(const char *p)
{
    em_keystore_secret_t *s = NULL;
    em_error_t err;
    assert_int_equal(em_keystore_secret_passphrase(p, strlen(p), &s, &err), EM_OK);
    assert_int_equal(em_keystore_secret_set_cost(s, 14), EM_OK);
    return s;
}

static void seal(const em_keystore_secret_t *s, const void *data, size_t len, unsigned char **out,
                 size_t *out_len)
{
    em_error_t err;
    assert_int_equal(em_keystore_seal(s, data, len, out, out_len, &err), EM_OK);
    assert_int_equal(*out_len, len + 76);
}

static em_err_t open_rc(const em_keystore_secret_t *s, const unsigned char *file, size_t len,
                        em_error_t *err)
{
    unsigned char *out = (unsigned char *)"sentinel";
    size_t out_len = 99;
    em_err_t rc = em_keystore_open(s, file, len, &out, &out_len, err);
    if (rc == EM_OK) {
        em_keystore_data_free(out, out_len);
    } else {
        assert_null(out);
        assert_int_equal(out_len, 0);
    }
    return rc;
}

static void assert_mode_0600(const char *path)
{
    struct stat st;
    assert_int_equal(stat(path, &st), 0);
    assert_int_equal(st.st_mode & 0777, 0600);
}

/* opener opens what sealer sealed. */
static void assert_opens_what_was_sealed(const em_keystore_secret_t *sealer,
                                         const em_keystore_secret_t *opener)
{
    unsigned char *file = NULL;
    size_t len = 0;
    em_error_t err;
    seal(sealer, "data", 4, &file, &len);
    assert_int_equal(open_rc(opener, file, len, &err), EM_OK);
    free(file);
}

static void fill(unsigned char *p, size_t len, unsigned seed)
{
    for (size_t i = 0; i < len; i++)
        p[i] = (unsigned char)(i * 131 + seed * 7 + (i >> 8));
}

/* ---- passphrases ----------------------------------------------------------- */

static void test_passphrase_of_11_characters_is_refused(void **state)
{
    (void)state;
    em_keystore_secret_t *s = (em_keystore_secret_t *)&s;
    em_error_t err;
    assert_int_equal(em_keystore_secret_passphrase("abcdefghijk", 11, &s, &err), EM_ERR_VALIDATION);
    assert_null(s);
    assert_string_equal(err.field, "passphrase");
    assert_int_equal(em_keystore_secret_passphrase("", 0, &s, &err), EM_ERR_VALIDATION);
}

static void test_passphrase_length_counts_characters_not_bytes(void **state)
{
    (void)state;
    em_keystore_secret_t *s = NULL;
    em_error_t err;
    /* 11 two-byte letters: 22 bytes, still too short. */
    const char *eleven = "\xc3\xa9\xc3\xa8\xc3\xaa\xc3\xab\xc3\xa0\xc3\xa2\xc3\xa4\xc3\xb4\xc3\xb6"
                         "\xc3\xbb\xc3\xbc";
    assert_int_equal(em_keystore_secret_passphrase(eleven, strlen(eleven), &s, &err),
                     EM_ERR_VALIDATION);
    /* Twelve: enough. */
    const char *twelve = "\xc3\xa9\xc3\xa8\xc3\xaa\xc3\xab\xc3\xa0\xc3\xa2\xc3\xa4\xc3\xb4\xc3\xb6"
                         "\xc3\xbb\xc3\xbc\xc3\xa7";
    assert_int_equal(em_keystore_secret_passphrase(twelve, strlen(twelve), &s, &err), EM_OK);
    em_keystore_secret_free(s);
}

static void test_passphrase_longer_than_the_maximum_is_refused(void **state)
{
    (void)state;
    char big[EM_KEYSTORE_PASSPHRASE_MAX + 1];
    fill((unsigned char *)big, sizeof big, 1);
    for (size_t i = 0; i < sizeof big; i++)
        big[i] = (char)('a' + (unsigned char)big[i] % 26);
    em_keystore_secret_t *s = NULL;
    em_error_t err;
    assert_int_equal(em_keystore_secret_passphrase(big, sizeof big, &s, &err), EM_ERR_VALIDATION);
    assert_int_equal(em_keystore_secret_passphrase(big, sizeof big - 1, &s, &err), EM_OK);
    em_keystore_secret_free(s);
}

static void test_placeholder_passphrases_are_refused_without_repeating_them(void **state)
{
    (void)state;
    const char *bad[] = {"<your passphrase>", "${KEYSTORE_PASSPHRASE}", "xxxxxxxxxxxxxxx",
                         "your_password",     "   changeme   ",         "aaaaaaaaaaaaaaaa",
                         "password123\n\n"};
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        em_keystore_secret_t *s = NULL;
        em_error_t err;
        assert_int_equal(em_keystore_secret_passphrase(bad[i], strlen(bad[i]), &s, &err),
                         EM_ERR_VALIDATION);
        assert_null(s);
        assert_null(strstr(err.message, bad[i]));
    }
}

static void test_passphrase_with_a_nul_byte_is_refused(void **state)
{
    (void)state;
    em_keystore_secret_t *s = NULL;
    em_error_t err;
    assert_int_equal(em_keystore_secret_passphrase("correct horse\0battery", 21, &s, &err),
                     EM_ERR_VALIDATION);
}

static void test_passphrase_null_arguments_are_invalid(void **state)
{
    (void)state;
    em_keystore_secret_t *s = NULL;
    assert_int_equal(em_keystore_secret_passphrase(NULL, 5, &s, NULL), EM_ERR_INVALID_ARGUMENT);
    assert_int_equal(em_keystore_secret_passphrase(PASS, strlen(PASS), NULL, NULL),
                     EM_ERR_INVALID_ARGUMENT);
    assert_int_equal(em_keystore_secret_from_env(NULL, &s, NULL), EM_ERR_INVALID_ARGUMENT);
    assert_int_equal(em_keystore_secret_from_file(NULL, &s, NULL), EM_ERR_INVALID_ARGUMENT);
    assert_int_equal(em_keystore_secret_key_file(NULL, &s, NULL), EM_ERR_INVALID_ARGUMENT);
    em_keystore_secret_free(NULL);
}

static void test_set_cost_outside_the_limits_is_refused(void **state)
{
    fx_t *f = *state;
    assert_int_equal(em_keystore_secret_set_cost(f->pass, EM_KEYSTORE_LOG2N_MIN - 1),
                     EM_ERR_INVALID_ARGUMENT);
    assert_int_equal(em_keystore_secret_set_cost(f->pass, EM_KEYSTORE_LOG2N_MAX + 1),
                     EM_ERR_INVALID_ARGUMENT);
    assert_int_equal(em_keystore_secret_set_cost(NULL, 14), EM_ERR_INVALID_ARGUMENT);
    assert_int_equal(em_keystore_secret_set_cost(f->pass, EM_KEYSTORE_LOG2N_MAX), EM_OK);
    assert_int_equal(em_keystore_secret_set_cost(f->pass, 14), EM_OK);
}

static void test_default_cost_is_written_in_the_header(void **state)
{
    (void)state;
    em_keystore_secret_t *s = NULL;
    assert_int_equal(em_keystore_secret_passphrase(PASS, strlen(PASS), &s, NULL), EM_OK);
    unsigned char *file = NULL;
    size_t len = 0;
    seal(s, "x", 1, &file, &len);
    assert_int_equal(file[6], EM_KEYSTORE_LOG2N_DEFAULT);
    free(file);
    em_keystore_secret_free(s);
}

/* ---- secret sources ----------------------------------------------------- */

static void test_secret_from_env_opens_what_the_same_passphrase_sealed(void **state)
{
    fx_t *f = *state;
    assert_int_equal(setenv("EMIOT_TEST_KS_PASS", PASS, 1), 0);
    em_keystore_secret_t *s = NULL;
    em_error_t err;
    assert_int_equal(em_keystore_secret_from_env("EMIOT_TEST_KS_PASS", &s, &err), EM_OK);
    assert_opens_what_was_sealed(f->pass, s);
    em_keystore_secret_free(s);
    unsetenv("EMIOT_TEST_KS_PASS");
}

static void test_secret_from_an_unset_variable_is_a_configuration_error(void **state)
{
    (void)state;
    unsetenv("EMIOT_TEST_KS_UNSET");
    em_keystore_secret_t *s = NULL;
    em_error_t err;
    assert_int_equal(em_keystore_secret_from_env("EMIOT_TEST_KS_UNSET", &s, &err),
                     EM_ERR_CONFIGURATION);
    assert_null(s);
    assert_int_equal(setenv("EMIOT_TEST_KS_SHORT", "short", 1), 0);
    assert_int_equal(em_keystore_secret_from_env("EMIOT_TEST_KS_SHORT", &s, &err),
                     EM_ERR_VALIDATION);
    unsetenv("EMIOT_TEST_KS_SHORT");
}

static void test_secret_from_file_uses_the_first_line_without_crlf(void **state)
{
    fx_t *f = *state;
    char path[400];
    path_in(f, "pass", path, sizeof path);
    const char text[] = PASS "\r\nsecond line is ignored\n";
    write_file(path, text, sizeof text - 1, 0600);
    em_keystore_secret_t *s = NULL;
    em_error_t err;
    assert_int_equal(em_keystore_secret_from_file(path, &s, &err), EM_OK);
    assert_opens_what_was_sealed(f->pass, s);
    em_keystore_secret_free(s);
}

static void test_secret_file_readable_by_others_is_refused(void **state)
{
    fx_t *f = *state;
    char path[400];
    path_in(f, "pass", path, sizeof path);
    write_file(path, PASS "\n", strlen(PASS) + 1, 0640);
    em_keystore_secret_t *s = NULL;
    em_error_t err;
    assert_int_equal(em_keystore_secret_from_file(path, &s, &err), EM_ERR_CONFIGURATION);
    assert_null(s);
    assert_null(strstr(err.message, PASS));
}

static void test_secret_from_a_missing_file_is_a_configuration_error(void **state)
{
    fx_t *f = *state;
    char path[400];
    path_in(f, "nope", path, sizeof path);
    em_keystore_secret_t *s = NULL;
    em_error_t err;
    assert_int_equal(em_keystore_secret_from_file(path, &s, &err), EM_ERR_CONFIGURATION);
    assert_int_equal(em_keystore_secret_key_file(path, &s, &err), EM_ERR_CONFIGURATION);
}

static void test_secret_file_with_a_short_first_line_is_refused(void **state)
{
    fx_t *f = *state;
    char path[400];
    path_in(f, "pass", path, sizeof path);
    write_file(path, "\n" PASS "\n", strlen(PASS) + 2, 0600);
    em_keystore_secret_t *s = NULL;
    em_error_t err;
    assert_int_equal(em_keystore_secret_from_file(path, &s, &err), EM_ERR_VALIDATION);
}

/* ---- key files ------------------------------------------------------------- */

static void test_key_file_is_created_with_64_hex_digits_and_mode_0600(void **state)
{
    fx_t *f = *state;
    struct stat st;
    assert_int_equal(stat(f->keyfile, &st), 0);
    assert_int_equal(st.st_mode & 0777, 0600);
    assert_int_equal(st.st_size, 65);
    char buf[80] = {0};
    FILE *fp = fopen(f->keyfile, "r");
    assert_non_null(fp);
    assert_int_equal(fread(buf, 1, sizeof buf - 1, fp), 65);
    fclose(fp);
    for (int i = 0; i < 64; i++)
        assert_non_null(strchr("0123456789abcdef", buf[i]));
    assert_int_equal(buf[64], '\n');
}

static void test_key_file_creation_never_replaces_a_file(void **state)
{
    fx_t *f = *state;
    em_error_t err;
    assert_int_equal(em_keystore_key_file_create(f->keyfile, &err), EM_ERR_EXISTS);
    /* The existing key still opens what it sealed. */
    em_keystore_secret_t *again = NULL;
    assert_int_equal(em_keystore_secret_key_file(f->keyfile, &again, &err), EM_OK);
    assert_opens_what_was_sealed(f->key, again);
    em_keystore_secret_free(again);
}

static void test_key_file_creation_in_a_missing_directory_is_an_io_error(void **state)
{
    fx_t *f = *state;
    char path[400];
    path_in(f, "no/such/dir/key", path, sizeof path);
    em_error_t err;
    assert_int_equal(em_keystore_key_file_create(path, &err), EM_ERR_IO);
}

static void test_key_file_readable_by_others_is_refused(void **state)
{
    fx_t *f = *state;
    assert_int_equal(chmod(f->keyfile, 0644), 0);
    em_keystore_secret_t *s = NULL;
    em_error_t err;
    assert_int_equal(em_keystore_secret_key_file(f->keyfile, &s, &err), EM_ERR_CONFIGURATION);
    assert_null(s);
    assert_string_equal(err.field, "key_file");
}

static void test_key_file_that_is_not_64_hex_digits_is_refused(void **state)
{
    fx_t *f = *state;
    char path[400];
    path_in(f, "bad.key", path, sizeof path);
    const char *hex64 = "00112233445566778899aabbccddeeff00112233445566778899aabbccddeeff";
    char buf[200];
    const char *bad[] = {"63", "65", "g", "twolines", "space", "empty"};
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        if (strcmp(bad[i], "63") == 0)
            snprintf(buf, sizeof buf, "%.63s\n", hex64);
        else if (strcmp(bad[i], "65") == 0)
            snprintf(buf, sizeof buf, "%s0\n", hex64);
        else if (strcmp(bad[i], "g") == 0)
            snprintf(buf, sizeof buf, "g%.63s\n", hex64);
        else if (strcmp(bad[i], "twolines") == 0)
            snprintf(buf, sizeof buf, "%s\n\n", hex64);
        else if (strcmp(bad[i], "space") == 0)
            snprintf(buf, sizeof buf, " %s", hex64);
        else
            buf[0] = '\0';
        write_file(path, buf, strlen(buf), 0600);
        em_keystore_secret_t *s = NULL;
        em_error_t err;
        assert_int_equal(em_keystore_secret_key_file(path, &s, &err), EM_ERR_CONFIGURATION);
        assert_null(s);
    }
}

static void test_key_file_with_crlf_or_no_newline_is_accepted(void **state)
{
    fx_t *f = *state;
    char path[400];
    path_in(f, "crlf.key", path, sizeof path);
    const char *forms[] = {"00112233445566778899AABBCCDDEEFF00112233445566778899aabbccddeeff\r\n",
                           "00112233445566778899aabbccddeeff00112233445566778899aabbccddeeff"};
    for (size_t i = 0; i < 2; i++) {
        write_file(path, forms[i], strlen(forms[i]), 0400);
        em_keystore_secret_t *s = NULL;
        em_error_t err;
        assert_int_equal(em_keystore_secret_key_file(path, &s, &err), EM_OK);
        em_keystore_secret_free(s);
        assert_int_equal(unlink(path), 0);
    }
}

/* ---- sealing and opening ---------------------------------------------- */

static void round_trip(const em_keystore_secret_t *s, size_t len)
{
    unsigned char *data = malloc(len);
    assert_non_null(data);
    fill(data, len, (unsigned)len);
    unsigned char *file = NULL;
    size_t flen = 0;
    seal(s, data, len, &file, &flen);
    unsigned char *out = NULL;
    size_t out_len = 0;
    em_error_t err;
    assert_int_equal(em_keystore_open(s, file, flen, &out, &out_len, &err), EM_OK);
    assert_int_equal(out_len, len);
    assert_memory_equal(out, data, len);
    assert_int_equal(out[len], '\0');
    em_keystore_data_free(out, out_len);
    free(file);
    free(data);
}

static void test_round_trip_with_a_passphrase(void **state)
{
    fx_t *f = *state;
    const size_t sizes[] = {1, 2, 16, 17, 241, 4096, EM_KEYSTORE_DATA_MAX};
    for (size_t i = 0; i < sizeof sizes / sizeof sizes[0]; i++)
        round_trip(f->pass, sizes[i]);
}

static void test_round_trip_with_a_key_file_at_every_size(void **state)
{
    fx_t *f = *state;
    for (size_t len = 1; len <= 1100; len++)
        round_trip(f->key, len);
    for (size_t len = 2048; len < EM_KEYSTORE_DATA_MAX; len = len * 3 / 2 + 1)
        round_trip(f->key, len);
    round_trip(f->key, EM_KEYSTORE_DATA_MAX - 1);
    round_trip(f->key, EM_KEYSTORE_DATA_MAX);
}

static void test_seal_refuses_empty_and_oversized_data(void **state)
{
    fx_t *f = *state;
    unsigned char *file = NULL;
    size_t flen = 0;
    em_error_t err;
    assert_int_equal(em_keystore_seal(f->key, "x", 0, &file, &flen, &err), EM_ERR_INVALID_ARGUMENT);
    unsigned char *big = calloc(1, EM_KEYSTORE_DATA_MAX + 1);
    assert_non_null(big);
    assert_int_equal(em_keystore_seal(f->key, big, EM_KEYSTORE_DATA_MAX + 1, &file, &flen, &err),
                     EM_ERR_LIMIT);
    assert_null(file);
    free(big);
    assert_int_equal(em_keystore_seal(NULL, "x", 1, &file, &flen, &err), EM_ERR_INVALID_ARGUMENT);
    assert_int_equal(em_keystore_seal(f->key, NULL, 1, &file, &flen, &err),
                     EM_ERR_INVALID_ARGUMENT);
}

static void test_sealed_header_follows_the_documented_layout(void **state)
{
    fx_t *f = *state;
    unsigned char *file = NULL;
    size_t len = 0;
    seal(f->pass, "0123456789", 10, &file, &len);
    assert_memory_equal(file, "EMKS", 4);
    assert_int_equal(file[4], 1);
    assert_int_equal(file[5], 1);
    assert_int_equal(file[6], 14);
    assert_int_equal(file[7], 8);
    assert_int_equal(file[8], 1);
    assert_int_equal(file[9] | file[10] | file[11], 0);
    assert_int_equal(file[56], 0);
    assert_int_equal(file[57], 0);
    assert_int_equal(file[58], 0);
    assert_int_equal(file[59], 10);
    assert_int_equal(len, 60 + 10 + 16);
    assert_null(memmem(file, len, "0123456789", 10));
    assert_true(em_keystore_is_sealed(file, len));
    free(file);
    seal(f->key, "0123456789", 10, &file, &len);
    assert_int_equal(file[5], 2);
    assert_int_equal(file[6] | file[7] | file[8], 0);
    free(file);
}

static void test_sealing_twice_gives_different_salts_and_nonces(void **state)
{
    fx_t *f = *state;
    unsigned char *a = NULL, *b = NULL;
    size_t alen = 0, blen = 0;
    seal(f->key, "same", 4, &a, &alen);
    seal(f->key, "same", 4, &b, &blen);
    assert_int_equal(alen, blen);
    assert_memory_not_equal(a + 12, b + 12, 16);
    assert_memory_not_equal(a + 28, b + 28, 12);
    assert_memory_not_equal(a + 60, b + 60, 4);
    free(a);
    free(b);
}

static void test_wrong_passphrase_is_reported_as_such(void **state)
{
    fx_t *f = *state;
    unsigned char *file = NULL;
    size_t len = 0;
    seal(f->pass, "secret", 6, &file, &len);
    em_keystore_secret_t *other = passphrase(OTHERPASS);
    em_error_t err;
    assert_int_equal(open_rc(other, file, len, &err), EM_ERR_CRYPTO);
    assert_string_equal(err.message, "wrong passphrase or key file");
    em_keystore_secret_free(other);
    free(file);
}

static void test_wrong_key_file_is_reported_as_such(void **state)
{
    fx_t *f = *state;
    char path[400];
    path_in(f, "other.key", path, sizeof path);
    em_error_t err;
    assert_int_equal(em_keystore_key_file_create(path, &err), EM_OK);
    em_keystore_secret_t *other = NULL;
    assert_int_equal(em_keystore_secret_key_file(path, &other, &err), EM_OK);
    unsigned char *file = NULL;
    size_t len = 0;
    seal(f->key, "secret", 6, &file, &len);
    assert_int_equal(open_rc(other, file, len, &err), EM_ERR_CRYPTO);
    assert_string_equal(err.message, "wrong passphrase or key file");
    em_keystore_secret_free(other);
    free(file);
}

static void test_modified_ciphertext_is_reported_as_tampering(void **state)
{
    fx_t *f = *state;
    unsigned char *file = NULL;
    size_t len = 0;
    seal(f->pass, "secret", 6, &file, &len);
    file[62] ^= 0x01;
    em_error_t err;
    assert_int_equal(open_rc(f->pass, file, len, &err), EM_ERR_CRYPTO);
    assert_string_equal(err.message, "the keystore was modified (authentication failed)");
    file[62] ^= 0x01;
    file[len - 1] ^= 0x80; /* the tag */
    assert_int_equal(open_rc(f->pass, file, len, &err), EM_ERR_CRYPTO);
    assert_string_equal(err.message, "the keystore was modified (authentication failed)");
    file[len - 1] ^= 0x80;
    assert_int_equal(open_rc(f->pass, file, len, &err), EM_OK);
    free(file);
}

/* A damaged file is refused with one of the documented codes: the version
 * byte turned into a newer version is a configuration matter, any other
 * damage is a format error or a failed cryptographic check. */
static void assert_damage_detected(em_err_t rc, size_t pos)
{
    if (pos == 4 && rc == EM_ERR_CONFIGURATION)
        return;
    if (rc != EM_ERR_CRYPTO && rc != EM_ERR_MESSAGE_FORMAT)
        fail_msg("byte %zu: %s", pos, em_err_name(rc));
}

static void test_every_flipped_bit_of_a_key_file_keystore_is_detected(void **state)
{
    fx_t *f = *state;
    unsigned char *file = NULL;
    size_t len = 0;
    seal(f->key, "a small secret", 14, &file, &len);
    for (size_t pos = 0; pos < len; pos++) {
        for (int bit = 0; bit < 8; bit++) {
            file[pos] ^= (unsigned char)(1u << bit);
            em_error_t err;
            assert_damage_detected(open_rc(f->key, file, len, &err), pos);
            file[pos] ^= (unsigned char)(1u << bit);
        }
    }
    em_error_t err;
    assert_int_equal(open_rc(f->key, file, len, &err), EM_OK);
    free(file);
}

static void test_every_flipped_byte_of_a_passphrase_keystore_is_detected(void **state)
{
    fx_t *f = *state;
    unsigned char *file = NULL;
    size_t len = 0;
    seal(f->pass, "tiny", 4, &file, &len);
    for (size_t pos = 0; pos < len; pos++) {
        file[pos] ^= 0xFF;
        em_error_t err;
        assert_damage_detected(open_rc(f->pass, file, len, &err), pos);
        file[pos] ^= 0xFF;
    }
    free(file);
}

static void test_truncation_at_every_length_is_a_format_error(void **state)
{
    fx_t *f = *state;
    unsigned char *file = NULL;
    size_t len = 0;
    seal(f->key, "a small secret", 14, &file, &len);
    for (size_t cut = 0; cut < len; cut++) {
        /* A copy of exactly cut bytes, so that ASan sees any read past it. */
        unsigned char *part = malloc(cut > 0 ? cut : 1);
        assert_non_null(part);
        memcpy(part, file, cut);
        em_error_t err;
        assert_int_equal(open_rc(f->key, part, cut, &err), EM_ERR_MESSAGE_FORMAT);
        free(part);
    }
    free(file);
}

static void test_an_extended_file_is_a_format_error(void **state)
{
    fx_t *f = *state;
    unsigned char *file = NULL;
    size_t len = 0;
    seal(f->key, "secret", 6, &file, &len);
    unsigned char *longer = malloc(len + 1);
    assert_non_null(longer);
    memcpy(longer, file, len);
    longer[len] = 0;
    em_error_t err;
    assert_int_equal(open_rc(f->key, longer, len + 1, &err), EM_ERR_MESSAGE_FORMAT);
    free(longer);
    free(file);
}

static void test_a_version_2_header_is_a_configuration_error(void **state)
{
    fx_t *f = *state;
    unsigned char *file = NULL;
    size_t len = 0;
    seal(f->key, "secret", 6, &file, &len);
    file[4] = 2;
    em_error_t err;
    assert_int_equal(open_rc(f->key, file, len, &err), EM_ERR_CONFIGURATION);
    assert_non_null(strstr(err.message, "newer"));
    /* Even a version 2 file too short for version 1's header. */
    assert_int_equal(open_rc(f->key, file, 5, &err), EM_ERR_CONFIGURATION);
    file[4] = 0;
    assert_int_equal(open_rc(f->key, file, len, &err), EM_ERR_MESSAGE_FORMAT);
    free(file);
}

static void test_a_cost_outside_the_limits_is_a_format_error(void **state)
{
    fx_t *f = *state;
    unsigned char *file = NULL;
    size_t len = 0;
    seal(f->pass, "secret", 6, &file, &len);
    const unsigned char costs[] = {0, 13, 21, 40, 255};
    for (size_t i = 0; i < sizeof costs; i++) {
        file[6] = costs[i];
        em_error_t err;
        assert_int_equal(open_rc(f->pass, file, len, &err), EM_ERR_MESSAGE_FORMAT);
    }
    file[6] = 14;
    file[7] = 16; /* r */
    em_error_t err;
    assert_int_equal(open_rc(f->pass, file, len, &err), EM_ERR_MESSAGE_FORMAT);
    free(file);
}

static void test_a_passphrase_for_a_key_file_keystore_is_a_configuration_error(void **state)
{
    fx_t *f = *state;
    unsigned char *file = NULL;
    size_t len = 0;
    em_error_t err;
    seal(f->key, "secret", 6, &file, &len);
    assert_int_equal(open_rc(f->pass, file, len, &err), EM_ERR_CONFIGURATION);
    free(file);
    seal(f->pass, "secret", 6, &file, &len);
    assert_int_equal(open_rc(f->key, file, len, &err), EM_ERR_CONFIGURATION);
    free(file);
}

static void test_something_else_is_not_a_keystore(void **state)
{
    fx_t *f = *state;
    const char *pem =
        "-----BEGIN PRIVATE KEY-----\nMIGHAgEAMBMGByqGSM49AgEGCCqGSM49AwEHBG0wawIBAQQg\n";
    em_error_t err;
    assert_false(em_keystore_is_sealed(pem, strlen(pem)));
    assert_false(em_keystore_is_sealed("EMK", 3));
    assert_false(em_keystore_is_sealed(NULL, 10));
    assert_int_equal(open_rc(f->key, (const unsigned char *)pem, strlen(pem), &err),
                     EM_ERR_MESSAGE_FORMAT);
    assert_string_equal(err.message, "keystore: not an emiot keystore");
    unsigned char *out = NULL;
    size_t out_len = 0;
    assert_int_equal(em_keystore_open(NULL, pem, 10, &out, &out_len, &err),
                     EM_ERR_INVALID_ARGUMENT);
    assert_int_equal(em_keystore_open(f->key, NULL, 10, &out, &out_len, &err),
                     EM_ERR_INVALID_ARGUMENT);
    em_keystore_data_free(NULL, 5);
}

/* ---- files ----------------------------------------------------------------- */

static void test_written_file_is_mode_0600_whatever_the_umask(void **state)
{
    fx_t *f = *state;
    char path[400];
    path_in(f, "data.ks", path, sizeof path);
    write_file(path, "old", 3, 0644);
    mode_t old = umask(0);
    em_error_t err;
    em_err_t rc = em_keystore_write_file(path, f->key, "new secret", 10, &err);
    umask(old);
    assert_int_equal(rc, EM_OK);
    assert_mode_0600(path);
    unsigned char *out = NULL;
    size_t out_len = 0;
    assert_int_equal(em_keystore_read_file(path, f->key, &out, &out_len, &err), EM_OK);
    assert_int_equal(out_len, 10);
    assert_memory_equal(out, "new secret", 10);
    em_keystore_data_free(out, out_len);
}

static void test_written_file_leaves_no_temporary_file_behind(void **state)
{
    fx_t *f = *state;
    char path[400];
    path_in(f, "data.ks", path, sizeof path);
    em_error_t err;
    for (int i = 0; i < 3; i++)
        assert_int_equal(em_keystore_write_file(path, f->key, "x", 1, &err), EM_OK);
    char cmd[600];
    snprintf(cmd, sizeof cmd, "test $(ls -A '%s' | wc -l) -eq 2", f->dir); /* key + data */
    assert_int_equal(system(cmd), 0);
}

static void test_reading_a_missing_file_is_not_found(void **state)
{
    fx_t *f = *state;
    char path[400];
    path_in(f, "missing.ks", path, sizeof path);
    unsigned char *out = NULL;
    size_t out_len = 0;
    em_error_t err;
    assert_int_equal(em_keystore_read_file(path, f->key, &out, &out_len, &err), EM_ERR_NOT_FOUND);
}

static void test_reading_a_directory_is_an_io_error(void **state)
{
    fx_t *f = *state;
    unsigned char *out = NULL;
    size_t out_len = 0;
    em_error_t err;
    assert_int_equal(em_keystore_read_file(f->dir, f->key, &out, &out_len, &err), EM_ERR_IO);
}

static void test_reading_a_file_larger_than_the_maximum_is_refused(void **state)
{
    fx_t *f = *state;
    char path[400];
    path_in(f, "big.ks", path, sizeof path);
    unsigned char *big = calloc(1, EM_KEYSTORE_FILE_MAX + 1);
    assert_non_null(big);
    memcpy(big, "EMKS", 4);
    write_file(path, big, EM_KEYSTORE_FILE_MAX + 1, 0600);
    free(big);
    unsigned char *out = NULL;
    size_t out_len = 0;
    em_error_t err;
    assert_int_equal(em_keystore_read_file(path, f->key, &out, &out_len, &err),
                     EM_ERR_MESSAGE_FORMAT);
}

static void test_writing_into_a_missing_directory_is_an_io_error(void **state)
{
    fx_t *f = *state;
    char path[400];
    path_in(f, "none/data.ks", path, sizeof path);
    em_error_t err;
    assert_int_equal(em_keystore_write_file(path, f->key, "x", 1, &err), EM_ERR_IO);
}

/* ---- private keys ---------------------------------------------------------- */

static void sign_and_verify(EVP_PKEY *signer, EVP_PKEY *verifier)
{
    static const unsigned char msg[] = "emiot-device-auth-v1\ndev-1\nnonce";
    unsigned char sig[256];
    size_t siglen = sizeof sig;
    EVP_MD_CTX *ctx = EVP_MD_CTX_new();
    assert_non_null(ctx);
    assert_int_equal(EVP_DigestSignInit(ctx, NULL, EVP_sha256(), NULL, signer), 1);
    assert_int_equal(EVP_DigestSign(ctx, sig, &siglen, msg, sizeof msg - 1), 1);
    EVP_MD_CTX_free(ctx);
    ctx = EVP_MD_CTX_new();
    assert_non_null(ctx);
    assert_int_equal(EVP_DigestVerifyInit(ctx, NULL, EVP_sha256(), NULL, verifier), 1);
    assert_int_equal(EVP_DigestVerify(ctx, sig, siglen, msg, sizeof msg - 1), 1);
    EVP_MD_CTX_free(ctx);
}

static void test_saved_key_loads_back_and_signs(void **state)
{
    fx_t *f = *state;
    char path[400];
    path_in(f, "ca.key", path, sizeof path);
    EVP_PKEY *key = NULL;
    em_error_t err;
    assert_int_equal(em_key_generate_p256(&key, &err), EM_OK);
    assert_int_equal(em_key_save(path, key, f->pass, &err), EM_OK);
    assert_mode_0600(path);
    EVP_PKEY *loaded = NULL;
    assert_int_equal(em_key_load(path, f->pass, NULL, false, &loaded, &err), EM_OK);
    assert_int_equal(EVP_PKEY_eq(key, loaded), 1);
    sign_and_verify(loaded, key);
    EVP_PKEY_free(loaded);
    EVP_PKEY_free(key);
}

static void test_saved_key_file_holds_no_plain_pem(void **state)
{
    fx_t *f = *state;
    char path[400];
    path_in(f, "ca.key", path, sizeof path);
    EVP_PKEY *key = NULL;
    em_error_t err;
    assert_int_equal(em_key_generate_p256(&key, &err), EM_OK);
    assert_int_equal(em_key_save(path, key, f->key, &err), EM_OK);
    EVP_PKEY_free(key);
    char buf[1024];
    FILE *fp = fopen(path, "rb");
    assert_non_null(fp);
    size_t n = fread(buf, 1, sizeof buf, fp);
    fclose(fp);
    assert_true(em_keystore_is_sealed(buf, n));
    assert_null(memmem(buf, n, "PRIVATE KEY", 11));
}

static void test_a_keystore_key_without_a_secret_is_a_configuration_error(void **state)
{
    fx_t *f = *state;
    char path[400];
    path_in(f, "ca.key", path, sizeof path);
    EVP_PKEY *key = NULL;
    em_error_t err;
    assert_int_equal(em_key_generate_p256(&key, &err), EM_OK);
    assert_int_equal(em_key_save(path, key, f->key, &err), EM_OK);
    EVP_PKEY_free(key);
    EVP_PKEY *loaded = NULL;
    assert_int_equal(em_key_load(path, NULL, NULL, true, &loaded, &err), EM_ERR_CONFIGURATION);
    assert_null(loaded);
    assert_int_equal(em_key_load(path, f->pass, NULL, false, &loaded, &err), EM_ERR_CONFIGURATION);
}

static void test_a_keystore_key_with_the_wrong_passphrase_is_a_crypto_error(void **state)
{
    fx_t *f = *state;
    char path[400];
    path_in(f, "ca.key", path, sizeof path);
    EVP_PKEY *key = NULL;
    em_error_t err;
    assert_int_equal(em_key_generate_p256(&key, &err), EM_OK);
    assert_int_equal(em_key_save(path, key, f->pass, &err), EM_OK);
    EVP_PKEY_free(key);
    em_keystore_secret_t *other = passphrase(OTHERPASS);
    EVP_PKEY *loaded = NULL;
    assert_int_equal(em_key_load(path, other, NULL, false, &loaded, &err), EM_ERR_CRYPTO);
    assert_null(loaded);
    em_keystore_secret_free(other);
}

static void write_plain_key(const char *path, mode_t mode, EVP_PKEY **key_out)
{
    EVP_PKEY *key = NULL;
    assert_int_equal(em_key_generate_p256(&key, NULL), EM_OK);
    FILE *fp = fopen(path, "w");
    assert_non_null(fp);
    assert_int_equal(PEM_write_PrivateKey(fp, key, NULL, NULL, 0, NULL, NULL), 1);
    fclose(fp);
    assert_int_equal(chmod(path, mode), 0);
    if (key_out != NULL)
        *key_out = key;
    else
        EVP_PKEY_free(key);
}

static void test_a_plain_pem_key_is_refused_unless_allowed(void **state)
{
    fx_t *f = *state;
    char path[400];
    path_in(f, "plain.pem", path, sizeof path);
    EVP_PKEY *key = NULL;
    write_plain_key(path, 0600, &key);
    EVP_PKEY *loaded = NULL;
    em_error_t err;
    assert_int_equal(em_key_load(path, f->pass, NULL, false, &loaded, &err), EM_ERR_CONFIGURATION);
    assert_null(loaded);
    assert_int_equal(em_key_load(path, NULL, NULL, true, &loaded, &err), EM_OK);
    assert_int_equal(EVP_PKEY_eq(key, loaded), 1);
    EVP_PKEY_free(loaded);
    EVP_PKEY_free(key);
}

static void test_a_plain_pem_key_readable_by_others_is_refused_even_when_allowed(void **state)
{
    fx_t *f = *state;
    char path[400];
    path_in(f, "plain.pem", path, sizeof path);
    write_plain_key(path, 0640, NULL);
    EVP_PKEY *loaded = NULL;
    em_error_t err;
    assert_int_equal(em_key_load(path, NULL, NULL, true, &loaded, &err), EM_ERR_CONFIGURATION);
    assert_null(loaded);
}

static void test_a_password_protected_pem_is_refused_without_a_prompt(void **state)
{
    fx_t *f = *state;
    char path[400];
    path_in(f, "enc.pem", path, sizeof path);
    EVP_PKEY *key = NULL;
    assert_int_equal(em_key_generate_p256(&key, NULL), EM_OK);
    FILE *fp = fopen(path, "w");
    assert_non_null(fp);
    assert_int_equal(PEM_write_PKCS8PrivateKey(fp, key, EVP_aes_256_cbc(), NULL, 0, NULL,
                                               (void *)"pem password here"),
                     1);
    fclose(fp);
    EVP_PKEY_free(key);
    assert_int_equal(chmod(path, 0600), 0);
    EVP_PKEY *loaded = NULL;
    em_error_t err;
    assert_int_equal(em_key_load(path, NULL, NULL, true, &loaded, &err), EM_ERR_MESSAGE_FORMAT);
    assert_null(loaded);
}

static void test_a_keystore_that_holds_no_key_is_a_format_error(void **state)
{
    fx_t *f = *state;
    char path[400];
    path_in(f, "notakey.ks", path, sizeof path);
    em_error_t err;
    assert_int_equal(em_keystore_write_file(path, f->key, "hello", 5, &err), EM_OK);
    EVP_PKEY *loaded = NULL;
    assert_int_equal(em_key_load(path, f->key, NULL, false, &loaded, &err), EM_ERR_MESSAGE_FORMAT);
    assert_null(loaded);
}

static void test_loading_a_missing_key_is_not_found(void **state)
{
    fx_t *f = *state;
    char path[400];
    path_in(f, "missing.key", path, sizeof path);
    EVP_PKEY *loaded = NULL;
    em_error_t err;
    assert_int_equal(em_key_load(path, f->key, NULL, false, &loaded, &err), EM_ERR_NOT_FOUND);
    assert_int_equal(em_key_load(NULL, f->key, NULL, false, &loaded, &err),
                     EM_ERR_INVALID_ARGUMENT);
}

static void test_a_pkcs11_uri_without_an_hsm_is_a_configuration_error(void **state)
{
    fx_t *f = *state;
    EVP_PKEY *loaded = NULL;
    em_error_t err;
    assert_int_equal(
        em_key_load("pkcs11:token=emiot;object=ca-key", f->key, NULL, false, &loaded, &err),
        EM_ERR_CONFIGURATION);
    assert_true(em_key_ref_is_pkcs11("pkcs11:object=x"));
    assert_false(em_key_ref_is_pkcs11("/etc/emiot/ca.key"));
    assert_false(em_key_ref_is_pkcs11("PKCS11:object=x"));
    assert_false(em_key_ref_is_pkcs11(NULL));
}

static void test_saving_a_public_key_is_refused(void **state)
{
    fx_t *f = *state;
    EVP_PKEY *key = NULL;
    assert_int_equal(em_key_generate_p256(&key, NULL), EM_OK);
    unsigned char *der = NULL;
    int len = i2d_PUBKEY(key, &der);
    assert_true(len > 0);
    const unsigned char *p = der;
    EVP_PKEY *pub = d2i_PUBKEY(NULL, &p, len);
    assert_non_null(pub);
    char path[400];
    path_in(f, "pub.ks", path, sizeof path);
    em_error_t err;
    assert_int_equal(em_key_save(path, pub, f->key, &err), EM_ERR_INVALID_ARGUMENT);
    assert_int_equal(access(path, F_OK), -1);
    OPENSSL_free(der);
    EVP_PKEY_free(pub);
    EVP_PKEY_free(key);
}

/* ---- emiotd's JWT key ------------------------------------------------------ */

static em_err_t jwt_init(em_api_t *api, const char *path, const em_keystore_secret_t *ks,
                         em_error_t *err)
{
    memset(api, 0, sizeof *api);
    em_api_options_init(&api->opts);
    api->opts.jwt_key_file = path;
    api->opts.keystore = ks;
    return em__api_auth_init(api, err);
}

static void jwt_token(em_api_t *api, char *tok, size_t size)
{
    em__api_identity_t who;
    memset(&who, 0, sizeof who);
    who.method = EM__AUTHN_API_KEY;
    who.role = EM_ROLE_OPERATOR;
    snprintf(who.name, sizeof who.name, "ops");
    snprintf(who.key_id, sizeof who.key_id, "k_0123456789ab");
    snprintf(who.actor, sizeof who.actor, "key:k_0123456789ab");
    int64_t exp = 0;
    assert_int_equal(em__api_jwt_issue(api, &who, 600, tok, size, &exp), EM_OK);
}

static bool file_is_sealed(const char *path)
{
    unsigned char buf[8];
    FILE *fp = fopen(path, "rb");
    assert_non_null(fp);
    size_t n = fread(buf, 1, sizeof buf, fp);
    fclose(fp);
    return em_keystore_is_sealed(buf, n);
}

static void test_jwt_key_is_created_sealed_and_reused(void **state)
{
    fx_t *f = *state;
    char path[400];
    path_in(f, "jwt.key", path, sizeof path);
    em_api_t a, b;
    em_error_t err;
    assert_int_equal(jwt_init(&a, path, f->key, &err), EM_OK);
    assert_true(file_is_sealed(path));
    assert_mode_0600(path);
    EVP_PKEY *k = NULL;
    assert_int_equal(em_key_load(path, f->key, NULL, false, &k, &err), EM_OK);
    EVP_PKEY_free(k);
    char tok[2048];
    jwt_token(&a, tok, sizeof tok);
    assert_int_equal(jwt_init(&b, path, f->key, &err), EM_OK);
    em__api_identity_t who;
    assert_null(em__api_jwt_verify(&b, tok, strlen(tok), em_now_ms(), &who));
    em__api_auth_cleanup(&a);
    em__api_auth_cleanup(&b);
}

static void test_jwt_plain_key_is_sealed_in_place(void **state)
{
    fx_t *f = *state;
    char path[400];
    path_in(f, "jwt.key", path, sizeof path);
    em_api_t a, b;
    em_error_t err;
    assert_int_equal(jwt_init(&a, path, NULL, &err), EM_OK);
    assert_false(file_is_sealed(path));
    char tok[2048];
    jwt_token(&a, tok, sizeof tok);
    assert_int_equal(jwt_init(&b, path, f->pass, &err), EM_OK);
    assert_true(file_is_sealed(path));
    assert_mode_0600(path);
    em__api_identity_t who;
    assert_null(em__api_jwt_verify(&b, tok, strlen(tok), em_now_ms(), &who));
    em__api_auth_cleanup(&a);
    em__api_auth_cleanup(&b);
}

static void test_jwt_sealed_key_without_a_keystore_is_refused(void **state)
{
    fx_t *f = *state;
    char path[400];
    path_in(f, "jwt.key", path, sizeof path);
    em_api_t a, b;
    em_error_t err;
    assert_int_equal(jwt_init(&a, path, f->key, &err), EM_OK);
    em__api_auth_cleanup(&a);
    assert_int_equal(jwt_init(&b, path, NULL, &err), EM_ERR_CONFIGURATION);
    assert_string_equal(err.field, "jwt_key_file");
    em__api_auth_cleanup(&b);
}

static void test_jwt_sealed_key_with_the_wrong_secret_is_refused(void **state)
{
    fx_t *f = *state;
    char path[400];
    path_in(f, "jwt.key", path, sizeof path);
    em_api_t a, b;
    em_error_t err;
    assert_int_equal(jwt_init(&a, path, f->pass, &err), EM_OK);
    em__api_auth_cleanup(&a);
    em_keystore_secret_t *other = passphrase(OTHERPASS);
    assert_int_equal(jwt_init(&b, path, other, &err), EM_ERR_CRYPTO);
    assert_string_equal(err.field, "jwt_key_file");
    em__api_auth_cleanup(&b);
    em_keystore_secret_free(other);
}

/* ---- allocation failures --------------------------------------------------- */

typedef em_err_t (*op_fn)(void *);

/* Runs op with the 1st, 2nd, ... allocation failing until it succeeds. Every
 * failing run must fail with one of the codes given and must not crash; when
 * check_live, it must also leave nothing allocated (OpenSSL keeps caches of
 * its own, so operations that reach it are checked for the codes only). */
static void exhaust(op_fn op, void *arg, bool check_live, const em_err_t *codes, size_t ncodes)
{
#if !ALLOC_HOOK
    (void)op;
    (void)arg;
    (void)check_live;
    (void)codes;
    (void)ncodes;
    skip();
#else
    assert_int_equal(op(arg), EM_OK);
    int refused_runs = 0;
    for (long n = 0; n < 100000; n++) {
        long before = live;
        long refused = failures;
        fail_countdown = n;
        em_err_t rc = op(arg);
        fail_countdown = -1;
        if (failures == refused) {
            assert_int_equal(rc, EM_OK);
            assert_true(refused_runs > 0);
            return;
        }
        refused_runs++;
        if (rc == EM_OK)
            continue; /* OpenSSL may absorb a failure (a cache it does without) */
        bool documented = false;
        for (size_t i = 0; i < ncodes; i++)
            documented = documented || rc == codes[i];
        if (!documented)
            fail_msg("allocation %ld: %s", n, em_err_name(rc));
        if (check_live)
            assert_int_equal(live, before);
    }
    fail_msg("operation kept allocating");
#endif
}

static em_err_t op_passphrase(void *arg)
{
    (void)arg;
    em_keystore_secret_t *s = NULL;
    em_err_t rc = em_keystore_secret_passphrase(PASS, strlen(PASS), &s, NULL);
    em_keystore_secret_free(s);
    return rc;
}

static em_err_t op_key_file(void *arg)
{
    fx_t *f = arg;
    em_keystore_secret_t *s = NULL;
    em_err_t rc = em_keystore_secret_key_file(f->keyfile, &s, NULL);
    em_keystore_secret_free(s);
    return rc;
}

static em_err_t op_seal_open(void *arg)
{
    fx_t *f = arg;
    unsigned char *file = NULL;
    size_t len = 0;
    em_err_t rc = em_keystore_seal(f->key, "a secret", 8, &file, &len, NULL);
    if (rc == EM_OK) {
        unsigned char *out = NULL;
        size_t out_len = 0;
        rc = em_keystore_open(f->key, file, len, &out, &out_len, NULL);
        em_keystore_data_free(out, out_len);
    }
    free(file);
    return rc;
}

/* Loading only: saving syncs to disk on every run, far too slow to repeat
 * for each allocation. */
static em_err_t op_key_load(void *arg)
{
    fx_t *f = arg;
    char path[400];
    snprintf(path, sizeof path, "%s/alloc.key", f->dir);
    EVP_PKEY *loaded = NULL;
    em_err_t rc = em_key_load(path, f->key, NULL, false, &loaded, NULL);
    EVP_PKEY_free(loaded);
    return rc;
}

static void test_passphrase_survives_every_allocation_failure(void **state)
{
    (void)state;
    const em_err_t codes[] = {EM_ERR_NOMEM};
    exhaust(op_passphrase, NULL, true, codes, 1);
}

static void test_key_file_secret_survives_every_allocation_failure(void **state)
{
    const em_err_t codes[] = {EM_ERR_NOMEM, EM_ERR_CONFIGURATION};
    exhaust(op_key_file, *state, true, codes, 2);
}

static void test_seal_and_open_survive_every_allocation_failure(void **state)
{
    const em_err_t codes[] = {EM_ERR_NOMEM, EM_ERR_INTERNAL};
    exhaust(op_seal_open, *state, false, codes, 2);
}

static void test_key_load_survives_every_allocation_failure(void **state)
{
    fx_t *f = *state;
    char path[400];
    path_in(f, "alloc.key", path, sizeof path);
    EVP_PKEY *key = NULL;
    assert_int_equal(em_key_generate_p256(&key, NULL), EM_OK);
    assert_int_equal(em_key_save(path, key, f->key, NULL), EM_OK);
    EVP_PKEY_free(key);
    /* A key that does not parse for want of memory reads as "not a key". */
    const em_err_t codes[] = {EM_ERR_NOMEM, EM_ERR_MESSAGE_FORMAT};
    exhaust(op_key_load, f, false, codes, 2);
}

#define T(name) cmocka_unit_test_setup_teardown(name, fx_setup, fx_teardown)

int main(void)
{
    em_log_set_level(EM_LOG_OFF);
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_passphrase_of_11_characters_is_refused),
        cmocka_unit_test(test_passphrase_length_counts_characters_not_bytes),
        cmocka_unit_test(test_passphrase_longer_than_the_maximum_is_refused),
        cmocka_unit_test(test_placeholder_passphrases_are_refused_without_repeating_them),
        cmocka_unit_test(test_passphrase_with_a_nul_byte_is_refused),
        cmocka_unit_test(test_passphrase_null_arguments_are_invalid),
        T(test_set_cost_outside_the_limits_is_refused),
        cmocka_unit_test(test_default_cost_is_written_in_the_header),
        T(test_secret_from_env_opens_what_the_same_passphrase_sealed),
        T(test_secret_from_an_unset_variable_is_a_configuration_error),
        T(test_secret_from_file_uses_the_first_line_without_crlf),
        T(test_secret_file_readable_by_others_is_refused),
        T(test_secret_from_a_missing_file_is_a_configuration_error),
        T(test_secret_file_with_a_short_first_line_is_refused),
        T(test_key_file_is_created_with_64_hex_digits_and_mode_0600),
        T(test_key_file_creation_never_replaces_a_file),
        T(test_key_file_creation_in_a_missing_directory_is_an_io_error),
        T(test_key_file_readable_by_others_is_refused),
        T(test_key_file_that_is_not_64_hex_digits_is_refused),
        T(test_key_file_with_crlf_or_no_newline_is_accepted),
        T(test_round_trip_with_a_passphrase),
        T(test_round_trip_with_a_key_file_at_every_size),
        T(test_seal_refuses_empty_and_oversized_data),
        T(test_sealed_header_follows_the_documented_layout),
        T(test_sealing_twice_gives_different_salts_and_nonces),
        T(test_wrong_passphrase_is_reported_as_such),
        T(test_wrong_key_file_is_reported_as_such),
        T(test_modified_ciphertext_is_reported_as_tampering),
        T(test_every_flipped_bit_of_a_key_file_keystore_is_detected),
        T(test_every_flipped_byte_of_a_passphrase_keystore_is_detected),
        T(test_truncation_at_every_length_is_a_format_error),
        T(test_an_extended_file_is_a_format_error),
        T(test_a_version_2_header_is_a_configuration_error),
        T(test_a_cost_outside_the_limits_is_a_format_error),
        T(test_a_passphrase_for_a_key_file_keystore_is_a_configuration_error),
        T(test_something_else_is_not_a_keystore),
        T(test_written_file_is_mode_0600_whatever_the_umask),
        T(test_written_file_leaves_no_temporary_file_behind),
        T(test_reading_a_missing_file_is_not_found),
        T(test_reading_a_directory_is_an_io_error),
        T(test_reading_a_file_larger_than_the_maximum_is_refused),
        T(test_writing_into_a_missing_directory_is_an_io_error),
        T(test_saved_key_loads_back_and_signs),
        T(test_saved_key_file_holds_no_plain_pem),
        T(test_a_keystore_key_without_a_secret_is_a_configuration_error),
        T(test_a_keystore_key_with_the_wrong_passphrase_is_a_crypto_error),
        T(test_a_plain_pem_key_is_refused_unless_allowed),
        T(test_a_plain_pem_key_readable_by_others_is_refused_even_when_allowed),
        T(test_a_password_protected_pem_is_refused_without_a_prompt),
        T(test_a_keystore_that_holds_no_key_is_a_format_error),
        T(test_loading_a_missing_key_is_not_found),
        T(test_a_pkcs11_uri_without_an_hsm_is_a_configuration_error),
        T(test_saving_a_public_key_is_refused),
        T(test_jwt_key_is_created_sealed_and_reused),
        T(test_jwt_plain_key_is_sealed_in_place),
        T(test_jwt_sealed_key_without_a_keystore_is_refused),
        T(test_jwt_sealed_key_with_the_wrong_secret_is_refused),
        cmocka_unit_test(test_passphrase_survives_every_allocation_failure),
        T(test_key_file_secret_survives_every_allocation_failure),
        T(test_seal_and_open_survive_every_allocation_failure),
        T(test_key_load_survives_every_allocation_failure),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
