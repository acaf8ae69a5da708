/*
 * emiot - mqttcred.h (internal): keeping a device's MQTT password (mosquitto's
 * dynamic-security plugin, dynsec.h) in step with the device itself.
 *
 * routes_devices.c calls em__mqttcred_device_changed after a device was
 * disabled, enabled or deleted: its dynamic-security client is disabled,
 * enabled or removed to match. Only when the API has a dynsec handle, and only
 * for a device that has MQTT credentials. The device change stands whatever
 * happens here: a failure is logged and recorded as a security event (high
 * severity when a disabled or deleted device keeps its MQTT access), and the
 * operator repairs it with DELETE /api/v1/devices/{id}/mqtt-credentials.
 */
#ifndef EM_API_MQTTCRED_H
#define EM_API_MQTTCRED_H

#include "api/api_internal.h"

typedef enum em__mqttcred_change {
    EM__MQTTCRED_DISABLED = 0,
    EM__MQTTCRED_ENABLED = 1,
    EM__MQTTCRED_DELETED = 2
} em__mqttcred_change_t;

/* Brings device_id's MQTT client in line with change. Blocks for the
 * broker's answers (at most the dynsec timeout per command). */
void em__mqttcred_device_changed(em__api_req_t *r, const char *device_id,
                                 em__mqttcred_change_t change);

#endif /* EM_API_MQTTCRED_H */
