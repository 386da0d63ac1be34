/* time.c: the monotonic and wall clocks and a PRNG for jitter (not for anything secret). */
#include "internal.h"

#include <pthread.h>
#include <stdatomic.h>
#include <time.h>
#include <unistd.h>

uint64_t rndz__now_ms(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000u + (uint64_t)ts.tv_nsec / 1000000u;
}

uint64_t rndz__unix_ms(void) {
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (uint64_t)ts.tv_sec * 1000u + (uint64_t)ts.tv_nsec / 1000000u;
}

static _Atomic uint64_t rng_state;

uint32_t rndz__random(void) {
    uint64_t s = atomic_load_explicit(&rng_state, memory_order_relaxed);
    if (s == 0) {
        struct timespec ts;
        clock_gettime(CLOCK_REALTIME, &ts);
        s = ((uint64_t)ts.tv_nsec << 20) ^ (uint64_t)ts.tv_sec ^ ((uint64_t)getpid() << 40) ^
            (uint64_t)(uintptr_t)pthread_self();
        s |= 1;
    }
    /* xorshift64*; races between threads only mix the state further. */
    s ^= s >> 12;
    s ^= s << 25;
    s ^= s >> 27;
    atomic_store_explicit(&rng_state, s, memory_order_relaxed);
    return (uint32_t)((s * 0x2545F4914F6CDD1DULL) >> 32);
}
