/*
 * emiot-agent - identity.c: what `enroll` and `token` share.
 *
 * Small files read whole with a bound (tokens, keys, certificates), files
 * written safely (under a temporary name beside the final one, then moved
 * into place at once, never replacing a file unless asked to), certificates
 * parsed from PEM, and the command-line checks and exit codes both
 * subcommands have in common.
 */
#include <errno.h>
#include <fcntl.h>
#include <getopt.h>
#include <limits.h>
#include <openssl/bio.h>
#include <openssl/crypto.h>
#include <openssl/err.h>
#include <openssl/pem.h>
#include <openssl/x509.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "agent.h"

/* ---- files ------------------------------------------------------------- */

/* Reads a whole regular file of at most max bytes into a NUL-terminated
 * buffer (wipe it with OPENSSL_cleanse before free: it may be a key). Prints
 * why on failure. */
bool agent_read_file(const char *program, const char *what, const char *path, size_t max,
                     char **out, size_t *out_len)
{
    struct stat st;
    char *buf = NULL;
    size_t len = 0;
    int fd = open(path, O_RDONLY | O_CLOEXEC | O_NOCTTY);

    *out = NULL;
    *out_len = 0;
    if (fd < 0) {
        agent_fail(program, "%s: cannot open '%s': %s", what, path, strerror(errno));
        return false;
    }
    if (fstat(fd, &st) != 0 || !S_ISREG(st.st_mode)) {
        agent_fail(program, "%s: '%s' is not a regular file", what, path);
        close(fd);
        return false;
    }
    if ((uintmax_t)st.st_size > max) {
        agent_fail(program, "%s: '%s' is larger than %zu bytes", what, path, max);
        close(fd);
        return false;
    }
    buf = malloc(max + 1);
    if (!buf) {
        agent_fail(program, "out of memory");
        close(fd);
        return false;
    }
    /* Read up to max + 1 so that a file that grew since fstat is caught. */
    for (;;) {
        ssize_t n = read(fd, buf + len, max + 1 - len);
        if (n < 0 && errno == EINTR)
            continue;
        if (n < 0) {
            agent_fail(program, "%s: cannot read '%s': %s", what, path, strerror(errno));
            goto fail;
        }
        if (n == 0)
            break;
        len += (size_t)n;
        if (len > max) {
            agent_fail(program, "%s: '%s' is larger than %zu bytes", what, path, max);
            goto fail;
        }
    }
    close(fd);
    buf[len] = '\0';
    *out = buf;
    *out_len = len;
    return true;
fail:
    OPENSSL_cleanse(buf, max + 1);
    free(buf);
    close(fd);
    return false;
}

void agent_free_secret(char *buf, size_t len)
{
    if (buf) {
        OPENSSL_cleanse(buf, len);
        free(buf);
    }
}

/* The directory part of path into dir ("." when there is none). */
static bool dir_of(const char *path, char *dir, size_t size)
{
    const char *slash = strrchr(path, '/');
    int n;

    if (!slash)
        n = snprintf(dir, size, ".");
    else if (slash == path)
        n = snprintf(dir, size, "/");
    else
        n = snprintf(dir, size, "%.*s", (int)(slash - path), path);
    return n >= 0 && (size_t)n < size;
}

/* Creates the temporary file of st (mode `mode`, exclusively: mkostemp uses
 * O_EXCL) in path's directory. */
bool agent_staged_open(const char *program, agent_staged_t *st, const char *path, mode_t mode)
{
    char dir[PATH_MAX];
    const char *slash = strrchr(path, '/');
    const char *base = slash ? slash + 1 : path;
    int n;

    memset(st, 0, sizeof *st);
    st->fd = -1;
    st->path = path;
    if (base[0] == '\0' || !dir_of(path, dir, sizeof dir)) {
        agent_fail(program, "'%s' is not a file name", path);
        st->path = NULL;
        return false;
    }
    n = snprintf(st->tmp, sizeof st->tmp, "%s/.%s.tmp-XXXXXX", dir, base);
    if (n < 0 || (size_t)n >= sizeof st->tmp) {
        agent_fail(program, "'%s': the name is too long", path);
        st->path = NULL;
        return false;
    }
    st->fd = mkostemp(st->tmp, O_CLOEXEC);
    if (st->fd < 0) {
        agent_fail(program, "cannot create a file in '%s': %s", dir, strerror(errno));
        st->path = NULL;
        return false;
    }
    if (fchmod(st->fd, mode) != 0) {
        agent_fail(program, "cannot set the mode of '%s': %s", st->tmp, strerror(errno));
        close(st->fd);
        unlink(st->tmp);
        st->fd = -1;
        st->path = NULL;
        return false;
    }
    return true;
}

bool agent_staged_write(const char *program, agent_staged_t *st, const void *data, size_t len)
{
    const char *p = data;

    while (len > 0) {
        ssize_t n = write(st->fd, p, len);
        if (n < 0 && errno == EINTR)
            continue;
        if (n <= 0) {
            agent_fail(program, "cannot write '%s': %s", st->tmp,
                       n < 0 ? strerror(errno) : "no space");
            return false;
        }
        p += n;
        len -= (size_t)n;
    }
    if (fsync(st->fd) != 0) {
        agent_fail(program, "cannot write '%s': %s", st->tmp, strerror(errno));
        return false;
    }
    return true;
}

/* Moves the temporary file into place: replacing an existing file only with
 * force; otherwise atomically refusing to (RENAME_NOREPLACE, or link() where
 * the file system lacks it), so that a file created meanwhile is not lost. */
bool agent_staged_commit(const char *program, agent_staged_t *st, bool force)
{
    int rc;

    if (close(st->fd) != 0) {
        st->fd = -1;
        agent_fail(program, "cannot write '%s': %s", st->tmp, strerror(errno));
        return false;
    }
    st->fd = -1;
    if (force) {
        rc = rename(st->tmp, st->path);
    } else {
        rc = renameat2(AT_FDCWD, st->tmp, AT_FDCWD, st->path, RENAME_NOREPLACE);
        if (rc != 0 && (errno == EINVAL || errno == ENOSYS || errno == ENOTSUP)) {
            rc = link(st->tmp, st->path);
            if (rc == 0)
                (void)unlink(st->tmp);
        }
    }
    if (rc != 0) {
        agent_fail(program, "cannot write '%s': %s%s", st->path, strerror(errno),
                   errno == EEXIST ? " (use --force to replace it)" : "");
        return false;
    }
    st->committed = true;
    {
        /* The new name must survive a power cut as well as the content. */
        char dir[PATH_MAX];
        int dfd;
        if (dir_of(st->path, dir, sizeof dir) &&
            (dfd = open(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC)) >= 0) {
            (void)fsync(dfd);
            close(dfd);
        }
    }
    return true;
}

/* Removes the temporary file; with rollback, also the final file when we
 * put it there. Safe on an unused slot. */
void agent_staged_abort(agent_staged_t *st, bool rollback)
{
    if (!st->path)
        return;
    if (st->fd >= 0) {
        close(st->fd);
        st->fd = -1;
    }
    if (st->committed) {
        if (rollback)
            (void)unlink(st->path);
    } else {
        (void)unlink(st->tmp);
    }
    st->path = NULL;
}

/* ---- certificates ------------------------------------------------------ */

/* Appends OpenSSL's first queued error to a message, then clears the queue. */
const char *agent_ssl_reason(void)
{
    static char buf[160];
    unsigned long e = ERR_peek_last_error();

    if (e == 0)
        return "unknown reason";
    ERR_error_string_n(e, buf, sizeof buf);
    ERR_clear_error();
    return buf;
}

/* The certificates in a PEM text (at least one), or NULL. */
STACK_OF(X509) * agent_parse_certs(const char *pem, size_t len)
{
    STACK_OF(X509) *certs = sk_X509_new_null();
    BIO *b = len <= INT_MAX ? BIO_new_mem_buf(pem, (int)len) : NULL;
    X509 *c;

    if (!certs || !b)
        goto fail;
    while ((c = PEM_read_bio_X509(b, NULL, NULL, NULL)) != NULL) {
        if (!sk_X509_push(certs, c)) {
            X509_free(c);
            goto fail;
        }
    }
    ERR_clear_error(); /* the end of the text is reported as an error */
    if (sk_X509_num(certs) == 0)
        goto fail;
    BIO_free(b);
    return certs;
fail:
    BIO_free(b);
    sk_X509_pop_free(certs, X509_free);
    return NULL;
}

/* ---- options -------------------------------------------------------------- */

int agent_usage_error(const char *program, const char *msg, const char *arg)
{
    (void)fprintf(stderr, "%s: %s%s%s\nTry '%s --help'.\n", program, msg, arg ? " " : "",
                  arg ? arg : "", program);
    return AGENT_EXIT_USAGE;
}

int agent_option_error(const char *program, int c, char **argv)
{
    if (c == ':')
        return agent_usage_error(program, "this option needs a value:", argv[optind - 1]);
    return agent_usage_error(program, "unknown option", argv[optind - 1]);
}

int agent_check_api(const char *program, const char *api)
{
    if (!api)
        return agent_usage_error(program, "--api is required", NULL);
    if (!agent_https_url_ok(api))
        return agent_usage_error(program, "--api: not an https:// URL (TLS is required):", api);
    return -1;
}

int agent_check_id(const char *program, const char *id)
{
    if (id == NULL)
        return agent_usage_error(program, "--id is required", NULL);
    if (em_device_id_validate(id, strlen(id), NULL) != EM_OK)
        return agent_usage_error(program, "--id: not 3-50 of [A-Za-z0-9_-]:", id);
    return -1;
}

const char agent_exit_codes_help[] =
    "Exit status:\n"
    "  0  done\n"
    "  1  local failure (a file cannot be read or written, a key is unusable)\n"
    "  2  bad command line\n"
    "  3  cannot reach the API, or TLS failed (certificate, name, version)\n"
    "  4  refused by emiotd (401/403: token or nonce unknown, used or expired,\n"
    "     device unknown or disabled, certificate refused)\n"
    "  5  emiotd found the request invalid (400/409/413/422: CSR, key type, CN)\n"
    "  6  server error (5xx, 429 rate limit, 404 route missing, enrollment not\n"
    "     configured) or an answer that does not check out\n";
