"""Level 4 certifications in one registry: the HTTP rules, levels, expiry, restart.

One in-process registry (real SQLite, the Quart app through its test client)
whose wall clock the tests set, so that expiry is exact.
"""

from __future__ import annotations

import json
import sqlite3
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest
import trio

from ocpd.client import AgentKey, CertifierKey
from ocpd.client.registry import build_bond
from ocpd.clock import WallClock
from ocpd.config import load_config
from ocpd.proto.artifacts import sign, sign_bond
from ocpd.proto.auth import build_authorization
from ocpd.proto.crypto import SigningKey
from ocpd.proto.encoding import format_timestamp
from ocpd.registry.service import API, RegistryService
from ocpd.storage import MIGRATIONS, migrate, open_database
from ocpd.web import ComponentState, Metrics, create_app

NETWORK = "testnet"
TIMEOUT = 30
DAY = 86_400
ANCHORS = [AgentKey(SigningKey(bytes([110 + i]) * 32), NETWORK) for i in range(3)]
OUTSIDER = AgentKey(SigningKey(bytes([115]) * 32), NETWORK)
CERTIFIER = CertifierKey(SigningKey(bytes([120]) * 32))
SECOND = CertifierKey(SigningKey(bytes([121]) * 32))
STRANGER = CertifierKey(SigningKey(bytes([122]) * 32))
PERMISSIONS = {"knowledge_share": {"enabled": True}, "model_delta_share": {"enabled": False}}


class Clock(WallClock):
    """A wall clock the test moves."""

    def __init__(self) -> None:
        self.t = float(int(time.time()))

    def now(self) -> float:
        return self.t


class Registry:
    def __init__(self, service: RegistryService, clock: Clock) -> None:
        self.service = service
        self.clock = clock
        state = ComponentState(
            component="registry",
            network=NETWORK,
            database=service.database,
            data_dir=service.database.path.parent,
            metrics=Metrics(),
            started_at=trio.current_time(),
            min_free_disk_bytes=0,
            min_available_memory_bytes=0,
        )
        self.app = create_app("registry", [state], installers=[service.install])

    async def post(
        self, agent: AgentKey | None, path: str, body: Any, *, raw: bytes | None = None
    ) -> tuple[int, Any]:
        data = raw if raw is not None else json.dumps(body).encode()
        headers = {"Content-Type": "application/json"}
        if agent is not None:
            headers["Authorization"] = build_authorization(
                agent.key,
                agent_id=agent.agent_id,
                method="POST",
                path_and_query=API + path,
                body=data,
                now=self.clock.now(),
            )
        response = await self.app.test_client().post(API + path, data=data, headers=headers)
        return response.status_code, json.loads(await response.get_data())

    async def get(self, path: str) -> Any:
        response = await self.app.test_client().get(API + path)
        assert response.status_code == 200
        return json.loads(await response.get_data())

    async def register(self, agent: AgentKey) -> None:
        record = sign(
            {
                "agent_id": agent.agent_id,
                "display_name": "agent",
                "version": "1.0.0",
                "capabilities": [{"id": "cap:vision:imaging", "name": "Imaging", "version": "1"}],
                "domains": ["finance"],
                "endpoints": [
                    {"transport": "ocp-ws", "url": "wss://agent.example/ocp/v1/ws", "priority": 1}
                ],
                "status": "active",
                "registered_at": format_timestamp(self.clock.now()),
                "ttl": 604_800,
            },
            agent.key,
        )
        body = {"record": record, "did_document": agent.did_document()}
        status, answer = await self.post(agent, "/agents", body)
        assert status == 201, answer

    async def bond(self, first: AgentKey, second: AgentKey) -> None:
        bond = build_bond(
            first.agent_id, second.agent_id, permissions=PERMISSIONS, now=self.clock.now()
        )
        bond = sign_bond(sign_bond(bond, first.key, first.agent_id), second.key, second.agent_id)
        status, answer = await self.post(first, "/bonds", bond)
        assert status == 201, answer

    def certify(self, subject: AgentKey, certifier: CertifierKey = CERTIFIER, **kw: Any) -> Any:
        kw.setdefault("now", self.clock.now())
        return certifier.certify(subject.agent_id, **kw)

    def revoke(self, certification: Any, certifier: CertifierKey = CERTIFIER, **kw: Any) -> Any:
        kw.setdefault("now", self.clock.now())
        return certifier.revoke(certification, **kw)

    def level(self, agent: AgentKey) -> int:
        return self.service.ledger.level(agent.agent_id)

    def rows(self, sql: str) -> list[Any]:
        conn = sqlite3.connect(f"file:{self.service.database.path}?mode=ro", uri=True)
        try:
            return conn.execute(sql).fetchall()
        finally:
            conn.close()


Start = Callable[..., Any]


@pytest.fixture
async def start(tmp_path: Path, nursery: trio.Nursery) -> AsyncIterator[Start]:
    """``await start(clock, certifiers=...)``: a registry on the test's one database."""
    databases = []

    async def run(clock: Clock, *, certifiers: tuple[CertifierKey, ...] = (CERTIFIER, SECOND)):
        config_file = tmp_path / "ocpd.yml"
        config_file.write_text(
            f"node:\n  network: {NETWORK}\n"
            f"trust:\n  anchors: [{', '.join(a.agent_id for a in ANCHORS)}]\n"
            f"  certifier_keys: [{', '.join(c.multibase for c in certifiers)}]\n"
            "registry:\n  cleanup_interval_seconds: 3600\n"
            "rate_limiting:\n  enabled: false\n",
            encoding="utf-8",
        )
        config, _ = load_config(config_file, environ={})
        database = await open_database(tmp_path / "registry.db", "registry")
        databases.append(database)
        nursery.start_soon(database.run)
        service = RegistryService(database, clock, config, Metrics().registry)
        await nursery.start(service.run)
        return Registry(service, clock)

    yield run
    for database in databases:
        database.close()


async def bonded(registry: Registry) -> None:
    """Three anchors (Level 2), the first two bonded (Level 3)."""
    for anchor in ANCHORS:
        await registry.register(anchor)
    await registry.register(OUTSIDER)
    await registry.bond(ANCHORS[0], ANCHORS[1])
    assert [registry.level(a) for a in ANCHORS] == [3, 3, 2]


async def test_a_certification_makes_level_4_and_its_revocation_undoes_it(start: Start) -> None:
    with trio.fail_after(TIMEOUT):
        registry = await start(Clock())
        await bonded(registry)
        a0 = ANCHORS[0]
        certification = registry.certify(a0, scope=["finance"], statement="audited")
        # any registered agent submits it: here one that is only Level 1
        status, body = await registry.post(OUTSIDER, "/certifications", certification)
        assert status == 201
        assert body == {
            "certification_id": certification["certification_id"],
            "stored": True,
            "subject_level": 4,
        }
        trust = await registry.get(f"/agents/{a0.agent_id}/trust")
        assert trust["trust_level"] == 4
        assert {"enterprise_sla", "priority_routing", "governance_vote"} <= set(
            trust["permissions"]
        )
        assert (await registry.get(f"/agents/{a0.agent_id}"))["trust_level"] == 4
        status, found = await registry.post(None, "/discover", {"filters": {"min_trust_level": 4}})
        assert status == 200 and [r["agent_id"] for r in found["results"]] == [a0.agent_id]
        # the same certification again changes nothing
        status, body = await registry.post(a0, "/certifications", certification)
        assert (status, body["stored"]) == (200, False)

        revocation = registry.revoke(certification, reason="audit withdrawn")
        status, body = await registry.post(ANCHORS[2], "/certifications/revocations", revocation)
        assert status == 200
        assert body == {
            "certification_id": certification["certification_id"],
            "revoked": True,
            "subject_level": 3,
        }
        assert (await registry.get(f"/agents/{a0.agent_id}/trust"))["trust_level"] == 3
        # a revocation again is no change, and no new feed entry (a second later:
        # the same Authorization twice would be a replay)
        registry.clock.t += 1
        status, _ = await registry.post(ANCHORS[2], "/certifications/revocations", revocation)
        assert status == 200
        feed = await registry.get("/sync?since=0")
        kinds = [c["kind"] for c in feed["changes"]]
        assert kinds[-2:] == ["certification", "certification_revocation"]
        assert kinds.count("certification_revocation") == 1
        assert feed["changes"][-2]["body"] == certification
        assert feed["changes"][-1]["body"] == revocation


async def test_what_is_refused_and_with_which_code(start: Start) -> None:
    with trio.fail_after(TIMEOUT):
        registry = await start(Clock())
        await bonded(registry)
        a0, a1 = ANCHORS[0], ANCHORS[1]
        good = registry.certify(a0)

        async def refused(agent: AgentKey | None, body: Any, path: str = "/certifications") -> Any:
            status, answer = await registry.post(agent, path, body)
            assert status >= 400, answer
            assert answer["error_code"] == f"OCP-{status}"
            return status, answer

        # who submits: a registered agent with a valid Authorization
        assert (await refused(None, good))[0] == 401
        assert (await refused(AgentKey.generate(NETWORK), good))[0] == 401
        # a key this registry does not name: genuine, and still refused
        status, answer = await refused(a0, registry.certify(a0, STRANGER))
        assert status == 403 and answer["details"]["reason"] == "unknown_certifier"
        # forged: another key's signature under CERTIFIER's name; one bit changed
        forged = sign({k: v for k, v in good.items() if k != "signature"}, SigningKey(b"\x01" * 32))
        assert (await refused(a0, forged))[0] == 401
        assert (await refused(a0, {**good, "subject": a1.agent_id}))[0] == 401
        assert (await refused(a0, {**good, "level": 3}))[0] == 400
        # rules: at most 365 days; issued_at no later than now plus the skew
        assert (await refused(a0, registry.certify(a0, days=366)))[0] == 400
        later = registry.certify(a0, now=registry.clock.now() + 120)
        assert (await refused(a0, later))[0] == 400
        # an unknown subject
        assert (await refused(a0, registry.certify(AgentKey.generate(NETWORK))))[0] == 404
        # nothing of that was stored
        assert registry.rows("SELECT count(*) FROM certifications") == [(0,)]
        assert registry.level(a0) == 3

        status, _ = await registry.post(a0, "/certifications", good)
        assert status == 201
        # another certification under an id already taken
        clash = registry.certify(a1, certification_id=good["certification_id"])
        assert (await refused(a0, clash))[0] == 400
        # revocations: of nothing; by another configured certifier; naming another subject
        path = "/certifications/revocations"
        unknown = registry.revoke(registry.certify(a1))
        assert (await refused(a0, unknown, path))[0] == 404
        by_second = {**registry.revoke(good), "certifier": SECOND.multibase}
        by_second = sign({k: v for k, v in by_second.items() if k != "signature"}, SECOND.key)
        assert (await refused(a0, by_second, path))[0] == 401
        wrong_subject = registry.revoke({**good, "subject": a1.agent_id})
        assert (await refused(a0, wrong_subject, path))[0] == 400
        assert (await refused(None, registry.revoke(good), path))[0] == 401
        assert registry.level(a0) == 4
        assert registry.rows("SELECT count(*) FROM certifications WHERE revoked_at IS NULL") == [
            (1,)
        ]


async def test_a_certification_counts_once_its_subject_is_level_3(start: Start) -> None:
    with trio.fail_after(TIMEOUT):
        registry = await start(Clock())
        await bonded(registry)
        a2 = ANCHORS[2]
        status, body = await registry.post(a2, "/certifications", registry.certify(a2))
        assert status == 201 and body["subject_level"] == 2
        await registry.bond(a2, ANCHORS[1])
        assert registry.level(a2) == 4


async def test_expiry_and_a_later_start_change_levels_by_themselves(start: Start) -> None:
    with trio.fail_after(TIMEOUT):
        clock = Clock()
        registry = await start(clock)
        await bonded(registry)
        a0, a1 = ANCHORS[0], ANCHORS[1]
        t0 = clock.now()
        expiring = registry.certify(a0, days=1)
        # issued 30 s ahead: inside the clock skew, so taken, but not in force yet
        upcoming = registry.certify(a1, now=t0 + 30)
        for certification in (expiring, upcoming):
            status, _ = await registry.post(a0, "/certifications", certification)
            assert status == 201
        assert (registry.level(a0), registry.level(a1)) == (4, 3)
        ledger = registry.service.ledger
        assert ledger.levels_until == t0 + 30
        # the sweep recomputes once a fact started or ended
        clock.t = t0 + 29
        await registry.service.sweep()
        assert registry.level(a1) == 3
        clock.t = t0 + 30
        await registry.service.sweep()
        assert registry.level(a1) == 4
        assert ledger.levels_until == t0 + DAY
        # so does a read of the trust report, before any sweep
        clock.t = t0 + DAY
        trust = await registry.get(f"/agents/{a0.agent_id}/trust")
        assert trust["trust_level"] == 3 and registry.level(a0) == 3
        assert "governance_vote" not in trust["permissions"]


async def test_certifications_survive_a_restart_and_count_only_while_configured(
    start: Start,
) -> None:
    with trio.fail_after(TIMEOUT):
        clock = Clock()
        registry = await start(clock)
        await bonded(registry)
        a0, a1 = ANCHORS[0], ANCHORS[1]
        kept = registry.certify(a0)
        ended = registry.certify(a1, SECOND)
        for certification in (kept, ended):
            assert (await registry.post(a0, "/certifications", certification))[0] == 201
        path = "/certifications/revocations"
        assert (await registry.post(a0, path, registry.revoke(ended, SECOND)))[0] == 200
        assert (registry.level(a0), registry.level(a1)) == (4, 3)
        again = await start(clock)
        assert (again.level(a0), again.level(a1)) == (4, 3)
        # the operator no longer names CERTIFIER: stored, no longer counted
        without = await start(clock, certifiers=(SECOND,))
        assert without.level(a0) == 3
        assert without.rows("SELECT count(*) FROM certifications") == [(2,)]


async def test_a_version_3_registry_database_gains_the_certifications_table(
    tmp_path: Path,
) -> None:
    path = tmp_path / "registry.db"
    conn = sqlite3.connect(path, isolation_level=None)
    migrate(conn, MIGRATIONS["registry"][:3])
    conn.close()
    database = await open_database(path, "registry")
    database.close()
    conn = sqlite3.connect(path)
    try:
        assert conn.execute("PRAGMA user_version").fetchone()[0] == len(MIGRATIONS["registry"])
        columns = [row[1] for row in conn.execute("PRAGMA table_info(certifications)")]
    finally:
        conn.close()
    assert columns == [
        "certification_id",
        "subject",
        "certifier",
        "issued_at",
        "expires_at",
        "artifact",
        "revoked_at",
        "revocation",
    ]
