/*
 * emiot - daemon_store.c: what passes between emiotd's manager and its store.
 * At start the stored registry is loaded into the manager; afterwards the
 * manager's events (network thread) are queued as records for the store
 * (em_store_enqueue_*: the network thread never waits for a commit), with
 * validation events bounded per device.
 */
#include <pthread.h>
#include <stdio.h>
#include <string.h>

#include "daemon/daemon_internal.h"
#include "emiot/clock.h"
#include "emiot/daemon.h"
#include "emiot/registry.h"

#define MODULE "daemon"

/* Validation events: at most VAL_PER_MIN per device per minute are stored,
 * the rest only counted; EM__DAEMON_VAL_SLOTS devices are tracked at once. */
#define VAL_PER_MIN 5

/* ---- manager events -> store ------------------------------------------- */

/* True when a validation event for id may be stored now. */
static bool val_allow(em_daemon_t *d, const char *id, int64_t now)
{
    uint32_t h = 2166136261u;
    for (const char *c = id; *c != '\0'; c++)
        h = (h ^ (unsigned char)*c) * 16777619u;
    em__daemon_val_slot_t *s = &d->val[h % EM__DAEMON_VAL_SLOTS];
    bool ok;
    pthread_mutex_lock(&d->val_lock);
    if (strcmp(s->id, id) != 0 || now - s->window_ms >= 60000) {
        /* A new minute, or another device takes the slot: a device that
         * shares a slot with a noisy one may get a few more events through,
         * never fewer. */
        snprintf(s->id, sizeof(s->id), "%s", id);
        s->window_ms = now;
        s->count = 0;
    }
    ok = s->count < VAL_PER_MIN;
    if (ok)
        s->count++;
    else
        d->val_suppressed++;
    pthread_mutex_unlock(&d->val_lock);
    return ok;
}

static em_severity_t device_event_severity(const char *type)
{
    static const char *const high[] = {"tamper", "intrusion", "breach", "attack", "forced_open"};
    for (size_t i = 0; i < sizeof(high) / sizeof(high[0]); i++) {
        if (strstr(type, high[i]) != NULL)
            return EM_SEV_HIGH;
    }
    return EM_SEV_LOW;
}

static em_err_t queue_device_event(em_daemon_t *d, em_event_kind_t kind, const char *type,
                                   em_severity_t sev, const char *id, const char *message,
                                   const char *details, int64_t now, em_error_t *e)
{
    em_store_event_t ev;
    memset(&ev, 0, sizeof(ev));
    ev.time_ms = now;
    ev.kind = kind;
    snprintf(ev.type, sizeof(ev.type), "%s", type);
    ev.severity = sev;
    if (id != NULL)
        snprintf(ev.device_id, sizeof(ev.device_id), "%s", id);
    snprintf(ev.source, sizeof(ev.source), "%s", "mqtt");
    snprintf(ev.message, sizeof(ev.message), "%s", message != NULL ? message : "");
    ev.details_json = details;
    return em_store_enqueue_event(d->store, &ev, e);
}

void em__daemon_on_manager_event(em_manager_t *mgr, const em_event_t *ev, void *userdata)
{
    (void)mgr;
    em_daemon_t *d = userdata;
    em_error_t e;
    em_error_clear(&e);
    em_err_t rc = EM_OK;
    int64_t now = em_now_ms();
    const char *id = ev->device != NULL ? ev->device->id : ev->device_id;

    switch (ev->type) {
    case EM_EVENT_STATUS:
        if (id != NULL && ev->status != NULL)
            rc = em_store_enqueue_status(d->store, id, ev->status, &e);
        break;
    case EM_EVENT_TELEMETRY:
        if (id != NULL && ev->telemetry != NULL)
            rc = em_store_enqueue_telemetry(d->store, id, ev->telemetry, ev->energy_delta_wh,
                                            ev->counter_reset != 0, &e);
        break;
    case EM_EVENT_COMMAND_RESPONSE:
        if (id != NULL && ev->response != NULL)
            rc = em_store_enqueue_response(d->store, id, ev->response, now, &e);
        break;
    case EM_EVENT_COMMAND_ACKED:
        if (ev->command != NULL)
            rc = em_store_enqueue_command_state(d->store, ev->command->request_id,
                                                EM_CMD_ACKNOWLEDGED, now, &e);
        break;
    case EM_EVENT_DEVICE_EVENT:
        if (id != NULL && ev->device_event != NULL)
            rc = queue_device_event(d, EM_EVKIND_DEVICE, ev->device_event->type,
                                    device_event_severity(ev->device_event->type), id,
                                    "the device reported an event", ev->device_event->details_json,
                                    now, &e);
        break;
    case EM_EVENT_DEVICE_OFFLINE:
        if (id != NULL)
            rc = queue_device_event(d, EM_EVKIND_DEVICE, "offline", EM_SEV_MEDIUM, id,
                                    "the device went offline", NULL, now, &e);
        break;
    case EM_EVENT_DEVICE_ONLINE:
        if (id != NULL)
            rc = queue_device_event(d, EM_EVKIND_DEVICE, "online", EM_SEV_LOW, id,
                                    "the device is online", NULL, now, &e);
        break;
    case EM_EVENT_ERROR:
        /* A rejected message from a known device id: a validation event
         * (bounded, a device must not be able to flood the store). */
        if (ev->error != NULL && ev->error->device_id[0] != '\0' &&
            val_allow(d, ev->error->device_id, now)) {
            char msg[EM_STORE_TEXT_MAX + 1];
            snprintf(msg, sizeof(msg), "%s%s%s", ev->error->field,
                     ev->error->field[0] != '\0' ? ": " : "", ev->error->message);
            rc = queue_device_event(d, EM_EVKIND_VALIDATION, em_err_name(ev->error->code),
                                    ev->error->severity, ev->error->device_id, msg, NULL, now, &e);
        }
        break;
    case EM_EVENT_CONNECTED:
        em_log(EM_LOG_INFO, MODULE, NULL, "the broker connection is up", NULL, 0);
        break;
    case EM_EVENT_DISCONNECTED:
        em_log(EM_LOG_WARN, MODULE, NULL, "the broker connection is down; reconnecting", NULL, 0);
        break;
    default:
        break;
    }
    if (rc != EM_OK) {
        pthread_mutex_lock(&d->val_lock);
        d->enqueue_failures++;
        pthread_mutex_unlock(&d->val_lock);
        em_log_field_t f[] = {
            EM_LOG_STR("device", id != NULL ? id : ""), EM_LOG_INT("event", ev->type),
            EM_LOG_STR("error", em_err_name(e.code)), EM_LOG_STR("reason", e.message)};
        em_log(EM_LOG_ERROR, MODULE, NULL, "cannot queue a record for the store", f, 4);
    }
}

/* ---- loading the registry --------------------------------------------- */

typedef struct load_ctx {
    em_daemon_t *d;
    char last[EM_DEVICE_ID_MAX + 1];
    size_t rows, registered, failed;
} load_ctx_t;

static int load_group(const char *name, size_t members, int64_t created_at_ms, void *userdata)
{
    (void)members;
    (void)created_at_ms;
    load_ctx_t *c = userdata;
    em_error_t e;
    em_err_t rc = em_manager_create_group(c->d->mgr, name, &e);
    if (rc != EM_OK && rc != EM_ERR_EXISTS) {
        c->failed++;
        em__daemon_log_error("cannot load a group into the manager", &e);
    }
    return 0;
}

static int load_device(const em_store_device_t *dev, void *userdata)
{
    load_ctx_t *c = userdata;
    snprintf(c->last, sizeof(c->last), "%s", dev->id);
    c->rows++;
    if (!dev->enabled)
        return 0; /* a disabled device stays out of the registry: its messages are ignored */
    em_error_t e;
    em_err_t rc = em_manager_register_device(c->d->mgr, dev->id, dev->name, dev->type, &dev->config,
                                             NULL, &e);
    if (rc == EM_OK) {
        c->registered++;
    } else {
        c->failed++;
        em__daemon_log_error("cannot load a device into the manager", &e);
    }
    return 0;
}

static int load_member(const char *group, const char *id, void *userdata)
{
    load_ctx_t *c = userdata;
    em_error_t e;
    em_err_t rc = em_manager_add_to_group(c->d->mgr, id, group, &e);
    /* Members that are disabled devices are not registered. */
    if (rc != EM_OK && rc != EM_ERR_DEVICE_NOT_FOUND) {
        c->failed++;
        em__daemon_log_error("cannot load a group membership into the manager", &e);
    }
    return 0;
}

static int load_status(const char *id, const em_status_t *status, void *userdata)
{
    load_ctx_t *c = userdata;
    em_manager_t *mgr = c->d->mgr;
    em_manager_lock(mgr);
    em_registry_t *reg = em_manager_registry(mgr);
    em_device_t *dev = em_registry_get(reg, id);
    if (dev != NULL) {
        em_status_t copy;
        if (em_status_copy(&copy, status) == EM_OK)
            em_registry_set_status(reg, dev, &copy); /* takes copy's strings */
        else
            c->failed++;
    }
    em_manager_unlock(mgr);
    return 0;
}

em_err_t em__daemon_load_registry(em_daemon_t *d, em_error_t *err)
{
    load_ctx_t c;
    memset(&c, 0, sizeof(c));
    c.d = d;
    em_err_t rc = em_store_group_list(d->store, load_group, &c, err);
    for (;;) {
        if (rc != EM_OK)
            return rc;
        em_store_device_filter_t f = {NULL, -1, c.last[0] != '\0' ? c.last : NULL,
                                      EM_STORE_PAGE_MAX};
        size_t count = 0;
        /* Keyset paging: the next page starts after the last id seen. */
        rc = em_store_device_list(d->store, &f, load_device, &c, &count, err);
        if (rc != EM_OK || count < EM_STORE_PAGE_MAX)
            break;
    }
    if (rc == EM_OK)
        rc = em_store_member_list(d->store, load_member, &c, err);
    if (rc == EM_OK) {
        em_err_t s = em_store_status_latest(d->store, NULL, load_status, &c, err);
        if (s != EM_OK && s != EM_ERR_DEVICE_NOT_FOUND)
            rc = s;
    }
    if (rc != EM_OK)
        return rc;
    em_log_field_t f[] = {EM_LOG_INT("devices", (long long)c.rows),
                          EM_LOG_INT("registered", (long long)c.registered),
                          EM_LOG_INT("failed", (long long)c.failed)};
    em_log(c.failed > 0 ? EM_LOG_WARN : EM_LOG_INFO, MODULE, NULL,
           "loaded the stored devices into the manager", f, 3);
    return EM_OK;
}
