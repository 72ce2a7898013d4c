"""OCPUMF envelopes (OCP §7): build, sign, verify, encrypt, and error messages.

Verification order for bytes from the network (cheap and input-only checks
first, so hostile input costs little and never reaches signature work):

1. strict I-JSON intake with the size limit (OCP-413 / OCP-400);
2. schema gate: envelope, then the payload schema of its ``message_type``;
3. freshness against ``now``: expired or too far in the future (OCP-400);
4. the D2 digest (SHA3-256 of JCS without ``sender.signature``);
5. the sender's active keys, then Ed25519 (OCP-401).

The signed digest doubles as the content digest used for deduplication (D6):
two messages with the same ``message_id`` are the same message exactly when
their digests are equal.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Final

import attrs

from ocpd.proto import schema
from ocpd.proto.crypto import (
    GCM_NONCE_SIZE,
    SigningKey,
    X25519KeyPair,
    aes256gcm_decrypt,
    aes256gcm_encrypt,
    ed25519_verify,
    hkdf_sha256,
    random_bytes,
    sha3_256,
    x25519,
)
from ocpd.proto.encoding import b64url_decode, b64url_encode, format_timestamp, parse_timestamp
from ocpd.proto.errors import AuthError, MalformedError, OcpError, PayloadTooLarge
from ocpd.proto.ids import is_broadcast_did, new_message_id, parse_agent_id
from ocpd.proto.jcs import canonicalize
from ocpd.proto.strictjson import loads_strict

__all__ = [
    "BAD_MESSAGE_SIGNATURE",
    "DEFAULT_TTL",
    "MAX_MESSAGE_SIZE",
    "MAX_PAYLOAD_SIZE",
    "MAX_TTL",
    "MESSAGE_ID",
    "OCP_VERSION",
    "PAYLOAD_INFO",
    "ClaimedOrigin",
    "VerifiedMessage",
    "build_error_message",
    "build_message",
    "check_freshness",
    "claimed_origin",
    "decrypt_payload",
    "encrypt_payload",
    "message_aad",
    "message_digest",
    "parse_message",
    "parse_message_within",
    "payload_size",
    "sign_message",
    "signed_digest",
    "verify_message",
    "verify_message_signature",
]

OCP_VERSION: Final = "1.0"
DEFAULT_TTL: Final = 3600
MAX_TTL: Final = 86_400
MAX_MESSAGE_SIZE: Final = 16_777_216
MAX_PAYLOAD_SIZE: Final = 10_485_760
DEFAULT_CLOCK_SKEW: Final = 60.0
#: ``msg-`` and the first four groups of a UUID (OCP §7.1).
MESSAGE_ID: Final = re.compile(r"msg-[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}")
BAD_MESSAGE_SIGNATURE: Final = "message signature does not verify"
PAYLOAD_INFO: Final = b"OCP-1.0 payload AES-256-GCM"

Message = dict[str, Any]


def build_message(
    *,
    sender: str,
    receiver: str,
    message_type: str,
    payload: Mapping[str, object] | str,
    now: float,
    ttl: int = DEFAULT_TTL,
    priority: str = "normal",
    broadcast: bool = False,
    metadata: Mapping[str, object] | None = None,
    message_id: str | None = None,
) -> Message:
    """An unsigned OCPUMF message (``sender.signature`` is added by signing)."""
    message: Message = {
        "ocp_version": OCP_VERSION,
        "message_id": message_id or new_message_id(),
        "timestamp": format_timestamp(now),
        "ttl": ttl,
        "sender": {"agent_id": sender},
        "receiver": {"agent_id": receiver, "broadcast": broadcast},
        "message_type": message_type,
        "priority": priority,
        "payload": payload if isinstance(payload, str) else dict(payload),
    }
    if metadata is not None:
        message["metadata"] = dict(metadata)
    return message


def _unsigned_view(message: Mapping[str, Any]) -> dict[str, Any]:
    sender = message.get("sender")
    if not isinstance(sender, Mapping):
        raise MalformedError("message has no sender object")
    view = dict(message)
    view["sender"] = {k: v for k, v in sender.items() if k != "signature"}
    return view


def message_digest(message: Mapping[str, Any]) -> bytes:
    """SHA3-256 of JCS(message without ``sender.signature``) (D2)."""
    try:
        return sha3_256(canonicalize(_unsigned_view(message)))
    except ValueError as exc:
        raise MalformedError(f"message has no canonical JSON form: {exc}") from exc


def sign_message(message: Mapping[str, Any], key: SigningKey) -> Message:
    """A copy of ``message`` with ``sender.signature`` set."""
    signed = _unsigned_view(message)
    signature = key.sign(message_digest(signed))
    signed["sender"]["signature"] = b64url_encode(signature)
    return signed


def verify_message_signature(message: Mapping[str, Any], public_keys: Sequence[bytes]) -> bytes:
    """Check ``sender.signature`` against any of the sender's active keys.

    Returns the digest. OCP-401 when no key verifies.
    """
    digest, signature = signed_digest(message)
    for key in public_keys:
        if ed25519_verify(key, digest, signature):
            return digest
    raise AuthError(BAD_MESSAGE_SIGNATURE)


def signed_digest(message: Mapping[str, Any]) -> tuple[bytes, bytes]:
    """``(digest, signature)``: what ``sender.signature`` must verify; OCP-400 if unreadable."""
    sender = message.get("sender")
    if not isinstance(sender, Mapping):
        raise MalformedError("message has no sender object")
    signature = b64url_decode(sender.get("signature"), field="sender.signature", length=64)
    return message_digest(message), signature


def check_freshness(
    message: Mapping[str, Any], *, now: float, clock_skew: float = DEFAULT_CLOCK_SKEW
) -> tuple[float, float]:
    """``(timestamp, expires_at)`` of a message that is neither expired nor early.

    A message is expired when ``timestamp + ttl < now`` and too early when its
    timestamp is more than ``clock_skew`` seconds ahead of ``now`` (D6).
    """
    sent_at = parse_timestamp(message.get("timestamp"), field="timestamp")
    ttl = message.get("ttl", DEFAULT_TTL)
    if type(ttl) is not int or not 1 <= ttl <= MAX_TTL:
        raise MalformedError("ttl must be an integer from 1 to 86400", details={"field": "ttl"})
    if sent_at > now + clock_skew:
        raise MalformedError(
            "message timestamp is too far in the future",
            details={"field": "timestamp", "reason": "future", "clock_skew": clock_skew},
        )
    expires_at = sent_at + ttl
    if expires_at < now:
        raise MalformedError(
            "message has expired", details={"field": "timestamp", "reason": "expired"}
        )
    return sent_at, expires_at


@attrs.frozen
class VerifiedMessage:
    """A message whose schema, freshness and signature all checked out.

    ``raw`` holds the exact bytes received: store and forward those, never a
    re-serialisation. ``digest`` is the signed digest and the dedup content
    digest.
    """

    message: Message
    raw: bytes
    digest: bytes
    sender: str
    receiver: str
    message_type: str
    message_id: str
    sent_at: float
    expires_at: float


def parse_message(
    raw: bytes,
    *,
    now: float,
    clock_skew: float = DEFAULT_CLOCK_SKEW,
    max_size: int = MAX_MESSAGE_SIZE,
) -> tuple[Message, float, float]:
    """Steps 1-3 of verification: intake, schema gate, freshness."""
    value = loads_strict(raw, max_size=max_size)
    if not isinstance(value, dict):
        raise MalformedError("message must be a JSON object")
    schema.validate_envelope(value)
    sent_at, expires_at = check_freshness(value, now=now, clock_skew=clock_skew)
    return value, sent_at, expires_at


@attrs.frozen
class ClaimedOrigin:
    """What a refused message says about itself, where it says it well-formed.

    Only for addressing and naming the refusal: nothing here is authenticated.
    """

    message_id: str | None = None
    message_type: str | None = None
    sender: str | None = None


def claimed_origin(raw: bytes, *, max_size: int = MAX_MESSAGE_SIZE) -> ClaimedOrigin:
    """The id, type and sender a message that failed its checks claims, if readable.

    A message refused for being expired, early, too large in its payload or
    off-schema usually still carries a readable id, type and sender; its
    refusal then names it and goes to its sender. Each field is ``None``
    unless well-formed (an id of the ``msg-`` pattern, a string type, a
    valid ``did:ocp`` sender).
    """
    try:
        message = loads_strict(raw, max_size=max_size)
    except OcpError:
        return ClaimedOrigin()
    if not isinstance(message, dict):
        return ClaimedOrigin()
    message_id = message.get("message_id")
    message_type = message.get("message_type")
    sender = message.get("sender")
    agent_id = sender.get("agent_id") if isinstance(sender, dict) else None
    try:
        parse_agent_id(agent_id)
    except OcpError:
        agent_id = None
    return ClaimedOrigin(
        message_id=message_id
        if isinstance(message_id, str) and MESSAGE_ID.fullmatch(message_id)
        else None,
        message_type=message_type if isinstance(message_type, str) else None,
        sender=agent_id,
    )


def payload_size(message: Mapping[str, Any]) -> int:
    """The bytes ``payload`` takes: an encrypted one's text, else its compact JSON."""
    payload = message["payload"]
    if isinstance(payload, str):
        return len(payload)
    return len(json.dumps(payload, ensure_ascii=False, separators=(",", ":")).encode("utf-8"))


def parse_message_within(
    raw: bytes,
    *,
    now: float,
    clock_skew: float = DEFAULT_CLOCK_SKEW,
    max_size: int = MAX_MESSAGE_SIZE,
    max_payload: int,
) -> tuple[Message, float, float]:
    """:func:`parse_message`, then OCP-413 when the payload exceeds ``max_payload`` bytes."""
    message, sent_at, expires_at = parse_message(
        raw, now=now, clock_skew=clock_skew, max_size=max_size
    )
    if len(raw) > max_payload and payload_size(message) > max_payload:
        raise PayloadTooLarge(
            f"payload exceeds the limit of {max_payload} bytes",
            details={"limit": max_payload, "field": "payload"},
        )
    return message, sent_at, expires_at


def verify_message(
    raw: bytes,
    *,
    now: float,
    resolve_keys: Callable[[str], Sequence[bytes]],
    clock_skew: float = DEFAULT_CLOCK_SKEW,
    max_size: int = MAX_MESSAGE_SIZE,
) -> VerifiedMessage:
    """Every check on a message received as bytes; see the module docstring.

    ``resolve_keys(agent_id)`` returns the sender's active Ed25519 keys, or
    raises (e.g. :class:`~ocpd.proto.errors.NotFoundError`).
    """
    message, sent_at, expires_at = parse_message(
        raw, now=now, clock_skew=clock_skew, max_size=max_size
    )
    sender = message["sender"]["agent_id"]
    digest = verify_message_signature(message, resolve_keys(sender))
    return VerifiedMessage(
        message=message,
        raw=raw,
        digest=digest,
        sender=sender,
        receiver=message["receiver"]["agent_id"],
        message_type=message["message_type"],
        message_id=message["message_id"],
        sent_at=sent_at,
        expires_at=expires_at,
    )


# --- payload encryption (D5) -------------------------------------------------------


def message_aad(message: Mapping[str, Any]) -> bytes:
    """``message_id \\n sender \\n receiver``: binds a ciphertext to its envelope."""
    try:
        parts = (
            message["message_id"],
            message["sender"]["agent_id"],
            message["receiver"]["agent_id"],
        )
    except (KeyError, TypeError) as exc:
        raise MalformedError("message lacks the ids that bind its encryption") from exc
    if not all(isinstance(p, str) for p in parts):
        raise MalformedError("message ids must be strings")
    return "\n".join(parts).encode("utf-8")


def _payload_key(shared: bytes, ephemeral_public: bytes, receiver_public: bytes) -> bytes:
    return hkdf_sha256(
        shared, salt=ephemeral_public + receiver_public, info=PAYLOAD_INFO, length=32
    )


def encrypt_payload(
    message: Mapping[str, Any],
    receiver_x25519_public: bytes,
    *,
    ephemeral: X25519KeyPair | None = None,
    nonce: bytes | None = None,
) -> Message:
    """A copy of an unsigned ``message`` whose payload is encrypted to the receiver.

    ``ephemeral`` and ``nonce`` exist for test vectors; leave them out
    otherwise, so both are fresh from the CSPRNG.
    """
    payload = message.get("payload")
    if not isinstance(payload, Mapping):
        raise MalformedError("only an object payload can be encrypted")
    ephemeral = ephemeral or X25519KeyPair.generate()
    nonce = nonce if nonce is not None else random_bytes(GCM_NONCE_SIZE)
    shared = x25519(ephemeral.private_key, receiver_x25519_public)
    key = _payload_key(shared, ephemeral.public_key, receiver_x25519_public)
    ciphertext = aes256gcm_encrypt(key, nonce, canonicalize(payload), message_aad(message))
    encrypted = dict(message)
    encrypted["encryption"] = {
        "algorithm": "AES-256-GCM",
        "key_exchange": "ECDH-X25519",
        "nonce": b64url_encode(nonce),
        "ephemeral_public_key": b64url_encode(ephemeral.public_key),
    }
    encrypted["payload"] = b64url_encode(ciphertext)
    return encrypted


def decrypt_payload(message: Mapping[str, Any], receiver_key: SigningKey) -> dict[str, Any]:
    """The plaintext payload object of an encrypted message (OCP-401 if it fails)."""
    encryption = message.get("encryption")
    if not isinstance(encryption, Mapping):
        raise MalformedError("message is not encrypted")
    if (
        encryption.get("algorithm") != "AES-256-GCM"
        or encryption.get("key_exchange") != "ECDH-X25519"
    ):
        raise MalformedError("unsupported payload encryption")
    nonce = b64url_decode(encryption.get("nonce"), field="encryption.nonce", length=12)
    ephemeral_public = b64url_decode(
        encryption.get("ephemeral_public_key"), field="encryption.ephemeral_public_key", length=32
    )
    ciphertext = b64url_decode(message.get("payload"), field="payload")
    receiver_public = receiver_key.x25519_public_key()
    shared = x25519(receiver_key.x25519_private_key(), ephemeral_public)
    key = _payload_key(shared, ephemeral_public, receiver_public)
    plaintext = aes256gcm_decrypt(key, nonce, ciphertext, message_aad(message))
    payload = loads_strict(plaintext, max_size=MAX_PAYLOAD_SIZE)
    if not isinstance(payload, dict):
        raise MalformedError("decrypted payload is not a JSON object")
    return payload


# --- error messages ------------------------------------------------------------------


def build_error_message(
    error: OcpError,
    *,
    sender: str,
    receiver: str,
    now: float,
    reference_message_id: str | None = None,
    ttl: int = DEFAULT_TTL,
    message_id: str | None = None,
) -> Message:
    """An unsigned ``error`` message carrying ``error``'s code (sign it before sending)."""
    payload: dict[str, object] = {"error_code": error.code, "message": error.message}
    if reference_message_id is not None:
        payload["reference_message_id"] = reference_message_id
    if error.details:
        payload["details"] = dict(error.details)
    metadata: dict[str, object] | None = None
    if reference_message_id is not None:
        metadata = {"correlation_id": reference_message_id}
    return build_message(
        sender=sender,
        receiver=receiver,
        broadcast=is_broadcast_did(receiver),
        message_type="error",
        payload=payload,
        now=now,
        ttl=ttl,
        priority="high",
        metadata=metadata,
        message_id=message_id,
    )
