"""The bond message flow helpers: every step's payload, end to end in memory."""

from __future__ import annotations

import pytest

from ocpd.client import AgentKey
from ocpd.client.bonds import (
    bond_accept,
    bond_confirm,
    bond_negotiate,
    bond_request,
    bond_revoke,
)
from ocpd.client.registry import build_bond
from ocpd.proto import schema
from ocpd.proto.artifacts import intersect_permissions, verify_bond
from ocpd.proto.crypto import SigningKey
from ocpd.proto.envelope import build_message, sign_message
from ocpd.proto.errors import AuthError, MalformedError

NOW = 1_800_000_000.0
A = AgentKey(SigningKey(bytes([1]) * 32), "testnet")
B = AgentKey(SigningKey(bytes([2]) * 32), "testnet")
C = AgentKey(SigningKey(bytes([3]) * 32), "testnet")
OFFER = {
    "knowledge_share": {"enabled": True, "allowed_types": ["insight", "embedding"]},
    "task_delegate": {"enabled": True, "max_concurrent": 5},
    "model_delta_share": {"enabled": True},
}
COUNTER = {
    "knowledge_share": {"enabled": True, "allowed_types": ["insight"]},
    "task_delegate": {"enabled": True, "max_concurrent": 2},
    "model_delta_share": {"enabled": False},
}


def _sent(sender: AgentKey, receiver: AgentKey, message_type: str, payload: dict) -> dict:
    """The payload as a signed message that passes the schema gate."""
    message = build_message(
        sender=sender.agent_id,
        receiver=receiver.agent_id,
        message_type=message_type,
        payload=payload,
        now=NOW,
    )
    signed = sign_message(message, sender.key)
    schema.validate_envelope(signed)
    return signed["payload"]


def test_the_whole_flow_ends_in_a_bond_both_signed() -> None:
    request = _sent(A, B, "bond_request", bond_request(OFFER, duration_days=90))
    counter = _sent(B, A, "bond_negotiate", bond_negotiate(COUNTER, duration_days=30))
    agreed = intersect_permissions(request["proposed_permissions"], counter["counter_permissions"])
    assert agreed["task_delegate"]["max_concurrent"] == 2
    bond = build_bond(
        A.agent_id, B.agent_id, permissions=agreed, now=NOW, days=counter["proposed_duration_days"]
    )
    accept = _sent(B, A, "bond_accept", bond_accept(bond, B))
    confirm = _sent(
        A,
        B,
        "bond_confirm",
        bond_confirm(
            bond, accept, accepter=B.agent_id, accepter_keys=[B.key.public_key], requester=A
        ),
    )
    final = confirm["bond"]
    assert set(final["signatures"]) == {A.agent_id, B.agent_id}
    keys = {A.agent_id: [A.key.public_key], B.agent_id: [B.key.public_key]}
    verify_bond(final, keys, now=NOW)
    revoke = _sent(B, A, "bond_revoke", bond_revoke(final["bond_id"], B, reason="done"))
    assert revoke["revoked_by"] == B.agent_id and revoke["bond_id"] == final["bond_id"]


def test_a_confirm_is_never_built_for_terms_the_accepter_did_not_sign() -> None:
    bond = build_bond(A.agent_id, B.agent_id, permissions=COUNTER, now=NOW, days=30)
    accept = bond_accept(bond, B)
    widened = dict(accept, agreed_permissions=OFFER)
    with pytest.raises(MalformedError, match="does not match"):
        bond_confirm(
            bond, widened, accepter=B.agent_id, accepter_keys=[B.key.public_key], requester=A
        )
    # signed by someone else than the accepter
    forged = bond_accept(dict(bond, agents=[A.agent_id, C.agent_id]), C)
    forged["bond_id"] = bond["bond_id"]
    with pytest.raises(AuthError):
        bond_confirm(
            bond, forged, accepter=B.agent_id, accepter_keys=[B.key.public_key], requester=A
        )


def test_payloads_are_checked_against_their_schemas() -> None:
    with pytest.raises(MalformedError):
        bond_request(OFFER, duration_days=366)
    with pytest.raises(MalformedError):
        bond_negotiate(COUNTER, bond_id="not-a-bond-id")
    bad = {"task_delegate": {"enabled": "yes"}}
    empty = build_bond(A.agent_id, B.agent_id, permissions=bad, now=NOW, days=30)
    with pytest.raises(MalformedError):
        bond_accept(empty, B)
