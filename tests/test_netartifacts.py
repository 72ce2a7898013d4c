"""Networking artifacts (NET data contracts, FR-004, FR-010-FR-014, FR-017, D8)."""

from __future__ import annotations

from typing import Any

import pytest

from conftest import NOW, Agent
from ocpd.proto import netartifacts as na
from ocpd.proto.crypto import X25519KeyPair, chacha20poly1305_decrypt, chacha20poly1305_encrypt
from ocpd.proto.dcbor import signing_input
from ocpd.proto.encoding import b64url_encode, format_timestamp
from ocpd.proto.errors import NetError
from ocpd.proto.ids import format_node_id, format_participant_id
from ocpd.proto.signing import sign_net_artifact

ENDPOINTS = [{"url": "wss://127.0.0.1:8421/ocp/v1/peer", "transport": "wss", "priority": 1}]


def _adv(agent: Agent, **kw: Any) -> dict[str, Any]:
    return na.build_node_advertisement(
        agent.key, sequence=kw.pop("sequence", 1), endpoints=ENDPOINTS, now=NOW, **kw
    )


def _code(exc: pytest.ExceptionInfo[NetError]) -> str:
    return exc.value.code


def test_advertisement(alice: Agent) -> None:
    adv = _adv(alice)
    assert na.verify_node_advertisement(adv, now=NOW) == alice.public_key
    body = {k: v for k, v in adv.items() if k != "signature"}
    assert signing_input("node-advertisement.v1", body).startswith(b"node-advertisement.v1\x00")


def test_advertisement_failures(alice: Agent, bob: Agent) -> None:
    adv = _adv(alice)
    with pytest.raises(NetError) as e1:
        na.verify_node_advertisement(adv | {"sequence/no": 2}, now=NOW)
    assert _code(e1) == "E_SIG_INVALID"
    with pytest.raises(NetError) as e2:
        na.verify_node_advertisement(adv | {"key/public": b64url_encode(bob.public_key)}, now=NOW)
    assert _code(e2) == "E_SIG_UNKNOWN_SIGNER"
    # re-signed by another key under alice's node id
    forged = sign_net_artifact("node-advertisement.v1", adv, bob.key)
    with pytest.raises(NetError) as e3:
        na.verify_node_advertisement(forged, now=NOW)
    assert _code(e3) == "E_SIG_INVALID"
    with pytest.raises(NetError) as e4:
        na.verify_node_advertisement(adv, now=NOW + 86_400)
    assert _code(e4) == "E_ADV_EXPIRED"
    with pytest.raises(NetError) as e5:
        na.verify_node_advertisement(adv, now=NOW, expected_node_id=format_node_id(bob.public_key))
    assert _code(e5) == "E_PROTO_INVALID"
    with pytest.raises(NetError) as e6:
        na.verify_node_advertisement(_adv(alice, lifetime=8 * 86_400), now=NOW)
    assert _code(e6) == "E_PROTO_INVALID"
    with pytest.raises(NetError) as e7:
        na.verify_node_advertisement({k: v for k, v in adv.items() if k != "endpoints"}, now=NOW)
    assert _code(e7) == "E_PROTO_INVALID"


def test_sequence_rule() -> None:
    na.check_sequence(None, 1)
    na.check_sequence(4, 5)
    for offered in (4, 3):
        with pytest.raises(NetError) as info:
            na.check_sequence(4, offered)
        assert info.value.code == "E_ADV_STALE_SEQ"
        assert info.value.cls == "advertisement/stale-sequence"


def _pair(
    alice: Agent, bob: Agent
) -> tuple[dict[str, Any], dict[str, Any], X25519KeyPair, X25519KeyPair]:
    ea, eb = X25519KeyPair(b"\x11" * 32), X25519KeyPair(b"\x22" * 32)
    hello = na.build_hello(
        alice.key, session_public=ea.public_key, now=NOW, recipient=format_node_id(bob.public_key)
    )
    ack = na.build_ack(bob.key, hello, session_public=eb.public_key, now=NOW + 1)
    return hello, ack, ea, eb


def test_handshake_and_session_keys(alice: Agent, bob: Agent) -> None:
    hello, ack, ea, eb = _pair(alice, bob)
    assert (
        na.verify_handshake(hello, now=NOW, local_node_id=format_node_id(bob.public_key))
        == alice.public_key
    )
    assert (
        na.verify_handshake(ack, now=NOW, local_node_id=format_node_id(alice.public_key))
        == bob.public_key
    )
    na.verify_ack_binding(ack, hello)
    mine = na.derive_session_keys(
        initiator=True,
        ephemeral_private=ea.private_key,
        peer_ephemeral_public=eb.public_key,
        static_key=alice.key,
        peer_static_public=bob.public_key,
        hello=hello,
        ack=ack,
    )
    theirs = na.derive_session_keys(
        initiator=False,
        ephemeral_private=eb.private_key,
        peer_ephemeral_public=ea.public_key,
        static_key=bob.key,
        peer_static_public=alice.public_key,
        hello=hello,
        ack=ack,
    )
    assert mine.send_key == theirs.receive_key
    assert mine.receive_key == theirs.send_key
    assert mine.send_key != mine.receive_key
    nonce = (0).to_bytes(12, "little")
    frame = chacha20poly1305_encrypt(mine.send_key, nonce, b"frame", b"")
    assert chacha20poly1305_decrypt(theirs.receive_key, nonce, frame, b"") == b"frame"
    assert "secret" in repr(mine)
    assert mine.send_key.hex() not in repr(mine)


def test_ack_binding(alice: Agent, bob: Agent, carol: Agent) -> None:
    _hello, ack, _, _ = _pair(alice, bob)
    other_hello = na.build_hello(alice.key, session_public=b"\x33" * 32, now=NOW)
    with pytest.raises(NetError) as info:
        na.verify_ack_binding(ack, other_hello)
    assert info.value.code == "E_HS_UNKNOWN_REF"
    # ack/of-handshake-id is signed: changing it breaks the signature
    with pytest.raises(NetError) as sig:
        na.verify_handshake(ack | {"ack/of-handshake-id": other_hello["handshake/id"]}, now=NOW)
    assert sig.value.code == "E_SIG_INVALID"


def test_handshake_skew_boundary(alice: Agent, bob: Agent) -> None:
    hello, _, _, _ = _pair(alice, bob)
    na.verify_handshake(hello, now=NOW + 29.999)
    na.verify_handshake(hello, now=NOW - 30)
    for now in (NOW + 30.001, NOW - 30.001):
        with pytest.raises(NetError) as info:
            na.verify_handshake(hello, now=now)
        assert info.value.code == "E_HS_REPLAY"


def test_handshake_version_and_shape(alice: Agent, bob: Agent) -> None:
    hello, ack, _, _ = _pair(alice, bob)
    resigned = sign_net_artifact(
        "peer-handshake.v1",
        hello | {"protocol/version": "2.0"},
        alice.key,
        unsigned_fields=na.HANDSHAKE_UNSIGNED,
    )
    with pytest.raises(NetError) as info:
        na.verify_handshake(resigned, now=NOW)
    assert info.value.code == "E_PROTO_VERSION"
    with pytest.raises(NetError) as shape:
        na.verify_handshake({k: v for k, v in ack.items() if k != "ack/of-handshake-id"}, now=NOW)
    assert shape.value.code == "E_PROTO_INVALID"
    with pytest.raises(NetError) as addressed:
        na.verify_handshake(hello, now=NOW, local_node_id=format_node_id(alice.public_key))
    assert addressed.value.code == "E_PROTO_INVALID"


def test_transport_profile_is_framing(alice: Agent, bob: Agent) -> None:
    hello, _, _, _ = _pair(alice, bob)
    na.verify_handshake(hello | {"transport/profile": "wss-h2"}, now=NOW)


def test_capability_advertisement(alice: Agent) -> None:
    adv = na.build_capability_advertisement(alice.key, now=NOW, capabilities=["ocp/routing"])
    caps = na.verify_capability_advertisement(
        adv, expected_node_id=format_node_id(alice.public_key)
    )
    assert caps == {"core/messaging", "ocp/routing"}
    na.require_capability(caps, "ocp/routing")
    with pytest.raises(NetError) as info:
        na.require_capability(caps, "recovery/custodian")
    assert info.value.code == "E_PROTO_CAP_MISSING"
    without = sign_net_artifact(
        "capability-advertisement.v1", adv | {"capabilities/core": ["ocp/routing"]}, alice.key
    )
    with pytest.raises(NetError) as missing:
        na.verify_capability_advertisement(without)
    assert missing.value.code in {"E_PROTO_CAP_MISSING", "E_PROTO_INVALID"}


def test_signal_marker(alice: Agent, bob: Agent) -> None:
    node = format_node_id(alice.public_key)
    marker = na.build_signal_marker(alice.key, kind="presence/online", now=NOW, body="ready")
    envelope = na.build_signal_marker_envelope(alice.key, marker, sender_node_id=node, now=NOW)
    assert (
        na.verify_signal_marker_envelope(envelope, now=NOW, session_peer=node)["signal/body"]
        == "ready"
    )
    with pytest.raises(NetError):
        na.verify_signal_marker_envelope(
            envelope, now=NOW, session_peer=format_node_id(bob.public_key)
        )
    bobs_marker = na.build_signal_marker(bob.key, kind="presence/online", now=NOW)
    smuggled = na.build_signal_marker_envelope(alice.key, bobs_marker, sender_node_id=node, now=NOW)
    with pytest.raises(NetError) as info:
        na.verify_signal_marker_envelope(smuggled, now=NOW)
    assert info.value.code == "E_SIG_UNKNOWN_SIGNER"
    tampered = envelope | {"marker": marker | {"signal/body": "not ready"}}
    with pytest.raises(NetError) as sig:
        na.verify_signal_marker_envelope(tampered, now=NOW)
    assert sig.value.code == "E_SIG_INVALID"


def test_node_identity(alice: Agent, bob: Agent) -> None:
    record = na.build_node_identity(alice.key, storage_ref="local-file:node.key", now=NOW)
    assert na.check_node_identity(record) == alice.public_key
    assert "seed" not in str(record)
    assert alice.key.seed().hex() not in str(record)
    na.require_active_identity(record)
    with pytest.raises(NetError):
        na.require_active_identity(record | {"identity/status": "retired"})
    with pytest.raises(NetError):
        na.check_node_identity(record | {"participant/id": format_participant_id(bob.public_key)})
    with pytest.raises(NetError):
        na.check_node_identity(record | {"key/secret": "x"})
    with pytest.raises(NetError):
        na.check_node_identity(record | {"created-at": format_timestamp(NOW)[:-1]})
