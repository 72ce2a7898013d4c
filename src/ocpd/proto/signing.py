"""The two signature rules of ocpd.

OCP JSON artifacts (D2): ``Ed25519(sk, SHA3-256(JCS(artifact without its
signature field)))``. One function computes that digest for every artifact;
messages remove only ``sender.signature``, bonds the ``signatures`` map.

Networking artifacts (NET FR-004b, FR-010a, D8): ``Ed25519(sk, b"<type>\\x00"
|| deterministic_cbor(payload without signature))``, not pre-hashed.

Verification failures raise the error of the layer that asked: OCP-401 for
OCP artifacts, ``E_SIG_INVALID`` for networking ones.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from ocpd.proto.crypto import SigningKey, ed25519_verify, sha3_256
from ocpd.proto.dcbor import signing_input
from ocpd.proto.encoding import b64url_decode, b64url_encode
from ocpd.proto.errors import AuthError, MalformedError, NetError
from ocpd.proto.jcs import canonicalize

if TYPE_CHECKING:
    from collections.abc import Mapping

__all__ = [
    "artifact_digest",
    "net_signing_input",
    "sign_artifact",
    "sign_net_artifact",
    "verify_artifact",
    "verify_digest_signature",
    "verify_net_artifact",
]


def _without(artifact: Mapping[str, object], field: str) -> dict[str, object]:
    return {k: v for k, v in artifact.items() if k != field}


def artifact_digest(artifact: Mapping[str, object], *, field: str = "signature") -> bytes:
    """SHA3-256 of the JCS bytes of ``artifact`` without ``field`` (D2)."""
    try:
        canonical = canonicalize(_without(artifact, field))
    except ValueError as exc:
        raise MalformedError(f"artifact has no canonical JSON form: {exc}") from exc
    return sha3_256(canonical)


def sign_artifact(
    artifact: Mapping[str, object], key: SigningKey, *, field: str = "signature"
) -> dict[str, object]:
    """A copy of ``artifact`` with ``field`` set to its D2 signature."""
    signed = _without(artifact, field)
    signed[field] = b64url_encode(key.sign(artifact_digest(signed, field=field)))
    return signed


def verify_digest_signature(
    digest: bytes, signature: object, public_key: bytes, *, what: str = "artifact"
) -> None:
    """Check a base64url D2 signature over ``digest``; OCP-401 if it fails."""
    sig = b64url_decode(signature, field=f"{what} signature", length=64)
    if not ed25519_verify(public_key, digest, sig):
        raise AuthError(f"{what} signature does not verify")


def verify_artifact(
    artifact: Mapping[str, object],
    public_key: bytes,
    *,
    field: str = "signature",
    what: str = "artifact",
) -> bytes:
    """Verify the D2 signature in ``field``; returns the signed digest."""
    if field not in artifact:
        raise AuthError(f"{what} is not signed", details={"field": field})
    digest = artifact_digest(artifact, field=field)
    verify_digest_signature(digest, artifact[field], public_key, what=what)
    return digest


# --- networking artifacts ---------------------------------------------------------


def net_signing_input(
    artifact_type: str,
    payload: Mapping[str, object],
    *,
    unsigned_fields: frozenset[str] = frozenset(),
) -> bytes:
    """The domain-separated CBOR signing input of a networking artifact."""
    body = {k: v for k, v in payload.items() if k != "signature" and k not in unsigned_fields}
    try:
        return signing_input(artifact_type, body)
    except ValueError as exc:
        raise NetError(
            f"{artifact_type} has no deterministic CBOR form: {exc}", code="E_PROTO_INVALID"
        ) from exc


def sign_net_artifact(
    artifact_type: str,
    payload: Mapping[str, object],
    key: SigningKey,
    *,
    unsigned_fields: frozenset[str] = frozenset(),
) -> dict[str, object]:
    signed = dict(payload)
    signed.pop("signature", None)
    message = net_signing_input(artifact_type, signed, unsigned_fields=unsigned_fields)
    signed["signature"] = b64url_encode(key.sign(message))
    return signed


def verify_net_artifact(
    artifact_type: str,
    payload: Mapping[str, object],
    public_key: bytes,
    *,
    unsigned_fields: frozenset[str] = frozenset(),
) -> None:
    """Verify a networking artifact's signature; ``E_SIG_INVALID`` if it fails."""
    raw = payload.get("signature")
    try:
        sig = b64url_decode(raw, field="signature", length=64)
    except MalformedError as exc:
        raise NetError(f"{artifact_type} signature is malformed", code="E_SIG_INVALID") from exc
    message = net_signing_input(artifact_type, payload, unsigned_fields=unsigned_fields)
    if not ed25519_verify(public_key, message, sig):
        raise NetError(f"{artifact_type} signature does not verify", code="E_SIG_INVALID")
