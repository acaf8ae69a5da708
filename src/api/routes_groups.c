/*
 * emiot - routes_groups.c: groups, their members, statistics and energy
 * (docs/API.md, "Groups").
 *
 * The store holds groups and memberships for every device; the manager's
 * registry holds them for the devices it has registered (enabled ones). As
 * for devices, a write goes to the store first and then to the manager, and
 * the store step is undone when the manager step fails. Statistics are the
 * registry's (live status); energy comes from the store's rollups.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <event2/http.h>

#include "api/api_internal.h"
#include "api/encode.h"

static const char *const no_params[] = {NULL};

/* Most member ids one GET /groups/{name} lists; a larger group is shown cut
 * with "membersTruncated":true (the device list with ?group= pages through
 * all of them). */
#define GROUP_MEMBERS_SHOWN 10000

/* ---- GET /api/v1/groups ------------------------------------------------ */

static int group_row(const char *name, size_t members, int64_t created_at_ms, void *userdata)
{
    em__routes_rows_t *w = userdata;
    cJSON *o = cJSON_CreateObject();
    if (o == NULL) {
        w->oom = true;
        return 1;
    }
    cJSON *t = em__enc_time(created_at_ms);
    if (cJSON_AddStringToObject(o, "name", name) == NULL ||
        cJSON_AddNumberToObject(o, "members", (double)members) == NULL || t == NULL ||
        !cJSON_AddItemToObject(o, "createdAt", t)) {
        cJSON_Delete(t);
        cJSON_Delete(o);
        w->oom = true;
        return 1;
    }
    return em__routes_rows_add(w, o) ? 0 : 1;
}

static void list_groups(em__api_req_t *r)
{
    if (!em__api_only_params(r, no_params))
        return;
    em__routes_rows_t w = {cJSON_CreateArray(), false};
    if (w.arr == NULL) {
        em__routes_oom(r);
        return;
    }
    em_error_t e;
    em_error_clear(&e);
    em_err_t rc = em_store_group_list(r->store, group_row, &w, &e);
    em__routes_answer_rows(r, &w, rc, &e);
}

/* ---- POST /api/v1/groups ---------------------------------------------- */

static void create_group(em__api_req_t *r)
{
    static const char *const fields[] = {"name", NULL};
    if (!em__api_only_params(r, no_params))
        return;
    cJSON *body = em__routes_body(r);
    if (body == NULL)
        return;
    em_error_t e;
    em_error_clear(&e);
    em_err_t rc;
    if (!em__api_only_fields(r, body, fields))
        goto out;
    const char *name = NULL;
    if (!em__routes_req_string(r, body, "name", &name))
        goto out;
    if ((rc = em_group_name_validate(name, strlen(name), &e)) != EM_OK) {
        snprintf(e.field, sizeof(e.field), "name"); /* the body's member, not "group" */
        em__api_error_from(r, rc, &e);
        goto out;
    }
    if ((rc = em_store_group_insert(r->store, name, r->now_ms, &e)) != EM_OK) {
        if (rc == EM_ERR_EXISTS)
            em__api_error(r, 409, "already_exists", "name: a group with this name exists", NULL);
        else
            em__api_error_from(r, rc, &e);
        goto out;
    }
    rc = em_manager_create_group(r->mgr, name, &e);
    if (rc != EM_OK && rc != EM_ERR_EXISTS) {
        (void)em_store_group_delete(r->store, name, NULL);
        em__api_error_from(r, rc, &e);
        goto out;
    }
    em__api_audit(r, "group_created", NULL, "group %s created", name);
    cJSON *o = cJSON_CreateObject();
    cJSON *t = em__enc_time(r->now_ms);
    if (o == NULL || t == NULL || cJSON_AddStringToObject(o, "name", name) == NULL ||
        cJSON_AddNumberToObject(o, "members", 0) == NULL ||
        !cJSON_AddItemToObject(o, "createdAt", t)) {
        cJSON_Delete(t);
        cJSON_Delete(o);
        em__routes_oom(r);
        goto out;
    }
    em__api_reply(r, 201, o, NULL);
out:
    cJSON_Delete(body);
}

/* ---- GET /api/v1/groups/{name} ---------------------------------------- */

typedef struct members {
    cJSON *arr;
    size_t n;
    char last[EM_DEVICE_ID_MAX + 1];
    bool oom;
} members_t;

static int member_row(const em_store_device_t *dev, void *userdata)
{
    members_t *m = userdata;
    cJSON *s = cJSON_CreateString(dev->id);
    if (s == NULL || !cJSON_AddItemToArray(m->arr, s)) {
        cJSON_Delete(s);
        m->oom = true;
        return 1;
    }
    m->n++;
    snprintf(m->last, sizeof(m->last), "%s", dev->id);
    return 0;
}

/* The statistics of a group the store knows: the registry's, or all zero
 * when the registry has not heard of the group. */
static cJSON *stats_json(em__api_req_t *r, const char *name, em_err_t *rc, em_error_t *e)
{
    em_group_stats_t s;
    memset(&s, 0, sizeof(s));
    *rc = em_manager_group_stats(r->mgr, name, &s, e);
    if (*rc == EM_ERR_GROUP_NOT_FOUND) {
        memset(&s, 0, sizeof(s));
        *rc = EM_OK;
    }
    if (*rc != EM_OK)
        return NULL;
    return em__enc_group_stats(&s);
}

static void get_group(em__api_req_t *r)
{
    if (!em__api_only_params(r, no_params))
        return;
    const char *name = r->captures[0];
    if (!em__routes_group_exists(r, name))
        return;
    members_t m = {cJSON_CreateArray(), 0, "", false};
    if (m.arr == NULL) {
        em__routes_oom(r);
        return;
    }
    em_error_t e;
    em_error_clear(&e);
    em_err_t rc = EM_OK;
    bool truncated = false;
    /* Page through the members in id order, a store page at a time. */
    for (;;) {
        size_t before = m.n;
        em_store_device_filter_t f = {.group = name,
                                      .type = -1,
                                      .after = m.n > 0 ? m.last : NULL,
                                      .limit = EM_STORE_PAGE_MAX};
        rc = em_store_device_list(r->store, &f, member_row, &m, NULL, &e);
        if (rc != EM_OK || m.oom || m.n - before < EM_STORE_PAGE_MAX)
            break;
        if (m.n >= GROUP_MEMBERS_SHOWN) {
            truncated = true;
            break;
        }
    }
    if (rc != EM_OK || m.oom) {
        cJSON_Delete(m.arr);
        if (rc != EM_OK)
            em__api_error_from(r, rc, &e);
        else
            em__routes_oom(r);
        return;
    }
    cJSON *stats = stats_json(r, name, &rc, &e);
    if (stats == NULL) {
        cJSON_Delete(m.arr);
        if (rc != EM_OK)
            em__api_error_from(r, rc, &e);
        else
            em__routes_oom(r);
        return;
    }
    cJSON *o = cJSON_CreateObject();
    if (o == NULL || cJSON_AddStringToObject(o, "name", name) == NULL ||
        !cJSON_AddItemToObject(o, "members", m.arr)) {
        cJSON_Delete(o);
        cJSON_Delete(m.arr);
        cJSON_Delete(stats);
        em__routes_oom(r);
        return;
    }
    if (!cJSON_AddItemToObject(o, "stats", stats)) {
        cJSON_Delete(stats);
        cJSON_Delete(o);
        em__routes_oom(r);
        return;
    }
    if (truncated && cJSON_AddTrueToObject(o, "membersTruncated") == NULL) {
        cJSON_Delete(o);
        em__routes_oom(r);
        return;
    }
    em__api_reply(r, 200, o, NULL);
}

/* ---- DELETE /api/v1/groups/{name} ------------------------------------- */

static void delete_group(em__api_req_t *r)
{
    if (!em__api_only_params(r, no_params))
        return;
    const char *name = r->captures[0];
    if (!em__routes_group_exists(r, name))
        return;
    em_error_t e;
    em_error_clear(&e);
    em_err_t rc = em_store_group_delete(r->store, name, &e);
    if (rc != EM_OK) {
        if (rc == EM_ERR_GROUP_NOT_FOUND)
            em__api_error(r, 404, "group_not_found", "no such group", NULL);
        else
            em__api_error_from(r, rc, &e);
        return;
    }
    /* The devices stay; only the group goes. A registry that never heard of
     * the group has nothing to remove. */
    (void)em_manager_remove_group(r->mgr, name, NULL);
    em__api_audit(r, "group_deleted", NULL, "group %s deleted", name);
    em__api_reply(r, 200, NULL, NULL);
}

/* ---- PUT, DELETE /api/v1/groups/{name}/members/{id} ------------------- */

/* True when the manager has registered the device (it is enabled). */
static bool registered(em_manager_t *mgr, const char *id)
{
    em_manager_lock(mgr);
    bool found = em_registry_get(em_manager_registry(mgr), id) != NULL;
    em_manager_unlock(mgr);
    return found;
}

static void add_member(em__api_req_t *r)
{
    if (!em__api_only_params(r, no_params))
        return;
    const char *name = r->captures[0], *id = r->captures[1];
    if (!em__routes_group_exists(r, name) || !em__routes_device_get(r, id, NULL))
        return;
    em_error_t e;
    em_error_clear(&e);
    em_err_t rc = em_store_member_add(r->store, name, id, &e);
    if (rc != EM_OK) {
        em__api_error_from(r, rc, &e);
        return;
    }
    /* A disabled device is not in the registry: it joins the group there
     * when it is enabled again (from the stored memberships). */
    if (registered(r->mgr, id)) {
        rc = em_manager_create_group(r->mgr, name, &e);
        if (rc == EM_OK || rc == EM_ERR_EXISTS)
            rc = em_manager_add_to_group(r->mgr, id, name, &e);
        if (rc != EM_OK) {
            (void)em_store_member_remove(r->store, name, id, NULL);
            em__api_error_from(r, rc, &e);
            return;
        }
    }
    em__api_audit(r, "group_member_added", id, "device %s added to group %s", id, name);
    em__api_reply(r, 200, NULL, NULL);
}

static void remove_member(em__api_req_t *r)
{
    if (!em__api_only_params(r, no_params))
        return;
    const char *name = r->captures[0], *id = r->captures[1];
    if (!em__routes_group_exists(r, name) || !em__routes_device_get(r, id, NULL))
        return;
    em_error_t e;
    em_error_clear(&e);
    em_err_t rc = em_store_member_remove(r->store, name, id, &e);
    if (rc == EM_ERR_DEVICE_NOT_FOUND) {
        em__api_error(r, 404, "not_found", "id: the device is not a member of the group", NULL);
        return;
    }
    if (rc != EM_OK) {
        em__api_error_from(r, rc, &e);
        return;
    }
    /* The registry may not hold the device (disabled) or the membership;
     * either way there is nothing left to remove there. */
    (void)em_manager_remove_from_group(r->mgr, id, name, NULL);
    em__api_audit(r, "group_member_removed", id, "device %s removed from group %s", id, name);
    em__api_reply(r, 200, NULL, NULL);
}

/* ---- GET /api/v1/groups/{name}/stats, /energy -------------------------- */

static void group_stats(em__api_req_t *r)
{
    if (!em__api_only_params(r, no_params))
        return;
    const char *name = r->captures[0];
    if (!em__routes_group_exists(r, name))
        return;
    em_error_t e;
    em_error_clear(&e);
    em_err_t rc = EM_OK;
    cJSON *stats = stats_json(r, name, &rc, &e);
    if (stats == NULL) {
        if (rc != EM_OK)
            em__api_error_from(r, rc, &e);
        else
            em__routes_oom(r);
        return;
    }
    em__api_reply(r, 200, stats, NULL);
}

static int energy_row(const em_store_rollup_t *ru, void *userdata)
{
    return em__routes_rows_add(userdata, em__enc_rollup(ru, true)) ? 0 : 1;
}

static void group_energy(em__api_req_t *r)
{
    static const char *const params[] = {"from", "to", "rollup", "limit", NULL};
    if (!em__api_only_params(r, params))
        return;
    em_store_range_t range;
    if (!em__routes_range(r, false, false, &range))
        return;
    const char *rollup = NULL;
    if (!em__api_query_str(r, "rollup", 8, &rollup))
        return;
    em_rollup_t kind = EM_ROLLUP_HOUR;
    if (rollup != NULL && strcmp(rollup, "day") == 0) {
        kind = EM_ROLLUP_DAY;
    } else if (rollup != NULL && strcmp(rollup, "hour") != 0) {
        em__api_error(r, 400, "validation", "rollup: must be hour or day", NULL);
        return;
    }
    const char *name = r->captures[0];
    if (!em__routes_group_exists(r, name))
        return;
    em__routes_rows_t w = {cJSON_CreateArray(), false};
    if (w.arr == NULL) {
        em__routes_oom(r);
        return;
    }
    em_error_t e;
    em_error_clear(&e);
    em_err_t rc = em_store_rollup_group(r->store, name, kind, &range, energy_row, &w, &e);
    em__routes_answer_rows(r, &w, rc, &e);
}

/* ---- the table ------------------------------------------------------- */

static const em__api_route_t routes[] = {
    {EVHTTP_REQ_GET, "/api/v1/groups", EM_ROLE_VIEWER, 0, list_groups},
    {EVHTTP_REQ_POST, "/api/v1/groups", EM_ROLE_OPERATOR, EM__ROUTE_BODY, create_group},
    {EVHTTP_REQ_GET, "/api/v1/groups/{name}", EM_ROLE_VIEWER, 0, get_group},
    {EVHTTP_REQ_DELETE, "/api/v1/groups/{name}", EM_ROLE_OPERATOR, 0, delete_group},
    {EVHTTP_REQ_PUT, "/api/v1/groups/{name}/members/{id}", EM_ROLE_OPERATOR, 0, add_member},
    {EVHTTP_REQ_DELETE, "/api/v1/groups/{name}/members/{id}", EM_ROLE_OPERATOR, 0, remove_member},
    {EVHTTP_REQ_GET, "/api/v1/groups/{name}/stats", EM_ROLE_VIEWER, 0, group_stats},
    {EVHTTP_REQ_GET, "/api/v1/groups/{name}/energy", EM_ROLE_VIEWER, 0, group_energy},
};

const em__api_route_table_t em__api_routes_groups = {routes, sizeof(routes) / sizeof(routes[0])};
