"""Wires the node component: directory, store, router, forwarder, intake, transports.

In ``--component all`` the node reads agents straight from the registry
built before it in the same process; alone (``--component node``) it asks
the registry at ``transport.registry_url`` over HTTP(S).
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

import trio

from ocpd.logs import get_logger, log_event
from ocpd.net.adverts import AdvertisementCache, NonceStore, OwnAdvertisement
from ocpd.net.carrier import client_context
from ocpd.net.peers import CAP_RELAY, PeerService
from ocpd.net.seeds import SeedDirectoryClient
from ocpd.net.traces import Tracer
from ocpd.node.collab import Collaboration, Deadlines
from ocpd.node.directory import directory_for
from ocpd.node.forward import Forwarder, HttpPoster
from ocpd.node.http import MessagesEndpoint
from ocpd.node.intake import Intake, MessageLimits
from ocpd.node.peering import NodeTraffic
from ocpd.node.presence import ServiceRegistration
from ocpd.node.router import Router, Sweeper
from ocpd.node.store import MessageStore
from ocpd.node.ws import WebSocketEndpoint
from ocpd.proto.auth import ReplayWindow
from ocpd.proto.hosts import is_unspecified_host
from ocpd.proto.pvl import PvlPolicy
from ocpd.verifier import Verifier, helper_wanted

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable, Mapping

    from ocpd.components import ComponentContext, ComponentRuntime

__all__ = ["build_node"]

log = get_logger("node")


def _commands(peers: PeerService) -> dict[str, Callable[[Mapping[str, Any]], Awaitable[Any]]]:
    """``ocpd peer list`` and ``ocpd peer signal``, on the daemon's control socket."""

    async def peer_list(_: Mapping[str, Any]) -> Any:
        return peers.describe()

    async def peer_signal(request: Mapping[str, Any]) -> Any:
        body = request.get("body")
        sent = await peers.signal(
            str(request["node_id"]),
            kind=str(request["kind"]),
            body=None if body is None else str(body),
        )
        return {"trace/id": sent["trace/id"], "marker/id": sent["marker/id"]}

    return {"peer.list": peer_list, "peer.signal": peer_signal}


def _peers(ctx: ComponentContext, intake: Intake) -> PeerService:
    """Sessions with other nodes (NET, D8) on the WebSocket port."""
    config = ctx.config
    tls = client_context(config.peering.ca_file)
    return PeerService(
        key=ctx.identity.key,
        node_id=ctx.identity.node_id,
        clock=ctx.clock,
        metrics=ctx.metrics,
        tracer=Tracer(ctx.identity.node_id, wall=ctx.clock.now),
        settings=config.peering,
        cache=AdvertisementCache(ctx.database, clock_skew=config.transport.clock_skew_seconds),
        own=OwnAdvertisement(
            ctx.database, ctx.identity.key, lifetime=config.peering.advertisement_lifetime_seconds
        ),
        nonce_store=NonceStore(ctx.database),
        tls=tls,
        max_message_bytes=config.transport.max_message_bytes,
        own_peer_url=lambda: config.peer_url(ctx.listening.urls),
        own_ocp_urls=lambda: config.public_urls(ctx.listening.urls),
        ready=ctx.listening.ready,
        stopping=ctx.stopping,
        traffic=NodeTraffic(intake, ctx.clock, ctx.metrics),
        offered=(CAP_RELAY,),
        seeds=SeedDirectoryClient(tls) if config.peering.seed_directories else None,
    )


def build_node(ctx: ComponentContext, runtime: ComponentRuntime) -> None:
    config = ctx.config
    t = config.transport
    directory = directory_for(ctx, runtime)
    store = MessageStore(ctx.database)
    service_agent = ctx.identity.service_agent_id(config.node.network)
    forwarder = Forwarder(
        store=store,
        directory=directory,
        clock=ctx.clock,
        metrics=ctx.metrics,
        key=ctx.identity.key,
        service_agent=service_agent,
        poster=HttpPoster(ca_file=t.delivery_ca_file),
        clock_skew=t.clock_skew_seconds,
    )
    router = Router(store, ctx.clock, ctx.metrics, remote=forwarder)
    forwarder.router = router
    replay = ReplayWindow(window=t.clock_skew_seconds)
    verifier = Verifier(helper=helper_wanted(t.signature_checks))
    runtime.services.append(verifier.run)
    intake = Intake(
        directory=directory,
        store=store,
        router=router,
        limits=MessageLimits(config.rate_limiting, ctx.metrics),
        replay=replay,
        clock=ctx.clock,
        metrics=ctx.metrics,
        key=ctx.identity.key,
        service_agent=service_agent,
        network=config.node.network,
        clock_skew=t.clock_skew_seconds,
        max_message_bytes=t.max_message_bytes,
        max_payload_bytes=config.knowledge.max_payload_bytes,
        verifier=verifier,
    )
    deadlines = Deadlines(
        store=store,
        clock=ctx.clock,
        metrics=ctx.metrics,
        router=router,
        directory=directory,
        key=ctx.identity.key,
        service_agent=service_agent,
        clock_skew=t.clock_skew_seconds,
    )
    intake.rules = Collaboration(
        directory=directory,
        database=ctx.database,
        clock=ctx.clock,
        metrics=ctx.metrics,
        policy=PvlPolicy(
            max_payload_bytes=config.knowledge.max_payload_bytes,
            max_epsilon=config.knowledge.max_epsilon,
        ),
        router=router,
        accept_within=config.collaboration.ack_timeout_seconds,
        default_max_duration=config.collaboration.task_default_timeout_seconds,
        clock_skew=t.clock_skew_seconds,
        deadlines=deadlines,
    )
    runtime.services.append(deadlines.run)
    sweeper = Sweeper(
        store,
        ctx.clock,
        interval=t.sweep_interval_seconds,
        interaction_retention=t.interaction_retention_days * 86_400.0,
    )
    runtime.services.append(router.run)
    runtime.services.append(forwarder.run)
    runtime.services.append(sweeper.run)
    presence: ServiceRegistration | None = None
    if t.register_service_agent:
        presence = ServiceRegistration(
            directory=directory,
            key=ctx.identity.key,
            network=config.node.network,
            node_id=ctx.identity.node_id,
            clock=ctx.clock,
        )
        runtime.services.append(presence.run)
        runtime.extra["presence"] = presence

    async def publish_urls(
        *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
    ) -> None:
        """Tell the forwarder and the registration where this node is, once bound."""
        task_status.started()
        await ctx.listening.ready.wait()
        urls = config.public_urls(ctx.listening.urls)
        forwarder.set_own_urls(urls)
        if presence is not None:
            presence.set_urls(urls)
        if any(is_unspecified_host(urlsplit(u).hostname or "") for u in urls):
            log_event(
                log,
                "public_url_unusable",
                level=logging.WARNING,
                urls=list(urls),
                detail="set transport.public_http_url and public_ws_url: other nodes and "
                "agents cannot reach a wildcard address",
            )

    runtime.services.append(publish_urls)
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
    runtime.services.append(websocket.run)
    runtime.add_routes("http", messages.install)
    runtime.add_routes("ws", websocket.install)
    if config.peering.enabled:
        peers = _peers(ctx, intake)
        forwarder.peers = peers
        intake.propagate = lambda raw, source: peers.propagate(raw, exclude=source)
        runtime.services.append(peers.run)
        runtime.add_routes("ws", peers.install)
        runtime.extra["peers"] = peers
        runtime.commands.update(_commands(peers))
    runtime.extra.update(
        directory=directory,
        store=store,
        router=router,
        forwarder=forwarder,
        intake=intake,
        websocket=websocket,
    )
