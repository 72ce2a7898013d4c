"""Identifiers: did:ocp agent ids (D4), did:key node and participant ids (NET).

Every parser here is strict: there is exactly one accepted spelling of each
identifier, and the parsers reject every other one (case variants, other
prefixes or multicodecs, missing multibase ``z``, wrong lengths, trailing
data). Formatting and parsing round-trip.
"""

from __future__ import annotations

import re
import uuid
from typing import Final

from ocpd.proto.crypto import sha3_256
from ocpd.proto.errors import MalformedError

__all__ = [
    "ED25519_MULTICODEC",
    "X25519_MULTICODEC",
    "base58btc_decode",
    "base58btc_encode",
    "broadcast_did",
    "derive_agent_id",
    "format_node_id",
    "format_participant_id",
    "is_broadcast_did",
    "key_fingerprint",
    "multibase_ed25519",
    "multibase_x25519",
    "new_message_id",
    "new_prefixed_uuid",
    "parse_agent_id",
    "parse_multibase_ed25519",
    "parse_multibase_x25519",
    "parse_node_id",
    "parse_participant_id",
]

ED25519_MULTICODEC: Final = b"\xed\x01"
X25519_MULTICODEC: Final = b"\xec\x01"

_NETWORK = r"[a-z0-9-]{1,32}"
_AGENT_ID_RE: Final = re.compile(rf"did:ocp:({_NETWORK}):agent-([0-9a-f]{{12}})", re.ASCII)
_BROADCAST_RE: Final = re.compile(rf"did:ocp:({_NETWORK}):broadcast", re.ASCII)
_NETWORK_RE: Final = re.compile(_NETWORK, re.ASCII)

# --- base58btc --------------------------------------------------------------

_B58_ALPHABET: Final = "123456789ABCDEFGHJKLMNPQRSTUVWXYZabcdefghijkmnopqrstuvwxyz"
_B58_INDEX: Final = {c: i for i, c in enumerate(_B58_ALPHABET)}


def base58btc_encode(data: bytes) -> str:
    zeros = len(data) - len(data.lstrip(b"\0"))
    n = int.from_bytes(data, "big")
    digits = []
    while n:
        n, rem = divmod(n, 58)
        digits.append(_B58_ALPHABET[rem])
    return "1" * zeros + "".join(reversed(digits))


def base58btc_decode(text: str) -> bytes:
    """Decode base58btc; ``ValueError`` for characters outside the alphabet."""
    n = 0
    for char in text:
        digit = _B58_INDEX.get(char)
        if digit is None:
            raise ValueError("not base58btc")
        n = n * 58 + digit
    zeros = len(text) - len(text.lstrip("1"))
    body = n.to_bytes((n.bit_length() + 7) // 8, "big") if n else b""
    return b"\0" * zeros + body


# --- multibase keys (DID documents) ------------------------------------------


def _multibase(codec: bytes, key: bytes) -> str:
    if len(key) != 32:
        raise ValueError("keys are 32 bytes")
    return "z" + base58btc_encode(codec + key)


def _parse_multibase(text: object, codec: bytes, field: str) -> bytes:
    if not isinstance(text, str) or not text.startswith("z") or len(text) > 60:
        raise MalformedError(f"{field} is not a multibase base58btc key", details={"field": field})
    try:
        raw = base58btc_decode(text[1:])
    except ValueError as exc:
        raise MalformedError(f"{field} is not base58btc", details={"field": field}) from exc
    if len(raw) != 34 or raw[:2] != codec or _multibase(codec, raw[2:]) != text:
        raise MalformedError(
            f"{field} is not a {codec.hex()}-multicodec 32-byte key", details={"field": field}
        )
    return raw[2:]


def multibase_ed25519(public_key: bytes) -> str:
    """``z`` + base58btc(0xed 0x01 || pk): Ed25519VerificationKey2020 form."""
    return _multibase(ED25519_MULTICODEC, public_key)


def multibase_x25519(public_key: bytes) -> str:
    """``z`` + base58btc(0xec 0x01 || pk): X25519KeyAgreementKey2020 form."""
    return _multibase(X25519_MULTICODEC, public_key)


def parse_multibase_ed25519(text: object, *, field: str = "publicKeyMultibase") -> bytes:
    return _parse_multibase(text, ED25519_MULTICODEC, field)


def parse_multibase_x25519(text: object, *, field: str = "publicKeyMultibase") -> bytes:
    return _parse_multibase(text, X25519_MULTICODEC, field)


# --- node and participant ids (NET FR-002a, FR-003a) ---------------------------

_NODE_PREFIX: Final = "node:did:key:"
_PARTICIPANT_PREFIX: Final = "participant:did:key:"


def format_node_id(public_key: bytes) -> str:
    return _NODE_PREFIX + multibase_ed25519(public_key)


def format_participant_id(public_key: bytes) -> str:
    return _PARTICIPANT_PREFIX + multibase_ed25519(public_key)


def _parse_did_key(text: object, prefix: str, field: str) -> bytes:
    if not isinstance(text, str) or not text.startswith(prefix):
        raise MalformedError(f"{field} must start with {prefix!r}", details={"field": field})
    return parse_multibase_ed25519(text[len(prefix) :], field=field)


def parse_node_id(text: object, *, field: str = "node/id") -> bytes:
    """The Ed25519 public key inside a canonical v1 node id."""
    return _parse_did_key(text, _NODE_PREFIX, field)


def parse_participant_id(text: object, *, field: str = "participant/id") -> bytes:
    return _parse_did_key(text, _PARTICIPANT_PREFIX, field)


# --- did:ocp (D4) ---------------------------------------------------------------


def derive_agent_id(public_key: bytes, network: str) -> str:
    """``did:ocp:<network>:agent-<first 12 hex of SHA3-256(pk)>``."""
    if len(public_key) != 32:
        raise ValueError("an Ed25519 public key is 32 bytes")
    if _NETWORK_RE.fullmatch(network) is None:
        raise ValueError("network must match [a-z0-9-]{1,32}")
    return f"did:ocp:{network}:agent-{sha3_256(public_key).hex()[:12]}"


def parse_agent_id(text: object, *, field: str = "agent_id") -> tuple[str, str]:
    """``(network, 12-hex identifier)`` of a strict did:ocp agent id."""
    if isinstance(text, str):
        m = _AGENT_ID_RE.fullmatch(text)
        if m is not None:
            return m.group(1), m.group(2)
    raise MalformedError(f"{field} is not a did:ocp agent id", details={"field": field})


def agent_id_matches_key(agent_id: str, public_key: bytes) -> bool:
    network, _ident = parse_agent_id(agent_id)
    return derive_agent_id(public_key, network) == agent_id


def broadcast_did(network: str) -> str:
    if _NETWORK_RE.fullmatch(network) is None:
        raise ValueError("network must match [a-z0-9-]{1,32}")
    return f"did:ocp:{network}:broadcast"


def is_broadcast_did(text: object) -> bool:
    return isinstance(text, str) and _BROADCAST_RE.fullmatch(text) is not None


def key_fingerprint(public_key: bytes) -> str:
    """OCP §8.3.3: first 16 hex characters of SHA3-256 of the public key."""
    return sha3_256(public_key).hex()[:16]


# --- fresh ids ------------------------------------------------------------------


def new_message_id() -> str:
    """``msg-`` + the first four groups of a random UUIDv4 (OCP §7.1)."""
    return "msg-" + str(uuid.uuid4())[:23]


def new_prefixed_uuid(prefix: str) -> str:
    """``<prefix>-<uuid4>`` (bond-, task-, con-, ins-, adv-, hs-, ...)."""
    return f"{prefix}-{uuid.uuid4()}"
