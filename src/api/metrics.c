/*
 * emiot - metrics.c: /metrics in the Prometheus text exposition format
 * 0.0.4, from the API's, the manager's and the store's counters.
 */
#include <inttypes.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "api/api_core.h"
#include "emiot/clock.h"

#define METRICS_MAX 16384

typedef struct out {
    char buf[METRICS_MAX];
    size_t len;
    bool full;
} out_t;

static void put(out_t *o, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void put(out_t *o, const char *fmt, ...)
{
    if (o->full)
        return;
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(o->buf + o->len, sizeof o->buf - o->len, fmt, ap);
    va_end(ap);
    if (n < 0 || (size_t)n >= sizeof o->buf - o->len) {
        o->full = true;
        return;
    }
    o->len += (size_t)n;
}

/* One metric without labels: HELP, TYPE and the sample. */
static void metric(out_t *o, const char *name, const char *type, const char *help, uint64_t v)
{
    put(o, "# HELP %s %s\n# TYPE %s %s\n%s %" PRIu64 "\n", name, help, name, type, name, v);
}

static void head(out_t *o, const char *name, const char *type, const char *help)
{
    put(o, "# HELP %s %s\n# TYPE %s %s\n", name, help, name, type);
}

void em__api_metrics(em__api_req_t *r)
{
    out_t *o = malloc(sizeof *o); /* 16 KiB: too much for the stack */
    if (o == NULL) {
        em__api_error(r, 500, NULL, NULL, "out of memory");
        return;
    }
    em_api_stats_t a;
    em_manager_stats_t m;
    em_store_stats_t s;
    em_api_stats(r->api, &a);
    em_manager_stats(r->mgr, &m);
    em_store_stats(r->store, &s);
    size_t devices = em_manager_device_count(r->mgr);
    int64_t up = em_mono_ms() - r->api->started_mono_ms;

    o->len = 0;
    o->full = false;
    metric(o, "emiot_api_requests_total", "counter", "HTTP requests received.", a.requests);
    head(o, "emiot_api_responses_total", "counter", "HTTP answers by status class.");
    for (int c = 1; c <= 5; c++)
        put(o, "emiot_api_responses_total{class=\"%dxx\"} %" PRIu64 "\n", c, a.responses[c]);
    metric(o, "emiot_api_auth_failures_total", "counter", "Requests refused with 401.",
           a.auth_failures);
    metric(o, "emiot_api_forbidden_total", "counter", "Requests refused with 403.", a.forbidden);
    metric(o, "emiot_api_rate_limited_total", "counter", "Requests refused with 429.",
           a.rate_limited);
    metric(o, "emiot_api_bad_requests_total", "counter", "Requests refused with 400 or 413.",
           a.bad_requests);
    metric(o, "emiot_api_tls_handshakes_total", "counter", "TLS handshakes completed.",
           a.tls_handshakes);
    metric(o, "emiot_api_tls_failures_total", "counter", "TLS handshakes refused.", a.tls_failures);
    metric(o, "emiot_api_connections_open", "gauge", "TLS connections open.", a.connections_open);
    metric(o, "emiot_api_active_requests", "gauge", "Requests not yet fully answered.",
           em_api_active_requests(r->api));

    metric(o, "emiot_mqtt_messages_received_total", "counter", "MQTT messages received.",
           m.messages_received);
    metric(o, "emiot_status_accepted_total", "counter", "Status messages applied.",
           m.status_accepted);
    metric(o, "emiot_telemetry_accepted_total", "counter", "Telemetry samples applied.",
           m.telemetry_accepted);
    metric(o, "emiot_command_responses_total", "counter", "Command answers from devices.",
           m.responses_received);
    metric(o, "emiot_device_events_total", "counter", "Events reported by devices.",
           m.device_events);
    head(o, "emiot_messages_rejected_total", "counter", "Device messages rejected, by reason.");
    put(o, "emiot_messages_rejected_total{reason=\"format\"} %" PRIu64 "\n", m.rejected_format);
    put(o, "emiot_messages_rejected_total{reason=\"validation\"} %" PRIu64 "\n",
        m.rejected_validation);
    put(o, "emiot_messages_rejected_total{reason=\"topic\"} %" PRIu64 "\n", m.rejected_topic);
    metric(o, "emiot_unknown_device_messages_total", "counter",
           "Valid messages from unregistered devices.", m.unknown_device);
    metric(o, "emiot_commands_sent_total", "counter", "Commands published.", m.commands_sent);
    metric(o, "emiot_commands_rate_limited_total", "counter", "Commands refused by rate limit.",
           m.commands_rate_limited);
    metric(o, "emiot_commands_invalid_total", "counter", "Commands refused as invalid.",
           m.commands_invalid);
    metric(o, "emiot_devices_offline_detected_total", "counter", "Devices found silent.",
           m.offline_detected);
    metric(o, "emiot_mqtt_reconnects_total", "counter", "Reconnections to the broker.",
           m.reconnects);
    metric(o, "emiot_mqtt_connected", "gauge", "1 when connected to the broker.",
           em_manager_is_connected(r->mgr) ? 1 : 0);
    metric(o, "emiot_devices_registered", "gauge", "Devices in the registry.", devices);

    metric(o, "emiot_store_enqueued_total", "counter", "Records queued for the store.", s.enqueued);
    metric(o, "emiot_store_committed_total", "counter", "Queued records committed.", s.committed);
    metric(o, "emiot_store_batches_total", "counter", "Store transactions committed.", s.batches);
    metric(o, "emiot_store_queue_depth", "gauge", "Records queued, not yet committed.",
           s.queue_depth);
    metric(o, "emiot_store_queue_waits_total", "counter", "Enqueues that waited for room.",
           s.queue_waits);
    metric(o, "emiot_store_write_errors_total", "counter", "Failed store batches.", s.write_errors);
    metric(o, "emiot_store_orphan_responses_total", "counter",
           "Command answers to unknown request ids.", s.orphan_responses);
    head(o, "emiot_store_last_batch_seconds", "gauge", "Duration of the last commit.");
    put(o, "emiot_store_last_batch_seconds %.6f\n", (double)s.last_batch_us / 1e6);
    head(o, "emiot_uptime_seconds", "gauge", "Seconds since the API started.");
    put(o, "emiot_uptime_seconds %.3f\n", (double)(up < 0 ? 0 : up) / 1000.0);

    if (o->full)
        em__api_error(r, 500, NULL, NULL, "metrics larger than the buffer");
    else
        em__api_send(r, 200, "text/plain; version=0.0.4; charset=utf-8", o->buf, o->len);
    free(o);
}
