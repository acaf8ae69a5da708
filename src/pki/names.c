/*
 * emiot - pki/names.c: profile and CRL reason names, and the CN and serial
 * rules every other file of the PKI applies.
 */
#include <string.h>

#include "pki/pki_internal.h"

static const char *const PROFILE_NAMES[] = {
    [EM_CERT_DEVICE] = "device",
    [EM_CERT_SERVER] = "server",
    [EM_CERT_CLIENT] = "client",
};

const char *em_cert_profile_name(em_cert_profile_t p)
{
    if (p <= EM_CERT_NONE || p > EM_CERT_CLIENT)
        return NULL;
    return PROFILE_NAMES[p];
}

em_err_t em_cert_profile_parse(const char *name, em_cert_profile_t *out)
{
    if (name == NULL || out == NULL)
        return EM_ERR_VALIDATION;
    for (int p = EM_CERT_DEVICE; p <= EM_CERT_CLIENT; p++) {
        if (strcmp(name, PROFILE_NAMES[p]) == 0) {
            *out = (em_cert_profile_t)p;
            return EM_OK;
        }
    }
    return EM_ERR_VALIDATION;
}

static const char *const REASON_NAMES[] = {
    [EM_CRL_UNSPECIFIED] = "unspecified",
    [EM_CRL_KEY_COMPROMISE] = "keyCompromise",
    [EM_CRL_CA_COMPROMISE] = "caCompromise",
    [EM_CRL_AFFILIATION_CHANGED] = "affiliationChanged",
    [EM_CRL_SUPERSEDED] = "superseded",
    [EM_CRL_CESSATION_OF_OPERATION] = "cessationOfOperation",
};
#define NREASONS (sizeof(REASON_NAMES) / sizeof(REASON_NAMES[0]))

const char *em_crl_reason_name(em_crl_reason_t r)
{
    if ((unsigned)r >= NREASONS)
        return NULL;
    return REASON_NAMES[r];
}

em_err_t em_crl_reason_parse(const char *name, em_crl_reason_t *out)
{
    if (name == NULL || out == NULL)
        return EM_ERR_VALIDATION;
    for (size_t r = 0; r < NREASONS; r++) {
        if (strcmp(name, REASON_NAMES[r]) == 0) {
            *out = (em_crl_reason_t)r;
            return EM_OK;
        }
    }
    return EM_ERR_VALIDATION;
}

static bool name_char(char c)
{
    return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '_' ||
           c == '.' || c == '@' || c == ':' || c == '-';
}

bool em__pki_cn_valid(em_cert_profile_t profile, const char *cn, size_t len)
{
    if (cn == NULL || len == 0 || len > EM_PKI_CN_MAX)
        return false;
    for (size_t i = 0; i < len; i++) {
        if (!name_char(cn[i]))
            return false;
    }
    bool device_id = em_device_id_validate(cn, len, NULL) == EM_OK;
    switch (profile) {
    case EM_CERT_DEVICE:
        return device_id;
    case EM_CERT_CLIENT:
        /* A client name must never be a device id: otherwise a device could
         * be given a certificate naming a user or the manager, or the reverse,
         * and take its MQTT identity (use_identity_as_username). */
        return !device_id;
    case EM_CERT_SERVER:
        return true;
    default:
        return false;
    }
}

bool em__pki_serial_normalise(const char *in, char out[EM_PKI_SERIAL_LEN + 1])
{
    if (in == NULL || strnlen(in, EM_PKI_SERIAL_LEN + 1) != EM_PKI_SERIAL_LEN)
        return false;
    for (size_t i = 0; i < EM_PKI_SERIAL_LEN; i++) {
        char c = in[i];
        if (c >= 'A' && c <= 'F')
            c = (char)(c - 'A' + 'a');
        if (!((c >= '0' && c <= '9') || (c >= 'a' && c <= 'f')))
            return false;
        out[i] = c;
    }
    out[EM_PKI_SERIAL_LEN] = '\0';
    return true;
}
