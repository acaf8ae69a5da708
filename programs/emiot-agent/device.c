/*
 * emiot-agent - device.c: one device, one MQTT client.
 *
 * Two threads touch a device: the client's network thread (commands,
 * connection events, acknowledgements) and the main thread (periodic status
 * and telemetry). Both take d->lock to read or change the device, build the
 * payload they are about to send while holding it, and release it before
 * calling em_mqtt_publish: the transport has locks of its own and calls back
 * into this file from its thread, so holding ours across a transport call
 * could deadlock.
 */
#include <cjson/cJSON.h>
#include <inttypes.h>
#include <limits.h>
#include <math.h>
#include <stdio.h>
#include <string.h>

#include "agent.h"
#include "emiot/clock.h"
#include "emiot/log.h"

#define MODULE        "agent"
#define RESPONSE_BUF  (EM_RESPONSE_MESSAGE_MAX + EM_REQUEST_ID_MAX + 256)
#define TELEMETRY_BUF 1024

typedef enum followup {
    FOLLOW_NONE = 0,
    FOLLOW_STATUS, /* publish a fresh status */
    FOLLOW_RESTART /* offline, online, fresh status: a (simulated) reboot */
} followup_t;

/* ---- small helpers ---------------------------------------------------- */

static void log_device(em_log_level_t level, const agent_device_t *d, const char *cid,
                       const char *msg, const char *detail)
{
    em_log_field_t f[2] = {EM_LOG_STR("device", d->id), EM_LOG_STR("detail", detail)};
    em_log(level, MODULE, cid, msg, f, detail ? 2 : 1);
}

static void publish(agent_device_t *d, const char *topic, const char *payload, size_t len, int qos,
                    bool retain)
{
    em_error_t err;
    em_err_t rc;

    em_error_clear(&err);
    rc = em_mqtt_publish(d->mqtt, topic, payload, len, qos, retain, NULL, &err);
    if (rc == EM_ERR_NOT_CONNECTED) {
        /* Expected while the transport reconnects; the next announcement
         * brings the manager up to date. */
        log_device(EM_LOG_DEBUG, d, NULL, "publish skipped: not connected", topic);
    } else if (rc != EM_OK) {
        log_device(EM_LOG_WARN, d, NULL, "publish failed",
                   err.message[0] ? err.message : em_strerror(rc));
    }
}

static bool request_id_valid(const char *s, size_t len)
{
    if (len == 0 || len > EM_REQUEST_ID_MAX)
        return false;
    for (size_t i = 0; i < len; i++) {
        char c = s[i];
        if (!((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
              c == '_' || c == '-'))
            return false;
    }
    return true;
}

/*
 * A command that em_command_decode refused still deserves an answer when it
 * carries a usable requestId: the manager is waiting on that id. Extracting it
 * is the only thing done with the refused payload.
 */
static bool extract_request_id(const void *payload, size_t len, char *out, size_t size)
{
    cJSON *root, *rid;
    bool ok = false;

    if (len == 0 || len > EM_PAYLOAD_MAX)
        return false;
    root = cJSON_ParseWithLength(payload, len);
    if (!root)
        return false;
    rid = cJSON_GetObjectItemCaseSensitive(root, "requestId");
    if (cJSON_IsObject(root) && cJSON_IsString(rid) && rid->valuestring &&
        request_id_valid(rid->valuestring, strlen(rid->valuestring)) &&
        strlen(rid->valuestring) < size) {
        snprintf(out, size, "%s", rid->valuestring);
        ok = true;
    }
    cJSON_Delete(root);
    return ok;
}

/* Returns true when id was seen recently; records it otherwise. Caller holds
 * the lock. The ring is bounded: the command timestamp check covers what has
 * fallen out of it. */
static bool seen_check_add(agent_device_t *d, const char *id)
{
    for (unsigned i = 0; i < d->seen_count; i++) {
        if (strcmp(d->seen[i], id) == 0)
            return true;
    }
    snprintf(d->seen[d->seen_next], sizeof d->seen[0], "%s", id);
    d->seen_next = (d->seen_next + 1) % AGENT_SEEN_IDS;
    if (d->seen_count < AGENT_SEEN_IDS)
        d->seen_count++;
    return false;
}

/* Next status and telemetry one period from now, at the current intervals.
 * Caller holds the lock. */
static void schedule_reports(agent_device_t *d, int64_t now)
{
    d->next_status_ms = now + (int64_t)d->status_interval_s * 1000;
    d->next_telemetry_ms =
        d->telemetry_interval_s ? now + (int64_t)d->telemetry_interval_s * 1000 : 0;
}

/* ---- payloads --------------------------------------------------------- */

/* Builds the status JSON; caller holds the lock. Returns its length, 0 if it
 * did not fit (cannot happen with AGENT_STATUS_BUF, but is checked). */
static size_t build_status(agent_device_t *d, int64_t now_ms, char *buf, size_t size)
{
    agent_model_t *m = &d->model;
    em_status_t st;
    char errors[64];
    char extra[512];
    size_t len = 0;
    em_power_mode_t mode;
    long long uptime_s, sleep_left_s = -1;
    int n;

    agent_model_advance(m, now_ms);
    mode = agent_model_power_mode(m);
    uptime_s = (long long)((now_ms - m->boot_ms) / 1000);
    if (m->sleeping && m->sleep_until_ms > now_ms)
        sleep_left_s = (long long)((m->sleep_until_ms - now_ms + 999) / 1000);

    memset(&st, 0, sizeof st);
    st.has = EM_STATUS_HAS_BATTERY | EM_STATUS_HAS_POWER_MODE | EM_STATUS_HAS_CONNECTION |
             EM_STATUS_HAS_FIRMWARE | EM_STATUS_HAS_SIGNAL | EM_STATUS_HAS_ERRORS |
             EM_STATUS_HAS_EXTRA;
    st.battery_level = (uint8_t)(m->battery < 0 ? 0 : (m->battery > 100 ? 100 : floor(m->battery)));
    st.power_mode = (uint8_t)mode;
    st.connection = EM_CONN_ONLINE;
    st.signal_strength = (int16_t)m->signal_dbm;
    snprintf(st.firmware_version, sizeof st.firmware_version, "%s", m->firmware);
    if (mode == EM_POWER_CRITICAL) {
        snprintf(errors, sizeof errors, "[\"battery critical\"]");
        st.errors_json = errors;
    }
    /* Only numbers, booleans and the fixed type name go in: nothing here needs
     * JSON escaping. */
    n = snprintf(extra, sizeof extra,
                 "{\"type\":\"%s\",\"uptimeS\":%lld,\"reportingInterval\":%d,"
                 "\"telemetryInterval\":%d,\"sleepThreshold\":%u,\"autoWake\":%s,"
                 "\"securityLevel\":%u,\"commandsOk\":%lu,\"commandsFailed\":%lu%s",
                 em_device_type_name(m->type), uptime_s, d->status_interval_s,
                 d->telemetry_interval_s, (unsigned)m->sleep_threshold,
                 m->auto_wake ? "true" : "false", (unsigned)m->security_level, d->commands_ok,
                 d->commands_failed, sleep_left_s >= 0 ? "" : "}");
    if (n > 0 && (size_t)n < sizeof extra && sleep_left_s >= 0) {
        int k = snprintf(extra + n, sizeof extra - (size_t)n, ",\"sleepRemainingS\":%lld}",
                         sleep_left_s);
        if (k < 0 || (size_t)k >= sizeof extra - (size_t)n)
            n = -1;
    }
    if (n > 0 && (size_t)n < sizeof extra)
        st.extra_json = extra;
    else
        st.has &= (uint16_t)~EM_STATUS_HAS_EXTRA;

    if (em_status_encode(&st, buf, size, &len) != EM_OK)
        return 0;
    d->reported_mode = mode;
    return len;
}

static size_t build_telemetry(agent_device_t *d, int64_t now_ms, char *buf, size_t size)
{
    em_telemetry_t t;
    size_t len = 0;

    agent_model_advance(&d->model, now_ms);
    agent_model_sample(&d->model, now_ms);
    agent_model_telemetry(&d->model, em_now_ms(), &t);
    if (em_telemetry_encode(&t, buf, size, &len) != EM_OK)
        return 0;
    return len;
}

static void publish_status(agent_device_t *d)
{
    char buf[AGENT_STATUS_BUF];
    size_t len;

    pthread_mutex_lock(&d->lock);
    len = build_status(d, em_mono_ms(), buf, sizeof buf);
    pthread_mutex_unlock(&d->lock);
    if (len > 0)
        publish(d, d->t_status, buf, len, 1, false);
    else
        log_device(EM_LOG_ERROR, d, NULL, "status did not fit its buffer", NULL);
}

static void publish_availability(agent_device_t *d, bool online)
{
    publish(d, d->t_availability, online ? "online" : "offline", online ? 6 : 7, 1, true);
}

/* ---- commands --------------------------------------------------------- */

static void describe_error(const em_error_t *err, em_err_t rc, char *out, size_t size)
{
    const char *why = err->message[0] ? err->message : em_strerror(rc);
    if (err->field[0])
        snprintf(out, size, "invalid command: %s: %s", err->field, why);
    else
        snprintf(out, size, "invalid command: %s", why);
}

/* Reads an integer member of a validated payload; false when absent. */
static bool payload_int(const cJSON *payload, const char *key, long long *out)
{
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(payload, key);
    if (!cJSON_IsNumber(v) || !isfinite(v->valuedouble) || v->valuedouble != floor(v->valuedouble))
        return false;
    if (v->valuedouble < -9e15 || v->valuedouble > 9e15)
        return false;
    *out = (long long)v->valuedouble;
    return true;
}

/* Appends ", text" (or "text" first) to a bounded message. */
static void msg_append(char *msg, size_t size, const char *text)
{
    size_t used = strlen(msg);
    if (used < size)
        snprintf(msg + used, size - used, "%s%s", used ? ", " : "", text);
}

/*
 * configure: every key is checked before any is applied, so a refused
 * configure changes nothing. Known keys are those of a device configuration
 * (reportingInterval, sleepThreshold, autoWake, securityLevel) plus the agent's
 * telemetryInterval; other keys are reported as ignored.
 */
static bool cmd_configure(agent_device_t *d, const cJSON *payload, int64_t now, char *msg,
                          size_t size)
{
    long long v;
    long long interval = -1, threshold = -1, level = -1, tele = -1;
    int auto_wake = -1;
    char applied[EM_RESPONSE_MESSAGE_MAX + 1] = "";
    char ignored[EM_RESPONSE_MESSAGE_MAX + 1] = "";
    char item[96];
    const cJSON *it;

    if (!cJSON_IsObject(payload)) {
        snprintf(msg, size, "invalid command: configure needs a payload object");
        return false;
    }
    cJSON_ArrayForEach(it, payload)
    {
        const char *k = it->string ? it->string : "";
        if (strcmp(k, "reportingInterval") == 0) {
            if (!payload_int(payload, k, &v) || v < EM_REPORTING_INTERVAL_MIN ||
                v > EM_REPORTING_INTERVAL_MAX)
                goto bad;
            interval = v;
        } else if (strcmp(k, "sleepThreshold") == 0) {
            if (!payload_int(payload, k, &v) || v < 0 || v > EM_SLEEP_THRESHOLD_MAX)
                goto bad;
            threshold = v;
        } else if (strcmp(k, "securityLevel") == 0) {
            if (!payload_int(payload, k, &v) || v < EM_SECURITY_LEVEL_MIN ||
                v > EM_SECURITY_LEVEL_MAX)
                goto bad;
            level = v;
        } else if (strcmp(k, "autoWake") == 0) {
            if (!cJSON_IsBool(it))
                goto bad;
            auto_wake = cJSON_IsTrue(it) ? 1 : 0;
        } else if (strcmp(k, "telemetryInterval") == 0) {
            if (!payload_int(payload, k, &v) || v < 0 || v > EM_REPORTING_INTERVAL_MAX)
                goto bad;
            tele = v;
        } else {
            /* Keys are echoed back: keep only the safe characters' prefix. */
            char safe[33];
            size_t n = 0;
            for (const char *p = k; *p && n < sizeof safe - 1; p++) {
                char ch = *p;
                if (ch < 0x20 || ch >= 0x7f || ch == '"' || ch == '\\')
                    ch = '?';
                safe[n++] = ch;
            }
            safe[n] = '\0';
            msg_append(ignored, sizeof ignored, safe);
        }
        continue;
    bad:
        snprintf(msg, size, "invalid command: configure: %.40s out of range or wrong type", k);
        return false;
    }
    if (interval < 0 && threshold < 0 && level < 0 && auto_wake < 0 && tele < 0) {
        if (ignored[0])
            snprintf(msg, size, "no known configuration key (ignored: %s)", ignored);
        else
            snprintf(msg, size, "no known configuration key");
        return false;
    }

    agent_model_advance(&d->model, now);
    if (interval >= 0) {
        d->status_interval_s = (int)interval;
        d->next_status_ms = now + interval * 1000;
        snprintf(item, sizeof item, "reportingInterval=%lld", interval);
        msg_append(applied, sizeof applied, item);
    }
    if (tele >= 0) {
        d->telemetry_interval_s = (int)tele;
        d->next_telemetry_ms = tele ? now + tele * 1000 : 0;
        snprintf(item, sizeof item, "telemetryInterval=%lld", tele);
        msg_append(applied, sizeof applied, item);
    }
    if (threshold >= 0) {
        d->model.sleep_threshold = (uint8_t)threshold;
        snprintf(item, sizeof item, "sleepThreshold=%lld", threshold);
        msg_append(applied, sizeof applied, item);
    }
    if (level >= 0) {
        d->model.security_level = (uint8_t)level;
        snprintf(item, sizeof item, "securityLevel=%lld", level);
        msg_append(applied, sizeof applied, item);
    }
    if (auto_wake >= 0) {
        d->model.auto_wake = auto_wake == 1;
        snprintf(item, sizeof item, "autoWake=%s", auto_wake ? "true" : "false");
        msg_append(applied, sizeof applied, item);
    }
    if (ignored[0])
        snprintf(msg, size, "configured %s; ignored: %s", applied, ignored);
    else
        snprintf(msg, size, "configured %s", applied);
    return true;
}

/*
 * Runs a decoded, fresh, not replayed command. Caller holds the lock. Writes
 * the response message and says what to publish after the response.
 */
static bool execute(agent_device_t *d, const em_command_t *cmd, int64_t now, char *msg, size_t size,
                    followup_t *follow)
{
    agent_model_t *m = &d->model;
    cJSON *payload = NULL;
    long long v;
    bool ok = true;

    if (cmd->payload_json) {
        payload = cJSON_Parse(cmd->payload_json);
        if (!payload) {
            snprintf(msg, size, "internal error: payload unreadable");
            return false;
        }
    }
    agent_model_advance(m, now);

    switch (cmd->type) {
    case EM_CMD_SLEEP:
        m->sleeping = true;
        if (payload_int(payload, "duration", &v) && v > 0) {
            m->sleep_until_ms = now + v * 1000;
            snprintf(msg, size, "sleeping for %lld s", v);
        } else {
            m->sleep_until_ms = 0;
            snprintf(msg, size, "sleeping until woken");
        }
        *follow = FOLLOW_STATUS;
        break;
    case EM_CMD_WAKE:
        m->sleeping = false;
        m->sleep_until_ms = 0;
        snprintf(msg, size, "awake, powerMode %s", em_power_mode_name(agent_model_power_mode(m)));
        *follow = FOLLOW_STATUS;
        break;
    case EM_CMD_RESTART:
        agent_model_reboot(m, now);
        snprintf(msg, size, "restarting");
        *follow = FOLLOW_RESTART;
        break;
    case EM_CMD_UPDATE: {
        char next[EM_FIRMWARE_VERSION_MAX + 1];
        const cJSON *ver = cJSON_GetObjectItemCaseSensitive(payload, "version");
        bool comparable;
        int cmp;

        if (cJSON_IsString(ver) && ver->valuestring) {
            if (strlen(ver->valuestring) >= sizeof next) {
                snprintf(msg, size, "invalid command: version too long");
                ok = false;
                break;
            }
            snprintf(next, sizeof next, "%s", ver->valuestring);
        } else if (!agent_version_bump(m->firmware, next, sizeof next)) {
            snprintf(msg, size, "cannot derive a version after %s", m->firmware);
            ok = false;
            break;
        }
        cmp = agent_version_compare(next, m->firmware, &comparable);
        if (strcmp(next, m->firmware) == 0 || (comparable && cmp == 0)) {
            snprintf(msg, size, "already running firmware %s", m->firmware);
            break;
        }
        if (comparable && cmp < 0) {
            /* No rollback to an older image by command: that is how a
             * known-vulnerable firmware would come back. */
            snprintf(msg, size, "downgrade from %s to %s refused", m->firmware, next);
            ok = false;
            break;
        }
        snprintf(msg, size, "firmware updated from %s to %s, restarting", m->firmware, next);
        snprintf(m->firmware, sizeof m->firmware, "%s", next);
        agent_model_reboot(m, now);
        *follow = FOLLOW_RESTART;
        break;
    }
    case EM_CMD_SET_REPORTING_INTERVAL:
        if (!payload_int(payload, "interval", &v) || v < EM_CMD_INTERVAL_MIN ||
            v > EM_CMD_INTERVAL_MAX) {
            snprintf(msg, size, "invalid command: interval must be %d..%d seconds",
                     EM_CMD_INTERVAL_MIN, EM_CMD_INTERVAL_MAX);
            ok = false;
            break;
        }
        d->status_interval_s = (int)v;
        d->next_status_ms = now + v * 1000;
        snprintf(msg, size, "reporting interval set to %lld s", v);
        break;
    case EM_CMD_GET_STATUS:
        snprintf(msg, size, "status published");
        *follow = FOLLOW_STATUS;
        break;
    case EM_CMD_CONFIGURE:
        ok = cmd_configure(d, payload, now, msg, size);
        if (ok)
            *follow = FOLLOW_STATUS;
        break;
    case EM_CMD_RESET: {
        const cJSON *confirm = cJSON_GetObjectItemCaseSensitive(payload, "confirm");
        /* em_command_decode already insists on confirm:true; a device checks
         * again before wiping itself. */
        if (!cJSON_IsTrue(confirm)) {
            snprintf(msg, size, "invalid command: reset requires confirm:true");
            ok = false;
            break;
        }
        agent_model_factory_reset(m, now);
        d->status_interval_s = d->cfg->status_interval_s;
        d->telemetry_interval_s = d->cfg->telemetry_interval_s;
        schedule_reports(d, now);
        snprintf(msg, size, "factory reset done, restarting");
        *follow = FOLLOW_RESTART;
        break;
    }
    default:
        snprintf(msg, size, "invalid command: unsupported type");
        ok = false;
        break;
    }
    cJSON_Delete(payload);
    return ok;
}

static void publish_response(agent_device_t *d, const char *rid, bool success, const char *msg)
{
    em_response_t r;
    char buf[RESPONSE_BUF];
    size_t len = 0;

    memset(&r, 0, sizeof r);
    snprintf(r.request_id, sizeof r.request_id, "%s", rid);
    r.success = success;
    snprintf(r.message, sizeof r.message, "%s", msg);
    r.timestamp_ms = em_now_ms();
    if (em_response_encode(&r, buf, sizeof buf, &len) != EM_OK) {
        log_device(EM_LOG_ERROR, d, rid, "response did not fit its buffer", NULL);
        return;
    }
    publish(d, d->t_response, buf, len, 1, false);
}

static void handle_command(agent_device_t *d, const void *payload, size_t len)
{
    char rid[EM_REQUEST_ID_MAX + 1] = "";
    char msg[EM_RESPONSE_MESSAGE_MAX + 1] = "";
    followup_t follow = FOLLOW_NONE;
    em_command_t cmd;
    em_error_t err;
    em_err_t rc;
    bool ok = false;
    int64_t now = em_mono_ms();

    em_error_clear(&err);
    rc = em_command_decode(payload, len, &cmd, &err);
    if (rc != EM_OK) {
        if (!extract_request_id(payload, len, rid, sizeof rid)) {
            /* Nothing to answer to: the manager cannot be waiting on it. */
            log_device(EM_LOG_WARN, d, NULL, "unreadable command dropped",
                       err.message[0] ? err.message : em_strerror(rc));
            return;
        }
        pthread_mutex_lock(&d->lock);
        if (seen_check_add(d, rid))
            snprintf(msg, sizeof msg, "duplicate requestId");
        else
            describe_error(&err, rc, msg, sizeof msg);
        d->commands_failed++;
        pthread_mutex_unlock(&d->lock);
    } else {
        int64_t wall = em_now_ms();
        int64_t max_age = d->cfg->command_max_age_ms;

        snprintf(rid, sizeof rid, "%s", cmd.request_id);
        pthread_mutex_lock(&d->lock);
        if (seen_check_add(d, rid)) {
            snprintf(msg, sizeof msg, "duplicate requestId");
        } else if (max_age > 0 && cmd.timestamp_ms < wall - max_age) {
            /* Older than the window the id ring is meant to cover: treat as a
             * replay of something the ring may have forgotten. */
            snprintf(msg, sizeof msg, "command expired (issued %" PRId64 " s ago)",
                     (wall - cmd.timestamp_ms) / 1000);
        } else if (max_age > 0 && cmd.timestamp_ms > wall + max_age) {
            snprintf(msg, sizeof msg, "command timestamp is in the future");
        } else {
            ok = execute(d, &cmd, now, msg, sizeof msg, &follow);
        }
        if (ok)
            d->commands_ok++;
        else
            d->commands_failed++;
        pthread_mutex_unlock(&d->lock);
    }

    {
        em_log_field_t f[4] = {
            EM_LOG_STR("device", d->id),
            EM_LOG_STR("type", rc == EM_OK ? em_command_type_name(cmd.type) : "invalid"),
            EM_LOG_BOOL("success", ok), EM_LOG_STR("message", msg)};
        em_log(ok ? EM_LOG_INFO : EM_LOG_WARN, MODULE, rid, "command", f, 4);
    }
    if (rc == EM_OK)
        em_command_cleanup(&cmd);

    publish_response(d, rid, ok, msg);
    if (follow == FOLLOW_RESTART) {
        /* A reboot as the manager sees it: the device drops off, comes back
         * and reports. The MQTT session itself is kept (the network thread
         * cannot tear down its own connection from inside a callback). */
        publish_availability(d, false);
        publish_availability(d, true);
    }
    if (follow != FOLLOW_NONE)
        publish_status(d);
}

/* ---- transport callbacks (network thread) ------------------------------ */

static void on_message(void *ud, const char *topic, const void *payload, size_t len, int qos,
                       bool retain)
{
    agent_device_t *d = ud;
    (void)qos;

    if (strcmp(topic, d->t_command) != 0)
        return;
    if (retain) {
        /* A retained command would run again on every reconnection. */
        log_device(EM_LOG_WARN, d, NULL, "retained command ignored", topic);
        return;
    }
    handle_command(d, payload, len);
}

static void on_event(void *ud, em_mqtt_event_t ev, const em_error_t *err)
{
    agent_device_t *d = ud;
    const char *why = err && err->message[0] ? err->message : NULL;

    switch (ev) {
    case EM_MQTT_CONNECTED:
        pthread_mutex_lock(&d->lock);
        d->need_announce = true;
        pthread_mutex_unlock(&d->lock);
        log_device(EM_LOG_INFO, d, NULL, "connected", NULL);
        break;
    case EM_MQTT_DISCONNECTED: {
        bool stopping;
        pthread_mutex_lock(&d->lock);
        stopping = d->stopping;
        pthread_mutex_unlock(&d->lock);
        log_device(stopping ? EM_LOG_INFO : EM_LOG_WARN, d, NULL, "disconnected", why);
        break;
    }
    case EM_MQTT_RECONNECTING:
        log_device(EM_LOG_DEBUG, d, NULL, "reconnecting", why);
        break;
    case EM_MQTT_ERROR:
    default:
        log_device(EM_LOG_ERROR, d, NULL, "connection error", why);
        break;
    }
}

static void on_published(void *ud, int mid)
{
    agent_device_t *d = ud;

    pthread_mutex_lock(&d->lock);
    d->acked[d->acked_next] = mid;
    d->acked_next = (d->acked_next + 1) % AGENT_ACKED_MIDS;
    pthread_mutex_unlock(&d->lock);
}

/* ---- life cycle ------------------------------------------------------- */

em_err_t agent_device_init(agent_device_t *d, const agent_config_t *cfg, const char *id,
                           em_device_type_t type, uint64_t seed, em_error_t *err)
{
    static const struct {
        em_topic_kind_t kind;
        size_t off;
    } topics[] = {
        {EM_TOPIC_STATUS, offsetof(agent_device_t, t_status)},
        {EM_TOPIC_TELEMETRY, offsetof(agent_device_t, t_telemetry)},
        {EM_TOPIC_COMMAND, offsetof(agent_device_t, t_command)},
        {EM_TOPIC_RESPONSE, offsetof(agent_device_t, t_response)},
        {EM_TOPIC_AVAILABILITY, offsetof(agent_device_t, t_availability)},
    };
    em_mqtt_options_t o;
    em_mqtt_callbacks_t cbs;
    char cert[PATH_MAX], key[PATH_MAX];
    int64_t now = em_mono_ms();
    em_err_t rc;

    memset(d, 0, sizeof *d);
    rc = em_device_id_validate(id, strlen(id), err);
    if (rc != EM_OK)
        return rc;
    snprintf(d->id, sizeof d->id, "%s", id);
    d->cfg = cfg;
    for (size_t i = 0; i < sizeof topics / sizeof topics[0]; i++) {
        char *t = (char *)d + topics[i].off;
        size_t tlen = 0;
        rc = em_topic_build(cfg->prefix, id, topics[i].kind, t, EM_TOPIC_MAX, &tlen);
        if (rc != EM_OK)
            return em_error_set(err, rc, EM_SEV_MEDIUM, "prefix", "cannot build topics for %s", id);
    }

    em_mqtt_options_init(&o);
    o.url = cfg->url;
    o.ca_file = cfg->ca_file;
    o.ca_path = cfg->ca_path;
    o.cert_file = cfg->cert_file;
    o.key_file = cfg->key_file;
    if (cfg->cert_dir) {
        int a = snprintf(cert, sizeof cert, "%s/%s.crt", cfg->cert_dir, id);
        int b = snprintf(key, sizeof key, "%s/%s.key", cfg->cert_dir, id);
        if (a < 0 || (size_t)a >= sizeof cert || b < 0 || (size_t)b >= sizeof key)
            return em_error_set(err, EM_ERR_CONFIGURATION, EM_SEV_MEDIUM, "cert-dir",
                                "certificate path too long");
        o.cert_file = cert;
        o.key_file = key;
    }
    o.username = cfg->username;
    o.password_env = cfg->password_env;
    o.password_file = cfg->password_file;
    o.client_id = id; /* each device is its own client, as in the field */
    o.allow_plain = cfg->allow_plain;
    if (cfg->protocol)
        o.protocol = cfg->protocol;
    if (cfg->keepalive_s)
        o.keepalive_s = cfg->keepalive_s;
    o.will_topic = d->t_availability;
    o.will_payload = "offline";
    o.will_retain = true;
    o.will_qos = 1;

    memset(&cbs, 0, sizeof cbs);
    cbs.on_message = on_message;
    cbs.on_event = on_event;
    cbs.on_published = on_published;
    cbs.userdata = d;

    agent_model_init(&d->model, type, seed, cfg->firmware, now);
    d->status_interval_s = cfg->status_interval_s;
    d->telemetry_interval_s = cfg->telemetry_interval_s;
    d->reported_mode = EM_POWER_UNKNOWN;
    for (size_t i = 0; i < AGENT_ACKED_MIDS; i++)
        d->acked[i] = -1;

    if (pthread_mutex_init(&d->lock, NULL) != 0)
        return em_error_set(err, EM_ERR_INTERNAL, EM_SEV_HIGH, NULL, "cannot create a mutex");
    d->mqtt = em_mqtt_new(&o, &cbs, err);
    if (!d->mqtt) {
        pthread_mutex_destroy(&d->lock);
        return err && err->code != EM_OK ? err->code : EM_ERR_INTERNAL;
    }
    return EM_OK;
}

em_err_t agent_device_start(agent_device_t *d, int timeout_ms, bool *connected, em_error_t *err)
{
    em_error_t cerr;
    em_err_t rc = EM_ERR_CONNECTION;
    int64_t now;

    *connected = false;
    em_error_clear(&cerr);
    if (timeout_ms > 0) {
        rc = em_mqtt_connect(d->mqtt, timeout_ms, &cerr);
        /* An unreachable broker is a passing condition (a device may boot
         * before its broker): the network thread keeps trying. A broker that
         * fails verification or refuses our credentials is a configuration
         * error that retrying would only hide. */
        if (rc != EM_OK && rc != EM_ERR_CONNECTION && rc != EM_ERR_TIMEOUT) {
            if (err)
                *err = cerr;
            return rc;
        }
        if (rc != EM_OK)
            log_device(EM_LOG_WARN, d, NULL, "broker unreachable, retrying in the background",
                       cerr.message[0] ? cerr.message : em_strerror(rc));
    }
    *connected = rc == EM_OK;
    /* Subscribed before the network thread runs and before "online" goes
     * out: the broker handles a client's packets in order, so whoever sees
     * the device online can already command it. While disconnected the
     * transport records the filter and subscribes once connected. */
    rc = em_mqtt_subscribe(d->mqtt, d->t_command, 1, err);
    if (rc != EM_OK)
        return rc;
    rc = em_mqtt_start(d->mqtt, err);
    if (rc != EM_OK)
        return rc;
    now = em_mono_ms();
    pthread_mutex_lock(&d->lock);
    d->need_announce = *connected; /* otherwise the CONNECTED event sets it */
    schedule_reports(d, now);
    pthread_mutex_unlock(&d->lock);
    return EM_OK;
}

void agent_device_tick(agent_device_t *d, int64_t now)
{
    char status[AGENT_STATUS_BUF], tele[TELEMETRY_BUF];
    size_t status_len = 0, tele_len = 0;
    bool announce = false, connected = em_mqtt_is_connected(d->mqtt);

    pthread_mutex_lock(&d->lock);
    agent_model_advance(&d->model, now);
    if (connected && d->need_announce) {
        announce = true;
        d->need_announce = false;
    }
    if (announce || now >= d->next_status_ms ||
        agent_model_power_mode(&d->model) != d->reported_mode) {
        if (announce || now >= d->next_status_ms)
            d->next_status_ms = now + (int64_t)d->status_interval_s * 1000;
        if (connected)
            status_len = build_status(d, now, status, sizeof status);
    }
    if (d->telemetry_interval_s > 0 && d->next_telemetry_ms != 0 && now >= d->next_telemetry_ms) {
        int64_t period = (int64_t)d->telemetry_interval_s * 1000;
        /* Keep the cadence, but never try to catch up on missed samples. */
        d->next_telemetry_ms += period;
        if (d->next_telemetry_ms <= now)
            d->next_telemetry_ms = now + period;
        if (connected)
            tele_len = build_telemetry(d, now, tele, sizeof tele);
    }
    pthread_mutex_unlock(&d->lock);

    if (announce)
        publish_availability(d, true);
    if (status_len > 0)
        publish(d, d->t_status, status, status_len, 1, false);
    /* QoS 0: energy_wh is cumulative, so a lost sample loses no energy. */
    if (tele_len > 0)
        publish(d, d->t_telemetry, tele, tele_len, 0, false);
}

int agent_device_publish_offline(agent_device_t *d)
{
    em_error_t err;
    int mid = -1;

    em_error_clear(&err);
    if (em_mqtt_publish(d->mqtt, d->t_availability, "offline", 7, 1, true, &mid, &err) != EM_OK) {
        log_device(EM_LOG_WARN, d, NULL, "could not publish offline", err.message);
        return -1;
    }
    return mid;
}

bool agent_device_acked(agent_device_t *d, int mid)
{
    bool found = false;

    pthread_mutex_lock(&d->lock);
    for (size_t i = 0; i < AGENT_ACKED_MIDS; i++) {
        if (d->acked[i] == mid) {
            found = true;
            break;
        }
    }
    pthread_mutex_unlock(&d->lock);
    return found;
}

void agent_device_cleanup(agent_device_t *d)
{
    if (!d->mqtt)
        return;
    pthread_mutex_lock(&d->lock);
    d->stopping = true;
    pthread_mutex_unlock(&d->lock);
    em_mqtt_disconnect(d->mqtt, NULL);
    em_mqtt_free(d->mqtt);
    d->mqtt = NULL;
    pthread_mutex_destroy(&d->lock);
}
