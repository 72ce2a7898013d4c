"""The ocpd agent SDK.

Works under trio and asyncio alike (HTTP through httpx, which runs on
anyio). Start with :class:`AgentKey` and :class:`RegistryClient`.
"""

from ocpd.client.keys import AgentKey
from ocpd.client.registry import RegistryClient, RegistryError

__all__ = ["AgentKey", "RegistryClient", "RegistryError"]
