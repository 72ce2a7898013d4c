"""WebSocket frames (RFC 6455 §5), server side, without I/O.

After the upgrade a session's server needs only this: read the client's
frames, write its own. :class:`FrameReader` takes bytes as they arrive
(:meth:`FrameReader.feed`) and hands back whole events: a message
(fragments joined), a ping, a pong or a close. It enforces what a server
must of a client without extensions:

* every frame masked, RSV bits clear, a known opcode, lengths in their
  shortest form, control frames unfragmented and at most 125 bytes,
  continuations only inside a fragmented message (else 1002);
* text valid UTF-8, close reasons too (else 1007);
* a close payload empty or a valid code (1000-1003, 1007-1014, 3000-4999)
  and reason (else 1002);
* a message at most ``max_message_bytes``: refused (1009) as soon as a
  frame header announces more, before its payload is buffered.

A violation raises :class:`FrameError` carrying the close code to answer
with. The writer functions (:func:`text_frame`, :func:`binary_frame`,
:func:`ping_frame`, :func:`pong_frame`, :func:`close_frame`) build unmasked,
unfragmented server frames.

The parse is the hot path of every WebSocket message: one ``struct`` read
for the header, and the mask undone with one integer XOR over the payload.
"""

from __future__ import annotations

import struct
from typing import Final, NamedTuple

__all__ = [
    "Close",
    "FrameError",
    "FrameReader",
    "Message",
    "Ping",
    "Pong",
    "binary_frame",
    "close_frame",
    "ping_frame",
    "pong_frame",
    "text_frame",
]

OP_CONTINUATION: Final = 0x0
OP_TEXT: Final = 0x1
OP_BINARY: Final = 0x2
OP_CLOSE: Final = 0x8
OP_PING: Final = 0x9
OP_PONG: Final = 0xA
_DATA: Final = frozenset((OP_CONTINUATION, OP_TEXT, OP_BINARY))
_CONTROL: Final = frozenset((OP_CLOSE, OP_PING, OP_PONG))
MAX_CONTROL_PAYLOAD: Final = 125

CLOSE_NO_STATUS: Final = 1005
CLOSE_PROTOCOL_ERROR: Final = 1002
CLOSE_INVALID_DATA: Final = 1007
CLOSE_TOO_BIG: Final = 1009

_U16: Final = struct.Struct("!H")
_U64: Final = struct.Struct("!Q")


class FrameError(Exception):
    """The client broke the protocol: close the connection with ``code``."""

    def __init__(self, code: int, reason: str) -> None:
        super().__init__(reason)
        self.code = code
        self.reason = reason


class Message(NamedTuple):
    """A whole data message: ``str`` for text, ``bytes`` for binary."""

    data: str | bytes


class Ping(NamedTuple):
    payload: bytes


class Pong(NamedTuple):
    payload: bytes


class Close(NamedTuple):
    """The client's close: its code (1005 when it gave none) and reason."""

    code: int
    reason: str


Event = Message | Ping | Pong | Close


def valid_close_code(code: int) -> bool:
    """May a close frame carry ``code`` (RFC 6455 §7.4, IANA registry)?"""
    return code in (1000, 1001, 1002, 1003) or 1007 <= code <= 1014 or 3000 <= code <= 4999


def unmask(mask: bytes, payload: bytes | bytearray | memoryview) -> bytes:
    """``payload`` XOR the repeated 4-byte ``mask``."""
    size = len(payload)
    if not size:
        return b""
    key = (mask * ((size >> 2) + 1))[:size]
    value = int.from_bytes(payload, "little") ^ int.from_bytes(key, "little")
    return value.to_bytes(size, "little")


class FrameReader:
    """The client's frames, parsed as they arrive."""

    __slots__ = ("_buffer", "_message_opcode", "_parts", "_size", "max_message_bytes")

    def __init__(self, max_message_bytes: int) -> None:
        self.max_message_bytes = max_message_bytes
        self._buffer = bytearray()
        #: The opcode of the fragmented message in progress (``None``: none).
        self._message_opcode: int | None = None
        self._parts: list[bytes] = []
        self._size = 0

    def feed(self, data: bytes | bytearray) -> list[Event]:
        """Take ``data``; the events it completes, in order. Raises :class:`FrameError`."""
        buffer = self._buffer
        buffer += data
        events: list[Event] = []
        at = 0
        end = len(buffer)
        while end - at >= 2:
            first, second = buffer[at], buffer[at + 1]
            if first & 0x70:
                raise FrameError(CLOSE_PROTOCOL_ERROR, "reserved bits set")
            if not second & 0x80:
                raise FrameError(CLOSE_PROTOCOL_ERROR, "client frames must be masked")
            fin = bool(first & 0x80)
            opcode = first & 0x0F
            length = second & 0x7F
            head = 6
            # The mask's 4 bytes follow the length; the length is checked before they arrive.
            if length == 126:
                if end - at < 4:
                    break
                length = _U16.unpack_from(buffer, at + 2)[0]
                if length < 126:
                    raise FrameError(CLOSE_PROTOCOL_ERROR, "length not in its shortest form")
                head = 8
            elif length == 127:
                if end - at < 10:
                    break
                length = _U64.unpack_from(buffer, at + 2)[0]
                if length < 65_536 or length >> 63:
                    raise FrameError(CLOSE_PROTOCOL_ERROR, "length not in its shortest form")
                head = 14
            if opcode in _CONTROL:
                if not fin or length > MAX_CONTROL_PAYLOAD:
                    raise FrameError(
                        CLOSE_PROTOCOL_ERROR, "control frames are whole and at most 125 bytes"
                    )
            elif opcode in _DATA:
                if opcode == OP_CONTINUATION:
                    if self._message_opcode is None:
                        raise FrameError(CLOSE_PROTOCOL_ERROR, "continuation of no message")
                elif self._message_opcode is not None:
                    raise FrameError(CLOSE_PROTOCOL_ERROR, "new message inside a fragmented one")
                if self._size + length > self.max_message_bytes:
                    raise FrameError(CLOSE_TOO_BIG, "message too big")
            else:
                raise FrameError(CLOSE_PROTOCOL_ERROR, f"unknown opcode {opcode}")
            if end - at < head + length:
                break
            mask = bytes(buffer[at + head - 4 : at + head])
            payload = unmask(mask, buffer[at + head : at + head + length])
            at += head + length
            if opcode in _CONTROL:
                events.append(_control(opcode, payload))
                continue
            if opcode != OP_CONTINUATION:
                self._message_opcode = opcode
            if fin and not self._parts:
                message = payload
            else:
                self._parts.append(payload)
                self._size += length
                if not fin:
                    continue
                message = b"".join(self._parts)
                self._parts, self._size = [], 0
            kind, self._message_opcode = self._message_opcode, None
            if kind == OP_TEXT:
                try:
                    events.append(Message(message.decode("utf-8")))
                except UnicodeDecodeError:
                    raise FrameError(CLOSE_INVALID_DATA, "text is not valid UTF-8") from None
            else:
                events.append(Message(message))
        if at:
            del buffer[:at]
        return events


def _control(opcode: int, payload: bytes) -> Event:
    if opcode == OP_PING:
        return Ping(payload)
    if opcode == OP_PONG:
        return Pong(payload)
    if not payload:
        return Close(CLOSE_NO_STATUS, "")
    if len(payload) == 1:
        raise FrameError(CLOSE_PROTOCOL_ERROR, "close payload of one byte")
    code = _U16.unpack_from(payload)[0]
    if not valid_close_code(code):
        raise FrameError(CLOSE_PROTOCOL_ERROR, f"invalid close code {code}")
    try:
        reason = payload[2:].decode("utf-8")
    except UnicodeDecodeError:
        raise FrameError(CLOSE_INVALID_DATA, "close reason is not valid UTF-8") from None
    return Close(code, reason)


def _frame(opcode: int, payload: bytes) -> bytes:
    size = len(payload)
    first = 0x80 | opcode
    if size < 126:
        return bytes((first, size)) + payload
    if size < 65_536:
        return bytes((first, 126)) + _U16.pack(size) + payload
    return bytes((first, 127)) + _U64.pack(size) + payload


def text_frame(text: str) -> bytes:
    return _frame(OP_TEXT, text.encode("utf-8"))


def binary_frame(data: bytes) -> bytes:
    return _frame(OP_BINARY, data)


def ping_frame(payload: bytes) -> bytes:
    return _frame(OP_PING, payload[:MAX_CONTROL_PAYLOAD])


def pong_frame(payload: bytes) -> bytes:
    return _frame(OP_PONG, payload[:MAX_CONTROL_PAYLOAD])


def close_frame(code: int | None, reason: str = "") -> bytes:
    """A close frame; ``None`` (or 1005) for one without a code."""
    if code is None or code == CLOSE_NO_STATUS:
        return _frame(OP_CLOSE, b"")
    encoded = reason.encode("utf-8")
    if len(encoded) > MAX_CONTROL_PAYLOAD - 2:
        encoded = encoded[: MAX_CONTROL_PAYLOAD - 2].decode("utf-8", "ignore").encode("utf-8")
    return _frame(OP_CLOSE, _U16.pack(code) + encoded)
