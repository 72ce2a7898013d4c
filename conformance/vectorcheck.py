"""Re-verify the published vectors (``conformance/vectors/``) with ocpd's core.

This checks the vector files and the suite's own crypto (``ocpd.proto``), never
a remote node: a node under test cannot make these pass or fail. The suite
reports them as ``vector`` requirements so that a reader sees that the
primitives the suite relies on agree with the published bytes before trusting
its verdict on the target.

Each case is verified from the JSON alone, (``tests/test_conformance_vectors.py`` runs
these same checks, one test per case): signatures, digests from the
canonical text, ids from keys, rejection of invalid identifiers, decryption,
CBOR signing inputs, the session keys, Shamir shares and the key recovery
seals (each ECDH, HKDF key, AAD and ciphertext recomputed from the
primitives, GF(2^8) interpolation done bit by bit). The generator is never used.
Failures are collected per case (``<file stem>/<case name>: what differed``),
so one bad case does not hide the others.
"""

from __future__ import annotations

import hashlib
import itertools
import json
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Final

from ocpd.proto import artifacts, auth, diddoc, envelope, netartifacts, recovery, schema, shamir
from ocpd.proto.crypto import (
    DecryptionFailed,
    SigningKey,
    X25519KeyPair,
    aes256gcm_decrypt,
    aes256gcm_encrypt,
    chacha20poly1305_encrypt,
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
    from collections.abc import Callable
    from pathlib import Path

__all__ = [
    "CASE_CHECKS",
    "VECTOR_CHECKS",
    "VectorMismatch",
    "VectorOutcome",
    "check_case",
    "check_manifest",
]

MANIFEST: Final = "MANIFEST.json"
MANIFEST_FORMAT: Final = 1

Case = dict[str, Any]
Json = dict[str, Any]


class VectorMismatch(Exception):
    """A vector case does not verify: the message says what differed."""


@dataclass
class VectorOutcome:
    """How many cases were verified and which failed."""

    cases: int = 0
    failures: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return self.cases > 0 and not self.failures

    def describe(self, what: str) -> str:
        """``what`` is the plural noun (``cases``, ``files``)."""
        if not self.failures:
            noun = what.removesuffix("s") if self.cases == 1 else what
            return f"{self.cases} {noun} verified" if self.cases else f"no {what} found"
        shown = "; ".join(self.failures[:3])
        more = f" (+{len(self.failures) - 3} more)" if len(self.failures) > 3 else ""
        return f"{len(self.failures)} of {self.cases} {what} failed: {shown}{more}"


def expect(ok: bool, what: str) -> None:
    if not ok:
        raise VectorMismatch(what)


def expect_rejected(
    errors: type[Exception] | tuple[type[Exception], ...],
    call: Callable[[], object],
    what: str,
) -> None:
    try:
        call()
    except errors:
        return
    raise VectorMismatch(f"{what} was accepted")


# --- shared helpers ---------------------------------------------------------------------------


def _key(seed_hex: str, public_hex: str) -> bytes:
    """The public key of ``seed_hex``, which must be the published ``public_hex``."""
    public = SigningKey(bytes.fromhex(seed_hex)).public_key
    expect(public.hex() == public_hex, "seed does not derive the published public key")
    return public


def _derives(agent_id: str, public_key: bytes) -> None:
    network, ident = parse_agent_id(agent_id)
    expect(ident == sha3_256(public_key).hex()[:12], f"{agent_id} does not derive from its key")
    expect(derive_agent_id(public_key, network) == agent_id, f"derive_agent_id != {agent_id}")


def _sig(text: str) -> bytes:
    return b64url_decode(text, length=64)


def _without(obj: Json, *fields: str) -> Json:
    return {k: v for k, v in obj.items() if k not in fields}


def _check_canonical(value: object, canonical_jcs: str, digest_hex: str) -> bytes:
    """JCS of ``value`` is exactly ``canonical_jcs`` and its SHA3-256 is ``digest_hex``."""
    canonical = canonical_jcs.encode("utf-8")
    expect(canonicalize(value) == canonical, "JCS differs from canonical_jcs")
    expect(canonicalize_reference(value) == canonical, "reference JCS differs from canonical_jcs")
    digest = sha3_256(canonical)
    expect(digest.hex() == digest_hex, "SHA3-256 of canonical_jcs differs")
    return digest


def _verifies(public_key: bytes, message: bytes, signature: str, what: str) -> None:
    expect(ed25519_verify(public_key, message, _sig(signature)), f"{what}: signature invalid")


def _load(directory: Path, name: str) -> Json:
    data: Json = json.loads((directory / name).read_text(encoding="utf-8"))
    return data


def _named(data: Json, case_name: str) -> Case:
    found: Case = next(c for c in data["cases"] if c["name"] == case_name)
    return found


def _any(_: Case) -> bool:
    return True


def _run_cases(
    directory: Path,
    name: str,
    check: Callable[[Case, Json], None],
    *,
    select: Callable[[Case], bool] = _any,
) -> VectorOutcome:
    """Run ``check(case, file)`` on every selected case of ``name``; collect failures."""
    outcome = VectorOutcome()
    stem = name.removesuffix(".json")
    try:
        data = _load(directory, name)
    except (OSError, ValueError) as exc:
        outcome.failures.append(f"{name}: unreadable ({exc})")
        return outcome
    for case in data.get("cases", []):
        if not select(case):
            continue
        outcome.cases += 1
        try:
            check(case, data)
        except Exception as exc:  # any exception is a mismatch of this case
            label = f"{type(exc).__name__}: {exc}" if not isinstance(exc, VectorMismatch) else exc
            outcome.failures.append(f"{stem}/{case.get('name', '?')}: {label}")
    return outcome


# --- the manifest ------------------------------------------------------------------------------


def check_manifest(directory: Path) -> VectorOutcome:
    """MANIFEST.json lists exactly the JSON files present, each with its SHA-256."""
    outcome = VectorOutcome()
    try:
        manifest = _load(directory, MANIFEST)
    except (OSError, ValueError) as exc:
        outcome.failures.append(f"{MANIFEST}: unreadable ({exc})")
        return outcome
    if manifest.get("format") != MANIFEST_FORMAT:
        outcome.failures.append(f"{MANIFEST}: format is {manifest.get('format')!r}, not 1")
    listed: dict[str, str] = manifest.get("files", {})
    present = {p.name for p in directory.glob("*.json")} - {MANIFEST}
    for missing in sorted(set(listed) - present):
        outcome.failures.append(f"{missing}: listed but missing")
    for extra in sorted(present - set(listed)):
        outcome.failures.append(f"{extra}: present but not listed")
    for name in sorted(set(listed) & present):
        outcome.cases += 1
        digest = hashlib.sha256((directory / name).read_bytes()).hexdigest()
        if digest != listed[name]:
            outcome.failures.append(f"{name}: SHA-256 {digest[:12]}... differs from the manifest")
    return outcome


# --- did-ocp.json ------------------------------------------------------------------------------


def _did_ocp_case(case: Case, _: Json) -> None:
    kind = case["kind"]
    if kind == "valid":
        public_key = bytes.fromhex(case["public_key"])
        digest = sha3_256(public_key).hex()
        expect(digest == case["sha3_256_of_public_key"], "SHA3-256 of the key differs")
        expected = f"did:ocp:{case['network']}:agent-{digest[:12]}"
        expect(case["agent_id"] == expected, "agent_id is not did:ocp:<network>:agent-<12 hex>")
        expect(derive_agent_id(public_key, case["network"]) == expected, "derived id differs")
        expect(parse_agent_id(expected) == (case["network"], digest[:12]), "parse differs")
    elif kind == "broadcast":
        expected = f"did:ocp:{case['network']}:broadcast"
        expect(case["did"] == expected == broadcast_did(case["network"]), "broadcast DID differs")
        expect(is_broadcast_did(case["did"]), "broadcast DID not recognised")
        expect_rejected(
            MalformedError, lambda: parse_agent_id(case["did"]), "broadcast as agent id"
        )
    elif kind == "invalid":
        expect(bool(case["reason"]), "invalid case without a reason")
        expect_rejected(MalformedError, lambda: parse_agent_id(case["value"]), repr(case["value"]))
    else:
        raise VectorMismatch(f"unknown kind {kind!r}")


# --- did-key.json ------------------------------------------------------------------------------


def _did_key_case(case: Case, _: Json) -> None:
    if case["kind"] == "invalid":
        parser = {"node_id": parse_node_id, "participant_id": parse_participant_id}[case["parser"]]
        expect(bool(case["reason"]), "invalid case without a reason")
        expect_rejected(MalformedError, lambda: parser(case["value"]), repr(case["value"]))
        return
    expect(case["kind"] == "valid", f"unknown kind {case['kind']!r}")
    public_key = bytes.fromhex(case["public_key"])
    multibase = case["multibase"]
    expect(case["multicodec_key"] == "ed01" + case["public_key"], "multicodec key differs")
    expect(multibase == "z" + base58btc_encode(bytes.fromhex(case["multicodec_key"])), "base58")
    expect(multibase == multibase_ed25519(public_key), "multibase differs")
    expect(case["node_id"] == "node:did:key:" + multibase == format_node_id(public_key), "node id")
    participant = "participant:did:key:" + multibase
    expect(case["participant_id"] == participant == format_participant_id(public_key), "part. id")
    expect(parse_multibase_ed25519(multibase) == public_key, "multibase does not parse back")
    expect(parse_node_id(case["node_id"]) == public_key, "node id does not parse back")
    expect(parse_participant_id(participant) == public_key, "participant id does not parse back")


# --- did-document.json -------------------------------------------------------------------------


def _did_document_case(case: Case, data: Json) -> None:
    if case["name"] == "initial-document":
        _did_document_initial(case)
    elif case["name"].startswith("rotation-"):
        _did_document_rotation(case)
        if case["name"] == "rotation-add-key-3":
            first = _named(data, "rotation-add-key-2")
            expect(case["current_document"] == first["rotated_document"], "rotations do not chain")
        else:
            initial = _named(data, "initial-document")
            expect(case["current_document"] == initial["document"], "rotation not from initial")
    else:
        raise VectorMismatch("unknown case")


def _did_document_initial(case: Case) -> None:
    public_key = _key(case["seed"], case["public_key"])
    recovery = _key(case["recovery_seed"], case["recovery_public_key"])
    doc = case["document"]
    schema.validate("did-document", doc)
    parsed = diddoc.parse_did_document(doc)
    _derives(case["agent_id"], public_key)
    expect(parsed.agent_id == doc["id"] == case["agent_id"], "document id differs")
    expect(parsed.network == case["network"], "network differs")
    expect(parsed.initial_key == public_key, "initial key differs")
    expect(list(parsed.active_keys.values()) == [public_key], "active keys differ")
    expect(list(parsed.recovery_keys.values()) == [recovery], "recovery keys differ")
    expect(case["public_key_multibase"] == multibase_ed25519(public_key), "key multibase")
    expect(doc["verificationMethod"][0]["publicKeyMultibase"] == case["public_key_multibase"], "vm")
    x_public = bytes.fromhex(case["x25519_public_key"])
    expect(x_public == ed25519_pk_to_x25519(public_key), "X25519 key not derived from Ed25519")
    expect(x_public == x25519_public_key(bytes.fromhex(case["x25519_private_key"])), "X25519 pair")
    signing = SigningKey(bytes.fromhex(case["seed"]))
    expect(x_public == signing.x25519_public_key(), "X25519 key from seed differs")
    expect(case["x25519_public_key_multibase"] == multibase_x25519(x_public), "X25519 multibase")
    [agreement] = doc["keyAgreement"]
    expect(parse_multibase_x25519(agreement["publicKeyMultibase"]) == x_public, "keyAgreement")
    expect(parsed.newest_key_agreement() == x_public, "newest keyAgreement differs")
    endpoints = [s["serviceEndpoint"] for s in doc["service"]]
    expect(endpoints == case["service_endpoints"], "service endpoints differ")


def _did_document_rotation(case: Case) -> None:
    update = case["update"]
    current = diddoc.parse_did_document(case["current_document"])
    signer_key = _key(case["signer_seed"], case["signer_public_key"])
    expect(update["signer"] == case["signer"], "signer differs")
    expect(current.active_keys[case["signer"]] == signer_key, "signer not active in current")
    expect(update["did_document"] == case["rotated_document"], "rotated document differs")
    expect(update["signature"] == case["signature"], "signature differs")
    schema.validate("did-document-update", update)
    digest = _check_canonical(
        _without(update, "signature"), case["canonical_jcs"], case["digest_sha3_256"]
    )
    _verifies(signer_key, digest, case["signature"], "update")
    expect(verify_artifact(update, signer_key) == digest, "verify_artifact digest differs")
    new = diddoc.verify_did_update(case["current_document"], update)
    expect(new.document == case["rotated_document"], "verified document differs")
    expect(new.agent_id == current.agent_id, "agent id changed")
    expect(new.initial_key == current.initial_key, "initial key changed")
    new_key = _key(case["new_key"]["seed"], case["new_key"]["public_key"])
    expect(new.active_keys[case["new_key"]["verification_method"]] == new_key, "new key")
    for retired in case["retired"]:
        expect(retired in new.revoked_keys, f"{retired} not revoked")
        expect(retired not in new.active_keys, f"{retired} still active")
        expect(new.is_revoked(current.active_keys[retired]), f"{retired} key not revoked")
    tampered = update | {"updated_at": "2030-01-01T00:00:00Z"}
    expect_rejected(
        AuthError,
        lambda: diddoc.verify_did_update(case["current_document"], tampered),
        "update with a changed updated_at",
    )


# --- message-signing.json ----------------------------------------------------------------------


def _message_case(case: Case, _: Json) -> None:
    public_key = _key(case["seed"], case["public_key"])
    signed, unsigned = case["signed_message"], case["unsigned_message"]
    expect(signed["sender"]["agent_id"] == case["agent_id"], "sender differs")
    _derives(case["agent_id"], public_key)
    expect(signed["sender"]["signature"] == case["signature"], "signature differs")
    view = signed | {"sender": _without(signed["sender"], "signature")}
    expect(view == unsigned, "signed message minus sender.signature != unsigned_message")
    digest = _check_canonical(unsigned, case["canonical_jcs"], case["digest_sha3_256"])
    expect(envelope.message_digest(signed) == digest, "message_digest differs")
    _verifies(public_key, digest, case["signature"], "message")
    raw = json.dumps(signed, ensure_ascii=False).encode("utf-8")
    verified = envelope.verify_message(
        raw, now=parse_timestamp(signed["timestamp"]), resolve_keys=lambda _: [public_key]
    )
    expect(verified.digest == digest, "verify_message digest differs")
    tampered = signed | {"ttl": signed["ttl"] + 1}
    expect_rejected(
        AuthError,
        lambda: envelope.verify_message_signature(tampered, [public_key]),
        "message with a changed ttl",
    )


# --- http-authorization.json -------------------------------------------------------------------


def _http_case(case: Case, _: Json) -> None:
    public_key = _key(case["seed"], case["public_key"])
    _derives(case["agent_id"], public_key)
    body = case["body"].encode("utf-8")
    expect(sha3_256(body).hex() == case["body_sha3_256"], "body digest differs")
    fields = ("method", "path_and_query", "agent_id", "timestamp", "body_sha3_256")
    expected = "\n".join(["OCP-HTTP-1.0", *(case[f] for f in fields)])
    expect(case["signing_string"] == expected, "signing_string differs from the D3 layout")
    signing_string = auth.http_signing_string(
        method=case["method"],
        path_and_query=case["path_and_query"],
        agent_id=case["agent_id"],
        timestamp=case["timestamp"],
        body=body,
    )
    expect(signing_string == expected.encode("utf-8"), "http_signing_string differs")
    digest = sha3_256(signing_string)
    expect(digest.hex() == case["signing_digest"], "signing digest differs")
    _verifies(public_key, digest, case["signature"], "request")
    header = f"OCP-Ed25519 {case['agent_id']}:{case['timestamp']}:{case['signature']}"
    expect(case["header_name"] == "Authorization", "header name differs")
    expect(case["header"] == header, "header differs")
    parsed = auth.parse_authorization(header)
    expect((parsed.agent_id, parsed.timestamp) == (case["agent_id"], case["timestamp"]), "parse")
    expect(parsed.signature == _sig(case["signature"]), "parsed signature differs")

    def verify(request_body: bytes) -> object:
        return auth.verify_authorization(
            header,
            method=case["method"],
            path_and_query=case["path_and_query"],
            body=request_body,
            public_keys=[public_key],
            now=parse_timestamp(case["timestamp"]),
            replay=auth.ReplayWindow(window=auth.DEFAULT_AUTH_WINDOW),
        )

    expect(verify(body) == parsed, "verify_authorization result differs")
    expect_rejected(AuthError, lambda: verify(body + b" "), "request with a changed body")


# --- ws-auth.json ------------------------------------------------------------------------------


def _ws_case(case: Case, _: Json) -> None:
    public_key = _key(case["seed"], case["public_key"])
    _derives(case["agent_id"], public_key)
    nonce_bytes = bytes.fromhex(case["nonce_bytes"])
    expect(len(nonce_bytes) == 32, "nonce is not 32 bytes")
    expect(case["nonce"] == b64url_encode(nonce_bytes), "nonce encoding differs")
    signed = case["agent_id"] + case["timestamp"] + case["nonce"]
    expect(case["signed_bytes"] == signed, "signed_bytes is not agent_id + timestamp + nonce")
    frame = {
        "frame_type": "auth_handshake",
        "agent_id": case["agent_id"],
        "timestamp": case["timestamp"],
        "nonce": case["nonce"],
        "signature": case["signature"],
    }
    expect(case["frame"] == frame, "frame differs")
    _verifies(public_key, signed.encode("utf-8"), case["signature"], "handshake (not pre-hashed)")
    agent_id = auth.verify_ws_auth_handshake(
        case["frame"],
        public_keys=[public_key],
        now=parse_timestamp(case["timestamp"]),
        replay=auth.ReplayWindow(window=auth.DEFAULT_AUTH_WINDOW),
    )
    expect(agent_id == case["agent_id"], "verify_ws_auth_handshake agent differs")


# --- payload-encryption.json -------------------------------------------------------------------


def _encryption_case(case: Case, _: Json) -> None:
    sender = _key(case["sender_seed"], case["sender_public_key"])
    _key(case["receiver_seed"], case["receiver_public_key"])
    receiver_key = SigningKey(bytes.fromhex(case["receiver_seed"]))
    _derives(case["sender_agent_id"], sender)
    _derives(case["receiver_agent_id"], receiver_key.public_key)
    receiver_x_public = bytes.fromhex(case["receiver_x25519_public"])
    receiver_x_private = bytes.fromhex(case["receiver_x25519_private"])
    expect(receiver_x_public == ed25519_pk_to_x25519(receiver_key.public_key), "receiver X25519")
    expect(receiver_x_private == receiver_key.x25519_private_key(), "receiver X25519 private")
    multibase = case["receiver_key_agreement_multibase"]
    expect(multibase == multibase_x25519(receiver_x_public), "keyAgreement multibase")
    eph_private = bytes.fromhex(case["ephemeral_private"])
    eph_public = bytes.fromhex(case["ephemeral_public"])
    expect(x25519_public_key(eph_private) == eph_public, "ephemeral pair differs")

    shared = bytes.fromhex(case["shared_secret"])
    expect(x25519(eph_private, receiver_x_public) == shared, "sender-side ECDH differs")
    expect(x25519(receiver_x_private, eph_public) == shared, "receiver-side ECDH differs")
    salt = bytes.fromhex(case["hkdf_salt"])
    expect(salt == eph_public + receiver_x_public, "HKDF salt differs")
    expect(case["hkdf_info"] == "OCP-1.0 payload AES-256-GCM", "HKDF info differs")
    aes_key = hkdf_sha256(shared, salt=salt, info=case["hkdf_info"].encode(), length=32)
    expect(aes_key.hex() == case["aes_key"], "AES key differs")

    signed = case["signed_message"]
    ids = [signed["message_id"], signed["sender"]["agent_id"], signed["receiver"]["agent_id"]]
    expected_aad = "\n".join(ids)
    expect(case["aad"] == expected_aad, "AAD differs")
    expect(envelope.message_aad(signed) == expected_aad.encode("utf-8"), "message_aad differs")
    nonce = bytes.fromhex(case["nonce"])
    encryption = {
        "algorithm": "AES-256-GCM",
        "key_exchange": "ECDH-X25519",
        "nonce": b64url_encode(nonce),
        "ephemeral_public_key": b64url_encode(eph_public),
    }
    expect(signed["encryption"] == encryption, "encryption object differs")
    expect(signed["payload"] == case["ciphertext"], "payload is not the ciphertext")
    plaintext = aes256gcm_decrypt(
        aes_key, nonce, b64url_decode(case["ciphertext"]), case["aad"].encode("utf-8")
    )
    expect(plaintext == case["plaintext"].encode("utf-8"), "plaintext differs")
    expect(canonicalize(case["payload"]) == plaintext, "plaintext is not JCS of the payload")
    expect(case["unsigned_message"]["payload"] == case["payload"], "unsigned payload differs")
    expect(envelope.decrypt_payload(signed, receiver_key) == case["payload"], "decrypt_payload")

    unsigned_sender = {"sender": {"agent_id": case["sender_agent_id"]}}
    expect(case["encrypted_message"] == signed | unsigned_sender, "encrypted_message differs")
    digest = _check_canonical(
        case["encrypted_message"], case["canonical_jcs"], case["digest_sha3_256"]
    )
    expect(signed["sender"]["signature"] == case["signature"], "signature differs")
    _verifies(sender, digest, case["signature"], "encrypted message")
    envelope.verify_message(
        json.dumps(signed, ensure_ascii=False).encode("utf-8"),
        now=parse_timestamp(signed["timestamp"]),
        resolve_keys=lambda _: [sender],
    )


# --- artifacts.json ----------------------------------------------------------------------------


def _artifact_rules(case: Case, now: float) -> None:
    """The type's own checks, beyond schema and signature."""
    kind, artifact = case["artifact_type"], case["artifact"]
    if kind == "agent-record":
        expect(case["registration"]["record"] == artifact, "registration record differs")
        record, document = artifacts.verify_registration(case["registration"], now=now)
        expect(record == artifact, "verified record differs")
        expect(document.agent_id == artifact["agent_id"], "document agent differs")
    elif kind == "vouch":
        artifacts.check_vouch(artifact, now=now)
    elif kind == "vouch-revocation":
        vouch = case["revokes"]
        expect(artifact["vouch_digest"] == artifacts.vouch_digest(vouch), "vouch_digest differs")
        digest = sha3_256(canonicalize(_without(vouch, "signature"))).hex()
        expect(artifact["vouch_digest"] == digest, "vouch_digest is not the D2 digest")
        artifacts.check_vouch_revocation(artifact, vouch, now=now)
    elif kind == "bond":
        keys = {s["agent_id"]: [bytes.fromhex(s["public_key"])] for s in case["signers"]}
        digest = artifacts.verify_bond(artifact, keys, now=now).hex()
        expect(digest == case["digest_sha3_256"], "bond digest differs")
    elif kind == "bond-revocation":
        artifacts.check_bond_revocation(artifact, case["revokes"], now=now)
    elif kind == "consensus-vote":
        rationale = case["rationale_text"].encode("utf-8")
        expect(artifact["rationale_hash"] == sha3_256(rationale).hex(), "rationale_hash differs")
        artifacts.check_consensus_vote(artifact, sender=case["signers"][0]["agent_id"])
    elif kind == "interaction-rating":
        artifacts.check_interaction_rating(artifact, now=now)
    elif kind == "recovery-share":
        public_key = bytes.fromhex(case["signers"][0]["public_key"])
        expect(artifact["key_fingerprint"] == key_fingerprint(public_key), "fingerprint differs")
        expect(artifact["key_fingerprint"] == sha3_256(public_key).hex()[:16], "fingerprint")
        artifacts.check_recovery_share(artifact, now=now)
    elif kind == "certification":
        public_key = bytes.fromhex(case["signers"][0]["public_key"])
        expect(artifact["certifier"] == multibase_ed25519(public_key), "certifier differs")
        artifacts.verify_certification(artifact, now=now)
    elif kind == "certification-revocation":
        certification = case["revokes"]
        expect(artifact["certifier"] == certification["certifier"], "certifier differs")
        artifacts.verify_certification_revocation(artifact, certification, now=now)
    else:
        raise VectorMismatch(f"no rules for artifact type {kind!r}")


def _artifact_case(case: Case, data: Json) -> None:
    artifact, field_name = case["artifact"], case["signature_field"]
    schema.validate(case["artifact_type"], artifact)
    digest = _check_canonical(
        _without(artifact, field_name), case["canonical_jcs"], case["digest_sha3_256"]
    )
    expect(artifact_digest(artifact, field=field_name) == digest, "artifact_digest differs")
    signatures = artifact[field_name] if field_name == "signatures" else None
    if signatures is not None:
        expect(set(signatures) == {s["agent_id"] for s in case["signers"]}, "signers differ")
    for signer in case["signers"]:
        public_key = _key(signer["seed"], signer["public_key"])
        _derives(signer["agent_id"], public_key)
        if signatures is None:
            _verifies(public_key, digest, artifact["signature"], "artifact")
            expect(verify_artifact(artifact, public_key) == digest, "verify_artifact differs")
        else:
            _verifies(public_key, digest, signatures[signer["agent_id"]], signer["agent_id"])
    _artifact_rules(case, parse_timestamp(data["reference_time"]))


# --- networking.json ---------------------------------------------------------------------------


def _net_rules(case: Case, artifact: Json, data: Json) -> None:
    """The artifact type's full verify function, at the artifact's own time."""
    kind = case["artifact_type"]
    if kind == "node-advertisement.v1":
        now = parse_timestamp(artifact["advertised-at"])
        netartifacts.verify_node_advertisement(artifact, now=now)
    elif kind == "peer-handshake.v1":
        netartifacts.verify_handshake(artifact, now=parse_timestamp(artifact["ts"]))
    elif kind == "capability-advertisement.v1":
        caps = netartifacts.verify_capability_advertisement(artifact)
        expect(netartifacts.CORE_MESSAGING in caps, "core/messaging not advertised")
    elif kind == "signal-marker-envelope.v1":
        marker = netartifacts.verify_signal_marker_envelope(
            artifact,
            now=parse_timestamp(artifact["sent-at"]),
            session_peer=artifact["sender/node-id"],
        )
        expect(marker == _named(data, "signal-marker")["artifact"], "enveloped marker differs")
    else:
        expect(kind == "signal-marker.v1", f"unknown artifact type {kind!r}")


def _net_case(case: Case, data: Json) -> None:
    if case["name"] == "node-identity":
        _node_identity(case)
        return
    public_key = _key(case["signer_seed"], case["signer_public_key"])
    artifact, kind = case["artifact"], case["artifact_type"]
    unsigned = frozenset(case["unsigned_fields"])
    parse_id = parse_participant_id if case["signer_field"] == "participant/id" else parse_node_id
    expect(parse_id(artifact[case["signer_field"]]) == public_key, "signer id differs from key")
    if "key/public" in artifact:
        expect(artifact["key/public"] == b64url_encode(public_key), "key/public differs")
    schema.validate(kind, artifact)

    body = _without(artifact, "signature", *unsigned)
    message = bytes.fromhex(case["signing_input"])
    expect(signing_input(kind, body) == message, "signing input differs")
    prefix = kind.encode("ascii") + b"\x00"
    expect(message.startswith(prefix), "signing input lacks the type || 0x00 prefix")
    expect(encode_deterministic(body) == message[len(prefix) :], "deterministic CBOR differs")
    expect(decode_deterministic(message[len(prefix) :]) == body, "CBOR does not decode back")
    expect(artifact["signature"] == case["signature"], "signature differs")
    _verifies(public_key, message, case["signature"], "NET artifact (not pre-hashed)")
    verify_net_artifact(kind, artifact, public_key, unsigned_fields=unsigned)
    _net_rules(case, artifact, data)
    for framing in unsigned:
        changed_framing = artifact | {framing: "other"}
        verify_net_artifact(kind, changed_framing, public_key, unsigned_fields=unsigned)
    signer = artifact[case["signer_field"]]
    changed = artifact | {case["signer_field"]: signer[:-1] + "x"}
    expect_rejected(
        NetError,
        lambda: verify_net_artifact(kind, changed, public_key, unsigned_fields=unsigned),
        "artifact with a changed signed field",
    )


def _node_identity(case: Case) -> None:
    public_key = _key(case["seed"], case["public_key"])
    record = case["artifact"]
    expect(netartifacts.check_node_identity(record) == public_key, "node identity key differs")
    expect(record["node/id"] == format_node_id(public_key), "node/id differs")
    expect(record["participant/id"] == format_participant_id(public_key), "participant/id")
    expect(record["key/public"] == b64url_encode(public_key), "key/public differs")
    expect(record["key/alg"] == "ed25519", "key/alg differs")
    _derives(case["service_agent_id"], public_key)


def _session_case(case: Case, data: Json) -> None:
    hello, ack = case["hello"], case["ack"]
    expect(hello == _named(data, "hello")["artifact"], "hello differs from the hello case")
    expect(ack == _named(data, "ack")["artifact"], "ack differs from the ack case")
    netartifacts.verify_ack_binding(ack, hello)
    i_pub = _key(case["initiator_seed"], case["initiator_public_key"])
    r_pub = _key(case["responder_seed"], case["responder_public_key"])
    i_key = SigningKey(bytes.fromhex(case["initiator_seed"]))
    r_key = SigningKey(bytes.fromhex(case["responder_seed"]))
    expect(parse_node_id(hello["sender/node-id"]) == i_pub, "hello sender differs")
    expect(parse_node_id(ack["sender/node-id"]) == r_pub, "ack sender differs")

    for role, key in (("initiator", i_key), ("responder", r_key)):
        private_ok = case[f"{role}_static_x25519_private"] == key.x25519_private_key().hex()
        public = ed25519_pk_to_x25519(key.public_key).hex()
        expect(private_ok, f"{role} static X25519 private differs")
        expect(case[f"{role}_static_x25519_public"] == public, f"{role} static X25519 public")
    e_i = bytes.fromhex(case["initiator_ephemeral_private"])
    e_r = bytes.fromhex(case["responder_ephemeral_private"])
    e_i_pub = bytes.fromhex(case["initiator_ephemeral_public"])
    e_r_pub = bytes.fromhex(case["responder_ephemeral_public"])
    expect(x25519_public_key(e_i) == e_i_pub, "initiator ephemeral pair differs")
    expect(hello["session/pub"] == b64url_encode(e_i_pub), "hello session/pub differs")
    expect(x25519_public_key(e_r) == e_r_pub, "responder ephemeral pair differs")
    expect(ack["session/pub"] == b64url_encode(e_r_pub), "ack session/pub differs")

    dh_ee = bytes.fromhex(case["dh_ephemeral"])
    dh_ss = bytes.fromhex(case["dh_static"])
    expect(x25519(e_i, e_r_pub) == dh_ee == x25519(e_r, e_i_pub), "ephemeral DH differs")
    i_static = bytes.fromhex(case["initiator_static_x25519_private"])
    r_static = bytes.fromhex(case["responder_static_x25519_private"])
    expect(x25519(i_static, ed25519_pk_to_x25519(r_pub)) == dh_ss, "initiator static DH")
    expect(x25519(r_static, ed25519_pk_to_x25519(i_pub)) == dh_ss, "responder static DH")
    expect(case["hkdf_ikm"] == (dh_ee + dh_ss).hex(), "HKDF ikm differs")

    framing = case["transcript_unsigned_fields"]
    expect(framing == ["transport/profile"], "transcript framing fields differ")
    transcript = encode_deterministic(_without(hello, *framing)) + encode_deterministic(
        _without(ack, *framing)
    )
    expect(transcript.hex() == case["transcript"], "transcript differs")
    salt = sha3_256(transcript)
    expect(salt.hex() == case["transcript_salt"], "transcript salt differs")
    expect(case["hkdf_info"] == "ocp-peer-session.v1", "HKDF info differs")
    okm = hkdf_sha256(dh_ee + dh_ss, salt=salt, info=case["hkdf_info"].encode(), length=64)
    expect(okm.hex() == case["hkdf_okm"], "HKDF output differs")
    expect(case["initiator_send_key"] == okm[:32].hex(), "initiator send key differs")
    expect(case["initiator_receive_key"] == okm[32:].hex(), "initiator receive key differs")

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
    send = case["initiator_send_key"]
    receive = case["initiator_receive_key"]
    expect(initiator.send_key.hex() == send == responder.receive_key.hex(), "send keys differ")
    expect(initiator.receive_key.hex() == receive == responder.send_key.hex(), "receive keys")

    expect(case["frame_aad"] == "ocp-peer-frame.v1", "frame associated data differs")
    keys = {"initiator": bytes.fromhex(send), "responder": bytes.fromhex(receive)}
    counters = {"initiator": 0, "responder": 0}
    for frame in case["frames"]:
        sender = frame["from"]
        nonce = bytes(4) + counters[sender].to_bytes(8, "big")
        expect(frame["counter"] == counters[sender], "frame counters must start at 0 and step 1")
        expect(frame["nonce"] == nonce.hex(), "frame nonce differs")
        sealed = chacha20poly1305_encrypt(
            keys[sender], nonce, bytes.fromhex(frame["plaintext"]), case["frame_aad"].encode()
        )
        expect(sealed.hex() == frame["frame"], "sealed frame differs")
        counters[sender] += 1


def _is_session(case: Case) -> bool:
    return bool(case["name"] == "session-keys")


def _not_session(case: Case) -> bool:
    return not _is_session(case)


# --- shamir.json -------------------------------------------------------------------------------


def _clmul_mod(a: int, b: int, polynomial: int) -> int:
    """Schoolbook GF(2^8) product, bit by bit: a check of the field independent of ``shamir``."""
    product = 0
    for bit in range(8):
        if b >> bit & 1:
            product ^= a << bit
    for bit in range(14, 7, -1):
        if product >> bit & 1:
            product ^= polynomial << (bit - 8)
    return product


def _poly_at(secret: bytes, coefficients: list[bytes], x: int) -> bytes:
    """f(x) = secret + sum of coefficient_k * x^k, byte by byte, with the schoolbook field."""
    y, power = bytearray(secret), 1
    for row in coefficients:
        power = _clmul_mod(power, x, shamir.POLYNOMIAL)
        for i, coefficient in enumerate(row):
            y[i] ^= _clmul_mod(coefficient, power, shamir.POLYNOMIAL)
    return bytes(y)


def _gf_inverse(a: int) -> int:
    """a^254, the inverse of a non-zero a in GF(2^8), by schoolbook products."""
    result, base, exponent = 1, a, 254
    while exponent:
        if exponent & 1:
            result = _clmul_mod(result, base, shamir.POLYNOMIAL)
        base = _clmul_mod(base, base, shamir.POLYNOMIAL)
        exponent >>= 1
    return result


def _interpolate(points: list[tuple[int, bytes]], x: int) -> bytes:
    """The Lagrange polynomial through ``points`` (``(x_j, y_j)``) evaluated at ``x``."""
    out = bytearray(len(points[0][1]))
    for j, (x_j, y_j) in enumerate(points):
        weight = 1
        for m, (x_m, _) in enumerate(points):
            if m != j:  # (x - x_m) / (x_j - x_m); subtraction is XOR
                term = _clmul_mod(x ^ x_m, _gf_inverse(x_j ^ x_m), shamir.POLYNOMIAL)
                weight = _clmul_mod(weight, term, shamir.POLYNOMIAL)
        for i, byte in enumerate(y_j):
            out[i] ^= _clmul_mod(byte, weight, shamir.POLYNOMIAL)
    return bytes(out)


def _shamir_field(case: Case) -> None:
    polynomial = int(case["polynomial"], 16)
    expect(polynomial == shamir.POLYNOMIAL == 0x11B, "polynomial is not x^8+x^4+x^3+x+1")
    for entry in case["products"]:
        a, b, product = (int(entry[k], 16) for k in ("a", "b", "product"))
        expect(_clmul_mod(a, b, polynomial) == product, f"{a:02x} * {b:02x} differs")
        expect(int(shamir.gf_mul(a, b)) == product, f"gf_mul({a:02x}, {b:02x}) differs")
    table = bytes.fromhex(case["inverse_table"])
    expect(len(table) == 256 and table[0] == 0, "inverse_table is 256 bytes, 0 for 0")
    for value in range(1, 256):
        expect(_clmul_mod(value, table[value], polynomial) == 1, f"inverse of {value:02x}")
    expect(shamir.gf_inv(bytes(range(256))).tobytes() == table, "gf_inv differs from the table")


def _shamir_split(case: Case) -> None:
    secret = bytes.fromhex(case["secret"])
    threshold, total = case["threshold"], case["total_shares"]
    length = len(secret)
    randomness = bytes.fromhex(case["randomness"])
    expect(len(randomness) == (threshold - 1) * length, "randomness is (t - 1) * len(secret)")
    coefficients = [bytes.fromhex(c) for c in case["coefficients"]]
    expect(b"".join(coefficients) == randomness, "coefficients are not the randomness in order")
    expect(all(len(c) == length for c in coefficients), "a coefficient row per power of x")
    public_key = _key(case["secret"], case["public_key"])
    _derives(case["agent_id"], public_key)
    expect(key_fingerprint(public_key) == case["key_fingerprint"], "key_fingerprint differs")

    shares = [shamir.decode_share(s["share_index"], s["share_data"]) for s in case["shares"]]
    expect([s.index for s in shares] == list(range(1, total + 1)), "share_index is 1..n")
    for share in shares:
        expect(
            _poly_at(secret, coefficients, share.index) == share.data,
            f"share {share.index} is not f({share.index})",
        )
    wire = [
        {"share_index": s.index, "share_data": shamir.encode_share_data(s)}
        for s in shamir.split(secret, threshold, total, random=lambda _: randomness)
    ]
    expect(wire == case["shares"], "split with this randomness gives other shares")

    by_index = {share.index: share for share in shares}
    for subset in case["subsets"]:
        indices = subset["share_indices"]
        combined = shamir.combine([by_index[i] for i in indices])
        expect(combined.hex() == subset["combined"], f"combine({indices}) differs")
        expect((combined == secret) == subset["equals_secret"], f"equals_secret of {indices}")
        expect(len(indices) < threshold or combined == secret, f"{indices} does not recover")
    sizes = {len(subset["share_indices"]) for subset in case["subsets"]}
    expect(threshold in sizes, "no subset of exactly the threshold")


def _shamir_case(case: Case, _: Json) -> None:
    kind = case["kind"]
    if kind == "field":
        _shamir_field(case)
    elif kind == "split":
        _shamir_split(case)
    elif kind == "invalid-split":
        secret = bytes.fromhex(case["secret"])
        expect_rejected(
            MalformedError,
            lambda: shamir.split(secret, case["threshold"], case["total_shares"]),
            f"t = {case['threshold']}, n = {case['total_shares']}, {len(secret)}-byte secret",
        )
    elif kind == "invalid-combine":
        shares = [
            shamir.Share(s["share_index"], b64url_decode(s["share_data"], field="share_data"))
            for s in case["shares"]
        ]
        expect_rejected(MalformedError, lambda: shamir.combine(shares), "the share set")
    else:
        raise VectorMismatch(f"unknown kind {kind!r}")


# --- recovery.json -----------------------------------------------------------------------------

RECOVERY_INFO: Final = "OCP-1.0 recovery-share AES-256-GCM"
SHARE_RECORD_ENCRYPTION: Final = {"algorithm": "AES-256-GCM", "key_exchange": "ECDH-X25519"}


def _of_kind(data: Json, kind: str) -> Case:
    """The one case of ``kind`` in the file (the cases the others build on)."""
    found: list[Case] = [c for c in data["cases"] if c.get("kind") == kind]
    expect(len(found) == 1, f"the file needs exactly one {kind!r} case")
    return found[0]


def _x25519_keys(party: Json) -> tuple[SigningKey, bytes, bytes]:
    """A custodian's signing key and X25519 pair, each checked against the published values."""
    public = _key(party["seed"], party["public_key"])
    _derives(party["agent_id"], public)
    key = SigningKey(bytes.fromhex(party["seed"]))
    x_private = bytes.fromhex(party["x25519_private"])
    x_public = bytes.fromhex(party["x25519_public"])
    expect(x_public == ed25519_pk_to_x25519(public), "X25519 key not derived from the Ed25519 key")
    expect(x_private == key.x25519_private_key(), "X25519 private key differs")
    expect(x25519_public_key(x_private) == x_public, "X25519 pair differs")
    return key, x_private, x_public


def _ephemeral(private_hex: str, public_hex: str) -> tuple[bytes, bytes]:
    private, public = bytes.fromhex(private_hex), bytes.fromhex(public_hex)
    expect(x25519_public_key(private) == public, "ephemeral X25519 pair differs")
    return private, public


def _ecdh(
    case: Case, private: bytes, peer_public: bytes, peer_private: bytes, public: bytes
) -> bytes:
    """``shared_secret``, recomputed from both sides."""
    shared = bytes.fromhex(case["shared_secret"])
    expect(x25519(private, peer_public) == shared, "ECDH differs (one side)")
    expect(x25519(peer_private, public) == shared, "ECDH differs (the other side)")
    return shared


def _seal_key(case: Case, shared: bytes, ephemeral_public: bytes, static_public: bytes) -> bytes:
    """HKDF-SHA256(shared, salt = ephemeral || static, info) -> ``aes_key``."""
    salt = ephemeral_public + static_public
    expect(case["hkdf_salt"] == salt.hex(), "HKDF salt is not ephemeral || custodian public key")
    expect(case["hkdf_info"] == RECOVERY_INFO, "HKDF info differs")
    key = hkdf_sha256(shared, salt=salt, info=RECOVERY_INFO.encode("ascii"), length=32)
    expect(key.hex() == case["aes_key"], "AES key differs")
    return key


def _share_custodians(entries: list[Json]) -> list[recovery.Custodian]:
    return [
        recovery.Custodian(
            e["custodian"]["agent_id"], bytes.fromhex(e["custodian"]["x25519_public"])
        )
        for e in entries
    ]


def _deposited(data: Json, share_index: int) -> Json:
    shares: list[Json] = _of_kind(data, "deposit")["shares"]
    entries = [e for e in shares if e["share_index"] == share_index]
    expect(len(entries) == 1, f"no deposited share {share_index}")
    return entries[0]


def _recovery_deposit(case: Case, _: Json) -> None:
    agent = _key(case["seed"], case["public_key"])
    seed = bytes.fromhex(case["seed"])
    agent_id, fingerprint = case["agent_id"], case["key_fingerprint"]
    _derives(agent_id, agent)
    expect(fingerprint == sha3_256(agent).hex()[:16] == key_fingerprint(agent), "fingerprint")
    recovery_public = _key(case["recovery_seed"], case["recovery_public_key"])
    threshold, total, created_at = case["threshold"], case["total_shares"], case["created_at"]
    randomness = bytes.fromhex(case["randomness"])
    coefficients = [bytes.fromhex(c) for c in case["coefficients"]]
    expect(len(coefficients) == threshold - 1, "one coefficient row per power x^1..x^(t-1)")
    expect(b"".join(coefficients) == randomness, "coefficients are not the randomness in order")
    entries = case["shares"]
    expect([e["share_index"] for e in entries] == list(range(1, total + 1)), "share_index 1..n")
    draws = [randomness]
    for entry in entries:
        index, custodian_id = entry["share_index"], entry["custodian"]["agent_id"]
        plaintext = bytes.fromhex(entry["plaintext"])
        expect(_poly_at(seed, coefficients, index) == plaintext, f"share {index} is not f({index})")
        custodian, x_private, x_public = _x25519_keys(entry["custodian"])
        eph_private, eph_public = _ephemeral(entry["ephemeral_private"], entry["ephemeral_public"])
        shared = _ecdh(entry, eph_private, x_public, x_private, eph_public)
        aes_key = _seal_key(entry, shared, eph_public, x_public)
        share_id = f"share-{agent_id.rsplit('-', 1)[1]}-{index}"
        expect(entry["share_id"] == share_id, "share_id is not share-<agent id hex>-<index>")
        aad = f"{share_id}\n{agent_id}\n{custodian_id}"
        expect(entry["aad"] == aad, "AAD is not share_id \\n agent_id \\n custodian id")
        expect(recovery.deposit_aad(share_id, agent_id, custodian_id) == aad.encode(), "aad")
        nonce = bytes.fromhex(entry["nonce"])
        expect(len(nonce) == 12, "the nonce is 12 bytes")
        sealed = aes256gcm_encrypt(aes_key, nonce, plaintext, aad.encode("utf-8"))
        expect(entry["ciphertext"] == b64url_encode(sealed), "ciphertext differs")
        opened = aes256gcm_decrypt(aes_key, nonce, b64url_decode(entry["ciphertext"]), aad.encode())
        expect(opened == plaintext, "ciphertext does not open to the plaintext share")

        record = entry["record"]
        unsigned = {
            "share_id": share_id,
            "agent_id": agent_id,
            "scheme": shamir.SCHEME,
            "threshold": threshold,
            "total_shares": total,
            "share_index": index,
            "share_data": entry["ciphertext"],
            "key_fingerprint": fingerprint,
            "created_at": created_at,
            "encryption": SHARE_RECORD_ENCRYPTION
            | {"nonce": b64url_encode(nonce), "ephemeral_public_key": b64url_encode(eph_public)},
        }
        expect(_without(record, "signature") == unsigned, "record fields differ")
        digest = _check_canonical(unsigned, entry["canonical_jcs"], entry["digest_sha3_256"])
        expect(record["signature"] == entry["signature"], "signature differs")
        _verifies(agent, digest, entry["signature"], "share record")
        recovery.verify_share_record(record, agent, now=parse_timestamp(created_at))
        share = recovery.open_share_record(record, custodian, custodian_id)
        expect(share == shamir.Share(index, plaintext), "open_share_record differs")
        deposit = entry["deposit_payload"]
        schema.validate("payload.share_deposit", deposit)
        pinned = b64url_encode(recovery_public)
        expect(deposit == {"share": record, "recovery_public_key": pinned}, "deposit payload")
        draws += [eph_private, nonce]
    points = [(e["share_index"], bytes.fromhex(e["plaintext"])) for e in entries[:threshold]]
    expect(_interpolate(points, 0) == seed, "the first t shares do not interpolate to the seed")

    expect(case["random_draws"] == [d.hex() for d in draws], "random_draws out of order")
    pending = list(draws)

    def replay(size: int) -> bytes:
        expect(bool(pending) and len(pending[0]) == size, "make_share_records draws otherwise")
        return pending.pop(0)

    made = recovery.make_share_records(
        SigningKey(seed),
        agent_id=agent_id,
        custodians=_share_custodians(entries),
        threshold=threshold,
        created_at=created_at,
        random=replay,
    )
    expect(not pending, "make_share_records left randomness unused")
    expect(made == [e["record"] for e in entries], "make_share_records gives other records")


def _recovery_request(case: Case, data: Json) -> None:
    deposit = _of_kind(data, "deposit")
    agent_id, fingerprint = case["agent_id"], case["key_fingerprint"]
    expect((agent_id, fingerprint) == (deposit["agent_id"], deposit["key_fingerprint"]), "agent")
    recovery_public = _key(case["recovery_seed"], case["recovery_public_key"])
    expect(case["recovery_public_key"] == deposit["recovery_public_key"], "not the pinned key")
    expect(case["recovery_key_id"].startswith(agent_id + "#recovery-key-"), "recovery_key_id")
    _, eph_public = _ephemeral(case["ephemeral_private"], case["ephemeral_public"])
    payload = case["payload"]
    schema.validate("payload.recovery_request", payload)
    expected_payload = {
        "agent_id": agent_id,
        "key_fingerprint": fingerprint,
        "ephemeral_public_key": b64url_encode(eph_public),
        "proof": {
            "type": "secondary_key_signature",
            "secondary_key_id": case["recovery_key_id"],
            "signature": case["signature"],
        },
    }
    expect(payload == expected_payload, "payload differs")
    signed = agent_id + fingerprint + payload["ephemeral_public_key"]
    expect(case["proof_bytes"] == signed, "proof_bytes is not agent_id + fingerprint + ephemeral")
    recovery_key = SigningKey(bytes.fromhex(case["recovery_seed"]))
    expect(recovery_key.sign(signed.encode()) == _sig(case["signature"]), "signature differs")
    _verifies(recovery_public, signed.encode("utf-8"), case["signature"], "proof (not pre-hashed)")
    recovery.verify_proof(payload, recovery_public)


def _recovery_responses(case: Case, data: Json) -> None:
    request = _of_kind(data, "request")
    agent_id, fingerprint = case["agent_id"], case["key_fingerprint"]
    expect((agent_id, fingerprint) == (request["agent_id"], request["key_fingerprint"]), "agent")
    expect(case["ephemeral_public"] == request["ephemeral_public"], "not the request's key")
    ephemeral = X25519KeyPair(bytes.fromhex(request["ephemeral_private"]))
    expect(ephemeral.public_key.hex() == case["ephemeral_public"], "ephemeral pair differs")
    deposit = _of_kind(data, "deposit")
    indices = [r["share_index"] for r in case["responses"]]
    expect(indices == [e["share_index"] for e in deposit["shares"]], "one response per share")
    for entry in case["responses"]:
        index, custodian_id = entry["share_index"], entry["custodian"]["agent_id"]
        source = _deposited(data, index)
        expect(entry["custodian"] == source["custodian"], "not the custodian holding the share")
        custodian, x_private, x_public = _x25519_keys(entry["custodian"])
        plaintext = bytes.fromhex(entry["plaintext"])
        held = recovery.open_share_record(source["record"], custodian, custodian_id)
        expect(held == shamir.Share(index, plaintext), "not the share the custodian holds")
        shared = _ecdh(entry, x_private, ephemeral.public_key, ephemeral.private_key, x_public)
        aes_key = _seal_key(entry, shared, ephemeral.public_key, x_public)
        aad = f"{agent_id}\n{fingerprint}\n{index}\n{custodian_id}"
        expect(entry["aad"] == aad, "AAD is not agent_id \\n fingerprint \\n index \\n custodian")
        nonce = bytes.fromhex(entry["nonce"])
        sealed = aes256gcm_encrypt(aes_key, nonce, plaintext, aad.encode("utf-8"))
        expect(entry["encrypted_share"] == b64url_encode(sealed), "encrypted_share differs")
        payload = entry["payload"]
        schema.validate("payload.recovery_share_response", payload)
        expected_payload = {
            "agent_id": agent_id,
            "share_index": index,
            "encrypted_share": entry["encrypted_share"],
            "nonce": b64url_encode(nonce),
        }
        expect(payload == expected_payload, "response payload differs")
        opened = aes256gcm_decrypt(
            aes_key, nonce, b64url_decode(payload["encrypted_share"]), aad.encode()
        )
        expect(opened == plaintext, "the response does not open to the share")
        wire = {"share_index": index, "share_data": b64url_encode(opened)}
        expect(entry["opened_share"] == wire, "opened_share differs")
        resealed = recovery.seal_share_response(
            held,
            agent_id=agent_id,
            fingerprint=fingerprint,
            custodian_key=custodian,
            custodian_id=custodian_id,
            ephemeral_public_key=ephemeral.public_key,
            nonce=nonce,
        )
        expect(resealed == payload, "seal_share_response differs")
        back = recovery.open_share_response(
            payload,
            ephemeral=ephemeral,
            fingerprint=fingerprint,
            custodian=recovery.Custodian(custodian_id, x_public),
        )
        expect(back == held, "open_share_response differs")


def _recovery_rebuild(case: Case, data: Json) -> None:
    responses = _of_kind(data, "responses")
    fingerprint, threshold = case["key_fingerprint"], case["threshold"]
    expect(fingerprint == responses["key_fingerprint"], "another fingerprint than requested")
    expect(threshold == _of_kind(data, "deposit")["threshold"], "another threshold than dealt")
    returned = {r["share_index"]: r["opened_share"]["share_data"] for r in responses["responses"]}
    tampered = case.get("tampered")
    if tampered is not None:
        altered = tampered["share_index"]
        expect(tampered["original_share_data"] == returned[altered], "original is not returned")
        expect(tampered["share_data"] != tampered["original_share_data"], "share not altered")
    for share in case["shares"]:
        index = share["share_index"]
        if tampered is not None and index == tampered["share_index"]:
            expect(share["share_data"] == tampered["share_data"], "not the tampered share")
        else:
            expect(share["share_data"] == returned[index], f"share {index} was not returned")
    shares = [shamir.decode_share(s["share_index"], s["share_data"]) for s in case["shares"]]
    points = [(s.index, s.data) for s in shares]
    chosen = list(itertools.combinations(points, threshold))
    listed = [subset["share_indices"] for subset in case["subsets"]]
    expect(listed == [[x for x, _ in c] for c in chosen], "subsets are not every t-subset")
    matching = []
    for subset, points_of in zip(case["subsets"], chosen, strict=True):
        combined = _interpolate(list(points_of), 0)
        expect(subset["combined"] == combined.hex(), f"combined {subset['share_indices']}")
        derived = sha3_256(SigningKey(combined).public_key).hex()[:16]
        expect(subset["key_fingerprint"] == derived, "fingerprint of the combined seed differs")
        expect(subset["matches"] == (derived == fingerprint), "matches differs")
        if derived == fingerprint:
            matching.append(list(points_of))

    if case["kind"] == "invalid-rebuild":
        expect(not matching, "a subset rebuilds the key")
        try:
            recovery.recover_key(shares, threshold=threshold, fingerprint=fingerprint)
        except recovery.RecoveryFailed as exc:
            expect(exc.details["reason"] == case["reason"], "recover_key fails otherwise")
            return
        raise VectorMismatch("recover_key accepted the shares")

    expect(bool(matching), "no subset rebuilds the key with the fingerprint")
    seed = _interpolate(matching[0], 0)
    expect(case["seed"] == seed.hex(), "seed differs")
    public = _key(case["seed"], case["public_key"])
    _derives(case["agent_id"], public)
    expect(key_fingerprint(public) == fingerprint, "the rebuilt key has another fingerprint")
    # A share agrees when it lies on the polynomial through a matching subset.
    agreeing = [x for x, y in points if _interpolate(matching[0], x) == y]
    disagreeing = [x for x, _ in points if x not in agreeing]
    expect(case["agreeing"] == sorted(agreeing), "agreeing differs")
    expect(case["disagreeing"] == sorted(disagreeing), "disagreeing differs")
    if tampered is not None:
        expect(disagreeing == [tampered["share_index"]], "the tampered share is not named")
    rebuilt = recovery.recover_key(shares, threshold=threshold, fingerprint=fingerprint)
    expect(rebuilt.key.seed() == seed, "recover_key rebuilds another seed")
    expect(list(rebuilt.agreeing) == case["agreeing"], "recover_key: agreeing differs")
    expect(list(rebuilt.disagreeing) == case["disagreeing"], "recover_key: disagreeing differs")


def _recovery_wrong_custodian(case: Case, data: Json) -> None:
    source = _deposited(data, case["share_index"])
    record = case["record"]
    expect(record == source["record"], "not the deposited record")
    custodian_ids = {e["custodian"]["agent_id"] for e in _of_kind(data, "deposit")["shares"]}
    expect(case["aad_custodian_id"] in custodian_ids, "the AAD names no custodian")
    opener, x_private, x_public = _x25519_keys(case["opener"])
    encryption = record["encryption"]
    eph_public = b64url_decode(encryption["ephemeral_public_key"], length=32)
    shared = bytes.fromhex(case["shared_secret"])
    expect(x25519(x_private, eph_public) == shared, "the opener's ECDH differs")
    aes_key = _seal_key(case, shared, eph_public, x_public)
    aad = f"{record['share_id']}\n{record['agent_id']}\n{case['aad_custodian_id']}"
    expect(case["aad"] == aad, "AAD is not share_id \\n agent_id \\n custodian id")
    expect((aes_key.hex(), aad) != (source["aes_key"], source["aad"]), "the record's own custodian")
    nonce = b64url_decode(encryption["nonce"], length=12)
    sealed = b64url_decode(record["share_data"], length=48)
    expect_rejected(
        DecryptionFailed,
        lambda: aes256gcm_decrypt(aes_key, nonce, sealed, aad.encode("utf-8")),
        "the record under another custodian's key or id",
    )
    expect_rejected(
        AuthError,
        lambda: recovery.open_share_record(record, opener, case["aad_custodian_id"]),
        "open_share_record for another custodian",
    )


def _recovery_wrong_proof(case: Case, data: Json) -> None:
    request = _of_kind(data, "request")
    expect(case["pinned_recovery_public_key"] == request["recovery_public_key"], "pinned key")
    pinned = bytes.fromhex(case["pinned_recovery_public_key"])
    signer = _key(case["signer_seed"], case["signer_public_key"])
    expect(signer != pinned, "the signer is the pinned recovery key")
    payload = case["payload"]
    schema.validate("payload.recovery_request", payload)
    expect(_without(payload, "proof") == _without(request["payload"], "proof"), "another request")
    expect(payload["proof"]["signature"] == case["signature"], "signature differs")
    signed = payload["agent_id"] + payload["key_fingerprint"] + payload["ephemeral_public_key"]
    expect(case["proof_bytes"] == signed, "proof_bytes is not agent_id + fingerprint + ephemeral")
    _verifies(signer, signed.encode("utf-8"), case["signature"], "proof by its signer")
    wrong = ed25519_verify(pinned, signed.encode("utf-8"), _sig(case["signature"]))
    expect(not wrong, "the proof verifies under the pinned recovery key")
    expect_rejected(
        AuthError, lambda: recovery.verify_proof(payload, pinned), "a proof by another key"
    )


def _recovery_response_other_agent(case: Case, data: Json) -> None:
    request = _of_kind(data, "request")
    index = case["share_index"]
    source = _deposited(data, index)
    custodian_id = case["custodian"]["agent_id"]
    expect(case["custodian"] == source["custodian"], "not the custodian holding the share")
    expect(case["plaintext"] == source["plaintext"], "not the deposited share")
    _, x_private, x_public = _x25519_keys(case["custodian"])
    eph_private, eph_public = _ephemeral(case["ephemeral_private"], case["ephemeral_public"])
    expect(case["ephemeral_public"] == request["ephemeral_public"], "not the request's key")
    shared = _ecdh(case, x_private, eph_public, eph_private, x_public)
    aes_key = _seal_key(case, shared, eph_public, x_public)
    nonce = bytes.fromhex(case["nonce"])
    plaintext = bytes.fromhex(case["plaintext"])
    sealed = aes256gcm_encrypt(aes_key, nonce, plaintext, case["sealed_aad"].encode("utf-8"))
    expect(case["encrypted_share"] == b64url_encode(sealed), "encrypted_share differs")
    payload = case["payload"]
    schema.validate("payload.recovery_share_response", payload)
    expected_payload = {
        "agent_id": request["agent_id"],
        "share_index": index,
        "encrypted_share": case["encrypted_share"],
        "nonce": b64url_encode(nonce),
    }
    expect(payload == expected_payload, "response payload differs")
    fields = [payload["agent_id"], request["key_fingerprint"], str(index), custodian_id]
    expect(case["expected_aad"] == "\n".join(fields), "expected_aad differs")
    other, *rest = case["sealed_aad"].split("\n")
    expect(rest == fields[1:], "the sealed AAD differs in more than the agent")
    expect(other != payload["agent_id"], "the sealed AAD names the requesting agent")
    parse_agent_id(other)
    expect_rejected(
        DecryptionFailed,
        lambda: aes256gcm_decrypt(aes_key, nonce, sealed, case["expected_aad"].encode("utf-8")),
        "the response under the requester's AAD",
    )
    expect_rejected(
        AuthError,
        lambda: recovery.open_share_response(
            payload,
            ephemeral=X25519KeyPair(eph_private),
            fingerprint=request["key_fingerprint"],
            custodian=recovery.Custodian(custodian_id, x_public),
        ),
        "open_share_response of a response sealed for another agent",
    )


_RECOVERY_CHECKS: Final[dict[str, Callable[[Case, Json], None]]] = {
    "deposit": _recovery_deposit,
    "request": _recovery_request,
    "responses": _recovery_responses,
    "rebuild": _recovery_rebuild,
    "invalid-rebuild": _recovery_rebuild,
    "invalid-open-deposit": _recovery_wrong_custodian,
    "invalid-proof": _recovery_wrong_proof,
    "invalid-open-response": _recovery_response_other_agent,
}


def _recovery_case(case: Case, data: Json) -> None:
    check = _RECOVERY_CHECKS.get(case["kind"])
    if check is None:
        raise VectorMismatch(f"unknown kind {case['kind']!r}")
    check(case, data)


#: Each vector file's case checks, with the cases each one covers.
CASE_CHECKS: Final[
    dict[str, tuple[tuple[Callable[[Case, Json], None], Callable[[Case], bool]], ...]]
] = {
    "did-ocp.json": ((_did_ocp_case, _any),),
    "did-document.json": ((_did_document_case, _any),),
    "message-signing.json": ((_message_case, _any),),
    "http-authorization.json": ((_http_case, _any),),
    "ws-auth.json": ((_ws_case, _any),),
    "payload-encryption.json": ((_encryption_case, _any),),
    "artifacts.json": ((_artifact_case, _any),),
    "did-key.json": ((_did_key_case, _any),),
    "networking.json": ((_net_case, _not_session), (_session_case, _is_session)),
    "shamir.json": ((_shamir_case, _any),),
    "recovery.json": ((_recovery_case, _any),),
}


def check_case(name: str, case: Case, data: Json) -> None:
    """Verify one case of vector file ``name`` (its whole JSON is ``data``).

    Raises :class:`VectorMismatch` (or the core's own error) on a mismatch.
    """
    checks = [check for check, select in CASE_CHECKS[name] if select(case)]
    if not checks:
        raise VectorMismatch(f"{name}: no check covers case {case.get('name')!r}")
    for check in checks:
        check(case, data)


def _runner(
    name: str, check: Callable[[Case, Json], None], select: Callable[[Case], bool] = _any
) -> Callable[[Path], VectorOutcome]:
    def run(directory: Path) -> VectorOutcome:
        return _run_cases(directory, name, check, select=select)

    return run


def _together(*runs: Callable[[Path], VectorOutcome]) -> Callable[[Path], VectorOutcome]:
    """One requirement's check over several files: the cases and failures of each."""

    def run(directory: Path) -> VectorOutcome:
        outcome = VectorOutcome()
        for one in runs:
            part = one(directory)
            outcome.cases += part.cases
            outcome.failures += part.failures
        return outcome

    return run


#: Requirement id -> the function that verifies its vectors in a directory.
VECTOR_CHECKS: Final[dict[str, Callable[[Path], VectorOutcome]]] = {
    "OCP-CORE-VEC-MANIFEST-001": check_manifest,
    "OCP-CORE-VEC-ID-001": _runner("did-ocp.json", _did_ocp_case),
    "OCP-CORE-VEC-DIDDOC-001": _runner("did-document.json", _did_document_case),
    "OCP-CORE-VEC-JCS-001": _runner("message-signing.json", _message_case),
    "OCP-CORE-VEC-HTTPAUTH-001": _runner("http-authorization.json", _http_case),
    "OCP-CORE-VEC-WSAUTH-001": _runner("ws-auth.json", _ws_case),
    "OCP-CORE-VEC-ENC-001": _runner("payload-encryption.json", _encryption_case),
    "OCP-CORE-VEC-ART-001": _runner("artifacts.json", _artifact_case),
    "NET-VEC-001": _runner("did-key.json", _did_key_case),
    "NET-VEC-002": _runner("networking.json", _net_case, _not_session),
    "NET-VEC-003": _runner("networking.json", _session_case, _is_session),
    # Shamir sharing and the key recovery built on it (OCP §8.3, D9).
    "OCP-CORE-VEC-SHAMIR-001": _together(
        _runner("shamir.json", _shamir_case), _runner("recovery.json", _recovery_case)
    ),
}
