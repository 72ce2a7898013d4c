"""Registry calls for agents: register, resolve, discover, vouch, bond, rate.

Every mutating request is signed twice over: the artifact itself (D2) and the
HTTP request (D3 ``Authorization``). Builders (``build_*``) return artifacts
without sending them, for flows where another agent has to sign too (bonds).
"""

from __future__ import annotations

import json
import uuid
from typing import TYPE_CHECKING, Any

import httpx

from ocpd.client.bonds import bond_revoke
from ocpd.client.websocket import client_ssl_context
from ocpd.proto.artifacts import sign_bond, vouch_digest
from ocpd.proto.auth import build_authorization
from ocpd.proto.encoding import format_timestamp

if TYPE_CHECKING:
    import ssl
    from collections.abc import Iterable, Mapping, Sequence

    from ocpd.client.keys import AgentKey

__all__ = ["RegistryClient", "RegistryError", "build_bond"]

API = "/ocp/v1/registry"
DAY = 86_400


class RegistryError(Exception):
    """The registry refused a request; ``code`` is the OCP error code."""

    def __init__(self, status: int, code: str, message: str, details: dict[str, Any]) -> None:
        self.status = status
        self.code = code
        self.message = message
        self.details = details
        super().__init__(f"{code}: {message}")


def build_bond(
    first: str,
    second: str,
    *,
    permissions: Mapping[str, Any],
    now: float,
    days: int = 180,
    renewal: str = "auto",
    bond_id: str | None = None,
) -> dict[str, Any]:
    """An unsigned bond record; each party signs it with :meth:`RegistryClient.sign_bond`."""
    return {
        "bond_id": bond_id or f"bond-{uuid.uuid4()}",
        "agents": [first, second],
        "permissions": dict(permissions),
        "established_at": format_timestamp(now),
        "expires_at": format_timestamp(now + days * DAY),
        "renewal": renewal,
        "signatures": {},
    }


class RegistryClient:
    """An agent's view of one registry (``base_url`` like ``https://host:8422``)."""

    def __init__(
        self,
        base_url: str,
        agent: AgentKey,
        *,
        verify: ssl.SSLContext | str | bool = True,
        timeout: float = 10.0,
    ) -> None:
        self.agent = agent
        self._http = httpx.AsyncClient(
            base_url=base_url.rstrip("/"), verify=client_ssl_context(verify), timeout=timeout
        )

    async def __aenter__(self) -> RegistryClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        await self._http.aclose()

    # --- transport -------------------------------------------------------------------

    async def _request(
        self, method: str, path: str, body: Any = None, *, sign: bool = False
    ) -> Any:
        data = b"" if body is None else json.dumps(body, separators=(",", ":")).encode()
        headers = {"Content-Type": "application/json"} if body is not None else {}
        url = API + path
        if sign:
            headers["Authorization"] = build_authorization(
                self.agent.key,
                agent_id=self.agent.agent_id,
                method=method,
                path_and_query=url,
                body=data,
                now=self.agent.now(),
            )
        response = await self._http.request(method, url, content=data or None, headers=headers)
        if response.status_code >= 400:
            try:
                error = response.json()
            except ValueError:
                error = {}
            raise RegistryError(
                response.status_code,
                str(error.get("error_code", f"HTTP-{response.status_code}")),
                str(error.get("message", response.reason_phrase)),
                dict(error.get("details", {})),
            )
        if response.headers.get("content-type", "").startswith(
            ("application/json", "application/did+json")
        ):
            return response.json()
        return response.text

    # --- agents -------------------------------------------------------------------------

    def build_record(
        self,
        *,
        display_name: str,
        capabilities: Sequence[Mapping[str, Any]],
        domains: Sequence[str],
        endpoints: Sequence[Mapping[str, Any]],
        version: str = "1.0.0",
        ttl: int = DAY,
        now: float | None = None,
    ) -> dict[str, Any]:
        record = {
            "agent_id": self.agent.agent_id,
            "display_name": display_name,
            "version": version,
            "capabilities": [dict(c) for c in capabilities],
            "domains": list(domains),
            "endpoints": [dict(e) for e in endpoints],
            "status": "active",
            "registered_at": format_timestamp(self.agent.now() if now is None else now),
            "ttl": ttl,
        }
        return self.agent.sign(record)

    async def register(
        self, record: Mapping[str, Any], did_document: Mapping[str, Any] | None = None
    ) -> dict[str, Any]:
        """Register (or renew) with a signed record and the agent's DID document."""
        document = dict(did_document) if did_document is not None else self.agent.did_document()
        result: dict[str, Any] = await self._request(
            "POST", "/agents", {"record": dict(record), "did_document": document}, sign=True
        )
        return result

    async def get_agent(self, agent_id: str) -> dict[str, Any]:
        result: dict[str, Any] = await self._request("GET", f"/agents/{agent_id}")
        return result

    async def resolve_did(self, agent_id: str) -> dict[str, Any]:
        result: dict[str, Any] = await self._request("GET", f"/agents/{agent_id}/did.json")
        return result

    async def update_did(self, update: Mapping[str, Any]) -> dict[str, Any]:
        result: dict[str, Any] = await self._request(
            "POST", f"/agents/{self.agent.agent_id}/did", dict(update), sign=True
        )
        return result

    async def discover(
        self,
        *,
        domains: Iterable[str] = (),
        capabilities: Iterable[str] = (),
        min_trust_level: int = 0,
        status: str = "active",
        limit: int = 20,
        offset: int = 0,
    ) -> dict[str, Any]:
        body = {
            "filters": {
                "domains": list(domains),
                "capabilities": list(capabilities),
                "min_trust_level": min_trust_level,
                "status": status,
            },
            "limit": limit,
            "offset": offset,
        }
        result: dict[str, Any] = await self._request("POST", "/discover", body, sign=True)
        return result

    async def trust(self, agent_id: str) -> dict[str, Any]:
        result: dict[str, Any] = await self._request("GET", f"/agents/{agent_id}/trust")
        return result

    async def bonds(self, agent_id: str) -> list[dict[str, Any]]:
        """The agent's bonds in force, newest established first."""
        result: dict[str, Any] = await self._request("GET", f"/agents/{agent_id}/bonds")
        bonds: list[dict[str, Any]] = result["bonds"]
        return bonds

    async def info(self) -> dict[str, Any]:
        result: dict[str, Any] = await self._request("GET", "/info")
        return result

    # --- vouches ------------------------------------------------------------------------

    def build_vouch(
        self,
        subject: str,
        *,
        days: int = 365,
        domains: Iterable[str] = (),
        now: float | None = None,
    ) -> dict[str, Any]:
        issued = self.agent.now() if now is None else now
        vouch: dict[str, Any] = {
            "vouch_type": "endorsement",
            "attester": self.agent.agent_id,
            "subject": subject,
            "level": "vouch",
            "issued_at": format_timestamp(issued),
            "expires_at": format_timestamp(issued + days * DAY),
        }
        if domains:
            vouch["domains"] = list(domains)
        return self.agent.sign(vouch)

    async def vouch(self, subject: str, **kwargs: Any) -> dict[str, Any]:
        vouch = self.build_vouch(subject, **kwargs)
        result: dict[str, Any] = await self._request("POST", "/vouches", vouch, sign=True)
        result["vouch"] = vouch
        return result

    async def revoke_vouch(self, vouch: Mapping[str, Any]) -> dict[str, Any]:
        revocation = self.agent.sign(
            {
                "revocation_type": "vouch",
                "attester": vouch["attester"],
                "subject": vouch["subject"],
                "vouch_digest": vouch_digest(vouch),
                "revoked_at": format_timestamp(self.agent.now()),
            }
        )
        result: dict[str, Any] = await self._request(
            "POST", "/vouches/revocations", revocation, sign=True
        )
        return result

    # --- bonds ----------------------------------------------------------------------------

    def sign_bond(self, bond: Mapping[str, Any]) -> dict[str, Any]:
        """Add this agent's signature over the bond (both parties sign the same bytes)."""
        return sign_bond(bond, self.agent.key, self.agent.agent_id)

    async def submit_bond(self, bond: Mapping[str, Any]) -> dict[str, Any]:
        result: dict[str, Any] = await self._request("POST", "/bonds", dict(bond), sign=True)
        return result

    async def revoke_bond(self, bond_id: str, *, reason: str | None = None) -> dict[str, Any]:
        revocation = bond_revoke(bond_id, self.agent, reason=reason)
        result: dict[str, Any] = await self._request(
            "POST", f"/bonds/{bond_id}/revocations", revocation, sign=True
        )
        return result

    # --- certifications ---------------------------------------------------------------------

    async def submit_certification(self, certification: Mapping[str, Any]) -> dict[str, Any]:
        """Submit a certification signed by its certifier (see :class:`ocpd.client.CertifierKey`).

        Any registered agent may submit it; the request is signed by this one.
        """
        result: dict[str, Any] = await self._request(
            "POST", "/certifications", dict(certification), sign=True
        )
        return result

    async def revoke_certification(self, revocation: Mapping[str, Any]) -> dict[str, Any]:
        """Submit a certification revocation signed by the certifier."""
        result: dict[str, Any] = await self._request(
            "POST", "/certifications/revocations", dict(revocation), sign=True
        )
        return result

    # --- ratings --------------------------------------------------------------------------

    async def rate(
        self, subject: str, rating: float, *, interaction_id: str | None = None
    ) -> dict[str, Any]:
        body: dict[str, Any] = {
            "rating_type": "interaction",
            "rater": self.agent.agent_id,
            "subject": subject,
            "rating": rating,
            "rated_at": format_timestamp(self.agent.now()),
        }
        if interaction_id is not None:
            body["interaction_id"] = interaction_id
        result: dict[str, Any] = await self._request(
            "POST", "/interactions", self.agent.sign(body), sign=True
        )
        return result
