/* server.h: the rendezvous server's state, shared by server.c (lifecycle, workers),
 * server_udp.c and server_tcp.c.
 *
 * Workers: each has its own UDP socket (SO_REUSEPORT on the same address: the kernel spreads
 * clients over them by address hash), its own epoll loop and thread, and its own counters.
 * They share one peer table (peertab.c, locked per shard), so an Isync on one worker finds a
 * peer registered through another. Worker 0 runs on the thread that calls rndz_server_run()
 * and also serves TCP. */
#ifndef RNDZ_SERVER_H
#define RNDZ_SERVER_H

#include "auth.h"
#include "limit.h"
#include "loop.h"
#include "peertab.h"
#include "registry.h"
#include "replay.h"

#include <pthread.h>
#include <sys/socket.h>

#define RNDZ_MAX_WORKERS 64
/* Datagrams taken per recvmmsg / sent per sendmmsg. */
#define RNDZ_BATCH 64

typedef struct rndz__server_counters {
    _Atomic uint64_t tcp_conns, tcp_peers, tcp_malformed;
    /* TCP's share of the guard counters (UDP's are per worker), and refused connections */
    _Atomic uint64_t auth_failed, auth_replayed, sync_limited, fsync_limited, id_refused;
    _Atomic uint64_t tcp_refused;
} rndz__server_counters;

/* One writer (its worker), any reader: increments are plain loads and stores. */
typedef struct rndz__worker_counters {
    _Atomic uint64_t rx, tx, malformed, expired, refused;
    _Atomic uint64_t auth_failed, auth_replayed, sync_limited, fsync_limited, id_refused;
} rndz__worker_counters;

typedef struct rndz__worker {
    struct rndz_server *s;
    unsigned idx;
    rndz__loop *loop; /* worker 0: &s->loop; others: &own_loop */
    rndz__loop own_loop;
    int udp_fd;
    rndz__io udp_io;
    pthread_t thread;
    bool thread_started;
    uint64_t next_sweep;
    rndz__worker_counters c;
    /* the send batch */
    struct mmsghdr out[RNDZ_BATCH];
    struct iovec out_iov[RNDZ_BATCH];
    struct sockaddr_storage out_addr[RNDZ_BATCH];
    uint8_t out_buf[RNDZ_BATCH][RNDZ_MAX_MSG];
    unsigned nout;
    /* the receive batch */
    struct mmsghdr in[RNDZ_BATCH];
    struct iovec in_iov[RNDZ_BATCH];
    struct sockaddr_storage in_addr[RNDZ_BATCH];
    uint8_t in_buf[RNDZ_BATCH][RNDZ_MAX_MSG + 1];
} rndz__worker;

struct rndz_server {
    rndz_server_options o;
    struct sockaddr_storage local;
    socklen_t local_len;
    bool v6; /* the UDP sockets are IPv6 (peer addresses kept in mapped form) */
    rndz__loop loop;
    rndz__peertab peers;
    unsigned nworkers;
    rndz__worker *w[RNDZ_MAX_WORKERS];
    int tcp_fd;
    rndz__io tcp_io;
    void *tcp; /* server_tcp.c's state */
    pthread_t thread;
    bool thread_started;
    atomic_bool running;
    atomic_bool starting; /* rndz_server_start() claimed the handle */
    rndz__server_counters c;
    rndz__auth_key *auth; /* NULL: no secret (v1) */
    rndz__replay replay;  /* with auth: the newest ts accepted per id */
    rndz__limits lim;
};

/* Why server_admit refused a request. */
enum { RNDZ__ADMIT_OK = 0, RNDZ__ADMIT_ID, RNDZ__ADMIT_AUTH, RNDZ__ADMIT_REPLAY };

/* server.c: the checks every request passes before it is served, UDP and TCP alike: id
 * lengths (max_id_len), then with a secret the proof and its freshness (auth.h, replay.h).
 * `buf` is the encoded request, `req` its decoding. */
RNDZ_INTERNAL int rndz__server_admit(rndz_server *s, const uint8_t *buf, size_t len,
                                     const rndz_msg *req);

#define RNDZ_STAT_ADD(s, field, n) atomic_fetch_add_explicit(&(s)->c.field, (n), memory_order_relaxed)
#define RNDZ_STAT_SET(s, field, n) atomic_store_explicit(&(s)->c.field, (n), memory_order_relaxed)
/* A worker's own counter: it is the only writer, so no locked instruction is needed. */
#define RNDZ_WSTAT_ADD(w, field, n)                                                            \
    atomic_store_explicit(&(w)->c.field,                                                       \
                          atomic_load_explicit(&(w)->c.field, memory_order_relaxed) + (n),     \
                          memory_order_relaxed)

/* server_udp.c */
RNDZ_INTERNAL void rndz__server_udp_readable(void *ctx, uint32_t events);
RNDZ_INTERNAL uint64_t rndz__server_udp_tick(rndz__worker *w, uint64_t now);
/* Handle one datagram from `from` at time `now`; replies are queued on the worker's batch. */
RNDZ_INTERNAL void rndz__worker_udp_handle(rndz__worker *w, const uint8_t *buf, size_t len,
                                           const struct sockaddr_storage *from, uint64_t now);
/* Send what is queued. */
RNDZ_INTERNAL void rndz__worker_flush(rndz__worker *w);
/* Handle one datagram on worker 0 and send its replies at once (tests and fuzzing). */
RNDZ_INTERNAL void rndz__server_udp_handle(rndz_server *s, const uint8_t *buf, size_t len,
                                           const struct sockaddr_storage *from, uint64_t now);

/* server_tcp.c */
RNDZ_INTERNAL int rndz__server_tcp_open(rndz_server *s, const rndz__sockopts *so);
RNDZ_INTERNAL uint64_t rndz__server_tcp_tick(rndz_server *s, uint64_t now);
RNDZ_INTERNAL void rndz__server_tcp_close(rndz_server *s);

#endif
