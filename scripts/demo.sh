#!/usr/bin/env bash
# The main job: set up, build, make the default model (once, into build/models/), start
# kvprefixd with it on a private socket, play a chat of 3 users x 3 turns sharing a
# 512-token system prompt (each turn's prompt = the previous prompt + the previous answer
# + new user tokens) and show what each turn found cached, then kvprefix-stat.
#
#   scripts/demo.sh               the chat through the engine (a few seconds once built;
#                                 the first run also writes the 232 MB model)
#   scripts/demo.sh --index-only  instead: kvprefixd --index-only, replay the shared
#                                 production-shaped trace as an external engine would
#   scripts/demo.sh --all         both, one after the other
#
# Environment: BUILD_DIR (default build), MODEL (a GGUF file instead of the default model),
# THREADS (engine threads, default all cores), TRACE (the trace for --index-only).
set -euo pipefail
cd "$(dirname "$0")/.."
chat=1 replay=0
case "${1:-}" in
"") ;;
--index-only) chat=0 replay=1 ;;
--all) replay=1 ;;
-h | --help) sed -n '2,15s/^# \{0,1\}//p' "$0"; exit 0 ;;
*) echo "demo: unknown option '$1' (--index-only, --all, --help)" >&2; exit 2 ;;
esac
scripts/setup.sh
scripts/build.sh
build=${BUILD_DIR:-build}
dir=$(mktemp -d "${XDG_RUNTIME_DIR:-/tmp}/kvprefix-demo.XXXXXX")
pid=
cleanup() {
	if [ -n "$pid" ]; then kill "$pid" 2>/dev/null || true; wait "$pid" 2>/dev/null || true; fi
	pid=
	rm -rf "$dir"
}
trap cleanup EXIT

# Start kvprefixd with the given arguments on $dir/kvprefixd.sock; wait until it listens.
start() {
	sock="$dir/kvprefixd.sock"
	"$build/kvprefixd" --socket "$sock" --log-level warn "$@" &
	pid=$!
	for _ in $(seq 600); do
		[ -S "$sock" ] && return 0
		kill -0 "$pid" 2>/dev/null || { echo "demo: kvprefixd exited at start" >&2; exit 1; }
		sleep 0.05
	done
	echo "demo: kvprefixd did not listen on $sock within 30 s" >&2
	exit 1
}
stop() {
	kill "$pid"
	wait "$pid" 2>/dev/null || true
	pid=
}

if ((chat)); then
	model=${MODEL:-$build/models/default.gguf}
	if [ ! -f "$model" ]; then
		[ -z "${MODEL:-}" ] || { echo "demo: no model at $model" >&2; exit 1; }
		echo "== making the default model (random weights, 58M parameters, f32) into $model"
		mkdir -p "$(dirname "$model")"
		"$build/kvprefix-mkmodel" --out "$model"
	fi
	threads=${THREADS:-$(nproc)}
	echo "== kvprefixd --model $model --threads $threads"
	start --model "$model" --threads "$threads"
	echo "== chat: 3 users x 3 turns sharing a 512-token system prompt"
	"$build/kvprefix-bench" chat --socket "$sock" --users 3 --turns 3
	echo "== kvprefix-stat"
	"$build/kvprefix-stat" --socket "$sock"
	stop
fi

if ((replay)); then
	trace=${TRACE:-../shared/traces/synthetic_trace.jsonl}
	[ -f "$trace" ] || { echo "demo: no trace at $trace (set TRACE=FILE)" >&2; exit 1; }
	echo "== kvprefixd --index-only, block size 512"
	start --index-only --block-tokens 512 --capacity-blocks 65536
	echo "== replaying $trace through kvprefixd"
	"$build/kvprefix-bench" replay --trace "$trace" --socket "$sock"
	echo "== kvprefix-stat"
	"$build/kvprefix-stat" --socket "$sock"
	stop
fi
