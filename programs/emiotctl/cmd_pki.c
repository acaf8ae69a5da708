/*
 * emiotctl - cmd_pki.c: `emiotctl pki ...`: the local CA directory.
 *
 * The CA is offline: these commands work on the CA directory (pki.h) through
 * libemiot's em_pki_* functions and never talk to emiotd, which may share the
 * directory to sign enrollment requests (the directory's lock keeps the two
 * apart). The CA key is opened only by the commands that sign (issue,
 * revoke, crl), with the keystore passphrase or key file, or from an HSM.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include <openssl/asn1.h>
#include <openssl/x509.h>

#include "ctl.h"
#include "emiot/clock.h"
#include "emiot/pki.h"

#define DAY_MS ((int64_t)86400000)
/* The limits of pki.h in the types they are compared with. */
#define DAYS_MAX ((long)EM_PKI_DAYS_MAX)
#define CSR_MAX  ((size_t)EM_PKI_CSR_MAX)

enum {
    O_CN = 1000,
    O_DAYS,
    O_CRL_DAYS,
    O_KEY_URI,
    O_CERT,
    O_KEY,
    O_PROFILE,
    O_CSR,
    O_DNS,
    O_IP,
    O_NOT_BEFORE,
    O_NOT_AFTER,
    O_OUT_CERT,
    O_OUT_KEY,
    O_REASON,
    O_EXPIRING
};

typedef struct opts {
    ctl_secret_opts_t s;
    const char *cn, *key_uri, *cert, *key, *csr, *out_cert, *out_key;
    const char *not_before, *not_after;
    em_cert_profile_t profile;
    em_crl_reason_t reason;
    long days, crl_days, expiring;
    bool has_expiring;
    const char *dns[EM_PKI_SAN_MAX];
    size_t ndns;
    const char *ips[EM_PKI_SAN_MAX];
    size_t nips;
} opts_t;

static int on_opt(void *ud, int id, const char *arg)
{
    opts_t *o = ud;
    if (ctl_secret_opt(&o->s, id, arg))
        return 0;
    switch (id) {
    case O_CN:
        o->cn = arg;
        return 0;
    case O_DAYS:
        return ctl_parse_long("--days", arg, 1, DAYS_MAX, &o->days);
    case O_CRL_DAYS:
        return ctl_parse_long("--crl-days", arg, 1, 366, &o->crl_days);
    case O_KEY_URI:
        o->key_uri = arg;
        return 0;
    case O_CERT:
        o->cert = arg;
        return 0;
    case O_KEY:
        o->key = arg;
        return 0;
    case O_PROFILE:
        if (em_cert_profile_parse(arg, &o->profile) != EM_OK) {
            ctl_err("validation", "--profile: must be device, server or client");
            return CTL_INVALID;
        }
        return 0;
    case O_CSR:
        o->csr = arg;
        return 0;
    case O_DNS:
    case O_IP:
        if (o->ndns + o->nips >= EM_PKI_SAN_MAX) {
            ctl_err("validation", "at most %d --dns and --ip in one certificate", EM_PKI_SAN_MAX);
            return CTL_INVALID;
        }
        if (id == O_DNS)
            o->dns[o->ndns++] = arg;
        else
            o->ips[o->nips++] = arg;
        return 0;
    case O_NOT_BEFORE:
        o->not_before = arg;
        return ctl_check_time("--not-before", arg);
    case O_NOT_AFTER:
        o->not_after = arg;
        return ctl_check_time("--not-after", arg);
    case O_OUT_CERT:
        o->out_cert = arg;
        return 0;
    case O_OUT_KEY:
        o->out_key = arg;
        return 0;
    case O_REASON:
        if (em_crl_reason_parse(arg, &o->reason) != EM_OK) {
            ctl_err("validation", "--reason: must be unspecified, keyCompromise, caCompromise, "
                                  "affiliationChanged, superseded or cessationOfOperation");
            return CTL_INVALID;
        }
        return 0;
    case O_EXPIRING:
        o->has_expiring = true;
        return ctl_parse_long("--expiring", arg, 0, DAYS_MAX, &o->expiring);
    default:
        return CTL_USAGE;
    }
}

static int parse(ctl_t *c, const ctl_cmd_t *cmd, int argc, char **argv, const struct option *opt,
                 opts_t *o, ctl_args_t *a)
{
    memset(o, 0, sizeof *o);
    return ctl_parse(c, cmd, argc, argv, opt, on_opt, o, a);
}

/* An RFC 3339 time or epoch milliseconds (ctl_check_time accepted it). */
static int64_t time_arg(const char *s)
{
    int64_t ms = 0;
    em_error_t e;
    if (em_time_parse(s, strlen(s), &ms, &e) == EM_OK)
        return ms;
    return strtoll(s, NULL, 10);
}

static void fmt_time(int64_t ms, char *buf, size_t size)
{
    if (em_time_format(ms, buf, size) == 0 && size > 0)
        buf[0] = '\0';
}

static int64_t asn1_ms(const ASN1_TIME *t)
{
    struct tm tm;
    if (t == NULL || ASN1_TIME_to_tm(t, &tm) != 1)
        return 0;
    return (int64_t)timegm(&tm) * 1000;
}

/* ---- opening the CA ---------------------------------------------------------- */

typedef struct ca {
    em_pki_t *pki;
    em_keystore_secret_t *secret;
    em_pkcs11_t *hsm;
} ca_t;

static void ca_close(ca_t *ca)
{
    /* The CA key may come from the HSM: free it before the module. */
    em_pki_free(ca->pki);
    em_pkcs11_free(ca->hsm);
    em_keystore_secret_free(ca->secret);
    memset(ca, 0, sizeof *ca);
}

static bool dir_has(const char *dir, const char *name)
{
    char p[CTL_PATH_MAX + 32];
    snprintf(p, sizeof p, "%s/%s", dir, name);
    struct stat st;
    return stat(p, &st) == 0;
}

/* Opens the CA directory; with_key: with its key (to sign), from the HSM when
 * the directory names one (ca.key.uri) or --pkcs11-module is given, else from
 * the keystore with the passphrase or key file. */
static int ca_open(const opts_t *o, bool with_key, ca_t *ca)
{
    memset(ca, 0, sizeof *ca);
    const char *dir = ctl_secret_dir(&o->s);
    if (dir == NULL)
        return CTL_USAGE;
    if (!dir_has(dir, "ca.crt")) {
        ctl_err("not_found", "no CA in %s (create one with `" PROGRAM " pki init`)", dir);
        return CTL_NOTFOUND;
    }
    int rc = 0;
    if (with_key) {
        if (o->s.pkcs11_module != NULL || dir_has(dir, "ca.key.uri"))
            rc = ctl_secret_pkcs11(&o->s, &ca->hsm);
        else
            rc = ctl_secret_keystore(o->s.key_file, o->s.passphrase_file, CTL_ENV_PASSPHRASE,
                                     &ca->secret);
    }
    em_error_t e;
    em_error_clear(&e);
    if (rc == 0 && em_pki_open(dir, ca->secret, ca->hsm, &ca->pki, &e) != EM_OK)
        rc = ctl_em_fail(with_key ? "cannot open the CA key" : "cannot open the CA", &e);
    if (rc != 0)
        ca_close(ca);
    return rc;
}

/* Parses the command line, then opens the CA directory (ca_open). */
static int parse_open(ctl_t *c, const ctl_cmd_t *cmd, int argc, char **argv,
                      const struct option *opt, bool with_key, opts_t *o, ctl_args_t *a, ca_t *ca)
{
    int rc = parse(c, cmd, argc, argv, opt, o, a);
    if (rc != 0)
        return rc;
    return ca_open(o, with_key, ca);
}

/* The secret or HSM for a new CA's key (init, import). */
static int new_ca_secret(const opts_t *o, const char *key_ref, ca_t *ca)
{
    memset(ca, 0, sizeof *ca);
    if (key_ref != NULL && em_key_ref_is_pkcs11(key_ref))
        return ctl_secret_pkcs11(&o->s, &ca->hsm);
    return ctl_secret_keystore(o->s.key_file, o->s.passphrase_file, CTL_ENV_PASSPHRASE,
                               &ca->secret);
}

/* ---- output ------------------------------------------------------------------- */

static const char *cert_status(const em_pki_cert_t *r, int64_t now)
{
    if (r->revoked_at_ms != 0)
        return "revoked";
    if (r->not_after_ms <= now)
        return "expired";
    if (r->not_before_ms > now)
        return "not yet valid";
    return "valid";
}

/* The record as JSON (NULL on out of memory). */
static cJSON *cert_json(const em_pki_cert_t *r, int64_t now)
{
    char nb[EM_TIME_STR_MAX], na[EM_TIME_STR_MAX], ra[EM_TIME_STR_MAX];
    fmt_time(r->not_before_ms, nb, sizeof nb);
    fmt_time(r->not_after_ms, na, sizeof na);
    cJSON *j = cJSON_CreateObject();
    bool ok = j != NULL && cJSON_AddStringToObject(j, "serial", r->serial) != NULL &&
              cJSON_AddStringToObject(j, "profile", em_cert_profile_name(r->profile)) != NULL &&
              cJSON_AddStringToObject(j, "commonName", r->common_name) != NULL &&
              cJSON_AddStringToObject(j, "notBefore", nb) != NULL &&
              cJSON_AddStringToObject(j, "notAfter", na) != NULL &&
              cJSON_AddStringToObject(j, "status", cert_status(r, now)) != NULL &&
              cJSON_AddStringToObject(j, "sha256", r->sha256) != NULL;
    if (ok && r->revoked_at_ms == 0 && r->not_after_ms > now) {
        int64_t whole_days = (r->not_after_ms - now) / DAY_MS; /* a part day does not count */
        ok = cJSON_AddNumberToObject(j, "daysLeft", (double)whole_days) != NULL;
    }
    if (ok && r->revoked_at_ms != 0) {
        fmt_time(r->revoked_at_ms, ra, sizeof ra);
        ok = cJSON_AddStringToObject(j, "revokedAt", ra) != NULL &&
             cJSON_AddStringToObject(j, "reason", em_crl_reason_name(r->reason)) != NULL;
    }
    if (!ok) {
        cJSON_Delete(j);
        return NULL;
    }
    return j;
}

static int oom(void)
{
    ctl_err("out_of_memory", "out of memory");
    return CTL_ERROR;
}

static const ctl_col_t cert_cols[] = {
    {"Serial", "serial", COL_STR},           {"Profile", "profile", COL_STR},
    {"CN", "commonName", COL_STR},           {"Not after", "notAfter", COL_TIME},
    {"Status", "status", COL_STR},           {"Days left", "daysLeft", COL_STR},
    {"Revoked", "revokedAt", COL_TIME},      {"Reason", "reason", COL_STR},
    {"Certificate", "certificate", COL_STR}, {"Key", "key", COL_STR},
};
static const ctl_view_t cert_view = CTL_VIEW(cert_cols);

/* Prints the record with the file it names under name (and file2 under name2
 * when file2 is not NULL). */
static int print_cert(ctl_t *c, const em_pki_cert_t *info, const char *name, const char *file,
                      const char *name2, const char *file2)
{
    cJSON *j = cert_json(info, em_now_ms());
    if (j == NULL || cJSON_AddStringToObject(j, name, file) == NULL ||
        (file2 != NULL && cJSON_AddStringToObject(j, name2, file2) == NULL)) {
        cJSON_Delete(j);
        return oom();
    }
    ctl_print(c, j, &cert_view);
    cJSON_Delete(j);
    return 0;
}

/* ---- pki init, pki import ------------------------------------------------------ */

/* Prints what the new CA directory holds. */
static int print_ca(ctl_t *c, const char *dir, const char *done)
{
    opts_t o;
    memset(&o, 0, sizeof o);
    o.s.dir = dir;
    ca_t ca;
    int rc = ca_open(&o, false, &ca);
    if (rc != 0)
        return rc;
    X509 *x = em_pki_ca_cert(ca.pki);
    char cn[256] = "", fp[EM_PKI_SHA256_LEN + 1], na[EM_TIME_STR_MAX];
    X509_NAME_get_text_by_NID(X509_get_subject_name(x), NID_commonName, cn, sizeof cn);
    em_pki_fingerprint(x, fp);
    fmt_time(asn1_ms(X509_get0_notAfter(x)), na, sizeof na);
    cJSON *j = cJSON_CreateObject();
    bool ok = j != NULL && cJSON_AddStringToObject(j, "directory", dir) != NULL &&
              cJSON_AddStringToObject(j, "commonName", cn) != NULL &&
              cJSON_AddStringToObject(j, "notAfter", na) != NULL &&
              cJSON_AddStringToObject(j, "sha256", fp) != NULL &&
              cJSON_AddStringToObject(j, "caCertificate", em_pki_ca_file(ca.pki)) != NULL &&
              cJSON_AddStringToObject(j, "crl", em_pki_crl_file(ca.pki)) != NULL;
    ca_close(&ca);
    if (!ok) {
        cJSON_Delete(j);
        return oom();
    }
    if (!c->quiet && c->format == CTL_OUT_TABLE) {
        printf("%s\n", done);
        static const ctl_col_t cols[] = {
            {"Directory", "directory", COL_STR},          {"CN", "commonName", COL_STR},
            {"Not after", "notAfter", COL_TIME},          {"SHA-256", "sha256", COL_STR},
            {"CA certificate", "caCertificate", COL_STR}, {"CRL", "crl", COL_STR},
        };
        static const ctl_view_t view = CTL_VIEW(cols);
        ctl_print(c, j, &view);
    } else {
        ctl_print(c, j, NULL);
    }
    cJSON_Delete(j);
    return 0;
}

static int run_init(ctl_t *c, const ctl_cmd_t *cmd, int argc, char **argv)
{
    static const struct option opt[] = {
        {"cn", required_argument, NULL, O_CN},
        {"days", required_argument, NULL, O_DAYS},
        {"crl-days", required_argument, NULL, O_CRL_DAYS},
        {"key-uri", required_argument, NULL, O_KEY_URI},
        CTL_SECRET_OPTIONS,
        {NULL, 0, NULL, 0},
    };
    opts_t o;
    ctl_args_t a;
    int rc = parse(c, cmd, argc, argv, opt, &o, &a);
    if (rc != 0)
        return rc;
    if (o.key_uri != NULL && !em_key_ref_is_pkcs11(o.key_uri)) {
        ctl_err("validation", "--key-uri: must be a PKCS#11 URI (pkcs11:token=...;object=...)");
        return CTL_INVALID;
    }
    const char *dir = ctl_secret_dir(&o.s);
    if (dir == NULL)
        return CTL_USAGE;
    ca_t ca;
    rc = new_ca_secret(&o, o.key_uri, &ca);
    if (rc != 0)
        return rc;
    em_pki_init_options_t io;
    em_pki_init_options_init(&io);
    if (o.cn != NULL)
        io.common_name = o.cn;
    if (o.days > 0)
        io.days = (int)o.days;
    if (o.crl_days > 0)
        io.crl_days = (int)o.crl_days;
    io.key_ref = o.key_uri;
    io.secret = ca.secret;
    io.hsm = ca.hsm;
    em_error_t e;
    em_error_clear(&e);
    if (em_pki_init(dir, &io, &e) != EM_OK)
        rc = ctl_em_fail("pki init", &e);
    ca_close(&ca);
    if (rc != 0)
        return rc;
    return print_ca(c, dir,
                    o.key_uri != NULL ? "created the CA; its key stays in the HSM"
                                      : "created the CA; its key is sealed in ca.key");
}

static int run_import(ctl_t *c, const ctl_cmd_t *cmd, int argc, char **argv)
{
    static const struct option opt[] = {
        {"cert", required_argument, NULL, O_CERT},
        {"key", required_argument, NULL, O_KEY},
        {"crl-days", required_argument, NULL, O_CRL_DAYS},
        CTL_SECRET_OPTIONS,
        {NULL, 0, NULL, 0},
    };
    opts_t o;
    ctl_args_t a;
    int rc = parse(c, cmd, argc, argv, opt, &o, &a);
    if (rc != 0)
        return rc;
    if (o.cert == NULL || o.key == NULL) {
        ctl_err(NULL, "--cert FILE and --key FILE|pkcs11:URI are required");
        return CTL_USAGE;
    }
    const char *dir = ctl_secret_dir(&o.s);
    if (dir == NULL)
        return CTL_USAGE;
    ca_t ca;
    rc = new_ca_secret(&o, o.key, &ca);
    if (rc != 0)
        return rc;
    em_error_t e;
    em_error_clear(&e);
    if (em_pki_import(dir, o.cert, o.key, ca.secret, ca.hsm, o.crl_days > 0 ? (int)o.crl_days : 30,
                      &e) != EM_OK)
        rc = ctl_em_fail("pki import", &e);
    ca_close(&ca);
    if (rc != 0)
        return rc;
    return print_ca(c, dir,
                    em_key_ref_is_pkcs11(o.key)
                        ? "imported the CA; its key stays in the HSM"
                        : "imported the CA; its key is sealed in ca.key (the plain key file you "
                          "gave is still there: remove it, shred -u)");
}

/* ---- pki issue -------------------------------------------------------------------- */

/* The options of pki issue that only make sense together, or apart. */
static int check_issue_opts(const ctl_cmd_t *cmd, const opts_t *o)
{
    if (o->profile == EM_CERT_NONE || o->out_cert == NULL) {
        ctl_err(NULL, "--profile and --out-cert are required");
        fprintf(stderr, "usage: " PROGRAM " %s\n", cmd->usage);
        return CTL_USAGE;
    }
    if (o->csr != NULL && o->out_key != NULL) {
        ctl_err(NULL, "--out-key: with --csr the key stays where the CSR was made");
        return CTL_USAGE;
    }
    if (o->csr == NULL && (o->out_key == NULL || o->cn == NULL)) {
        ctl_err(NULL, "without --csr, --cn and --out-key are required (the new key goes there)");
        return CTL_USAGE;
    }
    if ((o->not_before == NULL) != (o->not_after == NULL)) {
        ctl_err(NULL, "--not-before and --not-after go together");
        return CTL_USAGE;
    }
    if (o->not_before != NULL && o->days > 0) {
        ctl_err(NULL, "--days or --not-before/--not-after, not both");
        return CTL_USAGE;
    }
    if (o->profile != EM_CERT_SERVER && o->ndns + o->nips > 0) {
        ctl_err("validation", "--dns and --ip are for server certificates");
        return CTL_INVALID;
    }
    if (strcmp(o->out_cert, o->out_key != NULL ? o->out_key : "") == 0) {
        ctl_err(NULL, "--out-cert and --out-key must be different files");
        return CTL_USAGE;
    }
    return 0;
}

static int run_issue(ctl_t *c, const ctl_cmd_t *cmd, int argc, char **argv)
{
    static const struct option opt[] = {
        {"profile", required_argument, NULL, O_PROFILE},
        {"cn", required_argument, NULL, O_CN},
        {"csr", required_argument, NULL, O_CSR},
        {"dns", required_argument, NULL, O_DNS},
        {"ip", required_argument, NULL, O_IP},
        {"days", required_argument, NULL, O_DAYS},
        {"not-before", required_argument, NULL, O_NOT_BEFORE},
        {"not-after", required_argument, NULL, O_NOT_AFTER},
        {"out-cert", required_argument, NULL, O_OUT_CERT},
        {"out-key", required_argument, NULL, O_OUT_KEY},
        CTL_SECRET_OPTIONS,
        {NULL, 0, NULL, 0},
    };
    opts_t o;
    ctl_args_t a;
    int rc = parse(c, cmd, argc, argv, opt, &o, &a);
    if (rc != 0)
        return rc;
    rc = check_issue_opts(cmd, &o);
    if (rc != 0)
        return rc;
    em_pki_issue_options_t io;
    memset(&io, 0, sizeof io);
    io.profile = o.profile;
    io.common_name = o.cn;
    io.dns_names = o.dns;
    io.ndns = o.ndns;
    io.ip_addresses = o.ips;
    io.nips = o.nips;
    io.days = (int)o.days;
    if (o.not_before != NULL) {
        io.not_before_ms = time_arg(o.not_before);
        io.not_after_ms = time_arg(o.not_after);
        if (io.not_after_ms <= io.not_before_ms) {
            ctl_err("validation", "--not-after must be later than --not-before");
            return CTL_INVALID;
        }
    }
    char *csr = NULL;
    size_t csr_len = 0;
    if (o.csr != NULL) {
        rc = ctl_read_file(o.csr, "CSR", CSR_MAX, false, &csr, &csr_len);
        if (rc != 0)
            return rc;
    }
    ca_t ca;
    rc = ca_open(&o, true, &ca);
    if (rc != 0) {
        ctl_free_file(csr, csr_len);
        return rc;
    }
    /* The output files are made before anything is signed, so that a
     * certificate is never issued whose key then has nowhere to go. */
    int fd_cert = ctl_create_new_file(o.out_cert, 0644);
    int fd_key = fd_cert >= 0 && o.out_key != NULL ? ctl_create_new_file(o.out_key, 0600) : -1;
    if (fd_cert < 0 || (o.out_key != NULL && fd_key < 0)) {
        if (fd_cert >= 0) {
            close(fd_cert);
            unlink(o.out_cert);
        }
        ca_close(&ca);
        ctl_free_file(csr, csr_len);
        return CTL_INVALID;
    }
    char *cert_pem = NULL, *key_pem = NULL;
    em_pki_cert_t info;
    memset(&info, 0, sizeof info);
    em_error_t e;
    em_error_clear(&e);
    em_err_t er = csr != NULL ? em_pki_issue_csr(ca.pki, &io, csr, csr_len, &cert_pem, &info, &e)
                              : em_pki_issue_new_key(ca.pki, &io, &key_pem, &cert_pem, &info, &e);
    ctl_free_file(csr, csr_len);
    ca_close(&ca);
    if (er != EM_OK) {
        rc = ctl_em_fail("pki issue", &e);
        /* A CSR whose signature does not verify is bad input, not a fault. */
        if (er == EM_ERR_CRYPTO)
            rc = CTL_INVALID;
    } else {
        rc = ctl_write_fd(fd_cert, o.out_cert, cert_pem, strlen(cert_pem));
        if (rc == 0 && key_pem != NULL)
            rc = ctl_write_fd(fd_key, o.out_key, key_pem, strlen(key_pem));
    }
    if (key_pem != NULL)
        em_keystore_data_free((unsigned char *)key_pem, strlen(key_pem));
    free(cert_pem);
    close(fd_cert);
    if (fd_key >= 0)
        close(fd_key);
    if (rc != 0) {
        unlink(o.out_cert);
        if (o.out_key != NULL)
            unlink(o.out_key);
        if (er == EM_OK)
            ctl_err(NULL,
                    "the certificate %s was issued and is in the CA's index: revoke it "
                    "(pki revoke %s) or get it back with pki show",
                    info.serial, info.serial);
        return rc;
    }
    return print_cert(c, &info, "certificate", o.out_cert, "key", o.out_key);
}

/* ---- pki revoke, crl, list, show ----------------------------------------------------- */

static void broker_hint(const ctl_t *c, const char *crl)
{
    if (c->quiet || c->format == CTL_OUT_JSON)
        return;
    printf(
        "new CRL: %s\n"
        "The broker reads its own copy: run `" PROGRAM " broker config ... --force` again (or "
        "copy the CRL over its crl.pem), then send mosquitto SIGHUP (it reloads the CRL). emiotd "
        "re-reads the CRL by itself.\n",
        crl);
}

static int run_revoke(ctl_t *c, const ctl_cmd_t *cmd, int argc, char **argv)
{
    static const struct option opt[] = {
        {"reason", required_argument, NULL, O_REASON},
        CTL_SECRET_OPTIONS,
        {NULL, 0, NULL, 0},
    };
    opts_t o;
    ctl_args_t a;
    ca_t ca;
    int rc = parse_open(c, cmd, argc, argv, opt, true, &o, &a, &ca);
    if (rc != 0)
        return rc;
    em_error_t e;
    em_error_clear(&e);
    em_pki_cert_t info;
    memset(&info, 0, sizeof info);
    if (em_pki_revoke(ca.pki, a.pos[0], o.reason, &e) != EM_OK ||
        em_pki_get(ca.pki, a.pos[0], &info, NULL, &e) != EM_OK)
        rc = ctl_em_fail("pki revoke", &e);
    char crl[CTL_PATH_MAX];
    snprintf(crl, sizeof crl, "%s", em_pki_crl_file(ca.pki));
    ca_close(&ca);
    if (rc != 0)
        return rc;
    rc = print_cert(c, &info, "crl", crl, NULL, NULL);
    if (rc != 0)
        return rc;
    broker_hint(c, crl);
    return 0;
}

static int run_crl(ctl_t *c, const ctl_cmd_t *cmd, int argc, char **argv)
{
    static const struct option opt[] = {
        {"days", required_argument, NULL, O_DAYS},
        CTL_SECRET_OPTIONS,
        {NULL, 0, NULL, 0},
    };
    opts_t o;
    ctl_args_t a;
    int rc = parse(c, cmd, argc, argv, opt, &o, &a);
    if (rc != 0)
        return rc;
    if (o.days > 366) {
        ctl_err("validation", "--days: must be 1-366");
        return CTL_INVALID;
    }
    ca_t ca;
    rc = ca_open(&o, true, &ca);
    if (rc != 0)
        return rc;
    em_error_t e;
    em_error_clear(&e);
    if (em_pki_crl_publish(ca.pki, (int)o.days, &e) != EM_OK)
        rc = ctl_em_fail("pki crl", &e);
    char crl[CTL_PATH_MAX];
    snprintf(crl, sizeof crl, "%s", em_pki_crl_file(ca.pki));
    ca_close(&ca);
    if (rc != 0)
        return rc;
    if (c->format == CTL_OUT_JSON && !c->quiet) {
        cJSON *j = cJSON_CreateObject();
        if (j == NULL || cJSON_AddStringToObject(j, "crl", crl) == NULL) {
            cJSON_Delete(j);
            return oom();
        }
        ctl_print_json(j);
        cJSON_Delete(j);
    }
    broker_hint(c, crl);
    return 0;
}

typedef struct list_ctx {
    cJSON *rows;
    int64_t now;
    bool has_expiring;
    int64_t horizon;
    bool failed;
} list_ctx_t;

static int list_one(const em_pki_cert_t *r, void *ud)
{
    list_ctx_t *l = ud;
    if (l->has_expiring && (r->revoked_at_ms != 0 || r->not_after_ms > l->horizon))
        return 0;
    cJSON *j = cert_json(r, l->now);
    if (j == NULL || cJSON_GetArraySize(l->rows) >= CTL_ITEMS_MAX ||
        !cJSON_AddItemToArray(l->rows, j)) {
        cJSON_Delete(j);
        l->failed = true;
        return 1;
    }
    return 0;
}

static int run_list(ctl_t *c, const ctl_cmd_t *cmd, int argc, char **argv)
{
    static const struct option opt[] = {
        {"expiring", required_argument, NULL, O_EXPIRING},
        CTL_SECRET_OPTIONS,
        {NULL, 0, NULL, 0},
    };
    opts_t o;
    ctl_args_t a;
    ca_t ca;
    int rc = parse_open(c, cmd, argc, argv, opt, false, &o, &a, &ca);
    if (rc != 0)
        return rc;
    list_ctx_t l = {cJSON_CreateArray(), em_now_ms(), o.has_expiring, 0, false};
    l.horizon = l.now + o.expiring * DAY_MS;
    em_error_t e;
    em_error_clear(&e);
    if (l.rows != NULL && em_pki_list(ca.pki, list_one, &l, &e) != EM_OK)
        rc = ctl_em_fail("pki list", &e);
    else if (l.rows == NULL || l.failed)
        rc = oom();
    ca_close(&ca);
    if (rc == 0) {
        static const ctl_col_t cols[] = {
            {"Serial", "serial", COL_STR}, {"Profile", "profile", COL_STR},
            {"CN", "commonName", COL_STR}, {"Not after", "notAfter", COL_TIME},
            {"Status", "status", COL_STR}, {"Days left", "daysLeft", COL_STR},
        };
        static const ctl_view_t view = CTL_VIEW(cols);
        if (cJSON_GetArraySize(l.rows) == 0 && c->format == CTL_OUT_TABLE && !c->quiet)
            printf(o.has_expiring ? "no certificate expires within %ld days\n"
                                  : "no certificates issued yet\n",
                   o.expiring);
        else
            ctl_print(c, l.rows, &view);
    }
    cJSON_Delete(l.rows);
    return rc;
}

static int run_show(ctl_t *c, const ctl_cmd_t *cmd, int argc, char **argv)
{
    static const struct option opt[] = {
        CTL_SECRET_OPTIONS,
        {NULL, 0, NULL, 0},
    };
    opts_t o;
    ctl_args_t a;
    ca_t ca;
    int rc = parse_open(c, cmd, argc, argv, opt, false, &o, &a, &ca);
    if (rc != 0)
        return rc;
    em_pki_cert_t info;
    char *pem = NULL;
    em_error_t e;
    em_error_clear(&e);
    if (em_pki_get(ca.pki, a.pos[0], &info, &pem, &e) != EM_OK)
        rc = ctl_em_fail("pki show", &e);
    ca_close(&ca);
    if (rc != 0)
        return rc;
    if (c->format == CTL_OUT_JSON) {
        cJSON *j = cert_json(&info, em_now_ms());
        if (j == NULL || cJSON_AddStringToObject(j, "pem", pem) == NULL) {
            cJSON_Delete(j);
            free(pem);
            return oom();
        }
        if (!c->quiet)
            ctl_print_json(j);
        cJSON_Delete(j);
    } else if (!c->quiet) {
        (void)fputs(pem, stdout);
    }
    free(pem);
    return 0;
}

const ctl_cmd_t ctl_pki_cmds[] = {
    {"pki", "init", run_init, 0, 0,
     "pki init [--cn NAME] [--days N] [--crl-days N] [--key-uri pkcs11:...]",
     "Create the CA directory: an ECDSA P-256 CA, its key sealed (or in an HSM)",
     "  --cn NAME                the CA's name (default \"emiot CA\")\n"
     "  --days N                 validity (default 3650)\n"
     "  --crl-days N             each CRL's validity (default 30)\n"
     "  --key-uri pkcs11:URI     use this key in an HSM (with --pkcs11-module)\n" CTL_SECRET_HELP},
    {"pki", "import", run_import, 0, 0, "pki import --cert FILE --key FILE|pkcs11:URI",
     "Create the CA directory from your own CA certificate and key",
     "  --cert FILE              the CA certificate (PEM), then its chain\n"
     "  --key FILE|pkcs11:URI    its key: a plain PEM file (sealed into ca.key) or an HSM key\n"
     "  --crl-days N             each CRL's validity (default 30)\n" CTL_SECRET_HELP},
    {"pki", "issue", run_issue, 0, 0,
     "pki issue --profile device|server|client [--cn NAME] [--csr FILE] --out-cert FILE "
     "[--out-key FILE]",
     "Issue a certificate, from a CSR or with a new key",
     "  --profile P              device (CN = device id), server, or client (manager, operators)\n"
     "  --cn NAME                the subject's CN (with --csr: must match the CSR's)\n"
     "  --csr FILE               sign this CSR (PEM); the key stays where it was made\n"
     "  --dns NAME, --ip ADDR    server: subjectAltName entries (repeatable, 16 in all)\n"
     "  --days N                 validity (default: device 365, client 365, server 397)\n"
     "  --not-before T --not-after T  an explicit period (RFC 3339 or epoch ms)\n"
     "  --out-cert FILE          the certificate (PEM; never overwritten)\n"
     "  --out-key FILE           without --csr: the new key (PEM, mode 0600; never "
     "overwritten)\n" CTL_SECRET_HELP},
    {"pki", "revoke", run_revoke, 1, 1, "pki revoke SERIAL [--reason R]",
     "Revoke a certificate and publish a new CRL",
     "  --reason R               unspecified (default), keyCompromise, caCompromise,\n"
     "                           affiliationChanged, superseded, cessationOfOperation\n"
     "" CTL_SECRET_HELP},
    {"pki", "crl", run_crl, 0, 0, "pki crl [--days N]",
     "Publish a new CRL (before the current one's nextUpdate)",
     "  --days N                 this CRL's validity (default: the CA's "
     "crl-days)\n" CTL_SECRET_HELP},
    {"pki", "list", run_list, 0, 0, "pki list [--expiring DAYS]",
     "List issued certificates with their expiry and status",
     "  --expiring DAYS          only certificates not revoked that expire within DAYS days\n"
     "                           (those already expired included)\n"
     "  --dir D                  the CA directory (env EMIOT_PKI_DIR); no secret needed\n"},
    {"pki", "show", run_show, 1, 1, "pki show SERIAL", "Print an issued certificate (PEM)",
     "  --dir D                  the CA directory (env EMIOT_PKI_DIR); no secret needed\n"},
    {NULL, NULL, NULL, 0, 0, NULL, NULL, NULL},
};
