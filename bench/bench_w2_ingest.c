/*
 * emiot bench - W2, ingest through the broker into emiotd with SQLite on
 * (docs/PERFORMANCE.md).
 *
 * A publisher (this process: separate from the broker and from emiotd) sends
 * `messages` status messages like DESIGN.md's example, batteryLevel varying,
 * to P<id>/status with the ids w2-00000.. taken round-robin, at QoS 0 or 1.
 * Each round has two runs, one after the other:
 *
 *  - null: the same messages under the prefix "devnul/" (as long as
 *    "device/", so the broker does the same work per message), which emiotd
 *    does not subscribe to; a subscriber that does nothing (forked before the
 *    first round) takes them at QoS 1, as emiotd's manager subscribes. The
 *    figure is messages/s from the first publish until it has counted all.
 *  - emiotd: the messages under "device/"; the figure is messages/s from the
 *    first publish until emiotd's store has committed them all, read from its
 *    metrics listener (a counter of committed store records, by default
 *    emiot_store_committed_total; EMIOT_BENCH_STORED_METRIC names another).
 *    Stored < published means lost.
 *
 * A run that makes no progress for 15 s ends there and counts the rest as
 * lost. The exit status is 1 when a message was lost at QoS 1 (at QoS 0 the
 * loss is reported, as MQTT allows it) or the null subscriber missed any.
 *
 * Beside the rates it prints the CPU time per message of the broker
 * (EMIOT_BENCH_BROKER_PID) and of emiotd (EMIOT_BENCH_DAEMON_PID), emiotd's
 * by thread: where the time goes.
 *
 * The publisher and the null subscriber are minimal MQTT 3.1.1 clients over a
 * plain socket or TLS (OpenSSL): measuring instruments that cost the shared
 * 2-core machine as little as possible (the publisher writes many packets per
 * write() and keeps up to WINDOW QoS 1 publishes in flight; the subscriber
 * reads in batches and acknowledges a batch with one write()).
 *
 * usage: bench_w2_ingest MQTT_URL METRICS_URL|- [messages] [devices] [qos] [rounds]
 *   MQTT_URL     mqtt://HOST:PORT, or mqtts://HOST:PORT (TLS 1.3 when the
 *                broker offers it; the broker's certificate is verified against
 *                the CA file EMIOT_BENCH_CA, or the system store, and HOST)
 *   METRICS_URL  http://HOST:PORT of emiotd's metrics listener; "-": null
 *                runs only
 *   defaults: 200000 messages, 1000 devices, QoS 1, 3 rounds
 */
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/types.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <openssl/err.h>
#include <openssl/ssl.h>

#define MESSAGES_MAX   100000000L
#define DEVICES_MAX    99999L
#define ROUNDS_MAX     100L
#define WINDOW         1000 /* QoS 1 publishes in flight */
#define OUT_MAX        (64 * 1024)
#define PACKET_MAX     512 /* one encoded PUBLISH is well under this */
#define IN_MAX         (256 * 1024)
#define STALL_S        15.0 /* no progress for this long ends a run */
#define POLL_MS        20   /* metrics poll interval */
#define METRICS_MAX    (1024 * 1024)
#define DEFAULT_METRIC "emiot_store_committed_total"
#define ID_FORMAT      "w2-%05ld"
#define PREFIX_DAEMON  "device/"
#define PREFIX_NULL    "devnul/"

/* Shared between the publisher (parent) and the null subscriber (child). */
typedef struct shared {
    atomic_int ready;     /* 1 once subscribed, -1 when the subscriber failed */
    atomic_long received; /* PUBLISHes under PREFIX_NULL counted so far */
    atomic_long foreign;  /* PUBLISHes under another topic */
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

static long parse_count(const char *s, long dflt, long min, long max)
{
    if (s == NULL)
        return dflt;
    char *end;
    errno = 0;
    long v = strtol(s, &end, 10);
    return (errno == 0 && end != s && *end == '\0' && v >= min && v <= max) ? v : -1;
}

/* ---------------------------------------------------------------------- */
/* CPU accounting                                                          */

/* The first field of a schedstat file (CPU time in ns), in us; -1 if none. */
static double schedstat_us(const char *path)
{
    FILE *f = fopen(path, "r");
    if (f == NULL)
        return -1;
    unsigned long long ns = 0;
    int n = fscanf(f, "%llu", &ns);
    fclose(f);
    return n == 1 ? (double)ns / 1e3 : -1;
}

#define THREADS_MAX 64
typedef struct thread_cpu {
    long tid;
    char name[16];
    double us;
} thread_cpu_t;

/* CPU time of every thread of process pid; returns the count (0 if none). */
static size_t threads_cpu(long pid, thread_cpu_t *out, size_t max)
{
    if (pid <= 0)
        return 0;
    char dir[64];
    snprintf(dir, sizeof(dir), "/proc/%ld/task", pid);
    DIR *d = opendir(dir);
    if (d == NULL)
        return 0;
    size_t n = 0;
    struct dirent *e;
    while ((e = readdir(d)) != NULL && n < max) {
        if (e->d_name[0] < '0' || e->d_name[0] > '9')
            continue;
        char path[128];
        out[n].tid = strtol(e->d_name, NULL, 10);
        snprintf(path, sizeof(path), "%s/%ld/comm", dir, out[n].tid);
        out[n].name[0] = '\0';
        FILE *f = fopen(path, "r");
        if (f != NULL) {
            if (fgets(out[n].name, sizeof(out[n].name), f) != NULL)
                out[n].name[strcspn(out[n].name, "\n")] = '\0';
            fclose(f);
        }
        snprintf(path, sizeof(path), "%s/%ld/schedstat", dir, out[n].tid);
        double us = schedstat_us(path);
        out[n].us = us > 0 ? us : 0;
        n++;
    }
    closedir(d);
    return n;
}

static double threads_total(const thread_cpu_t *t, size_t n)
{
    double s = 0;
    for (size_t i = 0; i < n; i++)
        s += t[i].us;
    return s;
}

/* Per-thread CPU time of emiotd summed over the emiotd runs. */
typedef struct thread_acc {
    thread_cpu_t t[THREADS_MAX];
    size_t n;
} thread_acc_t;

static void thread_acc_add(thread_acc_t *acc, const thread_cpu_t *before, size_t nb,
                           const thread_cpu_t *after, size_t na)
{
    for (size_t i = 0; i < na; i++) {
        double b = 0;
        for (size_t j = 0; j < nb; j++)
            b = before[j].tid == after[i].tid ? before[j].us : b;
        size_t k = 0;
        while (k < acc->n && acc->t[k].tid != after[i].tid)
            k++;
        if (k == acc->n) {
            if (acc->n == THREADS_MAX)
                continue;
            acc->t[k] = after[i];
            acc->t[k].us = 0;
            acc->n++;
        }
        acc->t[k].us += after[i].us - b;
    }
}

/* ---------------------------------------------------------------------- */
/* Sockets                                                                 */

/* A connection to the broker: a non-blocking socket, with TLS or without. */
typedef struct conn {
    int fd;
    SSL *ssl; /* NULL: plain */
} conn_t;

#define IO_AGAIN (-2)

static void conn_wait(const conn_t *c, short events)
{
    struct pollfd p = {c->fd, events, 0};
    while (poll(&p, 1, -1) < 0 && errno == EINTR) {
    }
}

/* One read: > 0 bytes, 0 end of stream, -1 error, IO_AGAIN nothing there
 * (only when !block). */
static ssize_t conn_read(const conn_t *c, void *buf, size_t n, bool block)
{
    for (;;) {
        if (c->ssl == NULL) {
            ssize_t r = read(c->fd, buf, n);
            if (r >= 0)
                return r;
            if (errno == EINTR)
                continue;
            if (errno != EAGAIN && errno != EWOULDBLOCK)
                return -1;
            if (!block)
                return IO_AGAIN;
            conn_wait(c, POLLIN);
            continue;
        }
        int r = SSL_read(c->ssl, buf, n > INT_MAX ? INT_MAX : (int)n);
        if (r > 0)
            return r;
        int e = SSL_get_error(c->ssl, r);
        if (e == SSL_ERROR_ZERO_RETURN)
            return 0;
        if (e != SSL_ERROR_WANT_READ && e != SSL_ERROR_WANT_WRITE)
            return -1;
        if (!block)
            return IO_AGAIN;
        conn_wait(c, e == SSL_ERROR_WANT_READ ? POLLIN : POLLOUT);
    }
}

static int write_all(const conn_t *c, const unsigned char *p, size_t n)
{
    while (n > 0) {
        ssize_t w;
        if (c->ssl == NULL) {
            w = write(c->fd, p, n);
            if (w < 0 && errno == EINTR)
                continue;
            if (w < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) {
                conn_wait(c, POLLOUT);
                continue;
            }
        } else {
            /* SSL_MODE_ENABLE_PARTIAL_WRITE: each call may take part. */
            int r = SSL_write(c->ssl, p, n > INT_MAX ? INT_MAX : (int)n);
            if (r <= 0) {
                int e = SSL_get_error(c->ssl, r);
                if (e != SSL_ERROR_WANT_READ && e != SSL_ERROR_WANT_WRITE)
                    return -1;
                conn_wait(c, e == SSL_ERROR_WANT_READ ? POLLIN : POLLOUT);
                continue;
            }
            w = r;
        }
        if (w <= 0)
            return -1;
        p += w;
        n -= (size_t)w;
    }
    return 0;
}

static int read_exact(const conn_t *c, unsigned char *p, size_t n)
{
    while (n > 0) {
        ssize_t r = conn_read(c, p, n, true);
        if (r <= 0)
            return -1;
        p += r;
        n -= (size_t)r;
    }
    return 0;
}

static void conn_close(conn_t *c)
{
    if (c->ssl != NULL) {
        SSL_free(c->ssl);
        c->ssl = NULL;
    }
    if (c->fd >= 0)
        close(c->fd);
    c->fd = -1;
}

/* SCHEME://HOST:PORT[/...] -> a connected TCP socket, or -1. */
static int tcp_connect(const char *url, const char *scheme)
{
    size_t sl = strlen(scheme);
    const char *p = strncmp(url, scheme, sl) == 0 ? url + sl : NULL;
    const char *end = p != NULL ? p + strcspn(p, "/") : NULL;
    const char *colon = p != NULL ? memrchr(p, ':', (size_t)(end - p)) : NULL;
    if (colon == NULL || colon == p || (size_t)(colon - p) >= 256 || end - colon - 1 <= 0 ||
        end - colon - 1 > 5) {
        fprintf(stderr, "the URL must be %sHOST:PORT: %s\n", scheme, url);
        return -1;
    }
    char host[256], port[8];
    memcpy(host, p, (size_t)(colon - p));
    host[colon - p] = '\0';
    memcpy(port, colon + 1, (size_t)(end - colon - 1));
    port[end - colon - 1] = '\0';
    struct addrinfo hints = {.ai_family = AF_UNSPEC, .ai_socktype = SOCK_STREAM}, *res;
    if (getaddrinfo(host, port, &hints, &res) != 0) {
        fprintf(stderr, "cannot resolve %s\n", url);
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
    return fd;
}

/* The TLS context of the instruments (mqtts://): TLS 1.2 at least, the
 * broker's certificate verified against EMIOT_BENCH_CA (or the system
 * store). */
static SSL_CTX *tls_ctx(void)
{
    SSL_CTX *ctx = SSL_CTX_new(TLS_client_method());
    if (ctx == NULL)
        return NULL;
    SSL_CTX_set_min_proto_version(ctx, TLS1_2_VERSION);
    SSL_CTX_set_verify(ctx, SSL_VERIFY_PEER, NULL);
    SSL_CTX_set_mode(ctx, SSL_MODE_ENABLE_PARTIAL_WRITE | SSL_MODE_ACCEPT_MOVING_WRITE_BUFFER);
    /* One read() takes many records, as a client that reads in bulk would. */
    SSL_CTX_set_read_ahead(ctx, 1);
    const char *ca = getenv("EMIOT_BENCH_CA");
    int ok = ca != NULL && *ca != '\0' ? SSL_CTX_load_verify_locations(ctx, ca, NULL)
                                       : SSL_CTX_set_default_verify_paths(ctx);
    if (ok != 1) {
        fprintf(stderr, "cannot load the CA %s\n", ca != NULL ? ca : "(system store)");
        SSL_CTX_free(ctx);
        return NULL;
    }
    return ctx;
}

/* mqtt://HOST:PORT or mqtts://HOST:PORT -> a connection (non-blocking
 * socket, TLS handshake done), or fd -1. */
static conn_t mqtt_open(const char *url)
{
    conn_t c = {-1, NULL};
    bool tls = strncmp(url, "mqtts://", 8) == 0;
    c.fd = tcp_connect(url, tls ? "mqtts://" : "mqtt://");
    if (c.fd < 0)
        return c;
    int one = 1;
    setsockopt(c.fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
    if (tls) {
        static SSL_CTX *ctx;
        if (ctx == NULL)
            ctx = tls_ctx();
        const char *h = url + 8;
        char host[256];
        size_t hl = strcspn(h, ":/");
        if (ctx == NULL || hl == 0 || hl >= sizeof(host) || (c.ssl = SSL_new(ctx)) == NULL) {
            conn_close(&c);
            return c;
        }
        memcpy(host, h, hl);
        host[hl] = '\0';
        SSL_set_tlsext_host_name(c.ssl, host);
        SSL_set1_host(c.ssl, host);
        SSL_set_fd(c.ssl, c.fd);
        if (SSL_connect(c.ssl) != 1) {
            fprintf(stderr, "TLS handshake with %s failed: %s\n", url,
                    ERR_reason_error_string(ERR_get_error()));
            conn_close(&c);
            return c;
        }
    }
    int fl = fcntl(c.fd, F_GETFL);
    if (fl < 0 || fcntl(c.fd, F_SETFL, fl | O_NONBLOCK) != 0)
        conn_close(&c);
    return c;
}

/* ---------------------------------------------------------------------- */
/* MQTT 3.1.1, the little of it the instruments need                      */

/* CONNECT (clean session, no keepalive) and wait for CONNACK; 0 when accepted. */
static int mqtt_connect(const conn_t *fd, const char *role)
{
    char id[32];
    int idlen = snprintf(id, sizeof(id), "w2-%s-%ld", role, (long)getpid());
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
    unsigned char ack[4];
    if (write_all(fd, b, n) != 0 || read_exact(fd, ack, 4) != 0 || ack[0] != 0x20 || ack[3] != 0) {
        fprintf(stderr, "%s: the broker refused the connection\n", role);
        return -1;
    }
    return 0;
}

/* SUBSCRIBE to filter at QoS 1; 0 once granted. */
static int mqtt_subscribe(const conn_t *fd, const char *filter)
{
    size_t flen = strlen(filter);
    unsigned char b[128], ack[5];
    size_t n = 0;
    if (flen > 64)
        return -1;
    b[n++] = 0x82;
    b[n++] = (unsigned char)(2 + 2 + flen + 1);
    b[n++] = 0;
    b[n++] = 1; /* packet id */
    b[n++] = 0;
    b[n++] = (unsigned char)flen;
    memcpy(b + n, filter, flen);
    n += flen;
    b[n++] = 1; /* QoS 1, as emiotd's manager subscribes */
    if (write_all(fd, b, n) != 0 || read_exact(fd, ack, 5) != 0 || ack[0] != 0x90 || ack[4] != 1) {
        fprintf(stderr, "null subscriber: the broker refused the subscription\n");
        return -1;
    }
    return 0;
}

/* Remaining-length field; returns its size in bytes. */
static size_t put_varint(unsigned char *p, size_t v)
{
    size_t n = 0;
    do {
        unsigned char c = (unsigned char)(v % 128);
        v /= 128;
        p[n++] = (unsigned char)(c | (v > 0 ? 128 : 0));
    } while (v > 0);
    return n;
}

/* ---------------------------------------------------------------------- */
/* The null subscriber (child process)                                     */

/* Counts the complete PUBLISHes in buf[0..len), appends a PUBACK to out for
 * each QoS 1 one, and returns the bytes consumed (a partial packet stays for
 * the next read); -1 on a malformed packet. */
static long parse_packets(shared_t *sh, const unsigned char *buf, size_t len, unsigned char *out,
                          size_t *outlen)
{
    size_t p = 0;
    long counted = 0, foreign = 0;
    long rc;
    for (;;) {
        if (len - p < 2) {
            rc = (long)p;
            break;
        }
        size_t rl = 0, i = 1;
        unsigned mult = 1;
        bool partial = false;
        for (;;) {
            if (p + i >= len) {
                partial = true;
                break;
            }
            unsigned char c = buf[p + i++];
            rl += (size_t)(c & 127) * mult;
            if ((c & 128) == 0)
                break;
            mult *= 128;
            if (i > 4)
                return -1;
        }
        if (partial || len - p - i < rl) {
            rc = (long)p;
            break;
        }
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
            if (tlen > strlen(PREFIX_NULL) && memcmp(v + 2, PREFIX_NULL, strlen(PREFIX_NULL)) == 0)
                counted++;
            else
                foreign++;
            if (qos == 1) {
                out[(*outlen)++] = 0x40;
                out[(*outlen)++] = 2;
                out[(*outlen)++] = v[2 + tlen];
                out[(*outlen)++] = v[3 + tlen];
            }
        }
        p += i + rl;
    }
    atomic_fetch_add_explicit(&sh->received, counted, memory_order_release);
    if (foreign > 0)
        atomic_fetch_add_explicit(&sh->foreign, foreign, memory_order_relaxed);
    return rc;
}

static int subscriber_main(const char *url, shared_t *sh)
{
    prctl(PR_SET_PDEATHSIG, SIGKILL);
    conn_t c = mqtt_open(url);
    if (c.fd < 0 || mqtt_connect(&c, "null") != 0 ||
        mqtt_subscribe(&c, PREFIX_NULL "+/status") != 0) {
        atomic_store(&sh->ready, -1);
        return 1;
    }
    atomic_store(&sh->ready, 1);
    /* Each PUBLISH (at least 2 bytes) gets a 4-byte PUBACK: out is twice
     * the size of in. */
    unsigned char *in = malloc(IN_MAX), *out = malloc(2 * IN_MAX);
    if (in == NULL || out == NULL)
        return 1;
    size_t have = 0;
    int one = 1;
    for (;;) {
        ssize_t r = conn_read(&c, in + have, IN_MAX - have, true);
        if (r <= 0)
            return 0; /* the broker or the publisher went away */
        /* SSL_read returns one record at a time (the broker writes one per
         * packet): take every record already there before parsing. */
        while (c.ssl != NULL && have + (size_t)r < IN_MAX) {
            ssize_t more = conn_read(&c, in + have + r, IN_MAX - have - (size_t)r, false);
            if (more == IO_AGAIN)
                break;
            if (more <= 0)
                return 0;
            r += more;
        }
        /* The broker keeps Nagle's algorithm on (broker-conf.sh): ACK at
         * once, or a QoS 0 tail could wait for the delayed ACK (40 ms). */
        setsockopt(c.fd, IPPROTO_TCP, TCP_QUICKACK, &one, sizeof(one));
        have += (size_t)r;
        size_t outlen = 0;
        long used = parse_packets(sh, in, have, out, &outlen);
        if (used < 0 || (used == 0 && have == IN_MAX)) {
            fprintf(stderr, "null subscriber: malformed packet from the broker\n");
            return 1;
        }
        memmove(in, in + used, have - (size_t)used);
        have -= (size_t)used;
        if (outlen > 0 && write_all(&c, out, outlen) != 0)
            return 0;
        /* Read in batches, as W3's subscriber does: one wake-up per
         * millisecond at most while the stream is thin. */
        if (r < IN_MAX / 4)
            sleep_ms(1);
    }
}

/* ---------------------------------------------------------------------- */
/* The publisher                                                           */

typedef struct publisher {
    conn_t c;
    int qos;
    long devices;
    unsigned char *out;
    unsigned char *in;
    uint16_t next_id;
} publisher_t;

/* Encodes message number i of a run (device i % devices, batteryLevel
 * varying with i and the round) into p; returns its length. */
static size_t encode_publish(const publisher_t *pb, unsigned char *p, const char *prefix, long i,
                             long round, uint16_t id)
{
    char topic[64], payload[256];
    int tl = snprintf(topic, sizeof(topic), "%s" ID_FORMAT "/status", prefix, i % pb->devices);
    int pl = snprintf(payload, sizeof(payload),
                      "{\"batteryLevel\":%ld,\"powerMode\":\"normal\",\"connectionStatus\":"
                      "\"online\",\"firmwareVersion\":\"1.2.3\",\"signalStrength\":-67,"
                      "\"errors\":[],\"additionalInfo\":{}}",
                      (i / pb->devices + round * 37) % 101);
    size_t rl = 2 + (size_t)tl + (pb->qos > 0 ? 2 : 0) + (size_t)pl;
    size_t n = 0;
    p[n++] = (unsigned char)(0x30 | (pb->qos << 1));
    n += put_varint(p + n, rl);
    p[n++] = (unsigned char)(tl >> 8);
    p[n++] = (unsigned char)tl;
    memcpy(p + n, topic, (size_t)tl);
    n += (size_t)tl;
    if (pb->qos > 0) {
        p[n++] = (unsigned char)(id >> 8);
        p[n++] = (unsigned char)id;
    }
    memcpy(p + n, payload, (size_t)pl);
    return n + (size_t)pl;
}

/* Publishes messages 0..n-1 of a run; at QoS 1 returns once the broker has
 * acknowledged all. 0, or -1 when the connection failed. */
static int publish_run(publisher_t *pb, const char *prefix, long n, long round)
{
    long sent = 0, acked = 0;
    size_t have = 0;
    while (sent < n || acked < (pb->qos > 0 ? n : 0)) {
        size_t len = 0;
        while (sent < n && len + PACKET_MAX <= OUT_MAX && (pb->qos == 0 || sent - acked < WINDOW)) {
            if (++pb->next_id == 0)
                pb->next_id = 1;
            len += encode_publish(pb, pb->out + len, prefix, sent, round, pb->next_id);
            sent++;
        }
        if (len > 0 && write_all(&pb->c, pb->out, len) != 0) {
            fprintf(stderr, "publisher: write failed\n");
            return -1;
        }
        if (pb->qos == 0)
            continue;
        /* Read the PUBACKs that have come; wait for some only when the
         * window is full or everything has been sent. */
        bool block = sent - acked >= WINDOW || sent == n;
        ssize_t r = conn_read(&pb->c, pb->in + have, IN_MAX - have, block);
        if (r == IO_AGAIN)
            continue;
        if (r <= 0) {
            fprintf(stderr, "publisher: the broker closed the connection\n");
            return -1;
        }
        have += (size_t)r;
        size_t p = 0;
        while (have - p >= 4) {
            if (pb->in[p] != 0x40 || pb->in[p + 1] != 2) {
                fprintf(stderr, "publisher: unexpected packet 0x%02x\n", pb->in[p]);
                return -1;
            }
            acked++;
            p += 4;
        }
        memmove(pb->in, pb->in + p, have - p);
        have -= p;
    }
    return 0;
}

/* ---------------------------------------------------------------------- */
/* emiotd's metrics                                                        */

/* GET /metrics from url (http://HOST:PORT) and the value of metric (the sum
 * over its label sets); -1 when unreadable or absent. */
static double metric_value(const char *url, const char *metric, char *buf)
{
    int fd = tcp_connect(url, "http://");
    if (fd < 0)
        return -1;
    static const char req[] = "GET /metrics HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                              "Connection: close\r\n\r\n";
    const conn_t hc = {fd, NULL};
    if (write_all(&hc, (const unsigned char *)req, sizeof(req) - 1) != 0) {
        close(fd);
        return -1;
    }
    size_t have = 0;
    for (;;) {
        ssize_t r = read(fd, buf + have, METRICS_MAX - 1 - have);
        if (r < 0 && errno == EINTR)
            continue;
        if (r <= 0)
            break;
        have += (size_t)r;
        if (have == METRICS_MAX - 1)
            break;
    }
    close(fd);
    buf[have] = '\0';
    if (strncmp(buf, "HTTP/1.1 200", 12) != 0 && strncmp(buf, "HTTP/1.0 200", 12) != 0)
        return -1;
    size_t ml = strlen(metric);
    double sum = 0;
    bool found = false;
    for (char *line = buf; line != NULL && *line != '\0';) {
        char *nl = strchr(line, '\n');
        if (strncmp(line, metric, ml) == 0 && (line[ml] == ' ' || line[ml] == '{')) {
            char *v = line + ml;
            if (*v == '{') {
                v = strchr(v, '}');
                v = v != NULL ? v + 1 : NULL;
            }
            if (v != NULL) {
                char *end;
                double d = strtod(v, &end);
                if (end != v) {
                    sum += d;
                    found = true;
                }
            }
        }
        line = nl != NULL ? nl + 1 : NULL;
    }
    return found ? sum : -1;
}

/* ---------------------------------------------------------------------- */

typedef struct run_result {
    double rate;      /* messages/s until all were received / stored */
    double publish_s; /* time the publisher took */
    long done;        /* messages received / stored */
    double broker_us; /* broker CPU per message */
    double daemon_us; /* emiotd CPU per message */
} run_result_t;

static void print_json(int qos, const char *figure, double value, const char *unit, int decimals)
{
    printf("{\"workload\":\"W2\",\"figure\":\"qos%d_%s\",\"value\":%.*f,\"unit\":\"%s\"}\n", qos,
           figure, decimals, value, unit);
}

int main(int argc, char **argv)
{
    if (argc < 3) {
        fprintf(stderr, "usage: %s MQTT_URL METRICS_URL|- [messages] [devices] [qos] [rounds]\n",
                argv[0]);
        return 2;
    }
    const char *url = argv[1];
    const char *metrics = strcmp(argv[2], "-") != 0 ? argv[2] : NULL;
    long messages = parse_count(argc > 3 ? argv[3] : NULL, 200000, 1, MESSAGES_MAX);
    long devices = parse_count(argc > 4 ? argv[4] : NULL, 1000, 1, DEVICES_MAX);
    long qos = parse_count(argc > 5 ? argv[5] : NULL, 1, 0, 1);
    long rounds = parse_count(argc > 6 ? argv[6] : NULL, 3, 1, ROUNDS_MAX);
    if (messages < 0 || devices < 0 || qos < 0 || rounds < 0) {
        fprintf(stderr, "messages 1..%ld, devices 1..%ld, qos 0 or 1, rounds 1..%ld\n",
                MESSAGES_MAX, DEVICES_MAX, ROUNDS_MAX);
        return 2;
    }
    const char *metric = getenv("EMIOT_BENCH_STORED_METRIC");
    if (metric == NULL || *metric == '\0')
        metric = DEFAULT_METRIC;
    const char *env = getenv("EMIOT_BENCH_BROKER_PID");
    long broker_pid = env != NULL ? strtol(env, NULL, 10) : 0;
    env = getenv("EMIOT_BENCH_DAEMON_PID");
    long daemon_pid = env != NULL ? strtol(env, NULL, 10) : 0;
    char broker_stat[64];
    snprintf(broker_stat, sizeof(broker_stat), "/proc/%ld/schedstat", broker_pid);

    shared_t *sh =
        mmap(NULL, sizeof(*sh), PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
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
        _exit(subscriber_main(url, sh));
    for (int i = 0; i < 10000 && atomic_load(&sh->ready) == 0; i++)
        sleep_ms(1);
    int status = 1;
    char *mbuf = malloc(METRICS_MAX);
    publisher_t pb = {.c = {-1, NULL}, .qos = (int)qos, .devices = devices};
    pb.out = malloc(OUT_MAX);
    pb.in = malloc(IN_MAX);
    if (atomic_load(&sh->ready) != 1 || mbuf == NULL || pb.out == NULL || pb.in == NULL) {
        fprintf(stderr, "the null subscriber did not start\n");
        goto out;
    }
    pb.c = mqtt_open(url);
    if (pb.c.fd < 0 || mqtt_connect(&pb.c, "pub") != 0)
        goto out;
    if (metrics != NULL && metric_value(metrics, metric, mbuf) < 0) {
        fprintf(stderr, "no metric %s at %s/metrics\n", metric, metrics);
        goto out;
    }

    printf("W2: %ld status messages, %ld devices, QoS %ld, %ld rounds; publisher window %d\n",
           messages, devices, qos, rounds, WINDOW);
    run_result_t best_null = {0}, best_d = {0}, sum_null = {0}, sum_d = {0};
    long lost_total = 0, null_missed = 0;
    thread_acc_t acc = {0};
    for (long r = 0; r < rounds; r++) {
        /* The null run: the broker's rate to a subscriber that does nothing. */
        long base = atomic_load(&sh->received);
        double b0 = schedstat_us(broker_stat);
        double t0 = now_s();
        if (publish_run(&pb, PREFIX_NULL, messages, r) != 0)
            goto out;
        double tp = now_s() - t0, last_t = now_s();
        long got = 0, last = -1;
        while ((got = atomic_load(&sh->received) - base) < messages) {
            if (got != last) {
                last = got;
                last_t = now_s();
            } else if (now_s() - last_t > STALL_S) {
                break;
            }
            sleep_ms(1);
        }
        double dt = (got >= messages ? now_s() : last_t) - t0;
        run_result_t nr = {.rate = (double)got / dt, .publish_s = tp, .done = got};
        nr.broker_us = broker_pid > 0 ? (schedstat_us(broker_stat) - b0) / (double)messages : -1;
        null_missed += messages - got;
        printf("round %ld null:   %ld of %ld received in %.3f s: %.0f msg/s (published in %.3f s); "
               "broker %.1f us/msg\n",
               r + 1, got, messages, dt, nr.rate, tp, nr.broker_us);
        sum_null.rate += nr.rate;
        sum_null.broker_us += nr.broker_us;
        if (nr.rate > best_null.rate)
            best_null = nr;
        if (metrics == NULL)
            continue;
        sleep_ms(500);

        /* The emiotd run: until its store has committed every message. */
        double c0 = metric_value(metrics, metric, mbuf);
        thread_cpu_t tb[THREADS_MAX], ta[THREADS_MAX];
        size_t ntb = threads_cpu(daemon_pid, tb, THREADS_MAX);
        b0 = schedstat_us(broker_stat);
        t0 = now_s();
        if (publish_run(&pb, PREFIX_DAEMON, messages, r) != 0)
            goto out;
        tp = now_s() - t0;
        last_t = now_s();
        double c = c0, lastc = -1;
        for (;;) {
            c = metric_value(metrics, metric, mbuf);
            if (c < 0) {
                fprintf(stderr, "emiotd's metrics went away\n");
                goto out;
            }
            if (c - c0 >= (double)messages)
                break;
            if (c != lastc) {
                lastc = c;
                last_t = now_s();
            } else if (now_s() - last_t > STALL_S) {
                break;
            }
            sleep_ms(POLL_MS);
        }
        long stored = (long)(c - c0);
        dt = (stored >= messages ? now_s() : last_t) - t0;
        run_result_t dr = {.rate = (double)(stored < messages ? stored : messages) / dt,
                           .publish_s = tp,
                           .done = stored};
        dr.broker_us = broker_pid > 0 ? (schedstat_us(broker_stat) - b0) / (double)messages : -1;
        size_t nta = threads_cpu(daemon_pid, ta, THREADS_MAX);
        dr.daemon_us = daemon_pid > 0
                           ? (threads_total(ta, nta) - threads_total(tb, ntb)) / (double)messages
                           : -1;
        thread_acc_add(&acc, tb, ntb, ta, nta);
        long lost = stored < messages ? messages - stored : 0;
        lost_total += lost;
        printf("round %ld emiotd: %ld of %ld stored in %.3f s: %.0f msg/s (published in %.3f s), "
               "lost %ld%s; broker %.1f us/msg, emiotd %.1f us/msg\n",
               r + 1, stored, messages, dt, dr.rate, tp, lost,
               stored > messages ? " (more records committed than published)" : "", dr.broker_us,
               dr.daemon_us);
        sum_d.rate += dr.rate;
        sum_d.broker_us += dr.broker_us;
        sum_d.daemon_us += dr.daemon_us;
        if (dr.rate > best_d.rate)
            best_d = dr;
        sleep_ms(500);
    }

    double nr_mean = sum_null.rate / (double)rounds;
    printf("W2 QoS %ld null subscriber: best %.0f msg/s, mean %.0f; broker %.1f us/msg\n", qos,
           best_null.rate, nr_mean, sum_null.broker_us / (double)rounds);
    print_json((int)qos, "null_msgs_per_s", best_null.rate, "msg/s", 0);
    print_json((int)qos, "null_msgs_per_s_mean", nr_mean, "msg/s", 0);
    print_json((int)qos, "null_missed", (double)null_missed, "msg", 0);
    if (metrics != NULL) {
        double d_mean = sum_d.rate / (double)rounds;
        printf("W2 QoS %ld emiotd (stored): best %.0f msg/s, mean %.0f; %.1f %% of the null "
               "subscriber's rate (best/best), %.1f %% (mean/mean); lost %ld; CPU per message: "
               "broker %.1f us, emiotd %.1f us\n",
               qos, best_d.rate, d_mean, 100.0 * best_d.rate / best_null.rate,
               100.0 * d_mean / nr_mean, lost_total, sum_d.broker_us / (double)rounds,
               sum_d.daemon_us / (double)rounds);
        if (daemon_pid > 0) {
            printf("emiotd CPU per message by thread:");
            for (size_t i = 0; i < acc.n; i++) {
                double us = acc.t[i].us / (double)(messages * rounds);
                if (us >= 0.05)
                    printf(" %s(%ld) %.1f us", acc.t[i].name, acc.t[i].tid, us);
            }
            printf("\n");
        }
        print_json((int)qos, "stored_msgs_per_s", best_d.rate, "msg/s", 0);
        print_json((int)qos, "stored_msgs_per_s_mean", d_mean, "msg/s", 0);
        print_json((int)qos, "ratio_to_null", 100.0 * best_d.rate / best_null.rate, "%", 1);
        print_json((int)qos, "ratio_to_null_mean", 100.0 * d_mean / nr_mean, "%", 1);
        print_json((int)qos, "lost", (double)lost_total, "msg", 0);
        if (broker_pid > 0)
            print_json((int)qos, "broker_cpu_per_msg", sum_d.broker_us / (double)rounds, "us", 1);
        if (daemon_pid > 0)
            print_json((int)qos, "emiotd_cpu_per_msg", sum_d.daemon_us / (double)rounds, "us", 1);
    }
    long foreign = atomic_load(&sh->foreign);
    if (foreign > 0)
        printf("the null subscriber saw %ld messages under another prefix\n", foreign);
    status = (null_missed > 0 || (qos == 1 && lost_total > 0)) ? 1 : 0;
out:
    conn_close(&pb.c);
    kill(sub, SIGTERM);
    waitpid(sub, NULL, 0);
    free(pb.out);
    free(pb.in);
    free(mbuf);
    munmap(sh, sizeof(*sh));
    return status;
}
