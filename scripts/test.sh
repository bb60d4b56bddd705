#!/usr/bin/env bash
# Set up, build and run the whole test suite: once as released (Release), once built
# with AddressSanitizer + UndefinedBehaviorSanitizer, where any report fails the run.
# KVP_SKIP_SANITIZE=1 runs the first pass only. Then a bounded libFuzzer run, 15 s per
# target (scripts/fuzz.sh, docs/fuzzing.md); KVP_SKIP_FUZZ=1 skips it.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
build=${BUILD_DIR:-build}
BUILD_DIR=$build scripts/build.sh
ctest --test-dir "$build" --output-on-failure -j2
if [ "${KVP_SKIP_SANITIZE:-0}" != 1 ]; then
	echo "== the same tests under ASan + UBSan" >&2
	BUILD_DIR=$build-asan scripts/build.sh -DKVP_SANITIZE=ON -DCMAKE_BUILD_TYPE=Debug
	ctest --test-dir "$build-asan" --output-on-failure -j2
fi
if [ "${KVP_SKIP_FUZZ:-0}" != 1 ]; then
	echo "== fuzz targets, 15 s each (docs/fuzzing.md)" >&2
	KVP_SKIP_SETUP=1 FUZZ_BUILD_DIR=$build-fuzz scripts/fuzz.sh 15
fi
