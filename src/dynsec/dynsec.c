/*
 * emiot - dynsec/dynsec.c: devices' MQTT clients and roles in mosquitto's
 * dynamic-security plugin (see dynsec.h).
 *
 * Whose client is it? The plugin's client names share one namespace with
 * whatever else its administrator created: the administrator itself, a
 * manager account, another application. A device id is only a name, and a
 * device called "admin" must never get (or take away) the administrator's
 * password. So every client emiot creates carries the text name
 * "emiot device <id>", and emiot changes, disables or deletes only clients
 * that carry it: any other client of that name is left alone (provision
 * answers EM_ERR_EXISTS, remove and set_enabled EM_ERR_NOT_FOUND). Roles live
 * in emiot's own namespace ("emiot-device-<id>").
 *
 * Work factor: mosquitto 2.0.11's plugin hashes the passwords given to
 * createClient, modifyClient and setClientPassword with PBKDF2-SHA512 and a
 * fixed 101 iterations; the control API takes no "iterations" or "salt"
 * (they are ignored: the configuration file the plugin saves shows 101 after
 * every change). The passwords emiot gives it are 256 random bits, for which
 * no work factor matters: a hash of a 256-bit secret cannot be searched. The
 * passwords people choose (the plugin's administrator) are the ones that need
 * one, and get it in the plugin's configuration file, which `emiotctl broker
 * config` writes with a strong PBKDF2 iteration count (the plugin honours the
 * file's "iterations").
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <openssl/crypto.h>
#include <openssl/rand.h>

#include "dynsec/dynsec_internal.h"
#include "emiot/device.h"
#include "emiot/log.h"

#define ROLE_PREFIX   "emiot-device-"
#define MARKER_PREFIX "emiot device "
#define TIMEOUT_MAX   600000

/* "emiot-device-" + id, "emiot device " + id. */
typedef struct names {
    char role[sizeof ROLE_PREFIX + EM_DEVICE_ID_MAX];
    char marker[sizeof MARKER_PREFIX + EM_DEVICE_ID_MAX];
} names_t;

void em_dynsec_options_init(em_dynsec_options_t *opts)
{
    if (opts == NULL)
        return;
    memset(opts, 0, sizeof *opts);
    em_mqtt_options_init(&opts->mqtt);
    opts->topic_prefix = EM_TOPIC_PREFIX_DEFAULT;
    opts->timeout_ms = 5000;
}

/* ---- commands ------------------------------------------------------------- */

/* Adds {"command":name, key:value} to cmds; NULL when memory ran out. */
static cJSON *add_cmd(cJSON *cmds, const char *name, const char *key, const char *value)
{
    cJSON *c = cJSON_CreateObject();
    if (c == NULL || !cJSON_AddItemToArray(cmds, c)) {
        cJSON_Delete(c);
        return NULL;
    }
    if (cJSON_AddStringToObject(c, "command", name) == NULL ||
        (key != NULL && cJSON_AddStringToObject(c, key, value) == NULL))
        return NULL;
    return c;
}

/* [{"rolename":role}] */
static bool add_roles(cJSON *cmd, const char *role)
{
    cJSON *arr = cJSON_AddArrayToObject(cmd, "roles");
    cJSON *r = cJSON_CreateObject();
    if (arr == NULL || r == NULL || !cJSON_AddItemToArray(arr, r)) {
        cJSON_Delete(r);
        return false;
    }
    return cJSON_AddStringToObject(r, "rolename", role) != NULL;
}

/* The device's ACLs: what the certificate listener's patterns allow
 * (docs/SECURITY.md), no more. */
static bool add_acls(cJSON *cmd, const char *prefix, const char *id)
{
    static const char *const sent[] = {"status", "telemetry", "response", "event", "availability"};
    static const struct {
        const char *type;
        const char *kind;
    } rules[] = {
        {"publishClientSend", NULL}, /* one per sent[] */
        {"subscribeLiteral", "command"},
        {"publishClientReceive", "command"},
    };
    cJSON *acls = cJSON_AddArrayToObject(cmd, "acls");
    if (acls == NULL)
        return false;
    for (size_t i = 0; i < sizeof rules / sizeof rules[0]; i++) {
        size_t nk = rules[i].kind != NULL ? 1 : sizeof sent / sizeof sent[0];
        for (size_t k = 0; k < nk; k++) {
            char topic[EM_TOPIC_PREFIX_MAX + EM_DEVICE_ID_MAX + 16];
            snprintf(topic, sizeof topic, "%s%s/%s", prefix, id,
                     rules[i].kind != NULL ? rules[i].kind : sent[k]);
            cJSON *a = cJSON_CreateObject();
            if (a == NULL || !cJSON_AddItemToArray(acls, a)) {
                cJSON_Delete(a);
                return false;
            }
            if (cJSON_AddStringToObject(a, "acltype", rules[i].type) == NULL ||
                cJSON_AddStringToObject(a, "topic", topic) == NULL ||
                cJSON_AddBoolToObject(a, "allow", 1) == NULL)
                return false;
        }
    }
    return true;
}

/* Wipes every "password" string in the commands before they are freed. */
static void wipe_passwords(cJSON *cmds)
{
    cJSON *c;
    cJSON_ArrayForEach(c, cmds)
    {
        cJSON *p = cJSON_GetObjectItemCaseSensitive(c, "password");
        if (cJSON_IsString(p) && p->valuestring != NULL)
            OPENSSL_cleanse(p->valuestring, strlen(p->valuestring));
    }
}

/* Runs cmds (freed here, passwords wiped) and hands back the responses. */
static em_err_t run(em_dynsec_t *d, cJSON *cmds, bool built, cJSON **responses, em_error_t *err)
{
    em_err_t rc = built ? em__dynsec_exec(d, cmds, responses, err)
                        : em_error_set(err, EM_ERR_NOMEM, EM_SEV_HIGH, NULL, "out of memory");
    wipe_passwords(cmds);
    cJSON_Delete(cmds);
    return rc;
}

/* Returns the code itself rather than em_error_set's result, so that the
 * callers' "not EM_OK" is visible here (the analyzers do not see into
 * em_error_set). */
static em_err_t refused(em_error_t *err, const char *command, const char *why)
{
    (void)em_error_set(err, EM_ERR_PROTOCOL, EM_SEV_HIGH, NULL,
                       "the dynamic-security plugin refused %s: %s", command, why);
    return EM_ERR_PROTOCOL;
}

/* ---- whose client ----------------------------------------------------------- */

em__dynsec_owner_t em__dynsec_client_owner(const cJSON *response, const char *marker,
                                           const char **why)
{
    const char *error = em__dynsec_response_error(response);
    if (why != NULL)
        *why = error;
    if (error != NULL)
        return em__dynsec_is_not_found(error) ? EM__DYNSEC_CLIENT_NONE : EM__DYNSEC_CLIENT_FOREIGN;
    const cJSON *client = cJSON_GetObjectItemCaseSensitive(
        cJSON_GetObjectItemCaseSensitive(response, "data"), "client");
    const cJSON *tn = cJSON_GetObjectItemCaseSensitive(client, "textname");
    return cJSON_IsString(tn) && tn->valuestring != NULL && marker != NULL &&
                   strcmp(tn->valuestring, marker) == 0
               ? EM__DYNSEC_CLIENT_OURS
               : EM__DYNSEC_CLIENT_FOREIGN;
}

/* Asks for the client named id and tells whether it exists and is emiot's.
 * Until the plugin has answered, the client counts as someone else's: a
 * failed question never lets emiot touch it. */
static em_err_t client_owner(em_dynsec_t *d, const char *id, const names_t *nm,
                             em__dynsec_owner_t *out, em_error_t *err)
{
    *out = EM__DYNSEC_CLIENT_FOREIGN;
    cJSON *cmds = cJSON_CreateArray();
    bool built = cmds != NULL && add_cmd(cmds, "getClient", "username", id) != NULL;
    cJSON *resp = NULL;
    em_err_t rc = run(d, cmds, built, &resp, err);
    if (rc != EM_OK)
        return rc;
    const char *why = NULL;
    em__dynsec_owner_t owner =
        em__dynsec_client_owner(cJSON_GetArrayItem(resp, 0), nm->marker, &why);
    if (owner == EM__DYNSEC_CLIENT_FOREIGN && why != NULL)
        rc = refused(err, "getClient", why);
    else
        *out = owner;
    cJSON_Delete(resp);
    return rc;
}

/* ---- the public functions ------------------------------------------------- */

em_err_t em_dynsec_new(const em_dynsec_options_t *opts, em_dynsec_t **out, em_error_t *err)
{
    if (out != NULL)
        *out = NULL;
    if (opts == NULL || out == NULL)
        return em_error_set(err, EM_ERR_INVALID_ARGUMENT, EM_SEV_HIGH, NULL,
                            "options and out are required");
    const char *prefix = opts->topic_prefix != NULL ? opts->topic_prefix : EM_TOPIC_PREFIX_DEFAULT;
    em_err_t rc = em_topic_prefix_validate(prefix, err);
    if (rc != EM_OK) {
        if (err != NULL)
            snprintf(err->field, sizeof err->field, "%s", "topic_prefix");
        return rc;
    }
    int timeout_ms = opts->timeout_ms != 0 ? opts->timeout_ms : 5000;
    if (timeout_ms < 1 || timeout_ms > TIMEOUT_MAX)
        return em_error_set(err, EM_ERR_CONFIGURATION, EM_SEV_HIGH, "timeout_ms", "must be 1-%d ms",
                            TIMEOUT_MAX);

    em_dynsec_t *d = calloc(1, sizeof *d);
    if (d == NULL)
        return em_error_set(err, EM_ERR_NOMEM, EM_SEV_HIGH, NULL, "out of memory");
    snprintf(d->prefix, sizeof d->prefix, "%s", prefix);
    d->timeout_ms = timeout_ms;
    if (em__dynsec_ctl_init(d) != 0) {
        free(d);
        return em_error_set(err, EM_ERR_INTERNAL, EM_SEV_HIGH, NULL,
                            "cannot set up the dynamic-security client");
    }

    em_mqtt_options_t mo = opts->mqtt;
    if (mo.client_id == NULL && mo.client_id_prefix == NULL)
        mo.client_id_prefix = "emiot-dynsec-";
    em_mqtt_callbacks_t cbs;
    em__dynsec_callbacks(d, &cbs);
    d->mqtt = em_mqtt_new(&mo, &cbs, err);
    if (d->mqtt == NULL) {
        rc = err != NULL && err->code != EM_OK ? err->code : EM_ERR_INTERNAL;
        em__dynsec_ctl_cleanup(d);
        free(d);
        return rc;
    }
    /* Subscribed before connecting: the transport sends it with the
     * connection, ahead of any command. */
    if ((rc = em_mqtt_subscribe(d->mqtt, EM__DYNSEC_RESPONSE_TOPIC, 1, err)) != EM_OK ||
        (rc = em_mqtt_connect(d->mqtt, timeout_ms, err)) != EM_OK ||
        (rc = em_mqtt_start(d->mqtt, err)) != EM_OK)
        goto fail;

    /* A harmless command proves the whole channel: the plugin is loaded on
     * this listener, the account may use it, and answers come back. */
    cJSON *cmds = cJSON_CreateArray();
    bool built = cmds != NULL && add_cmd(cmds, "getDefaultACLAccess", NULL, NULL) != NULL;
    cJSON *resp = NULL;
    if ((rc = run(d, cmds, built, &resp, err)) != EM_OK)
        goto fail;
    const char *why = em__dynsec_response_error(cJSON_GetArrayItem(resp, 0));
    if (why != NULL)
        rc = refused(err, "getDefaultACLAccess", why);
    cJSON_Delete(resp);
    if (rc != EM_OK)
        goto fail;

    em_log(EM_LOG_INFO, "dynsec", NULL, "connected to the dynamic-security plugin", NULL, 0);
    *out = d;
    return EM_OK;

fail:
    em_mqtt_free(d->mqtt);
    em__dynsec_ctl_cleanup(d);
    free(d);
    return rc;
}

void em_dynsec_free(em_dynsec_t *d)
{
    if (d == NULL)
        return;
    /* The network thread is gone once em_mqtt_free returns: nothing touches
     * the locks after that. */
    em_mqtt_free(d->mqtt);
    em__dynsec_ctl_cleanup(d);
    free(d);
}

/* Checks the arguments shared by the three device functions. */
static em_err_t check_device(em_dynsec_t *d, const char *id, names_t *nm, em_error_t *err)
{
    if (d == NULL || id == NULL)
        return em_error_set(err, EM_ERR_INVALID_ARGUMENT, EM_SEV_MEDIUM, NULL,
                            "the client and a device id are required");
    em_err_t rc = em_device_id_validate(id, strlen(id), err);
    if (rc != EM_OK)
        return rc;
    snprintf(nm->role, sizeof nm->role, "%s%s", ROLE_PREFIX, id);
    snprintf(nm->marker, sizeof nm->marker, "%s%s", MARKER_PREFIX, id);
    return EM_OK;
}

/* check_device, then client_owner: the names of device id and who owns its
 * client (what removing and enabling or disabling start from). */
static em_err_t device_client(em_dynsec_t *d, const char *id, names_t *nm,
                              em__dynsec_owner_t *owner, em_error_t *err)
{
    em_err_t rc = check_device(d, id, nm, err);
    if (rc != EM_OK)
        return rc;
    return client_owner(d, id, nm, owner, err);
}

/* 32 random bytes as base64url without padding: 32 = 10 * 3 + 2, so ten
 * whole groups of three bytes (four characters each) and a last group of two
 * bytes (three characters): 43 characters. */
#define PASSWORD_RAW    32
#define PASSWORD_GROUPS (PASSWORD_RAW / 3)
_Static_assert(PASSWORD_RAW % 3 == 2 && PASSWORD_GROUPS * 4 + 3 == EM_DYNSEC_PASSWORD_LEN,
               "the password is ten whole groups and one of two bytes");

static em_err_t make_password(char out[EM_DYNSEC_PASSWORD_LEN + 1], em_error_t *err)
{
    static const char b64[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    unsigned char raw[PASSWORD_RAW];
    if (RAND_bytes(raw, sizeof raw) != 1)
        return em_error_set(err, EM_ERR_INTERNAL, EM_SEV_HIGH, NULL, "the CSPRNG failed");
    size_t o = 0;
    for (size_t g = 0; g < PASSWORD_GROUPS; g++) {
        const unsigned char *b = raw + 3 * g;
        unsigned v = (unsigned)b[0] << 16 | (unsigned)b[1] << 8 | b[2];
        out[o++] = b64[(v >> 18) & 63];
        out[o++] = b64[(v >> 12) & 63];
        out[o++] = b64[(v >> 6) & 63];
        out[o++] = b64[v & 63];
    }
    /* The last two bytes, as if followed by a zero byte: 16 bits in three
     * characters of 6 (the last one's two low bits are zero). */
    unsigned v = (unsigned)raw[PASSWORD_RAW - 2] << 16 | (unsigned)raw[PASSWORD_RAW - 1] << 8;
    out[o++] = b64[(v >> 18) & 63];
    out[o++] = b64[(v >> 12) & 63];
    out[o++] = b64[(v >> 6) & 63];
    out[o] = '\0';
    OPENSSL_cleanse(raw, sizeof raw);
    return EM_OK;
}

em_err_t em_dynsec_provision(em_dynsec_t *d, const char *device_id, char *password, size_t size,
                             em_error_t *err)
{
    names_t nm;
    em_err_t rc = check_device(d, device_id, &nm, err);
    if (rc != EM_OK)
        return rc;
    if (password == NULL || size < EM_DYNSEC_PASSWORD_LEN + 1)
        return em_error_set(err, EM_ERR_BUFFER_TOO_SMALL, EM_SEV_MEDIUM, "password",
                            "needs %d bytes", EM_DYNSEC_PASSWORD_LEN + 1);
    password[0] = '\0';

    em__dynsec_owner_t owner;
    if ((rc = client_owner(d, device_id, &nm, &owner, err)) != EM_OK)
        return rc;
    if (owner == EM__DYNSEC_CLIENT_FOREIGN)
        return em_error_set(err, EM_ERR_EXISTS, EM_SEV_MEDIUM, "deviceId",
                            "the broker has a client named %s that emiot did not create",
                            device_id);

    /* The role: created, or (already there) its ACLs set again, so that
     * whatever was changed by hand is put back. modifyRole's "acls" replaces
     * the whole list. */
    cJSON *cmds = cJSON_CreateArray();
    cJSON *c1 = cmds != NULL ? add_cmd(cmds, "createRole", "rolename", nm.role) : NULL;
    cJSON *c2 = c1 != NULL ? add_cmd(cmds, "modifyRole", "rolename", nm.role) : NULL;
    bool built = c2 != NULL && cJSON_AddStringToObject(c1, "textname", nm.marker) != NULL &&
                 add_acls(c1, d->prefix, device_id) && add_acls(c2, d->prefix, device_id);
    cJSON *resp = NULL;
    if ((rc = run(d, cmds, built, &resp, err)) != EM_OK)
        return rc;
    const char *why = em__dynsec_response_error(cJSON_GetArrayItem(resp, 1));
    if (why != NULL) {
        const char *first = em__dynsec_response_error(cJSON_GetArrayItem(resp, 0));
        rc = refused(err, first != NULL ? "createRole" : "modifyRole", first != NULL ? first : why);
    }
    cJSON_Delete(resp);
    if (rc != EM_OK)
        return rc;

    char pw[EM_DYNSEC_PASSWORD_LEN + 1];
    if ((rc = make_password(pw, err)) != EM_OK)
        return rc;
    /* A new client starts enabled; an existing one (ours) gets the new
     * password, exactly this role, no group, and is enabled. Changing its
     * password ends its sessions (the plugin kicks the client). */
    cmds = cJSON_CreateArray();
    const char *verb = owner == EM__DYNSEC_CLIENT_NONE ? "createClient" : "modifyClient";
    cJSON *c = cmds != NULL ? add_cmd(cmds, verb, "username", device_id) : NULL;
    built =
        c != NULL && cJSON_AddStringToObject(c, "password", pw) != NULL && add_roles(c, nm.role);
    if (built && owner == EM__DYNSEC_CLIENT_NONE)
        built = cJSON_AddStringToObject(c, "textname", nm.marker) != NULL;
    if (built && owner == EM__DYNSEC_CLIENT_OURS)
        built = cJSON_AddArrayToObject(c, "groups") != NULL &&
                add_cmd(cmds, "enableClient", "username", device_id) != NULL;
    resp = NULL;
    if ((rc = run(d, cmds, built, &resp, err)) == EM_OK) {
        int n = cJSON_GetArraySize(resp);
        for (int i = 0; i < n && rc == EM_OK; i++) {
            why = em__dynsec_response_error(cJSON_GetArrayItem(resp, i));
            if (why != NULL)
                rc = refused(err, i == 0 ? verb : "enableClient", why);
        }
        cJSON_Delete(resp);
    }
    if (rc == EM_OK)
        memcpy(password, pw, sizeof pw);
    OPENSSL_cleanse(pw, sizeof pw);
    if (rc != EM_OK)
        return rc;

    em_log_field_t f[2] = {
        EM_LOG_STR("device", device_id),
        EM_LOG_STR("action", owner == EM__DYNSEC_CLIENT_NONE ? "created" : "replaced")};
    em_log(EM_LOG_INFO, "dynsec", NULL, "MQTT password provisioned", f, 2);
    return EM_OK;
}

em_err_t em_dynsec_remove(em_dynsec_t *d, const char *device_id, em_error_t *err)
{
    names_t nm;
    em__dynsec_owner_t owner;
    em_err_t rc = device_client(d, device_id, &nm, &owner, err);
    if (rc != EM_OK)
        return rc;

    /* The role goes too, even when the client is gone already (a provision
     * that stopped half way leaves one). */
    cJSON *cmds = cJSON_CreateArray();
    bool built = cmds != NULL;
    if (built && owner == EM__DYNSEC_CLIENT_OURS)
        built = add_cmd(cmds, "deleteClient", "username", device_id) != NULL;
    if (built)
        built = add_cmd(cmds, "deleteRole", "rolename", nm.role) != NULL;
    cJSON *resp = NULL;
    if ((rc = run(d, cmds, built, &resp, err)) != EM_OK)
        return rc;
    int n = cJSON_GetArraySize(resp);
    bool removed = false;
    for (int i = 0; i < n && rc == EM_OK; i++) {
        const char *why = em__dynsec_response_error(cJSON_GetArrayItem(resp, i));
        if (why == NULL)
            removed = true;
        else if (!em__dynsec_is_not_found(why))
            rc = refused(err, i + 1 < n ? "deleteClient" : "deleteRole", why);
    }
    cJSON_Delete(resp);
    if (rc != EM_OK)
        return rc;
    if (!removed)
        return em_error_set(err, EM_ERR_NOT_FOUND, EM_SEV_LOW, "deviceId",
                            "device %s has no MQTT password", device_id);
    em_log_field_t f[1] = {EM_LOG_STR("device", device_id)};
    em_log(EM_LOG_INFO, "dynsec", NULL, "MQTT password removed", f, 1);
    return EM_OK;
}

em_err_t em_dynsec_set_enabled(em_dynsec_t *d, const char *device_id, int enabled, em_error_t *err)
{
    names_t nm;
    em__dynsec_owner_t owner;
    em_err_t rc = device_client(d, device_id, &nm, &owner, err);
    if (rc != EM_OK)
        return rc;
    if (owner != EM__DYNSEC_CLIENT_OURS)
        return em_error_set(err, EM_ERR_NOT_FOUND, EM_SEV_LOW, "deviceId",
                            "device %s has no MQTT password", device_id);
    const char *verb = enabled ? "enableClient" : "disableClient";
    cJSON *cmds = cJSON_CreateArray();
    bool built = cmds != NULL && add_cmd(cmds, verb, "username", device_id) != NULL;
    cJSON *resp = NULL;
    if ((rc = run(d, cmds, built, &resp, err)) != EM_OK)
        return rc;
    const char *why = em__dynsec_response_error(cJSON_GetArrayItem(resp, 0));
    if (why != NULL)
        rc = em__dynsec_is_not_found(why)
                 ? em_error_set(err, EM_ERR_NOT_FOUND, EM_SEV_LOW, "deviceId",
                                "device %s has no MQTT password", device_id)
                 : refused(err, verb, why);
    cJSON_Delete(resp);
    if (rc != EM_OK)
        return rc;
    em_log_field_t f[2] = {EM_LOG_STR("device", device_id),
                           EM_LOG_STR("state", enabled ? "enabled" : "disabled")};
    em_log(EM_LOG_INFO, "dynsec", NULL, "MQTT client state changed", f, 2);
    return EM_OK;
}
