/*
 * emiot - identity_routes.h (internal): the device identity routes
 * (docs/API.md, "Device identity"), in three files:
 *
 *   routes_identity.c   the route table and what both kinds of route share:
 *                       the gate of the public routes, their bodies,
 *                       refusals as security events, the device record;
 *   identity_enroll.c   enrollment tokens, enrollment (a CSR signed by the
 *                       CA for a one-time token), a device's certificates;
 *   identity_auth.c     challenge-response (a nonce signed with the
 *                       device's key for a device JWT).
 *
 * What a request body may hold is identity.h's (checked without the server).
 */
#ifndef EM_API_IDENTITY_ROUTES_H
#define EM_API_IDENTITY_ROUTES_H

#include <stdarg.h>
#include <stdbool.h>
#include <stddef.h>

#include <cjson/cJSON.h>
#include <openssl/x509.h>

#include "api/api_core.h"
#include "api/identity.h"
#include "emiot/error.h"

/* ---- shared (routes_identity.c) ------------------------------------------ */

/* True when s is not NULL and a valid device id. */
bool em__id_valid_id(const char *s);

/* Copies a device id (validated: at most EM_DEVICE_ID_MAX bytes) into dst
 * (EM_DEVICE_ID_MAX + 1 bytes). */
void em__id_copy_id(char *dst, const char *id);

/* The bucket key of the request's client address for the public routes
 * ("pub:" and the address without the port) into key (size bytes, at least
 * EM__BUCKET_KEY_MAX + 1). */
void em__id_public_key(const em__api_req_t *r, char *key, size_t size);

/*
 * Fills *ev with a security event of type about device_id (NULL or not a
 * valid id: none) from the request's actor and address, its message fmt
 * with ap (cut at the event's maximum), and records it synchronously (a
 * failure is logged). em__id_sec_event and routes_mqttcred.c's events.
 */
void em__id_sec_vrecord(em__api_req_t *r, em_store_event_t *ev, const char *type, em_severity_t sev,
                        const char *device_id, const char *fmt, va_list ap)
    __attribute__((format(printf, 6, 0)));

/*
 * Records a security event (synchronously: it is on record before the
 * answer) about device_id (NULL or not a valid id: none) from the request's
 * address, and logs it. The message is cut at the event's maximum.
 */
void em__id_sec_event(em__api_req_t *r, const char *type, em_severity_t sev, const char *device_id,
                      const char *fmt, ...) __attribute__((format(printf, 5, 6)));

/*
 * Refuses a request to a public route: counts a failed authentication of
 * the client address, records the security event (type, sev, device_id,
 * reason) and answers status. For 401 and 403 the answer is the generic one;
 * for others code and msg are shown.
 */
void em__id_refuse(em__api_req_t *r, int status, const char *code, const char *msg,
                   const char *type, em_severity_t sev, const char *device_id, const char *reason);

/*
 * The gate of the public routes: a blocked address (too many failed
 * authentications) is refused, then the address's request bucket is taken
 * from. Returns false when it answered.
 */
bool em__id_public_gate(em__api_req_t *r);

/*
 * The body of a public route, parsed (em__api_body_object: UTF-8, depth,
 * JSON) and checked (em__id_body_validate) into *b; the caller frees the
 * returned object, into which *b points. NULL when it answered (400,
 * counted as a failure, with a security event of type).
 */
cJSON *em__id_pub_body(em__api_req_t *r, em__id_route_t route, const char *type, em__id_body_t *b);

/* Adds v to o under name; takes v over (also on failure, and NULL: memory
 * ran out). false when it could not. */
bool em__id_add(cJSON *o, const char *name, cJSON *v);

/* em__api_only_params with no parameter allowed. */
bool em__id_no_params(em__api_req_t *r);

/* cert as PEM, NUL-terminated (free); NULL when memory ran out or it is
 * longer than max bytes. */
char *em__id_cert_pem(X509 *cert, size_t max);

/* The device record: EM_OK with *enabled, EM_ERR_DEVICE_NOT_FOUND, or the
 * store's error (in e). */
em_err_t em__id_device_state(em__api_req_t *r, const char *id, bool *enabled, em_error_t *e);

/* ---- the handlers of the route table ----------------------------------- */

/* identity_enroll.c */
void em__id_create_enroll_token(em__api_req_t *r); /* POST .../{id}/enrollment-tokens */
void em__id_list_enroll_tokens(em__api_req_t *r);  /* GET .../{id}/enrollment-tokens */
void em__id_list_certificates(em__api_req_t *r);   /* GET .../{id}/certificates */
void em__id_enroll(em__api_req_t *r);              /* POST /api/v1/enroll */

/* identity_auth.c */
void em__id_challenge(em__api_req_t *r);    /* POST /api/v1/auth/challenge */
void em__id_device_token(em__api_req_t *r); /* POST /api/v1/auth/device-token */

#endif /* EM_API_IDENTITY_ROUTES_H */
