"""Other agents' DID documents, resolved on demand and kept for a while.

A receiver needs the sender's active keys to verify each message, and a
sender needs the receiver's ``keyAgreement`` key to encrypt; both come from
the DID document (OCP §4.1.2), resolved through a registry
(:meth:`RegistryClient.resolve_did`) or any other resolver the application
trusts. Documents are checked with the same rules a registry applies
(:func:`~ocpd.proto.diddoc.parse_did_document`) and must belong to the agent
asked for.

Keys rotate (OCP §8.2), so a cached document may be stale: a signature that
fails against a document older than ``refresh_after`` seconds triggers one
fresh resolution. The floor keeps a stream of forged messages from turning
into a stream of registry requests.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Awaitable, Callable, Mapping
from typing import Any, Final

import anyio

from ocpd.client.errors import UnknownAgent
from ocpd.client.registry import RegistryError
from ocpd.proto.diddoc import DidDocument, parse_did_document
from ocpd.proto.errors import OcpError

__all__ = ["DidCache", "DidResolver"]

DidResolver = Callable[[str], Awaitable[Mapping[str, Any]]]
"""``agent_id -> DID document`` (e.g. ``RegistryClient.resolve_did``)."""

DEFAULT_MAX_AGE: Final = 300.0
DEFAULT_REFRESH_AFTER: Final = 10.0


class DidCache:
    """Checked DID documents by agent id, least recently used out first.

    ``pinned`` documents (e.g. the service agent of the agent's own node)
    never expire and are never resolved.
    """

    def __init__(
        self,
        resolve: DidResolver,
        *,
        max_age: float = DEFAULT_MAX_AGE,
        refresh_after: float = DEFAULT_REFRESH_AFTER,
        max_entries: int = 10_000,
        pinned: Mapping[str, Mapping[str, Any]] | None = None,
    ) -> None:
        self._resolve = resolve
        self._max_age = max_age
        self._refresh_after = refresh_after
        self._max_entries = max_entries
        self._entries: OrderedDict[str, tuple[float, DidDocument]] = OrderedDict()
        self._pinned = {agent_id: _check(agent_id, doc) for agent_id, doc in (pinned or {}).items()}

    def pin(self, document: Mapping[str, Any]) -> DidDocument:
        checked = parse_did_document(dict(document))
        self._pinned[checked.agent_id] = checked
        return checked

    def is_pinned(self, agent_id: str) -> bool:
        return agent_id in self._pinned

    async def get(self, agent_id: str) -> DidDocument:
        """The document, from the cache while it is younger than ``max_age``."""
        pinned = self._pinned.get(agent_id)
        if pinned is not None:
            return pinned
        entry = self._entries.get(agent_id)
        if entry is not None and anyio.current_time() - entry[0] < self._max_age:
            self._entries.move_to_end(agent_id)
            return entry[1]
        return await self._fetch(agent_id)

    async def refresh(self, agent_id: str) -> DidDocument | None:
        """A fresh document if the cached one is old enough to be worth replacing."""
        if agent_id in self._pinned:
            return None
        entry = self._entries.get(agent_id)
        if entry is not None and anyio.current_time() - entry[0] < self._refresh_after:
            return None
        return await self._fetch(agent_id)

    async def _fetch(self, agent_id: str) -> DidDocument:
        try:
            raw = await self._resolve(agent_id)
        except RegistryError as exc:
            raise UnknownAgent(
                f"cannot resolve {agent_id}: {exc.message}", code=exc.code, status=exc.status
            ) from None
        except Exception as exc:  # a resolver of the application's; any failure means unknown
            raise UnknownAgent(f"cannot resolve {agent_id}: {exc}") from None
        document = _check(agent_id, raw)
        self._entries[agent_id] = (anyio.current_time(), document)
        self._entries.move_to_end(agent_id)
        while len(self._entries) > self._max_entries:
            self._entries.popitem(last=False)
        return document


def _check(agent_id: str, raw: Mapping[str, Any]) -> DidDocument:
    try:
        document = parse_did_document(dict(raw))
    except OcpError as exc:
        raise UnknownAgent(f"the DID document of {agent_id} is invalid: {exc.message}") from None
    if document.agent_id != agent_id:
        raise UnknownAgent(f"the resolver returned {document.agent_id}'s document for {agent_id}")
    return document
