/* unit.h: the unit tests' one check macro: counts checks and failures, prints each failure
 * with its line. */
#ifndef RNDZ_UNIT_H
#define RNDZ_UNIT_H

#include <stdio.h>

static int failures, checks;
#define CHECK(c)                                                                             \
    do {                                                                                     \
        checks++;                                                                            \
        if (!(c)) {                                                                          \
            failures++;                                                                      \
            fprintf(stderr, "%s:%d: FAIL: %s\n", __FILE__, __LINE__, #c);                   \
        }                                                                                    \
    } while (0)



#endif
