/*
 * emiot - mqtt/tls.c: the TLS context of a broker connection, and what it
 * tells us when a handshake fails.
 *
 * emiot builds the SSL_CTX itself and hands it to libmosquitto
 * (MOSQ_OPT_SSL_CTX, without libmosquitto's defaults) rather than using
 * mosquitto_tls_set, for three reasons:
 *  - every file is loaded and checked in em_mqtt_new, so a missing CA, an
 *    unreadable key or a key that does not match its certificate is a
 *    configuration error at once, not a failure at the first connection;
 *  - the host name is checked by OpenSSL itself (X509_VERIFY_PARAM_set1_host /
 *    set1_ip_asc), which also handles IP address SANs, and the system store
 *    (OpenSSL's default paths, which honour SSL_CERT_FILE and SSL_CERT_DIR) is
 *    used when no CA is given, with or without a client certificate
 *    (mosquitto_tls_set cannot express "system store + client certificate");
 *  - an info callback records the alerts exchanged, so a failure can be
 *    reported precisely: the broker's certificate did not verify (and why), or
 *    the broker refused ours.
 * The security settings are those the brief asks of libmosquitto: peer
 * verification always on (there is no way to turn it off), host name always
 * checked, TLS 1.2 at least. The floor is 1.2 rather than 1.3 so that emiot
 * still reaches brokers and load balancers that stop at 1.2; OpenSSL offers
 * 1.3 first and every broker that supports it (mosquitto 2 does) negotiates
 * it. TLS 1.2 is limited to forward-secret AEAD suites.
 */
#include <errno.h>
#include <string.h>
#include <sys/stat.h>

#include <openssl/err.h>
#include <openssl/x509v3.h>

#include "mqtt/mqtt_internal.h"

/* TLS 1.2 suites: ECDHE key exchange, AES-GCM or ChaCha20-Poly1305. */
#define TLS12_CIPHERS "ECDHE+AESGCM:ECDHE+CHACHA20"

/* Refuses to prompt for a passphrase: an encrypted key_file is an error, not
 * a question on the terminal of a daemon. */
static int no_passphrase(char *buf, int size, int rwflag, void *userdata)
{
    if (size > 0)
        buf[0] = '\0';
    (void)rwflag;
    (void)userdata;
    return 0;
}

/* The reason of the most recent OpenSSL error, for messages; clears the queue. */
static const char *openssl_reason(void)
{
    unsigned long e = ERR_peek_last_error();
    const char *r = e != 0 ? ERR_reason_error_string(e) : NULL;
    ERR_clear_error();
    return r != NULL ? r : "unknown reason";
}

static void info_callback(const SSL *ssl, int where, int ret)
{
    em_mqtt_t *m = SSL_CTX_get_app_data(SSL_get_SSL_CTX(ssl));
    if (m == NULL)
        return;
    if (where & SSL_CB_ALERT) {
        int level = (ret >> 8) & 0xff;
        int desc = ret & 0xff;
        if (level != SSL3_AL_FATAL)
            return; /* close_notify and other warnings */
        if (where & SSL_CB_READ) {
            m->tls.alert_received = desc;
        } else if (where & SSL_CB_WRITE) {
            m->tls.alert_sent = desc;
            m->tls.verify_result = SSL_get_verify_result(ssl);
        }
    }
    if (where & SSL_CB_HANDSHAKE_DONE) {
        m->tls.handshake_done = true;
        m->tls.tls13 = SSL_version(ssl) == TLS1_3_VERSION;
        const char *v = SSL_get_version(ssl);
        pthread_mutex_lock(&m->lock);
        size_t n = strnlen(v, sizeof(m->tls_version) - 1);
        memcpy(m->tls_version, v, n);
        m->tls_version[n] = '\0';
        pthread_mutex_unlock(&m->lock);
    }
}

static SSL_CTX *ctx_fail(SSL_CTX *ctx, em_error_t *err, em_err_t code, const char *field,
                         const char *what, const char *path)
{
    em_error_set(err, code, EM_SEV_HIGH, field, "%s %s: %s", what, path != NULL ? path : "",
                 openssl_reason());
    SSL_CTX_free(ctx);
    return NULL;
}

SSL_CTX *em__mqtt_tls_ctx_new(em_mqtt_t *m, const em_mqtt_options_t *o, em_error_t *err)
{
    ERR_clear_error();
    SSL_CTX *ctx = SSL_CTX_new(TLS_client_method());
    if (ctx == NULL) {
        em_error_set(err, EM_ERR_NOMEM, EM_SEV_HIGH, NULL, "cannot create a TLS context: %s",
                     openssl_reason());
        return NULL;
    }
    if (SSL_CTX_set_min_proto_version(ctx, TLS1_2_VERSION) != 1 ||
        SSL_CTX_set_cipher_list(ctx, TLS12_CIPHERS) != 1)
        return ctx_fail(ctx, err, EM_ERR_INTERNAL, NULL, "cannot set the TLS protocol floor", "");
    SSL_CTX_set_options(ctx, SSL_OP_NO_COMPRESSION | SSL_OP_NO_RENEGOTIATION);
    SSL_CTX_set_default_passwd_cb(ctx, no_passphrase);

    /* Trust: the given CA file and/or directory, or else the system store. */
    if (o->ca_path != NULL) {
        struct stat st;
        if (stat(o->ca_path, &st) != 0 || !S_ISDIR(st.st_mode)) {
            em_error_set(err, EM_ERR_CONFIGURATION, EM_SEV_HIGH, "ca_path",
                         "ca_path %s is not a readable directory", o->ca_path);
            SSL_CTX_free(ctx);
            return NULL;
        }
    }
    if (o->ca_file != NULL || o->ca_path != NULL) {
        if (SSL_CTX_load_verify_locations(ctx, o->ca_file, o->ca_path) != 1)
            return ctx_fail(ctx, err, EM_ERR_CONFIGURATION, o->ca_file ? "ca_file" : "ca_path",
                            "cannot load CA certificates from",
                            o->ca_file ? o->ca_file : o->ca_path);
    } else if (SSL_CTX_set_default_verify_paths(ctx) != 1) {
        return ctx_fail(ctx, err, EM_ERR_CONFIGURATION, "ca_file",
                        "cannot load the system's CA certificates", "");
    }
    SSL_CTX_set_verify(ctx, SSL_VERIFY_PEER, NULL);

    /* The broker's certificate must name the host of the URL. */
    X509_VERIFY_PARAM *param = SSL_CTX_get0_param(ctx);
    X509_VERIFY_PARAM_set_hostflags(param, X509_CHECK_FLAG_NO_PARTIAL_WILDCARDS);
    int ok = m->url.ip ? X509_VERIFY_PARAM_set1_ip_asc(param, m->url.host)
                       : X509_VERIFY_PARAM_set1_host(param, m->url.host, 0);
    if (ok != 1 || X509_VERIFY_PARAM_set_purpose(param, X509_PURPOSE_SSL_SERVER) != 1)
        return ctx_fail(ctx, err, EM_ERR_INTERNAL, "url", "cannot set the expected host name",
                        m->url.host);

    /* mTLS. */
    if ((o->cert_file == NULL) != (o->key_file == NULL)) {
        em_error_set(err, EM_ERR_CONFIGURATION, EM_SEV_HIGH,
                     o->cert_file ? "key_file" : "cert_file",
                     "cert_file and key_file must be given together");
        SSL_CTX_free(ctx);
        return NULL;
    }
    if (o->cert_file != NULL) {
        if (SSL_CTX_use_certificate_chain_file(ctx, o->cert_file) != 1)
            return ctx_fail(ctx, err, EM_ERR_CONFIGURATION, "cert_file",
                            "cannot load the client certificate", o->cert_file);
        if (SSL_CTX_use_PrivateKey_file(ctx, o->key_file, SSL_FILETYPE_PEM) != 1) {
            unsigned long e = ERR_peek_last_error();
            if (ERR_GET_LIB(e) == ERR_LIB_X509 && ERR_GET_REASON(e) == X509_R_KEY_VALUES_MISMATCH)
                return ctx_fail(ctx, err, EM_ERR_CONFIGURATION, "key_file",
                                "the private key does not match the certificate of", o->cert_file);
            return ctx_fail(ctx, err, EM_ERR_CONFIGURATION, "key_file",
                            "cannot load the private key (missing, unreadable or encrypted)",
                            o->key_file);
        }
        if (SSL_CTX_check_private_key(ctx) != 1)
            return ctx_fail(ctx, err, EM_ERR_CONFIGURATION, "key_file",
                            "the private key does not match the certificate of", o->cert_file);
        m->has_client_cert = true;
    }

    SSL_CTX_set_app_data(ctx, m);
    SSL_CTX_set_info_callback(ctx, info_callback);
    ERR_clear_error();
    return ctx;
}

/* Buffered reads and coalesced writes, installed once the handshake is done.
 *
 * Reads: libmosquitto reads a packet in three or four SSL_read calls (type,
 * length, body), and OpenSSL reads each record with two read() calls (header,
 * body): at QoS 1 a mosquitto broker sends a record per message, so that is
 * two system calls per message. OpenSSL's read-ahead would take every record
 * the socket holds in one read(), but it then moves the rest of its buffer to
 * the front for each record it decrypts (to align the payload): kilobytes
 * copied per message. A buffering BIO under OpenSSL does the same one read()
 * per buffer-full and serves the small reads from memory by offset. poll()
 * does not see what it holds: the driver asks em__mqtt_tls_rpending.
 *
 * Writes: libmosquitto writes each packet with its own SSL_write, and OpenSSL
 * sends each record with its own write(): at QoS 1 that is a record, a system
 * call and a TCP segment per PUBACK, each of which the broker must read and
 * decrypt on its own. A buffering BIO between OpenSSL and the socket, flushed
 * by the driver after each round of writes (em__mqtt_tls_flush), makes what
 * one wake-up wrote leave in one write(). OpenSSL flushes it itself after an
 * alert (the close_notify of a disconnect follows the DISCONNECT out). */
#define TLS_RBUF_SIZE 65536L
#define TLS_WBUF_SIZE 65536L

/* A buffering BIO over sock, taking a reference of its own to sock; NULL
 * when it cannot (unbuffered still works). */
static BIO *buffer_over(BIO *sock, bool reading)
{
    BIO *buf = BIO_new(BIO_f_buffer());
    if (buf == NULL)
        return NULL;
    long ok = reading ? BIO_set_read_buffer_size(buf, TLS_RBUF_SIZE)
                      : BIO_set_write_buffer_size(buf, TLS_WBUF_SIZE);
    if (ok != 1 || BIO_up_ref(sock) != 1) {
        BIO_free(buf);
        ERR_clear_error();
        return NULL;
    }
    BIO_push(buf, sock);
    return buf;
}

void em__mqtt_tls_buffer_io(em_mqtt_t *m)
{
    if (m->ssl_ctx == NULL)
        return;
    SSL *ssl = mosquitto_ssl_get(m->mosq);
    if (ssl == NULL)
        return;
    /* libmosquitto gives OpenSSL one socket BIO for both directions; each
     * buffer takes its own reference to it, and SSL_set0_rbio / _wbio drop
     * the ones the two directions had. Only over that socket BIO, never
     * twice on one connection. */
    BIO *sock = SSL_get_wbio(ssl);
    if (sock != NULL && BIO_method_type(sock) == BIO_TYPE_SOCKET) {
        BIO *w = buffer_over(sock, false);
        if (w != NULL)
            SSL_set0_wbio(ssl, w);
    }
    sock = SSL_get_rbio(ssl);
    if (sock != NULL && BIO_method_type(sock) == BIO_TYPE_SOCKET) {
        BIO *r = buffer_over(sock, true);
        if (r != NULL)
            SSL_set0_rbio(ssl, r);
    }
}

bool em__mqtt_tls_rpending(em_mqtt_t *m)
{
    if (m->ssl_ctx == NULL)
        return false;
    SSL *ssl = mosquitto_ssl_get(m->mosq);
    if (ssl == NULL)
        return false;
    if (SSL_has_pending(ssl) == 1)
        return true;
    BIO *b = SSL_get_rbio(ssl);
    return b != NULL && BIO_method_type(b) == BIO_TYPE_BUFFER && BIO_pending(b) > 0;
}

bool em__mqtt_tls_wpending(em_mqtt_t *m)
{
    if (m->ssl_ctx == NULL)
        return false;
    SSL *ssl = mosquitto_ssl_get(m->mosq);
    BIO *b = ssl != NULL ? SSL_get_wbio(ssl) : NULL;
    return b != NULL && BIO_method_type(b) == BIO_TYPE_BUFFER && BIO_wpending(b) > 0;
}

bool em__mqtt_tls_flush(em_mqtt_t *m)
{
    if (!em__mqtt_tls_wpending(m))
        return true;
    BIO *b = SSL_get_wbio(mosquitto_ssl_get(m->mosq));
    /* A socket that cannot take it all now keeps the rest in the buffer:
     * the driver polls for POLLOUT and flushes again. */
    if (BIO_flush(b) == 1)
        return true;
    if (!BIO_should_retry(b))
        ERR_clear_error(); /* the socket failed: the next read reports it */
    return false;
}

void em__mqtt_tls_diag_reset(em_mqtt_t *m)
{
    m->tls.alert_sent = -1;
    m->tls.alert_received = -1;
    m->tls.verify_result = X509_V_OK;
    m->tls.handshake_done = false;
    m->tls.tls13 = false;
}

/* Names of the TLS alerts emiot reports (OpenSSL 3.0 has no name for 116). */
static const char *alert_name(int desc)
{
    switch (desc) {
    case 40:
        return "handshake failure";
    case 42:
        return "bad certificate";
    case 43:
        return "unsupported certificate";
    case 44:
        return "certificate revoked";
    case 45:
        return "certificate expired";
    case 46:
        return "certificate unknown";
    case 48:
        return "unknown CA";
    case 49:
        return "access denied";
    case 70:
        return "protocol version";
    case 71:
        return "insufficient security";
    case 116:
        return "certificate required";
    default:
        return SSL_alert_desc_string_long(desc | (SSL3_AL_FATAL << 8));
    }
}

/* True for the alerts a server sends about the client's certificate. */
static bool alert_is_about_client_cert(int desc)
{
    switch (desc) {
    case 42:  /* bad_certificate */
    case 43:  /* unsupported_certificate */
    case 44:  /* certificate_revoked */
    case 45:  /* certificate_expired */
    case 46:  /* certificate_unknown */
    case 48:  /* unknown_ca */
    case 49:  /* access_denied */
    case 116: /* certificate_required */
        return true;
    default:
        return false;
    }
}

bool em__mqtt_tls_explain(em_mqtt_t *m, em_error_t *err)
{
    if (m->ssl_ctx == NULL)
        return false;
    const char *host = m->url.host;
    if (m->tls.alert_sent >= 0) {
        if (m->tls.verify_result != X509_V_OK)
            em_error_set(err, EM_ERR_TLS, EM_SEV_HIGH, "url",
                         "the certificate of broker %s:%d failed verification: %s", host,
                         m->url.port, X509_verify_cert_error_string(m->tls.verify_result));
        else
            em_error_set(err, EM_ERR_TLS, EM_SEV_HIGH, "url",
                         "TLS handshake with %s:%d failed (we sent alert: %s)", host, m->url.port,
                         alert_name(m->tls.alert_sent));
        return true;
    }
    if (m->tls.alert_received >= 0) {
        int a = m->tls.alert_received;
        if (alert_is_about_client_cert(a)) {
            if (!m->has_client_cert)
                em_error_set(err, EM_ERR_AUTHENTICATION, EM_SEV_HIGH, "cert_file",
                             "broker %s:%d requires a client certificate (alert: %s)", host,
                             m->url.port, alert_name(a));
            else
                em_error_set(err, EM_ERR_AUTHENTICATION, EM_SEV_HIGH, "cert_file",
                             "broker %s:%d refused the client certificate (alert: %s)", host,
                             m->url.port, alert_name(a));
        } else if (a == 70 || a == 71) {
            em_error_set(err, EM_ERR_TLS, EM_SEV_HIGH, "url",
                         "broker %s:%d does not support TLS 1.2 or later with strong ciphers "
                         "(alert: %s)",
                         host, m->url.port, alert_name(a));
        } else {
            em_error_set(err, EM_ERR_TLS, EM_SEV_HIGH, "url",
                         "broker %s:%d ended the TLS handshake (alert: %s)", host, m->url.port,
                         alert_name(a));
        }
        return true;
    }
    return false;
}

bool em__mqtt_tls_explain_early_close(em_mqtt_t *m, em_error_t *err)
{
    /* In TLS 1.3 the client finishes its handshake before the server has
     * checked the client's certificate. A server that refuses it sends an
     * alert and closes, but the alert is sometimes lost (the close may reset
     * the connection first): then all the client sees is the connection
     * ending right after its handshake, before any MQTT answer. */
    if (m->ssl_ctx == NULL || !m->tls.handshake_done || !m->tls.tls13 || m->connack_rc >= 0)
        return false;
    if (m->has_client_cert)
        em_error_set(err, EM_ERR_AUTHENTICATION, EM_SEV_HIGH, "cert_file",
                     "broker %s:%d closed the connection right after the TLS handshake: it most "
                     "likely refused the client certificate",
                     m->url.host, m->url.port);
    else
        em_error_set(err, EM_ERR_AUTHENTICATION, EM_SEV_HIGH, "cert_file",
                     "broker %s:%d closed the connection right after the TLS handshake: it most "
                     "likely requires a client certificate",
                     m->url.host, m->url.port);
    return true;
}
