"""Independent test vectors for the crypto suite, one test per vector id.

Wycheproof (Ed25519, X25519, AES-GCM, HKDF-SHA256) and ed25519-speccheck;
origins and licences in tests/vectors/README.md.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from ocpd.proto.crypto import (
    DecryptionFailed,
    aes256gcm_decrypt,
    aes256gcm_encrypt,
    ed25519_verify,
    hkdf_sha256,
    is_small_order_x25519,
    x25519,
)
from ocpd.proto.errors import MalformedError

VECTORS = Path(__file__).parent / "vectors"


def _wycheproof(name: str) -> list[tuple[dict[str, Any], dict[str, Any]]]:
    data = json.loads((VECTORS / "wycheproof" / name).read_text())
    return [(group, test) for group in data["testGroups"] for test in group["tests"]]


def _ids(cases: list[tuple[dict[str, Any], dict[str, Any]]]) -> list[str]:
    return [f"tc{test['tcId']}" for _, test in cases]


ED25519 = _wycheproof("ed25519_test.json")


@pytest.mark.parametrize(("group", "test"), ED25519, ids=_ids(ED25519))
def test_wycheproof_ed25519(group: dict[str, Any], test: dict[str, Any]) -> None:
    public_key = bytes.fromhex(group["publicKey"]["pk"])
    ok = ed25519_verify(public_key, bytes.fromhex(test["msg"]), bytes.fromhex(test["sig"]))
    assert ok is (test["result"] == "valid")


X25519 = _wycheproof("x25519_test.json")


@pytest.mark.parametrize(("group", "test"), X25519, ids=_ids(X25519))
def test_wycheproof_x25519(group: dict[str, Any], test: dict[str, Any]) -> None:
    private_key = bytes.fromhex(test["private"])
    public_key = bytes.fromhex(test["public"])
    shared = bytes.fromhex(test["shared"])
    # ocpd refuses what the vectors call acceptable-but-weak: small-order
    # public keys and all-zero shared secrets. Every other case must agree.
    must_refuse = is_small_order_x25519(public_key) or not any(shared)
    if must_refuse:
        assert test["result"] in {"acceptable", "invalid"}
        with pytest.raises(MalformedError):
            x25519(private_key, public_key)
    else:
        assert x25519(private_key, public_key) == shared


AES_GCM = [
    (g, t) for g, t in _wycheproof("aes_gcm_test.json") if g["keySize"] == 256 and g["ivSize"] == 96
]


@pytest.mark.parametrize(("group", "test"), AES_GCM, ids=_ids(AES_GCM))
def test_wycheproof_aes256gcm(group: dict[str, Any], test: dict[str, Any]) -> None:
    key, iv = bytes.fromhex(test["key"]), bytes.fromhex(test["iv"])
    aad, msg = bytes.fromhex(test["aad"]), bytes.fromhex(test["msg"])
    sealed = bytes.fromhex(test["ct"]) + bytes.fromhex(test["tag"])
    if test["result"] == "valid":
        assert aes256gcm_encrypt(key, iv, msg, aad) == sealed
        assert aes256gcm_decrypt(key, iv, sealed, aad) == msg
    else:
        with pytest.raises(DecryptionFailed):
            aes256gcm_decrypt(key, iv, sealed, aad)


HKDF = _wycheproof("hkdf_sha256_test.json")


@pytest.mark.parametrize(("group", "test"), HKDF, ids=_ids(HKDF))
def test_wycheproof_hkdf_sha256(group: dict[str, Any], test: dict[str, Any]) -> None:
    args = {
        "salt": bytes.fromhex(test["salt"]),
        "info": bytes.fromhex(test["info"]),
        "length": test["size"],
    }
    if test["result"] == "valid":
        assert hkdf_sha256(bytes.fromhex(test["ikm"]), **args) == bytes.fromhex(test["okm"])
    else:
        with pytest.raises(ValueError, match="larger than"):
            hkdf_sha256(bytes.fromhex(test["ikm"]), **args)


def _speccheck() -> list[tuple[int, dict[str, str], bool]]:
    cases = json.loads((VECTORS / "ed25519-speccheck" / "cases.json").read_text())
    rows = (VECTORS / "ed25519-speccheck" / "results.md").read_text().splitlines()
    libsodium = next(r for r in rows if r.startswith("|LibSodium"))
    verdicts = [cell.strip() for cell in libsodium.strip("|").split("|")[1:]]
    assert len(verdicts) == len(cases) == 12
    return [(i, case, verdicts[i] == "V") for i, case in enumerate(cases)]


SPECCHECK = _speccheck()


@pytest.mark.parametrize(
    ("index", "case", "accepted"), SPECCHECK, ids=[f"case{i}" for i, _, _ in SPECCHECK]
)
def test_ed25519_speccheck_matches_libsodium(
    index: int, case: dict[str, str], accepted: bool
) -> None:
    ok = ed25519_verify(
        bytes.fromhex(case["pub_key"]),
        bytes.fromhex(case["message"]),
        bytes.fromhex(case["signature"]),
    )
    assert ok is accepted


def test_speccheck_accepts_only_the_strict_case() -> None:
    assert [i for i, _, accepted in SPECCHECK if accepted] == [3]
