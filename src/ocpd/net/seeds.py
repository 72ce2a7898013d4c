"""Talking to seed directories (NET FR-007a, NFR-008) as a client.

A seed directory is a registry's ``/adv`` routes (:mod:`ocpd.registry.seeddir`).
:class:`SeedDirectoryClient` publishes this node's advertisement there
(``PUT /adv/{node-id}``) and reads the incremental feed
(``GET /adv?since={cursor}``). The base URL is the registry's
(``https://registry.example:8422``); TLS uses the system's roots plus
``peering.ca_file``.

Failures are :class:`~ocpd.proto.errors.NetError`: ``E_TRANSPORT_UNAVAILABLE``
when the directory cannot be reached or answers 5xx or 429,
``E_TRANSPORT_REJECTED`` when it refuses (another 4xx) or answers something
that is not a feed. Advertisements in a feed are returned as they came:
the caller verifies each one.
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any, Final

import httpx

from ocpd.proto.errors import NetError, OcpError
from ocpd.proto.strictjson import loads_strict

if TYPE_CHECKING:
    import ssl
    from collections.abc import Mapping

__all__ = ["PAGE", "SeedDirectoryClient"]

#: Advertisements asked for per feed page.
PAGE: Final = 100
#: The largest feed page read, in bytes.
MAX_FEED_BYTES: Final = 4 * 1024 * 1024


def _base(url: str) -> str:
    return url.rstrip("/")


class SeedDirectoryClient:
    def __init__(self, tls: ssl.SSLContext, *, timeout: float = 10.0) -> None:
        self._http = httpx.AsyncClient(verify=tls, timeout=httpx.Timeout(timeout))

    async def aclose(self) -> None:
        await self._http.aclose()

    async def _request(self, method: str, url: str, **kwargs: Any) -> httpx.Response:
        try:
            response = await self._http.request(method, url, **kwargs)
        except httpx.HTTPError as exc:
            raise NetError(
                f"seed directory {url} unreachable: {type(exc).__name__}",
                code="E_TRANSPORT_UNAVAILABLE",
            ) from None
        if response.status_code >= 500 or response.status_code == 429:
            raise NetError(
                f"seed directory {url} answered HTTP {response.status_code}",
                code="E_TRANSPORT_UNAVAILABLE",
            )
        return response

    async def publish(self, directory: str, advertisement: Mapping[str, Any]) -> None:
        """``PUT /adv/{node-id}``; a refusal is ``E_TRANSPORT_REJECTED`` with its code."""
        url = f"{_base(directory)}/adv/{advertisement['node/id']}"
        body = json.dumps(advertisement, separators=(",", ":"), ensure_ascii=False).encode()
        response = await self._request(
            "PUT", url, content=body, headers={"Content-Type": "application/json"}
        )
        if response.status_code not in {200, 201}:
            code = _error_code(response)
            raise NetError(
                f"seed directory {directory} refused the advertisement: "
                f"HTTP {response.status_code} {code or ''}".strip(),
                code="E_TRANSPORT_REJECTED",
                details={"status": response.status_code, "remote_code": code},
            )

    async def fetch(self, directory: str, cursor: int) -> tuple[list[Any], int, bool]:
        """One feed page after ``cursor``: ``(advertisements, next cursor, more)``."""
        url = f"{_base(directory)}/adv"
        response = await self._request("GET", url, params={"since": cursor, "limit": PAGE})
        if response.status_code != 200:
            raise NetError(
                f"seed directory {directory} answered HTTP {response.status_code}",
                code="E_TRANSPORT_REJECTED",
            )
        try:
            feed = loads_strict(response.content, max_size=MAX_FEED_BYTES)
        except OcpError:
            raise NetError(
                f"seed directory {directory} answered a feed that is not JSON",
                code="E_TRANSPORT_REJECTED",
            ) from None
        if (
            not isinstance(feed, dict)
            or not isinstance(feed.get("advertisements"), list)
            or isinstance(feed.get("cursor"), bool)
            or not isinstance(feed.get("cursor"), int)
            or not isinstance(feed.get("more"), bool)
        ):
            raise NetError(
                f"seed directory {directory} answered something that is not a feed",
                code="E_TRANSPORT_REJECTED",
            )
        next_cursor = int(feed["cursor"])
        more = bool(feed["more"]) and next_cursor > cursor
        return list(feed["advertisements"]), max(cursor, next_cursor), more


def _error_code(response: httpx.Response) -> str | None:
    try:
        body = json.loads(response.content)
    except ValueError:
        return None
    code = body.get("error_code") if isinstance(body, dict) else None
    return code[:64] if isinstance(code, str) else None
