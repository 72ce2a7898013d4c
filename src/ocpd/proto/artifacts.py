"""Signed OCP artifacts and the rules each one must satisfy (D2).

Each artifact is a JSON object signed with the one D2 rule (see
:mod:`ocpd.proto.signing`). The ``check_*`` functions validate an artifact
against its schema and the rules a schema cannot express (time spans,
distinct parties, consistent counts), given ``now``; the ``verify_*``
functions additionally check signatures against keys the caller resolved
(usually from DID documents). Trust questions that need registry state, such
as whether an attester is Level 2, are the registry's to answer.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, Final

from ocpd.proto import schema
from ocpd.proto.crypto import SigningKey, ed25519_verify
from ocpd.proto.diddoc import DidDocument, parse_did_document
from ocpd.proto.encoding import b64url_decode, b64url_encode, parse_timestamp
from ocpd.proto.errors import AuthError, MalformedError
from ocpd.proto.ids import multibase_ed25519, parse_multibase_ed25519
from ocpd.proto.signing import artifact_digest, sign_artifact, verify_artifact

__all__ = [
    "MAX_BOND_DURATION",
    "MAX_CERTIFICATION_DURATION",
    "MAX_VOUCH_DURATION",
    "RECORD_DEFAULT_TTL",
    "certifier_key",
    "check_agent_record",
    "check_bond",
    "check_bond_revocation",
    "check_certification",
    "check_certification_revocation",
    "check_consensus_vote",
    "check_interaction_rating",
    "check_recovery_share",
    "check_vouch",
    "check_vouch_revocation",
    "intersect_permissions",
    "sign",
    "sign_bond",
    "sign_certification",
    "sign_certification_revocation",
    "verify_bond",
    "verify_certification",
    "verify_certification_revocation",
    "verify_registration",
    "verify_signed",
    "vouch_digest",
]

MAX_VOUCH_DURATION: Final = 31_536_000
MAX_BOND_DURATION: Final = 31_536_000
MAX_CERTIFICATION_DURATION: Final = 31_536_000
RECORD_DEFAULT_TTL: Final = 86_400
DEFAULT_CLOCK_SKEW: Final = 60.0

Artifact = Mapping[str, Any]


def _not_in_future(value: object, field: str, now: float, skew: float) -> float:
    at = parse_timestamp(value, field=field)
    if at > now + skew:
        raise MalformedError(f"{field} lies in the future", details={"field": field})
    return at


def _span(
    start: float, end: float, *, limit: int, start_field: str, end_field: str, what: str
) -> None:
    if end <= start:
        raise MalformedError(
            f"{end_field} must be after {start_field}", details={"field": end_field}
        )
    if end - start > limit:
        raise MalformedError(
            f"{what} may last at most {limit // 86_400} days",
            details={"field": end_field, "max_seconds": limit},
        )


def verify_signed(artifact: Artifact, public_keys: Sequence[bytes], *, what: str) -> bytes:
    """Verify a single-signer artifact against any of ``public_keys``; returns the digest."""
    last: AuthError | None = None
    for key in public_keys:
        try:
            return verify_artifact(artifact, key, what=what)
        except AuthError as exc:
            last = exc
    raise last or AuthError(f"no key to verify the {what}")


# --- agent record (§3.2.2, D4) ----------------------------------------------------------


def check_agent_record(
    record: Artifact, *, now: float, clock_skew: float = DEFAULT_CLOCK_SKEW
) -> None:
    schema.validate("agent-record", record)
    _not_in_future(record["registered_at"], "registered_at", now, clock_skew)


def verify_registration(
    body: Artifact, *, now: float, clock_skew: float = DEFAULT_CLOCK_SKEW
) -> tuple[dict[str, Any], DidDocument]:
    """Check a registration ``{"record", "did_document"}`` (D4).

    The agent id must derive from the document's initial key (OCP-401
    otherwise: the record claims an identity its keys do not prove), and the
    record must be signed by a key active in the document.
    """
    if set(body) != {"record", "did_document"}:
        raise MalformedError("registration must be exactly {record, did_document}")
    record = body["record"]
    if not isinstance(record, Mapping):
        raise MalformedError("record must be an object")
    check_agent_record(record, now=now, clock_skew=clock_skew)
    schema.validate("did-document", body["did_document"])
    try:
        document = parse_did_document(body["did_document"])
    except MalformedError as exc:
        if "derive" in exc.message:
            raise AuthError(exc.message) from exc
        raise
    if document.agent_id != record["agent_id"]:
        raise AuthError("agent id does not derive from the DID document's initial key")
    verify_signed(record, document.verification_keys(), what="agent record")
    return dict(record), document


# --- vouches (§4.2.3) ---------------------------------------------------------------------


def check_vouch(vouch: Artifact, *, now: float, clock_skew: float = DEFAULT_CLOCK_SKEW) -> None:
    schema.validate("vouch", vouch)
    if vouch["attester"] == vouch["subject"]:
        raise MalformedError("an agent cannot vouch for itself", details={"reason": "self-vouch"})
    issued = _not_in_future(vouch["issued_at"], "issued_at", now, clock_skew)
    expires = parse_timestamp(vouch["expires_at"], field="expires_at")
    _span(
        issued,
        expires,
        limit=MAX_VOUCH_DURATION,
        start_field="issued_at",
        end_field="expires_at",
        what="a vouch",
    )


def vouch_digest(vouch: Artifact) -> str:
    """The hex digest that identifies a vouch (its D2 signing digest)."""
    return artifact_digest(vouch).hex()


def check_vouch_revocation(
    revocation: Artifact,
    vouch: Artifact,
    *,
    now: float,
    clock_skew: float = DEFAULT_CLOCK_SKEW,
) -> None:
    """A revocation must come from the vouch's attester and name that vouch."""
    schema.validate("vouch-revocation", revocation)
    _not_in_future(revocation["revoked_at"], "revoked_at", now, clock_skew)
    if revocation["vouch_digest"] != vouch_digest(vouch):
        raise MalformedError("revocation names another vouch")
    if revocation["attester"] != vouch["attester"] or revocation["subject"] != vouch["subject"]:
        raise AuthError("only the attester can revoke a vouch")


# --- bonds (§4.3.2) -------------------------------------------------------------------------


def check_bond(bond: Artifact, *, now: float, clock_skew: float = DEFAULT_CLOCK_SKEW) -> None:
    schema.validate("bond", bond)
    agents = bond["agents"]
    if agents[0] == agents[1]:
        raise MalformedError("a bond needs two distinct agents")
    if set(bond["signatures"]) != set(agents):
        raise MalformedError("a bond must be signed by exactly its two agents")
    established = _not_in_future(bond["established_at"], "established_at", now, clock_skew)
    expires = parse_timestamp(bond["expires_at"], field="expires_at")
    _span(
        established,
        expires,
        limit=MAX_BOND_DURATION,
        start_field="established_at",
        end_field="expires_at",
        what="a bond",
    )


def sign_bond(bond: Artifact, key: SigningKey, agent_id: str) -> dict[str, Any]:
    """A copy of ``bond`` with ``agent_id``'s signature added to ``signatures``.

    Both parties sign the same bytes: the bond without its ``signatures`` map.
    """
    if agent_id not in bond.get("agents", ()):
        raise MalformedError("only a party to the bond can sign it")
    signatures = dict(bond.get("signatures", {}))
    signatures[agent_id] = b64url_encode(key.sign(artifact_digest(bond, field="signatures")))
    signed = dict(bond)
    signed["signatures"] = signatures
    return signed


def verify_bond(
    bond: Artifact,
    keys_by_agent: Mapping[str, Sequence[bytes]],
    *,
    now: float,
    clock_skew: float = DEFAULT_CLOCK_SKEW,
) -> bytes:
    """Check a bilateral bond and both signatures; returns the signed digest."""
    check_bond(bond, now=now, clock_skew=clock_skew)
    digest = artifact_digest(bond, field="signatures")
    for agent in bond["agents"]:
        signature = b64url_decode(bond["signatures"][agent], field="bond signature", length=64)
        if not any(ed25519_verify(k, digest, signature) for k in keys_by_agent.get(agent, ())):
            raise AuthError("bond signature of a party does not verify", details={"agent": agent})
    return digest


def check_bond_revocation(
    revocation: Artifact,
    bond: Artifact,
    *,
    now: float,
    clock_skew: float = DEFAULT_CLOCK_SKEW,
) -> None:
    schema.validate("bond-revocation", revocation)
    _not_in_future(revocation["revoked_at"], "revoked_at", now, clock_skew)
    if revocation["bond_id"] != bond["bond_id"]:
        raise MalformedError("revocation names another bond")
    if revocation["revoked_by"] not in bond["agents"]:
        raise AuthError("only a party to the bond can revoke it")


def intersect_permissions(a: Mapping[str, Any], b: Mapping[str, Any]) -> dict[str, Any]:
    """The permissions both parties agree to (§4.3.2): the stricter of each."""
    result: dict[str, Any] = {}
    for block in ("knowledge_share", "task_delegate", "model_delta_share"):
        pa, pb = a.get(block, {"enabled": False}), b.get(block, {"enabled": False})
        enabled = bool(pa.get("enabled")) and bool(pb.get("enabled"))
        merged: dict[str, Any] = {"enabled": enabled}
        if block == "knowledge_share":
            types_a, types_b = pa.get("allowed_types"), pb.get("allowed_types")
            if types_a is not None or types_b is not None:
                both = set(types_a if types_a is not None else types_b) & set(
                    types_b if types_b is not None else types_a
                )
                merged["allowed_types"] = sorted(both)
            _min_of(merged, pa, pb, "max_payload_bytes")
        elif block == "task_delegate":
            _min_of(merged, pa, pb, "max_concurrent")
            _min_of(merged, pa, pb, "timeout_seconds")
        result[block] = merged
    return result


def _min_of(out: dict[str, Any], a: Mapping[str, Any], b: Mapping[str, Any], name: str) -> None:
    values = [v for v in (a.get(name), b.get(name)) if v is not None]
    if values:
        out[name] = min(values)


# --- certifications (Level 4, D7) --------------------------------------------------------------
#
# A certification is signed by the certifier key it names in ``certifier``
# (multibase Ed25519, the spelling of ``trust.certifier_keys``): it carries
# its own proof, and whether that key confers Level 4 is the configuration's
# question, which the registry answers. Revocations name the certification by
# its ``certification_id`` and are signed by the same key.


def certifier_key(artifact: Artifact) -> bytes:
    """The raw Ed25519 key named by ``certifier`` (OCP-400 if it is not a canonical key)."""
    return parse_multibase_ed25519(artifact.get("certifier"), field="certifier")


def check_certification(
    certification: Artifact, *, now: float, clock_skew: float = DEFAULT_CLOCK_SKEW
) -> None:
    schema.validate("certification", certification)
    certifier_key(certification)
    issued = _not_in_future(certification["issued_at"], "issued_at", now, clock_skew)
    expires = parse_timestamp(certification["expires_at"], field="expires_at")
    _span(
        issued,
        expires,
        limit=MAX_CERTIFICATION_DURATION,
        start_field="issued_at",
        end_field="expires_at",
        what="a certification",
    )


def verify_certification(
    certification: Artifact, *, now: float, clock_skew: float = DEFAULT_CLOCK_SKEW
) -> bytes:
    """Rules and the signature under the named certifier key; returns the signed digest."""
    check_certification(certification, now=now, clock_skew=clock_skew)
    return verify_artifact(certification, certifier_key(certification), what="certification")


def check_certification_revocation(
    revocation: Artifact,
    certification: Artifact,
    *,
    now: float,
    clock_skew: float = DEFAULT_CLOCK_SKEW,
) -> None:
    """A revocation must name the certification, its subject and its certifier."""
    schema.validate("certification-revocation", revocation)
    _not_in_future(revocation["revoked_at"], "revoked_at", now, clock_skew)
    if revocation["certification_id"] != certification["certification_id"]:
        raise MalformedError("revocation names another certification")
    if revocation["subject"] != certification["subject"]:
        raise MalformedError("revocation names another subject than the certification")
    if revocation["certifier"] != certification["certifier"]:
        raise AuthError("only the certifier can revoke a certification")


def verify_certification_revocation(
    revocation: Artifact,
    certification: Artifact,
    *,
    now: float,
    clock_skew: float = DEFAULT_CLOCK_SKEW,
) -> bytes:
    """Rules and the certifier's signature; returns the signed digest."""
    check_certification_revocation(revocation, certification, now=now, clock_skew=clock_skew)
    key = certifier_key(certification)
    return verify_artifact(revocation, key, what="certification revocation")


def _sign_as_certifier(artifact: Artifact, key: SigningKey) -> dict[str, Any]:
    if artifact.get("certifier") != multibase_ed25519(key.public_key):
        raise MalformedError("certifier must name the signing key", details={"field": "certifier"})
    return sign_artifact(artifact, key)


def sign_certification(certification: Artifact, key: SigningKey) -> dict[str, Any]:
    """Sign a certification with the certifier key its ``certifier`` names."""
    return _sign_as_certifier(certification, key)


def sign_certification_revocation(revocation: Artifact, key: SigningKey) -> dict[str, Any]:
    """Sign a certification revocation with the certifier key its ``certifier`` names."""
    return _sign_as_certifier(revocation, key)


# --- consensus votes, ratings, recovery shares ---------------------------------------------------


def check_consensus_vote(vote: Artifact, *, sender: str | None = None) -> None:
    """Schema plus: an explicit ``voter`` must be the agent that sent the vote."""
    schema.validate("consensus-vote", vote)
    if sender is not None and "voter" in vote and vote["voter"] != sender:
        raise AuthError("vote names another voter than its sender")


def check_interaction_rating(
    rating: Artifact, *, now: float, clock_skew: float = DEFAULT_CLOCK_SKEW
) -> None:
    schema.validate("interaction-rating", rating)
    if rating["rater"] == rating["subject"]:
        raise MalformedError("an agent cannot rate itself")
    _not_in_future(rating["rated_at"], "rated_at", now, clock_skew)


def check_recovery_share(
    share: Artifact, *, now: float, clock_skew: float = DEFAULT_CLOCK_SKEW
) -> None:
    """Schema plus the parameter rules of §8.3.2-8.3.3 and D9."""
    schema.validate("recovery-share", share)
    t, n, index = share["threshold"], share["total_shares"], share["share_index"]
    if not (3 <= n <= 255 and 2 <= t <= n and 1 <= index <= n):
        raise MalformedError("share needs 3 <= n <= 255, 2 <= t <= n and 1 <= index <= n")
    short = share["agent_id"].rsplit("-", 1)[1]
    if share["share_id"] != f"share-{short}-{index}":
        raise MalformedError("share_id must be share-<agent id hex>-<index>")
    _not_in_future(share["created_at"], "created_at", now, clock_skew)
    encryption = share["encryption"]
    encrypted = "nonce" in encryption and "ephemeral_public_key" in encryption
    b64url_decode(share["share_data"], field="share_data", length=48 if encrypted else 32)
    if encrypted:
        b64url_decode(encryption["nonce"], field="encryption.nonce", length=12)
        b64url_decode(
            encryption["ephemeral_public_key"], field="encryption.ephemeral_public_key", length=32
        )


def sign(artifact: Artifact, key: SigningKey) -> dict[str, Any]:
    """Sign a single-signer artifact (every one except bonds) per D2."""
    return sign_artifact(artifact, key)
