"""Hostile and misbehaving peers against PeerService, on trio's mock clock (NET, D8).

What a peer can send that ocpd must refuse, and how the refusal shows:

* node advertisements over an established session that are forged, expired,
  stale, equal, about another node, or whose node id is not their key
  (FR-004d, FR-018, NFR-009), and the durable cache across a restart
  (FR-004f);
* the per-node limits: handshakes per minute and frames per second (FR-016b);
* replayed and reordered session frames (D8);
* every trace event of FR-020 and every frozen error code of FR-022/FR-023,
  each produced by a scenario that really causes it.

The connection is a memory pipe (:mod:`test_net_peers`); everything above
it is the real service. Times are checked exactly on the autojump clock.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import logging
import re
import ssl
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Iterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import attrs
import pytest
import trio
from trio.testing import MockClock

from conftest import NOW
from ocpd.config import SeedPeer
from ocpd.daemon import _log_identity  # the daemon's start-up trace, as it runs it
from ocpd.identity import load_or_init_identity
from ocpd.net.carrier import CarrierClosed
from ocpd.net.peers import PeerService
from ocpd.net.traces import TRACE_EVENTS, Tracer
from ocpd.proto.crypto import SigningKey, X25519KeyPair
from ocpd.proto.encoding import b64url_encode
from ocpd.proto.errors import NET_ERROR_CLASSES, NetError
from ocpd.proto.ids import format_node_id
from ocpd.proto.netartifacts import (
    build_capability_advertisement,
    build_hello,
    build_node_advertisement,
    build_signal_marker,
    build_signal_marker_envelope,
)
from ocpd.proto.peer import (
    HARD_CODES,
    KEEPALIVE_TIMEOUT,
    PENDING_HELLO_TIMEOUT,
    Initiator,
    NonceMemory,
    PeerSession,
    Responder,
    parse_handshake,
)
from ocpd.proto.signing import sign_net_artifact
from test_net_peers import Net, Node, Pipe, make_node, pipe_pair, seed_of, seeded_pair, until

pytestmark = pytest.mark.usefixtures("restore_logging")

#: FR-020, FR-022 and FR-023 of the networking baseline (NET), quoted.
DOCS = Path(__file__).resolve().parent.parent / "docs" / "networking.md"

FR_020 = (
    "identity load/generation, advertisement publish/fetch/reject, peer "
    "discovered/connect/disconnect, handshake start/accept/reject, session establishment, "
    "capability exchange, keepalive lost/restored, signal-marker sent/received, and "
    "error/occurred"
)
FR_022 = (
    "E_TRANSPORT_UNAVAILABLE, E_TRANSPORT_REJECTED, E_ADV_EXPIRED, E_ADV_STALE_SEQ, "
    "E_SIG_INVALID, E_SIG_UNKNOWN_SIGNER, E_HS_REPLAY, E_HS_UNKNOWN_REF, E_PROTO_VERSION, "
    "E_PROTO_INVALID, and E_PROTO_CAP_MISSING"
)
FR_023 = (
    "transport/unavailable, transport/rejected, advertisement/expired, "
    "advertisement/stale-sequence, signature/invalid, signature/unknown-signer, "
    "handshake/replay-suspected, handshake/unknown-ref, protocol/version-mismatch, "
    "protocol/invalid-contract, or protocol/capability-missing"
)
#: The spec's nouns and verbs as ocpd's event labels spell them.
_SUBJECTS = {"capability": "capabilities"}
_VERBS = {
    "load": "loaded",
    "generation": "generated",
    "publish": "published",
    "fetch": "fetched",
    "reject": "rejected",
    "connect": "connected",
    "disconnect": "disconnected",
    "start": "started",
    "accept": "accepted",
    "establishment": "established",
    "exchange": "exchanged",
}

CALLER = SigningKey(bytes([7]) * 32)
CALLER_ID = format_node_id(CALLER.public_key)
OTHER = SigningKey(bytes([3]) * 32)
OTHER_ID = format_node_id(OTHER.public_key)


@pytest.fixture
def clock() -> MockClock:
    return MockClock(autojump_threshold=0.01)


def _items(text: str) -> list[str]:
    return [item for item in re.split(r",\s*(?:and |or )?", text) if item]


def spec_events() -> set[str]:
    """FR-020's list as event labels: "handshake start/accept" -> handshake/started, ..."""
    events = set()
    for item in _items(FR_020):
        if " " not in item:
            events.add(item)  # already a label: error/occurred
            continue
        subject, verbs = item.split(" ", 1)
        for verb in verbs.split("/"):
            events.add(f"{_SUBJECTS.get(subject, subject)}/{_VERBS.get(verb, verb)}")
    return events


def spec_codes() -> dict[str, str]:
    """FR-022's codes with FR-023's classes (the two lists are in the same order)."""
    codes, classes = _items(FR_022), _items(FR_023)
    assert len(codes) == len(classes) == 11
    return dict(zip(codes, classes, strict=True))


# --- helpers --------------------------------------------------------------------------------


def errors(node: Node, code: str | None = None, peer: str | None = None) -> list[dict[str, Any]]:
    return [
        e for e in node.traces("error/occurred", peer) if code is None or e["error/code"] == code
    ]


async def settled_pair(tmp_path: Path, net: Net) -> tuple[Node, Node]:
    """:func:`seeded_pair`, settled (:func:`settled`) and with b's advertisement held by a."""
    a, b = await seeded_pair(tmp_path, net)
    with trio.fail_after(10):
        await until(lambda: settled(a, b))
        await until(lambda: bool(a.traces("advertisement/fetched", b.node_id)))
    return a, b


def metric(node: Node, name: str, **labels: str) -> float:
    value = node.service.metrics.registry.get_sample_value(name, labels)
    return 0.0 if value is None else value


def timed(node: Node) -> None:
    """Stamp each of ``node``'s trace events with the trio time it was emitted at (``_t``)."""
    service = node.service

    def record(_: str, line: dict[str, object]) -> None:
        node.events.append({**line, "_t": trio.current_time()})

    service.tracer = Tracer(node.node_id, wall=service.clock.now, on_event=record)


def settled(x: Node, y: Node) -> bool:
    """One established session between ``x`` and ``y``, the same at both ends, and no
    handshake under way that could replace it."""
    lx, ly = x.service.sessions.get(y.node_id), y.service.sessions.get(x.node_id)
    return (
        lx is not None
        and ly is not None
        and x.service.connected(y.node_id, "core/messaging")
        and y.service.connected(x.node_id, "core/messaging")
        and lx.session.established.handshake_id == ly.session.established.handshake_id
        and not x.service.dialling
        and not y.service.dialling
        and x.service.pending_inbound == 0
        and y.service.pending_inbound == 0
    )


async def start_service(nursery: trio.Nursery, service: PeerService) -> trio.CancelScope:
    """Run ``service`` until the returned scope is cancelled (a node stopping)."""

    async def run(*, task_status: trio.TaskStatus[trio.CancelScope]) -> None:
        with trio.CancelScope() as scope:
            async with trio.open_nursery() as inner:
                await inner.start(service.run)
                task_status.started(scope)

    scope: trio.CancelScope = await nursery.start(run)
    return scope


def endpoints(*hosts: str) -> list[dict[str, Any]]:
    return [
        {"url": f"wss://{host}/ocp/v1/peer", "transport": "wss", "priority": i + 1}
        for i, host in enumerate(hosts)
    ]


def send_advertisement(sender: Node, receiver: Node, advertisement: dict[str, Any]) -> None:
    """``sender`` puts ``advertisement`` on its session with ``receiver``, as is."""
    live = sender.service.sessions[receiver.node_id]
    live.session.send_advertisement(advertisement, now=sender.service.clock.now())
    live.kick()


async def barrier(sender: Node, receiver: Node) -> None:
    """Returns once ``receiver`` handled everything ``sender`` sent it before (frames are
    handled in order, each to the end, so a signal-marker sent after them comes after)."""
    sent = await sender.service.signal(receiver.node_id, kind="ops/barrier")

    def arrived() -> bool:
        return any(
            e["marker/id"] == sent["marker/id"]
            for e in receiver.traces("signal-marker/received", sender.node_id)
        )

    with trio.fail_after(10):
        await until(arrived)


async def held(node: Node, peer: str) -> dict[str, Any] | None:
    """``peer``'s advertisement in ``node``'s durable cache."""
    return await node.service.cache.current(peer, now=node.service.clock.now())


@attrs.define(eq=False)
class RawPeer:
    """A peer that speaks the protocol by hand: a sans-I/O session over a memory pipe."""

    key: SigningKey
    pipe: Pipe
    session: PeerSession
    now: Callable[[], float]

    async def push(self, frames: Iterable[bytes]) -> None:
        for frame in frames:
            await self.pipe.send(frame)

    async def open(self) -> None:
        """Send our capability advertisement and take the service's."""
        advertisement = build_capability_advertisement(self.key, now=self.now())
        self.session.send_capabilities(advertisement, now=self.now())
        await self.push(self.session.data_to_send())
        data = await self.pipe.receive()
        assert isinstance(data, bytes)
        self.session.receive(data, now=self.now())
        assert self.session.capabilities is not None

    def signal(self, recipient: str, kind: str = "ops/raw") -> dict[str, Any]:
        """A signal-marker envelope by this peer's operator, for ``recipient``."""
        marker = build_signal_marker(self.key, kind=kind, now=self.now())
        return build_signal_marker_envelope(
            self.key,
            marker,
            sender_node_id=format_node_id(self.key.public_key),
            now=self.now(),
            recipient_node_id=recipient,
        )


async def raw_peer(net: Net, target: Node, key: SigningKey = CALLER) -> RawPeer:
    """A hand-driven peer with an established session to ``target`` (it dialled)."""
    service = target.service
    before = service.sessions.get(key_id(key))
    mine, theirs = pipe_pair("raw", target.name)
    net.nursery.start_soon(service.accept, theirs)
    initiator = Initiator(key, now=service.clock.now(), recipient=target.node_id)
    await mine.send(initiator.hello_text())
    ack = parse_handshake(await mine.receive())
    established = initiator.receive_ack(ack, now=service.clock.now())
    with trio.fail_after(10):  # the ack leaves before the session is installed
        await until(lambda: service.sessions.get(key_id(key)) not in (None, before), step=0.01)
    return RawPeer(key, mine, PeerSession(established, now=service.clock.now()), service.clock.now)


async def knock(net: Net, target: Node, hello: object) -> dict[str, Any]:
    """Offer ``target`` one handshake text on a new connection; its answer."""
    mine, theirs = pipe_pair("x", target.name)
    net.nursery.start_soon(target.service.accept, theirs)
    await mine.send(hello if isinstance(hello, str) else json.dumps(hello))
    answer = json.loads(await mine.receive())
    await mine.close()
    assert isinstance(answer, dict)
    return answer


def key_id(key: SigningKey) -> str:
    return format_node_id(key.public_key)


def hello_from(
    key: SigningKey, target: Node, *, skew: float = 0.0, **changes: Any
) -> dict[str, Any]:
    """A hello signed by ``key`` for ``target`` (``skew`` s off its clock), then ``changes``."""
    hello = build_hello(
        key,
        session_public=X25519KeyPair.generate().public_key,
        now=target.service.clock.now() + skew,
        recipient=target.node_id,
    )
    return {**hello, **changes}


class _Lines(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.lines: list[dict[str, Any]] = []

    def emit(self, record: logging.LogRecord) -> None:
        fields = getattr(record, "fields", None)
        if isinstance(fields, dict):
            self.lines.append(dict(fields))


@contextlib.contextmanager
def net_log() -> Iterator[list[dict[str, Any]]]:
    """The trace lines written to the ``ocpd.net`` logger meanwhile."""
    logger = logging.getLogger("ocpd.net")
    handler, level = _Lines(), logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    try:
        yield handler.lines
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)


Scenario = Callable[[Path, Net], Awaitable[list[Node]]]


async def run_scenario(scenario: Scenario, directory: Path) -> list[Node]:
    """Run one scenario with its own nodes and stop them afterwards."""
    await trio.Path(directory).mkdir(exist_ok=True)
    async with trio.open_nursery() as nursery:
        nodes = await scenario(directory, Net(nursery))
        nursery.cancel_scope.cancel()
    return nodes


# --- scenarios ------------------------------------------------------------------------------


async def advertisements_over_a_session(tmp_path: Path, net: Net) -> list[Node]:
    """Adverts from b to a over their session, good and bad, then a restart of a."""
    b = await make_node(tmp_path, net, "b", 2)
    a = await make_node(tmp_path, net, "a", 1, seeds=(seed_of(b),))
    await net.nursery.start(b.service.run)
    a_scope = await start_service(net.nursery, a.service)
    with trio.fail_after(10):
        await until(lambda: settled(a, b))
        await until(lambda: bool(a.traces("advertisement/fetched", b.node_id)))
    first = await held(a, b.node_id)
    assert first is not None and first["sequence/no"] == 1
    live = a.service.sessions[b.node_id]
    # b signs two more of its own (its counter is durable): 2, then 3
    second = await b.service.own.next(endpoints=endpoints("b"), now=b.service.clock.now())
    third = await b.service.own.next(endpoints=endpoints("b"), now=b.service.clock.now())
    assert (second["sequence/no"], third["sequence/no"]) == (2, 3)

    # newer: replaces the one held
    send_advertisement(b, a, third)
    with trio.fail_after(10):
        await until(lambda: len(a.traces("advertisement/fetched", b.node_id)) == 2)
    assert a.traces("advertisement/fetched", b.node_id)[-1]["sequence/no"] == 3
    assert await held(a, b.node_id) == third
    assert metric(a, "ocpd_peer_advertisements_total", outcome="accepted") == 2

    # stale (lower than held): refused as E_ADV_STALE_SEQ, the session goes on
    send_advertisement(b, a, second)
    with trio.fail_after(10):
        await until(lambda: bool(a.traces("advertisement/rejected", b.node_id)))
    [rejected] = a.traces("advertisement/rejected", b.node_id)
    assert rejected["error/code"] == "E_ADV_STALE_SEQ"
    assert rejected["source"] == f"peer:{b.node_id}"
    [stale] = errors(a, "E_ADV_STALE_SEQ", b.node_id)
    assert stale["error/class"] == "advertisement/stale-sequence"
    assert stale["trace/id"] == rejected["trace/id"]
    assert "sequence 2 is not newer than 3" in stale["detail"]
    assert metric(a, "ocpd_peer_advertisements_total", outcome="E_ADV_STALE_SEQ") == 1
    assert await held(a, b.node_id) == third

    # equal sequence, other content (another endpoint): not taken
    twin = build_node_advertisement(
        b.key, sequence=3, endpoints=endpoints("b", "b-twin"), now=b.service.clock.now()
    )
    send_advertisement(b, a, twin)
    await barrier(b, a)
    assert await held(a, b.node_id) == third
    assert len(a.traces("advertisement/fetched", b.node_id)) == 2
    assert all("b-twin" not in url for url in a.service.targets[b.node_id].urls)
    # (over the session it is dropped without a trace: see
    # test_an_equal_sequence_with_other_content_is_rejected_not_ignored; the cache's code:)
    with pytest.raises(NetError) as refused:
        await a.service.cache.offer(twin, now=a.service.clock.now(), source="test")
    assert refused.value.code == "E_ADV_STALE_SEQ"

    # expired: E_ADV_EXPIRED, answered with an error notice; the session goes on
    now = b.service.clock.now()
    expired = build_node_advertisement(
        b.key, sequence=10, endpoints=endpoints("b"), now=now - 7200, lifetime=3600
    )
    send_advertisement(b, a, expired)
    with trio.fail_after(10):
        await until(lambda: bool(errors(a, "E_ADV_EXPIRED")))
    [error] = errors(a, "E_ADV_EXPIRED")
    assert (error["error/class"], error["peer"]) == ("advertisement/expired", b.node_id)
    assert await held(a, b.node_id) == third

    # another node's advertisement over b's session: E_PROTO_INVALID, the session goes on
    foreign = build_node_advertisement(OTHER, sequence=1, endpoints=endpoints("c"), now=now)
    send_advertisement(b, a, foreign)
    with trio.fail_after(10):
        await until(lambda: bool(errors(a, "E_PROTO_INVALID")))
    [error] = errors(a, "E_PROTO_INVALID")
    assert (error["error/class"], error["peer"]) == ("protocol/invalid-contract", b.node_id)
    assert "another node id" in error["detail"]
    assert await held(a, OTHER_ID) is None and OTHER_ID not in a.service.targets

    # none of these is a hard rejection (NFR-009): the same session still carries traffic
    assert not {"E_ADV_STALE_SEQ", "E_ADV_EXPIRED", "E_PROTO_INVALID"} & HARD_CODES
    await barrier(b, a)
    assert a.service.sessions[b.node_id] is live and live.end_reason is None
    assert not a.traces("peer/disconnected", b.node_id)

    # forged (the signature does not cover these endpoints): E_SIG_INVALID ends the session
    forged = {
        **build_node_advertisement(b.key, sequence=20, endpoints=endpoints("b"), now=now),
        "endpoints": endpoints("evil"),
    }
    send_advertisement(b, a, forged)
    with trio.fail_after(10):
        await live.ended.wait()
    assert live.end_reason == "error"
    [error] = errors(a, "E_SIG_INVALID")
    assert (error["error/class"], error["peer"]) == ("signature/invalid", b.node_id)
    assert error["trace/id"] == live.trace_id
    [gone] = a.traces("peer/disconnected", b.node_id)
    assert gone["reason"] == "error" and gone["trace/id"] == live.trace_id
    assert await held(a, b.node_id) == third
    assert "evil" not in a.service.peer_hosts[b.node_id]
    # ... and a comes back with a fresh handshake (FR-016a)
    with trio.fail_after(30):
        await until(lambda: settled(a, b) and a.service.sessions[b.node_id] is not live)
    assert a.traces("keepalive/restored", b.node_id)
    live = a.service.sessions[b.node_id]

    # node id and key/public disagree (c's key claiming b's id): E_SIG_UNKNOWN_SIGNER, hard
    impostor = {
        **build_node_advertisement(OTHER, sequence=21, endpoints=endpoints("b"), now=now),
        "node/id": b.node_id,
    }
    send_advertisement(b, a, impostor)
    with trio.fail_after(10):
        await live.ended.wait()
    [error] = errors(a, "E_SIG_UNKNOWN_SIGNER")
    assert (error["error/class"], error["peer"]) == ("signature/unknown-signer", b.node_id)
    assert error["trace/id"] == live.trace_id
    assert {"E_SIG_INVALID", "E_SIG_UNKNOWN_SIGNER"} <= HARD_CODES
    assert await held(a, b.node_id) == third
    with trio.fail_after(30):
        await until(lambda: settled(a, b) and a.service.sessions[b.node_id] is not live)
    # every refusal above is an advertisement/rejected, counted by its code
    rejected = [e["error/code"] for e in a.traces("advertisement/rejected")]
    assert sorted(rejected) == sorted(
        [
            "E_ADV_STALE_SEQ",
            "E_ADV_STALE_SEQ",
            "E_ADV_EXPIRED",
            "E_PROTO_INVALID",
            "E_SIG_INVALID",
            "E_SIG_UNKNOWN_SIGNER",
        ]
    )

    # a newer valid one replaces it ...
    fourth = await b.service.own.next(endpoints=endpoints("b"), now=b.service.clock.now())
    send_advertisement(b, a, fourth)
    with trio.fail_after(10):
        await until(lambda: len(a.traces("advertisement/fetched", b.node_id)) == 3)
    assert await held(a, b.node_id) == fourth

    # ... and survives a restart on the same database (FR-004f): a new service with no
    # seed peers finds b in its cache, dials it, and still refuses the older one
    a_scope.cancel()
    with trio.fail_after(10):
        await until(lambda: b.node_id not in a.service.sessions)
    again = await make_node(tmp_path, net, "a", 1, database=a.database)
    await start_service(net.nursery, again.service)
    assert await held(again, b.node_id) == fourth
    [found] = again.traces("peer/discovered", b.node_id)
    assert found["source"] == "cache"
    with trio.fail_after(30):
        await until(lambda: settled(again, b))
    send_advertisement(b, again, third)
    with trio.fail_after(10):
        await until(lambda: bool(errors(again, "E_ADV_STALE_SEQ", b.node_id)))
    assert await held(again, b.node_id) == fourth
    return [a, again, b]


async def handshake_limit(tmp_path: Path, net: Net) -> list[Node]:
    """``handshakes_per_minute = 3`` for one node id: a bucket of 3 that refills at one
    per 20 s (ocpd.proto.ratelimit). Beyond it a hello is refused with
    E_TRANSPORT_REJECTED, in an error frame, a handshake/rejected and an error/occurred."""
    a = await make_node(tmp_path, net, "a", 1, handshakes_per_minute=3)
    await net.nursery.start(a.service.run)
    t0 = trio.current_time()

    async def knocks(n: int) -> list[str]:
        answers = [await knock(net, a, hello_from(CALLER, a)) for _ in range(n)]
        return [str(x.get("code", x.get("handshake/mode"))) for x in answers]

    # forged hellos claiming the caller's id spend none of its budget: the limit is taken
    # only once the signature verified
    forged = b64url_encode(bytes(32))
    for _ in range(5):
        answer = await knock(net, a, hello_from(CALLER, a, nonce=forged))
        assert answer["code"] == "E_SIG_INVALID"
    assert await knocks(4) == ["ack", "ack", "ack", "E_TRANSPORT_REJECTED"]
    assert trio.current_time() == t0
    # one token back after 60 / 3 = 20 s, not before
    await trio.sleep_until(t0 + 19.9)
    assert await knocks(1) == ["E_TRANSPORT_REJECTED"]
    await trio.sleep_until(t0 + 20.1)
    assert await knocks(2) == ["ack", "E_TRANSPORT_REJECTED"]
    # a whole window later the whole burst again
    await trio.sleep_until(t0 + 20.1 + 60)
    assert await knocks(4) == ["ack", "ack", "ack", "E_TRANSPORT_REJECTED"]

    rejected = [
        e for e in a.traces("handshake/rejected") if e["error/code"] == "E_TRANSPORT_REJECTED"
    ]
    assert len(rejected) == 4
    assert {(e["peer"], e["direction"]) for e in rejected} == {(CALLER_ID, "inbound")}
    limited = errors(a, "E_TRANSPORT_REJECTED", CALLER_ID)
    assert [e["trace/id"] for e in limited] == [e["trace/id"] for e in rejected]
    assert {e["error/class"] for e in limited} == {"transport/rejected"}
    assert "too many handshakes" in limited[0]["detail"]

    def handshakes(outcome: str) -> float:
        return metric(a, "ocpd_peer_handshakes_total", direction="inbound", outcome=outcome)

    assert handshakes("accepted") == 7
    assert handshakes("E_TRANSPORT_REJECTED") == 4
    assert handshakes("E_SIG_INVALID") == 5
    # another node is not affected by the caller's exhausted budget
    assert (await knock(net, a, hello_from(OTHER, a)))["handshake/mode"] == "ack"
    return [a]


FPS = 10
BURST = 30


async def frame_backpressure(tmp_path: Path, net: Net) -> list[Node]:
    """b sends a a burst of signal-markers; a reads at most 10 frames a second from b."""
    b = await make_node(tmp_path, net, "b", 2)
    a = await make_node(tmp_path, net, "a", 1, seeds=(seed_of(b),), frames_per_second=FPS)
    timed(a)
    await net.nursery.start(b.service.run)
    await net.nursery.start(a.service.run)
    with trio.fail_after(10):
        await until(lambda: settled(a, b))
    live_a, live_b = a.service.sessions[b.node_id], b.service.sessions[a.node_id]
    await trio.sleep(5)  # quiet: a's budget for b is full again; the next ping is > 5 s away
    t0 = trio.current_time()
    sent = [
        (await b.service.signal(a.node_id, kind="ops/burst", body=str(i)))["marker/id"]
        for i in range(BURST)
    ]
    assert trio.current_time() == t0  # b's sending did not wait

    def received() -> list[dict[str, Any]]:
        return [
            e
            for e in a.traces("signal-marker/received", b.node_id)
            if e["signal/kind"] == "ops/burst"
        ]

    with trio.fail_after(30):
        await until(lambda: len(received()) == BURST, step=0.5)
    # none dropped, none reordered
    assert [e["marker/id"] for e in received()] == sent
    times = [e["_t"] for e in received()]
    # one second's worth at once (the reader holds one more token while it waits)...
    burst = sum(1 for t in times if t == t0)
    assert FPS <= burst <= FPS + 1
    # ... then one frame per 1/FPS s, never faster
    later = times[burst - 1 :]
    assert all(b - a >= 1 / FPS - 1e-6 for a, b in itertools.pairwise(later))
    expected = (BURST - burst) / FPS
    assert expected - 1e-6 <= times[-1] - t0 <= expected + 1 / FPS + 1e-6
    # the session lived through it at both ends, without an error
    assert a.service.sessions[b.node_id] is live_a and live_a.end_reason is None
    assert b.service.sessions[a.node_id] is live_b and live_b.end_reason is None
    assert not errors(a) and not errors(b)
    assert not a.traces("keepalive/lost") and not b.traces("keepalive/lost")
    return [a, b]


async def hostile_hellos(tmp_path: Path, net: Net) -> list[Node]:
    """Handshakes that must be refused, each with its code in the error frame and trace."""
    a = await make_node(tmp_path, net, "a", 1)
    await net.nursery.start(a.service.run)
    hello = hello_from(CALLER, a)
    stray, _ = Responder(CALLER, NonceMemory()).receive_hello(
        Initiator(a.key, now=a.service.clock.now()).hello, now=a.service.clock.now()
    )
    cases = [
        (hello, "ack"),
        (hello, "E_HS_REPLAY"),  # the same hello again
        (hello_from(CALLER, a, **{"protocol/version": "2.0"}), "E_PROTO_VERSION"),
        (stray, "E_HS_UNKNOWN_REF"),  # an ack (addressed to a) where a hello is due
        (hello_from(OTHER, a, skew=-30.5), "E_HS_REPLAY"),  # 30.5 s behind
        ({"handshake/mode": "hello"}, "E_PROTO_INVALID"),
        (hello_from(CALLER, a, **{"sender/node-id": OTHER_ID}), "E_SIG_UNKNOWN_SIGNER"),
    ]
    for offered, expected in cases:
        answer = await knock(net, a, offered)
        assert answer.get("code", answer.get("handshake/mode")) == expected, expected
        if expected != "ack":
            assert answer["type"] == "error" and answer["detail"]
    rejected = a.traces("handshake/rejected")
    assert [e["error/code"] for e in rejected] == [code for _, code in cases[1:]]
    assert [(e["error/code"], e["error/class"]) for e in errors(a)] == [
        (code, NET_ERROR_CLASSES[code]) for _, code in cases[1:]
    ]
    return [a]


async def unanswered_dial(tmp_path: Path, net: Net) -> list[Node]:
    """A seed peer that takes the connection and never answers the hello: given up
    after exactly 30 s with E_TRANSPORT_UNAVAILABLE."""
    void_id = format_node_id(SigningKey(bytes([9]) * 32).public_key)
    a = await make_node(tmp_path, net, "a", 1, seeds=(SeedPeer(void_id, "wss://void/ocp/v1/peer"),))
    timed(a)
    heard: list[Pipe] = []

    @asynccontextmanager
    async def connect(
        url: str, context: ssl.SSLContext, *, max_message_bytes: int
    ) -> AsyncIterator[Pipe]:
        assert url == "wss://void/ocp/v1/peer"
        mine, theirs = pipe_pair("a", "void")
        heard.append(theirs)  # nobody answers on this end
        yield mine

    a.service.connect = connect
    await net.nursery.start(a.service.run)
    with trio.fail_after(60):
        await until(lambda: bool(a.traces("handshake/rejected", void_id)), step=1.0)
    started = a.traces("handshake/started", void_id)[0]
    rejected = a.traces("handshake/rejected", void_id)[0]
    assert started["direction"] == rejected["direction"] == "outbound"
    assert rejected["trace/id"] == started["trace/id"]
    assert rejected["_t"] - started["_t"] == PENDING_HELLO_TIMEOUT
    assert rejected["error/code"] == "E_TRANSPORT_UNAVAILABLE"
    error = errors(a, "E_TRANSPORT_UNAVAILABLE", void_id)[0]
    assert error["error/class"] == "transport/unavailable"
    assert error["trace/id"] == started["trace/id"]
    assert "no ack within 30 s" in error["detail"]
    # the hello did go out, and nothing else
    assert parse_handshake(await heard[0].receive())["handshake/mode"] == "hello"
    return [a]


def frame_fault(fault: str) -> Scenario:
    """A raw peer's session frames replayed, reordered, or from its earlier session."""

    async def scenario(tmp_path: Path, net: Net) -> list[Node]:
        a = await make_node(tmp_path, net, "a", 1)
        await net.nursery.start(a.service.run)
        peer = await raw_peer(net, a)
        await peer.open()
        live = a.service.sessions[CALLER_ID]
        envelopes = [peer.signal(a.node_id), peer.signal(a.node_id)]
        for envelope in envelopes:
            peer.session.send_signal(envelope, now=peer.now())
        first, second = peer.session.data_to_send()
        if fault == "replayed":
            frames = [first, first]
        elif fault == "reordered":
            frames = [second, first]
        else:
            # the peer dials again: the new session replaces the old one, and a frame
            # sealed for the old one is offered on the new one
            peer = await raw_peer(net, a)
            await peer.open()
            with trio.fail_after(10):
                await live.ended.wait()
            assert live.end_reason == "superseded"
            live = a.service.sessions[CALLER_ID]
            frames = [first]
        await peer.push(frames)
        with trio.fail_after(10):
            await live.ended.wait()
        assert live.end_reason == "error"
        [error] = errors(a, "E_SIG_INVALID", CALLER_ID)
        assert error["error/class"] == "signature/invalid"
        assert error["trace/id"] == live.trace_id
        assert "replayed or out of order" in error["detail"]
        gone = [e for e in a.traces("peer/disconnected") if e["trace/id"] == live.trace_id]
        assert [e["reason"] for e in gone] == ["error"]
        assert [e["trace/id"] for e in a.traces("keepalive/lost", CALLER_ID)][-1] == (live.trace_id)
        # the frame that opened was handled once; nothing after the bad one
        marker_ids = [e["marker/id"] for e in a.traces("signal-marker/received", CALLER_ID)]
        first_marker = envelopes[0]["marker"]["marker/id"]
        assert marker_ids == ([first_marker] if fault == "replayed" else [])
        # a closed the connection
        with trio.fail_after(10), pytest.raises(CarrierClosed):  # noqa: PT012
            while True:
                await peer.pipe.receive()
        return [a]

    scenario.__name__ = f"frame_{fault.replace('-', '_')}"
    return scenario


async def capability_advertisement_without_core_messaging(tmp_path: Path, net: Net) -> list[Node]:
    """A peer whose signed capability advertisement lists no core/messaging (FR-014b)."""
    a = await make_node(tmp_path, net, "a", 1)
    await net.nursery.start(a.service.run)
    peer = await raw_peer(net, a)
    live = a.service.sessions[CALLER_ID]
    without = sign_net_artifact(
        "capability-advertisement.v1",
        {
            **build_capability_advertisement(CALLER, now=peer.now()),
            "capabilities/core": ["ocp/relay"],
        },
        CALLER,
    )
    peer.session.send_capabilities(without, now=peer.now())
    await peer.push(peer.session.data_to_send())
    with trio.fail_after(10):
        await live.ended.wait()
    assert live.end_reason == "error"
    assert not a.traces("capabilities/exchanged", CALLER_ID)
    return [a]


class _FixedClock:
    def now(self) -> float:
        return NOW


def identity_events(directory: Path) -> list[dict[str, Any]]:
    """What the daemon traces about its identity on its first start and on the next."""
    with net_log() as lines:
        for _ in range(2):
            identity, created = load_or_init_identity(directory, now=NOW)
            _log_identity(identity, created, "testnet", _FixedClock())
    return lines


# --- the tests ------------------------------------------------------------------------------


async def test_advertisements_over_a_session_are_checked_kept_and_survive_a_restart(
    tmp_path: Path, clock: MockClock
) -> None:
    await run_scenario(advertisements_over_a_session, tmp_path)


async def test_handshakes_beyond_the_per_node_limit_are_refused_until_tokens_return(
    tmp_path: Path, clock: MockClock
) -> None:
    await run_scenario(handshake_limit, tmp_path)


async def test_frames_beyond_the_per_node_limit_wait_and_are_not_dropped(
    tmp_path: Path, clock: MockClock
) -> None:
    await run_scenario(frame_backpressure, tmp_path)


async def test_bad_handshakes_are_refused_with_their_frozen_codes(
    tmp_path: Path, clock: MockClock
) -> None:
    await run_scenario(hostile_hellos, tmp_path)


async def test_an_unanswered_hello_is_given_up_after_30_s(tmp_path: Path, clock: MockClock) -> None:
    await run_scenario(unanswered_dial, tmp_path)


@pytest.mark.parametrize("fault", ["replayed", "reordered", "from-an-earlier-session"])
async def test_a_replayed_or_reordered_frame_ends_the_session(
    tmp_path: Path, clock: MockClock, fault: str
) -> None:
    await run_scenario(frame_fault(fault), tmp_path)


async def test_a_capability_advertisement_without_core_messaging_is_capability_missing(
    tmp_path: Path, clock: MockClock
) -> None:
    [a] = await run_scenario(capability_advertisement_without_core_messaging, tmp_path)
    [error] = errors(a, peer=CALLER_ID)
    assert (error["error/code"], error["error/class"]) == (
        "E_PROTO_CAP_MISSING",
        "protocol/capability-missing",
    )


async def test_a_session_lost_to_silence_is_traced_as_an_error(
    tmp_path: Path, clock: MockClock
) -> None:
    async with trio.open_nursery() as nursery:
        net = Net(nursery)
        a, b = await settled_pair(tmp_path, net)
        live = a.service.sessions[b.node_id]
        for pipes in net.pipes:
            if live.carrier in pipes:
                for pipe in pipes:
                    pipe.mute = True
        with trio.fail_after(KEEPALIVE_TIMEOUT + 15):
            await live.ended.wait()
        assert live.end_reason == "keepalive"
        assert [e["trace/id"] for e in a.traces("keepalive/lost", b.node_id)] == [live.trace_id]
        errors_now = errors(a, "E_TRANSPORT_UNAVAILABLE", b.node_id)
        assert [(e["trace/id"], e["error/class"]) for e in errors_now] == [
            (live.trace_id, "transport/unavailable")
        ]
        nursery.cancel_scope.cancel()


def _bad_advertisement(kind: str, key: SigningKey, now: float) -> dict[str, Any]:
    if kind == "expired":
        return build_node_advertisement(
            key, sequence=9, endpoints=endpoints("b"), now=now - 7200, lifetime=3600
        )
    if kind == "forged":
        good = build_node_advertisement(key, sequence=9, endpoints=endpoints("b"), now=now)
        return {**good, "endpoints": endpoints("evil")}
    return build_node_advertisement(OTHER, sequence=9, endpoints=endpoints("c"), now=now)


@pytest.mark.parametrize(
    ("kind", "code"),
    [("expired", "E_ADV_EXPIRED"), ("forged", "E_SIG_INVALID"), ("foreign", "E_PROTO_INVALID")],
)
async def test_an_advertisement_refused_in_session_is_traced_and_counted_as_rejected(
    tmp_path: Path, clock: MockClock, kind: str, code: str
) -> None:
    async with trio.open_nursery() as nursery:
        net = Net(nursery)
        a, b = await settled_pair(tmp_path, net)
        send_advertisement(b, a, _bad_advertisement(kind, b.key, b.service.clock.now()))
        with trio.fail_after(10):
            await until(lambda: bool(errors(a, code)))
        rejected = [e for e in a.traces("advertisement/rejected") if e["error/code"] == code]
        assert len(rejected) == 1
        assert rejected[0]["source"] == f"peer:{b.node_id}"
        assert metric(a, "ocpd_peer_advertisements_total", outcome=code) == 1
        nursery.cancel_scope.cancel()


async def test_an_equal_sequence_with_other_content_is_rejected_not_ignored(
    tmp_path: Path, clock: MockClock
) -> None:
    async with trio.open_nursery() as nursery:
        net = Net(nursery)
        a, b = await settled_pair(tmp_path, net)
        first = await held(a, b.node_id)
        assert first is not None
        # the held one again, as every new session and every publish sends it: silence
        send_advertisement(b, a, first)
        await barrier(b, a)
        assert not a.traces("advertisement/rejected") and not errors(a)
        # the same number on other content: a rejection like any stale one
        twin = build_node_advertisement(
            b.key, sequence=1, endpoints=endpoints("b", "b-twin"), now=b.service.clock.now()
        )
        send_advertisement(b, a, twin)
        await barrier(b, a)
        assert await held(a, b.node_id) == first
        [rejected] = a.traces("advertisement/rejected", b.node_id)
        assert rejected["error/code"] == "E_ADV_STALE_SEQ"
        assert metric(a, "ocpd_peer_advertisements_total", outcome="E_ADV_STALE_SEQ") == 1
        nursery.cancel_scope.cancel()


def test_identity_is_traced_as_generated_then_loaded(tmp_path: Path) -> None:
    generated, loaded = identity_events(tmp_path)
    assert generated["event/type"] == "identity/generated"
    assert loaded["event/type"] == "identity/loaded"
    assert generated["node/self"] == loaded["node/self"]
    assert generated["participant/id"] == loaded["participant/id"]


def test_the_spec_ocpd_and_the_docs_agree_on_events_and_codes() -> None:
    assert spec_events() == set(TRACE_EVENTS)
    assert len(TRACE_EVENTS) == len(set(TRACE_EVENTS)) == 18
    assert spec_codes() == NET_ERROR_CLASSES
    docs = DOCS.read_text(encoding="utf-8")
    documented = dict(re.findall(r"^\| `(E_[A-Z_]+)` \| ([a-z/-]+) \|", docs, re.MULTILINE))
    assert documented == NET_ERROR_CLASSES
    table = docs.split("| event | when |", 1)[1].split("\n\n", 1)[0]
    first_cells = [row.split("|")[1] for row in table.splitlines() if row.startswith("| `")]
    documented_events = {name for cell in first_cells for name in re.findall(r"`([^`]+)`", cell)}
    assert documented_events == set(TRACE_EVENTS)


async def test_every_trace_event_and_every_frozen_error_code_is_produced(
    tmp_path: Path, clock: MockClock
) -> None:
    """Each FR-020 event and each FR-022 code (with its FR-023 class) comes out of some
    scenario that really causes it: hostile peers, limits, silence, a restart."""
    events = identity_events(tmp_path / "identity")
    scenarios: list[Scenario] = [
        advertisements_over_a_session,
        handshake_limit,
        frame_backpressure,
        hostile_hellos,
        unanswered_dial,
        frame_fault("replayed"),
        capability_advertisement_without_core_messaging,
    ]
    for scenario in scenarios:
        for node in await run_scenario(scenario, tmp_path / scenario.__name__):
            events.extend(node.events)
    # FR-021: the members every event carries
    for event in events:
        assert {"trace/id", "event/type", "ts", "node/self"} <= event.keys(), event
    assert {e["event/type"] for e in events} == set(TRACE_EVENTS)
    produced = {
        (e["error/code"], e["error/class"])
        for e in events
        # not the test's own connector failing to find a host
        if e["event/type"] == "error/occurred" and not e["detail"].startswith("cannot reach ")
    }
    assert {(code, cls) for code, cls in produced if NET_ERROR_CLASSES[code] != cls} == set()
    assert {code for code, _ in produced} == set(NET_ERROR_CLASSES)
