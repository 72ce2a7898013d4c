"""The node's storage functions: dedup, queue order, body lifetime, sweeping."""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator

import pytest

from ocpd.node.store import (
    Accept,
    accept_txn,
    delivered_txn,
    held_txn,
    local_agents_txn,
    pending_txn,
    sweep_txn,
    touch_local_agent_txn,
)
from ocpd.storage import MIGRATIONS, migrate


@pytest.fixture
def conn() -> Iterator[sqlite3.Connection]:
    connection = sqlite3.connect(":memory:", isolation_level=None)
    migrate(connection, MIGRATIONS["node"])
    yield connection
    connection.close()


def _accept(
    message_id: str,
    *,
    digest: bytes = b"d1",
    recipients: tuple[str, ...] = ("bob",),
    expires_at: float = 1000.0,
    dedup_until: float = 5000.0,
) -> Accept:
    return Accept(
        message_id=message_id,
        digest=digest,
        sender="alice",
        receiver=recipients[0] if len(recipients) == 1 else "broadcast",
        message_type="discovery_ping",
        raw=f"raw-{message_id}".encode(),
        expires_at=expires_at,
        dedup_until=dedup_until,
        recipients=tuple((r, "local") for r in recipients),
        at=10.0,
    )


def test_dedup_by_id_and_digest_within_one_batch(conn: sqlite3.Connection) -> None:
    first = accept_txn(conn, [_accept("m1"), _accept("m1"), _accept("m1", digest=b"other")])
    assert [r.status for r in first] == ["accepted", "duplicate", "conflict"]
    assert len(first[0].seqs) == 1
    again = accept_txn(conn, [_accept("m1")])
    assert again[0].status == "duplicate"
    assert conn.execute("SELECT count(*) FROM deliveries").fetchone()[0] == 1
    assert conn.execute("SELECT count(*) FROM interactions").fetchone()[0] == 1


def test_queue_is_in_seq_order_per_receiver(conn: sqlite3.Connection) -> None:
    accept_txn(conn, [_accept(f"m{i}", recipients=("bob", "carol")) for i in range(5)])
    bob = pending_txn(conn, "bob", 0, 100)
    assert [p.raw for p in bob] == [f"raw-m{i}".encode() for i in range(5)]
    assert [p.seq for p in bob] == sorted(p.seq for p in bob)
    after = pending_txn(conn, "bob", bob[1].seq, 2)
    assert [p.raw for p in after] == [b"raw-m2", b"raw-m3"]


def test_body_stays_until_its_last_receiver_got_it(conn: sqlite3.Connection) -> None:
    accept_txn(conn, [_accept("m1", recipients=("bob", "carol"))])
    bob = pending_txn(conn, "bob", 0, 10)
    assert delivered_txn(conn, [p.seq for p in bob]) == 1
    assert conn.execute("SELECT count(*) FROM message_bodies").fetchone()[0] == 1
    carol = pending_txn(conn, "carol", 0, 10)
    assert carol[0].raw == b"raw-m1"
    assert delivered_txn(conn, [carol[0].seq, carol[0].seq]) == 1
    assert conn.execute("SELECT count(*) FROM message_bodies").fetchone()[0] == 0
    # the id stays for dedup
    assert accept_txn(conn, [_accept("m1")])[0].status == "duplicate"


def test_sweep_removes_what_expired(conn: sqlite3.Connection) -> None:
    accept_txn(
        conn,
        [
            _accept("old", expires_at=100.0, dedup_until=200.0),
            _accept("new", expires_at=1000.0, dedup_until=5000.0),
        ],
    )
    counts = sweep_txn(conn, 150.0, interactions_before=0.0)
    assert (counts.deliveries, counts.message_ids, counts.interactions) == (1, 0, 0)
    assert [p.raw for p in pending_txn(conn, "bob", 0, 10)] == [b"raw-new"]
    counts = sweep_txn(conn, 250.0, interactions_before=11.0)
    assert (counts.deliveries, counts.message_ids, counts.interactions) == (0, 1, 2)
    # the swept id may be used again
    assert accept_txn(conn, [_accept("old", digest=b"x")])[0].status == "accepted"


def test_broadcast_without_receivers_keeps_only_the_id(conn: sqlite3.Connection) -> None:
    item = Accept(
        message_id="b1",
        digest=b"d",
        sender="alice",
        receiver="did:ocp:testnet:broadcast",
        message_type="broadcast",
        raw=b"x",
        expires_at=10.0,
        dedup_until=20.0,
        recipients=(),
        at=1.0,
    )
    assert accept_txn(conn, [item])[0].seqs == ()
    assert conn.execute("SELECT count(*) FROM message_bodies").fetchone()[0] == 0


def test_local_agents(conn: sqlite3.Connection) -> None:
    touch_local_agent_txn(conn, "bob", 1.0)
    touch_local_agent_txn(conn, "bob", 2.0)
    touch_local_agent_txn(conn, "carol", 3.0)
    assert sorted(local_agents_txn(conn)) == ["bob", "carol"]
    assert conn.execute(
        "SELECT first_seen, last_seen FROM local_agents WHERE agent_id = 'bob'"
    ).fetchone() == (1.0, 2.0)


def test_queued_messages_survive_the_move_to_integer_body_keys() -> None:
    """A version 3 database with queued rows keeps every row and body at version 4."""
    conn = sqlite3.connect(":memory:", isolation_level=None)
    migrate(conn, MIGRATIONS["node"][:3])
    conn.executemany(
        "INSERT INTO message_bodies (message_id, raw, expires_at) VALUES (?, ?, 1000.0)",
        [("m1", b"raw-m1"), ("m2", b"raw-m2")],
    )
    conn.executemany(
        "INSERT INTO deliveries (seq, receiver, message_id, sender, expires_at, state) "
        "VALUES (?, ?, ?, 'alice', 1000.0, ?)",
        [(7, "bob", "m1", "local"), (8, "carol", "m1", "remote"), (9, "bob", "m2", "local")],
    )
    migrate(conn, MIGRATIONS["node"])
    assert [(p.seq, p.raw) for p in pending_txn(conn, "bob", 0, 10)] == [
        (7, b"raw-m1"),
        (9, b"raw-m2"),
    ]
    held = held_txn(conn, 8)
    assert held is not None
    assert (held.receiver, held.message_id, held.raw) == ("carol", "m1", b"raw-m1")
    assert delivered_txn(conn, [7, 9]) == 2
    assert conn.execute("SELECT message_id FROM message_bodies").fetchall() == [("m1",)]
    # sequence numbers go on from where they were
    seqs = accept_txn(conn, [_accept("m3")])[0].seqs
    assert seqs[0] > 9
    assert conn.execute("PRAGMA integrity_check").fetchone() == ("ok",)
