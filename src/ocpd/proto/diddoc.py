"""DID documents for did:ocp agents (OCP §4.1.2, §8.2, §8.3.7, D4).

Theory of operation
-------------------
An agent id is ``derive_agent_id(initial key)``; the initial key is the
verification method ``<did>#key-1``. A document is self-certifying because
``#key-1`` never leaves it: while active it sits in ``verificationMethod``,
once retired it moves to ``revocation`` with its ``publicKeyMultibase``. So
anyone holding any version of the document can check that the id belongs to
it without fetching anything.

Signing keys are ``#key-N`` (N grows with each rotation). The keys listed in
``authentication`` are the *active* ones: at most two, so that a rotation can
overlap old and new (OCP §8.2). A recovery key (``#recovery-key-N``, with
``purpose: "recovery"``) only ever signs recovery proofs and is never active.
``keyAgreement`` holds the X25519 key derived from each active signing key
(``#x25519-N`` for ``#key-N``), used for payload encryption (D5).

Updates are signed artifacts (D2): ``{"did_document", "updated_at",
"signer", "signature"}``, valid only when ``signer`` is active in the
*current* document. Revocation is final: a revoked key never becomes active
again and never verifies anything.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from typing import Any, Final

import attrs

from ocpd.proto.crypto import SigningKey, ed25519_pk_to_x25519
from ocpd.proto.encoding import format_timestamp, parse_timestamp
from ocpd.proto.errors import AuthError, MalformedError
from ocpd.proto.ids import (
    derive_agent_id,
    multibase_ed25519,
    multibase_x25519,
    parse_agent_id,
    parse_multibase_ed25519,
    parse_multibase_x25519,
)
from ocpd.proto.signing import sign_artifact, verify_artifact

__all__ = [
    "DID_CONTEXT",
    "MAX_ACTIVE_KEYS",
    "OCP_CONTEXT",
    "DidDocument",
    "build_did_document",
    "parse_did_document",
    "rotate_did_document",
    "sign_did_update",
    "verify_did_update",
]

DID_CONTEXT: Final = "https://www.w3.org/ns/did/v1"
OCP_CONTEXT: Final = "https://ocp.foundation/ns/ocp/v1"
ED25519_TYPE: Final = "Ed25519VerificationKey2020"
X25519_TYPE: Final = "X25519KeyAgreementKey2020"
MAX_ACTIVE_KEYS: Final = 2

_KEY_FRAGMENT: Final = re.compile(r"#key-([1-9][0-9]{0,5})")
_RECOVERY_FRAGMENT: Final = re.compile(r"#recovery-key-([1-9][0-9]{0,5})")
_X25519_FRAGMENT: Final = re.compile(r"#x25519-([1-9][0-9]{0,5})")


@attrs.frozen
class DidDocument:
    """The checked content of a DID document."""

    agent_id: str
    network: str
    active_keys: dict[str, bytes]
    """``vm id -> Ed25519 public key`` for each key in ``authentication``."""
    recovery_keys: dict[str, bytes]
    revoked_keys: dict[str, bytes]
    key_agreement: dict[str, bytes]
    """``#x25519-N id -> X25519 public key`` derived from active ``#key-N``."""
    initial_key: bytes
    document: dict[str, Any]

    def verification_keys(self) -> list[bytes]:
        """Keys that may verify this agent's signatures, newest first."""
        return [
            self.active_keys[k] for k in sorted(self.active_keys, key=_key_number, reverse=True)
        ]

    def newest_key_agreement(self) -> bytes:
        newest = max(self.key_agreement, key=lambda i: int(i.rsplit("-", 1)[1]))
        return self.key_agreement[newest]

    def is_revoked(self, public_key: bytes) -> bool:
        return public_key in self.revoked_keys.values()


def _key_number(vm_id: str) -> int:
    return int(vm_id.rsplit("-", 1)[1])


def _vm(did: str, fragment: str, public_key: bytes, *, recovery: bool = False) -> dict[str, str]:
    entry = {
        "id": f"{did}#{fragment}",
        "type": ED25519_TYPE,
        "controller": did,
        "publicKeyMultibase": multibase_ed25519(public_key),
    }
    if recovery:
        entry["purpose"] = "recovery"
    return entry


def _ka(did: str, number: int, public_key: bytes) -> dict[str, str]:
    return {
        "id": f"{did}#x25519-{number}",
        "type": X25519_TYPE,
        "controller": did,
        "publicKeyMultibase": multibase_x25519(ed25519_pk_to_x25519(public_key)),
    }


def build_did_document(
    public_key: bytes,
    *,
    network: str,
    service_endpoints: Iterable[str] = (),
    recovery_public_key: bytes | None = None,
    capabilities: Iterable[str] = (),
) -> dict[str, Any]:
    """The initial document of the agent whose initial key is ``public_key``."""
    did = derive_agent_id(public_key, network)
    methods = [_vm(did, "key-1", public_key)]
    if recovery_public_key is not None:
        methods.append(_vm(did, "recovery-key-1", recovery_public_key, recovery=True))
    doc: dict[str, Any] = {
        "@context": [DID_CONTEXT, OCP_CONTEXT],
        "id": did,
        "verificationMethod": methods,
        "authentication": [f"{did}#key-1"],
        "keyAgreement": [_ka(did, 1, public_key)],
    }
    services = [
        {"id": f"{did}#ocp-endpoint-{i}", "type": "OCPMessaging", "serviceEndpoint": url}
        for i, url in enumerate(service_endpoints, start=1)
    ]
    if services:
        doc["service"] = services
    caps = list(capabilities)
    if caps:
        doc["capabilityDeclaration"] = caps
    return doc


def _member_id(vm_id: object, did: str, field: str) -> str:
    """``vm_id`` if it is ``<did>#<fragment>``; OCP-400 otherwise."""
    if not isinstance(vm_id, str) or not vm_id.startswith(did + "#"):
        raise MalformedError(f"{field} must be an id inside {did}", details={"field": field})
    return vm_id


def parse_did_document(doc: object) -> DidDocument:
    """Check a document's structure and key rules; OCP-400 for any violation."""
    if not isinstance(doc, Mapping):
        raise MalformedError("DID document must be an object")
    network, ident = parse_agent_id(doc.get("id"), field="id")
    did = f"did:ocp:{network}:agent-{ident}"
    context = doc.get("@context")
    if not isinstance(context, list) or DID_CONTEXT not in context:
        raise MalformedError("DID document @context must include the DID v1 context")

    signing: dict[str, bytes] = {}
    recovery: dict[str, bytes] = {}
    for entry in _list(doc, "verificationMethod", required=True):
        vm_id = _member_id(entry.get("id"), did, "verificationMethod.id")
        fragment = vm_id[len(did) :]
        if entry.get("type") != ED25519_TYPE or entry.get("controller") != did:
            raise MalformedError(
                f"verification method {fragment} must be an {ED25519_TYPE} controlled by {did}"
            )
        key = parse_multibase_ed25519(entry.get("publicKeyMultibase"))
        if vm_id in signing or vm_id in recovery:
            raise MalformedError(f"verification method {fragment} appears twice")
        if _KEY_FRAGMENT.fullmatch(fragment) and "purpose" not in entry:
            signing[vm_id] = key
        elif _RECOVERY_FRAGMENT.fullmatch(fragment) and entry.get("purpose") == "recovery":
            recovery[vm_id] = key
        else:
            raise MalformedError(
                f"verification method {fragment} must be #key-N, or #recovery-key-N "
                "with purpose 'recovery'"
            )

    revoked: dict[str, bytes] = {}
    for entry in _list(doc, "revocation", required=False):
        vm_id = _member_id(entry.get("id"), did, "revocation.id")
        fragment = vm_id[len(did) :]
        if (
            _KEY_FRAGMENT.fullmatch(fragment) is None
            and _RECOVERY_FRAGMENT.fullmatch(fragment) is None
        ):
            raise MalformedError(f"revocation entry {fragment} names no key")
        parse_timestamp(entry.get("revoked_at"), field="revocation.revoked_at")
        key = parse_multibase_ed25519(entry.get("publicKeyMultibase"), field="revocation key")
        if vm_id in revoked or vm_id in signing or vm_id in recovery:
            raise MalformedError(f"key {fragment} is both listed and revoked, or revoked twice")
        revoked[vm_id] = key
    revoked_values = set(revoked.values())
    if revoked_values & (set(signing.values()) | set(recovery.values())):
        raise MalformedError("a revoked key is listed again as a verification method")

    auth = doc.get("authentication")
    if not isinstance(auth, list) or not auth:
        raise MalformedError("authentication must list at least one key")
    active: dict[str, bytes] = {}
    for vm_id in auth:
        if not isinstance(vm_id, str) or vm_id not in signing:
            raise MalformedError("authentication may only name #key-N verification methods")
        if vm_id in active:
            raise MalformedError("authentication names a key twice")
        active[vm_id] = signing[vm_id]
    if len(active) > MAX_ACTIVE_KEYS:
        raise MalformedError(f"at most {MAX_ACTIVE_KEYS} keys may be active")
    if set(signing) != set(active):
        raise MalformedError("every #key-N must be active; retired keys belong in revocation")

    initial_id = f"{did}#key-1"
    initial = signing.get(initial_id) or revoked.get(initial_id)
    if initial is None:
        raise MalformedError("the initial key #key-1 must stay in the document")
    if derive_agent_id(initial, network) != did:
        raise MalformedError("the agent id does not derive from the initial key #key-1")

    agreement: dict[str, bytes] = {}
    for entry in _list(doc, "keyAgreement", required=True):
        ka_id = _member_id(entry.get("id"), did, "keyAgreement.id")
        fragment = ka_id[len(did) :]
        m = _X25519_FRAGMENT.fullmatch(fragment)
        source = f"{did}#key-{m.group(1)}" if m else None
        if (
            source is None
            or source not in active
            or entry.get("type") != X25519_TYPE
            or entry.get("controller") != did
        ):
            raise MalformedError(
                f"keyAgreement {fragment} must be {X25519_TYPE} #x25519-N of active #key-N"
            )
        x_key = parse_multibase_x25519(entry.get("publicKeyMultibase"), field="keyAgreement key")
        if x_key != ed25519_pk_to_x25519(active[source]):
            raise MalformedError(
                f"keyAgreement {fragment} is not derived from {source[len(did) :]}"
            )
        agreement[ka_id] = x_key
    if not agreement:
        raise MalformedError("keyAgreement must list the X25519 key of an active key")

    return DidDocument(
        agent_id=did,
        network=network,
        active_keys=active,
        recovery_keys=recovery,
        revoked_keys=revoked,
        key_agreement=agreement,
        initial_key=initial,
        document=dict(doc),
    )


def _list(doc: Mapping[str, object], field: str, *, required: bool) -> list[Mapping[str, object]]:
    value = doc.get(field)
    if value is None and not required:
        return []
    if not isinstance(value, list) or (required and not value):
        raise MalformedError(f"{field} must be a non-empty list", details={"field": field})
    if not all(isinstance(v, Mapping) for v in value):
        raise MalformedError(f"{field} entries must be objects", details={"field": field})
    return value


def rotate_did_document(
    current: Mapping[str, Any],
    new_public_key: bytes,
    *,
    now: float,
    retire: Iterable[str] = (),
) -> dict[str, Any]:
    """The next document: ``new_public_key`` becomes ``#key-N+1``, ``retire`` ids revoked.

    Keys beyond the limit of two active keys must be retired explicitly in the
    same step; the result is checked with :func:`parse_did_document`.
    """
    parsed = parse_did_document(current)
    did = parsed.agent_id
    numbers = [_key_number(i) for i in (*parsed.active_keys, *parsed.revoked_keys) if "#key-" in i]
    new_number = max(numbers) + 1
    retire_ids = set(retire)
    unknown = retire_ids - set(parsed.active_keys) - set(parsed.recovery_keys)
    if unknown:
        raise MalformedError("can only retire keys that are currently listed")
    doc = dict(parsed.document)
    methods = [dict(m) for m in doc["verificationMethod"] if m["id"] not in retire_ids]
    methods.append(_vm(did, f"key-{new_number}", new_public_key))
    revocation = [dict(r) for r in doc.get("revocation", [])]
    stamp = format_timestamp(now)
    for vm_id in sorted(retire_ids):
        key = parsed.active_keys.get(vm_id) or parsed.recovery_keys[vm_id]
        revocation.append(
            {"id": vm_id, "publicKeyMultibase": multibase_ed25519(key), "revoked_at": stamp}
        )
    active_ids = [i for i in doc["authentication"] if i not in retire_ids]
    active_ids.append(f"{did}#key-{new_number}")
    doc["verificationMethod"] = methods
    doc["authentication"] = active_ids
    doc["keyAgreement"] = [
        _ka(
            did,
            _key_number(i),
            new_public_key if i.endswith(f"#key-{new_number}") else parsed.active_keys[i],
        )
        for i in active_ids
    ]
    if revocation:
        doc["revocation"] = revocation
    parse_did_document(doc)
    return doc


def sign_did_update(
    document: Mapping[str, Any], key: SigningKey, *, signer: str, now: float
) -> dict[str, object]:
    """The signed update artifact publishing ``document``."""
    return sign_artifact(
        {"did_document": dict(document), "updated_at": format_timestamp(now), "signer": signer},
        key,
    )


def verify_did_update(current: Mapping[str, Any], update: Mapping[str, Any]) -> DidDocument:
    """The new document of ``update`` if it is a valid successor of ``current``.

    OCP-401 when the signer is not active in the current document or the
    signature fails; OCP-400 when the new document breaks a rule (other id,
    changed initial key, a revoked key coming back).
    """
    old = parse_did_document(current)
    new = parse_did_document(update.get("did_document"))
    if new.agent_id != old.agent_id:
        raise MalformedError("a DID document update cannot change the agent id")
    if new.initial_key != old.initial_key:
        raise MalformedError("a DID document update cannot change the initial key")
    parse_timestamp(update.get("updated_at"), field="updated_at")
    signer = update.get("signer")
    if not isinstance(signer, str) or signer not in old.active_keys:
        raise AuthError("DID document update is not signed by a currently active key")
    verify_artifact(update, old.active_keys[signer], what="DID document update")
    for vm_id, key in old.revoked_keys.items():
        if new.revoked_keys.get(vm_id) != key:
            raise MalformedError("a DID document update cannot drop or alter a revocation")
    for key in old.revoked_keys.values():
        if key in new.active_keys.values():
            raise MalformedError("a revoked key cannot become active again")
    old_listed = {**old.active_keys, **old.recovery_keys}
    new_listed = {**new.active_keys, **new.recovery_keys}
    for vm_id, key in old_listed.items():
        if vm_id in new_listed:
            if new_listed[vm_id] != key:
                raise MalformedError("a DID document update cannot give a key id another key")
        elif new.revoked_keys.get(vm_id) != key:
            raise MalformedError("a retired key must be listed in revocation")
    return new
