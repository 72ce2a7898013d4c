"""The seed directory (NET FR-007a-c, D8): node advertisements, open to every node.

Routes, on the registry port:

* ``PUT /adv/<node-id>`` publishes or replaces the node's current
  node-advertisement.v1. There is no Authorization: the advertisement is
  signed by the key inside ``node/id`` and that is all the proof needed.
  ``201`` when the node had no current advertisement, ``200`` when one was
  replaced; the body is ``{"node/id", "sequence/no", "cursor"}``.
* ``GET /adv/<node-id>`` returns the current advertisement exactly as it was
  received (the bytes that were signed, never re-serialised), or ``404``.
* ``GET /adv?since=<cursor>&limit=<n>`` is the incremental feed (NFR-008):
  ``{"advertisements": [...], "cursor": <last cursor returned, or since>,
  "more": <bool>}`` in cursor order, unexpired ones only. ``limit`` defaults to
  100 and is clamped to ``page_limit``; ``since`` defaults to 0.
* No delete (FR-007c): advertisements leave by expiry. Expired ones are
  invisible at once (every query filters on ``expires_at``) and a sweeper
  deletes them every ``sweep_interval`` seconds.

Order of checks for a PUT: the client address's budget, the path's node id,
the size (``Content-Length``, then while reading), strict JSON, then
:func:`verify_node_advertisement` (shape, signer, signature, freshness), then
the publisher's budget, then the sequence check and the write in one
transaction.

Status codes. Errors are ``{"error_code", "error_class" (E_ codes only),
"message", "details"?}``:

* ``E_ADV_STALE_SEQ`` (equal or older ``sequence/no``): 409, the artifact is
  valid but conflicts with the current state (FR-004d);
* ``E_PROTO_INVALID`` (shape, path node id, another node's advertisement),
  ``E_SIG_INVALID``, ``E_SIG_UNKNOWN_SIGNER`` and ``E_ADV_EXPIRED``: 400,
  what :func:`~ocpd.proto.errors.http_status_for` gives every NET code;
* ``OCP-400`` (not strict JSON, a bad query parameter): 400;
* ``OCP-404`` (no current advertisement for the node): 404;
* ``OCP-408`` (the body did not arrive within ``BODY_TIMEOUT``): 408;
* ``OCP-413`` (a body over ``max_body``): 413;
* ``OCP-429`` (a rate limit): 429 with ``Retry-After`` (whole seconds);
* ``OCP-503`` (the database failed): 503.

Signature failures are 400, not 401: the request carries no credentials and
there is no challenge to answer (a 401 must send ``WWW-Authenticate``); the
signature is part of the representation, which is invalid. Expired
advertisements are 400, not 410: 410 describes the target resource, whereas
here the submitted artifact is unusable as sent (decisions.md #7 chose the
same for expired messages). The ``error_code`` is the machine-readable part.

Rate limits (FR-007b) are GCRA token buckets on trio's clock, so that
``publish_rate`` publishes per ``publish_window`` may come in one burst and
then one per ``publish_window / publish_rate`` seconds:

* per client address, charged for every PUT before anything is parsed, at
  ``IP_RATE_FACTOR`` times the publish rate: this bounds what garbage and
  signature checks can cost. The address is the TCP peer of the ASGI scope
  (behind a TLS-terminating proxy, the proxy's); IPv6 peers
  are keyed by their /64, which one host usually has to itself;
* per node id, charged only once the advertisement verified and refunded
  when it turns out stale, so neither forged nor replayed PUTs can spend a
  node's budget: only publishes that take effect count.

Cursors come from a counter kept in ``ocpd_meta`` as well as the column:
``max(cursor) + 1`` alone would hand out a cursor again after the sweeper
deleted the newest row, and a client already past it would miss the new
advertisement.
"""

from __future__ import annotations

import ipaddress
import json
import logging
import re
from functools import partial
from typing import TYPE_CHECKING, Any, Final, Protocol

import trio
from prometheus_client import Counter, Gauge
from quart import Response, request

from ocpd.logs import get_logger, log_fields
from ocpd.proto.encoding import parse_timestamp
from ocpd.proto.errors import (
    MalformedError,
    NetError,
    NotFoundError,
    OcpError,
    RateLimited,
    Unavailable,
)
from ocpd.proto.ids import parse_node_id
from ocpd.proto.netartifacts import check_sequence, verify_node_advertisement
from ocpd.proto.ratelimit import RateLimiter
from ocpd.proto.strictjson import MAX_SAFE_INTEGER, loads_strict
from ocpd.storage import StorageError
from ocpd.web import read_limited_body

if TYPE_CHECKING:
    import sqlite3

    from prometheus_client import CollectorRegistry
    from quart_trio import QuartTrio

    from ocpd.storage import Database

__all__ = ["IP_RATE_FACTOR", "SeedDirectory", "address_key"]

#: Every PUT from one address costs one unit of a budget this many times the
#: per-node publish rate.
IP_RATE_FACTOR: Final = 10
#: Seconds a client has to send the whole body.
BODY_TIMEOUT: Final = 30.0
DEFAULT_LIMIT: Final = 100

_JSON: Final = "application/json"
_CURSOR_KEY: Final = "seeddir/cursor"
_DECIMAL: Final = re.compile(r"[0-9]{1,16}")
#: The frozen class nearest to each OCP code, for ``advertisement/rejected``
#: logs (FR-023 wants every failure classified).
_OCP_CLASSES: Final = {
    "OCP-400": "protocol/invalid-contract",
    "OCP-408": "transport/unavailable",
    "OCP-413": "protocol/invalid-contract",
    "OCP-429": "transport/rejected",
    "OCP-503": "transport/unavailable",
}
_STATUS: Final = {"E_ADV_STALE_SEQ": 409}

log = get_logger("registry")


class WallClockLike(Protocol):
    def now(self) -> float: ...


class SeedDirectory:
    """The seed directory's routes, its sweeper and its metrics."""

    def __init__(
        self,
        database: Database,
        clock: WallClockLike,
        metrics_registry: CollectorRegistry,
        *,
        sweep_interval: float = 60.0,
        publish_rate: int = 10,
        publish_window: float = 60.0,
        max_body: int = 65536,
        clock_skew: float = 30.0,
        page_limit: int = 500,
    ) -> None:
        if publish_rate < 1 or publish_window <= 0 or page_limit < 1 or sweep_interval <= 0:
            raise ValueError("rates, windows, intervals and page limits must be positive")
        self._database = database
        self._clock = clock
        self.sweep_interval = sweep_interval
        self.max_body = max_body
        self.clock_skew = clock_skew
        self.page_limit = page_limit
        self._publishers = RateLimiter(limit=publish_rate, window=publish_window)
        self._addresses = RateLimiter(limit=publish_rate * IP_RATE_FACTOR, window=publish_window)
        self._outcomes = Counter(
            "ocpd_seed_advertisements",
            "Advertisements offered to the seed directory, by outcome (accepted or error code)",
            ["outcome"],
            registry=metrics_registry,
        )
        self._stored = Gauge(
            "ocpd_seed_advertisements_stored",
            "Advertisements in the seed directory's database (expired ones until swept)",
            registry=metrics_registry,
        )

    # --- routes ------------------------------------------------------------------------------

    def install(self, app: QuartTrio) -> None:
        app.add_url_rule("/adv/<node_id>", "seeddir_publish", self._put, methods=["PUT"])
        app.add_url_rule("/adv/<node_id>", "seeddir_fetch", self._get_one, methods=["GET"])
        app.add_url_rule("/adv", "seeddir_feed", self._get_feed, methods=["GET"])

    async def _put(self, node_id: str) -> Response:
        client = request.scope.get("client")
        peer = str(client[0]) if client else "<local>"
        try:
            status, body, sequence = await self._publish(node_id, peer)
        except OcpError as exc:
            self._reject(exc, peer, node_id)
            return _error_response(exc)
        self._outcomes.labels("accepted").inc()
        log_fields(
            log,
            "advertisement/published",
            {"peer": peer, "node/id": node_id, "sequence/no": sequence, "cursor": body["cursor"]},
        )
        return _json_response(json.dumps(body, separators=(",", ":")), status)

    async def _publish(self, node_id: str, peer: str) -> tuple[int, dict[str, Any], int]:
        wait = self._addresses.take(address_key(peer), now=trio.current_time())
        if wait is not None:
            raise RateLimited("too many publishes from this address", retry_after=wait)
        _check_node_id(node_id)
        data = await self._read_body()
        adv = loads_strict(data, max_size=self.max_body)
        now = self._clock.now()
        verify_node_advertisement(
            adv, now=now, expected_node_id=node_id, clock_skew=self.clock_skew
        )
        if not isinstance(adv, dict):  # pragma: no cover - verified as an object above
            raise NetError("advertisement must be a JSON object")
        sequence = int(adv["sequence/no"])
        expires_at = parse_timestamp(adv["expires-at"], field="expires-at")

        wait = self._publishers.take(node_id, now=trio.current_time())
        if wait is not None:
            raise RateLimited("too many publishes for this node id", retry_after=wait)
        store = partial(
            _publish_txn,
            node_id=node_id,
            sequence=sequence,
            expires_at=expires_at,
            artifact=data.decode("utf-8"),
            now=now,
        )
        try:
            cursor, created, inserted = await self._database.write(store)
        except NetError:
            self._publishers.refund(node_id)
            raise
        except StorageError as exc:
            self._publishers.refund(node_id)
            log_fields(log, "seeddir/write_failed", {"error": str(exc)}, level=logging.ERROR)
            raise Unavailable("the seed directory cannot store advertisements now") from exc
        if inserted:
            self._stored.inc()
        body = {"node/id": node_id, "sequence/no": sequence, "cursor": cursor}
        return (201 if created else 200), body, sequence

    async def _read_body(self) -> bytes:
        """The body, refused as soon as it is known to exceed ``max_body``."""
        return await read_limited_body(self.max_body, within=BODY_TIMEOUT)

    def _reject(self, exc: OcpError, peer: str, node_id: str) -> None:
        self._outcomes.labels(exc.code).inc()
        error_class = exc.cls if isinstance(exc, NetError) else _OCP_CLASSES.get(exc.code, "")
        fields: dict[str, object] = {
            "peer": peer,
            "error/code": exc.code,
            "error/class": error_class,
        }
        if _is_node_id(node_id):  # the path is the client's text until it parses
            fields["node/id"] = node_id
        level = logging.ERROR if exc.code == "OCP-503" else logging.INFO
        log_fields(log, "advertisement/rejected", fields, level=level)

    async def _get_one(self, node_id: str) -> Response:
        try:
            _check_node_id(node_id)
            artifact = await self._database.read(
                partial(_fetch_txn, node_id=node_id, now=self._clock.now())
            )
            if artifact is None:
                raise NotFoundError("no current advertisement for this node id")
        except OcpError as exc:
            return _error_response(exc)
        log_fields(log, "advertisement/fetched", {"node/id": node_id}, level=logging.DEBUG)
        return _json_response(artifact, 200)

    async def _get_feed(self) -> Response:
        try:
            since = _query_int("since", 0)
            limit = _query_int("limit", min(DEFAULT_LIMIT, self.page_limit))
            if limit < 1:
                raise MalformedError("limit must be at least 1", details={"field": "limit"})
            limit = min(limit, self.page_limit)
            rows = await self._database.read(
                partial(_feed_txn, since=since, limit=limit + 1, now=self._clock.now())
            )
        except OcpError as exc:
            return _error_response(exc)
        more = len(rows) > limit
        rows = rows[:limit]
        cursor = rows[-1][0] if rows else since
        # The stored texts are spliced in as they are: each is one strict
        # JSON object, and re-serialising would change the bytes that were signed.
        artifacts = ",".join(text for _, text in rows)
        body = (
            f'{{"advertisements":[{artifacts}],"cursor":{cursor},'
            f'"more":{"true" if more else "false"}}}'
        )
        log_fields(
            log, "advertisement/fetched", {"since": since, "count": len(rows)}, level=logging.DEBUG
        )
        return _json_response(body, 200)

    # --- sweeper -----------------------------------------------------------------------------

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Delete expired advertisements every ``sweep_interval`` seconds (FR-007c)."""
        self._stored.set(await self._database.read(_count_txn))
        task_status.started()
        deadline = trio.current_time()
        while True:
            deadline = max(deadline + self.sweep_interval, trio.current_time())
            await trio.sleep_until(deadline)
            try:
                await self.sweep()
            except StorageError as exc:
                # Expired rows are already invisible to readers; the next
                # sweep tries again, and /health reports a failing database.
                log_fields(log, "seeddir/sweep_failed", {"error": str(exc)}, level=logging.ERROR)

    async def sweep(self) -> int:
        """Delete what has expired by the wall clock now; returns how many."""
        removed = await self._database.write(partial(_sweep_txn, now=self._clock.now()))
        if removed:
            self._stored.dec(removed)
            log_fields(log, "advertisement/swept", {"count": removed})
        now = trio.current_time()
        self._publishers.prune(now)
        self._addresses.prune(now)
        return removed


# --- helpers ---------------------------------------------------------------------------------


def address_key(peer: str) -> str:
    """The rate-limit key of a client address: IPv4 as is, IPv6 by its /64."""
    try:
        address = ipaddress.ip_address(peer)
    except ValueError:
        return peer
    if isinstance(address, ipaddress.IPv6Address):
        if address.ipv4_mapped is not None:
            return str(address.ipv4_mapped)
        return str(ipaddress.IPv6Network((address, 64), strict=False))
    return str(address)


def _check_node_id(node_id: str) -> None:
    try:
        parse_node_id(node_id, field="path")
    except MalformedError as exc:
        raise NetError("the path does not name a canonical v1 node id") from exc


def _is_node_id(node_id: str) -> bool:
    try:
        _check_node_id(node_id)
    except NetError:
        return False
    return True


def _query_int(name: str, default: int) -> int:
    values = request.args.getlist(name)
    if not values:
        return default
    if len(values) > 1 or _DECIMAL.fullmatch(values[0]) is None:
        raise MalformedError(f"{name} must be one decimal integer", details={"field": name})
    value = int(values[0])
    if value > MAX_SAFE_INTEGER:
        raise MalformedError(f"{name} is too large", details={"field": name})
    return value


def _json_response(body: str, status: int) -> Response:
    return Response(body, status=status, content_type=_JSON)


def _error_response(exc: OcpError) -> Response:
    body: dict[str, object] = {"error_code": exc.code}
    if isinstance(exc, NetError):
        body["error_class"] = exc.cls
    body["message"] = exc.message
    if exc.details:
        body["details"] = exc.details
    response = _json_response(
        json.dumps(body, separators=(",", ":"), default=str),
        _STATUS.get(exc.code, exc.http_status),
    )
    if isinstance(exc, RateLimited):
        response.headers["Retry-After"] = str(exc.retry_after)
    return response


# --- storage (synchronous; run by Database.write / Database.read) ----------------------------


def _publish_txn(
    conn: sqlite3.Connection,
    *,
    node_id: str,
    sequence: int,
    expires_at: float,
    artifact: str,
    now: float,
) -> tuple[int, bool, bool]:
    """Replace the node's advertisement if ``sequence`` is newer: (cursor, created, inserted).

    An expired advertisement no longer counts as current, swept or not, so
    that the outcome does not depend on when the sweeper last ran.
    """
    row = conn.execute(
        "SELECT sequence_no, expires_at FROM advertisements WHERE node_id = ?", (node_id,)
    ).fetchone()
    current = int(row[0]) if row is not None and row[1] > now else None
    check_sequence(current, sequence)
    cursor = _next_cursor(conn)
    conn.execute(
        "INSERT INTO advertisements (node_id, sequence_no, expires_at, artifact, cursor) "
        "VALUES (?, ?, ?, ?, ?) ON CONFLICT (node_id) DO UPDATE SET "
        "sequence_no = excluded.sequence_no, expires_at = excluded.expires_at, "
        "artifact = excluded.artifact, cursor = excluded.cursor",
        (node_id, sequence, expires_at, artifact, cursor),
    )
    return cursor, current is None, row is None


def _next_cursor(conn: sqlite3.Connection) -> int:
    meta = conn.execute("SELECT value FROM ocpd_meta WHERE key = ?", (_CURSOR_KEY,)).fetchone()
    top = conn.execute("SELECT coalesce(max(cursor), 0) FROM advertisements").fetchone()[0]
    cursor = max(int(meta[0]) if meta is not None else 0, int(top)) + 1
    conn.execute(
        "INSERT INTO ocpd_meta (key, value) VALUES (?, ?) "
        "ON CONFLICT (key) DO UPDATE SET value = excluded.value",
        (_CURSOR_KEY, str(cursor)),
    )
    return cursor


def _fetch_txn(conn: sqlite3.Connection, *, node_id: str, now: float) -> str | None:
    row = conn.execute(
        "SELECT artifact FROM advertisements WHERE node_id = ? AND expires_at > ?",
        (node_id, now),
    ).fetchone()
    return None if row is None else str(row[0])


def _feed_txn(
    conn: sqlite3.Connection, *, since: int, limit: int, now: float
) -> list[tuple[int, str]]:
    rows = conn.execute(
        "SELECT cursor, artifact FROM advertisements WHERE cursor > ? AND expires_at > ? "
        "ORDER BY cursor LIMIT ?",
        (since, now, limit),
    ).fetchall()
    return [(int(cursor), str(text)) for cursor, text in rows]


def _count_txn(conn: sqlite3.Connection) -> int:
    return int(conn.execute("SELECT count(*) FROM advertisements").fetchone()[0])


def _sweep_txn(conn: sqlite3.Connection, *, now: float) -> int:
    return conn.execute("DELETE FROM advertisements WHERE expires_at <= ?", (now,)).rowcount
