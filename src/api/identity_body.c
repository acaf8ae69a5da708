/*
 * emiot - identity_body.c: the bodies of the public device identity routes,
 * checked before anything is looked up (identity.h).
 */
#include <stddef.h>
#include <string.h>

#include "api/identity.h"
#include "emiot/device.h"

typedef struct member {
    const char *name;
    bool required;
    size_t offset; /* into em__id_body_t */
} member_t;

#define M(name, req, field)                                                                        \
    {                                                                                              \
        name, req, offsetof(em__id_body_t, field)                                                  \
    }

static const member_t enroll_members[] = {
    M("deviceId", true, device_id), M("token", true, token), M("csr", true, csr), {NULL, 0, 0}};
static const member_t challenge_members[] = {M("deviceId", true, device_id), {NULL, 0, 0}};
static const member_t token_members[] = {M("deviceId", true, device_id),
                                         M("nonce", true, nonce),
                                         M("signature", true, signature),
                                         M("certificate", false, certificate),
                                         {NULL, 0, 0}};

static const member_t *members_of(em__id_route_t route)
{
    switch (route) {
    case EM__ID_ENROLL:
        return enroll_members;
    case EM__ID_CHALLENGE:
        return challenge_members;
    case EM__ID_DEVICE_TOKEN:
        return token_members;
    }
    return NULL;
}

em_err_t em__id_body_validate(em__id_route_t route, const cJSON *obj, em__id_body_t *out,
                              em_error_t *err)
{
    const member_t *ms = members_of(route);
    memset(out, 0, sizeof *out);
    if (ms == NULL || !cJSON_IsObject(obj))
        return em_error_set(err, EM_ERR_VALIDATION, EM_SEV_LOW, "body", "must be a JSON object");
    /* Unknown and repeated members first: cJSON would answer the first of
     * two equal names, and a check of one and use of the other is how such
     * bugs are made. */
    for (const cJSON *it = obj->child; it != NULL; it = it->next) {
        bool known = false;
        for (const member_t *m = ms; m->name != NULL; m++)
            if (it->string != NULL && strcmp(it->string, m->name) == 0)
                known = true;
        for (const cJSON *o = obj->child; known && o != it; o = o->next)
            if (o->string != NULL && strcmp(o->string, it->string) == 0)
                known = false;
        if (!known)
            return em_error_set(err, EM_ERR_VALIDATION, EM_SEV_LOW, "body",
                                "unknown or repeated member");
    }
    for (const member_t *m = ms; m->name != NULL; m++) {
        const cJSON *v = cJSON_GetObjectItemCaseSensitive(obj, m->name);
        if (v == NULL) {
            if (m->required)
                return em_error_set(err, EM_ERR_VALIDATION, EM_SEV_LOW, m->name, "is required");
            continue;
        }
        if (!cJSON_IsString(v) || v->valuestring == NULL)
            return em_error_set(err, EM_ERR_VALIDATION, EM_SEV_LOW, m->name, "must be a string");
        memcpy((char *)out + m->offset, &v->valuestring, sizeof v->valuestring);
    }
    if (route != EM__ID_ENROLL &&
        em_device_id_validate(out->device_id, strlen(out->device_id), NULL) != EM_OK)
        return em_error_set(err, EM_ERR_VALIDATION, EM_SEV_LOW, "deviceId",
                            "must be 3-50 of A-Z a-z 0-9 _ -");
    return EM_OK;
}

bool em__id_token_shape_ok(const char *s, size_t len)
{
    if (len != EM__ENROLL_TOKEN_LEN || memcmp(s, "enr_", 4) != 0)
        return false;
    for (size_t i = 4; i < len; i++)
        if (!((s[i] >= '0' && s[i] <= '9') || (s[i] >= 'a' && s[i] <= 'f')))
            return false;
    return true;
}
