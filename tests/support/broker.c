/*
 * emiot tests - broker.c: a real mosquitto for integration tests (broker.h).
 */
#include "broker.h"

#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "testutil.h"

#ifndef EM_TEST_SOURCE_DIR
#error "EM_TEST_SOURCE_DIR must name the source tree"
#endif

static long long now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (long long)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

/* ---------------------------------------------------------------------- */
/* Processes                                                               */

/* Finds an executable for name: as given when it has a '/', else in PATH,
 * else in /usr/sbin and /sbin (mosquitto lives there). */
static int resolve(const char *name, char *out, size_t size)
{
    if (strchr(name, '/') != NULL) {
        int n = snprintf(out, size, "%s", name);
        return n > 0 && (size_t)n < size && access(out, X_OK) == 0 ? 0 : -1;
    }
    const char *path = getenv("PATH");
    char dirs[4096];
    snprintf(dirs, sizeof(dirs), "%s:/usr/sbin:/sbin:/usr/bin:/bin", path ? path : "");
    for (char *d = dirs; d != NULL;) {
        char *colon = strchr(d, ':');
        if (colon != NULL)
            *colon = '\0';
        if (d[0] != '\0') {
            int n = snprintf(out, size, "%s/%s", d, name);
            if (n > 0 && (size_t)n < size && access(out, X_OK) == 0)
                return 0;
        }
        d = colon != NULL ? colon + 1 : NULL;
    }
    return -1;
}

pid_t em_test_spawn(const char *const argv[], const char *stdout_file)
{
    char exe[EM_TEST_PATH_MAX];
    if (argv == NULL || argv[0] == NULL || resolve(argv[0], exe, sizeof(exe)) != 0) {
        fprintf(stderr, "em_test_spawn: cannot find %s\n",
                argv != NULL && argv[0] != NULL ? argv[0] : "(null)");
        return -1;
    }
    const char *out = stdout_file != NULL ? stdout_file : "/dev/null";
    pid_t parent = getpid();
    pid_t pid = fork();
    if (pid < 0) {
        perror("em_test_spawn: fork");
        return -1;
    }
    if (pid == 0) {
        /* Only async-signal-safe calls from here to exec. */
        prctl(PR_SET_PDEATHSIG, SIGTERM);
        if (getppid() != parent)
            _exit(127);
        int fd = open(out, O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0600);
        if (fd >= 0) {
            dup2(fd, STDOUT_FILENO);
            if (stdout_file != NULL)
                dup2(fd, STDERR_FILENO);
        }
        execv(exe, (char *const *)argv);
        _exit(127);
    }
    return pid;
}

int em_test_wait(pid_t pid, int timeout_ms)
{
    if (pid <= 0)
        return -1;
    long long deadline = now_ms() + timeout_ms;
    for (;;) {
        int st = 0;
        pid_t r = waitpid(pid, &st, WNOHANG);
        if (r == pid)
            return WIFEXITED(st) ? WEXITSTATUS(st) : -1;
        if (r < 0 && errno != EINTR)
            return -1;
        if (now_ms() >= deadline)
            return -1;
        em_test_sleep_ms(10);
    }
}

int em_test_stop(pid_t pid)
{
    if (pid <= 0)
        return -1;
    if (kill(pid, SIGTERM) != 0 && errno == ESRCH) {
        int st;
        waitpid(pid, &st, 0);
        return -1;
    }
    int rc = em_test_wait(pid, 5000);
    if (rc == -1 && kill(pid, 0) == 0) {
        kill(pid, SIGKILL);
        int st;
        while (waitpid(pid, &st, 0) < 0 && errno == EINTR) {
        }
    }
    return rc;
}

int em_test_run(const char *const argv[])
{
    pid_t pid = em_test_spawn(argv, NULL);
    if (pid < 0)
        return -1;
    /* stderr stays visible: em_test_spawn only redirects it with a file. */
    int rc = em_test_wait(pid, 60000);
    if (rc == -1 && kill(pid, 0) == 0) {
        kill(pid, SIGKILL);
        int st;
        waitpid(pid, &st, 0);
    }
    return rc;
}

int em_test_count_lines(const char *path)
{
    FILE *f = fopen(path, "r");
    if (f == NULL)
        return 0;
    int n = 0, c;
    while ((c = fgetc(f)) != EOF) {
        if (c == '\n')
            n++;
    }
    fclose(f);
    return n;
}

int em_test_wait_lines(const char *path, int n, int timeout_ms)
{
    long long deadline = now_ms() + timeout_ms;
    while (em_test_count_lines(path) < n) {
        if (now_ms() >= deadline)
            return -1;
        em_test_sleep_ms(20);
    }
    return 0;
}

/* ---------------------------------------------------------------------- */
/* Broker                                                                  */

/* Brokers not yet cleaned up, by directory. A failing cmocka assertion jumps
 * out of a test before its em_test_broker_cleanup: at exit, whatever is left
 * is killed and removed. Copies, not pointers: the em_test_broker_t of a test
 * that failed may have lived on its stack. */
#define LIVE_MAX 64
static struct {
    char dir[sizeof(((em_test_broker_t *)0)->dir)];
    pid_t pid;
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

/* Records b's directory and pid (pid 0: not running; forget: cleaned up). */
static void live_set(const em_test_broker_t *b, bool forget)
{
    if (!live_atexit) {
        atexit(live_cleanup);
        live_atexit = true;
    }
    int free_slot = -1;
    for (int i = 0; i < LIVE_MAX; i++) {
        if (live[i].dir[0] != '\0' && strcmp(live[i].dir, b->dir) == 0) {
            if (forget)
                live[i].dir[0] = '\0';
            else
                live[i].pid = b->pid;
            return;
        }
        if (live[i].dir[0] == '\0' && free_slot < 0)
            free_slot = i;
    }
    if (!forget && free_slot >= 0) {
        snprintf(live[free_slot].dir, sizeof(live[free_slot].dir), "%s", b->dir);
        live[free_slot].pid = b->pid;
    }
}

char *em_test_broker_path(const em_test_broker_t *b, const char *name, char *buf, size_t size)
{
    int n = snprintf(buf, size, "%s/%s", b->dir, name);
    return n > 0 && (size_t)n < size ? buf : NULL;
}

static void print_log_tail(const em_test_broker_t *b)
{
    char path[EM_TEST_PATH_MAX];
    const char *names[] = {"mosquitto.out", "mosquitto.log"};
    for (size_t i = 0; i < 2; i++) {
        if (em_test_broker_path(b, names[i], path, sizeof(path)) == NULL)
            continue;
        FILE *f = fopen(path, "r");
        if (f == NULL)
            continue;
        char buf[4096];
        long size = 0;
        if (fseek(f, 0, SEEK_END) == 0)
            size = ftell(f);
        fseek(f, size > (long)sizeof(buf) - 1 ? size - (long)sizeof(buf) + 1 : 0, SEEK_SET);
        size_t n = fread(buf, 1, sizeof(buf) - 1, f);
        buf[n] = '\0';
        fclose(f);
        fprintf(stderr, "--- %s ---\n%s\n", path, buf);
    }
}

static int script(const em_test_broker_t *b, const char *name, const char *a1, const char *a2,
                  const char *a3, const char *a4, const char *a5, const char *a6)
{
    char path[EM_TEST_PATH_MAX];
    snprintf(path, sizeof(path), "%s/scripts/%s", EM_TEST_SOURCE_DIR, name);
    const char *argv[] = {"bash", path, b->dir, a1, a2, a3, a4, a5, a6, NULL};
    int rc = em_test_run(argv);
    if (rc != 0) {
        fprintf(stderr, "em_test_broker: %s failed (%d)\n", name, rc);
        return -1;
    }
    return 0;
}

static void set_url(em_test_broker_t *b)
{
    if (strcmp(b->mode, "plain") == 0)
        snprintf(b->url, sizeof(b->url), "mqtt://127.0.0.1:%d", b->port);
    else
        snprintf(b->url, sizeof(b->url), "mqtts://localhost:%d", b->port);
}

int em_test_broker_init(em_test_broker_t *b, const char *mode)
{
    memset(b, 0, sizeof(*b));
    if (mode == NULL ||
        (strcmp(mode, "plain") != 0 && strcmp(mode, "tls") != 0 && strcmp(mode, "mtls") != 0)) {
        fprintf(stderr, "em_test_broker: unknown mode %s\n", mode ? mode : "(null)");
        return -1;
    }
    snprintf(b->mode, sizeof(b->mode), "%s", mode);
    if (em_test_mkdtemp(b->dir, sizeof(b->dir)) != 0) {
        perror("em_test_broker: mkdtemp");
        b->dir[0] = '\0';
        return -1;
    }
    live_set(b, false);
    if (script(b, "gen-certs.sh", NULL, NULL, NULL, NULL, NULL, NULL) != 0)
        return -1;
    b->port = em_test_free_port();
    if (b->port <= 0) {
        fprintf(stderr, "em_test_broker: no free port\n");
        return -1;
    }
    set_url(b);
    return 0;
}

int em_test_broker_add_user(em_test_broker_t *b, const char *user, const char *password)
{
    char path[EM_TEST_PATH_MAX];
    if (em_test_broker_path(b, "passwd", path, sizeof(path)) == NULL)
        return -1;
    const char *argv_new[] = {"mosquitto_passwd", "-c", "-b", path, user, password, NULL};
    const char *argv_add[] = {"mosquitto_passwd", "-b", path, user, password, NULL};
    int rc = em_test_run(b->has_passwd ? argv_add : argv_new);
    if (rc != 0) {
        fprintf(stderr, "em_test_broker: mosquitto_passwd failed (%d)\n", rc);
        return -1;
    }
    chmod(path, 0600);
    b->has_passwd = true;
    return 0;
}

int em_test_broker_set_acl(em_test_broker_t *b, const char *acl_text)
{
    char path[EM_TEST_PATH_MAX];
    if (em_test_broker_path(b, "acl", path, sizeof(path)) == NULL)
        return -1;
    int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
    if (fd < 0)
        return -1;
    size_t len = strlen(acl_text);
    ssize_t w = write(fd, acl_text, len);
    close(fd);
    if (w < 0 || (size_t)w != len)
        return -1;
    b->has_acl = true;
    return 0;
}

int em_test_broker_add_device(em_test_broker_t *b, const char *id)
{
    return script(b, "gen-certs.sh", id, NULL, NULL, NULL, NULL, NULL);
}

static int write_conf(em_test_broker_t *b)
{
    char port[16], passwd[EM_TEST_PATH_MAX], acl[EM_TEST_PATH_MAX];
    snprintf(port, sizeof(port), "%d", b->port);
    em_test_broker_path(b, "passwd", passwd, sizeof(passwd));
    em_test_broker_path(b, "acl", acl, sizeof(acl));
    const char *a[6] = {NULL};
    int n = 0;
    a[n++] = port;
    a[n++] = b->mode;
    if (b->has_passwd) {
        a[n++] = "--passwd";
        a[n++] = passwd;
    }
    if (b->has_acl) {
        a[n++] = "--acl";
        a[n++] = acl;
    }
    return script(b, "broker-conf.sh", a[0], a[1], a[2], a[3], a[4], a[5]);
}

static bool port_accepts(int port)
{
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd < 0)
        return false;
    struct sockaddr_in sa;
    memset(&sa, 0, sizeof(sa));
    sa.sin_family = AF_INET;
    sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    sa.sin_port = htons((unsigned short)port);
    bool ok = connect(fd, (struct sockaddr *)&sa, sizeof(sa)) == 0;
    close(fd);
    return ok;
}

/* Starts mosquitto on b->port and waits for the port. 1 when the broker
 * exited early (the port may have been taken), -1 on other failures. */
static int run_broker(em_test_broker_t *b)
{
    char conf[EM_TEST_PATH_MAX], out[EM_TEST_PATH_MAX];
    em_test_broker_path(b, "mosquitto.conf", conf, sizeof(conf));
    em_test_broker_path(b, "mosquitto.out", out, sizeof(out));
    const char *argv[] = {"mosquitto", "-c", conf, NULL};
    pid_t pid = em_test_spawn(argv, out);
    if (pid < 0)
        return -1;
    long long deadline = now_ms() + 10000;
    while (now_ms() < deadline) {
        int st;
        if (waitpid(pid, &st, WNOHANG) == pid)
            return 1;
        if (port_accepts(b->port)) {
            b->pid = pid;
            live_set(b, false);
            return 0;
        }
        em_test_sleep_ms(20);
    }
    kill(pid, SIGKILL);
    int st;
    waitpid(pid, &st, 0);
    fprintf(stderr, "em_test_broker: mosquitto did not open port %d within 10 s\n", b->port);
    return -1;
}

int em_test_broker_launch(em_test_broker_t *b)
{
    if (b->pid != 0)
        return 0;
    for (int tries = 0; tries < 3; tries++) {
        if (write_conf(b) != 0)
            return -1;
        int rc = run_broker(b);
        if (rc == 0)
            return 0;
        if (rc < 0)
            break;
        /* Exited at once: most likely someone took the port meanwhile. */
        print_log_tail(b);
        b->port = em_test_free_port();
        set_url(b);
    }
    print_log_tail(b);
    return -1;
}

int em_test_broker_start(em_test_broker_t *b, const char *mode)
{
    if (em_test_broker_init(b, mode) != 0)
        return -1;
    return em_test_broker_launch(b);
}

int em_test_broker_stop(em_test_broker_t *b)
{
    if (b->pid <= 0)
        return 0;
    em_test_stop(b->pid);
    b->pid = 0;
    live_set(b, false);
    return 0;
}

int em_test_broker_kill(em_test_broker_t *b)
{
    if (b->pid <= 0)
        return -1;
    kill(b->pid, SIGKILL);
    int st;
    while (waitpid(b->pid, &st, 0) < 0 && errno == EINTR) {
    }
    b->pid = 0;
    live_set(b, false);
    return 0;
}

int em_test_broker_restart(em_test_broker_t *b)
{
    em_test_broker_stop(b);
    if (write_conf(b) != 0)
        return -1;
    /* Same port: a client's reconnection must find the broker where it was.
     * The old socket may take a moment to be released. */
    long long deadline = now_ms() + 10000;
    while (now_ms() < deadline) {
        int rc = run_broker(b);
        if (rc == 0)
            return 0;
        if (rc < 0)
            break;
        em_test_sleep_ms(100);
    }
    print_log_tail(b);
    return -1;
}

void em_test_broker_cleanup(em_test_broker_t *b)
{
    if (b == NULL)
        return;
    em_test_broker_stop(b);
    if (b->dir[0] != '\0') {
        em_test_rmtree(b->dir);
        live_set(b, true);
    }
    memset(b, 0, sizeof(*b));
}

const char *em_test_broker_url(const em_test_broker_t *b)
{
    return b->url;
}

int em_test_broker_port(const em_test_broker_t *b)
{
    return b->port;
}

const char *em_test_broker_dir(const em_test_broker_t *b)
{
    return b->dir;
}

const char *em_test_broker_ca(em_test_broker_t *b)
{
    return em_test_broker_path(b, "ca.crt", b->path_buf[0], sizeof(b->path_buf[0]));
}

const char *em_test_broker_cert(em_test_broker_t *b)
{
    return em_test_broker_path(b, "manager.crt", b->path_buf[1], sizeof(b->path_buf[1]));
}

const char *em_test_broker_key(em_test_broker_t *b)
{
    return em_test_broker_path(b, "manager.key", b->path_buf[2], sizeof(b->path_buf[2]));
}
