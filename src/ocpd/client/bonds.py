"""Payloads for the bond message flow (OCP §4.3, D7), one builder per step.

Two agents form a bond by exchanging messages through their nodes::

    A -> B  bond_request    proposed permissions and duration
    B -> A  bond_negotiate  (optional, repeatable) counter permissions
    B -> A  bond_accept     the bond id, agreed permissions, expiry, B's signature
    A -> B  bond_confirm    the bond record signed by both
    either  bond_revoke     a revocation signed by the revoking party

The registry stores only the final bilateral record
(:meth:`RegistryClient.submit_bond`) and revocations
(:meth:`RegistryClient.revoke_bond`); the record itself comes from
:func:`ocpd.client.registry.build_bond`. Each builder returns a payload already
checked against its ``payload.<type>`` schema; put it in a message with
``message_type`` set to the step's name. Permissions agreed by both sides
are the intersection of what each offered
(:func:`ocpd.proto.artifacts.intersect_permissions`).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Final

from ocpd.proto import schema
from ocpd.proto.artifacts import sign_bond
from ocpd.proto.crypto import ed25519_verify
from ocpd.proto.encoding import b64url_decode, format_timestamp
from ocpd.proto.errors import AuthError, MalformedError
from ocpd.proto.signing import artifact_digest

if TYPE_CHECKING:
    from collections.abc import Mapping, Sequence

    from ocpd.client.keys import AgentKey

__all__ = [
    "BOND_MESSAGE_TYPES",
    "bond_accept",
    "bond_confirm",
    "bond_negotiate",
    "bond_request",
    "bond_revoke",
]

BOND_MESSAGE_TYPES: Final = (
    "bond_request",
    "bond_negotiate",
    "bond_accept",
    "bond_confirm",
    "bond_revoke",
)


def _checked(message_type: str, payload: dict[str, Any]) -> dict[str, Any]:
    schema.validate(f"payload.{message_type}", payload)
    return payload


def bond_request(permissions: Mapping[str, Any], *, duration_days: int = 180) -> dict[str, Any]:
    """Step 1 (requester): what the requester proposes."""
    return _checked(
        "bond_request",
        {"proposed_permissions": dict(permissions), "proposed_duration_days": duration_days},
    )


def bond_negotiate(
    counter_permissions: Mapping[str, Any],
    *,
    bond_id: str | None = None,
    duration_days: int | None = None,
) -> dict[str, Any]:
    """Optional step 2 (either side): a counter-proposal."""
    payload: dict[str, Any] = {"counter_permissions": dict(counter_permissions)}
    if bond_id is not None:
        payload["bond_id"] = bond_id
    if duration_days is not None:
        payload["proposed_duration_days"] = duration_days
    return _checked("bond_negotiate", payload)


def bond_accept(bond: Mapping[str, Any], accepter: AgentKey) -> dict[str, Any]:
    """Step 3 (accepter): the bond's terms with the accepter's signature over it.

    The requester rebuilds the same record from the payload and the message
    (see :func:`bond_confirm`), so the signature is over exactly those terms.
    """
    signed = sign_bond(bond, accepter.key, accepter.agent_id)
    return _checked(
        "bond_accept",
        {
            "bond_id": bond["bond_id"],
            "agreed_permissions": dict(bond["permissions"]),
            "expires_at": bond["expires_at"],
            "signature": signed["signatures"][accepter.agent_id],
        },
    )


def bond_confirm(
    bond: Mapping[str, Any],
    accept: Mapping[str, Any],
    *,
    accepter: str,
    accepter_keys: Sequence[bytes],
    requester: AgentKey,
) -> dict[str, Any]:
    """Step 4 (requester): the record signed by both, ready for the registry too.

    ``bond`` is the unsigned record with the agreed terms; ``accept`` the
    ``bond_accept`` payload received from ``accepter``, whose active keys
    (from its DID document) are ``accepter_keys``. The accepter's signature
    must verify over ``bond`` (OCP-401 otherwise), so a confirm is never sent
    for terms the accepter did not sign.
    """
    if (
        accept.get("bond_id") != bond.get("bond_id")
        or accept.get("agreed_permissions") != bond.get("permissions")
        or accept.get("expires_at") != bond.get("expires_at")
    ):
        raise MalformedError("the bond_accept payload does not match the bond's terms")
    signature = b64url_decode(accept.get("signature"), field="bond_accept signature", length=64)
    digest = artifact_digest(bond, field="signatures")
    if not any(ed25519_verify(key, digest, signature) for key in accepter_keys):
        raise AuthError("the accepter's signature does not verify over the bond")
    with_accepter = dict(bond)
    with_accepter["signatures"] = {accepter: accept.get("signature")}
    both = sign_bond(with_accepter, requester.key, requester.agent_id)
    return _checked("bond_confirm", {"bond": both})


def bond_revoke(bond_id: str, revoker: AgentKey, *, reason: str | None = None) -> dict[str, Any]:
    """Either party: a signed revocation, sent to the partner and to the registry."""
    revocation: dict[str, Any] = {
        "revocation_type": "bond",
        "bond_id": bond_id,
        "revoked_by": revoker.agent_id,
        "revoked_at": format_timestamp(revoker.now()),
    }
    if reason is not None:
        revocation["reason"] = reason
    return _checked("bond_revoke", revoker.sign(revocation))
