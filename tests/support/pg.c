/*
 * emiot tests - pg.c: a throwaway PostgreSQL server for integration tests (pg.h).
 */
#include "pg.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <grp.h>
#include <libpq-fe.h>
#include <pwd.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "testutil.h"

#define PG_PORT     5432 /* names the socket file only: each server has its own directory */
#define PG_USER     "emiot"
#define PG_PATH_MAX 512

static long long mono_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (long long)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

/* ---------------------------------------------------------------------- */
/* Finding the binaries                                                    */

static bool has_server(const char *bin)
{
    char p[PG_PATH_MAX];
    int n = snprintf(p, sizeof(p), "%s/initdb", bin);
    if (n < 0 || (size_t)n >= sizeof(p) || access(p, X_OK) != 0)
        return false;
    n = snprintf(p, sizeof(p), "%s/postgres", bin);
    return n > 0 && (size_t)n < sizeof(p) && access(p, X_OK) == 0;
}

/* $EM_TEST_PG_BIN, else the newest /usr/lib/postgresql/<major>/bin that holds
 * a server (Debian installs each major version there). */
static int find_bin(char *out, size_t size)
{
    const char *env = getenv("EM_TEST_PG_BIN");
    if (env != NULL && env[0] != '\0') {
        int n = snprintf(out, size, "%s", env);
        return n > 0 && (size_t)n < size && has_server(out) ? 0 : -1;
    }
    DIR *d = opendir("/usr/lib/postgresql");
    if (d == NULL)
        return -1;
    long best = -1;
    struct dirent *e;
    while ((e = readdir(d)) != NULL) {
        char *end = NULL;
        errno = 0;
        long v = strtol(e->d_name, &end, 10);
        if (errno != 0 || end == e->d_name || *end != '\0' || v <= best || v > 1000)
            continue;
        char cand[PG_PATH_MAX];
        int n = snprintf(cand, sizeof(cand), "/usr/lib/postgresql/%ld/bin", v);
        if (n > 0 && (size_t)n < sizeof(cand) && has_server(cand))
            best = v;
    }
    closedir(d);
    if (best < 0)
        return -1;
    int n = snprintf(out, size, "/usr/lib/postgresql/%ld/bin", best);
    return n > 0 && (size_t)n < size ? 0 : -1;
}

bool em_test_pg_available(void)
{
    char bin[PG_PATH_MAX];
    return find_bin(bin, sizeof(bin)) == 0;
}

/* ---------------------------------------------------------------------- */
/* Running the server's programs as the right user                          */

/* Who runs initdb and postgres: ourselves, or the "postgres" system user
 * when we are root (both programs refuse to run as root). */
typedef struct runas {
    bool drop;
    uid_t uid;
    gid_t gid;
} runas_t;

static int runas_get(runas_t *r)
{
    memset(r, 0, sizeof(*r));
    if (geteuid() != 0)
        return 0;
    struct passwd *pw = getpwnam("postgres");
    if (pw == NULL) {
        fprintf(stderr, "em_test_pg: running as root and there is no \"postgres\" user\n");
        return -1;
    }
    r->drop = true;
    r->uid = pw->pw_uid;
    r->gid = pw->pw_gid;
    return 0;
}

/*
 * Starts argv[0] (a full path) as r says, stdout and stderr appended to
 * log_path. The credentials are changed in the forked child itself rather
 * than through runuser: runuser stays as a parent that turns our SIGINT into
 * SIGTERM and SIGKILL two seconds later, while the PID we keep must be the
 * postmaster's own so that the signals we send mean what we intend. Between
 * fork and exec only async-signal-safe calls (the test may run threads).
 */
static pid_t spawn_as(const runas_t *r, const char *const argv[], const char *log_path)
{
    static const char *const envp[] = {"PATH=/usr/bin:/bin", "LC_ALL=C", "LANG=C", "TZ=UTC",
                                       "HOME=/tmp",          NULL};
    pid_t parent = getpid();
    pid_t pid = fork();
    if (pid < 0) {
        perror("em_test_pg: fork");
        return -1;
    }
    if (pid != 0)
        return pid;
    int fd = open(log_path, O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0600);
    if (fd >= 0) {
        dup2(fd, STDOUT_FILENO);
        dup2(fd, STDERR_FILENO);
    }
    int devnull = open("/dev/null", O_RDONLY | O_CLOEXEC);
    if (devnull >= 0)
        dup2(devnull, STDIN_FILENO);
    if (r->drop) {
        gid_t g = r->gid;
        if (setgroups(1, &g) != 0 || setresgid(g, g, g) != 0 ||
            setresuid(r->uid, r->uid, r->uid) != 0)
            _exit(126);
    }
    /* After the credentials change, which clears the parent-death signal.
     * SIGQUIT is PostgreSQL's immediate shutdown: nobody is left to talk to. */
    prctl(PR_SET_PDEATHSIG, SIGQUIT);
    if (getppid() != parent)
        _exit(127);
    execve(argv[0], (char *const *)argv, (char *const *)envp);
    _exit(127);
}

static int wait_exit(pid_t pid, int timeout_ms)
{
    long long deadline = mono_ms() + timeout_ms;
    for (;;) {
        int st = 0;
        pid_t w = waitpid(pid, &st, WNOHANG);
        if (w == pid)
            return WIFEXITED(st) ? WEXITSTATUS(st) : -1;
        if (w < 0 && errno != EINTR)
            return -1;
        if (mono_ms() >= deadline)
            return -2;
        em_test_sleep_ms(10);
    }
}

static void kill_wait(pid_t pid)
{
    kill(pid, SIGKILL);
    int st;
    while (waitpid(pid, &st, 0) < 0 && errno == EINTR) {
    }
}

/* ---------------------------------------------------------------------- */
/* Servers left behind                                                     */

/* As broker.c does: copies of the live servers, killed and removed at exit
 * when a failed assertion skipped a test's cleanup. */
#define LIVE_MAX 16
static struct {
    char dir[sizeof(((em_test_pg_t *)0)->dir)];
    pid_t pid;
} live[LIVE_MAX];
static bool live_atexit;
static pid_t live_owner;

static void live_cleanup(void)
{
    /* A forked test child that exits must not tear down its parent's server. */
    if (getpid() != live_owner)
        return;
    for (int i = 0; i < LIVE_MAX; i++) {
        if (live[i].dir[0] == '\0')
            continue;
        if (live[i].pid > 0)
            kill_wait(live[i].pid);
        em_test_rmtree(live[i].dir);
        live[i].dir[0] = '\0';
    }
}

static void live_set(const em_test_pg_t *pg, bool forget)
{
    if (!live_atexit) {
        live_owner = getpid();
        atexit(live_cleanup);
        live_atexit = true;
    }
    int free_slot = -1;
    for (int i = 0; i < LIVE_MAX; i++) {
        if (live[i].dir[0] != '\0' && strcmp(live[i].dir, pg->dir) == 0) {
            if (forget)
                live[i].dir[0] = '\0';
            else
                live[i].pid = pg->pid;
            return;
        }
        if (live[i].dir[0] == '\0' && free_slot < 0)
            free_slot = i;
    }
    if (!forget && free_slot >= 0) {
        snprintf(live[free_slot].dir, sizeof(live[free_slot].dir), "%s", pg->dir);
        live[free_slot].pid = pg->pid;
    }
}

/* ---------------------------------------------------------------------- */
/* The server                                                              */

static int path_in(const em_test_pg_t *pg, const char *name, char *buf, size_t size)
{
    int n = snprintf(buf, size, "%s/%s", pg->dir, name);
    return n > 0 && (size_t)n < size ? 0 : -1;
}

static void print_log_tail(const em_test_pg_t *pg, const char *name)
{
    char path[PG_PATH_MAX];
    if (path_in(pg, name, path, sizeof(path)) != 0)
        return;
    FILE *f = fopen(path, "r");
    if (f == NULL)
        return;
    char buf[4096];
    long size = 0;
    if (fseek(f, 0, SEEK_END) == 0)
        size = ftell(f);
    fseek(f, size > (long)sizeof(buf) - 1 ? size - (long)sizeof(buf) + 1 : 0, SEEK_SET);
    size_t n = fread(buf, 1, sizeof(buf) - 1, f);
    buf[n] = '\0';
    fclose(f);
    fprintf(stderr, "--- %s ---\n%s\n", path, buf);
}

/* Root only: the postgres user must reach DIR through its parents (a TMPDIR
 * under /root would stop it), so each parent gets the search bit for others
 * (not the read bit: nothing becomes listable). */
static int make_reachable(const char *dir)
{
    char p[PG_PATH_MAX];
    int n = snprintf(p, sizeof(p), "%s", dir);
    if (n < 0 || (size_t)n >= sizeof(p))
        return -1;
    for (char *slash = strrchr(p, '/'); slash != NULL && slash != p; slash = strrchr(p, '/')) {
        *slash = '\0';
        struct stat sb;
        if (stat(p, &sb) != 0)
            return -1;
        if ((sb.st_mode & S_IXOTH) == 0 && chmod(p, (sb.st_mode & 07777) | S_IXOTH) != 0)
            return -1;
    }
    return 0;
}

static void conninfo(const em_test_pg_t *pg, const char *db, char *buf, size_t size)
{
    snprintf(buf, size, "host=%s port=%d user=%s dbname=%s connect_timeout=5", pg->dir, pg->port,
             PG_USER, db);
}

static int run_initdb(em_test_pg_t *pg, const runas_t *r)
{
    char exe[PG_PATH_MAX], data[PG_PATH_MAX], log[PG_PATH_MAX];
    snprintf(exe, sizeof(exe), "%s/initdb", pg->bin);
    if (path_in(pg, "data", data, sizeof(data)) != 0 ||
        path_in(pg, "initdb.log", log, sizeof(log)) != 0)
        return -1;
    const char *argv[] = {exe,
                          "-D",
                          data,
                          "-U",
                          PG_USER,
                          "--auth=trust",
                          "-E",
                          "UTF8",
                          "--locale=C",
                          "--no-sync",
                          "--no-instructions",
                          NULL};
    pid_t pid = spawn_as(r, argv, log);
    if (pid < 0)
        return -1;
    int rc = wait_exit(pid, 120000);
    if (rc == -2)
        kill_wait(pid);
    if (rc != 0) {
        fprintf(stderr, "em_test_pg: initdb failed (%d)\n", rc);
        print_log_tail(pg, "initdb.log");
        return -1;
    }
    return 0;
}

/* Starts the postmaster and waits until it answers. */
static int run_server(em_test_pg_t *pg)
{
    runas_t r;
    if (runas_get(&r) != 0)
        return -1;
    char exe[PG_PATH_MAX], data[PG_PATH_MAX], log[PG_PATH_MAX], port[16];
    snprintf(exe, sizeof(exe), "%s/postgres", pg->bin);
    snprintf(port, sizeof(port), "%d", pg->port);
    if (path_in(pg, "data", data, sizeof(data)) != 0 ||
        path_in(pg, "postgres.log", log, sizeof(log)) != 0)
        return -1;
    /* A test server: durability of the server itself does not matter (the
     * store's own guarantees are about its client, which is what gets killed),
     * start-up time and memory do. */
    const char *argv[] = {exe,
                          "-D",
                          data,
                          "-k",
                          pg->dir,
                          "-p",
                          port,
                          "-c",
                          "listen_addresses=",
                          "-c",
                          "fsync=off",
                          "-c",
                          "full_page_writes=off",
                          "-c",
                          "shared_buffers=32MB",
                          "-c",
                          "max_connections=40",
                          "-c",
                          "autovacuum=off",
                          "-c",
                          "logging_collector=off",
                          "-c",
                          "log_min_messages=warning",
                          NULL};
    pid_t pid = spawn_as(&r, argv, log);
    if (pid < 0)
        return -1;
    char ci[PG_PATH_MAX];
    conninfo(pg, "postgres", ci, sizeof(ci));
    long long deadline = mono_ms() + 30000;
    while (mono_ms() < deadline) {
        int st;
        if (waitpid(pid, &st, WNOHANG) == pid) {
            fprintf(stderr, "em_test_pg: postgres exited at start\n");
            print_log_tail(pg, "postgres.log");
            return -1;
        }
        if (PQping(ci) == PQPING_OK) {
            pg->pid = pid;
            live_set(pg, false);
            return 0;
        }
        em_test_sleep_ms(20);
    }
    kill_wait(pid);
    fprintf(stderr, "em_test_pg: postgres did not answer within 30 s\n");
    print_log_tail(pg, "postgres.log");
    return -1;
}

static bool db_name_ok(const char *name)
{
    size_t n = name != NULL ? strlen(name) : 0;
    if (n == 0 || n > 48)
        return false;
    for (size_t i = 0; i < n; i++) {
        char c = name[i];
        if (!((c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || c == '_'))
            return false;
    }
    return true;
}

static void quiet_notice(void *arg, const char *message)
{
    (void)arg;
    (void)message; /* "does not exist, skipping" and the like */
}

static int exec_ok(PGconn *conn, const char *sql)
{
    PGresult *res = PQexec(conn, sql);
    int ok = PQresultStatus(res) == PGRES_COMMAND_OK || PQresultStatus(res) == PGRES_TUPLES_OK;
    if (!ok)
        fprintf(stderr, "em_test_pg: %s: %s", sql, PQerrorMessage(conn));
    PQclear(res);
    return ok ? 0 : -1;
}

int em_test_pg_create_db(em_test_pg_t *pg, const char *name, char *url, size_t size)
{
    if (pg == NULL || pg->pid <= 0 || !db_name_ok(name)) {
        fprintf(stderr, "em_test_pg_create_db: no server or a bad name\n");
        return -1;
    }
    char ci[PG_PATH_MAX], sql[128];
    conninfo(pg, "postgres", ci, sizeof(ci));
    PGconn *conn = PQconnectdb(ci);
    if (PQstatus(conn) != CONNECTION_OK) {
        fprintf(stderr, "em_test_pg: connect: %s", PQerrorMessage(conn));
        PQfinish(conn);
        return -1;
    }
    PQsetNoticeProcessor(conn, quiet_notice, NULL);
    int rc = 0;
    snprintf(sql, sizeof(sql), "DROP DATABASE IF EXISTS %s WITH (FORCE)", name);
    rc |= exec_ok(conn, sql);
    snprintf(sql, sizeof(sql), "CREATE DATABASE %s", name);
    if (rc == 0)
        rc |= exec_ok(conn, sql);
    PQfinish(conn);
    if (rc != 0)
        return -1;
    if (url != NULL) {
        int n = snprintf(url, size, "postgresql:///%s?host=%s&port=%d&user=%s", name, pg->dir,
                         pg->port, PG_USER);
        if (n < 0 || (size_t)n >= size)
            return -1;
    }
    return 0;
}

int em_test_pg_reset_db(em_test_pg_t *pg, const char *name)
{
    if (pg == NULL || pg->pid <= 0 || !db_name_ok(name)) {
        fprintf(stderr, "em_test_pg_reset_db: no server or a bad name\n");
        return -1;
    }
    char ci[PG_PATH_MAX];
    conninfo(pg, name, ci, sizeof(ci));
    PGconn *conn = PQconnectdb(ci);
    if (PQstatus(conn) != CONNECTION_OK) {
        fprintf(stderr, "em_test_pg: connect: %s", PQerrorMessage(conn));
        PQfinish(conn);
        return -1;
    }
    PQsetNoticeProcessor(conn, quiet_notice, NULL);
    /* Other sessions (a store a failed test left open) would hold locks. */
    int rc = exec_ok(conn, "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                           "WHERE datname = current_database() AND pid <> pg_backend_pid()");
    if (rc == 0)
        rc |= exec_ok(conn, "DROP SCHEMA public CASCADE");
    if (rc == 0)
        rc |= exec_ok(conn, "CREATE SCHEMA public");
    PQfinish(conn);
    return rc;
}

int em_test_pg_start(em_test_pg_t *pg)
{
    memset(pg, 0, sizeof(*pg));
    if (find_bin(pg->bin, sizeof(pg->bin)) != 0) {
        fprintf(stderr, "em_test_pg: no PostgreSQL server binaries (initdb, postgres) under "
                        "/usr/lib/postgresql/*/bin; set EM_TEST_PG_BIN or install postgresql\n");
        return -1;
    }
    runas_t r;
    if (runas_get(&r) != 0)
        return -1;
    if (em_test_mkdtemp(pg->dir, sizeof(pg->dir)) != 0) {
        perror("em_test_pg: mkdtemp");
        pg->dir[0] = '\0';
        return -1;
    }
    live_set(pg, false);
    pg->port = PG_PORT;
    if (r.drop && (make_reachable(pg->dir) != 0 || chown(pg->dir, r.uid, r.gid) != 0)) {
        perror("em_test_pg: cannot hand the directory to the postgres user");
        return -1;
    }
    if (run_initdb(pg, &r) != 0 || run_server(pg) != 0)
        return -1;
    if (em_test_pg_create_db(pg, "emiot", pg->url, sizeof(pg->url)) != 0)
        return -1;
    return 0;
}

int em_test_pg_stop(em_test_pg_t *pg)
{
    if (pg == NULL || pg->pid <= 0)
        return 0;
    /* SIGINT: fast shutdown (clients disconnected, a clean checkpoint). */
    kill(pg->pid, SIGINT);
    if (wait_exit(pg->pid, 10000) == -2) {
        fprintf(stderr, "em_test_pg: postgres did not stop within 10 s; killing it\n");
        kill_wait(pg->pid);
    }
    pg->pid = 0;
    live_set(pg, false);
    return 0;
}

int em_test_pg_kill(em_test_pg_t *pg)
{
    if (pg == NULL || pg->pid <= 0)
        return -1;
    kill_wait(pg->pid);
    pg->pid = 0;
    live_set(pg, false);
    return 0;
}

int em_test_pg_restart(em_test_pg_t *pg)
{
    if (pg == NULL || pg->dir[0] == '\0')
        return -1;
    em_test_pg_stop(pg);
    /* After a SIGKILL the backends may still be exiting and holding the
     * shared memory; the new postmaster waits for them itself. */
    return run_server(pg);
}

void em_test_pg_cleanup(em_test_pg_t *pg)
{
    if (pg == NULL)
        return;
    em_test_pg_stop(pg);
    if (pg->dir[0] != '\0') {
        em_test_rmtree(pg->dir);
        live_set(pg, true);
    }
    memset(pg, 0, sizeof(*pg));
}

const char *em_test_pg_url(const em_test_pg_t *pg)
{
    return pg->url;
}
