/*
 * emiot - mqtt/url.c: strict parsing of broker URLs (see url.h).
 *
 * The parser accepts less than RFC 3986 on purpose: a broker URL that carries
 * credentials, a path, or a host spelling that resolvers read differently from
 * humans (127.1, 0x7f.0.0.1, 2130706433, octal 0177.0.0.1) is refused rather
 * than guessed at, because the plain-MQTT policy depends on knowing whether
 * the host is a loopback host.
 */
#include "mqtt/url.h"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <string.h>
#include <strings.h>

#include "emiot/mqtt.h"

static em_err_t url_error(em_error_t *err, const char *msg)
{
    return em_error_set(err, EM_ERR_CONFIGURATION, EM_SEV_HIGH, "url", "%s", msg);
}

static bool is_alnum(char c)
{
    return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9');
}

static bool is_digit(char c)
{
    return c >= '0' && c <= '9';
}

static bool is_hex_or_sep(char c)
{
    return is_digit(c) || (c >= 'a' && c <= 'f') || (c >= 'A' && c <= 'F') || c == ':' || c == '.';
}

/* A bracketed IPv6 literal, without its brackets, into out->host. */
static em_err_t parse_ipv6(const char *s, size_t n, em__mqtt_url_t *out, em_error_t *err)
{
    if (n == 0 || n >= INET6_ADDRSTRLEN)
        return url_error(err, "invalid IPv6 address in brackets");
    for (size_t i = 0; i < n; i++) {
        /* Zone ids (fe80::1%eth0) are refused: they name a local interface,
         * never a broker reachable by a certificate's name. */
        if (!is_hex_or_sep(s[i]))
            return url_error(err, "invalid IPv6 address in brackets (zone ids are not accepted)");
    }
    memcpy(out->host, s, n);
    out->host[n] = '\0';
    struct in6_addr a6;
    if (inet_pton(AF_INET6, out->host, &a6) != 1)
        return url_error(err, "invalid IPv6 address in brackets");
    out->ipv6 = true;
    out->ip = true;
    out->loopback =
        IN6_IS_ADDR_LOOPBACK(&a6) || (IN6_IS_ADDR_V4MAPPED(&a6) && a6.s6_addr[12] == 127);
    return EM_OK;
}

/* A DNS name or a dotted-quad IPv4 address into out->host. */
static em_err_t parse_hostname(const char *s, size_t n, em__mqtt_url_t *out, em_error_t *err)
{
    if (n == 0)
        return url_error(err, "the URL has no host");
    if (n > EM__MQTT_HOST_MAX)
        return em_error_set(err, EM_ERR_CONFIGURATION, EM_SEV_HIGH, "url",
                            "host name longer than %d bytes", EM__MQTT_HOST_MAX);

    size_t label_start = 0;
    bool last_label_numeric = true;
    for (size_t i = 0; i <= n; i++) {
        if (i == n || s[i] == '.') {
            size_t label_len = i - label_start;
            if (label_len == 0)
                return url_error(err, "host name has an empty label");
            if (label_len > 63)
                return url_error(err, "host name label longer than 63 bytes");
            if (s[label_start] == '-' || s[i - 1] == '-')
                return url_error(err, "host name label starts or ends with '-'");
            last_label_numeric = true;
            for (size_t j = label_start; j < i; j++) {
                if (!is_digit(s[j]))
                    last_label_numeric = false;
            }
            label_start = i + 1;
            continue;
        }
        if (!is_alnum(s[i]) && s[i] != '-' && s[i] != '_')
            return url_error(err, "invalid character in host name (IPv6 addresses go in brackets)");
    }
    memcpy(out->host, s, n);
    out->host[n] = '\0';

    /* No top-level domain is all digits: such a host must be an exact dotted
     * quad (inet_pton refuses short forms and leading zeros), not one of the
     * numeric spellings getaddrinfo would also accept. */
    if (last_label_numeric) {
        struct in_addr a4;
        if (inet_pton(AF_INET, out->host, &a4) != 1)
            return url_error(err, "invalid IPv4 address (use four decimal numbers, a.b.c.d)");
        out->ip = true;
        out->loopback = ((const unsigned char *)&a4.s_addr)[0] == 127;
        return EM_OK;
    }
    out->loopback = strcasecmp(out->host, "localhost") == 0;
    return EM_OK;
}

/* Decimal port 1-65535 from s; *stop receives the first character after it. */
static em_err_t parse_port(const char *s, const char *end, const char **stop, int *port,
                           em_error_t *err)
{
    const char *q = s;
    while (q < end && is_digit(*q))
        q++;
    size_t n = (size_t)(q - s);
    *stop = q;
    if (n == 0)
        return url_error(err, "the port after ':' is missing or not a number");
    if (n > 1 && s[0] == '0')
        return url_error(err, "the port has a leading zero");
    if (n > 5)
        return url_error(err, "the port is out of range (1-65535)");
    int v = 0;
    for (size_t i = 0; i < n; i++)
        v = v * 10 + (s[i] - '0');
    if (v < 1 || v > 65535)
        return url_error(err, "the port is out of range (1-65535)");
    *port = v;
    return EM_OK;
}

/* What follows the host and port must be nothing. */
static em_err_t trailing_error(char c, em_error_t *err)
{
    switch (c) {
    case '/':
        return url_error(err, "a path is not accepted in a broker URL");
    case '?':
        return url_error(err, "a query is not accepted in a broker URL");
    case '#':
        return url_error(err, "a fragment is not accepted in a broker URL");
    default:
        return url_error(err, "unexpected characters after the host and port");
    }
}

em_err_t em__mqtt_url_parse(const char *url, em__mqtt_url_t *out, em_error_t *err)
{
    if (out == NULL)
        return em_error_set(err, EM_ERR_INVALID_ARGUMENT, EM_SEV_MEDIUM, "url", "no output");
    memset(out, 0, sizeof(*out));
    if (url == NULL)
        return url_error(err, "no broker URL given");
    size_t len = strnlen(url, EM_MQTT_URL_MAX + 1);
    if (len == 0)
        return url_error(err, "the broker URL is empty");
    if (len > EM_MQTT_URL_MAX)
        return em_error_set(err, EM_ERR_CONFIGURATION, EM_SEV_HIGH, "url",
                            "the broker URL is longer than %d bytes", EM_MQTT_URL_MAX);

    const char *p;
    if (strncasecmp(url, "mqtts://", 8) == 0) {
        out->tls = true;
        out->port = 8883;
        p = url + 8;
    } else if (strncasecmp(url, "mqtt://", 7) == 0) {
        out->port = 1883;
        p = url + 7;
    } else {
        return url_error(err, "the broker URL must start with mqtt:// or mqtts://");
    }
    const char *end = url + len;
    if (memchr(p, '@', (size_t)(end - p)) != NULL)
        return url_error(err, "credentials in the broker URL are not accepted; use username "
                              "with password_env or password_file");

    const char *q;
    em_err_t rc;
    if (p < end && *p == '[') {
        const char *rb = memchr(p, ']', (size_t)(end - p));
        if (rb == NULL)
            return url_error(err, "IPv6 address without its closing ']'");
        rc = parse_ipv6(p + 1, (size_t)(rb - p - 1), out, err);
        q = rb + 1;
    } else {
        size_t colons = 0;
        for (const char *c = p; c < end && *c != '/' && *c != '?' && *c != '#'; c++)
            colons += *c == ':';
        if (colons > 1)
            return url_error(err, "IPv6 addresses go in brackets, as in mqtts://[::1]:8883");
        q = p;
        while (q < end && *q != ':' && *q != '/' && *q != '?' && *q != '#')
            q++;
        rc = parse_hostname(p, (size_t)(q - p), out, err);
    }
    if (rc != EM_OK)
        return rc;

    if (q < end && *q == ':') {
        rc = parse_port(q + 1, end, &q, &out->port, err);
        if (rc != EM_OK)
            return rc;
    }
    if (q != end)
        return trailing_error(*q, err);
    return EM_OK;
}

em_err_t em__mqtt_url_check_plain(const em__mqtt_url_t *url, bool allow_plain, em_error_t *err)
{
    if (url == NULL)
        return em_error_set(err, EM_ERR_INVALID_ARGUMENT, EM_SEV_MEDIUM, "url", "no URL");
    if (url->tls)
        return EM_OK;
    if (!allow_plain)
        return url_error(err, "plain mqtt:// is refused: use mqtts://, or set allow_plain for a "
                              "broker on this machine (loopback only)");
    if (!url->loopback)
        return url_error(err, "plain mqtt:// is only allowed to a loopback host (127.0.0.0/8, "
                              "::1, localhost); use mqtts:// for any other host");
    return EM_OK;
}
