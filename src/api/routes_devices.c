/*
 * emiot - routes_devices.c: the devices routes of the HTTPS API (docs/API.md).
 *
 * The table starts empty; its routes land in the following commits.
 */
#include "api/api_internal.h"

const em__api_route_table_t em__api_routes_devices = {NULL, 0};
