/*
 * emiot - identity.c: the store front for device identity (schema version
 * 2, see store.h): enrollment tokens and device certificates. As the rest of
 * the front (store.c), it validates every argument before a backend sees it
 * and runs the call on the synchronous connection.
 */
#include <string.h>

#include "emiot/clock.h"
#include "store/store_internal.h"

#define PEM_CERT_BEGIN "-----BEGIN CERTIFICATE-----"

/* A fixed char array must hold its terminating NUL. */
#define TERMINATED(arr) (memchr((arr), '\0', sizeof(arr)) != NULL)

static em_err_t bad_arg(em_error_t *err, const char *field, const char *rule)
{
    return em_error_set(err, EM_ERR_INVALID_ARGUMENT, EM_SEV_LOW, field, "%s", rule);
}

static em_err_t bad_value(em_error_t *err, const char *field, const char *rule)
{
    return em_error_set(err, EM_ERR_VALIDATION, EM_SEV_LOW, field, "%s", rule);
}

#define REQUIRE(cond, field, rule)                                                                 \
    do {                                                                                           \
        if (!(cond)) {                                                                             \
            return bad_arg(err, field, rule);                                                      \
        }                                                                                          \
    } while (0)

#define CHECK(expr)                                                                                \
    do {                                                                                           \
        em_err_t check_rc_ = (expr);                                                               \
        if (check_rc_ != EM_OK) {                                                                  \
            return check_rc_;                                                                      \
        }                                                                                          \
    } while (0)

/* Runs one backend call on the synchronous connection. */
#define SYNC_CALL(st, call)                                                                        \
    do {                                                                                           \
        em__store_conn_t *conn_ = em__store_sync_begin(st);                                        \
        em_err_t sync_rc_ = em__store_be(st)->call;                                                \
        em__store_sync_end(st);                                                                    \
        return sync_rc_;                                                                           \
    } while (0)

static bool is_hex(const char *s, size_t len)
{
    for (size_t i = 0; i < len; i++) {
        char c = s[i];
        if (!((c >= '0' && c <= '9') || (c >= 'a' && c <= 'f') || (c >= 'A' && c <= 'F'))) {
            return false;
        }
    }
    return true;
}

static em_err_t check_token_id(const char *id, em_error_t *err)
{
    return em__store_check_token(id, EM_STORE_KEY_ID_MAX, "_-", "tokenId", err);
}

static em_err_t check_enroll_token(const em_store_enroll_token_t *t, em_error_t *err)
{
    REQUIRE(t != NULL, NULL, "token is required");
    REQUIRE(TERMINATED(t->token_id) && TERMINATED(t->device_id) && TERMINATED(t->owner), NULL,
            "token string is not terminated");
    CHECK(check_token_id(t->token_id, err));
    CHECK(em__store_check_id(t->device_id, "deviceId", err));
    CHECK(em__store_check_text(t->owner, EM_STORE_NAME_MAX, true, "owner", err));
    if (t->created_at_ms < 0 || t->expires_at_ms < 0 || t->used_at_ms < 0) {
        return bad_value(err, "createdAt", "times must not be negative");
    }
    return EM_OK;
}

/* Certificate text: PEM, so printable ASCII and line ends only. */
static em_err_t check_pem(const char *pem, em_error_t *err)
{
    size_t len = strlen(pem);
    if (len < sizeof(PEM_CERT_BEGIN) - 1 ||
        memcmp(pem, PEM_CERT_BEGIN, sizeof(PEM_CERT_BEGIN) - 1) != 0) {
        return bad_value(err, "pem", "must be a PEM certificate");
    }
    for (size_t i = 0; i < len; i++) {
        unsigned char c = (unsigned char)pem[i];
        if ((c < 0x20 && c != '\n' && c != '\r') || c >= 0x7f) {
            return bad_value(err, "pem", "must be a PEM certificate");
        }
    }
    return EM_OK;
}

static em_err_t check_device_cert(const em_store_device_cert_t *c, em_error_t *err)
{
    REQUIRE(c != NULL, NULL, "certificate is required");
    REQUIRE(TERMINATED(c->device_id) && TERMINATED(c->serial) && TERMINATED(c->sha256) &&
                TERMINATED(c->pem),
            NULL, "certificate string is not terminated");
    CHECK(em__store_check_id(c->device_id, "deviceId", err));
    size_t n = strlen(c->serial);
    if (n == 0 || !is_hex(c->serial, n)) {
        return bad_value(err, "serial", "must be 1-40 hex digits");
    }
    n = strlen(c->sha256);
    if (n != 64 || !is_hex(c->sha256, n)) {
        return bad_value(err, "sha256", "must be 64 hex digits");
    }
    CHECK(check_pem(c->pem, err));
    if (c->not_after_ms < 0 || c->created_at_ms < 0) {
        return bad_value(err, "createdAt", "times must not be negative");
    }
    return EM_OK;
}

em_err_t em_store_enroll_token_insert(em_store_t *st, const em_store_enroll_token_t *t,
                                      em_error_t *err)
{
    REQUIRE(st != NULL, NULL, "store is required");
    CHECK(check_enroll_token(t, err));
    SYNC_CALL(st, enroll_token_insert(conn_, t, err));
}

em_err_t em_store_enroll_token_use(em_store_t *st, const unsigned char hash[32], int64_t now_ms,
                                   em_store_enroll_token_t *out, em_error_t *err)
{
    REQUIRE(st != NULL, NULL, "store is required");
    REQUIRE(hash != NULL, "token", "hash is required");
    REQUIRE(out != NULL, NULL, "out is required");
    memset(out, 0, sizeof(*out));
    /* used_at_ms 0 means "not used": a use always records a positive time. */
    SYNC_CALL(st, enroll_token_use(conn_, hash, now_ms > 0 ? now_ms : em_now_ms(), out, err));
}

em_err_t em_store_enroll_token_list(em_store_t *st, const char *device_id,
                                    em_store_enroll_token_fn fn, void *userdata, em_error_t *err)
{
    REQUIRE(st != NULL, NULL, "store is required");
    REQUIRE(fn != NULL, NULL, "callback is required");
    if (device_id != NULL) {
        CHECK(em__store_check_id(device_id, "deviceId", err));
    }
    SYNC_CALL(st, enroll_token_list(conn_, device_id, fn, userdata, err));
}

em_err_t em_store_device_cert_insert(em_store_t *st, const em_store_device_cert_t *c,
                                     em_error_t *err)
{
    REQUIRE(st != NULL, NULL, "store is required");
    CHECK(check_device_cert(c, err));
    SYNC_CALL(st, device_cert_insert(conn_, c, err));
}

em_err_t em_store_device_cert_latest(em_store_t *st, const char *device_id,
                                     em_store_device_cert_t *out, em_error_t *err)
{
    REQUIRE(st != NULL, NULL, "store is required");
    REQUIRE(out != NULL, NULL, "out is required");
    CHECK(em__store_check_id(device_id, "deviceId", err));
    SYNC_CALL(st, device_cert_latest(conn_, device_id, out, err));
}

em_err_t em_store_device_cert_list(em_store_t *st, const char *device_id,
                                   em_store_device_cert_fn fn, void *userdata, em_error_t *err)
{
    REQUIRE(st != NULL, NULL, "store is required");
    REQUIRE(fn != NULL, NULL, "callback is required");
    CHECK(em__store_check_id(device_id, "deviceId", err));
    SYNC_CALL(st, device_cert_list(conn_, device_id, fn, userdata, err));
}
