/*
 * emiot - command_internal.h (internal): request ids from given random bytes.
 */
#ifndef EM_MODEL_COMMAND_INTERNAL_H
#define EM_MODEL_COMMAND_INTERNAL_H

#include "emiot/command.h"

/* Random bytes in one request id: "req_" + 2 hex digits per byte. */
#define EM__REQUEST_ID_BYTES 16

/*
 * Writes "req_" + the 32 hex digits of rnd into buf (at least
 * EM_REQUEST_ID_LEN + 1 bytes). rnd must come from the CSPRNG: a caller that
 * needs many ids (a group command) draws the bytes for several at once.
 */
void em__request_id_format(const unsigned char rnd[EM__REQUEST_ID_BYTES], char *buf);

#endif /* EM_MODEL_COMMAND_INTERNAL_H */
