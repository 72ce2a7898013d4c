"""RFC 8785 JSON Canonicalization Scheme (JCS), byte-identical to ``rfc8785``.

:func:`canonicalize` returns exactly the bytes of ``rfc8785.dumps(value)``
(version 0.1.4) and raises exactly what it raises, but serialises the common
case with CPython's C JSON encoder, which is several times faster.

How the fast path stays exact
-----------------------------
The C encoder configured below (``ensure_ascii=False``, separators ``,`` and
``:``, ``sort_keys=True``, ``allow_nan=False``) already writes JCS for:

* strings (RFC 8785 §3.2.2.2): it escapes exactly ``"``, ``\\`` and
  U+0000-U+001F, using ``\\b \\t \\n \\f \\r`` for those five and lowercase
  ``\\u00xx`` for the rest, and copies every other code point (including
  U+007F and U+2028/U+2029) verbatim, which is what ``rfc8785`` does;
* ``true``/``false``/``null`` and integers (``int.__repr__``, the decimal text
  ``rfc8785`` writes for integers within its ±(2^53-1) domain);
* object key order (§3.2.3 sorts keys by their UTF-16 code units, Python by
  code points). For strings made only of BMP code points a code point *is*
  its single UTF-16 code unit, so the two orders coincide; they can differ
  only when a key holds a character above U+FFFF (a surrogate pair sorts
  below U+E000-U+FFFF in UTF-16). Such characters are looked for in the
  output, where the check is O(1) for ASCII text, and only when some are
  present are the keys walked (:func:`_has_non_bmp_key`); a value with such
  a key takes the fallback.

Before encoding, one walk over the value (:func:`_prepare_dict`,
:func:`_prepare_list`) checks everything else and rewrites the one case that
is cheap to fix:

* floats: the C encoder writes ``float.__repr__``. For ``1e-4 <= |x| < 2^53``
  ``repr`` is in positional notation (``repr`` switches to exponents only
  below 1e-4 or from 1e16 up, and the shortest round-trip digits are monotonic
  in ``x``, so the ``1e-4`` threshold is exact). Non-integral values there
  print as ``repr``, which is what ``rfc8785`` writes. Integral values print
  as ``"N.0"`` where ``rfc8785`` drops the ``.0``; every integer below 2^53
  is a double, so the round-trip digits of such a float are the digits of
  ``int(x)``, and the float is replaced by ``int(x)``. Zero (including
  ``-0.0``) becomes ``0``. Every other float (|x| < 1e-4, |x| >= 2^53, NaN,
  infinities) takes the fallback;
* integers outside ±(2^53-1), non-``str`` keys and any type other than
  exactly ``dict``, ``list``, ``str``, ``int``, ``float``, ``bool`` or
  ``None`` (tuples, subclasses such as enums or ``OrderedDict``, bytes, ...)
  take the fallback: exact ``type(x) is T`` tests let nothing through whose
  encoding could depend on overridden methods;
* lone surrogates are not searched for: the C encoder copies them, and the
  strict UTF-8 encode of its output raises ``UnicodeEncodeError``, which
  sends the value to the fallback.

The fallback is ``rfc8785.dumps(value)`` on the *original* value, so rare
inputs get the reference bytes, and rejected inputs get the reference
exception (``rfc8785.CanonicalizationError`` and its subclasses, or
``UnicodeEncodeError`` for a lone surrogate in a key; all are ``ValueError``).

When nothing needs rewriting the walk allocates nothing and the original
value is encoded as is; otherwise only the containers on the path to a
rewritten float are copied, and the input is never modified. Nesting close to
the interpreter's recursion limit is out of scope (I-JSON messages nest at
most 64 deep): a ``RecursionError`` in the fast path defers to ``rfc8785``.

The C encoder is CPython's ``_json.make_encoder`` (the accelerator behind
``json.dumps``), built once at import: ``json.dumps`` rebuilds it (and a
``JSONEncoder``) on every call, about 2.5 µs of its 11 µs on a 1 KB message.

This module does no I/O and reads no clock.
"""

from __future__ import annotations

from _json import encode_basestring, make_encoder
from typing import Any, Final, NoReturn

import rfc8785

__all__ = ["canonicalize", "canonicalize_reference"]

# Integers rfc8785 accepts: |n| <= 2^53 - 1 (IntegerDomainError otherwise).
_INT_MAX: Final = 2**53 - 1
_INT_MIN: Final = -_INT_MAX
# Floats at or above this magnitude may need ES6 exponent/zero-padding forms.
_FLOAT_BIG: Final = 9007199254740992.0  # 2.0**53
# Below this magnitude float.__repr__ uses exponent notation ("1e-05").
_FLOAT_SMALL: Final = 1e-4
# Highest BMP code point: keys above it may sort differently in UTF-16.
_BMP_MAX: Final = "\uffff"


class _Fallback(Exception):
    """Internal: the value needs ``rfc8785.dumps`` (rare input or an error)."""


def _unexpected(obj: object) -> NoReturn:
    # The walk only lets through types the C encoder handles natively, so the
    # encoder never calls its ``default`` hook.
    raise TypeError(f"unexpected type {type(obj).__name__}")


# json.dumps(sort_keys=True, ensure_ascii=False, separators=(",", ":"),
# allow_nan=False, check_circular=False), built once. Skipping the
# circular-reference check is safe: a cycle never reaches the encoder because
# the walk recurses into it and raises RecursionError first.
_encode: Final = make_encoder(
    None,  # markers (check_circular=False)
    _unexpected,  # default
    encode_basestring,  # string encoder of ensure_ascii=False
    None,  # indent
    ":",  # key separator
    ",",  # item separator
    True,  # sort_keys
    False,  # skipkeys
    False,  # allow_nan
)


def _prepare_float(x: float) -> float | int:
    """``x`` or its replacement for the C encoder; :class:`_Fallback` if neither works."""
    a = -x if x < 0.0 else x
    if _FLOAT_SMALL <= a < _FLOAT_BIG:
        # Positional repr; only integral values need rewriting (see module doc).
        return int(x) if a.is_integer() else x
    if a == 0.0:
        return 0  # 0.0 and -0.0 both serialise as "0"
    raise _Fallback  # tiny, huge, NaN (no comparison holds) or infinite


# The two container walkers below are the hot loop: they test exact types
# with `is` (subclasses, tuples and foreign types fail every test and take the
# fallback), most frequent first, and return their argument itself when
# nothing inside it needs rewriting.


def _prepare_dict(d: dict[Any, Any]) -> dict[str, Any]:
    """``d`` itself if the C encoder writes it as JCS, else a patched shallow copy."""
    copy: dict[str, Any] | None = None
    new: Any
    for k, v in d.items():
        # Non-BMP characters in keys are looked for in the output instead
        # (see canonicalize): that check is O(1) for ASCII text.
        if type(k) is not str:
            raise _Fallback
        t = type(v)
        if t is str:
            continue
        if t is int:
            if _INT_MIN <= v <= _INT_MAX:
                continue
            raise _Fallback
        if t is dict:
            new = _prepare_dict(v)
        elif t is list:
            new = _prepare_list(v)
        elif t is bool or v is None:
            continue
        elif t is float:
            new = _prepare_float(v)
        else:
            raise _Fallback
        if new is not v:
            if copy is None:
                copy = dict(d)  # key order is irrelevant: the encoder sorts
            copy[k] = new
    return d if copy is None else copy


def _prepare_list(a: list[Any]) -> list[Any]:
    """``a`` itself if the C encoder writes it as JCS, else a patched copy."""
    new: Any
    for v in a:
        t = type(v)
        if t is str:
            continue
        if t is int:
            if _INT_MIN <= v <= _INT_MAX:
                continue
            raise _Fallback
        if t is dict:
            new = _prepare_dict(v)
        elif t is list:
            new = _prepare_list(v)
        elif t is bool or v is None:
            continue
        elif t is float:
            new = _prepare_float(v)
        else:
            raise _Fallback
        if new is not v:
            # Rare (an integral float somewhere inside): start again and copy.
            # Looping without an index keeps the common case cheaper.
            return [_prepare(x) for x in a]
    return a


def _prepare(value: Any) -> Any:
    """``value`` or its replacement for the C encoder (same rules as the walkers)."""
    t = type(value)
    if t is dict:
        return _prepare_dict(value)
    if t is list:
        return _prepare_list(value)
    if t is str or t is bool or value is None:
        return value
    if t is int:
        if _INT_MIN <= value <= _INT_MAX:
            return value
        raise _Fallback
    if t is float:
        return _prepare_float(value)
    raise _Fallback


def _has_non_bmp_key(value: Any) -> bool:
    """Whether a dict inside ``value`` (already walked, so plain types) has a non-BMP key."""
    if type(value) is dict:
        for k, v in value.items():
            if max(k, default="") > _BMP_MAX or _has_non_bmp_key(v):
                return True
    elif type(value) is list:
        for v in value:
            if _has_non_bmp_key(v):
                return True
    return False


def canonicalize(value: object) -> bytes:
    """RFC 8785 (JCS) bytes of ``value``; identical to ``rfc8785.dumps(value)``.

    ``value`` is built from ``dict`` (``str`` keys), ``list``, ``str``, ``int``,
    ``float``, ``bool`` and ``None``. Anything ``rfc8785`` rejects (NaN,
    infinities, integers beyond ±(2^53-1), non-string keys, lone surrogates,
    unsupported types such as ``bytes``) raises the same ``ValueError``
    subclass it raises.
    """
    try:
        # The C encoder returns its output as a one-element list.
        text = "".join(_encode(_prepare(value), 0))
        # Strict UTF-8: a lone surrogate raises UnicodeEncodeError.
        data = text.encode("utf-8")
        # Key order is exact unless a key holds a character above U+FFFF.
        # isascii() is O(1) on the encoder's output. Other text has no such
        # character iff its UTF-16 form is 2 bytes per code point (there are
        # no surrogates left: the UTF-8 encode succeeded), a check far
        # cheaper than a regex scan. Only if there are some are the keys,
        # rather than the values, walked.
        if (
            text.isascii()
            or len(text.encode("utf-16-le")) == 2 * len(text)
            or not _has_non_bmp_key(value)
        ):
            return data
    except (_Fallback, UnicodeEncodeError, RecursionError):
        pass
    # Outside the except block so a reference error is not chained to ours.
    return canonicalize_reference(value)


def canonicalize_reference(value: object) -> bytes:
    """``rfc8785.dumps(value)``: the reference implementation and the fallback."""
    any_value: Any = value  # rfc8785 annotates its own JSON value type
    result: bytes = rfc8785.dumps(any_value)
    return result
