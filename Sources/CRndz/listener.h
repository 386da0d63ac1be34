/* listener.h: the skeleton the UDP and TCP listeners share (udp_listen.c, tcp_listen.c).
 *
 * - A background thread running the listener's event loop (loop.h) with its tick.
 * - The state callers wait on: registered (a server answered) and closed.
 * - The queue of peers handed to the application (UDP: rndz_peer_info of verified or v1
 *   peers; TCP: the connection fd with its peer), with a readiness descriptor: an eventfd that
 *   is readable, level-triggered, while something is queued or the listener is closed, so an
 *   event loop (the Swift overlay's reactor) can wait on it instead of a thread per call.
 *
 * One mutex guards the flags and the queue; the loop's own state is the thread's alone. */
#ifndef RNDZ_LISTENER_H
#define RNDZ_LISTENER_H

#include "loop.h"

#include <pthread.h>

/* One queued peer. `fd`: the TCP connection (owned by the queue until taken), -1 for UDP. */
typedef struct rndz__lsn_item {
    int fd;
    rndz_peer_info info;
} rndz__lsn_item;

typedef struct rndz__lsn {
    rndz__loop loop;
    rndz__tick_fn tick; /* the listener's, with its context */
    void *tick_ctx;
    pthread_t thread;
    bool thread_started;
    pthread_mutex_t mu;
    pthread_cond_t cv; /* on the monotonic clock */
    bool registered, closed;
    bool drop_oldest; /* a full queue forgets its oldest entry (UDP) or refuses the new one */
    bool signalled;   /* ready_fd holds a count */
    int ready_fd;
    rndz__lsn_item *q;
    size_t cap, qhead, qlen;
} rndz__lsn;

/* Set up everything but the thread. On failure the skeleton can still be given to
 * rndz__lsn_free. */
RNDZ_INTERNAL int rndz__lsn_init(rndz__lsn *b, size_t cap, bool drop_oldest);
/* Start the background thread: rndz__loop_run(&b->loop, tick, ctx) until closed. */
RNDZ_INTERNAL int rndz__lsn_start(rndz__lsn *b, rndz__tick_fn tick, void *ctx);
/* A server answered. Returns whether this is the first answer of the listener's life. */
RNDZ_INTERNAL bool rndz__lsn_set_registered(rndz__lsn *b);
/* Queue a peer for the application. false: refused (closed, or full without drop_oldest);
 * the caller still owns item->fd then. */
RNDZ_INTERNAL bool rndz__lsn_push(rndz__lsn *b, const rndz__lsn_item *item);
/* Take the oldest queued peer, waiting up to timeout_ms (UINT32_MAX: no limit). 0,
 * RNDZ_E_TIMEDOUT, or RNDZ_E_CLOSED (closed wins over anything still queued). */
RNDZ_INTERNAL int rndz__lsn_pop(rndz__lsn *b, uint32_t timeout_ms, rndz__lsn_item *out);
/* Wait until registered or closed: 0, RNDZ_E_TIMEDOUT or RNDZ_E_CLOSED. */
RNDZ_INTERNAL int rndz__lsn_wait_registered(rndz__lsn *b, uint32_t timeout_ms);
/* Mark closed (waking every waiter and the readiness fd); the first close also stops the loop
 * and joins the thread. Returns true for the first close (later ones return at once, also
 * while the first is still joining). Not from the listener's own thread. */
RNDZ_INTERNAL bool rndz__lsn_close(rndz__lsn *b);
/* Close queued connections, the readiness fd and the loop; free the queue. */
RNDZ_INTERNAL void rndz__lsn_free(rndz__lsn *b);

/* The monotonic-clock time `ms` from now, for pthread_cond_timedwait. */
RNDZ_INTERNAL void rndz__deadline_in(struct timespec *ts, uint32_t ms);

#endif
