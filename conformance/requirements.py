# ruff: noqa: E501 - the table below is one requirement per line, on purpose
"""The requirements the conformance suite knows, for every level, as data.

One line per requirement: an id, the conformance level it belongs to (OCP
§11.1), its strength (RFC 2119 MUST or SHOULD), a one-line title and the
section it comes from. ``OCP §`` is the OCP Technical Specification, ``Docker §``
the Docker specification, ``NET FR-`` the node networking baseline and ``D<n>``
the implementation decisions that settle what the specifications leave open.

Levels are cumulative: ``knowledge`` includes ``core``, ``full`` includes
both. The node networking (NET) requirements are ``core``: in ocpd NET is the
node-to-node part of Layer 1 (D8).

The list covers what the protocol requires, not what ocpd does today: a
requirement without a check is reported ``not_tested``, and for the level
under test that counts against conformance. Only requirements that can be
observed from outside a node are listed (not, for example, "private keys are
never transmitted").

``kind`` is ``target`` when the check talks to the node under test, and
``vector`` when it checks the published vectors against this suite's own
crypto (``ocpd.proto``): a vector requirement says nothing about the target.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final, Literal

__all__ = [
    "LEVELS",
    "REQUIREMENTS",
    "Kind",
    "Level",
    "Requirement",
    "Strength",
    "by_id",
    "for_level",
]

Level = Literal["core", "knowledge", "full"]
Strength = Literal["MUST", "SHOULD"]
Kind = Literal["target", "vector"]

#: The levels in order; a level includes every level before it.
LEVELS: Final[tuple[Level, ...]] = ("core", "knowledge", "full")


@dataclass(frozen=True, slots=True)
class Requirement:
    id: str
    level: Level
    strength: Strength
    title: str
    section: str
    kind: Kind = "target"


def _r(
    rid: str,
    level: Level,
    strength: Strength,
    section: str,
    title: str,
    kind: Kind = "target",
) -> Requirement:
    return Requirement(
        id=rid, level=level, strength=strength, title=title, section=section, kind=kind
    )


C: Final = "core"
K: Final = "knowledge"
F: Final = "full"
MUST: Final = "MUST"
SHOULD: Final = "SHOULD"

# fmt: off
REQUIREMENTS: Final[tuple[Requirement, ...]] = (
    # --- operations (Docker §7) ---------------------------------------------------------------
    _r("OCP-CORE-HEALTH-001", C, MUST, "Docker §7.1", "GET /health of every component: exactly the §7.1 fields and types, its own component name, a valid status and the matching HTTP code"),
    _r("OCP-CORE-METRICS-001", C, SHOULD, "Docker §7.4", "GET /metrics in Prometheus text format with the ocp_request_duration_seconds histogram and ocp_database_size_bytes"),
    # --- Layer 1: transport (OCP §3.1) -------------------------------------------------------
    _r("OCP-CORE-TLS-001", C, MUST, "OCP §3.1", "Every listener speaks TLS and negotiates TLS 1.3; no plaintext transport"),
    _r("OCP-CORE-TLS-002", C, MUST, "OCP §3.1", "A client limited to TLS 1.2 is refused by every listener"),
    _r("OCP-CORE-WS-001", C, MUST, "OCP §3.1.1, D6", "wss /ocp/v1/ws requires subprotocol ocp.v1 (an upgrade without it is refused); a valid auth_handshake gets auth_result accepted with session_id sess-<uuid> and ttl"),
    _r("OCP-CORE-WS-002", C, MUST, "OCP §3.1.1, D6", "No auth_handshake within 5 s of connecting: auth_result rejected, then close 1008"),
    _r("OCP-CORE-WS-003", C, MUST, "OCP §3.1.1, D2, D6", "A bad signature, a timestamp outside ±60 s, an unknown agent or a replayed handshake gets auth_result rejected (OCP-401) and close 1008"),
    _r("OCP-CORE-WS-004", C, MUST, "D6", "Each message from an authenticated agent gets a receipt frame (accepted, or rejected with the error message); the receiver's session gets the exact bytes"),
    _r("OCP-CORE-HTTP-001", C, MUST, "OCP §3.1.2, D6", "POST /ocp/v1/messages with a valid OCP-Ed25519 Authorization is answered 202 (or 200 with a response)"),
    _r("OCP-CORE-HTTP-002", C, MUST, "OCP §3.1.2, D3", "Missing or invalid Authorization, clock skew over 60 s or a replayed signature: OCP-401"),
    _r("OCP-CORE-HTTP-003", C, MUST, "D3", "The Authorization agent id must equal sender.agent_id"),
    _r("OCP-CORE-HTTP-004", C, SHOULD, "OCP §3.1.2, D1", "X-OCF-Version (or X-OCP-Version) 1.0 is accepted, an absent one means 1.0, any other version gets OCP-400"),
    # --- Layer 1: registry, discovery, routing, delivery (OCP §3.2-3.4) ----------------------
    _r("OCP-CORE-REG-001", C, MUST, "OCP §3.2.1, D7", "The registry runs in a supported mode (federated, DHT or centralized) and reports it"),
    _r("OCP-CORE-REG-002", C, MUST, "OCP §3.2.2, D4", "A signed agent record with its DID document is registered and served back"),
    _r("OCP-CORE-REG-003", C, MUST, "OCP §3.2.2", "Records with an invalid agent_id, no capability, domain or endpoint, or a bad signature are rejected"),
    _r("OCP-CORE-REG-004", C, MUST, "OCP §3.2.2, App. A", "Domains outside the OCP taxonomy are rejected"),
    _r("OCP-CORE-REG-005", C, MUST, "OCP App. B", "Capability ids follow cap:<domain>:<name>; custom ones cap:custom:<org>:<name>"),
    _r("OCP-CORE-REG-006", C, MUST, "OCP §3.2.2", "A record not re-registered within its ttl is marked inactive"),
    _r("OCP-CORE-REG-007", C, SHOULD, "OCP §3.2.1, D7", "Federated registries exchange verified records through the sync feed"),
    _r("OCP-CORE-REG-008", C, MUST, "OCP §3.1.2, D3, D7", "Registry writes carry a D3 Authorization by the artifact's agent: a missing, stale, foreign-key or replayed one gets OCP-401"),
    _r("OCP-CORE-DISC-001", C, MUST, "OCP §3.2.3", "POST /ocp/v1/registry/discover filters by domains, capabilities, min_trust_level and status, with total, limit and offset"),
    _r("OCP-CORE-DISC-002", C, MUST, "OCP App. A", "Domains are hierarchical: an agent in healthcare.oncology is found under healthcare"),
    _r("OCP-CORE-ROUTE-001", C, MUST, "OCP §3.3.2, D6", "Registry-mediated routing tries endpoints by priority and returns OCP-502 when all fail"),
    _r("OCP-CORE-ROUTE-002", C, MUST, "OCP §3.3.3, D6", "A broadcast reaches every agent matching metadata.tags exactly once"),
    _r("OCP-CORE-DELIV-001", C, MUST, "OCP §3.4, D6", "message_id is tracked for max(ttl, 3600) s: a duplicate is acknowledged and delivered once; the same id with other content gets OCP-400"),
    _r("OCP-CORE-DELIV-002", C, MUST, "OCP §3.4", "With requires_ack the receiver sends an ack within 30 s"),
    _r("OCP-CORE-DELIV-003", C, MUST, "OCP §3.4, D6", "Delivery is per-sender FIFO within a session; offline agents get stored messages until their TTL"),
    _r("OCP-CORE-DELIV-004", C, MUST, "OCP §3.4, D6", "Undelivered messages are retried with 1, 2, 4, 8, 16 s backoff, at most 5 retries"),
    # --- Layer 2: identity and keys (OCP §4.1, §8.2) ----------------------------------------
    _r("OCP-CORE-DID-001", C, MUST, "OCP §4.1.1, D4", "Agent ids are did:ocp:<network>:agent-<12 hex of SHA3-256(initial key)>; others are rejected"),
    _r("OCP-CORE-DID-002", C, MUST, "OCP §4.1.2-4.1.3, D7", "The DID document of a registered agent resolves (registry did.json)"),
    _r("OCP-CORE-KEY-001", C, MUST, "OCP §8.2, D4", "Two concurrent active keys; updates signed by an active key; revoked keys never verify again"),
    # --- Layer 2: trust (OCP §4.2-4.3) -------------------------------------------------------
    _r("OCP-CORE-TRUST-001", C, MUST, "OCP §4.2.1, D7", "Trust levels 0-4 are computed as specified and their permissions enforced (OCP-403)"),
    _r("OCP-CORE-TRUST-002", C, MUST, "OCP §4.2.2", "The trust score is in [0, 1] with the default weights, and the weighting scheme is published"),
    _r("OCP-CORE-CERT-001", C, MUST, "OCP §4.2.1, D7", "Level 4 comes only from a certification signed by a configured certifier key: unknown-key, forged and over-365-day certifications are refused"),
    _r("OCP-CORE-VOUCH-001", C, MUST, "OCP §4.2.3", "Only Level 2+ agents may vouch"),
    _r("OCP-CORE-VOUCH-002", C, MUST, "OCP §4.2.3", "Vouches expire within 365 days; self-vouches are rejected"),
    _r("OCP-CORE-VOUCH-003", C, MUST, "OCP §4.2.3, D7", "A revocation signed by the attester ends the vouch"),
    _r("OCP-CORE-BOND-001", C, MUST, "OCP §4.3.2", "Bonds carry both parties' signatures over the same digest, or are rejected"),
    _r("OCP-CORE-BOND-002", C, MUST, "OCP §4.3.2", "Bond expiry is at most 365 days after establishment"),
    _r("OCP-CORE-BOND-003", C, MUST, "OCP §4.3.2, D7", "Either party can revoke a bond; a revoked bond grants nothing"),
    # --- OCPUMF (OCP §7, §9, D1) -------------------------------------------------------------
    _r("OCP-CORE-MSG-001", C, MUST, "OCP §7.1", "Messages that violate the OCPUMF schema are rejected with OCP-400"),
    _r("OCP-CORE-MSG-002", C, MUST, "OCP §7.1, D6", "Expired messages (timestamp + ttl < now) and timestamps over 60 s in the future are rejected with OCP-400"),
    _r("OCP-CORE-MSG-003", C, MUST, "OCP §7.2, D2", "sender.signature is verified (JCS, SHA3-256, Ed25519); an invalid one gets OCP-401"),
    _r("OCP-CORE-MSG-004", C, MUST, "OCP §7.3, D5", "An encrypted message needs encryption.nonce and ephemeral_public_key and is relayed unchanged"),
    _r("OCP-CORE-MSG-005", C, MUST, "OCP §7.4, D6", "Errors are signed OCPUMF error messages with an OCP code matching the HTTP status"),
    _r("OCP-CORE-MSG-006", C, MUST, "D1", "I-JSON violations (duplicate keys, NaN, big integers, depth over 64) get OCP-400"),
    _r("OCP-CORE-SIZE-001", C, MUST, "OCP §9, App. D", "Messages over 16 MB or payloads over 10 MB get OCP-413"),
    _r("OCP-CORE-RATE-001", C, MUST, "OCP §9", "Rate limits are enforced; a limited request gets OCP-429 with Retry-After"),
    _r("OCP-CORE-RATE-002", C, SHOULD, "OCP §9, D7", "Discovery queries are limited per agent at the default 100 per 60 s: the one over gets OCP-429 with Retry-After"),
    # --- published vectors: the suite's own crypto, not the target ------------------------------
    _r("OCP-CORE-VEC-MANIFEST-001", C, MUST, "vectors/README", "MANIFEST.json lists exactly the vector files, with matching SHA-256", "vector"),
    _r("OCP-CORE-VEC-ID-001", C, MUST, "OCP §4.1.1, D4", "did-ocp.json: agent ids derive from keys; invalid spellings are rejected", "vector"),
    _r("OCP-CORE-VEC-DIDDOC-001", C, MUST, "OCP §4.1.2, §8.2, D4", "did-document.json: DID document, keyAgreement and signed rotations verify", "vector"),
    _r("OCP-CORE-VEC-JCS-001", C, MUST, "OCP §7.2, D2", "message-signing.json: JCS text, SHA3-256 digest and Ed25519 signature of messages", "vector"),
    _r("OCP-CORE-VEC-HTTPAUTH-001", C, MUST, "OCP §3.1.2, D3", "http-authorization.json: signing string, digest and Authorization header verify", "vector"),
    _r("OCP-CORE-VEC-WSAUTH-001", C, MUST, "OCP §3.1.1, D2", "ws-auth.json: auth_handshake frames verify", "vector"),
    _r("OCP-CORE-VEC-ENC-001", C, MUST, "OCP §7.3, D5", "payload-encryption.json: ECDH, HKDF, AES-256-GCM and sign-after-encrypt", "vector"),
    _r("OCP-CORE-VEC-ART-001", C, MUST, "D2", "artifacts.json: every signed OCP artifact verifies and passes its own rules", "vector"),
    _r("OCP-CORE-VEC-SHAMIR-001", C, MUST, "OCP §8.3.2-8.3.5, D9", "shamir.json: GF(2^8) arithmetic (0x11B), shares from fixed randomness, recovery from every listed subset, refused parameters and share sets; recovery.json: shares sealed to custodians, recovery proofs, sealed responses, a tampered share found", "vector"),
    # --- node networking (NET, D8) ---------------------------------------------------------------
    _r("NET-ID-001", C, MUST, "NET FR-002, FR-002a", "The node id is node:did:key of the node key, strict form, stable across restarts"),
    _r("NET-ADV-001", C, MUST, "NET FR-004, FR-004a-b", "The node serves a signed node-advertisement.v1 with advertised-at, sequence/no and expiry"),
    _r("NET-ADV-002", C, MUST, "NET FR-004d", "An advertisement with a stale or equal sequence/no is rejected as non-current"),
    _r("NET-ADV-003", C, MUST, "NET FR-018, NFR-004", "Malformed, expired or badly signed advertisements are rejected"),
    _r("NET-DIR-001", C, SHOULD, "NET FR-007a, D8", "Seed directory: PUT /adv/{node-id}, GET /adv/{node-id} and GET /adv?since= on the registry"),
    _r("NET-HS-001", C, MUST, "NET FR-008, FR-010, FR-011, FR-012, D8", "wss /ocp/v1/peer (ocp.peer.v1): a signed hello is answered by a signed ack bound by ack/of-handshake-id, protocol/version 1.0"),
    _r("NET-HS-002", C, MUST, "NET FR-012b, FR-022", "Handshakes outside ±30 s or with a replayed nonce are rejected (E_HS_REPLAY)"),
    _r("NET-HS-003", C, MUST, "NET FR-018, FR-022, NFR-004", "Handshakes with a bad signature (E_SIG_INVALID), wrong recipient or unknown protocol/version (E_PROTO_VERSION) fail closed"),
    _r("NET-SESSION-001", C, MUST, "D8", "Frames after the handshake use the session keys (ChaCha20-Poly1305, counter nonces); an altered or replayed frame ends the session"),
    _r("NET-CAP-001", C, MUST, "NET FR-013, FR-014, FR-014b", "A signed capability advertisement with transport profiles and core/messaging follows the handshake"),
    _r("NET-KA-001", C, MUST, "NET FR-015, D8", "Keepalive: a ping over the session is answered with a pong"),
    _r("NET-KA-002", C, MUST, "NET FR-015, D8", "Keepalive timing: a ping after 15 s without sending, the session dropped after 45 s without traffic"),
    _r("NET-SIG-001", C, MUST, "NET FR-017, FR-014c", "A signal-marker-envelope.v1 is accepted, validated and traced end to end"),
    _r("NET-ERR-001", C, MUST, "NET FR-022, FR-023", "Boundary errors use the frozen E_* codes and error classes"),
    _r("NET-VEC-001", C, MUST, "NET FR-002a, FR-003a", "did-key.json: node and participant ids encode keys; invalid spellings are rejected", "vector"),
    _r("NET-VEC-002", C, MUST, "NET FR-004b, FR-010a, D8", "networking.json: NET artifacts sign type || 0x00 || deterministic CBOR", "vector"),
    _r("NET-VEC-003", C, MUST, "D8", "networking.json: the peer session key schedule reproduces both directions' keys", "vector"),
    # --- Layer 3: knowledge exchange and PVL (OCP §5) ---------------------------------------------
    _r("OCP-KNOW-TRUST-001", K, MUST, "OCP §4.2.1", "Knowledge exchange needs Level 2+; below it gets OCP-403"),
    _r("OCP-KNOW-EMB-001", K, MUST, "OCP §5.1.1", "Embeddings: float32 supported, dimensions match, vectors L2-normalised unless declared"),
    _r("OCP-KNOW-INS-001", K, MUST, "OCP §5.1.2", "Insights: confidence in [0, 1], anonymized true and provenance present"),
    _r("OCP-KNOW-DELTA-001", K, MUST, "OCP §5.1.3", "Model deltas carry differential privacy parameters; epsilon over 10.0 is rejected"),
    _r("OCP-KNOW-PVL-001", K, MUST, "OCP §5.2", "PII in a knowledge payload is rejected with PVL-001"),
    _r("OCP-KNOW-PVL-002", K, MUST, "OCP §5.2", "Raw, non-anonymized data is rejected with PVL-002"),
    _r("OCP-KNOW-PVL-003", K, MUST, "OCP §5.2", "Unmet differential privacy requirements are rejected with PVL-003"),
    _r("OCP-KNOW-PVL-004", K, MUST, "OCP §5.2", "Missing provenance is rejected with PVL-004"),
    _r("OCP-KNOW-PVL-005", K, MUST, "OCP §5.2", "A payload over the size limit is rejected with PVL-005"),
    _r("OCP-KNOW-PVL-006", K, MUST, "OCP §5.2, §4.3.2", "A knowledge type the bond does not permit is rejected with PVL-006"),
    # --- Layer 4: collaboration (OCP §6) ---------------------------------------------------------
    _r("OCP-FULL-TASK-001", F, MUST, "OCP §4.2.1, §6.1.3, D10", "task_request needs a bond whose task_delegate permits it, within max_concurrent"),
    _r("OCP-FULL-TASK-002", F, MUST, "OCP §6.1.3, D10", "No accept/reject within 30 s or no result within max_duration_seconds: task_response timeout"),
    _r("OCP-FULL-TASK-003", F, MUST, "OCP §6.1.2", "task_response status is one of accepted, in_progress, completed, failed, rejected, timeout"),
    _r("OCP-FULL-CONS-001", F, MUST, "OCP §6.2.4", "A second vote from the same agent in a round is rejected"),
    _r("OCP-FULL-CONS-002", F, MUST, "OCP §6.2.4", "Vote signatures are verified before counting"),
    _r("OCP-FULL-CONS-003", F, MUST, "OCP §6.2.4", "Votes after the deadline are discarded"),
    _r("OCP-FULL-CONS-004", F, MUST, "OCP §6.2.1, D10", "Only eligible agents (min_trust_level, required_domains) may vote"),
    # --- Layer 5: extensions (OCP §10, D10) ------------------------------------------------------
    _r("OCP-FULL-EXT-001", F, MUST, "OCP §10, D10", "Extension ids are ocp-ext:<domain>:<name>:v<n> and extended payloads match their schema"),
    # --- recovery custodian (OCP §8.3, D9) -------------------------------------------------------
    _r("OCP-FULL-CUST-001", F, MUST, "OCP §8.3.4, D9", "The custodian accepts an encrypted share_deposit on POST /ocp/v1/messages and answers 200"),
    _r("OCP-FULL-CUST-002", F, MUST, "OCP §8.3.4", "A custodian holds at most one share per agent key"),
    _r("OCP-FULL-CUST-003", F, MUST, "OCP §8.3.2", "Share records with threshold below 2 or total_shares outside 3-255 are rejected"),
    _r("OCP-FULL-CUST-004", F, MUST, "OCP §8.3.4, §8.3.8", "Shares are deleted on a signed share_revoke and when they expire"),
    _r("OCP-FULL-CUST-005", F, MUST, "OCP §8.3.5, D9", "A recovery_request with a valid recovery-key proof returns the share encrypted to the ephemeral key"),
    _r("OCP-FULL-CUST-006", F, MUST, "OCP §8.3.5, D9", "A recovery_request with an invalid proof is refused"),
)
# fmt: on

_BY_ID: Final = {r.id: r for r in REQUIREMENTS}
assert len(_BY_ID) == len(REQUIREMENTS), "requirement ids must be unique"


def by_id(requirement_id: str) -> Requirement:
    return _BY_ID[requirement_id]


def for_level(level: Level) -> tuple[Requirement, ...]:
    """The requirements a claim of ``level`` must meet: that level and every lower one."""
    included = LEVELS[: LEVELS.index(level) + 1]
    return tuple(r for r in REQUIREMENTS if r.level in included)
