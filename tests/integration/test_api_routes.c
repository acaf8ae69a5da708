/*
 * emiot tests - test_api_routes.c: the resource routes of the HTTPS API
 * (devices, groups, commands, events) against real parts, in one process:
 * an event_base thread running em_api with one TLS listener, a SQLite store
 * in a temporary directory, a real mosquitto and a manager connected to it.
 * Requests are made with the curl command line; the device side is played
 * with mosquitto_pub and mosquitto_sub.
 *
 * What emiotd does between the manager and the store (statuses, telemetry
 * and command answers written to the store) is done here by a small event
 * callback, so that the routes see what they would see in the daemon.
 *
 * The fixture is shared by all tests (a broker and TLS set-up per test would
 * cost seconds each); every test uses its own device and group names.
 */
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <setjmp.h>
#include <signal.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/types.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cjson/cJSON.h>
#include <cmocka.h>
#include <event2/event.h>
#include <event2/thread.h>

#include "broker.h"
#include "emiot/api.h"
#include "emiot/clock.h"
#include "emiot/manager.h"
#include "emiot/store.h"
#include "testutil.h"

/* ---- the in-process harness ------------------------------------------- */

typedef struct fixture {
    char dir[256];
    em_test_broker_t broker;
    em_store_t *store;
    em_manager_t *mgr;
    struct event_base *base;
    em_api_t *api;
    pthread_t loop;
    bool loop_running;
    char url[96];
    char ca[EM_TEST_PATH_MAX];
    char admin[EM_API_KEY_LEN + 1];
    char viewer[EM_API_KEY_LEN + 1];
    unsigned seq;
} fixture_t;

static fixture_t *fx_global; /* for the helpers below */

/* What emiotd does with the manager's events: statuses, telemetry and
 * command answers go to the store (on the network thread). */
static void bridge(em_manager_t *mgr, const em_event_t *ev, void *userdata)
{
    (void)mgr;
    em_store_t *st = userdata;
    switch (ev->type) {
    case EM_EVENT_STATUS:
        (void)em_store_enqueue_status(st, ev->device->id, ev->status, NULL);
        break;
    case EM_EVENT_TELEMETRY:
        (void)em_store_enqueue_telemetry(st, ev->device->id, ev->telemetry, ev->energy_delta_wh,
                                         ev->counter_reset != 0, NULL);
        break;
    case EM_EVENT_COMMAND_RESPONSE:
        (void)em_store_enqueue_response(st, ev->device->id, ev->response, em_now_ms(), NULL);
        break;
    default:
        break;
    }
}

static void *loop_main(void *arg)
{
    fixture_t *fx = arg;
    event_base_loop(fx->base, EVLOOP_NO_EXIT_ON_EMPTY);
    return NULL;
}

static int write_file(const char *path, const char *data, size_t len)
{
    int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
    if (fd < 0)
        return -1;
    size_t off = 0;
    while (off < len) {
        ssize_t n = write(fd, data + off, len - off);
        if (n < 0 && errno == EINTR)
            continue;
        if (n <= 0) {
            close(fd);
            return -1;
        }
        off += (size_t)n;
    }
    return close(fd);
}

/* Reads a whole file into a new NUL-terminated string (NULL on failure). */
static char *read_all(const char *path)
{
    FILE *f = fopen(path, "rb");
    if (f == NULL)
        return NULL;
    size_t cap = 4096, len = 0;
    char *buf = malloc(cap);
    while (buf != NULL) {
        if (cap - len < 2) {
            char *p = realloc(buf, cap * 2);
            if (p == NULL) {
                free(buf);
                buf = NULL;
                break;
            }
            buf = p;
            cap *= 2;
        }
        size_t n = fread(buf + len, 1, cap - len - 1, f);
        len += n;
        if (n == 0)
            break;
    }
    fclose(f);
    if (buf != NULL)
        buf[len] = '\0';
    return buf;
}

static void path_in(char *out, size_t size, const char *name)
{
    int n = snprintf(out, size, "%s/%s", fx_global->dir, name);
    assert_true(n > 0 && (size_t)n < size);
}

/*
 * One HTTPS request with curl, pinned to the test CA. key (may be NULL) goes
 * in an Authorization header read from a 0600 file, never on the command
 * line. The answer's body is parsed into *out (NULL when out is NULL or the
 * body is not JSON). Returns the HTTP status, -1 when no answer came.
 * extra_header (may be NULL) receives the value of the Retry-After header.
 */
static int http_full(const char *key, const char *method, const char *path, const char *body,
                     cJSON **out, char *retry_after, size_t ra_size)
{
    fixture_t *fx = fx_global;
    unsigned n = ++fx->seq;
    char hdr[EM_TEST_PATH_MAX], bodyf[EM_TEST_PATH_MAX], outf[EM_TEST_PATH_MAX],
        codef[EM_TEST_PATH_MAX], headf[EM_TEST_PATH_MAX], name[64], url[EM_TEST_PATH_MAX];
    snprintf(name, sizeof(name), "req-%u.hdr", n);
    path_in(hdr, sizeof(hdr), name);
    snprintf(name, sizeof(name), "req-%u.body", n);
    path_in(bodyf, sizeof(bodyf), name);
    snprintf(name, sizeof(name), "req-%u.out", n);
    path_in(outf, sizeof(outf), name);
    snprintf(name, sizeof(name), "req-%u.code", n);
    path_in(codef, sizeof(codef), name);
    snprintf(name, sizeof(name), "req-%u.head", n);
    path_in(headf, sizeof(headf), name);
    snprintf(url, sizeof(url), "%s%s", fx->url, path);

    char line[512];
    int ln = snprintf(line, sizeof(line), "Content-Type: application/json\n%s%s%s",
                      key != NULL ? "Authorization: Bearer " : "", key != NULL ? key : "",
                      key != NULL ? "\n" : "");
    assert_true(ln > 0 && (size_t)ln < sizeof(line));
    assert_int_equal(write_file(hdr, line, (size_t)ln), 0);
    if (body != NULL)
        assert_int_equal(write_file(bodyf, body, strlen(body)), 0);
    char hdr_arg[EM_TEST_PATH_MAX + 2], body_arg[EM_TEST_PATH_MAX + 2];
    snprintf(hdr_arg, sizeof(hdr_arg), "@%s", hdr);
    snprintf(body_arg, sizeof(body_arg), "@%s", bodyf);
    const char *argv[32];
    int a = 0;
    argv[a++] = "curl";
    argv[a++] = "-s";
    argv[a++] = "--max-time";
    argv[a++] = "20";
    argv[a++] = "--cacert";
    argv[a++] = fx->ca;
    argv[a++] = "-X";
    argv[a++] = method;
    argv[a++] = "-H";
    argv[a++] = hdr_arg;
    argv[a++] = "-D";
    argv[a++] = headf;
    argv[a++] = "-o";
    argv[a++] = outf;
    argv[a++] = "-w";
    argv[a++] = "%{http_code}";
    if (body != NULL) {
        argv[a++] = "--data-binary";
        argv[a++] = body_arg;
    }
    argv[a++] = url;
    argv[a] = NULL;
    pid_t pid = em_test_spawn(argv, codef);
    int rc = pid > 0 ? em_test_wait(pid, 30000) : -1;
    if (rc == -1 && pid > 0)
        em_test_stop(pid);
    int status = -1;
    char *code = read_all(codef);
    if (rc == 0 && code != NULL) {
        long v = strtol(code, NULL, 10);
        if (v > 0 && v < 600)
            status = (int)v;
    }
    free(code);
    if (out != NULL) {
        char *text = read_all(outf);
        *out = text != NULL ? cJSON_Parse(text) : NULL;
        if (*out == NULL)
            fprintf(stderr, "%s %s: %d, body not JSON: %.300s\n", method, path, status,
                    text != NULL ? text : "(none)");
        free(text);
    }
    if (retry_after != NULL && ra_size > 0) {
        retry_after[0] = '\0';
        char *head = read_all(headf);
        const char *p = head != NULL ? strcasestr(head, "\nRetry-After:") : NULL;
        if (p != NULL) {
            p += strlen("\nRetry-After:");
            while (*p == ' ')
                p++;
            size_t i = 0;
            while (p[i] != '\0' && p[i] != '\r' && p[i] != '\n' && i + 1 < ra_size) {
                retry_after[i] = p[i];
                i++;
            }
            retry_after[i] = '\0';
        }
        free(head);
    }
    unlink(hdr);
    unlink(bodyf);
    unlink(outf);
    unlink(codef);
    unlink(headf);
    return status;
}

static int http(const char *key, const char *method, const char *path, const char *body,
                cJSON **out)
{
    return http_full(key, method, path, body, out, NULL, 0);
}

/* As http with the admin key, and a printf-formatted path. */
static int admin(const char *method, const char *body, cJSON **out, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));
static int admin(const char *method, const char *body, cJSON **out, const char *fmt, ...)
{
    char path[1024];
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(path, sizeof(path), fmt, ap);
    va_end(ap);
    assert_true(n > 0 && (size_t)n < sizeof(path));
    return http(fx_global->admin, method, path, body, out);
}

/* Member key of an answer's "data" (the answer itself for key NULL). */
static cJSON *data(cJSON *answer)
{
    return cJSON_GetObjectItemCaseSensitive(answer, "data");
}

static const char *str_of(const cJSON *obj, const char *key)
{
    const cJSON *it = cJSON_GetObjectItemCaseSensitive(obj, key);
    return cJSON_IsString(it) ? it->valuestring : NULL;
}

static double num_of(const cJSON *obj, const char *key)
{
    const cJSON *it = cJSON_GetObjectItemCaseSensitive(obj, key);
    assert_true(cJSON_IsNumber(it));
    return it->valuedouble;
}

/* The error answer's message and code. */
static void assert_error(cJSON *answer, const char *code, const char *message_prefix)
{
    assert_non_null(answer);
    assert_true(cJSON_IsFalse(cJSON_GetObjectItemCaseSensitive(answer, "success")));
    const char *c = str_of(answer, "errorCode");
    const char *m = str_of(answer, "message");
    assert_non_null(c);
    assert_non_null(m);
    if (strcmp(c, code) != 0 ||
        (message_prefix != NULL && strncmp(m, message_prefix, strlen(message_prefix)) != 0))
        fprintf(stderr, "error answer: %s / %s (wanted %s / %s...)\n", c, m, code,
                message_prefix ? message_prefix : "");
    assert_string_equal(c, code);
    if (message_prefix != NULL)
        assert_memory_equal(m, message_prefix, strlen(message_prefix));
}

/* Creates a device (201) with optional extra JSON members. */
static void create_device(const char *id, const char *type, const char *extra)
{
    char body[1024];
    snprintf(body, sizeof(body), "{\"id\":\"%s\",\"name\":\"Device %s\",\"type\":\"%s\"%s%s}", id,
             id, type, extra != NULL ? "," : "", extra != NULL ? extra : "");
    cJSON *a = NULL;
    int st = admin("POST", body, &a, "/api/v1/devices");
    if (st != 201)
        fprintf(stderr, "create %s: %d %s\n", id, st, a ? cJSON_PrintUnformatted(a) : "");
    assert_int_equal(st, 201);
    cJSON_Delete(a);
}

static void create_group(const char *name)
{
    char body[256];
    snprintf(body, sizeof(body), "{\"name\":\"%s\"}", name);
    assert_int_equal(admin("POST", body, NULL, "/api/v1/groups"), 201);
}

/* Makes an API key of role (and device) through the API; key receives it. */
static void make_key(const char *name, const char *role, const char *device, char *key)
{
    char body[256];
    if (device != NULL)
        snprintf(body, sizeof(body), "{\"name\":\"%s\",\"role\":\"%s\",\"deviceId\":\"%s\"}", name,
                 role, device);
    else
        snprintf(body, sizeof(body), "{\"name\":\"%s\",\"role\":\"%s\"}", name, role);
    cJSON *a = NULL;
    assert_int_equal(admin("POST", body, &a, "/api/v1/keys"), 201);
    const char *k = str_of(data(a), "key");
    assert_non_null(k);
    assert_int_equal(strlen(k), EM_API_KEY_LEN);
    memcpy(key, k, EM_API_KEY_LEN + 1);
    cJSON_Delete(a);
}

/* mosquitto_pub of one QoS 1 message to the fixture's broker. */
static void publish(const char *topic, const char *payload)
{
    char port[16];
    snprintf(port, sizeof(port), "%d", em_test_broker_port(&fx_global->broker));
    const char *argv[] = {"mosquitto_pub", "-h", "127.0.0.1", "-p", port, "-q", "1", "-t",
                          topic,           "-m", payload,     NULL};
    assert_int_equal(em_test_run(argv), 0);
}

/* A counter of the manager's statistics, by its offset in
 * em_manager_stats_t. */
static uint64_t stat_now(size_t offset)
{
    em_manager_stats_t s;
    em_manager_stats(fx_global->mgr, &s);
    uint64_t v;
    memcpy(&v, (const char *)&s + offset, sizeof(v));
    return v;
}

/* Waits until the manager counted at least n of a statistic. */
static void wait_stat(size_t offset, uint64_t n)
{
    for (int i = 0; i < 200; i++) {
        if (stat_now(offset) >= n)
            return;
        em_test_sleep_ms(50);
    }
    fail_msg("the manager did not count %llu messages", (unsigned long long)n);
}

static void flush_store(void)
{
    assert_int_equal(em_store_flush(fx_global->store, 10000, NULL), EM_OK);
}

static size_t array_size(const cJSON *a)
{
    assert_true(cJSON_IsArray(a));
    return (size_t)cJSON_GetArraySize(a);
}

static int group_setup(void **state)
{
    fixture_t *fx = calloc(1, sizeof(*fx));
    if (fx == NULL)
        return -1;
    fx_global = fx;
    *state = fx;
    if (em_test_mkdtemp(fx->dir, sizeof(fx->dir)) != 0)
        return -1;
    if (em_test_broker_start(&fx->broker, "plain") != 0)
        return -1;

    char url[EM_TEST_PATH_MAX + 16];
    snprintf(url, sizeof(url), "sqlite:%s/store.db", fx->dir);
    em_error_t err;
    em_store_options_t so;
    em_store_options_init(&so);
    so.batch_interval_ms = 5;
    if (em_store_open(url, &so, &fx->store, &err) != EM_OK) {
        fprintf(stderr, "store: %s\n", err.message);
        return -1;
    }

    fx->mgr = em_manager_new(NULL, &err);
    if (fx->mgr == NULL)
        return -1;
    if (em_manager_on(fx->mgr,
                      EM_EVENT_MASK(EM_EVENT_STATUS) | EM_EVENT_MASK(EM_EVENT_TELEMETRY) |
                          EM_EVENT_MASK(EM_EVENT_COMMAND_RESPONSE),
                      bridge, fx->store) != EM_OK)
        return -1;
    em_mqtt_options_t mo;
    em_mqtt_options_init(&mo);
    mo.url = em_test_broker_url(&fx->broker);
    mo.allow_plain = true;
    if (em_manager_connect(fx->mgr, &mo, 10000, &err) != EM_OK) {
        fprintf(stderr, "connect: %s\n", err.message);
        return -1;
    }

    bool created = false;
    if (em_api_bootstrap(fx->store, fx->admin, sizeof(fx->admin), &created, &err) != EM_OK ||
        !created) {
        fprintf(stderr, "bootstrap: %s\n", err.message);
        return -1;
    }

    if (evthread_use_pthreads() != 0)
        return -1;
    fx->base = event_base_new();
    if (fx->base == NULL)
        return -1;
    char cert[EM_TEST_PATH_MAX], key[EM_TEST_PATH_MAX], jwt[EM_TEST_PATH_MAX];
    em_test_broker_path(&fx->broker, "server.crt", cert, sizeof(cert));
    em_test_broker_path(&fx->broker, "server.key", key, sizeof(key));
    snprintf(fx->ca, sizeof(fx->ca), "%s", em_test_broker_ca(&fx->broker));
    snprintf(jwt, sizeof(jwt), "%s/jwt.pem", fx->dir);
    em_api_options_t ao;
    em_api_options_init(&ao);
    ao.listeners[0].address = "127.0.0.1";
    ao.listeners[0].port = 0;
    ao.listeners[0].cert_file = cert;
    ao.listeners[0].key_file = key;
    ao.listeners[0].client_auth = EM_CLIENT_AUTH_NONE;
    ao.nlisteners = 1;
    ao.jwt_key_file = jwt;
    fx->api = em_api_new(fx->base, &ao, fx->store, fx->mgr, &err);
    if (fx->api == NULL) {
        fprintf(stderr, "api: %s\n", err.message);
        return -1;
    }
    snprintf(fx->url, sizeof(fx->url), "https://localhost:%u", em_api_port(fx->api, 0));
    if (pthread_create(&fx->loop, NULL, loop_main, fx) != 0)
        return -1;
    fx->loop_running = true;
    return 0;
}

static int group_teardown(void **state)
{
    fixture_t *fx = *state;
    if (fx == NULL)
        return 0;
    if (fx->loop_running) {
        event_base_loopbreak(fx->base);
        pthread_join(fx->loop, NULL);
    }
    em_api_free(fx->api);
    if (fx->base != NULL)
        event_base_free(fx->base);
    em_manager_free(fx->mgr);
    em_store_close(fx->store);
    em_test_broker_cleanup(&fx->broker);
    if (fx->dir[0] != '\0')
        em_test_rmtree(fx->dir);
    free(fx);
    fx_global = NULL;
    return 0;
}

/* cJSON decodes "\u0000" into a NUL byte, which would cut a string short:
 * "esc-001\u0000x" must be refused, not become the device "esc-001". */
static void test_escaped_nul_in_a_string_is_400_not_truncated(void **state)
{
    (void)state;
    static const struct {
        const char *path;
        const char *body;
        const char *prefix;
    } cases[] = {
        {"/api/v1/devices", "{\"id\":\"esc-001\\u0000x\",\"name\":\"x\",\"type\":\"sensor\"}",
         "id:"},
        {"/api/v1/devices", "{\"id\":\"esc-001\",\"name\":\"x\\u0000\",\"type\":\"sensor\"}",
         "name:"},
        {"/api/v1/groups", "{\"name\":\"esc\\u0000grp\"}", "name:"},
        {"/api/v1/groups", "{\"na\\u0000me\":\"esc-grp\"}", "body:"},
        {"/api/v1/devices/cmd-esc/commands",
         "{\"type\":\"update\",\"payload\":{\"version\":\"1.0\\u0000\"}}", "payload:"},
    };
    create_device("cmd-esc", "actuator", NULL);
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        cJSON *a = NULL;
        int st = admin("POST", cases[i].body, &a, "%s", cases[i].path);
        if (st != 400)
            fprintf(stderr, "case %zu: %d\n", i, st);
        assert_int_equal(st, 400);
        assert_error(a, "validation", cases[i].prefix);
        cJSON_Delete(a);
    }
    assert_int_equal(admin("GET", NULL, NULL, "/api/v1/devices/esc-001"), 404);
    assert_int_equal(admin("GET", NULL, NULL, "/api/v1/groups/esc"), 404);
    cJSON *a = NULL;
    assert_int_equal(admin("GET", NULL, &a, "/api/v1/devices/cmd-esc/commands"), 200);
    assert_int_equal(array_size(data(a)), 0);
    cJSON_Delete(a);
    /* An escaped backslash before "u0000" is two plain characters. */
    assert_int_equal(
        admin("PATCH", "{\"name\":\"back\\\\u0000slash\"}", &a, "/api/v1/devices/cmd-esc"), 200);
    assert_string_equal(str_of(data(a), "name"), "back\\u0000slash");
    cJSON_Delete(a);
}

/* ---- devices ------------------------------------------------------------ */

static void test_device_create_then_get_shows_every_field(void **state)
{
    (void)state;
    create_group("create-grp");
    cJSON *a = NULL;
    int st = admin("POST",
                   "{\"id\":\"create-001\",\"name\":\"Kitchen plug\",\"type\":\"actuator\","
                   "\"config\":{\"reportingInterval\":60},\"groups\":[\"create-grp\"]}",
                   &a, "/api/v1/devices");
    assert_int_equal(st, 201);
    cJSON *d = data(a);
    assert_string_equal(str_of(d, "id"), "create-001");
    assert_string_equal(str_of(d, "name"), "Kitchen plug");
    assert_string_equal(str_of(d, "type"), "actuator");
    assert_true(cJSON_IsTrue(cJSON_GetObjectItemCaseSensitive(d, "enabled")));
    assert_true(cJSON_IsNull(cJSON_GetObjectItemCaseSensitive(d, "status")));
    cJSON_Delete(a);

    assert_int_equal(admin("GET", NULL, &a, "/api/v1/devices/create-001"), 200);
    d = data(a);
    assert_string_equal(str_of(d, "name"), "Kitchen plug");
    assert_int_equal(
        (int)num_of(cJSON_GetObjectItemCaseSensitive(d, "config"), "reportingInterval"), 60);
    cJSON *groups = cJSON_GetObjectItemCaseSensitive(d, "groups");
    assert_int_equal(array_size(groups), 1);
    assert_string_equal(cJSON_GetArrayItem(groups, 0)->valuestring, "create-grp");
    assert_non_null(str_of(d, "createdAt"));
    assert_non_null(str_of(d, "updatedAt"));
    cJSON_Delete(a);

    /* The manager registered it, in its group. */
    em_device_t dev;
    assert_int_equal(em_manager_get_device(fx_global->mgr, "create-001", &dev, NULL), EM_OK);
    assert_int_equal(dev.type, EM_DEVICE_ACTUATOR);
    em_manager_device_cleanup(&dev);
    assert_int_equal(em_registry_group_size(em_manager_registry(fx_global->mgr), "create-grp"), 1);
}

static void test_device_create_duplicate_is_409(void **state)
{
    (void)state;
    create_device("dup-001", "sensor", NULL);
    cJSON *a = NULL;
    assert_int_equal(admin("POST", "{\"id\":\"dup-001\",\"name\":\"x\",\"type\":\"sensor\"}", &a,
                           "/api/v1/devices"),
                     409);
    assert_error(a, "already_exists", "id:");
    cJSON_Delete(a);
}

static void test_device_create_bad_input_is_400_naming_the_field(void **state)
{
    (void)state;
    static const struct {
        const char *body;
        const char *prefix;
    } cases[] = {
        {"{\"id\":\"a!\",\"name\":\"x\",\"type\":\"sensor\"}", "id:"},
        {"{\"id\":\"bad-001\",\"name\":\"x\",\"type\":\"toaster\"}", "type:"},
        {"{\"id\":\"bad-001\",\"name\":5,\"type\":\"sensor\"}", "name: must be a string"},
        {"{\"id\":\"bad-001\",\"type\":\"sensor\"}", "name: is required"},
        {"{\"id\":\"bad-001\",\"name\":\"x\",\"type\":\"sensor\",\"color\":\"red\"}", "color:"},
        {"{\"id\":\"bad-001\",\"name\":\"x\",\"type\":\"sensor\","
         "\"config\":{\"reportingInterval\":0}}",
         "config.reportingInterval:"},
        {"{\"id\":\"bad-001\",\"name\":\"x\",\"type\":\"sensor\",\"enabled\":\"yes\"}", "enabled:"},
        {"{\"id\":\"bad-001\",\"name\":\"x\",\"type\":\"sensor\",\"groups\":\"g\"}", "groups:"},
    };
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        cJSON *a = NULL;
        int st = admin("POST", cases[i].body, &a, "/api/v1/devices");
        if (st != 400)
            fprintf(stderr, "case %zu: %d\n", i, st);
        assert_int_equal(st, 400);
        assert_error(a, "validation", cases[i].prefix);
        cJSON_Delete(a);
    }
    /* Malformed JSON. */
    cJSON *a = NULL;
    assert_int_equal(admin("POST", "{\"id\":", &a, "/api/v1/devices"), 400);
    cJSON_Delete(a);
    /* None of them was stored. */
    assert_int_equal(admin("GET", NULL, NULL, "/api/v1/devices/bad-001"), 404);
}

static void test_device_create_in_unknown_group_is_404_and_stores_nothing(void **state)
{
    (void)state;
    cJSON *a = NULL;
    assert_int_equal(admin("POST",
                           "{\"id\":\"nogrp-001\",\"name\":\"x\",\"type\":\"sensor\","
                           "\"groups\":[\"no-such-group\"]}",
                           &a, "/api/v1/devices"),
                     404);
    assert_error(a, "group_not_found", "groups:");
    cJSON_Delete(a);
    assert_int_equal(admin("GET", NULL, NULL, "/api/v1/devices/nogrp-001"), 404);
    assert_int_equal(em_manager_get_device(fx_global->mgr, "nogrp-001", &(em_device_t){0}, NULL),
                     EM_ERR_DEVICE_NOT_FOUND);
}

static void test_device_unknown_is_404_on_every_route(void **state)
{
    (void)state;
    static const char *const paths[] = {
        "/api/v1/devices/ghost-001", "/api/v1/devices/ghost-001/status",
        "/api/v1/devices/ghost-001/status/history", "/api/v1/devices/ghost-001/telemetry",
        "/api/v1/devices/ghost-001/commands"};
    for (size_t i = 0; i < sizeof(paths) / sizeof(paths[0]); i++) {
        cJSON *a = NULL;
        assert_int_equal(admin("GET", NULL, &a, "%s", paths[i]), 404);
        assert_error(a, "device_not_found", NULL);
        cJSON_Delete(a);
    }
    assert_int_equal(admin("PATCH", "{\"name\":\"x\"}", NULL, "/api/v1/devices/ghost-001"), 404);
    assert_int_equal(admin("DELETE", NULL, NULL, "/api/v1/devices/ghost-001"), 404);
}

/* Collects the ids of a device list answer. */
static size_t list_ids(cJSON *answer, char ids[][EM_DEVICE_ID_MAX + 1], size_t max)
{
    cJSON *arr = data(answer);
    size_t n = 0;
    const cJSON *it;
    cJSON_ArrayForEach(it, arr)
    {
        if (n < max)
            snprintf(ids[n], EM_DEVICE_ID_MAX + 1, "%s", str_of(it, "id"));
        n++;
    }
    return n;
}

static void test_device_list_filters_and_pages(void **state)
{
    (void)state;
    create_group("paging");
    static const char *const ids[] = {"page-001", "page-002", "page-003", "page-004", "page-005"};
    for (size_t i = 0; i < 5; i++)
        create_device(ids[i], i == 2 ? "camera" : "sensor", "\"groups\":[\"paging\"]");

    /* Pages of two: 2 + 2 + 1, each "next" the last id, null at the end. */
    char seen[8][EM_DEVICE_ID_MAX + 1];
    size_t total = 0;
    char after[EM_DEVICE_ID_MAX + 1] = "";
    for (int page = 0; page < 3; page++) {
        cJSON *a = NULL;
        if (after[0] == '\0')
            assert_int_equal(admin("GET", NULL, &a, "/api/v1/devices?group=paging&limit=2"), 200);
        else
            assert_int_equal(
                admin("GET", NULL, &a, "/api/v1/devices?group=paging&limit=2&after=%s", after),
                200);
        size_t n = list_ids(a, seen + total, 8 - total);
        total += n;
        const cJSON *next = cJSON_GetObjectItemCaseSensitive(a, "next");
        if (page < 2) {
            assert_int_equal(n, 2);
            assert_true(cJSON_IsString(next));
            assert_string_equal(next->valuestring, seen[total - 1]);
            snprintf(after, sizeof(after), "%s", next->valuestring);
        } else {
            assert_int_equal(n, 1);
            assert_true(cJSON_IsNull(next));
        }
        cJSON_Delete(a);
    }
    assert_int_equal(total, 5);
    for (size_t i = 0; i < 5; i++)
        assert_string_equal(seen[i], ids[i]);

    /* A page that ends exactly at the last device says there is no next. */
    cJSON *a = NULL;
    assert_int_equal(admin("GET", NULL, &a, "/api/v1/devices?group=paging&limit=5"), 200);
    assert_int_equal(array_size(data(a)), 5);
    assert_true(cJSON_IsNull(cJSON_GetObjectItemCaseSensitive(a, "next")));
    cJSON_Delete(a);

    /* Type and group together. */
    assert_int_equal(admin("GET", NULL, &a, "/api/v1/devices?group=paging&type=camera"), 200);
    assert_int_equal(list_ids(a, seen, 8), 1);
    assert_string_equal(seen[0], "page-003");
    cJSON_Delete(a);

    /* Bad filters. */
    assert_int_equal(admin("GET", NULL, &a, "/api/v1/devices?type=toaster"), 400);
    assert_error(a, "validation", "type:");
    cJSON_Delete(a);
    assert_int_equal(admin("GET", NULL, &a, "/api/v1/devices?limit=0"), 400);
    assert_error(a, "validation", "limit");
    cJSON_Delete(a);
    assert_int_equal(admin("GET", NULL, &a, "/api/v1/devices?colour=red"), 400);
    assert_error(a, "validation", "colour");
    cJSON_Delete(a);
    assert_int_equal(admin("GET", NULL, &a, "/api/v1/devices?group=no-such-group"), 404);
    assert_error(a, "group_not_found", NULL);
    cJSON_Delete(a);
}

static void test_device_disable_leaves_manager_and_enable_brings_it_back(void **state)
{
    (void)state;
    create_group("toggle-grp");
    create_device("toggle-001", "sensor", "\"groups\":[\"toggle-grp\"]");
    em_device_t dev;

    cJSON *a = NULL;
    assert_int_equal(
        admin("PATCH", "{\"enabled\":false,\"name\":\"Off\"}", &a, "/api/v1/devices/toggle-001"),
        200);
    assert_true(cJSON_IsFalse(cJSON_GetObjectItemCaseSensitive(data(a), "enabled")));
    assert_string_equal(str_of(data(a), "name"), "Off");
    /* Still shown in its group, from the store. */
    assert_int_equal(array_size(cJSON_GetObjectItemCaseSensitive(data(a), "groups")), 1);
    cJSON_Delete(a);
    assert_int_equal(em_manager_get_device(fx_global->mgr, "toggle-001", &dev, NULL),
                     EM_ERR_DEVICE_NOT_FOUND);

    /* A disabled device takes no commands. */
    assert_int_equal(
        admin("POST", "{\"type\":\"wake\"}", &a, "/api/v1/devices/toggle-001/commands"), 409);
    cJSON_Delete(a);

    assert_int_equal(admin("PATCH", "{\"enabled\":true,\"config\":{\"securityLevel\":3}}", &a,
                           "/api/v1/devices/toggle-001"),
                     200);
    assert_int_equal(
        (int)num_of(cJSON_GetObjectItemCaseSensitive(data(a), "config"), "securityLevel"), 3);
    cJSON_Delete(a);
    assert_int_equal(em_manager_get_device(fx_global->mgr, "toggle-001", &dev, NULL), EM_OK);
    assert_string_equal(dev.name, "Off");
    assert_int_equal(dev.config.security_level, 3);
    em_manager_device_cleanup(&dev);
    assert_int_equal(em_registry_group_size(em_manager_registry(fx_global->mgr), "toggle-grp"), 1);

    /* Bad updates change nothing. */
    assert_int_equal(admin("PATCH", "{\"id\":\"other\"}", &a, "/api/v1/devices/toggle-001"), 400);
    assert_error(a, "validation", "id:");
    cJSON_Delete(a);
    assert_int_equal(admin("PATCH", "{\"type\":\"toaster\"}", &a, "/api/v1/devices/toggle-001"),
                     400);
    cJSON_Delete(a);
    assert_int_equal(admin("GET", NULL, &a, "/api/v1/devices/toggle-001"), 200);
    assert_string_equal(str_of(data(a), "type"), "sensor");
    cJSON_Delete(a);
}

static void test_device_delete_removes_it_from_store_and_manager(void **state)
{
    (void)state;
    create_device("gone-001", "generic", NULL);
    cJSON *a = NULL;
    assert_int_equal(admin("DELETE", NULL, &a, "/api/v1/devices/gone-001"), 200);
    assert_true(cJSON_IsTrue(cJSON_GetObjectItemCaseSensitive(a, "success")));
    cJSON_Delete(a);
    assert_int_equal(admin("GET", NULL, NULL, "/api/v1/devices/gone-001"), 404);
    em_device_t dev;
    assert_int_equal(em_manager_get_device(fx_global->mgr, "gone-001", &dev, NULL),
                     EM_ERR_DEVICE_NOT_FOUND);
}

/* GET /devices/{id} keeps stored records in memory for a moment (the API's
 * hottest route): every write through the API must be seen by the next read. */
static void test_device_get_right_after_each_write_shows_it(void **state)
{
    (void)state;
    create_device("fresh-001", "sensor", NULL);
    cJSON *a = NULL;
    assert_int_equal(admin("GET", NULL, &a, "/api/v1/devices/fresh-001"), 200);
    assert_string_equal(str_of(data(a), "name"), "Device fresh-001");
    char created[64];
    snprintf(created, sizeof(created), "%s", str_of(data(a), "createdAt"));
    cJSON_Delete(a);

    assert_int_equal(admin("PATCH", "{\"name\":\"Renamed\",\"config\":{\"autoWake\":true}}", &a,
                           "/api/v1/devices/fresh-001"),
                     200);
    cJSON_Delete(a);
    assert_int_equal(admin("GET", NULL, &a, "/api/v1/devices/fresh-001"), 200);
    assert_string_equal(str_of(data(a), "name"), "Renamed");
    assert_true(cJSON_IsTrue(cJSON_GetObjectItemCaseSensitive(
        cJSON_GetObjectItemCaseSensitive(data(a), "config"), "autoWake")));
    cJSON_Delete(a);

    assert_int_equal(admin("PATCH", "{\"enabled\":false}", &a, "/api/v1/devices/fresh-001"), 200);
    cJSON_Delete(a);
    assert_int_equal(admin("GET", NULL, &a, "/api/v1/devices/fresh-001"), 200);
    assert_true(cJSON_IsFalse(cJSON_GetObjectItemCaseSensitive(data(a), "enabled")));
    cJSON_Delete(a);
    assert_int_equal(admin("PATCH", "{\"enabled\":true}", &a, "/api/v1/devices/fresh-001"), 200);
    cJSON_Delete(a);
    assert_int_equal(admin("GET", NULL, &a, "/api/v1/devices/fresh-001"), 200);
    assert_true(cJSON_IsTrue(cJSON_GetObjectItemCaseSensitive(data(a), "enabled")));
    cJSON_Delete(a);

    assert_int_equal(admin("DELETE", NULL, &a, "/api/v1/devices/fresh-001"), 200);
    cJSON_Delete(a);
    assert_int_equal(admin("GET", NULL, NULL, "/api/v1/devices/fresh-001"), 404);
    /* The same id again is a new device: its own name and creation time. */
    usleep(5000);
    assert_int_equal(admin("POST", "{\"id\":\"fresh-001\",\"name\":\"Second\",\"type\":\"camera\"}",
                           &a, "/api/v1/devices"),
                     201);
    cJSON_Delete(a);
    assert_int_equal(admin("GET", NULL, &a, "/api/v1/devices/fresh-001"), 200);
    assert_string_equal(str_of(data(a), "name"), "Second");
    assert_string_equal(str_of(data(a), "type"), "camera");
    assert_string_not_equal(str_of(data(a), "createdAt"), created);
    cJSON_Delete(a);
}

/* ---- groups ----------------------------------------------------------- */

static void test_groups_members_and_stats(void **state)
{
    (void)state;
    cJSON *a = NULL;
    assert_int_equal(admin("POST", "{\"name\":\"floor-1\"}", &a, "/api/v1/groups"), 201);
    assert_string_equal(str_of(data(a), "name"), "floor-1");
    assert_int_equal((int)num_of(data(a), "members"), 0);
    cJSON_Delete(a);
    assert_int_equal(admin("POST", "{\"name\":\"floor-1\"}", &a, "/api/v1/groups"), 409);
    assert_error(a, "already_exists", NULL);
    cJSON_Delete(a);
    assert_int_equal(admin("POST", "{\"name\":\"x\"}", &a, "/api/v1/groups"), 400);
    assert_error(a, "validation", "name:");
    cJSON_Delete(a);
    assert_int_equal(admin("POST", "{\"name\":\"ok-name\",\"extra\":1}", &a, "/api/v1/groups"),
                     400);
    cJSON_Delete(a);

    create_device("floor-a", "sensor", NULL);
    create_device("floor-b", "sensor", NULL);
    assert_int_equal(admin("PUT", NULL, NULL, "/api/v1/groups/floor-1/members/floor-a"), 200);
    assert_int_equal(admin("PUT", NULL, NULL, "/api/v1/groups/floor-1/members/floor-b"), 200);
    assert_int_equal(admin("PUT", NULL, &a, "/api/v1/groups/floor-1/members/ghost-001"), 404);
    assert_error(a, "device_not_found", NULL);
    cJSON_Delete(a);
    assert_int_equal(admin("PUT", NULL, &a, "/api/v1/groups/no-group/members/floor-a"), 404);
    assert_error(a, "group_not_found", NULL);
    cJSON_Delete(a);

    /* A status for one member, for the statistics. */
    publish("device/floor-a/status",
            "{\"batteryLevel\":80,\"powerMode\":\"normal\",\"connectionStatus\":\"online\"}");
    cJSON *s = NULL;
    for (int i = 0; i < 100; i++) {
        assert_int_equal(admin("GET", NULL, &a, "/api/v1/groups/floor-1/stats"), 200);
        s = data(a);
        if (num_of(s, "online") == 1)
            break;
        cJSON_Delete(a);
        a = NULL;
        em_test_sleep_ms(50);
    }
    assert_non_null(a);
    assert_int_equal((int)num_of(s, "total"), 2);
    assert_int_equal((int)num_of(s, "online"), 1);
    assert_int_equal((int)num_of(s, "averageBattery"), 80);
    assert_int_equal((int)num_of(cJSON_GetObjectItemCaseSensitive(s, "powerModes"), "normal"), 1);
    cJSON_Delete(a);

    assert_int_equal(admin("GET", NULL, &a, "/api/v1/groups/floor-1"), 200);
    cJSON *members = cJSON_GetObjectItemCaseSensitive(data(a), "members");
    assert_int_equal(array_size(members), 2);
    assert_string_equal(cJSON_GetArrayItem(members, 0)->valuestring, "floor-a");
    assert_int_equal((int)num_of(cJSON_GetObjectItemCaseSensitive(data(a), "stats"), "total"), 2);
    cJSON_Delete(a);

    assert_int_equal(admin("GET", NULL, &a, "/api/v1/groups"), 200);
    bool found = false;
    const cJSON *it;
    cJSON_ArrayForEach(it, data(a))
    {
        if (strcmp(str_of(it, "name"), "floor-1") == 0) {
            found = true;
            assert_int_equal((int)num_of(it, "members"), 2);
        }
    }
    assert_true(found);
    cJSON_Delete(a);

    assert_int_equal(admin("DELETE", NULL, NULL, "/api/v1/groups/floor-1/members/floor-b"), 200);
    assert_int_equal(admin("DELETE", NULL, &a, "/api/v1/groups/floor-1/members/floor-b"), 404);
    cJSON_Delete(a);
    assert_int_equal(em_registry_group_size(em_manager_registry(fx_global->mgr), "floor-1"), 1);

    assert_int_equal(admin("DELETE", NULL, NULL, "/api/v1/groups/floor-1"), 200);
    assert_int_equal(admin("GET", NULL, &a, "/api/v1/groups/floor-1"), 404);
    assert_error(a, "group_not_found", NULL);
    cJSON_Delete(a);
    assert_int_equal(admin("GET", NULL, NULL, "/api/v1/groups/floor-1/stats"), 404);
    /* The devices stay. */
    assert_int_equal(admin("GET", NULL, NULL, "/api/v1/devices/floor-a"), 200);
    assert_int_equal(em_registry_group_exists(em_manager_registry(fx_global->mgr), "floor-1"), 0);
}

/* ---- status and telemetry -------------------------------------------- */

static void test_status_published_shows_in_status_and_history(void **state)
{
    (void)state;
    create_device("stat-001", "sensor", NULL);
    cJSON *a = NULL;
    assert_int_equal(admin("GET", NULL, &a, "/api/v1/devices/stat-001/status"), 404);
    assert_error(a, "not_found", NULL);
    cJSON_Delete(a);

    uint64_t before = stat_now(offsetof(em_manager_stats_t, status_accepted));
    publish("device/stat-001/status",
            "{\"batteryLevel\":75,\"powerMode\":\"low_power\",\"connectionStatus\":\"online\","
            "\"firmwareVersion\":\"1.2.3\",\"signalStrength\":-67}");
    publish("device/stat-001/status", "{\"batteryLevel\":74}");
    wait_stat(offsetof(em_manager_stats_t, status_accepted), before + 2);

    assert_int_equal(admin("GET", NULL, &a, "/api/v1/devices/stat-001/status"), 200);
    assert_int_equal((int)num_of(data(a), "batteryLevel"), 74);
    assert_non_null(str_of(data(a), "lastSeen"));
    cJSON_Delete(a);
    assert_int_equal(admin("GET", NULL, &a, "/api/v1/devices/stat-001"), 200);
    assert_int_equal(
        (int)num_of(cJSON_GetObjectItemCaseSensitive(data(a), "status"), "batteryLevel"), 74);
    cJSON_Delete(a);

    flush_store();
    assert_int_equal(admin("GET", NULL, &a, "/api/v1/devices/stat-001/status/history"), 200);
    assert_int_equal(array_size(data(a)), 2);
    assert_int_equal((int)num_of(cJSON_GetArrayItem(data(a), 0), "batteryLevel"), 75);
    assert_string_equal(str_of(cJSON_GetArrayItem(data(a), 0), "powerMode"), "low_power");
    cJSON_Delete(a);
    assert_int_equal(
        admin("GET", NULL, &a, "/api/v1/devices/stat-001/status/history?order=desc&limit=1"), 200);
    assert_int_equal(array_size(data(a)), 1);
    assert_int_equal((int)num_of(cJSON_GetArrayItem(data(a), 0), "batteryLevel"), 74);
    cJSON_Delete(a);

    assert_int_equal(admin("GET", NULL, &a, "/api/v1/devices/stat-001/status/history?order=up"),
                     400);
    assert_error(a, "validation", "order:");
    cJSON_Delete(a);
    assert_int_equal(admin("GET", NULL, &a,
                           "/api/v1/devices/stat-001/status/history?from=2030-01-01T00:00:00Z"
                           "&to=2029-01-01T00:00:00Z"),
                     400);
    assert_error(a, "validation", "from:");
    cJSON_Delete(a);
    assert_int_equal(admin("GET", NULL, &a, "/api/v1/devices/stat-001/status/history?from=soon"),
                     400);
    cJSON_Delete(a);
}

static void test_large_status_is_shown_whole(void **state)
{
    (void)state;
    create_device("stat-big", "sensor", NULL);
    char payload[4096];
    char note[3001];
    memset(note, 'n', sizeof(note) - 1);
    note[sizeof(note) - 1] = '\0';
    snprintf(
        payload, sizeof(payload),
        "{\"batteryLevel\":50,\"errors\":[\"e1\",\"e2\"],\"additionalInfo\":{\"note\":\"%s\"}}",
        note);
    uint64_t before = stat_now(offsetof(em_manager_stats_t, status_accepted));
    publish("device/stat-big/status", payload);
    wait_stat(offsetof(em_manager_stats_t, status_accepted), before + 1);
    cJSON *a = NULL;
    assert_int_equal(admin("GET", NULL, &a, "/api/v1/devices/stat-big/status"), 200);
    cJSON *info = cJSON_GetObjectItemCaseSensitive(data(a), "additionalInfo");
    assert_string_equal(str_of(info, "note"), note);
    assert_int_equal(array_size(cJSON_GetObjectItemCaseSensitive(data(a), "errors")), 2);
    cJSON_Delete(a);
}

static void test_telemetry_raw_and_hour_rollup_count_a_counter_reset(void **state)
{
    (void)state;
    create_group("energy-grp");
    create_device("meter-001", "sensor", "\"groups\":[\"energy-grp\"]");
    /* Four samples in the previous full hour: 100, 110, then a reset to 5,
     * then 8: 10 Wh, 5 Wh counted from zero after the reset (never -105),
     * then 3 Wh: 18 Wh and one reset. */
    int64_t hour = (em_now_ms() / 3600000 - 1) * 3600000;
    static const double energy[] = {100, 110, 5, 8};
    uint64_t before = stat_now(offsetof(em_manager_stats_t, telemetry_accepted));
    for (int i = 0; i < 4; i++) {
        char payload[256];
        snprintf(payload, sizeof(payload),
                 "{\"timestamp\":%lld,\"power_w\":%d,\"energy_wh\":%g,\"voltage_v\":230}",
                 (long long)(hour + 60000 * (i + 1)), 100 * (i + 1), energy[i]);
        publish("device/meter-001/telemetry", payload);
    }
    wait_stat(offsetof(em_manager_stats_t, telemetry_accepted), before + 4);
    flush_store();

    cJSON *a = NULL;
    assert_int_equal(admin("GET", NULL, &a, "/api/v1/devices/meter-001/telemetry"), 200);
    assert_int_equal(array_size(data(a)), 4);
    cJSON *first = cJSON_GetArrayItem(data(a), 0);
    assert_int_equal((int)num_of(first, "energy_wh"), 100);
    assert_int_equal((int)num_of(first, "power_w"), 100);
    assert_non_null(str_of(first, "timestamp"));
    cJSON_Delete(a);

    assert_int_equal(
        admin("GET", NULL, &a, "/api/v1/devices/meter-001/telemetry?order=desc&limit=1"), 200);
    assert_int_equal(array_size(data(a)), 1);
    assert_int_equal((int)num_of(cJSON_GetArrayItem(data(a), 0), "energy_wh"), 8);
    cJSON_Delete(a);

    assert_int_equal(admin("GET", NULL, &a,
                           "/api/v1/devices/meter-001/telemetry?rollup=hour&from=%lld",
                           (long long)hour),
                     200);
    assert_int_equal(array_size(data(a)), 1);
    cJSON *r = cJSON_GetArrayItem(data(a), 0);
    assert_int_equal((int)num_of(r, "samples"), 4);
    assert_true(num_of(r, "energyWh") > 17.99 && num_of(r, "energyWh") < 18.01);
    assert_int_equal((int)num_of(r, "resets"), 1);
    assert_int_equal((int)num_of(r, "powerMaxW"), 400);
    assert_int_equal((int)num_of(r, "powerAvgW"), 250);
    char bucket[EM_TIME_STR_MAX];
    em_time_format(hour, bucket, sizeof(bucket));
    assert_string_equal(str_of(r, "bucket"), bucket);
    cJSON_Delete(a);

    /* The group's energy is the member's. */
    assert_int_equal(
        admin("GET", NULL, &a, "/api/v1/groups/energy-grp/energy?from=%lld", (long long)hour), 200);
    assert_int_equal(array_size(data(a)), 1);
    r = cJSON_GetArrayItem(data(a), 0);
    assert_true(num_of(r, "energyWh") > 17.99 && num_of(r, "energyWh") < 18.01);
    assert_int_equal((int)num_of(r, "devices"), 1);
    cJSON_Delete(a);

    assert_int_equal(admin("GET", NULL, &a, "/api/v1/devices/meter-001/telemetry?rollup=week"),
                     400);
    assert_error(a, "validation", "rollup:");
    cJSON_Delete(a);
    assert_int_equal(admin("GET", NULL, &a, "/api/v1/groups/no-group/energy"), 404);
    cJSON_Delete(a);
}

/* ---- commands --------------------------------------------------------- */

/* Subscribes a persistent MQTT session (QoS 1) to topic and returns at once,
 * so that what is published from then on waits in the broker for
 * receive_one. */
static void subscribe_session(const char *client_id, const char *topic)
{
    char port[16];
    snprintf(port, sizeof(port), "%d", em_test_broker_port(&fx_global->broker));
    const char *argv[] = {"mosquitto_sub", "-h", "127.0.0.1", "-p", port, "-q", "1", "-c", "-i",
                          client_id,       "-t", topic,       "-E", NULL};
    assert_int_equal(em_test_run(argv), 0);
}

/* Receives one message of the session made by subscribe_session; returns a
 * new string (free it). */
static char *receive_one(const char *client_id, const char *topic)
{
    char port[16], out[EM_TEST_PATH_MAX];
    snprintf(port, sizeof(port), "%d", em_test_broker_port(&fx_global->broker));
    path_in(out, sizeof(out), "sub.out");
    unlink(out);
    const char *argv[] = {"mosquitto_sub", "-h", "127.0.0.1", "-p", port, "-q", "1",  "-c", "-i",
                          client_id,       "-t", topic,       "-C", "1",  "-W", "20", NULL};
    pid_t pid = em_test_spawn(argv, out);
    assert_true(pid > 0);
    assert_int_equal(em_test_wait(pid, 30000), 0);
    char *text = read_all(out);
    assert_non_null(text);
    return text;
}

static cJSON *command_get(const char *rid)
{
    cJSON *a = NULL;
    assert_int_equal(admin("GET", NULL, &a, "/api/v1/commands/%s", rid), 200);
    return a;
}

static void test_command_reaches_device_and_its_answer_succeeds(void **state)
{
    (void)state;
    create_device("cmd-001", "actuator", NULL);
    subscribe_session("routes-cmd-001", "device/cmd-001/command");

    cJSON *a = NULL;
    assert_int_equal(admin("POST", "{\"type\":\"sleep\",\"payload\":{\"duration\":60},\"ttl\":120}",
                           &a, "/api/v1/devices/cmd-001/commands"),
                     202);
    cJSON *c = data(a);
    char rid[EM_REQUEST_ID_MAX + 1];
    snprintf(rid, sizeof(rid), "%s", str_of(c, "requestId"));
    assert_int_equal(strlen(rid), EM_REQUEST_ID_LEN);
    assert_string_equal(str_of(c, "deviceId"), "cmd-001");
    assert_string_equal(str_of(c, "type"), "sleep");
    assert_string_equal(str_of(c, "state"), "sent");
    assert_int_equal((int)num_of(cJSON_GetObjectItemCaseSensitive(c, "payload"), "duration"), 60);
    assert_memory_equal(str_of(c, "actor"), "key:", 4);
    assert_true(cJSON_IsNull(cJSON_GetObjectItemCaseSensitive(c, "group")));
    assert_true(cJSON_IsNull(cJSON_GetObjectItemCaseSensitive(c, "response")));
    int64_t created = 0, expires = 0;
    assert_int_equal(
        em_time_parse(str_of(c, "createdAt"), strlen(str_of(c, "createdAt")), &created, NULL),
        EM_OK);
    assert_int_equal(
        em_time_parse(str_of(c, "expiresAt"), strlen(str_of(c, "expiresAt")), &expires, NULL),
        EM_OK);
    assert_true(expires - created == 120000);
    cJSON_Delete(a);

    /* The device got it, under the stored requestId. */
    char *msg = receive_one("routes-cmd-001", "device/cmd-001/command");
    cJSON *wire = cJSON_Parse(msg);
    free(msg);
    assert_non_null(wire);
    assert_string_equal(str_of(wire, "requestId"), rid);
    assert_string_equal(str_of(wire, "type"), "sleep");
    cJSON_Delete(wire);

    a = command_get(rid);
    assert_string_equal(str_of(data(a), "state"), "sent");
    cJSON_Delete(a);

    /* Its answer makes the command succeeded, with the message. */
    char resp[256];
    snprintf(resp, sizeof(resp), "{\"requestId\":\"%s\",\"success\":true,\"message\":\"sleeping\"}",
             rid);
    uint64_t before = stat_now(offsetof(em_manager_stats_t, responses_received));
    publish("device/cmd-001/response", resp);
    wait_stat(offsetof(em_manager_stats_t, responses_received), before + 1);
    flush_store();
    a = command_get(rid);
    assert_string_equal(str_of(data(a), "state"), "succeeded");
    cJSON *r = cJSON_GetObjectItemCaseSensitive(data(a), "response");
    assert_true(cJSON_IsTrue(cJSON_GetObjectItemCaseSensitive(r, "success")));
    assert_string_equal(str_of(r, "message"), "sleeping");
    cJSON_Delete(a);

    /* Listed for the device and overall, with the state filter. */
    assert_int_equal(admin("GET", NULL, &a, "/api/v1/devices/cmd-001/commands?state=succeeded"),
                     200);
    assert_int_equal(array_size(data(a)), 1);
    assert_string_equal(str_of(cJSON_GetArrayItem(data(a), 0), "requestId"), rid);
    cJSON_Delete(a);
    assert_int_equal(admin("GET", NULL, &a, "/api/v1/commands?device=cmd-001&state=sent"), 200);
    assert_int_equal(array_size(data(a)), 0);
    cJSON_Delete(a);
    assert_int_equal(admin("GET", NULL, &a, "/api/v1/commands?state=lost"), 400);
    assert_error(a, "validation", "state:");
    cJSON_Delete(a);
    assert_int_equal(admin("GET", NULL, &a, "/api/v1/commands/req_doesnotexist"), 404);
    assert_error(a, "not_found", NULL);
    cJSON_Delete(a);
}

static void test_command_to_unknown_device_is_404(void **state)
{
    (void)state;
    cJSON *a = NULL;
    assert_int_equal(admin("POST", "{\"type\":\"wake\"}", &a, "/api/v1/devices/ghost-002/commands"),
                     404);
    assert_error(a, "device_not_found", NULL);
    cJSON_Delete(a);
    assert_int_equal(admin("GET", NULL, &a, "/api/v1/commands?device=ghost-002"), 200);
    assert_int_equal(array_size(data(a)), 0);
    cJSON_Delete(a);
}

static void test_command_invalid_payload_is_400_and_nothing_is_stored_or_sent(void **state)
{
    (void)state;
    create_device("cmd-bad", "actuator", NULL);
    uint64_t sent = stat_now(offsetof(em_manager_stats_t, commands_sent));
    static const struct {
        const char *body;
        const char *prefix;
    } cases[] = {
        {"{\"type\":\"reset\"}", NULL},
        {"{\"type\":\"reset\",\"payload\":{\"confirm\":false}}", NULL},
        {"{\"type\":\"set_reporting_interval\",\"payload\":{\"interval\":5}}", "payload.interval"},
        {"{\"type\":\"sleep\",\"payload\":{\"duration\":60,\"extra\":1}}", NULL},
        {"{\"type\":\"explode\"}", "type:"},
        {"{\"payload\":{}}", "type: is required"},
        {"{\"type\":\"wake\",\"payload\":[1]}", "payload:"},
        {"{\"type\":\"wake\",\"ttl\":5}", "ttl:"},
        {"{\"type\":\"wake\",\"ttl\":60.5}", "ttl:"},
        {"{\"type\":\"wake\",\"priority\":1}", "priority:"},
    };
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        cJSON *a = NULL;
        int st = admin("POST", cases[i].body, &a, "/api/v1/devices/cmd-bad/commands");
        if (st != 400)
            fprintf(stderr, "case %zu: %d\n", i, st);
        assert_int_equal(st, 400);
        assert_error(a, "validation", cases[i].prefix);
        cJSON_Delete(a);
    }
    assert_int_equal(stat_now(offsetof(em_manager_stats_t, commands_sent)), sent);
    cJSON *a = NULL;
    assert_int_equal(admin("GET", NULL, &a, "/api/v1/devices/cmd-bad/commands"), 200);
    assert_int_equal(array_size(data(a)), 0);
    cJSON_Delete(a);
}

static void test_command_eleventh_in_a_minute_is_429_and_recorded_failed(void **state)
{
    (void)state;
    create_device("cmd-rate", "actuator", NULL);
    for (int i = 0; i < 10; i++)
        assert_int_equal(
            admin("POST", "{\"type\":\"get_status\"}", NULL, "/api/v1/devices/cmd-rate/commands"),
            202);
    cJSON *a = NULL;
    char retry[32];
    int st = http_full(fx_global->admin, "POST", "/api/v1/devices/cmd-rate/commands",
                       "{\"type\":\"get_status\"}", &a, retry, sizeof(retry));
    assert_int_equal(st, 429);
    assert_error(a, "rate_limit_exceeded", NULL);
    assert_true(retry[0] != '\0');
    cJSON_Delete(a);

    assert_int_equal(admin("GET", NULL, &a, "/api/v1/devices/cmd-rate/commands?state=failed"), 200);
    assert_int_equal(array_size(data(a)), 1);
    cJSON *r = cJSON_GetObjectItemCaseSensitive(cJSON_GetArrayItem(data(a), 0), "response");
    assert_true(cJSON_IsFalse(cJSON_GetObjectItemCaseSensitive(r, "success")));
    assert_non_null(strstr(str_of(r, "message"), "rate_limit_exceeded"));
    cJSON_Delete(a);
    assert_int_equal(admin("GET", NULL, &a, "/api/v1/devices/cmd-rate/commands?limit=100"), 200);
    assert_int_equal(array_size(data(a)), 11);
    cJSON_Delete(a);

    /* In a group command the device over its limit is skipped, and its
     * command recorded failed. */
    create_group("rate-grp");
    assert_int_equal(admin("PUT", NULL, NULL, "/api/v1/groups/rate-grp/members/cmd-rate"), 200);
    assert_int_equal(admin("POST", "{\"type\":\"wake\"}", &a, "/api/v1/groups/rate-grp/commands"),
                     202);
    assert_int_equal((int)num_of(data(a), "sent"), 0);
    assert_int_equal((int)num_of(data(a), "skipped"), 1);
    cJSON *c = cJSON_GetArrayItem(cJSON_GetObjectItemCaseSensitive(data(a), "commands"), 0);
    assert_string_equal(str_of(c, "state"), "failed");
    char rid[EM_REQUEST_ID_MAX + 1];
    snprintf(rid, sizeof(rid), "%s", str_of(c, "requestId"));
    cJSON_Delete(a);
    a = command_get(rid);
    assert_string_equal(str_of(data(a), "state"), "failed");
    assert_string_equal(str_of(data(a), "group"), "rate-grp");
    cJSON_Delete(a);
}

static void test_group_command_goes_to_each_enabled_member(void **state)
{
    (void)state;
    create_group("cmd-grp");
    create_device("gcmd-001", "actuator", "\"groups\":[\"cmd-grp\"]");
    create_device("gcmd-002", "actuator", "\"groups\":[\"cmd-grp\"]");
    create_device("gcmd-003", "actuator", "\"groups\":[\"cmd-grp\"],\"enabled\":false");
    subscribe_session("routes-gcmd-002", "device/gcmd-002/command");

    cJSON *a = NULL;
    assert_int_equal(admin("POST", "{\"type\":\"wake\"}", &a, "/api/v1/groups/cmd-grp/commands"),
                     202);
    cJSON *d = data(a);
    assert_int_equal((int)num_of(d, "sent"), 2);
    assert_int_equal((int)num_of(d, "skipped"), 0);
    cJSON *list = cJSON_GetObjectItemCaseSensitive(d, "commands");
    assert_int_equal(array_size(list), 2);
    char rid2[EM_REQUEST_ID_MAX + 1] = "";
    const cJSON *it;
    cJSON_ArrayForEach(it, list)
    {
        assert_string_equal(str_of(it, "state"), "sent");
        if (strcmp(str_of(it, "deviceId"), "gcmd-002") == 0)
            snprintf(rid2, sizeof(rid2), "%s", str_of(it, "requestId"));
    }
    assert_true(rid2[0] != '\0');
    cJSON_Delete(a);

    char *msg = receive_one("routes-gcmd-002", "device/gcmd-002/command");
    assert_non_null(strstr(msg, rid2));
    free(msg);

    a = command_get(rid2);
    assert_string_equal(str_of(data(a), "group"), "cmd-grp");
    cJSON_Delete(a);
    assert_int_equal(admin("GET", NULL, &a, "/api/v1/commands?group=cmd-grp"), 200);
    assert_int_equal(array_size(data(a)), 2);
    cJSON_Delete(a);

    assert_int_equal(admin("POST", "{\"type\":\"wake\"}", &a, "/api/v1/groups/no-group/commands"),
                     404);
    assert_error(a, "group_not_found", NULL);
    cJSON_Delete(a);
    assert_int_equal(admin("POST", "{\"type\":\"reset\"}", &a, "/api/v1/groups/cmd-grp/commands"),
                     400);
    cJSON_Delete(a);
}

/* ---- events ----------------------------------------------------------- */

static void test_events_list_filters_and_pages_backwards(void **state)
{
    (void)state;
    create_device("ev-001", "sensor", NULL);
    create_device("ev-002", "sensor", NULL);
    assert_int_equal(admin("DELETE", NULL, NULL, "/api/v1/devices/ev-002"), 200);

    cJSON *a = NULL;
    assert_int_equal(admin("GET", NULL, &a, "/api/v1/events?kind=audit&device=ev-002"), 200);
    assert_int_equal(array_size(data(a)), 2);
    cJSON *newest = cJSON_GetArrayItem(data(a), 0);
    assert_string_equal(str_of(newest, "type"), "device_deleted");
    assert_string_equal(str_of(newest, "kind"), "audit");
    assert_string_equal(str_of(newest, "deviceId"), "ev-002");
    assert_memory_equal(str_of(newest, "actor"), "key:", 4);
    assert_string_equal(str_of(cJSON_GetArrayItem(data(a), 1), "type"), "device_created");
    assert_true(cJSON_IsNull(cJSON_GetObjectItemCaseSensitive(a, "next")));
    cJSON_Delete(a);

    assert_int_equal(admin("GET", NULL, &a, "/api/v1/events?type=device_created&device=ev-001"),
                     200);
    assert_int_equal(array_size(data(a)), 1);
    cJSON_Delete(a);
    assert_int_equal(admin("GET", NULL, &a, "/api/v1/events?kind=audit&severity=critical"), 200);
    assert_int_equal(array_size(data(a)), 0);
    cJSON_Delete(a);

    /* One at a time, backwards, with the cursor. */
    assert_int_equal(admin("GET", NULL, &a, "/api/v1/events?kind=audit&device=ev-002&limit=1"),
                     200);
    assert_int_equal(array_size(data(a)), 1);
    assert_string_equal(str_of(cJSON_GetArrayItem(data(a), 0), "type"), "device_deleted");
    const char *next = str_of(a, "next");
    assert_non_null(next);
    char cursor[32];
    snprintf(cursor, sizeof(cursor), "%s", next);
    cJSON_Delete(a);
    assert_int_equal(
        admin("GET", NULL, &a, "/api/v1/events?kind=audit&device=ev-002&limit=1&before=%s", cursor),
        200);
    assert_int_equal(array_size(data(a)), 1);
    assert_string_equal(str_of(cJSON_GetArrayItem(data(a), 0), "type"), "device_created");
    assert_true(cJSON_IsNull(cJSON_GetObjectItemCaseSensitive(a, "next")));
    cJSON_Delete(a);

    assert_int_equal(admin("GET", NULL, &a, "/api/v1/events?kind=gossip"), 400);
    assert_error(a, "validation", "kind:");
    cJSON_Delete(a);
    assert_int_equal(admin("GET", NULL, &a, "/api/v1/events?severity=huge"), 400);
    assert_error(a, "validation", "severity:");
    cJSON_Delete(a);
    assert_int_equal(admin("GET", NULL, &a, "/api/v1/events?since=1"), 400);
    cJSON_Delete(a);
}

/* ---- roles -------------------------------------------------------------- */

/* Runs last: it stops the broker. */
static void test_command_without_broker_is_503_and_recorded_failed(void **state)
{
    (void)state;
    create_device("cmd-off", "actuator", NULL);
    create_group("off-grp");
    assert_int_equal(admin("PUT", NULL, NULL, "/api/v1/groups/off-grp/members/cmd-off"), 200);
    assert_int_equal(em_test_broker_stop(&fx_global->broker), 0);
    for (int i = 0; i < 200 && em_manager_is_connected(fx_global->mgr); i++)
        em_test_sleep_ms(50);
    assert_false(em_manager_is_connected(fx_global->mgr));

    cJSON *a = NULL;
    assert_int_equal(admin("POST", "{\"type\":\"wake\"}", &a, "/api/v1/devices/cmd-off/commands"),
                     503);
    assert_error(a, "not_connected", NULL);
    cJSON_Delete(a);
    assert_int_equal(admin("GET", NULL, &a, "/api/v1/devices/cmd-off/commands"), 200);
    assert_int_equal(array_size(data(a)), 1);
    cJSON *c = cJSON_GetArrayItem(data(a), 0);
    assert_string_equal(str_of(c, "state"), "failed");
    assert_non_null(strstr(str_of(cJSON_GetObjectItemCaseSensitive(c, "response"), "message"),
                           "not_connected"));
    cJSON_Delete(a);

    /* A group command is refused whole, and nothing is recorded. */
    assert_int_equal(admin("POST", "{\"type\":\"wake\"}", &a, "/api/v1/groups/off-grp/commands"),
                     503);
    assert_error(a, "not_connected", NULL);
    cJSON_Delete(a);
    assert_int_equal(admin("GET", NULL, &a, "/api/v1/commands?group=off-grp"), 200);
    assert_int_equal(array_size(data(a)), 0);
    cJSON_Delete(a);
}

static void test_device_key_reads_its_own_device_only(void **state)
{
    (void)state;
    create_device("own-001", "sensor", NULL);
    create_device("own-002", "sensor", NULL);
    char key[EM_API_KEY_LEN + 1];
    make_key("own-001-key", "device", "own-001", key);

    cJSON *a = NULL;
    assert_int_equal(http(key, "GET", "/api/v1/devices/own-001", NULL, &a), 200);
    assert_string_equal(str_of(data(a), "id"), "own-001");
    cJSON_Delete(a);
    assert_int_equal(http(key, "GET", "/api/v1/devices/own-001/commands", NULL, NULL), 200);
    assert_int_equal(http(key, "GET", "/api/v1/devices/own-002", NULL, &a), 403);
    assert_error(a, "permission_denied", NULL);
    cJSON_Delete(a);
    assert_int_equal(http(key, "GET", "/api/v1/devices/own-002/status", NULL, NULL), 403);
    assert_int_equal(http(key, "GET", "/api/v1/devices", NULL, NULL), 403);
    assert_int_equal(
        http(key, "POST", "/api/v1/devices/own-001/commands", "{\"type\":\"wake\"}", NULL), 403);
    assert_int_equal(http(key, "DELETE", "/api/v1/devices/own-001", NULL, NULL), 403);
    assert_int_equal(admin("GET", NULL, NULL, "/api/v1/devices/own-001"), 200);
}

static void test_viewer_reads_but_cannot_write(void **state)
{
    (void)state;
    char key[EM_API_KEY_LEN + 1];
    make_key("routes-viewer", "viewer", NULL, key);
    assert_int_equal(http(key, "GET", "/api/v1/devices", NULL, NULL), 200);
    assert_int_equal(http(key, "GET", "/api/v1/groups", NULL, NULL), 200);
    assert_int_equal(http(key, "GET", "/api/v1/events", NULL, NULL), 200);
    assert_int_equal(http(key, "POST", "/api/v1/devices",
                          "{\"id\":\"view-001\",\"name\":\"x\",\"type\":\"sensor\"}", NULL),
                     403);
    assert_int_equal(http(key, "POST", "/api/v1/groups", "{\"name\":\"viewers\"}", NULL), 403);
    assert_int_equal(admin("GET", NULL, NULL, "/api/v1/devices/view-001"), 404);
}

int main(void)
{
    signal(SIGPIPE, SIG_IGN);
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_device_create_then_get_shows_every_field),
        cmocka_unit_test(test_device_create_duplicate_is_409),
        cmocka_unit_test(test_device_create_bad_input_is_400_naming_the_field),
        cmocka_unit_test(test_device_create_in_unknown_group_is_404_and_stores_nothing),
        cmocka_unit_test(test_escaped_nul_in_a_string_is_400_not_truncated),
        cmocka_unit_test(test_device_unknown_is_404_on_every_route),
        cmocka_unit_test(test_device_list_filters_and_pages),
        cmocka_unit_test(test_device_disable_leaves_manager_and_enable_brings_it_back),
        cmocka_unit_test(test_device_delete_removes_it_from_store_and_manager),
        cmocka_unit_test(test_device_get_right_after_each_write_shows_it),
        cmocka_unit_test(test_groups_members_and_stats),
        cmocka_unit_test(test_status_published_shows_in_status_and_history),
        cmocka_unit_test(test_large_status_is_shown_whole),
        cmocka_unit_test(test_telemetry_raw_and_hour_rollup_count_a_counter_reset),
        cmocka_unit_test(test_command_reaches_device_and_its_answer_succeeds),
        cmocka_unit_test(test_command_to_unknown_device_is_404),
        cmocka_unit_test(test_command_invalid_payload_is_400_and_nothing_is_stored_or_sent),
        cmocka_unit_test(test_command_eleventh_in_a_minute_is_429_and_recorded_failed),
        cmocka_unit_test(test_group_command_goes_to_each_enabled_member),
        cmocka_unit_test(test_events_list_filters_and_pages_backwards),
        cmocka_unit_test(test_device_key_reads_its_own_device_only),
        cmocka_unit_test(test_viewer_reads_but_cannot_write),
        cmocka_unit_test(test_command_without_broker_is_503_and_recorded_failed),
    };
    return cmocka_run_group_tests(tests, group_setup, group_teardown);
}
