"""Peer sessions at run time: accepting, dialling, keeping and using them (NET, D8).

Theory of operation
-------------------
:class:`PeerService` drives the sans-I/O protocol of :mod:`ocpd.proto.peer`
over real connections. It owns

* **the session table**: at most one established session per peer node id
  (:attr:`PeerService.sessions`);
* **the responder**: ``/ocp/v1/peer`` on the node's WebSocket port
  (:meth:`PeerService.install`). A connection must offer the subprotocol
  ``ocp.peer.v1`` and send its hello within 30 s. At most
  ``peering.max_pending_handshakes`` connections may be waiting for their
  hello at once; beyond that a new one is closed at once (1013). A hello's
  nonce is written to the database before the ack leaves, so a hello
  replayed after a restart is refused too;
* **a dialler per wanted peer**: seed peers from the configuration, nodes
  whose advertisement is in the durable cache (so a restarted node
  reconnects without asking anyone), nodes learnt from seed directories and
  from peers. A dialler tries the peer's endpoints in order (a configured
  seed address first, then the advertised ``wss`` endpoints by ascending
  ``priority``: NET FR-008a) and, while there is no session, tries again
  after 1, 2, 4 … 60 s, each wait drawn between half and all of that (and
  at least 1 s). A session that ends unexpectedly is retried after about
  1 s with a fresh connection and a full handshake (FR-016a).

Each established session runs three tasks: the **reader** (frames in,
through :meth:`PeerSession.receive`), the **writer** (frames out, in the
order they were sealed) and **keepalive** (a ping after 15 s without
sending, the session lost after 45 s without receiving). The node's
traffic handler (:class:`PeerTraffic`) runs as a fourth task when the
session carries OCP messages.

Two sessions with one peer (both nodes dialled at once, or a peer that
dialled again) are resolved the same way at both ends: a new session
replaces the existing one when both were opened by the same side, or when
the existing one is older than the 30 s a hello may be pending (then the
peer cannot be racing: it dialled because it lost the old one); otherwise
the one opened by the lower node id is kept and the other closed.

Limits per peer node id (FR-016b): handshakes per minute
(``peering.handshakes_per_minute``, beyond it a hello is refused with
``E_TRANSPORT_REJECTED``), frames read per second
(``peering.frames_per_second``: beyond it the reader waits, so the peer's
sending blocks on TCP), inbound OCP messages waiting for the node's checks
(:data:`INBOX`), and outbound messages waiting for their receipts
(:data:`MAX_UNANSWERED`).

Every step is a trace event (:mod:`ocpd.net.traces`); every failure also
``error/occurred`` with its frozen code.
"""

from __future__ import annotations

import json
import logging
import random
from typing import TYPE_CHECKING, Any, Final, Literal, Protocol
from urllib.parse import urlsplit

import attrs
import trio

from ocpd.logs import get_logger, log_event
from ocpd.net.carrier import (
    CLOSE_GOING_AWAY,
    CLOSE_NORMAL,
    CLOSE_POLICY,
    CLOSE_TRY_LATER,
    AsgiCarrier,
    CarrierClosed,
    dial,
)
from ocpd.net.endpoints import endpoint_key
from ocpd.proto.errors import NET_ERROR_CLASSES, NetError, OcpError
from ocpd.proto.netartifacts import (
    CORE_MESSAGING,
    SIGNAL_MARKER_ENVELOPE,
    build_capability_advertisement,
    build_signal_marker,
    build_signal_marker_envelope,
    verify_signal_marker_envelope,
)
from ocpd.proto.peer import (
    ADVERTISEMENT_ARTIFACT,
    NONCE_RETENTION,
    PEER_PATH,
    PEER_SUBPROTOCOL,
    PENDING_HELLO_TIMEOUT,
    AdvertisementReceived,
    CapabilitiesReceived,
    EndpointsReceived,
    Established,
    Initiator,
    MessageReceived,
    NonceMemory,
    PeerErrorReceived,
    PeerSession,
    ReceiptReceived,
    Refused,
    Responder,
    SessionEvent,
    SignalReceived,
    parse_handshake,
)
from ocpd.proto.ratelimit import RateLimiter

if TYPE_CHECKING:
    import ssl
    from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
    from contextlib import AbstractAsyncContextManager

    from quart_trio import QuartTrio

    from ocpd.asgi import ASGIApp, Receive, Scope, Send
    from ocpd.clock import WallClock
    from ocpd.config import PeeringSection
    from ocpd.net.adverts import AdvertisementCache, NonceStore, OwnAdvertisement
    from ocpd.net.carrier import Carrier
    from ocpd.net.traces import Tracer
    from ocpd.proto.crypto import SigningKey
    from ocpd.web import Metrics

__all__ = [
    "CAP_RELAY",
    "Delivery",
    "Live",
    "PeerService",
    "PeerTarget",
    "PeerTraffic",
]

#: The capability of a node that takes OCP messages for its agents over sessions.
CAP_RELAY: Final = "ocp/relay"
#: Inbound OCP messages of one session waiting for the node's checks.
INBOX: Final = 64
#: Outbound OCP messages of one session waiting for their receipts.
MAX_UNANSWERED: Final = 512
#: How long a handed-on message waits for its receipt.
RECEIPT_TIMEOUT: Final = 30.0
#: Redial waits (D8): doubling from 1 s, at most 60 s.
BACKOFF_MIN: Final = 1.0
BACKOFF_MAX: Final = 60.0
#: How often nonces and long-expired advertisements are swept.
HOUSEKEEPING_SECONDS: Final = 60.0
#: Frames queued for a slow peer beyond which broadcasts to it are dropped.
MAX_QUEUED_FRAMES: Final = 4096
#: Bytes a session frame adds to the OCP message it carries (kind byte and tag).
FRAME_OVERHEAD: Final = 1024

EndReason = Literal["closed", "keepalive", "error", "superseded", "duplicate", "stopping"]
#: Endings that mean the peer was lost (traced ``keepalive/lost``, redialled soon).
_LOST: Final = frozenset({"closed", "keepalive", "error"})

log = get_logger("net")


@attrs.frozen
class PeerTarget:
    """Where a wanted peer may be dialled, best first."""

    node_id: str
    urls: tuple[str, ...]
    label: str | None = None


@attrs.frozen
class Delivery:
    """What handing one OCP message on came to (over a session, or a POST)."""

    outcome: Literal["delivered", "refused", "unreachable"]
    #: Status and reason, for logs and the sender's error message.
    detail: str
    #: The error code the other side answered with, when it answered with one.
    code: str | None = None


class Connector(Protocol):
    def __call__(
        self, url: str, context: ssl.SSLContext, *, max_message_bytes: int
    ) -> AbstractAsyncContextManager[Carrier]: ...


class SeedDirectories(Protocol):
    """Seed directories as a client sees them (:class:`ocpd.net.seeds.SeedDirectoryClient`)."""

    async def publish(self, directory: str, advertisement: Mapping[str, Any]) -> None: ...

    async def fetch(self, directory: str, cursor: int) -> tuple[list[Any], int, bool]:
        """Advertisements after ``cursor``: ``(advertisements, next cursor, more)``."""
        ...

    async def aclose(self) -> None: ...


class PeerTraffic(Protocol):
    """The node's side of a session that carries OCP messages."""

    async def serve(self, live: Live, inbox: trio.MemoryReceiveChannel[bytes]) -> None:
        """Take the peer's messages from ``inbox`` and answer each with :meth:`Live.receipt`."""
        ...


#: OCP codes in a receipt that mean "not now" rather than "never".
_TRANSIENT_CODES: Final = frozenset({"OCP-408", "OCP-429", "OCP-503"})


@attrs.define(eq=False)
class _Waiter:
    done: trio.Event = attrs.Factory(trio.Event)
    result: Delivery | None = None


@attrs.define(eq=False)
class Live:
    """One established session and the connection under it."""

    node_id: str
    session: PeerSession
    carrier: Carrier
    initiator: bool
    #: trio time when the session was established (for duplicate resolution).
    opened: float
    #: Wall-clock time of the same, for ``peer list``.
    established_at: float
    address: str
    label: str | None
    trace_id: str
    scope: trio.CancelScope = attrs.Factory(trio.CancelScope)
    ended: trio.Event = attrs.Factory(trio.Event)
    end_reason: EndReason | None = None
    end_detail: str = ""
    wake: trio.Event = attrs.Factory(trio.Event)
    flushing: trio.Lock = attrs.Factory(trio.Lock)
    waiting: dict[str, _Waiter] = attrs.Factory(dict)
    window: trio.Semaphore = attrs.Factory(lambda: trio.Semaphore(MAX_UNANSWERED))
    inbox: trio.MemorySendChannel[bytes] | None = None
    #: Wall-clock time of the last pong (the last keepalive answered).
    last_keepalive: float | None = None

    def kick(self) -> None:
        """Have the writer send whatever the session queued."""
        self.wake.set()

    async def flush(self) -> None:
        async with self.flushing:
            for frame in self.session.data_to_send():
                await self.carrier.send(frame)

    def receipts(self, receipts: Sequence[ReceiptReceived], *, now: float) -> None:
        """Answer several of the peer's messages at once."""
        if self.end_reason is None and receipts:
            self.session.send_receipts(receipts, now=now)
            self.kick()

    def refuse(self, error: NetError, *, now: float) -> None:
        """Tell the peer something it sent was refused (the session goes on)."""
        if self.end_reason is None:
            self.session.send_error(error, now=now)
            self.kick()

    def end(self, reason: EndReason, detail: str = "") -> None:
        if self.end_reason is None:
            self.end_reason = reason
            self.end_detail = detail
        self.scope.cancel()

    def describe(self) -> dict[str, Any]:
        s = self.session
        return {
            "node_id": self.node_id,
            "label": self.label,
            "state": "established" if s.capabilities is not None else "opening",
            "direction": "outbound" if self.initiator else "inbound",
            "address": self.address,
            "established_at": self.established_at,
            "last_keepalive": self.last_keepalive,
            "last_received": s.last_received,
            "capabilities": sorted(s.capabilities or ()),
            "pings_sent": s.pings_sent,
            "pongs_received": s.pongs_received,
            "awaiting_receipts": len(self.waiting),
        }


def backoff(failures: int, rng: random.Random) -> float:
    """The wait before redial number ``failures`` (0 after a lost session), jittered."""
    base = min(BACKOFF_MAX, BACKOFF_MIN * 2.0 ** min(failures, 6))
    return max(BACKOFF_MIN, rng.uniform(base / 2, base))


def _ordered_urls(advertisement: Mapping[str, Any]) -> tuple[str, ...]:
    """FR-008a: drop unsupported transports, then ascending ``priority``."""
    endpoints = [
        e
        for e in advertisement.get("endpoints", ())
        if e.get("transport") == "wss" and str(e.get("url", "")).startswith("wss://")
    ]
    endpoints.sort(key=lambda e: int(e.get("priority", 0)))
    return tuple(str(e["url"]) for e in endpoints)


def _host(url: str) -> str:
    return (urlsplit(url).hostname or "").lower()


def _dumps(value: object) -> str:
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False)


@attrs.define(eq=False)
class PeerService:
    key: SigningKey
    node_id: str
    clock: WallClock
    metrics: Metrics
    tracer: Tracer
    settings: PeeringSection
    cache: AdvertisementCache
    own: OwnAdvertisement
    nonce_store: NonceStore
    tls: ssl.SSLContext
    max_message_bytes: int
    #: This node's peer endpoint and OCP endpoint URLs, once the ports are bound.
    own_peer_url: Callable[[], str | None] = lambda: None
    own_ocp_urls: Callable[[], Sequence[str]] = tuple
    ready: trio.Event = attrs.Factory(trio.Event)
    stopping: trio.Event | None = None
    traffic: PeerTraffic | None = None
    #: Capabilities offered beyond ``core/messaging``.
    offered: tuple[str, ...] = ()
    seeds: SeedDirectories | None = None
    rng: random.Random = attrs.Factory(random.Random)
    #: Opens a connection to a peer endpoint (tests put memory pipes here).
    connect: Connector = dial
    sessions: dict[str, Live] = attrs.Factory(dict)
    targets: dict[str, PeerTarget] = attrs.Factory(dict)
    #: Endpoint key of an OCP URL -> the peer node serving agents there.
    hosted: dict[str, str] = attrs.Factory(dict)
    #: Host names each peer is known to be reachable at (dialled or advertised).
    peer_hosts: dict[str, set[str]] = attrs.Factory(dict)
    dialling: dict[str, str] = attrs.Factory(dict)
    pending_inbound: int = 0
    _nonces: NonceMemory = attrs.Factory(NonceMemory)
    _responder: Responder = attrs.field(init=False)
    _handshakes: RateLimiter = attrs.field(init=False)
    _frames: RateLimiter = attrs.field(init=False)
    _dialers: set[str] = attrs.Factory(set)
    _lost: set[str] = attrs.Factory(set)
    _changed: trio.Event = attrs.Factory(trio.Event)
    _nursery: trio.Nursery | None = None
    _stopped: bool = False

    def __attrs_post_init__(self) -> None:
        self._responder = Responder(self.key, self._nonces, capabilities=self.capabilities)
        self._handshakes = RateLimiter(limit=self.settings.handshakes_per_minute, window=60.0)
        fps = self.settings.frames_per_second
        self._frames = RateLimiter(limit=fps, window=1.0)

    @property
    def capabilities(self) -> tuple[str, ...]:
        return (CORE_MESSAGING, *(c for c in self.offered if c != CORE_MESSAGING))

    # --- running ---------------------------------------------------------------------

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Restore the replay memory, then bootstrap and keep sessions until cancelled."""
        now = self.clock.now()
        self._nonces.restore(await self.nonce_store.load(now=now), now)
        try:
            async with trio.open_nursery() as nursery:
                self._nursery = nursery
                task_status.started()
                nursery.start_soon(self._housekeeping)
                if self.stopping is not None:
                    nursery.start_soon(self._stop_when_told, self.stopping)
                await self.ready.wait()
                nursery.start_soon(self._publish_loop)
                for seed in self.settings.seed_peers:
                    self._discovered(
                        PeerTarget(seed.node_id, (seed.address,), seed.label), source="seed"
                    )
                for advertisement in await self.cache.all_current(now=self.clock.now()):
                    self._discovered_advertisement(advertisement, source="cache")
                for directory in self.settings.seed_directories:
                    nursery.start_soon(self._directory_loop, directory)
        finally:
            self._nursery = None
            with trio.CancelScope(shield=True):
                for live in list(self.sessions.values()):
                    live.end("stopping")
                    await live.carrier.close(CLOSE_GOING_AWAY, "node stopping")
                if self.seeds is not None:
                    await self.seeds.aclose()

    async def _stop_when_told(self, stopping: trio.Event) -> None:
        """The daemon stops: no more dials or sessions; the listeners can drain."""
        await stopping.wait()
        self._stopped = True
        for live in list(self.sessions.values()):
            live.end("stopping")
        if self._nursery is not None:
            self._nursery.cancel_scope.cancel()

    async def _housekeeping(self) -> None:
        while True:
            await trio.sleep(HOUSEKEEPING_SECONDS)
            now = self.clock.now()
            self._nonces.sweep(now)
            await self.nonce_store.sweep(now=now)
            await self.cache.sweep(now=now)
            self._handshakes.prune(trio.current_time())
            self._frames.prune(trio.current_time())

    # --- discovery -----------------------------------------------------------------------

    def _discovered(self, target: PeerTarget, *, source: str) -> None:
        """Remember where a peer may be reached and keep a dialler for it."""
        if target.node_id == self.node_id or not target.urls:
            return
        known = self.targets.get(target.node_id)
        if known is not None:
            # A configured address stays first (a local constraint, FR-008a).
            urls = tuple(dict.fromkeys((*known.urls, *target.urls)))
            if source != "seed":
                seeded = [u for u in known.urls if u not in target.urls]
                urls = tuple(dict.fromkeys((*seeded[:1], *target.urls, *known.urls)))
            target = PeerTarget(target.node_id, urls, known.label or target.label)
        self.targets[target.node_id] = target
        self.peer_hosts.setdefault(target.node_id, set()).update(_host(u) for u in target.urls)
        if known is None:
            self.tracer.emit(
                "peer/discovered",
                peer=target.node_id,
                detail=f"from {source}",
                fields={"source": source, **({"label": target.label} if target.label else {})},
            )
        if (
            self._nursery is not None
            and target.node_id not in self._dialers
            and len(self._dialers) < self.settings.max_sessions
        ):
            self._dialers.add(target.node_id)
            self._nursery.start_soon(self._keep_connected, target.node_id)

    def _discovered_advertisement(self, advertisement: Mapping[str, Any], *, source: str) -> None:
        node_id = str(advertisement["node/id"])
        self._discovered(PeerTarget(node_id, _ordered_urls(advertisement)), source=source)

    async def learn(
        self, advertisement: object, *, source: str, expected_node_id: str | None = None
    ) -> bool:
        """Offer an advertisement to the cache; ``True`` when it was new and taken."""
        now = self.clock.now()
        node_id = advertisement.get("node/id") if isinstance(advertisement, dict) else None
        try:
            offered = await self.cache.offer(
                advertisement, now=now, source=source, expected_node_id=expected_node_id
            )
        except NetError as exc:
            if exc.details.get("held"):
                return False  # the one already held, seen again
            self._advertisement_rejected(
                exc, peer=node_id if isinstance(node_id, str) else None, source=source
            )
            return False
        self.metrics.peer_advertisements.labels("accepted").inc()
        self.tracer.emit(
            "advertisement/fetched",
            peer=offered.node_id,
            fields={"source": source, "sequence/no": offered.sequence},
        )
        self._discovered_advertisement(offered.advertisement, source=source)
        return True

    def _advertisement_rejected(
        self, exc: NetError, *, peer: str | None, source: str, trace_id: str | None = None
    ) -> None:
        self.metrics.peer_advertisements.labels(exc.code).inc()
        trace = self.tracer.emit(
            "advertisement/rejected",
            trace_id=trace_id,
            peer=peer,
            detail=exc.message,
            level=logging.WARNING,
            fields={"source": source, "error/code": exc.code},
        )
        self.tracer.error(exc, trace_id=trace, peer=peer)

    def _session_error(self, live: Live, exc: NetError) -> None:
        """Trace a refusal within a session (an advertisement's as a rejected advertisement)."""
        if exc.details.get("artifact") == ADVERTISEMENT_ARTIFACT:
            self._advertisement_rejected(
                exc, peer=live.node_id, source=f"peer:{live.node_id}", trace_id=live.trace_id
            )
        else:
            self.tracer.error(exc, trace_id=live.trace_id, peer=live.node_id)

    async def _directory_loop(self, directory: str) -> None:
        cursor = 0
        while True:
            if self.seeds is not None:
                try:
                    more = True
                    while more:
                        advertisements, cursor, more = await self.seeds.fetch(directory, cursor)
                        for advertisement in advertisements:
                            await self.learn(advertisement, source=f"directory:{directory}")
                except NetError as exc:
                    self.tracer.error(exc, fields={"directory": directory})
            await trio.sleep(self.settings.directory_sync_seconds)

    async def _publish_loop(self) -> None:
        url = self.own_peer_url()
        if url is None:
            log_event(
                log,
                "peering_unadvertised",
                level=logging.WARNING,
                detail="this node has no wss:// peer endpoint (TLS is off): it dials its "
                "peers but does not advertise itself",
            )
            return
        lifetime = self.settings.advertisement_lifetime_seconds
        while True:
            advertisement = await self.own.next(
                endpoints=[{"url": url, "transport": "wss", "priority": 1}],
                now=self.clock.now(),
            )
            self.tracer.emit(
                "advertisement/published",
                detail=url,
                fields={"sequence/no": advertisement["sequence/no"]},
            )
            for live in list(self.sessions.values()):
                self._send_advertisement(live)
            retry = lifetime / 2
            for directory in self.settings.seed_directories:
                if self.seeds is None:
                    break
                try:
                    await self.seeds.publish(directory, advertisement)
                except NetError as exc:
                    self.tracer.error(exc, fields={"directory": directory})
                    retry = min(retry, 60.0)
            await trio.sleep(retry)

    # --- dialling --------------------------------------------------------------------------

    async def _keep_connected(self, node_id: str) -> None:
        failures = 0
        try:
            while node_id in self.targets and not self._stopped:
                live = self.sessions.get(node_id)
                if live is not None:
                    await live.ended.wait()
                    ended: EndReason | None = live.end_reason
                else:
                    ended = await self._dial_once(self.targets[node_id])
                if ended is not None:
                    failures = 0
                    if ended in _LOST:
                        # A fresh carrier and handshake after about a second (D8).
                        await trio.sleep(backoff(0, self.rng))
                    continue
                delay = backoff(failures, self.rng)
                failures += 1
                # Wake early if the peer dials us meanwhile.
                with trio.move_on_after(delay):
                    while node_id not in self.sessions:
                        await self._changed.wait()
        finally:
            self._dialers.discard(node_id)

    async def _dial_once(self, target: PeerTarget) -> EndReason | None:
        """Try each endpoint once; how the session ended, or ``None`` if none was held."""
        node_id = target.node_id
        for url in target.urls:
            if node_id in self.sessions:
                return "duplicate"
            if self._stopped or not self._handshake_allowed(node_id):
                return None
            trace = self.tracer.emit(
                "handshake/started", peer=node_id, detail=url, fields={"direction": "outbound"}
            )
            self.dialling[node_id] = url
            self._gauge()
            try:
                async with self.connect(
                    url, self.tls, max_message_bytes=self.max_message_bytes + FRAME_OVERHEAD
                ) as carrier:
                    try:
                        established = await self._initiate(carrier, node_id)
                    except OcpError as exc:
                        raise _as_net(exc) from None
                    finally:
                        self.dialling.pop(node_id, None)
                        self._gauge()
                    self.peer_hosts.setdefault(node_id, set()).add(_host(url))
                    return await self._converse(
                        carrier, established, address=url, label=target.label, trace_id=trace
                    )
            except NetError as exc:
                self.dialling.pop(node_id, None)
                self._gauge()
                self._handshake_failed(exc, node_id, trace, "outbound")
        return None

    async def _initiate(self, carrier: Carrier, node_id: str) -> Established:
        initiator = Initiator(
            self.key, now=self.clock.now(), recipient=node_id, capabilities=self.capabilities
        )
        try:
            await carrier.send(initiator.hello_text())
            with trio.move_on_after(PENDING_HELLO_TIMEOUT):
                reply = await carrier.receive()
                return self._answer(initiator, reply)
        except CarrierClosed as exc:
            raise NetError(
                f"the peer closed the connection during the handshake ({exc.code})",
                code="E_TRANSPORT_UNAVAILABLE",
            ) from None
        raise NetError(f"no ack within {PENDING_HELLO_TIMEOUT:g} s", code="E_TRANSPORT_UNAVAILABLE")

    def _answer(self, initiator: Initiator, reply: bytes | str) -> Established:
        ack = parse_handshake(reply)
        if ack.get("type") == "error":
            code = ack.get("code")
            raise NetError(
                f"the peer refused the hello: {str(ack.get('detail', ''))[:150]}",
                code=code if code in NET_ERROR_CLASSES else "E_TRANSPORT_REJECTED",
            )
        return initiator.receive_ack(ack, now=self.clock.now())

    def _handshake_allowed(self, node_id: str) -> bool:
        return self._handshakes.take(node_id, now=trio.current_time()) is None

    def _handshake_failed(
        self, exc: NetError, peer: str | None, trace: str, direction: str
    ) -> None:
        self.metrics.peer_handshakes.labels(direction, exc.code).inc()
        self.tracer.emit(
            "handshake/rejected",
            trace_id=trace,
            peer=peer,
            detail=exc.message,
            level=logging.WARNING,
            fields={"direction": direction, "error/code": exc.code},
        )
        self.tracer.error(exc, trace_id=trace, peer=peer)

    # --- answering ------------------------------------------------------------------------

    def install(self, app: QuartTrio) -> None:
        inner: ASGIApp = app.asgi_app  # type: ignore[assignment]

        async def front(scope: Scope, receive: Receive, send: Send) -> None:
            if scope["type"] == "websocket" and scope["path"] == PEER_PATH:
                await self.handle(scope, receive, send)
            else:
                await inner(scope, receive, send)

        app.asgi_app = front  # type: ignore[method-assign,assignment]

    async def handle(self, scope: Scope, receive: Receive, send: Send) -> None:
        if (await receive())["type"] != "websocket.connect":
            return
        if PEER_SUBPROTOCOL not in scope.get("subprotocols", ()):
            await send({"type": "websocket.close", "code": CLOSE_POLICY})
            return
        await send({"type": "websocket.accept", "subprotocol": PEER_SUBPROTOCOL})
        client = scope.get("client")
        address = f"{client[0]}:{client[1]}" if client else "unknown"
        await self.accept(AsgiCarrier(receive, send, address))

    async def accept(self, carrier: Carrier) -> None:
        """Answer one accepted connection: its hello, then the session, until it ends."""
        address = carrier.remote
        if self._stopped:
            await carrier.close(CLOSE_GOING_AWAY, "node stopping")
            return
        if self.pending_inbound >= self.settings.max_pending_handshakes:
            await carrier.close(CLOSE_TRY_LATER, "too many pending handshakes")
            return
        trace = self.tracer.emit(
            "handshake/started", detail=address, fields={"direction": "inbound"}
        )
        self.pending_inbound += 1
        self._gauge()
        peer: str | None = None
        try:
            try:
                established = await self._respond(carrier)
            except OcpError as exc:
                exc = _as_net(exc)
                claimed = exc.details.get("peer")
                if isinstance(claimed, str):
                    peer = claimed
                self._handshake_failed(exc, peer, trace, "inbound")
                try:
                    await carrier.send(
                        _dumps({"type": "error", "code": exc.code, "detail": exc.message[:200]})
                    )
                except CarrierClosed:
                    pass
                await carrier.close(CLOSE_POLICY, exc.code)
                return
        finally:
            self.pending_inbound -= 1
            self._gauge()
        await self._converse(carrier, established, address=address, label=None, trace_id=trace)

    async def _respond(self, carrier: Carrier) -> Established:
        hello: object = None
        with trio.move_on_after(PENDING_HELLO_TIMEOUT):
            try:
                hello = parse_handshake(await carrier.receive())
            except CarrierClosed:
                raise NetError(
                    "the connection closed before its hello", code="E_TRANSPORT_UNAVAILABLE"
                ) from None
        if hello is None:
            raise NetError(f"no hello within {PENDING_HELLO_TIMEOUT:g} s")
        now = self.clock.now()
        try:
            ack, established = self._responder.receive_hello(hello, now=now)
        except NetError as exc:
            # For the trace only: who the hello claims to come from.
            claimed = hello.get("sender/node-id") if isinstance(hello, dict) else None
            if isinstance(claimed, str) and "peer" not in exc.details:
                exc.details["peer"] = claimed[:128]
            raise
        peer = established.peer_node_id
        if not self._handshake_allowed(peer):
            raise NetError(
                "too many handshakes from this node; try again later",
                code="E_TRANSPORT_REJECTED",
                details={"peer": peer},
            )
        if peer not in self.sessions and len(self.sessions) >= self.settings.max_sessions:
            raise NetError(
                "this node holds as many sessions as it may",
                code="E_TRANSPORT_REJECTED",
                details={"peer": peer},
            )
        assert isinstance(hello, dict)  # noqa: S101 - receive_hello checked it
        await self.nonce_store.remember(peer, str(hello["nonce"]), now + NONCE_RETENTION)
        try:
            await carrier.send(_dumps(ack))
        except CarrierClosed:
            raise NetError(
                "the connection closed before the ack", code="E_TRANSPORT_UNAVAILABLE"
            ) from None
        return established

    # --- the session -------------------------------------------------------------------------

    def _admit(self, live: Live) -> bool:
        """Install ``live`` unless the existing session with its peer wins."""
        existing = self.sessions.get(live.node_id)
        if existing is not None and existing.end_reason is None:
            racing = live.opened - existing.opened < PENDING_HELLO_TIMEOUT
            if existing.initiator != live.initiator and racing:
                opener_new = self.node_id if live.initiator else live.node_id
                opener_old = self.node_id if existing.initiator else live.node_id
                if opener_old < opener_new:
                    return False
            existing.end("superseded")
        self.sessions[live.node_id] = live
        self._notify()
        return True

    async def _converse(
        self,
        carrier: Carrier,
        established: Established,
        *,
        address: str,
        label: str | None,
        trace_id: str,
    ) -> EndReason:
        """Hold one established session until it ends; returns why it ended."""
        now = self.clock.now()
        peer = established.peer_node_id
        direction = "outbound" if established.initiator else "inbound"
        if label is None and peer in self.targets:
            label = self.targets[peer].label
        live = Live(
            node_id=peer,
            session=PeerSession(established, now=now),
            carrier=carrier,
            initiator=established.initiator,
            opened=trio.current_time(),
            established_at=now,
            address=address,
            label=label,
            trace_id=trace_id,
        )
        self.metrics.peer_handshakes.labels(direction, "accepted").inc()
        self.tracer.emit(
            "handshake/accepted",
            trace_id=trace_id,
            peer=peer,
            fields={"direction": direction, "handshake/id": established.handshake_id},
        )
        if not self._admit(live):
            self.tracer.emit(
                "peer/disconnected",
                trace_id=trace_id,
                peer=peer,
                detail="the other session opened at the same time is kept",
                fields={"reason": "duplicate"},
            )
            await carrier.close(CLOSE_NORMAL, "duplicate session")
            return "duplicate"
        self.tracer.emit(
            "session/established",
            trace_id=trace_id,
            peer=peer,
            fields={"direction": direction, "address": address},
        )
        self.tracer.emit("peer/connected", trace_id=trace_id, peer=peer, detail=address)
        self._gauge()
        inbox_send, inbox_receive = trio.open_memory_channel[bytes](INBOX)
        live.inbox = inbox_send
        try:
            with live.scope:
                live.session.send_capabilities(self._capability_advertisement(), now=now)
                await live.flush()
                async with trio.open_nursery() as nursery:
                    nursery.start_soon(self._keepalive, live)
                    nursery.start_soon(self._guarded, live, self._writer(live))
                    if self.traffic is not None:
                        nursery.start_soon(
                            self._guarded, live, self.traffic.serve(live, inbox_receive)
                        )
                    await self._guarded(live, self._read(live))
                    nursery.cancel_scope.cancel()
        except CarrierClosed as exc:
            live.end("closed", f"connection closed ({exc.code})")
        finally:
            live.end(live.end_reason or "closed")
            await self._ended(live)
        return live.end_reason or "closed"

    async def _ended(self, live: Live) -> None:
        with trio.CancelScope(shield=True):
            if self.sessions.get(live.node_id) is live:
                del self.sessions[live.node_id]
            for waiter in live.waiting.values():
                waiter.result = Delivery("unreachable", "the peer session ended")
                waiter.done.set()
            live.waiting.clear()
            if live.inbox is not None:
                live.inbox.close()
            reason = live.end_reason or "closed"
            code = CLOSE_GOING_AWAY if reason == "stopping" else CLOSE_NORMAL
            if reason in {"error", "keepalive"}:
                code = CLOSE_POLICY
            await live.carrier.close(code, reason)
            live.ended.set()
            self._notify()
            self._gauge()
            self.tracer.emit(
                "peer/disconnected",
                trace_id=live.trace_id,
                peer=live.node_id,
                detail=live.end_detail or reason,
                fields={"reason": reason},
            )
            if reason in _LOST:
                self._lost.add(live.node_id)
                self.metrics.peer_keepalive_lost.inc()
                self.tracer.emit(
                    "keepalive/lost",
                    trace_id=live.trace_id,
                    peer=live.node_id,
                    detail=live.end_detail or reason,
                    level=logging.WARNING,
                    fields={"reason": reason},
                )

    async def _guarded(self, live: Live, work: Awaitable[None]) -> None:
        """Run one of the session's tasks; its failure ends the session, not the node."""
        try:
            await work
        except CarrierClosed as exc:
            live.end("closed", f"connection closed ({exc.code})")
        except NetError as exc:
            live.end("error", exc.message)
            self._session_error(live, exc)
        live.scope.cancel()

    async def _read(self, live: Live) -> None:
        while True:
            wait = self._frames.take(live.node_id, now=trio.current_time())
            if wait is not None:
                # Backpressure: stop reading this peer until its budget refills.
                await trio.sleep(1.0 / self.settings.frames_per_second)
                continue
            data = await live.carrier.receive()
            now = self.clock.now()
            if isinstance(data, str):
                live.refuse(NetError("session frames are binary after the handshake"), now=now)
                continue
            pongs = live.session.pongs_received
            events = live.session.receive(data, now=now)
            if live.session.pongs_received != pongs:
                live.last_keepalive = now
            for event in events:
                await self._on_event(live, event, now)
            live.kick()

    async def _writer(self, live: Live) -> None:
        while True:
            await live.wake.wait()
            live.wake = trio.Event()
            await live.flush()

    async def _keepalive(self, live: Live) -> None:
        while True:
            try:
                deadline = live.session.poll(self.clock.now())
            except NetError as exc:
                # (a session closed by another failure was traced where it failed)
                if exc.details.get("keepalive") == "lost" and live.end_reason is None:
                    self.tracer.error(exc, trace_id=live.trace_id, peer=live.node_id)
                live.end("keepalive", exc.message)
                return
            live.kick()
            await trio.sleep(max(0.0, deadline - self.clock.now()))

    async def _on_event(self, live: Live, event: SessionEvent, now: float) -> None:
        peer = live.node_id
        if isinstance(event, MessageReceived):
            if live.inbox is None or self.traffic is None:
                live.refuse(NetError("this node takes no OCP messages over sessions"), now=now)
                return
            await live.inbox.send(event.raw)
        elif isinstance(event, ReceiptReceived):
            waiter = live.waiting.pop(event.message_id, None)
            if waiter is not None:
                waiter.result = _delivery(event)
                waiter.done.set()
        elif isinstance(event, CapabilitiesReceived):
            self.tracer.emit(
                "capabilities/exchanged",
                trace_id=live.trace_id,
                peer=peer,
                fields={"capabilities": sorted(event.capabilities)},
            )
            self._send_advertisement(live)
            urls = list(self.own_ocp_urls())
            if urls:
                live.session.send_endpoints(urls, now=now)
            if peer in self._lost:
                self._lost.discard(peer)
                self.tracer.emit("keepalive/restored", trace_id=live.trace_id, peer=peer)
            self._notify()
        elif isinstance(event, SignalReceived):
            self.tracer.emit(
                "signal-marker/received",
                trace_id=live.trace_id,
                peer=peer,
                detail=str(event.marker.get("signal/body", ""))[:100] or None,
                fields={
                    "marker/id": event.marker["marker/id"],
                    "signal/kind": event.marker["signal/kind"],
                    "participant/id": event.marker["participant/id"],
                },
            )
        elif isinstance(event, AdvertisementReceived):
            await self.learn(event.advertisement, source=f"peer:{peer}", expected_node_id=peer)
        elif isinstance(event, EndpointsReceived):
            self._hosting(live, event.urls)
        elif isinstance(event, PeerErrorReceived):
            log_event(
                log,
                "peer_refused",
                level=logging.WARNING,
                peer=peer,
                code=event.code,
                detail=event.detail,
            )
        elif isinstance(event, Refused):
            self._session_error(live, event.error)

    def _hosting(self, live: Live, urls: Iterable[str]) -> None:
        """Agents at these URLs are hosted by the peer, if its host names agree."""
        hosts = self.peer_hosts.get(live.node_id, set())
        for url in urls:
            if _host(url) in hosts:
                self.hosted[endpoint_key(url)] = live.node_id
            else:
                log_event(
                    log,
                    "peer_endpoint_ignored",
                    level=logging.WARNING,
                    peer=live.node_id,
                    url=url[:200],
                    detail="the peer claims an endpoint on a host it does not advertise",
                )

    def _send_advertisement(self, live: Live) -> None:
        latest = self.own.latest
        if latest is None or live.session.capabilities is None or live.end_reason is not None:
            return
        live.session.send_advertisement(latest, now=self.clock.now())
        live.kick()

    def _capability_advertisement(self) -> dict[str, Any]:
        return build_capability_advertisement(
            self.key,
            now=self.clock.now(),
            capabilities=self.capabilities,
            messages=(SIGNAL_MARKER_ENVELOPE,),
        )

    def _notify(self) -> None:
        """Wake whoever waits for a change in the session table."""
        self._changed.set()
        self._changed = trio.Event()

    def _gauge(self) -> None:
        established = sum(1 for live in self.sessions.values() if live.end_reason is None)
        self.metrics.peer_sessions.labels("established").set(established)
        self.metrics.peer_sessions.labels("handshaking").set(
            self.pending_inbound + len(self.dialling)
        )

    # --- what the node asks of sessions --------------------------------------------------

    def host_of(self, urls: Iterable[str]) -> str | None:
        """The peer node serving agents at any of ``urls``, if one is known."""
        for url in urls:
            node = self.hosted.get(endpoint_key(url))
            if node is not None:
                return node
        return None

    def connected(self, node_id: str, capability: str = CAP_RELAY) -> bool:
        live = self.sessions.get(node_id)
        return (
            live is not None
            and live.end_reason is None
            and live.session.capabilities is not None
            and capability in live.session.capabilities
        )

    async def wait_connected(self, node_id: str) -> None:
        while not self.connected(node_id):
            await self._changed.wait()

    async def hand_on(self, node_id: str, items: Sequence[tuple[bytes, str]]) -> list[Delivery]:
        """Send OCP messages (raw bytes, message id) to ``node_id`` in order and
        wait for their receipts.

        Sends at least one unless there is no session, and no more than the
        session's window has room for at once: the outcomes are those of the
        first ``len(result)`` items; the rest were not sent.
        """
        if not items:
            return []
        live = self.sessions.get(node_id)
        if live is None or not self.connected(node_id):
            return [Delivery("unreachable", "no session with the hosting node")]
        await live.window.acquire()
        taken = 1
        while taken < len(items):
            try:
                live.window.acquire_nowait()
            except trio.WouldBlock:
                break
            taken += 1
        sent: list[tuple[str, _Waiter]] = []
        try:
            if live.end_reason is not None:
                return [Delivery("unreachable", "the peer session ended")]
            now = self.clock.now()
            for raw, message_id in items[:taken]:
                waiter = live.waiting.setdefault(message_id, _Waiter())
                live.session.send_message(raw, now=now, capability=CAP_RELAY)
                sent.append((message_id, waiter))
            live.kick()
            with trio.move_on_after(RECEIPT_TIMEOUT):
                for _, waiter in sent:
                    await waiter.done.wait()
        finally:
            for message_id, _ in sent:
                live.waiting.pop(message_id, None)
            for _ in range(taken):
                live.window.release()
        results = [w.result or Delivery("unreachable", "no receipt in time") for _, w in sent]
        for result in results:
            self.metrics.peer_messages.labels("sent", result.outcome).inc()
        return results

    def propagate(self, raw: bytes, *, exclude: str | None = None) -> int:
        """Hand a broadcast to every peer that takes OCP messages; returns how many."""
        sent = 0
        now = self.clock.now()
        for live in list(self.sessions.values()):
            if live.node_id == exclude or not self.connected(live.node_id):
                continue
            if live.session.queued >= MAX_QUEUED_FRAMES:
                log_event(log, "broadcast_dropped", level=logging.WARNING, peer=live.node_id)
                continue
            live.session.send_message(raw, now=now, capability=CAP_RELAY)
            live.kick()
            sent += 1
        self.metrics.peer_messages.labels("broadcast", "sent").inc(sent)
        return sent

    async def signal(self, node_id: str, *, kind: str, body: str | None = None) -> dict[str, Any]:
        """Send a signal-marker, authored by this node's operator participant."""
        live = self.sessions.get(node_id)
        if live is None or live.end_reason is not None or live.session.capabilities is None:
            raise NetError(f"no session with {node_id}", code="E_TRANSPORT_UNAVAILABLE")
        now = self.clock.now()
        marker = build_signal_marker(self.key, kind=kind, now=now, body=body)
        envelope = build_signal_marker_envelope(
            self.key, marker, sender_node_id=self.node_id, now=now, recipient_node_id=node_id
        )
        # The schema gate on the way out (FR-024): a bad kind or body stops here.
        verify_signal_marker_envelope(envelope, now=now, session_peer=self.node_id)
        live.session.send_signal(envelope, now=now)
        await live.flush()
        trace = self.tracer.emit(
            "signal-marker/sent",
            peer=node_id,
            detail=body[:100] if body else None,
            fields={"marker/id": marker["marker/id"], "signal/kind": kind},
        )
        return {"trace/id": trace, "marker/id": marker["marker/id"], "envelope": envelope}

    def describe(self) -> dict[str, Any]:
        """Sessions, dials in progress and known peers, for ``ocpd peer list``."""
        sessions = [live.describe() for live in self.sessions.values()]
        return {
            "node_id": self.node_id,
            "sessions": sessions,
            "dialling": [{"node_id": n, "url": u} for n, u in sorted(self.dialling.items())],
            "pending_inbound": self.pending_inbound,
            "known": [
                {"node_id": t.node_id, "label": t.label, "urls": list(t.urls)}
                for t in sorted(self.targets.values(), key=lambda t: t.node_id)
            ],
        }


def _as_net(exc: OcpError) -> NetError:
    """Any other refusal met during a handshake is a contract violation."""
    return exc if isinstance(exc, NetError) else NetError(exc.message)


def _delivery(receipt: ReceiptReceived) -> Delivery:
    if receipt.status in {"accepted", "duplicate"}:
        return Delivery("delivered", f"receipt {receipt.status}")
    if receipt.code in _TRANSIENT_CODES:
        return Delivery("unreachable", f"receipt rejected {receipt.code}", receipt.code)
    return Delivery("refused", f"receipt rejected {receipt.code or ''}".strip(), receipt.code)
