"""The published conformance vectors (conformance/vectors/) match the code and verify.

Three layers:

(a) regenerating every file in memory gives the committed bytes, so the
    vectors cannot drift from the implementation;
(b) MANIFEST.json lists exactly the vector files present, with their SHA-256;
(c) every case is re-verified from the JSON alone, with the core's verify
    functions and primitives only (never the generator): signatures, digests
    from the canonical text, ids from keys, rejection of the invalid
    identifiers, decryption, CBOR signing inputs and the session keys.

Each file and each case is its own test id (``<file stem>/<case name>``).
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import sys
from functools import cache
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

from ocpd.proto.encoding import parse_timestamp

if TYPE_CHECKING:
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
