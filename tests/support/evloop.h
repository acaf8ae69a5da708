/*
 * emiot tests - evloop.h: a libevent loop on its own thread, for tests that
 * run the API in process (the API's functions belong to its loop's thread).
 *
 *   pthread_create(&thread, NULL, em_test_loop_main, base);
 *   em_test_run_on_loop(base, fn, arg);      fn(arg) runs on that thread
 *   event_base_loopbreak(base); pthread_join(thread, NULL);
 */
#ifndef EM_TEST_EVLOOP_H
#define EM_TEST_EVLOOP_H

struct event_base;

/* Runs the loop of base (a struct event_base *) until event_base_loopbreak,
 * also while it has no events. For pthread_create; returns NULL. */
void *em_test_loop_main(void *base);

/* Runs fn(arg) on the thread that runs base's loop and waits until it has
 * returned. Returns 0, or -1 when it could not be scheduled. */
int em_test_run_on_loop(struct event_base *base, void (*fn)(void *), void *arg);

#endif /* EM_TEST_EVLOOP_H */
