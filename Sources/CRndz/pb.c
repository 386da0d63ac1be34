/* pb.c: the protobuf field walker (pb.h). */
#include "pb.h"

int rndz__pb_varint(rndz__pb *r, uint64_t *out) {
    uint64_t v = 0;
    for (int shift = 0; shift < 70; shift += 7) {
        if (r->p >= r->end) return RNDZ_E_TRUNCATED;
        uint8_t b = *r->p++;
        if (shift == 63 && b > 1) return RNDZ_E_VARINT; /* would overflow 64 bits */
        v |= (uint64_t)(b & 0x7f) << shift;
        if (!(b & 0x80)) {
            *out = v;
            return 0;
        }
    }
    return RNDZ_E_VARINT; /* more than 10 bytes */
}

/* n fixed bytes as a little-endian number (fixed64, fixed32). */
static int fixed(rndz__pb *r, size_t n, rndz__pb_field *f) {
    if ((size_t)(r->end - r->p) < n) return RNDZ_E_TRUNCATED;
    f->data = r->p;
    f->len = n;
    f->u64 = 0;
    for (size_t i = n; i-- > 0;) f->u64 = f->u64 << 8 | r->p[i];
    r->p += n;
    return 1;
}

int rndz__pb_next(rndz__pb *r, rndz__pb_field *f) {
    if (r->p >= r->end) return 0;
    uint64_t tag;
    int rc = rndz__pb_varint(r, &tag);
    if (rc) return rc;
    if (tag >> 32 || (tag >> 3) == 0) return RNDZ_E_FIELD;
    f->num = (uint32_t)(tag >> 3);
    f->wt = (int)(tag & 7);
    f->data = NULL;
    f->len = 0;
    f->u64 = 0;
    switch (f->wt) {
    case RNDZ_PB_VARINT: return (rc = rndz__pb_varint(r, &f->u64)) ? rc : 1;
    case RNDZ_PB_I64: return fixed(r, 8, f);
    case RNDZ_PB_I32: return fixed(r, 4, f);
    case RNDZ_PB_LEN: {
        uint64_t n;
        if ((rc = rndz__pb_varint(r, &n))) return rc;
        if (n > (uint64_t)(r->end - r->p)) return RNDZ_E_TRUNCATED;
        f->data = r->p;
        f->len = (size_t)n;
        r->p += n;
        return 1;
    }
    default: return RNDZ_E_WIRETYPE; /* groups are not part of proto3; 6 and 7 do not exist */
    }
}
