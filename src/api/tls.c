/*
 * emiot - tls.c: the API's TLS: one SSL_CTX per listener (TLS 1.3 only, the
 * three AEAD suites, client certificates as the listener asks), the client
 * certificate's name, and handshake counters.
 */
#include <pthread.h>
#include <stdio.h>
#include <string.h>

#include <event2/bufferevent.h>
#include <event2/bufferevent_ssl.h>
#include <event2/http.h>
#include <openssl/err.h>
#include <openssl/ssl.h>
#include <openssl/x509.h>
#include <openssl/x509v3.h>

#include "api/api_core.h"
#include "emiot/log.h"

#define SUITES       "TLS_AES_256_GCM_SHA384:TLS_CHACHA20_POLY1305_SHA256:TLS_AES_128_GCM_SHA256"
#define VERIFY_DEPTH 4

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

SSL_CTX *em__api_tls_ctx(const em_api_listener_t *l, em_error_t *err)
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

bool em__api_tls_peer_cn(struct evhttp_request *req, char *cn, size_t size)
{
    struct evhttp_connection *conn = evhttp_request_get_connection(req);
    struct bufferevent *bev = conn != NULL ? evhttp_connection_get_bufferevent(conn) : NULL;
    SSL *ssl = bev != NULL ? bufferevent_openssl_get_ssl(bev) : NULL;
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
