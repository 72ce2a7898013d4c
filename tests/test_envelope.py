"""OCPUMF: build, sign, verify, freshness, encryption, errors (D2, D5, D6)."""

from __future__ import annotations

import json
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from conftest import NOW, Agent
from ocpd.proto import envelope as ev
from ocpd.proto.crypto import DecryptionFailed, SigningKey
from ocpd.proto.encoding import b64url_decode, b64url_encode
from ocpd.proto.errors import AuthError, MalformedError, OcpError, PayloadTooLarge, RateLimited


def _ping(sender: Agent, receiver: Agent, **kw: Any) -> dict[str, Any]:
    return ev.build_message(
        sender=sender.id,
        receiver=receiver.id,
        message_type="discovery_ping",
        payload={
            "domains": ["healthcare"],
            "capabilities": ["cap:nlp:classification"],
            "trust_level": 1,
        },
        now=NOW,
        metadata={"tags": ["healthcare"], "requires_ack": False},
        **kw,
    )


def _raw(message: dict[str, Any]) -> bytes:
    return json.dumps(message).encode()


def _verify(raw: bytes, key: bytes, now: float = NOW) -> ev.VerifiedMessage:
    return ev.verify_message(raw, now=now, resolve_keys=lambda _: [key])


def test_sign_and_verify(alice: Agent, bob: Agent) -> None:
    signed = ev.sign_message(_ping(alice, bob), alice.key)
    verified = _verify(_raw(signed), alice.public_key)
    assert verified.sender == alice.id
    assert verified.receiver == bob.id
    assert verified.message_type == "discovery_ping"
    assert verified.digest == ev.message_digest(signed)
    assert verified.raw == _raw(signed)
    assert verified.expires_at == NOW + 3600


def test_signature_covers_the_sender_object_without_signature(alice: Agent, bob: Agent) -> None:
    signed = ev.sign_message(_ping(alice, bob), alice.key)
    digest = ev.message_digest(signed)
    unsigned = ev.message_digest(_ping(alice, bob) | {"message_id": signed["message_id"]})
    assert digest == unsigned
    moved = json.loads(_raw(signed))
    moved["sender"]["agent_id"] = bob.id
    assert ev.message_digest(moved) != digest


def test_wrong_key_is_401(alice: Agent, bob: Agent) -> None:
    signed = ev.sign_message(_ping(alice, bob), alice.key)
    with pytest.raises(AuthError) as info:
        _verify(_raw(signed), bob.public_key)
    assert info.value.code == "OCP-401"


def test_any_active_key_verifies(alice: Agent, bob: Agent) -> None:
    signed = ev.sign_message(_ping(alice, bob), alice.key)
    v = ev.verify_message(
        _raw(signed), now=NOW, resolve_keys=lambda _: [bob.public_key, alice.public_key]
    )
    assert v.sender == alice.id


@settings(max_examples=60, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.data())
def test_every_bit_flip_of_signature_or_body_is_rejected(
    alice: Agent, bob: Agent, data: st.DataObject
) -> None:
    signed = ev.sign_message(_ping(alice, bob), alice.key)
    raw = _raw(signed)
    _verify(raw, alice.public_key)
    sig = bytearray(b64url_decode(signed["sender"]["signature"]))
    bit = data.draw(st.integers(0, len(sig) * 8 - 1))
    sig[bit // 8] ^= 1 << (bit % 8)
    flipped = json.loads(raw)
    flipped["sender"]["signature"] = b64url_encode(bytes(sig))
    with pytest.raises(AuthError):
        _verify(_raw(flipped), alice.public_key)
    # a flip anywhere in the body bytes: rejected with a protocol code, never accepted
    pos = data.draw(st.integers(0, len(raw) * 8 - 1))
    body = bytearray(raw)
    body[pos // 8] ^= 1 << (pos % 8)
    try:
        result = _verify(bytes(body), alice.public_key)
    except OcpError as exc:
        assert exc.code in {"OCP-400", "OCP-401"}
    else:  # only a flip that leaves the parsed JSON identical may pass
        assert result.message == signed


def test_every_field_is_covered(alice: Agent, bob: Agent) -> None:
    signed = ev.sign_message(_ping(alice, bob), alice.key)
    mutations = {
        "ttl": 60,
        "priority": "critical",
        "timestamp": "2026-04-03T12:00:01Z",
        "receiver": {"agent_id": alice.id, "broadcast": False},
        "payload": {"domains": ["finance"]},
        "metadata": {"tags": ["finance"]},
        "message_id": "msg-00000000-0000-0000-0000",
    }
    for field, value in mutations.items():
        tampered = dict(signed) | {field: value}
        with pytest.raises(AuthError):
            _verify(_raw(tampered), alice.public_key)


def test_freshness(alice: Agent, bob: Agent) -> None:
    raw = _raw(ev.sign_message(_ping(alice, bob, ttl=60), alice.key))
    _verify(raw, alice.public_key, now=NOW + 60)  # timestamp + ttl == now: still valid
    with pytest.raises(MalformedError, match="expired"):
        _verify(raw, alice.public_key, now=NOW + 60.001)
    _verify(raw, alice.public_key, now=NOW - 60)  # 60 s ahead is within the skew
    with pytest.raises(MalformedError, match="future"):
        _verify(raw, alice.public_key, now=NOW - 60.001)


def test_freshness_runs_before_signature_work(alice: Agent, bob: Agent) -> None:
    raw = _raw(ev.sign_message(_ping(alice, bob, ttl=60), alice.key))

    def resolver(_: str) -> list[bytes]:
        raise AssertionError("keys must not be resolved for an expired message")

    with pytest.raises(MalformedError):
        ev.verify_message(raw, now=NOW + 1000, resolve_keys=resolver)


def test_schema_gate_runs_before_signature_work(alice: Agent, bob: Agent) -> None:
    message = ev.sign_message(_ping(alice, bob), alice.key)
    message["message_type"] = "gossip"
    with pytest.raises(MalformedError):
        ev.verify_message(_raw(message), now=NOW, resolve_keys=lambda _: pytest.fail("resolved"))


def test_size_limit(alice: Agent, bob: Agent) -> None:
    raw = _raw(ev.sign_message(_ping(alice, bob), alice.key))
    with pytest.raises(PayloadTooLarge):
        ev.verify_message(
            raw, now=NOW, resolve_keys=lambda _: [alice.public_key], max_size=len(raw) - 1
        )


def test_encryption_round_trip(alice: Agent, bob: Agent) -> None:
    message = ev.build_message(
        sender=alice.id,
        receiver=bob.id,
        message_type="broadcast",
        payload={"text": "héllo", "n": 1.5},
        now=NOW,
    )
    encrypted = ev.encrypt_payload(message, bob.key.x25519_public_key())
    assert isinstance(encrypted["payload"], str)
    assert encrypted["encryption"]["algorithm"] == "AES-256-GCM"
    signed = ev.sign_message(encrypted, alice.key)
    verified = _verify(_raw(signed), alice.public_key)
    assert ev.decrypt_payload(verified.message, bob.key) == {"text": "héllo", "n": 1.5}
    with pytest.raises(DecryptionFailed):
        ev.decrypt_payload(verified.message, alice.key)


def test_ciphertext_is_bound_to_its_envelope(alice: Agent, bob: Agent, carol: Agent) -> None:
    message = ev.build_message(
        sender=alice.id, receiver=bob.id, message_type="broadcast", payload={"x": 1}, now=NOW
    )
    encrypted = ev.encrypt_payload(message, bob.key.x25519_public_key())
    for field, value in (
        ("message_id", "msg-11111111-2222-3333-4444"),
        ("sender", {"agent_id": carol.id}),
        ("receiver", {"agent_id": carol.id}),
    ):
        moved = dict(encrypted) | {field: value}
        with pytest.raises(DecryptionFailed):
            ev.decrypt_payload(moved, bob.key)


@settings(max_examples=40, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.data())
def test_any_ciphertext_bit_flip_fails(alice: Agent, bob: Agent, data: st.DataObject) -> None:
    message = ev.build_message(
        sender=alice.id, receiver=bob.id, message_type="broadcast", payload={"x": "secret"}, now=NOW
    )
    encrypted = ev.encrypt_payload(message, bob.key.x25519_public_key())
    ct = bytearray(b64url_decode(encrypted["payload"]))
    bit = data.draw(st.integers(0, len(ct) * 8 - 1))
    ct[bit // 8] ^= 1 << (bit % 8)
    with pytest.raises(DecryptionFailed):
        ev.decrypt_payload(encrypted | {"payload": b64url_encode(bytes(ct))}, bob.key)


def test_small_order_ephemeral_key_refused(alice: Agent, bob: Agent) -> None:
    message = ev.build_message(
        sender=alice.id, receiver=bob.id, message_type="broadcast", payload={"x": 1}, now=NOW
    )
    encrypted = ev.encrypt_payload(message, bob.key.x25519_public_key())
    encrypted["encryption"]["ephemeral_public_key"] = b64url_encode(bytes(32))
    with pytest.raises(MalformedError, match="small order"):
        ev.decrypt_payload(encrypted, bob.key)


def test_string_payload_needs_encryption(alice: Agent, bob: Agent) -> None:
    message = ev.build_message(
        sender=alice.id, receiver=bob.id, message_type="broadcast", payload="AAAA", now=NOW
    )
    with pytest.raises(MalformedError):
        _verify(_raw(ev.sign_message(message, alice.key)), alice.public_key)


def test_error_message(alice: Agent, bob: Agent) -> None:
    error = ev.build_error_message(
        RateLimited("too many messages", retry_after=7),
        sender=bob.id,
        receiver=alice.id,
        now=NOW,
        reference_message_id="msg-a1b2c3d4-e5f6-7890-abcd",
    )
    signed = ev.sign_message(error, bob.key)
    verified = _verify(_raw(signed), bob.public_key)
    payload = verified.message["payload"]
    assert payload["error_code"] == "OCP-429"
    assert payload["details"]["retry_after"] == 7
    assert payload["reference_message_id"] == "msg-a1b2c3d4-e5f6-7890-abcd"
    assert verified.message["metadata"]["correlation_id"] == "msg-a1b2c3d4-e5f6-7890-abcd"


def test_dedup_digest_distinguishes_content(alice: Agent, bob: Agent) -> None:
    one = ev.sign_message(_ping(alice, bob, message_id="msg-a1b2c3d4-e5f6-7890-abcd"), alice.key)
    again = ev.sign_message(_ping(alice, bob, message_id="msg-a1b2c3d4-e5f6-7890-abcd"), alice.key)
    other = dict(one) | {"payload": {"domains": ["finance"]}}
    assert ev.message_digest(one) == ev.message_digest(again)
    assert ev.message_digest(one) != ev.message_digest(other)


def test_keys_are_generated_fresh() -> None:
    assert SigningKey.generate().public_key != SigningKey.generate().public_key
    assert "seed" not in repr(SigningKey.generate())
