"""The messaging SDK end to end: the real daemon (registry and node), over TLS.

Two agents register, connect and exchange signed, encrypted messages with
acks over the WebSocket and over HTTPS, under trio and under asyncio; and a
client rides out a daemon restart.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from pathlib import Path

import anyio
import pytest

from daemon_process import Daemon, TlsFiles, free_port
from ocpd.client import AgentKey, NodeClient, ReceivedMessage, RegistryClient, Timings
from ocpd.proto.crypto import SigningKey

NETWORK = "testnet"
INSIGHT = {
    "knowledge_type": "insight",
    "insight_id": "ins-0b6d3f4e-8a51-4c1e-9d7a-2f3b4c5d6e7f",
    "topic": "tumour response",
    "confidence": 0.87,
    "anonymized": True,
    "payload": {"finding": "responders share marker X"},
}
CAPABILITIES = [{"id": "cap:vision:imaging", "name": "Imaging", "version": "1.0"}]


class World:
    def __init__(self, tmp: Path, *, fixed_ports: bool = False) -> None:
        self.tls = TlsFiles(tmp)
        env = {}
        if fixed_ports:
            # A restarted daemon must come back where the clients left it.
            env = {
                "OCP_HTTP_PORT": str(free_port()),
                "OCP_WS_PORT": str(free_port()),
                "OCP_REGISTRY_PORT": str(free_port()),
            }
        self.alice = AgentKey(SigningKey(b"\x31" * 32), NETWORK)
        self.bob = AgentKey(SigningKey(b"\x32" * 32), NETWORK)
        # Knowledge exchange needs Level 2: both are trust anchors.
        env["OCP_TRUST_ANCHORS"] = f"{self.alice.agent_id},{self.bob.agent_id}"
        self.daemon = Daemon(tmp / "data", component="all", tls=self.tls, env=env)

    @property
    def urls(self) -> dict[str, str]:
        return self.daemon.listeners

    def registry(self, agent: AgentKey) -> RegistryClient:
        return RegistryClient(self.urls["registry"], agent, verify=self.tls.client_context())

    async def register(self, agent: AgentKey) -> None:
        async with self.registry(agent) as registry:
            ws = self.urls["ws"].replace("https://", "wss://") + "/ocp/v1/ws"
            record = registry.build_record(
                display_name="e2e",
                capabilities=CAPABILITIES,
                domains=["healthcare.oncology"],
                endpoints=[{"transport": "ocp-ws", "url": ws, "priority": 1}],
            )
            await registry.register(record)

    @asynccontextmanager
    async def client(
        self, agent: AgentKey, registry: RegistryClient, **kwargs: object
    ) -> AsyncIterator[NodeClient]:
        client = NodeClient(
            agent,
            resolve_did=registry.resolve_did,
            ws_url=self.urls["ws"],
            http_url=self.urls["http"],
            verify=str(self.tls.ca_file),
            **kwargs,  # type: ignore[arg-type]
        )
        async with client:
            yield client


@pytest.fixture
def world(tmp_path: Path) -> Iterator[World]:
    w = World(tmp_path)
    w.daemon.start()
    try:
        w.daemon.wait_ready()
        yield w
    finally:
        w.daemon.stop()


async def exchange(w: World) -> None:
    """Alice sends Bob an encrypted insight over each transport; Bob's SDK acks it."""
    with anyio.fail_after(60):
        await w.register(w.alice)
        await w.register(w.bob)
        got: list[ReceivedMessage] = []
        async with (
            w.registry(w.alice) as registry_a,
            w.registry(w.bob) as registry_b,
            w.client(w.alice, registry_a) as alice,
            w.client(w.bob, registry_b) as bob,
        ):

            async def bob_reads() -> None:
                got.append(await bob.receive())
                got.append(await bob.receive())

            async with anyio.create_task_group() as tasks:
                tasks.start_soon(bob_reads)
                deliveries = [
                    await alice.send(
                        w.bob.agent_id,
                        "knowledge_share",
                        INSIGHT,
                        encrypt=True,
                        requires_ack=True,
                        transport=transport,
                    )
                    for transport in ("ws", "http")
                ]
            # Bob answers over HTTPS; Alice's session receives it, verified.
            await bob.send(w.alice.agent_id, "discovery_ping", {"trust_level": 1}, transport="http")
            answer = await alice.receive()
        assert answer.sender == w.bob.agent_id
        assert answer.payload == {"trust_level": 1}
        for delivery, received in zip(deliveries, got, strict=True):
            assert delivery.attempts == 1
            assert delivery.ack is not None
            assert delivery.ack.sender == w.bob.agent_id
            assert delivery.ack.correlation_id == delivery.message_id
            assert received.message_id == delivery.message_id
            assert received.sender == w.alice.agent_id
            assert received.encrypted
            assert received.payload == INSIGHT
            assert isinstance(received.message["payload"], str)


async def test_exchange_under_trio(world: World) -> None:
    await exchange(world)


def test_exchange_under_asyncio(world: World) -> None:
    asyncio.run(exchange(world))


async def ride_out_a_restart(w: World) -> None:
    quick = Timings(reconnect_base=0.2, reconnect_max=1.0, send_wait=60.0)
    with anyio.fail_after(120):
        await w.register(w.alice)
        await w.register(w.bob)
        async with (
            w.registry(w.alice) as registry_a,
            w.registry(w.bob) as registry_b,
            w.client(w.alice, registry_a, timings=quick) as alice,
            w.client(w.bob, registry_b, timings=quick) as bob,
        ):
            await anyio.to_thread.run_sync(w.daemon.stop)
            await anyio.to_thread.run_sync(w.daemon.start)
            await anyio.to_thread.run_sync(w.daemon.wait_ready)
            await alice.wait_connected()
            await bob.wait_connected()
            async with anyio.create_task_group() as tasks:
                tasks.start_soon(bob.receive)
                delivery = await alice.send(
                    w.bob.agent_id, "knowledge_share", INSIGHT, encrypt=True, requires_ack=True
                )
            assert delivery.ack is not None
            assert alice.sessions_opened == 2
            assert bob.sessions_opened == 2


@pytest.fixture
def restartable(tmp_path: Path) -> Iterator[World]:
    w = World(tmp_path, fixed_ports=True)
    w.daemon.start()
    try:
        w.daemon.wait_ready()
        yield w
    finally:
        w.daemon.stop()


async def test_reconnects_after_the_daemon_restarts(restartable: World) -> None:
    await ride_out_a_restart(restartable)


def test_reconnects_after_the_daemon_restarts_under_asyncio(restartable: World) -> None:
    asyncio.run(ride_out_a_restart(restartable))
