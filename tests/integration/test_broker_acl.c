/*
 * emiot tests - the broker configuration `emiotctl broker config` generates,
 * run by a real mosquitto, against real clients (mosquitto_pub, mosquitto_sub
 * with certificates made by `emiotctl pki`).
 *
 * The CA is an operator's CA made 30 days ago (python3 cryptography) and
 * imported with `pki import`, so that a device certificate whose whole period
 * lies in the past can be issued from it. The broker runs from the generated
 * directory on free ports (listener A: certificates; listener B: dynamic
 * security) and is stopped by PID.
 *
 * "Never arrives" is shown without sleeping on chance: the observer first
 * sees a marker published before the forbidden message and another published
 * after it; the broker handles publishes in order, so a forbidden message
 * that got through would be between them.
 */
#include <fcntl.h>
#include <netinet/in.h>
#include <setjmp.h>
#include <signal.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <cjson/cJSON.h>
#include <cmocka.h>

#include "broker.h"
#include "cli.h"
#include "emiot/clock.h"
#include "testutil.h"

#define CTL_BIN       EM_TEST_BINARY_DIR "/emiotctl"
#define PASS          "broker test passphrase 1234"
#define ADMIN         "emiotd.dynsec"
#define ADMIN_PW      "dynsec admin password for the test"
#define MANAGER       "emiotd.manager"
#define RUN_MS        60000
#define OUT_MAX       65536
#define WAIT_MS       15000
#define DAY_MS        ((int64_t)86400000)
#define PATH(name)    in_dir(name)
#define FILE_COUNT    32
#define FILE_NAME_MAX 64

static struct {
    char dir[256];
    char ca[EM_TEST_PATH_MAX];
    char broker[EM_TEST_PATH_MAX]; /* the generated directory */
    char out_file[EM_TEST_PATH_MAX];
    char err_file[EM_TEST_PATH_MAX];
    char log[EM_TEST_PATH_MAX];
    char port_s[16], dport_s[16];
    int port, dport;
    pid_t broker_pid;
    char paths[FILE_COUNT][EM_TEST_PATH_MAX];
    size_t npaths;
    int seq;
} fx;

/* The children's environment (large: not on the stack). */
static em_test_env_t child_env;

static struct {
    int rc;
    char out[OUT_MAX];
    char err[OUT_MAX];
} R;

/* ---- helpers ------------------------------------------------------------------ */

/* a/b into out (a/b and suffix), failing the test when it does not fit. */
static void join2(char *out, size_t size, const char *a, const char *b, const char *suffix)
{
    char tmp[EM_TEST_PATH_MAX * 2];
    int n = snprintf(tmp, sizeof tmp, "%s/%s%s", a, b, suffix);
    assert_true(n > 0 && (size_t)n < size);
    memcpy(out, tmp, (size_t)n + 1);
}

static void join(char *out, size_t size, const char *a, const char *b)
{
    join2(out, size, a, b, "");
}

/* dir/name in a buffer that lives until the end of the file's run. */
static const char *in_dir(const char *name)
{
    for (size_t i = 0; i < fx.npaths; i++) {
        const char *base = strrchr(fx.paths[i], '/');
        if (base != NULL && strcmp(base + 1, name) == 0)
            return fx.paths[i];
    }
    assert_true(fx.npaths < FILE_COUNT);
    char *p = fx.paths[fx.npaths++];
    join(p, EM_TEST_PATH_MAX, fx.dir, name);
    return p;
}

/* Runs argv to completion with the basic environment and extra ("NAME=value"
 * replaces NAME); exit code, stdout and stderr in R. */
static int run_env(const char *const *extra, const char *const *argv)
{
    static char home[EM_TEST_PATH_MAX + 64], pki[EM_TEST_PATH_MAX + 64];
    snprintf(home, sizeof home, "HOME=%s", fx.dir);
    snprintf(pki, sizeof pki, "EMIOT_PKI_DIR=%s", fx.ca);
    const char *const base[] = {home,
                                pki,
                                "EMIOT_KEYSTORE_PASSPHRASE=" PASS,
                                "EMIOT_KEYSTORE_SCRYPT_COST=14",
                                "EMIOT_DYNSEC_ADMIN_PASSWORD=" ADMIN_PW,
                                NULL};
    em_test_env_build(&child_env, base, extra);
    R.rc = em_test_run_env(child_env.envp, argv, fx.out_file, fx.err_file, RUN_MS);
    em_test_read_file(fx.out_file, R.out, sizeof R.out);
    em_test_read_file(fx.err_file, R.err, sizeof R.err);
    if (strcmp(argv[0], CTL_BIN) == 0 &&
        (strstr(R.out, PASS) != NULL || strstr(R.err, PASS) != NULL ||
         strstr(R.out, ADMIN_PW) != NULL || strstr(R.err, ADMIN_PW) != NULL)) {
        fprintf(stderr, "a secret was printed:\n%s\n%s\n", R.out, R.err);
        fail();
    }
    return R.rc;
}

#define RUN(...)          run_env(NULL, (const char *const[]){__VA_ARGS__, NULL})
#define CTL(...)          run_env(NULL, (const char *const[]){CTL_BIN, __VA_ARGS__, NULL})
#define CTL_ENV(env, ...) run_env((env), (const char *const[]){CTL_BIN, __VA_ARGS__, NULL})

#define EXPECT(code, call)                                                                         \
    do {                                                                                           \
        if ((call) != (code)) {                                                                    \
            fprintf(stderr, "exit %d, expected %d\n--- stdout:\n%s\n--- stderr:\n%s\n", R.rc,      \
                    (code), R.out, R.err);                                                         \
            fail();                                                                                \
        }                                                                                          \
    } while (0)

static void expect_in(const char *hay, const char *needle)
{
    if (strstr(hay, needle) == NULL) {
        fprintf(stderr, "expected \"%s\" in:\n%s\n", needle, hay);
        fail();
    }
}

/* ---- the broker ---------------------------------------------------------------------- */

static int start_broker(void)
{
    char conf[EM_TEST_PATH_MAX];
    join(conf, sizeof conf, fx.broker, "mosquitto.conf");
    const int ports[] = {fx.port, fx.dport};
    return em_test_mosquitto_start(conf, fx.log, ports, 2, &fx.broker_pid);
}

/* The certificate files of a client: dir/NAME.crt, dir/NAME.key. */
static void client_files(const char *name, char *crt, char *key)
{
    join2(crt, EM_TEST_PATH_MAX, fx.dir, name, ".crt");
    join2(key, EM_TEST_PATH_MAX, fx.dir, name, ".key");
}

/* mosquitto_pub as the client NAME (MQTT 5, QoS 1: a denied publish is
 * answered "Not authorized", which mosquitto_pub prints). */
static int pub(const char *name, const char *topic, const char *msg)
{
    char crt[EM_TEST_PATH_MAX], key[EM_TEST_PATH_MAX], ca[EM_TEST_PATH_MAX];
    client_files(name, crt, key);
    join(ca, sizeof ca, fx.broker, "ca.crt");
    return RUN("mosquitto_pub", "-V", "mqttv5", "-q", "1", "-h", "localhost", "-p", fx.port_s,
               "--cafile", ca, "--cert", crt, "--key", key, "-t", topic, "-m", msg);
}

/* Starts mosquitto_sub as NAME on topics (NULL-terminated), -v, into out. */
static pid_t sub(const char *name, const char *const *topics, const char *out)
{
    char crt[EM_TEST_PATH_MAX], key[EM_TEST_PATH_MAX], ca[EM_TEST_PATH_MAX];
    client_files(name, crt, key);
    join(ca, sizeof ca, fx.broker, "ca.crt");
    return em_test_mosquitto_sub(fx.port_s, ca, crt, key, topics, out);
}

/* Publishes msg as NAME to topic every 200 ms until it shows in out. */
static void pub_until_seen(const char *name, const char *topic, const char *msg, const char *out)
{
    char line[256];
    snprintf(line, sizeof line, "%s %s", topic, msg);
    for (int i = 0; i < WAIT_MS / 200; i++) {
        assert_int_equal(pub(name, topic, msg), 0);
        if (em_test_wait_in_file(out, line, 1, 200))
            return;
    }
    fprintf(stderr, "\"%s\" never reached the subscriber\n", line);
    fail();
}

/* A unique marker for this run. */
static const char *marker(const char *what)
{
    static char buf[64];
    snprintf(buf, sizeof buf, "%s-%d", what, ++fx.seq);
    return buf;
}

/* ---- set-up ------------------------------------------------------------------------------ */

static int setup_ca(void)
{
    /* An operator's CA that started 30 days ago. */
    const char *py = "import sys,os,datetime\n"
                     "from cryptography import x509\n"
                     "from cryptography.x509.oid import NameOID\n"
                     "from cryptography.hazmat.primitives import hashes, serialization\n"
                     "from cryptography.hazmat.primitives.asymmetric import ec\n"
                     "k=ec.generate_private_key(ec.SECP256R1())\n"
                     "n=x509.Name([x509.NameAttribute(NameOID.COMMON_NAME,'Broker Test CA')])\n"
                     "now=datetime.datetime.utcnow()\n"
                     "c=(x509.CertificateBuilder().subject_name(n).issuer_name(n)"
                     ".public_key(k.public_key()).serial_number(x509.random_serial_number())"
                     ".not_valid_before(now-datetime.timedelta(days=30))"
                     ".not_valid_after(now+datetime.timedelta(days=3650))"
                     ".add_extension(x509.BasicConstraints(ca=True,path_length=None),True)"
                     ".add_extension(x509.KeyUsage(False,False,False,False,False,True,True,False,"
                     "False),True)"
                     ".add_extension(x509.SubjectKeyIdentifier.from_public_key(k.public_key()),"
                     "False).sign(k,hashes.SHA256()))\n"
                     "open(sys.argv[1],'wb').write(c.public_bytes(serialization.Encoding.PEM))\n"
                     "fd=os.open(sys.argv[2],os.O_WRONLY|os.O_CREAT|os.O_EXCL,0o600)\n"
                     "os.write(fd,k.private_bytes(serialization.Encoding.PEM,"
                     "serialization.PrivateFormat.PKCS8,serialization.NoEncryption()))\n";
    if (RUN("python3", "-c", py, PATH("op-ca.crt"), PATH("op-ca.key")) != 0 ||
        CTL("pki", "import", "--cert", PATH("op-ca.crt"), "--key", PATH("op-ca.key")) != 0) {
        fprintf(stderr, "CA set-up failed:\n%s\n%s\n", R.out, R.err);
        return -1;
    }
    return 0;
}

static int issue(const char *profile, const char *cn, const char *name, const char *nb,
                 const char *na)
{
    char crt[EM_TEST_PATH_MAX], key[EM_TEST_PATH_MAX];
    client_files(name, crt, key);
    int rc;
    if (strcmp(profile, "server") == 0)
        rc = CTL("pki", "issue", "--profile", profile, "--cn", cn, "--dns", "localhost", "--ip",
                 "127.0.0.1", "--out-cert", crt, "--out-key", key);
    else if (nb != NULL)
        rc = CTL("pki", "issue", "--profile", profile, "--cn", cn, "--not-before", nb,
                 "--not-after", na, "--out-cert", crt, "--out-key", key);
    else
        rc = CTL("pki", "issue", "--profile", profile, "--cn", cn, "--out-cert", crt, "--out-key",
                 key);
    if (rc != 0)
        fprintf(stderr, "issue %s failed (%d):\n%s\n%s\n", cn, rc, R.out, R.err);
    return rc;
}

/* A device certificate for "dev-a" from a CA that is not ours. */
static int setup_foreign(void)
{
    char crt[EM_TEST_PATH_MAX], key[EM_TEST_PATH_MAX];
    client_files("foreign", crt, key);
    if (RUN("openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256",
            "-nodes", "-keyout", PATH("other-ca.key"), "-out", PATH("other-ca.crt"), "-subj",
            "/CN=Other CA", "-days", "30") != 0 ||
        RUN("openssl", "req", "-new", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256",
            "-nodes", "-keyout", key, "-subj", "/CN=dev-a", "-out", PATH("foreign.csr")) != 0 ||
        RUN("openssl", "x509", "-req", "-in", PATH("foreign.csr"), "-CA", PATH("other-ca.crt"),
            "-CAkey", PATH("other-ca.key"), "-CAcreateserial", "-days", "10", "-out", crt) != 0) {
        fprintf(stderr, "foreign certificate: %s\n", R.err);
        return -1;
    }
    return 0;
}

static int generate_config(void)
{
    char crt[EM_TEST_PATH_MAX], key[EM_TEST_PATH_MAX], user[64];
    client_files("server", crt, key);
    snprintf(user, sizeof user, "%s", getenv("USER") != NULL ? getenv("USER") : "root");
    /* As root, mosquitto would switch to the "mosquitto" account, which cannot
     * read this private directory: --user keeps it the owner. */
    if (getuid() == 0)
        snprintf(user, sizeof user, "root");
    int rc = CTL("broker", "config", "--out", fx.broker, "--server-cert", crt, "--server-key", key,
                 "--port", fx.port_s, "--bind", "127.0.0.1", "--manager-cn", MANAGER,
                 "--dynsec-port", fx.dport_s, "--dynsec-admin", ADMIN, "--user", user);
    if (rc != 0)
        fprintf(stderr, "broker config failed (%d):\n%s\n%s\n", rc, R.out, R.err);
    return rc;
}

static int group_setup(void **state)
{
    (void)state;
    memset(&fx, 0, sizeof fx);
    if (access(CTL_BIN, X_OK) != 0) {
        fprintf(stderr, "test_broker_acl: %s is not built\n", CTL_BIN);
        return -1;
    }
    if (em_test_mkdtemp(fx.dir, sizeof fx.dir) != 0)
        return -1;
    join(fx.ca, sizeof fx.ca, fx.dir, "ca");
    join(fx.broker, sizeof fx.broker, fx.dir, "broker");
    join(fx.out_file, sizeof fx.out_file, fx.dir, "run.out");
    join(fx.err_file, sizeof fx.err_file, fx.dir, "run.err");
    join(fx.log, sizeof fx.log, fx.dir, "mosquitto.log");
    fx.port = em_test_free_port();
    do
        fx.dport = em_test_free_port();
    while (fx.dport == fx.port);
    snprintf(fx.port_s, sizeof fx.port_s, "%d", fx.port);
    snprintf(fx.dport_s, sizeof fx.dport_s, "%d", fx.dport);

    char nb[EM_TIME_STR_MAX], na[EM_TIME_STR_MAX];
    int64_t now = em_now_ms();
    em_time_format(now - 10 * DAY_MS, nb, sizeof nb);
    em_time_format(now - 1 * DAY_MS, na, sizeof na);
    if (setup_ca() != 0 || issue("server", "localhost", "server", NULL, NULL) != 0 ||
        issue("client", MANAGER, "manager", NULL, NULL) != 0 ||
        issue("device", "dev-a", "dev-a", NULL, NULL) != 0 ||
        issue("device", "dev-b", "dev-b", NULL, NULL) != 0 ||
        issue("device", "dev-rev", "dev-rev", NULL, NULL) != 0 ||
        issue("device", "dev-old", "dev-old", nb, na) != 0 || setup_foreign() != 0 ||
        generate_config() != 0 || start_broker() != 0)
        return -1;
    return 0;
}

static int group_teardown(void **state)
{
    (void)state;
    if (fx.broker_pid > 0)
        em_test_stop(fx.broker_pid);
    em_test_rmtree(fx.dir);
    return 0;
}

/* ---- the generated files -------------------------------------------------------------------- */

static unsigned mode_of(const char *path)
{
    struct stat st;
    assert_int_equal(stat(path, &st), 0);
    return (unsigned)(st.st_mode & 0777);
}

static void test_generated_configuration_is_complete(void **state)
{
    (void)state;
    char p[EM_TEST_PATH_MAX], buf[OUT_MAX];
    assert_int_equal(mode_of(fx.broker), 0700);
    join(p, sizeof p, fx.broker, "server.key");
    assert_int_equal(mode_of(p), 0600);
    join(p, sizeof p, fx.broker, "mosquitto.conf");
    em_test_read_file(p, buf, sizeof buf);
    expect_in(buf, "per_listener_settings true");
    expect_in(buf, "require_certificate true");
    expect_in(buf, "use_identity_as_username true");
    expect_in(buf, "crlfile ");
    expect_in(buf, "tls_version tlsv1.2");
    expect_in(buf, "allow_anonymous false");
    expect_in(buf, "acl_file ");
    expect_in(buf, "plugin_opt_config_file ");
    /* emiot's no-drop queueing (docs/OPERATIONS.md). */
    expect_in(buf, "\nmax_queued_messages 0\n");
    expect_in(buf, "\nmax_queued_bytes 0\n");
    expect_in(buf, "\nmax_inflight_messages 0\n");
    expect_in(buf, "\nqueue_qos0_messages false\n");
    expect_in(buf, "\npersistence true\n");
    expect_in(buf, "\n# ");
    join(p, sizeof p, fx.broker, "acl");
    em_test_read_file(p, buf, sizeof buf);
    expect_in(buf, "user " MANAGER "\n");
    expect_in(buf, "topic read device/+/status\n");
    expect_in(buf, "topic read device/+/availability\n");
    expect_in(buf, "topic write device/+/command\n");
    expect_in(buf, "pattern write device/%u/telemetry\n");
    expect_in(buf, "pattern read device/%u/command\n");
    assert_null(strstr(buf, "pattern write device/%u/command"));
    join(p, sizeof p, fx.broker, "dynsec.json");
    em_test_read_file(p, buf, sizeof buf);
    expect_in(buf, "\"iterations\":\t210000");
    expect_in(buf, ADMIN);
    assert_null(strstr(buf, ADMIN_PW));
}

static void test_config_never_overwrites_without_force_and_keeps_dynsec(void **state)
{
    (void)state;
    char crt[EM_TEST_PATH_MAX], key[EM_TEST_PATH_MAX], p[EM_TEST_PATH_MAX];
    char before[OUT_MAX], after[OUT_MAX];
    client_files("server", crt, key);
    join(p, sizeof p, fx.broker, "dynsec.json");
    em_test_read_file(p, before, sizeof before);
    EXPECT(7, CTL("broker", "config", "--out", fx.broker, "--server-cert", crt, "--server-key", key,
                  "--port", fx.port_s, "--dynsec-port", fx.dport_s));
    expect_in(R.err, "--force");
    em_test_read_file(p, after, sizeof after);
    assert_string_equal(before, after);
}

static void test_config_refuses_a_device_id_as_manager_identity(void **state)
{
    (void)state;
    char crt[EM_TEST_PATH_MAX], key[EM_TEST_PATH_MAX];
    client_files("server", crt, key);
    EXPECT(7, CTL("broker", "config", "--out", PATH("other-broker"), "--server-cert", crt,
                  "--server-key", key, "--manager-cn", "manager"));
    EXPECT(7, CTL("broker", "config", "--out", PATH("other-broker"), "--server-cert", crt,
                  "--server-key", key, "--prefix", "dev#/"));
    /* The server key must not be readable by others. */
    assert_int_equal(chmod(key, 0644), 0);
    EXPECT(2, CTL("broker", "config", "--out", PATH("other-broker"), "--server-cert", crt,
                  "--server-key", key));
    assert_int_equal(chmod(key, 0600), 0);
    /* A weak dynsec password is refused. */
    const char *const env[] = {"EMIOT_DYNSEC_ADMIN_PASSWORD=short", NULL};
    EXPECT(7, CTL_ENV(env, "broker", "config", "--out", PATH("other-broker"), "--server-cert", crt,
                      "--server-key", key, "--dynsec-port", "9999"));
}

/* ---- listener A: certificates -----------------------------------------------------------------
 */

static void test_device_status_reaches_the_manager(void **state)
{
    (void)state;
    const char *out = PATH("mgr-status.out");
    const char *const topics[] = {"device/+/status", NULL};
    pid_t s = sub("manager", topics, out);
    pub_until_seen("dev-a", "device/dev-a/status", "{\"batteryLevel\":75,\"powerMode\":\"normal\"}",
                   out);
    /* telemetry too */
    em_test_stop(s);
    const char *const t2[] = {"device/+/telemetry", NULL};
    s = sub("manager", t2, out);
    pub_until_seen("dev-b", "device/dev-b/telemetry", "{\"power_w\":12.5}", out);
    em_test_stop(s);
}

static void test_no_certificate_refused(void **state)
{
    (void)state;
    char ca[EM_TEST_PATH_MAX];
    join(ca, sizeof ca, fx.broker, "ca.crt");
    assert_int_not_equal(RUN("mosquitto_pub", "-h", "localhost", "-p", fx.port_s, "--cafile", ca,
                             "-t", "device/dev-a/status", "-m", "x"),
                         0);
    assert_int_not_equal(RUN("mosquitto_pub", "-h", "localhost", "-p", fx.port_s, "--cafile", ca,
                             "-u", "dev-a", "-P", "anything", "-t", "device/dev-a/status", "-m",
                             "x"),
                         0);
}

static void test_certificate_from_another_ca_refused(void **state)
{
    (void)state;
    assert_int_not_equal(pub("foreign", "device/dev-a/status", "forged"), 0);
}

static void test_expired_certificate_refused(void **state)
{
    (void)state;
    assert_int_not_equal(pub("dev-old", "device/dev-old/status", "old"), 0);
}

static void test_device_cannot_publish_another_devices_status(void **state)
{
    (void)state;
    const char *out = PATH("mgr-forge.out");
    const char *const topics[] = {"device/+/status", NULL};
    pid_t s = sub("manager", topics, out);
    char m1[64];
    snprintf(m1, sizeof m1, "%s", marker("before"));
    pub_until_seen("dev-b", "device/dev-b/status", m1, out);
    assert_int_equal(pub("dev-a", "device/dev-b/status", "FORGED-BY-A"), 0);
    expect_in(R.err, "Not authorized");
    pub_until_seen("dev-b", "device/dev-b/status", marker("after"), out);
    em_test_stop(s);
    char buf[OUT_MAX];
    em_test_read_file(out, buf, sizeof buf);
    assert_null(strstr(buf, "FORGED-BY-A"));
}

static void test_device_cannot_read_another_devices_commands(void **state)
{
    (void)state;
    const char *out_a = PATH("a-cmd.out"), *out_b = PATH("b-cmd.out");
    /* A asks for its own commands and B's; B for its own. */
    const char *const ta[] = {"device/dev-a/command", "device/dev-b/command", NULL};
    const char *const tb[] = {"device/dev-b/command", NULL};
    pid_t sa = sub("dev-a", ta, out_a);
    pid_t sb = sub("dev-b", tb, out_b);
    /* Both subscriptions are in place once each device gets a command. */
    pub_until_seen("manager", "device/dev-a/command", marker("a-ready"), out_a);
    pub_until_seen("manager", "device/dev-b/command", "{\"type\":\"sleep\",\"x\":\"FOR-B\"}",
                   out_b);
    pub_until_seen("manager", "device/dev-a/command", marker("a-after"), out_a);
    em_test_stop(sa);
    em_test_stop(sb);
    char buf[OUT_MAX];
    em_test_read_file(out_a, buf, sizeof buf);
    assert_null(strstr(buf, "FOR-B"));
}

static void test_device_cannot_publish_commands_or_outside_its_topics(void **state)
{
    (void)state;
    const char *out_b = PATH("b-cmd2.out");
    const char *const tb[] = {"device/dev-b/command", NULL};
    pid_t sb = sub("dev-b", tb, out_b);
    pub_until_seen("manager", "device/dev-b/command", marker("b-ready"), out_b);
    assert_int_equal(pub("dev-a", "device/dev-b/command", "CMD-FROM-A"), 0);
    expect_in(R.err, "Not authorized");
    pub_until_seen("manager", "device/dev-b/command", marker("b-after"), out_b);
    em_test_stop(sb);
    char buf[OUT_MAX];
    em_test_read_file(out_b, buf, sizeof buf);
    assert_null(strstr(buf, "CMD-FROM-A"));
    /* Its own command topic, another prefix, a topic of no kind: refused. */
    static const char *const refused[] = {"device/dev-a/command", "other/dev-a/status",
                                          "device/dev-a/firmware", "device/dev-a", "$SYS/broker/x"};
    for (size_t i = 0; i < sizeof refused / sizeof refused[0]; i++) {
        assert_int_equal(pub("dev-a", refused[i], "x"), 0);
        expect_in(R.err, "Not authorized");
    }
    /* Its own topics: accepted. */
    static const char *const allowed[] = {"device/dev-a/status", "device/dev-a/telemetry",
                                          "device/dev-a/response", "device/dev-a/event",
                                          "device/dev-a/availability"};
    for (size_t i = 0; i < sizeof allowed / sizeof allowed[0]; i++) {
        assert_int_equal(pub("dev-a", allowed[i], "{}"), 0);
        assert_null(strstr(R.err, "Not authorized"));
    }
    /* The manager writes commands only. */
    assert_int_equal(pub("manager", "device/dev-a/status", "x"), 0);
    expect_in(R.err, "Not authorized");
}

/* ---- listener B: dynamic security
 * ---------------------------------------------------------------- */

static void test_dynsec_admin_logs_in_with_the_generated_hash(void **state)
{
    (void)state;
    char ca[EM_TEST_PATH_MAX];
    join(ca, sizeof ca, fx.broker, "ca.crt");
    const char *out = PATH("dynsec.out");
    unlink(out);
    const char *argv[] = {"mosquitto_sub",
                          "-V",
                          "mqttv5",
                          "-h",
                          "localhost",
                          "-p",
                          fx.dport_s,
                          "--cafile",
                          ca,
                          "-u",
                          ADMIN,
                          "-P",
                          ADMIN_PW,
                          "-t",
                          "$CONTROL/dynamic-security/v1/response",
                          "-C",
                          "1",
                          "-W",
                          "20",
                          NULL};
    pid_t s = em_test_spawn(argv, out);
    assert_true(s > 0);
    for (int i = 0; i < 50 && em_test_count_in_file(out, ADMIN) == 0; i++) {
        assert_int_equal(RUN("mosquitto_pub", "-V", "mqttv5", "-h", "localhost", "-p", fx.dport_s,
                             "--cafile", ca, "-u", ADMIN, "-P", ADMIN_PW, "-t",
                             "$CONTROL/dynamic-security/v1", "-m",
                             "{\"commands\":[{\"command\":\"listClients\"}]}"),
                         0);
        em_test_wait_in_file(out, ADMIN, 1, 300);
    }
    em_test_stop(s);
    assert_true(em_test_count_in_file(out, ADMIN) >= 1);
    /* A wrong password is refused; the admin may not touch device topics. */
    assert_int_not_equal(RUN("mosquitto_pub", "-h", "localhost", "-p", fx.dport_s, "--cafile", ca,
                             "-u", ADMIN, "-P", "not the password at all", "-t", "x", "-m", "x"),
                         0);
    assert_int_equal(RUN("mosquitto_pub", "-V", "mqttv5", "-q", "1", "-h", "localhost", "-p",
                         fx.dport_s, "--cafile", ca, "-u", ADMIN, "-P", ADMIN_PW, "-t",
                         "device/dev-a/status", "-m", "x"),
                     0);
    expect_in(R.err, "Not authorized");
}

/* ---- revocation: last, it changes the broker's CRL ----------------------------------------------
 */

static void test_revoked_certificate_refused_after_broker_reload(void **state)
{
    (void)state;
    const char *out = PATH("mgr-rev.out");
    const char *const topics[] = {"device/+/status", NULL};
    pid_t s = sub("manager", topics, out);
    /* Good until revoked. */
    pub_until_seen("dev-rev", "device/dev-rev/status", marker("alive"), out);
    /* dev-rev is also connected, listening for its commands, when revoked. */
    const char *cmd_out = PATH("rev-cmd.out");
    const char *const ct[] = {"device/dev-rev/command", NULL};
    pid_t rs = sub("dev-rev", ct, cmd_out);
    pub_until_seen("manager", "device/dev-rev/command", marker("rev-ready"), cmd_out);
    char serial[64] = "";
    EXPECT(0, CTL("-o", "json", "pki", "list"));
    cJSON *list = cJSON_Parse(R.out);
    assert_non_null(list);
    const cJSON *row;
    cJSON_ArrayForEach(row, list)
    {
        const char *cn = cJSON_GetStringValue(cJSON_GetObjectItem(row, "commonName"));
        const char *sn = cJSON_GetStringValue(cJSON_GetObjectItem(row, "serial"));
        if (cn != NULL && sn != NULL && strcmp(cn, "dev-rev") == 0)
            snprintf(serial, sizeof serial, "%s", sn);
    }
    cJSON_Delete(list);
    assert_int_equal(strlen(serial), 32);
    EXPECT(0, CTL("pki", "revoke", serial, "--reason", "keyCompromise"));
    /* Refresh the broker's copy of the CRL and reload it. */
    char crt[EM_TEST_PATH_MAX], key[EM_TEST_PATH_MAX];
    client_files("server", crt, key);
    EXPECT(0, CTL("broker", "config", "--out", fx.broker, "--server-cert", crt, "--server-key", key,
                  "--port", fx.port_s, "--bind", "127.0.0.1", "--manager-cn", MANAGER,
                  "--dynsec-port", fx.dport_s, "--dynsec-admin", ADMIN, "--user",
                  getuid() == 0 ? "root" : (getenv("USER") != NULL ? getenv("USER") : "root"),
                  "--force"));
    expect_in(R.out, "dynsec.json kept");
    int reloads = em_test_count_in_file(fx.log, "Reloading config");
    assert_int_equal(kill(fx.broker_pid, SIGHUP), 0);
    assert_true(em_test_wait_in_file(fx.log, "Reloading config", reloads + 1, WAIT_MS));
    em_test_sleep_ms(200); /* the reload finishes after its log line */
    assert_int_not_equal(pub("dev-rev", "device/dev-rev/status", "REVOKED"), 0);
    /* What mosquitto 2.0.11 does (docs/EMIOTCTL.md says so): the reload does
     * not close a connection made before it; only a restart does. */
    pub_until_seen("manager", "device/dev-rev/command", marker("rev-still-connected"), cmd_out);
    em_test_stop(rs);
    /* The others still connect. */
    pub_until_seen("dev-a", "device/dev-a/status", marker("still"), out);
    em_test_stop(s);
    char buf[OUT_MAX];
    em_test_read_file(out, buf, sizeof buf);
    assert_null(strstr(buf, "REVOKED"));
    /* And after a restart too. */
    em_test_stop(fx.broker_pid);
    fx.broker_pid = 0;
    assert_int_equal(start_broker(), 0);
    assert_int_not_equal(pub("dev-rev", "device/dev-rev/status", "REVOKED"), 0);
    assert_int_equal(pub("dev-a", "device/dev-a/status", "ok"), 0);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_generated_configuration_is_complete),
        cmocka_unit_test(test_config_never_overwrites_without_force_and_keeps_dynsec),
        cmocka_unit_test(test_config_refuses_a_device_id_as_manager_identity),
        cmocka_unit_test(test_device_status_reaches_the_manager),
        cmocka_unit_test(test_no_certificate_refused),
        cmocka_unit_test(test_certificate_from_another_ca_refused),
        cmocka_unit_test(test_expired_certificate_refused),
        cmocka_unit_test(test_device_cannot_publish_another_devices_status),
        cmocka_unit_test(test_device_cannot_read_another_devices_commands),
        cmocka_unit_test(test_device_cannot_publish_commands_or_outside_its_topics),
        cmocka_unit_test(test_dynsec_admin_logs_in_with_the_generated_hash),
        cmocka_unit_test(test_revoked_certificate_refused_after_broker_reload),
    };
    return cmocka_run_group_tests(tests, group_setup, group_teardown);
}
