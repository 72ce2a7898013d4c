"""The Privacy Validation Layer: every stage, its order, the content rules, fuzzing."""

from __future__ import annotations

import base64
import copy
import gzip
import json
import struct
import sys
import threading
import tracemalloc
import zlib
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from hypothesis import HealthCheck, assume, event, given, settings
from hypothesis import strategies as st

from ocpd.proto import pii_prefilter, pvl, schema
from ocpd.proto.errors import MalformedError, OcpError, PvlRejection
from ocpd.proto.jcs import canonicalize
from ocpd.proto.pii import scan, scan_text
from ocpd.proto.pii_prefilter import possible_kinds
from ocpd.proto.pvl import (
    DEFAULT_MAX_DECOMPRESSED_BYTES,
    RECORD_BYTES,
    RECORD_REPEAT_LIMIT,
    TEXT_RUN_BYTES,
    KnowledgePermissions,
    PvlPolicy,
    check_outgoing,
    compress_delta,
    decode_delta,
    decode_vectors,
    encode_vector,
    validate_knowledge,
)
from schema_examples import INSIGHT, MODEL_DELTA, PERMISSIONS

POLICY = PvlPolicy()
DELTA_BOND = KnowledgePermissions(enabled=True, model_delta=True)
SOURCE = "did:ocp:testnet:agent-0123456789ab"
T0 = "2026-04-03T12:00:00Z"
EMAIL = "alice.smith@example.com"
CORPUS = Path(__file__).parent / "data" / "pii_corpus.json"


# ---------------------------------------------------------------------- builders


def unit_vectors(count: int, dimensions: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    vectors = rng.standard_normal((count, dimensions))
    return vectors / np.linalg.norm(vectors, axis=1, keepdims=True)


def embedding(
    vectors: Any = None,
    *,
    encoding: str = "float32",
    normalization: str | None = "l2",
    dimensions: int | None = None,
) -> dict[str, Any]:
    if vectors is None:
        vectors = unit_vectors(3, 8)
    items = [
        {
            "id": f"emb-{index:03d}",
            "label": f"pattern_{index}",
            "vector": row if isinstance(row, str) else encode_vector(row, encoding),
            "metadata": {"source_domain": "cardiology", "created_at": T0},
        }
        for index, row in enumerate(vectors)
    ]
    payload: dict[str, Any] = {
        "knowledge_type": "embedding",
        "encoding": encoding,
        "dimensions": dimensions if dimensions is not None else len(np.asarray(vectors[0])),
        "model_family": "transformer",
        "vectors": items,
    }
    if normalization is not None:
        payload["normalization"] = normalization
    return payload


def insight(**changes: Any) -> dict[str, Any]:
    payload = copy.deepcopy(INSIGHT)
    payload.update(changes)
    return payload


def noise(values: int = 16384, *, seed: int = 1, scale: float = 1e-3) -> bytes:
    rng = np.random.default_rng(seed)
    return (rng.standard_normal(values) * scale).astype("<f4").tobytes()


def model_delta(
    raw: bytes | None = None, *, compression: str = "gzip", **changes: Any
) -> dict[str, Any]:
    payload = copy.deepcopy(MODEL_DELTA)
    payload["compression"] = compression
    payload["payload"] = compress_delta(noise() if raw is None else raw, compression)
    payload.update(changes)
    return payload


def with_dp(**changes: Any) -> dict[str, Any]:
    payload = model_delta()
    payload["differential_privacy"].update(changes)
    return payload


def check(
    payload: dict[str, Any],
    *,
    bond: KnowledgePermissions | None = None,
    policy: PvlPolicy = POLICY,
    size: int | None = None,
) -> None:
    """Validate as the node does: the schema first, then the PVL with the compact
    JSON size (the node's measure; JCS refuses the NaN some tests send)."""
    schema.validate("payload.knowledge_share", payload)
    size = json_size(payload) if size is None else size
    validate_knowledge(payload, size=size, policy=policy, bond=bond)


def json_size(payload: dict[str, Any]) -> int:
    return len(json.dumps(payload, separators=(",", ":"), ensure_ascii=False).encode())


def refused(payload: dict[str, Any], code: str, **kwargs: Any) -> OcpError:
    with pytest.raises(OcpError) as caught:
        check(payload, **kwargs)
    assert caught.value.code == code, caught.value
    json.dumps(caught.value.details)  # details travel on the wire
    return caught.value


def gzip_bomb(mib: int) -> bytes:
    """A valid gzip member of ``mib`` MiB of zeros, built without holding them."""
    zeros = bytes(1 << 20)
    packer = zlib.compressobj(9, zlib.DEFLATED, 31)
    head = packer.compress(zeros) + packer.flush(zlib.Z_SYNC_FLUSH)
    # After the first MiB every further MiB of zeros compresses to the same
    # byte-aligned segment, so the segment is repeated.
    segment = packer.compress(zeros) + packer.flush(zlib.Z_SYNC_FLUSH)
    crc = 0
    for _ in range(mib):
        crc = zlib.crc32(zeros, crc)
    final_empty_block = b"\x03\x00"
    trailer = struct.pack("<II", crc, (mib << 20) & 0xFFFFFFFF)
    return head + segment * (mib - 1) + final_empty_block + trailer


# ----------------------------------------------------------------- 1. size


def test_payload_at_the_node_limit_passes_and_above_is_pvl_005() -> None:
    payload = insight()
    size = json_size(payload)
    check(payload, policy=PvlPolicy(max_payload_bytes=size))
    error = refused(payload, "PVL-005", policy=PvlPolicy(max_payload_bytes=size - 1))
    assert error.details == {"limit": size - 1, "size": size, "source": "node"}
    assert error.http_status == 413


def test_the_bond_limit_applies_when_it_is_smaller() -> None:
    payload = insight()
    size = json_size(payload)
    bond = KnowledgePermissions(enabled=True, max_payload_bytes=size - 1)
    error = refused(payload, "PVL-005", bond=bond)
    assert error.details["limit"] == size - 1
    assert error.details["source"] == "bond"
    check(payload, bond=KnowledgePermissions(enabled=True, max_payload_bytes=size))


def test_the_size_is_the_callers_figure() -> None:
    # The caller measured the bytes it received; the PVL does not re-measure.
    error = refused(insight(), "PVL-005", size=POLICY.max_payload_bytes + 1)
    assert error.details["limit"] == 10_485_760


def test_a_negative_size_is_a_programming_error() -> None:
    with pytest.raises(ValueError, match="size"):
        validate_knowledge(insight(), size=-1, policy=POLICY, bond=None)


# -------------------------------------------------------------- 2. bond


def test_without_a_bond_embeddings_and_insights_pass() -> None:
    check(embedding())
    check(insight())


def test_without_a_bond_model_deltas_are_pvl_006() -> None:
    error = refused(model_delta(), "PVL-006")
    assert error.details == {
        "field": "$.knowledge_type",
        "permission": "model_delta_share.enabled",
    }
    assert error.http_status == 403


def test_a_disabled_bond_refuses_everything() -> None:
    bond = KnowledgePermissions(enabled=False, model_delta=True)
    for payload in (embedding(), insight(), model_delta()):
        error = refused(payload, "PVL-006", bond=bond)
        assert error.details["permission"] == "knowledge_share.enabled"


def test_allowed_types_limit_what_a_bond_carries() -> None:
    bond = KnowledgePermissions(enabled=True, allowed_types=frozenset({"insight"}))
    check(insight(), bond=bond)
    error = refused(embedding(), "PVL-006", bond=bond)
    assert error.details["permission"] == "knowledge_share.allowed_types"
    check(embedding(), bond=KnowledgePermissions(enabled=True))  # None: every type


def test_a_model_delta_needs_model_delta_share_as_well() -> None:
    types = frozenset({"model_delta"})
    bond = KnowledgePermissions(enabled=True, allowed_types=types, model_delta=False)
    error = refused(model_delta(), "PVL-006", bond=bond)
    assert error.details["permission"] == "model_delta_share.enabled"
    check(
        model_delta(),
        bond=KnowledgePermissions(enabled=True, allowed_types=types, model_delta=True),
    )
    no_type = KnowledgePermissions(
        enabled=True, allowed_types=frozenset({"insight"}), model_delta=True
    )
    assert refused(model_delta(), "PVL-006", bond=no_type).details["permission"] == (
        "knowledge_share.allowed_types"
    )


def test_permissions_are_read_from_a_bond() -> None:
    permissions = KnowledgePermissions.from_bond(PERMISSIONS)
    assert permissions == KnowledgePermissions(
        enabled=True,
        allowed_types=frozenset({"insight", "embedding"}),
        max_payload_bytes=10_485_760,
        model_delta=False,
    )
    assert KnowledgePermissions.from_bond({}) == KnowledgePermissions(enabled=False)
    both = KnowledgePermissions.from_bond(
        {"knowledge_share": {"enabled": True}, "model_delta_share": {"enabled": True}}
    )
    assert both.allowed_types is None
    assert both.model_delta


@pytest.mark.parametrize(
    "permissions",
    [
        {"knowledge_share": "yes"},
        {"knowledge_share": {"enabled": True, "allowed_types": "insight"}},
        {"knowledge_share": {"enabled": True, "max_payload_bytes": -1}},
        {"knowledge_share": {"enabled": True, "max_payload_bytes": True}},
    ],
)
def test_malformed_bond_permissions_are_ocp_400(permissions: dict[str, Any]) -> None:
    with pytest.raises(MalformedError):
        KnowledgePermissions.from_bond(permissions)


# ---------------------------------------------------------- 3. provenance


def test_an_insight_without_provenance_is_pvl_004() -> None:
    payload = insight()
    del payload["provenance"]
    error = refused(payload, "PVL-004")
    assert error.details == {"field": "$.provenance", "missing": list(pvl.INSIGHT_PROVENANCE)}


@pytest.mark.parametrize("field", pvl.INSIGHT_PROVENANCE)
def test_each_insight_provenance_field_is_required(field: str) -> None:
    payload = insight()
    del payload["provenance"][field]
    assert refused(payload, "PVL-004").details["missing"] == [field]


@pytest.mark.parametrize("field", pvl.MODEL_DELTA_PROVENANCE)
def test_each_model_delta_provenance_field_is_required(field: str) -> None:
    payload = model_delta()
    del payload["provenance"][field]
    assert refused(payload, "PVL-004", bond=DELTA_BOND).details["missing"] == [field]


def test_embeddings_carry_no_provenance() -> None:
    payload = embedding()
    assert "provenance" not in payload
    check(payload)


# ------------------------------------------------------------- 4. anonymisation


def test_an_insight_that_is_not_anonymised_is_pvl_002() -> None:
    error = refused(insight(anonymized=False), "PVL-002")
    assert error.details == {"field": "$.anonymized"}


# ------------------------------------------------------ 5. differential privacy


def test_epsilon_at_the_limit_passes_and_just_above_fails() -> None:
    check(with_dp(epsilon=10.0), bond=DELTA_BOND)
    check(with_dp(epsilon=10), bond=DELTA_BOND)
    error = refused(with_dp(epsilon=10.0001), "PVL-003", bond=DELTA_BOND)
    assert error.details["field"] == "$.differential_privacy.epsilon"
    assert error.details["limit"] == 10.0


@pytest.mark.parametrize(
    "epsilon", [float("nan"), float("inf"), float("-inf"), 0, 0.0, -1.0, 10**400]
)
def test_epsilon_must_be_finite_and_positive(epsilon: float) -> None:
    error = refused(with_dp(epsilon=epsilon), "PVL-003", bond=DELTA_BOND)
    assert error.details["field"] == "$.differential_privacy.epsilon"


def test_the_node_may_set_a_lower_epsilon_limit() -> None:
    strict = PvlPolicy(max_epsilon=1.0)
    check(with_dp(epsilon=1.0), bond=DELTA_BOND, policy=strict)
    assert (
        refused(with_dp(epsilon=1.5), "PVL-003", bond=DELTA_BOND, policy=strict).details["limit"]
        == 1.0
    )


@pytest.mark.parametrize("delta", [0, 0.0, 1.0, 1.5, -1e-9, float("nan"), float("inf")])
def test_gaussian_delta_is_between_zero_and_one(delta: float) -> None:
    error = refused(with_dp(delta=delta), "PVL-003", bond=DELTA_BOND)
    assert error.details["field"] == "$.differential_privacy.delta"


def test_laplace_is_pure_dp_and_may_state_delta_zero() -> None:
    check(with_dp(mechanism="laplace", delta=0), bond=DELTA_BOND)
    check(with_dp(mechanism="laplace", delta=1e-6), bond=DELTA_BOND)
    refused(with_dp(mechanism="laplace", delta=-0.1), "PVL-003", bond=DELTA_BOND)


def test_delta_must_be_below_one_over_the_training_samples() -> None:
    # 50,000 samples: delta must be < 2e-5.
    check(with_dp(delta=1.99e-5), bond=DELTA_BOND)
    for delta in (2e-5, 1e-4):
        error = refused(with_dp(delta=delta), "PVL-003", bond=DELTA_BOND)
        assert error.details["rule"] == "delta < 1 / provenance.training_samples"
    payload = with_dp(delta=0.5)
    payload["provenance"]["training_samples"] = 0  # no bound to apply
    check(payload, bond=DELTA_BOND)
    payload["provenance"]["training_samples"] = 2
    refused(payload, "PVL-003", bond=DELTA_BOND)


@pytest.mark.parametrize("noise_multiplier", [0, -1.1, float("nan"), float("inf")])
def test_noise_multiplier_must_be_finite_and_positive(noise_multiplier: float) -> None:
    error = refused(with_dp(noise_multiplier=noise_multiplier), "PVL-003", bond=DELTA_BOND)
    assert error.details["field"] == "$.differential_privacy.noise_multiplier"


def test_the_mechanism_must_be_known() -> None:
    error = refused(with_dp(mechanism="randomized_response"), "PVL-003", bond=DELTA_BOND)
    assert error.details["field"] == "$.differential_privacy.mechanism"


def test_the_dp_block_and_its_fields_are_required() -> None:
    payload = model_delta()
    del payload["differential_privacy"]
    assert refused(payload, "PVL-003", bond=DELTA_BOND).details == {
        "field": "$.differential_privacy"
    }
    payload = model_delta()
    del payload["differential_privacy"]["noise_multiplier"]
    del payload["differential_privacy"]["delta"]
    error = refused(payload, "PVL-003", bond=DELTA_BOND)
    assert error.details["missing"] == ["delta", "noise_multiplier"]


# --------------------------------------------------------------- 6. embeddings


@pytest.mark.parametrize("encoding", ["float32", "float16", "bfloat16"])
@pytest.mark.parametrize("dimensions", [1, 3, 8, 1024, 1536])
def test_vectors_round_trip(encoding: str, dimensions: int) -> None:
    vectors = unit_vectors(5, dimensions, seed=dimensions)
    payload = embedding(vectors, encoding=encoding)
    check(payload)
    decoded = decode_vectors(payload)
    assert decoded.shape == (5, dimensions)
    assert decoded.dtype == np.float32
    if encoding == "float32":
        expected = vectors.astype(np.float32)
    elif encoding == "float16":
        expected = vectors.astype(np.float16).astype(np.float32)
    else:
        expected = np.array([[bfloat16(x) for x in row] for row in vectors], dtype=np.float32)
    assert np.array_equal(decoded, expected)


def bfloat16(value: float) -> float:
    """Round to bfloat16 the long way: integers, nearest, ties to even."""
    (bits,) = struct.unpack("<I", struct.pack("<f", value))
    upper, lower = bits >> 16, bits & 0xFFFF
    if lower > 0x8000 or (lower == 0x8000 and upper & 1):
        upper += 1
    (rounded,) = struct.unpack("<f", struct.pack("<I", upper << 16))
    return float(rounded)


def test_bfloat16_rounds_to_nearest_ties_to_even() -> None:
    def bits(value: int) -> float:
        return float(struct.unpack("<f", struct.pack("<I", value))[0])

    cases = {
        0x3F808000: 0x3F80,  # a tie, even below
        0x3F818000: 0x3F82,  # a tie, odd below: up
        0x3F808001: 0x3F81,  # just above the tie
        0x3F807FFF: 0x3F80,  # just below
    }
    for value, expected in cases.items():
        raw = base64.urlsafe_b64decode(encode_vector([bits(value)], "bfloat16") + "===")
        assert struct.unpack("<H", raw)[0] == expected


@given(
    st.lists(
        st.floats(-1e4, 1e4, allow_nan=False, allow_infinity=False, width=32),
        min_size=1,
        max_size=40,
    )
)
def test_float32_encoding_is_little_endian_unpadded_base64url(values: list[float]) -> None:
    expected = base64.urlsafe_b64encode(struct.pack(f"<{len(values)}f", *values))
    assert encode_vector(values) == expected.rstrip(b"=").decode()
    payload = embedding([encode_vector(values)], normalization="none", dimensions=len(values))
    assert decode_vectors(payload).tolist() == [values]


def test_encode_vector_refuses_what_it_cannot_encode() -> None:
    with pytest.raises(ValueError, match="finite"):
        encode_vector([1.0, float("nan")])
    with pytest.raises(ValueError, match="one-dimensional"):
        encode_vector([[1.0], [2.0]])
    with pytest.raises(ValueError, match="range of float16"):
        encode_vector([70000.0], "float16")
    with pytest.raises(ValueError, match="range of bfloat16"):
        encode_vector([3.4e38], "bfloat16")
    with pytest.raises(ValueError, match="encoding"):
        encode_vector([1.0], "int8")


def test_a_dimension_mismatch_names_the_vector_and_both_counts() -> None:
    vectors = list(unit_vectors(3, 4))
    short = encode_vector(unit_vectors(1, 3)[0])
    payload = embedding([*vectors[:1], short, *vectors[1:]], dimensions=4)
    error = refused(payload, "OCP-400")
    assert error.details == {
        "field": "$.vectors[1].vector",
        "expected_dimensions": 4,
        "actual_dimensions": 3,
        "actual_bytes": 12,
    }


def test_a_vector_that_is_not_a_whole_number_of_values_is_ocp_400() -> None:
    payload = embedding([base64.urlsafe_b64encode(bytes(10)).rstrip(b"=").decode()], dimensions=4)
    error = refused(payload, "OCP-400")
    assert error.details["actual_bytes"] == 10
    assert error.details["expected_dimensions"] == 4


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), float("-inf")])
def test_non_finite_values_are_ocp_400(bad: float) -> None:
    raw = struct.pack("<4f", 0.5, 0.5, 0.5, bad)
    text = base64.urlsafe_b64encode(raw).rstrip(b"=").decode()
    for normalization in ("l2", "none"):
        payload = embedding([*unit_vectors(2, 4), text], normalization=normalization)
        error = refused(payload, "OCP-400")
        assert error.details == {"field": "$.vectors[2].vector"}
        assert "NaN or infinite" in error.message


def test_huge_finite_values_are_not_normalised_but_allowed_without_normalization() -> None:
    vector = [3e38, 3e38, 0.0, 0.0]  # the float32 sum of squares overflows
    refused(embedding([vector]), "OCP-400")
    check(embedding([vector], normalization="none"))


def test_vectors_must_be_l2_normalised_by_default() -> None:
    vectors = unit_vectors(4, 16)
    vectors[3] *= 1.01
    for normalization in ("l2", None):
        error = refused(embedding(vectors, normalization=normalization), "OCP-400")
        assert error.details == {"field": "$.vectors[3].vector", "tolerance": 1e-3}
    check(embedding(vectors, normalization="none"))


def test_the_tolerance_depends_on_the_encoding() -> None:
    vectors = unit_vectors(2, 64) * 1.005
    refused(embedding(vectors), "OCP-400")
    check(embedding(vectors, encoding="float16"))
    check(embedding(vectors, encoding="bfloat16"))
    check(embedding(unit_vectors(2, 64) * 1.0005))
    refused(embedding(unit_vectors(2, 64) * 1.02, encoding="bfloat16"), "OCP-400")


def test_norms_near_the_tolerance_take_the_exact_check() -> None:
    # Within the tolerance, but not by the margin of the faster first sum.
    vectors = unit_vectors(4, 1536)
    check(embedding(vectors * (1 + 0.99e-3)))
    check(embedding(vectors * (1 - 0.99e-3)))
    error = refused(embedding(vectors * (1 + 1.01e-3)), "OCP-400")
    assert error.details == {"field": "$.vectors[0].vector", "tolerance": 1e-3}


def test_bfloat16_rounding_stays_within_its_tolerance() -> None:
    # The worst case: every value rounded the same way.
    vectors = unit_vectors(50, 768, seed=3)
    check(embedding(vectors, encoding="bfloat16"))
    norms = np.linalg.norm(decode_vectors(embedding(vectors, encoding="bfloat16")), axis=1)
    assert np.abs(norms - 1).max() < POLICY.l2_tolerance_16bit / 4


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        ("AAAAAAAAAAAAAAAAAAAAAA==", "padding"),
        ("AAAAAAAAAAAAAAAAAAAAA+", "standard alphabet"),
        ("AAAAAAAAAAAAAAAAAAAA/A", "standard alphabet"),
        ("AAAAAAAAAAAAAAAAAAAA A", "space"),
        ("AAAAAAAAAAAAAAAAAAAAAé", "non-ASCII"),
        ("AAAAAAAAAAAAAAAAAAAAAB", "non-zero spare bits"),
    ],
)
def test_vectors_must_be_strict_unpadded_base64url(text: str, reason: str) -> None:
    # 22 characters encode the 16 bytes of four float32. The schema pattern
    # already refuses most of these; the PVL does not depend on it.
    payload = embedding([*unit_vectors(1, 4), text], normalization="none", dimensions=4)
    with pytest.raises(MalformedError) as caught:
        validate_knowledge(payload, size=1, policy=POLICY, bond=None)
    assert caught.value.details["field"] == "$.vectors[1].vector", reason


def test_a_length_of_one_more_than_a_group_is_ocp_400() -> None:
    payload = embedding(["AAAAA"], dimensions=1)
    check_error = refused(payload, "OCP-400")
    assert check_error.details == {"field": "$.vectors[0].vector"}


@pytest.mark.parametrize("block_vectors", [None, 16])
def test_the_first_failing_vector_is_named_across_blocks(
    block_vectors: int | None, monkeypatch: pytest.MonkeyPatch
) -> None:
    # 1536 float32 are 8192 characters: many vectors share a decoding block
    # (all of these with the default blocks; ten blocks of 16 vectors here).
    if block_vectors is not None:
        monkeypatch.setattr(pvl, "_BLOCK_CHARS", 8192 * block_vectors)
    vectors: list[Any] = list(unit_vectors(150, 1536))
    vectors[140] = vectors[140] * 2
    vectors[149] = "A" * 8188
    error = refused(embedding(vectors), "OCP-400")
    assert error.details == {"field": "$.vectors[140].vector", "tolerance": 1e-3}
    vectors[140] = unit_vectors(1, 1536)[0]
    error = refused(embedding(vectors), "OCP-400")
    assert error.details["field"] == "$.vectors[149].vector"
    assert error.details["actual_bytes"] == 6141


def test_decoded_vectors_do_not_depend_on_the_block_size(monkeypatch: pytest.MonkeyPatch) -> None:
    for encoding in ("float32", "float16", "bfloat16"):
        payload = embedding(unit_vectors(50, 96, seed=5), encoding=encoding)
        whole = decode_vectors(payload)
        check(payload)
        monkeypatch.setattr(pvl, "_BLOCK_CHARS", 700)  # one or two vectors a block
        assert np.array_equal(decode_vectors(payload), whole)
        check(payload)
        monkeypatch.undo()


def test_a_nan_before_a_bad_string_in_one_block_is_reported_first() -> None:
    nan = base64.urlsafe_b64encode(struct.pack("<4f", float("nan"), 0, 0, 0)).rstrip(b"=")
    payload = embedding([*unit_vectors(2, 4), nan.decode(), "AAAAAAAAAAAAAAAAAAAAAB"], dimensions=4)
    assert refused(payload, "OCP-400").details == {"field": "$.vectors[2].vector"}


# ------------------------------------------------------------- 6. model deltas


@pytest.mark.parametrize("compression", ["none", "gzip", "zlib"])
def test_float_noise_passes_in_every_compression(compression: str) -> None:
    raw = noise(1 << 18)
    payload = model_delta(raw, compression=compression)
    check(payload, bond=DELTA_BOND)
    assert decode_delta(payload, max_bytes=DEFAULT_MAX_DECOMPRESSED_BYTES) == raw


@pytest.mark.parametrize("scale", [1e-5, 1e-2, 1.0])
def test_half_precision_noise_passes(scale: float) -> None:
    rng = np.random.default_rng(7)
    values = rng.standard_normal(1 << 18) * scale
    check(model_delta(values.astype("<f2").tobytes()), bond=DELTA_BOND)
    bf16 = (values.astype("<f4").view("<u4") >> 16).astype("<u2").tobytes()
    check(model_delta(bf16), bond=DELTA_BOND)


@pytest.mark.parametrize(
    ("declared", "packed"),
    [
        ("gzip", zlib.compress(noise())),
        ("zlib", gzip.compress(noise())),
        ("gzip", noise()),
        ("zlib", noise()),
        ("gzip", gzip.compress(noise()) + b"trailing"),
        ("zlib", zlib.compress(noise()) + b"\x00"),
        ("gzip", gzip.compress(noise()) + gzip.compress(noise())),
        ("gzip", gzip.compress(noise())[:-9]),
        ("zlib", zlib.compress(noise())[:100]),
        ("gzip", b""),
    ],
    ids=[
        "zlib-as-gzip",
        "gzip-as-zlib",
        "raw-as-gzip",
        "raw-as-zlib",
        "gzip-trailing",
        "zlib-trailing",
        "two-members",
        "gzip-truncated",
        "zlib-truncated",
        "empty-gzip",
    ],
)
def test_the_declared_compression_must_really_decode(declared: str, packed: bytes) -> None:
    payload = model_delta(compression=declared)
    payload["payload"] = base64.urlsafe_b64encode(packed).rstrip(b"=").decode()
    error = refused(payload, "OCP-400", bond=DELTA_BOND)
    assert error.details == {"field": "$.payload"}


def test_a_payload_that_is_not_base64url_is_ocp_400() -> None:
    payload = model_delta(compression="none")
    payload["payload"] += "A" * ((1 - len(payload["payload"])) % 4)  # 4k + 1 characters
    assert refused(payload, "OCP-400", bond=DELTA_BOND).details == {"field": "$.payload"}


def test_a_decompression_bomb_stops_at_the_limit() -> None:
    limit = 8 << 20
    payload = model_delta(compression="gzip")
    payload["payload"] = base64.urlsafe_b64encode(gzip_bomb(1024)).rstrip(b"=").decode()
    policy = PvlPolicy(max_decompressed_bytes=limit)
    tracemalloc.start()
    try:
        with pytest.raises(PvlRejection) as caught:
            validate_knowledge(
                payload, size=len(payload["payload"]), policy=policy, bond=DELTA_BOND
            )
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert caught.value.code == "PVL-005"
    assert caught.value.details == {"field": "$.payload", "limit": limit}
    # The limit, one output step, and the decoded 1 MB input with its buffers.
    assert peak < limit + (4 << 20)


def test_the_bomb_is_a_real_gzip_stream() -> None:
    assert gzip.decompress(gzip_bomb(3)) == bytes(3 << 20)


def test_an_uncompressed_delta_over_the_limit_is_pvl_005() -> None:
    payload = model_delta(noise(1024), compression="none")
    error = refused(
        payload, "PVL-005", bond=DELTA_BOND, policy=PvlPolicy(max_decompressed_bytes=4000)
    )
    assert error.details == {"field": "$.payload", "limit": 4000}


@pytest.mark.parametrize(
    "text",
    [
        b"Patient Jane Roe, born 1984-02-11, admitted with chest pain on ward 7; "
        b"discharged after two nights.",
        "Пациентка Анна Иванова, 1984 года рождения, поступила с болью в груди.".encode(),
        b"id,name,diagnosis\n1,Jane Roe,angina\n2,John Doe,arrhythmia\n3,Ann Lee,none\n",
    ],
    ids=["ascii", "utf-8", "csv"],
)
def test_text_in_a_float_delta_is_pvl_002(text: bytes) -> None:
    assert len(text) >= TEXT_RUN_BYTES
    raw = bytearray(noise())
    raw[4000 : 4000 + len(text) + len(text) % 2] = text + b"\x00" * (len(text) % 2)
    error = refused(model_delta(bytes(raw)), "PVL-002", bond=DELTA_BOND)
    assert error.details == {"field": "$.payload", "check": "text_run", "run_bytes": 64}


def test_short_text_runs_pass() -> None:
    raw = bytearray(noise())
    raw[4000:4040] = b"layer.attention.q_proj weights, shard 3!"
    check(model_delta(bytes(raw)), bond=DELTA_BOND)


def test_a_text_run_across_a_scan_chunk_boundary_is_found() -> None:
    raw = bytearray(noise(600_000))
    start = (1 << 20) - 30
    raw[start : start + 80] = b"x" * 80
    refused(model_delta(bytes(raw)), "PVL-002", bond=DELTA_BOND)


def test_repeated_records_are_pvl_002() -> None:
    raw = bytearray(noise())
    record = noise(RECORD_BYTES // 4, seed=9)
    for k in range(RECORD_REPEAT_LIMIT):
        position = (100 + 3 * k) * RECORD_BYTES
        raw[position : position + RECORD_BYTES] = record
    error = refused(model_delta(bytes(raw)), "PVL-002", bond=DELTA_BOND)
    assert error.details["check"] == "repeated_records"
    # One repeat fewer passes.
    raw[100 * RECORD_BYTES : 101 * RECORD_BYTES] = noise(RECORD_BYTES // 4, seed=10)
    check(model_delta(bytes(raw)), bond=DELTA_BOND)


def test_zero_blocks_are_not_records() -> None:
    raw = bytearray(noise())
    raw[: 1000 * RECORD_BYTES] = bytes(1000 * RECORD_BYTES)  # a sparse update
    check(model_delta(bytes(raw)), bond=DELTA_BOND)


def test_a_delta_of_odd_length_is_not_tensor_data() -> None:
    error = refused(model_delta(noise() + b"\x01"), "PVL-002", bond=DELTA_BOND)
    assert error.details == {"field": "$.payload", "check": "tensor_length"}


def test_compress_delta_refuses_unknown_compressions() -> None:
    with pytest.raises(ValueError, match="compression"):
        compress_delta(b"\x00\x00", "brotli")


# ------------------------------------------------------------------ 7. PII


def test_pii_in_a_nested_key_is_pvl_001_with_its_path() -> None:
    payload = insight()
    payload["payload"]["contacts"] = {EMAIL: {"role": "analyst"}}
    error = refused(payload, "PVL-001")
    assert error.details == {
        "findings": [{"kind": "email", "path": "$.payload.contacts[<redacted>]", "where": "key"}]
    }
    assert EMAIL not in error.message
    assert EMAIL not in json.dumps(error.details)


def test_pii_in_a_nested_value_is_pvl_001_with_its_path() -> None:
    payload = insight()
    payload["payload"]["features"][0]["note"] = "escalate to +44 20 7946 0958"
    error = refused(payload, "PVL-001")
    assert error.details["findings"] == [
        {"kind": "phone", "path": "$.payload.features[0].note", "where": "value"}
    ]


def test_pii_in_embedding_metadata_and_delta_fields_is_found() -> None:
    payload = embedding()
    payload["vectors"][1]["metadata"]["reviewer"] = EMAIL
    error = refused(payload, "PVL-001")
    assert error.details["findings"][0]["path"] == "$.vectors[1].metadata.reviewer"
    payload = model_delta()
    payload["architecture"]["target_layers"].append("layer-for-" + EMAIL)
    error = refused(payload, "PVL-001", bond=DELTA_BOND)
    assert error.details["findings"][0]["path"] == "$.architecture.target_layers[2]"


def _vector_strings(payload: dict[str, Any]) -> list[object]:
    return [item.get("vector") for item in payload["vectors"]]


def test_the_prefilter_reads_an_embedding_without_its_vectors() -> None:
    payload = embedding(unit_vectors(400, 8))
    # A vector string with an IBAN's shape: never read as text.
    payload["vectors"][7]["vector"] = "GB82WEST12345698765432"
    texts = _vector_strings(payload)
    read_whole = possible_kinds(payload)
    assert read_whole is not None and "iban" in read_whole
    assert possible_kinds(payload, leave_out=texts) == frozenset()
    # The other fields are read: the same kinds as the payload without vectors.
    payload["vectors"][300]["metadata"]["reviewer"] = EMAIL
    without = {**payload, "vectors": [{**v, "vector": None} for v in payload["vectors"]]}
    assert possible_kinds(payload, leave_out=texts) == possible_kinds(without) == {"email"}
    # The same strings in another order are not the vectors: unsure.
    assert possible_kinds(payload, leave_out=texts[::-1][1:] + texts[:1]) is None


def test_vectors_in_records_of_several_shapes_are_not_left_out() -> None:
    payload = embedding(unit_vectors(400, 8))
    payload["vectors"][5] = {"vector": payload["vectors"][5]["vector"], "id": "emb-005"}
    assert possible_kinds(payload, leave_out=_vector_strings(payload)) is None
    # ... so validation walks the payload without them, and still finds PII.
    payload["vectors"][300]["metadata"]["reviewer"] = EMAIL
    error = refused(payload, "PVL-001")
    assert error.details["findings"][0]["path"] == "$.vectors[300].metadata.reviewer"


def test_a_field_holding_the_vector_string_itself_is_still_read() -> None:
    payload = embedding(unit_vectors(400, 8))
    for item in payload["vectors"]:
        item["label"] = item["vector"]  # the same objects, in the same order
    payload["vectors"][3]["vector"] = payload["vectors"][3]["label"] = "+44 20 7946 0958"
    kinds = possible_kinds(payload, leave_out=_vector_strings(payload))
    assert kinds is not None and "phone" in kinds


def test_pii_beside_many_vectors_is_found_where_it_is() -> None:
    payload = embedding(unit_vectors(400, 8))
    payload["vectors"][123]["metadata"]["reviewer"] = EMAIL
    payload["vectors"][7]["label"] = "call +44 20 7946 0958"
    error = refused(payload, "PVL-001")
    assert [(f["kind"], f["path"]) for f in error.details["findings"]] == [
        ("phone", "$.vectors[7].label"),
        ("email", "$.vectors[123].metadata.reviewer"),
    ]


def test_binary_fields_are_not_scanned(monkeypatch: pytest.MonkeyPatch) -> None:
    scanned: list[Any] = []

    def spy(value: Any, **kwargs: Any) -> list[Any]:
        scanned.append(value)
        return scan(value, **kwargs)

    monkeypatch.setattr(pvl, "scan", spy)
    vectors = embedding()
    check(vectors)
    check(model_delta(), bond=DELTA_BOND)
    assert all("vector" not in item for item in scanned[0]["vectors"])
    assert [item["id"] for item in scanned[0]["vectors"]] == ["emb-000", "emb-001", "emb-002"]
    assert "payload" not in scanned[1]
    assert scanned[1]["delta_id"] == MODEL_DELTA["delta_id"]
    assert "vector" in vectors["vectors"][0]  # the caller's payload is untouched


# ---------------------------------------------------------------- stage order


def test_stages_run_in_order() -> None:
    no_provenance = insight()
    del no_provenance["provenance"]
    size = json_size(no_provenance)
    # size before provenance
    refused(no_provenance, "PVL-005", policy=PvlPolicy(max_payload_bytes=size - 1))
    # bond before provenance
    delta = model_delta()
    del delta["provenance"]
    refused(delta, "PVL-006")
    # provenance before anonymisation
    no_provenance["anonymized"] = False
    refused(no_provenance, "PVL-004")
    # anonymisation before PII
    leaky = insight(anonymized=False)
    leaky["payload"]["owner"] = EMAIL
    refused(leaky, "PVL-002")
    # differential privacy before content
    raw = bytearray(noise())
    raw[100:200] = b"t" * 100
    text_and_bad_dp = model_delta(bytes(raw))
    text_and_bad_dp["differential_privacy"]["epsilon"] = 50
    refused(text_and_bad_dp, "PVL-003", bond=DELTA_BOND)
    # content before PII
    text_and_pii = model_delta(bytes(raw))
    text_and_pii["architecture"]["family"] = EMAIL
    refused(text_and_pii, "PVL-002", bond=DELTA_BOND)
    vectors = unit_vectors(2, 8)
    vectors[1] *= 2
    unnormalised_and_pii = embedding(vectors)
    unnormalised_and_pii["vectors"][0]["label"] = EMAIL
    refused(unnormalised_and_pii, "OCP-400")


# ----------------------------------------------------------- sender helper


def test_check_outgoing_returns_the_jcs_size() -> None:
    payload = embedding()
    assert check_outgoing(payload, policy=POLICY, bond=None) == len(canonicalize(payload))


def test_check_outgoing_runs_the_schema_then_the_pvl() -> None:
    with pytest.raises(MalformedError) as caught:
        check_outgoing({"knowledge_type": "embedding"}, policy=POLICY, bond=None)
    assert caught.value.details["schema"] == "payload.knowledge_share"
    with pytest.raises(PvlRejection) as rejected:
        check_outgoing(insight(anonymized=False), policy=POLICY, bond=None)
    assert rejected.value.code == "PVL-002"


@pytest.mark.parametrize(
    "options",
    [
        {"max_payload_bytes": 0},
        {"max_epsilon": 10.5},
        {"max_epsilon": -1},
        {"max_decompressed_bytes": True},
        {"l2_tolerance": 0},
        {"l2_tolerance_16bit": 1.5},
    ],
)
def test_policy_values_are_checked(options: dict[str, Any]) -> None:
    with pytest.raises(ValueError, match=next(iter(options))):
        PvlPolicy(**options)


# ------------------------------------------------------- the PII prefilter
#
# ocpd.proto.pii.scan looks at all the text of a large value at once before
# it walks it (see its module). These tests check that this never hides a
# finding: every corpus string, wherever it sits in a large payload, gives
# the findings scan_text gives for it alone.

FILLER = {"notes": [f"Segment {n}: rolling median rose 4.5% week over week." for n in range(400)]}


def _corpus() -> list[str]:
    return [case["text"] for case in json.loads(CORPUS.read_text(encoding="utf-8"))]


def test_the_prefilter_never_hides_a_corpus_finding() -> None:
    for text in _corpus():
        kinds = scan_text(text)
        for value, path, where in (
            ({**FILLER, "value": text}, "$.value", "value"),
            ({**FILLER, "deep": [{"x": [text]}]}, "$.deep[0].x[0]", "value"),
            ({**FILLER, "keys": {text: 1}}, "$.keys[<redacted>]", "key"),
            ({**FILLER, "mixed": ["pre " + text + " post", 1.5, None, True]}, None, "value"),
        ):
            found = scan(value, limit=64)
            if path is None:
                assert {f.kind for f in found} >= set(scan_text("pre " + text + " post")), text
                continue
            expected = [(kind, path if kinds else None, where) for kind in kinds]
            if where == "key" and not kinds:
                expected = []
            assert [(f.kind, f.path, f.where) for f in found] == expected, text


_PII_ALPHABET = "0123456789 -.:+()@/ABCDEGHJKLMNPRSTWXYZabcdefxn\t\u00a0_%"


@settings(max_examples=300, deadline=None)
@given(st.lists(st.text(alphabet=_PII_ALPHABET, min_size=1, max_size=40), min_size=1, max_size=8))
def test_the_prefilter_agrees_with_scan_text(texts: list[str]) -> None:
    value = {**FILLER, "items": texts}
    found = [(f.kind, f.path) for f in scan(value, limit=256)]
    expected = [
        (kind, f"$.items[{index}]") for index, text in enumerate(texts) for kind in scan_text(text)
    ]
    assert found == expected


def test_the_prefilter_reads_records_whatever_their_keys() -> None:
    # Records (dicts of one size) are read a key position at a time: keys in
    # another order, other keys or other sizes must not hide a value.
    records: list[Any] = [
        {"id": f"r{n}", "score": n / 7, "tags": ["a", "b"], "note": f"Segment {n}: fine."}
        for n in range(300)
    ]
    records[17] = {"note": "call +44 20 7946 0958", "tags": [], "score": 1.5, "id": "r17"}
    records[42] = {"id": "r42", "extra": EMAIL}
    records[99] = {"id": "r99", "score": 2, "tags": ["GB82 WEST 1234 5698 7654 32"], "n": None}
    found = [(f.kind, f.path) for f in scan({"records": records})]
    assert found == [
        ("phone", "$.records[17].note"),
        ("email", "$.records[42].extra"),
        ("iban", "$.records[99].tags[0]"),
    ]


@pytest.mark.parametrize(
    "odd",
    [
        pytest.param(["+44 20 7946 0958"], id="list"),
        pytest.param({"owner": "+44 20 7946 0958"}, id="dict"),
        pytest.param(("+44 20 7946 0958",), id="tuple"),
        pytest.param(None, id="null"),
        pytest.param(7, id="number"),
    ],
)
def test_a_record_field_that_is_not_text_in_one_record_is_still_read(odd: object) -> None:
    # A key's values whose first and last are strings are taken without
    # looking at the others; one that is not a string must still be read
    # (its text scanned, its containers walked).
    records: list[Any] = [{"id": f"r{n}", "note": f"Segment {n}: fine."} for n in range(900)]
    records[150]["note"] = odd
    records[151]["note"] = "write to " + EMAIL
    found = [(f.kind, f.path) for f in scan({"records": records})]
    expected = [("email", "$.records[151].note")]
    if isinstance(odd, dict):
        expected.insert(0, ("phone", "$.records[150].note.owner"))
    elif isinstance(odd, list | tuple):
        expected.insert(0, ("phone", "$.records[150].note[0]"))
    assert found == expected
    kinds = possible_kinds({"records": records})
    assert kinds is not None and "email" in kinds
    assert ("phone" in kinds) is isinstance(odd, dict | list | tuple)


def test_a_list_with_containers_between_strings_is_read() -> None:
    # The contents of lists are taken like a key's values.
    items: list[Any] = [f"Segment {n}: fine." for n in range(500)]
    items[250] = {"deep": [{"owner": EMAIL}]}
    items[251] = ["GB82 WEST 1234 5698 7654 32"]
    # found when those are read: strings around a number
    items[252] = ["Segment 1", 7, "call 415-555-2671", "Segment 2"]
    found = [(f.kind, f.path) for f in scan({"items": items})]
    assert found == [
        ("email", "$.items[250].deep[0].owner"),
        ("iban", "$.items[251][0]"),
        ("phone", "$.items[252][2]"),
    ]
    # Read without falling back to the walk of every string.
    kinds = possible_kinds({"items": items})
    assert kinds is not None and kinds >= {"email", "iban", "phone"}


_pii_leaf = st.one_of(
    st.text(alphabet=_PII_ALPHABET, max_size=30),
    st.sampled_from([EMAIL, "+44 20 7946 0958", "GB82 WEST 1234 5698 7654 32", "078-05-1120"]),
    st.none(),
    st.booleans(),
    st.integers(-(10**12), 10**12),
    st.floats(allow_nan=False),
)
_pii_tree = st.recursive(
    _pii_leaf,
    lambda children: st.one_of(
        st.lists(children, max_size=5),
        st.lists(children, max_size=5).map(tuple),
        st.dictionaries(st.text(alphabet=_PII_ALPHABET, max_size=12), children, max_size=4),
    ),
    max_leaves=30,
)


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(_pii_tree, min_size=1, max_size=6), st.integers(0, 5))
def test_the_prefilter_names_every_kind_a_walk_finds(trees: list[Any], spread: int) -> None:
    # Records of one shape with the drawn values scattered among them, so
    # that values of every type land inside batches of strings.
    records: list[Any] = [{"id": f"r{n}", "note": f"Segment {n}: fine."} for n in range(700)]
    for index, tree in enumerate(trees):
        records[(index * 97 + spread * 31) % len(records)]["note"] = tree
    value = {"records": records, "tail": trees}
    kinds = possible_kinds(value)
    assert kinds is not None
    assert _kinds_string_by_string(value) <= kinds


def _kinds_string_by_string(value: object) -> set[str]:
    """The kinds scan_text finds in every string and key of ``value``."""
    found: set[str] = set()
    stack = [value]
    while stack:
        node = stack.pop()
        if isinstance(node, str):
            found.update(scan_text(node))
        elif isinstance(node, dict):
            for key, child in node.items():
                found.update(scan_text(key))
                stack.append(child)
        elif isinstance(node, list | tuple):
            stack.extend(node)
    return found


@pytest.mark.parametrize("chunk", [61, 64, 97, 4096])
def test_cores_across_the_dense_pass_steps_are_seen(
    chunk: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The dense pass works a step of _CHUNK bytes at a time; a core that
    # starts near the end of a step is still seen.
    cores = {
        "iban": "GB82 WEST 1234 5698 7654 32",
        "uk_nino": "QQ 12 34 56 C",
        "us_ssn": "078-05-1120",
        "payment_card": "4111 1111 1111 1111",
        "ipv4": "192.168.14.7",
        "phone": "415-555-2671",
    }
    for kind, core in cores.items():
        for shift in range(0, 40, 3):
            value = {**FILLER, "x": ["y" * shift + " " + core]}
            monkeypatch.setattr(pii_prefilter, "_CHUNK", chunk)
            kinds = possible_kinds(value)
            monkeypatch.undo()
            assert kinds is not None and kind in kinds, (kind, shift)


def test_keys_that_are_not_strings_send_the_value_to_the_walk() -> None:
    value: dict[Any, Any] = {**FILLER, 7: "write to " + EMAIL, "n": {1.5: "x"}}
    assert possible_kinds(value) is None
    assert [(f.kind, f.path) for f in scan(value)] == [("email", "$[7]")]


def test_shared_containers_are_scanned_like_a_walk() -> None:
    shared = {"owner": EMAIL, "notes": FILLER["notes"]}
    value = {"a": shared, "b": [shared, shared], "c": FILLER}
    assert [(f.kind, f.path) for f in scan(value)] == [("email", "$.a.owner")]


def test_work_arrays_made_for_smaller_steps_are_not_reused(monkeypatch: pytest.MonkeyPatch) -> None:
    value = {**FILLER, "x": ["y" * 200_000 + " 078-05-1120"]}
    expected = possible_kinds(value)
    assert expected is not None and "us_ssn" in expected
    monkeypatch.setattr(pii_prefilter, "_SPARE", [])
    monkeypatch.setattr(pii_prefilter, "_CHUNK", 64)
    assert possible_kinds(value) == expected
    monkeypatch.setattr(pii_prefilter, "_CHUNK", 131072)
    assert [w.chunk for w in pii_prefilter._SPARE] == [64]
    assert possible_kinds(value) == expected
    assert [w.chunk for w in pii_prefilter._SPARE] == [131072]


def test_the_prefilter_gives_each_call_its_own_work_arrays() -> None:
    # The node validates on worker threads, and numpy lets them run at once.
    values = [
        {**FILLER, "n": [f"+44 20 7946 0958 / 4111 1111 1111 1111 #{n}" for n in range(3000)]},
        {**FILLER, "n": [f"Segment {n}: 192.168.{n % 250}.7" for n in range(3000)]},
        {**FILLER, "n": [f"Rolling window {n} rose 4.5% over {n} days." for n in range(3000)]},
    ]
    expected = [possible_kinds(value) for value in values]
    assert len(set(expected)) == 3
    results: list[list[frozenset[str] | None]] = [[] for _ in values]

    def work(index: int) -> None:
        for _ in range(50):
            results[index].append(possible_kinds(values[index]))

    threads = [threading.Thread(target=work, args=(index,)) for index in range(len(values))]
    interval = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)  # switch threads as often as possible
    try:
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
    finally:
        sys.setswitchinterval(interval)
    assert results == [[kinds] * 50 for kinds in expected]


def test_values_the_prefilter_cannot_flatten_are_walked() -> None:
    class Record(dict[str, Any]):
        pass

    value = {**FILLER, "record": Record(owner=EMAIL), "tags": {"a", "b"}}
    assert [(f.kind, f.path) for f in scan(value)] == [("email", "$.record.owner")]
    looped: list[Any] = ["x" * 9000, EMAIL]
    looped.append(looped)
    assert [(f.kind, f.path) for f in scan(looped)] == [("email", "$[1]")]
    deep: Any = EMAIL
    for _ in range(5000):  # deeper than a recursive walk could go
        deep = [deep]
    assert [(f.kind, f.path) for f in scan({**FILLER, "deep": deep})] == [
        ("email", "$.deep" + "[0]" * 5000)
    ]


# ------------------------------------------------------------------- fuzzing

MARKER = "Zq7xMARKERx7qZ"
_B64 = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
_numbers = st.one_of(
    st.floats(allow_nan=True, allow_infinity=True),
    st.integers(-(2**60), 2**60),
    st.sampled_from([0, 1, 10, 10.0, 1e-5, 2e-5, 0.5, 10**400]),
)
_user_text = st.one_of(
    st.just(MARKER), st.text(max_size=12).map(lambda s: s + MARKER), st.sampled_from([EMAIL])
)
# Keys are names, shown in finding paths (a key holding PII is redacted);
# the marker goes in values, which must never reach an error.
_keys = st.one_of(st.from_regex(r"[a-z_][a-z0-9_]{0,8}", fullmatch=True), st.just(EMAIL))
_json = st.recursive(
    st.one_of(st.none(), st.booleans(), _numbers, _user_text),
    lambda children: st.one_of(
        st.lists(children, max_size=4),
        st.dictionaries(_keys, children, max_size=4),
    ),
    max_leaves=12,
)


def _sometimes(draw: st.DrawFn) -> bool:
    """True one time in four: most drawn payloads keep their valid parts."""
    return draw(st.integers(0, 3)) == 0


@st.composite
def _vector_text(draw: st.DrawFn, dimensions: int, encoding: str) -> str:
    choice = draw(st.integers(0, 3))
    if choice == 0:
        return draw(st.text(alphabet=_B64, max_size=30))
    if choice == 1:
        values = draw(st.lists(_numbers, min_size=1, max_size=6))
    else:
        values = draw(st.lists(st.floats(-1, 1), min_size=dimensions, max_size=dimensions))
        norm = float(np.linalg.norm(values))
        values = [v / norm for v in values] if norm > 1e-3 else [1.0] + [0.0] * (dimensions - 1)
    try:
        return encode_vector(values, encoding)
    except ValueError:
        return draw(st.text(alphabet=_B64, max_size=30))


@st.composite
def _payloads(draw: st.DrawFn) -> dict[str, Any]:
    kind = draw(st.sampled_from(["embedding", "insight", "model_delta"]))
    if kind == "embedding":
        encoding = draw(st.sampled_from(["float32", "float16", "bfloat16"]))
        dimensions = draw(st.integers(1, 6))
        payload: dict[str, Any] = {
            "knowledge_type": kind,
            "encoding": encoding,
            "dimensions": dimensions,
            "vectors": [
                {"id": draw(_user_text), "vector": draw(_vector_text(dimensions, encoding))}
                for _ in range(draw(st.integers(1, 3)))
            ],
        }
        if draw(st.booleans()):
            payload["normalization"] = draw(st.sampled_from(["l2", "none"]))
        if draw(st.booleans()):
            payload["vectors"][0]["metadata"] = draw(st.dictionaries(_keys, _json, max_size=3))
        return payload
    if kind == "insight":
        payload = insight(
            anonymized=not _sometimes(draw),
            payload=draw(st.dictionaries(_keys, _json, max_size=4)),
        )
        payload["topic"] = draw(_user_text)
        if _sometimes(draw):
            for field in draw(st.sets(st.sampled_from(pvl.INSIGHT_PROVENANCE))):
                del payload["provenance"][field]
        return payload
    raw = draw(st.one_of(st.binary(max_size=200), st.just(noise(64))))
    payload = model_delta(raw, compression=draw(st.sampled_from(["none", "gzip", "zlib"])))
    if _sometimes(draw):
        payload["payload"] = draw(st.text(alphabet=_B64, max_size=40))
    if _sometimes(draw):
        payload["compression"] = draw(st.sampled_from(["none", "gzip", "zlib"]))
    payload["delta_id"] = draw(_user_text)
    payload["architecture"]["target_layers"] = draw(st.lists(_user_text, max_size=2))
    dp = payload["differential_privacy"]
    for field in ("epsilon", "delta", "noise_multiplier"):
        if _sometimes(draw):
            dp[field] = draw(_numbers)
    if _sometimes(draw):
        dp["mechanism"] = draw(st.sampled_from(["gaussian", "laplace", MARKER]))
    if _sometimes(draw):
        for field in draw(st.sets(st.sampled_from(["mechanism", "epsilon", "delta"]))):
            del dp[field]
    if _sometimes(draw):
        for field in draw(st.sets(st.sampled_from(pvl.MODEL_DELTA_PROVENANCE))):
            del payload["provenance"][field]
    if _sometimes(draw):
        payload["provenance"]["training_samples"] = draw(st.integers(0, 2**53 - 1))
    return payload


_bonds = st.one_of(
    st.none(),
    st.just(DELTA_BOND),
    st.builds(
        KnowledgePermissions,
        enabled=st.booleans(),
        allowed_types=st.one_of(
            st.none(), st.frozensets(st.sampled_from(["embedding", "insight", "model_delta"]))
        ),
        max_payload_bytes=st.one_of(st.none(), st.integers(0, 1 << 20)),
        model_delta=st.booleans(),
    ),
)


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(payload=_payloads(), bond=_bonds, size=st.integers(0, 1 << 16))
def test_bad_input_only_ever_raises_pvl_or_ocp_400(
    payload: dict[str, Any], bond: KnowledgePermissions | None, size: int
) -> None:
    try:
        schema.validate("payload.knowledge_share", payload)
    except MalformedError:
        assume(False)  # the node never hands the PVL a payload the schema refused
    try:
        validate_knowledge(payload, size=size, policy=POLICY, bond=bond)
    except (PvlRejection, MalformedError) as error:
        event(f"{payload['knowledge_type']}: {error.code}")
        text = error.message + json.dumps(error.details)
        assert MARKER not in text
        assert EMAIL not in text
    else:
        event(f"{payload['knowledge_type']}: accepted")
