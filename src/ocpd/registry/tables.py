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
from typing import TYPE_CHECKING, Any

import attrs

if TYPE_CHECKING:
    import sqlite3
    from collections.abc import Sequence

__all__ = [
    "AgentRow",
    "did_history_txn",
    "insert_bond_txn",
    "insert_did_update_txn",
    "insert_rating_txn",
    "insert_vouch_txn",
    "load_federation_txn",
    "load_registry_txn",
    "mark_inactive_txn",
    "parked_txn",
    "reset_peer_txn",
    "revoke_txn",
    "save_progress_txn",
    "settle_parked_txn",
    "text",
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
            "SELECT record, did_document, status, online_seconds, registration IS NULL FROM agents"
        ).fetchall(),
        conn.execute("SELECT digest, artifact, revoked_at FROM vouches").fetchall(),
        conn.execute("SELECT artifact, revoked_at FROM bonds").fetchall(),
        conn.execute("SELECT artifact FROM ratings").fetchall(),
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


def revoke_txn(
    kind: str, key: str, revocation: dict[str, Any], now: float, conn: sqlite3.Connection
) -> int:
    """Mark a vouch (``vouch_revocation``, by digest) or a bond (by id) revoked."""
    body = text(revocation)
    if kind == "vouch_revocation":
        sql = "UPDATE vouches SET revoked_at = ?, revocation = ? WHERE digest = ?"
    else:
        sql = "UPDATE bonds SET revoked_at = ?, revocation = ? WHERE bond_id = ?"
    conn.execute(sql, (now, body, key))
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
        conn.execute("SELECT peer, cursor, node_id FROM federation_peers").fetchall(),
        conn.execute("SELECT peer, count(*) FROM federation_parked GROUP BY peer").fetchall(),
    )


def save_progress_txn(
    peer: str,
    cursor: int,
    rejected: int,
    last_ok: float,
    node_id: str | None,
    parked: Sequence[tuple[int, str, str]],
    conn: sqlite3.Connection,
) -> None:
    """A page is applied: move the peer's cursor, count its rejections, park the rest."""
    conn.execute(
        "INSERT INTO federation_peers (peer, cursor, rejected, last_ok, node_id) "
        "VALUES (?, ?, ?, ?, ?) ON CONFLICT (peer) DO UPDATE SET cursor = excluded.cursor, "
        "rejected = federation_peers.rejected + excluded.rejected, last_ok = excluded.last_ok, "
        "node_id = coalesce(excluded.node_id, federation_peers.node_id)",
        (peer, cursor, rejected, last_ok, node_id),
    )
    conn.executemany(
        "INSERT OR IGNORE INTO federation_parked (peer, seq, kind, body, parked_at) "
        "VALUES (?, ?, ?, ?, ?)",
        [(peer, seq, kind, body, last_ok) for seq, kind, body in parked],
    )


def reset_peer_txn(peer: str, node_id: str, conn: sqlite3.Connection) -> None:
    conn.execute(
        "UPDATE federation_peers SET cursor = 0, node_id = ? WHERE peer = ?", (node_id, peer)
    )


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
