/*
 * emiot bench - W1, in-process ingest (docs/PERFORMANCE.md).
 *
 * 10,000 registered devices; 1,000,000 status messages like DESIGN.md's
 * example with batteryLevel varying, topics round-robin, fed straight to
 * em_manager_handle_message on one core, with one status callback registered
 * (as an application would have). Payloads and topics are built before the
 * clock starts: the figure is the manager's, not snprintf's.
 *
 * usage: bench_w1_ingest [messages] [devices]
 */
#include <sched.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <time.h>

#include "emiot/emiot.h"

static unsigned long g_status_events;

static void on_status(em_manager_t *mgr, const em_event_t *ev, void *ud)
{
    (void)mgr;
    (void)ud;
    g_status_events += ev->status != NULL;
}

static double now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

static long parse_count(const char *s, long dflt)
{
    if (s == NULL)
        return dflt;
    char *end;
    long v = strtol(s, &end, 10);
    return (*end == '\0' && v > 0) ? v : dflt;
}

int main(int argc, char **argv)
{
    long messages = parse_count(argc > 1 ? argv[1] : NULL, 1000000);
    long devices = parse_count(argc > 2 ? argv[2] : NULL, 10000);

    /* One core, as the workload says. */
    cpu_set_t set;
    CPU_ZERO(&set);
    CPU_SET(0, &set);
    sched_setaffinity(0, sizeof(set), &set);
    em_log_set_level(EM_LOG_WARN);

    em_manager_options_t o;
    em_manager_options_init(&o);
    o.capacity_hint = (size_t)devices;
    em_error_t err;
    em_manager_t *mgr = em_manager_new(&o, &err);
    if (mgr == NULL) {
        fprintf(stderr, "manager: %s\n", err.message);
        return 1;
    }
    em_manager_on(mgr, EM_EVENT_MASK(EM_EVENT_STATUS), on_status, NULL);

    char(*topics)[64] = calloc((size_t)devices, sizeof(*topics));
    if (topics == NULL)
        return 1;
    for (long i = 0; i < devices; i++) {
        char id[32];
        snprintf(id, sizeof(id), "dev-%06ld", i);
        snprintf(topics[i], sizeof(topics[i]), "device/%s/status", id);
        if (em_manager_register_device(mgr, id, NULL, EM_DEVICE_SENSOR, NULL, NULL, &err) !=
            EM_OK) {
            fprintf(stderr, "register: %s\n", err.message);
            return 1;
        }
    }
    static char payloads[101][256];
    static size_t lens[101];
    for (int b = 0; b <= 100; b++) {
        int n = snprintf(payloads[b], sizeof(payloads[b]),
                         "{\"batteryLevel\":%d,\"powerMode\":\"normal\",\"connectionStatus\":"
                         "\"online\",\"firmwareVersion\":\"1.2.3\",\"signalStrength\":-67,"
                         "\"errors\":[],\"additionalInfo\":{}}",
                         b);
        lens[b] = (size_t)n;
    }

    long failures = 0;
    double t0 = now_s();
    for (long i = 0; i < messages; i++) {
        int b = (int)(i % 101);
        if (em_manager_handle_message(mgr, topics[i % devices], payloads[b], lens[b]) != EM_OK)
            failures++;
    }
    double elapsed = now_s() - t0;

    em_manager_stats_t st;
    em_manager_stats(mgr, &st);
    struct rusage ru;
    getrusage(RUSAGE_SELF, &ru);
    double rate = (double)messages / elapsed;
    printf("W1 in-process ingest: %ld messages to %ld devices in %.3f s on one core\n", messages,
           devices, elapsed);
    printf("  %.0f status messages/s, %lu accepted, %ld failed, %lu events, peak RSS %ld KiB\n",
           rate, (unsigned long)st.status_accepted, failures, g_status_events, ru.ru_maxrss);
    printf("{\"workload\":\"W1\",\"figure\":\"status_msgs_per_s\",\"value\":%.0f,\"unit\":\"msg/"
           "s\"}\n",
           rate);
    printf("{\"workload\":\"W1\",\"figure\":\"peak_rss\",\"value\":%ld,\"unit\":\"KiB\"}\n",
           ru.ru_maxrss);
    printf("{\"workload\":\"W1\",\"figure\":\"messages_failed\",\"value\":%ld,\"unit\":\"msg\"}\n",
           failures);
    free(topics);
    em_manager_free(mgr);
    return failures == 0 ? 0 : 1;
}
