"""The peer session checks of the conformance suite (conformance/peer.py), against a fake node.

:class:`FakePeerNode` answers ``/ocp/v1/peer`` the way D8 asks, with
``ocpd.proto``'s responder and session: an in-process trio-websocket server
on 127.0.0.1 over TLS from a throwaway trustme CA, so the checks dial it
exactly as they dial a real node. By default every check passes against it
(NET-SIG-001 reports ``not_tested``: a signal-marker is not acknowledged on
the wire); each *fault* makes it break one rule, and the check covering that
rule must then fail, saying why. An endpoint that does not upgrade makes
every check ``not_tested``. That the checks pass against the real daemon is
shown end to end in ``tests/test_conformance_suite.py``.
"""

from __future__ import annotations

import json
import ssl
import sys
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest
import trio
import trustme
from trio_websocket import ConnectionClosed, WebSocketConnection, WebSocketRequest, serve_websocket

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from conformance.checks import NET_CLASSES, Probe  # noqa: E402
from conformance.peer import (  # noqa: E402
    CHECKS,
    HelloAnswer,
    flip_signature,
    peer_endpoint_url,
    refusal_problems,
    resigned,
)
from conformance.suite import Targets  # noqa: E402
from conformance.ws import WsClosed  # noqa: E402

from ocpd.proto.crypto import SigningKey, X25519KeyPair  # noqa: E402
from ocpd.proto.encoding import format_timestamp, parse_timestamp  # noqa: E402
from ocpd.proto.errors import NET_ERROR_CLASSES, NetError, OcpError  # noqa: E402
from ocpd.proto.ids import format_node_id, new_prefixed_uuid  # noqa: E402
from ocpd.proto.netartifacts import (  # noqa: E402
    CAPABILITY_ADVERTISEMENT,
    CORE_MESSAGING,
    NET_PROTOCOL_VERSION,
    build_ack,
    build_capability_advertisement,
)
from ocpd.proto.peer import (  # noqa: E402
    PEER_PATH,
    PEER_SUBPROTOCOL,
    NonceMemory,
    PeerSession,
    Responder,
    SignalReceived,
    parse_handshake,
)
from ocpd.proto.signing import sign_net_artifact  # noqa: E402

#: One answer or frame: short, so the checks that wait in vain are quick.
WAIT = 1.0
#: A whole check, including the waits that time out.
CHECK_DEADLINE = 20
CLOSE_POLICY = 1008


class FakePeerNode:
    """A node's peer endpoint; ``faults`` name the rules it breaks."""

    def __init__(self, *faults: str) -> None:
        self.faults = set(faults)
        self.key = SigningKey.generate()
        self.node_id = format_node_id(self.key.public_key)
        self.nonces = NonceMemory()

    async def handle(self, request: WebSocketRequest) -> None:
        # The suite's client hangs up once it has a refusal's status line and headers.
        try:
            if "absent" in self.faults or request.path != PEER_PATH:
                await request.reject(404, body=b"not found")
                return
            if PEER_SUBPROTOCOL not in request.proposed_subprotocols:
                await request.reject(403)
                return
            await self.serve(await request.accept(subprotocol=PEER_SUBPROTOCOL))
        except ConnectionClosed:
            pass

    async def serve(self, connection: WebSocketConnection) -> None:
        text = await connection.get_message()
        if "silent" in self.faults:
            await _until_closed(connection)
            return
        try:
            hello = parse_handshake(text)
            now = time.time()
            if "no-skew-check" in self.faults:
                now = parse_timestamp(hello.get("ts"), field="ts")
            nonces = NonceMemory() if "no-replay-memory" in self.faults else self.nonces
            responder = Responder(self.key, nonces, capabilities=(CORE_MESSAGING,))
            ack, established = responder.receive_hello(hello, now=now)
        except OcpError as exc:
            error = exc if isinstance(exc, NetError) else NetError(exc.message)
            if "accepts-bad-signature" in self.faults and error.code == "E_SIG_INVALID":
                public = X25519KeyPair.generate().public_key
                ack = build_ack(self.key, hello, session_public=public, now=time.time())
                await connection.send_message(json.dumps(ack))
                await _until_closed(connection)
                return
            await self.refuse(connection, error)
            return
        if "ack-bad-signature" in self.faults:
            ack = flip_signature(ack)
        if "ack-unbound" in self.faults:
            ack = resigned(self.key, ack, {"ack/of-handshake-id": new_prefixed_uuid("hs")})
        await connection.send_message(json.dumps(ack))
        session = PeerSession(established, now=time.time())
        session.send_capabilities(self.capability_advertisement(), now=time.time())
        await _flush(connection, session)
        await self.converse(connection, session)

    async def refuse(self, connection: WebSocketConnection, error: NetError) -> None:
        code = "E_BAD_HELLO" if "loose-codes" in self.faults else error.code
        notice = {"type": "error", "code": code, "detail": error.message}
        if "wrong-class" in self.faults:
            notice["class"] = "transport/rejected"
        await connection.send_message(json.dumps(notice))
        if "stays-open" in self.faults:
            await _until_closed(connection)
            return
        await connection.aclose(CLOSE_POLICY, code)

    def capability_advertisement(self) -> dict[str, Any]:
        if "no-core-messaging" not in self.faults:
            return build_capability_advertisement(self.key, now=time.time())
        payload = {
            "advertisement/id": new_prefixed_uuid("capadv"),
            "node/id": self.node_id,
            "published-at": format_timestamp(time.time()),
            "protocol/version": NET_PROTOCOL_VERSION,
            "transport/profiles": ["wss"],
            "capabilities/core": ["ocp/relay"],
            "messages/supported": ["signal-marker-envelope.v1"],
        }
        return sign_net_artifact(CAPABILITY_ADVERTISEMENT, payload, self.key)

    async def converse(self, connection: WebSocketConnection, session: PeerSession) -> None:
        while True:
            frame = await connection.get_message()
            if isinstance(frame, str):
                continue
            try:
                events = session.receive(frame, now=time.time())
            except NetError as exc:
                if "keeps-bad-sessions" in self.faults:
                    await _until_closed(connection)
                    return
                await connection.aclose(CLOSE_POLICY, exc.code)
                return
            if "refuses-signals" in self.faults and any(
                isinstance(e, SignalReceived) for e in events
            ):
                session.send_error(NetError("signals are not taken here"), now=time.time())
            if "no-pong" in self.faults:
                session.data_to_send()  # dropped: no pong, nor anything after it
                continue
            await _flush(connection, session)


async def _flush(connection: WebSocketConnection, session: PeerSession) -> None:
    for frame in session.data_to_send():
        await connection.send_message(frame)


async def _until_closed(connection: WebSocketConnection) -> None:
    while True:
        await connection.get_message()


@pytest.fixture(scope="module")
def ca() -> trustme.CA:
    return trustme.CA()


@asynccontextmanager
async def served(ca: trustme.CA, fake: FakePeerNode) -> AsyncIterator[str]:
    """``fake`` on a loopback port over TLS; yields its base URL (``https://127.0.0.1:port``)."""
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("127.0.0.1").configure_cert(context)
    async with trio.open_nursery() as nursery:
        server = await nursery.start(serve_websocket, fake.handle, "127.0.0.1", 0, context)
        yield f"https://127.0.0.1:{server.port}"
        nursery.cancel_scope.cancel()


def _probe(ca: trustme.CA, base: str, *, peer_url: str | None = None) -> Probe:
    context = ssl.create_default_context()
    ca.configure_trust(context)
    targets = Targets(node=base, node_ws=base, registry=base, custodian=base, node_peer=peer_url)
    return Probe(targets.components(), context, WAIT, peer_url=targets.node_peer)


async def _run(probe: Probe, rid: str) -> tuple[str, str]:
    with trio.fail_after(CHECK_DEADLINE):
        outcome = await CHECKS[rid](probe)
    return outcome.status, outcome.detail


# --- the checks against a conformant fake ----------------------------------------------------


async def test_peer_checks_pass_against_a_conformant_node(ca: trustme.CA) -> None:
    fake = FakePeerNode()
    async with served(ca, fake) as base:
        probe = _probe(ca, base)
        results = {rid: await _run(probe, rid) for rid in CHECKS}
    for rid, (status, detail) in results.items():
        if rid == "NET-SIG-001":
            assert status == "not_tested", detail
            assert detail.startswith("skipped: a node does not acknowledge a signal-marker"), detail
            assert "was not refused: no error notice" in detail
        else:
            assert status == "pass", (rid, detail)
    assert results["NET-HS-001"][1].startswith("ack signed by node:did:key:z6Mk")
    assert "node clock +0 s" in results["NET-HS-002"][1]
    assert results["NET-HS-003"][1] == (
        "refused and closed: bit-flipped signature E_SIG_INVALID, protocol/version 2.0 "
        "E_PROTO_VERSION, another recipient E_PROTO_INVALID"
    )
    assert "close 1008" in results["NET-SESSION-001"][1]
    assert "capabilities/core ['core/messaging']" in results["NET-CAP-001"][1]
    assert results["NET-ERR-001"][1] == (
        "not JSON, no nonce, an unsolicited ack: E_PROTO_INVALID (protocol/invalid-contract), "
        "E_PROTO_INVALID (protocol/invalid-contract), E_HS_UNKNOWN_REF (handshake/unknown-ref)"
    )


async def test_an_explicit_peer_url_is_used(ca: trustme.CA) -> None:
    """``--node-peer``: the endpoint need not be /ocp/v1/peer on the node's WebSocket URL."""
    async with served(ca, FakePeerNode()) as base:
        # The node's own URLs lead nowhere that speaks the peer protocol.
        probe = _probe(ca, "https://127.0.0.1:9", peer_url=f"{base}{PEER_PATH}")
        assert peer_endpoint_url(probe) == f"wss{base.removeprefix('https')}{PEER_PATH}"
        status, detail = await _run(probe, "NET-KA-001")
    assert status == "pass", detail


def test_the_peer_url_is_derived_from_the_websocket_listener() -> None:
    context = ssl.create_default_context()
    both = Targets(node="https://n:1", node_ws="https://n:2/base/", registry="r", custodian="c")
    probe = Probe(both.components(), context, WAIT)
    assert peer_endpoint_url(probe) == "wss://n:2/base/ocp/v1/peer"
    plain = Targets(node="http://n:1", registry="r", custodian="c")
    assert peer_endpoint_url(Probe(plain.components(), context, WAIT)) == "ws://n:1/ocp/v1/peer"
    given = Probe(both.components(), context, WAIT, peer_url="wss://elsewhere:443/p")
    assert peer_endpoint_url(given) == "wss://elsewhere:443/p"


# --- each fault fails the check covering it --------------------------------------------------

#: Requirement id -> faults of the fake, each with a piece of the failure's detail.
FAULTS: dict[str, list[tuple[str, str]]] = {
    "NET-HS-001": [
        ("ack-bad-signature", "the ack does not verify: E_SIG_INVALID"),
        ("ack-unbound", "has ack/of-handshake-id 'hs-"),
        ("silent", "a valid hello: no answer within 1 s, expected an ack"),
    ],
    "NET-HS-002": [
        ("no-replay-memory", "the same hello again: accepted with an ack"),
        ("no-replay-memory", "a new hello of the same node reusing its nonce: accepted"),
        ("no-skew-check", "a hello +40 s off the node's clock: accepted with an ack"),
        ("wrong-class", "error class 'transport/rejected', not handshake/replay-suspected"),
    ],
    "NET-HS-003": [
        ("accepts-bad-signature", "a hello with a bit-flipped signature: accepted with an ack"),
        ("stays-open", "the connection still open 1 s after the refusal (fail closed, NFR-004)"),
    ],
    "NET-SESSION-001": [
        ("keeps-bad-sessions", "a bit-flipped frame: the session still open 1 s later"),
    ],
    "NET-CAP-001": [
        ("no-core-messaging", "the node's frame fails: E_PROTO_CAP_MISSING"),
    ],
    "NET-KA-001": [
        ("no-pong", "keepalive ping 1: no pong within 1 s"),
    ],
    "NET-SIG-001": [
        (
            "refuses-signals",
            "the node refused a valid signal-marker envelope: E_PROTO_INVALID signals are not",
        ),
    ],
    "NET-ERR-001": [
        ("loose-codes", "a text frame that is not JSON: refused with 'E_BAD_HELLO', not a frozen"),
    ],
}


@pytest.mark.parametrize(
    ("rid", "fault", "expected"),
    [(rid, fault, expected) for rid, cases in FAULTS.items() for fault, expected in cases],
)
async def test_a_faulty_node_fails_the_check(
    ca: trustme.CA, rid: str, fault: str, expected: str
) -> None:
    async with served(ca, FakePeerNode(fault)) as base:
        status, detail = await _run(_probe(ca, base), rid)
    assert status == "fail", detail
    assert expected in detail, detail


def test_every_peer_check_has_a_fault() -> None:
    assert set(FAULTS) == set(CHECKS)


async def test_an_absent_endpoint_skips_every_peer_check(ca: trustme.CA) -> None:
    async with served(ca, FakePeerNode("absent")) as base:
        probe = _probe(ca, base)
        results = {rid: await _run(probe, rid) for rid in CHECKS}
    url = f"wss{base.removeprefix('https')}{PEER_PATH}"
    for status, detail in results.values():
        assert status == "not_tested"
        assert detail == (
            f"skipped: no peer endpoint at {url}: the upgrade to ocp.peer.v1 was refused "
            "with HTTP 404"
        )


async def test_an_unreachable_endpoint_fails() -> None:
    probe = _probe(trustme.CA(), "https://127.0.0.1:9")
    status, detail = await _run(probe, "NET-HS-001")
    assert status == "fail"
    assert detail.startswith("wss://127.0.0.1:9/ocp/v1/peer: cannot connect"), detail


# --- refusals, judged without a node ---------------------------------------------------------


def _refusal(notice: dict[str, Any] | None, closed: WsClosed | None) -> HelloAnswer:
    return HelloAnswer(wait=WAIT, answered_at=1.0, notice=notice, closed=closed)


def test_refusals_need_the_frozen_code_and_class() -> None:
    closed = WsClosed(CLOSE_POLICY, "E_HS_REPLAY")
    notice = {"type": "error", "code": "E_HS_REPLAY", "detail": "again"}
    assert refusal_problems("x", _refusal(notice, closed), "E_HS_REPLAY") == []
    # The class, when named, is the code's; the close reason alone will do.
    named = notice | {"error/class": "handshake/replay-suspected"}
    assert refusal_problems("x", _refusal(named, closed), "E_HS_REPLAY") == []
    assert refusal_problems("x", _refusal(None, closed), "E_HS_REPLAY") == []
    assert refusal_problems("x", _refusal(notice, closed), "E_SIG_INVALID") == [
        "x: refused with E_HS_REPLAY, expected E_SIG_INVALID"
    ]
    assert refusal_problems(
        "x", _refusal(notice | {"class": "signature/invalid"}, closed), None
    ) == ["x: error class 'signature/invalid', not handshake/replay-suspected (FR-023)"]
    assert refusal_problems(
        "x", _refusal(notice, WsClosed(CLOSE_POLICY, "E_SIG_INVALID")), None
    ) == ["x: the error notice says E_HS_REPLAY, the close E_SIG_INVALID"]
    assert refusal_problems("x", _refusal(None, WsClosed(1000, "bye")), "E_HS_REPLAY") == [
        "x: close 1000 bye, expected a refusal with E_HS_REPLAY"
    ]
    assert refusal_problems("x", _refusal(notice, None), None) == [
        "x: the connection still open 1 s after the refusal (fail closed, NFR-004)"
    ]
    silent = HelloAnswer(wait=WAIT)
    assert refusal_problems("x", silent, None) == [
        "x: no answer within 1 s, expected a refusal with a frozen E_* code"
    ]


def test_the_suite_knows_the_frozen_codes_and_classes() -> None:
    """NET FR-022/FR-023, as the suite copied them; ocpd uses the same pairs."""
    assert len(NET_CLASSES) == 11
    assert NET_CLASSES == NET_ERROR_CLASSES
