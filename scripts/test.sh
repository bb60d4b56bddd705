#!/usr/bin/env bash
# Set up, build and run the whole test suite: once as released (Release), once built
# with AddressSanitizer + UndefinedBehaviorSanitizer, where any report fails the run
# (all but the two tests that check the source tree and the package).
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
	# test_layout reads only the source tree, and test_install checks the package (it
	# configures and builds a /usr tree of its own): the first pass ran both, and the
	# sanitizers add nothing to them
	ctest --test-dir "$build-asan" --output-on-failure -j2 -E '^(test_layout|test_install)$'
fi
if [ "${KVP_SKIP_FUZZ:-0}" != 1 ]; then
	echo "== fuzz targets, 15 s each (docs/fuzzing.md)" >&2
	KVP_SKIP_SETUP=1 FUZZ_BUILD_DIR=$build-fuzz scripts/fuzz.sh 15
fi
