/*
 * emiot - routes_devices.c: devices, their status, history and telemetry
 * (docs/API.md, "Devices").
 *
 * Two places hold a device. The store is the durable truth: every device with
 * its name, type, configuration, enabled flag and groups. The manager's
 * registry is the live truth for enabled devices: their latest status, and
 * the only place the manager accepts messages from. A disabled device stays
 * in the store and leaves the registry (its messages are ignored from then
 * on); enabling it registers it again with its stored groups.
 *
 * Writes go to the store first and then to the manager; when the manager step
 * fails, the store step is undone and the error is answered, so the two never
 * disagree about what the client was told.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <event2/http.h>

#include "api/api_internal.h"
#include "api/devcache.h"
#include "api/encode.h"
#include "api/mqttcred.h"
#include "emiot/clock.h"

static const char *const no_params[] = {NULL};

/* ---- body fields ------------------------------------------------------- */

/* Decodes "config" (absent or null: *present false). */
static bool opt_config(em__api_req_t *r, const cJSON *obj, bool *present, em_device_config_t *out)
{
    const cJSON *it = cJSON_GetObjectItemCaseSensitive(obj, "config");
    *present = false;
    memset(out, 0, sizeof(*out));
    if (it == NULL || cJSON_IsNull(it))
        return true;
    if (!cJSON_IsObject(it)) {
        em__api_error(r, 400, "validation", "config: must be an object", NULL);
        return false;
    }
    char *text = cJSON_PrintUnformatted(it);
    if (text == NULL) {
        em__routes_oom(r);
        return false;
    }
    em_error_t e;
    em_error_clear(&e);
    em_err_t rc = em_device_config_decode(text, strlen(text), out, &e);
    cJSON_free(text);
    if (rc != EM_OK) {
        /* Name the member inside the body: "config.reportingInterval". */
        em__routes_prefix_field(&e, "config");
        em__api_error_from(r, rc, &e);
        return false;
    }
    *present = true;
    return true;
}

/* ---- reading a device -------------------------------------------------- */

typedef struct names {
    cJSON *arr;
    bool oom;
} names_t;

static int add_name(const char *name, size_t size, void *userdata)
{
    (void)size;
    names_t *n = userdata;
    cJSON *s = cJSON_CreateString(name);
    if (s == NULL || !cJSON_AddItemToArray(n->arr, s)) {
        cJSON_Delete(s);
        n->oom = true;
        return 1;
    }
    return 0;
}

/*
 * The groups and the latest status of a device the manager has registered,
 * read under the manager's lock. *found is false when it is not registered.
 * Returns false when memory ran out.
 */
static bool live_parts(em_manager_t *mgr, const char *id, bool *found, cJSON **groups,
                       cJSON **status)
{
    *found = false;
    *groups = NULL;
    *status = NULL;
    bool ok = true;
    em_manager_lock(mgr);
    em_registry_t *reg = em_manager_registry(mgr);
    em_device_t *d = em_registry_get(reg, id);
    if (d != NULL) {
        *found = true;
        names_t n = {cJSON_CreateArray(), false};
        if (n.arr == NULL) {
            ok = false;
        } else {
            em_registry_device_groups(reg, d, add_name, &n);
            *groups = n.arr;
            ok = !n.oom;
        }
        if (ok && d->status.has != 0) {
            *status = em__enc_status(&d->status);
            ok = *status != NULL;
        }
    }
    em_manager_unlock(mgr);
    if (!ok) {
        cJSON_Delete(*groups);
        cJSON_Delete(*status);
        *groups = NULL;
        *status = NULL;
    }
    return ok;
}

/* The stored groups of a set of devices not in the registry: one pass over
 * the memberships, matched by binary search over the sorted ids. */
typedef struct stored_groups {
    const char **ids; /* sorted */
    cJSON **groups;   /* parallel to ids */
    size_t n;
    bool oom;
} stored_groups_t;

static int cmp_str(const void *a, const void *b)
{
    return strcmp(*(const char *const *)a, *(const char *const *)b);
}

static int collect_member(const char *group, const char *id, void *userdata)
{
    stored_groups_t *sg = userdata;
    const char **hit = bsearch(&id, sg->ids, sg->n, sizeof(*sg->ids), cmp_str);
    if (hit == NULL)
        return 0;
    cJSON *arr = sg->groups[hit - sg->ids];
    cJSON *s = cJSON_CreateString(group);
    if (s == NULL || !cJSON_AddItemToArray(arr, s)) {
        cJSON_Delete(s);
        sg->oom = true;
        return 1;
    }
    return 0;
}

static int keep_status(const char *id, const em_status_t *st, void *userdata)
{
    (void)id;
    cJSON **out = userdata;
    if (*out == NULL && st->has != 0)
        *out = em__enc_status(st);
    return 1;
}

/* The latest stored status of one device as JSON (*out NULL when none).
 * Returns the store's error (EM_OK when there is simply none). */
static em_err_t stored_status(em__api_req_t *r, const char *id, cJSON **out, em_error_t *e)
{
    *out = NULL;
    em_err_t rc = em_store_status_latest(r->store, id, keep_status, out, e);
    if (rc == EM_ERR_DEVICE_NOT_FOUND || rc == EM_ERR_NOT_FOUND)
        return EM_OK;
    return rc;
}

/*
 * The devices' JSON, in order: the live status and groups from the registry,
 * the stored ones for devices it does not hold (disabled ones). Answers the
 * error itself and returns NULL on failure.
 */
static cJSON *devices_json(em__api_req_t *r, const em_store_device_t *devs, size_t n)
{
    cJSON *arr = cJSON_CreateArray();
    cJSON **groups = calloc(n + 1, sizeof(cJSON *));
    cJSON **status = calloc(n + 1, sizeof(cJSON *));
    const char **missing = calloc(n + 1, sizeof(*missing));
    cJSON **missing_groups = calloc(n + 1, sizeof(cJSON *));
    size_t nmissing = 0;
    em_error_t e;
    em_error_clear(&e);
    em_err_t rc = EM_OK;
    bool oom = arr == NULL || groups == NULL || status == NULL || missing == NULL ||
               missing_groups == NULL;

    for (size_t i = 0; i < n && !oom; i++) {
        bool found = false;
        if (!live_parts(r->mgr, devs[i].id, &found, &groups[i], &status[i]))
            oom = true;
        else if (!found)
            missing[nmissing++] = devs[i].id;
    }
    if (!oom && nmissing > 0) {
        qsort(missing, nmissing, sizeof(*missing), cmp_str);
        for (size_t i = 0; i < nmissing && !oom; i++)
            if ((missing_groups[i] = cJSON_CreateArray()) == NULL)
                oom = true;
        if (!oom) {
            stored_groups_t sg = {missing, missing_groups, nmissing, false};
            rc = em_store_member_list(r->store, collect_member, &sg, &e);
            oom = sg.oom;
        }
        for (size_t i = 0; i < n && !oom && rc == EM_OK; i++) {
            if (groups[i] != NULL)
                continue;
            const char *key = devs[i].id;
            const char **hit = bsearch(&key, missing, nmissing, sizeof(*missing), cmp_str);
            if (hit != NULL) {
                groups[i] = missing_groups[hit - missing];
                missing_groups[hit - missing] = NULL;
            }
            rc = stored_status(r, devs[i].id, &status[i], &e);
        }
    }
    for (size_t i = 0; i < n && !oom && rc == EM_OK; i++) {
        cJSON *d = em__enc_device(&devs[i], groups[i], status[i]);
        groups[i] = NULL;
        status[i] = NULL;
        if (d == NULL || !cJSON_AddItemToArray(arr, d)) {
            cJSON_Delete(d);
            oom = true;
        }
    }
    for (size_t i = 0; i < n && groups != NULL && status != NULL; i++) {
        cJSON_Delete(groups[i]);
        cJSON_Delete(status[i]);
    }
    for (size_t i = 0; i < nmissing && missing_groups != NULL; i++)
        cJSON_Delete(missing_groups[i]);
    free(groups);
    free(status);
    free(missing);
    free(missing_groups);
    if (oom || rc != EM_OK) {
        cJSON_Delete(arr);
        if (oom)
            em__routes_oom(r);
        else
            em__api_error_from(r, rc, &e);
        return NULL;
    }
    return arr;
}

/* One device's JSON (answers the error and returns NULL on failure). */
static cJSON *device_json(em__api_req_t *r, const em_store_device_t *dev)
{
    cJSON *arr = devices_json(r, dev, 1);
    if (arr == NULL)
        return NULL;
    cJSON *d = cJSON_DetachItemFromArray(arr, 0);
    cJSON_Delete(arr);
    if (d == NULL)
        em__routes_oom(r);
    return d;
}

/* ---- manager side of writes ------------------------------------------ */

typedef struct group_names {
    const char *id;
    char (*names)[EM_GROUP_NAME_MAX + 1];
    size_t n;
    bool too_many;
} group_names_t;

static int collect_own_group(const char *group, const char *id, void *userdata)
{
    group_names_t *g = userdata;
    if (strcmp(id, g->id) != 0)
        return 0;
    if (g->n >= EM_DEVICE_GROUPS_MAX) {
        g->too_many = true;
        return 1;
    }
    snprintf(g->names[g->n++], EM_GROUP_NAME_MAX + 1, "%s", group);
    return 0;
}

/*
 * Registers a stored device with the manager, in the groups the store has
 * for it. On failure nothing stays registered.
 */
static em_err_t register_live(em__api_req_t *r, const em_store_device_t *dev, em_error_t *e)
{
    char(*names)[EM_GROUP_NAME_MAX + 1] = calloc(EM_DEVICE_GROUPS_MAX, EM_GROUP_NAME_MAX + 1);
    if (names == NULL)
        return em_error_set(e, EM_ERR_NOMEM, EM_SEV_HIGH, NULL, "out of memory");
    group_names_t g = {dev->id, names, 0, false};
    em_err_t rc = em_store_member_list(r->store, collect_own_group, &g, e);
    if (rc == EM_OK && g.too_many)
        rc = em_error_set(e, EM_ERR_LIMIT, EM_SEV_MEDIUM, "groups", "too many groups");
    if (rc == EM_OK)
        rc = em_manager_register_device(r->mgr, dev->id, dev->name, dev->type, &dev->config, NULL,
                                        e);
    for (size_t i = 0; i < g.n && rc == EM_OK; i++) {
        /* The registry learns of a group when a device first joins it. */
        em_err_t c = em_manager_create_group(r->mgr, names[i], e);
        if (c != EM_OK && c != EM_ERR_EXISTS)
            rc = c;
        else
            rc = em_manager_add_to_group(r->mgr, dev->id, names[i], e);
        if (rc != EM_OK)
            (void)em_manager_remove_device(r->mgr, dev->id, NULL);
    }
    free(names);
    return rc;
}

/* ---- GET /api/v1/devices ---------------------------------------------- */

typedef struct page {
    em_store_device_t *devs;
    size_t n;
    size_t cap;
} page_t;

static int page_add(const em_store_device_t *dev, void *userdata)
{
    page_t *p = userdata;
    if (p->n >= p->cap)
        return 1;
    p->devs[p->n++] = *dev;
    return 0;
}

static void list_devices(em__api_req_t *r)
{
    static const char *const params[] = {"group", "type", "after", "limit", NULL};
    if (!em__api_only_params(r, params))
        return;
    const char *group = NULL, *type_s = NULL, *after = NULL;
    int64_t limit = 0;
    if (!em__api_query_str(r, "group", EM_GROUP_NAME_MAX, &group) ||
        !em__api_query_str(r, "type", 16, &type_s) ||
        !em__api_query_str(r, "after", EM_DEVICE_ID_MAX, &after) ||
        !em__api_query_int(r, "limit", EM_STORE_PAGE_DEFAULT, 1, EM_STORE_PAGE_MAX, &limit))
        return;
    em_error_t e;
    em_error_clear(&e);
    em_device_type_t type = EM_DEVICE_GENERIC;
    if (type_s != NULL) {
        em_err_t rc = em_device_type_parse(type_s, strlen(type_s), &type, &e);
        if (rc != EM_OK) {
            em__api_error(r, 400, "validation",
                          "type: must be sensor, camera, actuator, gateway or generic", NULL);
            return;
        }
    }
    if (group != NULL && em_group_name_validate(group, strlen(group), &e) != EM_OK) {
        em__api_error_from(r, EM_ERR_VALIDATION, &e);
        return;
    }

    /* One row more than asked tells whether there is a next page; at the
     * largest page size a second one-row look answers that. */
    size_t want = (size_t)limit;
    size_t ask = want < EM_STORE_PAGE_MAX ? want + 1 : want;
    page_t p = {calloc(ask, sizeof(em_store_device_t)), 0, ask};
    if (p.devs == NULL) {
        em__routes_oom(r);
        return;
    }
    em_store_device_filter_t f = {.group = group,
                                  .type = type_s != NULL ? (int)type : -1,
                                  .after = after,
                                  .limit = (unsigned)ask};
    em_err_t rc = em_store_device_list(r->store, &f, page_add, &p, NULL, &e);
    bool more = false;
    if (rc == EM_OK && p.n > want) {
        more = true;
        p.n = want;
    } else if (rc == EM_OK && p.n == want && ask == want && want > 0) {
        em_store_device_t probe;
        page_t q = {&probe, 0, 1};
        em_store_device_filter_t f2 = f;
        f2.after = p.devs[p.n - 1].id;
        f2.limit = 1;
        rc = em_store_device_list(r->store, &f2, page_add, &q, NULL, &e);
        more = q.n > 0;
    }
    if (rc != EM_OK) {
        free(p.devs);
        em__api_error_from(r, rc, &e);
        return;
    }
    cJSON *arr = devices_json(r, p.devs, p.n);
    if (arr == NULL) {
        free(p.devs);
        return;
    }
    cJSON *extra = cJSON_CreateObject();
    cJSON *next = more ? cJSON_CreateString(p.devs[p.n - 1].id) : cJSON_CreateNull();
    free(p.devs);
    if (extra == NULL || next == NULL || !cJSON_AddItemToObject(extra, "next", next)) {
        cJSON_Delete(extra);
        cJSON_Delete(next);
        cJSON_Delete(arr);
        em__routes_oom(r);
        return;
    }
    em__api_reply(r, 200, arr, extra);
}

/* ---- POST /api/v1/devices --------------------------------------------- */

/* Reads "groups": an array of distinct valid names (at most
 * EM_DEVICE_GROUPS_MAX). */
static bool body_groups(em__api_req_t *r, const cJSON *body, const char **names, size_t *n)
{
    *n = 0;
    const cJSON *arr = cJSON_GetObjectItemCaseSensitive(body, "groups");
    if (arr == NULL || cJSON_IsNull(arr))
        return true;
    if (!cJSON_IsArray(arr)) {
        em__api_error(r, 400, "validation", "groups: must be an array of group names", NULL);
        return false;
    }
    const cJSON *it;
    cJSON_ArrayForEach(it, arr)
    {
        if (!cJSON_IsString(it) || it->valuestring == NULL) {
            em__api_error(r, 400, "validation", "groups: must be an array of group names", NULL);
            return false;
        }
        em_error_t e;
        em_error_clear(&e);
        if (em_group_name_validate(it->valuestring, strlen(it->valuestring), &e) != EM_OK) {
            snprintf(e.field, sizeof(e.field), "groups");
            em__api_error_from(r, EM_ERR_VALIDATION, &e);
            return false;
        }
        bool dup = false;
        for (size_t i = 0; i < *n && !dup; i++)
            dup = strcmp(names[i], it->valuestring) == 0;
        if (dup)
            continue;
        if (*n >= EM_DEVICE_GROUPS_MAX) {
            em__api_error(r, 400, "validation", "groups: at most 64 groups", NULL);
            return false;
        }
        names[(*n)++] = it->valuestring;
    }
    return true;
}

static void create_device(em__api_req_t *r)
{
    static const char *const fields[] = {"id", "name", "type", "config", "groups", "enabled", NULL};
    if (!em__api_only_params(r, no_params))
        return;
    cJSON *body = em__routes_body(r);
    if (body == NULL)
        return;
    const char *id = NULL, *name = NULL, *type_s = NULL;
    const char *groups[EM_DEVICE_GROUPS_MAX];
    size_t ngroups = 0;
    bool has_config = false, has_enabled = false, enabled = true;
    em_store_device_t dev;
    memset(&dev, 0, sizeof(dev));
    em_error_t e;
    em_error_clear(&e);
    em_err_t rc;

    if (!em__api_only_fields(r, body, fields) || !em__routes_req_string(r, body, "id", &id) ||
        !em__routes_req_string(r, body, "name", &name) ||
        !em__routes_req_string(r, body, "type", &type_s) ||
        !opt_config(r, body, &has_config, &dev.config) ||
        !em__routes_opt_bool(r, body, "enabled", &has_enabled, &enabled) ||
        !body_groups(r, body, groups, &ngroups))
        goto out;
    if ((rc = em_device_id_validate(id, strlen(id), &e)) != EM_OK ||
        (rc = em_device_name_validate(name, strlen(name), &e)) != EM_OK ||
        (rc = em_device_type_parse(type_s, strlen(type_s), &dev.type, &e)) != EM_OK) {
        em__api_error_from(r, rc, &e);
        goto out;
    }
    snprintf(dev.id, sizeof(dev.id), "%s", id);
    snprintf(dev.name, sizeof(dev.name), "%s", name);
    dev.enabled = has_enabled ? enabled : true;
    dev.created_at_ms = r->now_ms;
    dev.updated_at_ms = r->now_ms;

    /* The store first: a device the manager accepts messages from is always
     * one the store knows. */
    if ((rc = em_store_device_insert(r->store, &dev, &e)) != EM_OK) {
        if (rc == EM_ERR_EXISTS)
            em__api_error(r, 409, "already_exists", "id: a device with this id exists", NULL);
        else
            em__api_error_from(r, rc, &e);
        goto out;
    }
    for (size_t i = 0; i < ngroups; i++) {
        if ((rc = em_store_member_add(r->store, groups[i], dev.id, &e)) != EM_OK) {
            (void)em_store_device_delete(r->store, dev.id, NULL);
            if (rc == EM_ERR_GROUP_NOT_FOUND) {
                char msg[EM_GROUP_NAME_MAX + 48];
                snprintf(msg, sizeof(msg), "groups: no group named %s", groups[i]);
                em__api_error(r, 404, "group_not_found", msg, NULL);
            } else {
                em__api_error_from(r, rc, &e);
            }
            goto out;
        }
    }
    if (dev.enabled && (rc = register_live(r, &dev, &e)) != EM_OK) {
        (void)em_store_device_delete(r->store, dev.id, NULL);
        if (rc == EM_ERR_EXISTS)
            em__api_error(r, 409, "already_exists", "id: a device with this id exists", NULL);
        else
            em__api_error_from(r, rc, &e);
        goto out;
    }
    em__api_audit(r, "device_created", dev.id, "device %s created (%s, %s)", dev.id,
                  em_device_type_name(dev.type), dev.enabled ? "enabled" : "disabled");
    cJSON *d = device_json(r, &dev);
    if (d != NULL)
        em__api_reply(r, 201, d, NULL);
out:
    /* A record of this id cached before (one another daemon deleted) is
     * not this device's. */
    if (id != NULL)
        em__devcache_forget(r->api, id);
    cJSON_Delete(body);
}

/* ---- GET, PATCH, DELETE /api/v1/devices/{id} ------------------------- */

/*
 * Answers an enabled device the registry holds, written straight from the
 * registry under the manager's lock (no tree, no copy of the status). Returns
 * false, having answered nothing, when the general path must answer: the
 * device is not registered, or its status has errors or additionalInfo.
 */
static bool answer_live(em__api_req_t *r, const em_store_device_t *dev)
{
    /* Every answer fits: 64 group names, a name of 100 characters escaped,
     * and a status without errors and additionalInfo. */
    char buf[8192];
    size_t len = 0;
    em_err_t rc = EM_ERR_DEVICE_NOT_FOUND;
    em_manager_lock(r->mgr);
    em_registry_t *reg = em_manager_registry(r->mgr);
    const em_device_t *d = em_registry_get(reg, dev->id);
    if (d != NULL)
        rc = em__enc_device_answer(dev, reg, d, buf, sizeof(buf), &len);
    em_manager_unlock(r->mgr);
    if (rc != EM_OK)
        return false;
    em__api_reply_raw(r, 200, buf, len);
    return true;
}

static void get_device(em__api_req_t *r)
{
    if (!em__api_only_params(r, no_params))
        return;
    const char *id = r->captures[0];
    /* As em__routes_device_get, with the stored record from the API's
     * cache: this is the API's hottest route. */
    if (em_device_id_validate(id, strlen(id), NULL) != EM_OK) {
        em__api_error(r, 404, "device_not_found", "no such device", NULL);
        return;
    }
    em_store_device_t dev;
    em_error_t e;
    em_error_clear(&e);
    em_err_t rc = em__devcache_get(r->api, id, em_mono_ms(), &dev, &e);
    if (rc == EM_ERR_DEVICE_NOT_FOUND || rc == EM_ERR_NOT_FOUND) {
        em__api_error(r, 404, "device_not_found", "no such device", NULL);
        return;
    }
    if (rc != EM_OK) {
        em__api_error_from(r, rc, &e);
        return;
    }
    /* The registry holds enabled devices only; a disabled one (or one with
     * errors or additionalInfo in its status) takes the general path. */
    if (dev.enabled && answer_live(r, &dev))
        return;
    cJSON *d = device_json(r, &dev);
    if (d != NULL)
        em__api_reply(r, 200, d, NULL);
}

/* Brings the manager in line with a device whose stored record went from
 * old to upd. */
static em_err_t apply_live(em__api_req_t *r, const em_store_device_t *old,
                           const em_store_device_t *upd, em_error_t *e)
{
    if (old->enabled && upd->enabled) {
        em_err_t rc =
            em_manager_update_device(r->mgr, upd->id, upd->name, &upd->type, &upd->config, e);
        /* A registry that lost the device (it should not) is repaired. */
        if (rc == EM_ERR_DEVICE_NOT_FOUND)
            rc = register_live(r, upd, e);
        return rc;
    }
    if (old->enabled && !upd->enabled) {
        em_err_t rc = em_manager_remove_device(r->mgr, upd->id, e);
        return rc == EM_ERR_DEVICE_NOT_FOUND ? EM_OK : rc;
    }
    if (!old->enabled && upd->enabled)
        return register_live(r, upd, e);
    return EM_OK;
}

static void merge_config(em_device_config_t *dst, const em_device_config_t *src)
{
    if (src->has & EM_CONFIG_HAS_REPORTING_INTERVAL)
        dst->reporting_interval = src->reporting_interval;
    if (src->has & EM_CONFIG_HAS_SLEEP_THRESHOLD)
        dst->sleep_threshold = src->sleep_threshold;
    if (src->has & EM_CONFIG_HAS_AUTO_WAKE)
        dst->auto_wake = src->auto_wake;
    if (src->has & EM_CONFIG_HAS_SECURITY_LEVEL)
        dst->security_level = src->security_level;
    dst->has |= src->has;
}

static void update_device(em__api_req_t *r)
{
    static const char *const fields[] = {"name", "type", "config", "enabled", NULL};
    if (!em__api_only_params(r, no_params))
        return;
    em_store_device_t old;
    if (!em__routes_device_get(r, r->captures[0], &old))
        return;
    cJSON *body = em__routes_body(r);
    if (body == NULL)
        return;
    const char *name = NULL, *type_s = NULL;
    bool has_config = false, has_enabled = false, enabled = old.enabled;
    em_device_config_t cfg;
    em_store_device_t upd = old;
    em_error_t e;
    em_error_clear(&e);
    em_err_t rc;

    if (!em__api_only_fields(r, body, fields) || !em__routes_opt_string(r, body, "name", &name) ||
        !em__routes_opt_string(r, body, "type", &type_s) ||
        !opt_config(r, body, &has_config, &cfg) ||
        !em__routes_opt_bool(r, body, "enabled", &has_enabled, &enabled))
        goto out;
    if (name != NULL) {
        if ((rc = em_device_name_validate(name, strlen(name), &e)) != EM_OK) {
            em__api_error_from(r, rc, &e);
            goto out;
        }
        snprintf(upd.name, sizeof(upd.name), "%s", name);
    }
    if (type_s != NULL &&
        (rc = em_device_type_parse(type_s, strlen(type_s), &upd.type, &e)) != EM_OK) {
        em__api_error_from(r, rc, &e);
        goto out;
    }
    if (has_config)
        merge_config(&upd.config, &cfg);
    if (has_enabled)
        upd.enabled = enabled;
    upd.updated_at_ms = r->now_ms;

    if ((rc = em_store_device_update(r->store, &upd, &e)) != EM_OK) {
        em__api_error_from(r, rc, &e);
        goto out;
    }
    if ((rc = apply_live(r, &old, &upd, &e)) != EM_OK) {
        /* Put the stored record back, and the manager with it (best effort:
         * the error answered is the first one). */
        (void)em_store_device_update(r->store, &old, NULL);
        (void)apply_live(r, &upd, &old, NULL);
        em__api_error_from(r, rc, &e);
        goto out;
    }
    em__api_audit(r, "device_updated", upd.id, "device %s updated%s%s%s%s", upd.id,
                  name != NULL ? " name" : "", type_s != NULL ? " type" : "",
                  has_config ? " config" : "",
                  has_enabled ? (upd.enabled ? " enabled" : " disabled") : "");
    /* A device's MQTT password (dynamic-security) follows its enabled flag;
     * a failure there is a security event, not a failed update. */
    if (old.enabled != upd.enabled)
        em__mqttcred_device_changed(r, upd.id,
                                    upd.enabled ? EM__MQTTCRED_ENABLED : EM__MQTTCRED_DISABLED);
    cJSON *d = device_json(r, &upd);
    if (d != NULL)
        em__api_reply(r, 200, d, NULL);
out:
    /* Whatever the store holds now (updated, or put back), reads see it. */
    em__devcache_forget(r->api, old.id);
    cJSON_Delete(body);
}

static void delete_device(em__api_req_t *r)
{
    if (!em__api_only_params(r, no_params))
        return;
    const char *id = r->captures[0];
    if (!em__routes_device_get(r, id, NULL))
        return;
    em_error_t e;
    em_error_clear(&e);
    em_err_t rc = em_store_device_delete(r->store, id, &e);
    em__devcache_forget(r->api, id);
    if (rc != EM_OK) {
        em__api_error_from(r, rc, &e);
        return;
    }
    /* Removal from the registry fails only for a device it does not hold
     * (a disabled one): nothing to undo. */
    (void)em_manager_remove_device(r->mgr, id, NULL);
    em__api_audit(r, "device_deleted", id, "device %s deleted", id);
    /* Its MQTT password goes with it (as for a disable, a failure is a
     * security event and the deletion stands). */
    em__mqttcred_device_changed(r, id, EM__MQTTCRED_DELETED);
    em__api_reply(r, 200, NULL, NULL);
}

/* ---- status, history, telemetry ---------------------------------------- */

static void get_status(em__api_req_t *r)
{
    if (!em__api_only_params(r, no_params))
        return;
    const char *id = r->captures[0];
    if (!em__routes_device_get(r, id, NULL))
        return;
    bool found = false;
    cJSON *groups = NULL, *status = NULL;
    if (!live_parts(r->mgr, id, &found, &groups, &status)) {
        em__routes_oom(r);
        return;
    }
    cJSON_Delete(groups);
    if (!found) {
        em_error_t e;
        em_error_clear(&e);
        em_err_t rc = stored_status(r, id, &status, &e);
        if (rc != EM_OK) {
            em__api_error_from(r, rc, &e);
            return;
        }
    }
    if (status == NULL) {
        em__api_error(r, 404, "not_found", "no status reported yet", NULL);
        return;
    }
    em__api_reply(r, 200, status, NULL);
}

static int row_status(const char *id, const em_status_t *st, void *userdata)
{
    (void)id;
    return em__routes_rows_add(userdata, em__enc_status(st)) ? 0 : 1;
}

static int row_telemetry(const char *id, const em_telemetry_t *t, void *userdata)
{
    (void)id;
    return em__routes_rows_add(userdata, em__enc_telemetry(t)) ? 0 : 1;
}

static int row_rollup(const em_store_rollup_t *ru, void *userdata)
{
    return em__routes_rows_add(userdata, em__enc_rollup(ru, false)) ? 0 : 1;
}

static void status_history(em__api_req_t *r)
{
    static const char *const params[] = {"from", "to", "limit", "order", NULL};
    if (!em__api_only_params(r, params))
        return;
    em_store_range_t range;
    if (!em__routes_range(r, true, false, &range))
        return;
    const char *id = r->captures[0];
    if (!em__routes_device_get(r, id, NULL))
        return;
    em__routes_rows_t w = {cJSON_CreateArray(), false};
    if (w.arr == NULL) {
        em__routes_oom(r);
        return;
    }
    em_error_t e;
    em_error_clear(&e);
    em_err_t rc = em_store_status_history(r->store, id, &range, row_status, &w, &e);
    em__routes_answer_rows(r, &w, rc, &e);
}

static void telemetry(em__api_req_t *r)
{
    static const char *const params[] = {"from", "to", "limit", "rollup", "order", NULL};
    if (!em__api_only_params(r, params))
        return;
    em_store_range_t range;
    if (!em__routes_range(r, true, false, &range))
        return;
    const char *rollup = NULL;
    if (!em__api_query_str(r, "rollup", 8, &rollup))
        return;
    int kind = -1; /* raw */
    if (rollup != NULL && strcmp(rollup, "hour") == 0) {
        kind = EM_ROLLUP_HOUR;
    } else if (rollup != NULL && strcmp(rollup, "day") == 0) {
        kind = EM_ROLLUP_DAY;
    } else if (rollup != NULL && strcmp(rollup, "raw") != 0) {
        em__api_error(r, 400, "validation", "rollup: must be raw, hour or day", NULL);
        return;
    }
    const char *id = r->captures[0];
    if (!em__routes_device_get(r, id, NULL))
        return;
    em__routes_rows_t w = {cJSON_CreateArray(), false};
    if (w.arr == NULL) {
        em__routes_oom(r);
        return;
    }
    em_error_t e;
    em_error_clear(&e);
    em_err_t rc;
    if (kind < 0)
        rc = em_store_telemetry_list(r->store, id, &range, row_telemetry, &w, &e);
    else
        rc = em_store_rollup_device(r->store, id, (em_rollup_t)kind, &range, row_rollup, &w, &e);
    em__routes_answer_rows(r, &w, rc, &e);
}

/* ---- the table ------------------------------------------------------- */

static const em__api_route_t routes[] = {
    {EVHTTP_REQ_GET, "/api/v1/devices", EM_ROLE_VIEWER, 0, list_devices},
    {EVHTTP_REQ_POST, "/api/v1/devices", EM_ROLE_OPERATOR, EM__ROUTE_BODY, create_device},
    {EVHTTP_REQ_GET, "/api/v1/devices/{id}", EM_ROLE_VIEWER, EM__ROUTE_DEVICE_OK, get_device},
    {EVHTTP_REQ_PATCH, "/api/v1/devices/{id}", EM_ROLE_OPERATOR, EM__ROUTE_BODY, update_device},
    {EVHTTP_REQ_DELETE, "/api/v1/devices/{id}", EM_ROLE_OPERATOR, 0, delete_device},
    {EVHTTP_REQ_GET, "/api/v1/devices/{id}/status", EM_ROLE_VIEWER, EM__ROUTE_DEVICE_OK,
     get_status},
    {EVHTTP_REQ_GET, "/api/v1/devices/{id}/status/history", EM_ROLE_VIEWER, EM__ROUTE_DEVICE_OK,
     status_history},
    {EVHTTP_REQ_GET, "/api/v1/devices/{id}/telemetry", EM_ROLE_VIEWER, EM__ROUTE_DEVICE_OK,
     telemetry},
};

const em__api_route_table_t em__api_routes_devices = {routes, sizeof(routes) / sizeof(routes[0])};
