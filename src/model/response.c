/*
 * emiot - response.c: devices' answers to commands (see command.h).
 *
 * {"requestId":"req_...","success":true,"message":"...","timestamp":...,
 *  "data":{...}}: requestId and success are required; message, timestamp and
 * data are optional, and null stands for absent (JavaScript devices send it).
 * Other keys are ignored, as in the other device payloads.
 */
#include <stdlib.h>
#include <string.h>

#include "core/json.h"
#include "emiot/clock.h"
#include "emiot/command.h"
#include "emiot/status.h"
#include "model/fields.h"
#include "model/json_util.h"

/* The member key of obj, or NULL when absent or null; refuses a key given
 * twice. *out is written on every path, so no caller can read it unset. */
static em_err_t optional_member(const cJSON *obj, const char *key, const cJSON **out,
                                em_error_t *err)
{
    *out = NULL;
    if (em__json_key_count(obj, key) > 1)
        return em_error_set(err, EM_ERR_VALIDATION, EM_SEV_LOW, key, "must appear only once");
    const cJSON *item = cJSON_GetObjectItemCaseSensitive(obj, key);
    *out = cJSON_IsNull(item) ? NULL : item;
    return EM_OK;
}

/* The body of em_response_decode once root is parsed (an object); on failure
 * the caller frees what out holds. */
static em_err_t decode_tree(const cJSON *root, em_response_t *out, em_error_t *err)
{
    em_err_t rc = em__request_id_read(root, out->request_id, sizeof(out->request_id), err);
    if (rc != EM_OK)
        return rc;

    const cJSON *success, *message, *ts, *data;
    if ((rc = optional_member(root, "success", &success, err)) != EM_OK ||
        (rc = optional_member(root, "message", &message, err)) != EM_OK ||
        (rc = optional_member(root, "timestamp", &ts, err)) != EM_OK ||
        (rc = optional_member(root, "data", &data, err)) != EM_OK)
        return rc;

    if (!cJSON_IsBool(success))
        return em_error_set(err, EM_ERR_VALIDATION, EM_SEV_LOW, "success",
                            "is required and must be true or false");
    out->success = cJSON_IsTrue(success);

    if (message != NULL) {
        size_t len = 0;
        if (!cJSON_IsString(message) || message->valuestring == NULL ||
            (len = strlen(message->valuestring)) > EM_RESPONSE_MESSAGE_MAX)
            return em_error_set(err, EM_ERR_VALIDATION, EM_SEV_LOW, "message",
                                "must be a string of at most %d bytes", EM_RESPONSE_MESSAGE_MAX);
        /* The message is shown to operators and re-encoded into JSON, which
         * must stay valid UTF-8. */
        if (em__utf8_check(message->valuestring, len, false) != EM__UTF8_OK)
            return em_error_set(err, EM_ERR_VALIDATION, EM_SEV_LOW, "message",
                                "must be valid UTF-8");
        memcpy(out->message, message->valuestring, len);
        out->message[len] = '\0';
    }

    if (ts != NULL && (rc = em__field_timestamp(ts, "timestamp", &out->timestamp_ms, err)) != EM_OK)
        return rc;

    if (data != NULL) {
        if (!cJSON_IsObject(data))
            return em_error_set(err, EM_ERR_VALIDATION, EM_SEV_LOW, "data",
                                "must be a JSON object");
        /* The payload was at most EM_PAYLOAD_MAX bytes; compact printing
         * may lengthen numbers ("1e14" has 15 digits), hence the wide bound,
         * which only guards against the impossible. */
        rc = em__json_print_bounded(data, (size_t)4 * EM_PAYLOAD_MAX, &out->data_json);
        if (rc == EM_ERR_NOMEM)
            return em_error_set(err, EM_ERR_NOMEM, EM_SEV_HIGH, "data", "out of memory");
        if (rc != EM_OK)
            return em_error_set(err, EM_ERR_VALIDATION, EM_SEV_LOW, "data", "is too large");
    }
    return EM_OK;
}

em_err_t em_response_decode(const char *payload, size_t len, em_response_t *out, em_error_t *err)
{
    if (out == NULL)
        return em_error_set(err, EM_ERR_INVALID_ARGUMENT, EM_SEV_LOW, NULL, "out is NULL");
    memset(out, 0, sizeof(*out));
    cJSON *root;
    em_err_t rc =
        em__field_parse_object(payload, len, NULL, "a response must be a JSON object", &root, err);
    if (rc != EM_OK)
        return rc;
    rc = decode_tree(root, out, err);
    em__json_free(root);
    if (rc != EM_OK)
        em_response_cleanup(out);
    return rc;
}

em_err_t em_response_encode(const em_response_t *r, char *buf, size_t size, size_t *out_len)
{
    if (r == NULL || buf == NULL)
        return EM_ERR_INVALID_ARGUMENT;
    size_t id_len = strnlen(r->request_id, sizeof(r->request_id));
    if (id_len == 0 || id_len > EM_REQUEST_ID_MAX || !em__is_token(r->request_id, id_len))
        return EM_ERR_INVALID_ARGUMENT;
    size_t msg_len = strnlen(r->message, sizeof(r->message));
    if (msg_len == sizeof(r->message))
        return EM_ERR_INVALID_ARGUMENT; /* not terminated */

    em__jw_t w;
    em__jw_init(&w, buf, size);
    em__jw_lit(&w, "{\"requestId\":\"");
    em__jw_raw(&w, r->request_id, id_len);
    if (r->success)
        em__jw_lit(&w, "\",\"success\":true,\"message\":");
    else
        em__jw_lit(&w, "\",\"success\":false,\"message\":");
    em__jw_str(&w, r->message, msg_len);
    if (r->timestamp_ms != 0) {
        em__jw_lit(&w, ",\"timestamp\":");
        em__jw_i64(&w, r->timestamp_ms);
    }
    if (r->data_json != NULL && r->data_json[0] != '\0') {
        em__jw_lit(&w, ",\"data\":");
        em__jw_raw(&w, r->data_json, strlen(r->data_json));
    }
    em__jw_lit(&w, "}");
    return em__jw_finish(&w, out_len);
}

void em_response_cleanup(em_response_t *r)
{
    if (r == NULL)
        return;
    free(r->data_json);
    memset(r, 0, sizeof(*r));
}
