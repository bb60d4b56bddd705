#!/usr/bin/env bash
# Install the Debian packages kvprefix builds and tests with (only those missing).
set -euo pipefail
pkgs=(build-essential cmake pkg-config libxxhash-dev libevent-dev libmimalloc-dev
      libcjson-dev libcriterion-dev)
missing=()
for p in "${pkgs[@]}"; do
	dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if ((${#missing[@]})); then
	echo "setup: installing ${missing[*]}" >&2
	sudo=""
	[ "$(id -u)" -eq 0 ] || sudo="sudo"
	$sudo apt-get update -qq
	DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi
