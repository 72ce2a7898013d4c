from __future__ import annotations

import pytest

from ocpd.proto.errors import (
    NET_ERROR_CLASSES,
    OCP_ERROR_CODES,
    PVL_ERROR_CODES,
    AuthError,
    NetError,
    OcpError,
    PvlRejection,
    RateLimited,
    http_status_for,
)


def test_registries_are_complete() -> None:
    assert sorted(OCP_ERROR_CODES) == [
        "OCP-400",
        "OCP-401",
        "OCP-403",
        "OCP-404",
        "OCP-408",
        "OCP-413",
        "OCP-429",
        "OCP-500",
        "OCP-502",
        "OCP-503",
    ]
    assert sorted(PVL_ERROR_CODES) == [f"PVL-00{i}" for i in range(1, 7)]
    assert len(NET_ERROR_CLASSES) == 11
    assert NET_ERROR_CLASSES["E_HS_REPLAY"] == "handshake/replay-suspected"
    assert len(set(NET_ERROR_CLASSES.values())) == 11


@pytest.mark.parametrize("code", sorted(OCP_ERROR_CODES))
def test_ocp_codes_travel_with_their_status(code: str) -> None:
    assert http_status_for(code) == int(code[4:])
    assert OcpError(code=code).http_status == int(code[4:])


def test_families_carry_codes() -> None:
    assert AuthError().code == "OCP-401"
    assert isinstance(AuthError(), OcpError)
    assert PvlRejection(code="PVL-005").http_status == 413
    assert PvlRejection(code="PVL-003").http_status == 403
    err = NetError(code="E_ADV_STALE_SEQ")
    assert err.cls == "advertisement/stale-sequence"
    assert isinstance(err, OcpError)
    limited = RateLimited(retry_after=0.2)  # type: ignore[arg-type]
    assert limited.retry_after == 1
    assert limited.details["retry_after"] == 1


@pytest.mark.parametrize(
    ("cls", "code"),
    [
        (AuthError, "PVL-001"),
        (PvlRejection, "OCP-400"),
        (NetError, "OCP-400"),
        (OcpError, "E_SIG_INVALID"),
        (OcpError, "OCP-418"),
    ],
)
def test_a_family_refuses_foreign_codes(cls: type[OcpError], code: str) -> None:
    with pytest.raises(ValueError, match="cannot carry code"):
        cls(code=code)
