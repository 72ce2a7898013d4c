"""Generate ocpd's published conformance vectors (``python -m conformance.generate``).

Every value is deterministic: Ed25519 seeds are ``bytes(range(32))`` or
SHA3-256 of a label, ephemeral X25519 keys, nonces and artifact ids come from
labels too, and every time is fixed around 2026-04-03T12:00:00Z. Running the
generator twice gives byte-identical files; ``tests/test_conformance_vectors.py``
checks that the committed files equal what :func:`build_vectors` returns, so
the published vectors always match the code.

The vectors are built with ocpd's own core (``ocpd.proto``) and checked
against it while they are built; the test file re-verifies them from the JSON
alone. ``conformance/vectors/README.md`` explains each file to implementers.

Usage::

    python -m conformance.generate            # (re)write conformance/vectors/
    python -m conformance.generate --check    # exit 1 if the files are stale
"""

from __future__ import annotations

import argparse
import hashlib
import itertools
import json
import sys
import uuid
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final

import numpy as np

from ocpd.proto import artifacts, auth, diddoc, envelope, netartifacts, peer, recovery, shamir
from ocpd.proto.crypto import (
    DecryptionFailed,
    SigningKey,
    X25519KeyPair,
    aes256gcm_decrypt,
    aes256gcm_encrypt,
    ed25519_verify,
    hkdf_sha256,
    sha3_256,
    x25519,
)
from ocpd.proto.dcbor import encode_deterministic, signing_input
from ocpd.proto.encoding import b64url_decode, b64url_encode, format_timestamp
from ocpd.proto.errors import AuthError, MalformedError
from ocpd.proto.ids import (
    X25519_MULTICODEC,
    base58btc_encode,
    broadcast_did,
    derive_agent_id,
    format_node_id,
    format_participant_id,
    key_fingerprint,
    multibase_ed25519,
    multibase_x25519,
)
from ocpd.proto.jcs import canonicalize
from ocpd.proto.signing import artifact_digest, sign_artifact

if TYPE_CHECKING:
    from collections.abc import Callable, Mapping

__all__ = ["VECTORS_DIR", "build_vectors", "dump_json", "main", "write_vectors"]

VECTORS_DIR: Final = Path(__file__).resolve().parent / "vectors"
MANIFEST: Final = "MANIFEST.json"
MANIFEST_FORMAT: Final = 1

NOW: Final = 1_775_217_600.0  # 2026-04-03T12:00:00Z
DAY: Final = 86_400.0
NETWORK: Final = "testnet"
LABEL_PREFIX: Final = b"ocpd-conformance/"

Json = dict[str, Any]


# --- deterministic inputs ---------------------------------------------------------


def label_bytes(label: str, length: int = 32) -> bytes:
    """``length`` bytes from SHA3-256(``ocpd-conformance/<label>/<counter>``)."""
    out = b""
    counter = 0
    while len(out) < length:
        out += sha3_256(LABEL_PREFIX + f"{label}/{counter}".encode())
        counter += 1
    return out[:length]


def fixed_uuid(label: str) -> str:
    """A UUIDv4-shaped string whose random bits come from ``label``."""
    return str(uuid.UUID(bytes=label_bytes(label, 16), version=4))


def fixed_message_id(label: str) -> str:
    """``msg-`` + the first four groups of :func:`fixed_uuid` (OCP §7.1 shape)."""
    return "msg-" + fixed_uuid(label)[:23]


def ts(seconds: float) -> str:
    return format_timestamp(seconds)


def jcs_text(value: object) -> str:
    return canonicalize(value).decode("utf-8")


class Party:
    """A fixed Ed25519 identity: seed, key and its did:ocp agent id."""

    def __init__(self, seed: bytes, network: str = NETWORK) -> None:
        self.seed = seed
        self.key = SigningKey(seed)
        self.public_key = self.key.public_key
        self.agent_id = derive_agent_id(self.public_key, network)

    def describe(self) -> Json:
        return {
            "seed": self.seed.hex(),
            "public_key": self.public_key.hex(),
            "agent_id": self.agent_id,
        }


ALICE: Final = Party(bytes(range(32)))
BOB: Final = Party(label_bytes("agent/bob"))
CAROL: Final = Party(label_bytes("agent/carol"))
ALICE_RECOVERY: Final = Party(label_bytes("agent/alice/recovery-key"))
ALICE_KEY_2: Final = Party(label_bytes("agent/alice/key-2"))
ALICE_KEY_3: Final = Party(label_bytes("agent/alice/key-3"))
# A Level 4 certifier: a bare key that registries name in trust.certifier_keys (D7).
CERTIFIER: Final = Party(label_bytes("certifier/foundation"))
# The node's own key: node id, participant id and its did:ocp service agent (D4).
NODE_A: Final = Party(label_bytes("node/a"))
NODE_B: Final = Party(label_bytes("node/b"))


# --- JSON output ------------------------------------------------------------------


def dump_json(value: object) -> bytes:
    """The one serialisation of every vector file (stable across runs)."""
    text = json.dumps(value, indent=2, sort_keys=True, ensure_ascii=False) + "\n"
    return text.encode("utf-8")


def _file(description: str, cases: list[Json]) -> Json:
    names = [case["name"] for case in cases]
    assert len(names) == len(set(names)), "case names must be unique within a file"
    return {
        "description": description,
        "reference_time": ts(NOW),
        "cases": cases,
    }


# --- did-ocp.json -------------------------------------------------------------------


def did_ocp_vectors() -> Json:
    cases: list[Json] = []
    valid = [
        ("alice-testnet", ALICE.public_key, "testnet"),
        ("alice-mainnet", ALICE.public_key, "mainnet"),
        ("bob-testnet", BOB.public_key, "testnet"),
        ("network-with-digits-and-hyphen", CAROL.public_key, "ocp-net-2"),
        ("network-of-32-characters", CAROL.public_key, "n" * 31 + "0"),
        ("network-of-1-character", BOB.public_key, "x"),
    ]
    for name, public_key, network in valid:
        agent_id = derive_agent_id(public_key, network)
        cases.append(
            {
                "name": name,
                "kind": "valid",
                "public_key": public_key.hex(),
                "sha3_256_of_public_key": sha3_256(public_key).hex(),
                "network": network,
                "agent_id": agent_id,
            }
        )
    for network in ("testnet", "ocp-net-2"):
        cases.append(
            {
                "name": f"broadcast-{network}",
                "kind": "broadcast",
                "network": network,
                "did": broadcast_did(network),
                "reason": "the broadcast receiver: a valid receiver, never an agent id",
            }
        )
    ident = ALICE.agent_id.rsplit("-", 1)[1]
    good = ALICE.agent_id
    invalid = [
        ("uppercase-hex", f"did:ocp:testnet:agent-{ident.upper()}", "hex must be lowercase"),
        ("11-hex-chars", f"did:ocp:testnet:agent-{ident[:11]}", "identifier is 11 hex chars"),
        ("13-hex-chars", f"did:ocp:testnet:agent-{ident}0", "identifier is 13 hex chars"),
        ("non-hex-char", f"did:ocp:testnet:agent-{ident[:11]}g", "'g' is not a hex digit"),
        ("uppercase-network", f"did:ocp:TestNet:agent-{ident}", "network must be lowercase"),
        ("underscore-in-network", f"did:ocp:test_net:agent-{ident}", "'_' is not allowed"),
        ("empty-network", f"did:ocp::agent-{ident}", "network is 1-32 characters"),
        ("network-of-33-characters", f"did:ocp:{'n' * 33}:agent-{ident}", "network too long"),
        ("missing-network", f"did:ocp:agent-{ident}", "the network segment is missing"),
        ("extra-segment", f"did:ocp:testnet:eu:agent-{ident}", "one network segment only"),
        ("trailing-newline", good + "\n", "trailing newline"),
        ("leading-space", " " + good, "leading whitespace"),
        ("trailing-space", good + " ", "trailing whitespace"),
        ("uppercase-method", good.replace("did:ocp:", "did:OCP:"), "method name is lowercase"),
        ("uppercase-did-scheme", good.replace("did:", "DID:", 1), "scheme is lowercase"),
        ("other-method", f"did:key:testnet:agent-{ident}", "method must be ocp"),
        ("agent-prefix-uppercase", good.replace("agent-", "Agent-"), "'agent-' is lowercase"),
        ("missing-agent-prefix", f"did:ocp:testnet:{ident}", "'agent-' prefix is required"),
        ("underscore-instead-of-hyphen", f"did:ocp:testnet:agent_{ident}", "'agent-' exactly"),
        ("broadcast-is-not-an-agent", broadcast_did("testnet"), "broadcast is no agent id"),
        ("fragment-appended", good + "#key-1", "a DID URL is not an agent id"),
        ("full-width-digit", good[:-1] + "\uff11", "non-ASCII digit"),
        ("empty-string", "", "empty"),
    ]
    for name, value, reason in invalid:
        cases.append(
            {"name": f"invalid-{name}", "kind": "invalid", "value": value, "reason": reason}
        )
    return _file(
        "did:ocp agent ids (D4): did:ocp:<network>:agent-<first 12 lowercase hex chars of "
        "SHA3-256(raw Ed25519 public key)>, network [a-z0-9-]{1,32}; strings a strict "
        "parser must reject, each with the reason.",
        cases,
    )


# --- did-key.json -------------------------------------------------------------------


def did_key_vectors() -> Json:
    cases: list[Json] = []
    for name, party in (("alice-key", ALICE), ("node-a-key", NODE_A), ("node-b-key", NODE_B)):
        pk = party.public_key
        cases.append(
            {
                "name": name,
                "kind": "valid",
                "public_key": pk.hex(),
                "multicodec_key": (b"\xed\x01" + pk).hex(),
                "multibase": multibase_ed25519(pk),
                "node_id": format_node_id(pk),
                "participant_id": format_participant_id(pk),
            }
        )
    pk = NODE_A.public_key
    mb = multibase_ed25519(pk)
    node = format_node_id(pk)
    participant = format_participant_id(pk)
    x_mb = "z" + base58btc_encode(X25519_MULTICODEC + pk)
    invalid = [
        ("participant-prefix-as-node-id", "node_id", participant, "other prefix"),
        ("node-prefix-as-participant-id", "participant_id", node, "other prefix"),
        ("bare-did-key-as-node-id", "node_id", "did:key:" + mb, "prefix 'node:' missing"),
        ("bare-did-key-as-participant-id", "participant_id", "did:key:" + mb, "prefix missing"),
        ("x25519-multicodec-node-id", "node_id", "node:did:key:" + x_mb, "multicodec 0xec01"),
        (
            "x25519-multicodec-participant-id",
            "participant_id",
            "participant:did:key:" + x_mb,
            "multicodec 0xec01 (X25519) instead of 0xed01 (Ed25519)",
        ),
        ("missing-multibase-z", "node_id", "node:did:key:" + mb[1:], "multibase prefix missing"),
        (
            "key-of-31-bytes",
            "node_id",
            "node:did:key:z" + base58btc_encode(b"\xed\x01" + pk[:31]),
            "wrong length: 31-byte key",
        ),
        (
            "key-of-33-bytes",
            "node_id",
            "node:did:key:z" + base58btc_encode(b"\xed\x01" + pk + b"\x00"),
            "wrong length: 33-byte key",
        ),
        (
            "leading-zero-byte",
            "node_id",
            "node:did:key:z1" + mb[1:],
            "wrong length: a leading base58 '1' adds a zero byte",
        ),
        ("uppercase-node-prefix", "node_id", "NODE:did:key:" + mb, "prefix must be lowercase"),
        ("uppercase-did", "node_id", "node:DID:key:" + mb, "prefix must be lowercase"),
        (
            "uppercase-participant-prefix",
            "participant_id",
            "Participant:did:key:" + mb,
            "prefix must be lowercase",
        ),
        ("uppercase-multibase-z", "node_id", "node:did:key:Z" + mb[1:], "multibase is 'z'"),
        ("trailing-character", "node_id", node + "a", "trailing data"),
        ("trailing-newline", "participant_id", participant + "\n", "trailing data"),
        ("fragment-appended", "node_id", node + "#" + mb, "trailing data: a DID URL fragment"),
        (
            "base16-multibase",
            "node_id",
            "node:did:key:f" + (b"\xed\x01" + pk).hex(),
            "other multibase base: 'f' (base16)",
        ),
        (
            "base64url-multibase",
            "participant_id",
            "participant:did:key:u" + b64url_encode(b"\xed\x01" + pk),
            "other multibase base: 'u' (base64url)",
        ),
        (
            "character-outside-base58",
            "node_id",
            "node:did:key:" + mb[:10] + "0" + mb[11:],
            "'0' is not in the base58btc alphabet",
        ),
        ("empty-key", "node_id", "node:did:key:z", "no key at all"),
    ]
    for name, parser, value, reason in invalid:
        cases.append(
            {
                "name": f"invalid-{name}",
                "kind": "invalid",
                "parser": parser,
                "value": value,
                "reason": reason,
            }
        )
    return _file(
        "did:key node and participant ids (NET FR-002a, FR-003a): "
        "node:did:key:z<base58btc(0xed 0x01 || pk)> and participant:did:key:z<...>; "
        "strings a strict parser must reject, each with the reason.",
        cases,
    )


# --- did-document.json ----------------------------------------------------------------


SERVICE_ENDPOINTS: Final = ("wss://node-a.example:7443/ocp/v1/ws", "https://node-a.example/ocp/v1")


def _alice_document() -> Json:
    return diddoc.build_did_document(
        ALICE.public_key,
        network=NETWORK,
        service_endpoints=SERVICE_ENDPOINTS,
        recovery_public_key=ALICE_RECOVERY.public_key,
        capabilities=["cap:nlp:classification"],
    )


def _rotation_case(
    name: str,
    description: str,
    current: Json,
    new: Party,
    signer: Party,
    signer_vm: str,
    retire: list[str],
    now: float,
) -> tuple[Json, Json]:
    rotated = diddoc.rotate_did_document(current, new.public_key, now=now, retire=retire)
    update = diddoc.sign_did_update(rotated, signer.key, signer=signer_vm, now=now)
    unsigned = {k: v for k, v in update.items() if k != "signature"}
    digest = artifact_digest(update)
    assert diddoc.verify_did_update(current, update).document == rotated
    case: Json = {
        "name": name,
        "description": description,
        "current_document": current,
        "new_key": {
            "seed": new.seed.hex(),
            "public_key": new.public_key.hex(),
            "verification_method": rotated["authentication"][-1],
        },
        "retired": retire,
        "rotated_document": rotated,
        "signer": signer_vm,
        "signer_seed": signer.seed.hex(),
        "signer_public_key": signer.public_key.hex(),
        "update": update,
        "canonical_jcs": jcs_text(unsigned),
        "digest_sha3_256": digest.hex(),
        "signature": update["signature"],
    }
    return case, rotated


def did_document_vectors() -> Json:
    doc = _alice_document()
    parsed = diddoc.parse_did_document(doc)
    x_pub = ALICE.key.x25519_public_key()
    assert parsed.newest_key_agreement() == x_pub
    initial: Json = {
        "name": "initial-document",
        "description": "build_did_document with a recovery key, two services and a capability",
        "seed": ALICE.seed.hex(),
        "public_key": ALICE.public_key.hex(),
        "network": NETWORK,
        "agent_id": ALICE.agent_id,
        "public_key_multibase": multibase_ed25519(ALICE.public_key),
        "recovery_seed": ALICE_RECOVERY.seed.hex(),
        "recovery_public_key": ALICE_RECOVERY.public_key.hex(),
        "service_endpoints": list(SERVICE_ENDPOINTS),
        "x25519_public_key": x_pub.hex(),
        "x25519_private_key": ALICE.key.x25519_private_key().hex(),
        "x25519_public_key_multibase": multibase_x25519(x_pub),
        "document": doc,
    }
    did = ALICE.agent_id
    overlap, doc2 = _rotation_case(
        "rotation-add-key-2",
        "#key-2 is added and both keys stay active; signed by #key-1, active in the current "
        "document",
        doc,
        ALICE_KEY_2,
        ALICE,
        f"{did}#key-1",
        [],
        NOW + DAY,
    )
    retire, _ = _rotation_case(
        "rotation-add-key-3",
        "#key-3 is added and #key-1 retired into revocation (it keeps the id self-certifying); "
        "signed by #key-2",
        doc2,
        ALICE_KEY_3,
        ALICE_KEY_2,
        f"{did}#key-2",
        [f"{did}#key-1"],
        NOW + 2 * DAY,
    )
    return _file(
        "DID documents (OCP §4.1.2, D4): an initial document with its X25519 keyAgreement "
        "key, and signed rotation updates (D2 rule, signer active in the current document).",
        [initial, overlap, retire],
    )


# --- message-signing.json -------------------------------------------------------------


def _message_case(name: str, description: str, party: Party, unsigned: Json) -> Json:
    signed = envelope.sign_message(unsigned, party.key)
    canonical = canonicalize(unsigned)
    # A reader of the published JSON must arrive at the same bytes.
    assert canonicalize(json.loads(dump_json(unsigned))) == canonical
    digest = sha3_256(canonical)
    assert digest == envelope.message_digest(signed)
    signature = signed["sender"]["signature"]
    assert ed25519_verify(party.public_key, digest, b64url_decode(signature))
    envelope.verify_message(
        json.dumps(signed).encode(), now=NOW, resolve_keys=lambda _: [party.public_key]
    )
    return {
        "name": name,
        "description": description,
        **party.describe(),
        "unsigned_message": unsigned,
        "canonical_jcs": canonical.decode("utf-8"),
        "digest_sha3_256": digest.hex(),
        "signature": signature,
        "signed_message": signed,
    }


def message_vectors() -> Json:
    ping = envelope.build_message(
        sender=ALICE.agent_id,
        receiver=BOB.agent_id,
        message_type="discovery_ping",
        payload={
            "capabilities": ["cap:nlp:classification"],
            "domains": ["healthcare.oncology"],
            "trust_level": 1,
        },
        now=NOW,
        metadata={"tags": ["healthcare"], "requires_ack": False},
        message_id=fixed_message_id("message/discovery-ping"),
    )
    numbers_payload: Json = {
        "numbers": {
            "half": 0.5,
            "tenth": 0.1,
            "one_point_zero": 1.0,
            "negative_zero": -0.0,
            "small": 1e-7,
            "large": 1e21,
            "max_safe_integer": 9_007_199_254_740_991,
            "fraction": 123456789.125,
            "negative": -1.5,
        },
        "text": {
            "greeting": "Grüße aus Köln",
            "japanese": "こんにちは",
            "emoji": "🚀",
            "escapes": 'tab\tnewline\nquote"backslash\\ control\u0001 del\u007f',
            "line_separator": "a\u2028b",
        },
        # UTF-16 key order: U+1F600 (a surrogate pair, D83D DE00) sorts before
        # U+E000, although its code point is larger.
        "keys": {"\ue000": "private-use", "😀": "emoji key", "z": 1, "Z": 2, "é": 3},
    }
    broadcast = envelope.build_message(
        sender=BOB.agent_id,
        receiver=broadcast_did(NETWORK),
        message_type="broadcast",
        payload=numbers_payload,
        now=NOW + 0.5,
        ttl=600,
        priority="low",
        broadcast=True,
        metadata={"tags": ["healthcare.oncology"], "language": "de-DE"},
        message_id=fixed_message_id("message/broadcast-numbers"),
    )
    # build_error_message draws a random message id; pin it before signing.
    error = envelope.build_error_message(
        MalformedError("message has expired", details={"field": "timestamp", "reason": "expired"}),
        sender=NODE_A.agent_id,
        receiver=ALICE.agent_id,
        now=NOW + 1,
        reference_message_id=ping["message_id"],
    )
    error["message_id"] = fixed_message_id("message/error")
    # D1 allows a fraction of 1-6 digits; build_message writes whole seconds.
    broadcast["timestamp"] = format_timestamp(NOW + 0.5, fraction_digits=3)
    cases = [
        _message_case(
            "discovery-ping", "a discovery_ping from alice to bob with metadata", ALICE, ping
        ),
        _message_case(
            "broadcast-floats-and-unicode",
            "a broadcast whose payload holds floats, non-ASCII text, escapes and keys whose "
            "JCS order differs from code-point order; timestamp with a fraction",
            BOB,
            broadcast,
        ),
        _message_case(
            "error-from-node",
            "an OCP-400 error message signed by the node's service agent, correlated to the "
            "discovery ping",
            NODE_A,
            error,
        ),
    ]
    return _file(
        "OCPUMF message signatures (OCP §7.2, D2): "
        "Ed25519(sk, SHA3-256(JCS(message without sender.signature))).",
        cases,
    )


# --- http-authorization.json ----------------------------------------------------------


def _http_case(
    name: str, party: Party, method: str, path_and_query: str, body: str, now: float
) -> Json:
    body_bytes = body.encode("utf-8")
    timestamp = format_timestamp(now, fraction_digits=3)  # as build_authorization writes it
    signing_string = auth.http_signing_string(
        method=method,
        path_and_query=path_and_query,
        agent_id=party.agent_id,
        timestamp=timestamp,
        body=body_bytes,
    )
    header = auth.build_authorization(
        party.key,
        agent_id=party.agent_id,
        method=method,
        path_and_query=path_and_query,
        body=body_bytes,
        now=now,
    )
    signature = header.rsplit(":", 1)[1]
    auth.verify_authorization(
        header,
        method=method,
        path_and_query=path_and_query,
        body=body_bytes,
        public_keys=[party.public_key],
        now=now,
        replay=auth.ReplayWindow(window=auth.DEFAULT_AUTH_WINDOW),
    )
    return {
        "name": name,
        **party.describe(),
        "method": method,
        "path_and_query": path_and_query,
        "body": body,
        "body_sha3_256": sha3_256(body_bytes).hex(),
        "timestamp": timestamp,
        "signing_string": signing_string.decode("utf-8"),
        "signing_digest": sha3_256(signing_string).hex(),
        "signature": signature,
        "header_name": "Authorization",
        "header": header,
    }


def http_vectors() -> Json:
    rating_body = jcs_text(
        {"rater": ALICE.agent_id, "subject": BOB.agent_id, "rating": 0.9, "note": "zuverlässig"}
    )
    cases = [
        _http_case(
            "post-with-json-body",
            ALICE,
            "POST",
            "/ocp/v1/registry/interactions",
            rating_body,
            NOW,
        ),
        _http_case(
            "get-with-query-and-empty-body",
            BOB,
            "GET",
            f"/ocp/v1/registry/agents/{ALICE.agent_id}?include=trust&limit=5",
            "",
            NOW + 30,
        ),
        _http_case(
            "post-with-encoded-query",
            CAROL,
            "POST",
            "/ocp/v1/registry/discover?q=onkologie%20k%C3%B6ln&page=2",
            '{"domains":["healthcare.oncology"],"query":"Köln"}\n',
            NOW + 59,
        ),
    ]
    return _file(
        "HTTP request authentication (OCP §3.1.2, D3): Authorization: OCP-Ed25519 "
        "<agent_id>:<timestamp>:<signature>, signature = Ed25519(sk, SHA3-256(signing_string)).",
        cases,
    )


# --- ws-auth.json ---------------------------------------------------------------------


def ws_auth_vectors() -> Json:
    cases: list[Json] = []
    for name, party, now in (("alice", ALICE, NOW), ("bob", BOB, NOW + 30)):
        nonce = label_bytes(f"ws-auth/{name}/nonce")
        frame = auth.build_ws_auth_handshake(
            party.key, agent_id=party.agent_id, now=now, nonce=nonce
        )
        signed_text = frame["agent_id"] + frame["timestamp"] + frame["nonce"]
        auth.verify_ws_auth_handshake(
            frame,
            public_keys=[party.public_key],
            now=now,
            replay=auth.ReplayWindow(window=auth.DEFAULT_AUTH_WINDOW),
        )
        cases.append(
            {
                "name": name,
                **party.describe(),
                "timestamp": frame["timestamp"],
                "nonce_bytes": nonce.hex(),
                "nonce": frame["nonce"],
                "signed_bytes": signed_text,
                "signature": frame["signature"],
                "frame": frame,
            }
        )
    return _file(
        "WebSocket auth_handshake (OCP §3.1.1, D2): signature = Ed25519(sk, UTF-8 of "
        "agent_id + timestamp + nonce), concatenated without separators, not pre-hashed.",
        cases,
    )


# --- payload-encryption.json ----------------------------------------------------------


def encryption_vectors() -> Json:
    sender, receiver = ALICE, BOB
    payload: Json = {
        "task_id": "task-" + fixed_uuid("encryption/task"),
        "task_type": "classification",
        "description": "Klassifiziere den Befund — vertraulich",
        "input": {"format": "text/plain", "data": "Patientin, 54 Jahre, Befund unauffällig."},
        "constraints": {"max_duration_seconds": 120, "min_trust_level": 2},
    }
    unsigned = envelope.build_message(
        sender=sender.agent_id,
        receiver=receiver.agent_id,
        message_type="task_request",
        payload=payload,
        now=NOW,
        priority="high",
        message_id=fixed_message_id("encryption/message"),
    )
    ephemeral = X25519KeyPair(label_bytes("encryption/ephemeral"))
    nonce = label_bytes("encryption/nonce", 12)
    receiver_x_public = receiver.key.x25519_public_key()
    receiver_x_private = receiver.key.x25519_private_key()
    encrypted = envelope.encrypt_payload(
        unsigned, receiver_x_public, ephemeral=ephemeral, nonce=nonce
    )
    signed = envelope.sign_message(encrypted, sender.key)

    # Every intermediate value, recomputed here from the primitives.
    shared = x25519(ephemeral.private_key, receiver_x_public)
    assert shared == x25519(receiver_x_private, ephemeral.public_key)
    salt = ephemeral.public_key + receiver_x_public
    aes_key = hkdf_sha256(shared, salt=salt, info=envelope.PAYLOAD_INFO, length=32)
    aad = envelope.message_aad(unsigned)
    plaintext = canonicalize(payload)
    ciphertext = aes256gcm_encrypt(aes_key, nonce, plaintext, aad)
    assert b64url_encode(ciphertext) == encrypted["payload"]
    assert envelope.decrypt_payload(signed, receiver.key) == payload
    digest = envelope.message_digest(signed)
    envelope.verify_message(
        json.dumps(signed).encode(), now=NOW, resolve_keys=lambda _: [sender.public_key]
    )
    unsigned_view = dict(signed) | {"sender": {"agent_id": sender.agent_id}}
    case: Json = {
        "name": "task-request-alice-to-bob",
        "sender_seed": sender.seed.hex(),
        "sender_public_key": sender.public_key.hex(),
        "sender_agent_id": sender.agent_id,
        "receiver_seed": receiver.seed.hex(),
        "receiver_public_key": receiver.public_key.hex(),
        "receiver_agent_id": receiver.agent_id,
        "receiver_x25519_public": receiver_x_public.hex(),
        "receiver_x25519_private": receiver_x_private.hex(),
        "receiver_key_agreement_multibase": multibase_x25519(receiver_x_public),
        "ephemeral_private": ephemeral.private_key.hex(),
        "ephemeral_public": ephemeral.public_key.hex(),
        "shared_secret": shared.hex(),
        "hkdf_salt": salt.hex(),
        "hkdf_info": envelope.PAYLOAD_INFO.decode("ascii"),
        "aes_key": aes_key.hex(),
        "nonce": nonce.hex(),
        "aad": aad.decode("utf-8"),
        "plaintext": plaintext.decode("utf-8"),
        "ciphertext": b64url_encode(ciphertext),
        "payload": payload,
        "unsigned_message": unsigned,
        "encrypted_message": encrypted,
        "canonical_jcs": jcs_text(unsigned_view),
        "digest_sha3_256": digest.hex(),
        "signature": signed["sender"]["signature"],
        "signed_message": signed,
    }
    return _file(
        "Payload encryption (OCP §7.3, D5): ephemeral X25519 ECDH with the receiver's "
        "keyAgreement key, HKDF-SHA256, AES-256-GCM with AAD message_id\\nsender\\nreceiver; "
        "the envelope is signed after encryption.",
        [case],
    )


# --- artifacts.json -----------------------------------------------------------------


def _signer(party: Party) -> Json:
    return party.describe()


def _artifact_case(
    name: str,
    artifact_type: str,
    artifact: Json,
    signers: list[Party],
    *,
    field: str = "signature",
    **extra: object,
) -> Json:
    unsigned = {k: v for k, v in artifact.items() if k != field}
    canonical = canonicalize(unsigned)
    digest = sha3_256(canonical)
    assert digest == artifact_digest(artifact, field=field)
    if field == "signature":
        signatures = [artifact["signature"]]
    else:
        signatures = [artifact[field][p.agent_id] for p in signers]
    for party, signature in zip(signers, signatures, strict=True):
        assert ed25519_verify(party.public_key, digest, b64url_decode(signature))
    return {
        "name": name,
        "artifact_type": artifact_type,
        "signature_field": field,
        "signers": [_signer(p) for p in signers],
        "artifact": artifact,
        "canonical_jcs": canonical.decode("utf-8"),
        "digest_sha3_256": digest.hex(),
        **extra,
    }


def artifact_vectors() -> Json:
    record = sign_artifact(
        {
            "agent_id": ALICE.agent_id,
            "display_name": "Conformance Alice",
            "version": "1.2.0",
            "capabilities": [
                {
                    "id": "cap:nlp:classification",
                    "name": "Text classification",
                    "version": "1.0",
                    "input_formats": ["text/plain"],
                    "output_formats": ["application/json"],
                    "max_input_tokens": 8192,
                }
            ],
            "domains": ["healthcare.oncology"],
            "endpoints": [
                {"transport": "ocp-ws", "url": SERVICE_ENDPOINTS[0], "priority": 1},
                {"transport": "ocp-http", "url": SERVICE_ENDPOINTS[1], "priority": 2},
            ],
            "status": "active",
            "registered_at": ts(NOW),
            "ttl": artifacts.RECORD_DEFAULT_TTL,
            "did_document_url": (
                f"https://registry.example/ocp/v1/registry/agents/{ALICE.agent_id}/did.json"
            ),
        },
        ALICE.key,
    )
    registration = {"record": record, "did_document": _alice_document()}
    artifacts.verify_registration(registration, now=NOW)

    vouch = sign_artifact(
        {
            "vouch_type": "endorsement",
            "attester": BOB.agent_id,
            "subject": ALICE.agent_id,
            "level": "vouch",
            "domains": ["healthcare.oncology"],
            "issued_at": ts(NOW - DAY),
            "expires_at": ts(NOW - DAY + 90 * DAY),
        },
        BOB.key,
    )
    artifacts.check_vouch(vouch, now=NOW)
    vouch_revocation = sign_artifact(
        {
            "revocation_type": "vouch",
            "attester": BOB.agent_id,
            "subject": ALICE.agent_id,
            "vouch_digest": artifacts.vouch_digest(vouch),
            "revoked_at": ts(NOW),
        },
        BOB.key,
    )
    artifacts.check_vouch_revocation(vouch_revocation, vouch, now=NOW)

    bond: Json = {
        "bond_id": "bond-" + fixed_uuid("artifacts/bond"),
        "agents": [ALICE.agent_id, BOB.agent_id],
        "permissions": {
            "knowledge_share": {
                "enabled": True,
                "allowed_types": ["insight", "embedding"],
                "max_payload_bytes": 1_048_576,
            },
            "task_delegate": {"enabled": True, "max_concurrent": 4, "timeout_seconds": 300},
            "model_delta_share": {"enabled": False},
        },
        "established_at": ts(NOW - DAY),
        "expires_at": ts(NOW - DAY + 180 * DAY),
        "renewal": "manual",
    }
    bond = artifacts.sign_bond(bond, ALICE.key, ALICE.agent_id)
    bond = artifacts.sign_bond(bond, BOB.key, BOB.agent_id)
    artifacts.verify_bond(
        bond, {ALICE.agent_id: [ALICE.public_key], BOB.agent_id: [BOB.public_key]}, now=NOW
    )
    bond_revocation = sign_artifact(
        {
            "revocation_type": "bond",
            "bond_id": bond["bond_id"],
            "revoked_by": BOB.agent_id,
            "revoked_at": ts(NOW),
            "reason": "collaboration finished",
        },
        BOB.key,
    )
    artifacts.check_bond_revocation(bond_revocation, bond, now=NOW)

    rationale = "Option A fits the evidence of three independent studies."
    vote = sign_artifact(
        {
            "consensus_id": "con-" + fixed_uuid("artifacts/consensus"),
            "vote": "option_a",
            "confidence": 0.87,
            "rationale_hash": sha3_256(rationale.encode("utf-8")).hex(),
            "voter": CAROL.agent_id,
        },
        CAROL.key,
    )
    artifacts.check_consensus_vote(vote, sender=CAROL.agent_id)

    rating = sign_artifact(
        {
            "rating_type": "interaction",
            "rater": ALICE.agent_id,
            "subject": BOB.agent_id,
            "rating": 0.9,
            "interaction_id": fixed_message_id("message/discovery-ping"),
            "rated_at": ts(NOW),
        },
        ALICE.key,
    )
    artifacts.check_interaction_rating(rating, now=NOW)

    share_index = 1
    share = sign_artifact(
        {
            "share_id": f"share-{ALICE.agent_id.rsplit('-', 1)[1]}-{share_index}",
            "agent_id": ALICE.agent_id,
            "scheme": "shamir-sss-gf256",
            "threshold": 3,
            "total_shares": 5,
            "share_index": share_index,
            # Opaque here: 48 bytes standing for an encrypted 32-byte share and
            # its tag. This case pins the record and its signature only.
            "share_data": b64url_encode(label_bytes("artifacts/share-data", 48)),
            "key_fingerprint": key_fingerprint(ALICE.public_key),
            "created_at": ts(NOW),
            "encryption": {
                "algorithm": "AES-256-GCM",
                "key_exchange": "ECDH-X25519",
                "nonce": b64url_encode(label_bytes("artifacts/share-nonce", 12)),
                "ephemeral_public_key": b64url_encode(
                    X25519KeyPair(label_bytes("artifacts/share-ephemeral")).public_key
                ),
            },
        },
        ALICE.key,
    )
    artifacts.check_recovery_share(share, now=NOW)

    certification = artifacts.sign_certification(
        {
            "certification_type": "certified",
            "certification_id": "cert-" + fixed_uuid("artifacts/certification"),
            "subject": ALICE.agent_id,
            "certifier": multibase_ed25519(CERTIFIER.public_key),
            "level": 4,
            "scope": ["healthcare.oncology"],
            "statement": "Verified against the certification checklist.",
            "issued_at": ts(NOW - DAY),
            "expires_at": ts(NOW - DAY + 365 * DAY),
        },
        CERTIFIER.key,
    )
    artifacts.verify_certification(certification, now=NOW)
    certification_revocation = artifacts.sign_certification_revocation(
        {
            "revocation_type": "certification",
            "certification_id": certification["certification_id"],
            "subject": ALICE.agent_id,
            "certifier": certification["certifier"],
            "revoked_at": ts(NOW),
            "reason": "certification withdrawn",
        },
        CERTIFIER.key,
    )
    artifacts.verify_certification_revocation(certification_revocation, certification, now=NOW)

    cases = [
        _artifact_case("agent-record", "agent-record", record, [ALICE], registration=registration),
        _artifact_case("vouch", "vouch", vouch, [BOB]),
        _artifact_case(
            "vouch-revocation", "vouch-revocation", vouch_revocation, [BOB], revokes=vouch
        ),
        _artifact_case("bond", "bond", bond, [ALICE, BOB], field="signatures"),
        _artifact_case("bond-revocation", "bond-revocation", bond_revocation, [BOB], revokes=bond),
        _artifact_case("consensus-vote", "consensus-vote", vote, [CAROL], rationale_text=rationale),
        _artifact_case("interaction-rating", "interaction-rating", rating, [ALICE]),
        _artifact_case("recovery-share", "recovery-share", share, [ALICE]),
        _artifact_case("certification", "certification", certification, [CERTIFIER]),
        _artifact_case(
            "certification-revocation",
            "certification-revocation",
            certification_revocation,
            [CERTIFIER],
            revokes=certification,
        ),
    ]
    return _file(
        "Signed OCP artifacts (D2): signature = Ed25519(sk, SHA3-256(JCS(artifact without "
        "signature_field))); a bond's two signatures cover the same bytes.",
        cases,
    )


# --- networking.json ----------------------------------------------------------------


def _net_case(
    name: str,
    artifact_type: str,
    artifact: Json,
    signer: Party,
    *,
    signer_field: str,
    unsigned_fields: frozenset[str] = frozenset(),
    **extra: object,
) -> Json:
    body = {k: v for k, v in artifact.items() if k != "signature" and k not in unsigned_fields}
    message = signing_input(artifact_type, body)
    signature = artifact["signature"]
    assert ed25519_verify(signer.public_key, message, b64url_decode(signature))
    return {
        "name": name,
        "artifact_type": artifact_type,
        "signer_seed": signer.seed.hex(),
        "signer_public_key": signer.public_key.hex(),
        "signer_field": signer_field,
        "unsigned_fields": sorted(unsigned_fields),
        "artifact": artifact,
        "signing_input": message.hex(),
        "signature": signature,
        **extra,
    }


def networking_vectors() -> Json:
    a, b = NODE_A, NODE_B
    node_a, node_b = format_node_id(a.public_key), format_node_id(b.public_key)

    identity = netartifacts.build_node_identity(
        a.key, storage_ref="local-file:/var/lib/ocpd/node.key", now=NOW - 30 * DAY
    )
    assert netartifacts.check_node_identity(identity) == a.public_key
    identity_case: Json = {
        "name": "node-identity",
        "artifact_type": netartifacts.NODE_IDENTITY,
        "seed": a.seed.hex(),
        "public_key": a.public_key.hex(),
        "service_agent_id": a.agent_id,
        "artifact": identity,
    }

    advertisement = netartifacts.build_node_advertisement(
        a.key,
        sequence=7,
        endpoints=[
            {"url": "wss://node-a.example:7443/ocp/v1/peer", "transport": "wss", "priority": 0},
            {"url": "wss://[2001:db8::1]:7443/ocp/v1/peer", "transport": "wss", "priority": 10},
        ],
        now=NOW,
        lifetime=DAY,
        succession={"successor/node-id": node_b, "note": "migrating to node b"},
        advertisement_id="adv-" + fixed_uuid("net/advertisement"),
    )
    netartifacts.verify_node_advertisement(advertisement, now=NOW, expected_node_id=node_a)

    e_i = X25519KeyPair(label_bytes("net/session/initiator-ephemeral"))
    e_r = X25519KeyPair(label_bytes("net/session/responder-ephemeral"))
    hello = netartifacts.build_hello(
        a.key,
        session_public=e_i.public_key,
        now=NOW,
        recipient=node_b,
        nonce=label_bytes("net/hello/nonce"),
        capabilities=["core/messaging", "ocp/routing"],
        transport_profile="wss",
        handshake_id="hs-" + fixed_uuid("net/hello"),
    )
    ack = netartifacts.build_ack(
        b.key,
        hello,
        session_public=e_r.public_key,
        now=NOW + 1,
        nonce=label_bytes("net/ack/nonce"),
        capabilities=["core/messaging", "registry/gossip"],
        transport_profile="wss",
        handshake_id="hs-" + fixed_uuid("net/ack"),
    )
    netartifacts.verify_handshake(hello, now=NOW, local_node_id=node_b)
    netartifacts.verify_handshake(ack, now=NOW + 1, local_node_id=node_a)
    netartifacts.verify_ack_binding(ack, hello)

    capabilities = netartifacts.build_capability_advertisement(
        a.key,
        now=NOW + 2,
        capabilities=("core/messaging", "ocp/routing", "registry/gossip"),
        messages=(netartifacts.SIGNAL_MARKER_ENVELOPE, "ocp/message"),
        transports=("wss",),
        roles=("relay",),
        surfaces=("ocp/v1/messages",),
        advertisement_id="capadv-" + fixed_uuid("net/capabilities"),
    )
    netartifacts.verify_capability_advertisement(capabilities, expected_node_id=node_a)

    marker = netartifacts.build_signal_marker(
        a.key,
        kind="presence/online",
        now=NOW + 3,
        body="ready · bereit",
        marker_id="sm-" + fixed_uuid("net/marker"),
    )
    marker_envelope = netartifacts.build_signal_marker_envelope(
        a.key,
        marker,
        sender_node_id=node_a,
        now=NOW + 4,
        recipient_node_id=node_b,
        envelope_id="sme-" + fixed_uuid("net/marker-envelope"),
    )
    netartifacts.verify_signal_marker_envelope(marker_envelope, now=NOW + 4, session_peer=node_a)

    handshake_unsigned = netartifacts.HANDSHAKE_UNSIGNED
    cases = [
        identity_case,
        _net_case(
            "node-advertisement",
            netartifacts.ADVERTISEMENT,
            advertisement,
            a,
            signer_field="node/id",
        ),
        _net_case(
            "hello",
            netartifacts.PEER_HANDSHAKE,
            hello,
            a,
            signer_field="sender/node-id",
            unsigned_fields=handshake_unsigned,
        ),
        _net_case(
            "ack",
            netartifacts.PEER_HANDSHAKE,
            ack,
            b,
            signer_field="sender/node-id",
            unsigned_fields=handshake_unsigned,
        ),
        _net_case(
            "capability-advertisement",
            netartifacts.CAPABILITY_ADVERTISEMENT,
            capabilities,
            a,
            signer_field="node/id",
        ),
        _net_case(
            "signal-marker",
            netartifacts.SIGNAL_MARKER,
            marker,
            a,
            signer_field="participant/id",
        ),
        _net_case(
            "signal-marker-envelope",
            netartifacts.SIGNAL_MARKER_ENVELOPE,
            marker_envelope,
            a,
            signer_field="participant/id",
        ),
        _session_case(hello, ack, e_i, e_r),
    ]
    return _file(
        "Node networking artifacts (NET, D8): signature = Ed25519(sk, <type> || 0x00 || "
        "deterministic CBOR of the artifact without signature), not pre-hashed; and the "
        "peer session key schedule.",
        cases,
    )


def _session_case(hello: Json, ack: Json, e_i: X25519KeyPair, e_r: X25519KeyPair) -> Json:
    a, b = NODE_A, NODE_B
    initiator = netartifacts.derive_session_keys(
        initiator=True,
        ephemeral_private=e_i.private_key,
        peer_ephemeral_public=e_r.public_key,
        static_key=a.key,
        peer_static_public=b.public_key,
        hello=hello,
        ack=ack,
    )
    responder = netartifacts.derive_session_keys(
        initiator=False,
        ephemeral_private=e_r.private_key,
        peer_ephemeral_public=e_i.public_key,
        static_key=b.key,
        peer_static_public=a.public_key,
        hello=hello,
        ack=ack,
    )
    assert initiator.send_key == responder.receive_key
    assert initiator.receive_key == responder.send_key
    dh_ee = x25519(e_i.private_key, e_r.public_key)
    dh_ss = x25519(a.key.x25519_private_key(), b.key.x25519_public_key())
    transcript = b"".join(
        encode_deterministic(
            {k: v for k, v in h.items() if k not in netartifacts.HANDSHAKE_UNSIGNED}
        )
        for h in (hello, ack)
    )
    salt = sha3_256(transcript)
    okm = hkdf_sha256(dh_ee + dh_ss, salt=salt, info=netartifacts.SESSION_INFO, length=64)
    assert okm == initiator.send_key + initiator.receive_key
    return {
        "name": "session-keys",
        "initiator_seed": a.seed.hex(),
        "initiator_public_key": a.public_key.hex(),
        "initiator_static_x25519_public": a.key.x25519_public_key().hex(),
        "initiator_static_x25519_private": a.key.x25519_private_key().hex(),
        "initiator_ephemeral_private": e_i.private_key.hex(),
        "initiator_ephemeral_public": e_i.public_key.hex(),
        "responder_seed": b.seed.hex(),
        "responder_public_key": b.public_key.hex(),
        "responder_static_x25519_public": b.key.x25519_public_key().hex(),
        "responder_static_x25519_private": b.key.x25519_private_key().hex(),
        "responder_ephemeral_private": e_r.private_key.hex(),
        "responder_ephemeral_public": e_r.public_key.hex(),
        "hello": hello,
        "ack": ack,
        "transcript_unsigned_fields": sorted(netartifacts.HANDSHAKE_UNSIGNED),
        "transcript": transcript.hex(),
        "dh_ephemeral": dh_ee.hex(),
        "dh_static": dh_ss.hex(),
        "hkdf_ikm": (dh_ee + dh_ss).hex(),
        "transcript_salt": salt.hex(),
        "hkdf_info": netartifacts.SESSION_INFO.decode("ascii"),
        "hkdf_okm": okm.hex(),
        "initiator_send_key": initiator.send_key.hex(),
        "initiator_receive_key": initiator.receive_key.hex(),
        "aead": "ChaCha20-Poly1305",
        "frame_aad": peer.FRAME_AAD.decode("ascii"),
        "frames": _session_frames(initiator, responder),
    }


def _session_frames(
    initiator: netartifacts.SessionKeys, responder: netartifacts.SessionKeys
) -> list[Json]:
    """The first frames each way: a control frame (kind 0x00) and a message (kind 0x01)."""
    plain = [
        ("initiator", b'\x00{"n":1,"type":"ping"}'),
        ("initiator", b'\x01{"message_id":"msg-00000000-0000-4000-8000-000000000001"}'),
        ("responder", b'\x00{"n":1,"type":"pong"}'),
    ]
    ciphers = {"initiator": peer.FrameCipher(initiator), "responder": peer.FrameCipher(responder)}
    openers = {"initiator": peer.FrameCipher(responder), "responder": peer.FrameCipher(initiator)}
    frames: list[Json] = []
    for sender, plaintext in plain:
        counter = ciphers[sender].sent
        frame = ciphers[sender].seal(plaintext)
        assert openers[sender].open(frame) == plaintext
        frames.append(
            {
                "from": sender,
                "counter": counter,
                "nonce": peer.frame_nonce(counter).hex(),
                "plaintext": plaintext.hex(),
                "frame": frame.hex(),
            }
        )
    return frames


# --- shamir.json --------------------------------------------------------------------


def _fixed_random(randomness: bytes) -> Callable[[int], bytes]:
    """A randomness source that must be asked for exactly ``randomness``, once."""
    calls: list[int] = []

    def random(size: int) -> bytes:
        assert not calls, "split asks for its randomness once"
        assert size == len(randomness), "randomness of the documented length"
        calls.append(size)
        return randomness

    return random


def _wire_share(share: shamir.Share) -> Json:
    return {"share_index": share.index, "share_data": shamir.encode_share_data(share)}


def _shamir_split_case(
    name: str,
    description: str,
    party: Party,
    threshold: int,
    total: int,
    subsets: list[list[int]],
    randomness: bytes | None = None,
) -> Json:
    secret = party.seed
    length = len(secret)
    if randomness is None:
        randomness = label_bytes(f"shamir/{name}", (threshold - 1) * length)
    shares = shamir.split(secret, threshold, total, random=_fixed_random(randomness))
    by_index = {share.index: share for share in shares}
    checked: list[Json] = []
    for indices in subsets:
        combined = shamir.combine([by_index[i] for i in indices])
        equals = combined == secret
        assert equals or len(indices) < threshold, "every t-subset recovers the secret"
        checked.append(
            {"share_indices": indices, "combined": combined.hex(), "equals_secret": equals}
        )
    return {
        "name": name,
        "kind": "split",
        "description": description,
        "secret": secret.hex(),
        "public_key": party.public_key.hex(),
        "agent_id": party.agent_id,
        "key_fingerprint": key_fingerprint(party.public_key),
        "threshold": threshold,
        "total_shares": total,
        "randomness": randomness.hex(),
        "coefficients": [
            randomness[k * length : (k + 1) * length].hex() for k in range(threshold - 1)
        ],
        "shares": [_wire_share(share) for share in shares],
        "subsets": checked,
    }


def _subsets(total: int, smallest: int = 2) -> list[list[int]]:
    indices = range(1, total + 1)
    return [
        list(chosen)
        for size in range(smallest, total + 1)
        for chosen in itertools.combinations(indices, size)
    ]


def _shamir_field_case() -> Json:
    products = [
        (0x53, 0xCA),  # inverses of each other
        (0x57, 0x83),  # FIPS 197 §4.2
        (0x57, 0x13),  # FIPS 197 §4.2.1
        (0x02, 0x80),  # x * x^7 = x^8, reduced
        (0x80, 0x80),
        (0xFF, 0xFF),
        (0x00, 0xA7),
        (0x01, 0xA7),
    ]
    values = np.arange(256, dtype=np.uint8)
    inverses = shamir.gf_inv(values)
    assert all(shamir.gf_mul(values[1:], inverses[1:]) == 1)
    return {
        "name": "gf256-arithmetic",
        "kind": "field",
        "description": "GF(2^8) modulo x^8 + x^4 + x^3 + x + 1: products, and the inverse "
        "of every byte (0 has none; the table gives 0 for it).",
        "polynomial": f"{shamir.POLYNOMIAL:03x}",
        "products": [
            {"a": f"{a:02x}", "b": f"{b:02x}", "product": f"{int(shamir.gf_mul(a, b)):02x}"}
            for a, b in products
        ],
        "inverse_table": inverses.tobytes().hex(),
    }


def _shamir_invalid_split(
    name: str, threshold: int, total: int, reason: str, secret: bytes = ALICE.seed
) -> Json:
    try:
        shamir.split(secret, threshold, total, random=_fixed_random(b""))
    except MalformedError:
        pass
    else:  # pragma: no cover - the generator only publishes real refusals
        raise AssertionError(f"{name} was accepted")
    return {
        "name": name,
        "kind": "invalid-split",
        "secret": secret.hex(),
        "threshold": threshold,
        "total_shares": total,
        "reason": reason,
    }


def _shamir_invalid_combine(name: str, shares: list[Json], reason: str) -> Json:
    parsed = [
        shamir.Share(s["share_index"], b64url_decode(s["share_data"], field="share_data"))
        for s in shares
    ]
    try:
        shamir.combine(parsed)
    except MalformedError:
        pass
    else:  # pragma: no cover
        raise AssertionError(f"{name} was accepted")
    return {"name": name, "kind": "invalid-combine", "shares": shares, "reason": reason}


def shamir_vectors() -> Json:
    dealt = _shamir_split_case(
        "seed-3-of-5",
        "The recommended defaults (t = 3, n = 5) for alice's signing key: every subset of "
        "2 to 5 shares, the 3-subsets and larger recover the seed.",
        ALICE,
        3,
        5,
        _subsets(5),
    )
    cases = [
        _shamir_field_case(),
        dealt,
        _shamir_split_case(
            "seed-2-of-3",
            "The smallest parameters allowed (t = 2, n = 3).",
            BOB,
            2,
            3,
            _subsets(3),
        ),
        _shamir_split_case(
            "seed-5-of-5",
            "t = n: only all five shares recover the seed.",
            CAROL,
            5,
            5,
            _subsets(5, smallest=4),
        ),
        _shamir_split_case(
            "seed-16-of-255",
            "The largest number of shares, x up to 255.",
            ALICE_KEY_2,
            16,
            255,
            [
                list(range(1, 17)),
                list(range(240, 256)),
                list(range(1, 256, 16)),
                list(range(255, 0, -16)),
                list(range(1, 256)),
                list(range(241, 256)),
            ],
        ),
        _shamir_split_case(
            "zero-coefficients",
            "Coefficients are uniform over all 256 values, the leading one included: with all "
            "of them 0 every share is the seed itself (so here even 2 shares interpolate to it).",
            ALICE,
            3,
            5,
            [[1, 2, 3], [3, 4, 5], [2, 5]],
            randomness=bytes(64),
        ),
    ]
    cases += [
        _shamir_invalid_split("invalid-threshold-1", 1, 5, "a threshold of 1 is prohibited"),
        _shamir_invalid_split("invalid-threshold-0", 0, 5, "the threshold is at least 2"),
        _shamir_invalid_split("invalid-threshold-above-total", 6, 5, "t must not exceed n"),
        _shamir_invalid_split("invalid-total-2", 2, 2, "n is at least 3"),
        _shamir_invalid_split("invalid-total-256", 3, 256, "n is at most 255"),
        _shamir_invalid_split("invalid-empty-secret", 3, 5, "nothing to share", secret=b""),
    ]
    one, two, three = dealt["shares"][:3]
    short = {"share_index": 3, "share_data": b64url_encode(label_bytes("shamir/short", 31))}
    cases += [
        _shamir_invalid_combine("invalid-no-shares", [], "nothing to interpolate"),
        _shamir_invalid_combine("invalid-one-share", [one], "at least 2 shares"),
        _shamir_invalid_combine(
            "invalid-duplicate-index", [one, two, three, two], "share_index 2 twice (same data)"
        ),
        _shamir_invalid_combine(
            "invalid-duplicate-index-other-data",
            [one, two, three | {"share_index": 2}],
            "share_index 2 twice (different data)",
        ),
        _shamir_invalid_combine(
            "invalid-zero-index",
            [one, two, three | {"share_index": 0}],
            "x = 0 is where the secret sits",
        ),
        _shamir_invalid_combine(
            "invalid-index-256", [one, two, three | {"share_index": 256}], "x is a byte: 1..255"
        ),
        _shamir_invalid_combine("invalid-mixed-lengths", [one, two, short], "31 and 32 bytes"),
    ]
    return _file(
        "Shamir secret sharing of Ed25519 seeds over GF(2^8) (OCP §8.3, D9): AES polynomial "
        "0x11B, x = share_index 1..n, share_data = base64url of the y-bytes; coefficients "
        "from fixed randomness; Lagrange interpolation at 0.",
        cases,
    )


# --- recovery.json ------------------------------------------------------------------

# Five custodians, each the did:ocp service agent of its own fixed key (D9).
CUSTODIANS: Final = tuple(Party(label_bytes(f"custodian/{n}")) for n in range(1, 6))
RECOVERY_THRESHOLD: Final = 3
# The recovery key of alice's DID document (did-document.json, #recovery-key-1).
RECOVERY_KEY_ID: Final = f"{ALICE.agent_id}#recovery-key-1"
WRONG_RECOVERY_KEY: Final = Party(label_bytes("recovery/wrong-recovery-key"))


class _Draws:
    """A randomness source that must be asked for exactly ``chunks``, in that order."""

    def __init__(self, chunks: list[bytes]) -> None:
        self._chunks = chunks
        self._next = 0

    def __call__(self, size: int) -> bytes:
        assert self._next < len(self._chunks), "more randomness asked for than documented"
        chunk = self._chunks[self._next]
        assert size == len(chunk), "randomness of the documented length, in the documented order"
        self._next += 1
        return chunk

    def exhausted(self) -> bool:
        return self._next == len(self._chunks)


def _custodian(party: Party) -> recovery.Custodian:
    return recovery.Custodian(party.agent_id, party.key.x25519_public_key())


def _x25519_party(party: Party) -> Json:
    return {
        **party.describe(),
        "x25519_public": party.key.x25519_public_key().hex(),
        "x25519_private": party.key.x25519_private_key().hex(),
    }


def _share_key(shared: bytes, ephemeral_public: bytes, static_public: bytes) -> tuple[bytes, bytes]:
    """``(salt, key)`` of both recovery seals, from the primitives."""
    salt = ephemeral_public + static_public
    return salt, hkdf_sha256(shared, salt=salt, info=recovery.SHARE_INFO, length=32)


def _recovery_deposit() -> tuple[Json, list[Json], list[shamir.Share]]:
    """The deposit case, the signed records and the plaintext shares."""
    agent, total = ALICE, len(CUSTODIANS)
    fingerprint = key_fingerprint(agent.public_key)
    created_at = ts(NOW)
    # The randomness of shamir.json's seed-3-of-5: the plaintext shares are that case's.
    randomness = label_bytes("shamir/seed-3-of-5", (RECOVERY_THRESHOLD - 1) * 32)
    indices = range(1, total + 1)
    ephemerals = [X25519KeyPair(label_bytes(f"recovery/deposit-{i}/ephemeral")) for i in indices]
    nonces = [label_bytes(f"recovery/deposit-{i}/nonce", 12) for i in indices]
    draws = [randomness]
    for ephemeral, nonce in zip(ephemerals, nonces, strict=True):
        draws += [ephemeral.private_key, nonce]
    source = _Draws(draws)
    records = recovery.make_share_records(
        agent.key,
        agent_id=agent.agent_id,
        custodians=[_custodian(c) for c in CUSTODIANS],
        threshold=RECOVERY_THRESHOLD,
        created_at=created_at,
        random=source,
    )
    assert source.exhausted(), "make_share_records used all the documented randomness"
    shares = shamir.split(agent.seed, RECOVERY_THRESHOLD, total, random=_fixed_random(randomness))
    recovery_public = b64url_encode(ALICE_RECOVERY.public_key)
    entries: list[Json] = []
    for record, share, custodian, ephemeral, nonce in zip(
        records, shares, CUSTODIANS, ephemerals, nonces, strict=True
    ):
        x_public = custodian.key.x25519_public_key()
        shared = x25519(ephemeral.private_key, x_public)
        assert shared == x25519(custodian.key.x25519_private_key(), ephemeral.public_key)
        salt, aes_key = _share_key(shared, ephemeral.public_key, x_public)
        share_id = f"share-{agent.agent_id.rsplit('-', 1)[1]}-{share.index}"
        aad = f"{share_id}\n{agent.agent_id}\n{custodian.agent_id}".encode()
        assert aad == recovery.deposit_aad(share_id, agent.agent_id, custodian.agent_id)
        sealed = aes256gcm_encrypt(aes_key, nonce, share.data, aad)
        assert record["share_id"] == share_id
        assert record["share_data"] == b64url_encode(sealed)
        assert record["encryption"]["nonce"] == b64url_encode(nonce)
        assert record["encryption"]["ephemeral_public_key"] == b64url_encode(ephemeral.public_key)
        recovery.verify_share_record(record, agent.public_key, now=NOW)
        assert recovery.open_share_record(record, custodian.key, custodian.agent_id) == share
        unsigned = {k: v for k, v in record.items() if k != "signature"}
        deposit = {"share": record, "recovery_public_key": recovery_public}
        entries.append(
            {
                "share_index": share.index,
                "share_id": share_id,
                "custodian": _x25519_party(custodian),
                "plaintext": share.data.hex(),
                "ephemeral_private": ephemeral.private_key.hex(),
                "ephemeral_public": ephemeral.public_key.hex(),
                "shared_secret": shared.hex(),
                "hkdf_salt": salt.hex(),
                "hkdf_info": recovery.SHARE_INFO.decode("ascii"),
                "aes_key": aes_key.hex(),
                "nonce": nonce.hex(),
                "aad": aad.decode("utf-8"),
                "ciphertext": b64url_encode(sealed),
                "record": record,
                "canonical_jcs": jcs_text(unsigned),
                "digest_sha3_256": artifact_digest(record).hex(),
                "signature": record["signature"],
                "deposit_payload": deposit,
            }
        )
    case: Json = {
        "name": "deposit-3-of-5",
        "kind": "deposit",
        "description": "alice splits her seed 3 of 5 and seals one signed Recovery Share "
        "Record to each custodian's keyAgreement key; the recovery key is pinned with it",
        **agent.describe(),
        "key_fingerprint": fingerprint,
        "recovery_seed": ALICE_RECOVERY.seed.hex(),
        "recovery_public_key": ALICE_RECOVERY.public_key.hex(),
        "threshold": RECOVERY_THRESHOLD,
        "total_shares": total,
        "created_at": created_at,
        "randomness": randomness.hex(),
        "coefficients": [
            randomness[k * 32 : (k + 1) * 32].hex() for k in range(RECOVERY_THRESHOLD - 1)
        ],
        "random_draws": [d.hex() for d in draws],
        "shares": entries,
    }
    return case, records, shares


def _proof(signer: Party, ephemeral: X25519KeyPair) -> tuple[bytes, Json]:
    """The proof bytes and a ``recovery_request`` payload signed by ``signer``."""
    fingerprint = key_fingerprint(ALICE.public_key)
    signed = (ALICE.agent_id + fingerprint + b64url_encode(ephemeral.public_key)).encode()
    payload = recovery.recovery_request_payload(
        agent_id=ALICE.agent_id,
        fingerprint=fingerprint,
        ephemeral=ephemeral,
        recovery_key=signer.key,
        recovery_key_id=RECOVERY_KEY_ID,
    )
    assert (
        recovery.proof_bytes(
            payload["agent_id"], payload["key_fingerprint"], payload["ephemeral_public_key"]
        )
        == signed
    )
    assert b64url_decode(payload["proof"]["signature"]) == signer.key.sign(signed)
    return signed, payload


def _recovery_request(ephemeral: X25519KeyPair) -> tuple[Json, Json]:
    signed, payload = _proof(ALICE_RECOVERY, ephemeral)
    recovery.verify_proof(payload, ALICE_RECOVERY.public_key)
    case: Json = {
        "name": "recovery-request",
        "kind": "request",
        "description": "alice, without her signing key, asks for her shares back: a fresh "
        "ephemeral X25519 key, proved by her recovery key",
        "agent_id": ALICE.agent_id,
        "key_fingerprint": key_fingerprint(ALICE.public_key),
        "ephemeral_private": ephemeral.private_key.hex(),
        "ephemeral_public": ephemeral.public_key.hex(),
        "recovery_seed": ALICE_RECOVERY.seed.hex(),
        "recovery_public_key": ALICE_RECOVERY.public_key.hex(),
        "recovery_key_id": RECOVERY_KEY_ID,
        "proof_bytes": signed.decode("utf-8"),
        "signature": payload["proof"]["signature"],
        "payload": payload,
    }
    return case, payload


def _response_values(
    share: shamir.Share, custodian: Party, ephemeral: X25519KeyPair, agent_id: str, nonce: bytes
) -> tuple[Json, Json]:
    """A custodian's response sealed to ``ephemeral``, its AAD naming ``agent_id``."""
    fingerprint = key_fingerprint(ALICE.public_key)
    x_public = custodian.key.x25519_public_key()
    shared = x25519(custodian.key.x25519_private_key(), ephemeral.public_key)
    assert shared == x25519(ephemeral.private_key, x_public)
    salt, aes_key = _share_key(shared, ephemeral.public_key, x_public)
    aad = f"{agent_id}\n{fingerprint}\n{share.index}\n{custodian.agent_id}".encode()
    assert aad == recovery.response_aad(agent_id, fingerprint, share.index, custodian.agent_id)
    sealed = aes256gcm_encrypt(aes_key, nonce, share.data, aad)
    payload = recovery.seal_share_response(
        share,
        agent_id=agent_id,
        fingerprint=fingerprint,
        custodian_key=custodian.key,
        custodian_id=custodian.agent_id,
        ephemeral_public_key=ephemeral.public_key,
        nonce=nonce,
    )
    assert payload["encrypted_share"] == b64url_encode(sealed)
    values: Json = {
        "share_index": share.index,
        "custodian": _x25519_party(custodian),
        "plaintext": share.data.hex(),
        "nonce": nonce.hex(),
        "shared_secret": shared.hex(),
        "hkdf_salt": salt.hex(),
        "hkdf_info": recovery.SHARE_INFO.decode("ascii"),
        "aes_key": aes_key.hex(),
        "aad": aad.decode("utf-8"),
        "encrypted_share": b64url_encode(sealed),
    }
    return values, payload


def _recovery_responses(
    records: list[Json], ephemeral: X25519KeyPair
) -> tuple[Json, list[shamir.Share]]:
    fingerprint = key_fingerprint(ALICE.public_key)
    entries: list[Json] = []
    opened: list[shamir.Share] = []
    for record, custodian in zip(records, CUSTODIANS, strict=True):
        share = recovery.open_share_record(record, custodian.key, custodian.agent_id)
        nonce = label_bytes(f"recovery/response-{share.index}/nonce", 12)
        values, payload = _response_values(share, custodian, ephemeral, ALICE.agent_id, nonce)
        back = recovery.open_share_response(
            payload, ephemeral=ephemeral, fingerprint=fingerprint, custodian=_custodian(custodian)
        )
        assert back == share
        opened.append(back)
        entries.append(values | {"payload": payload, "opened_share": _wire_share(back)})
    case: Json = {
        "name": "share-responses",
        "kind": "responses",
        "description": "each custodian opens its record and seals the share again to the "
        "request's ephemeral key (ECDH of its keyAgreement key with it); alice opens them",
        "agent_id": ALICE.agent_id,
        "key_fingerprint": fingerprint,
        "ephemeral_public": ephemeral.public_key.hex(),
        "responses": entries,
    }
    return case, opened


def _tampered(share: shamir.Share) -> shamir.Share:
    """``share`` with its first byte flipped in the lowest bit."""
    return shamir.Share(share.index, bytes([share.data[0] ^ 0x01]) + share.data[1:])


def _rebuild_subsets(shares: list[shamir.Share], fingerprint: str) -> list[Json]:
    subsets = []
    for subset in itertools.combinations(shares, RECOVERY_THRESHOLD):
        combined = shamir.combine(list(subset))
        derived = key_fingerprint(SigningKey(combined).public_key)
        subsets.append(
            {
                "share_indices": [s.index for s in subset],
                "combined": combined.hex(),
                "key_fingerprint": derived,
                "matches": derived == fingerprint,
            }
        )
    return subsets


def _rebuild_case(
    name: str, description: str, shares: list[shamir.Share], tampered: shamir.Share | None
) -> Json:
    fingerprint = key_fingerprint(ALICE.public_key)
    given = [tampered if tampered and s.index == tampered.index else s for s in shares]
    case: Json = {
        "name": name,
        "description": description,
        "threshold": RECOVERY_THRESHOLD,
        "key_fingerprint": fingerprint,
        "shares": [_wire_share(s) for s in given],
    }
    if tampered is not None:
        [original] = [s for s in shares if s.index == tampered.index]
        case["tampered"] = {
            "share_index": tampered.index,
            "original_share_data": shamir.encode_share_data(original),
            "share_data": shamir.encode_share_data(tampered),
        }
    case["subsets"] = _rebuild_subsets(given, fingerprint)
    try:
        rebuilt = recovery.recover_key(given, threshold=RECOVERY_THRESHOLD, fingerprint=fingerprint)
    except recovery.RecoveryFailed as exc:
        assert all(not s["matches"] for s in case["subsets"])
        return case | {"kind": "invalid-rebuild", "reason": exc.details["reason"]}
    assert rebuilt.key.seed() == ALICE.seed
    return case | {
        "kind": "rebuild",
        "seed": rebuilt.key.seed().hex(),
        "public_key": rebuilt.key.public_key.hex(),
        "agent_id": ALICE.agent_id,
        "agreeing": list(rebuilt.agreeing),
        "disagreeing": list(rebuilt.disagreeing),
    }


def _wrong_custodian_case(
    name: str, description: str, record: Json, opener: Party, aad_custodian: Party
) -> Json:
    """``record`` opened with ``opener``'s key and ``aad_custodian``'s id: it must not open."""
    encryption = record["encryption"]
    ephemeral_public = b64url_decode(encryption["ephemeral_public_key"])
    x_public = opener.key.x25519_public_key()
    shared = x25519(opener.key.x25519_private_key(), ephemeral_public)
    salt, aes_key = _share_key(shared, ephemeral_public, x_public)
    aad = recovery.deposit_aad(record["share_id"], record["agent_id"], aad_custodian.agent_id)
    try:
        aes256gcm_decrypt(
            aes_key, b64url_decode(encryption["nonce"]), b64url_decode(record["share_data"]), aad
        )
    except DecryptionFailed:
        pass
    else:  # pragma: no cover - the generator only publishes real refusals
        raise AssertionError(f"{name} opened")
    try:
        recovery.open_share_record(record, opener.key, aad_custodian.agent_id)
    except AuthError:
        pass
    else:  # pragma: no cover
        raise AssertionError(f"{name} opened")
    return {
        "name": name,
        "kind": "invalid-open-deposit",
        "description": description,
        "share_index": record["share_index"],
        "record": record,
        "opener": _x25519_party(opener),
        "aad_custodian_id": aad_custodian.agent_id,
        "shared_secret": shared.hex(),
        "hkdf_salt": salt.hex(),
        "hkdf_info": recovery.SHARE_INFO.decode("ascii"),
        "aes_key": aes_key.hex(),
        "aad": aad.decode("utf-8"),
    }


def _wrong_proof_case(ephemeral: X25519KeyPair) -> Json:
    signed, payload = _proof(WRONG_RECOVERY_KEY, ephemeral)
    try:
        recovery.verify_proof(payload, ALICE_RECOVERY.public_key)
    except AuthError:
        pass
    else:  # pragma: no cover
        raise AssertionError("a proof by the wrong recovery key was accepted")
    recovery.verify_proof(payload, WRONG_RECOVERY_KEY.public_key)
    return {
        "name": "invalid-proof-wrong-recovery-key",
        "kind": "invalid-proof",
        "description": "the same request signed by another key than the recovery key pinned "
        "at deposit: a valid signature, by the wrong key",
        "pinned_recovery_public_key": ALICE_RECOVERY.public_key.hex(),
        "signer_seed": WRONG_RECOVERY_KEY.seed.hex(),
        "signer_public_key": WRONG_RECOVERY_KEY.public_key.hex(),
        "proof_bytes": signed.decode("utf-8"),
        "signature": payload["proof"]["signature"],
        "payload": payload,
    }


def _response_other_agent_case(share: shamir.Share, ephemeral: X25519KeyPair) -> Json:
    custodian = CUSTODIANS[share.index - 1]
    nonce = label_bytes("recovery/response-other-agent/nonce", 12)
    values, sealed = _response_values(share, custodian, ephemeral, BOB.agent_id, nonce)
    payload = sealed | {"agent_id": ALICE.agent_id}
    fingerprint = key_fingerprint(ALICE.public_key)
    expected = recovery.response_aad(ALICE.agent_id, fingerprint, share.index, custodian.agent_id)
    try:
        recovery.open_share_response(
            payload, ephemeral=ephemeral, fingerprint=fingerprint, custodian=_custodian(custodian)
        )
    except AuthError:
        pass
    else:  # pragma: no cover
        raise AssertionError("a response sealed for another agent opened")
    values["sealed_aad"] = values.pop("aad")
    return {
        "name": "invalid-response-aad-other-agent",
        "kind": "invalid-open-response",
        "description": "a response sealed with additional data naming bob, presented as "
        "alice's (payload agent_id alice): the right key, the wrong AAD",
        **values,
        "ephemeral_private": ephemeral.private_key.hex(),
        "ephemeral_public": ephemeral.public_key.hex(),
        "expected_aad": expected.decode("utf-8"),
        "payload": payload,
    }


def recovery_vectors() -> Json:
    deposit, records, shares = _recovery_deposit()
    ephemeral = X25519KeyPair(label_bytes("recovery/request-ephemeral"))
    request, _ = _recovery_request(ephemeral)
    responses, opened = _recovery_responses(records, ephemeral)
    assert opened == shares
    by_index = {s.index: s for s in opened}
    cases = [
        deposit,
        request,
        responses,
        _rebuild_case(
            "rebuild-from-3-shares",
            "three returned shares (2, 4, 5) rebuild the seed, and its key has the fingerprint",
            [by_index[i] for i in (2, 4, 5)],
            None,
        ),
        _rebuild_case(
            "rebuild-from-4-shares-one-tampered",
            "four returned shares, share 3 altered in one bit: the subset without it rebuilds "
            "the key, and share 3 is named as disagreeing",
            [by_index[i] for i in (1, 2, 3, 4)],
            _tampered(by_index[3]),
        ),
        _rebuild_case(
            "invalid-rebuild-3-shares-one-tampered",
            "exactly three shares, share 3 altered: the result's fingerprint differs, so "
            "recovery fails (with t shares a wrong one can only be noticed)",
            [by_index[i] for i in (1, 2, 3)],
            _tampered(by_index[3]),
        ),
        _wrong_custodian_case(
            "invalid-deposit-opened-by-other-custodian",
            "custodian 1's record opened with custodian 2's key and id",
            records[0],
            CUSTODIANS[1],
            CUSTODIANS[1],
        ),
        _wrong_custodian_case(
            "invalid-deposit-other-custodian-id",
            "custodian 1's record opened with custodian 1's key but custodian 2's id in the "
            "additional data",
            records[0],
            CUSTODIANS[0],
            CUSTODIANS[1],
        ),
        _wrong_proof_case(ephemeral),
        _response_other_agent_case(by_index[1], ephemeral),
    ]
    return _file(
        "Key recovery (OCP §8.3, D5, D9): Recovery Share Records sealed to custodians "
        "(X25519 ECDH, HKDF-SHA256 info 'OCP-1.0 recovery-share AES-256-GCM', AES-256-GCM "
        "with AAD share_id\\nagent_id\\ncustodian_id), the recovery-key proof, custodian "
        "responses sealed to the request's ephemeral key, rebuilding with the fingerprint "
        "check and a disagreeing share, and refusals.",
        cases,
    )


# --- assembly -----------------------------------------------------------------------

BUILDERS: Final[dict[str, Callable[[], Json]]] = {
    "did-ocp.json": did_ocp_vectors,
    "did-key.json": did_key_vectors,
    "did-document.json": did_document_vectors,
    "message-signing.json": message_vectors,
    "http-authorization.json": http_vectors,
    "ws-auth.json": ws_auth_vectors,
    "payload-encryption.json": encryption_vectors,
    "artifacts.json": artifact_vectors,
    "networking.json": networking_vectors,
    "shamir.json": shamir_vectors,
    "recovery.json": recovery_vectors,
}


def manifest(files: Mapping[str, bytes]) -> Json:
    return {
        "format": MANIFEST_FORMAT,
        "files": {name: hashlib.sha256(data).hexdigest() for name, data in sorted(files.items())},
    }


def build_vectors() -> dict[str, bytes]:
    """Every vector file, ``{file name: bytes}``, including ``MANIFEST.json``; writes nothing."""
    files = {name: dump_json(build()) for name, build in BUILDERS.items()}
    files[MANIFEST] = dump_json(manifest(files))
    return files


def write_vectors(directory: Path = VECTORS_DIR) -> list[str]:
    """Write the vectors into ``directory``; returns the names of files that changed.

    JSON files that the generator no longer produces are removed, so the
    manifest always lists exactly the JSON files present.
    """
    directory.mkdir(parents=True, exist_ok=True)
    files = build_vectors()
    changed = []
    for name, data in files.items():
        path = directory / name
        if not path.exists() or path.read_bytes() != data:
            path.write_bytes(data)
            changed.append(name)
    for stale in sorted(directory.glob("*.json")):
        if stale.name not in files:
            stale.unlink()
            changed.append(stale.name)
    return changed


def stale_files(directory: Path = VECTORS_DIR) -> list[str]:
    """Names of vector files that differ from (or are missing next to) the generated ones."""
    files = build_vectors()
    present = {p.name for p in directory.glob("*.json")}
    differ = [
        name
        for name, data in files.items()
        if not (directory / name).exists() or (directory / name).read_bytes() != data
    ]
    return sorted(set(differ) | (present - set(files)))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m conformance.generate",
        description="Generate ocpd's conformance vectors into conformance/vectors/.",
    )
    parser.add_argument(
        "--check", action="store_true", help="only compare; exit 1 if any file is stale"
    )
    parser.add_argument("--out", type=Path, default=VECTORS_DIR, help="output directory")
    args = parser.parse_args(argv)
    if args.check:
        stale = stale_files(args.out)
        for name in stale:
            print(f"stale: {name}", file=sys.stderr)
        return 1 if stale else 0
    changed = write_vectors(args.out)
    print(f"{len(changed)} file(s) updated in {args.out}" if changed else "vectors up to date")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
