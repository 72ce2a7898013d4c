"""Registry-mediated delivery: handing messages on to where their receiver lives.

Theory of operation
-------------------
When a message is accepted for a receiver that is not served here, its
queue row is committed with state ``remote`` like any other row (the 202 or
receipt is only sent after that commit), and :meth:`Forwarder.submit`
queues its ``seq`` for the receiver. Which receivers are *served here* is
:meth:`Forwarder.placement`:

* an agent that authenticated at this node, or whose record names one of
  this node's public URLs, is local: its rows wait for its session;
* an agent with an ``ocp-http`` endpoint elsewhere is remote: rows are
  handed on by HTTPS ``POST`` of the original signed bytes, with an
  ``Authorization`` header (D3) signed by this node's service agent;
* an agent without such an endpoint (only ``ocp-ws`` at some other node,
  say) cannot be reached over HTTPS: its rows wait here until it connects
  or they expire, and node-to-node sessions will carry them to its node.

One worker per receiver takes its rows in ``seq`` order (so per-sender FIFO
holds across nodes too) and tries the receiver's endpoints in priority
order, re-reading them from the directory for every round. An endpoint that
accepts (2xx) ends the row. One that refuses the message for good (a 4xx
other than 408, 425 and 429) is not asked again for that row; when every
endpoint has refused, the row fails at once. Anything else (no connection,
timeout, 5xx, 408, 429) is retried after 1, 2, 4, 8 and 16 s (D6); when the
last round fails too, the receiver counts as unreachable and every row
queued for it fails. A failed row is replaced, in the same transaction, by
a signed OCP-502 ``error`` message from the service agent to the sender,
which is routed like any other message (never for an ``error`` message
itself, so two unreachable nodes cannot bounce errors forever).

Rows survive restarts: :meth:`Forwarder.run` queues every ``remote`` row
again at start, with a fresh retry schedule (a crash during the schedule
gives the receiver a few more seconds, never fewer). Delivery is at least
once: a crash between the remote's 2xx and the row's deletion posts the
message again, and the receiving node's dedup makes that harmless.
"""

from __future__ import annotations

import itertools
import json
import logging
import ssl
from collections import deque
from typing import TYPE_CHECKING, Any, Final, Protocol
from urllib.parse import urlsplit

import attrs
import httpx
import trio

from ocpd.logs import get_logger, log_event
from ocpd.net.endpoints import endpoint_key
from ocpd.net.peers import Delivery
from ocpd.node.intake import dedup_until
from ocpd.node.store import Accept
from ocpd.proto.auth import message_post_headers
from ocpd.proto.envelope import build_error_message, message_digest, sign_message
from ocpd.proto.errors import OcpError, UpstreamUnreachable
from ocpd.proto.hosts import is_loopback_host
from ocpd.proto.strictjson import loads_strict

if TYPE_CHECKING:
    from collections.abc import Iterable, Mapping, Sequence

    from ocpd.clock import WallClock
    from ocpd.node.directory import AgentDirectory, AgentInfo
    from ocpd.node.router import Router
    from ocpd.node.store import Held, MessageStore, Placement
    from ocpd.proto.crypto import SigningKey
    from ocpd.web import Metrics

__all__ = ["BACKOFF", "Forwarder", "HttpPoster", "Posted", "Poster", "endpoint_key"]

#: Waits between delivery rounds (D6); after the last round fails the row fails.
BACKOFF: Final = (1.0, 2.0, 4.0, 8.0, 16.0)
#: Messages on their way to other nodes at once.
MAX_IN_FLIGHT: Final = 32
#: Rows for one agent handed on over a peer session at once.
BURST: Final = 512
#: How long an ``error`` notice about an undeliverable message lives.
NOTICE_TTL: Final = 3600
#: 4xx answers that mean "not now" rather than "never": retried like a 5xx.
_TRANSIENT_4XX: Final = frozenset({408, 425, 429})

log = get_logger("node")


def deliverable(endpoint: Mapping[str, Any]) -> str | None:
    """The URL this node may POST to for ``endpoint``, if any.

    ``ocp-http`` endpoints over HTTPS; plain HTTP only to a loopback address
    (a development node), since OCP never sends messages unencrypted.
    """
    if endpoint.get("transport") != "ocp-http":
        return None
    url = endpoint.get("url")
    if not isinstance(url, str):
        return None
    parts = urlsplit(url)
    if parts.scheme == "https" and parts.hostname:
        return url
    if parts.scheme == "http" and parts.hostname and is_loopback_host(parts.hostname):
        return url
    return None


#: What one POST to one endpoint came to; the same outcome as a session's.
Posted = Delivery


class Poster(Protocol):
    async def post(self, url: str, body: bytes, headers: Mapping[str, str]) -> Posted: ...


class PeerRoutes(Protocol):
    """Node-to-node sessions as the forwarder uses them (:class:`ocpd.net.peers.PeerService`)."""

    def host_of(self, urls: Iterable[str]) -> str | None: ...

    def connected(self, node_id: str) -> bool: ...

    async def wait_connected(self, node_id: str) -> None: ...

    async def hand_on(self, node_id: str, items: Sequence[tuple[bytes, str]]) -> list[Delivery]: ...


class HttpPoster:
    """POSTs over HTTPS with the system's trust roots plus ``delivery_ca_file``."""

    def __init__(self, *, ca_file: str | None = None, timeout: float = 30.0) -> None:
        context = ssl.create_default_context()
        context.minimum_version = ssl.TLSVersion.TLSv1_3
        if ca_file is not None:
            context.load_verify_locations(ca_file)
        self._http = httpx.AsyncClient(
            verify=context,
            timeout=httpx.Timeout(timeout, connect=5.0),
            limits=httpx.Limits(max_connections=MAX_IN_FLIGHT),
        )

    async def aclose(self) -> None:
        await self._http.aclose()

    async def post(self, url: str, body: bytes, headers: Mapping[str, str]) -> Posted:
        try:
            response = await self._http.post(url, content=body, headers=dict(headers))
        except httpx.HTTPError as exc:
            return Posted("unreachable", type(exc).__name__)
        status = response.status_code
        if 200 <= status < 300:
            return Posted("delivered", f"HTTP {status}")
        code = _error_code(response.content)
        detail = f"HTTP {status}" + (f" {code}" if code else "")
        if 400 <= status < 500 and status not in _TRANSIENT_4XX:
            return Posted("refused", detail, code)
        return Posted("unreachable", detail, code)


def _error_code(content: bytes) -> str | None:
    """The ``error_code`` of an OCPUMF ``error`` answer, if that is what came back."""
    try:
        answer = loads_strict(content, max_size=1_048_576)
    except OcpError:
        return None
    if isinstance(answer, dict):
        payload = answer.get("payload", answer)
        if isinstance(payload, dict):
            code = payload.get("error_code")
            if isinstance(code, str) and len(code) <= 64:
                return code
    return None


@attrs.define(eq=False)
class _Queue:
    seqs: deque[int] = attrs.Factory(deque)
    queued: set[int] = attrs.Factory(set)
    running: bool = False


@attrs.define(eq=False)
class Forwarder:
    """Hands rows for agents served elsewhere on to their ``ocp-http`` endpoints."""

    store: MessageStore
    directory: AgentDirectory
    clock: WallClock
    metrics: Metrics
    key: SigningKey
    service_agent: str
    poster: Poster
    #: This node's public URLs (messages and WebSocket), when known at build
    #: time; otherwise :meth:`set_own_urls` once the listeners are bound.
    own_urls: Iterable[str] = ()
    clock_skew: float = 60.0
    router: Router | None = None
    #: Sessions with other nodes, when peering runs.
    peers: PeerRoutes | None = None
    _own: frozenset[str] = attrs.field(init=False)
    _own_known: trio.Event = attrs.Factory(trio.Event)
    _queues: dict[str, _Queue] = attrs.Factory(dict)
    _nursery: trio.Nursery | None = None
    _in_flight: trio.CapacityLimiter = attrs.Factory(lambda: trio.CapacityLimiter(MAX_IN_FLIGHT))
    #: Rows submitted before :meth:`run` started its nursery.
    _early: list[tuple[str, int]] = attrs.Factory(list)

    def __attrs_post_init__(self) -> None:
        self._own = frozenset()
        if self.own_urls:
            self.set_own_urls(self.own_urls)

    def set_own_urls(self, urls: Iterable[str]) -> None:
        self._own = frozenset(endpoint_key(u) for u in urls)
        self._own_known.set()

    # --- placement ---------------------------------------------------------------------

    def serves(self, info: AgentInfo) -> bool:
        """The agent's record names this node."""
        return any(
            isinstance(e.get("url"), str) and endpoint_key(e["url"]) in self._own
            for e in info.endpoints
        )

    def targets(self, info: AgentInfo) -> list[str]:
        """URLs to hand the agent's messages to, in priority order (none if served here)."""
        if self.serves(info):
            return []
        return [url for e in info.endpoints if (url := deliverable(e)) is not None]

    def host(self, info: AgentInfo) -> str | None:
        """The peer node hosting the agent, when a session told us (none if served here)."""
        if self.peers is None or self.serves(info):
            return None
        return self.peers.host_of(e["url"] for e in info.endpoints if isinstance(e.get("url"), str))

    def placement(self, info: AgentInfo) -> Placement:
        return "remote" if self.targets(info) or self.host(info) is not None else "local"

    # --- the queue ---------------------------------------------------------------------

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Queue the rows a previous run left, then hand rows on until cancelled."""
        try:
            async with trio.open_nursery() as nursery:
                task_status.started()
                # Which agents are ours depends on our own URLs: known once
                # the listeners are bound (nothing is accepted before that).
                await self._own_known.wait()
                self._nursery = nursery
                for seq, receiver in await self.store.remote_rows():
                    self.submit_seq(receiver, seq)
                for receiver, seq in self._early:
                    self.submit_seq(receiver, seq)
                self._early.clear()
                await trio.sleep_forever()
        finally:
            self._nursery = None
            close = getattr(self.poster, "aclose", None)
            if close is not None:
                with trio.CancelScope(shield=True):
                    await close()

    def submit(self, receiver: AgentInfo, seq: int) -> None:
        self.submit_seq(receiver.agent_id, seq)

    def submit_seq(self, receiver: str, seq: int) -> None:
        if self._nursery is None:
            self._early.append((receiver, seq))
            return
        queue = self._queues.setdefault(receiver, _Queue())
        if seq in queue.queued:
            return
        queue.seqs.append(seq)
        queue.queued.add(seq)
        if not queue.running:
            queue.running = True
            self._nursery.start_soon(self._work, receiver, queue)

    def waiting(self) -> int:
        """Rows queued for other nodes (for tests and the metrics gauge)."""
        return sum(len(q.seqs) for q in self._queues.values())

    async def _work(self, receiver: str, queue: _Queue) -> None:
        try:
            round_no = 0
            while queue.seqs:
                if round_no == 0 and len(queue.seqs) > 1 and await self._burst(receiver, queue):
                    continue
                seq = queue.seqs[0]
                held = await self.store.held(seq)
                if held is None:
                    # Delivered to a session here, or swept.
                    self._pop(queue)
                    continue
                if held.expires_at < self.clock.now():
                    await self._drop(seq, "expired")
                    self._pop(queue)
                    continue
                result, host = await self._round(held)
                if result.outcome == "delivered":
                    await self._drop(seq, "forwarded")
                    self._pop(queue)
                    round_no = 0
                elif result.outcome == "refused":
                    await self._give_up(held, result)
                    self._pop(queue)
                elif round_no < len(BACKOFF):
                    # The pause ends early when the receiver's node, away
                    # now, gets a session back: its rows go at once.
                    with trio.move_on_after(BACKOFF[round_no]) as pause:
                        if (
                            host is not None
                            and self.peers is not None
                            and not self.peers.connected(host)
                        ):
                            await self.peers.wait_connected(host)
                        else:
                            await trio.sleep_forever()
                    round_no = round_no + 1 if pause.cancelled_caught else 0
                elif host is not None and self.peers is not None:
                    # The receiver's node is a peer that is away: its rows
                    # wait for the session to come back (or for their expiry).
                    log_event(
                        log,
                        "waiting_for_peer",
                        level=logging.INFO,
                        receiver=receiver,
                        node=host,
                        queued=len(queue.seqs),
                    )
                    left = held.expires_at - self.clock.now()
                    with trio.move_on_after(max(0.0, left)):
                        await self.peers.wait_connected(host)
                    round_no = 0
                else:
                    log_event(
                        log,
                        "receiver_unreachable",
                        level=logging.WARNING,
                        receiver=receiver,
                        queued=len(queue.seqs),
                        detail=result.detail,
                    )
                    while queue.seqs:
                        failed = await self.store.held(queue.seqs[0])
                        if failed is not None:
                            await self._give_up(failed, result)
                        self._pop(queue)
                    round_no = 0
        finally:
            queue.running = False
            if not queue.seqs:
                self._queues.pop(receiver, None)

    @staticmethod
    def _pop(queue: _Queue) -> None:
        queue.queued.discard(queue.seqs.popleft())

    async def _burst(self, receiver: str, queue: _Queue) -> bool:
        """Rows for an agent on a connected peer node, handed on together.

        Up to :data:`BURST` rows from the head of the queue leave over the
        session in order and their receipts are awaited together; delivered
        and expired rows go in one write. Rows the session did not take stay
        queued for the one-at-a-time path, with its backoff. False when
        nothing could be settled this way.
        """
        if self.peers is None:
            return False
        try:
            info = await self.directory.lookup(receiver)
        except OcpError:
            return False
        host = None if info is None or not info.active else self.host(info)
        if host is None or not self.peers.connected(host):
            return False
        seqs = list(itertools.islice(queue.seqs, BURST))
        rows = await self.store.held_many(seqs)
        now = self.clock.now()
        settled = {seq for seq in seqs if seq not in rows}  # delivered here, or swept
        expired = [seq for seq, held in rows.items() if held.expires_at < now]
        sending = [rows[seq] for seq in seqs if seq in rows and rows[seq].expires_at >= now]
        results = await self.peers.hand_on(host, [(h.raw, h.message_id) for h in sending])
        delivered = []
        for held, result in zip(sending, results, strict=False):
            if result.outcome == "delivered":
                delivered.append(held.seq)
            elif result.outcome == "refused":
                await self._give_up(held, result)
                settled.add(held.seq)
            else:
                _log_failure(held, result, node=host)
        if delivered or expired:
            await self.store.delivered([*delivered, *expired])
            self.metrics.deliveries.labels("forwarded").inc(len(delivered))
            self.metrics.deliveries.labels("expired").inc(len(expired))
            settled.update(delivered, expired)
        if not settled:
            return False
        kept = [seq for seq in queue.seqs if seq not in settled]
        queue.seqs = deque(kept)
        queue.queued.difference_update(settled)
        return True

    async def _round(self, held: Held) -> tuple[Posted, str | None]:
        """One pass: the session with the receiver's node, then its endpoints.

        Returns the outcome and the peer node hosting the receiver, if known.
        """
        try:
            info = await self.directory.lookup(held.receiver)
        except OcpError as exc:
            return Posted("unreachable", f"registry: {exc.message}"), None
        if info is None or not info.active:
            return Posted("refused", "the receiver is no longer registered and active"), None
        host = self.host(info)
        if host is not None and self.peers is not None and self.peers.connected(host):
            (handed,) = await self.peers.hand_on(host, [(held.raw, held.message_id)])
            if handed.outcome != "unreachable":
                return handed, host
            _log_failure(held, handed, node=host)
        urls = self.targets(info)
        if not urls:
            if host is not None:
                return Posted("unreachable", "no session with the receiver's node"), host
            return (
                Posted("refused", "the receiver has no endpoint this node can deliver to"),
                None,
            )
        return await self._post(held, urls), host

    async def _post(self, held: Held, urls: list[str]) -> Posted:
        last = Posted("unreachable", "no endpoint tried")
        refused = 0
        for url in urls:
            async with self._in_flight:
                posted = await self.poster.post(url, held.raw, self._headers(url, held.raw))
            self.metrics.forwards.labels(posted.outcome).inc()
            if posted.outcome == "delivered":
                return posted
            _log_failure(held, posted, url=url)
            refused += posted.outcome == "refused"
            last = posted
        if refused == len(urls):
            return last
        return Posted("unreachable", last.detail, last.code)

    def _headers(self, url: str, body: bytes) -> dict[str, str]:
        parts = urlsplit(url)
        path = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
        return message_post_headers(
            self.key,
            agent_id=self.service_agent,
            path_and_query=path,
            body=body,
            now=self.clock.now(),
        )

    async def _drop(self, seq: int, outcome: str) -> None:
        await self.store.delivered([seq])
        self.metrics.deliveries.labels(outcome).inc()

    async def _give_up(self, held: Held, result: Posted) -> None:
        """Replace the row by an OCP-502 notice to its sender (one transaction)."""
        notice, sender = await self._notice(held, result)

        def hand_on(given_up: tuple[bool, tuple[int, ...]]) -> None:
            # In commit order, as the intake's rows (see Intake.commit).
            present, seqs = given_up
            if present and notice is not None and sender is not None and self.router is not None:
                for seq, (_, placement) in zip(seqs, notice.recipients, strict=True):
                    self.router.notify(sender, seq, notice.raw, notice.expires_at, placement)

        present, _ = await self.store.give_up(held.seq, notice, then=hand_on)
        if not present:
            return
        self.metrics.deliveries.labels("failed").inc()
        log_event(
            log,
            "delivery_failed",
            level=logging.WARNING,
            message_id=held.message_id,
            sender=held.sender,
            receiver=held.receiver,
            detail=result.detail,
            notified=notice is not None,
        )

    async def _notice(self, held: Held, result: Posted) -> tuple[Accept | None, AgentInfo | None]:
        if held.sender == self.service_agent or _message_type(held.raw) == "error":
            return None, None
        try:
            sender = await self.directory.lookup(held.sender)
        except OcpError:
            sender = None
        if sender is None or self.router is None:
            return None, None
        details: dict[str, object] = {"receiver": held.receiver, "reason": result.detail}
        if result.code is not None:
            details["remote_error_code"] = result.code
        now = self.clock.now()
        message = sign_message(
            build_error_message(
                UpstreamUnreachable("the message could not be delivered", details=details),
                sender=self.service_agent,
                receiver=held.sender,
                now=now,
                reference_message_id=held.message_id,
                ttl=NOTICE_TTL,
            ),
            self.key,
        )
        raw = json.dumps(message, separators=(",", ":"), ensure_ascii=False).encode("utf-8")
        notice = Accept(
            message_id=message["message_id"],
            digest=message_digest(message),
            sender=self.service_agent,
            receiver=held.sender,
            message_type="error",
            raw=raw,
            expires_at=now + NOTICE_TTL,
            dedup_until=dedup_until(now, now, NOTICE_TTL, self.clock_skew),
            recipients=((held.sender, self.router.placement(sender)),),
            at=now,
        )
        return notice, sender


def _log_failure(held: Held, result: Posted, **where: str) -> None:
    log_event(
        log,
        "forward_failed",
        level=logging.DEBUG,
        message_id=held.message_id,
        receiver=held.receiver,
        outcome=result.outcome,
        detail=result.detail,
        **where,
    )


def _message_type(raw: bytes) -> str | None:
    try:
        message = json.loads(raw)
    except ValueError:
        return None
    kind = message.get("message_type") if isinstance(message, dict) else None
    return kind if isinstance(kind, str) else None
