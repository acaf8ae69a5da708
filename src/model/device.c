/*
 * emiot - device.c: validation of device ids, group names, device names,
 * configurations and device types (see device.h).
 */
#include "emiot/device.h"

#include <string.h>

#include "model/json_util.h"

#define ID_RULE    "must be 3-50 characters of A-Z a-z 0-9 _ -"
#define GROUP_RULE "must be 2-50 characters of A-Z a-z 0-9 space -"

static bool is_alnum(unsigned char c)
{
    return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9');
}

em_err_t em_device_id_validate(const char *id, size_t len, em_error_t *err)
{
    if (id == NULL || len < EM_DEVICE_ID_MIN || len > EM_DEVICE_ID_MAX || !em__is_token(id, len))
        return em_error_set(err, EM_ERR_VALIDATION, EM_SEV_LOW, "id", ID_RULE);
    return EM_OK;
}

em_err_t em_group_name_validate(const char *name, size_t len, em_error_t *err)
{
    if (name == NULL || len < EM_GROUP_NAME_MIN || len > EM_GROUP_NAME_MAX)
        return em_error_set(err, EM_ERR_VALIDATION, EM_SEV_LOW, "group", GROUP_RULE);
    for (size_t i = 0; i < len; i++) {
        unsigned char c = (unsigned char)name[i];
        if (!is_alnum(c) && c != ' ' && c != '-')
            return em_error_set(err, EM_ERR_VALIDATION, EM_SEV_LOW, "group", GROUP_RULE);
    }
    return EM_OK;
}

em_err_t em_device_name_validate(const char *name, size_t len, em_error_t *err)
{
    if (name == NULL || len < 1 || len > EM_DEVICE_NAME_MAX)
        return em_error_set(err, EM_ERR_VALIDATION, EM_SEV_LOW, "name", "must be 1-%d bytes long",
                            EM_DEVICE_NAME_MAX);
    switch (em__utf8_check(name, len, true)) {
    case EM__UTF8_INVALID:
        return em_error_set(err, EM_ERR_VALIDATION, EM_SEV_LOW, "name", "must be valid UTF-8");
    case EM__UTF8_CONTROL:
        return em_error_set(err, EM_ERR_VALIDATION, EM_SEV_LOW, "name",
                            "must not contain control characters");
    default:
        return EM_OK;
    }
}

em_err_t em_device_config_validate(const em_device_config_t *cfg, em_error_t *err)
{
    const unsigned known = EM_CONFIG_HAS_REPORTING_INTERVAL | EM_CONFIG_HAS_SLEEP_THRESHOLD |
                           EM_CONFIG_HAS_AUTO_WAKE | EM_CONFIG_HAS_SECURITY_LEVEL;
    if (cfg == NULL)
        return em_error_set(err, EM_ERR_VALIDATION, EM_SEV_LOW, "config", "is required");
    if ((cfg->has & ~known) != 0)
        return em_error_set(err, EM_ERR_VALIDATION, EM_SEV_LOW, "config",
                            "has unknown field flags 0x%02x", (unsigned)(cfg->has & ~known));
    if ((cfg->has & EM_CONFIG_HAS_REPORTING_INTERVAL) &&
        (cfg->reporting_interval < EM_REPORTING_INTERVAL_MIN ||
         cfg->reporting_interval > EM_REPORTING_INTERVAL_MAX))
        return em_error_set(err, EM_ERR_VALIDATION, EM_SEV_LOW, "reportingInterval",
                            "must be an integer from %d to %d", EM_REPORTING_INTERVAL_MIN,
                            EM_REPORTING_INTERVAL_MAX);
    if ((cfg->has & EM_CONFIG_HAS_SLEEP_THRESHOLD) && cfg->sleep_threshold > EM_SLEEP_THRESHOLD_MAX)
        return em_error_set(err, EM_ERR_VALIDATION, EM_SEV_LOW, "sleepThreshold",
                            "must be an integer from 0 to %d", EM_SLEEP_THRESHOLD_MAX);
    if ((cfg->has & EM_CONFIG_HAS_SECURITY_LEVEL) && (cfg->security_level < EM_SECURITY_LEVEL_MIN ||
                                                      cfg->security_level > EM_SECURITY_LEVEL_MAX))
        return em_error_set(err, EM_ERR_VALIDATION, EM_SEV_LOW, "securityLevel",
                            "must be an integer from %d to %d", EM_SECURITY_LEVEL_MIN,
                            EM_SECURITY_LEVEL_MAX);
    return EM_OK;
}

static const char *const type_names[] = {"sensor", "camera", "actuator", "gateway", "generic"};
#define TYPE_COUNT (sizeof(type_names) / sizeof(type_names[0]))

const char *em_device_type_name(em_device_type_t type)
{
    /* The enum may be signed or unsigned; compare as unsigned after ruling
     * out negatives so that both cases are range checked. */
    if ((int)type < 0 || (unsigned)type >= TYPE_COUNT)
        return NULL;
    return type_names[type];
}

em_err_t em_device_type_parse(const char *name, size_t len, em_device_type_t *out, em_error_t *err)
{
    if (name != NULL) {
        for (size_t i = 0; i < TYPE_COUNT; i++) {
            if (strlen(type_names[i]) == len && memcmp(type_names[i], name, len) == 0) {
                if (out != NULL)
                    *out = (em_device_type_t)i;
                return EM_OK;
            }
        }
    }
    return em_error_set(err, EM_ERR_VALIDATION, EM_SEV_LOW, "type",
                        "must be one of sensor, camera, actuator, gateway, generic");
}
