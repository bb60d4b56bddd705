#!/usr/bin/env bash
# Install the Debian packages kvprefix builds and tests with (only those missing).
set -euo pipefail
# clang + libclang-rt-14-dev (libFuzzer and the sanitizer runtimes of Debian 12's clang
# 14) and llvm (llvm-symbolizer, for readable reports) are for scripts/fuzz.sh.
# libsimde-dev (headers) lets test_qdot_emulated run the AVX-512 kernels on CPUs
# without AVX-512.
# libhiredis-dev is the Redis tier's client; redis-server is started by the tests.
# libzmq3-dev and libmsgpack-dev carry the KV events; python3-zmq and python3-msgpack
# are the tests' subscribers and publishers, python3-pytest runs them.
pkgs=(build-essential cmake pkg-config libxxhash-dev libevent-dev libmimalloc-dev
      libcjson-dev libcriterion-dev libsystemd-dev libinih-dev libhiredis-dev
      redis-server clang libclang-rt-14-dev llvm libsimde-dev python3-pytest
      libzmq3-dev libmsgpack-dev python3-zmq python3-msgpack)
# promtool, from the Debian package prometheus (~100 MB with its dependencies), checks
# /metrics in test_metrics, which skips that check with a reason where it is missing:
# installed only where apt knows the package.
if apt-cache show prometheus >/dev/null 2>&1; then
	pkgs+=(prometheus)
fi
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
