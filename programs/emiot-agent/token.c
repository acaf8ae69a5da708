/*
 * emiot-agent - token.c: `emiot-agent token`, a device JWT by
 * challenge-response.
 *
 * Proves possession of the device key without sending it: asks emiotd for a
 * nonce, signs exactly "emiot-device-auth-v1\n<id>\n<nonce>" (SHA-256 with
 * the key's own scheme) and trades the signature for a short-lived device
 * JWT, which is printed or written to a 0600 file. The key's PEM is read
 * into a buffer that is wiped; the JWT's buffers are wiped too.
 */
#include <errno.h>
#include <getopt.h>
#include <openssl/bio.h>
#include <openssl/err.h>
#include <openssl/evp.h>
#include <openssl/pem.h>
#include <openssl/x509.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "agent.h"

#define TOKEN_PROGRAM "emiot-agent token"
#define KEY_FILE_MAX  ((size_t)64 * 1024) /* bytes of a PEM private key */
#define CERT_FILE_MAX ((size_t)64 * 1024) /* bytes of a PEM certificate (with chain) */
#define NONCE_MAX     128                 /* characters of a challenge nonce */
#define JWT_MAX       8192
#define AUTH_CONTEXT  "emiot-device-auth-v1"

enum { OPT_API = 256, OPT_CA, OPT_ID, OPT_KEY, OPT_CERT, OPT_OUT, OPT_HELP };

static void token_usage(FILE *out)
{
    (void)fprintf(
        out,
        "Usage: emiot-agent token --api URL --ca FILE --id ID --key FILE [--cert FILE]\n"
        "                         [--out FILE]\n"
        "Obtains a device JWT from emiotd by challenge-response: asks for a nonce, signs\n"
        "\"emiot-device-auth-v1\\n<ID>\\n<nonce>\" with the device key (SHA-256; ECDSA,\n"
        "Ed25519 or RSA) and prints the token emiotd gives for it.\n"
        "\n"
        "  --api URL      emiotd's API: https://host[:port] (TLS 1.3 only)\n"
        "  --ca FILE      the CA certificate (PEM) that verifies emiotd's certificate\n"
        "  --id ID        this device's id\n"
        "  --key FILE     the device's private key (PEM, unencrypted)\n"
        "  --cert FILE    send this certificate (PEM) too: emiotd registers it when it\n"
        "                 does not know it yet (it must chain to emiotd's CA)\n"
        "  --out FILE     write the token to FILE (mode 0600, replaced atomically)\n"
        "                 instead of printing it on stdout\n"
        "  --help         show this help and exit\n"
        "\n"
        "%s",
        agent_exit_codes_help);
}

/* ---- token ----------------------------------------------------------------- */

typedef struct token_args {
    const char *api, *ca, *id, *key, *cert, *out;
} token_args_t;

static int token_parse(int argc, char **argv, token_args_t *a)
{
    static const struct option opts[] = {
        {"api", required_argument, NULL, OPT_API},   {"ca", required_argument, NULL, OPT_CA},
        {"id", required_argument, NULL, OPT_ID},     {"key", required_argument, NULL, OPT_KEY},
        {"cert", required_argument, NULL, OPT_CERT}, {"out", required_argument, NULL, OPT_OUT},
        {"help", no_argument, NULL, OPT_HELP},       {NULL, 0, NULL, 0},
    };
    int c, rc;

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
        case OPT_KEY:
            a->key = optarg;
            break;
        case OPT_CERT:
            a->cert = optarg;
            break;
        case OPT_OUT:
            a->out = optarg;
            break;
        case OPT_HELP:
            token_usage(stdout);
            return AGENT_EXIT_OK;
        default:
            return agent_option_error(TOKEN_PROGRAM, c, argv);
        }
    }
    if (optind < argc)
        return agent_usage_error(TOKEN_PROGRAM, "unexpected argument", argv[optind]);
    if ((rc = agent_check_api(TOKEN_PROGRAM, a->api)) >= 0)
        return rc;
    if (!a->ca)
        return agent_usage_error(TOKEN_PROGRAM,
                                 "--ca is required (emiotd's certificate is always "
                                 "verified)",
                                 NULL);
    if (!a->id)
        return agent_usage_error(TOKEN_PROGRAM, "--id is required", NULL);
    if ((rc = agent_check_id(TOKEN_PROGRAM, a->id)) >= 0)
        return rc;
    if (!a->key)
        return agent_usage_error(TOKEN_PROGRAM, "--key is required", NULL);
    if (access(a->ca, R_OK) != 0) {
        agent_fail(TOKEN_PROGRAM, "--ca: cannot read '%s': %s", a->ca, strerror(errno));
        return AGENT_EXIT_FAILURE;
    }
    return -1;
}

/* A passphrase callback that refuses: an encrypted key is not supported
 * (the agent runs unattended), and must not make OpenSSL prompt. */
// NOLINTNEXTLINE(readability-non-const-parameter): OpenSSL's pem_password_cb
static int no_passphrase(char *buf, int size, int rwflag, void *ud)
{
    (void)buf, (void)size, (void)rwflag, (void)ud;
    return -1;
}

/* Loads the device key and checks that its type is one emiotd accepts. */
static EVP_PKEY *load_key(const char *path)
{
    char *pem = NULL;
    size_t len = 0;
    BIO *b;
    EVP_PKEY *key = NULL;
    const char *why = NULL;

    if (!agent_read_file(TOKEN_PROGRAM, "--key", path, KEY_FILE_MAX, &pem, &len))
        return NULL;
    b = BIO_new_mem_buf(pem, (int)len);
    if (b)
        key = PEM_read_bio_PrivateKey(b, NULL, no_passphrase, NULL);
    BIO_free(b);
    agent_free_secret(pem, len);
    ERR_clear_error();
    if (!key) {
        agent_fail(TOKEN_PROGRAM, "--key: '%s' is not an unencrypted PEM private key", path);
        return NULL;
    }
    switch (EVP_PKEY_get_base_id(key)) {
    case EVP_PKEY_EC: {
        char group[64];
        size_t glen = 0;
        if (EVP_PKEY_get_group_name(key, group, sizeof group, &glen) != 1 ||
            (strcmp(group, "prime256v1") != 0 && strcmp(group, "P-256") != 0 &&
             strcmp(group, "secp384r1") != 0 && strcmp(group, "P-384") != 0))
            why = "an EC key on a curve other than P-256 and P-384";
        break;
    }
    case EVP_PKEY_ED25519:
        break;
    case EVP_PKEY_RSA:
        if (EVP_PKEY_get_bits(key) < 2048)
            why = "an RSA key of fewer than 2048 bits";
        break;
    default:
        why = "neither EC (P-256, P-384), Ed25519 nor RSA";
        break;
    }
    if (why) {
        agent_fail(TOKEN_PROGRAM, "--key: '%s' is %s: emiotd does not accept it", path, why);
        EVP_PKEY_free(key);
        return NULL;
    }
    return key;
}

/* Signs msg with key: SHA-256 and the key's own scheme (ECDSA in DER,
 * Ed25519 pure, RSA PKCS#1 v1.5), base64url without padding into a malloc'd
 * string. */
static char *sign_b64url(EVP_PKEY *key, const char *msg, size_t len)
{
    EVP_MD_CTX *ctx = EVP_MD_CTX_new();
    const EVP_MD *md = EVP_PKEY_get_base_id(key) == EVP_PKEY_ED25519 ? NULL : EVP_sha256();
    unsigned char *sig = NULL;
    size_t sig_len = 0;
    char *out = NULL;
    int n;

    if (!ctx || EVP_DigestSignInit(ctx, NULL, md, NULL, key) != 1 ||
        EVP_DigestSign(ctx, NULL, &sig_len, (const unsigned char *)msg, len) != 1 || sig_len == 0 ||
        sig_len > 8192 || !(sig = malloc(sig_len)) ||
        EVP_DigestSign(ctx, sig, &sig_len, (const unsigned char *)msg, len) != 1)
        goto done;
    out = malloc(4 * ((sig_len + 2) / 3) + 1);
    if (!out)
        goto done;
    n = EVP_EncodeBlock((unsigned char *)out, sig, (int)sig_len);
    while (n > 0 && out[n - 1] == '=')
        n--;
    out[n] = '\0';
    for (char *p = out; *p; p++) {
        if (*p == '+')
            *p = '-';
        else if (*p == '/')
            *p = '_';
    }
done:
    EVP_MD_CTX_free(ctx);
    free(sig);
    return out;
}

static bool b64url_text(const char *s, size_t max, bool dots)
{
    size_t n = 0;

    for (; s[n] != '\0'; n++) {
        char c = s[n];
        if (n >= max || !((c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') ||
                          (c >= '0' && c <= '9') || c == '-' || c == '_' || (dots && c == '.')))
            return false;
    }
    return n > 0;
}

/* True for three non-empty base64url segments separated by dots. */
static bool jwt_shape_ok(const char *t)
{
    const char *d1, *d2;

    if (!b64url_text(t, JWT_MAX, true))
        return false;
    d1 = strchr(t, '.');
    d2 = d1 ? strchr(d1 + 1, '.') : NULL;
    return d1 && d2 && d1 > t && d2 > d1 + 1 && d2[1] != '\0' && !strchr(d2 + 1, '.');
}

/* Reads --cert and checks that it belongs to key; *pem receives its text. */
static int load_cert(const char *path, EVP_PKEY *key, char **pem)
{
    size_t len = 0;
    STACK_OF(X509) * certs;
    int rc = AGENT_EXIT_OK;

    if (!agent_read_file(TOKEN_PROGRAM, "--cert", path, CERT_FILE_MAX, pem, &len))
        return AGENT_EXIT_FAILURE;
    certs = agent_parse_certs(*pem, len);
    if (!certs) {
        agent_fail(TOKEN_PROGRAM, "--cert: '%s' holds no PEM certificate", path);
        rc = AGENT_EXIT_FAILURE;
    } else if (EVP_PKEY_eq(X509_get0_pubkey(sk_X509_value(certs, 0)), key) != 1) {
        agent_fail(TOKEN_PROGRAM, "--cert: '%s' is not the certificate of --key", path);
        rc = AGENT_EXIT_FAILURE;
    }
    ERR_clear_error();
    sk_X509_pop_free(certs, X509_free);
    if (rc != AGENT_EXIT_OK) {
        free(*pem);
        *pem = NULL;
    }
    return rc;
}

/* POST /api/v1/auth/challenge; *nonce (malloc'd) on success. */
static int ask_nonce(agent_https_t *h, const char *id, char **nonce)
{
    cJSON *req = cJSON_CreateObject();
    agent_answer_t ans;
    const char *n;
    int rc;

    *nonce = NULL;
    if (!req || !cJSON_AddStringToObject(req, "deviceId", id)) {
        cJSON_Delete(req);
        agent_fail(TOKEN_PROGRAM, "out of memory");
        return AGENT_EXIT_FAILURE;
    }
    rc = agent_https_post(h, "/api/v1/auth/challenge", req, &ans);
    cJSON_Delete(req);
    if (rc != AGENT_EXIT_OK)
        return rc;
    n = agent_json_str(ans.data, "nonce");
    if (!n || !b64url_text(n, NONCE_MAX, false)) {
        agent_fail(TOKEN_PROGRAM, "server error: the challenge carries no nonce");
        rc = AGENT_EXIT_SERVER;
    } else if (!(*nonce = strdup(n))) {
        agent_fail(TOKEN_PROGRAM, "out of memory");
        rc = AGENT_EXIT_FAILURE;
    }
    agent_answer_cleanup(&ans);
    return rc;
}

/* POST /api/v1/auth/device-token; the JWT is printed or written. */
static int trade_signature(agent_https_t *h, const token_args_t *a, const char *nonce,
                           const char *sig, const char *cert_pem)
{
    cJSON *req = cJSON_CreateObject();
    agent_answer_t ans;
    const char *jwt;
    int rc;

    if (!req || !cJSON_AddStringToObject(req, "deviceId", a->id) ||
        !cJSON_AddStringToObject(req, "nonce", nonce) ||
        !cJSON_AddStringToObject(req, "signature", sig) ||
        (cert_pem && !cJSON_AddStringToObject(req, "certificate", cert_pem))) {
        cJSON_Delete(req);
        agent_fail(TOKEN_PROGRAM, "out of memory");
        return AGENT_EXIT_FAILURE;
    }
    rc = agent_https_post(h, "/api/v1/auth/device-token", req, &ans);
    cJSON_Delete(req);
    if (rc != AGENT_EXIT_OK)
        return rc;
    jwt = agent_json_str(ans.data, "token");
    if (!jwt || !jwt_shape_ok(jwt)) {
        agent_fail(TOKEN_PROGRAM, "server error: the answer carries no token");
        rc = AGENT_EXIT_SERVER;
    } else if (a->out) {
        agent_staged_t st;
        bool ok = agent_staged_open(TOKEN_PROGRAM, &st, a->out, 0600) &&
                  agent_staged_write(TOKEN_PROGRAM, &st, jwt, strlen(jwt)) &&
                  agent_staged_write(TOKEN_PROGRAM, &st, "\n", 1) &&
                  agent_staged_commit(TOKEN_PROGRAM, &st, true);
        if (st.path)
            agent_staged_abort(&st, false);
        rc = ok ? AGENT_EXIT_OK : AGENT_EXIT_FAILURE;
    } else if (printf("%s\n", jwt) < 0 || fflush(stdout) != 0) {
        agent_fail(TOKEN_PROGRAM, "cannot write the token on stdout");
        rc = AGENT_EXIT_FAILURE;
    }
    agent_answer_cleanup(&ans);
    return rc;
}

int agent_token_main(int argc, char **argv)
{
    token_args_t a;
    agent_https_t h;
    EVP_PKEY *key = NULL;
    char *cert_pem = NULL, *nonce = NULL, *sig = NULL, *msg = NULL;
    size_t msg_len = 0;
    int rc;

    rc = token_parse(argc, argv, &a);
    /* The parser has refused missing options already; they are named again
     * for the static analyser, which does not see into identity.c. */
    if (rc >= 0 || !a.api || !a.ca || !a.id || !a.key)
        return rc >= 0 ? rc : AGENT_EXIT_USAGE;
    memset(&h, 0, sizeof h);
    key = load_key(a.key);
    if (!key)
        return AGENT_EXIT_FAILURE;
    if (a.cert && (rc = load_cert(a.cert, key, &cert_pem)) != AGENT_EXIT_OK)
        goto out;
    rc = agent_https_init(&h, TOKEN_PROGRAM, a.api, a.ca);
    if (rc != AGENT_EXIT_OK)
        goto out;
    rc = ask_nonce(&h, a.id, &nonce);
    if (rc != AGENT_EXIT_OK)
        goto out;
    /* Exactly the bytes emiotd verifies: no trailing newline. */
    msg_len = sizeof AUTH_CONTEXT + strlen(a.id) + 1 + strlen(nonce);
    msg = malloc(msg_len + 1);
    if (!msg) {
        agent_fail(TOKEN_PROGRAM, "out of memory");
        rc = AGENT_EXIT_FAILURE;
        goto out;
    }
    (void)snprintf(msg, msg_len + 1, AUTH_CONTEXT "\n%s\n%s", a.id, nonce);
    sig = sign_b64url(key, msg, strlen(msg));
    if (!sig) {
        agent_fail(TOKEN_PROGRAM, "cannot sign the challenge: %s", agent_ssl_reason());
        rc = AGENT_EXIT_FAILURE;
        goto out;
    }
    rc = trade_signature(&h, &a, nonce, sig, cert_pem);
out:
    agent_https_cleanup(&h);
    EVP_PKEY_free(key);
    free(cert_pem);
    free(nonce);
    free(sig);
    free(msg);
    return rc;
}
