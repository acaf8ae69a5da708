/*
 * emiot - fields.c: checks shared by the model decoders (see fields.h).
 */
#include "model/fields.h"

#include <math.h>
#include <string.h>

#include "emiot/clock.h"

em_err_t em__field_parse_object(const char *payload, size_t len, const char *field,
                                const char *rule, cJSON **root, em_error_t *err)
{
    *root = NULL;
    cJSON *r = em__json_parse(payload, len, err);
    if (r == NULL)
        return err != NULL ? err->code : EM_ERR_MESSAGE_FORMAT;
    if (!cJSON_IsObject(r)) {
        em__json_free(r);
        return em_error_set(err, EM_ERR_MESSAGE_FORMAT, EM_SEV_LOW, field, "%s", rule);
    }
    *root = r;
    return EM_OK;
}

bool em__field_int(const cJSON *v, int64_t lo, int64_t hi, int64_t *out)
{
    if (!cJSON_IsNumber(v))
        return false;
    double d = v->valuedouble;
    /* The range test comes first so that NaN and infinities fail it and the
     * conversion below is always defined. */
    if (!(d >= (double)lo && d <= (double)hi))
        return false;
    int64_t i = (int64_t)d;
    if ((double)i != d)
        return false;
    *out = i;
    return true;
}

bool em__field_finite(const cJSON *v, double *out)
{
    if (!cJSON_IsNumber(v) || !isfinite(v->valuedouble))
        return false;
    *out = v->valuedouble;
    return true;
}

em_err_t em__field_invalid(em_error_t *err, const char *field, const char *rule)
{
    return em_error_set(err, EM_ERR_VALIDATION, EM_SEV_LOW, field, "%s", rule);
}

em_err_t em__field_timestamp(const cJSON *v, const char *field, int64_t *out, em_error_t *err)
{
    if (cJSON_IsString(v)) {
        em_error_t terr;
        const char *s = v->valuestring;
        /* A string longer than any timestamp is refused without measuring all
         * of it. */
        size_t n = strnlen(s, 64);
        if (em_time_parse(s, n, out, &terr) != EM_OK)
            return em_error_set(err, EM_ERR_VALIDATION, EM_SEV_LOW, field, "%s", terr.message);
        if (*out > EM__TIMESTAMP_MAX_MS)
            return em__field_invalid(err, field, "must not be later than year 9999");
        return EM_OK;
    }
    if (em__field_int(v, 0, EM__TIMESTAMP_MAX_MS, out))
        return EM_OK;
    return em__field_invalid(err, field,
                             "must be an RFC 3339 string or an integer of epoch milliseconds >= 0");
}

em_err_t em__field_compact(const cJSON *v, const char *field, const char *rule, size_t max,
                           char **out, em_error_t *err)
{
    *out = NULL;
    if (v->child == NULL)
        return EM_OK;
    em_err_t rc = em__json_print_bounded(v, max, out);
    if (rc == EM_ERR_NOMEM)
        return em_error_set(err, EM_ERR_NOMEM, EM_SEV_HIGH, field, "out of memory");
    if (rc != EM_OK)
        return em__field_invalid(err, field, rule);
    return EM_OK;
}
