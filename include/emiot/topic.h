/*
 * emiot - topic.h: the MQTT topic layout P<id>/<kind>.
 */
#ifndef EMIOT_TOPIC_H
#define EMIOT_TOPIC_H

#include <stddef.h>

#include "emiot/error.h"
#include "emiot/export.h"

#ifdef __cplusplus
extern "C" {
#endif

#define EM_TOPIC_PREFIX_DEFAULT "device/"
#define EM_TOPIC_PREFIX_MAX     64
#define EM_TOPIC_MAX            160 /* prefix + id + "/" + kind, with room to spare */

typedef enum em_topic_kind {
    EM_TOPIC_STATUS = 0,
    EM_TOPIC_TELEMETRY = 1,
    EM_TOPIC_COMMAND = 2,
    EM_TOPIC_RESPONSE = 3,
    EM_TOPIC_EVENT = 4,
    EM_TOPIC_AVAILABILITY = 5
} em_topic_kind_t;

/* "status", "telemetry", ...; NULL when out of range. */
EM_EXPORT const char *em_topic_kind_name(em_topic_kind_t kind);

/*
 * Checks a topic prefix: 1-64 bytes, printable ASCII, no '+', '#' or NUL, and
 * ending in '/'. EM_ERR_VALIDATION otherwise.
 */
EM_EXPORT em_err_t em_topic_prefix_validate(const char *prefix, em_error_t *err);

/*
 * Splits topic (len bytes, not NUL-terminated) as prefix + id + "/" + kind.
 * On success *id points into topic and *id_len is its length (a valid device
 * id). Errors: EM_ERR_PROTOCOL (wrong prefix, unknown kind, extra levels),
 * EM_ERR_VALIDATION (invalid device id).
 */
EM_EXPORT em_err_t em_topic_parse(const char *prefix, size_t prefix_len, const char *topic,
                                  size_t len, const char **id, size_t *id_len,
                                  em_topic_kind_t *kind, em_error_t *err);

/* Writes prefix + id + "/" + kind into buf. EM_ERR_BUFFER_TOO_SMALL,
 * EM_ERR_VALIDATION (bad id). */
EM_EXPORT em_err_t em_topic_build(const char *prefix, const char *id, em_topic_kind_t kind,
                                  char *buf, size_t size, size_t *out_len);

#ifdef __cplusplus
}
#endif

#endif /* EMIOT_TOPIC_H */
