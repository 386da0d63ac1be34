/* auth.h: authenticated ids: the Auth field of a Request, credentials, signing, verifying.
 *
 *   Request { ... 16: Auth { 1: ts uint64 (unix ms), 2: nonce bytes (8..32), 3: mac bytes (32) } }
 *   mac        = HMAC-SHA256(credential, ts_be64 || nonce_len (1 byte) || nonce
 *                                        || the message without the Auth field's bytes)
 *   credential = HMAC-SHA256(secret, "rndz id credential v1" || id)
 *
 * Field 16 is skipped by v1 decoders (rndz 0.1.5's prost, our wire.c): a signed request works
 * against a v1 server. The MAC covers every other byte of the message, wherever the Auth
 * field sits, so field order does not matter; the nonce length is in the MAC input so no
 * byte can move between the nonce and the message. Replays are caught by the server's
 * per-id "newest ts" table (replay.c), not here. */
#ifndef RNDZ_AUTH_H
#define RNDZ_AUTH_H

#include "sha256.h"

#define RNDZ_AUTH_FIELD 16
#define RNDZ_AUTH_NONCE_MIN 8
#define RNDZ_AUTH_NONCE_MAX 32
#define RNDZ_AUTH_NONCE_DEFAULT 16
/* Field 16 (2 bytes of tag), its length, then ts (1 + up to 10), nonce (2 + 32), mac (2 + 32). */
#define RNDZ_AUTH_MAX_FIELD (2 + 1 + 11 + 34 + 34)

typedef struct rndz__auth_field {
    uint64_t ts;
    const uint8_t *nonce;
    size_t nonce_len;
    const uint8_t *mac;
    size_t start, end; /* the whole field's bytes in the message: [start, end) */
} rndz__auth_field;

/* The server side: the secret, keyed once; the freshness window. */
typedef struct rndz__auth_key {
    rndz__hmac secret;   /* HMAC state keyed with the server secret */
    uint32_t window_ms;  /* |ts - now| at most this */
    uint64_t not_before; /* unix ms: nothing signed before the server started is taken */
} rndz__auth_key;

/* Why a request was refused. */
enum {
    RNDZ__AUTH_OK = 0,
    RNDZ__AUTH_MISSING = -1, /* no Auth field */
    RNDZ__AUTH_MALFORMED = -2, /* two of them, wrong types or lengths, a bad message */
    RNDZ__AUTH_STALE = -3,   /* ts outside the window, or before the server started */
    RNDZ__AUTH_BADMAC = -4,  /* the mac does not verify for this id */
};

/* Find the Auth field of an encoded message. 1 found (*f filled), 0 absent, or
 * RNDZ__AUTH_MALFORMED. */
RNDZ_INTERNAL int rndz__auth_find(const uint8_t *buf, size_t len, rndz__auth_field *f);
/* The mac of a message (skipping the bytes [skip_start, skip_end)). */
RNDZ_INTERNAL void rndz__auth_mac(const uint8_t cred[RNDZ_CREDENTIAL_LEN], uint64_t ts,
                                  const uint8_t *nonce, size_t nonce_len, const uint8_t *buf,
                                  size_t len, size_t skip_start, size_t skip_end,
                                  uint8_t out[RNDZ_SHA256_LEN]);
/* Append a signed Auth field to a message without one. Returns the new length or an error
 * (RNDZ_E_NOSPACE, RNDZ_E_TOOBIG, RNDZ_E_WRONGKIND if it has one, a walk error). */
RNDZ_INTERNAL int rndz__auth_append(const uint8_t cred[RNDZ_CREDENTIAL_LEN], uint64_t ts,
                                    const uint8_t *nonce, size_t nonce_len, uint8_t *buf,
                                    size_t len, size_t cap);
/* A client's next timestamp: the unix time in ms, but always above the last one this process
 * handed out, so two requests of one id never share a ts (the server wants strictly newer). */
RNDZ_INTERNAL uint64_t rndz__auth_next_ts(void);
/* Fill a nonce with random bytes. */
RNDZ_INTERNAL void rndz__auth_nonce(uint8_t *out, size_t n);

RNDZ_INTERNAL void rndz__auth_key_init(rndz__auth_key *k, const uint8_t *secret, size_t len,
                                       uint32_t window_ms, uint64_t now_unix_ms);
/* Check the proof of a message whose id (field 1) is id. RNDZ__AUTH_OK with *ts set, or a
 * reason (negative). Does not look at replays. */
RNDZ_INTERNAL int rndz__auth_verify(const rndz__auth_key *k, const uint8_t *buf, size_t len,
                                    const char *id, size_t id_len, uint64_t now_unix_ms,
                                    uint64_t *ts);

#endif
