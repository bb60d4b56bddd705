#!/bin/bash
# test_install.sh BUILD_DIR SOURCE_DIR - the deployment files, installed and packaged.
#
#   (b) DESTDIR install of BUILD_DIR: every file where the layout says (paths from
#       BUILD_DIR/kvp_install_layout.sh, i.e. the prefix the build was configured with),
#       the Grafana dashboard among them;
#       the installed binaries run, a program builds against the installed headers,
#       library and pkg-config file; the sysusers.d file creates the users in a
#       scratch root; the shipped service command line (installed unit + installed
#       configuration) starts the installed daemon, socket-activated, and it answers
#   (a) systemd-analyze verify accepts the installed units (ExecStart pointed at the
#       installed binary, man: links resolved against the installed pages)
#   (c) every installed man page renders without warnings and names every option of
#       its program's --help
#   (d) cpack -G DEB builds a .deb from a build configured for /usr (BUILD_DIR itself
#       if it is one, else BUILD_DIR/test-install-deb, configured and built here, kept
#       for the next run); its fields, layout, conffiles, triggers and maintainer
#       scripts (run with stubbed systemd tools) are checked; dpkg --dry-run -i as
#       root; lintian when installed (reported, never fatal)
#
# Nothing is installed outside a temporary directory. Exit 0: all passed; 1: a check
# failed; 77 (skipped): systemd-analyze is not installed (everything else passed).
# pass and fail always return 0, so "A && pass || fail" is an if-then-else here
# shellcheck disable=SC2015,SC2016,SC2317
set -u
if [ $# -ne 2 ]; then
	echo "usage: $0 BUILD_DIR SOURCE_DIR" >&2
	exit 2
fi
build=$(cd "$1" && pwd) || exit 1
src=$(cd "$2" && pwd) || exit 1
layout="$build/kvp_install_layout.sh"
if [ ! -f "$layout" ]; then
	echo "FAIL: $layout is missing (re-run cmake)"
	exit 1
fi
# shellcheck source=/dev/null
. "$layout"

tmp=$(mktemp -d "${TMPDIR:-/tmp}/kvp-install.XXXXXX") || exit 1
daemon_pid=
cleanup() {
	if [ -n "$daemon_pid" ]; then
		kill -KILL "$daemon_pid" 2>/dev/null
		wait "$daemon_pid" 2>/dev/null
	fi
	rm -rf "$tmp"
}
trap cleanup EXIT

failed=0
skipped_analyze=0
fail() { echo "FAIL: $*"; failed=1; }
pass() { echo "ok: $*"; }
note() { echo "note: $*"; }
section() { printf '\n==== %s\n' "$*"; }

# A regular file, or a man page with or without .gz.
need_file() {
	if [ -f "$1" ]; then
		pass "${1#"$2"}"
	else
		fail "missing: ${1#"$2"}"
	fi
}
need_exec() {
	if [ -f "$1" ] && [ -x "$1" ]; then
		pass "${1#"$2"} (executable)"
	else
		fail "missing or not executable: ${1#"$2"}"
	fi
}
man_file() {	# DIR NAME -> the page's path (NAME or NAME.gz), empty if none
	if [ -f "$1/$2.gz" ]; then
		echo "$1/$2.gz"
	elif [ -f "$1/$2" ]; then
		echo "$1/$2"
	fi
}
need_man() {
	local f
	f=$(man_file "$1" "$2")
	if [ -n "$f" ]; then
		pass "${f#"$3"}"
	else
		fail "missing man page: ${1#"$3"}/$2[.gz]"
	fi
}

# ---------------------------------------------------------------------------------------
section "(b) DESTDIR=$tmp/root cmake --install $build (prefix $KVP_PREFIX)"
root="$tmp/root"
if ! DESTDIR="$root" "$KVP_CMAKE" --install "$build" >"$tmp/install.log" 2>&1; then
	cat "$tmp/install.log"
	fail "cmake --install failed"
	exit 1
fi
tail -n 3 "$tmp/install.log"

need_exec "$root$KVP_SBINDIR/kvprefixd" "$root"
for b in kvprefix kvprefix-stat kvprefix-bench kvprefix-mkmodel; do
	need_exec "$root$KVP_BINDIR/$b" "$root"
done
need_file "$root$KVP_LIBDIR/libkvprefix.so.$KVP_VERSION" "$root"
for l in libkvprefix.so "libkvprefix.so.$KVP_SOVERSION"; do
	if [ -L "$root$KVP_LIBDIR/$l" ] && [ -e "$root$KVP_LIBDIR/$l" ]; then
		pass "$KVP_LIBDIR/$l -> $(readlink "$root$KVP_LIBDIR/$l")"
	else
		fail "missing or dangling link: $KVP_LIBDIR/$l"
	fi
done
need_file "$root$KVP_INCLUDEDIR/kvprefix.h" "$root"
need_file "$root$KVP_INCLUDEDIR/kvp_status.h" "$root"
need_file "$root$KVP_INCLUDEDIR/kvp_wire.h" "$root"
need_file "$root$KVP_LIBDIR/pkgconfig/kvprefix.pc" "$root"
need_file "$root$KVP_UNITDIR/kvprefixd.service" "$root"
need_file "$root$KVP_UNITDIR/kvprefixd.socket" "$root"
need_file "$root$KVP_SYSUSERSDIR/kvprefix.conf" "$root"
need_file "$root$KVP_CONFDIR/kvprefixd.conf" "$root"
need_man "$root$KVP_MANDIR/man8" kvprefixd.8 "$root"
need_man "$root$KVP_MANDIR/man1" kvprefix.1 "$root"
need_man "$root$KVP_MANDIR/man1" kvprefix-stat.1 "$root"
need_file "$root$KVP_DATADIR/kvprefix/grafana/kvprefix-dashboard.json" "$root"
# the dashboard as installed is the one in the tree (tests/check_dashboard.py checks that)
if cmp -s "$src/etc/grafana/kvprefix-dashboard.json" \
	"$root$KVP_DATADIR/kvprefix/grafana/kvprefix-dashboard.json"; then
	pass "the installed Grafana dashboard is etc/grafana/kvprefix-dashboard.json"
else
	fail "the installed Grafana dashboard differs from etc/grafana/kvprefix-dashboard.json"
fi

# The installed service names the installed daemon and configuration.
unit="$root$KVP_UNITDIR/kvprefixd.service"
execstart=$(sed -n 's/^ExecStart=//p' "$unit" 2>/dev/null)
case "$execstart" in
"$KVP_SBINDIR/kvprefixd --config $KVP_CONFDIR/kvprefixd.conf"*)
	pass "ExecStart=$execstart" ;;
*)
	fail "the installed service's ExecStart ('$execstart') does not name $KVP_SBINDIR/kvprefixd --config $KVP_CONFDIR/kvprefixd.conf" ;;
esac

# The installed programs run (the tools find libkvprefix in the installed libdir).
export LD_LIBRARY_PATH="$root$KVP_LIBDIR${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
if v=$("$root$KVP_SBINDIR/kvprefixd" --version 2>&1) && [ "${v#kvprefixd "$KVP_VERSION"}" != "$v" ]; then
	pass "kvprefixd --version: $v"
else
	fail "installed kvprefixd --version: $v"
fi
for b in kvprefix kvprefix-stat kvprefix-bench kvprefix-mkmodel; do
	if "$root$KVP_BINDIR/$b" --help >/dev/null 2>"$tmp/err"; then
		pass "$b --help"
	else
		cat "$tmp/err"
		fail "installed $b --help"
	fi
done

# A client builds against the installed headers, pkg-config file and library.
if command -v pkg-config >/dev/null && [ -x "$KVP_C_COMPILER" ]; then
	cat >"$tmp/client.c" <<'EOF'
#include <stdio.h>
#include <kvprefix.h>
#include <kvp_status.h>
#include <kvp_wire.h>
int main(void)
{
	char path[256];
	if (KVP_PROTO_MAGIC != 0x3150564Bu || KVP_T_GENERATE != 0x07)
		return 1;
	if (kvp_client_default_socket(path, sizeof(path)) != 0)
		return 1;
	printf("%s\n", path);
	return 0;
}
EOF
	san=
	if [ "$KVP_SANITIZE" = ON ]; then
		san="-fsanitize=address,undefined"	# the library needs the ASan runtime first
	fi
	# shellcheck disable=SC2086
	if flags=$(PKG_CONFIG_SYSROOT_DIR="$root" PKG_CONFIG_LIBDIR="$root$KVP_LIBDIR/pkgconfig" \
		pkg-config --cflags --libs kvprefix 2>&1) &&
		"$KVP_C_COMPILER" -std=c11 -Wall -Werror $san -o "$tmp/client" "$tmp/client.c" $flags 2>&1 &&
		out=$("$tmp/client"); then
		pass "a client builds with pkg-config ($flags) and runs ($out)"
	else
		fail "building a client against the installed library: $flags"
	fi
else
	note "pkg-config or the C compiler is missing: the client build is not checked"
fi

# sysusers.d: the users and groups, created in a scratch root.
if command -v systemd-sysusers >/dev/null; then
	mkdir -p "$tmp/sysroot/etc"
	if systemd-sysusers --root="$tmp/sysroot" "$root$KVP_SYSUSERSDIR/kvprefix.conf" >"$tmp/su.log" 2>&1; then
		cat "$tmp/su.log"
		if grep -q '^kvprefix:x:[0-9]*:[0-9]*:kvprefix cache daemon:/nonexistent:' "$tmp/sysroot/etc/passwd" &&
			grep -q '^kvprefix:x:' "$tmp/sysroot/etc/group" &&
			grep -q '^kvprefix-clients:x:' "$tmp/sysroot/etc/group"; then
			pass "sysusers.d creates user kvprefix and groups kvprefix, kvprefix-clients"
		else
			cat "$tmp/sysroot/etc/passwd" "$tmp/sysroot/etc/group"
			fail "sysusers.d did not create the expected users and groups"
		fi
	else
		cat "$tmp/su.log"
		fail "systemd-sysusers --root refused $KVP_SYSUSERSDIR/kvprefix.conf"
	fi
else
	note "systemd-sysusers is missing: the sysusers.d file is not checked"
fi

# The shipped command line starts: the installed unit's ExecStart with the installed
# configuration, as systemd would run it (socket-activated when systemd-socket-activate
# is installed), answers a ping and stops cleanly on SIGTERM.
start_args=$(printf '%s\n' "$execstart" | sed "s|\\\$KVPREFIXD_ARGS||; s|$KVP_SBINDIR/|$root$KVP_SBINDIR/|; s|$KVP_CONFDIR/|$root$KVP_CONFDIR/|")
sock="$tmp/run/kvprefixd.sock"
mkdir -p "$tmp/run"
chmod 0755 "$tmp/run"
# shellcheck disable=SC2086
set -- $start_args
if [ -x /usr/bin/systemd-socket-activate ]; then
	how="socket-activated by systemd-socket-activate"
	/usr/bin/systemd-socket-activate -l "$sock" "$@" >"$tmp/daemon.log" 2>&1 &
else
	how="with --socket (systemd-socket-activate is not installed)"
	"$@" --socket "$sock" >"$tmp/daemon.log" 2>&1 &
fi
daemon_pid=$!
ok=0
for _ in $(seq 1 100); do
	if [ -S "$sock" ] && "$root$KVP_BINDIR/kvprefix" ping --socket "$sock" >"$tmp/ping.out" 2>&1; then
		ok=1
		break
	fi
	kill -0 "$daemon_pid" 2>/dev/null || break
	sleep 0.1
done
if [ "$ok" = 1 ]; then
	pass "the shipped service command line serves, $how: $(head -n 1 "$tmp/ping.out")"
	kill -TERM "$daemon_pid"
	wait "$daemon_pid"
	rc=$?
	daemon_pid=
	if [ "$rc" = 0 ]; then
		pass "SIGTERM: exit status 0"
	else
		cat "$tmp/daemon.log"
		fail "SIGTERM: exit status $rc"
	fi
else
	kill -TERM "$daemon_pid" 2>/dev/null
	wait "$daemon_pid" 2>/dev/null
	daemon_pid=
	echo "--- $*"
	cat "$tmp/daemon.log"
	fail "the shipped service command line does not start a serving daemon (installed $KVP_CONFDIR/kvprefixd.conf must choose a mode, e.g. 'index-only = true')"
fi

# the disk tier's directory: the one the sandbox (ProtectSystem=strict) lets it write
if grep -q '^CacheDirectory=kvprefix$' "$root$KVP_UNITDIR/kvprefixd.service" &&
	grep -q '^ProtectSystem=strict$' "$root$KVP_UNITDIR/kvprefixd.service" &&
	grep -q 'set disk-cache = /var/cache/kvprefix' "$root$KVP_CONFDIR/kvprefixd.conf"; then
	pass "kvprefixd.service: CacheDirectory=kvprefix under ProtectSystem=strict, named in the config"
else
	fail "kvprefixd.service needs CacheDirectory=kvprefix (the disk tier's only writable place) and kvprefixd.conf must name it"
fi

# ---------------------------------------------------------------------------------------
section "(a) systemd-analyze verify"
if command -v systemd-analyze >/dev/null; then
	# verify wants ExecStart= to exist: point it at the installed binary; Documentation=
	# man:kvprefixd(8) is looked up with man, through MANPATH.
	mkdir -p "$tmp/units"
	for u in kvprefixd.service kvprefixd.socket; do
		sed "s|$KVP_SBINDIR/kvprefixd|$root$KVP_SBINDIR/kvprefixd|" \
			"$root$KVP_UNITDIR/$u" >"$tmp/units/$u"
	done
	MANPATH="$root$KVP_MANDIR:" SYSTEMD_LOG_COLOR=0 systemd-analyze verify \
		"$tmp/units/kvprefixd.socket" "$tmp/units/kvprefixd.service" >"$tmp/verify.log" 2>&1
	rc=$?
	echo "--- systemd-analyze verify (exit status $rc):"
	cat "$tmp/verify.log"
	echo "---"
	if [ "$rc" != 0 ]; then
		fail "systemd-analyze verify exit status $rc"
	elif grep -q 'kvprefix' "$tmp/verify.log"; then
		fail "systemd-analyze verify reports on the kvprefix units"
	else
		pass "systemd-analyze verify: kvprefixd.socket, kvprefixd.service"
	fi
else
	note "SKIP (a): systemd-analyze is not installed (package systemd)"
	skipped_analyze=1
fi

# ---------------------------------------------------------------------------------------
section "(c) man pages"
# Each page names every long option its program's --help lists (and its commands').
help_opts() {	# the long options in "$@"'s --help output
	"$@" --help 2>/dev/null | grep -o -- '--[a-z][a-z0-9-]*' | sort -u
}
page_text() {	# the troff source with \- as -
	if [ "${1%.gz}" != "$1" ]; then gzip -dc "$1"; else cat "$1"; fi | sed 's/\\-/-/g'
}
check_options() {	# PAGE PROGRAM-ARGV...
	local page=$1 missing="" o
	shift
	for o in $(help_opts "$@"); do
		page_text "$page" | grep -q -- "$o\\b" || missing="$missing $o"
	done
	if [ -n "$missing" ]; then
		fail "$(basename "$page") does not document:$missing"
	else
		pass "$(basename "$page") documents every option of '$*' --help"
	fi
}
p8=$(man_file "$root$KVP_MANDIR/man8" kvprefixd.8)
p1=$(man_file "$root$KVP_MANDIR/man1" kvprefix.1)
p1s=$(man_file "$root$KVP_MANDIR/man1" kvprefix-stat.1)
if [ -n "$p8" ] && [ -n "$p1" ] && [ -n "$p1s" ]; then
	check_options "$p8" "$root$KVP_SBINDIR/kvprefixd"
	check_options "$p1s" "$root$KVP_BINDIR/kvprefix-stat"
	check_options "$p1" "$root$KVP_BINDIR/kvprefix"
	for c in lookup insert generate stats ping admin; do
		check_options "$p1" "$root$KVP_BINDIR/kvprefix" "$c"
		page_text "$p1" | grep -q "^\\.B $c\$" || fail "kvprefix.1 has no entry for the command $c"
	done
	for p in "$p8" "$p1" "$p1s"; do
		for s in NAME SYNOPSIS DESCRIPTION OPTIONS "EXIT STATUS" "SEE ALSO"; do
			page_text "$p" | grep -q "^\\.SH \"\\{0,1\\}$s\"\\{0,1\\}\$" ||
				fail "$(basename "$p") has no $s section"
		done
	done
	for s in FILES SIGNALS; do
		page_text "$p8" | grep -q "^\\.SH $s\$" || fail "kvprefixd.8 has no $s section"
	done
	if command -v man >/dev/null; then
		for p in "$p8" "$p1" "$p1s"; do
			MANWIDTH=80 LC_ALL=C.UTF-8 man --warnings -l "$p" >"$tmp/man.out" 2>"$tmp/man.err"
			rc=$?
			if [ "$rc" = 0 ] && [ ! -s "$tmp/man.err" ] && [ -s "$tmp/man.out" ]; then
				pass "man --warnings -l $(basename "$p"): $(wc -l <"$tmp/man.out") lines, no warnings"
			else
				cat "$tmp/man.err"
				fail "man --warnings -l $(basename "$p") (exit status $rc)"
			fi
		done
	else
		note "man is not installed: the pages are not rendered"
	fi
fi

# ---------------------------------------------------------------------------------------
section "(d) Debian package"
if ! command -v dpkg-deb >/dev/null || [ ! -x "$KVP_CPACK" ]; then
	note "SKIP (d): dpkg-deb or cpack is not installed"
else
	arch=$(dpkg --print-architecture)
	if [ "$KVP_PREFIX" = /usr ] && [ "$KVP_SANITIZE" != ON ]; then
		pkgbuild="$build"
	else
		# cpack refuses a build configured for another prefix
		if "$KVP_CPACK" -G DEB --config "$build/CPackConfig.cmake" -B "$tmp/refused" \
			>"$tmp/refused.log" 2>&1; then
			fail "cpack built a .deb from a build configured for $KVP_PREFIX"
		elif tr -s ' \n' '  ' <"$tmp/refused.log" |
			grep -q "this build is configured for $KVP_PREFIX; a .deb needs a build configured with -DCMAKE_INSTALL_PREFIX=/usr"; then
			pass "cpack refuses the $KVP_PREFIX build (a .deb needs -DCMAKE_INSTALL_PREFIX=/usr)"
		else
			cat "$tmp/refused.log"
			fail "cpack failed on the $KVP_PREFIX build without saying why"
		fi
		pkgbuild="$build/test-install-deb"
		echo "building the package build: $pkgbuild (-DCMAKE_INSTALL_PREFIX=/usr, Release, no tests)"
		if ! { "$KVP_CMAKE" -S "$src" -B "$pkgbuild" -DCMAKE_INSTALL_PREFIX=/usr \
			-DCMAKE_BUILD_TYPE=Release -DBUILD_TESTING=OFF -DKVP_SANITIZE=OFF \
			-DCMAKE_C_COMPILER="$KVP_C_COMPILER" &&
			"$KVP_CMAKE" --build "$pkgbuild" -j "$(nproc)"; } >"$tmp/pkgbuild.log" 2>&1; then
			tail -n 40 "$tmp/pkgbuild.log"
			fail "the package build failed"
			pkgbuild=
		fi
	fi
	deb=
	if [ -n "$pkgbuild" ]; then
		echo "--- cpack -G DEB --config $pkgbuild/CPackConfig.cmake"
		"$KVP_CPACK" -G DEB --config "$pkgbuild/CPackConfig.cmake" -B "$tmp/deb" 2>&1 | tee "$tmp/cpack.log"
		deb=$(find "$tmp/deb" -maxdepth 1 -name 'kvprefix_*.deb' | head -n 1)
		if [ -n "$deb" ]; then
			pass "cpack built $(basename "$deb")"
		else
			fail "cpack built no .deb"
		fi
		if grep -qi 'warning' "$tmp/cpack.log"; then
			fail "cpack warned"
		fi
	fi
	if [ -n "$deb" ]; then
		echo "--- dpkg-deb -I"
		dpkg-deb -I "$deb"
		echo "--- dpkg-deb -c"
		dpkg-deb -c "$deb"
		echo "---"
		field() { dpkg-deb -f "$deb" "$1"; }
		[ "$(field Package)" = kvprefix ] && pass "Package: kvprefix" || fail "Package: $(field Package)"
		[ "$(field Version)" = "$KVP_VERSION" ] && pass "Version: $KVP_VERSION" || fail "Version: $(field Version)"
		[ "$(field Architecture)" = "$arch" ] && pass "Architecture: $arch" || fail "Architecture: $(field Architecture)"
		[ -n "$(field Maintainer)" ] && pass "Maintainer: $(field Maintainer)" || fail "no Maintainer"
		depends=$(field Depends)
		for d in libc6 'libevent-\(core-\)\{0,1\}2\.1-7' libevent-pthreads-2.1-7 \
			libmimalloc2.0 libcjson1 libxxhash0 libinih1 libsystemd0; do
			printf '%s\n' "$depends" | tr ',' '\n' | sed 's/^ *//' | grep -q "^$d\\b" ||
				fail "Depends lacks $d: $depends"
		done
		pass "Depends: $depends"

		x="$tmp/debroot"
		dpkg-deb -x "$deb" "$x"
		need_exec "$x/usr/sbin/kvprefixd" "$x"
		for b in kvprefix kvprefix-stat kvprefix-bench kvprefix-mkmodel; do
			need_exec "$x/usr/bin/$b" "$x"
		done
		# the package build's libdir: /usr/lib/<multiarch> on Debian
		# shellcheck source=/dev/null
		libdir=$(. "$pkgbuild/kvp_install_layout.sh" && echo "$KVP_LIBDIR")
		case "$libdir" in
		/usr/lib/*-*) pass "libdir $libdir" ;;
		*) fail "the package's libdir is $libdir, not /usr/lib/<multiarch>" ;;
		esac
		need_file "$x$libdir/libkvprefix.so.$KVP_VERSION" "$x"
		for l in libkvprefix.so "libkvprefix.so.$KVP_SOVERSION"; do
			[ -L "$x$libdir/$l" ] && [ -e "$x$libdir/$l" ] && pass "$libdir/$l (link)" ||
				fail "missing or dangling link: $libdir/$l"
		done
		need_file "$x/usr/include/kvprefix.h" "$x"
		need_file "$x/usr/include/kvp_status.h" "$x"
		need_file "$x/usr/include/kvp_wire.h" "$x"
		need_file "$x$libdir/pkgconfig/kvprefix.pc" "$x"
		grep -q '^prefix=/usr$' "$x$libdir/pkgconfig/kvprefix.pc" || fail "kvprefix.pc: prefix is not /usr"
		need_file "$x/usr/lib/systemd/system/kvprefixd.service" "$x"
		need_file "$x/usr/lib/systemd/system/kvprefixd.socket" "$x"
		need_file "$x/usr/lib/sysusers.d/kvprefix.conf" "$x"
		need_file "$x/etc/kvprefix/kvprefixd.conf" "$x"
		need_file "$x/usr/share/man/man8/kvprefixd.8.gz" "$x"
		need_file "$x/usr/share/man/man1/kvprefix.1.gz" "$x"
		need_file "$x/usr/share/man/man1/kvprefix-stat.1.gz" "$x"
		need_file "$x/usr/share/kvprefix/grafana/kvprefix-dashboard.json" "$x"
		grep -qx 'ExecStart=/usr/sbin/kvprefixd --config /etc/kvprefix/kvprefixd.conf $KVPREFIXD_ARGS' \
			"$x/usr/lib/systemd/system/kvprefixd.service" &&
			pass "the packaged service runs /usr/sbin/kvprefixd --config /etc/kvprefix/kvprefixd.conf" ||
			fail "the packaged service's ExecStart: $(grep '^ExecStart=' "$x/usr/lib/systemd/system/kvprefixd.service")"
		stray=$(find "$x" -mindepth 1 -maxdepth 1 ! -name usr ! -name etc)
		[ -z "$stray" ] && pass "nothing outside /usr and /etc" || fail "unexpected top-level paths: $stray"

		ctl="$tmp/control"
		dpkg-deb -e "$deb" "$ctl"
		grep -qx /etc/kvprefix/kvprefixd.conf "$ctl/conffiles" 2>/dev/null &&
			pass "conffiles: /etc/kvprefix/kvprefixd.conf" || fail "conffiles does not list /etc/kvprefix/kvprefixd.conf"
		grep -qx 'activate-noawait ldconfig' "$ctl/triggers" 2>/dev/null &&
			pass "triggers: activate-noawait ldconfig" || fail "no ldconfig trigger"
		grep -q "^libkvprefix $KVP_SOVERSION kvprefix" "$ctl/shlibs" 2>/dev/null &&
			pass "shlibs: $(cat "$ctl/shlibs")" || fail "shlibs does not name libkvprefix $KVP_SOVERSION"
		for s in postinst prerm postrm; do
			if [ -x "$ctl/$s" ] && sh -n "$ctl/$s"; then
				pass "$s: executable, valid sh"
			else
				fail "$s: missing, not executable or not valid sh"
			fi
		done

		# The maintainer scripts, with every tool they may call stubbed (nothing on this
		# machine changes): what they call, with and without systemd running.
		stubs="$tmp/stubs"
		mkdir -p "$stubs"
		calls="$tmp/calls"
		for t in systemd-sysusers systemctl deb-systemd-helper deb-systemd-invoke adduser addgroup; do
			printf '#!/bin/sh\necho "%s $*" >>"%s"\nexit 0\n' "$t" "$calls" >"$stubs/$t"
			chmod +x "$stubs/$t"
		done
		printf '#!/bin/sh\nexit 2\n' >"$stubs/getent"
		chmod +x "$stubs/getent"
		run_script() {	# SCRIPT ARGS...: exit status; the calls are in $calls
			: >"$calls"
			env -i PATH="$stubs" /bin/sh "$ctl/$1" "${@:2}" >"$tmp/script.out" 2>&1
		}
		if [ -d /run/systemd/system ]; then booted=1; else booted=0; fi
		if run_script postinst configure; then
			grep -qx 'systemd-sysusers kvprefix.conf' "$calls" || fail "postinst configure: no systemd-sysusers kvprefix.conf"
			grep -qx 'deb-systemd-helper enable kvprefixd.socket' "$calls" &&
				grep -qx 'deb-systemd-helper enable kvprefixd.service' "$calls" ||
				fail "postinst configure: the units are not enabled"
			if [ "$booted" = 1 ]; then
				grep -qx 'systemctl --system daemon-reload' "$calls" &&
					grep -qx 'deb-systemd-invoke start kvprefixd.socket kvprefixd.service' "$calls" ||
					fail "postinst configure (systemd running): no daemon-reload or start"
			else
				grep -q '^systemctl\|^deb-systemd-invoke' "$calls" &&
					fail "postinst configure (no systemd running) calls systemctl or deb-systemd-invoke"
			fi
			pass "postinst configure: $(tr '\n' ';' <"$calls")"
		else
			cat "$tmp/script.out"
			fail "postinst configure failed"
		fi
		if run_script postinst configure 0.0.1; then
			if [ "$booted" = 1 ]; then
				grep -qx 'deb-systemd-invoke try-restart kvprefixd.service' "$calls" ||
					fail "postinst upgrade (systemd running): the service is not restarted"
			fi
			pass "postinst configure 0.0.1 (upgrade): $(tr '\n' ';' <"$calls")"
		else
			cat "$tmp/script.out"
			fail "postinst upgrade failed"
		fi
		# without systemd-sysusers: adduser/addgroup
		rm "$stubs/systemd-sysusers"
		if run_script postinst configure; then
			grep -q '^adduser --system .* kvprefix$' "$calls" &&
				grep -qx 'addgroup --system --quiet kvprefix-clients' "$calls" ||
				fail "postinst without systemd-sysusers does not fall back to adduser"
			pass "postinst configure, no systemd-sysusers: $(tr '\n' ';' <"$calls")"
		else
			cat "$tmp/script.out"
			fail "postinst without systemd-sysusers failed"
		fi
		for args in "prerm remove" "postrm remove" "postrm purge" "prerm upgrade 0.1.1" "postrm upgrade 0.1.1"; do
			# shellcheck disable=SC2086
			if run_script $args; then
				pass "$args: $(tr '\n' ';' <"$calls")"
			else
				cat "$tmp/script.out"
				fail "$args failed"
			fi
		done

		if [ "$(id -u)" = 0 ]; then
			echo "--- dpkg --dry-run -i $(basename "$deb")"
			if dpkg --dry-run -i "$deb" 2>&1; then
				pass "dpkg --dry-run -i"
			else
				fail "dpkg --dry-run -i"
			fi
		else
			note "not root: dpkg --dry-run -i not run"
		fi
		if command -v lintian >/dev/null; then
			echo "--- lintian (reported, not checked)"
			lintian --no-tag-display-limit "$deb" 2>&1 || true
		else
			note "lintian is not installed"
		fi
	fi
fi

echo
if [ "$failed" != 0 ]; then
	echo "test_install: FAILED"
	exit 1
fi
if [ "$skipped_analyze" = 1 ]; then
	echo "test_install: passed, but systemd-analyze verify was skipped"
	exit 77
fi
echo "test_install: passed"
exit 0
