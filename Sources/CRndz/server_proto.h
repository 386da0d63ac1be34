/* server_proto.h: the rendezvous logic, once for UDP and TCP (BRIEF, "Server, UDP" and
 * "Server, TCP"); server_udp.c keeps only batching, server_tcp.c only connections and frames.
 *
 * rndz__proto_serve takes one request (its bytes), its source and `now`, and decides:
 *   - admit it: the id lengths (max_id_len), then with a secret the proof and its freshness
 *     (auth.h, replay.h);
 *   - Ping from X      -> register X at the source; Pong back (table full: nothing); a NAT
 *                         check's Ping (ext.h, field 23) gets the address seen and the
 *                         server's addresses in the Pong, may skip the registration, and
 *                         may ask for the Pong from another address;
 *   - Isync{T} from X  -> over the source's sync rate: drop. T registered (and under its
 *                         fsync rate): register X, Fsync{X, source address} to T, with the
 *                         request's extension fields (ext.h); else Redirect{T, ""} back;
 *   - Rsync{T} from L  -> the same limits; Redirect{L, source address} to T, extensions too;
 *                         with a relay, a request that asks for one (ext.h, field 20) gets
 *                         the relay's address and a token for its session in what is
 *                         forwarded: the Fsync (the listener's token) and the Redirect (the
 *                         connector's; only if the listener asked too);
 *   - Bye from X       -> forget X if this source holds it (TCP: end the connection);
 *   - anything else    -> drop (TCP: end the connection).
 * Over TCP, responses carry no id. Every drop names the statistic it counts.
 *
 * The ids live in a per-transport directory (UDP: peertab.h, shared by the workers; TCP:
 * registry.h, ids owned by connections), reached through rndz__dir. The core keeps the
 * state both transports share: limits, the auth key and the replay table. */
#ifndef RNDZ_SERVER_PROTO_H
#define RNDZ_SERVER_PROTO_H

#include "auth.h"
#include "ext.h"
#include "limit.h"
#include "relay.h"
#include "replay.h"

/* The statistics (rndz.h, RNDZ_SERVER_STATS) as indices. */
enum {
#define RNDZ__STAT_INDEX(name, kind, help) RNDZ__ST_##name,
    RNDZ_SERVER_STATS(RNDZ__STAT_INDEX)
#undef RNDZ__STAT_INDEX
    RNDZ__NSTATS
};

/* What both transports share. */
typedef struct rndz__proto {
    uint32_t max_id_len;
    rndz__auth_key *auth; /* NULL: no secret (v1) */
    rndz__replay replay;  /* with auth: the newest ts accepted per id */
    rndz__limits lim;
    /* the relay (relay.h), when the server has one: the key its tokens are made with, and
     * its address as handed to peers */
    rndz__relay_key *relay_key;
    char relay_text[RNDZ_ADDRSTRLEN];
    /* refusals are logged at warn, at most one line a second (the others counted in it) */
    _Atomic uint64_t refusal_log_at;
    _Atomic uint64_t refusals_unlogged;
    /* the server's specific (not wildcard) listen addresses, told to NAT checks */
    size_t nalt;
    char alt[RNDZ_MAX_ALT][RNDZ_ADDRSTRLEN];
} rndz__proto;

/* Where a response goes: a registered peer's address (UDP) or connection (TCP). */
typedef struct rndz__dest {
    struct sockaddr_storage addr;
    uint8_t origin; /* UDP: where that peer wrote to (server.h, rndz__origin) */
    void *conn;
} rndz__dest;

/* A transport's table of ids, for one request from one source. */
typedef struct rndz__dir {
    /* Register (or refresh) id at the source. 0; 1 when it took the id over from another
     * source (address, connection); or -ENOSPC (table full). */
    int (*put)(void *ctx, const char *id, size_t len, uint64_t now);
    /* Where id is registered; with not_source, an id the source itself holds counts as
     * unknown (TCP: an Isync for the connection's own id). false if unknown. */
    bool (*get)(void *ctx, const char *id, size_t len, bool not_source, rndz__dest *out);
    /* Forget id if the source holds it: 1 removed, 0 unknown, < 0 held by someone else. */
    int (*del)(void *ctx, const char *id, size_t len);
    /* Is id registered over the other transport? (NULL: not asked) */
    bool (*other)(void *ctx, const char *id, size_t len);
    void *ctx;
} rndz__dir;

/* A request's source. */
typedef struct rndz__src {
    const struct sockaddr_storage *addr; /* as the socket reported it */
    bool stream;                         /* TCP: responses carry no id; drops end the
                                          * connection where the protocol says so */
} rndz__src;

/* What to do with one request. */
typedef struct rndz__action {
    int stat;        /* a statistic to count (RNDZ__ST_*), or -1 */
    int stat2;       /* and a second one (a refused registration that did not stop the
                      * request), or -1 */
    bool close;      /* TCP: end the connection */
    const char *why; /* why, for the log (with close) */
    bool respond;    /* send `msg` (+ `ext` when present) ... */
    bool to_source;  /* ... back to the source, or else to `dest` */
    bool from_other; /* UDP: from another of the server's addresses, if it has one (a NAT
                      * check's filtering test) */
    rndz__dest dest;
    rndz_msg msg;
    rndz__ext ext;
    char text[RNDZ_ADDRSTRLEN]; /* the source's address, which msg.addr may point to */
} rndz__action;

/* o: the server's options with defaults filled in. */
RNDZ_INTERNAL int rndz__proto_init(rndz__proto *p, const rndz_server_options *o,
                                   const uint8_t *secret, size_t secret_len);
RNDZ_INTERNAL void rndz__proto_free(rndz__proto *p);
/* Serve one request (buf: its bytes; they must outlive `a`, whose msg points into them). */
RNDZ_INTERNAL void rndz__proto_serve(rndz__proto *p, const rndz__dir *dir, const uint8_t *buf,
                                     size_t len, const rndz__src *src, uint64_t now,
                                     rndz__action *a);
/* Log why a request was refused (authentication, a rate, a limit), at warn level but at
 * most once a second whatever the flood: the line counts the refusals not logged since. */
RNDZ_INTERNAL void rndz__proto_log_refusal(rndz__proto *p, const char *transport,
                                          const rndz__action *a, const struct sockaddr_storage *from,
                                          uint64_t now);
/* Encode a's response (msg, then its extension fields) into buf. Length or an error. */
RNDZ_INTERNAL int rndz__proto_encode(const rndz__action *a, uint8_t *buf, size_t cap);

#endif
