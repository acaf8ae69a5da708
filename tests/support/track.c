/*
 * emiot tests - track.c: see track.h.
 */
#include "track.h"

#include <stdlib.h>

static void *tracked[EM_TEST_TRACK_MAX];
static cJSON *tracked_json[EM_TEST_TRACK_MAX];

void em_test_track(void *p, cJSON *j)
{
    for (int i = 0; p != NULL && i < EM_TEST_TRACK_MAX; i++) {
        if (tracked[i] == NULL) {
            tracked[i] = p;
            break;
        }
    }
    for (int i = 0; j != NULL && i < EM_TEST_TRACK_MAX; i++) {
        if (tracked_json[i] == NULL) {
            tracked_json[i] = j;
            break;
        }
    }
}

void em_test_untrack(const void *p, const cJSON *j)
{
    for (int i = 0; i < EM_TEST_TRACK_MAX; i++) {
        if (p != NULL && tracked[i] == p)
            tracked[i] = NULL;
        if (j != NULL && tracked_json[i] == j)
            tracked_json[i] = NULL;
    }
}

int em_test_free_tracked(void **state)
{
    (void)state;
    for (int i = 0; i < EM_TEST_TRACK_MAX; i++) {
        free(tracked[i]);
        cJSON_Delete(tracked_json[i]);
        tracked[i] = NULL;
        tracked_json[i] = NULL;
    }
    return 0;
}
