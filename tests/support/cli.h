/*
 * emiot tests - cli.h: running a program as an operator does (its own
 * environment, stdout and stderr captured in files) and reading what it left.
 *
 *   em_test_env_t env;
 *   const char *const base[] = {"HOME=/tmp/x", NULL};
 *   em_test_env_build(&env, base, NULL);
 *   int rc = em_test_run_env(env.envp, argv, out_file, err_file, 60000);
 */
#ifndef EM_TEST_CLI_H
#define EM_TEST_CLI_H

#include <stdbool.h>
#include <stddef.h>
#include <sys/types.h>

#include "broker.h" /* EM_TEST_PATH_MAX */

/* Most entries in a child's environment (without the closing NULL). */
#define EM_TEST_ENV_MAX 24

/* A child's environment: envp points into store or at the caller's strings. */
typedef struct em_test_env {
    char store[EM_TEST_ENV_MAX][EM_TEST_PATH_MAX + 64];
    const char *envp[EM_TEST_ENV_MAX + 1];
    size_t n;
} em_test_env_t;

/* Builds env->envp: PATH, ASAN_OPTIONS, UBSAN_OPTIONS, LSAN_OPTIONS and TZ
 * as this process has them (copied into env->store), then base ("NAME=value"
 * each, NULL-terminated; may be NULL), then extra (may be NULL): "NAME=value"
 * replaces NAME, "-NAME" removes it. The strings of base and extra are not
 * copied and must outlive the run. Entries past EM_TEST_ENV_MAX are dropped.
 * Returns the number of entries. */
size_t em_test_env_build(em_test_env_t *env, const char *const *base, const char *const *extra);

/* Runs argv to completion (argv[0]: a path, or a name looked up in PATH)
 * with envp, stdout into out_file and stderr into err_file (both truncated,
 * 0600). The child gets SIGTERM if the test process dies; one still running
 * after timeout_ms is killed. Returns the exit status, -1 on a signal or a
 * timeout; fails the running cmocka test when it cannot fork. */
int em_test_run_env(const char *const *envp, const char *const *argv, const char *out_file,
                    const char *err_file, int timeout_ms);

/* Runs argv with em_test_spawn (this process's environment) and its output
 * (stdout and stderr) into out_file; one still running after timeout_ms is
 * stopped (em_test_stop). Then reads out_file into buf (as
 * em_test_read_file) and removes it. Returns the exit status, -1 on a signal
 * or a timeout; fails the running cmocka test when argv cannot start. */
int em_test_run_capture(const char *const argv[], const char *out_file, char *buf, size_t size,
                        int timeout_ms);

/* Reads path into buf (at most size - 1 bytes, NUL-terminated; size > 0).
 * Returns the bytes read, 0 (buf "") when it cannot be opened. */
size_t em_test_read_file(const char *path, char *buf, size_t size);

/* How many times needle occurs in (the first MiB of) path. */
int em_test_count_in_file(const char *path, const char *needle);

/* Waits until path holds needle at least n times, polling every 50 ms for
 * up to timeout_ms. */
bool em_test_wait_in_file(const char *path, const char *needle, int n, int timeout_ms);

/* True when 127.0.0.1:port accepts a TCP connection now. */
bool em_test_port_accepts(int port);

/* Starts `mosquitto -c conf` with its output into log and waits (up to
 * 10 s) until each of ports[0..nports) accepts connections. *pid is the
 * broker's pid, 0 when it is not running. Returns 0 when it listens; -1
 * when it cannot start, exits at start (its log printed to stderr) or does
 * not listen in time (it is then left running: stop *pid). */
int em_test_mosquitto_start(const char *conf, const char *log, const int *ports, size_t nports,
                            pid_t *pid);

/* Starts `mosquitto_sub -V mqttv5 -q 1 -v` on localhost:port with the
 * client certificate crt/key trusting ca, on topics (NULL-terminated, at
 * most 6), its output into out (removed first). Fails the running cmocka
 * test when it cannot start; returns the pid. */
pid_t em_test_mosquitto_sub(const char *port, const char *ca, const char *crt, const char *key,
                            const char *const *topics, const char *out);

#endif /* EM_TEST_CLI_H */
