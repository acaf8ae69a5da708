/*
 * emiot tests - daemon.c: a real emiotd for integration tests (daemon.h).
 */
#include "daemon.h"

#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "testutil.h"

#ifndef EM_TEST_SOURCE_DIR
#error "EM_TEST_SOURCE_DIR must name the source tree"
#endif
#ifndef EM_TEST_BINARY_DIR
#error "EM_TEST_BINARY_DIR must name the build tree"
#endif

#define STORE_ENV "EMIOT_TEST_STORE_URL"

static long long now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (long long)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

/* What em_test_daemon_set_extra_config needs to write the configuration
 * again: the [mqtt] section made from the broker at init. */
typedef struct conf_parts {
    char mqtt[2048];
} conf_parts_t;

/* One conf_parts_t per live daemon, found by directory. */
#define LIVE_MAX 32
static struct {
    char dir[sizeof(((em_test_daemon_t *)0)->dir)];
    pid_t pid;
    conf_parts_t parts;
} live[LIVE_MAX];
static bool live_atexit;

static void live_cleanup(void)
{
    for (int i = 0; i < LIVE_MAX; i++) {
        if (live[i].dir[0] == '\0')
            continue;
        if (live[i].pid > 0) {
            kill(live[i].pid, SIGKILL);
            int st;
            waitpid(live[i].pid, &st, 0);
        }
        em_test_rmtree(live[i].dir);
        live[i].dir[0] = '\0';
    }
}

static int live_find(const em_test_daemon_t *d)
{
    for (int i = 0; i < LIVE_MAX; i++) {
        if (live[i].dir[0] != '\0' && strcmp(live[i].dir, d->dir) == 0)
            return i;
    }
    return -1;
}

static int live_add(const em_test_daemon_t *d)
{
    if (!live_atexit) {
        atexit(live_cleanup);
        live_atexit = true;
    }
    for (int i = 0; i < LIVE_MAX; i++) {
        if (live[i].dir[0] == '\0') {
            snprintf(live[i].dir, sizeof(live[i].dir), "%s", d->dir);
            live[i].pid = 0;
            live[i].parts.mqtt[0] = '\0';
            return i;
        }
    }
    fprintf(stderr, "em_test_daemon: more than %d daemons at once\n", LIVE_MAX);
    return -1;
}

static void live_set_pid(const em_test_daemon_t *d)
{
    int i = live_find(d);
    if (i >= 0)
        live[i].pid = d->pid;
}

static void live_forget(const em_test_daemon_t *d)
{
    int i = live_find(d);
    if (i >= 0)
        live[i].dir[0] = '\0';
}

void em_test_daemon_print_log(const em_test_daemon_t *d)
{
    FILE *f = fopen(d->out, "r");
    if (f == NULL)
        return;
    char buf[4096];
    long size = 0;
    if (fseek(f, 0, SEEK_END) == 0)
        size = ftell(f);
    fseek(f, size > (long)sizeof(buf) - 1 ? size - (long)sizeof(buf) + 1 : 0, SEEK_SET);
    size_t n = fread(buf, 1, sizeof(buf) - 1, f);
    buf[n] = '\0';
    fclose(f);
    fprintf(stderr, "--- %s ---\n%s\n", d->out, buf);
}

static int write_file(const char *path, const char *text, size_t len)
{
    int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
    if (fd < 0)
        return -1;
    size_t off = 0;
    while (off < len) {
        ssize_t w = write(fd, text + off, len - off);
        if (w < 0 && errno == EINTR)
            continue;
        if (w <= 0) {
            close(fd);
            return -1;
        }
        off += (size_t)w;
    }
    return close(fd) == 0 ? 0 : -1;
}

/* Reads up to size - 1 bytes of path into buf (NUL-terminated). Returns the
 * length, or -1. */
static long read_file(const char *path, char *buf, size_t size)
{
    FILE *f = fopen(path, "r");
    if (f == NULL)
        return -1;
    size_t n = fread(buf, 1, size - 1, f);
    buf[n] = '\0';
    fclose(f);
    return (long)n;
}

static int path_in(char *out, size_t size, const char *dir, const char *name)
{
    int n = snprintf(out, size, "%s/%s", dir, name);
    return n > 0 && (size_t)n < size ? 0 : -1;
}

static int write_config(em_test_daemon_t *d, const char *extra)
{
    int i = live_find(d);
    if (i < 0)
        return -1;
    char *text = malloc(EM_TEST_DAEMON_TEXT_MAX * 2);
    if (text == NULL)
        return -1;
    int n = snprintf(
        text, EM_TEST_DAEMON_TEXT_MAX * 2,
        "# emiotd.conf written by tests/support/daemon.c\n"
        "[daemon]\n"
        "data_dir = %s\n"
        "\n"
        "%s"
        "\n"
        "[store]\n"
        "%s"
        "\n"
        "[listener api]\n"
        "address = 127.0.0.1\n"
        "port = %d\n"
        "cert_file = %s/server.crt\n"
        "key_file = %s/server.key\n"
        "client_ca_file = %s\n"
        "client_auth = optional\n"
        "\n"
        "[listener metrics]\n"
        "address = 127.0.0.1\n"
        "port = %d\n"
        "metrics_only = true\n"
        "\n"
        "%s\n",
        d->data_dir, live[i].parts.mqtt, d->store_url[0] != '\0' ? "url_env = " STORE_ENV "\n" : "",
        d->port, d->tls_dir, d->tls_dir, d->client_ca, d->metrics_port, extra != NULL ? extra : "");
    int rc = -1;
    if (n > 0 && n < EM_TEST_DAEMON_TEXT_MAX * 2)
        rc = write_file(d->config, text, (size_t)n);
    else
        fprintf(stderr, "em_test_daemon: configuration too long\n");
    free(text);
    return rc;
}

static int gen_certs(const char *dir, const char *cn)
{
    char script[EM_TEST_PATH_MAX];
    snprintf(script, sizeof(script), "%s/scripts/gen-certs.sh", EM_TEST_SOURCE_DIR);
    const char *argv[] = {"bash", script, dir, cn, NULL};
    int rc = em_test_run(argv);
    if (rc != 0) {
        fprintf(stderr, "em_test_daemon: gen-certs.sh failed (%d)\n", rc);
        return -1;
    }
    return 0;
}

int em_test_daemon_init(em_test_daemon_t *d, em_test_broker_t *broker,
                        const em_test_daemon_options_t *opts)
{
    memset(d, 0, sizeof(*d));
    if (em_test_mkdtemp(d->dir, sizeof(d->dir)) != 0) {
        perror("em_test_daemon: mkdtemp");
        d->dir[0] = '\0';
        return -1;
    }
    int slot = live_add(d);
    if (slot < 0)
        return -1;
    if (path_in(d->data_dir, sizeof(d->data_dir), d->dir, "data") != 0 ||
        path_in(d->config, sizeof(d->config), d->dir, "emiotd.conf") != 0 ||
        path_in(d->out, sizeof(d->out), d->dir, "emiotd.out") != 0 ||
        path_in(d->tls_dir, sizeof(d->tls_dir), d->dir, "tls") != 0 ||
        path_in(d->ca, sizeof(d->ca), d->tls_dir, "ca.crt") != 0 ||
        path_in(d->key_file, sizeof(d->key_file), d->data_dir, "bootstrap-admin.key") != 0) {
        fprintf(stderr, "em_test_daemon: paths too long\n");
        return -1;
    }
    if (gen_certs(d->tls_dir, NULL) != 0)
        return -1;
    d->port = em_test_free_port();
    d->metrics_port = em_test_free_port();
    if (d->port <= 0 || d->metrics_port <= 0 || d->port == d->metrics_port) {
        fprintf(stderr, "em_test_daemon: no free port\n");
        return -1;
    }
    snprintf(d->url, sizeof(d->url), "https://localhost:%d", d->port);
    snprintf(d->metrics_url, sizeof(d->metrics_url), "http://127.0.0.1:%d", d->metrics_port);
    d->no_wait = opts != NULL && opts->no_wait;
    int cn = snprintf(d->client_ca, sizeof(d->client_ca), "%s",
                      opts != NULL && opts->client_ca_file != NULL ? opts->client_ca_file : d->ca);
    if (cn < 0 || (size_t)cn >= sizeof(d->client_ca)) {
        fprintf(stderr, "em_test_daemon: client CA path too long\n");
        return -1;
    }
    if (opts != NULL && opts->store_url != NULL) {
        int n = snprintf(d->store_url, sizeof(d->store_url), "%s", opts->store_url);
        if (n < 0 || (size_t)n >= sizeof(d->store_url)) {
            fprintf(stderr, "em_test_daemon: store URL too long\n");
            return -1;
        }
    }

    /* MQTT: the broker's URL and, for TLS, its CA (and the manager's
     * certificate for mTLS); plain MQTT is allowed on loopback. */
    char *mqtt = live[slot].parts.mqtt;
    size_t msize = sizeof(live[slot].parts.mqtt);
    const char *url = opts != NULL && opts->mqtt_url != NULL ? opts->mqtt_url : NULL;
    char closed[64];
    if (url == NULL && broker != NULL)
        url = em_test_broker_url(broker);
    if (url == NULL) {
        /* No broker: a loopback port nobody listens on; the daemon retries. */
        snprintf(closed, sizeof(closed), "mqtt://127.0.0.1:%d", em_test_free_port());
        url = closed;
    }
    int n = snprintf(mqtt, msize, "[mqtt]\nurl = %s\nallow_plain = %s\nstatus_interval = 30\n", url,
                     strncmp(url, "mqtt://", 7) == 0 ? "true" : "false");
    if (n > 0 && (size_t)n < msize && broker != NULL && strcmp(broker->mode, "plain") != 0) {
        n += snprintf(mqtt + n, msize - (size_t)n, "ca_file = %s\n", em_test_broker_ca(broker));
        if (n > 0 && (size_t)n < msize && strcmp(broker->mode, "mtls") == 0)
            n += snprintf(mqtt + n, msize - (size_t)n, "cert_file = %s\nkey_file = %s\n",
                          em_test_broker_cert(broker), em_test_broker_key(broker));
    }
    if (n < 0 || (size_t)n >= msize) {
        fprintf(stderr, "em_test_daemon: MQTT settings too long\n");
        return -1;
    }
    return write_config(d, opts != NULL ? opts->extra_config : NULL);
}

int em_test_daemon_set_extra_config(em_test_daemon_t *d, const char *extra_config)
{
    return write_config(d, extra_config);
}

/* Reads the bootstrap key (first line of its file) into d->admin_key. */
static void read_admin_key(em_test_daemon_t *d)
{
    char buf[256];
    long n = read_file(d->key_file, buf, sizeof(buf));
    if (n <= 0)
        return;
    size_t len = strcspn(buf, "\r\n");
    if (len >= sizeof(d->admin_key))
        return;
    memcpy(d->admin_key, buf, len);
    d->admin_key[len] = '\0';
}

/* 0 when GET /healthz answers 200. */
static int healthz(em_test_daemon_t *d)
{
    return em_test_daemon_request(d, NULL, "GET", "/healthz", NULL, NULL, 0) == 200 ? 0 : -1;
}

static int exited(em_test_daemon_t *d, int *status)
{
    int st = 0;
    pid_t r = waitpid(d->pid, &st, WNOHANG);
    if (r == d->pid) {
        *status = WIFEXITED(st) ? WEXITSTATUS(st) : -1;
        d->pid = 0;
        live_set_pid(d);
        return 1;
    }
    return 0;
}

static int launch(em_test_daemon_t *d, bool wait_ready)
{
    if (d->pid != 0)
        return 0;
    char exe[EM_TEST_PATH_MAX];
    snprintf(exe, sizeof(exe), "%s/emiotd", EM_TEST_BINARY_DIR);
    if (d->store_url[0] != '\0')
        setenv(STORE_ENV, d->store_url, 1);
    const char *argv[] = {exe, "--config", d->config, NULL};
    pid_t pid = em_test_spawn(argv, d->out);
    if (pid < 0)
        return -1;
    d->pid = pid;
    live_set_pid(d);
    if (!wait_ready)
        return 0;
    long long deadline = now_ms() + 60000;
    while (now_ms() < deadline) {
        int status;
        if (exited(d, &status)) {
            fprintf(stderr, "em_test_daemon: emiotd exited during start-up (status %d)\n", status);
            em_test_daemon_print_log(d);
            return -1;
        }
        if (healthz(d) == 0) {
            read_admin_key(d);
            return 0;
        }
        em_test_sleep_ms(100);
    }
    fprintf(stderr, "em_test_daemon: /healthz did not answer within 60 s\n");
    em_test_daemon_print_log(d);
    return -1;
}

int em_test_daemon_launch(em_test_daemon_t *d)
{
    return launch(d, !d->no_wait);
}

int em_test_daemon_start(em_test_daemon_t *d, em_test_broker_t *broker,
                         const em_test_daemon_options_t *opts)
{
    if (em_test_daemon_init(d, broker, opts) != 0)
        return -1;
    return em_test_daemon_launch(d);
}

int em_test_daemon_wait_exit(em_test_daemon_t *d, int timeout_ms)
{
    if (d->pid <= 0)
        return -1;
    long long deadline = now_ms() + timeout_ms;
    for (;;) {
        int status;
        if (exited(d, &status))
            return status;
        if (now_ms() >= deadline)
            return -1;
        em_test_sleep_ms(20);
    }
}

int em_test_daemon_stop(em_test_daemon_t *d)
{
    if (d->pid <= 0)
        return -1;
    kill(d->pid, SIGTERM);
    int rc = em_test_daemon_wait_exit(d, 30000);
    if (d->pid > 0) {
        fprintf(stderr, "em_test_daemon: emiotd did not stop within 30 s; killing it\n");
        em_test_daemon_print_log(d);
        em_test_daemon_kill(d);
        return -1;
    }
    return rc;
}

int em_test_daemon_kill(em_test_daemon_t *d)
{
    if (d->pid <= 0)
        return -1;
    kill(d->pid, SIGKILL);
    int st;
    while (waitpid(d->pid, &st, 0) < 0 && errno == EINTR) {
    }
    d->pid = 0;
    live_set_pid(d);
    return 0;
}

int em_test_daemon_signal(em_test_daemon_t *d, int sig)
{
    if (d->pid <= 0)
        return -1;
    return kill(d->pid, sig) == 0 ? 0 : -1;
}

int em_test_daemon_restart(em_test_daemon_t *d)
{
    if (d->pid > 0)
        em_test_daemon_stop(d);
    /* The old listening socket may take a moment to be released. */
    long long deadline = now_ms() + 10000;
    for (;;) {
        if (launch(d, true) == 0)
            return 0;
        if (now_ms() >= deadline)
            return -1;
        em_test_sleep_ms(200);
    }
}

void em_test_daemon_cleanup(em_test_daemon_t *d)
{
    if (d == NULL)
        return;
    if (d->pid > 0)
        em_test_daemon_stop(d);
    if (d->dir[0] != '\0') {
        em_test_rmtree(d->dir);
        live_forget(d);
    }
    memset(d, 0, sizeof(*d));
}

int em_test_daemon_add_client(em_test_daemon_t *d, const char *cn, char *cert, char *key)
{
    if (gen_certs(d->tls_dir, cn) != 0)
        return -1;
    char name[128];
    snprintf(name, sizeof(name), "devices/%s.crt", cn);
    if (path_in(cert, EM_TEST_PATH_MAX, d->tls_dir, name) != 0)
        return -1;
    snprintf(name, sizeof(name), "devices/%s.key", cn);
    return path_in(key, EM_TEST_PATH_MAX, d->tls_dir, name);
}

/* Runs curl for one request to base + path; see em_test_daemon_request_cert. */
static int curl_request(em_test_daemon_t *d, const char *base, const char *cert,
                        const char *key_file, const char *bearer, const char *method,
                        const char *path, const char *body, char *out, size_t size)
{
    static unsigned seq;
    char hdr[EM_TEST_PATH_MAX], bodyf[EM_TEST_PATH_MAX], outf[EM_TEST_PATH_MAX],
        codef[EM_TEST_PATH_MAX], url[EM_TEST_PATH_MAX + 128];
    unsigned n = ++seq;
    char name[64];
    snprintf(name, sizeof(name), ".curl-%d-%u.hdr", (int)getpid(), n);
    path_in(hdr, sizeof(hdr), d->dir, name);
    snprintf(name, sizeof(name), ".curl-%d-%u.body", (int)getpid(), n);
    path_in(bodyf, sizeof(bodyf), d->dir, name);
    snprintf(name, sizeof(name), ".curl-%d-%u.out", (int)getpid(), n);
    path_in(outf, sizeof(outf), d->dir, name);
    snprintf(name, sizeof(name), ".curl-%d-%u.code", (int)getpid(), n);
    path_in(codef, sizeof(codef), d->dir, name);
    int un = snprintf(url, sizeof(url), "%s%s", base, path);
    if (un < 0 || (size_t)un >= sizeof(url))
        return -1;

    /* The credential goes through a 0600 header file, not argv (which other
     * users on the machine can read in /proc). */
    char line[4096];
    int ln = snprintf(line, sizeof(line), "Content-Type: application/json\n%s%s%s",
                      bearer != NULL ? "Authorization: Bearer " : "", bearer != NULL ? bearer : "",
                      bearer != NULL ? "\n" : "");
    if (ln < 0 || (size_t)ln >= sizeof(line) || write_file(hdr, line, (size_t)ln) != 0)
        return -1;
    if (body != NULL && write_file(bodyf, body, strlen(body)) != 0) {
        unlink(hdr);
        return -1;
    }
    char hdr_arg[EM_TEST_PATH_MAX + 2], body_arg[EM_TEST_PATH_MAX + 2];
    snprintf(hdr_arg, sizeof(hdr_arg), "@%s", hdr);
    snprintf(body_arg, sizeof(body_arg), "@%s", bodyf);
    const char *argv[32];
    int a = 0;
    argv[a++] = "curl";
    argv[a++] = "-s";
    argv[a++] = "--max-time";
    argv[a++] = "20";
    argv[a++] = "--cacert";
    argv[a++] = d->ca;
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
    if (cert != NULL) {
        argv[a++] = "--cert";
        argv[a++] = cert;
        argv[a++] = "--key";
        argv[a++] = key_file;
    }
    argv[a++] = url;
    argv[a] = NULL;
    pid_t pid = em_test_spawn(argv, codef);
    int rc = pid > 0 ? em_test_wait(pid, 30000) : -1;
    if (rc == -1 && pid > 0 && kill(pid, 0) == 0) {
        kill(pid, SIGKILL);
        int st;
        waitpid(pid, &st, 0);
    }
    int status = -1;
    char code[64];
    if (rc == 0 && read_file(codef, code, sizeof(code)) > 0) {
        char *end = NULL;
        long v = strtol(code, &end, 10);
        if (end != code && v > 0 && v < 600)
            status = (int)v;
    }
    if (out != NULL && size > 0) {
        out[0] = '\0';
        if (read_file(outf, out, size) < 0)
            out[0] = '\0';
    }
    unlink(hdr);
    unlink(bodyf);
    unlink(outf);
    unlink(codef);
    return status;
}

int em_test_daemon_request(em_test_daemon_t *d, const char *key, const char *method,
                           const char *path, const char *body, char *out, size_t size)
{
    return curl_request(d, d->url, NULL, NULL, key, method, path, body, out, size);
}

int em_test_daemon_request_cert(em_test_daemon_t *d, const char *cert, const char *key_file,
                                const char *bearer, const char *method, const char *path,
                                const char *body, char *out, size_t size)
{
    return curl_request(d, d->url, cert, key_file, bearer, method, path, body, out, size);
}

int em_test_daemon_poll(em_test_daemon_t *d, const char *key, const char *path, int want,
                        const char *needle, int timeout_ms)
{
    char *buf = malloc(65536);
    if (buf == NULL)
        return -1;
    long long deadline = now_ms() + timeout_ms;
    int rc = -1;
    for (;;) {
        int status = em_test_daemon_request(d, key, "GET", path, NULL, buf, 65536);
        if (status == want && (needle == NULL || strstr(buf, needle) != NULL)) {
            rc = 0;
            break;
        }
        if (now_ms() >= deadline) {
            fprintf(stderr, "em_test_daemon: GET %s: last answer %d %.400s\n", path, status, buf);
            break;
        }
        em_test_sleep_ms(100);
    }
    free(buf);
    return rc;
}

bool em_test_daemon_log_contains(em_test_daemon_t *d, const char *needle)
{
    FILE *f = fopen(d->out, "r");
    if (f == NULL)
        return false;
    bool found = false;
    char line[8192];
    while (!found && fgets(line, sizeof(line), f) != NULL)
        found = strstr(line, needle) != NULL;
    fclose(f);
    return found;
}

int em_test_daemon_metrics(em_test_daemon_t *d, char *out, size_t size)
{
    return curl_request(d, d->metrics_url, NULL, NULL, NULL, "GET", "/metrics", NULL, out, size);
}

double em_test_daemon_metric(em_test_daemon_t *d, const char *name)
{
    size_t size = 256 * 1024;
    char *buf = malloc(size);
    if (buf == NULL)
        return -1;
    double v = -1;
    if (em_test_daemon_metrics(d, buf, size) == 200) {
        size_t n = strlen(name);
        for (char *line = buf; line != NULL && *line != '\0';) {
            char *nl = strchr(line, '\n');
            if (nl != NULL)
                *nl = '\0';
            /* "name value" or "name{labels} value"; comments start with '#'. */
            if (strncmp(line, name, n) == 0 && (line[n] == ' ' || line[n] == '{')) {
                char *sp = strrchr(line, ' ');
                if (sp != NULL) {
                    v = strtod(sp + 1, NULL);
                    break;
                }
            }
            line = nl != NULL ? nl + 1 : NULL;
        }
    }
    free(buf);
    return v;
}
