"""ocpd.wsframes: the server's WebSocket frame reader and writers, against wsproto's client."""

from __future__ import annotations

import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from wsproto.connection import Connection, ConnectionType
from wsproto.events import BytesMessage, CloseConnection, Message, TextMessage
from wsproto.events import Ping as WsPing

from ocpd.wsframes import (
    Close,
    FrameError,
    FrameReader,
    Ping,
    Pong,
    binary_frame,
    close_frame,
    ping_frame,
    pong_frame,
    text_frame,
    unmask,
)
from ocpd.wsframes import Message as FrameMessage

MASK = b"\x12\x34\x56\x78"
LIMIT = 1 << 20


def client() -> Connection:
    return Connection(ConnectionType.CLIENT)


def raw_frame(
    opcode: int,
    payload: bytes,
    *,
    fin: bool = True,
    masked: bool = True,
    rsv: int = 0,
    length_form: str = "short",
) -> bytes:
    """A client frame built by hand, for the shapes a well-behaved client never sends."""
    first = (0x80 if fin else 0) | rsv | opcode
    size = len(payload)
    mask_bit = 0x80 if masked else 0
    if length_form == "short":
        head = bytes((first, mask_bit | size))
    elif length_form == "16":
        head = bytes((first, mask_bit | 126)) + struct.pack("!H", size)
    else:
        head = bytes((first, mask_bit | 127)) + struct.pack("!Q", size)
    if not masked:
        return head + payload
    return head + MASK + unmask(MASK, payload)


def refused(data: bytes, limit: int = LIMIT) -> FrameError:
    with pytest.raises(FrameError) as caught:
        FrameReader(limit).feed(data)
    return caught.value


# --- what a client sends --------------------------------------------------------------


@pytest.mark.parametrize("size", [0, 1, 125, 126, 65_535, 65_536, 200_000])
def test_a_text_message_of_any_length_form_arrives_whole(size: int) -> None:
    text = ("é" * size)[:size]
    data = client().send(TextMessage(data=text))
    assert FrameReader(LIMIT).feed(data) == [FrameMessage(text)]


def test_binary_messages_arrive_as_bytes() -> None:
    data = client().send(BytesMessage(data=b"\x00\xff" * 100))
    assert FrameReader(LIMIT).feed(data) == [FrameMessage(b"\x00\xff" * 100)]


def test_frames_fed_one_byte_at_a_time_make_the_same_events() -> None:
    peer = client()
    data = (
        peer.send(TextMessage(data="first ✓"))
        + peer.send(WsPing(payload=b"p"))
        + peer.send(BytesMessage(data=b"second"))
    )
    reader = FrameReader(LIMIT)
    events = []
    for i in range(len(data)):
        events += reader.feed(data[i : i + 1])
    assert events == [FrameMessage("first ✓"), Ping(b"p"), FrameMessage(b"second")]


def test_a_fragmented_message_is_joined_and_may_split_a_character() -> None:
    encoded = "añb€".encode()
    data = (
        raw_frame(0x1, encoded[:2], fin=False)
        + raw_frame(0x9, b"mid")  # a control frame between fragments is allowed
        + raw_frame(0x0, encoded[2:5], fin=False)
        + raw_frame(0x0, encoded[5:])
    )
    assert FrameReader(LIMIT).feed(data) == [Ping(b"mid"), FrameMessage("añb€")]


@given(
    st.lists(st.one_of(st.text(max_size=300), st.binary(max_size=300)), min_size=1, max_size=6),
    st.lists(st.integers(min_value=1, max_value=97), min_size=1, max_size=8),
)
@settings(max_examples=60, deadline=None)
def test_any_messages_in_any_chunking_arrive_as_sent(
    messages: list[str | bytes], cuts: list[int]
) -> None:
    peer = client()
    data = b"".join(
        peer.send(TextMessage(data=m) if isinstance(m, str) else BytesMessage(data=m))
        for m in messages
    )
    reader = FrameReader(LIMIT)
    got = []
    at = 0
    for i in range(len(data)):
        step = cuts[i % len(cuts)]
        if at >= len(data):
            break
        got += reader.feed(data[at : at + step])
        at += step
    assert got == [FrameMessage(m) for m in messages]


def test_ping_pong_and_close_events() -> None:
    peer = client()
    data = peer.send(WsPing(payload=b"hello"))
    data += raw_frame(0xA, b"pong")
    data += peer.send(CloseConnection(code=1001, reason="bye ✓"))
    assert FrameReader(LIMIT).feed(data) == [Ping(b"hello"), Pong(b"pong"), Close(1001, "bye ✓")]


def test_a_close_without_a_code_reports_1005() -> None:
    assert FrameReader(LIMIT).feed(raw_frame(0x8, b"")) == [Close(1005, "")]


# --- what a client must not send ----------------------------------------------------------


def test_unmasked_frames_are_a_protocol_error() -> None:
    assert refused(raw_frame(0x1, b"hi", masked=False)).code == 1002


@pytest.mark.parametrize("rsv", [0x40, 0x20, 0x10])
def test_reserved_bits_are_a_protocol_error(rsv: int) -> None:
    assert refused(raw_frame(0x1, b"hi", rsv=rsv)).code == 1002


@pytest.mark.parametrize("opcode", [0x3, 0x7, 0xB, 0xF])
def test_unknown_opcodes_are_a_protocol_error(opcode: int) -> None:
    assert refused(raw_frame(opcode, b"")).code == 1002


@pytest.mark.parametrize(("size", "form"), [(10, "16"), (125, "16"), (10, "64"), (65_535, "64")])
def test_lengths_not_in_their_shortest_form_are_a_protocol_error(size: int, form: str) -> None:
    assert refused(raw_frame(0x2, bytes(size), length_form=form)).code == 1002


def test_a_64_bit_length_with_its_top_bit_set_is_a_protocol_error() -> None:
    data = bytes((0x82, 0xFF)) + struct.pack("!Q", 1 << 63) + MASK
    assert refused(data).code == 1002


def test_fragmented_or_long_control_frames_are_a_protocol_error() -> None:
    assert refused(raw_frame(0x9, b"x", fin=False)).code == 1002
    assert refused(raw_frame(0x9, bytes(126), length_form="16")).code == 1002


def test_a_continuation_of_nothing_is_a_protocol_error() -> None:
    assert refused(raw_frame(0x0, b"x")).code == 1002


def test_a_new_message_inside_a_fragmented_one_is_a_protocol_error() -> None:
    data = raw_frame(0x1, b"a", fin=False) + raw_frame(0x1, b"b")
    assert refused(data).code == 1002


def test_invalid_utf8_text_is_1007() -> None:
    assert refused(raw_frame(0x1, b"\xff\xfe")).code == 1007
    data = raw_frame(0x1, "é".encode()[:1], fin=False) + raw_frame(0x0, b"")
    assert refused(data).code == 1007


@pytest.mark.parametrize("code", [0, 999, 1004, 1005, 1006, 1015, 2999, 5000])
def test_invalid_close_codes_are_a_protocol_error(code: int) -> None:
    assert refused(raw_frame(0x8, struct.pack("!H", code))).code == 1002


def test_a_one_byte_close_payload_is_a_protocol_error() -> None:
    assert refused(raw_frame(0x8, b"\x03")).code == 1002


def test_a_close_reason_that_is_not_utf8_is_1007() -> None:
    assert refused(raw_frame(0x8, struct.pack("!H", 1000) + b"\xff")).code == 1007


def test_a_frame_announcing_too_much_is_refused_before_its_payload_arrives() -> None:
    head = bytes((0x81, 0xFF)) + struct.pack("!Q", LIMIT + 1)
    assert refused(head).code == 1009  # not even the mask has arrived


def test_fragments_adding_up_past_the_limit_are_refused() -> None:
    reader = FrameReader(1000)
    assert reader.feed(raw_frame(0x2, bytes(600), fin=False, length_form="16")) == []
    with pytest.raises(FrameError) as caught:
        reader.feed(raw_frame(0x0, bytes(401), length_form="16")[:4])
    assert caught.value.code == 1009


def test_a_message_exactly_at_the_limit_is_accepted() -> None:
    reader = FrameReader(1000)
    reader.feed(raw_frame(0x2, bytes(600), fin=False, length_form="16"))
    assert reader.feed(raw_frame(0x0, bytes(400), length_form="16")) == [FrameMessage(bytes(1000))]


# --- what the server writes, read by wsproto's client ---------------------------------------


def client_events(data: bytes) -> list[object]:
    peer = client()
    peer.receive_data(data)
    return list(peer.events())


@pytest.mark.parametrize("size", [0, 125, 126, 65_535, 65_536])
def test_server_frames_of_every_length_form_read_back(size: int) -> None:
    (text,) = client_events(text_frame("x" * size))
    assert isinstance(text, TextMessage)
    assert text.data == "x" * size
    assert text.message_finished
    (blob,) = client_events(binary_frame(b"\x01" * size))
    assert isinstance(blob, Message)
    assert blob.data == b"\x01" * size


def test_server_control_frames_read_back() -> None:
    ping, pong, close = client_events(
        ping_frame(b"are you there") + pong_frame(b"yes") + close_frame(1008, "policy ✓")
    )
    assert isinstance(ping, WsPing)
    assert ping.payload == b"are you there"
    assert pong.payload == b"yes"  # type: ignore[attr-defined]
    assert isinstance(close, CloseConnection)
    assert (close.code, close.reason) == (1008, "policy ✓")


def test_a_long_close_reason_is_cut_on_a_character_boundary() -> None:
    frame = close_frame(1000, "ab" + "€" * 100)
    reason = frame[4:]
    assert frame[1] == len(frame) - 2 <= 125
    assert reason.decode("utf-8") == "ab" + "€" * 40  # 2 + 40 * 3 bytes; a 41st would not fit
    (close,) = client_events(frame)
    assert isinstance(close, CloseConnection)
    assert close.reason == "ab" + "€" * 40


def test_close_without_a_code_is_an_empty_frame() -> None:
    assert close_frame(None) == b"\x88\x00"
    assert close_frame(1005) == b"\x88\x00"
