"""PeerService in process: two or more nodes joined by memory pipes, on trio's mock clock.

The connection is faked at its boundary (a :class:`Pipe` stands in for the
WebSocket); everything above it (handshake, session, keepalive, diallers,
the session table, traces, the node database) is the real thing. Timers
run on an autojump clock and are checked at exact times. The same service
over real TLS sockets is covered by ``test_net_e2e.py``.
"""

from __future__ import annotations

import json
import math
import ssl
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import attrs
import pytest
import trio
from trio.testing import MockClock

from node_helpers import TrioWallClock
from ocpd.config import PeeringSection, SeedPeer
from ocpd.net.adverts import AdvertisementCache, NonceStore, OwnAdvertisement
from ocpd.net.carrier import CarrierClosed
from ocpd.net.peers import CAP_RELAY, PeerService
from ocpd.net.traces import Tracer
from ocpd.proto.crypto import SigningKey, X25519KeyPair
from ocpd.proto.errors import NetError
from ocpd.proto.ids import format_node_id
from ocpd.proto.netartifacts import build_hello
from ocpd.proto.peer import KEEPALIVE_TIMEOUT, PENDING_HELLO_TIMEOUT
from ocpd.storage import Database, open_database
from ocpd.web import Metrics

pytestmark = pytest.mark.usefixtures("restore_logging")


@pytest.fixture
def clock() -> MockClock:
    return MockClock(autojump_threshold=0.01)


class Pipe:
    """One end of an in-memory connection; ``mute`` drops what this end sends."""

    def __init__(
        self,
        send: trio.MemorySendChannel[bytes | str],
        receive: trio.MemoryReceiveChannel[bytes | str],
        remote: str,
    ) -> None:
        self._send = send
        self._receive = receive
        self.remote = remote
        self.mute = False
        self.tamper = False
        self.sent: list[bytes | str] = []

    async def receive(self) -> bytes | str:
        try:
            return await self._receive.receive()
        except (trio.EndOfChannel, trio.ClosedResourceError):
            raise CarrierClosed(1006) from None

    async def send(self, data: bytes | str) -> None:
        self.sent.append(data)
        if self.mute:
            return
        if self.tamper and isinstance(data, bytes):
            data = data[:-1] + bytes([data[-1] ^ 1])
        try:
            await self._send.send(data)
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            raise CarrierClosed(1006) from None

    async def close(self, code: int = 1000, reason: str = "") -> None:
        await self._send.aclose()
        await self._receive.aclose()


def pipe_pair(a: str, b: str) -> tuple[Pipe, Pipe]:
    ab_send, ab_receive = trio.open_memory_channel[bytes | str](math.inf)
    ba_send, ba_receive = trio.open_memory_channel[bytes | str](math.inf)
    return Pipe(ab_send, ba_receive, b), Pipe(ba_send, ab_receive, a)


@attrs.define(eq=False)
class Net:
    """Addresses to services: what a dial to ``wss://<name>/ocp/v1/peer`` reaches."""

    nursery: trio.Nursery
    services: dict[str, PeerService] = attrs.Factory(dict)
    pipes: list[tuple[Pipe, Pipe]] = attrs.Factory(list)

    def connector(self, name: str) -> Any:
        @asynccontextmanager
        async def connect(
            url: str, context: ssl.SSLContext, *, max_message_bytes: int
        ) -> AsyncIterator[Pipe]:
            host = url.split("//")[1].split("/")[0]
            target = self.services.get(host)
            if target is None:
                raise NetError(f"cannot reach {url}", code="E_TRANSPORT_UNAVAILABLE")
            mine, theirs = pipe_pair(name, host)
            self.pipes.append((mine, theirs))
            self.nursery.start_soon(target.accept, theirs)
            try:
                yield mine
            finally:
                await mine.close()

        return connect


@attrs.define(eq=False)
class Node:
    name: str
    key: SigningKey
    database: Database
    service: PeerService
    events: list[dict[str, Any]]

    @property
    def node_id(self) -> str:
        return format_node_id(self.key.public_key)

    def traces(self, event: str, peer: str | None = None) -> list[dict[str, Any]]:
        return [
            e
            for e in self.events
            if e["event/type"] == event and (peer is None or e.get("peer") == peer)
        ]


async def make_node(
    tmp_path: Path,
    net: Net,
    name: str,
    seed: int,
    *,
    seeds: tuple[SeedPeer, ...] = (),
    database: Database | None = None,
    **settings: Any,
) -> Node:
    key = SigningKey(bytes([seed]) * 32)
    node_id = format_node_id(key.public_key)
    if database is None:
        database = await open_database(tmp_path / f"{name}.db", "node")
        await net.nursery.start(database.run)
    events: list[dict[str, Any]] = []
    clock = TrioWallClock()
    service = PeerService(
        key=key,
        node_id=node_id,
        clock=clock,
        metrics=Metrics(),
        tracer=Tracer(node_id, wall=clock.now, on_event=lambda _, line: events.append(line)),
        settings=PeeringSection(seed_peers=seeds, **settings),
        cache=AdvertisementCache(database),
        own=OwnAdvertisement(database, key),
        nonce_store=NonceStore(database),
        tls=ssl.create_default_context(),
        max_message_bytes=1_048_576,
        own_peer_url=lambda: f"wss://{name}/ocp/v1/peer",
        own_ocp_urls=lambda: (f"https://{name}/ocp/v1/messages",),
        offered=(CAP_RELAY,),
    )
    service.connect = net.connector(name)
    service.ready.set()
    net.services[name] = service
    return Node(name, key, database, service, events)


def seed_of(node: Node, label: str | None = None) -> SeedPeer:
    return SeedPeer(node.node_id, f"wss://{node.name}/ocp/v1/peer", label)


async def until(check: Any, *, step: float = 0.05) -> None:
    """Poll ``check`` on the mock clock (the services offer no event to wait on)."""
    while True:
        if check():
            return
        await trio.sleep(step)


def established(node: Node, other: Node) -> bool:
    return node.service.connected(other.node_id, "core/messaging")


async def seeded_pair(tmp_path: Path, net: Net, label: str | None = None) -> tuple[Node, Node]:
    """``a`` with ``b`` as its seed peer, both running and peered."""
    b = await make_node(tmp_path, net, "b", 2)
    a = await make_node(tmp_path, net, "a", 1, seeds=(seed_of(b, label),))
    await net.nursery.start(b.service.run)
    await net.nursery.start(a.service.run)
    with trio.fail_after(10):
        await until(lambda: established(a, b) and established(b, a))
    return a, b


async def test_a_seed_peer_session_is_established_and_used(
    tmp_path: Path, clock: MockClock
) -> None:
    async with trio.open_nursery() as nursery:
        net = Net(nursery)
        a, b = await seeded_pair(tmp_path, net, "bee")
        live = a.service.sessions[b.node_id]
        assert live.initiator and live.label == "bee"
        assert a.traces("peer/discovered", b.node_id)[0]["label"] == "bee"
        for event in ("handshake/started", "handshake/accepted", "session/established"):
            assert a.traces(event, b.node_id), event
        assert b.traces("capabilities/exchanged", a.node_id)[0]["capabilities"] == [
            "core/messaging",
            CAP_RELAY,
        ]
        # each learnt the other's advertisement and where it serves agents
        with trio.fail_after(5):
            await until(lambda: bool(a.traces("advertisement/fetched", b.node_id)))
            await until(lambda: a.service.host_of(["https://b/ocp/v1/messages"]) == b.node_id)
        # a signal-marker, validated and traced on arrival
        sent = await a.service.signal(b.node_id, kind="ops/ping", body="hi")
        with trio.fail_after(5):
            await until(lambda: bool(b.traces("signal-marker/received", a.node_id)))
        got = b.traces("signal-marker/received", a.node_id)[0]
        assert got["marker/id"] == sent["marker/id"] and got["signal/kind"] == "ops/ping"
        nursery.cancel_scope.cancel()


async def test_silence_is_lost_at_45_s_then_a_fresh_handshake_restores(
    tmp_path: Path, clock: MockClock
) -> None:
    async with trio.open_nursery() as nursery:
        net = Net(nursery)
        a, b = await seeded_pair(tmp_path, net)
        first = a.service.sessions[b.node_id]
        # pings keep an idle session alive (pongs answer them)
        await trio.sleep(100)
        assert a.service.sessions[b.node_id] is first
        assert first.session.pongs_received > 0 and first.last_keepalive is not None
        # b's end goes silent (a half-open connection): a notices after exactly 45 s
        b_end = next(theirs for mine, theirs in net.pipes if mine is first.carrier)
        b_end.mute = True
        first.carrier.mute = True  # nor does b hear a's pings
        silent_from = first.session.last_received
        with trio.fail_after(60):
            await first.ended.wait()
        lost = a.traces("keepalive/lost", b.node_id)
        assert lost and lost[0]["reason"] == "keepalive"
        assert a.service.clock.now() - silent_from == pytest.approx(KEEPALIVE_TIMEOUT, abs=0.05)
        # the dialler comes back with a new carrier and a full handshake
        with trio.fail_after(10):
            await until(lambda: established(a, b) and a.service.sessions[b.node_id] is not first)
        assert a.traces("keepalive/restored", b.node_id)
        assert len(a.traces("handshake/accepted", b.node_id)) >= 2
        nursery.cancel_scope.cancel()


async def test_two_nodes_dialling_each_other_keep_one_session(
    tmp_path: Path, clock: MockClock
) -> None:
    async with trio.open_nursery() as nursery:
        net = Net(nursery)
        a = await make_node(tmp_path, net, "a", 1)
        b = await make_node(tmp_path, net, "b", 2)
        a.service.settings = PeeringSection(seed_peers=(seed_of(b),))
        b.service.settings = PeeringSection(seed_peers=(seed_of(a),))
        await nursery.start(a.service.run)
        await nursery.start(b.service.run)
        with trio.fail_after(10):
            await until(lambda: established(a, b) and established(b, a))
        await trio.sleep(5)
        kept_a, kept_b = a.service.sessions[b.node_id], b.service.sessions[a.node_id]
        # both ends hold the same session: opened by one of them, answered by the other
        assert kept_a.initiator != kept_b.initiator
        assert kept_a.session.established.handshake_id == kept_b.session.established.handshake_id
        await trio.sleep(120)
        assert a.service.sessions[b.node_id] is kept_a
        nursery.cancel_scope.cancel()


async def test_half_open_handshakes_are_bounded_and_expire_at_30_s(
    tmp_path: Path, clock: MockClock
) -> None:
    async with trio.open_nursery() as nursery:
        net = Net(nursery)
        a = await make_node(tmp_path, net, "a", 1, max_pending_handshakes=100)
        await nursery.start(a.service.run)
        ours: list[Pipe] = []
        opened = trio.current_time()
        for i in range(150):
            mine, theirs = pipe_pair(f"x{i}", "a")
            ours.append(mine)
            nursery.start_soon(a.service.accept, theirs)
        await trio.sleep(1)
        assert a.service.pending_inbound == 100
        refused = 0
        for pipe in ours:
            with trio.move_on_after(0.1):
                try:
                    await pipe.receive()
                except CarrierClosed:
                    refused += 1
        assert refused == 50
        await trio.sleep_until(opened + PENDING_HELLO_TIMEOUT - 0.01)
        assert a.service.pending_inbound == 100
        await trio.sleep(0.02)
        assert a.service.pending_inbound == 0
        rejected = a.traces("handshake/rejected")
        assert len(rejected) == 100
        assert {e["error/code"] for e in rejected} == {"E_PROTO_INVALID"}
        nursery.cancel_scope.cancel()


async def test_a_hello_replayed_after_a_restart_is_refused(
    tmp_path: Path, clock: MockClock
) -> None:
    caller = SigningKey(bytes([7]) * 32)
    async with trio.open_nursery() as nursery:
        net = Net(nursery)
        a = await make_node(tmp_path, net, "a", 1)
        await nursery.start(a.service.run, name="first run")
        hello = build_hello(
            caller,
            session_public=X25519KeyPair.generate().public_key,
            now=a.service.clock.now(),
            recipient=a.node_id,
        )
        text = json.dumps(hello)

        async def offer(service: PeerService) -> str | bytes:
            mine, theirs = pipe_pair("x", "a")
            nursery.start_soon(service.accept, theirs)
            await mine.send(text)
            return await mine.receive()

        ack = json.loads(await offer(a.service))
        assert ack["handshake/mode"] == "ack"
        # a hello whose session key has small order is refused, and a goes on
        bad = json.dumps(
            build_hello(
                caller, session_public=bytes(32), now=a.service.clock.now(), recipient=a.node_id
            )
        )
        mine, theirs = pipe_pair("y", "a")
        nursery.start_soon(a.service.accept, theirs)
        await mine.send(bad)
        assert json.loads(await mine.receive())["code"] == "E_PROTO_INVALID"
        # a "restart": a new service on the same database, within the 120 s
        await trio.sleep(10)
        again = await make_node(tmp_path, net, "a", 1, database=a.database)
        await nursery.start(again.service.run)
        refusal = json.loads(await offer(again.service))
        assert refusal == {"type": "error", "code": "E_HS_REPLAY", "detail": refusal["detail"]}
        errors = again.traces("error/occurred")
        assert errors[-1]["error/class"] == "handshake/replay-suspected"
        nursery.cancel_scope.cancel()


async def test_a_tampered_frame_ends_the_session_and_is_traced(
    tmp_path: Path, clock: MockClock
) -> None:
    async with trio.open_nursery() as nursery:
        net = Net(nursery)
        a, b = await seeded_pair(tmp_path, net)
        live = a.service.sessions[b.node_id]
        live.carrier.tamper = True
        with pytest.raises(NetError, match="no session"):
            await b.service.signal("node:did:key:z6MkNoSuchNode", kind="ops/x")
        await a.service.signal(b.node_id, kind="ops/tampered")
        with trio.fail_after(5):
            await until(lambda: bool(b.traces("error/occurred", a.node_id)))
        error = b.traces("error/occurred", a.node_id)[0]
        assert error["error/code"] == "E_SIG_INVALID"
        assert not b.traces("signal-marker/received")
        with trio.fail_after(5):
            await until(lambda: bool(b.traces("keepalive/lost", a.node_id)))
        nursery.cancel_scope.cancel()
