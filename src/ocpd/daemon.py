"""The supervisor: one trio nursery for every service of the chosen components.

Start order (house style): configuration is already validated; the identity
and the databases are opened *outside* the nursery; then each database's
group-commit writer starts; then the listeners, last: :mod:`ocpd.server` on
the node's two ports, hypercorn on the registry's and the custodian's.
Readiness is reported once every port is bound: one ``ready`` log event that
names each listener's URL, and ``READY=1`` to systemd.

Shutdown: the first SIGTERM/SIGINT sets the stop event, which is the
servers' shutdown trigger. Listeners stop accepting, in-flight requests get up to
``node.shutdown_grace_seconds``, then the writers drain and the databases
close; the exit status is 0. A second signal cancels everything at once
(exit status 1). An exception in a service brings the daemon down loudly, so
that systemd or the container runtime restarts it.
"""

from __future__ import annotations

import gc
import logging
import os
import signal
import ssl
from functools import partial
from typing import TYPE_CHECKING, Any, Final

import attrs
import trio
from hypercorn.config import Config as HypercornConfig
from hypercorn.trio import serve

import ocpd
from ocpd.clock import WallClock
from ocpd.components import (
    START_ORDER,
    ComponentContext,
    ComponentRuntime,
    Listening,
    build_component,
)
from ocpd.config import COMPONENTS, Config, ConfigError
from ocpd.control import SOCKET_NAME, ControlSocket
from ocpd.identity import NodeIdentity, load_or_init_identity
from ocpd.logs import get_logger, hold_lines, log_event, release_lines
from ocpd.net.peers import FRAME_OVERHEAD
from ocpd.net.traces import Tracer
from ocpd.proto.hosts import is_loopback_host
from ocpd.sdnotify import Notifier
from ocpd.server import ServerSettings, serve_asgi
from ocpd.storage import Database, open_database
from ocpd.web import ComponentState, Metrics, create_app

if TYPE_CHECKING:
    from collections.abc import Callable, Mapping
    from pathlib import Path

__all__ = ["EXIT_FORCED", "FlushLogs", "Tls13Config", "database_path", "run_daemon"]

EXIT_FORCED: Final = 1
DB_NAME: Final = "ocp_node.db"

log = get_logger("daemon")


def components_for(selection: str) -> tuple[str, ...]:
    if selection == "all":
        return COMPONENTS
    if selection not in COMPONENTS:
        raise ConfigError(
            "--component", f"must be node, registry, custodian or all, not {selection!r}"
        )
    return (selection,)


def database_path(data_dir: Path, component: str, selection: str) -> Path:
    """``<data>/ocp_node.db`` for one component; ``<data>/<component>/ocp_node.db`` in ``all``.

    One component per container keeps the Docker layout; ``all`` keeps the
    three databases apart in subdirectories of the same data directory.
    """
    if selection == "all":
        return data_dir / component / DB_NAME
    return data_dir / DB_NAME


class Tls13Config(HypercornConfig):
    """Hypercorn's TLS context with TLS 1.3 as the minimum (its default is 1.2)."""

    def create_ssl_context(self) -> ssl.SSLContext | None:
        context = super().create_ssl_context()
        if context is not None:
            context.minimum_version = ssl.TLSVersion.TLSv1_3
        return context


def check_exposure(config: Config) -> None:
    """Plaintext only on loopback, unless TLS is declared terminated upstream."""
    if config.tls_enabled or is_loopback_host(config.node.host):
        return
    if not config.transport.tls_terminated_upstream:
        raise ConfigError(
            "node.host",
            f"binding {config.node.host} without TLS needs transport.tls_cert/tls_key, or "
            "transport.tls_terminated_upstream: true behind a TLS-terminating proxy",
        )


def _hypercorn_config(config: Config, port: int) -> HypercornConfig:
    hc = Tls13Config()
    host = config.node.host
    hc.bind = [f"[{host}]:{port}" if ":" in host else f"{host}:{port}"]
    hc.graceful_timeout = config.node.shutdown_grace_seconds
    hc.accesslog = None
    hc.errorlog = logging.getLogger("hypercorn.error")
    hc.include_server_header = False
    if config.tls_enabled:
        hc.certfile = config.transport.tls_cert
        hc.keyfile = config.transport.tls_key
    # The node's ports use only the binding and TLS context of this
    # configuration (see _server_settings for the rest).
    return hc


def _server_settings(config: Config) -> ServerSettings:
    """For both node ports: a WebSocket message is refused (1009) as soon as it
    grows past the limit; a TLS handshake and request head get the
    authentication timeout; an idle keep-alive connection closes after 5 s.
    Peer session frames carry a whole OCP message plus a little framing, so
    the port allows that much more; ``/ocp/v1/ws`` checks the exact limit.
    """
    ws = config.transport.websocket
    return ServerSettings(
        max_message_bytes=config.transport.max_message_bytes + FRAME_OVERHEAD,
        ping_interval=ws.ping_interval_seconds,
        handshake_timeout=ws.auth_timeout_seconds,
    )


@attrs.define
class _Stopper:
    stop: trio.Event = attrs.Factory(trio.Event)
    forced: bool = False


@attrs.define(eq=False)
class _InFlight:
    """HTTP requests and WebSocket sessions being served, across every port.

    Hypercorn's graceful shutdown also waits for idle keep-alive connections,
    which an HTTP client may hold open indefinitely: one connection pooled by
    an SDK or a peer node would hold every stop for the whole grace period.
    The daemon instead waits, up to the grace period, for what is actually
    being served, then closes the listeners with whatever idle connections
    are left.
    """

    active: int = 0

    def wrap(self, app: Any) -> Any:
        async def tracked(scope: Any, receive: Any, send: Any) -> None:
            if scope["type"] == "lifespan":
                await app(scope, receive, send)
                return
            self.active += 1
            try:
                await app(scope, receive, send)
            finally:
                self.active -= 1

        return tracked

    async def close_when_drained(
        self, stop: trio.Event, servers: trio.CancelScope, grace: float
    ) -> None:
        await stop.wait()
        with trio.move_on_after(grace):
            while self.active:  # noqa: ASYNC110 - counted by every request's task
                await trio.sleep(0.05)
        # The last response was handed to its socket; let the bytes leave.
        await trio.sleep(0.1)
        servers.cancel()


async def _watch_signals(stopper: _Stopper, force: trio.CancelScope, notifier: Notifier) -> None:
    with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
        async for signum in signals:
            name = signal.Signals(signum).name
            if not stopper.stop.is_set():
                log_event(log, "shutdown_requested", signal=name)
                notifier.notify("STOPPING=1", "STATUS=stopping")
                stopper.stop.set()
            else:
                log_event(log, "shutdown_forced", level=logging.WARNING, signal=name)
                stopper.forced = True
                force.cancel()
                return


async def run_daemon(
    config: Config,
    selection: str,
    *,
    config_source: Path | None = None,
    notifier: Notifier | None = None,
    clock: WallClock | None = None,
) -> int:
    """Run the selected components until stopped; returns the exit status."""
    notifier = notifier or Notifier()
    clock = clock or WallClock()
    components = components_for(selection)
    check_exposure(config)
    os.umask(0o077)
    config.data_dir.mkdir(parents=True, exist_ok=True, mode=0o700)

    flush = hold_lines()
    instrument = FlushLogs(flush) if flush is not None else None
    if instrument is not None:
        trio.lowlevel.add_instrument(instrument)
    try:
        return await _run_daemon(config, selection, components, config_source, notifier, clock)
    finally:
        if instrument is not None:
            trio.lowlevel.remove_instrument(instrument)
        release_lines()


class FlushLogs(trio.abc.Instrument):
    """Writes the log lines held during a scheduling round before the loop waits for I/O."""

    def __init__(self, flush: Callable[[], None]) -> None:
        self.flush = flush

    def before_io_wait(self, timeout: float) -> None:
        self.flush()

    def after_run(self) -> None:
        self.flush()


async def _run_daemon(
    config: Config,
    selection: str,
    components: tuple[str, ...],
    config_source: Path | None,
    notifier: Notifier,
    clock: WallClock,
) -> int:
    data_dir = config.data_dir
    log_event(
        log,
        "config",
        source=str(config_source) if config_source else "built-in defaults",
        component=selection,
        config=config.unstructure(),
    )
    if not config.tls_enabled:
        if config.transport.tls_terminated_upstream:
            log_event(
                log,
                "tls_upstream",
                level=logging.WARNING,
                detail="serving plaintext; TLS must be terminated by a proxy in front of ocpd",
            )
        else:
            log_event(log, "plaintext_loopback", detail="no TLS configured: loopback only")

    identity, created = await trio.to_thread.run_sync(
        partial(load_or_init_identity, data_dir, now=clock.now())
    )
    _log_identity(identity, created, config.node.network, clock)

    databases: dict[str, Database] = {}
    try:
        for component in components:
            path = database_path(data_dir, component, selection)
            databases[component] = await open_database(
                path, component, on_retry=partial(_log_retry, path)
            )
            log_event(log, "database_open", database=component, path=str(path))
        return await _supervise(config, selection, components, databases, notifier, identity, clock)
    finally:
        for database in databases.values():
            database.close()
        log_event(log, "stopped")


def _log_retry(path: Path, attempt: int, exc: Exception) -> None:
    log_event(
        log,
        "database_retry",
        level=logging.WARNING,
        path=str(path),
        attempt=attempt,
        error=str(exc),
    )


def _log_identity(identity: NodeIdentity, created: bool, network: str, clock: WallClock) -> None:
    Tracer(identity.node_id, wall=clock.now).emit(
        "identity/generated" if created else "identity/loaded",
        fields={
            "participant/id": identity.participant_id,
            "service_agent_id": identity.service_agent_id(network),
        },
    )


async def _supervise(
    config: Config,
    selection: str,
    components: tuple[str, ...],
    databases: dict[str, Database],
    notifier: Notifier,
    identity: NodeIdentity,
    clock: WallClock,
) -> int:
    metrics = Metrics()
    stopper = _Stopper()
    started_at = trio.current_time()
    states = {
        c: ComponentState(
            component=c,
            network=config.node.network,
            database=databases[c],
            data_dir=config.data_dir,
            metrics=metrics,
            started_at=started_at,
            min_free_disk_bytes=config.node.health.min_free_disk_mb * 1024 * 1024,
            min_available_memory_bytes=config.node.health.min_available_memory_mb * 1024 * 1024,
        )
        for c in components
    }
    for c in components:
        metrics.info.labels(ocpd.__version__, config.node.network, c).set(1)

    ordered = sorted(components, key=START_ORDER.index)
    runtimes: dict[str, ComponentRuntime] = {}
    listening = Listening()
    for c in ordered:
        runtimes[c] = build_component(
            ComponentContext(
                component=c,
                config=config,
                database=databases[c],
                identity=identity,
                metrics=metrics,
                clock=clock,
                siblings=dict(runtimes),
                stopping=stopper.stop,
                listening=listening,
            )
        )

    commands = {name: h for runtime in runtimes.values() for name, h in runtime.commands.items()}

    async def status(_: Mapping[str, Any]) -> Any:
        return {"pid": os.getpid(), "components": list(components), "node_id": identity.node_id}

    control = ControlSocket(config.data_dir / SOCKET_NAME, {"daemon.status": status, **commands})

    with trio.CancelScope() as force:
        async with trio.open_nursery() as services:
            services.start_soon(_watch_signals, stopper, force, notifier)
            # Operator commands, and the sign that a daemon runs on this data directory.
            await services.start(control.run)
            for c in components:
                await services.start(databases[c].run)
            for c in ordered:
                for service in runtimes[c].services:
                    await services.start(service)
            listeners: dict[str, str] = {}
            in_flight = _InFlight()
            async with trio.open_nursery() as servers:
                servers.start_soon(
                    in_flight.close_when_drained,
                    stopper.stop,
                    servers.cancel_scope,
                    config.node.shutdown_grace_seconds,
                )
                for c in components:
                    others = [states[o] for o in components if o != c]
                    for port_name, port in config.ports(c).items():
                        app = create_app(
                            port_name,
                            [states[c], *others],
                            installers=runtimes[c].routes.get(port_name, []),
                        )
                        hc = _hypercorn_config(config, port)
                        if c == "node":  # both node ports: see ocpd.server
                            server = partial(
                                serve_asgi,
                                in_flight.wrap(app),
                                hc,
                                _server_settings(config),
                                shutdown_trigger=stopper.stop.wait,
                                clock=clock,
                            )
                        else:
                            server = partial(
                                serve, in_flight.wrap(app), hc, shutdown_trigger=stopper.stop.wait
                            )
                        urls = await servers.start(server)
                        listeners[port_name] = urls[0]
                    metrics.up.labels(c).set(1)
                # Everything loaded so far lives as long as the process: keep
                # it out of the collector's full passes (registry ledgers hold
                # hundreds of thousands of objects).
                gc.freeze()
                listening.publish(listeners)
                log_event(
                    log,
                    "ready",
                    component=selection,
                    listeners=listeners,
                    pid=os.getpid(),
                )
                notifier.notify("READY=1", f"STATUS=serving {', '.join(sorted(listeners))}")
                services.start_soon(notifier.run_watchdog)
            # Every listener has shut down (gracefully or by grace timeout):
            # stop the remaining services; writers finish their last batch.
            for c in components:
                metrics.up.labels(c).set(0)
            services.cancel_scope.cancel()
    return EXIT_FORCED if stopper.forced else 0
