"""The node's view of a remote registry: answers, checks and the cache on trio's clock."""

from __future__ import annotations

import json
import time
from typing import Any

import attrs
import httpx
import pytest
import trio
import trio.testing
from trio.testing import MockClock

from ocpd.client import AgentKey
from ocpd.client.registry import build_bond
from ocpd.clock import WallClock
from ocpd.node.directory import HttpDirectory, LedgerDirectory, registry_base
from ocpd.proto.artifacts import sign_bond
from ocpd.proto.auth import ReplayWindow, verify_authorization
from ocpd.proto.crypto import SigningKey
from ocpd.proto.diddoc import parse_did_document
from ocpd.proto.errors import Unavailable
from ocpd.proto.taxonomy import Taxonomy
from ocpd.registry.ledger import AgentEntry
from ocpd.registry.uptime import MAX_SESSIONS_PER_REPORT

NETWORK = "testnet"
ALICE = AgentKey(SigningKey(bytes([1]) * 32), NETWORK)
BOB = AgentKey(SigningKey(bytes([2]) * 32), NETWORK)


def _agent_answer(agent: AgentKey, *, level: int = 1, status: str = "active") -> dict[str, Any]:
    return {
        "record": {
            "agent_id": agent.agent_id,
            "domains": ["oncology", "finance", "not-a-domain"],
            "endpoints": [
                {"transport": "ocp-http", "url": "https://b.example", "priority": 2},
                {"transport": "ocp-ws", "url": "wss://a.example", "priority": 1},
            ],
        },
        "status": status,
        "trust_level": level,
    }


class Registry:
    def __init__(self) -> None:
        self.requests: list[str] = []
        self.documents: dict[str, dict[str, Any]] = {ALICE.agent_id: ALICE.did_document()}
        self.agents: dict[str, dict[str, Any]] = {ALICE.agent_id: _agent_answer(ALICE)}
        self.bonds: dict[str, Any] = {}
        self.gate: trio.Event | None = None
        self.down = False

    async def handle(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request.url.path)
        if self.gate is not None:
            await self.gate.wait()
        if self.down:
            raise httpx.ConnectError("refused")
        path = request.url.path.removeprefix("/ocp/v1/registry/agents/")
        agent_id, _, rest = path.partition("/")
        store = {"did.json": self.documents, "bonds": self.bonds}.get(rest, self.agents)
        if agent_id not in store:
            return httpx.Response(404, json={"error_code": "OCP-404"})
        return httpx.Response(200, content=json.dumps(store[agent_id]).encode())

    def directory(self, url: str | None = "https://registry.example:8422/ocp/v1") -> HttpDirectory:
        return HttpDirectory(
            url,
            Taxonomy.load_default(),
            ttl=30,
            negative_ttl=5,
            transport=httpx.MockTransport(self.handle),
        )


@pytest.fixture
def clock() -> MockClock:
    return MockClock(autojump_threshold=0)


def test_registry_base() -> None:
    assert registry_base("https://r.example:8422/") == "https://r.example:8422"
    assert registry_base("https://r.example:8422/ocp/v1") == "https://r.example:8422"
    assert registry_base("https://r.example/ocp/v1/registry") == "https://r.example"


async def test_found_agent_and_its_cache(clock: MockClock) -> None:
    registry = Registry()
    directory = registry.directory()
    with trio.fail_after(300):
        info = await directory.lookup(ALICE.agent_id)
        assert info is not None
        assert info.keys == (ALICE.key.public_key,)
        assert info.level == 1 and info.active
        assert info.domains == ("healthcare.oncology", "finance")
        assert [e["priority"] for e in info.endpoints] == [1, 2]
        assert registry.requests == [
            f"/ocp/v1/registry/agents/{ALICE.agent_id}",
            f"/ocp/v1/registry/agents/{ALICE.agent_id}/did.json",
        ]
        await trio.sleep(29.999)
        assert await directory.lookup(ALICE.agent_id) == info
        assert len(registry.requests) == 2
        await trio.sleep(0.001)
        registry.agents[ALICE.agent_id] = _agent_answer(ALICE, level=2, status="inactive")
        again = await directory.lookup(ALICE.agent_id)
        assert again is not None and again.level == 2 and not again.active
        assert len(registry.requests) == 4


async def test_unknown_agent_is_remembered_briefly(clock: MockClock) -> None:
    registry = Registry()
    directory = registry.directory()
    with trio.fail_after(300):
        assert await directory.lookup(BOB.agent_id) is None
        await trio.sleep(4.9)
        assert await directory.lookup(BOB.agent_id) is None
        assert len(registry.requests) == 1
        await trio.sleep(0.1)
        registry.agents[BOB.agent_id] = _agent_answer(BOB)
        registry.documents[BOB.agent_id] = BOB.did_document()
        assert await directory.lookup(BOB.agent_id) is not None


async def test_concurrent_lookups_share_one_request(clock: MockClock) -> None:
    registry = Registry()
    registry.gate = trio.Event()
    directory = registry.directory()
    results: list[object] = []

    async def look() -> None:
        results.append(await directory.lookup(ALICE.agent_id))

    with trio.fail_after(300):
        async with trio.open_nursery() as nursery:
            for _ in range(5):
                nursery.start_soon(look)
            await trio.testing.wait_all_tasks_blocked()
            registry.gate.set()
        assert len(results) == 5 and len({id(r) for r in results}) == 1
        assert len(registry.requests) == 2


async def test_an_unreachable_registry_is_503_and_not_cached(clock: MockClock) -> None:
    registry = Registry()
    registry.down = True
    directory = registry.directory()
    with trio.fail_after(300):
        with pytest.raises(Unavailable):
            await directory.lookup(ALICE.agent_id)
        registry.down = False
        assert await directory.lookup(ALICE.agent_id) is not None
        with pytest.raises(Unavailable, match="no registry configured"):
            await registry.directory(None).lookup(ALICE.agent_id)


async def test_keys_must_belong_to_the_agent(clock: MockClock) -> None:
    registry = Registry()
    # the registry answers with Bob's document for Alice's id
    registry.documents[ALICE.agent_id] = BOB.did_document()
    directory = registry.directory()
    with trio.fail_after(300), pytest.raises(Unavailable, match="does not check out"):
        await directory.lookup(ALICE.agent_id)


async def test_session_reports_are_signed_by_the_service_agent(clock: MockClock) -> None:
    node_key = SigningKey(bytes([9]) * 32)
    service_agent = AgentKey(node_key, NETWORK).agent_id
    seen: list[httpx.Request] = []

    async def handle(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(403 if len(seen) > 1 else 200, json={})

    directory = HttpDirectory(
        "https://registry.example",
        Taxonomy.load_default(),
        transport=httpx.MockTransport(handle),
        reporter=(service_agent, node_key, WallClock()),
    )
    with trio.fail_after(30):
        await directory.report_sessions([(ALICE.agent_id, 1_775_217_600.0, 1_775_217_660.5)])
        await directory.report_sessions([(ALICE.agent_id, 1_775_217_600.0, 1_775_217_700.0)])
        await directory.report_sessions([(ALICE.agent_id, 1_775_217_600.0, 1_775_217_800.0)])
    request = seen[0]
    assert request.url.path == "/ocp/v1/registry/sessions"
    body = request.content
    assert json.loads(body) == {
        "sessions": [
            {
                "agent_id": ALICE.agent_id,
                "started_at": "2026-04-03T12:00:00.000Z",
                "ended_at": "2026-04-03T12:01:00.500Z",
            }
        ]
    }
    verify_authorization(
        request.headers["Authorization"],
        method="POST",
        path_and_query="/ocp/v1/registry/sessions",
        body=body,
        public_keys=[node_key.public_key],
        now=WallClock().now(),
        replay=ReplayWindow(window=60),
        expected_agent_id=service_agent,
    )
    # refusals do not disturb anything; they are reported once in the log
    assert len(seen) == 3


async def test_many_sessions_go_in_reports_of_at_most_a_thousand(clock: MockClock) -> None:
    node_key = SigningKey(bytes([9]) * 32)
    seen: list[httpx.Request] = []

    async def handle(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(200, json={"counted": 0, "unknown_agents": []})

    directory = HttpDirectory(
        "https://registry.example",
        Taxonomy.load_default(),
        transport=httpx.MockTransport(handle),
        reporter=(AgentKey(node_key, NETWORK).agent_id, node_key, WallClock()),
    )
    spans = [(ALICE.agent_id, 1_775_217_600.0 + i, 1_775_217_900.0) for i in range(1001)]
    with trio.fail_after(30):
        await directory.report_sessions(spans)
    sizes = [len(json.loads(request.content)["sessions"]) for request in seen]
    assert sizes == [MAX_SESSIONS_PER_REPORT, 1]
    last = json.loads(seen[1].content)["sessions"][0]
    assert last["started_at"] == "2026-04-03T12:16:40.000Z"


@attrs.define
class _Ledger:
    """What :class:`LedgerDirectory` reads of the registry's ledger."""

    agents: dict[str, AgentEntry] = attrs.Factory(dict)
    levels: dict[str, int] = attrs.Factory(dict)
    taxonomy: Taxonomy = attrs.Factory(Taxonomy.load_default)

    def level(self, agent_id: str) -> int:
        return self.levels.get(agent_id, 0)


@attrs.define
class _Registry:
    ledger: _Ledger = attrs.Factory(_Ledger)
    loaded: trio.Event = attrs.Factory(trio.Event)


def _entry(agent: AgentKey, document: dict[str, Any], url: str) -> AgentEntry:
    record = {"endpoints": [{"transport": "ocp-ws", "url": url, "priority": 1}]}
    return AgentEntry(
        agent_id=agent.agent_id,
        record=record,
        record_text=json.dumps(record),
        document=parse_did_document(document),
        document_text=json.dumps(document),
        registered_at=1_775_217_600.0,
        expires_at=1_775_304_000.0,
        status="active",
        domains=("finance",),
        capabilities=frozenset(),
    )


async def test_the_ledger_directory_answers_from_the_current_entry() -> None:
    registry = _Registry()
    registry.loaded.set()
    directory = LedgerDirectory(registry)  # type: ignore[arg-type]
    assert await directory.lookup(ALICE.agent_id) is None
    registry.ledger.agents[ALICE.agent_id] = _entry(ALICE, ALICE.did_document(), "wss://a.example")
    first = await directory.lookup(ALICE.agent_id)
    assert first is not None
    assert first.keys == (ALICE.key.public_key,) and first.active and first.level == 0
    assert await directory.lookup(ALICE.agent_id) is first  # nothing changed: the same answer
    registry.ledger.levels[ALICE.agent_id] = 2
    raised = await directory.lookup(ALICE.agent_id)
    assert raised is not None and raised.level == 2
    registry.ledger.agents[ALICE.agent_id].status = "revoked"
    revoked = await directory.lookup(ALICE.agent_id)
    assert revoked is not None and not revoked.active
    # a renewal puts a new entry (here: other endpoints and another document)
    registry.ledger.agents[ALICE.agent_id] = _entry(ALICE, BOB.did_document(), "wss://b.example")
    renewed = await directory.lookup(ALICE.agent_id)
    assert renewed is not None
    assert renewed.endpoints[0]["url"] == "wss://b.example"
    assert renewed.keys == (BOB.key.public_key,)


def _bond(first: AgentKey, second: AgentKey) -> dict[str, Any]:
    bond = build_bond(
        first.agent_id, second.agent_id,
        permissions={"knowledge_share": {"enabled": True, "allowed_types": ["insight"]}},
        now=time.time(),
    )  # fmt: skip
    return sign_bond(sign_bond(bond, first.key, first.agent_id), second.key, second.agent_id)


async def test_bonds_are_read_checked_and_cached(clock: MockClock) -> None:
    registry = Registry()
    directory = registry.directory()
    carol = AgentKey(SigningKey(bytes([3]) * 32), NETWORK)
    bond = _bond(ALICE, BOB)
    registry.bonds[ALICE.agent_id] = {"agent_id": ALICE.agent_id, "bonds": [bond]}
    path = f"/ocp/v1/registry/agents/{ALICE.agent_id}/bonds"
    with trio.fail_after(300):
        found = await directory.bond_between(ALICE.agent_id, BOB.agent_id)
        assert found is not None and found.bond_id == bond["bond_id"]
        assert found.permissions == bond["permissions"]
        assert await directory.bond_between(ALICE.agent_id, carol.agent_id) is None
        assert registry.requests == [path]  # one answer serves both questions
        await trio.sleep(30)
        registry.bonds[ALICE.agent_id] = {"agent_id": ALICE.agent_id, "bonds": []}
        assert await directory.bond_between(ALICE.agent_id, BOB.agent_id) is None
        assert registry.requests == [path, path]
        # an unknown agent has no bonds; a forged or foreign answer is 503
        assert await directory.bond_between(carol.agent_id, ALICE.agent_id) is None
        registry.bonds[BOB.agent_id] = {"agent_id": BOB.agent_id, "bonds": [_bond(ALICE, carol)]}
        with pytest.raises(Unavailable):
            await directory.bond_between(BOB.agent_id, ALICE.agent_id)
        dave = AgentKey(SigningKey(bytes([4]) * 32), NETWORK)
        registry.bonds[dave.agent_id] = {"agent_id": dave.agent_id, "bonds": [{"bond_id": 1}]}
        with pytest.raises(Unavailable):
            await directory.bond_between(dave.agent_id, ALICE.agent_id)
