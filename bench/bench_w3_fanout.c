/*
 * emiot bench - W3, group fan-out through a local mosquitto
 * (docs/PERFORMANCE.md).
 *
 * 10,000 devices in one group; one `sleep {duration:60}` command to the
 * group at QoS 1. The figure is devices per second from the call until the
 * broker has acknowledged every publish (em_manager_send_group_command, then
 * em_manager_flush).
 *
 * A separate subscriber process (forked before any thread exists) confirms
 * that every command arrived: it subscribes to device/+/command at QoS 1 and
 * marks each device whose command it received, so a missing or duplicated
 * command is named, not only counted. It is a measuring instrument, not a
 * client of emiot: a minimal MQTT 3.1.1 reader that wakes once a millisecond,
 * takes whatever the socket holds in one read() and acknowledges all of it in
 * one write(). It makes the broker
 * do exactly the work a QoS 1 subscriber causes (one PUBLISH out, one PUBACK
 * in, per command) while costing the shared machine as little as possible,
 * so the figure measures the manager and the broker rather than the checker.
 *
 * Beside the rate, each round prints the CPU time spent per command by the
 * manager process (getrusage), the subscriber and, when the environment
 * variable EMIOT_BENCH_BROKER_PID names it (scripts/bench.sh does), the
 * broker (/proc/PID/schedstat).
 *
 * usage: bench_w3_fanout URL [devices] [rounds] [window]
 *   URL is the broker, mqtt://HOST:PORT (scripts/bench.sh starts one);
 *   window is the manager's in-flight window (max_inflight; 0, the default,
 *   is the transport's default).
 */
#include <dirent.h>
#include <errno.h>
#include <netdb.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/types.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "emiot/emiot.h"

#define DEVICES_MAX  10000000L
#define ROUNDS_MAX   1000L
#define TOPIC_PREFIX "device/"
#define TOPIC_SUFFIX "/command"
#define ID_PREFIX    "dev-"

/* Shared between the manager process and the subscriber process. */
typedef struct shared {
    atomic_int ready;       /* 1 once subscribed, -1 when the subscriber failed */
    atomic_int round;       /* round in progress, set by the manager process */
    atomic_long received;   /* distinct devices reached in this round */
    atomic_long duplicates; /* a device's command seen twice in one round */
    atomic_long foreign;    /* a PUBLISH that is not one of this run's commands */
    atomic_int seen[];      /* per device: the last round its command arrived in */
} shared_t;

static double now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

static void sleep_ms(long ms)
{
    struct timespec ts = {ms / 1000, (ms % 1000) * 1000000L};
    nanosleep(&ts, NULL);
}

static long parse_count(const char *s, long dflt, long max)
{
    if (s == NULL)
        return dflt;
    char *end;
    errno = 0;
    long v = strtol(s, &end, 10);
    return (errno == 0 && *end == '\0' && v > 0 && v <= max) ? v : -1;
}

/* CPU time of this whole process (every thread), in microseconds. */
static double self_cpu_us(void)
{
    struct rusage ru;
    getrusage(RUSAGE_SELF, &ru);
    return (double)(ru.ru_utime.tv_sec + ru.ru_stime.tv_sec) * 1e6 +
           (double)(ru.ru_utime.tv_usec + ru.ru_stime.tv_usec);
}

/* CPU time of a single-threaded process (the first field of
 * /proc/PID/schedstat, in nanoseconds), in microseconds; -1 if unknown. */
static double pid_cpu_us(long pid)
{
    if (pid <= 0)
        return -1;
    char path[64];
    snprintf(path, sizeof(path), "/proc/%ld/schedstat", pid);
    FILE *f = fopen(path, "r");
    if (f == NULL)
        return -1;
    unsigned long long ns = 0;
    int n = fscanf(f, "%llu", &ns);
    fclose(f);
    return n == 1 ? (double)ns / 1e3 : -1;
}

/* CPU time of each thread of this process (tid, name, microseconds). */
#define THREADS_MAX 16
typedef struct thread_cpu {
    long tid;
    char name[16];
    double us;
} thread_cpu_t;

static size_t threads_cpu(thread_cpu_t *out, size_t max)
{
    DIR *d = opendir("/proc/self/task");
    if (d == NULL)
        return 0;
    size_t n = 0;
    struct dirent *e;
    while ((e = readdir(d)) != NULL && n < max) {
        if (e->d_name[0] < '0' || e->d_name[0] > '9')
            continue;
        char path[64];
        out[n].tid = strtol(e->d_name, NULL, 10);
        snprintf(path, sizeof(path), "/proc/self/task/%ld/comm", out[n].tid);
        FILE *f = fopen(path, "r");
        out[n].name[0] = '\0';
        if (f != NULL) {
            if (fgets(out[n].name, sizeof(out[n].name), f) != NULL)
                out[n].name[strcspn(out[n].name, "\n")] = '\0';
            fclose(f);
        }
        snprintf(path, sizeof(path), "/proc/self/task/%ld/schedstat", out[n].tid);
        f = fopen(path, "r");
        unsigned long long ns = 0;
        if (f != NULL) {
            if (fscanf(f, "%llu", &ns) != 1)
                ns = 0;
            fclose(f);
        }
        out[n].us = (double)ns / 1e3;
        n++;
    }
    closedir(d);
    return n;
}

/* ---------------------------------------------------------------------- */
/* The subscriber process                                                  */

static int write_all(int fd, const unsigned char *p, size_t n)
{
    while (n > 0) {
        ssize_t w = write(fd, p, n);
        if (w < 0 && errno == EINTR)
            continue;
        if (w <= 0)
            return -1;
        p += w;
        n -= (size_t)w;
    }
    return 0;
}

static int read_exact(int fd, unsigned char *p, size_t n)
{
    while (n > 0) {
        ssize_t r = read(fd, p, n);
        if (r < 0 && errno == EINTR)
            continue;
        if (r <= 0)
            return -1;
        p += r;
        n -= (size_t)r;
    }
    return 0;
}

/* mqtt://HOST:PORT -> a connected TCP socket, or -1. */
static int tcp_connect(const char *url)
{
    const char *p = strncmp(url, "mqtt://", 7) == 0 ? url + 7 : NULL;
    const char *colon = p != NULL ? strrchr(p, ':') : NULL;
    if (colon == NULL || colon == p || (size_t)(colon - p) >= 256) {
        fprintf(stderr, "subscriber: the URL must be mqtt://HOST:PORT\n");
        return -1;
    }
    char host[256];
    memcpy(host, p, (size_t)(colon - p));
    host[colon - p] = '\0';
    struct addrinfo hints = {.ai_family = AF_UNSPEC, .ai_socktype = SOCK_STREAM}, *res;
    if (getaddrinfo(host, colon + 1, &hints, &res) != 0) {
        fprintf(stderr, "subscriber: cannot resolve %s\n", url);
        return -1;
    }
    int fd = -1;
    for (struct addrinfo *a = res; a != NULL && fd < 0; a = a->ai_next) {
        fd = socket(a->ai_family, a->ai_socktype | SOCK_CLOEXEC, a->ai_protocol);
        if (fd >= 0 && connect(fd, a->ai_addr, a->ai_addrlen) != 0) {
            close(fd);
            fd = -1;
        }
    }
    freeaddrinfo(res);
    if (fd < 0)
        fprintf(stderr, "subscriber: cannot connect to %s\n", url);
    return fd;
}

/* CONNECT (MQTT 3.1.1, clean session, no keepalive), then SUBSCRIBE to the
 * commands at QoS 1. Returns 0 once the broker granted QoS 1. */
static int mqtt_subscribe(int fd)
{
    char id[32];
    int idlen = snprintf(id, sizeof(id), "w3-sub-%ld", (long)getpid());
    unsigned char b[128];
    size_t n = 0;
    b[n++] = 0x10;
    b[n++] = (unsigned char)(10 + 2 + idlen);
    memcpy(b + n, "\0\4MQTT\4\2\0\0", 10); /* name, level 4, clean session, keepalive 0 */
    n += 10;
    b[n++] = 0;
    b[n++] = (unsigned char)idlen;
    memcpy(b + n, id, (size_t)idlen);
    n += (size_t)idlen;
    unsigned char ack[5];
    if (write_all(fd, b, n) != 0 || read_exact(fd, ack, 4) != 0 || ack[0] != 0x20 || ack[3] != 0) {
        fprintf(stderr, "subscriber: the broker refused the connection\n");
        return -1;
    }
    static const char filter[] = TOPIC_PREFIX "+" TOPIC_SUFFIX;
    size_t flen = sizeof(filter) - 1;
    n = 0;
    b[n++] = 0x82;
    b[n++] = (unsigned char)(2 + 2 + flen + 1);
    b[n++] = 0;
    b[n++] = 1; /* packet id */
    b[n++] = 0;
    b[n++] = (unsigned char)flen;
    memcpy(b + n, filter, flen);
    n += flen;
    b[n++] = 1; /* QoS 1 */
    if (write_all(fd, b, n) != 0 || read_exact(fd, ack, 5) != 0 || ack[0] != 0x90 || ack[4] != 1) {
        fprintf(stderr, "subscriber: the broker refused the subscription\n");
        return -1;
    }
    return 0;
}

/* One PUBLISH: checks that it is a command of this run and marks its device. */
static void on_publish(shared_t *sh, long devices, const unsigned char *topic, size_t tlen,
                       const unsigned char *payload, size_t plen)
{
    static const char want_body[] = "{\"type\":\"sleep\",\"payload\":{\"duration\":60},";
    size_t pre = strlen(TOPIC_PREFIX ID_PREFIX), suf = strlen(TOPIC_SUFFIX);
    long idx = -1;
    if (tlen > pre + suf && tlen - pre - suf <= 9 &&
        memcmp(topic, TOPIC_PREFIX ID_PREFIX, pre) == 0 &&
        memcmp(topic + tlen - suf, TOPIC_SUFFIX, suf) == 0) {
        idx = 0;
        for (size_t i = pre; i < tlen - suf; i++) {
            if (topic[i] < '0' || topic[i] > '9') {
                idx = -1;
                break;
            }
            idx = idx * 10 + (topic[i] - '0');
        }
    }
    if (idx < 0 || idx >= devices || plen < sizeof(want_body) - 1 ||
        memcmp(payload, want_body, sizeof(want_body) - 1) != 0) {
        atomic_fetch_add_explicit(&sh->foreign, 1, memory_order_relaxed);
        return;
    }
    int round = atomic_load_explicit(&sh->round, memory_order_acquire);
    if (atomic_exchange_explicit(&sh->seen[idx], round, memory_order_relaxed) == round)
        atomic_fetch_add_explicit(&sh->duplicates, 1, memory_order_relaxed);
    else
        atomic_fetch_add_explicit(&sh->received, 1, memory_order_release);
}

/* Parses the complete packets in buf[0..len), appends a PUBACK to out for
 * each QoS 1 PUBLISH, and returns how many bytes were consumed (a partial
 * packet stays for the next read); -1 on a malformed packet. */
static long parse_packets(shared_t *sh, long devices, const unsigned char *buf, size_t len,
                          unsigned char *out, size_t *outlen)
{
    size_t p = 0;
    for (;;) {
        if (len - p < 2)
            return (long)p;
        size_t rl = 0, i = 1;
        unsigned mult = 1;
        for (;;) {
            if (p + i >= len)
                return (long)p;
            unsigned char c = buf[p + i++];
            rl += (size_t)(c & 127) * mult;
            if ((c & 128) == 0)
                break;
            mult *= 128;
            if (i > 4)
                return -1;
        }
        if (len - p - i < rl)
            return (long)p;
        const unsigned char *v = buf + p + i;
        unsigned char h = buf[p];
        if ((h & 0xf0) == 0x30) {
            int qos = (h >> 1) & 3;
            if (rl < 2)
                return -1;
            size_t tlen = (size_t)v[0] << 8 | v[1];
            size_t hdr = 2 + tlen + (qos > 0 ? 2 : 0);
            if (qos > 1 || hdr > rl)
                return -1;
            on_publish(sh, devices, v + 2, tlen, v + hdr, rl - hdr);
            if (qos == 1) {
                out[(*outlen)++] = 0x40;
                out[(*outlen)++] = 2;
                out[(*outlen)++] = v[2 + tlen];
                out[(*outlen)++] = v[3 + tlen];
            }
        }
        p += i + rl;
    }
}

static int subscriber_main(const char *url, shared_t *sh, long devices)
{
    prctl(PR_SET_PDEATHSIG, SIGKILL);
    int fd = tcp_connect(url);
    if (fd < 0 || mqtt_subscribe(fd) != 0) {
        atomic_store(&sh->ready, -1);
        return 1;
    }
    atomic_store(&sh->ready, 1);
    /* Each PUBLISH (at least 2 bytes) gets a 4-byte PUBACK: out is twice
     * the size of in. */
    enum { IN_MAX = 256 * 1024 };
    unsigned char *in = malloc(IN_MAX), *out = malloc(2 * IN_MAX);
    if (in == NULL || out == NULL)
        return 1;
    size_t have = 0;
    for (;;) {
        ssize_t r = read(fd, in + have, IN_MAX - have);
        if (r < 0 && errno == EINTR)
            continue;
        if (r <= 0)
            return 0; /* the broker or the manager process went away */
        have += (size_t)r;
        size_t outlen = 0;
        long used = parse_packets(sh, devices, in, have, out, &outlen);
        if (used < 0 || (used == 0 && have == IN_MAX)) {
            fprintf(stderr, "subscriber: malformed packet from the broker\n");
            return 1;
        }
        memmove(in, in + used, have - (size_t)used);
        have -= (size_t)used;
        if (outlen > 0 && write_all(fd, out, outlen) != 0)
            return 0;
        /* Read in batches: one wake-up, read() and write() per millisecond
         * rather than per command. The broker's in-flight window towards
         * this subscriber is unlimited (broker-conf.sh), so the pause never
         * holds back the stream; it only delays the confirmation. */
        if (r < IN_MAX / 4)
            sleep_ms(1);
    }
}

/* ---------------------------------------------------------------------- */
/* The manager process                                                     */

typedef struct round_result {
    double rate;
    double mgr_us, sub_us, broker_us; /* CPU per command */
} round_result_t;

static void print_json(const char *figure, double value, const char *unit, int decimals)
{
    printf("{\"workload\":\"W3\",\"figure\":\"%s\",\"value\":%.*f,\"unit\":\"%s\"}\n", figure,
           decimals, value, unit);
}

int main(int argc, char **argv)
{
    if (argc < 2) {
        fprintf(stderr, "usage: %s URL [devices] [rounds] [window]\n", argv[0]);
        return 2;
    }
    const char *url = argv[1];
    long devices = parse_count(argc > 2 ? argv[2] : NULL, 10000, DEVICES_MAX);
    long rounds = parse_count(argc > 3 ? argv[3] : NULL, 3, ROUNDS_MAX);
    long window = argc > 4 && strcmp(argv[4], "0") != 0 ? parse_count(argv[4], 0, 65535) : 0;
    if (devices < 0 || rounds < 0 || window < 0) {
        fprintf(stderr, "devices must be 1..%ld, rounds 1..%ld, window 0..65535\n", DEVICES_MAX,
                ROUNDS_MAX);
        return 2;
    }
    const char *bp = getenv("EMIOT_BENCH_BROKER_PID");
    long broker_pid = bp != NULL ? strtol(bp, NULL, 10) : 0;

    /* The subscriber is forked before any thread exists. */
    size_t shsize = sizeof(shared_t) + (size_t)devices * sizeof(atomic_int);
    shared_t *sh = mmap(NULL, shsize, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
    if (sh == MAP_FAILED) {
        perror("mmap");
        return 1;
    }
    fflush(NULL);
    pid_t sub = fork();
    if (sub < 0) {
        perror("fork");
        return 1;
    }
    if (sub == 0)
        _exit(subscriber_main(url, sh, devices));
    for (int i = 0; i < 10000 && atomic_load(&sh->ready) == 0; i++)
        sleep_ms(1);
    if (atomic_load(&sh->ready) != 1) {
        fprintf(stderr, "the subscriber did not start\n");
        kill(sub, SIGKILL);
        waitpid(sub, NULL, 0);
        return 1;
    }

    em_log_set_level(EM_LOG_WARN);
    em_error_t err;
    em_manager_options_t o;
    em_manager_options_init(&o);
    o.capacity_hint = (size_t)devices;
    em_manager_t *mgr = em_manager_new(&o, &err);
    if (mgr == NULL)
        return 1;
    for (long i = 0; i < devices; i++) {
        char id[32];
        snprintf(id, sizeof(id), ID_PREFIX "%06ld", i);
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
    mo.max_inflight = (unsigned)window;
    if (em_manager_connect(mgr, &mo, 5000, &err) != EM_OK) {
        fprintf(stderr, "connect: %s\n", err.message);
        return 1;
    }

    round_result_t best = {0}, sum = {0};
    long missed_total = 0, dup_total = 0;
    size_t sent_total = 0;
    thread_cpu_t t_before[THREADS_MAX], t_after[THREADS_MAX];
    size_t nt_before = threads_cpu(t_before, THREADS_MAX);
    for (long r = 0; r < rounds; r++) {
        atomic_store(&sh->received, 0);
        atomic_store(&sh->round, (int)r + 1);
        double c_mgr = self_cpu_us(), c_sub = pid_cpu_us(sub), c_brk = pid_cpu_us(broker_pid);
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
        while (atomic_load(&sh->received) < devices && now_s() < deadline)
            sleep_ms(1);
        round_result_t res = {.rate = (double)sent / acked};
        double n = sent > 0 ? (double)sent : 1;
        res.mgr_us = (self_cpu_us() - c_mgr) / n;
        res.sub_us = c_sub >= 0 ? (pid_cpu_us(sub) - c_sub) / n : -1;
        res.broker_us = c_brk >= 0 ? (pid_cpu_us(broker_pid) - c_brk) / n : -1;
        long missed = 0;
        for (long i = 0; i < devices; i++)
            missed += atomic_load_explicit(&sh->seen[i], memory_order_relaxed) != (int)r + 1;
        long dups = atomic_exchange(&sh->duplicates, 0);
        printf("round %ld: %zu commands acknowledged in %.3f s (%.0f devices/s); subscriber "
               "received %ld, missed %ld, duplicates %ld; CPU per command: manager %.1f us, "
               "subscriber %.1f us, broker %.1f us\n",
               r + 1, sent, acked, res.rate, atomic_load(&sh->received), missed, dups, res.mgr_us,
               res.sub_us, res.broker_us);
        if (missed > 0) {
            for (long i = 0, shown = 0; i < devices && shown < 5; i++) {
                if (atomic_load(&sh->seen[i]) != (int)r + 1) {
                    printf("  missed: " ID_PREFIX "%06ld\n", i);
                    shown++;
                }
            }
        }
        sent_total += sent;
        missed_total += missed;
        dup_total += dups;
        sum.rate += res.rate;
        sum.mgr_us += res.mgr_us;
        sum.sub_us += res.sub_us;
        sum.broker_us += res.broker_us;
        if (res.rate > best.rate)
            best = res;
    }
    /* Where the manager process spent its CPU time, thread by thread. */
    size_t nt_after = threads_cpu(t_after, THREADS_MAX);
    printf("manager CPU per command by thread:");
    for (size_t i = 0; i < nt_after; i++) {
        double before = 0;
        for (size_t j = 0; j < nt_before; j++)
            before = t_before[j].tid == t_after[i].tid ? t_before[j].us : before;
        printf("%s %s %.1f us", i > 0 ? "," : "",
               t_after[i].tid == (long)getpid() ? "caller" : t_after[i].name,
               (t_after[i].us - before) / (double)(sent_total > 0 ? sent_total : 1));
    }
    printf("\n");
    long foreign = atomic_load(&sh->foreign);
    double mean = sum.rate / (double)rounds;
    printf("W3 group fan-out, %ld devices, QoS 1, unsigned: best %.0f devices/s, mean %.0f; CPU "
           "per command (mean): manager %.1f us, subscriber %.1f us, broker %.1f us\n",
           devices, best.rate, mean, sum.mgr_us / (double)rounds, sum.sub_us / (double)rounds,
           sum.broker_us / (double)rounds);
    if (foreign > 0)
        printf("the subscriber saw %ld messages that were not this run's commands\n", foreign);
    print_json("unsigned_devices_per_s", best.rate, "devices/s", 0);
    print_json("unsigned_devices_per_s_mean", mean, "devices/s", 0);
    print_json("unsigned_commands_missed", (double)missed_total, "msg", 0);
    print_json("unsigned_commands_duplicated", (double)dup_total, "msg", 0);
    print_json("manager_cpu_per_command", sum.mgr_us / (double)rounds, "us", 1);
    if (broker_pid > 0)
        print_json("broker_cpu_per_command", sum.broker_us / (double)rounds, "us", 1);
    em_manager_free(mgr);
    kill(sub, SIGTERM);
    waitpid(sub, NULL, 0);
    munmap(sh, shsize);
    return missed_total == 0 && foreign == 0 ? 0 : 1;
}
