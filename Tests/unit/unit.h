/* unit.h: the unit tests' checks: the same macros, failure lines and summary as the C tests
 * (CHECK, CHECK_EQ_INT, CHECK_RC, CHECK_EQ_MEM, CHECK_EQ_STR, CHECK_EQ_SN, tl_case(); main
 * ends with `return tl_summary("test_name");`), from the one header both share. Each unit
 * test is a single translation unit, so the checks are defined here. */
#ifndef RNDZ_UNIT_H
#define RNDZ_UNIT_H

#include <stdio.h>

#define TL_CHECK_IMPLEMENTATION
#include "../c/check.h"

#endif
