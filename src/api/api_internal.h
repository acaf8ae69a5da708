/*
 * emiot - api_internal.h: what the API's files share.
 *
 * server.c accepts connections, reads the request (body bounded by max_body),
 * authenticates (auth.c), applies the caller's token bucket, finds the route
 * in the route tables, checks the route's role, and calls its handler with an
 * em__api_req_t. A handler answers exactly once, with em__api_reply or
 * em__api_error (or em__api_reply_raw), before returning; nothing is answered
 * asynchronously.
 *
 * Route tables: each routes_*.c file defines one table; server.c lists them.
 * Patterns are literal segments and "{name}" captures of one segment
 * ("/api/v1/devices/{id}/status"); captures are percent-decoded and must be
 * 1..128 bytes without '/' or control characters, else 400/404.
 */
#ifndef EMIOT_API_INTERNAL_H
#define EMIOT_API_INTERNAL_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include <cjson/cJSON.h>

#include "emiot/api.h"
#include "emiot/manager.h"
#include "emiot/store.h"

struct evhttp_request;

#define EM__API_CAPTURES_MAX 3
#define EM__API_CAPTURE_MAX  128
#define EM__API_CID_LEN      16 /* correlation id: 16 hex digits, also sent as X-Request-Id */

/* Who is calling, once authenticated. */
typedef enum em__api_authn {
    EM__AUTHN_NONE = 0,
    EM__AUTHN_API_KEY = 1,
    EM__AUTHN_JWT = 2,
    EM__AUTHN_CERT = 3
} em__api_authn_t;

typedef struct em__api_identity {
    em__api_authn_t method;
    em_role_t role;
    char name[EM_STORE_NAME_MAX + 1];     /* user name, key name, or JWT sub */
    char key_id[EM_STORE_KEY_ID_MAX + 1]; /* API key: its id; else "" */
    char device_id[EM_DEVICE_ID_MAX + 1]; /* role device: the device; else "" */
    char actor[EM_STORE_NAME_MAX +
               1];         /* for audit: "key:k_..", "user:NAME", "jwt:SUB", "device:ID" */
    int64_t expires_at_ms; /* JWT / key expiry, 0: none */
} em__api_identity_t;

typedef struct em__api_req {
    struct evhttp_request *req;
    em_api_t *api;
    em_store_t *store;
    em_manager_t *mgr;
    em__api_identity_t who;
    char cid[EM__API_CID_LEN + 1];
    char source[EM_STORE_NAME_MAX + 1]; /* client address "ip:port" */
    char captures[EM__API_CAPTURES_MAX][EM__API_CAPTURE_MAX + 1];
    size_t ncaptures;
    const char *body; /* NUL-terminated copy of the body (NULL when empty) */
    size_t body_len;
    void *query; /* struct evkeyvalq *, parsed query string */
    int64_t now_ms;
    bool answered;
} em__api_req_t;

typedef void (*em__api_handler_fn)(em__api_req_t *r);

/* Route flags. EM__ROUTE_PUBLIC: no authentication (healthz).
 * EM__ROUTE_DEVICE_OK: the device role may call it for its own {id}
 * (capture 0). EM__ROUTE_BODY: a JSON body is expected. */
#define EM__ROUTE_PUBLIC    (1u << 0)
#define EM__ROUTE_DEVICE_OK (1u << 1)
#define EM__ROUTE_BODY      (1u << 2)

typedef struct em__api_route {
    int method; /* EVHTTP_REQ_GET, _POST, _PUT, _PATCH, _DELETE */
    const char *pattern;
    em_role_t min_role; /* EM_ROLE_VIEWER, _OPERATOR or _ADMIN */
    unsigned flags;
    em__api_handler_fn fn;
} em__api_route_t;

typedef struct em__api_route_table {
    const em__api_route_t *routes;
    size_t count;
} em__api_route_table_t;

/* The tables, one per routes_*.c. */
extern const em__api_route_table_t em__api_routes_devices;  /* devices, status, telemetry */
extern const em__api_route_table_t em__api_routes_groups;   /* groups, members, stats, energy */
extern const em__api_route_table_t em__api_routes_commands; /* commands */
extern const em__api_route_table_t em__api_routes_events;   /* events */
extern const em__api_route_table_t em__api_routes_access;   /* keys, users, tokens, whoami */
extern const em__api_route_table_t em__api_routes_identity; /* enrollment, challenge-response */
extern const em__api_route_table_t em__api_routes_mqttcred; /* dynsec MQTT passwords */

/* ---- answering (respond.c) --------------------------------------------- */

/* Answers status with {"success":true,"data":<data>} (data may be NULL:
 * {"success":true}); takes ownership of data. extra (may be NULL, owned) is
 * merged at the top level, e.g. {"next":"..."} for paging. */
void em__api_reply(em__api_req_t *r, int status, cJSON *data, cJSON *extra);

/* Answers status with json (len bytes) as is, Content-Type application/json. */
void em__api_reply_raw(em__api_req_t *r, int status, const char *json, size_t len);

/*
 * Answers an error: {"success":false,"message":msg,"errorCode":code}. For
 * 401/403 the message is fixed ("authentication required", "forbidden")
 * whatever msg says. The detail (may be NULL) goes to the log with the cid,
 * never to the client.
 */
void em__api_error(em__api_req_t *r, int status, const char *code, const char *msg,
                   const char *detail);

/* Answers the HTTP status and errorCode an em_err_t maps to (VALIDATION 400,
 * DEVICE_NOT_FOUND/GROUP_NOT_FOUND/NOT_FOUND 404, EXISTS 409,
 * RATE_LIMIT_EXCEEDED 429, NOT_CONNECTED 503, others 500), with err's message
 * and field ("field: rule") for 4xx, a generic message for 5xx. */
void em__api_error_from(em__api_req_t *r, em_err_t code, const em_error_t *err);

/*
 * Parses the body as a JSON object (depth <= 16). On failure answers 400
 * (errorCode "message_format" or "validation": "body: must be a JSON object")
 * and returns NULL. The caller owns the result (cJSON_Delete).
 */
cJSON *em__api_body_object(em__api_req_t *r);

/*
 * Rejects (400, "field: unknown field") any member of obj not in allowed
 * (NULL-terminated). Returns false when it answered.
 */
bool em__api_only_fields(em__api_req_t *r, const cJSON *obj, const char *const *allowed);

/* Query parameters. Each returns true with the value (or def when absent),
 * or answers 400 naming the parameter and the rule and returns false. */
bool em__api_query_str(em__api_req_t *r, const char *name, size_t max_len, const char **out);
bool em__api_query_int(em__api_req_t *r, const char *name, int64_t def, int64_t min, int64_t max,
                       int64_t *out);
/* RFC 3339 or epoch milliseconds. */
bool em__api_query_time(em__api_req_t *r, const char *name, int64_t def, int64_t *out_ms);
/* Rejects any query parameter not in allowed (NULL-terminated). */
bool em__api_only_params(em__api_req_t *r, const char *const *allowed);

/* Records an audit event (kind audit, the caller as actor, severity low). */
void em__api_audit(em__api_req_t *r, const char *type, const char *device_id, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));

/* ---- authentication (auth.c) --------------------------------------------- */

/* Generates a key "iot_" + 48 hex digits from the CSPRNG into key (at least
 * EM_API_KEY_LEN + 1 bytes) and fills rec's key_id and hash. EM_ERR_INTERNAL
 * when the CSPRNG fails. */
em_err_t em__api_key_generate(char *key, size_t size, em_store_api_key_t *rec);

/* Checks the shape of a presented key and computes its key_id and hash.
 * false when it is not "iot_" + 48 lower-case hex digits. */
bool em__api_key_parse(const char *key, size_t len, char key_id[EM_STORE_KEY_ID_MAX + 1],
                       unsigned char hash[32]);

/* Issues an ES256 JWT for who (sub, role, device, iss, aud, iat, exp = now +
 * ttl, jti) into buf. EM_ERR_BUFFER_TOO_SMALL, EM_ERR_INTERNAL. */
em_err_t em__api_jwt_issue(em_api_t *api, const em__api_identity_t *who, int ttl_s, char *buf,
                           size_t size, int64_t *expires_at_ms);

/* Forgets cached state for a key (after a revocation) so that the next request
 * with it is refused. */
void em__api_auth_forget_key(em_api_t *api, const char *key_id);

/* The API's options as configured (for handlers: command_ttl_s, jwt_ttl_s...). */
const em_api_options_t *em__api_options(const em_api_t *api);

#endif /* EMIOT_API_INTERNAL_H */
