/*
 * libFuzzer target: what a client presents to authenticate. The first byte
 * chooses: an Authorization header value (em__api_bearer, then
 * em__api_key_parse or em__api_jwt_verify, as the server does), or a JSON
 * claims set that is signed with the API's own key and verified, so that the
 * claim checks behind the signature are reached too.
 */
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include <jwt.h>

#include "api/api_core.h"
#include "emiot/clock.h"
#include "emiot/log.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static em_api_t *api_once(void)
{
    static em_api_t api;
    static int ready;
    if (!ready) {
        em_log_set_level(EM_LOG_OFF);
        em_api_options_init(&api.opts);
        api.opts.jwt_key_file = NULL; /* a key in memory only */
        em_error_t err;
        if (em__api_auth_init(&api, &err) != EM_OK)
            abort();
        ready = 1;
    }
    return &api;
}

static void check_identity(const em__api_identity_t *who)
{
    if (who->role == EM_ROLE_NONE || who->role > EM_ROLE_DEVICE || who->name[0] == '\0' ||
        strncmp(who->actor, "jwt:", 4) != 0)
        abort();
    if ((who->role == EM_ROLE_DEVICE) != (who->device_id[0] != '\0'))
        abort();
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    em_api_t *api = api_once();
    if (size < 1 || size > 8192)
        return 0;
    char *s = malloc(size);
    if (s == NULL)
        return 0;
    memcpy(s, data + 1, size - 1);
    s[size - 1] = '\0';
    em__api_identity_t who;

    if (data[0] & 1) {
        /* A header value, as far as its first NUL. */
        size_t len = 0;
        const char *cred = em__api_bearer(s, &len);
        if (cred != NULL) {
            if (len == 0 || cred < s || cred + len > s + strlen(s))
                abort();
            char id[EM_STORE_KEY_ID_MAX + 1];
            unsigned char hash[32];
            if (em__api_key_parse(cred, len, id, hash)) {
                if (len != EM_API_KEY_LEN || strlen(id) != 14 || memcmp(cred, "iot_", 4) != 0)
                    abort();
            } else if (em__api_jwt_verify(api, cred, len, em_now_ms(), &who) == NULL) {
                check_identity(&who);
            }
        }
    } else {
        jwt_t *j = NULL;
        if (jwt_new(&j) == 0 && jwt_add_grants_json(j, s) == 0 &&
            jwt_set_alg(j, JWT_ALG_ES256, api->jwt_priv_pem, api->jwt_priv_len) == 0) {
            char *tok = jwt_encode_str(j);
            if (tok != NULL && em__api_jwt_verify(api, tok, strlen(tok), em_now_ms(), &who) == NULL)
                check_identity(&who);
            free(tok);
        }
        jwt_free(j);
    }
    free(s);
    return 0;
}
