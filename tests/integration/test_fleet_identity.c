/*
 * emiot tests - test_fleet_identity.c: the whole device-identity set-up, end
 * to end, as an operator and a device would run it, with the real programs
 * only: the build's emiotctl, emiotd (tests/support/daemon.h) and
 * emiot-agent, mosquitto from the configuration `emiotctl broker config`
 * generates, openssl, mosquitto_pub and mosquitto_sub.
 *
 * Set-up (the group set-up): `emiotctl pki init` (the passphrase in a 0600
 * file), a server certificate for localhost and 127.0.0.1, the manager's
 * client certificate "emiotd.manager", `emiotctl broker config`, mosquitto
 * from the generated directory on a free port; emiotd with [pki] dir = that
 * CA, [keystore] passphrase_file = the same file, [mqtt] mqtts to that broker
 * with the manager's certificate, and its API trusting that CA for client
 * certificates.
 *
 * The tests are one story and run in order: d-1 is registered and enrolled
 * (emiotctl devices enroll-token, emiot-agent enroll) in the first one and
 * used by the others. A certificate that must be refused is refused by the
 * broker at connect (mosquitto_pub fails) AND by emiotd, as a client
 * certificate on its API (401, or a failed handshake) and in
 * challenge-response (emiot-agent token with the certificate: refused, and a
 * device_auth_refused security event for the device). Each refusal has its
 * positive control in the same program: d-1's enrolled certificate goes
 * through the same doors.
 *
 * "Never arrives" is shown without sleeping on chance: a marker that must
 * arrive is sent after the forbidden message, over the same broker and the
 * same emiotd subscription; both handle messages in order, so a forbidden
 * message that got through would be seen before the marker.
 *
 * The last test switches the fleet to an operator's own CA (imported with
 * `emiotctl pki import`, a device certificate signed with `openssl x509
 * -req`): the broker is stopped and one generated from that CA takes its
 * port, and emiotd is restarted on that CA directory.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include <arpa/inet.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <signal.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <cjson/cJSON.h>
#include <openssl/asn1.h>
#include <openssl/pem.h>
#include <openssl/x509.h>

#include "broker.h"
#include "cli.h"
#include "daemon.h"
#include "emiot/clock.h"
#include "testutil.h"

#define CTL       EM_TEST_BINARY_DIR "/emiotctl"
#define AGENT     EM_TEST_BINARY_DIR "/emiot-agent"
#define PASS      "fleet identity passphrase 2718"
#define MANAGER   "emiotd.manager"
#define P         EM_TEST_PATH_MAX
#define OUT_MAX   65536
#define RUN_MS    60000
#define SEEN_MS   20000 /* how long a message that must arrive may take */
#define EXTRA_MAX 4096

/* Exit statuses of emiot-agent enroll/token (docs/AGENT.md). */
#define AGENT_REFUSED 4

static struct {
    char dir[256];
    char pass[P];   /* the keystore passphrase file (0600) */
    char ca_dir[P]; /* emiot's CA directory (pki init) */
    char ca_crt[P]; /* its ca.crt */
    char broker[P]; /* the generated broker directory */
    char conf[P];   /* its mosquitto.conf */
    char blog[P];   /* mosquitto's output */
    char port_s[16];
    int port;
    pid_t broker_pid;
    em_test_daemon_t d;
    char extra[EXTRA_MAX];
    int seq;
    bool enrolled; /* d-1 has its certificate (the first test passed) */
} fx;

/* The last child's exit status and output (stdout and stderr). */
static struct {
    int rc;
    char out[OUT_MAX];
} R;

static char body[OUT_MAX]; /* the last API answer */

/* ---- files ------------------------------------------------------------------- */

/* dir/name into out (P bytes), failing the test when it does not fit. */
static void join(char *out, const char *dir, const char *name)
{
    char tmp[2 * P];
    int n = snprintf(tmp, sizeof tmp, "%s/%s", dir, name);
    assert_true(n > 0 && n < P);
    memcpy(out, tmp, (size_t)n + 1);
}

static void path_in(char *out, const char *name)
{
    join(out, fx.dir, name);
}

/* DIR/name.crt and DIR/name.key: one identity's files. */
static void ident(const char *name, char crt[P], char key[P])
{
    char n[128];
    snprintf(n, sizeof n, "%s.crt", name);
    path_in(crt, n);
    snprintf(n, sizeof n, "%s.key", name);
    path_in(key, n);
}

static void write_text(const char *path, const char *text, mode_t mode)
{
    int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, mode);
    assert_true(fd >= 0);
    size_t n = strlen(text);
    assert_int_equal(write(fd, text, n), (ssize_t)n);
    assert_int_equal(close(fd), 0);
}

/* A marker unique in this run. */
static void marker(char *buf, size_t size, const char *what)
{
    snprintf(buf, size, "%s-%d", what, ++fx.seq);
}

/* ---- child processes ---------------------------------------------------------- */

/* Runs argv to completion (the environment is the test's: see group_setup);
 * exit status and output in R. The passphrase must never be printed. */
static int run(const char *const *argv)
{
    char out[P], name[32];
    snprintf(name, sizeof name, "run-%d.out", ++fx.seq);
    path_in(out, name);
    R.rc = em_test_run_capture(argv, out, R.out, sizeof R.out, RUN_MS);
    if (strstr(R.out, PASS) != NULL) {
        fprintf(stderr, "%s printed the passphrase:\n%s\n", argv[0], R.out);
        fail();
    }
    return R.rc;
}

#define RUN(...)     run((const char *const[]){__VA_ARGS__, NULL})
#define CTL_RUN(...) run((const char *const[]){CTL, __VA_ARGS__, NULL})

#define EXPECT(code, call)                                                                         \
    do {                                                                                           \
        int got_ = (call);                                                                         \
        if (got_ != (code)) {                                                                      \
            fprintf(stderr, "%s:%d: exit %d, expected %d:\n%s\n", __FILE__, __LINE__, got_,        \
                    (code), R.out);                                                                \
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

/* ---- the broker ----------------------------------------------------------------- */

/* mosquitto -c fx.conf; returns once the port accepts connections. */
static int start_broker(void)
{
    return em_test_mosquitto_start(fx.conf, fx.blog, &fx.port, 1, &fx.broker_pid);
}

static void stop_broker(void)
{
    if (fx.broker_pid > 0)
        em_test_stop(fx.broker_pid);
    fx.broker_pid = 0;
}

/* `emiotctl broker config` into fx.broker for the CA directory in the
 * environment (EMIOT_PKI_DIR), with the server certificate of identity
 * server_name. */
static int broker_config(const char *server_name, bool force)
{
    char crt[P], key[P];
    ident(server_name, crt, key);
    /* As root mosquitto would switch to the "mosquitto" account, which cannot
     * read this private directory: --user keeps the owner. */
    const char *user = getuid() == 0 ? "root" : getenv("USER");
    if (user == NULL)
        user = "root";
    int rc = force ? CTL_RUN("broker", "config", "--out", fx.broker, "--server-cert", crt,
                             "--server-key", key, "--port", fx.port_s, "--bind", "127.0.0.1",
                             "--manager-cn", MANAGER, "--user", user, "--force")
                   : CTL_RUN("broker", "config", "--out", fx.broker, "--server-cert", crt,
                             "--server-key", key, "--port", fx.port_s, "--bind", "127.0.0.1",
                             "--manager-cn", MANAGER, "--user", user);
    if (rc != 0)
        fprintf(stderr, "broker config: exit %d\n%s\n", rc, R.out);
    return rc;
}

/* mosquitto_pub (MQTT 5, QoS 1: a denied publish is answered "Not
 * authorized", which mosquitto_pub prints) as the identity NAME. */
static int pub(const char *name, const char *topic, const char *msg)
{
    char crt[P], key[P], ca[P];
    ident(name, crt, key);
    join(ca, fx.broker, "ca.crt");
    return RUN("mosquitto_pub", "-V", "mqttv5", "-q", "1", "-h", "localhost", "-p", fx.port_s,
               "--cafile", ca, "--cert", crt, "--key", key, "-t", topic, "-m", msg);
}

/* Starts mosquitto_sub -v as NAME on topics (NULL-terminated) into out. */
static pid_t sub(const char *name, const char *const *topics, const char *out)
{
    char crt[P], key[P], ca[P];
    ident(name, crt, key);
    join(ca, fx.broker, "ca.crt");
    return em_test_mosquitto_sub(fx.port_s, ca, crt, key, topics, out);
}

/* Publishes msg as NAME to topic every 200 ms until it shows in out: the
 * subscriber writing out is then in place. */
static void pub_until_seen(const char *name, const char *topic, const char *msg, const char *out)
{
    char line[256];
    snprintf(line, sizeof line, "%s %s", topic, msg);
    for (int waited = 0; waited < SEEN_MS; waited += 200) {
        EXPECT(0, pub(name, topic, msg));
        if (em_test_wait_in_file(out, line, 1, 200))
            return;
    }
    fprintf(stderr, "\"%s\" never reached the subscriber\n", line);
    fail();
}

/* ---- emiotd --------------------------------------------------------------------- */

static int api(const char *cred, const char *method, const char *path, const char *json)
{
    return em_test_daemon_request(&fx.d, cred, method, path, json, body, sizeof body);
}

static int admin(const char *method, const char *path, const char *json)
{
    return api(fx.d.admin_key, method, path, json);
}

static void expect_status(int got, int want)
{
    if (got != want)
        fprintf(stderr, "HTTP %d, expected %d: %.600s\n", got, want, body);
    assert_int_equal(got, want);
}

/* A GET with the client certificate of identity NAME (no other credential). */
static int api_with_cert(const char *name, const char *path)
{
    char crt[P], key[P];
    ident(name, crt, key);
    return em_test_daemon_request_cert(&fx.d, crt, key, NULL, "GET", path, NULL, body, sizeof body);
}

/* Security events of type about device, through the API. */
static int security_events(const char *type, const char *device)
{
    char path[256];
    snprintf(path, sizeof path, "/api/v1/events?kind=security&type=%s&device=%s&limit=1000", type,
             device);
    expect_status(admin("GET", path, NULL), 200);
    cJSON *j = cJSON_Parse(body);
    assert_non_null(j);
    int n = cJSON_GetArraySize(cJSON_GetObjectItemCaseSensitive(j, "data"));
    cJSON_Delete(j);
    return n;
}

static int registered_certificates(const char *id)
{
    char path[128];
    snprintf(path, sizeof path, "/api/v1/devices/%s/certificates", id);
    expect_status(admin("GET", path, NULL), 200);
    cJSON *j = cJSON_Parse(body);
    assert_non_null(j);
    int n = cJSON_GetArraySize(cJSON_GetObjectItemCaseSensitive(j, "data"));
    cJSON_Delete(j);
    return n;
}

static void status_json(char *buf, size_t size, const char *firmware)
{
    snprintf(buf, size,
             "{\"batteryLevel\":77,\"powerMode\":\"normal\",\"connectionStatus\":\"online\","
             "\"firmwareVersion\":\"%s\",\"signalStrength\":-61,\"errors\":[],"
             "\"additionalInfo\":{}}",
             firmware);
}

/* Publishes a status whose firmwareVersion is fw as the identity NAME on
 * device/ID/status until emiotd shows it as ID's latest status. emiotd may
 * not have subscribed yet when the first one goes out: hence the repeats. */
static void status_until_seen(const char *name, const char *id, const char *fw)
{
    char msg[512], topic[128], path[128], needle[128];
    status_json(msg, sizeof msg, fw);
    snprintf(topic, sizeof topic, "device/%s/status", id);
    snprintf(path, sizeof path, "/api/v1/devices/%s/status", id);
    snprintf(needle, sizeof needle, "\"firmwareVersion\":\"%s\"", fw);
    for (int waited = 0; waited < SEEN_MS; waited += 1000) {
        EXPECT(0, pub(name, topic, msg));
        assert_null(strstr(R.out, "Not authorized"));
        if (em_test_daemon_poll(&fx.d, fx.d.admin_key, path, 200, needle, 1000) == 0)
            return;
    }
    fprintf(stderr, "status %s of %s never reached emiotd\n", fw, id);
    fail();
}

/* True when ID's status history in emiotd holds firmware version fw. */
static bool history_has(const char *id, const char *fw)
{
    char path[160], needle[128];
    snprintf(path, sizeof path, "/api/v1/devices/%s/status/history?limit=1000&order=desc", id);
    snprintf(needle, sizeof needle, "\"%s\"", fw);
    expect_status(admin("GET", path, NULL), 200);
    return strstr(body, needle) != NULL;
}

/* emiot-agent token for id with the identity NAME's key (and certificate,
 * when with_cert), the JWT into DIR/<out_name>. Returns the agent's status. */
static int agent_token(const char *id, const char *name, bool with_cert, const char *out_name)
{
    char crt[P], key[P], out[P];
    ident(name, crt, key);
    path_in(out, out_name);
    if (with_cert)
        return RUN(AGENT, "token", "--api", fx.d.url, "--ca", fx.d.ca, "--id", id, "--key", key,
                   "--cert", crt, "--out", out);
    return RUN(AGENT, "token", "--api", fx.d.url, "--ca", fx.d.ca, "--id", id, "--key", key,
               "--out", out);
}

/* ---- the refusals, at the broker and at emiotd -------------------------------------- */

/*
 * The identity NAME (a certificate with CN d-1 that must not be accepted):
 * mosquitto_pub with it fails at connect, and what it tried to publish never
 * reaches emiotd (a d-1 marker sent after it does); as a client certificate
 * on the API it is 401 or a failed handshake, while d-1's own certificate
 * reads the same route; in challenge-response emiotd refuses it, with a
 * security event for d-1.
 */
static void refused_everywhere(const char *name)
{
    assert_true(fx.enrolled);
    char forged[64], after[64], msg[512];
    marker(forged, sizeof forged, name);
    status_json(msg, sizeof msg, forged);

    /* The broker. */
    int rc = pub(name, "device/d-1/status", msg);
    if (rc == 0)
        fprintf(stderr, "the broker accepted %s:\n%s\n", name, R.out);
    assert_int_not_equal(rc, 0);
    marker(after, sizeof after, "after");
    status_until_seen("d-1", "d-1", after);
    assert_false(history_has("d-1", forged));

    /* The API, with the certificate as the only credential. */
    expect_status(api_with_cert("d-1", "/api/v1/devices/d-1"), 200);
    int st = api_with_cert(name, "/api/v1/devices/d-1");
    if (st != 401 && st != -1)
        fprintf(stderr, "API answered %d to %s: %.300s\n", st, name, body);
    assert_true(st == 401 || st == -1);

    /* Challenge-response, the certificate sent with the signature. */
    int before = security_events("device_auth_refused", "d-1");
    EXPECT(AGENT_REFUSED, agent_token("d-1", name, true, "refused.jwt"));
    assert_int_equal(security_events("device_auth_refused", "d-1"), before + 1);
    char tok[P];
    path_in(tok, "refused.jwt");
    assert_int_not_equal(access(tok, F_OK), 0);
}

/* ---- set-up ------------------------------------------------------------------------ */

static int issue_new_key(const char *profile, const char *cn, const char *name)
{
    char crt[P], key[P];
    ident(name, crt, key);
    int rc = strcmp(profile, "server") == 0
                 ? CTL_RUN("pki", "issue", "--passphrase-file", fx.pass, "--profile", profile,
                           "--cn", cn, "--dns", "localhost", "--ip", "127.0.0.1", "--out-cert", crt,
                           "--out-key", key)
                 : CTL_RUN("pki", "issue", "--passphrase-file", fx.pass, "--profile", profile,
                           "--cn", cn, "--out-cert", crt, "--out-key", key);
    if (rc != 0)
        fprintf(stderr, "pki issue %s %s: exit %d\n%s\n", profile, cn, rc, R.out);
    return rc;
}

/* emiotd's configuration beyond what tests/support writes: the manager's
 * certificate for the broker (the [mqtt] section opened again), the keystore
 * passphrase file, the CA directory. A generous failure budget: the tests
 * fail authentication on purpose from 127.0.0.1. */
static int daemon_extra(const char *broker_ca, const char *manager, const char *ca_dir)
{
    char crt[P], key[P];
    ident(manager, crt, key);
    int n = snprintf(fx.extra, sizeof fx.extra,
                     "[mqtt]\nca_file = %s\ncert_file = %s\nkey_file = %s\n"
                     "[keystore]\npassphrase_file = %s\n"
                     "[pki]\ndir = %s\n"
                     "[api]\nauth_fail_per_min = 10000\n",
                     broker_ca, crt, key, fx.pass, ca_dir);
    return n > 0 && (size_t)n < sizeof fx.extra ? 0 : -1;
}

static int group_setup(void **state)
{
    (void)state;
    memset(&fx, 0, sizeof fx);
    signal(SIGPIPE, SIG_IGN);
    if (access(CTL, X_OK) != 0 || access(AGENT, X_OK) != 0) {
        fprintf(stderr, "test_fleet_identity: emiotctl or emiot-agent is not built\n");
        return -1;
    }
    if (em_test_mkdtemp(fx.dir, sizeof fx.dir) != 0)
        return -1;
    path_in(fx.pass, "keystore.pass");
    path_in(fx.ca_dir, "ca");
    join(fx.ca_crt, fx.ca_dir, "ca.crt");
    path_in(fx.broker, "broker");
    join(fx.conf, fx.broker, "mosquitto.conf");
    path_in(fx.blog, "mosquitto.log");
    fx.port = em_test_free_port();
    if (fx.port <= 0)
        return -1;
    snprintf(fx.port_s, sizeof fx.port_s, "%d", fx.port);
    write_text(fx.pass, PASS "\n", 0600);

    /* The children inherit this environment: emiotctl's CA directory, a
     * cheaper scrypt for what it seals, no configuration of the user's. */
    setenv("EMIOT_PKI_DIR", fx.ca_dir, 1);
    setenv("EMIOT_KEYSTORE_SCRYPT_COST", "14", 1);
    setenv("XDG_CONFIG_HOME", fx.dir, 1);
    unsetenv("EMIOT_KEYSTORE_PASSPHRASE");
    unsetenv("EMIOT_API_KEY");

    /* 1. The operator's CA, certificates and broker. */
    if (CTL_RUN("pki", "init", "--passphrase-file", fx.pass, "--cn", "Fleet Test CA") != 0) {
        fprintf(stderr, "pki init: exit %d\n%s\n", R.rc, R.out);
        return -1;
    }
    if (issue_new_key("server", "localhost", "server") != 0 ||
        issue_new_key("client", MANAGER, "manager") != 0 || broker_config("server", false) != 0 ||
        start_broker() != 0)
        return -1;

    /* 2. emiotd on that CA and that broker. */
    char mqtt_url[64], broker_ca[P];
    snprintf(mqtt_url, sizeof mqtt_url, "mqtts://localhost:%d", fx.port);
    join(broker_ca, fx.broker, "ca.crt");
    if (daemon_extra(broker_ca, "manager", fx.ca_dir) != 0)
        return -1;
    em_test_daemon_options_t o;
    memset(&o, 0, sizeof o);
    o.mqtt_url = mqtt_url;
    o.client_ca_file = fx.ca_crt;
    o.extra_config = fx.extra;
    if (em_test_daemon_start(&fx.d, NULL, &o) != 0)
        return -1;

    /* emiotctl's API settings, as `make run` prints them. */
    setenv("EMIOT_URL", fx.d.url, 1);
    setenv("EMIOT_CA", fx.d.ca, 1);
    setenv("EMIOT_API_KEY_FILE", fx.d.key_file, 1);
    return 0;
}

static int group_teardown(void **state)
{
    (void)state;
    em_test_daemon_cleanup(&fx.d);
    stop_broker();
    if (fx.dir[0] != '\0')
        em_test_rmtree(fx.dir);
    return 0;
}

/* ---- 3. registration and enrollment ----------------------------------------------------- */

static void test_operator_registers_and_enrolls_d1_with_emiotctl_and_emiot_agent(void **state)
{
    (void)state;
    EXPECT(0, CTL_RUN("devices", "create", "d-1", "--name", "Meter 1", "--type", "sensor"));
    EXPECT(0, CTL_RUN("devices", "create", "d-2", "--name", "Meter 2", "--type", "sensor"));

    char tok[P], crt[P], key[P], ca_out[P];
    path_in(tok, "d-1.token");
    path_in(ca_out, "d-1-ca.crt");
    ident("d-1", crt, key);
    EXPECT(0, CTL_RUN("devices", "enroll-token", "d-1", "--out", tok));
    struct stat st;
    assert_int_equal(stat(tok, &st), 0);
    assert_int_equal(st.st_mode & 0777, 0600);

    /* On the device: the key is made there, only the CSR travels. */
    EXPECT(0, RUN(AGENT, "enroll", "--api", fx.d.url, "--ca", fx.d.ca, "--id", "d-1",
                  "--token-file", tok, "--key-out", key, "--cert-out", crt, "--ca-out", ca_out));
    assert_int_equal(stat(key, &st), 0);
    assert_int_equal(st.st_mode & 0777, 0600);

    EXPECT(0, RUN("openssl", "verify", "-CAfile", fx.ca_crt, crt));
    expect_in(R.out, ": OK");
    /* The CA the device learnt is the operator's. */
    static char a[8192], b[8192];
    em_test_read_file(fx.ca_crt, a, sizeof a);
    em_test_read_file(ca_out, b, sizeof b);
    assert_string_equal(a, b);
    EXPECT(0, RUN("openssl", "x509", "-in", crt, "-noout", "-subject"));
    expect_in(R.out, "CN = d-1");
    assert_int_equal(registered_certificates("d-1"), 1);

    /* The token worked once. */
    EXPECT(AGENT_REFUSED, RUN(AGENT, "enroll", "--api", fx.d.url, "--ca", fx.d.ca, "--id", "d-1",
                              "--token-file", tok, "--key-out", key, "--cert-out", crt, "--force"));
    EXPECT(0, RUN("openssl", "verify", "-CAfile", fx.ca_crt, crt));
    assert_int_equal(registered_certificates("d-1"), 1);
    fx.enrolled = true;
}

/* ---- 4. a valid certificate ------------------------------------------------------------ */

static void test_enrolled_d1_status_through_the_broker_reaches_emiotd(void **state)
{
    (void)state;
    assert_true(fx.enrolled);
    char fw[64];
    marker(fw, sizeof fw, "enrolled");
    status_until_seen("d-1", "d-1", fw);
    /* The device record shows it too. */
    expect_status(admin("GET", "/api/v1/devices/d-1", NULL), 200);
    expect_in(body, fw);
    expect_in(body, "\"batteryLevel\":77");
}

static void test_enrolled_d1_certificate_is_its_identity_on_the_api(void **state)
{
    (void)state;
    assert_true(fx.enrolled);
    expect_status(api_with_cert("d-1", "/api/v1/whoami"), 200);
    expect_in(body, "\"method\":\"certificate\"");
    expect_in(body, "d-1");
    expect_status(api_with_cert("d-1", "/api/v1/devices/d-1"), 200);
    expect_status(api_with_cert("d-1", "/api/v1/devices/d-2"), 403);
}

/* ---- 5. refusals ------------------------------------------------------------------------ */

static void test_certificate_from_another_ca_refused_by_broker_and_emiotd(void **state)
{
    (void)state;
    /* CN d-1, from a CA of the attacker's, made with openssl. */
    char crt[P], key[P], ca_key[P], ca_crt[P], csr[P], ext[P];
    ident("foreign", crt, key);
    path_in(ca_key, "other-ca.key");
    path_in(ca_crt, "other-ca.crt");
    path_in(csr, "foreign.csr");
    path_in(ext, "client.ext");
    write_text(ext, "keyUsage = critical, digitalSignature\nextendedKeyUsage = clientAuth\n", 0600);
    EXPECT(0, RUN("openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256",
                  "-nodes", "-keyout", ca_key, "-out", ca_crt, "-subj", "/CN=Fleet Test CA",
                  "-days", "30"));
    EXPECT(0, RUN("openssl", "req", "-new", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256",
                  "-nodes", "-keyout", key, "-subj", "/CN=d-1", "-out", csr));
    EXPECT(0, RUN("openssl", "x509", "-req", "-in", csr, "-CA", ca_crt, "-CAkey", ca_key,
                  "-CAcreateserial", "-days", "10", "-extfile", ext, "-out", crt));
    /* Good for its own CA; not for the fleet's. */
    EXPECT(0, RUN("openssl", "verify", "-CAfile", ca_crt, crt));
    assert_int_not_equal(RUN("openssl", "verify", "-CAfile", fx.ca_crt, crt), 0);
    refused_everywhere("foreign");
}

/* The CA's notBefore, in epoch milliseconds. */
static int64_t ca_not_before_ms(void)
{
    BIO *b = BIO_new_file(fx.ca_crt, "r");
    assert_non_null(b);
    X509 *ca = PEM_read_bio_X509(b, NULL, NULL, NULL);
    BIO_free(b);
    assert_non_null(ca);
    struct tm tm;
    assert_int_equal(ASN1_TIME_to_tm(X509_get0_notBefore(ca), &tm), 1);
    X509_free(ca);
    return (int64_t)timegm(&tm) * 1000;
}

static void test_expired_certificate_refused_by_broker_and_emiotd(void **state)
{
    (void)state;
    /* `pki init` dates the CA five minutes back: a period of one minute
     * from then is over, and lies within the CA's. */
    int64_t nb = ca_not_before_ms() + 1000, na = nb + 60000;
    assert_true(na < em_now_ms());
    char nb_s[32], na_s[32], at_s[32], crt[P], key[P];
    snprintf(nb_s, sizeof nb_s, "%lld", (long long)nb);
    snprintf(na_s, sizeof na_s, "%lld", (long long)na);
    snprintf(at_s, sizeof at_s, "%lld", (long long)(nb / 1000 + 30));
    ident("expired", crt, key);
    EXPECT(0, CTL_RUN("pki", "issue", "--passphrase-file", fx.pass, "--profile", "device", "--cn",
                      "d-1", "--not-before", nb_s, "--not-after", na_s, "--out-cert", crt,
                      "--out-key", key));
    /* Sound in its period, expired now: expiry is all that is wrong. */
    EXPECT(0, RUN("openssl", "verify", "-attime", at_s, "-CAfile", fx.ca_crt, crt));
    assert_int_not_equal(RUN("openssl", "verify", "-CAfile", fx.ca_crt, crt), 0);
    expect_in(R.out, "expired");
    refused_everywhere("expired");
}

static void test_revoked_certificate_refused_by_broker_and_emiotd(void **state)
{
    (void)state;
    assert_true(fx.enrolled);
    /* A second certificate of d-1, good until it is revoked. */
    char crt[P], key[P];
    ident("spare", crt, key);
    EXPECT(0, CTL_RUN("-o", "json", "pki", "issue", "--passphrase-file", fx.pass, "--profile",
                      "device", "--cn", "d-1", "--out-cert", crt, "--out-key", key));
    cJSON *j = cJSON_Parse(R.out);
    assert_non_null(j);
    char serial[64];
    const char *s = cJSON_GetStringValue(cJSON_GetObjectItemCaseSensitive(j, "serial"));
    assert_non_null(s);
    snprintf(serial, sizeof serial, "%s", s);
    cJSON_Delete(j);
    assert_int_equal(strlen(serial), 32);
    char fw[64];
    marker(fw, sizeof fw, "spare");
    status_until_seen("spare", "d-1", fw);
    expect_status(api_with_cert("spare", "/api/v1/devices/d-1"), 200);

    EXPECT(0, CTL_RUN("pki", "revoke", serial, "--reason", "keyCompromise", "--passphrase-file",
                      fx.pass));
    EXPECT(0, CTL_RUN("-o", "json", "pki", "show", serial));
    expect_in(R.out, "\"status\":\t\"revoked\"");
    /* The broker's copy of the CRL, and a reload. */
    int reloads = em_test_count_in_file(fx.blog, "Reloading config");
    assert_int_equal(broker_config("server", true), 0);
    assert_int_equal(kill(fx.broker_pid, SIGHUP), 0);
    assert_true(em_test_wait_in_file(fx.blog, "Reloading config", reloads + 1, SEEN_MS));
    em_test_sleep_ms(200); /* the reload finishes after its log line */
    /* The broker's copy of the CRL names it (as openssl reads it). */
    char crl[P];
    join(crl, fx.broker, "crl.pem");
    EXPECT(0, RUN("openssl", "verify", "-CAfile", fx.ca_crt, crt));
    assert_int_not_equal(
        RUN("openssl", "verify", "-crl_check", "-CRLfile", crl, "-CAfile", fx.ca_crt, crt), 0);
    expect_in(R.out, "revoked");
    /* emiotd looks at the CA directory's CRL at most once a second. */
    em_test_sleep_ms(1100);
    refused_everywhere("spare");
}

/* ---- 6. one device cannot pass for another ------------------------------------------------ */

static void test_d2_cannot_change_d1_status(void **state)
{
    (void)state;
    assert_true(fx.enrolled);
    EXPECT(0, issue_new_key("device", "d-2", "d-2"));
    char first[64], forged[64], last[64], msg[512];
    marker(first, sizeof first, "d1-before");
    status_until_seen("d-1", "d-1", first);
    /* d-2's own status goes through: its certificate works. */
    char own[64];
    marker(own, sizeof own, "d2-own");
    status_until_seen("d-2", "d-2", own);

    marker(forged, sizeof forged, "forged-by-d2");
    status_json(msg, sizeof msg, forged);
    EXPECT(0, pub("d-2", "device/d-1/status", msg));
    expect_in(R.out, "Not authorized");
    marker(last, sizeof last, "d1-after");
    status_until_seen("d-1", "d-1", last);
    assert_false(history_has("d-1", forged));
    assert_false(history_has("d-2", forged));
    assert_true(history_has("d-1", first));
}

/* POST /api/v1/devices/ID/commands get_status; its requestId into rid. */
static void send_command(const char *id, char *rid, size_t size)
{
    char path[128];
    snprintf(path, sizeof path, "/api/v1/devices/%s/commands", id);
    expect_status(admin("POST", path, "{\"type\":\"get_status\"}"), 202);
    cJSON *j = cJSON_Parse(body);
    assert_non_null(j);
    const char *r = cJSON_GetStringValue(
        cJSON_GetObjectItemCaseSensitive(cJSON_GetObjectItemCaseSensitive(j, "data"), "requestId"));
    assert_non_null(r);
    snprintf(rid, size, "%s", r);
    cJSON_Delete(j);
}

static void test_d2_does_not_receive_commands_for_d1(void **state)
{
    (void)state;
    assert_true(fx.enrolled);
    char out1[P], out2[P];
    path_in(out1, "d-1-commands.out");
    path_in(out2, "d-2-commands.out");
    const char *const t1[] = {"device/d-1/command", NULL};
    const char *const t2[] = {"device/d-2/command", "device/d-1/command", NULL};
    pid_t s1 = sub("d-1", t1, out1);
    pid_t s2 = sub("d-2", t2, out2);
    /* Both subscriptions are in place once each device has had a message
     * from the manager's identity (the one emiotd uses) on its own topic. */
    char ready[64];
    marker(ready, sizeof ready, "ready");
    pub_until_seen("manager", "device/d-1/command", ready, out1);
    pub_until_seen("manager", "device/d-2/command", ready, out2);

    char for_d1[64], for_d2[64];
    send_command("d-1", for_d1, sizeof for_d1);
    send_command("d-2", for_d2, sizeof for_d2);
    /* emiotd publishes them in this order, over one connection, and the
     * broker delivers to d-2's one connection in order: once d-2 has its
     * own, d-1's would already be there. */
    bool d1_got = em_test_wait_in_file(out1, for_d1, 1, SEEN_MS);
    bool d2_got = em_test_wait_in_file(out2, for_d2, 1, SEEN_MS);
    em_test_stop(s1);
    em_test_stop(s2);
    static char b1[OUT_MAX], b2[OUT_MAX];
    em_test_read_file(out1, b1, sizeof b1);
    em_test_read_file(out2, b2, sizeof b2);
    if (!d1_got || !d2_got)
        fprintf(stderr, "d-1 saw:\n%s\nd-2 saw:\n%s\n", b1, b2);
    assert_true(d1_got);
    assert_true(d2_got);
    assert_null(strstr(b2, for_d1));
    assert_null(strstr(b2, "device/d-1/command"));
    assert_null(strstr(b1, for_d2));
}

/* ---- 7. the device's own token ---------------------------------------------------------- */

static void test_agent_token_reads_d1_and_is_refused_on_d2(void **state)
{
    (void)state;
    assert_true(fx.enrolled);
    EXPECT(0, agent_token("d-1", "d-1", false, "d-1.jwt"));
    char path[P], jwt[4096];
    path_in(path, "d-1.jwt");
    struct stat st;
    assert_int_equal(stat(path, &st), 0);
    assert_int_equal(st.st_mode & 0777, 0600);
    em_test_read_file(path, jwt, sizeof jwt);
    char *nl = strchr(jwt, '\n');
    if (nl != NULL)
        *nl = '\0';
    assert_true(strlen(jwt) > 100);
    expect_status(api(jwt, "GET", "/api/v1/devices/d-1", NULL), 200);
    expect_in(body, "\"id\":\"d-1\"");
    expect_status(api(jwt, "GET", "/api/v1/devices/d-1/status", NULL), 200);
    expect_status(api(jwt, "GET", "/api/v1/devices/d-2", NULL), 403);
    expect_status(api(jwt, "GET", "/api/v1/devices/d-2/status", NULL), 403);
    expect_status(api(jwt, "GET", "/api/v1/devices", NULL), 403);
}

/* ---- 8. an operator's own CA, a certificate made with openssl ----------------------------- */

static void test_openssl_signed_certificate_from_imported_ca_is_accepted(void **state)
{
    (void)state;
    char op_key[P], op_crt[P], op_dir[P], csr[P], ext[P], srl[P], crt[P], key[P];
    path_in(op_key, "op-ca.key");
    path_in(op_crt, "op-ca.crt");
    path_in(op_dir, "op-ca");
    path_in(csr, "d-3.csr");
    path_in(ext, "d-3.ext");
    path_in(srl, "op-ca.srl");
    ident("d-3", crt, key);

    /* The operator's CA, its key in plain PEM, imported (the key sealed). */
    EXPECT(0, RUN("openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256",
                  "-nodes", "-keyout", op_key, "-out", op_crt, "-days", "365", "-subj",
                  "/CN=Operator Fleet CA", "-addext", "basicConstraints=critical,CA:TRUE",
                  "-addext", "keyUsage=critical,keyCertSign,cRLSign"));
    assert_int_equal(chmod(op_key, 0600), 0);
    EXPECT(0, CTL_RUN("pki", "import", "--dir", op_dir, "--passphrase-file", fx.pass, "--cert",
                      op_crt, "--key", op_key));

    /* The device's key, CSR and certificate: openssl alone. */
    write_text(ext,
               "basicConstraints = critical, CA:FALSE\n"
               "keyUsage = critical, digitalSignature\n"
               "extendedKeyUsage = clientAuth\n",
               0600);
    EXPECT(0, RUN("openssl", "req", "-new", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256",
                  "-nodes", "-keyout", key, "-subj", "/CN=d-3", "-out", csr));
    EXPECT(0,
           RUN("openssl", "x509", "-req", "-in", csr, "-CA", op_crt, "-CAkey", op_key, "-CAserial",
               srl, "-CAcreateserial", "-days", "30", "-sha256", "-extfile", ext, "-out", crt));

    /* The broker and emiotd move to that CA: its server and manager
     * certificates from emiotctl, the broker generated from it on the same
     * port, emiotd restarted on that CA directory. */
    setenv("EMIOT_PKI_DIR", op_dir, 1);
    assert_int_equal(issue_new_key("server", "localhost", "op-server"), 0);
    assert_int_equal(issue_new_key("client", MANAGER, "op-manager"), 0);
    stop_broker();
    path_in(fx.broker, "op-broker");
    join(fx.conf, fx.broker, "mosquitto.conf");
    assert_int_equal(broker_config("op-server", false), 0);
    assert_int_equal(start_broker(), 0);
    char broker_ca[P];
    join(broker_ca, fx.broker, "ca.crt");
    assert_int_equal(daemon_extra(broker_ca, "op-manager", op_dir), 0);
    assert_int_equal(em_test_daemon_set_extra_config(&fx.d, fx.extra), 0);
    assert_int_equal(em_test_daemon_restart(&fx.d), 0);
    EXPECT(0, CTL_RUN("devices", "create", "d-3", "--name", "Meter 3", "--type", "sensor"));

    /* The broker takes the openssl-made certificate, and d-3's status
     * reaches emiotd through it. */
    char fw[64];
    marker(fw, sizeof fw, "openssl-made");
    status_until_seen("d-3", "d-3", fw);
    /* The previous CA's certificates are now foreign to this broker. */
    assert_int_not_equal(pub("d-1", "device/d-1/status", "{}"), 0);

    /* Challenge-response with the certificate in the request: accepted,
     * the certificate registered, the JWT reads d-3 only. */
    assert_int_equal(registered_certificates("d-3"), 0);
    EXPECT(0, agent_token("d-3", "d-3", true, "d-3.jwt"));
    assert_int_equal(registered_certificates("d-3"), 1);
    char path[P], jwt[4096];
    path_in(path, "d-3.jwt");
    em_test_read_file(path, jwt, sizeof jwt);
    char *nl = strchr(jwt, '\n');
    if (nl != NULL)
        *nl = '\0';
    expect_status(api(jwt, "GET", "/api/v1/devices/d-3", NULL), 200);
    expect_status(api(jwt, "GET", "/api/v1/devices/d-1", NULL), 403);
    /* Now registered, it is the one checked without the certificate. */
    EXPECT(0, agent_token("d-3", "d-3", false, "d-3b.jwt"));
}

/* Last: emiotd, having done all of the above, stops cleanly (exit 0: under
 * the sanitizers, no error and no leak either). */
static void test_emiotd_stops_cleanly(void **state)
{
    (void)state;
    assert_int_equal(em_test_daemon_stop(&fx.d), 0);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_operator_registers_and_enrolls_d1_with_emiotctl_and_emiot_agent),
        cmocka_unit_test(test_enrolled_d1_status_through_the_broker_reaches_emiotd),
        cmocka_unit_test(test_enrolled_d1_certificate_is_its_identity_on_the_api),
        cmocka_unit_test(test_certificate_from_another_ca_refused_by_broker_and_emiotd),
        cmocka_unit_test(test_expired_certificate_refused_by_broker_and_emiotd),
        cmocka_unit_test(test_revoked_certificate_refused_by_broker_and_emiotd),
        cmocka_unit_test(test_d2_cannot_change_d1_status),
        cmocka_unit_test(test_d2_does_not_receive_commands_for_d1),
        cmocka_unit_test(test_agent_token_reads_d1_and_is_refused_on_d2),
        cmocka_unit_test(test_openssl_signed_certificate_from_imported_ca_is_accepted),
        cmocka_unit_test(test_emiotd_stops_cleanly),
    };
    return cmocka_run_group_tests(tests, group_setup, group_teardown);
}
