"""Recovery Share Records, proofs and responses (ocpd.proto.recovery)."""

from __future__ import annotations

import copy
import itertools
import random

import pytest

from ocpd.proto import recovery, shamir
from ocpd.proto.crypto import SigningKey, X25519KeyPair
from ocpd.proto.encoding import b64url_decode, b64url_encode, format_timestamp
from ocpd.proto.errors import AuthError, MalformedError
from ocpd.proto.ids import derive_agent_id, key_fingerprint
from ocpd.proto.recovery import (
    Custodian,
    RecoveryFailed,
    make_share_records,
    open_share_record,
    open_share_response,
    recover_key,
    recovery_request_payload,
    seal_share_response,
    verify_proof,
    verify_share_record,
)
from ocpd.proto.signing import sign_artifact

NOW = 1_790_000_000.0
CREATED = format_timestamp(NOW)


def _key(seed: int) -> SigningKey:
    return SigningKey(bytes([seed]) * 32)


AGENT_KEY = _key(1)
AGENT = derive_agent_id(AGENT_KEY.public_key, "mainnet")
FINGERPRINT = key_fingerprint(AGENT_KEY.public_key)
RECOVERY_KEY = _key(2)
RECOVERY_KEY_ID = f"{AGENT}#recovery-key-1"
CUSTODIAN_KEYS = [_key(10 + n) for n in range(5)]
CUSTODIANS = [
    Custodian(derive_agent_id(k.public_key, "mainnet"), k.x25519_public_key())
    for k in CUSTODIAN_KEYS
]


def _records(threshold: int = 3) -> list[dict[str, object]]:
    return make_share_records(
        AGENT_KEY, agent_id=AGENT, custodians=CUSTODIANS, threshold=threshold, created_at=CREATED
    )


def _opened(records: list[dict[str, object]]) -> list[shamir.Share]:
    return [
        open_share_record(record, key, custodian.agent_id)
        for record, key, custodian in zip(records, CUSTODIAN_KEYS, CUSTODIANS, strict=True)
    ]


# --- records -------------------------------------------------------------------------


def test_each_record_is_signed_sealed_and_opens_for_its_custodian_only() -> None:
    records = _records()
    assert [r["share_index"] for r in records] == [1, 2, 3, 4, 5]
    shares = _opened(records)
    for record, share in zip(records, shares, strict=True):
        verify_share_record(record, AGENT_KEY.public_key, now=NOW)
        assert record["share_id"] == f"share-{AGENT.rsplit('-', 1)[1]}-{share.index}"
        assert record["key_fingerprint"] == FINGERPRINT
        sealed = b64url_decode(record["share_data"])
        assert len(sealed) == 48 and share.data not in sealed
    # Any three of the opened shares rebuild the seed.
    for subset in itertools.combinations(shares, 3):
        assert shamir.combine(list(subset)) == AGENT_KEY.seed()
    # Another custodian's key does not open a record, nor does the right key
    # under another custodian id (the id is in the additional data).
    with pytest.raises(AuthError) as wrong_key:
        open_share_record(records[0], CUSTODIAN_KEYS[1], CUSTODIANS[0].agent_id)
    assert wrong_key.value.details["reason"] == "share_not_for_custodian"
    with pytest.raises(AuthError):
        open_share_record(records[0], CUSTODIAN_KEYS[0], CUSTODIANS[1].agent_id)


def test_records_are_fresh_each_time() -> None:
    first, second = _records(), _records()
    assert {r["share_data"] for r in first}.isdisjoint(r["share_data"] for r in second)
    assert _opened(first) != _opened(second)


def test_seeded_randomness_makes_records_reproducible() -> None:
    def seeded() -> list[dict[str, object]]:
        rng = random.Random(7)
        return make_share_records(
            AGENT_KEY,
            agent_id=AGENT,
            custodians=CUSTODIANS[:3],
            threshold=2,
            created_at=CREATED,
            random=rng.randbytes,
        )

    assert seeded() == seeded()


@pytest.mark.parametrize(
    ("custodians", "threshold", "reason"),
    [
        (CUSTODIANS[:2], 3, "too_few_custodians"),
        ([*CUSTODIANS[:3], CUSTODIANS[0]], 3, "custodian_repeated"),
        (
            [
                *CUSTODIANS[:3],
                Custodian("did:ocp:mainnet:agent-0123456789ab", CUSTODIANS[0].x25519_public_key),
            ],
            3,
            "custodian_repeated",
        ),
    ],
)
def test_too_few_or_repeated_custodians_are_refused(
    custodians: list[Custodian], threshold: int, reason: str
) -> None:
    with pytest.raises(MalformedError) as refused:
        make_share_records(
            AGENT_KEY,
            agent_id=AGENT,
            custodians=custodians,
            threshold=threshold,
            created_at=CREATED,
        )
    assert refused.value.details["reason"] == reason


def test_a_custodian_refuses_records_it_must_not_keep() -> None:
    record = _records()[0]
    # Signed by another key.
    with pytest.raises(AuthError):
        verify_share_record(record, _key(99).public_key, now=NOW)
    # Altered after signing.
    altered = copy.deepcopy(record)
    altered["threshold"] = 2
    with pytest.raises(AuthError):
        verify_share_record(altered, AGENT_KEY.public_key, now=NOW)
    # Signed by the agent but for another key's fingerprint.
    other = sign_artifact({**_strip(record), "key_fingerprint": "0" * 16}, AGENT_KEY)
    with pytest.raises(MalformedError) as mismatch:
        verify_share_record(other, AGENT_KEY.public_key, now=NOW)
    assert mismatch.value.details["reason"] == "fingerprint_mismatch"
    # A plain share, even signed, is never accepted.
    plain = _strip(record)
    plain["share_data"] = b64url_encode(bytes(32))
    plain["encryption"] = {"algorithm": "AES-256-GCM"}
    with pytest.raises(MalformedError) as unsealed:
        verify_share_record(sign_artifact(plain, AGENT_KEY), AGENT_KEY.public_key, now=NOW)
    assert unsealed.value.details["reason"] == "share_not_sealed"
    # Created in the future.
    later = make_share_records(
        AGENT_KEY,
        agent_id=AGENT,
        custodians=CUSTODIANS[:3],
        threshold=2,
        created_at=format_timestamp(NOW + 3600),
    )[0]
    with pytest.raises(MalformedError):
        verify_share_record(later, AGENT_KEY.public_key, now=NOW)


def _strip(record: dict[str, object]) -> dict[str, object]:
    return {k: v for k, v in record.items() if k != "signature"}


# --- proofs --------------------------------------------------------------------------


def test_a_recovery_key_proof_verifies_against_the_pinned_key_only() -> None:
    ephemeral = X25519KeyPair.generate()
    payload = recovery_request_payload(
        agent_id=AGENT,
        fingerprint=FINGERPRINT,
        ephemeral=ephemeral,
        recovery_key=RECOVERY_KEY,
        recovery_key_id=RECOVERY_KEY_ID,
    )
    verify_proof(payload, RECOVERY_KEY.public_key)
    signed = (AGENT + FINGERPRINT + b64url_encode(ephemeral.public_key)).encode()
    assert recovery.proof_bytes(AGENT, FINGERPRINT, payload["ephemeral_public_key"]) == signed
    with pytest.raises(AuthError) as wrong:
        verify_proof(payload, _key(3).public_key)  # not the pinned key
    assert wrong.value.details["reason"] == "bad_proof"
    # The proof is bound to the ephemeral key, the fingerprint and the agent.
    for field, value in (
        ("ephemeral_public_key", b64url_encode(X25519KeyPair.generate().public_key)),
        ("key_fingerprint", "f" * 16),
    ):
        with pytest.raises(AuthError):
            verify_proof({**payload, field: value}, RECOVERY_KEY.public_key)
    other_agent = "did:ocp:mainnet:agent-0123456789ab"
    with pytest.raises(AuthError):
        verify_proof({**payload, "agent_id": other_agent}, RECOVERY_KEY.public_key)


def test_operator_approval_requests_carry_no_signature() -> None:
    ephemeral = X25519KeyPair.generate()
    asked = recovery_request_payload(agent_id=AGENT, fingerprint=FINGERPRINT, ephemeral=ephemeral)
    assert asked["proof"] == {"type": "operator_approval"}
    approved = recovery_request_payload(
        agent_id=AGENT, fingerprint=FINGERPRINT, ephemeral=ephemeral, approval_id="apr-1"
    )
    assert approved["proof"] == {"type": "operator_approval", "approval_id": "apr-1"}
    with pytest.raises(MalformedError):
        verify_proof(approved, RECOVERY_KEY.public_key)


# --- responses -----------------------------------------------------------------------


def test_a_returned_share_opens_only_with_the_request_key() -> None:
    share = _opened(_records())[2]
    ephemeral = X25519KeyPair.generate()
    payload = seal_share_response(
        share,
        agent_id=AGENT,
        fingerprint=FINGERPRINT,
        custodian_key=CUSTODIAN_KEYS[2],
        custodian_id=CUSTODIANS[2].agent_id,
        ephemeral_public_key=ephemeral.public_key,
    )
    assert payload["share_index"] == 3
    assert share.data not in b64url_decode(payload["encrypted_share"])
    opened = open_share_response(
        payload, ephemeral=ephemeral, fingerprint=FINGERPRINT, custodian=CUSTODIANS[2]
    )
    assert opened == share
    for kwargs in (
        {
            "ephemeral": X25519KeyPair.generate(),
            "fingerprint": FINGERPRINT,
            "custodian": CUSTODIANS[2],
        },
        {"ephemeral": ephemeral, "fingerprint": "0" * 16, "custodian": CUSTODIANS[2]},
        {"ephemeral": ephemeral, "fingerprint": FINGERPRINT, "custodian": CUSTODIANS[1]},
    ):
        with pytest.raises(AuthError):
            open_share_response(payload, **kwargs)  # type: ignore[arg-type]
    with pytest.raises(AuthError):
        open_share_response(
            {**payload, "share_index": 4},
            ephemeral=ephemeral,
            fingerprint=FINGERPRINT,
            custodian=CUSTODIANS[2],
        )


# --- rebuilding ----------------------------------------------------------------------


def test_any_threshold_of_shares_rebuilds_the_key() -> None:
    shares = _opened(_records())
    for subset in itertools.combinations(shares, 3):
        rebuilt = recover_key(list(subset), threshold=3, fingerprint=FINGERPRINT)
        assert rebuilt.key.public_key == AGENT_KEY.public_key
        assert rebuilt.disagreeing == ()
    every = recover_key(shares, threshold=3, fingerprint=FINGERPRINT)
    assert every.agreeing == (1, 2, 3, 4, 5) and every.disagreeing == ()


def test_fewer_than_threshold_shares_fail_without_a_key() -> None:
    shares = _opened(_records())
    with pytest.raises(RecoveryFailed) as failed:
        recover_key(shares[:2], threshold=3, fingerprint=FINGERPRINT)
    assert failed.value.details["reason"] == "too_few_shares"
    assert failed.value.code == "OCP-400"
    # Told a lower threshold, two shares of a 3-of-5 split rebuild some other
    # key, which the fingerprint check refuses.
    with pytest.raises(RecoveryFailed) as wrong:
        recover_key(shares[:2], threshold=2, fingerprint=FINGERPRINT)
    assert wrong.value.details["reason"] == "no_consistent_shares"


def _tampered(share: shamir.Share) -> shamir.Share:
    data = bytearray(share.data)
    data[5] ^= 0x40
    return shamir.Share(index=share.index, data=bytes(data))


def test_a_tampered_share_is_found_among_more_than_threshold() -> None:
    shares = _opened(_records())
    for bad in range(5):
        given = list(shares)
        given[bad] = _tampered(given[bad])
        for count in (4, 5):
            chosen = given[:count] if bad < count else [*given[: count - 1], given[bad]]
            rebuilt = recover_key(chosen, threshold=3, fingerprint=FINGERPRINT)
            assert rebuilt.key.public_key == AGENT_KEY.public_key
            assert rebuilt.disagreeing == (bad + 1,)
            assert bad + 1 not in rebuilt.agreeing


def test_a_tampered_share_among_exactly_threshold_is_noticed() -> None:
    shares = _opened(_records())
    with pytest.raises(RecoveryFailed) as failed:
        recover_key([_tampered(shares[0]), *shares[1:3]], threshold=3, fingerprint=FINGERPRINT)
    assert failed.value.details["reason"] == "no_consistent_shares"


def test_shares_of_another_key_are_refused() -> None:
    other = make_share_records(
        _key(50), agent_id=AGENT, custodians=CUSTODIANS, threshold=3, created_at=CREATED
    )
    with pytest.raises(RecoveryFailed):
        recover_key(_opened(other), threshold=3, fingerprint=FINGERPRINT)
    with pytest.raises(MalformedError) as short:
        recover_key([shamir.Share(1, b"x" * 16)] * 3, threshold=3, fingerprint=FINGERPRINT)
    assert short.value.details["reason"] == "length_mismatch"
