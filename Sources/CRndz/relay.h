/* relay.h: the relay's logic, transport-free (server_relay.c owns the sockets). Pure: time is
 * a parameter, so Tests/unit/test_relay.c drives it on simulated time.
 *
 * A relay session joins the two peers of one connect session (its nonce, ext.h) that the
 * rendezvous server paired: the server hands each a token (in the Fsync to the listener, in
 * the Redirect to the connector), and only a holder of a valid token joins.
 *
 *   token (32 bytes) = nonce[8] BE | expires[8] BE (the server's monotonic ms)
 *                      | mac[16] = HMAC-SHA256(relay key, "rndz relay v1" | nonce | expires
 *                                              | role)[0..16)
 *   role: 1 the connector, 2 the listener. The key is random per server start: tokens
 *   never outlive the server that minted them, and no state is kept until a peer joins.
 *
 * Relay control messages share the probes' first four bytes (probe.h), so one socket filter
 * keeps both from the application:
 *   join  (peer -> relay, 44 bytes): magic "\xd5rndzRLY", 1, role, 0, 0, token[32]
 *   state (relay -> peer, 20 bytes): magic, 2, state (1 waiting for the other, 2 ready), 0, 0,
 *                                    nonce[8]
 *   use   (connector -> listener through the relay, 20 bytes): magic, 3, 0, 0, 0, nonce[8]
 *   ack   (listener -> connector through the relay, 20 bytes): magic, 4, 0, 0, 0, nonce[8]
 * The relay reads only joins; everything else from a joined address goes to the other side
 * unchanged, the application's datagrams as they are.
 *
 * Each side is bound to the first address that joined with its role: a datagram from any
 * other address reaches nobody, and a second join of a taken role from elsewhere is refused.
 * Limits: sessions at once, bytes per second per session and in total (token buckets), idle
 * time; every drop names its statistic. */
#ifndef RNDZ_RELAY_H
#define RNDZ_RELAY_H

#include "hash.h"
#include "sha256.h"

#define RNDZ_RELAY_TOKEN_LEN 32
#define RNDZ_RELAY_JOIN_LEN (12 + RNDZ_RELAY_TOKEN_LEN)
#define RNDZ_RELAY_CTL_LEN 20
#define RNDZ_RELAY_MAGIC_LO 0x7a524c59u /* "zRLY"; the high word is the probes' "\xd5rnd" */

enum { RNDZ_RELAY_ROLE_CONNECTOR = 1, RNDZ_RELAY_ROLE_LISTENER = 2 };
enum { RNDZ_RELAY_JOIN = 1, RNDZ_RELAY_STATE = 2, RNDZ_RELAY_USE = 3, RNDZ_RELAY_USE_ACK = 4 };
enum { RNDZ_RELAY_WAITING = 1, RNDZ_RELAY_READY = 2 };

/* A token is valid this long after the server handed it out: a peer joins within its connect
 * timeout. */
#define RNDZ_RELAY_TOKEN_TTL_MS 60000

/* The key tokens are made with (the server's, shared by the rendezvous core that mints them
 * and the relay that checks them). */
typedef struct rndz__relay_key {
    rndz__hmac h;
} rndz__relay_key;

RNDZ_INTERNAL void rndz__relay_key_init(rndz__relay_key *k);
RNDZ_INTERNAL void rndz__relay_token(const rndz__relay_key *k, uint64_t nonce, int role,
                                     uint64_t now, uint8_t out[RNDZ_RELAY_TOKEN_LEN]);

/* Control messages. encode: the length written. decode: the type (1..4), or 0 if buf is not
 * a well-formed relay control message; fields as they apply. */
RNDZ_INTERNAL size_t rndz__relay_encode(uint8_t *out, int type, int arg, uint64_t nonce,
                                        const uint8_t *token);
RNDZ_INTERNAL int rndz__relay_decode(const uint8_t *buf, size_t len, int *arg, uint64_t *nonce,
                                     const uint8_t **token);

/* Byte budgets: a token bucket in thousandths of a byte. */
typedef struct rndz__bytes_bucket {
    uint64_t level_mb; /* milli-bytes available */
    uint64_t at;       /* ms of the last refill */
} rndz__bytes_bucket;

/* The relay's own address a datagram reached (IP_PKTINFO): what goes back to its sender
 * leaves from there. */
typedef struct rndz__relay_via {
    bool set;
    unsigned ifindex;
    struct sockaddr_storage addr;
} rndz__relay_via;

typedef struct rndz__relay_side {
    bool bound;
    struct sockaddr_storage addr;
    rndz__relay_via via;
    void *conn; /* TCP: the connection */
    uint32_t next;  /* next side in the address chain (index + 1; 0 ends) */
} rndz__relay_side;

typedef struct rndz__relay_sess {
    bool used;
    uint64_t nonce;
    uint64_t created, last; /* ms */
    rndz__relay_side side[2]; /* [role - 1] */
    rndz__bytes_bucket bucket;
    uint32_t next; /* next session in the nonce chain (index + 1; 0 ends) */
} rndz__relay_sess;

typedef struct rndz__relay_limits {
    uint32_t max_sessions;
    uint32_t rate;       /* bytes per second per session (UINT32_MAX: none) */
    uint32_t total_rate; /* bytes per second for all sessions (UINT32_MAX: none) */
    uint32_t idle_ms;    /* a session silent this long ends (one side only joined: too) */
} rndz__relay_limits;

typedef struct rndz__relay {
    const rndz__relay_key *key;
    rndz__relay_limits lim;
    rndz__relay_sess *sess;
    uint32_t *free_list, nfree;
    uint32_t *by_nonce, *by_addr; /* chain heads (index + 1) */
    uint32_t mask;                /* both tables: mask + 1 buckets */
    rndz__bytes_bucket total;
    uint32_t active;
    uint32_t sweep_at; /* the next session the expiry step looks at */
    rndz__hkey addr_key, nonce_key; /* random per relay: nobody aims at one chain */
} rndz__relay;

RNDZ_INTERNAL int rndz__relay_init(rndz__relay *r, const rndz__relay_key *key,
                                   const rndz__relay_limits *lim, uint64_t now);
RNDZ_INTERNAL void rndz__relay_free(rndz__relay *r);

/* What to do with one datagram (or, over TCP, one join or chunk of bytes). */
typedef struct rndz__relay_out {
    int stat;      /* a statistic to count (RNDZ__ST_*), or -1 */
    bool forward;  /* send the bytes, unchanged, to `to` (conn: TCP), from to_via */
    struct sockaddr_storage to;
    rndz__relay_via to_via;
    void *to_conn;
    size_t ctl_len; /* > 0: answer the source with ctl (a state message) */
    uint8_t ctl[RNDZ_RELAY_CTL_LEN];
    bool notify;    /* and tell the other side (notify_to) that the session is ready */
    struct sockaddr_storage notify_to;
    rndz__relay_via notify_via;
    void *notify_conn;
    const char *why; /* for the log */
    uint32_t sess;   /* after a join: the session (TCP keeps it with the connection) */
} rndz__relay_out;

/* A datagram from `from` that reached `via` (UDP; conn NULL; via may be NULL), or a join on
 * TCP connection `conn` (from: its peer address). */
RNDZ_INTERNAL void rndz__relay_input(rndz__relay *r, const struct sockaddr_storage *from,
                                     const rndz__relay_via *via, void *conn, const uint8_t *buf,
                                     size_t len, uint64_t now, rndz__relay_out *out);
/* Charge len bytes already read (a TCP chunk) to session `sess` and the total: the ms to
 * wait before reading again (0: none), so the rates hold on average. */
RNDZ_INTERNAL uint64_t rndz__relay_charge(rndz__relay *r, uint32_t sess, size_t len, uint64_t now);
/* Spend len bytes of session `sess` (a datagram): false if over a rate (count *stat). */
RNDZ_INTERNAL bool rndz__relay_spend(rndz__relay *r, uint32_t sess, size_t len, uint64_t now,
                                     int *stat);
/* End a session (TCP: the side `self` closed); *other_conn gets the other side's connection
 * (NULL if none). */
RNDZ_INTERNAL void rndz__relay_end(rndz__relay *r, uint32_t sess, void *self, void **other_conn);
/* End sessions idle past idle_ms; visits a bounded number per call. Returns how many ended
 * and the TCP connections of ended sessions through cb. */
RNDZ_INTERNAL size_t rndz__relay_expire(rndz__relay *r, uint64_t now, size_t budget,
                                        void (*cb)(void *ctx, void *conn), void *ctx);

#endif
