/*
 * emiotctl - cmd_admin.c: events, API keys, users, tokens, whoami, health.
 *
 * A new API key or token is a secret shown once. --out writes it to a file
 * created 0600 with O_EXCL (never over an existing file, never through a
 * symlink) and opened before the request, so a file that cannot be written
 * fails the command before a key exists. Every copy of it this program held
 * (answer body, parsed JSON, printed text) is wiped before it is freed.
 */
#include <openssl/crypto.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "ctl.h"

enum {
    O_KIND = 1000,
    O_TYPE,
    O_DEVICE,
    O_SEVERITY,
    O_FROM,
    O_TO,
    O_BEFORE,
    O_LIMIT,
    O_ALL,
    O_NAME,
    O_ROLE,
    O_RATE,
    O_EXPIRES,
    O_OUT,
    O_TTL
};

#define RATE_MAX       1000000
#define EXPIRES_MAX    (10L * 366 * 86400)
#define EVENT_TYPE_MAX 64

typedef struct opts {
    const char *kind, *type, *device, *severity, *from, *to, *before, *name, *role, *out;
    long limit, rate, expires, ttl;
    bool all;
    const char *const *roles; /* the roles --role accepts */
} opts_t;

static const char *const kinds[] = {"security", "audit", "device", "validation", NULL};
static const char *const severities[] = {"low", "medium", "high", "critical", NULL};
static const char *const key_roles[] = {"admin", "operator", "viewer", "device", NULL};
static const char *const user_roles[] = {"admin", "operator", "viewer", NULL};

static int on_opt(void *ud, int id, const char *arg)
{
    opts_t *o = ud;
    switch (id) {
    case O_KIND:
        o->kind = arg;
        return ctl_check_one_of("--kind", arg, kinds);
    case O_TYPE:
        o->type = arg;
        return ctl_check_token("--type", arg);
    case O_DEVICE:
        o->device = arg;
        return ctl_check_device_id(arg);
    case O_SEVERITY:
        o->severity = arg;
        return ctl_check_one_of("--severity", arg, severities);
    case O_FROM:
        o->from = arg;
        return ctl_check_time("--from", arg);
    case O_TO:
        o->to = arg;
        return ctl_check_time("--to", arg);
    case O_BEFORE:
        o->before = arg;
        return ctl_check_token("--before", arg);
    case O_LIMIT:
        return ctl_parse_long("--limit", arg, 1, 1000, &o->limit);
    case O_ALL:
        o->all = true;
        return 0;
    case O_NAME:
        o->name = arg;
        return ctl_check_name("--name", arg);
    case O_ROLE:
        o->role = arg;
        return ctl_check_one_of("--role", arg, o->roles);
    case O_RATE:
        return ctl_parse_long("--rate", arg, 1, RATE_MAX, &o->rate);
    case O_EXPIRES:
        return ctl_parse_long("--expires", arg, 60, EXPIRES_MAX, &o->expires);
    case O_OUT:
        o->out = arg;
        return 0;
    case O_TTL:
        return ctl_parse_long("--ttl", arg, 60, 86400, &o->ttl);
    default:
        return CTL_USAGE;
    }
}

static void opts_init(opts_t *o, const char *const *roles)
{
    memset(o, 0, sizeof *o);
    o->roles = roles;
}

/* ---- events ---------------------------------------------------------------- */

static const ctl_col_t event_cols[] = {
    {"ID", "id", COL_STR},       {"Time", "time", COL_TIME},        {"Kind", "kind", COL_STR},
    {"Type", "type", COL_STR},   {"Severity", "severity", COL_STR}, {"Device", "deviceId", COL_STR},
    {"Actor", "actor", COL_STR}, {"Source", "source", COL_STR},     {"Message", "message", COL_STR},
};

static int run_events(ctl_t *c, const ctl_cmd_t *cmd, int argc, char **argv)
{
    static const struct option opts[] = {
        {"kind", required_argument, NULL, O_KIND},
        {"type", required_argument, NULL, O_TYPE},
        {"device", required_argument, NULL, O_DEVICE},
        {"severity", required_argument, NULL, O_SEVERITY},
        {"from", required_argument, NULL, O_FROM},
        {"to", required_argument, NULL, O_TO},
        {"before", required_argument, NULL, O_BEFORE},
        {"limit", required_argument, NULL, O_LIMIT},
        {"all", no_argument, NULL, O_ALL},
        {NULL, 0, NULL, 0},
    };
    opts_t o;
    ctl_args_t a;
    opts_init(&o, NULL);
    int rc = ctl_parse(c, cmd, argc, argv, opts, on_opt, &o, &a);
    if (rc != 0)
        return rc;
    ctl_buf_t b;
    ctl_buf_init(&b, "/api/v1/events");
    ctl_buf_query(&b, "kind", o.kind);
    ctl_buf_query(&b, "type", o.type);
    ctl_buf_query(&b, "device", o.device);
    ctl_buf_query(&b, "severity", o.severity);
    ctl_buf_query(&b, "from", o.from);
    ctl_buf_query(&b, "to", o.to);
    if (o.limit > 0)
        ctl_buf_query_long(&b, "limit", o.limit);
    cJSON *items;
    char *next;
    rc = ctl_get_list(c, &b, "before", o.before, o.all, &items, &next);
    if (rc == 0) {
        static const ctl_view_t view = CTL_VIEW(event_cols);
        ctl_print_list(c, items, &view, next, "--before");
    }
    cJSON_Delete(items);
    free(next);
    return rc;
}

/* ---- secrets shown once ---------------------------------------------------- */

/* Wipes the secret field's string in the parsed answer (the body it came
 * from is wiped by ctl_resp_cleanup). */
static void wipe_field(const ctl_resp_t *r, const char *field)
{
    cJSON *v = cJSON_GetObjectItemCaseSensitive((cJSON *)r->data, field);
    if (cJSON_IsString(v) && v->valuestring != NULL)
        OPENSSL_cleanse(v->valuestring, strlen(v->valuestring));
}

/* Prints a created key or token (field: "key" or "token") and writes it to
 * fd when out is given. */
static int show_secret(ctl_t *c, ctl_resp_t *r, const char *field, int fd, const char *out,
                       const ctl_view_t *view)
{
    cJSON *data = (cJSON *)r->data;
    cJSON *secret = cJSON_GetObjectItemCaseSensitive(data, field);
    if (!cJSON_IsString(secret)) {
        ctl_err("message_format", "the server's answer holds no %s", field);
        return CTL_ERROR;
    }
    int rc = 0;
    if (fd >= 0) {
        rc = ctl_write_secret(fd, out, secret->valuestring);
        /* What is printed then holds everything but the secret. */
        OPENSSL_cleanse(secret->valuestring, strlen(secret->valuestring));
        cJSON_DeleteItemFromObjectCaseSensitive(data, field);
        if (rc == 0)
            ctl_print(c, data, view);
        if (rc == 0 && !c->quiet && c->format == CTL_OUT_TABLE)
            fprintf(stderr, "the %s is in %s (mode 0600)\n", field, out);
        return rc;
    }
    if (c->quiet) {
        /* -q prints only the secret, for KEY=$(emiotctl -q keys create ...). */
        (void)fputs(secret->valuestring, stdout);
        (void)fputc('\n', stdout);
    } else if (c->format == CTL_OUT_JSON) {
        char *text = cJSON_Print(data);
        if (text == NULL)
            return CTL_ERROR;
        (void)fputs(text, stdout);
        (void)fputc('\n', stdout);
        OPENSSL_cleanse(text, strlen(text));
        free(text);
    } else {
        ctl_print(c, data, view);
        fprintf(stderr, "store the %s now: it is not shown again\n", field);
    }
    return rc;
}

/* Sends a request whose answer holds a secret, handling --out. */
static int create_secret(ctl_t *c, const char *path, const cJSON *body, const char *field,
                         const char *out, const ctl_view_t *view)
{
    int fd = -1;
    if (out != NULL && (fd = ctl_create_private(out)) < 0)
        return CTL_ERROR;
    ctl_resp_t r;
    int rc = ctl_request(c, "POST", path, body, true, true, &r);
    if (rc == 0)
        rc = show_secret(c, &r, field, fd, out, view);
    if (r.data != NULL)
        wipe_field(&r, field);
    ctl_resp_cleanup(&r);
    if (fd >= 0) {
        if (close(fd) != 0 && rc == 0) {
            ctl_err("io", "cannot write %s", out);
            rc = CTL_ERROR;
        }
        /* No half-written or empty key file is left behind. */
        if (rc != 0)
            unlink(out);
    }
    return rc;
}

/* ---- keys ------------------------------------------------------------------ */

static const ctl_col_t key_cols[] = {
    {"Key", "key", COL_STR},
    {"Key ID", "keyId", COL_STR},
    {"Name", "name", COL_STR},
    {"Role", "role", COL_STR},
    {"Device", "deviceId", COL_STR},
    {"Owner", "owner", COL_STR},
    {"Rate/min", "ratePerMinute", COL_STR},
    {"Created", "createdAt", COL_TIME},
    {"Expires", "expiresAt", COL_TIME},
    {"Last used", "lastUsed", COL_TIME},
    {"Revoked", "revokedAt", COL_TIME},
};
static const ctl_view_t key_view = CTL_VIEW(key_cols);

static int run_keys_create(ctl_t *c, const ctl_cmd_t *cmd, int argc, char **argv)
{
    static const struct option opts[] = {
        {"name", required_argument, NULL, O_NAME},
        {"role", required_argument, NULL, O_ROLE},
        {"device", required_argument, NULL, O_DEVICE},
        {"rate", required_argument, NULL, O_RATE},
        {"expires", required_argument, NULL, O_EXPIRES},
        {"out", required_argument, NULL, O_OUT},
        {NULL, 0, NULL, 0},
    };
    opts_t o;
    ctl_args_t a;
    opts_init(&o, key_roles);
    int rc = ctl_parse(c, cmd, argc, argv, opts, on_opt, &o, &a);
    if (rc != 0)
        return rc;
    if (o.name == NULL || o.role == NULL) {
        ctl_err(NULL, "keys create needs --name and --role");
        return CTL_USAGE;
    }
    if ((strcmp(o.role, "device") == 0) != (o.device != NULL)) {
        ctl_err("validation", "--device: %s",
                o.device == NULL ? "a device key needs the device's id"
                                 : "only a key of role device names a device");
        return CTL_INVALID;
    }
    cJSON *body = cJSON_CreateObject();
    if (body == NULL)
        return CTL_ERROR;
    cJSON_AddStringToObject(body, "name", o.name);
    cJSON_AddStringToObject(body, "role", o.role);
    if (o.device != NULL)
        cJSON_AddStringToObject(body, "deviceId", o.device);
    if (o.rate > 0)
        cJSON_AddNumberToObject(body, "ratePerMinute", (double)o.rate);
    if (o.expires > 0)
        cJSON_AddNumberToObject(body, "expiresIn", (double)o.expires);
    rc = create_secret(c, "/api/v1/keys", body, "key", o.out, &key_view);
    cJSON_Delete(body);
    return rc;
}

static int run_keys_list(ctl_t *c, const ctl_cmd_t *cmd, int argc, char **argv)
{
    ctl_args_t a;
    int rc = ctl_parse(c, cmd, argc, argv, NULL, NULL, NULL, &a);
    return rc != 0 ? rc : ctl_call(c, "GET", "/api/v1/keys", NULL, &key_view);
}

static int run_keys_revoke(ctl_t *c, const ctl_cmd_t *cmd, int argc, char **argv)
{
    ctl_args_t a;
    int rc = ctl_parse(c, cmd, argc, argv, NULL, NULL, NULL, &a);
    if (rc == 0)
        rc = ctl_check_token("key id", a.pos[0]);
    if (rc != 0)
        return rc;
    ctl_buf_t b;
    ctl_buf_init(&b, "/api/v1/keys");
    ctl_buf_seg(&b, a.pos[0]);
    char done[128];
    snprintf(done, sizeof done, "revoked key %s", a.pos[0]);
    const char *path = ctl_buf_get(&b);
    return path == NULL ? CTL_INVALID : ctl_call_done(c, "DELETE", path, NULL, done);
}

/* ---- users ----------------------------------------------------------------- */

static const ctl_col_t user_cols[] = {
    {"Name", "name", COL_STR},
    {"Role", "role", COL_STR},
    {"Disabled", "disabled", COL_STR},
    {"Created", "createdAt", COL_TIME},
};
static const ctl_view_t user_view = CTL_VIEW(user_cols);

static int run_users_list(ctl_t *c, const ctl_cmd_t *cmd, int argc, char **argv)
{
    ctl_args_t a;
    int rc = ctl_parse(c, cmd, argc, argv, NULL, NULL, NULL, &a);
    return rc != 0 ? rc : ctl_call(c, "GET", "/api/v1/users", NULL, &user_view);
}

static int run_users_create(ctl_t *c, const ctl_cmd_t *cmd, int argc, char **argv)
{
    static const struct option opts[] = {
        {"role", required_argument, NULL, O_ROLE},
        {NULL, 0, NULL, 0},
    };
    opts_t o;
    ctl_args_t a;
    opts_init(&o, user_roles);
    int rc = ctl_parse(c, cmd, argc, argv, opts, on_opt, &o, &a);
    if (rc == 0)
        rc = ctl_check_name("user name", a.pos[0]);
    if (rc != 0)
        return rc;
    if (o.role == NULL) {
        ctl_err(NULL, "users create needs --role");
        return CTL_USAGE;
    }
    cJSON *body = cJSON_CreateObject();
    if (body == NULL)
        return CTL_ERROR;
    cJSON_AddStringToObject(body, "name", a.pos[0]);
    cJSON_AddStringToObject(body, "role", o.role);
    rc = ctl_call(c, "POST", "/api/v1/users", body, &user_view);
    cJSON_Delete(body);
    return rc;
}

static int run_users_delete(ctl_t *c, const ctl_cmd_t *cmd, int argc, char **argv)
{
    ctl_args_t a;
    int rc = ctl_parse(c, cmd, argc, argv, NULL, NULL, NULL, &a);
    if (rc == 0)
        rc = ctl_check_name("user name", a.pos[0]);
    if (rc != 0)
        return rc;
    ctl_buf_t b;
    ctl_buf_init(&b, "/api/v1/users");
    ctl_buf_seg(&b, a.pos[0]);
    char done[160];
    snprintf(done, sizeof done, "deleted user %s", a.pos[0]);
    const char *path = ctl_buf_get(&b);
    return path == NULL ? CTL_INVALID : ctl_call_done(c, "DELETE", path, NULL, done);
}

/* ---- token, whoami, health ------------------------------------------------- */

static int run_token(ctl_t *c, const ctl_cmd_t *cmd, int argc, char **argv)
{
    static const struct option opts[] = {
        {"ttl", required_argument, NULL, O_TTL},
        {"out", required_argument, NULL, O_OUT},
        {NULL, 0, NULL, 0},
    };
    static const ctl_col_t cols[] = {
        {"Token", "token", COL_STR},
        {"Expires", "expiresAt", COL_TIME},
    };
    static const ctl_view_t view = CTL_VIEW(cols);
    opts_t o;
    ctl_args_t a;
    opts_init(&o, NULL);
    int rc = ctl_parse(c, cmd, argc, argv, opts, on_opt, &o, &a);
    if (rc != 0)
        return rc;
    cJSON *body = cJSON_CreateObject();
    if (body == NULL)
        return CTL_ERROR;
    if (o.ttl > 0)
        cJSON_AddNumberToObject(body, "ttl", (double)o.ttl);
    rc = create_secret(c, "/api/v1/tokens", body, "token", o.out, &view);
    cJSON_Delete(body);
    return rc;
}

static int run_whoami(ctl_t *c, const ctl_cmd_t *cmd, int argc, char **argv)
{
    static const ctl_col_t cols[] = {
        {"Name", "name", COL_STR},       {"Role", "role", COL_STR},
        {"Method", "method", COL_STR},   {"Key ID", "keyId", COL_STR},
        {"Device", "deviceId", COL_STR},
    };
    static const ctl_view_t view = CTL_VIEW(cols);
    ctl_args_t a;
    int rc = ctl_parse(c, cmd, argc, argv, NULL, NULL, NULL, &a);
    return rc != 0 ? rc : ctl_call(c, "GET", "/api/v1/whoami", NULL, &view);
}

static int run_health(ctl_t *c, const ctl_cmd_t *cmd, int argc, char **argv)
{
    ctl_args_t a;
    int rc = ctl_parse(c, cmd, argc, argv, NULL, NULL, NULL, &a);
    if (rc != 0)
        return rc;
    ctl_resp_t r;
    /* /healthz needs no credentials: none are sent. */
    rc = ctl_request(c, "GET", "/healthz", NULL, false, false, &r);
    if (rc == 0 && !c->quiet) {
        if (c->format == CTL_OUT_JSON) {
            ctl_print_json(r.json);
        } else {
            const cJSON *st = cJSON_GetObjectItemCaseSensitive(r.json, "status");
            ctl_put_safe(stdout, cJSON_IsString(st) ? st->valuestring : "ok");
            (void)fputc('\n', stdout);
        }
    }
    ctl_resp_cleanup(&r);
    return rc;
}

const ctl_cmd_t ctl_admin_cmds[] = {
    {"events", "list", run_events, 0, 0,
     "events list [--kind K] [--type T] [--device ID] [--severity S]",
     "List security, audit, device and validation events, newest first",
     "  --kind K         security, audit, device or validation\n"
     "  --type T         event type, e.g. auth_failure\n"
     "  --device ID      only this device's\n"
     "  --severity S     at least S: low, medium, high or critical\n"
     "  --from T, --to T time range: RFC 3339 or epoch ms\n"
     "  --limit N        events per page, 1-1000 (default 100)\n"
     "  --before ID      older than event ID (the cursor a previous page printed)\n"
     "  --all            fetch every page\n"},
    {"keys", "create", run_keys_create, 0, 0,
     "keys create --name N --role R [--device ID] [--out FILE]", "Create an API key (shown once)",
     "  --name N         what the key is for, 1-100 characters (required)\n"
     "  --role R         admin, operator, viewer or device (required; not above your own)\n"
     "  --device ID      the device a device key speaks for (required for role device)\n"
     "  --rate N         requests per minute allowed to this key\n"
     "  --expires S      the key expires after S seconds (60 s to 10 years)\n"
     "  --out FILE       write the key to FILE (created, mode 0600) instead of showing it\n"},
    {"keys", "list", run_keys_list, 0, 0, "keys list", "List API keys (never the keys themselves)",
     NULL},
    {"keys", "revoke", run_keys_revoke, 1, 1, "keys revoke KEYID", "Revoke an API key at once",
     NULL},
    {"users", "list", run_users_list, 0, 0, "users list", "List users", NULL},
    {"users", "create", run_users_create, 1, 1, "users create NAME --role R",
     "Create a user (a client certificate's CN)",
     "  --role R         admin, operator or viewer (required)\n"},
    {"users", "delete", run_users_delete, 1, 1, "users delete NAME", "Delete a user", NULL},
    {"token", "create", run_token, 0, 0, "token create [--ttl S] [--out FILE]",
     "Get a JWT for your own identity (shown once)",
     "  --ttl S          lifetime, 60-86400 seconds\n"
     "  --out FILE       write the token to FILE (created, mode 0600) instead of showing it\n"},
    {"whoami", "", run_whoami, 0, 0, "whoami", "Show who the server takes you for", NULL},
    {"health", "", run_health, 0, 0, "health", "Check that emiotd answers (no credentials)", NULL},
    {NULL, NULL, NULL, 0, 0, NULL, NULL, NULL},
};
