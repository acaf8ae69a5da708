/*
 * emiot tests - alloc_hook.h: an allocator that fails the Nth allocation, as
 * SQLite's and curl's tests do. It replaces malloc, calloc, realloc and free
 * for the whole test program, so it is a header with definitions: include it
 * from exactly one file of a test program, never from tests/support's
 * library (every test links that).
 *
 * Under a sanitizer, which owns the allocator, ALLOC_HOOK is 0 and nothing is
 * replaced: tests of allocation failures skip themselves then.
 *
 * The including file sees:
 *   fail_countdown  allocations to let through before one fails (-1: never)
 *   live            allocations not yet freed
 *   failures        allocations refused so far
 */
#ifndef EM_TEST_ALLOC_HOOK_H
#define EM_TEST_ALLOC_HOOK_H

#include <stdbool.h>
#include <stddef.h>

#if defined(__SANITIZE_ADDRESS__)
#define ALLOC_HOOK 0
#elif defined(__has_feature)
#if __has_feature(address_sanitizer) || __has_feature(memory_sanitizer) ||                         \
    __has_feature(thread_sanitizer)
#define ALLOC_HOOK 0
#endif
#endif
#ifndef ALLOC_HOOK
#define ALLOC_HOOK 1
#endif

#if ALLOC_HOOK
static long fail_countdown = -1; /* -1: never fail */
static long live;                /* allocations not yet freed */
static long failures;            /* allocations refused so far */

extern void *__libc_malloc(size_t n);
extern void *__libc_calloc(size_t n, size_t size);
extern void *__libc_realloc(void *p, size_t n);
extern void __libc_free(void *p);

static bool alloc_fails(void)
{
    if (fail_countdown < 0)
        return false;
    if (fail_countdown-- == 0) {
        fail_countdown = -1;
        failures++;
        return true;
    }
    return false;
}

void *malloc(size_t n)
{
    if (alloc_fails())
        return NULL;
    void *p = __libc_malloc(n);
    live += p != NULL;
    return p;
}

void *calloc(size_t n, size_t size)
{
    if (alloc_fails())
        return NULL;
    void *p = __libc_calloc(n, size);
    live += p != NULL;
    return p;
}

void *realloc(void *p, size_t n)
{
    if (alloc_fails())
        return NULL;
    void *q = __libc_realloc(p, n);
    if (p == NULL && q != NULL)
        live++;
    return q;
}

void free(void *p)
{
    live -= p != NULL;
    __libc_free(p);
}
#endif

#endif /* EM_TEST_ALLOC_HOOK_H */
