"""Registry-mediated delivery: rows for agents served elsewhere are handed on (D6).

The node, its SQLite database and its intake are real; the network is a
scripted :class:`Poster`, and trio's autojump clock runs the 1, 2, 4, 8,
16 s schedule in no time.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import attrs
import pytest
import trio
from trio.testing import MockClock

from conftest import Agent
from node_helpers import (
    NODE_KEY,
    OWN_URLS,
    SERVICE_AGENT,
    Node,
    TrioWallClock,
    message,
    message_headers,
    post,
    running_node,
)
from ocpd.node.forward import BACKOFF, Posted, deliverable, endpoint_key
from ocpd.node.intake import Attempt
from ocpd.node.presence import REGISTER_PATH, ServiceRegistration, service_registration
from ocpd.node.store import MessageStore
from ocpd.proto.artifacts import verify_registration
from ocpd.proto.auth import ReplayWindow, verify_authorization
from ocpd.proto.envelope import verify_message_signature
from ocpd.proto.errors import Unavailable
from ocpd.proto.schema import validate_envelope

BOB_HTTP = "https://bob.example/ocp/v1/messages"
BOB_HTTP_2 = "https://bob-backup.example:9443/ocp/v1/messages"


@pytest.fixture
def clock() -> MockClock:
    return MockClock(autojump_threshold=0.05)


@attrs.define
class ScriptedPoster:
    """Answers per URL from a script (the last answer repeats); records every call."""

    script: dict[str, list[Posted]]
    calls: list[tuple[float, str, bytes, dict[str, str]]] = attrs.Factory(list)

    async def post(self, url: str, body: bytes, headers: Any) -> Posted:
        self.calls.append((trio.current_time(), url, body, dict(headers)))
        answers = self.script.get(url, [Posted("unreachable", "ConnectError")])
        return answers.pop(0) if len(answers) > 1 else answers[0]

    def urls(self) -> list[str]:
        return [url for _, url, _, _ in self.calls]


DELIVERED = Posted("delivered", "HTTP 202")
DOWN = Posted("unreachable", "ConnectError")
GONE = Posted("refused", "HTTP 404 OCP-404", "OCP-404")


def _http(url: str, priority: int = 1) -> dict[str, Any]:
    return {"transport": "ocp-http", "url": url, "priority": priority}


@asynccontextmanager
async def _alice_and_bob(
    tmp_path: Path, poster: ScriptedPoster, alice: Agent, bob: Agent
) -> AsyncIterator[Node]:
    """A node that knows alice, and bob with an ``ocp-http`` endpoint elsewhere."""
    async with running_node(tmp_path, poster=poster) as node:
        node.directory.add(alice)
        node.directory.add(bob, endpoints=[_http(BOB_HTTP)])
        yield node


def _deliveries(node: Node, outcome: str) -> float:
    """The ``ocp_deliveries_total`` count of one outcome."""
    return float(node.metrics.deliveries.labels(outcome)._value.get())


async def _send(node: Any, sender: Agent, receiver: str, **kwargs: Any) -> bytes:
    now = node.clock.now()
    body = message(sender, receiver, clock_now=now, **kwargs)
    answer = await post(node.http, body, headers=message_headers(sender, body, now))
    assert answer.status == 202, answer.body
    return body


async def _rows(store: MessageStore) -> list[tuple[int, str, str]]:
    return await store.database.read(
        lambda conn: [
            (int(seq), str(receiver), str(state))
            for seq, receiver, state in conn.execute(
                "SELECT seq, receiver, state FROM deliveries ORDER BY seq"
            )
        ]
    )


async def _until(predicate: Any) -> None:
    """Poll ``predicate`` on trio's (autojumping) clock, at most two minutes of it."""
    with trio.fail_after(120):
        while not predicate():  # noqa: ASYNC110 - state lives in counters and tables
            await trio.sleep(0.25)


# --- which receivers are served here ---------------------------------------------------------


def test_endpoint_keys_ignore_spelling() -> None:
    assert endpoint_key("HTTPS://Node.Test/ocp/v1/messages/") == endpoint_key(
        "https://node.test:443/ocp/v1/messages"
    )
    assert endpoint_key("https://node.test:8420/x") != endpoint_key("https://node.test:8421/x")
    assert endpoint_key("wss://node.test/ocp/v1/ws") != endpoint_key("https://node.test/ocp/v1/ws")


def test_only_https_or_loopback_http_endpoints_are_delivered_to() -> None:
    assert deliverable(_http("https://b.example/ocp/v1/messages")) is not None
    assert deliverable(_http("http://127.0.0.1:8420/ocp/v1/messages")) is not None
    assert deliverable(_http("http://localhost:8420/ocp/v1/messages")) is not None
    assert deliverable(_http("http://b.example/ocp/v1/messages")) is None
    assert deliverable({"transport": "ocp-ws", "url": "wss://b.example/ocp/v1/ws"}) is None
    assert deliverable({"transport": "ocp-http", "url": 7}) is None


async def test_placement_follows_the_receivers_record(
    tmp_path: Path, clock: MockClock, alice: Agent, bob: Agent, carol: Agent
) -> None:
    poster = ScriptedPoster({})
    async with running_node(tmp_path, poster=poster) as node:
        assert node.forwarder is not None
        # names this node (another spelling of its public URL): served here
        here = node.directory.add(
            alice, endpoints=[_http("HTTPS://NODE.test:8420/ocp/v1/messages/")]
        )
        # an ocp-http endpoint elsewhere: handed on
        there = node.directory.add(bob, endpoints=[_http(BOB_HTTP)])
        # only a WebSocket endpoint elsewhere: nothing to POST to, kept here
        ws_only = node.directory.add(
            carol, endpoints=[{"transport": "ocp-ws", "url": "wss://c.example/ws", "priority": 1}]
        )
        assert node.router.placement(here) == "local"
        assert node.router.placement(there) == "remote"
        assert node.router.placement(ws_only) == "local"
        # once bob authenticated here, he is local whatever his record says
        await node.store.touch_local_agent(bob.id, now=node.clock.now())
        node.router.local.add(bob.id)
        assert node.router.placement(there) == "local"


# --- handing on --------------------------------------------------------------------------------


async def test_the_original_bytes_go_to_the_endpoint_signed_by_the_service_agent(
    tmp_path: Path, clock: MockClock, alice: Agent, bob: Agent
) -> None:
    poster = ScriptedPoster({BOB_HTTP: [DELIVERED]})
    async with _alice_and_bob(tmp_path, poster, alice, bob) as node:
        body = await _send(node, alice, bob.id)
        await _until(lambda: len(poster.calls) == 1)
        _, url, sent, headers = poster.calls[0]
        assert url == BOB_HTTP
        assert sent == body
        assert headers["X-OCF-Version"] == "1.0"
        verify_authorization(
            headers["Authorization"],
            method="POST",
            path_and_query="/ocp/v1/messages",
            body=body,
            public_keys=[NODE_KEY.public_key],
            now=node.clock.now(),
            replay=ReplayWindow(window=60),
            window=60,
            expected_agent_id=SERVICE_AGENT,
        )
        await _until(lambda: _deliveries(node, "forwarded") == 1)
        assert await _rows(node.store) == []


async def test_endpoints_are_tried_in_priority_order(
    tmp_path: Path, clock: MockClock, alice: Agent, bob: Agent
) -> None:
    poster = ScriptedPoster({BOB_HTTP: [DOWN], BOB_HTTP_2: [DELIVERED]})
    async with running_node(tmp_path, poster=poster) as node:
        node.directory.add(alice)
        node.directory.add(bob, endpoints=[_http(BOB_HTTP_2, 2), _http(BOB_HTTP, 1)])
        start = trio.current_time()
        await _send(node, alice, bob.id)
        await _until(lambda: len(poster.calls) == 2)
        assert poster.urls() == [BOB_HTTP, BOB_HTTP_2]
        # both in the first round: no backoff before the second endpoint
        assert poster.calls[1][0] - start < 0.5
        await _until(lambda: not node.forwarder or node.forwarder.waiting() == 0)
        assert await _rows(node.store) == []


async def test_retries_follow_the_schedule_then_the_sender_gets_ocp_502(
    tmp_path: Path, clock: MockClock, alice: Agent, bob: Agent
) -> None:
    poster = ScriptedPoster({BOB_HTTP: [DOWN]})
    async with _alice_and_bob(tmp_path, poster, alice, bob) as node:
        start = trio.current_time()
        body = await _send(node, alice, bob.id)
        message_id = json.loads(body)["message_id"]
        await _until(lambda: _deliveries(node, "failed") == 1)
        times = [round(at - start) for at, *_ in poster.calls]
        # the first try, then one after each wait of 1, 2, 4, 8, 16 s
        expected = [0]
        for wait in BACKOFF:
            expected.append(expected[-1] + int(wait))
        assert times == expected == [0, 1, 3, 7, 15, 31]
        # the message's row is gone; in its place, one error for alice
        rows = await _rows(node.store)
        assert [(r, s) for _, r, s in rows] == [(alice.id, "local")]
        pending = await node.store.pending(alice.id, after=0)
        error = json.loads(pending[0].raw)
        validate_envelope(error)
        verify_message_signature(error, [NODE_KEY.public_key])
        assert error["sender"]["agent_id"] == SERVICE_AGENT
        assert error["receiver"]["agent_id"] == alice.id
        assert error["message_type"] == "error"
        assert error["payload"]["error_code"] == "OCP-502"
        assert error["payload"]["reference_message_id"] == message_id
        assert error["payload"]["details"]["receiver"] == bob.id
        assert error["metadata"]["correlation_id"] == message_id


async def test_a_refusal_from_every_endpoint_fails_at_once(
    tmp_path: Path, clock: MockClock, alice: Agent, bob: Agent
) -> None:
    poster = ScriptedPoster({BOB_HTTP: [GONE]})
    async with _alice_and_bob(tmp_path, poster, alice, bob) as node:
        start = trio.current_time()
        await _send(node, alice, bob.id)
        await _until(lambda: _deliveries(node, "failed") == 1)
        assert trio.current_time() - start < 0.5
        assert len(poster.calls) == 1
        error = json.loads((await node.store.pending(alice.id, after=0))[0].raw)
        assert error["payload"]["details"]["remote_error_code"] == "OCP-404"


async def test_one_receivers_messages_keep_their_order_through_retries(
    tmp_path: Path, clock: MockClock, alice: Agent, bob: Agent
) -> None:
    poster = ScriptedPoster({BOB_HTTP: [DOWN, DOWN, DELIVERED]})
    async with _alice_and_bob(tmp_path, poster, alice, bob) as node:
        bodies = [await _send(node, alice, bob.id) for _ in range(3)]
        await _until(lambda: len(poster.calls) == 5)
        sent = [body for *_, body, _ in poster.calls]
        assert sent == [bodies[0], bodies[0], bodies[0], bodies[1], bodies[2]]
        await _until(lambda: _deliveries(node, "forwarded") == 3)
        assert _deliveries(node, "failed") == 0


async def test_an_unreachable_receiver_fails_everything_queued_for_it(
    tmp_path: Path, clock: MockClock, alice: Agent, bob: Agent, carol: Agent
) -> None:
    poster = ScriptedPoster({BOB_HTTP: [DOWN], "https://carol.example/m": [DELIVERED]})
    async with _alice_and_bob(tmp_path, poster, alice, bob) as node:
        node.directory.add(carol, endpoints=[_http("https://carol.example/m")])
        for _ in range(3):
            await _send(node, alice, bob.id)
        # another receiver is not held up by bob's endpoint
        await _send(node, alice, carol.id)
        await _until(lambda: _deliveries(node, "forwarded") == 1)
        assert trio.current_time() < 1
        await _until(lambda: _deliveries(node, "failed") == 3)
        # six rounds for the first message only; the others failed with it
        assert poster.urls().count(BOB_HTTP) == 6
        errors = [json.loads(p.raw) for p in await node.store.pending(alice.id, after=0)]
        assert [e["payload"]["error_code"] for e in errors] == ["OCP-502"] * 3


async def test_no_error_about_an_undeliverable_error(
    tmp_path: Path, clock: MockClock, alice: Agent, bob: Agent
) -> None:
    poster = ScriptedPoster({BOB_HTTP: [GONE]})
    async with _alice_and_bob(tmp_path, poster, alice, bob) as node:
        payload = {"error_code": "OCP-400", "message": "bad"}
        await _send(node, alice, bob.id, message_type="error", payload=payload)
        await _until(lambda: _deliveries(node, "failed") == 1)
        assert await _rows(node.store) == []


async def test_rows_left_by_a_previous_run_are_handed_on_after_a_restart(
    tmp_path: Path, clock: MockClock, alice: Agent, bob: Agent
) -> None:
    down = ScriptedPoster({BOB_HTTP: [DOWN]})
    async with _alice_and_bob(tmp_path, down, alice, bob) as node:
        body = await _send(node, alice, bob.id)
        await _until(lambda: len(down.calls) >= 2)
    up = ScriptedPoster({BOB_HTTP: [DELIVERED]})
    async with _alice_and_bob(tmp_path, up, alice, bob) as node:
        await _until(lambda: len(up.calls) == 1)
        assert up.calls[0][2] == body
        await _until(lambda: _deliveries(node, "forwarded") == 1)
        assert await _rows(node.store) == []


async def test_a_receiver_that_connects_here_meanwhile_gets_the_row_once(
    tmp_path: Path, clock: MockClock, alice: Agent, bob: Agent
) -> None:
    poster = ScriptedPoster({BOB_HTTP: [DOWN]})
    async with _alice_and_bob(tmp_path, poster, alice, bob) as node:
        await _send(node, alice, bob.id)
        await _until(lambda: len(poster.calls) == 1)
        # bob's row is delivered here (a session drops it) before the next round
        rows = await _rows(node.store)
        await node.store.delivered([rows[0][0]])
        await trio.sleep(40)
        assert len(poster.calls) == 1  # the next round finds the row gone and stops
        assert _deliveries(node, "failed") == 0
        assert await node.store.pending(alice.id, after=0) == []


# --- accepting handed-on messages ---------------------------------------------------------------


async def test_a_node_hands_on_for_a_relay_to_an_agent_it_serves(
    tmp_path: Path, clock: MockClock, alice: Agent, bob: Agent, carol: Agent
) -> None:
    relay = Agent(40)
    plain = Agent(41)
    async with running_node(tmp_path, poster=ScriptedPoster({})) as node:
        node.directory.add(alice, endpoints=[_http("https://a.example/m")])
        node.directory.add(bob, endpoints=[_http(OWN_URLS[0])])
        node.directory.add(carol, endpoints=[_http("https://c.example/m")])
        node.directory.add(relay, endpoints=[_http("https://relay.example/m")], relay=True)
        node.directory.add(plain)
        now = node.clock.now()

        async def hand_on(by: Agent, to: str) -> Any:
            body = message(alice, to, clock_now=now)
            return await post(node.http, body, headers=message_headers(by, body, now))

        answer = await hand_on(relay, bob.id)
        assert answer.status == 202
        assert [r for _, r, _ in await _rows(node.store)] == [bob.id]
        # an agent that does not declare cap:ocp:relay cannot hand on
        refused = await hand_on(plain, bob.id)
        assert refused.status == 401
        assert refused.json()["payload"]["error_code"] == "OCP-401"
        # one hop only: not for an agent served elsewhere
        elsewhere = await hand_on(relay, carol.id)
        assert elsewhere.status == 404
        # a signature by the relay over other bytes is still a bad signature
        body = message(alice, bob.id, clock_now=now)
        forged = await post(
            node.http,
            body,
            headers=message_headers(relay, body + b" ", now),
        )
        assert forged.status == 401


async def test_the_service_registration_is_a_valid_level_1_record() -> None:
    raw, header = service_registration(
        NODE_KEY, network="testnet", node_id="z6MkNode", urls=OWN_URLS, now=1_800_000_000.0
    )
    body = json.loads(raw)
    record, document = verify_registration(body, now=1_800_000_000.0, clock_skew=60)
    assert record["agent_id"] == document.agent_id
    assert record["domains"] == ["ocp.node"]
    assert [c["id"] for c in record["capabilities"]] == ["cap:ocp:relay"]
    assert [e["url"] for e in record["endpoints"]] == list(OWN_URLS)
    verify_authorization(
        header,
        method="POST",
        path_and_query=REGISTER_PATH,
        body=raw,
        public_keys=[NODE_KEY.public_key],
        now=1_800_000_000.0,
        replay=ReplayWindow(window=60),
        window=60,
        expected_agent_id=record["agent_id"],
    )


@attrs.define
class FlakyRegistry:
    """Refuses the first ``failures`` registrations with OCP-503; records when each came."""

    failures: int
    at: list[float] = attrs.Factory(list)

    async def register(self, raw: bytes, *, authorization: str, path: str) -> None:
        self.at.append(trio.current_time())
        assert path == REGISTER_PATH
        if len(self.at) <= self.failures:
            raise Unavailable("the registry cannot be reached")


async def test_the_service_agent_is_registered_retried_and_renewed(clock: MockClock) -> None:
    registry = FlakyRegistry(failures=2)
    presence = ServiceRegistration(
        directory=registry,  # type: ignore[arg-type]
        key=NODE_KEY,
        network="testnet",
        node_id="z6MkNode",
        clock=TrioWallClock(),
    )
    async with trio.open_nursery() as nursery:
        await nursery.start(presence.run)
        await trio.sleep(10)
        assert registry.at == []  # nothing before the node knows where it is
        presence.set_urls(OWN_URLS)
        await presence.registered.wait()
        start = registry.at[0]
        # refused twice: again after 5 s, then 10 s
        assert [round(t - start) for t in registry.at] == [0, 5, 15]
        await trio.sleep(1801)  # renewed at half the record's ttl of 1 hour
        assert [round(t - start) for t in registry.at] == [0, 5, 15, 1815]
        nursery.cancel_scope.cancel()


# --- over a peer session --------------------------------------------------------------------


@attrs.define
class ScriptedPeers:
    """A session with ``node``: takes at most ``room`` messages per call, answers from
    ``answers`` by message id (delivered otherwise); records every call."""

    node: str
    room: int = 1000
    answers: dict[str, list[Posted]] = attrs.Factory(dict)
    calls: list[list[str]] = attrs.Factory(list)

    def host_of(self, urls: Any) -> str | None:
        return self.node if BOB_HTTP in list(urls) else None

    def connected(self, node_id: str) -> bool:
        return node_id == self.node

    async def wait_connected(self, node_id: str) -> None:
        await trio.sleep_forever()

    async def hand_on(self, node_id: str, items: Any) -> list[Posted]:
        taken = list(items)[: self.room]
        self.calls.append([message_id for _, message_id in taken])
        await trio.sleep(0.1)
        out = []
        for _, message_id in taken:
            answers = self.answers.get(message_id, [DELIVERED])
            out.append(answers.pop(0) if len(answers) > 1 else answers[0])
        return out


async def test_a_receivers_backlog_crosses_a_peer_session_in_bursts(
    tmp_path: Path, clock: MockClock, alice: Agent, bob: Agent
) -> None:
    poster = ScriptedPoster({BOB_HTTP: [DOWN]})
    peers = ScriptedPeers("node:b", room=40)
    async with _alice_and_bob(tmp_path, poster, alice, bob) as node:
        assert node.forwarder is not None
        node.forwarder.peers = peers
        # one write for all 100: a backlog for bob
        bodies = [message(alice, bob.id, clock_now=node.clock.now()) for _ in range(100)]
        ids = [json.loads(b)["message_id"] for b in bodies]
        await node.intake.commit([await node.intake.check(b, Attempt("http", 0)) for b in bodies])
        await _until(lambda: _deliveries(node, "forwarded") == 100)
        sent = [m for call in peers.calls for m in call]
        assert sent == ids  # in order, each once
        assert max(len(call) for call in peers.calls) == 40  # the session's room
        assert poster.calls == []
        assert await _rows(node.store) == []


async def test_a_burst_settles_what_it_can_and_retries_the_rest_in_order(
    tmp_path: Path, clock: MockClock, alice: Agent, bob: Agent
) -> None:
    poster = ScriptedPoster({BOB_HTTP: [DOWN]})
    peers = ScriptedPeers("node:b")
    async with _alice_and_bob(tmp_path, poster, alice, bob) as node:
        assert node.forwarder is not None
        node.forwarder.peers = peers
        bodies = [message(alice, bob.id, clock_now=node.clock.now()) for _ in range(6)]
        ids = [json.loads(b)["message_id"] for b in bodies]
        lost = Posted("unreachable", "no receipt in time")
        peers.answers = {ids[2]: [lost, DELIVERED], ids[4]: [GONE]}
        checked = [await node.intake.check(b, Attempt("http", 0)) for b in bodies]
        await node.intake.commit(checked)
        await _until(lambda: _deliveries(node, "forwarded") == 5)
        # one burst; then the row without a receipt alone, after its backoff
        assert peers.calls[0] == ids
        assert peers.calls[1:] == [[ids[2]]]
        assert _deliveries(node, "failed") == 1  # the refused one: its sender is told
        errors = [json.loads(p.raw) for p in await node.store.pending(alice.id, after=0)]
        assert [e["payload"]["error_code"] for e in errors] == ["OCP-502"]
        assert errors[0]["payload"]["details"]["remote_error_code"] == "OCP-404"
        assert [receiver for _, receiver, _ in await _rows(node.store)] == [alice.id]


@attrs.define
class AwayPeers(ScriptedPeers):
    """:class:`ScriptedPeers` whose session with ``node`` is down until :meth:`back`."""

    up: bool = False
    _changed: trio.Event = attrs.Factory(trio.Event)

    def connected(self, node_id: str) -> bool:
        return self.up and node_id == self.node

    async def wait_connected(self, node_id: str) -> None:
        while not self.connected(node_id):
            await self._changed.wait()

    def back(self) -> None:
        self.up = True
        self._changed.set()
        self._changed = trio.Event()


async def test_rows_for_a_peer_that_was_away_leave_as_soon_as_its_session_is_back(
    tmp_path: Path, clock: MockClock, alice: Agent, bob: Agent
) -> None:
    poster = ScriptedPoster({BOB_HTTP: [DOWN]})
    peers = AwayPeers("node:b")
    async with _alice_and_bob(tmp_path, poster, alice, bob) as node:
        assert node.forwarder is not None
        node.forwarder.peers = peers
        start = trio.current_time()
        bodies = [await _send(node, alice, bob.id) for _ in range(3)]
        ids = [json.loads(b)["message_id"] for b in bodies]
        # tried at 0 and after 1 s; the next try would be 2 s later, at 3 s
        await _until(lambda: len(poster.calls) == 2)
        await trio.sleep_until(start + 1.5)
        peers.back()
        back_at = trio.current_time()
        await _until(lambda: _deliveries(node, "forwarded") == 3)
        # not at the end of the pause: at once, in one burst, in order
        assert peers.calls == [ids]
        assert trio.current_time() - back_at < 0.5
        assert len(poster.calls) == 2
        assert await _rows(node.store) == []
