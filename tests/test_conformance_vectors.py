"""The published conformance vectors (conformance/vectors/) match the code and verify.

Three layers:

(a) regenerating every file in memory gives the committed bytes, so the
    vectors cannot drift from the implementation;
(b) MANIFEST.json lists exactly the vector files present, with their SHA-256;
(c) every case is re-verified from the JSON alone, with the core's verify
    functions and primitives only (never the generator): signatures, digests
    from the canonical text, ids from keys, rejection of the invalid
    identifiers, decryption, CBOR signing inputs, the session keys, Shamir
    shares and the key recovery seals;
(d) a copy of the vectors with one value changed fails its check.

Each file and each case is its own test id (``<file stem>/<case name>``).
"""

from __future__ import annotations

import copy
import hashlib
import importlib.util
import json
import shutil
import sys
from functools import cache
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

from ocpd.proto.encoding import parse_timestamp

if TYPE_CHECKING:
    from collections.abc import Callable
    from types import ModuleType

ROOT = Path(__file__).resolve().parents[1]
# conformance/ is not an installed package: make it importable however
# pytest was started.
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from conformance import vectorcheck  # noqa: E402

VECTORS = ROOT / "conformance" / "vectors"
GENERATOR = ROOT / "conformance" / "generate.py"
MANIFEST = "MANIFEST.json"
DOCS = {"README.md"}
EXPECTED_FILES = [
    "artifacts.json",
    "did-document.json",
    "did-key.json",
    "did-ocp.json",
    "http-authorization.json",
    "message-signing.json",
    "networking.json",
    "payload-encryption.json",
    "recovery.json",
    "shamir.json",
    "ws-auth.json",
]

Case = dict[str, Any]


def _load(name: str) -> dict[str, Any]:
    data: dict[str, Any] = json.loads((VECTORS / name).read_text(encoding="utf-8"))
    return data


FILES = {name: _load(name) for name in EXPECTED_FILES}


# --- (a) the committed files are what the code generates ------------------------------


@cache
def _generator() -> ModuleType:
    spec = importlib.util.spec_from_file_location("_ocpd_conformance_generate", GENERATOR)
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@cache
def _generated() -> dict[str, bytes]:
    files: dict[str, bytes] = _generator().build_vectors()
    return files


def test_generator_produces_exactly_the_published_files() -> None:
    assert sorted(_generated()) == sorted([*EXPECTED_FILES, MANIFEST])


@pytest.mark.parametrize("name", [*EXPECTED_FILES, MANIFEST])
def test_committed_file_matches_regeneration(name: str) -> None:
    committed = (VECTORS / name).read_bytes()
    assert committed == _generated()[name], (
        f"conformance/vectors/{name} is stale: run `python -m conformance.generate`"
    )


def test_regeneration_is_deterministic() -> None:
    assert _generator().build_vectors() == _generated()


# --- (b) the manifest --------------------------------------------------------------------


def test_manifest_lists_exactly_the_files_present() -> None:
    manifest = _load(MANIFEST)
    assert manifest["format"] == 1
    present = {p.name for p in VECTORS.iterdir() if p.is_file()}
    assert present - DOCS - {MANIFEST} == set(manifest["files"])
    assert set(manifest["files"]) == set(EXPECTED_FILES)


@pytest.mark.parametrize("name", EXPECTED_FILES)
def test_manifest_hash(name: str) -> None:
    manifest = _load(MANIFEST)
    assert hashlib.sha256((VECTORS / name).read_bytes()).hexdigest() == manifest["files"][name]


@pytest.mark.parametrize("name", EXPECTED_FILES)
def test_file_shape(name: str) -> None:
    data = FILES[name]
    assert isinstance(data["description"], str)
    assert data["description"]
    parse_timestamp(data["reference_time"])
    names = [case["name"] for case in data["cases"]]
    assert names
    assert all(isinstance(n, str) and n for n in names)
    assert len(names) == len(set(names))


# --- (c) every case verifies from the JSON alone --------------------------------------------
#
# The checks are the suite's own (conformance/vectorcheck.py), so the suite
# and the tests cannot drift apart; here each case is its own test id.


def _all_cases() -> list[Any]:
    return [
        pytest.param(name, case, id=f"{name.removesuffix('.json')}/{case['name']}")
        for name in EXPECTED_FILES
        for case in FILES[name]["cases"]
    ]


@pytest.mark.parametrize(("name", "case"), _all_cases())
def test_case_verifies(name: str, case: Case) -> None:
    vectorcheck.check_case(name, case, FILES[name])


def test_every_file_has_its_checks() -> None:
    assert sorted(vectorcheck.CASE_CHECKS) == sorted(EXPECTED_FILES)


def test_recovery_vectors_belong_to_the_shamir_requirement() -> None:
    assert "OCP-CORE-VEC-SHAMIR-001" in vectorcheck.VECTOR_CHECKS
    outcome = vectorcheck.VECTOR_CHECKS["OCP-CORE-VEC-SHAMIR-001"](VECTORS)
    assert outcome.ok, outcome.failures
    cases = len(FILES["shamir.json"]["cases"]) + len(FILES["recovery.json"]["cases"])
    assert outcome.cases == cases


def test_deposited_shares_are_those_of_the_shamir_vector() -> None:
    """recovery.json seals the shares of shamir.json's seed-3-of-5 (the README says so)."""
    dealt = next(c for c in FILES["shamir.json"]["cases"] if c["name"] == "seed-3-of-5")
    deposit = next(c for c in FILES["recovery.json"]["cases"] if c["kind"] == "deposit")
    assert deposit["seed"] == dealt["secret"]
    assert deposit["randomness"] == dealt["randomness"]
    returned = next(c for c in FILES["recovery.json"]["cases"] if c["kind"] == "responses")
    assert [r["opened_share"] for r in returned["responses"]] == dealt["shares"]


# --- (d) a changed value is caught -------------------------------------------------------------
#
# Each entry is (case name, path to one value); the value is changed in a copy
# of the vectors and the requirement's check must fail that case.

RECOVERY_CORRUPTIONS: list[tuple[str, tuple[str | int, ...]]] = [
    ("deposit-3-of-5", ("shares", 0, "shared_secret")),
    ("deposit-3-of-5", ("shares", 1, "aes_key")),
    ("deposit-3-of-5", ("shares", 1, "hkdf_salt")),
    ("deposit-3-of-5", ("shares", 2, "aad")),
    ("deposit-3-of-5", ("shares", 2, "ciphertext")),
    ("deposit-3-of-5", ("shares", 3, "record", "signature")),
    ("deposit-3-of-5", ("shares", 3, "canonical_jcs")),
    ("deposit-3-of-5", ("shares", 4, "plaintext")),
    ("deposit-3-of-5", ("shares", 4, "deposit_payload", "recovery_public_key")),
    ("deposit-3-of-5", ("random_draws", 2)),
    ("deposit-3-of-5", ("coefficients", 1)),
    ("recovery-request", ("proof_bytes",)),
    ("recovery-request", ("signature",)),
    ("recovery-request", ("ephemeral_private",)),
    ("share-responses", ("responses", 0, "aes_key")),
    ("share-responses", ("responses", 1, "aad")),
    ("share-responses", ("responses", 2, "encrypted_share")),
    ("share-responses", ("responses", 3, "shared_secret")),
    ("share-responses", ("responses", 4, "opened_share", "share_data")),
    ("rebuild-from-3-shares", ("seed",)),
    ("rebuild-from-3-shares", ("subsets", 0, "key_fingerprint")),
    ("rebuild-from-4-shares-one-tampered", ("disagreeing", 0)),
    ("rebuild-from-4-shares-one-tampered", ("subsets", 1, "matches")),
    ("rebuild-from-4-shares-one-tampered", ("subsets", 2, "combined")),
    ("invalid-rebuild-3-shares-one-tampered", ("tampered", "share_data")),
    ("invalid-deposit-opened-by-other-custodian", ("aes_key",)),
    ("invalid-deposit-opened-by-other-custodian", ("opener", "x25519_private")),
    ("invalid-deposit-other-custodian-id", ("aad",)),
    ("invalid-proof-wrong-recovery-key", ("pinned_recovery_public_key",)),
    ("invalid-proof-wrong-recovery-key", ("signature",)),
    ("invalid-response-aad-other-agent", ("sealed_aad",)),
    ("invalid-response-aad-other-agent", ("expected_aad",)),
]


def _changed(value: object) -> object:
    """Another value of the same type: a flipped bool, int + 1, a string's last character."""
    if isinstance(value, bool):
        return not value
    if isinstance(value, int):
        return value + 1
    assert isinstance(value, str)
    assert value
    return value[:-1] + ("1" if value[-1] == "0" else "0")


@pytest.mark.parametrize(
    ("case_name", "path"),
    [pytest.param(n, p, id=f"{n}/{'.'.join(map(str, p))}") for n, p in RECOVERY_CORRUPTIONS],
)
def test_changed_recovery_value_fails_the_check(
    tmp_path: Path, case_name: str, path: tuple[str | int, ...]
) -> None:
    copied = tmp_path / "vectors"
    shutil.copytree(VECTORS, copied)
    check = vectorcheck.VECTOR_CHECKS["OCP-CORE-VEC-SHAMIR-001"]
    assert check(copied).ok

    data = copy.deepcopy(FILES["recovery.json"])
    case = next(c for c in data["cases"] if c["name"] == case_name)
    *parents, last = path
    holder: Any = case
    for step in parents:
        holder = holder[step]
    holder[last] = _changed(holder[last])
    (copied / "recovery.json").write_text(json.dumps(data), encoding="utf-8")

    outcome = check(copied)
    assert not outcome.ok
    assert any(f.startswith(f"recovery/{case_name}: ") for f in outcome.failures), outcome.failures
    assert not any(f.startswith("shamir/") for f in outcome.failures)
    with pytest.raises(vectorcheck.VectorMismatch):
        vectorcheck.check_case("recovery.json", case, data)


def _by_name(data: dict[str, Any], name: str) -> Case:
    found: Case = next(c for c in data["cases"] if c["name"] == name)
    return found


def _opened_by_own_custodian(data: dict[str, Any]) -> Case:
    """The wrong-custodian case with every value of the record's own custodian."""
    case = _by_name(data, "invalid-deposit-opened-by-other-custodian")
    own = _by_name(data, "deposit-3-of-5")["shares"][0]
    case["opener"] = own["custodian"]
    case["aad_custodian_id"] = own["custodian"]["agent_id"]
    for key in ("shared_secret", "hkdf_salt", "aes_key", "aad"):
        case[key] = own[key]
    return case


def _proved_by_pinned_key(data: dict[str, Any]) -> Case:
    """The wrong-proof case signed by the pinned recovery key after all."""
    case = _by_name(data, "invalid-proof-wrong-recovery-key")
    request = _by_name(data, "recovery-request")
    case["signer_seed"] = request["recovery_seed"]
    case["signer_public_key"] = request["recovery_public_key"]
    case["signature"] = request["signature"]
    case["payload"] = request["payload"]
    return case


def _rebuilt_from_untampered(data: dict[str, Any]) -> Case:
    """The failing three-share rebuild with the shares as returned, and their true result."""
    case = _by_name(data, "invalid-rebuild-3-shares-one-tampered")
    tampered = case.pop("tampered")
    case["shares"][2]["share_data"] = tampered["original_share_data"]
    [subset] = case["subsets"]
    subset["combined"] = _by_name(data, "deposit-3-of-5")["seed"]
    subset["key_fingerprint"] = case["key_fingerprint"]
    subset["matches"] = True
    return case


@pytest.mark.parametrize(
    "make_succeed", [_opened_by_own_custodian, _proved_by_pinned_key, _rebuilt_from_untampered]
)
def test_refusal_case_that_would_succeed_fails_the_check(
    make_succeed: Callable[[dict[str, Any]], Case],
) -> None:
    data = copy.deepcopy(FILES["recovery.json"])
    case = make_succeed(data)
    with pytest.raises(vectorcheck.VectorMismatch):
        vectorcheck.check_case("recovery.json", case, data)
