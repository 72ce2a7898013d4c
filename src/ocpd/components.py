"""What each component adds to the daemon: background services and routes.

The supervisor opens storage and the identity, then asks each selected
component for a :class:`ComponentRuntime`: the services to start (in order,
each a ``run(*, task_status)`` coroutine that reports started only once it
serves) and, per port name, a function that installs the component's routes
on that port's app.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping
from typing import TYPE_CHECKING, Any, Final

import attrs
import trio

if TYPE_CHECKING:
    from quart_trio import QuartTrio

    from ocpd.clock import WallClock
    from ocpd.config import Config
    from ocpd.identity import NodeIdentity
    from ocpd.storage import Database
    from ocpd.web import Metrics

__all__ = [
    "START_ORDER",
    "ComponentContext",
    "ComponentRuntime",
    "Listening",
    "build_component",
]

Service = Callable[..., Awaitable[None]]

#: Components are built and their services started in this order, so that a
#: component can use those before it: the node uses the registry in-process
#: when both run (``--component all``), and the transport starts last.
START_ORDER: Final = ("registry", "custodian", "node")


@attrs.define(eq=False)
class Listening:
    """The daemon's bound listeners, by port name (``http``, ``ws``, …), once all are up.

    Services start before the ports are bound; one that needs the actual
    addresses (port 0 picks a free port) waits for :attr:`ready`.
    """

    urls: dict[str, str] = attrs.Factory(dict)
    ready: trio.Event = attrs.Factory(trio.Event)

    def publish(self, urls: Mapping[str, str]) -> None:
        self.urls.update(urls)
        self.ready.set()


@attrs.define
class ComponentContext:
    """Everything a component may use; built by the supervisor."""

    component: str
    config: Config
    database: Database
    identity: NodeIdentity
    metrics: Metrics
    clock: WallClock
    #: Runtimes of the components built before this one in the same process.
    siblings: Mapping[str, ComponentRuntime] = attrs.Factory(dict)
    #: Set when the daemon begins to stop (before listeners drain).
    stopping: trio.Event | None = None
    listening: Listening = attrs.Factory(Listening)


@attrs.define
class ComponentRuntime:
    services: list[Service] = attrs.Factory(list)
    routes: dict[str, list[Callable[[QuartTrio], None]]] = attrs.Factory(dict)
    extra: dict[str, Any] = attrs.Factory(dict)
    #: Operator commands answered on the daemon's control socket, by name.
    commands: dict[str, Callable[[Mapping[str, Any]], Awaitable[Any]]] = attrs.Factory(dict)

    def add_routes(self, port: str, installer: Callable[[QuartTrio], None]) -> None:
        self.routes.setdefault(port, []).append(installer)


def build_component(ctx: ComponentContext) -> ComponentRuntime:
    """The runtime of one component (protocol features plug in here)."""
    runtime = ComponentRuntime()
    if ctx.component == "registry":
        from ocpd.registry.component import build_registry

        build_registry(ctx, runtime)
    elif ctx.component == "custodian":
        from ocpd.custodian.component import build_custodian

        build_custodian(ctx, runtime)
    elif ctx.component == "node":
        from ocpd.node.component import build_node

        build_node(ctx, runtime)
    return runtime
