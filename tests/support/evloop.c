/*
 * emiot tests - evloop.c: see evloop.h.
 */
#include "evloop.h"

#include <pthread.h>
#include <stdbool.h>
#include <stddef.h>

#include <event2/event.h>

void *em_test_loop_main(void *base)
{
    event_base_loop(base, EVLOOP_NO_EXIT_ON_EMPTY);
    return NULL;
}

typedef struct on_loop {
    void (*fn)(void *);
    void *arg;
    pthread_mutex_t m;
    pthread_cond_t c;
    bool done;
} on_loop_t;

static void on_loop_cb(evutil_socket_t fd, short what, void *arg)
{
    (void)fd;
    (void)what;
    on_loop_t *o = arg;
    o->fn(o->arg);
    pthread_mutex_lock(&o->m);
    o->done = true;
    pthread_cond_signal(&o->c);
    pthread_mutex_unlock(&o->m);
}

int em_test_run_on_loop(struct event_base *base, void (*fn)(void *), void *arg)
{
    on_loop_t o = {fn, arg, PTHREAD_MUTEX_INITIALIZER, PTHREAD_COND_INITIALIZER, false};
    struct timeval now = {0, 0};
    if (event_base_once(base, -1, EV_TIMEOUT, on_loop_cb, &o, &now) != 0)
        return -1;
    pthread_mutex_lock(&o.m);
    while (!o.done)
        pthread_cond_wait(&o.c, &o.m);
    pthread_mutex_unlock(&o.m);
    return 0;
}
