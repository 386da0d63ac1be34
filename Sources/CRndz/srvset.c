/* srvset.c: rendezvous hashing of ids over server sets (srvset.h). */
#include "srvset.h"

#include "sha256.h"

#include <errno.h>
#include <string.h>

uint64_t rndz__hrw_weight(const char *name, const char *id, size_t len) {
    rndz__sha256_ctx c;
    uint8_t d[RNDZ_SHA256_LEN];
    rndz__sha256_init(&c);
    rndz__sha256_update(&c, name, strlen(name) + 1); /* the name and its NUL: 0x00 */
    rndz__sha256_update(&c, id, len);
    rndz__sha256_final(&c, d);
    uint64_t w = 0;
    for (int i = 0; i < 8; i++) w = w << 8 | d[i];
    return w;
}

void rndz__hrw_rank(const char *id, size_t len, const char (*names)[RNDZ_ADDRSTRLEN], size_t n,
                    uint8_t *order) {
    uint64_t w[256];
    if (n > 256) n = 256;
    for (size_t i = 0; i < n; i++) {
        w[i] = rndz__hrw_weight(names[i], id, len);
        order[i] = (uint8_t)i;
    }
    /* insertion sort: n is at most RNDZ_MAX_SERVERS */
    for (size_t i = 1; i < n; i++) {
        uint8_t x = order[i];
        size_t j = i;
        while (j > 0) {
            uint8_t y = order[j - 1];
            bool after = w[y] < w[x] || (w[y] == w[x] && strcmp(names[y], names[x]) > 0);
            if (!after) break;
            order[j] = y;
            j--;
        }
        order[j] = x;
    }
}

size_t rndz__srvset_pick(const uint8_t *order, size_t n, size_t k, const bool *down, bool *keep) {
    size_t up = 0;
    for (size_t i = 0; i < n; i++) keep[i] = false;
    for (size_t r = 0; r < n && up < k; r++) {
        keep[order[r]] = true;
        if (!down[order[r]]) up++;
    }
    return up;
}

int rndz_server_rank(const char *id, const char *const *servers, size_t n, size_t *order) {
    if (!id || (!servers && n) || (!order && n)) return -EINVAL;
    if (n > 16) return -E2BIG;
    char names[16][RNDZ_ADDRSTRLEN];
    for (size_t i = 0; i < n; i++) {
        struct sockaddr_storage a;
        if (!servers[i]) return RNDZ_E_BADADDR;
        int rc = rndz_addr_resolve(servers[i], AF_UNSPEC, &a, NULL);
        if (rc) return rc;
        rndz__addr_unmap(&a);
        rc = rndz_addr_format((struct sockaddr *)&a, names[i], RNDZ_ADDRSTRLEN);
        if (rc < 0) return rc;
    }
    uint8_t o[16];
    rndz__hrw_rank(id, strlen(id), (const char (*)[RNDZ_ADDRSTRLEN])names, n, o);
    for (size_t i = 0; i < n; i++) order[i] = o[i];
    return 0;
}
