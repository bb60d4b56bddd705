"""The client's protocol constants against the C sources that define them: every
constant of proto/kvp_wire.h (a new one fails here until the client knows it), the
status codes of common/kvp_status.h, and the fleet index's limits that the FLEET
reply carries (events/kvp_fleet.h)."""

from __future__ import annotations

import re
from typing import Dict

from kvprefix import AdminOp, Finish, _wire, errors
from kvp_testlib import SOURCE_DIR

_DEFINE = re.compile(r"^#define\s+(KVP_\w+)\s+([\w\s()|<]+?)\s*(?:/\*.*)?$")
_ENUM = re.compile(r"^\s*(KVP_\w+)\s*=\s*(-?(?:0x[0-9A-Fa-f]+|\d+))\s*,")
_UNSIGNED = re.compile(r"\b(0x[0-9A-Fa-f]+|\d+)[uU]\b")


def _constants(relpath: str) -> Dict[str, int]:
    """The #defines of a number (or an expression of numbers and names defined before)
    and the enum members of a header, evaluated."""
    out: Dict[str, int] = {}
    text = (SOURCE_DIR / relpath).read_text(encoding="utf-8")
    for line in text.splitlines():
        m = _DEFINE.match(line)
        if m:
            expr = _UNSIGNED.sub(r"\1", m.group(2))
            out[m.group(1)] = eval(expr, {"__builtins__": {}}, dict(out))  # noqa: S307
            continue
        m = _ENUM.match(line)
        if m:
            out[m.group(1)] = int(m.group(2), 0)
    assert out, "no constants in %s" % relpath
    return out


# kvp_wire.h's name -> the client's value
WIRE = {
    "KVP_PROTO_MAGIC": _wire.MAGIC,
    "KVP_PROTO_VERSION": _wire.VERSION,
    "KVP_PROTO_VERSION_MAX": _wire.VERSION_MAX,
    "KVP_PROTO_VERSION_ADMIN": _wire.VERSION_ADMIN,
    "KVP_PROTO_VERSION_SIZES": _wire.VERSION_SIZES,
    "KVP_PROTO_VERSION_FLEET": _wire.VERSION_FLEET,
    "KVP_HDR_SIZE": _wire.HDR_SIZE,
    "KVP_T_HELLO": _wire.T_HELLO,
    "KVP_T_LOOKUP": _wire.T_LOOKUP,
    "KVP_T_INSERT": _wire.T_INSERT,
    "KVP_T_RELEASE": _wire.T_RELEASE,
    "KVP_T_STATS": _wire.T_STATS,
    "KVP_T_PING": _wire.T_PING,
    "KVP_T_GENERATE": _wire.T_GENERATE,
    "KVP_T_ADMIN": _wire.T_ADMIN,
    "KVP_T_FLEET": _wire.T_FLEET,
    "KVP_T_REPLY": _wire.T_REPLY,
    "KVP_T_GENERATE_DONE": _wire.T_GENERATE_DONE,
    "KVP_T_ERROR": _wire.T_ERROR,
    "KVP_ERROR_MSG_MAX": _wire.ERROR_MSG_MAX,
    "KVP_NAME_MAX": _wire.NAME_MAX,
    "KVP_HELLO_INDEX_ONLY": _wire.HELLO_INDEX_ONLY,
    "KVP_F_PIN": _wire.F_PIN,
    "KVP_F_KEEP": _wire.F_KEEP,
    "KVP_KEEP_MAX_S": _wire.KEEP_MAX_S,
    "KVP_GEN_LOGITS": _wire.GEN_LOGITS,
    "KVP_GEN_KEEP": _wire.GEN_KEEP,
    "KVP_GEN_FLAGS_KNOWN": _wire.GEN_LOGITS | _wire.GEN_KEEP,
    "KVP_STOP_MAX": _wire.STOP_MAX,
    "KVP_GEN_MAX_NEW": _wire.GEN_MAX_NEW,
    "KVP_FINISH_LENGTH": Finish.LENGTH,
    "KVP_FINISH_STOP": Finish.STOP,
    "KVP_FINISH_CONTEXT": Finish.CONTEXT,
    "KVP_ADMIN_CLEAR": AdminOp.CLEAR,
    "KVP_ADMIN_EVICT": AdminOp.EVICT,
    "KVP_ADMIN_PIN": AdminOp.PIN,
    "KVP_ADMIN_UNPIN": AdminOp.UNPIN,
    "KVP_ADMIN_CONFIG": AdminOp.CONFIG,
    "KVP_ADMIN_EXPLAIN": AdminOp.EXPLAIN,
    "KVP_ADMIN_F_TENANT": _wire.ADMIN_F_TENANT,
    "KVP_ADMIN_F_ALL": _wire.ADMIN_F_ALL,
    "KVP_ADMIN_FLAGS_KNOWN": _wire.ADMIN_F_TENANT | _wire.ADMIN_F_ALL,
    "KVP_ADMIN_TEXT_MAX": _wire.ADMIN_TEXT_MAX,
    "KVP_ADMIN_REPLY_TEXT_MAX": _wire.ADMIN_REPLY_TEXT_MAX,
}


def test_kvp_wire_h():
    c = _constants("proto/kvp_wire.h")
    assert sorted(c) == sorted(WIRE), "kvp_wire.h and the client name different constants"
    differ = {k: (c[k], int(v)) for k, v in WIRE.items() if c[k] != int(v)}
    assert not differ, "C value, client value: %r" % differ
    # the enumerations hold exactly the header's values
    assert {int(f) for f in Finish} == {v for k, v in c.items() if k.startswith("KVP_FINISH_")}
    assert {int(op) for op in AdminOp} == {c["KVP_ADMIN_" + op.name] for op in AdminOp}


def test_status_codes():
    c = {k: v for k, v in _constants("common/kvp_status.h").items() if k != "KVP_OK"}
    assert c and all(v < 0 for v in c.values())
    assert {-v: k[len("KVP_"):] for k, v in c.items()} == \
        {code: errors.code_name(code) for code in range(1, len(c) + 1)}


def test_fleet_limits():
    c = _constants("events/kvp_fleet.h")
    assert c["KVP_FLEET_MAX_INSTANCES"] == _wire.FLEET_MAX
    assert c["KVP_FLEET_NAME_MAX"] == _wire.NAME_MAX
