/*
 * emiot tests - track.h: what a test's answers hold, freed by the teardown.
 *
 * A failed cmocka assertion leaves the test at once: memory and cJSON trees
 * the test still held are tracked here and freed by em_test_free_tracked
 * (used as the test's teardown), so that a failure is not also a leak.
 */
#ifndef EM_TEST_TRACK_H
#define EM_TEST_TRACK_H

#include <cjson/cJSON.h>

/* Most blocks (and, apart, most cJSON trees) tracked at once; past it, one
 * more is not tracked. */
#define EM_TEST_TRACK_MAX 64

/* Tracks p (freed with free) and j (freed with cJSON_Delete); either may be
 * NULL. */
void em_test_track(void *p, cJSON *j);

/* Stops tracking p and j (the test frees them itself); either may be NULL. */
void em_test_untrack(const void *p, const cJSON *j);

/* Frees everything tracked; a cmocka teardown (state unused). Returns 0. */
int em_test_free_tracked(void **state);

#endif /* EM_TEST_TRACK_H */
