"""Realistic documents for every schema in ``schemas/``, valid and invalid.

Keys, signatures and nonces are deterministic bytes of the right length in
strict base64url; ids are derived from them the way ocpd derives them (agent
ids from SHA3-256 of the key, node ids as did:key). They are not verifiable
signatures: the schema gate checks shape only.

* :data:`VALID` maps each schema name to documents it must accept.
* :data:`INVALID` maps each schema name to ``(case id, document)`` pairs it
  must reject, for rules that the mutation tests of ``test_schemas.py`` do not
  derive on their own (ranges, counts, nested fields, conditional rules).
* :data:`APPENDIX_C` holds the wire examples of OCP Appendix C with real-shaped
  ids and signatures filled in.
"""

from __future__ import annotations

import base64
import copy
import hashlib
from typing import Any

Doc = dict[str, Any]

_B58_ALPHABET = "123456789ABCDEFGHJKLMNPQRSTUVWXYZabcdefghijkmnopqrstuvwxyz"


def raw(label: str, size: int) -> bytes:
    """``size`` deterministic bytes named by ``label``."""
    return hashlib.shake_256(label.encode()).digest(size)


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def b58btc(data: bytes) -> str:
    number = int.from_bytes(data, "big")
    out = ""
    while number:
        number, digit = divmod(number, 58)
        out = _B58_ALPHABET[digit] + out
    return "1" * (len(data) - len(data.lstrip(b"\0"))) + out


def key(label: str) -> str:
    """A 32-byte public key in base64url (43 characters)."""
    return b64url(raw(f"key:{label}", 32))


def sig(label: str) -> str:
    """A 64-byte signature in base64url (86 characters)."""
    return b64url(raw(f"sig:{label}", 64))


def nonce12(label: str) -> str:
    return b64url(raw(f"nonce12:{label}", 12))


def nonce32(label: str) -> str:
    return b64url(raw(f"nonce32:{label}", 32))


def agent(label: str, network: str = "testnet") -> str:
    """``did:ocp:<network>:agent-<first 12 hex of SHA3-256(pk)>``."""
    digest = hashlib.sha3_256(raw(f"key:{label}", 32)).hexdigest()
    return f"did:ocp:{network}:agent-{digest[:12]}"


def ed_multibase(label: str) -> str:
    return "z" + b58btc(b"\xed\x01" + raw(f"key:{label}", 32))


def x_multibase(label: str) -> str:
    return "z" + b58btc(b"\xec\x01" + raw(f"x25519:{label}", 32))


def node(label: str) -> str:
    return "node:did:key:" + ed_multibase(label)


def participant(label: str) -> str:
    return "participant:did:key:" + ed_multibase(label)


def uuid(label: str) -> str:
    h = hashlib.sha3_256(label.encode()).hexdigest()
    return f"{h[:8]}-{h[8:12]}-4{h[13:16]}-a{h[17:20]}-{h[20:32]}"


def msg_id(label: str) -> str:
    return "msg-" + uuid(label)[:23]


def hex64(label: str) -> str:
    return hashlib.sha3_256(label.encode()).hexdigest()


def fingerprint(label: str) -> str:
    return hashlib.sha3_256(raw(f"key:{label}", 32)).hexdigest()[:16]


def with_(doc: Doc, **changes: Any) -> Doc:
    """A deep copy of ``doc`` with top-level ``changes``; ``None`` removes a key."""
    out = copy.deepcopy(doc)
    for name, value in changes.items():
        if value is None:
            out.pop(name, None)
        else:
            out[name] = value
    return out


def set_path(doc: Any, path: tuple[Any, ...], value: Any) -> Any:
    """A deep copy of ``doc`` with the item at ``path`` replaced (``DELETE`` removes it)."""
    out = copy.deepcopy(doc)
    target = out
    for step in path[:-1]:
        target = target[step]
    if value is DELETE:
        del target[path[-1]]
    else:
        target[path[-1]] = value
    return out


DELETE = object()

ALICE = agent("alice")
BOB = agent("bob")
CAROL = agent("carol")
CUSTODIAN = agent("custodian")
T0 = "2026-04-03T12:00:00Z"
T1 = "2026-04-03T12:00:05.123456Z"
T_EXPIRES = "2026-10-03T12:00:00Z"

# ------------------------------------------------------------------ shared parts

PERMISSIONS: Doc = {
    "knowledge_share": {
        "enabled": True,
        "allowed_types": ["insight", "embedding"],
        "max_payload_bytes": 10485760,
    },
    "task_delegate": {"enabled": True, "max_concurrent": 5, "timeout_seconds": 300},
    "model_delta_share": {"enabled": False},
}

CAPABILITY: Doc = {
    "id": "cap:nlp:classification",
    "name": "Text Classification",
    "version": "1.0",
    "input_formats": ["text/plain", "application/json"],
    "output_formats": ["application/json"],
    "max_input_tokens": 128000,
}

EMBEDDING: Doc = {
    "knowledge_type": "embedding",
    "encoding": "float32",
    "dimensions": 4,
    "model_family": "transformer",
    "normalization": "l2",
    "vectors": [
        {
            "id": "emb-001",
            "label": "cardiac_arrhythmia_pattern_A",
            "vector": b64url(raw("vector", 16)),
            "metadata": {"source_domain": "cardiology", "created_at": T0},
        }
    ],
}

INSIGHT: Doc = {
    "knowledge_type": "insight",
    "insight_id": "ins-" + uuid("insight"),
    "topic": "fraud_pattern_detection",
    "category": "anomaly_detection",
    "confidence": 0.91,
    "evidence_count": 14203,
    "anonymized": True,
    "payload": {
        "pattern_id": "FP-2026-0042",
        "features": [{"name": "tx_velocity_5min", "threshold": 42.0, "direction": "above"}],
        "false_positive_rate": 0.03,
    },
    "provenance": {
        "source_agent": ALICE,
        "derived_from": "anonymized_transaction_logs",
        "methodology": "unsupervised_clustering",
        "timestamp": T0,
        "reproducibility_hash": hex64("methodology+parameters"),
    },
}

MODEL_DELTA: Doc = {
    "knowledge_type": "model_delta",
    "delta_id": "md-0042",
    "format": "federated_avg",
    "compression": "gzip",
    "architecture": {
        "family": "transformer",
        "parameter_count": "7B",
        "target_layers": ["attention.q_proj", "attention.k_proj"],
    },
    "differential_privacy": {
        "mechanism": "gaussian",
        "epsilon": 1.0,
        "delta": 1e-5,
        "noise_multiplier": 1.1,
    },
    "payload": b64url(raw("delta", 300)),
    "provenance": {"source_agent": ALICE, "training_samples": 50000, "timestamp": T0},
}

BOND: Doc = {
    "bond_id": "bond-" + uuid("bond"),
    "agents": [ALICE, BOB],
    "permissions": PERMISSIONS,
    "established_at": "2026-03-15T10:00:00Z",
    "expires_at": "2026-09-15T10:00:00Z",
    "renewal": "auto",
    "signatures": {ALICE: sig("bond-alice"), BOB: sig("bond-bob")},
}

BOND_REVOCATION: Doc = {
    "revocation_type": "bond",
    "bond_id": BOND["bond_id"],
    "revoked_by": BOB,
    "revoked_at": T1,
    "reason": "project finished",
    "signature": sig("bond-revocation"),
}

CERTIFICATION: Doc = {
    "certification_type": "certified",
    "certification_id": "cert-" + uuid("certification"),
    "subject": ALICE,
    "certifier": ed_multibase("certifier"),
    "level": 4,
    "scope": ["healthcare.oncology"],
    "statement": "Audited against the OCP Foundation checklist, 2026 edition.",
    "issued_at": T0,
    "expires_at": "2027-04-03T12:00:00Z",
    "signature": sig("certification"),
}

CERTIFICATION_REVOCATION: Doc = {
    "revocation_type": "certification",
    "certification_id": "cert-" + uuid("certification"),
    "subject": ALICE,
    "certifier": ed_multibase("certifier"),
    "revoked_at": T1,
    "reason": "audit withdrawn",
    "signature": sig("certification-revocation"),
}

CONSENSUS_ID = "con-" + uuid("consensus")

VOTE: Doc = {
    "consensus_id": CONSENSUS_ID,
    "vote": "confirm",
    "confidence": 0.88,
    "rationale_hash": hex64("private rationale"),
    "voter": BOB,
    "signature": sig("vote"),
}

RECOVERY_SHARE_PLAIN: Doc = {
    "share_id": f"share-{ALICE[-12:]}-1",
    "agent_id": ALICE,
    "scheme": "shamir-sss-gf256",
    "threshold": 3,
    "total_shares": 5,
    "share_index": 1,
    "share_data": b64url(raw("share-1", 32)),
    "key_fingerprint": fingerprint("alice"),
    "created_at": T0,
    "encryption": {
        "algorithm": "AES-256-GCM",
        "note": "Share is encrypted to the custodian's public key before transmission.",
    },
    "signature": sig("share-1"),
}

RECOVERY_SHARE_ENCRYPTED: Doc = with_(
    RECOVERY_SHARE_PLAIN,
    share_id=f"share-{ALICE[-12:]}-2",
    share_index=2,
    share_data=b64url(raw("share-2-ciphertext", 48)),
    encryption={
        "algorithm": "AES-256-GCM",
        "key_exchange": "ECDH-X25519",
        "nonce": nonce12("share-2"),
        "ephemeral_public_key": key("share-2-ephemeral"),
    },
    signature=sig("share-2"),
)


def did_document(label: str = "alice", network: str = "testnet") -> Doc:
    did = agent(label, network)
    return {
        "@context": ["https://www.w3.org/ns/did/v1", "https://ocp.foundation/ns/ocp/v1"],
        "id": did,
        "verificationMethod": [
            {
                "id": f"{did}#key-1",
                "type": "Ed25519VerificationKey2020",
                "controller": did,
                "publicKeyMultibase": ed_multibase(label),
            },
            {
                "id": f"{did}#key-2",
                "type": "Ed25519VerificationKey2020",
                "controller": did,
                "publicKeyMultibase": ed_multibase(f"{label}-2"),
            },
            {
                "id": f"{did}#recovery-key-1",
                "type": "Ed25519VerificationKey2020",
                "controller": did,
                "publicKeyMultibase": ed_multibase(f"{label}-recovery"),
                "purpose": "recovery",
            },
        ],
        "authentication": [f"{did}#key-1", f"{did}#key-2"],
        "keyAgreement": [
            {
                "id": f"{did}#x25519-1",
                "type": "X25519KeyAgreementKey2020",
                "controller": did,
                "publicKeyMultibase": x_multibase(label),
            }
        ],
        "service": [
            {
                "id": f"{did}#ocp-endpoint",
                "type": "OCPMessaging",
                "serviceEndpoint": "wss://ai.example.com/ocp/v1/ws",
            }
        ],
        "capabilityDeclaration": ["cap:nlp:classification", "cap:vision:imaging"],
        "trustAttestations": [
            {"attester": BOB, "level": "vouch", "issued": T0, "signature": sig("attest")}
        ],
    }


DID_DOCUMENT = did_document()
DID_DOCUMENT_ROTATED: Doc = with_(
    DID_DOCUMENT,
    verificationMethod=DID_DOCUMENT["verificationMethod"][1:],
    authentication=[f"{ALICE}#key-2"],
    revocation=[
        {
            "id": f"{ALICE}#key-1",
            "publicKeyMultibase": ed_multibase("alice"),
            "revoked_at": T1,
        }
    ],
)
DID_DOCUMENT_MINIMAL: Doc = {
    "@context": ["https://www.w3.org/ns/did/v1"],
    "id": BOB,
    "verificationMethod": [
        {
            "id": f"{BOB}#key-1",
            "type": "Ed25519VerificationKey2020",
            "controller": BOB,
            "publicKeyMultibase": ed_multibase("bob"),
        }
    ],
    "authentication": [f"{BOB}#key-1"],
    "keyAgreement": [
        {
            "id": f"{BOB}#x25519-1",
            "type": "X25519KeyAgreementKey2020",
            "controller": BOB,
            "publicKeyMultibase": x_multibase("bob"),
        }
    ],
}

AGENT_RECORD: Doc = {
    "agent_id": ALICE,
    "did_document_url": "https://example.com/.well-known/ocp/did.json",
    "display_name": "MedicalDiagnosticsAI",
    "version": "2.1.0",
    "capabilities": [
        CAPABILITY,
        {
            "id": "cap:vision:imaging",
            "name": "Medical Imaging Analysis",
            "version": "1.0",
            "input_formats": ["image/dicom", "image/png"],
            "output_formats": ["application/json"],
        },
        {"id": "cap:custom:acme-labs:triage_v2", "name": "Triage", "version": "0.3"},
    ],
    "domains": ["healthcare", "oncology", "radiology"],
    "endpoints": [
        {"transport": "ocp-ws", "url": "wss://ai.example.com/ocp/v1/ws", "priority": 1},
        {"transport": "ocp-http", "url": "https://ai.example.com/ocp/v1/messages", "priority": 2},
    ],
    "trust_level": 2,
    "status": "active",
    "registered_at": "2026-03-01T00:00:00Z",
    "ttl": 86400,
    "extensions": [
        {"id": "ocp-ext:healthcare:dicom-share:v1", "config": {"max_series": 4}},
        {"id": "ocp-ext:recovery:custodian:v1"},
    ],
    "signature": sig("agent-record"),
}

NODE_A = node("node-a")
NODE_B = node("node-b")

SIGNAL_MARKER: Doc = {
    "marker/id": "sm-" + uuid("marker"),
    "participant/id": participant("node-a"),
    "created-at": T0,
    "signal/kind": "presence/online",
    "signal/body": "back from maintenance",
    "signature": sig("marker"),
}

HELLO: Doc = {
    "handshake/id": "hs-" + uuid("hello"),
    "handshake/mode": "hello",
    "ts": T0,
    "sender/node-id": NODE_A,
    "recipient/node-id": NODE_B,
    "key/alg": "ed25519",
    "key/public": key("node-a"),
    "session/pub": key("node-a-session"),
    "protocol/version": "1.0",
    "nonce": nonce32("hello"),
    "capabilities/offered": ["core/messaging", "ocp/routing"],
    "transport/profile": "wss",
    "signature": sig("hello"),
}

ACK: Doc = {
    "handshake/id": "hs-" + uuid("ack"),
    "handshake/mode": "ack",
    "ts": T1,
    "sender/node-id": NODE_B,
    "recipient/node-id": NODE_A,
    "key/alg": "ed25519",
    "key/public": key("node-b"),
    "session/pub": key("node-b-session"),
    "protocol/version": "1.0",
    "nonce": nonce32("ack"),
    "ack/of-handshake-id": HELLO["handshake/id"],
    "capabilities/offered": ["core/messaging", "registry/gossip"],
    "terms/negotiated": {"keepalive_seconds": 15},
    "signature": sig("ack"),
}

# ------------------------------------------------------------------ payloads

PAYLOADS: dict[str, list[Doc]] = {
    "discovery_ping": [
        {
            "capabilities": ["cap:nlp:classification", "cap:vision:imaging"],
            "domains": ["healthcare", "oncology"],
            "trust_level": 2,
        },
        {},
    ],
    "capability_query": [
        {"capabilities": ["cap:finance:risk_analysis"], "domains": ["finance"]},
        {"domains": ["healthcare.oncology"]},
    ],
    "capability_response": [
        {"capabilities": [CAPABILITY], "domains": ["healthcare"]},
        {"capabilities": []},
    ],
    "knowledge_share": [EMBEDDING, INSIGHT, MODEL_DELTA],
    "knowledge_ack": [
        {"knowledge_id": INSIGHT["insight_id"], "status": "accepted"},
        {
            "knowledge_id": "md-0042",
            "status": "rejected",
            "error_code": "PVL-003",
            "message": "epsilon above 10.0",
        },
    ],
    "task_request": [
        {
            "task_id": "task-" + uuid("task"),
            "task_type": "analysis",
            "description": "Analyze portfolio for emerging credit risk patterns",
            "input": {
                "format": "application/json",
                "schema_ref": "https://ocp.foundation/schemas/portfolio_summary_v1",
                "data": {"positions": 1200, "region": "emea"},
            },
            "constraints": {
                "max_duration_seconds": 300,
                "required_capabilities": ["cap:finance:risk_analysis"],
                "min_trust_level": 3,
            },
            "callback": {"type": "ocp_message", "agent_id": ALICE},
        },
        {
            "task_id": "task-" + uuid("task-2"),
            "task_type": "summarization",
            "input": {"format": "text/plain", "data": "A short text to summarise."},
            "constraints": {"max_duration_seconds": 30},
        },
    ],
    "task_response": [
        {
            "task_id": "task-" + uuid("task"),
            "status": "completed",
            "result": {"format": "application/json", "data": {"risk": "low"}, "confidence": 0.87},
            "execution_metadata": {
                "duration_ms": 4521,
                "tokens_consumed": 12400,
                "model_version": "2.1.0",
            },
        },
        {"task_id": "task-" + uuid("task"), "status": "rejected", "reason": "no capacity"},
    ],
    "bond_request": [{"proposed_permissions": PERMISSIONS, "proposed_duration_days": 180}],
    "bond_negotiate": [
        {
            "bond_id": "bond-aabbccdd-eeff-0011-2233",
            "counter_permissions": {"task_delegate": {"enabled": True, "max_concurrent": 2}},
            "proposed_duration_days": 90,
        },
        {"counter_permissions": {}},
    ],
    "bond_accept": [
        {
            "bond_id": BOND["bond_id"],
            "agreed_permissions": PERMISSIONS,
            "expires_at": T_EXPIRES,
            "signature": sig("bond-accept"),
        }
    ],
    "bond_confirm": [{"bond": BOND}],
    "bond_revoke": [BOND_REVOCATION],
    "consensus_initiate": [
        {
            "consensus_id": CONSENSUS_ID,
            "topic": "Classify pattern FP-2026-0042 as confirmed fraud indicator",
            "options": ["confirm", "reject", "abstain"],
            "quorum": {"min_participants": 5, "threshold": 0.67, "weighted": True},
            "deadline": "2026-04-03T18:00:00Z",
            "eligible_agents": {"min_trust_level": 2, "required_domains": ["finance"]},
        }
    ],
    "consensus_vote": [VOTE, with_(VOTE, voter=None)],
    "consensus_result": [
        {
            "consensus_id": CONSENSUS_ID,
            "outcome": "confirm",
            "scores": {"confirm": 2.41, "reject": 0.5, "abstain": 0},
            "total_weighted_score": 2.91,
            "participants": 5,
            "votes": [VOTE],
        },
        {
            "consensus_id": CONSENSUS_ID,
            "outcome": "no_consensus",
            "scores": {},
            "total_weighted_score": 0,
            "participants": 0,
        },
    ],
    "broadcast": [{"announcement": "maintenance at 02:00Z", "nested": {"any": [1, "two"]}}, {}],
    "ack": [{"status": "processed", "note": "stored"}, {}],
    "error": [
        {
            "error_code": "OCP-403",
            "message": "Insufficient trust level or bond permissions",
            "reference_message_id": msg_id("original"),
            "details": {"required_level": 3},
        },
        {"error_code": "E_PROTO_INVALID", "message": "invalid contract"},
        {"error_code": "PVL-001", "message": "PII detected in payload"},
    ],
    "share_deposit": [
        {
            "share": RECOVERY_SHARE_ENCRYPTED,
            "recovery_public_key": key("alice-recovery"),
            "expires_at": "2026-07-02T12:00:00Z",
        },
        {"share": RECOVERY_SHARE_PLAIN, "recovery_public_key": key("alice-recovery")},
    ],
    "share_revoke": [
        {
            "agent_id": ALICE,
            "share_id": RECOVERY_SHARE_PLAIN["share_id"],
            "key_fingerprint": fingerprint("alice"),
            "revoked_at": T1,
        }
    ],
    "recovery_request": [
        {
            "agent_id": ALICE,
            "key_fingerprint": fingerprint("alice"),
            "ephemeral_public_key": key("recovery-ephemeral"),
            "proof": {
                "type": "secondary_key_signature",
                "secondary_key_id": f"{ALICE}#recovery-key-1",
                "signature": sig("recovery-proof"),
            },
        },
        {
            "agent_id": ALICE,
            "key_fingerprint": fingerprint("alice"),
            "ephemeral_public_key": key("recovery-ephemeral"),
            "proof": {"type": "operator_approval", "approval_id": "appr-7"},
        },
        {
            "agent_id": ALICE,
            "key_fingerprint": fingerprint("alice"),
            "ephemeral_public_key": key("recovery-ephemeral"),
            "proof": {"type": "operator_approval"},
        },
    ],
    "recovery_share_response": [
        {
            "agent_id": ALICE,
            "share_index": 1,
            "encrypted_share": b64url(raw("returned-share", 48)),
            "nonce": nonce12("returned-share"),
        }
    ],
}


def message(
    message_type: str,
    payload: Doc | str,
    *,
    label: str = "message",
    sender: str = ALICE,
    receiver: str = BOB,
    **extra: Any,
) -> Doc:
    """An OCPUMF message around ``payload`` (fields in ``extra`` are added as given)."""
    doc: Doc = {
        "ocp_version": "1.0",
        "message_id": msg_id(label),
        "timestamp": T0,
        "ttl": 3600,
        "sender": {"agent_id": sender, "signature": sig(label)},
        "receiver": {"agent_id": receiver, "broadcast": False},
        "message_type": message_type,
        "priority": "normal",
        "payload": payload,
    }
    doc.update(extra)
    return doc


ENCRYPTION: Doc = {
    "algorithm": "AES-256-GCM",
    "key_exchange": "ECDH-X25519",
    "nonce": nonce12("payload"),
    "ephemeral_public_key": key("payload-ephemeral"),
}

ENVELOPE_PLAIN = message(
    "task_request",
    PAYLOADS["task_request"][0],
    metadata={
        "tags": ["finance"],
        "language": "en-GB",
        "requires_ack": True,
        "correlation_id": "session-2026-04-03-001",
        "trace_id": "trace-0001",
    },
)
ENVELOPE_ENCRYPTED = message(
    "knowledge_share",
    b64url(raw("ciphertext||tag", 700)),
    encryption=ENCRYPTION,
    metadata={"tags": ["oncology", "imaging"], "requires_ack": True},
)
ENVELOPE_BROADCAST = message(
    "discovery_ping",
    PAYLOADS["discovery_ping"][0],
    receiver="did:ocp:testnet:broadcast",
    metadata={"tags": ["healthcare"]},
)
ENVELOPE_BROADCAST["receiver"]["broadcast"] = True

# ------------------------------------------------------------------ every schema

VALID: dict[str, list[Doc]] = {
    "envelope": [
        ENVELOPE_PLAIN,
        ENVELOPE_ENCRYPTED,
        ENVELOPE_BROADCAST,
        with_(message("ack", {}), ttl=None, priority=None),
    ],
    **{f"payload.{name}": docs for name, docs in PAYLOADS.items()},
    "knowledge.embedding": [EMBEDDING, with_(EMBEDDING, model_family=None, normalization=None)],
    "knowledge.insight": [
        INSIGHT,
        # PVL, not the schema, answers a missing or partial provenance (PVL-004)
        # and anonymized: false (PVL-002).
        with_(INSIGHT, provenance=None, anonymized=False),
        with_(INSIGHT, provenance={"source_agent": ALICE}),
    ],
    "knowledge.model_delta": [
        MODEL_DELTA,
        # PVL answers missing or excessive differential privacy (PVL-003).
        with_(MODEL_DELTA, differential_privacy=None, provenance=None),
        with_(
            MODEL_DELTA,
            differential_privacy={"mechanism": "gaussian", "epsilon": 50.0},
            architecture={"family": "cnn", "parameter_count": 25000000, "target_layers": []},
        ),
    ],
    "agent-record": [
        AGENT_RECORD,
        with_(AGENT_RECORD, did_document_url=None, trust_level=None, extensions=None),
    ],
    "did-document": [DID_DOCUMENT, DID_DOCUMENT_ROTATED, DID_DOCUMENT_MINIMAL],
    "did-document-update": [
        {
            "did_document": DID_DOCUMENT_ROTATED,
            "updated_at": T1,
            "signer": f"{ALICE}#key-2",
            "signature": sig("did-update"),
        }
    ],
    "vouch": [
        {
            "vouch_type": "endorsement",
            "attester": BOB,
            "subject": ALICE,
            "level": "vouch",
            "domains": ["oncology"],
            "issued_at": "2026-03-01T00:00:00Z",
            "expires_at": "2027-03-01T00:00:00Z",
            "signature": sig("vouch"),
        }
    ],
    "vouch-revocation": [
        {
            "revocation_type": "vouch",
            "attester": BOB,
            "subject": ALICE,
            "vouch_digest": hex64("vouch signing input"),
            "revoked_at": T1,
            "signature": sig("vouch-revocation"),
        }
    ],
    "bond": [BOND],
    "bond-revocation": [BOND_REVOCATION, with_(BOND_REVOCATION, reason=None)],
    "certification": [
        CERTIFICATION,
        with_(CERTIFICATION, scope=None, statement=None),
    ],
    "certification-revocation": [
        CERTIFICATION_REVOCATION,
        with_(CERTIFICATION_REVOCATION, reason=None),
    ],
    "consensus-vote": [VOTE],
    "interaction-rating": [
        {
            "rating_type": "interaction",
            "rater": ALICE,
            "subject": CAROL,
            "rating": 0.8,
            "interaction_id": msg_id("rated"),
            "rated_at": T1,
            "signature": sig("rating"),
        },
        {
            "rating_type": "interaction",
            "rater": ALICE,
            "subject": CAROL,
            "rating": 1,
            "rated_at": T1,
            "signature": sig("rating-2"),
        },
    ],
    "recovery-share": [RECOVERY_SHARE_PLAIN, RECOVERY_SHARE_ENCRYPTED],
    "auth-handshake": [
        {
            "frame_type": "auth_handshake",
            "agent_id": ALICE,
            "timestamp": T0,
            "nonce": nonce32("auth"),
            "signature": sig("auth"),
        }
    ],
    "node-identity.v1": [
        {
            "node/id": NODE_A,
            "participant/id": participant("node-a"),
            "created-at": T0,
            "key/alg": "ed25519",
            "key/public": key("node-a"),
            "key/storage-ref": "local-file:/var/lib/ocpd/identity/node.key",
            "identity/status": "active",
        }
    ],
    "node-advertisement.v1": [
        {
            "advertisement/id": "adv-" + uuid("adv"),
            "node/id": NODE_A,
            "sequence/no": 7,
            "advertised-at": T0,
            "expires-at": "2026-04-04T12:00:00Z",
            "key/alg": "ed25519",
            "key/public": key("node-a"),
            "endpoints": [
                {
                    "url": "wss://node-a.example.net:443/ocp/v1/peer",
                    "transport": "wss",
                    "priority": 0,
                },
                {"url": "wss://198.51.100.7/ocp/v1/peer", "transport": "wss", "priority": 10},
            ],
            "transports/supported": ["wss"],
            "succession": {"successor/node-id": NODE_B, "note": "planned rotation"},
            "signature": sig("adv"),
        }
    ],
    "peer-handshake.v1": [HELLO, ACK, with_(HELLO, **{"recipient/node-id": None})],
    "capability-advertisement.v1": [
        {
            "advertisement/id": "capadv-" + uuid("capadv"),
            "node/id": NODE_A,
            "published-at": T0,
            "protocol/version": "1.0",
            "transport/profiles": ["wss"],
            "capabilities/core": ["core/messaging", "ocp/routing", "registry/gossip"],
            "roles/attached": ["recovery/custodian"],
            "surfaces/exposed": ["ocp/http-api"],
            "messages/supported": ["signal-marker.v1", "signal-marker-envelope.v1", "ocp/message"],
            "signature": sig("capadv"),
        }
    ],
    "signal-marker.v1": [SIGNAL_MARKER, with_(SIGNAL_MARKER, **{"signal/body": None})],
    "node-overlap-bundle.v1": [
        {
            "bundle/type": "node-overlap-bundle.v1",
            "created-at": T1,
            "key/alg": "ed25519",
            "predecessor": {"node/id": NODE_A, "key/public": key("node-a")},
            "successor": {"node/id": NODE_B, "key/public": key("node-b")},
            "statement": "local overlap record only: it grants no continuity to discovery, "
            "routing or peer trust",
            "signatures": {"predecessor": sig("overlap-a"), "successor": sig("overlap-b")},
        }
    ],
    "signal-marker-envelope.v1": [
        {
            "envelope/id": "sme-" + uuid("sme"),
            "participant/id": participant("node-a"),
            "sender/node-id": NODE_A,
            "recipient/node-id": NODE_B,
            "sent-at": T1,
            "marker": SIGNAL_MARKER,
            "signature": sig("sme"),
        }
    ],
}

# ------------------------------------------------------------------ hand-written rejections


def _cases(base: Doc, *cases: tuple[str, tuple[Any, ...], Any]) -> list[tuple[str, Any]]:
    return [(case_id, set_path(base, path, value)) for case_id, path, value in cases]


_PLAIN = ENVELOPE_PLAIN
_REQ = PAYLOADS["task_request"][0]
_CONSENSUS = PAYLOADS["consensus_initiate"][0]
_RECOVERY = PAYLOADS["recovery_request"][0]
_VOUCH = VALID["vouch"][0]
_RATING = VALID["interaction-rating"][0]
_AUTH = VALID["auth-handshake"][0]
_IDENTITY = VALID["node-identity.v1"][0]
_ADV = VALID["node-advertisement.v1"][0]
_CAPADV = VALID["capability-advertisement.v1"][0]
_SME = VALID["signal-marker-envelope.v1"][0]
_OVERLAP = VALID["node-overlap-bundle.v1"][0]
_DIDU = VALID["did-document-update"][0]
_REVOC = VALID["vouch-revocation"][0]
_CERT = CERTIFICATION
_CERT_REVOC = CERTIFICATION_REVOCATION
_RESP = PAYLOADS["recovery_share_response"][0]

INVALID: dict[str, list[tuple[str, Any]]] = {
    "envelope": [
        ("string-payload-without-encryption", with_(_PLAIN, payload=b64url(raw("x", 40)))),
        ("object-payload-with-encryption", with_(_PLAIN, encryption=ENCRYPTION)),
        ("encrypted-payload-not-base64url", with_(ENVELOPE_ENCRYPTED, payload="bm90+base64/url==")),
        ("encrypted-payload-shorter-than-tag", with_(ENVELOPE_ENCRYPTED, payload="AAAA")),
        ("payload-array", with_(_PLAIN, payload=[])),
        *_cases(
            _PLAIN,
            ("version-2.0", ("ocp_version",), "2.0"),
            ("ttl-zero", ("ttl",), 0),
            ("ttl-above-max", ("ttl",), 86401),
            ("ttl-float", ("ttl",), 60.5),
            ("timestamp-offset", ("timestamp",), "2026-04-03T12:00:00+00:00"),
            ("timestamp-seven-digit-fraction", ("timestamp",), "2026-04-03T12:00:00.1234567Z"),
            ("timestamp-lowercase-z", ("timestamp",), "2026-04-03T12:00:00z"),
            ("message-id-full-uuid", ("message_id",), "msg-" + uuid("m")),
            ("message-id-uppercase", ("message_id",), "msg-A1B2C3D4-E5F6-7890-ABCD"),
            ("sender-extra-field", ("sender", "display_name"), "Alice"),
            ("sender-missing-signature", ("sender", "signature"), DELETE),
            ("sender-broadcast-id", ("sender", "agent_id"), "did:ocp:testnet:broadcast"),
            ("sender-agent-id-11-hex", ("sender", "agent_id"), "did:ocp:mainnet:agent-abc123def01"),
            (
                "sender-agent-id-uppercase",
                ("sender", "agent_id"),
                "did:ocp:mainnet:agent-ABC123DEF012",
            ),
            (
                "sender-network-too-long",
                ("sender", "agent_id"),
                f"did:ocp:{'n' * 33}:agent-{'0' * 12}",
            ),
            ("signature-85-chars", ("sender", "signature"), sig("s")[:85]),
            ("signature-bad-last-char", ("sender", "signature"), sig("s")[:85] + "B"),
            ("signature-padded", ("sender", "signature"), sig("s") + "=="),
            ("receiver-missing-agent-id", ("receiver", "agent_id"), DELETE),
            ("receiver-broadcast-not-bool", ("receiver", "broadcast"), "true"),
            ("receiver-extra-field", ("receiver", "endpoint"), "wss://x"),
            ("message-type-unknown", ("message_type",), "gossip"),
            ("priority-unknown", ("priority",), "urgent"),
            ("metadata-unknown-field", ("metadata", "routing_hint"), "x"),
            ("metadata-tags-not-strings", ("metadata", "tags"), [1]),
            ("metadata-too-many-tags", ("metadata", "tags"), ["t"] * 65),
            ("metadata-requires-ack-string", ("metadata", "requires_ack"), "yes"),
            ("metadata-language-not-a-tag", ("metadata", "language"), "english language"),
        ),
        *_cases(
            ENVELOPE_ENCRYPTED,
            ("encryption-missing-nonce", ("encryption", "nonce"), DELETE),
            ("encryption-algorithm-chacha", ("encryption", "algorithm"), "ChaCha20-Poly1305"),
            ("encryption-key-exchange-other", ("encryption", "key_exchange"), "ECDH-P256"),
            ("encryption-nonce-16-bytes", ("encryption", "nonce"), b64url(raw("n", 16))),
            (
                "encryption-epk-31-bytes",
                ("encryption", "ephemeral_public_key"),
                b64url(raw("k", 31)),
            ),
            ("encryption-extra-field", ("encryption", "tag"), "AAAA"),
        ),
    ],
    "payload.discovery_ping": [
        ("trust-level-9", {"trust_level": 9}),
        ("trust-level-negative", {"trust_level": -1}),
        ("trust-level-string", {"trust_level": "2"}),
        ("capability-uppercase", {"capabilities": ["cap:NLP:classification"]}),
        ("capability-no-prefix", {"capabilities": ["nlp:classification"]}),
        ("capability-custom-org-uppercase", {"capabilities": ["cap:custom:Acme:triage"]}),
        ("domain-empty", {"domains": [""]}),
        ("extra-field", {"domains": ["finance"], "region": "eu"}),
    ],
    "payload.capability_query": [("capabilities-not-array", {"capabilities": "cap:nlp:x"})],
    "payload.capability_response": [
        ("capability-missing-version", {"capabilities": [with_(CAPABILITY, version=None)]}),
        ("capability-extra-field", {"capabilities": [with_(CAPABILITY, price=3)]}),
        ("capability-tokens-zero", {"capabilities": [with_(CAPABILITY, max_input_tokens=0)]}),
    ],
    "payload.knowledge_share": [
        ("unknown-knowledge-type", with_(INSIGHT, knowledge_type="raw_data")),
        ("missing-knowledge-type", with_(INSIGHT, knowledge_type=None)),
        ("insight-confidence-above-1", with_(INSIGHT, confidence=1.5)),
        ("insight-extra-field", with_(INSIGHT, source_records=[1, 2])),
        ("insight-with-embedding-fields", with_(INSIGHT, encoding="float32")),
        ("embedding-no-vectors", with_(EMBEDDING, vectors=[])),
        ("embedding-encoding-int8", with_(EMBEDDING, encoding="int8")),
        ("model-delta-compression-lz4", with_(MODEL_DELTA, compression="lz4")),
        ("model-delta-payload-not-base64url", with_(MODEL_DELTA, payload="a+b/c=")),
    ],
    "knowledge.embedding": [
        ("dimensions-zero", with_(EMBEDDING, dimensions=0)),
        ("normalization-l1", with_(EMBEDDING, normalization="l1")),
        *_cases(
            EMBEDDING,
            ("vector-missing", ("vectors", 0, "vector"), DELETE),
            ("vector-padded", ("vectors", 0, "vector"), "AAAA=="),
            ("vector-extra-field", ("vectors", 0, "norm"), 1.0),
        ),
    ],
    "knowledge.insight": [
        ("insight-id-not-uuid", with_(INSIGHT, insight_id="ins-42")),
        ("anonymized-string", with_(INSIGHT, anonymized="true")),
        ("evidence-count-negative", with_(INSIGHT, evidence_count=-1)),
        ("payload-not-object", with_(INSIGHT, payload="text")),
        *_cases(
            INSIGHT,
            ("provenance-bad-hash", ("provenance", "reproducibility_hash"), "ABC"),
            ("provenance-extra-field", ("provenance", "operator"), "bob"),
            ("provenance-source-not-did", ("provenance", "source_agent"), "alice"),
        ),
    ],
    "knowledge.model_delta": [
        *_cases(
            MODEL_DELTA,
            ("architecture-missing-family", ("architecture", "family"), DELETE),
            ("architecture-parameter-count-fraction", ("architecture", "parameter_count"), 7.5),
            ("dp-epsilon-string", ("differential_privacy", "epsilon"), "1.0"),
            ("dp-extra-field", ("differential_privacy", "clipping"), 1.0),
            ("provenance-samples-negative", ("provenance", "training_samples"), -5),
        ),
    ],
    "payload.knowledge_ack": [
        ("status-unknown", {"knowledge_id": "k", "status": "maybe"}),
        (
            "error-code-net",
            {"knowledge_id": "k", "status": "rejected", "error_code": "E_SIG_INVALID"},
        ),
    ],
    "payload.task_request": [
        ("task-id-not-uuid", with_(_REQ, task_id="task-1")),
        *_cases(
            _REQ,
            ("max-duration-zero", ("constraints", "max_duration_seconds"), 0),
            ("constraints-missing-max-duration", ("constraints", "max_duration_seconds"), DELETE),
            ("min-trust-level-5", ("constraints", "min_trust_level"), 5),
            ("callback-type-http", ("callback", "type"), "http"),
            ("callback-missing-agent", ("callback", "agent_id"), DELETE),
            ("input-missing-format", ("input", "format"), DELETE),
            ("input-extra-field", ("input", "encoding"), "utf-8"),
        ),
    ],
    "payload.task_response": [
        ("status-done", {"task_id": "task-" + uuid("t"), "status": "done"}),
        (
            "confidence-above-1",
            {
                "task_id": "task-" + uuid("t"),
                "status": "completed",
                "result": {"format": "text/plain", "confidence": 1.2},
            },
        ),
    ],
    "payload.bond_request": [
        ("duration-366", {"proposed_permissions": PERMISSIONS, "proposed_duration_days": 366}),
        ("duration-0", {"proposed_permissions": PERMISSIONS, "proposed_duration_days": 0}),
        *_cases(
            {"proposed_permissions": PERMISSIONS, "proposed_duration_days": 30},
            ("permissions-unknown-block", ("proposed_permissions", "storage"), {"enabled": True}),
            (
                "knowledge-share-missing-enabled",
                ("proposed_permissions", "knowledge_share", "enabled"),
                DELETE,
            ),
            (
                "allowed-type-raw",
                ("proposed_permissions", "knowledge_share", "allowed_types"),
                ["raw"],
            ),
            (
                "allowed-types-duplicate",
                ("proposed_permissions", "knowledge_share", "allowed_types"),
                ["insight", "insight"],
            ),
            (
                "max-payload-above-10mib",
                ("proposed_permissions", "knowledge_share", "max_payload_bytes"),
                10485761,
            ),
            ("max-concurrent-zero", ("proposed_permissions", "task_delegate", "max_concurrent"), 0),
            (
                "model-delta-extra-field",
                ("proposed_permissions", "model_delta_share", "epsilon"),
                1.0,
            ),
        ),
    ],
    "payload.bond_negotiate": [("missing-counter-permissions", {"proposed_duration_days": 30})],
    "payload.bond_accept": [
        ("bond-id-not-uuid", with_(PAYLOADS["bond_accept"][0], bond_id="bond-1")),
        ("expires-at-date-only", with_(PAYLOADS["bond_accept"][0], expires_at="2026-10-03")),
    ],
    "payload.bond_confirm": [
        ("bond-missing-signatures", {"bond": with_(BOND, signatures=None)}),
        ("bond-one-signature", {"bond": with_(BOND, signatures={ALICE: sig("one")})}),
    ],
    "payload.bond_revoke": [
        ("revocation-type-vouch", with_(BOND_REVOCATION, revocation_type="vouch")),
    ],
    "payload.consensus_initiate": [
        ("one-option", with_(_CONSENSUS, options=["confirm"])),
        ("duplicate-options", with_(_CONSENSUS, options=["confirm", "confirm"])),
        ("consensus-id-not-uuid", with_(_CONSENSUS, consensus_id="con-1")),
        *_cases(
            _CONSENSUS,
            ("threshold-zero", ("quorum", "threshold"), 0),
            ("threshold-above-1", ("quorum", "threshold"), 1.1),
            ("min-participants-zero", ("quorum", "min_participants"), 0),
            ("quorum-missing-weighted", ("quorum", "weighted"), DELETE),
            ("eligible-extra-field", ("eligible_agents", "max_agents"), 10),
        ),
    ],
    "payload.consensus_vote": [
        ("rationale-hash-uppercase", with_(VOTE, rationale_hash=hex64("r").upper())),
        ("confidence-negative", with_(VOTE, confidence=-0.1)),
    ],
    "payload.consensus_result": [
        *_cases(
            PAYLOADS["consensus_result"][0],
            ("score-negative", ("scores", "reject"), -1),
            ("score-string", ("scores", "reject"), "0.5"),
            ("participants-negative", ("participants",), -1),
            ("vote-missing-signature", ("votes", 0, "signature"), DELETE),
        ),
    ],
    "payload.broadcast": [("array", []), ("string", "hello")],
    "payload.ack": [("status-done", {"status": "done"}), ("extra-field", {"message_id": "m"})],
    "payload.error": [
        ("code-unknown-family", {"error_code": "ERR-1", "message": "x"}),
        ("code-lowercase", {"error_code": "ocp-400", "message": "x"}),
        (
            "reference-not-message-id",
            {"error_code": "OCP-400", "message": "x", "reference_message_id": "42"},
        ),
    ],
    "payload.share_deposit": [
        (
            "plain-share-with-ciphertext-length",
            {
                "share": with_(RECOVERY_SHARE_PLAIN, share_data=b64url(raw("x", 48))),
                "recovery_public_key": key("r"),
            },
        ),
        (
            "recovery-key-12-bytes",
            {"share": RECOVERY_SHARE_PLAIN, "recovery_public_key": nonce12("r")},
        ),
    ],
    "payload.share_revoke": [
        ("fingerprint-full-digest", with_(PAYLOADS["share_revoke"][0], key_fingerprint=hex64("k"))),
        (
            "share-id-index-zero",
            with_(PAYLOADS["share_revoke"][0], share_id=f"share-{ALICE[-12:]}-0"),
        ),
    ],
    "payload.recovery_request": [
        *_cases(
            _RECOVERY,
            ("proof-missing-signature", ("proof", "signature"), DELETE),
            ("proof-unknown-type", ("proof", "type"), "email_code"),
            ("proof-missing-type", ("proof", "type"), DELETE),
            ("proof-signing-key-not-recovery-key", ("proof", "secondary_key_id"), f"{ALICE}#key-1"),
            ("proof-extra-field", ("proof", "approval_id"), "a-1"),
        ),
        (
            "operator-approval-with-signature",
            with_(_RECOVERY, proof={"type": "operator_approval", "signature": sig("p")}),
        ),
    ],
    "payload.recovery_share_response": [
        ("share-index-zero", with_(_RESP, share_index=0)),
        ("share-index-256", with_(_RESP, share_index=256)),
        ("nonce-32-bytes", with_(_RESP, nonce=nonce32("n"))),
    ],
    "agent-record": [
        ("no-capabilities", with_(AGENT_RECORD, capabilities=[])),
        ("no-domains", with_(AGENT_RECORD, domains=[])),
        ("no-endpoints", with_(AGENT_RECORD, endpoints=[])),
        ("ttl-59", with_(AGENT_RECORD, ttl=59)),
        ("ttl-above-week", with_(AGENT_RECORD, ttl=604801)),
        ("status-online", with_(AGENT_RECORD, status="online")),
        ("trust-level-7", with_(AGENT_RECORD, trust_level=7)),
        ("display-name-too-long", with_(AGENT_RECORD, display_name="x" * 257)),
        ("display-name-empty", with_(AGENT_RECORD, display_name="")),
        (
            "too-many-endpoints",
            with_(
                AGENT_RECORD,
                endpoints=[
                    {"transport": "ocp-ws", "url": f"wss://h{i}.example", "priority": 1}
                    for i in range(17)
                ],
            ),
        ),
        *_cases(
            AGENT_RECORD,
            ("endpoint-transport-udp", ("endpoints", 0, "transport"), "ocp-udp"),
            ("endpoint-priority-zero", ("endpoints", 0, "priority"), 0),
            ("endpoint-url-no-scheme", ("endpoints", 0, "url"), "ai.example.com/ws"),
            ("extension-id-bad", ("extensions", 0, "id"), "ext:healthcare:dicom"),
            ("extension-extra-field", ("extensions", 0, "schema"), {}),
            ("capability-id-bad", ("capabilities", 0, "id"), "cap:nlp"),
        ),
    ],
    "did-document": [
        (
            "context-without-did-v1",
            with_(DID_DOCUMENT, **{"@context": ["https://ocp.foundation/ns/ocp/v1"]}),
        ),
        ("context-string", with_(DID_DOCUMENT, **{"@context": "https://www.w3.org/ns/did/v1"})),
        (
            "three-active-keys",
            with_(
                DID_DOCUMENT, authentication=[f"{ALICE}#key-1", f"{ALICE}#key-2", f"{ALICE}#key-3"]
            ),
        ),
        (
            "recovery-key-authenticates",
            with_(DID_DOCUMENT, authentication=[f"{ALICE}#recovery-key-1"]),
        ),
        ("no-key-agreement", with_(DID_DOCUMENT, keyAgreement=[])),
        ("missing-key-agreement", with_(DID_DOCUMENT, keyAgreement=None)),
        ("no-verification-method", with_(DID_DOCUMENT, verificationMethod=[])),
        ("extra-field", with_(DID_DOCUMENT, alsoKnownAs=["https://example.com"])),
        *_cases(
            DID_DOCUMENT,
            ("recovery-key-without-purpose", ("verificationMethod", 2, "purpose"), DELETE),
            ("signing-key-with-purpose", ("verificationMethod", 0, "purpose"), "recovery"),
            ("vm-wrong-type", ("verificationMethod", 0, "type"), "JsonWebKey2020"),
            ("vm-key-index-zero", ("verificationMethod", 0, "id"), f"{ALICE}#key-0"),
            (
                "vm-multibase-x25519",
                ("verificationMethod", 0, "publicKeyMultibase"),
                x_multibase("a"),
            ),
            (
                "key-agreement-ed25519-key",
                ("keyAgreement", 0, "publicKeyMultibase"),
                ed_multibase("a"),
            ),
            ("key-agreement-wrong-type", ("keyAgreement", 0, "type"), "Ed25519VerificationKey2020"),
            ("service-missing-endpoint", ("service", 0, "serviceEndpoint"), DELETE),
            ("capability-declaration-bad", ("capabilityDeclaration", 0), "classification"),
            ("attestation-not-object", ("trustAttestations", 0), "vouch"),
        ),
        *_cases(
            DID_DOCUMENT_ROTATED,
            ("revocation-of-key-agreement", ("revocation", 0, "id"), f"{ALICE}#x25519-1"),
            ("revocation-missing-revoked-at", ("revocation", 0, "revoked_at"), DELETE),
        ),
    ],
    "did-document-update": [
        ("signer-recovery-key", with_(_DIDU, signer=f"{ALICE}#recovery-key-1")),
        ("signer-bare-did", with_(_DIDU, signer=ALICE)),
        ("document-invalid", set_path(_DIDU, ("did_document", "authentication"), [])),
    ],
    "vouch": [
        ("level-bond", with_(_VOUCH, level="bond")),
        ("vouch-type-other", with_(_VOUCH, vouch_type="attestation")),
        ("extra-field", with_(_VOUCH, weight=1)),
        ("domains-not-array", with_(_VOUCH, domains="oncology")),
    ],
    "vouch-revocation": [
        ("digest-63-chars", with_(_REVOC, vouch_digest=hex64("v")[:63])),
        ("revocation-type-bond", with_(_REVOC, revocation_type="bond")),
    ],
    "bond": [
        ("three-signatures", with_(BOND, signatures={**BOND["signatures"], CAROL: sig("c")})),
        ("one-agent", with_(BOND, agents=[ALICE])),
        ("three-agents", with_(BOND, agents=[ALICE, BOB, CAROL])),
        ("same-agent-twice", with_(BOND, agents=[ALICE, ALICE])),
        ("signature-key-not-agent-id", with_(BOND, signatures={ALICE: sig("a"), "bob": sig("b")})),
        ("renewal-never", with_(BOND, renewal="never")),
        ("bond-id-without-prefix", with_(BOND, bond_id=uuid("b"))),
        *_cases(BOND, ("signature-not-base64url", ("signatures", ALICE), "x" * 86)),
    ],
    "bond-revocation": [("revoked-by-not-did", with_(BOND_REVOCATION, revoked_by="bob"))],
    "certification": [
        ("level-3", with_(_CERT, level=3)),
        ("level-as-string", with_(_CERT, level="4")),
        ("certifier-did-ocp", with_(_CERT, certifier=BOB)),
        ("certifier-x25519-key", with_(_CERT, certifier=x_multibase("certifier"))),
        ("certifier-did-key", with_(_CERT, certifier="did:key:" + ed_multibase("certifier"))),
        ("id-truncated-uuid", with_(_CERT, certification_id="cert-" + uuid("c")[:23])),
        ("id-bond-prefix", with_(_CERT, certification_id="bond-" + uuid("c"))),
        ("type-other", with_(_CERT, certification_type="endorsement")),
        ("scope-not-array", with_(_CERT, scope="oncology")),
        ("scope-empty-string", with_(_CERT, scope=[""])),
        ("statement-empty", with_(_CERT, statement="")),
        ("statement-too-long", with_(_CERT, statement="x" * 4097)),
    ],
    "certification-revocation": [
        ("revocation-type-vouch", with_(_CERT_REVOC, revocation_type="vouch")),
        ("certifier-did-ocp", with_(_CERT_REVOC, certifier=BOB)),
        ("subject-not-did", with_(_CERT_REVOC, subject="alice")),
    ],
    "consensus-vote": [
        ("voter-not-did", with_(VOTE, voter="bob")),
        ("vote-empty", with_(VOTE, vote="")),
    ],
    "interaction-rating": [
        ("rating-above-1", with_(_RATING, rating=1.01)),
        ("rating-negative", with_(_RATING, rating=-0.01)),
        ("interaction-id-not-message-id", with_(_RATING, interaction_id="task-1")),
    ],
    "recovery-share": [
        ("threshold-1", with_(RECOVERY_SHARE_PLAIN, threshold=1)),
        ("total-shares-2", with_(RECOVERY_SHARE_PLAIN, total_shares=2)),
        ("total-shares-256", with_(RECOVERY_SHARE_PLAIN, total_shares=256)),
        ("scheme-other", with_(RECOVERY_SHARE_PLAIN, scheme="shamir-sss-gf65536")),
        (
            "fingerprint-uppercase",
            with_(RECOVERY_SHARE_PLAIN, key_fingerprint=fingerprint("a").upper()),
        ),
        (
            "encrypted-share-plain-length",
            with_(RECOVERY_SHARE_ENCRYPTED, share_data=b64url(raw("x", 32))),
        ),
        ("share-data-not-base64url", with_(RECOVERY_SHARE_PLAIN, share_data="+" * 43)),
        *_cases(
            RECOVERY_SHARE_ENCRYPTED,
            ("nonce-without-ephemeral-key", ("encryption", "ephemeral_public_key"), DELETE),
            ("ephemeral-key-without-nonce", ("encryption", "nonce"), DELETE),
            ("encryption-missing-algorithm", ("encryption", "algorithm"), DELETE),
            ("encryption-extra-field", ("encryption", "tag"), "AAAA"),
        ),
    ],
    "auth-handshake": [
        ("frame-type-auth-result", with_(_AUTH, frame_type="auth_result")),
        ("nonce-16-bytes", with_(_AUTH, nonce=b64url(raw("n", 16)))),
        ("extra-field", with_(_AUTH, session_id="sess-1")),
    ],
    "node-identity.v1": [
        ("storage-ref-other-scheme", with_(_IDENTITY, **{"key/storage-ref": "file:/x"})),
        ("status-unknown", with_(_IDENTITY, **{"identity/status": "suspended"})),
        ("key-alg-x25519", with_(_IDENTITY, **{"key/alg": "x25519"})),
        ("inline-private-key", with_(_IDENTITY, **{"key/private": key("secret")})),
        (
            "node-id-not-ed25519",
            with_(_IDENTITY, **{"node/id": "node:did:key:" + x_multibase("n")}),
        ),
        ("participant-id-as-node-id", with_(_IDENTITY, **{"node/id": participant("node-a")})),
    ],
    "node-advertisement.v1": [
        ("no-endpoints", with_(_ADV, endpoints=[])),
        ("sequence-zero", with_(_ADV, **{"sequence/no": 0})),
        ("sequence-above-safe-integer", with_(_ADV, **{"sequence/no": 2**53})),
        ("transport-tcp", with_(_ADV, **{"transports/supported": ["tcp"]})),
        (
            "seventeen-endpoints",
            with_(
                _ADV,
                endpoints=[
                    {"url": f"wss://n{i}.example", "transport": "wss", "priority": i}
                    for i in range(17)
                ],
            ),
        ),
        *_cases(
            _ADV,
            ("endpoint-https", ("endpoints", 0, "url"), "https://node-a.example.net/ocp/v1/peer"),
            ("endpoint-priority-negative", ("endpoints", 0, "priority"), -1),
            ("succession-missing-successor", ("succession", "successor/node-id"), DELETE),
        ),
    ],
    "peer-handshake.v1": [
        ("ack-without-recipient", with_(ACK, **{"recipient/node-id": None})),
        ("ack-without-of-handshake-id", with_(ACK, **{"ack/of-handshake-id": None})),
        (
            "hello-with-of-handshake-id",
            with_(HELLO, **{"ack/of-handshake-id": HELLO["handshake/id"]}),
        ),
        ("mode-challenge", with_(HELLO, **{"handshake/mode": "challenge"})),
        ("protocol-version-2", with_(HELLO, **{"protocol/version": "2.0"})),
        ("session-pub-did-key", with_(HELLO, **{"session/pub": x_multibase("s")})),
        ("nonce-12-bytes", with_(HELLO, nonce=nonce12("n"))),
        ("capability-offered-bad", with_(HELLO, **{"capabilities/offered": ["messaging"]})),
    ],
    "capability-advertisement.v1": [
        ("core-without-messaging", with_(_CAPADV, **{"capabilities/core": ["ocp/routing"]})),
        ("core-empty", with_(_CAPADV, **{"capabilities/core": []})),
        ("core-uppercase", with_(_CAPADV, **{"capabilities/core": ["Core/Messaging"]})),
        ("transport-profiles-empty", with_(_CAPADV, **{"transport/profiles": []})),
        ("id-wrong-prefix", with_(_CAPADV, **{"advertisement/id": "adv-" + uuid("x")})),
    ],
    "signal-marker.v1": [
        ("body-too-long", with_(SIGNAL_MARKER, **{"signal/body": "x" * 4097})),
        ("kind-without-namespace", with_(SIGNAL_MARKER, **{"signal/kind": "online"})),
        ("signed-by-node-id", with_(SIGNAL_MARKER, **{"participant/id": NODE_A})),
    ],
    "node-overlap-bundle.v1": [
        ("type-advertisement", with_(_OVERLAP, **{"bundle/type": "node-advertisement.v1"})),
        ("statement-edited", with_(_OVERLAP, statement="the successor inherits trust")),
        ("key-alg-x25519", with_(_OVERLAP, **{"key/alg": "x25519"})),
        *_cases(
            _OVERLAP,
            ("successor-signature-missing", ("signatures", "successor"), DELETE),
            ("third-signature", ("signatures", "witness"), sig("w")),
            ("predecessor-participant-id", ("predecessor", "node/id"), participant("node-a")),
            ("successor-key-missing", ("successor", "key/public"), DELETE),
            ("successor-extra-field", ("successor", "agent_id"), agent("node-b")),
        ),
    ],
    "signal-marker-envelope.v1": [
        ("marker-extra-field", set_path(_SME, ("marker", "hops"), 2)),
        ("marker-missing-signature", set_path(_SME, ("marker", "signature"), DELETE)),
        ("id-marker-prefix", with_(_SME, **{"envelope/id": "sm-" + uuid("x")})),
    ],
}

# ------------------------------------------------------------------ OCP Appendix C

# The spec's placeholders ("...", "base64url-encoded-96bit-nonce") are replaced by
# values of the right length, and its 11-character, non-hex agent id
# "agent-xyz789def01" by a 12-hex one.
_A3F9 = "did:ocp:mainnet:agent-a3f9b2c1d4e5"
_XYZ = "did:ocp:mainnet:agent-0bc789def012"

APPENDIX_C: dict[str, Doc] = {
    "C.1 discovery ping": {
        "ocp_version": "1.0",
        "message_id": "msg-a1b2c3d4-e5f6-7890-abcd",
        "timestamp": "2026-04-03T12:00:00Z",
        "ttl": 60,
        "sender": {"agent_id": _A3F9, "signature": sig("C.1")},
        "receiver": {"agent_id": "did:ocp:mainnet:broadcast", "broadcast": True},
        "message_type": "discovery_ping",
        "priority": "low",
        "payload": {
            "capabilities": ["cap:nlp:classification", "cap:vision:imaging"],
            "domains": ["healthcare", "oncology"],
            "trust_level": 2,
        },
        "metadata": {"tags": ["healthcare"], "requires_ack": False},
    },
    "C.2 knowledge share with encryption": {
        "ocp_version": "1.0",
        "message_id": "msg-f7e6d5c4-b3a2-1098-7654",
        "timestamp": "2026-04-03T12:05:00Z",
        "ttl": 3600,
        "sender": {"agent_id": _A3F9, "signature": sig("C.2")},
        "receiver": {"agent_id": _XYZ, "broadcast": False},
        "message_type": "knowledge_share",
        "priority": "normal",
        "encryption": {
            "algorithm": "AES-256-GCM",
            "key_exchange": "ECDH-X25519",
            "nonce": nonce12("C.2"),
            "ephemeral_public_key": key("C.2-ephemeral"),
        },
        "payload": b64url(raw("C.2 ciphertext||tag", 420)),
        "metadata": {
            "tags": ["oncology", "imaging"],
            "language": "en",
            "requires_ack": True,
            "correlation_id": "session-2026-04-03-001",
        },
    },
    "C.3 bond request": {
        "ocp_version": "1.0",
        "message_id": "msg-11112222-3333-4444-5555",
        "timestamp": "2026-04-03T13:00:00Z",
        "ttl": 86400,
        "sender": {"agent_id": _A3F9, "signature": sig("C.3-request")},
        "receiver": {"agent_id": _XYZ, "broadcast": False},
        "message_type": "bond_request",
        "priority": "normal",
        "payload": {
            "proposed_permissions": {
                "knowledge_share": {"enabled": True, "allowed_types": ["insight", "embedding"]},
                "task_delegate": {"enabled": True, "max_concurrent": 3},
                "model_delta_share": {"enabled": False},
            },
            "proposed_duration_days": 180,
        },
        "metadata": {"requires_ack": True},
    },
    "C.3 bond accept": {
        "ocp_version": "1.0",
        "message_id": "msg-66667777-8888-9999-aaaa",
        "timestamp": "2026-04-03T13:05:00Z",
        "ttl": 86400,
        "sender": {"agent_id": _XYZ, "signature": sig("C.3-accept")},
        "receiver": {"agent_id": _A3F9, "broadcast": False},
        "message_type": "bond_accept",
        "priority": "normal",
        "payload": {
            "bond_id": "bond-aabbccdd-eeff-0011-2233",
            "agreed_permissions": {
                "knowledge_share": {
                    "enabled": True,
                    "allowed_types": ["insight", "embedding"],
                    "max_payload_bytes": 10485760,
                },
                "task_delegate": {"enabled": True, "max_concurrent": 3, "timeout_seconds": 300},
                "model_delta_share": {"enabled": False},
            },
            "expires_at": "2026-10-03T13:05:00Z",
            "signature": sig("C.3-bond"),
        },
        "metadata": {"correlation_id": "msg-11112222-3333-4444-5555", "requires_ack": True},
    },
}
