/*
 * emiot - dynsec/control.c: the dynamic-security plugin's control channel.
 *
 * The plugin reads {"commands":[...]} published on
 * $CONTROL/dynamic-security/v1 by an administrator and publishes
 * {"responses":[...]} on $CONTROL/dynamic-security/v1/response, one response
 * per command, in order, each echoing the command's "correlationData". Every
 * administrator subscribed there sees every answer, so each exchange carries
 * correlation data no other client uses (a random tag of this client and a
 * counter), and an answer is taken only when it names the exchange awaited.
 *
 * The JSON field is used rather than MQTT 5's correlation-data property so
 * that the exchange works over MQTT 3.1.1 as well (the transport falls back
 * to it), and the broker's packet ordering does the rest: the subscription to
 * the answers is sent before any command on the same connection, so it is in
 * place before the plugin answers.
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <time.h>

#include <openssl/crypto.h>
#include <openssl/rand.h>

#include "dynsec/dynsec_internal.h"
#include "emiot/clock.h"
#include "emiot/log.h"

int em__dynsec_ctl_init(em_dynsec_t *d)
{
    unsigned char raw[8];
    if (RAND_bytes(raw, (int)sizeof raw) != 1)
        return -1;
    static const char hex[] = "0123456789abcdef";
    for (size_t i = 0; i < sizeof raw; i++) {
        d->tag[2 * i] = hex[raw[i] >> 4];
        d->tag[2 * i + 1] = hex[raw[i] & 15];
    }
    d->tag[16] = '\0';

    pthread_condattr_t attr;
    if (pthread_condattr_init(&attr) != 0)
        return -1;
    int rc = pthread_condattr_setclock(&attr, CLOCK_MONOTONIC);
    if (rc == 0)
        rc = pthread_cond_init(&d->cv, &attr);
    pthread_condattr_destroy(&attr);
    if (rc != 0)
        return -1;
    if (pthread_mutex_init(&d->mu, NULL) != 0) {
        pthread_cond_destroy(&d->cv);
        return -1;
    }
    if (pthread_mutex_init(&d->call, NULL) != 0) {
        pthread_mutex_destroy(&d->mu);
        pthread_cond_destroy(&d->cv);
        return -1;
    }
    return 0;
}

void em__dynsec_ctl_cleanup(em_dynsec_t *d)
{
    cJSON_Delete(d->answer);
    d->answer = NULL;
    pthread_mutex_destroy(&d->call);
    pthread_mutex_destroy(&d->mu);
    pthread_cond_destroy(&d->cv);
}

/* ---- the network thread's side ------------------------------------------ */

cJSON *em__dynsec_answer_take(const void *payload, size_t len, const char *want)
{
    if (payload == NULL || len == 0 || len > EM__DYNSEC_ANSWER_MAX || want == NULL ||
        want[0] == '\0')
        return NULL;
    cJSON *root = cJSON_ParseWithLength(payload, len);
    cJSON *responses = cJSON_GetObjectItemCaseSensitive(root, "responses");
    cJSON *first = cJSON_IsArray(responses) ? cJSON_GetArrayItem(responses, 0) : NULL;
    const cJSON *corr = cJSON_GetObjectItemCaseSensitive(first, "correlationData");
    cJSON *answer = NULL;
    if (cJSON_IsString(corr) && corr->valuestring != NULL && strcmp(corr->valuestring, want) == 0)
        answer = cJSON_DetachItemViaPointer(root, responses);
    cJSON_Delete(root);
    return answer;
}

static void on_message(void *ud, const char *topic, const void *payload, size_t len, int qos,
                       bool retain)
{
    (void)qos;
    (void)retain;
    em_dynsec_t *d = ud;
    if (strcmp(topic, EM__DYNSEC_RESPONSE_TOPIC) != 0)
        return;
    char want[EM__DYNSEC_CORR_MAX];
    pthread_mutex_lock(&d->mu);
    bool waiting = d->want[0] != '\0' && d->answer == NULL;
    memcpy(want, d->want, sizeof want);
    pthread_mutex_unlock(&d->mu);
    if (!waiting)
        return;

    /* Parsed outside the lock: answers to other administrators are parsed
     * too, and the waiting thread need not wait for that. The exchange may
     * have ended meanwhile (a timeout), so the answer is taken only if the
     * same one is still awaited. */
    cJSON *answer = em__dynsec_answer_take(payload, len, want);
    if (answer == NULL)
        return;
    pthread_mutex_lock(&d->mu);
    if (d->answer == NULL && strcmp(d->want, want) == 0) {
        d->answer = answer;
        answer = NULL;
        pthread_cond_broadcast(&d->cv);
    }
    pthread_mutex_unlock(&d->mu);
    cJSON_Delete(answer);
}

static void on_event(void *ud, em_mqtt_event_t ev, const em_error_t *err)
{
    em_dynsec_t *d = ud;
    bool lost = ev == EM_MQTT_DISCONNECTED;
    /* With MQTT 5 the broker says so when it refuses a publish or a
     * subscription for want of rights; with 3.1.1 it stays silent and the
     * exchange times out. */
    bool refused = ev == EM_MQTT_ERROR && err != NULL && err->code == EM_ERR_PERMISSION_DENIED;
    if (!lost && !refused)
        return;
    pthread_mutex_lock(&d->mu);
    if (d->want[0] != '\0') {
        d->lost = d->lost || lost;
        d->refused = d->refused || refused;
        pthread_cond_broadcast(&d->cv);
    }
    pthread_mutex_unlock(&d->mu);
}

void em__dynsec_callbacks(em_dynsec_t *d, em_mqtt_callbacks_t *cbs)
{
    memset(cbs, 0, sizeof *cbs);
    cbs->on_message = on_message;
    cbs->on_event = on_event;
    cbs->userdata = d;
}

/* ---- the caller's side --------------------------------------------------- */

static void deadline_after(struct timespec *ts, int ms)
{
    clock_gettime(CLOCK_MONOTONIC, ts);
    ts->tv_sec += ms / 1000;
    ts->tv_nsec += (long)(ms % 1000) * 1000000L;
    if (ts->tv_nsec >= 1000000000L) {
        ts->tv_sec++;
        ts->tv_nsec -= 1000000000L;
    }
}

/* Publishes the message and waits for its answer; d->call is held. */
static em_err_t exchange(em_dynsec_t *d, const char *corr, const char *text, cJSON **out,
                         em_error_t *err)
{
    pthread_mutex_lock(&d->mu);
    cJSON_Delete(d->answer);
    d->answer = NULL;
    d->lost = false;
    d->refused = false;
    snprintf(d->want, sizeof d->want, "%s", corr);
    pthread_mutex_unlock(&d->mu);

    /* The answer may come before em_mqtt_publish returns: want is set first. */
    em_err_t rc =
        em_mqtt_publish(d->mqtt, EM__DYNSEC_TOPIC, text, strlen(text), 1, false, NULL, err);
    struct timespec until;
    deadline_after(&until, d->timeout_ms);
    pthread_mutex_lock(&d->mu);
    if (rc == EM_OK) {
        int wrc = 0;
        while (d->answer == NULL && !d->lost && !d->refused && wrc != ETIMEDOUT)
            wrc = pthread_cond_timedwait(&d->cv, &d->mu, &until);
        if (d->answer != NULL)
            *out = d->answer;
        else if (d->refused)
            rc = em_error_set(err, EM_ERR_PERMISSION_DENIED, EM_SEV_HIGH, NULL,
                              "the broker refused the dynamic-security command (the account "
                              "may not use %s)",
                              EM__DYNSEC_TOPIC);
        else if (d->lost)
            rc = em_error_set(err, EM_ERR_NOT_CONNECTED, EM_SEV_HIGH, NULL,
                              "the connection to the broker was lost before the "
                              "dynamic-security plugin answered (the change may or may not "
                              "have been made)");
        else
            rc = em_error_set(err, EM_ERR_TIMEOUT, EM_SEV_HIGH, NULL,
                              "the dynamic-security plugin did not answer within %d ms (is "
                              "the plugin loaded on this listener?)",
                              d->timeout_ms);
    }
    d->answer = NULL;
    d->want[0] = '\0';
    pthread_mutex_unlock(&d->mu);
    return rc;
}

/* The message the plugin reads, {"commands":[...]}; NULL when memory ran
 * out. */
static char *batch_text(cJSON *commands)
{
    cJSON *root = cJSON_CreateObject();
    char *text = NULL;
    /* The array is lent to the message for printing, then taken back. */
    if (root != NULL && cJSON_AddItemReferenceToObject(root, "commands", commands))
        text = cJSON_PrintUnformatted(root);
    cJSON_Delete(root); /* a reference: commands itself is not freed */
    return text;
}

em_err_t em__dynsec_exec(em_dynsec_t *d, cJSON *commands, cJSON **responses, em_error_t *err)
{
    *responses = NULL;
    int n = cJSON_GetArraySize(commands);
    if (!cJSON_IsArray(commands) || n < 1 || n > EM__DYNSEC_BATCH_MAX)
        return em_error_set(err, EM_ERR_INVALID_ARGUMENT, EM_SEV_MEDIUM, NULL,
                            "1-%d dynamic-security commands at a time", EM__DYNSEC_BATCH_MAX);
    if (!em_mqtt_is_connected(d->mqtt))
        return em_error_set(err, EM_ERR_NOT_CONNECTED, EM_SEV_HIGH, NULL,
                            "not connected to the broker's dynamic-security listener");

    pthread_mutex_lock(&d->call);
    char corr[EM__DYNSEC_CORR_MAX];
    snprintf(corr, sizeof corr, "%s-%llu", d->tag, (unsigned long long)++d->seq);

    em_err_t rc = EM_OK;
    cJSON *cmd;
    cJSON_ArrayForEach(cmd, commands)
    {
        if (!cJSON_IsObject(cmd)) {
            rc = em_error_set(err, EM_ERR_INVALID_ARGUMENT, EM_SEV_MEDIUM, NULL,
                              "a dynamic-security command must be an object");
            break;
        }
        cJSON_DeleteItemFromObjectCaseSensitive(cmd, "correlationData");
        if (cJSON_AddStringToObject(cmd, "correlationData", corr) == NULL) {
            rc = em_error_set(err, EM_ERR_NOMEM, EM_SEV_HIGH, NULL, "out of memory");
            break;
        }
    }
    char *text = NULL;
    if (rc == EM_OK && (text = batch_text(commands)) == NULL)
        rc = em_error_set(err, EM_ERR_NOMEM, EM_SEV_HIGH, NULL, "out of memory");

    /* There is a text only when everything before succeeded. */
    cJSON *answer = NULL;
    if (text != NULL)
        rc = exchange(d, corr, text, &answer, err);
    if (text != NULL) {
        /* It may hold a password. */
        OPENSSL_cleanse(text, strlen(text));
        cJSON_free(text);
    }
    pthread_mutex_unlock(&d->call);
    if (rc != EM_OK)
        return rc;

    if (!em__dynsec_answer_matches(commands, answer)) {
        cJSON_Delete(answer);
        return em_error_set(err, EM_ERR_PROTOCOL, EM_SEV_HIGH, NULL,
                            "the dynamic-security plugin's answer does not match the commands");
    }
    *responses = answer;
    return EM_OK;
}

bool em__dynsec_answer_matches(const cJSON *commands, const cJSON *answer)
{
    /* One response per command, in order, for the same commands. */
    if (!cJSON_IsArray(commands) || !cJSON_IsArray(answer))
        return false;
    int n = cJSON_GetArraySize(commands);
    bool ok = cJSON_GetArraySize(answer) == n;
    for (int i = 0; ok && i < n; i++) {
        const cJSON *want =
            cJSON_GetObjectItemCaseSensitive(cJSON_GetArrayItem(commands, i), "command");
        const cJSON *got =
            cJSON_GetObjectItemCaseSensitive(cJSON_GetArrayItem(answer, i), "command");
        ok = cJSON_IsString(want) && want->valuestring != NULL && cJSON_IsString(got) &&
             got->valuestring != NULL && strcmp(want->valuestring, got->valuestring) == 0;
    }
    return ok;
}

const char *em__dynsec_response_error(const cJSON *response)
{
    const cJSON *e = cJSON_GetObjectItemCaseSensitive(response, "error");
    if (e == NULL || cJSON_IsNull(e))
        return NULL;
    if (cJSON_IsString(e) && e->valuestring != NULL)
        return e->valuestring;
    return "error";
}

bool em__dynsec_is_not_found(const char *error)
{
    if (error == NULL)
        return false;
    size_t n = strlen(error);
    static const char tail[] = "not found";
    return n >= sizeof tail - 1 && strcasecmp(error + n - (sizeof tail - 1), tail) == 0;
}
