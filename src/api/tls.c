/*
 * emiot - tls.c: the API's TLS: one SSL_CTX per listener (TLS 1.3 only, the
 * three AEAD suites, client certificates as the listener asks, the CRL when
 * one is in force), the client certificate's name, its verification by the
 * listener's em_verifier_t (chain, validity, CRL, key usage), and handshake
 * counters.
 *
 * Which CRL a listener uses: client_crl_file when set, else the CA
 * directory's crl.pem when a pki is configured; in both cases only the CRLs
 * in that file that a CA of the listener's client_ca_file issued (a listener
 * that trusts another CA keeps working without one, with a warning in the
 * log). Once a CRL is in force, a certificate of a CA in client_ca_file
 * without a CRL is refused: that is OpenSSL's rule, and em_verifier_t's.
 */
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <event2/bufferevent.h>
#include <event2/bufferevent_ssl.h>
#include <event2/http.h>
#include <openssl/err.h>
#include <openssl/pem.h>
#include <openssl/ssl.h>
#include <openssl/x509.h>
#include <openssl/x509v3.h>

#include "api/api_core.h"
#include "emiot/clock.h"
#include "emiot/log.h"

#define SUITES       "TLS_AES_256_GCM_SHA384:TLS_CHACHA20_POLY1305_SHA256:TLS_AES_128_GCM_SHA256"
#define VERIFY_DEPTH 4
#define CA_CERTS_MAX 64   /* certificates read from a client CA file */
#define CRLS_MAX     64   /* CRLs read from a CRL file */
#define RELOAD_MS    1000 /* the verifier looks at its files at most this often */

/* The last OpenSSL error as text (for the log and err; never a secret). */
static void ssl_error(char *buf, size_t size)
{
    unsigned long e = ERR_peek_last_error();
    if (e == 0)
        snprintf(buf, size, "unknown error");
    else
        ERR_error_string_n(e, buf, size);
    ERR_clear_error();
}

/* Counts finished handshakes and handshakes we refused with an alert. */
static void info_cb(const SSL *ssl, int where, int ret)
{
    em__api_listener_t *l = SSL_CTX_get_app_data(SSL_get_SSL_CTX(ssl));
    if (l == NULL || l->api == NULL)
        return;
    if (where & SSL_CB_HANDSHAKE_DONE) {
        l->api->stats.tls_handshakes++;
    } else if ((where & SSL_CB_ALERT) && (where & SSL_CB_WRITE) && !SSL_is_init_finished(ssl) &&
               (ret >> 8) == SSL3_AL_FATAL) {
        l->api->stats.tls_failures++;
    }
}

/* ---- CRLs ----------------------------------------------------------------- */

const char *em__api_tls_crl_for(const em_api_options_t *o)
{
    if (o->client_crl_file != NULL)
        return o->client_crl_file;
    return o->pki != NULL ? em_pki_crl_file(o->pki) : NULL;
}

/* Reads up to max PEM objects of file: certificates into certs, CRLs into
 * crls (either may be NULL: those are skipped). false when unreadable. */
static bool read_pem(const char *file, STACK_OF(X509) * certs, STACK_OF(X509_CRL) * crls)
{
    BIO *b = BIO_new_file(file, "r");
    if (b == NULL)
        return false;
    STACK_OF(X509_INFO) *infos = PEM_X509_INFO_read_bio(b, NULL, NULL, NULL);
    BIO_free(b);
    if (infos == NULL)
        return false;
    bool ok = true;
    for (int i = 0; ok && i < sk_X509_INFO_num(infos); i++) {
        X509_INFO *in = sk_X509_INFO_value(infos, i);
        if (certs != NULL && in->x509 != NULL && sk_X509_num(certs) < CA_CERTS_MAX) {
            ok = sk_X509_push(certs, in->x509) > 0;
            if (ok)
                in->x509 = NULL;
        }
        if (ok && crls != NULL && in->crl != NULL && sk_X509_CRL_num(crls) < CRLS_MAX) {
            ok = sk_X509_CRL_push(crls, in->crl) > 0;
            if (ok)
                in->crl = NULL;
        }
    }
    sk_X509_INFO_pop_free(infos, X509_INFO_free);
    return ok;
}

/*
 * The CRLs of crl_file that a CA of ca_file issued (issuer name and
 * signature), into *out (a new stack, maybe empty). Errors: EM_ERR_TLS when
 * a file cannot be read, EM_ERR_NOMEM.
 */
static em_err_t matching_crls(const char *ca_file, const char *crl_file, STACK_OF(X509_CRL) * *out,
                              em_error_t *err)
{
    char why[256];
    STACK_OF(X509) *cas = sk_X509_new_null();
    STACK_OF(X509_CRL) *all = sk_X509_CRL_new_null();
    STACK_OF(X509_CRL) *keep = sk_X509_CRL_new_null();
    em_err_t rc = EM_OK;
    *out = NULL;
    if (cas == NULL || all == NULL || keep == NULL) {
        rc = em_error_set(err, EM_ERR_NOMEM, EM_SEV_HIGH, NULL, "out of memory");
        goto out;
    }
    if (!read_pem(ca_file, cas, NULL)) {
        ssl_error(why, sizeof why);
        rc = em_error_set(err, EM_ERR_TLS, EM_SEV_HIGH, "client_ca_file", "cannot read %s: %s",
                          ca_file, why);
        goto out;
    }
    if (!read_pem(crl_file, NULL, all)) {
        ssl_error(why, sizeof why);
        rc = em_error_set(err, EM_ERR_TLS, EM_SEV_HIGH, "client_crl_file", "cannot read %s: %s",
                          crl_file, why);
        goto out;
    }
    for (int i = 0; i < sk_X509_CRL_num(all); i++) {
        X509_CRL *crl = sk_X509_CRL_value(all, i);
        for (int j = 0; j < sk_X509_num(cas); j++) {
            X509 *ca = sk_X509_value(cas, j);
            EVP_PKEY *pub = X509_get0_pubkey(ca);
            if (X509_NAME_cmp(X509_get_subject_name(ca), X509_CRL_get_issuer(crl)) == 0 &&
                pub != NULL && X509_CRL_verify(crl, pub) == 1) {
                if (X509_CRL_up_ref(crl) != 1 || sk_X509_CRL_push(keep, crl) <= 0) {
                    X509_CRL_free(crl);
                    rc = em_error_set(err, EM_ERR_NOMEM, EM_SEV_HIGH, NULL, "out of memory");
                    goto out;
                }
                break;
            }
        }
    }
    ERR_clear_error();
    if (sk_X509_CRL_num(keep) == 0) {
        em_log_field_t f[2] = {EM_LOG_STR("crl_file", crl_file),
                               EM_LOG_STR("client_ca_file", ca_file)};
        em_log(EM_LOG_WARN, "api", NULL,
               "no CRL of the client CA: client certificates are not checked for revocation", f, 2);
    }
    *out = keep;
    keep = NULL;
out:
    sk_X509_pop_free(cas, X509_free);
    sk_X509_CRL_pop_free(all, X509_CRL_free);
    sk_X509_CRL_pop_free(keep, X509_CRL_free);
    return rc;
}

/* ---- contexts and verifiers ------------------------------------------------ */

static SSL_CTX *make_ctx(const em_api_listener_t *l, STACK_OF(X509_CRL) * crls, em_error_t *err)
{
    char why[256];
    SSL_CTX *ctx = SSL_CTX_new_ex(NULL, NULL, TLS_server_method());
    if (ctx == NULL) {
        em_error_set(err, EM_ERR_NOMEM, EM_SEV_HIGH, NULL, "cannot create a TLS context");
        return NULL;
    }
    if (SSL_CTX_set_min_proto_version(ctx, TLS1_3_VERSION) != 1 ||
        SSL_CTX_set_max_proto_version(ctx, TLS1_3_VERSION) != 1 ||
        SSL_CTX_set_ciphersuites(ctx, SUITES) != 1) {
        ssl_error(why, sizeof why);
        em_error_set(err, EM_ERR_TLS, EM_SEV_HIGH, NULL, "TLS 1.3 set-up failed: %s", why);
        goto fail;
    }
    SSL_CTX_set_options(ctx, SSL_OP_NO_COMPRESSION | SSL_OP_NO_RENEGOTIATION |
                                 SSL_OP_CIPHER_SERVER_PREFERENCE);
    if (SSL_CTX_use_certificate_chain_file(ctx, l->cert_file) != 1) {
        ssl_error(why, sizeof why);
        em_error_set(err, EM_ERR_TLS, EM_SEV_HIGH, "cert_file", "cannot use %s: %s", l->cert_file,
                     why);
        goto fail;
    }
    if (l->key_file == NULL ||
        SSL_CTX_use_PrivateKey_file(ctx, l->key_file, SSL_FILETYPE_PEM) != 1) {
        ssl_error(why, sizeof why);
        em_error_set(err, EM_ERR_TLS, EM_SEV_HIGH, "key_file", "cannot use %s: %s",
                     l->key_file ? l->key_file : "(none)", why);
        goto fail;
    }
    if (SSL_CTX_check_private_key(ctx) != 1) {
        ERR_clear_error();
        em_error_set(err, EM_ERR_TLS, EM_SEV_HIGH, "key_file",
                     "the key does not match the certificate");
        goto fail;
    }
    if (l->client_auth != EM_CLIENT_AUTH_NONE) {
        STACK_OF(X509_NAME) *names = NULL;
        if (l->client_ca_file == NULL ||
            SSL_CTX_load_verify_locations(ctx, l->client_ca_file, NULL) != 1 ||
            (names = SSL_load_client_CA_file(l->client_ca_file)) == NULL) {
            ssl_error(why, sizeof why);
            em_error_set(err, EM_ERR_TLS, EM_SEV_HIGH, "client_ca_file", "cannot use %s: %s",
                         l->client_ca_file ? l->client_ca_file : "(none)", why);
            goto fail;
        }
        SSL_CTX_set_client_CA_list(ctx, names);
        /* With a CRL in force, a revoked certificate fails the handshake
         * itself; the request's check (em__api_tls_peer_verify) says so
         * again for connections made before the CRL changed. */
        if (crls != NULL && sk_X509_CRL_num(crls) > 0) {
            X509_STORE *store = SSL_CTX_get_cert_store(ctx);
            for (int i = 0; i < sk_X509_CRL_num(crls); i++) {
                if (X509_STORE_add_crl(store, sk_X509_CRL_value(crls, i)) != 1) {
                    ssl_error(why, sizeof why);
                    em_error_set(err, EM_ERR_TLS, EM_SEV_HIGH, "client_crl_file",
                                 "cannot use the CRL: %s", why);
                    goto fail;
                }
            }
            X509_STORE_set_flags(store, X509_V_FLAG_CRL_CHECK);
        }
        int mode = SSL_VERIFY_PEER;
        if (l->client_auth == EM_CLIENT_AUTH_REQUIRED)
            mode |= SSL_VERIFY_FAIL_IF_NO_PEER_CERT;
        SSL_CTX_set_verify(ctx, mode, NULL);
        SSL_CTX_set_verify_depth(ctx, VERIFY_DEPTH);
    }
    /* Resumed sessions keep the client's identity; this names whose they are. */
    static const unsigned char sid[] = "emiotd-api";
    SSL_CTX_set_session_id_context(ctx, sid, sizeof sid - 1);
    SSL_CTX_set_info_callback(ctx, info_cb);
    return ctx;
fail:
    SSL_CTX_free(ctx);
    return NULL;
}

em_err_t em__api_tls_setup(const em_api_listener_t *l, const em_api_options_t *o, SSL_CTX **ctx,
                           em_verifier_t **verifier, em_error_t *err)
{
    STACK_OF(X509_CRL) *crls = NULL;
    em_err_t rc = EM_OK;
    *ctx = NULL;
    if (verifier != NULL)
        *verifier = NULL;
    const char *crl_file = em__api_tls_crl_for(o);
    bool client = l->client_auth != EM_CLIENT_AUTH_NONE && l->client_ca_file != NULL;
    if (client && crl_file != NULL) {
        rc = matching_crls(l->client_ca_file, crl_file, &crls, err);
        if (rc != EM_OK)
            return rc;
    }
    bool with_crl = crls != NULL && sk_X509_CRL_num(crls) > 0;
    *ctx = make_ctx(l, crls, err);
    sk_X509_CRL_pop_free(crls, X509_CRL_free);
    if (*ctx == NULL)
        return err != NULL && err->code != EM_OK ? err->code : EM_ERR_TLS;
    if (client && verifier != NULL) {
        rc = em_verifier_new(l->client_ca_file, with_crl ? crl_file : NULL, verifier, err);
        if (rc != EM_OK) {
            SSL_CTX_free(*ctx);
            *ctx = NULL;
            return rc;
        }
    }
    return EM_OK;
}

em_err_t em__api_tls_device_verifier(const em_api_options_t *o, em_verifier_t **out,
                                     em_error_t *err)
{
    *out = NULL;
    const char *ca = o->device_ca_file;
    if (ca == NULL && o->pki != NULL)
        ca = em_pki_ca_file(o->pki);
    if (ca == NULL)
        return EM_OK;
    /* The CRL must be the device CA's: a mismatch is refused here rather
     * than leaving revoked devices in. */
    return em_verifier_new(ca, em__api_tls_crl_for(o), out, err);
}

/*
 * Looks at the listener's verifier files at most once a second. When they
 * changed (a CRL published), the listener gets a new SSL_CTX with the new CRL
 * for the handshakes to come, and every connection's memo of its
 * certificate's check is forgotten (cert_gen).
 */
static void refresh(em__api_listener_t *l, int64_t mono)
{
    em_api_t *api = l->api;
    if (l->verifier == NULL || mono - l->verifier_mono_ms < RELOAD_MS)
        return;
    l->verifier_mono_ms = mono;
    bool changed = false;
    em_error_t err;
    em_error_clear(&err);
    if (em_verifier_reload(l->verifier, &changed, &err) != EM_OK) {
        em_log(EM_LOG_WARN, "api", NULL, "client certificate files not reloaded",
               &EM_LOG_STR("error", err.message), 1);
        return;
    }
    if (!changed)
        return;
    api->cert_gen++;
    SSL_CTX *ctx = NULL;
    const em_api_listener_t *o = &api->opts.listeners[l->idx];
    if (em__api_tls_setup(o, &api->opts, &ctx, NULL, &err) != EM_OK) {
        em_log(EM_LOG_WARN, "api", NULL, "TLS context not rebuilt after a CRL change",
               &EM_LOG_STR("error", err.message), 1);
        return;
    }
    SSL_CTX_set_app_data(ctx, l);
    SSL_CTX_free(l->ctx);
    l->ctx = ctx;
    em_logf(EM_LOG_INFO, "api", "listener %zu: client CA or CRL changed, reloaded", l->idx);
}

/* ---- the connection's client certificate ---------------------------------- */

/* What the last check of a connection's certificate said (per SSL, so that
 * a keep-alive connection verifies once, not once per request). */
typedef struct peer_memo {
    uint64_t gen; /* api->cert_gen of the check; 0: none */
    em_cert_profile_t purpose;
    em_err_t rc;
    int64_t not_after_ms;
    char reason[EM_ERROR_MESSAGE_MAX + 1];
} peer_memo_t;

static pthread_once_t memo_once = PTHREAD_ONCE_INIT;
static int memo_index = -1;

static void memo_free(void *parent, void *ptr, CRYPTO_EX_DATA *ad, int idx, long argl, void *argp)
{
    (void)parent;
    (void)ad;
    (void)idx;
    (void)argl;
    (void)argp;
    free(ptr);
}

static void memo_init(void)
{
    memo_index = SSL_get_ex_new_index(0, NULL, NULL, NULL, memo_free);
}

static SSL *ssl_of(struct evhttp_request *req)
{
    struct evhttp_connection *conn = evhttp_request_get_connection(req);
    struct bufferevent *bev = conn != NULL ? evhttp_connection_get_bufferevent(conn) : NULL;
    return bev != NULL ? bufferevent_openssl_get_ssl(bev) : NULL;
}

bool em__api_tls_peer_cn(struct evhttp_request *req, char *cn, size_t size)
{
    SSL *ssl = ssl_of(req);
    if (ssl == NULL)
        return false;
    X509 *peer = SSL_get0_peer_certificate(ssl);
    if (peer == NULL || SSL_get_verify_result(ssl) != X509_V_OK)
        return false;
    X509_NAME *subj = X509_get_subject_name(peer);
    int idx = X509_NAME_get_index_by_NID(subj, NID_commonName, -1);
    /* Exactly one CN: two would make the identity ambiguous. */
    if (idx < 0 || X509_NAME_get_index_by_NID(subj, NID_commonName, idx) >= 0)
        return false;
    ASN1_STRING *data = X509_NAME_ENTRY_get_data(X509_NAME_get_entry(subj, idx));
    unsigned char *utf8 = NULL;
    int n = ASN1_STRING_to_UTF8(&utf8, data);
    bool ok = n > 0 && (size_t)n < size;
    for (int i = 0; ok && i < n; i++)
        if (utf8[i] < 0x20 || utf8[i] == 0x7F)
            ok = false;
    if (ok) {
        memcpy(cn, utf8, (size_t)n);
        cn[n] = '\0';
    }
    OPENSSL_free(utf8);
    return ok;
}

em_err_t em__api_tls_peer_verify(em_api_t *api, struct evhttp_request *req,
                                 em_cert_profile_t purpose, int64_t now_ms, em_error_t *err)
{
    SSL *ssl = ssl_of(req);
    X509 *peer = ssl != NULL ? SSL_get0_peer_certificate(ssl) : NULL;
    if (peer == NULL)
        return em_error_set(err, EM_ERR_CERTIFICATE, EM_SEV_MEDIUM, NULL, "no client certificate");
    em__api_listener_t *l = SSL_CTX_get_app_data(SSL_get_SSL_CTX(ssl));
    if (l == NULL || l->api != api)
        return em_error_set(err, EM_ERR_CERTIFICATE, EM_SEV_MEDIUM, NULL,
                            "connection of an unknown listener");
    if (l->verifier == NULL)
        return em_error_set(err, EM_ERR_CERTIFICATE, EM_SEV_MEDIUM, NULL,
                            "this listener verifies no client certificate");
    refresh(l, em_mono_ms());

    pthread_once(&memo_once, memo_init);
    peer_memo_t *m = memo_index >= 0 ? SSL_get_ex_data(ssl, memo_index) : NULL;
    if (m != NULL && m->gen == api->cert_gen && m->purpose == purpose &&
        (m->rc != EM_OK || now_ms < m->not_after_ms)) {
        if (m->rc == EM_OK)
            return EM_OK;
        return em_error_set(err, m->rc, EM_SEV_MEDIUM, NULL, "%s", m->reason);
    }

    em_error_t e;
    em_error_clear(&e);
    em_cert_identity_t id;
    memset(&id, 0, sizeof id);
    em_err_t rc = em_verifier_check(l->verifier, peer, SSL_get_peer_cert_chain(ssl), purpose,
                                    now_ms, &id, &e);
    if (m == NULL && memo_index >= 0) {
        m = calloc(1, sizeof *m);
        if (m != NULL && SSL_set_ex_data(ssl, memo_index, m) != 1) {
            free(m);
            m = NULL;
        }
    }
    if (m != NULL) {
        m->gen = api->cert_gen;
        m->purpose = purpose;
        m->rc = rc;
        m->not_after_ms = id.not_after_ms;
        snprintf(m->reason, sizeof m->reason, "%s", rc == EM_OK ? "" : e.message);
    }
    if (rc != EM_OK)
        return em_error_set(err, rc, EM_SEV_MEDIUM, NULL, "%s", e.message);
    return EM_OK;
}
