"""Three federated registry daemons (real processes, TLS, SQLite) and a forging fake peer.

Ports are picked before start (peers must know each other's URLs): each is
found free by binding port 0 and releasing it. One trustme CA signs every
certificate and is each registry's ``peer_ca_file``.
"""

from __future__ import annotations

import json
import sqlite3
import ssl
import time
import urllib.request
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from functools import partial
from pathlib import Path
from typing import Any

import pytest
import trio
from prometheus_client.parser import text_string_to_metric_families

from daemon_process import Daemon, TlsFiles, free_port
from ocpd.client import AgentKey, RegistryClient
from ocpd.client.registry import build_bond
from ocpd.proto.artifacts import sign
from ocpd.proto.auth import build_authorization
from ocpd.proto.crypto import SigningKey
from ocpd.proto.encoding import format_timestamp

NETWORK = "testnet"
CAPS = [{"id": "cap:vision:imaging", "name": "Imaging", "version": "1.0"}]
ENDPOINTS = [{"transport": "ocp-ws", "url": "wss://agent.example/ocp/v1/ws", "priority": 1}]
PERMISSIONS = {
    "knowledge_share": {"enabled": True, "allowed_types": ["insight"]},
    "task_delegate": {"enabled": True, "max_concurrent": 2},
    "model_delta_share": {"enabled": False},
}
ANCHORS = [AgentKey(SigningKey(bytes([110 + i]) * 32), NETWORK) for i in range(3)]
X, Y, Z, W, V1, V2, M = (AgentKey(SigningKey(bytes([120 + i]) * 32), NETWORK) for i in range(7))


@pytest.fixture(scope="module")
def tls(tmp_path_factory: pytest.TempPathFactory) -> TlsFiles:
    return TlsFiles(tmp_path_factory.mktemp("tls"))


class Cluster:
    def __init__(self, tmp: Path, tls: TlsFiles) -> None:
        self.tls = tls
        self.ports = {name: free_port() for name in ("r1", "r2", "r3", "evil")}
        self.urls = {name: f"https://127.0.0.1:{port}" for name, port in self.ports.items()}
        peers = {
            # both spellings of a peer: the base URL and the API root
            "r1": [self.urls["r2"], self.urls["r3"] + "/ocp/v1", self.urls["evil"]],
            "r2": [self.urls["r1"] + "/ocp/v1", self.urls["r3"]],
            "r3": [self.urls["r1"], self.urls["r2"]],
        }
        self.daemons: dict[str, Daemon] = {}
        for name, peer_list in peers.items():
            config = tmp / f"{name}.yml"
            config.write_text(
                "registry:\n"
                "  mode: federated\n"
                "  sync_interval_seconds: 1\n"
                f"  peer_ca_file: {tls.ca_file}\n"
                f"  peers: [{', '.join(peer_list)}]\n"
                "trust:\n"
                f"  anchors: [{', '.join(a.agent_id for a in ANCHORS)}]\n"
                "rate_limiting:\n  enabled: false\n",
                encoding="utf-8",
            )
            self.daemons[name] = Daemon(
                tmp / name,
                component="registry",
                tls=tls,
                env={"OCP_CONFIG": str(config), "OCP_REGISTRY_PORT": str(self.ports[name])},
            )

    async def start(self, name: str) -> None:
        old = self.daemons[name]
        daemon = Daemon(old.data_dir, component="registry", tls=self.tls, env=old.env)
        self.daemons[name] = daemon
        daemon.start()
        await trio.to_thread.run_sync(daemon.wait_ready)

    def stop_all(self) -> None:
        for daemon in self.daemons.values():
            daemon.stop()

    def client(self, name: str, agent: AgentKey) -> RegistryClient:
        return RegistryClient(self.urls[name], agent, verify=self.tls.client_context())

    async def get(self, name: str, path: str) -> tuple[int, bytes]:
        status, body, _ = await trio.to_thread.run_sync(
            partial(self.daemons[name].get, "registry", path)
        )
        return status, body

    async def has(self, name: str, agent: AgentKey) -> bool:
        status, _ = await self.get(name, f"/ocp/v1/registry/agents/{agent.agent_id}")
        return status == 200

    async def view(self, name: str) -> dict[str, int]:
        """Every agent this registry holds, with its trust level (unsigned discovery)."""
        query = {"filters": {"status": "any"}, "limit": 100}
        request = urllib.request.Request(
            self.urls[name] + "/ocp/v1/registry/discover",
            data=json.dumps(query).encode(),
            headers={"Content-Type": "application/json"},
            method="POST",
        )

        def fetch() -> dict[str, Any]:
            context = self.tls.client_context()
            with urllib.request.urlopen(request, timeout=5, context=context) as response:
                found: dict[str, Any] = json.loads(response.read())
            return found

        found = await trio.to_thread.run_sync(fetch)
        return {r["agent_id"]: r["trust_level"] for r in found["results"]}

    async def metrics(self, name: str) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
        status, body = await self.get(name, "/metrics")
        assert status == 200
        samples = {}
        for family in text_string_to_metric_families(body.decode()):
            for sample in family.samples:
                samples[(sample.name, frozenset(sample.labels.items()))] = sample.value
        return samples

    def cursors(self, name: str) -> dict[str, int]:
        path = self.daemons[name].data_dir / "ocp_node.db"
        conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
        try:
            return dict(conn.execute("SELECT peer, cursor FROM federation_peers").fetchall())
        finally:
            conn.close()


async def wait_until(
    predicate: Callable[[], Awaitable[bool]], what: str, limit: float = 20
) -> float:
    """Poll ``predicate`` (remote state has no event to wait on); returns the seconds it took."""
    started = trio.current_time()
    with trio.move_on_after(limit):
        while True:
            if await predicate():
                return trio.current_time() - started
            await trio.sleep(0.02)
    raise AssertionError(f"not within {limit} s: {what}")


async def register(cluster: Cluster, name: str, agent: AgentKey) -> None:
    async with cluster.client(name, agent) as client:
        record = client.build_record(
            display_name=f"agent {agent.agent_id[-4:]}",
            capabilities=CAPS,
            domains=["finance"],
            endpoints=ENDPOINTS,
        )
        await client.register(record)


def forged_feed() -> bytes:
    """A feed whose only change registers M, with the record altered after signing."""
    record = sign(
        {
            "agent_id": M.agent_id,
            "display_name": "genuine",
            "version": "1.0.0",
            "capabilities": CAPS,
            "domains": ["finance"],
            "endpoints": ENDPOINTS,
            "status": "active",
            "registered_at": format_timestamp(time.time()),
            "ttl": 86_400,
        },
        M.key,
    )
    raw = json.dumps({"record": record, "did_document": M.did_document()}).encode()
    header = build_authorization(
        M.key,
        agent_id=M.agent_id,
        method="POST",
        path_and_query="/ocp/v1/registry/agents",
        body=raw,
        now=time.time(),
    )
    record = dict(record, display_name="genuinf")  # one bit flipped after signing
    body = {
        "record": record,
        "did_document": M.did_document(),
        "registration": {
            "path": "/ocp/v1/registry/agents",
            "authorization": header,
            "body": raw.decode(),
        },
    }
    return json.dumps({"changes": [{"seq": 1, "kind": "agent", "body": body}]}).encode()


async def serve_fake_peer(
    port: int, tls: TlsFiles, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
) -> None:
    """A registry impostor over HTTPS: its feed holds one forged record."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(str(tls.cert), str(tls.key))
    feed = json.loads(forged_feed())

    async def handle(stream: trio.SSLStream[trio.SocketStream]) -> None:
        try:
            data = b""
            while b"\r\n\r\n" not in data:
                chunk = await stream.receive_some(65536)
                if not chunk:
                    return
                data += chunk
            head, _, rest = data.partition(b"\r\n\r\n")
            lines = head.decode("latin-1").split("\r\n")
            method, target, _ = lines[0].split(" ", 2)
            headers = {
                k.strip().lower(): v.strip() for k, _, v in (h.partition(":") for h in lines[1:])
            }
            while len(rest) < int(headers.get("content-length", "0")):
                rest += await stream.receive_some(65536)
            if method == "GET" and target.startswith("/ocp/v1/registry/sync"):
                since = int(target.partition("since=")[2].partition("&")[0] or 0)
                page = feed["changes"] if since < 1 else []
                body = json.dumps({"changes": page, "cursor": max(since, 1), "more": False})
                status = "200 OK"
            elif method == "POST":
                body, status = '{"status":"accepted"}', "202 Accepted"
            else:
                body, status = "{}", "404 Not Found"
            payload = body.encode()
            await stream.send_all(
                f"HTTP/1.1 {status}\r\nContent-Type: application/json\r\n"
                f"Content-Length: {len(payload)}\r\nConnection: close\r\n\r\n".encode()
                + payload
            )
            await stream.aclose()
        except (trio.BrokenResourceError, trio.ClosedResourceError, ssl.SSLError, ValueError):
            return

    await trio.serve_ssl_over_tcp(
        handle, port, context, host="127.0.0.1", https_compatible=True, task_status=task_status
    )


async def test_three_registries_converge(tmp_path: Path, tls: TlsFiles) -> None:
    cluster = Cluster(tmp_path, tls)
    try:
        with trio.fail_after(180):
            async with trio.open_nursery() as nursery:
                await nursery.start(serve_fake_peer, cluster.ports["evil"], tls)
                await _scenario(cluster)
                nursery.cancel_scope.cancel()
    finally:
        await trio.to_thread.run_sync(cluster.stop_all)


async def _scenario(cluster: Cluster) -> None:
    for name in ("r1", "r2", "r3"):
        cluster.daemons[name].start()
    for name in ("r1", "r2", "r3"):
        await trio.to_thread.run_sync(cluster.daemons[name].wait_ready)
    urls = cluster.urls

    async def everyone_synced() -> bool:
        for name in ("r1", "r2", "r3"):
            samples = await cluster.metrics(name)
            synced = {
                dict(labels)["peer"]
                for (metric, labels) in samples
                if metric == "ocpd_federation_last_sync_timestamp_seconds"
            }
            if not {urls[o] for o in ("r1", "r2", "r3") if o != name} <= synced:
                return False
        return True

    await wait_until(everyone_synced, "every registry pulled from its peers once")

    # agents register at different registries
    for name, agent in (("r1", ANCHORS[0]), ("r2", ANCHORS[1]), ("r3", ANCHORS[2])):
        await register(cluster, name, agent)
    for name, agent in (("r1", X), ("r2", Y), ("r3", Z)):
        await register(cluster, name, agent)

    # propagation time of one new registration to the two other registries
    started = trio.current_time()
    await register(cluster, "r2", W)
    elapsed = await wait_until(
        lambda: _all(cluster.has("r1", W), cluster.has("r3", W)), "W everywhere", limit=10
    )
    total = trio.current_time() - started
    stored_at = {name: _stored_at(cluster.daemons[name], W) for name in ("r1", "r2", "r3")}
    spread = max(stored_at["r1"], stored_at["r3"]) - stored_at["r2"]
    print(
        f"\nfederation: a registration stored at r2 was stored at r1 and r3 "
        f"{spread * 1000:.0f} ms later (logs); seen by polling after {total * 1000:.0f} ms"
    )
    assert elapsed <= 10

    everyone = [*ANCHORS, X, Y, Z, W]

    async def all_hold(agents: list[AgentKey]) -> bool:
        for name in ("r1", "r2", "r3"):
            for agent in agents:
                if not await cluster.has(name, agent):
                    return False
        return True

    await wait_until(partial(all_hold, everyone), "every agent at every registry")

    # vouches at three registries, a bond at a fourth place
    vouches = {}
    for name, anchor in (("r1", ANCHORS[0]), ("r2", ANCHORS[1]), ("r3", ANCHORS[2])):
        async with cluster.client(name, anchor) as client:
            vouches[name] = (await client.vouch(X.agent_id))["vouch"]
    bond = build_bond(X.agent_id, ANCHORS[0].agent_id, permissions=PERMISSIONS, now=time.time())
    async with cluster.client("r3", ANCHORS[0]) as a0, cluster.client("r3", X) as x:
        bond = a0.sign_bond(x.sign_bond(bond))
        await a0.submit_bond(bond)

    async def converged(level: int, agents: list[AgentKey]) -> bool:
        views = [await cluster.view(name) for name in ("r1", "r2", "r3")]
        expected = {a.agent_id for a in agents}
        return all(set(v) == expected and v[X.agent_id] == level for v in views) and (
            views[0] == views[1] == views[2]
        )

    await wait_until(partial(converged, 3, everyone), "X at Level 3 everywhere")

    # r3 stops; changes happen elsewhere; r3 comes back on the same data
    await trio.to_thread.run_sync(cluster.daemons["r3"].signal)
    assert await trio.to_thread.run_sync(cluster.daemons["r3"].wait_exit) == 0
    before = cluster.cursors("r3")
    assert before[urls["r1"]] > 0 and before[urls["r2"]] > 0
    await register(cluster, "r1", V1)
    await register(cluster, "r2", V2)
    async with cluster.client("r1", ANCHORS[0]) as a0:
        await a0.revoke_vouch(vouches["r1"])
    await cluster.start("r3")
    everyone += [V1, V2]
    await wait_until(partial(converged, 1, everyone), "r3 caught up after its restart")
    after = cluster.cursors("r3")
    assert after[urls["r1"]] > before[urls["r1"]]
    first_pull = next(
        e
        for e in cluster.daemons["r3"].events()
        if e.get("event") == "federation_synced" and e.get("peer") == urls["r1"]
    )
    assert first_pull["since"] == before[urls["r1"]], "r3 pulled r1's feed from the start again"
    started_event = next(
        e for e in cluster.daemons["r3"].events() if e.get("event") == "federation_started"
    )
    assert started_event["cursors"][urls["r1"]] == before[urls["r1"]]

    # the forged record: rejected by r1, counted, and nowhere to be found
    samples = await cluster.metrics("r1")
    rejected = samples.get(
        (
            "ocpd_federation_rejected_total",
            frozenset({("peer", urls["evil"]), ("kind", "agent")}),
        ),
        0.0,
    )
    assert rejected >= 1
    for name in ("r1", "r2", "r3"):
        assert not await cluster.has(name, M)
        assert M.agent_id not in await cluster.view(name)
    warnings = [
        e
        for e in cluster.daemons["r1"].events()
        if e.get("event") == "federation_rejected" and e.get("peer") == urls["evil"]
    ]
    assert warnings and warnings[0]["error_code"] == "OCP-401" and warnings[0]["kind"] == "agent"
    assert not any("genuin" in line for line in cluster.daemons["r1"].lines)


def _stored_at(daemon: Daemon, agent: AgentKey) -> float:
    """When ``daemon`` logged that it stored ``agent``'s record (epoch seconds)."""
    event = next(
        e
        for e in daemon.events()
        if e.get("event") == "agent_registered" and e.get("agent_id") == agent.agent_id
    )
    stamp = datetime.strptime(event["timestamp"], "%Y-%m-%dT%H:%M:%S.%fZ").replace(tzinfo=UTC)
    return stamp.timestamp()


async def _all(*checks: Awaitable[bool]) -> bool:
    results = [await check for check in checks]
    return all(results)
