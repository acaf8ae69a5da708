/*
 * emiot tests - emiotctl against a real emiotd and a real mosquitto.
 *
 * emiotctl is run as an operator runs it: the built binary, as a child
 * process, with its settings in the environment (EMIOT_URL, EMIOT_CA,
 * EMIOT_API_KEY_FILE), a config file or flags. Its -o json output is read
 * with jq. One broker, one daemon and one simulated device (emiot-agent) are
 * shared by the whole file (group set-up); each test uses its own device ids.
 */
#include <fcntl.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cmocka.h>

#include "broker.h"
#include "daemon.h"
#include "testutil.h"

#define CTL_BIN    EM_TEST_BINARY_DIR "/emiotctl"
#define AGENT      EM_TEST_BINARY_DIR "/emiot-agent"
#define JQ         "jq"
#define AGENT_ID   "ctl-agent1"
#define RUN_MS     60000
#define ENV_MAX    32
#define OUTPUT_MAX 262144

static struct {
    em_test_broker_t broker;
    em_test_daemon_t daemon;
    pid_t agent;
    char dir[256];
    char home[EM_TEST_PATH_MAX];
    char key_file[EM_TEST_PATH_MAX]; /* the admin key, 0600 */
    char out_file[EM_TEST_PATH_MAX];
    char err_file[EM_TEST_PATH_MAX];
    char jq_file[EM_TEST_PATH_MAX];
    char env_store[ENV_MAX][EM_TEST_PATH_MAX + 32];
} fx;

/* The last run's exit code, stdout and stderr. */
static struct {
    int rc;
    char out[OUTPUT_MAX];
    char err[8192];
} R;

/* ---- running programs ------------------------------------------------------ */

static void read_into(const char *path, char *buf, size_t size)
{
    buf[0] = '\0';
    FILE *f = fopen(path, "r");
    if (f == NULL)
        return;
    size_t n = fread(buf, 1, size - 1, f);
    buf[n] = '\0';
    fclose(f);
}

static void path_in(char *out, size_t size, const char *dir, const char *name)
{
    int n = snprintf(out, size, "%s/%s", dir, name);
    assert_true(n > 0 && (size_t)n < size);
}

/* The environment of a run: the fixture's settings, then extra ("NAME=value"
 * replaces NAME; "-NAME" removes it). */
static size_t make_env(const char *const *extra, const char *envp[ENV_MAX + 1])
{
    size_t n = 0;
    static const char *const pass[] = {"PATH", "ASAN_OPTIONS", "UBSAN_OPTIONS", "LSAN_OPTIONS",
                                       "TZ"};
    for (size_t i = 0; i < sizeof pass / sizeof pass[0]; i++) {
        const char *v = getenv(pass[i]);
        if (v != NULL && n < ENV_MAX) {
            snprintf(fx.env_store[n], sizeof fx.env_store[n], "%s=%s", pass[i], v);
            envp[n] = fx.env_store[n];
            n++;
        }
    }
    snprintf(fx.env_store[n], sizeof fx.env_store[n], "HOME=%s", fx.home);
    envp[n] = fx.env_store[n];
    n++;
    snprintf(fx.env_store[n], sizeof fx.env_store[n], "EMIOT_URL=%s", fx.daemon.url);
    envp[n] = fx.env_store[n];
    n++;
    snprintf(fx.env_store[n], sizeof fx.env_store[n], "EMIOT_CA=%s", fx.daemon.ca);
    envp[n] = fx.env_store[n];
    n++;
    snprintf(fx.env_store[n], sizeof fx.env_store[n], "EMIOT_API_KEY_FILE=%s", fx.key_file);
    envp[n] = fx.env_store[n];
    n++;
    for (size_t i = 0; extra != NULL && extra[i] != NULL; i++) {
        const char *e = extra[i];
        bool remove = e[0] == '-';
        const char *name = remove ? e + 1 : e;
        size_t nl = remove ? strlen(name) : (size_t)(strchr(name, '=') - name);
        for (size_t j = 0; j < n; j++) {
            if (strncmp(envp[j], name, nl) == 0 && envp[j][nl] == '=') {
                envp[j] = envp[--n];
                break;
            }
        }
        if (!remove && n < ENV_MAX)
            envp[n++] = e;
    }
    envp[n] = NULL;
    return n;
}

/* Runs argv (argv[0]: a path, or "jq") with stdout to out_file and stderr to
 * err_file; returns the exit code (-1: signal or timeout). */
static int run_to(const char *const *extra, const char *const *argv, const char *out_file,
                  const char *err_file)
{
    const char *envp[ENV_MAX + 1];
    make_env(extra, envp);
    pid_t pid = fork();
    assert_true(pid >= 0);
    if (pid == 0) {
        prctl(PR_SET_PDEATHSIG, SIGTERM);
        int o = open(out_file, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
        int e = open(err_file, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
        if (o < 0 || e < 0)
            _exit(126);
        dup2(o, STDOUT_FILENO);
        dup2(e, STDERR_FILENO);
        if (strchr(argv[0], '/') != NULL)
            execve(argv[0], (char *const *)argv, (char *const *)envp);
        else
            execvpe(argv[0], (char *const *)argv, (char *const *)envp);
        _exit(127);
    }
    int rc = em_test_wait(pid, RUN_MS);
    if (rc == -1) {
        kill(pid, SIGKILL);
        waitpid(pid, NULL, 0);
    }
    return rc;
}

static int ctl_run(const char *const *extra, const char *const *argv)
{
    R.rc = run_to(extra, argv, fx.out_file, fx.err_file);
    read_into(fx.out_file, R.out, sizeof R.out);
    read_into(fx.err_file, R.err, sizeof R.err);
    return R.rc;
}

#define CTL(...)          ctl_run(NULL, (const char *const[]){CTL_BIN, __VA_ARGS__, NULL})
#define CTL_ENV(env, ...) ctl_run((env), (const char *const[]){CTL_BIN, __VA_ARGS__, NULL})

static void dump(int expected)
{
    fprintf(stderr, "emiotctl exited %d, expected %d\n--- stdout:\n%s\n--- stderr:\n%s\n", R.rc,
            expected, R.out, R.err);
}

/* Runs emiotctl and fails the test unless it exits with code. */
#define EXPECT(code, ...)                                                                          \
    do {                                                                                           \
        if (CTL(__VA_ARGS__) != (code)) {                                                          \
            dump(code);                                                                            \
            fail();                                                                                \
        }                                                                                          \
    } while (0)

#define EXPECT_ENV(env, code, ...)                                                                 \
    do {                                                                                           \
        if (CTL_ENV((env), __VA_ARGS__) != (code)) {                                               \
            dump(code);                                                                            \
            fail();                                                                                \
        }                                                                                          \
    } while (0)

/* jq -r filter over the last run's stdout; the first line of its answer. */
static const char *jq(const char *filter)
{
    static char ans[4096];
    char err[EM_TEST_PATH_MAX];
    path_in(err, sizeof err, fx.dir, "jq.err");
    const char *argv[] = {JQ, "-r", filter, fx.out_file, NULL};
    int rc = run_to(NULL, argv, fx.jq_file, err);
    read_into(fx.jq_file, ans, sizeof ans);
    if (rc != 0) {
        fprintf(stderr, "jq '%s' failed (%d) on:\n%s\n", filter, rc, R.out);
        fail();
    }
    ans[strcspn(ans, "\n")] = '\0';
    return ans;
}

static void write_file(const char *path, const char *text, mode_t mode)
{
    unlink(path);
    int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC, mode);
    assert_true(fd >= 0);
    assert_int_equal(write(fd, text, strlen(text)), (ssize_t)strlen(text));
    assert_int_equal(fchmod(fd, mode), 0);
    close(fd);
}

/* ---- the shared broker, daemon and device ----------------------------------- */

static int group_setup(void **state)
{
    (void)state;
    memset(&fx, 0, sizeof fx);
    if (access(CTL_BIN, X_OK) != 0 || access(AGENT, X_OK) != 0) {
        fprintf(stderr, "test_emiotctl: %s or %s is not built\n", CTL_BIN, AGENT);
        return -1;
    }
    if (em_test_mkdtemp(fx.dir, sizeof fx.dir) != 0)
        return -1;
    snprintf(fx.home, sizeof fx.home, "%s/home", fx.dir);
    snprintf(fx.key_file, sizeof fx.key_file, "%s/admin.key", fx.dir);
    snprintf(fx.out_file, sizeof fx.out_file, "%s/out.txt", fx.dir);
    snprintf(fx.err_file, sizeof fx.err_file, "%s/err.txt", fx.dir);
    snprintf(fx.jq_file, sizeof fx.jq_file, "%s/jq.txt", fx.dir);
    if (mkdir(fx.home, 0700) != 0)
        return -1;
    if (em_test_broker_start(&fx.broker, "plain") != 0)
        return -1;
    if (em_test_daemon_start(&fx.daemon, &fx.broker, NULL) != 0)
        return -1;
    if (fx.daemon.admin_key[0] == '\0') {
        fprintf(stderr, "test_emiotctl: no bootstrap admin key\n");
        return -1;
    }
    char line[EM_TEST_DAEMON_KEY_MAX + 2];
    snprintf(line, sizeof line, "%s\n", fx.daemon.admin_key);
    int fd = open(fx.key_file, O_WRONLY | O_CREAT | O_EXCL, 0600);
    if (fd < 0 || write(fd, line, strlen(line)) != (ssize_t)strlen(line))
        return -1;
    close(fd);

    /* The simulated device: registered first, then started. */
    if (CTL("devices", "create", AGENT_ID, "--name", "Agent plug", "--type", "actuator") != 0) {
        dump(0);
        return -1;
    }
    char log[EM_TEST_PATH_MAX];
    snprintf(log, sizeof log, "%s/agent.log", fx.dir);
    const char *argv[] = {AGENT,
                          "--url",
                          em_test_broker_url(&fx.broker),
                          "--allow-plain",
                          "--id",
                          AGENT_ID,
                          "--interval",
                          "1",
                          "--telemetry-interval",
                          "1",
                          NULL};
    fx.agent = em_test_spawn(argv, log);
    if (fx.agent <= 0)
        return -1;
    /* The device is ready once the daemon has its status. */
    for (int i = 0; i < 300; i++) {
        if (CTL("devices", "status", AGENT_ID) == 0)
            return 0;
        em_test_sleep_ms(100);
    }
    fprintf(stderr, "test_emiotctl: the agent's status never reached the daemon\n");
    dump(0);
    em_test_daemon_print_log(&fx.daemon);
    return -1;
}

static int group_teardown(void **state)
{
    (void)state;
    if (fx.agent > 0)
        em_test_stop(fx.agent);
    em_test_daemon_cleanup(&fx.daemon);
    em_test_broker_cleanup(&fx.broker);
    if (fx.dir[0] != '\0')
        em_test_rmtree(fx.dir);
    return 0;
}

/* ---- help and usage --------------------------------------------------------- */

static void test_help_for_every_command_exits_0(void **state)
{
    (void)state;
    static const char *const cmds[][2] = {
        {"devices", "list"},    {"devices", "get"},       {"devices", "create"},
        {"devices", "update"},  {"devices", "delete"},    {"devices", "status"},
        {"devices", "history"}, {"devices", "telemetry"}, {"groups", "list"},
        {"groups", "get"},      {"groups", "create"},     {"groups", "delete"},
        {"groups", "add"},      {"groups", "remove"},     {"groups", "stats"},
        {"groups", "energy"},   {"commands", "send"},     {"commands", "send-group"},
        {"commands", "get"},    {"commands", "list"},     {"events", "list"},
        {"keys", "create"},     {"keys", "list"},         {"keys", "revoke"},
        {"users", "list"},      {"users", "create"},      {"users", "delete"},
        {"token", "create"},
    };
    EXPECT(0, "--help");
    assert_non_null(strstr(R.out, "Exit codes"));
    for (size_t i = 0; i < sizeof cmds / sizeof cmds[0]; i++) {
        EXPECT(0, cmds[i][0], cmds[i][1], "--help");
        assert_non_null(strstr(R.out, "usage: emiotctl "));
        assert_non_null(strstr(R.out, cmds[i][1]));
    }
    EXPECT(0, "whoami", "--help");
    EXPECT(0, "health", "--help");
}

static void test_usage_errors_exit_2(void **state)
{
    (void)state;
    EXPECT(2, "frobnicate");
    EXPECT(2, "devices");
    EXPECT(2, "devices", "explode");
    EXPECT(2, "devices", "get");
    EXPECT(2, "devices", "get", "a-device", "another");
    EXPECT(2, "devices", "list", "--no-such-flag");
    EXPECT(2, "devices", "list", "--limit", "many");
    EXPECT(2, "-o", "yaml", "devices", "list");
    EXPECT(2, "devices", "create", "ctl-x1", "--name", "X");
    assert_non_null(strstr(R.err, "--type"));
}

static void test_api_key_is_never_taken_from_the_command_line(void **state)
{
    (void)state;
    /* Not even as an abbreviation of --api-key-file, whose value would then
     * be echoed as a file name. */
    EXPECT(2, "--api-key", fx.daemon.admin_key, "whoami");
    assert_null(strstr(R.err, fx.daemon.admin_key));
    char opt[128];
    snprintf(opt, sizeof opt, "--api-key=%s", fx.daemon.admin_key);
    EXPECT(2, "whoami", opt);
    assert_null(strstr(R.err, fx.daemon.admin_key));
}

static void test_abbreviated_options_are_refused(void **state)
{
    (void)state;
    EXPECT(2, "devices", "list", "--lim", "5");
    assert_non_null(strstr(R.err, "unknown option --lim"));
    EXPECT(2, "--out", "json", "health");
}

/* ---- reads and writes against the daemon ------------------------------------ */

static void test_health_answers_ok_without_credentials(void **state)
{
    (void)state;
    const char *env[] = {"-EMIOT_API_KEY_FILE", NULL};
    EXPECT_ENV(env, 0, "health");
    assert_string_equal(R.out, "ok\n");
    EXPECT_ENV(env, 0, "health", "-o", "json");
    assert_string_equal(jq(".status"), "ok");
}

static void test_whoami_names_the_admin(void **state)
{
    (void)state;
    EXPECT(0, "whoami", "-o", "json");
    assert_string_equal(jq(".role"), "admin");
    EXPECT(0, "whoami");
    assert_non_null(strstr(R.out, "admin"));
}

static void test_devices_create_get_update_delete(void **state)
{
    (void)state;
    EXPECT(0, "devices", "create", "ctl-crud", "--name", "Kitchen plug", "--type", "sensor",
           "--config", "{\"reportingInterval\":60}", "-o", "json");
    assert_string_equal(jq(".id"), "ctl-crud");
    assert_string_equal(jq(".config.reportingInterval"), "60");

    EXPECT(0, "devices", "get", "ctl-crud", "-o", "json");
    assert_string_equal(jq(".name"), "Kitchen plug");
    assert_string_equal(jq(".type"), "sensor");

    EXPECT(0, "devices", "get", "ctl-crud");
    assert_non_null(strstr(R.out, "Kitchen plug"));

    EXPECT(0, "devices", "update", "ctl-crud", "--name", "Hall plug", "--type", "actuator",
           "--disable", "-o", "json");
    assert_string_equal(jq(".name"), "Hall plug");
    assert_string_equal(jq(".enabled"), "false");
    EXPECT(0, "devices", "get", "ctl-crud", "-o", "json");
    assert_string_equal(jq(".type"), "actuator");

    EXPECT(0, "devices", "delete", "ctl-crud");
    assert_non_null(strstr(R.out, "deleted device ctl-crud"));
    EXPECT(6, "devices", "get", "ctl-crud");
    assert_non_null(strstr(R.err, "emiotctl: "));
}

static void test_devices_list_table_and_json(void **state)
{
    (void)state;
    EXPECT(0, "devices", "create", "ctl-list-1", "--name", "L1", "--type", "sensor");
    EXPECT(0, "devices", "list");
    assert_non_null(strstr(R.out, "ID"));
    assert_non_null(strstr(R.out, "ctl-list-1"));
    assert_non_null(strstr(R.out, AGENT_ID));
    EXPECT(0, "devices", "list", "--type", "sensor", "-o", "json");
    assert_string_equal(jq("map(select(.id == \"ctl-list-1\")) | length"), "1");
    assert_string_equal(jq("map(select(.type != \"sensor\")) | length"), "0");
}

static void test_devices_list_all_follows_every_page(void **state)
{
    (void)state;
    char id[32];
    for (int i = 0; i < 5; i++) {
        snprintf(id, sizeof id, "ctl-page-%d", i);
        EXPECT(0, "devices", "create", id, "--name", "Paged", "--type", "generic");
    }
    EXPECT(0, "devices", "list", "--limit", "2", "-o", "json");
    assert_string_equal(jq("length"), "2");
    EXPECT(0, "devices", "list", "--limit", "2", "--all", "-o", "json");
    assert_string_equal(jq("map(select(.id | startswith(\"ctl-page-\"))) | length"), "5");
    assert_string_equal(jq("map(.id) | length == (unique | length)"), "true");
    /* A table of one page names the flag for the next one. */
    EXPECT(0, "devices", "list", "--limit", "2");
    assert_non_null(strstr(R.err, "--after"));
}

static void test_devices_status_history_and_telemetry(void **state)
{
    (void)state;
    EXPECT(0, "devices", "status", AGENT_ID, "-o", "json");
    assert_string_equal(jq("has(\"batteryLevel\")"), "true");
    EXPECT(0, "devices", "history", AGENT_ID, "--limit", "5", "-o", "json");
    assert_string_equal(jq("type"), "array");
    /* Telemetry arrives every second. */
    for (int i = 0; i < 100; i++) {
        EXPECT(0, "devices", "telemetry", AGENT_ID, "-o", "json");
        if (strcmp(jq("length > 0"), "true") == 0)
            break;
        em_test_sleep_ms(100);
    }
    assert_string_equal(jq("length > 0"), "true");
    EXPECT(0, "devices", "telemetry", AGENT_ID, "--rollup", "hour", "-o", "json");
    assert_string_equal(jq("type"), "array");
    EXPECT(0, "devices", "telemetry", AGENT_ID, "--from", "2020-01-01T00:00:00Z");
}

static void test_device_status_before_any_exits_6(void **state)
{
    (void)state;
    EXPECT(0, "devices", "create", "ctl-silent", "--name", "Silent", "--type", "sensor");
    EXPECT(6, "devices", "status", "ctl-silent");
}

static void test_groups_lifecycle(void **state)
{
    (void)state;
    EXPECT(0, "devices", "create", "ctl-grp-1", "--name", "G1", "--type", "sensor");
    EXPECT(0, "groups", "create", "Floor 2");
    EXPECT(0, "groups", "add", "Floor 2", "ctl-grp-1");
    assert_non_null(strstr(R.out, "added ctl-grp-1 to group Floor 2"));
    EXPECT(0, "groups", "list", "-o", "json");
    assert_string_equal(jq("map(select(.name == \"Floor 2\")) | length"), "1");
    EXPECT(0, "groups", "get", "Floor 2", "-o", "json");
    assert_string_equal(jq(".members | index(\"ctl-grp-1\") != null"), "true");
    EXPECT(0, "groups", "stats", "Floor 2", "-o", "json");
    assert_string_equal(jq(".total"), "1");
    EXPECT(0, "groups", "energy", "Floor 2", "--rollup", "day", "-o", "json");
    assert_string_equal(jq("type"), "array");
    EXPECT(0, "devices", "list", "--group", "Floor 2", "-o", "json");
    assert_string_equal(jq("map(.id) | join(\",\")"), "ctl-grp-1");
    EXPECT(0, "groups", "remove", "Floor 2", "ctl-grp-1");
    EXPECT(0, "groups", "get", "Floor 2", "-o", "json");
    assert_string_equal(jq(".members | length"), "0");
    EXPECT(0, "groups", "delete", "Floor 2");
    EXPECT(6, "groups", "get", "Floor 2");
    EXPECT(0, "devices", "get", "ctl-grp-1");
}

static void test_commands_send_wait_get_and_list(void **state)
{
    (void)state;
    EXPECT(0, "commands", "send", AGENT_ID, "get_status", "--wait", "30", "-o", "json");
    assert_string_equal(jq(".state"), "succeeded");
    char rid[128];
    snprintf(rid, sizeof rid, "%s", jq(".requestId"));
    EXPECT(0, "commands", "get", rid, "-o", "json");
    assert_string_equal(jq(".deviceId"), AGENT_ID);
    assert_string_equal(jq(".type"), "get_status");
    EXPECT(0, "commands", "list", "--device", AGENT_ID, "-o", "json");
    char filter[256];
    snprintf(filter, sizeof filter, "map(select(.requestId == \"%s\")) | length", rid);
    assert_string_equal(jq(filter), "1");
    EXPECT(0, "commands", "list", "--state", "succeeded");
    assert_non_null(strstr(R.out, rid));
}

static void test_commands_send_group_waits_for_every_device(void **state)
{
    (void)state;
    EXPECT(0, "groups", "create", "ctl-agents");
    EXPECT(0, "groups", "add", "ctl-agents", AGENT_ID);
    EXPECT(0, "commands", "send-group", "ctl-agents", "set_reporting_interval", "--payload",
           "{\"interval\":30}", "--wait", "30", "-o", "json");
    assert_string_equal(jq("map(.state) | unique | join(\",\")"), "succeeded");
    EXPECT(0, "commands", "send-group", "ctl-agents", "wake");
    assert_non_null(strstr(R.out, "sent 1"));
}

static void test_command_to_a_silent_device_is_not_waited_forever(void **state)
{
    (void)state;
    EXPECT(0, "devices", "create", "ctl-offline", "--name", "Off", "--type", "sensor");
    EXPECT(1, "commands", "send", "ctl-offline", "wake", "--wait", "1");
    assert_non_null(strstr(R.err, "(timeout)"));
}

static void test_events_list_filters(void **state)
{
    (void)state;
    EXPECT(0, "events", "list", "--kind", "audit", "--limit", "50", "-o", "json");
    assert_string_equal(jq("type"), "array");
    assert_string_equal(jq("map(select(.kind != \"audit\")) | length"), "0");
    EXPECT(0, "events", "list", "--severity", "low");
    /* An empty list: nothing on stdout, "(none)" for the reader. */
    EXPECT(0, "commands", "list", "--device", "ctl-nothing-sent");
    assert_string_equal(R.out, "");
    assert_non_null(strstr(R.err, "(none)"));
    EXPECT(0, "commands", "list", "--device", "ctl-nothing-sent", "-o", "json");
    assert_string_equal(jq("length"), "0");
    EXPECT(7, "events", "list", "--severity", "loud");
}

static void test_users_create_list_delete(void **state)
{
    (void)state;
    EXPECT(0, "users", "create", "ctl-alice", "--role", "viewer");
    EXPECT(0, "users", "list", "-o", "json");
    assert_string_equal(jq("map(select(.name == \"ctl-alice\")) | .[0].role"), "viewer");
    EXPECT(7, "users", "create", "ctl-alice", "--role", "viewer"); /* 409 */
    EXPECT(0, "users", "delete", "ctl-alice");
    EXPECT(0, "users", "list", "-o", "json");
    assert_string_equal(jq("map(select(.name == \"ctl-alice\")) | length"), "0");
}

/* ---- keys, tokens and what they may do ---------------------------------------- */

/* Creates a key into fx.dir/name (0600) and returns its keyId. */
static const char *make_key(const char *name, const char *role, const char *rate)
{
    static char key_id[128];
    char out[EM_TEST_PATH_MAX];
    path_in(out, sizeof out, fx.dir, name);
    unlink(out);
    if (rate != NULL)
        EXPECT(0, "keys", "create", "--name", name, "--role", role, "--rate", rate, "--out", out,
               "-o", "json");
    else
        EXPECT(0, "keys", "create", "--name", name, "--role", role, "--out", out, "-o", "json");
    assert_string_equal(jq("has(\"key\")"), "false"); /* the key went to the file only */
    snprintf(key_id, sizeof key_id, "%s", jq(".keyId"));
    struct stat st;
    assert_int_equal(stat(out, &st), 0);
    assert_int_equal(st.st_mode & 0777, 0600);
    char text[256];
    read_into(out, text, sizeof text);
    assert_memory_equal(text, "iot_", 4);
    return key_id;
}

static void test_keys_create_list_revoke(void **state)
{
    (void)state;
    const char *id = make_key("ctl-viewer.key", "viewer", NULL);
    char key_id[128];
    snprintf(key_id, sizeof key_id, "%s", id);
    EXPECT(0, "keys", "list", "-o", "json");
    char filter[256];
    snprintf(filter, sizeof filter, "map(select(.keyId == \"%s\")) | .[0].role", key_id);
    assert_string_equal(jq(filter), "viewer");
    EXPECT(0, "keys", "list");
    assert_non_null(strstr(R.out, key_id));
    assert_null(strstr(R.out, "iot_"));

    char path[EM_TEST_PATH_MAX], env_file[EM_TEST_PATH_MAX + 32];
    path_in(path, sizeof path, fx.dir, "ctl-viewer.key");
    snprintf(env_file, sizeof env_file, "EMIOT_API_KEY_FILE=%s", path);
    const char *env[] = {env_file, NULL};
    EXPECT_ENV(env, 0, "whoami", "-o", "json");
    assert_string_equal(jq(".role"), "viewer");

    EXPECT(0, "keys", "revoke", key_id);
    EXPECT_ENV(env, 4, "whoami");
    assert_non_null(strstr(R.err, "(authentication)"));
}

static void test_keys_create_shows_the_key_once_on_stdout(void **state)
{
    (void)state;
    EXPECT(0, "-q", "keys", "create", "--name", "ctl-quiet", "--role", "operator");
    assert_memory_equal(R.out, "iot_", 4);
    assert_int_equal(strlen(R.out), 4 + 48 + 1);
    EXPECT(0, "keys", "create", "--name", "ctl-shown", "--role", "viewer", "-o", "json");
    assert_string_equal(jq(".key | startswith(\"iot_\")"), "true");
}

static void test_keys_create_never_overwrites_a_file(void **state)
{
    (void)state;
    char out[EM_TEST_PATH_MAX];
    path_in(out, sizeof out, fx.dir, "ctl-exists.key");
    write_file(out, "keep me\n", 0600);
    EXPECT(1, "keys", "create", "--name", "ctl-exists", "--role", "viewer", "--out", out);
    char text[64];
    read_into(out, text, sizeof text);
    assert_string_equal(text, "keep me\n");
    EXPECT(0, "keys", "list", "-o", "json");
    assert_string_equal(jq("map(select(.name == \"ctl-exists\")) | length"), "0");
}

static void test_device_key_needs_a_device(void **state)
{
    (void)state;
    EXPECT(7, "keys", "create", "--name", "ctl-dev", "--role", "device");
    EXPECT(7, "keys", "create", "--name", "ctl-dev", "--role", "root");
}

static void test_viewer_writing_exits_5(void **state)
{
    (void)state;
    make_key("ctl-ro.key", "viewer", NULL);
    char path[EM_TEST_PATH_MAX], env_file[EM_TEST_PATH_MAX + 32];
    path_in(path, sizeof path, fx.dir, "ctl-ro.key");
    snprintf(env_file, sizeof env_file, "EMIOT_API_KEY_FILE=%s", path);
    const char *env[] = {env_file, NULL};
    EXPECT_ENV(env, 0, "devices", "list");
    EXPECT_ENV(env, 5, "devices", "create", "ctl-ro-dev", "--name", "No", "--type", "sensor");
    assert_non_null(strstr(R.err, "(permission_denied)"));
    EXPECT_ENV(env, 5, "keys", "list");
    EXPECT(6, "devices", "get", "ctl-ro-dev");
}

static void test_wrong_key_exits_4(void **state)
{
    (void)state;
    const char *env[] = {"EMIOT_API_KEY=iot_000000000000000000000000000000000000000000000000",
                         NULL};
    EXPECT_ENV(env, 4, "devices", "list");
    assert_non_null(strstr(R.err, "emiotctl: "));
    assert_non_null(strstr(R.err, "(authentication)"));
}

static void test_no_credentials_exits_4_and_says_so(void **state)
{
    (void)state;
    const char *env[] = {"-EMIOT_API_KEY_FILE", NULL};
    EXPECT_ENV(env, 4, "devices", "list");
    assert_non_null(strstr(R.err, "no credentials"));
}

static void test_rate_limited_key_exits_8(void **state)
{
    (void)state;
    make_key("ctl-slow.key", "viewer", "2");
    char path[EM_TEST_PATH_MAX], env_file[EM_TEST_PATH_MAX + 32];
    path_in(path, sizeof path, fx.dir, "ctl-slow.key");
    snprintf(env_file, sizeof env_file, "EMIOT_API_KEY_FILE=%s", path);
    const char *env[] = {env_file, NULL};
    int rc = 0;
    for (int i = 0; i < 20 && rc != 8; i++)
        rc = CTL_ENV(env, "whoami");
    if (rc != 8)
        dump(8);
    assert_int_equal(rc, 8);
    assert_non_null(strstr(R.err, "(rate_limit_exceeded)"));
    assert_non_null(strstr(R.err, "retry in"));
}

static void test_token_create_then_use_it(void **state)
{
    (void)state;
    char out[EM_TEST_PATH_MAX];
    path_in(out, sizeof out, fx.dir, "ctl.token");
    unlink(out);
    EXPECT(0, "token", "create", "--ttl", "600", "--out", out);
    char env_file[EM_TEST_PATH_MAX + 32];
    snprintf(env_file, sizeof env_file, "EMIOT_API_KEY_FILE=%s", out);
    const char *env[] = {env_file, NULL};
    EXPECT_ENV(env, 0, "whoami", "-o", "json");
    assert_string_equal(jq(".role"), "admin");
    EXPECT(0, "-q", "token", "create");
    assert_int_equal(R.out[strcspn(R.out, ".")], '.'); /* a JWT: header.payload.signature */
}

static void test_client_certificate_identifies_a_user(void **state)
{
    (void)state;
    char cert[EM_TEST_PATH_MAX], key[EM_TEST_PATH_MAX];
    assert_int_equal(em_test_daemon_add_client(&fx.daemon, "ctl-operator", cert, key), 0);
    EXPECT(0, "users", "create", "ctl-operator", "--role", "operator");
    const char *env[] = {"-EMIOT_API_KEY_FILE", NULL};
    EXPECT_ENV(env, 0, "--cert", cert, "--key", key, "whoami", "-o", "json");
    assert_string_equal(jq(".role"), "operator");
    assert_string_equal(jq(".name"), "ctl-operator");
}

/* ---- refused before sending -------------------------------------------------- */

static void test_bad_input_exits_7(void **state)
{
    (void)state;
    EXPECT(7, "devices", "get", "no");     /* too short */
    EXPECT(7, "devices", "get", "bad/id"); /* not [A-Za-z0-9_-] */
    EXPECT(7, "devices", "create", "ctl-bad", "--name", "X", "--type", "toaster");
    EXPECT(7, "devices", "create", "ctl-bad", "--name", "X", "--type", "sensor", "--config",
           "{not json");
    EXPECT(7, "commands", "send", AGENT_ID, "explode");
    EXPECT(7, "commands", "send", AGENT_ID, "sleep", "--payload", "[1,2]");
    EXPECT(7, "commands", "send", AGENT_ID, "reset"); /* needs {"confirm":true} */
    EXPECT(7, "commands", "send", AGENT_ID, "set_reporting_interval", "--payload",
           "{\"interval\":5}");
    EXPECT(7, "devices", "history", AGENT_ID, "--from", "yesterday");
    EXPECT(7, "devices", "list", "--limit", "5000");
    EXPECT(7, "groups", "create", "x");
    /* And what only the server can tell: an id that exists (409). */
    EXPECT(7, "devices", "create", AGENT_ID, "--name", "Again", "--type", "sensor");
    assert_non_null(strstr(R.err, "(already_exists)"));
}

static void test_missing_objects_exit_6(void **state)
{
    (void)state;
    EXPECT(6, "devices", "get", "ctl-nobody");
    assert_non_null(strstr(R.err, "not_found)"));
    EXPECT(6, "devices", "delete", "ctl-nobody");
    EXPECT(6, "commands", "get", "req_00000000000000000000000000000000");
    EXPECT(6, "groups", "stats", "no such group");
}

/* ---- connection, TLS and settings --------------------------------------------- */

static void test_daemon_down_exits_3(void **state)
{
    (void)state;
    char url[64];
    snprintf(url, sizeof url, "https://localhost:%d", em_test_free_port());
    EXPECT(3, "--url", url, "whoami");
    assert_non_null(strstr(R.err, "(connection)"));
}

static void test_wrong_ca_exits_3(void **state)
{
    (void)state;
    /* The broker's CA did not sign the API's certificate. */
    EXPECT(3, "--ca", em_test_broker_ca(&fx.broker), "whoami");
    assert_non_null(strstr(R.err, "(tls)"));
}

static void test_plain_http_url_is_refused(void **state)
{
    (void)state;
    char url[96];
    snprintf(url, sizeof url, "http://localhost:%d", fx.daemon.port);
    EXPECT(2, "--url", url, "whoami");
    assert_non_null(strstr(R.err, "https"));
}

static void test_key_file_readable_by_others_is_refused(void **state)
{
    (void)state;
    char path[EM_TEST_PATH_MAX], line[128], env_file[EM_TEST_PATH_MAX + 32];
    path_in(path, sizeof path, fx.dir, "open.key");
    snprintf(line, sizeof line, "%s\n", fx.daemon.admin_key);
    write_file(path, line, 0644);
    snprintf(env_file, sizeof env_file, "EMIOT_API_KEY_FILE=%s", path);
    const char *env[] = {env_file, NULL};
    EXPECT_ENV(env, 2, "whoami");
    assert_non_null(strstr(R.err, "chmod 600"));
    EXPECT(2, "--api-key-file", path, "whoami");
    assert_int_equal(chmod(path, 0600), 0);
    EXPECT(0, "--api-key-file", path, "whoami");
}

static void test_config_file_supplies_the_settings(void **state)
{
    (void)state;
    char dir[EM_TEST_PATH_MAX], conf[EM_TEST_PATH_MAX], text[2048];
    path_in(dir, sizeof dir, fx.home, ".config");
    mkdir(dir, 0700);
    path_in(dir, sizeof dir, fx.home, ".config/emiot");
    mkdir(dir, 0700);
    path_in(conf, sizeof conf, dir, "emiotctl.conf");
    snprintf(text, sizeof text, "# emiotctl settings\nurl = %s\nca = %s\napi_key_file = %s\n",
             fx.daemon.url, fx.daemon.ca, fx.key_file);
    write_file(conf, text, 0600);
    const char *env[] = {"-EMIOT_URL", "-EMIOT_CA", "-EMIOT_API_KEY_FILE", NULL};
    /* The default place (~/.config/emiot/emiotctl.conf) ... */
    EXPECT_ENV(env, 0, "whoami", "-o", "json");
    assert_string_equal(jq(".role"), "admin");
    /* ... or --config FILE. */
    char other[EM_TEST_PATH_MAX];
    path_in(other, sizeof other, fx.dir, "other.conf");
    write_file(other, text, 0600);
    EXPECT_ENV(env, 0, "--config", other, "whoami");
    /* Flags and environment come before the file. */
    const char *env_url[] = {"EMIOT_URL=https://localhost:1", "-EMIOT_CA", "-EMIOT_API_KEY_FILE",
                             NULL};
    EXPECT_ENV(env_url, 3, "whoami");
    EXPECT_ENV(env_url, 0, "--url", fx.daemon.url, "whoami");
    /* A config file others may read is refused; so is an unknown key. */
    assert_int_equal(chmod(conf, 0640), 0);
    EXPECT_ENV(env, 2, "whoami");
    assert_non_null(strstr(R.err, "chmod 600"));
    write_file(conf, "url = https://x\npassword = secret\n", 0600);
    EXPECT_ENV(env, 2, "whoami");
    assert_non_null(strstr(R.err, "unknown key"));
    unlink(conf);
}

static void test_quiet_prints_nothing(void **state)
{
    (void)state;
    EXPECT(0, "-q", "devices", "get", AGENT_ID);
    assert_string_equal(R.out, "");
    EXPECT(0, "devices", "list", "-q");
    assert_string_equal(R.out, "");
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_help_for_every_command_exits_0),
        cmocka_unit_test(test_usage_errors_exit_2),
        cmocka_unit_test(test_api_key_is_never_taken_from_the_command_line),
        cmocka_unit_test(test_abbreviated_options_are_refused),
        cmocka_unit_test(test_health_answers_ok_without_credentials),
        cmocka_unit_test(test_whoami_names_the_admin),
        cmocka_unit_test(test_devices_create_get_update_delete),
        cmocka_unit_test(test_devices_list_table_and_json),
        cmocka_unit_test(test_devices_list_all_follows_every_page),
        cmocka_unit_test(test_devices_status_history_and_telemetry),
        cmocka_unit_test(test_device_status_before_any_exits_6),
        cmocka_unit_test(test_groups_lifecycle),
        cmocka_unit_test(test_commands_send_wait_get_and_list),
        cmocka_unit_test(test_commands_send_group_waits_for_every_device),
        cmocka_unit_test(test_command_to_a_silent_device_is_not_waited_forever),
        cmocka_unit_test(test_events_list_filters),
        cmocka_unit_test(test_users_create_list_delete),
        cmocka_unit_test(test_keys_create_list_revoke),
        cmocka_unit_test(test_keys_create_shows_the_key_once_on_stdout),
        cmocka_unit_test(test_keys_create_never_overwrites_a_file),
        cmocka_unit_test(test_device_key_needs_a_device),
        cmocka_unit_test(test_viewer_writing_exits_5),
        cmocka_unit_test(test_wrong_key_exits_4),
        cmocka_unit_test(test_no_credentials_exits_4_and_says_so),
        cmocka_unit_test(test_rate_limited_key_exits_8),
        cmocka_unit_test(test_token_create_then_use_it),
        cmocka_unit_test(test_client_certificate_identifies_a_user),
        cmocka_unit_test(test_bad_input_exits_7),
        cmocka_unit_test(test_missing_objects_exit_6),
        cmocka_unit_test(test_daemon_down_exits_3),
        cmocka_unit_test(test_wrong_ca_exits_3),
        cmocka_unit_test(test_plain_http_url_is_refused),
        cmocka_unit_test(test_key_file_readable_by_others_is_refused),
        cmocka_unit_test(test_config_file_supplies_the_settings),
        cmocka_unit_test(test_quiet_prints_nothing),
    };
    return cmocka_run_group_tests(tests, group_setup, group_teardown);
}
