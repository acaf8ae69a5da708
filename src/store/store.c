/*
 * emiot - store.c: the store front (see store.h and store_internal.h).
 *
 * The front chooses the backend by URL scheme, validates every argument
 * before a backend sees it, serialises synchronous calls on one connection
 * and owns the write queue: a preallocated ring of records that a writer
 * thread, with a second connection, commits in batches.
 */
#include "store/store_internal.h"

#include <errno.h>
#include <math.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "emiot/clock.h"
#include "emiot/log.h"

/* Largest queue accepted: a record is under 1 KiB, so this bounds the ring to
 * a few GiB of address space, most of it never touched. */
#define QUEUE_MAX_LIMIT  16777216u /* 16 Mi records */
#define BATCH_MAX_LIMIT  100000u
#define INTERVAL_MAX_MS  10000u
#define WRITE_RETRIES    3
#define BUSY_TIMEOUT_MAX 600000
#define STORE_LOG_MODULE "store"

struct em_store {
    const em__store_backend_t *be;
    em__store_conn_t *sync_conn;   /* synchronous calls, behind sync_lock */
    em__store_conn_t *writer_conn; /* the writer thread's own */
    pthread_mutex_t sync_lock;
    int schema_version;
    em_store_options_t opts;

    /* The queue and everything below are guarded by qlock. */
    pthread_mutex_t qlock;
    pthread_cond_t q_work; /* the writer waits for records (or closing) */
    pthread_cond_t q_room; /* enqueuers wait for room */
    pthread_cond_t q_done; /* flush waits for commits */
    em__store_rec_t *ring;
    size_t cap;
    size_t head; /* oldest queued record */
    size_t count;
    bool closing;
    bool writer_stopped; /* the writer gave up after a database error */
    bool writer_running;
    unsigned flush_waiters; /* the writer does not linger while someone flushes */
    pthread_t writer;
    em__store_rec_t *batch; /* the writer's private copy of one batch */
    /* A batch worth committing without lingering: batch_max, or the whole
     * queue when that is smaller (a full queue means producers are waiting). */
    size_t full_batch;

    uint64_t enqueued;
    uint64_t committed;
    uint64_t batches;
    uint64_t queue_waits;
    uint64_t write_errors;
    uint64_t orphans;
    uint64_t last_batch_us;
};

/* ---- name tables ------------------------------------------------------- */

static const char *const command_state_names[] = {"queued",    "sent",   "acknowledged",
                                                  "succeeded", "failed", "expired"};
static const char *const event_kind_names[] = {"security", "audit", "device", "validation"};
static const char *const role_names[] = {NULL, "viewer", "operator", "admin", "device"};

#define COUNT_OF(a) (sizeof(a) / sizeof((a)[0]))

static int name_lookup(const char *const *names, size_t n, const char *name)
{
    for (size_t i = 0; i < n; i++) {
        if (names[i] != NULL && strcmp(names[i], name) == 0) {
            return (int)i;
        }
    }
    return -1;
}

/* Parses name against a name table into *out (an enum's int value). */
static em_err_t name_parse(const char *const *names, size_t n, const char *name, int *out)
{
    if (name == NULL || out == NULL) {
        return EM_ERR_INVALID_ARGUMENT;
    }
    int i = name_lookup(names, n, name);
    if (i < 0) {
        return EM_ERR_VALIDATION;
    }
    *out = i;
    return EM_OK;
}

const char *em_command_state_name(em_command_state_t s)
{
    if ((unsigned)s >= COUNT_OF(command_state_names)) {
        return NULL;
    }
    return command_state_names[s];
}

em_err_t em_command_state_parse(const char *name, em_command_state_t *out)
{
    int i = 0;
    em_err_t rc = name_parse(command_state_names, COUNT_OF(command_state_names), name,
                             out != NULL ? &i : NULL);
    if (rc == EM_OK) {
        *out = (em_command_state_t)i;
    }
    return rc;
}

const char *em_event_kind_name(em_event_kind_t k)
{
    if ((unsigned)k >= COUNT_OF(event_kind_names)) {
        return NULL;
    }
    return event_kind_names[k];
}

em_err_t em_event_kind_parse(const char *name, em_event_kind_t *out)
{
    int i = 0;
    em_err_t rc =
        name_parse(event_kind_names, COUNT_OF(event_kind_names), name, out != NULL ? &i : NULL);
    if (rc == EM_OK) {
        *out = (em_event_kind_t)i;
    }
    return rc;
}

const char *em_role_name(em_role_t r)
{
    if ((unsigned)r >= COUNT_OF(role_names)) {
        return NULL;
    }
    return role_names[r];
}

em_err_t em_role_parse(const char *name, em_role_t *out)
{
    int i = 0;
    em_err_t rc = name_parse(role_names, COUNT_OF(role_names), name, out != NULL ? &i : NULL);
    if (rc == EM_OK) {
        *out = (em_role_t)i;
    }
    return rc;
}

/* ---- rollups ---------------------------------------------------------- */

int64_t em__rollup_bucket(em_rollup_t kind, int64_t t_ms)
{
    const int64_t span = kind == EM_ROLLUP_DAY ? INT64_C(86400000) : INT64_C(3600000);
    /* Floor division, so that times before the epoch land in their own
     * bucket rather than the one after. */
    int64_t q = t_ms / span;
    if (t_ms % span != 0 && t_ms < 0) {
        q--;
    }
    return q * span;
}

static uint64_t rollup_hash(const char *id, em_rollup_t kind, int64_t bucket)
{
    uint64_t h = UINT64_C(1469598103934665603);
    for (const unsigned char *p = (const unsigned char *)id; *p != '\0'; p++) {
        h = (h ^ *p) * UINT64_C(1099511628211);
    }
    h = (h ^ (uint64_t)kind) * UINT64_C(1099511628211);
    uint64_t b = (uint64_t)bucket;
    for (int i = 0; i < 8; i++) {
        h = (h ^ (b & 0xffu)) * UINT64_C(1099511628211);
        b >>= 8;
    }
    return h;
}

em_err_t em__store_rollups(const em__store_rec_t *recs, size_t n, em__rollup_delta_t **out,
                           size_t *nout)
{
    *out = NULL;
    *nout = 0;
    size_t ntel = 0;
    for (size_t i = 0; i < n; i++) {
        if (recs[i].kind == EM__REC_TELEMETRY) {
            ntel++;
        }
    }
    if (ntel == 0) {
        return EM_OK;
    }
    /* At most two increments (hour, day) per sample; the open-addressing
     * table is kept at most half full. Both are bounded by the batch. */
    if (ntel > SIZE_MAX / 4 / sizeof(em__rollup_delta_t)) {
        return EM_ERR_NOMEM;
    }
    size_t maxd = ntel * 2;
    size_t tsize = 16;
    while (tsize < maxd * 2) {
        tsize <<= 1;
    }
    em__rollup_delta_t *d = malloc(maxd * sizeof(*d));
    size_t *table = malloc(tsize * sizeof(*table));
    if (d == NULL || table == NULL) {
        free(d);
        free(table);
        return EM_ERR_NOMEM;
    }
    for (size_t i = 0; i < tsize; i++) {
        table[i] = SIZE_MAX;
    }
    size_t nd = 0;
    for (size_t i = 0; i < n; i++) {
        const em__store_rec_t *r = &recs[i];
        if (r->kind != EM__REC_TELEMETRY) {
            continue;
        }
        for (int k = 0; k < 2; k++) {
            em_rollup_t kind = k == 0 ? EM_ROLLUP_HOUR : EM_ROLLUP_DAY;
            int64_t bucket = em__rollup_bucket(kind, r->time_ms);
            size_t slot = (size_t)rollup_hash(r->device_id, kind, bucket) & (tsize - 1);
            em__rollup_delta_t *x = NULL;
            while (table[slot] != SIZE_MAX) {
                em__rollup_delta_t *c = &d[table[slot]];
                if (c->kind == kind && c->bucket_ms == bucket &&
                    strcmp(c->device_id, r->device_id) == 0) {
                    x = c;
                    break;
                }
                slot = (slot + 1) & (tsize - 1);
            }
            if (x == NULL) {
                table[slot] = nd;
                x = &d[nd++];
                memset(x, 0, sizeof(*x));
                memcpy(x->device_id, r->device_id, sizeof(x->device_id));
                x->kind = kind;
                x->bucket_ms = bucket;
                x->power_max_w = -INFINITY;
            }
            x->samples++;
            x->energy_wh += r->u.tel.delta_wh;
            if (r->u.tel.t.has & EM_TELEMETRY_HAS_POWER) {
                x->power_sum_w += r->u.tel.t.power_w;
                x->power_samples++;
                if (r->u.tel.t.power_w > x->power_max_w) {
                    x->power_max_w = r->u.tel.t.power_w;
                }
            }
            if (r->u.tel.reset) {
                x->resets++;
            }
        }
    }
    free(table);
    *out = d;
    *nout = nd;
    return EM_OK;
}

/* ---- argument checks ---------------------------------------------------- */

static em_err_t bad_arg(em_error_t *err, const char *field, const char *rule)
{
    return em_error_set(err, EM_ERR_INVALID_ARGUMENT, EM_SEV_LOW, field, "%s", rule);
}

static em_err_t bad_value(em_error_t *err, const char *field, const char *rule)
{
    return em_error_set(err, EM_ERR_VALIDATION, EM_SEV_LOW, field, "%s", rule);
}

/* A fixed char array must hold its terminating NUL. */
#define TERMINATED(arr) (memchr((arr), '\0', sizeof(arr)) != NULL)

static em_err_t check_id(const char *id, const char *field, em_error_t *err)
{
    if (id == NULL) {
        return bad_arg(err, field, "is required");
    }
    return em_device_id_validate(id, strnlen(id, EM_DEVICE_ID_MAX + 1), err);
}

static em_err_t check_group(const char *name, em_error_t *err)
{
    if (name == NULL) {
        return bad_arg(err, "group", "is required");
    }
    return em_group_name_validate(name, strnlen(name, EM_GROUP_NAME_MAX + 1), err);
}

static bool token_char(unsigned char c, const char *extra)
{
    return (c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') ||
           (c != '\0' && strchr(extra, c) != NULL);
}

/* 1..max characters of [A-Za-z0-9] plus extra. */
static em_err_t check_token(const char *s, size_t max, const char *extra, const char *field,
                            em_error_t *err)
{
    if (s == NULL) {
        return bad_arg(err, field, "is required");
    }
    size_t len = strnlen(s, max + 1);
    if (len == 0 || len > max) {
        return em_error_set(err, EM_ERR_VALIDATION, EM_SEV_LOW, field, "must be 1-%zu characters",
                            max);
    }
    for (size_t i = 0; i < len; i++) {
        if (!token_char((unsigned char)s[i], extra)) {
            return em_error_set(err, EM_ERR_VALIDATION, EM_SEV_LOW, field,
                                "has a character outside [A-Za-z0-9%s]", extra);
        }
    }
    return EM_OK;
}

static em_err_t check_request_id(const char *rid, em_error_t *err)
{
    return check_token(rid, EM_REQUEST_ID_MAX, "_-", "requestId", err);
}

static em_err_t check_key_id(const char *kid, em_error_t *err)
{
    return check_token(kid, EM_STORE_KEY_ID_MAX, "_-", "keyId", err);
}

static em_err_t check_user_name(const char *name, em_error_t *err)
{
    return check_token(name, EM_STORE_NAME_MAX, "._@-", "name", err);
}

/* Text: at most max bytes, no control characters. empty_ok allows "". */
static em_err_t check_text(const char *s, size_t max, bool empty_ok, const char *field,
                           em_error_t *err)
{
    if (s == NULL) {
        return bad_arg(err, field, "is required");
    }
    size_t len = strnlen(s, max + 1);
    if (len > max) {
        return em_error_set(err, EM_ERR_INVALID_ARGUMENT, EM_SEV_LOW, field,
                            "is longer than %zu bytes", max);
    }
    if (len == 0 && !empty_ok) {
        return bad_value(err, field, "must not be empty");
    }
    for (size_t i = 0; i < len; i++) {
        unsigned char c = (unsigned char)s[i];
        if (c < 0x20 || c == 0x7f) {
            return bad_value(err, field, "must not contain control characters");
        }
    }
    return EM_OK;
}

em_err_t em__store_check_id(const char *id, const char *field, em_error_t *err)
{
    return check_id(id, field, err);
}

em_err_t em__store_check_token(const char *s, size_t max, const char *extra, const char *field,
                               em_error_t *err)
{
    return check_token(s, max, extra, field, err);
}

em_err_t em__store_check_text(const char *s, size_t max, bool empty_ok, const char *field,
                              em_error_t *err)
{
    return check_text(s, max, empty_ok, field, err);
}

static em_err_t check_json(const char *s, const char *field, em_error_t *err)
{
    if (s != NULL && strnlen(s, EM_STORE_JSON_MAX + 1) > EM_STORE_JSON_MAX) {
        return em_error_set(err, EM_ERR_INVALID_ARGUMENT, EM_SEV_LOW, field,
                            "is longer than %d bytes", EM_STORE_JSON_MAX);
    }
    return EM_OK;
}

/* Copies *in (or zeroes) into *out with the limit clamped; checks from <= to. */
static em_err_t check_range(const em_store_range_t *in, em_store_range_t *out, em_error_t *err)
{
    if (in == NULL) {
        memset(out, 0, sizeof(*out));
    } else if (in != out) {
        *out = *in;
    }
    if (out->from_ms < 0 || out->to_ms < 0) {
        return bad_value(err, "range", "times must not be negative");
    }
    if (out->from_ms != 0 && out->to_ms != 0 && out->from_ms > out->to_ms) {
        return bad_value(err, "range", "from must not be after to");
    }
    if (out->limit == 0) {
        out->limit = EM_STORE_PAGE_DEFAULT;
    } else if (out->limit > EM_STORE_PAGE_MAX) {
        out->limit = EM_STORE_PAGE_MAX;
    }
    return EM_OK;
}

static em_err_t check_device(const em_store_device_t *d, em_error_t *err)
{
    if (d == NULL) {
        return bad_arg(err, NULL, "device is required");
    }
    if (!TERMINATED(d->id) || !TERMINATED(d->name)) {
        return bad_arg(err, "id", "is not terminated");
    }
    em_err_t rc = check_id(d->id, "id", err);
    if (rc != EM_OK) {
        return rc;
    }
    rc = em_device_name_validate(d->name, strlen(d->name), err);
    if (rc != EM_OK) {
        return rc;
    }
    if (em_device_type_name(d->type) == NULL) {
        return bad_value(err, "type", "is not a device type");
    }
    return em_device_config_validate(&d->config, err);
}

static em_err_t check_status(const em_status_t *s, em_error_t *err)
{
    if (s == NULL) {
        return bad_arg(err, NULL, "status is required");
    }
    if (!TERMINATED(s->firmware_version)) {
        return bad_arg(err, "firmwareVersion", "is not terminated");
    }
    if (s->battery_level > 100) {
        return bad_value(err, "batteryLevel", "must be 0-100");
    }
    if (s->power_mode > EM_POWER_CRITICAL) {
        return bad_value(err, "powerMode", "is not a power mode");
    }
    if (s->connection > EM_CONN_INTERMITTENT) {
        return bad_value(err, "connectionStatus", "is not a connection status");
    }
    if (s->signal_strength < EM_SIGNAL_MIN || s->signal_strength > EM_SIGNAL_MAX) {
        return bad_value(err, "signalStrength", "is out of range");
    }
    if (s->last_seen_ms < 0) {
        return bad_value(err, "lastSeen", "must not be negative");
    }
    em_err_t rc = check_json(s->errors_json, "errors", err);
    if (rc == EM_OK) {
        rc = check_json(s->extra_json, "additionalInfo", err);
    }
    return rc;
}

/* A NaN or infinity would poison the rollup sums for good. */
static em_err_t check_telemetry_values(const em_telemetry_t *t, em_error_t *err)
{
    const struct {
        unsigned bit;
        double v;
        const char *field;
    } fields[] = {
        {EM_TELEMETRY_HAS_POWER, t->power_w, "power_w"},
        {EM_TELEMETRY_HAS_ENERGY, t->energy_wh, "energy_wh"},
        {EM_TELEMETRY_HAS_VOLTAGE, t->voltage_v, "voltage_v"},
        {EM_TELEMETRY_HAS_CURRENT, t->current_a, "current_a"},
        {EM_TELEMETRY_HAS_TEMPERATURE, t->temperature, "temperature"},
        {EM_TELEMETRY_HAS_HUMIDITY, t->humidity, "humidity"},
    };
    for (size_t i = 0; i < COUNT_OF(fields); i++) {
        if ((t->has & fields[i].bit) && !isfinite(fields[i].v)) {
            return bad_value(err, fields[i].field, "must be a finite number");
        }
    }
    if ((t->has & EM_TELEMETRY_HAS_BATTERY) && t->battery > 100) {
        return bad_value(err, "battery", "must be 0-100");
    }
    return EM_OK;
}

static em_err_t check_event(const em_store_event_t *ev, em_error_t *err)
{
    if (ev == NULL) {
        return bad_arg(err, NULL, "event is required");
    }
    if (!TERMINATED(ev->type) || !TERMINATED(ev->device_id) || !TERMINATED(ev->actor) ||
        !TERMINATED(ev->source) || !TERMINATED(ev->message)) {
        return bad_arg(err, NULL, "event string is not terminated");
    }
    if (em_event_kind_name(ev->kind) == NULL) {
        return bad_value(err, "kind", "is not an event kind");
    }
    if ((unsigned)ev->severity > EM_SEV_CRITICAL) {
        return bad_value(err, "severity", "is not a severity");
    }
    if (ev->time_ms < 0) {
        return bad_value(err, "time", "must not be negative");
    }
    em_err_t rc = check_token(ev->type, EM_STORE_NAME_MAX, "_.-", "type", err);
    if (rc == EM_OK && ev->device_id[0] != '\0') {
        rc = check_id(ev->device_id, "deviceId", err);
    }
    if (rc == EM_OK) {
        rc = check_text(ev->actor, EM_STORE_NAME_MAX, true, "actor", err);
    }
    if (rc == EM_OK) {
        rc = check_text(ev->source, EM_STORE_NAME_MAX, true, "source", err);
    }
    if (rc == EM_OK) {
        rc = check_text(ev->message, EM_STORE_TEXT_MAX, true, "message", err);
    }
    if (rc == EM_OK) {
        rc = check_json(ev->details_json, "details", err);
    }
    return rc;
}

static em_err_t check_command(const em_store_command_t *c, em_error_t *err)
{
    if (c == NULL) {
        return bad_arg(err, NULL, "command is required");
    }
    if (!TERMINATED(c->request_id) || !TERMINATED(c->device_id) || !TERMINATED(c->group) ||
        !TERMINATED(c->actor) || !TERMINATED(c->response_message)) {
        return bad_arg(err, NULL, "command string is not terminated");
    }
    em_err_t rc = check_request_id(c->request_id, err);
    if (rc == EM_OK) {
        rc = check_id(c->device_id, "deviceId", err);
    }
    if (rc == EM_OK && c->group[0] != '\0') {
        rc = check_group(c->group, err);
    }
    if (rc != EM_OK) {
        return rc;
    }
    if (em_command_type_name(c->type) == NULL) {
        return bad_value(err, "type", "is not a command type");
    }
    if (em_command_state_name(c->state) == NULL) {
        return bad_value(err, "state", "is not a command state");
    }
    if (c->created_at_ms < 0 || c->updated_at_ms < 0 || c->expires_at_ms < 0) {
        return bad_value(err, "createdAt", "times must not be negative");
    }
    rc = check_text(c->actor, EM_STORE_NAME_MAX, true, "actor", err);
    if (rc == EM_OK) {
        rc = check_json(c->payload_json, "payload", err);
    }
    return rc;
}

static em_err_t check_api_key(const em_store_api_key_t *k, em_error_t *err)
{
    if (k == NULL) {
        return bad_arg(err, NULL, "key is required");
    }
    if (!TERMINATED(k->key_id) || !TERMINATED(k->name) || !TERMINATED(k->device_id) ||
        !TERMINATED(k->owner)) {
        return bad_arg(err, NULL, "key string is not terminated");
    }
    em_err_t rc = check_key_id(k->key_id, err);
    if (rc == EM_OK) {
        rc = check_text(k->name, EM_STORE_NAME_MAX, false, "name", err);
    }
    if (rc == EM_OK) {
        rc = check_text(k->owner, EM_STORE_NAME_MAX, true, "owner", err);
    }
    if (rc != EM_OK) {
        return rc;
    }
    if (k->role == EM_ROLE_NONE || em_role_name(k->role) == NULL) {
        return bad_value(err, "role", "is not a role");
    }
    if (k->role == EM_ROLE_DEVICE) {
        rc = check_id(k->device_id, "deviceId", err);
        if (rc != EM_OK) {
            return rc;
        }
    } else if (k->device_id[0] != '\0') {
        return bad_value(err, "deviceId", "only a device key names a device");
    }
    if (k->created_at_ms < 0 || k->expires_at_ms < 0 || k->last_used_ms < 0 ||
        k->revoked_at_ms < 0) {
        return bad_value(err, "createdAt", "times must not be negative");
    }
    return EM_OK;
}

static em_err_t check_options(const em_store_options_t *o, em_error_t *err)
{
    if (o->batch_max < 1 || o->batch_max > BATCH_MAX_LIMIT) {
        return em_error_set(err, EM_ERR_CONFIGURATION, EM_SEV_MEDIUM, "batch_max", "must be 1-%u",
                            BATCH_MAX_LIMIT);
    }
    if (o->batch_interval_ms < 1 || o->batch_interval_ms > INTERVAL_MAX_MS) {
        return em_error_set(err, EM_ERR_CONFIGURATION, EM_SEV_MEDIUM, "batch_interval_ms",
                            "must be 1-%u", INTERVAL_MAX_MS);
    }
    if (o->queue_max < 1 || o->queue_max > QUEUE_MAX_LIMIT) {
        return em_error_set(err, EM_ERR_CONFIGURATION, EM_SEV_MEDIUM, "queue_max", "must be 1-%u",
                            QUEUE_MAX_LIMIT);
    }
    if (o->sync != EM_STORE_SYNC_FULL && o->sync != EM_STORE_SYNC_NORMAL) {
        return em_error_set(err, EM_ERR_CONFIGURATION, EM_SEV_MEDIUM, "sync",
                            "must be full or normal");
    }
    if (o->busy_timeout_ms < 0 || o->busy_timeout_ms > BUSY_TIMEOUT_MAX) {
        return em_error_set(err, EM_ERR_CONFIGURATION, EM_SEV_MEDIUM, "busy_timeout_ms",
                            "must be 0-%d", BUSY_TIMEOUT_MAX);
    }
    return EM_OK;
}

/* ---- open, close ------------------------------------------------------ */

void em_store_options_init(em_store_options_t *opts)
{
    if (opts == NULL) {
        return;
    }
    memset(opts, 0, sizeof(*opts));
    opts->batch_max = 2000;
    /* 100 ms, not less: the writer's cost per row falls as rows per device
     * per batch grow (each batch rewrites about one index page per device),
     * and a status reaches the registry (what the API reads) at once; the
     * store only records it. W2 over mqtts, QoS 1: 20 ms -> 100 ms took the
     * writer from 11.6 to 9.3 us per status. A flush never waits for it. */
    opts->batch_interval_ms = 100;
    opts->queue_max = 65536;
    opts->sync = EM_STORE_SYNC_FULL;
    opts->busy_timeout_ms = 5000;
}

static bool has_prefix(const char *s, const char *prefix)
{
    return strncmp(s, prefix, strlen(prefix)) == 0;
}

/* Picks the backend from the scheme. The URL itself never goes into err. */
static em_err_t pick_backend(const char *url, const em__store_backend_t **be, em_error_t *err)
{
    if (has_prefix(url, "sqlite:")) {
        if (url[strlen("sqlite:")] == '\0') {
            return em_error_set(err, EM_ERR_CONFIGURATION, EM_SEV_MEDIUM, "store",
                                "the sqlite URL has no path");
        }
        *be = &em__store_sqlite;
        return EM_OK;
    }
    if (has_prefix(url, "postgresql://") || has_prefix(url, "postgres://")) {
        *be = &em__store_pg;
        return EM_OK;
    }
    return em_error_set(err, EM_ERR_CONFIGURATION, EM_SEV_MEDIUM, "store",
                        "unknown store URL scheme (sqlite:, postgresql://)");
}

static void *writer_main(void *arg);

static void free_rec(em__store_rec_t *r)
{
    switch (r->kind) {
    case EM__REC_STATUS:
        em_status_cleanup(&r->u.status);
        break;
    case EM__REC_RESPONSE:
        em_response_cleanup(&r->u.resp);
        break;
    case EM__REC_EVENT:
        free(r->u.event.details);
        r->u.event.details = NULL;
        r->u.event.ev.details_json = NULL;
        break;
    case EM__REC_TELEMETRY:
    case EM__REC_KEY_USED:
    case EM__REC_COMMAND_STATE:
        break;
    }
}

static void store_destroy(em_store_t *st)
{
    if (st->ring != NULL) {
        for (size_t i = 0; i < st->count; i++) {
            free_rec(&st->ring[(st->head + i) % st->cap]);
        }
    }
    free(st->ring);
    free(st->batch);
    if (st->be != NULL) {
        st->be->close(st->writer_conn);
        st->be->close(st->sync_conn);
    }
    pthread_cond_destroy(&st->q_done);
    pthread_cond_destroy(&st->q_room);
    pthread_cond_destroy(&st->q_work);
    pthread_mutex_destroy(&st->qlock);
    pthread_mutex_destroy(&st->sync_lock);
    free(st);
}

static int init_cond_monotonic(pthread_cond_t *c)
{
    pthread_condattr_t a;
    if (pthread_condattr_init(&a) != 0) {
        return -1;
    }
    int rc = pthread_condattr_setclock(&a, CLOCK_MONOTONIC);
    if (rc == 0) {
        rc = pthread_cond_init(c, &a);
    }
    pthread_condattr_destroy(&a);
    return rc;
}

em_err_t em_store_open(const char *url, const em_store_options_t *opts, em_store_t **out,
                       em_error_t *err)
{
    if (out == NULL) {
        return bad_arg(err, NULL, "out is required");
    }
    *out = NULL;
    if (url == NULL || url[0] == '\0') {
        return em_error_set(err, EM_ERR_CONFIGURATION, EM_SEV_MEDIUM, "store",
                            "the store URL is empty");
    }
    if (strnlen(url, EM_STORE_URL_MAX + 1) > EM_STORE_URL_MAX) {
        return em_error_set(err, EM_ERR_CONFIGURATION, EM_SEV_MEDIUM, "store",
                            "the store URL is longer than %d bytes", EM_STORE_URL_MAX);
    }
    em_store_options_t o;
    if (opts != NULL) {
        o = *opts;
    } else {
        em_store_options_init(&o);
    }
    em_err_t rc = check_options(&o, err);
    if (rc != EM_OK) {
        return rc;
    }
    const em__store_backend_t *be = NULL;
    rc = pick_backend(url, &be, err);
    if (rc != EM_OK || be == NULL) {
        return rc != EM_OK ? rc
                           : em_error_set(err, EM_ERR_CONFIGURATION, EM_SEV_MEDIUM, "store",
                                          "unknown store URL scheme (sqlite:, postgresql://)");
    }

    em_store_t *st = calloc(1, sizeof(*st));
    if (st == NULL) {
        return em_error_set(err, EM_ERR_NOMEM, EM_SEV_HIGH, NULL, "out of memory");
    }
    if (pthread_mutex_init(&st->sync_lock, NULL) != 0) {
        free(st);
        return em_error_set(err, EM_ERR_INTERNAL, EM_SEV_HIGH, NULL, "mutex init failed");
    }
    if (pthread_mutex_init(&st->qlock, NULL) != 0) {
        pthread_mutex_destroy(&st->sync_lock);
        free(st);
        return em_error_set(err, EM_ERR_INTERNAL, EM_SEV_HIGH, NULL, "mutex init failed");
    }
    /* Each condvar is destroyed only if it was initialised. */
    pthread_cond_t *conds[] = {&st->q_work, &st->q_room, &st->q_done};
    for (size_t i = 0; i < COUNT_OF(conds); i++) {
        if (init_cond_monotonic(conds[i]) != 0) {
            while (i-- > 0) {
                pthread_cond_destroy(conds[i]);
            }
            pthread_mutex_destroy(&st->qlock);
            pthread_mutex_destroy(&st->sync_lock);
            free(st);
            return em_error_set(err, EM_ERR_INTERNAL, EM_SEV_HIGH, NULL, "condvar init failed");
        }
    }
    st->opts = o;
    st->cap = o.queue_max;
    st->full_batch = o.batch_max < o.queue_max ? o.batch_max : o.queue_max;
    st->ring = malloc(st->cap * sizeof(*st->ring));
    st->batch = malloc((size_t)o.batch_max * sizeof(*st->batch));
    if (st->ring == NULL || st->batch == NULL) {
        store_destroy(st);
        return em_error_set(err, EM_ERR_NOMEM, EM_SEV_HIGH, NULL, "out of memory");
    }

    rc = be->open(url, &o, &st->sync_conn, err);
    if (rc != EM_OK) {
        store_destroy(st);
        return rc;
    }
    st->be = be;
    rc = be->migrate(st->sync_conn, &st->schema_version, err);
    if (rc == EM_OK) {
        rc = be->open(url, &o, &st->writer_conn, err);
    }
    if (rc != EM_OK) {
        store_destroy(st);
        return rc;
    }
    if (pthread_create(&st->writer, NULL, writer_main, st) != 0) {
        store_destroy(st);
        return em_error_set(err, EM_ERR_INTERNAL, EM_SEV_HIGH, NULL,
                            "cannot start the writer thread");
    }
    st->writer_running = true;
    *out = st;
    return EM_OK;
}

void em_store_close(em_store_t *st)
{
    if (st == NULL) {
        return;
    }
    pthread_mutex_lock(&st->qlock);
    st->closing = true;
    pthread_cond_broadcast(&st->q_work);
    pthread_cond_broadcast(&st->q_room);
    pthread_cond_broadcast(&st->q_done);
    pthread_mutex_unlock(&st->qlock);
    if (st->writer_running) {
        pthread_join(st->writer, NULL);
        st->writer_running = false;
    }
    store_destroy(st);
}

const char *em_store_backend(const em_store_t *st)
{
    return st != NULL && st->be != NULL ? st->be->name : NULL;
}

int em_store_schema_version(const em_store_t *st)
{
    return st != NULL ? st->schema_version : 0;
}

/* ---- the writer --------------------------------------------------------- */

static void deadline_after(struct timespec *ts, long ms)
{
    clock_gettime(CLOCK_MONOTONIC, ts);
    ts->tv_sec += ms / 1000;
    ts->tv_nsec += (ms % 1000) * 1000000L;
    if (ts->tv_nsec >= 1000000000L) {
        ts->tv_sec++;
        ts->tv_nsec -= 1000000000L;
    }
}

static uint64_t mono_us(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000u + (uint64_t)ts.tv_nsec / 1000u;
}

/* Writes one batch, retrying a failed transaction a few times: a transient
 * failure (a lock held too long by another process, a dropped PostgreSQL
 * connection the backend re-opens) should not stop ingest. */
static em_err_t write_with_retries(em_store_t *st, size_t n, uint64_t *orphans, em_error_t *err)
{
    static const int backoff_ms[WRITE_RETRIES] = {10, 100, 500};
    em_err_t rc = EM_OK;
    for (int attempt = 0; attempt <= WRITE_RETRIES; attempt++) {
        uint64_t o = 0;
        rc = st->be->write_batch(st->writer_conn, st->batch, n, &o, err);
        if (rc == EM_OK) {
            *orphans = o;
            return EM_OK;
        }
        if (attempt == WRITE_RETRIES) {
            break;
        }
        em_log_field_t f[] = {EM_LOG_STR("error", err->message), EM_LOG_INT("rows", n),
                              EM_LOG_INT("attempt", attempt + 1)};
        em_log(EM_LOG_WARN, STORE_LOG_MODULE, NULL, "batch write failed, retrying", f, COUNT_OF(f));
        struct timespec ts = {0, backoff_ms[attempt] * 1000000L};
        while (nanosleep(&ts, &ts) != 0 && errno == EINTR) {
        }
    }
    return rc;
}

static void *writer_main(void *arg)
{
    em_store_t *st = arg;
    /* Named for top -H, perf and debuggers (at most 15 characters). */
    pthread_setname_np(pthread_self(), "emiot-store");
    pthread_mutex_lock(&st->qlock);
    for (;;) {
        while (st->count == 0 && !st->closing) {
            pthread_cond_wait(&st->q_work, &st->qlock);
        }
        if (st->count == 0) {
            break; /* closing and drained */
        }
        /* Linger a little for a fuller batch: one transaction per record
         * would cost an fsync each. Not when closing or someone flushes. */
        if (st->count < st->full_batch && !st->closing && st->flush_waiters == 0) {
            struct timespec dl;
            deadline_after(&dl, (long)st->opts.batch_interval_ms);
            while (st->count < st->full_batch && !st->closing && st->flush_waiters == 0) {
                if (pthread_cond_timedwait(&st->q_work, &st->qlock, &dl) == ETIMEDOUT) {
                    break;
                }
            }
        }
        size_t n = st->count < st->opts.batch_max ? st->count : st->opts.batch_max;
        for (size_t i = 0; i < n; i++) {
            st->batch[i] = st->ring[st->head];
            st->head = (st->head + 1) % st->cap;
        }
        st->count -= n;
        pthread_cond_broadcast(&st->q_room);
        pthread_mutex_unlock(&st->qlock);

        em_error_t e;
        em_error_clear(&e);
        uint64_t orphans = 0;
        uint64_t t0 = mono_us();
        em_err_t rc = write_with_retries(st, n, &orphans, &e);
        uint64_t took = mono_us() - t0;
        for (size_t i = 0; i < n; i++) {
            free_rec(&st->batch[i]);
        }

        if (rc != EM_OK) {
            /* Logged before anyone can see the writer stopped, so that the
             * line is there when flush or enqueue report EM_ERR_STATE. */
            em_log_field_t f[] = {EM_LOG_STR("error", e.message),
                                  EM_LOG_STR("code", em_err_name(rc)), EM_LOG_INT("rows", n)};
            em_log(EM_LOG_ERROR, STORE_LOG_MODULE, NULL,
                   "batch write failed; the store writer stopped and refuses new records", f,
                   COUNT_OF(f));
        }
        pthread_mutex_lock(&st->qlock);
        if (rc == EM_OK) {
            st->committed += n;
            st->batches++;
            st->orphans += orphans;
            st->last_batch_us = took;
            pthread_cond_broadcast(&st->q_done);
            continue;
        }
        /* Give up: stop accepting rather than drop records silently. What is
         * still queued stays uncommitted; flush and enqueue now report
         * EM_ERR_STATE. */
        st->write_errors++;
        st->writer_stopped = true;
        pthread_cond_broadcast(&st->q_done);
        pthread_cond_broadcast(&st->q_room);
        pthread_mutex_unlock(&st->qlock);
        return NULL;
    }
    pthread_mutex_unlock(&st->qlock);
    return NULL;
}

/* ---- the queue ---------------------------------------------------------- */

/* Reserves a slot (waiting for room) and returns it with qlock held, or an
 * error with qlock released. */
static em_err_t queue_reserve(em_store_t *st, em__store_rec_t **slot, em_error_t *err)
{
    pthread_mutex_lock(&st->qlock);
    bool waited = false;
    while (st->count == st->cap && !st->closing && !st->writer_stopped) {
        waited = true;
        pthread_cond_wait(&st->q_room, &st->qlock);
    }
    if (waited) {
        st->queue_waits++;
    }
    if (st->closing || st->writer_stopped) {
        bool closing = st->closing;
        pthread_mutex_unlock(&st->qlock);
        em_error_set(err, EM_ERR_STATE, EM_SEV_HIGH, NULL,
                     closing ? "the store is closing"
                             : "the store writer stopped after a database error");
        return EM_ERR_STATE;
    }
    *slot = &st->ring[(st->head + st->count) % st->cap];
    return EM_OK;
}

/* Publishes the reserved slot and releases qlock. The writer is woken when
 * the queue stops being empty or a batch is full; in between it is lingering
 * on its own timer, so a signal per record would only cost context switches. */
static void queue_commit(em_store_t *st)
{
    st->count++;
    st->enqueued++;
    if (st->count == 1 || st->count >= st->full_batch) {
        pthread_cond_signal(&st->q_work);
    }
    pthread_mutex_unlock(&st->qlock);
}

static char *dup_or_null(const char *s, bool *failed)
{
    if (s == NULL) {
        return NULL;
    }
    char *d = strdup(s);
    if (d == NULL) {
        *failed = true;
    }
    return d;
}

em_err_t em_store_enqueue_status(em_store_t *st, const char *id, const em_status_t *status,
                                 em_error_t *err)
{
    if (st == NULL) {
        return bad_arg(err, NULL, "store is required");
    }
    em_err_t rc = check_id(id, "id", err);
    if (rc == EM_OK) {
        rc = check_status(status, err);
    }
    if (rc != EM_OK) {
        return rc;
    }
    /* Copy outside the lock: the heap strings are the only allocations. */
    em__store_rec_t r;
    r.kind = EM__REC_STATUS;
    r.u.status = *status;
    bool failed = false;
    r.u.status.errors_json = dup_or_null(status->errors_json, &failed);
    r.u.status.extra_json = dup_or_null(status->extra_json, &failed);
    if (failed) {
        em_status_cleanup(&r.u.status);
        return em_error_set(err, EM_ERR_NOMEM, EM_SEV_HIGH, NULL, "out of memory");
    }
    int64_t t = (status->has & EM_STATUS_HAS_LAST_SEEN) && status->last_seen_ms > 0
                    ? status->last_seen_ms
                    : em_now_ms();
    r.time_ms = t;
    r.u.status.last_seen_ms = t;
    r.u.status.has |= EM_STATUS_HAS_LAST_SEEN;
    size_t idlen = strlen(id);
    memcpy(r.device_id, id, idlen + 1);

    /* The record's heap strings move into the ring slot (free_rec frees
     * them after the batch); the analyzer loses them across queue_reserve. */
    em__store_rec_t *slot = NULL; /* NOLINT(clang-analyzer-unix.Malloc) */
    rc = queue_reserve(st, &slot, err);
    if (rc != EM_OK) {
        em_status_cleanup(&r.u.status);
        return rc;
    }
    *slot = r;
    queue_commit(st);
    return EM_OK;
}

em_err_t em_store_enqueue_telemetry(em_store_t *st, const char *id, const em_telemetry_t *t,
                                    double energy_delta_wh, bool counter_reset, em_error_t *err)
{
    if (st == NULL || t == NULL) {
        return bad_arg(err, NULL, "store and sample are required");
    }
    em_err_t rc = check_id(id, "id", err);
    if (rc != EM_OK) {
        return rc;
    }
    if (!isfinite(energy_delta_wh) || energy_delta_wh < 0) {
        return bad_value(err, "energy_wh", "the energy delta must be finite and not negative");
    }
    if (t->timestamp_ms < 0) {
        return bad_value(err, "timestamp", "must not be negative");
    }
    rc = check_telemetry_values(t, err);
    if (rc != EM_OK) {
        return rc;
    }
    em__store_rec_t *slot = NULL;
    rc = queue_reserve(st, &slot, err);
    if (rc != EM_OK) {
        return rc;
    }
    slot->kind = EM__REC_TELEMETRY;
    memcpy(slot->device_id, id, strlen(id) + 1);
    slot->time_ms = t->timestamp_ms;
    slot->u.tel.t = *t;
    slot->u.tel.delta_wh = energy_delta_wh;
    slot->u.tel.reset = counter_reset;
    queue_commit(st);
    return EM_OK;
}

em_err_t em_store_enqueue_response(em_store_t *st, const char *device_id, const em_response_t *resp,
                                   int64_t now_ms, em_error_t *err)
{
    if (st == NULL || resp == NULL) {
        return bad_arg(err, NULL, "store and response are required");
    }
    em_err_t rc = check_id(device_id, "deviceId", err);
    if (rc != EM_OK) {
        return rc;
    }
    if (!TERMINATED(resp->request_id) || !TERMINATED(resp->message)) {
        return bad_arg(err, "requestId", "is not terminated");
    }
    rc = check_request_id(resp->request_id, err);
    if (rc == EM_OK) {
        rc = check_json(resp->data_json, "data", err);
    }
    if (rc != EM_OK) {
        return rc;
    }
    em__store_rec_t r;
    r.kind = EM__REC_RESPONSE;
    r.u.resp = *resp;
    bool failed = false;
    r.u.resp.data_json = dup_or_null(resp->data_json, &failed);
    if (failed) {
        return em_error_set(err, EM_ERR_NOMEM, EM_SEV_HIGH, NULL, "out of memory");
    }
    r.time_ms = now_ms > 0 ? now_ms : em_now_ms();
    memcpy(r.device_id, device_id, strlen(device_id) + 1);
    /* The record's heap strings move into the ring slot (free_rec frees
     * them after the batch); the analyzer loses them across queue_reserve. */
    em__store_rec_t *slot = NULL; /* NOLINT(clang-analyzer-unix.Malloc) */
    rc = queue_reserve(st, &slot, err);
    if (rc != EM_OK) {
        free(r.u.resp.data_json);
        return rc;
    }
    *slot = r;
    queue_commit(st);
    return EM_OK;
}

em_err_t em_store_enqueue_command_state(em_store_t *st, const char *request_id,
                                        em_command_state_t state, int64_t now_ms, em_error_t *err)
{
    if (st == NULL) {
        return bad_arg(err, NULL, "store is required");
    }
    em_err_t rc = check_request_id(request_id, err);
    if (rc != EM_OK) {
        return rc;
    }
    if (em_command_state_name(state) == NULL) {
        return bad_value(err, "state", "is not a command state");
    }
    em__store_rec_t *slot = NULL;
    rc = queue_reserve(st, &slot, err);
    if (rc != EM_OK) {
        return rc;
    }
    slot->kind = EM__REC_COMMAND_STATE;
    slot->device_id[0] = '\0';
    slot->time_ms = now_ms > 0 ? now_ms : em_now_ms();
    memcpy(slot->u.cmd.request_id, request_id, strlen(request_id) + 1);
    slot->u.cmd.state = state;
    queue_commit(st);
    return EM_OK;
}

em_err_t em_store_enqueue_event(em_store_t *st, const em_store_event_t *ev, em_error_t *err)
{
    if (st == NULL) {
        return bad_arg(err, NULL, "store is required");
    }
    em_err_t rc = check_event(ev, err);
    if (rc != EM_OK) {
        return rc;
    }
    em__store_rec_t r;
    r.kind = EM__REC_EVENT;
    r.u.event.ev = *ev;
    bool failed = false;
    r.u.event.details = dup_or_null(ev->details_json, &failed);
    if (failed) {
        return em_error_set(err, EM_ERR_NOMEM, EM_SEV_HIGH, NULL, "out of memory");
    }
    r.u.event.ev.details_json = r.u.event.details;
    r.u.event.ev.id = 0;
    if (r.u.event.ev.time_ms == 0) {
        r.u.event.ev.time_ms = em_now_ms();
    }
    r.time_ms = r.u.event.ev.time_ms;
    memcpy(r.device_id, ev->device_id, sizeof(r.device_id));
    /* The record's heap strings move into the ring slot (free_rec frees
     * them after the batch); the analyzer loses them across queue_reserve. */
    em__store_rec_t *slot = NULL; /* NOLINT(clang-analyzer-unix.Malloc) */
    rc = queue_reserve(st, &slot, err);
    if (rc != EM_OK) {
        free(r.u.event.details);
        return rc;
    }
    *slot = r;
    queue_commit(st);
    return EM_OK;
}

em_err_t em_store_enqueue_key_used(em_store_t *st, const char *key_id, int64_t now_ms,
                                   em_error_t *err)
{
    if (st == NULL) {
        return bad_arg(err, NULL, "store is required");
    }
    em_err_t rc = check_key_id(key_id, err);
    if (rc != EM_OK) {
        return rc;
    }
    em__store_rec_t *slot = NULL;
    rc = queue_reserve(st, &slot, err);
    if (rc != EM_OK) {
        return rc;
    }
    slot->kind = EM__REC_KEY_USED;
    memcpy(slot->device_id, key_id, strlen(key_id) + 1);
    slot->time_ms = now_ms > 0 ? now_ms : em_now_ms();
    queue_commit(st);
    return EM_OK;
}

em_err_t em_store_flush(em_store_t *st, int timeout_ms, em_error_t *err)
{
    if (st == NULL) {
        return bad_arg(err, NULL, "store is required");
    }
    struct timespec dl;
    if (timeout_ms >= 0) {
        deadline_after(&dl, timeout_ms);
    }
    em_err_t rc = EM_OK;
    pthread_mutex_lock(&st->qlock);
    uint64_t target = st->enqueued;
    st->flush_waiters++;
    pthread_cond_signal(&st->q_work);
    while (st->committed < target && !st->writer_stopped) {
        int w = timeout_ms >= 0 ? pthread_cond_timedwait(&st->q_done, &st->qlock, &dl)
                                : pthread_cond_wait(&st->q_done, &st->qlock);
        if (w == ETIMEDOUT && st->committed < target) {
            rc = em_error_set(err, EM_ERR_TIMEOUT, EM_SEV_MEDIUM, NULL,
                              "queued records not committed within %d ms", timeout_ms);
            break;
        }
    }
    if (rc == EM_OK && st->committed < target) {
        rc = em_error_set(err, EM_ERR_STATE, EM_SEV_HIGH, NULL,
                          "the store writer stopped after a database error");
    }
    st->flush_waiters--;
    pthread_mutex_unlock(&st->qlock);
    return rc;
}

void em_store_stats(em_store_t *st, em_store_stats_t *out)
{
    if (out == NULL) {
        return;
    }
    memset(out, 0, sizeof(*out));
    if (st == NULL) {
        return;
    }
    pthread_mutex_lock(&st->qlock);
    out->enqueued = st->enqueued;
    out->committed = st->committed;
    out->batches = st->batches;
    out->queue_depth = st->enqueued - st->committed;
    out->queue_waits = st->queue_waits;
    out->write_errors = st->write_errors;
    out->orphan_responses = st->orphans;
    out->last_batch_us = st->last_batch_us;
    pthread_mutex_unlock(&st->qlock);
}

/* ---- synchronous calls -------------------------------------------------- */

/* Runs one backend call on the synchronous connection. */
#define SYNC_CALL(st, call)                                                                        \
    do {                                                                                           \
        pthread_mutex_lock(&(st)->sync_lock);                                                      \
        em_err_t sync_rc_ = (st)->be->call;                                                        \
        pthread_mutex_unlock(&(st)->sync_lock);                                                    \
        return sync_rc_;                                                                           \
    } while (0)

em__store_conn_t *em__store_sync_begin(em_store_t *st)
{
    pthread_mutex_lock(&st->sync_lock);
    return st->sync_conn;
}

void em__store_sync_end(em_store_t *st)
{
    pthread_mutex_unlock(&st->sync_lock);
}

const em__store_backend_t *em__store_be(const em_store_t *st)
{
    return st->be;
}

#define REQUIRE_STORE(st)                                                                          \
    do {                                                                                           \
        if ((st) == NULL) {                                                                        \
            return bad_arg(err, NULL, "store is required");                                        \
        }                                                                                          \
    } while (0)

#define REQUIRE_FN(fn)                                                                             \
    do {                                                                                           \
        if ((fn) == NULL) {                                                                        \
            return bad_arg(err, NULL, "callback is required");                                     \
        }                                                                                          \
    } while (0)

#define CHECK(expr)                                                                                \
    do {                                                                                           \
        em_err_t check_rc_ = (expr);                                                               \
        if (check_rc_ != EM_OK) {                                                                  \
            return check_rc_;                                                                      \
        }                                                                                          \
    } while (0)

em_err_t em_store_device_insert(em_store_t *st, const em_store_device_t *dev, em_error_t *err)
{
    REQUIRE_STORE(st);
    CHECK(check_device(dev, err));
    SYNC_CALL(st, device_insert(st->sync_conn, dev, err));
}

em_err_t em_store_device_update(em_store_t *st, const em_store_device_t *dev, em_error_t *err)
{
    REQUIRE_STORE(st);
    CHECK(check_device(dev, err));
    SYNC_CALL(st, device_update(st->sync_conn, dev, err));
}

em_err_t em_store_device_delete(em_store_t *st, const char *id, em_error_t *err)
{
    REQUIRE_STORE(st);
    CHECK(check_id(id, "id", err));
    SYNC_CALL(st, device_delete(st->sync_conn, id, err));
}

em_err_t em_store_device_get(em_store_t *st, const char *id, em_store_device_t *out,
                             em_error_t *err)
{
    REQUIRE_STORE(st);
    if (out == NULL) {
        return bad_arg(err, NULL, "out is required");
    }
    CHECK(check_id(id, "id", err));
    SYNC_CALL(st, device_get(st->sync_conn, id, out, err));
}

em_err_t em_store_device_list(em_store_t *st, const em_store_device_filter_t *f,
                              em_store_device_fn fn, void *userdata, size_t *count, em_error_t *err)
{
    if (count != NULL) {
        *count = 0;
    }
    REQUIRE_STORE(st);
    REQUIRE_FN(fn);
    em_store_device_filter_t lf = {NULL, -1, NULL, 0};
    if (f != NULL) {
        lf = *f;
    }
    if (lf.group != NULL) {
        CHECK(check_group(lf.group, err));
    }
    if (lf.type != -1 && em_device_type_name((em_device_type_t)lf.type) == NULL) {
        return bad_value(err, "type", "is not a device type");
    }
    if (lf.after != NULL) {
        CHECK(check_id(lf.after, "after", err));
    }
    if (lf.limit == 0) {
        lf.limit = EM_STORE_PAGE_DEFAULT;
    } else if (lf.limit > EM_STORE_PAGE_MAX) {
        lf.limit = EM_STORE_PAGE_MAX;
    }
    SYNC_CALL(st, device_list(st->sync_conn, &lf, fn, userdata, count, err));
}

em_err_t em_store_group_insert(em_store_t *st, const char *name, int64_t now_ms, em_error_t *err)
{
    REQUIRE_STORE(st);
    CHECK(check_group(name, err));
    SYNC_CALL(st, group_insert(st->sync_conn, name, now_ms > 0 ? now_ms : em_now_ms(), err));
}

em_err_t em_store_group_delete(em_store_t *st, const char *name, em_error_t *err)
{
    REQUIRE_STORE(st);
    CHECK(check_group(name, err));
    SYNC_CALL(st, group_delete(st->sync_conn, name, err));
}

em_err_t em_store_group_list(em_store_t *st, em_store_group_fn fn, void *userdata, em_error_t *err)
{
    REQUIRE_STORE(st);
    REQUIRE_FN(fn);
    SYNC_CALL(st, group_list(st->sync_conn, fn, userdata, err));
}

em_err_t em_store_member_add(em_store_t *st, const char *group, const char *id, em_error_t *err)
{
    REQUIRE_STORE(st);
    CHECK(check_group(group, err));
    CHECK(check_id(id, "id", err));
    SYNC_CALL(st, member_add(st->sync_conn, group, id, err));
}

em_err_t em_store_member_remove(em_store_t *st, const char *group, const char *id, em_error_t *err)
{
    REQUIRE_STORE(st);
    CHECK(check_group(group, err));
    CHECK(check_id(id, "id", err));
    SYNC_CALL(st, member_remove(st->sync_conn, group, id, err));
}

em_err_t em_store_member_list(em_store_t *st, em_store_member_fn fn, void *userdata,
                              em_error_t *err)
{
    REQUIRE_STORE(st);
    REQUIRE_FN(fn);
    SYNC_CALL(st, member_list(st->sync_conn, fn, userdata, err));
}

em_err_t em_store_status_latest(em_store_t *st, const char *id, em_store_status_fn fn,
                                void *userdata, em_error_t *err)
{
    REQUIRE_STORE(st);
    REQUIRE_FN(fn);
    if (id != NULL) {
        CHECK(check_id(id, "id", err));
    }
    SYNC_CALL(st, status_latest(st->sync_conn, id, fn, userdata, err));
}

em_err_t em_store_status_history(em_store_t *st, const char *id, const em_store_range_t *r,
                                 em_store_status_fn fn, void *userdata, em_error_t *err)
{
    REQUIRE_STORE(st);
    REQUIRE_FN(fn);
    CHECK(check_id(id, "id", err));
    em_store_range_t lr;
    CHECK(check_range(r, &lr, err));
    SYNC_CALL(st, status_history(st->sync_conn, id, &lr, fn, userdata, err));
}

em_err_t em_store_telemetry_list(em_store_t *st, const char *id, const em_store_range_t *r,
                                 em_store_telemetry_fn fn, void *userdata, em_error_t *err)
{
    REQUIRE_STORE(st);
    REQUIRE_FN(fn);
    CHECK(check_id(id, "id", err));
    em_store_range_t lr;
    CHECK(check_range(r, &lr, err));
    SYNC_CALL(st, telemetry_list(st->sync_conn, id, &lr, fn, userdata, err));
}

static em_err_t check_rollup_kind(em_rollup_t kind, em_error_t *err)
{
    if (kind != EM_ROLLUP_HOUR && kind != EM_ROLLUP_DAY) {
        return bad_value(err, "rollup", "must be hour or day");
    }
    return EM_OK;
}

em_err_t em_store_rollup_device(em_store_t *st, const char *id, em_rollup_t kind,
                                const em_store_range_t *r, em_store_rollup_fn fn, void *userdata,
                                em_error_t *err)
{
    REQUIRE_STORE(st);
    REQUIRE_FN(fn);
    CHECK(check_id(id, "id", err));
    CHECK(check_rollup_kind(kind, err));
    em_store_range_t lr;
    CHECK(check_range(r, &lr, err));
    SYNC_CALL(st, rollup_device(st->sync_conn, id, kind, &lr, fn, userdata, err));
}

em_err_t em_store_rollup_group(em_store_t *st, const char *group, em_rollup_t kind,
                               const em_store_range_t *r, em_store_rollup_fn fn, void *userdata,
                               em_error_t *err)
{
    REQUIRE_STORE(st);
    REQUIRE_FN(fn);
    CHECK(check_group(group, err));
    CHECK(check_rollup_kind(kind, err));
    em_store_range_t lr;
    CHECK(check_range(r, &lr, err));
    SYNC_CALL(st, rollup_group(st->sync_conn, group, kind, &lr, fn, userdata, err));
}

em_err_t em_store_command_insert(em_store_t *st, const em_store_command_t *cmd, em_error_t *err)
{
    REQUIRE_STORE(st);
    CHECK(check_command(cmd, err));
    SYNC_CALL(st, command_insert(st->sync_conn, cmd, err));
}

em_err_t em_store_command_set_state(em_store_t *st, const char *request_id,
                                    em_command_state_t state, int64_t now_ms, em_error_t *err)
{
    REQUIRE_STORE(st);
    CHECK(check_request_id(request_id, err));
    if (em_command_state_name(state) == NULL) {
        return bad_value(err, "state", "is not a command state");
    }
    SYNC_CALL(st, command_set_state(st->sync_conn, request_id, state,
                                    now_ms > 0 ? now_ms : em_now_ms(), err));
}

em_err_t em_store_command_expire(em_store_t *st, int64_t now_ms, size_t *expired, em_error_t *err)
{
    if (expired != NULL) {
        *expired = 0;
    }
    REQUIRE_STORE(st);
    if (now_ms < 0) {
        return bad_value(err, "now", "must not be negative");
    }
    size_t dummy = 0;
    SYNC_CALL(st, command_expire(st->sync_conn, now_ms, expired != NULL ? expired : &dummy, err));
}

em_err_t em_store_command_get(em_store_t *st, const char *request_id, em_store_command_fn fn,
                              void *userdata, em_error_t *err)
{
    REQUIRE_STORE(st);
    REQUIRE_FN(fn);
    CHECK(check_request_id(request_id, err));
    SYNC_CALL(st, command_get(st->sync_conn, request_id, fn, userdata, err));
}

em_err_t em_store_command_list(em_store_t *st, const em_store_command_filter_t *f,
                               em_store_command_fn fn, void *userdata, em_error_t *err)
{
    REQUIRE_STORE(st);
    REQUIRE_FN(fn);
    em_store_command_filter_t lf;
    memset(&lf, 0, sizeof(lf));
    lf.state = -1;
    if (f != NULL) {
        lf = *f;
    }
    if (lf.device_id != NULL) {
        CHECK(check_id(lf.device_id, "deviceId", err));
    }
    if (lf.group != NULL) {
        CHECK(check_group(lf.group, err));
    }
    if (lf.state != -1 && em_command_state_name((em_command_state_t)lf.state) == NULL) {
        return bad_value(err, "state", "is not a command state");
    }
    CHECK(check_range(&lf.range, &lf.range, err));
    SYNC_CALL(st, command_list(st->sync_conn, &lf, fn, userdata, err));
}

em_err_t em_store_event_insert(em_store_t *st, const em_store_event_t *ev, em_error_t *err)
{
    REQUIRE_STORE(st);
    CHECK(check_event(ev, err));
    em_store_event_t e = *ev;
    e.id = 0;
    if (e.time_ms == 0) {
        e.time_ms = em_now_ms();
    }
    SYNC_CALL(st, event_insert(st->sync_conn, &e, err));
}

em_err_t em_store_event_list(em_store_t *st, const em_store_event_filter_t *f, em_store_event_fn fn,
                             void *userdata, em_error_t *err)
{
    REQUIRE_STORE(st);
    REQUIRE_FN(fn);
    em_store_event_filter_t lf;
    memset(&lf, 0, sizeof(lf));
    lf.kind = -1;
    lf.min_severity = -1;
    if (f != NULL) {
        lf = *f;
    }
    if (lf.kind != -1 && em_event_kind_name((em_event_kind_t)lf.kind) == NULL) {
        return bad_value(err, "kind", "is not an event kind");
    }
    if (lf.type != NULL) {
        CHECK(check_token(lf.type, EM_STORE_NAME_MAX, "_.-", "type", err));
    }
    if (lf.device_id != NULL) {
        CHECK(check_id(lf.device_id, "deviceId", err));
    }
    if (lf.min_severity != -1 && (lf.min_severity < 0 || lf.min_severity > EM_SEV_CRITICAL)) {
        return bad_value(err, "severity", "is not a severity");
    }
    if (lf.before_id < 0) {
        return bad_value(err, "before", "must not be negative");
    }
    CHECK(check_range(&lf.range, &lf.range, err));
    SYNC_CALL(st, event_list(st->sync_conn, &lf, fn, userdata, err));
}

static em_err_t check_user(const em_store_user_t *u, em_error_t *err)
{
    if (u == NULL) {
        return bad_arg(err, NULL, "user is required");
    }
    if (!TERMINATED(u->name)) {
        return bad_arg(err, "name", "is not terminated");
    }
    CHECK(check_user_name(u->name, err));
    if (u->role != EM_ROLE_VIEWER && u->role != EM_ROLE_OPERATOR && u->role != EM_ROLE_ADMIN) {
        return bad_value(err, "role", "a user is a viewer, an operator or an admin");
    }
    if (u->created_at_ms < 0) {
        return bad_value(err, "createdAt", "must not be negative");
    }
    return EM_OK;
}

em_err_t em_store_user_insert(em_store_t *st, const em_store_user_t *u, em_error_t *err)
{
    REQUIRE_STORE(st);
    CHECK(check_user(u, err));
    SYNC_CALL(st, user_insert(st->sync_conn, u, err));
}

em_err_t em_store_user_get(em_store_t *st, const char *name, em_store_user_t *out, em_error_t *err)
{
    REQUIRE_STORE(st);
    if (out == NULL) {
        return bad_arg(err, NULL, "out is required");
    }
    CHECK(check_user_name(name, err));
    SYNC_CALL(st, user_get(st->sync_conn, name, out, err));
}

em_err_t em_store_user_delete(em_store_t *st, const char *name, em_error_t *err)
{
    REQUIRE_STORE(st);
    CHECK(check_user_name(name, err));
    SYNC_CALL(st, user_delete(st->sync_conn, name, err));
}

em_err_t em_store_user_list(em_store_t *st, em_store_user_fn fn, void *userdata, em_error_t *err)
{
    REQUIRE_STORE(st);
    REQUIRE_FN(fn);
    SYNC_CALL(st, user_list(st->sync_conn, fn, userdata, err));
}

em_err_t em_store_api_key_insert(em_store_t *st, const em_store_api_key_t *k, em_error_t *err)
{
    REQUIRE_STORE(st);
    CHECK(check_api_key(k, err));
    SYNC_CALL(st, api_key_insert(st->sync_conn, k, err));
}

em_err_t em_store_api_key_get(em_store_t *st, const char *key_id, em_store_api_key_t *out,
                              em_error_t *err)
{
    REQUIRE_STORE(st);
    if (out == NULL) {
        return bad_arg(err, NULL, "out is required");
    }
    CHECK(check_key_id(key_id, err));
    SYNC_CALL(st, api_key_get(st->sync_conn, key_id, out, err));
}

em_err_t em_store_api_key_revoke(em_store_t *st, const char *key_id, int64_t now_ms,
                                 em_error_t *err)
{
    REQUIRE_STORE(st);
    CHECK(check_key_id(key_id, err));
    SYNC_CALL(st, api_key_revoke(st->sync_conn, key_id, now_ms > 0 ? now_ms : em_now_ms(), err));
}

em_err_t em_store_api_key_list(em_store_t *st, em_store_api_key_fn fn, void *userdata,
                               em_error_t *err)
{
    REQUIRE_STORE(st);
    REQUIRE_FN(fn);
    SYNC_CALL(st, api_key_list(st->sync_conn, fn, userdata, err));
}

em_err_t em_store_prune(em_store_t *st, const em_store_retention_t *r, int64_t now_ms,
                        uint64_t *deleted, em_error_t *err)
{
    if (deleted != NULL) {
        *deleted = 0;
    }
    REQUIRE_STORE(st);
    if (r == NULL) {
        return bad_arg(err, NULL, "retention is required");
    }
    if (r->status_history_ms < 0 || r->telemetry_ms < 0 || r->rollup_hour_ms < 0 ||
        r->rollup_day_ms < 0 || r->events_ms < 0 || r->commands_ms < 0) {
        return bad_value(err, "retention", "periods must not be negative");
    }
    if (now_ms < 0) {
        return bad_value(err, "now", "must not be negative");
    }
    uint64_t dummy = 0;
    SYNC_CALL(st, prune(st->sync_conn, r, now_ms, deleted != NULL ? deleted : &dummy, err));
}
