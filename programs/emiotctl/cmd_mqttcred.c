/*
 * emiotctl - cmd_mqttcred.c: `emiotctl devices mqtt-credentials`.
 *
 * The MQTT password of a device that cannot use a client certificate, made by
 * emiotd in mosquitto's dynamic-security plugin (docs/API.md, "MQTT
 * credentials"). It is shown this once: emiotd keeps no copy, and asking
 * again makes a new one (the old one stops working). As with API keys, --out
 * writes it to a file created 0600 with O_EXCL before the request is sent,
 * and every copy this program held is wiped before it is freed.
 */
#include <openssl/crypto.h>
#include <stdlib.h>
#include <string.h>

#include "ctl.h"

enum { O_REVOKE = 1000, O_OUT };

typedef struct opts {
    bool revoke;
    const char *out;
} opts_t;

static int on_opt(void *ud, int id, const char *arg)
{
    opts_t *o = ud;
    switch (id) {
    case O_REVOKE:
        o->revoke = true;
        return 0;
    case O_OUT:
        o->out = arg;
        return 0;
    default:
        return CTL_USAGE;
    }
}

static const ctl_col_t cred_cols[] = {
    {"Username", "username", COL_STR},
    {"Password", "password", COL_STR},
};
static const ctl_view_t cred_view = CTL_VIEW(cred_cols);

/* Prints the answer (or writes the password to fd) as `keys create` does. */
static int show_password(ctl_t *c, ctl_resp_t *r, int fd, const char *out)
{
    cJSON *data = (cJSON *)r->data;
    cJSON *pw = cJSON_GetObjectItemCaseSensitive(data, "password");
    if (!cJSON_IsString(pw) || pw->valuestring == NULL) {
        ctl_err("message_format", "the server's answer holds no password");
        return CTL_ERROR;
    }
    if (fd >= 0) {
        int rc = ctl_write_secret(fd, out, pw->valuestring);
        /* What is printed then holds everything but the password. */
        OPENSSL_cleanse(pw->valuestring, strlen(pw->valuestring));
        cJSON_DeleteItemFromObjectCaseSensitive(data, "password");
        if (rc == 0)
            ctl_print(c, data, &cred_view);
        if (rc == 0 && !c->quiet && c->format == CTL_OUT_TABLE)
            fprintf(stderr, "the password is in %s (mode 0600)\n", out);
        return rc;
    }
    if (c->quiet) {
        /* -q prints only the password, for PW=$(emiotctl -q devices mqtt-credentials ID). */
        (void)fputs(pw->valuestring, stdout);
        (void)fputc('\n', stdout);
    } else {
        ctl_print(c, data, &cred_view); /* -o json: the JSON, wiped after printing */
        if (c->format == CTL_OUT_TABLE)
            fprintf(stderr, "store the password now: it is not shown again\n");
    }
    return 0;
}

static int run_mqttcred(ctl_t *c, const ctl_cmd_t *cmd, int argc, char **argv)
{
    static const struct option opts[] = {
        {"revoke", no_argument, NULL, O_REVOKE},
        {"out", required_argument, NULL, O_OUT},
        {NULL, 0, NULL, 0},
    };
    opts_t o = {false, NULL};
    ctl_args_t a;
    int rc = ctl_parse(c, cmd, argc, argv, opts, on_opt, &o, &a);
    if (rc != 0)
        return rc;
    if (o.revoke && o.out != NULL) {
        ctl_err(NULL, "--out goes with a new password, not with --revoke");
        return CTL_USAGE;
    }
    const char *id = a.pos[0];
    if ((rc = ctl_check_device_id(id)) != 0)
        return rc;
    ctl_buf_t b;
    ctl_buf_init(&b, "/api/v1/devices");
    ctl_buf_seg(&b, id);
    ctl_buf_add(&b, "/mqtt-credentials");
    const char *path = ctl_buf_get(&b);
    if (path == NULL)
        return CTL_INVALID;
    if (!o.revoke)
        return ctl_post_secret(c, path, NULL, "password", o.out, show_password);
    char done[128];
    snprintf(done, sizeof done, "revoked the MQTT password of device %s", id);
    return ctl_call_done(c, "DELETE", path, NULL, done);
}

const ctl_cmd_t ctl_mqttcred_cmds[] = {
    {"devices", "mqtt-credentials", run_mqttcred, 1, 1,
     "devices mqtt-credentials ID [--out FILE] | ID --revoke",
     "Make (or replace) a device's MQTT password, or revoke it",
     "  (no option)      a new MQTT password for device ID (username: the id), shown\n"
     "                   once; the previous one stops working and its sessions end.\n"
     "                   -q prints only the password\n"
     "  --out FILE       write the password to FILE (created, mode 0600) instead\n"
     "  --revoke         delete the device's MQTT client: the password stops working\n"
     "  (for devices without a client certificate; emiotd needs a [dynsec] section)\n"},
    {NULL, NULL, NULL, 0, 0, NULL, NULL, NULL},
};
