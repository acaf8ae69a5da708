/*
 * emiot tests - daemon.h: a real emiotd for integration tests.
 *
 * A test daemon lives in a private temporary directory holding:
 *   emiotd.conf      its configuration (written by em_test_daemon_start)
 *   data/            its data directory (SQLite store, JWT key, bootstrap key)
 *   tls/             certificates from scripts/gen-certs.sh: ca.crt (pin it),
 *                    server.crt/.key (the API's certificate, CN=localhost) and
 *                    devices/<cn>.crt/.key made by em_test_daemon_add_client
 *   emiotd.out       the daemon's stdout and stderr (its JSON-lines log)
 * The API listens with TLS on https://localhost:PORT (client certificates
 * optional, verified against tls/ca.crt); a plain-HTTP metrics_only listener
 * listens on 127.0.0.1:METRICS_PORT. Ports stay the same across restarts.
 * The daemon is stopped by PID, never by name, gets SIGTERM if the test
 * process dies, and one a failed test did not clean up is killed (and its
 * directory removed) at process exit.
 *
 * The configuration sets no log level (info) and no [api] or [retention] key:
 * extra_config may set any of those.
 *
 * Typical use:
 *   em_test_broker_t b;  em_test_daemon_t d;
 *   assert_int_equal(em_test_broker_start(&b, "tls"), 0);
 *   assert_int_equal(em_test_daemon_start(&d, &b, NULL), 0);
 *   char body[4096];
 *   int status = em_test_daemon_request(&d, d.admin_key, "GET", "/api/v1/devices",
 *                                       NULL, body, sizeof(body));
 *   ...
 *   em_test_daemon_cleanup(&d);  em_test_broker_cleanup(&b);
 *
 * Functions returning int return 0 on success and -1 on failure, after
 * printing what failed to stderr (with the tail of the daemon's output).
 */
#ifndef EM_TEST_DAEMON_H
#define EM_TEST_DAEMON_H

#include <stdbool.h>
#include <stddef.h>
#include <sys/types.h>

#include "broker.h"

#define EM_TEST_DAEMON_KEY_MAX  64
#define EM_TEST_DAEMON_TEXT_MAX 8192

typedef struct em_test_daemon_options {
    /* Appended to the generated configuration: more keys for a section
     * ("[api]\nrate_admin = 5\n": a section may be opened again), or more
     * [listener NAME] sections. NULL: nothing. */
    const char *extra_config;
    /* The store URL (e.g. a PostgreSQL URL from tests/support/pg.h). It is
     * handed to emiotd through the environment variable EMIOT_TEST_STORE_URL
     * ([store] url_env), never written into the configuration. NULL: SQLite
     * in the data directory. */
    const char *store_url;
    /* An MQTT URL used instead of the broker's (the broker may then be NULL:
     * with neither, the daemon points at a closed loopback port and keeps
     * retrying). */
    const char *mqtt_url;
    /* Return as soon as the process runs, without waiting for /healthz (for
     * tests of start-up failures; see em_test_daemon_wait_exit). */
    bool no_wait;
    /* The CA (PEM file) the API listener verifies client certificates with,
     * instead of DIR/tls/ca.crt (e.g. an emiot CA directory's ca.crt). NULL:
     * DIR/tls/ca.crt. The server certificate stays DIR/tls/server.crt. */
    const char *client_ca_file;
} em_test_daemon_options_t;

typedef struct em_test_daemon {
    char dir[256];                   /* the daemon's private directory */
    char data_dir[EM_TEST_PATH_MAX]; /* DIR/data */
    char config[EM_TEST_PATH_MAX];   /* DIR/emiotd.conf */
    char out[EM_TEST_PATH_MAX];      /* DIR/emiotd.out: stdout + stderr (the log) */
    char ca[EM_TEST_PATH_MAX];       /* DIR/tls/ca.crt: the CA of the API certificate */
    char tls_dir[EM_TEST_PATH_MAX];  /* DIR/tls */
    char key_file[EM_TEST_PATH_MAX]; /* DATA/bootstrap-admin.key */
    char url[96];                    /* "https://localhost:PORT" */
    char metrics_url[96];            /* "http://127.0.0.1:METRICS_PORT" */
    int port;
    int metrics_port;
    pid_t pid;                              /* 0 when not running */
    char admin_key[EM_TEST_DAEMON_KEY_MAX]; /* the bootstrap admin key ("" if unknown) */
    char store_url[1024];                   /* copy of options.store_url ("" for SQLite) */
    bool no_wait;                           /* copy of options.no_wait */
    char client_ca[EM_TEST_PATH_MAX];       /* the listener's client CA */
} em_test_daemon_t;

/* Makes the directory, the certificates and the configuration (MQTT from
 * broker, which may be NULL; see the options), picks the ports. Does not
 * start. opts may be NULL. */
int em_test_daemon_init(em_test_daemon_t *d, em_test_broker_t *broker,
                        const em_test_daemon_options_t *opts);

/* Starts emiotd (EM_TEST_BINARY_DIR/emiotd --config DIR/emiotd.conf) and,
 * unless options.no_wait was set, waits (at most 60 s) until /healthz answers
 * 200, then reads the bootstrap admin key from its 0600 file. */
int em_test_daemon_launch(em_test_daemon_t *d);

/* init + launch. */
int em_test_daemon_start(em_test_daemon_t *d, em_test_broker_t *broker,
                         const em_test_daemon_options_t *opts);

/* SIGTERM, then waits up to 30 s. Returns the exit status (0 for a clean
 * stop), or -1 (killed by a signal, or did not stop: it is then killed). */
int em_test_daemon_stop(em_test_daemon_t *d);

/* SIGKILL at once (a crash). 0, or -1 when it was not running. */
int em_test_daemon_kill(em_test_daemon_t *d);

/* Sends sig (SIGHUP, ...) to the daemon. 0, or -1 when it is not running. */
int em_test_daemon_signal(em_test_daemon_t *d, int sig);

/* Waits up to timeout_ms for the daemon to exit by itself; returns its exit
 * status, or -1 (signal, or still running after the timeout). */
int em_test_daemon_wait_exit(em_test_daemon_t *d, int timeout_ms);

/* Starts the daemon again with the same directory, configuration and ports
 * (stops it first when it runs). Waits for /healthz as launch does. */
int em_test_daemon_restart(em_test_daemon_t *d);

/* Stops the daemon and removes its directory. Safe on a zeroed or
 * half-initialised daemon. */
void em_test_daemon_cleanup(em_test_daemon_t *d);

/* Rewrites the configuration with different extra_config (for SIGHUP tests);
 * the rest (ports, MQTT, store) stays. NULL: none. */
int em_test_daemon_set_extra_config(em_test_daemon_t *d, const char *extra_config);

/* Makes DIR/tls/devices/<cn>.crt and .key (a client certificate, CN=cn,
 * signed by DIR/tls/ca.crt) and writes their paths into cert and key (each
 * EM_TEST_PATH_MAX bytes). */
int em_test_daemon_add_client(em_test_daemon_t *d, const char *cn, char *cert, char *key);

/*
 * One HTTPS request with curl (pinned to DIR/tls/ca.crt). key: an API key or
 * a JWT sent as "Authorization: Bearer ..." (never on the command line), or
 * NULL for none. method: "GET", "POST", ... path: "/api/v1/devices".
 * body: JSON or NULL. The answer's body goes to out (NUL-terminated,
 * truncated to size - 1; out may be NULL). Returns the HTTP status, or -1
 * when no answer came (curl's exit code is printed).
 */
int em_test_daemon_request(em_test_daemon_t *d, const char *key, const char *method,
                           const char *path, const char *body, char *out, size_t size);

/* As em_test_daemon_request, with a client certificate (cert and key PEM
 * files) and optionally a bearer credential too. */
int em_test_daemon_request_cert(em_test_daemon_t *d, const char *cert, const char *key_file,
                                const char *bearer, const char *method, const char *path,
                                const char *body, char *out, size_t size);

/* Polls GET path with key every 100 ms until the answer's status is want and
 * its body contains needle (may be NULL), up to timeout_ms. 0 when it did. */
int em_test_daemon_poll(em_test_daemon_t *d, const char *key, const char *path, int want,
                        const char *needle, int timeout_ms);

/* GET /metrics from the plain-HTTP metrics listener into out (as
 * em_test_daemon_request). Returns the HTTP status or -1. */
int em_test_daemon_metrics(em_test_daemon_t *d, char *out, size_t size);

/* The value of metric name: "emiot_status_accepted_total", or one sample
 * with its labels exactly as emiotd writes them
 * ("emiot_messages_rejected_total{reason=\"validation\"}"; a bare name of a
 * labelled metric gives its first sample). -1 when absent or unreachable. */
double em_test_daemon_metric(em_test_daemon_t *d, const char *name);

/* True when DIR/emiotd.out contains needle. */
bool em_test_daemon_log_contains(em_test_daemon_t *d, const char *needle);

/* Prints the last 4 KiB of DIR/emiotd.out to stderr. */
void em_test_daemon_print_log(const em_test_daemon_t *d);

#endif /* EM_TEST_DAEMON_H */
