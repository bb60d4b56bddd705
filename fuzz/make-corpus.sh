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
#   fuzz_events  KV event batches, valid and not: what kvprefixd's builder writes (the
#                bytes tests/events_unit.c pins), vLLM's older and map forms, bytes and
#                negative hashes, a stream of chains for the fleet index
set -euo pipefail
cd "$(dirname "$0")/.."
mk=${MKMODEL:-build-fz/kvprefix-mkmodel}
if [ ! -x "$mk" ]; then
	echo "make-corpus: $mk not found; build it first:" >&2
	echo "  cmake -S . -B build-fz -DBUILD_TESTING=OFF && cmake --build build-fz --target kvprefix-mkmodel" >&2
	exit 1
fi
out=fuzz/corpus
rm -rf "$out/fuzz_frame" "$out/fuzz_gguf" "$out/fuzz_trace" "$out/fuzz_events"
mkdir -p "$out/fuzz_frame" "$out/fuzz_gguf" "$out/fuzz_trace" "$out/fuzz_events"

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


# ---- KV event batches (msgpack, written out in hex) ----
ev_seed() {
	local name=$1 hex esc=""
	shift
	hex=$(printf '%s' "$@")
	while [ -n "$hex" ]; do
		esc+="\\x${hex:0:2}"
		hex=${hex:2}
	done
	printf '%b' "$esc" >"$out/fuzz_events/$name.bin"
}
ev_seed builder_map \
	93cb3ff80000000000009288a474797065ab426c6f636b53746f726564ac626c6f636b5f68617368 \
	65739205cd012cb1706172656e745f626c6f636b5f68617368cffffffffffffffffea9746f6b656e \
	5f6964739401ccc800ce00010000aa626c6f636b5f73697a6502a76c6f72615f6964c0a66d656469 \
	756da3435055a96c6f72615f6e616d65c083a474797065ac426c6f636b52656d6f766564ac626c6f \
	636b5f68617368657391ce00010000a66d656469756da44449534bc0
ev_seed builder_array \
	93cbbff00000000000009397ab426c6f636b53746f7265649107c0927fcc8002c0a347505593ac42 \
	6c6f636b52656d6f766564920708a347505591b0416c6c426c6f636b73436c6561726564c0
ev_seed cleared_map 93cb00000000000000009181a474797065b0416c6c426c6f636b73436c6561726564c0
ev_seed old_two_elements 92cb40280000000000009196ab426c6f636b53746f726564920a0b099601020304050603c0
ev_seed map_batch_extra_fields \
	83a27473cb4014000000000000a66576656e74739289a66d656469756da44449534ba9746f6b656e \
	5f696473924d4eaa65787472615f6b6579739281a76d6d5f68617368a361626390aa626c6f636b5f \
	73697a6502b1706172656e745f626c6f636b5f68617368c0a96c6f72615f6e616d65aa6d792d6164 \
	6170746572a474797065ab426c6f636b53746f726564a76c6f72615f696404ac626c6f636b5f6861 \
	73686573912a82ac626c6f636b5f68617368657390a474797065ac426c6f636b52656d6f766564b2 \
	646174615f706172616c6c656c5f72616e6b03
ev_seed bin_str_negative_hashes \
	93cb3ff00000000000009397ab426c6f636b53746f72656491c4200102030405060708090a0b0c0d \
	0e0f101112131415161718191a1b1c1d1e1f20c0910501c0a347505597ab426c6f636b53746f7265 \
	6494c42002030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f2021a3616263 \
	ffd3ffffffe8b7891800c4200102030405060708090a0b0c0d0e0f101112131415161718191a1b1c \
	1d1e1f20940506070801c0a343505593ac426c6f636b52656d6f76656492c4200102030405060708 \
	090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f20a3616263a3435055c0
ev_seed fleet_chain_restore \
	93cb3ff00000000000009988a474797065ab426c6f636b53746f726564ac626c6f636b5f68617368 \
	657393010203b1706172656e745f626c6f636b5f68617368c0a9746f6b656e5f6964739601020304 \
	0506aa626c6f636b5f73697a6502a76c6f72615f6964c0a66d656469756da3475055a96c6f72615f \
	6e616d65c088a474797065ab426c6f636b53746f726564ac626c6f636b5f6861736865739104b170 \
	6172656e745f626c6f636b5f6861736802a9746f6b656e5f696473920708aa626c6f636b5f73697a \
	6502a76c6f72615f6964c0a66d656469756da3475055a96c6f72615f6e616d65c088a474797065ab \
	426c6f636b53746f726564ac626c6f636b5f686173686573920506b1706172656e745f626c6f636b \
	5f68617368c0a9746f6b656e5f6964739401020304aa626c6f636b5f73697a6502a76c6f72615f69 \
	64c0a66d656469756da3435055a96c6f72615f6e616d65c083a474797065ac426c6f636b52656d6f \
	766564ac626c6f636b5f686173686573920263a66d656469756da347505588a474797065ab426c6f \
	636b53746f726564ac626c6f636b5f6861736865739101b1706172656e745f626c6f636b5f686173 \
	68c0a9746f6b656e5f696473920909aa626c6f636b5f73697a6502a76c6f72615f6964c0a66d6564 \
	69756da3475055a96c6f72615f6e616d65c088a474797065ab426c6f636b53746f726564ac626c6f \
	636b5f6861736865739107b1706172656e745f626c6f636b5f68617368cd3039a9746f6b656e5f69 \
	6473920101aa626c6f636b5f73697a6502a76c6f72615f6964c0a66d656469756da3475055a96c6f \
	72615f6e616d65c088a474797065ab426c6f636b53746f726564ac626c6f636b5f68617368657391 \
	08b1706172656e745f626c6f636b5f68617368c0a9746f6b656e5f69647393010203aa626c6f636b \
	5f73697a6503a76c6f72615f6964c0a66d656469756da3475055a96c6f72615f6e616d65c081a474 \
	797065b0416c6c426c6f636b73436c656172656488a474797065ab426c6f636b53746f726564ac62 \
	6c6f636b5f6861736865739103b1706172656e745f626c6f636b5f68617368c0a9746f6b656e5f69 \
	6473920102aa626c6f636b5f73697a6502a76c6f72615f6964c0a66d656469756da3475055a96c6f \
	72615f6e616d65c0c0
ev_seed bad_trailing_byte 93cb00000000000000009181a474797065b0416c6c426c6f636b73436c6561726564c0c0
ev_seed bad_huge_array_count 9200ddffffffffc0
ev_seed bad_token_string 93cb3ff00000000000009197ab426c6f636b53746f7265649101c09201a13202c0a3475055c0
ev_seed bad_unknown_type 93cb3ff00000000000009193ac426c6f636b557064617465649101a3475055c0


du -sh "$out"/* >&2
