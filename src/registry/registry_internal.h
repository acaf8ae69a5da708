/*
 * emiot - registry_internal.h (internal): the registry's state, shared by
 * registry.c (devices and their index) and group.c (groups).
 *
 * Devices are allocated one by one and never move; the index is an
 * open-addressing table of device pointers. A group is a name and an array of
 * member pointers; each device keeps, for every group it belongs to, the
 * group's id and its own position in that group's member array, so leaving a
 * group is O(1) (swap-remove, then fix the moved member's position).
 */
#ifndef EM_REGISTRY_INTERNAL_H
#define EM_REGISTRY_INTERNAL_H

#include <stddef.h>
#include <stdint.h>

#include "emiot/registry.h"

/* One membership of a device: the group's id and the device's index in that
 * group's member array. */
struct em__device_group {
    uint32_t group;
    uint32_t pos;
};

struct em__group {
    char name[EM_GROUP_NAME_MAX + 1];
    uint8_t name_len;
    uint32_t hash;
    uint32_t id;    /* index in em_registry.groups */
    uint32_t count; /* members in use */
    uint32_t cap;   /* capacity of members */
    em_device_t **members;
};

struct em_registry {
    /* Device index: power-of-two capacity, linear probing, NULL = empty. */
    em_device_t **slots;
    size_t cap;
    size_t min_cap; /* never shrink below what the capacity hint asked for */
    size_t count;
    size_t max_devices;
    uint64_t seed; /* random per registry, so colliding ids cannot be precomputed */

    /* Groups by id (NULL = free id); free ids are reused from a stack. */
    struct em__group **groups;
    uint32_t groups_len; /* ids handed out so far (entries of groups in use or free) */
    uint32_t groups_cap; /* capacity of groups and free_ids */
    uint32_t *free_ids;
    uint32_t nfree;
    uint32_t ngroups;
    uint32_t groups_max;
    /* Group name index: group id + 1, 0 = empty; power-of-two capacity. */
    uint32_t *gindex;
    uint32_t gindex_cap;
};

/* The registry's hash of a device id or group name. */
uint32_t em__registry_hash(const em_registry_t *reg, const char *s, size_t len);

/* Sets err's device id (when err is not NULL) to id if it is a valid device
 * id, else to "" (an invalid id may hold anything and is never echoed), and
 * returns rc: every error the registry returns names its device or none,
 * never a stale one. */
em_err_t em__registry_err(em_error_t *err, em_err_t rc, const char *id);

/* Fills err for EM_ERR_NOMEM, naming device id as em__registry_err does, and
 * returns it. */
em_err_t em__registry_out_of_memory(em_error_t *err, const char *id);

/* The checks every adding call opens with: reg is given
 * (EM_ERR_INVALID_ARGUMENT), key is given (EM_ERR_VALIDATION on field) and
 * passes validate, which reads no more than max + 1 of its bytes. *len
 * receives key's length. On failure err names no device. */
em_err_t em__registry_check_key(const em_registry_t *reg, const char *key, const char *field,
                                size_t max,
                                em_err_t (*validate)(const char *s, size_t len, em_error_t *err),
                                size_t *len, em_error_t *err);

/* Fills err for EM_ERR_DEVICE_NOT_FOUND and returns it. */
em_err_t em__registry_not_found(em_error_t *err, const char *id);

/* Bytes malloc is likely to use for a request of n bytes (0 for 0). */
size_t em__heap_bytes(size_t n);

/* Capacity of a device's group array for ngroups memberships: arrays grow by
 * doubling, so it is the next power of two (0 for 0). */
size_t em__device_groups_cap(uint16_t ngroups);

/* Removes dev from every group and frees its membership array. */
void em__registry_detach_device(em_registry_t *reg, em_device_t *dev);

/* Frees every group and the group indexes (devices are freed by the caller,
 * who also frees their membership arrays). */
void em__registry_groups_free(em_registry_t *reg);

/* Heap bytes held by the groups and their indexes. */
size_t em__registry_groups_memory(const em_registry_t *reg);

#endif /* EM_REGISTRY_INTERNAL_H */
