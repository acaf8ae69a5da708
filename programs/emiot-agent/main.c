/*
 * emiot-agent - the device side of emiot.
 *
 * Plays one device (--id) or a fleet of simulated devices (--simulate N), each
 * its own MQTT client speaking the emiot protocol: retained availability with
 * a last will, periodic status and telemetry, commands answered on
 * P<id>/response. See docs/AGENT.md.
 *
 * Threads: one network thread per device (em_mqtt_start) runs commands; this
 * main thread runs the timers and waits for SIGINT/SIGTERM with sigtimedwait,
 * the signals being blocked in every thread so none of them is interrupted.
 */
#include <errno.h>
#include <getopt.h>
#include <limits.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <time.h>
#include <unistd.h>

#include "agent.h"
#include "emiot/clock.h"
#include "emiot/log.h"
#include "emiot/version.h"

#define PROGRAM "emiot-agent"
#define MODULE  "agent"
/* Each device holds four descriptors for as long as it runs: its socket,
 * libmosquitto's internal socket pair and the eventfd that wakes its network
 * thread; and during a TLS handshake it may open a fifth for a moment (a CA
 * certificate looked up in a directory: --ca-path, or the system store),
 * which after a broker restart every device does at once. The
 * transport waits with poll(), so descriptor numbers have no ceiling of their
 * own (select() stopped at 1024): the process's RLIMIT_NOFILE bounds a fleet,
 * and is checked at start. AGENT_FDS_RESERVED covers stdio, what the parent
 * left open, and the files read while the devices are set up (certificates,
 * keys, CA, password). */
#define AGENT_FDS_PER_DEVICE 5
#define AGENT_FDS_RESERVED   32
/* Each device is also a thread with its own stack and TLS session: past ten
 * thousand, memory and the kernel's thread and mapping limits bind before
 * descriptors do, and a bigger fleet runs as several processes (--first). */
#define AGENT_SIMULATE_MAX       10000
#define AGENT_FIRST_MAX          999999
#define AGENT_ID_PREFIX_DEFAULT  "sim"
#define AGENT_TICK_MS            100
#define AGENT_CONNECT_TIMEOUT_MS 10000
#define AGENT_SHUTDOWN_WAIT_MS   3000
#define AGENT_DURATION_MAX       (10L * 365 * 86400)
#define EXIT_USAGE               2

enum {
    OPT_URL = 256,
    OPT_CA,
    OPT_CA_PATH,
    OPT_CERT,
    OPT_KEY,
    OPT_CERT_DIR,
    OPT_USERNAME,
    OPT_PASSWORD,
    OPT_PASSWORD_ENV,
    OPT_PASSWORD_FILE,
    OPT_ALLOW_PLAIN,
    OPT_PREFIX,
    OPT_ID,
    OPT_SIMULATE,
    OPT_ID_PREFIX,
    OPT_FIRST,
    OPT_TYPE,
    OPT_INTERVAL,
    OPT_TELEMETRY_INTERVAL,
    OPT_DURATION,
    OPT_SEED,
    OPT_FIRMWARE,
    OPT_COMMAND_MAX_AGE,
    OPT_MQTT_VERSION,
    OPT_KEEPALIVE,
    OPT_LOG_LEVEL,
    OPT_HELP,
    OPT_VERSION
};

static const struct option long_options[] = {
    {"url", required_argument, NULL, OPT_URL},
    {"ca", required_argument, NULL, OPT_CA},
    {"ca-path", required_argument, NULL, OPT_CA_PATH},
    {"cert", required_argument, NULL, OPT_CERT},
    {"key", required_argument, NULL, OPT_KEY},
    {"cert-dir", required_argument, NULL, OPT_CERT_DIR},
    {"username", required_argument, NULL, OPT_USERNAME},
    {"password", required_argument, NULL, OPT_PASSWORD},
    {"password-env", required_argument, NULL, OPT_PASSWORD_ENV},
    {"password-file", required_argument, NULL, OPT_PASSWORD_FILE},
    {"allow-plain", no_argument, NULL, OPT_ALLOW_PLAIN},
    {"prefix", required_argument, NULL, OPT_PREFIX},
    {"id", required_argument, NULL, OPT_ID},
    {"simulate", required_argument, NULL, OPT_SIMULATE},
    {"id-prefix", required_argument, NULL, OPT_ID_PREFIX},
    {"first", required_argument, NULL, OPT_FIRST},
    {"type", required_argument, NULL, OPT_TYPE},
    {"interval", required_argument, NULL, OPT_INTERVAL},
    {"telemetry-interval", required_argument, NULL, OPT_TELEMETRY_INTERVAL},
    {"duration", required_argument, NULL, OPT_DURATION},
    {"seed", required_argument, NULL, OPT_SEED},
    {"firmware", required_argument, NULL, OPT_FIRMWARE},
    {"command-max-age", required_argument, NULL, OPT_COMMAND_MAX_AGE},
    {"mqtt-version", required_argument, NULL, OPT_MQTT_VERSION},
    {"keepalive", required_argument, NULL, OPT_KEEPALIVE},
    {"log-level", required_argument, NULL, OPT_LOG_LEVEL},
    {"help", no_argument, NULL, OPT_HELP},
    {"version", no_argument, NULL, OPT_VERSION},
    {NULL, 0, NULL, 0},
};

static void usage(FILE *out)
{
    fprintf(
        out,
        "Usage: " PROGRAM " --url URL (--id ID | --simulate N) [options]\n"
        "       " PROGRAM " enroll ...   get this device's certificate (enroll --help)\n"
        "       " PROGRAM " token ...    get a device JWT by challenge-response (token --help)\n"
        "Plays one emiot device, or N simulated ones, over MQTT.\n"
        "\n"
        "Connection:\n"
        "  --url URL                 broker: mqtts://host[:port], or mqtt:// with --allow-plain\n"
        "  --ca FILE                 CA bundle (PEM) that verifies the broker's certificate\n"
        "  --ca-path DIR             directory of hashed CA certificates, instead of --ca\n"
        "  --cert FILE               client certificate (PEM) for mutual TLS\n"
        "  --key FILE                private key (PEM) of --cert\n"
        "  --cert-dir DIR            per-device <id>.crt and <id>.key, instead of --cert/--key\n"
        "  --username NAME           MQTT user name (the same for every simulated device)\n"
        "  --password-env VAR        read the MQTT password from environment variable VAR\n"
        "  --password-file FILE      read the MQTT password from the first line of FILE\n"
        "  --allow-plain             permit mqtt:// without TLS (loopback brokers only)\n"
        "  --mqtt-version 5|4        MQTT 5 (default; falls back to 3.1.1) or 3.1.1\n"
        "  --keepalive SECONDS       MQTT keep-alive (default 30)\n"
        "\n"
        "Devices:\n"
        "  --id ID                   play the single device ID (3-50 of [A-Za-z0-9_-])\n"
        "  --simulate N              play N devices <id-prefix>-001..N (1..10000 per process,\n"
        "                            as the file descriptor limit allows: 5 per device)\n"
        "  --id-prefix P             id prefix of simulated devices (default \"sim\")\n"
        "  --first K                 number of the first simulated device (default 1), to\n"
        "                            split a fleet over processes\n"
        "  --type TYPE               sensor (default), camera, actuator, gateway, generic,\n"
        "                            or mixed (simulated devices take the types in turn)\n"
        "  --prefix P                topic prefix (default \"device/\")\n"
        "  --firmware VERSION        firmware version reported at start (default 1.0.0)\n"
        "  --seed N                  seed of the simulation (same seed, same fleet)\n"
        "\n"
        "Behaviour:\n"
        "  --interval SECONDS        status period (default 10)\n"
        "  --telemetry-interval S    telemetry period (default 10; 0 = no telemetry)\n"
        "  --command-max-age S       refuse commands whose timestamp is more than S seconds\n"
        "                            old or ahead (default 300; 0 = do not check)\n"
        "  --duration SECONDS        exit after this long (default 0 = until SIGINT/SIGTERM)\n"
        "  --log-level LEVEL         trace, debug, info (default), warn, error, fatal, off\n"
        "  --help                    show this help and exit\n"
        "  --version                 show the version and exit\n"
        "\n"
        "Passwords are never taken on the command line. Logs are JSON lines on stderr.\n");
}

static int usage_error(const char *fmt, ...) EM_PRINTF(1, 2);

static int usage_error(const char *fmt, ...)
{
    va_list ap;

    /* Nothing is left to do when stderr itself fails: the exit status still
     * tells. */
    (void)fprintf(stderr, PROGRAM ": ");
    va_start(ap, fmt);
    (void)vfprintf(stderr, fmt, ap);
    va_end(ap);
    (void)fprintf(stderr, "\nTry '" PROGRAM " --help'.\n");
    return EXIT_USAGE;
}

/* Parses a whole decimal integer in [min, max]. */
static bool parse_long(const char *s, long min, long max, long *out)
{
    char *end = NULL;
    long v;

    errno = 0;
    v = strtol(s, &end, 10);
    if (errno != 0 || end == s || *end != '\0' || v < min || v > max)
        return false;
    *out = v;
    return true;
}

static bool parse_u64(const char *s, uint64_t *out)
{
    char *end = NULL;
    unsigned long long v;

    if (*s == '-' || *s == '\0')
        return false;
    errno = 0;
    v = strtoull(s, &end, 10);
    if (errno != 0 || *end != '\0')
        return false;
    *out = (uint64_t)v;
    return true;
}

static bool firmware_valid(const char *v)
{
    size_t n = strlen(v);
    if (n == 0 || n > EM_FIRMWARE_VERSION_MAX)
        return false;
    for (size_t i = 0; i < n; i++) {
        char c = v[i];
        if (!((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
              c == '.' || c == '+' || c == '_' || c == '-'))
            return false;
    }
    return true;
}

typedef struct agent_args {
    agent_config_t cfg;
    const char *id;
    const char *id_prefix;
    long simulate; /* 0 = single device */
    long first;    /* number of the first simulated device */
    const char *type;
    long duration_s;
    uint64_t seed;
    bool seed_set;
    int log_level;
} agent_args_t;

static void args_defaults(agent_args_t *a)
{
    memset(a, 0, sizeof *a);
    a->cfg.prefix = EM_TOPIC_PREFIX_DEFAULT;
    a->cfg.status_interval_s = 10;
    a->cfg.telemetry_interval_s = 10;
    a->cfg.command_max_age_ms = (int64_t)300 * 1000;
    a->cfg.firmware = AGENT_FIRMWARE_DEFAULT;
    a->id_prefix = AGENT_ID_PREFIX_DEFAULT;
    a->first = 1;
    a->type = "sensor";
    a->log_level = EM_LOG_INFO;
}

/* Applies the option getopt_long returned as c, with its value arg. Returns
 * -1 to go on, or the exit status (--help, --version, a usage error). */
static int parse_option(int c, const char *arg, char **argv, agent_args_t *a)
{
    long v;

    switch (c) {
    case OPT_URL:
        a->cfg.url = arg;
        break;
    case OPT_CA:
        a->cfg.ca_file = arg;
        break;
    case OPT_CA_PATH:
        a->cfg.ca_path = arg;
        break;
    case OPT_CERT:
        a->cfg.cert_file = arg;
        break;
    case OPT_KEY:
        a->cfg.key_file = arg;
        break;
    case OPT_CERT_DIR:
        a->cfg.cert_dir = arg;
        break;
    case OPT_USERNAME:
        a->cfg.username = arg;
        break;
    case OPT_PASSWORD:
        /* The value is not echoed: it may be a real password. */
        return usage_error("%s", "passwords are never taken on the command line (they would "
                                 "show in ps and shell history); use --password-env or "
                                 "--password-file");
    case OPT_PASSWORD_ENV:
        a->cfg.password_env = arg;
        break;
    case OPT_PASSWORD_FILE:
        a->cfg.password_file = arg;
        break;
    case OPT_ALLOW_PLAIN:
        a->cfg.allow_plain = true;
        break;
    case OPT_PREFIX:
        a->cfg.prefix = arg;
        break;
    case OPT_ID:
        a->id = arg;
        break;
    case OPT_SIMULATE:
        if (!parse_long(arg, 1, AGENT_SIMULATE_MAX, &a->simulate))
            return usage_error("--simulate: '%s' is not a number from 1 to %d (run several "
                               "processes with --first for more)",
                               arg, AGENT_SIMULATE_MAX);
        break;
    case OPT_FIRST:
        if (!parse_long(arg, 1, AGENT_FIRST_MAX, &a->first))
            return usage_error("--first: '%s' is not a number from 1 to %d", arg, AGENT_FIRST_MAX);
        break;
    case OPT_ID_PREFIX:
        a->id_prefix = arg;
        break;
    case OPT_TYPE:
        a->type = arg;
        break;
    case OPT_INTERVAL:
        if (!parse_long(arg, 1, EM_REPORTING_INTERVAL_MAX, &v))
            return usage_error("--interval: '%s' is not a number of seconds from 1 to 86400", arg);
        a->cfg.status_interval_s = (int)v;
        break;
    case OPT_TELEMETRY_INTERVAL:
        if (!parse_long(arg, 0, EM_REPORTING_INTERVAL_MAX, &v))
            return usage_error(
                "--telemetry-interval: '%s' is not a number of seconds from 0 to 86400", arg);
        a->cfg.telemetry_interval_s = (int)v;
        break;
    case OPT_DURATION:
        if (!parse_long(arg, 0, AGENT_DURATION_MAX, &a->duration_s))
            return usage_error("--duration: '%s' is not a number of seconds", arg);
        break;
    case OPT_SEED:
        if (!parse_u64(arg, &a->seed))
            return usage_error("--seed: '%s' is not an unsigned number", arg);
        a->seed_set = true;
        break;
    case OPT_FIRMWARE:
        if (!firmware_valid(arg))
            return usage_error("--firmware: '%s' is not 1-31 of [0-9A-Za-z.+_-]", arg);
        a->cfg.firmware = arg;
        break;
    case OPT_COMMAND_MAX_AGE:
        if (!parse_long(arg, 0, 86400, &v))
            return usage_error("--command-max-age: '%s' is not a number of seconds from 0 "
                               "to 86400",
                               arg);
        a->cfg.command_max_age_ms = (int64_t)v * 1000;
        break;
    case OPT_MQTT_VERSION:
        if (!parse_long(arg, 4, 5, &v))
            return usage_error("--mqtt-version: '%s' is neither 5 nor 4", arg);
        a->cfg.protocol = (int)v;
        break;
    case OPT_KEEPALIVE:
        if (!parse_long(arg, 5, 3600, &v))
            return usage_error("--keepalive: '%s' is not a number of seconds from 5 to 3600", arg);
        a->cfg.keepalive_s = (int)v;
        break;
    case OPT_LOG_LEVEL:
        a->log_level = em_log_level_parse(arg);
        if (a->log_level < 0)
            return usage_error("--log-level: unknown level '%s'", arg);
        break;
    case OPT_HELP:
        usage(stdout);
        return 0;
    case OPT_VERSION:
        printf(PROGRAM " %s (libemiot %s)\n", EM_VERSION_STRING, em_version());
        return 0;
    case ':':
        return usage_error("option '%s' needs a value", argv[optind - 1]);
    default:
        return usage_error("unknown option '%s'", argv[optind - 1]);
    }
    return -1;
}

/* True when every id of the simulated fleet is a valid device id: the longest
 * is the last one's. */
static bool simulated_ids_valid(const agent_args_t *a)
{
    char probe[EM_DEVICE_ID_MAX + 16];
    int n = snprintf(probe, sizeof probe, "%s-%03ld", a->id_prefix, a->first + a->simulate - 1);
    return n >= 0 && (size_t)n < sizeof probe &&
           em_device_id_validate(probe, (size_t)n, NULL) == EM_OK;
}

/* The checks that involve several options, once all are read. Returns -1 to
 * go on, or the exit status of a usage error. */
static int check_args(const agent_args_t *a)
{
    if (!a->cfg.url)
        return usage_error("%s", "--url is required");
    if (a->first != 1 && !a->simulate)
        return usage_error("%s", "--first goes with --simulate");
    if (a->id && a->simulate)
        return usage_error("%s", "--id and --simulate exclude each other");
    if (!a->id && !a->simulate)
        return usage_error("%s", "either --id ID or --simulate N is required");
    if ((a->cfg.cert_file != NULL) != (a->cfg.key_file != NULL))
        return usage_error("%s", "--cert and --key go together");
    if (a->cfg.cert_dir && a->cfg.cert_file)
        return usage_error("%s", "--cert-dir and --cert/--key exclude each other");
    if (a->cfg.password_env && a->cfg.password_file)
        return usage_error("%s", "--password-env and --password-file exclude each other");
    if (em_topic_prefix_validate(a->cfg.prefix, NULL) != EM_OK)
        return usage_error("--prefix: '%s' must be 1-64 printable characters without + or #, "
                           "ending in /",
                           a->cfg.prefix);
    if (a->id && em_device_id_validate(a->id, strlen(a->id), NULL) != EM_OK)
        return usage_error("--id: '%s' is not 3-50 of [A-Za-z0-9_-]", a->id);
    if (a->simulate && !simulated_ids_valid(a))
        return usage_error("--id-prefix: '%s' does not make valid device ids", a->id_prefix);
    if (strcmp(a->type, "mixed") != 0) {
        em_device_type_t t;
        if (em_device_type_parse(a->type, strlen(a->type), &t, NULL) != EM_OK)
            return usage_error("--type: unknown type '%s'", a->type);
    }
    return -1;
}

/* Returns -1 to go on, or the exit status. */
static int parse_args(int argc, char **argv, agent_args_t *a)
{
    int c;

    args_defaults(a);
    opterr = 0;
    while ((c = getopt_long(argc, argv, "", long_options, NULL)) != -1) {
        int rc = parse_option(c, optarg, argv, a);
        if (rc >= 0)
            return rc;
    }
    if (optind < argc)
        return usage_error("unexpected argument '%s'", argv[optind]);
    return check_args(a);
}

/* Blocks until a signal, the timeout, or nothing (timeout_ms 0). Returns the
 * signal number, or 0. */
static int wait_signal(const sigset_t *set, int timeout_ms)
{
    struct timespec ts = {timeout_ms / 1000, (long)(timeout_ms % 1000) * 1000000L};
    int sig = sigtimedwait(set, NULL, &ts);
    return sig > 0 ? sig : 0;
}

/* Blocks the stop signals before any thread exists, so that every network
 * thread inherits the mask and only wait_signal receives them; ignores
 * SIGPIPE, as a broken connection must be an error code, never a signal. */
static bool setup_signals(sigset_t *sigs)
{
    if (sigemptyset(sigs) != 0 || sigaddset(sigs, SIGINT) != 0 || sigaddset(sigs, SIGTERM) != 0 ||
        pthread_sigmask(SIG_BLOCK, sigs, NULL) != 0 || signal(SIGPIPE, SIG_IGN) == SIG_ERR) {
        em_logf(EM_LOG_FATAL, MODULE, "cannot set up signal handling: %s", strerror(errno));
        return false;
    }
    return true;
}

/* Makes sure the process may open the descriptors of n devices. The soft
 * RLIMIT_NOFILE is commonly 1024 only for the sake of programs that use
 * select(), and nothing here does: when it is too low it is raised, up to the
 * hard limit. Logs why and returns false when the hard limit is too low. */
static bool descriptors_suffice(size_t n)
{
    struct rlimit rl;
    rlim_t need = AGENT_FDS_RESERVED + (rlim_t)n * AGENT_FDS_PER_DEVICE;
    rlim_t soft;

    if (getrlimit(RLIMIT_NOFILE, &rl) != 0) {
        em_logf(EM_LOG_FATAL, MODULE, "cannot read the file descriptor limit: %s", strerror(errno));
        return false;
    }
    if (rl.rlim_cur == RLIM_INFINITY || rl.rlim_cur >= need)
        return true;
    if (rl.rlim_max != RLIM_INFINITY && rl.rlim_max < need) {
        em_logf(EM_LOG_FATAL, MODULE,
                "%zu device(s) need %llu file descriptors (%d each, %d for the program), but "
                "this process may open at most %llu (ulimit -Hn): raise that limit, or split "
                "the fleet over several processes with --first",
                n, (unsigned long long)need, AGENT_FDS_PER_DEVICE, AGENT_FDS_RESERVED,
                (unsigned long long)rl.rlim_max);
        return false;
    }
    soft = rl.rlim_cur;
    rl.rlim_cur = need;
    if (setrlimit(RLIMIT_NOFILE, &rl) != 0) {
        em_logf(EM_LOG_FATAL, MODULE,
                "cannot raise the file descriptor limit from %llu to %llu: %s",
                (unsigned long long)soft, (unsigned long long)need, strerror(errno));
        return false;
    }
    em_logf(EM_LOG_DEBUG, MODULE, "file descriptor limit raised from %llu to %llu",
            (unsigned long long)soft, (unsigned long long)need);
    return true;
}

/* The devices of this process; the first `started` were initialised and
 * need agent_device_cleanup. */
typedef struct agent_fleet {
    agent_device_t *devs;
    size_t n;
    size_t started;
} agent_fleet_t;

/* The id and type of the i-th device of this process. Types and seeds follow
 * the device number, not the position in this process, so a fleet split with
 * --first is the same fleet. */
static void device_identity(const agent_args_t *a, size_t i, char id[EM_DEVICE_ID_MAX + 1],
                            em_device_type_t *type)
{
    static const em_device_type_t mixed[] = {EM_DEVICE_SENSOR, EM_DEVICE_ACTUATOR, EM_DEVICE_CAMERA,
                                             EM_DEVICE_GATEWAY, EM_DEVICE_GENERIC};

    /* Both fit: check_args validated the id and the longest generated id. */
    if (a->simulate)
        snprintf(id, EM_DEVICE_ID_MAX + 1, "%s-%03ld", a->id_prefix, a->first + (long)i);
    else
        snprintf(id, EM_DEVICE_ID_MAX + 1, "%s", a->id);
    *type = EM_DEVICE_SENSOR;
    if (strcmp(a->type, "mixed") == 0)
        *type = mixed[(size_t)(a->first - 1 + (long)i) % (sizeof mixed / sizeof mixed[0])];
    else
        (void)em_device_type_parse(a->type, strlen(a->type), type, NULL);
}

static void log_device_failure(const char *msg, const char *id, const em_error_t *err)
{
    em_log_field_t f[3] = {EM_LOG_STR("device", id), EM_LOG_STR("error", em_err_name(err->code)),
                           EM_LOG_STR("detail", err->message)};
    em_log(EM_LOG_FATAL, MODULE, NULL, msg, f, 3);
}

/* Sets up and connects the devices one after the other. Returns the exit
 * status so far (1 when a device cannot be set up or connected); *sig is the
 * stop signal received meanwhile, or 0. */
static int start_fleet(const agent_args_t *a, agent_fleet_t *fl, const sigset_t *sigs, int *sig)
{
    bool connected = false, unreachable = false;

    *sig = 0;
    for (size_t i = 0; i < fl->n; i++) {
        char id[EM_DEVICE_ID_MAX + 1];
        em_device_type_t type;
        em_error_t err;

        device_identity(a, i, id, &type);
        em_error_clear(&err);
        if (agent_device_init(&fl->devs[i], &a->cfg, id, type,
                              a->seed + (uint64_t)(a->first - 1) + i, &err) != EM_OK) {
            log_device_failure("cannot set up device", id, &err);
            return 1;
        }
        fl->started = i + 1;
        /* Once the broker proved unreachable, the other devices do not each
         * wait for it: their network threads keep trying. */
        if (agent_device_start(&fl->devs[i], unreachable ? 0 : AGENT_CONNECT_TIMEOUT_MS, &connected,
                               &err) != EM_OK) {
            log_device_failure("cannot connect", id, &err);
            return 1;
        }
        if (!connected)
            unreachable = true;
        /* Starting a large fleet takes a while: stay responsive to Ctrl-C. */
        *sig = wait_signal(sigs, 0);
        if (*sig)
            return 0;
    }
    em_logf(EM_LOG_INFO, MODULE, "%zu device(s) started%s", fl->n,
            unreachable ? " (broker unreachable so far)" : "");
    return 0;
}

/* Runs the devices' timers until a stop signal (returned) or the end of
 * --duration (0 returned). */
static int run_fleet(const agent_args_t *a, agent_fleet_t *fl, const sigset_t *sigs)
{
    int64_t t0 = em_mono_ms();
    int sig = 0;

    while (!sig) {
        int64_t now = em_mono_ms();
        if (a->duration_s > 0 && now - t0 >= (int64_t)a->duration_s * 1000) {
            em_logf(EM_LOG_INFO, MODULE, "duration of %ld s reached", a->duration_s);
            break;
        }
        for (size_t i = 0; i < fl->started; i++)
            agent_device_tick(&fl->devs[i], now);
        sig = wait_signal(sigs, AGENT_TICK_MS);
    }
    return sig;
}

/* Clean shutdown: a DISCONNECT suppresses the last will, so each device says
 * "offline" itself, and we wait (bounded) for the broker to take it before
 * disconnecting. Frees the fleet. */
static void stop_fleet(agent_fleet_t *fl)
{
    int *mids = calloc(fl->started ? fl->started : 1, sizeof *mids);
    int64_t deadline;

    for (size_t i = 0; i < fl->started; i++) {
        agent_device_t *d = &fl->devs[i];
        int mid = em_mqtt_is_connected(d->mqtt) ? agent_device_publish_offline(d) : -1;
        if (mids)
            mids[i] = mid;
    }
    deadline = em_mono_ms() + AGENT_SHUTDOWN_WAIT_MS;
    for (size_t i = 0; mids && i < fl->started; i++) {
        while (mids[i] >= 0 && !agent_device_acked(&fl->devs[i], mids[i]) &&
               em_mono_ms() < deadline) {
            struct timespec ts = {0, 10 * 1000000L};
            nanosleep(&ts, NULL);
        }
    }
    free(mids);
    for (size_t i = 0; i < fl->started; i++)
        agent_device_cleanup(&fl->devs[i]);
    free(fl->devs);
    fl->devs = NULL;
    fl->started = 0;
}

static void log_starting(const agent_args_t *a, size_t n)
{
    em_log_field_t f[5] = {EM_LOG_STR("version", EM_VERSION_STRING),
                           EM_LOG_STR("broker", a->cfg.url), EM_LOG_INT("devices", n),
                           EM_LOG_STR("type", a->type), EM_LOG_INT("seed", (long long)a->seed)};
    em_log(EM_LOG_INFO, MODULE, NULL, "starting", f, 5);
}

int main(int argc, char **argv)
{
    agent_args_t a;
    agent_fleet_t fleet = {NULL, 0, 0};
    sigset_t sigs;
    int status, sig = 0;

    /* The subcommands are programs of their own, with their own options. */
    if (argc > 1 && strcmp(argv[1], "enroll") == 0)
        return agent_enroll_main(argc - 1, argv + 1);
    if (argc > 1 && strcmp(argv[1], "token") == 0)
        return agent_token_main(argc - 1, argv + 1);
    status = parse_args(argc, argv, &a);
    if (status >= 0)
        return status;
    em_log_set_level((em_log_level_t)a.log_level);
    if (!a.seed_set)
        a.seed = (uint64_t)em_now_ms() ^ ((uint64_t)getpid() << 32);
    fleet.n = a.simulate ? (size_t)a.simulate : 1;
    if (!descriptors_suffice(fleet.n) || !setup_signals(&sigs))
        return 1;
    fleet.devs = calloc(fleet.n, sizeof *fleet.devs);
    if (!fleet.devs) {
        em_logf(EM_LOG_FATAL, MODULE, "out of memory for %zu devices", fleet.n);
        return 1;
    }
    log_starting(&a, fleet.n);

    status = start_fleet(&a, &fleet, &sigs, &sig);
    if (status == 0 && !sig)
        sig = run_fleet(&a, &fleet, &sigs);
    if (sig)
        em_logf(EM_LOG_INFO, MODULE, "received %s, going offline", strsignal(sig));
    stop_fleet(&fleet);
    em_logf(EM_LOG_INFO, MODULE, "stopped");
    return status;
}
