/*
 * emiot - mqtt/secret.c: the broker password, from an environment variable or
 * a file, never from the command line or the options themselves.
 *
 * The password only ever lives in the caller's buffer (wiped by the caller
 * once libmosquitto has its copy) and in a scratch buffer here that is wiped
 * before returning. Error messages name the variable or the file, never the
 * value.
 */
#include <errno.h>
#include <fcntl.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <openssl/crypto.h>

#include "emiot/log.h"
#include "mqtt/mqtt_internal.h"

#define ENV_NAME_MAX 255

static em_err_t from_env(const char *name, char *buf, size_t size, size_t *len, em_error_t *err)
{
    size_t n = strnlen(name, ENV_NAME_MAX + 1);
    if (n == 0 || n > ENV_NAME_MAX || strchr(name, '=') != NULL)
        return em_error_set(err, EM_ERR_CONFIGURATION, EM_SEV_HIGH, "password_env", "%s",
                            "password_env is not a valid variable name");
    /* secure_getenv: a set-user-id program never takes the password from an
     * environment its invoker controls. */
    const char *v = secure_getenv(name);
    if (v == NULL)
        return em_error_set(err, EM_ERR_CONFIGURATION, EM_SEV_HIGH, "password_env",
                            "the environment variable %s (password_env) is not set", name);
    size_t vlen = strnlen(v, EM_MQTT_PASSWORD_MAX + 1);
    if (vlen == 0)
        return em_error_set(err, EM_ERR_CONFIGURATION, EM_SEV_HIGH, "password_env",
                            "the environment variable %s is empty", name);
    if (vlen > EM_MQTT_PASSWORD_MAX || vlen >= size)
        return em_error_set(err, EM_ERR_CONFIGURATION, EM_SEV_HIGH, "password_env",
                            "the password in %s is longer than %d bytes", name,
                            EM_MQTT_PASSWORD_MAX);
    memcpy(buf, v, vlen);
    buf[vlen] = '\0';
    *len = vlen;
    return EM_OK;
}

static em_err_t from_file(const char *path, char *buf, size_t size, size_t *len, em_error_t *err)
{
    int fd = open(path, O_RDONLY | O_CLOEXEC | O_NOCTTY);
    if (fd < 0)
        return em_error_set(err, EM_ERR_CONFIGURATION, EM_SEV_HIGH, "password_file",
                            "cannot open password_file %s: %s", path, strerror(errno));
    struct stat st;
    if (fstat(fd, &st) != 0 || !S_ISREG(st.st_mode)) {
        close(fd);
        return em_error_set(err, EM_ERR_CONFIGURATION, EM_SEV_HIGH, "password_file",
                            "password_file %s is not a regular file", path);
    }
    if ((st.st_mode & (S_IRWXG | S_IRWXO)) != 0 && em_log_enabled(EM_LOG_WARN)) {
        em_log_field_t f[] = {EM_LOG_STR("file", path)};
        em_log(EM_LOG_WARN, "mqtt", NULL, "the password file is readable by other users", f, 1);
    }

    /* Read the first line only, and no more than the longest password plus
     * its line end. */
    char tmp[EM_MQTT_PASSWORD_MAX + 2];
    size_t got = 0;
    em_err_t rc = EM_OK;
    while (got < sizeof(tmp)) {
        ssize_t r = read(fd, tmp + got, sizeof(tmp) - got);
        if (r < 0 && errno == EINTR)
            continue;
        if (r < 0) {
            rc = em_error_set(err, EM_ERR_CONFIGURATION, EM_SEV_HIGH, "password_file",
                              "cannot read password_file %s: %s", path, strerror(errno));
            break;
        }
        if (r == 0)
            break;
        if (memchr(tmp + got, '\n', (size_t)r) != NULL) {
            got += (size_t)r;
            break;
        }
        got += (size_t)r;
    }
    close(fd);
    if (rc == EM_OK) {
        const char *nl = memchr(tmp, '\n', got);
        size_t n = nl != NULL ? (size_t)(nl - tmp) : got;
        if (nl == NULL && got == sizeof(tmp))
            n = sizeof(tmp); /* no line end within reach: too long */
        if (n > 0 && tmp[n - 1] == '\r' && n <= got)
            n--;
        if (n == 0)
            rc = em_error_set(err, EM_ERR_CONFIGURATION, EM_SEV_HIGH, "password_file",
                              "password_file %s has an empty first line", path);
        else if (n > EM_MQTT_PASSWORD_MAX || n >= size || memchr(tmp, '\0', n) != NULL)
            rc = em_error_set(err, EM_ERR_CONFIGURATION, EM_SEV_HIGH, "password_file",
                              "the first line of password_file %s is longer than %d bytes or "
                              "holds a NUL byte",
                              path, EM_MQTT_PASSWORD_MAX);
        if (rc == EM_OK) {
            memcpy(buf, tmp, n);
            buf[n] = '\0';
            *len = n;
        }
    }
    OPENSSL_cleanse(tmp, sizeof(tmp));
    return rc;
}

em_err_t em__mqtt_password_read(const em_mqtt_options_t *o, char *buf, size_t size, size_t *len,
                                em_error_t *err)
{
    *len = 0;
    if (size == 0)
        return em_error_set(err, EM_ERR_INTERNAL, EM_SEV_HIGH, NULL, "no password buffer");
    buf[0] = '\0';
    if (o->password_env != NULL && o->password_file != NULL)
        return em_error_set(err, EM_ERR_CONFIGURATION, EM_SEV_HIGH, "password_env", "%s",
                            "set password_env or password_file, not both");
    em_err_t rc = EM_OK;
    if (o->password_env != NULL)
        rc = from_env(o->password_env, buf, size, len, err);
    else if (o->password_file != NULL)
        rc = from_file(o->password_file, buf, size, len, err);
    if (rc != EM_OK) {
        OPENSSL_cleanse(buf, size);
        *len = 0;
    }
    return rc;
}
