/*
 * emiot - daemon.c: emiotd (daemon.h).
 *
 * Threads: the event loop (this file's callbacks, the API, signals, timers)
 * runs on the thread that calls em_daemon_run; the manager has its own
 * network thread, whose event callbacks only queue records for the store
 * (em_store_enqueue_*: the network thread never waits for a commit); a
 * connector thread connects to the broker in the background, so a broker
 * that is down at start delays nothing but MQTT.
 *
 * Loading the stored registry and queueing the manager's events for the
 * store are daemon_store.c's; configuration reload is daemon_reload.c's.
 */
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include <event2/event.h>
#include <event2/thread.h>
#include <openssl/crypto.h>

#include "daemon/daemon_internal.h"
#include "emiot/clock.h"
#include "emiot/daemon.h"
#include "emiot/registry.h"
#include "emiot/version.h"

#define MODULE "daemon"

#define CONNECT_TIMEOUT_MS 5000
#define DRAIN_POLL_US      50000
#define FLUSH_TIMEOUT_MS   30000
#define FIRST_PRUNE_S      60

/* ---- logging ----------------------------------------------------------- */

static void log_sink(em_log_level_t level, const char *line, size_t len, void *userdata)
{
    (void)level;
    em_daemon_t *d = userdata;
    pthread_mutex_lock(&d->log_lock);
    int fd = d->log_fd >= 0 ? d->log_fd : STDERR_FILENO;
    size_t off = 0;
    while (off < len) {
        ssize_t w = write(fd, line + off, len - off);
        if (w < 0 && errno == EINTR)
            continue;
        if (w <= 0)
            break; /* nowhere left to say it */
        off += (size_t)w;
    }
    pthread_mutex_unlock(&d->log_lock);
}

/* Opens (or reopens, for log rotation) the log file named in cfg; "" goes
 * back to stderr. */
em_err_t em__daemon_open_log(em_daemon_t *d, const char *path, em_error_t *err)
{
    int fd = -1;
    if (path[0] != '\0') {
        fd = open(path, O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC | O_NOCTTY, 0600);
        if (fd < 0)
            return em_error_set(err, EM_ERR_IO, EM_SEV_HIGH, "log_file",
                                "cannot open the log file %s: %s", path, strerror(errno));
    }
    pthread_mutex_lock(&d->log_lock);
    int old = d->log_fd;
    d->log_fd = fd;
    pthread_mutex_unlock(&d->log_lock);
    if (old >= 0)
        close(old);
    em_log_set_sink(log_sink, d);
    return EM_OK;
}

void em__daemon_log_error(const char *msg, const em_error_t *e)
{
    em_log_field_t f[] = {EM_LOG_STR("error", em_err_name(e->code)),
                          EM_LOG_STR("reason", e->message)};
    em_log(EM_LOG_ERROR, MODULE, NULL, msg, f, 2);
}

/* ---- data directory and bootstrap key ---------------------------------- */

static em_err_t prepare_data_dir(const char *dir, em_error_t *err)
{
    if (mkdir(dir, 0700) != 0 && errno != EEXIST)
        return em_error_set(err, EM_ERR_IO, EM_SEV_HIGH, "data_dir",
                            "cannot create the data directory %s: %s", dir, strerror(errno));
    struct stat st;
    if (stat(dir, &st) != 0 || !S_ISDIR(st.st_mode))
        return em_error_set(err, EM_ERR_IO, EM_SEV_HIGH, "data_dir", "%s is not a directory", dir);
    if ((st.st_mode & 0077) != 0) {
        /* The store, the JWT key and the bootstrap key live here. */
        if (chmod(dir, 0700) != 0)
            return em_error_set(err, EM_ERR_IO, EM_SEV_HIGH, "data_dir",
                                "the data directory %s is open to other users and cannot be "
                                "made private: %s",
                                dir, strerror(errno));
        em_log_field_t f[] = {EM_LOG_STR("dir", dir)};
        em_log(EM_LOG_WARN, MODULE, NULL, "the data directory was open to other users; now 0700", f,
               1);
    }
    return EM_OK;
}

static int write_all(int fd, const char *buf, size_t len)
{
    size_t off = 0;
    while (off < len) {
        ssize_t w = write(fd, buf + off, len - off);
        if (w < 0 && errno == EINTR)
            continue;
        if (w <= 0)
            return -1;
        off += (size_t)w;
    }
    return 0;
}

static void fsync_dir_of(const char *path)
{
    char dir[EM_DAEMON_PATH_MAX + 1];
    snprintf(dir, sizeof(dir), "%s", path);
    char *slash = strrchr(dir, '/');
    if (slash == NULL)
        return;
    if (slash == dir)
        slash[1] = '\0';
    else
        *slash = '\0';
    int fd = open(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (fd >= 0) {
        fsync(fd);
        close(fd);
    }
}

/*
 * First start: creates the admin key and writes it to bootstrap_key_file
 * (0600). The temporary file is opened before the key is created, so that a
 * key is never made that could not be written anywhere.
 */
static em_err_t bootstrap(em_daemon_t *d, em_error_t *err)
{
    const char *file = d->cfg.bootstrap_key_file;
    char tmp[EM_DAEMON_PATH_MAX + 16] = "";
    int fd = -1;
    if (file[0] != '\0') {
        int n = snprintf(tmp, sizeof(tmp), "%s.tmp", file);
        if (n < 0 || (size_t)n >= sizeof(tmp))
            return em_error_set(err, EM_ERR_CONFIGURATION, EM_SEV_HIGH, "bootstrap_key_file",
                                "bootstrap_key_file is too long");
        unlink(tmp);
        fd = open(tmp, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC | O_NOFOLLOW, 0600);
        if (fd < 0)
            return em_error_set(err, EM_ERR_IO, EM_SEV_HIGH, "bootstrap_key_file",
                                "cannot create %s: %s", tmp, strerror(errno));
    }
    char key[EM_API_KEY_LEN + 1];
    bool created = false;
    em_err_t rc = em_api_bootstrap(d->store, key, sizeof(key), &created, err);
    if (rc == EM_OK && created && fd >= 0) {
        char line[EM_API_KEY_LEN + 2];
        int n = snprintf(line, sizeof(line), "%s\n", key);
        if (n < 0 || (size_t)n >= sizeof(line) || write_all(fd, line, (size_t)n) != 0 ||
            fsync(fd) != 0)
            rc = em_error_set(err, EM_ERR_IO, EM_SEV_CRITICAL, "bootstrap_key_file",
                              "cannot write the bootstrap admin key to %s: %s", tmp,
                              strerror(errno));
        OPENSSL_cleanse(line, sizeof(line));
        if (close(fd) != 0 && rc == EM_OK)
            rc = em_error_set(err, EM_ERR_IO, EM_SEV_CRITICAL, "bootstrap_key_file",
                              "cannot write %s: %s", tmp, strerror(errno));
        fd = -1;
        if (rc == EM_OK && rename(tmp, file) != 0)
            rc = em_error_set(err, EM_ERR_IO, EM_SEV_CRITICAL, "bootstrap_key_file",
                              "cannot rename %s to %s: %s", tmp, file, strerror(errno));
        if (rc == EM_OK)
            fsync_dir_of(file);
    }
    if (fd >= 0)
        close(fd);
    if (tmp[0] != '\0')
        unlink(tmp); /* gone after the rename; a leftover otherwise */
    if (rc == EM_OK && created) {
        em_log_field_t f[] = {EM_LOG_STR("file", file[0] != '\0' ? file : "(none)")};
        em_log(EM_LOG_WARN, MODULE, NULL,
               "first start: created the admin user and its bootstrap API key; read it from the "
               "file once, keep it safe, then delete the file",
               f, 1);
        if (d->hooks.on_bootstrap_key != NULL)
            d->hooks.on_bootstrap_key(d->cfg.bootstrap_key_print ? key : NULL, file,
                                      d->hooks.userdata);
    }
    OPENSSL_cleanse(key, sizeof(key));
    return rc;
}

/* ---- connector thread ------------------------------------------------- */

static void *connector_main(void *arg)
{
    em_daemon_t *d = arg;
    const em_daemon_config_t *cfg = &d->conn_cfg;
    int delay = cfg->mqtt_reconnect_min_s;
    for (;;) {
        pthread_mutex_lock(&d->lock);
        bool stop = d->connector_stop;
        pthread_mutex_unlock(&d->lock);
        if (stop)
            break;
        em_mqtt_options_t mo;
        em_daemon_config_mqtt_options(cfg, &mo);
        em_error_t e;
        em_error_clear(&e);
        em_err_t rc = em_manager_connect(d->mgr, &mo, CONNECT_TIMEOUT_MS, &e);
        if (rc == EM_OK || rc == EM_ERR_STATE)
            break; /* from now on the transport reconnects by itself */
        em_log_field_t f[] = {EM_LOG_STR("broker", cfg->mqtt_url),
                              EM_LOG_STR("error", em_err_name(rc)), EM_LOG_STR("reason", e.message),
                              EM_LOG_INT("retry_s", delay)};
        em_log(EM_LOG_WARN, MODULE, NULL, "cannot connect to the broker; the API keeps serving", f,
               4);
        struct timespec until;
        clock_gettime(CLOCK_REALTIME, &until);
        until.tv_sec += delay;
        pthread_mutex_lock(&d->lock);
        while (!d->connector_stop &&
               pthread_cond_timedwait(&d->cond, &d->lock, &until) != ETIMEDOUT) {
        }
        pthread_mutex_unlock(&d->lock);
        delay = delay * 2 > cfg->mqtt_reconnect_max_s ? cfg->mqtt_reconnect_max_s : delay * 2;
    }
    return NULL;
}

static void stop_connector(em_daemon_t *d)
{
    if (!d->connector_running)
        return;
    pthread_mutex_lock(&d->lock);
    d->connector_stop = true;
    pthread_cond_broadcast(&d->cond);
    pthread_mutex_unlock(&d->lock);
    pthread_join(d->connector, NULL);
    d->connector_running = false;
}

/* ---- the event loop ------------------------------------------------------ */

/*
 * The loop everything runs on. With epoll's changelist, libevent applies the
 * changes of one loop iteration to the kernel together when it next waits
 * (one epoll_ctl per file descriptor), and a change undone in the same
 * iteration never reaches it: a keep-alive API connection stops reading and
 * starts writing when a request is in, and the other way round when its
 * answer is out (evhttp and bufferevent_openssl), which costs four epoll_ctl
 * system calls per request without it and two with it. The changelist's one
 * caveat, a file descriptor dup()ed while registered, does not arise here: no
 * socket of this loop is duplicated. Falls back to the defaults if the
 * configuration cannot be made.
 */
static struct event_base *new_event_base(void)
{
    struct event_config *cfg = event_config_new();
    struct event_base *base = NULL;
    if (cfg != NULL && event_config_set_flag(cfg, EVENT_BASE_FLAG_EPOLL_USE_CHANGELIST) == 0)
        base = event_base_new_with_config(cfg);
    if (cfg != NULL)
        event_config_free(cfg); /* libevent's free does not accept NULL */
    return base != NULL ? base : event_base_new();
}

/* ---- timers and signals ------------------------------------------------ */

static void on_expire(evutil_socket_t fd, short what, void *arg)
{
    (void)fd;
    (void)what;
    em_daemon_t *d = arg;
    size_t n = 0;
    em_error_t e;
    em_error_clear(&e);
    if (em_store_command_expire(d->store, em_now_ms(), &n, &e) != EM_OK)
        em__daemon_log_error("cannot expire commands", &e);
    else if (n > 0) {
        em_log_field_t f[] = {EM_LOG_INT("expired", (long long)n)};
        em_log(EM_LOG_INFO, MODULE, NULL, "commands expired without an answer", f, 1);
    }
    pthread_mutex_lock(&d->val_lock);
    uint64_t suppressed = d->val_suppressed;
    d->val_suppressed = 0;
    pthread_mutex_unlock(&d->val_lock);
    if (suppressed > 0) {
        em_log_field_t f[] = {EM_LOG_INT("suppressed", (long long)suppressed)};
        em_log(EM_LOG_WARN, MODULE, NULL,
               "rejected device messages over the per-device event limit (counted, not stored)", f,
               1);
    }
    struct timeval tv = {d->cfg.command_expiry_s, 0};
    evtimer_add(d->ev_expire, &tv);
}

static void on_prune(evutil_socket_t fd, short what, void *arg)
{
    (void)fd;
    (void)what;
    em_daemon_t *d = arg;
    em_store_retention_t r;
    em_daemon_config_retention(&d->cfg, &r);
    uint64_t deleted = 0;
    em_error_t e;
    em_error_clear(&e);
    if (em_store_prune(d->store, &r, em_now_ms(), &deleted, &e) != EM_OK) {
        em__daemon_log_error("retention: cannot prune the store", &e);
    } else {
        em_log_field_t f[] = {EM_LOG_INT("deleted", (long long)deleted)};
        em_log(deleted > 0 ? EM_LOG_INFO : EM_LOG_DEBUG, MODULE, NULL,
               "retention: old rows deleted", f, 1);
    }
    struct timeval tv = {d->cfg.retention_interval_s, 0};
    evtimer_add(d->ev_prune, &tv);
}

static void on_drain(evutil_socket_t fd, short what, void *arg)
{
    (void)fd;
    (void)what;
    em_daemon_t *d = arg;
    size_t active = em_api_active_requests(d->api);
    if (active == 0 || em_mono_ms() >= d->drain_deadline_ms) {
        if (active > 0) {
            em_log_field_t f[] = {EM_LOG_INT("active", (long long)active)};
            em_log(EM_LOG_WARN, MODULE, NULL,
                   "shutdown_timeout reached; closing the requests still in progress", f, 1);
        }
        event_base_loopexit(d->base, NULL);
        return;
    }
    struct timeval tv = {0, DRAIN_POLL_US};
    evtimer_add(d->ev_drain, &tv);
}

static void begin_stop(em_daemon_t *d, const char *why)
{
    if (d->stopping) {
        /* Asked twice: stop at once. */
        event_base_loopbreak(d->base);
        return;
    }
    d->stopping = true;
    em_log_field_t f[] = {EM_LOG_STR("reason", why),
                          EM_LOG_INT("active_requests", (long long)em_api_active_requests(d->api))};
    em_log(EM_LOG_INFO, MODULE, NULL, "stopping: no new connections, draining requests", f, 2);
    em_api_stop_accepting(d->api);
    d->drain_deadline_ms = em_mono_ms() + (int64_t)d->cfg.shutdown_timeout_s * 1000;
    on_drain(-1, 0, d);
}

static void on_signal(evutil_socket_t sig, short what, void *arg)
{
    (void)what;
    em_daemon_t *d = arg;
    if (sig == SIGHUP) {
        em_error_t e;
        em_error_clear(&e);
        if (em_daemon_reload(d, &e) != EM_OK)
            em__daemon_log_error("reload failed; the running settings stay", &e);
        return;
    }
    begin_stop(d, sig == SIGINT ? "SIGINT" : "SIGTERM");
}

static void on_stop_request(evutil_socket_t fd, short what, void *arg)
{
    (void)fd;
    (void)what;
    begin_stop(arg, "stop requested");
}

/* ---- new / run / free ------------------------------------------------- */

static em_err_t add_events(em_daemon_t *d, em_error_t *err)
{
    d->ev_term = evsignal_new(d->base, SIGTERM, on_signal, d);
    d->ev_int = evsignal_new(d->base, SIGINT, on_signal, d);
    d->ev_hup = evsignal_new(d->base, SIGHUP, on_signal, d);
    d->ev_expire = evtimer_new(d->base, on_expire, d);
    d->ev_prune = evtimer_new(d->base, on_prune, d);
    d->ev_drain = evtimer_new(d->base, on_drain, d);
    d->ev_stop = event_new(d->base, -1, 0, on_stop_request, d);
    if (d->ev_term == NULL || d->ev_int == NULL || d->ev_hup == NULL || d->ev_expire == NULL ||
        d->ev_prune == NULL || d->ev_drain == NULL || d->ev_stop == NULL)
        return em_error_set(err, EM_ERR_NOMEM, EM_SEV_HIGH, NULL, "cannot create events");
    struct timeval expire = {d->cfg.command_expiry_s, 0};
    struct timeval prune = {FIRST_PRUNE_S, 0};
    if (evsignal_add(d->ev_term, NULL) != 0 || evsignal_add(d->ev_int, NULL) != 0 ||
        evsignal_add(d->ev_hup, NULL) != 0 || evtimer_add(d->ev_expire, &expire) != 0 ||
        evtimer_add(d->ev_prune, &prune) != 0)
        return em_error_set(err, EM_ERR_INTERNAL, EM_SEV_HIGH, NULL,
                            "cannot install the signal handlers and timers");
    return EM_OK;
}

static em_err_t open_store(em_daemon_t *d, em_error_t *err)
{
    char url[EM_STORE_URL_MAX + 1];
    em_err_t rc = em_daemon_config_store_url(&d->cfg, url, sizeof(url), err);
    if (rc == EM_OK)
        rc = em_store_open(url, &d->cfg.store, &d->store, err);
    OPENSSL_cleanse(url, sizeof(url));
    if (rc == EM_OK) {
        em_log_field_t f[] = {EM_LOG_STR("backend", em_store_backend(d->store)),
                              EM_LOG_INT("schema", em_store_schema_version(d->store))};
        em_log(EM_LOG_INFO, MODULE, NULL, "store open", f, 2);
    }
    return rc;
}

/* The manager, loaded with the stored registry, then listened to. */
static em_err_t start_manager(em_daemon_t *d, em_error_t *err)
{
    em_manager_options_t mo;
    em_daemon_config_manager_options(&d->cfg, &mo);
    d->mgr = em_manager_new(&mo, err);
    if (d->mgr == NULL)
        return err != NULL && err->code != EM_OK ? err->code : EM_ERR_NOMEM;
    em_err_t rc = em__daemon_load_registry(d, err);
    if (rc != EM_OK)
        return rc;
    /* After loading: registering the stored devices is not news. */
    rc = em_manager_on(
        d->mgr,
        EM_EVENT_MASK(EM_EVENT_STATUS) | EM_EVENT_MASK(EM_EVENT_TELEMETRY) |
            EM_EVENT_MASK(EM_EVENT_COMMAND_RESPONSE) | EM_EVENT_MASK(EM_EVENT_COMMAND_ACKED) |
            EM_EVENT_MASK(EM_EVENT_DEVICE_EVENT) | EM_EVENT_MASK(EM_EVENT_DEVICE_OFFLINE) |
            EM_EVENT_MASK(EM_EVENT_DEVICE_ONLINE) | EM_EVENT_MASK(EM_EVENT_ERROR) |
            EM_EVENT_MASK(EM_EVENT_CONNECTED) | EM_EVENT_MASK(EM_EVENT_DISCONNECTED),
        em__daemon_on_manager_event, d);
    if (rc != EM_OK)
        return em_error_set(err, rc, EM_SEV_HIGH, NULL, "cannot listen to the manager's events");
    d->listening = true;
    return EM_OK;
}

em_err_t em_daemon_new(const em_daemon_config_t *cfg, const em_daemon_hooks_t *hooks,
                       em_daemon_t **out, em_error_t *err)
{
    if (out != NULL)
        *out = NULL;
    if (cfg == NULL || out == NULL)
        return em_error_set(err, EM_ERR_INVALID_ARGUMENT, EM_SEV_MEDIUM, NULL,
                            "a configuration and an output are required");
    em_err_t rc = em_daemon_config_check(cfg, err);
    if (rc != EM_OK)
        return rc;
    em_daemon_t *d = calloc(1, sizeof(*d));
    if (d == NULL)
        return em_error_set(err, EM_ERR_NOMEM, EM_SEV_HIGH, NULL, "out of memory");
    d->cfg = *cfg;
    d->conn_cfg = *cfg;
    if (hooks != NULL)
        d->hooks = *hooks;
    d->log_fd = -1;
    pthread_condattr_t ca;
    pthread_condattr_init(&ca);
    pthread_mutex_init(&d->lock, NULL);
    pthread_cond_init(&d->cond, &ca);
    pthread_condattr_destroy(&ca);
    pthread_mutex_init(&d->log_lock, NULL);
    pthread_mutex_init(&d->val_lock, NULL);
    d->locks_ready = true;

    em_log_set_level(d->cfg.log_level);
    rc = em__daemon_open_log(d, d->cfg.log_file, err);
    if (rc == EM_OK) {
        em_log_field_t f[] = {EM_LOG_STR("version", em_version()),
                              EM_LOG_STR("config", d->cfg.path),
                              EM_LOG_STR("data_dir", d->cfg.data_dir)};
        em_log(EM_LOG_INFO, MODULE, NULL, "emiotd starting", f, 3);
        rc = prepare_data_dir(d->cfg.data_dir, err);
    }
    if (rc == EM_OK)
        rc = em__daemon_identity_open(d, err);
    if (rc == EM_OK)
        rc = open_store(d, err);
    if (rc == EM_OK)
        rc = start_manager(d, err);
    if (rc == EM_OK)
        rc = bootstrap(d, err);
    if (rc == EM_OK) {
        /* The API (and anything else) may activate events from other
         * threads. */
        evthread_use_pthreads();
        d->base = new_event_base();
        if (d->base == NULL)
            rc = em_error_set(err, EM_ERR_NOMEM, EM_SEV_HIGH, NULL, "cannot create the event loop");
    }
    if (rc == EM_OK) {
        em_api_options_t ao;
        em_daemon_config_api_options(&d->cfg, &ao);
        em__daemon_identity_api_options(d, &ao);
        d->api = em_api_new(d->base, &ao, d->store, d->mgr, err);
        if (d->api == NULL)
            rc = err != NULL && err->code != EM_OK ? err->code : EM_ERR_INTERNAL;
    }
    if (rc == EM_OK)
        rc = add_events(d, err);
    if (rc == EM_OK)
        rc = em__daemon_identity_start(d, err);
    if (rc == EM_OK) {
        if (pthread_create(&d->connector, NULL, connector_main, d) == 0)
            d->connector_running = true;
        else
            rc = em_error_set(err, EM_ERR_INTERNAL, EM_SEV_HIGH, NULL,
                              "cannot start the connector thread");
    }
    if (rc != EM_OK) {
        if (err != NULL)
            em__daemon_log_error("emiotd cannot start", err);
        em_daemon_free(d);
        return rc;
    }
    for (size_t i = 0; i < d->cfg.nlisteners; i++) {
        em_log_field_t f[] = {EM_LOG_STR("listener", d->cfg.listeners[i].name),
                              EM_LOG_STR("address", d->cfg.listeners[i].address),
                              EM_LOG_INT("port", em_api_port(d->api, i)),
                              EM_LOG_BOOL("tls", d->cfg.listeners[i].cert_file[0] != '\0'),
                              EM_LOG_BOOL("metrics_only", d->cfg.listeners[i].metrics_only)};
        em_log(EM_LOG_INFO, MODULE, NULL, "listening", f, 5);
    }
    *out = d;
    return EM_OK;
}

void em_daemon_stop(em_daemon_t *d)
{
    if (d != NULL && d->ev_stop != NULL)
        event_active(d->ev_stop, EV_READ, 0);
}

em_err_t em_daemon_run(em_daemon_t *d, em_error_t *err)
{
    if (d == NULL || d->base == NULL)
        return em_error_set(err, EM_ERR_INVALID_ARGUMENT, EM_SEV_MEDIUM, NULL,
                            "a started daemon is required");
    em_log(EM_LOG_INFO, MODULE, NULL, "emiotd ready", NULL, 0);
    if (event_base_dispatch(d->base) < 0)
        em_log(EM_LOG_ERROR, MODULE, NULL, "the event loop failed", NULL, 0);

    /* Draining is over: stop MQTT first (no more records are queued after
     * the disconnect), then close the API, then commit the queue. */
    em_err_t rc = EM_OK;
    stop_connector(d);
    em_error_t e;
    em_error_clear(&e);
    bool was_connected = em_manager_is_connected(d->mgr);
    /* Also stops a transport that is reconnecting. */
    if (em_manager_disconnect(d->mgr, &e) != EM_OK && was_connected)
        em__daemon_log_error("the broker did not acknowledge every command before the disconnect",
                             &e);
    if (d->listening) {
        em_manager_off(d->mgr, em__daemon_on_manager_event, d);
        d->listening = false;
    }
    em_api_free(d->api);
    d->api = NULL;
    em_error_clear(&e);
    if (em_store_flush(d->store, FLUSH_TIMEOUT_MS, &e) != EM_OK) {
        em__daemon_log_error("the store could not commit everything queued", &e);
        rc = em_error_set(err, EM_ERR_IO, EM_SEV_CRITICAL, NULL,
                          "the store could not commit everything queued: %s", e.message);
    }
    em_store_stats_t ss;
    em_store_stats(d->store, &ss);
    em_log_field_t f[] = {EM_LOG_INT("committed", (long long)ss.committed),
                          EM_LOG_INT("queued", (long long)ss.queue_depth),
                          EM_LOG_INT("write_errors", (long long)ss.write_errors)};
    em_log(rc == EM_OK ? EM_LOG_INFO : EM_LOG_ERROR, MODULE, NULL,
           rc == EM_OK ? "stopped cleanly" : "stopped with data not committed", f, 3);
    return rc;
}

void em_daemon_free(em_daemon_t *d)
{
    if (d == NULL)
        return;
    stop_connector(d);
    if (d->mgr != NULL) {
        if (d->listening)
            em_manager_off(d->mgr, em__daemon_on_manager_event, d);
        (void)em_manager_disconnect(d->mgr, NULL);
    }
    em_api_free(d->api);
    d->api = NULL;
    em__daemon_identity_close(d);
    struct event *evs[] = {d->ev_term,  d->ev_int,   d->ev_hup, d->ev_expire,
                           d->ev_prune, d->ev_drain, d->ev_stop};
    for (size_t i = 0; i < sizeof(evs) / sizeof(evs[0]); i++) {
        if (evs[i] != NULL)
            event_free(evs[i]);
    }
    if (d->base != NULL)
        event_base_free(d->base);
    em_manager_free(d->mgr);
    em_store_close(d->store);
    if (d->locks_ready) {
        /* Back to stderr before the sink's state goes away. */
        em_log_set_sink(NULL, NULL);
        if (d->log_fd >= 0)
            close(d->log_fd);
        pthread_mutex_destroy(&d->lock);
        pthread_cond_destroy(&d->cond);
        pthread_mutex_destroy(&d->log_lock);
        pthread_mutex_destroy(&d->val_lock);
    }
    free(d);
}

int em_daemon_exit_code(em_err_t code)
{
    if (code == EM_OK)
        return EM_DAEMON_EXIT_OK;
    if (code == EM_ERR_CONFIGURATION)
        return EM_DAEMON_EXIT_CONFIG;
    return EM_DAEMON_EXIT_FAILURE;
}
