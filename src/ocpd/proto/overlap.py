"""The local overlap bundle of an identity rotation (NET FR-002b, FR-002c).

Rotating the node key gives the node a new node id; nothing carries over.
An operator may still want a record, made while both keys were at hand,
that the two node ids belong to the same operator: ``node-overlap-bundle.v1``.

Both keys sign the same bytes::

    b"node-overlap-bundle.v1\\x00" || JCS(bundle without "signatures")

``predecessor`` and ``successor`` each name a node id and its ``key/public``;
the key must be the one inside the id (``E_SIG_UNKNOWN_SIGNER``), and each
signature must verify under its key (``E_SIG_INVALID``). Shape errors, equal
ids or a bad ``created-at`` are ``E_PROTO_INVALID``.

The bundle is a record for people and later tooling. ocpd never consults one
for discovery, routing or peer trust (decision 116); verifying one proves only
that whoever made it held both keys. No I/O, no clock.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Final

import attrs

from ocpd.proto import schema
from ocpd.proto.crypto import SigningKey, ed25519_verify
from ocpd.proto.encoding import b64url_decode, b64url_encode, format_timestamp, parse_timestamp
from ocpd.proto.errors import MalformedError, NetError
from ocpd.proto.ids import format_node_id, parse_node_id
from ocpd.proto.jcs import canonicalize

__all__ = [
    "NO_CONTINUITY",
    "OVERLAP_BUNDLE",
    "OverlapLink",
    "build_overlap_bundle",
    "overlap_signing_input",
    "verify_overlap_bundle",
]

OVERLAP_BUNDLE: Final = "node-overlap-bundle.v1"
#: The statement every bundle carries (the schema pins it, both keys sign it).
NO_CONTINUITY: Final = (
    "local overlap record only: it grants no continuity to discovery, routing or peer trust"
)
_ROLES: Final = ("predecessor", "successor")


@attrs.frozen
class OverlapLink:
    """What a verified bundle says: two node ids and when the link was made."""

    predecessor: str
    successor: str
    created_at: float


def _invalid(message: str, **details: object) -> NetError:
    return NetError(message, code="E_PROTO_INVALID", details=details)


def overlap_signing_input(bundle: Mapping[str, object]) -> bytes:
    """The bytes both keys sign: the type, a zero byte, then the JCS of the rest."""
    body = {k: v for k, v in bundle.items() if k != "signatures"}
    try:
        canonical = canonicalize(body)
    except ValueError as exc:
        raise _invalid(f"{OVERLAP_BUNDLE} has no canonical JSON form: {exc}") from exc
    return OVERLAP_BUNDLE.encode() + b"\x00" + canonical


def _party(key: SigningKey) -> dict[str, str]:
    return {"node/id": format_node_id(key.public_key), "key/public": b64url_encode(key.public_key)}


def build_overlap_bundle(
    predecessor: SigningKey, successor: SigningKey, *, now: float
) -> dict[str, Any]:
    """A bundle linking ``predecessor``'s node id to ``successor``'s, signed by both."""
    if predecessor.public_key == successor.public_key:
        raise _invalid("an overlap bundle links two different node keys")
    bundle: dict[str, Any] = {
        "bundle/type": OVERLAP_BUNDLE,
        "created-at": format_timestamp(now),
        "key/alg": "ed25519",
        "predecessor": _party(predecessor),
        "successor": _party(successor),
        "statement": NO_CONTINUITY,
    }
    message = overlap_signing_input(bundle)
    bundle["signatures"] = {
        "predecessor": b64url_encode(predecessor.sign(message)),
        "successor": b64url_encode(successor.sign(message)),
    }
    schema.validate(OVERLAP_BUNDLE, bundle)
    return bundle


def _party_key(party: Mapping[str, Any], role: str) -> bytes:
    """The key inside ``node/id``, which ``key/public`` must repeat."""
    try:
        key = parse_node_id(party["node/id"], field=f"{role}.node/id")
        claimed = b64url_decode(party["key/public"], field=f"{role}.key/public", length=32)
    except MalformedError as exc:
        raise _invalid(exc.message, role=role) from exc
    if claimed != key:
        raise NetError(
            f"{role} key/public is not the key of its node/id",
            code="E_SIG_UNKNOWN_SIGNER",
            details={"role": role},
        )
    return key


def verify_overlap_bundle(bundle: object) -> OverlapLink:
    """Check shape, id derivations and both signatures; returns the link.

    Order: shape, signers, then signatures, so a bundle whose ids were
    swapped or edited is reported as such rather than as a bad signature.
    """
    if not isinstance(bundle, Mapping):
        raise _invalid(f"{OVERLAP_BUNDLE} must be a JSON object")
    schema.validate(OVERLAP_BUNDLE, bundle)
    keys = {role: _party_key(bundle[role], role) for role in _ROLES}
    if keys["predecessor"] == keys["successor"]:
        raise _invalid("predecessor and successor are the same node id")
    try:
        created_at = parse_timestamp(bundle["created-at"], field="created-at")
    except MalformedError as exc:
        raise _invalid(exc.message, field="created-at") from exc
    message = overlap_signing_input(bundle)
    for role in _ROLES:
        try:
            signature = b64url_decode(
                bundle["signatures"][role], field=f"signatures.{role}", length=64
            )
        except MalformedError:
            signature = b""
        if not signature or not ed25519_verify(keys[role], message, signature):
            raise NetError(
                f"the {role} signature does not verify",
                code="E_SIG_INVALID",
                details={"role": role},
            )
    return OverlapLink(
        predecessor=str(bundle["predecessor"]["node/id"]),
        successor=str(bundle["successor"]["node/id"]),
        created_at=created_at,
    )
