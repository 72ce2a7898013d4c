"""Key recovery records, proofs and responses (OCP §8.3, D5, D9).

The sans-I/O half of key recovery; the custodian service and the SDK call
these functions and do the I/O around them.

An agent splits its Ed25519 seed with :mod:`ocpd.proto.shamir` and makes one
Recovery Share Record per custodian (:func:`make_share_records`). Before a
share leaves the agent it is sealed to its custodian with the D5
construction under its own HKDF ``info``:

* a fresh ephemeral X25519 key, ECDH with the custodian's ``keyAgreement``
  key, ``HKDF-SHA256(salt = ephemeral public || custodian public,
  info = "OCP-1.0 recovery-share AES-256-GCM")``;
* AES-256-GCM over the 32 share bytes, with the additional data
  ``share_id \\n agent_id \\n custodian agent id`` (:func:`deposit_aad`),
  so a record sealed for one custodian opens for no other;
* ``share_data`` is the 48 bytes of ciphertext and tag, and ``encryption``
  carries ``nonce`` and ``ephemeral_public_key``.

The record is signed by the agent's signing key (D2, field ``signature``),
so a custodian can tell whose share it holds.

To recover, the agent draws an ephemeral X25519 key and proves to each
custodian who it is: an Ed25519 signature by its recovery key over the UTF-8
bytes of ``agent_id + key_fingerprint + ephemeral_public_key`` (the three
payload strings, concatenated; :func:`proof_bytes`), or an operator's
approval. The custodian opens its share and seals it again to the ephemeral
key (:func:`seal_share_response`): ECDH between the custodian's
``keyAgreement`` key and the ephemeral key, the same KDF with the ephemeral
key first in the salt, and the additional data
``agent_id \\n key_fingerprint \\n share_index \\n custodian agent id``
(:func:`response_aad`). :func:`recover_key` combines the opened shares and
checks the result against ``key_fingerprint``; with more shares than the
threshold it also names the shares that disagree with the others.

No function here reads a clock, does I/O or logs; share bytes never appear
in errors or reprs.
"""

from __future__ import annotations

import itertools
import os
from typing import TYPE_CHECKING, Any, Final

import attrs

from ocpd.proto import shamir
from ocpd.proto.artifacts import DEFAULT_CLOCK_SKEW, check_recovery_share
from ocpd.proto.crypto import (
    AEAD_TAG_SIZE,
    GCM_NONCE_SIZE,
    DecryptionFailed,
    SigningKey,
    X25519KeyPair,
    aes256gcm_decrypt,
    aes256gcm_encrypt,
    ed25519_verify,
    hkdf_sha256,
    random_bytes,
    x25519,
)
from ocpd.proto.encoding import b64url_decode, b64url_encode
from ocpd.proto.errors import AuthError, MalformedError
from ocpd.proto.ids import key_fingerprint
from ocpd.proto.signing import sign_artifact, verify_artifact

if TYPE_CHECKING:
    from collections.abc import Callable, Iterable, Sequence

__all__ = [
    "DEFAULT_EXPIRY_DAYS",
    "MAX_SUBSETS",
    "PROOF_TYPES",
    "SHARE_INFO",
    "Custodian",
    "RecoveredKey",
    "RecoveryFailed",
    "deposit_aad",
    "make_share_records",
    "open_share_record",
    "open_share_response",
    "proof_bytes",
    "recover_key",
    "recovery_request_payload",
    "response_aad",
    "seal_share_response",
    "share_id_for",
    "verify_proof",
    "verify_share_record",
]

#: HKDF ``info`` of both seals (D5, D9).
SHARE_INFO: Final = b"OCP-1.0 recovery-share AES-256-GCM"
#: ``proof.type`` values of a ``recovery_request``.
PROOF_TYPES: Final = ("secondary_key_signature", "operator_approval")
#: Days a custodian keeps a share unless the deposit says otherwise (§8.3.8).
DEFAULT_EXPIRY_DAYS: Final = 90
#: Threshold-sized subsets :func:`recover_key` tries before it gives up.
MAX_SUBSETS: Final = 10_000

_SHARE_BYTES: Final = shamir.SEED_BYTES
_SEALED_BYTES: Final = _SHARE_BYTES + AEAD_TAG_SIZE


@attrs.frozen
class Custodian:
    """A custodian as an agent sees it: its service agent id and X25519 key."""

    agent_id: str
    x25519_public_key: bytes = attrs.field(repr=lambda key: key.hex())


class RecoveryFailed(MalformedError):
    """The shares given do not rebuild the key with the expected fingerprint.

    ``details["reason"]`` is ``too_few_shares`` (fewer than the threshold) or
    ``no_consistent_shares`` (no threshold-sized subset rebuilds it: too
    many shares are wrong, or they belong to another key).
    """


@attrs.frozen
class RecoveredKey:
    """A rebuilt signing key, the shares that agree with it and those that do not."""

    key: SigningKey
    agreeing: tuple[int, ...]
    disagreeing: tuple[int, ...]


# --- ids and additional data ---------------------------------------------------------


def share_id_for(agent_id: str, share_index: int) -> str:
    """``share-<the agent id's 12 hex digits>-<index>`` (§8.3.3)."""
    return f"share-{agent_id.rsplit('-', 1)[-1]}-{share_index}"


def deposit_aad(share_id: str, agent_id: str, custodian_id: str) -> bytes:
    """Additional data of a sealed share: it opens only for that custodian."""
    return f"{share_id}\n{agent_id}\n{custodian_id}".encode()


def response_aad(agent_id: str, fingerprint: str, share_index: int, custodian_id: str) -> bytes:
    """Additional data of a returned share."""
    return f"{agent_id}\n{fingerprint}\n{share_index}\n{custodian_id}".encode()


def _share_key(shared: bytes, ephemeral_public: bytes, static_public: bytes) -> bytes:
    return hkdf_sha256(shared, salt=ephemeral_public + static_public, info=SHARE_INFO, length=32)


# --- records -------------------------------------------------------------------------


def make_share_records(
    key: SigningKey,
    *,
    agent_id: str,
    custodians: Sequence[Custodian],
    threshold: int,
    created_at: str,
    random: Callable[[int], bytes] = os.urandom,
) -> list[dict[str, Any]]:
    """One signed, sealed Recovery Share Record per custodian, in index order.

    Share ``i`` goes to ``custodians[i - 1]``. Refuses (OCP-400) fewer
    custodians than ``threshold`` and a custodian named twice (by id or by
    key): no custodian may hold two shares of one key (§8.3.4). ``random``
    feeds the polynomial coefficients, the ephemeral keys and the nonces, in
    that order (test vectors pass a seeded source).
    """
    if len(custodians) < threshold:
        raise MalformedError(
            f"{threshold} shares are needed to recover, so at least {threshold} "
            f"custodians, not {len(custodians)}",
            details={"reason": "too_few_custodians", "threshold": threshold},
        )
    ids = {c.agent_id for c in custodians}
    keys = {c.x25519_public_key for c in custodians}
    if len(ids) != len(custodians) or len(keys) != len(custodians):
        raise MalformedError(
            "each custodian may hold only one share of a key",
            details={"reason": "custodian_repeated"},
        )
    shares = shamir.split(key.seed(), threshold, len(custodians), random=random)
    fingerprint = key_fingerprint(key.public_key)
    records = []
    for share, custodian in zip(shares, custodians, strict=True):
        share_id = share_id_for(agent_id, share.index)
        ephemeral = X25519KeyPair(random(32))
        nonce = random(GCM_NONCE_SIZE)
        shared = x25519(ephemeral.private_key, custodian.x25519_public_key)
        sealed = aes256gcm_encrypt(
            _share_key(shared, ephemeral.public_key, custodian.x25519_public_key),
            nonce,
            share.data,
            deposit_aad(share_id, agent_id, custodian.agent_id),
        )
        record = {
            "share_id": share_id,
            "agent_id": agent_id,
            "scheme": shamir.SCHEME,
            "threshold": threshold,
            "total_shares": len(custodians),
            "share_index": share.index,
            "share_data": b64url_encode(sealed),
            "key_fingerprint": fingerprint,
            "created_at": created_at,
            "encryption": {
                "algorithm": "AES-256-GCM",
                "key_exchange": "ECDH-X25519",
                "nonce": b64url_encode(nonce),
                "ephemeral_public_key": b64url_encode(ephemeral.public_key),
            },
        }
        records.append(sign_artifact(record, key))
    return records


def verify_share_record(
    record: dict[str, Any],
    agent_public_key: bytes,
    *,
    now: float,
    clock_skew: float = DEFAULT_CLOCK_SKEW,
) -> None:
    """A deposited record as a custodian must see it.

    Schema and §8.3.2 parameters (OCP-400), sealed rather than plain
    (OCP-400: §8.3.3 forbids plaintext shares), signed by
    ``agent_public_key`` (OCP-401) and made for that key's fingerprint
    (OCP-400).
    """
    check_recovery_share(record, now=now, clock_skew=clock_skew)
    encryption = record["encryption"]
    if "nonce" not in encryption:
        raise MalformedError(
            "a share must be sealed to its custodian before it is sent",
            details={"reason": "share_not_sealed", "field": "share.encryption"},
        )
    verify_artifact(record, agent_public_key, what="recovery share record")
    if record["key_fingerprint"] != key_fingerprint(agent_public_key):
        raise MalformedError(
            "the share is for another key than the agent's signing key",
            details={"reason": "fingerprint_mismatch", "field": "share.key_fingerprint"},
        )


def open_share_record(
    record: dict[str, Any], custodian_key: SigningKey, custodian_id: str
) -> shamir.Share:
    """The share inside a record sealed to this custodian (OCP-401 if it does not open)."""
    encryption = record["encryption"]
    nonce = b64url_decode(encryption["nonce"], field="encryption.nonce", length=GCM_NONCE_SIZE)
    ephemeral = b64url_decode(
        encryption["ephemeral_public_key"], field="encryption.ephemeral_public_key", length=32
    )
    sealed = b64url_decode(record["share_data"], field="share_data", length=_SEALED_BYTES)
    shared = x25519(custodian_key.x25519_private_key(), ephemeral)
    try:
        data = aes256gcm_decrypt(
            _share_key(shared, ephemeral, custodian_key.x25519_public_key()),
            nonce,
            sealed,
            deposit_aad(record["share_id"], record["agent_id"], custodian_id),
        )
    except DecryptionFailed as exc:
        raise AuthError(
            "the share is not sealed to this custodian",
            details={"reason": "share_not_for_custodian"},
        ) from exc
    return shamir.Share(index=record["share_index"], data=data)


# --- recovery requests ---------------------------------------------------------------


def proof_bytes(agent_id: str, fingerprint: str, ephemeral_public_key: str) -> bytes:
    """What a recovery key signs: ``agent_id + key_fingerprint + ephemeral_public_key``.

    The three are the payload's strings (the ephemeral key in its base64url
    form), concatenated without separators as D9 states.
    """
    return (agent_id + fingerprint + ephemeral_public_key).encode()


def recovery_request_payload(
    *,
    agent_id: str,
    fingerprint: str,
    ephemeral: X25519KeyPair,
    recovery_key: SigningKey | None = None,
    recovery_key_id: str | None = None,
    approval_id: str | None = None,
) -> dict[str, Any]:
    """A ``recovery_request`` payload, proved by ``recovery_key`` or by an operator.

    With ``recovery_key`` (and its DID URL ``recovery_key_id``) the proof is a
    ``secondary_key_signature``; without, an ``operator_approval``, carrying
    ``approval_id`` once the custodian's operator has approved the request.
    """
    ephemeral_text = b64url_encode(ephemeral.public_key)
    proof: dict[str, Any]
    if recovery_key is not None:
        if recovery_key_id is None:
            raise ValueError("a recovery key signature needs the key's id")
        signature = recovery_key.sign(proof_bytes(agent_id, fingerprint, ephemeral_text))
        proof = {
            "type": "secondary_key_signature",
            "secondary_key_id": recovery_key_id,
            "signature": b64url_encode(signature),
        }
    else:
        proof = {"type": "operator_approval"}
        if approval_id is not None:
            proof["approval_id"] = approval_id
    return {
        "agent_id": agent_id,
        "key_fingerprint": fingerprint,
        "ephemeral_public_key": ephemeral_text,
        "proof": proof,
    }


def verify_proof(payload: dict[str, Any], recovery_public_key: bytes) -> None:
    """Check a ``secondary_key_signature`` proof against the pinned recovery key.

    OCP-401 when the signature is not by that key over :func:`proof_bytes`,
    or when the key id names another agent.
    """
    proof = payload["proof"]
    if proof.get("type") != "secondary_key_signature":
        raise MalformedError(
            "this proof is not a recovery key signature", details={"field": "proof.type"}
        )
    if not str(proof.get("secondary_key_id", "")).startswith(payload["agent_id"] + "#"):
        raise AuthError(
            "the recovery key belongs to another agent",
            details={"reason": "bad_proof", "field": "proof.secondary_key_id"},
        )
    signature = b64url_decode(proof.get("signature"), field="proof.signature", length=64)
    signed = proof_bytes(
        payload["agent_id"], payload["key_fingerprint"], payload["ephemeral_public_key"]
    )
    if not ed25519_verify(recovery_public_key, signed, signature):
        raise AuthError(
            "the proof is not signed by the recovery key deposited with the share",
            details={"reason": "bad_proof", "field": "proof.signature"},
        )


# --- responses -----------------------------------------------------------------------


def seal_share_response(
    share: shamir.Share,
    *,
    agent_id: str,
    fingerprint: str,
    custodian_key: SigningKey,
    custodian_id: str,
    ephemeral_public_key: bytes,
    nonce: bytes | None = None,
) -> dict[str, Any]:
    """The ``recovery_share_response`` payload: the share sealed to the ephemeral key."""
    nonce = nonce if nonce is not None else random_bytes(GCM_NONCE_SIZE)
    shared = x25519(custodian_key.x25519_private_key(), ephemeral_public_key)
    key = _share_key(shared, ephemeral_public_key, custodian_key.x25519_public_key())
    sealed = aes256gcm_encrypt(
        key, nonce, share.data, response_aad(agent_id, fingerprint, share.index, custodian_id)
    )
    return {
        "agent_id": agent_id,
        "share_index": share.index,
        "encrypted_share": b64url_encode(sealed),
        "nonce": b64url_encode(nonce),
    }


def open_share_response(
    payload: dict[str, Any],
    *,
    ephemeral: X25519KeyPair,
    fingerprint: str,
    custodian: Custodian,
) -> shamir.Share:
    """The share a custodian returned (OCP-401 if it does not open)."""
    nonce = b64url_decode(payload.get("nonce"), field="nonce", length=GCM_NONCE_SIZE)
    sealed = b64url_decode(
        payload.get("encrypted_share"), field="encrypted_share", length=_SEALED_BYTES
    )
    index = payload.get("share_index")
    if isinstance(index, bool) or not isinstance(index, int) or not 1 <= index <= 255:
        raise MalformedError("share_index must be from 1 to 255", details={"field": "share_index"})
    shared = x25519(ephemeral.private_key, custodian.x25519_public_key)
    key = _share_key(shared, ephemeral.public_key, custodian.x25519_public_key)
    aad = response_aad(str(payload.get("agent_id")), fingerprint, index, custodian.agent_id)
    try:
        data = aes256gcm_decrypt(key, nonce, sealed, aad)
    except DecryptionFailed as exc:
        raise AuthError(
            "the returned share does not open with this request's key",
            details={"reason": "response_not_for_request"},
        ) from exc
    return shamir.Share(index=index, data=data)


# --- rebuilding the key --------------------------------------------------------------


def _rebuild(shares: Iterable[shamir.Share], fingerprint: str) -> SigningKey | None:
    key = SigningKey(shamir.combine(list(shares)))
    return key if key_fingerprint(key.public_key) == fingerprint else None


def recover_key(
    shares: Sequence[shamir.Share], *, threshold: int, fingerprint: str
) -> RecoveredKey:
    """Rebuild the signing key from ``shares`` and check it against ``fingerprint``.

    With exactly ``threshold`` shares a wrong share can only be noticed; with
    more, every threshold-sized subset is tried (at most :data:`MAX_SUBSETS`)
    until one rebuilds the key, and each other share is then tested against
    it: :attr:`RecoveredKey.disagreeing` lists the indices of shares that
    were altered or belong to another key. Raises :class:`RecoveryFailed`.
    """
    if any(len(share.data) != _SHARE_BYTES for share in shares):
        raise MalformedError(
            f"a share of an Ed25519 seed is {_SHARE_BYTES} bytes",
            details={"reason": "length_mismatch"},
        )
    if len(shares) < threshold:
        raise RecoveryFailed(
            f"{threshold} shares are needed, {len(shares)} were given",
            details={"reason": "too_few_shares", "threshold": threshold, "given": len(shares)},
        )
    for tried, subset in enumerate(itertools.combinations(shares, threshold)):
        if tried >= MAX_SUBSETS:
            break
        key = _rebuild(subset, fingerprint)
        if key is None:
            continue
        basis = list(subset[1:])
        agreeing = [share.index for share in subset]
        disagreeing = []
        for share in shares:
            if share in subset:
                continue
            # A share on the same polynomial rebuilds the same key in place of any other.
            if _rebuild([*basis, share], fingerprint) is not None:
                agreeing.append(share.index)
            else:
                disagreeing.append(share.index)
        return RecoveredKey(
            key=key, agreeing=tuple(sorted(agreeing)), disagreeing=tuple(sorted(disagreeing))
        )
    raise RecoveryFailed(
        "the shares do not rebuild the key with this fingerprint",
        details={"reason": "no_consistent_shares", "threshold": threshold, "given": len(shares)},
    )
