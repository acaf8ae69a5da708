/*
 * emiot tests - test_api_auth.c: API keys, ES256 JWTs (issued, verified and
 * the classic forgeries refused), the JWT key file, Authorization parsing,
 * token buckets on a fake clock, route matching.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <jwt.h>
#include <openssl/evp.h>

#include "api/api_core.h"
#include "emiot/clock.h"
#include "emiot/log.h"
#include "testutil.h"

/* ---- API keys -------------------------------------------------------- */

static void test_key_generate_has_the_documented_shape(void **state)
{
    (void)state;
    char key[EM_API_KEY_LEN + 1];
    em_store_api_key_t rec;
    memset(&rec, 0, sizeof rec);
    assert_int_equal(em__api_key_generate(key, sizeof key, &rec), EM_OK);
    assert_int_equal(strlen(key), EM_API_KEY_LEN);
    assert_memory_equal(key, "iot_", 4);
    for (size_t i = 4; i < EM_API_KEY_LEN; i++)
        assert_non_null(strchr("0123456789abcdef", key[i]));
    /* key_id: "k_" + the first 12 hex digits. */
    assert_int_equal(strlen(rec.key_id), 14);
    assert_memory_equal(rec.key_id, "k_", 2);
    assert_memory_equal(rec.key_id + 2, key + 4, 12);
}

static void test_key_hash_is_sha256_of_the_whole_key(void **state)
{
    (void)state;
    char key[EM_API_KEY_LEN + 1];
    em_store_api_key_t rec;
    assert_int_equal(em__api_key_generate(key, sizeof key, &rec), EM_OK);
    unsigned char want[32];
    unsigned int n = 0;
    assert_int_equal(EVP_Digest(key, strlen(key), want, &n, EVP_sha256(), NULL), 1);
    assert_memory_equal(rec.hash, want, 32);
}

static void test_key_generate_gives_a_new_key_each_time(void **state)
{
    (void)state;
    char a[EM_API_KEY_LEN + 1], b[EM_API_KEY_LEN + 1];
    em_store_api_key_t ra, rb;
    assert_int_equal(em__api_key_generate(a, sizeof a, &ra), EM_OK);
    assert_int_equal(em__api_key_generate(b, sizeof b, &rb), EM_OK);
    assert_string_not_equal(a, b);
    assert_string_not_equal(ra.key_id, rb.key_id);
}

static void test_key_generate_refuses_a_small_buffer(void **state)
{
    (void)state;
    char key[EM_API_KEY_LEN];
    em_store_api_key_t rec;
    assert_int_equal(em__api_key_generate(key, sizeof key, &rec), EM_ERR_INVALID_ARGUMENT);
}

static void test_key_parse_accepts_a_generated_key(void **state)
{
    (void)state;
    char key[EM_API_KEY_LEN + 1];
    em_store_api_key_t rec;
    assert_int_equal(em__api_key_generate(key, sizeof key, &rec), EM_OK);
    char id[EM_STORE_KEY_ID_MAX + 1];
    unsigned char hash[32];
    assert_true(em__api_key_parse(key, strlen(key), id, hash));
    assert_string_equal(id, rec.key_id);
    assert_memory_equal(hash, rec.hash, 32);
}

static void test_key_parse_refuses_other_shapes(void **state)
{
    (void)state;
    char id[EM_STORE_KEY_ID_MAX + 1];
    unsigned char hash[32];
    const char *good = "iot_0123456789abcdef0123456789abcdef0123456789abcdef";
    assert_true(em__api_key_parse(good, strlen(good), id, hash));
    assert_string_equal(id, "k_0123456789ab");
    /* Upper case, wrong prefix, one digit short or long, not hex. */
    const char *bad[] = {
        "iot_0123456789ABCDEF0123456789abcdef0123456789abcdef",
        "IOT_0123456789abcdef0123456789abcdef0123456789abcdef",
        "iot-0123456789abcdef0123456789abcdef0123456789abcdef",
        "iot_0123456789abcdef0123456789abcdef0123456789abcde",
        "iot_0123456789abcdef0123456789abcdef0123456789abcdef0",
        "iot_0123456789abcdef0123456789abcdef0123456789abcdeg",
        "iot_",
        "",
    };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++)
        assert_false(em__api_key_parse(bad[i], strlen(bad[i]), id, hash));
    /* The length given is what counts, not the NUL. */
    assert_false(em__api_key_parse(good, strlen(good) - 1, id, hash));
    assert_false(em__api_key_parse(NULL, 52, id, hash));
}

/* ---- JWT --------------------------------------------------------------- */

typedef struct fx {
    char dir[256];
    char keyfile[320];
    em_api_t api;
} fx_t;

static int fx_setup(void **state)
{
    fx_t *f = calloc(1, sizeof *f);
    if (f == NULL || em_test_mkdtemp(f->dir, sizeof f->dir) != 0)
        return -1;
    snprintf(f->keyfile, sizeof f->keyfile, "%s/jwt.pem", f->dir);
    em_api_options_init(&f->api.opts);
    f->api.opts.jwt_key_file = f->keyfile;
    em_error_t err;
    if (em__api_auth_init(&f->api, &err) != EM_OK)
        return -1;
    *state = f;
    return 0;
}

static int fx_teardown(void **state)
{
    fx_t *f = *state;
    em__api_auth_cleanup(&f->api);
    em_test_rmtree(f->dir);
    free(f);
    return 0;
}

static em__api_identity_t operator_identity(void)
{
    em__api_identity_t who;
    memset(&who, 0, sizeof who);
    who.method = EM__AUTHN_API_KEY;
    who.role = EM_ROLE_OPERATOR;
    snprintf(who.name, sizeof who.name, "ops-tool");
    snprintf(who.key_id, sizeof who.key_id, "k_0123456789ab");
    snprintf(who.actor, sizeof who.actor, "key:k_0123456789ab");
    return who;
}

static void issue(fx_t *f, int ttl, char *tok, size_t size)
{
    em__api_identity_t who = operator_identity();
    int64_t exp = 0;
    assert_int_equal(em__api_jwt_issue(&f->api, &who, ttl, tok, size, &exp), EM_OK);
    int64_t now = em_now_ms();
    assert_true(exp >= now + (int64_t)(ttl - 2) * 1000 && exp <= now + (int64_t)ttl * 1000);
}

static const char *verify(fx_t *f, const char *tok, int64_t now_ms, em__api_identity_t *who)
{
    return em__api_jwt_verify(&f->api, tok, strlen(tok), now_ms, who);
}

static void test_jwt_key_file_is_created_with_mode_0600(void **state)
{
    fx_t *f = *state;
    struct stat st;
    assert_int_equal(stat(f->keyfile, &st), 0);
    assert_int_equal(st.st_mode & 0777, 0600);
}

static void test_jwt_issued_token_verifies_with_its_claims(void **state)
{
    fx_t *f = *state;
    char tok[2048];
    issue(f, 600, tok, sizeof tok);
    em__api_identity_t who;
    assert_null(verify(f, tok, em_now_ms(), &who));
    assert_int_equal(who.method, EM__AUTHN_JWT);
    assert_int_equal(who.role, EM_ROLE_OPERATOR);
    assert_string_equal(who.name, "ops-tool");
    assert_string_equal(who.key_id, "k_0123456789ab");
    assert_string_equal(who.device_id, "");
    assert_string_equal(who.actor, "jwt:ops-tool");
    assert_true(who.expires_at_ms > em_now_ms());
}

static void test_jwt_device_token_carries_the_device(void **state)
{
    fx_t *f = *state;
    em__api_identity_t who;
    memset(&who, 0, sizeof who);
    who.role = EM_ROLE_DEVICE;
    snprintf(who.name, sizeof who.name, "plug-001");
    snprintf(who.device_id, sizeof who.device_id, "plug-001");
    char tok[2048];
    assert_int_equal(em__api_jwt_issue(&f->api, &who, 300, tok, sizeof tok, NULL), EM_OK);
    em__api_identity_t got;
    assert_null(verify(f, tok, em_now_ms(), &got));
    assert_int_equal(got.role, EM_ROLE_DEVICE);
    assert_string_equal(got.device_id, "plug-001");
}

static void test_jwt_issue_refuses_a_small_buffer(void **state)
{
    fx_t *f = *state;
    em__api_identity_t who = operator_identity();
    char tok[32];
    assert_int_equal(em__api_jwt_issue(&f->api, &who, 300, tok, sizeof tok, NULL),
                     EM_ERR_BUFFER_TOO_SMALL);
}

static void test_jwt_expired_is_refused(void **state)
{
    fx_t *f = *state;
    char tok[2048];
    issue(f, 60, tok, sizeof tok);
    em__api_identity_t who;
    assert_string_equal(verify(f, tok, em_now_ms() + 61000, &who), "expired");
}

static void test_jwt_wrong_issuer_is_refused(void **state)
{
    fx_t *f = *state;
    char tok[2048];
    issue(f, 600, tok, sizeof tok);
    f->api.opts.jwt_issuer = "another-emiotd";
    em__api_identity_t who;
    const char *why = verify(f, tok, em_now_ms(), &who);
    f->api.opts.jwt_issuer = "emiotd";
    assert_string_equal(why, "wrong issuer");
}

static void test_jwt_wrong_audience_is_refused(void **state)
{
    fx_t *f = *state;
    char tok[2048];
    issue(f, 600, tok, sizeof tok);
    f->api.opts.jwt_audience = "another-api";
    em__api_identity_t who;
    const char *why = verify(f, tok, em_now_ms(), &who);
    f->api.opts.jwt_audience = "emiot-api";
    assert_string_equal(why, "wrong audience");
}

static void b64url(const unsigned char *in, size_t len, char *out, size_t size)
{
    static const char tab[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    size_t o = 0;
    for (size_t i = 0; i < len; i += 3) {
        uint32_t v = (uint32_t)in[i] << 16;
        if (i + 1 < len)
            v |= (uint32_t)in[i + 1] << 8;
        if (i + 2 < len)
            v |= in[i + 2];
        size_t n = len - i >= 3 ? 4 : len - i + 1;
        for (size_t k = 0; k < n && o + 1 < size; k++)
            out[o++] = tab[(v >> (18 - 6 * k)) & 63];
    }
    out[o] = '\0';
}

static char *claims_now(char *buf, size_t size, const char *extra)
{
    long now = (long)(em_now_ms() / 1000);
    snprintf(buf, size,
             "{\"iss\":\"emiotd\",\"aud\":\"emiot-api\",\"sub\":\"mallory\",\"role\":\"admin\","
             "\"iat\":%ld,\"exp\":%ld%s}",
             now, now + 600, extra);
    return buf;
}

static void test_jwt_alg_none_is_refused(void **state)
{
    fx_t *f = *state;
    char claims[512], h[128], p[1024], tok[2048];
    const char *hdr = "{\"alg\":\"none\",\"typ\":\"JWT\"}";
    b64url((const unsigned char *)hdr, strlen(hdr), h, sizeof h);
    claims_now(claims, sizeof claims, "");
    b64url((const unsigned char *)claims, strlen(claims), p, sizeof p);
    em__api_identity_t who;
    snprintf(tok, sizeof tok, "%s.%s.", h, p);
    assert_non_null(verify(f, tok, em_now_ms(), &who));
    snprintf(tok, sizeof tok, "%s.%s.c2ln", h, p);
    assert_string_equal(verify(f, tok, em_now_ms(), &who), "algorithm not ES256");
}

static void test_jwt_hs256_keyed_with_the_public_key_is_refused(void **state)
{
    fx_t *f = *state;
    char claims[512];
    jwt_t *j = NULL;
    assert_int_equal(jwt_new(&j), 0);
    assert_int_equal(jwt_add_grants_json(j, claims_now(claims, sizeof claims, "")), 0);
    /* The forgery: HMAC keyed with the verifier's public key bytes. */
    assert_int_equal(jwt_set_alg(j, JWT_ALG_HS256, f->api.jwt_pub_pem, f->api.jwt_pub_len), 0);
    char *tok = jwt_encode_str(j);
    assert_non_null(tok);
    em__api_identity_t who;
    assert_string_equal(verify(f, tok, em_now_ms(), &who), "algorithm not ES256");
    free(tok);
    jwt_free(j);
}

/* Signs claims with the API's own key: a well-signed token for claim checks. */
static char *sign_es256(fx_t *f, const char *claims)
{
    jwt_t *j = NULL;
    assert_int_equal(jwt_new(&j), 0);
    assert_int_equal(jwt_add_grants_json(j, claims), 0);
    assert_int_equal(jwt_set_alg(j, JWT_ALG_ES256, f->api.jwt_priv_pem, f->api.jwt_priv_len), 0);
    char *tok = jwt_encode_str(j);
    jwt_free(j);
    assert_non_null(tok);
    return tok;
}

static void test_jwt_tampered_payload_is_refused(void **state)
{
    fx_t *f = *state;
    char tok[2048], claims[512], p[1024];
    issue(f, 600, tok, sizeof tok);
    /* Same header and signature, the role raised to admin. */
    char *d1 = strchr(tok, '.'), *d2 = strchr(d1 + 1, '.');
    claims_now(claims, sizeof claims, "");
    b64url((const unsigned char *)claims, strlen(claims), p, sizeof p);
    char forged[4096];
    snprintf(forged, sizeof forged, "%.*s.%s%s", (int)(d1 - tok), tok, p, d2);
    em__api_identity_t who;
    assert_string_equal(verify(f, forged, em_now_ms(), &who), "bad signature");
}

static void test_jwt_tampered_signature_is_refused(void **state)
{
    fx_t *f = *state;
    char tok[2048];
    issue(f, 600, tok, sizeof tok);
    size_t len = strlen(tok);
    char *last = &tok[len - 5];
    *last = *last == 'A' ? 'B' : 'A';
    em__api_identity_t who;
    assert_string_equal(verify(f, tok, em_now_ms(), &who), "bad signature");
}

static void test_jwt_missing_claims_are_refused(void **state)
{
    fx_t *f = *state;
    long now = (long)(em_now_ms() / 1000);
    char c[512];
    struct {
        const char *claims; /* all but iat and exp */
        const char *why;
    } cases[] = {
        {"\"aud\":\"emiot-api\",\"sub\":\"a\",\"role\":\"viewer\",", "wrong issuer"},
        {"\"iss\":\"emiotd\",\"sub\":\"a\",\"role\":\"viewer\",", "wrong audience"},
        {"\"iss\":\"emiotd\",\"aud\":\"emiot-api\",\"role\":\"viewer\",", "no valid sub"},
        {"\"iss\":\"emiotd\",\"aud\":\"emiot-api\",\"sub\":\"a\",", "no valid role"},
        {"\"iss\":\"emiotd\",\"aud\":\"emiot-api\",\"sub\":\"a\",\"role\":\"root\",",
         "no valid role"},
        {"\"iss\":\"emiotd\",\"aud\":\"emiot-api\",\"sub\":\"a\",\"role\":\"device\",",
         "device token without a valid device"},
    };
    em__api_identity_t who;
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        snprintf(c, sizeof c, "{%s\"iat\":%ld,\"exp\":%ld}", cases[i].claims, now, now + 600);
        char *tok = sign_es256(f, c);
        assert_string_equal(verify(f, tok, em_now_ms(), &who), cases[i].why);
        free(tok);
    }
    /* No exp, no iat. */
    snprintf(c, sizeof c,
             "{\"iss\":\"emiotd\",\"aud\":\"emiot-api\",\"sub\":\"a\",\"role\":\"viewer\","
             "\"iat\":%ld}",
             now);
    char *tok = sign_es256(f, c);
    assert_string_equal(verify(f, tok, em_now_ms(), &who), "no valid exp");
    free(tok);
    snprintf(c, sizeof c,
             "{\"iss\":\"emiotd\",\"aud\":\"emiot-api\",\"sub\":\"a\",\"role\":\"viewer\","
             "\"exp\":%ld}",
             now + 600);
    tok = sign_es256(f, c);
    assert_string_equal(verify(f, tok, em_now_ms(), &who), "no valid iat");
    free(tok);
}

static void test_jwt_not_yet_valid_is_refused(void **state)
{
    fx_t *f = *state;
    char c[512], extra[64];
    snprintf(extra, sizeof extra, ",\"nbf\":%ld", (long)(em_now_ms() / 1000 + 3600));
    char *tok = sign_es256(f, claims_now(c, sizeof c, extra));
    em__api_identity_t who;
    assert_string_equal(verify(f, tok, em_now_ms(), &who), "not yet valid");
    free(tok);
}

static void test_jwt_user_claim_must_name_the_subject(void **state)
{
    fx_t *f = *state;
    char c[512];
    char *tok = sign_es256(f, claims_now(c, sizeof c, ",\"user\":\"someone-else\""));
    em__api_identity_t who;
    assert_string_equal(verify(f, tok, em_now_ms(), &who), "bad user claim");
    free(tok);
    tok = sign_es256(f, claims_now(c, sizeof c, ",\"user\":\"mallory\""));
    bool bound = false;
    assert_null(em__api_jwt_verify_bound(&f->api, tok, strlen(tok), em_now_ms(), &who, &bound));
    assert_true(bound);
    free(tok);
}

static void test_jwt_issued_for_a_certificate_user_is_bound_to_the_user(void **state)
{
    fx_t *f = *state;
    em__api_identity_t who;
    memset(&who, 0, sizeof who);
    who.method = EM__AUTHN_CERT;
    who.role = EM_ROLE_OPERATOR;
    snprintf(who.name, sizeof who.name, "alice");
    char tok[2048];
    assert_int_equal(em__api_jwt_issue(&f->api, &who, 300, tok, sizeof tok, NULL), EM_OK);
    em__api_identity_t got;
    bool bound = false;
    assert_null(em__api_jwt_verify_bound(&f->api, tok, strlen(tok), em_now_ms(), &got, &bound));
    assert_true(bound);
    assert_string_equal(got.name, "alice");
}

static void test_jwt_garbage_is_refused(void **state)
{
    fx_t *f = *state;
    em__api_identity_t who;
    const char *bad[] = {"", "a", "a.b", "a.b.c.d", "!!!.e30.sig", "e30.e30.", "....."};
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++)
        assert_non_null(em__api_jwt_verify(&f->api, bad[i], strlen(bad[i]), em_now_ms(), &who));
}

static void test_jwt_key_file_is_reused_at_the_next_start(void **state)
{
    fx_t *f = *state;
    char tok[2048];
    issue(f, 600, tok, sizeof tok);
    em_api_t again;
    memset(&again, 0, sizeof again);
    em_api_options_init(&again.opts);
    again.opts.jwt_key_file = f->keyfile;
    em_error_t err;
    assert_int_equal(em__api_auth_init(&again, &err), EM_OK);
    em__api_identity_t who;
    assert_null(em__api_jwt_verify(&again, tok, strlen(tok), em_now_ms(), &who));
    em__api_auth_cleanup(&again);
}

static void test_jwt_key_file_readable_by_others_is_refused(void **state)
{
    fx_t *f = *state;
    assert_int_equal(chmod(f->keyfile, 0644), 0);
    em_api_t again;
    memset(&again, 0, sizeof again);
    em_api_options_init(&again.opts);
    again.opts.jwt_key_file = f->keyfile;
    em_error_t err;
    em_err_t rc = em__api_auth_init(&again, &err);
    em__api_auth_cleanup(&again);
    assert_int_equal(chmod(f->keyfile, 0600), 0);
    assert_int_equal(rc, EM_ERR_CONFIGURATION);
    assert_string_equal(err.field, "jwt_key_file");
}

static void test_jwt_key_file_that_is_not_a_p256_key_is_refused(void **state)
{
    fx_t *f = *state;
    char path[400];
    snprintf(path, sizeof path, "%s/notakey.pem", f->dir);
    FILE *fp = fopen(path, "w");
    assert_non_null(fp);
    fputs("-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n", fp);
    fclose(fp);
    assert_int_equal(chmod(path, 0600), 0);
    em_api_t again;
    memset(&again, 0, sizeof again);
    em_api_options_init(&again.opts);
    again.opts.jwt_key_file = path;
    em_error_t err;
    em_err_t rc = em__api_auth_init(&again, &err);
    em__api_auth_cleanup(&again);
    assert_int_equal(rc, EM_ERR_CONFIGURATION);
}

/* ---- Authorization header ------------------------------------------- */

static void test_bearer_parsing(void **state)
{
    (void)state;
    size_t len = 0;
    const char *c = em__api_bearer("Bearer abc.def", &len);
    assert_non_null(c);
    assert_int_equal(len, 7);
    assert_memory_equal(c, "abc.def", 7);
    assert_non_null(em__api_bearer("bearer abc", &len));
    assert_non_null(em__api_bearer("Bearer  abc ", &len));
    assert_int_equal(len, 3);
    assert_null(em__api_bearer("Basic YWxhZGRpbjpvcGVuc2VzYW1l", &len));
    assert_null(em__api_bearer("Bearer ", &len));
    assert_null(em__api_bearer("Bearer a b", &len));
    assert_null(em__api_bearer("Bearer a\tb", &len));
    assert_null(em__api_bearer("Bearerabc", &len));
    assert_null(em__api_bearer(NULL, &len));
    char big[5000];
    memcpy(big, "Bearer ", 7);
    memset(big + 7, 'a', sizeof big - 8);
    big[sizeof big - 1] = '\0';
    assert_null(em__api_bearer(big, &len));
}

/* ---- token buckets ------------------------------------------------------ */

static void test_bucket_allows_its_capacity_then_refuses(void **state)
{
    (void)state;
    em__bucket_t b;
    em__bucket_init(&b, 60, 1000);
    for (int i = 0; i < 60; i++)
        assert_true(em__bucket_take(&b, 60, 1000, NULL));
    uint32_t retry = 0;
    assert_false(em__bucket_take(&b, 60, 1000, &retry));
    assert_int_equal(retry, 1); /* one token a second */
}

static void test_bucket_retry_after_is_whole_seconds_of_at_least_one(void **state)
{
    (void)state;
    em__bucket_t b;
    em__bucket_init(&b, 2, 0); /* a token every 30 s */
    assert_true(em__bucket_take(&b, 2, 0, NULL));
    assert_true(em__bucket_take(&b, 2, 0, NULL));
    uint32_t retry = 0;
    assert_false(em__bucket_take(&b, 2, 0, &retry));
    assert_int_equal(retry, 30);
    assert_false(em__bucket_take(&b, 2, 29500, &retry));
    assert_int_equal(retry, 1);
    em__bucket_init(&b, 6000, 0); /* 100 a second: less than a second still says 1 */
    for (int i = 0; i < 6000; i++)
        assert_true(em__bucket_take(&b, 6000, 0, NULL));
    assert_false(em__bucket_take(&b, 6000, 0, &retry));
    assert_int_equal(retry, 1);
}

static void test_bucket_refills_continuously(void **state)
{
    (void)state;
    em__bucket_t b;
    em__bucket_init(&b, 60, 0);
    for (int i = 0; i < 60; i++)
        assert_true(em__bucket_take(&b, 60, 0, NULL));
    assert_false(em__bucket_take(&b, 60, 500, NULL));
    assert_true(em__bucket_take(&b, 60, 1000, NULL));
    assert_false(em__bucket_take(&b, 60, 1000, NULL));
    /* Half a minute later: thirty tokens, not sixty. */
    int n = 0;
    while (em__bucket_take(&b, 60, 31000, NULL))
        n++;
    assert_int_equal(n, 30);
    /* Never more than the capacity, however long it was idle. */
    n = 0;
    while (em__bucket_take(&b, 60, 10000000, NULL))
        n++;
    assert_int_equal(n, 60);
}

static void test_bucket_of_rate_zero_refuses(void **state)
{
    (void)state;
    em__bucket_t b;
    em__bucket_init(&b, 0, 0);
    uint32_t retry = 0;
    assert_false(em__bucket_take(&b, 0, 0, &retry));
    assert_int_equal(retry, 60);
}

static void test_bucket_table_is_per_key_and_bounded(void **state)
{
    (void)state;
    em__buckets_t *t = em__buckets_new(16);
    assert_non_null(t);
    assert_null(em__buckets_new(0));
    assert_true(em__buckets_take(t, "key:a", 1, 0, NULL));
    assert_false(em__buckets_take(t, "key:a", 1, 0, NULL));
    assert_true(em__buckets_take(t, "key:b", 1, 0, NULL));
    /* peek creates nothing for a key it has not seen. */
    assert_true(em__buckets_peek(t, "key:c", 1, 0, NULL));
    assert_int_equal(em__buckets_count(t), 2);
    char key[32];
    for (int i = 0; i < 100; i++) {
        snprintf(key, sizeof key, "k%d", i);
        assert_true(em__buckets_take(t, key, 5, i, NULL));
        assert_true(em__buckets_count(t) <= 16);
    }
    /* Refusals are reported once a minute per key, and only for known keys. */
    assert_true(em__buckets_report(t, "k99", 1000, 60000));
    assert_false(em__buckets_report(t, "k99", 30000, 60000));
    assert_true(em__buckets_report(t, "k99", 61000, 60000));
    assert_false(em__buckets_report(t, "never-seen", 0, 60000));
    /* "key:a" was evicted long ago: a new, full bucket. */
    assert_true(em__buckets_take(t, "key:a", 1, 200, NULL));
    em__buckets_free(t);
    em__buckets_free(NULL);
}

/* ---- routes --------------------------------------------------------------- */

static void test_path_match_captures_and_decodes(void **state)
{
    (void)state;
    char caps[EM__API_CAPTURES_MAX][EM__API_CAPTURE_MAX + 1];
    size_t n = 0;
    assert_int_equal(em__api_path_match("/api/v1/devices/{id}/status",
                                        "/api/v1/devices/plug-1/status", caps, &n),
                     1);
    assert_int_equal(n, 1);
    assert_string_equal(caps[0], "plug-1");
    assert_int_equal(em__api_path_match("/api/v1/groups/{name}/members/{id}",
                                        "/api/v1/groups/Kitchen%20A/members/p1", caps, &n),
                     1);
    assert_int_equal(n, 2);
    assert_string_equal(caps[0], "Kitchen A");
    assert_string_equal(caps[1], "p1");
}

static void test_path_match_refuses_bad_captures(void **state)
{
    (void)state;
    char caps[EM__API_CAPTURES_MAX][EM__API_CAPTURE_MAX + 1];
    size_t n = 0;
    const char *pat = "/api/v1/devices/{id}";
    assert_int_equal(em__api_path_match(pat, "/api/v1/devices/a%2Fb", caps, &n), -1);
    assert_int_equal(em__api_path_match(pat, "/api/v1/devices/a%00b", caps, &n), -1);
    assert_int_equal(em__api_path_match(pat, "/api/v1/devices/a%0a", caps, &n), -1);
    assert_int_equal(em__api_path_match(pat, "/api/v1/devices/a%zz", caps, &n), -1);
    assert_int_equal(em__api_path_match(pat, "/api/v1/devices/a%4", caps, &n), -1);
    char longp[400];
    memcpy(longp, "/api/v1/devices/", 16);
    memset(longp + 16, 'x', 129);
    longp[16 + 129] = '\0';
    assert_int_equal(em__api_path_match(pat, longp, caps, &n), -1);
    longp[16 + 128] = '\0';
    assert_int_equal(em__api_path_match(pat, longp, caps, &n), 1);
}

static void test_path_match_needs_every_segment(void **state)
{
    (void)state;
    char caps[EM__API_CAPTURES_MAX][EM__API_CAPTURE_MAX + 1];
    size_t n = 0;
    const char *pat = "/api/v1/devices/{id}";
    assert_int_equal(em__api_path_match(pat, "/api/v1/devices", caps, &n), 0);
    assert_int_equal(em__api_path_match(pat, "/api/v1/devices/", caps, &n), 0);
    assert_int_equal(em__api_path_match(pat, "/api/v1/devices/a/b", caps, &n), 0);
    assert_int_equal(em__api_path_match(pat, "/api/v1/Devices/a", caps, &n), 0);
    assert_int_equal(em__api_path_match("/api/v1/whoami", "/api/v1/whoami", caps, &n), 1);
    assert_int_equal(n, 0);
    assert_int_equal(em__api_path_match("/api/v1/whoami", "/api/v1/whoami/", caps, &n), 0);
    assert_int_equal(em__api_path_match("/api/v1/whoami", "api/v1/whoami", caps, &n), 0);
}

int main(void)
{
    em_log_set_level(EM_LOG_OFF);
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_key_generate_has_the_documented_shape),
        cmocka_unit_test(test_key_hash_is_sha256_of_the_whole_key),
        cmocka_unit_test(test_key_generate_gives_a_new_key_each_time),
        cmocka_unit_test(test_key_generate_refuses_a_small_buffer),
        cmocka_unit_test(test_key_parse_accepts_a_generated_key),
        cmocka_unit_test(test_key_parse_refuses_other_shapes),
        cmocka_unit_test_setup_teardown(test_jwt_key_file_is_created_with_mode_0600, fx_setup,
                                        fx_teardown),
        cmocka_unit_test_setup_teardown(test_jwt_issued_token_verifies_with_its_claims, fx_setup,
                                        fx_teardown),
        cmocka_unit_test_setup_teardown(test_jwt_device_token_carries_the_device, fx_setup,
                                        fx_teardown),
        cmocka_unit_test_setup_teardown(test_jwt_issue_refuses_a_small_buffer, fx_setup,
                                        fx_teardown),
        cmocka_unit_test_setup_teardown(test_jwt_expired_is_refused, fx_setup, fx_teardown),
        cmocka_unit_test_setup_teardown(test_jwt_wrong_issuer_is_refused, fx_setup, fx_teardown),
        cmocka_unit_test_setup_teardown(test_jwt_wrong_audience_is_refused, fx_setup, fx_teardown),
        cmocka_unit_test_setup_teardown(test_jwt_alg_none_is_refused, fx_setup, fx_teardown),
        cmocka_unit_test_setup_teardown(test_jwt_hs256_keyed_with_the_public_key_is_refused,
                                        fx_setup, fx_teardown),
        cmocka_unit_test_setup_teardown(test_jwt_tampered_payload_is_refused, fx_setup,
                                        fx_teardown),
        cmocka_unit_test_setup_teardown(test_jwt_tampered_signature_is_refused, fx_setup,
                                        fx_teardown),
        cmocka_unit_test_setup_teardown(test_jwt_missing_claims_are_refused, fx_setup, fx_teardown),
        cmocka_unit_test_setup_teardown(test_jwt_not_yet_valid_is_refused, fx_setup, fx_teardown),
        cmocka_unit_test_setup_teardown(test_jwt_user_claim_must_name_the_subject, fx_setup,
                                        fx_teardown),
        cmocka_unit_test_setup_teardown(test_jwt_issued_for_a_certificate_user_is_bound_to_the_user,
                                        fx_setup, fx_teardown),
        cmocka_unit_test_setup_teardown(test_jwt_garbage_is_refused, fx_setup, fx_teardown),
        cmocka_unit_test_setup_teardown(test_jwt_key_file_is_reused_at_the_next_start, fx_setup,
                                        fx_teardown),
        cmocka_unit_test_setup_teardown(test_jwt_key_file_readable_by_others_is_refused, fx_setup,
                                        fx_teardown),
        cmocka_unit_test_setup_teardown(test_jwt_key_file_that_is_not_a_p256_key_is_refused,
                                        fx_setup, fx_teardown),
        cmocka_unit_test(test_bearer_parsing),
        cmocka_unit_test(test_bucket_allows_its_capacity_then_refuses),
        cmocka_unit_test(test_bucket_retry_after_is_whole_seconds_of_at_least_one),
        cmocka_unit_test(test_bucket_refills_continuously),
        cmocka_unit_test(test_bucket_of_rate_zero_refuses),
        cmocka_unit_test(test_bucket_table_is_per_key_and_bounded),
        cmocka_unit_test(test_path_match_captures_and_decodes),
        cmocka_unit_test(test_path_match_refuses_bad_captures),
        cmocka_unit_test(test_path_match_needs_every_segment),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
