/*
 * emiot - registry.c: devices and the index that finds them by id (see
 * registry.h; groups are in group.c).
 *
 * Memory is what this file is designed around: a million devices must fit in
 * well under 300 MB. A device is one fixed-size allocation (em_device_t, with
 * the id inline and the name sharing the id's bytes when they are equal); the
 * index costs one pointer per slot at a load factor of at most 3/4; what only
 * some devices need (telemetry, a command rate-limit window) lives in a
 * separately allocated extension.
 */
#include <errno.h>
#include <limits.h>
#include <math.h>
#include <stdbool.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>
#include <time.h>

#include "registry/device_ext.h"
#include "registry/registry_internal.h"

#define INDEX_MIN_CAP 16u

/* --- hashing ------------------------------------------------------------- */

/*
 * A wyhash-style hash: 64x64->128 bit multiplications folded to 64 bits,
 * keyed by a per-registry random seed, so that whoever chooses device ids
 * cannot aim them at one chain of the index without knowing the seed.
 * Every byte of K_WORD has its top bit set: ids and group names are ASCII, so
 * a word xor K_WORD is never zero and can never cancel the state.
 */
#define K_LEN  0x9e3779b97f4a7c15ull
#define K_WORD 0xa0f69de4f8bde4afull
#define K_MIX  0xe7037ed1a0b428dbull
#define K_TAIL 0x8ebc6af09c88c6e3ull

static uint64_t mum(uint64_t a, uint64_t b)
{
    __uint128_t r = (__uint128_t)a * b;
    return (uint64_t)r ^ (uint64_t)(r >> 64);
}

uint32_t em__registry_hash(const em_registry_t *reg, const char *s, size_t len)
{
    uint64_t h = reg->seed ^ ((uint64_t)len * K_LEN);
    while (len >= 8) {
        uint64_t w;
        memcpy(&w, s, 8);
        h = mum(w ^ K_WORD, h ^ K_MIX);
        s += 8;
        len -= 8;
    }
    uint64_t w = 0;
    memcpy(&w, s, len);
    h = mum(w ^ K_WORD, h ^ K_TAIL);
    h = mum(h ^ K_MIX, K_LEN);
    return (uint32_t)(h ^ (h >> 32));
}

static uint64_t random_seed(const void *salt)
{
    uint64_t seed = 0;
    ssize_t n;
    do {
        n = getrandom(&seed, sizeof(seed), GRND_NONBLOCK);
    } while (n < 0 && errno == EINTR);
    if (n == (ssize_t)sizeof(seed))
        return seed;
    /* No entropy yet (early boot): the seed only spreads the index, it is
     * not a secret key, so a clock- and address-derived value will do. */
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return mum((uint64_t)(uintptr_t)salt ^ K_MIX,
               ((uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec) ^ K_TAIL);
}

/* --- sizes --------------------------------------------------------------- */

size_t em__heap_bytes(size_t n)
{
    /* glibc: an 8-byte header, 16-byte granularity, 32 bytes at least. */
    if (n == 0)
        return 0;
    if (n > SIZE_MAX - 32)
        return n;
    n = (n + 8 + 15) & ~(size_t)15;
    return n < 32 ? 32 : n;
}

size_t em__device_groups_cap(uint16_t ngroups)
{
    size_t cap = 0;
    if (ngroups > 0)
        for (cap = 1; cap < ngroups; cap <<= 1)
            ;
    return cap;
}

/* --- the index ----------------------------------------------------------- */

static bool id_equals(const em_device_t *dev, uint32_t hash, const char *id, size_t len)
{
    return dev->hash == hash && dev->id_len == len && memcmp(dev->id, id, len) == 0;
}

/* The slot holding dev, or cap when it is not indexed. */
static size_t slot_of(const em_registry_t *reg, const em_device_t *dev)
{
    size_t mask = reg->cap - 1;
    for (size_t i = dev->hash & mask;; i = (i + 1) & mask) {
        if (reg->slots[i] == dev)
            return i;
        if (reg->slots[i] == NULL)
            return reg->cap;
    }
}

static void index_put(em_device_t **slots, size_t cap, em_device_t *dev)
{
    size_t mask = cap - 1;
    size_t i = dev->hash & mask;
    while (slots[i] != NULL)
        i = (i + 1) & mask;
    slots[i] = dev;
}

/* Rebuilds the index with new_cap slots (a power of two that holds count at
 * a load of at most 3/4). On allocation failure the index is unchanged. */
static em_err_t index_resize(em_registry_t *reg, size_t new_cap)
{
    em_device_t **slots = calloc(new_cap, sizeof(em_device_t *));
    if (slots == NULL)
        return EM_ERR_NOMEM;
    for (size_t i = 0; i < reg->cap; i++)
        if (reg->slots[i] != NULL)
            index_put(slots, new_cap, reg->slots[i]);
    free(reg->slots);
    reg->slots = slots;
    reg->cap = new_cap;
    return EM_OK;
}

/* Smallest power-of-two capacity that holds n devices at a load <= 3/4, or 0
 * when that would overflow. */
static size_t cap_for(size_t n)
{
    size_t cap = INDEX_MIN_CAP;
    while (n > cap / 4 * 3) {
        if (cap > SIZE_MAX / 2 / sizeof(em_device_t *))
            return 0;
        cap <<= 1;
    }
    return cap;
}

/* Deletes the entry at slot i, shifting the rest of its run back so that
 * lookups never need tombstones. */
static void index_delete_at(em_registry_t *reg, size_t i)
{
    size_t mask = reg->cap - 1;
    size_t j = i;
    for (;;) {
        j = (j + 1) & mask;
        em_device_t *d = reg->slots[j];
        if (d == NULL)
            break;
        size_t home = d->hash & mask;
        /* d may move to the hole at i only if its home is not in (i, j]
         * (cyclically): otherwise a lookup starting at home would not pass i. */
        bool home_in_between = (i <= j) ? (i < home && home <= j) : (i < home || home <= j);
        if (!home_in_between) {
            reg->slots[i] = d;
            i = j;
        }
    }
    reg->slots[i] = NULL;
}

/* --- registry ------------------------------------------------------------ */

em_registry_t *em_registry_new(size_t capacity_hint, size_t max_devices)
{
    if (max_devices == 0)
        max_devices = EM_REGISTRY_DEVICES_MAX_DEFAULT;
    /* Positions in group member arrays are 32-bit. */
    if (max_devices > UINT32_MAX)
        max_devices = UINT32_MAX;
    if (capacity_hint > max_devices)
        capacity_hint = max_devices;
    size_t cap = cap_for(capacity_hint);
    if (cap == 0)
        return NULL;

    em_registry_t *reg = calloc(1, sizeof(*reg));
    if (reg == NULL)
        return NULL;
    reg->slots = calloc(cap, sizeof(em_device_t *));
    if (reg->slots == NULL) {
        free(reg);
        return NULL;
    }
    reg->cap = cap;
    reg->min_cap = cap;
    reg->max_devices = max_devices;
    reg->groups_max = EM_REGISTRY_GROUPS_MAX_DEFAULT;
    reg->seed = random_seed(reg);
    return reg;
}

static bool name_is_id(const em_device_t *dev)
{
    return dev->name == dev->id;
}

static void device_free(em_device_t *dev)
{
    em__device_ext_free(dev->ext);
    em_status_cleanup(&dev->status);
    if (!name_is_id(dev))
        free(dev->name);
    free(dev->groups);
    free(dev);
}

void em_registry_free(em_registry_t *reg)
{
    if (reg == NULL)
        return;
    for (size_t i = 0; i < reg->cap; i++)
        if (reg->slots[i] != NULL)
            device_free(reg->slots[i]);
    em__registry_groups_free(reg);
    free(reg->slots);
    free(reg);
}

size_t em_registry_count(const em_registry_t *reg)
{
    return reg == NULL ? 0 : reg->count;
}

em_device_t *em_registry_find(const em_registry_t *reg, const char *id, size_t len)
{
    if (reg == NULL || id == NULL || len < EM_DEVICE_ID_MIN || len > EM_DEVICE_ID_MAX)
        return NULL;
    uint32_t h = em__registry_hash(reg, id, len);
    size_t mask = reg->cap - 1;
    for (size_t i = h & mask;; i = (i + 1) & mask) {
        em_device_t *d = reg->slots[i];
        if (d == NULL)
            return NULL;
        if (id_equals(d, h, id, len))
            return d;
    }
}

em_device_t *em_registry_get(const em_registry_t *reg, const char *id)
{
    if (id == NULL)
        return NULL;
    return em_registry_find(reg, id, strnlen(id, EM_DEVICE_ID_MAX + 1));
}

/* Validates a name given as a C string; *len receives its length (bounded:
 * an over-long name fails validation without being read to its end). */
static em_err_t check_name(const char *name, size_t *len, em_error_t *err)
{
    *len = strnlen(name, EM_DEVICE_NAME_MAX + 1);
    return em_device_name_validate(name, *len, err);
}

static em_err_t check_type(em_device_type_t type, em_error_t *err)
{
    if ((unsigned)type > (unsigned)EM_DEVICE_GENERIC)
        return em_error_set(err, EM_ERR_VALIDATION, EM_SEV_LOW, "type", "unknown device type %u",
                            (unsigned)type);
    return EM_OK;
}

/* Points dev->name at a copy of name, or at dev->id when they are equal.
 * Frees the previous name. EM_ERR_NOMEM leaves dev unchanged. */
static em_err_t set_name(em_device_t *dev, const char *name, size_t len)
{
    char *copy;
    if (len == dev->id_len && memcmp(name, dev->id, len) == 0) {
        copy = dev->id;
    } else {
        copy = malloc(len + 1);
        if (copy == NULL)
            return EM_ERR_NOMEM;
        memcpy(copy, name, len);
        copy[len] = '\0';
    }
    if (dev->name != NULL && !name_is_id(dev))
        free(dev->name);
    dev->name = copy;
    return EM_OK;
}

em_err_t em__registry_err(em_error_t *err, em_err_t rc, const char *id)
{
    if (err != NULL) {
        size_t len = id == NULL ? 0 : strnlen(id, EM_DEVICE_ID_MAX + 1);
        bool valid = id != NULL && em_device_id_validate(id, len, NULL) == EM_OK;
        em_error_set_device(err, valid ? id : "");
    }
    return rc;
}

em_err_t em__registry_out_of_memory(em_error_t *err, const char *id)
{
    return em__registry_err(
        err, em_error_set(err, EM_ERR_NOMEM, EM_SEV_HIGH, NULL, "out of memory"), id);
}

em_err_t em__registry_check_key(const em_registry_t *reg, const char *key, const char *field,
                                size_t max,
                                em_err_t (*validate)(const char *s, size_t len, em_error_t *err),
                                size_t *len, em_error_t *err)
{
    *len = 0;
    if (reg == NULL)
        return em__registry_err(
            err, em_error_set(err, EM_ERR_INVALID_ARGUMENT, EM_SEV_LOW, NULL, "no registry"), NULL);
    if (key == NULL)
        return em__registry_err(
            err, em_error_set(err, EM_ERR_VALIDATION, EM_SEV_LOW, field, "is required"), NULL);
    *len = strnlen(key, max + 1);
    em_err_t rc = validate(key, *len, err);
    return rc == EM_OK ? EM_OK : em__registry_err(err, rc, NULL);
}

em_err_t em_registry_add(em_registry_t *reg, const char *id, const char *name,
                         em_device_type_t type, const em_device_config_t *cfg, int64_t now_ms,
                         em_device_t **out, em_error_t *err)
{
    if (out != NULL)
        *out = NULL;
    size_t id_len;
    em_err_t rc = em__registry_check_key(reg, id, "id", EM_DEVICE_ID_MAX, em_device_id_validate,
                                         &id_len, err);
    if (rc != EM_OK)
        return rc;

    size_t name_len = id_len;
    if (name != NULL && name[0] != '\0')
        rc = check_name(name, &name_len, err);
    else
        name = id;
    if (rc == EM_OK)
        rc = check_type(type, err);
    if (rc == EM_OK && cfg != NULL)
        rc = em_device_config_validate(cfg, err);
    if (rc != EM_OK)
        return em__registry_err(err, rc, id);

    if (em_registry_find(reg, id, id_len) != NULL)
        return em__registry_err(err,
                                em_error_set(err, EM_ERR_EXISTS, EM_SEV_LOW, "id",
                                             "device %s is already registered", id),
                                id);
    if (reg->count >= reg->max_devices)
        return em__registry_err(err,
                                em_error_set(err, EM_ERR_LIMIT, EM_SEV_MEDIUM, NULL,
                                             "the registry holds its maximum of %zu devices",
                                             reg->max_devices),
                                id);
    if (reg->count + 1 > reg->cap / 4 * 3) {
        size_t cap = cap_for(reg->count + 1);
        if (cap == 0 || index_resize(reg, cap) != EM_OK)
            return em__registry_out_of_memory(err, id);
    }

    em_device_t *dev = calloc(1, sizeof(*dev));
    if (dev == NULL)
        return em__registry_out_of_memory(err, id);
    memcpy(dev->id, id, id_len);
    dev->id[id_len] = '\0';
    dev->id_len = (uint8_t)id_len;
    dev->type = (uint8_t)type;
    dev->hash = em__registry_hash(reg, id, id_len);
    if (cfg != NULL)
        dev->config = *cfg;
    dev->created_at_ms = now_ms;
    dev->updated_at_ms = now_ms;
    if (set_name(dev, name, name_len) != EM_OK) {
        free(dev);
        return em__registry_out_of_memory(err, id);
    }
    index_put(reg->slots, reg->cap, dev);
    reg->count++;
    if (out != NULL)
        *out = dev;
    return EM_OK;
}

em_err_t em__registry_not_found(em_error_t *err, const char *id)
{
    size_t len = id == NULL ? 0 : strnlen(id, EM_DEVICE_ID_MAX + 1);
    em_err_t rc;
    if (id != NULL && em_device_id_validate(id, len, NULL) == EM_OK)
        rc = em_error_set(err, EM_ERR_DEVICE_NOT_FOUND, EM_SEV_LOW, "id", "no device %s", id);
    else /* not echoed: an invalid id may hold anything */
        rc = em_error_set(err, EM_ERR_DEVICE_NOT_FOUND, EM_SEV_LOW, "id", "no such device");
    return em__registry_err(err, rc, id);
}

static void config_merge(em_device_config_t *dst, const em_device_config_t *src)
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

em_err_t em_registry_update(em_registry_t *reg, const char *id, const char *name,
                            const em_device_type_t *type, const em_device_config_t *cfg,
                            int64_t now_ms, em_error_t *err)
{
    em_device_t *dev = em_registry_get(reg, id);
    if (dev == NULL)
        return em__registry_not_found(err, id);

    /* Everything is checked before anything changes. */
    size_t name_len = 0;
    em_err_t rc = EM_OK;
    if (name != NULL)
        rc = check_name(name, &name_len, err);
    if (rc == EM_OK && type != NULL)
        rc = check_type(*type, err);
    if (rc == EM_OK && cfg != NULL)
        rc = em_device_config_validate(cfg, err);
    if (rc != EM_OK)
        return em__registry_err(err, rc, dev->id);
    if (name != NULL && set_name(dev, name, name_len) != EM_OK)
        return em__registry_out_of_memory(err, dev->id);

    if (type != NULL)
        dev->type = (uint8_t)*type;
    if (cfg != NULL)
        config_merge(&dev->config, cfg);
    dev->updated_at_ms = now_ms;
    return EM_OK;
}

em_err_t em_registry_remove(em_registry_t *reg, const char *id, em_error_t *err)
{
    em_device_t *dev = em_registry_get(reg, id);
    if (dev == NULL)
        return em__registry_not_found(err, id);

    size_t i = slot_of(reg, dev);
    if (i < reg->cap)
        index_delete_at(reg, i);
    reg->count--;
    em__registry_detach_device(reg, dev);
    device_free(dev);

    /* Give memory back after mass removals; a failed shrink changes nothing. */
    if (reg->cap > reg->min_cap && reg->count < reg->cap / 8)
        (void)index_resize(reg, reg->cap / 2);
    return EM_OK;
}

void em_registry_set_status(em_registry_t *reg, em_device_t *dev, em_status_t *st)
{
    (void)reg;
    if (dev == NULL || st == NULL)
        return;
    em_status_cleanup(&dev->status);
    dev->status = *st;
    memset(st, 0, sizeof(*st));
}

em_err_t em_registry_set_telemetry(em_registry_t *reg, em_device_t *dev, const em_telemetry_t *t,
                                   double *delta_wh, int *counter_reset)
{
    (void)reg;
    if (delta_wh != NULL)
        *delta_wh = 0.0;
    if (counter_reset != NULL)
        *counter_reset = 0;
    if (dev == NULL || t == NULL)
        return EM_ERR_INVALID_ARGUMENT;
    struct em__device_ext *ext = em__device_ext(dev);
    if (ext == NULL)
        return EM_ERR_NOMEM;

    /* Consumption is measured against the last counter seen, even if samples
     * without an energy field came in between. A counter that went down was
     * reset (device restart, meter replaced): it has counted from zero since,
     * so its new value is the consumption; it is never negative. A value that
     * is not a finite non-negative number cannot be a counter and is left out. */
    if ((t->has & EM_TELEMETRY_HAS_ENERGY) && isfinite(t->energy_wh) && t->energy_wh >= 0.0) {
        if (ext->has_energy) {
            double delta;
            if (t->energy_wh >= ext->energy_wh) {
                delta = t->energy_wh - ext->energy_wh;
            } else {
                delta = t->energy_wh;
                if (counter_reset != NULL)
                    *counter_reset = 1;
            }
            if (delta_wh != NULL)
                *delta_wh = delta;
        }
        ext->has_energy = true;
        ext->energy_wh = t->energy_wh;
    }
    ext->telemetry = *t;
    ext->has_telemetry = true;
    return EM_OK;
}

const em_telemetry_t *em_registry_telemetry(const em_device_t *dev)
{
    if (dev == NULL || dev->ext == NULL || !dev->ext->has_telemetry)
        return NULL;
    return &dev->ext->telemetry;
}

size_t em_registry_foreach(const em_registry_t *reg, em_device_fn fn, void *userdata)
{
    if (reg == NULL || fn == NULL)
        return 0;
    size_t visited = 0;
    for (size_t i = 0; i < reg->cap; i++) {
        em_device_t *d = reg->slots[i];
        if (d == NULL)
            continue;
        visited++;
        if (fn(d, userdata) != 0)
            break;
    }
    return visited;
}

static size_t heap_string(const char *s)
{
    return s == NULL ? 0 : em__heap_bytes(strlen(s) + 1);
}

static size_t device_memory(const em_device_t *d)
{
    size_t n = em__heap_bytes(sizeof(*d));
    if (!name_is_id(d))
        n += heap_string(d->name);
    n += em__heap_bytes(em__device_groups_cap(d->ngroups) * sizeof(*d->groups));
    n += heap_string(d->status.errors_json);
    n += heap_string(d->status.extra_json);
    if (d->ext != NULL) {
        n += em__heap_bytes(sizeof(*d->ext));
        if (d->ext->cmd_window != NULL)
            n += em__heap_bytes(sizeof(*d->ext->cmd_window) +
                                (size_t)d->ext->cmd_window->limit * sizeof(int64_t));
    }
    return n;
}

size_t em_registry_memory(const em_registry_t *reg)
{
    if (reg == NULL)
        return 0;
    /* A walk over every device: exact for what the registry holds, and cheap
     * next to anything that would ask for it (about a millisecond per 100,000
     * devices). */
    size_t n = em__heap_bytes(sizeof(*reg)) + em__heap_bytes(reg->cap * sizeof(em_device_t *));
    for (size_t i = 0; i < reg->cap; i++)
        if (reg->slots[i] != NULL)
            n += device_memory(reg->slots[i]);
    return n + em__registry_groups_memory(reg);
}
