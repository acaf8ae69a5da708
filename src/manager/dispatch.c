/*
 * emiot - dispatch.c: commands from the manager to devices and groups.
 *
 * Order of checks for every command: the payload is valid (else nothing is
 * sent), the manager is connected, the device is under its rate limit; only
 * then is the command encoded and published, and only a published command
 * counts against the limit.
 */
#include <stdio.h>
#include <string.h>

#include "emiot/clock.h"
#include "emiot/log.h"
#include <openssl/crypto.h>
#include <openssl/rand.h>

#include "manager/manager_internal.h"
#include "model/command_internal.h"
#include "registry/device_ext.h"

#define MODULE "manager"

/* Checks that the device may receive one more command now. Lock held. */
static em_err_t rate_check(em_manager_t *mgr, em_device_t *dev, int64_t now, em__window_t **out,
                           em_error_t *err)
{
    struct em__device_ext *ext = em__device_ext(dev);
    if (ext == NULL)
        return em_error_set(err, EM_ERR_NOMEM, EM_SEV_HIGH, NULL, "cannot track the rate limit");
    if (ext->cmd_window == NULL) {
        ext->cmd_window = em__window_new(mgr->opts.rate_limit_count);
        if (ext->cmd_window == NULL)
            return em_error_set(err, EM_ERR_NOMEM, EM_SEV_HIGH, NULL,
                                "cannot track the rate limit");
    }
    int64_t window_ms = (int64_t)mgr->opts.rate_limit_window_s * 1000;
    if (em__window_used(ext->cmd_window, now, window_ms) >= mgr->opts.rate_limit_count) {
        mgr->stats.commands_rate_limited++;
        em_error_set(err, EM_ERR_RATE_LIMIT_EXCEEDED, EM_SEV_MEDIUM, NULL,
                     "more than %u commands in %d s", mgr->opts.rate_limit_count,
                     mgr->opts.rate_limit_window_s);
        em_error_set_device(err, dev->id);
        return EM_ERR_RATE_LIMIT_EXCEEDED;
    }
    *out = ext->cmd_window;
    return EM_OK;
}

/*
 * Publishes cmd to dev, after the rate-limit check. cmd->request_id and
 * timestamp are refreshed by the caller for each device. Lock held.
 */
static em_err_t publish_one(em_manager_t *mgr, em_device_t *dev, const em_command_t *cmd,
                            em_error_t *err)
{
    int64_t now = em_mono_ms();
    em__window_t *win = NULL;
    em_err_t rc = rate_check(mgr, dev, now, &win, err);
    if (rc != EM_OK)
        return rc;

    char topic[EM_TOPIC_MAX];
    char body[EM_COMMAND_WIRE_MAX];
    size_t topic_len, body_len;
    rc = em_topic_build(mgr->prefix, dev->id, EM_TOPIC_COMMAND, topic, sizeof(topic), &topic_len);
    if (rc == EM_OK)
        rc = em_command_encode(cmd, body, sizeof(body), &body_len);
    if (rc != EM_OK)
        return em_error_set(err, EM_ERR_INTERNAL, EM_SEV_HIGH, NULL, "cannot encode the command");

    int qos = mgr->opts.command_qos;
    /* Count the acknowledgement as pending before publishing: the broker may
     * acknowledge before em_mqtt_publish returns. */
    if (qos > 0)
        atomic_fetch_add(&mgr->pending_acks, 1);
    /* The acknowledgement cannot be reported before the lock, held here, is
     * released: recording the id after the publish is in time. */
    int mid = 0;
    bool track = qos > 0 && atomic_load_explicit(&mgr->track_acks, memory_order_relaxed);
    rc = em_mqtt_publish(mgr->mqtt, topic, body, body_len, qos, false, track ? &mid : NULL, err);
    if (rc != EM_OK) {
        if (qos > 0)
            atomic_fetch_sub(&mgr->pending_acks, 1);
        /* The transport's message says why; the code says what it means
         * for the caller: the command was not sent. */
        if (rc != EM_ERR_NOT_CONNECTED) {
            rc = EM_ERR_COMMAND_FAILED;
            if (err != NULL)
                err->code = rc;
        }
        em_error_set_device(err, dev->id);
        return rc;
    }
    if (track && mid > 0 && mid <= UINT16_MAX)
        (void)em__acks_put(&mgr->acks, (uint16_t)mid, cmd, dev->id);
    em__window_allow(win, now, (int64_t)mgr->opts.rate_limit_window_s * 1000, NULL);
    mgr->stats.commands_sent++;
    if (mgr->ncbs > 0) {
        em_event_t ev = {
            .type = EM_EVENT_COMMAND_SENT, .device_id = dev->id, .device = dev, .command = cmd};
        em__manager_emit(mgr, &ev);
    }
    return EM_OK;
}

/* EM_OK when commands can be published now. Lock held. */
static em_err_t check_connected(em_manager_t *mgr, em_error_t *err)
{
    if (mgr->mqtt != NULL && em_mqtt_is_connected(mgr->mqtt))
        return EM_OK;
    return em_error_set(err, EM_ERR_NOT_CONNECTED, EM_SEV_MEDIUM, NULL,
                        "not connected to the broker");
}

static size_t payload_len(const char *payload)
{
    return payload == NULL ? 0 : strlen(payload);
}

/* Sends one command; its request id is preset (when not NULL) or new, and
 * copied to request_id (when not NULL). */
static em_err_t send_one(em_manager_t *mgr, const char *id, em_command_type_t type,
                         const char *payload, const char *preset, char *request_id, em_error_t *err)
{
    em_command_t cmd;
    em_err_t rc = em_command_init(&cmd, type, payload, payload_len(payload), err);
    if (rc == EM_OK && preset != NULL) {
        size_t n = strnlen(preset, EM_REQUEST_ID_MAX + 1);
        memcpy(cmd.request_id, preset, n);
        cmd.request_id[n] = '\0';
    }
    em_manager_lock(mgr);
    if (rc != EM_OK) {
        mgr->stats.commands_invalid++;
        em_error_set_device(err, id);
        em_manager_unlock(mgr);
        return rc;
    }
    em_device_t *dev = id != NULL ? em_registry_get(mgr->reg, id) : NULL;
    if (dev == NULL) {
        rc = em_error_set(err, EM_ERR_DEVICE_NOT_FOUND, EM_SEV_LOW, "id", "no device with this id");
        em_error_set_device(err, id);
    } else if ((rc = check_connected(mgr, err)) != EM_OK) {
        em_error_set_device(err, id);
    } else {
        rc = publish_one(mgr, dev, &cmd, err);
    }
    if (rc == EM_OK) {
        if (request_id != NULL)
            memcpy(request_id, cmd.request_id, strlen(cmd.request_id) + 1);
        em_log_field_t f[] = {EM_LOG_STR("device", id),
                              EM_LOG_STR("command", em_command_type_name(type))};
        em_log(EM_LOG_INFO, MODULE, cmd.request_id, "command sent", f, 2);
    }
    em_manager_unlock(mgr);
    em_command_cleanup(&cmd);
    return rc;
}

em_err_t em_manager_send_command(em_manager_t *mgr, const char *id, em_command_type_t type,
                                 const char *payload, char *request_id, em_error_t *err)
{
    return send_one(mgr, id, type, payload, NULL, request_id, err);
}

em_err_t em_manager_send_command_as(em_manager_t *mgr, const char *id, em_command_type_t type,
                                    const char *payload, const char *request_id, em_error_t *err)
{
    size_t n = request_id == NULL ? 0 : strnlen(request_id, EM_REQUEST_ID_MAX + 1);
    bool ok = n > 0 && n <= EM_REQUEST_ID_MAX;
    for (size_t i = 0; ok && i < n; i++) {
        char c = request_id[i];
        ok = (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
             c == '_' || c == '-';
    }
    if (!ok) {
        em_manager_lock(mgr);
        mgr->stats.commands_invalid++;
        em_manager_unlock(mgr);
        em_error_set(err, EM_ERR_VALIDATION, EM_SEV_LOW, "requestId",
                     "must be 1-%d characters of A-Z a-z 0-9 _ -", EM_REQUEST_ID_MAX);
        em_error_set_device(err, id);
        return EM_ERR_VALIDATION;
    }
    return send_one(mgr, id, type, payload, request_id, NULL, err);
}

/* Request ids drawn at once for this many devices of a group: one call to
 * the CSPRNG instead of one per device (each call costs more than the rest of
 * preparing a command). */
#define ID_POOL_DEVICES 16

struct group_send {
    em_manager_t *mgr;
    em_command_t *cmd;
    size_t sent;
    size_t skipped;
    em_err_t first_error;
    em_error_t *err;
    unsigned char pool[ID_POOL_DEVICES * EM__REQUEST_ID_BYTES]; /* wiped after use */
    size_t pool_left;                                           /* ids left in pool */
};

/* The next request id of a group send, from the pool. */
static bool next_request_id(struct group_send *g, char *buf)
{
    if (g->pool_left == 0) {
        if (RAND_bytes(g->pool, (int)sizeof(g->pool)) != 1)
            return false;
        g->pool_left = ID_POOL_DEVICES;
    }
    g->pool_left--;
    em__request_id_format(g->pool + g->pool_left * EM__REQUEST_ID_BYTES, buf);
    return true;
}

static int group_send_one(em_device_t *dev, void *ud)
{
    struct group_send *g = ud;
    em_error_t local;
    /* Every device gets its own requestId, so that its answer can be matched
     * and a replay of one device's command is useless to another. */
    if (!next_request_id(g, g->cmd->request_id)) {
        g->first_error = em_error_set(g->err, EM_ERR_INTERNAL, EM_SEV_HIGH, NULL,
                                      "no randomness for request ids");
        return 1;
    }
    em_err_t rc = publish_one(g->mgr, dev, g->cmd, &local);
    if (rc == EM_OK) {
        g->sent++;
        return 0;
    }
    if (rc == EM_ERR_RATE_LIMIT_EXCEEDED) {
        g->skipped++;
        if (g->first_error == EM_OK) {
            g->first_error = rc;
            if (g->err != NULL)
                *g->err = local;
        }
        return 0;
    }
    g->first_error = rc;
    if (g->err != NULL)
        *g->err = local;
    return 1; /* the connection failed: stop, the rest would fail too */
}

em_err_t em_manager_send_group_command(em_manager_t *mgr, const char *group, em_command_type_t type,
                                       const char *payload, size_t *sent, size_t *skipped,
                                       em_error_t *err)
{
    if (sent != NULL)
        *sent = 0;
    if (skipped != NULL)
        *skipped = 0;
    em_command_t cmd;
    em_err_t rc = em_command_init(&cmd, type, payload, payload_len(payload), err);
    em_manager_lock(mgr);
    if (rc != EM_OK) {
        mgr->stats.commands_invalid++;
        em_manager_unlock(mgr);
        return rc;
    }
    if (group == NULL || !em_registry_group_exists(mgr->reg, group))
        rc = em_error_set(err, EM_ERR_GROUP_NOT_FOUND, EM_SEV_LOW, "group",
                          "no group with this name");
    else
        rc = check_connected(mgr, err);
    if (rc == EM_OK) {
        struct group_send g = {.mgr = mgr, .cmd = &cmd, .first_error = EM_OK, .err = err};
        em_registry_group_foreach(mgr->reg, group, group_send_one, &g);
        /* Do not leave unused CSPRNG output on the stack. */
        OPENSSL_cleanse(g.pool, sizeof(g.pool));
        rc = g.first_error;
        if (sent != NULL)
            *sent = g.sent;
        if (skipped != NULL)
            *skipped = g.skipped;
        em_log_field_t f[] = {EM_LOG_STR("group", group),
                              EM_LOG_STR("command", em_command_type_name(type)),
                              EM_LOG_INT("sent", g.sent), EM_LOG_INT("skipped", g.skipped)};
        em_log(EM_LOG_INFO, MODULE, NULL, "group command sent", f, 4);
    }
    em_manager_unlock(mgr);
    em_command_cleanup(&cmd);
    return rc;
}

/* Writes {"duration":N} into buf, or nothing for 0. */
static const char *sleep_payload(uint32_t duration_s, char *buf, size_t size)
{
    if (duration_s == 0)
        return NULL;
    snprintf(buf, size, "{\"duration\":%u}", duration_s);
    return buf;
}

em_err_t em_manager_sleep_device(em_manager_t *mgr, const char *id, uint32_t duration_s,
                                 em_error_t *err)
{
    char buf[32];
    return em_manager_send_command(mgr, id, EM_CMD_SLEEP,
                                   sleep_payload(duration_s, buf, sizeof(buf)), NULL, err);
}

em_err_t em_manager_wake_device(em_manager_t *mgr, const char *id, em_error_t *err)
{
    return em_manager_send_command(mgr, id, EM_CMD_WAKE, NULL, NULL, err);
}

em_err_t em_manager_sleep_group(em_manager_t *mgr, const char *group, uint32_t duration_s,
                                em_error_t *err)
{
    char buf[32];
    return em_manager_send_group_command(
        mgr, group, EM_CMD_SLEEP, sleep_payload(duration_s, buf, sizeof(buf)), NULL, NULL, err);
}

em_err_t em_manager_wake_group(em_manager_t *mgr, const char *group, em_error_t *err)
{
    return em_manager_send_group_command(mgr, group, EM_CMD_WAKE, NULL, NULL, NULL, err);
}
