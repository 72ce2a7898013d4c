"""The custodian's database: shares wrapped under a database key, and the audit log.

A deposited Recovery Share Record is already sealed to the custodian (D5,
D9); before it is written, the whole record is wrapped again with
AES-256-GCM under the custodian's database key, with ``agent_id \\n
key_fingerprint`` as additional data, so a row copied onto another agent's
row does not open. The database file therefore holds no share material that
opens without both the database key and the custodian's own private key.

The functions take a :class:`sqlite3.Connection` and run inside
:meth:`ocpd.storage.Database.write` or :meth:`~ocpd.storage.Database.read`;
the caller passes the time. The audit log records events, ids and outcomes,
never share bytes.
"""

from __future__ import annotations

import json
import os
import stat
from typing import TYPE_CHECKING, Any, Final

import attrs

from ocpd.identity import write_new_file
from ocpd.proto.crypto import (
    GCM_NONCE_SIZE,
    DecryptionFailed,
    aes256gcm_decrypt,
    aes256gcm_encrypt,
    random_bytes,
)
from ocpd.proto.encoding import b64url_decode, b64url_encode
from ocpd.proto.errors import ForbiddenError, InternalError, NotFoundError

if TYPE_CHECKING:
    import sqlite3
    from pathlib import Path

__all__ = [
    "DATABASE_KEY_BYTES",
    "SECRETS_MOUNT",
    "DatabaseKey",
    "DatabaseKeyError",
    "RecoveryRequest",
    "StoredShare",
    "add_request",
    "audit",
    "count_shares",
    "decide_request",
    "delete_share",
    "expire_requests",
    "get_request",
    "get_share",
    "list_requests",
    "mark_answered",
    "pending_requests",
    "prune_messages",
    "put_share",
    "request_by_ephemeral",
    "sweep_expired",
    "take_message_id",
]

DATABASE_KEY_BYTES: Final = 32
#: Where Docker and Podman mount a container's secrets.
SECRETS_MOUNT: Final = "/run/secrets"
_WRAP_CONTEXT: Final = b"ocpd custodian share v1\n"


class DatabaseKeyError(Exception):
    """The database key file is missing, unreadable, too open or not a key."""


@attrs.frozen
class DatabaseKey:
    """The 32-byte key that wraps stored records; ``repr`` never shows it."""

    key: bytes = attrs.field(repr=False)

    def __attrs_post_init__(self) -> None:
        if len(self.key) != DATABASE_KEY_BYTES:
            raise DatabaseKeyError(f"a database key is {DATABASE_KEY_BYTES} bytes")

    @classmethod
    def generate(cls) -> DatabaseKey:
        return cls(random_bytes(DATABASE_KEY_BYTES))

    @classmethod
    def from_file(cls, path: Path) -> DatabaseKey:
        """Read a key file: 32 raw bytes, or one line of base64url or hex text.

        Refuses a file that others than its owner may read or write (only
        the group's read bit is tolerated), except in a secrets mount: a
        Docker or Podman secret under ``/run/secrets`` (mode 0444 by
        default, but visible inside its container only) or a systemd
        credential (``$CREDENTIALS_DIRECTORY``).
        """
        try:
            info = path.stat()
            data = path.read_bytes()
        except OSError as exc:
            raise DatabaseKeyError(f"cannot read the database key file {path}: {exc}") from exc
        too_open = info.st_mode & (stat.S_IRWXO | stat.S_IWGRP | stat.S_IXGRP)
        if too_open and not _in_secrets_mount(path):
            raise DatabaseKeyError(
                f"the database key file {path} is open to other users "
                f"(mode {stat.S_IMODE(info.st_mode):04o}); make it 0600 or 0400"
            )
        if len(data) == DATABASE_KEY_BYTES:
            return cls(data)
        text = data.decode("ascii", "replace").strip()
        for decode in (bytes.fromhex, lambda t: b64url_decode(t, field="key")):
            try:
                key = decode(text)
            except (ValueError, Exception):  # noqa: S112 - try the next form
                continue
            if len(key) == DATABASE_KEY_BYTES:
                return cls(key)
        raise DatabaseKeyError(
            f"the database key file {path} does not hold a {DATABASE_KEY_BYTES}-byte key "
            "(raw, hex or base64url)"
        )

    def write(self, path: Path) -> None:
        """Write the key as base64url text to a new file of mode 0600."""
        write_new_file(path, (b64url_encode(self.key) + "\n").encode("ascii"), mode=0o600)

    def wrap(self, record: dict[str, Any], agent_id: str, fingerprint: str) -> bytes:
        nonce = random_bytes(GCM_NONCE_SIZE)
        plain = json.dumps(record, separators=(",", ":"), sort_keys=True).encode()
        return nonce + aes256gcm_encrypt(self.key, nonce, plain, _aad(agent_id, fingerprint))

    def unwrap(self, wrapped: bytes, agent_id: str, fingerprint: str) -> dict[str, Any]:
        nonce, sealed = wrapped[:GCM_NONCE_SIZE], wrapped[GCM_NONCE_SIZE:]
        try:
            plain = aes256gcm_decrypt(self.key, nonce, sealed, _aad(agent_id, fingerprint))
        except DecryptionFailed as exc:
            raise InternalError(
                "a stored share does not open with the database key",
                details={"reason": "database_key_mismatch"},
            ) from exc
        record: dict[str, Any] = json.loads(plain)
        return record


def _in_secrets_mount(path: Path) -> bool:
    """Whether ``path`` is in a directory only this container or unit sees."""
    directories = [SECRETS_MOUNT]
    credentials = os.environ.get("CREDENTIALS_DIRECTORY")
    if credentials:
        directories.append(credentials)
    resolved = os.path.realpath(path)
    return any(
        os.path.dirname(resolved) == os.path.realpath(directory) for directory in directories
    )


def _aad(agent_id: str, fingerprint: str) -> bytes:
    return _WRAP_CONTEXT + f"{agent_id}\n{fingerprint}".encode()


@attrs.frozen
class StoredShare:
    """One deposited share, unwrapped (the record is still sealed to the custodian)."""

    record: dict[str, Any] = attrs.field(repr=False)
    recovery_public_key: bytes = attrs.field(repr=False)
    deposited_at: float
    expires_at: float


def put_share(
    conn: sqlite3.Connection,
    key: DatabaseKey,
    record: dict[str, Any],
    recovery_public_key: bytes,
    *,
    now: float,
    expires_at: float,
) -> bool:
    """Store a verified record; OCP-403 when one is held for that agent key already.

    A share of that key that has expired counts as gone (the sweeper would
    delete it later): it is deleted first, and the result says so.
    """
    agent_id, fingerprint = record["agent_id"], record["key_fingerprint"]
    replaced = conn.execute(
        "DELETE FROM shares WHERE agent_id = ? AND key_fingerprint = ? AND expires_at <= ?",
        (agent_id, fingerprint, now),
    ).rowcount
    held = conn.execute(
        "SELECT share_index FROM shares WHERE agent_id = ? AND key_fingerprint = ?",
        (agent_id, fingerprint),
    ).fetchone()
    if held is not None:
        raise ForbiddenError(
            "this custodian already holds a share of that key",
            details={"reason": "share_exists", "share_index": held[0]},
        )
    conn.execute(
        "INSERT INTO shares (agent_id, key_fingerprint, share_id, share_index, "
        "recovery_public_key, wrapped, deposited_at, expires_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
        (
            agent_id,
            fingerprint,
            record["share_id"],
            record["share_index"],
            recovery_public_key,
            key.wrap(record, agent_id, fingerprint),
            now,
            expires_at,
        ),
    )
    return replaced > 0


def get_share(
    conn: sqlite3.Connection, key: DatabaseKey, agent_id: str, fingerprint: str, *, now: float
) -> StoredShare | None:
    """The share held for that agent key, unless there is none or it has expired."""
    row = conn.execute(
        "SELECT recovery_public_key, wrapped, deposited_at, expires_at FROM shares "
        "WHERE agent_id = ? AND key_fingerprint = ? AND expires_at > ?",
        (agent_id, fingerprint, now),
    ).fetchone()
    if row is None:
        return None
    return StoredShare(
        record=key.unwrap(row[1], agent_id, fingerprint),
        recovery_public_key=row[0],
        deposited_at=row[2],
        expires_at=row[3],
    )


def delete_share(conn: sqlite3.Connection, agent_id: str, fingerprint: str) -> bool:
    """Delete the share of that agent key; whether there was one."""
    cursor = conn.execute(
        "DELETE FROM shares WHERE agent_id = ? AND key_fingerprint = ?", (agent_id, fingerprint)
    )
    return cursor.rowcount > 0


def sweep_expired(conn: sqlite3.Connection, *, now: float) -> list[tuple[str, str]]:
    """Delete every share whose expiry has passed; the (agent, fingerprint) pairs deleted."""
    gone = conn.execute(
        "DELETE FROM shares WHERE expires_at <= ? RETURNING agent_id, key_fingerprint", (now,)
    ).fetchall()
    return sorted((agent, fingerprint) for agent, fingerprint in gone)


def count_shares(conn: sqlite3.Connection) -> int:
    count: int = conn.execute("SELECT COUNT(*) FROM shares").fetchone()[0]
    return count


def audit(
    conn: sqlite3.Connection,
    *,
    at: float,
    event: str,
    outcome: str,
    agent_id: str | None = None,
    fingerprint: str | None = None,
    **detail: object,
) -> None:
    """Append one line to the audit log (ids, outcome and reason; never share bytes)."""
    conn.execute(
        "INSERT INTO audit (at, event, agent_id, key_fingerprint, outcome, detail) "
        "VALUES (?, ?, ?, ?, ?, ?)",
        (at, event, agent_id, fingerprint, outcome, json.dumps(detail, sort_keys=True)),
    )


# --- recovery requests ---------------------------------------------------------------


@attrs.frozen
class RecoveryRequest:
    """One ``recovery_request`` as the custodian keeps it (no share material).

    ``status`` is ``answered`` at once for a recovery key proof; otherwise
    ``pending``, then ``approved``, ``rejected`` or ``expired`` by the operator
    or the sweeper, and ``approved`` becomes ``answered`` when the agent
    comes back.
    """

    request_id: str
    agent_id: str
    fingerprint: str
    ephemeral_public_key: str
    proof_type: str
    status: str
    received_at: float
    decided_at: float | None = None
    answered_at: float | None = None
    remote: str | None = None

    def describe(self) -> dict[str, Any]:
        """The request as the operator's ``ocpd custodian requests`` shows it."""
        return attrs.asdict(self)


_SELECT_REQUESTS: Final = (
    "SELECT request_id, agent_id, key_fingerprint, ephemeral_public_key, proof_type, status, "
    "received_at, decided_at, answered_at, remote FROM recovery_requests"
)
_INSERT_REQUEST: Final = (
    "INSERT INTO recovery_requests (request_id, agent_id, key_fingerprint, "
    "ephemeral_public_key, proof_type, status, received_at, decided_at, answered_at, remote) "
    "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
)


def _request(row: tuple[Any, ...] | None) -> RecoveryRequest | None:
    return None if row is None else RecoveryRequest(*row)


def take_message_id(conn: sqlite3.Connection, message_id: str, *, now: float) -> bool:
    """Note a message id; ``False`` when it was taken already (a replay)."""
    cursor = conn.execute(
        "INSERT OR IGNORE INTO seen_messages (message_id, received_at) VALUES (?, ?)",
        (message_id, now),
    )
    return cursor.rowcount > 0


def prune_messages(conn: sqlite3.Connection, *, before: float) -> int:
    """Forget message ids noted before ``before`` (older messages are refused as stale)."""
    return conn.execute("DELETE FROM seen_messages WHERE received_at < ?", (before,)).rowcount


def add_request(conn: sqlite3.Connection, request: RecoveryRequest) -> None:
    conn.execute(
        _INSERT_REQUEST,
        attrs.astuple(request),
    )


def get_request(conn: sqlite3.Connection, request_id: str) -> RecoveryRequest | None:
    return _request(
        conn.execute(
            _SELECT_REQUESTS + " WHERE request_id = ?",
            (request_id,),
        ).fetchone()
    )


def request_by_ephemeral(conn: sqlite3.Connection, ephemeral: str) -> RecoveryRequest | None:
    """The request that named this ephemeral key, if any (each key serves one request)."""
    return _request(
        conn.execute(
            _SELECT_REQUESTS + " WHERE ephemeral_public_key = ?",
            (ephemeral,),
        ).fetchone()
    )


def pending_requests(conn: sqlite3.Connection, agent_id: str, fingerprint: str) -> int:
    """Requests for that agent key still waiting for the operator."""
    count: int = conn.execute(
        "SELECT COUNT(*) FROM recovery_requests WHERE agent_id = ? AND key_fingerprint = ? "
        "AND status = 'pending'",
        (agent_id, fingerprint),
    ).fetchone()[0]
    return count


def list_requests(
    conn: sqlite3.Connection, *, statuses: tuple[str, ...] | None = None, limit: int = 100
) -> list[RecoveryRequest]:
    """Requests, newest first; only those in ``statuses`` when given."""
    where, args = "", tuple[str, ...]()
    if statuses is not None:
        where = f"WHERE status IN ({', '.join('?' for _ in statuses)})"
        args = statuses
    rows = conn.execute(
        f"{_SELECT_REQUESTS} {where} ORDER BY received_at DESC, request_id LIMIT ?",
        (*args, limit),
    ).fetchall()
    return [RecoveryRequest(*row) for row in rows]


def decide_request(
    conn: sqlite3.Connection, request_id: str, *, approve: bool, now: float
) -> RecoveryRequest:
    """The operator's decision on a pending request (OCP-404 unknown, OCP-403 not pending)."""
    request = get_request(conn, request_id)
    if request is None:
        raise NotFoundError(f"no recovery request {request_id}", details={"reason": "unknown"})
    if request.status != "pending":
        raise ForbiddenError(
            f"request {request_id} is {request.status}, not pending",
            details={"reason": "not_pending", "status": request.status},
        )
    status = "approved" if approve else "rejected"
    conn.execute(
        "UPDATE recovery_requests SET status = ?, decided_at = ? WHERE request_id = ?",
        (status, now, request_id),
    )
    return attrs.evolve(request, status=status, decided_at=now)


def mark_answered(conn: sqlite3.Connection, request_id: str, *, now: float) -> None:
    conn.execute(
        "UPDATE recovery_requests SET status = 'answered', answered_at = ? WHERE request_id = ?",
        (now, request_id),
    )


def expire_requests(
    conn: sqlite3.Connection, *, pending_before: float, approved_before: float
) -> list[str]:
    """Close requests left waiting too long: pending since, or approved since, the bounds."""
    rows = conn.execute(
        "UPDATE recovery_requests SET status = 'expired' "
        "WHERE (status = 'pending' AND received_at < ?) "
        "OR (status = 'approved' AND decided_at < ?) RETURNING request_id",
        (pending_before, approved_before),
    ).fetchall()
    return sorted(row[0] for row in rows)
