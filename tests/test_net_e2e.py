"""Node networking end to end: three real daemons over TLS, bootstrapped and peered.

A runs the registry (which is also the seed directory) and a node; B and C
run nodes that ask A's registry. B starts from a seed peer (A) and the seed
directory, C from the seed directory alone. Then: sessions and
capabilities everywhere, a signal-marker traced across, an encrypted
message A -> B acked over the sessions, a broadcast that reaches every
node's agents exactly once, and B killed and restarted: its peers see the
session lost, fresh handshakes restore it, and what was sent meanwhile
arrives. Then, over A and B alone: a task delegated from A's agent to B's
and completed, another that times out, and a consensus round with voters on
both nodes.
"""

from __future__ import annotations

import json
import signal
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from functools import partial
from pathlib import Path
from typing import Any

import anyio
import pytest
import trio

from daemon_process import Daemon, TlsFiles, free_port, run_cli
from ocpd.client import AgentKey, MessageRejected, NodeClient, ReceivedMessage, RegistryClient
from ocpd.client.collab import ConsensusRoundRunner, TaskDelegation, cast_vote
from ocpd.client.registry import build_bond
from ocpd.identity import init_identity
from ocpd.proto.crypto import SigningKey
from ocpd.proto.ids import broadcast_did

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


class Peer:
    """One daemon with fixed ports (so that a restart comes back at the same address)."""

    def __init__(self, root: Path, name: str, tls: TlsFiles, *, component: str) -> None:
        self.name = name
        self.root = root / name
        self.root.mkdir()
        self.tls = tls
        self.ports = {n: free_port() for n in ("http", "ws", "registry", "custodian")}
        identity = init_identity(self.root / "data", now=time.time())
        self.node_id = identity.node_id
        self.component = component
        self.config = self.root / "ocpd.yml"
        self.daemon = Daemon(
            self.root / "data",
            component=component,
            tls=tls,
            env={
                "OCP_CONFIG": str(self.config),
                "OCP_HTTP_PORT": str(self.ports["http"]),
                "OCP_WS_PORT": str(self.ports["ws"]),
                "OCP_REGISTRY_PORT": str(self.ports["registry"]),
                "OCP_CUSTODIAN_PORT": str(self.ports["custodian"]),
            },
        )

    @property
    def peer_url(self) -> str:
        return f"wss://127.0.0.1:{self.ports['ws']}/ocp/v1/peer"

    @property
    def ws_url(self) -> str:
        return f"wss://127.0.0.1:{self.ports['ws']}/ocp/v1/ws"

    def configure(self, text: str) -> None:
        self.config.write_text(text)

    def start(self) -> None:
        self.daemon.start()
        self.daemon.wait_ready()

    def cli(self, *args: str) -> Any:
        result = run_cli(["peer", *args], env=self.daemon.env)
        assert result.returncode == 0, result.stdout + result.stderr
        return result.stdout

    def peers(self) -> dict[str, Any]:
        return json.loads(self.cli("list", "--json"))  # type: ignore[no-any-return]

    def traces(self, event: str) -> list[dict[str, Any]]:
        return [e for e in self.daemon.events() if e.get("event/type") == event]


def agent(seed: int) -> AgentKey:
    return AgentKey(SigningKey(bytes([seed]) * 32), NETWORK)


def wait_until(check: Any, timeout: float = 30.0, what: str = "") -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return
        time.sleep(0.1)
    raise AssertionError(f"not within {timeout} s: {what}")


def connected(peer: Peer, *others: Peer) -> bool:
    sessions = {s["node_id"]: s for s in peer.peers()["sessions"]}
    return all(
        o.node_id in sessions and sessions[o.node_id]["state"] == "established" for o in others
    )


@pytest.fixture
def trio_world(tmp_path: Path) -> Iterator[tuple[Peer, Peer, Peer, TlsFiles]]:
    tls = TlsFiles(tmp_path)
    a = Peer(tmp_path, "a", tls, component="all")
    b = Peer(tmp_path, "b", tls, component="node")
    c = Peer(tmp_path, "c", tls, component="node")
    directory = f"https://127.0.0.1:{a.ports['registry']}"
    common = (
        f"transport:\n  registry_ca_file: {tls.ca_file}\n  delivery_ca_file: {tls.ca_file}\n"
        f"peering:\n  ca_file: {tls.ca_file}\n  directory_sync_seconds: 5\n"
        f"  seed_directories: [{directory}]\n"
    )
    # The agents that exchange knowledge and vote across the nodes need Level 2.
    anchors = [agent(seed).agent_id for seed in (0x51, 0x52, 0x54)]
    a.configure(common + f"trust:\n  anchors: [{', '.join(anchors)}]\n")
    b.configure(
        common + f"  seed_peers:\n    - node_id: {a.node_id}\n      address: {a.peer_url}\n"
        "      label: seed-a\n"
    )
    c.configure(common)
    for node in (b, c):
        node.daemon.env["OCP_REGISTRY_URL"] = directory
    try:
        yield a, b, c, tls
    finally:
        for node in (c, b, a):
            node.daemon.stop()


async def register(registry_url: str, tls: TlsFiles, agent: AgentKey, ws_url: str) -> None:
    async with RegistryClient(registry_url, agent, verify=tls.client_context()) as registry:
        record = registry.build_record(
            display_name="net-e2e",
            capabilities=CAPABILITIES,
            domains=["healthcare.oncology"],
            endpoints=[{"transport": "ocp-ws", "url": ws_url, "priority": 1}],
        )
        await registry.register(record)


@asynccontextmanager
async def client(
    registry_url: str, tls: TlsFiles, agent: AgentKey, node: Peer
) -> AsyncIterator[NodeClient]:
    async with RegistryClient(registry_url, agent, verify=tls.client_context()) as registry:
        sdk = NodeClient(
            agent,
            resolve_did=registry.resolve_did,
            ws_url=node.ws_url,
            verify=str(tls.ca_file),
        )
        async with sdk:
            yield sdk


async def receive_all(sdk: NodeClient, quiet: float) -> list[ReceivedMessage]:
    got: list[ReceivedMessage] = []
    while True:
        with anyio.move_on_after(quiet):
            got.append(await sdk.receive())
            continue
        return got


async def test_three_nodes_peer_carry_traffic_and_recover(
    trio_world: tuple[Peer, Peer, Peer, TlsFiles],
) -> None:
    a, b, c, tls = trio_world
    a.start()
    b.start()
    c.start()
    registry = f"https://127.0.0.1:{a.ports['registry']}"

    # Bootstrap: B from its seed peer, C from the directory; B and C find each other there.
    wait_until(lambda: connected(a, b, c), what="A peered with B and C")
    wait_until(lambda: connected(b, a, c), what="B peered with A and C")
    wait_until(lambda: connected(c, a, b), what="C peered with A and B")
    listed = b.peers()
    seed = next(s for s in listed["sessions"] if s["node_id"] == a.node_id)
    assert seed["label"] == "seed-a"
    assert "ocp/relay" in seed["capabilities"] and "core/messaging" in seed["capabilities"]
    assert b.traces("capabilities/exchanged")
    assert any(e["source"].startswith("directory:") for e in c.traces("advertisement/fetched")), (
        "C learnt its peers from the seed directory"
    )
    text = b.cli("list")
    assert "seed-a" in text and "established" in text

    # A signal-marker, traced on both sides by its marker id.
    sent = a.cli("signal", c.node_id, "--kind", "ops/hello", "--body", "hello C")
    marker_id = sent.split()[1]
    wait_until(
        lambda: any(e["marker/id"] == marker_id for e in c.traces("signal-marker/received")),
        what="the marker reached C",
    )
    received = next(e for e in c.traces("signal-marker/received") if e["marker/id"] == marker_id)
    assert received["peer"] == a.node_id and received["signal/kind"] == "ops/hello"
    assert any(e["marker/id"] == marker_id for e in a.traces("signal-marker/sent"))

    alice, bob, carol, dave = (agent(seed) for seed in (0x51, 0x52, 0x53, 0x54))
    with trio.fail_after(120):
        await register(registry, tls, alice, a.ws_url)
        await register(registry, tls, dave, a.ws_url)
        await register(registry, tls, bob, b.ws_url)
        await register(registry, tls, carol, c.ws_url)
        async with (
            client(registry, tls, alice, a) as alice_sdk,
            client(registry, tls, dave, a) as dave_sdk,
            client(registry, tls, bob, b) as bob_sdk,
            client(registry, tls, carol, c) as carol_sdk,
        ):
            for sdk in (alice_sdk, dave_sdk, bob_sdk, carol_sdk):
                await sdk.wait_connected()

            # An encrypted message from A's agent to B's, acked back the same way.
            async with trio.open_nursery() as nursery:
                got: list[ReceivedMessage] = []

                async def bob_reads() -> None:
                    got.append(await bob_sdk.receive())

                nursery.start_soon(bob_reads)
                delivery = await alice_sdk.send(
                    bob.agent_id,
                    "knowledge_share",
                    INSIGHT,
                    encrypt=True,
                    requires_ack=True,
                    transport="ws",
                )
            assert delivery.ack is not None
            assert got[0].payload == INSIGHT and got[0].encrypted
            assert "ocpd_peer_messages_total" in a.daemon.get("http", "/metrics")[1].decode()

            # A broadcast reaches every node's matching agents, each exactly once.
            message = await alice_sdk.prepare(
                broadcast_did(NETWORK), "broadcast", {"note": "to all"}
            )
            await alice_sdk.transmit(message, transport="ws")
            for sdk in (dave_sdk, bob_sdk, carol_sdk):
                copies = await receive_all(sdk, quiet=3.0)
                assert [m.message_id for m in copies] == [message["message_id"]]

            # B dies: A and C see the session lost.
            b.daemon.signal(signal.SIGKILL)
            b.daemon.wait_exit()
            wait_until(
                lambda: any(e["peer"] == b.node_id for e in a.traces("keepalive/lost")),
                what="A reports B lost",
            )
            wait_until(
                lambda: any(e["peer"] == b.node_id for e in c.traces("keepalive/lost")),
                what="C reports B lost",
            )
            # Sent while B is away: waits at A for the session to come back.
            later = await alice_sdk.prepare(bob.agent_id, "knowledge_share", INSIGHT, encrypt=True)
            await alice_sdk.transmit(later, transport="ws")
            handshakes_before = len(a.traces("handshake/accepted"))
            restarted = time.monotonic()
            b.start()
            wait_until(lambda: connected(a, b) and connected(c, b), what="sessions restored")
            restore_seconds = time.monotonic() - restarted
            assert any(e["peer"] == b.node_id for e in a.traces("keepalive/restored"))
            assert len(a.traces("handshake/accepted")) > handshakes_before
            arrived = await bob_sdk.receive()
            assert arrived.message_id == later["message_id"]
            assert arrived.payload == INSIGHT
    assert restore_seconds < 15


TASK_PERMISSIONS = {
    "knowledge_share": {"enabled": False},
    "task_delegate": {"enabled": True, "max_concurrent": 2, "timeout_seconds": 300},
    "model_delta_share": {"enabled": False},
}


async def bonded(registry_url: str, tls: TlsFiles, first: AgentKey, second: AgentKey) -> None:
    bond = build_bond(
        first.agent_id, second.agent_id, permissions=TASK_PERMISSIONS, now=time.time()
    )
    async with (
        RegistryClient(registry_url, first, verify=tls.client_context()) as mine,
        RegistryClient(registry_url, second, verify=tls.client_context()) as theirs,
    ):
        submitted = await mine.submit_bond(theirs.sign_bond(mine.sign_bond(bond)))
    assert submitted["state"] == "active"


async def test_tasks_and_a_round_across_two_peered_nodes(
    trio_world: tuple[Peer, Peer, Peer, TlsFiles],
) -> None:
    a, b, _, tls = trio_world
    a.start()
    b.start()
    registry = f"https://127.0.0.1:{a.ports['registry']}"
    wait_until(lambda: connected(a, b) and connected(b, a), what="A and B peered")
    alice, bob, dave = agent(0x51), agent(0x52), agent(0x54)
    with trio.fail_after(120):
        await register(registry, tls, alice, a.ws_url)
        await register(registry, tls, dave, a.ws_url)
        await register(registry, tls, bob, b.ws_url)
        await bonded(registry, tls, alice, bob)  # Level 3 both: tasks may flow
        async with (
            RegistryClient(registry, alice, verify=tls.client_context()) as alice_registry,
            client(registry, tls, alice, a) as alice_sdk,
            client(registry, tls, dave, a) as dave_sdk,
            client(registry, tls, bob, b) as bob_sdk,
        ):
            for sdk in (alice_sdk, dave_sdk, bob_sdk):
                await sdk.wait_connected()
            requester, worker = TaskDelegation(alice_sdk), TaskDelegation(bob_sdk)

            # A task from A's agent to B's: accepted, then completed.
            requests: list[ReceivedMessage] = []

            async def serve(complete: bool) -> None:
                request = await bob_sdk.receive()
                assert request.message_type == "task_request"
                requests.append(request)
                await worker.respond(request, "accepted")
                if complete:
                    await worker.respond(request, "completed", data={"ok": True})

            async with trio.open_nursery() as nursery:
                nursery.start_soon(serve, True)
                task_id = await requester.delegate(
                    bob.agent_id, "analysis", {"scan": "s-1"}, max_duration=120
                )
                updates = await requester.wait(task_id, limit=30)
            assert [u.status for u in updates] == ["accepted", "completed"]
            assert updates[-1].payload["result"]["data"] == {"ok": True}

            # Accepted but never completed: A, which serves the requester, says timeout
            # once; B closed the task too, so the late answer is refused there.
            async with trio.open_nursery() as nursery:
                nursery.start_soon(serve, False)
                late_id = await requester.delegate(
                    bob.agent_id, "analysis", {"scan": "s-2"}, max_duration=2
                )
                late = await requester.wait(late_id, limit=30)
            assert [u.status for u in late] == ["accepted", "timeout"]
            assert late[-1].payload["task_id"] == late_id
            assert await receive_all(alice_sdk, quiet=2.0) == []
            with pytest.raises(MessageRejected) as closed:
                await worker.respond(requests[-1], "completed", data={"ok": True})
            assert (closed.value.code, closed.value.details.get("reason")) == (
                "OCP-403",
                "task_closed",
            )

            # A round opened on A with voters on A and B; B's voter votes once.
            runner = ConsensusRoundRunner(
                alice_sdk,
                alice_registry,
                participants=[bob.agent_id, dave.agent_id],
                topic="Which scanner settings?",
                options=["keep", "change"],
                deadline=time.time() + 6,
                min_participants=2,
                threshold=0.5,
            )
            await runner.start()
            refusals: list[str | None] = []

            async def vote(sdk: NodeClient, choice: str, *, again: bool) -> None:
                initiate = await sdk.receive()
                assert initiate.message_type == "consensus_initiate"
                await cast_vote(sdk, initiate, choice, confidence=0.8, rationale="settings")
                if again:
                    with pytest.raises(MessageRejected) as second:
                        await cast_vote(sdk, initiate, "change", confidence=1.0, rationale="x")
                    refusals.append(second.value.details.get("reason"))

            async with trio.open_nursery() as nursery:
                nursery.start_soon(partial(vote, bob_sdk, "keep", again=True))
                nursery.start_soon(partial(vote, dave_sdk, "keep", again=False))
                await runner.collect()
            await trio.sleep(max(0.0, runner.round.deadline - time.time()) + 1.0)
            result = await runner.finish()
            assert refusals == ["already_voted"]
            assert (result.outcome, result.participants) == ("keep", 2)
            for sdk in (bob_sdk, dave_sdk):
                announced = await sdk.receive()
                assert announced.message_type == "consensus_result"
                assert announced.payload["outcome"] == "keep"
