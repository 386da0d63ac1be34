/* server.h: the rendezvous server's state, shared by server.c (lifecycle), server_udp.c and
 * server_tcp.c. */
#ifndef RNDZ_SERVER_H
#define RNDZ_SERVER_H

#include "loop.h"
#include "registry.h"

#include <pthread.h>

typedef struct rndz__server_counters {
    _Atomic uint64_t udp_rx, udp_tx, udp_malformed, udp_expired, udp_peers;
    _Atomic uint64_t tcp_conns, tcp_peers, tcp_malformed;
} rndz__server_counters;

struct rndz_server {
    rndz_server_options o;
    struct sockaddr_storage local;
    socklen_t local_len;
    rndz__loop loop;
    int udp_fd;
    rndz__io udp_io;
    rndz__registry udp_reg;
    int tcp_fd;
    rndz__io tcp_io;
    void *tcp; /* server_tcp.c's state */
    pthread_t thread;
    bool thread_started;
    atomic_bool running;
    atomic_bool starting; /* rndz_server_start() claimed the handle */
    rndz__server_counters c;
};

#define RNDZ_STAT_ADD(s, field, n) atomic_fetch_add_explicit(&(s)->c.field, (n), memory_order_relaxed)
#define RNDZ_STAT_SET(s, field, n) atomic_store_explicit(&(s)->c.field, (n), memory_order_relaxed)

/* server_udp.c */
RNDZ_INTERNAL void rndz__server_udp_readable(void *ctx, uint32_t events);
RNDZ_INTERNAL uint64_t rndz__server_udp_tick(rndz_server *s, uint64_t now);
/* Handle one datagram from `from` at time `now` (exposed for tests and fuzzing). */
RNDZ_INTERNAL void rndz__server_udp_handle(rndz_server *s, const uint8_t *buf, size_t len,
                                           const struct sockaddr_storage *from, uint64_t now);

/* server_tcp.c */
RNDZ_INTERNAL int rndz__server_tcp_open(rndz_server *s, const rndz__sockopts *so);
RNDZ_INTERNAL uint64_t rndz__server_tcp_tick(rndz_server *s, uint64_t now);
RNDZ_INTERNAL void rndz__server_tcp_close(rndz_server *s);

#endif
