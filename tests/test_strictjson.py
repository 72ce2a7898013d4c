"""Strict I-JSON intake (D1): every hostile input is OCP-400/413, nothing else escapes."""

from __future__ import annotations

import json

import pytest
from hypothesis import given
from hypothesis import strategies as st

from ocpd.proto.errors import MalformedError, OcpError, PayloadTooLarge
from ocpd.proto.strictjson import MAX_DEPTH, loads_strict

LIMIT = 1 << 20

json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**53 - 1), max_value=2**53 - 1)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(st.characters(exclude_categories=("Cs",))),
    lambda children: (
        st.lists(children, max_size=5)
        | st.dictionaries(
            st.text(st.characters(exclude_categories=("Cs",)), max_size=8), children, max_size=5
        )
    ),
    max_leaves=30,
)


@given(json_values)
def test_valid_json_round_trips(value: object) -> None:
    data = json.dumps(value, ensure_ascii=False).encode()
    assert loads_strict(data, max_size=LIMIT) == value


HOSTILE = {
    "duplicate-key": b'{"a":1,"a":1}',
    "nested-duplicate": b'{"x":{"k":1,"k":2}}',
    "nan": b"[NaN]",
    "infinity": b"[Infinity]",
    "minus-infinity": b"[-Infinity]",
    "overflow-float": b"[1e400]",
    "int-too-big": b"[9007199254740992]",
    "int-too-small": b"[-9007199254740992]",
    "lone-high-surrogate": b'["\\ud800"]',
    "lone-low-surrogate": b'["\\udc00x"]',
    "lone-surrogate-key": b'{"\\udbff":1}',
    "depth-65": b"[" * 65 + b"]" * 65,
    "depth-bomb": b"[" * 100_000,
    "object-depth-65": b'{"a":' * 65 + b"1" + b"}" * 65,
    "bom": b'\xef\xbb\xbf{"a":1}',
    "utf16": '{"a":1}'.encode("utf-16"),
    "bad-utf8": b'["\xc3\x28"]',
    "utf8-surrogate-bytes": b'["\xed\xa0\x80"]',
    "trailing-data": b'{"a":1} {}',
    "trailing-comma": b"[1,]",
    "single-quotes": b"{'a':1}",
    "control-char": b'["a\x01b"]',
    "empty": b"",
    "comment": b"[1] // x",
    "leading-zero": b"[01]",
}


@pytest.mark.parametrize("data", HOSTILE.values(), ids=HOSTILE.keys())
def test_hostile_inputs_are_ocp_400(data: bytes) -> None:
    with pytest.raises(MalformedError) as info:
        loads_strict(data, max_size=LIMIT)
    assert info.value.code == "OCP-400"
    assert info.value.http_status == 400


def test_size_limit_is_413_before_parsing() -> None:
    with pytest.raises(PayloadTooLarge) as info:
        loads_strict(b"[" + b"1," * 100 + b"1]", max_size=100)
    assert info.value.code == "OCP-413"
    # even garbage is refused for its size, not its content
    with pytest.raises(PayloadTooLarge):
        loads_strict(b"\xff" * 101, max_size=100)


def test_accepted_edges() -> None:
    assert loads_strict(b"[" * MAX_DEPTH + b"]" * MAX_DEPTH, max_size=LIMIT) is not None
    assert loads_strict(b"[9007199254740991,-9007199254740991]", max_size=LIMIT) == [
        2**53 - 1,
        -(2**53 - 1),
    ]
    assert loads_strict(b'["\\ud83d\\ude00"]', max_size=LIMIT) == ["\U0001f600"]
    # an escaped backslash followed by the letters 'ud800' is not a surrogate
    assert loads_strict(b'["\\\\ud800"]', max_size=LIMIT) == ["\\ud800"]
    # brackets inside strings do not count as nesting
    deep_text = b'["' + b"[" * 200 + b'"]'
    assert loads_strict(deep_text, max_size=LIMIT) == ["[" * 200]


@given(st.binary(max_size=300))
def test_arbitrary_bytes_never_escape_the_hierarchy(data: bytes) -> None:
    try:
        loads_strict(data, max_size=200)
    except OcpError as exc:
        assert exc.code in {"OCP-400", "OCP-413"}


@given(st.text(alphabet='[]{}",:0123456789.eE+-\\tufnrlasd \n', max_size=200))
def test_json_like_text_never_escapes_the_hierarchy(text: str) -> None:
    try:
        loads_strict(text.encode(), max_size=LIMIT)
    except OcpError as exc:
        assert exc.code == "OCP-400"
