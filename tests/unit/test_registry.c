/*
 * emiot tests - test_registry.c: the device registry and groups.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "core/ratelimit.h"
#include "emiot/registry.h"
#include "registry/device_ext.h"
#include "registry/registry_internal.h"

/* --- an allocator that fails the Nth allocation -------------------------- */

/* Replacing malloc is not possible under the sanitizers (they own it); the
 * allocation-failure tests are skipped there and run in the plain build. */
#if defined(__SANITIZE_ADDRESS__)
#define ALLOC_HOOK 0
#elif defined(__has_feature)
#if __has_feature(address_sanitizer) || __has_feature(memory_sanitizer)
#define ALLOC_HOOK 0
#endif
#endif
#ifndef ALLOC_HOOK
#define ALLOC_HOOK 1
#endif

static long fail_countdown = -1; /* -1: never fail */

#if ALLOC_HOOK
extern void *__libc_malloc(size_t n);
extern void *__libc_calloc(size_t n, size_t size);
extern void *__libc_realloc(void *p, size_t n);
extern void __libc_free(void *p);

static bool alloc_fails(void)
{
    if (fail_countdown < 0)
        return false;
    if (fail_countdown-- == 0) {
        fail_countdown = -1;
        return true;
    }
    return false;
}

void *malloc(size_t n)
{
    return alloc_fails() ? NULL : __libc_malloc(n);
}

void *calloc(size_t n, size_t size)
{
    return alloc_fails() ? NULL : __libc_calloc(n, size);
}

void *realloc(void *p, size_t n)
{
    return alloc_fails() ? NULL : __libc_realloc(p, n);
}

void free(void *p)
{
    __libc_free(p);
}
#endif

/* Makes the nth allocation from now fail (0 = the next one). */
static void fail_allocation(long n)
{
    fail_countdown = n;
}

static bool failure_pending(void)
{
    return fail_countdown >= 0;
}

static void no_alloc_failure(void)
{
    fail_countdown = -1;
}

#define REQUIRE_ALLOC_HOOK()                                                                       \
    do {                                                                                           \
        if (!ALLOC_HOOK)                                                                           \
            skip();                                                                                \
    } while (0)

/* --- helpers ------------------------------------------------------------- */

#define NOW 1700000000000LL

static em_registry_t *new_reg(void)
{
    em_registry_t *reg = em_registry_new(0, 0);
    assert_non_null(reg);
    return reg;
}

static em_device_t *add(em_registry_t *reg, const char *id)
{
    em_device_t *dev = NULL;
    em_error_t err;
    em_err_t rc = em_registry_add(reg, id, NULL, EM_DEVICE_SENSOR, NULL, NOW, &dev, &err);
    if (rc != EM_OK)
        fail_msg("add %s: %s (%s)", id, em_err_name(rc), err.message);
    assert_non_null(dev);
    return dev;
}

static void group(em_registry_t *reg, const char *name)
{
    assert_int_equal(em_registry_group_create(reg, name, NULL), EM_OK);
}

static void join(em_registry_t *reg, const char *g, const char *id)
{
    assert_int_equal(em_registry_group_add(reg, g, id, NULL), EM_OK);
}

/* Checks the two-way links between groups and devices: every member's
 * recorded position points back at it, and every membership a device records
 * is matched by its group's member array. */
static void check_links(const em_registry_t *reg)
{
    size_t total_members = 0;
    for (uint32_t id = 0; id < reg->groups_len; id++) {
        const struct em__group *g = reg->groups[id];
        if (g == NULL)
            continue;
        assert_true(g->count <= g->cap);
        total_members += g->count;
        for (uint32_t i = 0; i < g->count; i++) {
            const em_device_t *d = g->members[i];
            int found = 0;
            for (uint16_t k = 0; k < d->ngroups; k++)
                if (d->groups[k].group == id) {
                    assert_int_equal(d->groups[k].pos, i);
                    found++;
                }
            assert_int_equal(found, 1);
        }
    }
    size_t total_memberships = 0;
    for (size_t i = 0; i < reg->cap; i++) {
        const em_device_t *d = reg->slots[i];
        if (d == NULL)
            continue;
        total_memberships += d->ngroups;
        for (uint16_t k = 0; k < d->ngroups; k++) {
            const struct em__group *g = reg->groups[d->groups[k].group];
            assert_non_null(g);
            assert_true(d->groups[k].pos < g->count);
            assert_ptr_equal(g->members[d->groups[k].pos], d);
        }
    }
    assert_int_equal(total_members, total_memberships);
}

/* --- devices ------------------------------------------------------------- */

static void test_add_then_get_returns_the_device(void **state)
{
    (void)state;
    em_registry_t *reg = new_reg();
    em_device_config_t cfg = {.reporting_interval = 60, .has = EM_CONFIG_HAS_REPORTING_INTERVAL};
    em_device_t *dev = NULL;
    assert_int_equal(em_registry_add(reg, "sensor-01", "Kitchen plug", EM_DEVICE_ACTUATOR, &cfg,
                                     NOW, &dev, NULL),
                     EM_OK);
    assert_non_null(dev);
    assert_ptr_equal(em_registry_get(reg, "sensor-01"), dev);
    assert_string_equal(dev->id, "sensor-01");
    assert_int_equal(dev->id_len, 9);
    assert_string_equal(dev->name, "Kitchen plug");
    assert_int_equal(dev->type, EM_DEVICE_ACTUATOR);
    assert_int_equal(dev->config.reporting_interval, 60);
    assert_int_equal(dev->config.has, EM_CONFIG_HAS_REPORTING_INTERVAL);
    assert_int_equal(dev->created_at_ms, NOW);
    assert_int_equal(dev->updated_at_ms, NOW);
    assert_int_equal(dev->status.has, 0);
    assert_int_equal(dev->ngroups, 0);
    assert_int_equal(em_registry_count(reg), 1);
    em_registry_free(reg);
}

static void test_add_without_name_uses_the_id(void **state)
{
    (void)state;
    em_registry_t *reg = new_reg();
    em_device_t *a = NULL, *b = NULL;
    assert_int_equal(em_registry_add(reg, "dev-a", NULL, EM_DEVICE_SENSOR, NULL, NOW, &a, NULL),
                     EM_OK);
    assert_int_equal(em_registry_add(reg, "dev-b", "", EM_DEVICE_SENSOR, NULL, NOW, &b, NULL),
                     EM_OK);
    assert_string_equal(a->name, "dev-a");
    assert_string_equal(b->name, "dev-b");
    em_registry_free(reg);
}

static void test_add_duplicate_is_refused(void **state)
{
    (void)state;
    em_registry_t *reg = new_reg();
    em_device_t *first = add(reg, "dev-001");
    em_error_t err;
    em_device_t *dev = (em_device_t *)1;
    assert_int_equal(
        em_registry_add(reg, "dev-001", "Other", EM_DEVICE_CAMERA, NULL, NOW + 1, &dev, &err),
        EM_ERR_EXISTS);
    assert_null(dev);
    assert_int_equal(err.code, EM_ERR_EXISTS);
    assert_string_equal(err.device_id, "dev-001");
    assert_int_equal(em_registry_count(reg), 1);
    assert_ptr_equal(em_registry_get(reg, "dev-001"), first);
    assert_string_equal(first->name, "dev-001");
    em_registry_free(reg);
}

static void expect_invalid_id(em_registry_t *reg, const char *id)
{
    em_error_t err;
    memset(&err, 0, sizeof(err));
    assert_int_equal(em_registry_add(reg, id, NULL, EM_DEVICE_SENSOR, NULL, NOW, NULL, &err),
                     EM_ERR_VALIDATION);
    assert_int_equal(err.code, EM_ERR_VALIDATION);
    assert_string_equal(err.field, "id");
    assert_true(strlen(err.message) > 0);
}

static void test_add_invalid_id_is_refused_with_reason(void **state)
{
    (void)state;
    em_registry_t *reg = new_reg();
    expect_invalid_id(reg, NULL);
    expect_invalid_id(reg, "");
    expect_invalid_id(reg, "ab");
    expect_invalid_id(reg, "dev/01");
    expect_invalid_id(reg, "dev+01");
    expect_invalid_id(reg, "dev 01");
    expect_invalid_id(reg, "dev#");
    expect_invalid_id(reg, "d\xc3\xa9vice");
    char longid[80];
    memset(longid, 'a', sizeof(longid) - 1);
    longid[sizeof(longid) - 1] = '\0';
    expect_invalid_id(reg, longid);
    longid[EM_DEVICE_ID_MAX + 1] = '\0'; /* 51 characters */
    expect_invalid_id(reg, longid);
    longid[EM_DEVICE_ID_MAX] = '\0'; /* 50: the longest valid id */
    assert_int_equal(em_registry_add(reg, longid, NULL, EM_DEVICE_SENSOR, NULL, NOW, NULL, NULL),
                     EM_OK);
    assert_int_equal(em_registry_count(reg), 1);
    em_registry_free(reg);
}

static void test_add_invalid_name_type_or_config_is_refused(void **state)
{
    (void)state;
    em_registry_t *reg = new_reg();
    em_error_t err;
    char longname[EM_DEVICE_NAME_MAX + 2];
    memset(longname, 'n', sizeof(longname) - 1);
    longname[sizeof(longname) - 1] = '\0';
    assert_int_equal(
        em_registry_add(reg, "dev-001", longname, EM_DEVICE_SENSOR, NULL, NOW, NULL, &err),
        EM_ERR_VALIDATION);
    assert_string_equal(err.field, "name");
    assert_int_equal(
        em_registry_add(reg, "dev-001", "bad\nname", EM_DEVICE_SENSOR, NULL, NOW, NULL, &err),
        EM_ERR_VALIDATION);
    assert_string_equal(err.field, "name");
    assert_int_equal(
        em_registry_add(reg, "dev-001", NULL, (em_device_type_t)5, NULL, NOW, NULL, &err),
        EM_ERR_VALIDATION);
    assert_string_equal(err.field, "type");
    em_device_config_t cfg = {.security_level = 9, .has = EM_CONFIG_HAS_SECURITY_LEVEL};
    assert_int_equal(em_registry_add(reg, "dev-001", NULL, EM_DEVICE_SENSOR, &cfg, NOW, NULL, &err),
                     EM_ERR_VALIDATION);
    assert_string_equal(err.field, "securityLevel");
    assert_string_equal(err.device_id, "dev-001");
    assert_int_equal(em_registry_count(reg), 0);
    assert_null(em_registry_get(reg, "dev-001"));
    em_registry_free(reg);
}

static void test_find_uses_length_not_terminator(void **state)
{
    (void)state;
    em_registry_t *reg = new_reg();
    em_device_t *dev = add(reg, "dev-001");
    const char *topic_part = "dev-001/status";
    assert_ptr_equal(em_registry_find(reg, topic_part, 7), dev);
    assert_null(em_registry_find(reg, topic_part, 6));
    assert_null(em_registry_find(reg, topic_part, 8));
    assert_null(em_registry_find(reg, topic_part, 0));
    assert_null(em_registry_find(reg, NULL, 7));
    assert_null(em_registry_get(reg, "dev-002"));
    assert_null(em_registry_get(reg, NULL));
    assert_null(em_registry_get(NULL, "dev-001"));
    em_registry_free(reg);
}

static void test_update_merges_config(void **state)
{
    (void)state;
    em_registry_t *reg = new_reg();
    em_device_config_t cfg = {.reporting_interval = 60,
                              .sleep_threshold = 20,
                              .has =
                                  EM_CONFIG_HAS_REPORTING_INTERVAL | EM_CONFIG_HAS_SLEEP_THRESHOLD};
    em_device_t *dev = NULL;
    assert_int_equal(em_registry_add(reg, "dev-001", NULL, EM_DEVICE_SENSOR, &cfg, NOW, &dev, NULL),
                     EM_OK);
    em_device_config_t patch = {.reporting_interval = 300,
                                .security_level = 4,
                                .has = EM_CONFIG_HAS_REPORTING_INTERVAL |
                                       EM_CONFIG_HAS_SECURITY_LEVEL};
    assert_int_equal(em_registry_update(reg, "dev-001", NULL, NULL, &patch, NOW + 5, NULL), EM_OK);
    assert_int_equal(dev->config.reporting_interval, 300);
    assert_int_equal(dev->config.sleep_threshold, 20);
    assert_int_equal(dev->config.security_level, 4);
    assert_int_equal(dev->config.has, EM_CONFIG_HAS_REPORTING_INTERVAL |
                                          EM_CONFIG_HAS_SLEEP_THRESHOLD |
                                          EM_CONFIG_HAS_SECURITY_LEVEL);
    assert_int_equal(dev->updated_at_ms, NOW + 5);
    assert_int_equal(dev->created_at_ms, NOW);
    em_registry_free(reg);
}

static void test_update_changes_name_and_type(void **state)
{
    (void)state;
    em_registry_t *reg = new_reg();
    em_device_t *dev = add(reg, "dev-001");
    em_device_type_t type = EM_DEVICE_GATEWAY;
    assert_int_equal(em_registry_update(reg, "dev-001", "Roof gateway", &type, NULL, NOW + 1, NULL),
                     EM_OK);
    assert_string_equal(dev->name, "Roof gateway");
    assert_int_equal(dev->type, EM_DEVICE_GATEWAY);
    assert_int_equal(em_registry_update(reg, "dev-001", "Attic gateway", NULL, NULL, NOW + 2, NULL),
                     EM_OK);
    assert_string_equal(dev->name, "Attic gateway");
    /* Back to the id: no copy is kept, the string is the id. */
    assert_int_equal(em_registry_update(reg, "dev-001", "dev-001", NULL, NULL, NOW + 3, NULL),
                     EM_OK);
    assert_string_equal(dev->name, "dev-001");
    assert_int_equal(dev->type, EM_DEVICE_GATEWAY);
    assert_int_equal(dev->updated_at_ms, NOW + 3);
    em_registry_free(reg);
}

static void test_update_invalid_leaves_device_unchanged(void **state)
{
    (void)state;
    em_registry_t *reg = new_reg();
    em_device_t *dev = NULL;
    assert_int_equal(
        em_registry_add(reg, "dev-001", "Plug", EM_DEVICE_SENSOR, NULL, NOW, &dev, NULL), EM_OK);
    em_device_type_t bad_type = (em_device_type_t)77;
    em_device_config_t bad_cfg = {.reporting_interval = 0, .has = EM_CONFIG_HAS_REPORTING_INTERVAL};
    em_error_t err;
    /* A valid name with an invalid type: nothing at all changes. */
    assert_int_equal(em_registry_update(reg, "dev-001", "New", &bad_type, NULL, NOW + 1, &err),
                     EM_ERR_VALIDATION);
    assert_string_equal(err.field, "type");
    assert_int_equal(em_registry_update(reg, "dev-001", "New", NULL, &bad_cfg, NOW + 1, &err),
                     EM_ERR_VALIDATION);
    assert_string_equal(err.field, "reportingInterval");
    assert_int_equal(em_registry_update(reg, "dev-001", "", NULL, NULL, NOW + 1, &err),
                     EM_ERR_VALIDATION);
    assert_string_equal(err.field, "name");
    assert_string_equal(dev->name, "Plug");
    assert_int_equal(dev->type, EM_DEVICE_SENSOR);
    assert_int_equal(dev->config.has, 0);
    assert_int_equal(dev->updated_at_ms, NOW);
    em_registry_free(reg);
}

static void test_update_unknown_device_is_not_found(void **state)
{
    (void)state;
    em_registry_t *reg = new_reg();
    em_error_t err;
    assert_int_equal(em_registry_update(reg, "dev-404", "x", NULL, NULL, NOW, &err),
                     EM_ERR_DEVICE_NOT_FOUND);
    assert_string_equal(err.device_id, "dev-404");
    assert_int_equal(em_registry_update(reg, "bad/id\n", "x", NULL, NULL, NOW, &err),
                     EM_ERR_DEVICE_NOT_FOUND);
    assert_string_equal(err.device_id, ""); /* an invalid id is not echoed */
    em_registry_free(reg);
}

static void test_remove_device(void **state)
{
    (void)state;
    em_registry_t *reg = new_reg();
    add(reg, "dev-001");
    add(reg, "dev-002");
    em_error_t err;
    assert_int_equal(em_registry_remove(reg, "dev-001", &err), EM_OK);
    assert_null(em_registry_get(reg, "dev-001"));
    assert_non_null(em_registry_get(reg, "dev-002"));
    assert_int_equal(em_registry_count(reg), 1);
    assert_int_equal(em_registry_remove(reg, "dev-001", &err), EM_ERR_DEVICE_NOT_FOUND);
    assert_int_equal(err.code, EM_ERR_DEVICE_NOT_FOUND);
    assert_int_equal(em_registry_remove(reg, NULL, &err), EM_ERR_DEVICE_NOT_FOUND);
    /* The id may be registered again. */
    add(reg, "dev-001");
    assert_int_equal(em_registry_count(reg), 2);
    em_registry_free(reg);
}

static void test_remove_device_frees_status_telemetry_and_window(void **state)
{
    (void)state;
    em_registry_t *reg = new_reg();
    em_device_t *dev = NULL;
    assert_int_equal(
        em_registry_add(reg, "dev-001", "Named", EM_DEVICE_SENSOR, NULL, NOW, &dev, NULL), EM_OK);
    em_status_t st;
    memset(&st, 0, sizeof(st));
    st.has = EM_STATUS_HAS_ERRORS | EM_STATUS_HAS_EXTRA;
    st.errors_json = strdup("[\"overheat\"]");
    st.extra_json = strdup("{\"k\":1}");
    assert_non_null(st.errors_json);
    assert_non_null(st.extra_json);
    em_registry_set_status(reg, dev, &st);
    em_telemetry_t t = {.has = EM_TELEMETRY_HAS_POWER, .power_w = 3.5, .timestamp_ms = NOW};
    assert_int_equal(em_registry_set_telemetry(reg, dev, &t, NULL, NULL), EM_OK);
    struct em__device_ext *ext = em__device_ext(dev);
    assert_non_null(ext);
    ext->cmd_window = em__window_new(10);
    assert_non_null(ext->cmd_window);
    group(reg, "lights");
    join(reg, "lights", "dev-001");
    assert_int_equal(em_registry_remove(reg, "dev-001", NULL), EM_OK);
    assert_int_equal(em_registry_group_size(reg, "lights"), 0);
    em_registry_free(reg);
}

/* --- status and telemetry ------------------------------------------------ */

static void test_set_status_takes_ownership(void **state)
{
    (void)state;
    em_registry_t *reg = new_reg();
    em_device_t *dev = add(reg, "dev-001");
    em_status_t st;
    memset(&st, 0, sizeof(st));
    st.has = EM_STATUS_HAS_BATTERY | EM_STATUS_HAS_ERRORS;
    st.battery_level = 75;
    st.errors_json = strdup("[\"low signal\"]");
    assert_non_null(st.errors_json);
    em_registry_set_status(reg, dev, &st);
    assert_null(st.errors_json);
    assert_int_equal(st.has, 0);
    assert_int_equal(dev->status.battery_level, 75);
    assert_string_equal(dev->status.errors_json, "[\"low signal\"]");
    assert_int_equal(dev->updated_at_ms, NOW);

    /* The next status replaces the previous one, whose strings are freed
     * (the sanitizer build would report a leak). */
    em_status_t next;
    memset(&next, 0, sizeof(next));
    next.has = EM_STATUS_HAS_BATTERY;
    next.battery_level = 74;
    em_registry_set_status(reg, dev, &next);
    assert_int_equal(dev->status.battery_level, 74);
    assert_null(dev->status.errors_json);
    em_registry_free(reg);
}

static void test_telemetry_first_sample_has_no_consumption(void **state)
{
    (void)state;
    em_registry_t *reg = new_reg();
    em_device_t *dev = add(reg, "meter-01");
    assert_null(em_registry_telemetry(dev));
    em_telemetry_t t = {.has = EM_TELEMETRY_HAS_ENERGY, .energy_wh = 1000.0, .timestamp_ms = NOW};
    double delta = -1;
    int reset = -1;
    assert_int_equal(em_registry_set_telemetry(reg, dev, &t, &delta, &reset), EM_OK);
    assert_true(delta == 0.0);
    assert_int_equal(reset, 0);
    const em_telemetry_t *latest = em_registry_telemetry(dev);
    assert_non_null(latest);
    assert_true(latest->energy_wh == 1000.0);
    assert_int_equal(latest->timestamp_ms, NOW);
    em_registry_free(reg);
}

static void test_telemetry_delta_between_samples(void **state)
{
    (void)state;
    em_registry_t *reg = new_reg();
    em_device_t *dev = add(reg, "meter-01");
    em_telemetry_t t = {.has = EM_TELEMETRY_HAS_ENERGY, .energy_wh = 1000.0, .timestamp_ms = NOW};
    assert_int_equal(em_registry_set_telemetry(reg, dev, &t, NULL, NULL), EM_OK);
    t.energy_wh = 1012.5;
    t.timestamp_ms = NOW + 60000;
    double delta = -1;
    int reset = -1;
    assert_int_equal(em_registry_set_telemetry(reg, dev, &t, &delta, &reset), EM_OK);
    assert_true(delta == 12.5);
    assert_int_equal(reset, 0);
    /* An unchanged counter is no consumption, not a reset. */
    assert_int_equal(em_registry_set_telemetry(reg, dev, &t, &delta, &reset), EM_OK);
    assert_true(delta == 0.0);
    assert_int_equal(reset, 0);
    em_registry_free(reg);
}

static void test_telemetry_counter_reset_is_never_negative(void **state)
{
    (void)state;
    em_registry_t *reg = new_reg();
    em_device_t *dev = add(reg, "meter-01");
    em_telemetry_t t = {.has = EM_TELEMETRY_HAS_ENERGY, .energy_wh = 10450.0, .timestamp_ms = NOW};
    assert_int_equal(em_registry_set_telemetry(reg, dev, &t, NULL, NULL), EM_OK);
    t.energy_wh = 3.0; /* the meter restarted and has counted 3 Wh since */
    double delta = -1;
    int reset = 0;
    assert_int_equal(em_registry_set_telemetry(reg, dev, &t, &delta, &reset), EM_OK);
    assert_int_equal(reset, 1);
    assert_true(delta == 3.0);
    /* Counting continues from the new value. */
    t.energy_wh = 5.0;
    assert_int_equal(em_registry_set_telemetry(reg, dev, &t, &delta, &reset), EM_OK);
    assert_int_equal(reset, 0);
    assert_true(delta == 2.0);
    em_registry_free(reg);
}

static void test_telemetry_without_energy_keeps_the_counter(void **state)
{
    (void)state;
    em_registry_t *reg = new_reg();
    em_device_t *dev = add(reg, "meter-01");
    em_telemetry_t t = {.has = EM_TELEMETRY_HAS_ENERGY, .energy_wh = 100.0, .timestamp_ms = NOW};
    assert_int_equal(em_registry_set_telemetry(reg, dev, &t, NULL, NULL), EM_OK);
    em_telemetry_t p = {.has = EM_TELEMETRY_HAS_POWER, .power_w = 7.0, .timestamp_ms = NOW + 1};
    double delta = -1;
    assert_int_equal(em_registry_set_telemetry(reg, dev, &p, &delta, NULL), EM_OK);
    assert_true(delta == 0.0);
    assert_int_equal(em_registry_telemetry(dev)->has, EM_TELEMETRY_HAS_POWER);
    t.energy_wh = 104.0;
    assert_int_equal(em_registry_set_telemetry(reg, dev, &t, &delta, NULL), EM_OK);
    assert_true(delta == 4.0);
    em_registry_free(reg);
}

/* --- groups -------------------------------------------------------------- */

static void test_group_create_exists_and_remove(void **state)
{
    (void)state;
    em_registry_t *reg = new_reg();
    em_error_t err;
    assert_int_equal(em_registry_group_create(reg, "Floor 1", &err), EM_OK);
    assert_int_equal(em_registry_group_exists(reg, "Floor 1"), 1);
    assert_int_equal(em_registry_group_exists(reg, "floor 1"), 0);
    assert_int_equal(em_registry_group_count(reg), 1);
    assert_int_equal(em_registry_group_create(reg, "Floor 1", &err), EM_ERR_EXISTS);
    assert_int_equal(em_registry_group_remove(reg, "Floor 1", &err), EM_OK);
    assert_int_equal(em_registry_group_exists(reg, "Floor 1"), 0);
    assert_int_equal(em_registry_group_count(reg), 0);
    assert_int_equal(em_registry_group_remove(reg, "Floor 1", &err), EM_ERR_GROUP_NOT_FOUND);
    assert_int_equal(err.code, EM_ERR_GROUP_NOT_FOUND);
    /* The name is free again. */
    assert_int_equal(em_registry_group_create(reg, "Floor 1", &err), EM_OK);
    em_registry_free(reg);
}

static void test_group_invalid_name_is_refused(void **state)
{
    (void)state;
    em_registry_t *reg = new_reg();
    em_error_t err;
    const char *bad[] = {NULL, "", "a", "floor_1", "floor/1", "a#b"};
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        assert_int_equal(em_registry_group_create(reg, bad[i], &err), EM_ERR_VALIDATION);
        assert_string_equal(err.field, "group");
    }
    char longname[EM_GROUP_NAME_MAX + 2];
    memset(longname, 'g', sizeof(longname) - 1);
    longname[sizeof(longname) - 1] = '\0';
    assert_int_equal(em_registry_group_create(reg, longname, &err), EM_ERR_VALIDATION);
    longname[EM_GROUP_NAME_MAX] = '\0';
    assert_int_equal(em_registry_group_create(reg, longname, &err), EM_OK);
    assert_int_equal(em_registry_group_count(reg), 1);
    em_registry_free(reg);
}

static void test_group_add_is_idempotent(void **state)
{
    (void)state;
    em_registry_t *reg = new_reg();
    em_device_t *dev = add(reg, "dev-001");
    group(reg, "lights");
    join(reg, "lights", "dev-001");
    join(reg, "lights", "dev-001");
    assert_int_equal(em_registry_group_size(reg, "lights"), 1);
    assert_int_equal(dev->ngroups, 1);
    check_links(reg);
    em_registry_free(reg);
}

static void test_group_add_unknown_device_or_group(void **state)
{
    (void)state;
    em_registry_t *reg = new_reg();
    add(reg, "dev-001");
    group(reg, "lights");
    em_error_t err;
    assert_int_equal(em_registry_group_add(reg, "lights", "dev-404", &err),
                     EM_ERR_DEVICE_NOT_FOUND);
    assert_string_equal(err.device_id, "dev-404");
    assert_int_equal(em_registry_group_add(reg, "heating", "dev-001", &err),
                     EM_ERR_GROUP_NOT_FOUND);
    assert_int_equal(em_registry_group_add(reg, NULL, "dev-001", &err), EM_ERR_GROUP_NOT_FOUND);
    assert_int_equal(em_registry_group_size(reg, "lights"), 0);
    em_registry_free(reg);
}

static void test_group_remove_device_that_is_not_a_member(void **state)
{
    (void)state;
    em_registry_t *reg = new_reg();
    add(reg, "dev-001");
    add(reg, "dev-002");
    group(reg, "lights");
    join(reg, "lights", "dev-002");
    em_error_t err;
    assert_int_equal(em_registry_group_remove_device(reg, "lights", "dev-001", &err),
                     EM_ERR_INVALID_ARGUMENT);
    assert_int_equal(em_registry_group_remove_device(reg, "lights", "dev-404", &err),
                     EM_ERR_DEVICE_NOT_FOUND);
    assert_int_equal(em_registry_group_remove_device(reg, "heating", "dev-002", &err),
                     EM_ERR_GROUP_NOT_FOUND);
    assert_int_equal(em_registry_group_size(reg, "lights"), 1);
    assert_int_equal(em_registry_group_remove_device(reg, "lights", "dev-002", &err), EM_OK);
    assert_int_equal(em_registry_group_size(reg, "lights"), 0);
    assert_int_equal(em_registry_group_remove_device(reg, "lights", "dev-002", &err),
                     EM_ERR_INVALID_ARGUMENT);
    check_links(reg);
    em_registry_free(reg);
}

static int collect_name(const char *name, size_t size, void *userdata)
{
    (void)size;
    char *buf = userdata;
    size_t used = strlen(buf);
    snprintf(buf + used, 512 - used, "%s;", name);
    return 0;
}

static void test_device_in_many_groups_up_to_the_maximum(void **state)
{
    (void)state;
    em_registry_t *reg = new_reg();
    em_device_t *dev = add(reg, "dev-001");
    char name[16];
    for (int i = 0; i <= EM_DEVICE_GROUPS_MAX; i++) {
        snprintf(name, sizeof(name), "group %d", i);
        group(reg, name);
    }
    for (int i = 0; i < EM_DEVICE_GROUPS_MAX; i++) {
        snprintf(name, sizeof(name), "group %d", i);
        join(reg, name, "dev-001");
    }
    assert_int_equal(dev->ngroups, EM_DEVICE_GROUPS_MAX);
    em_error_t err;
    snprintf(name, sizeof(name), "group %d", EM_DEVICE_GROUPS_MAX);
    assert_int_equal(em_registry_group_add(reg, name, "dev-001", &err), EM_ERR_LIMIT);
    assert_int_equal(err.code, EM_ERR_LIMIT);
    assert_int_equal(em_registry_group_size(reg, name), 0);
    /* Re-adding to a group it is already in is still fine at the maximum. */
    assert_int_equal(em_registry_group_add(reg, "group 3", "dev-001", &err), EM_OK);
    /* Leaving one makes room for another. */
    assert_int_equal(em_registry_group_remove_device(reg, "group 3", "dev-001", &err), EM_OK);
    assert_int_equal(em_registry_group_add(reg, name, "dev-001", &err), EM_OK);
    assert_int_equal(dev->ngroups, EM_DEVICE_GROUPS_MAX);
    check_links(reg);
    em_registry_free(reg);
}

static void test_group_remove_detaches_its_members(void **state)
{
    (void)state;
    em_registry_t *reg = new_reg();
    em_device_t *a = add(reg, "dev-a01");
    em_device_t *b = add(reg, "dev-b01");
    group(reg, "lights");
    group(reg, "heating");
    join(reg, "lights", "dev-a01");
    join(reg, "lights", "dev-b01");
    join(reg, "heating", "dev-a01");
    assert_int_equal(em_registry_group_remove(reg, "lights", NULL), EM_OK);
    assert_int_equal(a->ngroups, 1);
    assert_int_equal(b->ngroups, 0);
    assert_null(b->groups);
    char names[512] = "";
    em_registry_device_groups(reg, a, collect_name, names);
    assert_string_equal(names, "heating;");
    assert_int_equal(em_registry_count(reg), 2);
    assert_int_equal(em_registry_group_size(reg, "heating"), 1);
    check_links(reg);
    em_registry_free(reg);
}

static void test_remove_device_leaves_its_groups(void **state)
{
    (void)state;
    em_registry_t *reg = new_reg();
    add(reg, "dev-001");
    add(reg, "dev-002");
    add(reg, "dev-003");
    group(reg, "lights");
    group(reg, "heating");
    join(reg, "lights", "dev-001");
    join(reg, "lights", "dev-002");
    join(reg, "lights", "dev-003");
    join(reg, "heating", "dev-001");
    assert_int_equal(em_registry_remove(reg, "dev-001", NULL), EM_OK);
    assert_int_equal(em_registry_group_size(reg, "lights"), 2);
    assert_int_equal(em_registry_group_size(reg, "heating"), 0);
    assert_int_equal(em_registry_group_exists(reg, "heating"), 1);
    check_links(reg);
    em_registry_free(reg);
}

struct visit {
    int count;
    int stop_after;
    char ids[8][EM_DEVICE_ID_MAX + 1];
};

static int visit_device(em_device_t *dev, void *userdata)
{
    struct visit *v = userdata;
    if (v->count < 8)
        snprintf(v->ids[v->count], sizeof(v->ids[0]), "%s", dev->id);
    v->count++;
    return v->stop_after > 0 && v->count >= v->stop_after;
}

static bool visited(const struct visit *v, const char *id)
{
    for (int i = 0; i < v->count && i < 8; i++)
        if (strcmp(v->ids[i], id) == 0)
            return true;
    return false;
}

static void test_group_foreach_visits_members_in_order(void **state)
{
    (void)state;
    em_registry_t *reg = new_reg();
    add(reg, "dev-001");
    add(reg, "dev-002");
    add(reg, "dev-003");
    add(reg, "dev-004");
    group(reg, "lights");
    join(reg, "lights", "dev-003");
    join(reg, "lights", "dev-001");
    join(reg, "lights", "dev-002");
    struct visit v = {0};
    assert_int_equal(em_registry_group_foreach(reg, "lights", visit_device, &v), EM_OK);
    assert_int_equal(v.count, 3);
    assert_string_equal(v.ids[0], "dev-003");
    assert_string_equal(v.ids[1], "dev-001");
    assert_string_equal(v.ids[2], "dev-002");
    assert_false(visited(&v, "dev-004"));
    assert_int_equal(em_registry_group_foreach(reg, "nothing", visit_device, &v),
                     EM_ERR_GROUP_NOT_FOUND);
    em_registry_free(reg);
}

static void test_group_foreach_stops_when_asked(void **state)
{
    (void)state;
    em_registry_t *reg = new_reg();
    group(reg, "lights");
    char id[16];
    for (int i = 0; i < 10; i++) {
        snprintf(id, sizeof(id), "dev-%03d", i);
        add(reg, id);
        join(reg, "lights", id);
    }
    struct visit v = {.stop_after = 4};
    assert_int_equal(em_registry_group_foreach(reg, "lights", visit_device, &v), EM_OK);
    assert_int_equal(v.count, 4);
    em_registry_free(reg);
}

static void test_foreach_visits_every_device_and_stops_when_asked(void **state)
{
    (void)state;
    em_registry_t *reg = new_reg();
    add(reg, "dev-001");
    add(reg, "dev-002");
    add(reg, "dev-003");
    struct visit v = {0};
    assert_int_equal(em_registry_foreach(reg, visit_device, &v), 3);
    assert_int_equal(v.count, 3);
    assert_true(visited(&v, "dev-001") && visited(&v, "dev-002") && visited(&v, "dev-003"));
    struct visit w = {.stop_after = 2};
    assert_int_equal(em_registry_foreach(reg, visit_device, &w), 2);
    assert_int_equal(w.count, 2);
    em_registry_free(reg);
}

static int count_group(const char *name, size_t size, void *userdata)
{
    (void)name;
    size_t *sum = userdata;
    sum[0]++;
    sum[1] += size;
    return 0;
}

static void test_groups_foreach_lists_every_group(void **state)
{
    (void)state;
    em_registry_t *reg = new_reg();
    add(reg, "dev-001");
    add(reg, "dev-002");
    group(reg, "lights");
    group(reg, "heating");
    group(reg, "empty");
    join(reg, "lights", "dev-001");
    join(reg, "lights", "dev-002");
    join(reg, "heating", "dev-002");
    size_t sum[2] = {0, 0};
    em_registry_groups_foreach(reg, count_group, sum);
    assert_int_equal(sum[0], 3);
    assert_int_equal(sum[1], 3);
    em_registry_free(reg);
}

static void set_status(em_registry_t *reg, const char *id, uint16_t has, int battery, int mode,
                       int conn)
{
    em_status_t st;
    memset(&st, 0, sizeof(st));
    st.has = has;
    st.battery_level = (uint8_t)battery;
    st.power_mode = (uint8_t)mode;
    st.connection = (uint8_t)conn;
    em_registry_set_status(reg, em_registry_get(reg, id), &st);
}

static void test_group_stats_on_a_known_population(void **state)
{
    (void)state;
    em_registry_t *reg = new_reg();
    group(reg, "fleet");
    const uint16_t all =
        EM_STATUS_HAS_BATTERY | EM_STATUS_HAS_POWER_MODE | EM_STATUS_HAS_CONNECTION;
    char id[16];
    for (int i = 1; i <= 7; i++) {
        snprintf(id, sizeof(id), "dev-%03d", i);
        add(reg, id);
        if (i <= 6)
            join(reg, "fleet", id);
    }
    set_status(reg, "dev-001", all, 80, EM_POWER_NORMAL, EM_CONN_ONLINE);
    set_status(reg, "dev-002", all, 40, EM_POWER_LOW_POWER, EM_CONN_OFFLINE);
    /* dev-003 has never reported */
    set_status(reg, "dev-004", EM_STATUS_HAS_POWER_MODE | EM_STATUS_HAS_CONNECTION, 0,
               EM_POWER_SLEEP, EM_CONN_INTERMITTENT);
    set_status(reg, "dev-005", all, 60, EM_POWER_CRITICAL, EM_CONN_ONLINE);
    set_status(reg, "dev-006", EM_STATUS_HAS_FIRMWARE, 0, 0, 0);
    set_status(reg, "dev-007", all, 0, EM_POWER_NORMAL, EM_CONN_ONLINE); /* not in the group */

    em_group_stats_t s;
    assert_int_equal(em_registry_group_stats(reg, "fleet", &s, NULL), EM_OK);
    assert_int_equal(s.total, 6);
    assert_int_equal(s.online, 2);
    assert_int_equal(s.offline, 2);
    assert_int_equal(s.with_battery, 3);
    assert_true(s.average_battery == 60.0);
    assert_int_equal(s.power_modes[EM_POWER_UNKNOWN], 2);
    assert_int_equal(s.power_modes[EM_POWER_NORMAL], 1);
    assert_int_equal(s.power_modes[EM_POWER_LOW_POWER], 1);
    assert_int_equal(s.power_modes[EM_POWER_SLEEP], 1);
    assert_int_equal(s.power_modes[EM_POWER_CRITICAL], 1);
    em_error_t err;
    assert_int_equal(em_registry_group_stats(reg, "nothing", &s, &err), EM_ERR_GROUP_NOT_FOUND);
    em_registry_free(reg);
}

static void test_group_stats_of_an_empty_group(void **state)
{
    (void)state;
    em_registry_t *reg = new_reg();
    group(reg, "empty");
    em_group_stats_t s;
    memset(&s, 0xff, sizeof(s));
    assert_int_equal(em_registry_group_stats(reg, "empty", &s, NULL), EM_OK);
    assert_int_equal(s.total, 0);
    assert_int_equal(s.online, 0);
    assert_int_equal(s.offline, 0);
    assert_int_equal(s.with_battery, 0);
    assert_true(s.average_battery == 0.0);
    em_registry_free(reg);
}

/* A deterministic generator, so a failure can be replayed. */
static uint64_t rng_state = 0x9e3779b97f4a7c15ull;

static uint32_t rng(uint32_t n)
{
    rng_state ^= rng_state << 13;
    rng_state ^= rng_state >> 7;
    rng_state ^= rng_state << 17;
    return (uint32_t)(rng_state % n);
}

#define MODEL_DEVICES 48
#define MODEL_GROUPS  6

static int model_count_visit(em_device_t *dev, void *userdata)
{
    bool *seen = userdata;
    long n = strtol(dev->id + 4, NULL, 10); /* test ids: "dev-NN" */
    assert_true(n >= 0 && n < MODEL_DEVICES);
    assert_false(seen[n]);
    seen[n] = true;
    return 0;
}

static void test_membership_matches_a_reference_model_under_random_changes(void **state)
{
    (void)state;
    em_registry_t *reg = new_reg();
    bool exists[MODEL_DEVICES] = {false};
    bool gexists[MODEL_GROUPS] = {false};
    bool member[MODEL_GROUPS][MODEL_DEVICES];
    memset(member, 0, sizeof(member));
    char id[16], name[16];

    for (int step = 0; step < 20000; step++) {
        int d = (int)rng(MODEL_DEVICES), g = (int)rng(MODEL_GROUPS);
        snprintf(id, sizeof(id), "dev-%02d", d);
        snprintf(name, sizeof(name), "group %d", g);
        uint32_t op = rng(100);
        em_err_t rc;
        if (op < 45) { /* join */
            rc = em_registry_group_add(reg, name, id, NULL);
            if (!exists[d])
                assert_int_equal(rc, EM_ERR_DEVICE_NOT_FOUND);
            else if (!gexists[g])
                assert_int_equal(rc, EM_ERR_GROUP_NOT_FOUND);
            else {
                assert_int_equal(rc, EM_OK);
                member[g][d] = true;
            }
        } else if (op < 80) { /* leave */
            rc = em_registry_group_remove_device(reg, name, id, NULL);
            if (!exists[d])
                assert_int_equal(rc, EM_ERR_DEVICE_NOT_FOUND);
            else if (!gexists[g])
                assert_int_equal(rc, EM_ERR_GROUP_NOT_FOUND);
            else if (!member[g][d])
                assert_int_equal(rc, EM_ERR_INVALID_ARGUMENT);
            else {
                assert_int_equal(rc, EM_OK);
                member[g][d] = false;
            }
        } else if (op < 90) { /* add or remove the device */
            if (exists[d]) {
                assert_int_equal(em_registry_remove(reg, id, NULL), EM_OK);
                for (int k = 0; k < MODEL_GROUPS; k++)
                    member[k][d] = false;
            } else {
                add(reg, id);
            }
            exists[d] = !exists[d];
        } else { /* create or remove the group */
            if (gexists[g]) {
                assert_int_equal(em_registry_group_remove(reg, name, NULL), EM_OK);
                for (int k = 0; k < MODEL_DEVICES; k++)
                    member[g][k] = false;
            } else {
                group(reg, name);
            }
            gexists[g] = !gexists[g];
        }

        if (step % 50 != 0)
            continue;
        check_links(reg);
        for (int k = 0; k < MODEL_GROUPS; k++) {
            snprintf(name, sizeof(name), "group %d", k);
            bool seen[MODEL_DEVICES] = {false};
            em_err_t frc = em_registry_group_foreach(reg, name, model_count_visit, seen);
            assert_int_equal(frc, gexists[k] ? EM_OK : EM_ERR_GROUP_NOT_FOUND);
            size_t n = 0;
            for (int j = 0; j < MODEL_DEVICES; j++) {
                assert_int_equal(seen[j], member[k][j]);
                n += member[k][j];
            }
            assert_int_equal(em_registry_group_size(reg, name), n);
        }
        for (int j = 0; j < MODEL_DEVICES; j++) {
            snprintf(id, sizeof(id), "dev-%02d", j);
            em_device_t *dev = em_registry_get(reg, id);
            assert_int_equal(dev != NULL, exists[j]);
            if (dev == NULL)
                continue;
            int n = 0;
            for (int k = 0; k < MODEL_GROUPS; k++)
                n += member[k][j];
            assert_int_equal(dev->ngroups, n);
        }
    }
    check_links(reg);
    em_registry_free(reg);
}

static void test_group_limit(void **state)
{
    (void)state;
    em_registry_t *reg = new_reg();
    char name[24];
    for (unsigned i = 0; i < EM_REGISTRY_GROUPS_MAX_DEFAULT; i++) {
        snprintf(name, sizeof(name), "g%u", i);
        assert_int_equal(em_registry_group_create(reg, name, NULL), EM_OK);
    }
    assert_int_equal(em_registry_group_count(reg), EM_REGISTRY_GROUPS_MAX_DEFAULT);
    em_error_t err;
    assert_int_equal(em_registry_group_create(reg, "one more", &err), EM_ERR_LIMIT);
    assert_int_equal(err.code, EM_ERR_LIMIT);
    assert_int_equal(em_registry_group_exists(reg, "g12345"), 1);
    assert_int_equal(em_registry_group_remove(reg, "g12345", NULL), EM_OK);
    assert_int_equal(em_registry_group_create(reg, "one more", &err), EM_OK);
    assert_int_equal(em_registry_group_exists(reg, "g99999"), 1);
    em_registry_free(reg);
}

/* --- size ---------------------------------------------------------------- */

static void test_growth_to_200000_devices_keeps_all_findable(void **state)
{
    (void)state;
    em_registry_t *reg = new_reg();
    char id[16];
    const int n = 200000;
    for (int i = 0; i < n; i++) {
        snprintf(id, sizeof(id), "dev-%07d", i);
        add(reg, id);
    }
    assert_int_equal(em_registry_count(reg), n);
    for (int i = 0; i < n; i++) {
        snprintf(id, sizeof(id), "dev-%07d", i);
        em_device_t *dev = em_registry_get(reg, id);
        assert_non_null(dev);
        assert_string_equal(dev->id, id);
    }
    size_t before = em_registry_memory(reg);
    /* Removing most of them (backward-shift deletion, then shrinking) keeps
     * the rest findable. */
    for (int i = 0; i < n; i++) {
        if (i % 10 == 0)
            continue;
        snprintf(id, sizeof(id), "dev-%07d", i);
        assert_int_equal(em_registry_remove(reg, id, NULL), EM_OK);
    }
    assert_int_equal(em_registry_count(reg), n / 10);
    for (int i = 0; i < n; i++) {
        snprintf(id, sizeof(id), "dev-%07d", i);
        assert_int_equal(em_registry_get(reg, id) != NULL, i % 10 == 0);
    }
    assert_true(em_registry_memory(reg) < before / 5);
    em_registry_free(reg);
}

static void test_max_devices_limit(void **state)
{
    (void)state;
    em_registry_t *reg = em_registry_new(1000, 3);
    assert_non_null(reg);
    add(reg, "dev-001");
    add(reg, "dev-002");
    add(reg, "dev-003");
    em_error_t err;
    assert_int_equal(em_registry_add(reg, "dev-004", NULL, EM_DEVICE_SENSOR, NULL, NOW, NULL, &err),
                     EM_ERR_LIMIT);
    assert_int_equal(err.code, EM_ERR_LIMIT);
    assert_null(em_registry_get(reg, "dev-004"));
    assert_int_equal(em_registry_remove(reg, "dev-002", NULL), EM_OK);
    add(reg, "dev-004");
    assert_int_equal(em_registry_count(reg), 3);
    em_registry_free(reg);
}

static void test_memory_estimate_follows_contents(void **state)
{
    (void)state;
    em_registry_t *reg = new_reg();
    size_t empty = em_registry_memory(reg);
    assert_true(empty > 0);
    add(reg, "dev-001");
    size_t one = em_registry_memory(reg);
    assert_true(one >= empty + sizeof(em_device_t));
    assert_int_equal(
        em_registry_add(reg, "dev-002", "A named device", EM_DEVICE_SENSOR, NULL, NOW, NULL, NULL),
        EM_OK);
    size_t two = em_registry_memory(reg);
    assert_true(two >= one + sizeof(em_device_t) + sizeof("A named device"));
    group(reg, "lights");
    join(reg, "lights", "dev-001");
    assert_true(em_registry_memory(reg) > two);
    assert_int_equal(em_registry_memory(NULL), 0);
    em_registry_free(reg);
}

static void test_null_registry_is_harmless(void **state)
{
    (void)state;
    em_registry_free(NULL);
    assert_int_equal(em_registry_count(NULL), 0);
    assert_int_equal(em_registry_group_count(NULL), 0);
    assert_int_equal(
        em_registry_add(NULL, "dev-001", NULL, EM_DEVICE_SENSOR, NULL, NOW, NULL, NULL),
        EM_ERR_INVALID_ARGUMENT);
    assert_int_equal(em_registry_group_create(NULL, "lights", NULL), EM_ERR_INVALID_ARGUMENT);
    assert_int_equal(em_registry_group_exists(NULL, "lights"), 0);
    assert_int_equal(em_registry_group_size(NULL, "lights"), 0);
    assert_int_equal(em_registry_foreach(NULL, visit_device, NULL), 0);
    assert_null(em_registry_telemetry(NULL));
    em__device_ext_free(NULL);
}

/* --- allocation failures ------------------------------------------------- */

static void test_new_out_of_memory_returns_null(void **state)
{
    (void)state;
    REQUIRE_ALLOC_HOOK();
    for (long n = 0;; n++) {
        fail_allocation(n);
        em_registry_t *reg = em_registry_new(100, 0);
        bool failed = !failure_pending();
        no_alloc_failure();
        if (reg != NULL) {
            assert_false(failed);
            em_registry_free(reg);
            break;
        }
        assert_true(failed);
    }
}

/* A registry whose index is full to its growth point: the next add also
 * needs a bigger index. */
static em_registry_t *full_index_registry(void)
{
    em_registry_t *reg = new_reg();
    char id[16];
    for (int i = 0; i < 12; i++) {
        snprintf(id, sizeof(id), "dev-%03d", i);
        add(reg, id);
    }
    return reg;
}

static void test_add_out_of_memory_leaves_registry_unchanged(void **state)
{
    (void)state;
    REQUIRE_ALLOC_HOOK();
    int failures = 0;
    for (long n = 0;; n++) {
        em_registry_t *reg = full_index_registry();
        em_error_t err;
        fail_allocation(n);
        em_err_t rc =
            em_registry_add(reg, "named-1", "A name", EM_DEVICE_SENSOR, NULL, NOW, NULL, &err);
        no_alloc_failure();
        if (rc == EM_OK) {
            assert_string_equal(em_registry_get(reg, "named-1")->name, "A name");
            em_registry_free(reg);
            break;
        }
        failures++;
        assert_int_equal(rc, EM_ERR_NOMEM);
        assert_int_equal(err.code, EM_ERR_NOMEM);
        assert_string_equal(err.device_id, "named-1");
        assert_int_equal(em_registry_count(reg), 12);
        assert_null(em_registry_get(reg, "named-1"));
        char id[16];
        for (int i = 0; i < 12; i++) {
            snprintf(id, sizeof(id), "dev-%03d", i);
            assert_non_null(em_registry_get(reg, id));
        }
        em_registry_free(reg);
    }
    assert_int_equal(failures, 3); /* index, device, name */
}

static void test_update_out_of_memory_leaves_device_unchanged(void **state)
{
    (void)state;
    REQUIRE_ALLOC_HOOK();
    em_registry_t *reg = new_reg();
    em_device_t *dev = add(reg, "dev-001");
    em_device_type_t type = EM_DEVICE_CAMERA;
    fail_allocation(0);
    assert_int_equal(em_registry_update(reg, "dev-001", "Camera", &type, NULL, NOW + 1, NULL),
                     EM_ERR_NOMEM);
    no_alloc_failure();
    assert_string_equal(dev->name, "dev-001");
    assert_int_equal(dev->type, EM_DEVICE_SENSOR);
    assert_int_equal(dev->updated_at_ms, NOW);
    em_registry_free(reg);
}

static void test_group_out_of_memory_leaves_groups_unchanged(void **state)
{
    (void)state;
    REQUIRE_ALLOC_HOOK();
    em_registry_t *reg = new_reg();
    add(reg, "dev-001");
    for (long n = 0;; n++) {
        fail_allocation(n);
        em_err_t rc = em_registry_group_create(reg, "lights", NULL);
        no_alloc_failure();
        if (rc == EM_OK)
            break;
        assert_int_equal(rc, EM_ERR_NOMEM);
        assert_int_equal(em_registry_group_exists(reg, "lights"), 0);
        assert_int_equal(em_registry_group_count(reg), 0);
    }
    for (long n = 0;; n++) {
        fail_allocation(n);
        em_err_t rc = em_registry_group_add(reg, "lights", "dev-001", NULL);
        no_alloc_failure();
        if (rc == EM_OK)
            break;
        assert_int_equal(rc, EM_ERR_NOMEM);
        assert_int_equal(em_registry_group_size(reg, "lights"), 0);
        assert_int_equal(em_registry_get(reg, "dev-001")->ngroups, 0);
        check_links(reg);
    }
    assert_int_equal(em_registry_group_size(reg, "lights"), 1);
    check_links(reg);
    em_registry_free(reg);
}

static void test_telemetry_out_of_memory(void **state)
{
    (void)state;
    REQUIRE_ALLOC_HOOK();
    em_registry_t *reg = new_reg();
    em_device_t *dev = add(reg, "meter-01");
    em_telemetry_t t = {.has = EM_TELEMETRY_HAS_ENERGY, .energy_wh = 1.0, .timestamp_ms = NOW};
    double delta = -1;
    fail_allocation(0);
    assert_int_equal(em_registry_set_telemetry(reg, dev, &t, &delta, NULL), EM_ERR_NOMEM);
    no_alloc_failure();
    assert_true(delta == 0.0);
    assert_null(em_registry_telemetry(dev));
    assert_int_equal(em_registry_set_telemetry(reg, dev, &t, &delta, NULL), EM_OK);
    assert_non_null(em_registry_telemetry(dev));
    em_registry_free(reg);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_add_then_get_returns_the_device),
        cmocka_unit_test(test_add_without_name_uses_the_id),
        cmocka_unit_test(test_add_duplicate_is_refused),
        cmocka_unit_test(test_add_invalid_id_is_refused_with_reason),
        cmocka_unit_test(test_add_invalid_name_type_or_config_is_refused),
        cmocka_unit_test(test_find_uses_length_not_terminator),
        cmocka_unit_test(test_update_merges_config),
        cmocka_unit_test(test_update_changes_name_and_type),
        cmocka_unit_test(test_update_invalid_leaves_device_unchanged),
        cmocka_unit_test(test_update_unknown_device_is_not_found),
        cmocka_unit_test(test_remove_device),
        cmocka_unit_test(test_remove_device_frees_status_telemetry_and_window),
        cmocka_unit_test(test_set_status_takes_ownership),
        cmocka_unit_test(test_telemetry_first_sample_has_no_consumption),
        cmocka_unit_test(test_telemetry_delta_between_samples),
        cmocka_unit_test(test_telemetry_counter_reset_is_never_negative),
        cmocka_unit_test(test_telemetry_without_energy_keeps_the_counter),
        cmocka_unit_test(test_group_create_exists_and_remove),
        cmocka_unit_test(test_group_invalid_name_is_refused),
        cmocka_unit_test(test_group_add_is_idempotent),
        cmocka_unit_test(test_group_add_unknown_device_or_group),
        cmocka_unit_test(test_group_remove_device_that_is_not_a_member),
        cmocka_unit_test(test_device_in_many_groups_up_to_the_maximum),
        cmocka_unit_test(test_group_remove_detaches_its_members),
        cmocka_unit_test(test_remove_device_leaves_its_groups),
        cmocka_unit_test(test_group_foreach_visits_members_in_order),
        cmocka_unit_test(test_group_foreach_stops_when_asked),
        cmocka_unit_test(test_foreach_visits_every_device_and_stops_when_asked),
        cmocka_unit_test(test_groups_foreach_lists_every_group),
        cmocka_unit_test(test_group_stats_on_a_known_population),
        cmocka_unit_test(test_group_stats_of_an_empty_group),
        cmocka_unit_test(test_membership_matches_a_reference_model_under_random_changes),
        cmocka_unit_test(test_group_limit),
        cmocka_unit_test(test_growth_to_200000_devices_keeps_all_findable),
        cmocka_unit_test(test_max_devices_limit),
        cmocka_unit_test(test_memory_estimate_follows_contents),
        cmocka_unit_test(test_null_registry_is_harmless),
        cmocka_unit_test(test_new_out_of_memory_returns_null),
        cmocka_unit_test(test_add_out_of_memory_leaves_registry_unchanged),
        cmocka_unit_test(test_update_out_of_memory_leaves_device_unchanged),
        cmocka_unit_test(test_group_out_of_memory_leaves_groups_unchanged),
        cmocka_unit_test(test_telemetry_out_of_memory),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
