/*
 * emiot - telemetry.c: energy telemetry decoding and encoding (see status.h).
 */
#include "emiot/status.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "emiot/clock.h"
#include "model/fields.h"

#define RULE_FINITE      "must be a finite number"
#define RULE_NONNEG      "must be a finite number >= 0"
#define RULE_TEMPERATURE "must be a number between -50 and 100"
#define RULE_HUMIDITY    "must be a number between 0 and 100"
#define RULE_BATTERY     "must be an integer between 0 and 100"
#define RULE_DUPLICATE   "appears more than once"

/* Keys and their rules, in the order they are encoded. */
typedef enum num_rule { ANY_FINITE, NON_NEGATIVE, RANGE } num_rule_t;

typedef struct num_field {
    const char *key;
    uint16_t bit;
    size_t offset;
    num_rule_t rule;
    double lo, hi;
    const char *msg;
} num_field_t;

static const num_field_t num_fields[] = {
    {"power_w", EM_TELEMETRY_HAS_POWER, offsetof(em_telemetry_t, power_w), ANY_FINITE, 0, 0,
     RULE_FINITE},
    {"energy_wh", EM_TELEMETRY_HAS_ENERGY, offsetof(em_telemetry_t, energy_wh), NON_NEGATIVE, 0, 0,
     RULE_NONNEG},
    {"voltage_v", EM_TELEMETRY_HAS_VOLTAGE, offsetof(em_telemetry_t, voltage_v), NON_NEGATIVE, 0, 0,
     RULE_NONNEG},
    {"current_a", EM_TELEMETRY_HAS_CURRENT, offsetof(em_telemetry_t, current_a), ANY_FINITE, 0, 0,
     RULE_FINITE},
    {"temperature", EM_TELEMETRY_HAS_TEMPERATURE, offsetof(em_telemetry_t, temperature), RANGE, -50,
     100, RULE_TEMPERATURE},
    {"humidity", EM_TELEMETRY_HAS_HUMIDITY, offsetof(em_telemetry_t, humidity), RANGE, 0, 100,
     RULE_HUMIDITY},
};

#define NUM_FIELDS (sizeof(num_fields) / sizeof(num_fields[0]))

/* Applies f's rule to d, which em__field_finite has already found finite. */
static bool num_ok(const num_field_t *f, double d)
{
    switch (f->rule) {
    case ANY_FINITE:
        return true;
    case NON_NEGATIVE:
        return d >= 0;
    case RANGE:
        return d >= f->lo && d <= f->hi;
    }
    return false;
}

static double *num_slot(em_telemetry_t *t, const num_field_t *f)
{
    return (double *)(void *)((char *)t + f->offset);
}

static const double *num_cslot(const em_telemetry_t *t, const num_field_t *f)
{
    return (const double *)(const void *)((const char *)t + f->offset);
}

em_err_t em_telemetry_decode(const char *payload, size_t len, int64_t now_ms, int64_t skew_ms,
                             em_telemetry_t *out, em_error_t *err)
{
    if (out == NULL)
        return em_error_set(err, EM_ERR_INVALID_ARGUMENT, EM_SEV_LOW, NULL, "no output");
    memset(out, 0, sizeof(*out));
    cJSON *root;
    em_err_t rc =
        em__field_parse_object(payload, len, NULL, "telemetry must be a JSON object", &root, err);
    if (rc != EM_OK)
        return rc;

    bool have_ts = false;
    for (const cJSON *v = root->child; v != NULL && rc == EM_OK; v = v->next) {
        const char *k = v->string;
        if (strcmp(k, "timestamp") == 0) {
            if (have_ts)
                rc = em__field_invalid(err, k, RULE_DUPLICATE);
            else
                rc = em__field_timestamp(v, k, &out->timestamp_ms, err);
            have_ts = true;
            continue;
        }
        if (strcmp(k, "battery") == 0) {
            int64_t i;
            if (out->has & EM_TELEMETRY_HAS_BATTERY)
                rc = em__field_invalid(err, k, RULE_DUPLICATE);
            else if (!em__field_int(v, 0, 100, &i))
                rc = em__field_invalid(err, k, RULE_BATTERY);
            else
                out->battery = (uint8_t)i;
            out->has |= EM_TELEMETRY_HAS_BATTERY;
            continue;
        }
        for (size_t i = 0; i < NUM_FIELDS; i++) {
            const num_field_t *f = &num_fields[i];
            if (strcmp(k, f->key) != 0)
                continue;
            double d;
            if (out->has & f->bit)
                rc = em__field_invalid(err, k, RULE_DUPLICATE);
            else if (!em__field_finite(v, &d) || !num_ok(f, d))
                rc = em__field_invalid(err, k, f->msg);
            else
                *num_slot(out, f) = d;
            out->has |= f->bit;
            break;
        }
        /* Any other key is allowed and ignored. */
    }
    if (rc != EM_OK)
        goto done;
    if (!have_ts) {
        rc = em__field_invalid(err, "timestamp", "is required");
        goto done;
    }
    /* now + skew saturates instead of overflowing; a negative skew means none. */
    int64_t skew = skew_ms > 0 ? skew_ms : 0;
    int64_t limit = now_ms > INT64_MAX - skew ? INT64_MAX : now_ms + skew;
    if (out->timestamp_ms > limit)
        rc = em__field_invalid(err, "timestamp", "must not be in the future");
done:
    em__json_free(root);
    if (rc != EM_OK)
        memset(out, 0, sizeof(*out));
    return rc;
}

/*
 * Writes d as the shortest of %.15g / %.17g that reads back to the same
 * double, with '.' as the decimal point whatever the locale.
 */
static int format_double(double d, char *buf, size_t size)
{
    int n = snprintf(buf, size, "%.15g", d);
    if (n > 0 && (size_t)n < size && strtod(buf, NULL) != d)
        n = snprintf(buf, size, "%.17g", d);
    if (n < 0 || (size_t)n >= size)
        return -1;
    for (int i = 0; i < n; i++)
        if (buf[i] == ',')
            buf[i] = '.';
    return n;
}

em_err_t em_telemetry_encode(const em_telemetry_t *t, char *buf, size_t size, size_t *out_len)
{
    if (t == NULL || buf == NULL)
        return EM_ERR_INVALID_ARGUMENT;
    for (size_t i = 0; i < NUM_FIELDS; i++)
        if ((t->has & num_fields[i].bit) && !isfinite(*num_cslot(t, &num_fields[i])))
            return EM_ERR_INVALID_ARGUMENT; /* JSON has no spelling for it */

    char ts[EM_TIME_STR_MAX];
    em_time_format(t->timestamp_ms, ts, sizeof(ts));
    size_t len = 0;
    int n = snprintf(buf, size, "{\"timestamp\":\"%s\"", ts);
    if (n < 0 || (size_t)n >= size)
        goto too_small;
    len = (size_t)n;
    for (size_t i = 0; i < NUM_FIELDS; i++) {
        const num_field_t *f = &num_fields[i];
        if (!(t->has & f->bit))
            continue;
        char num[40];
        if (format_double(*num_cslot(t, f), num, sizeof(num)) < 0)
            return EM_ERR_INTERNAL;
        n = snprintf(buf + len, size - len, ",\"%s\":%s", f->key, num);
        if (n < 0 || (size_t)n >= size - len)
            goto too_small;
        len += (size_t)n;
    }
    if (t->has & EM_TELEMETRY_HAS_BATTERY) {
        n = snprintf(buf + len, size - len, ",\"battery\":%u", (unsigned)t->battery);
        if (n < 0 || (size_t)n >= size - len)
            goto too_small;
        len += (size_t)n;
    }
    if (size - len < 2)
        goto too_small;
    buf[len++] = '}';
    buf[len] = '\0';
    if (out_len != NULL)
        *out_len = len;
    return EM_OK;
too_small:
    if (size > 0)
        buf[0] = '\0';
    return EM_ERR_BUFFER_TOO_SMALL;
}
