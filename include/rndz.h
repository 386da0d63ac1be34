/*
 * rndz.h: the public C API of rndz, a NAT hole-punching rendezvous library.
 *
 * rndz speaks the wire protocol of the Rust crate rndz 0.1.5 ("v1"): a public rendezvous
 * server observes each peer's public address and forwards connection requests; each client
 * talks to the server and to the peer from the same local port (SO_REUSEADDR + SO_REUSEPORT),
 * so both NATs open for the flow.
 *
 * ABI POLICY
 *   Same RNDZ_VERSION_MAJOR = ABI compatible. Error codes are never renumbered or removed.
 *   Options structs may only grow at their end, and only in a new minor version; always fill
 *   them with the matching *_options_init() first so new fields get their defaults.
 *
 * CONVENTIONS
 *   - Every function returning int returns 0 (or a non-negative count / fd) on success and a
 *     negative error code on failure: -errno for OS failures, RNDZ_E_* (below -1000) for the
 *     library's own. rndz_strerror() describes any of them.
 *   - Handles are opaque, created by *_create() and released by *_destroy(); destroy accepts
 *     NULL. Addresses are struct sockaddr_storage; IPv4 peers seen on a dual-stack IPv6 socket
 *     are always reported in IPv4 form (AF_INET), never as ::ffff:a.b.c.d.
 *   - Text addresses are "1.2.3.4:5678" or "[2001:db8::1]:5678" (host names where documented).
 *
 * THREAD SAFETY
 *   - Functions that take no handle (codec, address helpers, rndz_strerror, rndz_version) are
 *     safe to call from any thread at any time.
 *   - A handle may be used from several threads, except that *_destroy() must not race with
 *     any other call on the same handle. rndz_server_stop() may be called from any thread and
 *     from a signal handler (it only writes to an eventfd).
 *   - Callbacks (log, socket configuration) may run on rndz's background threads; they must
 *     not call *_destroy() on the handle that runs them.
 *
 * OPTIONS
 *   Option structs and the strings they point to are only read during the call that takes
 *   them (they are copied). A *_ms field of 0 means "the default". At most 16 servers
 *   (-E2BIG beyond).
 *
 * FILE DESCRIPTORS
 *   An fd *returned* by a function (rndz_udp_connect(), rndz_tcp_connect(),
 *   rndz_tcp_listener_accept()) belongs to the caller, who closes it; it is in blocking mode.
 *   An fd *borrowed* from a handle (rndz_udp_listener_fd(), blocking mode too) stays owned by
 *   the handle and is closed by its destroy.
 */
#ifndef RNDZ_H
#define RNDZ_H

#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>
#include <sys/socket.h>

#ifdef __cplusplus
extern "C" {
#endif

#if defined(__GNUC__) || defined(__clang__)
#define RNDZ_API __attribute__((visibility("default")))
#else
#define RNDZ_API
#endif

/* ---------------------------------------------------------------------------------------- */
/* Version                                                                                  */

#define RNDZ_VERSION_MAJOR 0
#define RNDZ_VERSION_MINOR 3
#define RNDZ_VERSION_PATCH 0
#define RNDZ_VERSION_STRING "0.3.0"
#define RNDZ_VERSION_NUMBER \
    ((RNDZ_VERSION_MAJOR << 16) | (RNDZ_VERSION_MINOR << 8) | RNDZ_VERSION_PATCH)

/* The version of the library actually loaded, as (major << 16 | minor << 8 | patch). */
RNDZ_API unsigned rndz_version(void);
/* The same as text, e.g. "0.3.0". Static storage. */
RNDZ_API const char *rndz_version_string(void);

/* ---------------------------------------------------------------------------------------- */
/* Errors                                                                                   */

/* XX(NAME, value, "description"). Never renumber, never remove. */
#define RNDZ_ERRNO_MAP(XX)                                                                   \
    XX(TRUNCATED, -1001, "message truncated")                                                \
    XX(VARINT, -1002, "malformed varint")                                                    \
    XX(WIRETYPE, -1003, "unexpected protobuf wire type")                                     \
    XX(FIELD, -1004, "invalid protobuf field number")                                        \
    XX(UTF8, -1005, "string is not valid UTF-8")                                             \
    XX(NOCMD, -1006, "message carries no command")                                           \
    XX(TOOBIG, -1007, "message larger than 1500 bytes")                                      \
    XX(NOSPACE, -1008, "output buffer too small")                                            \
    XX(BADADDR, -1009, "malformed address")                                                  \
    XX(RESOLVE, -1010, "host name could not be resolved")                                    \
    XX(NOTFOUND, -1011, "target not found on any rendezvous server")                         \
    XX(TIMEDOUT, -1012, "no answer from any rendezvous server")                              \
    XX(CLOSED, -1013, "handle closed")                                                       \
    XX(BADID, -1014, "id empty or too long")                                                 \
    XX(NOSERVER, -1015, "no rendezvous server given")                                        \
    XX(FRAME, -1016, "malformed or oversize TCP frame")                                      \
    XX(WRONGKIND, -1017, "message kind not valid here")                                      \
    XX(PEERFAIL, -1018, "could not reach the peer")                                          \
    XX(TRANSPORT, -1019, "target registered only over the other transport (UDP or TCP)")

enum rndz_errno {
#define RNDZ_XX_(name, val, s) RNDZ_E_##name = (val),
    RNDZ_ERRNO_MAP(RNDZ_XX_)
#undef RNDZ_XX_
    RNDZ_E_LAST_ = -1020
};

/* Description of any code returned by rndz (negative errno included). Static storage; never
 * NULL ("unknown error" for codes rndz does not know). */
RNDZ_API const char *rndz_strerror(int err);
/* Symbolic name: "RNDZ_E_NOTFOUND", "ECONNREFUSED", ... Static storage; never NULL. */
RNDZ_API const char *rndz_err_name(int err);

/* ---------------------------------------------------------------------------------------- */
/* Logging                                                                                  */

typedef enum rndz_log_level {
    RNDZ_LOG_ERROR = 0,
    RNDZ_LOG_WARN = 1,
    RNDZ_LOG_INFO = 2,
    RNDZ_LOG_DEBUG = 3,
    RNDZ_LOG_TRACE = 4
} rndz_log_level;

/* Called for every message at or below the configured level, from any rndz thread. `msg` is
 * valid only during the call. Calls are serialised under rndz's log lock: the callback must
 * not call rndz_set_log(). */
typedef void (*rndz_log_fn)(rndz_log_level level, const char *msg, void *user);

/* Install the process-wide log callback (NULL: default, which writes to stderr) and the
 * maximum level delivered. Without a call, the level comes from the RNDZ_LOG environment
 * variable (error|warn|info|debug|trace), default warn. Thread-safe. */
RNDZ_API void rndz_set_log(rndz_log_fn fn, void *user, rndz_log_level max_level);
/* Parse "error".."trace" (or "0".."4"); returns the level or a negative error. */
RNDZ_API int rndz_log_level_parse(const char *s);

/* ---------------------------------------------------------------------------------------- */
/* Addresses                                                                                */

/* Longest text form written by rndz_addr_format(), terminator included. */
#define RNDZ_ADDRSTRLEN 64

/* Parse a numeric "a.b.c.d:port" or "[v6]:port" (no name lookup). Returns 0 or
 * RNDZ_E_BADADDR. `len` may be NULL. */
RNDZ_API int rndz_addr_parse(const char *text, struct sockaddr_storage *out, socklen_t *len);
/* Like rndz_addr_parse but also resolves "host:port" through getaddrinfo. `family` is
 * AF_UNSPEC, AF_INET or AF_INET6 and picks among the results (AF_UNSPEC: the first); a
 * numeric address of another family gives RNDZ_E_RESOLVE. Returns 0, RNDZ_E_BADADDR or
 * RNDZ_E_RESOLVE. Blocks while resolving. */
RNDZ_API int rndz_addr_resolve(const char *text, int family, struct sockaddr_storage *out,
                               socklen_t *len);
/* Write the text form into buf (at least RNDZ_ADDRSTRLEN bytes is always enough). IPv4-mapped
 * IPv6 addresses are written in IPv4 form. Returns the length written (without the
 * terminator) or a negative error. */
RNDZ_API int rndz_addr_format(const struct sockaddr *sa, char *buf, size_t cap);

/* ---------------------------------------------------------------------------------------- */
/* Sockets                                                                                  */

/* Socket configuration callback, like rndz's SocketConfigure: called with every socket rndz
 * creates and uses, before bind (e.g. to set SO_MARK or SO_BINDTODEVICE). (A multi-worker
 * server also binds, and closes at once, one plain socket to claim its port; that one is not
 * passed to the callback.) A UDP listener with per-peer sockets (rndz_udp_listener_accept)
 * calls it on its event thread for each peer socket, made when the peer's first probe
 * arrives (one per address it probes from, at most 4 per peer, those not chosen closed);
 * a refusal there falls back to a socket made when the peer has chosen its path. Return 0
 * to go on, or a negative error to abort the operation with that error. */
typedef int (*rndz_sock_config_fn)(int fd, int family, int socktype, void *user);

/* ---------------------------------------------------------------------------------------- */
/* Wire codec (protocol v1)                                                                 */

/* Largest message body, in a UDP datagram or a TCP frame. */
#define RNDZ_MAX_MSG 1500
/* The one id limit: the longest id (bytes of UTF-8) our clients take and send, and the
 * server's default max_id_len. Decoders accept any length that fits a message (v1 set no
 * limit); a server may raise max_id_len for v1 clients with longer ids. */
#define RNDZ_MAX_ID_LEN 255

typedef enum rndz_cmd {
    RNDZ_CMD_NONE = 0,
    /* Request commands (client -> server, and the listener's punch to a peer) */
    RNDZ_REQ_PING = 1,
    RNDZ_REQ_ISYNC = 2,  /* peer_id: target */
    RNDZ_REQ_FSYNC = 3,  /* peer_id, addr */
    RNDZ_REQ_RSYNC = 4,  /* peer_id: the connector that asked */
    RNDZ_REQ_BYE = 5,
    /* Response commands (server -> client) */
    RNDZ_RSP_PONG = 16,
    RNDZ_RSP_REDIRECT = 17, /* peer_id, addr ("" = not found) */
    RNDZ_RSP_FSYNC = 18     /* peer_id, addr */
} rndz_cmd;

/* A decoded message. The string fields point into the buffer that was decoded (not NUL
 * terminated); they stay valid as long as that buffer does. */
typedef struct rndz_msg {
    rndz_cmd cmd;
    const char *id; /* field 1 of Request/Response; absent = "" */
    size_t id_len;
    const char *peer_id; /* the id inside the command */
    size_t peer_id_len;
    const char *addr; /* the addr inside the command */
    size_t addr_len;
} rndz_msg;

/* Decode a Request (is_response = 0) or Response (1). Fields in any order; unknown fields
 * skipped; repeated fields: the last wins, as in protobuf. Returns 0 or RNDZ_E_TRUNCATED,
 * _VARINT, _WIRETYPE, _FIELD, _UTF8, _NOCMD, _TOOBIG. Never reads past buf+len. */
RNDZ_API int rndz_msg_decode(const uint8_t *buf, size_t len, int is_response, rndz_msg *out);
/* Encode as proto3 would (empty strings omitted). Returns the number of bytes written, or
 * RNDZ_E_NOSPACE / RNDZ_E_TOOBIG / RNDZ_E_NOCMD. */
RNDZ_API int rndz_msg_encode(const rndz_msg *m, uint8_t *buf, size_t cap);

/* TCP framing: 2-byte big-endian length, then the body (at most RNDZ_MAX_MSG bytes).
 * rndz_frame_encode writes the header and body; returns the total length or an error. */
RNDZ_API int rndz_frame_encode(const rndz_msg *m, uint8_t *buf, size_t cap);

/* Incremental reassembly of frames from a byte stream (a TCP connection). Feed whatever a
 * read() returned; take complete bodies out one at a time. */
typedef struct rndz_framer {
    uint8_t buf[2 + RNDZ_MAX_MSG];
    size_t have; /* bytes buffered */
} rndz_framer;
RNDZ_API void rndz_framer_init(rndz_framer *f);
/* Consume bytes from `data` into the framer. Returns the number of bytes consumed (it stops
 * when one complete frame is buffered), or RNDZ_E_FRAME when the header announces a body
 * over RNDZ_MAX_MSG (the stream cannot be resynchronised: close it). */
RNDZ_API int rndz_framer_feed(rndz_framer *f, const uint8_t *data, size_t len);
/* If a complete frame is buffered: point *body at it, store its length, and return 1; the
 * body stays valid until the next feed. Returns 0 if more bytes are needed. The frame is
 * consumed. */
RNDZ_API int rndz_framer_next(rndz_framer *f, const uint8_t **body, size_t *len);

/* ---------------------------------------------------------------------------------------- */
/* Authenticated ids (opt-in; SECURITY.md)                                                  */

/* A request proves its id with an extra field that v1 decoders skip:
 *   Request { ... 16: Auth { 1: ts uint64 (unix ms), 2: nonce bytes (8..32), 3: mac bytes (32) } }
 *   mac = HMAC-SHA256(credential, ts as 8 bytes big-endian || one byte: nonce length || nonce
 *                                 || the message's bytes without the Auth field's bytes)
 *   credential = HMAC-SHA256(server secret, "rndz id credential v1" || id)
 * A server with a secret serves a request only if its mac verifies with the credential of the
 * request's id (field 1), ts is within the server's window of its clock, and ts is newer than
 * the last ts it accepted for that id. */
#define RNDZ_CREDENTIAL_LEN 32

/* The credential of `id` (id_len bytes) under a server secret (at least 16 bytes). The
 * operator hands it to the holder of that id only. Returns 0 or -EINVAL. */
RNDZ_API int rndz_credential_derive(const uint8_t *secret, size_t secret_len, const char *id,
                                    size_t id_len, uint8_t out[RNDZ_CREDENTIAL_LEN]);
/* Append an Auth field to an encoded Request (buf, len bytes; capacity cap), signed with
 * `credential`. ts_ms: the unix time in ms, or 0 for now (the clients send strictly growing
 * values). nonce: nonce_len bytes (8..32), or NULL for 16 random bytes. A message that
 * already carries an Auth field is refused (RNDZ_E_WRONGKIND). Returns the new length, or
 * -EINVAL, RNDZ_E_NOSPACE, RNDZ_E_TOOBIG (over RNDZ_MAX_MSG), or a decode error. */
RNDZ_API int rndz_msg_sign(const uint8_t credential[RNDZ_CREDENTIAL_LEN], uint64_t ts_ms,
                           const uint8_t *nonce, size_t nonce_len, uint8_t *buf, size_t len,
                           size_t cap);

/* ---------------------------------------------------------------------------------------- */
/* Server                                                                                   */

typedef struct rndz_server rndz_server;

typedef struct rndz_server_options {
    const char *listen_addr;    /* numeric address; default "0.0.0.0:8888"; port 0 = any.
                                   On a wildcard address (0.0.0.0, [::]) of a host with
                                   several addresses, UDP answers leave from the address each
                                   client wrote to (IP_PKTINFO / IPV6_PKTINFO), and requests
                                   forwarded to a peer from the one that peer wrote to. */
    int ipv6_only;              /* for an IPv6 listen address: serve IPv6 only */
    int enable_udp;             /* default 1 */
    int enable_tcp;             /* default 1: TCP on the same address and port */
    uint32_t udp_expiry_ms;     /* forget UDP ids silent this long; default 60000 */
    uint32_t tcp_idle_ms;       /* drop TCP connections silent this long; default 30000 */
    rndz_sock_config_fn sock_config;
    void *sock_config_user;
    unsigned workers;           /* UDP worker threads (SO_REUSEPORT sockets); 0 (default):
                                   one per core. With 1, the port is not shared. */
    uint64_t max_peers;         /* UDP ids the server holds at most (about: the table is
                                   sharded); a Ping beyond it is dropped and counted in
                                   udp_refused. Default 1000000. */
    /* Authenticated ids (SECURITY.md). NULL: none, the server speaks plain v1. Else at least
     * 16 bytes (shorter: -EINVAL), copied: the server serves only requests that carry a proof
     * made with the credential of their id (rndz_credential_derive() of this secret), with a
     * timestamp within auth_window_ms of the server's clock and newer than the last one it
     * accepted for that id; anything else is dropped and counted (auth_failed, auth_replayed).
     * Requests signed before the server started are refused too. */
    const uint8_t *secret;
    size_t secret_len;
    uint32_t auth_window_ms;    /* default 30000 */
    /* Limits. For each: 0 = the default; UINT32_MAX = no limit. Every drop is counted. */
    uint32_t sync_rate;         /* Isync and Rsync (requests that make the server send to
                                   someone else) per second from one source address (IPv4:
                                   the address; IPv6: its /64). Default 20 */
    uint32_t sync_burst;        /* ... and the burst allowed. Default 40 */
    uint32_t fsync_rate;        /* Fsync (and Redirect answering an Rsync) the server sends
                                   toward one target id per second; a connect needs about one
                                   per second (the connector resends each round_ms). Default
                                   10 */
    uint32_t fsync_burst;       /* ... and the burst allowed. Default 20 */
    uint32_t max_tcp_conns;     /* TCP connections open at once. Default 65536 */
    uint32_t max_tcp_conns_per_ip; /* ... from one source address (IPv6: /64). Default 256 */
    uint32_t max_id_len;        /* requests whose id or target id is longer (bytes) are
                                   dropped. Default RNDZ_MAX_ID_LEN (what our clients send
                                   at most); up to RNDZ_MAX_MSG for v1 clients with longer
                                   ids */
    /* Several addresses to serve on, UDP and TCP on each (e.g. one IPv4 and one IPv6, or two
     * of a multi-homed host), at most RNDZ_MAX_LISTEN. When n_listen_addrs > 0 these are
     * used and listen_addr is not. A port of 0: the first such address gets a free port and
     * the others with port 0 take the same one. With an IPv4 address in the list, the IPv6
     * ones serve IPv6 only (as with ipv6_only), so "0.0.0.0:P" and "[::]:P" go together.
     * One table of ids serves them all; a request forwarded to a peer leaves from the
     * address that peer wrote to. */
    const char *const *listen_addrs;
    size_t n_listen_addrs;
    /* Relay (opt-in; SECURITY.md, "Relay"). NULL: none. Else a numeric address (port 0: any)
     * on which the server relays, UDP and TCP, between the two peers of a connect that no
     * direct path serves: the server hands both a token with the Fsync and Redirect (only
     * when both asked for it, in fields v1 skips), and only token holders join; a session
     * forwards only between the two addresses that joined it. The limits below: 0 = the
     * default, UINT32_MAX = none (not for relay_max_sessions). */
    const char *relay_addr;
    uint32_t relay_max_sessions; /* sessions at once (UDP and TCP each). Default 1024 */
    uint32_t relay_rate;         /* bytes per second per session, each way summed. Default
                                    1048576 (1 MiB/s) */
    uint32_t relay_total_rate;   /* bytes per second through the relay in all, for each
                                    transport (UDP, TCP). Default 67108864 (64 MiB/s) */
    uint32_t relay_idle_ms;      /* a session with no traffic this long ends. Default 60000 */
} rndz_server_options;

/* Addresses one server serves on at most. */
#define RNDZ_MAX_LISTEN 16

/* Counters are updated as the workers go: a reply can reach its client a moment before the
 * counters include it. With several workers, datagrams from different clients are handled in
 * no fixed order. */
/* Every server statistic, in the order of rndz_server_stats' fields (the ABI: new ones go at
 * the end): X(name, kind, "help"). kind: COUNTER (only grows) or GAUGE (a level now). One
 * list generates the struct, the server's per-worker counters and their sum, so a new
 * statistic is one line here. */
#define RNDZ_SERVER_STATS(X)                                                                 \
    X(udp_rx, COUNTER, "UDP datagrams received")                                             \
    X(udp_tx, COUNTER, "UDP datagrams sent")                                                 \
    X(udp_malformed, COUNTER, "UDP datagrams dropped as undecodable or not a request")       \
    X(udp_expired, COUNTER, "UDP ids expired")                                               \
    X(udp_peers, GAUGE, "UDP ids registered now")                                            \
    X(tcp_conns, GAUGE, "TCP connections open now")                                          \
    X(tcp_peers, GAUGE, "TCP ids registered now")                                            \
    X(tcp_malformed, COUNTER, "TCP connections dropped for a bad frame or message")          \
    X(udp_refused, COUNTER, "UDP registrations refused: the table is full (max_peers)")      \
    X(workers, GAUGE, "worker threads")                                                      \
    X(auth_failed, COUNTER, "requests dropped (secret set): no proof, a malformed or wrong "  \
      "one, or a timestamp outside the window")                                              \
    X(auth_replayed, COUNTER, "requests dropped (secret set): timestamp not newer than the " \
      "last accepted for the id (a replay)")                                                 \
    X(sync_limited, COUNTER, "Isync/Rsync dropped: their source was over sync_rate")          \
    X(fsync_limited, COUNTER, "Fsync/Redirect not sent: the target was over fsync_rate")      \
    X(id_refused, COUNTER, "requests dropped: id longer than max_id_len")                    \
    X(tcp_refused, COUNTER, "TCP connections closed at once: over max_tcp_conns or "         \
      "max_tcp_conns_per_ip")                                                                \
    X(relay_sessions, GAUGE, "relay sessions open now (one or both peers joined)")           \
    X(relay_rx, COUNTER, "datagrams (UDP) and chunks (TCP) received on the relay")           \
    X(relay_tx, COUNTER, "datagrams and chunks the relay forwarded to a peer")               \
    X(relay_bytes, COUNTER, "bytes the relay forwarded")                                     \
    X(relay_foreign, COUNTER, "relay datagrams dropped: from an address in no session, or "  \
      "before the other peer joined")                                                        \
    X(relay_refused, COUNTER, "relay joins refused: forged or expired token, role taken "    \
      "from another address, or relay_max_sessions reached")                                 \
    X(relay_limited, COUNTER, "relay datagrams dropped (TCP: reads paused) over "            \
      "relay_rate or relay_total_rate")                                                      \
    X(relay_expired, COUNTER, "relay sessions ended: idle for relay_idle_ms, or a TCP side " \
      "closed")

/* The server's statistics; UDP and TCP together for auth_failed .. id_refused. */
typedef struct rndz_server_stats {
#define RNDZ__STATS_FIELD(name, kind, help) uint64_t name;
    RNDZ_SERVER_STATS(RNDZ__STATS_FIELD)
#undef RNDZ__STATS_FIELD
} rndz_server_stats;

RNDZ_API void rndz_server_options_init(rndz_server_options *o);
/* Create the server and bind its sockets (so the port is known at once). Does not serve
 * until rndz_server_run() or rndz_server_start(). */
RNDZ_API int rndz_server_create(const rndz_server_options *o, rndz_server **out);
/* The address actually bound (useful with port 0). */
RNDZ_API int rndz_server_local_addr(rndz_server *s, struct sockaddr_storage *out,
                                    socklen_t *len);
/* Every address bound, in the order given: stores up to `max` in out[] and returns how many
 * the server has (which may exceed max). */
RNDZ_API size_t rndz_server_local_addrs(rndz_server *s, struct sockaddr_storage *out,
                                        size_t max);
/* The relay's address (relay_addr, with the port bound). -ENOENT when the server has no
 * relay. */
RNDZ_API int rndz_server_relay_addr(rndz_server *s, struct sockaddr_storage *out,
                                    socklen_t *len);
/* Serve on the calling thread until rndz_server_stop(). Returns 0 after a stop. A server
 * serves once: after a stop, run and start return -EBUSY. */
RNDZ_API int rndz_server_run(rndz_server *s);
/* Serve on a new background thread. Returns 0 or a negative error. */
RNDZ_API int rndz_server_start(rndz_server *s);
/* Ask the server to stop. Async-signal-safe; any thread. A background thread started by
 * rndz_server_start() is joined by rndz_server_destroy(). */
RNDZ_API int rndz_server_stop(rndz_server *s);
RNDZ_API int rndz_server_stats_get(rndz_server *s, rndz_server_stats *out);
/* The statistics in the Prometheus text format (version 0.0.4): for each, "# HELP", "# TYPE"
 * and its value, named rndz_NAME (counters rndz_NAME_total), e.g. rndz_udp_peers (UDP ids
 * registered now) and rndz_relay_bytes_total. Writes at most cap bytes (NUL included);
 * returns the length it needs without the NUL (like snprintf), or a negative error. */
RNDZ_API int rndz_server_metrics(rndz_server *s, char *buf, size_t cap);
/* One worker's UDP counters (udp_rx, udp_tx, udp_malformed, udp_expired, udp_refused, and the
 * UDP share of auth_failed, auth_replayed, sync_limited, fsync_limited, id_refused). */
RNDZ_API int rndz_server_worker_stats(rndz_server *s, unsigned worker, rndz_server_stats *out);
/* Stop (if needed), join the background thread, close every socket, free. Accepts NULL. */
RNDZ_API void rndz_server_destroy(rndz_server *s);

/* ---------------------------------------------------------------------------------------- */
/* Clients                                                                                  */

typedef struct rndz_client_options {
    const char *id;                 /* our id (required, 1..RNDZ_MAX_ID_LEN bytes of UTF-8) */
    const char *const *servers;     /* "host:port" of each rendezvous server (required) */
    size_t n_servers;
    const char *local_addr;         /* local bind; default "0.0.0.0:0" or "[::]:0" to fit */
    uint32_t keepalive_ms;          /* listener ping interval, jittered +-20%, capped at
                                       25000 (conntrack forgets one-way UDP after 30 s);
                                       default 10000 */
    uint32_t round_ms;              /* UDP connector: Isync is sent again after 200 ms, then
                                       after twice as long each round, up to round_ms
                                       (default 1000), until timeout_ms */
    uint32_t timeout_ms;            /* connector: give up after this long (TCP: the whole
                                       connect, server and peer); TCP listener: how long it
                                       goes on punching toward a peer; default 10000 */
    rndz_sock_config_fn sock_config;
    void *sock_config_user;
    const uint8_t *credential;      /* RNDZ_CREDENTIAL_LEN bytes (copied), or NULL: sign every
                                       request sent to a server with this id's credential, for
                                       servers started with a secret (v1 servers skip the
                                       proof). Punch packets to peers are not signed. */
    uint32_t tcp_rto_max_ms;        /* TCP: cap on the retransmission timeout of the
                                       connections handed over (TCP_RTO_MAX_MS, Linux >= 6.15;
                                       ignored where the kernel lacks it). While connecting,
                                       rndz caps it at 1000 ms (Linux >= 6.15), so lost SYNs
                                       and SYN-ACKs are sent again each second, not at 1, 3,
                                       7, 15 s. 0 (default): the handed-over connection gets the
                                       kernel's default back (net.ipv4.tcp_rto_max_ms, 120 s).
                                       1000..120000: the connection keeps this cap, so data
                                       lost early is resent within it; note that a connection
                                       whose path is dead then also gives up sooner: after
                                       tcp_retries2 (15) resends at most this far apart, 15 s
                                       with 1000 (measured), not the default's ~15 min. And
                                       a connection close()d with data not yet acknowledged
                                       is dropped by the kernel as soon as its RTO reaches the
                                       cap (an orphan then counts as dead: 0 retries), so
                                       shutdown(SHUT_WR) and wait for the peer's end first. */
    /* The server's relay (rndz_server_options.relay_addr), when no direct path works: */
    int relay;                      /* RNDZ_RELAY_AUTO (default): direct first; the relay when
                                       no direct path verified within relay_after_ms.
                                       RNDZ_RELAY_NEVER: direct only (as before 0.3).
                                       RNDZ_RELAY_ONLY: the relay at once (a direct path is
                                       known to be impossible). Both sides must allow it; a
                                       v1 peer or server never relays. */
    uint32_t relay_after_ms;        /* default 2000 */
    int port_mapping;               /* UDP listener: 1: ask the IPv4 default gateway for a
                                       mapping of the shared port (PCP, then NAT-PMP; pmp.h),
                                       renew it, delete it on close, and advertise it to
                                       connectors as a candidate: a peer then reaches us
                                       through a NAT that maps per destination. Silence or
                                       refusal costs nothing (it runs in the background) and
                                       is not asked again for 10 minutes. 0 (default): off */
    uint32_t servers_per_id;        /* server sets: of the servers given (a name counts once per
                                       address of its answer), a listener registers with the
                                       servers_per_id (K) that rendezvous hashing of its id
                                       ranks first (rndz_server_rank), and a connector asks
                                       those for it. A listener whose server is down registers
                                       with the next of the ranking, and returns to the first
                                       when it is back; a connector that hears nothing from
                                       one asks the next. Default 2; all servers when there
                                       are no more than K (as before 0.4). */
} rndz_client_options;

#define RNDZ_RELAY_AUTO 0
#define RNDZ_RELAY_NEVER 1
#define RNDZ_RELAY_ONLY 2

RNDZ_API void rndz_client_options_init(rndz_client_options *o);

/* What a connect found (or a listener learned about a peer). */
typedef struct rndz_peer_info {
    struct sockaddr_storage addr; /* the peer's address that carries the traffic */
    char id[RNDZ_MAX_ID_LEN + 1]; /* the peer's id (listener side) */
    uint32_t rtt_ms;     /* round trip measured by the probes; 0 when not measured */
    uint32_t elapsed_ms; /* connector: from the call to the verified path */
    int verified;        /* 1: probes proved the path both ways; 0: a v1 peer or server, the
                            path was not verified (rndz 0.1.5 behaviour) */
    int lan;             /* the address is private (RFC 1918, 100.64/10, fc00::/7) */
    int advertised;      /* 1: one of the addresses the peer advertised (LAN, IPv6); 0: the
                            address the rendezvous server saw */
    int relayed;         /* 1: the path goes through the server's relay, and addr is the
                            relay's address; the socket carries the peer's bytes unchanged */
    int predicted;       /* 1: a direct path through a destination-dependent NAT, found by
                            port prediction (one side's NAT maps per destination) */
    int mapped;          /* 1: the path goes to a port mapping the listener holds at its
                            gateway (client option port_mapping) */
} rndz_peer_info;

/* UDP listener: registers our id with every server and keeps the registration alive from a
 * background thread; answers forwarded connection requests (Fsync) with Rsync to the server
 * and a punch packet to the peer. Peer traffic goes over rndz_udp_listener_fd(). */
typedef struct rndz_udp_listener rndz_udp_listener;

/* Errors: RNDZ_E_BADID, RNDZ_E_NOSERVER, RNDZ_E_BADADDR, RNDZ_E_RESOLVE, -E2BIG, negative
 * errno from socket/bind/connect (e.g. -EADDRINUSE for a local_addr in use). */
RNDZ_API int rndz_udp_listener_create(const rndz_client_options *o, rndz_udp_listener **out);
/* The unconnected peer socket, bound to the same local port as the server sockets. Borrowed:
 * owned and closed by the listener. */
RNDZ_API int rndz_udp_listener_fd(rndz_udp_listener *l);
RNDZ_API int rndz_udp_listener_local_addr(rndz_udp_listener *l, struct sockaddr_storage *out,
                                          socklen_t *len);
/* Wait until at least one server answered a ping (0), or timeout_ms passed
 * (RNDZ_E_TIMEDOUT), or the listener is being destroyed (RNDZ_E_CLOSED). */
RNDZ_API int rndz_udp_listener_wait_registered(rndz_udp_listener *l, uint32_t timeout_ms);
/* Wait up to timeout_ms (UINT32_MAX: no limit) for the next peer that connected: with a
 * peer that speaks probes (ours), once the path is verified both ways (verified = 1, with
 * the RTT); with a v1 peer, when the server forwards its request (verified = 0). Returns 0,
 * RNDZ_E_TIMEDOUT, or RNDZ_E_CLOSED. Probe packets never reach rndz_udp_listener_fd(): the
 * kernel steers them to the listener's own socket. */
RNDZ_API int rndz_udp_listener_next_peer(rndz_udp_listener *l, uint32_t timeout_ms,
                                         rndz_peer_info *info);
/* A descriptor for event loops (epoll, poll, the Swift overlay's reactor): readable,
 * level-triggered, while a peer is queued (rndz_udp_listener_next_peer(l, 0, ...) returns one
 * at once) or after the listener is closed. Borrowed: owned by the listener; only wait on it,
 * never read, write or close it. */
RNDZ_API int rndz_udp_listener_ready_fd(rndz_udp_listener *l);
/* Wait up to timeout_ms (UINT32_MAX: no limit) for the next peer, and return a UDP socket of
 * its own, connected to it (the caller owns it; blocking mode): bound to the shared port for
 * a direct path, or connected to the server's relay for a relayed one (info->relayed). Either
 * way read and write the peer's datagrams as they are; protocol packets never reach it.
 * The first call switches the listener to per-peer sockets: from then on it offers the relay
 * to connectors that ask (client option `relay`), hands each peer out only once the
 * connector has chosen its path, and the peer's datagrams reach its own socket, not
 * rndz_udp_listener_fd(). Do not mix with rndz_udp_listener_next_peer() after that (it
 * closes the sockets it pops). A relayed path lives while it carries traffic: the relay ends
 * a session silent for its idle time (relay_idle_ms, default 60 s), as a NAT forgets a silent
 * flow; send something (a keepalive of your own) at least that often. Returns the fd,
 * RNDZ_E_TIMEDOUT, or RNDZ_E_CLOSED. */
RNDZ_API int rndz_udp_listener_accept(rndz_udp_listener *l, uint32_t timeout_ms,
                                      rndz_peer_info *info);
/* Send Bye to every server, stop and join the background thread, close every socket, free.
 * Accepts NULL. */
RNDZ_API void rndz_udp_listener_destroy(rndz_udp_listener *l);

/* Server sets: the order in which rndz ranks `servers` (n of them, "host:port", each resolved
 * to its first address) for `id`: order[0] is the index of the server ranked first. Every
 * client ranks the same set the same way, in any order given: weight = first 8 bytes
 * (big-endian) of SHA-256(canonical address text, 0x00, id), highest first (README, "Server
 * sets"; vectors in Tests/vectors/hrw.txt). 0 or an error (RNDZ_E_BADADDR, RNDZ_E_RESOLVE,
 * -E2BIG above 16 servers). */
RNDZ_API int rndz_server_rank(const char *id, const char *const *servers, size_t n, size_t *order);

/* UDP connector: ask every server for `target` in rounds, until a server answers with the
 * target's address or the timeout passes. On success returns a UDP socket (caller owns it)
 * bound to the port that asked and connected to the peer, and stores the peer's address in
 * *peer (may be NULL). Errors: RNDZ_E_NOTFOUND (every server said so), RNDZ_E_TRANSPORT
 * (every server said so, and one has the target registered over TCP: use rndz_tcp_connect;
 * an rndz server tells a connector that probes), RNDZ_E_TIMEDOUT (not
 * every server answered in time and none knew the target), RNDZ_E_BADID, RNDZ_E_NOSERVER,
 * RNDZ_E_BADADDR (a malformed server or local address), RNDZ_E_RESOLVE, negative errno.
 * Blocks; not cancellable (it ends within timeout_ms). */
RNDZ_API int rndz_udp_connect(const rndz_client_options *o, const char *target,
                              struct sockaddr_storage *peer, socklen_t *peer_len);
/* rndz_udp_connect, telling what it found. With a listener that speaks probes (ours, through
 * a server that forwards extensions: ours), the connector advertises its local candidate
 * addresses, probes every candidate of the listener (the address the server saw and its LAN
 * and IPv6 addresses) at once, with paced retries until timeout_ms, and returns only a path
 * that answered: verified both ways, with its RTT, a LAN path preferred. With a v1 listener
 * or server it behaves as rndz 0.1.5 (info->verified = 0). Probe packets never reach the
 * returned socket. `info` may be NULL. */
RNDZ_API int rndz_udp_connect_info(const rndz_client_options *o, const char *target,
                                   rndz_peer_info *info);

/* TCP listener: a listening socket and a connection to every server, all from the same local
 * port. It registers with each server (ping every keepalive_ms), reconnects with backoff
 * (about 1 s doubling to 30 s) when a server connection breaks, and on a forwarded request
 * (Fsync) sends Rsync to the server and connects from the same port toward the peer, timed
 * so that its SYN leaves when the peer's does (half the relayed round trip later, from the
 * RTTs to the server: ours, and the connector's, which our connectors send along), so the
 * two SYNs cross: a TCP simultaneous open, the connection then being the peer's. (This
 * timing is for the address the server saw; the connector tries the listener's advertised
 * addresses 250 ms later.) A refused SYN is sent again every 250 ms, 6 SYNs per address at
 * most, within timeout_ms. Peer connections, from the listening socket or from such a
 * crossed connect, come out of rndz_tcp_listener_accept(). */
typedef struct rndz_tcp_listener rndz_tcp_listener;

RNDZ_API int rndz_tcp_listener_create(const rndz_client_options *o, rndz_tcp_listener **out);
RNDZ_API int rndz_tcp_listener_local_addr(rndz_tcp_listener *l, struct sockaddr_storage *out,
                                          socklen_t *len);
/* Wait until at least one server answered a ping (0), or timeout_ms passed
 * (RNDZ_E_TIMEDOUT), or the listener was closed (RNDZ_E_CLOSED). */
RNDZ_API int rndz_tcp_listener_wait_registered(rndz_tcp_listener *l, uint32_t timeout_ms);
/* Wait up to timeout_ms (UINT32_MAX: no limit) for a peer connection. Returns its fd (the
 * caller owns it; blocking mode) and stores the peer's address in *peer (may be NULL).
 * Errors: RNDZ_E_TIMEDOUT, RNDZ_E_CLOSED after rndz_tcp_listener_close(). Several threads may
 * wait at once. */
RNDZ_API int rndz_tcp_listener_accept(rndz_tcp_listener *l, uint32_t timeout_ms,
                                      struct sockaddr_storage *peer, socklen_t *peer_len);
/* rndz_tcp_listener_accept, telling what is known of the peer: its address (a relayed
 * connection: the relay's, with relayed = 1, and the peer's id). */
RNDZ_API int rndz_tcp_listener_accept_info(rndz_tcp_listener *l, uint32_t timeout_ms,
                                           rndz_peer_info *info);
/* As rndz_udp_listener_ready_fd, for accept: readable while a connection is queued
 * (rndz_tcp_listener_accept(l, 0, ...) returns it at once) or after close. Borrowed. */
RNDZ_API int rndz_tcp_listener_ready_fd(rndz_tcp_listener *l);
/* Stop accepting: wakes every waiting accept (RNDZ_E_CLOSED), sends Bye, stops the background
 * thread. Safe to call while other threads wait in accept. Idempotent. */
RNDZ_API int rndz_tcp_listener_close(rndz_tcp_listener *l);
/* Close (if needed) and free, closing connections nobody accepted. Accepts NULL. */
RNDZ_API void rndz_tcp_listener_destroy(rndz_tcp_listener *l);

/* TCP connector: connect to a server, ask for `target`, then connect from the same local port
 * to the address the server gives, retrying for up to timeout_ms in all (the peer's SYN and
 * ours may need to cross). Returns the connected stream (caller owns it; blocking mode) and
 * stores the peer's address in *peer (may be NULL). Errors: RNDZ_E_NOTFOUND, RNDZ_E_TRANSPORT
 * (not found, but registered over UDP on a server asked), RNDZ_E_TIMEDOUT,
 * RNDZ_E_PEERFAIL (the peer's address was given but no connection could be made),
 * RNDZ_E_BADID, RNDZ_E_NOSERVER, RNDZ_E_BADADDR, RNDZ_E_RESOLVE, negative errno. Servers are
 * asked in turn, each with an equal share of the time left; a server that refuses the
 * connection counts as not answering (RNDZ_E_TIMEDOUT if no other knew the target), and
 * when every server refused, -ECONNREFUSED (nothing listens on that TCP port). Blocks; not
 * cancellable. */
RNDZ_API int rndz_tcp_connect(const rndz_client_options *o, const char *target,
                              struct sockaddr_storage *peer, socklen_t *peer_len);
/* rndz_tcp_connect, telling what it found: the address that carried the connection (the one
 * the server saw, or one the listener advertised: its LAN address when both peers are behind
 * one NAT, its IPv6 address), the RTT the kernel measured on the handshake, and the time from
 * the call to the connection. verified is 1: the handshake itself proved the path both ways.
 * `info` may be NULL. */
RNDZ_API int rndz_tcp_connect_info(const rndz_client_options *o, const char *target,
                                   rndz_peer_info *info);

/* ---------------------------------------------------------------------------------------- */
/* Bridge: pairs of stream sockets joined end to end                                        */

/* One event thread that carries bytes between pairs of connected stream sockets (TCP, UNIX),
 * both ways, with splice(2) through a pipe per direction (the bytes never enter user space;
 * each direction holds at most 64 KiB in flight): a forwarded connection costs no thread.
 * A half-close passes through (when one side ends, the other side's write direction is shut
 * down once everything before it arrived); the pair ends, closing both sockets, when both
 * directions ended, on any error, or after idle_ms without a byte either way (0: never).
 * Two connected datagram sockets (UDP) are joined datagram for datagram (as they are; one the
 * other side cannot take at once is dropped, as the network would), ended by idle_ms only.
 * rndz-cli's expose and forward carry each connection (and, with --udp, each flow) with it. */
typedef struct rndz_bridge rndz_bridge;
RNDZ_API int rndz_bridge_create(rndz_bridge **out);
/* Join a and c (the bridge owns both from now on, also on error: they are closed). 0 or a
 * negative error. Any thread. */
RNDZ_API int rndz_bridge_add(rndz_bridge *b, int a, int c, uint32_t idle_ms);
/* Pairs still carrying (not yet ended). */
RNDZ_API size_t rndz_bridge_count(rndz_bridge *b);
/* Stop the thread, close every pair, free. Accepts NULL. */
RNDZ_API void rndz_bridge_destroy(rndz_bridge *b);

/* ---------------------------------------------------------------------------------------- */
/* NAT check                                                                                */

/* How the NAT in front of us maps one local port (RFC 4787): the same public address for every
 * destination, or one per destination ("symmetric"). */
#define RNDZ_NAT_UNKNOWN 0
#define RNDZ_NAT_ENDPOINT_INDEPENDENT 1
#define RNDZ_NAT_ENDPOINT_DEPENDENT 2
/* How it picks public ports (endpoint-dependent mapping; for an endpoint-independent one only
 * "preserving" is told) */
#define RNDZ_NAT_PORT_UNKNOWN 0
#define RNDZ_NAT_PORT_PRESERVING 1 /* the public port is the local one */
#define RNDZ_NAT_PORT_SEQUENTIAL 2 /* each new mapping: the last one + port_step */
#define RNDZ_NAT_PORT_RANDOM 3
/* Filtering (with a server on two addresses): RNDZ_NAT_UNKNOWN, RNDZ_NAT_ENDPOINT_INDEPENDENT
 * (a Pong from the server's other address came in), RNDZ_NAT_ENDPOINT_DEPENDENT (it did
 * not). */

/* Destinations a check asks at most: the servers given, and the other addresses they name. */
#define RNDZ_NAT_MAX_DEST 8

typedef struct rndz_nat_report {
    struct sockaddr_storage local;                      /* the local address the check used */
    size_t n_dest;                                      /* destinations asked */
    struct sockaddr_storage dest[RNDZ_NAT_MAX_DEST];    /* each server address asked */
    struct sockaddr_storage observed[RNDZ_NAT_MAX_DEST]; /* what it saw (ss_family 0: no
                                                           answer) */
    uint32_t rtt_ms[RNDZ_NAT_MAX_DEST];
    int mapping;      /* RNDZ_NAT_* above */
    int allocation;   /* RNDZ_NAT_PORT_* */
    int port_step;    /* with RNDZ_NAT_PORT_SEQUENTIAL */
    int filtering;    /* RNDZ_NAT_UNKNOWN, _ENDPOINT_INDEPENDENT, _ENDPOINT_DEPENDENT */
    int hairpin;      /* 1: a datagram to our own public address came back; 0: it did not;
                         -1: not tested (no NAT seen, or no answer) */
    int port_mapping; /* the default gateway answered: 1 NAT-PMP (RFC 6886), 2 PCP (RFC 6887);
                         0 no answer within 250 ms; -1 not tried (no IPv4 default gateway) */
    int behind_nat;   /* 1: the address seen is not ours */
} rndz_nat_report;

/* Find out how the NAT in front of this host treats a UDP port, by asking the servers of `o`
 * (o->id may be NULL; nothing is registered). Pings from one local port go to every server
 * address (those given, and the other addresses each server names in its answer): the same
 * address seen by all = endpoint-independent mapping. With an endpoint-dependent one, three
 * more ports are asked to tell preserving, sequential and random allocation. Filtering is
 * tested when a server has a second address, hairpinning by a datagram to our own public
 * address, and a port-mapping protocol by asking the default gateway. Takes about a second
 * (at most min(o->timeout_ms, 3000) ms waiting for servers). Returns 0 (report filled: what
 * could not be told is UNKNOWN), RNDZ_E_TIMEDOUT when no server answered, or an error. */
RNDZ_API int rndz_nat_check(const rndz_client_options *o, unsigned flags, rndz_nat_report *out);
/* flags: leave out the gateway (port_mapping stays -1), the hairpin test (hairpin -1) */
#define RNDZ_NAT_NO_PORT_MAPPING 1u
#define RNDZ_NAT_NO_HAIRPIN 2u
/* The words of a report's fields: "endpoint-independent", "endpoint-dependent", "unknown";
 * "preserving", "sequential", "random", "unknown". Static storage. */
RNDZ_API const char *rndz_nat_mapping_name(int mapping);
RNDZ_API const char *rndz_nat_allocation_name(int allocation);

#ifdef __cplusplus
}
#endif
#endif /* RNDZ_H */
