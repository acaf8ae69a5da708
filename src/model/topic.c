/*
 * emiot - topic.c: the MQTT topic layout P<id>/<kind> (see topic.h).
 *
 * em_topic_parse runs for every incoming message, so it reads the topic once:
 * a memcmp of the prefix, one scan of the id (which also finds the '/' that
 * ends it), and a length-and-memcmp match of the kind. It never allocates.
 */
#include "emiot/topic.h"

#include <stdbool.h>
#include <string.h>

#include "emiot/device.h"

#define RULE_ID "must be 3 to 50 characters of A-Z a-z 0-9 _ -"

static const struct {
    const char *name;
    size_t len;
} kinds[] = {
    [EM_TOPIC_STATUS] = {"status", 6},   [EM_TOPIC_TELEMETRY] = {"telemetry", 9},
    [EM_TOPIC_COMMAND] = {"command", 7}, [EM_TOPIC_RESPONSE] = {"response", 8},
    [EM_TOPIC_EVENT] = {"event", 5},     [EM_TOPIC_AVAILABILITY] = {"availability", 12},
};

#define KIND_COUNT (sizeof(kinds) / sizeof(kinds[0]))

/* Device id characters, [A-Za-z0-9_-], as a table: the scan below is the
 * inner loop of topic parsing. */
static const unsigned char id_char[256] = {
    ['0' ... '9'] = 1, ['A' ... 'Z'] = 1, ['a' ... 'z'] = 1, ['_'] = 1, ['-'] = 1,
};

const char *em_topic_kind_name(em_topic_kind_t kind)
{
    if ((unsigned)kind >= KIND_COUNT)
        return NULL;
    return kinds[kind].name;
}

em_err_t em_topic_prefix_validate(const char *prefix, em_error_t *err)
{
    const char *rule = "must be 1 to 64 printable ASCII characters without + or #, ending in /";
    if (prefix == NULL)
        return em_error_set(err, EM_ERR_VALIDATION, EM_SEV_LOW, "prefix", "%s", rule);
    size_t n = strnlen(prefix, EM_TOPIC_PREFIX_MAX + 1);
    if (n == 0 || n > EM_TOPIC_PREFIX_MAX || prefix[n - 1] != '/')
        return em_error_set(err, EM_ERR_VALIDATION, EM_SEV_LOW, "prefix", "%s", rule);
    for (size_t i = 0; i < n; i++) {
        unsigned char c = (unsigned char)prefix[i];
        if (c < 0x20 || c > 0x7e || c == '+' || c == '#')
            return em_error_set(err, EM_ERR_VALIDATION, EM_SEV_LOW, "prefix", "%s", rule);
    }
    return EM_OK;
}

em_err_t em_topic_parse(const char *prefix, size_t prefix_len, const char *topic, size_t len,
                        const char **id, size_t *id_len, em_topic_kind_t *kind, em_error_t *err)
{
    if ((prefix == NULL && prefix_len > 0) || topic == NULL || id == NULL || id_len == NULL ||
        kind == NULL)
        return em_error_set(err, EM_ERR_INVALID_ARGUMENT, EM_SEV_LOW, NULL, "missing argument");
    if (len > EM_TOPIC_MAX)
        return em_error_set(err, EM_ERR_PROTOCOL, EM_SEV_LOW, "topic", "topic longer than %d bytes",
                            EM_TOPIC_MAX);
    if (len < prefix_len || (prefix_len > 0 && memcmp(topic, prefix, prefix_len) != 0))
        return em_error_set(err, EM_ERR_PROTOCOL, EM_SEV_LOW, "topic",
                            "topic does not start with the prefix");

    /* The id runs to the next '/'. Invalid characters are remembered rather
     * than returned at once: a topic that is not ours at all (no kind level)
     * is a protocol error, not a bad id. */
    const unsigned char *p = (const unsigned char *)topic + prefix_len;
    const unsigned char *end = (const unsigned char *)topic + len;
    const unsigned char *q = p;
    bool id_ok = true;
    while (q < end && *q != '/') {
        id_ok &= id_char[*q] != 0;
        q++;
    }
    if (q == end)
        return em_error_set(err, EM_ERR_PROTOCOL, EM_SEV_LOW, "topic",
                            "topic has no kind level after the device id");
    size_t n = (size_t)(q - p);
    const char *k = (const char *)q + 1;
    size_t klen = (size_t)(end - q) - 1;

    unsigned found = KIND_COUNT;
    for (unsigned i = 0; i < KIND_COUNT; i++) {
        if (kinds[i].len == klen && memcmp(kinds[i].name, k, klen) == 0) {
            found = i;
            break;
        }
    }
    if (found == KIND_COUNT) {
        if (memchr(k, '/', klen) != NULL)
            return em_error_set(err, EM_ERR_PROTOCOL, EM_SEV_LOW, "topic",
                                "topic has levels after the kind");
        return em_error_set(err, EM_ERR_PROTOCOL, EM_SEV_LOW, "topic", "unknown topic kind");
    }
    if (!id_ok || n < EM_DEVICE_ID_MIN || n > EM_DEVICE_ID_MAX)
        return em_error_set(err, EM_ERR_VALIDATION, EM_SEV_LOW, "deviceId", "%s", RULE_ID);
    *id = (const char *)p;
    *id_len = n;
    *kind = (em_topic_kind_t)found;
    return EM_OK;
}

em_err_t em_topic_build(const char *prefix, const char *id, em_topic_kind_t kind, char *buf,
                        size_t size, size_t *out_len)
{
    if (buf == NULL || (unsigned)kind >= KIND_COUNT)
        return EM_ERR_INVALID_ARGUMENT;
    if (size > 0)
        buf[0] = '\0';
    if (em_topic_prefix_validate(prefix, NULL) != EM_OK)
        return EM_ERR_VALIDATION;
    if (id == NULL)
        return EM_ERR_VALIDATION;
    size_t n = strnlen(id, EM_DEVICE_ID_MAX + 1);
    if (n < EM_DEVICE_ID_MIN || n > EM_DEVICE_ID_MAX)
        return EM_ERR_VALIDATION;
    for (size_t i = 0; i < n; i++)
        if (!id_char[(unsigned char)id[i]])
            return EM_ERR_VALIDATION;
    size_t plen = strlen(prefix); /* validated: at most EM_TOPIC_PREFIX_MAX */
    size_t total = plen + n + 1 + kinds[kind].len;
    if (total >= size)
        return EM_ERR_BUFFER_TOO_SMALL;
    memcpy(buf, prefix, plen);
    memcpy(buf + plen, id, n);
    buf[plen + n] = '/';
    memcpy(buf + plen + n + 1, kinds[kind].name, kinds[kind].len);
    buf[total] = '\0';
    if (out_len != NULL)
        *out_len = total;
    return EM_OK;
}
