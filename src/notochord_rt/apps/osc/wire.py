"""OSC 1.0 datagrams, strictly and boundedly: parse what arrives, build what is sent.

The server reads datagrams from anyone, so it does not trust a general-purpose parser
with them: :func:`parse` walks the bytes once, checks every size against what is left
before using it (a negative or oversized bundle element is an error, never a loop),
and bounds the bundle depth, the number of messages, the arguments per message and
the nesting of OSC arrays (:class:`WireLimits`). Anything else raises
:class:`WireError` with the reason; there is no other exception to expect.

:func:`build` makes a reply message and checks every value first: an int outside 64
bits, a float that does not fit OSC's 32-bit float (``1e39``, ``inf``, ``nan``), a
string with a NUL byte or a value of another type raise :class:`Unsendable` naming it,
so that the server can answer with an error instead of failing to send.
"""

from __future__ import annotations

import math
import struct
from dataclasses import dataclass
from typing import Any

BUNDLE_TAG = b"#bundle\x00"
FLOAT32_MAX = 3.4028234663852886e38
_I32 = struct.Struct(">i")
_U32 = struct.Struct(">I")
_I64 = struct.Struct(">q")
_U64 = struct.Struct(">Q")
_F32 = struct.Struct(">f")
_F64 = struct.Struct(">d")


class WireError(ValueError):
    """A datagram that is not valid OSC (or is over a limit); the message says why."""


class Unsendable(WireError):
    """A reply value that OSC cannot carry; the message names it."""


@dataclass(frozen=True)
class WireLimits:
    """Bounds on one datagram: bundle nesting, messages, arguments, array nesting."""

    max_bundle_depth: int = 4
    max_messages: int = 16
    max_args: int = 256
    max_array_depth: int = 4


DEFAULT_LIMITS = WireLimits()


# -- parsing ----------------------------------------------------------------------------------
def _pad(n: int) -> int:
    """``n`` rounded up to a multiple of 4."""
    return (n + 3) & ~3


def _string(data: bytes, pos: int, end: int, what: str) -> tuple[str, int]:
    nul = data.find(b"\x00", pos, end)
    if nul < 0:
        raise WireError(f"{what}: no terminating NUL byte")
    nxt = pos + _pad(nul - pos + 1)
    if nxt > end:
        raise WireError(f"{what}: padding runs past the end")
    try:
        return data[pos:nul].decode("utf-8"), nxt
    except UnicodeDecodeError:
        raise WireError(f"{what}: not UTF-8") from None


def _need(pos: int, n: int, end: int, tag: str) -> None:
    if pos + n > end:
        raise WireError(f"argument of type {tag!r} runs past the end of the message")


def _message(data: bytes, pos: int, end: int, limits: WireLimits) -> tuple[str, list[Any]]:
    address, pos = _string(data, pos, end, "address")
    if not address.startswith("/"):
        raise WireError("a message address must start with '/'")
    if pos == end:  # OSC 1.0 makes the type tags optional in old senders: no arguments
        return address, []
    tags, pos = _string(data, pos, end, "type tags")
    if not tags.startswith(","):
        raise WireError("type tags must start with ','")
    if len(tags) - 1 > limits.max_args:
        raise WireError(f"more than {limits.max_args} arguments")
    stack: list[list[Any]] = [[]]
    for tag in tags[1:]:
        out = stack[-1]
        if tag == "i":
            _need(pos, 4, end, tag)
            out.append(_I32.unpack_from(data, pos)[0])
            pos += 4
        elif tag == "f":
            _need(pos, 4, end, tag)
            out.append(_F32.unpack_from(data, pos)[0])
            pos += 4
        elif tag in "sS":
            value, pos = _string(data, pos, end, "string argument")
            out.append(value)
        elif tag == "b":
            _need(pos, 4, end, tag)
            size = _I32.unpack_from(data, pos)[0]
            pos += 4
            if size < 0 or pos + _pad(size) > end:
                raise WireError(f"blob size {size} does not fit the message")
            out.append(bytes(data[pos:pos + size]))
            pos += _pad(size)
        elif tag in "hd":
            _need(pos, 8, end, tag)
            out.append((_I64 if tag == "h" else _F64).unpack_from(data, pos)[0])
            pos += 8
        elif tag == "t":
            _need(pos, 8, end, tag)
            out.append(_U64.unpack_from(data, pos)[0])
            pos += 8
        elif tag in "crm":
            _need(pos, 4, end, tag)
            raw = _U32.unpack_from(data, pos)[0]
            out.append(chr(raw) if tag == "c" and raw < 0x110000 else raw)
            pos += 4
        elif tag in "TF":
            out.append(tag == "T")
        elif tag in "NI":
            out.append(None)
        elif tag == "[":
            if len(stack) > limits.max_array_depth:
                raise WireError(f"arrays nested deeper than {limits.max_array_depth}")
            inner: list[Any] = []
            out.append(inner)
            stack.append(inner)
        elif tag == "]":
            if len(stack) == 1:
                raise WireError("']' without '['")
            stack.pop()
        else:
            raise WireError(f"unknown type tag {tag!r}")
    if len(stack) != 1:
        raise WireError("'[' without ']'")
    if pos != end:
        raise WireError(f"{end - pos} bytes left over after the arguments")
    return address, stack[0]


def parse(data: bytes, limits: WireLimits = DEFAULT_LIMITS) -> list[tuple[str, list[Any]]]:
    """The messages of one datagram, in order: ``[(address, [arguments])]``.

    A bundle's time tag is ignored (messages are served at once). Raises
    :class:`WireError` for anything malformed or over ``limits``; runs in time linear
    in ``len(data)`` whatever the bytes say.
    """
    out: list[tuple[str, list[Any]]] = []
    # an explicit stack of (start, end, depth) spans: no recursion on hostile depth
    todo: list[tuple[int, int, int]] = [(0, len(data), 0)]
    while todo:
        pos, end, depth = todo.pop()
        if end - pos < 4 or (end - pos) % 4:
            raise WireError(f"an OSC packet's size must be a positive multiple of 4, got "
                            f"{end - pos}")
        if data.startswith(BUNDLE_TAG, pos):
            if depth >= limits.max_bundle_depth:
                raise WireError(f"bundles nested deeper than {limits.max_bundle_depth}")
            pos += 16  # tag and time tag
            if pos > end:
                raise WireError("bundle shorter than its header")
            spans = []
            while pos < end:
                if pos + 4 > end:
                    raise WireError("bundle element size runs past the end")
                size = _I32.unpack_from(data, pos)[0]
                pos += 4
                if size <= 0 or size % 4 or pos + size > end:
                    raise WireError(f"bundle element size {size} is not a positive multiple"
                                    f" of 4 within the {end - pos} bytes left")
                spans.append((pos, pos + size, depth + 1))
                if len(spans) + len(out) > limits.max_messages:
                    raise WireError(f"more than {limits.max_messages} messages in a datagram")
                pos += size
            todo.extend(reversed(spans))
        elif data[pos:pos + 1] == b"/":
            if len(out) >= limits.max_messages:
                raise WireError(f"more than {limits.max_messages} messages in a datagram")
            out.append(_message(data, pos, end, limits))
        else:
            raise WireError("neither an OSC message ('/...') nor a bundle ('#bundle')")
    return out


# -- building ---------------------------------------------------------------------------------
def _padded(raw: bytes) -> bytes:
    return raw + b"\x00" * (_pad(len(raw)) - len(raw))


def _osc_string(value: str, what: str) -> bytes:
    if "\x00" in value:
        raise Unsendable(f"{what}: a string with a NUL character cannot be sent")
    return _padded(value.encode("utf-8", "surrogatepass") + b"\x00")


def _arg(value: Any, tags: list[str], parts: list[bytes], what: str, depth: int,
         strict: bool = True) -> None:
    if value is None:
        tags.append("N")
    elif isinstance(value, bool):
        tags.append("T" if value else "F")
    elif isinstance(value, int):
        if -2**31 <= value < 2**31:
            tags.append("i")
            parts.append(_I32.pack(value))
        elif -2**63 <= value < 2**63:
            tags.append("h")
            parts.append(_I64.pack(value))
        else:
            raise Unsendable(f"{what}: the integer {value} does not fit in 64 bits")
    elif isinstance(value, float):
        if math.isfinite(value) and abs(value) > FLOAT32_MAX and not strict:
            tags.append("d")
            parts.append(_F64.pack(value))
            return
        if strict and not (math.isfinite(value) and abs(value) <= FLOAT32_MAX):
            raise Unsendable(f"{what}: {value!r} does not fit an OSC 32-bit float")
        tags.append("f")
        parts.append(_F32.pack(value))
    elif isinstance(value, str):
        tags.append("s")
        parts.append(_osc_string(value, what))
    elif isinstance(value, (bytes, bytearray)):
        tags.append("b")
        parts.append(_I32.pack(len(value)) + _padded(bytes(value)))
    elif isinstance(value, (list, tuple)) and depth < DEFAULT_LIMITS.max_array_depth:
        tags.append("[")
        for v in value:
            _arg(v, tags, parts, what, depth + 1, strict)
        tags.append("]")
    else:
        raise Unsendable(f"{what}: a value of type {type(value).__name__} cannot be sent")


def build(address: str, args: list[Any], strict: bool = True) -> bytes:
    """One OSC message; raises :class:`Unsendable` naming the first value OSC cannot carry
    (ints beyond 64 bits, floats beyond 32-bit range or not finite, NUL in strings).

    ``strict=False`` (for test clients) sends ``inf``/``nan`` as 32-bit floats and floats
    beyond their range as 64-bit ``d`` values."""
    tags = [","]
    parts: list[bytes] = []
    for n, a in enumerate(args):
        what = f"argument {n + 1}"
        if n % 2 and isinstance(args[n - 1], str):
            what = f"value of {args[n - 1]!r}"
        _arg(a, tags, parts, what, 0, strict)
    return _osc_string(address, "address") + _osc_string("".join(tags), "type tags") + \
        b"".join(parts)
