/*
 * emiot tests - emiotd's authorisation matrix, end to end.
 *
 * One real emiotd (tests/support/daemon.h) on a real mosquitto, driven as a
 * user drives it: curl over HTTPS pinned to the daemon's CA, and python3 with
 * PyJWT to forge tokens (expired, wrong audience, wrong issuer, alg none,
 * signed by another key, HS256 keyed with the daemon's public key). Every
 * refusal is checked three ways: the status, the body
 * ({"success":false,"message","errorCode"}, with one fixed message for every
 * 401 and one for every 403), and that nothing changed (read back with the
 * admin key). The last tests check that the failures became security events
 * and that no presented secret reached the events or the daemon's log.
 *
 * All tests share one daemon (started in the group set-up); each uses its own
 * device ids and key names, so their order does not matter.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include <cjson/cJSON.h>
#include <cmocka.h>
#include <fcntl.h>
#include <openssl/pem.h>

#include "broker.h"
#include "daemon.h"
#include "emiot/keystore.h"
#include "testutil.h"
#include "track.h"

/* The system python3, where Debian's python3-jwt and python3-cryptography
 * are installed (a python3 earlier in PATH may lack them). */
#define PYTHON   "/usr/bin/python3"
#define BODY_MAX (256 * 1024)

/* The daemon's ES256 signing key, in its data directory (docs/OPERATIONS.md:
 * [api] jwt_key_file, default DATA_DIR/jwt.key, created 0600 at first start). */
#define JWT_KEY_NAME "jwt.key"

/* Failed authentications from one address are limited (429 after
 * auth_fail_per_min); this suite makes a few dozen on purpose from
 * 127.0.0.1, so the limit is raised for its daemon: the tests are about 401
 * and 403, not about that limit (test_emiotd_input.c covers it). */
#define EXTRA_CONFIG "[api]\nauth_fail_per_min = 100000\n"

static em_test_broker_t broker;
static em_test_daemon_t dmn;
static char jwt_key[EM_TEST_PATH_MAX + 16];
static char issuer[128];
static char audience[128];

/* Every secret a test presented, for the final "never logged" checks. */
#define SECRETS_MAX 64
static char *secrets[SECRETS_MAX];
static size_t nsecrets;

static void remember_secret(const char *s)
{
    if (nsecrets < SECRETS_MAX && s != NULL && s[0] != '\0')
        secrets[nsecrets++] = strdup(s);
}

/* ---- running things ------------------------------------------------------ */

static long read_whole(const char *path, char *buf, size_t size)
{
    FILE *f = fopen(path, "r");
    if (f == NULL)
        return -1;
    size_t n = fread(buf, 1, size - 1, f);
    buf[n] = '\0';
    fclose(f);
    return (long)n;
}

/* A path in the daemon's directory, unique per call. */
static void tmp_path(char *buf, size_t size, const char *what)
{
    static unsigned seq;
    snprintf(buf, size, "%s/.e2e-%d-%u.%s", dmn.dir, (int)getpid(), ++seq, what);
}

/* Runs argv with stdout (and stderr) captured into out. Returns the exit
 * status, -1 when it did not finish in 30 s. */
static int run_capture(const char *const argv[], char *out, size_t size)
{
    char path[EM_TEST_PATH_MAX];
    tmp_path(path, sizeof(path), "out");
    pid_t pid = em_test_spawn(argv, path);
    int rc = pid > 0 ? em_test_wait(pid, 30000) : -1;
    if (rc == -1 && pid > 0)
        em_test_stop(pid);
    if (out != NULL && size > 0 && read_whole(path, out, size) < 0)
        out[0] = '\0';
    unlink(path);
    return rc;
}

/*
 * One request with curl whose header lines are given whole (for malformed
 * Authorization headers the harness cannot send). Returns the HTTP status or
 * -1; the body goes to out.
 */
static int raw_request(const char *headers, const char *method, const char *path, char *out,
                       size_t size)
{
    char hdr[EM_TEST_PATH_MAX], bodyf[EM_TEST_PATH_MAX], url[EM_TEST_PATH_MAX];
    tmp_path(hdr, sizeof(hdr), "hdr");
    tmp_path(bodyf, sizeof(bodyf), "body");
    FILE *f = fopen(hdr, "w");
    if (f == NULL)
        return -1;
    fputs(headers, f);
    fclose(f);
    char hdr_arg[EM_TEST_PATH_MAX + 2];
    snprintf(hdr_arg, sizeof(hdr_arg), "@%s", hdr);
    snprintf(url, sizeof(url), "%s%s", dmn.url, path);
    const char *argv[] = {"curl", "-s",           "--max-time", "20",    "--cacert", dmn.ca,
                          "-X",   method,         "-H",         hdr_arg, "-o",       bodyf,
                          "-w",   "%{http_code}", url,          NULL};
    char code[64];
    int rc = run_capture(argv, code, sizeof(code));
    unlink(hdr);
    if (out != NULL && size > 0 && read_whole(bodyf, out, size) < 0)
        out[0] = '\0';
    unlink(bodyf);
    if (rc != 0)
        return -1;
    long v = strtol(code, NULL, 10);
    return v > 0 && v < 600 ? (int)v : -1;
}

/* ---- JSON answers --------------------------------------------------------- */

typedef struct answer {
    int status;
    char *text;  /* the raw body */
    cJSON *json; /* parsed body, NULL when not JSON */
} answer_t;

static void answer_free(answer_t *a)
{
    em_test_untrack(a->text, a->json);
    free(a->text);
    cJSON_Delete(a->json);
    memset(a, 0, sizeof(*a));
}

static answer_t call(const char *key, const char *method, const char *path, const char *body)
{
    answer_t a = {0};
    a.text = malloc(BODY_MAX);
    assert_non_null(a.text);
    a.status = em_test_daemon_request(&dmn, key, method, path, body, a.text, BODY_MAX);
    a.json = cJSON_Parse(a.text);
    em_test_track(a.text, a.json);
    return a;
}

/* With a client certificate (cert, key PEM files) and no bearer credential. */
static answer_t call_cert(const char *cert, const char *key, const char *method, const char *path,
                          const char *body)
{
    answer_t a = {0};
    a.text = malloc(BODY_MAX);
    assert_non_null(a.text);
    a.status =
        em_test_daemon_request_cert(&dmn, cert, key, NULL, method, path, body, a.text, BODY_MAX);
    a.json = cJSON_Parse(a.text);
    em_test_track(a.text, a.json);
    return a;
}

/* Who calls in device_matrix: a bearer credential, or a certificate. */
typedef struct caller {
    const char *bearer;
    const char *cert, *key;
} caller_t;

static answer_t call_as(const caller_t *c, const char *method, const char *path, const char *body)
{
    if (c->cert != NULL)
        return call_cert(c->cert, c->key, method, path, body);
    return call(c->bearer, method, path, body);
}

static const cJSON *data_of(const answer_t *a)
{
    return cJSON_GetObjectItemCaseSensitive(a->json, "data");
}

static const char *str_of(const cJSON *obj, const char *name)
{
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(obj, name);
    return cJSON_IsString(v) ? v->valuestring : NULL;
}

/* The message every 401 carries, learnt from the first one; each later 401
 * must carry the very same. */
static char msg_401[256];
static char msg_403[256];

/* Asserts an error answer: status, {"success":false,"message","errorCode"}
 * and, for 401/403, the one fixed message of that status. */
static void expect_error(const answer_t *a, int status, const char *code)
{
    if (a->status != status)
        fail_msg("expected %d, got %d: %.400s", status, a->status, a->text);
    assert_non_null(a->json);
    assert_true(cJSON_IsFalse(cJSON_GetObjectItemCaseSensitive(a->json, "success")));
    const char *msg = str_of(a->json, "message");
    const char *ec = str_of(a->json, "errorCode");
    assert_non_null(msg);
    assert_non_null(ec);
    assert_true(msg[0] != '\0');
    assert_string_equal(ec, code);
    char *fixed = status == 401 ? msg_401 : status == 403 ? msg_403 : NULL;
    if (fixed != NULL) {
        if (fixed[0] == '\0')
            snprintf(fixed, sizeof(msg_401), "%s", msg);
        assert_string_equal(msg, fixed);
    }
}

static void expect_401(const answer_t *a)
{
    expect_error(a, 401, "authentication");
}

static void expect_403(const answer_t *a)
{
    expect_error(a, 403, "permission_denied");
}

/* Asserts status (printing the body when it differs). */
static void expect_status(const answer_t *a, int status)
{
    if (a->status != status)
        fail_msg("expected %d, got %d: %.400s", status, a->status, a->text);
}

/* ---- objects made with the admin key ------------------------------------ */

static void make_device(const char *id)
{
    char body[256];
    snprintf(body, sizeof(body), "{\"id\":\"%s\",\"name\":\"Device %s\",\"type\":\"sensor\"}", id,
             id);
    answer_t a = call(dmn.admin_key, "POST", "/api/v1/devices", body);
    expect_status(&a, 201);
    answer_free(&a);
}

/* Creates a key (role, optional device) with the admin key; writes the key
 * into key (EM_TEST_DAEMON_KEY_MAX) and its id into key_id (32 bytes). */
static void make_key(const char *name, const char *role, const char *device, char *key,
                     char *key_id)
{
    char body[256];
    if (device != NULL)
        snprintf(body, sizeof(body), "{\"name\":\"%s\",\"role\":\"%s\",\"deviceId\":\"%s\"}", name,
                 role, device);
    else
        snprintf(body, sizeof(body), "{\"name\":\"%s\",\"role\":\"%s\"}", name, role);
    answer_t a = call(dmn.admin_key, "POST", "/api/v1/keys", body);
    expect_status(&a, 201);
    const char *k = str_of(data_of(&a), "key");
    const char *id = str_of(data_of(&a), "keyId");
    assert_non_null(k);
    assert_non_null(id);
    assert_int_equal(strlen(k), 52);
    assert_memory_equal(k, "iot_", 4);
    snprintf(key, EM_TEST_DAEMON_KEY_MAX, "%s", k);
    if (key_id != NULL)
        snprintf(key_id, 32, "%s", id);
    answer_free(&a);
}

/* The number of API keys the admin sees. */
static int count_keys(void)
{
    answer_t a = call(dmn.admin_key, "GET", "/api/v1/keys", NULL);
    expect_status(&a, 200);
    assert_true(cJSON_IsArray(data_of(&a)));
    int n = cJSON_GetArraySize(data_of(&a));
    answer_free(&a);
    return n;
}

/* The number of commands stored for device id. */
static int count_commands(const char *id)
{
    char path[256];
    snprintf(path, sizeof(path), "/api/v1/devices/%s/commands", id);
    answer_t a = call(dmn.admin_key, "GET", path, NULL);
    expect_status(&a, 200);
    assert_true(cJSON_IsArray(data_of(&a)));
    int n = cJSON_GetArraySize(data_of(&a));
    answer_free(&a);
    return n;
}

static void expect_no_device(const char *id)
{
    char path[256];
    snprintf(path, sizeof(path), "/api/v1/devices/%s", id);
    answer_t a = call(dmn.admin_key, "GET", path, NULL);
    expect_error(&a, 404, "device_not_found");
    answer_free(&a);
}

/* The device's name as the admin reads it (into name, 128 bytes). */
static void device_name(const char *id, char *name)
{
    char path[256];
    snprintf(path, sizeof(path), "/api/v1/devices/%s", id);
    answer_t a = call(dmn.admin_key, "GET", path, NULL);
    expect_status(&a, 200);
    const char *n = str_of(data_of(&a), "name");
    assert_non_null(n);
    snprintf(name, 128, "%s", n);
    answer_free(&a);
}

/* ---- tokens, forged with python3 + PyJWT -------------------------------- */

/*
 * mode: "es256" (signed with the daemon's key), "other" (a fresh P-256 key),
 * "none" (alg none, empty signature), "hs256pub" (HS256 keyed with the
 * daemon's public key in PEM: the algorithm-confusion attack), "decode"
 * (arg is a token: prints its claims). arg: the claims as JSON.
 */
static const char PY_MINT[] =
    "import sys, json, base64, hmac, hashlib, jwt\n"
    "from cryptography.hazmat.primitives import serialization\n"
    "from cryptography.hazmat.primitives.asymmetric import ec\n"
    "mode, keyfile, arg = sys.argv[1], sys.argv[2], sys.argv[3]\n"
    "def b64(b):\n"
    "    return base64.urlsafe_b64encode(b).rstrip(b'=').decode()\n"
    "def unsigned(alg, claims):\n"
    "    h = b64(json.dumps({'alg': alg, 'typ': 'JWT'}).encode())\n"
    "    return h + '.' + b64(json.dumps(claims).encode())\n"
    "if mode == 'decode':\n"
    "    print(json.dumps(jwt.decode(arg, options={'verify_signature': False})))\n"
    "    sys.exit(0)\n"
    "claims = json.loads(arg)\n"
    "if mode == 'es256':\n"
    "    print(jwt.encode(claims, open(keyfile, 'rb').read(), algorithm='ES256'))\n"
    "elif mode == 'other':\n"
    "    k = ec.generate_private_key(ec.SECP256R1())\n"
    "    print(jwt.encode(claims, k, algorithm='ES256'))\n"
    "elif mode == 'none':\n"
    "    print(unsigned('none', claims) + '.')\n"
    "elif mode == 'hs256pub':\n"
    "    k = serialization.load_pem_private_key(open(keyfile, 'rb').read(), None)\n"
    "    pub = k.public_key().public_bytes(serialization.Encoding.PEM,\n"
    "        serialization.PublicFormat.SubjectPublicKeyInfo)\n"
    "    m = unsigned('HS256', claims)\n"
    "    print(m + '.' + b64(hmac.new(pub, m.encode(), hashlib.sha256).digest()))\n";

/* Runs PY_MINT; the single output line goes to out (trailing newline cut). */
static void python_mint(const char *mode, const char *arg, char *out, size_t size)
{
    const char *argv[] = {PYTHON, "-c", PY_MINT, mode, jwt_key, arg, NULL};
    int rc = run_capture(argv, out, size);
    if (rc != 0)
        fail_msg("python3 %s failed (%d): %s", mode, rc, out);
    out[strcspn(out, "\r\n")] = '\0';
}

/* Claims for sub/role (device may be NULL) with exp = now + exp_in, and iss
 * and aud as given (NULL: the daemon's). */
static void claims(char *buf, size_t size, const char *sub, const char *role, const char *device,
                   long exp_in, const char *iss, const char *aud)
{
    long now = (long)time(NULL);
    static unsigned jti;
    /* Issued a little before now (an expired token was issued before it
     * expired); nbf = iat. */
    long iat = (exp_in < 600 ? now + exp_in - 600 : now) - 5;
    char dev[160] = "";
    if (device != NULL)
        snprintf(dev, sizeof(dev), ",\"device\":\"%s\"", device);
    snprintf(buf, size,
             "{\"sub\":\"%s\",\"role\":\"%s\"%s,\"iss\":\"%s\",\"aud\":\"%s\",\"iat\":%ld,"
             "\"nbf\":%ld,\"exp\":%ld,\"jti\":\"e2e-%d-%u\"}",
             sub, role, dev, iss != NULL ? iss : issuer, aud != NULL ? aud : audience, iat, iat,
             now + exp_in, (int)getpid(), ++jti);
}

static void mint(const char *mode, const char *claims_json, char *tok, size_t size)
{
    python_mint(mode, claims_json, tok, size);
    assert_true(strchr(tok, '.') != NULL);
    remember_secret(tok);
}

/* ---- set-up -------------------------------------------------------------- */

/* The daemon seals its JWT key with its keystore key file (DATA/keystore.key):
 * the forging tests need the key itself, as an attacker who stole both files
 * would. Checks that the file on disk is sealed, then writes the PEM to a 0600
 * file in the daemon's directory and points jwt_key at it. */
static int unseal_jwt_key(void)
{
    unsigned char head[16];
    size_t len = 0;
    FILE *in = fopen(jwt_key, "rb");
    if (in != NULL) {
        len = fread(head, 1, sizeof(head), in);
        fclose(in);
    }
    if (!em_keystore_is_sealed(head, len)) {
        fprintf(stderr, "JWT key %s is not sealed in a keystore\n", jwt_key);
        return -1;
    }
    char ks[EM_TEST_PATH_MAX + 16];
    snprintf(ks, sizeof(ks), "%s/keystore.key", dmn.data_dir);
    em_keystore_secret_t *secret = NULL;
    EVP_PKEY *key = NULL;
    em_error_t err;
    em_error_clear(&err);
    if (em_keystore_secret_key_file(ks, &secret, &err) != EM_OK ||
        em_key_load(jwt_key, secret, NULL, false, &key, &err) != EM_OK) {
        fprintf(stderr, "cannot unseal %s: %s\n", jwt_key, err.message);
        em_keystore_secret_free(secret);
        return -1;
    }
    em_keystore_secret_free(secret);
    snprintf(jwt_key, sizeof(jwt_key), "%s/jwt-unsealed.pem", dmn.dir);
    FILE *f = NULL;
    int fd = open(jwt_key, O_WRONLY | O_CREAT | O_TRUNC, 0600);
    if (fd >= 0)
        f = fdopen(fd, "w");
    int rc = f != NULL && PEM_write_PrivateKey(f, key, NULL, NULL, 0, NULL, NULL) == 1 ? 0 : -1;
    if (f != NULL)
        fclose(f);
    else if (fd >= 0)
        close(fd);
    EVP_PKEY_free(key);
    if (rc != 0)
        fprintf(stderr, "cannot write %s\n", jwt_key);
    return rc;
}

static int group_setup(void **state)
{
    (void)state;
    if (em_test_broker_start(&broker, "tls") != 0)
        return -1;
    em_test_daemon_options_t o = {.extra_config = EXTRA_CONFIG};
    if (em_test_daemon_start(&dmn, &broker, &o) != 0)
        return -1;
    if (dmn.admin_key[0] == '\0') {
        fprintf(stderr, "no bootstrap admin key in %s\n", dmn.key_file);
        return -1;
    }
    snprintf(jwt_key, sizeof(jwt_key), "%s/%s", dmn.data_dir, JWT_KEY_NAME);
    struct stat st;
    if (stat(jwt_key, &st) != 0) {
        fprintf(stderr, "no JWT key at %s\n", jwt_key);
        return -1;
    }
    if ((st.st_mode & 077) != 0) {
        fprintf(stderr, "JWT key %s is readable by others (mode %o)\n", jwt_key,
                (unsigned)(st.st_mode & 0777));
        return -1;
    }
    if (unseal_jwt_key() != 0)
        return -1;
    /* The daemon's issuer and audience, read from a token it issued. */
    char *buf = malloc(BODY_MAX);
    if (buf == NULL)
        return -1;
    int status =
        em_test_daemon_request(&dmn, dmn.admin_key, "POST", "/api/v1/tokens", "{}", buf, BODY_MAX);
    cJSON *j = cJSON_Parse(buf);
    const char *tok = str_of(cJSON_GetObjectItemCaseSensitive(j, "data"), "token");
    if (status != 201 || tok == NULL) {
        fprintf(stderr, "POST /api/v1/tokens: %d %.300s\n", status, buf);
        cJSON_Delete(j);
        free(buf);
        return -1;
    }
    const char *argv[] = {PYTHON, "-c", PY_MINT, "decode", "-", tok, NULL};
    int rc = run_capture(argv, buf, BODY_MAX);
    cJSON_Delete(j);
    j = rc == 0 ? cJSON_Parse(buf) : NULL;
    const char *iss = str_of(j, "iss"), *aud = str_of(j, "aud");
    if (iss == NULL || aud == NULL) {
        fprintf(stderr, "cannot read iss and aud from the daemon's token: %.300s\n", buf);
        cJSON_Delete(j);
        free(buf);
        return -1;
    }
    snprintf(issuer, sizeof(issuer), "%s", iss);
    snprintf(audience, sizeof(audience), "%s", aud);
    cJSON_Delete(j);
    free(buf);
    return 0;
}

static int group_teardown(void **state)
{
    (void)state;
    em_test_daemon_cleanup(&dmn);
    em_test_broker_cleanup(&broker);
    for (size_t i = 0; i < nsecrets; i++)
        free(secrets[i]);
    nsecrets = 0;
    return 0;
}

/* ---- 401: who are you? ---------------------------------------------------- */

static void test_no_credentials_is_401(void **state)
{
    (void)state;
    answer_t a = call(NULL, "GET", "/api/v1/devices", NULL);
    expect_401(&a);
    answer_free(&a);
    /* A write without credentials changes nothing either. */
    a = call(NULL, "POST", "/api/v1/devices",
             "{\"id\":\"sec-nocred\",\"name\":\"x\",\"type\":\"sensor\"}");
    expect_401(&a);
    answer_free(&a);
    expect_no_device("sec-nocred");
}

static void test_healthz_needs_no_credentials(void **state)
{
    (void)state;
    answer_t a = call(NULL, "GET", "/healthz", NULL);
    expect_status(&a, 200);
    assert_string_equal(str_of(a.json, "status"), "ok");
    answer_free(&a);
}

static void test_metrics_on_the_api_listener_needs_credentials(void **state)
{
    (void)state;
    answer_t a = call(NULL, "GET", "/metrics", NULL);
    expect_401(&a);
    answer_free(&a);
}

static void test_unknown_key_of_the_right_shape_is_401(void **state)
{
    (void)state;
    /* "iot_" + 48 lower-case hex digits, as a real key, but never issued. */
    const char *key = "iot_0123456789abcdef0123456789abcdef0123456789abcdef";
    remember_secret(key);
    answer_t a = call(key, "GET", "/api/v1/devices", NULL);
    expect_401(&a);
    answer_free(&a);
    a = call(key, "POST", "/api/v1/devices",
             "{\"id\":\"sec-unknown\",\"name\":\"x\",\"type\":\"sensor\"}");
    expect_401(&a);
    answer_free(&a);
    expect_no_device("sec-unknown");
}

static void test_altered_admin_key_is_401(void **state)
{
    (void)state;
    /* The real admin key with its last digit changed. */
    char key[EM_TEST_DAEMON_KEY_MAX];
    snprintf(key, sizeof(key), "%s", dmn.admin_key);
    size_t n = strlen(key);
    key[n - 1] = key[n - 1] == '0' ? '1' : '0';
    remember_secret(key);
    answer_t a = call(key, "GET", "/api/v1/keys", NULL);
    expect_401(&a);
    answer_free(&a);
}

static void test_malformed_authorization_headers_are_401(void **state)
{
    (void)state;
    char auth[512];
    const char *bad[] = {
        "Authorization: Basic YWRtaW46YWRtaW4=\n", /* admin:admin */
        "Authorization: Bearer\n",
        "Authorization: Bearer \n",
        "Authorization: bearer-iot_0123\n",
        "Authorization: Bearer iot_0123\n", /* too short */
        "Authorization: Bearer iot_0123456789ABCDEF0123456789ABCDEF0123456789ABCDEF\n", /* upper */
        "Authorization: Bearer iot_0123456789abcdef0123456789abcdef0123456789abcdefff\n", /* long */
        "Authorization: Bearer a.b.c\n",
        "Authorization: Bearer ....\n",
        NULL,
    };
    char *out = malloc(BODY_MAX);
    assert_non_null(out);
    for (int i = 0; bad[i] != NULL; i++) {
        answer_t a = {0};
        a.status = raw_request(bad[i], "GET", "/api/v1/devices", out, BODY_MAX);
        a.text = strdup(out);
        a.json = cJSON_Parse(out);
        em_test_track(a.text, a.json);
        if (a.status != 401)
            fail_msg("%s: expected 401, got %d: %.300s", bad[i], a.status, out);
        expect_401(&a);
        answer_free(&a);
    }
    /* Two Authorization headers, one of them the real admin key: refused
     * rather than guessed. */
    snprintf(auth, sizeof(auth),
             "Authorization: Bearer iot_0123456789abcdef0123456789abcdef0123456789abcdef\n"
             "Authorization: Bearer %s\n",
             dmn.admin_key);
    int status = raw_request(auth, "GET", "/api/v1/keys", out, BODY_MAX);
    if (status != 401 && status != 400)
        fail_msg("two Authorization headers: expected 401 or 400, got %d: %.300s", status, out);
    free(out);
}

static void test_revoked_key_is_401_at_once(void **state)
{
    (void)state;
    char key[EM_TEST_DAEMON_KEY_MAX], id[32], path[128];
    make_key("sec-revoked", "operator", NULL, key, id);
    remember_secret(key);
    /* It works, and is cached by the daemon, before the revocation. */
    answer_t a = call(key, "GET", "/api/v1/whoami", NULL);
    expect_status(&a, 200);
    answer_free(&a);
    snprintf(path, sizeof(path), "/api/v1/keys/%s", id);
    a = call(dmn.admin_key, "DELETE", path, NULL);
    expect_status(&a, 200);
    answer_free(&a);
    a = call(key, "GET", "/api/v1/whoami", NULL);
    expect_401(&a);
    answer_free(&a);
    a = call(key, "POST", "/api/v1/devices",
             "{\"id\":\"sec-revoked-dev\",\"name\":\"x\",\"type\":\"sensor\"}");
    expect_401(&a);
    answer_free(&a);
    expect_no_device("sec-revoked-dev");
    /* The list shows it revoked. */
    a = call(dmn.admin_key, "GET", "/api/v1/keys", NULL);
    expect_status(&a, 200);
    bool found = false;
    const cJSON *k;
    cJSON_ArrayForEach(k, data_of(&a))
    {
        if (str_of(k, "keyId") != NULL && strcmp(str_of(k, "keyId"), id) == 0) {
            found = true;
            assert_non_null(str_of(k, "revokedAt"));
        }
    }
    assert_true(found);
    answer_free(&a);
}

/* ---- JWTs ------------------------------------------------------------------ */

static void test_token_minted_with_the_daemons_key_is_accepted(void **state)
{
    (void)state;
    /* The positive control for the forged tokens below: the same claims,
     * correctly signed, get in. */
    char c[1024], tok[2048];
    claims(c, sizeof(c), "e2e-admin", "admin", NULL, 600, NULL, NULL);
    mint("es256", c, tok, sizeof(tok));
    answer_t a = call(tok, "GET", "/api/v1/whoami", NULL);
    expect_status(&a, 200);
    assert_string_equal(str_of(data_of(&a), "role"), "admin");
    answer_free(&a);
}

static void test_token_from_post_tokens_is_accepted(void **state)
{
    (void)state;
    answer_t a = call(dmn.admin_key, "POST", "/api/v1/tokens", "{\"ttl\":120}");
    expect_status(&a, 201);
    const char *tok = str_of(data_of(&a), "token");
    assert_non_null(tok);
    remember_secret(tok);
    answer_t b = call(tok, "GET", "/api/v1/whoami", NULL);
    expect_status(&b, 200);
    assert_string_equal(str_of(data_of(&b), "method"), "jwt");
    answer_free(&b);
    answer_free(&a);
}

/* Asserts that tok is refused with 401, for a read and for a write. */
static void expect_token_refused(const char *tok, const char *device_to_create)
{
    answer_t a = call(tok, "GET", "/api/v1/whoami", NULL);
    expect_401(&a);
    answer_free(&a);
    char body[256];
    snprintf(body, sizeof(body), "{\"id\":\"%s\",\"name\":\"x\",\"type\":\"sensor\"}",
             device_to_create);
    a = call(tok, "POST", "/api/v1/devices", body);
    expect_401(&a);
    answer_free(&a);
    expect_no_device(device_to_create);
}

static void test_expired_jwt_is_401(void **state)
{
    (void)state;
    char c[1024], tok[2048];
    claims(c, sizeof(c), "e2e-admin", "admin", NULL, -300, NULL, NULL);
    mint("es256", c, tok, sizeof(tok));
    expect_token_refused(tok, "sec-jwt-expired");
}

static void test_jwt_for_another_audience_is_401(void **state)
{
    (void)state;
    char c[1024], tok[2048];
    claims(c, sizeof(c), "e2e-admin", "admin", NULL, 600, NULL, "another-api");
    mint("es256", c, tok, sizeof(tok));
    expect_token_refused(tok, "sec-jwt-aud");
}

static void test_jwt_from_another_issuer_is_401(void **state)
{
    (void)state;
    char c[1024], tok[2048];
    claims(c, sizeof(c), "e2e-admin", "admin", NULL, 600, "mallory", NULL);
    mint("es256", c, tok, sizeof(tok));
    expect_token_refused(tok, "sec-jwt-iss");
}

static void test_jwt_with_alg_none_is_401(void **state)
{
    (void)state;
    char c[1024], tok[2048];
    claims(c, sizeof(c), "e2e-admin", "admin", NULL, 600, NULL, NULL);
    mint("none", c, tok, sizeof(tok));
    expect_token_refused(tok, "sec-jwt-none");
}

static void test_jwt_signed_by_another_key_is_401(void **state)
{
    (void)state;
    char c[1024], tok[2048];
    claims(c, sizeof(c), "e2e-admin", "admin", NULL, 600, NULL, NULL);
    mint("other", c, tok, sizeof(tok));
    expect_token_refused(tok, "sec-jwt-other");
}

static void test_jwt_hs256_keyed_with_the_public_key_is_401(void **state)
{
    (void)state;
    char c[1024], tok[2048];
    claims(c, sizeof(c), "e2e-admin", "admin", NULL, 600, NULL, NULL);
    mint("hs256pub", c, tok, sizeof(tok));
    expect_token_refused(tok, "sec-jwt-hs256");
}

static void test_jwt_with_a_tampered_payload_is_401(void **state)
{
    (void)state;
    /* A viewer's genuine token whose payload is swapped for an admin's. */
    char cv[1024], ca[1024], viewer[2048], admin[2048], forged[4096];
    claims(cv, sizeof(cv), "e2e-viewer", "viewer", NULL, 600, NULL, NULL);
    claims(ca, sizeof(ca), "e2e-viewer", "admin", NULL, 600, NULL, NULL);
    mint("es256", cv, viewer, sizeof(viewer));
    mint("other", ca, admin, sizeof(admin));
    const char *v1 = strchr(viewer, '.'), *v2 = strrchr(viewer, '.');
    const char *a1 = strchr(admin, '.'), *a2 = strrchr(admin, '.');
    assert_true(v1 != NULL && v2 != NULL && a1 != NULL && a2 != NULL);
    snprintf(forged, sizeof(forged), "%.*s%.*s%s", (int)(v1 - viewer), viewer, (int)(a2 - a1), a1,
             v2);
    remember_secret(forged);
    expect_token_refused(forged, "sec-jwt-tamper");
}

/* ---- 403: not yours to do ------------------------------------------------- */

static void test_viewer_cannot_create_a_device(void **state)
{
    (void)state;
    char key[EM_TEST_DAEMON_KEY_MAX];
    make_key("sec-viewer-1", "viewer", NULL, key, NULL);
    answer_t a = call(key, "POST", "/api/v1/devices",
                      "{\"id\":\"sec-viewer-dev\",\"name\":\"x\",\"type\":\"sensor\"}");
    expect_403(&a);
    answer_free(&a);
    expect_no_device("sec-viewer-dev");
    /* ... but may read. */
    a = call(key, "GET", "/api/v1/devices", NULL);
    expect_status(&a, 200);
    answer_free(&a);
}

static void test_viewer_cannot_change_or_delete_a_device(void **state)
{
    (void)state;
    char key[EM_TEST_DAEMON_KEY_MAX], before[128], after[128];
    make_device("sec-viewer-target");
    make_key("sec-viewer-2", "viewer", NULL, key, NULL);
    device_name("sec-viewer-target", before);
    answer_t a = call(key, "PATCH", "/api/v1/devices/sec-viewer-target", "{\"name\":\"owned\"}");
    expect_403(&a);
    answer_free(&a);
    a = call(key, "DELETE", "/api/v1/devices/sec-viewer-target", NULL);
    expect_403(&a);
    answer_free(&a);
    device_name("sec-viewer-target", after);
    assert_string_equal(before, after);
}

static void test_viewer_cannot_send_a_command(void **state)
{
    (void)state;
    char key[EM_TEST_DAEMON_KEY_MAX];
    make_device("sec-viewer-cmd");
    make_key("sec-viewer-3", "viewer", NULL, key, NULL);
    answer_t a =
        call(key, "POST", "/api/v1/devices/sec-viewer-cmd/commands", "{\"type\":\"restart\"}");
    expect_403(&a);
    answer_free(&a);
    assert_int_equal(count_commands("sec-viewer-cmd"), 0);
}

static void test_viewer_cannot_create_a_key(void **state)
{
    (void)state;
    char key[EM_TEST_DAEMON_KEY_MAX];
    make_key("sec-viewer-4", "viewer", NULL, key, NULL);
    int before = count_keys();
    answer_t a =
        call(key, "POST", "/api/v1/keys", "{\"name\":\"sec-escalate\",\"role\":\"admin\"}");
    expect_403(&a);
    answer_free(&a);
    a = call(key, "GET", "/api/v1/keys", NULL);
    expect_403(&a);
    answer_free(&a);
    assert_int_equal(count_keys(), before);
}

static void test_operator_cannot_create_a_key(void **state)
{
    (void)state;
    char key[EM_TEST_DAEMON_KEY_MAX];
    make_key("sec-operator-1", "operator", NULL, key, NULL);
    int before = count_keys();
    answer_t a =
        call(key, "POST", "/api/v1/keys", "{\"name\":\"sec-escalate-2\",\"role\":\"operator\"}");
    expect_403(&a);
    answer_free(&a);
    assert_int_equal(count_keys(), before);
}

static void test_operator_cannot_revoke_a_key(void **state)
{
    (void)state;
    char op[EM_TEST_DAEMON_KEY_MAX], victim[EM_TEST_DAEMON_KEY_MAX], id[32], path[128];
    make_key("sec-operator-2", "operator", NULL, op, NULL);
    make_key("sec-victim", "viewer", NULL, victim, id);
    snprintf(path, sizeof(path), "/api/v1/keys/%s", id);
    answer_t a = call(op, "DELETE", path, NULL);
    expect_403(&a);
    answer_free(&a);
    a = call(victim, "GET", "/api/v1/whoami", NULL);
    expect_status(&a, 200);
    answer_free(&a);
}

static void test_operator_may_create_a_device(void **state)
{
    (void)state;
    /* The matrix's other side: the operator's writes are allowed. */
    char key[EM_TEST_DAEMON_KEY_MAX];
    make_key("sec-operator-3", "operator", NULL, key, NULL);
    answer_t a = call(key, "POST", "/api/v1/devices",
                      "{\"id\":\"sec-op-dev\",\"name\":\"x\",\"type\":\"sensor\"}");
    expect_status(&a, 201);
    answer_free(&a);
    a = call(dmn.admin_key, "GET", "/api/v1/devices/sec-op-dev", NULL);
    expect_status(&a, 200);
    answer_free(&a);
}

/* ---- the device role: its own device, read only ---------------------------- */

/* Runs the device matrix with credential cred for device "own" (another
 * device "other" exists). */
static void device_matrix(const caller_t *cred, const char *own, const char *other)
{
    char path[256], before[128], after[128];
    snprintf(path, sizeof(path), "/api/v1/devices/%s", own);
    answer_t a = call_as(cred, "GET", path, NULL);
    expect_status(&a, 200);
    assert_string_equal(str_of(data_of(&a), "id"), own);
    answer_free(&a);

    snprintf(path, sizeof(path), "/api/v1/devices/%s/commands", own);
    a = call_as(cred, "GET", path, NULL);
    expect_status(&a, 200);
    answer_free(&a);

    snprintf(path, sizeof(path), "/api/v1/devices/%s", other);
    a = call_as(cred, "GET", path, NULL);
    expect_403(&a);
    answer_free(&a);
    snprintf(path, sizeof(path), "/api/v1/devices/%s/status/history", other);
    a = call_as(cred, "GET", path, NULL);
    expect_403(&a);
    answer_free(&a);
    snprintf(path, sizeof(path), "/api/v1/devices/%s/telemetry", other);
    a = call_as(cred, "GET", path, NULL);
    expect_403(&a);
    answer_free(&a);

    a = call_as(cred, "GET", "/api/v1/whoami", NULL);
    expect_status(&a, 200);
    assert_string_equal(str_of(data_of(&a), "role"), "device");
    assert_string_equal(str_of(data_of(&a), "deviceId"), own);
    answer_free(&a);

    /* Everything that is not its own device: the device role is not above
     * the others, whatever its number. */
    static const char *const reads[] = {"/api/v1/devices", "/api/v1/users", "/api/v1/keys",
                                        "/metrics", NULL};
    for (int i = 0; reads[i] != NULL; i++) {
        a = call_as(cred, "GET", reads[i], NULL);
        expect_403(&a);
        answer_free(&a);
    }
    a = call_as(cred, "POST", "/api/v1/tokens", "{}");
    expect_403(&a);
    answer_free(&a);
    a = call_as(cred, "POST", "/api/v1/users", "{\"name\":\"dev-user\",\"role\":\"admin\"}");
    expect_403(&a);
    answer_free(&a);
    a = call_as(cred, "GET", "/api/v1/groups", NULL);
    expect_403(&a);
    answer_free(&a);
    a = call_as(cred, "GET", "/api/v1/events", NULL);
    expect_403(&a);
    answer_free(&a);
    a = call_as(cred, "GET", "/api/v1/commands", NULL);
    expect_403(&a);
    answer_free(&a);

    /* Writes: none, not even on its own device. */
    device_name(own, before);
    snprintf(path, sizeof(path), "/api/v1/devices/%s", own);
    a = call_as(cred, "PATCH", path, "{\"name\":\"mine now\"}");
    expect_403(&a);
    answer_free(&a);
    a = call_as(cred, "DELETE", path, NULL);
    expect_403(&a);
    answer_free(&a);
    device_name(own, after);
    assert_string_equal(before, after);

    int cmds_own = count_commands(own), cmds_other = count_commands(other);
    snprintf(path, sizeof(path), "/api/v1/devices/%s/commands", own);
    a = call_as(cred, "POST", path, "{\"type\":\"restart\"}");
    expect_403(&a);
    answer_free(&a);
    snprintf(path, sizeof(path), "/api/v1/devices/%s/commands", other);
    a = call_as(cred, "POST", path, "{\"type\":\"restart\"}");
    expect_403(&a);
    answer_free(&a);
    assert_int_equal(count_commands(own), cmds_own);
    assert_int_equal(count_commands(other), cmds_other);

    char body[256];
    snprintf(body, sizeof(body), "{\"id\":\"%s-new\",\"name\":\"x\",\"type\":\"sensor\"}", own);
    a = call_as(cred, "POST", "/api/v1/devices", body);
    expect_403(&a);
    answer_free(&a);
    snprintf(path, sizeof(path), "%s-new", own);
    expect_no_device(path);

    a = call_as(cred, "POST", "/api/v1/groups", "{\"name\":\"device made\"}");
    expect_403(&a);
    answer_free(&a);
    a = call(dmn.admin_key, "GET", "/api/v1/groups/device%20made", NULL);
    expect_error(&a, 404, "group_not_found");
    answer_free(&a);

    int keys = count_keys();
    a = call_as(cred, "POST", "/api/v1/keys", "{\"name\":\"dev-escalate\",\"role\":\"admin\"}");
    expect_403(&a);
    answer_free(&a);
    assert_int_equal(count_keys(), keys);
}

static void test_device_key_reaches_only_its_own_device(void **state)
{
    (void)state;
    char key[EM_TEST_DAEMON_KEY_MAX];
    make_device("sec-dev-a");
    make_device("sec-dev-b");
    make_key("sec-dev-a-key", "device", "sec-dev-a", key, NULL);
    caller_t c = {.bearer = key};
    device_matrix(&c, "sec-dev-a", "sec-dev-b");
}

static void test_device_jwt_reaches_only_its_own_device(void **state)
{
    (void)state;
    char c[1024], tok[2048];
    make_device("sec-dev-c");
    make_device("sec-dev-d");
    claims(c, sizeof(c), "sec-dev-c", "device", "sec-dev-c", 600, NULL, NULL);
    mint("es256", c, tok, sizeof(tok));
    caller_t who = {.bearer = tok};
    device_matrix(&who, "sec-dev-c", "sec-dev-d");
}

static void test_device_certificate_reaches_only_its_own_device(void **state)
{
    (void)state;
    char cert[EM_TEST_PATH_MAX], key[EM_TEST_PATH_MAX];
    make_device("sec-dev-e");
    make_device("sec-dev-f");
    assert_int_equal(em_test_daemon_add_client(&dmn, "sec-dev-e", cert, key), 0);
    caller_t who = {.cert = cert, .key = key};
    device_matrix(&who, "sec-dev-e", "sec-dev-f");
}

static void test_certificate_of_an_unknown_identity_is_401(void **state)
{
    (void)state;
    /* Signed by the right CA, but its CN is neither a device nor a user. */
    char cert[EM_TEST_PATH_MAX], key[EM_TEST_PATH_MAX];
    assert_int_equal(em_test_daemon_add_client(&dmn, "sec-nobody", cert, key), 0);
    answer_t a = call_cert(cert, key, "GET", "/api/v1/whoami", NULL);
    expect_401(&a);
    answer_free(&a);
}

static void test_self_signed_certificate_claiming_a_device_is_refused(void **state)
{
    (void)state;
    /* A certificate for a registered device's CN that no trusted CA signed:
     * the handshake fails, or the request is 401; never the device. */
    make_device("sec-dev-g");
    char cert[EM_TEST_PATH_MAX], key[EM_TEST_PATH_MAX], cmd[4 * EM_TEST_PATH_MAX];
    snprintf(cert, sizeof(cert), "%s/forged.crt", dmn.dir);
    snprintf(key, sizeof(key), "%s/forged.key", dmn.dir);
    snprintf(cmd, sizeof(cmd),
             "openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 1 "
             "-subj /CN=sec-dev-g -keyout '%s' -out '%s' 2>/dev/null",
             key, cert);
    const char *argv[] = {"bash", "-c", cmd, NULL};
    assert_int_equal(em_test_run(argv), 0);
    answer_t a = call_cert(cert, key, "GET", "/api/v1/devices/sec-dev-g", NULL);
    if (a.status != -1)
        expect_401(&a);
    answer_free(&a);
}

static void test_device_jwt_for_an_unregistered_device_is_401(void **state)
{
    (void)state;
    char c[1024], tok[2048];
    claims(c, sizeof(c), "sec-ghost", "device", "sec-ghost", 600, NULL, NULL);
    mint("es256", c, tok, sizeof(tok));
    answer_t a = call(tok, "GET", "/api/v1/devices/sec-ghost", NULL);
    expect_401(&a);
    answer_free(&a);
}

/* Polls GET path with cred until it is refused (401 or 403), for at most
 * 10 s (the daemon may cache a device's state for a few seconds). */
static void expect_refused_soon(const char *cred, const char *path, const char *what)
{
    answer_t a = call(cred, "GET", path, NULL);
    for (int i = 0; i < 50 && a.status != 401 && a.status != 403; i++) {
        answer_free(&a);
        em_test_sleep_ms(200);
        a = call(cred, "GET", path, NULL);
    }
    if (a.status != 401 && a.status != 403)
        fail_msg("%s: still %d after 10 s: %.300s", what, a.status, a.text);
    expect_error(&a, a.status, a.status == 401 ? "authentication" : "permission_denied");
    answer_free(&a);
}

static void test_device_credentials_of_a_disabled_device_are_refused(void **state)
{
    (void)state;
    char key[EM_TEST_DAEMON_KEY_MAX], c[1024], tok[2048];
    make_device("sec-dev-h");
    make_key("sec-dev-h-key", "device", "sec-dev-h", key, NULL);
    claims(c, sizeof(c), "sec-dev-h", "device", "sec-dev-h", 600, NULL, NULL);
    mint("es256", c, tok, sizeof(tok));
    answer_t a = call(key, "GET", "/api/v1/devices/sec-dev-h", NULL);
    expect_status(&a, 200);
    answer_free(&a);
    a = call(tok, "GET", "/api/v1/devices/sec-dev-h", NULL);
    expect_status(&a, 200);
    answer_free(&a);
    a = call(dmn.admin_key, "PATCH", "/api/v1/devices/sec-dev-h", "{\"enabled\":false}");
    expect_status(&a, 200);
    answer_free(&a);
    expect_refused_soon(tok, "/api/v1/devices/sec-dev-h", "a disabled device's JWT");
    expect_refused_soon(key, "/api/v1/devices/sec-dev-h", "a disabled device's API key");
}

static void test_device_key_needs_a_device_id(void **state)
{
    (void)state;
    int before = count_keys();
    answer_t a = call(dmn.admin_key, "POST", "/api/v1/keys",
                      "{\"name\":\"sec-dev-nodev\",\"role\":\"device\"}");
    expect_status(&a, 400);
    assert_string_equal(str_of(a.json, "errorCode"), "validation");
    answer_free(&a);
    assert_int_equal(count_keys(), before);
}

/* ---- what the daemon remembers, and what it never writes down -------------- */

static void test_auth_failures_are_security_events(void **state)
{
    (void)state;
    const char *key = "iot_feedfacefeedfacefeedfacefeedfacefeedfacefeedface";
    remember_secret(key);
    answer_t a = call(key, "GET", "/api/v1/devices", NULL);
    expect_401(&a);
    answer_free(&a);
    a = call(dmn.admin_key, "GET", "/api/v1/events?kind=security&limit=1000", NULL);
    expect_status(&a, 200);
    assert_true(cJSON_IsArray(data_of(&a)));
    int auth_failures = 0;
    const cJSON *ev;
    cJSON_ArrayForEach(ev, data_of(&a))
    {
        assert_string_equal(str_of(ev, "kind"), "security");
        const char *type = str_of(ev, "type");
        if (type != NULL && strcmp(type, "auth_failure") == 0) {
            auth_failures++;
            const char *source = str_of(ev, "source");
            assert_non_null(source);
            assert_true(strncmp(source, "127.0.0.1", 9) == 0);
        }
    }
    if (auth_failures == 0)
        fail_msg("no auth_failure among the security events: %.600s", a.text);
    answer_free(&a);
}

static void test_forbidden_requests_are_security_events(void **state)
{
    (void)state;
    char key[EM_TEST_DAEMON_KEY_MAX];
    make_key("sec-viewer-5", "viewer", NULL, key, NULL);
    answer_t a = call(key, "DELETE", "/api/v1/keys/k_000000000000", NULL);
    expect_403(&a);
    answer_free(&a);
    a = call(dmn.admin_key, "GET", "/api/v1/events?kind=security&limit=1000", NULL);
    expect_status(&a, 200);
    bool found = false;
    const cJSON *ev;
    cJSON_ArrayForEach(ev, data_of(&a))
    {
        const char *type = str_of(ev, "type");
        if (type != NULL && strcmp(type, "auth_failure") != 0)
            found = true;
    }
    if (!found)
        fail_msg("no security event for a 403: %.600s", a.text);
    answer_free(&a);
}

/* The part of a secret that must never be written down: the whole of it, and
 * for API keys the 36 hex digits after the first 12 (the key id may be
 * derived from the beginning), for JWTs the signature. */
static void secret_parts(const char *s, const char **parts, size_t *nparts, char *buf, size_t size)
{
    *nparts = 0;
    parts[(*nparts)++] = s;
    if (strncmp(s, "iot_", 4) == 0 && strlen(s) == 52) {
        snprintf(buf, size, "%s", s + 16);
        parts[(*nparts)++] = buf;
    } else {
        const char *sig = strrchr(s, '.');
        if (sig != NULL && strlen(sig + 1) >= 16)
            parts[(*nparts)++] = sig + 1;
    }
}

static void test_presented_secrets_are_in_neither_events_nor_log(void **state)
{
    (void)state;
    /* Present a few more, of every kind, so this test stands alone. */
    const char *wrong = "iot_5ec2e75ec2e75ec2e75ec2e75ec2e75ec2e75ec2e75ec2";
    remember_secret(wrong);
    answer_t a = call(wrong, "GET", "/api/v1/devices", NULL);
    expect_401(&a);
    answer_free(&a);
    char c[1024], tok[2048];
    claims(c, sizeof(c), "e2e-admin", "admin", NULL, -60, NULL, NULL);
    mint("es256", c, tok, sizeof(tok));
    a = call(tok, "GET", "/api/v1/devices", NULL);
    expect_401(&a);
    answer_free(&a);
    remember_secret(dmn.admin_key);

    char *events = malloc(4 * BODY_MAX);
    char *log = malloc(16 * BODY_MAX);
    assert_non_null(events);
    assert_non_null(log);
    a = call(dmn.admin_key, "GET", "/api/v1/events?limit=1000", NULL);
    expect_status(&a, 200);
    snprintf(events, 4 * BODY_MAX, "%s", a.text);
    answer_free(&a);
    assert_true(read_whole(dmn.out, log, 16 * BODY_MAX) > 0);
    /* The log is where the daemon writes the reasons: it must have some. */
    assert_true(strstr(log, "401") != NULL || strstr(log, "auth") != NULL);

    for (size_t i = 0; i < nsecrets; i++) {
        const char *parts[3];
        size_t nparts;
        char buf[64];
        secret_parts(secrets[i], parts, &nparts, buf, sizeof(buf));
        for (size_t p = 0; p < nparts; p++) {
            if (strstr(events, parts[p]) != NULL)
                fail_msg("a presented secret is in the events: %.24s...", parts[p]);
            if (strstr(log, parts[p]) != NULL)
                fail_msg("a presented secret is in the daemon's log: %.24s...", parts[p]);
        }
    }
    free(events);
    free(log);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_teardown(test_no_credentials_is_401, em_test_free_tracked),
        cmocka_unit_test_teardown(test_healthz_needs_no_credentials, em_test_free_tracked),
        cmocka_unit_test_teardown(test_metrics_on_the_api_listener_needs_credentials,
                                  em_test_free_tracked),
        cmocka_unit_test_teardown(test_unknown_key_of_the_right_shape_is_401, em_test_free_tracked),
        cmocka_unit_test_teardown(test_altered_admin_key_is_401, em_test_free_tracked),
        cmocka_unit_test_teardown(test_malformed_authorization_headers_are_401,
                                  em_test_free_tracked),
        cmocka_unit_test_teardown(test_revoked_key_is_401_at_once, em_test_free_tracked),
        cmocka_unit_test_teardown(test_token_minted_with_the_daemons_key_is_accepted,
                                  em_test_free_tracked),
        cmocka_unit_test_teardown(test_token_from_post_tokens_is_accepted, em_test_free_tracked),
        cmocka_unit_test_teardown(test_expired_jwt_is_401, em_test_free_tracked),
        cmocka_unit_test_teardown(test_jwt_for_another_audience_is_401, em_test_free_tracked),
        cmocka_unit_test_teardown(test_jwt_from_another_issuer_is_401, em_test_free_tracked),
        cmocka_unit_test_teardown(test_jwt_with_alg_none_is_401, em_test_free_tracked),
        cmocka_unit_test_teardown(test_jwt_signed_by_another_key_is_401, em_test_free_tracked),
        cmocka_unit_test_teardown(test_jwt_hs256_keyed_with_the_public_key_is_401,
                                  em_test_free_tracked),
        cmocka_unit_test_teardown(test_jwt_with_a_tampered_payload_is_401, em_test_free_tracked),
        cmocka_unit_test_teardown(test_viewer_cannot_create_a_device, em_test_free_tracked),
        cmocka_unit_test_teardown(test_viewer_cannot_change_or_delete_a_device,
                                  em_test_free_tracked),
        cmocka_unit_test_teardown(test_viewer_cannot_send_a_command, em_test_free_tracked),
        cmocka_unit_test_teardown(test_viewer_cannot_create_a_key, em_test_free_tracked),
        cmocka_unit_test_teardown(test_operator_cannot_create_a_key, em_test_free_tracked),
        cmocka_unit_test_teardown(test_operator_cannot_revoke_a_key, em_test_free_tracked),
        cmocka_unit_test_teardown(test_operator_may_create_a_device, em_test_free_tracked),
        cmocka_unit_test_teardown(test_device_key_reaches_only_its_own_device,
                                  em_test_free_tracked),
        cmocka_unit_test_teardown(test_device_jwt_reaches_only_its_own_device,
                                  em_test_free_tracked),
        cmocka_unit_test_teardown(test_device_certificate_reaches_only_its_own_device,
                                  em_test_free_tracked),
        cmocka_unit_test_teardown(test_certificate_of_an_unknown_identity_is_401,
                                  em_test_free_tracked),
        cmocka_unit_test_teardown(test_self_signed_certificate_claiming_a_device_is_refused,
                                  em_test_free_tracked),
        cmocka_unit_test_teardown(test_device_jwt_for_an_unregistered_device_is_401,
                                  em_test_free_tracked),
        cmocka_unit_test_teardown(test_device_credentials_of_a_disabled_device_are_refused,
                                  em_test_free_tracked),
        cmocka_unit_test_teardown(test_device_key_needs_a_device_id, em_test_free_tracked),
        cmocka_unit_test_teardown(test_auth_failures_are_security_events, em_test_free_tracked),
        cmocka_unit_test_teardown(test_forbidden_requests_are_security_events,
                                  em_test_free_tracked),
        cmocka_unit_test_teardown(test_presented_secrets_are_in_neither_events_nor_log,
                                  em_test_free_tracked),
    };
    return cmocka_run_group_tests(tests, group_setup, group_teardown);
}
