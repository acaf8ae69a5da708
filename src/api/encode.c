/*
 * emiot - encode.c: the API's JSON answers (see encode.h).
 *
 * Statuses and telemetry are written by the model's own encoders and read
 * back with cJSON, so the API shows exactly what the protocol defines (the
 * same keys, the same number formatting) instead of a second spelling of it.
 * Everything else is built with cJSON directly. cJSON's allocation hooks give
 * plain malloc memory outside em__json_parse (src/core/json.c), so these trees
 * may outlive any request body parsed meanwhile.
 */
#include "api/encode.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "api/api_internal.h"
#include "emiot/clock.h"
#include "emiot/command.h"
#include "model/json_util.h"
#include "model/status_internal.h"

/* Adds item to obj under key; takes item over (also on failure). */
static bool put(cJSON *obj, const char *key, cJSON *item)
{
    if (item == NULL)
        return false;
    if (!cJSON_AddItemToObject(obj, key, item)) {
        cJSON_Delete(item);
        return false;
    }
    return true;
}

/* cJSON numbers are doubles: JSON has no spelling for inf or NaN. */
static cJSON *num(double v)
{
    return cJSON_CreateNumber(isfinite(v) ? v : 0.0);
}

/* Parses JSON text the library wrote (status, telemetry, stored payloads). */
static cJSON *parse_text(const char *text, size_t len)
{
    if (text == NULL || len == 0)
        return NULL;
    return cJSON_ParseWithLength(text, len);
}

cJSON *em__enc_time(int64_t ms)
{
    if (ms == 0)
        return cJSON_CreateNull();
    char buf[EM_TIME_STR_MAX];
    size_t n = em__enc_time_text(ms, buf, sizeof(buf));
    if (n == 0 || n >= sizeof(buf))
        return cJSON_CreateNull();
    return cJSON_CreateString(buf);
}

cJSON *em__enc_str_or_null(const char *s)
{
    if (s == NULL || s[0] == '\0')
        return cJSON_CreateNull();
    return cJSON_CreateString(s);
}

cJSON *em__enc_config(const em_device_config_t *cfg)
{
    cJSON *o = cJSON_CreateObject();
    if (o == NULL)
        return NULL;
    bool ok = true;
    if (cfg->has & EM_CONFIG_HAS_REPORTING_INTERVAL)
        ok = ok && put(o, "reportingInterval", num((double)cfg->reporting_interval));
    if (cfg->has & EM_CONFIG_HAS_SLEEP_THRESHOLD)
        ok = ok && put(o, "sleepThreshold", num((double)cfg->sleep_threshold));
    if (cfg->has & EM_CONFIG_HAS_AUTO_WAKE)
        ok = ok && put(o, "autoWake", cJSON_CreateBool(cfg->auto_wake));
    if (cfg->has & EM_CONFIG_HAS_SECURITY_LEVEL)
        ok = ok && put(o, "securityLevel", num((double)cfg->security_level));
    if (!ok) {
        cJSON_Delete(o);
        return NULL;
    }
    return o;
}

/* The largest status em_status_encode can write: the fixed fields, the
 * errors (16 entries of 256 bytes, each escaped at worst 6 bytes per byte)
 * and additionalInfo (EM_STATUS_EXTRA_MAX). Rounded up generously. */
#define STATUS_TEXT_MAX                                                                            \
    (EM_STATUS_ERRORS_MAX * (EM_STATUS_ERROR_LEN_MAX * 6 + 4) + EM_STATUS_EXTRA_MAX + 1024)

cJSON *em__enc_status(const em_status_t *st)
{
    /* Most statuses are a few hundred bytes: the stack first, the heap only
     * for one with long errors or additionalInfo (a device read is the
     * API's hottest route). */
    char small[1024];
    size_t len = 0;
    em_err_t rc = em_status_encode(st, small, sizeof(small), &len);
    if (rc == EM_OK)
        return parse_text(small, len);
    if (rc != EM_ERR_BUFFER_TOO_SMALL)
        return NULL;
    char *buf = malloc(STATUS_TEXT_MAX);
    if (buf == NULL)
        return NULL;
    cJSON *o = NULL;
    if (em_status_encode(st, buf, STATUS_TEXT_MAX, &len) == EM_OK)
        o = parse_text(buf, len);
    free(buf);
    return o;
}

cJSON *em__enc_telemetry(const em_telemetry_t *t)
{
    char buf[1024]; /* eight numbers and a timestamp */
    size_t len = 0;
    em_err_t rc = em_telemetry_encode(t, buf, sizeof(buf), &len);
    if (rc == EM_ERR_INVALID_ARGUMENT) {
        /* A stored sample with a non-finite number cannot be written as
         * JSON; the store never keeps one, but show the rest rather than
         * nothing if it ever did. */
        em_telemetry_t copy = *t;
        if (!isfinite(copy.power_w))
            copy.has &= (uint16_t)~EM_TELEMETRY_HAS_POWER;
        if (!isfinite(copy.energy_wh))
            copy.has &= (uint16_t)~EM_TELEMETRY_HAS_ENERGY;
        if (!isfinite(copy.voltage_v))
            copy.has &= (uint16_t)~EM_TELEMETRY_HAS_VOLTAGE;
        if (!isfinite(copy.current_a))
            copy.has &= (uint16_t)~EM_TELEMETRY_HAS_CURRENT;
        if (!isfinite(copy.temperature))
            copy.has &= (uint16_t)~EM_TELEMETRY_HAS_TEMPERATURE;
        if (!isfinite(copy.humidity))
            copy.has &= (uint16_t)~EM_TELEMETRY_HAS_HUMIDITY;
        rc = em_telemetry_encode(&copy, buf, sizeof(buf), &len);
    }
    if (rc != EM_OK)
        return NULL;
    return parse_text(buf, len);
}

cJSON *em__enc_rollup(const em_store_rollup_t *r, bool group)
{
    cJSON *o = cJSON_CreateObject();
    if (o == NULL)
        return NULL;
    bool ok = put(o, "bucket", em__enc_time(r->bucket_ms)) &&
              put(o, "samples", num((double)r->samples)) && put(o, "energyWh", num(r->energy_wh)) &&
              put(o, "powerAvgW", num(r->power_avg_w)) &&
              put(o, "powerMaxW", num(r->power_max_w)) && put(o, "resets", num((double)r->resets));
    if (ok && group)
        ok = put(o, "devices", num((double)r->devices));
    if (!ok) {
        cJSON_Delete(o);
        return NULL;
    }
    return o;
}

cJSON *em__enc_device(const em_store_device_t *dev, cJSON *groups, cJSON *status)
{
    cJSON *o = cJSON_CreateObject();
    if (o == NULL) {
        cJSON_Delete(groups);
        cJSON_Delete(status);
        return NULL;
    }
    const char *type = em_device_type_name(dev->type);
    bool ok = put(o, "id", cJSON_CreateString(dev->id)) &&
              put(o, "name", cJSON_CreateString(dev->name)) &&
              put(o, "type", type != NULL ? cJSON_CreateString(type) : cJSON_CreateNull());
    if (ok)
        ok = put(o, "groups", groups != NULL ? groups : cJSON_CreateArray());
    else
        cJSON_Delete(groups);
    ok = ok && put(o, "config", em__enc_config(&dev->config)) &&
         put(o, "enabled", cJSON_CreateBool(dev->enabled));
    if (ok)
        ok = put(o, "status", status != NULL ? status : cJSON_CreateNull());
    else
        cJSON_Delete(status);
    ok = ok && put(o, "createdAt", em__enc_time(dev->created_at_ms)) &&
         put(o, "updatedAt", em__enc_time(dev->updated_at_ms));
    if (!ok) {
        cJSON_Delete(o);
        return NULL;
    }
    return o;
}

cJSON *em__enc_command(const em_store_command_t *c)
{
    cJSON *o = cJSON_CreateObject();
    if (o == NULL)
        return NULL;
    const char *type = em_command_type_name(c->type);
    const char *state = em_command_state_name(c->state);
    cJSON *payload = NULL;
    if (c->payload_json != NULL)
        payload = parse_text(c->payload_json, strlen(c->payload_json));
    bool ok = put(o, "requestId", cJSON_CreateString(c->request_id)) &&
              put(o, "deviceId", cJSON_CreateString(c->device_id)) &&
              put(o, "group", em__enc_str_or_null(c->group)) &&
              put(o, "type", type != NULL ? cJSON_CreateString(type) : cJSON_CreateNull());
    if (ok)
        ok = put(o, "payload", payload != NULL ? payload : cJSON_CreateNull());
    else
        cJSON_Delete(payload);
    ok = ok && put(o, "state", state != NULL ? cJSON_CreateString(state) : cJSON_CreateNull()) &&
         put(o, "actor", em__enc_str_or_null(c->actor)) &&
         put(o, "createdAt", em__enc_time(c->created_at_ms)) &&
         put(o, "updatedAt", em__enc_time(c->updated_at_ms)) &&
         put(o, "expiresAt", em__enc_time(c->expires_at_ms));
    if (ok) {
        if (c->has_response) {
            cJSON *resp = cJSON_CreateObject();
            ok = put(o, "response", resp) &&
                 put(resp, "success", cJSON_CreateBool(c->response_success)) &&
                 put(resp, "message", cJSON_CreateString(c->response_message));
        } else {
            ok = put(o, "response", cJSON_CreateNull());
        }
    }
    if (!ok) {
        cJSON_Delete(o);
        return NULL;
    }
    return o;
}

cJSON *em__enc_event(const em_store_event_t *ev)
{
    cJSON *o = cJSON_CreateObject();
    if (o == NULL)
        return NULL;
    const char *kind = em_event_kind_name(ev->kind);
    cJSON *details = NULL;
    if (ev->details_json != NULL)
        details = parse_text(ev->details_json, strlen(ev->details_json));
    bool ok = put(o, "id", num((double)ev->id)) && put(o, "time", em__enc_time(ev->time_ms)) &&
              put(o, "kind", kind != NULL ? cJSON_CreateString(kind) : cJSON_CreateNull()) &&
              put(o, "type", cJSON_CreateString(ev->type)) &&
              put(o, "severity", cJSON_CreateString(em_severity_name(ev->severity))) &&
              put(o, "deviceId", em__enc_str_or_null(ev->device_id)) &&
              put(o, "actor", em__enc_str_or_null(ev->actor)) &&
              put(o, "source", em__enc_str_or_null(ev->source)) &&
              put(o, "message", cJSON_CreateString(ev->message));
    if (ok)
        ok = put(o, "details", details != NULL ? details : cJSON_CreateNull());
    else
        cJSON_Delete(details);
    if (!ok) {
        cJSON_Delete(o);
        return NULL;
    }
    return o;
}

cJSON *em__enc_group_stats(const em_group_stats_t *s)
{
    cJSON *o = cJSON_CreateObject();
    if (o == NULL)
        return NULL;
    cJSON *modes = NULL;
    bool ok = put(o, "total", num((double)s->total)) && put(o, "online", num((double)s->online)) &&
              put(o, "offline", num((double)s->offline)) &&
              put(o, "averageBattery", num(s->average_battery)) &&
              put(o, "powerModes", modes = cJSON_CreateObject()) &&
              put(modes, "normal", num((double)s->power_modes[EM_POWER_NORMAL])) &&
              put(modes, "low_power", num((double)s->power_modes[EM_POWER_LOW_POWER])) &&
              put(modes, "sleep", num((double)s->power_modes[EM_POWER_SLEEP])) &&
              put(modes, "critical", num((double)s->power_modes[EM_POWER_CRITICAL])) &&
              put(modes, "unknown", num((double)s->power_modes[EM_POWER_UNKNOWN]));
    if (!ok) {
        cJSON_Delete(o);
        return NULL;
    }
    return o;
}

/* ---- shared by the routes_*.c files ------------------------------------- */

void em__routes_oom(em__api_req_t *r)
{
    em__api_error(r, 500, "internal", "internal error", "out of memory");
}

bool em__routes_range(em__api_req_t *r, bool with_order, bool desc_default, em_store_range_t *out)
{
    int64_t from = 0, to = 0, limit = 0;
    if (!em__api_query_time(r, "from", 0, &from) || !em__api_query_time(r, "to", 0, &to) ||
        !em__api_query_int(r, "limit", EM_STORE_PAGE_DEFAULT, 1, EM_STORE_PAGE_MAX, &limit))
        return false;
    if (from != 0 && to != 0 && from >= to) {
        em__api_error(r, 400, "validation", "from: must be before to", NULL);
        return false;
    }
    bool desc = desc_default;
    if (with_order) {
        const char *order = NULL;
        if (!em__api_query_str(r, "order", 4, &order))
            return false;
        if (order != NULL) {
            if (strcmp(order, "asc") == 0) {
                desc = false;
            } else if (strcmp(order, "desc") == 0) {
                desc = true;
            } else {
                em__api_error(r, 400, "validation", "order: must be asc or desc", NULL);
                return false;
            }
        }
    }
    memset(out, 0, sizeof(*out));
    out->from_ms = from;
    out->to_ms = to;
    out->limit = (unsigned)limit;
    out->descending = desc;
    return true;
}

bool em__routes_device_get(em__api_req_t *r, const char *id, em_store_device_t *out)
{
    em_store_device_t tmp;
    em_error_t e;
    em_error_clear(&e);
    /* A string that cannot be a device id names no device: 404, and the
     * store never sees it. */
    if (em_device_id_validate(id, strlen(id), NULL) != EM_OK) {
        em__api_error(r, 404, "device_not_found", "no such device", NULL);
        return false;
    }
    em_err_t rc = em_store_device_get(r->store, id, out != NULL ? out : &tmp, &e);
    if (rc == EM_ERR_DEVICE_NOT_FOUND || rc == EM_ERR_NOT_FOUND) {
        em__api_error(r, 404, "device_not_found", "no such device", NULL);
        return false;
    }
    if (rc != EM_OK) {
        em__api_error_from(r, rc, &e);
        return false;
    }
    return true;
}

static int stop_at_first(const em_store_device_t *dev, void *userdata)
{
    (void)dev;
    (void)userdata;
    return 1;
}

bool em__routes_group_exists(em__api_req_t *r, const char *name)
{
    if (em_group_name_validate(name, strlen(name), NULL) != EM_OK) {
        em__api_error(r, 404, "group_not_found", "no such group", NULL);
        return false;
    }
    /* The store has no "get group": a one-row member listing answers
     * GROUP_NOT_FOUND for a group it does not know. */
    em_store_device_filter_t f = {.group = name, .type = -1, .after = NULL, .limit = 1};
    em_error_t e;
    em_error_clear(&e);
    em_err_t rc = em_store_device_list(r->store, &f, stop_at_first, NULL, NULL, &e);
    if (rc == EM_ERR_GROUP_NOT_FOUND) {
        em__api_error(r, 404, "group_not_found", "no such group", NULL);
        return false;
    }
    if (rc != EM_OK) {
        em__api_error_from(r, rc, &e);
        return false;
    }
    return true;
}

/* Index of the quote that ends the string starting at p[start] (just after
 * its opening quote), or len; *nul tells whether it holds "\u0000". */
static size_t string_end(const char *p, size_t len, size_t start, bool *nul)
{
    *nul = false;
    size_t i = start;
    for (; i < len && p[i] != '"'; i++) {
        if (p[i] != '\\')
            continue;
        if (i + 6 <= len && p[i + 1] == 'u' && memcmp(p + i + 2, "0000", 4) == 0)
            *nul = true;
        i++; /* the escaped character */
    }
    return i;
}

/* True when the next character after p[i] that is not blank is ':'. */
static bool colon_follows(const char *p, size_t len, size_t i)
{
    for (i++; i < len; i++) {
        if (p[i] != ' ' && p[i] != '\t' && p[i] != '\n' && p[i] != '\r')
            return p[i] == ':';
    }
    return false;
}

/*
 * Looks through JSON text (already parsed, so well formed) for a "\u0000"
 * escape inside a string. Returns false when there is none; else true with
 * key (size bytes) the top-level member it is in, or "" when there is none
 * to name (it is in a top-level member's name).
 */
static bool find_escaped_nul(const char *p, size_t len, char *key, size_t size)
{
    size_t depth = 0;
    const char *name = NULL, *last = NULL; /* member in effect; last string at depth 1 */
    size_t name_len = 0, last_len = 0;
    for (size_t i = 0; i < len; i++) {
        char c = p[i];
        if (c == '{' || c == '[') {
            depth++;
        } else if (c == '}' || c == ']') {
            depth = depth > 0 ? depth - 1 : 0;
        } else if (c == ':' && depth == 1) {
            name = last;
            name_len = last_len;
        } else if (c == '"') {
            bool nul;
            size_t start = i + 1;
            i = string_end(p, len, start, &nul);
            if (nul) {
                bool top_name = depth == 1 && colon_follows(p, len, i);
                size_t n = top_name || name == NULL ? 0 : name_len;
                n = n < size - 1 ? n : size - 1;
                if (n > 0)
                    memcpy(key, name, n);
                key[n] = '\0';
                return true;
            }
            if (depth == 1) {
                last = p + start;
                last_len = i - start;
            }
        }
    }
    return false;
}

cJSON *em__routes_body(em__api_req_t *r)
{
    cJSON *body = em__api_body_object(r);
    if (body == NULL)
        return NULL;
    char key[EM_ERROR_FIELD_MAX + 1];
    if (find_escaped_nul(r->body, r->body_len, key, sizeof(key))) {
        cJSON_Delete(body);
        char msg[EM_ERROR_FIELD_MAX + 48];
        /* The name comes from the client: show only a plain one. */
        bool plain = key[0] != '\0';
        for (size_t i = 0; key[i] != '\0' && plain; i++)
            plain = (key[i] >= 'a' && key[i] <= 'z') || (key[i] >= 'A' && key[i] <= 'Z') ||
                    (key[i] >= '0' && key[i] <= '9') || key[i] == '_';
        snprintf(msg, sizeof(msg), "%s: must not contain \\u0000", plain ? key : "body");
        em__api_error(r, 400, "validation", msg, NULL);
        return NULL;
    }
    return body;
}

bool em__routes_opt_string(em__api_req_t *r, const cJSON *obj, const char *key, const char **out)
{
    const cJSON *it = cJSON_GetObjectItemCaseSensitive(obj, key);
    *out = NULL;
    if (it == NULL || cJSON_IsNull(it))
        return true;
    if (!cJSON_IsString(it) || it->valuestring == NULL) {
        char msg[96];
        snprintf(msg, sizeof(msg), "%s: must be a string", key);
        em__api_error(r, 400, "validation", msg, NULL);
        return false;
    }
    *out = it->valuestring;
    return true;
}

bool em__routes_req_string(em__api_req_t *r, const cJSON *obj, const char *key, const char **out)
{
    if (!em__routes_opt_string(r, obj, key, out))
        return false;
    if (*out == NULL) {
        char msg[96];
        snprintf(msg, sizeof(msg), "%s: is required", key);
        em__api_error(r, 400, "validation", msg, NULL);
        return false;
    }
    return true;
}

bool em__routes_opt_bool(em__api_req_t *r, const cJSON *obj, const char *key, bool *present,
                         bool *out)
{
    const cJSON *it = cJSON_GetObjectItemCaseSensitive(obj, key);
    *present = false;
    if (it == NULL || cJSON_IsNull(it))
        return true;
    if (!cJSON_IsBool(it)) {
        char msg[96];
        snprintf(msg, sizeof(msg), "%s: must be true or false", key);
        em__api_error(r, 400, "validation", msg, NULL);
        return false;
    }
    *present = true;
    *out = cJSON_IsTrue(it);
    return true;
}

void em__routes_prefix_field(em_error_t *e, const char *prefix)
{
    size_t plen = strlen(prefix);
    if (e->field[0] == '\0' || strncmp(e->field, prefix, plen) == 0)
        return;
    char field[EM_ERROR_FIELD_MAX + 1];
    memcpy(field, e->field, sizeof(field));
    /* Cut the member's name rather than the prefix when both do not fit. */
    int room = EM_ERROR_FIELD_MAX - (int)plen - 1;
    int n = snprintf(e->field, sizeof(e->field), "%s.%.*s", prefix, room > 0 ? room : 0, field);
    (void)n;
}

bool em__routes_rows_add(em__routes_rows_t *w, cJSON *item)
{
    if (item == NULL || !cJSON_AddItemToArray(w->arr, item)) {
        cJSON_Delete(item);
        w->oom = true;
        return false;
    }
    return true;
}

void em__routes_answer_rows(em__api_req_t *r, em__routes_rows_t *w, em_err_t rc,
                            const em_error_t *e)
{
    if (rc != EM_OK) {
        cJSON_Delete(w->arr);
        em__api_error_from(r, rc, e);
    } else if (w->oom) {
        cJSON_Delete(w->arr);
        em__routes_oom(r);
    } else {
        em__api_reply(r, 200, w->arr, NULL);
    }
    w->arr = NULL;
}

/* ---- a device read, without a tree ------------------------------------- */

/* Days since 1970-01-01 (>= 0) as a civil date (H. Hinnant's algorithm). */
static void civil(int64_t days, unsigned *y, unsigned *m, unsigned *d)
{
    uint64_t z = (uint64_t)days + 719468;
    uint64_t era = z / 146097;
    unsigned doe = (unsigned)(z - era * 146097);
    unsigned yoe = (doe - doe / 1460 + doe / 36524 - doe / 146096) / 365;
    unsigned doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    unsigned mp = (5 * doy + 2) / 153;
    *d = doy - (153 * mp + 2) / 5 + 1;
    *m = mp < 10 ? mp + 3 : mp - 9;
    *y = (unsigned)(yoe + era * 400) + (*m <= 2);
}

static char *digits(char *p, unsigned v, int n)
{
    for (int i = n - 1; i >= 0; i--) {
        p[i] = (char)('0' + v % 10);
        v /= 10;
    }
    return p + n;
}

/* 9999-12-31T23:59:59.999Z */
#define FAST_TIME_MAX INT64_C(253402300799999)
#define MS_PER_DAY    INT64_C(86400000)

size_t em__enc_time_text(int64_t ms, char *buf, size_t size)
{
    /* Outside 1970-9999 (never a time the API stores), em_time_format. */
    if (ms < 0 || ms > FAST_TIME_MAX || size < 25)
        return em_time_format(ms, buf, size);
    unsigned y, m, d;
    civil(ms / MS_PER_DAY, &y, &m, &d);
    unsigned r = (unsigned)(ms % MS_PER_DAY);
    char *p = buf;
    p = digits(p, y, 4);
    *p++ = '-';
    p = digits(p, m, 2);
    *p++ = '-';
    p = digits(p, d, 2);
    *p++ = 'T';
    p = digits(p, r / 3600000, 2);
    *p++ = ':';
    p = digits(p, r / 60000 % 60, 2);
    *p++ = ':';
    p = digits(p, r / 1000 % 60, 2);
    *p++ = '.';
    p = digits(p, r % 1000, 3);
    *p++ = 'Z';
    *p = '\0';
    return (size_t)(p - buf);
}

/* A time as em__enc_time shows it: a string, or null for 0 (or one that
 * cannot be written). */
static void write_time(em__jw_t *w, int64_t ms)
{
    char ts[EM_TIME_STR_MAX];
    size_t n = ms != 0 ? em__enc_time_text(ms, ts, sizeof(ts)) : 0;
    if (n == 0 || n >= sizeof(ts))
        em__jw_lit(w, "null");
    else
        em__jw_str(w, ts, n);
}

/* Appends v in decimal (no printf: see write_status). */
static void write_uint(em__jw_t *w, unsigned v)
{
    char d[12];
    size_t n = sizeof(d);
    do {
        d[--n] = (char)('0' + v % 10);
        v /= 10;
    } while (v != 0);
    em__jw_raw(w, d + n, sizeof(d) - n);
}

/* Writes ,"key": (or "key": for an object's first member, after its '{'). */
static void write_key(em__jw_t *w, size_t open, const char *key, size_t key_len)
{
    if (w->len != open)
        em__jw_lit(w, ",");
    em__jw_lit(w, "\"");
    em__jw_raw(w, key, key_len);
    em__jw_lit(w, "\":");
}

#define KEY(w, open, lit) write_key((w), (open), (lit), sizeof(lit) - 1)

/*
 * A status without errors and additionalInfo text, exactly as em_status_encode
 * writes it (the reference; test_api_encode compares the two), without its
 * printf calls: they cost 15,000 instructions a status, as much as the rest
 * of a device answer.
 */
static void write_status(em__jw_t *w, const em_status_t *st)
{
    em__jw_lit(w, "{");
    size_t open = w->len;
    const char *name;
    if (st->has & EM_STATUS_HAS_BATTERY) {
        KEY(w, open, "batteryLevel");
        write_uint(w, st->battery_level);
    }
    if ((st->has & EM_STATUS_HAS_POWER_MODE) &&
        (name = em_power_mode_name((em_power_mode_t)st->power_mode)) != NULL) {
        KEY(w, open, "powerMode");
        em__jw_str(w, name, strlen(name));
    }
    if ((st->has & EM_STATUS_HAS_CONNECTION) &&
        (name = em_conn_status_name((em_conn_status_t)st->connection)) != NULL) {
        KEY(w, open, "connectionStatus");
        em__jw_str(w, name, strlen(name));
    }
    if (st->has & EM_STATUS_HAS_FIRMWARE) {
        /* Cut at the first byte the decoder would not have admitted. */
        size_t n = 0;
        while (n < EM_FIRMWARE_VERSION_MAX &&
               em__status_firmware_char((unsigned char)st->firmware_version[n]))
            n++;
        KEY(w, open, "firmwareVersion");
        em__jw_lit(w, "\"");
        em__jw_raw(w, st->firmware_version, n);
        em__jw_lit(w, "\"");
    }
    if (st->has & EM_STATUS_HAS_SIGNAL) {
        KEY(w, open, "signalStrength");
        em__jw_i64(w, st->signal_strength);
    }
    if (st->has & EM_STATUS_HAS_ERRORS) {
        KEY(w, open, "errors");
        em__jw_lit(w, "[]"); /* errors_json is NULL here */
    }
    if (st->has & EM_STATUS_HAS_EXTRA) {
        KEY(w, open, "additionalInfo");
        em__jw_lit(w, "{}"); /* extra_json is NULL here */
    }
    if (st->has & EM_STATUS_HAS_LAST_SEEN) {
        char ts[EM_TIME_STR_MAX];
        em__enc_time_text(st->last_seen_ms, ts, sizeof(ts)); /* "" when it cannot */
        KEY(w, open, "lastSeen");
        em__jw_str(w, ts, strlen(ts));
    }
    em__jw_lit(w, "}");
}

typedef struct group_writer {
    em__jw_t *w;
    size_t n;
} group_writer_t;

static int write_group(const char *name, size_t size, void *userdata)
{
    (void)size;
    group_writer_t *g = userdata;
    if (g->n++ > 0)
        em__jw_lit(g->w, ",");
    em__jw_str(g->w, name, strlen(name));
    return 0;
}

em_err_t em__enc_device_answer(const em_store_device_t *dev, const em_registry_t *reg,
                               const em_device_t *d, char *buf, size_t size, size_t *out_len)
{
    const em_status_t *st = &d->status;
    /* Statuses carry errors and additionalInfo as JSON text; only cJSON
     * spells them as the general path does (it reads and prints them). */
    if (st->has != 0 && (((st->has & EM_STATUS_HAS_ERRORS) && st->errors_json != NULL) ||
                         ((st->has & EM_STATUS_HAS_EXTRA) && st->extra_json != NULL)))
        return EM_ERR_STATE;
    em__jw_t w;
    em__jw_init(&w, buf, size);
    em__jw_lit(&w, "{\"success\":true,\"data\":{\"id\":");
    em__jw_str(&w, dev->id, strlen(dev->id));
    em__jw_lit(&w, ",\"name\":");
    em__jw_str(&w, dev->name, strlen(dev->name));
    em__jw_lit(&w, ",\"type\":");
    const char *type = em_device_type_name(dev->type);
    if (type != NULL)
        em__jw_str(&w, type, strlen(type));
    else
        em__jw_lit(&w, "null");
    em__jw_lit(&w, ",\"groups\":[");
    group_writer_t g = {&w, 0};
    em_registry_device_groups(reg, d, write_group, &g);
    em__jw_lit(&w, "],\"config\":{");
    /* em__enc_config's members, in its order; cJSON prints these whole
     * numbers as integers. */
    const em_device_config_t *cfg = &dev->config;
    size_t start = w.len;
    if (cfg->has & EM_CONFIG_HAS_REPORTING_INTERVAL) {
        em__jw_lit(&w, "\"reportingInterval\":");
        em__jw_i64(&w, (int64_t)cfg->reporting_interval);
    }
    if (cfg->has & EM_CONFIG_HAS_SLEEP_THRESHOLD) {
        if (w.len != start)
            em__jw_lit(&w, ",");
        em__jw_lit(&w, "\"sleepThreshold\":");
        em__jw_i64(&w, (int64_t)cfg->sleep_threshold);
    }
    if (cfg->has & EM_CONFIG_HAS_AUTO_WAKE) {
        if (w.len != start)
            em__jw_lit(&w, ",");
        if (cfg->auto_wake)
            em__jw_lit(&w, "\"autoWake\":true");
        else
            em__jw_lit(&w, "\"autoWake\":false");
    }
    if (cfg->has & EM_CONFIG_HAS_SECURITY_LEVEL) {
        if (w.len != start)
            em__jw_lit(&w, ",");
        em__jw_lit(&w, "\"securityLevel\":");
        em__jw_i64(&w, (int64_t)cfg->security_level);
    }
    if (dev->enabled)
        em__jw_lit(&w, "},\"enabled\":true,\"status\":");
    else
        em__jw_lit(&w, "},\"enabled\":false,\"status\":");
    /* Without errors and additionalInfo a status's text is what cJSON would
     * print of it: whole numbers and strings that need no escape. */
    if (st->has == 0)
        em__jw_lit(&w, "null");
    else
        write_status(&w, st);
    em__jw_lit(&w, ",\"createdAt\":");
    write_time(&w, dev->created_at_ms);
    em__jw_lit(&w, ",\"updatedAt\":");
    write_time(&w, dev->updated_at_ms);
    em__jw_lit(&w, "}}");
    return em__jw_finish(&w, out_len);
}
