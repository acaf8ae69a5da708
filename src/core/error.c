/*
 * emiot - error.c: error names, descriptions and details (see error.h).
 */
#include "emiot/error.h"

#include <stdarg.h>
#include <stdio.h>
#include <string.h>

const char *em_strerror(em_err_t code)
{
    switch (code) {
#define EM__ERR_DESC(name, value, type_name, desc)                                                 \
    case EM_ERR_##name:                                                                            \
        return desc;
        EM_ERR_TABLE(EM__ERR_DESC)
#undef EM__ERR_DESC
    }
    return "unknown error";
}

const char *em_err_name(em_err_t code)
{
    switch (code) {
#define EM__ERR_NAME(name, value, type_name, desc)                                                 \
    case EM_ERR_##name:                                                                            \
        return type_name;
        EM_ERR_TABLE(EM__ERR_NAME)
#undef EM__ERR_NAME
    }
    return "unknown";
}

const char *em_severity_name(em_severity_t sev)
{
    switch (sev) {
    case EM_SEV_LOW:
        return "low";
    case EM_SEV_MEDIUM:
        return "medium";
    case EM_SEV_HIGH:
        return "high";
    case EM_SEV_CRITICAL:
        return "critical";
    }
    return "unknown";
}

/* Copies src into a fixed buffer, truncating; dst always ends up terminated. */
static void copy_bounded(char *dst, size_t size, const char *src)
{
    if (src == NULL) {
        dst[0] = '\0';
        return;
    }
    size_t n = strnlen(src, size - 1);
    memcpy(dst, src, n);
    dst[n] = '\0';
}

em_err_t em_error_set(em_error_t *err, em_err_t code, em_severity_t sev, const char *field,
                      const char *fmt, ...)
{
    if (err == NULL)
        return code;
    err->code = code;
    err->severity = sev;
    copy_bounded(err->field, sizeof(err->field), field);
    if (fmt != NULL) {
        va_list ap;
        va_start(ap, fmt);
        int n = vsnprintf(err->message, sizeof(err->message), fmt, ap);
        va_end(ap);
        if (n < 0)
            err->message[0] = '\0';
    } else {
        copy_bounded(err->message, sizeof(err->message), em_strerror(code));
    }
    return code;
}

void em_error_set_device(em_error_t *err, const char *device_id)
{
    if (err != NULL)
        copy_bounded(err->device_id, sizeof(err->device_id), device_id);
}

void em_error_clear(em_error_t *err)
{
    if (err == NULL)
        return;
    memset(err, 0, sizeof(*err));
    err->code = EM_OK;
}
