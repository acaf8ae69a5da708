/*
 * emiot - routes_identity.c: device identity: enrollment tokens, enrollment, challenge-response
 * device tokens (docs/API.md, "Device identity").
 */
#include "api/api_internal.h"

const em__api_route_table_t em__api_routes_identity = {NULL, 0};
