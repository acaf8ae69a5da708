/*
 * emiot bench - bench_w4_memory.c: W4, memory per registered device.
 *
 * Registers N devices (each then given one status: battery, power mode,
 * connection, firmware version, signal; no errors or additionalInfo) and
 * reports the growth of the resident set per device, the registry's own
 * estimate, and the time registration took.
 *
 *   bench_w4_memory            runs N = 100000 and N = 1000000
 *   bench_w4_memory N [N...]   runs the given sizes
 *
 * Each size runs in its own child process so that one run's freed memory
 * does not hide the next run's growth.
 */
#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "emiot/registry.h"

#define N_MAX 50000000UL

static size_t rss_bytes(void)
{
    FILE *f = fopen("/proc/self/statm", "r");
    if (f == NULL)
        return 0;
    unsigned long size = 0, resident = 0;
    int n = fscanf(f, "%lu %lu", &size, &resident);
    fclose(f);
    if (n != 2)
        return 0;
    return (size_t)resident * (size_t)sysconf(_SC_PAGESIZE);
}

static double now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

static void figure(const char *name, size_t n, double value, const char *unit)
{
    printf("{\"workload\":\"W4\",\"figure\":\"%s_%zu\",\"value\":%.0f,\"unit\":\"%s\"}\n", name, n,
           value, unit);
}

static int run(size_t n)
{
    size_t rss0 = rss_bytes();
    double t0 = now_s();
    em_registry_t *reg = em_registry_new(0, n);
    if (reg == NULL) {
        fprintf(stderr, "em_registry_new failed\n");
        return 1;
    }
    char id[32];
    for (size_t i = 0; i < n; i++) {
        snprintf(id, sizeof(id), "sensor-%08zu", i);
        em_device_t *dev = NULL;
        em_error_t err;
        em_err_t rc =
            em_registry_add(reg, id, NULL, EM_DEVICE_SENSOR, NULL, 1700000000000LL, &dev, &err);
        if (rc != EM_OK) {
            fprintf(stderr, "add %s: %s: %s\n", id, em_err_name(rc), err.message);
            em_registry_free(reg);
            return 1;
        }
        em_status_t st;
        memset(&st, 0, sizeof(st));
        st.has = EM_STATUS_HAS_BATTERY | EM_STATUS_HAS_POWER_MODE | EM_STATUS_HAS_CONNECTION |
                 EM_STATUS_HAS_FIRMWARE | EM_STATUS_HAS_SIGNAL | EM_STATUS_HAS_LAST_SEEN;
        st.battery_level = (uint8_t)(i % 101);
        st.power_mode = EM_POWER_NORMAL;
        st.connection = EM_CONN_ONLINE;
        st.signal_strength = -67;
        snprintf(st.firmware_version, sizeof(st.firmware_version), "1.2.3");
        st.last_seen_ms = 1700000000000LL;
        em_registry_set_status(reg, dev, &st);
    }
    double t1 = now_s();
    size_t rss1 = rss_bytes();
    size_t estimate = em_registry_memory(reg);

    double per_device = rss1 > rss0 ? (double)(rss1 - rss0) / (double)n : 0.0;
    double est_per_device = (double)estimate / (double)n;
    double secs = t1 - t0;
    printf("W4 memory: %zu devices, each with one status\n", n);
    printf("  RSS %.1f MiB -> %.1f MiB: %.1f bytes per device\n", (double)rss0 / 1048576.0,
           (double)rss1 / 1048576.0, per_device);
    printf("  registry estimate %.1f MiB: %.1f bytes per device\n", (double)estimate / 1048576.0,
           est_per_device);
    printf("  registration took %.3f s (%.0f devices/s)\n", secs, (double)n / secs);
    figure("bytes_per_device", n, per_device, "B");
    figure("estimated_bytes_per_device", n, est_per_device, "B");
    figure("register_ms", n, secs * 1000.0, "ms");
    figure("register_devices_per_s", n, (double)n / secs, "dev/s");
    fflush(stdout);
    em_registry_free(reg);
    return 0;
}

static int parse_size(const char *s, size_t *out)
{
    char *end = NULL;
    errno = 0;
    unsigned long v = strtoul(s, &end, 10);
    if (errno != 0 || end == s || *end != '\0' || v == 0 || v > N_MAX)
        return -1;
    *out = (size_t)v;
    return 0;
}

static int run_in_child(size_t n)
{
    fflush(stdout);
    pid_t pid = fork();
    if (pid < 0) {
        perror("fork");
        return 1;
    }
    if (pid == 0)
        _exit(run(n));
    int status = 0;
    while (waitpid(pid, &status, 0) < 0) {
        if (errno != EINTR) {
            perror("waitpid");
            return 1;
        }
    }
    return WIFEXITED(status) ? WEXITSTATUS(status) : 1;
}

int main(int argc, char **argv)
{
    size_t sizes[16];
    size_t count = 0;
    if (argc < 2) {
        sizes[count++] = 100000;
        sizes[count++] = 1000000;
    } else {
        for (int i = 1; i < argc && count < sizeof(sizes) / sizeof(sizes[0]); i++) {
            if (parse_size(argv[i], &sizes[count]) != 0) {
                fprintf(stderr, "usage: %s [devices ...]  (1..%lu each)\n", argv[0], N_MAX);
                return 2;
            }
            count++;
        }
    }
    int rc = 0;
    for (size_t i = 0; i < count; i++)
        rc |= run_in_child(sizes[i]);
    return rc;
}
