#!/usr/bin/env bash
# check_layout.sh SRC_DIR - the module map of docs/architecture.md, enforced:
#
#   1. includes follow the direction of the map: a file may include the headers of its
#      own module and of the modules below it, never one above or beside it;
#   2. private headers stay private: a backend's headers (engine/cpu, engine/cuda), the
#      engine's backend table, the daemon's server.h and every *_impl.h / *_internal.h
#      are included only inside their own part (tests may look inside);
#   3. no #ifdef KVP_HAVE_CUDA outside the backend and device modules: the rest of the
#      tree sees CUDA only through the engine's backend table and kvp_device.h;
#   4. no source file over MAX_FILE_LINES lines and no function over MAX_FUNC_LINES
#      outside GPU kernels, apart from the files named in the exceptions below.
#
# Prints every violation as FILE:LINE: reason and exits 1 if there is any, else 0.
set -euo pipefail

src=${1:?usage: check_layout.sh SRC_DIR}
cd "$src"

MAX_FILE_LINES=1300
MAX_FUNC_LINES=150
# Files that may run past MAX_FILE_LINES (none now; see docs/architecture.md), and where
# functions may run longer: GPU kernels.
FILE_EXCEPTIONS=""
FUNC_EXCEPTIONS="engine/cuda/kernels.cu"

fail=0
say() { echo "$*"; fail=1; }

# The module of a path: its folder, with engine's backends apart.
module_of() {
	case "$1" in
	engine/cpu/*) echo engine/cpu ;;
	engine/cuda/*) echo engine/cuda ;;
	tools/bench/bench_kernels.c | tools/bench/bench_membw.c | tools/bench/bench_engine_types.c) echo tools/kernels ;;
	tools/*) echo tools ;;
	*/*) echo "${1%%/*}" ;;
	*) echo top ;;
	esac
}

# Modules each module may include from (itself included).
allowed_of() {
	case "$1" in
	common) echo "common" ;;
	proto) echo "proto common" ;;
	index) echo "index common" ;;
	device) echo "device common" ;;
	store) echo "store device common" ;;
	cache) echo "cache index store common" ;;
	tier) echo "tier index common" ;;
	events) echo "events index common" ;;
	engine) echo "engine engine/cpu common" ;;   # model.c: the CPU's bulk f16/bf16 converters
	engine/cpu) echo "engine/cpu engine common" ;;
	engine/cuda) echo "engine/cuda engine/cpu engine device common" ;;
	daemon) echo "daemon cache tier events index store proto engine common" ;;
	tools) echo "tools proto common engine index store device tier events" ;;
	# kvprefix-bench kernels times the CPU kernels directly, as the engine's tests do
	tools/kernels) echo "tools proto common engine engine/cpu index store device" ;;
	tests | fuzz) echo "*" ;;
	*) echo "" ;;
	esac
}

# Headers private to a part of the tree: the modules that may include them.
private_to() {
	case "$1" in
	engine/cpu/*) echo "engine engine/cpu engine/cuda tests tools/kernels" ;;
	engine/cuda/*) echo "engine/cuda tests" ;;
	engine/backend.h) echo "engine engine/cpu engine/cuda" ;;
	daemon/server.h | daemon/fleet.h) echo "daemon" ;;
	*_impl.h | *_internal.h) echo "$(module_of "$1") tests" ;;
	*) echo "" ;;
	esac
}

if git rev-parse --is-inside-work-tree >/dev/null 2>&1; then
	mapfile -t sources < <(git ls-files -co --exclude-standard -- '*.c' '*.h' '*.cu' |
		grep -v -e '^build' -e '^fuzz/corpus/')
else
	mapfile -t sources < <(find . -path ./build\* -prune -o \( -name '*.c' -o -name '*.h' \
		-o -name '*.cu' \) -print | sed 's#^\./##' | grep -v '^fuzz/corpus/')
fi

# header name -> its path (names are unique across the tree)
declare -A header_path
for f in "${sources[@]}"; do
	case "$f" in *.h) header_path[${f##*/}]=$f ;; esac
done

# ---- 1 and 2: includes ------------------------------------------------------------
for f in "${sources[@]}"; do
	mod=$(module_of "$f")
	allowed=$(allowed_of "$mod")
	while IFS=: read -r line inc; do
		h=${inc#*\"}
		h=${h%%\"*}
		path=${header_path[${h##*/}]:-}
		[ -n "$path" ] || continue   # a system or generated header
		hmod=$(module_of "$path")
		if [ "$allowed" != "*" ] && [[ " $allowed " != *" $hmod "* ]]; then
			say "$f:$line: $mod includes $path ($hmod): against the module map"
		fi
		priv=$(private_to "$path")
		if [ -n "$priv" ] && [[ " $priv " != *" $mod "* ]]; then
			say "$f:$line: $path is private to $priv"
		fi
	done < <(grep -n '^[[:space:]]*#[[:space:]]*include[[:space:]]*"' "$f" || true)
done

# ---- 3: CUDA only behind the backend table and the device module --------------------
for f in "${sources[@]}"; do
	case "$(module_of "$f")" in engine/cuda | device) continue ;; esac
	while IFS=: read -r line _; do
		say "$f:$line: KVP_HAVE_CUDA outside engine/cuda and device/"
	done < <(grep -n 'KVP_HAVE_CUDA' "$f" || true)
done

# ---- 4: sizes ------------------------------------------------------------------------
for f in "${sources[@]}"; do
	case "$f" in *.c | *.cu) ;; *) continue ;; esac
	n=$(wc -l <"$f")
	if [ "$n" -gt "$MAX_FILE_LINES" ] && [[ " $FILE_EXCEPTIONS " != *" $f "* ]]; then
		say "$f: $n lines, over $MAX_FILE_LINES: split it by job"
	fi
	[[ " $FUNC_EXCEPTIONS " == *" $f "* ]] && continue
	# a function body: from a '{' alone at column 0 to the next '}' at column 0
	out=$(awk -v max="$MAX_FUNC_LINES" -v file="$f" '
		/^\{/ { start = NR; name = prev; next }
		/^\}/ && start { if (NR - start - 1 > max)
				   printf "%s:%d: %s: %d lines, over %d\n", file, start, name,
					  NR - start - 1, max
				 start = 0 }
		/^[A-Za-z_]/ && !start { prev = $0 }
	' "$f")
	if [ -n "$out" ]; then
		echo "$out"
		fail=1
	fi
done

exit $fail
