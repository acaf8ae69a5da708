/*
 * emiot fuzz - fuzz_dynsec_answer.c: what the dynamic-security client reads
 * from the broker's response topic ($CONTROL/dynamic-security/v1/response),
 * which every administrator on the broker can see and (given the rights)
 * write: em__dynsec_answer_take, then for an answer taken
 * em__dynsec_answer_matches against the batches dynsec.c sends, and
 * em__dynsec_response_error, em__dynsec_is_not_found and
 * em__dynsec_client_owner on each response.
 *
 * Checked: an answer is taken only for the exchange awaited (never for two
 * different ones, never for an empty one) and is a non-empty array whose first
 * entry carries that correlation; a match means one response per command,
 * same names, in order; a client counts as emiot's only when the response has
 * no error and carries the marker, and as absent only when its error says
 * "not found"; the answer printed again is taken again and matches the same
 * batches.
 */
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include <cjson/cJSON.h>

#include "dynsec/dynsec_internal.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

#define CHECK(cond)                                                                                \
    do {                                                                                           \
        if (!(cond))                                                                               \
            __builtin_trap();                                                                      \
    } while (0)

/* The correlation awaited, as control.c makes them (16 hex digits of the
 * client's tag, '-', the counter), and another client's. */
#define WANT  "0123456789abcdef-1"
#define OTHER "fedcba9876543210-7"
#define MARK  "emiot device dev-1"

/* The batches dynsec.c sends, by command name. */
static const char *const batches[][3] = {
    {"getDefaultACLAccess", NULL, NULL},
    {"getClient", NULL, NULL},
    {"createRole", "modifyRole", NULL},
    {"createClient", NULL, NULL},
    {"modifyClient", "enableClient", NULL},
    {"deleteClient", "deleteRole", NULL},
    {"deleteRole", NULL, NULL},
    {"enableClient", NULL, NULL},
    {"disableClient", NULL, NULL},
};
#define NBATCH (sizeof batches / sizeof batches[0])

static cJSON *commands[NBATCH];

/* Built once: the fuzzer runs in one process. */
static void build_commands(void)
{
    static bool built;
    if (built)
        return;
    built = true;
    for (size_t b = 0; b < NBATCH; b++) {
        cJSON *arr = cJSON_CreateArray();
        CHECK(arr != NULL);
        for (size_t i = 0; i < 3 && batches[b][i] != NULL; i++) {
            cJSON *c = cJSON_CreateObject();
            CHECK(c != NULL && cJSON_AddItemToArray(arr, c));
            CHECK(cJSON_AddStringToObject(c, "command", batches[b][i]) != NULL);
            CHECK(cJSON_AddStringToObject(c, "correlationData", WANT) != NULL);
        }
        commands[b] = arr;
    }
}

/* What a match must mean, checked the long way. */
static bool same_commands(const cJSON *cmds, const cJSON *answer)
{
    if (cJSON_GetArraySize(cmds) != cJSON_GetArraySize(answer))
        return false;
    const cJSON *c = cmds->child;
    const cJSON *a = answer->child;
    for (; c != NULL && a != NULL; c = c->next, a = a->next) {
        const cJSON *want = cJSON_GetObjectItemCaseSensitive(c, "command");
        const cJSON *got = cJSON_GetObjectItemCaseSensitive(a, "command");
        if (!cJSON_IsString(got) || got->valuestring == NULL ||
            strcmp(want->valuestring, got->valuestring) != 0)
            return false;
    }
    return c == NULL && a == NULL;
}

static void check_response(const cJSON *r)
{
    const char *why = em__dynsec_response_error(r);
    const char *owner_why = "unset";
    em__dynsec_owner_t owner = em__dynsec_client_owner(r, MARK, &owner_why);
    CHECK(owner_why == why);
    CHECK(em__dynsec_client_owner(r, MARK, NULL) == owner);
    bool not_found = em__dynsec_is_not_found(why);
    CHECK(!not_found || why != NULL);
    if (why != NULL) {
        size_t n = strlen(why);
        CHECK(!not_found || n >= 9);
    }
    switch (owner) {
    case EM__DYNSEC_CLIENT_NONE:
        CHECK(why != NULL && not_found);
        break;
    case EM__DYNSEC_CLIENT_OURS: {
        CHECK(why == NULL);
        const cJSON *tn = cJSON_GetObjectItemCaseSensitive(
            cJSON_GetObjectItemCaseSensitive(cJSON_GetObjectItemCaseSensitive(r, "data"), "client"),
            "textname");
        CHECK(cJSON_IsString(tn) && strcmp(tn->valuestring, MARK) == 0);
        /* Someone else's marker is never emiot's. */
        CHECK(em__dynsec_client_owner(r, "emiot device dev-2", NULL) == EM__DYNSEC_CLIENT_FOREIGN);
        CHECK(em__dynsec_client_owner(r, NULL, NULL) == EM__DYNSEC_CLIENT_FOREIGN);
        break;
    }
    case EM__DYNSEC_CLIENT_FOREIGN:
        CHECK(why == NULL || !not_found);
        break;
    default:
        CHECK(0);
    }
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    build_commands();
    CHECK(em__dynsec_answer_take(data, size, NULL) == NULL);
    CHECK(em__dynsec_answer_take(data, size, "") == NULL);

    cJSON *answer = em__dynsec_answer_take(data, size, WANT);
    cJSON *other = em__dynsec_answer_take(data, size, OTHER);
    /* One correlation string cannot name two exchanges. */
    CHECK(answer == NULL || other == NULL);
    cJSON_Delete(other);
    if (answer == NULL)
        return 0;

    CHECK(cJSON_IsArray(answer) && cJSON_GetArraySize(answer) >= 1);
    const cJSON *corr = cJSON_GetObjectItemCaseSensitive(answer->child, "correlationData");
    CHECK(cJSON_IsString(corr) && strcmp(corr->valuestring, WANT) == 0);

    bool matched[NBATCH];
    for (size_t b = 0; b < NBATCH; b++) {
        matched[b] = em__dynsec_answer_matches(commands[b], answer);
        CHECK(matched[b] == same_commands(commands[b], answer));
    }
    CHECK(!em__dynsec_answer_matches(NULL, answer));
    CHECK(!em__dynsec_answer_matches(commands[0], NULL));

    const cJSON *r;
    cJSON_ArrayForEach(r, answer)
    {
        check_response(r);
    }

    /* Printed again (as a plugin would send it), the answer is taken again
     * and matches the same batches. */
    cJSON *root = cJSON_CreateObject();
    char *text = NULL;
    if (root != NULL && cJSON_AddItemReferenceToObject(root, "responses", answer))
        text = cJSON_PrintUnformatted(root);
    cJSON_Delete(root);
    if (text != NULL) {
        size_t n = strlen(text);
        if (n <= EM__DYNSEC_ANSWER_MAX) {
            cJSON *again = em__dynsec_answer_take(text, n, WANT);
            CHECK(again != NULL);
            for (size_t b = 0; b < NBATCH; b++)
                CHECK(em__dynsec_answer_matches(commands[b], again) == matched[b]);
            cJSON_Delete(again);
        }
        cJSON_free(text);
    }
    cJSON_Delete(answer);
    return 0;
}
