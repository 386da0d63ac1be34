/* test_peertab.c: the UDP server's peer table (Sources/CRndz/peertab.c), driven directly:
 * insert, refresh, move to a new address, long ids, delete with the owner check, expiry in
 * small steps, the capacity limit, and a long random workload checked against a plain model
 * (which catches any slip in the backward-shift deletion or the dense-array moves). */
#include "peertab.h"

#include <arpa/inet.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include "unit.h"


static struct sockaddr_storage v4(uint32_t ip, uint16_t port) {
    struct sockaddr_storage ss = {0};
    struct sockaddr_in *s = (void *)&ss;
    s->sin_family = AF_INET;
    s->sin_addr.s_addr = htonl(ip);
    s->sin_port = htons(port);
    return ss;
}

static struct sockaddr_storage v6(uint16_t last, uint16_t port) {
    struct sockaddr_storage ss = {0};
    struct sockaddr_in6 *s = (void *)&ss;
    s->sin6_family = AF_INET6;
    s->sin6_addr.s6_addr[0] = 0x20;
    s->sin6_addr.s6_addr[1] = 0x01;
    s->sin6_addr.s6_addr[2] = 0x0d;
    s->sin6_addr.s6_addr[3] = 0xb8;
    s->sin6_addr.s6_addr[14] = (uint8_t)(last >> 8);
    s->sin6_addr.s6_addr[15] = (uint8_t)last;
    s->sin6_port = htons(port);
    return ss;
}

static bool same(const struct sockaddr_storage *a, const struct sockaddr_storage *b) {
    char x[RNDZ_ADDRSTRLEN], y[RNDZ_ADDRSTRLEN];
    rndz_addr_format((const struct sockaddr *)a, x, sizeof x);
    rndz_addr_format((const struct sockaddr *)b, y, sizeof y);
    return strcmp(x, y) == 0;
}

static void test_basics(void) {
    rndz__peertab t;
    CHECK(rndz__pt_init(&t, 1000, 1000) == 0);
    struct sockaddr_storage a = v4(0xc0000201, 1000), b = v6(7, 2000), out;
    CHECK(rndz__pt_put(&t, "alice", 5, &a, 1000, 0) == 0);
    CHECK(rndz__pt_put(&t, "bob", 3, &b, 1000, 0) == 0);
    CHECK(rndz__pt_put(&t, "", 0, &a, 1000, 0) == 0); /* v1 allows the empty id */
    CHECK(rndz__pt_count(&t) == 3);
    /* IPv4 comes back as IPv4 for an IPv4 socket, and mapped for an IPv6 one */
    CHECK(rndz__pt_get(&t, "alice", 5, false, &out, NULL) && out.ss_family == AF_INET && same(&out, &a));
    CHECK(rndz__pt_get(&t, "alice", 5, true, &out, NULL) && out.ss_family == AF_INET6 && same(&out, &a));
    CHECK(rndz__pt_get(&t, "bob", 3, true, &out, NULL) && same(&out, &b));
    CHECK(!rndz__pt_get(&t, "carol", 5, false, &out, NULL));
    CHECK(!rndz__pt_get(&t, "alic", 4, false, &out, NULL));

    /* refresh and move: same id, new address; the count stays */
    struct sockaddr_storage a2 = v4(0xc0000202, 1001);
    CHECK(rndz__pt_put(&t, "alice", 5, &a2, 2000, 0) == 1); /* 1: it moved */
    CHECK(rndz__pt_put(&t, "alice", 5, &a2, 2100, 0) == 0); /* refreshed where it is */
    CHECK(rndz__pt_count(&t) == 3);
    CHECK(rndz__pt_get(&t, "alice", 5, false, &out, NULL) && same(&out, &a2));

    /* long ids live on the heap */
    char longid[300];
    memset(longid, 'x', sizeof longid);
    CHECK(rndz__pt_put(&t, longid, sizeof longid, &b, 2000, 0) == 0);
    CHECK(rndz__pt_get(&t, longid, sizeof longid, true, &out, NULL) && same(&out, &b));
    CHECK(!rndz__pt_get(&t, longid, sizeof longid - 1, true, &out, NULL));

    /* delete: only from the registered address (or with no check) */
    CHECK(rndz__pt_del(&t, "alice", 5, &a) == -EPERM); /* alice moved to a2 */
    CHECK(rndz__pt_del(&t, "alice", 5, &a2) == 1);
    CHECK(rndz__pt_del(&t, "alice", 5, &a2) == 0);
    CHECK(rndz__pt_del(&t, longid, sizeof longid, NULL) == 1);
    CHECK(rndz__pt_count(&t) == 2);
    CHECK(rndz__pt_get(&t, "bob", 3, true, &out, NULL) && same(&out, &b));
    rndz__pt_free(&t);
}

static void test_expiry(void) {
    rndz__peertab t;
    CHECK(rndz__pt_init(&t, 100000, 0) == 0);
    char id[32];
    struct sockaddr_storage a = v4(0x0a000001, 1);
    for (int i = 0; i < 20000; i++) {
        snprintf(id, sizeof id, "old%d", i);
        CHECK(rndz__pt_put(&t, id, strlen(id), &a, 1000, 0) == 0);
    }
    for (int i = 0; i < 5000; i++) {
        snprintf(id, sizeof id, "new%d", i);
        CHECK(rndz__pt_put(&t, id, strlen(id), &a, 50000, 0) == 0);
    }
    /* at 61000 with max age 60000: the old ones are due, the new ones are not */
    size_t removed = 0, steps = 0;
    while (removed < 20000 && steps < 100000) {
        for (uint32_t sh = 0; sh < t.nshards; sh++) {
            size_t r = rndz__pt_sweep(&t, sh, 61000, 60000, 16); /* small steps */
            CHECK(r <= 16);
            removed += r;
        }
        steps++;
    }
    CHECK(removed == 20000);
    CHECK(rndz__pt_count(&t) == 5000);
    for (int i = 0; i < 5000; i++) {
        snprintf(id, sizeof id, "new%d", i);
        struct sockaddr_storage out;
        CHECK(rndz__pt_get(&t, id, strlen(id), false, &out, NULL));
    }
    /* a refresh keeps an id alive */
    CHECK(rndz__pt_put(&t, "new1", 4, &a, 100000, 0) == 0);
    for (int k = 0; k < 1000; k++)
        for (uint32_t sh = 0; sh < t.nshards; sh++) rndz__pt_sweep(&t, sh, 120000, 60000, 64);
    CHECK(rndz__pt_count(&t) == 1);
    rndz__pt_free(&t);
}

static void test_capacity(void) {
    rndz__peertab t;
    CHECK(rndz__pt_init(&t, 5000, 0) == 0);
    struct sockaddr_storage a = v4(0x0a000001, 1);
    char id[32];
    int ok = 0, full = 0;
    for (int i = 0; i < 20000; i++) {
        snprintf(id, sizeof id, "p%d", i);
        int rc = rndz__pt_put(&t, id, strlen(id), &a, 0, 0);
        if (rc == 0) ok++;
        else if (rc == -ENOSPC) full++;
    }
    /* about the maximum: each shard holds its share plus 1/8 and a little */
    CHECK(ok >= 5000 && ok <= 5000 + 5000 / 8 + 64 * (int)t.nshards);
    CHECK(full == 20000 - ok);
    CHECK(rndz__pt_count(&t) == (uint64_t)ok);
    /* a refresh of a registered id still works when full */
    snprintf(id, sizeof id, "p%d", 0);
    CHECK(rndz__pt_put(&t, id, strlen(id), &a, 1, 0) == 0);
    rndz__pt_free(&t);
}

/* A long random workload against a plain model. */
#define MODEL 4000
static void test_model(void) {
    rndz__peertab t;
    CHECK(rndz__pt_init(&t, 100000, 0) == 0);
    static bool present[MODEL];
    static uint16_t port[MODEL];
    uint64_t rng = 12345;
    int bad = 0;
    for (int op = 0; op < 400000; op++) {
        rng = rng * 6364136223846793005ull + 1442695040888963407ull;
        uint32_t r = (uint32_t)(rng >> 33);
        int k = (int)(r % MODEL);
        char id[48];
        /* some ids long (heap), most short */
        int n = k % 17 == 0 ? snprintf(id, sizeof id, "a-rather-long-peer-id-%08d", k)
                            : snprintf(id, sizeof id, "k%d", k);
        struct sockaddr_storage out;
        switch ((r >> 16) % 4) {
        case 0:
        case 1: {
            uint16_t p = (uint16_t)(1 + (r >> 20) % 60000);
            struct sockaddr_storage a = v4(0x0a000000u + (uint32_t)k, p);
            int rc = rndz__pt_put(&t, id, (size_t)n, &a, (uint64_t)op, 0);
            if (rc >= 0 && rc != (present[k] && port[k] != p)) bad++; /* 1: moved */
            if (rc >= 0) {
                present[k] = true;
                port[k] = p;
            }
            break;
        }
        case 2: {
            int rc = rndz__pt_del(&t, id, (size_t)n, NULL);
            if (rc != (present[k] ? 1 : 0)) bad++;
            present[k] = false;
            break;
        }
        default: {
            bool found = rndz__pt_get(&t, id, (size_t)n, false, &out, NULL);
            if (found != present[k]) bad++;
            if (found && ntohs(((struct sockaddr_in *)&out)->sin_port) != port[k]) bad++;
        }
        }
    }
    size_t want = 0;
    for (int k = 0; k < MODEL; k++) {
        want += present[k];
        char id[48];
        int n = k % 17 == 0 ? snprintf(id, sizeof id, "a-rather-long-peer-id-%08d", k)
                            : snprintf(id, sizeof id, "k%d", k);
        struct sockaddr_storage out;
        if (rndz__pt_get(&t, id, (size_t)n, false, &out, NULL) != present[k]) bad++;
    }
    CHECK(bad == 0);
    CHECK(rndz__pt_count(&t) == want);
    rndz__pt_free(&t);
}

int main(void) {
    CHECK(sizeof(rndz__peer) == 44); /* the compact entry the memory figures rest on */
    test_basics();
    test_expiry();
    test_capacity();
    test_model();
    return tl_summary("test_peertab");
}
