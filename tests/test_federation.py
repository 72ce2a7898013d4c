"""Federation rules with in-process registries: real SQLite, Quart apps, httpx in memory.

Each :class:`Node` is one registry (its own database, ledger, metrics and
app); :class:`Hosts` routes httpx requests to the node whose host they name,
serves hand-made feeds for fake peers, and can take hosts down. Most tests
drive :meth:`Federation.pull` directly; the push tests run the service.
"""

from __future__ import annotations

import copy
import json
import sqlite3
import ssl
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import httpx
import pytest
import trio
import trio.testing
from quart_trio import QuartTrio

from ocpd.client import AgentKey, CertifierKey
from ocpd.client.registry import build_bond
from ocpd.clock import WallClock
from ocpd.config import load_config
from ocpd.proto.artifacts import sign, sign_bond, vouch_digest
from ocpd.proto.auth import build_authorization
from ocpd.proto.crypto import SigningKey
from ocpd.proto.diddoc import rotate_did_document, sign_did_update
from ocpd.proto.encoding import format_timestamp
from ocpd.proto.ids import format_node_id
from ocpd.registry.federation import Federation, Peer, peer_base_url
from ocpd.registry.intake import Change
from ocpd.registry.service import API, RegistryService
from ocpd.storage import StorageError, open_database
from ocpd.web import ComponentState, Metrics, create_app

NETWORK = "testnet"
TIMEOUT = 30
CAPS = [{"id": "cap:vision:imaging", "name": "Imaging", "version": "1.0"}]
ENDPOINTS = [{"transport": "ocp-ws", "url": "wss://agent.example/ocp/v1/ws", "priority": 1}]
PERMISSIONS = {
    "knowledge_share": {"enabled": True, "allowed_types": ["insight"]},
    "task_delegate": {"enabled": True, "max_concurrent": 2},
    "model_delta_share": {"enabled": False},
}
ANCHORS = [AgentKey(SigningKey(bytes([60 + i]) * 32), NETWORK) for i in range(3)]
X, Y, Z = (AgentKey(SigningKey(bytes([70 + i]) * 32), NETWORK) for i in range(3))
MALLORY = AgentKey(SigningKey(bytes([90]) * 32), NETWORK)
CERTIFIER = CertifierKey(SigningKey(bytes([95]) * 32))


# --- in-memory network --------------------------------------------------------------------


Feed = Callable[[httpx.Request], httpx.Response]


class Hosts(httpx.AsyncBaseTransport):
    def __init__(self) -> None:
        self.apps: dict[str, QuartTrio] = {}
        self.feeds: dict[str, Feed] = {}
        self.down: set[str] = set()
        self.log: list[tuple[str, str, str]] = []

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        host = request.url.host
        target = request.url.raw_path.decode("ascii")
        self.log.append((host, request.method, target))
        if host in self.down or (host not in self.apps and host not in self.feeds):
            raise httpx.ConnectError(f"{host} is down", request=request)
        if host in self.feeds:
            return self.feeds[host](request)
        body = await request.aread()
        headers = {k: v for k, v in request.headers.items() if k.lower() != "host"}
        client = self.apps[host].test_client()
        response = await client.open(target, method=request.method, headers=headers, data=body)
        return httpx.Response(
            response.status_code,
            headers=list(response.headers.items()),
            content=await response.get_data(),
            request=request,
        )


def static_feed(
    changes: list[dict[str, Any]], *, node_id: str | None = None, epoch: str | None = None
) -> Feed:
    """A fake peer's feed: ``changes`` with seq 1, 2, … served after ``since``."""
    numbered = [{"seq": i, "kind": c["kind"], "body": c["body"]} for i, c in enumerate(changes, 1)]

    def serve(request: httpx.Request) -> httpx.Response:
        if request.method == "POST":
            return httpx.Response(202, json={"status": "accepted"})
        since = int(request.url.params.get("since", "0"))
        page = [c for c in numbered if c["seq"] > since]
        cursor = page[-1]["seq"] if page else since
        headers = {"OCP-Node-Id": node_id} if node_id else {}
        if epoch is not None:
            headers["OCP-Feed-Epoch"] = epoch
        return httpx.Response(
            200, json={"changes": page, "cursor": cursor, "more": False}, headers=headers
        )

    return serve


class Node:
    """One registry: database, service, federation, app."""

    def __init__(self, name: str, service: RegistryService, federation: Federation) -> None:
        self.name = name
        self.url = f"https://{name}.test"
        self.service = service
        self.federation = federation
        self.app: QuartTrio
        self.metrics: Metrics

    @property
    def path(self) -> Path:
        return self.service.database.path

    def peer(self, name: str) -> Peer:
        return next(p for p in self.federation.peers if p.base == f"https://{name}.test")

    async def pull(self, name: str) -> Any:
        return await self.federation.pull(self.peer(name))

    def rows(self, sql: str, *args: object) -> list[Any]:
        conn = sqlite3.connect(f"file:{self.path}?mode=ro", uri=True)
        try:
            return conn.execute(sql, args).fetchall()
        finally:
            conn.close()

    def change_count(self) -> int:
        return int(self.rows("SELECT count(*) FROM changes")[0][0])

    def kinds(self) -> list[str]:
        return [k for (k,) in self.rows("SELECT kind FROM changes ORDER BY seq")]

    def metric(self, name: str, **labels: str) -> float:
        return self.metrics.registry.get_sample_value(name, labels) or 0.0

    async def post(
        self, agent: AgentKey, path: str, body: Any, *, at: float | None = None
    ) -> tuple[int, Any]:
        data = json.dumps(body).encode()
        header = build_authorization(
            agent.key,
            agent_id=agent.agent_id,
            method="POST",
            path_and_query=API + path,
            body=data,
            now=time.time() if at is None else at,
        )
        response = await self.app.test_client().post(
            API + path,
            data=data,
            headers={"Authorization": header, "Content-Type": "application/json"},
        )
        return response.status_code, json.loads(await response.get_data())

    async def get(self, path: str) -> tuple[int, Any]:
        response = await self.app.test_client().get(API + path)
        return response.status_code, json.loads(await response.get_data())

    async def register(self, agent: AgentKey, **kw: Any) -> dict[str, Any]:
        rec = record(agent, **kw)
        status, body = await self.post(
            agent, "/agents", {"record": rec, "did_document": agent.did_document()}
        )
        assert status in (200, 201), body
        return rec

    async def vouch(self, attester: AgentKey, subject: AgentKey) -> dict[str, Any]:
        vouch = make_vouch(attester, subject)
        status, body = await self.post(attester, "/vouches", vouch)
        assert status == 201, body
        return vouch

    def level(self, agent: AgentKey) -> int:
        return self.service.ledger.level(agent.agent_id)


def record(agent: AgentKey, *, now: float | None = None, name: str = "agent") -> dict[str, Any]:
    return sign(
        {
            "agent_id": agent.agent_id,
            "display_name": name,
            "version": "1.0.0",
            "capabilities": CAPS,
            "domains": ["finance"],
            "endpoints": ENDPOINTS,
            "status": "active",
            "registered_at": format_timestamp(time.time() if now is None else now),
            "ttl": 86_400,
        },
        agent.key,
    )


def make_vouch(
    attester: AgentKey, subject: AgentKey, *, key: SigningKey | None = None
) -> dict[str, Any]:
    now = time.time()
    return sign(
        {
            "vouch_type": "endorsement",
            "attester": attester.agent_id,
            "subject": subject.agent_id,
            "level": "vouch",
            "issued_at": format_timestamp(now),
            "expires_at": format_timestamp(now + 86_400),
        },
        key or attester.key,
    )


def registration_proof(
    agent: AgentKey, document: dict[str, Any], rec: dict[str, Any], key: SigningKey
) -> dict[str, Any]:
    """What a registry keeps of a first registration made with ``key``."""
    raw = json.dumps({"record": rec, "did_document": document}).encode()
    header = build_authorization(
        key,
        agent_id=agent.agent_id,
        method="POST",
        path_and_query=f"{API}/agents",
        body=raw,
        now=time.time(),
    )
    return {"path": f"{API}/agents", "authorization": header, "body": raw.decode()}


async def post_as(node: Node, key: SigningKey, agent: AgentKey, body: Any) -> tuple[int, Any]:
    """A registration of ``agent`` whose Authorization is made with ``key``."""
    data = json.dumps(body).encode()
    header = build_authorization(
        key,
        agent_id=agent.agent_id,
        method="POST",
        path_and_query=f"{API}/agents",
        body=data,
        now=time.time(),
    )
    response = await node.app.test_client().post(
        f"{API}/agents", data=data, headers={"Authorization": header}
    )
    return response.status_code, json.loads(await response.get_data())


@pytest.fixture
async def network(tmp_path: Path, nursery: trio.Nursery) -> AsyncIterator[Callable[..., Any]]:
    hosts = Hosts()
    databases = []

    async def start(name: str, peers: list[str], *, run: bool = False, interval: int = 1) -> Node:
        config_file = tmp_path / f"{name}.yml"
        config_file.write_text(
            f"node:\n  network: {NETWORK}\n"
            f"registry:\n  mode: federated\n  sync_interval_seconds: {interval}\n"
            f"  peers: [{', '.join(peers)}]\n"
            f"trust:\n  anchors: [{', '.join(a.agent_id for a in ANCHORS)}]\n"
            f"  certifier_keys: [{CERTIFIER.multibase}]\n"
            "rate_limiting:\n  enabled: false\n",
            encoding="utf-8",
        )
        config, _ = load_config(config_file, environ={})
        database = await open_database(tmp_path / name / "registry.db", "registry")
        databases.append(database)
        nursery.start_soon(database.run)
        metrics = Metrics()
        send, receive = trio.open_memory_channel[Change](64)
        node_id = format_node_id(SigningKey(name.encode().ljust(32, b"\0")).public_key)
        service = RegistryService(
            database, WallClock(), config, metrics.registry, changes=send, node_id=node_id
        )
        await nursery.start(service.run)
        federation = Federation(
            service.store,
            database,
            config,
            WallClock(),
            metrics.registry,
            changes=receive,
            node_id=node_id,
            client=httpx.AsyncClient(transport=hosts),
        )
        node = Node(name, service, federation)
        node.metrics = metrics
        state = ComponentState(
            component="registry",
            network=NETWORK,
            database=database,
            data_dir=tmp_path,
            metrics=metrics,
            started_at=trio.current_time(),
            min_free_disk_bytes=0,
            min_available_memory_bytes=0,
        )
        node.app = create_app("registry", [state], installers=[service.install, federation.install])
        hosts.apps[f"{name}.test"] = node.app
        if run:
            await nursery.start(federation.run)
        else:
            await federation._load()
            federation.loaded.set()
        return node

    start.hosts = hosts  # type: ignore[attr-defined]
    yield start
    for database in databases:
        database.close()


async def seed(node: Node) -> None:
    """Anchors, X vouched to Level 2 by them, a bond X-A0, a rating and a revocation."""
    for anchor in ANCHORS:
        await node.register(anchor)
    await node.register(X)
    await node.register(Y)
    vouches = [await node.vouch(anchor, X) for anchor in ANCHORS]
    bond = build_bond(X.agent_id, ANCHORS[0].agent_id, permissions=PERMISSIONS, now=time.time())
    bond = sign_bond(sign_bond(bond, X.key, X.agent_id), ANCHORS[0].key, ANCHORS[0].agent_id)
    status, body = await node.post(X, "/bonds", bond)
    assert status == 201, body
    rating = sign(
        {
            "rating_type": "interaction",
            "rater": ANCHORS[1].agent_id,
            "subject": X.agent_id,
            "rating": 0.75,
            "rated_at": format_timestamp(time.time()),
        },
        ANCHORS[1].key,
    )
    assert (await node.post(ANCHORS[1], "/interactions", rating))[0] == 201
    assert len(vouches) == 3
    for_y = await node.vouch(ANCHORS[0], Y)
    revocation = sign(
        {
            "revocation_type": "vouch",
            "attester": ANCHORS[0].agent_id,
            "subject": Y.agent_id,
            "vouch_digest": vouch_digest(for_y),
            "revoked_at": format_timestamp(time.time()),
        },
        ANCHORS[0].key,
    )
    assert (await node.post(ANCHORS[0], "/vouches/revocations", revocation))[0] == 200


# --- tests ------------------------------------------------------------------------------------


def test_peer_urls_with_or_without_the_api_root() -> None:
    assert peer_base_url("https://r.example:8422") == "https://r.example:8422"
    assert peer_base_url("https://r.example:8422/") == "https://r.example:8422"
    assert peer_base_url("https://r.example/ocp/v1") == "https://r.example"
    assert peer_base_url("https://r.example/ocp/v1/registry/") == "https://r.example"
    assert peer_base_url("https://r.example/org-b/ocp/v1") == "https://r.example/org-b"


async def test_a_feed_is_copied_exactly_and_levels_follow(network: Any) -> None:
    with trio.fail_after(TIMEOUT):
        a = await network("a", ["https://b.test"])
        b = await network("b", ["https://a.test"])
        await seed(a)
        tally = await b.pull("a")
        assert tally.rejected == 0 and tally.deferred == 0
        assert tally.stored == a.change_count()
        assert b.kinds() == a.kinds()
        assert b.level(X) == a.level(X) == 3 and b.level(Y) == a.level(Y) == 1
        assert b.metric("ocpd_federation_ingested_total", peer="https://a.test", kind="vouch") == 4
        assert b.metric("ocpd_federation_cursor", peer="https://a.test") == a.change_count()
        # every change at B came from A: the documents, proofs and artifacts agree
        assert b.rows("SELECT agent_id, did_document FROM agents ORDER BY 1") == a.rows(
            "SELECT agent_id, did_document FROM agents ORDER BY 1"
        )
        _, trust = await b.get(f"/agents/{X.agent_id}/trust")
        assert trust["trust_level"] == 3 and trust["components"]["interaction_reputation"] == 0.75


async def test_reingesting_changes_nothing(network: Any) -> None:
    with trio.fail_after(TIMEOUT):
        a = await network("a", ["https://b.test"])
        b = await network("b", ["https://a.test"])
        await seed(a)
        await b.pull("a")
        count_a, count_b = a.change_count(), b.change_count()
        # A pulls B's copy of its own changes: all duplicates, no new rows
        echo = await a.pull("b")
        assert echo.stored == 0 and echo.unchanged == count_b and echo.rejected == 0
        # B pulls everything again from 0
        b.peer("a").cursor = 0
        again = await b.pull("a")
        assert again.stored == 0 and again.unchanged == count_a
        assert (a.change_count(), b.change_count()) == (count_a, count_b)


async def test_forgeries_are_rejected_counted_and_never_passed_on(network: Any) -> None:
    with trio.fail_after(TIMEOUT):
        hosts = network.hosts
        a = await network("a", ["https://b.test"])
        b = await network("b", ["https://a.test", "https://evil.test"])
        c = await network("c", ["https://b.test"])
        await seed(a)
        await b.pull("a")  # B holds all of A's data but Z
        b_before = b.change_count()
        await a.register(Z)
        _, feed = await a.get("/sync?since=0&limit=1000")
        genuine = {c["kind"]: c for c in reversed(feed["changes"])}  # the first of each kind
        z_change = next(
            c
            for c in feed["changes"]
            if c["kind"] == "agent" and c["body"]["record"]["agent_id"] == Z.agent_id
        )
        forged = []
        # a new agent whose record was altered after signing (bit flip)
        flipped = copy.deepcopy(z_change)
        flipped["body"]["record"]["display_name"] = "agenu"
        forged.append(flipped)
        # a record for Z signed with Mallory's key
        wrong_key = copy.deepcopy(z_change)
        wrong_key["body"]["record"] = sign(
            {k: v for k, v in z_change["body"]["record"].items() if k != "signature"}, MALLORY.key
        )
        forged.append(wrong_key)
        # Z's registration proof replaced by one made with another key (the
        # document lists Mallory's key too): the document is not Z's word
        document = copy.deepcopy(Z.did_document())
        hijack = copy.deepcopy(z_change)
        hijack["body"]["registration"] = registration_proof(
            Z, document, z_change["body"]["record"], MALLORY.key
        )
        forged.append(hijack)
        # a newer record for X (known at B) that X never signed
        x_change = next(
            c
            for c in feed["changes"]
            if c["kind"] == "agent" and c["body"]["record"]["agent_id"] == X.agent_id
        )
        newer_x = copy.deepcopy(x_change)
        newer_x["body"]["record"]["registered_at"] = format_timestamp(time.time() + 1)
        forged.append(newer_x)
        # a vouch with its subject changed, a bond with altered permissions,
        # a revocation signed by the wrong agent, a rating with its value changed
        vouch = copy.deepcopy(genuine["vouch"])
        vouch["body"]["subject"] = Y.agent_id
        forged.append(vouch)
        bond = copy.deepcopy(genuine["bond"])
        bond["body"]["permissions"]["task_delegate"]["max_concurrent"] = 50
        forged.append(bond)
        revocation = copy.deepcopy(genuine["vouch_revocation"])
        revocation["body"] = sign(
            {k: v for k, v in revocation["body"].items() if k != "signature"}, X.key
        )
        forged.append(revocation)
        rating = copy.deepcopy(genuine["rating"])
        rating["body"]["rating"] = 0.0
        forged.append(rating)
        # the fake peer serves only forgeries
        hosts.feeds["evil.test"] = static_feed(forged)
        evil = next(p for p in b.federation.peers if p.label == "https://evil.test")
        tally = await b.federation.pull(evil)
        assert tally.stored == 0 and tally.rejected == len(forged), tally
        counted = {
            kind: b.metric("ocpd_federation_rejected_total", peer="https://evil.test", kind=kind)
            for kind in ("agent", "vouch", "bond", "vouch_revocation", "rating")
        }
        assert counted == {"agent": 4, "vouch": 1, "bond": 1, "vouch_revocation": 1, "rating": 1}
        assert b.rows("SELECT rejected FROM federation_peers WHERE peer = 'https://evil.test'") == [
            (len(forged),)
        ]
        assert b.change_count() == b_before
        assert b.rows("SELECT count(*) FROM agents WHERE agent_id = ?", Z.agent_id) == [(0,)]
        # Z arrives intact from A
        await b.pull("a")
        assert b.rows("SELECT record FROM agents WHERE agent_id = ?", Z.agent_id)[0][0] == (
            json.dumps(z_change["body"]["record"], separators=(",", ":"), ensure_ascii=False)
        )
        assert (await b.get(f"/agents/{X.agent_id}/trust"))[1]["components"][
            "interaction_reputation"
        ] == 0.75
        # what C learns from B has none of it
        tally_c = await c.pull("b")
        assert tally_c.rejected == 0 and c.kinds() == b.kinds()


async def test_the_newest_valid_record_wins_everywhere(network: Any) -> None:
    with trio.fail_after(TIMEOUT):
        a = await network("a", ["https://b.test"])
        b = await network("b", ["https://a.test"])
        now = time.time()
        await a.register(X, now=now - 100, name="old")
        await b.register(X, now=now - 10, name="new")
        await b.pull("a")  # the older record arrives later: ignored
        assert b.service.ledger.agents[X.agent_id].record["display_name"] == "new"
        assert b.kinds() == ["agent"]
        await a.pull("b")
        assert a.service.ledger.agents[X.agent_id].record["display_name"] == "new"
        # same registered_at, different content: the larger digest wins on both
        await a.register(Y, now=now, name="one")
        await b.register(Y, now=now, name="two")
        await b.pull("a")
        await a.pull("b")
        names = {n.name: n.service.ledger.agents[Y.agent_id].record["display_name"] for n in (a, b)}
        assert names["a"] == names["b"]
        # an older record than the stored one is refused over HTTP as before
        status, body = await a.post(
            X, "/agents", {"record": record(X, now=now - 50), "did_document": X.did_document()}
        )
        assert status == 400 and body["details"]["reason"] == "stale"


async def test_a_first_registration_must_be_made_with_the_initial_key(network: Any) -> None:
    with trio.fail_after(TIMEOUT):
        a = await network("a", ["https://b.test"])
        # a document naming X's key and Mallory's, registered by Mallory
        doc = rotate_did_document(X.did_document(), MALLORY.key.public_key, now=time.time())
        rec = sign({k: v for k, v in record(X).items() if k != "signature"}, MALLORY.key)
        status, body = await a.post(MALLORY, "/agents", {"record": rec, "did_document": doc})
        assert status == 401, body
        status, body = await post_as(a, MALLORY.key, X, {"record": rec, "did_document": doc})
        assert status == 401 and body["error_code"] == "OCP-401"
        assert a.change_count() == 0


async def test_a_rotated_document_travels_with_its_proof_and_updates(network: Any) -> None:
    with trio.fail_after(TIMEOUT):
        a = await network("a", ["https://b.test", "https://c.test"])
        b = await network("b", ["https://a.test"])
        c = await network("c", ["https://a.test"])
        await a.register(X, now=time.time() - 5)
        # rotate to a new key, retiring #key-1
        new_key = SigningKey(bytes([77]) * 32)
        rotated = rotate_did_document(
            X.did_document(), new_key.public_key, now=time.time(), retire=[f"{X.agent_id}#key-1"]
        )
        update = sign_did_update(rotated, X.key, signer=f"{X.agent_id}#key-1", now=time.time())
        status, body = await a.post(X, f"/agents/{X.agent_id}/did", update)
        assert status == 200, body
        newer = sign({k: v for k, v in record(X).items() if k != "signature"}, new_key)
        status, body = await post_as(a, new_key, X, {"record": newer, "did_document": rotated})
        assert status == 200, body
        assert a.kinds() == ["agent", "did_update", "agent"]
        # B follows the whole feed; C sees only the last change (the cursor
        # starts past the others): the proof and the update chain suffice
        await b.pull("a")
        c.peer("a").cursor = 2
        tally = await c.pull("a")
        assert tally.stored == 1 and tally.rejected == 0
        for node in (b, c):
            entry = node.service.ledger.agents[X.agent_id]
            assert entry.document.document == rotated and entry.record == newer
        # an old record signed by the retired key is no forgery, and not taken
        await c.pull("a")
        c.peer("a").cursor = 0
        replay = await c.pull("a")
        assert replay.rejected == 0 and replay.stored == 0
        assert c.service.ledger.agents[X.agent_id].record == newer
        # over HTTP, a first registration cannot be made with a rotated document:
        # nothing there shows that #key-1 handed over to the new key
        d = await network("d", ["https://a.test"])
        status, body = await post_as(d, new_key, X, {"record": newer, "did_document": rotated})
        assert status == 401 and "#key-1" in body["message"]


async def test_out_of_order_changes_are_parked_and_retried(network: Any) -> None:
    with trio.fail_after(TIMEOUT):
        hosts = network.hosts
        a = await network("a", ["https://b.test"])
        b = await network("b", ["https://a.test", "https://mixed.test"])
        await a.register(X, now=time.time() - 5)
        key2, key3 = SigningKey(bytes([78]) * 32), SigningKey(bytes([79]) * 32)
        doc2 = rotate_did_document(X.did_document(), key2.public_key, now=time.time())
        u1 = sign_did_update(doc2, X.key, signer=f"{X.agent_id}#key-1", now=time.time())
        assert (await a.post(X, f"/agents/{X.agent_id}/did", u1))[0] == 200
        doc3 = rotate_did_document(
            doc2, key3.public_key, now=time.time() + 1, retire=[f"{X.agent_id}#key-1"]
        )
        u2 = sign_did_update(doc3, key2, signer=f"{X.agent_id}#key-2", now=time.time() + 1)
        _, feed = await a.get("/sync?since=0")
        agent_change = feed["changes"][0]
        # a feed that names the second update first, then the agent, then the first
        hosts.feeds["mixed.test"] = static_feed(
            [
                {"kind": "did_update", "body": {"agent_id": X.agent_id, "update": u2}},
                agent_change,
                {"kind": "did_update", "body": {"agent_id": X.agent_id, "update": u1}},
            ]
        )
        mixed = next(p for p in b.federation.peers if p.label == "https://mixed.test")
        tally = await b.federation.pull(mixed)
        assert (tally.stored, tally.deferred, tally.rejected) == (2, 1, 0)
        assert b.rows("SELECT seq, kind FROM federation_parked") == [(1, "did_update")]
        assert b.metric("ocpd_federation_parked") == 1
        # the cursor moved past the parked change: it is retried from the table
        assert b.rows("SELECT cursor FROM federation_peers WHERE peer = 'https://mixed.test'") == [
            (3,)
        ]
        await b.federation.retry_parked()
        assert b.rows("SELECT count(*) FROM federation_parked") == [(0,)]
        assert b.service.ledger.agents[X.agent_id].document.document == doc3
        assert b.metric("ocpd_federation_parked") == 0
        # the update chain is kept in order for the next registry
        assert [
            d for (d,) in b.rows("SELECT updated_at FROM did_updates ORDER BY rowid")
        ] == sorted(d for (d,) in b.rows("SELECT updated_at FROM did_updates"))


async def test_the_cursor_moves_only_after_the_changes_are_committed(network: Any) -> None:
    with trio.fail_after(TIMEOUT):
        a = await network("a", ["https://b.test"])
        b = await network("b", ["https://a.test"])
        await seed(a)
        store = b.service.store
        real_ingest = store.ingest
        calls = 0

        async def failing(kind: str, body: object, *, origin: str) -> Any:
            nonlocal calls
            calls += 1
            if calls == 4:
                raise StorageError("disk full")
            return await real_ingest(kind, body, origin=origin)

        store.ingest = failing  # type: ignore[method-assign]
        with pytest.raises(StorageError):
            await b.pull("a")
        assert b.rows("SELECT cursor FROM federation_peers") == []
        assert b.peer("a").cursor == 0
        assert b.change_count() == 3  # what was applied before the failure stays applied
        store.ingest = real_ingest  # type: ignore[method-assign]
        tally = await b.pull("a")
        assert tally.unchanged == 3 and tally.stored == a.change_count() - 3
        assert b.rows("SELECT cursor FROM federation_peers") == [(a.change_count(),)]


async def test_vouches_from_peers_count_only_once_the_attester_is_level_2(network: Any) -> None:
    with trio.fail_after(TIMEOUT):
        a = await network("a", ["https://b.test"])
        b = await network("b", ["https://a.test", "https://fake.test"])
        for agent in (*ANCHORS, X, Y, Z):
            await a.register(agent)
        await b.pull("a")
        _, feed = await a.get("/sync?since=0")
        # Y (Level 1) vouches for Z; a peer forwards it: stored, not counted
        hosts = network.hosts
        hosts.feeds["fake.test"] = static_feed([{"kind": "vouch", "body": make_vouch(Y, Z)}])
        fake = next(p for p in b.federation.peers if p.label == "https://fake.test")
        tally = await b.federation.pull(fake)
        assert tally.stored == 1
        _, trust = await b.get(f"/agents/{Z.agent_id}/trust")
        assert trust["trust_level"] == 1 and trust["vouch_count"] == 0
        assert len(feed["changes"]) == 6


async def test_a_peer_that_lost_its_data_is_read_again_from_the_start(network: Any) -> None:
    with trio.fail_after(TIMEOUT):
        hosts = network.hosts
        b = await network("b", ["https://fake.test"])
        first = format_node_id(SigningKey(b"\x01" * 32).public_key)
        second = format_node_id(SigningKey(b"\x02" * 32).public_key)
        source = await network("src", ["https://b.test"])
        await source.register(X)
        await source.register(Y)
        _, feed = await source.get("/sync?since=0")
        hosts.feeds["fake.test"] = static_feed(feed["changes"], node_id=first)
        fake = next(p for p in b.federation.peers if p.label == "https://fake.test")
        await b.federation.pull(fake)
        assert fake.cursor == 2 and fake.node_id == first
        # the peer comes back empty with a new identity and one new change
        hosts.feeds["fake.test"] = static_feed(feed["changes"][1:], node_id=second)
        await b.federation.pull(fake)
        assert fake.node_id == second and fake.cursor == 1
        assert b.rows("SELECT cursor, node_id FROM federation_peers") == [(1, second)]


async def test_a_peer_restored_from_a_backup_is_read_again(network: Any) -> None:
    with trio.fail_after(TIMEOUT):
        hosts = network.hosts
        b = await network("b", ["https://fake.test"])
        same = format_node_id(SigningKey(b"\x01" * 32).public_key)
        source = await network("src", ["https://b.test"])
        await source.register(X)
        await source.register(Y)
        await source.register(Z)
        _, feed = await source.get("/sync?since=0")
        changes = feed["changes"]
        hosts.feeds["fake.test"] = static_feed(changes[:2], node_id=same, epoch="a" * 32)
        fake = next(p for p in b.federation.peers if p.label == "https://fake.test")
        await b.federation.pull(fake)
        assert fake.cursor == 2
        # restored from a backup taken after one change: same identity, new
        # epoch, and its next change numbered 2 again, behind b's cursor
        hosts.feeds["fake.test"] = static_feed(
            [changes[0], changes[2]], node_id=same, epoch="b" * 32
        )
        await b.federation.pull(fake)
        assert fake.cursor == 2 and fake.feed_epoch == "b" * 32
        _, got = await b.get(f"/agents/{Z.agent_id}")
        assert got["record"]["agent_id"] == Z.agent_id
        assert b.rows("SELECT cursor, feed_epoch FROM federation_peers") == [(2, "b" * 32)]
        # a feed without the header (an older ocpd) changes nothing
        hosts.feeds["fake.test"] = static_feed([changes[0], changes[2]], node_id=same)
        await b.federation.pull(fake)
        assert fake.cursor == 2 and fake.feed_epoch == "b" * 32


async def test_a_push_makes_peers_pull_at_once(network: Any) -> None:
    with trio.fail_after(TIMEOUT):
        hosts = network.hosts
        names = ["a", "b", "c"]
        nodes = {}
        for name in names:
            peers = [f"https://{o}.test" for o in names if o != name]
            # pulls on the interval only after the test: news travels by push
            nodes[name] = await network(name, peers, run=True, interval=3600)
        a, b, c = nodes["a"], nodes["b"], nodes["c"]
        # let every puller finish its first round, so they learn node ids
        await _settle(nodes.values())
        started = trio.current_time()
        await a.register(X)
        while True:  # the pullers' work has no event of its own to wait on
            if all(X.agent_id in n.service.ledger.agents for n in (b, c)):
                break
            await trio.sleep(0.005)
        assert trio.current_time() - started < 10
        assert b.metric("ocpd_federation_notifications_total", peer="https://a.test") >= 1
        assert a.metric("ocpd_federation_pushes_total", peer="https://b.test", result="ok") >= 1
        assert all(n.change_count() == 1 for n in nodes.values())
        assert any(r[:2] == ("b.test", "POST") for r in hosts.log)
        # a notification from an unknown sender wakes every puller, nothing more
        response = await b.app.test_client().post(
            f"{API}/federation/push", json={"node_id": "nobody", "cursor": 5}
        )
        assert response.status_code == 202
        assert b.metric("ocpd_federation_notifications_total", peer="unknown") == 1
        response = await b.app.test_client().post(f"{API}/federation/push", data=b"[" * 10)
        assert response.status_code == 400


async def _settle(nodes: Any) -> None:
    for _ in range(3):
        for node in nodes:
            for peer in node.federation.peers:
                peer.wake.set()
        await trio.sleep(0.05)


async def test_news_is_not_announced_to_the_peer_it_came_from(network: Any) -> None:
    with trio.fail_after(TIMEOUT):
        a = await network("a", ["https://b.test", "https://c.test"])
        bus = a.service.store._changes
        assert bus is not None
        async with trio.open_nursery() as nursery:
            nursery.start_soon(a.federation._fan_out)
            bus.send_nowait(Change(seq=5, kind="agent", origin="https://b.test"))
            bus.send_nowait(Change(seq=6, kind="vouch", origin=None))
            bus.send_nowait(Change(seq=7, kind="vouch", origin="https://c.test"))
            await trio.testing.wait_all_tasks_blocked()
            nursery.cancel_scope.cancel()
        assert a.peer("b").latest == 7 and a.peer("c").latest == 6
        assert a.peer("b").news.is_set() and a.peer("c").news.is_set()


async def test_pushes_back_off_while_a_peer_is_down(
    network: Any, autojump_clock: trio.testing.MockClock
) -> None:
    # (database calls in threads hold the clock still: conftest.py)
    a = await network("a", ["https://b.test"])
    with trio.fail_after(600):
        hosts = network.hosts
        hosts.down.add("b.test")
        peer = a.peer("b")
        attempts: list[float] = []
        real = hosts.handle_async_request

        async def busy(request: httpx.Request) -> httpx.Response:
            # news keeps coming: the pusher retries as soon as its backoff allows
            attempts.append(trio.current_time())
            if "b.test" in hosts.down:
                peer.news.set()
            return await real(request)

        hosts.handle_async_request = busy  # type: ignore[method-assign]
        async with trio.open_nursery() as nursery:
            start = trio.current_time()
            nursery.start_soon(a.federation._pusher, peer)
            peer.news.set()
            await trio.sleep(100)
            hosts.down.discard("b.test")
            hosts.feeds["b.test"] = static_feed([])
            await trio.sleep(40)
            nursery.cancel_scope.cancel()
        offsets = [round(t - start, 2) for t in attempts]
        assert offsets[:10] == [0.0, 0.25, 0.75, 1.75, 3.75, 7.75, 15.75, 31.75, 61.75, 91.75]
        # back up at 100: the attempt after the 30 s backoff (121.75) succeeds
        assert offsets[10:] == [121.75]
        assert a.metric("ocpd_federation_pushes_total", peer="https://b.test", result="error") == 10
        assert a.metric("ocpd_federation_pushes_total", peer="https://b.test", result="ok") >= 1


async def test_two_first_registrations_settle_on_the_later_document(network: Any) -> None:
    with trio.fail_after(TIMEOUT):
        a = await network("a", ["https://b.test"])
        b = await network("b", ["https://a.test"])
        plain = X.did_document()
        with_service = X.did_document(endpoints=["https://x.example/ocp/v1/messages"])
        now = time.time()
        rec = record(X, now=now - 30)
        status, _ = await a.post(X, "/agents", {"record": rec, "did_document": plain}, at=now - 5)
        assert status == 201
        newer = record(X, now=now - 20, name="newer")
        body = {"record": newer, "did_document": with_service}
        assert (await b.post(X, "/agents", body, at=now))[0] == 201
        await b.pull("a")
        await a.pull("b")
        await b.pull("a")
        for node in (a, b):
            entry = node.service.ledger.agents[X.agent_id]
            assert entry.document.document == with_service and entry.record == newer
        assert b.metric("ocpd_federation_rejected_total", peer="https://a.test", kind="agent") == 0


async def test_an_artifact_dated_ahead_of_this_clock_waits(network: Any) -> None:
    with trio.fail_after(TIMEOUT):
        hosts = network.hosts
        a = await network("a", ["https://b.test", "https://ahead.test"])
        for agent in (ANCHORS[0], X):
            await a.register(agent)
        later = time.time() + 600
        vouch = sign(
            {
                "vouch_type": "endorsement",
                "attester": ANCHORS[0].agent_id,
                "subject": X.agent_id,
                "level": "vouch",
                "issued_at": format_timestamp(later),
                "expires_at": format_timestamp(later + 86_400),
            },
            ANCHORS[0].key,
        )
        hosts.feeds["ahead.test"] = static_feed([{"kind": "vouch", "body": vouch}])
        ahead = next(p for p in a.federation.peers if p.label == "https://ahead.test")
        tally = await a.federation.pull(ahead)
        assert (tally.deferred, tally.rejected) == (1, 0)
        assert a.rows("SELECT kind FROM federation_parked") == [("vouch",)]
        assert a.metric("ocpd_federation_deferred_total", peer="https://ahead.test", kind="vouch")


async def test_certifications_travel_and_forged_ones_are_rejected(network: Any) -> None:
    with trio.fail_after(TIMEOUT):
        hosts = network.hosts
        a = await network("a", ["https://b.test"])
        b = await network("b", ["https://a.test", "https://evil.test"])
        await seed(a)  # X is Level 3 at A
        certification = CERTIFIER.certify(X.agent_id, days=30, scope=["finance"])
        status, body = await a.post(Y, "/certifications", certification)
        assert status == 201 and body["subject_level"] == 4, body
        tally = await b.pull("a")
        assert tally.rejected == 0 and tally.deferred == 0
        assert b.level(X) == a.level(X) == 4
        _, trust = await b.get(f"/agents/{X.agent_id}/trust")
        assert trust["trust_level"] == 4 and "governance_vote" in trust["permissions"]
        stored = b.rows("SELECT artifact FROM certifications")
        assert [json.loads(text) for (text,) in stored] == [certification]

        # the fake peer serves forgeries, and a genuine certification under a
        # key B does not name
        forged = sign(
            {k: v for k, v in CERTIFIER.certify(Y.agent_id).items() if k != "signature"},
            MALLORY.key,
        )
        flipped = {**certification, "subject": Y.agent_id}
        longer = {**certification, "expires_at": format_timestamp(time.time() + 300 * 86_400)}
        revocation = CERTIFIER.revoke(certification)
        forged_revocation = sign(
            {k: v for k, v in revocation.items() if k != "signature"}, MALLORY.key
        )
        stranger = CertifierKey(SigningKey(bytes([96]) * 32))
        unknown = stranger.certify(Y.agent_id)
        hosts.feeds["evil.test"] = static_feed(
            [
                {"kind": "certification", "body": forged},
                {"kind": "certification", "body": flipped},
                {"kind": "certification", "body": longer},
                {"kind": "certification_revocation", "body": forged_revocation},
                {"kind": "certification", "body": unknown},
                {"kind": "certification_revocation", "body": stranger.revoke(unknown)},
            ]
        )
        before = b.change_count()
        evil = next(p for p in b.federation.peers if p.label == "https://evil.test")
        tally = await b.federation.pull(evil)
        assert (tally.stored, tally.rejected, tally.unchanged, tally.deferred) == (0, 4, 2, 0)
        peer = "https://evil.test"
        assert b.metric("ocpd_federation_rejected_total", peer=peer, kind="certification") == 3
        assert (
            b.metric("ocpd_federation_rejected_total", peer=peer, kind="certification_revocation")
            == 1
        )
        assert b.change_count() == before and b.level(X) == 4 and b.level(Y) == 1
        assert b.rows("SELECT count(*) FROM certifications") == [(1,)]

        # the certifier's revocation travels too: X is back to Level 3 everywhere
        status, body = await a.post(Y, "/certifications/revocations", revocation)
        assert status == 200 and body["subject_level"] == 3, body
        await b.pull("a")
        assert b.level(X) == 3
        assert b.rows("SELECT revoked_at IS NOT NULL FROM certifications") == [(1,)]
        assert b.kinds()[-2:] == ["certification", "certification_revocation"]


def test_log_lines_name_the_cause_of_a_bare_error() -> None:
    from ocpd.registry.federation import _describe

    try:
        try:
            raise ssl.SSLCertVerificationError("certificate verify failed: unable to get issuer")
        except ssl.SSLError as inner:
            raise httpx.ConnectError("") from inner
    except httpx.ConnectError as exc:
        described = _describe(exc)
    assert described.startswith("ConnectError <- SSLCertVerificationError")
    assert "certificate verify failed" in described
    assert _describe(ValueError("plain")) == "ValueError: plain"
