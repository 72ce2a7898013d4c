"""The custodian's database: wrapped shares, expiry, audit (ocpd.custodian.store)."""

from __future__ import annotations

import os
import sqlite3
from pathlib import Path

import pytest
import trio

from ocpd.custodian import store
from ocpd.custodian.store import DatabaseKey, DatabaseKeyError
from ocpd.proto.crypto import SigningKey
from ocpd.proto.encoding import b64url_decode, b64url_encode, format_timestamp
from ocpd.proto.errors import ForbiddenError, InternalError
from ocpd.proto.ids import derive_agent_id
from ocpd.proto.recovery import Custodian, make_share_records, open_share_record
from ocpd.storage import open_database

NOW = 1_790_000_000.0
DAY = 86_400.0
AGENT_KEY = SigningKey(b"\x01" * 32)
AGENT = derive_agent_id(AGENT_KEY.public_key, "mainnet")
RECOVERY_PUBLIC = SigningKey(b"\x02" * 32).public_key
CUSTODIAN_KEY = SigningKey(b"\x03" * 32)
CUSTODIAN = Custodian(
    derive_agent_id(CUSTODIAN_KEY.public_key, "mainnet"), CUSTODIAN_KEY.x25519_public_key()
)
OTHERS = [
    Custodian(derive_agent_id(k.public_key, "mainnet"), k.x25519_public_key())
    for k in (SigningKey(bytes([n]) * 32) for n in (4, 5))
]


def _record(key: SigningKey = AGENT_KEY, agent: str = AGENT) -> dict[str, object]:
    return make_share_records(
        key,
        agent_id=agent,
        custodians=[CUSTODIAN, *OTHERS],
        threshold=2,
        created_at=format_timestamp(NOW),
    )[0]


def _files_holding(folder: Path, secrets: tuple[bytes, ...]) -> list[str]:
    assert (folder / "custodian.db").is_file()
    return [
        file.name
        for file in folder.iterdir()
        if any(secret in file.read_bytes() for secret in secrets)
    ]


async def test_shares_are_wrapped_at_rest_and_survive_a_restart(tmp_path: Path) -> None:
    key = DatabaseKey.generate()
    path = tmp_path / "custodian.db"
    record = _record()
    share = open_share_record(record, CUSTODIAN_KEY, CUSTODIAN.agent_id)
    fingerprint = str(record["key_fingerprint"])
    async with trio.open_nursery() as nursery:
        database = await open_database(path, "custodian")
        nursery.start_soon(database.run)
        await database.write(
            lambda conn: store.put_share(
                conn, key, record, RECOVERY_PUBLIC, now=NOW, expires_at=NOW + 90 * DAY
            )
        )
        database.close()
    # Nothing in the files (database and its WAL) shows the share, the sealed
    # share_data or the record's signature.
    sealed = b64url_decode(str(record["share_data"]))
    shown = (
        share.data,
        sealed,
        str(record["share_data"]).encode(),
        str(record["signature"]).encode(),
    )
    assert _files_holding(tmp_path, shown) == []
    # The scan does see what is stored in the clear: the share's id.
    assert _files_holding(tmp_path, (str(record["share_id"]).encode(),))
    async with trio.open_nursery() as nursery:
        database = await open_database(path, "custodian")
        nursery.start_soon(database.run)
        held = await database.read(
            lambda conn: store.get_share(conn, key, AGENT, fingerprint, now=NOW + DAY)
        )
        assert held is not None and held.record == record
        assert held.recovery_public_key == RECOVERY_PUBLIC
        # Without the database key the row does not open.
        with pytest.raises(InternalError):
            await database.read(
                lambda conn: store.get_share(
                    conn, DatabaseKey.generate(), AGENT, fingerprint, now=NOW
                )
            )
        database.close()


def _memory() -> sqlite3.Connection:
    from ocpd.storage import MIGRATIONS, migrate

    conn = sqlite3.connect(":memory:", isolation_level=None)
    migrate(conn, MIGRATIONS["custodian"])
    return conn


def test_one_share_per_agent_key() -> None:
    conn, key = _memory(), DatabaseKey.generate()
    record = _record()
    store.put_share(conn, key, record, RECOVERY_PUBLIC, now=NOW, expires_at=NOW + DAY)
    with pytest.raises(ForbiddenError) as refused:
        store.put_share(conn, key, _record(), RECOVERY_PUBLIC, now=NOW, expires_at=NOW + DAY)
    assert refused.value.details == {"reason": "share_exists", "share_index": 1}
    # Another key of the same agent (after a rotation) is a new share.
    rotated = _record(SigningKey(b"\x09" * 32), AGENT)
    store.put_share(conn, key, rotated, RECOVERY_PUBLIC, now=NOW, expires_at=NOW + DAY)
    assert store.count_shares(conn) == 2


def test_a_row_moved_to_another_agent_does_not_open() -> None:
    conn, key = _memory(), DatabaseKey.generate()
    record = _record()
    fingerprint = str(record["key_fingerprint"])
    store.put_share(conn, key, record, RECOVERY_PUBLIC, now=NOW, expires_at=NOW + DAY)
    other = "did:ocp:mainnet:agent-0123456789ab"
    conn.execute("UPDATE shares SET agent_id = ?", (other,))
    with pytest.raises(InternalError):
        store.get_share(conn, key, other, fingerprint, now=NOW)


def test_expired_shares_are_not_served_and_are_swept() -> None:
    conn, key = _memory(), DatabaseKey.generate()
    first, second = _record(), _record(SigningKey(b"\x09" * 32))
    store.put_share(conn, key, first, RECOVERY_PUBLIC, now=NOW, expires_at=NOW + DAY)
    store.put_share(conn, key, second, RECOVERY_PUBLIC, now=NOW, expires_at=NOW + 3 * DAY)
    fingerprint = str(first["key_fingerprint"])
    assert store.get_share(conn, key, AGENT, fingerprint, now=NOW + DAY) is None
    assert store.sweep_expired(conn, now=NOW + 2 * DAY) == [(AGENT, fingerprint)]
    assert store.count_shares(conn) == 1
    assert store.sweep_expired(conn, now=NOW + 2 * DAY) == []
    assert store.delete_share(conn, AGENT, str(second["key_fingerprint"]))
    assert not store.delete_share(conn, AGENT, str(second["key_fingerprint"]))
    assert store.count_shares(conn) == 0


def test_the_audit_log_holds_ids_and_outcomes() -> None:
    conn = _memory()
    store.audit(
        conn,
        at=NOW,
        event="share_deposit",
        outcome="refused",
        agent_id=AGENT,
        fingerprint="00" * 8,
        reason="share_exists",
    )
    row = conn.execute("SELECT at, event, agent_id, outcome, detail FROM audit").fetchone()
    assert row == (NOW, "share_deposit", AGENT, "refused", '{"reason": "share_exists"}')


def test_database_key_files(tmp_path: Path) -> None:
    key = DatabaseKey.generate()
    written = tmp_path / "written.key"
    key.write(written)
    assert os.stat(written).st_mode & 0o777 == 0o600
    assert DatabaseKey.from_file(written) == key
    for name, content in (
        ("raw.key", key.key),
        ("hex.key", (key.key.hex() + "\n").encode()),
        ("b64.key", b64url_encode(key.key).encode()),
    ):
        path = tmp_path / name
        path.write_bytes(content)
        path.chmod(0o400)
        assert DatabaseKey.from_file(path) == key
    assert key.key.hex() not in repr(key) and b64url_encode(key.key) not in repr(key)
    short = tmp_path / "short.key"
    short.write_text("abcd")
    short.chmod(0o600)
    with pytest.raises(DatabaseKeyError, match="does not hold"):
        DatabaseKey.from_file(short)
    open_to_all = tmp_path / "open.key"
    open_to_all.write_bytes(key.key)
    open_to_all.chmod(0o644)
    with pytest.raises(DatabaseKeyError, match="open to other users"):
        DatabaseKey.from_file(open_to_all)
    with pytest.raises(DatabaseKeyError, match="cannot read"):
        DatabaseKey.from_file(tmp_path / "missing.key")
    with pytest.raises(FileExistsError):
        key.write(written)
