/*
 * emiot - dynsec_internal.h: what the dynamic-security client's files share.
 *
 * control.c runs the plugin's control channel: one MQTT connection (libemiot's
 * transport, with its network thread), commands published on
 * $CONTROL/dynamic-security/v1 and answers read from
 * $CONTROL/dynamic-security/v1/response. dynsec.c builds the commands that
 * keep a device's client and role.
 */
#ifndef EMIOT_DYNSEC_INTERNAL_H
#define EMIOT_DYNSEC_INTERNAL_H

#include <pthread.h>
#include <stdbool.h>
#include <stdint.h>

#include <cjson/cJSON.h>

#include "emiot/dynsec.h"
#include "emiot/mqtt.h"
#include "emiot/topic.h"

#define EM__DYNSEC_TOPIC          "$CONTROL/dynamic-security/v1"
#define EM__DYNSEC_RESPONSE_TOPIC "$CONTROL/dynamic-security/v1/response"

/* The longest answer read (a listing of a big plugin configuration could be
 * large; emiot only ever asks for one client at a time). */
#define EM__DYNSEC_ANSWER_MAX ((size_t)1024 * 1024)
/* Commands in one exchange. */
#define EM__DYNSEC_BATCH_MAX 8
/* Correlation data: 16 hex digits of this client, '-', a counter. */
#define EM__DYNSEC_CORR_MAX 40

struct em_dynsec {
    em_mqtt_t *mqtt;
    char prefix[EM_TOPIC_PREFIX_MAX + 1];
    int timeout_ms;
    /* Random per client: answers meant for another administrator connected
     * to the same broker (they all see the response topic) are ignored. */
    char tag[17];
    pthread_mutex_t call; /* one exchange at a time */
    pthread_mutex_t mu;   /* guards what follows, shared with the network thread */
    pthread_cond_t cv;
    uint64_t seq;
    char want[EM__DYNSEC_CORR_MAX]; /* correlation of the awaited answer; "" when none */
    cJSON *answer;                  /* its "responses" array, once it came */
    bool lost;                      /* the connection dropped while waiting */
    bool refused;                   /* the broker refused the publish or the subscription */
};

/* Sets up d's locks and correlation tag. -1 when they cannot be made. */
int em__dynsec_ctl_init(em_dynsec_t *d);
void em__dynsec_ctl_cleanup(em_dynsec_t *d);

/* The transport callbacks that feed answers to em__dynsec_exec (userdata d). */
void em__dynsec_callbacks(em_dynsec_t *d, em_mqtt_callbacks_t *cbs);

/*
 * Sends the commands (a JSON array of command objects, at most
 * EM__DYNSEC_BATCH_MAX; each gets this exchange's "correlationData") and
 * waits up to d->timeout_ms for the plugin's answer. On success *responses
 * (owned by the caller) is the "responses" array, with as many entries as
 * commands, in order. commands stays the caller's; its strings are not
 * wiped here. The serialised message is wiped before it is freed.
 * Errors: EM_ERR_NOT_CONNECTED (not connected, or the connection dropped
 * while waiting: the commands may or may not have been applied),
 * EM_ERR_TIMEOUT, EM_ERR_PERMISSION_DENIED (the broker refused the publish or
 * the subscription to the answers), EM_ERR_PROTOCOL (an answer that does not
 * match the commands), EM_ERR_NOMEM, EM_ERR_INVALID_ARGUMENT.
 */
em_err_t em__dynsec_exec(em_dynsec_t *d, cJSON *commands, cJSON **responses, em_error_t *err);

/*
 * The plugin's answer read from the response topic (payload, len bytes, not
 * NUL-terminated), when it is the one awaited: a JSON object whose
 * "responses" array's first entry has "correlationData" equal to want.
 * Returns that array, detached from the rest (the caller frees it with
 * cJSON_Delete). NULL for anything else: empty or longer than
 * EM__DYNSEC_ANSWER_MAX, not JSON, no "responses" array, no correlation
 * string in its first entry, an answer to another exchange (or to another
 * administrator on the same broker), want NULL or empty, or memory ran out.
 * The network thread calls it for every message on the response topic.
 */
cJSON *em__dynsec_answer_take(const void *payload, size_t len, const char *want);

/* True when answer (a "responses" array) holds one response per command of
 * commands, in order, each naming the same "command" string. False for
 * anything else, NULL arguments included. */
bool em__dynsec_answer_matches(const cJSON *commands, const cJSON *answer);

/* The "error" of one response, or NULL when the command succeeded. */
const char *em__dynsec_response_error(const cJSON *response);

/* True when a response's error says the object does not exist ("Client not
 * found", "Role not found"). */
bool em__dynsec_is_not_found(const char *error);

/* Whose client a getClient answer describes. */
typedef enum em__dynsec_owner {
    EM__DYNSEC_CLIENT_NONE,    /* no such client */
    EM__DYNSEC_CLIENT_OURS,    /* its text name is emiot's marker */
    EM__DYNSEC_CLIENT_FOREIGN, /* someone else's, or the question failed */
} em__dynsec_owner_t;

/*
 * Reads getClient's response (one entry of the "responses" array; NULL is
 * accepted): EM__DYNSEC_CLIENT_NONE when its error says the client does not
 * exist, EM__DYNSEC_CLIENT_OURS when it succeeded and data.client.textname is
 * exactly marker, EM__DYNSEC_CLIENT_FOREIGN otherwise. *why (when why is
 * not NULL) is the response's error (as em__dynsec_response_error), NULL
 * when it succeeded: a foreign answer with an error means the plugin refused
 * the question.
 */
em__dynsec_owner_t em__dynsec_client_owner(const cJSON *response, const char *marker,
                                           const char **why);

#endif /* EMIOT_DYNSEC_INTERNAL_H */
