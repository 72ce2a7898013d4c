"""Building blocks for the node's service tests: a node in-process, ASGI drivers."""

from __future__ import annotations

import json
import os
import uuid
from collections.abc import AsyncIterator, Iterable, Sequence
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any, Final

import attrs
import trio

from conftest import NETWORK, NOW, Agent
from ocpd.config import RateLimitingSection, WebSocketSection
from ocpd.node.collab import Collaboration, Deadlines
from ocpd.node.directory import AgentInfo, BondInfo
from ocpd.node.forward import Forwarder, Poster
from ocpd.node.http import MessagesEndpoint
from ocpd.node.intake import Intake, MessageLimits
from ocpd.node.router import Router, Sweeper
from ocpd.node.store import MessageStore
from ocpd.node.ws import WebSocketEndpoint
from ocpd.proto.auth import (
    ReplayWindow,
    build_authorization,
    build_ws_auth_handshake,
    message_post_headers,
)
from ocpd.proto.crypto import SigningKey
from ocpd.proto.envelope import build_message, sign_message
from ocpd.proto.ids import derive_agent_id
from ocpd.proto.pvl import PvlPolicy
from ocpd.proto.taxonomy import Taxonomy
from ocpd.server import ACCEPTED_EXTENSION
from ocpd.storage import Database, open_database
from ocpd.verifier import Answer, Verifier, answer_frame
from ocpd.web import Metrics

NODE_KEY = SigningKey(bytes([99]) * 32)
SERVICE_AGENT = derive_agent_id(NODE_KEY.public_key, NETWORK)
#: The public URLs of the node :func:`running_node` builds.
OWN_URLS = ("https://node.test:8420/ocp/v1/messages", "wss://node.test:8421/ocp/v1/ws")


class TrioWallClock:
    """Wall-clock epoch that moves with trio's clock (autojump-friendly)."""

    def __init__(self, start: float = NOW) -> None:
        self.start = start

    def now(self) -> float:
        return self.start + trio.current_time()


class FakeDirectory:
    def __init__(self, taxonomy: Taxonomy | None = None) -> None:
        self.taxonomy = taxonomy or Taxonomy.load_default()
        self.agents: dict[str, AgentInfo] = {}
        self.lookups = 0
        self.sessions: list[tuple[str, float, float]] = []
        self.registrations: list[tuple[bytes, str, str]] = []
        self.bonds: dict[frozenset[str], BondInfo] = {}

    def add(
        self,
        agent: Agent,
        *,
        level: int = 1,
        active: bool = True,
        domains: Iterable[str] = (),
        endpoints: Iterable[dict[str, Any]] = (),
        relay: bool = False,
        capabilities: Iterable[str] = (),
    ) -> AgentInfo:
        info = AgentInfo(
            agent_id=agent.id,
            keys=(agent.public_key,),
            level=level,
            active=active,
            domains=tuple(self.taxonomy.normalise(d) for d in domains),
            endpoints=tuple(sorted(endpoints, key=lambda e: e["priority"])),
            relay=relay,
            capabilities=frozenset(capabilities),
        )
        self.agents[agent.id] = info
        return info

    def bond(self, first: Agent, second: Agent, permissions: dict[str, Any]) -> BondInfo:
        """A bond in force between the two agents (the newest wins)."""
        bond = BondInfo(
            bond_id=f"bond-{uuid.uuid4()}", agents=(first.id, second.id), permissions=permissions
        )
        self.bonds[frozenset((first.id, second.id))] = bond
        return bond

    async def bond_between(self, first: str, second: str) -> BondInfo | None:
        return self.bonds.get(frozenset((first, second)))

    async def lookup(self, agent_id: str) -> AgentInfo | None:
        self.lookups += 1
        return self.agents.get(agent_id)

    async def report_sessions(self, sessions: Sequence[tuple[str, float, float]]) -> None:
        self.sessions.extend(sessions)

    async def register(self, raw: bytes, *, authorization: str, path: str) -> None:
        self.registrations.append((raw, authorization, path))


@attrs.define
class Node:
    database: Database
    directory: FakeDirectory
    store: MessageStore
    router: Router
    intake: Intake
    metrics: Metrics
    clock: TrioWallClock
    http: MessagesEndpoint
    ws: WebSocketEndpoint
    sweeper: Sweeper
    stopping: trio.Event
    forwarder: Forwarder | None = None
    deadlines: Deadlines | None = None


class WireVerifier(Verifier):
    """The helper process's work done in this process, through its frames.

    Everything the daemon does with a helper (the plain reading of a
    message, the examination's frame and verdict crossing the pipe) without
    a child process, whose answers an autojump clock would not wait for.
    """

    def __init__(self) -> None:
        super().__init__(helper=True)

    @property
    def running(self) -> bool:
        return True

    def _submit(self, request: Any) -> Answer[Any]:
        answer: Answer[Any] = Answer(request)
        answer.take(answer_frame(request.frame()[4:]))
        return answer


#: What the nodes of :func:`running_node` check signatures with, unless told otherwise.
VERIFIERS: Final = {
    "loop": lambda: Verifier(helper=False),
    "wire": WireVerifier,
    # The real helper process, whose answers take their time.
    "helper": lambda: Verifier(helper=True),
}


@asynccontextmanager
async def running_node(
    tmp_path: Path,
    *,
    limits: RateLimitingSection | None = None,
    websocket: WebSocketSection | None = None,
    max_message_bytes: int = 16_777_216,
    max_payload_bytes: int = 10_485_760,
    clock: TrioWallClock | None = None,
    database: Database | None = None,
    poster: Poster | None = None,
    verifier: str | None = None,
    collab: bool = True,
    accept_within: float = 30,
) -> AsyncIterator[Node]:
    """A node's parts on ``tmp_path``; ``verifier`` one of :data:`VERIFIERS`
    (by default ``OCPD_TEST_VERIFIER``, else ``loop``)."""
    own_database = database is None
    if database is None:
        # (worker threads hold an autojump clock still: conftest.py)
        database = await open_database(tmp_path / "node.db", "node")
    clock = clock or TrioWallClock()
    metrics = Metrics()
    directory = FakeDirectory()
    store = MessageStore(database)
    forwarder = None
    if poster is not None:
        forwarder = Forwarder(
            store=store,
            directory=directory,
            clock=clock,
            metrics=metrics,
            key=NODE_KEY,
            service_agent=SERVICE_AGENT,
            own_urls=OWN_URLS,
            poster=poster,
        )
        router = Router(store, clock, metrics, remote=forwarder)
        forwarder.router = router
    else:
        router = Router(store, clock, metrics)
    replay = ReplayWindow(window=60)
    intake = Intake(
        directory=directory,
        store=store,
        router=router,
        limits=MessageLimits(limits or RateLimitingSection(), metrics),
        replay=replay,
        clock=clock,
        metrics=metrics,
        key=NODE_KEY,
        service_agent=SERVICE_AGENT,
        network=NETWORK,
        clock_skew=60,
        max_message_bytes=max_message_bytes,
        max_payload_bytes=max_payload_bytes,
        verifier=VERIFIERS[verifier or os.environ.get("OCPD_TEST_VERIFIER", "loop")](),
    )
    deadlines: Deadlines | None = None
    if collab:
        deadlines = Deadlines(
            store=store,
            clock=clock,
            metrics=metrics,
            router=router,
            directory=directory,
            key=NODE_KEY,
            service_agent=SERVICE_AGENT,
        )
        intake.rules = Collaboration(
            directory=directory,
            database=database,
            clock=clock,
            metrics=metrics,
            policy=PvlPolicy(max_payload_bytes=max_payload_bytes),
            router=router,
            accept_within=accept_within,
            deadlines=deadlines,
        )
    stopping = trio.Event()
    ws = WebSocketEndpoint(
        intake=intake,
        router=router,
        directory=directory,
        replay=replay,
        clock=clock,
        metrics=metrics,
        settings=websocket or WebSocketSection(),
        max_message_bytes=max_message_bytes,
        clock_skew=60,
        stopping=stopping,
    )
    http = MessagesEndpoint(intake, metrics, max_message_bytes=max_message_bytes)
    sweeper = Sweeper(store, clock, interval=60, interaction_retention=86_400)
    try:
        async with trio.open_nursery() as nursery:
            await nursery.start(database.run)
            await nursery.start(router.run)
            await nursery.start(ws.run)
            if intake.verifier.helper and not intake.verifier.running:
                await nursery.start(intake.verifier.run)
                with trio.fail_after(30):
                    while not intake.verifier.running:  # noqa: ASYNC110 - the process starts
                        await trio.sleep(0.01)
            if forwarder is not None:
                await nursery.start(forwarder.run)
            if deadlines is not None:
                await nursery.start(deadlines.run)
            yield Node(
                database,
                directory,
                store,
                router,
                intake,
                metrics,
                clock,
                http,
                ws,
                sweeper,
                stopping,
                forwarder,
                deadlines,
            )
            nursery.cancel_scope.cancel()
    finally:
        if own_database:
            database.close()


def message(
    sender: Agent,
    receiver: str,
    *,
    clock_now: float,
    message_type: str = "discovery_ping",
    payload: dict[str, Any] | None = None,
    broadcast: bool = False,
    metadata: dict[str, Any] | None = None,
    ttl: int = 3600,
    message_id: str | None = None,
    key: SigningKey | None = None,
) -> bytes:
    unsigned = build_message(
        sender=sender.id,
        receiver=receiver,
        message_type=message_type,
        payload=payload if payload is not None else {},
        now=clock_now,
        ttl=ttl,
        broadcast=broadcast,
        metadata=metadata,
        message_id=message_id,
    )
    signed = sign_message(unsigned, key or sender.key)
    return json.dumps(signed, separators=(",", ":")).encode()


def authorization(agent: Agent, body: bytes, *, now: float, path: str = "/ocp/v1/messages") -> str:
    return build_authorization(
        agent.key, agent_id=agent.id, method="POST", path_and_query=path, body=body, now=now
    )


def message_headers(agent: Agent, body: bytes, now: float) -> dict[str, str]:
    """The headers of ``POST /ocp/v1/messages`` for ``body`` from ``agent``."""
    return message_post_headers(
        agent.key, agent_id=agent.id, path_and_query="/ocp/v1/messages", body=body, now=now
    )


def handshake(agent: Agent, *, now: float, nonce: bytes | None = None) -> str:
    return json.dumps(build_ws_auth_handshake(agent.key, agent_id=agent.id, now=now, nonce=nonce))


# --- ASGI drivers ---------------------------------------------------------------------


@attrs.define
class HttpAnswer:
    status: int
    headers: dict[bytes, bytes]
    body: bytes
    chunks_read: int

    def json(self) -> Any:
        return json.loads(self.body)


async def post(
    endpoint: MessagesEndpoint,
    body: bytes,
    *,
    headers: dict[str, str] | None = None,
    chunk: int | None = None,
    content_length: bool = True,
    method: str = "POST",
) -> HttpAnswer:
    """One request through the raw ASGI route, body split into ``chunk``-byte events."""
    raw_headers = [(k.lower().encode(), v.encode()) for k, v in (headers or {}).items()]
    if content_length:
        raw_headers.append((b"content-length", str(len(body)).encode()))
    scope = {
        "type": "http",
        "method": method,
        "path": "/ocp/v1/messages",
        "raw_path": b"/ocp/v1/messages",
        "query_string": b"",
        "headers": raw_headers,
        "client": ("127.0.0.1", 5000),
    }
    size = chunk or max(1, len(body))
    pieces = [body[i : i + size] for i in range(0, len(body), size)] or [b""]
    read = 0

    async def receive() -> dict[str, Any]:
        nonlocal read
        if read < len(pieces):
            read += 1
            return {
                "type": "http.request",
                "body": pieces[read - 1],
                "more_body": read < len(pieces),
            }
        await trio.sleep_forever()
        raise AssertionError("unreachable")

    sent: list[dict[str, Any]] = []

    async def send(event: dict[str, Any]) -> None:
        sent.append(event)

    await endpoint.handle(scope, receive, send)
    start, body_event = sent
    return HttpAnswer(
        status=start["status"],
        headers=dict(start["headers"]),
        body=body_event["body"],
        chunks_read=read,
    )


class WsClient:
    """The far end of one WebSocket connection to :meth:`WebSocketEndpoint.handle`."""

    def __init__(self) -> None:
        self._to_app_send, self._to_app_receive = trio.open_memory_channel[dict[str, Any]](100)
        self._from_app_send, self._from_app_receive = trio.open_memory_channel[dict[str, Any]](1000)
        self.accepted: str | None = None
        self.closed: int | None = None

    async def receive(self) -> dict[str, Any]:
        return await self._to_app_receive.receive()

    async def send(self, event: dict[str, Any]) -> None:
        await self._from_app_send.send(event)

    async def connect(
        self,
        endpoint: WebSocketEndpoint,
        nursery: trio.Nursery,
        *,
        subprotocols: list[str] | None = None,
        client: str = "127.0.0.1",
        accepted_at: float | None = None,
    ) -> None:
        scope: dict[str, Any] = {
            "type": "websocket",
            "path": "/ocp/v1/ws",
            "subprotocols": ["ocp.v1"] if subprotocols is None else subprotocols,
            "client": (client, 4000),
            "headers": [],
        }
        if accepted_at is not None:
            scope["extensions"] = {ACCEPTED_EXTENSION: {"at": accepted_at}}
        nursery.start_soon(endpoint.handle, scope, self.receive, self.send)
        await self._to_app_send.send({"type": "websocket.connect"})

    async def send_text(self, text: str) -> None:
        await self._to_app_send.send({"type": "websocket.receive", "text": text})

    async def send_bytes(self, data: bytes) -> None:
        await self._to_app_send.send({"type": "websocket.receive", "bytes": data})

    async def disconnect(self) -> None:
        await self._to_app_send.send({"type": "websocket.disconnect", "code": 1000})

    async def event(self) -> dict[str, Any]:
        event = await self._from_app_receive.receive()
        if event["type"] == "websocket.accept":
            self.accepted = event.get("subprotocol")
        elif event["type"] == "websocket.close":
            self.closed = event.get("code", 1000)
        return event

    async def frame(self) -> dict[str, Any]:
        """The next text frame as JSON (skipping the accept event)."""
        while True:
            event = await self.event()
            if event["type"] == "websocket.send":
                return json.loads(event["text"])  # type: ignore[no-any-return]
            if event["type"] == "websocket.close":
                raise AssertionError(f"closed with {event.get('code')}")

    async def receive_event_text(self) -> str:
        """The next text frame as sent (for delivered messages: the exact bytes)."""
        while True:
            event = await self.event()
            if event["type"] == "websocket.send":
                return str(event["text"])
            if event["type"] == "websocket.close":
                raise AssertionError(f"closed with {event.get('code')}")

    async def closing(self) -> int:
        """Read until the close event; returns its code."""
        while True:
            event = await self.event()
            if event["type"] == "websocket.close":
                return int(event.get("code", 1000))


async def authenticate(
    client: WsClient, endpoint: WebSocketEndpoint, nursery: trio.Nursery, agent: Agent, now: float
) -> dict[str, Any]:
    await client.connect(endpoint, nursery)
    await client.send_text(handshake(agent, now=now))
    return await client.frame()


async def session_of(
    node: Node, nursery: trio.Nursery, agent: Agent, *, later: float = 0.0
) -> WsClient:
    """A WebSocket client of ``agent`` past its ``auth_handshake`` (signed ``later`` s from now)."""
    client = WsClient()
    result = await authenticate(client, node.ws, nursery, agent, node.clock.now() + later)
    assert result["status"] == "accepted", result
    return client
