/*
 * emiot fuzz - fuzz_command.c: the command decoder (what a device receives)
 * and the payload validator (what the manager checks before sending).
 *
 * Properties checked beyond "no crash": a decoded command encodes, the
 * encoding decodes to the same command, and re-encoding gives the same bytes;
 * a payload the validator accepts builds a command that round-trips too.
 */
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include "emiot/command.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

#define CHECK(cond)                                                                                \
    do {                                                                                           \
        if (!(cond))                                                                               \
            __builtin_trap();                                                                      \
    } while (0)

/* Encodes cmd, decodes the result, and checks that nothing changed. */
static void round_trip(const em_command_t *cmd)
{
    static char wire[EM_COMMAND_WIRE_MAX], again[EM_COMMAND_WIRE_MAX];
    size_t n = 0, m = 0;
    CHECK(em_command_encode(cmd, wire, sizeof(wire), &n) == EM_OK);
    CHECK(n == strlen(wire));
    em_command_t back;
    em_error_t err;
    CHECK(em_command_decode(wire, n, &back, &err) == EM_OK);
    CHECK(back.type == cmd->type);
    CHECK(back.timestamp_ms == cmd->timestamp_ms);
    CHECK(strcmp(back.request_id, cmd->request_id) == 0);
    const char *p = cmd->payload_json != NULL ? cmd->payload_json : "{}";
    CHECK(back.payload_json != NULL && strcmp(back.payload_json, p) == 0);
    CHECK(em_command_encode(&back, again, sizeof(again), &m) == EM_OK);
    CHECK(m == n && memcmp(again, wire, n) == 0);
    /* One byte short must be refused, never overflow. */
    CHECK(em_command_encode(cmd, again, n, NULL) == EM_ERR_BUFFER_TOO_SMALL);
    em_command_cleanup(&back);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    const char *text = (const char *)data;
    em_command_t cmd;
    em_error_t err;
    if (em_command_decode(text, size, &cmd, &err) == EM_OK) {
        round_trip(&cmd);
        em_command_cleanup(&cmd);
    } else {
        CHECK(cmd.payload_json == NULL);
        CHECK(err.code != EM_OK);
    }

    /* The same bytes as a payload for each command type. */
    for (int t = 0; t < EM_CMD_TYPE_COUNT; t++) {
        em_err_t v = em_command_validate((em_command_type_t)t, text, size, &err);
        em_err_t rc = em_command_init(&cmd, (em_command_type_t)t, text, size, &err);
        CHECK((v == EM_OK) == (rc == EM_OK));
        if (rc == EM_OK) {
            CHECK(cmd.payload_json == NULL || strlen(cmd.payload_json) <= EM_CMD_PAYLOAD_MAX);
            /* The stored compact payload is itself valid for the type. */
            if (cmd.payload_json != NULL)
                CHECK(em_command_validate(cmd.type, cmd.payload_json, strlen(cmd.payload_json),
                                          NULL) == EM_OK);
            round_trip(&cmd);
            em_command_cleanup(&cmd);
        } else {
            CHECK(cmd.payload_json == NULL);
        }
    }
    return 0;
}
