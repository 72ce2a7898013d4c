"""DID documents: structure, self-certification and the rotation rule (D4)."""

from __future__ import annotations

import copy

import pytest

from conftest import NETWORK, NOW, Agent
from ocpd.proto import schema
from ocpd.proto.crypto import SigningKey
from ocpd.proto.diddoc import (
    build_did_document,
    parse_did_document,
    rotate_did_document,
    sign_did_update,
    verify_did_update,
)
from ocpd.proto.errors import AuthError, MalformedError
from ocpd.proto.ids import multibase_ed25519


def _doc(agent: Agent) -> dict:
    return build_did_document(
        agent.public_key,
        network=NETWORK,
        service_endpoints=["wss://node.example/ocp/v1/ws"],
        recovery_public_key=SigningKey(b"\x09" * 32).public_key,
        capabilities=["cap:nlp:classification"],
    )


def test_initial_document(alice: Agent) -> None:
    doc = _doc(alice)
    schema.validate("did-document", doc)
    parsed = parse_did_document(doc)
    assert parsed.agent_id == alice.id
    assert parsed.verification_keys() == [alice.public_key]
    assert parsed.newest_key_agreement() == alice.key.x25519_public_key()
    assert list(parsed.recovery_keys) == [f"{alice.id}#recovery-key-1"]
    assert doc["verificationMethod"][0]["publicKeyMultibase"].startswith("z6Mk")
    assert doc["keyAgreement"][0]["publicKeyMultibase"].startswith("z6LS")


def test_id_must_derive_from_initial_key(alice: Agent, bob: Agent) -> None:
    doc = _doc(alice)
    doc["verificationMethod"][0]["publicKeyMultibase"] = multibase_ed25519(bob.public_key)
    with pytest.raises(MalformedError):
        parse_did_document(doc)


def _mutations(alice: Agent) -> dict[str, object]:
    return {
        "recovery-key-in-authentication": lambda d: d["authentication"].append(
            d["verificationMethod"][1]["id"]
        ),
        "foreign-controller": lambda d: d["verificationMethod"][0].update(
            controller="did:ocp:testnet:agent-000000000000"
        ),
        "x25519-not-derived": lambda d: d["keyAgreement"][0].update(
            publicKeyMultibase=d["keyAgreement"][0]["publicKeyMultibase"][:-2] + "11"
        ),
        "no-authentication": lambda d: d.update(authentication=[]),
        "unknown-fragment": lambda d: d["verificationMethod"][0].update(id=alice.id + "#primary"),
        "missing-context": lambda d: d.update({"@context": ["https://example.com"]}),
    }


@pytest.mark.parametrize("name", list(_mutations(Agent(1))))
def test_structural_rules(alice: Agent, name: str) -> None:
    doc = copy.deepcopy(_doc(alice))
    _mutations(alice)[name](doc)  # type: ignore[operator]
    with pytest.raises(MalformedError):
        parse_did_document(doc)


def test_rotation_with_overlap_then_retirement(alice: Agent, bob: Agent, carol: Agent) -> None:
    v1 = _doc(alice)
    # step 1: add bob's key as #key-2; both active (overlap)
    v2 = rotate_did_document(v1, bob.public_key, now=NOW)
    update = sign_did_update(v2, alice.key, signer=f"{alice.id}#key-1", now=NOW)
    schema.validate("did-document-update", update)
    parsed = verify_did_update(v1, update)
    assert parsed.verification_keys() == [bob.public_key, alice.public_key]
    # a third key needs one of the two retired
    with pytest.raises(MalformedError):
        rotate_did_document(v2, carol.public_key, now=NOW)
    v3 = rotate_did_document(v2, carol.public_key, now=NOW, retire=[f"{alice.id}#key-1"])
    parsed3 = verify_did_update(
        v2, sign_did_update(v3, bob.key, signer=f"{alice.id}#key-2", now=NOW)
    )
    assert parsed3.verification_keys() == [carol.public_key, bob.public_key]
    assert parsed3.is_revoked(alice.public_key)
    # the id still derives from the retired initial key kept in revocation
    assert parsed3.agent_id == alice.id
    assert parsed3.initial_key == alice.public_key
    # the retired key can no longer sign an update
    v4 = rotate_did_document(
        v3, SigningKey(b"\x07" * 32).public_key, now=NOW, retire=[f"{alice.id}#key-2"]
    )
    with pytest.raises(AuthError):
        verify_did_update(v3, sign_did_update(v4, alice.key, signer=f"{alice.id}#key-1", now=NOW))


def test_update_must_be_signed_by_an_active_key(alice: Agent, bob: Agent) -> None:
    v1 = _doc(alice)
    v2 = rotate_did_document(v1, bob.public_key, now=NOW)
    # signed by the new key, which is not yet active in the current document
    with pytest.raises(AuthError):
        verify_did_update(v1, sign_did_update(v2, bob.key, signer=f"{alice.id}#key-2", now=NOW))
    # names an active key but is signed by another one
    with pytest.raises(AuthError):
        verify_did_update(v1, sign_did_update(v2, bob.key, signer=f"{alice.id}#key-1", now=NOW))
    # the recovery key is never a signer of updates
    with pytest.raises(AuthError):
        verify_did_update(
            v1,
            sign_did_update(
                v2, SigningKey(b"\x09" * 32), signer=f"{alice.id}#recovery-key-1", now=NOW
            ),
        )


def test_revoked_key_cannot_return(alice: Agent, bob: Agent, carol: Agent) -> None:
    v2 = rotate_did_document(_doc(alice), bob.public_key, now=NOW, retire=[f"{alice.id}#key-1"])
    v3 = copy.deepcopy(v2)
    v3["revocation"] = []
    v3["verificationMethod"].append(
        {
            "id": f"{alice.id}#key-1",
            "type": "Ed25519VerificationKey2020",
            "controller": alice.id,
            "publicKeyMultibase": multibase_ed25519(alice.public_key),
        }
    )
    v3["authentication"].append(f"{alice.id}#key-1")
    with pytest.raises(MalformedError):
        verify_did_update(v2, sign_did_update(v3, bob.key, signer=f"{alice.id}#key-2", now=NOW))
    # a revoked key listed again under a new fragment is refused too
    v4 = rotate_did_document(v2, carol.public_key, now=NOW)
    v4["verificationMethod"][-1]["publicKeyMultibase"] = multibase_ed25519(alice.public_key)
    with pytest.raises(MalformedError):
        parse_did_document(v4)


def test_update_cannot_change_identity(alice: Agent, bob: Agent) -> None:
    with pytest.raises(MalformedError):
        verify_did_update(
            _doc(alice), sign_did_update(_doc(bob), alice.key, signer=f"{alice.id}#key-1", now=NOW)
        )


def test_recovery_key_retirement(alice: Agent, bob: Agent) -> None:
    v1 = _doc(alice)
    recovery_id = f"{alice.id}#recovery-key-1"
    v2 = rotate_did_document(v1, bob.public_key, now=NOW, retire=[recovery_id])
    update = sign_did_update(v2, alice.key, signer=f"{alice.id}#key-1", now=NOW)
    schema.validate("did-document-update", update)
    assert verify_did_update(v1, update).recovery_keys == {}
    # dropping the recovery key without revoking it is refused
    silent = copy.deepcopy(v1)
    silent["verificationMethod"] = [
        m for m in silent["verificationMethod"] if m["id"] != recovery_id
    ]
    with pytest.raises(MalformedError, match="revocation"):
        verify_did_update(
            v1, sign_did_update(silent, alice.key, signer=f"{alice.id}#key-1", now=NOW)
        )
    # and so is reusing its id for another key
    swapped = copy.deepcopy(v1)
    swapped["verificationMethod"][1]["publicKeyMultibase"] = multibase_ed25519(bob.public_key)
    with pytest.raises(MalformedError, match="another key"):
        verify_did_update(
            v1, sign_did_update(swapped, alice.key, signer=f"{alice.id}#key-1", now=NOW)
        )
