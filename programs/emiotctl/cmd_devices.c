/*
 * emiotctl - cmd_devices.c: `emiotctl devices ...`.
 *
 * Every argument is checked here with the library's own rules (ids, names,
 * types, times, JSON) before anything is sent, so a typo is a clear message
 * and exit 7, not a round trip.
 */
#include <stdlib.h>
#include <string.h>

#include "ctl.h"

enum {
    O_GROUP = 1000,
    O_TYPE,
    O_LIMIT,
    O_AFTER,
    O_ALL,
    O_NAME,
    O_CONFIG,
    O_ENABLE,
    O_DISABLE,
    O_FROM,
    O_TO,
    O_ROLLUP,
    O_ORDER
};

#define GROUPS_MAX 64

typedef struct opts {
    const char *group, *type, *after, *name, *config, *from, *to, *rollup, *order;
    const char *groups[GROUPS_MAX];
    int ngroups;
    long limit;
    bool all;
    int enabled; /* -1: not given */
} opts_t;

static const char *const device_types[] = {"sensor",  "camera",  "actuator",
                                           "gateway", "generic", NULL};
static const char *const rollups[] = {"raw", "hour", "day", NULL};
static const char *const orders[] = {"asc", "desc", NULL};

static int on_opt(void *ud, int id, const char *arg)
{
    opts_t *o = ud;
    switch (id) {
    case O_GROUP:
        if (o->ngroups >= GROUPS_MAX) {
            ctl_err("validation", "--group: at most %d groups", GROUPS_MAX);
            return CTL_INVALID;
        }
        o->groups[o->ngroups++] = arg;
        o->group = arg;
        return ctl_check_group(arg);
    case O_TYPE:
        o->type = arg;
        return ctl_check_one_of("--type", arg, device_types);
    case O_LIMIT:
        return ctl_parse_long("--limit", arg, 1, 1000, &o->limit);
    case O_AFTER:
        o->after = arg;
        return ctl_check_device_id(arg);
    case O_ALL:
        o->all = true;
        return 0;
    case O_NAME:
        o->name = arg;
        return ctl_check_name("--name", arg);
    case O_CONFIG:
        o->config = arg;
        return 0;
    case O_ENABLE:
    case O_DISABLE:
        if (o->enabled != -1 && o->enabled != (id == O_ENABLE)) {
            ctl_err(NULL, "--enable and --disable exclude each other");
            return CTL_USAGE;
        }
        o->enabled = id == O_ENABLE;
        return 0;
    case O_FROM:
        o->from = arg;
        return ctl_check_time("--from", arg);
    case O_TO:
        o->to = arg;
        return ctl_check_time("--to", arg);
    case O_ROLLUP:
        o->rollup = arg;
        return ctl_check_one_of("--rollup", arg, rollups);
    case O_ORDER:
        o->order = arg;
        return ctl_check_one_of("--order", arg, orders);
    default:
        return CTL_USAGE;
    }
}

#define OPT_GROUP                                                                                  \
    {                                                                                              \
        "group", required_argument, NULL, O_GROUP                                                  \
    }
#define OPT_TYPE                                                                                   \
    {                                                                                              \
        "type", required_argument, NULL, O_TYPE                                                    \
    }
#define OPT_LIMIT                                                                                  \
    {                                                                                              \
        "limit", required_argument, NULL, O_LIMIT                                                  \
    }
#define OPT_AFTER                                                                                  \
    {                                                                                              \
        "after", required_argument, NULL, O_AFTER                                                  \
    }
#define OPT_ALL                                                                                    \
    {                                                                                              \
        "all", no_argument, NULL, O_ALL                                                            \
    }
#define OPT_NAME                                                                                   \
    {                                                                                              \
        "name", required_argument, NULL, O_NAME                                                    \
    }
#define OPT_CONFIG                                                                                 \
    {"config", required_argument, NULL, O_CONFIG},                                                 \
    {                                                                                              \
        "config-json", required_argument, NULL, O_CONFIG                                           \
    }
#define OPT_ENABLE                                                                                 \
    {                                                                                              \
        "enable", no_argument, NULL, O_ENABLE                                                      \
    }
#define OPT_DISABLE                                                                                \
    {                                                                                              \
        "disable", no_argument, NULL, O_DISABLE                                                    \
    }
#define OPT_FROM                                                                                   \
    {                                                                                              \
        "from", required_argument, NULL, O_FROM                                                    \
    }
#define OPT_TO                                                                                     \
    {                                                                                              \
        "to", required_argument, NULL, O_TO                                                        \
    }
#define OPT_ROLLUP                                                                                 \
    {                                                                                              \
        "rollup", required_argument, NULL, O_ROLLUP                                                \
    }
#define OPT_ORDER                                                                                  \
    {                                                                                              \
        "order", required_argument, NULL, O_ORDER                                                  \
    }
#define OPT_END                                                                                    \
    {                                                                                              \
        NULL, 0, NULL, 0                                                                           \
    }

static const ctl_col_t device_cols[] = {
    {"ID", "id", COL_STR},
    {"Name", "name", COL_STR},
    {"Type", "type", COL_STR},
    {"Groups", "groups", COL_LIST},
    {"Enabled", "enabled", COL_STR},
    {"Connection", "status.connectionStatus", COL_STR},
    {"Battery", "status.batteryLevel", COL_STR},
    {"Power", "status.powerMode", COL_STR},
    {"Firmware", "status.firmwareVersion", COL_STR},
    {"Last seen", "status.lastSeen", COL_TIME},
};

static const ctl_col_t device_detail_cols[] = {
    {"ID", "id", COL_STR},
    {"Name", "name", COL_STR},
    {"Type", "type", COL_STR},
    {"Groups", "groups", COL_LIST},
    {"Enabled", "enabled", COL_STR},
    {"Config", "config", COL_JSON},
    {"Connection", "status.connectionStatus", COL_STR},
    {"Battery", "status.batteryLevel", COL_STR},
    {"Power mode", "status.powerMode", COL_STR},
    {"Firmware", "status.firmwareVersion", COL_STR},
    {"Signal", "status.signalStrength", COL_STR},
    {"Last seen", "status.lastSeen", COL_TIME},
    {"Status", "status", COL_JSON},
    {"Created", "createdAt", COL_TIME},
    {"Updated", "updatedAt", COL_TIME},
};

static const ctl_col_t status_cols[] = {
    {"Time", "time", COL_TIME},
    {"Received", "receivedAt", COL_TIME},
    {"Last seen", "lastSeen", COL_TIME},
    {"Battery", "batteryLevel", COL_STR},
    {"Power mode", "powerMode", COL_STR},
    {"Connection", "connectionStatus", COL_STR},
    {"Firmware", "firmwareVersion", COL_STR},
    {"Signal", "signalStrength", COL_STR},
    {"Errors", "errors", COL_LIST},
};

static const ctl_col_t telemetry_cols[] = {
    {"Time", "timestamp", COL_TIME},       {"Bucket", "bucket", COL_TIME},
    {"Samples", "samples", COL_STR},       {"Devices", "devices", COL_STR},
    {"Energy Wh", "energyWh", COL_STR},    {"Power avg W", "powerAvgW", COL_STR},
    {"Power max W", "powerMaxW", COL_STR}, {"Resets", "resets", COL_STR},
    {"Power W", "power_w", COL_STR},       {"Energy Wh", "energy_wh", COL_STR},
    {"Voltage V", "voltage_v", COL_STR},   {"Current A", "current_a", COL_STR},
    {"Temp C", "temperature", COL_STR},    {"Humidity", "humidity", COL_STR},
    {"Battery", "battery", COL_STR},
};

const ctl_view_t ctl_device_view = CTL_VIEW(device_detail_cols);
const ctl_view_t ctl_telemetry_view = CTL_VIEW(telemetry_cols);

static void opts_init(opts_t *o)
{
    memset(o, 0, sizeof *o);
    o->enabled = -1;
}

/* /api/v1/devices/ID[suffix] */
static void device_path(ctl_buf_t *b, const char *id, const char *suffix)
{
    ctl_buf_init(b, "/api/v1/devices");
    ctl_buf_seg(b, id);
    ctl_buf_add(b, suffix);
}

static int run_list(ctl_t *c, const ctl_cmd_t *cmd, int argc, char **argv)
{
    static const struct option opts[] = {OPT_GROUP, OPT_TYPE, OPT_LIMIT,
                                         OPT_AFTER, OPT_ALL,  OPT_END};
    opts_t o;
    ctl_args_t a;
    opts_init(&o);
    int rc = ctl_parse(c, cmd, argc, argv, opts, on_opt, &o, &a);
    if (rc != 0)
        return rc;
    ctl_buf_t b;
    ctl_buf_init(&b, "/api/v1/devices");
    ctl_buf_query(&b, "group", o.group);
    ctl_buf_query(&b, "type", o.type);
    if (o.limit > 0)
        ctl_buf_query_long(&b, "limit", o.limit);
    cJSON *items;
    char *next;
    rc = ctl_get_list(c, &b, "after", o.after, o.all, &items, &next);
    if (rc == 0) {
        static const ctl_view_t view = CTL_VIEW(device_cols);
        ctl_print_list(c, items, &view, next, "--after");
    }
    cJSON_Delete(items);
    free(next);
    return rc;
}

/* get, status, delete: one id, no options. */
static int run_one(ctl_t *c, const ctl_cmd_t *cmd, int argc, char **argv, ctl_args_t *a)
{
    int rc = ctl_parse(c, cmd, argc, argv, NULL, NULL, NULL, a);
    if (rc == 0)
        rc = ctl_check_device_id(a->pos[0]);
    return rc;
}

static int run_get(ctl_t *c, const ctl_cmd_t *cmd, int argc, char **argv)
{
    ctl_args_t a;
    int rc = run_one(c, cmd, argc, argv, &a);
    if (rc != 0)
        return rc;
    ctl_buf_t b;
    device_path(&b, a.pos[0], "");
    const char *path = ctl_buf_get(&b);
    return path == NULL ? CTL_INVALID : ctl_call(c, "GET", path, NULL, &ctl_device_view);
}

static int run_status(ctl_t *c, const ctl_cmd_t *cmd, int argc, char **argv)
{
    ctl_args_t a;
    int rc = run_one(c, cmd, argc, argv, &a);
    if (rc != 0)
        return rc;
    ctl_buf_t b;
    device_path(&b, a.pos[0], "/status");
    static const ctl_view_t view = CTL_VIEW(status_cols);
    const char *path = ctl_buf_get(&b);
    return path == NULL ? CTL_INVALID : ctl_call(c, "GET", path, NULL, &view);
}

static int run_delete(ctl_t *c, const ctl_cmd_t *cmd, int argc, char **argv)
{
    ctl_args_t a;
    int rc = run_one(c, cmd, argc, argv, &a);
    if (rc != 0)
        return rc;
    ctl_buf_t b;
    device_path(&b, a.pos[0], "");
    char done[128];
    snprintf(done, sizeof done, "deleted device %s", a.pos[0]);
    const char *path = ctl_buf_get(&b);
    return path == NULL ? CTL_INVALID : ctl_call_done(c, "DELETE", path, NULL, done);
}

/* Adds "config" from --config-json to body. */
static int add_config(cJSON *body, const char *text)
{
    if (text == NULL)
        return 0;
    cJSON *cfg = NULL;
    int rc = ctl_parse_json_object("--config", text, &cfg);
    if (rc == 0)
        cJSON_AddItemToObject(body, "config", cfg);
    return rc;
}

static int run_create(ctl_t *c, const ctl_cmd_t *cmd, int argc, char **argv)
{
    static const struct option opts[] = {OPT_NAME,   OPT_TYPE,    OPT_GROUP, OPT_CONFIG,
                                         OPT_ENABLE, OPT_DISABLE, OPT_END};
    opts_t o;
    ctl_args_t a;
    opts_init(&o);
    int rc = ctl_parse(c, cmd, argc, argv, opts, on_opt, &o, &a);
    if (rc != 0)
        return rc;
    if ((rc = ctl_check_device_id(a.pos[0])) != 0)
        return rc;
    if (o.name == NULL || o.type == NULL) {
        ctl_err(NULL, "devices create needs --name and --type");
        return CTL_USAGE;
    }
    cJSON *body = cJSON_CreateObject();
    if (body == NULL)
        return CTL_ERROR;
    cJSON_AddStringToObject(body, "id", a.pos[0]);
    cJSON_AddStringToObject(body, "name", o.name);
    cJSON_AddStringToObject(body, "type", o.type);
    if (o.ngroups > 0) {
        cJSON *g = cJSON_AddArrayToObject(body, "groups");
        for (int i = 0; g != NULL && i < o.ngroups; i++)
            cJSON_AddItemToArray(g, cJSON_CreateString(o.groups[i]));
    }
    if (o.enabled != -1)
        cJSON_AddBoolToObject(body, "enabled", o.enabled);
    rc = add_config(body, o.config);
    if (rc == 0)
        rc = ctl_call(c, "POST", "/api/v1/devices", body, &ctl_device_view);
    cJSON_Delete(body);
    return rc;
}

static int run_update(ctl_t *c, const ctl_cmd_t *cmd, int argc, char **argv)
{
    static const struct option opts[] = {OPT_NAME,   OPT_TYPE,    OPT_CONFIG,
                                         OPT_ENABLE, OPT_DISABLE, OPT_END};
    opts_t o;
    ctl_args_t a;
    opts_init(&o);
    int rc = ctl_parse(c, cmd, argc, argv, opts, on_opt, &o, &a);
    if (rc != 0)
        return rc;
    if ((rc = ctl_check_device_id(a.pos[0])) != 0)
        return rc;
    if (o.name == NULL && o.type == NULL && o.config == NULL && o.enabled == -1) {
        ctl_err(NULL, "nothing to change: give --name, --type, --config, --enable or "
                      "--disable");
        return CTL_USAGE;
    }
    cJSON *body = cJSON_CreateObject();
    if (body == NULL)
        return CTL_ERROR;
    if (o.name != NULL)
        cJSON_AddStringToObject(body, "name", o.name);
    if (o.type != NULL)
        cJSON_AddStringToObject(body, "type", o.type);
    if (o.enabled != -1)
        cJSON_AddBoolToObject(body, "enabled", o.enabled);
    rc = add_config(body, o.config);
    ctl_buf_t b;
    device_path(&b, a.pos[0], "");
    const char *path = ctl_buf_get(&b);
    if (rc == 0)
        rc = path == NULL ? CTL_INVALID : ctl_call(c, "PATCH", path, body, &ctl_device_view);
    cJSON_Delete(body);
    return rc;
}

/* history and telemetry: a time range of one device. */
static int run_series(ctl_t *c, const ctl_cmd_t *cmd, int argc, char **argv, bool telemetry)
{
    static const struct option hist_opts[] = {OPT_FROM, OPT_TO, OPT_LIMIT, OPT_ORDER, OPT_END};
    static const struct option tele_opts[] = {OPT_FROM,  OPT_TO,     OPT_LIMIT,
                                              OPT_ORDER, OPT_ROLLUP, OPT_END};
    opts_t o;
    ctl_args_t a;
    opts_init(&o);
    int rc = ctl_parse(c, cmd, argc, argv, telemetry ? tele_opts : hist_opts, on_opt, &o, &a);
    if (rc != 0)
        return rc;
    if ((rc = ctl_check_device_id(a.pos[0])) != 0)
        return rc;
    ctl_buf_t b;
    device_path(&b, a.pos[0], telemetry ? "/telemetry" : "/status/history");
    ctl_buf_query(&b, "from", o.from);
    ctl_buf_query(&b, "to", o.to);
    if (o.limit > 0)
        ctl_buf_query_long(&b, "limit", o.limit);
    ctl_buf_query(&b, "order", o.order);
    ctl_buf_query(&b, "rollup", o.rollup);
    static const ctl_view_t hview = CTL_VIEW(status_cols);
    const char *path = ctl_buf_get(&b);
    if (path == NULL)
        return CTL_INVALID;
    return ctl_call(c, "GET", path, NULL, telemetry ? &ctl_telemetry_view : &hview);
}

static int run_history(ctl_t *c, const ctl_cmd_t *cmd, int argc, char **argv)
{
    return run_series(c, cmd, argc, argv, false);
}

static int run_telemetry(ctl_t *c, const ctl_cmd_t *cmd, int argc, char **argv)
{
    return run_series(c, cmd, argc, argv, true);
}

const ctl_cmd_t ctl_devices_cmds[] = {
    {"devices", "list", run_list, 0, 0,
     "devices list [--group G] [--type T] [--limit N] [--after ID] [--all]", "List devices",
     "  --group G      only members of group G\n"
     "  --type T       only devices of type T (sensor, camera, actuator, gateway, generic)\n"
     "  --limit N      devices per page, 1-1000 (default 100)\n"
     "  --after ID     start after device ID (the cursor a previous page printed)\n"
     "  --all          fetch every page\n"},
    {"devices", "get", run_get, 1, 1, "devices get ID", "Show one device", NULL},
    {"devices", "create", run_create, 1, 1, "devices create ID --name N --type T [--group G]...",
     "Register a device",
     "  --name N           display name, 1-100 characters (required)\n"
     "  --type T           sensor, camera, actuator, gateway or generic (required)\n"
     "  --group G          put the device in group G (repeatable)\n"
     "  --config JSON     the device configuration, e.g. '{\"reportingInterval\":60}'\n"
     "  --disable          register it disabled (--enable: enabled, the default)\n"
     "  (here --config is the device's; a settings file goes before the command:\n"
     "   emiotctl --config FILE devices create ...)\n"},
    {"devices", "update", run_update, 1, 1, "devices update ID [--name N] [--type T] ...",
     "Change a device",
     "  --name N           new display name\n"
     "  --type T           new type\n"
     "  --config JSON     new configuration (a JSON object)\n"
     "  --enable, --disable\n"
     "  (here --config is the device's; a settings file goes before the command)\n"},
    {"devices", "delete", run_delete, 1, 1, "devices delete ID", "Remove a device", NULL},
    {"devices", "status", run_status, 1, 1, "devices status ID", "Show a device's latest status",
     NULL},
    {"devices", "history", run_history, 1, 1, "devices history ID [--from T] [--to T]",
     "Show a device's status history",
     "  --from T, --to T   time range: RFC 3339 (2026-11-22T10:00:00Z) or epoch ms\n"
     "  --limit N          at most N entries, 1-1000\n"
     "  --order asc|desc\n"},
    {"devices", "telemetry", run_telemetry, 1, 1,
     "devices telemetry ID [--from T] [--to T] [--rollup R]", "Show a device's telemetry",
     "  --from T, --to T   time range: RFC 3339 or epoch ms\n"
     "  --rollup R         raw (samples, the default), hour or day (energy per bucket)\n"
     "  --limit N          at most N rows, 1-1000\n"
     "  --order asc|desc\n"},
    {NULL, NULL, NULL, 0, 0, NULL, NULL, NULL},
};
