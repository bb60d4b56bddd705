#!/usr/bin/env bash
# The main job: build, start kvprefixd --index-only on a private socket, replay the
# production-shaped trace against it as an external engine would, show the hit rate.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
scripts/build.sh
build=${BUILD_DIR:-build}
trace=${TRACE:-../shared/traces/synthetic_trace.jsonl}
[ -f "$trace" ] || { echo "demo: no trace at $trace (set TRACE=FILE)" >&2; exit 1; }
dir=$(mktemp -d "${XDG_RUNTIME_DIR:-/tmp}/kvprefix-demo.XXXXXX")
sock="$dir/kvprefixd.sock"
"$build/kvprefixd" --index-only --socket "$sock" --block-tokens 512 --capacity-blocks 65536 \
	--log-level warn &
pid=$!
trap 'kill $pid 2>/dev/null; wait $pid 2>/dev/null; rm -rf "$dir"' EXIT
for _ in $(seq 100); do [ -S "$sock" ] && break; sleep 0.05; done
echo "== replaying $trace through kvprefixd (block size 512)"
"$build/kvprefix-bench" replay --trace "$trace" --socket "$sock"
echo "== kvprefix-stat"
"$build/kvprefix-stat" --socket "$sock"
