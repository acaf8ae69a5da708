/*
 * emiotctl - cmd_broker.c: `emiotctl broker config`: the production mosquitto configuration.
 *
 * Writes a directory mosquitto can run from without access to the CA
 * directory: mosquitto.conf, acl, copies of the CA certificate (ca.crt), the
 * CRL (crl.pem), the server's certificate and key, and with a second listener
 * for devices without certificates, the dynamic-security plugin's dynsec.json.
 *
 * Listener A (mqtts): every client presents a certificate from the emiot CA
 * and its CN becomes its MQTT username; the ACL lets the manager's identity
 * read every device's topics and write every command topic, and everyone
 * else (devices: CN = device id) only its own topics. Listener B (mqtts with
 * username and password): the plugin, whose administrator is emiotd's
 * provisioning client (dynsec.h); emiotd creates one role per device with the
 * same topic rules.
 *
 * mosquitto's configuration has no quoting, so paths and names that could
 * break a line (white space, control characters) are refused, never mangled.
 */
#include <ctype.h>
#include <errno.h>
#include <fcntl.h>
#include <glob.h>
#include <limits.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include <openssl/bio.h>
#include <openssl/crypto.h>
#include <openssl/evp.h>
#include <openssl/pem.h>
#include <openssl/rand.h>
#include <openssl/x509.h>

#include "ctl.h"
#include "emiot/clock.h"
#include "emiot/device.h"
#include "emiot/pki.h"
#include "emiot/topic.h"

/*
 * PBKDF2-HMAC-SHA512 iterations for the dynsec administrator's password:
 * OWASP's 2023 figure for this hash. The broker pays it once per CONNECT of
 * that client: measured 0.25 s on the build machine (docs/EMIOTCTL.md), and
 * emiotd connects once and stays connected.
 */
#define DYNSEC_ITERATIONS   210000
#define DYNSEC_SALT_LEN     12 /* what mosquitto 2.0's plugin reads */
#define DYNSEC_HASH_LEN     64
#define DYNSEC_PASSWORD_MIN 16
#define DYNSEC_PASSWORD_MAX 256
#define DYNSEC_ENV          "EMIOT_DYNSEC_ADMIN_PASSWORD"
#define DYNSEC_ROLE         "emiot-dynsec-admin"
#define CERT_MAX            ((size_t)256 * 1024)
#define CRL_MAX             (CERT_MAX * 64)
#define CONF_MAX            ((size_t)64 * 1024)
#define KEY_MAX             ((size_t)EM_KEYSTORE_DATA_MAX)

enum {
    O_OUT = 1000,
    O_SERVER_CERT,
    O_SERVER_KEY,
    O_PORT,
    O_BIND,
    O_MANAGER_CN,
    O_PREFIX,
    O_CRL,
    O_DYNSEC_PORT,
    O_DYNSEC_ADMIN,
    O_DYNSEC_PASSWORD_FILE,
    O_DYNSEC_PLUGIN,
    O_USER,
    O_FORCE
};

typedef struct opts {
    ctl_secret_opts_t s;
    const char *out, *server_cert, *server_key, *bind, *manager_cn, *prefix, *crl;
    const char *dynsec_admin, *dynsec_password_file, *dynsec_plugin, *user;
    long port, dynsec_port;
    bool force;
} opts_t;

static int on_opt(void *ud, int id, const char *arg)
{
    opts_t *o = ud;
    if (ctl_secret_opt(&o->s, id, arg))
        return 0;
    switch (id) {
    case O_OUT:
        o->out = arg;
        return 0;
    case O_SERVER_CERT:
        o->server_cert = arg;
        return 0;
    case O_SERVER_KEY:
        o->server_key = arg;
        return 0;
    case O_PORT:
        return ctl_parse_long("--port", arg, 1, 65535, &o->port);
    case O_BIND:
        o->bind = arg;
        return 0;
    case O_MANAGER_CN:
        o->manager_cn = arg;
        return 0;
    case O_PREFIX:
        o->prefix = arg;
        return 0;
    case O_CRL:
        o->crl = arg;
        return 0;
    case O_DYNSEC_PORT:
        return ctl_parse_long("--dynsec-port", arg, 1, 65535, &o->dynsec_port);
    case O_DYNSEC_ADMIN:
        o->dynsec_admin = arg;
        return 0;
    case O_DYNSEC_PASSWORD_FILE:
        o->dynsec_password_file = arg;
        return 0;
    case O_DYNSEC_PLUGIN:
        o->dynsec_plugin = arg;
        return 0;
    case O_USER:
        o->user = arg;
        return 0;
    case O_FORCE:
        o->force = true;
        return 0;
    default:
        return CTL_USAGE;
    }
}

/* ---- checks ------------------------------------------------------------------ */

/* A path mosquitto can read back: printable, no white space. */
static int check_path(const char *flag, const char *p)
{
    size_t n = strlen(p);
    bool ok = n > 0 && n < CTL_PATH_MAX - 64;
    for (size_t i = 0; ok && i < n; i++)
        ok = isgraph((unsigned char)p[i]);
    if (!ok) {
        ctl_err("validation",
                "%s: paths must be printable and without white space "
                "(mosquitto's configuration cannot quote them)",
                flag);
        return CTL_INVALID;
    }
    return 0;
}

/* An MQTT identity that no device can have: 1-64 of [A-Za-z0-9_.@:-], and not
 * a device id (so it holds one of . @ :). Certificates of the client profile
 * follow the same rule, so no device certificate can carry it. */
static int check_identity(const char *flag, const char *s)
{
    size_t n = strlen(s);
    bool ok = n >= 1 && n <= EM_PKI_CN_MAX;
    for (size_t i = 0; ok && i < n; i++)
        ok = isalnum((unsigned char)s[i]) || strchr("_.@:-", s[i]) != NULL;
    em_error_t e;
    if (ok && em_device_id_validate(s, n, &e) == EM_OK) {
        ctl_err("validation",
                "%s \"%s\": is a valid device id, which a device could take; "
                "use a name with . @ or : (\"emiotd.manager\")",
                flag, s);
        return CTL_INVALID;
    }
    if (!ok) {
        ctl_err("validation", "%s: must be 1-64 of A-Z a-z 0-9 _ . @ : -", flag);
        return CTL_INVALID;
    }
    return 0;
}

static int check_word(const char *flag, const char *s, const char *extra, size_t max)
{
    size_t n = strlen(s);
    bool ok = n >= 1 && n <= max;
    for (size_t i = 0; ok && i < n; i++)
        ok = isalnum((unsigned char)s[i]) || strchr(extra, s[i]) != NULL;
    if (!ok) {
        ctl_err("validation", "%s: must be 1-%zu of A-Z a-z 0-9 %s", flag, max, extra);
        return CTL_INVALID;
    }
    return 0;
}

static int check_prefix(const char *p)
{
    em_error_t e;
    if (em_topic_prefix_validate(p, &e) != EM_OK || strpbrk(p, " %") != NULL) {
        ctl_err("validation", "--prefix: 1-64 printable characters ending in /, without "
                              "+ # %% or spaces (\"device/\")");
        return CTL_INVALID;
    }
    return 0;
}

/* ---- files ---------------------------------------------------------------------- */

typedef struct out_file {
    const char *name;
    mode_t mode;
    char *data; /* owned */
    size_t len;
    bool secret;
    bool keep; /* exists and is kept (dynsec.json with --force) */
} out_file_t;

static void out_free(out_file_t *f)
{
    if (f->data != NULL) {
        if (f->secret)
            OPENSSL_cleanse(f->data, f->len);
        free(f->data);
    }
    f->data = NULL;
}

/* dir/name (plus a suffix) into out; false when it does not fit. */
static bool join(char *out, size_t size, const char *dir, const char *name, const char *suffix)
{
    int n = snprintf(out, size, "%s/%s%s", dir, name, suffix);
    return n > 0 && (size_t)n < size;
}

/* Writes dir/name atomically: a temporary file, fsync, rename. */
static int write_atomic(const char *dir, const out_file_t *f)
{
    char path[CTL_PATH_MAX], tmp[CTL_PATH_MAX], tname[64];
    snprintf(tname, sizeof tname, ".%s", f->name);
    if (!join(path, sizeof path, dir, f->name, "") ||
        !join(tmp, sizeof tmp, dir, tname, ".XXXXXX")) {
        ctl_err("io", "%s: path too long", dir);
        return CTL_ERROR;
    }
    int fd = mkstemp(tmp);
    if (fd < 0) {
        ctl_err("io", "cannot create a file in %s: %s", dir, strerror(errno));
        return CTL_ERROR;
    }
    bool ok = fchmod(fd, f->mode) == 0;
    const char *p = f->data;
    size_t left = f->len;
    while (ok && left > 0) {
        ssize_t w = write(fd, p, left);
        if (w < 0 && errno == EINTR)
            continue;
        if (w <= 0)
            ok = false;
        else {
            p += w;
            left -= (size_t)w;
        }
    }
    ok = ok && fsync(fd) == 0;
    ok = close(fd) == 0 && ok;
    if (!ok || rename(tmp, path) != 0) {
        ctl_err("io", "cannot write %s: %s", path, strerror(errno));
        unlink(tmp);
        return CTL_ERROR;
    }
    return 0;
}

/* text with a printf format into a new heap buffer appended to b. */
typedef struct sbuf {
    char *s;
    size_t len, cap;
    bool failed;
} sbuf_t;

static void sb_add(sbuf_t *b, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void sb_add(sbuf_t *b, const char *fmt, ...)
{
    if (b->failed)
        return;
    for (;;) {
        va_list ap;
        va_start(ap, fmt);
        int n = vsnprintf(b->s != NULL ? b->s + b->len : NULL, b->s != NULL ? b->cap - b->len : 0,
                          fmt, ap);
        va_end(ap);
        if (n < 0) {
            b->failed = true;
            return;
        }
        if (b->s != NULL && (size_t)n < b->cap - b->len) {
            b->len += (size_t)n;
            return;
        }
        size_t want = b->len + (size_t)n + 1;
        if (want > CONF_MAX) {
            b->failed = true;
            return;
        }
        size_t cap = b->cap == 0 ? 4096 : b->cap;
        while (cap < want)
            cap *= 2;
        char *s = realloc(b->s, cap);
        if (s == NULL) {
            b->failed = true;
            return;
        }
        b->s = s;
        b->cap = cap;
    }
}

/* ---- inputs: CA, CRL, server certificate and key ------------------------------ */

/* Checks that crl (PEM) is signed by ca; warns when its nextUpdate is near. */
static int check_crl(const char *file, const char *crl, size_t len, X509 *ca)
{
    BIO *bio = BIO_new_mem_buf(crl, (int)len);
    X509_CRL *x = bio != NULL ? PEM_read_bio_X509_CRL(bio, NULL, NULL, NULL) : NULL;
    BIO_free(bio);
    if (x == NULL) {
        ctl_err("message_format", "%s is not a PEM CRL", file);
        return CTL_INVALID;
    }
    EVP_PKEY *pub = X509_get0_pubkey(ca);
    if (pub == NULL || X509_CRL_verify(x, pub) != 1) {
        X509_CRL_free(x);
        ctl_err("certificate", "%s is not signed by the CA: the broker would refuse everyone",
                file);
        return CTL_INVALID;
    }
    const ASN1_TIME *next = X509_CRL_get0_nextUpdate(x);
    int days = 0, secs = 0;
    if (next != NULL && ASN1_TIME_diff(&days, &secs, NULL, next) == 1) {
        if (days < 0 || (days == 0 && secs <= 0))
            ctl_err("certificate",
                    "warning: %s has expired: the broker refuses every client until a new CRL "
                    "is published (" PROGRAM " pki crl)",
                    file);
        else if (days < 7)
            ctl_err(NULL,
                    "warning: %s expires in %d days: publish a new one (" PROGRAM
                    " pki crl) and refresh the broker's copy before then",
                    file, days);
    }
    X509_CRL_free(x);
    return 0;
}

/* Reads the server certificate and key and checks that they belong together. */
static int read_server(const opts_t *o, out_file_t *cert, out_file_t *key)
{
    int rc = ctl_read_file(o->server_cert, "server certificate", CERT_MAX, false, &cert->data,
                           &cert->len);
    if (rc != 0)
        return rc;
    rc = ctl_read_file(o->server_key, "server key", KEY_MAX, true, &key->data, &key->len);
    if (rc != 0)
        return rc;
    if (em_keystore_is_sealed(key->data, key->len)) {
        ctl_err("configuration",
                "%s is a sealed keystore; mosquitto needs a plain PEM key "
                "(" PROGRAM " keystore open)",
                o->server_key);
        return CTL_USAGE;
    }
    BIO *cb = BIO_new_mem_buf(cert->data, (int)cert->len);
    BIO *kb = BIO_new_mem_buf(key->data, (int)key->len);
    X509 *x = cb != NULL ? PEM_read_bio_X509(cb, NULL, NULL, NULL) : NULL;
    EVP_PKEY *k = kb != NULL ? PEM_read_bio_PrivateKey(kb, NULL, NULL, NULL) : NULL;
    BIO_free(cb);
    BIO_free(kb);
    if (x == NULL)
        ctl_err("message_format", "%s is not a PEM certificate", o->server_cert);
    else if (k == NULL)
        ctl_err("message_format", "%s is not a PEM private key (without a password)",
                o->server_key);
    else if (X509_check_private_key(x, k) != 1)
        ctl_err("certificate", "%s is not the key of %s", o->server_key, o->server_cert);
    rc = x != NULL && k != NULL && X509_check_private_key(x, k) == 1 ? 0 : CTL_INVALID;
    X509_free(x);
    EVP_PKEY_free(k);
    return rc;
}

/* ---- dynamic security -------------------------------------------------------------- */

static char *b64(const unsigned char *data, size_t len)
{
    char *out = malloc(4 * ((len + 2) / 3) + 1);
    if (out != NULL)
        EVP_EncodeBlock((unsigned char *)out, data, (int)len);
    return out;
}

/* The administrator's password: env EMIOT_DYNSEC_ADMIN_PASSWORD or the first
 * line of --dynsec-password-file. */
static int read_admin_password(const opts_t *o, char *pw, size_t size, size_t *len)
{
    *len = 0;
    if (o->dynsec_password_file != NULL) {
        char *data = NULL;
        size_t n = 0;
        int rc = ctl_read_file(o->dynsec_password_file, "dynsec password file",
                               DYNSEC_PASSWORD_MAX + 2, true, &data, &n);
        if (rc != 0)
            return rc;
        *len = strcspn(data, "\r\n");
        if (*len < size)
            memcpy(pw, data, *len);
        ctl_free_file(data, n);
    } else {
        char *v = getenv(DYNSEC_ENV);
        if (v == NULL || v[0] == '\0') {
            ctl_err("configuration", "the dynsec administrator's password: set " DYNSEC_ENV
                                     " or give --dynsec-password-file F");
            return CTL_USAGE;
        }
        *len = strlen(v);
        if (*len < size)
            memcpy(pw, v, *len);
        OPENSSL_cleanse(v, strlen(v));
        unsetenv(DYNSEC_ENV);
    }
    if (*len < DYNSEC_PASSWORD_MIN || *len > DYNSEC_PASSWORD_MAX) {
        OPENSSL_cleanse(pw, size);
        ctl_err("validation", "the dynsec administrator's password must be %d-%d characters",
                DYNSEC_PASSWORD_MIN, DYNSEC_PASSWORD_MAX);
        return CTL_INVALID;
    }
    pw[*len] = '\0';
    return 0;
}

static cJSON *acl(const char *type, const char *topic)
{
    cJSON *a = cJSON_CreateObject();
    if (a == NULL || cJSON_AddStringToObject(a, "acltype", type) == NULL ||
        cJSON_AddStringToObject(a, "topic", topic) == NULL ||
        cJSON_AddNumberToObject(a, "priority", 0) == NULL ||
        cJSON_AddBoolToObject(a, "allow", 1) == NULL) {
        cJSON_Delete(a);
        return NULL;
    }
    return a;
}

/*
 * dynsec.json as mosquitto 2.0's plugin reads it: everything denied by
 * default; one client, the administrator, whose role allows only the
 * plugin's control topics. The password is stored as the plugin stores it:
 * base64 of PBKDF2-HMAC-SHA512 (64 bytes) over a 12-byte random salt.
 */
static int make_dynsec(const opts_t *o, const char *admin, out_file_t *f)
{
    char pw[DYNSEC_PASSWORD_MAX + 3];
    size_t pw_len = 0;
    int rc = read_admin_password(o, pw, sizeof pw, &pw_len);
    if (rc != 0)
        return rc;
    unsigned char salt[DYNSEC_SALT_LEN], hash[DYNSEC_HASH_LEN];
    bool ok = RAND_bytes(salt, sizeof salt) == 1 &&
              PKCS5_PBKDF2_HMAC(pw, (int)pw_len, salt, sizeof salt, DYNSEC_ITERATIONS, EVP_sha512(),
                                sizeof hash, hash) == 1;
    OPENSSL_cleanse(pw, sizeof pw);
    if (!ok) {
        ctl_err("internal", "cannot hash the password (OpenSSL)");
        return CTL_ERROR;
    }
    char *hash64 = b64(hash, sizeof hash), *salt64 = b64(salt, sizeof salt);
    cJSON *root = cJSON_CreateObject();
    cJSON *def = cJSON_AddObjectToObject(root, "defaultACLAccess");
    ok = hash64 != NULL && salt64 != NULL && def != NULL &&
         cJSON_AddBoolToObject(def, "publishClientSend", 0) != NULL &&
         cJSON_AddBoolToObject(def, "publishClientReceive", 0) != NULL &&
         cJSON_AddBoolToObject(def, "subscribe", 0) != NULL &&
         cJSON_AddBoolToObject(def, "unsubscribe", 1) != NULL;
    cJSON *clients = ok ? cJSON_AddArrayToObject(root, "clients") : NULL;
    cJSON *client = cJSON_CreateObject();
    ok = ok && clients != NULL && client != NULL && cJSON_AddItemToArray(clients, client);
    if (!ok)
        cJSON_Delete(client);
    cJSON *croles = ok ? cJSON_AddArrayToObject(client, "roles") : NULL;
    cJSON *crole = cJSON_CreateObject();
    ok = ok && cJSON_AddStringToObject(client, "username", admin) != NULL &&
         cJSON_AddStringToObject(client, "textname", "emiot provisioning (emiotd, dynsec.h)") !=
             NULL &&
         cJSON_AddStringToObject(client, "password", hash64) != NULL &&
         cJSON_AddStringToObject(client, "salt", salt64) != NULL &&
         cJSON_AddNumberToObject(client, "iterations", DYNSEC_ITERATIONS) != NULL &&
         croles != NULL && crole != NULL && cJSON_AddItemToArray(croles, crole);
    if (!ok)
        cJSON_Delete(crole);
    ok = ok && cJSON_AddStringToObject(crole, "rolename", DYNSEC_ROLE) != NULL &&
         cJSON_AddArrayToObject(root, "groups") != NULL;
    cJSON *roles = ok ? cJSON_AddArrayToObject(root, "roles") : NULL;
    cJSON *role = cJSON_CreateObject();
    ok = ok && roles != NULL && role != NULL && cJSON_AddItemToArray(roles, role);
    if (!ok)
        cJSON_Delete(role);
    cJSON *acls = ok ? cJSON_AddArrayToObject(role, "acls") : NULL;
    ok = ok && cJSON_AddStringToObject(role, "rolename", DYNSEC_ROLE) != NULL && acls != NULL;
    static const char *const types[] = {"publishClientSend", "publishClientReceive",
                                        "subscribePattern", "unsubscribePattern"};
    for (size_t i = 0; ok && i < sizeof types / sizeof types[0]; i++) {
        cJSON *a = acl(types[i], "$CONTROL/dynamic-security/#");
        ok = a != NULL && cJSON_AddItemToArray(acls, a);
        if (!ok)
            cJSON_Delete(a);
    }
    char *text = ok ? cJSON_Print(root) : NULL;
    cJSON_Delete(root);
    free(hash64);
    free(salt64);
    OPENSSL_cleanse(hash, sizeof hash);
    if (text == NULL) {
        ctl_err("out_of_memory", "out of memory");
        return CTL_ERROR;
    }
    f->len = strlen(text);
    f->data = text;
    return 0;
}

/* The plugin's shared object: --dynsec-plugin, else the distribution's. */
static int find_plugin(const opts_t *o, char *out, size_t size)
{
    if (o->dynsec_plugin != NULL) {
        if (access(o->dynsec_plugin, R_OK) != 0) {
            ctl_err("not_found", "--dynsec-plugin %s: %s", o->dynsec_plugin, strerror(errno));
            return CTL_NOTFOUND;
        }
        snprintf(out, size, "%s", o->dynsec_plugin);
        return check_path("--dynsec-plugin", out);
    }
    static const char *const patterns[] = {
        "/usr/lib/*/mosquitto_dynamic_security.so", "/usr/lib/mosquitto_dynamic_security.so",
        "/usr/lib64/mosquitto_dynamic_security.so", "/usr/local/lib/mosquitto_dynamic_security.so"};
    for (size_t i = 0; i < sizeof patterns / sizeof patterns[0]; i++) {
        glob_t g;
        if (glob(patterns[i], 0, NULL, &g) == 0 && g.gl_pathc > 0) {
            snprintf(out, size, "%s", g.gl_pathv[0]);
            globfree(&g);
            return check_path("dynsec plugin", out);
        }
        globfree(&g);
    }
    ctl_err("not_found", "mosquitto_dynamic_security.so not found: give --dynsec-plugin PATH");
    return CTL_NOTFOUND;
}

/* ---- mosquitto.conf and acl --------------------------------------------------------- */

static void conf_tls(sbuf_t *b, const char *dir)
{
    sb_add(b,
           "cafile %s/ca.crt\n"
           "certfile %s/server.crt\n"
           "keyfile %s/server.key\n"
           "# TLS 1.2 at least (1.3 when the client offers it); TLS 1.2 only with\n"
           "# forward-secret AEAD suites.\n"
           "tls_version tlsv1.2\n"
           "ciphers ECDHE-ECDSA-AES256-GCM-SHA384:ECDHE-ECDSA-CHACHA20-POLY1305:"
           "ECDHE-ECDSA-AES128-GCM-SHA256:ECDHE-RSA-AES256-GCM-SHA384:"
           "ECDHE-RSA-CHACHA20-POLY1305:ECDHE-RSA-AES128-GCM-SHA256\n",
           dir, dir, dir);
}

static void make_conf(sbuf_t *b, const opts_t *o, const char *dir, const char *plugin,
                      const char *admin, const char *when)
{
    sb_add(b,
           "# mosquitto configuration for emiot, written by `" PROGRAM " broker config` at %s.\n"
           "# Regenerate it rather than edit it (" PROGRAM " broker config ... --force).\n"
           "# Needs mosquitto 2.0 or later. Start: mosquitto -c %s/mosquitto.conf\n"
           "#\n"
           "# After `" PROGRAM " pki revoke`: run `" PROGRAM " broker config ... --force` again\n"
           "# (it refreshes crl.pem), then send mosquitto SIGHUP: new connections are checked\n"
           "# against the new CRL. Clients already connected stay connected until they\n"
           "# reconnect: restart the broker to cut a revoked device off at once.\n"
           "# Publish a new CRL (" PROGRAM " pki crl) and refresh it here before the current\n"
           "# one's nextUpdate: with an expired CRL mosquitto refuses every client.\n\n"
           "# Authentication and ACLs are set per listener below.\n"
           "per_listener_settings true\n\n",
           when, dir);
    if (o->user != NULL)
        sb_add(b,
               "# The account mosquitto runs as (it must be able to read this directory).\n"
               "user %s\n\n",
               o->user);
    sb_add(b, "# emiot's messages are small (status, telemetry, commands); firmware goes over\n"
              "# HTTPS. A larger packet is refused.\n"
              "max_packet_size 262144\n\n");
    sb_add(b,
           "# emiot uses QoS 1 both ways and counts on the broker never dropping a message it\n"
           "# accepted (docs/OPERATIONS.md): mosquitto's default queue limits discard\n"
           "# messages for a subscriber that falls behind, with no error anywhere.\n"
           "max_queued_messages 0\n"
           "max_queued_bytes 0\n"
           "max_inflight_messages 0\n"
           "max_inflight_bytes 0\n"
           "# QoS 0 is at most once: not queued for a disconnected client.\n"
           "queue_qos0_messages false\n"
           "# Sessions and queued messages survive a broker restart (this directory must be\n"
           "# writable by the broker's account).\n"
           "persistence true\n"
           "persistence_location %s/\n\n",
           dir);
    sb_add(b,
           "# ---- listener A: mqtts with client certificates (devices, the manager) ----\n"
           "listener %ld%s%s\n"
           "protocol mqtt\n",
           o->port, o->bind != NULL ? " " : "", o->bind != NULL ? o->bind : "");
    conf_tls(b, dir);
    sb_add(b,
           "# Every client presents a certificate from the emiot CA, not revoked by the CRL;\n"
           "# its CN becomes its MQTT username (a device's CN is its device id).\n"
           "require_certificate true\n"
           "use_identity_as_username true\n"
           "crlfile %s/crl.pem\n"
           "allow_anonymous false\n"
           "# Each device only its own topics; the manager (%s) all of them.\n"
           "acl_file %s/acl\n",
           dir, o->manager_cn, dir);
    if (o->dynsec_port > 0)
        sb_add(b,
               "\n# ---- listener B: mqtts with username and password (devices without\n"
               "# certificates). emiotd provisions each device through the dynamic-security\n"
               "# plugin as %s (dynsec.h): a role per device with the same topic rules as\n"
               "# listener A's ACL. The plugin keeps its state in dynsec.json and rewrites it:\n"
               "# this directory must be writable by the broker's account.\n"
               "listener %ld%s%s\n"
               "protocol mqtt\n",
               admin, o->dynsec_port, o->bind != NULL ? " " : "", o->bind != NULL ? o->bind : "");
    if (o->dynsec_port > 0) {
        conf_tls(b, dir);
        sb_add(b,
               "require_certificate false\n"
               "allow_anonymous false\n"
               "plugin %s\n"
               "plugin_opt_config_file %s/dynsec.json\n",
               plugin, dir);
    }
}

static void make_acl(sbuf_t *b, const opts_t *o, const char *when)
{
    const char *p = o->prefix;
    sb_add(b,
           "# mosquitto ACL for emiot's certificate listener, written by `" PROGRAM
           " broker config` at %s.\n"
           "# Usernames are certificate CNs (use_identity_as_username). Anything not\n"
           "# granted here is denied: a denied publish is dropped, a denied\n"
           "# subscription gets no messages.\n\n"
           "# The manager (emiotd): reads what every device reports, writes every\n"
           "# device's commands. Its CN is a client-profile name, which no device\n"
           "# certificate can carry.\n"
           "user %s\n"
           "topic read %s+/status\n"
           "topic read %s+/telemetry\n"
           "topic read %s+/response\n"
           "topic read %s+/event\n"
           "topic read %s+/availability\n"
           "topic write %s+/command\n\n"
           "# Every client (devices: CN = device id, %%u below): publish its own status,\n"
           "# telemetry, responses, events and availability; subscribe to and receive its\n"
           "# own commands. Nothing of any other device.\n"
           "pattern write %s%%u/status\n"
           "pattern write %s%%u/telemetry\n"
           "pattern write %s%%u/response\n"
           "pattern write %s%%u/event\n"
           "pattern write %s%%u/availability\n"
           "pattern read %s%%u/command\n",
           when, o->manager_cn, p, p, p, p, p, p, p, p, p, p, p, p);
}

/* ---- the command ---------------------------------------------------------------------- */

enum { F_CONF, F_ACL, F_CA, F_CRL, F_CERT, F_KEY, F_DYNSEC, F_COUNT };

/* Checks the options against each other and fills in the defaults
 * (o->dynsec_admin too, once it is known not to stand alone). */
static int config_opts(const ctl_cmd_t *cmd, opts_t *o)
{
    if (o->out == NULL || o->server_cert == NULL || o->server_key == NULL) {
        ctl_err(NULL, "--out, --server-cert and --server-key are required");
        fprintf(stderr, "usage: " PROGRAM " %s\n", cmd->usage);
        return CTL_USAGE;
    }
    if (o->port == 0)
        o->port = 8883;
    if (o->manager_cn == NULL)
        o->manager_cn = "emiotd.manager";
    if (o->prefix == NULL)
        o->prefix = "device/";
    if (o->dynsec_port == 0 &&
        (o->dynsec_admin != NULL || o->dynsec_password_file != NULL || o->dynsec_plugin != NULL)) {
        ctl_err(NULL, "--dynsec-admin, --dynsec-password-file and --dynsec-plugin go with "
                      "--dynsec-port");
        return CTL_USAGE;
    }
    if (o->dynsec_admin == NULL)
        o->dynsec_admin = "emiotd.dynsec";
    if (o->dynsec_port != 0 && o->dynsec_port == o->port) {
        ctl_err("validation", "--dynsec-port must differ from --port");
        return CTL_INVALID;
    }
    int rc;
    if ((rc = check_identity("--manager-cn", o->manager_cn)) != 0 ||
        (rc = check_prefix(o->prefix)) != 0 ||
        (o->dynsec_port > 0 && (rc = check_identity("--dynsec-admin", o->dynsec_admin)) != 0) ||
        (o->bind != NULL && (rc = check_word("--bind", o->bind, ".:-", 253)) != 0) ||
        (o->user != NULL && (rc = check_word("--user", o->user, "_-", 32)) != 0) ||
        (rc = check_path("--out", o->out)) != 0)
        return rc;
    if (o->dynsec_port > 0 && strcmp(o->dynsec_admin, o->manager_cn) == 0) {
        ctl_err("validation", "--dynsec-admin must differ from --manager-cn");
        return CTL_INVALID;
    }
    return 0;
}

/* The output directory, created 0700 (it holds the server's key), as an
 * absolute path in dir. */
static int out_dir(const char *out, char dir[PATH_MAX])
{
    if (mkdir(out, 0700) != 0 && errno != EEXIST) {
        ctl_err("io", "cannot create %s: %s", out, strerror(errno));
        return CTL_ERROR;
    }
    if (realpath(out, dir) == NULL) {
        ctl_err("io", "%s: %s", out, strerror(errno));
        return CTL_ERROR;
    }
    return check_path("--out", dir);
}

/* Nothing is written when any file exists (without --force). With --force,
 * dynsec.json is kept: the plugin keeps the devices emiotd provisioned
 * there, and regenerating it would delete them. */
static int check_existing(const char *dir, out_file_t *f, size_t nfiles, bool force)
{
    for (size_t i = 0; i < nfiles; i++) {
        char path[CTL_PATH_MAX];
        struct stat st;
        if (!join(path, sizeof path, dir, f[i].name, "") || lstat(path, &st) != 0)
            continue;
        if (i == F_DYNSEC && force) {
            f[i].keep = true;
        } else if (!force) {
            ctl_err("already_exists", "%s exists: give --force to replace the generated files",
                    path);
            return CTL_INVALID;
        }
    }
    return 0;
}

/* The CA directory's CA certificate and (unless --crl) its CRL, checked
 * against each other. */
static int read_ca(const opts_t *o, out_file_t *ca, out_file_t *crl)
{
    const char *pki_dir = ctl_secret_dir(&o->s);
    if (pki_dir == NULL)
        return CTL_USAGE;
    em_pki_t *pki = NULL;
    em_error_t e;
    em_error_clear(&e);
    if (em_pki_open(pki_dir, NULL, NULL, &pki, &e) != EM_OK)
        return ctl_em_fail("cannot open the CA", &e);
    const char *crl_src = o->crl != NULL ? o->crl : em_pki_crl_file(pki);
    int rc =
        ctl_read_file(em_pki_ca_file(pki), "CA certificate", CERT_MAX, false, &ca->data, &ca->len);
    if (rc == 0)
        rc = ctl_read_file(crl_src, "CRL", CRL_MAX, false, &crl->data, &crl->len);
    if (rc == 0)
        rc = check_crl(crl_src, crl->data, crl->len, em_pki_ca_cert(pki));
    em_pki_free(pki);
    return rc;
}

/* mosquitto.conf and acl into their files. */
static int make_texts(const opts_t *o, const char *dir, const char *plugin, out_file_t *conf_file,
                      out_file_t *acl_file)
{
    sbuf_t conf = {0}, acl_text = {0};
    char when[EM_TIME_STR_MAX];
    em_time_format(em_now_ms(), when, sizeof when);
    make_conf(&conf, o, dir, plugin, o->dynsec_admin, when);
    make_acl(&acl_text, o, when);
    if (conf.failed || acl_text.failed) {
        free(conf.s);
        free(acl_text.s);
        ctl_err("out_of_memory", "out of memory");
        return CTL_ERROR;
    }
    conf_file->data = conf.s;
    conf_file->len = conf.len;
    acl_file->data = acl_text.s;
    acl_file->len = acl_text.len;
    return 0;
}

/* The files in an order where the configuration comes last: a broker never
 * reads one naming files that are not there yet. */
static int write_files(const char *dir, const out_file_t *f, size_t nfiles)
{
    static const int order[] = {F_CA, F_CRL, F_CERT, F_KEY, F_ACL, F_DYNSEC, F_CONF};
    int rc = 0;
    for (size_t i = 0; rc == 0 && i < sizeof order / sizeof order[0]; i++) {
        const out_file_t *x = &f[order[i]];
        if ((size_t)order[i] < nfiles && !x->keep)
            rc = write_atomic(dir, x);
    }
    return rc;
}

static int print_config(const ctl_t *c, const opts_t *o, const char *dir, bool dynsec_kept)
{
    if (c->quiet)
        return 0;
    if (c->format == CTL_OUT_JSON) {
        cJSON *j = cJSON_CreateObject();
        bool ok = j != NULL && cJSON_AddStringToObject(j, "directory", dir) != NULL &&
                  cJSON_AddNumberToObject(j, "port", (double)o->port) != NULL &&
                  cJSON_AddStringToObject(j, "managerCn", o->manager_cn) != NULL &&
                  cJSON_AddStringToObject(j, "prefix", o->prefix) != NULL;
        if (ok && o->dynsec_port > 0)
            ok = cJSON_AddNumberToObject(j, "dynsecPort", (double)o->dynsec_port) != NULL &&
                 cJSON_AddStringToObject(j, "dynsecAdmin", o->dynsec_admin) != NULL &&
                 cJSON_AddBoolToObject(j, "dynsecKept", dynsec_kept) != NULL;
        if (ok)
            ctl_print_json(j);
        cJSON_Delete(j);
        return ok ? 0 : CTL_ERROR;
    }
    printf("wrote %s/mosquitto.conf, acl, ca.crt, crl.pem, server.crt, server.key", dir);
    if (o->dynsec_port > 0)
        printf(dynsec_kept ? " (dynsec.json kept: it holds the provisioned devices)"
                           : ", dynsec.json");
    printf("\nlistener A: mqtts on port %ld, client certificates required; manager identity "
           "%s; topic prefix %s\n",
           o->port, o->manager_cn, o->prefix);
    if (o->dynsec_port > 0)
        printf("listener B: mqtts on port %ld, passwords (dynamic security; administrator %s, "
               "PBKDF2-SHA512 with %d iterations)\n",
               o->dynsec_port, o->dynsec_admin, DYNSEC_ITERATIONS);
    printf("start:   mosquitto -c %s/mosquitto.conf\n"
           "revoked: after `" PROGRAM " pki revoke`, run this command again with --force and send "
           "mosquitto SIGHUP\n"
           "         (new connections see the new CRL; restart it to drop connected clients)\n",
           dir);
    return 0;
}

static int run_config(ctl_t *c, const ctl_cmd_t *cmd, int argc, char **argv)
{
    static const struct option opt[] = {
        {"out", required_argument, NULL, O_OUT},
        {"server-cert", required_argument, NULL, O_SERVER_CERT},
        {"server-key", required_argument, NULL, O_SERVER_KEY},
        {"port", required_argument, NULL, O_PORT},
        {"bind", required_argument, NULL, O_BIND},
        {"manager-cn", required_argument, NULL, O_MANAGER_CN},
        {"prefix", required_argument, NULL, O_PREFIX},
        {"crl", required_argument, NULL, O_CRL},
        {"dynsec-port", required_argument, NULL, O_DYNSEC_PORT},
        {"dynsec-admin", required_argument, NULL, O_DYNSEC_ADMIN},
        {"dynsec-password-file", required_argument, NULL, O_DYNSEC_PASSWORD_FILE},
        {"dynsec-plugin", required_argument, NULL, O_DYNSEC_PLUGIN},
        {"user", required_argument, NULL, O_USER},
        {"force", no_argument, NULL, O_FORCE},
        {"dir", required_argument, NULL, CTL_SOPT_DIR},
        {NULL, 0, NULL, 0},
    };
    opts_t o;
    memset(&o, 0, sizeof o);
    ctl_args_t a;
    int rc = ctl_parse(c, cmd, argc, argv, opt, on_opt, &o, &a);
    if (rc != 0)
        return rc;
    if ((rc = config_opts(cmd, &o)) != 0)
        return rc;
    char dir[PATH_MAX];
    if ((rc = out_dir(o.out, dir)) != 0)
        return rc;

    out_file_t f[F_COUNT] = {
        [F_CONF] = {"mosquitto.conf", 0600, NULL, 0, false, false},
        [F_ACL] = {"acl", 0600, NULL, 0, false, false},
        [F_CA] = {"ca.crt", 0644, NULL, 0, false, false},
        [F_CRL] = {"crl.pem", 0644, NULL, 0, false, false},
        [F_CERT] = {"server.crt", 0644, NULL, 0, false, false},
        [F_KEY] = {"server.key", 0600, NULL, 0, true, false},
        [F_DYNSEC] = {"dynsec.json", 0600, NULL, 0, false, false},
    };
    size_t nfiles = o.dynsec_port > 0 ? F_COUNT : F_DYNSEC;
    if ((rc = check_existing(dir, f, nfiles, o.force)) != 0)
        return rc;

    char plugin[CTL_PATH_MAX] = "";
    rc = read_ca(&o, &f[F_CA], &f[F_CRL]);
    if (rc == 0)
        rc = read_server(&o, &f[F_CERT], &f[F_KEY]);
    if (rc == 0 && o.dynsec_port > 0)
        rc = find_plugin(&o, plugin, sizeof plugin);
    if (rc == 0 && o.dynsec_port > 0 && !f[F_DYNSEC].keep)
        rc = make_dynsec(&o, o.dynsec_admin, &f[F_DYNSEC]);
    if (rc == 0)
        rc = make_texts(&o, dir, plugin, &f[F_CONF], &f[F_ACL]);
    if (rc == 0)
        rc = write_files(dir, f, nfiles);
    for (size_t i = 0; i < F_COUNT; i++)
        out_free(&f[i]);
    if (rc != 0)
        return rc;
    return print_config(c, &o, dir, f[F_DYNSEC].keep);
}

const ctl_cmd_t ctl_broker_cmds[] = {
    {"broker", "config", run_config, 0, 0,
     "broker config --out DIR --server-cert F --server-key F [--port 8883] [--dynsec-port N]",
     "Write the production mosquitto configuration (certificates required, per-device ACL)",
     "  --out DIR                the directory to write (created 0700)\n"
     "  --server-cert F          the broker's certificate (pki issue --profile server)\n"
     "  --server-key F           its key (plain PEM, mode 0600)\n"
     "  --dir D                  the CA directory (env EMIOT_PKI_DIR): ca.crt, crl.pem\n"
     "  --crl F                  use this CRL instead of the CA directory's\n"
     "  --port N                 the certificate listener's port (default 8883)\n"
     "  --bind ADDR              listen on this address only (default: all)\n"
     "  --manager-cn NAME        emiotd's certificate CN (default emiotd.manager)\n"
     "  --prefix P               topic prefix (default device/)\n"
     "  --user NAME              the account mosquitto runs as\n"
     "  --dynsec-port N          add a password listener with the dynamic-security plugin\n"
     "  --dynsec-admin NAME      its administrator, emiotd's provisioning client\n"
     "                           (default emiotd.dynsec); password from env\n"
     "                           EMIOT_DYNSEC_ADMIN_PASSWORD or --dynsec-password-file F\n"
     "  --dynsec-plugin PATH     mosquitto_dynamic_security.so (default: found in /usr/lib)\n"
     "  --force                  replace the generated files (dynsec.json is kept)\n"},
    {NULL, NULL, NULL, 0, 0, NULL, NULL, NULL},
};
