/* server.h: the rendezvous server's state, shared by server.c (lifecycle, workers, stats),
 * server_udp.c and server_tcp.c (the transports). The protocol itself is server_proto.c's.
 *
 * Workers: each has its own UDP socket (SO_REUSEPORT on the same address: the kernel spreads
 * clients over them by address hash), its own epoll loop and thread, and its own counters.
 * They share one peer table (peertab.c, locked per shard), so an Isync on one worker finds a
 * peer registered through another. Worker 0 runs on the thread that calls rndz_server_run()
 * and also serves TCP. */
#ifndef RNDZ_SERVER_H
#define RNDZ_SERVER_H

#include "loop.h"
#include "peertab.h"
#include "registry.h"
#include "server_proto.h"

#include <netinet/in.h>
#include <pthread.h>
#include <sys/socket.h>

#define RNDZ_MAX_WORKERS 64
/* Datagrams taken per recvmmsg / sent per sendmmsg. */
#define RNDZ_BATCH 64

/* Statistics (rndz.h, RNDZ_SERVER_STATS), indexed by RNDZ__ST_*: each worker has its own
 * (one writer, any reader: increments are plain loads and stores), TCP's are the server's;
 * rndz_server_stats_get sums them. */
typedef _Atomic uint64_t rndz__stats[RNDZ__NSTATS];

/* A worker's UDP socket on listen address k. */
typedef struct rndz__usock {
    struct rndz__worker *w;
    unsigned k;
    int fd;
    rndz__io io;
} rndz__usock;

/* Room for the one control message the UDP path uses: IP_PKTINFO or IPV6_PKTINFO. */
typedef union rndz__pktinfo_buf {
    struct cmsghdr align;
    uint8_t buf[CMSG_SPACE(sizeof(struct in6_pktinfo)) > CMSG_SPACE(sizeof(struct in_pktinfo))
                    ? CMSG_SPACE(sizeof(struct in6_pktinfo))
                    : CMSG_SPACE(sizeof(struct in_pktinfo))];
} rndz__pktinfo_buf;

/* Where a peer wrote to: the listen socket (index k) and the destination address of its
 * datagram (IP_PKTINFO / IPV6_PKTINFO), so that answers and forwards to that peer leave from
 * the address it wrote to (a server on a wildcard address of a host with several addresses:
 * anything else is dropped by the peer's NAT, or by its connected socket). Interned per
 * server, append-only: peertab.h keeps a 7-bit index with each peer. Origin k < nlocal is
 * socket k with no address known (the kernel picks the source): what a full table, or a
 * destination that is no address of ours to send from, falls back to. */
#define RNDZ_MAX_ORIGINS 128
typedef struct rndz__origin {
    uint8_t k;
    bool has_src;
    unsigned ifindex; /* for a link-local source */
    struct sockaddr_storage src; /* in the family of socket k */
    size_t ctllen;               /* with has_src: the control message that sets it */
    rndz__pktinfo_buf ctl;
} rndz__origin;

typedef struct rndz__worker {
    struct rndz_server *s;
    unsigned idx;
    rndz__loop *loop; /* worker 0: &s->loop; others: &own_loop */
    rndz__loop own_loop;
    rndz__usock usock[RNDZ_MAX_LISTEN];
    /* the origin of the last datagram, by socket and raw destination (IPv4 as ::ffff:a.b.c.d):
     * most datagrams in a row reached the same address */
    struct {
        bool valid;
        uint8_t k, origin;
        uint8_t dst[16];
    } last_origin;
    pthread_t thread;
    bool thread_started;
    uint64_t next_sweep;
    rndz__stats c;
    /* the send batch */
    struct mmsghdr out[RNDZ_BATCH];
    struct iovec out_iov[RNDZ_BATCH];
    struct sockaddr_storage out_addr[RNDZ_BATCH];
    rndz__pktinfo_buf out_ctl[RNDZ_BATCH];
    uint8_t out_k[RNDZ_BATCH]; /* the socket each goes out on */
    uint8_t out_buf[RNDZ_BATCH][RNDZ_MAX_MSG];
    unsigned nout;
    /* the receive batch */
    struct mmsghdr in[RNDZ_BATCH];
    struct iovec in_iov[RNDZ_BATCH];
    struct sockaddr_storage in_addr[RNDZ_BATCH];
    rndz__pktinfo_buf in_ctl[RNDZ_BATCH];
    uint8_t in_buf[RNDZ_BATCH][RNDZ_MAX_MSG + 1];
} rndz__worker;

struct rndz_server {
    rndz_server_options o;
    unsigned nlocal; /* listen addresses, each served by a UDP socket per worker and TCP */
    bool has_v4;     /* one of them is IPv4: the IPv6 ones serve IPv6 only */
    struct sockaddr_storage local[RNDZ_MAX_LISTEN];
    socklen_t local_len[RNDZ_MAX_LISTEN];
    rndz__origin origins[RNDZ_MAX_ORIGINS];
    _Atomic unsigned norigins; /* entries below it are complete and never change */
    pthread_mutex_t origins_mu; /* serializes appends */
    pthread_rwlock_t tcp_reg_lock; /* written while the TCP registry changes (the TCP thread,
                                  * which reads it unlocked), read by a UDP worker that asks
                                  * it (rndz__server_tcp_has): workers never wait on each
                                  * other */
    rndz__loop loop;
    rndz__peertab peers;
    unsigned nworkers;
    rndz__worker *w[RNDZ_MAX_WORKERS];
    void *tcp; /* server_tcp.c's state: its listening sockets, connections, registry */
    pthread_t thread;
    bool thread_started;
    atomic_bool running;
    atomic_bool starting; /* rndz_server_start() claimed the handle */
    rndz__stats c; /* TCP's */
    rndz__proto core; /* limits, auth, replay: server_proto.h */
    /* the relay (server_relay.c), when relay_addr was given */
    void *relay;
    struct sockaddr_storage relay_local;
    socklen_t relay_len;
    rndz__relay_key relay_key;
};

/* The server's (TCP's) statistics, by index or by name. */
#define RNDZ_STAT_IDX_ADD(s, i, n) atomic_fetch_add_explicit(&(s)->c[i], (n), memory_order_relaxed)
#define RNDZ_STAT_ADD(s, name, n) RNDZ_STAT_IDX_ADD(s, RNDZ__ST_##name, n)
#define RNDZ_STAT_SET(s, name, n)                                                              \
    atomic_store_explicit(&(s)->c[RNDZ__ST_##name], (n), memory_order_relaxed)
/* A worker's own statistic: it is the only writer, so no locked instruction is needed. */
#define RNDZ_WSTAT_IDX_ADD(w, i, n)                                                            \
    atomic_store_explicit(&(w)->c[i],                                                          \
                          atomic_load_explicit(&(w)->c[i], memory_order_relaxed) + (n),        \
                          memory_order_relaxed)
#define RNDZ_WSTAT_ADD(w, name, n) RNDZ_WSTAT_IDX_ADD(w, RNDZ__ST_##name, n)

/* server_udp.c */
/* The destination of a received datagram from its IP_PKTINFO / IPV6_PKTINFO control message,
 * as 16 bytes (IPv4 as ::ffff:a.b.c.d), and its interface for a link-local one (else 0).
 * false: none, or cut short. */
RNDZ_INTERNAL bool rndz__pktinfo_dst(const struct msghdr *h, uint8_t raw[16], unsigned *ifindex);
/* Is that an address a reply may leave from (not broadcast, multicast, unspecified)? */
RNDZ_INTERNAL bool rndz__pktinfo_unicast(const struct in6_addr *x);
/* The control message that makes a datagram leave from src; returns its length. */
RNDZ_INTERNAL size_t rndz__pktinfo_ctl(rndz__pktinfo_buf *ctl, const struct sockaddr_storage *src,
                                       unsigned ifindex);
/* Ask for the destination address of every datagram (IP_PKTINFO, IPV6_RECVPKTINFO). */
RNDZ_INTERNAL int rndz__server_udp_pktinfo(int fd, int family);
RNDZ_INTERNAL void rndz__server_udp_readable(void *ctx, uint32_t events);
RNDZ_INTERNAL uint64_t rndz__server_udp_tick(rndz__worker *w, uint64_t now);
/* Handle one datagram from `from` that arrived on socket k, at origin `origin` (see
 * rndz__origin), at time `now`; replies are queued on the worker's batch. */
RNDZ_INTERNAL void rndz__worker_udp_handle(rndz__worker *w, uint8_t origin, const uint8_t *buf,
                                           size_t len, const struct sockaddr_storage *from,
                                           uint64_t now);
/* Send what is queued. */
RNDZ_INTERNAL void rndz__worker_flush(rndz__worker *w);
/* Handle one datagram on worker 0 and send its replies at once (tests and fuzzing). */
RNDZ_INTERNAL void rndz__server_udp_handle(rndz_server *s, const uint8_t *buf, size_t len,
                                           const struct sockaddr_storage *from, uint64_t now);

/* server_relay.c: the relay on s->relay_local, served by worker 0 */
RNDZ_INTERNAL int rndz__server_relay_open(rndz_server *s, const rndz__sockopts *so);
RNDZ_INTERNAL uint64_t rndz__server_relay_tick(rndz_server *s, uint64_t now);
RNDZ_INTERNAL void rndz__server_relay_close(rndz_server *s);

/* server_tcp.c */
/* Listen on address k (s->local[k], updated with the port bound). */
RNDZ_INTERNAL int rndz__server_tcp_open(rndz_server *s, unsigned k, const rndz__sockopts *so);
RNDZ_INTERNAL uint64_t rndz__server_tcp_tick(rndz_server *s, uint64_t now);
RNDZ_INTERNAL void rndz__server_tcp_close(rndz_server *s);
/* Is id registered over TCP now? Any thread. */
RNDZ_INTERNAL bool rndz__server_tcp_has(rndz_server *s, const char *id, size_t len);
/* Tests and fuzzing: take a connected stream socket (a socketpair end will do) as a client
 * connection from `remote`, as accept does (caps included; the server owns fd from then on).
 * Returns the connection, or NULL if refused (the caller keeps fd). */
RNDZ_INTERNAL void *rndz__server_tcp_adopt(rndz_server *s, int fd,
                                           const struct sockaddr_storage *remote, uint64_t now);
/* Bytes received on that connection at `now`, served as the event loop would. false once the
 * connection is closed (it is freed by the next rndz__server_tcp_tick). */
RNDZ_INTERNAL bool rndz__server_tcp_input(void *conn, const uint8_t *buf, size_t len,
                                          uint64_t now);

#endif
