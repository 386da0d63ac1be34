/* client.h: what the UDP and TCP clients share: validated options, resolved servers, the
 * local address every socket of one client binds to. */
#ifndef RNDZ_CLIENT_H
#define RNDZ_CLIENT_H

#include "internal.h"

#include <pthread.h>
#include <time.h>

#define RNDZ_MAX_SERVERS 16

typedef struct rndz__client {
    char id[RNDZ_MAX_ID + 1];
    size_t id_len;
    size_t n_servers;
    struct sockaddr_storage servers[RNDZ_MAX_SERVERS]; /* in the local socket's family */
    char server_text[RNDZ_MAX_SERVERS][RNDZ_ADDRSTRLEN];
    struct sockaddr_storage local; /* port filled in once the first socket is bound */
    rndz__sockopts so;
    uint32_t keepalive_ms, round_ms, timeout_ms;
    uint32_t tcp_rto_max_ms; /* for connections handed over; 0: the kernel's default */
    bool signing; /* a credential was given: requests to servers carry an Auth field */
    uint8_t credential[RNDZ_CREDENTIAL_LEN];
} rndz__client;


/* Validate options, resolve every server, pick the local address. */
RNDZ_INTERNAL int rndz__client_init(rndz__client *c, const rndz_client_options *o);
/* Bind one more socket to the client's local address (the first one fixes the port). */
RNDZ_INTERNAL int rndz__client_bind(rndz__client *c, int socktype);
/* A connection leaves rndz for the application: give it the retransmission cap the options
 * ask for (default: the kernel's). */
RNDZ_INTERNAL void rndz__client_handover(const rndz__client *c, int fd);
/* The plain connects on top of the *_info ones: if `fd` is a connection, store the address
 * of `info` in *peer (may be NULL). Returns fd. */
RNDZ_INTERNAL int rndz__client_peer_out(int fd, const rndz_peer_info *info,
                                        struct sockaddr_storage *peer, socklen_t *peer_len);
/* Parse a peer address from the wire into the local socket's family. */
RNDZ_INTERNAL int rndz__client_peer_addr(const rndz__client *c, const char *text, size_t len,
                                         struct sockaddr_storage *out);
/* Which server (index) an address is, or -1. */
RNDZ_INTERNAL int rndz__client_server_index(const rndz__client *c,
                                            const struct sockaddr_storage *from);
/* The listeners' background thread and their callers meet on a mutex and a condition
 * variable on the monotonic clock. */
RNDZ_INTERNAL void rndz__client_sync_init(pthread_mutex_t *mu, pthread_cond_t *cv);
/* Wait on `cv` (with `mu`) until *registered or *closed is set, or timeout_ms pass: 0,
 * RNDZ_E_CLOSED or RNDZ_E_TIMEDOUT (both listeners' wait_registered). */
RNDZ_INTERNAL int rndz__client_wait_registered(pthread_mutex_t *mu, pthread_cond_t *cv,
                                               const bool *registered, const bool *closed,
                                               uint32_t timeout_ms);
/* With `mu` held: wait on `cv` until *queued or *closed, or timeout_ms pass (UINT32_MAX: no
 * limit); returns with `mu` held (both listeners' queues of peers). */
RNDZ_INTERNAL void rndz__client_wait_queue(pthread_mutex_t *mu, pthread_cond_t *cv,
                                           const size_t *queued, const bool *closed,
                                           uint32_t timeout_ms);
/* The monotonic-clock time `ms` from now, for pthread_cond_timedwait. */
RNDZ_INTERNAL void rndz__deadline_in(struct timespec *ts, uint32_t ms);

/* A keepalive interval with +-20% jitter, never above 25 s (conntrack forgets one-way UDP
 * flows after 30 s, and the jitter must not push us past it). */
RNDZ_INTERNAL uint32_t rndz__client_jitter(uint32_t base_ms);
/* Sign an encoded request of n bytes in buf (capacity cap) with the client's credential, if it
 * has one and the request goes to a server (`to` NULL: a socket connected to a server);
 * punches to peers are left unsigned. n < 0 is passed through, so calls chain after an
 * encode. Returns the new length or an error. */
RNDZ_INTERNAL int rndz__client_sign(const rndz__client *c, uint8_t *buf, int n, size_t cap,
                                    const struct sockaddr_storage *to);
/* The same for a TCP frame (2-byte length, then the body), fixing the length. */
RNDZ_INTERNAL int rndz__client_sign_frame(const rndz__client *c, uint8_t *buf, int n,
                                          size_t cap);

#endif
