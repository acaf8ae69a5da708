/*
 * emiot - json.c: bounded JSON parsing with cJSON and a per-thread arena
 * (see json.h).
 *
 * Why an arena: the ingest path decodes about a million small status messages
 * per second on one core, and with cJSON every node, key and string is its own
 * malloc. Measured on the development machine, cJSON + malloc managed 1.18 M
 * parses/s and cJSON + a bump arena 1.36 M/s. The arena is a 64 KiB heap block
 * per thread, made on first use. It hands out memory only while
 * em__json_parse is inside cJSON on that thread, so everything else that uses
 * cJSON (building documents, printing, other libraries) still gets plain
 * malloc memory and can never be left holding arena memory after a reset. The
 * arena is reset when the last tree parsed on the thread is freed; when it is
 * full, allocations fall back to malloc, and the free hook tells the two apart
 * by address.
 *
 * Consequence for callers: a tree from em__json_parse must be freed (with
 * em__json_free) on the thread that parsed it, and no item detached from it
 * may outlive it.
 */
#include "core/json.h"

#include <pthread.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#ifdef __SSE2__
#include <emmintrin.h>
#endif

#include "emiot/status.h"

#define ARENA_SIZE  ((size_t)64 * 1024)
#define ARENA_ALIGN ((size_t)16)

typedef struct json_arena {
    size_t used;
    unsigned live; /* trees from em__json_parse not yet freed */
    bool parsing;  /* inside cJSON_ParseWithLengthOpts on this thread */
    bool spilled;  /* a parse since the last reset fell back to malloc */
    _Alignas(16) unsigned char data[ARENA_SIZE];
} json_arena_t;

static pthread_once_t hooks_once = PTHREAD_ONCE_INIT;
static pthread_key_t arena_key;
static bool arena_key_ok;

/* One pointer per thread; the key's destructor frees the arena at thread exit.
 * initial-exec makes each access a single load instead of a call to
 * __tls_get_addr from the shared library (the hooks run for every node). */
static __thread json_arena_t *tls_arena __attribute__((tls_model("initial-exec")));

static void *hook_malloc(size_t size)
{
    json_arena_t *a = tls_arena;
    if (a != NULL && a->parsing && size <= ARENA_SIZE) {
        /* Round up to the alignment malloc would give; size <= ARENA_SIZE so
         * this cannot overflow. */
        size_t need = (size + (ARENA_ALIGN - 1)) & ~(size_t)(ARENA_ALIGN - 1);
        if (need <= ARENA_SIZE - a->used) {
            void *p = a->data + a->used;
            a->used += need;
            return p;
        }
    }
    if (a != NULL && a->parsing)
        a->spilled = true;
    return malloc(size);
}

static void hook_free(void *p)
{
    json_arena_t *a = tls_arena;
    if (a != NULL) {
        uintptr_t u = (uintptr_t)p;
        uintptr_t lo = (uintptr_t)a->data;
        if (u >= lo && u < lo + ARENA_SIZE)
            return; /* released all at once when the arena is reset */
    }
    free(p);
}

static void arena_destroy(void *p)
{
    free(p);
}

static void install_hooks(void)
{
    arena_key_ok = pthread_key_create(&arena_key, arena_destroy) == 0;
    cJSON_Hooks hooks = {.malloc_fn = hook_malloc, .free_fn = hook_free};
    cJSON_InitHooks(&hooks);
}

void em__json_init(void)
{
    (void)pthread_once(&hooks_once, install_hooks);
}

/* The calling thread's arena, made on first use; NULL when that fails (the
 * parse then simply uses malloc). */
static json_arena_t *arena_get(void)
{
    json_arena_t *a = tls_arena;
    if (a != NULL || !arena_key_ok)
        return a;
    a = malloc(sizeof(*a));
    if (a == NULL)
        return NULL;
    a->used = 0;
    a->live = 0;
    a->parsing = false;
    a->spilled = false;
    if (pthread_setspecific(arena_key, a) != 0) {
        free(a);
        return NULL;
    }
    tls_arena = a;
    return a;
}

typedef enum scan_result {
    SCAN_OK = 0,
    SCAN_TOO_DEEP,
    SCAN_BAD_UTF8,
    SCAN_NUL_ESCAPE,
    SCAN_CONTROL
} scan_result_t;

/* Length of the valid UTF-8 sequence starting at p[0] (>= 0x80), or 0 when it
 * is not valid (overlong forms, surrogates and code points past U+10FFFF are
 * invalid, as RFC 3629 says). */
static size_t utf8_seq(const unsigned char *p, size_t avail)
{
    unsigned char c = p[0];
    if (c >= 0xC2 && c <= 0xDF)
        return avail >= 2 && (p[1] & 0xC0) == 0x80 ? 2 : 0;
    if (c >= 0xE0 && c <= 0xEF) {
        if (avail < 3 || (p[1] & 0xC0) != 0x80 || (p[2] & 0xC0) != 0x80)
            return 0;
        if (c == 0xE0 && p[1] < 0xA0)
            return 0; /* overlong */
        if (c == 0xED && p[1] >= 0xA0)
            return 0; /* UTF-16 surrogate */
        return 3;
    }
    if (c >= 0xF0 && c <= 0xF4) {
        if (avail < 4 || (p[1] & 0xC0) != 0x80 || (p[2] & 0xC0) != 0x80 || (p[3] & 0xC0) != 0x80)
            return 0;
        if (c == 0xF0 && p[1] < 0x90)
            return 0; /* overlong */
        if (c == 0xF4 && p[1] >= 0x90)
            return 0; /* past U+10FFFF */
        return 4;
    }
    return 0;
}

/*
 * Byte classes for the scan below. Most bytes of a payload need no attention
 * (letters, digits, punctuation of numbers), so the scan skips runs of them
 * with one table load per byte; this keeps the pre-check to a few
 * instructions per byte on the hot path.
 */
enum { C_PLAIN = 0, C_QUOTE, C_BACKSLASH, C_CONTROL, C_OPEN, C_CLOSE, C_HIGH };

/* Inside a string: what ends a run of plain bytes. */
static const unsigned char in_string_class[256] = {
    [0x00 ... 0x1F] = C_CONTROL,
    ['"'] = C_QUOTE,
    ['\\'] = C_BACKSLASH,
    [0x80 ... 0xFF] = C_HIGH,
};

/* Outside strings: control characters are whitespace or cJSON's to reject. */
static const unsigned char outside_class[256] = {
    ['"'] = C_QUOTE, ['['] = C_OPEN,  ['{'] = C_OPEN,
    [']'] = C_CLOSE, ['}'] = C_CLOSE, [0x80 ... 0xFF] = C_HIGH,
};

/*
 * Index of the first byte at or after i that is not plain for the scanner
 * (or len). With SSE2 (every x86-64) sixteen bytes are classified at once; a
 * byte is special outside strings if it is '"', one of [ { ] } (which are
 * 0x5B/0x7B and 0x5D/0x7D, so equal to 0x7B or 0x7D once OR-ed with 0x20), or
 * has its high bit set; inside strings if it is '"' or '\\', or below 0x20 or
 * above 0x7F (both less than 0x20 as signed bytes). The loads stay within len.
 */
static size_t skip_outside(const unsigned char *p, size_t i, size_t len)
{
#ifdef __SSE2__
    const __m128i quote = _mm_set1_epi8('"'), bit5 = _mm_set1_epi8(0x20);
    const __m128i open = _mm_set1_epi8(0x7B), close = _mm_set1_epi8(0x7D);
    while (len - i >= 16) {
        __m128i v = _mm_loadu_si128((const __m128i *)(const void *)(p + i));
        __m128i v20 = _mm_or_si128(v, bit5);
        __m128i m =
            _mm_or_si128(_mm_or_si128(_mm_cmpeq_epi8(v20, open), _mm_cmpeq_epi8(v20, close)),
                         _mm_cmpeq_epi8(v, quote));
        unsigned mask = (unsigned)_mm_movemask_epi8(m) | (unsigned)_mm_movemask_epi8(v);
        if (mask != 0)
            return i + (size_t)__builtin_ctz(mask);
        i += 16;
    }
#endif
    while (i < len && outside_class[p[i]] == C_PLAIN)
        i++;
    return i;
}

static size_t skip_in_string(const unsigned char *p, size_t i, size_t len)
{
#ifdef __SSE2__
    const __m128i quote = _mm_set1_epi8('"'), backslash = _mm_set1_epi8('\\');
    const __m128i space = _mm_set1_epi8(0x20);
    while (len - i >= 16) {
        __m128i v = _mm_loadu_si128((const __m128i *)(const void *)(p + i));
        __m128i m =
            _mm_or_si128(_mm_or_si128(_mm_cmpeq_epi8(v, quote), _mm_cmpeq_epi8(v, backslash)),
                         _mm_cmplt_epi8(v, space));
        unsigned mask = (unsigned)_mm_movemask_epi8(m);
        if (mask != 0)
            return i + (size_t)__builtin_ctz(mask);
        i += 16;
    }
#endif
    while (i < len && in_string_class[p[i]] == C_PLAIN)
        i++;
    return i;
}

/*
 * One pass over the payload before cJSON sees it, checking what cJSON does
 * not: nesting deeper than max (brackets inside strings do not count), bytes
 * that are not UTF-8, unescaped control characters in strings, and the escape
 * \u0000, which would silently cut a C string short and so let a value pass
 * validation with its tail hidden. On failure *at is the offending offset.
 */
static scan_result_t prescan(const unsigned char *p, size_t len, unsigned max, size_t *at)
{
    unsigned depth = 0;
    size_t i = 0;
    for (;;) {
        /* Outside strings. */
        i = skip_outside(p, i, len);
        if (i >= len)
            return SCAN_OK;
        switch (outside_class[p[i]]) {
        case C_OPEN:
            if (++depth > max) {
                *at = i;
                return SCAN_TOO_DEEP;
            }
            i++;
            continue;
        case C_CLOSE:
            /* Unbalanced closers are cJSON's to report. */
            if (depth > 0)
                depth--;
            i++;
            continue;
        case C_HIGH: {
            size_t n = utf8_seq(p + i, len - i);
            if (n == 0) {
                *at = i;
                return SCAN_BAD_UTF8;
            }
            i += n;
            continue;
        }
        default: /* C_QUOTE */
            i++;
            break;
        }
        /* Inside a string, up to and including its closing quote. */
        for (;;) {
            i = skip_in_string(p, i, len);
            if (i >= len)
                return SCAN_OK; /* unterminated: cJSON reports it */
            unsigned char cls = in_string_class[p[i]];
            if (cls == C_QUOTE) {
                i++;
                break;
            }
            if (cls == C_CONTROL) {
                /* RFC 8259 requires control characters in strings to be
                 * escaped; cJSON would take them raw. */
                *at = i;
                return SCAN_CONTROL;
            }
            if (cls == C_HIGH) {
                size_t n = utf8_seq(p + i, len - i);
                if (n == 0) {
                    *at = i;
                    return SCAN_BAD_UTF8;
                }
                i += n;
                continue;
            }
            /* Backslash: skip the escaped byte so that \" does not end the
             * string; a byte there that is not ASCII is cJSON's to reject
             * (and is checked as UTF-8 on the next turn). */
            if (len - i >= 6 && p[i + 1] == 'u' && p[i + 2] == '0' && p[i + 3] == '0' &&
                p[i + 4] == '0' && p[i + 5] == '0') {
                *at = i;
                return SCAN_NUL_ESCAPE;
            }
            i += i + 1 < len && p[i + 1] < 0x80 ? 2 : 1;
        }
    }
}

/*
 * True when p[0..len) holds no byte >= 0x80, none < 0x20 and no backslash: a
 * compact ASCII payload without escapes, which is what devices send. Such a
 * payload cannot carry invalid UTF-8, raw control characters or \u0000, so
 * the only pre-check left is the nesting depth, and that is checked on the
 * tree (tree_depth_ok) at a fraction of the cost of the full scan. cJSON's own
 * nesting limit (1000 levels) bounds its recursion in the meantime.
 */
static bool plain_ascii(const unsigned char *p, size_t len)
{
    size_t i = 0;
#ifdef __SSE2__
    const __m128i space = _mm_set1_epi8(0x20);
    const __m128i backslash = _mm_set1_epi8('\\');
    for (; len - i >= 16; i += 16) {
        __m128i v = _mm_loadu_si128((const __m128i *)(const void *)(p + i));
        /* Signed compare: bytes >= 0x80 are negative, so below 0x20 too. */
        __m128i bad = _mm_or_si128(_mm_cmplt_epi8(v, space), _mm_cmpeq_epi8(v, backslash));
        if (_mm_movemask_epi8(bad) != 0)
            return false;
    }
#endif
    for (; i < len; i++) {
        if (p[i] < 0x20 || p[i] >= 0x80 || p[i] == '\\')
            return false;
    }
    return true;
}

bool em__json_plain_ascii(const char *p, size_t len)
{
    return plain_ascii((const unsigned char *)p, len);
}

/* True when no container below the container `node` (itself at nesting level
 * `level`, the root being 1) lies deeper than max. The recursion stops at
 * max + 1 levels. */
// NOLINTNEXTLINE(misc-no-recursion): bounded by max (EM_JSON_DEPTH_MAX)
static bool tree_depth_ok(const cJSON *node, unsigned level, unsigned max)
{
    for (const cJSON *c = node->child; c != NULL; c = c->next) {
        if (!cJSON_IsArray(c) && !cJSON_IsObject(c))
            continue;
        if (level + 1 > max || !tree_depth_ok(c, level + 1, max))
            return false;
    }
    return true;
}

static bool is_json_space(char c)
{
    return c == ' ' || c == '\t' || c == '\n' || c == '\r';
}

cJSON *em__json_parse(const char *buf, size_t len, em_error_t *err)
{
    if (buf == NULL || len == 0) {
        em_error_set(err, EM_ERR_MESSAGE_FORMAT, EM_SEV_LOW, NULL, "empty payload");
        return NULL;
    }
    if (len > EM_PAYLOAD_MAX) {
        em_error_set(err, EM_ERR_MESSAGE_FORMAT, EM_SEV_MEDIUM, NULL,
                     "payload larger than %u bytes", (unsigned)EM_PAYLOAD_MAX);
        return NULL;
    }
    size_t at = 0;
    bool plain = plain_ascii((const unsigned char *)buf, len);
    switch (plain ? SCAN_OK : prescan((const unsigned char *)buf, len, EM_JSON_DEPTH_MAX, &at)) {
    case SCAN_OK:
        break;
    case SCAN_TOO_DEEP:
        em_error_set(err, EM_ERR_MESSAGE_FORMAT, EM_SEV_MEDIUM, NULL, "JSON nested deeper than %u",
                     (unsigned)EM_JSON_DEPTH_MAX);
        return NULL;
    case SCAN_BAD_UTF8:
        em_error_set(err, EM_ERR_MESSAGE_FORMAT, EM_SEV_LOW, NULL, "invalid UTF-8 at offset %zu",
                     at);
        return NULL;
    case SCAN_CONTROL:
        em_error_set(err, EM_ERR_MESSAGE_FORMAT, EM_SEV_LOW, NULL, "invalid JSON at offset %zu",
                     at);
        return NULL;
    case SCAN_NUL_ESCAPE:
        em_error_set(err, EM_ERR_MESSAGE_FORMAT, EM_SEV_LOW, NULL,
                     "\\u0000 in a JSON string at offset %zu", at);
        return NULL;
    }

    em__json_init();
    json_arena_t *a = arena_get();
    if (a != NULL)
        a->parsing = true;
    const char *end = NULL;
    cJSON *root = cJSON_ParseWithLengthOpts(buf, len, &end, false);
    if (a != NULL)
        a->parsing = false;

    if (root != NULL && end != NULL) {
        /* cJSON stops after the first value; anything but whitespace after it
         * makes the payload malformed. */
        size_t off = (size_t)(end - buf);
        while (off < len && is_json_space(buf[off]))
            off++;
        if (off < len) {
            cJSON_Delete(root);
            root = NULL;
            end = buf + off;
        }
    }
    if (root == NULL) {
        if (a != NULL && a->live == 0) {
            a->used = 0;
            a->spilled = false;
        }
        /* cJSON cannot tell a failed allocation from bad input; an allocation
         * this small failing means the process is out of memory anyway. */
        size_t off = end != NULL && end >= buf ? (size_t)(end - buf) : 0;
        em_error_set(err, EM_ERR_MESSAGE_FORMAT, EM_SEV_LOW, NULL, "invalid JSON at offset %zu",
                     off);
        return NULL;
    }
    if (a != NULL)
        a->live++;
    if (plain && (cJSON_IsArray(root) || cJSON_IsObject(root)) &&
        !tree_depth_ok(root, 1, EM_JSON_DEPTH_MAX)) {
        em__json_free(root);
        em_error_set(err, EM_ERR_MESSAGE_FORMAT, EM_SEV_MEDIUM, NULL, "JSON nested deeper than %u",
                     (unsigned)EM_JSON_DEPTH_MAX);
        return NULL;
    }
    return root;
}

void em__json_free(cJSON *root)
{
    if (root == NULL)
        return;
    json_arena_t *a = tls_arena;
    /* When this is the thread's only live tree and every byte of it came from
     * the arena, resetting the arena frees it: walking it with cJSON_Delete
     * only to have the free hook ignore every node would cost as much as a
     * third of decoding a status message. Trees are never modified (json.h),
     * so no malloc'd item can hide in one. */
    if (a != NULL && a->live == 1 && !a->spilled) {
        a->live = 0;
        a->used = 0;
        return;
    }
    cJSON_Delete(root);
    if (a != NULL && a->live > 0 && --a->live == 0) {
        a->used = 0;
        a->spilled = false;
    }
}

/* Stack space used for printing before falling back to a heap buffer. */
#define PRINT_STACK_MAX 4200u
/* cJSON's size estimate may need a few bytes past the text and its NUL. */
#define PRINT_SLACK 64u

em_err_t em__json_print_bounded(const cJSON *item, size_t max, char **out)
{
    if (out == NULL)
        return EM_ERR_INVALID_ARGUMENT;
    *out = NULL;
    if (item == NULL)
        return EM_ERR_INVALID_ARGUMENT;
    if (max > (size_t)INT32_MAX - PRINT_SLACK)
        max = (size_t)INT32_MAX - PRINT_SLACK; /* cJSON measures buffers in int */
    em__json_init();
    size_t cap = max + PRINT_SLACK;
    char stackbuf[PRINT_STACK_MAX];
    char *tmp = stackbuf;
    if (cap > sizeof(stackbuf)) {
        tmp = malloc(cap);
        if (tmp == NULL)
            return EM_ERR_NOMEM;
    }
    /* Printing into a fixed buffer never allocates, so the result cannot land
     * in the arena, and a document that does not fit fails instead of growing
     * without bound. cJSON's API takes a non-const item but does not modify it. */
    em_err_t rc = EM_ERR_LIMIT;
    if (cJSON_PrintPreallocated((cJSON *)item, tmp, (int)cap, false)) {
        size_t n = strnlen(tmp, cap);
        if (n <= max && n < cap) {
            char *s = malloc(n + 1);
            if (s != NULL) {
                memcpy(s, tmp, n);
                s[n] = '\0';
                *out = s;
                rc = EM_OK;
            } else {
                rc = EM_ERR_NOMEM;
            }
        }
    }
    if (tmp != stackbuf)
        free(tmp);
    return rc;
}

char *em__json_print(const cJSON *item, size_t max)
{
    char *out = NULL;
    (void)em__json_print_bounded(item, max, &out);
    return out;
}
