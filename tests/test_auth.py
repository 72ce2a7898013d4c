"""HTTP Authorization (D3), WebSocket auth_handshake (D2) and the replay window."""

from __future__ import annotations

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from conftest import NOW, Agent
from ocpd.proto.auth import (
    ReplayWindow,
    build_authorization,
    build_ws_auth_handshake,
    http_signing_string,
    parse_authorization,
    verify_authorization,
    verify_ws_auth_handshake,
)
from ocpd.proto.crypto import sha3_256
from ocpd.proto.errors import AuthError

BODY = b'{"filters":{"domains":["oncology"]},"limit":20,"offset":0}'
PATH = "/ocp/v1/registry/discover?x=1"


def _header(agent: Agent, now: float = NOW) -> str:
    return build_authorization(
        agent.key, agent_id=agent.id, method="POST", path_and_query=PATH, body=BODY, now=now
    )


def _check(
    header: object, agent: Agent, replay: ReplayWindow, now: float = NOW, **kw: object
) -> None:
    args = {
        "method": "POST",
        "path_and_query": PATH,
        "body": BODY,
        "public_keys": [agent.public_key],
    }
    args.update(kw)
    verify_authorization(header, now=now, replay=replay, **args)  # type: ignore[arg-type]


def test_signing_string_layout(alice: Agent) -> None:
    text = http_signing_string(
        method="post",
        path_and_query=PATH,
        agent_id=alice.id,
        timestamp="2026-04-03T12:00:00Z",
        body=BODY,
    )
    assert (
        text
        == (
            f"OCP-HTTP-1.0\nPOST\n{PATH}\n{alice.id}\n2026-04-03T12:00:00Z\n{sha3_256(BODY).hex()}"
        ).encode()
    )


def test_header_round_trip(alice: Agent) -> None:
    header = _header(alice)
    auth = parse_authorization(header)
    assert auth.agent_id == alice.id
    assert auth.timestamp == "2026-04-03T12:00:00.000Z"
    _check(header, alice, ReplayWindow(window=60))


def test_replay_is_refused_until_the_window_passes(alice: Agent) -> None:
    replay = ReplayWindow(window=60)
    header = _header(alice)
    _check(header, alice, replay)
    with pytest.raises(AuthError, match="already used"):
        _check(header, alice, replay, now=NOW + 59)
    # after the window the timestamp check refuses it instead
    with pytest.raises(AuthError, match="window"):
        _check(header, alice, replay, now=NOW + 61)


def test_forged_headers_do_not_fill_the_replay_window(alice: Agent, bob: Agent) -> None:
    replay = ReplayWindow(window=60)
    with pytest.raises(AuthError):
        _check(_header(bob).replace(bob.id, alice.id), alice, replay)
    assert len(replay) == 0


@pytest.mark.parametrize(
    "mutate",
    [
        lambda h: h.replace("OCP-Ed25519", "Bearer"),
        lambda h: h.replace("OCP-Ed25519 ", "OCP-Ed25519  "),
        lambda h: h.replace("did:ocp", "did:OCP"),
        lambda h: h.replace("T12:00:00.000Z", "T12:00:00+00:00"),
        lambda h: h + "=",
        lambda h: h.rsplit(":", 1)[0],
        lambda h: h[:-2],
        lambda h: None,
    ],
)
def test_malformed_headers(alice: Agent, mutate: object) -> None:
    with pytest.raises(AuthError):
        _check(mutate(_header(alice)), alice, ReplayWindow(window=60))  # type: ignore[operator]


@pytest.mark.parametrize(
    ("field", "value"),
    [("method", "PUT"), ("path_and_query", "/ocp/v1/registry/discover"), ("body", BODY + b" ")],
)
def test_request_binding(alice: Agent, field: str, value: object) -> None:
    with pytest.raises(AuthError, match="does not verify"):
        _check(_header(alice), alice, ReplayWindow(window=60), **{field: value})


def test_timestamp_window(alice: Agent) -> None:
    _check(_header(alice, now=NOW - 60), alice, ReplayWindow(window=60))
    with pytest.raises(AuthError, match="window"):
        _check(_header(alice, now=NOW - 61), alice, ReplayWindow(window=60))
    with pytest.raises(AuthError, match="window"):
        _check(_header(alice, now=NOW + 61), alice, ReplayWindow(window=60))


def test_header_agent_must_be_sender(alice: Agent, bob: Agent) -> None:
    with pytest.raises(AuthError, match="sender"):
        _check(_header(alice), alice, ReplayWindow(window=60), expected_agent_id=bob.id)


@settings(max_examples=80, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.data())
def test_every_bit_flip_of_the_header_is_rejected(alice: Agent, data: st.DataObject) -> None:
    header = _header(alice).encode()
    bit = data.draw(st.integers(0, len(header) * 8 - 1))
    flipped = bytearray(header)
    flipped[bit // 8] ^= 1 << (bit % 8)
    try:
        text = flipped.decode("utf-8")
    except UnicodeDecodeError:
        return  # not even text: a server never sees it as this header
    with pytest.raises(AuthError):
        _check(text, alice, ReplayWindow(window=60))


def test_ws_handshake(alice: Agent, bob: Agent) -> None:
    replay = ReplayWindow(window=60)
    frame = build_ws_auth_handshake(alice.key, agent_id=alice.id, now=NOW)
    assert len(frame["nonce"]) == 43
    assert (
        verify_ws_auth_handshake(frame, public_keys=[alice.public_key], now=NOW, replay=replay)
        == alice.id
    )
    with pytest.raises(AuthError, match="already used"):
        verify_ws_auth_handshake(frame, public_keys=[alice.public_key], now=NOW, replay=replay)
    with pytest.raises(AuthError, match="does not verify"):
        verify_ws_auth_handshake(
            build_ws_auth_handshake(alice.key, agent_id=alice.id, now=NOW),
            public_keys=[bob.public_key],
            now=NOW,
            replay=replay,
        )


def test_ws_signature_is_over_plain_concatenation(alice: Agent) -> None:
    frame = build_ws_auth_handshake(alice.key, agent_id=alice.id, now=NOW, nonce=bytes(32))
    from ocpd.proto.crypto import ed25519_verify
    from ocpd.proto.encoding import b64url_decode

    signed = (frame["agent_id"] + frame["timestamp"] + frame["nonce"]).encode()
    assert ed25519_verify(alice.public_key, signed, b64url_decode(frame["signature"]))


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("frame_type", "auth"),
        ("nonce", "short"),
        ("timestamp", "2026-04-03T12:00:00+00:00"),
        ("agent_id", "did:ocp:testnet:agent-XYZ"),
        ("signature", "AAAA"),
        ("agent_id", None),
    ],
)
def test_ws_handshake_malformed(alice: Agent, field: str, value: object) -> None:
    frame: dict[str, object] = dict(build_ws_auth_handshake(alice.key, agent_id=alice.id, now=NOW))
    frame[field] = value
    with pytest.raises(AuthError):
        verify_ws_auth_handshake(
            frame, public_keys=[alice.public_key], now=NOW, replay=ReplayWindow(window=60)
        )


def test_replay_window_bounds_memory() -> None:
    window = ReplayWindow(window=100, max_entries=10)
    for i in range(50):
        assert not window.seen(i, now=0)
    assert len(window) <= 10
    assert window.seen(49, now=1)


def test_replay_window_expiry_follows_the_claimed_time() -> None:
    window = ReplayWindow(window=60)
    assert not window.seen("k", now=0, at=50)  # timestamp 50 s ahead: kept until 110
    assert window.seen("k", now=100)
    assert not window.seen("k", now=111)


def test_an_already_parsed_header_is_checked_the_same(alice: Agent, bob: Agent) -> None:
    replay = ReplayWindow(window=60)
    parsed = parse_authorization(_header(alice))
    _check(parsed, alice, replay)
    with pytest.raises(AuthError, match="already used"):
        _check(_header(alice), alice, replay)
    with pytest.raises(AuthError, match="does not verify"):
        _check(parse_authorization(_header(alice, now=NOW + 1)), bob, replay)
