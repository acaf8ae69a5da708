/*
 * emiot - status_fast.c: the fast path of em_status_decode
 * (see status_internal.h and docs/PERFORMANCE.md, "W1 and the JSON parser").
 *
 * Why it exists: W1 feeds a million status messages a second to one core,
 * and building a cJSON tree for each (a node and a string copy per member,
 * strncmp against "null"/"false"/"true" before every value, strtod with a
 * locale lookup for every number) cost three quarters of the instructions of
 * a message. jsmn only marks where each token starts and ends, in an array on
 * the stack, and allocates nothing.
 *
 * Why it is safe: jsmn is a tokenizer, not a validator. Even in strict mode it
 * lets through "{,}", "[:]", "{"a" "b"}", separators before the first value
 * and primitives such as "tru" or "01". So this file does not trust its
 * structure: it walks the bytes of the payload from token to token and checks
 * the JSON grammar itself (every separator, every gap, every primitive), and
 * declines whenever anything is not the common shape. Declining is always
 * correct: em_status_decode then uses the cJSON decoder in status.c, the
 * reference for every rule. What the fast path decides, it must decide
 * exactly as that decoder would (same result, same em_status_t, same err);
 * fuzz/fuzz_status_fast.c checks that differentially.
 */
#include <stdint.h>
#include <string.h>

/* jsmn's functions become static to this file; strict mode refuses bare
 * words and primitives used as keys (the rest of the grammar is checked
 * below). */
#define JSMN_STATIC
#define JSMN_STRICT
#define JSMN_PARENT_LINKS
#include <jsmn.h>

#include "core/json.h"
#include "model/fields.h"
#include "model/status_internal.h"

/* Tokens on the stack: the root object and up to 23 members. The common
 * message has seven members (15 tokens); a payload with more declines. */
#define FAST_TOKENS 48

/* Longest number (in bytes) the fast path accepts anywhere. cJSON reads at
 * most 63 bytes of a number and calls what follows invalid JSON, so numbers
 * near that length must be left to it. */
#define FAST_NUMBER_MAX 40

/* What a value is, as far as the rules care. */
typedef enum value_kind {
    V_STRING,       /* "..." without escapes */
    V_INT,          /* an integer that fits int64_t, in its JSON spelling */
    V_NUMBER,       /* any other valid JSON number: fraction, exponent, huge */
    V_LITERAL,      /* true, false or null */
    V_EMPTY_ARRAY,  /* [] */
    V_EMPTY_OBJECT, /* {} */
    V_DECLINE       /* not valid JSON, or not for the fast path */
} value_kind_t;

typedef struct value {
    value_kind_t kind;
    const char *s; /* V_STRING: the bytes between the quotes */
    size_t n;
    int64_t i; /* V_INT */
} value_t;

/* Outcome of applying the rules to one member. */
typedef enum step { STEP_OK, STEP_REJECT, STEP_DECLINE } step_t;

static bool is_digit(char c)
{
    return c >= '0' && c <= '9';
}

/* Index of the first byte at or after i (and before n) that is not a digit. */
static size_t skip_digits(const char *s, size_t i, size_t n)
{
    while (i < n && is_digit(s[i]))
        i++;
    return i;
}

/*
 * Classifies s[0..n), which starts with '-' or a digit, by RFC 8259's number
 * grammar: -?(0|[1-9][0-9]*)(\.[0-9]+)?([eE][+-]?[0-9]+)?. *iv gets the value
 * of an integer that fits int64_t (V_INT); any other valid number is
 * V_NUMBER, what is not valid V_DECLINE.
 */
static value_kind_t classify_number(const char *s, size_t n, int64_t *iv)
{
    if (n > FAST_NUMBER_MAX)
        return V_DECLINE;
    bool neg = s[0] == '-';
    size_t i = neg ? 1 : 0;
    if (i >= n || !is_digit(s[i]))
        return V_DECLINE;
    /* The integer part, accumulated with an overflow check: a value past
     * INT64_MAX is still a valid number, just not one converted here. */
    bool fits = true;
    int64_t v = 0;
    size_t int_end = s[i] == '0' ? i + 1 : skip_digits(s, i, n);
    for (; i < int_end; i++) {
        int d = s[i] - '0';
        fits = fits && v <= (INT64_MAX - d) / 10;
        if (fits)
            v = v * 10 + d;
    }
    bool integral = true;
    if (i < n && s[i] == '.') {
        size_t frac = i + 1;
        i = skip_digits(s, frac, n);
        if (i == frac)
            return V_DECLINE;
        integral = false;
    }
    if (i < n && (s[i] == 'e' || s[i] == 'E')) {
        size_t exp = i + 1;
        if (exp < n && (s[exp] == '+' || s[exp] == '-'))
            exp++;
        i = skip_digits(s, exp, n);
        if (i == exp)
            return V_DECLINE;
        integral = false;
    }
    if (i != n)
        return V_DECLINE;
    if (!integral || !fits)
        return V_NUMBER;
    *iv = neg ? -v : v;
    return V_INT;
}

/*
 * Classifies the primitive s[0..n) (n >= 1) by the exact grammar of RFC 8259:
 * true, false, null or a number. jsmn accepts any run of printable bytes
 * here, so everything else declines (cJSON then reports the invalid JSON, or
 * reads a spelling such as 007 its own way).
 */
static value_kind_t classify_primitive(const char *s, size_t n, int64_t *iv)
{
    switch (s[0]) {
    case 't':
        return n == 4 && memcmp(s, "true", 4) == 0 ? V_LITERAL : V_DECLINE;
    case 'f':
        return n == 5 && memcmp(s, "false", 5) == 0 ? V_LITERAL : V_DECLINE;
    case 'n':
        return n == 4 && memcmp(s, "null", 4) == 0 ? V_LITERAL : V_DECLINE;
    default:
        return classify_number(s, n, iv);
    }
}

/* The EM_STATUS_HAS_* bit of the key k[0..n), or 0 when it is not ours. */
static uint16_t key_bit(const char *k, size_t n)
{
#define KEY_IS(lit) (n == sizeof(lit) - 1 && memcmp(k, lit, sizeof(lit) - 1) == 0)
    if (n == 0)
        return 0;
    switch (k[0]) {
    case 'b':
        return KEY_IS("batteryLevel") ? EM_STATUS_HAS_BATTERY : 0;
    case 'p':
        return KEY_IS("powerMode") ? EM_STATUS_HAS_POWER_MODE : 0;
    case 'c':
        return KEY_IS("connectionStatus") ? EM_STATUS_HAS_CONNECTION : 0;
    case 'f':
        return KEY_IS("firmwareVersion") ? EM_STATUS_HAS_FIRMWARE : 0;
    case 's':
        return KEY_IS("signalStrength") ? EM_STATUS_HAS_SIGNAL : 0;
    case 'e':
        return KEY_IS("errors") ? EM_STATUS_HAS_ERRORS : 0;
    case 'a':
        return KEY_IS("additionalInfo") ? EM_STATUS_HAS_EXTRA : 0;
    default:
        return 0;
    }
#undef KEY_IS
}

/* The key of a bit, as err->field names it. */
static const char *bit_field(uint16_t bit)
{
    switch (bit) {
    case EM_STATUS_HAS_BATTERY:
        return "batteryLevel";
    case EM_STATUS_HAS_POWER_MODE:
        return "powerMode";
    case EM_STATUS_HAS_CONNECTION:
        return "connectionStatus";
    case EM_STATUS_HAS_FIRMWARE:
        return "firmwareVersion";
    case EM_STATUS_HAS_SIGNAL:
        return "signalStrength";
    case EM_STATUS_HAS_ERRORS:
        return "errors";
    default:
        return "additionalInfo";
    }
}

/* Index of s[0..n) in names[1..count-1], or 0. The payload holds no NUL, so
 * strncmp equal over n bytes means names[i] is at least n long. */
static unsigned lookup_name(const char *s, size_t n, const char *const *names, unsigned count)
{
    for (unsigned i = 1; i < count; i++)
        if (strncmp(names[i], s, n) == 0 && names[i][n] == '\0')
            return i;
    return 0;
}

/* An integer field: STEP_DECLINE for numbers that are not plain integers
 * (50.0 is 50 to cJSON; it decides those). */
static step_t int_field(const value_t *v, int64_t lo, int64_t hi, int64_t *out)
{
    if (v->kind == V_NUMBER)
        return STEP_DECLINE;
    if (v->kind != V_INT || v->i < lo || v->i > hi)
        return STEP_REJECT;
    *out = v->i;
    return STEP_OK;
}

/* Applies the rule of the known key bit to v, as decode_member in status.c
 * does; *rule gets the broken rule on STEP_REJECT. */
static step_t apply_rule(uint16_t bit, const value_t *v, em_status_t *st, const char **rule)
{
    int64_t i = 0;
    unsigned idx = 0;
    step_t r = STEP_REJECT;
    switch (bit) {
    case EM_STATUS_HAS_BATTERY:
        *rule = EM__STATUS_RULE_BATTERY;
        r = int_field(v, 0, 100, &i);
        if (r == STEP_OK)
            st->battery_level = (uint8_t)i;
        return r;
    case EM_STATUS_HAS_SIGNAL:
        *rule = EM__STATUS_RULE_SIGNAL;
        r = int_field(v, EM_SIGNAL_MIN, EM_SIGNAL_MAX, &i);
        if (r == STEP_OK)
            st->signal_strength = (int16_t)i;
        return r;
    case EM_STATUS_HAS_POWER_MODE:
        *rule = EM__STATUS_RULE_POWER_MODE;
        if (v->kind != V_STRING || (idx = lookup_name(v->s, v->n, em__status_power_mode_names,
                                                      EM__STATUS_POWER_MODES)) == 0)
            return STEP_REJECT;
        st->power_mode = (uint8_t)idx;
        return STEP_OK;
    case EM_STATUS_HAS_CONNECTION:
        *rule = EM__STATUS_RULE_CONNECTION;
        if (v->kind != V_STRING ||
            (idx = lookup_name(v->s, v->n, em__status_conn_names, EM__STATUS_CONNS)) == 0)
            return STEP_REJECT;
        st->connection = (uint8_t)idx;
        return STEP_OK;
    case EM_STATUS_HAS_FIRMWARE:
        *rule = EM__STATUS_RULE_FIRMWARE;
        if (v->kind != V_STRING || v->n == 0 || v->n > EM_FIRMWARE_VERSION_MAX)
            return STEP_REJECT;
        for (size_t k = 0; k < v->n; k++)
            if (!em__status_firmware_char((unsigned char)v->s[k]))
                return STEP_REJECT;
        memcpy(st->firmware_version, v->s, v->n);
        st->firmware_version[v->n] = '\0';
        return STEP_OK;
    case EM_STATUS_HAS_ERRORS:
        /* Non-empty lists never get here (the walk declines them); an empty
         * one is stored as NULL, as em__field_compact does. */
        *rule = EM__STATUS_RULE_ERRORS;
        return v->kind == V_EMPTY_ARRAY ? STEP_OK : STEP_REJECT;
    default: /* EM_STATUS_HAS_EXTRA */
        *rule = EM__STATUS_RULE_EXTRA;
        return v->kind == V_EMPTY_OBJECT ? STEP_OK : STEP_REJECT;
    }
}

/* First index at or after i (and before end) that is not JSON whitespace. A
 * plain ASCII payload has no tab, CR or LF, so only spaces are possible. */
static size_t skip_spaces(const char *s, size_t i, size_t end)
{
    while (i < end && s[i] == ' ')
        i++;
    return i;
}

/*
 * Reads the value whose token is t, which must start at s[pos] (pos < close),
 * and returns its kind; *next gets the offset just past it. Strings, valid
 * primitives and empty containers only: a container with anything inside
 * declines.
 */
static value_kind_t read_value(const char *s, size_t pos, size_t close, const jsmntok_t *t,
                               value_t *v, size_t *next)
{
    size_t start = (size_t)t->start, end = (size_t)t->end;
    switch (t->type) {
    case JSMN_STRING:
        /* start is just past the opening quote, end on the closing one. */
        if (s[pos] != '"' || start != pos + 1 || end >= close)
            return V_DECLINE;
        v->s = s + start;
        v->n = end - start;
        *next = end + 1;
        return V_STRING;
    case JSMN_PRIMITIVE:
        if (start != pos || end <= start || end > close)
            return V_DECLINE;
        *next = end;
        return classify_primitive(s + start, end - start, &v->i);
    case JSMN_ARRAY:
    case JSMN_OBJECT:
        /* end is just past the closing bracket; inside only spaces. */
        if (start != pos || t->size != 0 || end > close || end < start + 2 ||
            skip_spaces(s, start + 1, end - 1) != end - 1)
            return V_DECLINE;
        *next = end;
        return t->type == JSMN_ARRAY ? V_EMPTY_ARRAY : V_EMPTY_OBJECT;
    default:
        return V_DECLINE;
    }
}

/* Where the walk over the root object's members stands. */
typedef struct walk {
    const char *s;
    size_t close; /* offset of the root object's closing brace */
    const jsmntok_t *tok;
    int n;      /* tokens jsmn produced */
    int i;      /* next token: the key of the next member */
    size_t pos; /* next byte, never past close */
} walk_t;

/* Reads the member "key" : value at w->pos, up to the byte after the value;
 * false to decline. */
static bool next_member(walk_t *w, const char **key, size_t *key_len, value_t *v)
{
    const char *s = w->s;
    if (w->i + 1 >= w->n)
        return false;
    const jsmntok_t *k = &w->tok[w->i];
    size_t kstart = (size_t)k->start, kend = (size_t)k->end;
    if (k->type != JSMN_STRING || s[w->pos] != '"' || kstart != w->pos + 1 || kend >= w->close)
        return false;
    size_t pos = skip_spaces(s, kend + 1, w->close);
    if (pos >= w->close || s[pos] != ':')
        return false;
    pos = skip_spaces(s, pos + 1, w->close);
    if (pos >= w->close)
        return false;
    size_t next = pos;
    v->kind = read_value(s, pos, w->close, &w->tok[w->i + 1], v, &next);
    if (v->kind == V_DECLINE)
        return false;
    *key = s + kstart;
    *key_len = kend - kstart;
    w->i += 2;
    w->pos = next;
    return true;
}

/* Steps over what follows a member: a comma and the spaces before the next
 * key, or the spaces before the closing brace; false to decline. */
static bool next_separator(walk_t *w)
{
    w->pos = skip_spaces(w->s, w->pos, w->close);
    if (w->pos == w->close)
        return true;
    if (w->s[w->pos] != ',')
        return false;
    w->pos = skip_spaces(w->s, w->pos + 1, w->close);
    return w->pos < w->close; /* a comma before the brace is not JSON */
}

/* The first rule a payload breaks. */
typedef struct failure {
    const char *field;
    const char *rule;
} failure_t;

/* Applies the rules to one member, as the loop of em__status_decode_tree
 * does; a broken rule goes to *bad. False to decline. */
static bool take_member(const char *key, size_t key_len, const value_t *v, em_status_t *st,
                        failure_t *bad)
{
    uint16_t bit = key_bit(key, key_len);
    if (bit == 0)
        return true; /* unknown keys, repeated or not, are ignored */
    /* A second copy of a known key is refused, as in status.c. */
    const char *rule = EM__STATUS_RULE_DUPLICATE;
    step_t r = (st->has & bit) ? STEP_REJECT : apply_rule(bit, v, st, &rule);
    if (r == STEP_DECLINE)
        return false;
    if (r == STEP_REJECT) {
        bad->field = bit_field(bit);
        bad->rule = rule;
    } else {
        st->has |= bit;
    }
    return true;
}

bool em__status_decode_fast(const char *payload, size_t len, em_status_t *out, em_error_t *err,
                            em_err_t *rc)
{
    if (payload == NULL || len == 0 || len > EM_PAYLOAD_MAX || !em__json_plain_ascii(payload, len))
        return false;
    jsmn_parser parser;
    jsmntok_t tok[FAST_TOKENS];
    jsmn_init(&parser);
    /* JSMN_ERROR_NOMEM (more tokens than we hold), _INVAL and _PART all
     * decline, and so does a payload that is not an object. */
    int n = jsmn_parse(&parser, payload, len, tok, FAST_TOKENS);
    if (n < 1 || n > FAST_TOKENS || tok[0].type != JSMN_OBJECT || tok[0].start < 0 ||
        tok[0].end < tok[0].start + 2)
        return false;
    size_t open = (size_t)tok[0].start, close = (size_t)tok[0].end - 1;
    /* jsmn skips separators it does not expect (",{}" tokenizes as "{}"), so
     * the object must span the payload but for whitespace around it, as
     * em__json_parse requires. */
    if (close >= len || payload[close] != '}' || skip_spaces(payload, 0, open) != open ||
        skip_spaces(payload, close + 1, len) != len)
        return false;

    em_status_t st;
    memset(&st, 0, sizeof(st));
    walk_t w = {payload, close, tok, n, 1, skip_spaces(payload, open + 1, close)};
    /* The first broken rule is remembered, not reported at once: the rest of
     * the payload must still be valid JSON (or cJSON would report that
     * instead), and any later decline still declines. */
    failure_t bad = {NULL, NULL};
    while (w.pos < close) {
        const char *key = NULL;
        size_t key_len = 0;
        value_t v = {V_DECLINE, NULL, 0, 0};
        if (!next_member(&w, &key, &key_len, &v))
            return false;
        if (bad.rule == NULL && !take_member(key, key_len, &v, &st, &bad))
            return false;
        if (!next_separator(&w))
            return false;
    }
    if (w.i != n)
        return false; /* tokens the walk did not account for */

    if (bad.rule != NULL) {
        memset(out, 0, sizeof(*out));
        *rc = em__field_invalid(err, bad.field, bad.rule);
        return true;
    }
    *out = st;
    *rc = EM_OK;
    return true;
}
