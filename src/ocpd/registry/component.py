"""Wires the registry component's services and routes into the daemon."""

from __future__ import annotations

from typing import TYPE_CHECKING

from ocpd.registry.seeddir import SeedDirectory
from ocpd.registry.service import RegistryService

if TYPE_CHECKING:
    from ocpd.components import ComponentContext, ComponentRuntime

__all__ = ["build_registry"]


def build_registry(ctx: ComponentContext, runtime: ComponentRuntime) -> None:
    registry = RegistryService(ctx.database, ctx.clock, ctx.config, ctx.metrics.registry)
    runtime.services.append(registry.run)
    runtime.add_routes("registry", registry.install)
    runtime.extra["registry"] = registry
    seeds = SeedDirectory(ctx.database, ctx.clock, ctx.metrics.registry)
    runtime.services.append(seeds.run)
    runtime.add_routes("registry", seeds.install)
    runtime.extra["seed_directory"] = seeds
