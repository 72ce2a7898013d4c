"""The seed directory (NET FR-004d, FR-007a-c): the Quart app in-process, real SQLite."""

from __future__ import annotations

import json
import logging
import sqlite3
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
import trio
import trio.testing
from quart_trio import QuartTrio

from conftest import NOW, Agent
from ocpd.proto.encoding import b64url_encode
from ocpd.proto.ids import format_node_id
from ocpd.proto.netartifacts import build_node_advertisement
from ocpd.proto.signing import sign_net_artifact
from ocpd.registry.seeddir import BODY_TIMEOUT, SeedDirectory
from ocpd.storage import Database, open_database
from ocpd.web import ComponentState, Metrics, create_app

ENDPOINTS = [{"url": "wss://seed.example:443/ocp/v1/peer", "transport": "wss", "priority": 0}]
TIMEOUT = 30
# For tests on a mock clock that sleep through windows and sweep intervals.
MOCK_TIMEOUT = 600
# The app's database calls run in worker threads, and a mock clock that jumps
# whenever every task is blocked would also jump while a thread commits. A
# threshold of half a real second keeps trio time still during database calls
# and still jumps over sleeps, so times and Retry-After values are exact.
AUTOJUMP_THRESHOLD = 0.5


class FakeWallClock:
    """The wall clock the directory compares expiry with; tests move it by hand."""

    def __init__(self, now: float = NOW) -> None:
        self.value = now

    def now(self) -> float:
        return self.value


def node_id(agent: Agent) -> str:
    return format_node_id(agent.public_key)


def advertisement(agent: Agent, sequence: int = 1, **kw: Any) -> dict[str, Any]:
    return build_node_advertisement(
        agent.key, sequence=sequence, endpoints=ENDPOINTS, now=kw.pop("now", NOW), **kw
    )


def encode(adv: dict[str, Any]) -> bytes:
    """Not the canonical form: spacing and key order a re-serialiser would change."""
    return json.dumps(dict(reversed(list(adv.items()))), indent=1).encode()


class Directory:
    """One seed directory, its app, its client and its metrics."""

    def __init__(self, database: Database, clock: FakeWallClock, **kw: Any) -> None:
        self.database = database
        self.clock = clock
        self.metrics = Metrics()
        self.seeds = SeedDirectory(database, clock, self.metrics.registry, **kw)
        state = ComponentState(
            component="registry",
            network="testnet",
            database=database,
            data_dir=database.path.parent,
            metrics=self.metrics,
            started_at=trio.current_time(),
            min_free_disk_bytes=0,
            min_available_memory_bytes=0,
        )
        self.app: QuartTrio = create_app("registry", [state], installers=[self.seeds.install])
        self.client = self.app.test_client()

    async def put(
        self, path_id: str, body: bytes, *, address: str = "192.0.2.1", **kw: Any
    ) -> tuple[int, Any, Any]:
        response = await self.client.put(
            f"/adv/{path_id}",
            data=body,
            headers={"Content-Type": "application/json"},
            scope_base={"client": (address, 40000)},
            **kw,
        )
        data = await response.get_data()
        return response.status_code, json.loads(data), response.headers

    async def publish(self, agent: Agent, adv: dict[str, Any], **kw: Any) -> tuple[int, Any, Any]:
        return await self.put(node_id(agent), encode(adv), **kw)

    async def get(self, path: str) -> tuple[int, bytes, str]:
        response = await self.client.get(path)
        return response.status_code, await response.get_data(), response.content_type

    async def feed(self, query: str = "") -> dict[str, Any]:
        status, body, _ = await self.get(f"/adv{query}")
        assert status == 200, body
        result: dict[str, Any] = json.loads(body)
        return result

    def outcomes(self, outcome: str) -> float:
        value = self.metrics.registry.get_sample_value(
            "ocpd_seed_advertisements_total", {"outcome": outcome}
        )
        return value or 0.0

    def stored(self) -> float | None:
        return self.metrics.registry.get_sample_value("ocpd_seed_advertisements_stored")

    def rows(self) -> list[tuple[str, int, int]]:
        conn = sqlite3.connect(self.database.path)
        try:
            return conn.execute(
                "SELECT node_id, sequence_no, cursor FROM advertisements ORDER BY cursor"
            ).fetchall()
        finally:
            conn.close()


@pytest.fixture
async def database(tmp_path: Path, nursery: trio.Nursery) -> AsyncIterator[Database]:
    db = await open_database(tmp_path / "r.db", "registry")
    nursery.start_soon(db.run)
    yield db
    db.close()


@pytest.fixture
def clock() -> FakeWallClock:
    return FakeWallClock()


@pytest.fixture
def directory(database: Database, clock: FakeWallClock) -> Directory:
    return Directory(database, clock)


@pytest.fixture
def events() -> Iterator[list[logging.LogRecord]]:
    """The registry's log records (the ``ocpd`` logger may not propagate)."""
    records: list[logging.LogRecord] = []

    class Keep(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            records.append(record)

    logger = logging.getLogger("ocpd.registry")
    handler, level = Keep(level=logging.DEBUG), logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.DEBUG)
    yield records
    logger.removeHandler(handler)
    logger.setLevel(level)


def fields(records: list[logging.LogRecord], event: str) -> list[dict[str, Any]]:
    return [r.fields for r in records if getattr(r, "event", None) == event]  # type: ignore[attr-defined]


# --- publish and fetch -------------------------------------------------------------------------


async def test_publish_then_fetch_returns_the_exact_bytes(
    directory: Directory, alice: Agent, events: list[logging.LogRecord]
) -> None:
    with trio.fail_after(TIMEOUT):
        adv = advertisement(alice, sequence=7)
        body = encode(adv)
        status, reply, _ = await directory.put(node_id(alice), body)
        assert status == 201
        assert reply == {"node/id": node_id(alice), "sequence/no": 7, "cursor": 1}

        status, fetched, content_type = await directory.get(f"/adv/{node_id(alice)}")
        assert status == 200 and content_type == "application/json"
        assert fetched == body

        feed = await directory.feed()
        assert feed == {"advertisements": [adv], "cursor": 1, "more": False}
        assert directory.outcomes("accepted") == 1 and directory.stored() == 1
        published = fields(events, "advertisement/published")
        assert published == [
            {"peer": "192.0.2.1", "node/id": node_id(alice), "sequence/no": 7, "cursor": 1}
        ]


async def test_fetch_unknown_and_invalid_node_ids(directory: Directory, alice: Agent) -> None:
    with trio.fail_after(TIMEOUT):
        status, body, _ = await directory.get(f"/adv/{node_id(alice)}")
        assert status == 404 and json.loads(body)["error_code"] == "OCP-404"
        status, body, _ = await directory.get("/adv/did:key:nope")
        assert status == 400
        assert json.loads(body)["error_code"] == "E_PROTO_INVALID"
        assert json.loads(body)["error_class"] == "protocol/invalid-contract"


async def test_newer_sequence_replaces_and_gets_a_new_cursor(
    directory: Directory, alice: Agent
) -> None:
    with trio.fail_after(TIMEOUT):
        assert (await directory.publish(alice, advertisement(alice, 1)))[0] == 201
        newer = advertisement(alice, 5)
        status, reply, _ = await directory.publish(alice, newer)
        assert status == 200 and reply["cursor"] == 2 and reply["sequence/no"] == 5
        status, fetched, _ = await directory.get(f"/adv/{node_id(alice)}")
        assert fetched == encode(newer)
        assert directory.rows() == [(node_id(alice), 5, 2)]
        assert directory.stored() == 1


@pytest.mark.parametrize("offered", [5, 4, 1])
async def test_equal_or_stale_sequence_is_refused(
    directory: Directory, alice: Agent, offered: int, events: list[logging.LogRecord]
) -> None:
    with trio.fail_after(TIMEOUT):
        current = advertisement(alice, 5)
        await directory.publish(alice, current)
        status, error, _ = await directory.publish(alice, advertisement(alice, offered))
        assert status == 409
        assert error["error_code"] == "E_ADV_STALE_SEQ"
        assert error["error_class"] == "advertisement/stale-sequence"
        assert error["details"] == {"current": 5, "offered": offered}
        status, fetched, _ = await directory.get(f"/adv/{node_id(alice)}")
        assert fetched == encode(current)
        assert directory.rows() == [(node_id(alice), 5, 1)]
        assert directory.outcomes("E_ADV_STALE_SEQ") == 1
        assert fields(events, "advertisement/rejected") == [
            {
                "peer": "192.0.2.1",
                "error/code": "E_ADV_STALE_SEQ",
                "error/class": "advertisement/stale-sequence",
                "node/id": node_id(alice),
            }
        ]


async def test_an_expired_current_advertisement_does_not_block_a_restart_at_one(
    directory: Directory, clock: FakeWallClock, alice: Agent
) -> None:
    """A node that lost its sequence counter can publish again once its ad expired."""
    with trio.fail_after(TIMEOUT):
        await directory.publish(alice, advertisement(alice, 9, lifetime=600))
        clock.value = NOW + 600
        status, reply, _ = await directory.publish(alice, advertisement(alice, 1, now=NOW + 600))
        assert status == 201 and reply["cursor"] == 2
        assert directory.rows() == [(node_id(alice), 1, 2)]
        assert directory.stored() == 1


# --- refusals ---------------------------------------------------------------------------------


def _forged(alice: Agent, bob: Agent) -> bytes:
    return encode(advertisement(alice, 2) | {"sequence/no": 3})


def _resigned_by_bob(alice: Agent, bob: Agent) -> bytes:
    return encode(sign_net_artifact("node-advertisement.v1", advertisement(alice), bob.key))


def _key_mismatch(alice: Agent, bob: Agent) -> bytes:
    return encode(advertisement(alice) | {"key/public": b64url_encode(bob.public_key)})


def _expired(alice: Agent, bob: Agent) -> bytes:
    return encode(advertisement(alice, now=NOW - 2 * 86_400))


def _bobs_advertisement(alice: Agent, bob: Agent) -> bytes:
    return encode(advertisement(bob))


def _missing_field(alice: Agent, bob: Agent) -> bytes:
    adv = advertisement(alice)
    del adv["endpoints"]
    return encode(adv)


def _float_sequence(alice: Agent, bob: Agent) -> bytes:
    return encode(advertisement(alice) | {"sequence/no": 1.5})


def _integral_float(alice: Agent, bob: Agent) -> bytes:
    return encode(advertisement(alice) | {"sequence/no": 1.0})


def _array(alice: Agent, bob: Agent) -> bytes:
    return b"[1, 2]"


def _truncated(alice: Agent, bob: Agent) -> bytes:
    return encode(advertisement(alice))[:-5]


def _duplicate_member(alice: Agent, bob: Agent) -> bytes:
    return b'{"node/id": "a", "node/id": "b"}'


def _not_utf8(alice: Agent, bob: Agent) -> bytes:
    return b'{"node/id": "\xff"}'


@pytest.mark.parametrize(
    ("make", "status", "code"),
    [
        (_forged, 400, "E_SIG_INVALID"),
        (_resigned_by_bob, 400, "E_SIG_INVALID"),
        (_key_mismatch, 400, "E_SIG_UNKNOWN_SIGNER"),
        (_expired, 400, "E_ADV_EXPIRED"),
        (_bobs_advertisement, 400, "E_PROTO_INVALID"),
        (_missing_field, 400, "E_PROTO_INVALID"),
        (_float_sequence, 400, "E_PROTO_INVALID"),
        (_integral_float, 400, "E_PROTO_INVALID"),
        (_array, 400, "E_PROTO_INVALID"),
        (_truncated, 400, "OCP-400"),
        (_duplicate_member, 400, "OCP-400"),
        (_not_utf8, 400, "OCP-400"),
    ],
)
async def test_bad_advertisements_are_refused_and_nothing_is_stored(
    directory: Directory,
    alice: Agent,
    bob: Agent,
    make: Any,
    status: int,
    code: str,
    events: list[logging.LogRecord],
) -> None:
    with trio.fail_after(TIMEOUT):
        body = make(alice, bob)
        got, error, _ = await directory.put(node_id(alice), body)
        assert (got, error["error_code"]) == (status, code)
        assert ("error_class" in error) == code.startswith("E_")
        assert error["message"]
        assert directory.rows() == []
        assert (await directory.get(f"/adv/{node_id(alice)}"))[0] == 404
        assert (await directory.feed())["advertisements"] == []
        assert directory.outcomes(code) == 1 and directory.outcomes("accepted") == 0
        (rejected,) = fields(events, "advertisement/rejected")
        assert rejected["error/code"] == code and rejected["error/class"]
        # Logs carry codes and ids, never the body.
        assert all(body.decode("utf-8", "replace") not in str(r.__dict__) for r in events)


async def test_path_must_be_a_node_id(directory: Directory, alice: Agent) -> None:
    with trio.fail_after(TIMEOUT):
        body = encode(advertisement(alice))
        for path in ["not-a-node", node_id(alice).replace("node:", "participant:")]:
            status, error, _ = await directory.put(path, body)
            assert (status, error["error_code"]) == (400, "E_PROTO_INVALID")
        assert directory.rows() == []


async def test_oversize_body_with_content_length(database: Database, alice: Agent) -> None:
    with trio.fail_after(TIMEOUT):
        adv = encode(advertisement(alice))
        directory = Directory(database, FakeWallClock(), max_body=len(adv) - 1)
        status, error, _ = await directory.put(node_id(alice), adv)
        assert (status, error["error_code"]) == (413, "OCP-413")
        assert error["details"] == {"limit": len(adv) - 1}
        assert directory.rows() == []
        # The same advertisement fits a larger limit.
        roomy = Directory(database, FakeWallClock(), max_body=len(adv))
        assert (await roomy.put(node_id(alice), adv))[0] == 201


async def test_oversize_body_without_content_length_is_refused_while_reading(
    directory: Directory, alice: Agent
) -> None:
    with trio.fail_after(TIMEOUT):
        async with directory.client.request(f"/adv/{node_id(alice)}", method="PUT") as conn:
            for _ in range(3):
                await conn.send(b" " * 30_000)
            await conn.send_complete()
            response = await conn.as_response()
        assert response.status_code == 413
        assert json.loads(await response.get_data())["error_code"] == "OCP-413"
        assert directory.rows() == []


async def test_a_body_that_never_ends_times_out(
    directory: Directory, alice: Agent, autojump_clock: trio.testing.MockClock
) -> None:
    with trio.fail_after(MOCK_TIMEOUT):
        start = trio.current_time()
        async with directory.client.request(f"/adv/{node_id(alice)}", method="PUT") as conn:
            await conn.send(b'{"node/id": ')
            response = await conn.as_response()
        assert trio.current_time() - start == BODY_TIMEOUT
        assert response.status_code == 408
        assert json.loads(await response.get_data())["error_code"] == "OCP-408"


async def test_there_is_no_delete(directory: Directory, alice: Agent) -> None:
    with trio.fail_after(TIMEOUT):
        await directory.publish(alice, advertisement(alice))
        response = await directory.client.delete(f"/adv/{node_id(alice)}")
        assert response.status_code == 405
        assert len(directory.rows()) == 1


# --- the incremental feed -----------------------------------------------------------------------


async def test_since_cursor_batches_with_limit_and_more(
    directory: Directory, alice: Agent, bob: Agent, carol: Agent
) -> None:
    with trio.fail_after(TIMEOUT):
        ads = {a.id: advertisement(a, 1) for a in (alice, bob, carol)}
        for agent in (alice, bob, carol):
            await directory.publish(agent, ads[agent.id])

        first = await directory.feed("?limit=2")
        assert first == {"advertisements": [ads[alice.id], ads[bob.id]], "cursor": 2, "more": True}
        second = await directory.feed("?since=2&limit=2")
        assert second == {"advertisements": [ads[carol.id]], "cursor": 3, "more": False}
        assert await directory.feed("?since=3") == {
            "advertisements": [],
            "cursor": 3,
            "more": False,
        }

        # A replaced advertisement reappears after the cursor, and only once.
        newer = advertisement(alice, 2)
        await directory.publish(alice, newer)
        assert await directory.feed("?since=3") == {
            "advertisements": [newer],
            "cursor": 4,
            "more": False,
        }
        everything = await directory.feed()
        assert everything["advertisements"] == [ads[bob.id], ads[carol.id], newer]
        assert everything["cursor"] == 4
        assert (await directory.feed("?since=99"))["cursor"] == 99


async def test_feed_splices_the_stored_bytes(directory: Directory, alice: Agent) -> None:
    with trio.fail_after(TIMEOUT):
        body = encode(advertisement(alice))
        await directory.put(node_id(alice), body)
        _, raw, _ = await directory.get("/adv?since=0")
        assert body in raw


async def test_limit_is_clamped_to_the_page_limit(
    database: Database, alice: Agent, bob: Agent, carol: Agent
) -> None:
    with trio.fail_after(TIMEOUT):
        directory = Directory(database, FakeWallClock(), page_limit=2)
        for agent in (alice, bob, carol):
            await directory.publish(agent, advertisement(agent))
        page = await directory.feed("?limit=500")
        assert len(page["advertisements"]) == 2 and page["more"] is True
        assert len((await directory.feed())["advertisements"]) == 2


@pytest.mark.parametrize(
    "query",
    ["?since=-1", "?since=abc", "?since=1.5", "?since=+1", "?since=", "?limit=0",
     "?limit=x", "?since=1&since=2", "?since=99999999999999999"],
)  # fmt: skip
async def test_invalid_feed_parameters(directory: Directory, query: str) -> None:
    with trio.fail_after(TIMEOUT):
        status, body, _ = await directory.get(f"/adv{query}")
        assert status == 400
        error = json.loads(body)
        assert error["error_code"] == "OCP-400" and "error_class" not in error


async def test_expired_advertisements_are_invisible_at_once(
    directory: Directory, clock: FakeWallClock, alice: Agent, bob: Agent
) -> None:
    with trio.fail_after(TIMEOUT):
        await directory.publish(alice, advertisement(alice, lifetime=100))
        await directory.publish(bob, advertisement(bob, lifetime=1000))
        clock.value = NOW + 100
        assert (await directory.get(f"/adv/{node_id(alice)}"))[0] == 404
        feed = await directory.feed()
        assert [a["node/id"] for a in feed["advertisements"]] == [node_id(bob)]
        # Not yet swept: the row is still there.
        assert len(directory.rows()) == 2


# --- rate limits --------------------------------------------------------------------------------


async def test_publisher_rate_limit_and_forgeries_do_not_spend_it(
    database: Database, alice: Agent, bob: Agent, autojump_clock: trio.testing.MockClock
) -> None:
    autojump_clock.autojump_threshold = AUTOJUMP_THRESHOLD
    with trio.fail_after(MOCK_TIMEOUT):
        # 3 per 60 s: a burst of 3, then one every 20 s.
        directory = Directory(database, FakeWallClock(), publish_rate=3, publish_window=60)
        start = trio.current_time()
        assert (await directory.publish(alice, advertisement(alice, 1)))[0] == 201

        # Forged, malformed and replayed PUTs for alice's id, from anywhere,
        # do not spend alice's budget: two more publishes still fit the burst.
        for address in ("198.51.100.1", "198.51.100.2"):
            for _ in range(3):
                forged = encode(advertisement(alice, 50) | {"sequence/no": 51})
                assert (await directory.put(node_id(alice), forged, address=address))[0] == 400
                assert (await directory.put(node_id(alice), b"{}", address=address))[0] == 400
                replay = encode(advertisement(alice, 1))
                assert (await directory.put(node_id(alice), replay, address=address))[0] == 409
        for sequence in (2, 3):
            assert (await directory.publish(alice, advertisement(alice, sequence)))[0] == 200
        status, error, headers = await directory.publish(alice, advertisement(alice, 4))
        assert (status, error["error_code"], headers["Retry-After"]) == (429, "OCP-429", "20")
        assert error["details"] == {"retry_after": 20}
        assert directory.outcomes("OCP-429") == 1
        # A limited publisher's forgeries are still reported as forgeries.
        forged = encode(advertisement(alice, 50) | {"sequence/no": 51})
        assert (await directory.put(node_id(alice), forged))[1]["error_code"] == "E_SIG_INVALID"
        # Other nodes have their own budgets.
        assert (await directory.publish(bob, advertisement(bob)))[0] == 201
        assert trio.current_time() == start

        autojump_clock.jump(19)
        status, _, headers = await directory.publish(alice, advertisement(alice, 4))
        assert (status, headers["Retry-After"]) == (429, "1")
        await trio.sleep(1)
        assert trio.current_time() - start == 20
        assert (await directory.publish(alice, advertisement(alice, 4)))[0] == 200
        status, _, headers = await directory.publish(alice, advertisement(alice, 5))
        assert (status, headers["Retry-After"]) == (429, "20")

        # After a full window the whole burst is back.
        await trio.sleep(60)
        for sequence in (5, 6, 7):
            assert (await directory.publish(alice, advertisement(alice, sequence)))[0] == 200
        assert (await directory.publish(alice, advertisement(alice, 8)))[0] == 429
        assert directory.rows()[-1][:2] == (node_id(alice), 7)


async def test_address_rate_limit_bounds_garbage(
    database: Database, alice: Agent, autojump_clock: trio.testing.MockClock
) -> None:
    autojump_clock.autojump_threshold = AUTOJUMP_THRESHOLD
    with trio.fail_after(MOCK_TIMEOUT):
        # publish_rate 1 per 60 s: an address gets 10 PUTs per 60 s, one per 6 s.
        directory = Directory(database, FakeWallClock(), publish_rate=1, publish_window=60)
        for _ in range(10):
            assert (await directory.put(node_id(alice), b"garbage", address="203.0.113.9"))[
                0
            ] == 400
        status, error, headers = await directory.publish(
            alice, advertisement(alice), address="203.0.113.9"
        )
        assert (status, error["error_code"], headers["Retry-After"]) == (429, "OCP-429", "6")
        # Alice herself, from her own address, is unaffected.
        assert (await directory.publish(alice, advertisement(alice), address="192.0.2.50"))[
            0
        ] == 201
        await trio.sleep(6)
        status, _, _ = await directory.put(node_id(alice), b"garbage", address="203.0.113.9")
        assert status == 400
        assert (await directory.put(node_id(alice), b"", address="203.0.113.9"))[0] == 429


async def test_ipv6_addresses_share_the_budget_of_their_slash_64(
    database: Database, alice: Agent
) -> None:
    with trio.fail_after(TIMEOUT):
        directory = Directory(database, FakeWallClock(), publish_rate=1, publish_window=60)
        for host in range(10):
            status, _, _ = await directory.put(node_id(alice), b"", address=f"2001:db8::{host:x}")
            assert status == 400
        status, _, _ = await directory.put(node_id(alice), b"", address="2001:db8::ffff:1")
        assert status == 429
        assert (await directory.put(node_id(alice), b"", address="2001:db8:0:1::1"))[0] == 400


# --- sweeper, metrics, durability ------------------------------------------------------------


async def test_sweeper_deletes_expired_advertisements(
    database: Database,
    alice: Agent,
    bob: Agent,
    autojump_clock: trio.testing.MockClock,
    nursery: trio.Nursery,
    events: list[logging.LogRecord],
) -> None:
    autojump_clock.autojump_threshold = AUTOJUMP_THRESHOLD
    with trio.fail_after(MOCK_TIMEOUT):
        clock = FakeWallClock()
        directory = Directory(database, clock, sweep_interval=60)
        await directory.publish(alice, advertisement(alice, lifetime=100))
        await directory.publish(bob, advertisement(bob, lifetime=1000))
        start = trio.current_time()
        await nursery.start(directory.seeds.run)
        assert directory.stored() == 2

        clock.value = NOW + 100
        await trio.sleep(59)
        assert len(directory.rows()) == 2  # not yet time
        await trio.sleep(2)
        assert trio.current_time() - start == 61
        assert [row[0] for row in directory.rows()] == [node_id(bob)]
        assert directory.stored() == 1
        assert fields(events, "advertisement/swept") == [{"count": 1}]

        clock.value = NOW + 1000
        await trio.sleep(60)
        assert directory.rows() == [] and directory.stored() == 0


async def test_cursor_is_not_reused_after_the_newest_row_is_swept(
    directory: Directory, clock: FakeWallClock, alice: Agent, bob: Agent, carol: Agent
) -> None:
    with trio.fail_after(TIMEOUT):
        await directory.publish(alice, advertisement(alice))
        await directory.publish(bob, advertisement(bob, lifetime=100))
        assert (await directory.feed())["cursor"] == 2
        clock.value = NOW + 100
        assert await directory.seeds.sweep() == 1
        carols = advertisement(carol, now=NOW + 100)
        status, reply, _ = await directory.publish(carol, carols)
        assert (status, reply["cursor"]) == (201, 3)
        assert (await directory.feed("?since=2"))["advertisements"] == [carols]


async def test_stored_gauge_is_counted_at_start(
    database: Database, alice: Agent, nursery: trio.Nursery
) -> None:
    with trio.fail_after(TIMEOUT):
        first = Directory(database, FakeWallClock())
        await first.publish(alice, advertisement(alice))
        second = Directory(database, FakeWallClock())
        assert second.stored() == 0
        await nursery.start(second.seeds.run)
        assert second.stored() == 1


async def test_advertisements_and_cursor_survive_a_restart(
    tmp_path: Path, alice: Agent, bob: Agent
) -> None:
    with trio.fail_after(TIMEOUT):
        path = tmp_path / "r.db"
        body = encode(advertisement(alice, 3))
        async with trio.open_nursery() as nursery:
            db = await open_database(path, "registry")
            nursery.start_soon(db.run)
            directory = Directory(db, FakeWallClock())
            await directory.put(node_id(alice), body)
            await directory.publish(bob, advertisement(bob))
            db.close()

        async with trio.open_nursery() as nursery:
            db = await open_database(path, "registry")
            nursery.start_soon(db.run)
            directory = Directory(db, FakeWallClock())
            await nursery.start(directory.seeds.run)
            assert directory.stored() == 2
            assert (await directory.get(f"/adv/{node_id(alice)}"))[1] == body
            assert (await directory.feed())["cursor"] == 2
            status, error, _ = await directory.publish(alice, advertisement(alice, 3))
            assert (status, error["error_code"]) == (409, "E_ADV_STALE_SEQ")
            status, reply, _ = await directory.publish(alice, advertisement(alice, 4))
            assert (status, reply["cursor"]) == (200, 3)
            nursery.cancel_scope.cancel()
            db.close()


async def test_metrics_are_exposed_on_the_registry_port(directory: Directory, alice: Agent) -> None:
    with trio.fail_after(TIMEOUT):
        await directory.publish(alice, advertisement(alice))
        await directory.put(node_id(alice), b"{")
        status, text, _ = await directory.get("/metrics")
        assert status == 200
        assert b'ocpd_seed_advertisements_total{outcome="accepted"} 1.0' in text
        assert b'ocpd_seed_advertisements_total{outcome="OCP-400"} 1.0' in text
        assert b"ocpd_seed_advertisements_stored 1.0" in text
