/*
 * emiot example - embed.c: the manager without its MQTT connection.
 *
 * An application that already receives device messages some other way (its
 * own MQTT client, a gateway's serial link, a replay of recorded traffic) can
 * still use emiot's validation, registry, groups and statistics: it hands each
 * message to em_manager_handle_message. Run it with no arguments.
 */
#include <stdio.h>
#include <string.h>

#include "emiot/emiot.h"

/* Called for every status accepted and every message rejected. */
static void on_event(em_manager_t *mgr, const em_event_t *ev, void *ud)
{
    (void)mgr;
    (void)ud;
    if (ev->type == EM_EVENT_STATUS)
        printf("accepted  %s: battery %u%%, %s\n", ev->device_id, ev->status->battery_level,
               em_power_mode_name(ev->status->power_mode));
    else if (ev->type == EM_EVENT_ERROR)
        printf("rejected  %s: field \"%s\" %s\n", ev->device_id ? ev->device_id : "?",
               ev->error->field, ev->error->message);
}

static void feed(em_manager_t *mgr, const char *topic, const char *payload)
{
    em_err_t rc = em_manager_handle_message(mgr, topic, payload, strlen(payload));
    if (rc == EM_ERR_DEVICE_NOT_FOUND)
        printf("ignored   %s (device not registered)\n", topic);
}

int main(void)
{
    em_error_t err;
    em_log_set_level(EM_LOG_ERROR); /* rejections are shown by the callback instead */

    /* NULL options: prefix "device/", 60 s status interval, 10 commands/min. */
    em_manager_t *mgr = em_manager_new(NULL, &err);
    if (mgr == NULL) {
        fprintf(stderr, "%s\n", err.message);
        return 1;
    }
    em_manager_on(mgr, EM_EVENT_MASK(EM_EVENT_STATUS) | EM_EVENT_MASK(EM_EVENT_ERROR), on_event,
                  NULL);

    /* Two sensors in one group; the group is created on first use. */
    em_manager_register_device(mgr, "sensor-01", "Hall", EM_DEVICE_SENSOR, NULL, "ground floor",
                               &err);
    em_manager_register_device(mgr, "sensor-02", "Porch", EM_DEVICE_SENSOR, NULL, "ground floor",
                               &err);

    feed(mgr, "device/sensor-01/status",
         "{\"batteryLevel\":81,\"powerMode\":\"normal\",\"connectionStatus\":\"online\"}");
    feed(mgr, "device/sensor-02/status",
         "{\"batteryLevel\":17,\"powerMode\":\"low_power\",\"connectionStatus\":\"online\"}");
    feed(mgr, "device/sensor-02/status", "{\"batteryLevel\":170}");    /* out of range */
    feed(mgr, "device/sensor-02/status", "{\"powerMode\":\"turbo\"}"); /* unknown mode */
    feed(mgr, "device/sensor-99/status", "{\"batteryLevel\":50}");     /* not registered */

    em_group_stats_t gs;
    if (em_manager_group_stats(mgr, "ground floor", &gs, &err) == EM_OK)
        printf("group \"ground floor\": %zu devices, %zu online, average battery %.1f%%\n",
               gs.total, gs.online, gs.average_battery);

    em_manager_stats_t st;
    em_manager_stats(mgr, &st);
    printf("%llu messages: %llu accepted, %llu rejected, %llu from unknown devices\n",
           (unsigned long long)st.messages_received, (unsigned long long)st.status_accepted,
           (unsigned long long)st.rejected, (unsigned long long)st.unknown_device);
    em_manager_free(mgr);
    return 0;
}
