/*
 * emiotctl - cmd_groups.c: `emiotctl groups ...`.
 *
 * Group names may hold spaces ("Floor 2"); they are percent-encoded in paths,
 * so the shell quoting is the only thing the user has to think about.
 */
#include <stdio.h>
#include <string.h>

#include "ctl.h"

enum { O_FROM = 1000, O_TO, O_ROLLUP, O_LIMIT };

typedef struct opts {
    const char *from, *to, *rollup;
    long limit;
} opts_t;

static const char *const rollups[] = {"hour", "day", NULL};

static int on_opt(void *ud, int id, const char *arg)
{
    opts_t *o = ud;
    switch (id) {
    case O_FROM:
        o->from = arg;
        return ctl_check_time("--from", arg);
    case O_TO:
        o->to = arg;
        return ctl_check_time("--to", arg);
    case O_ROLLUP:
        o->rollup = arg;
        return ctl_check_one_of("--rollup", arg, rollups);
    case O_LIMIT:
        return ctl_parse_long("--limit", arg, 1, 1000, &o->limit);
    default:
        return CTL_USAGE;
    }
}

static const ctl_col_t group_cols[] = {
    {"Name", "name", COL_STR},
    {"Members", "members", COL_LIST},
    {"Created", "createdAt", COL_TIME},
};

static const ctl_col_t group_detail_cols[] = {
    {"Name", "name", COL_STR},
    {"Members", "members", COL_LIST},
    {"Total", "stats.total", COL_STR},
    {"Online", "stats.online", COL_STR},
    {"Offline", "stats.offline", COL_STR},
    {"Average battery", "stats.averageBattery", COL_STR},
    {"Power modes", "stats.powerModes", COL_JSON},
    {"Stats", "stats", COL_JSON},
    {"Created", "createdAt", COL_TIME},
};

static const ctl_col_t stats_cols[] = {
    {"Total", "total", COL_STR},
    {"Online", "online", COL_STR},
    {"Offline", "offline", COL_STR},
    {"Average battery", "averageBattery", COL_STR},
    {"Power modes", "powerModes", COL_JSON},
};

/* Parses the command line: group first, then (add, remove) a device id. */
static int parse(ctl_t *c, const ctl_cmd_t *cmd, int argc, char **argv, const struct option *opts,
                 opts_t *o, ctl_args_t *a)
{
    memset(o, 0, sizeof *o);
    int rc = ctl_parse(c, cmd, argc, argv, opts, on_opt, o, a);
    if (rc == 0 && a->npos >= 1)
        rc = ctl_check_group(a->pos[0]);
    if (rc == 0 && a->npos >= 2)
        rc = ctl_check_device_id(a->pos[1]);
    return rc;
}

static const char *group_path(ctl_buf_t *b, const ctl_args_t *a, const char *suffix)
{
    ctl_buf_init(b, "/api/v1/groups");
    if (a->npos >= 1)
        ctl_buf_seg(b, a->pos[0]);
    ctl_buf_add(b, suffix);
    if (a->npos >= 2)
        ctl_buf_seg(b, a->pos[1]);
    return ctl_buf_get(b);
}

static int run_list(ctl_t *c, const ctl_cmd_t *cmd, int argc, char **argv)
{
    opts_t o;
    ctl_args_t a;
    int rc = parse(c, cmd, argc, argv, NULL, &o, &a);
    if (rc != 0)
        return rc;
    static const ctl_view_t view = CTL_VIEW(group_cols);
    return ctl_call(c, "GET", "/api/v1/groups", NULL, &view);
}

static int run_get(ctl_t *c, const ctl_cmd_t *cmd, int argc, char **argv)
{
    opts_t o;
    ctl_args_t a;
    ctl_buf_t b;
    int rc = parse(c, cmd, argc, argv, NULL, &o, &a);
    if (rc != 0)
        return rc;
    static const ctl_view_t view = CTL_VIEW(group_detail_cols);
    const char *path = group_path(&b, &a, "");
    return path == NULL ? CTL_INVALID : ctl_call(c, "GET", path, NULL, &view);
}

static int run_create(ctl_t *c, const ctl_cmd_t *cmd, int argc, char **argv)
{
    opts_t o;
    ctl_args_t a;
    int rc = parse(c, cmd, argc, argv, NULL, &o, &a);
    if (rc != 0)
        return rc;
    cJSON *body = cJSON_CreateObject();
    if (body == NULL || cJSON_AddStringToObject(body, "name", a.pos[0]) == NULL) {
        cJSON_Delete(body);
        ctl_err("out_of_memory", "out of memory");
        return CTL_ERROR;
    }
    static const ctl_view_t view = CTL_VIEW(group_cols);
    rc = ctl_call(c, "POST", "/api/v1/groups", body, &view);
    cJSON_Delete(body);
    return rc;
}

/* delete, add, remove: an action whose answer is only "done". */
static int run_done(ctl_t *c, const ctl_cmd_t *cmd, int argc, char **argv, const char *method,
                    const char *suffix, const char *what)
{
    opts_t o;
    ctl_args_t a;
    ctl_buf_t b;
    int rc = parse(c, cmd, argc, argv, NULL, &o, &a);
    if (rc != 0)
        return rc;
    char done[160];
    if (a.npos == 2)
        snprintf(done, sizeof done, "%s %s %s group %s", what, a.pos[1],
                 strcmp(method, "PUT") == 0 ? "to" : "from", a.pos[0]);
    else
        snprintf(done, sizeof done, "%s group %s", what, a.pos[0]);
    const char *path = group_path(&b, &a, suffix);
    return path == NULL ? CTL_INVALID : ctl_call_done(c, method, path, NULL, done);
}

static int run_delete(ctl_t *c, const ctl_cmd_t *cmd, int argc, char **argv)
{
    return run_done(c, cmd, argc, argv, "DELETE", "", "deleted");
}

static int run_add(ctl_t *c, const ctl_cmd_t *cmd, int argc, char **argv)
{
    return run_done(c, cmd, argc, argv, "PUT", "/members", "added");
}

static int run_remove(ctl_t *c, const ctl_cmd_t *cmd, int argc, char **argv)
{
    return run_done(c, cmd, argc, argv, "DELETE", "/members", "removed");
}

static int run_stats(ctl_t *c, const ctl_cmd_t *cmd, int argc, char **argv)
{
    opts_t o;
    ctl_args_t a;
    ctl_buf_t b;
    int rc = parse(c, cmd, argc, argv, NULL, &o, &a);
    if (rc != 0)
        return rc;
    static const ctl_view_t view = CTL_VIEW(stats_cols);
    const char *path = group_path(&b, &a, "/stats");
    return path == NULL ? CTL_INVALID : ctl_call(c, "GET", path, NULL, &view);
}

static int run_energy(ctl_t *c, const ctl_cmd_t *cmd, int argc, char **argv)
{
    static const struct option opts[] = {
        {"from", required_argument, NULL, O_FROM},
        {"to", required_argument, NULL, O_TO},
        {"rollup", required_argument, NULL, O_ROLLUP},
        {"limit", required_argument, NULL, O_LIMIT},
        {NULL, 0, NULL, 0},
    };
    opts_t o;
    ctl_args_t a;
    ctl_buf_t b;
    int rc = parse(c, cmd, argc, argv, opts, &o, &a);
    if (rc != 0)
        return rc;
    group_path(&b, &a, "/energy");
    ctl_buf_query(&b, "from", o.from);
    ctl_buf_query(&b, "to", o.to);
    ctl_buf_query(&b, "rollup", o.rollup);
    if (o.limit > 0)
        ctl_buf_query_long(&b, "limit", o.limit);
    const char *path = ctl_buf_get(&b);
    return path == NULL ? CTL_INVALID : ctl_call(c, "GET", path, NULL, &ctl_telemetry_view);
}

const ctl_cmd_t ctl_groups_cmds[] = {
    {"groups", "list", run_list, 0, 0, "groups list", "List groups", NULL},
    {"groups", "get", run_get, 1, 1, "groups get G", "Show a group, its members and statistics",
     NULL},
    {"groups", "create", run_create, 1, 1, "groups create G",
     "Create a group (2-50 of letters, digits, space, -)", NULL},
    {"groups", "delete", run_delete, 1, 1, "groups delete G", "Delete a group (its devices stay)",
     NULL},
    {"groups", "add", run_add, 2, 2, "groups add G ID", "Put device ID in group G", NULL},
    {"groups", "remove", run_remove, 2, 2, "groups remove G ID", "Take device ID out of group G",
     NULL},
    {"groups", "stats", run_stats, 1, 1, "groups stats G", "Show a group's statistics", NULL},
    {"groups", "energy", run_energy, 1, 1, "groups energy G [--rollup hour|day]",
     "Show a group's energy per hour or day",
     "  --rollup R         hour (default) or day\n"
     "  --from T, --to T   time range: RFC 3339 or epoch ms\n"
     "  --limit N          at most N buckets, 1-1000\n"},
    {NULL, NULL, NULL, 0, 0, NULL, NULL, NULL},
};
