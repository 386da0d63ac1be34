/* loop.h: a minimal epoll event loop. Timers are not objects: the owner's tick function takes
 * the current time, does what is due, and returns when it next wants to run. */
#ifndef RNDZ_LOOP_H
#define RNDZ_LOOP_H

#include "internal.h"

#include <stdatomic.h>
#include <sys/epoll.h>

typedef void (*rndz__io_fn)(void *ctx, uint32_t events);
typedef struct rndz__io {
    int fd;
    rndz__io_fn fn;
    void *ctx;
} rndz__io;

/* Do what is due at `now`; return the next deadline (ms, same clock), or UINT64_MAX. */
typedef uint64_t (*rndz__tick_fn)(void *ctx, uint64_t now);

typedef struct rndz__loop {
    int epfd;
    int wakefd; /* eventfd: stop requests */
    atomic_bool stopping;
} rndz__loop;

RNDZ_INTERNAL int rndz__loop_init(rndz__loop *l);
RNDZ_INTERNAL void rndz__loop_close(rndz__loop *l);
RNDZ_INTERNAL int rndz__loop_add(rndz__loop *l, rndz__io *io, uint32_t events);
RNDZ_INTERNAL int rndz__loop_mod(rndz__loop *l, rndz__io *io, uint32_t events);
RNDZ_INTERNAL void rndz__loop_del(rndz__loop *l, rndz__io *io);
/* Run until rndz__loop_stop(). */
RNDZ_INTERNAL int rndz__loop_run(rndz__loop *l, rndz__tick_fn tick, void *ctx);
/* Async-signal-safe. */
RNDZ_INTERNAL void rndz__loop_stop(rndz__loop *l);

#endif
