/*
 * emiot-agent - agent.h: the pieces of the device-side program.
 *
 * model.c   the simulated device: battery, power, energy, environment (pure,
 *           no I/O, deterministic for a given seed and sequence of calls)
 * device.c  one device = one MQTT client: announces itself, publishes status
 *           and telemetry, answers commands
 * main.c    options, the timer loop, signals, clean shutdown; hands the
 *           subcommands "enroll" and "token" to enroll.c
 * enroll.c  enrollment (key and CSR made here, certificate from emiotd)
 * token.c   device tokens (challenge-response)
 * identity.c what enroll and token share: bounded file reads, files written
 *           safely, PEM certificates, option checks
 * https.c   the requests those two make to emiotd's HTTPS API
 *
 * Names here are agent_*: the program is not the library, and only the
 * library's public headers (include/emiot) are used.
 */
#ifndef EMIOT_AGENT_H
#define EMIOT_AGENT_H

#include <pthread.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include <cjson/cJSON.h>
#include <limits.h>
#include <openssl/x509.h>
#include <sys/types.h>

#include "emiot/command.h"
#include "emiot/device.h"
#include "emiot/mqtt.h"
#include "emiot/status.h"
#include "emiot/topic.h"

/* ---- model.c ---------------------------------------------------------- */

/* splitmix64: small, fast, good enough for a simulation (never for secrets). */
typedef struct agent_rng {
    uint64_t state;
} agent_rng_t;

uint64_t agent_rng_next(agent_rng_t *r);
double agent_rng_uniform(agent_rng_t *r); /* [0, 1) */
double agent_rng_normal(agent_rng_t *r);  /* mean 0, standard deviation 1 */

#define AGENT_BATTERY_CRITICAL        10 /* below: powerMode critical */
#define AGENT_SLEEP_THRESHOLD_DEFAULT 20 /* below: powerMode low_power */
#define AGENT_SECURITY_LEVEL_DEFAULT  3
#define AGENT_FIRMWARE_DEFAULT        "1.0.0"

typedef struct agent_model {
    em_device_type_t type;
    agent_rng_t rng;
    /* Fixed per device (drawn from the seed). */
    double base_power_w; /* consumption in normal mode */
    double drain_pct_h;  /* battery drain in normal mode, percent per hour */
    double phase;        /* phase of the slow load cycle */
    int signal_base;     /* dBm */
    double temp_base;    /* degrees C the device settles around */
    double humidity_base;
    /* Evolving state. */
    double battery;   /* percent, 0..100 */
    double energy_wh; /* cumulative, never decreases except on factory reset */
    double load;      /* load factor around 1, resampled at each sample */
    double voltage_v;
    double temperature;
    double humidity;
    int signal_dbm;
    int64_t last_advance_ms; /* monotonic */
    int64_t boot_ms;         /* monotonic time of the last (simulated) boot */
    /* Power management and configuration. */
    bool sleeping;
    int64_t sleep_until_ms; /* monotonic; 0 = until woken */
    uint8_t sleep_threshold;
    uint8_t security_level;
    bool auto_wake;
    char firmware[EM_FIRMWARE_VERSION_MAX + 1];
} agent_model_t;

/* Initialises a device model of type from seed, at monotonic time now_ms. */
void agent_model_init(agent_model_t *m, em_device_type_t type, uint64_t seed, const char *firmware,
                      int64_t now_ms);

/* Integrates energy and battery drain up to now_ms at the current power and
 * ends a timed sleep that is due. Returns true when the power mode changed. */
bool agent_model_advance(agent_model_t *m, int64_t now_ms);

/* The power mode the device is in: critical below AGENT_BATTERY_CRITICAL, then
 * sleep when asleep, low_power below the sleep threshold, normal otherwise. */
em_power_mode_t agent_model_power_mode(const agent_model_t *m);

/* Present consumption in watts: base power x power-mode factor x load. */
double agent_model_power(const agent_model_t *m);

/* Draws new load, voltage, environment and signal values (after advancing). */
void agent_model_sample(agent_model_t *m, int64_t now_ms);

/* Fills t from the model (timestamp wall_ms). */
void agent_model_telemetry(const agent_model_t *m, int64_t wall_ms, em_telemetry_t *t);

/* Simulated reboot at now_ms: awake (sleep is a run-time state), uptime from
 * now. */
void agent_model_reboot(agent_model_t *m, int64_t now_ms);

/* Simulated factory reset: configuration defaults, energy counter 0, then a
 * reboot. */
void agent_model_factory_reset(agent_model_t *m, int64_t now_ms);

/* Compares dotted numeric versions ("1.2.10" > "1.2.9"). Returns <0, 0, >0, or
 * sets *comparable false when either is not purely dotted digits. */
int agent_version_compare(const char *a, const char *b, bool *comparable);

/* Writes the version with its last numeric component incremented ("1.2.3" ->
 * "1.2.4"); when v is not dotted digits, v with ".1" appended ("1.2.3-beta" ->
 * "1.2.3-beta.1"). Returns false when out is too small. */
bool agent_version_bump(const char *v, char *out, size_t size);

/* ---- device.c --------------------------------------------------------- */

#define AGENT_SEEN_IDS   64   /* requestIds remembered per device (replay check) */
#define AGENT_ACKED_MIDS 16   /* recently acknowledged publishes (shutdown wait) */
#define AGENT_STATUS_BUF 8192 /* largest status payload the agent writes */

/* What every device shares: the command line, resolved. */
typedef struct agent_config {
    const char *url;
    const char *ca_file;
    const char *ca_path;
    const char *cert_file;
    const char *key_file;
    const char *cert_dir;
    const char *username;
    const char *password_env;
    const char *password_file;
    bool allow_plain;
    const char *prefix;
    int protocol; /* 5 or 4 */
    int keepalive_s;
    int status_interval_s;      /* initial status period */
    int telemetry_interval_s;   /* 0 = no telemetry */
    int64_t command_max_age_ms; /* 0 = timestamps not checked */
    const char *firmware;       /* initial firmware version */
} agent_config_t;

typedef struct agent_device {
    char id[EM_DEVICE_ID_MAX + 1];
    const agent_config_t *cfg;
    em_mqtt_t *mqtt;
    char t_status[EM_TOPIC_MAX];
    char t_telemetry[EM_TOPIC_MAX];
    char t_command[EM_TOPIC_MAX];
    char t_response[EM_TOPIC_MAX];
    char t_availability[EM_TOPIC_MAX];

    /* Everything below is guarded by lock: the network thread (commands,
     * connection events, acknowledgements) and the main thread (timers) both
     * touch it. The lock is never held while calling em_mqtt_*. */
    pthread_mutex_t lock;
    agent_model_t model;
    int status_interval_s;
    int telemetry_interval_s;
    int64_t next_status_ms;    /* monotonic */
    int64_t next_telemetry_ms; /* monotonic; 0 = off */
    em_power_mode_t reported_mode;
    bool need_announce; /* (re)connected: publish online + status */
    bool stopping;      /* shutting down: a disconnection is expected */
    char seen[AGENT_SEEN_IDS][EM_REQUEST_ID_MAX + 1];
    unsigned seen_next, seen_count;
    int acked[AGENT_ACKED_MIDS];
    unsigned acked_next;
    unsigned long commands_ok, commands_failed;
} agent_device_t;

/*
 * Prepares device id (index into the simulation, for the seed) and creates
 * its MQTT client with the last will. Does not connect. Returns EM_OK or the
 * error from topic building / em_mqtt_new, with err filled.
 */
em_err_t agent_device_init(agent_device_t *d, const agent_config_t *cfg, const char *id,
                           em_device_type_t type, uint64_t seed, em_error_t *err);

/*
 * Connects (waiting up to timeout_ms; 0: not waiting at all), subscribes to
 * the command topic and starts the network thread; the first tick after the
 * connection announces the device. An unreachable broker is not an error: the
 * network thread keeps trying, and *connected tells whether the device is
 * connected already. Errors: what em_mqtt_connect returns for TLS,
 * authentication or configuration failures; subscribe and start failures.
 */
em_err_t agent_device_start(agent_device_t *d, int timeout_ms, bool *connected, em_error_t *err);

/* Main-thread timer work: announce after (re)connection, status and telemetry
 * when due or when the power mode changed. */
void agent_device_tick(agent_device_t *d, int64_t now_ms);

/* Publishes "offline" (retained) and returns its message id, or -1. */
int agent_device_publish_offline(agent_device_t *d);

/* True once the broker acknowledged publish mid. */
bool agent_device_acked(agent_device_t *d, int mid);

/* Disconnects and frees the client; the device can then be discarded. */
void agent_device_cleanup(agent_device_t *d);

/* ---- enroll.c, https.c: enrollment and device tokens ------------------- */

/* Exit codes of `emiot-agent enroll` and `emiot-agent token` (--help and
 * docs/AGENT.md document them; scripts rely on them). */
enum {
    AGENT_EXIT_OK = 0,
    AGENT_EXIT_FAILURE = 1, /* local: files, keys, memory */
    AGENT_EXIT_USAGE = 2,   /* bad command line */
    AGENT_EXIT_CONNECT = 3, /* cannot reach the API, or TLS failed */
    AGENT_EXIT_REFUSED = 4, /* 401, 403: token, nonce, certificate or device refused */
    AGENT_EXIT_INVALID = 5, /* 400, 409, 413, 415, 422: the server found the request invalid */
    AGENT_EXIT_SERVER = 6   /* 5xx, 429, 404, or an answer that does not check out */
};

#define AGENT_ANSWER_MAX ((size_t)256 * 1024) /* bytes of one answer from the API */

/* `emiot-agent enroll ...` and `emiot-agent token ...`: argv[0] is the
 * subcommand's name. Return the exit status. */
int agent_enroll_main(int argc, char **argv);
int agent_token_main(int argc, char **argv);

/* Prints "program: message" on stderr. */
void agent_fail(const char *program, const char *fmt, ...) EM_PRINTF(2, 3);

typedef struct agent_https {
    void *curl;          /* CURL * */
    char *base;          /* the API URL without trailing slashes */
    const char *program; /* for messages: "emiot-agent enroll" */
    bool global;         /* curl_global_init was called */
} agent_https_t;

/* The answer to a successful request: 2xx with a JSON object in "data". */
typedef struct agent_answer {
    long status;
    char *body; /* NUL-terminated; wiped when cleaned up */
    size_t len;
    cJSON *json;
    const cJSON *data; /* inside json */
} agent_answer_t;

/* True for an https:// URL (at most 2048 characters, no spaces or control
 * characters). */
bool agent_https_url_ok(const char *url);

/* Sets up a client of api_url (https:// only) trusting only ca_file, TLS 1.3
 * only. Returns AGENT_EXIT_OK, or an exit status after printing why (a bad
 * URL is AGENT_EXIT_USAGE). On failure nothing is left to clean up. */
int agent_https_init(agent_https_t *h, const char *program, const char *api_url,
                     const char *ca_file);

/* POSTs body (JSON) to path ("/api/v1/enroll"). Returns AGENT_EXIT_OK with
 * ans filled (a 2xx answer whose "data" is an object), or the exit status
 * for what went wrong after printing it (server messages sanitised). The
 * request text is wiped after sending; ans (only on success) must be
 * released with agent_answer_cleanup. */
int agent_https_post(agent_https_t *h, const char *path, const cJSON *body, agent_answer_t *ans);

void agent_https_cleanup(agent_https_t *h);
void agent_answer_cleanup(agent_answer_t *a);

/* The exit status for an HTTP status that is not 2xx. */
int agent_exit_for_status(long status);

/* cJSON_Delete after wiping every string of the tree. Accepts NULL. */
void agent_json_free(cJSON *j);

/* The string member name of o, or NULL. */
const char *agent_json_str(const cJSON *o, const char *name);

/* ---- identity.c: what enroll and token share ---------------------------- */

/* The "Exit status:" section of both subcommands' --help. */
extern const char agent_exit_codes_help[];

/* Prints "program: msg[ arg]" and the --help hint; returns
 * AGENT_EXIT_USAGE. */
int agent_usage_error(const char *program, const char *msg, const char *arg);

/* The usage error for getopt_long's ':' (missing value) or '?'. */
int agent_option_error(const char *program, int c, char **argv);

/* -1 when --api (may be NULL) is given and an https:// URL; else the usage
 * error's exit status. */
int agent_check_api(const char *program, const char *api);

/* -1 when --id (may be NULL) is given and a valid device id; else the usage
 * error's exit status. */
int agent_check_id(const char *program, const char *id);

/* Reads the regular file path (at most max bytes) into a NUL-terminated
 * buffer *out of *out_len bytes, to be released with agent_free_secret (it
 * may hold a key or a token). what names the option in messages. Prints why
 * and returns false on failure. */
bool agent_read_file(const char *program, const char *what, const char *path, size_t max,
                     char **out, size_t *out_len);

/* Wipes len bytes of buf and frees it. Accepts NULL. */
void agent_free_secret(char *buf, size_t len);

/* A file being written: first under a temporary name beside its final one
 * (".NAME.tmp-XXXXXX", created exclusively), then moved into place. */
typedef struct agent_staged {
    const char *path; /* final name; NULL: this slot is unused */
    char tmp[PATH_MAX];
    int fd;
    bool committed;
} agent_staged_t;

/* Creates st's temporary file for path with mode. Prints why and returns
 * false on failure (st is then unused). */
bool agent_staged_open(const char *program, agent_staged_t *st, const char *path, mode_t mode);

/* Writes len bytes and syncs them. Prints why and returns false on failure. */
bool agent_staged_write(const char *program, agent_staged_t *st, const void *data, size_t len);

/* Moves the temporary file into place: with force replacing a file that
 * exists; without, atomically refusing to (EEXIST). Prints why and returns
 * false on failure. */
bool agent_staged_commit(const char *program, agent_staged_t *st, bool force);

/* Removes the temporary file, and with rollback the final one when it was
 * committed. Safe on an unused slot. */
void agent_staged_abort(agent_staged_t *st, bool rollback);

/* OpenSSL's latest queued error as text (static buffer); clears the queue. */
const char *agent_ssl_reason(void);

/* The certificates of a PEM text (at least one), or NULL. The caller frees
 * them with sk_X509_pop_free(certs, X509_free). */
STACK_OF(X509) * agent_parse_certs(const char *pem, size_t len);

#endif /* EMIOT_AGENT_H */
