/*
 * emiot tests - test_dynsec.c: MQTT passwords for devices through mosquitto's
 * dynamic-security plugin (dynsec.h), against a real mosquitto 2 started by
 * the test with the plugin on a TLS listener, and the API routes
 * POST/DELETE /api/v1/devices/{id}/mqtt-credentials end to end (an in-process
 * em_api with a dynsec handle; requests with curl).
 *
 * What a device may do is checked with real clients (mosquitto_pub and
 * mosquitto_sub logged in with the provisioned password), and what it may not
 * do by a subscriber that must never see the message: each such check also
 * sends a message that is allowed, right after the forbidden one, so the
 * subscriber's output is complete when it has the allowed one.
 *
 * The plugin's configuration is written here as `emiotctl broker config`
 * would: an administrator (whose PBKDF2-SHA512 hash has a strong iteration
 * count) and a manager account that reads every device topic.
 */
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <pthread.h>
#include <pwd.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/types.h>
#include <unistd.h>

#include <cjson/cJSON.h>
#include <cmocka.h>
#include <event2/event.h>
#include <event2/thread.h>
#include <openssl/evp.h>
#include <openssl/rand.h>

#include "broker.h"
#include "cli.h"
#include "daemon.h"
#include "emiot/api.h"
#include "emiot/clock.h"
#include "emiot/dynsec.h"
#include "emiot/manager.h"
#include "emiot/store.h"
#include "testutil.h"

#define ADMIN_USER         "dynadmin"
#define MANAGER_USER       "emiotd.manager"
#define ADMIN_ITERATIONS   100000
#define MANAGER_ITERATIONS 1000
#define WAIT_MS            10000

typedef struct fixture {
    em_test_broker_t b; /* directory, certificates and port; mosquitto run here */
    pid_t broker_pid;
    char admin_pw[33];
    char manager_pw[33];
    char admin_pw_file[EM_TEST_PATH_MAX];
    char dynsec_json[EM_TEST_PATH_MAX];
    em_dynsec_t *d;
    /* The API part. */
    em_store_t *store;
    em_manager_t *mgr;
    struct event_base *base;
    em_api_t *api;       /* with the dynsec handle */
    em_api_t *api_plain; /* without */
    pthread_t loop;
    bool loop_running;
    char url[96];
    char url_plain[96];
    char admin_key[EM_API_KEY_LEN + 1];
    char viewer_key[EM_API_KEY_LEN + 1];
    unsigned seq;
} fixture_t;

static fixture_t *fx_global;

/* ---- files and processes ------------------------------------------------- */

static int write_file(const char *path, const char *data)
{
    int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
    if (fd < 0)
        return -1;
    size_t len = strlen(data), off = 0;
    while (off < len) {
        ssize_t n = write(fd, data + off, len - off);
        if (n < 0 && errno == EINTR)
            continue;
        if (n <= 0) {
            close(fd);
            return -1;
        }
        off += (size_t)n;
    }
    return close(fd);
}

static char *read_all(const char *path)
{
    FILE *f = fopen(path, "rb");
    if (f == NULL)
        return NULL;
    size_t cap = 4096, len = 0;
    char *buf = malloc(cap);
    while (buf != NULL) {
        if (cap - len < 2) {
            char *p = realloc(buf, cap * 2);
            if (p == NULL) {
                free(buf);
                buf = NULL;
                break;
            }
            buf = p;
            cap *= 2;
        }
        size_t n = fread(buf + len, 1, cap - len - 1, f);
        len += n;
        if (n == 0)
            break;
    }
    fclose(f);
    if (buf != NULL)
        buf[len] = '\0';
    return buf;
}

static void path_in(char *out, size_t size, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
static void path_in(char *out, size_t size, const char *fmt, ...)
{
    char name[256];
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(name, sizeof name, fmt, ap);
    va_end(ap);
    assert_true(n > 0 && (size_t)n < sizeof name);
    assert_non_null(em_test_broker_path(&fx_global->b, name, out, size));
}

static void random_hex(char *out, size_t nbytes)
{
    unsigned char raw[32];
    assert_true(nbytes <= sizeof raw);
    assert_int_equal(RAND_bytes(raw, (int)nbytes), 1);
    for (size_t i = 0; i < nbytes; i++)
        snprintf(out + 2 * i, 3, "%02x", raw[i]);
}

/* ---- the plugin's configuration and the broker ----------------------------- */

/* A client entry as the plugin stores it: PBKDF2-SHA512, 12-byte salt. */
static cJSON *plugin_client(const char *user, const char *pw, int iterations, const char *role)
{
    unsigned char salt[12], hash[64];
    assert_int_equal(RAND_bytes(salt, sizeof salt), 1);
    assert_int_equal(PKCS5_PBKDF2_HMAC(pw, (int)strlen(pw), salt, sizeof salt, iterations,
                                       EVP_sha512(), sizeof hash, hash),
                     1);
    char salt64[32], hash64[128];
    EVP_EncodeBlock((unsigned char *)salt64, salt, sizeof salt);
    EVP_EncodeBlock((unsigned char *)hash64, hash, sizeof hash);
    cJSON *c = cJSON_CreateObject();
    cJSON_AddStringToObject(c, "username", user);
    cJSON_AddStringToObject(c, "password", hash64);
    cJSON_AddStringToObject(c, "salt", salt64);
    cJSON_AddNumberToObject(c, "iterations", iterations);
    cJSON *roles = cJSON_AddArrayToObject(c, "roles");
    cJSON *r = cJSON_CreateObject();
    cJSON_AddStringToObject(r, "rolename", role);
    cJSON_AddItemToArray(roles, r);
    return c;
}

static void add_acl(cJSON *acls, const char *type, const char *topic)
{
    cJSON *a = cJSON_CreateObject();
    cJSON_AddStringToObject(a, "acltype", type);
    cJSON_AddStringToObject(a, "topic", topic);
    cJSON_AddBoolToObject(a, "allow", 1);
    cJSON_AddItemToArray(acls, a);
}

static void write_dynsec_json(fixture_t *fx)
{
    cJSON *root = cJSON_CreateObject();
    cJSON *clients = cJSON_AddArrayToObject(root, "clients");
    cJSON_AddItemToArray(clients,
                         plugin_client(ADMIN_USER, fx->admin_pw, ADMIN_ITERATIONS, "admin"));
    cJSON_AddItemToArray(
        clients, plugin_client(MANAGER_USER, fx->manager_pw, MANAGER_ITERATIONS, "manager"));
    cJSON *roles = cJSON_AddArrayToObject(root, "roles");
    cJSON *admin = cJSON_CreateObject();
    cJSON_AddStringToObject(admin, "rolename", "admin");
    cJSON *acls = cJSON_AddArrayToObject(admin, "acls");
    add_acl(acls, "publishClientSend", "$CONTROL/dynamic-security/#");
    add_acl(acls, "publishClientReceive", "$CONTROL/dynamic-security/#");
    add_acl(acls, "subscribePattern", "$CONTROL/dynamic-security/#");
    cJSON_AddItemToArray(roles, admin);
    cJSON *mgr = cJSON_CreateObject();
    cJSON_AddStringToObject(mgr, "rolename", "manager");
    acls = cJSON_AddArrayToObject(mgr, "acls");
    static const char *const kinds[] = {"status", "telemetry", "response", "event", "availability"};
    for (size_t i = 0; i < sizeof kinds / sizeof kinds[0]; i++) {
        char t[64];
        snprintf(t, sizeof t, "device/+/%s", kinds[i]);
        add_acl(acls, "subscribePattern", t);
        add_acl(acls, "publishClientReceive", t);
    }
    add_acl(acls, "publishClientSend", "device/+/command");
    cJSON_AddItemToArray(roles, mgr);
    cJSON *def = cJSON_AddObjectToObject(root, "defaultACLAccess");
    cJSON_AddBoolToObject(def, "publishClientSend", 0);
    cJSON_AddBoolToObject(def, "publishClientReceive", 1);
    cJSON_AddBoolToObject(def, "subscribe", 0);
    cJSON_AddBoolToObject(def, "unsubscribe", 1);
    char *text = cJSON_Print(root);
    assert_non_null(text);
    assert_int_equal(write_file(fx->dynsec_json, text), 0);
    free(text);
    cJSON_Delete(root);
}

static const char *plugin_path(void)
{
    static const char *const candidates[] = {
        "/usr/lib/x86_64-linux-gnu/mosquitto_dynamic_security.so",
        "/usr/lib/aarch64-linux-gnu/mosquitto_dynamic_security.so",
        "/usr/lib/mosquitto_dynamic_security.so",
        "/usr/local/lib/mosquitto_dynamic_security.so",
    };
    for (size_t i = 0; i < sizeof candidates / sizeof candidates[0]; i++)
        if (access(candidates[i], R_OK) == 0)
            return candidates[i];
    return NULL;
}

static int write_broker_conf(fixture_t *fx)
{
    const char *plugin = plugin_path();
    if (plugin == NULL) {
        fprintf(stderr, "mosquitto_dynamic_security.so not found\n");
        return -1;
    }
    char conf[EM_TEST_PATH_MAX], text[8192];
    const char *dir = em_test_broker_dir(&fx->b);
    struct passwd *pw = getpwuid(getuid());
    snprintf(conf, sizeof conf, "%s/dynsec-mosquitto.conf", dir);
    int n = snprintf(text, sizeof text,
                     "per_listener_settings false\n"
                     "listener %d 127.0.0.1\n"
                     /* as root, stay root: the plugin must write its file */
                     "user %s\n"
                     "persistence false\n"
                     "log_dest file %s/mosquitto.log\n"
                     "log_type error\nlog_type warning\nlog_type notice\nlog_type information\n"
                     "connection_messages true\n"
                     "cafile %s/ca.crt\ncertfile %s/server.crt\nkeyfile %s/server.key\n"
                     "tls_version tlsv1.2\n"
                     "allow_anonymous false\n"
                     "plugin %s\n"
                     "plugin_opt_config_file %s\n",
                     em_test_broker_port(&fx->b), pw != NULL ? pw->pw_name : "root", dir, dir, dir,
                     dir, plugin, fx->dynsec_json);
    if (n < 0 || (size_t)n >= sizeof text)
        return -1;
    return write_file(conf, text);
}

static int broker_start(fixture_t *fx)
{
    char conf[EM_TEST_PATH_MAX], out[EM_TEST_PATH_MAX];
    snprintf(conf, sizeof conf, "%s/dynsec-mosquitto.conf", em_test_broker_dir(&fx->b));
    snprintf(out, sizeof out, "%s/mosquitto.out", em_test_broker_dir(&fx->b));
    const char *argv[] = {"mosquitto", "-c", conf, NULL};
    pid_t pid = em_test_spawn(argv, out);
    if (pid < 0)
        return -1;
    int64_t until = em_mono_ms() + WAIT_MS;
    while (em_mono_ms() < until) {
        if (em_test_wait(pid, 0) != -1) {
            fprintf(stderr, "mosquitto exited at once\n");
            return -1;
        }
        if (em_test_port_accepts(em_test_broker_port(&fx->b))) {
            fx->broker_pid = pid;
            return 0;
        }
        em_test_sleep_ms(20);
    }
    em_test_stop(pid);
    return -1;
}

static void broker_stop(fixture_t *fx)
{
    if (fx->broker_pid > 0)
        em_test_stop(fx->broker_pid);
    fx->broker_pid = 0;
}

static void dynsec_options(fixture_t *fx, em_dynsec_options_t *o)
{
    em_dynsec_options_init(o);
    o->mqtt.url = em_test_broker_url(&fx->b);
    o->mqtt.ca_file = em_test_broker_ca(&fx->b);
    o->mqtt.username = ADMIN_USER;
    o->mqtt.password_file = fx->admin_pw_file;
    o->timeout_ms = 3000;
}

/* ---- MQTT clients ---------------------------------------------------------- */

static const char *port_str(void)
{
    static char p[16];
    snprintf(p, sizeof p, "%d", em_test_broker_port(&fx_global->b));
    return p;
}

/* mosquitto_pub at QoS 1; its exit status (0: connected and sent). */
static int pub(const char *user, const char *pw, const char *topic, const char *msg)
{
    const char *argv[] = {"mosquitto_pub",
                          "-V",
                          "5",
                          "-q",
                          "1",
                          "--cafile",
                          em_test_broker_ca(&fx_global->b),
                          "-h",
                          "localhost",
                          "-p",
                          port_str(),
                          "-u",
                          user,
                          "-P",
                          pw,
                          "-t",
                          topic,
                          "-m",
                          msg,
                          NULL};
    return em_test_run(argv);
}

/* A subscriber (-v, exits after count messages or 15 s idle) writing to out.
 * topics: up to 3. */
static pid_t sub_start(const char *user, const char *pw, const char *const *topics, int count,
                       const char *out)
{
    char n[16];
    snprintf(n, sizeof n, "%d", count);
    const char *argv[32];
    int a = 0;
    argv[a++] = "mosquitto_sub";
    argv[a++] = "-V";
    argv[a++] = "5";
    argv[a++] = "-v";
    argv[a++] = "--cafile";
    argv[a++] = em_test_broker_ca(&fx_global->b);
    argv[a++] = "-h";
    argv[a++] = "localhost";
    argv[a++] = "-p";
    argv[a++] = port_str();
    argv[a++] = "-u";
    argv[a++] = user;
    argv[a++] = "-P";
    argv[a++] = pw;
    argv[a++] = "-C";
    argv[a++] = n;
    argv[a++] = "-W";
    argv[a++] = "15";
    for (int i = 0; topics[i] != NULL && i < 3; i++) {
        argv[a++] = "-t";
        argv[a++] = topics[i];
    }
    argv[a] = NULL;
    unlink(out);
    return em_test_spawn(argv, out);
}

/* Repeats send() until the subscriber pid has exited (it got its messages),
 * at most ~10 s. Returns the subscriber's exit status, -1 when it did not
 * finish. */
static int feed_until_done(pid_t pid, void (*send)(void *), void *ud)
{
    for (int i = 0; i < 50; i++) {
        send(ud);
        int st = em_test_wait(pid, 200);
        if (st != -1)
            return st;
    }
    em_test_stop(pid);
    return -1;
}

static void provision(const char *id, char *pw)
{
    em_error_t e;
    em_error_clear(&e);
    em_err_t rc = em_dynsec_provision(fx_global->d, id, pw, EM_DYNSEC_PASSWORD_LEN + 1, &e);
    if (rc != EM_OK)
        fprintf(stderr, "provision %s: %s: %s\n", id, em_err_name(rc), e.message);
    assert_int_equal(rc, EM_OK);
}

/* ---- set-up ---------------------------------------------------------------- */

static void *loop_main(void *arg)
{
    fixture_t *fx = arg;
    event_base_loop(fx->base, EVLOOP_NO_EXIT_ON_EMPTY);
    return NULL;
}

/* The API in this process: a SQLite store, a manager (not connected: these
 * routes do not need it), and two APIs on one event loop thread, one with
 * the dynsec handle and one without. */
static int api_setup(fixture_t *fx)
{
    char url[EM_TEST_PATH_MAX + 16], cert[EM_TEST_PATH_MAX], key[EM_TEST_PATH_MAX],
        jwt[EM_TEST_PATH_MAX], jwt2[EM_TEST_PATH_MAX];
    snprintf(url, sizeof url, "sqlite:%s/store.db", em_test_broker_dir(&fx->b));
    em_error_t err;
    em_error_clear(&err);
    em_store_options_t so;
    em_store_options_init(&so);
    so.batch_interval_ms = 5;
    if (em_store_open(url, &so, &fx->store, &err) != EM_OK) {
        fprintf(stderr, "store: %s\n", err.message);
        return -1;
    }
    fx->mgr = em_manager_new(NULL, &err);
    if (fx->mgr == NULL)
        return -1;
    bool created = false;
    if (em_api_bootstrap(fx->store, fx->admin_key, sizeof fx->admin_key, &created, &err) != EM_OK ||
        !created)
        return -1;
    if (evthread_use_pthreads() != 0 || (fx->base = event_base_new()) == NULL)
        return -1;
    em_test_broker_path(&fx->b, "server.crt", cert, sizeof cert);
    em_test_broker_path(&fx->b, "server.key", key, sizeof key);
    em_test_broker_path(&fx->b, "jwt.pem", jwt, sizeof jwt);
    em_test_broker_path(&fx->b, "jwt2.pem", jwt2, sizeof jwt2);
    em_api_options_t ao;
    em_api_options_init(&ao);
    ao.listeners[0].address = "127.0.0.1";
    ao.listeners[0].port = 0;
    ao.listeners[0].cert_file = cert;
    ao.listeners[0].key_file = key;
    ao.listeners[0].client_auth = EM_CLIENT_AUTH_NONE;
    ao.nlisteners = 1;
    ao.jwt_key_file = jwt;
    ao.dynsec = fx->d;
    fx->api = em_api_new(fx->base, &ao, fx->store, fx->mgr, &err);
    ao.jwt_key_file = jwt2;
    ao.dynsec = NULL;
    fx->api_plain = em_api_new(fx->base, &ao, fx->store, fx->mgr, &err);
    if (fx->api == NULL || fx->api_plain == NULL) {
        fprintf(stderr, "api: %s\n", err.message);
        return -1;
    }
    snprintf(fx->url, sizeof fx->url, "https://localhost:%u", em_api_port(fx->api, 0));
    snprintf(fx->url_plain, sizeof fx->url_plain, "https://localhost:%u",
             em_api_port(fx->api_plain, 0));
    if (pthread_create(&fx->loop, NULL, loop_main, fx) != 0)
        return -1;
    fx->loop_running = true;
    return 0;
}

static int group_setup(void **state)
{
    fixture_t *fx = calloc(1, sizeof *fx);
    if (fx == NULL)
        return -1;
    fx_global = fx;
    *state = fx;
    if (em_test_broker_init(&fx->b, "tls") != 0)
        return -1;
    random_hex(fx->admin_pw, 16);
    random_hex(fx->manager_pw, 16);
    em_test_broker_path(&fx->b, "admin.pw", fx->admin_pw_file, sizeof fx->admin_pw_file);
    em_test_broker_path(&fx->b, "dynsec.json", fx->dynsec_json, sizeof fx->dynsec_json);
    if (write_file(fx->admin_pw_file, fx->admin_pw) != 0)
        return -1;
    write_dynsec_json(fx);
    if (write_broker_conf(fx) != 0 || broker_start(fx) != 0)
        return -1;
    em_dynsec_options_t o;
    dynsec_options(fx, &o);
    em_error_t e;
    em_error_clear(&e);
    if (em_dynsec_new(&o, &fx->d, &e) != EM_OK) {
        fprintf(stderr, "em_dynsec_new: %s\n", e.message);
        return -1;
    }
    return api_setup(fx);
}

static int group_teardown(void **state)
{
    fixture_t *fx = *state;
    if (fx == NULL)
        return 0;
    if (fx->loop_running) {
        event_base_loopbreak(fx->base);
        pthread_join(fx->loop, NULL);
    }
    em_api_free(fx->api);
    em_api_free(fx->api_plain);
    if (fx->base != NULL)
        event_base_free(fx->base);
    em_manager_free(fx->mgr);
    em_store_close(fx->store);
    em_dynsec_free(fx->d);
    broker_stop(fx);
    em_test_broker_cleanup(&fx->b);
    free(fx);
    fx_global = NULL;
    return 0;
}

/* ---- the client -------------------------------------------------------------- */

static void test_password_is_43_base64url_characters_and_new_each_time(void **state)
{
    (void)state;
    char a[EM_DYNSEC_PASSWORD_LEN + 1], b[EM_DYNSEC_PASSWORD_LEN + 1];
    provision("pw-shape-1", a);
    provision("pw-shape-1", b);
    assert_int_equal(strlen(a), EM_DYNSEC_PASSWORD_LEN);
    assert_int_equal(strspn(a, "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"),
                     EM_DYNSEC_PASSWORD_LEN);
    assert_string_not_equal(a, b);
}

typedef struct feed {
    const char *user, *pw, *topic, *msg;
    const char *user2, *pw2, *topic2, *msg2;
} feed_t;

static void send_pair(void *ud)
{
    feed_t *f = ud;
    if (f->user != NULL)
        (void)pub(f->user, f->pw, f->topic, f->msg);
    if (f->user2 != NULL)
        (void)pub(f->user2, f->pw2, f->topic2, f->msg2);
}

static void test_provisioned_device_publishes_its_own_status(void **state)
{
    fixture_t *fx = *state;
    char pw[EM_DYNSEC_PASSWORD_LEN + 1], out[EM_TEST_PATH_MAX];
    provision("meter-own-1", pw);
    path_in(out, sizeof out, "own-status.out");
    const char *topics[] = {"device/meter-own-1/status", NULL};
    pid_t sub = sub_start(MANAGER_USER, fx->manager_pw, topics, 1, out);
    assert_true(sub > 0);
    feed_t f = {
        "meter-own-1", pw,  "device/meter-own-1/status", "{\"batteryLevel\":75}", NULL, NULL,
        NULL,          NULL};
    assert_int_equal(feed_until_done(sub, send_pair, &f), 0);
    char *got = read_all(out);
    assert_non_null(got);
    assert_non_null(strstr(got, "device/meter-own-1/status {\"batteryLevel\":75}"));
    free(got);
}

static void test_device_cannot_publish_to_another_devices_status(void **state)
{
    fixture_t *fx = *state;
    char pa[EM_DYNSEC_PASSWORD_LEN + 1], pb[EM_DYNSEC_PASSWORD_LEN + 1], out[EM_TEST_PATH_MAX];
    provision("acl-pub-a", pa);
    provision("acl-pub-b", pb);
    path_in(out, sizeof out, "cross-status.out");
    const char *topics[] = {"device/acl-pub-b/status", NULL};
    pid_t sub = sub_start(MANAGER_USER, fx->manager_pw, topics, 2, out);
    assert_true(sub > 0);
    /* A's forgery first, then B's own status: two of B's must arrive and
     * none of A's. */
    feed_t f = {"acl-pub-a", pa, "device/acl-pub-b/status", "forged-by-a",
                "acl-pub-b", pb, "device/acl-pub-b/status", "from-b"};
    assert_int_equal(feed_until_done(sub, send_pair, &f), 0);
    char *got = read_all(out);
    assert_non_null(got);
    assert_non_null(strstr(got, "from-b"));
    assert_null(strstr(got, "forged-by-a"));
    free(got);
}

static void send_commands(void *ud)
{
    const char *pw = ud;
    (void)pub(MANAGER_USER, pw, "device/acl-sub-b/command", "{\"type\":\"for-b\"}");
    (void)pub(MANAGER_USER, pw, "device/acl-sub-a/command", "{\"type\":\"for-a\"}");
}

static void test_device_cannot_subscribe_to_another_devices_command(void **state)
{
    fixture_t *fx = *state;
    char pa[EM_DYNSEC_PASSWORD_LEN + 1], pb[EM_DYNSEC_PASSWORD_LEN + 1], out[EM_TEST_PATH_MAX];
    provision("acl-sub-a", pa);
    provision("acl-sub-b", pb);
    path_in(out, sizeof out, "cross-command.out");
    /* A asks for B's commands and its own in one SUBSCRIBE: its own arrive,
     * B's never do. */
    const char *topics[] = {"device/acl-sub-b/command", "device/acl-sub-a/command", NULL};
    pid_t sub = sub_start("acl-sub-a", pa, topics, 2, out);
    assert_true(sub > 0);
    assert_int_equal(feed_until_done(sub, send_commands, fx->manager_pw), 0);
    char *got = read_all(out);
    assert_non_null(got);
    assert_non_null(strstr(got, "device/acl-sub-a/command {\"type\":\"for-a\"}"));
    assert_null(strstr(got, "for-b"));
    free(got);
}

static void test_device_cannot_publish_on_its_own_command_topic(void **state)
{
    fixture_t *fx = *state;
    char pa[EM_DYNSEC_PASSWORD_LEN + 1], out[EM_TEST_PATH_MAX];
    provision("acl-cmd-a", pa);
    path_in(out, sizeof out, "own-command.out");
    /* The device may not command itself (only the manager writes commands). */
    const char *topics[] = {"device/acl-cmd-a/command", NULL};
    pid_t sub = sub_start("acl-cmd-a", pa, topics, 1, out);
    assert_true(sub > 0);
    feed_t f = {"acl-cmd-a",
                pa,
                "device/acl-cmd-a/command",
                "self-command",
                MANAGER_USER,
                fx->manager_pw,
                "device/acl-cmd-a/command",
                "from-manager"};
    assert_int_equal(feed_until_done(sub, send_pair, &f), 0);
    char *got = read_all(out);
    assert_non_null(got);
    assert_non_null(strstr(got, "from-manager"));
    assert_null(strstr(got, "self-command"));
    free(got);
}

static void test_reprovision_changes_the_password_and_ends_the_old_session(void **state)
{
    fixture_t *fx = *state;
    (void)fx;
    char p1[EM_DYNSEC_PASSWORD_LEN + 1], p2[EM_DYNSEC_PASSWORD_LEN + 1], out[EM_TEST_PATH_MAX];
    provision("reprov-1", p1);
    assert_int_equal(pub("reprov-1", p1, "device/reprov-1/status", "{}"), 0);

    /* A session with the first password, waiting for commands. */
    path_in(out, sizeof out, "reprov.out");
    const char *topics[] = {"device/reprov-1/command", NULL};
    pid_t sub = sub_start("reprov-1", p1, topics, 1, out);
    assert_true(sub > 0);
    /* Connected once the broker logs it. */
    char log[EM_TEST_PATH_MAX];
    path_in(log, sizeof log, "mosquitto.log");
    int64_t until = em_mono_ms() + WAIT_MS;
    bool seen = false;
    while (!seen && em_mono_ms() < until) {
        char *text = read_all(log);
        seen = text != NULL && strstr(text, "u'reprov-1'") != NULL;
        free(text);
        if (!seen)
            em_test_sleep_ms(50);
    }
    assert_true(seen);

    provision("reprov-1", p2);
    assert_string_not_equal(p1, p2);
    /* The plugin kicks the session; its reconnection with the old password
     * is refused and mosquitto_sub gives up (it received nothing, so ending
     * is the kick). */
    int st = em_test_wait(sub, WAIT_MS);
    if (st == -1)
        em_test_stop(sub);
    assert_int_not_equal(st, -1);
    char *got = read_all(out);
    assert_true(got == NULL || strstr(got, "device/reprov-1/command") == NULL);
    free(got);
    assert_int_not_equal(pub("reprov-1", p1, "device/reprov-1/status", "{}"), 0);
    assert_int_equal(pub("reprov-1", p2, "device/reprov-1/status", "{}"), 0);
}

static void test_disabled_device_is_refused_and_enabled_again_connects(void **state)
{
    (void)state;
    char pw[EM_DYNSEC_PASSWORD_LEN + 1];
    provision("toggle-1", pw);
    em_error_t e;
    em_error_clear(&e);
    assert_int_equal(em_dynsec_set_enabled(fx_global->d, "toggle-1", 0, &e), EM_OK);
    assert_int_not_equal(pub("toggle-1", pw, "device/toggle-1/status", "{}"), 0);
    assert_int_equal(em_dynsec_set_enabled(fx_global->d, "toggle-1", 1, &e), EM_OK);
    assert_int_equal(pub("toggle-1", pw, "device/toggle-1/status", "{}"), 0);
}

static void test_reprovision_enables_a_disabled_client(void **state)
{
    (void)state;
    char pw[EM_DYNSEC_PASSWORD_LEN + 1];
    provision("toggle-2", pw);
    em_error_t e;
    em_error_clear(&e);
    assert_int_equal(em_dynsec_set_enabled(fx_global->d, "toggle-2", 0, &e), EM_OK);
    provision("toggle-2", pw);
    assert_int_equal(pub("toggle-2", pw, "device/toggle-2/status", "{}"), 0);
}

static void test_removed_device_is_refused_and_second_remove_is_not_found(void **state)
{
    (void)state;
    char pw[EM_DYNSEC_PASSWORD_LEN + 1];
    provision("gone-1", pw);
    em_error_t e;
    em_error_clear(&e);
    assert_int_equal(em_dynsec_remove(fx_global->d, "gone-1", &e), EM_OK);
    assert_int_not_equal(pub("gone-1", pw, "device/gone-1/status", "{}"), 0);
    assert_int_equal(em_dynsec_remove(fx_global->d, "gone-1", &e), EM_ERR_NOT_FOUND);
    assert_int_equal(em_dynsec_set_enabled(fx_global->d, "gone-1", 1, &e), EM_ERR_NOT_FOUND);
    assert_int_equal(em_dynsec_set_enabled(fx_global->d, "never-there", 0, &e), EM_ERR_NOT_FOUND);
}

static void test_client_emiot_did_not_create_is_left_alone(void **state)
{
    fixture_t *fx = *state;
    /* "dynadmin" is a valid device id and the plugin's administrator. */
    char pw[EM_DYNSEC_PASSWORD_LEN + 1] = "x";
    em_error_t e;
    em_error_clear(&e);
    assert_int_equal(em_dynsec_provision(fx->d, ADMIN_USER, pw, sizeof pw, &e), EM_ERR_EXISTS);
    assert_string_equal(pw, "");
    assert_int_equal(em_dynsec_set_enabled(fx->d, ADMIN_USER, 0, &e), EM_ERR_NOT_FOUND);
    assert_int_equal(em_dynsec_remove(fx->d, ADMIN_USER, &e), EM_ERR_NOT_FOUND);
    /* The administrator still logs in with its own password. */
    em_dynsec_options_t o;
    dynsec_options(fx, &o);
    em_dynsec_t *d2 = NULL;
    assert_int_equal(em_dynsec_new(&o, &d2, &e), EM_OK);
    em_dynsec_free(d2);
}

static void test_bad_arguments_are_refused(void **state)
{
    fixture_t *fx = *state;
    char pw[EM_DYNSEC_PASSWORD_LEN + 1];
    em_error_t e;
    em_error_clear(&e);
    assert_int_equal(em_dynsec_provision(fx->d, "a/b", pw, sizeof pw, &e), EM_ERR_VALIDATION);
    assert_int_equal(em_dynsec_provision(fx->d, "ab", pw, sizeof pw, &e), EM_ERR_VALIDATION);
    assert_int_equal(em_dynsec_provision(fx->d, "dev-#", pw, sizeof pw, &e), EM_ERR_VALIDATION);
    assert_int_equal(em_dynsec_provision(fx->d, "small-buf", pw, EM_DYNSEC_PASSWORD_LEN, &e),
                     EM_ERR_BUFFER_TOO_SMALL);
    assert_int_equal(em_dynsec_remove(fx->d, "+", &e), EM_ERR_VALIDATION);
    assert_int_equal(em_dynsec_set_enabled(fx->d, NULL, 1, &e), EM_ERR_INVALID_ARGUMENT);
    assert_int_equal(em_dynsec_provision(NULL, "dev-1", pw, sizeof pw, &e),
                     EM_ERR_INVALID_ARGUMENT);
    em_dynsec_free(NULL);
}

/* The ACLs the plugin saved for role, as "type topic;" in its order. */
static void role_acls(const char *role_name, char *got, size_t size)
{
    got[0] = '\0';
    char *text = read_all(fx_global->dynsec_json);
    assert_non_null(text);
    cJSON *root = cJSON_Parse(text);
    free(text);
    assert_non_null(root);
    const cJSON *role = NULL, *r;
    cJSON_ArrayForEach(r, cJSON_GetObjectItemCaseSensitive(root, "roles"))
    {
        const cJSON *n = cJSON_GetObjectItemCaseSensitive(r, "rolename");
        if (cJSON_IsString(n) && strcmp(n->valuestring, role_name) == 0)
            role = r;
    }
    assert_non_null(role);
    const cJSON *a;
    cJSON_ArrayForEach(a, cJSON_GetObjectItemCaseSensitive(role, "acls"))
    {
        const cJSON *t = cJSON_GetObjectItemCaseSensitive(a, "acltype");
        const cJSON *tp = cJSON_GetObjectItemCaseSensitive(a, "topic");
        assert_true(cJSON_IsString(t) && cJSON_IsString(tp));
        assert_true(cJSON_IsTrue(cJSON_GetObjectItemCaseSensitive(a, "allow")));
        size_t len = strlen(got);
        snprintf(got + len, size - len, "%s %s;", t->valuestring, tp->valuestring);
    }
    cJSON_Delete(root);
}

static int count_char(const char *s, char c)
{
    int n = 0;
    for (; *s != '\0'; s++)
        n += *s == c;
    return n;
}

static void assert_device_acls(const char *got, const char *prefix, const char *id)
{
    static const char *const want[][2] = {
        {"publishClientSend", "status"},       {"publishClientSend", "telemetry"},
        {"publishClientSend", "response"},     {"publishClientSend", "event"},
        {"publishClientSend", "availability"}, {"publishClientReceive", "command"},
        {"subscribeLiteral", "command"},
    };
    for (size_t i = 0; i < sizeof want / sizeof want[0]; i++) {
        char w[256];
        snprintf(w, sizeof w, "%s %s%s/%s;", want[i][0], prefix, id, want[i][1]);
        if (strstr(got, w) == NULL)
            fprintf(stderr, "missing %s in %s\n", w, got);
        assert_non_null(strstr(got, w));
    }
    assert_int_equal(count_char(got, ';'), 7);
}

static void test_role_allows_exactly_the_device_topics(void **state)
{
    (void)state;
    char pw[EM_DYNSEC_PASSWORD_LEN + 1], got[2048];
    provision("role-1", pw);
    role_acls("emiot-device-role-1", got, sizeof got);
    assert_device_acls(got, "device/", "role-1");
}

static void test_admin_iteration_count_survives_the_plugins_saves(void **state)
{
    (void)state;
    /* The design relies on it: the administrator's hash keeps the file's
     * strong iteration count when the plugin rewrites the file. */
    char pw[EM_DYNSEC_PASSWORD_LEN + 1];
    provision("iter-1", pw);
    char *text = read_all(fx_global->dynsec_json);
    assert_non_null(text);
    cJSON *root = cJSON_Parse(text);
    free(text);
    bool found = false;
    const cJSON *c;
    cJSON_ArrayForEach(c, cJSON_GetObjectItemCaseSensitive(root, "clients"))
    {
        const cJSON *u = cJSON_GetObjectItemCaseSensitive(c, "username");
        if (cJSON_IsString(u) && strcmp(u->valuestring, ADMIN_USER) == 0) {
            found = true;
            const cJSON *it = cJSON_GetObjectItemCaseSensitive(c, "iterations");
            assert_true(cJSON_IsNumber(it));
            assert_int_equal(it->valueint, ADMIN_ITERATIONS);
        }
    }
    cJSON_Delete(root);
    assert_true(found);
}

static void test_wrong_admin_password_is_authentication_error(void **state)
{
    fixture_t *fx = *state;
    char wrong[EM_TEST_PATH_MAX];
    path_in(wrong, sizeof wrong, "wrong.pw");
    assert_int_equal(write_file(wrong, "not-the-password"), 0);
    em_dynsec_options_t o;
    dynsec_options(fx, &o);
    o.mqtt.password_file = wrong;
    static char sentinel;
    em_dynsec_t *d = (em_dynsec_t *)(void *)&sentinel; /* must be reset to NULL */
    em_error_t e;
    em_error_clear(&e);
    assert_int_equal(em_dynsec_new(&o, &d, &e), EM_ERR_AUTHENTICATION);
    assert_null(d);
}

static void test_account_without_plugin_rights_is_refused(void **state)
{
    fixture_t *fx = *state;
    char mpw[EM_TEST_PATH_MAX];
    path_in(mpw, sizeof mpw, "manager.pw");
    assert_int_equal(write_file(mpw, fx->manager_pw), 0);
    em_dynsec_options_t o;
    dynsec_options(fx, &o);
    o.mqtt.username = MANAGER_USER;
    o.mqtt.password_file = mpw;
    o.timeout_ms = 1500;
    em_dynsec_t *d = NULL;
    em_error_t e;
    em_error_clear(&e);
    em_err_t rc = em_dynsec_new(&o, &d, &e);
    /* MQTT 5: the broker says "not authorized"; 3.1.1 would time out. */
    assert_int_equal(rc, EM_ERR_PERMISSION_DENIED);
    assert_null(d);
}

static void test_broker_without_the_plugin_times_out(void **state)
{
    (void)state;
    em_test_broker_t other;
    assert_int_equal(em_test_broker_init(&other, "plain"), 0);
    assert_int_equal(em_test_broker_add_user(&other, "someone", "pw-someone"), 0);
    assert_int_equal(em_test_broker_launch(&other), 0);
    char pwf[EM_TEST_PATH_MAX];
    em_test_broker_path(&other, "someone.pw", pwf, sizeof pwf);
    assert_int_equal(write_file(pwf, "pw-someone"), 0);
    em_dynsec_options_t o;
    em_dynsec_options_init(&o);
    o.mqtt.url = em_test_broker_url(&other);
    o.mqtt.allow_plain = true;
    o.mqtt.username = "someone";
    o.mqtt.password_file = pwf;
    o.timeout_ms = 500;
    em_dynsec_t *d = NULL;
    em_error_t e;
    em_error_clear(&e);
    assert_int_equal(em_dynsec_new(&o, &d, &e), EM_ERR_TIMEOUT);
    assert_null(d);
    em_test_broker_cleanup(&other);
}

static void test_bad_options_are_configuration_errors(void **state)
{
    fixture_t *fx = *state;
    em_dynsec_options_t o;
    em_dynsec_t *d = NULL;
    em_error_t e;
    dynsec_options(fx, &o);
    o.topic_prefix = "no-slash";
    assert_int_not_equal(em_dynsec_new(&o, &d, &e), EM_OK);
    assert_string_equal(e.field, "topic_prefix");
    dynsec_options(fx, &o);
    o.timeout_ms = -1;
    assert_int_equal(em_dynsec_new(&o, &d, &e), EM_ERR_CONFIGURATION);
    dynsec_options(fx, &o);
    o.mqtt.url = "mqtt://10.0.0.1:1883"; /* plain, not loopback */
    assert_int_equal(em_dynsec_new(&o, &d, &e), EM_ERR_CONFIGURATION);
    assert_int_equal(em_dynsec_new(NULL, &d, &e), EM_ERR_INVALID_ARGUMENT);
    assert_null(d);
}

static void test_custom_topic_prefix_is_used_in_the_role(void **state)
{
    fixture_t *fx = *state;
    em_dynsec_options_t o;
    dynsec_options(fx, &o);
    o.topic_prefix = "site7/";
    em_dynsec_t *d = NULL;
    em_error_t e;
    em_error_clear(&e);
    assert_int_equal(em_dynsec_new(&o, &d, &e), EM_OK);
    char pw[EM_DYNSEC_PASSWORD_LEN + 1], got[2048];
    assert_int_equal(em_dynsec_provision(d, "prefix-1", pw, sizeof pw, &e), EM_OK);
    em_dynsec_free(d);
    role_acls("emiot-device-prefix-1", got, sizeof got);
    assert_device_acls(got, "site7/", "prefix-1");
}

static void test_broker_down_is_not_connected_and_the_client_comes_back(void **state)
{
    fixture_t *fx = *state;
    char pw[EM_DYNSEC_PASSWORD_LEN + 1];
    broker_stop(fx);
    em_error_t e;
    em_error_clear(&e);
    em_err_t rc = EM_OK;
    int64_t until = em_mono_ms() + WAIT_MS;
    while (em_mono_ms() < until) {
        rc = em_dynsec_provision(fx->d, "down-1", pw, sizeof pw, &e);
        if (rc == EM_ERR_NOT_CONNECTED)
            break;
        em_test_sleep_ms(100);
    }
    assert_int_equal(rc, EM_ERR_NOT_CONNECTED);
    assert_string_equal(pw, "");

    assert_int_equal(broker_start(fx), 0);
    until = em_mono_ms() + 40000;
    while (em_mono_ms() < until) {
        rc = em_dynsec_provision(fx->d, "down-1", pw, sizeof pw, &e);
        if (rc == EM_OK)
            break;
        em_test_sleep_ms(200);
    }
    assert_int_equal(rc, EM_OK);
    assert_int_equal(pub("down-1", pw, "device/down-1/status", "{}"), 0);
}

/* ---- the API ------------------------------------------------------------------ */

/*
 * One HTTPS request with curl to base (the fixture's url or url_plain),
 * pinned to the test CA; key (may be NULL) goes in a header file, never on
 * the command line. The body of the answer is parsed into *out (when out is
 * not NULL). Returns the HTTP status, -1 when no answer came.
 */
static int http(const char *base, const char *key, const char *method, const char *path,
                const char *body, cJSON **out)
{
    fixture_t *fx = fx_global;
    unsigned n = ++fx->seq;
    char hdr[EM_TEST_PATH_MAX], bodyf[EM_TEST_PATH_MAX], outf[EM_TEST_PATH_MAX],
        codef[EM_TEST_PATH_MAX], url[EM_TEST_PATH_MAX];
    path_in(hdr, sizeof hdr, "req-%u.hdr", n);
    path_in(bodyf, sizeof bodyf, "req-%u.body", n);
    path_in(outf, sizeof outf, "req-%u.out", n);
    path_in(codef, sizeof codef, "req-%u.code", n);
    snprintf(url, sizeof url, "%s%s", base, path);
    char line[512];
    int ln = snprintf(line, sizeof line, "Content-Type: application/json\n%s%s%s",
                      key != NULL ? "Authorization: Bearer " : "", key != NULL ? key : "",
                      key != NULL ? "\n" : "");
    assert_true(ln > 0 && (size_t)ln < sizeof line);
    assert_int_equal(write_file(hdr, line), 0);
    if (body != NULL)
        assert_int_equal(write_file(bodyf, body), 0);
    char hdr_arg[EM_TEST_PATH_MAX + 2], body_arg[EM_TEST_PATH_MAX + 2];
    snprintf(hdr_arg, sizeof hdr_arg, "@%s", hdr);
    snprintf(body_arg, sizeof body_arg, "@%s", bodyf);
    const char *argv[24];
    int a = 0;
    argv[a++] = "curl";
    argv[a++] = "-s";
    argv[a++] = "--max-time";
    argv[a++] = "30";
    argv[a++] = "--cacert";
    argv[a++] = em_test_broker_ca(&fx->b);
    argv[a++] = "-X";
    argv[a++] = method;
    argv[a++] = "-H";
    argv[a++] = hdr_arg;
    argv[a++] = "-o";
    argv[a++] = outf;
    argv[a++] = "-w";
    argv[a++] = "%{http_code}";
    if (body != NULL) {
        argv[a++] = "--data-binary";
        argv[a++] = body_arg;
    }
    argv[a++] = url;
    argv[a] = NULL;
    pid_t pid = em_test_spawn(argv, codef);
    int rc = pid > 0 ? em_test_wait(pid, 40000) : -1;
    if (rc == -1 && pid > 0)
        em_test_stop(pid);
    int status = -1;
    char *code = read_all(codef);
    if (rc == 0 && code != NULL) {
        long v = strtol(code, NULL, 10);
        if (v > 0 && v < 600)
            status = (int)v;
    }
    free(code);
    char *text = read_all(outf);
    if (out != NULL)
        *out = text != NULL ? cJSON_Parse(text) : NULL;
    free(text);
    unlink(hdr);
    unlink(bodyf);
    unlink(outf);
    unlink(codef);
    return status;
}

static const char *str_of(const cJSON *obj, const char *key)
{
    const cJSON *it = cJSON_GetObjectItemCaseSensitive(obj, key);
    return cJSON_IsString(it) ? it->valuestring : NULL;
}

static void assert_error_code(cJSON *answer, const char *code)
{
    assert_non_null(answer);
    const char *c = str_of(answer, "errorCode");
    if (c == NULL || strcmp(c, code) != 0) {
        char *t = cJSON_PrintUnformatted(answer);
        fprintf(stderr, "expected %s, got %s\n", code, t != NULL ? t : "?");
        free(t);
    }
    assert_non_null(c);
    assert_string_equal(c, code);
}

static void api_create_device(const char *id)
{
    char body[256];
    snprintf(body, sizeof body, "{\"id\":\"%s\",\"name\":\"Device %s\",\"type\":\"sensor\"}", id,
             id);
    assert_int_equal(
        http(fx_global->url, fx_global->admin_key, "POST", "/api/v1/devices", body, NULL), 201);
}

static void api_set_enabled(const char *id, bool enabled)
{
    char path[128];
    snprintf(path, sizeof path, "/api/v1/devices/%s", id);
    assert_int_equal(http(fx_global->url, fx_global->admin_key, "PATCH", path,
                          enabled ? "{\"enabled\":true}" : "{\"enabled\":false}", NULL),
                     200);
}

/* POST .../mqtt-credentials with the admin key; the password into pw. */
static void api_issue(const char *id, char *pw)
{
    char path[128];
    snprintf(path, sizeof path, "/api/v1/devices/%s/mqtt-credentials", id);
    cJSON *a = NULL;
    assert_int_equal(http(fx_global->url, fx_global->admin_key, "POST", path, NULL, &a), 201);
    const cJSON *d = cJSON_GetObjectItemCaseSensitive(a, "data");
    assert_string_equal(str_of(d, "username"), id);
    const char *p = str_of(d, "password");
    assert_non_null(p);
    assert_int_equal(strlen(p), EM_DYNSEC_PASSWORD_LEN);
    memcpy(pw, p, EM_DYNSEC_PASSWORD_LEN + 1);
    cJSON_Delete(a);
}

typedef struct evseen {
    const char *type;
    const char *device;
    const char *secret; /* must appear in no event */
    int count;
    int max_severity;
    bool secret_seen;
} evseen_t;

static int on_event(const em_store_event_t *ev, void *ud)
{
    evseen_t *s = ud;
    if (s->secret != NULL && strstr(ev->message, s->secret) != NULL)
        s->secret_seen = true;
    if (strcmp(ev->type, s->type) == 0 && strcmp(ev->device_id, s->device) == 0) {
        s->count++;
        if ((int)ev->severity > s->max_severity)
            s->max_severity = (int)ev->severity;
    }
    return 0;
}

static evseen_t events_of(const char *type, const char *device, const char *secret)
{
    evseen_t s = {type, device, secret, 0, -1, false};
    em_store_event_filter_t f;
    memset(&f, 0, sizeof f);
    f.kind = -1;
    f.min_severity = -1;
    f.range.limit = EM_STORE_PAGE_MAX;
    em_error_t e;
    em_error_clear(&e);
    assert_int_equal(em_store_event_list(fx_global->store, &f, on_event, &s, &e), EM_OK);
    return s;
}

static void test_api_post_issues_a_password_that_logs_in_and_is_audited(void **state)
{
    (void)state;
    char pw[EM_DYNSEC_PASSWORD_LEN + 1];
    api_create_device("api-cred-1");
    api_issue("api-cred-1", pw);
    assert_int_equal(pub("api-cred-1", pw, "device/api-cred-1/status", "{}"), 0);
    evseen_t s = events_of("mqtt_credentials_issued", "api-cred-1", pw);
    assert_int_equal(s.count, 1);
    assert_false(s.secret_seen);
}

static void test_api_post_again_replaces_the_password(void **state)
{
    (void)state;
    char p1[EM_DYNSEC_PASSWORD_LEN + 1], p2[EM_DYNSEC_PASSWORD_LEN + 1];
    api_create_device("api-cred-2");
    api_issue("api-cred-2", p1);
    api_issue("api-cred-2", p2);
    assert_string_not_equal(p1, p2);
    assert_int_not_equal(pub("api-cred-2", p1, "device/api-cred-2/status", "{}"), 0);
    assert_int_equal(pub("api-cred-2", p2, "device/api-cred-2/status", "{}"), 0);
}

static void test_api_delete_revokes_and_second_delete_is_404(void **state)
{
    fixture_t *fx = *state;
    char pw[EM_DYNSEC_PASSWORD_LEN + 1];
    api_create_device("api-cred-3");
    api_issue("api-cred-3", pw);
    const char *path = "/api/v1/devices/api-cred-3/mqtt-credentials";
    cJSON *a = NULL;
    assert_int_equal(http(fx->url, fx->admin_key, "DELETE", path, NULL, &a), 200);
    assert_true(cJSON_IsTrue(cJSON_GetObjectItemCaseSensitive(a, "success")));
    cJSON_Delete(a);
    a = NULL;
    assert_int_not_equal(pub("api-cred-3", pw, "device/api-cred-3/status", "{}"), 0);
    assert_int_equal(http(fx->url, fx->admin_key, "DELETE", path, NULL, &a), 404);
    assert_error_code(a, "not_found");
    cJSON_Delete(a);
    assert_int_equal(events_of("mqtt_credentials_revoked", "api-cred-3", NULL).count, 1);
}

static void test_api_unknown_device_is_404_and_disabled_device_is_409(void **state)
{
    fixture_t *fx = *state;
    cJSON *a = NULL;
    assert_int_equal(http(fx->url, fx->admin_key, "POST",
                          "/api/v1/devices/no-such-dev/mqtt-credentials", NULL, &a),
                     404);
    assert_error_code(a, "device_not_found");
    cJSON_Delete(a);
    a = NULL;
    assert_int_equal(http(fx->url, fx->admin_key, "DELETE",
                          "/api/v1/devices/no-such-dev/mqtt-credentials", NULL, &a),
                     404);
    assert_error_code(a, "device_not_found");
    cJSON_Delete(a);

    api_create_device("api-cred-off");
    api_set_enabled("api-cred-off", false);
    a = NULL;
    assert_int_equal(http(fx->url, fx->admin_key, "POST",
                          "/api/v1/devices/api-cred-off/mqtt-credentials", NULL, &a),
                     409);
    cJSON_Delete(a);
}

static void test_api_body_with_fields_is_400(void **state)
{
    fixture_t *fx = *state;
    api_create_device("api-cred-body");
    cJSON *a = NULL;
    assert_int_equal(http(fx->url, fx->admin_key, "POST",
                          "/api/v1/devices/api-cred-body/mqtt-credentials",
                          "{\"password\":\"mine\"}", &a),
                     400);
    assert_error_code(a, "validation");
    cJSON_Delete(a);
    a = NULL;
    /* An empty object is fine. */
    assert_int_equal(http(fx->url, fx->admin_key, "POST",
                          "/api/v1/devices/api-cred-body/mqtt-credentials", "{}", &a),
                     201);
    cJSON_Delete(a);
}

static void test_api_viewer_is_403_and_no_credentials_is_401(void **state)
{
    fixture_t *fx = *state;
    api_create_device("api-cred-4");
    cJSON *a = NULL;
    assert_int_equal(http(fx->url, fx->admin_key, "POST", "/api/v1/keys",
                          "{\"name\":\"dynsec-viewer\",\"role\":\"viewer\"}", &a),
                     201);
    const char *k = str_of(cJSON_GetObjectItemCaseSensitive(a, "data"), "key");
    assert_non_null(k);
    snprintf(fx->viewer_key, sizeof fx->viewer_key, "%s", k);
    cJSON_Delete(a);
    const char *path = "/api/v1/devices/api-cred-4/mqtt-credentials";
    assert_int_equal(http(fx->url, fx->viewer_key, "POST", path, NULL, NULL), 403);
    assert_int_equal(http(fx->url, fx->viewer_key, "DELETE", path, NULL, NULL), 403);
    assert_int_equal(http(fx->url, NULL, "POST", path, NULL, NULL), 401);
}

static void test_api_without_dynsec_is_503(void **state)
{
    fixture_t *fx = *state;
    api_create_device("api-cred-5");
    cJSON *a = NULL;
    assert_int_equal(http(fx->url_plain, fx->admin_key, "POST",
                          "/api/v1/devices/api-cred-5/mqtt-credentials", NULL, &a),
                     503);
    assert_error_code(a, "not_connected");
    cJSON_Delete(a);
}

static void test_api_disabling_the_device_disables_its_mqtt_client(void **state)
{
    (void)state;
    char pw[EM_DYNSEC_PASSWORD_LEN + 1];
    api_create_device("api-cred-6");
    api_issue("api-cred-6", pw);
    api_set_enabled("api-cred-6", false);
    assert_int_not_equal(pub("api-cred-6", pw, "device/api-cred-6/status", "{}"), 0);
    api_set_enabled("api-cred-6", true);
    assert_int_equal(pub("api-cred-6", pw, "device/api-cred-6/status", "{}"), 0);
}

static void test_api_deleting_the_device_removes_its_mqtt_client(void **state)
{
    fixture_t *fx = *state;
    char pw[EM_DYNSEC_PASSWORD_LEN + 1];
    api_create_device("api-cred-7");
    api_issue("api-cred-7", pw);
    assert_int_equal(
        http(fx->url, fx->admin_key, "DELETE", "/api/v1/devices/api-cred-7", NULL, NULL), 200);
    assert_int_not_equal(pub("api-cred-7", pw, "device/api-cred-7/status", "{}"), 0);
    em_error_t e;
    em_error_clear(&e);
    assert_int_equal(em_dynsec_remove(fx->d, "api-cred-7", &e), EM_ERR_NOT_FOUND);
    /* A device without credentials is disabled and deleted without a word. */
    api_create_device("api-cred-8");
    api_set_enabled("api-cred-8", false);
    assert_int_equal(
        http(fx->url, fx->admin_key, "DELETE", "/api/v1/devices/api-cred-8", NULL, NULL), 200);
    assert_int_equal(events_of("mqtt_credentials_out_of_sync", "api-cred-8", NULL).count, 0);
}

/* ---- emiotctl ------------------------------------------------------------------ */

#define CTL_BIN EM_TEST_BINARY_DIR "/emiotctl"

/* Runs emiotctl against the API with the admin key (from a 0600 file);
 * stdout and stderr go to out. Returns the exit status. */
static int ctl(const char *out, const char *a1, const char *a2, const char *a3, const char *a4,
               const char *a5)
{
    fixture_t *fx = fx_global;
    char keyf[EM_TEST_PATH_MAX];
    path_in(keyf, sizeof keyf, "admin.key");
    assert_int_equal(write_file(keyf, fx->admin_key), 0);
    const char *argv[16] = {CTL_BIN,          "--url", fx->url, "--ca", em_test_broker_ca(&fx->b),
                            "--api-key-file", keyf};
    int n = 7;
    const char *more[] = {a1, a2, a3, a4, a5};
    for (size_t i = 0; i < 5 && more[i] != NULL; i++)
        argv[n++] = more[i];
    argv[n] = NULL;
    unlink(out);
    pid_t pid = em_test_spawn(argv, out);
    assert_true(pid > 0);
    int st = em_test_wait(pid, 40000);
    if (st == -1)
        em_test_stop(pid);
    return st;
}

static void test_emiotctl_prints_the_password_once_and_revokes_it(void **state)
{
    (void)state;
    assert_int_equal(access(CTL_BIN, X_OK), 0);
    char out[EM_TEST_PATH_MAX];
    path_in(out, sizeof out, "ctl.out");
    api_create_device("ctl-cred-1");
    assert_int_equal(ctl(out, "-q", "devices", "mqtt-credentials", "ctl-cred-1", NULL), 0);
    char *text = read_all(out);
    assert_non_null(text);
    assert_int_equal(strlen(text), EM_DYNSEC_PASSWORD_LEN + 1); /* the password and '\n' */
    text[EM_DYNSEC_PASSWORD_LEN] = '\0';
    assert_int_equal(pub("ctl-cred-1", text, "device/ctl-cred-1/status", "{}"), 0);

    assert_int_equal(ctl(out, "devices", "mqtt-credentials", "ctl-cred-1", "--revoke", NULL), 0);
    char *said = read_all(out);
    assert_non_null(said);
    assert_non_null(strstr(said, "revoked the MQTT password of device ctl-cred-1"));
    free(said);
    assert_int_not_equal(pub("ctl-cred-1", text, "device/ctl-cred-1/status", "{}"), 0);
    free(text);
    /* Nothing left to revoke: not found (exit 6). */
    assert_int_equal(ctl(out, "devices", "mqtt-credentials", "ctl-cred-1", "--revoke", NULL), 6);
}

static void test_emiotctl_table_shows_username_and_password_with_a_warning(void **state)
{
    (void)state;
    char out[EM_TEST_PATH_MAX];
    path_in(out, sizeof out, "ctl-table.out");
    api_create_device("ctl-cred-2");
    assert_int_equal(ctl(out, "devices", "mqtt-credentials", "ctl-cred-2", NULL, NULL), 0);
    char *text = read_all(out);
    assert_non_null(text);
    assert_non_null(strstr(text, "ctl-cred-2"));
    assert_non_null(strstr(text, "not shown again"));
    free(text);
}

static void test_emiotctl_out_writes_a_private_file_and_not_stdout(void **state)
{
    (void)state;
    char out[EM_TEST_PATH_MAX], file[EM_TEST_PATH_MAX];
    path_in(out, sizeof out, "ctl-out.out");
    path_in(file, sizeof file, "ctl-cred-3.pw");
    unlink(file);
    api_create_device("ctl-cred-3");
    assert_int_equal(ctl(out, "devices", "mqtt-credentials", "ctl-cred-3", "--out", file), 0);
    struct stat sb;
    assert_int_equal(stat(file, &sb), 0);
    assert_int_equal(sb.st_mode & 0777, 0600);
    char *pw = read_all(file);
    assert_non_null(pw);
    assert_int_equal(strlen(pw), EM_DYNSEC_PASSWORD_LEN + 1);
    pw[EM_DYNSEC_PASSWORD_LEN] = '\0';
    char *shown = read_all(out);
    assert_non_null(shown);
    assert_null(strstr(shown, pw));
    free(shown);
    assert_int_equal(pub("ctl-cred-3", pw, "device/ctl-cred-3/status", "{}"), 0);
    free(pw);
    /* An existing file is never overwritten: refused before any request. */
    assert_int_equal(ctl(out, "devices", "mqtt-credentials", "ctl-cred-3", "--out", file), 1);
}

static void test_emiotctl_bad_arguments_are_refused_before_sending(void **state)
{
    (void)state;
    char out[EM_TEST_PATH_MAX];
    path_in(out, sizeof out, "ctl-bad.out");
    assert_int_equal(ctl(out, "devices", "mqtt-credentials", "ctl-cred-4", "--revoke", "--out"), 2);
    assert_int_equal(ctl(out, "devices", "mqtt-credentials", "bad/id", NULL, NULL), 7);
    assert_int_equal(ctl(out, "devices", "mqtt-credentials", NULL, NULL, NULL), 2);
}

/* ---- emiotd ---------------------------------------------------------------------- */

static void test_emiotd_with_a_dynsec_section_issues_and_follows_mqtt_credentials(void **state)
{
    fixture_t *fx = *state;
    char extra[2048];
    snprintf(extra, sizeof extra,
             "[dynsec]\nurl = %s\nca_file = %s\nusername = %s\npassword_file = %s\n",
             em_test_broker_url(&fx->b), em_test_broker_ca(&fx->b), ADMIN_USER, fx->admin_pw_file);
    em_test_daemon_options_t o;
    memset(&o, 0, sizeof o);
    o.extra_config = extra;
    em_test_daemon_t dd;
    /* No MQTT broker for the manager: these routes need only the plugin. */
    assert_int_equal(em_test_daemon_start(&dd, NULL, &o), 0);
    char body[EM_TEST_DAEMON_TEXT_MAX];
    assert_int_equal(em_test_daemon_request(&dd, dd.admin_key, "POST", "/api/v1/devices",
                                            "{\"id\":\"emiotd-cred-1\",\"name\":\"d\","
                                            "\"type\":\"sensor\"}",
                                            body, sizeof body),
                     201);
    /* The daemon may still be connecting to the plugin at first. */
    int st = -1;
    int64_t until = em_mono_ms() + WAIT_MS;
    while (em_mono_ms() < until) {
        st = em_test_daemon_request(&dd, dd.admin_key, "POST",
                                    "/api/v1/devices/emiotd-cred-1/mqtt-credentials", NULL, body,
                                    sizeof body);
        if (st != 503)
            break;
        em_test_sleep_ms(200);
    }
    if (st != 201)
        fprintf(stderr, "POST mqtt-credentials: %d %s\n", st, body);
    assert_int_equal(st, 201);
    cJSON *a = cJSON_Parse(body);
    const char *pw = str_of(cJSON_GetObjectItemCaseSensitive(a, "data"), "password");
    assert_non_null(pw);
    char password[EM_DYNSEC_PASSWORD_LEN + 1];
    snprintf(password, sizeof password, "%s", pw);
    cJSON_Delete(a);
    assert_int_equal(pub("emiotd-cred-1", password, "device/emiotd-cred-1/status", "{}"), 0);

    /* The log holds no password. */
    char *log = read_all(dd.out);
    assert_non_null(log);
    assert_null(strstr(log, password));
    free(log);

    assert_int_equal(em_test_daemon_request(&dd, dd.admin_key, "PATCH",
                                            "/api/v1/devices/emiotd-cred-1", "{\"enabled\":false}",
                                            body, sizeof body),
                     200);
    assert_int_not_equal(pub("emiotd-cred-1", password, "device/emiotd-cred-1/status", "{}"), 0);
    assert_int_equal(em_test_daemon_request(&dd, dd.admin_key, "DELETE",
                                            "/api/v1/devices/emiotd-cred-1", NULL, body,
                                            sizeof body),
                     200);
    em_error_t e;
    em_error_clear(&e);
    assert_int_equal(em_dynsec_remove(fx->d, "emiotd-cred-1", &e), EM_ERR_NOT_FOUND);
    em_test_daemon_cleanup(&dd);
}

static void test_api_broker_down_is_503_and_a_disable_still_happens_with_an_event(void **state)
{
    fixture_t *fx = *state;
    char pw[EM_DYNSEC_PASSWORD_LEN + 1];
    api_create_device("api-cred-9");
    api_issue("api-cred-9", pw);
    broker_stop(fx);

    cJSON *a = NULL;
    int st = -1;
    const char *code = NULL;
    int64_t until = em_mono_ms() + WAIT_MS;
    /* Until the client has noticed (a request in flight then may time out). */
    while (em_mono_ms() < until) {
        cJSON_Delete(a);
        a = NULL;
        st = http(fx->url, fx->admin_key, "POST", "/api/v1/devices/api-cred-9/mqtt-credentials",
                  NULL, &a);
        code = str_of(a, "errorCode");
        if (st == 503 && code != NULL && strcmp(code, "not_connected") == 0)
            break;
        em_test_sleep_ms(100);
    }
    assert_int_equal(st, 503);
    assert_error_code(a, "not_connected");
    cJSON_Delete(a);

    /* The device is disabled all the same; that its MQTT client could not
     * be is a high-severity security event. */
    api_set_enabled("api-cred-9", false);
    evseen_t s = events_of("mqtt_credentials_out_of_sync", "api-cred-9", NULL);
    assert_int_equal(s.count, 1);
    assert_int_equal(s.max_severity, EM_SEV_HIGH);
    em_store_device_t dev;
    em_error_t e;
    em_error_clear(&e);
    assert_int_equal(em_store_device_get(fx->store, "api-cred-9", &dev, &e), EM_OK);
    assert_false(dev.enabled);

    assert_int_equal(broker_start(fx), 0);
    /* Back: the operator repairs it by revoking the password. */
    until = em_mono_ms() + 40000;
    while (em_mono_ms() < until) {
        st = http(fx->url, fx->admin_key, "DELETE", "/api/v1/devices/api-cred-9/mqtt-credentials",
                  NULL, NULL);
        if (st == 200)
            break;
        em_test_sleep_ms(200);
    }
    assert_int_equal(st, 200);
    assert_int_not_equal(pub("api-cred-9", pw, "device/api-cred-9/status", "{}"), 0);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_password_is_43_base64url_characters_and_new_each_time),
        cmocka_unit_test(test_provisioned_device_publishes_its_own_status),
        cmocka_unit_test(test_device_cannot_publish_to_another_devices_status),
        cmocka_unit_test(test_device_cannot_subscribe_to_another_devices_command),
        cmocka_unit_test(test_device_cannot_publish_on_its_own_command_topic),
        cmocka_unit_test(test_reprovision_changes_the_password_and_ends_the_old_session),
        cmocka_unit_test(test_disabled_device_is_refused_and_enabled_again_connects),
        cmocka_unit_test(test_reprovision_enables_a_disabled_client),
        cmocka_unit_test(test_removed_device_is_refused_and_second_remove_is_not_found),
        cmocka_unit_test(test_client_emiot_did_not_create_is_left_alone),
        cmocka_unit_test(test_bad_arguments_are_refused),
        cmocka_unit_test(test_role_allows_exactly_the_device_topics),
        cmocka_unit_test(test_admin_iteration_count_survives_the_plugins_saves),
        cmocka_unit_test(test_wrong_admin_password_is_authentication_error),
        cmocka_unit_test(test_account_without_plugin_rights_is_refused),
        cmocka_unit_test(test_broker_without_the_plugin_times_out),
        cmocka_unit_test(test_bad_options_are_configuration_errors),
        cmocka_unit_test(test_custom_topic_prefix_is_used_in_the_role),
        cmocka_unit_test(test_api_post_issues_a_password_that_logs_in_and_is_audited),
        cmocka_unit_test(test_api_post_again_replaces_the_password),
        cmocka_unit_test(test_api_delete_revokes_and_second_delete_is_404),
        cmocka_unit_test(test_api_unknown_device_is_404_and_disabled_device_is_409),
        cmocka_unit_test(test_api_body_with_fields_is_400),
        cmocka_unit_test(test_api_viewer_is_403_and_no_credentials_is_401),
        cmocka_unit_test(test_api_without_dynsec_is_503),
        cmocka_unit_test(test_api_disabling_the_device_disables_its_mqtt_client),
        cmocka_unit_test(test_api_deleting_the_device_removes_its_mqtt_client),
        cmocka_unit_test(test_emiotctl_prints_the_password_once_and_revokes_it),
        cmocka_unit_test(test_emiotctl_table_shows_username_and_password_with_a_warning),
        cmocka_unit_test(test_emiotctl_out_writes_a_private_file_and_not_stdout),
        cmocka_unit_test(test_emiotctl_bad_arguments_are_refused_before_sending),
        cmocka_unit_test(test_emiotd_with_a_dynsec_section_issues_and_follows_mqtt_credentials),
        cmocka_unit_test(test_api_broker_down_is_503_and_a_disable_still_happens_with_an_event),
        cmocka_unit_test(test_broker_down_is_not_connected_and_the_client_comes_back),
    };
    return cmocka_run_group_tests(tests, group_setup, group_teardown);
}
