/*
 * emiotctl - cmd_commands.c: `emiotctl commands ...`.
 *
 * A command's type and payload are checked with the library's rules (the
 * ones the daemon and the devices apply) before it is sent. With --wait the
 * command is polled until it reaches a final state (succeeded, failed,
 * expired) or the wait runs out; the exit code then says how it ended.
 */
#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "ctl.h"
#include "emiot/clock.h"
#include "emiot/command.h"

enum { O_PAYLOAD = 1000, O_TTL, O_WAIT, O_DEVICE, O_GROUP, O_STATE, O_FROM, O_TO, O_LIMIT };

#define POLL_FIRST_MS 200
#define POLL_MAX_MS   2000
#define WAIT_MAX_S    3600

typedef struct opts {
    const char *payload, *device, *group, *state, *from, *to;
    long ttl, wait, limit;
} opts_t;

static const char *const states[] = {"queued",  "sent", "acknowledged", "succeeded", "failed",
                                     "expired", NULL};

static int on_opt(void *ud, int id, const char *arg)
{
    opts_t *o = ud;
    switch (id) {
    case O_PAYLOAD:
        o->payload = arg;
        return 0;
    case O_TTL:
        return ctl_parse_long("--ttl", arg, 10, 86400, &o->ttl);
    case O_WAIT:
        return ctl_parse_long("--wait", arg, 1, WAIT_MAX_S, &o->wait);
    case O_DEVICE:
        o->device = arg;
        return ctl_check_device_id(arg);
    case O_GROUP:
        o->group = arg;
        return ctl_check_group(arg);
    case O_STATE:
        o->state = arg;
        return ctl_check_one_of("--state", arg, states);
    case O_FROM:
        o->from = arg;
        return ctl_check_time("--from", arg);
    case O_TO:
        o->to = arg;
        return ctl_check_time("--to", arg);
    case O_LIMIT:
        return ctl_parse_long("--limit", arg, 1, 1000, &o->limit);
    default:
        return CTL_USAGE;
    }
}

static const ctl_col_t command_cols[] = {
    {"Request ID", "requestId", COL_STR}, {"Device", "deviceId", COL_STR},
    {"Group", "group", COL_STR},          {"Type", "type", COL_STR},
    {"State", "state", COL_STR},          {"Actor", "actor", COL_STR},
    {"Created", "createdAt", COL_TIME},   {"Answer", "response.message", COL_STR},
};

static const ctl_col_t command_detail_cols[] = {
    {"Request ID", "requestId", COL_STR}, {"Device", "deviceId", COL_STR},
    {"Group", "group", COL_STR},          {"Type", "type", COL_STR},
    {"Payload", "payload", COL_JSON},     {"State", "state", COL_STR},
    {"Actor", "actor", COL_STR},          {"Created", "createdAt", COL_TIME},
    {"Updated", "updatedAt", COL_TIME},   {"Expires", "expiresAt", COL_TIME},
    {"Response", "response", COL_JSON},
};

static const ctl_view_t list_view = CTL_VIEW(command_cols);
static const ctl_view_t detail_view = CTL_VIEW(command_detail_cols);

static bool is_final(const char *state)
{
    return state != NULL && (strcmp(state, "succeeded") == 0 || strcmp(state, "failed") == 0 ||
                             strcmp(state, "expired") == 0);
}

static const char *str_of(const cJSON *o, const char *name)
{
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(o, name);
    return cJSON_IsString(v) ? v->valuestring : NULL;
}

static void sleep_ms(long ms)
{
    struct timespec ts = {ms / 1000, (ms % 1000) * 1000000L};
    while (nanosleep(&ts, &ts) != 0 && errno == EINTR)
        continue;
}

/* GET /api/v1/commands/RID into *out (owned). */
static int fetch(ctl_t *c, const char *rid, cJSON **out)
{
    ctl_buf_t b;
    ctl_buf_init(&b, "/api/v1/commands");
    ctl_buf_seg(&b, rid);
    const char *path = ctl_buf_get(&b);
    if (path == NULL)
        return CTL_INVALID;
    ctl_resp_t r;
    int rc = ctl_request(c, "GET", path, NULL, true, false, &r);
    if (rc == 0) {
        *out = cJSON_Duplicate(r.data, 1);
        if (*out == NULL) {
            ctl_err("out_of_memory", "out of memory");
            rc = CTL_ERROR;
        }
    }
    ctl_resp_cleanup(&r);
    return rc;
}

/*
 * Polls every command of cmds (an array of objects with requestId) until all
 * are final or wait_s runs out, replacing each with its latest state.
 * Returns 0 when all succeeded, CTL_ERROR (after saying which) when one
 * failed, expired or was still pending, or a request's exit code.
 */
static int wait_final(ctl_t *c, cJSON *cmds, long wait_s)
{
    int64_t deadline = em_mono_ms() + (int64_t)wait_s * 1000;
    long pause = POLL_FIRST_MS;
    for (;;) {
        bool pending = false;
        for (cJSON *cmd = cmds->child, *next; cmd != NULL; cmd = next) {
            next = cmd->next;
            const char *rid = str_of(cmd, "requestId");
            if (rid == NULL || is_final(str_of(cmd, "state")))
                continue;
            cJSON *now = NULL;
            int rc = fetch(c, rid, &now);
            if (rc != 0)
                return rc;
            cJSON_ReplaceItemViaPointer(cmds, cmd, now);
            pending |= !is_final(str_of(now, "state"));
        }
        if (!pending || em_mono_ms() >= deadline)
            break;
        int64_t left = deadline - em_mono_ms();
        sleep_ms(left < pause ? (long)(left > 0 ? left : 0) : pause);
        pause = pause * 2 > POLL_MAX_MS ? POLL_MAX_MS : pause * 2;
    }
    int rc = 0;
    const cJSON *cmd;
    cJSON_ArrayForEach(cmd, cmds)
    {
        const char *rid = str_of(cmd, "requestId");
        const char *state = str_of(cmd, "state");
        const cJSON *resp = cJSON_GetObjectItemCaseSensitive(cmd, "response");
        const char *msg = str_of(resp, "message");
        if (state != NULL && strcmp(state, "succeeded") == 0)
            continue;
        rc = CTL_ERROR;
        if (!is_final(state))
            ctl_err("timeout", "command %s is still %s after %ld s", rid ? rid : "?",
                    state ? state : "?", wait_s);
        else
            ctl_err("command_failed", "command %s %s%s%s", rid ? rid : "?", state, msg ? ": " : "",
                    msg ? msg : "");
    }
    return rc;
}

/* The body of a send: type and payload checked with the protocol's rules. */
static int make_body(const char *type, const opts_t *o, cJSON **out)
{
    em_command_type_t t;
    em_error_t e;
    if (em_command_type_parse(type, strlen(type), &t, &e) != EM_OK) {
        ctl_err("validation",
                "command type \"%s\": must be one of sleep, wake, restart, update, "
                "set_reporting_interval, get_status, configure, reset",
                type);
        return CTL_INVALID;
    }
    cJSON *payload = NULL;
    if (o->payload != NULL) {
        int rc = ctl_parse_json_object("--payload", o->payload, &payload);
        if (rc != 0)
            return rc;
    }
    if (em_command_validate(t, o->payload, o->payload != NULL ? strlen(o->payload) : 0, &e) !=
        EM_OK) {
        cJSON_Delete(payload);
        if (e.field[0] != '\0')
            ctl_err(em_err_name(e.code), "--payload: %s: %s", e.field, e.message);
        else
            ctl_err(em_err_name(e.code), "--payload: %s", e.message);
        return CTL_INVALID;
    }
    cJSON *body = cJSON_CreateObject();
    if (body == NULL) {
        cJSON_Delete(payload);
        return CTL_ERROR;
    }
    cJSON_AddStringToObject(body, "type", type);
    if (payload != NULL)
        cJSON_AddItemToObject(body, "payload", payload);
    if (o->ttl > 0)
        cJSON_AddNumberToObject(body, "ttl", (double)o->ttl);
    *out = body;
    return 0;
}

static const struct option send_opts[] = {
    {"payload", required_argument, NULL, O_PAYLOAD},
    {"ttl", required_argument, NULL, O_TTL},
    {"wait", required_argument, NULL, O_WAIT},
    {NULL, 0, NULL, 0},
};

static int run_send(ctl_t *c, const ctl_cmd_t *cmd, int argc, char **argv)
{
    opts_t o;
    ctl_args_t a;
    memset(&o, 0, sizeof o);
    int rc = ctl_parse(c, cmd, argc, argv, send_opts, on_opt, &o, &a);
    if (rc != 0)
        return rc;
    bool group = strcmp(cmd->action, "send-group") == 0;
    rc = group ? ctl_check_group(a.pos[0]) : ctl_check_device_id(a.pos[0]);
    cJSON *body = NULL;
    if (rc == 0)
        rc = make_body(a.pos[1], &o, &body);
    if (rc != 0)
        return rc;
    ctl_buf_t b;
    ctl_buf_init(&b, group ? "/api/v1/groups" : "/api/v1/devices");
    ctl_buf_seg(&b, a.pos[0]);
    ctl_buf_add(&b, "/commands");
    const char *path = ctl_buf_get(&b);
    ctl_resp_t r;
    rc = path == NULL ? CTL_INVALID : ctl_request(c, "POST", path, body, true, false, &r);
    cJSON_Delete(body);
    if (rc != 0)
        return rc;

    if (o.wait == 0) {
        if (group && !c->quiet && c->format == CTL_OUT_TABLE) {
            const cJSON *sent = cJSON_GetObjectItemCaseSensitive(r.data, "sent");
            const cJSON *skipped = cJSON_GetObjectItemCaseSensitive(r.data, "skipped");
            printf("sent %.0f, skipped %.0f\n", cJSON_IsNumber(sent) ? sent->valuedouble : 0,
                   cJSON_IsNumber(skipped) ? skipped->valuedouble : 0);
            ctl_print(c, cJSON_GetObjectItemCaseSensitive(r.data, "commands"), &list_view);
        } else {
            ctl_print(c, r.data, &detail_view);
        }
        ctl_resp_cleanup(&r);
        return 0;
    }

    /* --wait: poll the command(s), then print the final states. */
    cJSON *cmds = NULL;
    if (group) {
        cmds = cJSON_Duplicate(cJSON_GetObjectItemCaseSensitive(r.data, "commands"), 1);
    } else {
        cmds = cJSON_CreateArray();
        cJSON *one = cJSON_Duplicate(r.data, 1);
        if (cmds != NULL && one != NULL)
            cJSON_AddItemToArray(cmds, one);
        else
            cJSON_Delete(one);
    }
    ctl_resp_cleanup(&r);
    if (cmds == NULL || !cJSON_IsArray(cmds)) {
        cJSON_Delete(cmds);
        ctl_err("message_format", "the server's answer holds no command");
        return CTL_ERROR;
    }
    rc = wait_final(c, cmds, o.wait);
    if (rc == 0 || rc == CTL_ERROR) {
        if (group)
            ctl_print(c, cmds, &list_view);
        else
            ctl_print(c, cJSON_GetArrayItem(cmds, 0), &detail_view);
    }
    cJSON_Delete(cmds);
    return rc;
}

static int run_get(ctl_t *c, const ctl_cmd_t *cmd, int argc, char **argv)
{
    ctl_args_t a;
    int rc = ctl_parse(c, cmd, argc, argv, NULL, NULL, NULL, &a);
    if (rc == 0)
        rc = ctl_check_token("request id", a.pos[0]);
    if (rc != 0)
        return rc;
    ctl_buf_t b;
    ctl_buf_init(&b, "/api/v1/commands");
    ctl_buf_seg(&b, a.pos[0]);
    const char *path = ctl_buf_get(&b);
    return path == NULL ? CTL_INVALID : ctl_call(c, "GET", path, NULL, &detail_view);
}

static int run_list(ctl_t *c, const ctl_cmd_t *cmd, int argc, char **argv)
{
    static const struct option opts[] = {
        {"device", required_argument, NULL, O_DEVICE},
        {"group", required_argument, NULL, O_GROUP},
        {"state", required_argument, NULL, O_STATE},
        {"from", required_argument, NULL, O_FROM},
        {"to", required_argument, NULL, O_TO},
        {"limit", required_argument, NULL, O_LIMIT},
        {NULL, 0, NULL, 0},
    };
    opts_t o;
    ctl_args_t a;
    memset(&o, 0, sizeof o);
    int rc = ctl_parse(c, cmd, argc, argv, opts, on_opt, &o, &a);
    if (rc != 0)
        return rc;
    ctl_buf_t b;
    ctl_buf_init(&b, "/api/v1/commands");
    ctl_buf_query(&b, "device", o.device);
    ctl_buf_query(&b, "group", o.group);
    ctl_buf_query(&b, "state", o.state);
    ctl_buf_query(&b, "from", o.from);
    ctl_buf_query(&b, "to", o.to);
    if (o.limit > 0)
        ctl_buf_query_long(&b, "limit", o.limit);
    const char *path = ctl_buf_get(&b);
    return path == NULL ? CTL_INVALID : ctl_call(c, "GET", path, NULL, &list_view);
}

#define SEND_HELP                                                                                  \
    "  TYPE            sleep, wake, restart, update, set_reporting_interval, get_status,\n"        \
    "                  configure or reset\n"                                                       \
    "  --payload JSON  the command's payload, e.g. '{\"duration\":3600}' for sleep,\n"             \
    "                  '{\"interval\":60}' for set_reporting_interval, '{\"confirm\":true}' for\n" \
    "                  reset\n"                                                                    \
    "  --ttl S         expire the command when unanswered after S seconds (10-86400; 300)\n"       \
    "  --wait S        wait up to S seconds for the final state; exit 0 only if it\n"              \
    "                  succeeded (1 when it failed, expired or is still pending)\n"

const ctl_cmd_t ctl_commands_cmds[] = {
    {"commands", "send", run_send, 2, 2, "commands send ID TYPE [--payload JSON] [--wait S]",
     "Send a command to a device", SEND_HELP},
    {"commands", "send-group", run_send, 2, 2,
     "commands send-group G TYPE [--payload JSON] [--wait S]",
     "Send a command to every device of a group", SEND_HELP},
    {"commands", "get", run_get, 1, 1, "commands get REQUEST_ID", "Show a command and its state",
     NULL},
    {"commands", "list", run_list, 0, 0, "commands list [--device ID] [--group G] [--state S]",
     "List commands, newest first",
     "  --device ID      only this device's\n"
     "  --group G        only those sent to group G\n"
     "  --state S        queued, sent, acknowledged, succeeded, failed or expired\n"
     "  --from T, --to T time range: RFC 3339 or epoch ms\n"
     "  --limit N        at most N, 1-1000\n"},
    {NULL, NULL, NULL, 0, 0, NULL, NULL, NULL},
};
