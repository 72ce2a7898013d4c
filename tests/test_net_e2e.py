"""Node networking end to end: three real daemons over TLS, bootstrapped and peered.

A runs the registry (which is also the seed directory) and a node; B and C
run nodes that ask A's registry. B starts from a seed peer (A) and the seed
directory, C from the seed directory alone. Then: sessions and
capabilities everywhere, a signal-marker traced across, an encrypted
message A -> B acked over the sessions, a broadcast that reaches every
node's agents exactly once, and B killed and restarted: its peers see the
session lost, fresh handshakes restore it, and what was sent meanwhile
arrives.
"""

from __future__ import annotations

import json
import signal
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import anyio
import pytest
import trio

from daemon_process import Daemon, TlsFiles, free_port, run_cli
from ocpd.client import AgentKey, NodeClient, ReceivedMessage, RegistryClient
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
    # The agents that exchange knowledge across the nodes need Level 2.
    anchors = [AgentKey(SigningKey(bytes([seed]) * 32), NETWORK).agent_id for seed in (0x51, 0x52)]
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

    alice = AgentKey(SigningKey(b"\x51" * 32), NETWORK)
    bob = AgentKey(SigningKey(b"\x52" * 32), NETWORK)
    carol = AgentKey(SigningKey(b"\x53" * 32), NETWORK)
    dave = AgentKey(SigningKey(b"\x54" * 32), NETWORK)
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
