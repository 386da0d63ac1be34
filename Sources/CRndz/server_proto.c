/* server_proto.c: the rendezvous logic, once for UDP and TCP (server_proto.h). */
#include "server_proto.h"

#include <stdlib.h>
#include <string.h>

int rndz__proto_init(rndz__proto *p, const rndz_server_options *o, const uint8_t *secret,
                     size_t secret_len) {
    memset(p, 0, sizeof *p);
    p->max_id_len = o->max_id_len;
    int rc = rndz__limits_init(&p->lim, o);
    if (rc) return rc;
    if (!secret && !secret_len) return 0;
    if (!secret || secret_len < 16) return -EINVAL;
    if (!(p->auth = calloc(1, sizeof *p->auth))) return -ENOMEM;
    rndz__auth_key_init(p->auth, secret, secret_len, o->auth_window_ms, rndz__unix_ms());
    return rndz__replay_init(&p->replay, o->max_peers + o->max_tcp_conns);
}

void rndz__proto_free(rndz__proto *p) {
    rndz__limits_free(&p->lim);
    if (p->auth) {
        rndz__wipe(p->auth, sizeof *p->auth);
        free(p->auth);
        rndz__replay_free(&p->replay);
    }
    p->auth = NULL;
}

/* The checks every request passes before it is served. 0, or the statistic that counts it. */
static int admit(rndz__proto *p, const uint8_t *buf, size_t len, const rndz_msg *req,
                 const char **why) {
    if (req->id_len > p->max_id_len || req->peer_id_len > p->max_id_len) {
        *why = "id too long";
        return RNDZ__ST_id_refused;
    }
    if (!p->auth) return 0;
    uint64_t ts;
    int rc = rndz__auth_verify(p->auth, buf, len, req->id, req->id_len, rndz__unix_ms(), &ts);
    if (rc) {
        *why = rc == RNDZ__AUTH_MISSING ? "request without a proof"
               : rc == RNDZ__AUTH_STALE ? "stale proof"
               : rc == RNDZ__AUTH_BADMAC ? "wrong proof" : "malformed proof";
        return RNDZ__ST_auth_failed;
    }
    /* Only a verified request moves the id's newest ts: forgeries cannot push it ahead. */
    if (!rndz__replay_accept(&p->replay, req->id, req->id_len, ts)) {
        *why = "replayed request";
        return RNDZ__ST_auth_replayed;
    }
    return 0;
}

static void drop(rndz__action *a, int stat, bool close, const char *why) {
    a->stat = stat;
    a->close = close;
    a->why = why;
}

/* Fsync or Redirect to the holder of the request's target, carrying the source's address and
 * the request's extension fields: Isync and Rsync alike. false if the target is unknown. */
static bool forward(rndz__proto *p, const rndz__dir *dir, const uint8_t *buf, size_t len,
                    const rndz_msg *req, const rndz__src *src, uint64_t now, rndz_cmd cmd,
                    rndz__action *a) {
    if (!dir->get(dir->ctx, req->peer_id, req->peer_id_len, cmd == RNDZ_RSP_FSYNC, &a->dest))
        return false;
    if (!rndz__limit_fsync(&p->lim, req->peer_id, req->peer_id_len, now)) {
        drop(a, RNDZ__ST_fsync_limited, false, "target over its rate");
        return true;
    }
    int n = rndz_addr_format((const struct sockaddr *)src->addr, a->text, sizeof a->text);
    if (n < 0) return true;
    if (cmd == RNDZ_RSP_FSYNC && dir->put(dir->ctx, req->id, req->id_len, now) < 0)
        a->stat2 = RNDZ__ST_udp_refused;
    a->msg = (rndz_msg){cmd, src->stream ? NULL : req->peer_id, src->stream ? 0 : req->peer_id_len,
                        req->id, req->id_len, a->text, (size_t)n};
    if (rndz__ext_decode(buf, len, &a->ext)) memset(&a->ext, 0, sizeof a->ext);
    /* The relay's fields are the server's to give, never a peer's to pass on; the NAT check's
     * are a Ping's and a Pong's only. */
    a->ext.relay_addr[0] = 0;
    a->ext.has_token = false;
    a->ext.query = 0;
    a->ext.observed[0] = 0;
    a->ext.nalt = 0;
    a->ext.elsewhere = 0;
    a->ext.taken = 0;
    if (a->ext.relay && !p->relay_key) a->ext.relay = 0;
    /* A Redirect to a connector that probes tells it what we saw of it and where else we
     * listen: with a second address it learns how its NAT maps (nat.h) */
    if (cmd == RNDZ_RSP_REDIRECT && a->ext.has_nonce && !src->stream &&
        rndz_addr_format((const struct sockaddr *)&a->dest.addr, a->ext.observed,
                         sizeof a->ext.observed) > 0) {
        a->ext.nalt = p->nalt;
        memcpy(a->ext.alt, p->alt, sizeof a->ext.alt);
    }
    if (a->ext.relay && a->ext.has_nonce) {
        int role = cmd == RNDZ_RSP_FSYNC ? RNDZ_RELAY_ROLE_LISTENER : RNDZ_RELAY_ROLE_CONNECTOR;
        rndz__relay_token(p->relay_key, a->ext.nonce, role, now, a->ext.token);
        a->ext.has_token = true;
        memcpy(a->ext.relay_addr, p->relay_text, sizeof a->ext.relay_addr);
    }
    a->respond = true;
    a->to_source = false;
    return true;
}

void rndz__proto_serve(rndz__proto *p, const rndz__dir *dir, const uint8_t *buf, size_t len,
                       const rndz__src *src, uint64_t now, rndz__action *a) {
    a->stat = a->stat2 = -1;
    a->close = a->respond = a->to_source = false;
    a->why = NULL;
    a->ext.ncands = 0;
    a->ext.has_nonce = false;
    a->ext.rtt_ms = 0;
    a->ext.relay = 0;
    a->ext.relay_addr[0] = 0;
    a->ext.has_token = false;
    a->ext.query = 0;
    a->ext.observed[0] = 0;
    a->ext.nalt = 0;
    a->ext.nat = 0;
    a->ext.mapped[0] = 0;
    a->ext.pad = 0;
    a->ext.elsewhere = 0;
    a->ext.taken = 0;
    a->from_other = false;
    int malformed = src->stream ? RNDZ__ST_tcp_malformed : RNDZ__ST_udp_malformed;
    rndz_msg req;
    int rc = rndz_msg_decode(buf, len, 0, &req);
    if (rc) {
        drop(a, malformed, true, rndz_strerror(rc));
        return;
    }
    const char *why = NULL;
    int refused = admit(p, buf, len, &req, &why);
    if (refused) {
        drop(a, refused, true, why);
        return;
    }
    switch (req.cmd) {
    case RNDZ_REQ_PING: {
        /* A NAT check's Ping asks for what the server saw, and maybe not to register. */
        rndz__ext q;
        if (rndz__ext_decode(buf, len, &q)) q.query = 0;
        int put = q.query & RNDZ__Q_NOREG ? 0 : dir->put(dir->ctx, req.id, req.id_len, now);
        if (put < 0) {
            drop(a, RNDZ__ST_udp_refused, false, "table full"); /* no Pong: the client retries */
            return;
        }
        a->msg = (rndz_msg){.cmd = RNDZ_RSP_PONG, .id = src->stream ? NULL : req.id,
                            .id_len = src->stream ? 0 : req.id_len};
        a->respond = a->to_source = true;
        /* A listener that asks learns that it took the id over (it warns: two listeners
         * with one id take it from each other). The question is as large as the answer; set
         * first, so a NAT check's addresses below are trimmed to leave room for it. */
        a->ext.taken = put == 1 && (q.query & RNDZ__Q_TAKEN);
        if (q.query & RNDZ__Q_OBSERVED) {
            int n = rndz_addr_format((const struct sockaddr *)src->addr, a->ext.observed,
                                     sizeof a->ext.observed);
            if (n < 0) a->ext.observed[0] = 0;
            a->ext.nalt = p->nalt;
            memcpy(a->ext.alt, p->alt, sizeof a->ext.alt);
            /* never larger than the request (a spoofed one reflects, it must not amplify):
             * without the padding it should have, fewer addresses, or none */
            uint8_t tmp[RNDZ_MAX_MSG];
            while (a->ext.nalt && rndz__proto_encode(a, tmp, sizeof tmp) > (int)len) a->ext.nalt--;
            if (rndz__proto_encode(a, tmp, sizeof tmp) > (int)len) a->ext.observed[0] = 0;
        }
        uint8_t tmp[RNDZ_MAX_MSG];
        if (a->ext.taken && !src->stream && rndz__proto_encode(a, tmp, sizeof tmp) > (int)len)
            a->ext.taken = 0;
        a->from_other = (q.query & RNDZ__Q_OTHER) && !src->stream;
        return;
    }
    case RNDZ_REQ_ISYNC:
    case RNDZ_REQ_RSYNC:
        /* before anything is sent anywhere */
        if (!rndz__limit_sync(&p->lim, src->addr, now)) {
            drop(a, RNDZ__ST_sync_limited, false, "source over its rate");
            return;
        }
        if (req.cmd == RNDZ_REQ_RSYNC) {
            forward(p, dir, buf, len, &req, src, now, RNDZ_RSP_REDIRECT, a);
            return; /* an unknown target: nothing to do */
        }
        if (forward(p, dir, buf, len, &req, src, now, RNDZ_RSP_FSYNC, a)) return;
        a->msg = (rndz_msg){RNDZ_RSP_REDIRECT, src->stream ? NULL : req.id,
                            src->stream ? 0 : req.id_len, req.peer_id, req.peer_id_len, "", 0};
        a->respond = a->to_source = true;
        /* A client that probes (its request carries a session, so it is larger than this
         * hint makes the answer) learns that the target is there over the other transport. */
        {
            rndz__ext q;
            if (dir->other && rndz__ext_decode(buf, len, &q) == 0 && q.has_nonce &&
                dir->other(dir->ctx, req.peer_id, req.peer_id_len))
                a->ext.elsewhere = 1;
        }
        return;
    case RNDZ_REQ_BYE:
        /* Only from the source that holds the id: anyone else could otherwise drop any id
         * (rndz 0.1.5 honours a Bye from anywhere). TCP: the connection ends, and with it
         * what it registered. */
        if (src->stream) drop(a, -1, true, "bye");
        else if (dir->del(dir->ctx, req.id, req.id_len) < 0) drop(a, malformed, false, "bye");
        return;
    default:
        drop(a, malformed, true, "not a request"); /* Fsync is not a request a server takes */
        return;
    }
}

void rndz__proto_log_refusal(rndz__proto *p, const char *transport, const rndz__action *a,
                             const struct sockaddr_storage *from, uint64_t now) {
    int st = a->stat;
    bool refusal = st == RNDZ__ST_auth_failed || st == RNDZ__ST_auth_replayed ||
                   st == RNDZ__ST_sync_limited || st == RNDZ__ST_fsync_limited ||
                   st == RNDZ__ST_id_refused || st == RNDZ__ST_udp_refused;
    if (!refusal || !a->why) return;
    uint64_t last = atomic_load_explicit(&p->refusal_log_at, memory_order_relaxed);
    if ((last && now < last + 1000) ||
        !atomic_compare_exchange_strong(&p->refusal_log_at, &last, now ? now : 1)) {
        atomic_fetch_add_explicit(&p->refusals_unlogged, 1, memory_order_relaxed);
        return;
    }
    uint64_t more = atomic_exchange(&p->refusals_unlogged, 0);
    char text[RNDZ_ADDRSTRLEN];
    rndz_addr_format((const struct sockaddr *)from, text, sizeof text);
    if (more)
        RNDZ_LOG(RNDZ_LOG_WARN, "%s: refused a request from %s: %s (and %llu more since the "
                 "last line)", transport, text, a->why, (unsigned long long)more);
    else
        RNDZ_LOG(RNDZ_LOG_WARN, "%s: refused a request from %s: %s", transport, text, a->why);
}

int rndz__proto_encode(const rndz__action *a, uint8_t *buf, size_t cap) {
    int n = rndz_msg_encode(&a->msg, buf, cap);
    if (n >= 0 && rndz__ext_present(&a->ext)) n = rndz__ext_append(&a->ext, buf, (size_t)n, cap);
    return n;
}
