"""Networking artifacts of the node-to-node layer (NET data contracts, D8).

node-identity.v1, node-advertisement.v1, peer-handshake.v1,
capability-advertisement.v1, signal-marker.v1 and signal-marker-envelope.v1.
All travel as JSON; the signed ones carry an Ed25519 signature over
``b"<type>\\x00" + deterministic_cbor(payload without signature)``.

Node ids and participant ids are did:key strings, so every artifact carries
the key that verifies it: ``key/public`` must be the key inside ``node/id``
(``E_SIG_UNKNOWN_SIGNER`` otherwise), and the signature must verify under it
(``E_SIG_INVALID``). Shape errors are ``E_PROTO_INVALID``; freshness errors
``E_ADV_EXPIRED``; handshake timing ``E_HS_REPLAY``; unknown acks
``E_HS_UNKNOWN_REF``; versions ``E_PROTO_VERSION``.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any, Final

from ocpd.proto import schema
from ocpd.proto.crypto import (
    SigningKey,
    ed25519_pk_to_x25519,
    hkdf_sha256,
    random_bytes,
    sha3_256,
    x25519,
)
from ocpd.proto.dcbor import encode_deterministic
from ocpd.proto.encoding import b64url_decode, b64url_encode, format_timestamp, parse_timestamp
from ocpd.proto.errors import CapabilityMissing, MalformedError, NetError
from ocpd.proto.ids import (
    format_node_id,
    format_participant_id,
    new_prefixed_uuid,
    parse_node_id,
    parse_participant_id,
)
from ocpd.proto.signing import sign_net_artifact, verify_net_artifact

__all__ = [
    "ADVERTISEMENT",
    "CAPABILITY_ADVERTISEMENT",
    "CORE_MESSAGING",
    "HANDSHAKE_SKEW",
    "HANDSHAKE_UNSIGNED",
    "MAX_ADVERTISEMENT_LIFETIME",
    "NET_PROTOCOL_VERSION",
    "NODE_IDENTITY",
    "PEER_HANDSHAKE",
    "SESSION_INFO",
    "SIGNAL_MARKER",
    "SIGNAL_MARKER_ENVELOPE",
    "SessionKeys",
    "build_ack",
    "build_capability_advertisement",
    "build_hello",
    "build_node_advertisement",
    "build_node_identity",
    "build_signal_marker",
    "build_signal_marker_envelope",
    "check_node_identity",
    "check_sequence",
    "derive_session_keys",
    "require_active_identity",
    "require_capability",
    "verify_ack_binding",
    "verify_capability_advertisement",
    "verify_handshake",
    "verify_node_advertisement",
    "verify_signal_marker_envelope",
]

NODE_IDENTITY: Final = "node-identity.v1"
ADVERTISEMENT: Final = "node-advertisement.v1"
PEER_HANDSHAKE: Final = "peer-handshake.v1"
CAPABILITY_ADVERTISEMENT: Final = "capability-advertisement.v1"
SIGNAL_MARKER: Final = "signal-marker.v1"
SIGNAL_MARKER_ENVELOPE: Final = "signal-marker-envelope.v1"

NET_PROTOCOL_VERSION: Final = "1.0"
KEY_ALG: Final = "ed25519"
CORE_MESSAGING: Final = "core/messaging"
HANDSHAKE_SKEW: Final = 30.0
MAX_ADVERTISEMENT_LIFETIME: Final = 7 * 86_400
DEFAULT_CLOCK_SKEW: Final = 30.0
SESSION_INFO: Final = b"ocp-peer-session.v1"

# Framing, not a claim: kept out of the handshake's signed surface (FR-010d).
HANDSHAKE_UNSIGNED: Final = frozenset({"transport/profile"})

Artifact = Mapping[str, Any]


def _invalid(message: str, **details: object) -> NetError:
    return NetError(message, code="E_PROTO_INVALID", details=details)


def _validate(name: str, artifact: object) -> Artifact:
    if not isinstance(artifact, Mapping):
        raise _invalid(f"{name} must be a JSON object")
    schema.validate(name, artifact)
    return artifact


def _check_version(artifact: object) -> None:
    """Fail closed on another protocol version, before the schema (which pins 1.0).

    A peer speaking another version learns why it was refused (NFR-004).
    """
    if isinstance(artifact, Mapping):
        version = artifact.get("protocol/version", NET_PROTOCOL_VERSION)
        if isinstance(version, str) and version != NET_PROTOCOL_VERSION:
            raise NetError(
                f"unsupported protocol version {version[:32]!r}",
                code="E_PROTO_VERSION",
                details={"supported": [NET_PROTOCOL_VERSION]},
            )


def _net_time(value: object, field: str) -> float:
    try:
        return parse_timestamp(value, field=field)
    except MalformedError as exc:
        raise _invalid(exc.message, field=field) from exc


def _signer_key(artifact: Artifact, *, id_field: str, participant: bool = False) -> bytes:
    """The key named by ``id_field``, which must equal ``key/public`` when present."""
    try:
        key = (
            parse_participant_id(artifact[id_field], field=id_field)
            if participant
            else parse_node_id(artifact[id_field], field=id_field)
        )
    except MalformedError as exc:
        raise _invalid(exc.message, field=id_field) from exc
    if "key/public" in artifact:
        try:
            claimed = b64url_decode(artifact["key/public"], field="key/public", length=32)
        except MalformedError as exc:
            raise _invalid(exc.message, field="key/public") from exc
        if claimed != key:
            raise NetError(f"key/public is not the key of {id_field}", code="E_SIG_UNKNOWN_SIGNER")
    return key


# --- node identity (FR-001, FR-001a-c, FR-012d) ---------------------------------------------


def build_node_identity(
    key: SigningKey, *, storage_ref: str, now: float, status: str = "active"
) -> dict[str, Any]:
    """The public node-identity.v1 record; the secret stays behind ``storage_ref``."""
    record = {
        "node/id": format_node_id(key.public_key),
        "participant/id": format_participant_id(key.public_key),
        "created-at": format_timestamp(now),
        "key/alg": KEY_ALG,
        "key/public": b64url_encode(key.public_key),
        "key/storage-ref": storage_ref,
        "identity/status": status,
    }
    _validate(NODE_IDENTITY, record)
    return record


def check_node_identity(record: object) -> bytes:
    """Check an identity record on import or export; returns its public key."""
    record = _validate(NODE_IDENTITY, record)
    key = _signer_key(record, id_field="node/id")
    if parse_participant_id(record["participant/id"]) != key:
        raise _invalid("participant/id must share the node key in this baseline")
    _net_time(record["created-at"], "created-at")
    return key


def require_active_identity(record: Artifact) -> None:
    """FR-012d: only ``active`` identities may run (a missing status means active)."""
    status = record.get("identity/status", "active")
    if status != "active":
        raise _invalid(f"node identity status is {status!r}; only 'active' can run")


# --- advertisements (FR-004a-f) ------------------------------------------------------------


def build_node_advertisement(
    key: SigningKey,
    *,
    sequence: int,
    endpoints: Sequence[Mapping[str, object]],
    now: float,
    lifetime: float = 86_400,
    transports: Iterable[str] = ("wss",),
    succession: Mapping[str, object] | None = None,
    advertisement_id: str | None = None,
) -> dict[str, Any]:
    payload: dict[str, Any] = {
        "advertisement/id": advertisement_id or new_prefixed_uuid("adv"),
        "node/id": format_node_id(key.public_key),
        "sequence/no": sequence,
        "advertised-at": format_timestamp(now),
        "expires-at": format_timestamp(now + lifetime),
        "key/alg": KEY_ALG,
        "key/public": b64url_encode(key.public_key),
        "endpoints": [dict(e) for e in endpoints],
        "transports/supported": list(transports),
    }
    if succession is not None:
        payload["succession"] = dict(succession)
    return sign_net_artifact(ADVERTISEMENT, payload, key)


def verify_node_advertisement(
    adv: object,
    *,
    now: float,
    expected_node_id: str | None = None,
    clock_skew: float = DEFAULT_CLOCK_SKEW,
) -> bytes:
    """Check a node-advertisement.v1; returns the node key.

    Order: shape, signer, signature, then freshness (a forged advertisement
    is reported as forged even when it is also expired).
    """
    adv = _validate(ADVERTISEMENT, adv)
    if expected_node_id is not None and adv["node/id"] != expected_node_id:
        raise _invalid("advertisement is for another node id")
    key = _signer_key(adv, id_field="node/id")
    verify_net_artifact(ADVERTISEMENT, adv, key)
    advertised = _net_time(adv["advertised-at"], "advertised-at")
    expires = _net_time(adv["expires-at"], "expires-at")
    if expires <= advertised or expires - advertised > MAX_ADVERTISEMENT_LIFETIME:
        raise _invalid("expires-at must be after advertised-at and within 7 days")
    if advertised > now + clock_skew:
        raise _invalid("advertised-at lies in the future")
    if expires <= now:
        raise NetError("advertisement has expired", code="E_ADV_EXPIRED")
    return key


def check_sequence(current: int | None, offered: int) -> None:
    """FR-004d: only a strictly greater ``sequence/no`` replaces the current one."""
    if current is not None and offered <= current:
        raise NetError(
            f"sequence {offered} is not newer than {current}",
            code="E_ADV_STALE_SEQ",
            details={"current": current, "offered": offered},
        )


# --- peer handshake (FR-010-FR-012) ----------------------------------------------------------


def build_hello(
    key: SigningKey,
    *,
    session_public: bytes,
    now: float,
    recipient: str | None = None,
    nonce: bytes | None = None,
    capabilities: Iterable[str] | None = None,
    transport_profile: str | None = "wss",
    handshake_id: str | None = None,
) -> dict[str, Any]:
    payload: dict[str, Any] = {
        "handshake/id": handshake_id or new_prefixed_uuid("hs"),
        "handshake/mode": "hello",
        "ts": format_timestamp(now),
        "sender/node-id": format_node_id(key.public_key),
        "key/alg": KEY_ALG,
        "key/public": b64url_encode(key.public_key),
        "session/pub": b64url_encode(session_public),
        "protocol/version": NET_PROTOCOL_VERSION,
        "nonce": b64url_encode(nonce if nonce is not None else _random32()),
    }
    if recipient is not None:
        payload["recipient/node-id"] = recipient
    if capabilities is not None:
        payload["capabilities/offered"] = list(capabilities)
    if transport_profile is not None:
        payload["transport/profile"] = transport_profile
    return sign_net_artifact(PEER_HANDSHAKE, payload, key, unsigned_fields=HANDSHAKE_UNSIGNED)


def build_ack(
    key: SigningKey,
    hello: Artifact,
    *,
    session_public: bytes,
    now: float,
    nonce: bytes | None = None,
    capabilities: Iterable[str] | None = None,
    transport_profile: str | None = "wss",
    handshake_id: str | None = None,
) -> dict[str, Any]:
    payload: dict[str, Any] = {
        "handshake/id": handshake_id or new_prefixed_uuid("hs"),
        "handshake/mode": "ack",
        "ts": format_timestamp(now),
        "sender/node-id": format_node_id(key.public_key),
        "recipient/node-id": hello["sender/node-id"],
        "key/alg": KEY_ALG,
        "key/public": b64url_encode(key.public_key),
        "session/pub": b64url_encode(session_public),
        "protocol/version": NET_PROTOCOL_VERSION,
        "nonce": b64url_encode(nonce if nonce is not None else _random32()),
        "ack/of-handshake-id": hello["handshake/id"],
    }
    if capabilities is not None:
        payload["capabilities/offered"] = list(capabilities)
    if transport_profile is not None:
        payload["transport/profile"] = transport_profile
    return sign_net_artifact(PEER_HANDSHAKE, payload, key, unsigned_fields=HANDSHAKE_UNSIGNED)


def _random32() -> bytes:
    return random_bytes(32)


def verify_handshake(
    handshake: object,
    *,
    now: float,
    local_node_id: str | None = None,
    skew: float = HANDSHAKE_SKEW,
) -> bytes:
    """Check one hello or ack on its own; returns the sender's node key.

    The version is checked before the signature so that a peer speaking
    another version learns why (fail closed, NFR-004). A timestamp more than
    ``skew`` seconds off is treated as a possible replay (FR-012b).
    """
    _check_version(handshake)
    handshake = _validate(PEER_HANDSHAKE, handshake)
    key = _signer_key(handshake, id_field="sender/node-id")
    verify_net_artifact(PEER_HANDSHAKE, handshake, key, unsigned_fields=HANDSHAKE_UNSIGNED)
    sent = _net_time(handshake["ts"], "ts")
    if abs(sent - now) > skew:
        raise NetError("handshake timestamp is outside ±30 s", code="E_HS_REPLAY")
    if (
        local_node_id is not None
        and handshake.get("recipient/node-id", local_node_id) != local_node_id
    ):
        raise _invalid("handshake is addressed to another node")
    try:
        b64url_decode(handshake["session/pub"], field="session/pub", length=32)
        b64url_decode(handshake["nonce"], field="nonce", length=32)
    except MalformedError as exc:
        raise _invalid(exc.message) from exc
    return key


def verify_ack_binding(ack: Artifact, hello: Artifact) -> None:
    """The ack answers exactly ``hello`` (FR-010b, FR-012a)."""
    if ack.get("handshake/mode") != "ack" or ack.get("ack/of-handshake-id") != hello.get(
        "handshake/id"
    ):
        raise NetError("ack does not refer to a pending hello", code="E_HS_UNKNOWN_REF")
    if ack.get("recipient/node-id") != hello.get("sender/node-id"):
        raise _invalid("ack is addressed to another node than the hello's sender")


class SessionKeys:
    """The two directional ChaCha20-Poly1305 keys of a peer session (D8)."""

    __slots__ = ("receive_key", "send_key")

    def __init__(self, send_key: bytes, receive_key: bytes) -> None:
        self.send_key = send_key
        self.receive_key = receive_key

    def __repr__(self) -> str:
        return "SessionKeys(<secret>)"


def derive_session_keys(
    *,
    initiator: bool,
    ephemeral_private: bytes,
    peer_ephemeral_public: bytes,
    static_key: SigningKey,
    peer_static_public: bytes,
    hello: Artifact,
    ack: Artifact,
) -> SessionKeys:
    """D8 key schedule.

    ``ikm = DH(e_i, e_r) || DH(s_i, s_r)``, ``salt = SHA3-256(cbor(hello) ||
    cbor(ack))`` over the signed artifacts as sent (framing fields left out),
    ``info = "ocp-peer-session.v1"``, 64 bytes: the first 32 encrypt
    initiator-to-responder frames, the last 32 responder-to-initiator frames.
    Static X25519 keys are the Ed25519 node keys mapped to X25519.
    """
    ee = x25519(ephemeral_private, peer_ephemeral_public)
    ss = x25519(static_key.x25519_private_key(), ed25519_pk_to_x25519(peer_static_public))
    transcript = b"".join(
        encode_deterministic({k: v for k, v in h.items() if k not in HANDSHAKE_UNSIGNED})
        for h in (hello, ack)
    )
    okm = hkdf_sha256(ee + ss, salt=sha3_256(transcript), info=SESSION_INFO, length=64)
    to_responder, to_initiator = okm[:32], okm[32:]
    if initiator:
        return SessionKeys(send_key=to_responder, receive_key=to_initiator)
    return SessionKeys(send_key=to_initiator, receive_key=to_responder)


# --- capability advertisement (FR-013, FR-014) ------------------------------------------------


def build_capability_advertisement(
    key: SigningKey,
    *,
    now: float,
    capabilities: Iterable[str] = (CORE_MESSAGING,),
    messages: Iterable[str] = (SIGNAL_MARKER_ENVELOPE,),
    transports: Iterable[str] = ("wss",),
    roles: Iterable[str] | None = None,
    surfaces: Iterable[str] | None = None,
    advertisement_id: str | None = None,
) -> dict[str, Any]:
    caps = list(capabilities)
    if CORE_MESSAGING not in caps:
        caps.insert(0, CORE_MESSAGING)
    payload: dict[str, Any] = {
        "advertisement/id": advertisement_id or new_prefixed_uuid("capadv"),
        "node/id": format_node_id(key.public_key),
        "published-at": format_timestamp(now),
        "protocol/version": NET_PROTOCOL_VERSION,
        "transport/profiles": list(transports),
        "capabilities/core": caps,
        "messages/supported": list(messages),
    }
    if roles is not None:
        payload["roles/attached"] = list(roles)
    if surfaces is not None:
        payload["surfaces/exposed"] = list(surfaces)
    return sign_net_artifact(CAPABILITY_ADVERTISEMENT, payload, key)


def verify_capability_advertisement(
    adv: object, *, expected_node_id: str | None = None
) -> frozenset[str]:
    """Check a capability advertisement; returns its core capability set."""
    _check_version(adv)
    core = adv.get("capabilities/core") if isinstance(adv, Mapping) else None
    checked: Mapping[str, Any]
    if isinstance(adv, Mapping) and isinstance(core, list) and CORE_MESSAGING not in core:
        # The schema asks for core/messaging; everything else about this one
        # must hold (shape, node, signature) for it to count as the
        # capability missing rather than a malformed advertisement.
        _validate(CAPABILITY_ADVERTISEMENT, {**adv, "capabilities/core": [*core, CORE_MESSAGING]})
        checked, lacking = adv, True
    else:
        checked, lacking = _validate(CAPABILITY_ADVERTISEMENT, adv), False
    if expected_node_id is not None and checked["node/id"] != expected_node_id:
        raise _invalid("capability advertisement is for another node id")
    key = _signer_key(checked, id_field="node/id")
    verify_net_artifact(CAPABILITY_ADVERTISEMENT, checked, key)
    _net_time(checked["published-at"], "published-at")
    if lacking:
        raise CapabilityMissing(
            "peer does not advertise core/messaging", details={"needed": CORE_MESSAGING}
        )
    return frozenset(checked["capabilities/core"])


def require_capability(capabilities: frozenset[str], needed: str) -> None:
    if needed not in capabilities:
        raise CapabilityMissing(f"peer lacks capability {needed}", details={"needed": needed})


# --- signal-marker (FR-014c, FR-017) -------------------------------------------------------------


def build_signal_marker(
    key: SigningKey,
    *,
    kind: str,
    now: float,
    body: str | None = None,
    marker_id: str | None = None,
) -> dict[str, Any]:
    payload: dict[str, Any] = {
        "marker/id": marker_id or new_prefixed_uuid("sm"),
        "participant/id": format_participant_id(key.public_key),
        "created-at": format_timestamp(now),
        "signal/kind": kind,
    }
    if body is not None:
        payload["signal/body"] = body
    return sign_net_artifact(SIGNAL_MARKER, payload, key)


def build_signal_marker_envelope(
    key: SigningKey,
    marker: Artifact,
    *,
    sender_node_id: str,
    now: float,
    recipient_node_id: str | None = None,
    envelope_id: str | None = None,
) -> dict[str, Any]:
    payload: dict[str, Any] = {
        "envelope/id": envelope_id or new_prefixed_uuid("sme"),
        "participant/id": format_participant_id(key.public_key),
        "sender/node-id": sender_node_id,
        "sent-at": format_timestamp(now),
        "marker": dict(marker),
    }
    if recipient_node_id is not None:
        payload["recipient/node-id"] = recipient_node_id
    return sign_net_artifact(SIGNAL_MARKER_ENVELOPE, payload, key)


def verify_signal_marker_envelope(
    envelope: object,
    *,
    now: float,
    session_peer: str | None = None,
    clock_skew: float = DEFAULT_CLOCK_SKEW,
) -> Mapping[str, Any]:
    """Check an envelope and the marker inside it; returns the marker.

    Both are signed by the participant named in them, and the envelope must
    come from the node at the other end of the session (``session_peer``).
    """
    envelope = _validate(SIGNAL_MARKER_ENVELOPE, envelope)
    if session_peer is not None and envelope["sender/node-id"] != session_peer:
        raise _invalid("signal-marker envelope names another sender node")
    key = _signer_key(envelope, id_field="participant/id", participant=True)
    verify_net_artifact(SIGNAL_MARKER_ENVELOPE, envelope, key)
    marker = _validate(SIGNAL_MARKER, envelope["marker"])
    if marker["participant/id"] != envelope["participant/id"]:
        raise NetError("marker is signed by another participant", code="E_SIG_UNKNOWN_SIGNER")
    verify_net_artifact(SIGNAL_MARKER, marker, key)
    for artifact, field in ((envelope, "sent-at"), (marker, "created-at")):
        if _net_time(artifact[field], field) > now + clock_skew:
            raise _invalid(f"{field} lies in the future")
    return marker
