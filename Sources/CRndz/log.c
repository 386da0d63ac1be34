/* log.c: the process-wide log callback. */
#include "internal.h"

#include <pthread.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

static pthread_mutex_t log_mu = PTHREAD_MUTEX_INITIALIZER;
static rndz_log_fn log_fn;
static void *log_user;
/* -1 = not yet read from RNDZ_LOG */
static atomic_int log_level = -1;

static const char *const level_names[] = {"error", "warn", "info", "debug", "trace"};

int rndz_log_level_parse(const char *s) {
    if (!s) return -EINVAL;
    for (int i = 0; i < (int)RNDZ_ARRAY_LEN(level_names); i++)
        if (strcasecmp(s, level_names[i]) == 0) return i;
    if (strcasecmp(s, "warning") == 0) return RNDZ_LOG_WARN;
    if (s[0] >= '0' && s[0] <= '4' && s[1] == 0) return s[0] - '0';
    return -EINVAL;
}

static int current_level(void) {
    int lvl = atomic_load_explicit(&log_level, memory_order_relaxed);
    if (lvl >= 0) return lvl;
    const char *env = getenv("RNDZ_LOG");
    lvl = env ? rndz_log_level_parse(env) : -1;
    if (lvl < 0) lvl = RNDZ_LOG_WARN;
    int expected = -1;
    atomic_compare_exchange_strong(&log_level, &expected, lvl);
    return atomic_load(&log_level);
}

void rndz_set_log(rndz_log_fn fn, void *user, rndz_log_level max_level) {
    pthread_mutex_lock(&log_mu);
    log_fn = fn;
    log_user = user;
    int lvl = (int)max_level;
    if (lvl < RNDZ_LOG_ERROR) lvl = RNDZ_LOG_ERROR;
    if (lvl > RNDZ_LOG_TRACE) lvl = RNDZ_LOG_TRACE;
    atomic_store(&log_level, lvl);
    pthread_mutex_unlock(&log_mu);
}

bool rndz__log_enabled(rndz_log_level level) { return (int)level <= current_level(); }

void rndz__log(rndz_log_level level, const char *fmt, ...) {
    char msg[512];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    /* The mutex keeps a concurrent rndz_set_log() from swapping fn and user apart. */
    pthread_mutex_lock(&log_mu);
    if (log_fn)
        log_fn(level, msg, log_user);
    else
        fprintf(stderr, "rndz %s: %s\n", level_names[level], msg);
    pthread_mutex_unlock(&log_mu);
}
