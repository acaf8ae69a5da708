/*
 * emiot - identity.h (internal): what the public device identity routes
 * (identity_routes.h: identity_enroll.c, identity_auth.c) read from a
 * request, checked without the server, so that fuzz/fuzz_api_identity.c
 * reaches the same code.
 */
#ifndef EM_API_IDENTITY_H
#define EM_API_IDENTITY_H

#include <stdbool.h>
#include <stddef.h>

#include <cjson/cJSON.h>

#include "api/api_core.h"
#include "emiot/error.h"

#define EM__ENROLL_TOKEN_LEN 52    /* "enr_" + 48 lower-case hex digits */
#define EM__ID_SIG_MAX       1024  /* signature bytes (RSA up to 8192 bits) */
#define EM__ID_SIG_TEXT_MAX  1366  /* their base64url */
#define EM__ID_CERT_TEXT_MAX 16384 /* a presented certificate with its chain, PEM */

typedef enum em__id_route {
    EM__ID_ENROLL = 0,      /* {"deviceId","token","csr"} */
    EM__ID_CHALLENGE = 1,   /* {"deviceId"} */
    EM__ID_DEVICE_TOKEN = 2 /* {"deviceId","nonce","signature","certificate"?} */
} em__id_route_t;

/* A public route's body: pointers into the parsed object (NULL: absent). */
typedef struct em__id_body {
    const char *device_id;
    const char *token;
    const char *csr;
    const char *nonce;
    const char *signature;
    const char *certificate;
} em__id_body_t;

/*
 * Checks obj (a JSON object) for route: only its members, each once; the
 * required ones present; every one a string; for the challenge and the
 * device token, deviceId a valid device id (for enrollment the token decides
 * the device: a bad id is refused as not the token's). *out points into obj.
 * Errors: EM_ERR_VALIDATION with err->field the member ("body" for an
 * unknown or repeated one) and err->message the rule.
 */
em_err_t em__id_body_validate(em__id_route_t route, const cJSON *obj, em__id_body_t *out,
                              em_error_t *err);

/* True when s (len bytes) has the shape of an enrollment token. */
bool em__id_token_shape_ok(const char *s, size_t len);

#endif /* EM_API_IDENTITY_H */
