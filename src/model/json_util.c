/*
 * emiot - json_util.c: bounded JSON writing, UTF-8 checks and typed reads
 * shared by the model code (see json_util.h).
 */
#include "model/json_util.h"

#include <inttypes.h>
#include <math.h>
#include <string.h>

int em__utf8_check(const char *s, size_t len, bool reject_control)
{
    const unsigned char *p = (const unsigned char *)s;
    size_t i = 0;
    while (i < len) {
        unsigned char c = p[i];
        if (c < 0x80) {
            if (reject_control && (c < 0x20 || c == 0x7f))
                return EM__UTF8_CONTROL;
            i++;
            continue;
        }
        /* Lead byte decides the length and the allowed range of the second
         * byte (RFC 3629 section 4), which excludes overlong forms,
         * surrogates and code points above U+10FFFF. */
        size_t n;
        unsigned char lo = 0x80, hi = 0xbf;
        if (c >= 0xc2 && c <= 0xdf) {
            n = 2;
        } else if (c == 0xe0) {
            n = 3;
            lo = 0xa0;
        } else if ((c >= 0xe1 && c <= 0xec) || c == 0xee || c == 0xef) {
            n = 3;
        } else if (c == 0xed) {
            n = 3;
            hi = 0x9f;
        } else if (c == 0xf0) {
            n = 4;
            lo = 0x90;
        } else if (c >= 0xf1 && c <= 0xf3) {
            n = 4;
        } else if (c == 0xf4) {
            n = 4;
            hi = 0x8f;
        } else {
            return EM__UTF8_INVALID;
        }
        if (len - i < n)
            return EM__UTF8_INVALID;
        if (p[i + 1] < lo || p[i + 1] > hi)
            return EM__UTF8_INVALID;
        for (size_t k = 2; k < n; k++) {
            if (p[i + k] < 0x80 || p[i + k] > 0xbf)
                return EM__UTF8_INVALID;
        }
        /* C1 controls U+0080..U+009F are C2 80..C2 9F. */
        if (reject_control && c == 0xc2 && p[i + 1] <= 0x9f)
            return EM__UTF8_CONTROL;
        i += n;
    }
    return EM__UTF8_OK;
}

/* The request id alphabet [A-Za-z0-9_-] as a table: checked once per encoded
 * command, so it should cost a load per byte. */
static const bool token_char[256] = {
    ['-'] = true, ['_'] = true, ['0'] = true, ['1'] = true, ['2'] = true, ['3'] = true,
    ['4'] = true, ['5'] = true, ['6'] = true, ['7'] = true, ['8'] = true, ['9'] = true,
    ['A'] = true, ['B'] = true, ['C'] = true, ['D'] = true, ['E'] = true, ['F'] = true,
    ['G'] = true, ['H'] = true, ['I'] = true, ['J'] = true, ['K'] = true, ['L'] = true,
    ['M'] = true, ['N'] = true, ['O'] = true, ['P'] = true, ['Q'] = true, ['R'] = true,
    ['S'] = true, ['T'] = true, ['U'] = true, ['V'] = true, ['W'] = true, ['X'] = true,
    ['Y'] = true, ['Z'] = true, ['a'] = true, ['b'] = true, ['c'] = true, ['d'] = true,
    ['e'] = true, ['f'] = true, ['g'] = true, ['h'] = true, ['i'] = true, ['j'] = true,
    ['k'] = true, ['l'] = true, ['m'] = true, ['n'] = true, ['o'] = true, ['p'] = true,
    ['q'] = true, ['r'] = true, ['s'] = true, ['t'] = true, ['u'] = true, ['v'] = true,
    ['w'] = true, ['x'] = true, ['y'] = true, ['z'] = true,
};

bool em__is_token(const char *s, size_t len)
{
    bool ok = true;
    /* No early exit: the loop vectorises and ids are short. */
    for (size_t i = 0; i < len; i++)
        ok &= token_char[(unsigned char)s[i]];
    return ok;
}

void em__jw_init(em__jw_t *w, char *buf, size_t size)
{
    w->buf = buf;
    w->size = buf == NULL ? 0 : size;
    w->len = 0;
    w->overflow = false;
}

void em__jw_str(em__jw_t *w, const char *s, size_t len)
{
    static const char hex[] = "0123456789abcdef";
    em__jw_lit(w, "\"");
    size_t run = 0; /* start of the current run of bytes that need no escape */
    for (size_t i = 0; i < len; i++) {
        unsigned char c = (unsigned char)s[i];
        if (c >= 0x20 && c != '"' && c != '\\')
            continue;
        em__jw_raw(w, s + run, i - run);
        run = i + 1;
        switch (c) {
        case '"':
            em__jw_lit(w, "\\\"");
            break;
        case '\\':
            em__jw_lit(w, "\\\\");
            break;
        case '\n':
            em__jw_lit(w, "\\n");
            break;
        case '\r':
            em__jw_lit(w, "\\r");
            break;
        case '\t':
            em__jw_lit(w, "\\t");
            break;
        case '\b':
            em__jw_lit(w, "\\b");
            break;
        case '\f':
            em__jw_lit(w, "\\f");
            break;
        default: {
            char u[6] = {'\\', 'u', '0', '0', hex[c >> 4], hex[c & 15]};
            em__jw_raw(w, u, sizeof(u));
            break;
        }
        }
    }
    em__jw_raw(w, s + run, len - run);
    em__jw_lit(w, "\"");
}

void em__jw_i64(em__jw_t *w, int64_t v)
{
    static const char pairs[] =
        "00010203040506070809101112131415161718192021222324252627282930313233"
        "34353637383940414243444546474849505152535455565758596061626364656667"
        "6869707172737475767778798081828384858687888990919293949596979899";
    char tmp[24];
    size_t pos = sizeof(tmp);
    /* Work in unsigned arithmetic so that INT64_MIN has a magnitude; two
     * digits per division, since timestamps have thirteen. */
    uint64_t u = v < 0 ? (uint64_t)0 - (uint64_t)v : (uint64_t)v;
    while (u >= 100) {
        unsigned d = (unsigned)(u % 100) * 2;
        u /= 100;
        tmp[--pos] = pairs[d + 1];
        tmp[--pos] = pairs[d];
    }
    if (u >= 10) {
        unsigned d = (unsigned)u * 2;
        tmp[--pos] = pairs[d + 1];
        tmp[--pos] = pairs[d];
    } else {
        tmp[--pos] = (char)('0' + u);
    }
    if (v < 0)
        tmp[--pos] = '-';
    em__jw_raw(w, tmp + pos, sizeof(tmp) - pos);
}

em_err_t em__jw_finish(em__jw_t *w, size_t *out_len)
{
    if (w->overflow) {
        if (w->size > 0)
            w->buf[0] = '\0';
        return EM_ERR_BUFFER_TOO_SMALL;
    }
    w->buf[w->len] = '\0';
    if (out_len != NULL)
        *out_len = w->len;
    return EM_OK;
}

em_err_t em__json_int(const cJSON *item, const char *field, int64_t min, int64_t max, int64_t *out,
                      em_error_t *err)
{
    /* Bounds are within 2^53, where doubles hold integers exactly, so
     * comparing the double against them is exact. */
    if (cJSON_IsNumber(item)) {
        double d = item->valuedouble;
        if (isfinite(d) && d == trunc(d) && d >= (double)min && d <= (double)max) {
            *out = (int64_t)d;
            return EM_OK;
        }
    }
    return em_error_set(err, EM_ERR_VALIDATION, EM_SEV_LOW, field,
                        "must be an integer from %" PRId64 " to %" PRId64, min, max);
}

size_t em__json_key_count(const cJSON *obj, const char *key)
{
    size_t n = 0;
    for (const cJSON *c = obj == NULL ? NULL : obj->child; c != NULL; c = c->next) {
        if (c->string != NULL && strcmp(c->string, key) == 0)
            n++;
    }
    return n;
}
