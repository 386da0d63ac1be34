/* pb.h: the one protobuf field walker. Every decoder reads messages through it: wire.c's v1
 * codec, ext.c's extension fields, auth.c's proof. Every read is bounded by the end of the
 * input; a varint longer than 10 bytes or over 64 bits, a field number of 0 or above 2^29-1,
 * a length past the end and the wire types proto3 does not have (groups, 6, 7) are errors. */
#ifndef RNDZ_PB_H
#define RNDZ_PB_H

#include "internal.h"

enum { RNDZ_PB_VARINT = 0, RNDZ_PB_I64 = 1, RNDZ_PB_LEN = 2, RNDZ_PB_I32 = 5 };

/* What is left to read. */
typedef struct rndz__pb {
    const uint8_t *p, *end;
} rndz__pb;

/* One field. */
typedef struct rndz__pb_field {
    uint32_t num;
    int wt;
    uint64_t u64;        /* VARINT: its value; I64, I32: the bytes as a little-endian number */
    const uint8_t *data; /* LEN: the payload (I64, I32: the bytes) */
    size_t len;
} rndz__pb_field;

/* A reader over buf[0..len). */
static inline rndz__pb rndz__pb_over(const uint8_t *buf, size_t len) {
    return (rndz__pb){buf, buf + len};
}
/* One varint: 0, RNDZ_E_TRUNCATED or RNDZ_E_VARINT. */
RNDZ_INTERNAL int rndz__pb_varint(rndz__pb *r, uint64_t *out);
/* The next field: 1 (f filled, r moved past it), 0 at the end of the input, or an error
 * (RNDZ_E_TRUNCATED, RNDZ_E_VARINT, RNDZ_E_FIELD, RNDZ_E_WIRETYPE). */
RNDZ_INTERNAL int rndz__pb_next(rndz__pb *r, rndz__pb_field *f);

#endif
