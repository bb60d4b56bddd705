"""What the tests of the Python client share: the real kvprefixd started on a private
socket (as tests/daemon_harness.c and tools/spawn.c start it), the binaries' paths,
a scripted fake server for the cases a real daemon does not produce on demand, and
the hex examples of docs/protocol.md.

Paths come from the environment ctest sets (KVPREFIXD, KVPREFIX_MKMODEL,
KVPREFIX_CLI), else from the build directory beside the sources (build/...).
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import socket
import struct
import subprocess
import tempfile
import threading
import time
from pathlib import Path
from typing import List, Optional, Sequence, Tuple

import pytest

SOURCE_DIR = Path(__file__).resolve().parents[3]
DOCS_DIR = SOURCE_DIR / "docs"
_WAIT_S = 10.0      # for the socket to accept at start, and for the exit on SIGTERM


def binary(env: str, fallback: str) -> str:
    """The path in $env, which must exist; else build/fallback (the test is skipped
    when that is missing too: nothing was built)."""
    path = os.environ.get(env)
    if path:
        assert os.access(path, os.X_OK), "%s=%s is not an executable" % (env, path)
        return path
    path = str(SOURCE_DIR / "build" / fallback)
    if not os.access(path, os.X_OK):
        pytest.skip("%s is not built (set %s)" % (path, env))
    return path


def kvprefixd() -> str:
    """The daemon under test."""
    return binary("KVPREFIXD", "kvprefixd")


def mkmodel() -> str:
    """kvprefix-mkmodel."""
    return binary("KVPREFIX_MKMODEL", "kvprefix-mkmodel")


def cli() -> str:
    """The C client's command line tool, kvprefix."""
    return binary("KVPREFIX_CLI", "kvprefix")


def make_model(path: Path, args: Sequence[str]) -> str:
    """A random-weight model made by kvprefix-mkmodel with args, at path."""
    subprocess.run([mkmodel(), "--out", str(path), *args, "--quiet"], check=True,
                   stdout=subprocess.PIPE, stderr=subprocess.STDOUT, timeout=60)
    return str(path)


def _accepts(path: str) -> bool:
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        s.connect(path)
        return True
    except OSError:
        return False
    finally:
        s.close()


class Daemon:
    """kvprefixd in a private directory /tmp/kvp-py-XXXXXX: --index-only unless args
    has --model, --socket <dir>/kvprefixd.sock (or socket), no config file, its stderr
    in <dir>/kvprefixd.log. With user (the test runs as root), the daemon runs as that
    uid:gid and the directory is given to it."""

    def __init__(self, args: Sequence[str] = (), *, socket_path: Optional[str] = None,
                 user: Optional[Tuple[int, int]] = None) -> None:
        self.dir = tempfile.mkdtemp(prefix="kvp-py-")
        self.socket = socket_path or os.path.join(self.dir, "kvprefixd.sock")
        self.log = os.path.join(self.dir, "kvprefixd.log")
        argv = [kvprefixd()]
        if "--model" not in args:
            argv.append("--index-only")
        argv += ["--socket", self.socket, "--config", "", "--log-level", "info", *args]
        kw = {}
        if user is not None:
            os.chown(self.dir, user[0], user[1])
            kw = {"user": user[0], "group": user[1], "extra_groups": []}
        with open(self.log, "wb") as log:
            if user is not None:
                os.chown(self.log, user[0], user[1])
            self.proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=log,
                                         stderr=subprocess.STDOUT, **kw)
        deadline = time.monotonic() + _WAIT_S
        while not _accepts(self.socket):
            if self.proc.poll() is not None:
                log_text = self.read_log()
                self._remove()
                raise AssertionError("kvprefixd exited with %d at start:\n%s"
                                     % (self.proc.returncode, log_text))
            if time.monotonic() > deadline:
                self.stop()
                raise AssertionError("kvprefixd did not accept within %g s" % _WAIT_S)
            time.sleep(0.01)

    def read_log(self) -> str:
        try:
            with open(self.log, "rb") as f:
                return f.read().decode("utf-8", "replace")
        except OSError:
            return "(no log)"

    def stop(self) -> int:
        """SIGTERM, wait (then SIGKILL); the exit status, and the directory removed."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(_WAIT_S)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        rc = self.proc.returncode
        self.last_log = self.read_log()
        self._remove()
        return rc

    def stop_clean(self) -> None:
        """stop(), failing the test unless the daemon exited 0 (a sanitizer's report
        makes it exit otherwise)."""
        rc = self.stop()
        assert rc == 0, "kvprefixd exited with %d:\n%s" % (rc, self.last_log)

    def _remove(self) -> None:
        shutil.rmtree(self.dir, ignore_errors=True)


# ---- a scripted server ---------------------------------------------------------------------

class FakeServer:
    """A Unix socket server in a thread that plays a script on its first connection:
    ("expect", bytes) reads exactly those bytes and records any difference, ("read",)
    reads one whole frame into requests, ("send", bytes) writes, ("sleep", seconds) waits, ("close",) hangs up. check() joins it and
    fails the test on a difference or an exception."""

    def __init__(self, directory: str, script: List[tuple]) -> None:
        self.path = os.path.join(directory, "fake.sock")
        self.script = script
        self.problems: List[str] = []
        self.requests: List[bytes] = []
        self.listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.listener.bind(self.path)
        self.listener.listen(4)
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _recv_exact(self, conn: socket.socket, n: int) -> bytes:
        out = b""
        while len(out) < n:
            chunk = conn.recv(n - len(out))
            if not chunk:
                break
            out += chunk
        return out

    def _run(self) -> None:
        try:
            self.listener.settimeout(_WAIT_S)
            conn, _ = self.listener.accept()
            conn.settimeout(_WAIT_S)
            with conn:
                for step in self.script:
                    if step[0] == "expect":
                        got = self._recv_exact(conn, len(step[1]))
                        if got != step[1]:
                            self.problems.append("expected %s, got %s"
                                                 % (step[1].hex(" "), got.hex(" ")))
                            return
                    elif step[0] == "read":
                        head = self._recv_exact(conn, 16)
                        if len(head) < 16:
                            self.problems.append("the client hung up before a frame")
                            return
                        self.requests.append(head + self._recv_exact(
                            conn, struct.unpack_from("<I", head, 12)[0]))
                    elif step[0] == "send":
                        conn.sendall(step[1])
                    elif step[0] == "sleep":
                        time.sleep(step[1])
                    elif step[0] == "close":
                        return
                # wait for the client to hang up, so that nothing it still reads is cut
                conn.recv(1)
        except (BrokenPipeError, ConnectionResetError):
            pass        # the client hung up first: what it did about it is the test's
        except Exception as e:   # noqa: BLE001 - reported by check()
            self.problems.append("fake server: %r" % e)
        finally:
            self.listener.close()

    def check(self) -> None:
        self.thread.join(_WAIT_S)
        assert not self.thread.is_alive(), "the fake server did not finish its script"
        assert not self.problems, "; ".join(self.problems)


def frame(ftype: int, req_id: int, payload: bytes = b"", version: int = 1) -> bytes:
    """A frame as the daemon would send it."""
    return struct.pack("<IBBHII", 0x3150564B, version, ftype, 0, req_id, len(payload)) + payload


def error_frame(req_id: int, code: int, msg: str, version: int = 1) -> bytes:
    """An ERROR frame."""
    raw = msg.encode()
    return frame(0xFF, req_id, struct.pack("<IH", code, len(raw)) + raw, version)


# ---- docs/protocol.md ---------------------------------------------------------------------------

_DOC_CACHE: dict = {}


def doc_text() -> str:
    """docs/protocol.md."""
    if "text" not in _DOC_CACHE:
        _DOC_CACHE["text"] = (DOCS_DIR / "protocol.md").read_text(encoding="utf-8")
    return _DOC_CACHE["text"]


def doc_block(marker: str) -> str:
    """The fenced block that follows <!-- marker --> on the page."""
    text = doc_text()
    at = text.find("<!-- %s -->" % marker)
    assert at >= 0, "protocol.md has no <!-- %s -->" % marker
    start = text.index("```", at)
    start = text.index("\n", start) + 1
    return text[start:text.index("```", start)]


def doc_frame(name: str) -> bytes:
    """The bytes of the example frame <!-- example: name -->: each line's hex before
    its '#'."""
    out = bytearray()
    for line in doc_block("example: " + name).splitlines():
        hexpart = line.split("#", 1)[0]
        out += bytes.fromhex(hexpart)
    return bytes(out)


def doc_replay_output(name: str) -> str:
    """The text of <!-- replay-output: name -->."""
    return doc_block("replay-output: " + name).strip()


def safe_name(text: str) -> str:
    """text cut to a valid adapter id: printable ASCII, at most 64 bytes."""
    return re.sub(r"[^A-Za-z0-9_.-]", "_", text)[:64]
