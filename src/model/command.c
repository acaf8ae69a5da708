/*
 * emiot - command.c: command types, payload rules, request ids and the
 * command wire format (see command.h).
 */
#include "emiot/command.h"

#include <openssl/rand.h>
#include <stdlib.h>
#include <string.h>

#include "core/json.h"
#include "emiot/clock.h"
#include "emiot/device.h"
#include "emiot/status.h"
#include "model/command_internal.h"
#include "model/fields.h"
#include "model/json_util.h"

static const char *const type_names[EM_CMD_TYPE_COUNT] = {
    "sleep",      "wake",      "restart", "update", "set_reporting_interval",
    "get_status", "configure", "reset"};

/* Lengths of type_names, so that encoding needs no strlen. */
static const unsigned char type_lens[EM_CMD_TYPE_COUNT] = {5, 4, 7, 6, 22, 10, 9, 5};

static bool type_valid(em_command_type_t type)
{
    return (int)type >= 0 && (unsigned)type < EM_CMD_TYPE_COUNT;
}

const char *em_command_type_name(em_command_type_t type)
{
    return type_valid(type) ? type_names[type] : NULL;
}

em_err_t em_command_type_parse(const char *name, size_t len, em_command_type_t *out,
                               em_error_t *err)
{
    if (name != NULL) {
        for (unsigned i = 0; i < EM_CMD_TYPE_COUNT; i++) {
            if (type_lens[i] == len && memcmp(type_names[i], name, len) == 0) {
                if (out != NULL)
                    *out = (em_command_type_t)i;
                return EM_OK;
            }
        }
    }
    return em_error_set(err, EM_ERR_VALIDATION, EM_SEV_LOW, "type",
                        "must be one of sleep, wake, restart, update, set_reporting_interval, "
                        "get_status, configure, reset");
}

/*
 * Checks that every key of obj is one of allowed (n of them, n <= 8) and that
 * none appears twice. The keys found are returned as a bit mask in *seen.
 */
static em_err_t check_keys(em_command_type_t type, const cJSON *obj, const char *const *allowed,
                           unsigned n, unsigned *seen, em_error_t *err)
{
    *seen = 0;
    for (const cJSON *c = obj->child; c != NULL; c = c->next) {
        const char *key = c->string != NULL ? c->string : "";
        unsigned i = 0;
        while (i < n && strcmp(key, allowed[i]) != 0)
            i++;
        if (i == n) {
            if (n == 0)
                return em_error_set(err, EM_ERR_VALIDATION, EM_SEV_LOW, key,
                                    "is not allowed: %s takes no parameters", type_names[type]);
            return em_error_set(err, EM_ERR_VALIDATION, EM_SEV_LOW, key, "is not a parameter of %s",
                                type_names[type]);
        }
        if (*seen & (1u << i))
            return em_error_set(err, EM_ERR_VALIDATION, EM_SEV_LOW, key, "must appear only once");
        *seen |= 1u << i;
    }
    return EM_OK;
}

static bool version_valid(const char *s, size_t len)
{
    if (len < 1 || len > EM_FIRMWARE_VERSION_MAX)
        return false;
    for (size_t i = 0; i < len; i++) {
        unsigned char c = (unsigned char)s[i];
        bool ok = (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
                  c == '.' || c == '+' || c == '_' || c == '-';
        if (!ok)
            return false;
    }
    return true;
}

/*
 * Applies type's rules to a payload: obj is a JSON object, or NULL when the
 * command has no payload. The size of a configure payload is checked where it
 * is printed.
 */
static em_err_t check_payload(em_command_type_t type, const cJSON *obj, em_error_t *err)
{
    static const char *const sleep_keys[] = {"duration"};
    static const char *const update_keys[] = {"version"};
    static const char *const interval_keys[] = {"interval"};
    static const char *const reset_keys[] = {"confirm"};
    unsigned seen = 0;
    int64_t v;
    em_err_t rc;

    switch (type) {
    case EM_CMD_SLEEP:
        if (obj == NULL)
            return EM_OK;
        if ((rc = check_keys(type, obj, sleep_keys, 1, &seen, err)) != EM_OK)
            return rc;
        if (seen & 1u)
            return em__json_int(cJSON_GetObjectItemCaseSensitive(obj, "duration"), "duration",
                                EM_SLEEP_DURATION_MIN, EM_SLEEP_DURATION_MAX, &v, err);
        return EM_OK;

    case EM_CMD_WAKE:
    case EM_CMD_RESTART:
    case EM_CMD_GET_STATUS:
        if (obj == NULL)
            return EM_OK;
        return check_keys(type, obj, NULL, 0, &seen, err);

    case EM_CMD_UPDATE: {
        if (obj == NULL)
            return EM_OK;
        if ((rc = check_keys(type, obj, update_keys, 1, &seen, err)) != EM_OK)
            return rc;
        if ((seen & 1u) == 0)
            return EM_OK;
        const cJSON *ver = cJSON_GetObjectItemCaseSensitive(obj, "version");
        if (!cJSON_IsString(ver) || ver->valuestring == NULL ||
            !version_valid(ver->valuestring, strlen(ver->valuestring)))
            return em_error_set(err, EM_ERR_VALIDATION, EM_SEV_LOW, "version",
                                "must be 1-%d characters of 0-9 A-Z a-z . + _ -",
                                EM_FIRMWARE_VERSION_MAX);
        return EM_OK;
    }

    case EM_CMD_SET_REPORTING_INTERVAL:
        if (obj != NULL && (rc = check_keys(type, obj, interval_keys, 1, &seen, err)) != EM_OK)
            return rc;
        if ((seen & 1u) == 0)
            return em_error_set(err, EM_ERR_VALIDATION, EM_SEV_LOW, "interval",
                                "is required (integer seconds %d to %d)", EM_CMD_INTERVAL_MIN,
                                EM_CMD_INTERVAL_MAX);
        return em__json_int(cJSON_GetObjectItemCaseSensitive(obj, "interval"), "interval",
                            EM_CMD_INTERVAL_MIN, EM_CMD_INTERVAL_MAX, &v, err);

    case EM_CMD_CONFIGURE: {
        if (obj == NULL || obj->child == NULL)
            return em_error_set(err, EM_ERR_VALIDATION, EM_SEV_LOW, "payload",
                                "must be a non-empty object for configure");
        em_device_config_t cfg;
        return em__device_config_from_json(obj, true, &cfg, err);
    }

    case EM_CMD_RESET: {
        if (obj != NULL && (rc = check_keys(type, obj, reset_keys, 1, &seen, err)) != EM_OK)
            return rc;
        const cJSON *confirm =
            (seen & 1u) ? cJSON_GetObjectItemCaseSensitive(obj, "confirm") : NULL;
        if (!cJSON_IsTrue(confirm))
            return em_error_set(err, EM_ERR_VALIDATION, EM_SEV_LOW, "confirm",
                                "must be true: reset requires {\"confirm\":true}");
        return EM_OK;
    }
    }
    return em_error_set(err, EM_ERR_VALIDATION, EM_SEV_LOW, "type", "unknown command type");
}

/*
 * Prints obj compactly into a new heap string, refusing more than
 * EM_CMD_PAYLOAD_MAX bytes. Errors: EM_ERR_VALIDATION (too large),
 * EM_ERR_NOMEM.
 */
static em_err_t compact_payload(const cJSON *obj, char **out, em_error_t *err)
{
    em_err_t rc = em__json_print_bounded(obj, EM_CMD_PAYLOAD_MAX, out);
    if (rc == EM_ERR_LIMIT)
        return em_error_set(err, EM_ERR_VALIDATION, EM_SEV_LOW, "payload",
                            "must be at most %d bytes as compact JSON", EM_CMD_PAYLOAD_MAX);
    if (rc != EM_OK)
        return em_error_set(err, EM_ERR_NOMEM, EM_SEV_HIGH, "payload", "out of memory");
    return EM_OK;
}

/* Parses a caller's payload text: NULL (or empty) means no payload, anything
 * else must be a JSON object. *root is NULL for no payload. */
static em_err_t parse_payload(const char *payload, size_t len, cJSON **root, em_error_t *err)
{
    *root = NULL;
    if (payload == NULL || len == 0)
        return EM_OK;
    cJSON *r = em__json_parse(payload, len, err);
    if (r == NULL)
        return err != NULL ? err->code : EM_ERR_MESSAGE_FORMAT;
    if (!cJSON_IsObject(r)) {
        em__json_free(r);
        return em_error_set(err, EM_ERR_VALIDATION, EM_SEV_LOW, "payload", "must be a JSON object");
    }
    *root = r;
    return EM_OK;
}

/* Nesting depth of item counted in containers, as the parser's limit counts
 * it ({"a":1} is 1, a scalar 0). item comes from em__json_parse, which refuses
 * input nested deeper than EM_JSON_DEPTH_MAX, so the recursion is at most that
 * deep. */
// NOLINTNEXTLINE(misc-no-recursion): depth is bounded by EM_JSON_DEPTH_MAX (see above)
static unsigned json_depth(const cJSON *item)
{
    if (!cJSON_IsObject(item) && !cJSON_IsArray(item))
        return 0;
    unsigned deepest = 0;
    for (const cJSON *c = item->child; c != NULL; c = c->next) {
        unsigned d = json_depth(c);
        if (d > deepest)
            deepest = d;
    }
    return deepest + 1;
}

/* Validates and, when out is not NULL, stores the compact payload. */
static em_err_t validate_text(em_command_type_t type, const char *payload, size_t payload_len,
                              char **out, em_error_t *err)
{
    if (!type_valid(type))
        return em_error_set(err, EM_ERR_VALIDATION, EM_SEV_LOW, "type", "unknown command type");
    cJSON *root;
    em_err_t rc = parse_payload(payload, payload_len, &root, err);
    if (rc != EM_OK)
        return rc;
    /* On the wire the payload sits one level inside the command, which a
     * device decodes with the same depth limit: a payload that would push the
     * command past it could never be delivered. */
    if (root != NULL && json_depth(root) > EM_JSON_DEPTH_MAX - 1)
        rc = em_error_set(err, EM_ERR_VALIDATION, EM_SEV_LOW, "payload",
                          "must not be nested deeper than %d levels", EM_JSON_DEPTH_MAX - 1);
    else
        rc = check_payload(type, root, err);
    if (rc == EM_OK && root != NULL) {
        char *text = NULL;
        rc = compact_payload(root, &text, err);
        if (out != NULL)
            *out = text;
        else
            free(text);
    }
    em__json_free(root);
    return rc;
}

em_err_t em_command_validate(em_command_type_t type, const char *payload, size_t payload_len,
                             em_error_t *err)
{
    return validate_text(type, payload, payload_len, NULL, err);
}

em_err_t em_command_init(em_command_t *cmd, em_command_type_t type, const char *payload,
                         size_t payload_len, em_error_t *err)
{
    if (cmd == NULL)
        return em_error_set(err, EM_ERR_INVALID_ARGUMENT, EM_SEV_LOW, NULL, "cmd is NULL");
    memset(cmd, 0, sizeof(*cmd));
    char *text = NULL;
    em_err_t rc = validate_text(type, payload, payload_len, &text, err);
    if (rc != EM_OK)
        return rc;
    if (em_request_id_new(cmd->request_id, sizeof(cmd->request_id)) != EM_OK) {
        free(text);
        memset(cmd, 0, sizeof(*cmd));
        return em_error_set(err, EM_ERR_INTERNAL, EM_SEV_HIGH, "requestId",
                            "the random number generator failed");
    }
    cmd->type = type;
    cmd->payload_json = text;
    cmd->timestamp_ms = em_now_ms();
    return EM_OK;
}

void em_command_cleanup(em_command_t *cmd)
{
    if (cmd == NULL)
        return;
    free(cmd->payload_json);
    memset(cmd, 0, sizeof(*cmd));
}

em_err_t em_command_encode(const em_command_t *cmd, char *buf, size_t size, size_t *out_len)
{
    if (cmd == NULL || buf == NULL || !type_valid(cmd->type))
        return EM_ERR_INVALID_ARGUMENT;
    /* The request id is copied without escaping, so make sure it needs none
     * (the struct is public and may have been filled by hand). */
    size_t id_len = strnlen(cmd->request_id, sizeof(cmd->request_id));
    if (id_len == 0 || id_len > EM_REQUEST_ID_MAX || !em__is_token(cmd->request_id, id_len))
        return EM_ERR_INVALID_ARGUMENT;
    const char *payload = cmd->payload_json;
    size_t payload_len = payload != NULL ? strlen(payload) : 0;
    if (payload_len == 0) {
        payload = "{}";
        payload_len = 2;
    }

    em__jw_t w;
    em__jw_init(&w, buf, size);
    em__jw_lit(&w, "{\"type\":\"");
    em__jw_raw(&w, type_names[cmd->type], type_lens[cmd->type]);
    em__jw_lit(&w, "\",\"payload\":");
    em__jw_raw(&w, payload, payload_len);
    em__jw_lit(&w, ",\"timestamp\":");
    em__jw_i64(&w, cmd->timestamp_ms);
    em__jw_lit(&w, ",\"requestId\":\"");
    em__jw_raw(&w, cmd->request_id, id_len);
    em__jw_lit(&w, "\"}");
    return em__jw_finish(&w, out_len);
}

/* The member key of obj, or NULL when absent; refuses a key given twice. */
static em_err_t unique_member(const cJSON *obj, const char *key, const cJSON **out, em_error_t *err)
{
    *out = NULL;
    for (const cJSON *c = obj->child; c != NULL; c = c->next) {
        if (c->string == NULL || strcmp(c->string, key) != 0)
            continue;
        if (*out != NULL)
            return em_error_set(err, EM_ERR_VALIDATION, EM_SEV_LOW, key, "must appear only once");
        *out = c;
    }
    return EM_OK;
}

/* Reads requestId (required): 1-64 of [A-Za-z0-9_-]. Shared with response.c
 * through json_util.h. */
em_err_t em__request_id_read(const cJSON *obj, char *out, size_t size, em_error_t *err)
{
    const cJSON *item;
    em_err_t rc = unique_member(obj, "requestId", &item, err);
    if (rc != EM_OK)
        return rc;
    /* NULL when requestId is absent or not a string. */
    const char *id = cJSON_GetStringValue(item);
    size_t len = id != NULL ? strlen(id) : 0;
    if (len == 0 || len > EM_REQUEST_ID_MAX || len >= size || !em__is_token(id, len))
        return em_error_set(err, EM_ERR_VALIDATION, EM_SEV_LOW, "requestId",
                            "must be 1-%d characters of A-Z a-z 0-9 _ -", EM_REQUEST_ID_MAX);
    memcpy(out, id, len);
    out[len] = '\0';
    return EM_OK;
}

/* The body of em_command_decode once root is parsed (an object). */
static em_err_t decode_tree(const cJSON *root, em_command_t *cmd, em_error_t *err)
{
    const cJSON *type, *payload, *ts;
    em_err_t rc;
    if ((rc = unique_member(root, "type", &type, err)) != EM_OK ||
        (rc = unique_member(root, "payload", &payload, err)) != EM_OK ||
        (rc = unique_member(root, "timestamp", &ts, err)) != EM_OK)
        return rc;

    if (type == NULL)
        return em_error_set(err, EM_ERR_VALIDATION, EM_SEV_LOW, "type", "is required");
    if (!cJSON_IsString(type) || type->valuestring == NULL)
        return em_error_set(err, EM_ERR_VALIDATION, EM_SEV_LOW, "type", "must be a string");
    em_command_type_t t;
    if ((rc = em_command_type_parse(type->valuestring, strlen(type->valuestring), &t, err)) !=
        EM_OK)
        return rc;

    if (payload != NULL && !cJSON_IsObject(payload))
        return em_error_set(err, EM_ERR_VALIDATION, EM_SEV_LOW, "payload", "must be a JSON object");
    if ((rc = check_payload(t, payload, err)) != EM_OK)
        return rc;

    if (ts == NULL)
        return em_error_set(err, EM_ERR_VALIDATION, EM_SEV_LOW, "timestamp", "is required");
    int64_t ms;
    if ((rc = em__json_int(ts, "timestamp", 0, EM__TIMESTAMP_MAX_MS, &ms, err)) != EM_OK)
        return rc;

    if ((rc = em__request_id_read(root, cmd->request_id, sizeof(cmd->request_id), err)) != EM_OK)
        return rc;

    char *text = NULL;
    if (payload != NULL && (rc = compact_payload(payload, &text, err)) != EM_OK)
        return rc;
    cmd->type = t;
    cmd->payload_json = text;
    cmd->timestamp_ms = ms;
    return EM_OK;
}

em_err_t em_command_decode(const char *json, size_t len, em_command_t *cmd, em_error_t *err)
{
    if (cmd == NULL)
        return em_error_set(err, EM_ERR_INVALID_ARGUMENT, EM_SEV_LOW, NULL, "cmd is NULL");
    memset(cmd, 0, sizeof(*cmd));
    cJSON *root;
    em_err_t rc =
        em__field_parse_object(json, len, NULL, "a command must be a JSON object", &root, err);
    if (rc != EM_OK)
        return rc;
    rc = decode_tree(root, cmd, err);
    em__json_free(root);
    if (rc != EM_OK)
        memset(cmd, 0, sizeof(*cmd));
    return rc;
}

void em__request_id_format(const unsigned char rnd[EM__REQUEST_ID_BYTES], char *buf)
{
    static const char hex[] = "0123456789abcdef";
    memcpy(buf, "req_", 4);
    for (size_t i = 0; i < EM__REQUEST_ID_BYTES; i++) {
        buf[4 + 2 * i] = hex[rnd[i] >> 4];
        buf[4 + 2 * i + 1] = hex[rnd[i] & 15];
    }
    buf[EM_REQUEST_ID_LEN] = '\0';
}

em_err_t em_request_id_new(char *buf, size_t size)
{
    if (buf == NULL)
        return EM_ERR_INVALID_ARGUMENT;
    if (size < EM_REQUEST_ID_LEN + 1) {
        if (size > 0)
            buf[0] = '\0';
        return EM_ERR_BUFFER_TOO_SMALL;
    }
    unsigned char rnd[EM__REQUEST_ID_BYTES];
    if (RAND_bytes(rnd, (int)sizeof(rnd)) != 1) {
        buf[0] = '\0';
        return EM_ERR_INTERNAL;
    }
    em__request_id_format(rnd, buf);
    return EM_OK;
}
