"""NodeClient over real TLS (trustme) against the fake node served by hypercorn.

Each scenario is written against anyio only and runs twice: under trio
(pytest-trio) and under asyncio (a plain test calling ``asyncio.run``).
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from pathlib import Path

import anyio
import httpx
import pytest

from daemon_process import TlsFiles
from fake_node import Directory, FakeNode, asgi_app, serve_tls
from ocpd.client import (
    AgentKey,
    ConnectionFailed,
    MessageRejected,
    NodeClient,
    ReceivedMessage,
    RegistryClient,
)
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
LIMIT = 20.0

Scenario = Callable[[TlsFiles], Awaitable[None]]


@pytest.fixture(scope="module")
def tls(tmp_path_factory: pytest.TempPathFactory) -> TlsFiles:
    return TlsFiles(tmp_path_factory.mktemp("tls"))


class Setup:
    def __init__(self, tls: TlsFiles) -> None:
        self.tls = tls
        self.directory = Directory()
        self.alice = self.directory.add(AgentKey(SigningKey(b"\x01" * 32), NETWORK))
        self.bob = self.directory.add(AgentKey(SigningKey(b"\x02" * 32), NETWORK))
        self.node = FakeNode(self.directory)
        self.port = 0

    def client(self, agent: AgentKey, **kwargs: object) -> NodeClient:
        options: dict[str, object] = {
            "ws_url": f"wss://127.0.0.1:{self.port}",
            "http_url": f"https://127.0.0.1:{self.port}",
            "verify": str(self.tls.ca_file),
        }
        options.update(kwargs)
        return NodeClient(agent, resolve_did=self.directory.resolve_did, **options)  # type: ignore[arg-type]


async def exchange_encrypted_with_acks(tls: TlsFiles) -> None:
    setup = Setup(tls)
    with anyio.fail_after(LIMIT):
        async with serve_tls(asgi_app(setup.node), str(tls.cert), str(tls.key)) as port:
            setup.port = port
            got: list[ReceivedMessage] = []
            async with setup.client(setup.alice) as alice, setup.client(setup.bob) as bob:

                async def bob_reads() -> None:
                    got.append(await bob.receive())
                    got.append(await bob.receive())

                async with anyio.create_task_group() as tasks:
                    tasks.start_soon(bob_reads)
                    over_ws = await alice.send(
                        setup.bob.agent_id,
                        "knowledge_share",
                        INSIGHT,
                        encrypt=True,
                        requires_ack=True,
                    )
                    over_https = await alice.send(
                        setup.bob.agent_id,
                        "knowledge_share",
                        INSIGHT,
                        encrypt=True,
                        requires_ack=True,
                        transport="http",
                    )
            assert over_ws.transport == "ws"
            assert over_https.transport == "http"
            for delivery, received in zip((over_ws, over_https), got, strict=True):
                assert delivery.ack is not None
                assert delivery.ack.correlation_id == delivery.message_id
                assert received.message_id == delivery.message_id
                assert received.encrypted
                assert received.payload == INSIGHT
            transports = [
                t for _, t, m in setup.node.frames if m["message_type"] == "knowledge_share"
            ]
            assert transports == ["ws", "http"]


async def https_errors_carry_code_and_retry_after(tls: TlsFiles) -> None:
    setup = Setup(tls)
    with anyio.fail_after(LIMIT):
        async with serve_tls(asgi_app(setup.node), str(tls.cert), str(tls.key)) as port:
            setup.port = port
            async with setup.client(setup.alice, ws_url=None) as alice:
                setup.node.reject_codes = ["OCP-429", "OCP-403"]
                with pytest.raises(MessageRejected) as limited:
                    await alice.send(setup.bob.agent_id, "knowledge_share", INSIGHT)
                assert limited.value.code == "OCP-429"
                assert limited.value.status == 429
                assert limited.value.retry_after == 3
                with pytest.raises(MessageRejected) as forbidden:
                    await alice.send(setup.bob.agent_id, "knowledge_share", INSIGHT)
                assert forbidden.value.code == "OCP-403"
                assert forbidden.value.status == 403
                delivery = await alice.send(setup.bob.agent_id, "knowledge_share", INSIGHT)
                assert delivery.transport == "http"
                with pytest.raises(ConnectionFailed, match="cannot receive"):
                    await alice.receive()


async def untrusted_certificates_are_refused(tls: TlsFiles) -> None:
    setup = Setup(tls)
    with anyio.fail_after(LIMIT):
        async with serve_tls(asgi_app(setup.node), str(tls.cert), str(tls.key)) as port:
            setup.port = port
            with pytest.raises(ConnectionFailed, match="certificate"):
                async with setup.client(setup.alice, verify=True):
                    pass
            with pytest.raises(ConnectionFailed, match="HTTP 403"):
                async with setup.client(setup.alice, ws_url=f"wss://127.0.0.1:{port}/elsewhere"):
                    pass
            assert setup.node.handshakes == []


async def manual_acks_prepare_and_iteration(tls: TlsFiles) -> None:
    setup = Setup(tls)
    with anyio.fail_after(LIMIT):
        async with serve_tls(asgi_app(setup.node), str(tls.cert), str(tls.key)) as port:
            setup.port = port
            async with (
                setup.client(setup.alice) as alice,
                setup.client(setup.bob, auto_ack=False) as bob,
            ):
                message = await alice.prepare(
                    setup.bob.agent_id, "knowledge_share", INSIGHT, encrypt=True, requires_ack=True
                )
                assert message["metadata"] == {"requires_ack": True}

                async def bob_works() -> None:
                    async for received in bob:
                        assert received.payload == INSIGHT
                        await bob.ack(received, status="processed", note="filed")
                        return

                async with anyio.create_task_group() as tasks:
                    tasks.start_soon(bob_works)
                    delivery = await alice.send_until_acked(message, transport="http")
                assert delivery.message == message
                assert delivery.ack is not None
                assert delivery.ack.payload == {"status": "processed", "note": "filed"}
                plain = await alice.prepare(setup.bob.agent_id, "discovery_ping", {})
                sent = await alice.transmit(plain)
                assert (sent.transport, sent.attempts, sent.ack) == ("ws", 1, None)
                assert (await bob.receive()).message_id == sent.message_id
                assert bob.drain() == []
            assert not alice.connected


SCENARIOS = [
    exchange_encrypted_with_acks,
    manual_acks_prepare_and_iteration,
    https_errors_carry_code_and_retry_after,
    untrusted_certificates_are_refused,
]


@pytest.mark.parametrize("scenario", SCENARIOS, ids=lambda s: s.__name__)
async def test_under_trio(scenario: Scenario, tls: TlsFiles) -> None:
    await scenario(tls)


@pytest.mark.parametrize("scenario", SCENARIOS, ids=lambda s: s.__name__)
def test_under_asyncio(scenario: Scenario, tls: TlsFiles) -> None:
    asyncio.run(scenario(tls))


def test_plaintext_is_refused_except_to_loopback(tmp_path: Path) -> None:
    agent = AgentKey(SigningKey(b"\x01" * 32), NETWORK)
    directory = Directory()
    with pytest.raises(ValueError, match="unencrypted"):
        NodeClient(agent, resolve_did=directory.resolve_did, ws_url="ws://node.example:8421")
    with pytest.raises(ValueError, match="unencrypted"):
        NodeClient(agent, resolve_did=directory.resolve_did, http_url="http://node.example:8420")
    NodeClient(agent, resolve_did=directory.resolve_did, ws_url="ws://127.0.0.1:8421")
    with pytest.raises(ValueError, match="ws_url, http_url"):
        NodeClient(agent, resolve_did=directory.resolve_did)


async def test_registry_client_takes_a_ca_file_path(tls: TlsFiles) -> None:
    # httpx deprecates a path as ``verify``; the client builds its own TLS 1.3 context.
    agent = AgentKey(SigningKey(b"\x01" * 32), NETWORK)
    async with RegistryClient("https://127.0.0.1:1", agent, verify=str(tls.ca_file)) as registry:
        with pytest.raises(httpx.ConnectError):
            await registry.resolve_did(agent.agent_id)
