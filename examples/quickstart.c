/*
 * emiot example - quickstart.c: the README's example, complete.
 *
 * Connects a manager to a broker over TLS, registers one plug in a group,
 * prints every status it reports for SECONDS seconds, then puts the group to
 * sleep for an hour and waits for the broker to acknowledge the command.
 *
 * usage: example_quickstart URL CA_FILE [CERT KEY] [SECONDS]
 *   e.g. example_quickstart mqtts://localhost:8883 ca.crt manager.crt manager.key 30
 * Try it against `make run`'s broker, whose files are printed when it starts.
 */
#include <stdio.h>
#include <stdlib.h>
#include <unistd.h>

#include "emiot/emiot.h"

static void on_event(em_manager_t *mgr, const em_event_t *ev, void *ud)
{
    (void)mgr;
    (void)ud;
    if (ev->type == EM_EVENT_STATUS)
        printf("%s: battery %u%%\n", ev->device_id, ev->status->battery_level);
    else if (ev->type == EM_EVENT_ERROR)
        printf("error: %s: %s\n", em_err_name(ev->error->code), ev->error->message);
}

int main(int argc, char **argv)
{
    if (argc < 3) {
        fprintf(stderr, "usage: %s URL CA_FILE [CERT KEY] [SECONDS]\n", argv[0]);
        return 2;
    }
    long seconds = 10;
    if (argc > 5) {
        char *end;
        seconds = strtol(argv[5], &end, 10);
        if (*end != '\0' || seconds < 0 || seconds > 86400) {
            fprintf(stderr, "SECONDS: 0 to 86400\n");
            return 2;
        }
    }

    em_error_t err;
    /* NULL options: prefix "device/", 60 s status interval, 10 commands per device per minute. */
    em_manager_t *mgr = em_manager_new(NULL, &err);
    if (mgr == NULL) {
        fprintf(stderr, "%s\n", err.message);
        return 1;
    }
    em_manager_on(mgr, EM_EVENT_MASK(EM_EVENT_STATUS) | EM_EVENT_MASK(EM_EVENT_ERROR), on_event,
                  NULL);
    if (em_manager_register_device(mgr, "plug-01", "Kitchen plug", EM_DEVICE_ACTUATOR, NULL,
                                   "kitchen", &err) != EM_OK) {
        fprintf(stderr, "register: %s\n", err.message);
        return 1;
    }

    em_mqtt_options_t mqtt;
    em_mqtt_options_init(&mqtt);
    mqtt.url = argv[1]; /* mqtts://: the broker's certificate is always verified */
    mqtt.ca_file = argv[2];
    if (argc > 4) { /* mTLS: the manager's own certificate */
        mqtt.cert_file = argv[3];
        mqtt.key_file = argv[4];
    }
    if (em_manager_connect(mgr, &mqtt, 10000, &err) != EM_OK) {
        fprintf(stderr, "connect: %s: %s\n", em_err_name(err.code), err.message);
        em_manager_free(mgr);
        return 1;
    }

    sleep((unsigned)seconds); /* status arrives meanwhile, on the network thread */

    /* Validated, rate limited, QoS 1; one requestId per device. */
    if (em_manager_sleep_group(mgr, "kitchen", 3600, &err) != EM_OK)
        fprintf(stderr, "sleep: %s: %s\n", em_err_name(err.code), err.message);
    else if (em_manager_flush(mgr, 5000, &err) == EM_OK)
        printf("sleep command acknowledged by the broker\n");
    em_manager_free(mgr);
    return 0;
}
