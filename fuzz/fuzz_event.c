/*
 * libFuzzer target: em_device_event_decode and em_availability_decode.
 */
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "core/json.h"
#include "emiot/status.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    em_device_event_t ev;
    em_error_t err;
    if (em_device_event_decode((const char *)data, size, &ev, &err) == EM_OK) {
        size_t n = strlen(ev.type);
        if (n == 0 || n > EM_EVENT_TYPE_MAX || ev.timestamp_ms < 0)
            abort();
        for (size_t i = 0; i < n; i++) {
            char c = ev.type[i];
            if (!((c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || c == '_'))
                abort();
        }
        if (ev.details_json != NULL) {
            /* What is kept must be a non-empty object that parses again and
             * prints back to the same text. */
            size_t dn = strlen(ev.details_json);
            if (dn > EM_EVENT_DETAILS_MAX)
                abort();
            cJSON *root = em__json_parse(ev.details_json, dn, &err);
            if (root == NULL || !cJSON_IsObject(root) || root->child == NULL)
                abort();
            char *again = em__json_print(root, EM_EVENT_DETAILS_MAX);
            if (again == NULL || strcmp(again, ev.details_json) != 0)
                abort();
            free(again);
            em__json_free(root);
        }
        em_device_event_cleanup(&ev);
    } else if (err.message[0] == '\0' || ev.details_json != NULL) {
        abort();
    }

    bool online = false;
    em_err_t rc = em_availability_decode((const char *)data, size, &online, NULL);
    bool is_on = size == 6 && memcmp(data, "online", 6) == 0;
    bool is_off = size == 7 && memcmp(data, "offline", 7) == 0;
    if ((rc == EM_OK) != (is_on || is_off) || (rc == EM_OK && online != is_on))
        abort();
    return 0;
}
