/*
 * emiot - log.c: the structured logger (see log.h).
 *
 * A line is built in a stack buffer of EM_LOG_LINE_MAX bytes and handed to
 * the sink in one call, so no lock is held while formatting and lines from
 * different threads never interleave (the default sink writes with a single
 * write(2) of at most EM_LOG_LINE_MAX - 1 bytes, below PIPE_BUF, so even a
 * pipe keeps lines whole).
 *
 * Building a line takes one pass in the common case. When something does not
 * fit (a long message, many fields, a huge value), a second pass shares the
 * space out: the fields get what they need once the message has kept up to
 * MSG_KEEP bytes, the message gets the rest, and the line ends with
 * "truncated":true. Strings are only ever cut between whole escapes and whole
 * UTF-8 sequences, so a truncated line is still valid JSON.
 */
#include "emiot/log.h"

#include <errno.h>
#include <math.h>
#include <pthread.h>
#include <sched.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdio.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

/* Longest escaped module, cid and field key kept; longer ones are cut. */
#define MODULE_OUT_MAX 64
#define CID_OUT_MAX    128
#define KEY_OUT_MAX    128
/* When a line must be truncated, the message keeps at least this much. */
#define MSG_KEEP 512
/* A string value that does not fit is cut only when at least this much of it
 * can stay; otherwise the field is left out, so that a cut short value (a
 * device id, say) is never mistaken for another whole one. */
#define VALUE_CUT_MIN 64
/* No more of a message or a string value is ever read than this: each input
 * byte yields at least one output byte, so the rest could never be written. */
#define INPUT_SCAN_MAX ((size_t)EM_LOG_LINE_MAX)
/* A message is read further than that, so that masking sees a secret whole
 * even where what precedes it shrank when masked. */
#define MSG_SCAN_MAX ((size_t)65536)

#define REDACTED "[REDACTED]"

static const char TAIL_TRUNCATED[] = ",\"truncated\":true}\n";
#define TAIL_TRUNCATED_LEN (sizeof(TAIL_TRUNCATED) - 1)

/* ------------------------------------------------------------------------ */
/* Level                                                                    */

/* Read on every em_log_enabled() call, so a relaxed atomic: the hot path pays
 * one plain load, and a level change is seen by other threads shortly after. */
static atomic_int g_level = EM_LOG_INFO;

static const char *const LEVEL_NAMES[] = {"trace", "debug", "info", "warn",
                                          "error", "fatal", "off"};

void em_log_set_level(em_log_level_t level)
{
    if ((int)level < (int)EM_LOG_TRACE || (int)level > (int)EM_LOG_OFF)
        return; /* not a level: keep the current one */
    atomic_store_explicit(&g_level, (int)level, memory_order_relaxed);
}

em_log_level_t em_log_get_level(void)
{
    return (em_log_level_t)atomic_load_explicit(&g_level, memory_order_relaxed);
}

int em_log_enabled(em_log_level_t level)
{
    /* EM_LOG_OFF is a threshold, not a level a line can have. */
    return (int)level >= (int)EM_LOG_TRACE && (int)level < (int)EM_LOG_OFF &&
           (int)level >= atomic_load_explicit(&g_level, memory_order_relaxed);
}

int em_log_level_parse(const char *name)
{
    if (name == NULL)
        return -1;
    for (size_t i = 0; i < sizeof(LEVEL_NAMES) / sizeof(LEVEL_NAMES[0]); i++) {
        if (strcmp(name, LEVEL_NAMES[i]) == 0)
            return (int)i;
    }
    return -1;
}

const char *em_log_level_name(em_log_level_t level)
{
    if ((int)level < (int)EM_LOG_TRACE || (int)level > (int)EM_LOG_OFF)
        return "unknown";
    return LEVEL_NAMES[level];
}

/* ------------------------------------------------------------------------ */
/* Sink                                                                     */

/*
 * The sink and its userdata must change together, and once em_log_set_sink()
 * returns no thread may still be inside the old sink (its userdata may be
 * freed next). Two slots do this without a lock on the logging path: a
 * logger announces itself in the active slot's user count, re-checks that the
 * slot is still active, and calls it. A setter (setters are serialised by a
 * mutex) fills the idle slot once its stragglers are gone, makes it active,
 * then waits for the users of the old slot to leave. The count a thread holds
 * itself (a sink that logs or sets the sink) is not waited for, so that
 * cannot deadlock.
 */
typedef struct sink_slot {
    em_log_sink_fn fn;
    void *userdata;
    atomic_uint users;
} sink_slot_t;

static void default_sink(em_log_level_t level, const char *line, size_t len, void *userdata);

static sink_slot_t g_slots[2] = {{default_sink, NULL, 0}, {default_sink, NULL, 0}};
static atomic_uint g_active = 0;
static pthread_mutex_t g_sink_lock = PTHREAD_MUTEX_INITIALIZER;
static _Thread_local unsigned tl_held[2];

static void default_sink(em_log_level_t level, const char *line, size_t len, void *userdata)
{
    (void)level;
    (void)userdata;
    /* One write() per line; the loop only runs again after a signal or a
     * partial write, which stderr as a pipe or a terminal does not do for
     * lines this short. */
    while (len > 0) {
        ssize_t n = write(STDERR_FILENO, line, len);
        if (n < 0) {
            if (errno == EINTR)
                continue;
            return; /* nowhere to report a failing stderr */
        }
        line += n;
        len -= (size_t)n;
    }
}

/* Waits for other threads to leave slot idx. They are inside a sink call, so
 * after a few yields it sleeps rather than compete with them for the CPU. */
static void wait_for_slot(unsigned idx)
{
    for (unsigned spins = 0; atomic_load(&g_slots[idx].users) > tl_held[idx]; spins++) {
        if (spins < 64) {
            sched_yield();
        } else {
            struct timespec pause = {0, 100000L};
            nanosleep(&pause, NULL);
        }
    }
}

void em_log_set_sink(em_log_sink_fn sink, void *userdata)
{
    pthread_mutex_lock(&g_sink_lock);
    unsigned cur = atomic_load(&g_active);
    unsigned next = 1u - cur;
    wait_for_slot(next);
    g_slots[next].fn = sink != NULL ? sink : default_sink;
    g_slots[next].userdata = sink != NULL ? userdata : NULL;
    atomic_store(&g_active, next);
    wait_for_slot(cur);
    pthread_mutex_unlock(&g_sink_lock);
}

static void deliver(em_log_level_t level, const char *line, size_t len)
{
    unsigned idx;
    for (;;) {
        idx = atomic_load(&g_active);
        atomic_fetch_add(&g_slots[idx].users, 1u);
        if (atomic_load(&g_active) == idx)
            break;
        atomic_fetch_sub(&g_slots[idx].users, 1u);
    }
    em_log_sink_fn fn = g_slots[idx].fn;
    void *userdata = g_slots[idx].userdata;
    tl_held[idx]++;
    fn(level, line, len, userdata);
    tl_held[idx]--;
    atomic_fetch_sub(&g_slots[idx].users, 1u);
}

/* ------------------------------------------------------------------------ */
/* Secret keys                                                              */

static int lower(int c)
{
    return (c >= 'A' && c <= 'Z') ? c - 'A' + 'a' : c;
}

static bool is_alnum(int c)
{
    return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9');
}

static bool is_upper(int c)
{
    return c >= 'A' && c <= 'Z';
}

static bool is_lower_or_digit(int c)
{
    return (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9');
}

/* A word and its length, so that the checks below need no strlen. */
typedef struct word {
    const char *s;
    size_t len;
} word_t;
#define WORD(lit)                                                                                  \
    {                                                                                              \
        (lit), sizeof(lit) - 1                                                                     \
    }

/* Words that mark a secret wherever they appear in a key, separators ignored
 * ("mqtt_password", "jwtToken", "pass-phrase", "api_key"). */
static const word_t SECRET_WORDS[] = {
    WORD("password"), WORD("passwd"),        WORD("passphrase"), WORD("secret"),
    WORD("token"),    WORD("apikey"),        WORD("credential"), WORD("cookie"),
    WORD("private"),  WORD("authorization"),
};
/* The first letters of SECRET_WORDS. */
static const bool SECRET_FIRST[256] = {
    ['a'] = true, ['c'] = true, ['p'] = true, ['s'] = true, ['t'] = true};
/* Short words that would match too much inside other words: a secret when a
 * word of the key starts or ends with them ("keyfile", "privkey", "passkey"). */
static const word_t SECRET_AFFIXES[] = {WORD("key"), WORD("pass")};
/* Short words that are a secret only as a whole word of the key. */
static const word_t SECRET_WHOLE[] = {WORD("auth"), WORD("pwd"), WORD("jwt")};

#define COUNT(a) (sizeof(a) / sizeof((a)[0]))

/* w[0..n) equals word, ignoring the case of w (words are lower case). */
static bool word_eq(const char *w, size_t n, const word_t *word)
{
    if (n != word->len)
        return false;
    for (size_t i = 0; i < n; i++) {
        if (lower((unsigned char)w[i]) != word->s[i])
            return false;
    }
    return true;
}

static bool word_has_affix(const char *w, size_t n, const word_t *affix)
{
    size_t al = affix->len;
    if (n < al)
        return false;
    return word_eq(w, al, affix) || word_eq(w + n - al, al, affix);
}

/* Splits the key into words at non-alphanumerics and camelCase boundaries
 * ("signingKeyPath" -> signing, Key, Path; "APIKey" -> API, Key). */
static bool words_are_secret(const char *k, size_t n)
{
    size_t i = 0;
    while (i < n) {
        while (i < n && !is_alnum((unsigned char)k[i]))
            i++;
        size_t start = i;
        while (i < n && is_alnum((unsigned char)k[i])) {
            if (i > start && is_upper((unsigned char)k[i])) {
                int prev = (unsigned char)k[i - 1];
                int next = i + 1 < n ? (unsigned char)k[i + 1] : 0;
                if (is_lower_or_digit(prev) || (is_upper(prev) && next >= 'a' && next <= 'z'))
                    break;
            }
            i++;
        }
        size_t len = i - start;
        if (len == 0)
            continue;
        for (size_t a = 0; a < COUNT(SECRET_AFFIXES); a++) {
            if (word_has_affix(k + start, len, &SECRET_AFFIXES[a]))
                return true;
        }
        for (size_t a = 0; a < COUNT(SECRET_WHOLE); a++) {
            if (word_eq(k + start, len, &SECRET_WHOLE[a]))
                return true;
        }
    }
    return false;
}

/* Longest key checked in one piece; a longer one is checked in overlapping
 * windows, so that no secret word is missed at a window edge. */
#define KEY_NORM_MAX    256
#define SECRET_WORD_MAX 16

/* True when a secret word occurs in k[0..n) once it is lower-cased and
 * stripped of everything but letters and digits ("pass_word" -> "password"). */
static bool has_secret_word(const char *k, size_t n)
{
    /* Zeroed only so that static analysers need not follow len. */
    char norm[KEY_NORM_MAX] = {0};
    size_t i = 0;
    while (i < n) {
        size_t len = 0;
        size_t j = i;
        for (; j < n && len < KEY_NORM_MAX; j++) {
            int c = (unsigned char)k[j];
            if (is_alnum(c))
                norm[len++] = (char)lower(c);
        }
        for (size_t p = 0; p < len; p++) {
            /* Most letters start no secret word: skip them at once. */
            if (!SECRET_FIRST[(unsigned char)norm[p]])
                continue;
            for (size_t w = 0; w < COUNT(SECRET_WORDS); w++) {
                const word_t *sw = &SECRET_WORDS[w];
                if (sw->len <= len - p && memcmp(norm + p, sw->s, sw->len) == 0)
                    return true;
            }
        }
        if (j >= n)
            break;
        /* The next window starts SECRET_WORD_MAX letters back, enough to
         * hold a word cut at the end of this one. */
        size_t back = 0;
        while (back < SECRET_WORD_MAX) {
            j--;
            if (is_alnum((unsigned char)k[j]))
                back++;
        }
        i = j;
    }
    return false;
}

static bool key_is_secret_n(const char *k, size_t n)
{
    if (n == 0)
        return false;
    return has_secret_word(k, n) || words_are_secret(k, n);
}

int em_log_key_is_secret(const char *key)
{
    if (key == NULL)
        return 0;
    return key_is_secret_n(key, strnlen(key, INPUT_SCAN_MAX)) ? 1 : 0;
}

/* ------------------------------------------------------------------------ */
/* Masking secrets inside messages                                          */

typedef struct raw_out {
    char *p;
    size_t len;
    size_t cap;
    bool full;
} raw_out_t;

static void raw_put(raw_out_t *o, const char *s, size_t n)
{
    if (o->full)
        return;
    if (n > o->cap - o->len) {
        o->full = true;
        return;
    }
    memcpy(o->p + o->len, s, n);
    o->len += n;
}

static bool is_b64url(int c)
{
    return is_alnum(c) || c == '-' || c == '_';
}

static bool is_hex(int c)
{
    return (c >= '0' && c <= '9') || (c >= 'a' && c <= 'f') || (c >= 'A' && c <= 'F');
}

static size_t run_b64url(const char *s, size_t n)
{
    size_t i = 0;
    while (i < n && is_b64url((unsigned char)s[i]))
        i++;
    return i;
}

/* A JWT (or JWS/JWE compact token): "eyJ" header, then ".payload.signature"
 * and any further ".segment"s. Returns its length, 0 when s does not start one. */
static size_t match_jwt(const char *s, size_t n)
{
    if (n < 3 || memcmp(s, "eyJ", 3) != 0)
        return 0;
    size_t i = run_b64url(s, n);
    if (i >= n || s[i] != '.')
        return 0;
    size_t p = run_b64url(s + i + 1, n - i - 1);
    if (p == 0 || i + 1 + p >= n || s[i + 1 + p] != '.')
        return 0;
    i += 1 + p + 1;
    i += run_b64url(s + i, n - i);
    while (i + 1 < n && s[i] == '.' && is_b64url((unsigned char)s[i + 1]))
        i += 1 + run_b64url(s + i + 1, n - i - 1);
    return i;
}

/* An emiot API key: "iot_" and at least 48 hex digits. */
static size_t match_api_key(const char *s, size_t n)
{
    if (n < 4 + 48 || lower((unsigned char)s[0]) != 'i' || lower((unsigned char)s[1]) != 'o' ||
        lower((unsigned char)s[2]) != 't' || s[3] != '_')
        return 0;
    size_t i = 4;
    while (i < n && is_hex((unsigned char)s[i]))
        i++;
    if (i - 4 < 48)
        return 0;
    return i + run_b64url(s + i, n - i);
}

static bool is_ident(int c)
{
    return is_alnum(c) || c == '_' || c == '-' || c == '.';
}

static bool is_space(int c)
{
    return c == ' ' || c == '\t' || c == '\r' || c == '\n' || c == '\v' || c == '\f';
}

static bool is_quote(int c)
{
    return c == '"' || c == '\'';
}

/* The identifier written just before the separator at s[sep]: skips spaces,
 * a closing quote (and a backslash escaping it), as in `"password": "x"`. */
static bool secret_name_before(const char *s, size_t sep)
{
    size_t e = sep;
    while (e > 0 && (s[e - 1] == ' ' || s[e - 1] == '\t'))
        e--;
    if (e > 0 && is_quote((unsigned char)s[e - 1])) {
        e--;
        if (e > 0 && s[e - 1] == '\\')
            e--;
    }
    size_t b = e;
    while (b > 0 && is_ident((unsigned char)s[b - 1]))
        b--;
    return key_is_secret_n(s + b, e - b);
}

/* Length of an unquoted value: up to whitespace, a quote, a comma or '&'. */
static size_t value_run(const char *s, size_t n)
{
    size_t i = 0;
    while (i < n) {
        int c = (unsigned char)s[i];
        if (is_space(c) || is_quote(c) || c == ',' || c == '&' || c == '\\')
            break;
        i++;
    }
    return i;
}

/*
 * Masks the value after a secret name and separator. s points just after the
 * separator; returns how much of the input was consumed.
 */
static size_t mask_value(raw_out_t *o, const char *s, size_t n)
{
    size_t i = 0;
    while (i < n && (s[i] == ' ' || s[i] == '\t'))
        i++;
    raw_put(o, s, i);
    /* A quoted value, possibly with escaped quotes: `"a b"` or `\"a b\"`. */
    size_t ql = 0;
    if (i < n && is_quote((unsigned char)s[i]))
        ql = 1;
    else if (i + 1 < n && s[i] == '\\' && is_quote((unsigned char)s[i + 1]))
        ql = 2;
    if (ql > 0) {
        const char *q = s + i;
        size_t j = i + ql;
        while (j < n &&
               !(j + ql <= n && memcmp(s + j, q, ql) == 0 && (ql == 2 || s[j - 1] != '\\')))
            j++;
        raw_put(o, q, ql);
        if (j > i + ql)
            raw_put(o, REDACTED, sizeof(REDACTED) - 1);
        if (j < n) {
            raw_put(o, q, ql);
            j += ql;
        }
        return j;
    }
    size_t v = value_run(s + i, n - i);
    if (v == 0)
        return i;
    /* "Authorization: Bearer <token>": the scheme stays, the credential goes. */
    static const word_t SCHEMES[] = {WORD("bearer"), WORD("basic"), WORD("digest")};
    bool scheme = false;
    for (size_t k = 0; k < COUNT(SCHEMES) && !scheme; k++)
        scheme = word_eq(s + i, v, &SCHEMES[k]);
    if (scheme) {
        size_t j = i + v;
        size_t sp = 0;
        while (j + sp < n && s[j + sp] == ' ')
            sp++;
        size_t t = value_run(s + j + sp, n - j - sp);
        if (sp > 0 && t > 0) {
            raw_put(o, s + i, v + sp);
            raw_put(o, REDACTED, sizeof(REDACTED) - 1);
            return j + sp + t;
        }
    }
    raw_put(o, REDACTED, sizeof(REDACTED) - 1);
    return i + v;
}

/*
 * "scheme://user:password@host": masks the password. s points just after
 * "://"; returns how much was consumed (0 when there is no user:password@).
 */
static size_t mask_userinfo(raw_out_t *o, const char *s, size_t n)
{
    size_t at = 0;
    size_t colon = n;
    while (at < n) {
        int c = (unsigned char)s[at];
        if (c == '@' || c == '/' || c == '?' || c == '#' || is_space(c) || is_quote(c) ||
            c == '<' || c == '>')
            break;
        if (c == ':' && colon == n)
            colon = at;
        at++;
    }
    if (at >= n || s[at] != '@' || colon == n)
        return 0;
    raw_put(o, s, colon + 1);
    raw_put(o, REDACTED, sizeof(REDACTED) - 1);
    return at;
}

/* Drops an incomplete UTF-8 sequence at the end of s[0..len). */
static size_t trim_partial_utf8(const char *s, size_t len)
{
    size_t i = len;
    size_t cont = 0;
    while (cont < 3 && i > 0 && ((unsigned char)s[i - 1] & 0xC0u) == 0x80u) {
        i--;
        cont++;
    }
    if (i == 0)
        return len;
    unsigned char lead = (unsigned char)s[i - 1];
    size_t need = lead >= 0xF0u ? 4 : lead >= 0xE0u ? 3 : lead >= 0xC0u ? 2 : 1;
    if (need > 1 && need > cont + 1)
        return i - 1;
    return len;
}

/*
 * Copies msg into o with secrets masked: values after a secret name and '='
 * or ':', JWTs, API keys, passwords in URLs. Stops when o is full (o->full).
 * input_cut says s[0..n) is the start of a longer message: a token running
 * into the cut may be a secret whose tail would have identified it, so it is
 * dropped.
 */
static void mask_message(raw_out_t *o, const char *s, size_t n, bool input_cut)
{
    size_t i = 0;
    while (i < n && !o->full) {
        int c = (unsigned char)s[i];
        size_t m = 0;
        if (c == 'e')
            m = match_jwt(s + i, n - i);
        else if (c == 'i' || c == 'I')
            m = match_api_key(s + i, n - i);
        if (m > 0) {
            raw_put(o, REDACTED, sizeof(REDACTED) - 1);
            i += m;
            continue;
        }
        if (c == ':' && i + 2 < n && s[i + 1] == '/' && s[i + 2] == '/') {
            raw_put(o, s + i, 3);
            i += 3;
            i += mask_userinfo(o, s + i, n - i);
            continue;
        }
        if ((c == '=' || c == ':') && secret_name_before(s, i)) {
            raw_put(o, s + i, 1);
            i++;
            i += mask_value(o, s + i, n - i);
            continue;
        }
        raw_put(o, s + i, 1);
        i++;
    }
    if (o->full) {
        o->len = trim_partial_utf8(o->p, o->len);
    } else if (input_cut) {
        /* A JWT or API key running into the cut was not recognised (it is
         * incomplete): drop it from where it starts. */
        size_t t = o->len;
        while (t > 0 && (is_b64url((unsigned char)o->p[t - 1]) || o->p[t - 1] == '.'))
            t--;
        for (; t < o->len; t++) {
            size_t rest = o->len - t;
            if ((rest >= 3 && memcmp(o->p + t, "eyJ", 3) == 0) ||
                (rest >= 4 && lower((unsigned char)o->p[t]) == 'i' &&
                 lower((unsigned char)o->p[t + 1]) == 'o' &&
                 lower((unsigned char)o->p[t + 2]) == 't' && o->p[t + 3] == '_')) {
                o->len = t;
                break;
            }
        }
    }
}

/* ------------------------------------------------------------------------ */
/* JSON output                                                              */

/* Output buffer; p == NULL only measures. */
typedef struct wbuf {
    char *p;
    size_t len;
    size_t cap;
} wbuf_t;

static bool put(wbuf_t *w, const char *s, size_t n)
{
    if (n > w->cap - w->len)
        return false;
    if (w->p != NULL)
        memcpy(w->p + w->len, s, n);
    w->len += n;
    return true;
}

static bool puts_(wbuf_t *w, const char *s)
{
    return put(w, s, strlen(s));
}

/* Length of the valid UTF-8 sequence (2-4 bytes) at s, 0 when invalid
 * (overlong forms, surrogates and code points above U+10FFFF included). */
static size_t utf8_seq(const unsigned char *s, size_t n)
{
    unsigned char c = s[0];
    unsigned char lo = 0x80;
    unsigned char hi = 0xBF;
    size_t len;
    if (c < 0xC2 || c > 0xF4)
        return 0;
    if (c <= 0xDF) {
        len = 2;
    } else if (c <= 0xEF) {
        len = 3;
        if (c == 0xE0)
            lo = 0xA0;
        else if (c == 0xED)
            hi = 0x9F;
    } else {
        len = 4;
        if (c == 0xF0)
            lo = 0x90;
        else if (c == 0xF4)
            hi = 0x8F;
    }
    if (n < len || s[1] < lo || s[1] > hi)
        return 0;
    for (size_t k = 2; k < len; k++) {
        if (s[k] < 0x80 || s[k] > 0xBF)
            return 0;
    }
    return len;
}

static bool plain_ascii(unsigned char c)
{
    return c >= 0x20 && c < 0x7F && c != '"' && c != '\\';
}

/*
 * Appends s[0..n) as the inside of a JSON string, never beyond limit (a length
 * of w, at most w->cap). Escapes and UTF-8 sequences are written whole or not
 * at all. Returns true when all of s was written.
 */
static bool put_escaped(wbuf_t *w, const char *str, size_t n, size_t limit)
{
    static const char HEX[] = "0123456789abcdef";
    const unsigned char *s = (const unsigned char *)str;
    size_t cap = w->cap;
    if (limit < cap)
        w->cap = limit;
    bool ok = true;
    size_t i = 0;
    while (i < n) {
        if (plain_ascii(s[i])) {
            size_t run = 1;
            while (i + run < n && plain_ascii(s[i + run]))
                run++;
            size_t room = w->cap - w->len;
            if (run > room) {
                put(w, str + i, room);
                ok = false;
                break;
            }
            put(w, str + i, run);
            i += run;
            continue;
        }
        char esc[6];
        const char *unit = esc;
        size_t ulen;
        size_t used = 1;
        switch (s[i]) {
        case '"':
            unit = "\\\"";
            ulen = 2;
            break;
        case '\\':
            unit = "\\\\";
            ulen = 2;
            break;
        case '\n':
            unit = "\\n";
            ulen = 2;
            break;
        case '\r':
            unit = "\\r";
            ulen = 2;
            break;
        case '\t':
            unit = "\\t";
            ulen = 2;
            break;
        default:
            if (s[i] < 0x80) {
                /* Other control characters and DEL. */
                esc[0] = '\\';
                esc[1] = 'u';
                esc[2] = '0';
                esc[3] = '0';
                esc[4] = HEX[s[i] >> 4];
                esc[5] = HEX[s[i] & 0x0F];
                ulen = 6;
            } else {
                used = utf8_seq(s + i, n - i);
                if (used == 0) {
                    /* An invalid byte becomes U+FFFD. */
                    unit = "\xEF\xBF\xBD";
                    ulen = 3;
                    used = 1;
                } else if (used == 3 && s[i] == 0xE2 && s[i + 1] == 0x80 &&
                           (s[i + 2] == 0xA8 || s[i + 2] == 0xA9)) {
                    /* U+2028/U+2029 end lines in JavaScript: escape them. */
                    unit = s[i + 2] == 0xA8 ? "\\u2028" : "\\u2029";
                    ulen = 6;
                } else {
                    unit = str + i;
                    ulen = used;
                }
            }
            break;
        }
        if (!put(w, unit, ulen)) {
            ok = false;
            break;
        }
        i += used;
    }
    w->cap = cap;
    return ok;
}

static size_t min_size(size_t a, size_t b)
{
    return a < b ? a : b;
}

/* Writes a double as JSON: non-finite values (which JSON lacks) as null. */
static bool put_double(wbuf_t *w, double d)
{
    if (!isfinite(d))
        return puts_(w, "null");
    char tmp[40];
    int n = snprintf(tmp, sizeof(tmp), "%.15g", d);
    if (n <= 0 || (size_t)n >= sizeof(tmp))
        return puts_(w, "null");
    /* A locale may have set ',' as the decimal separator. */
    for (int k = 0; k < n; k++) {
        if (tmp[k] == ',')
            tmp[k] = '.';
        else if (!((tmp[k] >= '0' && tmp[k] <= '9') || tmp[k] == '.' || tmp[k] == '-' ||
                   tmp[k] == '+' || tmp[k] == 'e'))
            return puts_(w, "null");
    }
    return put(w, tmp, (size_t)n);
}

static bool key_is_reserved(const char *key)
{
    /* Checked for every field: most keys differ in the first letter. */
    if (key[0] != 't' && key[0] != 'l' && key[0] != 'm' && key[0] != 'c')
        return false;
    static const char *const RESERVED[] = {"ts", "level", "module", "msg", "cid", "truncated"};
    for (size_t i = 0; i < sizeof(RESERVED) / sizeof(RESERVED[0]); i++) {
        if (strcmp(key, RESERVED[i]) == 0)
            return true;
    }
    return false;
}

/* Writes a value other than a non-NULL string. */
static bool put_scalar(wbuf_t *w, const em_log_field_t *f)
{
    char num[32];
    switch (f->kind) {
    case EM_LOG_FIELD_INT: {
        /* By hand: this runs for most fields of most lines. The magnitude is
         * taken as unsigned so that LLONG_MIN needs no special case. */
        unsigned long long v =
            f->i < 0 ? 0ULL - (unsigned long long)f->i : (unsigned long long)f->i;
        size_t pos = sizeof(num);
        do {
            num[--pos] = (char)('0' + v % 10);
            v /= 10;
        } while (v != 0);
        if (f->i < 0)
            num[--pos] = '-';
        return put(w, num + pos, sizeof(num) - pos);
    }
    case EM_LOG_FIELD_DOUBLE:
        return put_double(w, f->d);
    case EM_LOG_FIELD_BOOL:
        return puts_(w, f->i != 0 ? "true" : "false");
    case EM_LOG_FIELD_STR:
    default:
        return puts_(w, "null");
    }
}

/*
 * Appends one field. Returns false when it did not fit whole: either nothing
 * of it was written, or (for a string) its value was cut.
 */
static bool put_field(wbuf_t *w, const em_log_field_t *f)
{
    if (f->key == NULL)
        return true;
    size_t save = w->len;
    /* A field may not pass itself off as one of the line's own keys. */
    bool ok = puts_(w, key_is_reserved(f->key) ? ",\"_" : ",\"") &&
              put_escaped(w, f->key, strnlen(f->key, INPUT_SCAN_MAX), w->len + KEY_OUT_MAX) &&
              puts_(w, "\":");
    if (ok) {
        if (em_log_key_is_secret(f->key)) {
            ok = puts_(w, "\"" REDACTED "\"");
        } else if (f->kind == EM_LOG_FIELD_STR && f->s != NULL) {
            ok = puts_(w, "\"") && w->len < w->cap;
            if (ok) {
                /* The closing quote always fits: the value stops one byte short. */
                size_t start = w->len;
                ok = put_escaped(w, f->s, strnlen(f->s, INPUT_SCAN_MAX), w->cap - 1);
                if (ok || w->len - start >= VALUE_CUT_MIN) {
                    put(w, "\"", 1);
                    return ok;
                }
            }
        } else {
            ok = put_scalar(w, f);
        }
    }
    if (!ok)
        w->len = save;
    return ok;
}

/* Appends cid and the fields; stops at the first that does not fit whole. */
static bool put_rest(wbuf_t *w, const char *cid, const em_log_field_t *fields, size_t nfields)
{
    if (cid != NULL) {
        size_t save = w->len;
        if (!puts_(w, ",\"cid\":\"") || w->len >= w->cap) {
            w->len = save;
            return false;
        }
        bool whole = put_escaped(w, cid, strnlen(cid, INPUT_SCAN_MAX),
                                 min_size(w->cap - 1, w->len + CID_OUT_MAX));
        put(w, "\"", 1);
        if (!whole)
            return false;
    }
    for (size_t i = 0; i < nfields; i++) {
        if (!put_field(w, &fields[i]))
            return false;
    }
    return true;
}

/* The date and time of day change once a second; each thread keeps the text
 * of the last second it formatted. */
static _Thread_local struct {
    time_t sec;
    size_t len;
    char text[48];
} tl_ts = {(time_t)-1, 0, ""};

/* Writes "YYYY-MM-DDTHH:MM:SS.mmmZ" for now. */
static void put_timestamp(wbuf_t *w)
{
    struct timespec ts;
    if (clock_gettime(CLOCK_REALTIME, &ts) != 0) {
        puts_(w, "1970-01-01T00:00:00.000Z");
        return;
    }
    if (ts.tv_sec != tl_ts.sec) {
        struct tm tm;
        int n = -1;
        if (gmtime_r(&ts.tv_sec, &tm) != NULL)
            n = snprintf(tl_ts.text, sizeof(tl_ts.text), "%04d-%02d-%02dT%02d:%02d:%02d",
                         tm.tm_year + 1900, tm.tm_mon + 1, tm.tm_mday, tm.tm_hour, tm.tm_min,
                         tm.tm_sec);
        if (n <= 0 || (size_t)n >= sizeof(tl_ts.text)) {
            puts_(w, "1970-01-01T00:00:00.000Z");
            return;
        }
        tl_ts.sec = ts.tv_sec;
        tl_ts.len = (size_t)n;
    }
    long ms = ts.tv_nsec / 1000000L;
    char frac[6] = {
        '.', (char)('0' + ms / 100), (char)('0' + ms / 10 % 10), (char)('0' + ms % 10), 'Z', '\0'};
    put(w, tl_ts.text, tl_ts.len);
    put(w, frac, 5);
}

/*
 * Builds and delivers one line. msg_cut says the caller already cut msg
 * (em_logf's buffer was too small).
 */
static void log_line(em_log_level_t level, const char *module, const char *cid, const char *msg,
                     size_t msg_len, bool msg_cut, const em_log_field_t *fields, size_t nfields)
{
    char out[EM_LOG_LINE_MAX];
    char masked[EM_LOG_LINE_MAX];
    const size_t line_max = EM_LOG_LINE_MAX - 1; /* room for the NUL */

    if (msg_cut)
        msg_len = trim_partial_utf8(msg, msg_len);
    raw_out_t mo = {masked, 0, sizeof(masked), false};
    mask_message(&mo, msg, msg_len, msg_cut);
    bool cut = msg_cut || mo.full;

    /* Pass one: everything, leaving room for the closing "}\n". */
    wbuf_t w = {out, 0, line_max - 2};
    puts_(&w, "{\"ts\":\"");
    put_timestamp(&w);
    puts_(&w, "\",\"level\":\"");
    puts_(&w, LEVEL_NAMES[level]);
    puts_(&w, "\"");
    if (module != NULL) {
        puts_(&w, ",\"module\":\"");
        if (!put_escaped(&w, module, strnlen(module, INPUT_SCAN_MAX), w.len + MODULE_OUT_MAX))
            cut = true;
        puts_(&w, "\"");
    }
    size_t head_len = w.len;
    if (!cut) {
        bool whole = puts_(&w, ",\"msg\":\"") && put_escaped(&w, masked, mo.len, w.cap - 1) &&
                     puts_(&w, "\"") && put_rest(&w, cid, fields, nfields);
        if (whole) {
            memcpy(out + w.len, "}\n", 3);
            deliver(level, out, w.len + 2);
            return;
        }
    }

    /*
     * Pass two: something did not fit. The header stays; the message keeps
     * up to MSG_KEEP bytes, cid and the fields take what they need of the
     * rest, then the message gets whatever is left.
     */
    const size_t msg_wrap = sizeof(",\"msg\":\"\"") - 1;
    size_t budget = line_max - TAIL_TRUNCATED_LEN - head_len - msg_wrap;
    wbuf_t measure = {NULL, 0, EM_LOG_LINE_MAX};
    put_escaped(&measure, masked, mo.len, measure.cap);
    size_t keep = min_size(min_size(measure.len, MSG_KEEP), budget);

    char rest[EM_LOG_LINE_MAX];
    wbuf_t r = {rest, 0, budget - keep};
    put_rest(&r, cid, fields, nfields);

    w.len = head_len;
    w.cap = line_max - TAIL_TRUNCATED_LEN;
    puts_(&w, ",\"msg\":\"");
    put_escaped(&w, masked, mo.len, w.cap - r.len - 1);
    puts_(&w, "\"");
    put(&w, rest, r.len);
    memcpy(out + w.len, TAIL_TRUNCATED, TAIL_TRUNCATED_LEN + 1);
    deliver(level, out, w.len + TAIL_TRUNCATED_LEN);
}

void em_log(em_log_level_t level, const char *module, const char *cid, const char *msg,
            const em_log_field_t *fields, size_t nfields)
{
    if (!em_log_enabled(level))
        return;
    int saved_errno = errno; /* logging must not disturb the caller's errno */
    if (fields == NULL)
        nfields = 0;
    if (msg == NULL)
        msg = "";
    /* Anything of msg past MSG_SCAN_MAX bytes could never be written. */
    size_t len = strnlen(msg, MSG_SCAN_MAX + 1);
    bool cut = len > MSG_SCAN_MAX;
    if (cut)
        len = MSG_SCAN_MAX;
    log_line(level, module, cid, msg, len, cut, fields, nfields);
    errno = saved_errno;
}

void em_logf(em_log_level_t level, const char *module, const char *fmt, ...)
{
    if (!em_log_enabled(level))
        return;
    int saved_errno = errno;
    char buf[EM_LOG_LINE_MAX];
    size_t len = 0;
    bool cut = false;
    if (fmt != NULL) {
        va_list ap;
        va_start(ap, fmt);
        int n = vsnprintf(buf, sizeof(buf), fmt, ap);
        va_end(ap);
        if (n > 0) {
            cut = (size_t)n >= sizeof(buf);
            len = cut ? sizeof(buf) - 1 : (size_t)n;
        }
    }
    log_line(level, module, NULL, buf, len, cut, NULL, 0);
    errno = saved_errno;
}
