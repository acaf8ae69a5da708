/*
 * emiot - event.c: device-side events and availability payloads (see status.h).
 */
#include "emiot/status.h"

#include <stdlib.h>
#include <string.h>

#include "model/fields.h"

#define RULE_TYPE      "must be a string of 1 to 32 characters of a-z 0-9 _"
#define RULE_DETAILS   "must be a JSON object of at most 4096 bytes as compact JSON"
#define RULE_DUPLICATE "appears more than once"

void em_device_event_cleanup(em_device_event_t *ev)
{
    if (ev == NULL)
        return;
    free(ev->details_json);
    memset(ev, 0, sizeof(*ev));
}

static em_err_t decode_type(const cJSON *v, em_device_event_t *out, em_error_t *err)
{
    if (!cJSON_IsString(v))
        return em__field_invalid(err, "type", RULE_TYPE);
    const char *s = v->valuestring;
    size_t n = 0;
    for (; s[n] != '\0'; n++) {
        char c = s[n];
        if (n >= EM_EVENT_TYPE_MAX ||
            !((c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || c == '_'))
            return em__field_invalid(err, "type", RULE_TYPE);
    }
    if (n == 0)
        return em__field_invalid(err, "type", RULE_TYPE);
    memcpy(out->type, s, n + 1);
    return EM_OK;
}

em_err_t em_device_event_decode(const char *payload, size_t len, em_device_event_t *out,
                                em_error_t *err)
{
    if (out == NULL)
        return em_error_set(err, EM_ERR_INVALID_ARGUMENT, EM_SEV_LOW, NULL, "no output");
    memset(out, 0, sizeof(*out));
    cJSON *root;
    em_err_t rc =
        em__field_parse_object(payload, len, NULL, "event must be a JSON object", &root, err);
    if (rc != EM_OK)
        return rc;

    bool have_type = false, have_details = false, have_ts = false;
    for (const cJSON *v = root->child; v != NULL && rc == EM_OK; v = v->next) {
        const char *k = v->string;
        bool *seen;
        if (strcmp(k, "type") == 0)
            seen = &have_type;
        else if (strcmp(k, "details") == 0)
            seen = &have_details;
        else if (strcmp(k, "timestamp") == 0)
            seen = &have_ts;
        else
            continue; /* unknown keys are allowed and ignored */
        if (*seen) {
            rc = em__field_invalid(err, k, RULE_DUPLICATE);
            break;
        }
        *seen = true;
        if (seen == &have_type)
            rc = decode_type(v, out, err);
        else if (seen == &have_details)
            rc = cJSON_IsObject(v) ? em__field_compact(v, k, RULE_DETAILS, EM_EVENT_DETAILS_MAX,
                                                       &out->details_json, err)
                                   : em__field_invalid(err, k, RULE_DETAILS);
        else
            rc = em__field_timestamp(v, k, &out->timestamp_ms, err);
    }
    if (rc == EM_OK && !have_type)
        rc = em__field_invalid(err, "type", "is required");
    em__json_free(root);
    if (rc != EM_OK)
        em_device_event_cleanup(out);
    return rc;
}

em_err_t em_availability_decode(const char *payload, size_t len, bool *online, em_error_t *err)
{
    if (online == NULL)
        return em_error_set(err, EM_ERR_INVALID_ARGUMENT, EM_SEV_LOW, NULL, "no output");
    if (payload != NULL && len == 6 && memcmp(payload, "online", 6) == 0) {
        *online = true;
        return EM_OK;
    }
    if (payload != NULL && len == 7 && memcmp(payload, "offline", 7) == 0) {
        *online = false;
        return EM_OK;
    }
    return em__field_invalid(err, "availability", "must be exactly online or offline");
}
