/*
 * emiot example - demo.c: a small manager, the program `make run` starts.
 *
 * It registers N simulated devices (sim-001 ... as `emiot-agent --simulate N`
 * names them) in one group, connects over TLS, shows their status as it
 * arrives, prints the group's statistics, sends the group a sleep command and
 * then a wake command, shows every device's answer, and shows the per-device
 * rate limit refusing a burst of commands. Ctrl-C stops it.
 *
 * usage: example_demo --url mqtts://localhost:PORT --ca ca.crt [--cert manager.crt
 *        --key manager.key] [--devices N] [--duration SECONDS]
 */
#include <getopt.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "emiot/emiot.h"

#define GROUP "demo fleet"

static volatile sig_atomic_t g_stop;

static void on_signal(int sig)
{
    (void)sig;
    g_stop = 1;
}

/* Every event the demo shows. Callbacks run on the manager's network thread
 * with its lock held: print and return, never block. */
static void on_event(em_manager_t *mgr, const em_event_t *ev, void *ud)
{
    (void)mgr;
    (void)ud;
    switch (ev->type) {
    case EM_EVENT_CONNECTED:
        printf("[manager] connected to the broker\n");
        break;
    case EM_EVENT_DISCONNECTED:
        printf("[manager] disconnected%s%s\n", ev->error ? ": " : "",
               ev->error ? ev->error->message : "");
        break;
    case EM_EVENT_RECONNECTING:
        printf("[manager] reconnecting...\n");
        break;
    case EM_EVENT_STATUS: {
        const em_status_t *s = ev->status;
        printf("[status]  %-8s battery %3u%%  %-9s  %-7s  fw %s  signal %d dBm\n", ev->device_id,
               s->battery_level,
               em_power_mode_name(s->power_mode) ? em_power_mode_name(s->power_mode) : "-",
               em_conn_status_name(s->connection) ? em_conn_status_name(s->connection) : "-",
               s->firmware_version[0] ? s->firmware_version : "-", s->signal_strength);
        break;
    }
    case EM_EVENT_TELEMETRY:
        printf("[energy]  %-8s %.1f W, %.1f Wh (+%.3f Wh)\n", ev->device_id, ev->telemetry->power_w,
               ev->telemetry->energy_wh, ev->energy_delta_wh);
        break;
    case EM_EVENT_COMMAND_RESPONSE:
        printf("[answer]  %-8s %s %s: %s\n", ev->device_id, ev->response->request_id,
               ev->response->success ? "ok" : "FAILED", ev->response->message);
        break;
    case EM_EVENT_DEVICE_OFFLINE:
        printf("[offline] %s\n", ev->device_id);
        break;
    case EM_EVENT_DEVICE_ONLINE:
        printf("[online]  %s\n", ev->device_id);
        break;
    case EM_EVENT_ERROR:
        printf("[error]   %s %s: %s\n", ev->device_id ? ev->device_id : "",
               em_err_name(ev->error->code), ev->error->message);
        break;
    default:
        break;
    }
    fflush(stdout);
}

/* Sleeps up to seconds, returning early on Ctrl-C. */
static void pause_s(int seconds)
{
    for (int i = 0; i < seconds * 10 && !g_stop; i++) {
        struct timespec ts = {0, 100000000};
        nanosleep(&ts, NULL);
    }
}

static void show_group(em_manager_t *mgr)
{
    em_group_stats_t gs;
    em_error_t err;
    if (em_manager_group_stats(mgr, GROUP, &gs, &err) != EM_OK) {
        printf("group stats: %s\n", err.message);
        return;
    }
    printf("[group]   \"%s\": %zu devices, %zu online, %zu offline, average battery %.1f%%, "
           "normal %zu, low_power %zu, sleep %zu, critical %zu\n",
           GROUP, gs.total, gs.online, gs.offline, gs.average_battery,
           gs.power_modes[EM_POWER_NORMAL], gs.power_modes[EM_POWER_LOW_POWER],
           gs.power_modes[EM_POWER_SLEEP], gs.power_modes[EM_POWER_CRITICAL]);
}

static void usage(FILE *f, const char *prog)
{
    fprintf(
        f,
        "usage: %s --url URL [options]\n"
        "  --url URL        broker, mqtts://host:port (or mqtt:// on loopback with --allow-plain)\n"
        "  --ca FILE        CA certificate that signed the broker's certificate\n"
        "  --cert FILE      manager certificate (mTLS)\n"
        "  --key FILE       manager private key (mTLS)\n"
        "  --allow-plain    permit mqtt:// to a loopback broker\n"
        "  --devices N      simulated devices to register (default 5)\n"
        "  --duration S     stop after S seconds (default 0: run until Ctrl-C)\n"
        "  --help           this text\n",
        prog);
}

int main(int argc, char **argv)
{
    em_mqtt_options_t mo;
    em_mqtt_options_init(&mo);
    mo.client_id_prefix = "emiot-demo-";
    long devices = 5, duration = 0;
    static const struct option opts[] = {{"url", required_argument, NULL, 'u'},
                                         {"ca", required_argument, NULL, 'c'},
                                         {"cert", required_argument, NULL, 'C'},
                                         {"key", required_argument, NULL, 'k'},
                                         {"allow-plain", no_argument, NULL, 'p'},
                                         {"devices", required_argument, NULL, 'n'},
                                         {"duration", required_argument, NULL, 'd'},
                                         {"help", no_argument, NULL, 'h'},
                                         {NULL, 0, NULL, 0}};
    int c;
    while ((c = getopt_long(argc, argv, "h", opts, NULL)) != -1) {
        char *end = NULL;
        switch (c) {
        case 'u':
            mo.url = optarg;
            break;
        case 'c':
            mo.ca_file = optarg;
            break;
        case 'C':
            mo.cert_file = optarg;
            break;
        case 'k':
            mo.key_file = optarg;
            break;
        case 'p':
            mo.allow_plain = true;
            break;
        case 'n':
            devices = strtol(optarg, &end, 10);
            if (*end != '\0' || devices < 1 || devices > 999) {
                fprintf(stderr, "--devices: 1 to 999\n");
                return 2;
            }
            break;
        case 'd':
            duration = strtol(optarg, &end, 10);
            if (*end != '\0' || duration < 0) {
                fprintf(stderr, "--duration: a number of seconds\n");
                return 2;
            }
            break;
        case 'h':
            usage(stdout, argv[0]);
            return 0;
        default:
            usage(stderr, argv[0]);
            return 2;
        }
    }
    if (mo.url == NULL) {
        usage(stderr, argv[0]);
        return 2;
    }
    signal(SIGINT, on_signal);
    signal(SIGTERM, on_signal);
    em_log_set_level(EM_LOG_WARN);

    em_error_t err;
    em_manager_options_t o;
    em_manager_options_init(&o);
    o.status_interval_s = 10; /* the agent reports every 10 s by default */
    em_manager_t *mgr = em_manager_new(&o, &err);
    if (mgr == NULL) {
        fprintf(stderr, "manager: %s\n", err.message);
        return 1;
    }
    em_manager_on(mgr, EM_EVENT_MASK_ALL & ~EM_EVENT_MASK(EM_EVENT_COMMAND_SENT), on_event, NULL);

    for (long i = 1; i <= devices; i++) {
        char id[16], name[32];
        snprintf(id, sizeof(id), "sim-%03ld", i);
        snprintf(name, sizeof(name), "Simulated device %ld", i);
        if (em_manager_register_device(mgr, id, name, EM_DEVICE_SENSOR, NULL, GROUP, &err) !=
            EM_OK) {
            fprintf(stderr, "register %s: %s\n", id, err.message);
            return 1;
        }
    }
    printf("[manager] registered %ld devices in group \"%s\"\n", devices, GROUP);

    if (em_manager_connect(mgr, &mo, 10000, &err) != EM_OK) {
        fprintf(stderr, "connect: %s: %s\n", em_err_name(err.code), err.message);
        em_manager_free(mgr);
        return 1;
    }

    pause_s(4);
    show_group(mgr);

    if (!g_stop) {
        size_t sent = 0, skipped = 0;
        printf("[manager] sending sleep {duration:30} to group \"%s\"\n", GROUP);
        em_err_t rc = em_manager_send_group_command(mgr, GROUP, EM_CMD_SLEEP, "{\"duration\":30}",
                                                    &sent, &skipped, &err);
        printf("[manager] sent to %zu devices (%zu skipped): %s\n", sent, skipped,
               rc == EM_OK ? "ok" : err.message);
        em_manager_flush(mgr, 5000, NULL);
    }
    pause_s(3);
    show_group(mgr);

    if (!g_stop) {
        printf("[manager] waking group \"%s\"\n", GROUP);
        if (em_manager_wake_group(mgr, GROUP, &err) != EM_OK)
            printf("[manager] wake: %s\n", err.message);
    }
    pause_s(3);

    if (!g_stop) {
        /* The default limit is 10 commands per device per minute: the burst
         * below is cut off after the remaining allowance (2 were used). */
        printf("[manager] a burst of get_status commands to sim-001 (rate limit 10/min)\n");
        for (int i = 0; i < 10; i++) {
            em_err_t rc =
                em_manager_send_command(mgr, "sim-001", EM_CMD_GET_STATUS, NULL, NULL, &err);
            if (rc != EM_OK) {
                printf("[manager] command %d refused: %s (%s)\n", i + 1, em_err_name(rc),
                       err.message);
                break;
            }
        }
        em_error_t bad;
        em_err_t rc = em_manager_send_command(mgr, "sim-002", EM_CMD_RESET, "{}", NULL, &bad);
        printf("[manager] reset without confirmation refused before sending: %s (%s: %s)\n",
               em_err_name(rc), bad.field, bad.message);
    }

    time_t start = time(NULL);
    while (!g_stop && (duration == 0 || time(NULL) - start < duration)) {
        pause_s(10);
        if (!g_stop)
            show_group(mgr);
    }
    em_manager_stats_t st;
    em_manager_stats(mgr, &st);
    printf(
        "[manager] %llu messages, %llu status, %llu telemetry, %llu answers, %llu commands sent, "
        "%llu rejected\n",
        (unsigned long long)st.messages_received, (unsigned long long)st.status_accepted,
        (unsigned long long)st.telemetry_accepted, (unsigned long long)st.responses_received,
        (unsigned long long)st.commands_sent, (unsigned long long)st.rejected);
    em_manager_free(mgr);
    return 0;
}
