"""Group commit, per-write savepoints, migrations and file modes on real SQLite files."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest
import trio

from ocpd.storage import (
    MIGRATIONS,
    StorageError,
    backup_database,
    integrity_check,
    migrate,
    open_database,
)


def _insert(value: str):  # type: ignore[no-untyped-def]
    def fn(conn: sqlite3.Connection) -> int:
        cursor = conn.execute("INSERT INTO ocpd_meta (key, value) VALUES (?, 'v')", (value,))
        return int(cursor.lastrowid or 0)

    return fn


async def test_concurrent_writes_share_commits(tmp_path: Path) -> None:
    with trio.fail_after(30):
        db = await open_database(tmp_path / "db.sqlite", "node")
        async with trio.open_nursery() as nursery:
            await nursery.start(db.run)
            results: list[int] = []

            async def writer(i: int) -> None:
                results.append(await db.write(_insert(f"k{i}")))

            async with trio.open_nursery() as writers:
                for i in range(200):
                    writers.start_soon(writer, i)
            nursery.cancel_scope.cancel()
        assert len(results) == 200
        assert db.writes == 200
        assert db.commits < 200  # writes that arrived together shared a commit
        count = await db.read(lambda c: c.execute("SELECT count(*) FROM ocpd_meta").fetchone()[0])
        assert count == 200
        db.close()


async def test_after_commit_hooks_run_in_commit_order(tmp_path: Path) -> None:
    with trio.fail_after(30):
        db = await open_database(tmp_path / "db.sqlite", "node")
        async with trio.open_nursery() as nursery:
            await nursery.start(db.run)
            seen: list[int] = []
            resumed: list[int] = []
            early: list[int] = []

            def hook(rowid: int) -> None:
                if rowid in resumed:
                    early.append(rowid)
                seen.append(rowid)

            def boom(rowid: int) -> None:
                raise RuntimeError("a broken hook")

            async def writer(i: int) -> None:
                resumed.append(await db.write(_insert(f"k{i}"), then=boom if i == 7 else hook))

            async with trio.open_nursery() as writers:
                for i in range(200):
                    writers.start_soon(writer, i)
            nursery.cancel_scope.cancel()
        # Row ids grow in commit order; the hooks saw them in that order, before
        # every caller resumed (in whatever order the scheduler picked), and a
        # hook that raised stopped neither the writer nor the other hooks.
        assert len(seen) == 199
        assert seen == sorted(seen)
        assert early == []
        assert len(resumed) == 200
        assert set(seen) < set(resumed)
        assert db.commits < 200
        db.close()


async def test_a_failing_write_is_rolled_back_alone(tmp_path: Path) -> None:
    with trio.fail_after(30):
        db = await open_database(tmp_path / "db.sqlite", "node")

        def half_then_fail(conn: sqlite3.Connection) -> None:
            conn.execute("INSERT INTO ocpd_meta (key, value) VALUES ('partial', 'x')")
            raise ValueError("refused")

        async with trio.open_nursery() as nursery:
            await nursery.start(db.run)
            outcomes: dict[str, object] = {}

            async def run(name: str, fn: object) -> None:
                try:
                    outcomes[name] = await db.write(fn)  # type: ignore[arg-type]
                except ValueError as exc:
                    outcomes[name] = exc

            async with trio.open_nursery() as writers:
                writers.start_soon(run, "a", _insert("a"))
                writers.start_soon(run, "bad", half_then_fail)
                writers.start_soon(run, "b", _insert("b"))
            nursery.cancel_scope.cancel()
        assert isinstance(outcomes["bad"], ValueError)
        keys = await db.read(
            lambda c: [r[0] for r in c.execute("SELECT key FROM ocpd_meta ORDER BY key")]
        )
        assert keys == ["a", "b"]
        db.close()


async def test_write_returns_only_after_commit(tmp_path: Path) -> None:
    with trio.fail_after(30):
        path = tmp_path / "db.sqlite"
        db = await open_database(path, "registry")
        async with trio.open_nursery() as nursery:
            await nursery.start(db.run)
            await db.write(_insert("durable"))
            # a separate connection sees it: it was committed, not just buffered
            other = sqlite3.connect(path)
            assert other.execute("SELECT value FROM ocpd_meta WHERE key='durable'").fetchone() == (
                "v",
            )
            other.close()
            nursery.cancel_scope.cancel()
        db.close()


async def test_files_are_private_and_wal(tmp_path: Path) -> None:
    path = tmp_path / "sub" / "db.sqlite"
    db = await open_database(path, "custodian")
    assert path.stat().st_mode & 0o777 == 0o600
    assert db._writer.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert db._writer.execute("PRAGMA synchronous").fetchone()[0] == 2  # FULL
    db.close()


def test_migrations_are_applied_once_and_versioned(tmp_path: Path) -> None:
    conn = sqlite3.connect(tmp_path / "m.db", isolation_level=None)
    steps = ["CREATE TABLE a (x)", "CREATE TABLE b (y); CREATE TABLE c (z)"]
    assert migrate(conn, steps[:1]) == 0
    assert migrate(conn, steps) == 1
    assert migrate(conn, steps) == 2
    assert conn.execute("PRAGMA user_version").fetchone()[0] == 2
    with pytest.raises(StorageError, match="newer"):
        migrate(conn, steps[:1])
    conn.close()


def test_failed_migration_leaves_the_old_version(tmp_path: Path) -> None:
    conn = sqlite3.connect(tmp_path / "m.db", isolation_level=None)
    migrate(conn, ["CREATE TABLE a (x)"])
    with pytest.raises(sqlite3.OperationalError):
        migrate(conn, ["CREATE TABLE a (x)", "CREATE TABLE d (x); CREATE TABLE a (x)"])
    assert conn.execute("PRAGMA user_version").fetchone()[0] == 1
    assert conn.execute("SELECT count(*) FROM sqlite_master WHERE name='d'").fetchone()[0] == 0
    conn.close()


async def test_open_retries_then_reports(tmp_path: Path) -> None:
    blocker = tmp_path / "not-a-dir"
    blocker.write_text("")
    retries: list[int] = []
    with trio.fail_after(10), pytest.raises(StorageError, match="cannot open"):
        await open_database(
            blocker / "db.sqlite",
            "node",
            attempts=3,
            first_delay=0.01,
            on_retry=lambda n, exc: retries.append(n),
        )
    assert retries == [1, 2]


async def test_backup_copy_is_consistent(tmp_path: Path) -> None:
    db = await open_database(tmp_path / "db.sqlite", "node")
    async with trio.open_nursery() as nursery:
        await nursery.start(db.run)
        for i in range(20):
            await db.write(_insert(f"k{i}"))
        backup_database(tmp_path / "db.sqlite", tmp_path / "copy.db")
        nursery.cancel_scope.cancel()
    db.close()
    assert integrity_check(tmp_path / "copy.db") == ["ok"]
    copy = sqlite3.connect(tmp_path / "copy.db")
    assert copy.execute("SELECT count(*) FROM ocpd_meta").fetchone()[0] == 20
    copy.close()


def test_every_component_has_migrations() -> None:
    assert set(MIGRATIONS) == {"node", "registry", "custodian"}


async def test_backup_is_a_single_file(tmp_path: Path) -> None:
    db = await open_database(tmp_path / "db.sqlite", "node")
    async with trio.open_nursery() as nursery:
        await nursery.start(db.run)
        await db.write(_insert("x"))
        backup_database(tmp_path / "db.sqlite", tmp_path / "copy.db")
        nursery.cancel_scope.cancel()
    db.close()
    assert not (tmp_path / "copy.db-wal").exists()
    assert not (tmp_path / "copy.db-shm").exists()


async def test_closing_during_a_commit_waits_for_it(tmp_path: Path) -> None:
    """Closing under a running statement would crash the process; close waits instead."""
    import threading

    with trio.fail_after(30):
        db = await open_database(tmp_path / "db.sqlite", "node")
        in_commit, release = threading.Event(), threading.Event()

        def slow(conn: sqlite3.Connection) -> str:
            conn.execute("INSERT INTO ocpd_meta (key, value) VALUES ('slow', 'v')")
            in_commit.set()
            release.wait(10)
            return str(conn.execute("SELECT value FROM ocpd_meta WHERE key = 'slow'").fetchone()[0])

        async with trio.open_nursery() as nursery:
            await nursery.start(db.run)
            answer: list[str] = []

            async def write() -> None:
                answer.append(await db.write(slow))

            nursery.start_soon(write)
            await trio.to_thread.run_sync(in_commit.wait)
            db.close()  # while the writer thread is inside ``slow``
            release.set()
        assert answer == ["v"]
        with pytest.raises(sqlite3.ProgrammingError):
            await db.read(lambda c: c.execute("SELECT 1").fetchone())
        assert integrity_check(tmp_path / "db.sqlite") == ["ok"]
