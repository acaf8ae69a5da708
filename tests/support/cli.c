/*
 * emiot tests - cli.c: see cli.h.
 */
#include "cli.h"

#include <fcntl.h>
#include <netinet/in.h>
#include <setjmp.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cmocka.h>

#include "testutil.h"

/* Replaces or removes (e = "-NAME") the entry NAME, or adds e. */
static void env_apply(em_test_env_t *env, const char *e)
{
    bool remove = e[0] == '-';
    const char *name = remove ? e + 1 : e;
    const char *eq = strchr(name, '=');
    size_t nl = remove || eq == NULL ? strlen(name) : (size_t)(eq - name);
    for (size_t j = 0; j < env->n; j++) {
        if (strncmp(env->envp[j], name, nl) == 0 && env->envp[j][nl] == '=') {
            env->envp[j] = env->envp[--env->n];
            break;
        }
    }
    if (!remove && env->n < EM_TEST_ENV_MAX)
        env->envp[env->n++] = e;
}

size_t em_test_env_build(em_test_env_t *env, const char *const *base, const char *const *extra)
{
    static const char *const pass[] = {"PATH", "ASAN_OPTIONS", "UBSAN_OPTIONS", "LSAN_OPTIONS",
                                       "TZ"};
    env->n = 0;
    for (size_t i = 0; i < sizeof pass / sizeof pass[0]; i++) {
        const char *v = getenv(pass[i]);
        if (v != NULL) {
            snprintf(env->store[env->n], sizeof env->store[env->n], "%s=%s", pass[i], v);
            env->envp[env->n] = env->store[env->n];
            env->n++;
        }
    }
    for (size_t i = 0; base != NULL && base[i] != NULL && env->n < EM_TEST_ENV_MAX; i++)
        env->envp[env->n++] = base[i];
    for (size_t i = 0; extra != NULL && extra[i] != NULL; i++)
        env_apply(env, extra[i]);
    env->envp[env->n] = NULL;
    return env->n;
}

int em_test_run_env(const char *const *envp, const char *const *argv, const char *out_file,
                    const char *err_file, int timeout_ms)
{
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
    int rc = em_test_wait(pid, timeout_ms);
    if (rc == -1) {
        /* A timeout leaves the child running; a signal left it a zombie. */
        kill(pid, SIGKILL);
        waitpid(pid, NULL, 0);
    }
    return rc;
}

size_t em_test_read_file(const char *path, char *buf, size_t size)
{
    buf[0] = '\0';
    FILE *f = fopen(path, "rb");
    if (f == NULL)
        return 0;
    size_t n = fread(buf, 1, size - 1, f);
    buf[n] = '\0';
    fclose(f);
    return n;
}

int em_test_run_capture(const char *const argv[], const char *out_file, char *buf, size_t size,
                        int timeout_ms)
{
    pid_t pid = em_test_spawn(argv, out_file);
    assert_true(pid > 0);
    int rc = em_test_wait(pid, timeout_ms);
    if (rc == -1)
        em_test_stop(pid);
    em_test_read_file(out_file, buf, size);
    unlink(out_file);
    return rc;
}

int em_test_count_in_file(const char *path, const char *needle)
{
    static char buf[1 << 20];
    em_test_read_file(path, buf, sizeof buf);
    int n = 0;
    for (const char *p = buf; (p = strstr(p, needle)) != NULL; p++)
        n++;
    return n;
}

bool em_test_wait_in_file(const char *path, const char *needle, int n, int timeout_ms)
{
    for (int waited = 0; waited <= timeout_ms; waited += 50) {
        if (em_test_count_in_file(path, needle) >= n)
            return true;
        em_test_sleep_ms(50);
    }
    return false;
}

bool em_test_port_accepts(int port)
{
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd < 0)
        return false;
    struct sockaddr_in sa;
    memset(&sa, 0, sizeof sa);
    sa.sin_family = AF_INET;
    sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    sa.sin_port = htons((unsigned short)port);
    bool ok = connect(fd, (struct sockaddr *)&sa, sizeof sa) == 0;
    close(fd);
    return ok;
}

int em_test_mosquitto_start(const char *conf, const char *log, const int *ports, size_t nports,
                            pid_t *pid)
{
    const char *argv[] = {"mosquitto", "-c", conf, NULL};
    *pid = em_test_spawn(argv, log);
    if (*pid < 0) {
        *pid = 0;
        return -1;
    }
    for (int waited = 0; waited < 10000; waited += 20) {
        int st;
        if (waitpid(*pid, &st, WNOHANG) == *pid) {
            *pid = 0;
            char buf[8192];
            em_test_read_file(log, buf, sizeof buf);
            fprintf(stderr, "mosquitto exited at start; its log:\n%s\n", buf);
            return -1;
        }
        size_t up = 0;
        while (up < nports && em_test_port_accepts(ports[up]))
            up++;
        if (up == nports)
            return 0;
        em_test_sleep_ms(20);
    }
    fprintf(stderr, "mosquitto does not listen on all of its %zu ports\n", nports);
    return -1;
}

pid_t em_test_mosquitto_sub(const char *port, const char *ca, const char *crt, const char *key,
                            const char *const *topics, const char *out)
{
    const char *argv[32] = {"mosquitto_sub", "-V", "mqttv5", "-q",       "1", "-v",     "-h",
                            "localhost",     "-p", port,     "--cafile", ca,  "--cert", crt,
                            "--key",         key};
    size_t n = 16;
    for (size_t i = 0; topics[i] != NULL && n < 29; i++) {
        argv[n++] = "-t";
        argv[n++] = topics[i];
    }
    argv[n] = NULL;
    unlink(out);
    pid_t pid = em_test_spawn(argv, out);
    assert_true(pid > 0);
    return pid;
}
