"""The node's own agent: its service agent, registered with the registry.

A node speaks for itself with its *service agent*: the did:ocp agent whose
key is the node identity key. It signs the node's ``error`` messages, its
session reports and the ``Authorization`` header of every message it hands
on to another node. For any of that to be checked by someone else, the
registry has to know the agent, so the node registers it at start and
renews the record at half its ``ttl`` (:class:`ServiceRegistration`).

The record is an ordinary agent record:

* domain ``ocp.node`` (discovery with ``domains: ["ocp.node"]`` lists nodes);
* capability ``cap:ocp:relay``: the node hands on messages for agents it
  serves (a receiving node accepts a message whose ``Authorization`` agent
  is not its sender only from an agent that declares this; the envelope
  signature stays the sender's);
* endpoints: the node's public messages and WebSocket URLs
  (:meth:`ocpd.config.Config.public_urls`).

A registry that cannot be reached does not stop the node: registration is
retried with backoff (5 s doubling to 5 min) and logged.
"""

from __future__ import annotations

import json
import logging
from typing import TYPE_CHECKING, Any, Final

import attrs
import trio

import ocpd
from ocpd.logs import get_logger, log_event
from ocpd.proto.artifacts import sign
from ocpd.proto.auth import build_authorization
from ocpd.proto.diddoc import build_did_document
from ocpd.proto.encoding import format_timestamp
from ocpd.proto.errors import OcpError, Unavailable
from ocpd.proto.ids import derive_agent_id

if TYPE_CHECKING:
    from ocpd.clock import WallClock
    from ocpd.node.directory import AgentDirectory
    from ocpd.proto.crypto import SigningKey

__all__ = [
    "REGISTER_PATH",
    "RELAY_CAPABILITY",
    "SERVICE_DOMAIN",
    "ServiceRegistration",
    "service_registration",
]

RELAY_CAPABILITY: Final = "cap:ocp:relay"
SERVICE_DOMAIN: Final = "ocp.node"
REGISTER_PATH: Final = "/ocp/v1/registry/agents"
#: The service agent's record lives this long; it is renewed at half of it.
SERVICE_TTL: Final = 3600
RETRY_FIRST: Final = 5.0
RETRY_MAX: Final = 300.0

log = get_logger("node")


def service_registration(
    key: SigningKey, *, network: str, node_id: str, urls: tuple[str, str], now: float
) -> tuple[bytes, str]:
    """The registration body for the service agent and its ``Authorization`` header."""
    http_url, ws_url = urls
    agent_id = derive_agent_id(key.public_key, network)
    record: dict[str, Any] = {
        "agent_id": agent_id,
        "display_name": f"ocpd node {node_id}"[:256],
        "version": ocpd.__version__,
        "capabilities": [
            {"id": RELAY_CAPABILITY, "name": "OCP message relay", "version": "1"},
        ],
        "domains": [SERVICE_DOMAIN],
        "endpoints": [
            {"transport": "ocp-http", "url": http_url, "priority": 1},
            {"transport": "ocp-ws", "url": ws_url, "priority": 2},
        ],
        "status": "active",
        "registered_at": format_timestamp(now),
        "ttl": SERVICE_TTL,
    }
    body = {
        "record": sign(record, key),
        "did_document": build_did_document(
            key.public_key, network=network, service_endpoints=(http_url, ws_url)
        ),
    }
    raw = json.dumps(body, separators=(",", ":"), ensure_ascii=False).encode("utf-8")
    authorization = build_authorization(
        key, agent_id=agent_id, method="POST", path_and_query=REGISTER_PATH, body=raw, now=now
    )
    return raw, authorization


@attrs.define(eq=False)
class ServiceRegistration:
    """Keeps the service agent registered for as long as the node runs."""

    directory: AgentDirectory
    key: SigningKey
    network: str
    node_id: str
    clock: WallClock
    #: The node's public URLs; ``None`` until the listeners are bound.
    urls: tuple[str, str] | None = None
    #: Set after the first successful registration.
    registered: trio.Event = attrs.Factory(trio.Event)
    _urls_known: trio.Event = attrs.Factory(trio.Event)

    def set_urls(self, urls: tuple[str, str]) -> None:
        self.urls = urls
        self._urls_known.set()

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        task_status.started()
        if self.urls is None:
            await self._urls_known.wait()
        delay = RETRY_FIRST
        while True:
            try:
                await self.register_once()
            except OcpError as exc:
                log_event(
                    log,
                    "service_agent_not_registered",
                    level=logging.WARNING,
                    error_code=exc.code,
                    reason=exc.message,
                    retry_in_s=delay,
                )
                await trio.sleep(delay)
                delay = min(delay * 2, RETRY_MAX)
                continue
            delay = RETRY_FIRST
            await trio.sleep(SERVICE_TTL / 2)

    async def register_once(self) -> None:
        if self.urls is None:
            raise Unavailable("the node's listeners are not bound yet")
        raw, authorization = service_registration(
            self.key,
            network=self.network,
            node_id=self.node_id,
            urls=self.urls,
            now=self.clock.now(),
        )
        await self.directory.register(raw, authorization=authorization, path=REGISTER_PATH)
        if not self.registered.is_set():
            log_event(
                log,
                "service_agent_registered",
                agent_id=derive_agent_id(self.key.public_key, self.network),
                endpoints=list(self.urls),
            )
        self.registered.set()
