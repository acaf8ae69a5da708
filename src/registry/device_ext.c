/*
 * emiot - device_ext.c: the lazily allocated part of a device (see
 * device_ext.h).
 */
#include "registry/device_ext.h"

#include <stdlib.h>

struct em__device_ext *em__device_ext(em_device_t *dev)
{
    if (dev == NULL)
        return NULL;
    if (dev->ext == NULL)
        dev->ext = calloc(1, sizeof(*dev->ext));
    return dev->ext;
}

void em__device_ext_free(struct em__device_ext *ext)
{
    if (ext == NULL)
        return;
    em__window_free(ext->cmd_window);
    free(ext);
}
