"""The default socket path and the checks of whom a client talks to, as libkvprefix
makes them: the environment, the /tmp directory, SO_PEERCRED and KVP_SERVER_UID."""

from __future__ import annotations

import errno
import os
import re
import shutil
import socket
import subprocess
import sys

import pytest

import kvprefix
from kvprefix import _peer, _sockpath
from kvp_testlib import SOURCE_DIR, Daemon, kvprefixd

NOBODY = (65534, 65534)
as_root = pytest.mark.skipif(os.geteuid() != 0, reason="needs root to run a daemon as another user")


def _daemon_default(env):
    """The default socket path kvprefixd --help names, in environment env."""
    out = subprocess.run([kvprefixd(), "--help"], env=env, check=True, timeout=30,
                         stdout=subprocess.PIPE).stdout.decode()
    m = re.search(r"--socket PATH\s+Unix socket to listen on \(default (\S+)\)", out)
    assert m, out
    return m.group(1)


@pytest.mark.parametrize("xdg", [None, "", "relative/dir", "/run/user/4242", "/x/y/"])
def test_default_path_as_the_daemon(monkeypatch, xdg):
    env = {k: v for k, v in os.environ.items() if k != "XDG_RUNTIME_DIR"}
    if xdg is not None:
        env["XDG_RUNTIME_DIR"] = xdg
    assert kvprefix.default_socket_path(env) == _daemon_default(env)
    monkeypatch.delenv("XDG_RUNTIME_DIR", raising=False)
    if xdg is not None:
        monkeypatch.setenv("XDG_RUNTIME_DIR", xdg)
    assert kvprefix.default_socket_path() == _daemon_default(env)


def test_default_path_table():
    p = _sockpath.default_socket_path
    assert p({"XDG_RUNTIME_DIR": "/run/user/7"}, 7) == "/run/user/7/kvprefix/kvprefixd.sock"
    assert p({"XDG_RUNTIME_DIR": "/run/user/7"}, 0) == "/run/user/7/kvprefix/kvprefixd.sock"
    assert p({}, 0) == "/run/kvprefix/kvprefixd.sock"
    assert p({"XDG_RUNTIME_DIR": "run"}, 1000) == "/tmp/kvprefix-1000/kvprefixd.sock"
    assert p({"XDG_RUNTIME_DIR": ""}, 1000) == "/tmp/kvprefix-1000/kvprefixd.sock"
    assert _sockpath.default_socket_tmpdir({}, 1000) == "/tmp/kvprefix-1000"
    assert _sockpath.default_socket_tmpdir({}, 0) is None
    assert _sockpath.default_socket_tmpdir({"XDG_RUNTIME_DIR": "/r"}, 1000) is None


def test_connect_by_xdg_runtime_dir(monkeypatch, tmp_path):
    """Client() with no path finds a daemon at $XDG_RUNTIME_DIR/kvprefix/kvprefixd.sock."""
    xdg = tmp_path / "xdg"
    (xdg / "kvprefix").mkdir(parents=True, mode=0o700)
    d = Daemon(["--block-tokens", "4"], socket_path=str(xdg / "kvprefix" / "kvprefixd.sock"))
    try:
        monkeypatch.setenv("XDG_RUNTIME_DIR", str(xdg))
        with kvprefix.Client() as c:
            assert c.socket_path == str(xdg / "kvprefix" / "kvprefixd.sock")
            assert c.hello().block_tokens == 4
        monkeypatch.setenv("XDG_RUNTIME_DIR", str(tmp_path / "elsewhere"))
        with pytest.raises(kvprefix.KvprefixConnectionError) as ei:
            kvprefix.Client()
        assert ei.value.errno == errno.ENOENT and "elsewhere" in ei.value.message
    finally:
        d.stop_clean()


@pytest.fixture
def fake_user_tmpdir(monkeypatch):
    """A user with no XDG_RUNTIME_DIR and an unused uid, whose default socket directory
    /tmp/kvprefix-<uid> the test makes; removed after."""
    uid = 3999000 + os.getpid() % 1000
    path = "/tmp/kvprefix-%d" % uid
    monkeypatch.delenv("XDG_RUNTIME_DIR", raising=False)
    monkeypatch.setattr(os, "geteuid", lambda: uid)
    shutil.rmtree(path, ignore_errors=True)
    yield uid, path
    shutil.rmtree(path, ignore_errors=True)


@pytest.mark.parametrize("mode, why", [(0o777, "writable by every user"),
                                        (0o1777, "writable by every user"),
                                        (0o770, "writable by its group")])
def test_unsafe_tmp_directory_refused(fake_user_tmpdir, mode, why):
    uid, path = fake_user_tmpdir
    os.mkdir(path)
    os.chmod(path, mode)
    with pytest.raises(kvprefix.UntrustedServerError) as ei:
        kvprefix.Client()
    assert ei.value.code == 12 and why in ei.value.message and path in ei.value.message


def test_tmp_symlink_refused(fake_user_tmpdir, tmp_path):
    uid, path = fake_user_tmpdir
    os.symlink(str(tmp_path), path)
    try:
        with pytest.raises(kvprefix.UntrustedServerError) as ei:
            kvprefix.Client()
        assert "symbolic link" in ei.value.message
    finally:
        os.unlink(path)


@pytest.mark.skipif(os.geteuid() != 0, reason="the directory must belong to root or the uid")
def test_safe_tmp_directory_used(fake_user_tmpdir):
    uid, path = fake_user_tmpdir
    os.mkdir(path, 0o700)
    d = Daemon(["--block-tokens", "4"], socket_path=path + "/kvprefixd.sock")
    try:
        with kvprefix.Client() as c:
            assert c.socket_path == path + "/kvprefixd.sock" and c.ping() > 0
    finally:
        d.stop_clean()


def test_socket_dir_problem(tmp_path):
    me = os.geteuid()
    d = tmp_path / "d"
    d.mkdir(mode=0o700)
    assert _sockpath.socket_dir_problem(str(d), me) is None
    os.chmod(d, 0o1777)
    assert "every user" in _sockpath.socket_dir_problem(str(d), me)
    assert _sockpath.socket_dir_problem(str(d), me, allow_sticky=True) is None
    os.chmod(d, 0o700)
    if me == 0:
        os.chown(d, 4242, 4242)
        assert "belongs to uid 4242" in _sockpath.socket_dir_problem(str(d), me)
    else:
        assert "belongs to uid %d" % me in _sockpath.socket_dir_problem(str(d), me + 1)
    f = tmp_path / "f"
    f.write_text("")
    assert "not a directory" in _sockpath.socket_dir_problem(str(f), me)
    assert _sockpath.socket_dir_problem(str(tmp_path / "missing"), me) is None


def test_path_too_long():
    with pytest.raises(kvprefix.TooBigError):
        kvprefix.Client("/tmp/" + "x" * 103)


def test_no_such_socket(tmp_path):
    with pytest.raises(kvprefix.KvprefixConnectionError) as ei:
        kvprefix.Client(tmp_path / "none.sock")
    assert ei.value.errno == errno.ENOENT and ei.value.code == 8


# ---- whom the client talks to ---------------------------------------------------------------

def test_trust_table():
    t = _peer.is_trusted
    assert t(0, euid=1000) and t(1000, euid=1000)
    assert not t(1001, euid=1000)
    assert t(1001, euid=1000, server_uid=1001) and t(1001, euid=1000, env_uid=1001)
    assert t(1001, euid=1000, service=1001)
    assert not t(1001, euid=1000, server_uid=5, env_uid=6, service=7)


def test_env_server_uid():
    f = _peer.env_server_uid
    assert f({}) is None and f({"KVP_SERVER_UID": ""}) is None
    assert f({"KVP_SERVER_UID": "0"}) == 0 and f({"KVP_SERVER_UID": "4294967294"}) == 4294967294
    for bad in ("4294967295", "-1", "+1", "1 ", " 1", "0x10", "abc", "\u0663"):
        with pytest.raises(kvprefix.InvalidArgumentError):
            f({"KVP_SERVER_UID": bad})


def test_check_server_against_another_euid(index_daemon):
    """The check itself, on a real connection: the daemon runs as this process's user;
    a client that runs as another (non-root) user must refuse it, unless told."""
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        s.connect(index_daemon.socket)
        me = os.geteuid()
        assert _peer.peer_cred(s).uid == me
        assert _peer.check_server(s, "x", euid=me, environ={}) == me
        if me == 0:
            return      # root serves: trusted by everyone; the daemon-as-nobody test covers it
        with pytest.raises(kvprefix.UntrustedServerError) as ei:
            _peer.check_server(s, "x", euid=me + 1, environ={})
        assert ei.value.uid == me
        assert _peer.check_server(s, "x", me, euid=me + 1, environ={}) == me
        assert _peer.check_server(s, "x", euid=me + 1, environ={"KVP_SERVER_UID": str(me)}) == me
    finally:
        s.close()


@pytest.fixture(scope="module")
def nobody_daemon():
    """An index-only kvprefixd running as nobody (65534), its socket open to all."""
    if os.geteuid() != 0:
        pytest.skip("needs root to run a daemon as another user")
    d = Daemon(["--block-tokens", "4", "--socket-mode", "0666"], user=NOBODY)
    os.chmod(d.dir, 0o755)
    yield d
    d.stop_clean()


@as_root
def test_daemon_of_another_user_refused(nobody_daemon, monkeypatch):
    monkeypatch.delenv("KVP_SERVER_UID", raising=False)
    with pytest.raises(kvprefix.UntrustedServerError) as ei:
        kvprefix.Client(nobody_daemon.socket)
    assert ei.value.uid == NOBODY[0] and ei.value.code == 12
    assert "KVP_SERVER_UID=65534" in ei.value.message
    with kvprefix.Client(nobody_daemon.socket, server_uid=NOBODY[0]) as c:
        assert c.ping() > 0
    monkeypatch.setenv("KVP_SERVER_UID", str(NOBODY[0]))
    with kvprefix.Client(nobody_daemon.socket) as c:
        assert c.hello().tenant == 0
    monkeypatch.setenv("KVP_SERVER_UID", "nobody")
    with pytest.raises(kvprefix.InvalidArgumentError):
        kvprefix.Client(nobody_daemon.socket, server_uid=NOBODY[0])


def _world_runnable(path: str) -> bool:
    """Whether any user can run path: it and every directory above it are o+x."""
    path = os.path.realpath(path)
    while True:
        if not os.stat(path).st_mode & 0o001:
            return False
        if path == "/":
            return True
        path = os.path.dirname(path)


def _run_as_nobody(code: str) -> subprocess.CompletedProcess:
    if not _world_runnable(sys.executable) or not _world_runnable(str(SOURCE_DIR)):
        pytest.skip("%s or %s cannot be run by another user" % (sys.executable, SOURCE_DIR))
    env = dict(os.environ, PYTHONPATH=str(SOURCE_DIR / "clients" / "python"),
               PYTHONDONTWRITEBYTECODE="1")
    return subprocess.run([sys.executable, "-B", "-c", code], user=NOBODY[0], group=NOBODY[1],
                          extra_groups=[], env=env, cwd="/", timeout=60,
                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT)


@as_root
def test_root_daemon_trusted_by_a_user_who_may_not_admin():
    """A user (nobody) trusts a root daemon, and its ADMIN gets EPERM."""
    d = Daemon(["--block-tokens", "4", "--socket-mode", "0666"])
    try:
        os.chmod(d.dir, 0o755)
        out = _run_as_nobody(
            "import kvprefix\n"
            "with kvprefix.Client(%r) as c:\n"
            "    print('tenant', c.hello().tenant)\n"
            "    try:\n"
            "        c.admin_clear()\n"
            "    except kvprefix.PermissionDeniedError as e:\n"
            "        print('EPERM', e.code)\n"
            "    print('ping', c.ping() > 0)\n" % d.socket)
        assert out.returncode == 0, out.stdout.decode()
        assert out.stdout.decode().split() == ["tenant", "65534", "EPERM", "12", "ping", "True"]
    finally:
        d.stop_clean()

