/*
 * emiot - daemon_internal.h: what the files of src/daemon share.
 */
#ifndef EMIOT_DAEMON_INTERNAL_H
#define EMIOT_DAEMON_INTERNAL_H

#include <pthread.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "emiot/daemon.h"
#include "emiot/dynsec.h"
#include "emiot/keystore.h"
#include "emiot/pki.h"

struct event;
struct event_base;

/*
 * Finds the nth (from 0) password in a store URL: the userinfo password of
 * "scheme://user:password@host..." or the value of a "password=" parameter.
 * Returns 0 with *pw and *pwlen set (a span of url), or -1 when there is no
 * nth one.
 */
int em__daemon_url_password(const char *url, size_t len, const char **pw, size_t *pwlen, int nth);

/* True when url holds any password (em__daemon_url_password). */
bool em__daemon_url_has_password(const char *url, size_t len);

/*
 * Reads a whole regular file of at most max bytes into a new buffer, NUL-
 * terminated (free it; wipe it first when it may hold a secret). Returns 0,
 * or -1 with errno set (EFBIG when larger than max, EINVAL when not a regular
 * file).
 */
int em__daemon_read_file(const char *path, size_t max, char **out, size_t *out_len);

/* ---- the daemon (daemon.c, daemon_store.c, daemon_reload.c) ------------ */

/* Validation events: the devices tracked at once (daemon_store.c). */
#define EM__DAEMON_VAL_SLOTS 1024

typedef struct em__daemon_val_slot {
    char id[EM_DEVICE_ID_MAX + 1];
    int64_t window_ms;
    unsigned count;
} em__daemon_val_slot_t;

struct em_daemon {
    em_daemon_config_t cfg;      /* the settings in force (loop thread) */
    em_daemon_config_t conn_cfg; /* the connector thread's copy (MQTT never reloads) */
    em_daemon_hooks_t hooks;

    struct event_base *base;
    struct event *ev_term, *ev_int, *ev_hup, *ev_expire, *ev_prune, *ev_drain, *ev_stop;
    em_store_t *store;
    em_manager_t *mgr;
    em_api_t *api;
    bool listening; /* the manager callback is registered */

    /* Device identity (daemon_identity.c): made at start, used by the API. */
    em_keystore_secret_t *keystore; /* seals the JWT key, opens the CA key */
    em_pkcs11_t *hsm;               /* [keystore] pkcs11_module, or NULL */
    em_pki_t *pki;                  /* [pki] dir, or NULL */
    em_dynsec_t *dynsec;            /* [dynsec], or NULL (not configured or not yet connected) */
    struct event *ev_dynsec;        /* retries the dynsec connection */
    struct event *ev_crl;           /* republishes the CA's CRL daily */

    /* The connector thread. */
    pthread_t connector;
    bool connector_running;
    pthread_mutex_t lock;
    pthread_cond_t cond;
    bool connector_stop;

    /* The log file sink (log_fd < 0: the default stderr sink). */
    pthread_mutex_t log_lock;
    int log_fd;

    /* Validation-event limiter (network thread; locked for the timer). */
    pthread_mutex_t val_lock;
    em__daemon_val_slot_t val[EM__DAEMON_VAL_SLOTS];
    uint64_t val_suppressed;
    uint64_t enqueue_failures;

    bool stopping;
    int64_t drain_deadline_ms;
    bool locks_ready;
};

/* Logs msg at error level with e's error name and reason. */
void em__daemon_log_error(const char *msg, const em_error_t *e);

/* Opens (or reopens, for log rotation) the log file path and makes it the
 * log's sink; "" goes back to stderr. EM_ERR_IO when it cannot be opened. */
em_err_t em__daemon_open_log(em_daemon_t *d, const char *path, em_error_t *err);

/* The manager's event callback (network thread; userdata is the daemon):
 * queues what the event tells for the store, validation events bounded per
 * device (daemon_store.c). */
void em__daemon_on_manager_event(em_manager_t *mgr, const em_event_t *ev, void *userdata);

/* Loads the stored groups, enabled devices, memberships and latest statuses
 * into the manager (daemon_store.c). A record the manager refuses is logged
 * and skipped; a store error is returned. */
em_err_t em__daemon_load_registry(em_daemon_t *d, em_error_t *err);

/* ---- device identity (daemon_identity.c) -------------------------------- */

/* Opens the keystore secret (creating the key file at the first start), the
 * HSM, the CA directory and the dynsec client from d->cfg. The broker being
 * unreachable is not an error (see em__daemon_identity_start). Errors: the
 * libraries', EM_ERR_CONFIGURATION. */
em_err_t em__daemon_identity_open(em_daemon_t *d, em_error_t *err);

/* Once the loop exists: a timer that retries the dynsec connection when it
 * failed at start. EM_ERR_NOMEM. */
em_err_t em__daemon_identity_start(em_daemon_t *d, em_error_t *err);

/* Sets the API options' keystore, pki and dynsec pointers. */
void em__daemon_identity_api_options(const em_daemon_t *d, em_api_options_t *ao);

/* Frees what em__daemon_identity_open made (after the API, before the loop). */
void em__daemon_identity_close(em_daemon_t *d);

#endif /* EMIOT_DAEMON_INTERNAL_H */
