"""Wires the registry component's services and routes into the daemon."""

from __future__ import annotations

from typing import TYPE_CHECKING, Final

import trio

from ocpd.registry.intake import Change
from ocpd.registry.seeddir import SeedDirectory
from ocpd.registry.service import RegistryService

if TYPE_CHECKING:
    from ocpd.components import ComponentContext, ComponentRuntime

__all__ = ["build_registry"]

#: Committed changes waiting to be announced to federation peers. A change
#: that does not fit is still pulled by the peers on their interval.
CHANGE_BUFFER: Final = 4096


def build_registry(ctx: ComponentContext, runtime: ComponentRuntime) -> None:
    federated = ctx.config.registry.mode == "federated"
    send: trio.MemorySendChannel[Change] | None = None
    receive: trio.MemoryReceiveChannel[Change] | None = None
    if federated:
        send, receive = trio.open_memory_channel[Change](CHANGE_BUFFER)
    registry = RegistryService(
        ctx.database,
        ctx.clock,
        ctx.config,
        ctx.metrics.registry,
        changes=send,
        node_id=ctx.identity.node_id,
    )
    runtime.services.append(registry.run)
    runtime.add_routes("registry", registry.install)
    runtime.extra["registry"] = registry
    seeds = SeedDirectory(ctx.database, ctx.clock, ctx.metrics.registry)
    runtime.services.append(seeds.run)
    runtime.add_routes("registry", seeds.install)
    runtime.extra["seed_directory"] = seeds
    if receive is not None:
        from ocpd.registry.federation import Federation

        federation = Federation(
            registry.store,
            ctx.database,
            ctx.config,
            ctx.clock,
            ctx.metrics.registry,
            changes=receive,
            node_id=ctx.identity.node_id,
        )
        runtime.services.append(federation.run)
        runtime.add_routes("registry", federation.install)
        runtime.extra["federation"] = federation
