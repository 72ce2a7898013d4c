"""Peer sessions without I/O: handshake, replay memory, frames, conversation, keepalive."""

from __future__ import annotations

import json
from typing import Any

import pytest

from ocpd.proto.crypto import SigningKey, X25519KeyPair, chacha20poly1305_encrypt
from ocpd.proto.errors import NetError
from ocpd.proto.ids import format_node_id
from ocpd.proto.netartifacts import (
    build_capability_advertisement,
    build_hello,
    build_node_advertisement,
    build_signal_marker,
    build_signal_marker_envelope,
)
from ocpd.proto.peer import (
    FRAME_AAD,
    AdvertisementReceived,
    CapabilitiesReceived,
    Established,
    FrameCipher,
    Initiator,
    MessageReceived,
    NonceMemory,
    PeerErrorReceived,
    PeerSession,
    ReceiptReceived,
    Refused,
    Responder,
    SignalReceived,
    frame_nonce,
    parse_handshake,
)
from ocpd.proto.signing import sign_net_artifact

T0 = 1_775_217_600.0  # 2026-04-03T12:00:00Z

A = SigningKey(bytes(range(32)))
B = SigningKey(bytes(range(1, 33)))
C = SigningKey(bytes(range(2, 34)))
A_ID, B_ID, C_ID = (format_node_id(k.public_key) for k in (A, B, C))


def _code(exc: pytest.ExceptionInfo[NetError]) -> str:
    return exc.value.code


def handshake(now: float = T0) -> tuple[Established, Established]:
    initiator = Initiator(A, now=now, recipient=B_ID, capabilities=["core/messaging"])
    responder = Responder(B, NonceMemory(), capabilities=["core/messaging"])
    hello = parse_handshake(initiator.hello_text())
    ack, theirs = responder.receive_hello(hello, now=now + 0.1)
    ours = initiator.receive_ack(json.loads(json.dumps(ack)), now=now + 0.2)
    return ours, theirs


def opened(
    caps: tuple[str, ...] = ("core/messaging", "ocp/routing"),
) -> tuple[PeerSession, PeerSession]:
    """Two sessions past the capability exchange."""
    ours, theirs = handshake()
    a, b = PeerSession(ours, now=T0), PeerSession(theirs, now=T0)
    a.send_capabilities(build_capability_advertisement(A, now=T0, capabilities=caps), now=T0)
    b.send_capabilities(build_capability_advertisement(B, now=T0, capabilities=caps), now=T0)
    assert isinstance(deliver(a, b)[0], CapabilitiesReceived)
    assert isinstance(deliver(b, a)[0], CapabilitiesReceived)
    return a, b


def deliver(sender: PeerSession, receiver: PeerSession, now: float = T0) -> list[Any]:
    events: list[Any] = []
    for frame in sender.data_to_send():
        events.extend(receiver.receive(frame, now=now))
    return events


# --- handshake ---------------------------------------------------------------------------------


def test_both_sides_derive_the_same_keys_and_know_each_other() -> None:
    ours, theirs = handshake()
    assert ours.keys.send_key == theirs.keys.receive_key
    assert ours.keys.receive_key == theirs.keys.send_key
    assert ours.keys.send_key != ours.keys.receive_key
    assert (ours.peer_node_id, theirs.peer_node_id) == (B_ID, A_ID)
    assert ours.initiator and not theirs.initiator
    assert ours.handshake_id == theirs.handshake_id
    assert ours.offered == theirs.offered == frozenset({"core/messaging"})


def test_fresh_ephemeral_keys_give_every_session_new_keys() -> None:
    first, _ = handshake()
    second, _ = handshake()
    assert first.keys.send_key != second.keys.send_key


@pytest.mark.parametrize(("offset", "ok"), [(29.999, True), (-29.999, True), (30.001, False)])
def test_hello_clock_skew_window(offset: float, ok: bool) -> None:
    hello = Initiator(A, now=T0).hello
    responder = Responder(B, NonceMemory())
    if ok:
        responder.receive_hello(hello, now=T0 + offset)
    else:
        with pytest.raises(NetError) as exc:
            responder.receive_hello(hello, now=T0 + offset)
        assert _code(exc) == "E_HS_REPLAY"


def test_a_replayed_hello_is_refused_within_the_window_and_after_a_restart() -> None:
    nonces = NonceMemory()
    hello = Initiator(A, now=T0).hello
    Responder(B, nonces).receive_hello(hello, now=T0)
    with pytest.raises(NetError) as exc:
        Responder(B, nonces).receive_hello(hello, now=T0 + 5)
    assert _code(exc) == "E_HS_REPLAY"
    # A restarted responder that restored its memory refuses it too.
    restarted = NonceMemory()
    restarted.restore(nonces.entries(), now=T0 + 10)
    with pytest.raises(NetError) as exc:
        Responder(B, restarted).receive_hello(hello, now=T0 + 10)
    assert _code(exc) == "E_HS_REPLAY"
    # After the skew window the timestamp alone refuses it.
    with pytest.raises(NetError) as exc:
        Responder(B, NonceMemory()).receive_hello(hello, now=T0 + 31)
    assert _code(exc) == "E_HS_REPLAY"


def test_nonce_memory_forgets_after_retention_and_is_bounded() -> None:
    memory = NonceMemory(retention=120.0, capacity=2)
    memory.admit("p", "n1", T0)
    memory.admit("q", "n1", T0 + 1)  # same nonce, other peer: fine
    with pytest.raises(NetError) as exc:
        memory.admit("p", "n2", T0 + 2)
    assert _code(exc) == "E_TRANSPORT_REJECTED"
    memory.admit("p", "n2", T0 + 120)  # n1 of p expired at T0 + 120
    assert len(memory) == 2
    memory.restore([("r", "old", T0 + 100), ("s", "live", T0 + 500)], now=T0 + 200)
    assert [e[:2] for e in memory.entries()] == [("q", "n1"), ("p", "n2")]


def test_a_forged_hello_is_refused_and_not_remembered() -> None:
    nonces = NonceMemory()
    hello = dict(Initiator(A, now=T0).hello)
    hello["ts"] = "2026-04-03T12:00:01Z"
    with pytest.raises(NetError) as exc:
        Responder(B, nonces).receive_hello(hello, now=T0)
    assert _code(exc) == "E_SIG_INVALID"
    assert len(nonces) == 0


def test_a_hello_claiming_another_key_is_an_unknown_signer() -> None:
    hello = dict(Initiator(A, now=T0).hello)
    hello["sender/node-id"] = C_ID
    with pytest.raises(NetError) as exc:
        Responder(B, NonceMemory()).receive_hello(hello, now=T0)
    assert _code(exc) == "E_SIG_UNKNOWN_SIGNER"


def test_another_protocol_version_fails_closed_before_the_signature() -> None:
    hello = dict(Initiator(A, now=T0).hello)
    hello["protocol/version"] = "2.0"
    with pytest.raises(NetError) as exc:
        Responder(B, NonceMemory()).receive_hello(hello, now=T0)
    assert _code(exc) == "E_PROTO_VERSION"


def test_a_hello_for_another_node_is_refused() -> None:
    hello = Initiator(A, now=T0, recipient=C_ID).hello
    with pytest.raises(NetError) as exc:
        Responder(B, NonceMemory()).receive_hello(hello, now=T0)
    assert _code(exc) == "E_PROTO_INVALID"


def test_an_ack_sent_as_the_first_message_is_an_unknown_reference() -> None:
    initiator = Initiator(A, now=T0)
    ack, _ = Responder(C, NonceMemory()).receive_hello(initiator.hello, now=T0)
    with pytest.raises(NetError) as exc:
        Responder(B, NonceMemory()).receive_hello(ack, now=T0)
    # addressed to A, so B sees a misaddressed handshake before its mode
    assert _code(exc) == "E_PROTO_INVALID"
    stray = Initiator(B, now=T0)
    ack_for_b, _ = Responder(A, NonceMemory()).receive_hello(stray.hello, now=T0)
    with pytest.raises(NetError) as exc:
        Responder(B, NonceMemory()).receive_hello(ack_for_b, now=T0)
    assert _code(exc) == "E_HS_UNKNOWN_REF"


def test_an_ack_of_another_hello_is_an_unknown_reference() -> None:
    initiator = Initiator(A, now=T0)
    other = build_hello(A, session_public=X25519KeyPair.generate().public_key, now=T0)
    ack, _ = Responder(B, NonceMemory()).receive_hello(other, now=T0)
    with pytest.raises(NetError) as exc:
        initiator.receive_ack(ack, now=T0)
    assert _code(exc) == "E_HS_UNKNOWN_REF"


def test_an_ack_after_the_pending_timeout_is_an_unknown_reference() -> None:
    initiator = Initiator(A, now=T0)
    ack, _ = Responder(B, NonceMemory()).receive_hello(initiator.hello, now=T0 + 29)
    assert not initiator.expired(T0 + 29.999)
    assert initiator.expired(T0 + 30)
    with pytest.raises(NetError) as exc:
        initiator.receive_ack(ack, now=T0 + 30)
    assert _code(exc) == "E_HS_UNKNOWN_REF"


def test_an_ack_from_another_node_than_the_one_dialled() -> None:
    initiator = Initiator(A, now=T0, recipient=B_ID)
    hello = dict(initiator.hello)
    del hello["recipient/node-id"]  # what C sees is addressed to nobody in particular
    hello = sign_net_artifact(
        "peer-handshake.v1",
        {k: v for k, v in hello.items() if k not in ("signature", "transport/profile")},
        A,
    )
    ack, _ = Responder(C, NonceMemory()).receive_hello(hello, now=T0)
    ack = dict(ack)
    ack["ack/of-handshake-id"] = initiator.handshake_id
    ack = sign_net_artifact(
        "peer-handshake.v1",
        {k: v for k, v in ack.items() if k not in ("signature", "transport/profile")},
        C,
    )
    with pytest.raises(NetError) as exc:
        initiator.receive_ack(ack, now=T0)
    assert _code(exc) == "E_SIG_UNKNOWN_SIGNER"


def test_a_node_cannot_open_a_session_with_itself() -> None:
    with pytest.raises(NetError) as exc:
        Responder(A, NonceMemory()).receive_hello(Initiator(A, now=T0).hello, now=T0)
    assert _code(exc) == "E_PROTO_INVALID"


@pytest.mark.parametrize(
    "text", [b"[1]", b"{", b'{"a":1,"a":2}', b'{"x": NaN}', b"{" + b" " * 9000 + b"}"]
)
def test_handshake_text_must_be_one_strict_json_object(text: bytes) -> None:
    with pytest.raises(NetError) as exc:
        parse_handshake(text)
    assert _code(exc) == "E_PROTO_INVALID"


# --- frames ------------------------------------------------------------------------------------


def test_frames_use_counter_nonces_per_direction() -> None:
    ours, theirs = handshake()
    sender, receiver = FrameCipher(ours.keys), FrameCipher(theirs.keys)
    first, second = sender.seal(b"one"), sender.seal(b"two")
    assert first == chacha20poly1305_encrypt(ours.keys.send_key, frame_nonce(0), b"one", FRAME_AAD)
    assert frame_nonce(1) == bytes(11) + b"\x01"
    assert receiver.open(first) == b"one"
    assert receiver.open(second) == b"two"
    # the other direction starts at 0 with the other key
    assert FrameCipher(ours.keys).open(receiver.seal(b"back")) == b"back"


@pytest.mark.parametrize("fault", ["tampered", "replayed", "reordered", "short"])
def test_a_frame_that_does_not_open_ends_the_session(fault: str) -> None:
    a, b = opened()
    a.send_message(b"first", now=T0)
    a.send_message(b"second", now=T0)
    first, second = a.data_to_send()
    if fault == "tampered":
        frames = [first[:-1] + bytes([first[-1] ^ 1])]
    elif fault == "replayed":
        frames = [first, first]
    elif fault == "reordered":
        frames = [second]  # frame 1 where frame 0 is due
    else:
        frames = [b"\x00" * 15]
    for frame in frames[:-1]:
        b.receive(frame, now=T0)
    with pytest.raises(NetError) as exc:
        b.receive(frames[-1], now=T0)
    assert _code(exc) == "E_SIG_INVALID"
    assert b.closed is exc.value
    with pytest.raises(NetError):
        b.receive(second, now=T0)


# --- conversation ------------------------------------------------------------------------------


def test_capabilities_come_first_and_gate_every_use() -> None:
    ours, theirs = handshake()
    a, b = PeerSession(ours, now=T0), PeerSession(theirs, now=T0)
    with pytest.raises(NetError) as exc:
        a.send_message(b"x", now=T0)
    assert _code(exc) == "E_PROTO_CAP_MISSING"
    b.send_capabilities(build_capability_advertisement(B, now=T0), now=T0)
    [event] = deliver(b, a)
    assert isinstance(event, CapabilitiesReceived)
    assert event.capabilities == frozenset({"core/messaging"})
    a.send_message(b"x", now=T0)  # core/messaging is enough for plain messages
    with pytest.raises(NetError) as exc:
        a.send_message(b"x", now=T0, capability="ocp/routing")
    assert _code(exc) == "E_PROTO_CAP_MISSING"
    assert exc.value.details["needed"] == "ocp/routing"


def test_anything_before_the_capability_advertisement_ends_the_session() -> None:
    ours, theirs = handshake()
    a, b = PeerSession(ours, now=T0), PeerSession(theirs, now=T0)
    a._control({"type": "ping", "n": 1}, T0)
    with pytest.raises(NetError) as exc:
        deliver(a, b)
    assert _code(exc) == "E_PROTO_INVALID"
    assert b.closed is not None


def test_capabilities_of_another_node_end_the_session() -> None:
    ours, theirs = handshake()
    a, b = PeerSession(ours, now=T0), PeerSession(theirs, now=T0)
    a.send_capabilities(build_capability_advertisement(C, now=T0), now=T0)
    with pytest.raises(NetError) as exc:
        deliver(a, b)
    assert _code(exc) == "E_PROTO_INVALID"


def test_messages_and_receipts_travel_exactly() -> None:
    a, b = opened()
    raw = b'{"message_id":"msg-1","payload":{"k":"\\u00e9"}}'
    a.send_message(raw, now=T0, capability="ocp/routing")
    assert deliver(a, b) == [MessageReceived(raw)]
    # one receipt to a frame, as another implementation may send them
    b._control({"type": "receipt", "message_id": "msg-1", "status": "accepted"}, T0)
    b._control(
        {"type": "receipt", "message_id": "msg-2", "status": "rejected", "code": "OCP-401"}, T0
    )
    assert deliver(b, a) == [
        ReceiptReceived("msg-1", "accepted"),
        ReceiptReceived("msg-2", "rejected", "OCP-401"),
    ]


def test_receipts_for_a_group_travel_in_one_frame_per_256() -> None:
    a, b = opened()
    receipts = [
        ReceiptReceived(f"msg-{n}", "rejected", "OCP-401")
        if n % 7 == 0
        else ReceiptReceived(f"msg-{n}", "accepted")
        for n in range(300)
    ]
    b.send_receipts(receipts, now=T0)
    assert b.queued == 2  # 256 + 44
    assert deliver(b, a) == receipts


@pytest.mark.parametrize(
    "items",
    [
        [],
        "msg-1",
        [{"message_id": "msg-1", "status": "lost"}],
        ["msg-1"],
        [{"message_id": f"m{n}", "status": "accepted"} for n in range(257)],
    ],
)
def test_a_malformed_receipts_frame_is_refused_and_the_session_goes_on(items: Any) -> None:
    a, b = opened()
    b._control({"type": "receipts", "items": items}, T0)
    [refused] = deliver(b, a)
    assert isinstance(refused, Refused)
    assert refused.error.code == "E_PROTO_INVALID"
    b.send_receipts([ReceiptReceived("msg-1", "duplicate")], now=T0)
    assert deliver(b, a) == [ReceiptReceived("msg-1", "duplicate")]


def test_a_signal_marker_is_verified_against_the_session_peer() -> None:
    a, b = opened()
    marker = build_signal_marker(A, kind="signal/presence", now=T0, body="hello")
    envelope = build_signal_marker_envelope(A, marker, sender_node_id=A_ID, now=T0)
    a.send_signal(envelope, now=T0)
    [event] = deliver(a, b)
    assert isinstance(event, SignalReceived)
    assert event.marker == marker
    # naming another sender node is a soft refusal: the session goes on
    other = build_signal_marker_envelope(A, marker, sender_node_id=C_ID, now=T0)
    a.send_signal(other, now=T0)
    [refused] = deliver(a, b)
    assert isinstance(refused, Refused)
    assert refused.error.code == "E_PROTO_INVALID"
    [notice] = deliver(b, a)
    assert notice == PeerErrorReceived("E_PROTO_INVALID", refused.error.message)
    # a forged one is a hard failure
    forged = dict(envelope)
    forged["sent-at"] = "2026-04-03T12:00:01Z"
    a.send_signal(forged, now=T0)
    with pytest.raises(NetError) as exc:
        deliver(a, b)
    assert _code(exc) == "E_SIG_INVALID"


@pytest.mark.parametrize(
    "control",
    [
        {"type": "gossip"},
        {"type": "receipt", "message_id": 5, "status": "accepted"},
        {"type": "receipt", "message_id": "m", "status": "lost"},
        {"type": "error", "code": 1, "detail": "x"},
        {"no": "type"},
    ],
)
def test_a_malformed_control_frame_is_refused_and_the_session_goes_on(
    control: dict[str, Any],
) -> None:
    a, b = opened()
    a._control(control, T0)
    [event] = deliver(a, b)
    assert isinstance(event, Refused)
    assert event.error.code == "E_PROTO_INVALID"
    [notice] = deliver(b, a)
    assert isinstance(notice, PeerErrorReceived)
    a.send_message(b"still here", now=T0)
    assert deliver(a, b) == [MessageReceived(b"still here")]


def test_control_frames_that_are_not_strict_json_are_refused() -> None:
    a, b = opened()
    a._queue(b'\x00{"type":"ping","type":"pong"}', T0)
    a._queue(b"\x07whatever", T0)
    a._queue(b"", T0)
    events = deliver(a, b)
    assert [type(e) for e in events] == [Refused, Refused, Refused]


def test_advertisements_of_the_peer_are_checked() -> None:
    a, b = opened()
    endpoints = [{"transport": "wss", "url": "wss://a.example/ocp/v1/peer", "priority": 1}]
    adv = build_node_advertisement(A, sequence=3, endpoints=endpoints, now=T0)
    a.send_advertisement(adv, now=T0)
    assert deliver(a, b) == [AdvertisementReceived(adv)]
    expired = build_node_advertisement(A, sequence=4, endpoints=endpoints, now=T0, lifetime=10)
    a.send_advertisement(expired, now=T0)
    [event] = deliver(a, b, now=T0 + 11)
    assert isinstance(event, Refused)
    assert event.error.code == "E_ADV_EXPIRED"
    foreign = build_node_advertisement(C, sequence=1, endpoints=endpoints, now=T0)
    a.send_advertisement(foreign, now=T0)
    [event] = deliver(a, b)
    assert isinstance(event, Refused)
    assert event.error.code == "E_PROTO_INVALID"


# --- keepalive -----------------------------------------------------------------------------------


def test_pings_go_out_when_idle_and_are_answered() -> None:
    a, b = opened()
    assert a.poll(T0 + 14.9) == pytest.approx(T0 + 15)
    assert a.data_to_send() == []
    assert a.poll(T0 + 15) == pytest.approx(T0 + 30)
    assert deliver(a, b, now=T0 + 15) == []  # the ping
    assert deliver(b, a, now=T0 + 15) == []  # the pong
    assert (a.pings_sent, a.pongs_received) == (1, 1)
    assert a.last_received == T0 + 15


def test_a_silent_peer_is_lost_after_45_seconds() -> None:
    a, _ = opened()
    for t in (15, 30):
        a.poll(T0 + t)
    assert a.poll(T0 + 44.9) == pytest.approx(T0 + 45)
    with pytest.raises(NetError) as exc:
        a.poll(T0 + 45)
    assert _code(exc) == "E_TRANSPORT_UNAVAILABLE"
    assert exc.value.details == {"keepalive": "lost"}
    with pytest.raises(NetError):
        a.send_message(b"x", now=T0 + 46)
