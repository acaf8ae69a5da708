/*
 * emiotctl - output.c: tables for people, JSON for scripts.
 *
 * `-o json` prints the API's `data` as it came (indented), which is the
 * stable interface for scripts. Tables are for reading: a view names the
 * columns of each resource, columns missing from every row are left out (so
 * one view serves raw samples and rollups), times are shown in local time,
 * and every character the server sent that could drive the terminal
 * (control characters, escape sequences) is replaced before it is printed.
 * A table is printed in two passes (widths, then rows) so that no copy of
 * the cells is kept.
 */
#include <ctype.h>
#include <math.h>
#include <openssl/crypto.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "ctl.h"
#include "emiot/clock.h"

#define CELL_MAX        256 /* bytes of one cell, before truncation */
#define TABLE_WIDTH_MAX 60  /* characters of one table column */
#define GENERIC_COLS    10

void ctl_put_safe(FILE *out, const char *s)
{
    for (const unsigned char *p = (const unsigned char *)s; *p != '\0'; p++)
        (void)fputc(*p < 0x20 || *p == 0x7f ? '?' : *p, out);
}

void ctl_print_json(const cJSON *v)
{
    char *text = cJSON_Print(v);
    if (text == NULL) {
        ctl_err("out_of_memory", "out of memory");
        return;
    }
    (void)fputs(text, stdout);
    (void)fputc('\n', stdout);
    /* The text may hold a secret (a key just created): wipe it like the rest. */
    OPENSSL_cleanse(text, strlen(text));
    free(text);
}

void ctl_format_time(const cJSON *v, char *buf, size_t size)
{
    int64_t ms;
    em_error_t e;
    bool ok = false;
    if (cJSON_IsString(v))
        ok = em_time_parse(v->valuestring, strlen(v->valuestring), &ms, &e) == EM_OK;
    else if (cJSON_IsNumber(v) && isfinite(v->valuedouble) && v->valuedouble >= 0 &&
             v->valuedouble < 253402300800000.0)
        ok = (ms = (int64_t)v->valuedouble, true);
    struct tm tm;
    time_t t = ok ? (time_t)(ms / 1000) : 0;
    if (ok && localtime_r(&t, &tm) != NULL && strftime(buf, size, "%Y-%m-%d %H:%M:%S", &tm) > 0)
        return;
    if (cJSON_IsString(v))
        snprintf(buf, size, "%s", v->valuestring);
    else if (cJSON_IsNumber(v))
        snprintf(buf, size, "%.0f", v->valuedouble);
    else
        snprintf(buf, size, "-");
}

/* Follows "a.b.c" in an object; NULL when a step is missing. */
static const cJSON *lookup(const cJSON *o, const char *path)
{
    char step[64];
    while (o != NULL && *path != '\0') {
        const char *dot = strchr(path, '.');
        size_t n = dot != NULL ? (size_t)(dot - path) : strlen(path);
        if (n >= sizeof step || !cJSON_IsObject(o))
            return NULL;
        memcpy(step, path, n);
        step[n] = '\0';
        o = cJSON_GetObjectItemCaseSensitive(o, step);
        path += n + (dot != NULL);
    }
    return o;
}

static void scalar_text(const cJSON *v, char *buf, size_t size)
{
    if (v == NULL || cJSON_IsNull(v))
        snprintf(buf, size, "-");
    else if (cJSON_IsString(v))
        snprintf(buf, size, "%s", v->valuestring);
    else if (cJSON_IsBool(v))
        snprintf(buf, size, "%s", cJSON_IsTrue(v) ? "true" : "false");
    else if (cJSON_IsNumber(v) && v->valuedouble == floor(v->valuedouble) &&
             fabs(v->valuedouble) < 1e15)
        snprintf(buf, size, "%.0f", v->valuedouble);
    else if (cJSON_IsNumber(v))
        snprintf(buf, size, "%g", v->valuedouble);
    else {
        char *t = cJSON_PrintUnformatted(v);
        snprintf(buf, size, "%s", t != NULL ? t : "?");
        free(t);
    }
}

static void cell_text(const cJSON *v, ctl_col_kind_t kind, char *buf, size_t size)
{
    if (v == NULL || cJSON_IsNull(v)) {
        snprintf(buf, size, "-");
        return;
    }
    if (kind == COL_TIME) {
        ctl_format_time(v, buf, size);
    } else if (kind == COL_LIST && cJSON_IsArray(v)) {
        size_t len = 0;
        buf[0] = '\0';
        const cJSON *it;
        cJSON_ArrayForEach(it, v)
        {
            char one[CELL_MAX];
            scalar_text(it, one, sizeof one);
            int w = snprintf(buf + len, size - len, "%s%s", len ? "," : "", one);
            if (w < 0 || (size_t)w >= size - len)
                break;
            len += (size_t)w;
        }
        if (len == 0)
            snprintf(buf, size, "-");
    } else {
        scalar_text(v, buf, size);
    }
}

/* Characters as the terminal shows them (UTF-8 continuation bytes take no
 * column). */
static size_t width(const char *s)
{
    size_t w = 0;
    for (const unsigned char *p = (const unsigned char *)s; *p != '\0'; p++)
        w += (*p & 0xC0) != 0x80;
    return w;
}

/* Cuts s to at most max columns, ending in "..." when cut. */
static void clip(char *s, size_t max)
{
    if (width(s) <= max)
        return;
    size_t w = 0;
    unsigned char *p = (unsigned char *)s;
    for (; *p != '\0'; p++) {
        if ((*p & 0xC0) != 0x80 && w++ == max - 3)
            break;
    }
    memcpy(p, "...", 4);
}

static void put_padded(const char *s, size_t w, bool last)
{
    ctl_put_safe(stdout, s);
    if (!last)
        for (size_t i = width(s); i < w + 2; i++)
            (void)fputc(' ', stdout);
}

static bool col_present(const cJSON *rows, const ctl_col_t *col)
{
    const cJSON *row;
    cJSON_ArrayForEach(row, rows)
    {
        if (lookup(row, col->path) != NULL)
            return true;
    }
    return false;
}

/* Columns for rows no view matches: the scalar fields of the first row. */
static size_t generic_cols(const cJSON *rows, ctl_col_t *cols)
{
    size_t n = 0;
    const cJSON *first = cJSON_GetArrayItem(rows, 0);
    const cJSON *f;
    if (!cJSON_IsObject(first))
        return 0;
    cJSON_ArrayForEach(f, first)
    {
        if (n < GENERIC_COLS && f->string != NULL && !cJSON_IsObject(f)) {
            cols[n].header = f->string;
            cols[n].path = f->string;
            cols[n].kind = cJSON_IsArray(f) ? COL_LIST : COL_STR;
            n++;
        }
    }
    return n;
}

static void upper(const char *s, char *buf, size_t size)
{
    size_t i = 0;
    for (; s[i] != '\0' && i + 1 < size; i++)
        buf[i] = (char)toupper((unsigned char)s[i]);
    buf[i] = '\0';
}

static void print_table(const cJSON *rows, const ctl_view_t *view)
{
    ctl_col_t cols[32];
    size_t n = 0;
    for (size_t i = 0; view != NULL && i < view->ncols && n < 32; i++)
        if (col_present(rows, &view->cols[i]))
            cols[n++] = view->cols[i];
    if (n == 0)
        n = generic_cols(rows, cols);
    if (n == 0) {
        /* An array of scalars: one per line. */
        const cJSON *it;
        cJSON_ArrayForEach(it, rows)
        {
            char buf[CELL_MAX];
            scalar_text(it, buf, sizeof buf);
            ctl_put_safe(stdout, buf);
            (void)fputc('\n', stdout);
        }
        return;
    }

    size_t w[32];
    char head[64], buf[CELL_MAX];
    for (size_t i = 0; i < n; i++) {
        upper(cols[i].header, head, sizeof head);
        w[i] = width(head);
    }
    const cJSON *row;
    cJSON_ArrayForEach(row, rows)
    {
        for (size_t i = 0; i < n; i++) {
            cell_text(lookup(row, cols[i].path), cols[i].kind, buf, sizeof buf);
            clip(buf, TABLE_WIDTH_MAX);
            size_t cw = width(buf);
            w[i] = cw > w[i] ? cw : w[i];
        }
    }
    for (size_t i = 0; i < n; i++) {
        upper(cols[i].header, head, sizeof head);
        put_padded(head, w[i], i + 1 == n);
    }
    (void)fputc('\n', stdout);
    cJSON_ArrayForEach(row, rows)
    {
        for (size_t i = 0; i < n; i++) {
            cell_text(lookup(row, cols[i].path), cols[i].kind, buf, sizeof buf);
            clip(buf, TABLE_WIDTH_MAX);
            put_padded(buf, w[i], i + 1 == n);
        }
        (void)fputc('\n', stdout);
    }
}

static bool view_covers(const ctl_view_t *view, const char *key)
{
    size_t kl = strlen(key);
    for (size_t i = 0; view != NULL && i < view->ncols; i++) {
        const char *p = view->cols[i].path;
        if (strncmp(p, key, kl) == 0 && (p[kl] == '\0' || p[kl] == '.'))
            return true;
    }
    return false;
}

/* One object: "Field:  value" lines, the view's fields first, then the
 * others the server sent. */
static void print_object(const cJSON *obj, const ctl_view_t *view)
{
    char label[64], buf[1024];
    size_t lw = 0;
    for (size_t i = 0; view != NULL && i < view->ncols; i++)
        if (lookup(obj, view->cols[i].path) != NULL && strlen(view->cols[i].header) > lw)
            lw = strlen(view->cols[i].header);
    const cJSON *f;
    cJSON_ArrayForEach(f, obj)
    {
        if (f->string != NULL && !view_covers(view, f->string) && strlen(f->string) > lw)
            lw = strlen(f->string);
    }
    for (size_t i = 0; view != NULL && i < view->ncols; i++) {
        const cJSON *v = lookup(obj, view->cols[i].path);
        if (v == NULL)
            continue;
        cell_text(v, view->cols[i].kind, buf, sizeof buf);
        snprintf(label, sizeof label, "%s:", view->cols[i].header);
        put_padded(label, lw + 1, false);
        ctl_put_safe(stdout, buf);
        (void)fputc('\n', stdout);
    }
    cJSON_ArrayForEach(f, obj)
    {
        if (f->string == NULL || view_covers(view, f->string))
            continue;
        cell_text(f, cJSON_IsArray(f) ? COL_LIST : COL_JSON, buf, sizeof buf);
        snprintf(label, sizeof label, "%s:", f->string);
        put_padded(label, lw + 1, false);
        ctl_put_safe(stdout, buf);
        (void)fputc('\n', stdout);
    }
}

void ctl_print(const ctl_t *c, const cJSON *data, const ctl_view_t *view)
{
    if (c->quiet || data == NULL)
        return;
    if (c->format == CTL_OUT_JSON) {
        ctl_print_json(data);
    } else if (cJSON_IsArray(data) && cJSON_GetArraySize(data) == 0) {
        /* For the reader only: stdout stays empty, as scripts expect. */
        (void)fputs("(none)\n", stderr);
    } else if (cJSON_IsArray(data)) {
        print_table(data, view);
    } else if (cJSON_IsObject(data)) {
        print_object(data, view);
    } else {
        char buf[CELL_MAX];
        scalar_text(data, buf, sizeof buf);
        ctl_put_safe(stdout, buf);
        (void)fputc('\n', stdout);
    }
}

void ctl_print_list(const ctl_t *c, const cJSON *items, const ctl_view_t *view, const char *next,
                    const char *next_flag)
{
    ctl_print(c, items, view);
    if (!c->quiet && c->format == CTL_OUT_TABLE && next != NULL && next_flag != NULL) {
        fprintf(stderr, "(more: add %s ", next_flag);
        ctl_put_safe(stderr, next);
        fprintf(stderr, ", or --all)\n");
    }
}

int ctl_call(ctl_t *c, const char *method, const char *path, const cJSON *body,
             const ctl_view_t *view)
{
    ctl_resp_t r;
    int rc = ctl_request(c, method, path, body, true, false, &r);
    if (rc == 0)
        ctl_print(c, r.data, view);
    ctl_resp_cleanup(&r);
    return rc;
}

int ctl_call_done(ctl_t *c, const char *method, const char *path, const cJSON *body,
                  const char *done)
{
    ctl_resp_t r;
    int rc = ctl_request(c, method, path, body, true, false, &r);
    if (rc == 0 && !c->quiet) {
        if (c->format == CTL_OUT_JSON) {
            ctl_print_json(r.data);
        } else {
            ctl_put_safe(stdout, done);
            (void)fputc('\n', stdout);
        }
    }
    ctl_resp_cleanup(&r);
    return rc;
}
