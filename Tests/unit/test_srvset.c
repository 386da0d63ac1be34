/* test_srvset.c: server sets (Sources/CRndz/srvset.c, srvlink.c's "down").
 *
 * The hash against Tests/vectors/hrw.txt (made by Python's hashlib, not by us), the ranking
 * the same whatever order the servers are given in, the public rndz_server_rank, the spread
 * of 10,000 ids over 8 servers and what moves when one goes (only its own share), which
 * servers a listener keeps while some are down, and when a link counts as down, on simulated
 * time. */
#include "srvlink.h"
#include "srvset.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include "unit.h"

#define MAXS 16
static char names[MAXS][RNDZ_ADDRSTRLEN];
static size_t nnames;

static void test_vectors(void) {
    tl_case("vectors");
    const char *path = getenv("RNDZ_HRW_VECTORS") ? getenv("RNDZ_HRW_VECTORS")
                                                  : "Tests/vectors/hrw.txt";
    FILE *f = fopen(path, "r");
    if (!CHECK(f != NULL)) return;
    char line[1024];
    int nw = 0, nr = 0;
    while (fgets(line, sizeof line, f)) {
        line[strcspn(line, "\n")] = 0;
        if (line[0] == '#' || !line[0]) continue;
        char *save = NULL, *kind = strtok_r(line, " ", &save);
        if (strcmp(kind, "servers") == 0) {
            char *t;
            while ((t = strtok_r(NULL, " ", &save)) && nnames < MAXS)
                snprintf(names[nnames++], RNDZ_ADDRSTRLEN, "%s", t);
        } else if (strcmp(kind, "w") == 0) {
            char *srv = strtok_r(NULL, " ", &save), *id = strtok_r(NULL, " ", &save);
            char *hex = strtok_r(NULL, " ", &save);
            if (strcmp(id, "-") == 0) id = "";
            uint64_t want = strtoull(hex, NULL, 16);
            CHECK(rndz__hrw_weight(srv, id, strlen(id)) == want);
            nw++;
        } else if (strcmp(kind, "rank") == 0) {
            char *id = strtok_r(NULL, " ", &save);
            if (strcmp(id, "-") == 0) id = "";
            uint8_t got[MAXS];
            rndz__hrw_rank(id, strlen(id), (const char (*)[RNDZ_ADDRSTRLEN])names, nnames, got);
            /* the public call: the same ranking, and the same for the servers given reversed */
            const char *ptr[MAXS], *rev[MAXS];
            for (size_t i = 0; i < nnames; i++) ptr[i] = names[i], rev[i] = names[nnames - 1 - i];
            size_t pub[MAXS], pubrev[MAXS];
            CHECK_RC(rndz_server_rank(id, ptr, nnames, pub), 0);
            CHECK_RC(rndz_server_rank(id, rev, nnames, pubrev), 0);
            for (size_t r = 0; r < nnames; r++) {
                char *t = strtok_r(NULL, " ", &save);
                if (!CHECK(t != NULL)) break;
                CHECK_EQ_INT(got[r], atoi(t));
                CHECK_EQ_INT((int)pub[r], atoi(t));
                CHECK_EQ_INT((int)(nnames - 1 - pubrev[r]), atoi(t));
            }
            nr++;
        }
    }
    fclose(f);
    CHECK(nnames == 8 && nw == 40 && nr == 8);
    /* canonical names: "192.0.2.1:8888" and "::ffff:192.0.2.1" forms rank alike */
    const char *a[] = {"192.0.2.1:8888", "[::ffff:192.0.2.2]:8888"};
    const char *b[] = {"192.0.2.1:8888", "192.0.2.2:8888"};
    size_t oa[2], ob[2];
    CHECK_RC(rndz_server_rank("alice", a, 2, oa), 0);
    CHECK_RC(rndz_server_rank("alice", b, 2, ob), 0);
    CHECK(oa[0] == ob[0] && oa[1] == ob[1]);
    CHECK_RC(rndz_server_rank("alice", (const char *[]){"nonsense:"}, 1, oa), RNDZ_E_BADADDR);
}

/* 10,000 ids over 8 servers, K = 2: each server holds about a quarter of them; with one gone,
 * exactly the ids it held move (each to one other server), no other. */
static void test_spread(void) {
    tl_case("spread and moves");
    char srv[9][RNDZ_ADDRSTRLEN];
    for (int i = 0; i < 9; i++) snprintf(srv[i], sizeof srv[i], "10.0.0.%d:8888", i + 1);
    enum { IDS = 10000, K = 2 };
    unsigned held[9] = {0};
    unsigned moved = 0, changed_other = 0;
    for (int n = 0; n < IDS; n++) {
        char id[32];
        snprintf(id, sizeof id, "peer-%d", n);
        uint8_t o8[9], o7[9];
        rndz__hrw_rank(id, strlen(id), (const char (*)[RNDZ_ADDRSTRLEN])srv, 8, o8);
        for (int k = 0; k < K; k++) held[o8[k]]++;
        /* server 3 gone: rank the other seven (indices shifted past 3) */
        char seven[7][RNDZ_ADDRSTRLEN];
        int map[7];
        for (int i = 0, j = 0; i < 8; i++)
            if (i != 3) memcpy(seven[j], srv[i], RNDZ_ADDRSTRLEN), map[j++] = i;
        rndz__hrw_rank(id, strlen(id), (const char (*)[RNDZ_ADDRSTRLEN])seven, 7, o7);
        bool had3 = o8[0] == 3 || o8[1] == 3;
        int a = map[o7[0]], b = map[o7[1]];
        if (had3) moved++;
        /* the survivors of the old pair stay; only the lost one is replaced */
        bool same = (a == o8[0] || a == o8[1]) && (b == o8[0] || b == o8[1]);
        if (!had3 && !same) changed_other++;
        if (had3) CHECK((a == o8[0] || a == o8[1] || b == o8[0] || b == o8[1]));
    }
    for (int i = 0; i < 8; i++) {
        /* 2,500 expected; +-5% */
        CHECK(held[i] > 2375 && held[i] < 2625);
    }
    CHECK_EQ_INT((int)changed_other, 0);
    CHECK_EQ_INT((int)moved, (int)held[3]);
    printf("test_srvset: 10000 ids, 8 servers, K 2: held");
    for (int i = 0; i < 8; i++) printf(" %u", held[i]);
    printf("; one server gone: %u ids moved one registration each (%.1f%% of registrations; "
           "1/8 = 12.5%%), no other id changed\n", moved, 100.0 * moved / (IDS * K));
}

static void test_pick(void) {
    tl_case("pick");
    uint8_t order[4] = {2, 0, 3, 1};
    bool down[4] = {0}, keep[4];
    CHECK_EQ_INT((int)rndz__srvset_pick(order, 4, 2, down, keep), 2);
    CHECK(keep[2] && keep[0] && !keep[3] && !keep[1]);
    down[2] = true; /* the first is down: the third of the ranking stands in, the first stays */
    CHECK_EQ_INT((int)rndz__srvset_pick(order, 4, 2, down, keep), 2);
    CHECK(keep[2] && keep[0] && keep[3] && !keep[1]);
    down[3] = true;
    CHECK_EQ_INT((int)rndz__srvset_pick(order, 4, 2, down, keep), 2);
    CHECK(keep[2] && keep[0] && keep[3] && keep[1]);
    down[0] = true; /* all but one down: every server kept, one up */
    CHECK_EQ_INT((int)rndz__srvset_pick(order, 4, 2, down, keep), 1);
    CHECK(keep[0] && keep[1] && keep[2] && keep[3]);
    memset(down, 0, sizeof down); /* back: the first two again */
    CHECK_EQ_INT((int)rndz__srvset_pick(order, 4, 2, down, keep), 2);
    CHECK(keep[2] && keep[0] && !keep[3] && !keep[1]);
    CHECK_EQ_INT((int)rndz__srvset_pick(order, 4, 9, down, keep), 4); /* K > N: all */
}

static void test_link_down(void) {
    tl_case("link down");
    rndz__srvlink k;
    /* datagram: unanswered for DOWN_MS from its first tick */
    rndz__link_init(&k, false, 10000, 1);
    CHECK(!rndz__link_is_down(&k, 0)); /* not ticked yet */
    rndz__link_tick(&k, 5000);
    CHECK(rndz__link_down_at(&k) == 5000 + RNDZ_LINK_DOWN_MS);
    CHECK(!rndz__link_is_down(&k, 5000 + RNDZ_LINK_DOWN_MS - 1));
    CHECK(rndz__link_is_down(&k, 5000 + RNDZ_LINK_DOWN_MS));
    rndz__link_on_pong(&k, 9000);
    CHECK(!rndz__link_is_down(&k, 9000) && rndz__link_down_at(&k) == UINT64_MAX);
    /* silent for three keepalives: lost, and down at once */
    uint64_t t = 9000;
    unsigned act = 0;
    while (!(act & RNDZ_LINK_LOST) && t < 100000) act = rndz__link_tick(&k, t += 100);
    CHECK(act & RNDZ_LINK_LOST);
    CHECK(rndz__link_is_down(&k, t));
    /* stream: a connection that breaks is down if not answered again within DOWN_MS */
    rndz__link_init(&k, true, 10000, 1);
    rndz__link_tick(&k, 0);
    rndz__link_on_connected(&k, 10);
    rndz__link_on_pong(&k, 20);
    rndz__link_down(&k, 1000);
    CHECK(!rndz__link_is_down(&k, 1000 + RNDZ_LINK_DOWN_MS - 1));
    CHECK(rndz__link_is_down(&k, 1000 + RNDZ_LINK_DOWN_MS));
}

int main(void) {
    test_vectors();
    test_spread();
    test_pick();
    test_link_down();
    return tl_summary("test_srvset");
}
