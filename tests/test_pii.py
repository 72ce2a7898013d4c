"""PII detection (PVL-001): the labelled corpus, the walk and robustness."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ocpd.proto.pii import KINDS, MAX_SCAN_CHARS, Finding, scan, scan_text

CORPUS = Path(__file__).parent / "data" / "pii_corpus.json"
MIN_PRECISION = 0.97
MIN_RECALL = 0.95


def _load_corpus() -> list[dict[str, Any]]:
    cases = json.loads(CORPUS.read_text(encoding="utf-8"))
    assert isinstance(cases, list)
    return cases


def _measure(cases: list[dict[str, Any]]) -> dict[str, dict[str, int]]:
    """Per kind: true positives, false positives, false negatives, labelled cases."""
    counts = {kind: {"tp": 0, "fp": 0, "fn": 0, "cases": 0} for kind in KINDS}
    for case in cases:
        expected = set(case["kinds"])
        predicted = set(scan_text(str(case["text"])))
        for kind in KINDS:
            row = counts[kind]
            row["cases"] += kind in expected
            row["tp"] += kind in expected and kind in predicted
            row["fp"] += kind in predicted and kind not in expected
            row["fn"] += kind in expected and kind not in predicted
    return counts


def _ratio(num: int, den: int) -> float:
    return num / den if den else 1.0


def _totals(counts: dict[str, dict[str, int]]) -> dict[str, int]:
    return {field: sum(row[field] for row in counts.values()) for field in ("tp", "fp", "fn")}


def _table(counts: dict[str, dict[str, int]]) -> str:
    lines = [
        "| Kind | Positive cases | TP | FP | FN | Precision | Recall |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    rows = [*counts.items(), ("overall", {**_totals(counts), "cases": 0})]
    for kind, row in rows:
        tp, fp, fn = row["tp"], row["fp"], row["fn"]
        cases = str(row["cases"]) if kind != "overall" else ""
        lines.append(
            f"| {kind} | {cases} | {tp} | {fp} | {fn} "
            f"| {_ratio(tp, tp + fp):.3f} | {_ratio(tp, tp + fn):.3f} |"
        )
    return "\n".join(lines)


def test_corpus_shape() -> None:
    cases = _load_corpus()
    assert all(set(case) == {"text", "kinds", "note"} for case in cases)
    assert all(set(case["kinds"]) <= set(KINDS) for case in cases)
    positives = [case for case in cases if case["kinds"]]
    negatives = [case for case in cases if not case["kinds"]]
    assert len(positives) >= 120
    assert len(negatives) >= 120
    texts = [case["text"] for case in cases]
    assert len(texts) == len(set(texts))


def test_corpus_precision_and_recall() -> None:
    cases = _load_corpus()
    counts = _measure(cases)
    table = _table(counts)
    positives = sum(1 for case in cases if case["kinds"])
    print(f"\n{positives} positive and {len(cases) - positives} negative cases\n{table}")
    totals = _totals(counts)
    precision = _ratio(totals["tp"], totals["tp"] + totals["fp"])
    recall = _ratio(totals["tp"], totals["tp"] + totals["fn"])
    assert all(row["cases"] >= 5 for row in counts.values()), table
    assert precision >= MIN_PRECISION, table
    assert recall >= MIN_RECALL, table


def test_kinds_are_the_documented_ones() -> None:
    assert KINDS == (
        "email",
        "phone",
        "payment_card",
        "iban",
        "ipv4",
        "ipv6",
        "us_ssn",
        "uk_nino",
    )


def test_one_string_several_kinds() -> None:
    text = "alice@example.com, +44 20 7946 0958, 4111 1111 1111 1111, 2001:db8::1"
    assert scan_text(text) == ["email", "phone", "payment_card", "ipv6"]


def test_keys_are_scanned() -> None:
    assert scan({"alice@example.com": 1}) == [
        Finding(kind="email", path="$[<redacted>]", where="key")
    ]


def test_path_names_the_place() -> None:
    value = {"content": {"items": [1, "no pii here", {"email": "bob@example.org"}]}}
    assert scan(value, root="payload") == [
        Finding(kind="email", path="payload.content.items[2].email", where="value")
    ]
    odd = {"a key": {"x.y": ["AB 12 34 56 C"]}}
    assert scan(odd) == [Finding(kind="uk_nino", path='$["a key"]["x.y"][0]', where="value")]


def test_findings_under_a_pii_key_do_not_reveal_the_key() -> None:
    value = {"meta": {"carol@example.com": {"phone": "+44 20 7946 0958"}}}
    assert scan(value) == [
        Finding(kind="email", path="$.meta[<redacted>]", where="key"),
        Finding(kind="phone", path="$.meta[<redacted>].phone", where="value"),
    ]


def test_findings_never_contain_the_matched_text() -> None:
    secrets = [
        "dave@example.net",
        "+44 20 7946 0958",
        "4111 1111 1111 1111",
        "DE89370400440532013000",
        "203.0.113.42",
        "2001:db8::1",
        "536-22-1987",
        "AB123456C",
    ]
    value = {secret: {"nested": secret, "list": [secret]} for secret in secrets}
    findings = scan(value, limit=100)
    assert {f.kind for f in findings} == set(KINDS)
    assert len(findings) == 3 * len(KINDS)
    rendered = repr(findings) + str(findings)
    for secret in secrets:
        assert secret not in rendered
        assert secret.replace(" ", "") not in rendered


def test_deep_nesting_does_not_recurse() -> None:
    value: object = "eve@example.com"
    for _ in range(300):
        value = {"a": [value]}
    assert scan(value) == [Finding(kind="email", path="$" + ".a[0]" * 300, where="value")]


def test_limit_stops_early() -> None:
    value = ["frank@example.com"] * 50
    assert len(scan(value)) == 16
    assert scan(value, limit=3) == [
        Finding(kind="email", path=f"$[{index}]", where="value") for index in range(3)
    ]
    with pytest.raises(ValueError, match="limit"):
        scan(value, limit=0)


def test_numbers_booleans_and_null_are_not_scanned() -> None:
    value = {
        "card": 4111111111111111,
        "coordinates": [48.8584, 2.2945],
        "flag": True,
        "nothing": None,
        "phone": 14155552671,
    }
    assert scan(value) == []


def test_shared_and_cyclic_containers_are_scanned_once() -> None:
    shared = ["grace@example.com"]
    assert len(scan({"a": shared, "b": shared})) == 1
    cyclic: list[object] = []
    cyclic.append(cyclic)
    assert scan(cyclic) == []


def test_only_the_first_mib_of_a_string_is_examined() -> None:
    assert scan_text("x " * 1000 + "heidi@example.com") == ["email"]
    assert scan_text(" " * MAX_SCAN_CHARS + "heidi@example.com") == []


_SCALARS = (
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=False)
    | st.text()
    | st.text(alphabet="0123456789 +-.:/@()[]%abcdefABCDEFGBxXn", max_size=60)
    | st.sampled_from(["alice@example.com", "4111 1111 1111 1111", "::ffff:192.0.2.1"])
)
_JSON_LIKE = st.recursive(
    _SCALARS,
    lambda children: (
        st.lists(children, max_size=5)
        | st.dictionaries(
            st.text(max_size=20) | _SCALARS.filter(lambda v: isinstance(v, str)),
            children,
            max_size=5,
        )
    ),
    max_leaves=30,
)


@settings(max_examples=300, deadline=None)
@given(value=_JSON_LIKE, limit=st.integers(min_value=1, max_value=20))
def test_scan_never_raises(value: object, limit: int) -> None:
    findings = scan(value, limit=limit)
    assert len(findings) <= limit
    assert all(f.kind in KINDS and f.where in ("key", "value") for f in findings)
