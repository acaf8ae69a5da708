/*
 * emiot - config_check_identity.c: what --check-config adds for [keystore],
 * [pki] and [dynsec] (daemon.h).
 *
 * The check goes as far as the daemon would at start without changing
 * anything: it reads the secrets, loads the HSM module and logs in, opens the
 * CA directory with them (a wrong passphrase shows here, not at 3 a.m. when a
 * device enrolls) and loads the trust files. A missing keystore key file is
 * not an error: the first start creates it.
 */
#include <errno.h>
#include <string.h>
#include <sys/stat.h>

#include <openssl/crypto.h>

#include "daemon/config_internal.h"
#include "emiot/keystore.h"
#include "emiot/pki.h"

static em_err_t prefix(em_error_t *err, em_err_t rc, const char *what)
{
    if (rc != EM_OK && err != NULL) {
        /* "what: message", cut to the message's size. */
        char msg[EM_ERROR_MESSAGE_MAX + 1];
        size_t n = strlen(what);
        if (n > EM_ERROR_MESSAGE_MAX - 2)
            n = EM_ERROR_MESSAGE_MAX - 2;
        memcpy(msg, what, n);
        msg[n++] = ':';
        msg[n++] = ' ';
        size_t m = strnlen(err->message, sizeof(err->message));
        if (m > EM_ERROR_MESSAGE_MAX - n)
            m = EM_ERROR_MESSAGE_MAX - n;
        memcpy(msg + n, err->message, m);
        msg[n + m] = '\0';
        memcpy(err->message, msg, n + m + 1);
    }
    return rc;
}

static em_err_t check_secret(const em_daemon_config_t *cfg, em_keystore_secret_t **out,
                             em_error_t *err)
{
    *out = NULL;
    if (cfg->keystore_passphrase_env[0] != '\0')
        return prefix(err, em_keystore_secret_from_env(cfg->keystore_passphrase_env, out, err),
                      "[keystore] passphrase_env");
    if (cfg->keystore_passphrase_file[0] != '\0')
        return prefix(err, em_keystore_secret_from_file(cfg->keystore_passphrase_file, out, err),
                      "[keystore] passphrase_file");
    struct stat st;
    if (stat(cfg->keystore_key_file, &st) != 0) {
        if (errno == ENOENT)
            return EM_OK;
        return em_error_set(err, EM_ERR_CONFIGURATION, EM_SEV_HIGH, "keystore.key_file",
                            "[keystore] key_file: %s: %s", cfg->keystore_key_file, strerror(errno));
    }
    return prefix(err, em_keystore_secret_key_file(cfg->keystore_key_file, out, err),
                  "[keystore] key_file");
}

em_err_t em__config_check_identity(const em_daemon_config_t *cfg, em_error_t *err)
{
    em_keystore_secret_t *secret = NULL;
    em_pkcs11_t *hsm = NULL;
    em_pki_t *pki = NULL;
    em_verifier_t *v = NULL;
    em_err_t rc = check_secret(cfg, &secret, err);
    if (rc == EM_OK && cfg->pkcs11_module[0] != '\0') {
        char pin[EM__CONFIG_SECRET_MAX + 1];
        rc = em__config_read_secret("[keystore] pkcs11_pin", cfg->pkcs11_pin_env,
                                    cfg->pkcs11_pin_file, pin, sizeof(pin), err);
        if (rc == EM_OK)
            rc = prefix(err, em_pkcs11_open(cfg->pkcs11_module, pin, strlen(pin), &hsm, err),
                        "[keystore] pkcs11_module");
        OPENSSL_cleanse(pin, sizeof(pin));
    }
    if (rc == EM_OK && cfg->pki_dir[0] != '\0') {
        if (secret == NULL && hsm == NULL)
            rc = em_error_set(err, EM_ERR_CONFIGURATION, EM_SEV_HIGH, "pki.dir",
                              "[pki] dir: the CA key needs a keystore passphrase or key file "
                              "(the one it was sealed with)");
        else
            rc = prefix(err, em_pki_open(cfg->pki_dir, secret, hsm, &pki, err), "[pki] dir");
    }
    if (rc == EM_OK && cfg->pki_ca_file[0] != '\0')
        rc = prefix(err,
                    em_verifier_new(cfg->pki_ca_file,
                                    cfg->pki_crl_file[0] != '\0' ? cfg->pki_crl_file : NULL, &v,
                                    err),
                    "[pki] ca_file/crl_file");
    if (rc == EM_OK && cfg->dynsec_url[0] != '\0') {
        char pw[EM__CONFIG_SECRET_MAX + 1];
        rc = em__config_read_secret("[dynsec] password", cfg->dynsec_password_env,
                                    cfg->dynsec_password_file, pw, sizeof(pw), err);
        OPENSSL_cleanse(pw, sizeof(pw));
    }
    em_verifier_free(v);
    em_pki_free(pki);
    em_pkcs11_free(hsm);
    em_keystore_secret_free(secret);
    return rc;
}
