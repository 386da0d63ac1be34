/* server.c: the rendezvous server handle: create, bind, workers, run, stop, destroy. */
#include "server.h"

#include <netinet/in.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

/* Every default, in one place: fills the fields left 0, for rndz_server_options_init and for
 * options a caller zeroed by hand (rndz.h: 0 = the default). SECURITY.md gives the reasoning
 * of the limits. */
static void server_defaults(rndz_server_options *o) {
    if (!o->udp_expiry_ms) o->udp_expiry_ms = 60000; /* v1: ids not refreshed for 60 s expire */
    if (!o->tcp_idle_ms) o->tcp_idle_ms = 30000; /* v1: a TCP connection silent for 30 s goes */
    if (!o->max_peers) o->max_peers = 1000000;
    /* Clocks of clients and server differ; 30 s covers ordinary drift, and the replay table
     * (newest ts per id) closes the window itself. */
    if (!o->auth_window_ms) o->auth_window_ms = 30000;
    /* A connect costs its connector one Isync per round per server (rounds of 200 ms doubling
     * to 1 s), its listener one Rsync per Fsync: 20/s with a burst of 40 is many concurrent connects from one address,
     * yet caps what a spoofed source can make the server reflect. */
    if (!o->sync_rate) o->sync_rate = 20;
    if (!o->sync_burst) o->sync_burst = 40;
    /* A connect needs about one Fsync per second (one per Isync round); 10/s with a burst of
     * 20 lets several peers connect at once while a flood of Isync from anywhere cannot make
     * the server aim more than that at one peer (which punches back at each). */
    if (!o->fsync_rate) o->fsync_rate = 10;
    if (!o->fsync_burst) o->fsync_burst = 20;
    if (!o->max_tcp_conns) o->max_tcp_conns = 65536;
    /* a household or an office behind one NAT, not one host holding every descriptor */
    if (!o->max_tcp_conns_per_ip) o->max_tcp_conns_per_ip = 256;
    /* what our clients send at most; v1 had no limit but a datagram of 1500 */
    if (!o->max_id_len) o->max_id_len = RNDZ_MAX_ID_LEN;
    /* The relay (SECURITY.md, "Relay"): 1024 sessions of 1 MiB/s each would be 1 GiB/s, so
     * the total (64 MiB/s, about half a gigabit) is what binds on a small host; a minute of
     * silence is past any NAT's UDP timeout, so a flow that quiet is gone anyway. */
    if (!o->relay_max_sessions) o->relay_max_sessions = 1024;
    if (!o->relay_rate) o->relay_rate = 1u << 20;
    if (!o->relay_total_rate) o->relay_total_rate = 64u << 20;
    if (!o->relay_idle_ms) o->relay_idle_ms = 60000;
}

void rndz_server_options_init(rndz_server_options *o) {
    if (!o) return;
    memset(o, 0, sizeof *o);
    o->listen_addr = "0.0.0.0:8888";
    o->enable_udp = 1;
    o->enable_tcp = 1;
    o->workers = 0; /* one per core */
    server_defaults(o);
}

static void worker_close_udp(rndz__worker *w) {
    for (unsigned k = 0; k < RNDZ_MAX_LISTEN; k++) {
        rndz__usock *u = &w->usock[k];
        if (u->fd < 0) continue;
        rndz__loop_del(w->loop, &u->io);
        close(u->fd);
        u->fd = -1;
    }
}

static void worker_free(rndz__worker *w) {
    if (!w) return;
    worker_close_udp(w);
    if (w->loop == &w->own_loop) rndz__loop_close(&w->own_loop);
    free(w);
}

static void close_sockets(rndz_server *s) {
    for (unsigned i = 0; i < s->nworkers; i++)
        if (s->w[i]) worker_close_udp(s->w[i]);
    rndz__server_tcp_close(s);
    rndz__server_relay_close(s);
}

/* Bind listen address k: UDP for every worker (which fixes the port when it is 0; every
 * worker's socket shares it), then TCP on the same address and port. */
static int bind_addr(rndz_server *s, unsigned k, const rndz__sockopts *base) {
    int rc;
    struct sockaddr_storage *a = &s->local[k];
    rndz__sockopts so = *base;
    /* an IPv6 address next to IPv4 ones serves IPv6 only: a dual-stack [::] would take the
     * IPv4 port too */
    so.v6only = a->ss_family == AF_INET6 ? (s->o.ipv6_only || s->has_v4 ? 1 : 0) : -1;
    if (s->o.enable_udp && s->nworkers > 1) {
        /* SO_REUSEPORT would let the workers join sockets another server already holds on
         * this port: claim the port with a plain socket first, so that fails loudly. */
        rndz__sockopts plain = so;
        plain.reuse = false;
        plain.config = NULL;
        int probe = rndz__sock_bind(SOCK_DGRAM, (struct sockaddr *)a, &plain);
        if (probe < 0) return probe;
        socklen_t bl = sizeof *a;
        rc = getsockname(probe, (struct sockaddr *)a, &bl) < 0 ? -errno : 0;
        close(probe);
        if (rc) return rc;
    }
    if (s->o.enable_udp) {
        for (unsigned i = 0; i < s->nworkers; i++) {
            rndz__usock *u = &s->w[i]->usock[k];
            if ((rc = rndz__sock_bind(SOCK_DGRAM, (struct sockaddr *)a, &so)) < 0) return rc;
            *u = (rndz__usock){s->w[i], k, rc, {rc, rndz__server_udp_readable, u}};
            if ((rc = rndz__server_udp_pktinfo(u->fd, a->ss_family))) return rc;
            if ((rc = rndz__loop_add(s->w[i]->loop, &u->io, EPOLLIN))) return rc;
            socklen_t bl = sizeof *a;
            if (getsockname(u->fd, (struct sockaddr *)a, &bl) < 0) return -errno;
            s->local_len[k] = bl;
        }
    }
    if (s->o.enable_tcp) {
        if ((rc = rndz__server_tcp_open(s, k, &so))) return rc;
        s->local_len[k] = rndz__addr_len((struct sockaddr *)a);
    }
    return 0;
}

/* Bind every listen address; those given with port 0 share the first one's free port. On
 * failure *failed is the address that failed. */
static int bind_all(rndz_server *s, const rndz__sockopts *so, const bool *any_port,
                    unsigned *failed) {
    uint16_t shared = 0;
    for (unsigned k = 0; k < s->nlocal; k++) {
        if (any_port[k] && shared) rndz__addr_set_port(&s->local[k], shared);
        int rc = bind_addr(s, k, so);
        if (rc) {
            *failed = k;
            return rc;
        }
        if (any_port[k] && !shared) shared = rndz__addr_port(&s->local[k]);
    }
    return 0;
}

static uint64_t worker_tick(void *ctx, uint64_t now) {
    rndz__worker *w = ctx;
    uint64_t a = w->s->o.enable_udp ? rndz__server_udp_tick(w, now) : UINT64_MAX;
    uint64_t b = w->idx == 0 && w->s->tcp ? rndz__server_tcp_tick(w->s, now) : UINT64_MAX;
    uint64_t c = w->idx == 0 ? rndz__server_relay_tick(w->s, now) : UINT64_MAX;
    if (c < b) b = c;
    return a < b ? a : b;
}

int rndz_server_create(const rndz_server_options *opts, rndz_server **out) {
    if (!out) return -EINVAL;
    *out = NULL;
    rndz_server_options defaults;
    if (!opts) {
        rndz_server_options_init(&defaults);
        opts = &defaults;
    }
    rndz_server *s = calloc(1, sizeof *s);
    if (!s) return -ENOMEM;
    s->o = *opts;
    s->o.listen_addr = NULL; /* not kept: the caller's strings may go away */
    s->o.listen_addrs = NULL;
    s->o.n_listen_addrs = 0;
    s->o.relay_addr = NULL;
    server_defaults(&s->o);
    s->o.secret = NULL; /* not kept: only its keyed HMAC state is */
    s->o.secret_len = 0;
    s->nworkers = s->o.workers;
    if (!s->nworkers) {
        long n = sysconf(_SC_NPROCESSORS_ONLN);
        s->nworkers = n > 0 ? (unsigned)n : 1;
    }
    if (s->nworkers > RNDZ_MAX_WORKERS) s->nworkers = RNDZ_MAX_WORKERS;
    if (!s->o.enable_udp) s->nworkers = 1;
    s->loop.epfd = s->loop.wakefd = -1;
    pthread_mutex_init(&s->origins_mu, NULL);
    pthread_rwlock_init(&s->tcp_reg_lock, NULL);
    int rc = 0;
    if (opts->n_listen_addrs > RNDZ_MAX_LISTEN || (opts->n_listen_addrs && !opts->listen_addrs)) {
        rc = -EINVAL;
        goto fail;
    }
    s->nlocal = opts->n_listen_addrs ? (unsigned)opts->n_listen_addrs : 1;
    for (unsigned k = 0; k < s->nlocal && !rc; k++) {
        const char *text = opts->n_listen_addrs ? opts->listen_addrs[k]
                           : opts->listen_addr ? opts->listen_addr : "0.0.0.0:8888";
        rc = text ? rndz_addr_parse(text, &s->local[k], &s->local_len[k]) : RNDZ_E_BADADDR;
    }
    if (rc) goto fail;
    /* Origin k: socket k, no source address known (the kernel picks it). */
    for (unsigned k = 0; k < s->nlocal; k++) {
        s->origins[k] = (rndz__origin){.k = (uint8_t)k};
        s->has_v4 |= s->local[k].ss_family == AF_INET;
    }
    atomic_init(&s->norigins, s->nlocal);
    if ((rc = rndz__pt_init(&s->peers, s->o.max_peers, rndz__now_ms()))) goto fail;
    if ((rc = rndz__proto_init(&s->core, &s->o, opts->secret, opts->secret_len))) goto fail;
    if ((rc = rndz__loop_init(&s->loop))) goto fail;
    for (unsigned i = 0; i < s->nworkers; i++) {
        rndz__worker *w = calloc(1, sizeof *w);
        if (!w) {
            rc = -ENOMEM;
            goto fail;
        }
        s->w[i] = w;
        w->s = s;
        w->idx = i;
        for (unsigned k = 0; k < RNDZ_MAX_LISTEN; k++) w->usock[k].fd = -1;
        w->loop = &s->loop;
        if (i > 0) {
            w->own_loop.epfd = w->own_loop.wakefd = -1;
            if ((rc = rndz__loop_init(&w->own_loop))) goto fail;
            w->loop = &w->own_loop;
        }
    }
    if (!opts->enable_udp && !opts->enable_tcp) {
        rc = -EINVAL;
        goto fail;
    }
    /* Several workers share the UDP port through SO_REUSEPORT; a single worker does not set
     * it, so a second server on the same port fails instead of silently sharing it. */
    rndz__sockopts so = {.reuse = s->nworkers > 1,
                         .config = opts->sock_config,
                         .config_user = opts->sock_config_user};
    /* With port 0, UDP picks a free port and TCP (and the other addresses with port 0) must
     * get the same one; if one finds it taken, try again with another. */
    bool any_port[RNDZ_MAX_LISTEN];
    struct sockaddr_storage want[RNDZ_MAX_LISTEN];
    for (unsigned k = 0; k < s->nlocal; k++) {
        any_port[k] = rndz__addr_port(&s->local[k]) == 0;
        want[k] = s->local[k];
    }
    if (opts->relay_addr) {
        rc = rndz_addr_parse(opts->relay_addr, &s->relay_local, &s->relay_len);
        if (rc) goto fail;
    }
    for (int attempt = 0;; attempt++) {
        unsigned failed = 0;
        if ((rc = bind_all(s, &so, any_port, &failed))) {
            /* only a port we picked is worth another try */
            if (rc == -EADDRINUSE && any_port[failed] && attempt < 16) {
                close_sockets(s);
                memcpy(s->local, want, sizeof want);
                continue;
            }
            goto fail;
        }
        break;
    }
    if (opts->relay_addr && (rc = rndz__server_relay_open(s, &so))) goto fail;
    /* what NAT checks are told: the specific addresses (a wildcard names none) */
    for (unsigned k = 0; k < s->nlocal && s->core.nalt < RNDZ_MAX_ALT; k++)
        if (!rndz__addr_is_any(&s->local[k]) &&
            rndz_addr_format((struct sockaddr *)&s->local[k], s->core.alt[s->core.nalt],
                             sizeof s->core.alt[0]) > 0)
            s->core.nalt++;
    *out = s;
    return 0;
fail:
    rndz_server_destroy(s);
    return rc;
}

int rndz_server_relay_addr(rndz_server *s, struct sockaddr_storage *out, socklen_t *len) {
    if (!s || !out) return -EINVAL;
    if (!s->relay) return -ENOENT;
    *out = s->relay_local;
    if (len) *len = s->relay_len;
    return 0;
}

int rndz_server_local_addr(rndz_server *s, struct sockaddr_storage *out, socklen_t *len) {
    if (!s || !out) return -EINVAL;
    *out = s->local[0];
    if (len) *len = s->local_len[0];
    return 0;
}

size_t rndz_server_local_addrs(rndz_server *s, struct sockaddr_storage *out, size_t max) {
    if (!s) return 0;
    for (unsigned k = 0; k < s->nlocal && k < max && out; k++) out[k] = s->local[k];
    return s->nlocal;
}

static void *worker_thread(void *arg) {
    rndz__worker *w = arg;
    int rc = rndz__loop_run(w->loop, worker_tick, w);
    if (rc) RNDZ_LOG(RNDZ_LOG_ERROR, "server worker %u failed: %s", w->idx, rndz_strerror(rc));
    return NULL;
}

int rndz_server_run(rndz_server *s) {
    if (!s) return -EINVAL;
    bool expected = false;
    if (!atomic_compare_exchange_strong(&s->running, &expected, true)) return -EBUSY;
    char text[RNDZ_MAX_LISTEN * (RNDZ_ADDRSTRLEN + 2)] = "";
    for (unsigned k = 0, at = 0; k < s->nlocal; k++) {
        if (k) at += (unsigned)snprintf(text + at, sizeof text - at, ", ");
        int n = rndz_addr_format((struct sockaddr *)&s->local[k], text + at, sizeof text - at);
        if (n > 0) at += (unsigned)n;
    }
    RNDZ_LOG(RNDZ_LOG_INFO, "server listening on %s (%u worker%s)", text, s->nworkers,
             s->nworkers == 1 ? "" : "s");
    int rc = 0;
    for (unsigned i = 1; i < s->nworkers && !rc; i++) {
        rc = -pthread_create(&s->w[i]->thread, NULL, worker_thread, s->w[i]);
        if (!rc) s->w[i]->thread_started = true;
    }
    if (!rc) rc = rndz__loop_run(&s->loop, worker_tick, s->w[0]);
    for (unsigned i = 1; i < s->nworkers; i++) {
        if (!s->w[i]->thread_started) continue;
        rndz__loop_stop(s->w[i]->loop);
        pthread_join(s->w[i]->thread, NULL);
        s->w[i]->thread_started = false;
    }
    RNDZ_LOG(RNDZ_LOG_INFO, "server stopped");
    return rc;
}

static void *server_thread(void *arg) {
    rndz_server *s = arg;
    int rc = rndz_server_run(s);
    if (rc) RNDZ_LOG(RNDZ_LOG_ERROR, "server loop failed: %s", rndz_strerror(rc));
    return NULL;
}

int rndz_server_start(rndz_server *s) {
    if (!s) return -EINVAL;
    bool expected = false;
    if (!atomic_compare_exchange_strong(&s->starting, &expected, true) ||
        atomic_load(&s->running))
        return -EBUSY;
    int rc = pthread_create(&s->thread, NULL, server_thread, s);
    if (rc) {
        atomic_store(&s->starting, false);
        return -rc;
    }
    s->thread_started = true;
    return 0;
}

int rndz_server_stop(rndz_server *s) {
    if (!s) return -EINVAL;
    for (unsigned i = 0; i < s->nworkers; i++)
        if (s->w[i] && s->w[i]->loop->wakefd >= 0) rndz__loop_stop(s->w[i]->loop);
    return 0;
}

/* Where each statistic lives in rndz_server_stats. */
static const size_t stat_offset[RNDZ__NSTATS] = {
#define STAT_OFFSET(name, kind, help) offsetof(rndz_server_stats, name),
    RNDZ_SERVER_STATS(STAT_OFFSET)
#undef STAT_OFFSET
};

static void add_stats(const rndz__stats c, rndz_server_stats *out) {
    for (size_t i = 0; i < RNDZ__NSTATS; i++)
        *(uint64_t *)((char *)out + stat_offset[i]) +=
            atomic_load_explicit(&c[i], memory_order_relaxed);
}

int rndz_server_stats_get(rndz_server *s, rndz_server_stats *out) {
    if (!s || !out) return -EINVAL;
    memset(out, 0, sizeof *out);
    for (unsigned i = 0; i < s->nworkers; i++) add_stats(s->w[i]->c, out);
    add_stats(s->c, out);
    out->udp_peers = rndz__pt_count(&s->peers);
    out->workers = s->nworkers;
    return 0;
}

int rndz_server_metrics(rndz_server *s, char *buf, size_t cap) {
    rndz_server_stats st;
    int rc = rndz_server_stats_get(s, &st);
    if (rc) return rc;
    if (!buf && cap) return -EINVAL;
    size_t n = 0;
#define RNDZ__METRIC(name, kind, help)                                                       \
    do {                                                                                      \
        bool counter = strcmp(#kind, "COUNTER") == 0;                                         \
        const char *sfx = counter ? "_total" : "";                                            \
        int w = snprintf(n < cap ? buf + n : NULL, n < cap ? cap - n : 0,                     \
                         "# HELP rndz_%s%s %s\n# TYPE rndz_%s%s %s\nrndz_%s%s %llu\n", #name,   \
                         sfx, help, #name, sfx, counter ? "counter" : "gauge", #name, sfx,    \
                         (unsigned long long)st.name);                                        \
        if (w < 0) return -EINVAL;                                                            \
        n += (size_t)w;                                                                       \
    } while (0);
    RNDZ_SERVER_STATS(RNDZ__METRIC)
#undef RNDZ__METRIC
    return n > INT32_MAX ? -E2BIG : (int)n;
}

int rndz_server_worker_stats(rndz_server *s, unsigned worker, rndz_server_stats *out) {
    if (!s || !out || worker >= s->nworkers) return -EINVAL;
    memset(out, 0, sizeof *out);
    add_stats(s->w[worker]->c, out);
    out->workers = s->nworkers;
    return 0;
}

void rndz_server_destroy(rndz_server *s) {
    if (!s) return;
    rndz_server_stop(s);
    if (s->thread_started) pthread_join(s->thread, NULL);
    close_sockets(s);
    for (unsigned i = 0; i < s->nworkers; i++) worker_free(s->w[i]);
    rndz__loop_close(&s->loop);
    rndz__pt_free(&s->peers);
    rndz__proto_free(&s->core);
    pthread_mutex_destroy(&s->origins_mu);
    pthread_rwlock_destroy(&s->tcp_reg_lock);
    free(s);
}
