"""The published conformance vectors (conformance/vectors/) match the code and verify.

Three layers:

(a) regenerating every file in memory gives the committed bytes, so the
    vectors cannot drift from the implementation;
(b) MANIFEST.json lists exactly the vector files present, with their SHA-256;
(c) every case is re-verified from the JSON alone, with the core's verify
    functions and primitives only (never the generator): signatures, digests
    from the canonical text, ids from keys, rejection of the invalid
    identifiers, decryption, CBOR signing inputs and the session keys.

Each file and each case is its own test id (``<file stem>/<case name>``).
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
from functools import cache
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

from ocpd.proto import artifacts, auth, diddoc, envelope, netartifacts, schema
from ocpd.proto.crypto import (
    SigningKey,
    aes256gcm_decrypt,
    ed25519_pk_to_x25519,
    ed25519_verify,
    hkdf_sha256,
    sha3_256,
    x25519,
    x25519_public_key,
)
from ocpd.proto.dcbor import decode_deterministic, encode_deterministic, signing_input
from ocpd.proto.encoding import b64url_decode, b64url_encode, parse_timestamp
from ocpd.proto.errors import AuthError, MalformedError, NetError
from ocpd.proto.ids import (
    base58btc_encode,
    broadcast_did,
    derive_agent_id,
    format_node_id,
    format_participant_id,
    is_broadcast_did,
    key_fingerprint,
    multibase_ed25519,
    multibase_x25519,
    parse_agent_id,
    parse_multibase_ed25519,
    parse_multibase_x25519,
    parse_node_id,
    parse_participant_id,
)
from ocpd.proto.jcs import canonicalize, canonicalize_reference
from ocpd.proto.signing import artifact_digest, verify_artifact, verify_net_artifact

if TYPE_CHECKING:
    from types import ModuleType

ROOT = Path(__file__).resolve().parents[1]
VECTORS = ROOT / "conformance" / "vectors"
GENERATOR = ROOT / "conformance" / "generate.py"
MANIFEST = "MANIFEST.json"
DOCS = {"README.md"}
EXPECTED_FILES = [
    "artifacts.json",
    "did-document.json",
    "did-key.json",
    "did-ocp.json",
    "http-authorization.json",
    "message-signing.json",
    "networking.json",
    "payload-encryption.json",
    "ws-auth.json",
]

Case = dict[str, Any]


def _load(name: str) -> dict[str, Any]:
    data: dict[str, Any] = json.loads((VECTORS / name).read_text(encoding="utf-8"))
    return data


FILES = {name: _load(name) for name in EXPECTED_FILES}


def _cases(name: str, *, kind: str | None = None) -> list[Any]:
    stem = name.removesuffix(".json")
    return [
        pytest.param(case, id=f"{stem}/{case['name']}")
        for case in FILES[name]["cases"]
        if kind is None or case.get("kind") == kind
    ]


def _case(name: str, case_name: str) -> Case:
    found: Case = next(c for c in FILES[name]["cases"] if c["name"] == case_name)
    return found


def _now(name: str) -> float:
    return parse_timestamp(FILES[name]["reference_time"])


def _key(seed_hex: str, public_hex: str) -> bytes:
    """The public key of ``seed_hex``, which must be the published ``public_hex``."""
    public = SigningKey(bytes.fromhex(seed_hex)).public_key
    assert public.hex() == public_hex
    return public


def _derives(agent_id: str, public_key: bytes) -> None:
    network, ident = parse_agent_id(agent_id)
    assert ident == sha3_256(public_key).hex()[:12]
    assert derive_agent_id(public_key, network) == agent_id


def _sig(text: str) -> bytes:
    return b64url_decode(text, length=64)


def _without(obj: dict[str, Any], *fields: str) -> dict[str, Any]:
    return {k: v for k, v in obj.items() if k not in fields}


def _check_canonical(value: object, canonical_jcs: str, digest_hex: str) -> bytes:
    """JCS of ``value`` is exactly ``canonical_jcs`` and its SHA3-256 is ``digest_hex``."""
    canonical = canonical_jcs.encode("utf-8")
    assert canonicalize(value) == canonical
    assert canonicalize_reference(value) == canonical
    digest = sha3_256(canonical)
    assert digest.hex() == digest_hex
    return digest


# --- (a) the committed files are what the code generates ------------------------------


@cache
def _generator() -> ModuleType:
    spec = importlib.util.spec_from_file_location("_ocpd_conformance_generate", GENERATOR)
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@cache
def _generated() -> dict[str, bytes]:
    files: dict[str, bytes] = _generator().build_vectors()
    return files


def test_generator_produces_exactly_the_published_files() -> None:
    assert sorted(_generated()) == sorted([*EXPECTED_FILES, MANIFEST])


@pytest.mark.parametrize("name", [*EXPECTED_FILES, MANIFEST])
def test_committed_file_matches_regeneration(name: str) -> None:
    committed = (VECTORS / name).read_bytes()
    assert committed == _generated()[name], (
        f"conformance/vectors/{name} is stale: run `python -m conformance.generate`"
    )


def test_regeneration_is_deterministic() -> None:
    assert _generator().build_vectors() == _generated()


# --- (b) the manifest --------------------------------------------------------------------


def test_manifest_lists_exactly_the_files_present() -> None:
    manifest = _load(MANIFEST)
    assert manifest["format"] == 1
    present = {p.name for p in VECTORS.iterdir() if p.is_file()}
    assert present - DOCS - {MANIFEST} == set(manifest["files"])
    assert set(manifest["files"]) == set(EXPECTED_FILES)


@pytest.mark.parametrize("name", EXPECTED_FILES)
def test_manifest_hash(name: str) -> None:
    manifest = _load(MANIFEST)
    assert hashlib.sha256((VECTORS / name).read_bytes()).hexdigest() == manifest["files"][name]


@pytest.mark.parametrize("name", EXPECTED_FILES)
def test_file_shape(name: str) -> None:
    data = FILES[name]
    assert isinstance(data["description"], str)
    assert data["description"]
    parse_timestamp(data["reference_time"])
    names = [case["name"] for case in data["cases"]]
    assert names
    assert all(isinstance(n, str) and n for n in names)
    assert len(names) == len(set(names))


# --- (c) did:ocp -----------------------------------------------------------------------------


@pytest.mark.parametrize("case", _cases("did-ocp.json", kind="valid"))
def test_did_ocp_valid(case: Case) -> None:
    public_key = bytes.fromhex(case["public_key"])
    assert sha3_256(public_key).hex() == case["sha3_256_of_public_key"]
    expected = f"did:ocp:{case['network']}:agent-{case['sha3_256_of_public_key'][:12]}"
    assert case["agent_id"] == expected
    assert derive_agent_id(public_key, case["network"]) == expected
    assert parse_agent_id(expected) == (case["network"], case["sha3_256_of_public_key"][:12])


@pytest.mark.parametrize("case", _cases("did-ocp.json", kind="broadcast"))
def test_did_ocp_broadcast(case: Case) -> None:
    assert case["did"] == f"did:ocp:{case['network']}:broadcast" == broadcast_did(case["network"])
    assert is_broadcast_did(case["did"])
    with pytest.raises(MalformedError):
        parse_agent_id(case["did"])


@pytest.mark.parametrize("case", _cases("did-ocp.json", kind="invalid"))
def test_did_ocp_invalid(case: Case) -> None:
    assert case["reason"]
    with pytest.raises(MalformedError):
        parse_agent_id(case["value"])


# --- did:key -----------------------------------------------------------------------------------


@pytest.mark.parametrize("case", _cases("did-key.json", kind="valid"))
def test_did_key_valid(case: Case) -> None:
    public_key = bytes.fromhex(case["public_key"])
    assert case["multicodec_key"] == "ed01" + case["public_key"]
    assert case["multibase"] == "z" + base58btc_encode(bytes.fromhex(case["multicodec_key"]))
    assert case["multibase"] == multibase_ed25519(public_key)
    assert case["node_id"] == "node:did:key:" + case["multibase"] == format_node_id(public_key)
    assert (
        case["participant_id"]
        == "participant:did:key:" + case["multibase"]
        == format_participant_id(public_key)
    )
    assert parse_multibase_ed25519(case["multibase"]) == public_key
    assert parse_node_id(case["node_id"]) == public_key
    assert parse_participant_id(case["participant_id"]) == public_key


@pytest.mark.parametrize("case", _cases("did-key.json", kind="invalid"))
def test_did_key_invalid(case: Case) -> None:
    parser = {"node_id": parse_node_id, "participant_id": parse_participant_id}[case["parser"]]
    assert case["reason"]
    with pytest.raises(MalformedError):
        parser(case["value"])


# --- DID documents -----------------------------------------------------------------------------


def test_did_document_initial() -> None:
    case = _case("did-document.json", "initial-document")
    public_key = _key(case["seed"], case["public_key"])
    recovery = _key(case["recovery_seed"], case["recovery_public_key"])
    doc = case["document"]
    schema.validate("did-document", doc)
    parsed = diddoc.parse_did_document(doc)
    _derives(case["agent_id"], public_key)
    assert parsed.agent_id == doc["id"] == case["agent_id"]
    assert parsed.network == case["network"]
    assert parsed.initial_key == public_key
    assert list(parsed.active_keys.values()) == [public_key]
    assert list(parsed.recovery_keys.values()) == [recovery]
    assert case["public_key_multibase"] == multibase_ed25519(public_key)
    assert doc["verificationMethod"][0]["publicKeyMultibase"] == case["public_key_multibase"]
    # keyAgreement: the X25519 key derived from the Ed25519 key (D4).
    x_public = bytes.fromhex(case["x25519_public_key"])
    assert x_public == ed25519_pk_to_x25519(public_key)
    assert x_public == x25519_public_key(bytes.fromhex(case["x25519_private_key"]))
    assert x_public == SigningKey(bytes.fromhex(case["seed"])).x25519_public_key()
    assert case["x25519_public_key_multibase"] == multibase_x25519(x_public)
    [agreement] = doc["keyAgreement"]
    assert parse_multibase_x25519(agreement["publicKeyMultibase"]) == x_public
    assert parsed.newest_key_agreement() == x_public
    assert [s["serviceEndpoint"] for s in doc["service"]] == case["service_endpoints"]


@pytest.mark.parametrize(
    "case",
    [c for c in _cases("did-document.json") if c.values[0]["name"].startswith("rotation-")],
)
def test_did_document_rotation(case: Case) -> None:
    update = case["update"]
    current = diddoc.parse_did_document(case["current_document"])
    signer_key = _key(case["signer_seed"], case["signer_public_key"])
    assert update["signer"] == case["signer"]
    assert current.active_keys[case["signer"]] == signer_key
    assert update["did_document"] == case["rotated_document"]
    assert update["signature"] == case["signature"]
    schema.validate("did-document-update", update)
    digest = _check_canonical(
        _without(update, "signature"), case["canonical_jcs"], case["digest_sha3_256"]
    )
    assert ed25519_verify(signer_key, digest, _sig(case["signature"]))
    assert verify_artifact(update, signer_key) == digest
    new = diddoc.verify_did_update(case["current_document"], update)
    assert new.document == case["rotated_document"]
    assert new.agent_id == current.agent_id
    assert new.initial_key == current.initial_key
    new_key = _key(case["new_key"]["seed"], case["new_key"]["public_key"])
    assert new.active_keys[case["new_key"]["verification_method"]] == new_key
    for retired in case["retired"]:
        assert retired in new.revoked_keys
        assert retired not in new.active_keys
        assert new.is_revoked(current.active_keys[retired])
    # The signature covers updated_at and signer as well as the document.
    with pytest.raises(AuthError):
        diddoc.verify_did_update(
            case["current_document"], update | {"updated_at": "2030-01-01T00:00:00Z"}
        )


def test_did_document_rotations_chain() -> None:
    first = _case("did-document.json", "rotation-add-key-2")
    second = _case("did-document.json", "rotation-add-key-3")
    initial = _case("did-document.json", "initial-document")
    assert first["current_document"] == initial["document"]
    assert second["current_document"] == first["rotated_document"]


# --- message signing ---------------------------------------------------------------------------


@pytest.mark.parametrize("case", _cases("message-signing.json"))
def test_message_signature(case: Case) -> None:
    public_key = _key(case["seed"], case["public_key"])
    signed, unsigned = case["signed_message"], case["unsigned_message"]
    assert signed["sender"]["agent_id"] == case["agent_id"]
    _derives(case["agent_id"], public_key)
    assert signed["sender"]["signature"] == case["signature"]
    # The signed bytes: the message with sender.signature removed (sender stays).
    view = signed | {"sender": _without(signed["sender"], "signature")}
    assert view == unsigned
    digest = _check_canonical(unsigned, case["canonical_jcs"], case["digest_sha3_256"])
    assert envelope.message_digest(signed) == digest
    assert ed25519_verify(public_key, digest, _sig(case["signature"]))
    raw = json.dumps(signed, ensure_ascii=False).encode("utf-8")
    verified = envelope.verify_message(
        raw, now=parse_timestamp(signed["timestamp"]), resolve_keys=lambda _: [public_key]
    )
    assert verified.digest == digest
    tampered = signed | {"ttl": signed["ttl"] + 1}
    with pytest.raises(AuthError):
        envelope.verify_message_signature(tampered, [public_key])


# --- HTTP Authorization -------------------------------------------------------------------------


@pytest.mark.parametrize("case", _cases("http-authorization.json"))
def test_http_authorization(case: Case) -> None:
    public_key = _key(case["seed"], case["public_key"])
    _derives(case["agent_id"], public_key)
    body = case["body"].encode("utf-8")
    assert sha3_256(body).hex() == case["body_sha3_256"]
    expected = "\n".join(
        [
            "OCP-HTTP-1.0",
            case["method"],
            case["path_and_query"],
            case["agent_id"],
            case["timestamp"],
            case["body_sha3_256"],
        ]
    )
    assert case["signing_string"] == expected
    signing_string = auth.http_signing_string(
        method=case["method"],
        path_and_query=case["path_and_query"],
        agent_id=case["agent_id"],
        timestamp=case["timestamp"],
        body=body,
    )
    assert signing_string == expected.encode("utf-8")
    digest = sha3_256(signing_string)
    assert digest.hex() == case["signing_digest"]
    assert ed25519_verify(public_key, digest, _sig(case["signature"]))
    header = f"OCP-Ed25519 {case['agent_id']}:{case['timestamp']}:{case['signature']}"
    assert case["header_name"] == "Authorization"
    assert case["header"] == header
    parsed = auth.parse_authorization(header)
    assert (parsed.agent_id, parsed.timestamp) == (case["agent_id"], case["timestamp"])
    assert parsed.signature == _sig(case["signature"])
    result = auth.verify_authorization(
        header,
        method=case["method"],
        path_and_query=case["path_and_query"],
        body=body,
        public_keys=[public_key],
        now=parse_timestamp(case["timestamp"]),
        replay=auth.ReplayWindow(window=auth.DEFAULT_AUTH_WINDOW),
    )
    assert result == parsed
    with pytest.raises(AuthError):
        auth.verify_authorization(
            header,
            method=case["method"],
            path_and_query=case["path_and_query"],
            body=body + b" ",
            public_keys=[public_key],
            now=parse_timestamp(case["timestamp"]),
            replay=auth.ReplayWindow(window=auth.DEFAULT_AUTH_WINDOW),
        )


# --- WebSocket auth_handshake -------------------------------------------------------------------


@pytest.mark.parametrize("case", _cases("ws-auth.json"))
def test_ws_auth_handshake(case: Case) -> None:
    public_key = _key(case["seed"], case["public_key"])
    _derives(case["agent_id"], public_key)
    assert case["nonce"] == b64url_encode(bytes.fromhex(case["nonce_bytes"]))
    assert len(bytes.fromhex(case["nonce_bytes"])) == 32
    assert case["signed_bytes"] == case["agent_id"] + case["timestamp"] + case["nonce"]
    assert case["frame"] == {
        "frame_type": "auth_handshake",
        "agent_id": case["agent_id"],
        "timestamp": case["timestamp"],
        "nonce": case["nonce"],
        "signature": case["signature"],
    }
    # Not pre-hashed: the signature covers the UTF-8 bytes themselves.
    assert ed25519_verify(public_key, case["signed_bytes"].encode("utf-8"), _sig(case["signature"]))
    agent_id = auth.verify_ws_auth_handshake(
        case["frame"],
        public_keys=[public_key],
        now=parse_timestamp(case["timestamp"]),
        replay=auth.ReplayWindow(window=auth.DEFAULT_AUTH_WINDOW),
    )
    assert agent_id == case["agent_id"]


# --- payload encryption ------------------------------------------------------------------------


@pytest.mark.parametrize("case", _cases("payload-encryption.json"))
def test_payload_encryption(case: Case) -> None:
    sender = _key(case["sender_seed"], case["sender_public_key"])
    _key(case["receiver_seed"], case["receiver_public_key"])
    receiver_key = SigningKey(bytes.fromhex(case["receiver_seed"]))
    _derives(case["sender_agent_id"], sender)
    _derives(case["receiver_agent_id"], receiver_key.public_key)
    receiver_x_public = bytes.fromhex(case["receiver_x25519_public"])
    receiver_x_private = bytes.fromhex(case["receiver_x25519_private"])
    assert receiver_x_public == ed25519_pk_to_x25519(receiver_key.public_key)
    assert receiver_x_private == receiver_key.x25519_private_key()
    assert case["receiver_key_agreement_multibase"] == multibase_x25519(receiver_x_public)
    eph_private, eph_public = (
        bytes.fromhex(case[k]) for k in ("ephemeral_private", "ephemeral_public")
    )
    assert x25519_public_key(eph_private) == eph_public

    # Both ends of the ECDH reach the published shared secret.
    shared = bytes.fromhex(case["shared_secret"])
    assert x25519(eph_private, receiver_x_public) == shared
    assert x25519(receiver_x_private, eph_public) == shared
    salt = bytes.fromhex(case["hkdf_salt"])
    assert salt == eph_public + receiver_x_public
    assert case["hkdf_info"] == "OCP-1.0 payload AES-256-GCM"
    aes_key = hkdf_sha256(shared, salt=salt, info=case["hkdf_info"].encode(), length=32)
    assert aes_key.hex() == case["aes_key"]

    signed = case["signed_message"]
    expected_aad = "\n".join(
        [signed["message_id"], signed["sender"]["agent_id"], signed["receiver"]["agent_id"]]
    )
    assert case["aad"] == expected_aad
    assert envelope.message_aad(signed) == expected_aad.encode("utf-8")
    nonce = bytes.fromhex(case["nonce"])
    assert signed["encryption"] == {
        "algorithm": "AES-256-GCM",
        "key_exchange": "ECDH-X25519",
        "nonce": b64url_encode(nonce),
        "ephemeral_public_key": b64url_encode(eph_public),
    }
    assert signed["payload"] == case["ciphertext"]
    plaintext = aes256gcm_decrypt(
        aes_key, nonce, b64url_decode(case["ciphertext"]), case["aad"].encode("utf-8")
    )
    assert plaintext == case["plaintext"].encode("utf-8")
    assert canonicalize(case["payload"]) == plaintext
    assert case["unsigned_message"]["payload"] == case["payload"]
    assert envelope.decrypt_payload(signed, receiver_key) == case["payload"]

    # Signed after encryption: the signature covers the ciphertext.
    assert case["encrypted_message"] == signed | {"sender": {"agent_id": case["sender_agent_id"]}}
    digest = _check_canonical(
        case["encrypted_message"], case["canonical_jcs"], case["digest_sha3_256"]
    )
    assert signed["sender"]["signature"] == case["signature"]
    assert ed25519_verify(sender, digest, _sig(case["signature"]))
    envelope.verify_message(
        json.dumps(signed, ensure_ascii=False).encode("utf-8"),
        now=parse_timestamp(signed["timestamp"]),
        resolve_keys=lambda _: [sender],
    )


# --- OCP artifacts -----------------------------------------------------------------------------


def _artifact_rules(case: Case, now: float) -> None:
    """The type's own checks, beyond schema and signature."""
    kind, artifact = case["artifact_type"], case["artifact"]
    if kind == "agent-record":
        assert case["registration"]["record"] == artifact
        record, document = artifacts.verify_registration(case["registration"], now=now)
        assert record == artifact
        assert document.agent_id == artifact["agent_id"]
    elif kind == "vouch":
        artifacts.check_vouch(artifact, now=now)
    elif kind == "vouch-revocation":
        vouch = case["revokes"]
        assert artifact["vouch_digest"] == artifacts.vouch_digest(vouch)
        assert (
            artifact["vouch_digest"] == sha3_256(canonicalize(_without(vouch, "signature"))).hex()
        )
        artifacts.check_vouch_revocation(artifact, vouch, now=now)
    elif kind == "bond":
        keys = {s["agent_id"]: [bytes.fromhex(s["public_key"])] for s in case["signers"]}
        assert artifacts.verify_bond(artifact, keys, now=now).hex() == case["digest_sha3_256"]
    elif kind == "bond-revocation":
        artifacts.check_bond_revocation(artifact, case["revokes"], now=now)
    elif kind == "consensus-vote":
        rationale = case["rationale_text"].encode("utf-8")
        assert artifact["rationale_hash"] == sha3_256(rationale).hex()
        artifacts.check_consensus_vote(artifact, sender=case["signers"][0]["agent_id"])
    elif kind == "interaction-rating":
        artifacts.check_interaction_rating(artifact, now=now)
    elif kind == "recovery-share":
        public_key = bytes.fromhex(case["signers"][0]["public_key"])
        assert artifact["key_fingerprint"] == key_fingerprint(public_key)
        assert artifact["key_fingerprint"] == sha3_256(public_key).hex()[:16]
        artifacts.check_recovery_share(artifact, now=now)
    elif kind == "certification":
        public_key = bytes.fromhex(case["signers"][0]["public_key"])
        assert artifact["certifier"] == multibase_ed25519(public_key)
        artifacts.verify_certification(artifact, now=now)
    elif kind == "certification-revocation":
        assert artifact["certifier"] == case["revokes"]["certifier"]
        artifacts.verify_certification_revocation(artifact, case["revokes"], now=now)
    else:  # pragma: no cover - a new artifact type needs its rules here
        pytest.fail(f"no rules for {kind}")


@pytest.mark.parametrize("case", _cases("artifacts.json"))
def test_artifact(case: Case) -> None:
    artifact, field = case["artifact"], case["signature_field"]
    schema.validate(case["artifact_type"], artifact)
    digest = _check_canonical(
        _without(artifact, field), case["canonical_jcs"], case["digest_sha3_256"]
    )
    assert artifact_digest(artifact, field=field) == digest
    signatures = artifact[field] if field == "signatures" else None
    if signatures is not None:
        assert set(signatures) == {s["agent_id"] for s in case["signers"]}
    for signer in case["signers"]:
        public_key = _key(signer["seed"], signer["public_key"])
        _derives(signer["agent_id"], public_key)
        if signatures is None:
            assert ed25519_verify(public_key, digest, _sig(artifact["signature"]))
            assert verify_artifact(artifact, public_key) == digest
        else:
            assert ed25519_verify(public_key, digest, _sig(signatures[signer["agent_id"]]))
    _artifact_rules(case, _now("artifacts.json"))


# --- networking ----------------------------------------------------------------------------------


def test_node_identity() -> None:
    case = _case("networking.json", "node-identity")
    public_key = _key(case["seed"], case["public_key"])
    record = case["artifact"]
    assert netartifacts.check_node_identity(record) == public_key
    assert record["node/id"] == format_node_id(public_key)
    assert record["participant/id"] == format_participant_id(public_key)
    assert record["key/public"] == b64url_encode(public_key)
    assert record["key/alg"] == "ed25519"
    _derives(case["service_agent_id"], public_key)


NET_SIGNED = [c for c in _cases("networking.json") if "signing_input" in c.values[0]]


def _net_rules(case: Case, artifact: dict[str, Any]) -> None:
    """The artifact type's full verify function, at the artifact's own time."""
    kind = case["artifact_type"]
    if kind == "node-advertisement.v1":
        now = parse_timestamp(artifact["advertised-at"])
        netartifacts.verify_node_advertisement(artifact, now=now)
    elif kind == "peer-handshake.v1":
        netartifacts.verify_handshake(artifact, now=parse_timestamp(artifact["ts"]))
    elif kind == "capability-advertisement.v1":
        caps = netartifacts.verify_capability_advertisement(artifact)
        assert netartifacts.CORE_MESSAGING in caps
    elif kind == "signal-marker-envelope.v1":
        marker = netartifacts.verify_signal_marker_envelope(
            artifact,
            now=parse_timestamp(artifact["sent-at"]),
            session_peer=artifact["sender/node-id"],
        )
        assert marker == _case("networking.json", "signal-marker")["artifact"]
    else:
        assert kind == "signal-marker.v1"


@pytest.mark.parametrize("case", NET_SIGNED)
def test_net_signature(case: Case) -> None:
    public_key = _key(case["signer_seed"], case["signer_public_key"])
    artifact, kind = case["artifact"], case["artifact_type"]
    unsigned = frozenset(case["unsigned_fields"])
    parse_id = parse_participant_id if case["signer_field"] == "participant/id" else parse_node_id
    assert parse_id(artifact[case["signer_field"]]) == public_key
    if "key/public" in artifact:
        assert artifact["key/public"] == b64url_encode(public_key)
    schema.validate(kind, artifact)

    body = _without(artifact, "signature", *unsigned)
    message = bytes.fromhex(case["signing_input"])
    assert signing_input(kind, body) == message
    prefix = kind.encode("ascii") + b"\x00"
    assert message.startswith(prefix)
    assert encode_deterministic(body) == message[len(prefix) :]
    assert decode_deterministic(message[len(prefix) :]) == body
    # Not pre-hashed: Ed25519 over the signing input itself.
    assert artifact["signature"] == case["signature"]
    assert ed25519_verify(public_key, message, _sig(case["signature"]))
    verify_net_artifact(kind, artifact, public_key, unsigned_fields=unsigned)
    _net_rules(case, artifact)
    for field in unsigned:
        # Framing fields may change without touching the signature...
        verify_net_artifact(kind, artifact | {field: "other"}, public_key, unsigned_fields=unsigned)
    # ...but any signed field may not.
    changed = artifact | {case["signer_field"]: artifact[case["signer_field"]][:-1] + "x"}
    with pytest.raises(NetError):
        verify_net_artifact(kind, changed, public_key, unsigned_fields=unsigned)


def test_session_keys() -> None:
    case = _case("networking.json", "session-keys")
    hello, ack = case["hello"], case["ack"]
    assert hello == _case("networking.json", "hello")["artifact"]
    assert ack == _case("networking.json", "ack")["artifact"]
    netartifacts.verify_ack_binding(ack, hello)
    i_pub = _key(case["initiator_seed"], case["initiator_public_key"])
    r_pub = _key(case["responder_seed"], case["responder_public_key"])
    i_key = SigningKey(bytes.fromhex(case["initiator_seed"]))
    r_key = SigningKey(bytes.fromhex(case["responder_seed"]))
    assert parse_node_id(hello["sender/node-id"]) == i_pub
    assert parse_node_id(ack["sender/node-id"]) == r_pub

    # Static X25519 keys derive from the Ed25519 node keys.
    for role, key in (("initiator", i_key), ("responder", r_key)):
        assert case[f"{role}_static_x25519_private"] == key.x25519_private_key().hex()
        assert case[f"{role}_static_x25519_public"] == ed25519_pk_to_x25519(key.public_key).hex()
    e_i = bytes.fromhex(case["initiator_ephemeral_private"])
    e_r = bytes.fromhex(case["responder_ephemeral_private"])
    e_i_pub = bytes.fromhex(case["initiator_ephemeral_public"])
    e_r_pub = bytes.fromhex(case["responder_ephemeral_public"])
    assert x25519_public_key(e_i) == e_i_pub
    assert hello["session/pub"] == b64url_encode(e_i_pub)
    assert x25519_public_key(e_r) == e_r_pub
    assert ack["session/pub"] == b64url_encode(e_r_pub)

    dh_ee = bytes.fromhex(case["dh_ephemeral"])
    dh_ss = bytes.fromhex(case["dh_static"])
    assert x25519(e_i, e_r_pub) == dh_ee == x25519(e_r, e_i_pub)
    i_static = bytes.fromhex(case["initiator_static_x25519_private"])
    r_static = bytes.fromhex(case["responder_static_x25519_private"])
    assert x25519(i_static, ed25519_pk_to_x25519(r_pub)) == dh_ss
    assert x25519(r_static, ed25519_pk_to_x25519(i_pub)) == dh_ss
    assert case["hkdf_ikm"] == (dh_ee + dh_ss).hex()

    # Transcript: deterministic CBOR of hello then ack as sent (signature
    # included), framing fields left out.
    framing = case["transcript_unsigned_fields"]
    assert framing == ["transport/profile"]
    transcript = encode_deterministic(_without(hello, *framing)) + encode_deterministic(
        _without(ack, *framing)
    )
    assert transcript.hex() == case["transcript"]
    salt = sha3_256(transcript)
    assert salt.hex() == case["transcript_salt"]
    assert case["hkdf_info"] == "ocp-peer-session.v1"
    okm = hkdf_sha256(dh_ee + dh_ss, salt=salt, info=case["hkdf_info"].encode(), length=64)
    assert okm.hex() == case["hkdf_okm"]
    assert case["initiator_send_key"] == okm[:32].hex()
    assert case["initiator_receive_key"] == okm[32:].hex()

    initiator = netartifacts.derive_session_keys(
        initiator=True,
        ephemeral_private=e_i,
        peer_ephemeral_public=e_r_pub,
        static_key=i_key,
        peer_static_public=r_pub,
        hello=hello,
        ack=ack,
    )
    responder = netartifacts.derive_session_keys(
        initiator=False,
        ephemeral_private=e_r,
        peer_ephemeral_public=e_i_pub,
        static_key=r_key,
        peer_static_public=i_pub,
        hello=hello,
        ack=ack,
    )
    assert initiator.send_key.hex() == case["initiator_send_key"] == responder.receive_key.hex()
    assert initiator.receive_key.hex() == case["initiator_receive_key"] == responder.send_key.hex()
