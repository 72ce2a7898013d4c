"""The SDK against a custodian that lies, over real HTTPS.

Four custodian services (real SQLite files, each with its own key and
database key) are served by hypercorn over TLS 1.3; one of them returns a
share that is not the one it was given, sealed and signed like an honest
answer. With t + 1 answers the SDK rebuilds the key anyway and names the
liar by URL; with exactly t answers, one of them the lie, it refuses to
rebuild a key that does not match the fingerprint.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Awaitable, Callable, MutableMapping
from contextlib import AsyncExitStack
from pathlib import Path
from typing import Any

import attrs
import pytest
import trio
from prometheus_client import CollectorRegistry

from daemon_process import TlsFiles
from fake_node import answer_lifespan, read_body, send_json, serve_tls
from ocpd.client import AgentKey
from ocpd.client.custodian import CustodianClient
from ocpd.client.recovery import distribute_shares, recover_key_from
from ocpd.clock import WallClock
from ocpd.config import CustodianSection
from ocpd.custodian import service as custodian_service
from ocpd.custodian.service import CustodianService
from ocpd.custodian.store import DatabaseKey
from ocpd.node.directory import AgentInfo
from ocpd.proto import shamir
from ocpd.proto.crypto import SigningKey
from ocpd.proto.ids import key_fingerprint
from ocpd.proto.recovery import RecoveryFailed
from ocpd.proto.taxonomy import Taxonomy
from ocpd.storage import open_database

NETWORK = "testnet"
THRESHOLD = 3

Scope = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[dict[str, Any]]]
Send = Callable[[dict[str, Any]], Awaitable[None]]


class Directory:
    """The registry as the custodians see it: one agent and its key."""

    taxonomy = Taxonomy.load_default()

    def __init__(self, agent: AgentKey) -> None:
        self.info = AgentInfo(
            agent_id=agent.agent_id,
            keys=(agent.key.public_key,),
            level=1,
            active=True,
            domains=(),
        )

    async def lookup(self, agent_id: str) -> AgentInfo | None:
        return self.info if agent_id == self.info.agent_id else None


def custodian_app(service: CustodianService) -> Callable[[Scope, Receive, Send], Awaitable[None]]:
    """The custodian's two routes as a bare ASGI application."""

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            await answer_lifespan(receive, send)
            return
        if scope["method"] == "GET":
            status, answer = 200, service.describe()
        else:
            reply = await service.handle(await read_body(receive), scope["client"][0])
            status, answer = reply.status, reply.message
        await send_json(send, status, answer)

    return app


@attrs.define
class Custodians:
    urls: list[str]
    ids: list[str]
    ca_file: Path


@pytest.fixture
def agent() -> AgentKey:
    return AgentKey.generate(NETWORK)


@pytest.fixture
async def custodians(tmp_path: Path, agent: AgentKey) -> AsyncIterator[Custodians]:
    tls = TlsFiles(tmp_path)
    directory = Directory(agent)
    urls: list[str] = []
    ids: list[str] = []
    async with trio.open_nursery() as nursery:
        stack = AsyncExitStack()
        await stack.__aenter__()
        for n in range(4):
            database = await open_database(tmp_path / f"c{n}.db", "custodian")
            stack.callback(database.close)
            nursery.start_soon(database.run)
            service = CustodianService(
                database=database,
                clock=WallClock(),
                settings=CustodianSection(),
                key=SigningKey.generate(),
                network=NETWORK,
                database_key=DatabaseKey.generate(),
                directory=directory,
                metrics_registry=CollectorRegistry(),
                clock_skew=60.0,
            )
            port = await stack.enter_async_context(
                serve_tls(custodian_app(service), str(tls.cert), str(tls.key))
            )
            urls.append(f"https://127.0.0.1:{port}")
            ids.append(service.agent_id)
        try:
            yield Custodians(urls, ids, tls.ca_file)
        finally:
            await stack.aclose()
            nursery.cancel_scope.cancel()


@pytest.fixture
def liar(custodians: Custodians, monkeypatch: pytest.MonkeyPatch) -> str:
    """The last custodian answers with a share one byte off, sealed and signed as usual."""
    honest = custodian_service.seal_share_response
    lying_id = custodians.ids[-1]

    def seal(share: shamir.Share, **kwargs: Any) -> dict[str, Any]:
        if kwargs["custodian_id"] == lying_id:
            share = shamir.Share(share.index, bytes([share.data[0] ^ 0x01]) + share.data[1:])
        return honest(share, **kwargs)

    monkeypatch.setattr(custodian_service, "seal_share_response", seal)
    return custodians.urls[-1]


async def test_a_lying_custodian_is_named_when_t_plus_one_answer(
    custodians: Custodians, agent: AgentKey, liar: str
) -> None:
    recovery = SigningKey.generate()
    clients = [
        CustodianClient(url, agent_id=custodian_id, verify=str(custodians.ca_file))
        for url, custodian_id in zip(custodians.urls, custodians.ids, strict=True)
    ]
    fingerprint = key_fingerprint(agent.key.public_key)
    try:
        deposits = await distribute_shares(
            agent, clients, threshold=THRESHOLD, recovery_public_key=recovery.public_key
        )
        assert [d.url for d in deposits] == custodians.urls

        # All four answer: the key is rebuilt from the three honest shares, the liar named.
        recovered = await recover_key_from(
            clients,
            agent_id=agent.agent_id,
            fingerprint=fingerprint,
            threshold=THRESHOLD,
            recovery_key=recovery,
            now=time.time(),
        )
        assert recovered.key.seed() == agent.key.seed()
        assert recovered.disagreeing == (liar,)
        assert sorted(recovered.answered) == sorted(custodians.urls)
        assert recovered.failures == {}

        # Exactly t answer and one lies: no key comes out, and nothing wrong is returned.
        with pytest.raises(RecoveryFailed) as failed:
            await recover_key_from(
                clients[1:],
                agent_id=agent.agent_id,
                fingerprint=fingerprint,
                threshold=THRESHOLD,
                recovery_key=recovery,
                now=time.time(),
            )
        assert failed.value.details["reason"] == "no_consistent_shares"

        # Without the liar, the honest three agree with nobody named.
        honest = await recover_key_from(
            clients[:3],
            agent_id=agent.agent_id,
            fingerprint=fingerprint,
            threshold=THRESHOLD,
            recovery_key=recovery,
            now=time.time(),
        )
        assert honest.key.seed() == agent.key.seed() and honest.disagreeing == ()
    finally:
        for client in clients:
            await client.aclose()
