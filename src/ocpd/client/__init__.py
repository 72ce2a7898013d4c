"""The ocpd agent SDK.

Works under trio and asyncio alike (HTTP through httpx, WebSocket through
wsproto, both on anyio). Start with :class:`AgentKey` and
:class:`RegistryClient`; exchange messages with :class:`NodeClient`.
"""

from ocpd.client.certify import CertifierKey
from ocpd.client.delivery import Timings
from ocpd.client.errors import (
    AckTimeout,
    AuthenticationRejected,
    ConnectionFailed,
    MessageRejected,
    NodeError,
    UnknownAgent,
)
from ocpd.client.inbox import ReceivedMessage
from ocpd.client.keys import AgentKey
from ocpd.client.node import Delivery, NodeClient
from ocpd.client.registry import RegistryClient, RegistryError
from ocpd.client.resolve import ResolutionError, resolve_well_known

__all__ = [
    "AckTimeout",
    "AgentKey",
    "AuthenticationRejected",
    "CertifierKey",
    "ConnectionFailed",
    "Delivery",
    "MessageRejected",
    "NodeClient",
    "NodeError",
    "ReceivedMessage",
    "RegistryClient",
    "RegistryError",
    "ResolutionError",
    "Timings",
    "UnknownAgent",
    "resolve_well_known",
]
