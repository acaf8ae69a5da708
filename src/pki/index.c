/*
 * emiot - pki/index.c: the CA's index of issued certificates, as text.
 *
 * One line per certificate, eight fields separated by one tab, a newline at
 * the end of every line (a last line without one is a torn write):
 *   serial profile not_before_ms not_after_ms revoked_at_ms reason sha256 cn
 * reason is "-" while the certificate is valid and a reason name
 * (em_crl_reason_name) once revoked. The parser is strict because the index
 * decides what the CRL revokes: a line it cannot read exactly is an error
 * naming the line, never something skipped, so that a damaged index is
 * noticed rather than silently dropping a revocation.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "pki/pki_internal.h"

#define NFIELDS    8
#define INT_DIGITS 19 /* INT64_MAX has 19 digits */

static bool hex_lower(const char *s, size_t len, size_t want)
{
    if (len != want)
        return false;
    for (size_t i = 0; i < len; i++) {
        if (!((s[i] >= '0' && s[i] <= '9') || (s[i] >= 'a' && s[i] <= 'f')))
            return false;
    }
    return true;
}

/* A non-negative decimal without sign or leading zeros. */
static bool parse_ms(const char *s, size_t len, int64_t *out)
{
    if (len == 0 || len > INT_DIGITS || (len > 1 && s[0] == '0'))
        return false;
    int64_t v = 0;
    for (size_t i = 0; i < len; i++) {
        if (s[i] < '0' || s[i] > '9')
            return false;
        int d = s[i] - '0';
        if (v > (INT64_MAX - d) / 10)
            return false;
        v = v * 10 + d;
    }
    *out = v;
    return true;
}

bool em__pki_cert_valid(const em_pki_cert_t *c)
{
    if (c == NULL ||
        !hex_lower(c->serial, strnlen(c->serial, sizeof(c->serial)), EM_PKI_SERIAL_LEN))
        return false;
    if (em_cert_profile_name(c->profile) == NULL)
        return false;
    if (c->not_before_ms < 0 || c->not_after_ms <= c->not_before_ms || c->revoked_at_ms < 0)
        return false;
    if (em_crl_reason_name(c->reason) == NULL ||
        (c->revoked_at_ms == 0 && c->reason != EM_CRL_UNSPECIFIED))
        return false;
    if (!hex_lower(c->sha256, strnlen(c->sha256, sizeof(c->sha256)), EM_PKI_SHA256_LEN))
        return false;
    size_t cn_len = strnlen(c->common_name, sizeof(c->common_name));
    return cn_len < sizeof(c->common_name) && em__pki_cn_valid(c->profile, c->common_name, cn_len);
}

size_t em__pki_index_line(const em_pki_cert_t *c, char *buf, size_t size)
{
    if (!em__pki_cert_valid(c))
        return 0;
    const char *reason = c->revoked_at_ms == 0 ? "-" : em_crl_reason_name(c->reason);
    int n = snprintf(buf, size, "%s\t%s\t%lld\t%lld\t%lld\t%s\t%s\t%s", c->serial,
                     em_cert_profile_name(c->profile), (long long)c->not_before_ms,
                     (long long)c->not_after_ms, (long long)c->revoked_at_ms, reason, c->sha256,
                     c->common_name);
    if (n < 0 || (size_t)n >= size || (size_t)n + 1 > EM_PKI_INDEX_LINE_MAX)
        return 0;
    return (size_t)n;
}

/* Parses one line (without its newline). */
static bool parse_line(const char *line, size_t len, em_pki_cert_t *c, const char **why)
{
    const char *f[NFIELDS];
    size_t fl[NFIELDS];
    size_t nf = 0;
    size_t start = 0;
    for (size_t i = 0; i <= len; i++) {
        if (i == len || line[i] == '\t') {
            if (nf == NFIELDS) {
                *why = "more than 8 fields";
                return false;
            }
            f[nf] = line + start;
            fl[nf] = i - start;
            nf++;
            start = i + 1;
        }
    }
    if (nf != NFIELDS) {
        *why = "fewer than 8 fields";
        return false;
    }
    memset(c, 0, sizeof(*c));
    if (!hex_lower(f[0], fl[0], EM_PKI_SERIAL_LEN)) {
        *why = "bad serial";
        return false;
    }
    memcpy(c->serial, f[0], EM_PKI_SERIAL_LEN);
    char word[32];
    if (fl[1] >= sizeof(word)) {
        *why = "bad profile";
        return false;
    }
    memcpy(word, f[1], fl[1]);
    word[fl[1]] = '\0';
    if (em_cert_profile_parse(word, &c->profile) != EM_OK) {
        *why = "bad profile";
        return false;
    }
    if (!parse_ms(f[2], fl[2], &c->not_before_ms) || !parse_ms(f[3], fl[3], &c->not_after_ms) ||
        c->not_after_ms <= c->not_before_ms) {
        *why = "bad validity period";
        return false;
    }
    if (!parse_ms(f[4], fl[4], &c->revoked_at_ms)) {
        *why = "bad revocation time";
        return false;
    }
    if (fl[5] >= sizeof(word)) {
        *why = "bad reason";
        return false;
    }
    memcpy(word, f[5], fl[5]);
    word[fl[5]] = '\0';
    if (c->revoked_at_ms == 0) {
        if (strcmp(word, "-") != 0) {
            *why = "a reason without a revocation time";
            return false;
        }
        c->reason = EM_CRL_UNSPECIFIED;
    } else if (em_crl_reason_parse(word, &c->reason) != EM_OK) {
        *why = "bad reason";
        return false;
    }
    if (!hex_lower(f[6], fl[6], EM_PKI_SHA256_LEN)) {
        *why = "bad sha256";
        return false;
    }
    memcpy(c->sha256, f[6], EM_PKI_SHA256_LEN);
    if (!em__pki_cn_valid(c->profile, f[7], fl[7])) {
        *why = "bad CN for the profile";
        return false;
    }
    memcpy(c->common_name, f[7], fl[7]);
    return true;
}

em_err_t em__pki_index_add(em__pki_index_t *idx, const em_pki_cert_t *c, em_error_t *err)
{
    if (idx->n >= EM_PKI_INDEX_LINES_MAX)
        return em_error_set(err, EM_ERR_LIMIT, EM_SEV_HIGH, "index",
                            "the index holds the maximum of %d certificates",
                            EM_PKI_INDEX_LINES_MAX);
    if (idx->n == idx->cap) {
        size_t cap = idx->cap == 0 ? 64 : idx->cap * 2;
        if (cap > EM_PKI_INDEX_LINES_MAX)
            cap = EM_PKI_INDEX_LINES_MAX;
        em_pki_cert_t *p = realloc(idx->certs, cap * sizeof(*p));
        if (p == NULL)
            return em_error_set(err, EM_ERR_NOMEM, EM_SEV_HIGH, NULL, "out of memory (index)");
        idx->certs = p;
        idx->cap = cap;
    }
    idx->certs[idx->n++] = *c;
    return EM_OK;
}

void em__pki_index_clear(em__pki_index_t *idx)
{
    free(idx->certs);
    idx->certs = NULL;
    idx->n = idx->cap = 0;
}

em_pki_cert_t *em__pki_index_find(const em__pki_index_t *idx, const char *serial)
{
    for (size_t i = 0; i < idx->n; i++) {
        if (memcmp(idx->certs[i].serial, serial, EM_PKI_SERIAL_LEN) == 0)
            return &idx->certs[i];
    }
    return NULL;
}

static int cmp_serial_at(const void *a, const void *b, void *base)
{
    const em_pki_cert_t *certs = base;
    const em_pki_cert_t *x = &certs[*(const size_t *)a];
    const em_pki_cert_t *y = &certs[*(const size_t *)b];
    int c = memcmp(x->serial, y->serial, EM_PKI_SERIAL_LEN);
    if (c != 0)
        return c;
    return *(const size_t *)a < *(const size_t *)b ? -1 : 1;
}

/* Finds a serial that appears twice; returns the later line (1-based) or 0. */
static em_err_t find_duplicate(const em__pki_index_t *idx, size_t *line, em_error_t *err)
{
    *line = 0;
    if (idx->n < 2)
        return EM_OK;
    size_t *order = malloc(idx->n * sizeof(*order));
    if (order == NULL)
        return em_error_set(err, EM_ERR_NOMEM, EM_SEV_HIGH, NULL, "out of memory (index)");
    for (size_t i = 0; i < idx->n; i++)
        order[i] = i;
    qsort_r(order, idx->n, sizeof(*order), cmp_serial_at, idx->certs);
    for (size_t i = 1; i < idx->n; i++) {
        if (memcmp(idx->certs[order[i]].serial, idx->certs[order[i - 1]].serial,
                   EM_PKI_SERIAL_LEN) == 0) {
            size_t later = order[i] > order[i - 1] ? order[i] : order[i - 1];
            if (*line == 0 || later + 1 < *line)
                *line = later + 1;
        }
    }
    free(order);
    return EM_OK;
}

em_err_t em__pki_index_parse(const char *buf, size_t len, em__pki_index_t *out, em_error_t *err)
{
    if (out == NULL || (buf == NULL && len > 0))
        return em_error_set(err, EM_ERR_INVALID_ARGUMENT, EM_SEV_MEDIUM, NULL, "no index");
    memset(out, 0, sizeof(*out));
    size_t lineno = 0;
    size_t pos = 0;
    em_err_t rc = EM_OK;
    while (pos < len) {
        lineno++;
        const char *nl = memchr(buf + pos, '\n', len - pos);
        size_t end = nl != NULL ? (size_t)(nl - buf) : len;
        size_t llen = end - pos;
        const char *why = NULL;
        if (llen + 1 > EM_PKI_INDEX_LINE_MAX)
            why = "longer than the maximum";
        else if (nl == NULL)
            why = "no newline at its end (a torn write?)";
        else if (memchr(buf + pos, '\0', llen) != NULL || memchr(buf + pos, '\r', llen) != NULL)
            why = "a control character";
        em_pki_cert_t c;
        if (why == NULL && !parse_line(buf + pos, llen, &c, &why))
            why = why != NULL ? why : "unreadable";
        if (why != NULL) {
            rc = em_error_set(err, EM_ERR_MESSAGE_FORMAT, EM_SEV_HIGH, "index",
                              "index line %zu: %s", lineno, why);
            goto fail;
        }
        rc = em__pki_index_add(out, &c, err);
        if (rc != EM_OK)
            goto fail;
        pos = end + 1;
    }
    size_t dup = 0;
    rc = find_duplicate(out, &dup, err);
    if (rc != EM_OK)
        goto fail;
    if (dup != 0) {
        rc = em_error_set(err, EM_ERR_MESSAGE_FORMAT, EM_SEV_HIGH, "index",
                          "index line %zu: a serial that an earlier line already has", dup);
        goto fail;
    }
    return EM_OK;
fail:
    em__pki_index_clear(out);
    return rc;
}

em_err_t em__pki_index_format(const em__pki_index_t *idx, char **out, size_t *out_len,
                              em_error_t *err)
{
    *out = NULL;
    *out_len = 0;
    /* Every line fits EM_PKI_INDEX_LINE_MAX, and n is bounded by
     * EM_PKI_INDEX_LINES_MAX, so the product does not overflow a 64-bit size. */
    size_t cap = idx->n * EM_PKI_INDEX_LINE_MAX + 1;
    char *buf = malloc(cap);
    if (buf == NULL)
        return em_error_set(err, EM_ERR_NOMEM, EM_SEV_HIGH, NULL, "out of memory (index)");
    size_t pos = 0;
    for (size_t i = 0; i < idx->n; i++) {
        size_t n = em__pki_index_line(&idx->certs[i], buf + pos, cap - pos);
        if (n == 0) {
            free(buf);
            return em_error_set(err, EM_ERR_INTERNAL, EM_SEV_HIGH, "index",
                                "index record %zu breaks the index rules", i + 1);
        }
        pos += n;
        buf[pos++] = '\n';
    }
    buf[pos] = '\0';
    *out = buf;
    *out_len = pos;
    return EM_OK;
}
