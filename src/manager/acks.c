/*
 * emiot - acks.c: which command each QoS 1 message id carries, so that the
 * broker's acknowledgement can be reported as EM_EVENT_COMMAND_ACKED.
 *
 * Only kept while some callback listens for that event: a manager nobody
 * asks about acknowledgements pays nothing. Message ids are 16-bit and at
 * most EM_MQTT_PENDING_MAX await the broker, so the table is an open-
 * addressing hash on the id that never holds more than 65,536 entries; an id
 * seen again replaces the stale entry it finds. All functions run with the
 * manager's lock held.
 */
#include <stdlib.h>
#include <string.h>

#include "manager/manager_internal.h"

#define ACKS_MIN_CAP 256u
#define ACKS_MAX_CAP 131072u /* twice the id space: probes stay short when full */

static size_t slot_of(uint16_t mid, size_t cap)
{
    /* Ids are handed out in sequence: a multiplicative hash spreads them. */
    return (size_t)((uint32_t)mid * 2654435761u) & (cap - 1);
}

static bool grow(struct em__acks *a)
{
    size_t cap = a->cap == 0 ? ACKS_MIN_CAP : a->cap * 2;
    if (cap > ACKS_MAX_CAP)
        return false;
    struct em__ack *v = calloc(cap, sizeof(*v));
    if (v == NULL)
        return false;
    for (size_t i = 0; i < a->cap; i++) {
        if (!a->v[i].used)
            continue;
        size_t j = slot_of(a->v[i].mid, cap);
        while (v[j].used)
            j = (j + 1) & (cap - 1);
        v[j] = a->v[i];
    }
    free(a->v);
    a->v = v;
    a->cap = cap;
    return true;
}

bool em__acks_put(struct em__acks *a, uint16_t mid, const em_command_t *cmd, const char *device_id)
{
    /* Keep the load under one half so that probes stay short. */
    if ((a->len + 1) * 2 > a->cap && !grow(a))
        return false;
    size_t i = slot_of(mid, a->cap);
    while (a->v[i].used && a->v[i].mid != mid)
        i = (i + 1) & (a->cap - 1);
    if (!a->v[i].used)
        a->len++;
    struct em__ack *e = &a->v[i];
    e->used = true;
    e->mid = mid;
    e->type = (uint8_t)cmd->type;
    size_t n = strnlen(cmd->request_id, sizeof(e->request_id) - 1);
    memcpy(e->request_id, cmd->request_id, n);
    e->request_id[n] = '\0';
    n = strnlen(device_id, sizeof(e->device_id) - 1);
    memcpy(e->device_id, device_id, n);
    e->device_id[n] = '\0';
    return true;
}

bool em__acks_take(struct em__acks *a, uint16_t mid, struct em__ack *out)
{
    if (a->len == 0)
        return false;
    size_t i = slot_of(mid, a->cap);
    while (a->v[i].used && a->v[i].mid != mid)
        i = (i + 1) & (a->cap - 1);
    if (!a->v[i].used)
        return false;
    *out = a->v[i];
    a->v[i].used = false;
    a->len--;
    /* Backward-shift deletion: move up every later entry of the probe run
     * that would no longer be found past the hole. */
    size_t hole = i;
    size_t j = (i + 1) & (a->cap - 1);
    while (a->v[j].used) {
        size_t home = slot_of(a->v[j].mid, a->cap);
        /* Entry j may fill the hole when its home is not in (hole, j]. */
        bool between = hole <= j ? (home > hole && home <= j) : (home > hole || home <= j);
        if (!between) {
            a->v[hole] = a->v[j];
            a->v[j].used = false;
            hole = j;
        }
        j = (j + 1) & (a->cap - 1);
    }
    return true;
}

void em__acks_clear(struct em__acks *a)
{
    free(a->v);
    a->v = NULL;
    a->cap = 0;
    a->len = 0;
}
