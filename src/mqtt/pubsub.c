/*
 * emiot - mqtt/pubsub.c: subscriptions (publishing is in outbox.c).
 *
 * Every filter is remembered, so that the connect callback can subscribe
 * again after each reconnection; while disconnected a subscription is only
 * recorded.
 */
#include <stdlib.h>
#include <string.h>

#include "emiot/log.h"
#include "mqtt/mqtt_internal.h"

/* Checks a subscription filter: 1..EM__MQTT_FILTER_MAX bytes of UTF-8 with
 * wildcards only where MQTT allows them. */
static em_err_t check_filter(const char *filter, int qos, em_error_t *err)
{
    if (filter == NULL)
        return em_error_set(err, EM_ERR_INVALID_ARGUMENT, EM_SEV_MEDIUM, "filter",
                            "no topic filter given");
    size_t n = strnlen(filter, EM__MQTT_FILTER_MAX + 1);
    if (n == 0 || n > EM__MQTT_FILTER_MAX)
        return em_error_set(err, EM_ERR_INVALID_ARGUMENT, EM_SEV_MEDIUM, "filter",
                            "a topic filter is 1 to %d bytes long", EM__MQTT_FILTER_MAX);
    if (mosquitto_validate_utf8(filter, (int)n) != MOSQ_ERR_SUCCESS ||
        mosquitto_sub_topic_check2(filter, n) != MOSQ_ERR_SUCCESS)
        return em_error_set(err, EM_ERR_INVALID_ARGUMENT, EM_SEV_MEDIUM, "filter",
                            "invalid topic filter (UTF-8, '+' and '#' as whole levels, '#' last)");
    if (qos < 0 || qos > 2)
        return em_error_set(err, EM_ERR_INVALID_ARGUMENT, EM_SEV_MEDIUM, "qos",
                            "qos must be 0, 1 or 2");
    return EM_OK;
}

static em__mqtt_sub_t *find_sub(em_mqtt_t *m, const char *filter)
{
    for (size_t i = 0; i < m->nsubs; i++) {
        if (strcmp(m->subs[i].filter, filter) == 0)
            return &m->subs[i];
    }
    return NULL;
}

em_err_t em_mqtt_subscribe(em_mqtt_t *m, const char *filter, int qos, em_error_t *err)
{
    if (m == NULL)
        return em_error_set(err, EM_ERR_INVALID_ARGUMENT, EM_SEV_MEDIUM, NULL, "no client");
    em_err_t rc = check_filter(filter, qos, err);
    if (rc != EM_OK)
        return rc;

    pthread_mutex_lock(&m->lock);
    em__mqtt_sub_t *s = find_sub(m, filter);
    bool added = false;
    int old_qos = 0;
    if (s == NULL) {
        if (m->nsubs >= EM_MQTT_SUBSCRIPTIONS_MAX) {
            pthread_mutex_unlock(&m->lock);
            return em_error_set(err, EM_ERR_LIMIT, EM_SEV_MEDIUM, "filter",
                                "at most %d subscriptions", EM_MQTT_SUBSCRIPTIONS_MAX);
        }
        char *copy = strdup(filter);
        if (copy == NULL) {
            pthread_mutex_unlock(&m->lock);
            return em_error_set(err, EM_ERR_NOMEM, EM_SEV_HIGH, NULL, "out of memory");
        }
        s = &m->subs[m->nsubs++];
        s->filter = copy;
        s->mid = 0;
        added = true;
    } else {
        old_qos = s->qos;
    }
    s->qos = qos;

    /* While disconnected the filter is only recorded: the connect callback
     * subscribes to every recorded filter. */
    int mrc = MOSQ_ERR_SUCCESS;
    if (m->state == EM__MQTT_CONNECTED) {
        int mid = 0;
        mrc = mosquitto_subscribe(m->mosq, &mid, filter, qos);
        if (mrc == MOSQ_ERR_SUCCESS) {
            s->mid = mid;
            em__mqtt_wake(m);
        }
    }
    if (mrc != MOSQ_ERR_SUCCESS && mrc != MOSQ_ERR_NO_CONN) {
        if (added) {
            free(s->filter);
            m->nsubs--;
        } else {
            s->qos = old_qos;
        }
        pthread_mutex_unlock(&m->lock);
        if (mrc == MOSQ_ERR_NOMEM)
            return em_error_set(err, EM_ERR_NOMEM, EM_SEV_HIGH, NULL, "out of memory");
        return em_error_set(err, EM_ERR_CONNECTION, EM_SEV_HIGH, "filter", "subscribe failed: %s",
                            mosquitto_strerror(mrc));
    }
    pthread_mutex_unlock(&m->lock);
    return EM_OK;
}

em_err_t em_mqtt_unsubscribe(em_mqtt_t *m, const char *filter, em_error_t *err)
{
    if (m == NULL)
        return em_error_set(err, EM_ERR_INVALID_ARGUMENT, EM_SEV_MEDIUM, NULL, "no client");
    em_err_t rc = check_filter(filter, 0, err);
    if (rc != EM_OK)
        return rc;
    pthread_mutex_lock(&m->lock);
    em__mqtt_sub_t *s = find_sub(m, filter);
    if (s != NULL) {
        free(s->filter);
        size_t i = (size_t)(s - m->subs);
        memmove(&m->subs[i], &m->subs[i + 1], (m->nsubs - i - 1) * sizeof(m->subs[0]));
        m->nsubs--;
    }
    int mrc = MOSQ_ERR_SUCCESS;
    if (m->state == EM__MQTT_CONNECTED) {
        mrc = mosquitto_unsubscribe(m->mosq, NULL, filter);
        if (mrc == MOSQ_ERR_SUCCESS)
            em__mqtt_wake(m);
    }
    pthread_mutex_unlock(&m->lock);
    if (mrc != MOSQ_ERR_SUCCESS && mrc != MOSQ_ERR_NO_CONN) {
        /* The filter is forgotten anyway: it will not be renewed after the
         * next reconnection, which ends the subscription. */
        if (mrc == MOSQ_ERR_NOMEM)
            return em_error_set(err, EM_ERR_NOMEM, EM_SEV_HIGH, NULL, "out of memory");
        return em_error_set(err, EM_ERR_CONNECTION, EM_SEV_HIGH, "filter", "unsubscribe failed: %s",
                            mosquitto_strerror(mrc));
    }
    return EM_OK;
}

void em__mqtt_resubscribe(em_mqtt_t *m)
{
    for (size_t i = 0; i < m->nsubs; i++) {
        int mid = 0;
        int rc = mosquitto_subscribe(m->mosq, &mid, m->subs[i].filter, m->subs[i].qos);
        m->subs[i].mid = rc == MOSQ_ERR_SUCCESS ? mid : 0;
        if (rc != MOSQ_ERR_SUCCESS && em_log_enabled(EM_LOG_WARN)) {
            em_log_field_t f[] = {EM_LOG_STR("filter", m->subs[i].filter),
                                  EM_LOG_STR("error", mosquitto_strerror(rc))};
            em_log(EM_LOG_WARN, "mqtt", NULL, "could not renew a subscription", f, 2);
        }
    }
}

void em__mqtt_on_subscribe(struct mosquitto *mosq, void *ud, int mid, int count, const int *granted)
{
    (void)mosq;
    em_mqtt_t *m = ud;
    bool refused = false;
    int reason = 0;
    for (int i = 0; i < count; i++) {
        if (granted[i] >= 0x80) {
            refused = true;
            reason = granted[i];
        }
    }
    if (!refused)
        return;
    char filter[EM__MQTT_FILTER_MAX + 1] = "";
    pthread_mutex_lock(&m->lock);
    for (size_t i = 0; i < m->nsubs; i++) {
        if (m->subs[i].mid == mid) {
            size_t n = strnlen(m->subs[i].filter, EM__MQTT_FILTER_MAX);
            memcpy(filter, m->subs[i].filter, n);
            filter[n] = '\0';
            break;
        }
    }
    pthread_mutex_unlock(&m->lock);
    em_error_t e;
    em_error_clear(&e);
    em_error_set(&e, EM_ERR_PERMISSION_DENIED, EM_SEV_HIGH, "filter",
                 "the broker refused the subscription to %s (%s)", filter[0] ? filter : "?",
                 reason == 0x80 ? "failure" : mosquitto_reason_string(reason));
    em__mqtt_emit(m, EM_MQTT_ERROR, &e);
}

void em__mqtt_subs_free(em_mqtt_t *m)
{
    for (size_t i = 0; i < m->nsubs; i++)
        free(m->subs[i].filter);
    m->nsubs = 0;
}
