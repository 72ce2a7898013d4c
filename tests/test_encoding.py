from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from ocpd.proto.encoding import b64url_decode, b64url_encode, format_timestamp, parse_timestamp
from ocpd.proto.errors import MalformedError


@given(st.binary(max_size=200))
def test_b64url_round_trip(data: bytes) -> None:
    text = b64url_encode(data)
    assert "=" not in text
    assert b64url_decode(text) == data


@pytest.mark.parametrize(
    "text",
    [
        "AAE=",  # padding
        "AA E",  # whitespace
        "AA\n",
        "AA+/",  # standard alphabet
        "A",  # impossible length
        "AB",  # non-zero spare bits: does not re-encode to itself
        "AAF",
        "ÀÀ",
        12,
        None,
    ],
)
def test_b64url_rejects_non_canonical(text: object) -> None:
    with pytest.raises(MalformedError) as info:
        b64url_decode(text)
    assert info.value.code == "OCP-400"


def test_b64url_exact_length() -> None:
    assert b64url_decode(b64url_encode(b"\1" * 32), length=32) == b"\1" * 32
    with pytest.raises(MalformedError, match="exactly 32"):
        b64url_decode(b64url_encode(b"\1" * 31), length=32)


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("1970-01-01T00:00:00Z", 0.0),
        ("2026-04-03T12:00:00Z", 1775217600.0),
        ("2026-04-03T12:00:00.5Z", 1775217600.5),
        ("2026-04-03T12:00:00.123456Z", 1775217600.123456),
        ("2024-02-29T23:59:59Z", 1709251199.0),
    ],
)
def test_timestamps_parse(text: str, seconds: float) -> None:
    assert parse_timestamp(text) == pytest.approx(seconds, abs=1e-6)


@pytest.mark.parametrize(
    "text",
    [
        "2026-04-03T12:00:00+00:00",
        "2026-04-03T12:00:00+01:00",
        "2026-04-03t12:00:00z",
        "2026-04-03 12:00:00Z",
        "2026-04-03T12:00Z",
        "2026-04-03T12:00:00.1234567Z",
        "2026-04-03T12:00:00.Z",
        "2026-02-30T12:00:00Z",
        "2025-02-29T12:00:00Z",
        "2026-04-03T24:00:00Z",
        "2026-04-03T23:59:60Z",
        "2026-4-03T12:00:00Z",
        "２026-04-03T12:00:00Z",
        "",
        1775217600,
    ],
)
def test_timestamps_reject(text: object) -> None:
    with pytest.raises(MalformedError):
        parse_timestamp(text)


@given(st.integers(min_value=0, max_value=253402300799))
def test_timestamp_round_trip(seconds: int) -> None:
    assert parse_timestamp(format_timestamp(seconds)) == seconds


def test_format_fraction() -> None:
    assert format_timestamp(1775217600.25, fraction_digits=3) == "2026-04-03T12:00:00.250Z"


def test_repeated_timestamps_give_the_same_answer_and_name_their_field() -> None:
    # Parsing is cached by text: answers, errors and field names must not change.
    for _ in range(3):
        assert parse_timestamp("1969-12-31T23:59:59Z") == -1.0
        assert parse_timestamp("2026-04-03T12:00:00.5Z") == 1775217600.5
        with pytest.raises(MalformedError, match="not a valid date-time") as first:
            parse_timestamp("2026-02-30T12:00:00Z", field="timestamp")
        assert first.value.details == {"field": "timestamp"}
        with pytest.raises(MalformedError, match="expires_at") as second:
            parse_timestamp("2026-02-30T12:00:00Z", field="expires_at")
        assert second.value.details == {"field": "expires_at"}
        with pytest.raises(MalformedError, match="'Z' suffix"):
            parse_timestamp("2026-04-03T12:00:00+00:00")
