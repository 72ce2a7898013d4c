"""What makes a registry artifact from a peer believable: pure checks, no I/O.

An agent id is self-certifying only for the key it derives from, ``#key-1``
(D4); the rest of a DID document is the agent's word only where the agent
signed it. Over HTTP that signature is the D3 ``Authorization`` of the first
registration, so a registry keeps that request (``registration``: path,
header, exact body) and the signed updates applied since (``did_updates``).
With both, :func:`document_lineage` rebuilds and checks the current
document from the initial key, with nothing fetched.

Signatures by keys an agent has since revoked are genuine but verify nothing
any more (D4). From peers they are told apart from forgeries (``lenient``):
such an artifact is not taken, and not counted against the peer either.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Final

from ocpd.proto import schema
from ocpd.proto.artifacts import verify_bond, verify_signed
from ocpd.proto.auth import http_signing_string, parse_authorization
from ocpd.proto.crypto import ed25519_verify, sha3_256
from ocpd.proto.diddoc import DidDocument, parse_did_document, verify_did_update
from ocpd.proto.encoding import parse_timestamp
from ocpd.proto.errors import AuthError, MalformedError, OcpError
from ocpd.proto.signing import artifact_digest
from ocpd.proto.strictjson import loads_strict

if TYPE_CHECKING:
    from collections.abc import Callable, Mapping, Sequence

__all__ = [
    "MAX_DID_UPDATES",
    "MAX_PROOF_BODY",
    "UpdateRow",
    "bond_signed",
    "document_lineage",
    "signed_by",
    "update_chain",
    "verifies_under",
    "verify_registration_proof",
]

MAX_PROOF_BODY: Final = 1_048_576
MAX_DID_UPDATES: Final = 256

UpdateRow = tuple[str, float, dict[str, Any]]


def verify_registration_proof(proof: object, agent_id: str) -> tuple[DidDocument, float, str]:
    """The DID document a first registration published, checked against ``#key-1``.

    ``proof`` is ``{"path", "authorization", "body"}``: the D3 header and the
    exact body of the ``POST …/agents`` that registered the agent. Its
    signature must verify under the document's initial key, which must be
    active in it. Freshness and replay are not checked: this is evidence of
    what the key holder published, not a request. Returns the document, the
    header's signing time and the header text (the tie-break between proofs).
    """
    if not isinstance(proof, dict) or set(proof) != {"path", "authorization", "body"}:
        raise MalformedError("a registration proof is {path, authorization, body}")
    path, header, body_text = proof["path"], proof["authorization"], proof["body"]
    if not (isinstance(path, str) and isinstance(header, str) and isinstance(body_text, str)):
        raise MalformedError("registration proof fields are strings")
    if not path.startswith("/") or not path.partition("?")[0].endswith("/registry/agents"):
        raise MalformedError("a registration proof is a POST to …/registry/agents")
    auth = parse_authorization(header)
    if auth.agent_id != agent_id:
        raise AuthError("the registration proof is by another agent")
    try:
        raw = body_text.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise MalformedError("registration proof body is not UTF-8 text") from exc
    body = loads_strict(raw, max_size=MAX_PROOF_BODY)
    if not isinstance(body, dict) or "did_document" not in body:
        raise MalformedError("a registration proof body holds a did_document")
    schema.validate("did-document", body["did_document"])
    document = parse_did_document(body["did_document"])
    if document.agent_id != agent_id:
        raise AuthError("agent id does not derive from the DID document's initial key")
    if document.initial_key not in document.active_keys.values():
        raise AuthError("a first registration is signed by the initial key #key-1")
    digest = sha3_256(
        http_signing_string(
            method="POST",
            path_and_query=path,
            agent_id=agent_id,
            timestamp=auth.timestamp,
            body=raw,
        )
    )
    if not ed25519_verify(document.initial_key, digest, auth.signature):
        raise AuthError("registration proof signature does not verify under #key-1")
    return document, parse_timestamp(auth.timestamp), header


def document_lineage(body: Mapping[str, Any], agent_id: str) -> tuple[DidDocument, list[UpdateRow]]:
    """The document an agent change proves: its first registration, then its updates.

    Returns the document and ``(digest, updated_at, update)`` for each update;
    raises if the proof or an update does not verify, or if the result is
    not the change's ``did_document``.
    """
    document, _, _ = verify_registration_proof(body["registration"], agent_id)
    rows: list[UpdateRow] = []
    for update in update_chain(body):
        schema.validate("did-document-update", update)
        at = parse_timestamp(update["updated_at"], field="updated_at")
        digest = artifact_digest(update).hex()
        if rows and (at < rows[-1][1] or digest in {d for d, _, _ in rows}):
            raise MalformedError("did_updates must be in order and distinct")
        document = verify_did_update(document.document, update)
        rows.append((digest, at, update))
    if body["did_document"] != document.document:
        raise MalformedError("did_document is not the one its registration and updates give")
    return document, rows


def update_chain(body: Mapping[str, Any]) -> list[dict[str, Any]]:
    chain = body.get("did_updates", [])
    if (
        not isinstance(chain, list)
        or len(chain) > MAX_DID_UPDATES
        or not all(isinstance(u, dict) for u in chain)
    ):
        raise MalformedError(f"did_updates is a list of at most {MAX_DID_UPDATES} updates")
    return chain


def _verifies(check: Callable[[], object]) -> bool:
    try:
        check()
    except OcpError:
        return False
    return True


def verifies_under(artifact: Mapping[str, Any], keys: Sequence[bytes]) -> bool:
    return _verifies(lambda: verify_signed(artifact, keys, what="artifact"))


def signed_by(
    artifact: Mapping[str, Any], document: DidDocument, *, what: str, lenient: bool
) -> bool:
    """Verify against the document's active keys (OCP-401 otherwise).

    ``False`` when, ``lenient``, only a key the agent has revoked verifies.
    """
    try:
        verify_signed(artifact, document.verification_keys(), what=what)
    except AuthError:
        revoked = list(document.revoked_keys.values())
        if lenient and revoked and verifies_under(artifact, revoked):
            return False
        raise
    return True


def bond_signed(
    bond: Mapping[str, Any],
    documents: Mapping[str, DidDocument],
    *,
    now: float,
    clock_skew: float,
    lenient: bool,
) -> bool:
    """:func:`verify_bond` with each party's document; ``False`` as in :func:`signed_by`."""
    try:
        verify_bond(
            bond,
            {a: d.verification_keys() for a, d in documents.items()},
            now=now,
            clock_skew=clock_skew,
        )
    except AuthError:
        every_key = {
            a: [*d.verification_keys(), *d.revoked_keys.values()] for a, d in documents.items()
        }
        if lenient and _verifies(
            lambda: verify_bond(bond, every_key, now=now, clock_skew=float("inf"))
        ):
            return False
        raise
    return True
