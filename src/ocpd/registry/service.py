"""The registry's HTTP API (D7) and its background sweeper.

Every mutating call carries a D3 ``Authorization`` header by the agent the
artifact speaks for, and every artifact is verified (D2) before anything is
stored. Order of checks for a request: size, strict JSON, schema and rules,
authentication, rate limits, then the artifact's one apply path in
:mod:`ocpd.registry.intake` (signatures, trust policy, one group-commit
write; the in-memory ledger changes only after the write is durable), which
federation uses too.

Certifications and their revocations speak for no agent: they are signed
by a certifier key (D7). Any registered agent may submit one, with its own
``Authorization``; what makes it count is the certifier's signature and the
key being in ``trust.certifier_keys``.

Session reports (``POST …/sessions``, D7 uptime) speak for no agent either:
the ``Authorization`` must be by a node service agent named in
``registry.session_reporters`` and registered here. A node in the same
process calls :meth:`RegistryService.report_session` instead.

A first registration must be authorized with the agent's initial key
``#key-1``: only that key proves the DID document belongs to the agent id.
The request itself (path, header, body) is kept as the document's proof for
federation peers.

Error bodies are the fields of an OCP ``error`` payload: ``error_code``,
``message`` and ``details``, with the HTTP status of the code and
``Retry-After`` on OCP-429.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any, Final

import trio
from prometheus_client import Counter, Histogram
from quart import Response, request

import ocpd
from ocpd.logs import get_logger, log_event
from ocpd.proto import schema
from ocpd.proto.artifacts import (
    check_bond_revocation,
    check_certification,
    check_interaction_rating,
    check_vouch,
    check_vouch_revocation,
    verify_registration,
    vouch_digest,
)
from ocpd.proto.auth import ReplayWindow, verify_authorization
from ocpd.proto.encoding import format_timestamp, parse_timestamp
from ocpd.proto.errors import (
    AuthError,
    ForbiddenError,
    MalformedError,
    NotFoundError,
    OcpError,
    PayloadTooLarge,
    RateLimited,
    Unavailable,
)
from ocpd.proto.ids import parse_agent_id
from ocpd.proto.ratelimit import RateLimiter
from ocpd.proto.strictjson import loads_strict
from ocpd.proto.taxonomy import Taxonomy
from ocpd.proto.trust import permissions_for_level
from ocpd.registry.intake import ArtifactStore
from ocpd.registry.ledger import Ledger
from ocpd.registry.tables import feed_epoch_txn
from ocpd.registry.uptime import (
    MAX_SESSIONS_PER_REPORT,
    SessionReport,
    SessionsRecorded,
    check_session,
    record_sessions,
)

if TYPE_CHECKING:
    import sqlite3
    from collections.abc import Iterable

    from prometheus_client import CollectorRegistry
    from quart_trio import QuartTrio

    from ocpd.clock import WallClock
    from ocpd.config import Config
    from ocpd.registry.intake import Change
    from ocpd.registry.ledger import AgentEntry
    from ocpd.storage import Database

__all__ = ["API", "NODE_ID_HEADER", "RegistryService"]

API: Final = "/ocp/v1/registry"
NODE_ID_HEADER: Final = "OCP-Node-Id"
FEED_EPOCH_HEADER: Final = "OCP-Feed-Epoch"
MAX_BODY: Final = 1_048_576
log = get_logger("registry")

Handler = Callable[..., Awaitable[Response]]


def _json_response(body: object, status: int = 200) -> Response:
    return Response(
        json.dumps(body, separators=(",", ":"), ensure_ascii=False),
        status=status,
        content_type="application/json",
    )


def error_response(exc: OcpError) -> Response:
    body: dict[str, object] = {"error_code": exc.code, "message": exc.message}
    if exc.details:
        body["details"] = exc.details
    response = _json_response(body, exc.http_status)
    if isinstance(exc, RateLimited):
        response.headers["Retry-After"] = str(exc.retry_after)
    return response


class RegistryService:
    """The registry's HTTP routes over one :class:`ArtifactStore`."""

    def __init__(
        self,
        database: Database,
        clock: WallClock,
        config: Config,
        metrics: CollectorRegistry,
        *,
        changes: trio.MemorySendChannel[Change] | None = None,
        node_id: str | None = None,
    ) -> None:
        self.database = database
        self.clock = clock
        self.config = config
        self.network = config.node.network
        self.node_id = node_id
        self.feed_epoch: str | None = None
        self.ledger = Ledger(
            Taxonomy.load_default().extended(config.taxonomy.extensions),
            anchors=config.trust.anchors,
            certifier_keys=config.trust.certifier_keys,
            vouch_threshold=config.trust.vouch_threshold,
            weights=config.trust.weights,
        )
        skew = config.transport.clock_skew_seconds
        self.clock_skew = skew
        self.store = ArtifactStore(
            database,
            clock,
            self.ledger,
            metrics,
            network=self.network,
            clock_skew=skew,
            max_agents=config.registry.max_agents,
            changes=changes,
        )
        self.replay = ReplayWindow(window=skew)
        limits = config.rate_limiting
        self.rate_limits_on = limits.enabled
        self.discovery_limit = RateLimiter(limit=limits.discovery_per_minute, window=60)
        self.bond_limit = RateLimiter(limit=limits.bond_requests_per_hour, window=3600)
        self.session_limit = RateLimiter(limit=limits.session_reports_per_minute, window=60)
        self.session_reporters = frozenset(config.registry.session_reporters)
        self.loaded = trio.Event()
        self.rejections = Counter(
            "ocpd_registry_rejections_total",
            "Registry requests refused, by operation and error code",
            ["operation", "code"],
            registry=metrics,
        )
        self.discovery_latency = Histogram(
            "ocpd_registry_discovery_seconds",
            "Discovery latency inside the registry",
            buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25),
            registry=metrics,
        )

    # --- service -----------------------------------------------------------------

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Load the ledger, then mark agents inactive when their ttl passes."""
        agents, vouches = await self.store.load()
        self.feed_epoch = await self.database.write(feed_epoch_txn)
        self.loaded.set()
        log_event(log, "registry_loaded", agents=agents, vouches=vouches)
        task_status.started()
        interval = self.config.registry.cleanup_interval_seconds
        while True:
            await trio.sleep(interval)
            await self.sweep()

    async def sweep(self) -> int:
        """Mark agents whose registration ttl passed as inactive; returns how many."""
        return await self.store.sweep()

    # --- helpers -----------------------------------------------------------------------

    async def _body(self) -> tuple[bytes, Any]:
        length = request.content_length
        if length is not None and length > MAX_BODY:
            raise PayloadTooLarge(f"body of {length} bytes exceeds {MAX_BODY}")
        raw = await request.get_data(cache=False, as_text=False)
        if not isinstance(raw, bytes):  # pragma: no cover - quart returns bytes here
            raise MalformedError("unreadable body")
        return raw, loads_strict(raw, max_size=MAX_BODY)

    @staticmethod
    def _path() -> str:
        path = request.full_path if request.query_string else request.path
        return path.rstrip("?")

    def _authenticate(self, raw: bytes, agent_id: str, keys: list[bytes]) -> None:
        if not keys:
            raise AuthError("no keys are known for the authenticating agent")
        verify_authorization(
            request.headers.get("Authorization"),
            method=request.method,
            path_and_query=self._path(),
            body=raw,
            public_keys=keys,
            now=self.clock.now(),
            replay=self.replay,
            window=self.clock_skew,
            expected_agent_id=agent_id,
        )

    def _limit(self, limiter: RateLimiter, key: str, what: str) -> None:
        if not self.rate_limits_on:
            return
        retry = limiter.take(key, now=trio.current_time())
        if retry is not None:
            raise RateLimited(f"{what} rate limit reached", retry_after=retry)

    def _registered(self, agent_id: object, field: str) -> AgentEntry:
        return self.store.registered(agent_id, field)

    def _require_level(self, agent_id: str, level: int, message: str) -> Callable[[], None]:
        def check() -> None:
            if self.ledger.level(agent_id) < level:
                raise ForbiddenError(message, details={"level": self.ledger.level(agent_id)})

        return check

    # --- operations -----------------------------------------------------------------------

    async def register(self) -> Response:
        raw, body = await self._body()
        outcome = await self.register_signed(
            raw, body, authorization=request.headers.get("Authorization"), path=self._path()
        )
        created = outcome.pop("created")
        return _json_response(outcome, 201 if created else 200)

    async def register_signed(
        self, raw: bytes, body: Any, *, authorization: str | None, path: str
    ) -> dict[str, Any]:
        """Register or renew from a signed request; also how an in-process node registers.

        The answer carries ``created`` (a first registration) besides what
        the route returns.
        """
        if not isinstance(body, dict):
            raise MalformedError("registration must be {record, did_document}")
        now = self.clock.now()
        record, document = verify_registration(body, now=now, clock_skew=self.clock_skew)
        agent_id = record["agent_id"]
        network, _ = parse_agent_id(agent_id)
        if network != self.network:
            raise MalformedError(f"this registry serves network {self.network!r}, not {network!r}")
        existing = self.ledger.agents.get(agent_id)
        if existing is not None:
            keys = existing.document.verification_keys()
        elif document.initial_key in document.active_keys.values():
            # Only #key-1 proves that the document belongs to the agent id
            # (D4): another key in it could have been added by anyone.
            keys = [document.initial_key]
        else:
            raise AuthError("a first registration is made with the initial key #key-1")
        if not keys:
            raise AuthError("no keys are known for the authenticating agent")
        verify_authorization(
            authorization,
            method="POST",
            path_and_query=path,
            body=raw,
            public_keys=keys,
            now=now,
            replay=self.replay,
            window=self.clock_skew,
            expected_agent_id=agent_id,
        )
        if existing is None and len(self.ledger.agents) >= self.config.registry.max_agents:
            raise Unavailable(
                f"the registry holds its maximum of {self.config.registry.max_agents} agents"
            )
        proof = {"path": path, "authorization": authorization, "body": raw.decode("utf-8")}
        await self.store.apply_agent(
            {"record": record, "did_document": document.document, "registration": proof},
            authorized=document,
        )
        entry = self.ledger.agents[agent_id]
        return {
            "agent_id": agent_id,
            "status": entry.status,
            "expires_at": format_timestamp(entry.expires_at),
            "trust_level": self.ledger.level(agent_id),
            "created": existing is None,
        }

    async def update_did(self, agent_id: str) -> Response:
        raw, update = await self._body()
        entry = self._registered(agent_id, "agent_id")
        if not isinstance(update, dict):
            raise MalformedError("a DID document update is an object")
        schema.validate("did-document-update", update)
        self._authenticate(raw, agent_id, entry.document.verification_keys())
        await self.store.apply_did_update(agent_id, update)
        document = self.ledger.agents[agent_id].document
        return _json_response({"agent_id": agent_id, "active_keys": sorted(document.active_keys)})

    def get_agent(self, agent_id: str) -> Response:
        entry = self._registered(agent_id, "agent_id")
        self.store.refresh_levels()
        return _json_response(
            {
                "record": entry.record,
                "status": entry.status,
                "expires_at": format_timestamp(entry.expires_at),
                "trust_level": self.ledger.level(agent_id),
                "did_document_url": f"{API}/agents/{agent_id}/did.json",
            }
        )

    def get_did(self, agent_id: str) -> Response:
        entry = self._registered(agent_id, "agent_id")
        return Response(entry.document_text, status=200, content_type="application/did+json")

    async def discover(self) -> Response:
        raw, body = await self._body()
        started = trio.current_time()
        if not isinstance(body, dict) or not set(body) <= {"filters", "limit", "offset"}:
            raise MalformedError("discovery takes {filters, limit, offset}")
        filters = body.get("filters", {})
        if not isinstance(filters, dict) or not set(filters) <= {
            "domains",
            "capabilities",
            "min_trust_level",
            "status",
        }:
            raise MalformedError("unknown discovery filter")
        domains = _str_list(filters.get("domains", []), "filters.domains")
        capabilities = _str_list(filters.get("capabilities", []), "filters.capabilities")
        min_level = _int_in(filters.get("min_trust_level", 0), 0, 4, "filters.min_trust_level")
        status = filters.get("status", "active")
        if status not in {"active", "inactive", "any"}:
            raise MalformedError("filters.status must be active, inactive or any")
        limit = _int_in(body.get("limit", 20), 1, 100, "limit")
        offset = _int_in(body.get("offset", 0), 0, 10_000_000, "offset")
        who = request.headers.get("Authorization")
        if who is not None:
            agent = _header_agent(who)
            self._authenticate(raw, agent, self.ledger.keys_of(agent))
            key = agent
        else:
            key = f"ip:{request.remote_addr}"
        self._limit(self.discovery_limit, key, "discovery")
        total, entries = self.ledger.discover(
            domains=domains,
            capabilities=capabilities,
            min_trust_level=min_level,
            status=None if status == "any" else status,
            limit=limit,
            offset=offset,
        )
        results = [
            {
                "agent_id": e.agent_id,
                "display_name": e.record.get("display_name"),
                "domains": list(e.domains),
                "capabilities": sorted(e.capabilities),
                "trust_level": self.ledger.level(e.agent_id),
                "endpoints": e.record.get("endpoints", []),
                "status": e.status,
            }
            for e in entries
        ]
        self.discovery_latency.observe(trio.current_time() - started)
        return _json_response({"total": total, "results": results})

    async def add_vouch(self) -> Response:
        raw, vouch = await self._body()
        if not isinstance(vouch, dict):
            raise MalformedError("a vouch is an object")
        check_vouch(vouch, now=self.clock.now(), clock_skew=self.clock_skew)
        attester = self._registered(vouch["attester"], "attester")
        self._registered(vouch["subject"], "subject")
        self._authenticate(raw, attester.agent_id, attester.document.verification_keys())
        outcome = await self.store.apply_vouch(
            vouch,
            policy=self._require_level(attester.agent_id, 2, "only Level 2 agents can vouch"),
        )
        digest = vouch_digest(vouch)
        if not outcome.stored:
            return _json_response({"vouch_digest": digest, "stored": False})
        return _json_response(
            {
                "vouch_digest": digest,
                "stored": True,
                "subject_level": self.ledger.level(vouch["subject"]),
            },
            201,
        )

    async def revoke_vouch(self) -> Response:
        raw, revocation = await self._body()
        if not isinstance(revocation, dict):
            raise MalformedError("a revocation is an object")
        schema.validate("vouch-revocation", revocation)
        entry = self.ledger.vouches.get(revocation["vouch_digest"])
        if entry is None:
            raise NotFoundError("no such vouch")
        check_vouch_revocation(
            revocation, entry.artifact, now=self.clock.now(), clock_skew=self.clock_skew
        )
        attester = self._registered(revocation["attester"], "attester")
        self._authenticate(raw, attester.agent_id, attester.document.verification_keys())
        await self.store.apply_vouch_revocation(revocation)
        return _json_response({"vouch_digest": entry.digest, "revoked": True})

    async def add_bond(self) -> Response:
        raw, bond = await self._body()
        if not isinstance(bond, dict):
            raise MalformedError("a bond is an object")
        schema.validate("bond", bond)
        for agent in bond["agents"]:
            self._registered(agent, "agents")
        submitter = _header_agent(request.headers.get("Authorization", ""))
        if submitter not in bond["agents"]:
            raise AuthError("a bond is submitted by one of its parties")
        party = self.ledger.agents[submitter]
        self._authenticate(raw, submitter, party.document.verification_keys())
        self._limit(self.bond_limit, submitter, "bond request")
        await self.store.apply_bond(
            bond, policy=self._require_level(submitter, 2, "Level 2 is needed to form a bond")
        )
        return _json_response(
            {
                "bond_id": bond["bond_id"],
                "state": "active",
                "levels": {a: self.ledger.level(a) for a in bond["agents"]},
            },
            201,
        )

    async def revoke_bond(self, bond_id: str) -> Response:
        raw, revocation = await self._body()
        entry = self.ledger.bonds.get(bond_id)
        if entry is None:
            raise NotFoundError("no such bond")
        if not isinstance(revocation, dict):
            raise MalformedError("a revocation is an object")
        check_bond_revocation(
            revocation, entry.artifact, now=self.clock.now(), clock_skew=self.clock_skew
        )
        revoker = self._registered(revocation["revoked_by"], "revoked_by")
        self._authenticate(raw, revoker.agent_id, revoker.document.verification_keys())
        await self.store.apply_bond_revocation(revocation)
        return _json_response({"bond_id": bond_id, "state": "revoked"})

    async def add_rating(self) -> Response:
        raw, rating = await self._body()
        if not isinstance(rating, dict):
            raise MalformedError("a rating is an object")
        check_interaction_rating(rating, now=self.clock.now(), clock_skew=self.clock_skew)
        rater = self._registered(rating["rater"], "rater")
        self._registered(rating["subject"], "subject")
        self._authenticate(raw, rater.agent_id, rater.document.verification_keys())
        outcome = await self.store.apply_rating(
            rating,
            policy=self._require_level(rater.agent_id, 1, "Level 1 is needed to rate interactions"),
        )
        return _json_response({"stored": outcome.stored}, 201 if outcome.stored else 200)

    def _authenticate_submitter(self, raw: bytes) -> str:
        """Authenticate whoever submits an artifact that speaks for no agent: any registered one."""
        submitter = _header_agent(request.headers.get("Authorization", ""))
        self._authenticate(raw, submitter, self.ledger.keys_of(submitter))
        return submitter

    async def add_certification(self) -> Response:
        raw, certification = await self._body()
        if not isinstance(certification, dict):
            raise MalformedError("a certification is an object")
        check_certification(certification, now=self.clock.now(), clock_skew=self.clock_skew)
        self._authenticate_submitter(raw)
        outcome = await self.store.apply_certification(certification)
        certification_id = certification["certification_id"]
        if not outcome.stored:
            return _json_response({"certification_id": certification_id, "stored": False})
        return _json_response(
            {
                "certification_id": certification_id,
                "stored": True,
                "subject_level": self.ledger.level(certification["subject"]),
            },
            201,
        )

    async def revoke_certification(self) -> Response:
        raw, revocation = await self._body()
        if not isinstance(revocation, dict):
            raise MalformedError("a revocation is an object")
        schema.validate("certification-revocation", revocation)
        self._authenticate_submitter(raw)
        await self.store.apply_certification_revocation(revocation)
        return _json_response(
            {
                "certification_id": revocation["certification_id"],
                "revoked": True,
                "subject_level": self.ledger.level(revocation["subject"]),
            }
        )

    # --- session time (D7 uptime) ------------------------------------------------------------

    async def report_session(self, agent_id: str, started_at: float, ended_at: float) -> bool:
        """Agent ``agent_id`` held an authenticated session over ``[started_at, ended_at]``.

        For a node in the same process. Times are wall-clock epoch seconds,
        from this daemon's clock. Safe to repeat: overlapping, duplicate and
        growing reports (``[start, now]`` every few minutes for one long
        session) count each second once. ``False`` (and nothing counted) when
        the agent is not registered here; OCP-400 (:class:`MalformedError`)
        when the interval is reversed, not finite or ends in the future.
        """
        recorded = await self.report_sessions(
            [SessionReport(agent_id=agent_id, started_at=started_at, ended_at=ended_at)]
        )
        return recorded.counted == 1

    async def report_sessions(self, reports: Iterable[SessionReport]) -> SessionsRecorded:
        """Several sessions at once, in one write; see :meth:`report_session`."""
        await self.loaded.wait()
        return await record_sessions(self.store, reports, now=self.clock.now())

    async def add_sessions(self) -> Response:
        raw, body = await self._body()
        reports = _session_reports(body)
        now = self.clock.now()
        for report in reports:
            check_session(report, now=now, clock_skew=self.clock_skew)
        reporter = _header_agent(request.headers.get("Authorization", ""))
        self._authenticate(raw, reporter, self.ledger.keys_of(reporter))
        if reporter not in self.session_reporters:
            raise ForbiddenError(
                "only the agents in registry.session_reporters report sessions",
                details={"reason": "not_a_session_reporter"},
            )
        self._limit(self.session_limit, reporter, "session report")
        recorded = await self.report_sessions(reports)
        return _json_response(
            {"counted": recorded.counted, "unknown_agents": list(recorded.unknown_agents)}
        )

    def trust(self, agent_id: str) -> Response:
        self._registered(agent_id, "agent_id")
        self.store.refresh_levels()
        now = self.clock.now()
        level = self.ledger.level(agent_id)
        score, vouches, bonds = self.ledger.score(agent_id, now=now)
        return _json_response(
            {
                "agent_id": agent_id,
                "trust_level": level,
                "trust_score": score.score,
                "components": score.components,
                "weights": self.ledger.weights,
                "vouch_count": vouches,
                "bond_count": bonds,
                "permissions": sorted(permissions_for_level(level)),
            }
        )

    def bonds(self, agent_id: str) -> Response:
        """The agent's bonds in force, newest established first (for nodes and SDKs)."""
        self._registered(agent_id, "agent_id")
        now = self.clock.now()
        return _json_response(
            {
                "agent_id": agent_id,
                "bonds": [entry.artifact for entry in self.ledger.bonds_of(agent_id, now=now)],
            }
        )

    def info(self) -> Response:
        return _json_response(
            {
                "mode": self.config.registry.mode,
                "network": self.network,
                "trust_weights": self.ledger.weights,
                "vouch_threshold": self.ledger.vouch_threshold,
                "taxonomy_version": self.ledger.taxonomy.version,
                "max_agents": self.config.registry.max_agents,
                "agents": len(self.ledger.agents),
                "version": ocpd.__version__,
            }
        )

    async def sync(self) -> Response:
        since = _query_int("since", 0, 0, 2**62)
        limit = _query_int("limit", 500, 1, 5000)

        def read(conn: sqlite3.Connection) -> list[tuple[int, str, str]]:
            return conn.execute(
                "SELECT seq, kind, body FROM changes WHERE seq > ? ORDER BY seq LIMIT ?",
                (since, limit + 1),
            ).fetchall()

        rows = await self.database.read(read)
        more = len(rows) > limit
        rows = rows[:limit]
        changes = [{"seq": seq, "kind": kind, "body": json.loads(body)} for seq, kind, body in rows]
        cursor = rows[-1][0] if rows else since
        response = _json_response({"changes": changes, "cursor": cursor, "more": more})
        if self.node_id is not None:
            # Lets federation peers tell a registry that lost its data (and so
            # its identity and its sequence numbers) from one that did not.
            response.headers[NODE_ID_HEADER] = self.node_id
        if self.feed_epoch is not None:
            # Changes when the database was restored from a backup: the same
            # identity, but sequence numbers that peers have already passed.
            response.headers[FEED_EPOCH_HEADER] = self.feed_epoch
        return response

    # --- routes -------------------------------------------------------------------------

    def install(self, app: QuartTrio) -> None:
        routes: list[tuple[str, str, str, Handler]] = [
            ("POST", "/agents", "register", self.register),
            ("GET", "/agents/<agent_id>", "get_agent", _awaitable(self.get_agent)),
            ("GET", "/agents/<agent_id>/did.json", "get_did", _awaitable(self.get_did)),
            ("POST", "/agents/<agent_id>/did", "update_did", self.update_did),
            ("GET", "/agents/<agent_id>/trust", "trust", _awaitable(self.trust)),
            ("GET", "/agents/<agent_id>/bonds", "bonds", _awaitable(self.bonds)),
            ("POST", "/discover", "discover", self.discover),
            ("POST", "/vouches", "add_vouch", self.add_vouch),
            ("POST", "/vouches/revocations", "revoke_vouch", self.revoke_vouch),
            ("POST", "/bonds", "add_bond", self.add_bond),
            ("POST", "/bonds/<bond_id>/revocations", "revoke_bond", self.revoke_bond),
            ("POST", "/interactions", "add_rating", self.add_rating),
            ("POST", "/certifications", "add_certification", self.add_certification),
            (
                "POST",
                "/certifications/revocations",
                "revoke_certification",
                self.revoke_certification,
            ),
            ("POST", "/sessions", "report_sessions", self.add_sessions),
            ("GET", "/info", "info", _awaitable(self.info)),
            ("GET", "/sync", "sync", self.sync),
        ]
        for method, path, name, handler in routes:
            app.add_url_rule(
                API + path, f"registry_{name}", self._guard(name, handler), methods=[method]
            )

    def _guard(self, operation: str, handler: Handler) -> Handler:
        async def guarded(**kwargs: Any) -> Response:
            await self.loaded.wait()
            try:
                return await handler(**kwargs)
            except OcpError as exc:
                self.rejections.labels(operation, exc.code).inc()
                log_event(
                    log,
                    "request_rejected",
                    level=logging.INFO,
                    operation=operation,
                    error_code=exc.code,
                    reason=exc.message[:200],
                )
                return error_response(exc)

        guarded.__name__ = f"registry_{operation}"
        return guarded


def _awaitable(fn: Callable[..., Response]) -> Handler:
    async def wrapper(**kwargs: Any) -> Response:
        return fn(**kwargs)

    return wrapper


def _header_agent(header: str) -> str:
    from ocpd.proto.auth import parse_authorization

    return parse_authorization(header).agent_id


def _session_reports(body: object) -> list[SessionReport]:
    """``{"sessions": [{agent_id, started_at, ended_at}, …]}`` with D1 timestamps."""
    if not isinstance(body, dict) or set(body) != {"sessions"}:
        raise MalformedError("a session report is {sessions}")
    sessions = body["sessions"]
    if not isinstance(sessions, list) or not 1 <= len(sessions) <= MAX_SESSIONS_PER_REPORT:
        raise MalformedError(f"sessions must be a list of 1 to {MAX_SESSIONS_PER_REPORT} sessions")
    reports = []
    for i, session in enumerate(sessions):
        if not isinstance(session, dict) or set(session) != {"agent_id", "started_at", "ended_at"}:
            raise MalformedError(f"sessions.{i} is {{agent_id, started_at, ended_at}}")
        parse_agent_id(session["agent_id"], field=f"sessions.{i}.agent_id")
        reports.append(
            SessionReport(
                agent_id=session["agent_id"],
                started_at=parse_timestamp(session["started_at"], field=f"sessions.{i}.started_at"),
                ended_at=parse_timestamp(session["ended_at"], field=f"sessions.{i}.ended_at"),
            )
        )
    return reports


def _str_list(value: object, field: str) -> list[str]:
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value) or len(value) > 64:
        raise MalformedError(f"{field} must be a list of at most 64 strings")
    return list(value)


def _int_in(value: object, low: int, high: int, field: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise MalformedError(f"{field} must be an integer from {low} to {high}")
    return value


def _query_int(name: str, default: int, low: int, high: int) -> int:
    text = request.args.get(name)
    if text is None:
        return default
    if not text.isdigit():
        raise MalformedError(f"{name} must be a non-negative integer")
    return _int_in(int(text), low, high, name)
