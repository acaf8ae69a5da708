/*
 * emiotctl - cmd_identity.c: device identity through emiotd: one-time
 * enrollment tokens (`devices enroll-token`, `devices enroll-tokens`) and the
 * certificates a device has registered (`devices certificates`).
 *
 * An enrollment token is a secret shown once, handled as cmd_admin.c handles
 * a new API key: --out writes it to a file created 0600 with O_EXCL and
 * opened before the request; -q prints only the token; every copy this
 * program held is wiped before it is freed.
 */
#include <openssl/crypto.h>
#include <stdlib.h>
#include <string.h>

#include "ctl.h"

enum { O_TTL = 1000, O_OUT };

/* The most the server may allow (its enroll_token_ttl_max_s is lower by
 * default: 30 days; it answers 400 above its own). */
#define TOKEN_TTL_MAX (366L * 86400)

typedef struct opts {
    long ttl;
    const char *out;
} opts_t;

static int on_opt(void *ud, int id, const char *arg)
{
    opts_t *o = ud;
    switch (id) {
    case O_TTL:
        return ctl_parse_long("--ttl", arg, 1, TOKEN_TTL_MAX, &o->ttl);
    case O_OUT:
        o->out = arg;
        return 0;
    default:
        return CTL_USAGE;
    }
}

/* "/api/v1/devices/ID/what" for the device named by argument pos. */
static const char *device_path(ctl_buf_t *b, const char *id, const char *what)
{
    ctl_buf_init(b, "/api/v1/devices");
    ctl_buf_seg(b, id);
    ctl_buf_add(b, what);
    return ctl_buf_get(b);
}

/* ---- enroll-token ------------------------------------------------------------ */

static const ctl_col_t token_cols[] = {
    {"Token", "token", COL_STR},        {"Token ID", "tokenId", COL_STR},
    {"Device", "deviceId", COL_STR},    {"State", "state", COL_STR},
    {"Owner", "owner", COL_STR},        {"Created", "createdAt", COL_TIME},
    {"Expires", "expiresAt", COL_TIME}, {"Used", "usedAt", COL_TIME},
};
static const ctl_view_t token_view = CTL_VIEW(token_cols);

/* Prints the new token (or writes it to fd), then wipes it in the answer. */
static int show_token(ctl_t *c, ctl_resp_t *r, int fd, const char *out)
{
    cJSON *data = (cJSON *)r->data;
    cJSON *tok = cJSON_GetObjectItemCaseSensitive(data, "token");
    if (!cJSON_IsString(tok) || tok->valuestring == NULL) {
        ctl_err("message_format", "the server's answer holds no token");
        return CTL_ERROR;
    }
    int rc = 0;
    if (fd >= 0) {
        rc = ctl_write_secret(fd, out, tok->valuestring);
        /* What is printed then holds everything but the token. */
        OPENSSL_cleanse(tok->valuestring, strlen(tok->valuestring));
        cJSON_DeleteItemFromObjectCaseSensitive(data, "token");
        if (rc == 0)
            ctl_print(c, data, &token_view);
        if (rc == 0 && !c->quiet && c->format == CTL_OUT_TABLE)
            fprintf(stderr, "the enrollment token is in %s (mode 0600)\n", out);
        return rc;
    }
    if (c->quiet) {
        /* -q prints only the token: TOKEN=$(emiotctl -q devices enroll-token ID). */
        (void)fputs(tok->valuestring, stdout);
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
        ctl_print(c, data, &token_view);
        fprintf(stderr, "give the token to the device now: it works once and is not shown again\n");
    }
    return rc;
}

static int run_enroll_token(ctl_t *c, const ctl_cmd_t *cmd, int argc, char **argv)
{
    static const struct option opts[] = {
        {"ttl", required_argument, NULL, O_TTL},
        {"out", required_argument, NULL, O_OUT},
        {NULL, 0, NULL, 0},
    };
    opts_t o = {0, NULL};
    ctl_args_t a;
    int rc = ctl_parse(c, cmd, argc, argv, opts, on_opt, &o, &a);
    if (rc == 0)
        rc = ctl_check_device_id(a.pos[0]);
    if (rc != 0)
        return rc;
    ctl_buf_t b;
    const char *path = device_path(&b, a.pos[0], "/enrollment-tokens");
    if (path == NULL)
        return CTL_INVALID;
    cJSON *body = cJSON_CreateObject();
    if (body == NULL)
        return CTL_ERROR;
    if (o.ttl > 0)
        cJSON_AddNumberToObject(body, "ttl", (double)o.ttl);
    rc = ctl_post_secret(c, path, body, "token", o.out, show_token);
    cJSON_Delete(body);
    return rc;
}

/* ---- lists --------------------------------------------------------------------- */

/* GET /api/v1/devices/ID/what for the device ID on the command line, shown
 * with view. */
static int get_device_list(ctl_t *c, const ctl_cmd_t *cmd, int argc, char **argv, const char *what,
                           const ctl_view_t *view)
{
    ctl_args_t a;
    int rc = ctl_parse(c, cmd, argc, argv, NULL, NULL, NULL, &a);
    if (rc == 0)
        rc = ctl_check_device_id(a.pos[0]);
    if (rc != 0)
        return rc;
    ctl_buf_t b;
    const char *path = device_path(&b, a.pos[0], what);
    return path == NULL ? CTL_INVALID : ctl_call(c, "GET", path, NULL, view);
}

static int run_enroll_tokens(ctl_t *c, const ctl_cmd_t *cmd, int argc, char **argv)
{
    return get_device_list(c, cmd, argc, argv, "/enrollment-tokens", &token_view);
}

static const ctl_col_t cert_cols[] = {
    {"Serial", "serial", COL_STR},       {"State", "state", COL_STR},
    {"Not after", "notAfter", COL_TIME}, {"Registered", "createdAt", COL_TIME},
    {"Revoked", "revokedAt", COL_TIME},  {"SHA-256", "sha256", COL_STR},
};
static const ctl_view_t cert_view = CTL_VIEW(cert_cols);

static int run_certificates(ctl_t *c, const ctl_cmd_t *cmd, int argc, char **argv)
{
    return get_device_list(c, cmd, argc, argv, "/certificates", &cert_view);
}

const ctl_cmd_t ctl_identity_cmds[] = {
    {"devices", "enroll-token", run_enroll_token, 1, 1,
     "devices enroll-token ID [--ttl SECONDS] [--out FILE]",
     "Create a one-time enrollment token for a device (shown once)",
     "  --ttl SECONDS    how long the token works (default: the server's, 1 day)\n"
     "  --out FILE       write the token to FILE (created, mode 0600) instead of showing it\n"
     "  -q               print only the token\n"},
    {"devices", "enroll-tokens", run_enroll_tokens, 1, 1, "devices enroll-tokens ID",
     "List a device's enrollment tokens (never the tokens themselves)", NULL},
    {"devices", "certificates", run_certificates, 1, 1, "devices certificates ID",
     "List the certificates a device has registered, with their state", NULL},
    {NULL, NULL, NULL, 0, 0, NULL, NULL, NULL},
};
