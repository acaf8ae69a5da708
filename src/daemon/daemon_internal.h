/*
 * emiot - daemon_internal.h: what the files of src/daemon share.
 */
#ifndef EMIOT_DAEMON_INTERNAL_H
#define EMIOT_DAEMON_INTERNAL_H

#include <stdbool.h>
#include <stddef.h>

/*
 * Finds the nth (from 0) password in a store URL: the userinfo password of
 * "scheme://user:password@host..." or the value of a "password=" parameter.
 * Returns 0 with *pw and *pwlen set (a span of url), or -1 when there is no
 * nth one.
 */
int em__daemon_url_password(const char *url, size_t len, const char **pw, size_t *pwlen, int nth);

/* True when url holds any password (em__daemon_url_password). */
bool em__daemon_url_has_password(const char *url, size_t len);

/*
 * Reads a whole regular file of at most max bytes into a new buffer, NUL-
 * terminated (free it; wipe it first when it may hold a secret). Returns 0,
 * or -1 with errno set (EFBIG when larger than max, EINVAL when not a regular
 * file).
 */
int em__daemon_read_file(const char *path, size_t max, char **out, size_t *out_len);

#endif /* EMIOT_DAEMON_INTERNAL_H */
