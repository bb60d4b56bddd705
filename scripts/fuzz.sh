#!/usr/bin/env bash
# Build the libFuzzer targets (fuzz/) with clang into build-fuzz/ and run each one for
# SECONDS_PER_TARGET seconds (default 30). Fails if any target crashes, trips ASan or
# UBSan, leaks, times out on an input or runs out of memory. See docs/fuzzing.md.
#
#   scripts/fuzz.sh [SECONDS_PER_TARGET]
#
# Environment: FUZZ_TARGETS (default "fuzz_frame fuzz_gguf fuzz_trace fuzz_config
# fuzz_events"), FUZZ_BUILD_DIR (build-fuzz), FUZZ_CC (clang), FUZZ_ARGS (extra libFuzzer
# flags, e.g. "-jobs=4 -workers=4"), KVP_SKIP_SETUP=1 (do not run scripts/setup.sh).
#
# The committed seeds, fuzz/corpus/<target>/, are read only: what the fuzzer finds goes
# to <build>/corpus/<target>/ (kept between runs; delete it to start afresh), crash
# inputs to <build>/crashes/<target>-crash-<sha1> (and leak-, timeout-, oom-), logs to
# <build>/logs/<target>.log.
set -euo pipefail
cd "$(dirname "$0")/.."
secs=${1:-30}
case $secs in
'' | *[!0-9]*) echo "usage: $0 [SECONDS_PER_TARGET]" >&2; exit 2 ;;
esac
build=${FUZZ_BUILD_DIR:-build-fuzz}
read -ra targets <<<"${FUZZ_TARGETS:-fuzz_frame fuzz_gguf fuzz_trace fuzz_config fuzz_events}"
read -ra extra <<<"${FUZZ_ARGS:-}"
[ "${KVP_SKIP_SETUP:-0}" = 1 ] || scripts/setup.sh

# RelWithDebInfo: optimised, with line numbers in the reports. CC matters only when the
# build dir is first configured; CMake refuses KVP_FUZZ with any other compiler.
CC=${FUZZ_CC:-clang} cmake -S . -B "$build" -DKVP_FUZZ=ON -DCMAKE_BUILD_TYPE=RelWithDebInfo \
	-DBUILD_TESTING=OFF >/dev/null
cmake --build "$build" -j"$(nproc)" --target "${targets[@]}"

mkdir -p "$build/crashes" "$build/logs"
export ASAN_OPTIONS=${ASAN_OPTIONS:-detect_leaks=1:abort_on_error=0}
export UBSAN_OPTIONS=${UBSAN_OPTIONS:-halt_on_error=1:print_stacktrace=1}
failed=()
for t in "${targets[@]}"; do
	work=$build/corpus/$t
	log=$build/logs/$t.log
	dict=()
	[ -f "fuzz/$t.dict" ] && dict=(-dict="fuzz/$t.dict")
	mkdir -p "$work"
	echo "== $t: ${secs}s" >&2
	# the first corpus dir receives new inputs; the committed one is only read
	rc=0
	"$build/fuzz/$t" -max_total_time="$secs" -timeout=25 -rss_limit_mb=2048 \
		-print_final_stats=1 -artifact_prefix="$build/crashes/$t-" "${dict[@]}" \
		"${extra[@]}" "$work" "fuzz/corpus/$t" >"$log" 2>&1 || rc=$?
	execs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log" | tail -1)
	# the last status line: "#RUNS <event> cov: EDGES ft: FEATURES corp: N/SIZE ..."
	cov=$(grep -E '^#[0-9]+' "$log" | tail -1 | grep -oE 'cov: [0-9]+ ft: [0-9]+ corp: [^ ]+' || true)
	echo "   rc=$rc execs=${execs:-?} ${cov:-}" >&2
	if [ "$rc" != 0 ]; then
		failed+=("$t")
		echo "   FAILED: last lines of $log:" >&2
		tail -n 40 "$log" >&2
	fi
done
if ((${#failed[@]})); then
	echo "fuzz: FAILED: ${failed[*]}; inputs in $build/crashes/ (docs/fuzzing.md says what next)" >&2
	ls -l "$build/crashes" >&2
	exit 1
fi
echo "fuzz: ok (${#targets[@]} targets x ${secs}s, no crash)" >&2
