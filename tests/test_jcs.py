"""ocpd.proto.jcs: RFC 8785 vectors, ES6 numbers and a differential test against rfc8785."""

from __future__ import annotations

import enum
import hashlib
import itertools
import json
import math
import random
import re
import struct
from collections import OrderedDict
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest
import rfc8785
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ocpd.proto import jcs
from ocpd.proto.jcs import canonicalize, canonicalize_reference

if TYPE_CHECKING:
    from collections.abc import Iterator

VECTORS = Path(__file__).parent / "vectors" / "jcs"
VECTOR_NAMES = ("arrays", "french", "structures", "unicode", "values", "weird")
INT_MAX = 2**53 - 1


def _id(value: object) -> str:
    """A stable test id: repr without memory addresses."""
    return re.sub(r" at 0x[0-9a-f]+", "", repr(value))


def _double(hex_bits: str) -> float:
    value: float = struct.unpack(">d", int(hex_bits, 16).to_bytes(8, "big"))[0]
    return value


# --- 1. the RFC 8785 test vectors (cyberphone/json-canonicalization) ---------


def test_vector_set_is_complete() -> None:
    for sub, suffix in (("input", ".json"), ("output", ".json"), ("outhex", ".txt")):
        found = sorted(p.name for p in (VECTORS / sub).iterdir())
        assert found == [n + suffix for n in VECTOR_NAMES]


@pytest.mark.parametrize("name", VECTOR_NAMES)
def test_rfc8785_vector(name: str) -> None:
    value = json.loads((VECTORS / "input" / f"{name}.json").read_text(encoding="utf-8"))
    expected = (VECTORS / "output" / f"{name}.json").read_bytes()
    # The output files carry no trailing newline (outhex confirms it); strip
    # one defensively in case a checkout adds it.
    if expected.endswith(b"\n"):
        expected = expected[:-1]
    outhex = bytes.fromhex("".join((VECTORS / "outhex" / f"{name}.txt").read_text().split()))
    assert expected == outhex
    assert canonicalize(value) == expected
    assert canonicalize_reference(value) == expected


# --- ES6 number serialisation -----------------------------------------------

# The sample lines of the README ("hex-ieee,expected").
ES6_SAMPLES = [
    ("4340000000000001", "9007199254740994"),
    ("4340000000000002", "9007199254740996"),
    ("444b1ae4d6e2ef50", "1e+21"),
    ("3eb0c6f7a0b5ed8d", "0.000001"),
    ("3eb0c6f7a0b5ed8c", "9.999999999999997e-7"),
    ("8000000000000000", "0"),
    ("0", "0"),
]


@pytest.mark.parametrize(("hex_bits", "expected"), ES6_SAMPLES)
def test_es6_sample_numbers(hex_bits: str, expected: str) -> None:
    value = _double(hex_bits)
    assert canonicalize(value) == expected.encode()
    assert canonicalize_reference(value) == expected.encode()
    assert canonicalize([value, {"n": value}]) == f'[{expected},{{"n":{expected}}}]'.encode()


def _es6_number_sequence() -> Iterator[int]:
    """The IEEE-754 bit patterns of the README's es6testfile generator, in order."""
    readme = (VECTORS / "README.md").read_text(encoding="utf-8")
    table = readme[readme.index("staticU64s = new BigUint64Array([") :]
    table = table[: table.index("])")]
    yield from (int(h, 16) for h in re.findall(r"0x([0-9a-f]+)n", table))
    yield from (0x0010000000000000 + i for i in range(2000))
    block = bytes(32)
    while True:
        block = hashlib.sha256(block).digest()
        for bits in struct.unpack("<4Q", block):
            f = struct.unpack("<d", struct.pack("<Q", bits))[0]
            if f != 0.0 and math.isfinite(f):
                yield bits


# SHA-256 of the first N lines of es6testfile100m.txt (the README's table).
ES6_FILE_SHA256 = {
    1000: "be18b62b6f69cdab33a7e0dae0d9cfa869fda80ddc712221570f9f40a5878687",
    10000: "b9f7a8e75ef22a835685a52ccba7f7d6bdc99e34b010992cbc5864cd12be6892",
    100000: "22776e6d4b49fa294a0d0f349268e5c28808fe7e0cb2bcbe28f63894e494d4c7",
}


@pytest.mark.parametrize("fn", [canonicalize, canonicalize_reference])
def test_es6_number_file_checksums(fn: Any) -> None:
    """Regenerate the first 100,000 lines of the ES6 test file with ``fn`` as the formatter."""
    digest = hashlib.sha256()
    pack, unpack = struct.Struct("<Q").pack, struct.Struct("<d").unpack
    for count, bits in enumerate(itertools.islice(_es6_number_sequence(), 100000), 1):
        digest.update(b"%x," % bits + fn(unpack(pack(bits))[0]) + b"\n")
        if count in ES6_FILE_SHA256:
            assert digest.hexdigest() == ES6_FILE_SHA256[count], count


def test_fast_path_float_range_matches_reference() -> None:
    """Random doubles whose exponents span the fast path (1e-4 .. 2^53) and its edges."""
    rng = random.Random(8785)
    values = []
    for _ in range(20000):
        exponent = rng.randint(1023 - 16, 1023 + 55)  # about 1.5e-5 .. 7e16
        bits = (rng.getrandbits(1) << 63) | (exponent << 52) | rng.getrandbits(52)
        values.append(struct.unpack("<d", struct.pack("<Q", bits))[0])
    edges = [1e-4, 2.0**53, 1e16, 1e21]
    for edge in edges:
        down, up = math.nextafter(edge, 0.0), math.nextafter(edge, math.inf)
        values += [edge, down, up, -edge, -down, -up]
    values += [float(n) for n in range(-1000, 1000)]
    values += [float(INT_MAX), float(INT_MAX - 1), 2.0**53 + 2, 2.0**52 + 0.5]
    for value in values:
        assert canonicalize(value) == rfc8785.dumps(value), value.hex()
    assert canonicalize(values) == rfc8785.dumps(values)


# --- 2. differential test against rfc8785 -----------------------------------

TRICKY_FLOATS = [
    0.0,
    -0.0,
    5e-324,
    -5e-324,
    2.2250738585072014e-308,  # smallest normal
    2.225073858507201e-308,  # largest subnormal
    1e-7,
    1.2e-7,
    1e-6,
    9.999999999999997e-7,
    1e-4,
    9.999999999999999e-5,
    0.1,
    0.5,
    1.0,
    -1.0,
    1.5,
    333333333.3333333,
    4.5,
    2.0**52 + 0.5,
    2.0**53 - 1,
    2.0**53,
    2.0**53 + 1,  # rounds to 2^53
    2.0**53 + 2,
    1e15,
    1e16,
    1.5e16,
    1e20,
    1e21,
    1.2345e21,
    2.0**60,
    1e30,
    1e300,
    1.7976931348623157e308,
    -1.7976931348623157e308,
]

SPECIAL_CHARS = (
    '"\\/\b\f\n\r\t\x00\x01\x0b\x1f\x20\x7f\x80\xa0\xff'
    "\u0100\u20ac\u2028\u2029\ud7ff\ue000\ufb33\ufeff\ufffd\uffff"
    "\U00010000\U0001f600\U0001f602\U0010ffff"
)
CHARS = st.one_of(
    st.characters(codec="utf-8"),  # any Unicode scalar value: no lone surrogates
    st.sampled_from(SPECIAL_CHARS),
    st.characters(max_codepoint=0x7F),
    st.characters(min_codepoint=0xE000, max_codepoint=0xFFFF),
    st.characters(min_codepoint=0x10000, max_codepoint=0x10FFFF),
)
TEXT = st.text(CHARS, max_size=10)
# A small pool makes dicts hold keys that sort differently in UTF-16 and in
# code point order ("\ue000" vs "\U0001f600") often.
KEY_POOL = ["", "a", "A", "1", "10", "\r", "\u20ac", "\ue000", "\uffff", "a\ue000"]
KEY_POOL += ["\U00010000", "\U0001f600", "a\U0001f600", "\U0010ffff", "\ufb33", "\U0001f602"]
KEYS = st.one_of(TEXT, st.sampled_from(KEY_POOL))
BMP_KEYS = st.one_of(
    st.text(CHARS.filter(lambda c: c <= "\uffff"), max_size=10),
    st.sampled_from([k for k in KEY_POOL if max(k, default="") <= "\uffff"]),
)
INTS = st.one_of(
    st.integers(-INT_MAX, INT_MAX),
    st.integers(-1000, 1000),
    st.sampled_from([INT_MAX, -INT_MAX, INT_MAX - 1, 2**31, -(2**31), 2**32]),
)
FLOATS = st.one_of(
    st.floats(allow_nan=False, allow_infinity=False),  # subnormals and -0.0 included
    st.floats(min_value=-1e6, max_value=1e6),
    st.integers(-(2**53), 2**53).map(float),
    st.sampled_from(TRICKY_FLOATS),
)
# Floats the fast path prints itself (no fallback): 1e-4 <= |x| < 2^53, or zero.
FAST_FLOATS = st.one_of(
    st.floats(min_value=1e-4, max_value=2.0**53, exclude_max=True),
    st.floats(min_value=-(2.0**53), max_value=-1e-4, exclude_min=True),
    st.integers(-(2**53) + 1, 2**53 - 1).map(float),
    st.sampled_from([0.0, -0.0, 1e-4, -1e-4, 0.5, 1.0, 2.0**53 - 1]),
)
SCALARS = st.one_of(st.none(), st.booleans(), INTS, FLOATS, TEXT)
FAST_SCALARS = st.one_of(st.none(), st.booleans(), INTS, FAST_FLOATS, TEXT)


def _wrap(value: object, path: list[str | None]) -> object:
    """Nest ``value`` in one container per path item: None a list, a key a dict."""
    for step in path:
        value = [value] if step is None else {step: value}
    return value


def _trees(
    scalars: st.SearchStrategy[object], keys: st.SearchStrategy[str]
) -> st.SearchStrategy[object]:
    trees = st.recursive(
        scalars,
        lambda children: st.one_of(
            st.lists(children, max_size=5),
            st.dictionaries(keys, children, max_size=5),
        ),
        max_leaves=25,
    )
    # Extra nesting (up to 10 more levels) around some of the trees.
    path = st.lists(st.one_of(st.none(), keys), max_size=10)
    return st.one_of(trees, st.builds(_wrap, trees, path))


# Any value, and values the fast path handles without the fallback (numbers in
# its range, keys without non-BMP characters), so that both paths see
# thousands of examples.
JSON_VALUES = st.one_of(_trees(SCALARS, KEYS), _trees(FAST_SCALARS, BMP_KEYS))


@settings(
    max_examples=10_000,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
@given(JSON_VALUES)
def test_matches_rfc8785(value: Any) -> None:
    assert canonicalize(value) == rfc8785.dumps(value)


def _parse_int(text: str) -> int | float:
    # JSON numbers are IEEE doubles (RFC 8785 3.2.2.3): the canonical text of
    # a double of 2^53 or more, e.g. 1e20 -> "100000000000000000000", has no
    # exponent, and json.loads would turn it into an int beyond the +-(2^53-1)
    # that rfc8785 accepts. Read such numbers back as the double they denote.
    value = int(text)
    return value if -INT_MAX <= value <= INT_MAX else float(text)


# --- 3. idempotence ----------------------------------------------------------


@settings(max_examples=1000, deadline=None, derandomize=True, database=None)
@given(JSON_VALUES)
def test_idempotent(value: object) -> None:
    once = canonicalize(value)
    assert canonicalize(json.loads(once, parse_int=_parse_int)) == once


def test_idempotent_plain_json_loads_below_2_53() -> None:
    value = {"b": [1.0, -0.0, 0.5, 1e-7, 1e21, INT_MAX, "\U0001f600\n"], "a": {"\ue000": True}}
    once = canonicalize(value)
    assert canonicalize(json.loads(once)) == once


# --- 4. rejections mirror rfc8785 --------------------------------------------

REJECTED = [
    float("nan"),
    float("inf"),
    float("-inf"),
    {"a": [1, {"b": float("nan")}]},
    2**53,
    -(2**53),
    10**400,
    [INT_MAX + 1],
    {1: "a"},
    {None: "a"},
    {True: "a"},
    {1.5: "a"},
    {b"a": "a"},
    {"a": {("t",): 1}},
    b"bytes",
    bytearray(b"x"),
    {"a": b"x"},
    {1, 2},
    frozenset(),
    1 + 2j,
    object(),
    "\ud800",
    ["ok", "\udfff"],
    "\ud83d\ude00",  # a surrogate pair as two code points is not UTF-8 either
    {"\ud800": 1},
    {"\ud800": 1, "a": 2},
    {"a": {"\udc00x": 1}},
    {"\U0001f600": 1, "\ue000": float("inf")},
]


@pytest.mark.parametrize("value", REJECTED, ids=_id)
def test_rejections_mirror_rfc8785(value: Any) -> None:
    try:
        rfc8785.dumps(value)
    except ValueError as exc:
        reference = exc
    else:
        pytest.fail("rfc8785 accepted the value")
    with pytest.raises(type(reference), match=re.escape(str(reference))) as ours:
        canonicalize(value)
    assert type(ours.value) is type(reference)
    assert isinstance(ours.value, ValueError)
    # The fallback runs outside the fast path's except block, so the error is
    # not chained to an internal one.
    assert type(ours.value.__context__) is type(reference.__context__)


class _Colour(enum.IntEnum):
    RED = 1


class _Name(enum.StrEnum):
    ALICE = "alice"


class _Text(str):
    pass


ACCEPTED_ODDITIES = [
    (1, 2),  # rfc8785 accepts tuples as arrays
    {"a": (1.0, "x", (True,))},
    OrderedDict([("b", 1), ("a", 2)]),
    {"e": _Colour.RED, "n": _Name.ALICE, _Name.ALICE: 1, _Text("k"): _Text("v")},
    [INT_MAX, -INT_MAX, 2.0**53, 1e300, 5e-324],
    {"\U0001f600": 1},  # a single non-BMP key
    "",
    [],
    {},
    None,
    True,
    -0.0,
]


@pytest.mark.parametrize("value", ACCEPTED_ODDITIES, ids=_id)
def test_oddities_rfc8785_accepts(value: Any) -> None:
    assert canonicalize(value) == rfc8785.dumps(value)


def test_rfc8785_float_domain() -> None:
    """rfc8785 accepts every finite double, however large, and rejects big ints."""
    assert rfc8785.dumps(1e300) == canonicalize(1e300) == b"1e+300"
    assert canonicalize(2.0**53) == b"9007199254740992"
    with pytest.raises(rfc8785.IntegerDomainError):
        canonicalize(2**53)


INVALID_SCALARS = st.sampled_from(
    [
        float("nan"),
        float("inf"),
        float("-inf"),
        2**53,
        -(2**53),
        10**20,
        b"x",
        (1, "t"),
        "\ud800",
        "a\udfffb",
        {1},
        _Colour.RED,
        _Name.ALICE,
    ]
)
INVALID_KEYS = st.one_of(KEYS, st.sampled_from([1, None, True, 1.5, b"k", "\ud800", _Name.ALICE]))
MAYBE_INVALID = st.recursive(
    st.one_of(SCALARS, INVALID_SCALARS),
    lambda children: st.one_of(
        st.lists(children, max_size=4),
        st.dictionaries(INVALID_KEYS, children, max_size=4),
    ),
    max_leaves=12,
)


@settings(max_examples=2000, deadline=None, derandomize=True, database=None)
@given(MAYBE_INVALID)
def test_mirrors_rfc8785_on_any_input(value: Any) -> None:
    """Same bytes, or the same exception (type and message), as rfc8785."""
    try:
        expected = rfc8785.dumps(value)
    except ValueError as exc:
        with pytest.raises(type(exc)) as ours:
            canonicalize(value)
        assert type(ours.value) is type(exc)
        assert str(ours.value) == str(exc)
    else:
        assert canonicalize(value) == expected


# --- 5. key order: UTF-16 code units, not code points ------------------------


def test_non_bmp_key_sorts_before_private_use_area() -> None:
    value = {"\ue000": 1, "\U0001f600": 2}
    expected = b'{"\xf0\x9f\x98\x80":2,"\xee\x80\x80":1}'
    assert canonicalize(value) == expected
    assert rfc8785.dumps(value) == expected
    # Code point order (json.dumps sort_keys) would put U+E000 first.
    assert json.dumps(value, sort_keys=True, ensure_ascii=False).startswith('{"\ue000"')
    nested: Any = [{"x": {"\uffff": None, "\U00010000": [], "a": 0}}]
    assert canonicalize(nested) == '[{"x":{"a":0,"\U00010000":[],"\uffff":null}}]'.encode()


def test_non_bmp_values_keep_the_fast_path(monkeypatch: pytest.MonkeyPatch) -> None:
    value: Any = {"b": "\U0001f600", "a": ["\U0010ffff", {"\ue000": "\U00010000"}]}
    expected = rfc8785.dumps(value)
    monkeypatch.setattr(jcs, "canonicalize_reference", _no_fallback)
    assert canonicalize(value) == expected


# --- the fast path -----------------------------------------------------------


def _no_fallback(value: object) -> bytes:
    raise AssertionError("the fast path should have handled this value")


OCP_MESSAGE: dict[str, Any] = {
    "ocp_version": "1.0",
    "message_id": "msg-1a2b3c4d-5e6f-7a8b-9c0d",
    "timestamp": "2025-11-21T11:06:00.123456Z",
    "sender": {"agent_id": "did:ocp:mainnet:agent-0123456789ab"},
    "receiver": {"agent_id": "did:ocp:mainnet:agent-ba9876543210", "broadcast": False},
    "message_type": "consensus_initiate",
    "ttl": 3600,
    "priority": "normal",
    "payload": {
        "consensus_id": "con-2f1c7e3a-9b4d-4e6f-8a1b-3c5d7e9f0a1b",
        "topic": "adopt efSearch=128 — «qualité» ✓",
        "options": ["yes", "no", "abstain"],
        "quorum": {"min_participants": 3, "threshold": 1.0, "weighted": True},
        "scores": {"yes": 2.5, "no": 0.0, "abstain": -0.0, "weights": [0.25, 1e-4, 3.0]},
        "eligible_agents": {"min_trust_level": 2, "required_domains": ["search", None]},
    },
    "metadata": {"tags": [], "requires_ack": True, "correlation_id": None},
}


def test_fast_path_handles_typical_messages(monkeypatch: pytest.MonkeyPatch) -> None:
    expected = rfc8785.dumps(OCP_MESSAGE)
    monkeypatch.setattr(jcs, "canonicalize_reference", _no_fallback)
    assert canonicalize(OCP_MESSAGE) == expected


def test_input_is_not_modified() -> None:
    value = json.loads(json.dumps(OCP_MESSAGE))
    snapshot = repr(value)
    canonicalize(value)
    assert repr(value) == snapshot
    assert type(value["payload"]["quorum"]["threshold"]) is float


def test_unchanged_containers_are_encoded_in_place() -> None:
    no_floats = {"a": [1, "x", {"b": None}], "c": True}
    assert jcs._prepare(no_floats) is no_floats
    with_float = {"a": [1, "x", {"b": 2.0}], "c": {"d": 0.5}}
    prepared = jcs._prepare(with_float)
    assert prepared == {"a": [1, "x", {"b": 2}], "c": {"d": 0.5}}
    assert type(prepared["a"][2]["b"]) is int
    assert prepared["c"] is with_float["c"]  # untouched branches are shared
