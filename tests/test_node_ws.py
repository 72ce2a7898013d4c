"""The WebSocket transport driven over memory channels: auth, receipts, delivery, limits."""

from __future__ import annotations

import json
import re
import sqlite3
from pathlib import Path

import pytest
import trio
import trio.testing
from trio.testing import MockClock

import ocpd.node.router
from conftest import NETWORK, Agent, task_count
from node_helpers import (
    NODE_KEY,
    WsClient,
    authenticate,
    handshake,
    message,
    running_node,
    session_of,
)
from ocpd.config import WebSocketSection
from ocpd.node.intake import Attempt
from ocpd.proto.envelope import verify_message_signature
from ocpd.proto.ids import broadcast_did


@pytest.fixture(autouse=True, params=["loop", "wire"])
def verifier(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """Every test twice: signatures checked on the loop, and examined as by the helper process."""
    monkeypatch.setenv("OCPD_TEST_VERIFIER", request.param)
    return str(request.param)


@pytest.fixture
def clock() -> MockClock:
    """Autojump after a moment of real idleness, so SQLite threads never see time jump."""
    return MockClock(autojump_threshold=0.2)


async def test_auth_result_accepted(
    tmp_path: Path, clock: MockClock, alice: Agent, bob: Agent
) -> None:
    with trio.fail_after(30):
        async with running_node(tmp_path) as node, trio.open_nursery() as nursery:
            node.directory.add(alice)
            client = WsClient()
            result = await authenticate(client, node.ws, nursery, alice, node.clock.now())
            assert client.accepted == "ocp.v1"
            assert result["frame_type"] == "auth_result" and result["status"] == "accepted"
            assert result["ttl"] == 86_400
            assert re.fullmatch(r"sess-[0-9a-f-]{36}", result["session_id"])
            assert node.router.owner(alice.id) is not None
            assert alice.id in node.router.local
            assert node.metrics.active_websockets._value.get() == 1
            await client.disconnect()
            await trio.sleep(1)
            assert node.router.owner(alice.id) is None
            assert node.metrics.active_websockets._value.get() == 0


async def test_no_handshake_closes_at_exactly_five_seconds(
    tmp_path: Path, clock: MockClock
) -> None:
    with trio.fail_after(30):
        async with running_node(tmp_path) as node, trio.open_nursery() as nursery:
            client = WsClient()
            await client.connect(node.ws, nursery)
            result = await client.frame()
            assert result["status"] == "rejected" and result["error_code"] == "OCP-408"
            assert await client.closing() == 1008
            assert trio.current_time() == 5.0


async def test_the_five_seconds_run_from_the_tcp_accept(tmp_path: Path, clock: MockClock) -> None:
    with trio.fail_after(30):
        async with running_node(tmp_path) as node, trio.open_nursery() as nursery:
            await trio.sleep(10)
            client = WsClient()
            # TLS and the upgrade took 3 s of the 5.
            await client.connect(node.ws, nursery, accepted_at=trio.current_time() - 3)
            result = await client.frame()
            assert result["error_code"] == "OCP-408"
            assert trio.current_time() == 12.0


@pytest.mark.parametrize(
    ("frame", "code"),
    [
        ("not json", "OCP-400"),
        ('{"frame_type":"auth_handshake"}', "OCP-400"),
        (None, "OCP-400"),  # binary frame
        ("unknown-agent", "OCP-401"),
        ("bad-signature", "OCP-401"),
        ("stale", "OCP-401"),
    ],
)
async def test_rejected_handshakes_close_1008(
    tmp_path: Path, clock: MockClock, alice: Agent, bob: Agent, frame: str | None, code: str
) -> None:
    with trio.fail_after(30):
        async with running_node(tmp_path) as node, trio.open_nursery() as nursery:
            node.directory.add(alice)
            client = WsClient()
            await client.connect(node.ws, nursery)
            now = node.clock.now()
            if frame is None:
                await client.send_bytes(handshake(alice, now=now).encode())
            elif frame == "unknown-agent":
                await client.send_text(handshake(bob, now=now))
            elif frame == "bad-signature":
                good = json.loads(handshake(alice, now=now))
                good["agent_id"] = alice.id
                good["nonce"] = json.loads(handshake(alice, now=now))["nonce"]
                await client.send_text(json.dumps(good))
            elif frame == "stale":
                await client.send_text(handshake(alice, now=now - 61))
            else:
                await client.send_text(frame)
            result = await client.frame()
            assert result == {
                "frame_type": "auth_result",
                "status": "rejected",
                "error_code": code,
                "message": result["message"],
            }
            assert await client.closing() == 1008


async def test_replayed_handshake_is_rejected(
    tmp_path: Path, clock: MockClock, alice: Agent
) -> None:
    with trio.fail_after(30):
        async with running_node(tmp_path) as node, trio.open_nursery() as nursery:
            node.directory.add(alice)
            frame = handshake(alice, now=node.clock.now())
            first = WsClient()
            await first.connect(node.ws, nursery)
            await first.send_text(frame)
            assert (await first.frame())["status"] == "accepted"
            second = WsClient()
            await second.connect(node.ws, nursery)
            await second.send_text(frame)
            replayed = await second.frame()
            assert replayed["status"] == "rejected" and replayed["error_code"] == "OCP-401"
            assert "already used" in replayed["message"]
            assert await second.closing() == 1008
            await first.disconnect()


async def test_subprotocol_is_required(tmp_path: Path, clock: MockClock) -> None:
    with trio.fail_after(30):
        async with running_node(tmp_path) as node, trio.open_nursery() as nursery:
            client = WsClient()
            await client.connect(node.ws, nursery, subprotocols=["chat"])
            event = await client.event()
            # closed before accept: hypercorn refuses the upgrade with HTTP 403
            assert event["type"] == "websocket.close" and client.accepted is None


async def test_connection_limits(tmp_path: Path, clock: MockClock, alice: Agent) -> None:
    settings = WebSocketSection(max_connections=3, max_pending_per_ip=1)
    with trio.fail_after(30):
        async with running_node(tmp_path, websocket=settings) as node, trio.open_nursery() as n:
            node.directory.add(alice)
            pending = WsClient()
            await pending.connect(node.ws, n)
            await pending.event()  # accepted
            same_address = WsClient()
            await same_address.connect(node.ws, n)
            assert await same_address.closing() == 1013
            other_address = WsClient()
            await other_address.connect(node.ws, n, client="10.0.0.2")
            await other_address.event()
            authed = WsClient()
            await authed.connect(node.ws, n, client="10.0.0.3")
            await authed.send_text(handshake(alice, now=node.clock.now()))
            assert (await authed.frame())["status"] == "accepted"
            # three connections: the fourth is refused whatever its address
            fourth = WsClient()
            await fourth.connect(node.ws, n, client="10.0.0.4")
            assert await fourth.closing() == 1013
            # once authenticated, a connection no longer counts as pending
            await pending.send_text(handshake(alice, now=node.clock.now() + 1))
            assert (await pending.frame())["status"] == "accepted"
            fifth = WsClient()
            await fifth.connect(node.ws, n)
            assert await fifth.closing() == 1013  # still three connections
            for client in (pending, other_address, authed):
                await client.disconnect()


async def test_session_ends_at_its_ttl(tmp_path: Path, clock: MockClock, alice: Agent) -> None:
    settings = WebSocketSection(session_ttl_seconds=600)
    with trio.fail_after(3000):
        async with running_node(tmp_path, websocket=settings) as node, trio.open_nursery() as n:
            node.directory.add(alice)
            client = WsClient()
            await trio.sleep(7)
            result = await authenticate(client, node.ws, n, alice, node.clock.now())
            authed_at = trio.current_time()
            assert result["ttl"] == 600
            assert await client.closing() == 1000
            assert trio.current_time() == authed_at + 600


async def test_session_time_is_reported(tmp_path: Path, clock: MockClock, alice: Agent) -> None:
    with trio.fail_after(3000):
        async with running_node(tmp_path) as node, trio.open_nursery() as n:
            node.directory.add(alice)
            began = node.clock.now()
            client = WsClient()
            await trio.sleep(10)
            await authenticate(client, node.ws, n, alice, node.clock.now())
            start = node.clock.now()
            await trio.sleep(650)
            # open sessions are reported as they go: [start, now] every 300 s
            assert node.directory.sessions == [
                (alice.id, start, began + 300),
                (alice.id, start, began + 600),
            ]
            await client.disconnect()
            await trio.sleep(1)
            assert node.directory.sessions[-1] == (alice.id, start, start + 650)


async def test_stopping_drains_then_closes_with_1001(
    tmp_path: Path, clock: MockClock, alice: Agent, bob: Agent
) -> None:
    with trio.fail_after(30):
        async with running_node(tmp_path) as node, trio.open_nursery() as n:
            node.directory.add(alice)
            node.directory.add(bob)
            client = await session_of(node, n, alice)
            # what was read before the stop is still committed and answered
            raws = [message(alice, bob.id, clock_now=node.clock.now()) for _ in range(5)]
            for raw in raws:
                await client.send_text(raw.decode())
            await trio.testing.wait_all_tasks_blocked()
            node.stopping.set()
            receipts = [await client.frame() for _ in raws]
            assert [r["message_id"] for r in receipts] == [
                json.loads(r)["message_id"] for r in raws
            ]
            assert {r["status"] for r in receipts} == {"accepted"}
            assert await client.closing() == 1001


async def test_messages_receipts_and_live_delivery(
    tmp_path: Path, clock: MockClock, alice: Agent, bob: Agent
) -> None:
    with trio.fail_after(60):
        async with running_node(tmp_path) as node, trio.open_nursery() as n:
            node.directory.add(alice)
            node.directory.add(bob)
            sender = await session_of(node, n, alice)
            receiver = await session_of(node, n, bob)
            raw = message(alice, bob.id, clock_now=node.clock.now())
            message_id = json.loads(raw)["message_id"]
            await sender.send_text(raw.decode())
            assert await sender.frame() == {
                "frame_type": "receipt",
                "message_id": message_id,
                "status": "accepted",
            }
            delivered = await receiver.receive_event_text()
            assert delivered == raw.decode()
            # a duplicate is acknowledged but not delivered again
            await sender.send_text(raw.decode())
            assert (await sender.frame())["duplicate"] is True
            # the same id with other content is refused, with a signed error
            other = message(
                alice,
                bob.id,
                clock_now=node.clock.now(),
                payload={"trust_level": 2},
                message_id=message_id,
            )
            await sender.send_text(other.decode())
            rejected = await sender.frame()
            assert rejected["status"] == "rejected" and rejected["message_id"] == message_id
            assert rejected["error"]["payload"]["error_code"] == "OCP-400"
            verify_message_signature(rejected["error"], [NODE_KEY.public_key])
            # a message from someone else on this session is refused
            forged = message(bob, alice.id, clock_now=node.clock.now())
            await sender.send_text(forged.decode())
            assert (await sender.frame())["error"]["payload"]["error_code"] == "OCP-401"
            await sender.send_bytes(b"{}")
            binary = await sender.frame()
            assert binary["message_id"] is None and binary["status"] == "rejected"
            assert binary["error"]["receiver"]["agent_id"] == alice.id
            # the ack flows back to the original sender
            ack = message(
                bob,
                alice.id,
                clock_now=node.clock.now(),
                message_type="ack",
                payload={"status": "received"},
                metadata={"correlation_id": message_id},
            )
            await receiver.send_text(ack.decode())
            assert (await receiver.frame())["status"] == "accepted"
            assert await sender.receive_event_text() == ack.decode()
            await trio.sleep(1)
            assert await node.store.pending(bob.id, after=0) == []
            await sender.disconnect()
            await receiver.disconnect()


async def test_an_idle_session_is_one_task(
    tmp_path: Path, clock: MockClock, alice: Agent, bob: Agent
) -> None:
    with trio.fail_after(60):
        async with running_node(tmp_path) as node, trio.open_nursery() as n:
            node.directory.add(alice)
            node.directory.add(bob)
            before = task_count()
            sender = await session_of(node, n, alice)
            receiver = await session_of(node, n, bob)
            raw = message(alice, bob.id, clock_now=node.clock.now())
            await sender.send_text(raw.decode())
            assert (await sender.frame())["status"] == "accepted"
            assert await receiver.receive_event_text() == raw.decode()
            await trio.sleep(1)
            # Each session is its connection's task: the committer and the
            # writer run only while they have work.
            assert task_count() == before + 2
            await sender.disconnect()
            await receiver.disconnect()


async def test_a_live_receiver_gets_everything_many_senders_commit_together(
    tmp_path: Path, clock: MockClock, bob: Agent
) -> None:
    # Messages from several sessions share group commits, and their senders'
    # tasks resume in no particular order: the receiver's rows must still
    # reach its session in seq order, or the later ones would hide the earlier.
    senders = [Agent(10 + i) for i in range(8)]
    with trio.fail_after(120):
        async with running_node(tmp_path) as node, trio.open_nursery() as n:
            node.directory.add(bob)
            receiver = await session_of(node, n, bob)
            clients = []
            for agent in senders:
                node.directory.add(agent)
                client = await session_of(node, n, agent)
                clients.append((agent, client))
            expected: set[str] = set()
            for _ in range(15):
                for agent, client in clients:
                    raw = message(agent, bob.id, clock_now=node.clock.now())
                    expected.add(json.loads(raw)["message_id"])
                    await client.send_text(raw.decode())
            got: set[str] = set()
            while got != expected:
                got.add(json.loads(await receiver.receive_event_text())["message_id"])
            await trio.sleep(1)
            assert await node.store.pending(bob.id, after=0) == []
            for _, client in [*clients, (bob, receiver)]:
                await client.disconnect()


async def test_offline_receiver_gets_its_queue_in_order(
    tmp_path: Path, clock: MockClock, alice: Agent, bob: Agent, carol: Agent
) -> None:
    with trio.fail_after(60):
        async with running_node(tmp_path) as node, trio.open_nursery() as n:
            for agent in (alice, bob, carol):
                node.directory.add(agent)
            sent: list[bytes] = []
            for i in range(300):
                author = alice if i % 3 else carol
                raw = message(author, bob.id, clock_now=node.clock.now(), payload={})
                attempt = Attempt("ws", trio.current_time())
                checked = await node.intake.check(raw, attempt)
                await node.intake.commit([checked])
                sent.append(raw)
            receiver = await session_of(node, n, bob)
            got = [(await receiver.receive_event_text()).encode() for _ in sent]
            assert got == sent
            await trio.sleep(1)
            assert await node.store.pending(bob.id, after=0) == []
            assert node.metrics.deliveries.labels("sent")._value.get() == 300
            await receiver.disconnect()


async def test_a_receiver_catching_up_under_steady_traffic_goes_live(
    tmp_path: Path, clock: MockClock, alice: Agent, bob: Agent
) -> None:
    with trio.fail_after(60):
        async with running_node(tmp_path) as node, trio.open_nursery() as n:
            node.directory.add(alice)
            node.directory.add(bob)

            async def send_one() -> bytes:
                raw = message(alice, bob.id, clock_now=node.clock.now())
                await node.intake.commit([await node.intake.check(raw, Attempt("ws", 0))])
                return raw

            sent = [await send_one() for _ in range(300)]
            receiver = await session_of(node, n, bob)
            # alice never pauses: the backlog must still end in live delivery
            live_during_traffic = False
            for _ in range(300):
                sent.append(await send_one())
                session = node.router.owner(bob.id)
                live_during_traffic |= session is not None and session.live
            got = [(await receiver.receive_event_text()).encode() for _ in sent]
            assert got == sent
            assert live_during_traffic
            await receiver.disconnect()


async def test_live_queue_overflow_falls_back_to_the_database(
    tmp_path: Path, clock: MockClock, alice: Agent, bob: Agent, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(ocpd.node.router, "LIVE_QUEUE", 3)
    with trio.fail_after(60):
        async with running_node(tmp_path) as node, trio.open_nursery() as n:
            node.directory.add(alice)
            node.directory.add(bob)
            receiver = await session_of(node, n, bob)
            await trio.sleep(1)
            session = node.router.owner(bob.id)
            assert session is not None and session.live
            raws = [message(alice, bob.id, clock_now=node.clock.now()) for _ in range(40)]
            checked = [await node.intake.check(r, Attempt("ws", 0)) for r in raws]
            await node.intake.commit(checked)
            got = [(await receiver.receive_event_text()).encode() for _ in raws]
            assert got == raws
            await receiver.disconnect()


async def test_newest_session_owns_delivery(
    tmp_path: Path, clock: MockClock, alice: Agent, bob: Agent
) -> None:
    with trio.fail_after(60):
        async with running_node(tmp_path) as node, trio.open_nursery() as n:
            node.directory.add(alice)
            node.directory.add(bob)
            old = await session_of(node, n, bob)
            new = await session_of(node, n, bob, later=0.5)

            async def send_one() -> bytes:
                raw = message(alice, bob.id, clock_now=node.clock.now())
                await node.intake.commit([await node.intake.check(raw, Attempt("ws", 0))])
                return raw

            first = await send_one()
            assert (await new.receive_event_text()).encode() == first
            # (a frame written while its connection was going away would be
            # sent again to the next owner: delivery is at least once)
            await trio.sleep(1)
            await new.disconnect()
            await trio.sleep(1)
            second = await send_one()
            assert (await old.receive_event_text()).encode() == second
            await old.disconnect()


async def test_expired_messages_are_not_delivered(
    tmp_path: Path, clock: MockClock, alice: Agent, bob: Agent
) -> None:
    with trio.fail_after(60):
        async with running_node(tmp_path) as node, trio.open_nursery() as n:
            node.directory.add(alice)
            node.directory.add(bob)
            short = message(alice, bob.id, clock_now=node.clock.now(), ttl=10)
            long = message(alice, bob.id, clock_now=node.clock.now(), ttl=100)
            for raw in (short, long):
                await node.intake.commit([await node.intake.check(raw, Attempt("ws", 0))])
            await trio.sleep(11)
            receiver = await session_of(node, n, bob)
            assert (await receiver.receive_event_text()).encode() == long
            await trio.sleep(1)
            assert node.metrics.deliveries.labels("expired")._value.get() == 1
            assert await node.store.pending(bob.id, after=0) == []
            await receiver.disconnect()


async def test_broadcast_is_delivered_once_to_each_connected_match(
    tmp_path: Path, clock: MockClock, alice: Agent, bob: Agent, carol: Agent
) -> None:
    with trio.fail_after(60):
        async with running_node(tmp_path) as node, trio.open_nursery() as n:
            node.directory.add(alice, domains=["finance"])
            node.directory.add(bob, domains=["healthcare.oncology"])
            node.directory.add(carol, domains=["healthcare.radiology"], level=0)
            sender = await session_of(node, n, alice)
            b = await session_of(node, n, bob)
            c = await session_of(node, n, carol)
            raw = message(
                alice,
                broadcast_did(NETWORK),
                clock_now=node.clock.now(),
                broadcast=True,
                message_type="broadcast",
                metadata={"tags": ["healthcare"]},
            )
            await sender.send_text(raw.decode())
            assert (await sender.frame())["status"] == "accepted"
            assert await b.receive_event_text() == raw.decode()
            assert await c.receive_event_text() == raw.decode()
            await sender.send_text(raw.decode())
            assert (await sender.frame())["duplicate"] is True
            with trio.move_on_after(5):
                await b.receive_event_text()
                raise AssertionError("delivered twice")
            for client in (sender, b, c):
                await client.disconnect()


async def test_messages_sent_just_before_leaving_are_committed(
    tmp_path: Path, clock: MockClock, alice: Agent, bob: Agent
) -> None:
    """An agent that sends and closes at once (its close right behind its frames) still
    has every message it sent committed and queued for the receiver."""
    with trio.fail_after(30):
        async with (
            running_node(tmp_path, verifier="helper") as node,
            trio.open_nursery() as n,
        ):
            node.directory.add(alice)
            node.directory.add(bob)
            client = await session_of(node, n, alice)
            sent = [message(alice, bob.id, clock_now=node.clock.now()) for _ in range(50)]
            for raw in sent:
                await client.send_text(raw.decode())
            await client.disconnect()
            await trio.sleep(1)
            queued = await node.store.pending(bob.id, after=0)
            assert [p.raw for p in queued] == sent


async def test_oversized_frame_closes_1009(tmp_path: Path, clock: MockClock, alice: Agent) -> None:
    with trio.fail_after(30):
        async with running_node(tmp_path, max_message_bytes=2048) as node, trio.open_nursery() as n:
            node.directory.add(alice)
            client = await session_of(node, n, alice)
            await client.send_text("x" * 2049)
            assert await client.closing() == 1009


async def test_sweeper_deletes_expired_rows_on_its_interval(
    tmp_path: Path, clock: MockClock, alice: Agent, bob: Agent
) -> None:
    def count(conn: sqlite3.Connection) -> tuple[int, int, int]:
        return (
            conn.execute("SELECT count(*) FROM deliveries").fetchone()[0],
            conn.execute("SELECT count(*) FROM message_bodies").fetchone()[0],
            conn.execute("SELECT count(*) FROM message_ids").fetchone()[0],
        )

    with trio.fail_after(10_000):
        async with running_node(tmp_path) as node:
            node.directory.add(alice)
            node.directory.add(bob)
            async with trio.open_nursery() as n:
                await n.start(node.sweeper.run)
                raw = message(alice, bob.id, clock_now=node.clock.now(), ttl=30)
                await node.intake.commit([await node.intake.check(raw, Attempt("ws", 0))])
                assert await node.database.read(count) == (1, 1, 1)
                await trio.sleep(59)
                assert await node.database.read(count) == (1, 1, 1)
                await trio.sleep(2)  # the sweep at t=60: the message expired at t=30
                assert await node.database.read(count) == (0, 0, 1)
                n.cancel_scope.cancel()
            # its id is kept for max(ttl, 3600) + 60 s of clock skew from acceptance
            await trio.sleep(3659 - trio.current_time())
            await node.sweeper.sweep()
            assert await node.database.read(count) == (0, 0, 1)
            await trio.sleep(2)
            await node.sweeper.sweep()
            assert await node.database.read(count) == (0, 0, 0)
