/*
 * emiot - config_secret.c: the secrets of emiotd's configuration (daemon.h).
 *
 * A secret never sits in the configuration file itself: passwords come from
 * the environment or from a file only its owner may read, and the store URL
 * written in the file may not hold one. What is read is wiped after use, and
 * a placeholder left from an example ("changeme", "<password>") is refused
 * rather than sent to a broker or a database.
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/stat.h>

#include <openssl/crypto.h>

#include "daemon/config_internal.h"
#include "daemon/daemon_internal.h"
#include "emiot/daemon.h"

/* The most a secret file may hold (only its first line is used). */
#define SECRET_FILE_MAX ((size_t)64 * 1024)

/* ---- passwords in a store URL ------------------------------------------ */

bool em__daemon_url_has_password(const char *url, size_t len)
{
    const char *pw;
    size_t pwlen;
    return em__daemon_url_password(url, len, &pw, &pwlen, 0) == 0;
}

/*
 * Finds the nth password in a store URL: the userinfo password of
 * "scheme://user:password@host" or a "password=" query parameter. Returns 0
 * and the span, or -1 when there is no nth one.
 */
int em__daemon_url_password(const char *url, size_t len, const char **pw, size_t *pwlen, int nth)
{
    int seen = 0;
    const char *sep = memmem(url, len, "://", 3);
    if (sep != NULL) {
        const char *auth = sep + 3;
        const char *end = url + len;
        /* The authority ends at the first '/', '?' or '#'. */
        const char *a_end = auth;
        while (a_end < end && *a_end != '/' && *a_end != '?' && *a_end != '#')
            a_end++;
        /* userinfo ends at the last '@' of the authority. */
        const char *at = NULL;
        for (const char *c = auth; c < a_end; c++) {
            if (*c == '@')
                at = c;
        }
        if (at != NULL) {
            const char *colon = memchr(auth, ':', (size_t)(at - auth));
            if (colon != NULL) {
                if (seen++ == nth) {
                    *pw = colon + 1;
                    *pwlen = (size_t)(at - colon - 1);
                    return 0;
                }
            }
        }
    }
    /* password=VALUE anywhere after '?' or '&' (or at the start of a
     * keyword/value string), up to '&' or white space. */
    for (size_t i = 0; i + 9 <= len; i++) {
        if (strncasecmp(url + i, "password=", 9) != 0)
            continue;
        if (i > 0 && url[i - 1] != '?' && url[i - 1] != '&' && !em__config_is_space(url[i - 1]))
            continue;
        size_t j = i + 9;
        while (j < len && url[j] != '&' && url[j] != ' ' && url[j] != '\t')
            j++;
        if (seen++ == nth) {
            *pw = url + i + 9;
            *pwlen = j - i - 9;
            return 0;
        }
    }
    return -1;
}

/* ---- placeholders and secret files ------------------------------------- */

bool em_daemon_secret_is_placeholder(const char *secret, size_t len)
{
    if (secret == NULL)
        return true;
    while (len > 0 && (em__config_is_space(secret[0]) || secret[0] == '\n')) {
        secret++;
        len--;
    }
    while (len > 0 && (em__config_is_space(secret[len - 1]) || secret[len - 1] == '\n'))
        len--;
    if (len == 0)
        return true;
    static const char *const words[] = {
        "changeme",      "change_me",  "change-me", "changeit",   "change_it",     "password",
        "passwd",        "pass",       "secret",    "admin",      "example",       "default",
        "test",          "testing",    "guest",     "root",       "toor",          "emiot",
        "mosquitto",     "postgres",   "123456",    "12345678",   "letmein",       "qwerty",
        "none",          "null",       "todo",      "fixme",      "your_password", "yourpassword",
        "your-password", "mypassword", "secret123", "password123"};
    for (size_t i = 0; i < sizeof(words) / sizeof(words[0]); i++) {
        if (em__config_word_is(secret, len, words[i]))
            return true;
    }
    bool all_x = len >= 3;
    for (size_t i = 0; i < len && all_x; i++)
        all_x = secret[i] == 'x' || secret[i] == 'X';
    if (all_x)
        return true;
    if (secret[0] == '<' && secret[len - 1] == '>')
        return true;
    if (len >= 3 && secret[0] == '$' && secret[1] == '{' && secret[len - 1] == '}')
        return true;
    return false;
}

/* Refuses a secret file that other users may read (or write). */
em_err_t em__config_secret_file_private(const char *what, const char *path, em_error_t *err)
{
    struct stat st;
    if (stat(path, &st) != 0)
        return em_error_set(err, EM_ERR_CONFIGURATION, EM_SEV_HIGH, what, "%s: cannot read %s: %s",
                            what, path, strerror(errno));
    if ((st.st_mode & 0007) != 0)
        return em_error_set(err, EM_ERR_CONFIGURATION, EM_SEV_HIGH, what,
                            "%s: %s is accessible to other users (chmod o-rwx)", what, path);
    return EM_OK;
}

/*
 * Reads the first line of a secret file into buf (without the line end).
 * The file's other content is wiped from memory.
 */
em_err_t em__config_read_secret_file(const char *what, const char *path, char *buf, size_t size,
                                     em_error_t *err)
{
    em_err_t rc = em__config_secret_file_private(what, path, err);
    if (rc != EM_OK)
        return rc;
    char *text = NULL;
    size_t len = 0;
    if (em__daemon_read_file(path, SECRET_FILE_MAX, &text, &len) != 0)
        return em_error_set(err, EM_ERR_CONFIGURATION, EM_SEV_HIGH, what, "%s: cannot read %s: %s",
                            what, path, strerror(errno));
    size_t line = strcspn(text, "\r\n");
    if (line >= size)
        rc =
            em_error_set(err, EM_ERR_CONFIGURATION, EM_SEV_HIGH, what,
                         "%s: the first line of %s is longer than %zu bytes", what, path, size - 1);
    else {
        memcpy(buf, text, line);
        buf[line] = '\0';
    }
    OPENSSL_cleanse(text, len);
    free(text);
    return rc;
}

em_err_t em__config_read_secret(const char *what, const char *env, const char *file, char *buf,
                                size_t size, em_error_t *err)
{
    em_err_t rc;
    buf[0] = '\0';
    if (env != NULL && env[0] != '\0') {
        const char *v = getenv(env);
        if (v == NULL)
            return em_error_set(err, EM_ERR_CONFIGURATION, EM_SEV_HIGH, what,
                                "%s: the environment variable %s is not set", what, env);
        size_t n = strlen(v);
        if (n >= size)
            return em_error_set(err, EM_ERR_CONFIGURATION, EM_SEV_HIGH, what,
                                "%s: the value of %s is longer than %zu bytes", what, env,
                                size - 1);
        memcpy(buf, v, n + 1);
    } else if (file != NULL && file[0] != '\0') {
        if ((rc = em__config_read_secret_file(what, file, buf, size, err)) != EM_OK)
            return rc;
    } else {
        return em_error_set(err, EM_ERR_CONFIGURATION, EM_SEV_HIGH, what,
                            "%s: no environment variable or file is configured", what);
    }
    if (em_daemon_secret_is_placeholder(buf, strlen(buf))) {
        OPENSSL_cleanse(buf, size);
        return em_error_set(err, EM_ERR_CONFIGURATION, EM_SEV_HIGH, what,
                            "%s: the secret in %s is empty or a placeholder: set a real one", what,
                            env != NULL && env[0] != '\0' ? env : file);
    }
    return EM_OK;
}

/* Refuses a URL whose password (any of them) is a placeholder. */
static em_err_t check_url_passwords(const char *url, em_error_t *err)
{
    size_t len = strlen(url);
    const char *pw;
    size_t pwlen;
    for (int i = 0; em__daemon_url_password(url, len, &pw, &pwlen, i) == 0; i++) {
        if (em_daemon_secret_is_placeholder(pw, pwlen))
            return em_error_set(err, EM_ERR_CONFIGURATION, EM_SEV_HIGH, "store.url",
                                "the store URL's password is empty or a placeholder: set a "
                                "real one");
    }
    return EM_OK;
}

em_err_t em_daemon_config_store_url(const em_daemon_config_t *cfg, char *buf, size_t size,
                                    em_error_t *err)
{
    if (cfg == NULL || buf == NULL || size == 0)
        return em_error_set(err, EM_ERR_INVALID_ARGUMENT, EM_SEV_MEDIUM, NULL,
                            "configuration and buffer are required");
    buf[0] = '\0';
    em_err_t rc = EM_OK;
    if (cfg->store_url_env[0] != '\0') {
        const char *v = getenv(cfg->store_url_env);
        if (v == NULL || v[0] == '\0')
            return em_error_set(err, EM_ERR_CONFIGURATION, EM_SEV_HIGH, "store.url_env",
                                "[store] url_env: the environment variable %s is not set",
                                cfg->store_url_env);
        if (strlen(v) >= size || strlen(v) > EM_STORE_URL_MAX)
            return em_error_set(err, EM_ERR_CONFIGURATION, EM_SEV_HIGH, "store.url_env",
                                "[store] url_env: the URL in %s is too long", cfg->store_url_env);
        snprintf(buf, size, "%s", v);
    } else if (cfg->store_url_file[0] != '\0') {
        char tmp[EM_STORE_URL_MAX + 1];
        rc = em__config_read_secret_file("[store] url_file", cfg->store_url_file, tmp, sizeof(tmp),
                                         err);
        if (rc == EM_OK) {
            if (strlen(tmp) >= size)
                rc = em_error_set(err, EM_ERR_BUFFER_TOO_SMALL, EM_SEV_MEDIUM, NULL,
                                  "buffer too small for the store URL");
            else
                snprintf(buf, size, "%s", tmp);
        }
        OPENSSL_cleanse(tmp, sizeof(tmp));
        if (rc == EM_OK && buf[0] == '\0')
            rc = em_error_set(err, EM_ERR_CONFIGURATION, EM_SEV_HIGH, "store.url_file",
                              "[store] url_file: %s is empty", cfg->store_url_file);
    } else if (cfg->store_url[0] != '\0') {
        if (strlen(cfg->store_url) >= size)
            return em_error_set(err, EM_ERR_BUFFER_TOO_SMALL, EM_SEV_MEDIUM, NULL,
                                "buffer too small for the store URL");
        snprintf(buf, size, "%s", cfg->store_url);
    } else {
        int n = snprintf(buf, size, "sqlite:%s/emiot.db", cfg->data_dir);
        if (n < 0 || (size_t)n >= size)
            return em_error_set(err, EM_ERR_BUFFER_TOO_SMALL, EM_SEV_MEDIUM, NULL,
                                "buffer too small for the store URL");
    }
    if (rc == EM_OK)
        rc = check_url_passwords(buf, err);
    if (rc != EM_OK)
        OPENSSL_cleanse(buf, size);
    return rc;
}
