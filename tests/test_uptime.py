"""``uptime_ratio`` (D7): the interval arithmetic, and one registry counting renewals and sessions.

The arithmetic tests are synchronous with explicit ``now``. The registry
tests run one in-process registry (real SQLite, the Quart app through its
test client) whose wall clock the tests set, so that every ratio is exact.
"""

from __future__ import annotations

import json
import math
import sqlite3
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest
import trio
from hypothesis import given
from hypothesis import strategies as st

from ocpd.client import AgentKey
from ocpd.clock import WallClock
from ocpd.config import ConfigError, load_config
from ocpd.proto.artifacts import sign
from ocpd.proto.auth import build_authorization
from ocpd.proto.crypto import SigningKey
from ocpd.proto.encoding import format_timestamp
from ocpd.proto.errors import MalformedError
from ocpd.proto.trust import UPTIME_RECENT_INTERVALS, AgentFacts, Uptime, compute_score
from ocpd.registry.service import API, RegistryService
from ocpd.registry.uptime import SessionReport
from ocpd.storage import MIGRATIONS, migrate, open_database
from ocpd.web import ComponentState, Metrics, create_app

NOW = 1_775_217_600.0  # 2026-04-03T12:00:00Z
NETWORK = "testnet"
TIMEOUT = 30
SKEW = 60.0


# --- the arithmetic ---------------------------------------------------------------------------


def union_length(intervals: list[tuple[float, float]]) -> float:
    total, reach = 0.0, -math.inf
    for start, end in sorted(intervals):
        if end > reach:
            total += end - max(start, reach)
            reach = end
    return total


def test_a_first_registration_starts_the_window_when_it_takes_effect() -> None:
    assert Uptime.first(NOW - 500, now=NOW) == Uptime(since=NOW)  # back-dated: its arrival
    assert Uptime.first(NOW + 5, now=NOW).since == NOW + 5  # dated ahead within the skew
    fresh = Uptime.first(NOW, now=NOW)
    assert (fresh.online_seconds, fresh.horizon, fresh.renewal_from) == (0.0, NOW, NOW)
    assert fresh.ratio(now=NOW) == 0.0


def test_overlapping_duplicate_and_growing_intervals_count_once() -> None:
    uptime = Uptime(since=NOW)
    uptime = uptime.add(NOW + 10, NOW + 20, now=NOW + 100)
    uptime = uptime.add(NOW + 10, NOW + 20, now=NOW + 100)  # the same report again
    uptime = uptime.add(NOW + 15, NOW + 30, now=NOW + 100)  # overlapping
    uptime = uptime.add(NOW + 30, NOW + 40, now=NOW + 100)  # touching
    assert uptime.recent == ((NOW + 10, NOW + 40),)
    # one long session reported as [start, now] at every interval
    for now in (NOW + 60, NOW + 70, NOW + 80):
        uptime = uptime.add(NOW + 50, now, now=now)
    assert uptime.recent == ((NOW + 10, NOW + 40), (NOW + 50, NOW + 80))
    assert uptime.online_seconds == 60.0
    assert uptime.ratio(now=NOW + 120) == 0.5


def test_time_before_the_window_or_after_now_is_not_counted() -> None:
    uptime = Uptime(since=NOW).add(NOW - 100, NOW + 10, now=NOW + 100)
    assert uptime.recent == ((NOW, NOW + 10),)
    uptime = uptime.add(NOW + 90, NOW + 500, now=NOW + 100)  # ends after now
    assert uptime.recent[-1] == (NOW + 90, NOW + 100)
    assert uptime.add(NOW + 50, NOW + 50, now=NOW + 100) is uptime  # empty
    assert uptime.add(NOW - 50, NOW - 10, now=NOW + 100) is uptime  # before the window
    assert uptime.add(NOW + 60, NOW + 40, now=NOW + 100) is uptime  # reversed: empty


def test_old_intervals_fold_into_a_total_and_the_horizon_moves() -> None:
    uptime = Uptime(since=NOW)
    count = UPTIME_RECENT_INTERVALS + 8
    for i in range(count):  # 10 s online every 100 s
        uptime = uptime.add(NOW + 100 * i, NOW + 100 * i + 10, now=NOW + 100 * count)
    assert len(uptime.recent) == UPTIME_RECENT_INTERVALS
    assert uptime.settled == 80.0 and uptime.horizon == NOW + 710
    assert uptime.online_seconds == 10.0 * count
    # a late report of old time counts only after the horizon: never twice
    late = uptime.add(NOW, NOW + 750, now=NOW + 100 * count)
    assert late.online_seconds == uptime.online_seconds + 40  # only [710, 750] is new
    assert late.horizon == NOW + 750 and len(late.recent) == UPTIME_RECENT_INTERVALS
    assert late.online_seconds <= union_length(
        [(NOW + 100 * i, NOW + 100 * i + 10) for i in range(count)] + [(NOW, NOW + 750)]
    )


@given(
    st.lists(
        st.tuples(st.integers(-50, 5000), st.integers(0, 500)),
        max_size=2 * UPTIME_RECENT_INTERVALS,
    )
)
def test_online_time_never_exceeds_the_union_and_equals_it_while_nothing_folds(
    spans: list[tuple[int, int]],
) -> None:
    now = 6000.0
    uptime = Uptime(since=0.0)
    clipped = []
    for start, length in spans:
        uptime = uptime.add(start, start + length, now=now)
        clipped.append((max(start, 0.0), max(float(start + length), 0.0)))
    union = union_length(clipped)
    assert uptime.online_seconds <= union
    if uptime.settled == 0.0:
        assert uptime.online_seconds == union
    assert list(uptime.recent) == sorted(uptime.recent)
    assert all(e1 < s2 for (_, e1), (s2, _) in zip(uptime.recent, uptime.recent[1:], strict=False))


def test_an_on_time_renewal_proves_the_span_since_the_held_record() -> None:
    uptime = Uptime.first(NOW, now=NOW)
    renewed = uptime.renewed(
        registered_at=NOW + 300,
        previous_registered_at=NOW,
        previous_expires_at=NOW + 600,
        now=NOW + 301,
        grace=SKEW,
    )
    assert renewed.recent == ((NOW, NOW + 300),)
    assert renewed.renewal_from == NOW + 301
    assert renewed.ratio(now=NOW + 600) == 0.5


def test_a_late_renewal_counts_nothing_for_the_gap() -> None:
    uptime = Uptime.first(NOW, now=NOW)
    late = dict(previous_registered_at=NOW, previous_expires_at=NOW + 600, grace=SKEW)
    dated_late = uptime.renewed(registered_at=NOW + 700, now=NOW + 700, **late)
    assert dated_late.online_seconds == 0.0 and dated_late.renewal_from == NOW + 700
    # dated in time but seen here only after expiry (and the skew): late too
    arrived_late = uptime.renewed(registered_at=NOW + 590, now=NOW + 661, **late)
    assert arrived_late.online_seconds == 0.0
    # within the skew of expiry: on time
    assert uptime.renewed(registered_at=NOW + 590, now=NOW + 659, **late).online_seconds == 590


def test_back_dated_records_cannot_claim_time_the_registry_did_not_see() -> None:
    # A chain of records dated a day apart, all submitted within three seconds.
    day = 86_400.0
    uptime = Uptime.first(NOW - 30 * day, now=NOW)
    for i in range(1, 30):
        uptime = uptime.renewed(
            registered_at=NOW - (30 - i) * day,
            previous_registered_at=NOW - (31 - i) * day,
            previous_expires_at=NOW - (31 - i) * day + 7 * day,
            now=NOW + i / 10,
            grace=SKEW,
        )
    assert uptime.online_seconds == 0.0
    assert uptime.since == NOW


def test_the_score_uses_the_window_and_the_online_time() -> None:
    uptime = Uptime(since=NOW - 400).add(NOW - 400, NOW - 300, now=NOW)
    facts = AgentFacts("did:ocp:testnet:x", True, 1, uptime.since, uptime.online_seconds)
    score = compute_score(facts, vouch_count=0, bond_count=0, ratings=[], now=NOW)
    assert score.uptime_ratio == uptime.ratio(now=NOW) == 0.25


def test_times_must_be_finite() -> None:
    with pytest.raises(ValueError, match="finite"):
        Uptime(since=NOW).add(NOW, math.nan, now=NOW)
    with pytest.raises(ValueError, match="finite"):
        Uptime.first(math.inf, now=NOW)


# --- one registry ----------------------------------------------------------------------------

REPORTER = AgentKey(SigningKey(bytes([130]) * 32), NETWORK)
LISTED_ABSENT = AgentKey(SigningKey(bytes([131]) * 32), NETWORK)  # listed, never registered
X, Y = (AgentKey(SigningKey(bytes([132 + i]) * 32), NETWORK) for i in range(2))


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

    async def post(self, agent: AgentKey | None, path: str, body: Any) -> tuple[int, Any]:
        data = json.dumps(body).encode()
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

    async def register(
        self, agent: AgentKey, *, ttl: int = 3600, dated: float | None = None
    ) -> int:
        status, answer = await self.post(
            agent, "/agents", body(agent, ttl=ttl, at=dated or self.clock.now())
        )
        assert status in (200, 201), answer
        return status

    async def uptime(self, agent: AgentKey) -> float:
        response = await self.app.test_client().get(f"{API}/agents/{agent.agent_id}/trust")
        assert response.status_code == 200
        ratio: float = json.loads(await response.get_data())["components"]["uptime_ratio"]
        return ratio

    def rows(self, sql: str) -> list[Any]:
        conn = sqlite3.connect(f"file:{self.service.database.path}?mode=ro", uri=True)
        try:
            return conn.execute(sql).fetchall()
        finally:
            conn.close()


def body(agent: AgentKey, *, ttl: int, at: float) -> dict[str, Any]:
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
            "registered_at": format_timestamp(at),
            "ttl": ttl,
        },
        agent.key,
    )
    return {"record": record, "did_document": agent.did_document()}


def sessions(*spans: tuple[AgentKey, float, float]) -> dict[str, Any]:
    return {
        "sessions": [
            {
                "agent_id": agent.agent_id,
                "started_at": format_timestamp(start),
                "ended_at": format_timestamp(end),
            }
            for agent, start, end in spans
        ]
    }


Start = Callable[..., Any]


@pytest.fixture
async def start(tmp_path: Path, nursery: trio.Nursery) -> AsyncIterator[Start]:
    """``await start(clock, name=...)``: a registry on the database ``name``."""
    databases = []

    async def run(clock: Clock, *, name: str = "registry") -> Registry:
        config_file = tmp_path / "ocpd.yml"
        config_file.write_text(
            f"node:\n  network: {NETWORK}\n"
            "registry:\n  cleanup_interval_seconds: 3600\n"
            f"  session_reporters: [{REPORTER.agent_id}, {LISTED_ABSENT.agent_id}]\n"
            "rate_limiting:\n  session_reports_per_minute: 3\n",
            encoding="utf-8",
        )
        config, _ = load_config(config_file, environ={})
        database = await open_database(tmp_path / f"{name}.db", "registry")
        databases.append(database)
        nursery.start_soon(database.run)
        service = RegistryService(database, clock, config, Metrics().registry)
        await nursery.start(service.run)
        return Registry(service, clock)

    yield run
    for database in databases:
        database.close()


async def test_on_time_renewals_count_and_late_ones_do_not(start: Start) -> None:
    with trio.fail_after(TIMEOUT):
        clock = Clock()
        t0 = clock.t
        registry = await start(clock)
        assert await registry.register(X, ttl=600) == 201
        assert await registry.uptime(X) == 0.0
        clock.t = t0 + 300
        assert await registry.register(X, ttl=600) == 200  # on time: [t0, t0 + 300]
        assert await registry.uptime(X) == 1.0
        clock.t = t0 + 1200  # the record held expired at t0 + 900
        assert await registry.uptime(X) == 0.25
        await registry.register(X, ttl=600)  # late: the gap counts nothing
        clock.t = t0 + 1500
        await registry.register(X, ttl=600)  # on time again: [t0 + 1200, t0 + 1500]
        assert await registry.uptime(X) == 600 / 1500
        # durable, and the same after a restart
        assert registry.rows("SELECT first_registered_at, online_recent FROM agents") == [
            (t0, json.dumps([[t0, t0 + 300], [t0 + 1200, t0 + 1500]], separators=(",", ":")))
        ]
        again = await start(clock)
        assert await again.uptime(X) == 600 / 1500


async def test_session_reports_in_process_count_each_second_once(start: Start) -> None:
    with trio.fail_after(TIMEOUT):
        clock = Clock()
        t0 = clock.t
        registry = await start(clock)
        await registry.register(X)
        service = registry.service
        clock.t = t0 + 400
        # a long session reported every 100 s, then once more when it ends
        for now in (t0 + 100, t0 + 200, t0 + 200, t0 + 250):
            assert await service.report_session(X.agent_id, t0, now) is True
        assert await registry.uptime(X) == 250 / 400
        assert await service.report_session(Y.agent_id, t0, t0 + 10) is False  # unknown here
        recorded = await service.report_sessions(
            [
                SessionReport(X.agent_id, t0 + 240, t0 + 300),  # overlaps the first
                SessionReport(Y.agent_id, t0, t0 + 10),
            ]
        )
        assert (recorded.counted, recorded.unknown_agents) == (1, (Y.agent_id,))
        assert await registry.uptime(X) == 300 / 400
        with pytest.raises(MalformedError):
            await service.report_session(X.agent_id, t0 + 10, t0)  # reversed
        with pytest.raises(MalformedError):
            await service.report_session(X.agent_id, t0, clock.t + SKEW + 1)  # in the future
        again = await start(clock)
        assert await again.uptime(X) == 300 / 400


async def test_sessions_over_http_only_from_listed_registered_reporters(start: Start) -> None:
    with trio.fail_after(TIMEOUT):
        clock = Clock()
        t0 = clock.t
        registry = await start(clock)
        for agent in (REPORTER, X, Y):
            await registry.register(agent)
        clock.t = t0 + 100
        status, answer = await registry.post(REPORTER, "/sessions", sessions((X, t0, t0 + 50)))
        assert (status, answer) == (200, {"counted": 1, "unknown_agents": []})
        assert await registry.uptime(X) == 0.5
        # a registered agent that is not listed
        status, answer = await registry.post(Y, "/sessions", sessions((Y, t0, t0 + 100)))
        assert status == 403 and answer["error_code"] == "OCP-403"
        assert await registry.uptime(Y) == 0.0
        # listed but not registered here: its signature cannot be checked
        status, answer = await registry.post(LISTED_ABSENT, "/sessions", sessions((Y, t0, t0 + 1)))
        assert status == 401
        status, answer = await registry.post(None, "/sessions", sessions((Y, t0, t0 + 1)))
        assert status == 401
        # malformed reports: nothing counted
        stranger = AgentKey.generate(NETWORK)
        for bad in (
            {"sessions": []},
            {"sessions": [{"agent_id": X.agent_id, "started_at": t0, "ended_at": t0 + 1}]},
            sessions((X, t0 + 10, t0)),
            sessions((X, t0, clock.t + SKEW + 5)),
            {**sessions((X, t0, t0 + 1)), "extra": 1},
        ):
            clock.t += 1  # a new Authorization each time
            status, answer = await registry.post(REPORTER, "/sessions", bad)
            assert status == 400, bad
        assert await registry.uptime(X) == 50 / (clock.t - t0)
        # an unknown agent is listed, the others counted
        status, answer = await registry.post(
            REPORTER, "/sessions", sessions((stranger, t0, t0 + 1), (Y, t0, t0 + 20))
        )
        assert answer == {"counted": 1, "unknown_agents": [stranger.agent_id]}
        # the reporter's rate limit (3 a minute in this configuration)
        statuses = []
        for _ in range(3):
            clock.t += 1
            status, _ = await registry.post(REPORTER, "/sessions", sessions((X, t0, t0 + 1)))
            statuses.append(status)
        assert statuses[-1] == 429


async def test_renewals_from_a_peer_count_sessions_stay_local(start: Start) -> None:
    """Each registry counts what it saw: signed records travel, session reports do not."""
    with trio.fail_after(TIMEOUT):
        clock = Clock()
        t0 = clock.t
        origin = await start(clock, name="origin")
        peer = await start(clock, name="peer")
        late = await start(clock, name="late")

        async def forward(to: Registry, since: int) -> int:
            rows = origin.rows(f"SELECT seq, kind, body FROM changes WHERE seq > {since}")  # noqa: S608
            for _, kind, change in rows:
                await to.service.store.ingest(
                    kind, json.loads(change), origin="https://origin.test"
                )
            return int(rows[-1][0])

        await origin.register(X, ttl=600)
        seen = await forward(peer, 0)
        clock.t = t0 + 300
        await origin.register(X, ttl=600)
        await forward(peer, seen)
        clock.t = t0 + 600
        assert await origin.service.report_session(X.agent_id, t0 + 300, t0 + 400) is True
        assert await origin.uptime(X) == 400 / 600
        assert await peer.uptime(X) == 300 / 600  # the renewal, not the session
        # a registry that hears of the agent only now starts its window now
        await forward(late, 0)
        assert late.service.ledger.agents[X.agent_id].uptime.since == t0 + 600
        assert await late.uptime(X) == 0.0


async def test_a_version_5_database_starts_uptime_at_the_current_registration(
    tmp_path: Path, start: Start
) -> None:
    with trio.fail_after(TIMEOUT):
        clock = Clock()
        registered = clock.t - 1000
        conn = sqlite3.connect(tmp_path / "registry.db", isolation_level=None)
        migrate(conn, MIGRATIONS["registry"][:5])
        change = body(X, ttl=3600, at=registered)
        conn.execute(
            "INSERT INTO agents (agent_id, record, did_document, registered_at, expires_at, "
            "status) VALUES (?, ?, ?, ?, ?, 'active')",
            (
                X.agent_id,
                json.dumps(change["record"]),
                json.dumps(change["did_document"]),
                registered,
                registered + 3600,
            ),
        )
        conn.close()
        registry = await start(clock)
        assert registry.rows(
            "SELECT first_registered_at, online_seconds, online_horizon, online_recent, "
            "renewal_from FROM agents"
        ) == [(registered, 0.0, registered, "[]", registered)]
        assert registry.service.ledger.agents[X.agent_id].uptime == Uptime(since=registered)
        await registry.register(X, ttl=3600)  # on time: the span since the old record
        assert await registry.uptime(X) == 1.0


def test_session_reporters_are_agent_ids_of_this_network(tmp_path: Path) -> None:
    config_file = tmp_path / "ocpd.yml"
    for reporters, key in (
        ("[not-a-did]", "registry.session_reporters.0"),
        (
            f"[{REPORTER.agent_id}, {AgentKey.generate('other').agent_id}]",
            "registry.session_reporters.1",
        ),
    ):
        config_file.write_text(
            f"node:\n  network: {NETWORK}\nregistry:\n  session_reporters: {reporters}\n"
        )
        with pytest.raises(ConfigError) as info:
            load_config(config_file, environ={})
        assert info.value.key == key
    config_file.write_text("")
    environ = {"OCP_REGISTRY_SESSION_REPORTERS": f"{X.agent_id}, {Y.agent_id}"}
    config, _ = load_config(config_file, environ={**environ, "OCP_NETWORK": NETWORK})
    assert config.registry.session_reporters == (X.agent_id, Y.agent_id)
