/*
 * emiot - daemon_identity.c: the daemon's device-identity objects: the
 * keystore secret that seals its keys, the HSM, the CA directory that signs
 * enrollment CSRs, and the dynamic-security client (docs/SECURITY.md).
 *
 * Each is made once at start from [keystore], [pki] and [dynsec] and handed
 * to the API by pointer; changing them needs a restart. The one exception is
 * the dynsec client: the broker may be down when the daemon starts, so a
 * timer retries the connection and hands the client to the API when it
 * succeeds.
 */
#include <errno.h>
#include <stdio.h>
#include <string.h>
#include <sys/stat.h>

#include <event2/event.h>
#include <openssl/crypto.h>

#include "daemon/config_internal.h"
#include "daemon/daemon_internal.h"
#include "emiot/dynsec.h"
#include "emiot/keystore.h"
#include "emiot/log.h"
#include "emiot/pki.h"

#define MODULE          "daemon"
#define DYNSEC_RETRY_S  30
#define CRL_REPUBLISH_S 86400 /* a CRL lives crl_days (30 by default): renew it daily */

static em_err_t open_secret(em_daemon_t *d, em_error_t *err)
{
    const em_daemon_config_t *cfg = &d->cfg;
    if (cfg->keystore_passphrase_env[0] != '\0')
        return em_keystore_secret_from_env(cfg->keystore_passphrase_env, &d->keystore, err);
    if (cfg->keystore_passphrase_file[0] != '\0')
        return em_keystore_secret_from_file(cfg->keystore_passphrase_file, &d->keystore, err);
    struct stat st;
    if (stat(cfg->keystore_key_file, &st) != 0) {
        if (errno != ENOENT)
            return em_error_set(err, EM_ERR_IO, EM_SEV_HIGH, "keystore.key_file",
                                "[keystore] key_file: %s: %s", cfg->keystore_key_file,
                                strerror(errno));
        /* First start: a new random key seals the daemon's keys. Keep it apart
         * from the data directory's backups (docs/SECURITY.md). */
        em_err_t rc = em_keystore_key_file_create(cfg->keystore_key_file, err);
        if (rc != EM_OK)
            return rc;
        em_log_field_t f[] = {EM_LOG_STR("file", cfg->keystore_key_file)};
        em_log(EM_LOG_WARN, MODULE, NULL,
               "created a keystore key file: back it up apart from the data directory", f, 1);
    }
    return em_keystore_secret_key_file(cfg->keystore_key_file, &d->keystore, err);
}

static em_err_t open_hsm(em_daemon_t *d, em_error_t *err)
{
    const em_daemon_config_t *cfg = &d->cfg;
    if (cfg->pkcs11_module[0] == '\0')
        return EM_OK;
    char pin[EM__CONFIG_SECRET_MAX + 1];
    em_err_t rc = em__config_read_secret("[keystore] pkcs11_pin", cfg->pkcs11_pin_env,
                                         cfg->pkcs11_pin_file, pin, sizeof(pin), err);
    if (rc == EM_OK)
        rc = em_pkcs11_open(cfg->pkcs11_module, pin, strlen(pin), &d->hsm, err);
    OPENSSL_cleanse(pin, sizeof(pin));
    return rc;
}

static em_err_t connect_dynsec(em_daemon_t *d, em_error_t *err)
{
    em_dynsec_options_t o;
    em_daemon_config_dynsec_options(&d->cfg, &o);
    return em_dynsec_new(&o, &d->dynsec, err);
}

static void on_dynsec_retry(evutil_socket_t fd, short what, void *arg)
{
    (void)fd;
    (void)what;
    em_daemon_t *d = arg;
    if (d->dynsec != NULL || d->api == NULL)
        return;
    em_error_t e;
    em_error_clear(&e);
    if (connect_dynsec(d, &e) != EM_OK) {
        em_log_field_t f[] = {EM_LOG_STR("error", e.message)};
        em_log(EM_LOG_WARN, MODULE, NULL, "dynsec: the broker's plugin is still unreachable", f, 1);
        return;
    }
    em_api_options_t ao;
    em_daemon_config_api_options(&d->cfg, &ao);
    em__daemon_identity_api_options(d, &ao);
    em_error_clear(&e);
    if (em_api_reload(d->api, &ao, &e) != EM_OK) {
        em__daemon_log_error("dynsec: connected, but the API did not take the client", &e);
        return;
    }
    em_log(EM_LOG_INFO, MODULE, NULL, "dynsec: connected to the broker's plugin", NULL, 0);
    event_del(d->ev_dynsec);
}

em_err_t em__daemon_identity_open(em_daemon_t *d, em_error_t *err)
{
    em_err_t rc = open_secret(d, err);
    if (rc == EM_OK)
        rc = open_hsm(d, err);
    if (rc == EM_OK && d->cfg.pki_dir[0] != '\0') {
        rc = em_pki_open(d->cfg.pki_dir, d->keystore, d->hsm, &d->pki, err);
        if (rc == EM_OK) {
            em_log_field_t f[] = {EM_LOG_STR("dir", d->cfg.pki_dir)};
            em_log(EM_LOG_INFO, MODULE, NULL, "CA directory opened: enrollment is on", f, 1);
        }
    }
    if (rc == EM_OK && d->cfg.dynsec_url[0] != '\0') {
        em_error_t e;
        em_error_clear(&e);
        /* The broker may be down: the API answers 503 until the retry
         * timer (em__daemon_identity_start) connects. */
        if (connect_dynsec(d, &e) != EM_OK) {
            if (e.code == EM_ERR_CONFIGURATION || e.code == EM_ERR_AUTHENTICATION ||
                e.code == EM_ERR_PERMISSION_DENIED) {
                if (err != NULL)
                    *err = e;
                return e.code;
            }
            em_log_field_t f[] = {EM_LOG_STR("error", e.message)};
            em_log(EM_LOG_WARN, MODULE, NULL, "dynsec: the broker's plugin is unreachable", f, 1);
        }
    }
    return rc;
}

/* A CRL past its nextUpdate makes every certificate of the CA fail
 * ("revocation status unknown"), in emiotd, OpenSSL and the broker alike:
 * while it holds the CA, emiotd publishes a fresh one at start and daily. */
static void on_crl_republish(evutil_socket_t fd, short what, void *arg)
{
    (void)fd;
    (void)what;
    em_daemon_t *d = arg;
    em_error_t e;
    em_error_clear(&e);
    if (em_pki_crl_publish(d->pki, 0, &e) != EM_OK) {
        em__daemon_log_error("pki: cannot publish a fresh CRL", &e);
        return;
    }
    em_log_field_t f[] = {EM_LOG_STR("file", em_pki_crl_file(d->pki))};
    em_log(EM_LOG_INFO, MODULE, NULL, "pki: published a fresh CRL", f, 1);
}

em_err_t em__daemon_identity_start(em_daemon_t *d, em_error_t *err)
{
    if (d->pki != NULL) {
        on_crl_republish(-1, 0, d);
        d->ev_crl = event_new(d->base, -1, EV_PERSIST, on_crl_republish, d);
        struct timeval day = {CRL_REPUBLISH_S, 0};
        if (d->ev_crl == NULL || event_add(d->ev_crl, &day) != 0)
            return em_error_set(err, EM_ERR_NOMEM, EM_SEV_HIGH, NULL, "cannot add the CRL timer");
    }
    if (d->cfg.dynsec_url[0] == '\0' || d->dynsec != NULL)
        return EM_OK;
    d->ev_dynsec = event_new(d->base, -1, EV_PERSIST, on_dynsec_retry, d);
    struct timeval tv = {DYNSEC_RETRY_S, 0};
    if (d->ev_dynsec == NULL || event_add(d->ev_dynsec, &tv) != 0)
        return em_error_set(err, EM_ERR_NOMEM, EM_SEV_HIGH, NULL, "cannot add the dynsec timer");
    return EM_OK;
}

void em__daemon_identity_api_options(const em_daemon_t *d, em_api_options_t *ao)
{
    ao->keystore = d->keystore;
    ao->pki = d->pki;
    ao->dynsec = d->dynsec;
}

void em__daemon_identity_close(em_daemon_t *d)
{
    if (d->ev_crl != NULL) {
        event_free(d->ev_crl);
        d->ev_crl = NULL;
    }
    if (d->ev_dynsec != NULL) {
        event_free(d->ev_dynsec);
        d->ev_dynsec = NULL;
    }
    em_dynsec_free(d->dynsec);
    d->dynsec = NULL;
    /* The CA key may live in the HSM: free the CA first. */
    em_pki_free(d->pki);
    d->pki = NULL;
    em_pkcs11_free(d->hsm);
    d->hsm = NULL;
    em_keystore_secret_free(d->keystore);
    d->keystore = NULL;
}
