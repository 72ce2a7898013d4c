"""DID resolution from an agent's own host (OCP §4.1.3, method 1).

An agent may publish its DID document at
``https://{agent-host}/.well-known/ocp/did.json``. The document is checked
exactly as a registry checks one: strict I-JSON, the structure and key
rules of :func:`ocpd.proto.diddoc.parse_did_document`, and an id that
derives from the initial key ``#key-1`` (D4). When the caller names the
agent it expects, the document must be that agent's.

What a host-served document cannot prove on its own is a key rotation: the
registry holds the signed update chain, the host only the result. Keys
other than ``#key-1`` in a well-known document are as trustworthy as the
host's TLS certificate. :meth:`RegistryClient.resolve_did` (method 2) is
the resolver that checked the chain.
"""

from __future__ import annotations

from contextlib import aclosing
from typing import TYPE_CHECKING, Any, Final, cast
from urllib.parse import urlsplit

import httpx

from ocpd.proto.diddoc import parse_did_document
from ocpd.proto.errors import MalformedError, OcpError
from ocpd.proto.strictjson import loads_strict

if TYPE_CHECKING:
    import ssl
    from collections.abc import AsyncGenerator

__all__ = [
    "MAX_DOCUMENT_BYTES",
    "WELL_KNOWN_PATH",
    "ResolutionError",
    "resolve_well_known",
    "well_known_url",
]

WELL_KNOWN_PATH: Final = "/.well-known/ocp/did.json"
MAX_DOCUMENT_BYTES: Final = 65_536
"""A DID document with two active keys and a long revocation list fits in a few KiB."""
_HTTP_TIMEOUT: Final = 10.0
"""Per connect/read step; bound the whole call with the caller's own cancel scope."""


class ResolutionError(Exception):
    """The document could not be fetched, or what came back is not acceptable."""

    def __init__(self, url: str, reason: str) -> None:
        self.url = url
        self.reason = reason
        super().__init__(f"{url}: {reason}")


def well_known_url(host: str) -> str:
    """The method-1 URL for ``host`` (``example.com``, ``example.com:8443``) or a full URL.

    A full ``https://`` URL (an agent record's ``did_document_url``) is used
    as given. Plain ``http`` is refused: the host's TLS is what vouches for
    the document's current keys.
    """
    if "://" not in host:
        if not host or "/" in host or "@" in host:
            raise ValueError(f"{host!r} is not a host name")
        return f"https://{host}{WELL_KNOWN_PATH}"
    parts = urlsplit(host)
    if parts.scheme != "https" or not parts.hostname:
        raise ValueError(f"{host!r} is not an https URL")
    return host


async def resolve_well_known(
    host: str,
    *,
    agent_id: str | None = None,
    verify: ssl.SSLContext | str | bool = True,
) -> dict[str, Any]:
    """Fetch and check the DID document an agent host publishes.

    Returns the document as published. Raises :class:`ResolutionError` when
    the host does not answer 200, sends more than :data:`MAX_DOCUMENT_BYTES`,
    sends something other than a valid DID document, or (with ``agent_id``)
    the document of another agent.
    """
    url = well_known_url(host)
    async with httpx.AsyncClient(verify=verify, timeout=_HTTP_TIMEOUT) as http:
        try:
            async with http.stream(
                "GET", url, headers={"Accept": "application/did+json, application/json"}
            ) as response:
                if response.status_code != 200:
                    raise ResolutionError(url, f"HTTP {response.status_code}")
                declared = response.headers.get("content-length")
                if (
                    declared is not None
                    and declared.isdigit()
                    and int(declared) > MAX_DOCUMENT_BYTES
                ):
                    raise ResolutionError(url, f"document larger than {MAX_DOCUMENT_BYTES} bytes")
                body = bytearray()
                # aclosing: leaving the loop early must close the generator here,
                # not whenever the collector finds it.
                # (httpx types it as an iterator; it is an async generator.)
                chunks_gen = cast("AsyncGenerator[bytes, None]", response.aiter_bytes())
                async with aclosing(chunks_gen) as chunks:
                    async for chunk in chunks:
                        body += chunk
                        if len(body) > MAX_DOCUMENT_BYTES:
                            raise ResolutionError(
                                url, f"document larger than {MAX_DOCUMENT_BYTES} bytes"
                            )
        except httpx.HTTPError as exc:
            raise ResolutionError(url, f"cannot fetch: {exc}") from exc
    try:
        document = loads_strict(bytes(body), max_size=MAX_DOCUMENT_BYTES)
        if not isinstance(document, dict):
            raise MalformedError("DID document must be an object")
        checked = parse_did_document(document)
    except OcpError as exc:
        raise ResolutionError(url, exc.message) from None
    if agent_id is not None and checked.agent_id != agent_id:
        raise ResolutionError(url, f"the document is {checked.agent_id}'s, not {agent_id}'s")
    return document
