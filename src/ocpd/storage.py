"""SQLite storage for one component: WAL, migrations, group commit.

Access pattern (measured on a 2-core machine: a ``trio.to_thread`` hop costs
~230 µs, an INSERT 2-18 µs, an fsync'd commit ~225 µs):

* **Writes** are synchronous ``fn(conn)`` functions handed to
  :meth:`Database.write`. One writer task collects every write that arrived
  while the previous batch was committing, runs them all in one transaction
  in one thread hop, commits once (``synchronous=FULL``: one fsync), and only
  then releases each caller with its own result. Each write runs inside its
  own savepoint, so one failing write is rolled back alone and reported to
  its caller while the others in the batch still commit.
* **Reads** run on a separate read-only connection through
  :meth:`Database.read` (WAL lets them proceed during a commit).

Schema versions live in ``PRAGMA user_version``; :func:`migrate` applies the
missing steps of a component's migration list in one transaction at start.
Database files are created with mode 0600.
"""

from __future__ import annotations

import logging
import math
import os
import sqlite3
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final, TypeVar

import attrs
import outcome
import trio

from ocpd.logs import get_logger, log_event

if TYPE_CHECKING:
    from collections.abc import Callable, Sequence

__all__ = [
    "MIGRATIONS",
    "Database",
    "StorageError",
    "backup_database",
    "integrity_check",
    "open_database",
]

log = get_logger("storage")

T = TypeVar("T")

#: Each component's migrations: index i brings the schema to version i + 1.
MIGRATIONS: Final[dict[str, Sequence[str]]] = {
    "node": (
        """
        CREATE TABLE ocpd_meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
        """,
        # v2: message intake and delivery (D6). ``message_ids`` is the dedup
        # window; ``message_bodies`` holds the exact bytes received, once per
        # message however many receivers it has; ``deliveries`` is the
        # per-receiver queue in ``seq`` order (rows leave once sent or
        # expired); ``local_agents`` are agents that authenticated here.
        # Queue tables hold only what is undelivered, so the sweeper scans
        # them without an expiry index (one index less to write per message).
        """
        CREATE TABLE message_ids (
            message_id TEXT PRIMARY KEY,
            digest BLOB NOT NULL,
            sender TEXT NOT NULL,
            expires_at REAL NOT NULL
        ) WITHOUT ROWID;
        CREATE INDEX message_ids_expiry ON message_ids (expires_at);
        CREATE TABLE message_bodies (
            message_id TEXT PRIMARY KEY,
            raw BLOB NOT NULL,
            expires_at REAL NOT NULL
        );
        CREATE TABLE deliveries (
            seq INTEGER PRIMARY KEY AUTOINCREMENT,
            receiver TEXT NOT NULL,
            message_id TEXT NOT NULL,
            sender TEXT NOT NULL,
            expires_at REAL NOT NULL,
            state TEXT NOT NULL,
            attempts INTEGER NOT NULL DEFAULT 0,
            next_attempt_at REAL
        );
        CREATE INDEX deliveries_receiver ON deliveries (receiver, seq);
        CREATE INDEX deliveries_message ON deliveries (message_id);
        CREATE TABLE interactions (
            id INTEGER PRIMARY KEY,
            sender TEXT NOT NULL,
            receiver TEXT NOT NULL,
            message_type TEXT NOT NULL,
            at REAL NOT NULL
        );
        CREATE INDEX interactions_at ON interactions (at);
        CREATE TABLE local_agents (
            agent_id TEXT PRIMARY KEY,
            first_seen REAL NOT NULL,
            last_seen REAL NOT NULL
        ) WITHOUT ROWID;
        """,
        # v3: rows handed on to other nodes (state 'remote') are found again
        # at start without scanning the local queues.
        """
        CREATE INDEX deliveries_remote ON deliveries (seq) WHERE state = 'remote';
        """,
        # v4: a queue row points at its body by the body's integer key. Bodies
        # were keyed by message id, and both the bodies' key and the queue's
        # message-id index took random (uuid) keys: each stored message
        # dirtied two random index pages more, which on a database holding
        # thousands of queued messages cost more than the rest of the commit.
        # Ids stay unique through ``message_ids``; the rowids are kept.
        """
        CREATE TABLE message_bodies_v4 (
            body INTEGER PRIMARY KEY,
            message_id TEXT NOT NULL,
            raw BLOB NOT NULL,
            expires_at REAL NOT NULL
        );
        INSERT INTO message_bodies_v4 (body, message_id, raw, expires_at)
            SELECT rowid, message_id, raw, expires_at FROM message_bodies;
        ALTER TABLE deliveries ADD COLUMN body INTEGER NOT NULL DEFAULT 0;
        UPDATE deliveries SET body = (
            SELECT b.body FROM message_bodies_v4 AS b WHERE b.message_id = deliveries.message_id
        );
        DROP INDEX deliveries_message;
        CREATE INDEX deliveries_body ON deliveries (body);
        DROP TABLE message_bodies;
        ALTER TABLE message_bodies_v4 RENAME TO message_bodies;
        """,
        # v5: node networking. ``peer_advertisements`` is the durable cache of
        # other nodes' current node-advertisement.v1 (NET FR-004d/f), kept
        # as received; a row outlives its advertisement's expiry by the
        # longest lifetime an advertisement may have, so that an older one
        # replayed meanwhile is still recognised as stale. ``peer_nonces``
        # carries the handshake replay memory over restarts (FR-012b).
        """
        CREATE TABLE peer_advertisements (
            node_id TEXT PRIMARY KEY,
            sequence_no INTEGER NOT NULL,
            advertised_at REAL NOT NULL,
            expires_at REAL NOT NULL,
            artifact TEXT NOT NULL,
            source TEXT NOT NULL,
            received_at REAL NOT NULL
        ) WITHOUT ROWID;
        CREATE TABLE peer_nonces (
            peer TEXT NOT NULL,
            nonce TEXT NOT NULL,
            forget_at REAL NOT NULL,
            PRIMARY KEY (peer, nonce)
        ) WITHOUT ROWID;
        """,
        # v6: Layers 3 and 4 (D10). ``tasks`` holds every task this node
        # routed, with the two limits it enforces (``accept_by``: an accept
        # or reject is due; ``finish_by``: completion is due); ``notify``
        # is 1 where the requester is served here, so the timeout
        # ``task_response`` goes out from this node only. ``consensus_rounds``
        # keeps each round's ``consensus_initiate`` payload as received and
        # ``consensus_votes`` each admitted vote as signed. ``knowledge_log``
        # records each knowledge share the node accepted, never its content.
        """
        CREATE TABLE tasks (
            task_id TEXT PRIMARY KEY,
            requester TEXT NOT NULL,
            receiver TEXT NOT NULL,
            bond_id TEXT NOT NULL,
            task_type TEXT NOT NULL,
            status TEXT NOT NULL,
            requested_at REAL NOT NULL,
            accept_by REAL NOT NULL,
            finish_by REAL NOT NULL,
            updated_at REAL NOT NULL,
            notify INTEGER NOT NULL,
            request_message_id TEXT NOT NULL
        ) WITHOUT ROWID;
        CREATE INDEX tasks_open ON tasks (requester, receiver) WHERE status IN
            ('requested', 'accepted', 'in_progress');
        CREATE TABLE consensus_rounds (
            consensus_id TEXT PRIMARY KEY,
            initiator TEXT NOT NULL,
            initiate TEXT NOT NULL,
            deadline REAL NOT NULL,
            status TEXT NOT NULL,
            outcome TEXT,
            created_at REAL NOT NULL,
            resolved_at REAL
        ) WITHOUT ROWID;
        CREATE INDEX consensus_rounds_open ON consensus_rounds (deadline)
            WHERE status = 'open';
        CREATE TABLE consensus_votes (
            consensus_id TEXT NOT NULL,
            voter TEXT NOT NULL,
            vote TEXT NOT NULL,
            confidence REAL NOT NULL,
            digest TEXT NOT NULL,
            artifact TEXT NOT NULL,
            received_at REAL NOT NULL,
            PRIMARY KEY (consensus_id, voter)
        ) WITHOUT ROWID;
        CREATE TABLE knowledge_log (
            id INTEGER PRIMARY KEY,
            message_id TEXT NOT NULL,
            sender TEXT NOT NULL,
            receiver TEXT NOT NULL,
            knowledge_type TEXT,
            knowledge_id TEXT,
            payload_bytes INTEGER NOT NULL,
            encrypted INTEGER NOT NULL,
            at REAL NOT NULL
        );
        CREATE INDEX knowledge_log_at ON knowledge_log (at);
        """,
    ),
    "registry": (
        """
        CREATE TABLE ocpd_meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
        """,
        # v2: agents, trust artifacts, the federation change feed and the
        # seed directory. Signed artifacts are stored as the exact JSON text
        # received; the other columns are indexes derived from it.
        """
        CREATE TABLE agents (
            agent_id TEXT PRIMARY KEY,
            record TEXT NOT NULL,
            did_document TEXT NOT NULL,
            registered_at REAL NOT NULL,
            expires_at REAL NOT NULL,
            status TEXT NOT NULL,
            online_seconds REAL NOT NULL DEFAULT 0
        );
        CREATE TABLE vouches (
            digest TEXT PRIMARY KEY,
            attester TEXT NOT NULL,
            subject TEXT NOT NULL,
            issued_at REAL NOT NULL,
            expires_at REAL NOT NULL,
            artifact TEXT NOT NULL,
            revoked_at REAL,
            revocation TEXT
        );
        CREATE INDEX vouches_subject ON vouches (subject);
        CREATE INDEX vouches_attester ON vouches (attester);
        CREATE TABLE bonds (
            bond_id TEXT PRIMARY KEY,
            agent_a TEXT NOT NULL,
            agent_b TEXT NOT NULL,
            established_at REAL NOT NULL,
            expires_at REAL NOT NULL,
            artifact TEXT NOT NULL,
            revoked_at REAL,
            revocation TEXT
        );
        CREATE INDEX bonds_a ON bonds (agent_a);
        CREATE INDEX bonds_b ON bonds (agent_b);
        CREATE TABLE ratings (
            rater TEXT NOT NULL,
            subject TEXT NOT NULL,
            rated_at REAL NOT NULL,
            rating REAL NOT NULL,
            artifact TEXT NOT NULL,
            PRIMARY KEY (rater, subject, rated_at)
        );
        CREATE TABLE changes (
            seq INTEGER PRIMARY KEY AUTOINCREMENT,
            kind TEXT NOT NULL,
            key TEXT NOT NULL,
            body TEXT NOT NULL
        );
        CREATE TABLE advertisements (
            node_id TEXT PRIMARY KEY,
            sequence_no INTEGER NOT NULL,
            expires_at REAL NOT NULL,
            artifact TEXT NOT NULL,
            cursor INTEGER NOT NULL
        );
        CREATE INDEX advertisements_cursor ON advertisements (cursor);
        CREATE INDEX advertisements_expiry ON advertisements (expires_at);
        """,
        # v3: federation. ``agents.registration`` keeps the proof that the
        # agent's initial key published its first DID document (the signed
        # HTTP request, verbatim) and ``did_updates`` the signed updates
        # applied since, in order, so that any registry can check the
        # document it is given. Per-peer cursors move only after the changes
        # up to them are committed; changes that cannot be checked yet wait
        # in ``federation_parked``.
        """
        ALTER TABLE agents ADD COLUMN registration TEXT;
        CREATE TABLE did_updates (
            digest TEXT PRIMARY KEY,
            agent_id TEXT NOT NULL,
            updated_at REAL NOT NULL,
            artifact TEXT NOT NULL
        );
        CREATE INDEX did_updates_agent ON did_updates (agent_id);
        CREATE TABLE federation_peers (
            peer TEXT PRIMARY KEY,
            cursor INTEGER NOT NULL DEFAULT 0,
            rejected INTEGER NOT NULL DEFAULT 0,
            last_ok REAL,
            node_id TEXT
        );
        CREATE TABLE federation_parked (
            peer TEXT NOT NULL,
            seq INTEGER NOT NULL,
            kind TEXT NOT NULL,
            body TEXT NOT NULL,
            attempts INTEGER NOT NULL DEFAULT 0,
            parked_at REAL NOT NULL,
            PRIMARY KEY (peer, seq)
        );
        """,
        # v4: Level 4 certifications (D7), keyed by the certifier's
        # certification_id; ``certifier`` is the multibase key that signed it.
        """
        CREATE TABLE certifications (
            certification_id TEXT PRIMARY KEY,
            subject TEXT NOT NULL,
            certifier TEXT NOT NULL,
            issued_at REAL NOT NULL,
            expires_at REAL NOT NULL,
            artifact TEXT NOT NULL,
            revoked_at REAL,
            revocation TEXT
        );
        CREATE INDEX certifications_subject ON certifications (subject);
        """,
        # v5: feed epochs. A registry restored from a backup numbers its new
        # changes from the backup's position, below its peers' cursors; a new
        # epoch (stamped into every backup copy) makes peers read it again.
        """
        ALTER TABLE federation_peers ADD COLUMN feed_epoch TEXT;
        """,
        # v6: uptime (D7, ``ocpd.proto.trust.Uptime``). ``first_registered_at``
        # starts the uptime window; ``online_seconds`` is the online time
        # folded before ``online_horizon``; ``online_recent`` the later online
        # intervals (a JSON list of [start, end]); ``renewal_from`` where the
        # interval an on-time renewal proves starts. Rows from before start
        # their window at their current registration, with nothing counted.
        """
        ALTER TABLE agents ADD COLUMN first_registered_at REAL;
        ALTER TABLE agents ADD COLUMN online_horizon REAL;
        ALTER TABLE agents ADD COLUMN online_recent TEXT NOT NULL DEFAULT '[]';
        ALTER TABLE agents ADD COLUMN renewal_from REAL;
        UPDATE agents SET first_registered_at = registered_at, online_horizon = registered_at,
            renewal_from = registered_at;
        """,
    ),
    "custodian": (
        """
        CREATE TABLE ocpd_meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
        """,
        # v2: deposited shares (each record wrapped under the database key)
        # and the audit log (no share material).
        """
        CREATE TABLE shares (
            agent_id TEXT NOT NULL,
            key_fingerprint TEXT NOT NULL,
            share_id TEXT NOT NULL,
            share_index INTEGER NOT NULL,
            recovery_public_key BLOB NOT NULL,
            wrapped BLOB NOT NULL,
            deposited_at REAL NOT NULL,
            expires_at REAL NOT NULL,
            PRIMARY KEY (agent_id, key_fingerprint)
        );
        CREATE INDEX shares_expiry ON shares (expires_at);
        CREATE TABLE audit (
            seq INTEGER PRIMARY KEY AUTOINCREMENT,
            at REAL NOT NULL,
            event TEXT NOT NULL,
            agent_id TEXT,
            key_fingerprint TEXT,
            outcome TEXT NOT NULL,
            detail TEXT NOT NULL DEFAULT '{}'
        );
        """,
        # v3: recovery requests (one row per ephemeral key: answered, or
        # waiting for the operator) and the message ids already taken.
        """
        CREATE TABLE recovery_requests (
            request_id TEXT PRIMARY KEY,
            agent_id TEXT NOT NULL,
            key_fingerprint TEXT NOT NULL,
            ephemeral_public_key TEXT NOT NULL UNIQUE,
            proof_type TEXT NOT NULL,
            status TEXT NOT NULL,
            received_at REAL NOT NULL,
            decided_at REAL,
            answered_at REAL,
            remote TEXT
        );
        CREATE INDEX recovery_requests_status ON recovery_requests (status, received_at);
        CREATE TABLE seen_messages (
            message_id TEXT PRIMARY KEY,
            received_at REAL NOT NULL
        );
        CREATE INDEX seen_messages_age ON seen_messages (received_at);
        """,
    ),
}

_MAX_BATCH: Final = 512


class StorageError(Exception):
    """The database cannot be opened, migrated or written."""


#: WAL pages after which a commit copies the log back into the database
#: (SQLite's default is 1,000). A longer log writes a page changed by many
#: commits once instead of once per checkpoint: on a node database holding
#: thousands of queued messages this halved the writer's time per message.
#: The log file stays at about this size (4 KiB pages: 16 MiB) once reached.
WAL_CHECKPOINT_PAGES: Final = 4000


def _create_private(path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    fd = os.open(path, os.O_CREAT | os.O_RDWR, 0o600)
    os.close(fd)
    os.chmod(path, 0o600)


def _connect(path: Path, *, readonly: bool = False) -> sqlite3.Connection:
    if readonly:
        conn = sqlite3.connect(
            f"file:{path}?mode=ro", uri=True, check_same_thread=False, isolation_level=None
        )
    else:
        conn = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
    conn.execute("PRAGMA busy_timeout = 5000")
    if not readonly:
        mode = conn.execute("PRAGMA journal_mode = WAL").fetchone()[0]
        if mode != "wal":
            raise StorageError(f"{path}: cannot switch to WAL (journal mode is {mode})")
        conn.execute("PRAGMA synchronous = FULL")
        conn.execute("PRAGMA foreign_keys = ON")
        conn.execute(f"PRAGMA wal_autocheckpoint = {WAL_CHECKPOINT_PAGES}")
    return conn


def migrate(conn: sqlite3.Connection, steps: Sequence[str]) -> int:
    """Bring the schema to ``len(steps)``; returns the version found before."""
    current = int(conn.execute("PRAGMA user_version").fetchone()[0])
    if current > len(steps):
        raise StorageError(
            f"database schema version {current} is newer than this ocpd knows ({len(steps)})"
        )
    if current == len(steps):
        return current
    conn.execute("BEGIN IMMEDIATE")
    try:
        for version in range(current, len(steps)):
            for statement in _statements(steps[version]):
                conn.execute(statement)
        conn.execute(f"PRAGMA user_version = {len(steps)}")
        conn.execute("COMMIT")
    except BaseException:
        conn.execute("ROLLBACK")
        raise
    return current


def _statements(script: str) -> list[str]:
    return [s.strip() for s in script.split(";") if s.strip()]


@attrs.define(eq=False)
class _Pending:
    fn: Callable[[sqlite3.Connection], Any]
    then: Callable[[Any], None] | None = None
    done: trio.Event = attrs.Factory(trio.Event)
    result: outcome.Outcome[Any] | None = None


@attrs.define(eq=False)
class Database:
    """One component's SQLite database, opened by :func:`open_database`."""

    path: Path
    component: str
    _writer: sqlite3.Connection
    _reader: sqlite3.Connection
    _send: trio.MemorySendChannel[_Pending]
    _receive: trio.MemoryReceiveChannel[_Pending]
    _read_limiter: trio.CapacityLimiter = attrs.Factory(lambda: trio.CapacityLimiter(1))
    commits: int = 0
    writes: int = 0
    #: Calls running on a worker thread with one of the connections.
    _busy: int = 0
    _closing: bool = False
    _closed: bool = False

    async def write(
        self,
        fn: Callable[[sqlite3.Connection], T],
        *,
        then: Callable[[T], None] | None = None,
    ) -> T:
        """Run ``fn`` in the next group commit; returns once it is durable.

        ``then`` is called with ``fn``'s result once the commit is durable, by
        the writer itself: the ``then`` of every write runs in commit order,
        before any caller resumes (callers resume in no particular order). It
        must not block; an exception it raises is logged and goes no further.
        """
        pending = _Pending(fn, then)
        await self._send.send(pending)
        await pending.done.wait()
        assert pending.result is not None  # noqa: S101 - set before done
        return pending.result.unwrap()  # type: ignore[no-any-return]

    async def read(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        return await self._on_thread(fn, self._reader, limiter=self._read_limiter)

    async def _on_thread(
        self,
        fn: Callable[..., T],
        *args: Any,
        limiter: trio.CapacityLimiter | None = None,
    ) -> T:
        """Run ``fn`` on a worker thread; a :meth:`close` meanwhile waits for it."""
        self._busy += 1
        try:
            return await trio.to_thread.run_sync(fn, *args, limiter=limiter)
        finally:
            self._busy -= 1
            if self._closing and not self._busy:
                self._close_connections()

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """The writer service: group commits until its channel is closed."""
        task_status.started()
        async with self._receive:
            async for first in self._receive:
                batch = [first]
                while len(batch) < _MAX_BATCH:
                    try:
                        batch.append(self._receive.receive_nowait())
                    except (trio.WouldBlock, trio.EndOfChannel):
                        break
                # Shielded: once a batch is handed to the thread its callers
                # must learn the outcome, even while the daemon shuts down.
                with trio.CancelScope(shield=True):
                    await self._on_thread(self._commit_batch, batch)
                for pending in batch:
                    if pending.then is not None and isinstance(pending.result, outcome.Value):
                        try:
                            pending.then(pending.result.value)
                        except Exception as exc:  # one caller's hook must not stop the writer
                            log_event(
                                log,
                                "after_commit_failed",
                                level=logging.ERROR,
                                component=self.component,
                                error=repr(exc),
                            )
                    pending.done.set()

    def _commit_batch(self, batch: list[_Pending]) -> None:
        conn = self._writer
        try:
            conn.execute("BEGIN IMMEDIATE")
            for i, pending in enumerate(batch):
                conn.execute(f"SAVEPOINT w{i}")
                pending.result = outcome.capture(pending.fn, conn)
                if isinstance(pending.result, outcome.Error):
                    conn.execute(f"ROLLBACK TO w{i}")
                conn.execute(f"RELEASE w{i}")
            conn.execute("COMMIT")
        except sqlite3.Error as exc:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            failure = StorageError(f"commit failed: {exc}")
            for pending in batch:
                pending.result = outcome.Error(failure)
            return
        self.commits += 1
        self.writes += len(batch)

    def close(self) -> None:
        """Stop taking writes and close the connections.

        A commit or read still running on a worker thread keeps its
        connection open until it returns (closing a SQLite connection under
        a running statement crashes the process).
        """
        self._send.close()
        self._closing = True
        if not self._busy:
            self._close_connections()

    def _close_connections(self) -> None:
        if not self._closed:
            self._closed = True
            self._reader.close()
            self._writer.close()

    def size_bytes(self) -> int:
        total = 0
        for suffix in ("", "-wal"):
            try:
                total += os.stat(f"{self.path}{suffix}").st_size
            except FileNotFoundError:
                pass
        return total


def _open_sync(path: Path, component: str) -> tuple[sqlite3.Connection, sqlite3.Connection]:
    _create_private(path)
    writer = _connect(path)
    try:
        migrate(writer, MIGRATIONS[component])
        reader = _connect(path, readonly=True)
    except BaseException:
        writer.close()
        raise
    for suffix in ("-wal", "-shm"):
        side = Path(f"{path}{suffix}")
        if side.exists():
            os.chmod(side, 0o600)
    return writer, reader


async def open_database(
    path: Path,
    component: str,
    *,
    attempts: int = 5,
    first_delay: float = 0.5,
    on_retry: Callable[[int, Exception], None] | None = None,
) -> Database:
    """Open (creating, migrating) a component database, retrying transient errors."""
    delay = first_delay
    for attempt in range(1, attempts + 1):
        try:
            writer, reader = await trio.to_thread.run_sync(_open_sync, path, component)
        except (sqlite3.OperationalError, OSError) as exc:
            if attempt == attempts:
                raise StorageError(f"cannot open {path}: {exc}") from exc
            if on_retry is not None:
                on_retry(attempt, exc)
            await trio.sleep(delay)
            delay = min(delay * 2, 10.0)
        else:
            send, receive = trio.open_memory_channel[_Pending](math.inf)
            return Database(path, component, writer, reader, send, receive)
    raise AssertionError("unreachable")  # pragma: no cover


def integrity_check(path: Path) -> list[str]:
    """``PRAGMA integrity_check`` rows (``["ok"]`` for a sound database)."""
    conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        return [str(row[0]) for row in conn.execute("PRAGMA integrity_check")]
    finally:
        conn.close()


def backup_database(source: Path, dest: Path) -> None:
    """A consistent copy of a live database (SQLite online backup API), mode 0600."""
    if not source.is_file():
        raise StorageError(f"no database at {source}")
    _create_private(dest)
    src = sqlite3.connect(f"file:{source}?mode=ro", uri=True)
    dst = sqlite3.connect(dest)
    try:
        src.backup(dst, pages=1024)
        # A backup is one self-contained file: no -wal/-shm beside it.
        dst.execute("PRAGMA journal_mode = DELETE")
    finally:
        dst.close()
        src.close()
    os.chmod(dest, 0o600)
