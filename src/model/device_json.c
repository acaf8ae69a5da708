/*
 * emiot - device_json.c: devices and device configurations as JSON
 * (see device.h).
 */
#include <string.h>

#include "core/json.h"
#include "emiot/clock.h"
#include "emiot/device.h"
#include "emiot/status.h"
#include "model/fields.h"
#include "model/json_util.h"

/* The body of em__device_config_from_json; may leave out half filled. */
static em_err_t read_config(const cJSON *obj, bool allow_unknown, em_device_config_t *out,
                            em_error_t *err)
{
    for (const cJSON *c = obj->child; c != NULL; c = c->next) {
        const char *key = c->string != NULL ? c->string : "";
        uint8_t bit;
        if (strcmp(key, "reportingInterval") == 0)
            bit = EM_CONFIG_HAS_REPORTING_INTERVAL;
        else if (strcmp(key, "sleepThreshold") == 0)
            bit = EM_CONFIG_HAS_SLEEP_THRESHOLD;
        else if (strcmp(key, "autoWake") == 0)
            bit = EM_CONFIG_HAS_AUTO_WAKE;
        else if (strcmp(key, "securityLevel") == 0)
            bit = EM_CONFIG_HAS_SECURITY_LEVEL;
        else if (allow_unknown)
            continue;
        else
            return em_error_set(err, EM_ERR_VALIDATION, EM_SEV_LOW, key,
                                "is not a configuration field (reportingInterval, "
                                "sleepThreshold, autoWake, securityLevel)");
        /* cJSON keeps duplicate keys, and other JSON parsers would take a
         * different one than we checked: refuse the ambiguity. */
        if (out->has & bit)
            return em_error_set(err, EM_ERR_VALIDATION, EM_SEV_LOW, key, "must appear only once");
        out->has |= bit;

        int64_t v = 0;
        em_err_t rc = EM_OK;
        switch (bit) {
        case EM_CONFIG_HAS_REPORTING_INTERVAL:
            rc =
                em__json_int(c, key, EM_REPORTING_INTERVAL_MIN, EM_REPORTING_INTERVAL_MAX, &v, err);
            out->reporting_interval = (uint32_t)v;
            break;
        case EM_CONFIG_HAS_SLEEP_THRESHOLD:
            rc = em__json_int(c, key, 0, EM_SLEEP_THRESHOLD_MAX, &v, err);
            out->sleep_threshold = (uint8_t)v;
            break;
        case EM_CONFIG_HAS_SECURITY_LEVEL:
            rc = em__json_int(c, key, EM_SECURITY_LEVEL_MIN, EM_SECURITY_LEVEL_MAX, &v, err);
            out->security_level = (uint8_t)v;
            break;
        default: /* EM_CONFIG_HAS_AUTO_WAKE */
            if (!cJSON_IsBool(c))
                rc = em_error_set(err, EM_ERR_VALIDATION, EM_SEV_LOW, key, "must be true or false");
            else
                out->auto_wake = cJSON_IsTrue(c);
            break;
        }
        if (rc != EM_OK)
            return rc;
    }
    return EM_OK;
}

em_err_t em__device_config_from_json(const cJSON *obj, bool allow_unknown, em_device_config_t *out,
                                     em_error_t *err)
{
    memset(out, 0, sizeof(*out));
    em_err_t rc = read_config(obj, allow_unknown, out, err);
    if (rc != EM_OK)
        memset(out, 0, sizeof(*out)); /* nothing half read */
    return rc;
}

em_err_t em_device_config_decode(const char *json, size_t len, em_device_config_t *out,
                                 em_error_t *err)
{
    if (out == NULL)
        return em_error_set(err, EM_ERR_INVALID_ARGUMENT, EM_SEV_LOW, NULL, "out is NULL");
    memset(out, 0, sizeof(*out));
    cJSON *root;
    em_err_t rc = em__field_parse_object(json, len, "config", "must be a JSON object", &root, err);
    if (rc != EM_OK)
        return rc;
    rc = em__device_config_from_json(root, false, out, err);
    em__json_free(root);
    return rc;
}

/* Writes "," before every member but the first. */
static void sep(em__jw_t *w, bool *first)
{
    if (!*first)
        em__jw_lit(w, ",");
    *first = false;
}

/* Writes the fields of cfg that are set; shared by the two encoders. */
static void write_config(em__jw_t *w, const em_device_config_t *cfg)
{
    bool first = true;
    em__jw_lit(w, "{");
    if (cfg->has & EM_CONFIG_HAS_REPORTING_INTERVAL) {
        sep(w, &first);
        em__jw_lit(w, "\"reportingInterval\":");
        em__jw_i64(w, cfg->reporting_interval);
    }
    if (cfg->has & EM_CONFIG_HAS_SLEEP_THRESHOLD) {
        sep(w, &first);
        em__jw_lit(w, "\"sleepThreshold\":");
        em__jw_i64(w, cfg->sleep_threshold);
    }
    if (cfg->has & EM_CONFIG_HAS_AUTO_WAKE) {
        sep(w, &first);
        if (cfg->auto_wake)
            em__jw_lit(w, "\"autoWake\":true");
        else
            em__jw_lit(w, "\"autoWake\":false");
    }
    if (cfg->has & EM_CONFIG_HAS_SECURITY_LEVEL) {
        sep(w, &first);
        em__jw_lit(w, "\"securityLevel\":");
        em__jw_i64(w, cfg->security_level);
    }
    em__jw_lit(w, "}");
}

em_err_t em_device_config_encode(const em_device_config_t *cfg, char *buf, size_t size,
                                 size_t *out_len)
{
    if (cfg == NULL || buf == NULL)
        return EM_ERR_INVALID_ARGUMENT;
    em__jw_t w;
    em__jw_init(&w, buf, size);
    write_config(&w, cfg);
    return em__jw_finish(&w, out_len);
}

static void write_time(em__jw_t *w, int64_t ms)
{
    char t[EM_TIME_STR_MAX];
    size_t n = em_time_format(ms, t, sizeof(t));
    if (n == 0 || n >= sizeof(t)) {
        em__jw_lit(w, "null");
        return;
    }
    em__jw_str(w, t, n);
}

em_err_t em_device_encode(const em_device_t *dev, const char *const *group_names, size_t n_groups,
                          char *buf, size_t size, size_t *out_len)
{
    if (dev == NULL || buf == NULL || (n_groups > 0 && group_names == NULL))
        return EM_ERR_INVALID_ARGUMENT;
    const char *type = em_device_type_name((em_device_type_t)dev->type);
    if (type == NULL)
        return EM_ERR_INVALID_ARGUMENT;
    size_t id_len = strnlen(dev->id, sizeof(dev->id));
    if (id_len == sizeof(dev->id))
        return EM_ERR_INVALID_ARGUMENT; /* not terminated: not a registered device */

    em__jw_t w;
    em__jw_init(&w, buf, size);
    em__jw_lit(&w, "{\"id\":");
    em__jw_str(&w, dev->id, id_len);
    em__jw_lit(&w, ",\"name\":");
    /* A registered device always has a name; a bare struct falls back to its
     * id, as the registry does for a device added without one. */
    if (dev->name != NULL)
        em__jw_str(&w, dev->name, strlen(dev->name));
    else
        em__jw_str(&w, dev->id, id_len);
    em__jw_lit(&w, ",\"type\":");
    em__jw_str(&w, type, strlen(type));
    em__jw_lit(&w, ",\"groups\":[");
    for (size_t i = 0; i < n_groups; i++) {
        if (group_names[i] == NULL)
            return EM_ERR_INVALID_ARGUMENT;
        if (i > 0)
            em__jw_lit(&w, ",");
        em__jw_str(&w, group_names[i], strlen(group_names[i]));
    }
    em__jw_lit(&w, "],\"config\":");
    write_config(&w, &dev->config);
    em__jw_lit(&w, ",\"status\":");
    if (dev->status.has == 0) {
        em__jw_lit(&w, "null");
    } else if (!w.overflow) {
        /* The status encoder writes straight into the rest of the buffer,
         * including its NUL, which the next append overwrites. */
        size_t n = 0;
        em_err_t rc = em_status_encode(&dev->status, w.buf + w.len, w.size - w.len, &n);
        if (rc == EM_ERR_BUFFER_TOO_SMALL)
            w.overflow = true;
        else if (rc != EM_OK)
            return rc;
        else
            w.len += n;
    }
    em__jw_lit(&w, ",\"createdAt\":");
    write_time(&w, dev->created_at_ms);
    em__jw_lit(&w, ",\"updatedAt\":");
    write_time(&w, dev->updated_at_ms);
    em__jw_lit(&w, "}");
    return em__jw_finish(&w, out_len);
}
