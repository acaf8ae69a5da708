/*
 * emiot - clock.c: clocks and RFC 3339 timestamps (see clock.h).
 *
 * Conversions between calendar dates and day numbers use Howard Hinnant's
 * days_from_civil / civil_from_days algorithms (proleptic Gregorian), so they
 * depend neither on the TZ environment variable nor on timegm, and work for
 * every int64_t millisecond value.
 */
#include "emiot/clock.h"

#include <stdbool.h>
#include <stdio.h>
#include <time.h>

#define MS_PER_DAY 86400000LL

int64_t em_now_ms(void)
{
    struct timespec ts;
    if (clock_gettime(CLOCK_REALTIME, &ts) != 0)
        return 0;
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

int64_t em_mono_ms(void)
{
    struct timespec ts;
    if (clock_gettime(CLOCK_MONOTONIC, &ts) != 0)
        return 0;
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

/* Days since 1970-01-01 of y-m-d (m 1..12, d 1..31). */
static int64_t days_from_civil(int64_t y, unsigned m, unsigned d)
{
    y -= m <= 2;
    const int64_t era = (y >= 0 ? y : y - 399) / 400;
    const unsigned yoe = (unsigned)(y - era * 400);                       /* [0, 399] */
    const unsigned doy = (153 * (m > 2 ? m - 3 : m + 9) + 2) / 5 + d - 1; /* [0, 365] */
    const unsigned doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;           /* [0, 146096] */
    return era * 146097 + (int64_t)doe - 719468;
}

/* Inverse of days_from_civil. */
static void civil_from_days(int64_t z, int64_t *y, unsigned *m, unsigned *d)
{
    z += 719468;
    const int64_t era = (z >= 0 ? z : z - 146096) / 146097;
    const unsigned doe = (unsigned)(z - era * 146097);
    const unsigned yoe = (doe - doe / 1460 + doe / 36524 - doe / 146096) / 365;
    const unsigned doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    const unsigned mp = (5 * doy + 2) / 153;
    *d = doy - (153 * mp + 2) / 5 + 1;
    *m = mp < 10 ? mp + 3 : mp - 9;
    *y = (int64_t)yoe + era * 400 + (*m <= 2);
}

static bool is_leap(unsigned y)
{
    return (y % 4 == 0 && y % 100 != 0) || y % 400 == 0;
}

static unsigned days_in_month(unsigned y, unsigned m)
{
    static const unsigned char dim[12] = {31, 28, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31};
    return m == 2 && is_leap(y) ? 29 : dim[m - 1];
}

/* Reads exactly n decimal digits at s[*pos]; false if any is not a digit. */
static bool digits(const char *s, size_t len, size_t *pos, unsigned n, unsigned *out)
{
    if (len - *pos < n)
        return false;
    unsigned v = 0;
    for (unsigned i = 0; i < n; i++) {
        char c = s[*pos + i];
        if (c < '0' || c > '9')
            return false;
        v = v * 10 + (unsigned)(c - '0');
    }
    *pos += n;
    *out = v;
    return true;
}

static bool expect(const char *s, size_t len, size_t *pos, char c)
{
    if (*pos >= len || s[*pos] != c)
        return false;
    (*pos)++;
    return true;
}

#define SHAPE "must be an RFC 3339 timestamp like 2026-11-22T10:00:00Z"

/* The fields of a timestamp as written, before any range check. */
typedef struct stamp {
    unsigned year, mon, day, hour, min, sec, frac_ms;
    int offset_min; /* east of UTC */
} stamp_t;

/* Reads the optional fraction of a second at s[*pos] (truncated to ms). */
static const char *read_fraction(const char *s, size_t len, size_t *pos, unsigned *frac_ms)
{
    *frac_ms = 0;
    if (*pos >= len || s[*pos] != '.')
        return NULL;
    (*pos)++;
    unsigned n = 0;
    while (*pos < len && s[*pos] >= '0' && s[*pos] <= '9') {
        /* Sub-millisecond digits are read and dropped. */
        if (n < 3)
            *frac_ms = *frac_ms * 10 + (unsigned)(s[*pos] - '0');
        n++;
        (*pos)++;
    }
    if (n == 0 || n > 9)
        return "fraction of a second must have 1 to 9 digits";
    for (; n < 3; n++)
        *frac_ms *= 10;
    return NULL;
}

/* Reads "Z", "z", "+hh:mm" or "-hh:mm" at s[*pos]. */
static const char *read_offset(const char *s, size_t len, size_t *pos, int *offset_min)
{
    *offset_min = 0;
    if (*pos < len && (s[*pos] == 'Z' || s[*pos] == 'z')) {
        (*pos)++;
        return NULL;
    }
    if (*pos >= len || (s[*pos] != '+' && s[*pos] != '-'))
        return "offset must be Z or +hh:mm / -hh:mm";
    int sign = s[*pos] == '-' ? -1 : 1;
    unsigned oh, om;
    (*pos)++;
    if (!digits(s, len, pos, 2, &oh) || !expect(s, len, pos, ':') || !digits(s, len, pos, 2, &om))
        return "offset must be Z or +hh:mm / -hh:mm";
    if (oh > 23 || om > 59)
        return "offset must be between -23:59 and +23:59";
    *offset_min = sign * (int)(oh * 60 + om);
    return NULL;
}

/* Splits s into its fields; returns the rule broken, or NULL. */
static const char *read_stamp(const char *s, size_t len, stamp_t *t)
{
    size_t pos = 0;
    if (!digits(s, len, &pos, 4, &t->year) || !expect(s, len, &pos, '-') ||
        !digits(s, len, &pos, 2, &t->mon) || !expect(s, len, &pos, '-') ||
        !digits(s, len, &pos, 2, &t->day))
        return SHAPE;
    if (pos >= len || (s[pos] != 'T' && s[pos] != 't'))
        return SHAPE;
    pos++;
    if (!digits(s, len, &pos, 2, &t->hour) || !expect(s, len, &pos, ':') ||
        !digits(s, len, &pos, 2, &t->min) || !expect(s, len, &pos, ':') ||
        !digits(s, len, &pos, 2, &t->sec))
        return SHAPE;
    const char *why = read_fraction(s, len, &pos, &t->frac_ms);
    if (why == NULL)
        why = read_offset(s, len, &pos, &t->offset_min);
    if (why == NULL && pos != len)
        why = "unexpected characters after the timestamp";
    return why;
}

/* Checks the fields against the calendar; returns the rule broken, or NULL. */
static const char *check_stamp(const stamp_t *t)
{
    if (t->year < 1970)
        return "year must be between 1970 and 9999";
    if (t->mon < 1 || t->mon > 12)
        return "month must be between 01 and 12";
    if (t->day < 1 || t->day > days_in_month(t->year, t->mon))
        return "day does not exist in that month";
    if (t->hour > 23)
        return "hour must be between 00 and 23";
    if (t->min > 59)
        return "minute must be between 00 and 59";
    /* Leap seconds (":60") cannot be placed without a leap-second table and
     * no device clock emits them in practice; they are refused, as most
     * RFC 3339 consumers (JavaScript's Date among them) do. */
    if (t->sec > 59)
        return "second must be between 00 and 59";
    return NULL;
}

em_err_t em_time_parse(const char *s, size_t len, int64_t *out_ms, em_error_t *err)
{
    if (s == NULL || out_ms == NULL)
        return em_error_set(err, EM_ERR_INVALID_ARGUMENT, EM_SEV_LOW, NULL, "no timestamp");
    stamp_t t;
    const char *why = read_stamp(s, len, &t);
    if (why == NULL)
        why = check_stamp(&t);
    if (why != NULL)
        return em_error_set(err, EM_ERR_VALIDATION, EM_SEV_LOW, NULL, "%s", why);
    int64_t days = days_from_civil((int64_t)t.year, t.mon, t.day);
    int64_t ms = days * MS_PER_DAY + (int64_t)t.hour * 3600000 + (int64_t)t.min * 60000 +
                 (int64_t)t.sec * 1000 + t.frac_ms - (int64_t)t.offset_min * 60000;
    if (ms < 0)
        return em_error_set(err, EM_ERR_VALIDATION, EM_SEV_LOW, NULL, "%s",
                            "timestamp is before 1970-01-01T00:00:00Z");
    *out_ms = ms;
    return EM_OK;
}

size_t em_time_format(int64_t ms, char *buf, size_t size)
{
    if (buf == NULL || size == 0)
        return 0;
    /* Floor division so that times before 1970 land on the right day. */
    int64_t days = ms / MS_PER_DAY;
    int64_t rem = ms % MS_PER_DAY;
    if (rem < 0) {
        rem += MS_PER_DAY;
        days--;
    }
    int64_t y;
    unsigned m, d;
    civil_from_days(days, &y, &m, &d);
    unsigned r = (unsigned)rem;
    unsigned hh = r / 3600000, mm = r / 60000 % 60, ss = r / 1000 % 60, mss = r % 1000;
    int n;
    if (y >= 0 && y <= 9999)
        n = snprintf(buf, size, "%04d-%02u-%02uT%02u:%02u:%02u.%03uZ", (int)y, m, d, hh, mm, ss,
                     mss);
    else /* ISO 8601 expanded years, as JavaScript's toISOString writes them */
        n = snprintf(buf, size, "%c%06lld-%02u-%02uT%02u:%02u:%02u.%03uZ", y < 0 ? '-' : '+',
                     (long long)(y < 0 ? -y : y), m, d, hh, mm, ss, mss);
    if (n < 0 || (size_t)n >= size) {
        buf[0] = '\0';
        return 0;
    }
    return (size_t)n;
}
