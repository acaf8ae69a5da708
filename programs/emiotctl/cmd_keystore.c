/*
 * emiotctl - cmd_keystore.c: `emiotctl keystore ...`: sealed key files.
 *
 * A keystore file (keystore.h) holds one secret, usually a private key,
 * encrypted with AES-256-GCM under a passphrase or a key file. These commands
 * seal an existing file, open one back into a new 0600 file, re-seal one under
 * a new secret, make a key file, and check that a file opens. Nothing secret
 * is ever printed: the decrypted data only goes to the file named by --out.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <openssl/bio.h>
#include <openssl/evp.h>
#include <openssl/pem.h>

#include "ctl.h"

enum { O_IN = 1000, O_OUT, O_NEW_PASS_FILE, O_NEW_KEY_FILE };

typedef struct opts {
    ctl_secret_opts_t s;
    const char *in, *out;
    const char *new_pass_file, *new_key_file;
} opts_t;

static int on_opt(void *ud, int id, const char *arg)
{
    opts_t *o = ud;
    if (ctl_secret_opt(&o->s, id, arg))
        return 0;
    switch (id) {
    case O_IN:
        o->in = arg;
        return 0;
    case O_OUT:
        o->out = arg;
        return 0;
    case O_NEW_PASS_FILE:
        o->new_pass_file = arg;
        return 0;
    case O_NEW_KEY_FILE:
        o->new_key_file = arg;
        return 0;
    default:
        return CTL_USAGE;
    }
}

static const struct option ks_opts[] = {
    {"in", required_argument, NULL, O_IN},
    {"out", required_argument, NULL, O_OUT},
    {"passphrase-file", required_argument, NULL, CTL_SOPT_PASSPHRASE_FILE},
    {"keystore-key-file", required_argument, NULL, CTL_SOPT_KEY_FILE},
    {"new-passphrase-file", required_argument, NULL, O_NEW_PASS_FILE},
    {"new-keystore-key-file", required_argument, NULL, O_NEW_KEY_FILE},
    {NULL, 0, NULL, 0},
};

/* Parses and checks that the options the command needs are there. */
static int parse(ctl_t *c, const ctl_cmd_t *cmd, int argc, char **argv, opts_t *o, bool need_in,
                 bool need_out)
{
    memset(o, 0, sizeof *o);
    ctl_args_t a;
    int rc = ctl_parse(c, cmd, argc, argv, ks_opts, on_opt, o, &a);
    if (rc != 0)
        return rc;
    if ((need_in && o->in == NULL) || (need_out && o->out == NULL)) {
        ctl_err(NULL, "%s is required", need_in && o->in == NULL ? "--in F" : "--out F");
        fprintf(stderr, "usage: " PROGRAM " %s\n", cmd->usage);
        return CTL_USAGE;
    }
    if (need_in && need_out && strcmp(o->in, o->out) == 0) {
        ctl_err(NULL, "--in and --out must be different files");
        return CTL_USAGE;
    }
    return 0;
}

/* "a passphrase" / "a key file", for messages. */
static const char *secret_kind(const opts_t *o)
{
    return o->s.key_file != NULL ? "a key file" : "a passphrase";
}

static void print_result(const ctl_t *c, const char *action, const char *file, const char *text)
{
    if (c->quiet)
        return;
    if (c->format == CTL_OUT_JSON) {
        cJSON *j = cJSON_CreateObject();
        if (j != NULL && cJSON_AddStringToObject(j, "result", action) != NULL &&
            cJSON_AddStringToObject(j, "file", file) != NULL)
            ctl_print_json(j);
        cJSON_Delete(j);
        return;
    }
    ctl_put_safe(stdout, text);
    (void)fputc('\n', stdout);
}

/* Opens the keystore file --in with the passphrase or key file given; the
 * secret is freed before returning. *data: em_keystore_data_free. */
static int open_in(const opts_t *o, unsigned char **data, size_t *len)
{
    em_keystore_secret_t *s = NULL;
    int rc = ctl_secret_keystore(o->s.key_file, o->s.passphrase_file, CTL_ENV_PASSPHRASE, &s);
    if (rc != 0)
        return rc;
    em_error_t e;
    em_error_clear(&e);
    if (em_keystore_read_file(o->in, s, data, len, &e) != EM_OK)
        rc = ctl_em_fail(o->in, &e);
    em_keystore_secret_free(s);
    return rc;
}

static int run_seal(ctl_t *c, const ctl_cmd_t *cmd, int argc, char **argv)
{
    opts_t o;
    int rc = parse(c, cmd, argc, argv, &o, true, true);
    if (rc != 0)
        return rc;
    char *data = NULL;
    size_t len = 0;
    rc = ctl_read_file(o.in, "input file", (size_t)EM_KEYSTORE_DATA_MAX, false, &data, &len);
    if (rc != 0)
        return rc;
    if (len == 0) {
        ctl_free_file(data, len);
        ctl_err("validation", "%s is empty: nothing to seal", o.in);
        return CTL_INVALID;
    }
    em_keystore_secret_t *s = NULL;
    rc = ctl_secret_keystore(o.s.key_file, o.s.passphrase_file, CTL_ENV_PASSPHRASE, &s);
    unsigned char *img = NULL;
    size_t img_len = 0;
    if (rc == 0) {
        em_error_t e;
        em_error_clear(&e);
        if (em_keystore_seal(s, data, len, &img, &img_len, &e) != EM_OK)
            rc = ctl_em_fail("seal", &e);
    }
    ctl_free_file(data, len);
    em_keystore_secret_free(s);
    if (rc == 0)
        rc = ctl_write_new_file(o.out, 0600, img, img_len);
    free(img);
    if (rc != 0)
        return rc;
    char text[CTL_PATH_MAX * 2 + 160];
    snprintf(text, sizeof text,
             "sealed %s into %s (AES-256-GCM, %s); the plain file is still there: "
             "remove it (shred -u) once the sealed one works",
             o.in, o.out, secret_kind(&o));
    print_result(c, "sealed", o.out, text);
    return 0;
}

static int run_open(ctl_t *c, const ctl_cmd_t *cmd, int argc, char **argv)
{
    opts_t o;
    int rc = parse(c, cmd, argc, argv, &o, true, true);
    if (rc != 0)
        return rc;
    unsigned char *data = NULL;
    size_t len = 0;
    rc = open_in(&o, &data, &len);
    if (rc == 0)
        rc = ctl_write_new_file(o.out, 0600, data, len);
    em_keystore_data_free(data, len);
    if (rc != 0)
        return rc;
    char text[CTL_PATH_MAX * 2 + 64];
    snprintf(text, sizeof text, "opened %s into %s (mode 0600)", o.in, o.out);
    print_result(c, "opened", o.out, text);
    return 0;
}

static int run_rekey(ctl_t *c, const ctl_cmd_t *cmd, int argc, char **argv)
{
    opts_t o;
    int rc = parse(c, cmd, argc, argv, &o, true, false);
    if (rc != 0)
        return rc;
    if (o.out != NULL) {
        ctl_err(NULL, "rekey replaces --in in place: --out is not used");
        return CTL_USAGE;
    }
    unsigned char *data = NULL;
    size_t len = 0;
    /* Open with the old secret before asking for the new one: a wrong old
     * passphrase must fail before anything else happens. */
    rc = open_in(&o, &data, &len);
    if (rc != 0)
        return rc;
    em_keystore_secret_t *neu = NULL;
    rc = ctl_secret_keystore(o.new_key_file, o.new_pass_file, CTL_ENV_NEW_PASSPHRASE, &neu);
    em_error_t e;
    em_error_clear(&e);
    /* em_keystore_write_file replaces the file atomically: a crash leaves
     * either the old or the new file, never a mix. */
    if (rc == 0 && em_keystore_write_file(o.in, neu, data, len, &e) != EM_OK)
        rc = ctl_em_fail(o.in, &e);
    em_keystore_data_free(data, len);
    em_keystore_secret_free(neu);
    if (rc != 0)
        return rc;
    char text[CTL_PATH_MAX + 96];
    snprintf(text, sizeof text, "re-sealed %s under %s", o.in,
             o.new_key_file != NULL ? "the new key file" : "the new passphrase");
    print_result(c, "rekeyed", o.in, text);
    return 0;
}

static int run_keyfile(ctl_t *c, const ctl_cmd_t *cmd, int argc, char **argv)
{
    opts_t o;
    int rc = parse(c, cmd, argc, argv, &o, false, true);
    if (rc != 0)
        return rc;
    em_error_t e;
    em_error_clear(&e);
    if (em_keystore_key_file_create(o.out, &e) != EM_OK)
        return ctl_em_fail(o.out, &e);
    char text[CTL_PATH_MAX + 128];
    snprintf(text, sizeof text,
             "wrote a new keystore key file %s (32 random bytes, mode 0600); keep a copy "
             "offline: without it the keystores it seals cannot be opened",
             o.out);
    print_result(c, "created", o.out, text);
    return 0;
}

/* Describes a decrypted secret without showing it: a private key's type. */
static void describe(const unsigned char *data, size_t len, char *buf, size_t size)
{
    snprintf(buf, size, "%zu bytes", len);
    if (len > (size_t)0x7fffffff)
        return;
    BIO *bio = BIO_new_mem_buf(data, (int)len);
    EVP_PKEY *k = bio != NULL ? PEM_read_bio_PrivateKey(bio, NULL, NULL, NULL) : NULL;
    if (k != NULL) {
        char group[64] = "";
        size_t glen = 0;
        if (EVP_PKEY_get_group_name(k, group, sizeof group, &glen) != 1)
            group[0] = '\0';
        snprintf(buf, size, "a private key: %s%s%s, %d bits", EVP_PKEY_get0_type_name(k),
                 group[0] != '\0' ? " " : "", group, EVP_PKEY_get_bits(k));
    }
    EVP_PKEY_free(k);
    BIO_free(bio);
}

static int run_verify(ctl_t *c, const ctl_cmd_t *cmd, int argc, char **argv)
{
    opts_t o;
    int rc = parse(c, cmd, argc, argv, &o, true, false);
    if (rc != 0)
        return rc;
    unsigned char *data = NULL;
    size_t len = 0;
    rc = open_in(&o, &data, &len);
    if (rc != 0)
        return rc;
    char what[128];
    describe(data, len, what, sizeof what);
    em_keystore_data_free(data, len);
    if (c->quiet)
        return 0;
    if (c->format == CTL_OUT_JSON) {
        cJSON *j = cJSON_CreateObject();
        if (j != NULL && cJSON_AddStringToObject(j, "file", o.in) != NULL &&
            cJSON_AddBoolToObject(j, "ok", 1) != NULL &&
            cJSON_AddStringToObject(j, "content", what) != NULL)
            ctl_print_json(j);
        cJSON_Delete(j);
        return 0;
    }
    printf("OK: ");
    ctl_put_safe(stdout, o.in);
    printf(" opens with %s and is intact (%s)\n", secret_kind(&o), what);
    return 0;
}

#define SECRET_HELP                                                                                \
    "  --passphrase-file F      the passphrase, first line of F (mode 0600);\n"                    \
    "                           default: env EMIOT_KEYSTORE_PASSPHRASE\n"                          \
    "  --keystore-key-file F    a key file (keystore keyfile) instead of a passphrase\n"

const ctl_cmd_t ctl_keystore_cmds[] = {
    {"keystore", "seal", run_seal, 0, 0, "keystore seal --in F --out F",
     "Encrypt a file (a PEM private key, ...) into a new keystore file (0600)",
     "  --in F                   the file to seal (at most 64 KiB)\n"
     "  --out F                  the keystore file to create (never overwritten)\n" SECRET_HELP},
    {"keystore", "open", run_open, 0, 0, "keystore open --in F --out F",
     "Decrypt a keystore file into a new file (0600)",
     "  --in F                   the keystore file\n"
     "  --out F                  the plain file to create (mode 0600, never overwritten)\n"
     "" SECRET_HELP},
    {"keystore", "rekey", run_rekey, 0, 0, "keystore rekey --in F",
     "Re-seal a keystore file under a new passphrase or key file (atomic)",
     "  --in F                   the keystore file, replaced in place\n" SECRET_HELP
     "  --new-passphrase-file F  the new passphrase (default: env "
     "EMIOT_KEYSTORE_NEW_PASSPHRASE)\n"
     "  --new-keystore-key-file F  seal under this key file instead\n"},
    {"keystore", "keyfile", run_keyfile, 0, 0, "keystore keyfile --out F",
     "Create a keystore key file (32 random bytes, 0600)",
     "  --out F                  the file to create (never overwritten)\n"},
    {"keystore", "verify", run_verify, 0, 0, "keystore verify --in F",
     "Check that a keystore file opens and is intact (prints nothing secret)",
     "  --in F                   the keystore file\n" SECRET_HELP},
    {NULL, NULL, NULL, 0, 0, NULL, NULL, NULL},
};
