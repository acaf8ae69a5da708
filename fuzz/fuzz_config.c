/*
 * emiot fuzz - fuzz_config.c: the device configuration decoder, and the id,
 * group name, device name and type validators on the same bytes.
 *
 * A decoded configuration is valid, encodes, and decodes to the same values.
 */
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include "emiot/device.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

#define CHECK(cond)                                                                                \
    do {                                                                                           \
        if (!(cond))                                                                               \
            __builtin_trap();                                                                      \
    } while (0)

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    const char *text = (const char *)data;
    em_error_t err;

    /* Validators: they must not read past size, and accepting implies the
     * documented length bounds. */
    if (em_device_id_validate(text, size, &err) == EM_OK)
        CHECK(size >= EM_DEVICE_ID_MIN && size <= EM_DEVICE_ID_MAX);
    if (em_group_name_validate(text, size, &err) == EM_OK)
        CHECK(size >= EM_GROUP_NAME_MIN && size <= EM_GROUP_NAME_MAX);
    if (em_device_name_validate(text, size, &err) == EM_OK)
        CHECK(size >= 1 && size <= EM_DEVICE_NAME_MAX && memchr(text, '\0', size) == NULL);
    em_device_type_t type;
    if (em_device_type_parse(text, size, &type, &err) == EM_OK)
        CHECK(strlen(em_device_type_name(type)) == size);

    em_device_config_t cfg;
    if (em_device_config_decode(text, size, &cfg, &err) != EM_OK) {
        CHECK(cfg.has == 0);
        return 0;
    }
    CHECK(em_device_config_validate(&cfg, &err) == EM_OK);
    char buf[160];
    size_t n = 0;
    CHECK(em_device_config_encode(&cfg, buf, sizeof(buf), &n) == EM_OK);
    em_device_config_t back;
    CHECK(em_device_config_decode(buf, n, &back, &err) == EM_OK);
    CHECK(back.has == cfg.has);
    if (cfg.has & EM_CONFIG_HAS_REPORTING_INTERVAL)
        CHECK(back.reporting_interval == cfg.reporting_interval);
    if (cfg.has & EM_CONFIG_HAS_SLEEP_THRESHOLD)
        CHECK(back.sleep_threshold == cfg.sleep_threshold);
    if (cfg.has & EM_CONFIG_HAS_AUTO_WAKE)
        CHECK(back.auto_wake == cfg.auto_wake);
    if (cfg.has & EM_CONFIG_HAS_SECURITY_LEVEL)
        CHECK(back.security_level == cfg.security_level);
    char again[160];
    size_t m = 0;
    CHECK(em_device_config_encode(&back, again, sizeof(again), &m) == EM_OK);
    CHECK(m == n && memcmp(again, buf, n) == 0);
    CHECK(em_device_config_encode(&cfg, again, n, NULL) == EM_ERR_BUFFER_TOO_SMALL);
    return 0;
}
