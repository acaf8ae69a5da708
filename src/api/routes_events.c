/*
 * emiot - routes_events.c: the event log, security, audit, device and
 * validation events, newest first (docs/API.md, "Events").
 *
 * Paging goes backwards by id: "next" is the id of the last event of the
 * page, passed back as ?before= for the older ones.
 */
#include <stdio.h>
#include <string.h>

#include <event2/http.h>

#include "api/api_internal.h"
#include "api/encode.h"

typedef struct rows {
    cJSON *arr;
    size_t n;
    size_t max; /* rows to keep: the page; one more only tells there is more */
    int64_t last_id;
    bool more;
    bool oom;
} rows_t;

static int event_row(const em_store_event_t *ev, void *userdata)
{
    rows_t *w = userdata;
    if (w->n == w->max) {
        w->more = true;
        return 1;
    }
    cJSON *o = em__enc_event(ev);
    if (o == NULL || !cJSON_AddItemToArray(w->arr, o)) {
        cJSON_Delete(o);
        w->oom = true;
        return 1;
    }
    w->n++;
    w->last_id = ev->id;
    return 0;
}

static void list_events(em__api_req_t *r)
{
    static const char *const params[] = {"kind", "type",   "device", "severity", "from",
                                         "to",   "before", "limit",  NULL};
    if (!em__api_only_params(r, params))
        return;
    em_store_event_filter_t f;
    memset(&f, 0, sizeof(f));
    f.kind = -1;
    f.min_severity = -1;
    const char *kind = NULL, *type = NULL, *device = NULL, *severity = NULL;
    int64_t before = 0;
    if (!em__api_query_str(r, "kind", 16, &kind) ||
        !em__api_query_str(r, "type", EM_STORE_NAME_MAX, &type) ||
        !em__api_query_str(r, "device", EM_DEVICE_ID_MAX, &device) ||
        !em__api_query_str(r, "severity", 16, &severity) ||
        !em__api_query_int(r, "before", 0, 1, INT64_MAX, &before) ||
        !em__routes_range(r, false, true, &f.range))
        return;
    if (kind != NULL) {
        em_event_kind_t k;
        if (em_event_kind_parse(kind, &k) != EM_OK) {
            em__api_error(r, 400, "validation",
                          "kind: must be security, audit, device or validation", NULL);
            return;
        }
        f.kind = (int)k;
    }
    if (severity != NULL) {
        static const char *const names[] = {"low", "medium", "high", "critical"};
        for (int i = 0; i < 4 && f.min_severity < 0; i++)
            if (strcmp(severity, names[i]) == 0)
                f.min_severity = i;
        if (f.min_severity < 0) {
            em__api_error(r, 400, "validation", "severity: must be low, medium, high or critical",
                          NULL);
            return;
        }
    }
    if (type != NULL && type[0] == '\0') {
        em__api_error(r, 400, "validation", "type: must not be empty", NULL);
        return;
    }
    if (device != NULL) {
        em_error_t e;
        em_error_clear(&e);
        if (em_device_id_validate(device, strlen(device), &e) != EM_OK) {
            snprintf(e.field, sizeof(e.field), "device");
            em__api_error_from(r, EM_ERR_VALIDATION, &e);
            return;
        }
    }
    f.type = type;
    f.device_id = device;
    f.before_id = before;
    f.range.descending = true;

    /* One row more than the page tells whether there is a next page; at the
     * largest page size a one-row look past the last id answers that. */
    size_t want = f.range.limit;
    rows_t w = {cJSON_CreateArray(), 0, want, 0, false, false};
    if (w.arr == NULL) {
        em__routes_oom(r);
        return;
    }
    if (want < EM_STORE_PAGE_MAX)
        f.range.limit = (unsigned)want + 1;
    em_error_t e;
    em_error_clear(&e);
    em_err_t rc = em_store_event_list(r->store, &f, event_row, &w, &e);
    if (rc == EM_OK && !w.oom && !w.more && w.n == want && want == EM_STORE_PAGE_MAX) {
        rows_t probe = {NULL, 0, 0, 0, false, false};
        em_store_event_filter_t f2 = f;
        f2.before_id = w.last_id;
        f2.range.limit = 1;
        rc = em_store_event_list(r->store, &f2, event_row, &probe, &e);
        w.more = probe.more;
    }
    if (rc != EM_OK || w.oom) {
        cJSON_Delete(w.arr);
        if (rc != EM_OK)
            em__api_error_from(r, rc, &e);
        else
            em__routes_oom(r);
        return;
    }
    cJSON *extra = cJSON_CreateObject();
    /* The cursor is the id as a string, opaque like the devices' cursor. */
    char buf[24];
    snprintf(buf, sizeof(buf), "%lld", (long long)w.last_id);
    cJSON *next = w.more ? cJSON_CreateString(buf) : cJSON_CreateNull();
    if (extra == NULL || next == NULL || !cJSON_AddItemToObject(extra, "next", next)) {
        cJSON_Delete(extra);
        cJSON_Delete(next);
        cJSON_Delete(w.arr);
        em__routes_oom(r);
        return;
    }
    em__api_reply(r, 200, w.arr, extra);
}

static const em__api_route_t routes[] = {
    {EVHTTP_REQ_GET, "/api/v1/events", EM_ROLE_VIEWER, 0, list_events},
};

const em__api_route_table_t em__api_routes_events = {routes, sizeof(routes) / sizeof(routes[0])};
