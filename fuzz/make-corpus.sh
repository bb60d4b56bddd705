#!/usr/bin/env bash
# Regenerate the committed seed corpora in fuzz/corpus/ (docs/fuzzing.md). Run it only
# when the formats change; the fuzzers never write here (scripts/fuzz.sh works on a
# copy). Needs a normal build for the model generator: MKMODEL=path or build-fz/.
#
#   fuzz_frame   every hex example of docs/protocol.md (<!-- example: NAME -->), as the
#                binary frame it spells
#   fuzz_gguf    tiny random-weight models from kvprefix-mkmodel (f32, f16 tied), and
#                one of them cut inside the header, the metadata, the tensor infos and
#                the data
#   fuzz_trace   a few Mooncake lines, valid and not
set -euo pipefail
cd "$(dirname "$0")/.."
mk=${MKMODEL:-build-fz/kvprefix-mkmodel}
if [ ! -x "$mk" ]; then
	echo "make-corpus: $mk not found; build it first:" >&2
	echo "  cmake -S . -B build-fz -DBUILD_TESTING=OFF && cmake --build build-fz --target kvprefix-mkmodel" >&2
	exit 1
fi
out=fuzz/corpus
rm -rf "$out/fuzz_frame" "$out/fuzz_gguf" "$out/fuzz_trace"
mkdir -p "$out/fuzz_frame" "$out/fuzz_gguf" "$out/fuzz_trace"

# ---- frames: the hex examples of docs/protocol.md ----
name="" in_block=0 hex=""
while IFS= read -r line; do
	if [[ $line =~ ^\<!--\ example:\ ([a-z0-9_]+)\ --\>$ ]]; then
		name=${BASH_REMATCH[1]}
	elif [ -n "$name" ] && [ "$in_block" = 0 ] && [[ $line == '```text' ]]; then
		in_block=1 hex=""
	elif [ "$in_block" = 1 ] && [[ $line == '```' ]]; then
		esc=""
		for b in $hex; do esc+="\\x$b"; done
		printf '%b' "$esc" >"$out/fuzz_frame/$name.bin"
		name="" in_block=0
	elif [ "$in_block" = 1 ]; then
		hex+=" ${line%%#*}"
	fi
done <docs/protocol.md
# and one bare payload under 16 bytes (a RELEASE body): the target's short-input path
printf '\x01\x00\x00\x00\x00\x00\x00\x00' >"$out/fuzz_frame/short_release_payload.bin"

# ---- GGUF models ----
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
shape=(--vocab 260 --dim 8 --layers 1 --heads 2 --kv-heads 1 --ffn 8 --ctx 16 --quiet)
"$mk" --out "$out/fuzz_gguf/tiny-f32.gguf" "${shape[@]}" --dtype f32
"$mk" --out "$out/fuzz_gguf/tiny-f16.gguf" "${shape[@]}" --dtype f16
"$mk" --out "$tmp/tied.gguf" "${shape[@]}" --dtype f16 --tied
cp "$tmp/tied.gguf" "$out/fuzz_gguf/tiny-f16-tied.gguf"
# cuts of the 12,288-byte tied f16 model: header only, inside the scalar keys, inside
# the token strings, inside the last tensor info (its name, then its shape: late
# enough that the tensor count still passes the "could it fit" bound), right after the
# infos, inside the data, one byte short
for cut in 24 600 3000 7205 7230 7264 10000 12287; do
	head -c "$cut" "$tmp/tied.gguf" >"$out/fuzz_gguf/tiny-f16-tied-cut$cut.gguf"
done

# ---- trace lines ----
t=$out/fuzz_trace
printf '%s\n' '{"timestamp": 0, "input_length": 1200, "output_length": 6, "hash_ids": [7, 9, 4]}' \
	'{"timestamp": 12.5, "input_length": 512, "hash_ids": [7]}' >"$t/two_requests.jsonl"
printf '%s\r\n\r\n  \t\n%s\n' '{"input_length": 1, "hash_ids": [9007199254740992, 1, 2]}' \
	'{"hash_ids": [0, 1], "output_length": 0, "input_length": 1024, "extra": [true, null, {"a": "b"}]}' \
	>"$t/crlf_blank_extra.jsonl"
printf '%s' '{"timestamp": 1e3, "input_length": 40160, "output_length": 4294967295, "hash_ids": [0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16, 17, 18, 19, 20, 21, 22, 23, 24, 25, 26, 27, 28, 29, 30, 31, 32, 33, 34, 35, 36, 37, 38, 39, 40, 41, 42, 43, 44, 45, 46, 47, 48, 49, 50, 51, 52, 53, 54, 55, 56, 57, 58, 59, 60, 61, 62, 63, 64, 65, 66, 67, 68, 69, 70, 71, 72, 73, 74, 75, 76, 77, 78]}' \
	>"$t/long_no_newline.jsonl"
printf '%s\n' '{"timestamp": 0, "input_length": 0, "hash_ids": []}' >"$t/bad_zero_length.jsonl"
printf '%s\n' '{"input_length": 1025, "hash_ids": [1, 2]}' >"$t/bad_too_few_ids.jsonl"
printf '%s\n' '{"input_length": 5, "hash_ids": [1.5]} x' >"$t/bad_trailing_text.jsonl"
printf '%s\n' '[{"input_length": 5, "hash_ids": [1]}]' >"$t/bad_not_object.jsonl"
printf '%s\n' '{"input_length": "5", "hash_ids": [-1], "timestamp": "now"}' >"$t/bad_types.jsonl"

du -sh "$out"/* >&2
