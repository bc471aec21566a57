"""The OSC protocol of ``notochord-rt serve``: turn OSC messages into checked requests.

This module knows the addresses, their arguments and the reply format; it does not touch
sockets or the model (that is :mod:`.osc_server`). Every message becomes a
:class:`Request` or raises :class:`RequestError` with a message naming the bad argument
and the request's ``handle`` (so the error reply can echo it). See ``docs/osc.md``.

Arguments follow the reference server: optional positional arguments (the event of
``feed``, the path of ``prompt``/``load``), then ``key value`` pairs. A string value that
parses as JSON is decoded (``"[60, 64, 67]"`` is a list, ``"false"`` is False), so
lists and dicts can be sent by clients without OSC arrays; OSC arrays are accepted too.
Three keys are understood by every address: ``session`` (0, the shared one, or the token
that ``session/open`` returned), ``handle`` (a short value echoed in the reply) and
``port`` (reply port, if the server allows it).

Values are checked and bounded by :mod:`.osc_values`; any exception from checking or
compiling constraints becomes a :class:`RequestError`.
"""

from __future__ import annotations

import json
from collections import OrderedDict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from ...engine.sampling.query import query_constraints
from ...engine.sampling.state import check_feed
from ...engine.sampling.support import Compiled, compile_constraints
from ...errors import InputError, NoPossibleEvents
from ...events import SAMPLING_ORDER
from ..musical import DEFAULTS
from .values import (
    MAX_ABS,
    MAX_MESSAGE,
    PREFIX,
    SHARED,
    _bool,
    _int,
    _short,
    check_handle,
    constraint_value,
    decode,
    query_values,
    sample_constraints,
    session_key,
)

__all__ = ["MAX_MESSAGE", "OPS", "PREFIX", "RETURN", "SHARED", "Draw", "Parser", "Request",
           "RequestError", "constraint_value", "decode", "encode", "find_handle", "flatten",
           "pairs", "sample_constraints"]

RETURN = "/return"
COMMON_KEYS = ("session", "handle", "port")
# reference query() outputs (splatting a reply back into feed is legal, as in the reference)
FEED_IGNORED = ("end", "step")
EVENT_KEYS = ("inst", "pitch", "time", "vel")

#: ops and what they do: (feeds an event first, samples, how it samples)
OPS: dict[str, tuple[bool, bool, str | None]] = {
    "feed": (True, False, None),
    "query": (False, True, "query"),
    "query_feed": (False, True, "query"),
    "feed_query": (True, True, "query"),
    "sample": (False, True, "sample"),
    "feed_sample": (True, True, "sample"),
    "reset": (False, False, None),
    "prompt": (False, False, None),
    "load": (False, False, None),
    "session/open": (False, False, None),
    "session/close": (False, False, None),
    "held": (False, False, None),
    "status": (False, False, None),
    "ping": (False, False, None),
}
#: keys each control op accepts besides COMMON_KEYS
CONTROL_KEYS: dict[str, tuple[str, ...]] = {
    "reset": ("start", "seed"),
    "prompt": ("merge",),
    "load": (),
    "session/open": ("seed",),
    "session/close": (),
    "held": (),
    "status": ("detail",),
    "ping": (),
}
SAMPLE_EXTRA = ("feed", "allow_end")
#: constraint fields that ask for the beat (with ``serve --clock`` the clock gives the tempo)
BEAT_KEYS = ("grid", "inst_grid", "next_bar", "min_beats", "max_beats", "bpm")

class RequestError(InputError):
    """A message that cannot be served; ``handle`` and ``address`` go into the error reply."""

    def __init__(self, message: str, address: str = "", handle: Any = None) -> None:
        super().__init__(message)
        self.address = address
        self.handle = handle


@dataclass
class Draw:
    """What to sample: compiled constraints and an order, how to reply, what to do after."""

    compiled: Compiled
    order: str
    kind: str  # "query" (reference reply) or "sample" (ours)
    allow_end: bool = False
    return_params: bool = False
    feed_after: bool = False
    clocked: bool = False
    """The constraints ask for the beat: the server's clock gives ``bpm`` and ``beat``
    when sampling (``serve --clock``; the ``bpm`` compiled here is a stand-in)."""


@dataclass
class Request:
    """One checked OSC message. ``event`` is fed first, then ``draw`` is sampled."""

    op: str
    address: str
    session: int | str = SHARED
    handle: Any = None
    port: int | None = None
    event: tuple[int, int, float, float] | None = None
    draw: Draw | None = None
    args: dict[str, Any] = field(default_factory=dict)
    sender: tuple[str, int] = ("", 0)

    @property
    def reply_to(self) -> str:
        """Reply address of this request's op."""
        name = "query" if self.draw is not None and self.draw.kind == "query" else self.op
        if self.op == "feed_sample":
            name = "sample"
        return f"{RETURN}{PREFIX}/{name}"


def find_handle(params: Sequence[Any]) -> Any:
    """The value after a ``"handle"`` key, if any (used even when parsing fails)."""
    for k in range(len(params) - 1):
        if params[k] == "handle":
            try:
                return check_handle(params[k + 1])
            except InputError:
                return None
    return None


def pairs(params: Sequence[Any], address: str, handle: Any) -> dict[str, Any]:
    """``key value key value ...`` → dict; values JSON-decoded, ``handle`` kept raw."""
    if len(params) % 2:
        raise RequestError(f"expected key value pairs, but {params[-1]!r} has no value",
                           address, handle)
    out: dict[str, Any] = {}
    for k in range(0, len(params), 2):
        key, value = params[k], params[k + 1]
        if not isinstance(key, str) or len(key) > 64:
            raise RequestError(f"argument {k + 1}: expected a key name (a short string), got "
                               f"{_short(key)}", address, handle)
        if key in out:
            raise RequestError(f"key {key!r} given twice", address, handle)
        out[key] = value if key in ("handle", "session") else decode(value)
    return out


# -- the parser ------------------------------------------------------------------------------
QUERY_MAX_DURATION = 8.0
"""Seconds a note may sound in a session driven by the reference-style ``query`` before the
sampler prefers to end it (the soft ``max_duration`` guard of :class:`Constraints`). The
reference's query has no such guard, so a client that only queries and feeds piles up
notes that never end; ``serve --query-max-duration 0`` restores that behaviour."""


class Parser:
    """Turns ``(address, params)`` into :class:`Request` objects.

    Compiled constraints are cached by their arguments (most clients send the same query
    again and again; compiling costs about half a millisecond).
    """

    def __init__(self, cache_size: int = 256, clocked: bool = False,
                 query_max_duration: float = QUERY_MAX_DURATION) -> None:
        self.cache_size = cache_size
        self.clocked = clocked  # serve --clock: beat fields take the server clock's tempo
        self.query_max_duration = query_max_duration  # serve --query-max-duration
        self._cache: OrderedDict[str, tuple[Compiled, str]] = OrderedDict()

    def parse(self, address: str, params: Sequence[Any]) -> Request:
        """Check one message; raises :class:`RequestError` (and nothing else: an
        unexpected exception while checking becomes one too)."""
        handle = find_handle(params)
        if not isinstance(address, str) or not address.startswith(PREFIX + "/"):
            raise RequestError(f"unknown address (addresses start with {PREFIX}/)",
                               str(address)[:64], handle)
        op = address[len(PREFIX) + 1:]
        if op not in OPS:
            raise RequestError("unknown address", address[:64], handle)
        try:
            return self._parse(op, address, list(params), handle)
        except RequestError:
            raise
        except (InputError, NoPossibleEvents) as e:
            raise RequestError(str(e), address, handle) from None
        except RecursionError:
            raise RequestError("a value is nested too deeply", address, handle) from None
        except Exception as e:  # checking must never take the server down
            raise RequestError(f"bad argument: {type(e).__name__}: {e}", address,
                               handle) from None

    def _parse(self, op: str, address: str, params: list[Any], handle: Any) -> Request:
        feeds, samples, kind = OPS[op]
        req = Request(op, address, handle=handle)
        if feeds:
            params = self._event(req, params)
        elif op in ("prompt", "load"):
            if not params or not isinstance(params[0], str) or params[0] in COMMON_KEYS:
                raise InputError(f"{address} needs a file path (a string) first")
            req.args["path"] = params[0]
            params = params[1:]
        kw = pairs(params, address, handle)
        self._common(req, kw)
        if op == "feed":
            bad = sorted(set(kw) - set(FEED_IGNORED))
            if bad:
                raise InputError(f"unknown argument(s) {', '.join(bad)} for {address}")
        elif samples:
            req.draw = self._draw(op, kind, kw)  # type: ignore[arg-type]
        else:
            bad = sorted(set(kw) - set(CONTROL_KEYS[op]))
            if bad:
                raise InputError(f"unknown argument(s) {', '.join(bad)} for {address}"
                                 + (f" (accepted: {', '.join(CONTROL_KEYS[op])})"
                                    if CONTROL_KEYS[op] else ""))
            self._control(req, kw)
        return req

    @staticmethod
    def _event(req: Request, params: list[Any]) -> list[Any]:
        """Take the event to feed: 4 positional values, or ``inst/pitch/time/vel`` keys."""
        if params and params[0] in EVENT_KEYS:
            kw = pairs(params, req.address, req.handle)
            missing = [k for k in EVENT_KEYS if k not in kw]
            if missing:
                raise InputError(f"{req.address} needs inst pitch time vel; missing "
                                 f"{', '.join(missing)}")
            values = [kw.pop(k) for k in EVENT_KEYS]
            rest = [x for item in kw.items() for x in item]
            # keep handle raw: it was not decoded by pairs()
        else:
            if len(params) < 4 or any(p in COMMON_KEYS for p in params[:4]):
                raise InputError(f"{req.address} needs 4 numbers first (inst pitch time vel),"
                                 " then optional key value pairs")
            values, rest = [decode(v) for v in params[:4]], params[4:]
        for name, v in zip(EVENT_KEYS, values):
            if isinstance(v, bool) or not isinstance(v, (int, float)):
                raise InputError(f"{name} must be a number, got {_short(v)}")
        if isinstance(values[2], (int, float)) and abs(values[2]) > MAX_ABS:
            raise InputError(f"time must be at most {MAX_ABS:g} seconds, got {values[2]!r}")
        req.event = check_feed(*values)
        return rest

    @staticmethod
    def _common(req: Request, kw: dict[str, Any]) -> None:
        if "handle" in kw:
            req.handle = check_handle(kw.pop("handle"))
        if "session" in kw:
            req.session = session_key(kw.pop("session"))
        if "port" in kw:
            req.port = _int(kw.pop("port"), "port", 1, 65535)

    def _draw(self, op: str, kind: str, kw: dict[str, Any]) -> Draw:
        allow_end = _bool(kw.pop("allow_end", False), "allow_end")
        feed_after = op == "query_feed"
        if kind == "sample":
            feed_after = _bool(kw.pop("feed", False), "feed")
        if kind == "query" and "seed" in kw:
            raise InputError("seed: the server keeps one generator per session; give seed "
                             "to /notochord/session/open or /notochord/reset instead")
        return_params = _bool(kw.pop("return_params", False), "return_params")
        raw = kind == "sample" and _bool(kw.pop("raw", False), "raw")
        clocked = self.clocked and kind == "sample" and any(k in kw for k in BEAT_KEYS)
        if clocked:
            kw["bpm"] = 120.0  # a stand-in so the fields check; the clock's at sampling
            kw.pop("beat", None)
        key = kind + ("raw" if raw else "") + json.dumps(sorted(kw.items()), default=repr)
        hit = self._cache.get(key)
        if hit is None:
            try:
                if kind == "query":
                    cons, order = query_constraints(query_values(kw))
                    cons.order = order
                    if self.query_max_duration > 0:  # no note held for ever (see the doc)
                        cons.max_duration = self.query_max_duration
                else:
                    cons = sample_constraints(kw, None if raw else DEFAULTS)
                    order = cons.order or SAMPLING_ORDER
                hit = (compile_constraints(cons), order)
            except (InputError, NoPossibleEvents):
                raise
            except Exception as e:  # the engine's checks are its own; any failure is bad input
                raise InputError(f"{kind}: bad constraint value ({type(e).__name__}: "
                                 f"{str(e)[:80]})") from None
            self._cache[key] = hit
            if len(self._cache) > self.cache_size:
                self._cache.popitem(last=False)
        else:
            self._cache.move_to_end(key)
        return Draw(hit[0], hit[1], kind, allow_end, return_params, feed_after, clocked)

    @staticmethod
    def _control(req: Request, kw: dict[str, Any]) -> None:
        if "start" in kw:
            req.args["start"] = _bool(kw["start"], "start")
        if "merge" in kw:
            req.args["merge"] = _bool(kw["merge"], "merge")
        if "detail" in kw:
            req.args["detail"] = _bool(kw["detail"], "detail")
        if "seed" in kw:
            req.args["seed"] = _int(kw["seed"], "seed", 0, 2**63 - 1)


# -- replies ---------------------------------------------------------------------------------
def encode(value: Any) -> Any:
    """An OSC-sendable value: numbers, strings and bools as they are, the rest as JSON."""
    if value is None or isinstance(value, (bool, str)):
        return value
    if isinstance(value, int):
        return value if -2**31 <= value < 2**31 else float(value)
    if isinstance(value, float):
        return value
    if hasattr(value, "tolist"):  # numpy scalars and arrays
        return encode(value.tolist()) if getattr(value, "ndim", 1) == 0 else json.dumps(
            value.tolist())
    return json.dumps(value, default=lambda o: o.tolist() if hasattr(o, "tolist") else str(o))


def flatten(reply: Mapping[str, Any]) -> list[Any]:
    """``{key: value}`` → ``[key, value, key, value, ...]`` (``None`` values left out; the
    ``handle`` is echoed exactly as it came)."""
    out: list[Any] = []
    for k, v in reply.items():
        if v is not None:
            out += [k, v if k == "handle" else encode(v)]
    return out
