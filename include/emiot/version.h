/*
 * emiot - version.h: the library version.
 */
#ifndef EMIOT_VERSION_H
#define EMIOT_VERSION_H

#include "emiot/export.h"

#define EM_VERSION_MAJOR  0
#define EM_VERSION_MINOR  1
#define EM_VERSION_PATCH  0
#define EM_VERSION_STRING "0.1.0"

#ifdef __cplusplus
extern "C" {
#endif

/* The version of the library linked at run time ("0.1.0"). */
EM_EXPORT const char *em_version(void);

#ifdef __cplusplus
}
#endif

#endif /* EMIOT_VERSION_H */
