/*
 * emiot - status.c: device status decoding and encoding (see status.h).
 *
 * The decoder is on the ingest hot path (W1: a million messages a second).
 * em_status_decode first tries the jsmn fast path of status_fast.c, which
 * decides the common compact message without building a tree or allocating;
 * whatever it declines is decoded here on a cJSON tree, which stays the
 * reference for every rule (status_internal.h). The tree decoder walks the
 * parsed object once and dispatches on the key; with "errors":[] and
 * "additionalInfo":{} it costs no allocation beyond the JSON arena.
 */
#include "emiot/status.h"

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "emiot/clock.h"
#include "model/fields.h"
#include "model/status_internal.h"

const char *const em__status_power_mode_names[EM__STATUS_POWER_MODES] = {
    NULL, "normal", "low_power", "sleep", "critical"};
const char *const em__status_conn_names[EM__STATUS_CONNS] = {NULL, "online", "offline",
                                                             "intermittent"};

const char *em_power_mode_name(em_power_mode_t m)
{
    if ((unsigned)m >= EM__STATUS_POWER_MODES)
        return NULL;
    return em__status_power_mode_names[m];
}

const char *em_conn_status_name(em_conn_status_t c)
{
    if ((unsigned)c >= EM__STATUS_CONNS)
        return NULL;
    return em__status_conn_names[c];
}

void em_status_cleanup(em_status_t *st)
{
    if (st == NULL)
        return;
    free(st->errors_json);
    free(st->extra_json);
    memset(st, 0, sizeof(*st));
}

static char *dup_or_null(const char *s, bool *failed)
{
    if (s == NULL)
        return NULL;
    char *d = strdup(s);
    if (d == NULL)
        *failed = true;
    return d;
}

em_err_t em_status_copy(em_status_t *dst, const em_status_t *src)
{
    if (dst == NULL || src == NULL)
        return EM_ERR_INVALID_ARGUMENT;
    if (dst == src)
        return EM_OK;
    bool failed = false;
    char *errors = dup_or_null(src->errors_json, &failed);
    char *extra = dup_or_null(src->extra_json, &failed);
    if (failed) {
        free(errors);
        free(extra);
        memset(dst, 0, sizeof(*dst));
        return EM_ERR_NOMEM;
    }
    *dst = *src;
    dst->errors_json = errors;
    dst->extra_json = extra;
    return EM_OK;
}

/* Index of s in names[1..n-1], or 0 when it is none of them. */
static unsigned lookup_name(const char *s, const char *const *names, unsigned n)
{
    for (unsigned i = 1; i < n; i++)
        if (strcmp(s, names[i]) == 0)
            return i;
    return 0;
}

static em_err_t decode_firmware(const cJSON *v, em_status_t *out, em_error_t *err)
{
    if (!cJSON_IsString(v))
        return em__field_invalid(err, "firmwareVersion", EM__STATUS_RULE_FIRMWARE);
    const unsigned char *s = (const unsigned char *)v->valuestring;
    size_t n = 0;
    while (s[n] != '\0') {
        if (n >= EM_FIRMWARE_VERSION_MAX || !em__status_firmware_char(s[n]))
            return em__field_invalid(err, "firmwareVersion", EM__STATUS_RULE_FIRMWARE);
        n++;
    }
    if (n == 0)
        return em__field_invalid(err, "firmwareVersion", EM__STATUS_RULE_FIRMWARE);
    memcpy(out->firmware_version, s, n + 1);
    return EM_OK;
}

static em_err_t decode_errors(const cJSON *v, em_status_t *out, em_error_t *err)
{
    if (!cJSON_IsArray(v))
        return em__field_invalid(err, "errors", EM__STATUS_RULE_ERRORS);
    unsigned count = 0;
    for (const cJSON *e = v->child; e != NULL; e = e->next) {
        if (++count > EM_STATUS_ERRORS_MAX || !cJSON_IsString(e) ||
            strnlen(e->valuestring, EM_STATUS_ERROR_LEN_MAX + 1) > EM_STATUS_ERROR_LEN_MAX)
            return em__field_invalid(err, "errors", EM__STATUS_RULE_ERRORS);
    }
    /* cJSON prints a string no longer than its shortest JSON spelling, so the
     * compact list is never longer than the payload it came from: this bound
     * never refuses a valid list. */
    return em__field_compact(v, "errors", EM__STATUS_RULE_ERRORS, EM_PAYLOAD_MAX, &out->errors_json,
                             err);
}

static em_err_t decode_extra(const cJSON *v, em_status_t *out, em_error_t *err)
{
    if (!cJSON_IsObject(v))
        return em__field_invalid(err, "additionalInfo", EM__STATUS_RULE_EXTRA);
    return em__field_compact(v, "additionalInfo", EM__STATUS_RULE_EXTRA, EM_STATUS_EXTRA_MAX,
                             &out->extra_json, err);
}

/* The EM_STATUS_HAS_* bit of a key, or 0 when the key is not one of ours. */
static uint16_t key_bit(const char *k)
{
    switch (k[0]) {
    case 'b':
        return strcmp(k, "batteryLevel") == 0 ? EM_STATUS_HAS_BATTERY : 0;
    case 'p':
        return strcmp(k, "powerMode") == 0 ? EM_STATUS_HAS_POWER_MODE : 0;
    case 'c':
        return strcmp(k, "connectionStatus") == 0 ? EM_STATUS_HAS_CONNECTION : 0;
    case 'f':
        return strcmp(k, "firmwareVersion") == 0 ? EM_STATUS_HAS_FIRMWARE : 0;
    case 's':
        return strcmp(k, "signalStrength") == 0 ? EM_STATUS_HAS_SIGNAL : 0;
    case 'e':
        return strcmp(k, "errors") == 0 ? EM_STATUS_HAS_ERRORS : 0;
    case 'a':
        return strcmp(k, "additionalInfo") == 0 ? EM_STATUS_HAS_EXTRA : 0;
    default:
        return 0;
    }
}

static em_err_t decode_member(const cJSON *v, uint16_t bit, em_status_t *out, em_error_t *err)
{
    const char *k = v->string;
    int64_t i;
    unsigned idx;
    switch (bit) {
    case EM_STATUS_HAS_BATTERY:
        if (!em__field_int(v, 0, 100, &i))
            return em__field_invalid(err, k, EM__STATUS_RULE_BATTERY);
        out->battery_level = (uint8_t)i;
        return EM_OK;
    case EM_STATUS_HAS_POWER_MODE:
        if (!cJSON_IsString(v) || (idx = lookup_name(v->valuestring, em__status_power_mode_names,
                                                     EM__STATUS_POWER_MODES)) == 0)
            return em__field_invalid(err, k, EM__STATUS_RULE_POWER_MODE);
        out->power_mode = (uint8_t)idx;
        return EM_OK;
    case EM_STATUS_HAS_CONNECTION:
        if (!cJSON_IsString(v) ||
            (idx = lookup_name(v->valuestring, em__status_conn_names, EM__STATUS_CONNS)) == 0)
            return em__field_invalid(err, k, EM__STATUS_RULE_CONNECTION);
        out->connection = (uint8_t)idx;
        return EM_OK;
    case EM_STATUS_HAS_FIRMWARE:
        return decode_firmware(v, out, err);
    case EM_STATUS_HAS_SIGNAL:
        if (!em__field_int(v, EM_SIGNAL_MIN, EM_SIGNAL_MAX, &i))
            return em__field_invalid(err, k, EM__STATUS_RULE_SIGNAL);
        out->signal_strength = (int16_t)i;
        return EM_OK;
    case EM_STATUS_HAS_ERRORS:
        return decode_errors(v, out, err);
    case EM_STATUS_HAS_EXTRA:
        return decode_extra(v, out, err);
    default:
        return EM_OK;
    }
}

em_err_t em__status_decode_tree(const char *payload, size_t len, em_status_t *out, em_error_t *err)
{
    memset(out, 0, sizeof(*out));
    cJSON *root;
    em_err_t rc =
        em__field_parse_object(payload, len, NULL, EM__STATUS_RULE_NOT_OBJECT, &root, err);
    if (rc != EM_OK)
        return rc;
    for (const cJSON *v = root->child; v != NULL; v = v->next) {
        uint16_t bit = key_bit(v->string);
        if (bit == 0)
            continue; /* unknown keys are allowed and ignored */
        /* A second copy of a key could make two readers of the same message
         * disagree about its value, so duplicates are refused outright. */
        if (out->has & bit) {
            rc = em__field_invalid(err, v->string, EM__STATUS_RULE_DUPLICATE);
            goto done;
        }
        rc = decode_member(v, bit, out, err);
        if (rc != EM_OK)
            goto done;
        out->has |= bit;
    }
done:
    em__json_free(root);
    if (rc != EM_OK)
        em_status_cleanup(out);
    return rc;
}

em_err_t em_status_decode(const char *payload, size_t len, em_status_t *out, em_error_t *err)
{
    if (out == NULL)
        return em_error_set(err, EM_ERR_INVALID_ARGUMENT, EM_SEV_LOW, NULL, "no output");
    em_err_t rc;
    if (em__status_decode_fast(payload, len, out, err, &rc))
        return rc;
    return em__status_decode_tree(payload, len, out, err);
}

/* Appends to a bounded buffer; remembers overflow instead of failing each call. */
typedef struct out_buf {
    char *buf;
    size_t size;
    size_t len;
    bool overflow;
} out_buf_t;

static void put(out_buf_t *o, const char *s, size_t n)
{
    if (o->overflow || n >= o->size - o->len) {
        o->overflow = true;
        return;
    }
    memcpy(o->buf + o->len, s, n);
    o->len += n;
    o->buf[o->len] = '\0';
}

static void puts_(out_buf_t *o, const char *s)
{
    put(o, s, strlen(s));
}

static void putf(out_buf_t *o, const char *fmt, ...) EM_PRINTF(2, 3);

static void putf(out_buf_t *o, const char *fmt, ...)
{
    if (o->overflow)
        return;
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(o->buf + o->len, o->size - o->len, fmt, ap);
    va_end(ap);
    if (n < 0 || (size_t)n >= o->size - o->len) {
        o->overflow = true;
        o->buf[o->len] = '\0';
        return;
    }
    o->len += (size_t)n;
}

/* Writes ,"key": (or {"key": for the first member). */
static void put_key(out_buf_t *o, const char *key)
{
    putf(o, "%s\"%s\":", o->len == 1 ? "" : ",", key);
}

em_err_t em_status_encode(const em_status_t *st, char *buf, size_t size, size_t *out_len)
{
    if (st == NULL || buf == NULL)
        return EM_ERR_INVALID_ARGUMENT;
    if (size < 3) {
        if (size > 0)
            buf[0] = '\0';
        return EM_ERR_BUFFER_TOO_SMALL;
    }
    out_buf_t o = {buf, size, 0, false};
    buf[0] = '\0';
    put(&o, "{", 1);
    if (st->has & EM_STATUS_HAS_BATTERY) {
        put_key(&o, "batteryLevel");
        putf(&o, "%u", (unsigned)st->battery_level);
    }
    const char *name;
    if ((st->has & EM_STATUS_HAS_POWER_MODE) &&
        (name = em_power_mode_name((em_power_mode_t)st->power_mode)) != NULL) {
        put_key(&o, "powerMode");
        putf(&o, "\"%s\"", name);
    }
    if ((st->has & EM_STATUS_HAS_CONNECTION) &&
        (name = em_conn_status_name((em_conn_status_t)st->connection)) != NULL) {
        put_key(&o, "connectionStatus");
        putf(&o, "\"%s\"", name);
    }
    if (st->has & EM_STATUS_HAS_FIRMWARE) {
        /* The decoder admits only characters that need no JSON escaping; a
         * hand-filled value is cut at the first one that would. */
        size_t n = 0;
        while (n < EM_FIRMWARE_VERSION_MAX &&
               em__status_firmware_char((unsigned char)st->firmware_version[n]))
            n++;
        put_key(&o, "firmwareVersion");
        put(&o, "\"", 1);
        put(&o, st->firmware_version, n);
        put(&o, "\"", 1);
    }
    if (st->has & EM_STATUS_HAS_SIGNAL) {
        put_key(&o, "signalStrength");
        putf(&o, "%d", (int)st->signal_strength);
    }
    if (st->has & EM_STATUS_HAS_ERRORS) {
        put_key(&o, "errors");
        puts_(&o, st->errors_json != NULL ? st->errors_json : "[]");
    }
    if (st->has & EM_STATUS_HAS_EXTRA) {
        put_key(&o, "additionalInfo");
        puts_(&o, st->extra_json != NULL ? st->extra_json : "{}");
    }
    if (st->has & EM_STATUS_HAS_LAST_SEEN) {
        char ts[EM_TIME_STR_MAX];
        em_time_format(st->last_seen_ms, ts, sizeof(ts));
        put_key(&o, "lastSeen");
        putf(&o, "\"%s\"", ts);
    }
    put(&o, "}", 1);
    if (o.overflow) {
        buf[0] = '\0';
        return EM_ERR_BUFFER_TOO_SMALL;
    }
    if (out_len != NULL)
        *out_len = o.len;
    return EM_OK;
}
