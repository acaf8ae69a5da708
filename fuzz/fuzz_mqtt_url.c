/*
 * libFuzzer target: em__mqtt_url_parse and the plain-MQTT policy.
 *
 * An accepted URL must satisfy the parser's promises (a host of 1-253 bytes,
 * a port of 1-65535, loopback only for 127/8, ::1, v4-mapped 127/8 or
 * localhost) and survive a round trip through its canonical spelling; a
 * refused one must say why without repeating the URL (it may hold a password).
 */
#include <arpa/inet.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "emiot/mqtt.h"
#include "mqtt/url.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static void check_accepted(const em__mqtt_url_t *u)
{
    size_t n = strlen(u->host);
    if (n == 0 || n > EM__MQTT_HOST_MAX || u->port < 1 || u->port > 65535)
        abort();
    if (u->ipv6 && !u->ip)
        abort();
    if (strpbrk(u->host, "@/?#[] ") != NULL)
        abort();
    if (u->loopback) {
        if (!u->ip && strcasecmp(u->host, "localhost") != 0)
            abort();
        if (u->ip && !u->ipv6 && strncmp(u->host, "127.", 4) != 0)
            abort();
    }
    /* Plain MQTT passes the policy only for a loopback host with allow_plain. */
    em_err_t plain = em__mqtt_url_check_plain(u, true, NULL);
    if (u->tls ? plain != EM_OK : (plain == EM_OK) != u->loopback)
        abort();
    if (!u->tls && em__mqtt_url_check_plain(u, false, NULL) == EM_OK)
        abort();

    char again[EM_MQTT_URL_MAX + 64];
    snprintf(again, sizeof(again), "%s://%s%s%s:%d", u->tls ? "mqtts" : "mqtt", u->ipv6 ? "[" : "",
             u->host, u->ipv6 ? "]" : "", u->port);
    em__mqtt_url_t v;
    if (em__mqtt_url_parse(again, &v, NULL) != EM_OK || memcmp(u, &v, sizeof(v)) != 0)
        abort();
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    char url[EM_MQTT_URL_MAX + 16];
    if (size >= sizeof(url))
        size = sizeof(url) - 1;
    memcpy(url, data, size);
    url[size] = '\0';

    em__mqtt_url_t u;
    em_error_t err;
    em_error_clear(&err);
    if (em__mqtt_url_parse(url, &u, &err) == EM_OK) {
        check_accepted(&u);
        return 0;
    }
    if (err.code != EM_ERR_CONFIGURATION || err.message[0] == '\0')
        abort();
    /* Never echoed back (checked for inputs long enough to be distinctive). */
    if (strlen(url) >= 24 && strstr(err.message, url) != NULL)
        abort();
    return 0;
}
