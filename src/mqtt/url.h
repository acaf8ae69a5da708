/*
 * emiot - mqtt/url.h: broker URLs (internal).
 *
 * mqtt://host[:port] and mqtts://host[:port], nothing else: no user
 * information, path, query or fragment. host is a DNS name, a dotted-quad IPv4
 * address or a bracketed IPv6 address ([::1]). Default ports: 1883 and 8883.
 */
#ifndef EM_MQTT_URL_H
#define EM_MQTT_URL_H

#include <stdbool.h>

#include "emiot/error.h"

#define EM__MQTT_HOST_MAX 253

typedef struct em__mqtt_url {
    bool tls;      /* mqtts:// */
    bool ipv6;     /* host is an IPv6 literal (stored without brackets) */
    bool ip;       /* host is an IPv4 or IPv6 literal */
    bool loopback; /* 127.0.0.0/8, ::1, ::ffff:127.0.0.0/104 or "localhost" */
    int port;
    char host[EM__MQTT_HOST_MAX + 1];
} em__mqtt_url_t;

/*
 * Parses url (NUL-terminated, at most EM_MQTT_URL_MAX bytes) into *out.
 * Errors: EM_ERR_CONFIGURATION with field "url" and a message naming the rule
 * broken. The message never repeats the URL (it could hold credentials).
 */
em_err_t em__mqtt_url_parse(const char *url, em__mqtt_url_t *out, em_error_t *err);

/*
 * The plain-MQTT policy: an mqtts:// URL always passes; mqtt:// passes only
 * when allow_plain is set and the host is a loopback host.
 * Errors: EM_ERR_CONFIGURATION.
 */
em_err_t em__mqtt_url_check_plain(const em__mqtt_url_t *url, bool allow_plain, em_error_t *err);

#endif /* EM_MQTT_URL_H */
