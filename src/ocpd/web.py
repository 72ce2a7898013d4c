"""The HTTP surface every component shares: ``/health`` and ``/metrics``.

Each bound port gets its own Quart-Trio app (protocol routes are added by the
component that owns the port). Health follows Docker §7.1: a real write probe
through the component's group commit for ``database_writable``, free disk
space in the data directory and available memory against configured
thresholds. A failing database makes the component ``unhealthy`` (503);
failing disk or memory checks make it ``degraded`` (200).
"""

from __future__ import annotations

import json
import shutil
from typing import TYPE_CHECKING, Any, Final

import attrs
import trio
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    PlatformCollector,
    ProcessCollector,
    generate_latest,
)
from quart import Response, g, request
from quart_trio import QuartTrio
from werkzeug.exceptions import RequestEntityTooLarge

import ocpd
from ocpd.proto.errors import PayloadTooLarge, RequestTimeout

if TYPE_CHECKING:
    import sqlite3
    from collections.abc import Callable, Sequence
    from pathlib import Path

    from ocpd.storage import Database

__all__ = ["ComponentState", "Metrics", "create_app"]

HEALTH_PROBE_TIMEOUT: Final = 2.0


class Metrics:
    """The process's Prometheus registry and the families that exist so far."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        ProcessCollector(registry=self.registry)
        PlatformCollector(registry=self.registry)
        self.request_duration = Histogram(
            "ocp_request_duration_seconds",
            "Request latency",
            ["endpoint"],
            buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0),
            registry=self.registry,
        )
        self.requests = Counter(
            "ocpd_http_requests_total",
            "HTTP requests by endpoint and status code",
            ["endpoint", "code"],
            registry=self.registry,
        )
        self.database_size = Gauge(
            "ocp_database_size_bytes", "SQLite database size", ["component"], registry=self.registry
        )
        self.database_commits = Gauge(
            "ocpd_database_commits",
            "Group commits since start",
            ["component"],
            registry=self.registry,
        )
        self.database_writes = Gauge(
            "ocpd_database_writes",
            "Writes committed since start",
            ["component"],
            registry=self.registry,
        )
        self.info = Gauge(
            "ocpd_info",
            "Constant 1, labelled with version, network and component",
            ["version", "network", "component"],
            registry=self.registry,
        )
        self.up = Gauge(
            "ocpd_up", "1 while the component serves", ["component"], registry=self.registry
        )
        # The transport node's families (Docker §7.4); here so that any
        # component may count into them without registering them twice.
        self.messages = Counter(
            "ocp_messages_total",
            "Messages processed by the node, by message type and outcome",
            ["type", "status"],
            registry=self.registry,
        )
        self.active_websockets = Gauge(
            "ocp_active_websockets", "Current WebSocket connections", registry=self.registry
        )
        self.pvl_rejections = Counter(
            "ocp_pvl_rejections_total",
            "PVL rejections by code",
            ["code"],
            registry=self.registry,
        )
        self.consensus_rounds = Counter(
            "ocp_consensus_rounds_total",
            "Consensus rounds by status (resolved, no_consensus, unresolved)",
            ["status"],
            registry=self.registry,
        )
        self.tasks = Counter(
            "ocpd_tasks_total",
            "Task status changes the node recorded, by the new status",
            ["status"],
            registry=self.registry,
        )
        self.rate_limit_hits = Counter(
            "ocp_rate_limit_hits_total",
            "Rate limit rejections",
            ["operation"],
            registry=self.registry,
        )
        self.deliveries = Counter(
            "ocpd_deliveries_total",
            "Queued messages leaving the node's queue: sent to a session, handed on to "
            "another node (forwarded), undeliverable (failed), or expired unsent",
            ["outcome"],
            registry=self.registry,
        )
        self.forwards = Counter(
            "ocpd_forward_attempts_total",
            "POSTs of messages to other nodes and agents' ocp-http endpoints, by outcome",
            ["outcome"],
            registry=self.registry,
        )
        # Node-to-node sessions (ocpd.net.peers).
        self.peer_sessions = Gauge(
            "ocpd_peer_sessions",
            "Peer sessions by state: handshaking (dials and answers under way) or established",
            ["state"],
            registry=self.registry,
        )
        self.peer_handshakes = Counter(
            "ocpd_peer_handshakes_total",
            "Peer handshakes by direction and outcome (accepted, or the NET error code)",
            ["direction", "outcome"],
            registry=self.registry,
        )
        self.peer_keepalive_lost = Counter(
            "ocpd_peer_keepalive_lost_total",
            "Peer sessions lost: silent past the keepalive bound, closed or broken",
            registry=self.registry,
        )
        self.peer_advertisements = Counter(
            "ocpd_peer_advertisements_total",
            "Node advertisements received, by outcome (accepted, or the NET error code)",
            ["outcome"],
            registry=self.registry,
        )
        self.peer_messages = Counter(
            "ocpd_peer_messages_total",
            "OCP messages over peer sessions, by direction and outcome",
            ["direction", "outcome"],
            registry=self.registry,
        )


@attrs.define
class ComponentState:
    """What a component's HTTP handlers need: its name, database and thresholds."""

    component: str
    network: str
    database: Database
    data_dir: Path
    metrics: Metrics
    started_at: float
    min_free_disk_bytes: int
    min_available_memory_bytes: int

    async def health(self) -> tuple[dict[str, Any], int]:
        database_ok = await self._database_writable()
        disk_ok = shutil.disk_usage(self.data_dir).free >= self.min_free_disk_bytes
        available = _available_memory()
        # Unknown (no /proc/meminfo, no cgroup limit) is not a failure.
        memory_ok = available is None or available >= self.min_available_memory_bytes
        if not database_ok:
            status, code = "unhealthy", 503
        elif disk_ok and memory_ok:
            status, code = "healthy", 200
        else:
            status, code = "degraded", 200
        body = {
            "status": status,
            "component": self.component,
            "version": ocpd.__version__,
            "network": self.network,
            "uptime_seconds": int(trio.current_time() - self.started_at),
            "database": "connected" if database_ok else "unavailable",
            "checks": {
                "database_writable": database_ok,
                "disk_space_ok": disk_ok,
                "memory_ok": memory_ok,
            },
        }
        return body, code

    async def _database_writable(self) -> bool:
        def probe(conn: sqlite3.Connection) -> None:
            conn.execute(
                "INSERT INTO ocpd_meta (key, value) VALUES ('health_probe', datetime('now')) "
                "ON CONFLICT (key) DO UPDATE SET value = excluded.value"
            )

        with trio.move_on_after(HEALTH_PROBE_TIMEOUT):
            try:
                await self.database.write(probe)
            except Exception:
                return False
            return True
        return False

    def refresh_metrics(self) -> None:
        m, c = self.metrics, self.component
        m.database_size.labels(c).set(self.database.size_bytes())
        m.database_commits.labels(c).set(self.database.commits)
        m.database_writes.labels(c).set(self.database.writes)


def _available_memory() -> int | None:
    """Bytes this process can still use, or ``None`` when nothing tells.

    The smaller of the host's MemAvailable and the room left under the
    cgroup's ``memory.max`` (containers and systemd units set one).
    """
    limits: list[int] = []
    try:
        with open("/proc/meminfo", encoding="ascii") as meminfo:
            for line in meminfo:
                if line.startswith("MemAvailable:"):
                    limits.append(int(line.split()[1]) * 1024)
                    break
    except OSError:
        pass
    try:
        with open("/sys/fs/cgroup/memory.max", encoding="ascii") as limit_file:
            limit = limit_file.read().strip()
        with open("/sys/fs/cgroup/memory.current", encoding="ascii") as current_file:
            current = int(current_file.read().strip())
        if limit != "max":
            limits.append(max(0, int(limit) - current))
    except (OSError, ValueError):
        pass
    return min(limits) if limits else None


def create_app(
    name: str,
    states: list[ComponentState],
    *,
    installers: Sequence[Callable[[QuartTrio], None]] = (),
) -> QuartTrio:
    """The app for one port, serving the health of the components behind it.

    ``/health`` reports the first state (the port's own component).
    ``/metrics`` covers the whole process.
    """
    app = QuartTrio(f"ocpd.{name}", static_folder=None)
    app.config["MAX_CONTENT_LENGTH"] = 16 * 1024 * 1024
    own = states[0]
    metrics = own.metrics

    @app.get("/health")
    async def health() -> Response:
        body, code = await own.health()
        return Response(_json(body), status=code, content_type="application/json")

    @app.get("/metrics")
    async def metrics_endpoint() -> Response:
        for state in states:
            state.refresh_metrics()
        payload = await trio.to_thread.run_sync(generate_latest, metrics.registry)
        return Response(payload, status=200, content_type=CONTENT_TYPE_LATEST)

    @app.before_request
    async def _start_timer() -> None:
        g.request_started = trio.current_time()

    @app.after_request
    async def _observe(response: Response) -> Response:
        started = g.get("request_started")
        rule = request.url_rule.rule if request.url_rule is not None else "other"
        if started is not None:
            metrics.request_duration.labels(rule).observe(trio.current_time() - started)
        metrics.requests.labels(rule, str(response.status_code)).inc()
        return response

    for install in installers:
        install(app)
    return app


def _json(body: dict[str, Any]) -> str:
    return json.dumps(body, separators=(",", ":"))


async def read_limited_body(limit: int, *, within: float) -> bytes:
    """The current request's body, refused (OCP-413) as soon as it is known to exceed
    ``limit`` bytes: by its ``Content-Length``, or while it streams; OCP-408 when it
    does not arrive within ``within`` seconds."""
    declared = request.content_length
    if declared is not None and declared > limit:
        raise _too_large(declared, limit)
    data = bytearray()
    try:
        with trio.fail_after(within):
            async for chunk in request.body:
                data += chunk
                if len(data) > limit:
                    raise _too_large(len(data), limit)
    except trio.TooSlowError:
        raise RequestTimeout("the body did not arrive in time") from None
    except RequestEntityTooLarge:
        raise _too_large(None, limit) from None
    return bytes(data)


def _too_large(size: int | None, limit: int) -> PayloadTooLarge:
    what = f"body of {size} bytes" if size is not None else "body"
    return PayloadTooLarge(f"{what} exceeds the limit of {limit}", details={"limit": limit})
