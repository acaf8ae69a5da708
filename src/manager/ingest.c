/*
 * emiot - ingest.c: what devices send, validated and applied.
 *
 * This is the hot path (workload W1: a million status messages a second on
 * one core): no allocation for an ordinary status, no logging unless
 * something is wrong, one hash lookup, one pass over the JSON.
 */
#include <string.h>

#include "emiot/clock.h"
#include "emiot/log.h"
#include "manager/manager_internal.h"

#define MODULE "manager"

/* Counts a rejection by its kind, then reports it. Lock held. */
static em_err_t reject(em_manager_t *mgr, em_error_t *err, const char *id, size_t id_len)
{
    mgr->stats.rejected++;
    switch (err->code) {
    case EM_ERR_PROTOCOL:
        mgr->stats.rejected_topic++;
        break;
    case EM_ERR_VALIDATION:
        mgr->stats.rejected_validation++;
        break;
    default:
        mgr->stats.rejected_format++;
        break;
    }
    /* Decoders fill code, field and message; the device is ours to say
     * (err is not cleared on the success path, to keep it cheap). */
    size_t n = id == NULL ? 0 : (id_len < EM_ERROR_DEVICE_MAX ? id_len : EM_ERROR_DEVICE_MAX);
    if (n > 0)
        memcpy(err->device_id, id, n);
    err->device_id[n] = '\0';
    em__manager_emit_error(mgr, err);
    return err->code;
}

static em_err_t ingest_status(em_manager_t *mgr, em_device_t *dev, const char *payload, size_t len,
                              em_error_t *err)
{
    em_status_t st;
    if (em_status_decode(payload, len, &st, err) != EM_OK)
        return reject(mgr, err, dev->id, dev->id_len);
    st.last_seen_ms = em_now_ms();
    st.has |= EM_STATUS_HAS_LAST_SEEN;
    /* Hearing from a device is proof that it is connected, unless it says
     * otherwise itself. */
    if ((st.has & EM_STATUS_HAS_CONNECTION) == 0) {
        st.connection = EM_CONN_ONLINE;
        st.has |= EM_STATUS_HAS_CONNECTION;
    }
    em_registry_set_status(mgr->reg, dev, &st);
    mgr->stats.status_accepted++;
    if (mgr->ncbs > 0) {
        em_event_t ev = {
            .type = EM_EVENT_STATUS, .device_id = dev->id, .device = dev, .status = &dev->status};
        em__manager_emit(mgr, &ev);
    }
    return EM_OK;
}

static em_err_t ingest_telemetry(em_manager_t *mgr, em_device_t *dev, const char *payload,
                                 size_t len, em_error_t *err)
{
    em_telemetry_t t;
    if (em_telemetry_decode(payload, len, em_now_ms(), mgr->opts.clock_skew_ms, &t, err) != EM_OK)
        return reject(mgr, err, dev->id, dev->id_len);
    double delta = 0;
    int reset = 0;
    if (em_registry_set_telemetry(mgr->reg, dev, &t, &delta, &reset) != EM_OK) {
        em_error_set(err, EM_ERR_NOMEM, EM_SEV_HIGH, NULL, "cannot store telemetry");
        return reject(mgr, err, dev->id, dev->id_len);
    }
    mgr->stats.telemetry_accepted++;
    if (reset) {
        em_log_field_t f[] = {EM_LOG_STR("device", dev->id), EM_LOG_DBL("energy_wh", t.energy_wh)};
        em_log(EM_LOG_INFO, MODULE, NULL, "energy counter reset detected", f, 2);
    }
    em_event_t ev = {.type = EM_EVENT_TELEMETRY,
                     .device_id = dev->id,
                     .device = dev,
                     .telemetry = &t,
                     .energy_delta_wh = delta,
                     .counter_reset = reset};
    em__manager_emit(mgr, &ev);
    return EM_OK;
}

static em_err_t ingest_response(em_manager_t *mgr, em_device_t *dev, const char *payload,
                                size_t len, em_error_t *err)
{
    em_response_t r;
    if (em_response_decode(payload, len, &r, err) != EM_OK)
        return reject(mgr, err, dev->id, dev->id_len);
    mgr->stats.responses_received++;
    em_log_field_t f[] = {EM_LOG_STR("device", dev->id), EM_LOG_BOOL("success", r.success)};
    em_log(EM_LOG_DEBUG, MODULE, r.request_id, "command response", f, 2);
    em_event_t ev = {
        .type = EM_EVENT_COMMAND_RESPONSE, .device_id = dev->id, .device = dev, .response = &r};
    em__manager_emit(mgr, &ev);
    em_response_cleanup(&r);
    return EM_OK;
}

static em_err_t ingest_event(em_manager_t *mgr, em_device_t *dev, const char *payload, size_t len,
                             em_error_t *err)
{
    em_device_event_t de;
    if (em_device_event_decode(payload, len, &de, err) != EM_OK)
        return reject(mgr, err, dev->id, dev->id_len);
    mgr->stats.device_events++;
    em_log_field_t f[] = {EM_LOG_STR("device", dev->id), EM_LOG_STR("event", de.type)};
    em_log(EM_LOG_WARN, MODULE, NULL, "device reported an event", f, 2);
    em_event_t ev = {
        .type = EM_EVENT_DEVICE_EVENT, .device_id = dev->id, .device = dev, .device_event = &de};
    em__manager_emit(mgr, &ev);
    em_device_event_cleanup(&de);
    return EM_OK;
}

static em_err_t ingest_availability(em_manager_t *mgr, em_device_t *dev, const char *payload,
                                    size_t len, em_error_t *err)
{
    bool online;
    if (em_availability_decode(payload, len, &online, err) != EM_OK)
        return reject(mgr, err, dev->id, dev->id_len);
    uint8_t now = online ? EM_CONN_ONLINE : EM_CONN_OFFLINE;
    bool changed =
        (dev->status.has & EM_STATUS_HAS_CONNECTION) == 0 || dev->status.connection != now;
    dev->status.connection = now;
    dev->status.has |= EM_STATUS_HAS_CONNECTION;
    if (online) {
        /* An announcement counts as a sign of life for offline detection. */
        dev->status.last_seen_ms = em_now_ms();
        dev->status.has |= EM_STATUS_HAS_LAST_SEEN;
    }
    if (changed) {
        if (!online)
            mgr->stats.offline_detected++;
        em_event_t ev = {.type = online ? EM_EVENT_DEVICE_ONLINE : EM_EVENT_DEVICE_OFFLINE,
                         .device_id = dev->id,
                         .device = dev,
                         .status = &dev->status};
        em__manager_emit(mgr, &ev);
    }
    return EM_OK;
}

em_err_t em_manager_handle_message(em_manager_t *mgr, const char *topic, const void *payload,
                                   size_t len)
{
    em_error_t err;
    const char *id = NULL;
    size_t id_len = 0;
    em_topic_kind_t kind;
    em_err_t rc;

    if (topic == NULL || (payload == NULL && len > 0))
        return EM_ERR_INVALID_ARGUMENT;
    em_manager_lock(mgr);
    mgr->stats.messages_received++;
    if (em_topic_parse(mgr->prefix, mgr->prefix_len, topic, strlen(topic), &id, &id_len, &kind,
                       &err) != EM_OK) {
        if (err.code == EM_ERR_VALIDATION) /* a bad id in a device topic */
            err.code = EM_ERR_PROTOCOL;
        rc = reject(mgr, &err, NULL, 0);
        em_manager_unlock(mgr);
        return rc;
    }
    em_device_t *dev = em_registry_find(mgr->reg, id, id_len);
    if (dev == NULL) {
        /* Not ours (or not yet registered): ignored, counted, not an error
         * event, since a shared broker legitimately carries other devices. */
        mgr->stats.unknown_device++;
        em_manager_unlock(mgr);
        return EM_ERR_DEVICE_NOT_FOUND;
    }
    switch (kind) {
    case EM_TOPIC_STATUS:
        rc = ingest_status(mgr, dev, payload, len, &err);
        break;
    case EM_TOPIC_TELEMETRY:
        rc = ingest_telemetry(mgr, dev, payload, len, &err);
        break;
    case EM_TOPIC_RESPONSE:
        rc = ingest_response(mgr, dev, payload, len, &err);
        break;
    case EM_TOPIC_EVENT:
        rc = ingest_event(mgr, dev, payload, len, &err);
        break;
    case EM_TOPIC_AVAILABILITY:
        rc = ingest_availability(mgr, dev, payload, len, &err);
        break;
    case EM_TOPIC_COMMAND:
    default:
        em_error_set(&err, EM_ERR_PROTOCOL, EM_SEV_LOW, "topic",
                     "command topics carry messages to devices, not from them");
        rc = reject(mgr, &err, dev->id, dev->id_len);
        break;
    }
    em_manager_unlock(mgr);
    return rc;
}
