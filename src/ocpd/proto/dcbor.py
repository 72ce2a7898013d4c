"""Deterministic CBOR (RFC 8949 §4.2.1) for networking signing inputs (D8).

Networking artifacts travel as JSON; their signatures cover
``b"<type>\\x00" + deterministic_cbor(payload without signature)``. The
payload is a JSON value, so only that data model is encoded: maps with text
keys, arrays, text strings, integers, booleans and null (plus byte strings
for callers that need them). Floats are refused: no networking artifact has
one, and leaving them out removes the one part of the deterministic rules
(shortest float form) where implementations most often disagree.

Core deterministic encoding means: shortest-form heads for every length and
integer, definite lengths only, map keys sorted by the bytewise order of their
encodings. The decoder accepts exactly the bytes this encoder produces for the
value it decodes: indefinite lengths, duplicate keys, unsorted keys,
non-shortest heads, tags, floats and trailing bytes are all refused.
"""

from __future__ import annotations

from typing import Final

import cbor2

from ocpd.proto.errors import MalformedError

__all__ = ["decode_deterministic", "encode_deterministic", "signing_input"]

_MAX_DEPTH: Final = 64


def _head(major: int, value: int) -> bytes:
    if value < 24:
        return bytes([(major << 5) | value])
    if value < 0x100:
        return bytes([(major << 5) | 24, value])
    if value < 0x10000:
        return bytes([(major << 5) | 25]) + value.to_bytes(2, "big")
    if value < 0x100000000:
        return bytes([(major << 5) | 26]) + value.to_bytes(4, "big")
    if value < 0x10000000000000000:
        return bytes([(major << 5) | 27]) + value.to_bytes(8, "big")
    raise ValueError("integer does not fit in a CBOR head")


def _encode(value: object, out: list[bytes], depth: int) -> None:
    if depth > _MAX_DEPTH:
        raise ValueError("value nests too deeply for CBOR encoding")
    if value is None:
        out.append(b"\xf6")
    elif value is True:
        out.append(b"\xf5")
    elif value is False:
        out.append(b"\xf4")
    elif type(value) is int:
        out.append(_head(0, value) if value >= 0 else _head(1, -1 - value))
    elif type(value) is str:
        raw = value.encode("utf-8")
        out.append(_head(3, len(raw)))
        out.append(raw)
    elif type(value) is bytes:
        out.append(_head(2, len(value)))
        out.append(value)
    elif type(value) is list:
        out.append(_head(4, len(value)))
        for item in value:
            _encode(item, out, depth + 1)
    elif type(value) is dict:
        entries = []
        for key, item in value.items():
            if type(key) is not str:
                raise ValueError("CBOR map keys must be text strings")
            key_out: list[bytes] = []
            _encode(key, key_out, depth + 1)
            item_out: list[bytes] = []
            _encode(item, item_out, depth + 1)
            entries.append((b"".join(key_out), b"".join(item_out)))
        entries.sort(key=lambda entry: entry[0])
        out.append(_head(5, len(entries)))
        for key_bytes, item_bytes in entries:
            out.append(key_bytes)
            out.append(item_bytes)
    else:
        raise ValueError(f"{type(value).__name__} has no deterministic CBOR form here")


def encode_deterministic(value: object) -> bytes:
    """RFC 8949 §4.2.1 encoding of a JSON-model value (``ValueError`` otherwise)."""
    out: list[bytes] = []
    _encode(value, out, 0)
    return b"".join(out)


def decode_deterministic(data: bytes) -> object:
    """Decode CBOR that is exactly in deterministic form, else OCP-400."""
    try:
        value = cbor2.loads(
            data,
            allow_indefinite=False,
            allow_duplicate_keys=False,
            max_depth=_MAX_DEPTH,
        )
    except (cbor2.CBORDecodeError, ValueError, TypeError, RecursionError) as exc:
        raise MalformedError("not well-formed CBOR") from exc
    try:
        again = encode_deterministic(value)
    except ValueError as exc:
        raise MalformedError(f"CBOR outside the deterministic JSON model: {exc}") from exc
    if again != data:
        raise MalformedError("CBOR is not in deterministic form or has trailing bytes")
    return value


def signing_input(artifact_type: str, payload: dict[str, object]) -> bytes:
    """``<artifact_type>\\x00 || deterministic_cbor(payload)`` (NET FR-004b, FR-010a)."""
    if "\x00" in artifact_type:
        raise ValueError("artifact type must not contain NUL")
    return artifact_type.encode("ascii") + b"\x00" + encode_deterministic(payload)
