/*
 * emiotd - the emiot daemon: parses the command line and runs src/daemon.
 *
 *   emiotd [--config FILE]                  run (default /etc/emiot/emiotd.conf)
 *   emiotd --check-config [--config FILE]   validate and exit 0 (valid) or 1
 *   emiotd --help | --version
 *
 * Exit codes (include/emiot/daemon.h, docs/OPERATIONS.md): 0 clean stop, 1
 * failure (or an invalid configuration under --check-config), 2 bad command
 * line, 78 invalid configuration.
 */
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "emiot/daemon.h"
#include "emiot/version.h"

#define DEFAULT_CONFIG "/etc/emiot/emiotd.conf"

static void usage(FILE *out)
{
    fprintf(out, "usage: emiotd [--config FILE] [--check-config]\n"
                 "       emiotd --help | --version\n"
                 "\n"
                 "emiot's daemon: keeps devices, statuses, telemetry, commands and events in a\n"
                 "store (SQLite or PostgreSQL) and serves the HTTPS API (docs/API.md). With a\n"
                 "CA directory ([pki] dir) it enrolls devices and issues device tokens by\n"
                 "challenge-response (docs/SECURITY.md).\n"
                 "\n"
                 "  -c, --config FILE   the configuration file (default " DEFAULT_CONFIG ");\n"
                 "                      deploy/emiotd.conf documents every key\n"
                 "  --check-config      validate the configuration (syntax, values, files,\n"
                 "                      certificates, secrets) and exit: 0 valid, 1 invalid\n"
                 "  -h, --help          this text\n"
                 "  -V, --version       the version\n"
                 "\n"
                 "Signals: SIGTERM or SIGINT stop cleanly (drain requests, flush the store);\n"
                 "SIGHUP reloads the configuration (log, API limits, certificates, retention).\n"
                 "Exit codes: 0 clean stop, 1 failure, 2 bad command line, 78 invalid\n"
                 "configuration.\n"
                 "\n"
                 "On the first start the admin's bootstrap API key is written, mode 0600, to\n"
                 "[daemon] bootstrap_key_file (default DATA_DIR/bootstrap-admin.key); with no\n"
                 "[keystore] passphrase, DATA_DIR/keystore.key is made to seal emiotd's keys:\n"
                 "keep a copy of it apart from the data directory's backups.\n");
}

/* The bootstrap key, once: to stderr only when the configuration asked for
 * it (bootstrap_key_print); the log never holds it. */
static void on_bootstrap_key(const char *key, const char *file, void *userdata)
{
    (void)userdata;
    if (key != NULL)
        fprintf(stderr,
                "\nemiotd: first start. The admin's API key (shown this once; keep it safe):\n"
                "\n    %s\n\n",
                key);
    if (file != NULL && file[0] != '\0')
        (void)fprintf(
            stderr, "emiotd: the admin's bootstrap API key was written to %s (mode 0600)\n", file);
    (void)fflush(stderr);
}

int main(int argc, char **argv)
{
    const char *config = DEFAULT_CONFIG;
    bool check = false;
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        if (strcmp(a, "-c") == 0 || strcmp(a, "--config") == 0) {
            if (i + 1 >= argc) {
                fprintf(stderr, "emiotd: %s needs a file\n", a);
                usage(stderr);
                return EM_DAEMON_EXIT_USAGE;
            }
            config = argv[++i];
        } else if (strncmp(a, "--config=", 9) == 0) {
            config = a + 9;
        } else if (strcmp(a, "--check-config") == 0) {
            check = true;
        } else if (strcmp(a, "-h") == 0 || strcmp(a, "--help") == 0) {
            usage(stdout);
            return EM_DAEMON_EXIT_OK;
        } else if (strcmp(a, "-V") == 0 || strcmp(a, "--version") == 0) {
            printf("emiotd %s\n", em_version());
            return EM_DAEMON_EXIT_OK;
        } else {
            fprintf(stderr, "emiotd: unknown argument '%s'\n", a);
            usage(stderr);
            return EM_DAEMON_EXIT_USAGE;
        }
    }

    /* Everything the daemon creates (store, keys, logs) is private. */
    umask(077);
    /* A peer closing a TLS connection must not kill the daemon. */
    (void)signal(SIGPIPE, SIG_IGN);

    em_daemon_config_t *cfg = malloc(sizeof(*cfg));
    if (cfg == NULL) {
        fprintf(stderr, "emiotd: out of memory\n");
        return EM_DAEMON_EXIT_FAILURE;
    }
    em_error_t err;
    em_error_clear(&err);
    em_err_t rc = em_daemon_config_load(cfg, config, &err);
    if (rc == EM_OK)
        rc = em_daemon_config_check(cfg, &err);
    if (check) {
        if (rc == EM_OK)
            printf("emiotd: %s is valid\n", config);
        else
            fprintf(stderr, "emiotd: %s is invalid: %s\n", config, err.message);
        free(cfg);
        return rc == EM_OK ? EM_DAEMON_EXIT_OK : EM_DAEMON_EXIT_FAILURE;
    }
    if (rc != EM_OK) {
        fprintf(stderr, "emiotd: invalid configuration: %s\n", err.message);
        free(cfg);
        return em_daemon_exit_code(rc);
    }

    em_daemon_hooks_t hooks = {on_bootstrap_key, NULL};
    em_daemon_t *d = NULL;
    rc = em_daemon_new(cfg, &hooks, &d, &err);
    free(cfg);
    if (rc != EM_OK) {
        fprintf(stderr, "emiotd: cannot start: %s\n", err.message);
        return em_daemon_exit_code(rc);
    }
    rc = em_daemon_run(d, &err);
    em_daemon_free(d);
    if (rc != EM_OK) {
        fprintf(stderr, "emiotd: %s\n", err.message);
        return em_daemon_exit_code(rc);
    }
    return EM_DAEMON_EXIT_OK;
}
