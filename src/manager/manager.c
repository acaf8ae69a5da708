/*
 * emiot - manager.c: the manager's life cycle, connection, events, devices and
 * groups. Incoming messages are handled in ingest.c, commands in dispatch.c.
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "core/json.h"
#include "emiot/clock.h"
#include "emiot/log.h"
#include "manager/manager_internal.h"

#define MODULE "manager"

/* The kinds of topic the manager listens to, as P+/<kind>. */
static const em_topic_kind_t k_listen[] = {EM_TOPIC_STATUS, EM_TOPIC_TELEMETRY, EM_TOPIC_RESPONSE,
                                           EM_TOPIC_EVENT, EM_TOPIC_AVAILABILITY};
#define LISTEN_COUNT (sizeof(k_listen) / sizeof(k_listen[0]))

/* Depth of event callbacks on this thread: em_manager_flush and
 * em_manager_disconnect refuse to wait from inside a callback, where they
 * would wait for the very thread they block. */
static __thread int t_callback_depth;

bool em__manager_in_callback(void)
{
    return t_callback_depth > 0;
}

void em_manager_options_init(em_manager_options_t *opts)
{
    memset(opts, 0, sizeof(*opts));
    opts->topic_prefix = EM_TOPIC_PREFIX_DEFAULT;
    opts->status_interval_s = 60;
    opts->offline_check_s = 10;
    opts->rate_limit_count = 10;
    opts->rate_limit_window_s = 60;
    opts->command_qos = 1;
    opts->clock_skew_ms = EM_CLOCK_SKEW_MS_DEFAULT;
}

static em_err_t check_options(const em_manager_options_t *o, em_error_t *err)
{
    if (o->status_interval_s < 1 || o->status_interval_s > 86400)
        return em_error_set(err, EM_ERR_CONFIGURATION, EM_SEV_MEDIUM, "status_interval_s",
                            "must be between 1 and 86400 seconds");
    if (o->offline_check_s < 1 || o->offline_check_s > 3600)
        return em_error_set(err, EM_ERR_CONFIGURATION, EM_SEV_MEDIUM, "offline_check_s",
                            "must be between 1 and 3600 seconds");
    if (o->rate_limit_count < 1 || o->rate_limit_count > 10000)
        return em_error_set(err, EM_ERR_CONFIGURATION, EM_SEV_MEDIUM, "rate_limit_count",
                            "must be between 1 and 10000");
    if (o->rate_limit_window_s < 1 || o->rate_limit_window_s > 86400)
        return em_error_set(err, EM_ERR_CONFIGURATION, EM_SEV_MEDIUM, "rate_limit_window_s",
                            "must be between 1 and 86400 seconds");
    if (o->command_qos < 0 || o->command_qos > 2)
        return em_error_set(err, EM_ERR_CONFIGURATION, EM_SEV_MEDIUM, "command_qos",
                            "must be 0, 1 or 2");
    if (o->clock_skew_ms < 0 || o->clock_skew_ms > 86400000)
        return em_error_set(err, EM_ERR_CONFIGURATION, EM_SEV_MEDIUM, "clock_skew_ms",
                            "must be between 0 and 86400000");
    return EM_OK;
}

em_manager_t *em_manager_new(const em_manager_options_t *opts, em_error_t *err)
{
    em_manager_options_t defaults;
    if (opts == NULL) {
        em_manager_options_init(&defaults);
        opts = &defaults;
    }
    if (check_options(opts, err) != EM_OK)
        return NULL;
    const char *prefix = opts->topic_prefix ? opts->topic_prefix : EM_TOPIC_PREFIX_DEFAULT;
    if (em_topic_prefix_validate(prefix, err) != EM_OK) {
        if (err != NULL)
            err->code = EM_ERR_CONFIGURATION;
        return NULL;
    }

    em__json_init();
    em_manager_t *mgr = calloc(1, sizeof(*mgr));
    if (mgr == NULL) {
        em_error_set(err, EM_ERR_NOMEM, EM_SEV_HIGH, NULL, "cannot allocate the manager");
        return NULL;
    }
    mgr->opts = *opts;
    mgr->prefix_len = strlen(prefix);
    memcpy(mgr->prefix, prefix, mgr->prefix_len + 1);
    mgr->opts.topic_prefix = NULL; /* the copy lives in mgr->prefix */
    atomic_init(&mgr->pending_acks, 0);
    atomic_init(&mgr->track_acks, false);

    mgr->reg = em_registry_new(opts->capacity_hint, opts->max_devices);
    if (mgr->reg == NULL) {
        free(mgr);
        em_error_set(err, EM_ERR_NOMEM, EM_SEV_HIGH, NULL, "cannot allocate the registry");
        return NULL;
    }
    pthread_mutexattr_t attr;
    pthread_mutexattr_init(&attr);
    pthread_mutexattr_settype(&attr, PTHREAD_MUTEX_RECURSIVE);
    int rc = pthread_mutex_init(&mgr->lock, &attr);
    pthread_mutexattr_destroy(&attr);
    if (rc != 0) {
        em_registry_free(mgr->reg);
        free(mgr);
        em_error_set(err, EM_ERR_INTERNAL, EM_SEV_HIGH, NULL, "cannot create the manager lock");
        return NULL;
    }
    pthread_mutex_init(&mgr->checker_lock, NULL);
    pthread_mutex_init(&mgr->flush_lock, NULL);
    pthread_condattr_t cattr;
    pthread_condattr_init(&cattr);
    pthread_condattr_setclock(&cattr, CLOCK_MONOTONIC);
    pthread_cond_init(&mgr->checker_cond, &cattr);
    pthread_cond_init(&mgr->flush_cond, &cattr);
    pthread_condattr_destroy(&cattr);
    return mgr;
}

static void stop_checker(em_manager_t *mgr);

void em_manager_free(em_manager_t *mgr)
{
    if (mgr == NULL)
        return;
    em_manager_disconnect(mgr, NULL);
    stop_checker(mgr);
    em_registry_free(mgr->reg);
    em__acks_clear(&mgr->acks);
    pthread_cond_destroy(&mgr->checker_cond);
    pthread_mutex_destroy(&mgr->checker_lock);
    pthread_cond_destroy(&mgr->flush_cond);
    pthread_mutex_destroy(&mgr->flush_lock);
    pthread_mutex_destroy(&mgr->lock);
    free(mgr);
}

void em_manager_lock(em_manager_t *mgr)
{
    pthread_mutex_lock(&mgr->lock);
}

void em_manager_unlock(em_manager_t *mgr)
{
    pthread_mutex_unlock(&mgr->lock);
}

em_registry_t *em_manager_registry(em_manager_t *mgr)
{
    return mgr->reg;
}

/* Events. */

em_err_t em_manager_on(em_manager_t *mgr, unsigned mask, em_event_fn fn, void *userdata)
{
    if (fn == NULL || (mask & ~EM_EVENT_MASK_ALL) != 0 || mask == 0)
        return EM_ERR_INVALID_ARGUMENT;
    em_manager_lock(mgr);
    em_err_t rc = EM_OK;
    if (mgr->ncbs == EM__MANAGER_CALLBACKS_MAX) {
        rc = EM_ERR_LIMIT;
    } else {
        mgr->cbs[mgr->ncbs].mask = mask;
        mgr->cbs[mgr->ncbs].fn = fn;
        mgr->cbs[mgr->ncbs].userdata = userdata;
        mgr->ncbs++;
        if ((mask & EM_EVENT_MASK(EM_EVENT_COMMAND_ACKED)) != 0)
            atomic_store(&mgr->track_acks, true);
    }
    em_manager_unlock(mgr);
    return rc;
}

void em_manager_off(em_manager_t *mgr, em_event_fn fn, void *userdata)
{
    em_manager_lock(mgr);
    size_t j = 0;
    for (size_t i = 0; i < mgr->ncbs; i++) {
        if (mgr->cbs[i].fn == fn && mgr->cbs[i].userdata == userdata)
            continue;
        mgr->cbs[j++] = mgr->cbs[i];
    }
    mgr->ncbs = j;
    em_manager_unlock(mgr);
}

void em__manager_emit(em_manager_t *mgr, const em_event_t *ev)
{
    unsigned bit = EM_EVENT_MASK(ev->type);
    /* A callback may register or remove callbacks: the bound is read again
     * after every call, so the loop never runs past the table (a callback
     * removed meanwhile may make the next one be skipped for this event). */
    for (size_t i = 0; i < mgr->ncbs; i++) {
        if ((mgr->cbs[i].mask & bit) == 0)
            continue;
        t_callback_depth++;
        mgr->cbs[i].fn(mgr, ev, mgr->cbs[i].userdata);
        t_callback_depth--;
    }
}

void em__manager_emit_error(em_manager_t *mgr, const em_error_t *err)
{
    /* A hostile or broken device can send thousands of bad messages a second;
     * each is counted and reported as an event, but the log gets at most one
     * line per second with the number left out. */
    int64_t now = em_mono_ms();
    if (now - mgr->last_reject_log_ms >= 1000) {
        em_log_field_t f[] = {
            EM_LOG_STR("error", em_err_name(err->code)),
            EM_LOG_STR("severity", em_severity_name(err->severity)),
            EM_LOG_STR("device", err->device_id),
            EM_LOG_STR("field", err->field),
            EM_LOG_STR("reason", err->message),
            EM_LOG_INT("suppressed", mgr->reject_log_suppressed),
        };
        em_log(EM_LOG_WARN, MODULE, NULL, "message rejected", f, sizeof(f) / sizeof(f[0]));
        mgr->last_reject_log_ms = now;
        mgr->reject_log_suppressed = 0;
    } else {
        mgr->reject_log_suppressed++;
    }
    em_event_t ev = {.type = EM_EVENT_ERROR, .error = err};
    if (err->device_id[0] != '\0')
        ev.device_id = err->device_id;
    em__manager_emit(mgr, &ev);
}

/* Connection. */

static void on_mqtt_message(void *ud, const char *topic, const void *payload, size_t len, int qos,
                            bool retain)
{
    (void)qos;
    (void)retain;
    em_manager_handle_message(ud, topic, payload, len);
}

static void on_mqtt_event(void *ud, em_mqtt_event_t type, const em_error_t *err)
{
    em_manager_t *mgr = ud;
    em_event_t ev = {.error = err};
    em_manager_lock(mgr);
    switch (type) {
    case EM_MQTT_CONNECTED:
        /* The first connection is logged by em_manager_connect. */
        if (mgr->stats.reconnects > 0)
            em_log(EM_LOG_INFO, MODULE, NULL, "reconnected to the broker", NULL, 0);
        mgr->connected = true;
        ev.type = EM_EVENT_CONNECTED;
        break;
    case EM_MQTT_DISCONNECTED:
        mgr->connected = false;
        ev.type = EM_EVENT_DISCONNECTED;
        break;
    case EM_MQTT_RECONNECTING:
        mgr->stats.reconnects++;
        ev.type = EM_EVENT_RECONNECTING;
        break;
    case EM_MQTT_ERROR:
    default:
        ev.type = EM_EVENT_ERROR;
        break;
    }
    em__manager_emit(mgr, &ev);
    em_manager_unlock(mgr);
}

/* Reports the broker's acknowledgement of a tracked command. */
static void report_acked(em_manager_t *mgr, int mid)
{
    if (mid <= 0 || mid > UINT16_MAX)
        return;
    em_manager_lock(mgr);
    struct em__ack a;
    if (em__acks_take(&mgr->acks, (uint16_t)mid, &a)) {
        em_command_t cmd = {.type = (em_command_type_t)a.type};
        memcpy(cmd.request_id, a.request_id, sizeof(cmd.request_id));
        em_event_t ev = {.type = EM_EVENT_COMMAND_ACKED, .device_id = a.device_id, .command = &cmd};
        em__manager_emit(mgr, &ev);
    }
    em_manager_unlock(mgr);
}

static void on_mqtt_published(void *ud, int mid)
{
    em_manager_t *mgr = ud;
    if (atomic_load_explicit(&mgr->track_acks, memory_order_relaxed))
        report_acked(mgr, mid);
    /* Acknowledgements of QoS 0 publishes are never counted as pending, and a
     * broker cannot acknowledge what was not sent: never go below zero. */
    long cur = atomic_load(&mgr->pending_acks);
    while (cur > 0 && !atomic_compare_exchange_weak(&mgr->pending_acks, &cur, cur - 1)) {
    }
    if (cur == 1) {
        /* The last one: wake em_manager_flush. Taking the lock orders this
         * after a waiter's check of the count, so the wake-up is not lost. */
        pthread_mutex_lock(&mgr->flush_lock);
        pthread_cond_broadcast(&mgr->flush_cond);
        pthread_mutex_unlock(&mgr->flush_lock);
    }
}

/* Builds "<prefix>+/<kind>" into buf. */
static em_err_t listen_filter(const em_manager_t *mgr, em_topic_kind_t kind, char *buf, size_t size)
{
    int n = snprintf(buf, size, "%s+/%s", mgr->prefix, em_topic_kind_name(kind));
    return (n < 0 || (size_t)n >= size) ? EM_ERR_BUFFER_TOO_SMALL : EM_OK;
}

static em_err_t subscribe_all(em_manager_t *mgr, em_mqtt_t *mqtt, em_error_t *err)
{
    char filter[EM_TOPIC_MAX];
    for (size_t i = 0; i < LISTEN_COUNT; i++) {
        em_err_t rc = listen_filter(mgr, k_listen[i], filter, sizeof(filter));
        if (rc == EM_OK)
            rc = em_mqtt_subscribe(mqtt, filter, 1, err);
        if (rc != EM_OK)
            return rc;
    }
    return EM_OK;
}

static void unsubscribe_all(em_manager_t *mgr, em_mqtt_t *mqtt)
{
    char filter[EM_TOPIC_MAX];
    for (size_t i = 0; i < LISTEN_COUNT; i++) {
        if (listen_filter(mgr, k_listen[i], filter, sizeof(filter)) == EM_OK)
            em_mqtt_unsubscribe(mqtt, filter, NULL);
    }
}

static void *checker_main(void *arg)
{
    em_manager_t *mgr = arg;
    pthread_mutex_lock(&mgr->checker_lock);
    while (!mgr->checker_stop) {
        struct timespec until;
        clock_gettime(CLOCK_MONOTONIC, &until);
        until.tv_sec += mgr->opts.offline_check_s;
        while (!mgr->checker_stop &&
               pthread_cond_timedwait(&mgr->checker_cond, &mgr->checker_lock, &until) == 0) {
        }
        if (mgr->checker_stop)
            break;
        pthread_mutex_unlock(&mgr->checker_lock);
        em_manager_check_offline(mgr, em_now_ms());
        pthread_mutex_lock(&mgr->checker_lock);
    }
    pthread_mutex_unlock(&mgr->checker_lock);
    return NULL;
}

static void stop_checker(em_manager_t *mgr)
{
    pthread_mutex_lock(&mgr->checker_lock);
    bool running = mgr->checker_running;
    mgr->checker_stop = true;
    pthread_cond_broadcast(&mgr->checker_cond);
    pthread_mutex_unlock(&mgr->checker_lock);
    if (running)
        pthread_join(mgr->checker, NULL);
    mgr->checker_running = false;
    mgr->checker_stop = false;
}

em_err_t em_manager_connect(em_manager_t *mgr, const em_mqtt_options_t *mqtt_opts, int timeout_ms,
                            em_error_t *err)
{
    if (mqtt_opts == NULL)
        return em_error_set(err, EM_ERR_INVALID_ARGUMENT, EM_SEV_MEDIUM, "mqtt",
                            "connection options are required");
    em_manager_lock(mgr);
    bool busy = mgr->mqtt != NULL;
    em_manager_unlock(mgr);
    if (busy)
        return em_error_set(err, EM_ERR_STATE, EM_SEV_LOW, NULL, "already connected");

    em_mqtt_callbacks_t cbs = {.on_message = on_mqtt_message,
                               .on_event = on_mqtt_event,
                               .on_published = on_mqtt_published,
                               .userdata = mgr};
    em_mqtt_t *mqtt = em_mqtt_new(mqtt_opts, &cbs, err);
    if (mqtt == NULL)
        return err != NULL ? err->code : EM_ERR_CONNECTION;

    /* Subscriptions recorded before connecting are sent by the transport as
     * soon as the broker accepts the connection, and again after every
     * reconnection. */
    em_manager_lock(mgr);
    /* Checked again: another thread may have connected meanwhile. */
    em_err_t rc = mgr->mqtt != NULL
                      ? em_error_set(err, EM_ERR_STATE, EM_SEV_LOW, NULL, "already connected")
                      : subscribe_all(mgr, mqtt, err);
    if (rc == EM_OK)
        mgr->mqtt = mqtt;
    em_manager_unlock(mgr);
    if (rc != EM_OK) {
        em_mqtt_free(mqtt);
        return rc;
    }

    rc = em_mqtt_connect(mqtt, timeout_ms, err);
    if (rc == EM_OK)
        rc = em_mqtt_start(mqtt, err);
    if (rc != EM_OK) {
        em_manager_lock(mgr);
        mgr->mqtt = NULL;
        mgr->connected = false;
        em_manager_unlock(mgr);
        em_mqtt_free(mqtt);
        return rc;
    }

    pthread_mutex_lock(&mgr->checker_lock);
    mgr->checker_stop = false;
    if (pthread_create(&mgr->checker, NULL, checker_main, mgr) == 0)
        mgr->checker_running = true;
    pthread_mutex_unlock(&mgr->checker_lock);
    if (!mgr->checker_running)
        em_log(EM_LOG_ERROR, MODULE, NULL, "cannot start the offline checker thread", NULL, 0);

    em_log_field_t f[] = {EM_LOG_STR("client_id", em_mqtt_client_id(mqtt)),
                          EM_LOG_INT("protocol", em_mqtt_protocol(mqtt))};
    em_log(EM_LOG_INFO, MODULE, NULL, "connected to the broker", f, 2);
    return EM_OK;
}

em_err_t em_manager_disconnect(em_manager_t *mgr, em_error_t *err)
{
    if (em__manager_in_callback())
        return em_error_set(err, EM_ERR_STATE, EM_SEV_MEDIUM, NULL,
                            "cannot disconnect from inside an event callback");
    stop_checker(mgr);
    /* Detach the transport under the lock, then stop it without the lock: its
     * network thread may be waiting for the lock to deliver a message. */
    em_manager_lock(mgr);
    em_mqtt_t *mqtt = mgr->mqtt;
    mgr->mqtt = NULL;
    em_manager_unlock(mgr);
    if (mqtt == NULL)
        return EM_OK;
    em_err_t rc = em_mqtt_disconnect(mqtt, err);
    em_mqtt_free(mqtt);
    atomic_store(&mgr->pending_acks, 0);
    em_manager_lock(mgr);
    /* What the broker did not acknowledge now never will be. */
    em__acks_clear(&mgr->acks);
    bool was = mgr->connected;
    mgr->connected = false;
    if (was) {
        em_event_t ev = {.type = EM_EVENT_DISCONNECTED};
        em__manager_emit(mgr, &ev);
    }
    em_manager_unlock(mgr);
    em_log(EM_LOG_INFO, MODULE, NULL, "disconnected from the broker", NULL, 0);
    return rc;
}

bool em_manager_is_connected(const em_manager_t *mgr)
{
    em_manager_t *m = (em_manager_t *)mgr;
    em_manager_lock(m);
    bool c = m->mqtt != NULL && em_mqtt_is_connected(m->mqtt);
    em_manager_unlock(m);
    return c;
}

em_err_t em_manager_flush(em_manager_t *mgr, int timeout_ms, em_error_t *err)
{
    if (em__manager_in_callback())
        return em_error_set(err, EM_ERR_STATE, EM_SEV_MEDIUM, NULL,
                            "cannot wait for acknowledgements inside an event callback");
    int64_t deadline = em_mono_ms() + (timeout_ms < 0 ? 0 : timeout_ms);
    /* While the connection is down, unacknowledged QoS 1 messages are sent
     * again after reconnecting: keep waiting until the deadline. The wait is
     * cut into slices so that a disconnection is noticed. flush_lock is never
     * held together with the manager's lock (the network thread takes it
     * while the transport holds its own lock, which a sender takes under the
     * manager's). */
    while (atomic_load(&mgr->pending_acks) > 0) {
        em_manager_lock(mgr);
        bool attached = mgr->mqtt != NULL;
        em_manager_unlock(mgr);
        if (!attached)
            return em_error_set(err, EM_ERR_NOT_CONNECTED, EM_SEV_MEDIUM, NULL,
                                "not connected to the broker");
        int64_t left = deadline - em_mono_ms();
        if (left <= 0)
            return em_error_set(err, EM_ERR_TIMEOUT, EM_SEV_MEDIUM, NULL,
                                "%ld commands not acknowledged after %d ms",
                                (long)atomic_load(&mgr->pending_acks), timeout_ms);
        struct timespec until;
        clock_gettime(CLOCK_MONOTONIC, &until);
        int64_t slice = left < 100 ? left : 100;
        until.tv_nsec += (long)(slice * 1000000);
        if (until.tv_nsec >= 1000000000L) {
            until.tv_sec++;
            until.tv_nsec -= 1000000000L;
        }
        pthread_mutex_lock(&mgr->flush_lock);
        if (atomic_load(&mgr->pending_acks) > 0)
            pthread_cond_timedwait(&mgr->flush_cond, &mgr->flush_lock, &until);
        pthread_mutex_unlock(&mgr->flush_lock);
    }
    return EM_OK;
}

/* Devices. */

em_err_t em_manager_register_device(em_manager_t *mgr, const char *id, const char *name,
                                    em_device_type_t type, const em_device_config_t *cfg,
                                    const char *group, em_error_t *err)
{
    em_manager_lock(mgr);
    em_device_t *dev = NULL;
    em_err_t rc = em_registry_add(mgr->reg, id, name, type, cfg, em_now_ms(), &dev, err);
    if (rc == EM_OK && group != NULL) {
        /* All or nothing: a failure leaves neither the device nor a group
         * made for it. */
        bool created = false;
        if (!em_registry_group_exists(mgr->reg, group)) {
            rc = em_registry_group_create(mgr->reg, group, err);
            created = rc == EM_OK;
        }
        if (rc == EM_OK)
            rc = em_registry_group_add(mgr->reg, group, id, err);
        if (rc != EM_OK) {
            em_registry_remove(mgr->reg, id, NULL);
            if (created)
                em_registry_group_remove(mgr->reg, group, NULL);
            dev = NULL;
        }
    }
    if (rc == EM_OK) {
        em_event_t ev = {.type = EM_EVENT_DEVICE_REGISTERED, .device_id = dev->id, .device = dev};
        em__manager_emit(mgr, &ev);
        if (em_log_enabled(EM_LOG_DEBUG)) {
            em_log_field_t f[] = {EM_LOG_STR("device", dev->id),
                                  EM_LOG_STR("type", em_device_type_name(type))};
            em_log(EM_LOG_DEBUG, MODULE, NULL, "device registered", f, 2);
        }
    }
    em_manager_unlock(mgr);
    return rc;
}

/* Tells the callbacks that device id changed, when rc (the result of the
 * change) is EM_OK. Returns rc. Lock held. */
static em_err_t emit_updated(em_manager_t *mgr, const char *id, em_err_t rc)
{
    if (rc == EM_OK) {
        em_device_t *dev = em_registry_get(mgr->reg, id);
        em_event_t ev = {.type = EM_EVENT_DEVICE_UPDATED, .device_id = dev->id, .device = dev};
        em__manager_emit(mgr, &ev);
    }
    return rc;
}

em_err_t em_manager_update_device(em_manager_t *mgr, const char *id, const char *name,
                                  const em_device_type_t *type, const em_device_config_t *cfg,
                                  em_error_t *err)
{
    em_manager_lock(mgr);
    em_err_t rc =
        emit_updated(mgr, id, em_registry_update(mgr->reg, id, name, type, cfg, em_now_ms(), err));
    em_manager_unlock(mgr);
    return rc;
}

em_err_t em_manager_remove_device(em_manager_t *mgr, const char *id, em_error_t *err)
{
    char copy[EM_DEVICE_ID_MAX + 1];
    em_manager_lock(mgr);
    em_device_t *dev = id != NULL ? em_registry_get(mgr->reg, id) : NULL;
    em_err_t rc;
    if (dev == NULL) {
        rc = em_error_set(err, EM_ERR_DEVICE_NOT_FOUND, EM_SEV_LOW, "id", "no device with this id");
        em_error_set_device(err, id);
    } else {
        memcpy(copy, dev->id, (size_t)dev->id_len + 1);
        rc = em_registry_remove(mgr->reg, copy, err);
        if (rc == EM_OK) {
            em_event_t ev = {.type = EM_EVENT_DEVICE_REMOVED, .device_id = copy};
            em__manager_emit(mgr, &ev);
        }
    }
    em_manager_unlock(mgr);
    return rc;
}

em_err_t em_manager_get_device(em_manager_t *mgr, const char *id, em_device_t *out, em_error_t *err)
{
    memset(out, 0, sizeof(*out));
    em_manager_lock(mgr);
    em_device_t *dev = id != NULL ? em_registry_get(mgr->reg, id) : NULL;
    em_err_t rc = EM_OK;
    if (dev == NULL) {
        rc = em_error_set(err, EM_ERR_DEVICE_NOT_FOUND, EM_SEV_LOW, "id", "no device with this id");
        em_error_set_device(err, id);
    } else {
        *out = *dev;
        out->groups = NULL;
        out->ext = NULL;
        out->name = strdup(dev->name);
        em_status_t st;
        if (out->name == NULL || em_status_copy(&st, &dev->status) != EM_OK) {
            free(out->name);
            memset(out, 0, sizeof(*out));
            rc = em_error_set(err, EM_ERR_NOMEM, EM_SEV_HIGH, NULL, "cannot copy the device");
        } else {
            out->status = st;
        }
    }
    em_manager_unlock(mgr);
    return rc;
}

void em_manager_device_cleanup(em_device_t *dev)
{
    if (dev == NULL)
        return;
    free(dev->name);
    em_status_cleanup(&dev->status);
    memset(dev, 0, sizeof(*dev));
}

size_t em_manager_device_count(em_manager_t *mgr)
{
    em_manager_lock(mgr);
    size_t n = em_registry_count(mgr->reg);
    em_manager_unlock(mgr);
    return n;
}

/* Groups: thin, locked wrappers over the registry. */

em_err_t em_manager_create_group(em_manager_t *mgr, const char *name, em_error_t *err)
{
    em_manager_lock(mgr);
    em_err_t rc = em_registry_group_create(mgr->reg, name, err);
    em_manager_unlock(mgr);
    return rc;
}

em_err_t em_manager_remove_group(em_manager_t *mgr, const char *name, em_error_t *err)
{
    em_manager_lock(mgr);
    em_err_t rc = em_registry_group_remove(mgr->reg, name, err);
    em_manager_unlock(mgr);
    return rc;
}

em_err_t em_manager_add_to_group(em_manager_t *mgr, const char *id, const char *group,
                                 em_error_t *err)
{
    em_manager_lock(mgr);
    em_err_t rc = emit_updated(mgr, id, em_registry_group_add(mgr->reg, group, id, err));
    em_manager_unlock(mgr);
    return rc;
}

em_err_t em_manager_remove_from_group(em_manager_t *mgr, const char *id, const char *group,
                                      em_error_t *err)
{
    em_manager_lock(mgr);
    em_err_t rc = emit_updated(mgr, id, em_registry_group_remove_device(mgr->reg, group, id, err));
    em_manager_unlock(mgr);
    return rc;
}

em_err_t em_manager_group_stats(em_manager_t *mgr, const char *group, em_group_stats_t *out,
                                em_error_t *err)
{
    em_manager_lock(mgr);
    em_err_t rc = em_registry_group_stats(mgr->reg, group, out, err);
    em_manager_unlock(mgr);
    return rc;
}

/* Topic prefix. */

em_err_t em_manager_set_topic_prefix(em_manager_t *mgr, const char *prefix, em_error_t *err)
{
    if (prefix == NULL || em_topic_prefix_validate(prefix, err) != EM_OK)
        return em_error_set(err, EM_ERR_VALIDATION, EM_SEV_MEDIUM, "prefix",
                            "must be 1-64 printable characters without + or #, ending in /");
    em_manager_lock(mgr);
    em_err_t rc = EM_OK;
    if (strcmp(prefix, mgr->prefix) != 0) {
        if (mgr->mqtt != NULL)
            unsubscribe_all(mgr, mgr->mqtt);
        mgr->prefix_len = strlen(prefix);
        memcpy(mgr->prefix, prefix, mgr->prefix_len + 1);
        if (mgr->mqtt != NULL)
            rc = subscribe_all(mgr, mgr->mqtt, err);
        em_log_field_t f[] = {EM_LOG_STR("prefix", mgr->prefix)};
        em_log(EM_LOG_INFO, MODULE, NULL, "topic prefix changed", f, 1);
    }
    em_manager_unlock(mgr);
    return rc;
}

void em_manager_topic_prefix(em_manager_t *mgr, char *buf, size_t size)
{
    if (size == 0)
        return;
    em_manager_lock(mgr);
    size_t n = mgr->prefix_len < size - 1 ? mgr->prefix_len : size - 1;
    memcpy(buf, mgr->prefix, n);
    buf[n] = '\0';
    em_manager_unlock(mgr);
}

/* Offline detection. */

struct offline_scan {
    em_manager_t *mgr;
    int64_t now_ms;
    size_t count;
};

static int check_one(em_device_t *dev, void *ud)
{
    struct offline_scan *s = ud;
    const em_status_t *st = &dev->status;
    if ((st->has & EM_STATUS_HAS_LAST_SEEN) == 0 || st->connection == EM_CONN_OFFLINE)
        return 0;
    /* A device that announced its own reporting interval is judged by it;
     * the others by the manager's status interval. */
    int64_t interval_s = s->mgr->opts.status_interval_s;
    if (dev->config.has & EM_CONFIG_HAS_REPORTING_INTERVAL)
        interval_s = dev->config.reporting_interval;
    if (s->now_ms - st->last_seen_ms <= 2 * interval_s * 1000)
        return 0;
    dev->status.connection = EM_CONN_OFFLINE;
    dev->status.has |= EM_STATUS_HAS_CONNECTION;
    s->count++;
    s->mgr->stats.offline_detected++;
    em_event_t ev = {.type = EM_EVENT_DEVICE_OFFLINE,
                     .device_id = dev->id,
                     .device = dev,
                     .status = &dev->status};
    em__manager_emit(s->mgr, &ev);
    return 0;
}

size_t em_manager_check_offline(em_manager_t *mgr, int64_t now_ms)
{
    struct offline_scan s = {mgr, now_ms, 0};
    em_manager_lock(mgr);
    em_registry_foreach(mgr->reg, check_one, &s);
    em_manager_unlock(mgr);
    if (s.count > 0) {
        em_log_field_t f[] = {EM_LOG_INT("devices", s.count)};
        em_log(EM_LOG_INFO, MODULE, NULL, "devices went offline", f, 1);
    }
    return s.count;
}

void em_manager_stats(em_manager_t *mgr, em_manager_stats_t *out)
{
    em_manager_lock(mgr);
    *out = mgr->stats;
    em_manager_unlock(mgr);
}
