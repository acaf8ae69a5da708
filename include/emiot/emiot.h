/*
 * emiot - emiot.h: the whole public API of libemiot.
 */
#ifndef EMIOT_EMIOT_H
#define EMIOT_EMIOT_H

#include "emiot/api.h"
#include "emiot/clock.h"
#include "emiot/command.h"
#include "emiot/daemon.h"
#include "emiot/device.h"
#include "emiot/error.h"
#include "emiot/export.h"
#include "emiot/log.h"
#include "emiot/manager.h"
#include "emiot/mqtt.h"
#include "emiot/registry.h"
#include "emiot/status.h"
#include "emiot/store.h"
#include "emiot/topic.h"
#include "emiot/version.h"

#endif /* EMIOT_EMIOT_H */
