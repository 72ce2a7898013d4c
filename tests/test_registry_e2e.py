"""The registry component end to end: a real daemon, agents using the SDK."""

from __future__ import annotations

import http.client
import json
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import trio

from daemon_process import Daemon, TlsFiles
from ocpd.client import AgentKey, CertifierKey, RegistryClient, RegistryError
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


class World:
    def __init__(self, tmp: Path, tls: TlsFiles) -> None:
        self.anchors = [AgentKey(SigningKey(bytes([10 + i]) * 32), NETWORK) for i in range(3)]
        self.x, self.y, self.z = (
            AgentKey(SigningKey(bytes([20 + i]) * 32), NETWORK) for i in range(3)
        )
        self.certifier = CertifierKey(SigningKey(bytes([30]) * 32))
        self.reporter = AgentKey(SigningKey(bytes([31]) * 32), NETWORK)  # a node service agent
        config = tmp / "ocpd.yml"
        config.write_text(
            "trust:\n  anchors: [" + ", ".join(a.agent_id for a in self.anchors) + "]\n"
            f"  certifier_keys: [{self.certifier.multibase}]\n"
            "registry:\n  cleanup_interval_seconds: 1\n"
            f"  session_reporters: [{self.reporter.agent_id}]\n"
        )
        self.tls = tls
        self.daemon = Daemon(
            tmp / "data", component="registry", tls=tls, env={"OCP_CONFIG": str(config)}
        )

    def url(self) -> str:
        return self.daemon.listeners["registry"]

    def client(self, agent: AgentKey) -> RegistryClient:
        return RegistryClient(self.url(), agent, verify=self.tls.client_context())


@pytest.fixture(scope="module")
def tls(tmp_path_factory: pytest.TempPathFactory) -> TlsFiles:
    return TlsFiles(tmp_path_factory.mktemp("tls"))


@pytest.fixture
def world(tmp_path: Path, tls: TlsFiles) -> Iterator[World]:
    w = World(tmp_path, tls)
    w.daemon.start()
    w.daemon.wait_ready()
    yield w
    w.daemon.stop()


async def _register(
    world: World, agent: AgentKey, *, domains: list[str] | None = None, **kw: Any
) -> dict[str, Any]:
    async with world.client(agent) as client:
        record = client.build_record(
            display_name=f"agent {agent.agent_id[-4:]}",
            capabilities=CAPS,
            domains=domains or ["healthcare.oncology"],
            endpoints=ENDPOINTS,
            **kw,
        )
        return await client.register(record)


async def test_registration_discovery_and_trust_levels(world: World) -> None:
    with trio.fail_after(60):
        for anchor in world.anchors:
            assert (await _register(world, anchor, domains=["finance"]))["trust_level"] == 2
        registered = await _register(world, world.x, domains=["oncology"])  # a unique bare leaf
        assert registered["trust_level"] == 1 and registered["status"] == "active"
        await _register(world, world.y, domains=["radiology"])
        await _register(world, world.z)

        async with world.client(world.x) as x:
            fetched = await x.get_agent(world.x.agent_id)
            assert fetched["record"]["domains"] == ["oncology"]
            document = await x.resolve_did(world.x.agent_id)
            assert document == world.x.did_document()
            # hierarchical domains: oncology and radiology are under healthcare
            found = await x.discover(domains=["healthcare"])
            assert found["total"] == 3
            assert {r["agent_id"] for r in found["results"]} == {
                world.x.agent_id,
                world.y.agent_id,
                world.z.agent_id,
            }
            assert (await x.discover(domains=["healthcare.radiology"]))["total"] == 1
            assert (await x.discover(min_trust_level=2))["total"] == 3
            assert (await x.discover(capabilities=["cap:vision:imaging"], limit=2))["total"] == 6
            page = await x.discover(capabilities=["cap:vision:imaging"], limit=2, offset=4)
            assert len(page["results"]) == 2

        # three vouches from Level 2 anchors lift X to Level 2
        vouches = []
        for i, anchor in enumerate(world.anchors):
            async with world.client(anchor) as client:
                result = await client.vouch(world.x.agent_id, domains=["oncology"])
                vouches.append(result["vouch"])
                assert result["subject_level"] == (2 if i == 2 else 1)

        # a Level 1 agent cannot vouch
        async with world.client(world.y) as y:
            with pytest.raises(RegistryError) as refused:
                await y.vouch(world.z.agent_id)
            assert refused.value.code == "OCP-403"

        # a bond with an anchor lifts X to Level 3
        bond = build_bond(
            world.x.agent_id, world.anchors[0].agent_id, permissions=PERMISSIONS, now=time.time()
        )
        async with world.client(world.anchors[0]) as anchor_client, world.client(world.x) as x:
            bond = anchor_client.sign_bond(x.sign_bond(bond))
            stored = await x.submit_bond(bond)
            assert stored["levels"][world.x.agent_id] == 3
            trust = await x.trust(world.x.agent_id)
            assert trust["trust_level"] == 3
            assert trust["vouch_count"] == 3 and trust["bond_count"] == 1
            assert trust["components"]["identity_verification"] == 1.0
            assert trust["components"]["interaction_reputation"] == 0.5
            assert 0.0 <= trust["trust_score"] <= 1.0
            assert "task_delegation" in trust["permissions"]
            info = await x.info()
            assert info["network"] == NETWORK and info["mode"] == "centralized"
            assert info["trust_weights"]["vouch_count_normalized"] == 0.25

            # revoking one vouch drops X below Level 2, and so below Level 3
            async with world.client(world.anchors[2]) as third:
                await third.revoke_vouch(vouches[2])
            assert (await x.trust(world.x.agent_id))["trust_level"] == 1

            # a rating feeds interaction_reputation
            await anchor_client.rate(world.x.agent_id, 0.9)
            assert (await x.trust(world.x.agent_id))["components"]["interaction_reputation"] == 0.9

            # revoking the bond works for either party
            assert (await x.revoke_bond(bond["bond_id"]))["state"] == "revoked"

        # the federation feed lists every change in order
        feed = _feed(world, "?since=0&limit=100")
        kinds = [c["kind"] for c in feed["changes"]]
        assert kinds.count("agent") == 6 and kinds.count("vouch") == 3
        assert "vouch_revocation" in kinds and "bond" in kinds and "bond_revocation" in kinds
        assert feed["cursor"] == feed["changes"][-1]["seq"] and feed["more"] is False

    # levels survive a restart (rebuilt from the database)
    assert world.daemon.stop() == 0
    world.daemon = Daemon(
        world.daemon.data_dir, component="registry", tls=world.tls, env=world.daemon.env
    )
    world.daemon.start()
    world.daemon.wait_ready()
    with trio.fail_after(30):
        async with world.client(world.x) as x:
            assert (await x.trust(world.x.agent_id))["trust_level"] == 1
            assert (await x.trust(world.anchors[0].agent_id))["trust_level"] == 2


async def test_ttl_expiry_and_renewal(world: World) -> None:
    with trio.fail_after(60):
        now = time.time()
        await _register(world, world.x, ttl=60, now=now - 58)
        async with world.client(world.x) as x:
            assert (await x.get_agent(world.x.agent_id))["status"] == "active"
            deadline = trio.current_time() + 10
            while (await x.get_agent(world.x.agent_id))["status"] == "active":
                assert trio.current_time() < deadline, "agent never became inactive"
                await trio.sleep(0.2)
            assert (await x.discover(domains=["oncology"]))["total"] == 0
            assert (await x.discover(domains=["oncology"], status="inactive"))["total"] == 1
            # an older registration never overwrites the stored one
            with pytest.raises(RegistryError) as stale:
                await x.register(
                    x.build_record(
                        display_name="old",
                        capabilities=CAPS,
                        domains=["oncology"],
                        endpoints=ENDPOINTS,
                        now=now - 3600,
                    )
                )
            assert stale.value.code == "OCP-400" and stale.value.details["reason"] == "stale"
        renewed = await _register(world, world.x)
        assert renewed["status"] == "active" and renewed["trust_level"] == 1


def _feed(world: World, query: str) -> dict[str, Any]:
    url = world.url() + "/ocp/v1/registry/sync" + query
    with urllib.request.urlopen(url, context=world.tls.client_context()) as response:
        result: dict[str, Any] = json.loads(response.read())
    return result


def _announce_oversized(world: World, path: str, length: int) -> tuple[int, dict[str, Any]]:
    """Announce a large body and send none of it: the answer must come first."""
    host, port = world.url().removeprefix("https://").rsplit(":", 1)
    connection = http.client.HTTPSConnection(host, int(port), context=world.tls.client_context())
    try:
        connection.putrequest("POST", path)
        connection.putheader("Content-Type", "application/json")
        connection.putheader("Content-Length", str(length))
        connection.endheaders()
        response = connection.getresponse()
        return response.status, json.loads(response.read())
    finally:
        connection.close()


def _post(
    world: World, path: str, body: bytes, headers: dict[str, str]
) -> tuple[int, dict[str, Any], Any]:
    request = urllib.request.Request(
        world.url() + path,
        data=body,
        method="POST",
        headers={"Content-Type": "application/json", **headers},
    )
    try:
        with urllib.request.urlopen(request, context=world.tls.client_context()) as response:
            return response.status, json.loads(response.read()), response.headers
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read() or b"{}"), exc.headers


def _signed_post(
    world: World, agent: AgentKey, path: str, body: Any
) -> tuple[int, dict[str, Any], Any]:
    data = json.dumps(body).encode()
    header = build_authorization(
        agent.key,
        agent_id=agent.agent_id,
        method="POST",
        path_and_query="/ocp/v1/registry" + path,
        body=data,
        now=time.time(),
    )
    return _post(world, "/ocp/v1/registry" + path, data, {"Authorization": header})


async def test_hostile_registrations_and_artifacts(world: World) -> None:
    with trio.fail_after(60):
        for anchor in world.anchors:
            await _register(world, anchor, domains=["finance"])
        await _register(world, world.x)
        a1 = world.anchors[0]
        record = sign(
            {
                "agent_id": world.y.agent_id,
                "display_name": "y",
                "version": "1",
                "capabilities": CAPS,
                "domains": ["finance"],
                "endpoints": ENDPOINTS,
                "status": "active",
                "registered_at": format_timestamp(time.time()),
                "ttl": 3600,
            },
            world.y.key,
        )
        # id that does not derive from the document's key
        status, body, _ = _signed_post(
            world, world.y, "/agents", {"record": record, "did_document": world.z.did_document()}
        )
        assert status == 401 and body["error_code"] == "OCP-401"
        # replayed Authorization header
        data = json.dumps({"record": record, "did_document": world.y.did_document()}).encode()
        header = build_authorization(
            world.y.key,
            agent_id=world.y.agent_id,
            method="POST",
            path_and_query="/ocp/v1/registry/agents",
            body=data,
            now=time.time(),
        )
        assert _post(world, "/ocp/v1/registry/agents", data, {"Authorization": header})[0] == 201
        status, body, _ = _post(world, "/ocp/v1/registry/agents", data, {"Authorization": header})
        assert status == 401 and "already used" in body["message"]
        # Authorization by another agent than the record's
        status, body, _ = _signed_post(
            world, world.z, "/agents", {"record": record, "did_document": world.y.did_document()}
        )
        assert status == 401
        # forged vouch: signed by Z but naming anchor A1 as attester
        vouch = {
            "vouch_type": "endorsement",
            "attester": a1.agent_id,
            "subject": world.x.agent_id,
            "level": "vouch",
            "issued_at": format_timestamp(time.time()),
            "expires_at": format_timestamp(time.time() + 86400),
        }
        status, body, _ = _signed_post(world, a1, "/vouches", sign(vouch, world.z.key))
        assert status == 401
        # bit-flipped vouch
        good = sign(vouch, a1.key)
        flipped = dict(good, subject=world.y.agent_id)
        assert _signed_post(world, a1, "/vouches", flipped)[0] == 401
        # self-vouch and 366-day vouch
        self_vouch = sign(dict(vouch, subject=a1.agent_id), a1.key)
        status, body, _ = _signed_post(world, a1, "/vouches", self_vouch)
        assert status == 400 and body["details"]["reason"] == "self-vouch"
        long_vouch = sign(
            dict(vouch, expires_at=format_timestamp(time.time() + 366 * 86400)), a1.key
        )
        assert _signed_post(world, a1, "/vouches", long_vouch)[0] == 400
        # one-sided bond, and a 366-day bond
        async with world.client(a1) as a1_client, world.client(world.x) as x:
            bond = build_bond(
                world.x.agent_id, a1.agent_id, permissions=PERMISSIONS, now=time.time()
            )
            one_sided = x.sign_bond(bond)
            assert _signed_post(world, world.x, "/bonds", one_sided)[0] == 400
            long_bond = build_bond(
                world.x.agent_id, a1.agent_id, permissions=PERMISSIONS, now=time.time(), days=366
            )
            long_bond = a1_client.sign_bond(x.sign_bond(long_bond))
            assert _signed_post(world, a1, "/bonds", long_bond)[0] == 400
        # nothing of the above was stored
        kinds = [c["kind"] for c in _feed(world, "?since=0")["changes"]]
        assert kinds == ["agent"] * 5
        # oversized and deeply nested bodies are refused before parsing
        status, body = _announce_oversized(world, "/ocp/v1/registry/discover", 2_000_000)
        assert status == 413 and body["error_code"] == "OCP-413"
        status, body, _ = _post(world, "/ocp/v1/registry/discover", b"[" * 100 + b"]" * 100, {})
        assert status == 400 and body["error_code"] == "OCP-400"


async def test_fresh_agents_cannot_raise_a_level(world: World) -> None:
    with trio.fail_after(120):
        await _register(world, world.x)
        fresh = [AgentKey(SigningKey.generate(), NETWORK) for _ in range(30)]
        for agent in fresh:
            await _register(world, agent, domains=["finance"])
        for agent in fresh:
            async with world.client(agent) as client:
                with pytest.raises(RegistryError) as refused:
                    await client.vouch(world.x.agent_id)
                assert refused.value.code == "OCP-403"
        async with world.client(world.x) as x:
            assert (await x.trust(world.x.agent_id))["trust_level"] == 1


async def test_a_certification_lifts_level_3_to_level_4_until_revoked(world: World) -> None:
    with trio.fail_after(60):
        for anchor in world.anchors:
            await _register(world, anchor, domains=["finance"])
        await _register(world, world.x)
        # Level 3 as in the first test: three anchor vouches, then a bond with an anchor
        for anchor in world.anchors:
            async with world.client(anchor) as client:
                await client.vouch(world.x.agent_id)
        bond = build_bond(
            world.x.agent_id, world.anchors[0].agent_id, permissions=PERMISSIONS, now=time.time()
        )
        async with world.client(world.anchors[0]) as anchor_client, world.client(world.x) as x:
            await x.submit_bond(anchor_client.sign_bond(x.sign_bond(bond)))
            assert (await x.trust(world.x.agent_id))["trust_level"] == 3

            # a certifier key the registry does not name is refused
            stranger = CertifierKey.generate().certify(world.x.agent_id)
            with pytest.raises(RegistryError) as refused:
                await x.submit_certification(stranger)
            assert refused.value.code == "OCP-403"
            assert refused.value.details["reason"] == "unknown_certifier"
            # a certification altered after signing is a forgery
            certification = world.certifier.certify(world.x.agent_id, days=90, scope=["oncology"])
            with pytest.raises(RegistryError) as forged:
                await x.submit_certification({**certification, "expires_at": _in_days(200)})
            assert forged.value.code == "OCP-401"

            stored = await x.submit_certification(certification)
            assert stored["stored"] is True and stored["subject_level"] == 4
            trust = await x.trust(world.x.agent_id)
            assert trust["trust_level"] == 4
            assert "governance_vote" in trust["permissions"]
            assert (await x.get_agent(world.x.agent_id))["trust_level"] == 4
            assert (await x.discover(min_trust_level=4))["total"] == 1

            # the certifier's revocation, submitted by another agent, ends it
            revoked = await anchor_client.revoke_certification(
                world.certifier.revoke(certification)
            )
            assert revoked["revoked"] is True and revoked["subject_level"] == 3
            assert (await x.trust(world.x.agent_id))["trust_level"] == 3

        kinds = [c["kind"] for c in _feed(world, "?since=0&limit=100")["changes"]]
        assert kinds[-2:] == ["certification", "certification_revocation"]

    # the revocation is durable
    assert world.daemon.stop() == 0
    world.daemon = Daemon(
        world.daemon.data_dir, component="registry", tls=world.tls, env=world.daemon.env
    )
    world.daemon.start()
    world.daemon.wait_ready()
    with trio.fail_after(30):
        async with world.client(world.x) as x:
            assert (await x.trust(world.x.agent_id))["trust_level"] == 3


def _in_days(days: float) -> str:
    return format_timestamp(time.time() + days * 86_400)


async def test_uptime_from_on_time_renewals_and_reported_sessions(world: World) -> None:
    with trio.fail_after(60):
        for agent in (world.reporter, world.y, world.z):
            await _register(world, agent)
        await _register(world, world.x, ttl=60)
        async with world.client(world.x) as x:
            assert (await x.trust(world.x.agent_id))["components"]["uptime_ratio"] == 0.0
            await trio.sleep(1)
            # renewed long before the 60 s ttl ran out: the second between counts
            await _register(world, world.x, ttl=60, now=time.time() + 1)
            assert (await x.trust(world.x.agent_id))["components"]["uptime_ratio"] > 0.5

            # session time, reported over HTTP by the configured node service agent
            assert (await x.trust(world.y.agent_id))["components"]["uptime_ratio"] == 0.0
            session = {
                "sessions": [
                    {
                        "agent_id": world.y.agent_id,
                        "started_at": format_timestamp(time.time() - 30),
                        "ended_at": format_timestamp(time.time(), fraction_digits=6),
                    }
                ]
            }
            status, body, _ = _signed_post(world, world.reporter, "/sessions", session)
            assert (status, body) == (200, {"counted": 1, "unknown_agents": []})
            assert (await x.trust(world.y.agent_id))["components"]["uptime_ratio"] > 0.0

            # any other agent is refused, and nothing is counted
            session["sessions"][0]["agent_id"] = world.z.agent_id
            status, body, _ = _signed_post(world, world.z, "/sessions", session)
            assert status == 403 and body["error_code"] == "OCP-403"
            assert (await x.trust(world.z.agent_id))["components"]["uptime_ratio"] == 0.0
