/*
 * emiot - routes_mqttcred.c: MQTT passwords for devices without certificates, through mosquitto's
 * dynamic-security plugin (docs/API.md).
 */
#include "api/api_internal.h"

const em__api_route_table_t em__api_routes_mqttcred = {NULL, 0};
