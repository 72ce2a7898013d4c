"""Node advertisements in the node database (NET FR-004a-f, FR-012b).

* :class:`AdvertisementCache` is the durable current-advertisement cache:
  one node-advertisement.v1 per node id, replaced only by a strictly
  greater ``sequence/no``. It survives restarts, so a restarted node
  reconnects to the peers it knew without asking a seed directory first.
  A row stays after its advertisement expired (invisible to lookups) for
  :data:`~ocpd.proto.netartifacts.MAX_ADVERTISEMENT_LIFETIME` more, so that
  an older advertisement replayed meanwhile is still refused as stale;
  any advertisement signed before that has expired by itself.
* :class:`OwnAdvertisement` signs this node's advertisements with a
  sequence number taken from the database before each is published, so
  numbers only ever grow, across restarts too. The counter is kept per
  node id: after ``ocpd identity rotate`` the new id counts from 1 and the
  old id's counter stays with the old id (decision 115).
* :class:`NonceStore` keeps the handshake replay memory
  (:class:`~ocpd.proto.peer.NonceMemory`) on disk.

Times are wall-clock epoch seconds passed in by the caller.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping, Sequence
from typing import TYPE_CHECKING, Any, Final

import attrs

from ocpd.proto.encoding import parse_timestamp
from ocpd.proto.errors import NetError
from ocpd.proto.ids import format_node_id
from ocpd.proto.netartifacts import (
    MAX_ADVERTISEMENT_LIFETIME,
    build_node_advertisement,
    check_sequence,
    verify_node_advertisement,
)

if TYPE_CHECKING:
    import sqlite3

    from ocpd.proto.crypto import SigningKey
    from ocpd.storage import Database

__all__ = ["AdvertisementCache", "NonceStore", "Offered", "OwnAdvertisement"]

#: ``ocpd_meta`` key prefix of the own-advertisement counters, one per node id
#: (``net/advertisement-sequence/<node id>``). The bare key is the single
#: counter written before counters were kept per node id.
SEQUENCE_KEY: Final = "net/advertisement-sequence"


@attrs.frozen
class Offered:
    """An advertisement the cache took: ``replaced`` when the node had one before."""

    node_id: str
    sequence: int
    replaced: bool
    advertisement: Mapping[str, Any]


def _compact(value: object) -> str:
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False)


def offer_txn(
    conn: sqlite3.Connection,
    *,
    node_id: str,
    sequence: int,
    advertised_at: float,
    expires_at: float,
    artifact: str,
    source: str,
    now: float,
) -> bool:
    """Store the advertisement unless it is not newer; returns whether one was replaced.

    ``E_ADV_STALE_SEQ`` for the very advertisement held carries
    ``details["held"]``: it is seen again (every session and publish sends
    it), not a conflicting twin.
    """
    row = conn.execute(
        "SELECT sequence_no, artifact FROM peer_advertisements WHERE node_id = ?", (node_id,)
    ).fetchone()
    try:
        check_sequence(None if row is None else int(row[0]), sequence)
    except NetError as exc:
        if row is not None and json.loads(row[1]) == json.loads(artifact):
            exc.details["held"] = True
        raise
    conn.execute(
        "INSERT INTO peer_advertisements "
        "(node_id, sequence_no, advertised_at, expires_at, artifact, source, received_at) "
        "VALUES (?, ?, ?, ?, ?, ?, ?) ON CONFLICT (node_id) DO UPDATE SET "
        "sequence_no = excluded.sequence_no, advertised_at = excluded.advertised_at, "
        "expires_at = excluded.expires_at, artifact = excluded.artifact, "
        "source = excluded.source, received_at = excluded.received_at",
        (node_id, sequence, advertised_at, expires_at, artifact, source, now),
    )
    return row is not None


def current_txn(conn: sqlite3.Connection, node_id: str, now: float) -> str | None:
    row = conn.execute(
        "SELECT artifact FROM peer_advertisements WHERE node_id = ? AND expires_at > ?",
        (node_id, now),
    ).fetchone()
    return None if row is None else str(row[0])


def all_current_txn(conn: sqlite3.Connection, now: float) -> list[str]:
    rows = conn.execute(
        "SELECT artifact FROM peer_advertisements WHERE expires_at > ? ORDER BY node_id",
        (now,),
    ).fetchall()
    return [str(row[0]) for row in rows]


def sweep_txn(conn: sqlite3.Connection, now: float) -> int:
    removed = conn.execute(
        "DELETE FROM peer_advertisements WHERE expires_at <= ?",
        (now - MAX_ADVERTISEMENT_LIFETIME,),
    ).rowcount
    return int(removed)


def sequence_key(node_id: str) -> str:
    return f"{SEQUENCE_KEY}/{node_id}"


def _meta(conn: sqlite3.Connection, key: str) -> int | None:
    row = conn.execute("SELECT value FROM ocpd_meta WHERE key = ?", (key,)).fetchone()
    return None if row is None else int(row[0])


def _set_meta(conn: sqlite3.Connection, key: str, value: int) -> None:
    conn.execute(
        "INSERT INTO ocpd_meta (key, value) VALUES (?, ?) "
        "ON CONFLICT (key) DO UPDATE SET value = excluded.value",
        (key, str(value)),
    )


def claim_legacy_sequence_txn(conn: sqlite3.Connection, node_id: str) -> bool:
    """Give the single pre-rotation counter, if the database still has one, to ``node_id``.

    It was written by the identity the node ran with before counters were
    kept per node id. ``ocpd identity rotate`` calls this for the outgoing id
    so that the new id does not inherit the old id's numbers; the daemon
    calls it for its own id. Returns whether there was such a counter.
    """
    legacy = _meta(conn, SEQUENCE_KEY)
    if legacy is None:
        return False
    own = _meta(conn, sequence_key(node_id))
    _set_meta(conn, sequence_key(node_id), max(legacy, own or 0))
    conn.execute("DELETE FROM ocpd_meta WHERE key = ?", (SEQUENCE_KEY,))
    return True


def next_sequence_txn(conn: sqlite3.Connection, node_id: str) -> int:
    """The next ``sequence/no`` of ``node_id``'s own advertisements (1 for a new id)."""
    claim_legacy_sequence_txn(conn, node_id)
    sequence = (_meta(conn, sequence_key(node_id)) or 0) + 1
    _set_meta(conn, sequence_key(node_id), sequence)
    return sequence


@attrs.define
class AdvertisementCache:
    """The durable current-advertisement cache, keyed by node id."""

    database: Database
    clock_skew: float = 30.0

    async def offer(
        self,
        advertisement: object,
        *,
        now: float,
        source: str,
        expected_node_id: str | None = None,
    ) -> Offered:
        """Verify and store one advertisement.

        Raises :class:`~ocpd.proto.errors.NetError`: ``E_PROTO_INVALID``,
        ``E_SIG_INVALID``, ``E_SIG_UNKNOWN_SIGNER``, ``E_ADV_EXPIRED`` (from
        the artifact), ``E_ADV_STALE_SEQ`` (not newer than the cached one).
        Nothing is stored unless it verified.
        """
        verify_node_advertisement(
            advertisement,
            now=now,
            expected_node_id=expected_node_id,
            clock_skew=self.clock_skew,
        )
        assert isinstance(advertisement, Mapping)  # noqa: S101 - verified above
        node_id = str(advertisement["node/id"])
        sequence = int(advertisement["sequence/no"])
        artifact = _compact(advertisement)
        advertised_at = parse_timestamp(advertisement["advertised-at"], field="advertised-at")
        expires_at = parse_timestamp(advertisement["expires-at"], field="expires-at")
        replaced = await self.database.write(
            lambda conn: offer_txn(
                conn,
                node_id=node_id,
                sequence=sequence,
                advertised_at=advertised_at,
                expires_at=expires_at,
                artifact=artifact,
                source=source,
                now=now,
            )
        )
        return Offered(node_id, sequence, replaced, advertisement)

    async def current(self, node_id: str, *, now: float) -> dict[str, Any] | None:
        text = await self.database.read(lambda conn: current_txn(conn, node_id, now))
        return None if text is None else dict(json.loads(text))

    async def all_current(self, *, now: float) -> list[dict[str, Any]]:
        texts = await self.database.read(lambda conn: all_current_txn(conn, now))
        return [dict(json.loads(text)) for text in texts]

    async def sweep(self, *, now: float) -> int:
        """Forget rows long past expiry; returns how many."""
        return await self.database.write(lambda conn: sweep_txn(conn, now))


@attrs.define
class OwnAdvertisement:
    """Signs this node's advertisements, each with the next persisted sequence number."""

    database: Database
    key: SigningKey
    lifetime: float = 86_400.0
    latest: dict[str, Any] | None = None

    async def next(
        self,
        *,
        endpoints: Sequence[Mapping[str, object]],
        now: float,
        transports: Iterable[str] = ("wss",),
        succession: Mapping[str, object] | None = None,
    ) -> dict[str, Any]:
        """A new advertisement; its number is durable before it is returned."""
        node_id = format_node_id(self.key.public_key)
        sequence = await self.database.write(lambda conn: next_sequence_txn(conn, node_id))
        self.latest = build_node_advertisement(
            self.key,
            sequence=sequence,
            endpoints=endpoints,
            now=now,
            lifetime=self.lifetime,
            transports=transports,
            succession=succession,
        )
        return self.latest


@attrs.define
class NonceStore:
    """The handshake replay memory on disk."""

    database: Database

    async def remember(self, peer: str, nonce: str, forget_at: float) -> None:
        """Durable before it returns: answer a hello only after this."""

        def txn(conn: sqlite3.Connection) -> None:
            conn.execute(
                "INSERT OR REPLACE INTO peer_nonces (peer, nonce, forget_at) VALUES (?, ?, ?)",
                (peer, nonce, forget_at),
            )

        await self.database.write(txn)

    async def sweep(self, *, now: float) -> None:
        """Forget nonces past their retention."""

        def txn(conn: sqlite3.Connection) -> None:
            conn.execute("DELETE FROM peer_nonces WHERE forget_at <= ?", (now,))

        await self.database.write(txn)

    async def load(self, *, now: float) -> list[tuple[str, str, float]]:
        rows = await self.database.read(
            lambda conn: conn.execute(
                "SELECT peer, nonce, forget_at FROM peer_nonces WHERE forget_at > ? "
                "ORDER BY forget_at",
                (now,),
            ).fetchall()
        )
        return [(str(peer), str(nonce), float(until)) for peer, nonce, until in rows]
