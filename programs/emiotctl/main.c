/*
 * emiotctl - the operator's command line for emiotd.
 *
 * `emiotctl [global options] AREA ACTION [arguments] [options]` sends one
 * request (or a few: paging, --wait) to emiotd's HTTPS API (docs/API.md) and
 * prints the answer as a table or as JSON. See docs/EMIOTCTL.md.
 *
 * This file holds main, the global options, the command table lookup, the
 * option parser every command shares, and the input checks made before
 * anything is sent.
 */
#include <ctype.h>
#include <curl/curl.h>
#include <errno.h>
#include <fcntl.h>
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "ctl.h"
#include "emiot/clock.h"
#include "emiot/device.h"
#include "emiot/version.h"

enum {
    OPT_URL = 1,
    OPT_CA,
    OPT_KEY_FILE,
    OPT_CERT,
    OPT_KEY,
    OPT_CONFIG,
    OPT_TIMEOUT,
    OPT_VERSION,
    OPT_OUTPUT = 'o',
    OPT_QUIET = 'q',
    OPT_HELP = 'h'
};

static const struct option global_options[] = {
    {"url", required_argument, NULL, OPT_URL},
    {"ca", required_argument, NULL, OPT_CA},
    {"api-key-file", required_argument, NULL, OPT_KEY_FILE},
    {"cert", required_argument, NULL, OPT_CERT},
    {"key", required_argument, NULL, OPT_KEY},
    {"config", required_argument, NULL, OPT_CONFIG},
    {"timeout", required_argument, NULL, OPT_TIMEOUT},
    {"output", required_argument, NULL, OPT_OUTPUT},
    {"quiet", no_argument, NULL, OPT_QUIET},
    {"help", no_argument, NULL, OPT_HELP},
};
#define N_GLOBAL (sizeof(global_options) / sizeof(global_options[0]))

static const char global_help[] =
    "Global options (anywhere on the line):\n"
    "  --url URL            emiotd's base URL, https only      (env EMIOT_URL)\n"
    "  --ca FILE            the only CA trusted for the server (env EMIOT_CA)\n"
    "  --api-key-file FILE  file holding the API key or a token (env EMIOT_API_KEY_FILE;\n"
    "                       or the key itself in EMIOT_API_KEY); never on the command line\n"
    "  --cert FILE          client certificate (env EMIOT_CERT)\n"
    "  --key FILE           client certificate's private key (env EMIOT_KEY)\n"
    "  --config FILE        settings file (default $XDG_CONFIG_HOME/emiot/emiotctl.conf\n"
    "                       or ~/.config/emiot/emiotctl.conf): url, ca, api_key_file, cert, key\n"
    "  -o, --output FORMAT  table (default) or json\n"
    "  -q, --quiet          print nothing on success (a created key or token: only it)\n"
    "  --timeout S          seconds for each request (default 30)\n"
    "  -h, --help           this help\n";

static const char exit_help[] =
    "Exit codes: 0 ok, 1 other error, 2 usage, 3 connection or TLS failure,\n"
    "4 authentication (401), 5 permission (403), 6 not found (404),\n"
    "7 invalid input (400, 409, 413, or refused before sending),\n"
    "8 rate limited (429), 9 server error (5xx).\n";

static const ctl_cmd_t *const areas[] = {ctl_devices_cmds, ctl_identity_cmds, ctl_mqttcred_cmds,
                                         ctl_groups_cmds,  ctl_commands_cmds, ctl_admin_cmds,
                                         ctl_pki_cmds,     ctl_broker_cmds,   ctl_keystore_cmds};
#define N_AREAS (sizeof(areas) / sizeof(areas[0]))

void ctl_err(const char *code, const char *fmt, ...)
{
    char msg[1024];
    va_list ap;
    va_start(ap, fmt);
    (void)vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    (void)fputs(PROGRAM ": ", stderr);
    ctl_put_safe(stderr, msg);
    if (code != NULL && code[0] != '\0') {
        (void)fputs(" (", stderr);
        ctl_put_safe(stderr, code);
        (void)fputc(')', stderr);
    }
    (void)fputc('\n', stderr);
}

/* "  usage   summary", the summary on a line of its own under a long usage. */
static void print_line(FILE *out, const ctl_cmd_t *c)
{
    if (strlen(c->usage) > 44)
        fprintf(out, "  %s\n  %-44s %s\n", c->usage, "", c->summary);
    else
        fprintf(out, "  %-44s %s\n", c->usage, c->summary);
}

static void usage_all(FILE *out)
{
    fprintf(out, "usage: " PROGRAM " [global options] AREA ACTION [arguments] [options]\n\n"
                 "Manages an emiotd over its HTTPS API.\n\nCommands:\n");
    for (size_t i = 0; i < N_AREAS; i++)
        for (const ctl_cmd_t *c = areas[i]; c->area != NULL; c++)
            print_line(out, c);
    fprintf(out, "\n%s\n%s\n`" PROGRAM " AREA ACTION --help` describes one command.\n", global_help,
            exit_help);
}

static void usage_cmd(FILE *out, const ctl_cmd_t *cmd)
{
    fprintf(out, "usage: " PROGRAM " %s\n\n%s.\n", cmd->usage, cmd->summary);
    if (cmd->help != NULL)
        fprintf(out, "\nOptions:\n%s", cmd->help);
    fprintf(out, "\n%s\n%s", global_help, exit_help);
}

/* Handles one global option; returns 0 or an exit code. */
static int global_option(ctl_t *c, int id, const char *arg)
{
    switch (id) {
    case OPT_URL:
        c->flag_url = arg;
        return 0;
    case OPT_CA:
        c->flag_ca = arg;
        return 0;
    case OPT_KEY_FILE:
        c->flag_key_file = arg;
        return 0;
    case OPT_CERT:
        c->flag_cert = arg;
        return 0;
    case OPT_KEY:
        c->flag_key = arg;
        return 0;
    case OPT_CONFIG:
        c->flag_config = arg;
        return 0;
    case OPT_TIMEOUT:
        return ctl_parse_long("--timeout", arg, 1, CTL_TIMEOUT_MAX, &c->timeout_s);
    case OPT_OUTPUT:
        if (strcmp(arg, "json") == 0) {
            c->format = CTL_OUT_JSON;
        } else if (strcmp(arg, "table") == 0) {
            c->format = CTL_OUT_TABLE;
        } else {
            ctl_err(NULL, "-o: must be table or json, not \"%s\"", arg);
            return CTL_USAGE;
        }
        return 0;
    case OPT_QUIET:
        c->quiet = true;
        return 0;
    default:
        return CTL_USAGE;
    }
}

static bool is_global(int id)
{
    for (size_t i = 0; i < N_GLOBAL; i++)
        if (global_options[i].val == id)
            return true;
    return false;
}

/* Names the option at argv[optind - 1] without its "=value" part, which
 * may be a secret typed where it does not belong. */
static void report_bad_option(char **argv, int c)
{
    const char *what = argv[optind - 1];
    int n = (int)strcspn(what, "=");
    if (c == ':')
        ctl_err(NULL, "%.*s needs a value", n, what);
    else
        ctl_err(NULL, "unknown option %.*s", n, what);
}

/*
 * getopt_long accepts any unambiguous prefix of a long option: "--api-key"
 * would be taken for "--api-key-file" and its value (a key typed on the
 * command line) for a file name. Options are therefore only accepted when
 * written in full. idx is getopt_long's longindex (-1 for short options).
 */
static bool abbreviated(char **argv, const struct option *opts, int idx)
{
    if (idx < 0 || optind < 1)
        return false;
    const char *el = argv[optind - 1];
    if (optarg != NULL && optarg == el && optind >= 2)
        el = argv[optind - 2]; /* the value was the next word */
    if (strncmp(el, "--", 2) != 0)
        return false;
    el += 2;
    size_t n = strcspn(el, "=");
    if (strlen(opts[idx].name) == n && strncmp(opts[idx].name, el, n) == 0)
        return false;
    ctl_err(NULL, "unknown option --%.*s (options are written in full)", (int)n, el);
    return true;
}

int ctl_parse(ctl_t *c, const ctl_cmd_t *cmd, int argc, char **argv, const struct option *opts,
              ctl_opt_fn fn, void *ud, ctl_args_t *a)
{
    /* The command's options and the global ones in one table, so that the
     * global ones may follow the command as well as precede it. */
    struct option all[64];
    size_t n = 0;
    for (size_t i = 0; opts != NULL && opts[i].name != NULL && n < 40; i++)
        all[n++] = opts[i];
    for (size_t i = 0; i < N_GLOBAL; i++)
        all[n++] = global_options[i];
    memset(&all[n], 0, sizeof all[n]);

    memset(a, 0, sizeof *a);
    optind = 0; /* glibc: start over, with permutation */
    opterr = 0;
    int ch, idx = -1;
    while ((ch = getopt_long(argc, argv, ":o:qh", all, &idx)) != -1) {
        int rc;
        if (ch == '?' || ch == ':' || abbreviated(argv, all, idx)) {
            if (ch == '?' || ch == ':')
                report_bad_option(argv, ch);
            fprintf(stderr, "usage: " PROGRAM " %s (see --help)\n", cmd->usage);
            return CTL_USAGE;
        }
        idx = -1;
        if (ch == OPT_HELP) {
            usage_cmd(stdout, cmd);
            return CTL_HELP_DONE;
        }
        if (is_global(ch))
            rc = global_option(c, ch, optarg);
        else
            rc = fn != NULL ? fn(ud, ch, optarg) : CTL_USAGE;
        if (rc != 0)
            return rc;
    }
    for (int i = optind; i < argc; i++) {
        if (a->npos >= cmd->pos_max || a->npos >= CTL_POS_MAX) {
            ctl_err(NULL, "unexpected argument \"%s\"", argv[i]);
            fprintf(stderr, "usage: " PROGRAM " %s\n", cmd->usage);
            return CTL_USAGE;
        }
        a->pos[a->npos++] = argv[i];
    }
    if (a->npos < cmd->pos_min) {
        ctl_err(NULL, "missing argument");
        fprintf(stderr, "usage: " PROGRAM " %s\n", cmd->usage);
        return CTL_USAGE;
    }
    return 0;
}

int ctl_parse_long(const char *flag, const char *arg, long min, long max, long *out)
{
    char *end = NULL;
    errno = 0;
    long v = strtol(arg, &end, 10);
    if (arg[0] == '\0' || end == NULL || *end != '\0' || errno == ERANGE) {
        ctl_err(NULL, "%s: \"%s\" is not a whole number", flag, arg);
        return CTL_USAGE;
    }
    if (v < min || v > max) {
        ctl_err("validation", "%s: must be %ld-%ld", flag, min, max);
        return CTL_INVALID;
    }
    *out = v;
    return 0;
}

/* ---- checks made before sending ----------------------------------------- */

int ctl_check_device_id(const char *id)
{
    em_error_t e;
    if (em_device_id_validate(id, strlen(id), &e) != EM_OK) {
        ctl_err("validation", "device id \"%s\": must be 3-50 of A-Z a-z 0-9 _ -", id);
        return CTL_INVALID;
    }
    return 0;
}

int ctl_check_group(const char *name)
{
    em_error_t e;
    if (em_group_name_validate(name, strlen(name), &e) != EM_OK) {
        ctl_err("validation", "group \"%s\": must be 2-50 of A-Z a-z 0-9 space -", name);
        return CTL_INVALID;
    }
    return 0;
}

int ctl_check_name(const char *flag, const char *name)
{
    em_error_t e;
    if (em_device_name_validate(name, strlen(name), &e) != EM_OK) {
        ctl_err("validation", "%s: must be 1-100 characters, no control characters", flag);
        return CTL_INVALID;
    }
    return 0;
}

int ctl_check_token(const char *what, const char *s)
{
    size_t n = strlen(s);
    bool ok = n >= 1 && n <= 64;
    for (size_t i = 0; ok && i < n; i++)
        ok = isalnum((unsigned char)s[i]) || s[i] == '_' || s[i] == '-';
    if (!ok) {
        ctl_err("validation", "%s \"%s\": must be 1-64 of A-Z a-z 0-9 _ -", what, s);
        return CTL_INVALID;
    }
    return 0;
}

int ctl_check_one_of(const char *flag, const char *value, const char *const *allowed)
{
    char list[256];
    size_t len = 0;
    for (size_t i = 0; allowed[i] != NULL; i++) {
        if (strcmp(value, allowed[i]) == 0)
            return 0;
        int w = snprintf(list + len, sizeof list - len, "%s%s", i ? ", " : "", allowed[i]);
        if (w > 0 && (size_t)w < sizeof list - len)
            len += (size_t)w;
    }
    ctl_err("validation", "%s: must be one of %s", flag, list);
    return CTL_INVALID;
}

int ctl_check_time(const char *flag, const char *value)
{
    size_t n = strlen(value);
    bool digits = n > 0 && n <= 15;
    for (size_t i = 0; digits && i < n; i++)
        digits = isdigit((unsigned char)value[i]);
    int64_t ms;
    em_error_t e;
    if (digits || em_time_parse(value, n, &ms, &e) == EM_OK)
        return 0;
    ctl_err("validation",
            "%s: must be an RFC 3339 time (2026-11-22T10:00:00Z) or epoch "
            "milliseconds",
            flag);
    return CTL_INVALID;
}

int ctl_parse_json_object(const char *flag, const char *text, cJSON **out)
{
    if (strlen(text) > 65536) {
        ctl_err("validation", "%s: larger than 64 KiB", flag);
        return CTL_INVALID;
    }
    const char *end = NULL;
    cJSON *v = cJSON_ParseWithOpts(text, &end, 1);
    if (v == NULL || !cJSON_IsObject(v)) {
        cJSON_Delete(v);
        ctl_err("message_format", "%s: must be a JSON object, like '{\"duration\":60}'", flag);
        return CTL_INVALID;
    }
    *out = v;
    return 0;
}

int ctl_create_private(const char *path)
{
    int fd = open(path, O_WRONLY | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC, 0600);
    if (fd < 0)
        ctl_err("io", "cannot create %s: %s", path, strerror(errno));
    return fd;
}

int ctl_write_secret(int fd, const char *path, const char *secret)
{
    size_t n = strlen(secret);
    const char *p = secret;
    while (n > 0) {
        ssize_t w = write(fd, p, n);
        if (w < 0 && errno == EINTR)
            continue;
        if (w <= 0) {
            ctl_err("io", "cannot write %s: %s", path, strerror(errno));
            return CTL_ERROR;
        }
        p += w;
        n -= (size_t)w;
    }
    if (write(fd, "\n", 1) != 1 || fsync(fd) != 0) {
        ctl_err("io", "cannot write %s: %s", path, strerror(errno));
        return CTL_ERROR;
    }
    return 0;
}

/* ---- main ------------------------------------------------------------------ */

static const ctl_cmd_t *find_cmd(const char *area, const char *action, bool *area_known)
{
    *area_known = false;
    for (size_t i = 0; i < N_AREAS; i++)
        for (const ctl_cmd_t *c = areas[i]; c->area != NULL; c++) {
            if (strcmp(c->area, area) != 0)
                continue;
            *area_known = true;
            /* whoami, health: an area that is its own command. */
            if (c->action[0] == '\0' || (action != NULL && strcmp(c->action, action) == 0))
                return c;
        }
    return NULL;
}

static void usage_area(FILE *out, const char *area)
{
    fprintf(out, "usage: " PROGRAM " %s ACTION ...\n\nActions:\n", area);
    for (size_t i = 0; i < N_AREAS; i++)
        for (const ctl_cmd_t *c = areas[i]; c->area != NULL; c++)
            if (strcmp(c->area, area) == 0)
                print_line(out, c);
}

static int run(ctl_t *c, int argc, char **argv)
{
    /* Global options before the command: stop at the first word. */
    optind = 0;
    opterr = 0;
    int ch, idx = -1;
    static const struct option main_options[] = {
        {"url", required_argument, NULL, OPT_URL},
        {"ca", required_argument, NULL, OPT_CA},
        {"api-key-file", required_argument, NULL, OPT_KEY_FILE},
        {"cert", required_argument, NULL, OPT_CERT},
        {"key", required_argument, NULL, OPT_KEY},
        {"config", required_argument, NULL, OPT_CONFIG},
        {"timeout", required_argument, NULL, OPT_TIMEOUT},
        {"output", required_argument, NULL, OPT_OUTPUT},
        {"quiet", no_argument, NULL, OPT_QUIET},
        {"help", no_argument, NULL, OPT_HELP},
        {"version", no_argument, NULL, OPT_VERSION},
        {NULL, 0, NULL, 0},
    };
    while ((ch = getopt_long(argc, argv, "+:o:qh", main_options, &idx)) != -1) {
        if (ch == '?' || ch == ':' || abbreviated(argv, main_options, idx)) {
            if (ch == '?' || ch == ':')
                report_bad_option(argv, ch);
            fprintf(stderr, "usage: " PROGRAM " [global options] AREA ACTION ... (see --help)\n");
            return CTL_USAGE;
        }
        idx = -1;
        if (ch == OPT_HELP) {
            usage_all(stdout);
            return CTL_OK;
        }
        if (ch == OPT_VERSION) {
            printf(PROGRAM " %s\n", em_version());
            return CTL_OK;
        }
        int rc = global_option(c, ch, optarg);
        if (rc != 0)
            return rc;
    }
    if (optind >= argc) {
        usage_all(stderr);
        return CTL_USAGE;
    }
    const char *area = argv[optind];
    const char *action = optind + 1 < argc ? argv[optind + 1] : NULL;
    bool area_known;
    const ctl_cmd_t *cmd = find_cmd(area, action, &area_known);
    if (cmd == NULL) {
        if (!area_known) {
            ctl_err(NULL, "unknown command \"%s\" (see " PROGRAM " --help)", area);
            return CTL_USAGE;
        }
        if (action != NULL && (strcmp(action, "--help") == 0 || strcmp(action, "-h") == 0)) {
            usage_area(stdout, area);
            return CTL_OK;
        }
        if (action == NULL)
            ctl_err(NULL, "%s: which action?", area);
        else
            ctl_err(NULL, "%s: unknown action \"%s\"", area, action);
        usage_area(stderr, area);
        return CTL_USAGE;
    }
    /* The command parses from its action word (or its area word, for the
     * commands without an action) on. */
    int skip = cmd->action[0] == '\0' ? 0 : 1;
    int rc = cmd->run(c, cmd, argc - optind - skip, argv + optind + skip);
    return rc == CTL_HELP_DONE ? CTL_OK : rc;
}

int main(int argc, char **argv)
{
    ctl_t c;
    memset(&c, 0, sizeof c);
    c.format = CTL_OUT_TABLE;
    c.timeout_s = CTL_TIMEOUT_DEFAULT;
    if (curl_global_init(CURL_GLOBAL_DEFAULT) != CURLE_OK) {
        ctl_err("internal", "cannot initialise libcurl");
        return CTL_ERROR;
    }
    int rc = run(&c, argc, argv);
    ctl_cleanup(&c);
    curl_global_cleanup();
    if (fflush(stdout) != 0 && rc == CTL_OK) {
        ctl_err("io", "cannot write the output: %s", strerror(errno));
        rc = CTL_ERROR;
    }
    return rc;
}
