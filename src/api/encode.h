/*
 * emiot - encode.h (internal): the API's JSON answers for devices, statuses,
 * telemetry, rollups, commands, events and group statistics, as docs/API.md
 * shows them.
 *
 * Every function returns a new cJSON tree the caller owns (cJSON_Delete), or
 * NULL when memory ran out (nothing to free then). Times are RFC 3339 UTC
 * strings with milliseconds; a time of 0 ("never", "none") is null.
 */
#ifndef EM_API_ENCODE_H
#define EM_API_ENCODE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include <cjson/cJSON.h>

#include "emiot/registry.h"
#include "emiot/status.h"
#include "emiot/store.h"

/* A time as an RFC 3339 string, or null for 0. */
cJSON *em__enc_time(int64_t ms);

/* A string, or null for NULL or "". */
cJSON *em__enc_str_or_null(const char *s);

/* {"reportingInterval","sleepThreshold","autoWake","securityLevel"}: the
 * fields set in cfg->has. */
cJSON *em__enc_config(const em_device_config_t *cfg);

/* A status as devices send it, plus "lastSeen" when known. */
cJSON *em__enc_status(const em_status_t *st);

/* A telemetry sample as the device sent it ("timestamp" as RFC 3339). */
cJSON *em__enc_telemetry(const em_telemetry_t *t);

/* {"bucket","samples","energyWh","powerAvgW","powerMaxW","resets"} and, when
 * group is true, "devices". */
cJSON *em__enc_rollup(const em_store_rollup_t *r, bool group);

/*
 * A device: {"id","name","type","groups","config","enabled","status",
 * "createdAt","updatedAt"}. groups (an array) and status (an object, or NULL
 * for null) are taken over by the result, also when it fails; groups NULL
 * means [].
 */
cJSON *em__enc_device(const em_store_device_t *dev, cJSON *groups, cJSON *status);

/* A command: {"requestId","deviceId","group","type","payload","state",
 * "actor","createdAt","updatedAt","expiresAt","response"}. A stored payload
 * that does not parse (it always should) is shown as null. */
cJSON *em__enc_command(const em_store_command_t *c);

/* An event: {"id","time","kind","type","severity","deviceId","actor",
 * "source","message","details"}. */
cJSON *em__enc_event(const em_store_event_t *ev);

/* {"total","online","offline","averageBattery","powerModes":{"normal",
 * "low_power","sleep","critical","unknown"}}. */
cJSON *em__enc_group_stats(const em_group_stats_t *s);

/*
 * The answer to GET /api/v1/devices/{id} for a device the registry holds:
 * {"success":true,"data":<device>} with dev's stored fields and d's groups
 * (from reg) and status, byte for byte what em__api_reply writes for
 * em__enc_device(dev, <d's groups>, em__enc_status(&d->status)), written
 * straight into buf (size bytes, NUL-terminated; *out_len its length without
 * the NUL). Call it under the manager's lock. Errors: EM_ERR_BUFFER_TOO_SMALL;
 * EM_ERR_STATE when d's status carries errors or additionalInfo (their JSON
 * text is shown as cJSON prints it: take the general path).
 */
em_err_t em__enc_device_answer(const em_store_device_t *dev, const em_registry_t *reg,
                               const em_device_t *d, char *buf, size_t size, size_t *out_len);

/* ms as em_time_format writes it, into buf (size bytes); written by hand for
 * 1970-9999 (em_time_format's snprintf costs more than the rest of a device
 * answer), by em_time_format otherwise. Returns the length, 0 when it does
 * not fit. */
size_t em__enc_time_text(int64_t ms, char *buf, size_t size);

/* ---- shared by the routes_*.c files ------------------------------------- */

struct em__api_req;

/* Answers 500 "internal" for a failed allocation. */
void em__routes_oom(struct em__api_req *r);

/*
 * Reads the query parameters from, to (RFC 3339 or epoch ms; from < to when
 * both are given), limit (1-EM_STORE_PAGE_MAX, default EM_STORE_PAGE_DEFAULT)
 * and, when with_order, order ("asc" or "desc"; default: desc_default) into
 * out. Answers 400 and returns false on a bad value.
 */
bool em__routes_range(struct em__api_req *r, bool with_order, bool desc_default,
                      em_store_range_t *out);

/* Fills *out with the stored device id, or answers 404 device_not_found (or
 * the store's error) and returns false. out may be NULL. */
bool em__routes_device_get(struct em__api_req *r, const char *id, em_store_device_t *out);

/*
 * em__api_body_object, and then refuses a body with "\u0000" in a string
 * (cJSON would cut the string short there: "in-nul\u0000x" would name the
 * device "in-nul"): 400 naming the top-level member it is in. Returns NULL
 * when it answered.
 */
cJSON *em__routes_body(struct em__api_req *r);

/* Body members. Each returns true with the value (NULL / *present false when
 * the member is absent or null), or answers 400 ("key: must be a string",
 * "key: is required", "key: must be true or false") and returns false. */
bool em__routes_opt_string(struct em__api_req *r, const cJSON *obj, const char *key,
                           const char **out);
bool em__routes_req_string(struct em__api_req *r, const cJSON *obj, const char *key,
                           const char **out);
bool em__routes_opt_bool(struct em__api_req *r, const cJSON *obj, const char *key, bool *present,
                         bool *out);

/* Makes a validator's field name the body member it came from: "interval"
 * becomes "payload.interval" for prefix "payload" (a field already starting
 * with prefix, or none, is left alone). */
void em__routes_prefix_field(em_error_t *e, const char *prefix);

/* A JSON array being filled by a store listing. */
typedef struct em__routes_rows {
    cJSON *arr;
    bool oom;
} em__routes_rows_t;

/* Appends item (taken over; NULL means memory ran out). false, and oom set,
 * when it could not. */
bool em__routes_rows_add(em__routes_rows_t *w, cJSON *item);

/* Answers the listing: the store's error (rc), 500 when memory ran out, else
 * 200 with the array. Frees or hands over w->arr. */
void em__routes_answer_rows(struct em__api_req *r, em__routes_rows_t *w, em_err_t rc,
                            const em_error_t *e);

/* True when the store knows group; else answers 404 group_not_found (or the
 * store's error) and returns false. */
bool em__routes_group_exists(struct em__api_req *r, const char *name);

#endif /* EM_API_ENCODE_H */
