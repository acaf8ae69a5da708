/*
 * emiot tests - pg.h: a throwaway PostgreSQL 15 server for integration tests.
 *
 * A server lives in a private temporary directory: DIR/data is its cluster
 * (initdb, trust authentication, user "emiot"), DIR itself holds its unix
 * socket (it listens on no TCP address at all, so it cannot clash with
 * another server or be reached from outside) and DIR/postgres.log its log.
 * It is tuned for tests (fsync off, small buffers): never use it as a model
 * for a real server. When the test runs as root (CI), initdb and postgres,
 * which refuse to run as root, run as the "postgres" system user, and DIR
 * belongs to that user.
 *
 * The server is stopped by PID (SIGINT, a fast shutdown; SIGKILL after 10 s),
 * never by name; a server that a failed test left running is killed, and its
 * directory removed, at process exit.
 *
 * Typical use:
 *   if (!em_test_pg_available()) skip();
 *   em_test_pg_t pg;
 *   assert_int_equal(em_test_pg_start(&pg), 0);
 *   char url[EM_TEST_PG_URL_MAX];
 *   assert_int_equal(em_test_pg_create_db(&pg, "t1", url, sizeof(url)), 0);
 *   ... em_store_open(url, ...) ...
 *   em_test_pg_cleanup(&pg);
 *
 * Functions returning int return 0 on success and -1 on failure, after
 * printing what failed to stderr (with the tail of the server's log).
 */
#ifndef EM_TEST_PG_H
#define EM_TEST_PG_H

#include <stdbool.h>
#include <stddef.h>
#include <sys/types.h>

#define EM_TEST_PG_URL_MAX 512

typedef struct em_test_pg {
    char dir[256];                /* the server's private directory (also its socket directory) */
    char bin[256];                /* the directory holding initdb and postgres */
    int port;                     /* names the socket file DIR/.s.PGSQL.PORT; no TCP */
    pid_t pid;                    /* the postmaster, 0 when not running */
    char url[EM_TEST_PG_URL_MAX]; /* postgresql:///emiot?host=DIR&port=PORT&user=emiot */
} em_test_pg_t;

/* True when the PostgreSQL server binaries (initdb, postgres) are installed
 * (/usr/lib/postgresql/<version>/bin, newest first, or $EM_TEST_PG_BIN). */
bool em_test_pg_available(void);

/* Makes the directory, runs initdb, starts the server, waits until it
 * accepts connections (at most 30 s) and creates the database "emiot". */
int em_test_pg_start(em_test_pg_t *pg);

/* Creates (or drops and re-creates) database name (1-48 of [a-z0-9_]) and
 * writes its URL to url. */
int em_test_pg_create_db(em_test_pg_t *pg, const char *name, char *url, size_t size);

/* Empties database name (drops and re-creates its public schema, after
 * ending its other sessions): much faster than a new database per test. */
int em_test_pg_reset_db(em_test_pg_t *pg, const char *name);

/* Fast shutdown (SIGINT), waiting up to 10 s, then SIGKILL. The directory
 * stays, so em_test_pg_restart finds the same data. */
int em_test_pg_stop(em_test_pg_t *pg);

/* SIGKILL at once (a crash of the server). */
int em_test_pg_kill(em_test_pg_t *pg);

/* Starts the server again on the same directory (stops it first if running). */
int em_test_pg_restart(em_test_pg_t *pg);

/* Stops the server and removes its directory. Safe on a zeroed or
 * half-initialised server. */
void em_test_pg_cleanup(em_test_pg_t *pg);

/* The URL of the database "emiot" (a pointer into pg). */
const char *em_test_pg_url(const em_test_pg_t *pg);

#endif /* EM_TEST_PG_H */
