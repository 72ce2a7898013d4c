from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from ocpd.proto.dcbor import decode_deterministic, encode_deterministic, signing_input
from ocpd.proto.errors import MalformedError

values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**64), max_value=2**64 - 1)
    | st.text(max_size=30),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=30), children, max_size=4)
    ),
    max_leaves=25,
)


@given(values)
def test_round_trip_is_byte_identical(value: object) -> None:
    data = encode_deterministic(value)
    assert decode_deterministic(data) == value
    assert encode_deterministic(decode_deterministic(data)) == data


@pytest.mark.parametrize(
    ("value", "hex_"),
    [
        (0, "00"),
        (23, "17"),
        (24, "1818"),
        (255, "18ff"),
        (256, "190100"),
        (65536, "1a00010000"),
        (2**32, "1b0000000100000000"),
        (-1, "20"),
        (-25, "3818"),
        ("", "60"),
        ("a", "6161"),
        (True, "f5"),
        (False, "f4"),
        (None, "f6"),
        ([], "80"),
        # keys sorted bytewise by their encoding: shorter strings first
        ({"bb": 1, "a": 2, "c": 3}, "a3616102616303626262" + "01"),
    ],
)
def test_known_encodings(value: object, hex_: str) -> None:
    assert encode_deterministic(value).hex() == hex_


@pytest.mark.parametrize(
    ("hex_", "why"),
    [
        ("9f0102ff", "indefinite array"),
        ("bf616101ff", "indefinite map"),
        ("7f6161ff", "indefinite text"),
        ("a2616101616102", "duplicate key"),
        ("a2616201616101", "unsorted keys"),
        ("1817", "non-shortest integer"),
        ("190017", "non-shortest integer"),
        ("0000", "trailing bytes"),
        ("f93c00", "float"),
        ("c11a514b67b0", "tag"),
        ("a10101", "integer key"),
        ("62c328", "invalid utf-8"),
        ("", "empty"),
        ("81", "truncated"),
    ],
)
def test_decoder_refuses_non_deterministic(hex_: str, why: str) -> None:
    with pytest.raises(MalformedError):
        decode_deterministic(bytes.fromhex(hex_))


def test_encoder_refuses_floats_and_foreign_types() -> None:
    for bad in (1.5, {1: 2}, (1, 2), {"a": {1.0}}):
        with pytest.raises(ValueError, match=r"CBOR|deterministic"):
            encode_deterministic(bad)


def test_signing_input_domain_separation() -> None:
    assert (
        signing_input("node-advertisement.v1", {"a": 1})
        == b"node-advertisement.v1\x00\xa1\x61\x61\x01"
    )
    assert signing_input("peer-handshake.v1", {"a": 1}) != signing_input(
        "node-advertisement.v1", {"a": 1}
    )
