"""Signed OCP artifacts and their rules (D2, §3.2.2, §4.2.3, §4.3.2, §6.2.2, §8.3.3, D7)."""

from __future__ import annotations

from typing import Any

import pytest

from conftest import NETWORK, NOW, Agent
from ocpd.proto import artifacts as ar
from ocpd.proto.diddoc import build_did_document
from ocpd.proto.encoding import format_timestamp
from ocpd.proto.errors import AuthError, MalformedError
from ocpd.proto.ids import derive_agent_id, multibase_ed25519

DAY = 86_400


def _record(agent: Agent, **kw: Any) -> dict[str, Any]:
    record = {
        "agent_id": agent.id,
        "display_name": "OncologyImagingAI",
        "version": "2.1.0",
        "capabilities": [{"id": "cap:vision:imaging", "name": "Imaging", "version": "1.0"}],
        "domains": ["healthcare.oncology"],
        "endpoints": [
            {"transport": "ocp-ws", "url": "wss://node.example/ocp/v1/ws", "priority": 1}
        ],
        "status": "active",
        "registered_at": format_timestamp(NOW),
        "ttl": 86_400,
    }
    record.update(kw)
    return ar.sign(record, agent.key)


def test_registration(alice: Agent) -> None:
    body = {
        "record": _record(alice),
        "did_document": build_did_document(alice.public_key, network=NETWORK),
    }
    record, doc = ar.verify_registration(body, now=NOW)
    assert record["agent_id"] == alice.id
    assert doc.agent_id == alice.id


def test_registration_id_not_derived_from_key_is_401(alice: Agent, bob: Agent) -> None:
    record = _record(alice)
    body = {"record": record, "did_document": build_did_document(bob.public_key, network=NETWORK)}
    with pytest.raises(AuthError) as info:
        ar.verify_registration(body, now=NOW)
    assert info.value.code == "OCP-401"


def test_registration_signed_by_other_key_is_401(alice: Agent, bob: Agent) -> None:
    record = ar.sign(dict(_record(alice)), bob.key)
    body = {"record": record, "did_document": build_did_document(alice.public_key, network=NETWORK)}
    with pytest.raises(AuthError):
        ar.verify_registration(body, now=NOW)


@pytest.mark.parametrize(
    "change",
    [
        {"capabilities": []},
        {"domains": []},
        {"endpoints": []},
        {"registered_at": format_timestamp(NOW + 3600)},
        {"ttl": 0},
        {"capabilities": [{"id": "nlp-classification", "name": "x", "version": "1"}]},
    ],
)
def test_record_rules(alice: Agent, change: dict[str, Any]) -> None:
    with pytest.raises(MalformedError):
        ar.check_agent_record(_record(alice, **change), now=NOW)


def _vouch(attester: Agent, subject: Agent, days: float = 365) -> dict[str, Any]:
    return ar.sign(
        {
            "vouch_type": "endorsement",
            "attester": attester.id,
            "subject": subject.id,
            "level": "vouch",
            "domains": ["oncology"],
            "issued_at": format_timestamp(NOW),
            "expires_at": format_timestamp(NOW + days * DAY),
        },
        attester.key,
    )


def test_vouch(alice: Agent, bob: Agent) -> None:
    vouch = _vouch(alice, bob)
    ar.check_vouch(vouch, now=NOW)
    ar.verify_signed(vouch, [alice.public_key], what="vouch")
    with pytest.raises(AuthError):
        ar.verify_signed(vouch, [bob.public_key], what="vouch")


def test_vouch_rules(alice: Agent, bob: Agent) -> None:
    with pytest.raises(MalformedError, match="itself"):
        ar.check_vouch(_vouch(alice, alice), now=NOW)
    with pytest.raises(MalformedError, match="365"):
        ar.check_vouch(_vouch(alice, bob, days=366), now=NOW)
    with pytest.raises(MalformedError):
        ar.check_vouch(_vouch(alice, bob, days=0), now=NOW)


def test_vouch_revocation(alice: Agent, bob: Agent, carol: Agent) -> None:
    vouch = _vouch(alice, bob)
    revocation = ar.sign(
        {
            "revocation_type": "vouch",
            "attester": alice.id,
            "subject": bob.id,
            "vouch_digest": ar.vouch_digest(vouch),
            "revoked_at": format_timestamp(NOW),
        },
        alice.key,
    )
    ar.check_vouch_revocation(revocation, vouch, now=NOW)
    forged = ar.sign(dict(revocation) | {"attester": carol.id}, carol.key)
    with pytest.raises(AuthError):
        ar.check_vouch_revocation(forged, vouch, now=NOW)
    other = _vouch(alice, carol)
    with pytest.raises(MalformedError):
        ar.check_vouch_revocation(revocation, other, now=NOW)


def _bond(a: Agent, b: Agent, days: float = 180) -> dict[str, Any]:
    bond = {
        "bond_id": "bond-aabbccdd-eeff-0011-2233",
        "agents": [a.id, b.id],
        "permissions": {
            "knowledge_share": {
                "enabled": True,
                "allowed_types": ["insight"],
                "max_payload_bytes": 1024,
            },
            "task_delegate": {"enabled": True, "max_concurrent": 3, "timeout_seconds": 300},
            "model_delta_share": {"enabled": False},
        },
        "established_at": format_timestamp(NOW),
        "expires_at": format_timestamp(NOW + days * DAY),
        "renewal": "auto",
        "signatures": {},
    }
    return ar.sign_bond(ar.sign_bond(bond, a.key, a.id), b.key, b.id)


def test_bond_needs_both_signatures(alice: Agent, bob: Agent, carol: Agent) -> None:
    bond = _bond(alice, bob)
    keys = {alice.id: [alice.public_key], bob.id: [bob.public_key]}
    ar.verify_bond(bond, keys, now=NOW)
    one_sided = dict(bond) | {"signatures": {alice.id: bond["signatures"][alice.id]}}
    with pytest.raises(MalformedError):
        ar.verify_bond(one_sided, keys, now=NOW)
    swapped = dict(bond) | {
        "signatures": {alice.id: bond["signatures"][bob.id], bob.id: bond["signatures"][alice.id]}
    }
    with pytest.raises(AuthError):
        ar.verify_bond(swapped, keys, now=NOW)
    with pytest.raises(AuthError):
        ar.verify_bond(bond, {alice.id: [alice.public_key], bob.id: [carol.public_key]}, now=NOW)
    with pytest.raises(MalformedError, match="365"):
        ar.verify_bond(_bond(alice, bob, days=366), keys, now=NOW)
    with pytest.raises(MalformedError):
        ar.sign_bond(bond, carol.key, carol.id)


def test_bond_revocation(alice: Agent, bob: Agent, carol: Agent) -> None:
    bond = _bond(alice, bob)
    revocation = {
        "revocation_type": "bond",
        "bond_id": bond["bond_id"],
        "revoked_by": bob.id,
        "revoked_at": format_timestamp(NOW),
    }
    ar.check_bond_revocation(ar.sign(revocation, bob.key), bond, now=NOW)
    with pytest.raises(AuthError):
        ar.check_bond_revocation(
            ar.sign(revocation | {"revoked_by": carol.id}, carol.key), bond, now=NOW
        )


def test_permission_intersection() -> None:
    a = {
        "knowledge_share": {
            "enabled": True,
            "allowed_types": ["insight", "embedding"],
            "max_payload_bytes": 100,
        },
        "task_delegate": {"enabled": True, "max_concurrent": 5},
    }
    b = {
        "knowledge_share": {
            "enabled": True,
            "allowed_types": ["embedding", "model_delta"],
            "max_payload_bytes": 50,
        },
        "task_delegate": {"enabled": False, "max_concurrent": 2},
        "model_delta_share": {"enabled": True},
    }
    assert ar.intersect_permissions(a, b) == {
        "knowledge_share": {
            "enabled": True,
            "allowed_types": ["embedding"],
            "max_payload_bytes": 50,
        },
        "task_delegate": {"enabled": False, "max_concurrent": 2},
        "model_delta_share": {"enabled": False},
    }


def test_consensus_vote(alice: Agent, bob: Agent) -> None:
    vote = ar.sign(
        {
            "consensus_id": "con-6f1c2c64-3a0e-4b8e-9d61-0c9a7c7d2a11",
            "vote": "confirm",
            "confidence": 0.88,
            "rationale_hash": "ab" * 32,
            "voter": alice.id,
        },
        alice.key,
    )
    ar.check_consensus_vote(vote, sender=alice.id)
    ar.verify_signed(vote, [alice.public_key], what="vote")
    with pytest.raises(AuthError):
        ar.check_consensus_vote(vote, sender=bob.id)
    with pytest.raises(MalformedError):
        ar.check_consensus_vote(dict(vote) | {"confidence": 1.5})


def test_interaction_rating(alice: Agent, bob: Agent) -> None:
    rating = {
        "rating_type": "interaction",
        "rater": alice.id,
        "subject": bob.id,
        "rating": 0.9,
        "rated_at": format_timestamp(NOW),
    }
    ar.check_interaction_rating(ar.sign(rating, alice.key), now=NOW)
    with pytest.raises(MalformedError):
        ar.check_interaction_rating(ar.sign(rating | {"subject": alice.id}, alice.key), now=NOW)
    with pytest.raises(MalformedError):
        ar.check_interaction_rating(ar.sign(rating | {"rating": 1.01}, alice.key), now=NOW)


def _share(agent: Agent, **kw: Any) -> dict[str, Any]:
    short = agent.id.rsplit("-", 1)[1]
    share = {
        "share_id": f"share-{short}-1",
        "agent_id": agent.id,
        "scheme": "shamir-sss-gf256",
        "threshold": 3,
        "total_shares": 5,
        "share_index": 1,
        "share_data": "A" * 43,
        "key_fingerprint": "a3f9b2c1d4e5f6a7",
        "created_at": format_timestamp(NOW),
        "encryption": {"algorithm": "AES-256-GCM"},
    }
    share.update(kw)
    return ar.sign(share, agent.key)


def test_recovery_share(alice: Agent) -> None:
    ar.check_recovery_share(_share(alice), now=NOW)
    short = alice.id.rsplit("-", 1)[1]
    for bad in (
        {"threshold": 1},
        {"total_shares": 2, "threshold": 2},
        {"threshold": 6},
        {"share_index": 6, "share_id": f"share-{short}-6"},
        {"share_id": f"share-{short}-2"},
        {"share_data": "A" * 42},
    ):
        with pytest.raises(MalformedError):
            ar.check_recovery_share(_share(alice, **bad), now=NOW)


def test_agent_ids_are_network_scoped(alice: Agent) -> None:
    assert derive_agent_id(alice.public_key, "mainnet") != alice.id


# --- certifications (Level 4, D7) --------------------------------------------------------


def _certification(signer: Agent, subject: Agent, **kw: Any) -> dict[str, Any]:
    issued = kw.pop("issued", NOW)
    days = kw.pop("days", 365)
    certification = {
        "certification_type": "certified",
        "certification_id": "cert-6f1c2c64-3a0e-4b8e-9d61-0c9a7c7d2a11",
        "subject": subject.id,
        "certifier": multibase_ed25519(signer.public_key),
        "level": 4,
        "scope": ["healthcare.oncology"],
        "issued_at": format_timestamp(issued),
        "expires_at": format_timestamp(issued + days * DAY),
    }
    certification.update(kw)
    return ar.sign_certification(certification, signer.key)


def _certification_revocation(
    signer: Agent, certification: dict[str, Any], **kw: Any
) -> dict[str, Any]:
    revocation = {
        "revocation_type": "certification",
        "certification_id": certification["certification_id"],
        "subject": certification["subject"],
        "certifier": certification["certifier"],
        "revoked_at": format_timestamp(NOW),
    }
    revocation.update(kw)
    return ar.sign_certification_revocation(revocation, signer.key)


def test_certification(carol: Agent, alice: Agent) -> None:
    certification = _certification(carol, alice)
    digest = ar.verify_certification(certification, now=NOW)
    assert digest == ar.verify_signed(certification, [carol.public_key], what="certification")
    assert ar.certifier_key(certification) == carol.public_key
    # the whole 365 days is allowed, and the clock skew for issued_at
    ar.verify_certification(_certification(carol, alice, issued=NOW + 59), now=NOW)


def test_certification_forged_or_altered_is_401(alice: Agent, bob: Agent, carol: Agent) -> None:
    certification = _certification(carol, alice)
    # signed by Bob but naming Carol's key as certifier
    forged = ar.sign(dict(certification), bob.key)
    with pytest.raises(AuthError):
        ar.verify_certification(forged, now=NOW)
    # one bit of the signed content changed
    flipped = dict(certification) | {"subject": bob.id}
    with pytest.raises(AuthError):
        ar.verify_certification(flipped, now=NOW)
    # one bit of the signature changed
    signature = certification["signature"]
    bad = ("B" if signature[0] == "A" else "A") + signature[1:]
    with pytest.raises(AuthError):
        ar.verify_certification(dict(certification) | {"signature": bad}, now=NOW)
    # the right signature, verified under another key (the certifier field swapped)
    other_key = dict(certification) | {"certifier": multibase_ed25519(bob.public_key)}
    with pytest.raises(AuthError):
        ar.verify_certification(other_key, now=NOW)
    # unsigned
    unsigned = {k: v for k, v in certification.items() if k != "signature"}
    with pytest.raises(MalformedError):
        ar.verify_certification(unsigned, now=NOW)


def test_certification_time_rules(alice: Agent, carol: Agent) -> None:
    with pytest.raises(MalformedError, match="365") as long:
        ar.check_certification(_certification(carol, alice, days=366), now=NOW)
    assert long.value.details["max_seconds"] == ar.MAX_CERTIFICATION_DURATION
    with pytest.raises(MalformedError, match="after"):
        ar.check_certification(_certification(carol, alice, days=0), now=NOW)
    with pytest.raises(MalformedError, match="future"):
        ar.check_certification(_certification(carol, alice, issued=NOW + 61), now=NOW)
    # a wider skew accepts it
    ar.check_certification(_certification(carol, alice, issued=NOW + 61), now=NOW, clock_skew=120)


def test_certifier_must_be_a_canonical_ed25519_key(alice: Agent, carol: Agent) -> None:
    certification = _certification(carol, alice)
    # the schema's shape, but not a canonical encoding of a 32-byte key
    wrong = "z6Mk" + "1" * 44
    with pytest.raises(MalformedError):
        ar.check_certification(dict(certification) | {"certifier": wrong}, now=NOW)
    # signing refuses a certifier field that names another key
    with pytest.raises(MalformedError, match="certifier"):
        ar.sign_certification(dict(certification), alice.key)


def test_certification_revocation(alice: Agent, bob: Agent, carol: Agent) -> None:
    certification = _certification(carol, alice)
    revocation = _certification_revocation(carol, certification, reason="audit withdrawn")
    ar.verify_certification_revocation(revocation, certification, now=NOW)
    # another certifier cannot revoke it: it must name the certification's key
    by_bob = _certification_revocation(
        bob, certification, certifier=multibase_ed25519(bob.public_key)
    )
    with pytest.raises(AuthError):
        ar.check_certification_revocation(by_bob, certification, now=NOW)
    # naming Carol's key but signed by Bob
    forged = ar.sign(
        {k: v for k, v in revocation.items() if k != "signature"} | {"reason": "x"}, bob.key
    )
    with pytest.raises(AuthError):
        ar.verify_certification_revocation(forged, certification, now=NOW)
    other = _certification(
        carol, alice, certification_id="cert-00000000-0000-4000-8000-000000000000"
    )
    with pytest.raises(MalformedError):
        ar.check_certification_revocation(revocation, other, now=NOW)
    with pytest.raises(MalformedError):
        ar.check_certification_revocation(
            _certification_revocation(carol, certification, subject=bob.id), certification, now=NOW
        )
    future = _certification_revocation(
        carol, certification, revoked_at=format_timestamp(NOW + 3600)
    )
    with pytest.raises(MalformedError, match="future"):
        ar.check_certification_revocation(future, certification, now=NOW)
