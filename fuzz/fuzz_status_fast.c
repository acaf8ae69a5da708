/*
 * libFuzzer target: the jsmn fast path of em_status_decode against the cJSON
 * decoder, the reference (src/model/status_internal.h).
 *
 * For every input the fast path either declines, leaving out and err as they
 * were, or decides; then it must decide exactly as the cJSON decoder does on
 * the same bytes: same return code, same em_status_t (every field, every byte
 * of the firmware version), same err (code, severity, field, message), and
 * no allocation (errors_json and extra_json NULL). em_status_decode must
 * agree with both.
 *
 * Random bytes are rarely the compact ASCII the fast path takes, so each
 * input is also tried once more with its bytes folded into printable ASCII
 * without backslashes. Run with -dict=fuzz/fuzz_status_fast.dict.
 */
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "emiot/status.h"
#include "model/status_internal.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

typedef struct outcome {
    em_err_t rc;
    em_status_t st;
    em_error_t err;
} outcome_t;

static void prefill(outcome_t *o)
{
    memset(o, 0x5A, sizeof(*o));
}

static bool str_same(const char *a, const char *b)
{
    if (a == NULL || b == NULL)
        return a == b;
    return strcmp(a, b) == 0;
}

static void require_same(const outcome_t *a, const outcome_t *b)
{
    if (a->rc != b->rc)
        abort();
    const em_status_t *x = &a->st, *y = &b->st;
    if (x->has != y->has || x->battery_level != y->battery_level ||
        x->power_mode != y->power_mode || x->connection != y->connection ||
        x->signal_strength != y->signal_strength || x->last_seen_ms != y->last_seen_ms ||
        memcmp(x->firmware_version, y->firmware_version, sizeof(x->firmware_version)) != 0 ||
        !str_same(x->errors_json, y->errors_json) || !str_same(x->extra_json, y->extra_json))
        abort();
    /* Both started from the same pattern: what one left alone, the other
     * must have left alone too. */
    if (memcmp(&a->err, &b->err, sizeof(a->err)) != 0)
        abort();
}

static void release(outcome_t *o)
{
    if (o->rc == EM_OK)
        em_status_cleanup(&o->st);
}

static void check(const char *p, size_t n)
{
    outcome_t fast, untouched, tree, pub;
    prefill(&fast);
    prefill(&untouched);
    prefill(&tree);
    prefill(&pub);

    bool decided = em__status_decode_fast(p, n, &fast.st, &fast.err, &fast.rc);
    tree.rc = em__status_decode_tree(p, n, &tree.st, &tree.err);
    pub.rc = em_status_decode(p, n, &pub.st, &pub.err);
    if (decided) {
        if (fast.st.errors_json != NULL || fast.st.extra_json != NULL)
            abort();
        require_same(&fast, &tree);
    } else if (memcmp(&fast, &untouched, sizeof(fast)) != 0) {
        abort(); /* a decline leaves out and err alone */
    }
    require_same(&tree, &pub);
    release(&tree);
    release(&pub);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size > EM_PAYLOAD_MAX + 16)
        return 0;
    check((const char *)data, size);

    /* The same input folded into what the fast path accepts: bytes 0x20 to
     * 0x7E but the backslash. */
    static char folded[EM_PAYLOAD_MAX + 16];
    bool changed = false;
    for (size_t i = 0; i < size; i++) {
        unsigned char c = data[i] & 0x7F;
        if (c < 0x20 || c == 0x7F || c == '\\')
            c = ' ';
        changed |= c != data[i];
        folded[i] = (char)c;
    }
    if (changed)
        check(folded, size);
    return 0;
}
