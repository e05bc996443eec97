# The two commands a user needs: `make demo` and `make test`. Both install missing
# Debian packages first (scripts/install-deps.sh), so they work on a fresh machine.
.PHONY: all deps build build-asan build-tsan build-fuzz test test-unit test-e2e test-tsan fmt fmt-check demo bench \
        fuzz fuzz-smoke image clean

BUILD      ?= build
ASAN_BUILD ?= build-asan
TSAN_BUILD ?= build-tsan
FUZZ_BUILD ?= build-fuzz
# Seconds per fuzz target for `make fuzz` (docs/fuzzing.md); fuzz-smoke runs each for
# FUZZ_SMOKE_TIME from the committed seeds alone.
FUZZ_TIME  ?= 60
FUZZ_SMOKE_TIME ?= 12
JOBS       ?= $(shell nproc)
PYTEST     ?= python3 -m pytest
# `make image`: the container image piko:$(VERSION) from the root Dockerfile.
VERSION    ?= $(shell sed -n 's/^project.piko VERSION \([0-9.]*\).*/\1/p' CMakeLists.txt)
DOCKER     ?= docker

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

# ThreadSanitizer (clang): the unit tests, whose worker suite runs real threads against the
# mailbox and the snapshot reclamation (docs/architecture/workers.md).
build-tsan:
	@scripts/install-deps.sh test
	@CC=clang cmake -S . -B $(TSAN_BUILD) -G Ninja -DCMAKE_BUILD_TYPE=Debug -DPIKO_TSAN=ON >/dev/null
	@cmake --build $(TSAN_BUILD) -j $(JOBS) --target piko-unit

test-tsan: build-tsan
	@cd $(TSAN_BUILD) && TSAN_OPTIONS=halt_on_error=1:second_deadlock_stack=1 \
	    ctest --output-on-failure -j $(JOBS)

# libFuzzer targets (tests/fuzz/), clang with ASan + UBSan; see docs/fuzzing.md.
build-fuzz:
	@scripts/install-deps.sh test
	@CC=clang cmake -S . -B $(FUZZ_BUILD) -G Ninja -DCMAKE_BUILD_TYPE=Debug -DPIKO_FUZZ=ON >/dev/null
	@cmake --build $(FUZZ_BUILD) -j $(JOBS) --target fuzz

# New inputs go to $(FUZZ_BUILD)/fuzz/corpus/, never into tests/fuzz/corpus/.
fuzz: build-fuzz
	@tests/fuzz/run.sh $(FUZZ_BUILD) $(FUZZ_TIME) corpus $(FUZZ_ARGS)

# Bounded (targets x FUZZ_SMOKE_TIME seconds); fails on any crash, leak, timeout or UB.
fuzz-smoke: build-fuzz
	@tests/fuzz/run.sh $(FUZZ_BUILD) $(FUZZ_SMOKE_TIME) smoke -rss_limit_mb=1024 $(FUZZ_ARGS)

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
	@$(MAKE) --no-print-directory test-tsan
	@$(MAKE) --no-print-directory fuzz-smoke

demo: deps build
	@scripts/demo.sh $(BUILD)/bin

# Every scenario (bench/suite.sh), one report and one chart in bench/results/; about 12
# minutes with the defaults, QUICK=1 for a run of a few minutes (docs/benchmarks.md).
bench:
	@scripts/install-deps.sh bench
	@$(MAKE) --no-print-directory build
	@bench/suite.sh $(BUILD)/bin

# Builds inside the container engine (nothing from build/ is used). Needs a running daemon.
image:
	@command -v $(DOCKER) >/dev/null 2>&1 || \
	    { echo "image: '$(DOCKER)' not found; install Docker (or set DOCKER=podman)" >&2; exit 1; }
	@$(DOCKER) info >/dev/null 2>&1 || \
	    { echo "image: no container engine daemon answers ('$(DOCKER) info' failed); start one (e.g. systemctl start docker) or build elsewhere: $(DOCKER) build -t piko:$(VERSION) ." >&2; exit 1; }
	$(DOCKER) build -t piko:$(VERSION) .

clean:
	rm -rf $(BUILD) $(ASAN_BUILD) $(FUZZ_BUILD)
