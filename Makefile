# The two commands a user needs: `make demo` and `make test`. Both install missing
# Debian packages first (scripts/install-deps.sh), so they work on a fresh machine.
.PHONY: all deps build build-asan test test-unit test-e2e fmt fmt-check demo bench clean

BUILD      ?= build
ASAN_BUILD ?= build-asan
JOBS       ?= $(shell nproc)
PYTEST     ?= python3 -m pytest

all: build

deps:
	@scripts/install-deps.sh test

build:
	@scripts/install-deps.sh build
	@cmake -S . -B $(BUILD) -G Ninja -DCMAKE_BUILD_TYPE=RelWithDebInfo >/dev/null
	@cmake --build $(BUILD) -j $(JOBS)

build-asan:
	@scripts/install-deps.sh test
	@CC=clang cmake -S . -B $(ASAN_BUILD) -G Ninja -DCMAKE_BUILD_TYPE=Debug -DPIKO_SANITIZE=ON >/dev/null
	@cmake --build $(ASAN_BUILD) -j $(JOBS)

fmt:
	@clang-format -i $$(git ls-files '*.c' '*.h')

fmt-check:
	@scripts/install-deps.sh test
	@clang-format --dry-run --Werror $$(git ls-files '*.c' '*.h') && echo "fmt-check: ok"

# Unit + e2e suites against one build directory ($(BUILD) by default).
test-unit:
	@cd $(BUILD) && ctest --output-on-failure -j $(JOBS)

test-e2e:
	@PIKO_BIN_DIR=$(abspath $(BUILD))/bin $(PYTEST) -q e2e

test: deps fmt-check build
	@$(MAKE) --no-print-directory test-unit test-e2e BUILD=$(BUILD)
	@$(MAKE) --no-print-directory build-asan
	@# The e2e suite fails on any sanitizer report (leaks included) in a binary's log.
	@ASAN_OPTIONS=detect_leaks=1 UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1 \
	    $(MAKE) --no-print-directory test-unit test-e2e BUILD=$(ASAN_BUILD)

demo: deps build
	@scripts/demo.sh $(BUILD)/bin

bench:
	@scripts/install-deps.sh bench
	@$(MAKE) --no-print-directory build
	@bench/http.sh $(BUILD)/bin
	@bench/tcp.sh $(BUILD)/bin

clean:
	rm -rf $(BUILD) $(ASAN_BUILD)
