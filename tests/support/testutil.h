/*
 * emiot tests - testutil.h: small helpers shared by the tests.
 */
#ifndef EM_TEST_TESTUTIL_H
#define EM_TEST_TESTUTIL_H

#include <stddef.h>

/* Creates a private (0700) temporary directory and returns its path (static
 * storage per call is not used: the path is written to buf). 0 on success. */
int em_test_mkdtemp(char *buf, size_t size);

/* Removes a directory tree made by em_test_mkdtemp. */
void em_test_rmtree(const char *path);

/* A TCP port on 127.0.0.1 that was free a moment ago. 0 on failure. */
int em_test_free_port(void);

/* Sleeps for ms milliseconds. */
void em_test_sleep_ms(int ms);

#endif /* EM_TEST_TESTUTIL_H */
