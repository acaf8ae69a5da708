/*
 * emiot - pki/files.c: the files of a CA directory: paths, atomic writes,
 * bounded reads, the lock, and keeping the in-memory index in step with the
 * index file.
 *
 * emiotctl (offline, by hand) and emiotd (signing enrollment CSRs) may work on
 * the same directory at once, so every change happens under an exclusive
 * flock on DIR/lock and every read under a shared one, and every file is
 * replaced atomically (temporary file, fsync, rename, fsync of the
 * directory): a crash leaves the old file or the new one, never half of one.
 */
#include <errno.h>
#include <fcntl.h>
#include <libgen.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <unistd.h>

#include "pki/pki_internal.h"

/* ---- files ------------------------------------------------------------------ */

char *em__pki_path(const char *dir, const char *name)
{
    size_t dl = strlen(dir);
    size_t nl = strlen(name);
    if (dl + 1 + nl + 1 > EM__PKI_PATH_MAX)
        return NULL;
    char *p = malloc(dl + 1 + nl + 1);
    if (p == NULL)
        return NULL;
    /* Both lengths are known: copies of exact sizes, terminated by hand. */
    for (size_t i = 0; i < dl; i++)
        p[i] = dir[i];
    p[dl] = '/';
    for (size_t i = 0; i < nl; i++)
        p[dl + 1 + i] = name[i];
    p[dl + 1 + nl] = '\0';
    return p;
}

static void fsync_parent(const char *path)
{
    char buf[EM__PKI_PATH_MAX];
    size_t n = strnlen(path, sizeof(buf) - 1);
    memcpy(buf, path, n);
    buf[n] = '\0';
    int fd = open(dirname(buf), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (fd >= 0) {
        (void)fsync(fd);
        close(fd);
    }
}

em_err_t em__pki_write_atomic(const char *path, const void *data, size_t len, mode_t mode,
                              em_error_t *err)
{
    char tmp[EM__PKI_PATH_MAX];
    int n = snprintf(tmp, sizeof(tmp), "%s.tmp.XXXXXX", path);
    if (n < 0 || (size_t)n >= sizeof(tmp))
        return em_error_set(err, EM_ERR_IO, EM_SEV_HIGH, NULL, "path too long: %s", path);
    int fd = mkostemp(tmp, O_CLOEXEC);
    if (fd < 0)
        return em_error_set(err, EM_ERR_IO, EM_SEV_HIGH, NULL, "cannot create %s: %s", tmp,
                            strerror(errno));
    const unsigned char *p = data;
    size_t left = len;
    int e = 0;
    if (fchmod(fd, mode) != 0)
        e = errno;
    while (e == 0 && left > 0) {
        ssize_t w = write(fd, p, left);
        if (w < 0) {
            if (errno == EINTR)
                continue;
            e = errno;
            break;
        }
        p += w;
        left -= (size_t)w;
    }
    if (e == 0 && fsync(fd) != 0)
        e = errno;
    if (close(fd) != 0 && e == 0)
        e = errno;
    if (e == 0 && rename(tmp, path) != 0)
        e = errno;
    if (e != 0) {
        unlink(tmp);
        return em_error_set(err, EM_ERR_IO, EM_SEV_HIGH, NULL, "cannot write %s: %s", path,
                            strerror(e));
    }
    fsync_parent(path);
    return EM_OK;
}

em_err_t em__pki_read_file(const char *path, size_t max, char **out, size_t *out_len,
                           em_error_t *err)
{
    *out = NULL;
    *out_len = 0;
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0) {
        if (errno == ENOENT)
            return em_error_set(err, EM_ERR_NOT_FOUND, EM_SEV_MEDIUM, NULL, "%s does not exist",
                                path);
        return em_error_set(err, EM_ERR_IO, EM_SEV_HIGH, NULL, "cannot open %s: %s", path,
                            strerror(errno));
    }
    struct stat st;
    if (fstat(fd, &st) != 0 || !S_ISREG(st.st_mode)) {
        close(fd);
        return em_error_set(err, EM_ERR_IO, EM_SEV_HIGH, NULL, "%s is not a regular file", path);
    }
    if ((uint64_t)st.st_size > max) {
        close(fd);
        return em_error_set(err, EM_ERR_LIMIT, EM_SEV_HIGH, NULL, "%s is larger than %zu bytes",
                            path, max);
    }
    size_t cap = (size_t)st.st_size + 1;
    char *buf = malloc(cap);
    if (buf == NULL) {
        close(fd);
        return em_error_set(err, EM_ERR_NOMEM, EM_SEV_HIGH, NULL, "out of memory reading %s", path);
    }
    /* Read at most the size seen by fstat: files are replaced by rename, never
     * grown in place, so a longer read would only ever see a concurrent
     * writer that does not follow the rules. */
    size_t len = 0;
    while (len < cap - 1) {
        ssize_t r = read(fd, buf + len, cap - 1 - len);
        if (r < 0) {
            if (errno == EINTR)
                continue;
            int e = errno;
            free(buf);
            close(fd);
            return em_error_set(err, EM_ERR_IO, EM_SEV_HIGH, NULL, "cannot read %s: %s", path,
                                strerror(e));
        }
        if (r == 0)
            break;
        len += (size_t)r;
    }
    close(fd);
    buf[len] = '\0';
    *out = buf;
    *out_len = len;
    return EM_OK;
}

em_err_t em__pki_lock(em_pki_t *pki, int how, em_error_t *err)
{
    while (flock(pki->lock_fd, how) != 0) {
        if (errno != EINTR)
            return em_error_set(err, EM_ERR_IO, EM_SEV_HIGH, NULL, "cannot lock %s/%s: %s",
                                pki->dir, EM__PKI_LOCK, strerror(errno));
    }
    return EM_OK;
}

void em__pki_unlock(em_pki_t *pki)
{
    (void)flock(pki->lock_fd, LOCK_UN);
}

static void remember_index_stat(em_pki_t *pki, const struct stat *st)
{
    pki->index_loaded = true;
    pki->index_dev = st->st_dev;
    pki->index_ino = st->st_ino;
    pki->index_size = st->st_size;
    pki->index_mtime = st->st_mtim;
}

em_err_t em__pki_sync(em_pki_t *pki, em_error_t *err)
{
    struct stat st;
    if (stat(pki->index_file, &st) != 0)
        return em_error_set(err, EM_ERR_MESSAGE_FORMAT, EM_SEV_HIGH, "index",
                            "the CA's index %s is missing: %s", pki->index_file, strerror(errno));
    if (pki->index_loaded && st.st_dev == pki->index_dev && st.st_ino == pki->index_ino &&
        st.st_size == pki->index_size && st.st_mtim.tv_sec == pki->index_mtime.tv_sec &&
        st.st_mtim.tv_nsec == pki->index_mtime.tv_nsec)
        return EM_OK;
    char *buf;
    size_t len;
    em_err_t rc = em__pki_read_file(
        pki->index_file, (size_t)EM_PKI_INDEX_LINES_MAX * EM_PKI_INDEX_LINE_MAX, &buf, &len, err);
    if (rc != EM_OK)
        return rc;
    em__pki_index_t fresh;
    rc = em__pki_index_parse(buf, len, &fresh, err);
    free(buf);
    if (rc != EM_OK)
        return rc;
    em__pki_index_clear(&pki->index);
    pki->index = fresh;
    remember_index_stat(pki, &st);
    return EM_OK;
}

em_err_t em__pki_index_save(em_pki_t *pki, em_error_t *err)
{
    char *buf;
    size_t len;
    em_err_t rc = em__pki_index_format(&pki->index, &buf, &len, err);
    if (rc != EM_OK)
        return rc;
    rc = em__pki_write_atomic(pki->index_file, buf, len, 0600, err);
    free(buf);
    if (rc != EM_OK) {
        /* The file still holds the old index: read it again next time. */
        pki->index_loaded = false;
        return rc;
    }
    struct stat st;
    if (stat(pki->index_file, &st) == 0)
        remember_index_stat(pki, &st);
    else
        pki->index_loaded = false;
    return EM_OK;
}
