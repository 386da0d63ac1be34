/* fuzz_server.h: what the two server fuzz targets share (fuzz_server_udp.c,
 * fuzz_server_tcp.c): the secret, the log handler, the config byte's secret and limit bits,
 * and signing a request as a record's auth byte says. Include after server.h (it calls
 * internal functions). */
#ifndef RNDZ_FUZZ_SERVER_H
#define RNDZ_FUZZ_SERVER_H

#include "fuzz.h"

#include <string.h>

static const uint8_t FUZZ_SECRET[] = "fuzz server secret, not a real one"; /* sizeof - 1 used */

/* Every log statement's formatting runs (level TRACE), and its output is checked. */
static void fuzz_quiet_log(rndz_log_level level, const char *msg, void *user) {
    (void)level;
    (void)user;
    FUZZ_CHECK(msg && strlen(msg) < 4096, "log message");
}

/* Config byte bit 4: a secret (authenticated ids); bits 5-6: limits default / tight (1 per
 * second, burst 1) / off / max_id_len 4. Returns whether the server has a secret. */
static bool fuzz_server_config(rndz_server_options *o, uint8_t config) {
    bool secret = config & 0x10;
    if (secret) {
        o->secret = FUZZ_SECRET;
        o->secret_len = sizeof FUZZ_SECRET - 1;
    }
    switch ((config >> 5) & 3) {
    case 1: o->sync_rate = o->sync_burst = o->fsync_rate = o->fsync_burst = 1; break;
    case 2: o->sync_rate = o->fsync_rate = UINT32_MAX; break;
    case 3: o->max_id_len = 4; break;
    }
    return secret;
}

/* Sign the request `dg` (len bytes, room for RNDZ_MAX_MSG) per the auth byte: bits 0-1: 1 signed
 * fresh with its id's credential, 3 with a stale timestamp (0 and 2 leave it); bit 2: with
 * another id's credential. Returns the new length, or the old one if it cannot be signed.
 * *authentic: signed fresh with its own credential. */
static size_t fuzz_sign(uint8_t *dg, size_t len, uint8_t auth, bool *authentic) {
    *authentic = false;
    int mode = auth & 3;
    rndz_msg m;
    if ((mode != 1 && mode != 3) || rndz_msg_decode(dg, len, 0, &m)) return len;
    static const char other[] = "mallory";
    const char *id = m.id;
    size_t id_len = m.id_len;
    if (auth & 4) {
        bool same = id_len == sizeof other - 1 && memcmp(id, other, id_len) == 0;
        id = other;
        id_len = sizeof other - 1 - same; /* "mallory" signs as "mallor" */
    }
    uint8_t cred[RNDZ_CREDENTIAL_LEN];
    FUZZ_CHECK(rndz_credential_derive(FUZZ_SECRET, sizeof FUZZ_SECRET - 1, id, id_len, cred) == 0,
               "derive");
    uint64_t ts = mode == 1 ? rndz__auth_next_ts() : rndz__unix_ms() - 600000;
    static const uint8_t nonce[] = "0123456789abcdef"; /* 16 bytes and a NUL */
    int n = rndz_msg_sign(cred, ts, nonce, sizeof nonce - 1, dg, len, RNDZ_MAX_MSG);
    if (n < 0) return len;
    *authentic = mode == 1 && !(auth & 4);
    return (size_t)n;
}

#endif
