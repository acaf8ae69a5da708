/*
 * emiotctl - secret.c: the secrets of the local commands (pki, broker,
 * keystore) and the file helpers they share; and the request for a secret
 * emiotd shows once (an enrollment token, an MQTT password).
 *
 * A secret typed on the command line can be read by every user of the
 * machine (ps, /proc/PID/cmdline) and lands in shell histories, so none is
 * accepted there: passphrases and PINs come from the environment (wiped from
 * ours once read) or from files that only their owner can read.
 */
#include <errno.h>
#include <fcntl.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <openssl/crypto.h>

#include "ctl.h"

bool ctl_secret_opt(ctl_secret_opts_t *s, int id, const char *arg)
{
    switch (id) {
    case CTL_SOPT_DIR:
        s->dir = arg;
        return true;
    case CTL_SOPT_PASSPHRASE_FILE:
        s->passphrase_file = arg;
        return true;
    case CTL_SOPT_KEY_FILE:
        s->key_file = arg;
        return true;
    case CTL_SOPT_PKCS11_MODULE:
        s->pkcs11_module = arg;
        return true;
    case CTL_SOPT_PIN_FILE:
        s->pin_file = arg;
        return true;
    default:
        return false;
    }
}

const char *ctl_secret_dir(const ctl_secret_opts_t *s)
{
    const char *d = s->dir;
    if (d == NULL || d[0] == '\0')
        d = getenv(CTL_ENV_PKI_DIR);
    if (d == NULL || d[0] == '\0') {
        ctl_err("configuration", "which CA directory? give --dir D or set " CTL_ENV_PKI_DIR);
        return NULL;
    }
    if (strlen(d) >= CTL_PATH_MAX) {
        ctl_err("configuration", "the CA directory's path is too long");
        return NULL;
    }
    return d;
}

int ctl_em_fail(const char *what, const em_error_t *e)
{
    const char *msg = e->message[0] != '\0' ? e->message : em_strerror(e->code);
    if (e->field[0] != '\0' && strstr(msg, e->field) == NULL)
        ctl_err(em_err_name(e->code), "%s: %s: %s", what, e->field, msg);
    else
        ctl_err(em_err_name(e->code), "%s: %s", what, msg);
    switch (e->code) {
    case EM_ERR_VALIDATION:
    case EM_ERR_MESSAGE_FORMAT:
    case EM_ERR_INVALID_ARGUMENT:
    case EM_ERR_LIMIT:
    case EM_ERR_EXISTS:
    case EM_ERR_STATE:
    case EM_ERR_CERTIFICATE:
        return CTL_INVALID;
    case EM_ERR_NOT_FOUND:
    case EM_ERR_DEVICE_NOT_FOUND:
        return CTL_NOTFOUND;
    case EM_ERR_CONFIGURATION:
        return CTL_USAGE;
    case EM_ERR_AUTHENTICATION:
        return CTL_AUTH;
    default:
        return CTL_ERROR;
    }
}

/* Applies EMIOT_KEYSTORE_SCRYPT_COST to a passphrase secret. */
static int apply_cost(em_keystore_secret_t *s)
{
    const char *v = getenv(CTL_ENV_SCRYPT_COST);
    if (v == NULL || v[0] == '\0')
        return 0;
    long n;
    int rc =
        ctl_parse_long(CTL_ENV_SCRYPT_COST, v, EM_KEYSTORE_LOG2N_MIN, EM_KEYSTORE_LOG2N_MAX, &n);
    if (rc != 0)
        return rc;
    if (em_keystore_secret_set_cost(s, (unsigned)n) != EM_OK) {
        ctl_err("configuration", CTL_ENV_SCRYPT_COST ": not accepted");
        return CTL_USAGE;
    }
    return 0;
}

int ctl_secret_keystore(const char *key_file, const char *pass_file, const char *env_var,
                        em_keystore_secret_t **out)
{
    em_error_t e;
    em_error_clear(&e);
    *out = NULL;
    if (key_file != NULL && pass_file != NULL) {
        ctl_err("configuration", "give a passphrase file or a key file, not both");
        return CTL_USAGE;
    }
    if (key_file != NULL) {
        if (em_keystore_secret_key_file(key_file, out, &e) != EM_OK)
            return ctl_em_fail("keystore key file", &e);
        return 0;
    }
    if (pass_file != NULL) {
        if (em_keystore_secret_from_file(pass_file, out, &e) != EM_OK)
            return ctl_em_fail("passphrase file", &e);
    } else {
        char *v = getenv(env_var);
        if (v == NULL || v[0] == '\0') {
            ctl_err("configuration",
                    "no keystore secret: set %s, or give --passphrase-file F "
                    "or --keystore-key-file F",
                    env_var);
            return CTL_USAGE;
        }
        size_t len = strlen(v);
        em_err_t rc = em_keystore_secret_passphrase(v, len, out, &e);
        /* The library holds its own copy: ours, in the environment, would
         * otherwise stay readable in memory and be inherited by children. */
        OPENSSL_cleanse(v, len);
        unsetenv(env_var);
        if (rc != EM_OK)
            return ctl_em_fail(env_var, &e);
    }
    int rc = apply_cost(*out);
    if (rc != 0) {
        em_keystore_secret_free(*out);
        *out = NULL;
    }
    return rc;
}

int ctl_secret_pkcs11(const ctl_secret_opts_t *s, em_pkcs11_t **out)
{
    *out = NULL;
    if (s->pkcs11_module == NULL) {
        ctl_err("configuration", "the key is in an HSM: give --pkcs11-module PATH");
        return CTL_USAGE;
    }
    char pin[CTL_PIN_MAX + 1];
    size_t len = 0;
    if (s->pin_file != NULL) {
        char *data = NULL;
        size_t n = 0;
        int rc = ctl_read_file(s->pin_file, "PIN file", CTL_PIN_MAX, true, &data, &n);
        if (rc != 0)
            return rc;
        len = strcspn(data, "\r\n");
        memcpy(pin, data, len);
        ctl_free_file(data, n);
    } else {
        char *v = getenv(CTL_ENV_PIN);
        if (v == NULL || v[0] == '\0') {
            ctl_err("configuration", "no PIN: set " CTL_ENV_PIN " or give --pin-file F");
            return CTL_USAGE;
        }
        size_t n = strlen(v);
        if (n > CTL_PIN_MAX) {
            ctl_err("configuration", CTL_ENV_PIN ": longer than %d bytes", CTL_PIN_MAX);
            return CTL_USAGE;
        }
        memcpy(pin, v, n);
        len = n;
        OPENSSL_cleanse(v, n);
        unsetenv(CTL_ENV_PIN);
    }
    pin[len] = '\0';
    if (len == 0) {
        ctl_err("configuration", "the PIN is empty");
        return CTL_USAGE;
    }
    em_error_t e;
    em_error_clear(&e);
    em_err_t rc = em_pkcs11_open(s->pkcs11_module, pin, len, out, &e);
    OPENSSL_cleanse(pin, sizeof pin);
    return rc == EM_OK ? 0 : ctl_em_fail("PKCS#11 module", &e);
}

void ctl_free_file(char *data, size_t len)
{
    if (data == NULL)
        return;
    OPENSSL_cleanse(data, len + 1);
    free(data);
}

int ctl_read_file(const char *path, const char *what, size_t max, bool private_file, char **out,
                  size_t *len)
{
    *out = NULL;
    *len = 0;
    int fd;
    if (private_file) {
        fd = ctl_open_private(path, what);
        if (fd < 0)
            return CTL_USAGE;
    } else {
        fd = open(path, O_RDONLY | O_CLOEXEC);
        if (fd < 0) {
            ctl_err(errno == ENOENT ? "not_found" : "io", "cannot open %s %s: %s", what, path,
                    strerror(errno));
            return errno == ENOENT ? CTL_NOTFOUND : CTL_ERROR;
        }
        struct stat st;
        if (fstat(fd, &st) != 0 || !S_ISREG(st.st_mode)) {
            ctl_err("io", "%s %s is not a regular file", what, path);
            close(fd);
            return CTL_INVALID;
        }
    }
    char *buf = malloc(max + 1);
    if (buf == NULL) {
        close(fd);
        ctl_err("out_of_memory", "out of memory");
        return CTL_ERROR;
    }
    size_t n = 0;
    for (;;) {
        ssize_t r = read(fd, buf + n, max + 1 - n);
        if (r < 0 && errno == EINTR)
            continue;
        if (r < 0) {
            ctl_err("io", "cannot read %s %s: %s", what, path, strerror(errno));
            close(fd);
            ctl_free_file(buf, max);
            return CTL_ERROR;
        }
        if (r == 0)
            break;
        n += (size_t)r;
        if (n > max) {
            ctl_err("limit_reached", "%s %s is larger than %zu bytes", what, path, max);
            close(fd);
            ctl_free_file(buf, max);
            return CTL_INVALID;
        }
    }
    close(fd);
    buf[n] = '\0';
    *out = buf;
    *len = n;
    return 0;
}

int ctl_create_new_file(const char *path, mode_t mode)
{
    int fd = open(path, O_WRONLY | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC, mode);
    if (fd < 0)
        ctl_err(errno == EEXIST ? "already_exists" : "io", "cannot create %s: %s%s", path,
                strerror(errno), errno == EEXIST ? " (files are never overwritten)" : "");
    return fd;
}

int ctl_write_fd(int fd, const char *path, const void *data, size_t len)
{
    const char *p = data;
    size_t left = len;
    while (left > 0) {
        ssize_t w = write(fd, p, left);
        if (w < 0 && errno == EINTR)
            continue;
        if (w <= 0)
            break;
        p += w;
        left -= (size_t)w;
    }
    if (left > 0 || fsync(fd) != 0) {
        ctl_err("io", "cannot write %s: %s", path, strerror(errno));
        return CTL_ERROR;
    }
    return 0;
}

int ctl_write_new_file(const char *path, mode_t mode, const void *data, size_t len)
{
    int fd = ctl_create_new_file(path, mode);
    if (fd < 0)
        return errno == EEXIST ? CTL_INVALID : CTL_ERROR;
    if (ctl_write_fd(fd, path, data, len) != 0) {
        close(fd);
        unlink(path);
        return CTL_ERROR;
    }
    if (close(fd) != 0) {
        ctl_err("io", "cannot write %s: %s", path, strerror(errno));
        unlink(path);
        return CTL_ERROR;
    }
    return 0;
}

/* ---- secrets emiotd shows once ------------------------------------------------ */

int ctl_post_secret(ctl_t *c, const char *path, const cJSON *body, const char *field,
                    const char *out, ctl_show_secret_fn show)
{
    int fd = -1;
    /* The file is made before the request: a secret the server has made
     * must have somewhere to go. */
    if (out != NULL && (fd = ctl_create_private(out)) < 0)
        return CTL_ERROR;
    ctl_resp_t r;
    int rc = ctl_request(c, "POST", path, body, true, true, &r);
    if (rc == 0)
        rc = show(c, &r, fd, out);
    if (r.data != NULL) {
        cJSON *v = cJSON_GetObjectItemCaseSensitive((cJSON *)r.data, field);
        if (cJSON_IsString(v) && v->valuestring != NULL)
            OPENSSL_cleanse(v->valuestring, strlen(v->valuestring));
    }
    ctl_resp_cleanup(&r);
    if (fd >= 0) {
        if (close(fd) != 0 && rc == 0) {
            ctl_err("io", "cannot write %s", out);
            rc = CTL_ERROR;
        }
        if (rc != 0)
            unlink(out);
    }
    return rc;
}
