/*
 * emiot - routes_commands.c: commands to a device or a group, and their
 * lifecycle (docs/API.md, "Commands").
 *
 * A command is stored before it is sent, under a request id chosen here
 * (em_request_id_new), so that the device's answer on P<id>/response, which
 * may arrive before this handler returns, always finds its command. Then the
 * manager validates, rate-limits and publishes it under that id; the stored
 * command moves to sent, or to failed with the reason as its response
 * message. A refusal by the manager is answered with its status (429 rate
 * limited, 503 not connected) and the failed command stays on record.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <event2/http.h>
#include <event2/keyvalq_struct.h>

#include "api/api_internal.h"
#include "api/encode.h"
#include "emiot/clock.h"

#define TTL_MIN_S 10
#define TTL_MAX_S 86400

/* How long a failed send waits for its reason to be committed before the
 * answer (the writer commits within batch_interval_ms; this only bounds a
 * stalled database). */
#define FAIL_FLUSH_MS 5000

/* ---- the request body -------------------------------------------------- */

typedef struct cmd_req {
    em_command_type_t type;
    char *payload; /* compact JSON object, or NULL; cJSON_free */
    int64_t ttl_s;
} cmd_req_t;

/* Reads and validates {"type","payload"?,"ttl"?}; answers 400 and returns
 * false when something is wrong. */
static bool read_command(em__api_req_t *r, cmd_req_t *out)
{
    static const char *const fields[] = {"type", "payload", "ttl", NULL};
    memset(out, 0, sizeof(*out));
    const em_api_options_t *opts = em__api_options(r->api);
    out->ttl_s = opts != NULL && opts->command_ttl_s > 0 ? opts->command_ttl_s : 300;
    cJSON *body = em__routes_body(r);
    if (body == NULL)
        return false;
    bool ok = false;
    em_error_t e;
    em_error_clear(&e);
    em_err_t rc;
    if (!em__api_only_fields(r, body, fields))
        goto out;

    const char *type = NULL;
    if (!em__routes_req_string(r, body, "type", &type))
        goto out;
    if (em_command_type_parse(type, strlen(type), &out->type, &e) != EM_OK) {
        em__api_error(r, 400, "validation",
                      "type: must be sleep, wake, restart, update, set_reporting_interval, "
                      "get_status, configure or reset",
                      NULL);
        goto out;
    }

    const cJSON *payload = cJSON_GetObjectItemCaseSensitive(body, "payload");
    if (payload != NULL && !cJSON_IsNull(payload)) {
        if (!cJSON_IsObject(payload)) {
            em__api_error(r, 400, "validation", "payload: must be an object", NULL);
            goto out;
        }
        out->payload = cJSON_PrintUnformatted(payload);
        if (out->payload == NULL) {
            em__routes_oom(r);
            goto out;
        }
    }
    size_t plen = out->payload != NULL ? strlen(out->payload) : 0;
    if ((rc = em_command_validate(out->type, out->payload, plen, &e)) != EM_OK) {
        em__routes_prefix_field(&e, "payload");
        em__api_error_from(r, rc == EM_ERR_MESSAGE_FORMAT ? EM_ERR_VALIDATION : rc, &e);
        goto out;
    }

    const cJSON *ttl = cJSON_GetObjectItemCaseSensitive(body, "ttl");
    if (ttl != NULL && !cJSON_IsNull(ttl)) {
        double v = cJSON_IsNumber(ttl) ? ttl->valuedouble : -1;
        if (!cJSON_IsNumber(ttl) || v < TTL_MIN_S || v > TTL_MAX_S || v != (double)(int64_t)v) {
            em__api_error(r, 400, "validation", "ttl: must be an integer of 10-86400 seconds",
                          NULL);
            goto out;
        }
        out->ttl_s = (int64_t)v;
    }
    ok = true;
out:
    cJSON_Delete(body);
    if (!ok) {
        cJSON_free(out->payload);
        out->payload = NULL;
    }
    return ok;
}

/* ---- sending one ----------------------------------------------------- */

/* Records why a stored command could not be sent: failed, with the reason
 * as its response message. */
static void record_failure(em__api_req_t *r, em_store_command_t *c, em_err_t why,
                           const em_error_t *e, bool wait)
{
    em_response_t resp;
    memset(&resp, 0, sizeof(resp));
    snprintf(resp.request_id, sizeof(resp.request_id), "%s", c->request_id);
    resp.success = false;
    resp.timestamp_ms = r->now_ms;
    snprintf(resp.message, sizeof(resp.message), "%s: %s", em_err_name(why),
             e != NULL && e->message[0] != '\0' ? e->message : em_strerror(why));
    c->state = EM_CMD_FAILED;
    c->updated_at_ms = r->now_ms;
    c->has_response = true;
    c->response_success = false;
    snprintf(c->response_message, sizeof(c->response_message), "%s", resp.message);
    /* The queue carries the message; a synchronous state change is the
     * fallback when it cannot, so the command is never left "queued". */
    if (em_store_enqueue_response(r->store, c->device_id, &resp, r->now_ms, NULL) != EM_OK ||
        (wait && em_store_flush(r->store, FAIL_FLUSH_MS, NULL) != EM_OK))
        (void)em_store_command_set_state(r->store, c->request_id, EM_CMD_FAILED, r->now_ms, NULL);
}

/*
 * Stores and sends one command to device id. *c receives the command as it
 * now is. Returns EM_OK when it was sent, else the reason (with e filled);
 * EM_ERR_EXISTS etc. from the store mean nothing was stored (*stored false).
 */
static em_err_t send_one(em__api_req_t *r, const char *id, const char *group, const cmd_req_t *q,
                         em_store_command_t *c, bool *stored, bool sync, em_error_t *e)
{
    *stored = false;
    memset(c, 0, sizeof(*c));
    if (em_request_id_new(c->request_id, sizeof(c->request_id)) != EM_OK)
        return em_error_set(e, EM_ERR_INTERNAL, EM_SEV_HIGH, NULL, "no randomness");
    snprintf(c->device_id, sizeof(c->device_id), "%s", id);
    if (group != NULL)
        snprintf(c->group, sizeof(c->group), "%s", group);
    c->type = q->type;
    c->payload_json = q->payload;
    c->state = EM_CMD_QUEUED;
    snprintf(c->actor, sizeof(c->actor), "%s", r->who.actor);
    c->created_at_ms = r->now_ms;
    c->updated_at_ms = r->now_ms;
    c->expires_at_ms = r->now_ms + q->ttl_s * 1000;
    em_err_t rc = em_store_command_insert(r->store, c, e);
    if (rc != EM_OK)
        return rc;
    *stored = true;
    rc = em_manager_send_command_as(r->mgr, id, q->type, q->payload, c->request_id, e);
    if (rc != EM_OK) {
        record_failure(r, c, rc, e, sync);
        return rc;
    }
    c->state = EM_CMD_SENT;
    c->updated_at_ms = r->now_ms;
    em_error_t ignored;
    /* The device may already have answered (the network thread queued its
     * response): a forward-only store ignores this then. */
    if (sync)
        (void)em_store_command_set_state(r->store, c->request_id, EM_CMD_SENT, r->now_ms, &ignored);
    else
        (void)em_store_enqueue_command_state(r->store, c->request_id, EM_CMD_SENT, r->now_ms,
                                             &ignored);
    return EM_OK;
}

/* 429 from the manager's per-device limiter: its window is a minute by
 * default, which the client may wait at most. */
static void add_retry_after(em__api_req_t *r)
{
    evhttp_add_header(evhttp_request_get_output_headers(r->req), "Retry-After", "60");
}

/* ---- POST /api/v1/devices/{id}/commands ------------------------------ */

static void device_command(em__api_req_t *r)
{
    static const char *const no_params[] = {NULL};
    if (!em__api_only_params(r, no_params))
        return;
    const char *id = r->captures[0];
    cmd_req_t q;
    if (!read_command(r, &q))
        return;
    em_store_device_t dev;
    if (!em__routes_device_get(r, id, &dev))
        goto out;
    if (!dev.enabled) {
        em__api_error(r, 409, "invalid_state", "id: the device is disabled", NULL);
        goto out;
    }
    em_store_command_t c;
    bool stored = false;
    em_error_t e;
    em_error_clear(&e);
    em_err_t rc = send_one(r, id, NULL, &q, &c, &stored, true, &e);
    if (stored)
        em__api_audit(r, "command_sent", id, "command %s %s to %s: %s",
                      em_command_type_name(q.type), c.request_id, id,
                      rc == EM_OK ? "sent" : em_err_name(rc));
    if (rc != EM_OK) {
        if (rc == EM_ERR_RATE_LIMIT_EXCEEDED)
            add_retry_after(r);
        em__api_error_from(r, rc, &e);
        goto out;
    }
    cJSON *o = em__enc_command(&c);
    if (o == NULL)
        em__routes_oom(r);
    else
        em__api_reply(r, 202, o, NULL);
out:
    cJSON_free(q.payload);
}

/* ---- POST /api/v1/groups/{name}/commands ----------------------------- */

typedef struct member_ids {
    char (*ids)[EM_DEVICE_ID_MAX + 1];
    size_t n;
    size_t cap;
    bool oom;
} member_ids_t;

static int collect_id(em_device_t *dev, void *userdata)
{
    member_ids_t *m = userdata;
    if (m->n == m->cap) {
        size_t cap = m->cap == 0 ? 64 : m->cap * 2;
        if (cap > SIZE_MAX / sizeof(*m->ids)) {
            m->oom = true;
            return 1;
        }
        void *p = realloc(m->ids, cap * sizeof(*m->ids));
        if (p == NULL) {
            m->oom = true;
            return 1;
        }
        m->ids = p;
        m->cap = cap;
    }
    memcpy(m->ids[m->n++], dev->id, sizeof(dev->id));
    return 0;
}

static void group_command(em__api_req_t *r)
{
    static const char *const no_params[] = {NULL};
    if (!em__api_only_params(r, no_params))
        return;
    const char *group = r->captures[0];
    cmd_req_t q;
    if (!read_command(r, &q))
        return;
    member_ids_t m = {NULL, 0, 0, false};
    cJSON *list = NULL, *o = NULL;
    if (!em__routes_group_exists(r, group))
        goto out;
    if (!em_manager_is_connected(r->mgr)) {
        /* Nothing is stored: a whole group of commands that could not even
         * be tried is noise in the record. */
        em__api_error(r, 503, "not_connected", em_strerror(EM_ERR_NOT_CONNECTED), NULL);
        goto out;
    }
    /* The registry's members are the group's enabled devices; copy their
     * ids so that sending (which takes the manager's lock per device) does
     * not run under one long lock. */
    em_manager_lock(r->mgr);
    em_err_t rc = em_registry_group_foreach(em_manager_registry(r->mgr), group, collect_id, &m);
    em_manager_unlock(r->mgr);
    if (m.oom) {
        em__routes_oom(r);
        goto out;
    }
    (void)rc; /* GROUP_NOT_FOUND: the registry has no enabled member */

    list = cJSON_CreateArray();
    o = cJSON_CreateObject();
    if (list == NULL || o == NULL) {
        em__routes_oom(r);
        goto out;
    }
    size_t sent = 0, skipped = 0;
    em_err_t first = EM_OK;
    em_error_t first_e;
    em_error_clear(&first_e);
    for (size_t i = 0; i < m.n; i++) {
        em_store_command_t c;
        bool stored = false;
        em_error_t e;
        em_error_clear(&e);
        rc = send_one(r, m.ids[i], group, &q, &c, &stored, false, &e);
        if (!stored) {
            /* The store failed: stop, and say so. */
            first = rc;
            first_e = e;
            break;
        }
        if (rc == EM_OK)
            sent++;
        else
            skipped++;
        cJSON *item = cJSON_CreateObject();
        const char *state = em_command_state_name(c.state);
        if (item == NULL || cJSON_AddStringToObject(item, "requestId", c.request_id) == NULL ||
            cJSON_AddStringToObject(item, "deviceId", c.device_id) == NULL ||
            cJSON_AddStringToObject(item, "state", state != NULL ? state : "failed") == NULL ||
            !cJSON_AddItemToArray(list, item)) {
            cJSON_Delete(item);
            first = EM_ERR_NOMEM;
            break;
        }
    }
    /* States were queued; commit them so that the commands read back as
     * answered here. */
    (void)em_store_flush(r->store, FAIL_FLUSH_MS, NULL);
    em__api_audit(r, "group_command_sent", NULL, "command %s to group %s: %zu sent, %zu skipped",
                  em_command_type_name(q.type), group, sent, skipped);
    if (first == EM_ERR_NOMEM) {
        em__routes_oom(r);
        goto out;
    }
    if (first != EM_OK) {
        em__api_error_from(r, first, &first_e);
        goto out;
    }
    if (cJSON_AddNumberToObject(o, "sent", (double)sent) == NULL ||
        cJSON_AddNumberToObject(o, "skipped", (double)skipped) == NULL ||
        !cJSON_AddItemToObject(o, "commands", list)) {
        em__routes_oom(r);
        goto out;
    }
    list = NULL;
    em__api_reply(r, 202, o, NULL);
    o = NULL;
out:
    cJSON_Delete(list);
    cJSON_Delete(o);
    free(m.ids);
    cJSON_free(q.payload);
}

/* ---- reading commands ------------------------------------------------- */

static int command_row(const em_store_command_t *c, void *userdata)
{
    return em__routes_rows_add(userdata, em__enc_command(c)) ? 0 : 1;
}

/* A request id as emiot or a device may spell one: 1-64 of [A-Za-z0-9_-]. */
static bool request_id_ok(const char *s)
{
    size_t n = strlen(s);
    if (n == 0 || n > EM_REQUEST_ID_MAX)
        return false;
    for (size_t i = 0; i < n; i++) {
        char c = s[i];
        if (!((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
              c == '_' || c == '-'))
            return false;
    }
    return true;
}

static void get_command(em__api_req_t *r)
{
    static const char *const no_params[] = {NULL};
    if (!em__api_only_params(r, no_params))
        return;
    const char *rid = r->captures[0];
    if (!request_id_ok(rid)) {
        em__api_error(r, 404, "not_found", "no such command", NULL);
        return;
    }
    em__routes_rows_t w = {cJSON_CreateArray(), false};
    if (w.arr == NULL) {
        em__routes_oom(r);
        return;
    }
    em_error_t e;
    em_error_clear(&e);
    em_err_t rc = em_store_command_get(r->store, rid, command_row, &w, &e);
    cJSON *c = rc == EM_OK && !w.oom ? cJSON_DetachItemFromArray(w.arr, 0) : NULL;
    cJSON_Delete(w.arr);
    if (rc == EM_ERR_NOT_FOUND) {
        em__api_error(r, 404, "not_found", "no such command", NULL);
    } else if (rc != EM_OK) {
        em__api_error_from(r, rc, &e);
    } else if (c == NULL) {
        em__routes_oom(r);
    } else {
        em__api_reply(r, 200, c, NULL);
    }
}

/* Lists commands newest first with the filter's device and group set; reads
 * state and the range from the query. */
static void list_with(em__api_req_t *r, em_store_command_filter_t *f)
{
    const char *state = NULL;
    if (!em__api_query_str(r, "state", 16, &state) || !em__routes_range(r, false, true, &f->range))
        return;
    f->range.descending = true;
    f->state = -1;
    if (state != NULL) {
        em_command_state_t s;
        if (em_command_state_parse(state, &s) != EM_OK) {
            em__api_error(r, 400, "validation",
                          "state: must be queued, sent, acknowledged, succeeded, failed or "
                          "expired",
                          NULL);
            return;
        }
        f->state = (int)s;
    }
    em__routes_rows_t w = {cJSON_CreateArray(), false};
    if (w.arr == NULL) {
        em__routes_oom(r);
        return;
    }
    em_error_t e;
    em_error_clear(&e);
    em_err_t rc = em_store_command_list(r->store, f, command_row, &w, &e);
    em__routes_answer_rows(r, &w, rc, &e);
}

static void list_commands(em__api_req_t *r)
{
    static const char *const params[] = {"device", "group", "state", "from", "to", "limit", NULL};
    if (!em__api_only_params(r, params))
        return;
    em_store_command_filter_t f;
    memset(&f, 0, sizeof(f));
    const char *device = NULL, *group = NULL;
    if (!em__api_query_str(r, "device", EM_DEVICE_ID_MAX, &device) ||
        !em__api_query_str(r, "group", EM_GROUP_NAME_MAX, &group))
        return;
    em_error_t e;
    em_error_clear(&e);
    if (device != NULL && em_device_id_validate(device, strlen(device), &e) != EM_OK) {
        snprintf(e.field, sizeof(e.field), "device");
        em__api_error_from(r, EM_ERR_VALIDATION, &e);
        return;
    }
    if (group != NULL && em_group_name_validate(group, strlen(group), &e) != EM_OK) {
        snprintf(e.field, sizeof(e.field), "group");
        em__api_error_from(r, EM_ERR_VALIDATION, &e);
        return;
    }
    f.device_id = device;
    f.group = group;
    list_with(r, &f);
}

static void device_commands(em__api_req_t *r)
{
    static const char *const params[] = {"state", "from", "to", "limit", NULL};
    if (!em__api_only_params(r, params))
        return;
    const char *id = r->captures[0];
    if (!em__routes_device_get(r, id, NULL))
        return;
    em_store_command_filter_t f;
    memset(&f, 0, sizeof(f));
    f.device_id = id;
    list_with(r, &f);
}

/* ---- the table ------------------------------------------------------- */

static const em__api_route_t routes[] = {
    {EVHTTP_REQ_POST, "/api/v1/devices/{id}/commands", EM_ROLE_OPERATOR, EM__ROUTE_BODY,
     device_command},
    {EVHTTP_REQ_GET, "/api/v1/devices/{id}/commands", EM_ROLE_VIEWER, EM__ROUTE_DEVICE_OK,
     device_commands},
    {EVHTTP_REQ_POST, "/api/v1/groups/{name}/commands", EM_ROLE_OPERATOR, EM__ROUTE_BODY,
     group_command},
    {EVHTTP_REQ_GET, "/api/v1/commands/{requestId}", EM_ROLE_VIEWER, 0, get_command},
    {EVHTTP_REQ_GET, "/api/v1/commands", EM_ROLE_VIEWER, 0, list_commands},
};

const em__api_route_table_t em__api_routes_commands = {routes, sizeof(routes) / sizeof(routes[0])};
