"""The registry's SQL: synchronous ``*_txn`` functions for :class:`~ocpd.storage.Database`.

Each runs inside one group commit (writes) or on the read connection
(reads), in a worker thread. Signed artifacts are stored as the JSON text of
what was verified; the other columns are indexes derived from it. Every
write that stores an artifact also appends its ``changes`` row and returns
its ``seq``, so the artifact and its place in the federation feed commit
together.
"""

from __future__ import annotations

import json
import secrets
from typing import TYPE_CHECKING, Any, Final

import attrs

from ocpd.proto.trust import Uptime

if TYPE_CHECKING:
    import sqlite3
    from collections.abc import Sequence

__all__ = [
    "FEED_EPOCH_KEY",
    "AgentRow",
    "did_history_txn",
    "feed_epoch_txn",
    "insert_bond_txn",
    "insert_certification_txn",
    "insert_did_update_txn",
    "insert_rating_txn",
    "insert_vouch_txn",
    "load_federation_txn",
    "load_registry_txn",
    "mark_inactive_txn",
    "new_feed_epoch_txn",
    "parked_txn",
    "reset_peer_txn",
    "revoke_txn",
    "save_progress_txn",
    "save_uptime_txn",
    "settle_parked_txn",
    "text",
    "uptime_from_row",
    "write_agent_txn",
]


def text(value: object) -> str:
    """The stored JSON text of a value (compact, UTF-8)."""
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False)


def _change_txn(conn: sqlite3.Connection, kind: str, key: str, body: str) -> int:
    cursor = conn.execute(
        "INSERT INTO changes (kind, key, body) VALUES (?, ?, ?)", (kind, key, body)
    )
    assert cursor.lastrowid is not None  # noqa: S101 - set by every INSERT
    return cursor.lastrowid


# --- agents and DID documents -----------------------------------------------------------


def load_registry_txn(conn: sqlite3.Connection) -> tuple[list[Any], ...]:
    return (
        conn.execute(
            "SELECT record, did_document, status, registration IS NULL, "
            # the uptime (see uptime_from_row); migration v6 backfilled it
            "coalesce(first_registered_at, registered_at), online_seconds, "
            "coalesce(online_horizon, first_registered_at, registered_at), online_recent, "
            "coalesce(renewal_from, registered_at) FROM agents"
        ).fetchall(),
        conn.execute("SELECT digest, artifact, revoked_at FROM vouches").fetchall(),
        conn.execute("SELECT artifact, revoked_at FROM bonds").fetchall(),
        conn.execute("SELECT artifact FROM ratings").fetchall(),
        conn.execute("SELECT artifact, revoked_at FROM certifications").fetchall(),
    )


def uptime_from_row(
    since: float, settled: float, horizon: float, recent: str, renewal_from: float
) -> Uptime:
    """An :class:`Uptime` from the columns ``load_registry_txn`` reads."""
    intervals = tuple((float(start), float(end)) for start, end in json.loads(recent))
    return Uptime(
        since=since,
        settled=settled,
        horizon=horizon,
        recent=intervals,
        renewal_from=renewal_from,
    )


def _uptime_values(uptime: Uptime) -> tuple[float, float, float, str, float]:
    recent = text([[start, end] for start, end in uptime.recent])
    return uptime.since, uptime.settled, uptime.horizon, recent, uptime.renewal_from


def save_uptime_txn(uptimes: Sequence[tuple[str, Uptime]], conn: sqlite3.Connection) -> None:
    """Store agents' uptime; no change row: uptime is what this registry saw, never federated."""
    conn.executemany(
        "UPDATE agents SET first_registered_at = ?, online_seconds = ?, online_horizon = ?, "
        "online_recent = ?, renewal_from = ? WHERE agent_id = ?",
        [(*_uptime_values(uptime), agent_id) for agent_id, uptime in uptimes],
    )


def mark_inactive_txn(agent_ids: Sequence[str], now: float, conn: sqlite3.Connection) -> None:
    conn.executemany(
        "UPDATE agents SET status = 'inactive' WHERE agent_id = ? AND expires_at < ?",
        [(a, now) for a in agent_ids],
    )


def _agent_body_txn(conn: sqlite3.Connection, agent_id: str) -> str:
    """The ``agent`` change body: record, document, and the evidence for the document.

    Assembled from the stored JSON texts without parsing them again.
    """
    record, document, registration = conn.execute(
        "SELECT record, did_document, registration FROM agents WHERE agent_id = ?", (agent_id,)
    ).fetchone()
    parts = [f'{{"record":{record},"did_document":{document}']
    if registration is not None:
        parts.append(f',"registration":{registration}')
    updates = conn.execute(
        "SELECT artifact FROM did_updates WHERE agent_id = ? ORDER BY rowid", (agent_id,)
    ).fetchall()
    if updates:
        parts.append(f',"did_updates":[{",".join(update for (update,) in updates)}]')
    parts.append("}")
    return "".join(parts)


@attrs.frozen
class AgentRow:
    agent_id: str
    record_text: str
    document_text: str
    registered_at: float
    expires_at: float
    status: str
    registration: str | None
    """A proof to store; ``None`` keeps the stored one."""
    updates: Sequence[tuple[str, float, dict[str, Any]]] | None
    """The whole update chain to store, in order; ``None`` keeps the stored one."""
    uptime: Uptime | None = None
    """The agent's uptime after this write; ``None`` keeps the stored one."""


def write_agent_txn(row: AgentRow, conn: sqlite3.Connection) -> int:
    conn.execute(
        "INSERT INTO agents (agent_id, record, did_document, registered_at, expires_at, status, "
        "registration) VALUES (?, ?, ?, ?, ?, ?, ?) ON CONFLICT (agent_id) DO UPDATE SET "
        "record = excluded.record, did_document = excluded.did_document, "
        "registered_at = excluded.registered_at, expires_at = excluded.expires_at, "
        "status = excluded.status, "
        "registration = coalesce(excluded.registration, agents.registration)",
        (
            row.agent_id,
            row.record_text,
            row.document_text,
            row.registered_at,
            row.expires_at,
            row.status,
            row.registration,
        ),
    )
    if row.uptime is not None:
        save_uptime_txn([(row.agent_id, row.uptime)], conn)
    if row.updates is not None:
        conn.execute("DELETE FROM did_updates WHERE agent_id = ?", (row.agent_id,))
        conn.executemany(
            "INSERT INTO did_updates (digest, agent_id, updated_at, artifact) VALUES (?, ?, ?, ?)",
            [(digest, row.agent_id, at, text(update)) for digest, at, update in row.updates],
        )
    return _change_txn(conn, "agent", row.agent_id, _agent_body_txn(conn, row.agent_id))


def did_history_txn(
    agent_id: str, conn: sqlite3.Connection
) -> tuple[list[tuple[str, float]], str | None]:
    """The digests and times of an agent's applied updates, and its stored proof."""
    updates = conn.execute(
        "SELECT digest, updated_at FROM did_updates WHERE agent_id = ?", (agent_id,)
    ).fetchall()
    row = conn.execute("SELECT registration FROM agents WHERE agent_id = ?", (agent_id,)).fetchone()
    return updates, None if row is None else row[0]


def insert_did_update_txn(
    agent_id: str,
    digest: str,
    updated_at: float,
    update: dict[str, Any],
    document_text: str,
    conn: sqlite3.Connection,
) -> int:
    conn.execute("UPDATE agents SET did_document = ? WHERE agent_id = ?", (document_text, agent_id))
    conn.execute(
        "INSERT INTO did_updates (digest, agent_id, updated_at, artifact) VALUES (?, ?, ?, ?)",
        (digest, agent_id, updated_at, text(update)),
    )
    return _change_txn(conn, "did_update", agent_id, text({"agent_id": agent_id, "update": update}))


# --- trust artifacts ---------------------------------------------------------------------------


def insert_vouch_txn(
    digest: str, vouch: dict[str, Any], issued: float, expires: float, conn: sqlite3.Connection
) -> int:
    body = text(vouch)
    conn.execute(
        "INSERT INTO vouches (digest, attester, subject, issued_at, expires_at, artifact) "
        "VALUES (?, ?, ?, ?, ?, ?)",
        (digest, vouch["attester"], vouch["subject"], issued, expires, body),
    )
    return _change_txn(conn, "vouch", digest, body)


def insert_bond_txn(
    bond: dict[str, Any], established: float, expires: float, conn: sqlite3.Connection
) -> int:
    body = text(bond)
    first, second = bond["agents"]
    conn.execute(
        "INSERT INTO bonds (bond_id, agent_a, agent_b, established_at, expires_at, artifact) "
        "VALUES (?, ?, ?, ?, ?, ?)",
        (bond["bond_id"], first, second, established, expires, body),
    )
    return _change_txn(conn, "bond", bond["bond_id"], body)


def insert_certification_txn(
    certification: dict[str, Any], issued: float, expires: float, conn: sqlite3.Connection
) -> int:
    body = text(certification)
    conn.execute(
        "INSERT INTO certifications (certification_id, subject, certifier, issued_at, "
        "expires_at, artifact) VALUES (?, ?, ?, ?, ?, ?)",
        (
            certification["certification_id"],
            certification["subject"],
            certification["certifier"],
            issued,
            expires,
            body,
        ),
    )
    return _change_txn(conn, "certification", certification["certification_id"], body)


_REVOKE_SQL: Final = {
    "vouch_revocation": "UPDATE vouches SET revoked_at = ?, revocation = ? WHERE digest = ?",
    "bond_revocation": "UPDATE bonds SET revoked_at = ?, revocation = ? WHERE bond_id = ?",
    "certification_revocation": (
        "UPDATE certifications SET revoked_at = ?, revocation = ? WHERE certification_id = ?"
    ),
}


def revoke_txn(
    kind: str, key: str, revocation: dict[str, Any], now: float, conn: sqlite3.Connection
) -> int:
    """Mark a vouch (by digest), a bond or a certification (by id) revoked; ``kind`` says which."""
    body = text(revocation)
    conn.execute(_REVOKE_SQL[kind], (now, body, key))
    return _change_txn(conn, kind, key, body)


def insert_rating_txn(
    rating: dict[str, Any], rated_at: float, conn: sqlite3.Connection
) -> int | None:
    """The change's seq, or ``None`` when this rating was already stored."""
    body = text(rating)
    rater, subject = rating["rater"], rating["subject"]
    inserted = conn.execute(
        "INSERT OR IGNORE INTO ratings (rater, subject, rated_at, rating, artifact) "
        "VALUES (?, ?, ?, ?, ?)",
        (rater, subject, rated_at, float(rating["rating"]), body),
    ).rowcount
    return _change_txn(conn, "rating", f"{rater}>{subject}", body) if inserted else None


# --- federation -------------------------------------------------------------------------------


def load_federation_txn(conn: sqlite3.Connection) -> tuple[list[Any], list[Any]]:
    return (
        conn.execute("SELECT peer, cursor, node_id, feed_epoch FROM federation_peers").fetchall(),
        conn.execute("SELECT peer, count(*) FROM federation_parked GROUP BY peer").fetchall(),
    )


def save_progress_txn(
    peer: str,
    cursor: int,
    rejected: int,
    last_ok: float,
    node_id: str | None,
    feed_epoch: str | None,
    parked: Sequence[tuple[int, str, str]],
    conn: sqlite3.Connection,
) -> None:
    """A page is applied: move the peer's cursor, count its rejections, park the rest."""
    conn.execute(
        "INSERT INTO federation_peers (peer, cursor, rejected, last_ok, node_id, feed_epoch) "
        "VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT (peer) DO UPDATE SET cursor = excluded.cursor, "
        "rejected = federation_peers.rejected + excluded.rejected, last_ok = excluded.last_ok, "
        "node_id = coalesce(excluded.node_id, federation_peers.node_id), "
        "feed_epoch = coalesce(excluded.feed_epoch, federation_peers.feed_epoch)",
        (peer, cursor, rejected, last_ok, node_id, feed_epoch),
    )
    conn.executemany(
        "INSERT OR IGNORE INTO federation_parked (peer, seq, kind, body, parked_at) "
        "VALUES (?, ?, ?, ?, ?)",
        [(peer, seq, kind, body, last_ok) for seq, kind, body in parked],
    )


def reset_peer_txn(
    peer: str, node_id: str | None, feed_epoch: str | None, conn: sqlite3.Connection
) -> None:
    conn.execute(
        "UPDATE federation_peers SET cursor = 0, node_id = coalesce(?, node_id), "
        "feed_epoch = coalesce(?, feed_epoch) WHERE peer = ?",
        (node_id, feed_epoch, peer),
    )


FEED_EPOCH_KEY: Final = "feed_epoch"


def feed_epoch_txn(conn: sqlite3.Connection) -> str:
    """This registry's feed epoch, created on first use."""
    row = conn.execute("SELECT value FROM ocpd_meta WHERE key = ?", (FEED_EPOCH_KEY,)).fetchone()
    if row is not None:
        return str(row[0])
    return new_feed_epoch_txn(conn)


def new_feed_epoch_txn(conn: sqlite3.Connection) -> str:
    """Start a new feed epoch (a restored backup must not reuse sequence numbers)."""
    epoch = secrets.token_hex(16)
    conn.execute(
        "INSERT INTO ocpd_meta (key, value) VALUES (?, ?) "
        "ON CONFLICT (key) DO UPDATE SET value = excluded.value",
        (FEED_EPOCH_KEY, epoch),
    )
    return epoch


def parked_txn(conn: sqlite3.Connection) -> list[tuple[str, int, str, str, int, float]]:
    return conn.execute(
        "SELECT peer, seq, kind, body, attempts, parked_at FROM federation_parked "
        "ORDER BY parked_at, peer, seq"
    ).fetchall()


def settle_parked_txn(
    done: Sequence[tuple[str, int]],
    again: Sequence[tuple[str, int]],
    rejected: dict[str, int],
    conn: sqlite3.Connection,
) -> None:
    conn.executemany("DELETE FROM federation_parked WHERE peer = ? AND seq = ?", done)
    conn.executemany(
        "UPDATE federation_parked SET attempts = attempts + 1 WHERE peer = ? AND seq = ?", again
    )
    conn.executemany(
        "UPDATE federation_peers SET rejected = rejected + ? WHERE peer = ?",
        [(n, peer) for peer, n in rejected.items()],
    )
