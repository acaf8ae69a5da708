/*
 * emiot - routes_access.c: API keys, users, tokens and whoami (docs/API.md,
 * "API keys, users, tokens"). Every change is an audit event.
 */
#include <math.h>
#include <stdio.h>
#include <string.h>

#include <event2/http.h>
#include <openssl/crypto.h>

#include "api/api_core.h"
#include "api/encode.h"
#include "emiot/clock.h"

/* 100,000 requests a second: above what one API serves (W5: 20,000 a second
 * and more), so that a key is never the limit of a client the API can keep
 * up with. */
#define KEY_RATE_MAX   6000000
#define EXPIRES_IN_MIN 60
#define EXPIRES_IN_MAX 315576000 /* ten years of 365.25 days */
#define TOKEN_TTL_MIN  60
#define TOKEN_TTL_MAX  86400
#define TOKEN_BUF      2048

/* Ordering for "not above the creator": device < viewer < operator < admin. */
static int rank(em_role_t r)
{
    switch (r) {
    case EM_ROLE_DEVICE:
        return 1;
    case EM_ROLE_VIEWER:
        return 2;
    case EM_ROLE_OPERATOR:
        return 3;
    case EM_ROLE_ADMIN:
        return 4;
    default:
        return 0;
    }
}

static bool bad(em__api_req_t *r, const char *msg)
{
    em__api_error(r, 400, "validation", msg, NULL);
    return false;
}

/* A display name: 1-64 bytes, no control characters. */
static bool name_ok(const char *s)
{
    size_t len = strlen(s);
    if (len == 0 || len > EM_STORE_NAME_MAX)
        return false;
    for (size_t i = 0; i < len; i++)
        if ((unsigned char)s[i] < 0x20 || s[i] == 0x7F)
            return false;
    return true;
}

/* A user name: 1-64 of [A-Za-z0-9._@-]. */
static bool user_name_ok(const char *s)
{
    size_t len = strlen(s);
    if (len == 0 || len > EM_STORE_NAME_MAX)
        return false;
    for (size_t i = 0; i < len; i++) {
        char c = s[i];
        if (!((c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') ||
              c == '.' || c == '_' || c == '@' || c == '-'))
            return false;
    }
    return true;
}

static bool key_id_ok(const char *s)
{
    if (strlen(s) != 14 || s[0] != 'k' || s[1] != '_')
        return false;
    for (size_t i = 2; i < 14; i++)
        if (!((s[i] >= '0' && s[i] <= '9') || (s[i] >= 'a' && s[i] <= 'f')))
            return false;
    return true;
}

/* An integer member in [min, max]; absent leaves *out alone. */
static bool int_field(em__api_req_t *r, const cJSON *obj, const char *name, double min, double max,
                      double *out)
{
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(obj, name);
    if (v == NULL)
        return true;
    char msg[96];
    if (!cJSON_IsNumber(v) || v->valuedouble != floor(v->valuedouble) || v->valuedouble < min ||
        v->valuedouble > max) {
        snprintf(msg, sizeof msg, "%s: must be an integer from %.0f to %.0f", name, min, max);
        return bad(r, msg);
    }
    *out = v->valuedouble;
    return true;
}

/* A required or optional string member; *out NULL when absent. */
static bool str_field(em__api_req_t *r, const cJSON *obj, const char *name, bool required,
                      const char **out)
{
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(obj, name);
    char msg[96];
    *out = NULL;
    if (v == NULL || cJSON_IsNull(v)) {
        if (!required)
            return true;
        snprintf(msg, sizeof msg, "%s: is required", name);
        return bad(r, msg);
    }
    if (!cJSON_IsString(v)) {
        snprintf(msg, sizeof msg, "%s: must be a string", name);
        return bad(r, msg);
    }
    *out = v->valuestring;
    return true;
}

static bool add(cJSON *o, const char *name, cJSON *v)
{
    if (v == NULL)
        return false;
    if (!cJSON_AddItemToObject(o, name, v)) {
        cJSON_Delete(v);
        return false;
    }
    return true;
}

/* The listing form of a key (never its hash). */
static cJSON *enc_key(const em_store_api_key_t *k)
{
    cJSON *o = cJSON_CreateObject();
    if (o == NULL)
        return NULL;
    const char *role = em_role_name(k->role);
    bool ok = add(o, "keyId", cJSON_CreateString(k->key_id)) &&
              add(o, "name", cJSON_CreateString(k->name)) &&
              add(o, "role", role ? cJSON_CreateString(role) : cJSON_CreateNull()) &&
              add(o, "deviceId", em__enc_str_or_null(k->device_id)) &&
              add(o, "owner", em__enc_str_or_null(k->owner)) &&
              add(o, "createdAt", em__enc_time(k->created_at_ms)) &&
              add(o, "expiresAt", em__enc_time(k->expires_at_ms)) &&
              add(o, "lastUsed", em__enc_time(k->last_used_ms)) &&
              add(o, "revokedAt", em__enc_time(k->revoked_at_ms)) &&
              add(o, "ratePerMinute",
                  k->rate_per_min ? cJSON_CreateNumber(k->rate_per_min) : cJSON_CreateNull());
    if (!ok) {
        cJSON_Delete(o);
        return NULL;
    }
    return o;
}

static cJSON *enc_user(const em_store_user_t *u)
{
    cJSON *o = cJSON_CreateObject();
    if (o == NULL)
        return NULL;
    const char *role = em_role_name(u->role);
    bool ok = add(o, "name", cJSON_CreateString(u->name)) &&
              add(o, "role", role ? cJSON_CreateString(role) : cJSON_CreateNull()) &&
              add(o, "disabled", cJSON_CreateBool(u->disabled)) &&
              add(o, "createdAt", em__enc_time(u->created_at_ms));
    if (!ok) {
        cJSON_Delete(o);
        return NULL;
    }
    return o;
}

static bool no_params(em__api_req_t *r)
{
    static const char *const none[] = {NULL};
    return em__api_only_params(r, none);
}

/* ---- keys ------------------------------------------------------------- */

static void create_key(em__api_req_t *r)
{
    static const char *const fields[] = {"name",          "role",      "deviceId",
                                         "ratePerMinute", "expiresIn", NULL};
    if (!no_params(r))
        return;
    cJSON *body = em__api_body_object(r);
    if (body == NULL)
        return;
    const char *name = NULL, *role_s = NULL, *device = NULL;
    double rate = 0, expires_in = 0;
    em_role_t role = EM_ROLE_NONE;
    if (!em__api_only_fields(r, body, fields) || !str_field(r, body, "name", true, &name) ||
        !str_field(r, body, "role", true, &role_s) ||
        !str_field(r, body, "deviceId", false, &device) ||
        !int_field(r, body, "ratePerMinute", 1, KEY_RATE_MAX, &rate) ||
        !int_field(r, body, "expiresIn", EXPIRES_IN_MIN, EXPIRES_IN_MAX, &expires_in))
        goto out;
    if (!name_ok(name)) {
        bad(r, "name: must be 1-64 characters without control characters");
        goto out;
    }
    if (em_role_parse(role_s, &role) != EM_OK || role == EM_ROLE_NONE) {
        bad(r, "role: must be viewer, operator, admin or device");
        goto out;
    }
    if (rank(role) > rank(r->who.role)) {
        bad(r, "role: must not be above the creator's role");
        goto out;
    }
    if (role == EM_ROLE_DEVICE) {
        if (device == NULL) {
            bad(r, "deviceId: is required for role device");
            goto out;
        }
        em_error_t e;
        em_error_clear(&e);
        if (em_device_id_validate(device, strlen(device), &e) != EM_OK) {
            snprintf(e.field, sizeof e.field, "deviceId");
            em__api_error_from(r, EM_ERR_VALIDATION, &e);
            goto out;
        }
        em_store_device_t d;
        em_err_t rc = em_store_device_get(r->store, device, &d, &e);
        if (rc == EM_ERR_DEVICE_NOT_FOUND || rc == EM_ERR_NOT_FOUND) {
            bad(r, "deviceId: must name an existing device");
            goto out;
        }
        if (rc != EM_OK) {
            em__api_error_from(r, rc, &e);
            goto out;
        }
    } else if (device != NULL) {
        bad(r, "deviceId: only for role device");
        goto out;
    }

    char key[EM_API_KEY_LEN + 1];
    em_store_api_key_t rec;
    memset(&rec, 0, sizeof rec);
    if (em__api_key_generate(key, sizeof key, &rec) != EM_OK) {
        em__api_error(r, 500, NULL, NULL, "CSPRNG failure");
        goto out;
    }
    snprintf(rec.name, sizeof rec.name, "%s", name);
    rec.role = role;
    if (device != NULL)
        snprintf(rec.device_id, sizeof rec.device_id, "%s", device);
    snprintf(rec.owner, sizeof rec.owner, "%s", r->who.actor);
    rec.rate_per_min = (uint32_t)rate;
    rec.created_at_ms = r->now_ms;
    rec.expires_at_ms = expires_in > 0 ? r->now_ms + (int64_t)expires_in * 1000 : 0;
    em_error_t e;
    em_error_clear(&e);
    em_err_t rc = em_store_api_key_insert(r->store, &rec, &e);
    if (rc != EM_OK) {
        OPENSSL_cleanse(key, sizeof key);
        OPENSSL_cleanse(rec.hash, sizeof rec.hash);
        em__api_error_from(r, rc, &e);
        goto out;
    }
    em__api_audit(r, "key_created", device, "API key %s (%s, role %s) created", rec.key_id,
                  rec.name, em_role_name(role));
    cJSON *data = enc_key(&rec);
    OPENSSL_cleanse(rec.hash, sizeof rec.hash);
    if (data == NULL || !add(data, "key", cJSON_CreateString(key))) {
        OPENSSL_cleanse(key, sizeof key);
        cJSON_Delete(data);
        em__api_error(r, 500, NULL, NULL, "out of memory");
        goto out;
    }
    OPENSSL_cleanse(key, sizeof key);
    em__api_reply(r, 201, data, NULL);
out:
    cJSON_Delete(body);
}

typedef struct list_ctx {
    cJSON *arr;
    bool oom;
} list_ctx_t;

static int key_row(const em_store_api_key_t *k, void *ud)
{
    list_ctx_t *c = ud;
    cJSON *o = enc_key(k);
    if (o == NULL || !cJSON_AddItemToArray(c->arr, o)) {
        cJSON_Delete(o);
        c->oom = true;
        return 1;
    }
    return 0;
}

static void answer_list(em__api_req_t *r, em_err_t rc, const em_error_t *e, list_ctx_t *c)
{
    if (rc != EM_OK || c->oom) {
        cJSON_Delete(c->arr);
        if (rc != EM_OK)
            em__api_error_from(r, rc, e);
        else
            em__api_error(r, 500, NULL, NULL, "out of memory");
        return;
    }
    em__api_reply(r, 200, c->arr, NULL);
}

static void list_keys(em__api_req_t *r)
{
    if (!no_params(r))
        return;
    list_ctx_t c = {cJSON_CreateArray(), false};
    if (c.arr == NULL) {
        em__api_error(r, 500, NULL, NULL, "out of memory");
        return;
    }
    em_error_t e;
    em_error_clear(&e);
    em_err_t rc = em_store_api_key_list(r->store, key_row, &c, &e);
    answer_list(r, rc, &e, &c);
}

static void revoke_key(em__api_req_t *r)
{
    if (!no_params(r))
        return;
    const char *id = r->captures[0];
    if (!key_id_ok(id)) {
        em__api_error(r, 404, "not_found", "no such key", NULL);
        return;
    }
    em_error_t e;
    em_error_clear(&e);
    em_err_t rc = em_store_api_key_revoke(r->store, id, r->now_ms, &e);
    if (rc == EM_ERR_NOT_FOUND) {
        em__api_error(r, 404, "not_found", "no such key", NULL);
        return;
    }
    if (rc != EM_OK) {
        em__api_error_from(r, rc, &e);
        return;
    }
    em__api_auth_forget_key(r->api, id);
    em__api_audit(r, "key_revoked", NULL, "API key %s revoked", id);
    em__api_reply(r, 200, NULL, NULL);
}

/* ---- users ------------------------------------------------------------ */

static int user_row(const em_store_user_t *u, void *ud)
{
    list_ctx_t *c = ud;
    cJSON *o = enc_user(u);
    if (o == NULL || !cJSON_AddItemToArray(c->arr, o)) {
        cJSON_Delete(o);
        c->oom = true;
        return 1;
    }
    return 0;
}

static void list_users(em__api_req_t *r)
{
    if (!no_params(r))
        return;
    list_ctx_t c = {cJSON_CreateArray(), false};
    if (c.arr == NULL) {
        em__api_error(r, 500, NULL, NULL, "out of memory");
        return;
    }
    em_error_t e;
    em_error_clear(&e);
    em_err_t rc = em_store_user_list(r->store, user_row, &c, &e);
    answer_list(r, rc, &e, &c);
}

static void create_user(em__api_req_t *r)
{
    static const char *const fields[] = {"name", "role", NULL};
    if (!no_params(r))
        return;
    cJSON *body = em__api_body_object(r);
    if (body == NULL)
        return;
    const char *name = NULL, *role_s = NULL;
    em_role_t role = EM_ROLE_NONE;
    if (!em__api_only_fields(r, body, fields) || !str_field(r, body, "name", true, &name) ||
        !str_field(r, body, "role", true, &role_s))
        goto out;
    if (!user_name_ok(name)) {
        bad(r, "name: must be 1-64 of A-Z a-z 0-9 . _ @ -");
        goto out;
    }
    if (em_role_parse(role_s, &role) != EM_OK || role == EM_ROLE_NONE || role == EM_ROLE_DEVICE) {
        bad(r, "role: must be viewer, operator or admin");
        goto out;
    }
    if (rank(role) > rank(r->who.role)) {
        bad(r, "role: must not be above the creator's role");
        goto out;
    }
    em_store_user_t u;
    memset(&u, 0, sizeof u);
    snprintf(u.name, sizeof u.name, "%s", name);
    u.role = role;
    u.created_at_ms = r->now_ms;
    em_error_t e;
    em_error_clear(&e);
    em_err_t rc = em_store_user_insert(r->store, &u, &e);
    if (rc == EM_ERR_EXISTS) {
        em__api_error(r, 409, "already_exists", "name: a user with this name exists", NULL);
        goto out;
    }
    if (rc != EM_OK) {
        em__api_error_from(r, rc, &e);
        goto out;
    }
    em__api_auth_forget_user(r->api, u.name);
    em__api_audit(r, "user_created", NULL, "user %s (role %s) created", u.name, em_role_name(role));
    cJSON *data = enc_user(&u);
    if (data == NULL)
        em__api_error(r, 500, NULL, NULL, "out of memory");
    else
        em__api_reply(r, 201, data, NULL);
out:
    cJSON_Delete(body);
}

static void delete_user(em__api_req_t *r)
{
    if (!no_params(r))
        return;
    const char *name = r->captures[0];
    if (!user_name_ok(name)) {
        em__api_error(r, 404, "not_found", "no such user", NULL);
        return;
    }
    em_error_t e;
    em_error_clear(&e);
    em_err_t rc = em_store_user_delete(r->store, name, &e);
    if (rc == EM_ERR_NOT_FOUND) {
        em__api_error(r, 404, "not_found", "no such user", NULL);
        return;
    }
    if (rc != EM_OK) {
        em__api_error_from(r, rc, &e);
        return;
    }
    em__api_auth_forget_user(r->api, name);
    em__api_audit(r, "user_deleted", NULL, "user %s deleted", name);
    em__api_reply(r, 200, NULL, NULL);
}

/* ---- tokens, whoami ---------------------------------------------------- */

static void create_token(em__api_req_t *r)
{
    static const char *const fields[] = {"ttl", NULL};
    if (!no_params(r))
        return;
    double ttl = em__api_options(r->api)->jwt_ttl_s;
    if (r->body != NULL && r->body_len > 0) {
        cJSON *body = em__api_body_object(r);
        if (body == NULL)
            return;
        bool ok = em__api_only_fields(r, body, fields) &&
                  int_field(r, body, "ttl", TOKEN_TTL_MIN, TOKEN_TTL_MAX, &ttl);
        cJSON_Delete(body);
        if (!ok)
            return;
    }
    int64_t ttl_s = (int64_t)ttl;
    /* Never beyond the credential it was asked with (a key's or token's expiry). */
    if (r->who.expires_at_ms != 0) {
        int64_t left = (r->who.expires_at_ms - r->now_ms) / 1000;
        if (left < 1) {
            em__api_error(r, 401, NULL, NULL, "credential expires now");
            return;
        }
        if (left < ttl_s)
            ttl_s = left;
    }
    char tok[TOKEN_BUF];
    int64_t exp_ms = 0;
    /* A token minted from a user's token or certificate stays bound to the user. */
    bool user = ((em__api_call_t *)r)->jwt_user ||
                (r->who.method == EM__AUTHN_CERT && r->who.role != EM_ROLE_DEVICE);
    em_err_t rc =
        em__api_jwt_issue_bound(r->api, &r->who, user, (int)ttl_s, tok, sizeof tok, &exp_ms);
    if (rc != EM_OK) {
        em__api_error(r, 500, NULL, NULL, "token not issued");
        return;
    }
    em__api_audit(r, "token_issued", r->who.device_id[0] ? r->who.device_id : NULL,
                  "token issued for %s, %lld s", r->who.actor, (long long)ttl_s);
    cJSON *data = cJSON_CreateObject();
    if (data == NULL || !add(data, "token", cJSON_CreateString(tok)) ||
        !add(data, "expiresAt", em__enc_time(exp_ms))) {
        cJSON_Delete(data);
        OPENSSL_cleanse(tok, sizeof tok);
        em__api_error(r, 500, NULL, NULL, "out of memory");
        return;
    }
    OPENSSL_cleanse(tok, sizeof tok);
    em__api_reply(r, 201, data, NULL);
}

static void whoami(em__api_req_t *r)
{
    static const char *const methods[] = {"none", "api_key", "jwt", "certificate"};
    if (!no_params(r))
        return;
    const em__api_identity_t *w = &r->who;
    const char *role = em_role_name(w->role);
    cJSON *o = cJSON_CreateObject();
    if (o == NULL || !add(o, "method", cJSON_CreateString(methods[(unsigned)w->method & 3])) ||
        !add(o, "role", role ? cJSON_CreateString(role) : cJSON_CreateNull()) ||
        !add(o, "name", cJSON_CreateString(w->name)) ||
        !add(o, "keyId", em__enc_str_or_null(w->key_id)) ||
        !add(o, "deviceId", em__enc_str_or_null(w->device_id))) {
        cJSON_Delete(o);
        em__api_error(r, 500, NULL, NULL, "out of memory");
        return;
    }
    em__api_reply(r, 200, o, NULL);
}

static const em__api_route_t routes[] = {
    {EVHTTP_REQ_POST, "/api/v1/keys", EM_ROLE_ADMIN, EM__ROUTE_BODY, create_key},
    {EVHTTP_REQ_GET, "/api/v1/keys", EM_ROLE_ADMIN, 0, list_keys},
    {EVHTTP_REQ_DELETE, "/api/v1/keys/{keyId}", EM_ROLE_ADMIN, 0, revoke_key},
    {EVHTTP_REQ_GET, "/api/v1/users", EM_ROLE_ADMIN, 0, list_users},
    {EVHTTP_REQ_POST, "/api/v1/users", EM_ROLE_ADMIN, EM__ROUTE_BODY, create_user},
    {EVHTTP_REQ_DELETE, "/api/v1/users/{name}", EM_ROLE_ADMIN, 0, delete_user},
    {EVHTTP_REQ_POST, "/api/v1/tokens", EM_ROLE_VIEWER, 0, create_token},
    {EVHTTP_REQ_GET, "/api/v1/whoami", EM_ROLE_VIEWER, EM__ROUTE_DEVICE_OK, whoami},
};

const em__api_route_table_t em__api_routes_access = {routes, sizeof routes / sizeof routes[0]};
