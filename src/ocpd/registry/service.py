"""The registry's HTTP API (D7) and its background sweeper.

Every mutating call carries a D3 ``Authorization`` header by the agent the
artifact speaks for, and every artifact is verified (D2) before anything is
stored. Order of checks for a request: size, strict JSON, schema and rules,
authentication and signatures, trust and rate limits, then one group-commit
write; the in-memory ledger changes only after the write is durable.

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
from prometheus_client import Counter, Gauge, Histogram
from quart import Response, request

import ocpd
from ocpd.logs import get_logger, log_event
from ocpd.proto import schema
from ocpd.proto.artifacts import (
    MAX_BOND_DURATION,
    check_bond_revocation,
    check_interaction_rating,
    check_vouch,
    check_vouch_revocation,
    verify_bond,
    verify_registration,
    verify_signed,
    vouch_digest,
)
from ocpd.proto.auth import ReplayWindow, verify_authorization
from ocpd.proto.diddoc import verify_did_update
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
from ocpd.proto.trust import BondFact, RatingFact, VouchFact, permissions_for_level
from ocpd.registry.ledger import AgentEntry, BondEntry, Ledger, VouchEntry, agent_entry

if TYPE_CHECKING:
    import sqlite3

    from prometheus_client import CollectorRegistry
    from quart_trio import QuartTrio

    from ocpd.clock import WallClock
    from ocpd.config import Config
    from ocpd.storage import Database

__all__ = ["API", "RegistryService"]

API: Final = "/ocp/v1/registry"
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
    def __init__(
        self,
        database: Database,
        clock: WallClock,
        config: Config,
        metrics: CollectorRegistry,
    ) -> None:
        self.database = database
        self.clock = clock
        self.config = config
        self.network = config.node.network
        self.ledger = Ledger(
            Taxonomy.load_default(),
            anchors=config.trust.anchors,
            vouch_threshold=config.trust.vouch_threshold,
            weights=config.trust.weights,
        )
        skew = config.transport.clock_skew_seconds
        self.clock_skew = skew
        self.replay = ReplayWindow(window=skew)
        limits = config.rate_limiting
        self.rate_limits_on = limits.enabled
        self.discovery_limit = RateLimiter(limit=limits.discovery_per_minute, window=60)
        self.bond_limit = RateLimiter(limit=limits.bond_requests_per_hour, window=3600)
        self.loaded = trio.Event()
        self.agents_gauge = Gauge(
            "ocp_agents_registered", "Registered agents", ["status"], registry=metrics
        )
        self.bonds_gauge = Gauge("ocp_bonds_active", "Current active bonds", registry=metrics)
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
        await self._load()
        task_status.started()
        interval = self.config.registry.cleanup_interval_seconds
        while True:
            await trio.sleep(interval)
            await self.sweep()

    async def _load(self) -> None:
        def read(conn: sqlite3.Connection) -> tuple[list[Any], list[Any], list[Any], list[Any]]:
            return (
                conn.execute(
                    "SELECT record, did_document, status, online_seconds FROM agents"
                ).fetchall(),
                conn.execute("SELECT digest, artifact, revoked_at FROM vouches").fetchall(),
                conn.execute("SELECT bond_id, artifact, revoked_at FROM bonds").fetchall(),
                conn.execute("SELECT artifact FROM ratings").fetchall(),
            )

        agents, vouches, bonds, ratings = await self.database.read(read)
        for record_text, document_text, status, online in agents:
            self.ledger.put_agent(
                agent_entry(
                    record_text,
                    document_text,
                    status=status,
                    taxonomy=self.ledger.taxonomy,
                    online_seconds=online,
                )
            )
        for digest, text, revoked_at in vouches:
            self._remember_vouch(digest, text, revoked=revoked_at is not None)
        for _bond_id, text, revoked_at in bonds:
            self._remember_bond(text, revoked=revoked_at is not None)
        for (text,) in ratings:
            self._remember_rating(text)
        now = self.clock.now()
        self.ledger.recompute_levels(now=now)
        self._refresh_gauges(now)
        self.loaded.set()
        log_event(log, "registry_loaded", agents=len(self.ledger.agents), vouches=len(vouches))

    async def sweep(self) -> int:
        """Mark agents whose registration ttl passed as inactive; returns how many."""
        now = self.clock.now()
        expired = [
            e.agent_id
            for e in self.ledger.agents.values()
            if e.status == "active" and e.expires_at < now
        ]
        if not expired:
            return 0

        def write(conn: sqlite3.Connection) -> None:
            conn.executemany(
                "UPDATE agents SET status = 'inactive' WHERE agent_id = ? AND expires_at < ?",
                [(a, now) for a in expired],
            )

        await self.database.write(write)
        for agent_id in expired:
            self.ledger.agents[agent_id].status = "inactive"
            log_event(log, "agent_inactive", agent_id=agent_id)
        self.ledger.recompute_levels(now=now)
        self._refresh_gauges(now)
        return len(expired)

    def _refresh_gauges(self, now: float) -> None:
        counts = {"active": 0, "inactive": 0}
        for entry in self.ledger.agents.values():
            counts[entry.status] = counts.get(entry.status, 0) + 1
        for status, count in counts.items():
            self.agents_gauge.labels(status).set(count)
        self.bonds_gauge.set(sum(1 for b in self.ledger.bonds.values() if b.fact.active(now)))

    # --- helpers -----------------------------------------------------------------------

    async def _body(self) -> tuple[bytes, Any]:
        length = request.content_length
        if length is not None and length > MAX_BODY:
            raise PayloadTooLarge(f"body of {length} bytes exceeds {MAX_BODY}")
        raw = await request.get_data(cache=False, as_text=False)
        if not isinstance(raw, bytes):  # pragma: no cover - quart returns bytes here
            raise MalformedError("unreadable body")
        return raw, loads_strict(raw, max_size=MAX_BODY)

    def _authenticate(self, raw: bytes, agent_id: str, keys: list[bytes]) -> None:
        if not keys:
            raise AuthError("no keys are known for the authenticating agent")
        path = request.full_path if request.query_string else request.path
        verify_authorization(
            request.headers.get("Authorization"),
            method=request.method,
            path_and_query=path.rstrip("?"),
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
        parse_agent_id(agent_id, field=field)
        entry = self.ledger.agents.get(str(agent_id))
        if entry is None:
            raise NotFoundError(f"{field} {agent_id} is not registered")
        return entry

    @staticmethod
    def _change(conn: sqlite3.Connection, kind: str, key: str, body: str) -> None:
        conn.execute("INSERT INTO changes (kind, key, body) VALUES (?, ?, ?)", (kind, key, body))

    def _remember_vouch(self, digest: str, text: str, *, revoked: bool) -> VouchEntry:
        artifact = json.loads(text)
        entry = VouchEntry(
            digest=digest,
            artifact=artifact,
            text=text,
            fact=VouchFact(
                attester=artifact["attester"],
                subject=artifact["subject"],
                issued_at=parse_timestamp(artifact["issued_at"]),
                expires_at=parse_timestamp(artifact["expires_at"]),
                revoked=revoked,
            ),
        )
        self.ledger.vouches[digest] = entry
        return entry

    def _remember_bond(self, text: str, *, revoked: bool) -> BondEntry:
        artifact = json.loads(text)
        first, second = artifact["agents"]
        entry = BondEntry(
            bond_id=artifact["bond_id"],
            artifact=artifact,
            text=text,
            fact=BondFact(
                bond_id=artifact["bond_id"],
                agents=(first, second),
                established_at=parse_timestamp(artifact["established_at"]),
                expires_at=parse_timestamp(artifact["expires_at"]),
                revoked=revoked,
            ),
        )
        self.ledger.bonds[entry.bond_id] = entry
        return entry

    def _remember_rating(self, text: str) -> None:
        artifact = json.loads(text)
        fact = RatingFact(
            rater=artifact["rater"],
            subject=artifact["subject"],
            rating=float(artifact["rating"]),
            rated_at=parse_timestamp(artifact["rated_at"]),
        )
        self.ledger.ratings.setdefault(fact.subject, []).append(fact)

    # --- operations -----------------------------------------------------------------------

    async def register(self) -> Response:
        raw, body = await self._body()
        if not isinstance(body, dict):
            raise MalformedError("registration must be {record, did_document}")
        now = self.clock.now()
        record, document = verify_registration(body, now=now, clock_skew=self.clock_skew)
        agent_id = record["agent_id"]
        network, _ = parse_agent_id(agent_id)
        if network != self.network:
            raise MalformedError(f"this registry serves network {self.network!r}, not {network!r}")
        self._authenticate(raw, agent_id, document.verification_keys())
        domains = [self.ledger.taxonomy.normalise(d) for d in record["domains"]]
        existing = self.ledger.agents.get(agent_id)
        registered_at = parse_timestamp(record["registered_at"])
        if existing is None and len(self.ledger.agents) >= self.config.registry.max_agents:
            raise Unavailable(
                f"the registry holds its maximum of {self.config.registry.max_agents} agents"
            )
        if existing is not None:
            if registered_at < existing.registered_at:
                raise MalformedError(
                    "registration is older than the stored one", details={"reason": "stale"}
                )
            if existing.document.document != document.document:
                raise MalformedError(
                    "the DID document differs from the registered one; publish a signed "
                    f"update at {API}/agents/{agent_id}/did",
                    details={"reason": "did_document_changed"},
                )
        record_text = json.dumps(record, separators=(",", ":"), ensure_ascii=False)
        document_text = json.dumps(document.document, separators=(",", ":"), ensure_ascii=False)
        if existing is not None:
            document_text = existing.document_text
        expires_at = registered_at + int(record["ttl"])
        status = "active" if expires_at >= now else "inactive"
        change = json.dumps({"record": record, "did_document": json.loads(document_text)})

        def write(conn: sqlite3.Connection) -> None:
            conn.execute(
                "INSERT INTO agents (agent_id, record, did_document, registered_at, expires_at, "
                "status) VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT (agent_id) DO UPDATE SET "
                "record = excluded.record, registered_at = excluded.registered_at, "
                "expires_at = excluded.expires_at, status = excluded.status "
                "WHERE excluded.registered_at >= agents.registered_at",
                (agent_id, record_text, document_text, registered_at, expires_at, status),
            )
            self._change(conn, "agent", agent_id, change)

        await self.database.write(write)
        entry = agent_entry(
            record_text,
            document_text,
            status=status,
            taxonomy=self.ledger.taxonomy,
            online_seconds=existing.online_seconds if existing else 0.0,
        )
        entry.domains = tuple(domains)
        self.ledger.put_agent(entry)
        became_active = existing is None or existing.status != status
        if became_active or agent_id in self.ledger.anchors:
            self.ledger.recompute_levels(now=now)
        self._refresh_gauges(now)
        log_event(log, "agent_registered", agent_id=agent_id, status=status, new=existing is None)
        return _json_response(
            {
                "agent_id": agent_id,
                "status": status,
                "expires_at": format_timestamp(expires_at),
                "trust_level": self.ledger.level(agent_id),
            },
            201 if existing is None else 200,
        )

    async def update_did(self, agent_id: str) -> Response:
        raw, update = await self._body()
        entry = self._registered(agent_id, "agent_id")
        if not isinstance(update, dict):
            raise MalformedError("a DID document update is an object")
        schema.validate("did-document-update", update)
        self._authenticate(raw, agent_id, entry.document.verification_keys())
        new = verify_did_update(entry.document.document, update)
        document_text = json.dumps(new.document, separators=(",", ":"), ensure_ascii=False)
        change = json.dumps({"agent_id": agent_id, "update": update})

        def write(conn: sqlite3.Connection) -> None:
            conn.execute(
                "UPDATE agents SET did_document = ? WHERE agent_id = ?", (document_text, agent_id)
            )
            self._change(conn, "did_update", agent_id, change)

        await self.database.write(write)
        entry.document = new
        entry.document_text = document_text
        log_event(log, "did_updated", agent_id=agent_id, keys=len(new.active_keys))
        return _json_response({"agent_id": agent_id, "active_keys": sorted(new.active_keys)})

    def get_agent(self, agent_id: str) -> Response:
        entry = self._registered(agent_id, "agent_id")
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
        now = self.clock.now()
        check_vouch(vouch, now=now, clock_skew=self.clock_skew)
        attester = self._registered(vouch["attester"], "attester")
        self._registered(vouch["subject"], "subject")
        self._authenticate(raw, attester.agent_id, attester.document.verification_keys())
        verify_signed(vouch, attester.document.verification_keys(), what="vouch")
        if self.ledger.level(attester.agent_id) < 2:
            raise ForbiddenError(
                "only Level 2 agents can vouch",
                details={"level": self.ledger.level(attester.agent_id)},
            )
        digest = vouch_digest(vouch)
        if digest in self.ledger.vouches:
            return _json_response({"vouch_digest": digest, "stored": False})
        text = json.dumps(vouch, separators=(",", ":"), ensure_ascii=False)
        fact_issued = parse_timestamp(vouch["issued_at"])
        fact_expires = parse_timestamp(vouch["expires_at"])

        def write(conn: sqlite3.Connection) -> None:
            conn.execute(
                "INSERT INTO vouches (digest, attester, subject, issued_at, expires_at, artifact) "
                "VALUES (?, ?, ?, ?, ?, ?)",
                (digest, vouch["attester"], vouch["subject"], fact_issued, fact_expires, text),
            )
            self._change(conn, "vouch", digest, text)

        await self.database.write(write)
        self._remember_vouch(digest, text, revoked=False)
        self.ledger.recompute_levels(now=now)
        log_event(log, "vouch_stored", attester=vouch["attester"], subject=vouch["subject"])
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
        now = self.clock.now()
        check_vouch_revocation(revocation, entry.artifact, now=now, clock_skew=self.clock_skew)
        attester = self._registered(revocation["attester"], "attester")
        self._authenticate(raw, attester.agent_id, attester.document.verification_keys())
        verify_signed(revocation, attester.document.verification_keys(), what="vouch revocation")
        text = json.dumps(revocation, separators=(",", ":"), ensure_ascii=False)

        def write(conn: sqlite3.Connection) -> None:
            conn.execute(
                "UPDATE vouches SET revoked_at = ?, revocation = ? WHERE digest = ?",
                (now, text, entry.digest),
            )
            self._change(conn, "vouch_revocation", entry.digest, text)

        await self.database.write(write)
        entry.fact = VouchFact(
            attester=entry.fact.attester,
            subject=entry.fact.subject,
            issued_at=entry.fact.issued_at,
            expires_at=entry.fact.expires_at,
            revoked=True,
        )
        self.ledger.recompute_levels(now=now)
        log_event(log, "vouch_revoked", attester=entry.fact.attester, subject=entry.fact.subject)
        return _json_response({"vouch_digest": entry.digest, "revoked": True})

    async def add_bond(self) -> Response:
        raw, bond = await self._body()
        if not isinstance(bond, dict):
            raise MalformedError("a bond is an object")
        now = self.clock.now()
        schema.validate("bond", bond)
        parties = [self._registered(a, "agents") for a in bond["agents"]]
        submitter = _header_agent(request.headers.get("Authorization", ""))
        if submitter not in bond["agents"]:
            raise AuthError("a bond is submitted by one of its parties")
        party = self.ledger.agents[submitter]
        self._authenticate(raw, submitter, party.document.verification_keys())
        self._limit(self.bond_limit, submitter, "bond request")
        verify_bond(
            bond,
            {p.agent_id: p.document.verification_keys() for p in parties},
            now=now,
            clock_skew=self.clock_skew,
        )
        if self.ledger.level(submitter) < 2:
            raise ForbiddenError("Level 2 is needed to form a bond")
        if bond["bond_id"] in self.ledger.bonds:
            raise MalformedError("a bond with this id is already stored")
        text = json.dumps(bond, separators=(",", ":"), ensure_ascii=False)
        first, second = bond["agents"]
        established = parse_timestamp(bond["established_at"])
        expires = parse_timestamp(bond["expires_at"])
        if expires - established > MAX_BOND_DURATION:  # pragma: no cover - verify_bond checks
            raise MalformedError("a bond may last at most 365 days")

        def write(conn: sqlite3.Connection) -> None:
            conn.execute(
                "INSERT INTO bonds (bond_id, agent_a, agent_b, established_at, expires_at, "
                "artifact) VALUES (?, ?, ?, ?, ?, ?)",
                (bond["bond_id"], first, second, established, expires, text),
            )
            self._change(conn, "bond", bond["bond_id"], text)

        await self.database.write(write)
        self._remember_bond(text, revoked=False)
        self.ledger.recompute_levels(now=now)
        self._refresh_gauges(now)
        log_event(log, "bond_stored", bond_id=bond["bond_id"], agents=list(bond["agents"]))
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
        now = self.clock.now()
        check_bond_revocation(revocation, entry.artifact, now=now, clock_skew=self.clock_skew)
        revoker = self._registered(revocation["revoked_by"], "revoked_by")
        self._authenticate(raw, revoker.agent_id, revoker.document.verification_keys())
        verify_signed(revocation, revoker.document.verification_keys(), what="bond revocation")
        text = json.dumps(revocation, separators=(",", ":"), ensure_ascii=False)

        def write(conn: sqlite3.Connection) -> None:
            conn.execute(
                "UPDATE bonds SET revoked_at = ?, revocation = ? WHERE bond_id = ?",
                (now, text, bond_id),
            )
            self._change(conn, "bond_revocation", bond_id, text)

        await self.database.write(write)
        entry.fact = BondFact(
            bond_id=entry.fact.bond_id,
            agents=entry.fact.agents,
            established_at=entry.fact.established_at,
            expires_at=entry.fact.expires_at,
            revoked=True,
        )
        self.ledger.recompute_levels(now=now)
        self._refresh_gauges(now)
        log_event(log, "bond_revoked", bond_id=bond_id, by=revoker.agent_id)
        return _json_response({"bond_id": bond_id, "state": "revoked"})

    async def add_rating(self) -> Response:
        raw, rating = await self._body()
        if not isinstance(rating, dict):
            raise MalformedError("a rating is an object")
        now = self.clock.now()
        check_interaction_rating(rating, now=now, clock_skew=self.clock_skew)
        rater = self._registered(rating["rater"], "rater")
        self._registered(rating["subject"], "subject")
        self._authenticate(raw, rater.agent_id, rater.document.verification_keys())
        verify_signed(rating, rater.document.verification_keys(), what="interaction rating")
        if self.ledger.level(rater.agent_id) < 1:
            raise ForbiddenError("Level 1 is needed to rate interactions")
        text = json.dumps(rating, separators=(",", ":"), ensure_ascii=False)
        rated_at = parse_timestamp(rating["rated_at"])

        def write(conn: sqlite3.Connection) -> None:
            conn.execute(
                "INSERT OR IGNORE INTO ratings (rater, subject, rated_at, rating, artifact) "
                "VALUES (?, ?, ?, ?, ?)",
                (rating["rater"], rating["subject"], rated_at, float(rating["rating"]), text),
            )
            self._change(conn, "rating", f"{rating['rater']}>{rating['subject']}", text)

        await self.database.write(write)
        self._remember_rating(text)
        return _json_response({"stored": True}, 201)

    def trust(self, agent_id: str) -> Response:
        self._registered(agent_id, "agent_id")
        now = self.clock.now()
        level = self.ledger.level(agent_id)
        score = self.ledger.score(agent_id, now=now)
        vouches, bonds = self.ledger.counts(agent_id, now=now)
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
        return _json_response({"changes": changes, "cursor": cursor, "more": more})

    # --- routes -------------------------------------------------------------------------

    def install(self, app: QuartTrio) -> None:
        routes: list[tuple[str, str, str, Handler]] = [
            ("POST", "/agents", "register", self.register),
            ("GET", "/agents/<agent_id>", "get_agent", _awaitable(self.get_agent)),
            ("GET", "/agents/<agent_id>/did.json", "get_did", _awaitable(self.get_did)),
            ("POST", "/agents/<agent_id>/did", "update_did", self.update_did),
            ("GET", "/agents/<agent_id>/trust", "trust", _awaitable(self.trust)),
            ("POST", "/discover", "discover", self.discover),
            ("POST", "/vouches", "add_vouch", self.add_vouch),
            ("POST", "/vouches/revocations", "revoke_vouch", self.revoke_vouch),
            ("POST", "/bonds", "add_bond", self.add_bond),
            ("POST", "/bonds/<bond_id>/revocations", "revoke_bond", self.revoke_bond),
            ("POST", "/interactions", "add_rating", self.add_rating),
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
