"""The transport and envelope checks of the conformance suite (conformance/transport.py).

Each check runs against :class:`FakeOcp`, a small OCP node and registry in
one ASGI app served by hypercorn on a loopback port (plaintext: the TLS
checks are not under test here). By default the fake behaves as D2, D3 and
D6 ask, and every check passes against it; each *fault* makes it misbehave
in one way, and the check that covers that rule must then fail, saying
why. That the checks pass against the real daemon is shown end to end in
``tests/test_conformance_suite.py`` (``conformance.local``'s harness).
"""

from __future__ import annotations

import json
import re
import socket
import sys
import time
import uuid
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx
import pytest
import trio

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from conformance import transport  # noqa: E402
from conformance.checks import Answer, Probe, RouteListener  # noqa: E402
from conformance.client import http_head_only, suite_ssl_context  # noqa: E402
from conformance.suite import Targets  # noqa: E402
from conformance.transport import (  # noqa: E402
    CHECKS,
    error_problems,
    flip_signature,
    is_loopback,
    receipts_problems,
    refusing_endpoints,
)
from conformance.ws import WsClosed, WsRefused, receive_within, ws_connect  # noqa: E402

from fake_node import serve_plain  # noqa: E402
from ocpd.proto import schema  # noqa: E402
from ocpd.proto.auth import (  # noqa: E402
    ReplayWindow,
    build_authorization,
    parse_authorization,
    verify_authorization,
    verify_ws_auth_handshake,
)
from ocpd.proto.crypto import SigningKey  # noqa: E402
from ocpd.proto.diddoc import build_did_document, parse_did_document  # noqa: E402
from ocpd.proto.encoding import b64url_decode  # noqa: E402
from ocpd.proto.envelope import (  # noqa: E402
    build_error_message,
    build_message,
    check_freshness,
    message_digest,
    sign_message,
    verify_message_signature,
)
from ocpd.proto.errors import (  # noqa: E402
    AuthError,
    InternalError,
    MalformedError,
    NotFoundError,
    OcpError,
    PayloadTooLarge,
    RateLimited,
    RequestTimeout,
    Unavailable,
    UpstreamUnreachable,
)
from ocpd.proto.ids import broadcast_did, derive_agent_id  # noqa: E402
from ocpd.proto.ratelimit import RateLimiter  # noqa: E402
from ocpd.proto.strictjson import loads_strict  # noqa: E402

NETWORK = "testnet"
MAX_BODY = transport.MAX_MESSAGE_SIZE
#: The fake's and the checks' handshake limit in these tests, instead of 5 s.
AUTH_TIMEOUT = 0.4
#: One answer, receipt or delivery: short, so the checks that wait in vain are quick.
WAIT = 1.0
#: How long the routing check waits for the fake's OCP-502.
ROUTE_WAIT = 1.5

Send = Any
Receive = Any


class FakeOcp:
    """A registry and a node in one ASGI app; ``faults`` name the rules it breaks."""

    def __init__(self, *faults: str) -> None:
        self.faults = set(faults)
        self.key = SigningKey.generate()
        self.service_agent = derive_agent_id(self.key.public_key, NETWORK)
        self.documents: dict[str, dict[str, Any]] = {
            self.service_agent: build_did_document(self.key.public_key, network=NETWORK)
        }
        self.records: dict[str, dict[str, Any]] = {}
        self.replay = ReplayWindow(window=60.0)
        self.digests: dict[str, bytes] = {}
        self.sessions: dict[str, trio.MemorySendChannel[str]] = {}
        self.queued: dict[str, list[str]] = {}
        self.broadcasts = RateLimiter(limit=5, window=60)
        self.auth_timeout = AUTH_TIMEOUT
        #: Runs for the app's lifetime (ASGI lifespan): messages handed on to other nodes.
        self.nursery: trio.Nursery | None = None

    # --- the registry: what the checks use of it -------------------------------------------

    def registry(self, method: str, path: str, body: bytes) -> tuple[int, Any]:
        api = "/ocp/v1/registry"
        if method == "GET" and path == f"{api}/info":
            return 200, {"mode": "centralized", "network": NETWORK}
        if method == "POST" and path == f"{api}/agents":
            registration = json.loads(body)
            agent_id = registration["record"]["agent_id"]
            self.documents[agent_id] = registration["did_document"]
            self.records[agent_id] = registration["record"]
            return 201, {"agent_id": agent_id, "status": "active", "trust_level": 1}
        prefix, _, rest = path.partition(f"{api}/agents/")
        if method == "GET" and not prefix and rest.endswith("/did.json"):
            document = self.documents.get(rest.removesuffix("/did.json"))
            if document is not None:
                return 200, document
        return 404, {"error_code": "OCP-404", "message": "not found"}

    def keys(self, agent_id: object) -> list[bytes]:
        document = self.documents.get(agent_id) if isinstance(agent_id, str) else None
        if document is None:
            raise AuthError("unknown agent")
        return parse_did_document(document).verification_keys()

    # --- messages --------------------------------------------------------------------------

    def accept(
        self, raw: bytes, seen: dict[str, Any], *, session: str | None, authorization: str | None
    ) -> bool:
        """Check, dedup and route one message; ``True`` for a duplicate. Raises OcpError."""
        now = time.time()
        if "lenient-json" in self.faults:
            message = json.loads(raw)
        else:
            message = loads_strict(raw, max_size=MAX_BODY)
        if "no-schema" not in self.faults:
            schema.validate_envelope(message)
        seen["id"] = message.get("message_id")
        sender = message["sender"]["agent_id"]
        seen["sender"] = sender
        if "no-freshness" not in self.faults:
            check_freshness(message, now=now)
        payload = json.dumps(message["payload"]).encode()
        if len(payload) > transport.MAX_PAYLOAD_SIZE and "no-payload-limit" not in self.faults:
            raise PayloadTooLarge("payload too large")
        if session is not None and sender != session:
            raise AuthError("not the session's agent")
        if session is None and "no-auth" not in self.faults:
            claimed = parse_authorization(authorization).agent_id
            if claimed != sender and "no-sender-binding" not in self.faults:
                raise AuthError("Authorization agent is not the sender")
            replay = self.replay
            if "no-replay-check" in self.faults:
                replay = ReplayWindow(window=60)
            verify_authorization(
                authorization,
                method="POST",
                path_and_query="/ocp/v1/messages",
                body=raw,
                public_keys=self.keys(claimed),
                now=now,
                replay=replay,
            )
        keys = self.keys(sender)
        if "no-signature" not in self.faults:
            verify_message_signature(message, keys)
        if "unavailable" in self.faults:
            raise Unavailable("the fake is unavailable")
        receiver = message["receiver"]["agent_id"]
        if receiver == broadcast_did(NETWORK):
            retry = self.broadcasts.take(sender, now=now)
            if retry is not None and "no-rate-limit" not in self.faults:
                raise RateLimited("broadcasts rate limit reached", retry_after=retry)
        elif receiver not in self.documents:
            raise NotFoundError("the receiver is not registered")
        digest = message_digest(message)
        previous = self.digests.get(message["message_id"])
        if previous is not None and previous != digest and "no-conflict" not in self.faults:
            raise MalformedError("message_id was already used for a different message")
        self.digests[message["message_id"]] = digest
        remote = self.remote_endpoints(receiver)
        if previous is None and remote:
            assert self.nursery is not None
            self.nursery.start_soon(self.forward, message, raw, remote)
        elif previous is None or "redeliver" in self.faults:
            text = raw.decode()
            if "altered-delivery" in self.faults:
                text = json.dumps(json.loads(text), indent=1)
            self.route(receiver, text)
        return previous is not None

    def remote_endpoints(self, receiver: str) -> list[str]:
        """The receiver's ``ocp-http`` URLs in priority order (or as listed, a fault)."""
        if "no-forwarding" in self.faults:
            return []
        endpoints = [
            e
            for e in self.records.get(receiver, {}).get("endpoints", [])
            if e["transport"] == "ocp-http"
        ]
        if "route-list-order" not in self.faults:
            endpoints.sort(key=lambda e: e["priority"])
        return [e["url"] for e in endpoints]

    async def forward(self, message: dict[str, Any], raw: bytes, urls: list[str]) -> None:
        """POST the message to each endpoint until one takes it; OCP-502 when all refuse."""
        async with httpx.AsyncClient(timeout=WAIT) as client:
            for url in urls:
                authorization = build_authorization(
                    self.key,
                    agent_id=self.service_agent,
                    method="POST",
                    path_and_query=urlsplit(url).path,
                    body=raw,
                    now=time.time(),
                )
                headers = {"Authorization": authorization, "Content-Type": "application/json"}
                try:
                    answer = await client.post(url, content=raw, headers=headers)
                except httpx.HTTPError:
                    continue
                if answer.is_success:
                    return
        if "no-route-error" in self.faults:
            return
        sender = message["sender"]["agent_id"]
        notice = build_error_message(
            UpstreamUnreachable("the message could not be delivered"),
            sender=self.service_agent,
            receiver=sender,
            now=time.time(),
            reference_message_id=message["message_id"],
        )
        self.route(sender, json.dumps(sign_message(notice, self.key)))

    def route(self, receiver: str, text: str) -> None:
        live = self.sessions.get(receiver)
        if live is not None:
            live.send_nowait(text)
        elif "drop-offline" not in self.faults:
            self.queued.setdefault(receiver, []).append(text)

    def error(self, exc: OcpError, seen: dict[str, Any]) -> dict[str, Any]:
        if "plain-errors" in self.faults:
            return {"error_code": exc.code, "message": exc.message}
        reference = seen.get("id")
        message = build_error_message(
            exc,
            sender=self.service_agent,
            receiver=seen.get("sender") or broadcast_did(NETWORK),
            now=time.time(),
            reference_message_id=reference if isinstance(reference, str) else None,
        )
        signer = SigningKey.generate() if "unsigned-errors" in self.faults else self.key
        return sign_message(message, signer)

    # --- ASGI -------------------------------------------------------------------------------

    async def __call__(self, scope: dict[str, Any], receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            async with trio.open_nursery() as self.nursery:
                while True:
                    event = await receive()
                    if event["type"] == "lifespan.startup":
                        await send({"type": "lifespan.startup.complete"})
                    elif event["type"] == "lifespan.shutdown":
                        self.nursery.cancel_scope.cancel()
                        await send({"type": "lifespan.shutdown.complete"})
                        return
        elif scope["type"] == "websocket":
            await self.websocket(scope, receive, send)
        elif scope["path"] == "/ocp/v1/messages":
            await self.messages(scope, receive, send)
        else:
            body = await _body(receive)
            status, answer = self.registry(scope["method"], scope["path"], body)
            await _respond(send, status, json.dumps(answer).encode())

    async def messages(self, scope: dict[str, Any], receive: Receive, send: Send) -> None:
        headers = {k.decode().lower(): v.decode() for k, v in scope["headers"]}
        declared = int(headers.get("content-length", "0"))
        seen: dict[str, Any] = {}
        try:
            if declared > MAX_BODY and "buffer-body" not in self.faults:
                raise PayloadTooLarge("body too large")
            raw = await _body(receive)
            if len(raw) > MAX_BODY:
                raise PayloadTooLarge("body too large")
            version = headers.get("x-ocf-version", headers.get("x-ocp-version"))
            if version is None and "version-required" in self.faults:
                raise MalformedError("X-OCF-Version is required")
            if version not in (None, "1.0") and "any-version" not in self.faults:
                raise MalformedError("unsupported version")
            duplicate = self.accept(
                raw, seen, session=None, authorization=headers.get("authorization")
            )
        except OcpError as exc:
            extra = []
            if isinstance(exc, RateLimited) and "no-retry-after" not in self.faults:
                extra.append((b"retry-after", str(exc.retry_after).encode()))
            if isinstance(exc, PayloadTooLarge):
                extra.append((b"connection", b"close"))  # the body was not read
            body = json.dumps(self.error(exc, seen)).encode()
            await _respond(send, exc.http_status, body, extra)
            return
        except _Gone:
            return
        except (KeyError, TypeError, ValueError):
            await _respond(send, 500, json.dumps(self.error(InternalError(), seen)).encode())
            return
        answer = {"status": "accepted", "message_id": seen["id"], "duplicate": duplicate}
        await _respond(send, 202, json.dumps(answer).encode())

    async def websocket(self, scope: dict[str, Any], receive: Receive, send: Send) -> None:
        await receive()  # websocket.connect
        offered = scope.get("subprotocols", [])
        if "ocp.v1" not in offered and "any-subprotocol" not in self.faults:
            await send({"type": "websocket.close", "code": 1008})
            return
        await send({"type": "websocket.accept", "subprotocol": offered[0] if offered else None})
        agent = await self.authenticate(receive, send)
        if agent is None:
            return
        outbox, inbox = trio.open_memory_channel[str](1000)
        self.sessions[agent] = outbox
        queued = self.queued.pop(agent, [])
        for text in reversed(queued) if "lifo" in self.faults else queued:
            outbox.send_nowait(text)
        try:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(_pump, inbox, send)
                while True:
                    event = await receive()
                    if event["type"] == "websocket.disconnect":
                        break
                    seen: dict[str, Any] = {}
                    receipt: dict[str, Any]
                    try:
                        raw = (event.get("text") or "").encode()
                        duplicate = self.accept(raw, seen, session=agent, authorization=None)
                        receipt = {"message_id": seen["id"], "status": "accepted"}
                        receipt |= {"duplicate": True} if duplicate else {}
                    except OcpError as exc:
                        receipt = {"message_id": seen.get("id"), "status": "rejected"}
                        receipt["error"] = self.error(exc, seen)
                    if "no-receipts" not in self.faults:
                        outbox.send_nowait(json.dumps({"frame_type": "receipt"} | receipt))
                nursery.cancel_scope.cancel()
        finally:
            if self.sessions.get(agent) is outbox:
                del self.sessions[agent]

    async def authenticate(self, receive: Receive, send: Send) -> str | None:
        error: OcpError = RequestTimeout("no auth_handshake in time")
        timeout = float("inf") if "no-auth-timeout" in self.faults else self.auth_timeout
        with trio.move_on_after(timeout):
            event = await receive()
            if event["type"] == "websocket.disconnect":
                return None
            try:
                frame = json.loads(event.get("text") or "null")
                replay = self.replay
                if "no-ws-replay-check" in self.faults:
                    replay = ReplayWindow(window=60)
                agent = verify_ws_auth_handshake(
                    frame,
                    public_keys=self.keys(frame.get("agent_id")),
                    now=time.time(),
                    replay=replay,
                )
            except OcpError as exc:
                error = exc
            else:
                session = "session-1" if "bad-session-id" in self.faults else f"sess-{uuid.uuid4()}"
                result = {"status": "accepted", "session_id": session, "ttl": 86_400}
                await _send_frame(send, {"frame_type": "auth_result"} | result)
                return agent
        result = {"status": "rejected", "error_code": error.code, "message": error.message}
        await _send_frame(send, {"frame_type": "auth_result"} | result)
        fault = "timeout-close-1000" if isinstance(error, RequestTimeout) else "reject-close-1000"
        code = 1000 if fault in self.faults else 1008
        await send({"type": "websocket.close", "code": code})
        return None


class _Gone(Exception):
    """The client went away before its body arrived."""


async def _body(receive: Receive) -> bytes:
    chunks = []
    while True:
        event = await receive()
        if event["type"] == "http.disconnect":
            raise _Gone
        chunks.append(event.get("body", b""))
        if not event.get("more_body"):
            return b"".join(chunks)


async def _respond(
    send: Send, status: int, body: bytes, extra: list[tuple[bytes, bytes]] | None = None
) -> None:
    headers = [(b"content-type", b"application/json"), *(extra or [])]
    headers.append((b"content-length", str(len(body)).encode()))
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


async def _send_frame(send: Send, frame: dict[str, Any]) -> None:
    await send({"type": "websocket.send", "text": json.dumps(frame)})


async def _pump(inbox: trio.MemoryReceiveChannel[str], send: Send) -> None:
    async for text in inbox:
        await send({"type": "websocket.send", "text": text})


def _probe(url: str, route_listener: RouteListener = "auto") -> Probe:
    targets = Targets(node=url, node_ws=url, registry=url, custodian=url)
    return Probe(targets.components(), suite_ssl_context(insecure=True), WAIT, route_listener)


@pytest.fixture
def short_auth_timeout(monkeypatch: pytest.MonkeyPatch) -> None:
    """The checks expect the node's handshake limit at AUTH_TIMEOUT instead of 5 s,
    and the fake's OCP-502 within ROUTE_WAIT instead of 10 s."""
    monkeypatch.setattr(transport, "AUTH_TIMEOUT", AUTH_TIMEOUT)
    monkeypatch.setattr(transport, "AUTH_TIMEOUT_GRACE", 0.6)
    monkeypatch.setattr(transport, "AUTH_TIMEOUT_EARLY", 0.1)
    monkeypatch.setattr(transport, "ROUTE_WAIT", ROUTE_WAIT)


async def _run(rid: str, *faults: str, route_listener: RouteListener = "auto") -> tuple[str, str]:
    async with serve_plain(FakeOcp(*faults)) as url:
        with trio.fail_after(30):
            outcome = await CHECKS[rid](_probe(url, route_listener))
    return outcome.status, outcome.detail


# --- every check passes against the well-behaved fake -------------------------------------------


@pytest.mark.usefixtures("short_auth_timeout")
@pytest.mark.parametrize("rid", sorted(CHECKS))
async def test_check_passes_against_a_conformant_fake(rid: str) -> None:
    status, detail = await _run(rid)
    assert status == "pass", detail


# --- and fails against a fake that breaks its rule -----------------------------------------------

FAULTS = [
    ("OCP-CORE-WS-001", "any-subprotocol", "an upgrade without subprotocol was accepted"),
    ("OCP-CORE-WS-001", "bad-session-id", "session_id 'session-1' is not sess-<uuid>"),
    ("OCP-CORE-WS-002", "no-auth-timeout", "s after connecting without a handshake"),
    ("OCP-CORE-WS-002", "timeout-close-1000", "closed with 1000, expected 1008"),
    ("OCP-CORE-WS-003", "no-ws-replay-check", "the same handshake again (replay): got {"),
    ("OCP-CORE-WS-003", "reject-close-1000", "a handshake 5 minutes old: closed with 1000"),
    ("OCP-CORE-WS-004", "no-receipts", "message 1 of 5: no receipt within 1 s"),
    ("OCP-CORE-WS-004", "altered-delivery", "arrived altered, not as its sender sent it"),
    ("OCP-CORE-HTTP-001", "unavailable", "a valid message: HTTP 503 OCP-503, expected 202"),
    ("OCP-CORE-HTTP-002", "no-auth", "no Authorization: HTTP 202, expected OCP-401"),
    (
        "OCP-CORE-HTTP-002",
        "no-replay-check",
        "the same request with the same Authorization: HTTP 202, expected OCP-401",
    ),
    ("OCP-CORE-HTTP-003", "no-sender-binding", "Authorization: HTTP 202, expected OCP-401"),
    ("OCP-CORE-HTTP-004", "any-version", "X-OCF-Version: 2.0: HTTP 202, expected OCP-400"),
    ("OCP-CORE-HTTP-004", "version-required", "no version header: HTTP 400 OCP-400"),
    ("OCP-CORE-DELIV-001", "redeliver", "the repeated message was delivered a second time"),
    ("OCP-CORE-DELIV-001", "no-conflict", "other content: HTTP 202, expected OCP-400"),
    ("OCP-CORE-DELIV-003", "lifo", "stored message 1: got 'msg-"),
    ("OCP-CORE-DELIV-003", "drop-offline", "stored message 1: nothing delivered within 1 s"),
    ("OCP-CORE-ROUTE-001", "no-route-error", "within 1.5 s of its receipt (OCP-502 expected"),
    ("OCP-CORE-ROUTE-001", "no-forwarding", "was tried (a node that does not run on the suite"),
    (
        "OCP-CORE-ROUTE-001",
        "route-list-order",
        "the priority 2 endpoint was tried before the priority 1 endpoint"
        " (the endpoints got priority 2, priority 1 by did:ocp:testnet:agent-",
    ),
    ("OCP-CORE-MSG-001", "no-schema", "message_type 'teleport': HTTP 202, expected OCP-400"),
    ("OCP-CORE-MSG-002", "no-freshness", "a message 2 h old with ttl 3600: HTTP 202"),
    ("OCP-CORE-MSG-002", "no-freshness", "a message 5 minutes ahead: HTTP 202"),
    ("OCP-CORE-MSG-003", "no-signature", "a bit-flipped signature: HTTP 202, expected OCP-401"),
    ("OCP-CORE-MSG-005", "unsigned-errors", "sender.signature does not verify against"),
    ("OCP-CORE-MSG-005", "plain-errors", "a bit-flipped signature: HTTP 401, expected OCP-401"),
    ("OCP-CORE-MSG-006", "lenient-json", "a duplicate key: HTTP 401 OCP-401, expected OCP-400"),
    ("OCP-CORE-SIZE-001", "buffer-body", "no answer within 1 s while its body was withheld"),
    ("OCP-CORE-SIZE-001", "no-payload-limit", "bytes: HTTP 202, expected OCP-413"),
    ("OCP-CORE-RATE-001", "no-rate-limit", "7 broadcasts by one agent in"),
    ("OCP-CORE-RATE-001", "no-retry-after", "Retry-After '' is not whole seconds from 1 to 60"),
]


@pytest.mark.usefixtures("short_auth_timeout")
@pytest.mark.parametrize(("rid", "fault", "expected"), FAULTS)
async def test_check_fails_against_a_misbehaving_fake(rid: str, fault: str, expected: str) -> None:
    status, detail = await _run(rid, fault)
    assert status == "fail"
    assert expected in detail, detail


def test_every_transport_check_has_a_failing_case() -> None:
    assert {rid for rid, _, _ in FAULTS} == set(CHECKS)


async def test_checks_report_an_unreachable_node() -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        url = f"http://127.0.0.1:{sock.getsockname()[1]}"
    for rid, check in CHECKS.items():
        with trio.fail_after(10):
            outcome = await check(_probe(url))
        assert outcome.status == "fail", rid
        assert outcome.detail.startswith("no answer"), (rid, outcome.detail)


async def test_ws_checks_report_a_node_without_websocket() -> None:
    """A registry and an HTTP node, but nothing WebSocket at /ocp/v1/ws: fail, not crash."""
    fake = FakeOcp()

    async def no_websocket(scope: dict[str, Any], receive: Receive, send: Send) -> None:
        if scope["type"] == "websocket":
            await receive()
            await send({"type": "websocket.close", "code": 1000})
            return
        await fake(scope, receive, send)

    async with serve_plain(no_websocket) as url:
        outcome = await CHECKS["OCP-CORE-WS-004"](_probe(url))
    assert outcome.status == "fail"
    assert outcome.detail == "WebSocket upgrade with ['ocp.v1']: upgrade refused with HTTP 403"


async def test_routing_check_details_against_the_fake() -> None:
    """Auto mode on a loopback node: the suite's own endpoints, tried in priority order."""
    fake = FakeOcp()
    async with serve_plain(fake) as url:
        outcome = await CHECKS["OCP-CORE-ROUTE-001"](_probe(url))
    assert outcome.status == "pass", outcome.detail
    assert (
        f"the endpoints got priority 1, priority 2 by {fake.service_agent}; OCP-502 about it"
        in outcome.detail
    )
    assert outcome.detail.endswith(f"signed by {fake.service_agent} (key from the registry)")


@pytest.mark.usefixtures("short_auth_timeout")
async def test_routing_check_with_the_registry_as_refusing_endpoints() -> None:
    """--route-listener off: the registry's URLs refuse; only the OCP-502 is observed."""
    status, detail = await _run("OCP-CORE-ROUTE-001", route_listener="off")
    assert status == "pass", detail
    assert "the registry's URLs as refusing endpoints (the order is not observed)" in detail
    status, detail = await _run("OCP-CORE-ROUTE-001", "no-route-error", route_listener="off")
    assert status == "fail"
    assert "within 1.5 s of its receipt (OCP-502 expected" in detail
    assert "retries for over 31 s first; --route-listener on avoids that" in detail
    # The listener variant would have caught this fault; this one cannot see the order.
    status, detail = await _run("OCP-CORE-ROUTE-001", "route-list-order", route_listener="off")
    assert status == "pass", detail


async def test_routing_check_needs_a_registry_that_refuses() -> None:
    """A registry answering 200 everywhere cannot stand in for refusing endpoints."""
    fake = FakeOcp()

    async def lenient(scope: dict[str, Any], receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and "conformance-route-" in scope["path"]:
            await _body(receive)
            await _respond(send, 200, b"{}")
            return
        await fake(scope, receive, send)

    async with serve_plain(lenient) as url:
        outcome = await CHECKS["OCP-CORE-ROUTE-001"](_probe(url, "off"))
    assert outcome.status == "fail"
    assert re.fullmatch(
        r"POST /ocp/v1/registry/conformance-route-[0-9a-f]{12}/first on the registry: HTTP 200,"
        r" not a refusal; .*",
        outcome.detail,
    ), outcome.detail


async def test_refusing_endpoints_record_and_refuse() -> None:
    async with refusing_endpoints() as endpoints, httpx.AsyncClient() as client:
        assert endpoints.base.startswith("http://127.0.0.1:")
        for name in ("first", "second"):
            answer = await client.post(
                endpoints.url(name) + "?q=1", content=b'{"a":1}', headers={"X-Probe": name}
            )
            assert answer.status_code == 404
            assert answer.json()["error_code"] == "OCP-404"
    assert [(r.method, r.target, r.body) for r in endpoints.requests] == [
        ("POST", f"{endpoints.prefix}/first?q=1", b'{"a":1}'),
        ("POST", f"{endpoints.prefix}/second?q=1", b'{"a":1}'),
    ]
    assert [r.headers["x-probe"] for r in endpoints.requests] == ["first", "second"]


def test_is_loopback() -> None:
    for host in ("127.0.0.1", "127.8.9.1", "::1", "localhost", "LocalHost"):
        assert is_loopback(host), host
    for host in ("10.0.0.1", "node.example", "::", "0.0.0.0", "", None):
        assert not is_loopback(host), host


# --- the pieces ---------------------------------------------------------------------------------


def _answer(status: int, body: object) -> Answer:
    return Answer(status, body, {})


def _error_body(code: str, key: SigningKey | None = None) -> dict[str, Any]:
    key = key or SigningKey.generate()
    message = build_error_message(
        MalformedError("no") if code == "OCP-400" else AuthError("no"),
        sender=derive_agent_id(key.public_key, NETWORK),
        receiver=broadcast_did(NETWORK),
        now=time.time(),
    )
    return sign_message(message, key)


def test_error_problems() -> None:
    assert error_problems(_answer(401, _error_body("OCP-401")), 401) == []
    # D6: the HTTP status is the number of the code.
    assert error_problems(_answer(400, _error_body("OCP-401")), 401) == [
        "HTTP 400 OCP-401, expected OCP-401"
    ]
    assert error_problems(_answer(401, {"error_code": "OCP-401"}), 401) == [
        "HTTP 401, expected OCP-401"
    ]
    not_error = _error_body("OCP-401") | {"message_type": "ack"}
    assert error_problems(_answer(401, not_error), 401) == ["message_type is 'ack', not error"]
    unsigned = _error_body("OCP-401")
    unsigned["sender"] = {"agent_id": unsigned["sender"]["agent_id"]}
    assert error_problems(_answer(401, unsigned), 401) == [
        "the error message carries no sender.signature"
    ]


def test_receipts_are_paired_by_message_id() -> None:
    error = _error_body("OCP-401")
    expected = [
        ("good", "msg-1", "accepted", None),
        ("bad", "msg-2", "rejected", 401),
        ("good again", "msg-1", "accepted", None),
    ]
    accepted = {"frame_type": "receipt", "message_id": "msg-1", "status": "accepted"}
    rejected = {"frame_type": "receipt", "message_id": "msg-2", "status": "rejected"}
    # Any order.
    receipts = [rejected | {"error": error}, accepted, accepted | {"duplicate": True}]
    assert receipts_problems(expected, receipts) == ([], [])
    # A rejection that names no message stands in for the next one unanswered, noted.
    anonymous = rejected | {"message_id": None, "error": error}
    assert receipts_problems(expected, [accepted, anonymous, accepted]) == (
        [],
        ["the rejection of bad names no message_id"],
    )
    problems, _ = receipts_problems(expected, [accepted, accepted, accepted])
    assert problems == [
        "bad: no receipt names msg-2",
        f"a receipt for nothing sent: {json.dumps(accepted, separators=(',', ':'))}",
    ]
    problems, _ = receipts_problems(expected, [accepted, rejected | {"error": {}}, accepted])
    assert problems[0].startswith("bad: payload.error_code is None, expected OCP-401")
    wrong = rejected | {"message_id": "msg-1", "error": error}
    problems, _ = receipts_problems(expected, [accepted, wrong, rejected | {"error": error}])
    assert problems == ["good again: receipt status 'rejected', expected accepted"]


def test_flip_signature_changes_one_bit() -> None:
    key = SigningKey.generate()
    sender = derive_agent_id(key.public_key, NETWORK)
    message = sign_message(
        build_message(
            sender=sender,
            receiver=sender,
            message_type="capability_query",
            payload={},
            now=time.time(),
        ),
        key,
    )
    flipped = flip_signature(message)
    before = b64url_decode(message["sender"]["signature"])
    after = b64url_decode(flipped["sender"]["signature"])
    assert sum(bin(a ^ b).count("1") for a, b in zip(before, after, strict=True)) == 1
    assert flipped["payload"] == message["payload"]
    verify_message_signature(message, [key.public_key])
    with pytest.raises(AuthError):
        verify_message_signature(flipped, [key.public_key])


async def test_ws_client_reports_refusal_subprotocol_and_close_code() -> None:
    async with serve_plain(FakeOcp()) as url:
        context = suite_ssl_context(insecure=True)
        with pytest.raises(WsRefused) as refused:
            async with ws_connect(f"{url}/ocp/v1/ws", context=context, subprotocols=[]):
                pass
        assert refused.value.status == 403
        async with ws_connect(f"{url}/ocp/v1/ws", context=context, subprotocols=["ocp.v1"]) as ws:
            assert ws.subprotocol == "ocp.v1"
            await ws.send("{}")
            result = json.loads(await receive_within(ws, 5) or "null")
            assert result["status"] == "rejected"
            with pytest.raises(WsClosed) as closed:
                await receive_within(ws, 5)
            assert closed.value.code == 1008


async def test_head_only_request_gets_the_early_answer() -> None:
    async with serve_plain(FakeOcp()) as url:
        headers = {"Content-Length": str(MAX_BODY + 1), "Content-Type": "application/json"}
        with trio.fail_after(5):
            response = await http_head_only(
                f"{url}/ocp/v1/messages",
                context=suite_ssl_context(insecure=True),
                method="POST",
                headers=headers,
            )
    assert response.status == 413
    assert json.loads(response.body)["payload"]["error_code"] == "OCP-413"
    assert response.header("content-type") == "application/json"
