/*
 * emiot - version.c
 */
#include "emiot/version.h"

const char *em_version(void)
{
    return EM_VERSION_STRING;
}
