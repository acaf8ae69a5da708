/*
 * emiot - config_check.c: emiotd --check-config (em_daemon_config_check).
 *
 * Parsing proves the file is well formed; this proves it can run here: the
 * directories exist, the files it names can be read, certificates and keys
 * load and match, secrets are set and not placeholders, and the MQTT
 * transport accepts its options. Nothing is connected to and nothing is
 * written.
 */
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <openssl/crypto.h>
#include <openssl/err.h>
#include <openssl/evp.h>
#include <openssl/pem.h>
#include <openssl/ssl.h>

#include "daemon/config_internal.h"
#include "emiot/daemon.h"

static em_err_t readable(const char *what, const char *path, em_error_t *err)
{
    if (path[0] == '\0')
        return EM_OK;
    int fd = open(path, O_RDONLY | O_CLOEXEC | O_NOCTTY);
    if (fd < 0)
        return em_error_set(err, EM_ERR_CONFIGURATION, EM_SEV_HIGH, what, "%s: cannot read %s: %s",
                            what, path, strerror(errno));
    close(fd);
    return EM_OK;
}

/* The directory holding path exists (the file may not yet). */
static em_err_t parent_exists(const char *what, const char *path, em_error_t *err)
{
    char dir[EM_DAEMON_PATH_MAX + 1];
    snprintf(dir, sizeof(dir), "%s", path);
    char *slash = strrchr(dir, '/');
    if (slash == NULL)
        return EM_OK;
    if (slash == dir)
        slash[1] = '\0';
    else
        *slash = '\0';
    struct stat st;
    if (stat(dir, &st) != 0 || !S_ISDIR(st.st_mode))
        return em_error_set(err, EM_ERR_CONFIGURATION, EM_SEV_HIGH, what,
                            "%s: the directory %s does not exist", what, dir);
    return EM_OK;
}

/* The certificate chain and key load and match. */
static em_err_t check_tls_pair(const char *what, const char *cert, const char *key, em_error_t *err)
{
    em_err_t rc = readable(what, cert, err);
    if (rc == EM_OK)
        rc = readable(what, key, err);
    if (rc != EM_OK)
        return rc;
    SSL_CTX *ctx = SSL_CTX_new(TLS_server_method());
    if (ctx == NULL)
        return em_error_set(err, EM_ERR_NOMEM, EM_SEV_HIGH, what, "out of memory");
    if (SSL_CTX_use_certificate_chain_file(ctx, cert) != 1)
        rc = em_error_set(err, EM_ERR_CONFIGURATION, EM_SEV_HIGH, what,
                          "%s: %s is not a PEM certificate chain", what, cert);
    EVP_PKEY *pkey = NULL;
    if (rc == EM_OK) {
        /* Read apart from the certificate, so that an unreadable key and a
         * key of another certificate get their own messages. */
        FILE *f = fopen(key, "re");
        if (f != NULL) {
            /* An empty passphrase: an encrypted key is refused, never
             * prompted for. */
            pkey = PEM_read_PrivateKey(f, NULL, NULL, (void *)"");
            (void)fclose(f);
        }
        if (pkey == NULL)
            rc = em_error_set(err, EM_ERR_CONFIGURATION, EM_SEV_HIGH, what,
                              "%s: %s is not a PEM private key (or it is encrypted)", what, key);
        else if (SSL_CTX_use_PrivateKey(ctx, pkey) != 1 || SSL_CTX_check_private_key(ctx) != 1)
            rc = em_error_set(err, EM_ERR_CONFIGURATION, EM_SEV_HIGH, what,
                              "%s: the key %s does not match the certificate %s", what, key, cert);
    }
    EVP_PKEY_free(pkey);
    ERR_clear_error();
    SSL_CTX_free(ctx);
    return rc;
}

static em_err_t check_ca(const char *what, const char *ca, em_error_t *err)
{
    em_err_t rc = readable(what, ca, err);
    if (rc != EM_OK || ca[0] == '\0')
        return rc;
    SSL_CTX *ctx = SSL_CTX_new(TLS_server_method());
    if (ctx == NULL)
        return em_error_set(err, EM_ERR_NOMEM, EM_SEV_HIGH, what, "out of memory");
    if (SSL_CTX_load_verify_locations(ctx, ca, NULL) != 1)
        rc = em_error_set(err, EM_ERR_CONFIGURATION, EM_SEV_HIGH, what,
                          "%s: %s holds no PEM CA certificate", what, ca);
    ERR_clear_error();
    SSL_CTX_free(ctx);
    return rc;
}

static em_err_t check_mqtt_password(const em_daemon_config_t *cfg, em_error_t *err)
{
    if (cfg->mqtt_password_env[0] == '\0' && cfg->mqtt_password_file[0] == '\0')
        return EM_OK;
    char pw[EM_MQTT_PASSWORD_MAX + 1];
    em_err_t rc = em__config_read_secret(
        cfg->mqtt_password_env[0] != '\0' ? "[mqtt] password_env" : "[mqtt] password_file",
        cfg->mqtt_password_env, cfg->mqtt_password_file, pw, sizeof(pw), err);
    OPENSSL_cleanse(pw, sizeof(pw));
    return rc;
}

em_err_t em_daemon_config_check(const em_daemon_config_t *cfg, em_error_t *err)
{
    if (cfg == NULL)
        return em_error_set(err, EM_ERR_INVALID_ARGUMENT, EM_SEV_MEDIUM, NULL,
                            "a configuration is required");
    em_err_t rc = EM_OK;

    /* [daemon] */
    struct stat st;
    if (stat(cfg->data_dir, &st) == 0) {
        if (!S_ISDIR(st.st_mode))
            return em_error_set(err, EM_ERR_CONFIGURATION, EM_SEV_HIGH, "data_dir",
                                "[daemon] data_dir: %s is not a directory", cfg->data_dir);
        if (access(cfg->data_dir, R_OK | W_OK | X_OK) != 0)
            return em_error_set(err, EM_ERR_CONFIGURATION, EM_SEV_HIGH, "data_dir",
                                "[daemon] data_dir: %s is not writable: %s", cfg->data_dir,
                                strerror(errno));
    } else if ((rc = parent_exists("[daemon] data_dir", cfg->data_dir, err)) != EM_OK) {
        return rc;
    }
    if (cfg->log_file[0] != '\0' &&
        (rc = parent_exists("[daemon] log_file", cfg->log_file, err)) != EM_OK)
        return rc;

    /* [mqtt] */
    if ((rc = check_ca("[mqtt] ca_file", cfg->mqtt_ca_file, err)) != EM_OK)
        return rc;
    if (cfg->mqtt_ca_path[0] != '\0' && (stat(cfg->mqtt_ca_path, &st) != 0 || !S_ISDIR(st.st_mode)))
        return em_error_set(err, EM_ERR_CONFIGURATION, EM_SEV_HIGH, "ca_path",
                            "[mqtt] ca_path: %s is not a directory", cfg->mqtt_ca_path);
    if (cfg->mqtt_cert_file[0] != '\0' &&
        (rc = check_tls_pair("[mqtt] cert_file/key_file", cfg->mqtt_cert_file, cfg->mqtt_key_file,
                             err)) != EM_OK)
        return rc;
    if ((rc = check_mqtt_password(cfg, err)) != EM_OK)
        return rc;
    /* The transport's own checks (URL, plain on loopback only, files,
     * password), without connecting. */
    em_mqtt_options_t mo;
    em_daemon_config_mqtt_options(cfg, &mo);
    em_error_t me;
    em_error_clear(&me);
    em_mqtt_t *m = em_mqtt_new(&mo, NULL, &me);
    if (m == NULL)
        return em_error_set(err, EM_ERR_CONFIGURATION, EM_SEV_HIGH, "mqtt", "[mqtt] %s",
                            me.message);
    em_mqtt_free(m);

    /* [store] */
    char url[EM_STORE_URL_MAX + 1];
    rc = em_daemon_config_store_url(cfg, url, sizeof(url), err);
    OPENSSL_cleanse(url, sizeof(url));
    if (rc != EM_OK)
        return rc;

    /* [api] */
    struct stat jst;
    if (stat(cfg->jwt_key_file, &jst) == 0) {
        if ((rc = em__config_secret_file_private("[api] jwt_key_file", cfg->jwt_key_file, err)) !=
                EM_OK ||
            (rc = readable("[api] jwt_key_file", cfg->jwt_key_file, err)) != EM_OK)
            return rc;
    } else if (strncmp(cfg->jwt_key_file, cfg->data_dir, strlen(cfg->data_dir)) != 0 &&
               (rc = parent_exists("[api] jwt_key_file", cfg->jwt_key_file, err)) != EM_OK) {
        return rc;
    }

    /* [keystore], [pki], [dynsec] */
    if ((rc = em__config_check_identity(cfg, err)) != EM_OK)
        return rc;

    /* [listener NAME] */
    for (size_t i = 0; i < cfg->nlisteners; i++) {
        const em_daemon_listener_t *l = &cfg->listeners[i];
        char what[EM_DAEMON_NAME_MAX + 32];
        snprintf(what, sizeof(what), "[listener %s]", l->name);
        if (l->cert_file[0] != '\0' &&
            (rc = check_tls_pair(what, l->cert_file, l->key_file, err)) != EM_OK)
            return rc;
        if ((rc = check_ca(what, l->client_ca_file, err)) != EM_OK)
            return rc;
    }
    return EM_OK;
}
