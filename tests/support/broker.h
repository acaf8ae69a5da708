/*
 * emiot tests - broker.h: a real mosquitto broker for integration tests, and
 * child processes (mosquitto_pub, mosquitto_sub, openssl, ...).
 *
 * A broker lives in a private temporary directory holding its certificates
 * (scripts/gen-certs.sh), its configuration (scripts/broker-conf.sh) and its
 * log (mosquitto.log). It listens on 127.0.0.1 only, on a port that was free
 * when it started and that it keeps across em_test_broker_restart. It is
 * stopped by PID, never by name, and dies with the test process (it gets
 * SIGTERM if the thread that started it exits). A broker that a failed test
 * did not clean up is killed, and its directory removed, at process exit.
 *
 * Typical use:
 *   em_test_broker_t b;
 *   assert_int_equal(em_test_broker_start(&b, "tls"), 0);
 *   opts.url = em_test_broker_url(&b);  opts.ca_file = em_test_broker_ca(&b);
 *   ...
 *   em_test_broker_cleanup(&b);
 * For extra settings (users, ACL, device certificates) use em_test_broker_init,
 * then em_test_broker_add_user / _set_acl / _add_device, then
 * em_test_broker_launch.
 *
 * Functions returning int return 0 on success and -1 on failure, after
 * printing what failed to stderr (with the tail of the broker's log).
 */
#ifndef EM_TEST_BROKER_H
#define EM_TEST_BROKER_H

#include <stdbool.h>
#include <stddef.h>
#include <sys/types.h>

#define EM_TEST_PATH_MAX 512

typedef struct em_test_broker {
    char dir[256]; /* the broker's private directory */
    char mode[8];  /* "plain", "tls" or "mtls" */
    int port;
    pid_t pid; /* 0 when not running */
    bool has_passwd;
    bool has_acl;
    char url[96];
    char path_buf[4][EM_TEST_PATH_MAX]; /* storage for the path accessors */
} em_test_broker_t;

/* Makes the directory, certificates (CA, server, manager, other CA and
 * client) and picks a port. mode: "plain", "tls" or "mtls". Does not start. */
int em_test_broker_init(em_test_broker_t *b, const char *mode);

/* Adds user with password to DIR/passwd (mosquitto_passwd) and makes the
 * broker require a username and password. Before em_test_broker_launch (or
 * followed by em_test_broker_restart). */
int em_test_broker_add_user(em_test_broker_t *b, const char *user, const char *password);

/* Writes acl_text to DIR/acl and makes the broker use it. */
int em_test_broker_set_acl(em_test_broker_t *b, const char *acl_text);

/* Makes DIR/devices/<id>.crt and .key (CN=id, signed by the CA). */
int em_test_broker_add_device(em_test_broker_t *b, const char *id);

/* Writes the configuration and starts mosquitto; returns once the port
 * accepts connections (at most 10 s). */
int em_test_broker_launch(em_test_broker_t *b);

/* init + launch. */
int em_test_broker_start(em_test_broker_t *b, const char *mode);

/* SIGTERM, wait (5 s), then SIGKILL. The directory stays. */
int em_test_broker_stop(em_test_broker_t *b);

/* SIGKILL at once (a crash, as far as clients can tell). */
int em_test_broker_kill(em_test_broker_t *b);

/* Starts the broker again on the same port with the same directory (stops it
 * first if it is running). */
int em_test_broker_restart(em_test_broker_t *b);

/* Stops the broker and removes its directory. Safe on a zeroed or
 * half-initialised broker. */
void em_test_broker_cleanup(em_test_broker_t *b);

/* "mqtt://127.0.0.1:PORT" (plain) or "mqtts://localhost:PORT" (tls, mtls). */
const char *em_test_broker_url(const em_test_broker_t *b);
int em_test_broker_port(const em_test_broker_t *b);
const char *em_test_broker_dir(const em_test_broker_t *b);

/* DIR/ca.crt, DIR/manager.crt, DIR/manager.key (pointers into b). */
const char *em_test_broker_ca(em_test_broker_t *b);
const char *em_test_broker_cert(em_test_broker_t *b);
const char *em_test_broker_key(em_test_broker_t *b);

/* DIR/name into buf; returns buf, or NULL when it does not fit. */
char *em_test_broker_path(const em_test_broker_t *b, const char *name, char *buf, size_t size);

/* Child processes. argv[0] is looked up in PATH, then /usr/sbin and /sbin. */

/* Runs argv to completion (at most 60 s, then SIGKILL); stdout goes to
 * /dev/null, stderr stays. Returns the exit status, or -1 (signal, timeout,
 * cannot start). */
int em_test_run(const char *const argv[]);

/* Starts argv with stdout (and stderr) appended to stdout_file (NULL:
 * /dev/null). Returns the pid, or -1. The child gets SIGTERM if the test
 * process dies. */
pid_t em_test_spawn(const char *const argv[], const char *stdout_file);

/* Waits up to timeout_ms for pid; returns its exit status, or -1 on timeout
 * (the child is left running) or error. */
int em_test_wait(pid_t pid, int timeout_ms);

/* SIGTERM, wait up to 5 s, SIGKILL. Returns the exit status or -1. */
int em_test_stop(pid_t pid);

/* Number of lines in path (0 when it does not exist). */
int em_test_count_lines(const char *path);

/* Waits until path has at least n lines, up to timeout_ms. 0 when it has. */
int em_test_wait_lines(const char *path, int n, int timeout_ms);

#endif /* EM_TEST_BROKER_H */
