/*
 * emiot bench - W3, group fan-out through a local mosquitto
 * (docs/PERFORMANCE.md).
 *
 * 10,000 devices in one group; one `sleep {duration:60}` command to the
 * group at QoS 1. The figure is devices per second from the call until the
 * broker has acknowledged every publish; a separate subscriber (its own
 * connection, QoS 1, subscribed to P+/command) must see every command
 * arrive, and the number it missed is reported too.
 *
 * usage: bench_w3_fanout URL [devices] [rounds]
 *   URL is the broker, e.g. mqtt://127.0.0.1:1883 (scripts/bench.sh starts one).
 */
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "emiot/emiot.h"

static atomic_long g_received;

static void on_message(void *ud, const char *topic, const void *payload, size_t len, int qos,
                       bool retain)
{
    (void)ud;
    (void)topic;
    (void)payload;
    (void)len;
    (void)qos;
    (void)retain;
    atomic_fetch_add(&g_received, 1);
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
    if (argc < 2) {
        fprintf(stderr, "usage: %s URL [devices] [rounds]\n", argv[0]);
        return 2;
    }
    const char *url = argv[1];
    long devices = parse_count(argc > 2 ? argv[2] : NULL, 10000);
    long rounds = parse_count(argc > 3 ? argv[3] : NULL, 3);
    em_log_set_level(EM_LOG_WARN);
    em_error_t err;

    /* The confirming subscriber. */
    em_mqtt_options_t so;
    em_mqtt_options_init(&so);
    so.url = url;
    so.allow_plain = true;
    so.client_id_prefix = "w3-sub-";
    em_mqtt_callbacks_t scb = {.on_message = on_message};
    em_mqtt_t *sub = em_mqtt_new(&so, &scb, &err);
    if (sub == NULL || em_mqtt_subscribe(sub, "device/+/command", 1, &err) != EM_OK ||
        em_mqtt_connect(sub, 5000, &err) != EM_OK || em_mqtt_start(sub, &err) != EM_OK) {
        fprintf(stderr, "subscriber: %s\n", err.message);
        return 1;
    }

    em_manager_options_t o;
    em_manager_options_init(&o);
    o.capacity_hint = (size_t)devices;
    em_manager_t *mgr = em_manager_new(&o, &err);
    if (mgr == NULL)
        return 1;
    for (long i = 0; i < devices; i++) {
        char id[32];
        snprintf(id, sizeof(id), "dev-%06ld", i);
        if (em_manager_register_device(mgr, id, NULL, EM_DEVICE_ACTUATOR, NULL, "fleet", &err) !=
            EM_OK) {
            fprintf(stderr, "register: %s\n", err.message);
            return 1;
        }
    }
    em_mqtt_options_t mo;
    em_mqtt_options_init(&mo);
    mo.url = url;
    mo.allow_plain = true;
    mo.client_id_prefix = "w3-mgr-";
    if (em_manager_connect(mgr, &mo, 5000, &err) != EM_OK) {
        fprintf(stderr, "connect: %s\n", err.message);
        return 1;
    }

    double best = 0, sum = 0;
    long lost_total = 0;
    for (long r = 0; r < rounds; r++) {
        atomic_store(&g_received, 0);
        size_t sent = 0, skipped = 0;
        double t0 = now_s();
        em_err_t rc = em_manager_send_group_command(mgr, "fleet", EM_CMD_SLEEP, "{\"duration\":60}",
                                                    &sent, &skipped, &err);
        if (rc != EM_OK) {
            fprintf(stderr, "send: %s (%s)\n", em_strerror(rc), err.message);
            return 1;
        }
        if (em_manager_flush(mgr, 60000, &err) != EM_OK) {
            fprintf(stderr, "flush: %s\n", err.message);
            return 1;
        }
        double acked = now_s() - t0;
        /* The subscriber may still be reading the tail: give it up to 30 s. */
        double deadline = now_s() + 30;
        while (atomic_load(&g_received) < devices && now_s() < deadline) {
            struct timespec ts = {0, 1000000};
            nanosleep(&ts, NULL);
        }
        long got = atomic_load(&g_received);
        double rate = (double)sent / acked;
        printf("round %ld: %zu commands acknowledged in %.3f s (%.0f devices/s); subscriber "
               "received %ld, missed %ld\n",
               r + 1, sent, acked, rate, got, devices - got);
        lost_total += devices - got;
        sum += rate;
        if (rate > best)
            best = rate;
    }
    printf("W3 group fan-out, %ld devices, QoS 1, unsigned: best %.0f devices/s, mean %.0f\n",
           devices, best, sum / (double)rounds);
    printf("{\"workload\":\"W3\",\"figure\":\"unsigned_devices_per_s\",\"value\":%.0f,"
           "\"unit\":\"devices/s\"}\n",
           sum / (double)rounds);
    printf("{\"workload\":\"W3\",\"figure\":\"unsigned_commands_missed\",\"value\":%ld,"
           "\"unit\":\"msg\"}\n",
           lost_total);
    em_manager_free(mgr);
    em_mqtt_free(sub);
    return lost_total == 0 ? 0 : 1;
}
