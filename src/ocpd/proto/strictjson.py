"""Strict JSON intake: bytes from the network to a Python value, or OCP-400.

Incoming JSON must be I-JSON (RFC 7493) with ocpd's depth limit (D1):

* UTF-8 only, no byte order mark;
* no duplicate member names;
* no NaN, Infinity or numbers that overflow to infinity;
* integers within ±(2^53-1) (integers written with a fraction or exponent
  are numbers like any other and are checked for finiteness only);
* no lone surrogates (``"\\ud800"`` escapes);
* nesting at most 64 deep.

Oversized input is refused with OCP-413 before anything is decoded. Every
failure is a :class:`MalformedError` or :class:`PayloadTooLarge`; no other
exception type escapes.

The standard library's C scanner does the parsing; the checks it does not do
are layered on with hooks and cheap pre-filters, so that a typical message
pays only for what it contains: the depth scan runs only when the text has
more than 64 opening brackets, and the surrogate walk only when the text has a
``\\uD8xx``-``\\uDFxx`` escape at all.
"""

from __future__ import annotations

import json
import math
import re
from itertools import accumulate
from typing import Final

from ocpd.proto.errors import MalformedError, PayloadTooLarge

__all__ = ["MAX_DEPTH", "MAX_SAFE_INTEGER", "loads_strict"]

MAX_DEPTH: Final = 64
MAX_SAFE_INTEGER: Final = 2**53 - 1

# Any surrogate escape; a hit only means "look closer" (it also matches an
# escaped backslash followed by the letters "ud800").
_SURROGATE_ESCAPE: Final = re.compile(rb"\\u[dD][89abcdefABCDEF]")
# Strings (with escapes) in JSON text, to blank them out before counting
# brackets.
_JSON_STRING: Final = re.compile(rb'"[^"\\]*(?:\\.[^"\\]*)*"', re.DOTALL)
_NOT_BRACKETS: Final = bytes(b for b in range(256) if b not in b"[]{}")
_BRACKET_STEP: Final = {0x5B: 1, 0x7B: 1, 0x5D: -1, 0x7D: -1}


class _Reject(ValueError):
    """Raised inside decoder hooks; converted to MalformedError at the edge."""


def _pairs(pairs: list[tuple[str, object]]) -> dict[str, object]:
    obj = dict(pairs)
    if len(obj) != len(pairs):
        raise _Reject("duplicate member name")
    return obj


def _int(text: str) -> int:
    value = int(text)
    if -MAX_SAFE_INTEGER <= value <= MAX_SAFE_INTEGER:
        return value
    raise _Reject("integer outside ±(2^53-1)")


def _float(text: str) -> float:
    value = float(text)
    if math.isfinite(value):
        return value
    raise _Reject("number overflows to infinity")


def _constant(name: str) -> object:
    raise _Reject(f"{name} is not JSON")


_DECODER: Final = json.JSONDecoder(
    object_pairs_hook=_pairs,
    parse_int=_int,
    parse_float=_float,
    parse_constant=_constant,
    strict=True,
)


def _depth_exceeds(data: bytes, limit: int) -> bool:
    """Whether arrays/objects nest deeper than ``limit``.

    Called only for text with more than ``limit`` opening brackets, before
    parsing, so that a nesting bomb never reaches the recursive decoder.
    Strings are blanked first so that brackets inside them do not count; what
    remains is reduced to its brackets and summed as a running depth.
    """
    brackets = _JSON_STRING.sub(b'""', data).translate(None, _NOT_BRACKETS)
    deepest = max(accumulate(map(_BRACKET_STEP.__getitem__, brackets)), default=0)
    return deepest > limit


def _has_lone_surrogate(value: object) -> bool:
    stack = [value]
    while stack:
        item = stack.pop()
        if type(item) is str:
            if not _is_well_formed(item):
                return True
        elif type(item) is dict:
            for key, member in item.items():
                if not _is_well_formed(key):
                    return True
                stack.append(member)
        elif type(item) is list:
            stack.extend(item)
    return False


def _is_well_formed(text: str) -> bool:
    # A pair of surrogate escapes is combined by the decoder into one
    # character; whatever surrogate remains is lone.
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def loads_strict(data: bytes, *, max_size: int) -> object:
    """Parse ``data`` as I-JSON of at most ``max_size`` bytes.

    Raises :class:`PayloadTooLarge` (OCP-413) for oversized input and
    :class:`MalformedError` (OCP-400) for anything that is not strict I-JSON.
    """
    if len(data) > max_size:
        raise PayloadTooLarge(
            f"body of {len(data)} bytes exceeds the limit of {max_size}",
            details={"limit": max_size},
        )
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise MalformedError("body is not valid UTF-8") from exc
    if text.startswith("\ufeff"):
        raise MalformedError("body starts with a byte order mark")
    if data.count(b"[") + data.count(b"{") > MAX_DEPTH and _depth_exceeds(data, MAX_DEPTH):
        raise MalformedError(f"JSON nests deeper than {MAX_DEPTH} levels")
    try:
        value = _DECODER.decode(text)
    except _Reject as exc:
        raise MalformedError(f"body is not I-JSON: {exc}") from exc
    except (ValueError, RecursionError) as exc:
        # JSONDecodeError is a ValueError; its message names the position.
        raise MalformedError(f"body is not valid JSON: {exc}") from exc
    if _SURROGATE_ESCAPE.search(data) and _has_lone_surrogate(value):
        raise MalformedError("body contains a lone surrogate")
    return value
