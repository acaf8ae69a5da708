/*
 * emiot - manager_internal.h (internal): the manager's state, shared by the
 * files of src/manager/.
 */
#ifndef EM_MANAGER_INTERNAL_H
#define EM_MANAGER_INTERNAL_H

#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>

#include "emiot/manager.h"
#include "emiot/topic.h"

#define EM__MANAGER_CALLBACKS_MAX 16

struct em__callback {
    unsigned mask;
    em_event_fn fn;
    void *userdata;
};

/* A QoS 1 command waiting for the broker's acknowledgement (acks.c). */
struct em__ack {
    bool used;
    uint8_t type; /* em_command_type_t */
    uint16_t mid;
    char request_id[EM_REQUEST_ID_MAX + 1];
    char device_id[EM_DEVICE_ID_MAX + 1];
};

struct em__acks {
    struct em__ack *v;
    size_t cap; /* 0 or a power of two */
    size_t len;
};

/* Remembers the command sent with mid (false when the table cannot grow: the
 * acknowledgement will then not be reported). Lock held. */
bool em__acks_put(struct em__acks *a, uint16_t mid, const em_command_t *cmd, const char *device_id);
/* Takes the entry for mid into *out; false when there is none. Lock held. */
bool em__acks_take(struct em__acks *a, uint16_t mid, struct em__ack *out);
/* Forgets everything (after a disconnection), freeing the table. Lock held. */
void em__acks_clear(struct em__acks *a);

struct em_manager {
    /* One recursive lock around everything below except `pending_acks`, so
     * callbacks may call back into the manager. */
    pthread_mutex_t lock;
    em_registry_t *reg;
    em_manager_options_t opts;
    char prefix[EM_TOPIC_PREFIX_MAX + 1];
    size_t prefix_len;

    em_mqtt_t *mqtt; /* NULL when not connected */
    bool connected;  /* last event from the transport was CONNECTED (for events only;
                        the transport itself says whether it is connected) */

    struct em__callback cbs[EM__MANAGER_CALLBACKS_MAX];
    size_t ncbs;

    em_manager_stats_t stats;
    int64_t last_reject_log_ms; /* rejections are logged at most once per second */
    uint64_t reject_log_suppressed;

    /* QoS 1 commands published and not yet acknowledged: updated by the
     * network thread without the lock, read by em_manager_flush. */
    atomic_long pending_acks;
    /* Set once a callback listens for EM_EVENT_COMMAND_ACKED: from then on
     * publish_one records each QoS 1 command's message id in acks. */
    atomic_bool track_acks;
    struct em__acks acks;
    pthread_mutex_t flush_lock; /* with flush_cond: signalled when pending_acks drops to 0 */
    pthread_cond_t flush_cond;

    /* The offline checker thread. */
    pthread_t checker;
    bool checker_running;
    bool checker_stop;
    pthread_mutex_t checker_lock;
    pthread_cond_t checker_cond;
};

/* Delivers ev to every callback registered for its type. Lock held. */
void em__manager_emit(em_manager_t *mgr, const em_event_t *ev);

/* Emits EM_EVENT_ERROR for err (and logs it, rate limited). Lock held. */
void em__manager_emit_error(em_manager_t *mgr, const em_error_t *err);

/* True while the calling thread is inside an event callback. */
bool em__manager_in_callback(void);

#endif /* EM_MANAGER_INTERNAL_H */
