/*
 * emiot - group.c: groups of devices (see registry.h and registry_internal.h).
 *
 * A group's members are an array of device pointers; each device records,
 * for each of its groups, its position in that array. Joining appends;
 * leaving moves the group's last member into the hole and updates that
 * member's recorded position, so both are O(1) whatever the group's size
 * (the scan of the moved device's own memberships is bounded by
 * EM_DEVICE_GROUPS_MAX). Groups are found by name through a small
 * open-addressing index of group ids.
 */
#include <stdbool.h>
#include <stdlib.h>
#include <string.h>

#include "registry/registry_internal.h"

#define GINDEX_MIN_CAP  16u
#define MEMBERS_MIN_CAP 4u

/* --- the name index ------------------------------------------------------ */

static struct em__group *group_at(const em_registry_t *reg, uint32_t id)
{
    return id < reg->groups_len ? reg->groups[id] : NULL;
}

static struct em__group *group_find(const em_registry_t *reg, const char *name, size_t len)
{
    if (reg == NULL || name == NULL || len < EM_GROUP_NAME_MIN || len > EM_GROUP_NAME_MAX ||
        reg->gindex_cap == 0)
        return NULL;
    uint32_t h = em__registry_hash(reg, name, len);
    uint32_t mask = reg->gindex_cap - 1;
    for (uint32_t i = h & mask;; i = (i + 1) & mask) {
        uint32_t v = reg->gindex[i];
        if (v == 0)
            return NULL;
        struct em__group *g = reg->groups[v - 1];
        if (g->hash == h && g->name_len == len && memcmp(g->name, name, len) == 0)
            return g;
    }
}

static struct em__group *group_lookup(const em_registry_t *reg, const char *name)
{
    if (name == NULL)
        return NULL;
    return group_find(reg, name, strnlen(name, EM_GROUP_NAME_MAX + 1));
}

static void gindex_put(uint32_t *index, uint32_t cap, const struct em__group *g)
{
    uint32_t mask = cap - 1;
    uint32_t i = g->hash & mask;
    while (index[i] != 0)
        i = (i + 1) & mask;
    index[i] = g->id + 1;
}

/* Makes room in the name index for one more group (load <= 1/2). */
static em_err_t gindex_reserve(em_registry_t *reg)
{
    if (reg->gindex_cap != 0 && (reg->ngroups + 1) <= reg->gindex_cap / 2)
        return EM_OK;
    uint32_t cap = reg->gindex_cap == 0 ? GINDEX_MIN_CAP : reg->gindex_cap * 2;
    if (cap < reg->gindex_cap) /* overflow; cannot happen below groups_max */
        return EM_ERR_NOMEM;
    uint32_t *index = calloc(cap, sizeof(*index));
    if (index == NULL)
        return EM_ERR_NOMEM;
    for (uint32_t i = 0; i < reg->gindex_cap; i++)
        if (reg->gindex[i] != 0)
            gindex_put(index, cap, reg->groups[reg->gindex[i] - 1]);
    free(reg->gindex);
    reg->gindex = index;
    reg->gindex_cap = cap;
    return EM_OK;
}

/* Deletes g from the name index by backward shift (no tombstones). */
static void gindex_delete(em_registry_t *reg, const struct em__group *g)
{
    uint32_t mask = reg->gindex_cap - 1;
    uint32_t i = g->hash & mask;
    while (reg->gindex[i] != g->id + 1)
        i = (i + 1) & mask;
    uint32_t j = i;
    for (;;) {
        j = (j + 1) & mask;
        uint32_t v = reg->gindex[j];
        if (v == 0)
            break;
        uint32_t home = reg->groups[v - 1]->hash & mask;
        bool home_in_between = (i <= j) ? (i < home && home <= j) : (i < home || home <= j);
        if (!home_in_between) {
            reg->gindex[i] = v;
            i = j;
        }
    }
    reg->gindex[i] = 0;
}

/* --- ids ----------------------------------------------------------------- */

/* Reserves a group id (reused if one is free), growing the id tables. */
static em_err_t id_reserve(em_registry_t *reg, uint32_t *id)
{
    if (reg->nfree > 0) {
        *id = reg->free_ids[--reg->nfree];
        return EM_OK;
    }
    if (reg->groups_len == reg->groups_cap) {
        uint32_t cap = reg->groups_cap == 0 ? 16 : reg->groups_cap * 2;
        if (cap > reg->groups_max)
            cap = reg->groups_max;
        if (cap <= reg->groups_cap)
            return EM_ERR_LIMIT;
        struct em__group **groups = realloc(reg->groups, cap * sizeof(struct em__group *));
        if (groups == NULL)
            return EM_ERR_NOMEM;
        reg->groups = groups;
        uint32_t *free_ids = realloc(reg->free_ids, cap * sizeof(*free_ids));
        if (free_ids == NULL)
            return EM_ERR_NOMEM; /* groups is merely larger than needed */
        reg->free_ids = free_ids;
        reg->groups_cap = cap;
    }
    *id = reg->groups_len++;
    reg->groups[*id] = NULL;
    return EM_OK;
}

static void id_release(em_registry_t *reg, uint32_t id)
{
    reg->groups[id] = NULL;
    reg->free_ids[reg->nfree++] = id;
}

/* --- membership ---------------------------------------------------------- */

/* The index in dev->groups of its membership of group id, or -1. */
static int membership_of(const em_device_t *dev, uint32_t id)
{
    for (int i = 0; i < (int)dev->ngroups; i++)
        if (dev->groups[i].group == id)
            return i;
    return -1;
}

/* Drops dev's membership entry k (swap-remove; the order of a device's
 * groups carries no meaning). */
static void membership_drop(em_device_t *dev, int k)
{
    dev->ngroups--;
    dev->groups[k] = dev->groups[dev->ngroups];
    if (dev->ngroups == 0) {
        free(dev->groups);
        dev->groups = NULL;
    }
}

/* Halves a member array that has become mostly empty; failure is harmless. */
static void members_shrink(struct em__group *g)
{
    if (g->cap <= MEMBERS_MIN_CAP || g->count >= g->cap / 4)
        return;
    uint32_t cap = g->cap / 2;
    em_device_t **m = realloc(g->members, (size_t)cap * sizeof(em_device_t *));
    if (m != NULL) {
        g->members = m;
        g->cap = cap;
    }
}

/* Removes the member at pos from g, moving the last member into its place
 * and fixing that member's recorded position. */
static void members_remove_at(struct em__group *g, uint32_t pos)
{
    g->count--;
    if (pos != g->count) {
        em_device_t *moved = g->members[g->count];
        g->members[pos] = moved;
        int k = membership_of(moved, g->id);
        if (k >= 0)
            moved->groups[k].pos = pos;
    }
    members_shrink(g);
}

void em__registry_detach_device(em_registry_t *reg, em_device_t *dev)
{
    for (uint16_t i = 0; i < dev->ngroups; i++) {
        struct em__group *g = group_at(reg, dev->groups[i].group);
        if (g != NULL)
            members_remove_at(g, dev->groups[i].pos);
    }
    free(dev->groups);
    dev->groups = NULL;
    dev->ngroups = 0;
}

/* --- groups -------------------------------------------------------------- */

size_t em_registry_group_count(const em_registry_t *reg)
{
    return reg == NULL ? 0 : reg->ngroups;
}

static em_err_t group_limit(em_error_t *err, const em_registry_t *reg)
{
    return em__registry_err(err,
                            em_error_set(err, EM_ERR_LIMIT, EM_SEV_MEDIUM, "group",
                                         "the registry holds its maximum of %u groups",
                                         reg->groups_max),
                            NULL);
}

em_err_t em_registry_group_create(em_registry_t *reg, const char *name, em_error_t *err)
{
    size_t len;
    em_err_t rc = em__registry_check_key(reg, name, "group", EM_GROUP_NAME_MAX,
                                         em_group_name_validate, &len, err);
    if (rc != EM_OK)
        return rc;
    if (group_find(reg, name, len) != NULL)
        return em__registry_err(
            err,
            em_error_set(err, EM_ERR_EXISTS, EM_SEV_LOW, "group", "group %s already exists", name),
            NULL);
    if (reg->ngroups >= reg->groups_max)
        return group_limit(err, reg);

    struct em__group *g = calloc(1, sizeof(*g));
    if (g == NULL || gindex_reserve(reg) != EM_OK) {
        free(g);
        return em__registry_out_of_memory(err, NULL);
    }
    uint32_t id;
    rc = id_reserve(reg, &id);
    if (rc != EM_OK) {
        free(g);
        return rc == EM_ERR_LIMIT ? group_limit(err, reg) : em__registry_out_of_memory(err, NULL);
    }
    memcpy(g->name, name, len);
    g->name[len] = '\0';
    g->name_len = (uint8_t)len;
    g->hash = em__registry_hash(reg, name, len);
    g->id = id;
    reg->groups[id] = g;
    reg->ngroups++;
    gindex_put(reg->gindex, reg->gindex_cap, g);
    return EM_OK;
}

/* Fills err for EM_ERR_GROUP_NOT_FOUND; device (may be NULL) is named too. */
static em_err_t group_not_found(em_error_t *err, const char *name, const char *device)
{
    size_t len = name == NULL ? 0 : strnlen(name, EM_GROUP_NAME_MAX + 1);
    em_err_t rc;
    if (name != NULL && em_group_name_validate(name, len, NULL) == EM_OK)
        rc = em_error_set(err, EM_ERR_GROUP_NOT_FOUND, EM_SEV_LOW, "group", "no group %s", name);
    else /* not echoed: an invalid name may hold anything */
        rc = em_error_set(err, EM_ERR_GROUP_NOT_FOUND, EM_SEV_LOW, "group", "no such group");
    return em__registry_err(err, rc, device);
}

static void group_destroy(em_registry_t *reg, struct em__group *g)
{
    for (uint32_t i = 0; i < g->count; i++) {
        em_device_t *d = g->members[i];
        int k = membership_of(d, g->id);
        if (k >= 0)
            membership_drop(d, k);
    }
    gindex_delete(reg, g);
    id_release(reg, g->id);
    reg->ngroups--;
    free(g->members);
    free(g);
}

em_err_t em_registry_group_remove(em_registry_t *reg, const char *name, em_error_t *err)
{
    struct em__group *g = group_lookup(reg, name);
    if (g == NULL)
        return group_not_found(err, name, NULL);
    group_destroy(reg, g);
    return EM_OK;
}

int em_registry_group_exists(const em_registry_t *reg, const char *name)
{
    return group_lookup(reg, name) != NULL;
}

/* Finds device id and group for a membership change: the group, or NULL with
 * *rc and err filled. The device is looked up first, so an unknown group's
 * error names the device. */
static struct em__group *device_and_group(em_registry_t *reg, const char *group, const char *id,
                                          em_device_t **dev, em_err_t *rc, em_error_t *err)
{
    *dev = em_registry_get(reg, id);
    if (*dev == NULL) {
        *rc = em__registry_not_found(err, id);
        return NULL;
    }
    struct em__group *g = group_lookup(reg, group);
    if (g == NULL)
        *rc = group_not_found(err, group, (*dev)->id);
    return g;
}

em_err_t em_registry_group_add(em_registry_t *reg, const char *group, const char *id,
                               em_error_t *err)
{
    em_device_t *dev;
    em_err_t rc = EM_OK;
    struct em__group *g = device_and_group(reg, group, id, &dev, &rc, err);
    if (g == NULL)
        return rc;
    if (membership_of(dev, g->id) >= 0)
        return EM_OK;
    if (dev->ngroups >= EM_DEVICE_GROUPS_MAX)
        return em__registry_err(err,
                                em_error_set(err, EM_ERR_LIMIT, EM_SEV_LOW, "group",
                                             "a device may belong to at most %d groups",
                                             EM_DEVICE_GROUPS_MAX),
                                dev->id);

    /* Both arrays are grown before either is changed, so a failure leaves
     * the membership as it was (an array may just be larger than needed). */
    if (g->count == g->cap) {
        uint32_t cap = g->cap == 0 ? MEMBERS_MIN_CAP : g->cap * 2;
        if (cap <= g->cap) /* beyond 2^32 members, which max_devices rules out */
            return em__registry_err(
                err, em_error_set(err, EM_ERR_LIMIT, EM_SEV_MEDIUM, "group", "group is full"),
                dev->id);
        em_device_t **m = realloc(g->members, (size_t)cap * sizeof(em_device_t *));
        if (m == NULL)
            return em__registry_out_of_memory(err, dev->id);
        g->members = m;
        g->cap = cap;
    }
    size_t dcap = em__device_groups_cap(dev->ngroups);
    if (dev->ngroups == dcap) {
        size_t ncap = dcap == 0 ? 1 : dcap * 2;
        struct em__device_group *dg = realloc(dev->groups, ncap * sizeof(*dg));
        if (dg == NULL)
            return em__registry_out_of_memory(err, dev->id);
        dev->groups = dg;
    }

    dev->groups[dev->ngroups].group = g->id;
    dev->groups[dev->ngroups].pos = g->count;
    dev->ngroups++;
    g->members[g->count++] = dev;
    return EM_OK;
}

em_err_t em_registry_group_remove_device(em_registry_t *reg, const char *group, const char *id,
                                         em_error_t *err)
{
    em_device_t *dev;
    em_err_t rc = EM_OK;
    struct em__group *g = device_and_group(reg, group, id, &dev, &rc, err);
    if (g == NULL)
        return rc;
    int k = membership_of(dev, g->id);
    if (k < 0)
        return em__registry_err(err,
                                em_error_set(err, EM_ERR_INVALID_ARGUMENT, EM_SEV_LOW, "group",
                                             "device %s is not in group %s", dev->id, g->name),
                                dev->id);
    uint32_t pos = dev->groups[k].pos;
    membership_drop(dev, k);
    members_remove_at(g, pos);
    return EM_OK;
}

size_t em_registry_group_size(const em_registry_t *reg, const char *name)
{
    const struct em__group *g = group_lookup(reg, name);
    return g == NULL ? 0 : g->count;
}

em_err_t em_registry_group_foreach(const em_registry_t *reg, const char *name, em_device_fn fn,
                                   void *userdata)
{
    const struct em__group *g = group_lookup(reg, name);
    if (g == NULL)
        return EM_ERR_GROUP_NOT_FOUND;
    if (fn == NULL)
        return EM_ERR_INVALID_ARGUMENT;
    for (uint32_t i = 0; i < g->count; i++)
        if (fn(g->members[i], userdata) != 0)
            break;
    return EM_OK;
}

void em_registry_groups_foreach(const em_registry_t *reg, em_group_fn fn, void *userdata)
{
    if (reg == NULL || fn == NULL)
        return;
    for (uint32_t id = 0; id < reg->groups_len; id++) {
        const struct em__group *g = reg->groups[id];
        if (g != NULL && fn(g->name, g->count, userdata) != 0)
            return;
    }
}

void em_registry_device_groups(const em_registry_t *reg, const em_device_t *dev, em_group_fn fn,
                               void *userdata)
{
    if (reg == NULL || dev == NULL || fn == NULL)
        return;
    for (uint16_t i = 0; i < dev->ngroups; i++) {
        const struct em__group *g = group_at(reg, dev->groups[i].group);
        if (g != NULL && fn(g->name, g->count, userdata) != 0)
            return;
    }
}

em_err_t em_registry_group_stats(const em_registry_t *reg, const char *name, em_group_stats_t *out,
                                 em_error_t *err)
{
    const struct em__group *g = group_lookup(reg, name);
    if (g == NULL)
        return group_not_found(err, name, NULL);
    if (out == NULL)
        return em__registry_err(
            err, em_error_set(err, EM_ERR_INVALID_ARGUMENT, EM_SEV_LOW, NULL, "no output"), NULL);

    memset(out, 0, sizeof(*out));
    double battery_sum = 0.0;
    for (uint32_t i = 0; i < g->count; i++) {
        const em_status_t *st = &g->members[i]->status;
        out->total++;
        if (st->has == 0) {
            /* Never reported: counted offline, power mode unknown. */
            out->offline++;
            out->power_modes[EM_POWER_UNKNOWN]++;
            continue;
        }
        if (st->has & EM_STATUS_HAS_CONNECTION) {
            if (st->connection == EM_CONN_ONLINE)
                out->online++;
            else if (st->connection == EM_CONN_OFFLINE)
                out->offline++;
        }
        if (st->has & EM_STATUS_HAS_BATTERY) {
            out->with_battery++;
            battery_sum += st->battery_level;
        }
        if ((st->has & EM_STATUS_HAS_POWER_MODE) && st->power_mode > EM_POWER_UNKNOWN &&
            st->power_mode <= EM_POWER_CRITICAL)
            out->power_modes[st->power_mode]++;
        else
            out->power_modes[EM_POWER_UNKNOWN]++;
    }
    if (out->with_battery > 0)
        out->average_battery = battery_sum / (double)out->with_battery;
    return EM_OK;
}

void em__registry_groups_free(em_registry_t *reg)
{
    for (uint32_t id = 0; id < reg->groups_len; id++) {
        struct em__group *g = reg->groups[id];
        if (g != NULL) {
            free(g->members);
            free(g);
        }
    }
    free(reg->groups);
    free(reg->free_ids);
    free(reg->gindex);
    reg->groups = NULL;
    reg->free_ids = NULL;
    reg->gindex = NULL;
    reg->groups_len = reg->groups_cap = reg->nfree = reg->ngroups = reg->gindex_cap = 0;
}

size_t em__registry_groups_memory(const em_registry_t *reg)
{
    size_t n = em__heap_bytes((size_t)reg->groups_cap * sizeof(struct em__group *)) +
               em__heap_bytes((size_t)reg->groups_cap * sizeof(*reg->free_ids)) +
               em__heap_bytes((size_t)reg->gindex_cap * sizeof(*reg->gindex));
    for (uint32_t id = 0; id < reg->groups_len; id++) {
        const struct em__group *g = reg->groups[id];
        if (g != NULL) {
            n += em__heap_bytes(sizeof(*g));
            n += em__heap_bytes((size_t)g->cap * sizeof(em_device_t *));
        }
    }
    return n;
}
