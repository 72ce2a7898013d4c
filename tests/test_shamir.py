"""Shamir secret sharing over GF(2^8) (OCP §8.3, D9): field, split, combine, wire form.

The field arithmetic and the scheme are checked against a second, independent
formulation kept in this file: exp/log tables over the generator 0x03, built
from the polynomial bit by bit, and a scalar split/combine on top of them.
"""

from __future__ import annotations

import itertools
import math
import random as stdlib_random
import re
from collections.abc import Callable, Sequence

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ocpd.proto import shamir
from ocpd.proto.encoding import b64url_encode
from ocpd.proto.errors import InternalError, MalformedError, OcpError
from ocpd.proto.shamir import Share

# --- an independent reference: exp/log tables ------------------------------------------


def _xtime(value: int) -> int:
    value <<= 1
    return value ^ 0x11B if value & 0x100 else value


def _tables() -> tuple[list[int], list[int]]:
    exp = [0] * 510
    log = [0] * 256
    value = 1
    for power in range(255):
        exp[power] = exp[power + 255] = value
        log[value] = power
        value ^= _xtime(value)  # times 0x03, a generator of the multiplicative group
    return exp, log


EXP, LOG = _tables()


def ref_mul(a: int, b: int) -> int:
    return 0 if a == 0 or b == 0 else EXP[LOG[a] + LOG[b]]


def ref_inv(a: int) -> int:
    assert a != 0
    return EXP[255 - LOG[a]]


def ref_split(secret: bytes, threshold: int, shares: int, randomness: bytes) -> list[Share]:
    """Coefficient-major layout, as documented in ocpd.proto.shamir."""
    length = len(secret)
    coefficients = [
        [secret[i]] + [randomness[(k - 1) * length + i] for k in range(1, threshold)]
        for i in range(length)
    ]
    out = []
    for x in range(1, shares + 1):
        data = bytearray()
        for poly in coefficients:
            y, power = 0, 1
            for coefficient in poly:
                y ^= ref_mul(coefficient, power)
                power = ref_mul(power, x)
            data.append(y)
        out.append(Share(index=x, data=bytes(data)))
    return out


def ref_combine(shares: Sequence[Share]) -> bytes:
    result = bytearray(len(shares[0].data))
    for j, share in enumerate(shares):
        basis = 1
        for m, other in enumerate(shares):
            if m != j:
                basis = ref_mul(basis, ref_mul(other.index, ref_inv(share.index ^ other.index)))
        for i, y in enumerate(share.data):
            result[i] ^= ref_mul(basis, y)
    return bytes(result)


def recording(source: Callable[[int], bytes]) -> tuple[Callable[[int], bytes], list[bytes]]:
    """Wrap a randomness source, keeping what it returned."""
    drawn: list[bytes] = []

    def random(size: int) -> bytes:
        data = source(size)
        drawn.append(data)
        return data

    return random, drawn


def seeded(seed: int) -> Callable[[int], bytes]:
    return stdlib_random.Random(seed).randbytes  # fixed: the tests cannot flake


def _reason(info: pytest.ExceptionInfo[OcpError]) -> object:
    return info.value.details.get("reason")


SECRET = bytes(range(32))


# --- the field -------------------------------------------------------------------------


def test_reference_tables_are_a_field() -> None:
    assert sorted(EXP[:255]) == list(range(1, 256))  # 0x03 generates every non-zero byte
    assert ref_mul(0x53, 0xCA) == 0x01


@pytest.mark.parametrize(
    ("a", "b", "product"),
    [
        (0x53, 0xCA, 0x01),  # the inverse pair of the AES S-box derivation
        (0x57, 0x83, 0xC1),  # FIPS 197 §4.2
        (0x57, 0x13, 0xFE),  # FIPS 197 §4.2.1
        (0x02, 0x80, 0x1B),  # x * x^7 = x^8 = x^4 + x^3 + x + 1
        (0x00, 0xFF, 0x00),
        (0x01, 0xA7, 0xA7),
    ],
)
def test_known_products(a: int, b: int, product: int) -> None:
    assert int(shamir.gf_mul(a, b)) == product
    assert int(shamir.gf_mul(b, a)) == product


def test_byte_strings_multiply_element_wise() -> None:
    assert shamir.gf_mul(b"\x53\x57\x57", b"\xca\x83\x13").tobytes() == b"\x01\xc1\xfe"
    assert shamir.gf_inv(b"\x01\x53").tobytes() == b"\x01\xca"


def test_multiplication_table_matches_the_reference() -> None:
    a, b = np.meshgrid(np.arange(256, dtype=np.uint8), np.arange(256, dtype=np.uint8))
    table = shamir.gf_mul(a, b)
    expected = np.array([[ref_mul(x, y) for x in range(256)] for y in range(256)], dtype=np.uint8)
    assert np.array_equal(table, expected)


def test_every_non_zero_byte_has_its_inverse() -> None:
    values = np.arange(1, 256, dtype=np.uint8)
    inverses = shamir.gf_inv(values)
    assert np.all(shamir.gf_mul(values, inverses) == 1)
    assert [int(v) for v in inverses] == [ref_inv(v) for v in range(1, 256)]
    assert int(shamir.gf_inv(0x53)) == 0xCA
    assert int(shamir.gf_inv(0)) == 0


# --- split -----------------------------------------------------------------------------


def test_split_by_hand() -> None:
    # f_0 = 0x01 + 0x03 x, f_1 = 0x02 + 0x04 x: one coefficient row, coefficient-major.
    shares = shamir.split(b"\x01\x02", 2, 3, random=lambda size: b"\x03\x04"[:size])
    assert shares == [
        Share(1, bytes([0x01 ^ 0x03, 0x02 ^ 0x04])),
        Share(2, bytes([0x01 ^ 0x06, 0x02 ^ 0x08])),
        Share(3, bytes([0x01 ^ 0x05, 0x02 ^ 0x0C])),
    ]


def test_split_asks_once_for_the_coefficients() -> None:
    random, drawn = recording(seeded(1))
    shares = shamir.split(SECRET, 4, 7, random=random)
    assert [len(d) for d in drawn] == [3 * 32]
    assert [s.index for s in shares] == list(range(1, 8))
    assert all(len(s.data) == 32 for s in shares)
    assert shares == ref_split(SECRET, 4, 7, drawn[0])


def test_zero_coefficients_give_the_secret_in_every_share() -> None:
    shares = shamir.split(SECRET, 3, 5, random=bytes)
    assert all(s.data == SECRET for s in shares)
    assert shamir.combine(shares[1:4]) == SECRET


def test_default_randomness_is_fresh() -> None:
    first, second = shamir.split(SECRET, 3, 5), shamir.split(SECRET, 3, 5)
    assert first != second
    assert shamir.combine(first[:3]) == shamir.combine(second[2:]) == SECRET


def test_short_randomness_is_an_internal_error() -> None:
    with pytest.raises(InternalError) as info:
        shamir.split(SECRET, 3, 5, random=lambda size: bytes(size - 1))
    assert _reason(info) == "short_randomness"


def test_share_repr_hides_the_data() -> None:
    share = Share(7, b"\xaa" * 32)
    assert "170" not in repr(share)
    assert "aa" not in repr(share).lower().replace("share", "")
    assert repr(share) == "Share(index=7)"


# --- combine ---------------------------------------------------------------------------


@pytest.mark.parametrize(("n", "t"), [(5, 3), (6, 4), (3, 2), (4, 4)])
def test_every_subset_of_threshold_size_or_more_reconstructs(n: int, t: int) -> None:
    shares = shamir.split(SECRET, t, n, random=seeded(n * 100 + t))
    for size in range(t, n + 1):
        for subset in itertools.combinations(shares, size):
            assert shamir.combine(subset) == SECRET
            assert shamir.combine(subset[::-1]) == SECRET
    for subset in itertools.combinations(shares, t - 1):
        if t - 1 >= 2:
            wrong = shamir.combine(subset)
            assert wrong != SECRET
            assert wrong == ref_combine(subset)


@settings(max_examples=60, deadline=None)
@given(data=st.data())
def test_random_parameters_and_subsets(data: st.DataObject) -> None:
    n = data.draw(st.integers(3, 24), label="n")
    t = data.draw(st.integers(2, n), label="t")
    secret = data.draw(st.binary(min_size=1, max_size=40), label="secret")
    source = data.draw(st.randoms(use_true_random=False), label="randomness")
    random, drawn = recording(source.randbytes)
    shares = shamir.split(secret, t, n, random=random)
    assert shares == ref_split(secret, t, n, drawn[0])
    order = data.draw(st.permutations(range(n)), label="order")
    size = data.draw(st.integers(t, n), label="size")
    assert shamir.combine([shares[i] for i in order[:size]]) == secret
    small = [shares[i] for i in order[: data.draw(st.integers(2, n), label="any size")]]
    assert shamir.combine(small) == ref_combine(small)


@pytest.mark.parametrize("t", [2, 3, 128, 254, 255])
def test_all_255_shares(t: int) -> None:
    shares = shamir.split(SECRET, t, 255, random=seeded(t))
    assert [s.index for s in shares] == list(range(1, 256))
    pick = stdlib_random.Random(t)
    for _ in range(5):
        subset = pick.sample(shares, pick.randint(t, 255))
        assert shamir.combine(subset) == SECRET
    assert shamir.combine(shares[-t:]) == SECRET


def test_large_indices_against_the_reference() -> None:
    secret = b"\x00\x01\x80\xff\x53\xca"
    random, drawn = recording(seeded(9))
    shares = shamir.split(secret, 8, 255, random=random)
    assert shares == ref_split(secret, 8, 255, drawn[0])
    subset = shares[247:] + shares[:3]
    assert shamir.combine(subset) == ref_combine(subset) == secret


# --- t - 1 shares say nothing about the secret -----------------------------------------------


@pytest.mark.parametrize("secret_byte", [0x00, 0x01, 0x8D, 0xFF])
def test_t_minus_1_shares_fit_every_secret_exactly_once(secret_byte: int) -> None:
    """t = 3, one secret byte, every one of the 65536 coefficient pairs (a1, a2).

    If (a1, a2) -> (y_i, y_j) is a bijection for every pair of shares and every
    secret value, then any two observed share values are consistent with each
    secret through exactly one polynomial: two shares are uniform whatever the
    secret is. The same holds for t = 2 and one share.
    """
    grid = np.arange(65536, dtype=np.uint32)
    a1, a2 = (grid & 0xFF).astype(np.uint8), (grid >> 8).astype(np.uint8)
    secret = bytes([secret_byte]) * 65536
    three = shamir.split(secret, 3, 3, random=lambda _: a1.tobytes() + a2.tobytes())
    for first, second in itertools.combinations(three, 2):
        y = np.frombuffer(first.data, np.uint8).astype(np.uint32) << 8
        y |= np.frombuffer(second.data, np.uint8)
        assert np.unique(y).size == 65536, (first.index, second.index)
    one_byte = bytes([secret_byte]) * 256
    two = shamir.split(one_byte, 2, 3, random=lambda _: bytes(range(256)))
    for share in two:
        assert sorted(share.data) == list(range(256))


def _pair_counts(secret: bytes, threshold: int, splits: int, seed: int) -> np.ndarray:
    """Histogram of (y_1, y_2) over every byte of shares 1 and 2 of ``splits`` splits."""
    random = seeded(seed)
    first, second = bytearray(), bytearray()
    for _ in range(splits):
        shares = shamir.split(secret, threshold, 5, random=random)
        first += shares[0].data
        second += shares[1].data
    cells = np.frombuffer(first, np.uint8).astype(np.int64) << 8
    cells |= np.frombuffer(second, np.uint8)
    return np.bincount(cells, minlength=65536)


def _z_uniform(counts: np.ndarray) -> float:
    """Pearson's chi-square against the uniform distribution, as a z-score.

    With k cells the statistic has mean k - 1 and variance 2(k - 1)(1 - 1/N)
    under uniformity, whatever the expected count per cell, and with k = 65536
    it is close to normal.
    """
    total, cells = int(counts.sum()), counts.size
    expected = total / cells
    statistic = float(((counts - expected) ** 2).sum() / expected)
    return (statistic - (cells - 1)) / math.sqrt(2 * (cells - 1) * (1 - 1 / total))


def _z_homogeneous(left: np.ndarray, right: np.ndarray) -> float:
    """Chi-square test that two histograms come from one distribution, as a z-score."""
    pooled = left + right
    used = pooled > 0
    n_left, n_right = int(left.sum()), int(right.sum())
    statistic = 0.0
    for counts, size in ((left, n_left), (right, n_right)):
        expected = pooled[used] * size / (n_left + n_right)
        statistic += float(((counts[used] - expected) ** 2 / expected).sum())
    dof = int(used.sum()) - 1
    return (statistic - dof) / math.sqrt(2 * dof)


def test_two_of_three_threshold_shares_are_independent_of_the_secret() -> None:
    """t = 3: shares 1 and 2 of 3000 splits of two different secrets.

    For each secret the 96000 pairs (y_1, y_2) of byte values spread uniformly
    over the 65536 cells, and the two histograms agree. The randomness is a
    seeded generator, so the outcome is fixed; a z-score of 5 would be a
    one-in-a-million fluke for a correct implementation. The same statistic on
    a t = 2 split, where two shares determine the secret, is far off: the test
    can fail.
    """
    zeros = _pair_counts(b"\x00" * 32, 3, 3000, seed=11)
    other = _pair_counts(b"\xa5" * 32, 3, 3000, seed=12)
    assert abs(_z_uniform(zeros)) < 5
    assert abs(_z_uniform(other)) < 5
    assert abs(_z_homogeneous(zeros, other)) < 5
    revealing = _pair_counts(b"\xa5" * 32, 2, 200, seed=13)
    assert np.count_nonzero(revealing) == 256  # y_2 is a function of y_1 and the secret
    assert _z_uniform(revealing) > 1000
    assert _z_homogeneous(_pair_counts(b"\x00" * 32, 2, 200, seed=14), revealing) > 100


# --- refusals --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("secret", "threshold", "shares", "reason"),
    [
        (SECRET, 1, 5, "threshold_too_low"),
        (SECRET, 0, 5, "threshold_too_low"),
        (SECRET, -3, 5, "threshold_too_low"),
        (SECRET, 6, 5, "threshold_above_total"),
        (SECRET, 256, 255, "threshold_above_total"),
        (SECRET, 2, 2, "total_shares_out_of_range"),
        (SECRET, 2, 0, "total_shares_out_of_range"),
        (SECRET, 3, 256, "total_shares_out_of_range"),
        (b"", 3, 5, "empty_secret"),
        (SECRET, True, 5, "not_an_integer"),
        (SECRET, 3, 5.0, "not_an_integer"),
    ],
)
def test_split_refuses(secret: bytes, threshold: int, shares: int, reason: str) -> None:
    called = []
    with pytest.raises(MalformedError) as info:
        shamir.split(secret, threshold, shares, random=lambda size: called.append(size) or b"")
    assert _reason(info) == reason
    assert info.value.code == "OCP-400"
    assert called == []


def test_split_accepts_the_limits() -> None:
    assert len(shamir.split(b"\x01", 2, 3)) == 3
    assert len(shamir.split(b"\x01", 255, 255)) == 255


VALID = shamir.split(SECRET, 3, 5, random=seeded(5))


@pytest.mark.parametrize(
    ("shares", "reason", "details"),
    [
        ([], "too_few_shares", {"count": 0}),
        (VALID[:1], "too_few_shares", {"count": 1}),
        ([*VALID[:3], VALID[1]], "duplicate_index", {"position": 3, "share_index": 2}),
        (
            [*VALID[:3], Share(2, b"\x00" * 32)],
            "duplicate_index",
            {"position": 3, "share_index": 2},
        ),
        ([Share(0, SECRET), *VALID[:3]], "zero_index", {"position": 0, "share_index": 0}),
        ([*VALID[:3], Share(256, SECRET)], "index_out_of_range", {"share_index": 256}),
        ([*VALID[:3], Share(-1, SECRET)], "index_out_of_range", {"share_index": -1}),
        ([*VALID[:3], Share(True, SECRET)], "index_out_of_range", {"position": 3}),
        ([*VALID[:2], Share(3, VALID[2].data[:31])], "length_mismatch", {"lengths": [31, 32]}),
        ([Share(1, b""), Share(2, b"")], "empty_share", {}),
    ],
)
def test_combine_refuses(shares: list[Share], reason: str, details: dict[str, object]) -> None:
    with pytest.raises(MalformedError) as info:
        shamir.combine(shares)
    assert _reason(info) == reason
    assert details.items() <= info.value.details.items()
    assert SECRET.hex() not in str(info.value)


# --- wire form -------------------------------------------------------------------------

PLAIN_SHARE_DATA = re.compile(r"[A-Za-z0-9_-]{42}[AEIMQUYcgkosw048]")  # schemas/recovery-share


def test_share_data_round_trip() -> None:
    for share in VALID:
        text = shamir.encode_share_data(share)
        assert text == b64url_encode(share.data)
        assert PLAIN_SHARE_DATA.fullmatch(text)
        assert shamir.decode_share(share.index, text) == share
    decoded = [shamir.decode_share(s.index, shamir.encode_share_data(s)) for s in VALID[2:]]
    assert shamir.combine(decoded) == SECRET


def test_decode_share_of_another_length() -> None:
    share = Share(3, b"\x01\x02\x03")
    text = shamir.encode_share_data(share)
    assert shamir.decode_share(3, text, length=None) == share
    with pytest.raises(MalformedError) as info:
        shamir.decode_share(3, text)
    assert info.value.details == {"field": "share_data", "expected_bytes": 32}
    with pytest.raises(MalformedError) as info:
        shamir.decode_share(3, "", length=None)
    assert _reason(info) == "empty_share"


@pytest.mark.parametrize(
    ("share_index", "share_data", "reason"),
    [
        (0, b64url_encode(SECRET), "zero_index"),
        (256, b64url_encode(SECRET), "index_out_of_range"),
        ("1", b64url_encode(SECRET), "index_out_of_range"),
        (True, b64url_encode(SECRET), "index_out_of_range"),
        (1, b64url_encode(SECRET) + "=", None),
        (1, b64url_encode(SECRET)[:-1] + "B", None),  # non-canonical trailing bits
        (1, b64url_encode(SECRET + b"\x00"), None),
        (1, SECRET, None),
    ],
)
def test_decode_share_refuses(share_index: object, share_data: object, reason: str | None) -> None:
    with pytest.raises(MalformedError) as info:
        shamir.decode_share(share_index, share_data)
    assert _reason(info) == reason
    field = "share_index" if reason else "share_data"
    assert info.value.details["field"] == field


def test_scheme_name_is_the_schema_constant() -> None:
    assert shamir.SCHEME == "shamir-sss-gf256"
    assert shamir.POLYNOMIAL == 0x11B
