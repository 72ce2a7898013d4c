"""The node's durable state: dedup window, message bodies, delivery queues.

Synchronous ``*_txn`` functions run inside the database's group commit
(:meth:`ocpd.storage.Database.write`) or on its read connection; the
:class:`MessageStore` facade awaits them. One :func:`accept_txn` call takes
a whole batch of messages (an HTTP request brings one, a WebSocket session
as many as arrived while the previous batch was committing) and decides each
one on its own, so a duplicate in a batch never rolls back its neighbours.

Times in rows are wall-clock epoch seconds (they come from signed
timestamps); nothing here reads a clock.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Final, Literal

import attrs

from ocpd.proto.errors import OcpError

if TYPE_CHECKING:
    import sqlite3
    from collections.abc import Callable, Sequence

    from ocpd.storage import Database

__all__ = [
    "Accept",
    "Accepted",
    "Held",
    "MessageStore",
    "Pending",
    "SweepCounts",
    "accept_txn",
]

#: Rows handed to a session per read when it catches up on its queue.
PENDING_BATCH: Final = 128

Placement = Literal["local", "remote"]


@attrs.frozen
class Accept:
    """One verified message to commit, with the receivers it is queued for."""

    message_id: str
    digest: bytes
    sender: str
    receiver: str
    message_type: str
    raw: bytes
    #: When the message itself expires (timestamp + ttl): its queue rows go then.
    expires_at: float
    #: When its id may be forgotten (D6: max(ttl, 3600) + clock skew).
    dedup_until: float
    recipients: tuple[tuple[str, Placement], ...]
    at: float
    #: What else accepting the message changes (a task, a vote, …), in the same
    #: transaction; an :class:`~ocpd.proto.errors.OcpError` it raises refuses
    #: the message and undoes everything stored for it.
    effect: Callable[[sqlite3.Connection], object] | None = None


@attrs.frozen
class Accepted:
    """The outcome of one :class:`Accept`.

    ``status`` is ``accepted`` (new: ``seqs`` are its queue rows, one per
    recipient in order), ``duplicate`` (same id, same digest: nothing stored),
    ``conflict`` (same id, other content) or ``refused`` (its effect raised
    ``error``: nothing stored).
    """

    status: Literal["accepted", "duplicate", "conflict", "refused"]
    seqs: tuple[int, ...] = ()
    error: OcpError | None = None


@attrs.frozen
class Pending:
    seq: int
    raw: bytes
    expires_at: float


@attrs.frozen
class Held:
    """A queue row with what handing it on to another node needs."""

    seq: int
    receiver: str
    sender: str
    message_id: str
    raw: bytes
    expires_at: float


@attrs.frozen
class SweepCounts:
    deliveries: int
    message_ids: int
    interactions: int


def accept_txn(conn: sqlite3.Connection, batch: Sequence[Accept]) -> list[Accepted]:
    """Dedup, then store each new message of ``batch``; one outcome per item."""
    out: list[Accepted] = []
    for item in batch:
        if item.effect is None:
            out.append(_accept_one(conn, item))
            continue
        conn.execute("SAVEPOINT effect")
        try:
            accepted = _accept_one(conn, item)
            if accepted.status == "accepted":
                item.effect(conn)
        except OcpError as exc:
            conn.execute("ROLLBACK TO effect")
            accepted = Accepted("refused", error=exc)
        conn.execute("RELEASE effect")
        out.append(accepted)
    return out


def _accept_one(conn: sqlite3.Connection, item: Accept) -> Accepted:
    inserted = conn.execute(
        "INSERT INTO message_ids (message_id, digest, sender, expires_at) VALUES (?, ?, ?, ?) "
        "ON CONFLICT (message_id) DO NOTHING",
        (item.message_id, item.digest, item.sender, item.dedup_until),
    ).rowcount
    if not inserted:
        row = conn.execute(
            "SELECT digest FROM message_ids WHERE message_id = ?", (item.message_id,)
        ).fetchone()
        return Accepted("duplicate" if bytes(row[0]) == item.digest else "conflict")
    seqs: list[int] = []
    if item.recipients:
        body = conn.execute(
            "INSERT INTO message_bodies (message_id, raw, expires_at) VALUES (?, ?, ?)",
            (item.message_id, item.raw, item.expires_at),
        ).lastrowid
        for receiver, placement in item.recipients:
            cursor = conn.execute(
                "INSERT INTO deliveries "
                "(receiver, message_id, body, sender, expires_at, state) "
                "VALUES (?, ?, ?, ?, ?, ?)",
                (receiver, item.message_id, body, item.sender, item.expires_at, placement),
            )
            seqs.append(int(cursor.lastrowid or 0))
    conn.execute(
        "INSERT INTO interactions (sender, receiver, message_type, at) VALUES (?, ?, ?, ?)",
        (item.sender, item.receiver, item.message_type, item.at),
    )
    return Accepted("accepted", tuple(seqs))


def pending_txn(conn: sqlite3.Connection, receiver: str, after: int, limit: int) -> list[Pending]:
    rows = conn.execute(
        "SELECT d.seq, b.raw, d.expires_at FROM deliveries AS d "
        "JOIN message_bodies AS b ON b.body = d.body "
        "WHERE d.receiver = ? AND d.seq > ? ORDER BY d.seq LIMIT ?",
        (receiver, after, limit),
    ).fetchall()
    return [Pending(int(seq), bytes(raw), float(expires)) for seq, raw, expires in rows]


def delivered_txn(conn: sqlite3.Connection, seqs: Sequence[int]) -> int:
    """Drop sent queue rows, and each body no other row needs; returns rows removed."""
    removed = 0
    for seq in seqs:
        row = conn.execute("DELETE FROM deliveries WHERE seq = ? RETURNING body", (seq,)).fetchone()
        if row is None:
            continue
        removed += 1
        conn.execute(
            "DELETE FROM message_bodies WHERE body = ?1 "
            "AND NOT EXISTS (SELECT 1 FROM deliveries WHERE body = ?1)",
            (row[0],),
        )
    return removed


def remote_rows_txn(conn: sqlite3.Connection) -> list[tuple[int, str]]:
    """``(seq, receiver)`` of every row waiting to be handed on, in ``seq`` order."""
    rows = conn.execute(
        "SELECT seq, receiver FROM deliveries WHERE state = 'remote' ORDER BY seq"
    ).fetchall()
    return [(int(seq), str(receiver)) for seq, receiver in rows]


def held_txn(conn: sqlite3.Connection, seq: int) -> Held | None:
    row = conn.execute(
        "SELECT d.receiver, d.sender, d.message_id, b.raw, d.expires_at FROM deliveries AS d "
        "JOIN message_bodies AS b ON b.body = d.body WHERE d.seq = ?",
        (seq,),
    ).fetchone()
    if row is None:
        return None
    receiver, sender, message_id, raw, expires_at = row
    return Held(seq, str(receiver), str(sender), str(message_id), bytes(raw), float(expires_at))


def held_many_txn(conn: sqlite3.Connection, seqs: Sequence[int]) -> dict[int, Held]:
    found = {}
    for seq in seqs:
        held = held_txn(conn, seq)
        if held is not None:
            found[seq] = held
    return found


def give_up_txn(
    conn: sqlite3.Connection, seq: int, notice: Accept | None
) -> tuple[bool, tuple[int, ...]]:
    """Drop an undeliverable row and queue ``notice`` (the sender's error) in one step.

    Returns whether the row was still there, and the notice's queue rows
    (none when the row was gone: someone else delivered it meanwhile).
    """
    if not delivered_txn(conn, [seq]):
        return False, ()
    if notice is None:
        return True, ()
    return True, accept_txn(conn, [notice])[0].seqs


def sweep_txn(conn: sqlite3.Connection, now: float, interactions_before: float) -> SweepCounts:
    deliveries = conn.execute("DELETE FROM deliveries WHERE expires_at < ?", (now,)).rowcount
    conn.execute("DELETE FROM message_bodies WHERE expires_at < ?", (now,))
    ids = conn.execute("DELETE FROM message_ids WHERE expires_at < ?", (now,)).rowcount
    interactions = conn.execute(
        "DELETE FROM interactions WHERE at < ?", (interactions_before,)
    ).rowcount
    return SweepCounts(deliveries, ids, interactions)


def touch_local_agent_txn(conn: sqlite3.Connection, agent_id: str, now: float) -> None:
    conn.execute(
        "INSERT INTO local_agents (agent_id, first_seen, last_seen) VALUES (?, ?, ?) "
        "ON CONFLICT (agent_id) DO UPDATE SET last_seen = excluded.last_seen",
        (agent_id, now, now),
    )


def local_agents_txn(conn: sqlite3.Connection) -> list[str]:
    return [str(row[0]) for row in conn.execute("SELECT agent_id FROM local_agents")]


@attrs.define
class MessageStore:
    """Async facade over the node database (writes are durable on return)."""

    database: Database

    async def accept(
        self,
        batch: Sequence[Accept],
        *,
        then: Callable[[list[Accepted]], None] | None = None,
    ) -> list[Accepted]:
        """Store ``batch``; ``then`` sees the results in commit order (:meth:`Database.write`)."""
        return await self.database.write(lambda conn: accept_txn(conn, batch), then=then)

    async def pending(
        self, receiver: str, *, after: int, limit: int = PENDING_BATCH
    ) -> list[Pending]:
        return await self.database.read(lambda conn: pending_txn(conn, receiver, after, limit))

    async def delivered(self, seqs: Sequence[int]) -> int:
        if not seqs:
            return 0
        return await self.database.write(lambda conn: delivered_txn(conn, seqs))

    async def sweep(self, *, now: float, interactions_before: float) -> SweepCounts:
        return await self.database.write(lambda conn: sweep_txn(conn, now, interactions_before))

    async def remote_rows(self) -> list[tuple[int, str]]:
        return await self.database.read(remote_rows_txn)

    async def held(self, seq: int) -> Held | None:
        return await self.database.read(lambda conn: held_txn(conn, seq))

    async def held_many(self, seqs: Sequence[int]) -> dict[int, Held]:
        """The rows of ``seqs`` still waiting, by seq."""
        return await self.database.read(lambda conn: held_many_txn(conn, seqs))

    async def give_up(
        self,
        seq: int,
        notice: Accept | None,
        *,
        then: Callable[[tuple[bool, tuple[int, ...]]], None] | None = None,
    ) -> tuple[bool, tuple[int, ...]]:
        return await self.database.write(lambda conn: give_up_txn(conn, seq, notice), then=then)

    async def touch_local_agent(self, agent_id: str, *, now: float) -> None:
        await self.database.write(lambda conn: touch_local_agent_txn(conn, agent_id, now))

    async def local_agents(self) -> list[str]:
        return await self.database.read(local_agents_txn)
