/*
 * emiot fuzz - fuzz_daemon_config.c: emiotd's configuration parser
 * (em_daemon_config_parse) and the store URL password finder, from a buffer.
 *
 * Whatever the input: no crash, no read past it; a configuration that parses
 * has at least one API listener, at most EM_API_LISTENERS_MAX, NUL-terminated
 * strings, absolute default paths; an error names the file and a line.
 */
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "daemon/daemon_internal.h"
#include "emiot/daemon.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

#define CHECK(cond)                                                                                \
    do {                                                                                           \
        if (!(cond))                                                                               \
            __builtin_trap();                                                                      \
    } while (0)

static bool terminated(const char *s, size_t size)
{
    return memchr(s, '\0', size) != NULL;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    static em_daemon_config_t cfg;
    const char *text = (const char *)data;
    em_error_t err;
    em_error_clear(&err);
    em_daemon_config_init(&cfg);
    em_err_t rc = em_daemon_config_parse(&cfg, text, size, "fuzz.conf", &err);
    if (rc == EM_OK) {
        CHECK(cfg.nlisteners >= 1 && cfg.nlisteners <= EM_API_LISTENERS_MAX);
        size_t api = 0;
        for (size_t i = 0; i < cfg.nlisteners; i++) {
            const em_daemon_listener_t *l = &cfg.listeners[i];
            CHECK(terminated(l->name, sizeof(l->name)) && l->name[0] != '\0');
            CHECK(terminated(l->address, sizeof(l->address)) && l->address[0] != '\0');
            CHECK(l->port != 0);
            CHECK(l->cert_file[0] != '\0' || l->metrics_only);
            api += !l->metrics_only;
        }
        CHECK(api >= 1);
        CHECK(cfg.data_dir[0] == '/');
        CHECK(cfg.jwt_key_file[0] == '/');
        CHECK(cfg.bootstrap_key_file[0] == '/' || cfg.bootstrap_key_print);
        CHECK(terminated(cfg.store_url, sizeof(cfg.store_url)));
        CHECK(!em__daemon_url_has_password(cfg.store_url, strlen(cfg.store_url)));
        em_api_options_t ao;
        em_daemon_config_api_options(&cfg, &ao);
        CHECK(ao.nlisteners == cfg.nlisteners);
    } else {
        CHECK(rc == EM_ERR_CONFIGURATION || rc == EM_ERR_NOMEM);
        CHECK(rc != EM_ERR_CONFIGURATION || strncmp(err.message, "fuzz.conf:", 10) == 0);
    }

    /* The password finder on the raw bytes: spans stay inside the input. */
    const char *pw;
    size_t pwlen;
    for (int i = 0; i < 4 && em__daemon_url_password(text, size, &pw, &pwlen, i) == 0; i++)
        CHECK(pw >= text && pw + pwlen <= text + size);
    (void)em_daemon_secret_is_placeholder(text, size);
    return 0;
}
