/*
 * emiot-agent - enroll.c: `emiot-agent enroll`, the device's certificate.
 *
 * `emiot-agent enroll` makes the device's key here, on the device, and never
 * sends it anywhere: only a CSR (CN = the device id, signed by that key)
 * travels to emiotd with the one-time enrollment token. What comes back is
 * checked before anything is written: the certificate must carry our public
 * key, our id as its CN, and verify against the CA certificate that came
 * with it (which we trust because it came over TLS pinned to --ca).
 *
 * The token, and the private key's PEM, live in buffers that are wiped
 * before they are freed; the token is never on the command line and never
 * printed. The output files are created (under temporary names) before the
 * request, so that a directory we cannot write fails before the token is
 * spent, and moved into place only once the certificate checks out: either
 * the device gets all its files or none.
 */
#include <errno.h>
#include <getopt.h>
#include <openssl/bio.h>
#include <openssl/crypto.h>
#include <openssl/err.h>
#include <openssl/evp.h>
#include <openssl/pem.h>
#include <openssl/x509.h>
#include <openssl/x509v3.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "agent.h"

#define ENROLL_PROGRAM "emiot-agent enroll"

#define ENROLL_TOKEN_PREFIX "enr_"
#define ENROLL_TOKEN_HEX    48
#define ENROLL_TOKEN_LEN    (sizeof ENROLL_TOKEN_PREFIX - 1 + ENROLL_TOKEN_HEX)
#define TOKEN_FILE_MAX      4096                /* bytes read from --token-file */
#define CERT_PEM_MAX        ((size_t)64 * 1024) /* bytes of a PEM certificate (with chain) */

/* PEM of a private key (PKCS#8) in a NUL-terminated malloc'd buffer; free it
 * with agent_free_secret. The BIO lives in the secure heap where OpenSSL has one,
 * and is wiped as it is freed. */
static char *private_key_pem(EVP_PKEY *key, size_t *len)
{
    BIO *b = BIO_new(BIO_s_secmem());
    char *data = NULL, *out = NULL;
    long n;

    if (!b || PEM_write_bio_PrivateKey(b, key, NULL, NULL, 0, NULL, NULL) != 1)
        goto done;
    n = BIO_get_mem_data(b, &data);
    if (n <= 0 || !data)
        goto done;
    out = malloc((size_t)n + 1);
    if (!out)
        goto done;
    memcpy(out, data, (size_t)n);
    out[n] = '\0';
    *len = (size_t)n;
done:
    BIO_free(b);
    return out;
}

/* PEM of a certificate or CSR written by fn into a malloc'd NUL-terminated
 * string (not secret). */
static char *x509_pem(X509 *cert, X509_REQ *req, size_t *len)
{
    BIO *b = BIO_new(BIO_s_mem());
    char *data = NULL, *out = NULL;
    long n;
    int ok;

    if (!b)
        return NULL;
    ok = cert ? PEM_write_bio_X509(b, cert) : PEM_write_bio_X509_REQ(b, req);
    n = ok == 1 ? BIO_get_mem_data(b, &data) : 0;
    if (n > 0 && data && (out = malloc((size_t)n + 1)) != NULL) {
        memcpy(out, data, (size_t)n);
        out[n] = '\0';
        *len = (size_t)n;
    }
    BIO_free(b);
    return out;
}

/* A CSR for key with subject CN=id, signed by key (ECDSA-SHA256). */
static X509_REQ *make_csr(EVP_PKEY *key, const char *id)
{
    X509_REQ *req = X509_REQ_new();
    X509_NAME *name = NULL;

    if (!req || X509_REQ_set_version(req, 0) != 1)
        goto fail;
    name = X509_REQ_get_subject_name(req);
    if (!name ||
        X509_NAME_add_entry_by_NID(name, NID_commonName, MBSTRING_UTF8, (const unsigned char *)id,
                                   -1, -1, 0) != 1 ||
        X509_REQ_set_pubkey(req, key) != 1 || X509_REQ_sign(req, key, EVP_sha256()) <= 0)
        goto fail;
    return req;
fail:
    X509_REQ_free(req);
    return NULL;
}

/* True when cert's subject has exactly one CN and it is id. */
static bool cn_is(X509 *cert, const char *id)
{
    X509_NAME *name = X509_get_subject_name(cert);
    int i = X509_NAME_get_index_by_NID(name, NID_commonName, -1);
    const ASN1_STRING *s;
    size_t n = strlen(id);

    if (i < 0 || X509_NAME_get_index_by_NID(name, NID_commonName, i) >= 0)
        return false;
    s = X509_NAME_ENTRY_get_data(X509_NAME_get_entry(name, i));
    return s && (size_t)ASN1_STRING_length(s) == n && memcmp(ASN1_STRING_get0_data(s), id, n) == 0;
}

/* Verifies cert against the CA certificates in cas (trusted as anchors, an
 * intermediate included) for TLS client use, now. Returns NULL when it
 * verifies, else the reason. */
static const char *verify_against(X509 *cert, STACK_OF(X509) * cas)
{
    X509_STORE *store = X509_STORE_new();
    X509_STORE_CTX *ctx = X509_STORE_CTX_new();
    const char *reason = "out of memory";
    int i;

    if (!store || !ctx)
        goto done;
    for (i = 0; i < sk_X509_num(cas); i++) {
        if (X509_STORE_add_cert(store, sk_X509_value(cas, i)) != 1)
            goto done;
    }
    if (X509_STORE_CTX_init(ctx, store, cert, NULL) != 1 ||
        X509_STORE_CTX_set_purpose(ctx, X509_PURPOSE_SSL_CLIENT) != 1)
        goto done;
    X509_STORE_CTX_set_flags(ctx, X509_V_FLAG_PARTIAL_CHAIN | X509_V_FLAG_X509_STRICT);
    reason = X509_verify_cert(ctx) == 1
                 ? NULL
                 : X509_verify_cert_error_string(X509_STORE_CTX_get_error(ctx));
done:
    ERR_clear_error();
    X509_STORE_CTX_free(ctx);
    X509_STORE_free(store);
    return reason;
}

/* "2027-01-31T12:00:00Z" from an ASN1_TIME. */
static void time_text(const ASN1_TIME *t, char *out, size_t size)
{
    struct tm tm;

    if (!t || ASN1_TIME_to_tm(t, &tm) != 1 || strftime(out, size, "%Y-%m-%dT%H:%M:%SZ", &tm) == 0)
        snprintf(out, size, "?");
}

/* The serial as lower-case hex. */
static void serial_text(X509 *cert, char *out, size_t size)
{
    BIGNUM *bn = ASN1_INTEGER_to_BN(X509_get0_serialNumber(cert), NULL);
    char *hex = bn ? BN_bn2hex(bn) : NULL;

    snprintf(out, size, "%s", hex ? hex : "?");
    for (char *p = out; *p; p++) {
        if (*p >= 'A' && *p <= 'F')
            *p = (char)(*p - 'A' + 'a');
    }
    OPENSSL_free(hex);
    BN_free(bn);
}

/* Checks the certificate emiotd issued: ours (public key), for id (CN), a
 * device certificate (digitalSignature; clientAuth through the purpose),
 * chaining to the CA it sent, valid now. Returns NULL or the reason. */
static const char *check_issued(X509 *cert, EVP_PKEY *key, const char *id, STACK_OF(X509) * cas)
{
    EVP_PKEY *pub = X509_get0_pubkey(cert);

    if (!pub || EVP_PKEY_eq(pub, key) != 1)
        return "it does not carry the public key of the key made for it";
    if (!cn_is(cert, id))
        return "its CN is not the device id";
    if ((X509_get_extension_flags(cert) & EXFLAG_KUSAGE) &&
        !(X509_get_key_usage(cert) & KU_DIGITAL_SIGNATURE))
        return "its key usage does not allow digital signatures";
    return verify_against(cert, cas);
}

/* ---- the token ---------------------------------------------------------- */

/* True when t is "enr_" and 48 hex digits. */
static bool token_shape_ok(const char *t, size_t len)
{
    if (len != ENROLL_TOKEN_LEN || memcmp(t, ENROLL_TOKEN_PREFIX, 4) != 0)
        return false;
    for (size_t i = 4; i < len; i++) {
        char c = t[i];
        if (!((c >= '0' && c <= '9') || (c >= 'a' && c <= 'f') || (c >= 'A' && c <= 'F')))
            return false;
    }
    return true;
}

/* Reads the enrollment token from the environment or a file (its first
 * line) into out. Returns AGENT_EXIT_OK or the exit status after printing
 * why; the token itself is never printed. */
static int read_token(const char *env, const char *file, char out[ENROLL_TOKEN_LEN + 1])
{
    char *buf = NULL;
    size_t buf_len = 0, len;
    const char *src;
    bool ok;

    if (env) {
        src = getenv(env);
        if (!src || !*src) {
            agent_fail(ENROLL_PROGRAM, "--token-env: the environment variable %s is not set", env);
            return AGENT_EXIT_USAGE;
        }
        len = strlen(src);
    } else {
        if (!agent_read_file(ENROLL_PROGRAM, "--token-file", file, TOKEN_FILE_MAX, &buf, &buf_len))
            return AGENT_EXIT_FAILURE;
        src = buf;
        len = strcspn(buf, "\r\n");
    }
    while (len > 0 && (src[len - 1] == ' ' || src[len - 1] == '\t'))
        len--;
    ok = token_shape_ok(src, len);
    if (ok) {
        memcpy(out, src, len);
        out[len] = '\0';
    }
    agent_free_secret(buf, buf_len);
    if (!ok) {
        agent_fail(ENROLL_PROGRAM,
                   "the token from %s is not an enrollment token (\"enr_\" and 48 "
                   "hex digits, as emiotd gave it)",
                   env ? "--token-env" : "--token-file");
        return AGENT_EXIT_USAGE;
    }
    return AGENT_EXIT_OK;
}

static void enroll_usage(FILE *out)
{
    (void)fprintf(
        out,
        "Usage: emiot-agent enroll --api URL --ca FILE --id ID\n"
        "                          (--token-env VAR | --token-file FILE)\n"
        "                          --key-out FILE --cert-out FILE [--ca-out FILE] [--force]\n"
        "Enrolls this device with emiotd: makes its ECDSA P-256 key here (it never leaves\n"
        "the device), sends a certificate request with the one-time enrollment token, and\n"
        "stores the certificate emiotd issues once it has checked it.\n"
        "\n"
        "  --api URL          emiotd's API: https://host[:port] (TLS 1.3 only)\n"
        "  --ca FILE          the CA certificate (PEM) that verifies emiotd's certificate;\n"
        "                     nothing else is trusted\n"
        "  --id ID            this device's id (3-50 of [A-Za-z0-9_-]); the certificate's CN\n"
        "  --token-env VAR    read the enrollment token from environment variable VAR\n"
        "  --token-file FILE  read the enrollment token from the first line of FILE\n"
        "  --key-out FILE     where the private key goes (PEM, mode 0600)\n"
        "  --cert-out FILE    where the certificate goes (PEM, mode 0644)\n"
        "  --ca-out FILE      where the issuing CA's certificate goes (PEM, mode 0644)\n"
        "  --force            replace files that exist (default: refuse, before sending)\n"
        "  --help             show this help and exit\n"
        "\n"
        "The token is never taken on the command line and never printed; a token works\n"
        "once, even when enrollment fails. Nothing is written unless enrollment succeeds.\n"
        "\n"
        "%s",
        agent_exit_codes_help);
}

/* ---- enroll ---------------------------------------------------------------- */

typedef struct enroll_args {
    const char *api, *ca, *id, *token_env, *token_file, *key_out, *cert_out, *ca_out;
    bool force;
} enroll_args_t;

enum {
    OPT_API = 256,
    OPT_CA,
    OPT_ID,
    OPT_TOKEN,
    OPT_TOKEN_ENV,
    OPT_TOKEN_FILE,
    OPT_KEY_OUT,
    OPT_CERT_OUT,
    OPT_CA_OUT,
    OPT_FORCE,
    OPT_HELP
};

static bool same_path(const char *a, const char *b)
{
    return a && b && strcmp(a, b) == 0;
}

/* Refuses early (before the token is spent) what would fail later. */
static int enroll_check(const enroll_args_t *a)
{
    const char *outs[3] = {a->key_out, a->cert_out, a->ca_out};
    int rc;

    if ((rc = agent_check_api(ENROLL_PROGRAM, a->api)) >= 0)
        return rc;
    if (!a->ca)
        return agent_usage_error(ENROLL_PROGRAM,
                                 "--ca is required (emiotd's certificate is always "
                                 "verified)",
                                 NULL);
    if (!a->id)
        return agent_usage_error(ENROLL_PROGRAM, "--id is required", NULL);
    if ((rc = agent_check_id(ENROLL_PROGRAM, a->id)) >= 0)
        return rc;
    if (!a->token_env == !a->token_file)
        return agent_usage_error(ENROLL_PROGRAM,
                                 "exactly one of --token-env and --token-file is "
                                 "required",
                                 NULL);
    if (!a->key_out || !a->cert_out)
        return agent_usage_error(ENROLL_PROGRAM, "--key-out and --cert-out are required", NULL);
    if (same_path(a->key_out, a->cert_out) || same_path(a->key_out, a->ca_out) ||
        same_path(a->cert_out, a->ca_out))
        return agent_usage_error(ENROLL_PROGRAM,
                                 "--key-out, --cert-out and --ca-out must be different "
                                 "files",
                                 NULL);
    if (access(a->ca, R_OK) != 0) {
        agent_fail(ENROLL_PROGRAM, "--ca: cannot read '%s': %s", a->ca, strerror(errno));
        return AGENT_EXIT_FAILURE;
    }
    for (int i = 0; i < 3; i++) {
        struct stat st;
        if (outs[i] && !a->force && lstat(outs[i], &st) == 0) {
            agent_fail(ENROLL_PROGRAM, "'%s' exists (use --force to replace it)", outs[i]);
            return AGENT_EXIT_FAILURE;
        }
    }
    return -1;
}

static int enroll_parse(int argc, char **argv, enroll_args_t *a)
{
    static const struct option opts[] = {
        {"api", required_argument, NULL, OPT_API},
        {"ca", required_argument, NULL, OPT_CA},
        {"id", required_argument, NULL, OPT_ID},
        {"token", required_argument, NULL, OPT_TOKEN},
        {"token-env", required_argument, NULL, OPT_TOKEN_ENV},
        {"token-file", required_argument, NULL, OPT_TOKEN_FILE},
        {"key-out", required_argument, NULL, OPT_KEY_OUT},
        {"cert-out", required_argument, NULL, OPT_CERT_OUT},
        {"ca-out", required_argument, NULL, OPT_CA_OUT},
        {"force", no_argument, NULL, OPT_FORCE},
        {"help", no_argument, NULL, OPT_HELP},
        {NULL, 0, NULL, 0},
    };
    int c;

    memset(a, 0, sizeof *a);
    optind = 1;
    opterr = 0;
    while ((c = getopt_long(argc, argv, ":", opts, NULL)) != -1) {
        switch (c) {
        case OPT_API:
            a->api = optarg;
            break;
        case OPT_CA:
            a->ca = optarg;
            break;
        case OPT_ID:
            a->id = optarg;
            break;
        case OPT_TOKEN:
            /* The value is not echoed: it is the secret. */
            return agent_usage_error(ENROLL_PROGRAM,
                                     "the token is never taken on the command line (it "
                                     "would show in ps and shell history); use "
                                     "--token-env or --token-file",
                                     NULL);
        case OPT_TOKEN_ENV:
            a->token_env = optarg;
            break;
        case OPT_TOKEN_FILE:
            a->token_file = optarg;
            break;
        case OPT_KEY_OUT:
            a->key_out = optarg;
            break;
        case OPT_CERT_OUT:
            a->cert_out = optarg;
            break;
        case OPT_CA_OUT:
            a->ca_out = optarg;
            break;
        case OPT_FORCE:
            a->force = true;
            break;
        case OPT_HELP:
            enroll_usage(stdout);
            return AGENT_EXIT_OK;
        default:
            return agent_option_error(ENROLL_PROGRAM, c, argv);
        }
    }
    if (optind < argc)
        return agent_usage_error(ENROLL_PROGRAM, "unexpected argument", argv[optind]);
    return enroll_check(a);
}

/* What enrollment holds, freed by enroll_state_free. */
typedef struct enroll_state {
    char token[ENROLL_TOKEN_LEN + 1];
    EVP_PKEY *key;
    char *key_pem;
    size_t key_pem_len;
    char *csr_pem;
    cJSON *request;
    agent_answer_t answer;
    X509 *cert;
    STACK_OF(X509) * cas;
    agent_staged_t files[3]; /* key, certificate, CA */
} enroll_state_t;

static void enroll_state_free(enroll_state_t *s, bool rollback)
{
    for (int i = 0; i < 3; i++)
        agent_staged_abort(&s->files[i], rollback);
    OPENSSL_cleanse(s->token, sizeof s->token);
    EVP_PKEY_free(s->key); /* OpenSSL clears the private scalar as it frees it */
    agent_free_secret(s->key_pem, s->key_pem_len);
    free(s->csr_pem);
    agent_json_free(s->request);
    agent_answer_cleanup(&s->answer);
    X509_free(s->cert);
    sk_X509_pop_free(s->cas, X509_free);
}

/* The key and the CSR, made here. */
static int enroll_make_key(enroll_state_t *s, const char *id)
{
    X509_REQ *req;
    size_t len = 0;

    s->key = EVP_EC_gen("P-256");
    if (!s->key) {
        agent_fail(ENROLL_PROGRAM, "cannot generate a P-256 key: %s", agent_ssl_reason());
        return AGENT_EXIT_FAILURE;
    }
    s->key_pem = private_key_pem(s->key, &s->key_pem_len);
    req = make_csr(s->key, id);
    s->csr_pem = req ? x509_pem(NULL, req, &len) : NULL;
    X509_REQ_free(req);
    if (!s->key_pem || !s->csr_pem) {
        agent_fail(ENROLL_PROGRAM, "cannot make the certificate request: %s", agent_ssl_reason());
        return AGENT_EXIT_FAILURE;
    }
    return AGENT_EXIT_OK;
}

/* Takes the certificate and the CA out of the answer and checks them. */
static int enroll_check_answer(enroll_state_t *s, const char *id)
{
    const char *cert_pem = agent_json_str(s->answer.data, "certificate");
    const char *ca_pem = agent_json_str(s->answer.data, "caCertificate");
    STACK_OF(X509) * issued;
    const char *why;

    if (!cert_pem || !ca_pem || strlen(cert_pem) > CERT_PEM_MAX || strlen(ca_pem) > CERT_PEM_MAX) {
        agent_fail(ENROLL_PROGRAM, "server error: the answer lacks certificate or caCertificate");
        return AGENT_EXIT_SERVER;
    }
    issued = agent_parse_certs(cert_pem, strlen(cert_pem));
    s->cas = agent_parse_certs(ca_pem, strlen(ca_pem));
    if (!issued || !s->cas) {
        sk_X509_pop_free(issued, X509_free);
        agent_fail(ENROLL_PROGRAM, "server error: the %s in the answer is not a PEM certificate",
                   issued ? "caCertificate" : "certificate");
        return AGENT_EXIT_SERVER;
    }
    /* The first is the device's; any others are intermediates, which the CA
     * text carries too. */
    s->cert = sk_X509_shift(issued);
    sk_X509_pop_free(issued, X509_free);
    why = check_issued(s->cert, s->key, id, s->cas);
    if (why) {
        agent_fail(ENROLL_PROGRAM,
                   "server error: the certificate emiotd issued is refused: %s; "
                   "nothing was written (the token is spent: ask for a new one, and have the "
                   "operator revoke what was issued)",
                   why);
        return AGENT_EXIT_SERVER;
    }
    return AGENT_EXIT_OK;
}

/* Writes key, certificate and CA from what was parsed (not the server's
 * text as such: only certificates end up in the files). */
static int enroll_write(enroll_state_t *s, const enroll_args_t *a)
{
    char *cert_pem = NULL, *ca_pem = NULL;
    size_t cert_len = 0, ca_len = 0;
    int rc = AGENT_EXIT_FAILURE;

    cert_pem = x509_pem(s->cert, NULL, &cert_len);
    if (!cert_pem)
        goto out;
    if (a->ca_out) {
        BIO *b = BIO_new(BIO_s_mem());
        char *data = NULL;
        long n = 0;
        for (int i = 0; b && i < sk_X509_num(s->cas); i++) {
            if (PEM_write_bio_X509(b, sk_X509_value(s->cas, i)) != 1) {
                BIO_free(b);
                b = NULL;
            }
        }
        if (b)
            n = BIO_get_mem_data(b, &data);
        if (n > 0 && data && (ca_pem = malloc((size_t)n)) != NULL) {
            memcpy(ca_pem, data, (size_t)n);
            ca_len = (size_t)n;
        }
        BIO_free(b);
        if (!ca_pem)
            goto out;
    }
    if (!agent_staged_write(ENROLL_PROGRAM, &s->files[0], s->key_pem, s->key_pem_len) ||
        !agent_staged_write(ENROLL_PROGRAM, &s->files[1], cert_pem, cert_len) ||
        (a->ca_out && !agent_staged_write(ENROLL_PROGRAM, &s->files[2], ca_pem, ca_len)))
        goto out_quiet;
    for (int i = 0; i < 3; i++) {
        if (s->files[i].path && !agent_staged_commit(ENROLL_PROGRAM, &s->files[i], a->force))
            goto out_quiet;
    }
    rc = AGENT_EXIT_OK;
    goto out_quiet;
out:
    agent_fail(ENROLL_PROGRAM, "out of memory");
out_quiet:
    free(cert_pem);
    free(ca_pem);
    return rc;
}

static void enroll_report(const enroll_state_t *s, const enroll_args_t *a)
{
    char serial[80], until[32];

    serial_text(s->cert, serial, sizeof serial);
    time_text(X509_get0_notAfter(s->cert), until, sizeof until);
    (void)printf("enrolled %s: certificate %s (serial %s, valid until %s), key %s (0600)%s%s\n",
                 a->id, a->cert_out, serial, until, a->key_out, a->ca_out ? ", CA " : "",
                 a->ca_out ? a->ca_out : "");
}

int agent_enroll_main(int argc, char **argv)
{
    enroll_args_t a;
    enroll_state_t s;
    agent_https_t h;
    int rc;

    rc = enroll_parse(argc, argv, &a);
    /* The parser has refused missing options already; they are named again
     * for the static analyser, which does not see into identity.c. */
    if (rc >= 0 || !a.api || !a.ca || !a.id || !a.key_out || !a.cert_out)
        return rc >= 0 ? rc : AGENT_EXIT_USAGE;
    memset(&s, 0, sizeof s);
    memset(&h, 0, sizeof h);
    for (int i = 0; i < 3; i++)
        s.files[i].fd = -1;
    rc = read_token(a.token_env, a.token_file, s.token);
    if (rc != AGENT_EXIT_OK)
        goto out;
    /* The files first: a directory we cannot write fails before the token
     * is spent. */
    if (!agent_staged_open(ENROLL_PROGRAM, &s.files[0], a.key_out, 0600) ||
        !agent_staged_open(ENROLL_PROGRAM, &s.files[1], a.cert_out, 0644) ||
        (a.ca_out && !agent_staged_open(ENROLL_PROGRAM, &s.files[2], a.ca_out, 0644))) {
        rc = AGENT_EXIT_FAILURE;
        goto out;
    }
    rc = enroll_make_key(&s, a.id);
    if (rc != AGENT_EXIT_OK)
        goto out;
    rc = agent_https_init(&h, ENROLL_PROGRAM, a.api, a.ca);
    if (rc != AGENT_EXIT_OK)
        goto out;
    s.request = cJSON_CreateObject();
    if (!s.request || !cJSON_AddStringToObject(s.request, "deviceId", a.id) ||
        !cJSON_AddStringToObject(s.request, "token", s.token) ||
        !cJSON_AddStringToObject(s.request, "csr", s.csr_pem)) {
        agent_fail(ENROLL_PROGRAM, "out of memory");
        rc = AGENT_EXIT_FAILURE;
        goto out;
    }
    OPENSSL_cleanse(s.token, sizeof s.token); /* the request holds the only copy now */
    rc = agent_https_post(&h, "/api/v1/enroll", s.request, &s.answer);
    agent_json_free(s.request);
    s.request = NULL;
    if (rc != AGENT_EXIT_OK)
        goto out;
    rc = enroll_check_answer(&s, a.id);
    if (rc != AGENT_EXIT_OK)
        goto out;
    rc = enroll_write(&s, &a);
    if (rc == AGENT_EXIT_OK)
        enroll_report(&s, &a);
out:
    agent_https_cleanup(&h);
    /* A failure after some file was moved into place takes it back: either
     * the device has all its files or none. */
    enroll_state_free(&s, rc != AGENT_EXIT_OK && !a.force);
    return rc;
}
