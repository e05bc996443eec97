#!/usr/bin/env bash
# Runs the libFuzzer targets built in BUILD_DIR (cmake -DPIKO_FUZZ=ON), each for SECONDS,
# starting from the committed seeds in tests/fuzz/corpus/<target>/ (docs/fuzzing.md).
#
#   tests/fuzz/run.sh BUILD_DIR SECONDS MODE [libFuzzer flags...]
#
# MODE "corpus" keeps what the fuzzer finds in BUILD_DIR/fuzz/corpus/<target>/ (it grows
# from run to run); MODE "smoke" starts from the seeds alone each time. The committed
# corpus is never written. Crashes, leaks, timeouts and sanitizer reports land in
# BUILD_DIR/fuzz/artifacts/<target>/ and fail the run (exit 1); full logs are in
# BUILD_DIR/fuzz/logs/. FUZZ_TARGETS="fuzz_config ..." limits the run to some targets.
set -uo pipefail

if [ $# -lt 3 ]; then
    echo "usage: $0 BUILD_DIR SECONDS corpus|smoke [libFuzzer flags...]" >&2
    exit 2
fi
build=$1
secs=$2
mode=$3
shift 3
here=$(cd "$(dirname "$0")" && pwd)
targets=${FUZZ_TARGETS:-$(cd "$here" && ls fuzz_*.c | sed 's/\.c$//')}
out=$build/fuzz
mkdir -p "$out/logs"

# Leaks fail the run (LeakSanitizer at exit of each input batch); UB stops at once.
export ASAN_OPTIONS=${ASAN_OPTIONS:-detect_leaks=1}
export UBSAN_OPTIONS=${UBSAN_OPTIONS:-print_stacktrace=1:halt_on_error=1}

failed=()
for t in $targets; do
    bin=$build/bin/$t
    if [ ! -x "$bin" ]; then
        echo "fuzz: $bin is missing (make build-fuzz)" >&2
        exit 2
    fi
    case $mode in
    corpus) corpus=$out/corpus/$t ;;
    smoke)
        corpus=$out/smoke/$t
        rm -rf "$corpus"
        ;;
    *)
        echo "fuzz: unknown mode '$mode'" >&2
        exit 2
        ;;
    esac
    artifacts=$out/artifacts/$t
    mkdir -p "$corpus" "$artifacts"
    dict=()
    [ -f "$here/$t.dict" ] && dict=(-dict="$here/$t.dict")
    log=$out/logs/$t.log
    start=$(date +%s)
    "$bin" -max_total_time="$secs" -timeout=5 -print_final_stats=1 \
        -artifact_prefix="$artifacts/" "${dict[@]}" "$@" \
        "$corpus" "$here/corpus/$t" >"$log" 2>&1
    rc=$?
    took=$(($(date +%s) - start))
    seed=$(sed -n 's/^INFO: Seed: \([0-9]*\).*/\1/p' "$log" | head -n 1)
    execs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log")
    cov=$(grep -a -o 'cov: [0-9]*' "$log" | tail -n 1)
    if [ $rc -eq 0 ]; then
        printf 'fuzz: %-20s ok   %4ss  %9s runs  %s  seed %s\n' "$t" "$took" "${execs:-?}" \
            "${cov:-cov: ?}" "${seed:-?}"
    else
        printf 'fuzz: %-20s FAIL %4ss  exit %d  seed %s  log %s\n' "$t" "$took" "$rc" \
            "${seed:-?}" "$log"
        # The report: from the first sanitizer or invariant line to the saved input.
        awk '/invariant violated|ERROR: |runtime error|ALARM|out-of-memory/ {p=1}
             / in fuzzer::|libc_start|in _start |Test unit written/ {next}
             p {print "    " $0; n++} n >= 60 {exit}' "$log"
        grep -a 'Test unit written to' "$log" | head -n 1 | sed 's/^/    /'
        failed+=("$t")
    fi
done
if [ ${#failed[@]} -ne 0 ]; then
    echo "fuzz: failed: ${failed[*]} (reproduce: $build/bin/<target> <artifact>; docs/fuzzing.md)"
    exit 1
fi
