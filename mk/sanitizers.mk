# Sanitizer runs (Tests/fuzz/README.md), included by the Makefile. Each builds the library,
# the C tests, the examples and the fuzz replay drivers in its own directory, so build/ is
# left alone, then runs them all (`make check` with that build).
#   make check-asan       ASan + UBSan (any UBSan report fails the run)
#   make check-tsan       TSan (the server's and the listeners' background threads)
#   make check-valgrind   `make check` with every test program under valgrind
#   make swift-asan       swift test under ASan (XCTest's own leaks ignored)
#   make swift-tsan       swift test under TSan
ASAN_CFLAGS = -fsanitize=address,undefined -fno-omit-frame-pointer -fno-sanitize-recover=all
TSAN_CFLAGS = -fsanitize=thread -fno-omit-frame-pointer
VALGRIND_CMD = valgrind --error-exitcode=1 --leak-check=full --errors-for-leak-kinds=definite -q

.PHONY: check-asan check-tsan check-valgrind swift-asan swift-tsan

check-asan:
	ASAN_OPTIONS=detect_leaks=1:abort_on_error=1:strict_string_checks=1:detect_stack_use_after_return=1 \
	UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1 RNDZ_TEST_SLOW=2 \
	$(MAKE) --no-print-directory check BUILD=build-asan CC="$(CC) $(ASAN_CFLAGS)"

check-tsan:
	TSAN_OPTIONS=halt_on_error=1:second_deadlock_stack=1 RNDZ_TEST_SLOW=4 \
	$(MAKE) --no-print-directory check BUILD=build-tsan CC="$(CC) $(TSAN_CFLAGS)"

check-valgrind:
	$(MAKE) --no-print-directory check VALGRIND="$(VALGRIND_CMD)"

swift-asan:
	ASAN_OPTIONS=detect_leaks=0 swift test --sanitize=address --scratch-path .build-asan

swift-tsan:
	swift test --sanitize=thread --scratch-path .build-tsan
