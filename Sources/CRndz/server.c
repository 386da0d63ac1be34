/* server.c: the rendezvous server handle: create, bind, run, stop, destroy. */
#include "server.h"

#include <netinet/in.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

void rndz_server_options_init(rndz_server_options *o) {
    if (!o) return;
    memset(o, 0, sizeof *o);
    o->listen_addr = "0.0.0.0:8888";
    o->enable_udp = 1;
    o->enable_tcp = 1;
    o->udp_expiry_ms = 60000; /* v1: ids not refreshed for 60 s expire */
    o->tcp_idle_ms = 30000;   /* v1: a TCP connection silent for 30 s is dropped */
}

static void close_sockets(rndz_server *s) {
    if (s->udp_fd >= 0) {
        rndz__loop_del(&s->loop, &s->udp_io);
        close(s->udp_fd);
    }
    if (s->tcp) {
        if (s->tcp_fd >= 0) rndz__loop_del(&s->loop, &s->tcp_io);
        rndz__server_tcp_close(s);
    }
    if (s->tcp_fd >= 0) close(s->tcp_fd);
    s->udp_fd = s->tcp_fd = -1;
}

/* Bind UDP (which fixes the port when it is 0), then TCP on the same address and port. */
static int bind_all(rndz_server *s, const rndz__sockopts *so) {
    int rc;
    if (s->o.enable_udp) {
        if ((rc = rndz__sock_bind(SOCK_DGRAM, (struct sockaddr *)&s->local, so)) < 0) return rc;
        s->udp_fd = rc;
        s->udp_io = (rndz__io){s->udp_fd, rndz__server_udp_readable, s};
        if ((rc = rndz__loop_add(&s->loop, &s->udp_io, EPOLLIN))) return rc;
        socklen_t bl = sizeof s->local;
        if (getsockname(s->udp_fd, (struct sockaddr *)&s->local, &bl) < 0) return -errno;
        s->local_len = bl;
    }
    if (s->o.enable_tcp) {
        if ((rc = rndz__server_tcp_open(s, so))) return rc;
        socklen_t bl = sizeof s->local;
        if (getsockname(s->tcp_fd, (struct sockaddr *)&s->local, &bl) < 0) return -errno;
        s->local_len = bl;
    }
    return 0;
}

static uint64_t server_tick(void *ctx, uint64_t now) {
    rndz_server *s = ctx;
    uint64_t a = s->udp_fd >= 0 ? rndz__server_udp_tick(s, now) : UINT64_MAX;
    uint64_t b = s->tcp ? rndz__server_tcp_tick(s, now) : UINT64_MAX;
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
    s->o.listen_addr = NULL; /* not kept: the caller's string may go away */
    if (!s->o.udp_expiry_ms) s->o.udp_expiry_ms = 60000;
    if (!s->o.tcp_idle_ms) s->o.tcp_idle_ms = 30000;
    s->udp_fd = s->tcp_fd = -1;
    s->loop.epfd = s->loop.wakefd = -1;
    int rc = rndz_addr_parse(opts->listen_addr ? opts->listen_addr : "0.0.0.0:8888", &s->local,
                             &s->local_len);
    if (rc) goto fail;
    if ((rc = rndz__reg_init(&s->udp_reg))) goto fail;
    if ((rc = rndz__loop_init(&s->loop))) goto fail;
    rndz__sockopts so = {.reuse = false,
                         .v6only = s->local.ss_family == AF_INET6 ? (opts->ipv6_only ? 1 : 0) : -1,
                         .config = opts->sock_config,
                         .config_user = opts->sock_config_user};
    if (!opts->enable_udp && !opts->enable_tcp) {
        rc = -EINVAL;
        goto fail;
    }
    /* With port 0, UDP picks a free port and TCP must get the same one; if TCP finds it
     * taken, try again with another. */
    bool any_port = ((struct sockaddr_in *)&s->local)->sin_port == 0; /* same offset in v6 */
    struct sockaddr_storage want = s->local;
    for (int attempt = 0;; attempt++) {
        if ((rc = bind_all(s, &so))) {
            if (rc == -EADDRINUSE && any_port && attempt < 16) {
                close_sockets(s);
                s->local = want;
                continue;
            }
            goto fail;
        }
        break;
    }
    RNDZ_LOG(RNDZ_LOG_INFO, "server bound");
    *out = s;
    return 0;
fail:
    rndz_server_destroy(s);
    return rc;
}

int rndz_server_local_addr(rndz_server *s, struct sockaddr_storage *out, socklen_t *len) {
    if (!s || !out) return -EINVAL;
    *out = s->local;
    if (len) *len = s->local_len;
    return 0;
}

int rndz_server_run(rndz_server *s) {
    if (!s) return -EINVAL;
    bool expected = false;
    if (!atomic_compare_exchange_strong(&s->running, &expected, true)) return -EBUSY;
    char text[RNDZ_ADDRSTRLEN];
    if (rndz_addr_format((struct sockaddr *)&s->local, text, sizeof text) > 0)
        RNDZ_LOG(RNDZ_LOG_INFO, "server listening on %s", text);
    int rc = rndz__loop_run(&s->loop, server_tick, s);
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
    rndz__loop_stop(&s->loop);
    return 0;
}

int rndz_server_stats_get(rndz_server *s, rndz_server_stats *out) {
    if (!s || !out) return -EINVAL;
    out->udp_rx = atomic_load(&s->c.udp_rx);
    out->udp_tx = atomic_load(&s->c.udp_tx);
    out->udp_malformed = atomic_load(&s->c.udp_malformed);
    out->udp_expired = atomic_load(&s->c.udp_expired);
    out->udp_peers = atomic_load(&s->c.udp_peers);
    out->tcp_conns = atomic_load(&s->c.tcp_conns);
    out->tcp_peers = atomic_load(&s->c.tcp_peers);
    out->tcp_malformed = atomic_load(&s->c.tcp_malformed);
    return 0;
}

void rndz_server_destroy(rndz_server *s) {
    if (!s) return;
    if (s->loop.wakefd >= 0) rndz__loop_stop(&s->loop);
    if (s->thread_started) pthread_join(s->thread, NULL);
    close_sockets(s);
    rndz__loop_close(&s->loop);
    rndz__reg_free(&s->udp_reg);
    free(s);
}
