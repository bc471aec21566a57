"""The web playground's WebSocket protocol: versioned JSON messages and their checks.

Every message is one JSON object with a ``"type"``; a client that says ``batch`` in its
``hello`` may get several server messages in one frame, as a JSON array in order
(:func:`frames`). :func:`parse` turns a received text frame into a checked
:class:`Message` or raises :class:`ProtocolError` with a message the server sends back
(``{"type": "error", ...}``) — the session stays open and no other session is affected.
Numbers must be numbers (no text, no booleans, no NaN) and inside their ranges; unknown
keys are refused so that a typo is not silently ignored. The messages are documented in
docs/web.md; :data:`VERSION` changes when they change incompatibly.
"""

from __future__ import annotations

import base64
import binascii
import json
import math
from dataclasses import dataclass, field
from typing import Any

from ... import events as ev
from ..play.voices import ACTIONS, CONTROL_BOUNDS, MODES, N_CHANNELS

VERSION = 1
"""The protocol version the server speaks (sent in ``welcome``)."""

MAX_TEXT = 4096
"""Largest text frame of any message but ``prompt`` (characters)."""

MAX_PROMPT_BYTES = 256 * 1024
"""Largest MIDI file accepted as a prompt (bytes, before base64)."""

MAX_BATCH = 64
"""Most server messages sent in one frame to a client that asked for batches."""

MAX_FRAME = MAX_PROMPT_BYTES * 4 // 3 + 4096
"""Largest frame at all (a prompt's base64 plus its envelope); larger frames close the
connection (the WebSocket server's own limit)."""


class ProtocolError(ValueError):
    """A message the server refuses; ``about`` is its type when it had a valid one."""

    def __init__(self, message: str, about: str | None = None) -> None:
        super().__init__(message)
        self.about = about


@dataclass(frozen=True)
class Message:
    """A checked client message: its ``type`` and its checked arguments."""

    type: str
    args: dict[str, Any] = field(default_factory=dict)


def _int(d: dict, key: str, lo: int, hi: int, t: str, default: Any = ...) -> Any:
    if key not in d:
        if default is ...:
            raise ProtocolError(f"{t}: {key!r} is missing", t)
        return default
    x = d[key]
    if isinstance(x, bool) or not isinstance(x, int):
        raise ProtocolError(f"{t}: {key} must be an integer, got {_short(x)}", t)
    if not lo <= x <= hi:
        raise ProtocolError(f"{t}: {key} must be in {lo}..{hi}, got {x}", t)
    return x


def _num(d: dict, key: str, lo: float, hi: float, t: str) -> float:
    if key not in d:
        raise ProtocolError(f"{t}: {key!r} is missing", t)
    x = d[key]
    if isinstance(x, bool) or not isinstance(x, (int, float)) or not math.isfinite(x):
        raise ProtocolError(f"{t}: {key} must be a finite number, got {_short(x)}", t)
    if not lo <= x <= hi:
        raise ProtocolError(f"{t}: {key} must be in {lo:g}..{hi:g}, got {x:g}", t)
    return float(x)


def _str(d: dict, key: str, t: str, max_len: int = 64, default: Any = ...) -> Any:
    if key not in d:
        if default is ...:
            raise ProtocolError(f"{t}: {key!r} is missing", t)
        return default
    x = d[key]
    if not isinstance(x, str) or not 0 < len(x) <= max_len:
        raise ProtocolError(f"{t}: {key} must be a text of 1..{max_len} characters", t)
    return x


def _short(x: Any) -> str:
    text = repr(x)
    return text if len(text) <= 40 else text[:37] + "..."


def _keys(d: dict, allowed: tuple[str, ...], t: str) -> None:
    unknown = sorted(set(d) - set(allowed) - {"type"})
    if unknown:
        raise ProtocolError(f"{t}: unknown key {_short(unknown[0])} (known: "
                            f"{', '.join(allowed) or 'none'})", t)


def _note(d: dict, t: str) -> dict[str, Any]:
    _keys(d, ("pitch", "vel", "channel", "id"), t)
    return {"pitch": _int(d, "pitch", 0, 127, t), "vel": _int(d, "vel", 0, 127, t),
            "channel": _int(d, "channel", 1, N_CHANNELS, t, None),
            "id": _int(d, "id", 0, 2**53, t, None)}


def _voice(d: dict, t: str) -> dict[str, Any]:
    _keys(d, ("channel", "mode", "inst", "range", "source"), t)
    out: dict[str, Any] = {"channel": _int(d, "channel", 1, N_CHANNELS, t)}
    if "mode" in d:
        if d["mode"] not in MODES:
            raise ProtocolError(f"{t}: mode must be one of {', '.join(MODES)}, "
                                f"got {_short(d['mode'])}", t)
        out["mode"] = d["mode"]
    if "inst" in d:
        x = d["inst"]
        if isinstance(x, bool) or not isinstance(x, (int, str)) or (
                isinstance(x, str) and len(x) > 64):
            raise ProtocolError(f"{t}: inst must be an instrument id or name", t)
        try:
            out["inst"] = ev.parse_instrument(x)
        except ValueError as e:
            raise ProtocolError(f"{t}: {e}", t) from None
    if "range" in d:
        r = d["range"]
        if not isinstance(r, list) or len(r) != 2:
            raise ProtocolError(f"{t}: range must be [low, high], got {_short(r)}", t)
        lo = _int({"low": r[0]}, "low", 0, 127, t)
        hi = _int({"high": r[1]}, "high", 0, 127, t)
        if lo > hi:
            raise ProtocolError(f"{t}: range must have low <= high, got {r}", t)
        out["range"] = (lo, hi)
    if "source" in d:
        out["source"] = _int(d, "source", 1, N_CHANNELS, t)
    if len(out) == 1:
        raise ProtocolError(f"{t}: nothing to change (give mode, inst, range or source)", t)
    return out


def _control(d: dict, t: str) -> dict[str, Any]:
    _keys(d, ("name", "value"), t)
    name = _str(d, "name", t)
    if name not in CONTROL_BOUNDS:
        raise ProtocolError(f"{t}: unknown control {_short(name)} (known: "
                            f"{', '.join(CONTROL_BOUNDS)})", t)
    lo, hi = CONTROL_BOUNDS[name]
    return {"name": name, "value": _num(d, "value", lo, hi, t)}


def _action(d: dict, t: str) -> dict[str, Any]:
    _keys(d, ("name",), t)
    name = _str(d, "name", t)
    if name not in ACTIONS:
        raise ProtocolError(f"{t}: unknown action {_short(name)} (known: "
                            f"{', '.join(ACTIONS)})", t)
    return {"name": name}


def _prompt(d: dict, t: str) -> dict[str, Any]:
    _keys(d, ("name", "data"), t)
    name = _str(d, "name", t, 200, "prompt.mid")
    data = d.get("data")
    if not isinstance(data, str) or not data:
        raise ProtocolError(f"{t}: data must be the MIDI file in base64", t)
    if len(data) > MAX_PROMPT_BYTES * 4 // 3 + 4:
        raise ProtocolError(f"{t}: the file is larger than {MAX_PROMPT_BYTES // 1024} KiB", t)
    try:
        raw = base64.b64decode(data, validate=True)
    except (binascii.Error, ValueError):
        raise ProtocolError(f"{t}: data is not valid base64", t) from None
    if len(raw) > MAX_PROMPT_BYTES:
        raise ProtocolError(f"{t}: the file is larger than {MAX_PROMPT_BYTES // 1024} KiB", t)
    return {"name": name, "data": raw}


def _simple(allowed: tuple[str, ...]) -> Any:
    def check(d: dict, t: str) -> dict[str, Any]:
        _keys(d, allowed, t)
        return {}
    return check


def _record(d: dict, t: str) -> dict[str, Any]:
    _keys(d, ("on",), t)
    if not isinstance(d.get("on"), bool):
        raise ProtocolError(f"{t}: on must be true or false", t)
    return {"on": d["on"]}


def _preset(d: dict, t: str) -> dict[str, Any]:
    _keys(d, ("name",), t)
    return {"name": _str(d, "name", t)}


def _ping(d: dict, t: str) -> dict[str, Any]:
    _keys(d, ("id",), t)
    return {"id": _int(d, "id", 0, 2**53, t, None)}


def _hello(d: dict, t: str) -> dict[str, Any]:
    _keys(d, ("version", "batch"), t)
    v = _int(d, "version", 0, 1 << 30, t)
    if v != VERSION:
        raise ProtocolError(f"hello: this server speaks version {VERSION}, not {v}", t)
    batch = d.get("batch", False)
    if not isinstance(batch, bool):
        raise ProtocolError(f"{t}: batch must be true or false", t)
    return {"version": v, "batch": batch}


CHECKS = {
    "hello": _hello, "note": _note, "voice": _voice, "control": _control,
    "action": _action, "preset": _preset, "record": _record, "export": _simple(()),
    "prompt": _prompt, "ping": _ping,
}
"""Client message types and their checks (docs/web.md lists them)."""


def parse(text: str | bytes) -> Message:
    """Check one received frame; :class:`ProtocolError` says what is wrong."""
    if isinstance(text, bytes):
        raise ProtocolError("binary frames are not part of the protocol: send JSON text")
    if len(text) > MAX_FRAME:
        raise ProtocolError(f"message longer than {MAX_FRAME} characters")
    try:
        d = json.loads(text, parse_constant=_no_constant)
    except (ValueError, RecursionError) as e:
        raise ProtocolError(f"malformed JSON: {_short(str(e))}") from None
    if not isinstance(d, dict):
        raise ProtocolError("a message must be a JSON object with a \"type\"")
    t = d.get("type")
    if not isinstance(t, str) or t not in CHECKS:
        raise ProtocolError(f"unknown message type {_short(t)} (known: {', '.join(CHECKS)})")
    if t != "prompt" and len(text) > MAX_TEXT:
        raise ProtocolError(f"message longer than {MAX_TEXT} characters", t)
    return Message(t, CHECKS[t](d, t))


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def dumps(msg: dict[str, Any] | list[dict[str, Any]]) -> str:
    """A server message (or a batch of them) as compact JSON text."""
    return json.dumps(msg, separators=(",", ":"), allow_nan=False)


def frames(msgs: list[dict[str, Any]], batch: bool) -> list[str]:
    """The text frames that carry ``msgs`` (in order): one per message, or with ``batch``
    one JSON array of up to :data:`MAX_BATCH` messages per frame (a single message stays
    a plain object). Batching only packs messages that are already waiting, so it saves
    the per-frame work of a busy server without holding any message back."""
    if not batch:
        return [dumps(m) for m in msgs]
    out = []
    for i in range(0, len(msgs), MAX_BATCH):
        part = msgs[i:i + MAX_BATCH]
        out.append(dumps(part[0] if len(part) == 1 else part))
    return out
