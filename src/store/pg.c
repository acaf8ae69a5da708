/*
 * emiot - pg.c: the PostgreSQL store backend (libpq).
 *
 * First step: the backend table exists so that store.c links; open refuses
 * until the operations below are filled in (next commit).
 */
#include <libpq-fe.h>

#include "store/store_internal.h"

static em_err_t pg_open(const char *url, const em_store_options_t *opts, em__store_conn_t **out,
                        em_error_t *err)
{
    (void)url;
    (void)opts;
    *out = NULL;
    return em_error_set(err, EM_ERR_CONFIGURATION, EM_SEV_HIGH, "url",
                        "the postgresql backend is not available in this build yet");
}

static void pg_close(em__store_conn_t *c)
{
    (void)c;
}

const em__store_backend_t em__store_pg = {
    .name = "postgresql",
    .open = pg_open,
    .close = pg_close,
};
