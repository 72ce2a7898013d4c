"""How the node learns an agent's keys, trust level, status and domains.

Two implementations of one small interface (:class:`AgentDirectory`):

* :class:`LedgerDirectory` reads the in-process registry's ledger (``all``
  mode): no I/O, always current.
* :class:`HttpDirectory` asks a registry over HTTP(S) (``node`` mode):
  ``GET /ocp/v1/registry/agents/{id}`` for the record, status and level and
  ``GET …/{id}/did.json`` for the keys. Answers are cached on trio's clock:
  found agents for ``directory_cache_seconds``, unknown ones for
  ``directory_negative_cache_seconds``; concurrent lookups of one id share
  one request. The DID document must belong to the id (it derives from the
  document's initial key, D4), so a registry cannot hand out another
  agent's keys. A registry that cannot be reached is OCP-503, never
  "unknown agent".

Both also take the node's reports of authenticated WebSocket session time
(D7 uptime): in process through :meth:`RegistryService.report_sessions`, over
HTTP as ``POST /ocp/v1/registry/sessions`` (at most
``MAX_SESSIONS_PER_REPORT`` sessions a request) signed (D3) by the node's service
agent, which the registry must know and list in ``registry.session_reporters``.
A report that cannot be delivered is logged and dropped: uptime is a score
input, never a reason to disturb message traffic.
"""

from __future__ import annotations

import json
import logging
import ssl
from typing import TYPE_CHECKING, Any, Final, Protocol

import attrs
import httpx
import trio

from ocpd.logs import get_logger, log_event
from ocpd.node.presence import RELAY_CAPABILITY
from ocpd.proto import schema
from ocpd.proto.auth import signed_post_headers
from ocpd.proto.diddoc import parse_did_document
from ocpd.proto.encoding import format_timestamp
from ocpd.proto.errors import OCP_ERROR_CODES, OcpError, Unavailable
from ocpd.proto.ids import agent_id_matches_key
from ocpd.proto.strictjson import loads_strict
from ocpd.registry.uptime import MAX_SESSIONS_PER_REPORT, SessionReport

if TYPE_CHECKING:
    from collections.abc import Mapping, Sequence

    from ocpd.clock import WallClock
    from ocpd.components import ComponentContext, ComponentRuntime
    from ocpd.proto.crypto import SigningKey
    from ocpd.proto.taxonomy import Taxonomy
    from ocpd.registry.service import RegistryService

__all__ = [
    "AgentDirectory",
    "AgentInfo",
    "BondInfo",
    "HttpDirectory",
    "LedgerDirectory",
    "SessionSpan",
    "directory_for",
    "registry_base",
]

#: ``(agent_id, started_at, ended_at)``: an authenticated session, in epoch seconds.
SessionSpan = tuple[str, float, float]

API: Final = "/ocp/v1/registry"
MAX_ANSWER: Final = 1_048_576

log = get_logger("node")


@attrs.frozen
class AgentInfo:
    """What the node needs to know about an agent to route its messages."""

    agent_id: str
    keys: tuple[bytes, ...]
    level: int
    active: bool
    #: Normalised taxonomy paths.
    domains: tuple[str, ...]
    #: The record's endpoints, highest priority (lowest number) first.
    endpoints: tuple[Mapping[str, Any], ...] = ()
    #: The record declares ``cap:ocp:relay``: a node's service agent.
    relay: bool = False
    #: The capability ids the record declares.
    capabilities: frozenset[str] = frozenset()


@attrs.frozen
class BondInfo:
    """A bond in force between two agents, as far as the node applies it."""

    bond_id: str
    agents: tuple[str, str]
    #: The bond's ``permissions`` object (OCP §4.3.2), as both parties signed it.
    permissions: Mapping[str, Any]


class AgentDirectory(Protocol):
    taxonomy: Taxonomy

    async def lookup(self, agent_id: str) -> AgentInfo | None:
        """The agent, ``None`` when the registry does not know it; OCP-503 when unsure."""
        ...

    async def bond_between(self, first: str, second: str) -> BondInfo | None:
        """The newest bond in force between the two agents; OCP-503 when unsure."""
        ...

    async def report_sessions(self, sessions: Sequence[SessionSpan]) -> None:
        """Each agent held an authenticated session over ``[started_at, ended_at]`` (epoch s)."""
        ...

    async def register(self, raw: bytes, *, authorization: str, path: str) -> None:
        """Register (or renew) an agent from a signed registration request."""
        ...


def _relays(record: Mapping[str, Any]) -> bool:
    found = record.get("capabilities", ())
    return isinstance(found, list) and any(
        isinstance(c, dict) and c.get("id") == RELAY_CAPABILITY for c in found
    )


def _capabilities(record: Mapping[str, Any]) -> frozenset[str]:
    found = record.get("capabilities", ())
    if not isinstance(found, list):
        return frozenset()
    return frozenset(c["id"] for c in found if isinstance(c, dict) and isinstance(c.get("id"), str))


def _bond_info(artifact: Mapping[str, Any]) -> BondInfo:
    first, second = artifact["agents"]
    return BondInfo(
        bond_id=artifact["bond_id"], agents=(first, second), permissions=artifact["permissions"]
    )


def _endpoints(record: Mapping[str, Any]) -> tuple[Mapping[str, Any], ...]:
    found = record.get("endpoints", ())
    if not isinstance(found, list):
        return ()
    usable = [e for e in found if isinstance(e, dict)]
    return tuple(sorted(usable, key=lambda e: e.get("priority", 0)))


class LedgerDirectory:
    """The in-process registry's ledger (``--component all``)."""

    def __init__(self, registry: RegistryService) -> None:
        self._registry = registry
        self.taxonomy = registry.ledger.taxonomy
        #: Each agent's last answer, with what it was built from.
        self._built: dict[str, tuple[tuple[object, ...], AgentInfo]] = {}

    async def lookup(self, agent_id: str) -> AgentInfo | None:
        registry = self._registry
        if not registry.loaded.is_set():
            await registry.loaded.wait()
        ledger = registry.ledger
        entry = ledger.agents.get(agent_id)
        if entry is None:
            return None
        level = ledger.level(agent_id)
        # The ledger replaces an entry's record, document and domains rather
        # than changing them, and sets its status: the same objects (compared
        # by identity first), status and level make the same answer, without
        # decoding keys again.
        basis = (entry, entry.record, entry.document, entry.domains, entry.status, level)
        built = self._built.get(agent_id)
        if built is not None and built[0] == basis:
            return built[1]
        info = AgentInfo(
            agent_id=agent_id,
            keys=tuple(entry.document.verification_keys()),
            level=level,
            active=entry.status == "active",
            domains=entry.domains,
            endpoints=_endpoints(entry.record),
            relay=_relays(entry.record),
            capabilities=entry.capabilities,
        )
        if len(self._built) > 2 * len(ledger.agents) + 1024:
            self._built.clear()
        self._built[agent_id] = (basis, info)
        return info

    async def bond_between(self, first: str, second: str) -> BondInfo | None:
        registry = self._registry
        if not registry.loaded.is_set():
            await registry.loaded.wait()
        for entry in registry.ledger.bonds_of(first, now=registry.clock.now()):
            if second in entry.fact.agents and first != second:
                return _bond_info(entry.artifact)
        return None

    async def register(self, raw: bytes, *, authorization: str, path: str) -> None:
        registry = self._registry
        if not registry.loaded.is_set():
            await registry.loaded.wait()
        body = loads_strict(raw, max_size=MAX_ANSWER)
        await registry.register_signed(raw, body, authorization=authorization, path=path)

    async def report_sessions(self, sessions: Sequence[SessionSpan]) -> None:
        reports = [SessionReport(agent, started, ended) for agent, started, ended in sessions]
        try:
            await self._registry.report_sessions(reports)
        except OcpError as exc:
            log_event(log, "session_report_refused", level=logging.DEBUG, error_code=exc.code)


def registry_base(url: str) -> str:
    """The registry's base URL, whether configured with or without ``/ocp/v1``."""
    base = url.rstrip("/")
    for suffix in (API, "/ocp/v1"):
        if base.endswith(suffix):
            return base[: -len(suffix)]
    return base


@attrs.define(eq=False)
class _Cached:
    info: AgentInfo | None
    until: float


class HttpDirectory:
    """A registry reached over HTTP(S) (``--component node``)."""

    def __init__(
        self,
        url: str | None,
        taxonomy: Taxonomy,
        *,
        ca_file: str | None = None,
        ttl: float = 30.0,
        negative_ttl: float = 5.0,
        timeout: float = 5.0,
        max_entries: int = 100_000,
        transport: httpx.AsyncBaseTransport | None = None,
        reporter: tuple[str, SigningKey, WallClock] | None = None,
    ) -> None:
        self.url = registry_base(url) if url else None
        #: The node's service agent, its key and clock, for signed session reports.
        self._reporter = reporter
        self._reports_refused = False
        self.taxonomy = taxonomy
        self._ttl = ttl
        self._negative_ttl = negative_ttl
        self._max_entries = max_entries
        self._cache: dict[str, _Cached] = {}
        self._inflight: dict[str, trio.Event] = {}
        #: Each agent's bonds in force, by agent, with when the answer goes stale.
        self._bonds: dict[str, tuple[float, tuple[BondInfo, ...]]] = {}
        verify: ssl.SSLContext | bool = True
        if self.url is not None and self.url.startswith("https:"):
            verify = ssl.create_default_context()
            if ca_file is not None:
                verify.load_verify_locations(ca_file)
        self._http = httpx.AsyncClient(
            base_url=self.url or "http://registry.invalid",
            verify=verify,
            timeout=timeout,
            transport=transport,
        )

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Owns the HTTP client for as long as the node runs."""
        try:
            task_status.started()
            await trio.sleep_forever()
        finally:
            with trio.CancelScope(shield=True):
                await self._http.aclose()

    def forget(self, agent_id: str) -> None:
        self._cache.pop(agent_id, None)

    async def lookup(self, agent_id: str) -> AgentInfo | None:
        while True:
            cached = self._cache.get(agent_id)
            if cached is not None and cached.until > trio.current_time():
                return cached.info
            waiting = self._inflight.get(agent_id)
            if waiting is None:
                break
            await waiting.wait()
            if agent_id not in self._cache:
                # The request that was in flight failed; try ourselves.
                break
        done = trio.Event()
        self._inflight[agent_id] = done
        try:
            info = await self._fetch(agent_id)
            ttl = self._ttl if info is not None else self._negative_ttl
            if len(self._cache) >= self._max_entries:
                self._prune()
            self._cache[agent_id] = _Cached(info, trio.current_time() + ttl)
            return info
        finally:
            del self._inflight[agent_id]
            done.set()

    async def bond_between(self, first: str, second: str) -> BondInfo | None:
        """From ``GET …/agents/{first}/bonds``, cached like agent lookups."""
        cached = self._bonds.get(first)
        if cached is None or cached[0] <= trio.current_time():
            bonds = await self._fetch_bonds(first)
            if len(self._bonds) >= self._max_entries:
                self._bonds.clear()
            self._bonds[first] = (trio.current_time() + self._ttl, bonds)
        else:
            bonds = cached[1]
        for bond in bonds:
            if second in bond.agents and first != second:
                return bond
        return None

    async def _fetch_bonds(self, agent_id: str) -> tuple[BondInfo, ...]:
        if self.url is None:
            raise Unavailable("this node has no registry configured (transport.registry_url)")
        answer = await self._get(f"/agents/{agent_id}/bonds")
        if answer is None:
            return ()
        try:
            found = []
            for artifact in answer["bonds"]:
                schema.validate("bond", artifact)
                if agent_id not in artifact["agents"]:
                    raise ValueError("a bond of other agents")
                found.append(_bond_info(artifact))
            return tuple(found)
        except (KeyError, TypeError, ValueError, OcpError) as exc:
            raise Unavailable("the registry's answer about bonds does not check out") from exc

    def _prune(self) -> None:
        now = trio.current_time()
        self._cache = {k: v for k, v in self._cache.items() if v.until > now}
        if len(self._cache) >= self._max_entries:
            self._cache.clear()

    async def report_sessions(self, sessions: Sequence[SessionSpan]) -> None:
        if self.url is None or self._reporter is None:
            return
        for first in range(0, len(sessions), MAX_SESSIONS_PER_REPORT):
            if not await self._report(sessions[first : first + MAX_SESSIONS_PER_REPORT]):
                return

    async def _report(self, sessions: Sequence[SessionSpan]) -> bool:
        """One ``POST …/sessions``; whether the registry could be asked."""
        assert self._reporter is not None  # noqa: S101 - checked by report_sessions
        reporter, key, clock = self._reporter
        spans = [
            {
                "agent_id": agent_id,
                "started_at": format_timestamp(started_at, fraction_digits=3),
                "ended_at": format_timestamp(ended_at, fraction_digits=3),
            }
            for agent_id, started_at, ended_at in sessions
        ]
        body = json.dumps({"sessions": spans}, separators=(",", ":")).encode()
        path = API + "/sessions"
        headers = signed_post_headers(
            key, agent_id=reporter, path_and_query=path, body=body, now=clock.now()
        )
        try:
            response = await self._http.post(path, content=body, headers=headers)
        except httpx.HTTPError as exc:
            log_event(log, "session_report_failed", level=logging.DEBUG, reason=type(exc).__name__)
            return False
        if response.status_code in (401, 403) and not self._reports_refused:
            self._reports_refused = True
            log_event(
                log,
                "session_reports_refused",
                level=logging.WARNING,
                status=response.status_code,
                detail="register the node's service agent with the registry and list it in "
                "registry.session_reporters to count agents' session time",
                service_agent=reporter,
            )
        return True

    async def register(self, raw: bytes, *, authorization: str, path: str) -> None:
        if self.url is None:
            raise Unavailable("this node has no registry configured (transport.registry_url)")
        headers = {"Content-Type": "application/json", "Authorization": authorization}
        try:
            response = await self._http.post(path, content=raw, headers=headers)
        except httpx.HTTPError as exc:
            raise Unavailable(
                "the registry cannot be reached", details={"reason": type(exc).__name__}
            ) from exc
        if response.status_code in (200, 201):
            return
        try:
            answer = loads_strict(response.content, max_size=MAX_ANSWER)
        except OcpError:
            answer = None
        if isinstance(answer, dict) and isinstance(answer.get("error_code"), str):
            code = answer["error_code"]
            raise OcpError(
                str(answer.get("message", f"HTTP {response.status_code}")),
                code=code if code in OCP_ERROR_CODES else "OCP-502",
            )
        raise Unavailable(
            "the registry refused the registration", details={"status": response.status_code}
        )

    async def _get(self, path: str) -> Any:
        try:
            response = await self._http.get(API + path)
        except httpx.HTTPError as exc:
            raise Unavailable(
                "the registry cannot be reached", details={"reason": type(exc).__name__}
            ) from exc
        if response.status_code == 404:
            return None
        if response.status_code != 200 or len(response.content) > MAX_ANSWER:
            raise Unavailable(
                "the registry could not answer", details={"status": response.status_code}
            )
        try:
            return loads_strict(response.content, max_size=MAX_ANSWER)
        except OcpError as exc:
            raise Unavailable("the registry answered with invalid JSON") from exc

    async def _fetch(self, agent_id: str) -> AgentInfo | None:
        if self.url is None:
            raise Unavailable("this node has no registry configured (transport.registry_url)")
        agent = await self._get(f"/agents/{agent_id}")
        if agent is None:
            return None
        document = await self._get(f"/agents/{agent_id}/did.json")
        if document is None:
            return None
        try:
            record = agent["record"]
            if record["agent_id"] != agent_id:
                raise ValueError("record of another agent")
            parsed = parse_did_document(document)
            if parsed.agent_id != agent_id or not agent_id_matches_key(
                agent_id, parsed.initial_key
            ):
                raise ValueError("DID document of another agent")
            level = agent["trust_level"]
            if type(level) is not int:
                raise ValueError("trust_level is not an integer")
            domains: list[str] = []
            for domain in record.get("domains", ()):
                if domain in self.taxonomy:
                    domains.append(self.taxonomy.normalise(domain))
            return AgentInfo(
                agent_id=agent_id,
                keys=tuple(parsed.verification_keys()),
                level=level,
                active=agent.get("status") == "active",
                domains=tuple(domains),
                endpoints=_endpoints(record),
                relay=_relays(record),
                capabilities=_capabilities(record),
            )
        except (KeyError, TypeError, ValueError, OcpError) as exc:
            raise Unavailable("the registry's answer about an agent does not check out") from exc


def directory_for(ctx: ComponentContext, runtime: ComponentRuntime) -> AgentDirectory:
    """Where a component looks agents up: the registry in this process, or over HTTP(S).

    In ``--component all`` the registry's ledger is read directly; otherwise
    the registry at ``transport.registry_url`` is asked (its cache refresher
    joins the component's services).
    """
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
            component=ctx.component,
            detail="transport.registry_url is not set: requests that need an agent's keys "
            "are refused with OCP-503",
        )
    from ocpd.proto.taxonomy import Taxonomy

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
