/*
 * emiotctl - conf.c: where the connection settings come from.
 *
 * Each setting is taken from the first of: a flag, the environment, the
 * config file. The API key never comes from the command line, where every
 * user of the machine could read it in ps: it comes from EMIOT_API_KEY or
 * from a file. Files holding secrets (the config file, the API key file, the
 * client certificate's key) are refused when group or other may read them,
 * as ssh refuses such a private key.
 */
#include <ctype.h>
#include <curl/curl.h>
#include <errno.h>
#include <fcntl.h>
#include <openssl/crypto.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "ctl.h"

typedef struct conf {
    char *url, *ca, *api_key_file, *cert, *key;
} conf_t;

static void conf_free(conf_t *f)
{
    free(f->url);
    free(f->ca);
    free(f->api_key_file);
    free(f->cert);
    free(f->key);
    memset(f, 0, sizeof *f);
}

int ctl_open_private(const char *path, const char *what)
{
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0) {
        ctl_err("configuration", "cannot open %s %s: %s", what, path, strerror(errno));
        return -1;
    }
    struct stat st;
    if (fstat(fd, &st) != 0 || !S_ISREG(st.st_mode)) {
        ctl_err("configuration", "%s %s is not a regular file", what, path);
        close(fd);
        return -1;
    }
    if (st.st_uid != getuid() && st.st_uid != 0) {
        ctl_err("configuration", "%s %s belongs to another user", what, path);
        close(fd);
        return -1;
    }
    if ((st.st_mode & (S_IRWXG | S_IRWXO)) != 0) {
        ctl_err("configuration",
                "%s %s is accessible by group or others (mode %03o); run chmod 600 %s", what, path,
                (unsigned)(st.st_mode & 0777), path);
        close(fd);
        return -1;
    }
    return fd;
}

/* Reads at most max bytes of fd into a new NUL-terminated buffer. Returns
 * NULL (with a message) on error or when the file is larger. */
static char *read_all(int fd, const char *path, size_t max, size_t *out_len)
{
    char *buf = malloc(max + 1);
    if (buf == NULL) {
        ctl_err("out_of_memory", "out of memory");
        return NULL;
    }
    size_t len = 0;
    for (;;) {
        ssize_t n = read(fd, buf + len, max + 1 - len);
        if (n < 0 && errno == EINTR)
            continue;
        if (n < 0) {
            ctl_err("io", "cannot read %s: %s", path, strerror(errno));
            OPENSSL_cleanse(buf, len);
            free(buf);
            return NULL;
        }
        if (n == 0)
            break;
        len += (size_t)n;
        if (len > max) {
            ctl_err("configuration", "%s is larger than %zu bytes", path, max);
            OPENSSL_cleanse(buf, len);
            free(buf);
            return NULL;
        }
    }
    buf[len] = '\0';
    *out_len = len;
    return buf;
}

static char *trim(char *s)
{
    while (*s == ' ' || *s == '\t')
        s++;
    size_t n = strlen(s);
    while (n > 0 && isspace((unsigned char)s[n - 1]))
        s[--n] = '\0';
    return s;
}

/* A path from the config file, relative to the file's own directory. */
static char *conf_path(const char *conf_file, const char *value)
{
    if (value[0] == '/')
        return strdup(value);
    const char *slash = strrchr(conf_file, '/');
    size_t dir_len = slash != NULL ? (size_t)(slash - conf_file) : 1;
    const char *dir = slash != NULL ? conf_file : ".";
    size_t n = dir_len + 1 + strlen(value) + 1;
    if (n > CTL_PATH_MAX)
        return NULL;
    char *p = malloc(n);
    if (p != NULL)
        snprintf(p, n, "%.*s/%s", (int)dir_len, dir, value);
    return p;
}

/* Parses `key = value` lines; # starts a comment line. */
static int conf_parse(const char *path, char *text, conf_t *f)
{
    int line_no = 0;
    for (char *line = text, *next; line != NULL; line = next) {
        next = strchr(line, '\n');
        if (next != NULL)
            *next++ = '\0';
        line_no++;
        char *s = trim(line);
        if (s[0] == '\0' || s[0] == '#')
            continue;
        char *eq = strchr(s, '=');
        if (eq == NULL) {
            ctl_err("configuration", "%s: line %d: expected key = value", path, line_no);
            return CTL_USAGE;
        }
        *eq = '\0';
        char *key = trim(s);
        char *value = trim(eq + 1);
        size_t vlen = strlen(value);
        if (vlen >= 2 && (value[0] == '"' || value[0] == '\'') && value[vlen - 1] == value[0]) {
            value[vlen - 1] = '\0';
            value++;
        }
        if (value[0] == '\0') {
            ctl_err("configuration", "%s: line %d: %s has no value", path, line_no, key);
            return CTL_USAGE;
        }
        char **slot;
        bool is_path = true;
        if (strcmp(key, "url") == 0) {
            slot = &f->url;
            is_path = false;
        } else if (strcmp(key, "ca") == 0) {
            slot = &f->ca;
        } else if (strcmp(key, "api_key_file") == 0) {
            slot = &f->api_key_file;
        } else if (strcmp(key, "cert") == 0) {
            slot = &f->cert;
        } else if (strcmp(key, "key") == 0) {
            slot = &f->key;
        } else {
            ctl_err("configuration",
                    "%s: line %d: unknown key \"%s\" (url, ca, api_key_file, cert, key)", path,
                    line_no, key);
            return CTL_USAGE;
        }
        free(*slot);
        *slot = is_path ? conf_path(path, value) : strdup(value);
        if (*slot == NULL) {
            ctl_err("configuration", "%s: line %d: value too long", path, line_no);
            return CTL_USAGE;
        }
    }
    return 0;
}

static int conf_load(const ctl_t *c, conf_t *f)
{
    char def[CTL_PATH_MAX];
    const char *path = c->flag_config;
    if (path == NULL) {
        const char *xdg = getenv("XDG_CONFIG_HOME");
        const char *home = getenv("HOME");
        int n = -1;
        if (xdg != NULL && xdg[0] == '/')
            n = snprintf(def, sizeof def, "%s/emiot/emiotctl.conf", xdg);
        else if (home != NULL && home[0] == '/')
            n = snprintf(def, sizeof def, "%s/.config/emiot/emiotctl.conf", home);
        if (n < 0 || (size_t)n >= sizeof def)
            return 0;
        /* The default file is optional. */
        if (access(def, F_OK) != 0 && errno == ENOENT)
            return 0;
        path = def;
    }
    int fd = ctl_open_private(path, "config file");
    if (fd < 0)
        return CTL_USAGE;
    size_t len = 0;
    char *text = read_all(fd, path, CTL_CONF_MAX, &len);
    close(fd);
    if (text == NULL)
        return CTL_USAGE;
    int rc = conf_parse(path, text, f);
    OPENSSL_cleanse(text, len);
    free(text);
    return rc;
}

/* flag, else environment variable, else config value; a copy or NULL. */
static int pick(const char *flag, const char *env, const char *conf, char **out)
{
    const char *e = env != NULL ? getenv(env) : NULL;
    const char *v = flag != NULL ? flag : (e != NULL && e[0] != '\0') ? e : conf;
    *out = NULL;
    if (v == NULL)
        return 0;
    *out = strdup(v);
    if (*out == NULL) {
        ctl_err("out_of_memory", "out of memory");
        return CTL_ERROR;
    }
    return 0;
}

/* API keys are iot_ + hex; tokens are base64url segments joined by dots. */
static int check_secret(const char *s, size_t len, const char *from)
{
    if (len == 0) {
        ctl_err("configuration", "%s is empty", from);
        return CTL_USAGE;
    }
    for (size_t i = 0; i < len; i++) {
        unsigned char ch = (unsigned char)s[i];
        if (!(isalnum(ch) || ch == '_' || ch == '-' || ch == '.')) {
            ctl_err("configuration",
                    "%s does not hold an API key (iot_...) or a token on its first line", from);
            return CTL_USAGE;
        }
    }
    return 0;
}

static int load_secret_file(ctl_t *c, const char *path)
{
    int fd = ctl_open_private(path, "API key file");
    if (fd < 0)
        return CTL_USAGE;
    size_t len = 0;
    char *text = read_all(fd, path, CTL_SECRET_MAX, &len);
    close(fd);
    if (text == NULL)
        return CTL_USAGE;
    /* The key is the first line, blanks around it ignored. */
    size_t start = 0;
    while (start < len && isspace((unsigned char)text[start]))
        start++;
    size_t end = start;
    while (end < len && !isspace((unsigned char)text[end]))
        end++;
    char msg[CTL_PATH_MAX + 32];
    snprintf(msg, sizeof msg, "API key file %s", path);
    int rc = check_secret(text + start, end - start, msg);
    if (rc == 0) {
        memmove(text, text + start, end - start);
        OPENSSL_cleanse(text + (end - start), len - (end - start));
        text[end - start] = '\0';
        c->secret = text;
        c->secret_len = end - start;
    } else {
        OPENSSL_cleanse(text, len);
        free(text);
    }
    return rc;
}

static int load_secret(ctl_t *c, const conf_t *f)
{
    if (c->flag_key_file != NULL)
        return load_secret_file(c, c->flag_key_file);
    char *env = getenv("EMIOT_API_KEY");
    if (env != NULL && env[0] != '\0') {
        size_t len = strlen(env);
        int rc = len > CTL_SECRET_MAX ? CTL_USAGE : check_secret(env, len, "EMIOT_API_KEY");
        if (rc == 0) {
            c->secret = strdup(env);
            c->secret_len = len;
        }
        /* Our copy is the only one we need: wipe the environment's, which
         * /proc/PID/environ would otherwise show for as long as we run. */
        OPENSSL_cleanse(env, len);
        unsetenv("EMIOT_API_KEY");
        if (rc == 0 && c->secret == NULL) {
            ctl_err("out_of_memory", "out of memory");
            return CTL_ERROR;
        }
        return rc;
    }
    const char *file = getenv("EMIOT_API_KEY_FILE");
    if (file != NULL && file[0] != '\0')
        return load_secret_file(c, file);
    if (f->api_key_file != NULL)
        return load_secret_file(c, f->api_key_file);
    return 0;
}

static int check_url(char *url)
{
    size_t n = strlen(url);
    if (n > 1024 || strncasecmp(url, "https://", 8) != 0 || n == 8) {
        ctl_err("configuration", "the URL must be https://HOST[:PORT] (emiotd speaks HTTPS only)");
        return CTL_USAGE;
    }
    for (size_t i = 0; i < n; i++)
        if (!isgraph((unsigned char)url[i]) || url[i] == '?' || url[i] == '#') {
            ctl_err("configuration", "the URL must not hold spaces, control characters, ? or #");
            return CTL_USAGE;
        }
    while (n > 8 && url[n - 1] == '/')
        url[--n] = '\0';
    return 0;
}

int ctl_resolve(ctl_t *c)
{
    if (c->resolved)
        return 0;
    conf_t f;
    memset(&f, 0, sizeof f);
    int rc = conf_load(c, &f);
    if (rc == 0)
        rc = pick(c->flag_url, "EMIOT_URL", f.url, &c->url);
    if (rc == 0)
        rc = pick(c->flag_ca, "EMIOT_CA", f.ca, &c->ca);
    if (rc == 0)
        rc = pick(c->flag_cert, "EMIOT_CERT", f.cert, &c->cert);
    if (rc == 0)
        rc = pick(c->flag_key, "EMIOT_KEY", f.key, &c->tls_key);
    if (rc == 0 && c->url == NULL) {
        ctl_err("configuration", "no server: give --url, set EMIOT_URL, or url in the config file");
        rc = CTL_USAGE;
    }
    if (rc == 0)
        rc = check_url(c->url);
    if (rc == 0 && c->ca == NULL) {
        ctl_err("configuration", "no CA: give --ca, set EMIOT_CA, or ca in the config file "
                                 "(emiotctl trusts only that CA)");
        rc = CTL_USAGE;
    }
    if (rc == 0 && c->tls_key != NULL && c->cert == NULL) {
        ctl_err("configuration", "a client key needs its certificate (--cert)");
        rc = CTL_USAGE;
    }
    if (rc == 0 && c->tls_key != NULL) {
        int fd = ctl_open_private(c->tls_key, "client key");
        if (fd < 0)
            rc = CTL_USAGE;
        else
            close(fd);
    }
    if (rc == 0)
        rc = load_secret(c, &f);
    conf_free(&f);
    if (rc == 0)
        c->resolved = true;
    return rc;
}

void ctl_cleanup(ctl_t *c)
{
    if (c->curl != NULL)
        curl_easy_cleanup(c->curl);
    c->curl = NULL;
    if (c->secret != NULL) {
        OPENSSL_cleanse(c->secret, c->secret_len);
        free(c->secret);
    }
    c->secret = NULL;
    c->secret_len = 0;
    free(c->url);
    free(c->ca);
    free(c->cert);
    free(c->tls_key);
    c->url = c->ca = c->cert = c->tls_key = NULL;
    c->resolved = false;
}
