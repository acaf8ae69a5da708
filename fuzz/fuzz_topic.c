/*
 * libFuzzer target: em_topic_parse (default prefix), em_topic_build of what it
 * accepts (must give back the same topic), and em_topic_prefix_validate.
 */
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "emiot/topic.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    static const char prefix[] = EM_TOPIC_PREFIX_DEFAULT;
    const char *topic = (const char *)data;
    const char *id = NULL;
    size_t id_len = 0;
    em_topic_kind_t kind;
    em_error_t err;
    em_err_t rc =
        em_topic_parse(prefix, sizeof(prefix) - 1, topic, size, &id, &id_len, &kind, &err);
    if (rc == EM_OK) {
        if (id < topic || id_len < 3 || id_len > 50 || (size_t)(id - topic) + id_len > size)
            abort();
        char idbuf[64];
        memcpy(idbuf, id, id_len);
        idbuf[id_len] = '\0';
        char out[EM_TOPIC_MAX + 1];
        size_t n = 0;
        if (em_topic_build(prefix, idbuf, kind, out, sizeof(out), &n) != EM_OK)
            abort();
        if (n != size || memcmp(out, topic, size) != 0)
            abort();
    } else if (rc != EM_ERR_PROTOCOL && rc != EM_ERR_VALIDATION) {
        abort();
    }

    /* The same bytes as a prefix (a C string: cut at the first NUL). */
    char p[EM_TOPIC_PREFIX_MAX + 8];
    size_t pn = size < sizeof(p) - 1 ? size : sizeof(p) - 1;
    memcpy(p, data, pn);
    p[pn] = '\0';
    if (em_topic_prefix_validate(p, &err) == EM_OK) {
        size_t l = strlen(p);
        if (l == 0 || l > EM_TOPIC_PREFIX_MAX || p[l - 1] != '/' || strchr(p, '+') ||
            strchr(p, '#'))
            abort();
        /* A valid prefix must accept a topic built on it. */
        char out[EM_TOPIC_MAX + 1];
        size_t n = 0;
        if (em_topic_build(p, "dev-1", EM_TOPIC_STATUS, out, sizeof(out), &n) != EM_OK)
            abort();
        if (em_topic_parse(p, l, out, n, &id, &id_len, &kind, &err) != EM_OK ||
            kind != EM_TOPIC_STATUS || id_len != 5 || memcmp(id, "dev-1", 5) != 0)
            abort();
    }
    return 0;
}
