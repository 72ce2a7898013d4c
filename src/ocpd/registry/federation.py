"""Federation between registries (OCP §3.2.1, D7): pull the peers' feeds, push news.

Theory of operation
-------------------
Active when ``registry.mode`` is ``federated``. ``registry.peers`` holds each
peer's base URL (``https://host:8422``) or its API root
(``https://host:8422/ocp/v1``); both name the same feed.

Pull. One task per peer asks ``GET <peer>/ocp/v1/registry/sync?since=<cursor>``
page after page until ``more`` is false: at start, every
``sync_interval_seconds``, and at once when the peer says it has news. Each
change goes through :meth:`ArtifactStore.ingest`, the path local requests
take (minus Authorization), so every artifact is verified on arrival and a
duplicate changes nothing and is passed on to nobody. The cursor moves
(``federation_peers``) in one commit after the page's changes committed,
together with the page's count of rejected artifacts and the changes that
could not be checked yet (``federation_parked``, retried on later rounds
and dropped after ``PARK_ATTEMPTS`` tries or ``PARK_MAX_AGE``). A registry
that stops anywhere pulls the page again after a restart and finds its
changes already applied; it never starts from 0 again. A peer whose node id
(``OCP-Node-Id`` on its feed) changes lost its data and so its sequence
numbers: its cursor goes back to 0.

Push. Every change committed here (from a request, or from another peer)
raises a flag for each peer but the one it came from; one task per peer
then POSTs ``{"node_id", "cursor"}`` to ``<peer>/ocp/v1/registry/federation/push``,
covering every change since its last push, and backs off when the peer does
not answer. The peer pulls in reply. A push is a notification, not the data:
the data only ever comes from a peer's own feed over TLS at the URL in the
configuration, so each rejected artifact is counted against the peer that
really served it (an unauthenticated POST could come from anyone), order
and restart safety have one path (the cursor), and nothing travels twice.
It costs one extra round trip. A notification from an unknown sender wakes
every puller; pulls of one peer are at least ``MIN_PULL_SPACING`` apart, so
notifications cannot make this registry hammer its peers.

Trust preconditions. Over HTTP an attester must be Level 2 to vouch; from
peers every vouch that verifies is taken, because levels are computed from
the whole set of facts and a vouch counts only while its attester is Level
2 in this registry's view. Arrival order then does not matter and every
registry with the same facts and anchors computes the same levels.
Certifications travel the same way and are verified under the certifier key
they name; one under a key that is not in this registry's
``trust.certifier_keys`` is genuine but not taken (nor passed on), so
registries that federate should name the same certifier keys.

TLS: the system trust store, plus ``registry.peer_ca_file`` for
deployment-local roots.
"""

from __future__ import annotations

import json
import logging
import re
import ssl
from functools import partial
from typing import TYPE_CHECKING, Any, Final
from urllib.parse import urlsplit, urlunsplit

import attrs
import httpx
import trio
from prometheus_client import Counter, Gauge
from quart import Response, request

from ocpd.logs import get_logger, log_event
from ocpd.proto.errors import MalformedError, OcpError, PayloadTooLarge
from ocpd.proto.ids import parse_node_id
from ocpd.proto.strictjson import loads_strict
from ocpd.registry.intake import KINDS, Deferred
from ocpd.registry.service import API, FEED_EPOCH_HEADER, NODE_ID_HEADER
from ocpd.registry.tables import (
    load_federation_txn,
    parked_txn,
    reset_peer_txn,
    save_progress_txn,
    settle_parked_txn,
    text,
)
from ocpd.storage import StorageError

if TYPE_CHECKING:
    from prometheus_client import CollectorRegistry
    from quart_trio import QuartTrio

    from ocpd.clock import WallClock
    from ocpd.config import Config
    from ocpd.registry.intake import ArtifactStore, Change
    from ocpd.storage import Database

__all__ = ["PUSH_PATH", "Federation", "Peer", "peer_base_url"]

PUSH_PATH: Final = f"{API}/federation/push"
PAGE_LIMIT: Final = 200
MAX_PAGE_BYTES: Final = 64 * 1024 * 1024
MAX_PUSH_BODY: Final = 4096
REQUEST_TIMEOUT: Final = 15.0
MIN_PULL_SPACING: Final = 0.05
PUSH_BACKOFF: Final = (0.25, 30.0)
PARK_ATTEMPTS: Final = 30
PARK_MAX_AGE: Final = 86_400.0
MAX_PARKED_PER_PEER: Final = 10_000
_EPOCH: Final = re.compile(r"[0-9a-f]{32}")

log = get_logger("federation")


def peer_base_url(url: str) -> str:
    """The base URL of a peer registry, whether configured with or without ``/ocp/v1``."""
    parts = urlsplit(url.strip())
    path = parts.path.rstrip("/")
    for suffix in (API, "/ocp/v1"):
        if path.endswith(suffix):
            path = path[: -len(suffix)]
            break
    return urlunsplit((parts.scheme, parts.netloc, path, "", ""))


def _label(base: str) -> str:
    """The base URL without credentials: the peer's name in metrics, logs and the database."""
    parts = urlsplit(base)
    host = parts.hostname or ""
    if ":" in host:
        host = f"[{host}]"
    if parts.port is not None:
        host = f"{host}:{parts.port}"
    return urlunsplit((parts.scheme, host, parts.path, "", ""))


@attrs.define(eq=False)
class Peer:
    base: str
    label: str
    cursor: int = 0
    node_id: str | None = None
    feed_epoch: str | None = None
    wake: trio.Event = attrs.Factory(trio.Event)
    """Set when the peer says it has news: pull now."""
    news: trio.Event = attrs.Factory(trio.Event)
    """Set when a change here is to be announced to the peer."""
    latest: int = 0
    """The newest local change the peer is to hear about."""
    parked: int = 0

    @property
    def sync_url(self) -> str:
        return f"{self.base}{API}/sync"

    @property
    def push_url(self) -> str:
        return f"{self.base}{PUSH_PATH}"


class SyncError(Exception):
    """A peer's feed could not be read (transport, status, shape)."""


@attrs.frozen
class _Page:
    changes: list[tuple[int, str, dict[str, Any]]]
    cursor: int
    more: bool
    node_id: str | None
    feed_epoch: str | None


@attrs.define
class _Tally:
    stored: int = 0
    unchanged: int = 0
    rejected: int = 0
    deferred: int = 0

    def total(self) -> int:
        return self.stored + self.unchanged + self.rejected + self.deferred


def ssl_context_for_peers(ca_file: str | None) -> ssl.SSLContext:
    """The system trust store plus deployment-local roots."""
    context = ssl.create_default_context()
    if ca_file is not None:
        context.load_verify_locations(ca_file)
    return context


def _parse_page(response: httpx.Response, content: bytes, since: int) -> _Page:
    if response.status_code != 200:
        raise SyncError(f"the feed answered HTTP {response.status_code}")
    try:
        data = loads_strict(content, max_size=MAX_PAGE_BYTES)
    except OcpError as exc:
        raise SyncError(f"the feed is not strict JSON: {exc.message}") from exc
    if not isinstance(data, dict) or set(data) != {"changes", "cursor", "more"}:
        raise SyncError("the feed page is not {changes, cursor, more}")
    changes, cursor, more = data["changes"], data["cursor"], data["more"]
    if not isinstance(changes, list) or not isinstance(more, bool):
        raise SyncError("the feed page has the wrong types")
    if isinstance(cursor, bool) or not isinstance(cursor, int) or cursor < since:
        raise SyncError("the feed cursor went backwards")
    out: list[tuple[int, str, dict[str, Any]]] = []
    last = since
    for change in changes:
        if not isinstance(change, dict) or set(change) != {"seq", "kind", "body"}:
            raise SyncError("a feed change is not {seq, kind, body}")
        seq, kind, body = change["seq"], change["kind"], change["body"]
        if isinstance(seq, bool) or not isinstance(seq, int) or not last < seq <= cursor:
            raise SyncError("feed changes are not in order after the cursor")
        if not isinstance(kind, str) or not isinstance(body, dict):
            raise SyncError("a feed change has the wrong types")
        out.append((seq, kind, body))
        last = seq
    if more and not out:
        raise SyncError("the feed says there is more but sent nothing")
    node_id = response.headers.get(NODE_ID_HEADER)
    if node_id is not None:
        try:
            parse_node_id(node_id, field=NODE_ID_HEADER)
        except OcpError:
            node_id = None
    epoch = response.headers.get(FEED_EPOCH_HEADER)
    if epoch is not None and _EPOCH.fullmatch(epoch) is None:
        epoch = None
    return _Page(out, cursor, more, node_id, epoch)


class Federation:
    """Keeps this registry and its peers in step (see the module notes)."""

    def __init__(
        self,
        store: ArtifactStore,
        database: Database,
        config: Config,
        clock: WallClock,
        metrics: CollectorRegistry,
        *,
        changes: trio.MemoryReceiveChannel[Change],
        node_id: str,
        client: httpx.AsyncClient | None = None,
    ) -> None:
        self.store = store
        self.database = database
        self.clock = clock
        self.node_id = node_id
        self.interval = config.registry.sync_interval_seconds
        self._changes = changes
        self.peers: list[Peer] = []
        for url in config.registry.peers:
            base = peer_base_url(url)
            if all(p.base != base for p in self.peers):
                self.peers.append(Peer(base=base, label=_label(base)))
        self._by_label = {p.label: p for p in self.peers}
        self._http = client or httpx.AsyncClient(
            verify=ssl_context_for_peers(config.registry.peer_ca_file),
            timeout=REQUEST_TIMEOUT,
            follow_redirects=False,
        )
        self.loaded = trio.Event()
        self._parked_wake = trio.Event()
        self._retry_lock = trio.Lock()
        self.ingested = Counter(
            "ocpd_federation_ingested_total",
            "Artifacts from a peer that were new here and stored",
            ["peer", "kind"],
            registry=metrics,
        )
        self.rejected = Counter(
            "ocpd_federation_rejected_total",
            "Artifacts from a peer that failed verification (never stored or passed on)",
            ["peer", "kind"],
            registry=metrics,
        )
        self.deferred = Counter(
            "ocpd_federation_deferred_total",
            "Artifacts from a peer that could not be checked yet and wait for a later round",
            ["peer", "kind"],
            registry=metrics,
        )
        self.sync_errors = Counter(
            "ocpd_federation_sync_errors_total",
            "Pull rounds that failed (transport, status or feed shape)",
            ["peer"],
            registry=metrics,
        )
        self.cursor_gauge = Gauge(
            "ocpd_federation_cursor",
            "The last feed position pulled from a peer",
            ["peer"],
            registry=metrics,
        )
        self.last_sync = Gauge(
            "ocpd_federation_last_sync_timestamp_seconds",
            "Wall-clock time of the last complete pull from a peer (lag: time() - this)",
            ["peer"],
            registry=metrics,
        )
        self.parked_gauge = Gauge(
            "ocpd_federation_parked", "Changes waiting to be checked again", registry=metrics
        )
        self.pushes = Counter(
            "ocpd_federation_pushes_total",
            "Notifications of new changes sent to a peer, by result",
            ["peer", "result"],
            registry=metrics,
        )
        dropped = Gauge(
            "ocpd_federation_announcements_dropped",
            "Committed changes not announced to peers because the queue was full "
            "(peers still pull them on their interval)",
            registry=metrics,
        )
        dropped.set_function(lambda: float(store.dropped_changes))
        self.notified = Counter(
            "ocpd_federation_notifications_total",
            "Notifications received, by the peer they came from ('unknown' if none matched)",
            ["peer"],
            registry=metrics,
        )

    # --- service ------------------------------------------------------------------------

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        await self._load()
        async with self._http, self._changes, trio.open_nursery() as nursery:
            for peer in self.peers:
                nursery.start_soon(self._puller, peer)
                nursery.start_soon(self._pusher, peer)
            nursery.start_soon(self._fan_out)
            nursery.start_soon(self._parked_loop)
            self.loaded.set()
            log_event(
                log,
                "federation_started",
                peers=[p.label for p in self.peers],
                cursors={p.label: p.cursor for p in self.peers},
                sync_interval_seconds=self.interval,
            )
            task_status.started()

    async def _load(self) -> None:
        rows, parked = await self.database.read(load_federation_txn)
        for label, cursor, node_id, feed_epoch in rows:
            peer = self._by_label.get(label)
            if peer is not None:
                peer.cursor, peer.node_id, peer.feed_epoch = cursor, node_id, feed_epoch
        for label, count in parked:
            peer = self._by_label.get(label)
            if peer is not None:
                peer.parked = count
        for peer in self.peers:
            self.cursor_gauge.labels(peer.label).set(peer.cursor)
        self._refresh_parked()

    def _refresh_parked(self) -> None:
        self.parked_gauge.set(sum(p.parked for p in self.peers))

    # --- pull ---------------------------------------------------------------------------------

    async def _puller(self, peer: Peer) -> None:
        failures = 0
        while True:
            started = trio.current_time()
            try:
                await self.pull(peer)
            except Exception as exc:  # one peer's trouble stays with that peer
                failures += 1
                self.sync_errors.labels(peer.label).inc()
                if failures & (failures - 1) == 0:  # 1st, 2nd, 4th, 8th… in a row
                    expected = isinstance(exc, SyncError | httpx.HTTPError | trio.TooSlowError)
                    log_event(
                        log,
                        "federation_sync_failed",
                        level=logging.WARNING if expected else logging.ERROR,
                        peer=peer.label,
                        failures=failures,
                        error=_describe(exc),
                    )
            else:
                if failures:
                    log_event(log, "federation_sync_recovered", peer=peer.label, failures=failures)
                failures = 0
            delay = self.interval if not failures else min(self.interval, 2.0 ** (failures - 1))
            with trio.move_on_at(trio.current_time() + delay):
                await peer.wake.wait()
            peer.wake = trio.Event()
            await trio.sleep_until(started + MIN_PULL_SPACING)

    async def pull(self, peer: Peer) -> _Tally:
        """Pull ``peer``'s feed from its cursor to its end; returns what happened."""
        tally = _Tally()
        since_start = peer.cursor
        started = trio.current_time()
        while True:
            since = peer.cursor
            page = await self._fetch(peer, since)
            if (page.node_id is not None and peer.node_id not in (None, page.node_id)) or (
                page.feed_epoch is not None and peer.feed_epoch not in (None, page.feed_epoch)
            ):
                await self._peer_reset(peer, page.node_id, page.feed_epoch)
                continue
            page_tally = _Tally()
            parked: list[tuple[int, str, str]] = []
            for seq, kind, body in page.changes:
                result = await self._ingest(peer, seq, kind, body)
                setattr(page_tally, result, getattr(page_tally, result) + 1)
                if result == "deferred":
                    if peer.parked + len(parked) < MAX_PARKED_PER_PEER:
                        parked.append((seq, kind, text(body)))
                    else:
                        log_event(
                            log,
                            "federation_park_full",
                            level=logging.WARNING,
                            peer=peer.label,
                            seq=seq,
                            kind=kind,
                        )
            news = (
                page.changes
                or page.cursor != since
                or page.node_id != peer.node_id
                or page.feed_epoch != peer.feed_epoch
            )
            if news:  # an empty page after the cursor changes nothing worth a commit
                await self.database.write(
                    partial(
                        save_progress_txn,
                        peer.label,
                        page.cursor,
                        page_tally.rejected,
                        self.clock.now(),
                        page.node_id,
                        page.feed_epoch,
                        parked,
                    )
                )
            peer.cursor = page.cursor
            peer.node_id = page.node_id or peer.node_id
            peer.feed_epoch = page.feed_epoch or peer.feed_epoch
            peer.parked += len(parked)
            self.store.settle()
            self.cursor_gauge.labels(peer.label).set(peer.cursor)
            for name in ("stored", "unchanged", "rejected", "deferred"):
                setattr(tally, name, getattr(tally, name) + getattr(page_tally, name))
            if parked:
                self._refresh_parked()
            if not page.more:
                break
        self.last_sync.labels(peer.label).set(self.clock.now())
        if tally.stored and any(p.parked for p in self.peers):
            self._parked_wake.set()
        if tally.total():
            log_event(
                log,
                "federation_synced",
                peer=peer.label,
                since=since_start,
                cursor=peer.cursor,
                stored=tally.stored,
                unchanged=tally.unchanged,
                rejected=tally.rejected,
                deferred=tally.deferred,
                seconds=round(trio.current_time() - started, 4),
            )
        return tally

    async def _fetch(self, peer: Peer, since: int) -> _Page:
        """One page of the peer's feed, read up to ``MAX_PAGE_BYTES`` and checked.

        A page over the limit is asked for again with fewer changes, down to one.
        """
        limit = PAGE_LIMIT
        while True:
            params = {"since": since, "limit": limit}
            with trio.fail_after(REQUEST_TIMEOUT * 2):
                async with self._http.stream("GET", peer.sync_url, params=params) as response:
                    content = bytearray()
                    async for chunk in response.aiter_bytes():
                        content += chunk
                        if len(content) > MAX_PAGE_BYTES:
                            break
            if len(content) <= MAX_PAGE_BYTES:
                return _parse_page(response, bytes(content), since)
            if limit == 1:
                raise SyncError(f"one change of the feed exceeds {MAX_PAGE_BYTES} bytes")
            limit = max(1, limit // 4)

    async def _peer_reset(self, peer: Peer, node_id: str | None, feed_epoch: str | None) -> None:
        log_event(
            log,
            "federation_peer_identity_changed",
            level=logging.WARNING,
            peer=peer.label,
            previous=peer.node_id,
            node_id=node_id,
            previous_epoch=peer.feed_epoch,
            feed_epoch=feed_epoch,
            detail="the peer lost its data or was restored: pulling its feed from the start",
        )
        await self.database.write(partial(reset_peer_txn, peer.label, node_id, feed_epoch))
        peer.cursor = 0
        peer.node_id = node_id or peer.node_id
        peer.feed_epoch = feed_epoch or peer.feed_epoch

    async def _ingest(self, peer: Peer, seq: int, kind: str, body: dict[str, Any]) -> str:
        """One change through the registry's apply path; returns the tally field it counts in."""
        if kind not in KINDS:
            # A kind from a newer version: not ours to check, so not ours to keep.
            log_event(log, "federation_unknown_kind", level=logging.DEBUG, peer=peer.label)
            return "unchanged"
        try:
            outcome = await self.store.ingest(kind, body, origin=peer.label)
        except Deferred as exc:
            self.deferred.labels(peer.label, kind).inc()
            log_event(
                log,
                "federation_deferred",
                level=logging.DEBUG,
                peer=peer.label,
                kind=kind,
                seq=seq,
                reason=exc.reason[:200],
            )
            return "deferred"
        except OcpError as exc:
            self._count_rejection(peer, kind, seq, exc.code, exc.message)
            return "rejected"
        except StorageError:
            raise
        except Exception as exc:  # a check that failed in an unforeseen way
            log.exception("federation_ingest_failed")
            self._count_rejection(peer, kind, seq, "OCP-500", type(exc).__name__)
            return "rejected"
        if outcome.stored:
            self.ingested.labels(peer.label, kind).inc()
            return "stored"
        return "unchanged"

    def _count_rejection(self, peer: Peer, kind: str, seq: int, code: str, reason: str) -> None:
        self.rejected.labels(peer.label, kind).inc()
        log_event(
            log,
            "federation_rejected",
            level=logging.WARNING,
            peer=peer.label,
            kind=kind,
            seq=seq,
            error_code=code,
            reason=reason[:200],
        )

    # --- parked changes -----------------------------------------------------------------------

    async def _parked_loop(self) -> None:
        while True:
            with trio.move_on_after(self.interval):
                await self._parked_wake.wait()
            self._parked_wake = trio.Event()
            if any(p.parked for p in self.peers):
                await self.retry_parked()

    async def retry_parked(self) -> None:
        """Try parked changes again; drop those that waited too often or too long."""
        async with self._retry_lock:
            rows = await self.database.read(parked_txn)
            now = self.clock.now()
            done: list[tuple[str, int]] = []
            again: list[tuple[str, int]] = []
            rejected: dict[str, int] = {}
            for label, seq, kind, text, attempts, parked_at in rows:
                peer = self._by_label.get(label)
                if peer is None:
                    done.append((label, seq))
                    continue
                result = await self._ingest(peer, seq, kind, json.loads(text))
                if result == "rejected":
                    rejected[label] = rejected.get(label, 0) + 1
                if result != "deferred":
                    done.append((label, seq))
                elif attempts + 1 >= PARK_ATTEMPTS or now - parked_at > PARK_MAX_AGE:
                    done.append((label, seq))
                    log_event(
                        log,
                        "federation_parked_dropped",
                        level=logging.WARNING,
                        peer=label,
                        kind=kind,
                        seq=seq,
                        attempts=attempts + 1,
                    )
                else:
                    again.append((label, seq))

            await self.database.write(partial(settle_parked_txn, done, again, rejected))
            self.store.settle()
            for label, _ in done:
                peer = self._by_label.get(label)
                if peer is not None:
                    peer.parked = max(0, peer.parked - 1)
            self._refresh_parked()

    # --- push -----------------------------------------------------------------------------------

    async def _fan_out(self) -> None:
        async for change in self._changes:
            for peer in self.peers:
                if peer.label != change.origin:
                    peer.latest = max(peer.latest, change.seq)
                    peer.news.set()

    async def _pusher(self, peer: Peer) -> None:
        failures = 0
        while True:
            await peer.news.wait()
            peer.news = trio.Event()
            body = {"node_id": self.node_id, "cursor": peer.latest}
            try:
                with trio.fail_after(REQUEST_TIMEOUT):
                    response = await self._http.post(peer.push_url, json=body)
                if response.status_code >= 300:
                    raise SyncError(f"the peer answered HTTP {response.status_code}")
            except (SyncError, httpx.HTTPError, trio.TooSlowError) as exc:
                failures += 1
                self.pushes.labels(peer.label, "error").inc()
                if failures & (failures - 1) == 0:
                    log_event(
                        log,
                        "federation_push_failed",
                        level=logging.INFO,
                        peer=peer.label,
                        failures=failures,
                        error=_describe(exc),
                    )
                # The peer pulls on its own interval anyway; news that comes
                # in while we wait goes out with the next attempt.
                low, high = PUSH_BACKOFF
                await trio.sleep(min(high, low * 2 ** (failures - 1)))
            else:
                failures = 0
                self.pushes.labels(peer.label, "ok").inc()

    def install(self, app: QuartTrio) -> None:
        app.add_url_rule(PUSH_PATH, "registry_federation_push", self.receive_push, methods=["POST"])

    async def receive_push(self) -> Response:
        """A peer has news: pull from it now (the body only says who and how far)."""
        await self.loaded.wait()
        try:
            length = request.content_length
            if length is not None and length > MAX_PUSH_BODY:
                raise PayloadTooLarge(f"a push notification has at most {MAX_PUSH_BODY} bytes")
            raw = await request.get_data(cache=False, as_text=False)
            if not isinstance(raw, bytes):  # pragma: no cover - quart returns bytes here
                raise MalformedError("unreadable body")
            body = loads_strict(raw, max_size=MAX_PUSH_BODY)
            if not isinstance(body, dict):
                raise MalformedError("a push notification is {node_id, cursor}")
        except OcpError as exc:
            payload = {"error_code": exc.code, "message": exc.message}
            return Response(
                json.dumps(payload), status=exc.http_status, content_type="application/json"
            )
        node_id, cursor = body.get("node_id"), body.get("cursor")
        senders = [p for p in self.peers if p.node_id is not None and p.node_id == node_id]
        for peer in senders:
            self.notified.labels(peer.label).inc()
            if not isinstance(cursor, int) or isinstance(cursor, bool) or cursor > peer.cursor:
                peer.wake.set()
        if not senders:
            self.notified.labels("unknown").inc()
            for peer in self.peers:
                peer.wake.set()
        return Response('{"status":"accepted"}', status=202, content_type="application/json")


def _describe(exc: BaseException) -> str:
    """One line for the log: the error and, when it says nothing, its cause.

    httpx reports a failed TLS verification as a bare ``ConnectError``; the
    reason (``CERTIFICATE_VERIFY_FAILED`` …) is on the exception it wraps.
    """
    parts: list[str] = []
    current: BaseException | None = exc
    while current is not None and len(parts) < 3:
        text = str(current).splitlines()[0] if str(current) else ""
        parts.append(f"{type(current).__name__}: {text}" if text else type(current).__name__)
        if text:
            break
        current = current.__cause__ or current.__context__
    return " <- ".join(parts)[:200]
