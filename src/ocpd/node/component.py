"""Wires the node component: directory, store, router, intake and both transports.

In ``--component all`` the node reads agents straight from the registry
built before it in the same process; alone (``--component node``) it asks
the registry at ``transport.registry_url`` over HTTP(S).
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from ocpd.logs import get_logger, log_event
from ocpd.node.directory import HttpDirectory, LedgerDirectory
from ocpd.node.http import MessagesEndpoint
from ocpd.node.intake import Intake, MessageLimits
from ocpd.node.router import Router, Sweeper
from ocpd.node.store import MessageStore
from ocpd.node.ws import WebSocketEndpoint
from ocpd.proto.auth import ReplayWindow
from ocpd.proto.taxonomy import Taxonomy

if TYPE_CHECKING:
    from ocpd.components import ComponentContext, ComponentRuntime
    from ocpd.node.directory import AgentDirectory
    from ocpd.registry.service import RegistryService

__all__ = ["build_node"]

log = get_logger("node")


def _directory(ctx: ComponentContext, runtime: ComponentRuntime) -> AgentDirectory:
    registry_runtime = ctx.siblings.get("registry")
    if registry_runtime is not None:
        registry: RegistryService = registry_runtime.extra["registry"]
        return LedgerDirectory(registry)
    t = ctx.config.transport
    if t.registry_url is None:
        log_event(
            log,
            "no_registry",
            level=logging.WARNING,
            detail="transport.registry_url is not set: every message is refused with OCP-503",
        )
    directory = HttpDirectory(
        t.registry_url,
        Taxonomy.load_default().extended(ctx.config.taxonomy.extensions),
        ca_file=t.registry_ca_file,
        ttl=t.directory_cache_seconds,
        negative_ttl=t.directory_negative_cache_seconds,
        reporter=(
            ctx.identity.service_agent_id(ctx.config.node.network),
            ctx.identity.key,
            ctx.clock,
        ),
    )
    runtime.services.append(directory.run)
    return directory


def build_node(ctx: ComponentContext, runtime: ComponentRuntime) -> None:
    config = ctx.config
    t = config.transport
    directory = _directory(ctx, runtime)
    store = MessageStore(ctx.database)
    router = Router(store, ctx.clock, ctx.metrics)
    replay = ReplayWindow(window=t.clock_skew_seconds)
    intake = Intake(
        directory=directory,
        store=store,
        router=router,
        limits=MessageLimits(config.rate_limiting, ctx.metrics),
        replay=replay,
        clock=ctx.clock,
        metrics=ctx.metrics,
        key=ctx.identity.key,
        service_agent=ctx.identity.service_agent_id(config.node.network),
        network=config.node.network,
        clock_skew=t.clock_skew_seconds,
        max_message_bytes=t.max_message_bytes,
        max_payload_bytes=config.knowledge.max_payload_bytes,
    )
    sweeper = Sweeper(
        store,
        ctx.clock,
        interval=t.sweep_interval_seconds,
        interaction_retention=t.interaction_retention_days * 86_400.0,
    )
    runtime.services.append(router.run)
    runtime.services.append(sweeper.run)
    messages = MessagesEndpoint(intake, ctx.metrics, max_message_bytes=t.max_message_bytes)
    websocket = WebSocketEndpoint(
        intake=intake,
        router=router,
        directory=directory,
        replay=replay,
        clock=ctx.clock,
        metrics=ctx.metrics,
        settings=t.websocket,
        max_message_bytes=t.max_message_bytes,
        clock_skew=t.clock_skew_seconds,
        stopping=ctx.stopping,
    )
    runtime.add_routes("http", messages.install)
    runtime.add_routes("ws", websocket.install)
    runtime.extra.update(
        directory=directory, store=store, router=router, intake=intake, websocket=websocket
    )
