"""The advertisement cache, this node's sequence numbers and the nonce store, on SQLite files."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
import trio

from ocpd.net.adverts import AdvertisementCache, NonceStore, OwnAdvertisement
from ocpd.proto.crypto import SigningKey
from ocpd.proto.errors import NetError
from ocpd.proto.ids import format_node_id
from ocpd.proto.netartifacts import MAX_ADVERTISEMENT_LIFETIME, build_node_advertisement
from ocpd.proto.peer import NonceMemory
from ocpd.storage import Database, open_database

T0 = 1_775_217_600.0
KEY = SigningKey(bytes(range(32)))
OTHER = SigningKey(bytes(range(1, 33)))
NODE = format_node_id(KEY.public_key)
ENDPOINTS = [{"transport": "wss", "url": "wss://a.example:8421/ocp/v1/peer", "priority": 1}]


def adv(
    sequence: int, *, key: SigningKey = KEY, now: float = T0, lifetime: float = 3600.0
) -> dict[str, Any]:
    return build_node_advertisement(
        key, sequence=sequence, endpoints=ENDPOINTS, now=now, lifetime=lifetime
    )


async def _with_db(path: Path, body: Callable[[Database], Awaitable[None]]) -> None:
    """Run ``body`` on the node database at ``path``, then close it (one daemon run)."""
    with trio.fail_after(30):
        db = await open_database(path / "node.sqlite3", "node")
        async with trio.open_nursery() as nursery:
            await nursery.start(db.run)
            try:
                await body(db)
            finally:
                db.close()


async def test_only_a_greater_sequence_replaces_and_the_cache_survives_a_restart(
    tmp_path: Path,
) -> None:
    async def first(db: Database) -> None:
        cache = AdvertisementCache(db)
        offered = await cache.offer(adv(5), now=T0, source="seed-directory")
        assert (offered.node_id, offered.sequence, offered.replaced) == (NODE, 5, False)
        for stale in (5, 4):
            with pytest.raises(NetError) as exc:
                await cache.offer(adv(stale), now=T0, source="peer")
            assert exc.value.code == "E_ADV_STALE_SEQ"
        assert (await cache.offer(adv(6), now=T0, source="peer")).replaced

    async def second(db: Database) -> None:
        cache = AdvertisementCache(db)
        current = await cache.current(NODE, now=T0 + 1)
        assert current is not None
        assert current["sequence/no"] == 6
        assert current["endpoints"] == ENDPOINTS
        assert [a["node/id"] for a in await cache.all_current(now=T0 + 1)] == [NODE]

    await _with_db(tmp_path, first)
    await _with_db(tmp_path, second)


async def test_refused_advertisements_leave_nothing_behind(tmp_path: Path) -> None:
    async def run(db: Database) -> None:
        cache = AdvertisementCache(db)
        forged = adv(1) | {"sequence/no": 2}
        expired = adv(3, now=T0 - 7200)
        for bad, code in (
            (forged, "E_SIG_INVALID"),
            (expired, "E_ADV_EXPIRED"),
            ({"node/id": NODE}, "E_PROTO_INVALID"),
        ):
            with pytest.raises(NetError) as exc:
                await cache.offer(bad, now=T0, source="peer")
            assert exc.value.code == code
        with pytest.raises(NetError) as exc:
            await cache.offer(adv(1, key=OTHER), now=T0, source="peer", expected_node_id=NODE)
        assert exc.value.code == "E_PROTO_INVALID"
        assert await cache.all_current(now=T0) == []

    await _with_db(tmp_path, run)


async def test_an_expired_row_still_refuses_an_older_replay_until_swept(tmp_path: Path) -> None:
    async def run(db: Database) -> None:
        cache = AdvertisementCache(db)
        old = adv(1, lifetime=MAX_ADVERTISEMENT_LIFETIME)
        await cache.offer(adv(2, lifetime=60), now=T0, source="peer")
        later = T0 + 120
        assert await cache.current(NODE, now=later) is None
        with pytest.raises(NetError) as exc:
            await cache.offer(old, now=later, source="peer")
        assert exc.value.code == "E_ADV_STALE_SEQ"
        assert await cache.sweep(now=later) == 0
        assert await cache.sweep(now=T0 + 60 + MAX_ADVERTISEMENT_LIFETIME) == 1

    await _with_db(tmp_path, run)


async def test_own_sequence_numbers_only_grow_across_restarts(tmp_path: Path) -> None:
    seen: list[int] = []

    async def run(db: Database) -> None:
        own = OwnAdvertisement(db, KEY, lifetime=600)
        for _ in range(2):
            made = await own.next(endpoints=ENDPOINTS, now=T0)
            seen.append(made["sequence/no"])
        assert own.latest == made

    await _with_db(tmp_path, run)
    await _with_db(tmp_path, run)
    assert seen == [1, 2, 3, 4]


async def test_handshake_nonces_outlive_a_restart(tmp_path: Path) -> None:
    async def first(db: Database) -> None:
        store = NonceStore(db)
        await store.remember("node:a", "n1", T0 + 120)
        await store.remember("node:a", "n2", T0 + 10)

    async def second(db: Database) -> None:
        memory = NonceMemory()
        memory.restore(await NonceStore(db).load(now=T0 + 60), now=T0 + 60)
        assert [e[:2] for e in memory.entries()] == [("node:a", "n1")]
        with pytest.raises(NetError) as exc:
            memory.admit("node:a", "n1", T0 + 61)
        assert exc.value.code == "E_HS_REPLAY"
        await NonceStore(db).sweep(now=T0 + 121)
        assert await NonceStore(db).load(now=T0) == []

    await _with_db(tmp_path, first)
    await _with_db(tmp_path, second)
