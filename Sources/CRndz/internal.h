/* internal.h: declarations shared by the C core's files. Not installed. */
#ifndef RNDZ_INTERNAL_H
#define RNDZ_INTERNAL_H

#include "rndz.h"

#include <errno.h>
#include <stdbool.h>
#include <stdint.h>
#include <netinet/in.h>

#define RNDZ_INTERNAL __attribute__((visibility("hidden")))
#define RNDZ_ARRAY_LEN(a) (sizeof(a) / sizeof((a)[0]))
#define RNDZ_MAX_ID RNDZ_MAX_ID_LEN /* rndz.h */

/* log.c */
RNDZ_INTERNAL void rndz__log(rndz_log_level level, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));
RNDZ_INTERNAL bool rndz__log_enabled(rndz_log_level level);
#define RNDZ_LOG(lvl, ...)                                                                    \
    do {                                                                                      \
        if (rndz__log_enabled(lvl)) rndz__log(lvl, __VA_ARGS__);                             \
    } while (0)

/* time.c: monotonic milliseconds, and a small PRNG for jitter. */
RNDZ_INTERNAL uint64_t rndz__now_ms(void);
/* Wall-clock milliseconds since 1970 (authenticated requests carry it). */
RNDZ_INTERNAL uint64_t rndz__unix_ms(void);
RNDZ_INTERNAL uint32_t rndz__random(void);

/* addr.c */
/* Length of a sockaddr of this family (0 if unknown). */
RNDZ_INTERNAL socklen_t rndz__addr_len(const struct sockaddr *sa);
/* Turn ::ffff:a.b.c.d into AF_INET, in place. */
RNDZ_INTERNAL void rndz__addr_unmap(struct sockaddr_storage *ss);
/* Every address of text ("host:port") of the first answer's family, without duplicates, up to
 * max: how many (>= 1), or an error (as rndz_addr_resolve). */
RNDZ_INTERNAL int rndz__addr_resolve_all(const char *text, int family,
                                         struct sockaddr_storage *out, size_t max);
/* Turn AF_INET into ::ffff:a.b.c.d, in place (for a dual-stack IPv6 socket). */
RNDZ_INTERNAL void rndz__addr_map(struct sockaddr_storage *ss);
/* Same address and port (after unmapping both). */
RNDZ_INTERNAL bool rndz__addr_equal(const struct sockaddr *a, const struct sockaddr *b);
/* The port of an AF_INET or AF_INET6 address, in network order (0 for other families). */
RNDZ_INTERNAL uint16_t rndz__addr_port(const struct sockaddr_storage *a);
/* Set the port (network order) of an AF_INET or AF_INET6 address. */
RNDZ_INTERNAL void rndz__addr_set_port(struct sockaddr_storage *a, uint16_t port);
/* Whether an address is private (RFC 1918, 100.64/10, fc00::/7): a LAN candidate. */
RNDZ_INTERNAL bool rndz__addr_is_private(const struct sockaddr_storage *a);
/* A wildcard address: 0.0.0.0 or [::] (any port). */
RNDZ_INTERNAL bool rndz__addr_is_any(const struct sockaddr_storage *a);

/* sock.c */
typedef struct rndz__sockopts {
    bool reuse;      /* SO_REUSEADDR + SO_REUSEPORT: several sockets share the port */
    bool reuse_addr; /* SO_REUSEADDR only: a server restarts despite TIME_WAIT */
    int v6only;     /* -1 leave, 0 off (dual stack), 1 on */
    rndz_sock_config_fn config;
    void *config_user;
} rndz__sockopts;
/* socket() + options + config callback + bind(). Non-blocking, close-on-exec. Returns the fd
 * or a negative error. */
RNDZ_INTERNAL int rndz__sock_bind(int socktype, const struct sockaddr *local,
                                  const rndz__sockopts *o);
RNDZ_INTERNAL int rndz__sock_set_nonblock(int fd, bool on);
RNDZ_INTERNAL int rndz__sock_local(int fd, struct sockaddr_storage *out, socklen_t *len);
/* rndz's own TCP connections (a client's to its servers, the server's side of them, and
 * peer connections while they connect) retransmit at least this often (TCP_RTO_MAX_MS; the
 * kernel's floor for the cap). Without it a lost SYN or SYN-ACK is sent again after 1, 3, 7,
 * 15 s, a lost request after a timeout that backs off to minutes, and a handshake that
 * needed a retransmission starts with an RTO of 2-8 s (Linux measures the RTT from the first
 * SYN's timestamp, or falls back to 3 s): under 20% loss per link (36% per crossing) that
 * alone failed one TCP connect in eight in the NAT lab. */
#define RNDZ__TCP_RTO_CAP_MS 1000

/* Cap a TCP socket's retransmission timeout (TCP_RTO_MAX_MS); ms 0: the kernel's default.
 * 0, or -ENOPROTOOPT where the kernel has no such option (before Linux 6.15). */
RNDZ_INTERNAL int rndz__sock_tcp_rto_max(int fd, uint32_t ms);
/* The kernel's smoothed RTT of a connected TCP socket in ms, rounded up; 0 if unknown. It
 * comes from TCP timestamps, so unlike the wall time of a connect() it is not inflated by a
 * retransmitted SYN. */
RNDZ_INTERNAL uint32_t rndz__sock_tcp_rtt_ms(int fd);
/* Log (debug) a TCP connection's RTT, retransmission timeout and retransmissions so far, as
 * it is handed to the application: what its first lost segment will cost. */
RNDZ_INTERNAL void rndz__sock_tcp_log(int fd, const char *who);

/* wire.c helpers used by clients and server: fill a message and encode it. */
RNDZ_INTERNAL int rndz__encode(rndz_cmd cmd, const char *id, size_t id_len, const char *peer,
                               size_t peer_len, const char *addr, size_t addr_len, uint8_t *buf,
                               size_t cap);
/* Write the 2-byte big-endian length of a TCP frame whose body (body_len bytes) follows at
 * frame + 2. Returns the frame's length, or RNDZ_E_TOOBIG over RNDZ_MAX_MSG. */
RNDZ_INTERNAL int rndz__frame_seal(uint8_t *frame, size_t body_len);

#endif
