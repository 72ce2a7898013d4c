"""The one way a registry artifact gets in: checked, stored, applied, announced.

Theory of operation
-------------------
Every kind of the change feed (``agent``, ``did_update``, ``vouch``,
``vouch_revocation``, ``bond``, ``bond_revocation``, ``rating``,
``certification``, ``certification_revocation``) has one ``apply_*`` method
on :class:`ArtifactStore`. It checks the artifact (schema
and rules, then the D2 signature against keys of the DID document this
registry holds), decides whether it changes anything, writes it and a
``changes`` row in one group commit, updates the in-memory ledger only once
the write is durable, and announces the change on the bus. HTTP handlers
call it after D3 authentication and rate limits, passing ``policy`` for the
rules that bind whoever submits (an attester must be Level 2 when it
vouches); federation calls :meth:`ArtifactStore.ingest` with ``origin`` set
to the peer and no Authorization: the artifact is its own proof.

What an apply returns or raises:

* ``Outcome(stored=True, seq=…)``: the artifact was new; a change row was written.
* ``Outcome(stored=False, reason=…)``: nothing to do (a duplicate, an older
  record, a superseded update, a signature by a key its agent has revoked
  since). No change row, and nothing to announce: this is what ends gossip.
* an :class:`~ocpd.proto.errors.OcpError`: the artifact is invalid (forged,
  altered, breaking a rule). It is never stored and never passed on.
* :class:`Deferred` (from :meth:`~ArtifactStore.ingest`): it cannot be
  checked yet. It names an agent, vouch or bond not held here, a signer from
  a DID document update not seen yet, or a time ahead of this clock; or the
  registry is full. Federation tries it again later.

Certifications (Level 4, D7) are signed by the certifier key they name, not
by an agent: the signature is checked under that key, and only keys in
``trust.certifier_keys`` are taken (OCP-403 over HTTP; from a peer a
genuine certification under another key is ``Outcome(stored=False,
reason="unknown_certifier")``: no forgery, and not ours to pass on).

Agents (see :mod:`ocpd.registry.evidence`). A first registration arrives
with the proof that ``#key-1`` published its DID document, and the updates
applied since; a registry that holds the agent checks the record against
its own document instead and takes updates it lacks from the change. For
one agent the newest valid record wins: by ``registered_at``, then by the
larger record digest, so that every registry picks the same one. Two first
registrations with different documents (made before the registries heard of
each other) are settled while neither document was updated: the later
``Authorization`` wins, ties by header text.

Concurrency: applies of one key (an agent, a vouch, a bond, a rating) run
one at a time under a per-key lock, so "is it new?" and "store it" cannot
interleave with another apply of the same key.
"""

from __future__ import annotations

import json
from contextlib import AsyncExitStack, asynccontextmanager
from functools import partial
from typing import TYPE_CHECKING, Any, Final

import attrs
import trio
from prometheus_client import Gauge

from ocpd.logs import get_logger, log_event, log_fields
from ocpd.proto import schema
from ocpd.proto.artifacts import (
    check_agent_record,
    check_bond,
    check_bond_revocation,
    check_interaction_rating,
    check_vouch,
    check_vouch_revocation,
    verify_certification,
    verify_certification_revocation,
    vouch_digest,
)
from ocpd.proto.diddoc import verify_did_update
from ocpd.proto.encoding import parse_timestamp
from ocpd.proto.errors import (
    ForbiddenError,
    MalformedError,
    NotFoundError,
    OcpError,
    Unavailable,
)
from ocpd.proto.ids import parse_agent_id
from ocpd.proto.signing import artifact_digest
from ocpd.proto.trust import BondFact, CertificationFact, RatingFact, Uptime, VouchFact
from ocpd.registry.evidence import (
    UpdateRow,
    bond_signed,
    document_lineage,
    signed_by,
    update_chain,
    verifies_under,
    verify_registration_proof,
)
from ocpd.registry.ledger import (
    AgentEntry,
    BondEntry,
    CertificationEntry,
    VouchEntry,
    agent_entry,
)
from ocpd.registry.tables import (
    AgentRow,
    did_history_txn,
    insert_bond_txn,
    insert_certification_txn,
    insert_did_update_txn,
    insert_rating_txn,
    insert_vouch_txn,
    load_registry_txn,
    mark_inactive_txn,
    revoke_txn,
    text,
    uptime_from_row,
    write_agent_txn,
)

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Callable, Iterable, Mapping

    from prometheus_client import CollectorRegistry

    from ocpd.clock import WallClock
    from ocpd.proto.diddoc import DidDocument
    from ocpd.registry.ledger import Ledger
    from ocpd.storage import Database

__all__ = ["KINDS", "ArtifactStore", "Change", "Deferred", "Outcome"]

KINDS: Final = (
    "agent",
    "did_update",
    "vouch",
    "vouch_revocation",
    "bond",
    "bond_revocation",
    "rating",
    "certification",
    "certification_revocation",
)
_TIME_FIELDS: Final = {
    "vouch": "issued_at",
    "vouch_revocation": "revoked_at",
    "bond": "established_at",
    "bond_revocation": "revoked_at",
    "rating": "rated_at",
    "certification": "issued_at",
    "certification_revocation": "revoked_at",
}

log = get_logger("registry")


class Deferred(Exception):
    """An artifact that cannot be checked yet; try it again on a later round."""

    def __init__(self, reason: str) -> None:
        self.reason = reason
        super().__init__(reason)


@attrs.frozen
class Outcome:
    stored: bool
    seq: int | None = None
    reason: str = ""
    """Why nothing changed: duplicate, older, stale, revoked_key, conflict, unverifiable,
    unknown_certifier."""


_AGENT_FIELDS: Final = (
    frozenset({"record", "did_document"}),
    frozenset({"record", "did_document", "registration", "did_updates"}),
)
_DUPLICATE: Final = Outcome(stored=False, reason="duplicate")
_REVOKED_KEY: Final = Outcome(stored=False, reason="revoked_key")


@attrs.frozen
class Change:
    """A committed change row, announced on the bus (``origin``: the peer it came from)."""

    seq: int
    kind: str
    origin: str | None


@attrs.define(eq=False)
class _Held:
    lock: trio.Lock = attrs.Factory(trio.Lock)
    users: int = 0


class _KeyedLocks:
    """One lock per key, forgotten when nobody holds or waits for it."""

    def __init__(self) -> None:
        self._held: dict[str, _Held] = {}

    @asynccontextmanager
    async def hold(self, key: str) -> AsyncIterator[None]:
        held = self._held.setdefault(key, _Held())
        held.users += 1
        try:
            async with held.lock:
                yield
        finally:
            held.users -= 1
            if held.users == 0:
                del self._held[key]


# --- the store -------------------------------------------------------------------------------


class ArtifactStore:
    """The registry's artifacts: durable in SQLite, applied to the ledger, announced."""

    def __init__(
        self,
        database: Database,
        clock: WallClock,
        ledger: Ledger,
        metrics: CollectorRegistry,
        *,
        network: str,
        clock_skew: float,
        max_agents: int,
        changes: trio.MemorySendChannel[Change] | None = None,
    ) -> None:
        self.database = database
        self.clock = clock
        self.ledger = ledger
        self.network = network
        self.clock_skew = clock_skew
        self.max_agents = max_agents
        self._changes = changes
        self._locks = _KeyedLocks()
        self._levels_dirty = False
        self._proofless: set[str] = set()
        self.dropped_changes = 0
        self.agents_gauge = Gauge(
            "ocp_agents_registered", "Registered agents", ["status"], registry=metrics
        )
        self.bonds_gauge = Gauge("ocp_bonds_active", "Current active bonds", registry=metrics)
        # Computed at scrape time, so that writes never walk every agent.
        for status in ("active", "inactive"):
            self.agents_gauge.labels(status).set_function(partial(self.ledger.status_count, status))
        self.bonds_gauge.set_function(self._active_bonds)

    # --- start, sweep, levels ------------------------------------------------------------

    async def load(self) -> tuple[int, int]:
        """Rebuild the ledger from the database; returns (agents, vouches)."""
        agents, vouches, bonds, ratings, certifications = await self.database.read(
            load_registry_txn
        )
        for record_text, document_text, status, proofless, *uptime in agents:
            entry = agent_entry(
                record_text,
                document_text,
                status=status,
                taxonomy=self.ledger.taxonomy,
                uptime=uptime_from_row(*uptime),
            )
            self.ledger.put_agent(entry)
            if proofless:
                # Registered before proofs were kept: its document cannot be
                # shown to peers that do not know it until it registers again.
                self._proofless.add(entry.agent_id)
        for digest, vouch, revoked_at in vouches:
            self._remember_vouch(digest, json.loads(vouch), revoked=revoked_at is not None)
        for bond, revoked_at in bonds:
            self._remember_bond(json.loads(bond), revoked=revoked_at is not None)
        for (rating,) in ratings:
            self._remember_rating(json.loads(rating))
        for certification, revoked_at in certifications:
            self._remember_certification(json.loads(certification), revoked=revoked_at is not None)
        now = self.clock.now()
        self.ledger.recompute_levels(now=now)
        return len(agents), len(vouches)

    async def sweep(self) -> int:
        """Mark agents whose registration ttl passed as inactive; returns how many.

        Levels are recomputed too when that changed a status, or when a vouch,
        bond or certification started or stopped being in force since the
        last computation.
        """
        now = self.clock.now()
        expired = [
            e.agent_id
            for e in self.ledger.agents.values()
            if e.status == "active" and e.expires_at < now
        ]
        if not expired:
            self.refresh_levels()
            return 0
        await self.database.write(partial(mark_inactive_txn, expired, now))
        for agent_id in expired:
            entry = self.ledger.agents[agent_id]
            # A newer record may have been applied while the write was pending.
            if entry.expires_at < now:
                self.ledger.set_status(agent_id, "inactive")
                log_event(log, "agent_inactive", agent_id=agent_id)
        self.ledger.recompute_levels(now=now)
        return len(expired)

    def refresh_levels(self) -> bool:
        """Recompute levels if a fact started or expired since they were computed."""
        now = self.clock.now()
        if now < self.ledger.levels_until:
            return False
        self.ledger.recompute_levels(now=now)
        return True

    def _active_bonds(self) -> int:
        now = self.clock.now()
        return sum(1 for b in self.ledger.bonds.values() if b.fact.active(now))

    def settle(self) -> None:
        """Recompute trust levels once after applies made with ``defer_levels``."""
        if self._levels_dirty:
            self._levels_dirty = False
            now = self.clock.now()
            self.ledger.recompute_levels(now=now)

    def _committed(
        self,
        seq: int,
        kind: str,
        origin: str | None,
        *,
        levels: bool,
        defer: bool,
        event: str,
        **fields: object,
    ) -> Outcome:
        """After a durable write: levels (now or at :meth:`settle`), bus, log."""
        if levels:
            if defer:
                self._levels_dirty = True
            else:
                now = self.clock.now()
                self.ledger.recompute_levels(now=now)
        if self._changes is not None:
            try:
                self._changes.send_nowait(Change(seq, kind, origin))
            except trio.WouldBlock:
                # Peers pull it on their interval anyway: a push only hurries.
                self.dropped_changes += 1
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                self._changes = None
        log_fields(log, event, {**fields, "origin": origin or "local"})
        return Outcome(stored=True, seq=seq)

    # --- federation entry ---------------------------------------------------------------------

    async def ingest(self, kind: str, body: object, *, origin: str) -> Outcome:
        """Apply one change from a peer's feed; levels wait for :meth:`settle`."""
        if not isinstance(body, dict):
            raise MalformedError("a change body is an object")
        self._defer_if_future(kind, body)
        try:
            if kind == "agent":
                return await self.apply_agent(body, origin=origin, defer_levels=True)
            if kind == "did_update":
                if set(body) != {"agent_id", "update"}:
                    raise MalformedError("a did_update change is {agent_id, update}")
                return await self.apply_did_update(body["agent_id"], body["update"], origin=origin)
            if kind == "vouch":
                return await self.apply_vouch(body, origin=origin, defer_levels=True)
            if kind == "vouch_revocation":
                return await self.apply_vouch_revocation(body, origin=origin, defer_levels=True)
            if kind == "bond":
                return await self.apply_bond(body, origin=origin, defer_levels=True)
            if kind == "bond_revocation":
                return await self.apply_bond_revocation(body, origin=origin, defer_levels=True)
            if kind == "rating":
                return await self.apply_rating(body, origin=origin)
            if kind == "certification":
                return await self.apply_certification(body, origin=origin, defer_levels=True)
            if kind == "certification_revocation":
                return await self.apply_certification_revocation(
                    body, origin=origin, defer_levels=True
                )
        except (NotFoundError, Unavailable) as exc:
            raise Deferred(exc.message) from exc
        raise MalformedError(f"unknown change kind {kind!r}")

    def _defer_if_future(self, kind: str, body: Mapping[str, Any]) -> None:
        """A time ahead of this clock is valid later, so it is no forgery now."""
        if kind == "agent":
            record = body.get("record")
            value = record.get("registered_at") if isinstance(record, dict) else None
        else:
            value = body.get(_TIME_FIELDS.get(kind, ""))
        try:
            at = parse_timestamp(value)
        except MalformedError:
            return  # the apply reports it
        if at > self.clock.now() + self.clock_skew:
            raise Deferred(f"{kind} is dated in the future")

    # --- ledger helpers ---------------------------------------------------------------------

    @asynccontextmanager
    async def holding_agents(self, agent_ids: Iterable[str]) -> AsyncIterator[None]:
        """Hold the apply locks of several agents (taken in id order: no deadlock)."""
        async with AsyncExitStack() as stack:
            for agent_id in sorted(set(agent_ids)):
                await stack.enter_async_context(self._locks.hold(f"agent:{agent_id}"))
            yield

    def registered(self, agent_id: object, field: str) -> AgentEntry:
        parse_agent_id(agent_id, field=field)
        entry = self.ledger.agents.get(str(agent_id))
        if entry is None:
            raise NotFoundError(f"{field} {agent_id} is not registered")
        return entry

    def _remember_vouch(self, digest: str, artifact: dict[str, Any], *, revoked: bool) -> None:
        self.ledger.vouches[digest] = VouchEntry(
            digest=digest,
            artifact=artifact,
            text=text(artifact),
            fact=VouchFact(
                attester=artifact["attester"],
                subject=artifact["subject"],
                issued_at=parse_timestamp(artifact["issued_at"]),
                expires_at=parse_timestamp(artifact["expires_at"]),
                revoked=revoked,
            ),
        )

    def _remember_bond(self, artifact: dict[str, Any], *, revoked: bool) -> None:
        first, second = artifact["agents"]
        self.ledger.put_bond(
            BondEntry(
                bond_id=artifact["bond_id"],
                artifact=artifact,
                text=text(artifact),
                fact=BondFact(
                    bond_id=artifact["bond_id"],
                    agents=(first, second),
                    established_at=parse_timestamp(artifact["established_at"]),
                    expires_at=parse_timestamp(artifact["expires_at"]),
                    revoked=revoked,
                ),
            )
        )

    def _remember_certification(self, artifact: dict[str, Any], *, revoked: bool) -> None:
        certification_id = artifact["certification_id"]
        self.ledger.certifications[certification_id] = CertificationEntry(
            certification_id=certification_id,
            artifact=artifact,
            text=text(artifact),
            fact=CertificationFact(
                subject=artifact["subject"],
                certifier_key=artifact["certifier"],
                issued_at=parse_timestamp(artifact["issued_at"]),
                expires_at=parse_timestamp(artifact["expires_at"]),
                revoked=revoked,
            ),
        )

    def _remember_rating(self, artifact: dict[str, Any]) -> None:
        fact = RatingFact(
            rater=artifact["rater"],
            subject=artifact["subject"],
            rating=float(artifact["rating"]),
            rated_at=parse_timestamp(artifact["rated_at"]),
        )
        self.ledger.ratings.setdefault(fact.subject, []).append(fact)

    # --- agents -------------------------------------------------------------------------------

    async def apply_agent(
        self,
        body: Mapping[str, Any],
        *,
        origin: str | None = None,
        authorized: DidDocument | None = None,
        defer_levels: bool = False,
    ) -> Outcome:
        """An agent change: ``{record, did_document, registration?, did_updates?}``.

        ``authorized``: over HTTP, the document the handler has just checked
        the record against (and, for a first registration, the request's
        Authorization with ``#key-1``): those checks are not made twice.
        """
        if not _AGENT_FIELDS[0] <= set(body) <= _AGENT_FIELDS[1]:
            raise MalformedError(
                "an agent change is {record, did_document, registration?, did_updates?}"
            )
        record = body["record"]
        if not isinstance(record, dict):
            raise MalformedError("record must be an object")
        checked = authorized is not None and origin is None
        if not checked:
            check_agent_record(record, now=self.clock.now(), clock_skew=self.clock_skew)
        agent_id = record["agent_id"]
        network, _ = parse_agent_id(agent_id)
        if network != self.network:
            raise MalformedError(f"this registry serves network {self.network!r}, not {network!r}")
        async with self._locks.hold(f"agent:{agent_id}"):
            existing = self.ledger.agents.get(agent_id)
            if existing is None:
                return await self._first_agent(
                    body, record, origin=origin, authorized=authorized, defer=defer_levels
                )
            return await self._known_agent(
                existing, body, record, origin=origin, checked=checked, defer=defer_levels
            )

    async def _first_agent(
        self,
        body: Mapping[str, Any],
        record: dict[str, Any],
        *,
        origin: str | None,
        authorized: DidDocument | None,
        defer: bool,
    ) -> Outcome:
        if "registration" not in body:
            # A peer upgraded from before proofs were kept: nothing shows that
            # the document is the agent's. Not a forgery; not taken either.
            return Outcome(stored=False, reason="unverifiable")
        updates: list[UpdateRow] = []
        if authorized is not None and origin is None and "did_updates" not in body:
            document = authorized
        else:
            document, updates = document_lineage(body, record["agent_id"])
            if not signed_by(record, document, what="agent record", lenient=origin is not None):
                return _REVOKED_KEY
        if len(self.ledger.agents) >= self.max_agents:
            raise Unavailable(f"the registry holds its maximum of {self.max_agents} agents")
        return await self._store_agent(
            record,
            document=document,
            registration=text(body["registration"]),
            updates=updates,
            existing=None,
            origin=origin,
            defer=defer,
        )

    async def _known_agent(
        self,
        existing: AgentEntry,
        body: Mapping[str, Any],
        record: dict[str, Any],
        *,
        origin: str | None,
        checked: bool,
        defer: bool,
    ) -> Outcome:
        agent_id = existing.agent_id
        if body["did_document"] != existing.document.document:
            if origin is None:
                raise MalformedError(
                    "the DID document differs from the registered one; publish a signed "
                    f"update at /ocp/v1/registry/agents/{agent_id}/did",
                    details={"reason": "did_document_changed"},
                )
            await self._reconcile_document(existing, body, origin=origin)
            existing = self.ledger.agents[agent_id]
        if origin is not None and record == existing.record:
            return _DUPLICATE
        try:
            if not checked and not signed_by(
                record, existing.document, what="agent record", lenient=origin is not None
            ):
                return _REVOKED_KEY
        except OcpError:
            theirs = body["did_document"]
            if (
                origin is not None
                and theirs != existing.document.document
                and "registration" in body
            ):
                # Signed under the sender's document, which could not be reached
                # from the one held here (a fork, or updates not seen yet): no
                # forgery if that document is proven from #key-1.
                proven, _ = document_lineage(body, agent_id)
                if verifies_under(record, proven.verification_keys()):
                    raise Deferred("record signed under a DID document not held here") from None
            raise
        incoming = (parse_timestamp(record["registered_at"]), artifact_digest(record).hex())
        stored = (existing.registered_at, artifact_digest(existing.record).hex())
        if incoming == stored:
            return _DUPLICATE
        if incoming < stored:
            if origin is None:
                raise MalformedError(
                    "registration is older than the stored one", details={"reason": "stale"}
                )
            return Outcome(stored=False, reason="older")
        registration = None
        if origin is None and agent_id in self._proofless:
            # This request proves the unchanged document from now on.
            try:
                proven, _, _ = verify_registration_proof(body.get("registration"), agent_id)
            except OcpError:
                pass
            else:
                if proven.document == existing.document.document:
                    registration = text(body["registration"])
        return await self._store_agent(
            record,
            document=existing.document,
            registration=registration,
            updates=None,
            existing=existing,
            origin=origin,
            defer=defer,
        )

    async def _reconcile_document(
        self, existing: AgentEntry, body: Mapping[str, Any], *, origin: str
    ) -> None:
        """Bring the document held here towards the sender's: its updates, or its newer start."""
        agent_id = existing.agent_id
        chain = update_chain(body)
        for update in chain:
            try:
                await self._apply_did_update_held(agent_id, update, origin=origin)
            except Deferred:
                break
        entry = self.ledger.agents[agent_id]
        if entry.document.document == body["did_document"] or chain or "registration" not in body:
            return
        history, ours = await self.database.read(partial(did_history_txn, agent_id))
        if history:
            return  # a document that was updated is never replaced by a first registration
        document, signed_at, header = verify_registration_proof(body["registration"], agent_id)
        if document.document != body["did_document"]:
            raise MalformedError("did_document is not the one its registration gives")
        if ours is not None:
            _, our_time, our_header = verify_registration_proof(json.loads(ours), agent_id)
            if (signed_at, header) <= (our_time, our_header):
                return
        row = AgentRow(
            agent_id=agent_id,
            record_text=entry.record_text,
            document_text=text(document.document),
            registered_at=entry.registered_at,
            expires_at=entry.expires_at,
            status=entry.status,
            registration=text(body["registration"]),
            updates=[],
        )
        seq = await self.database.write(partial(write_agent_txn, row))
        entry.document = document
        entry.document_text = row.document_text
        self._proofless.discard(agent_id)
        self._committed(
            seq, "agent", origin, levels=False, defer=True, event="did_document_replaced",
            agent_id=agent_id,
        )  # fmt: skip

    async def _store_agent(
        self,
        record: dict[str, Any],
        *,
        document: DidDocument,
        registration: str | None,
        updates: list[UpdateRow] | None,
        existing: AgentEntry | None,
        origin: str | None,
        defer: bool,
    ) -> Outcome:
        now = self.clock.now()
        agent_id = record["agent_id"]
        # Domains are checked against this registry's taxonomy before anything
        # is written: an unknown or ambiguous one is OCP-400, nothing stored.
        for domain in record["domains"]:
            self.ledger.taxonomy.normalise(domain)
        registered_at = parse_timestamp(record["registered_at"])
        expires_at = registered_at + int(record["ttl"])
        status = "active" if expires_at >= now else "inactive"
        if existing is None:
            uptime = Uptime.first(registered_at, now=now)
        else:
            # D7: a renewal before the held record expired proves the agent
            # online since it took effect; peers' records count the same way.
            uptime = existing.uptime.renewed(
                registered_at=registered_at,
                previous_registered_at=existing.registered_at,
                previous_expires_at=existing.expires_at,
                now=now,
                grace=self.clock_skew,
            )
        row = AgentRow(
            agent_id=agent_id,
            record_text=text(record),
            document_text=existing.document_text if existing else text(document.document),
            registered_at=registered_at,
            expires_at=expires_at,
            status=status,
            registration=registration,
            updates=updates,
            uptime=uptime,
        )
        seq = await self.database.write(partial(write_agent_txn, row))
        self.ledger.put_agent(
            agent_entry(
                row.record_text,
                row.document_text,
                status=status,
                taxonomy=self.ledger.taxonomy,
                uptime=uptime,
            )
        )
        if registration is not None:
            self._proofless.discard(agent_id)
        levels = existing is None or existing.status != status or agent_id in self.ledger.anchors
        if levels and self.ledger.admit(agent_id):
            levels = False  # nobody else's level depends on this agent yet
        return self._committed(
            seq, "agent", origin, levels=levels, defer=defer, event="agent_registered",
            agent_id=agent_id, status=status, new=existing is None,
        )  # fmt: skip

    # --- DID document updates -----------------------------------------------------------------

    async def apply_did_update(
        self, agent_id: object, update: object, *, origin: str | None = None
    ) -> Outcome:
        parse_agent_id(agent_id, field="agent_id")
        async with self._locks.hold(f"agent:{agent_id}"):
            return await self._apply_did_update_held(str(agent_id), update, origin=origin)

    async def _apply_did_update_held(
        self, agent_id: str, update: object, *, origin: str | None
    ) -> Outcome:
        entry = self.registered(agent_id, "agent_id")
        if not isinstance(update, dict):
            raise MalformedError("a DID document update is an object")
        schema.validate("did-document-update", update)
        digest = artifact_digest(update).hex()
        history, _ = await self.database.read(partial(did_history_txn, agent_id))
        if any(d == digest for d, _ in history):
            return _DUPLICATE
        updated_at = parse_timestamp(update["updated_at"], field="updated_at")
        if history and updated_at < max(at for _, at in history):
            if origin is None:
                raise MalformedError(
                    "the update is older than the current document", details={"reason": "stale"}
                )
            return Outcome(stored=False, reason="stale")
        signer = update.get("signer")
        if origin is not None and signer not in entry.document.active_keys:
            if isinstance(signer, str) and signer in entry.document.revoked_keys:
                return Outcome(stored=False, reason="stale")
            raise Deferred("the update's signer is not active in the document held here")
        new = verify_did_update(entry.document.document, update)
        if new.document == entry.document.document:
            return _DUPLICATE
        document_text = text(new.document)
        seq = await self.database.write(
            partial(insert_did_update_txn, agent_id, digest, updated_at, update, document_text)
        )
        entry.document = new
        entry.document_text = document_text
        return self._committed(
            seq, "did_update", origin, levels=False, defer=True, event="did_updated",
            agent_id=agent_id, keys=len(new.active_keys),
        )  # fmt: skip

    # --- vouches -----------------------------------------------------------------------------

    async def apply_vouch(
        self,
        vouch: dict[str, Any],
        *,
        origin: str | None = None,
        policy: Callable[[], None] | None = None,
        defer_levels: bool = False,
    ) -> Outcome:
        """A vouch (§4.2.3); over HTTP ``policy`` requires a Level 2 attester.

        From peers every vouch that verifies is taken, whatever its attester's
        level here: levels are computed from all facts and a vouch counts only
        while its attester is Level 2, so arrival order cannot change them.
        """
        check_vouch(vouch, now=self.clock.now(), clock_skew=self.clock_skew)
        digest = vouch_digest(vouch)
        async with self._locks.hold(f"vouch:{digest}"):
            known = self.ledger.vouches.get(digest)
            if origin is not None and known is not None and known.artifact == vouch:
                return _DUPLICATE
            attester = self.registered(vouch["attester"], "attester")
            self.registered(vouch["subject"], "subject")
            if not signed_by(vouch, attester.document, what="vouch", lenient=origin is not None):
                return _REVOKED_KEY
            if policy is not None:
                policy()
            if known is not None:
                return _DUPLICATE
            issued = parse_timestamp(vouch["issued_at"])
            expires = parse_timestamp(vouch["expires_at"])
            seq = await self.database.write(
                partial(insert_vouch_txn, digest, vouch, issued, expires)
            )
            self._remember_vouch(digest, vouch, revoked=False)
        return self._committed(
            seq, "vouch", origin, levels=True, defer=defer_levels, event="vouch_stored",
            attester=vouch["attester"], subject=vouch["subject"],
        )  # fmt: skip

    async def apply_vouch_revocation(
        self, revocation: dict[str, Any], *, origin: str | None = None, defer_levels: bool = False
    ) -> Outcome:
        schema.validate("vouch-revocation", revocation)
        digest = revocation["vouch_digest"]
        async with self._locks.hold(f"vouch:{digest}"):
            entry = self.ledger.vouches.get(digest)
            if entry is None:
                raise NotFoundError("no such vouch")
            now = self.clock.now()
            check_vouch_revocation(revocation, entry.artifact, now=now, clock_skew=self.clock_skew)
            attester = self.registered(revocation["attester"], "attester")
            lenient = origin is not None
            if not signed_by(
                revocation, attester.document, what="vouch revocation", lenient=lenient
            ):
                return _REVOKED_KEY
            if entry.fact.revoked:
                return _DUPLICATE
            seq = await self.database.write(
                partial(revoke_txn, "vouch_revocation", digest, revocation, now)
            )
            entry.fact = attrs.evolve(entry.fact, revoked=True)
        return self._committed(
            seq, "vouch_revocation", origin, levels=True, defer=defer_levels,
            event="vouch_revoked", attester=entry.fact.attester, subject=entry.fact.subject,
        )  # fmt: skip

    # --- bonds ---------------------------------------------------------------------------------

    async def apply_bond(
        self,
        bond: dict[str, Any],
        *,
        origin: str | None = None,
        policy: Callable[[], None] | None = None,
        defer_levels: bool = False,
    ) -> Outcome:
        """A bond signed by both parties (§4.3.2); over HTTP ``policy`` checks the submitter."""
        now = self.clock.now()
        check_bond(bond, now=now, clock_skew=self.clock_skew)
        bond_id = bond["bond_id"]
        async with self._locks.hold(f"bond:{bond_id}"):
            known = self.ledger.bonds.get(bond_id)
            if origin is not None and known is not None and known.artifact == bond:
                return _DUPLICATE
            parties = {a: self.registered(a, "agents").document for a in bond["agents"]}
            if not bond_signed(
                bond, parties, now=now, clock_skew=self.clock_skew, lenient=origin is not None
            ):
                return _REVOKED_KEY
            if policy is not None:
                policy()
            if known is not None:
                if origin is None:
                    raise MalformedError("a bond with this id is already stored")
                return Outcome(stored=False, reason="conflict")
            established = parse_timestamp(bond["established_at"])
            expires = parse_timestamp(bond["expires_at"])
            seq = await self.database.write(partial(insert_bond_txn, bond, established, expires))
            self._remember_bond(bond, revoked=False)
        return self._committed(
            seq, "bond", origin, levels=True, defer=defer_levels, event="bond_stored",
            bond_id=bond_id, agents=list(bond["agents"]),
        )  # fmt: skip

    async def apply_bond_revocation(
        self, revocation: dict[str, Any], *, origin: str | None = None, defer_levels: bool = False
    ) -> Outcome:
        schema.validate("bond-revocation", revocation)
        bond_id = revocation["bond_id"]
        async with self._locks.hold(f"bond:{bond_id}"):
            entry = self.ledger.bonds.get(bond_id)
            if entry is None:
                raise NotFoundError("no such bond")
            now = self.clock.now()
            check_bond_revocation(revocation, entry.artifact, now=now, clock_skew=self.clock_skew)
            revoker = self.registered(revocation["revoked_by"], "revoked_by")
            lenient = origin is not None
            if not signed_by(revocation, revoker.document, what="bond revocation", lenient=lenient):
                return _REVOKED_KEY
            if entry.fact.revoked:
                return _DUPLICATE
            seq = await self.database.write(
                partial(revoke_txn, "bond_revocation", bond_id, revocation, now)
            )
            entry.fact = attrs.evolve(entry.fact, revoked=True)
        return self._committed(
            seq, "bond_revocation", origin, levels=True, defer=defer_levels,
            event="bond_revoked", bond_id=bond_id, by=revoker.agent_id,
        )  # fmt: skip

    # --- ratings -------------------------------------------------------------------------------

    async def apply_rating(
        self,
        rating: dict[str, Any],
        *,
        origin: str | None = None,
        policy: Callable[[], None] | None = None,
    ) -> Outcome:
        """An interaction rating (D7); one per rater, subject and ``rated_at``."""
        check_interaction_rating(rating, now=self.clock.now(), clock_skew=self.clock_skew)
        rater_id, subject = rating["rater"], rating["subject"]
        async with self._locks.hold(f"rating:{rater_id}>{subject}>{rating['rated_at']}"):
            rater = self.registered(rater_id, "rater")
            self.registered(subject, "subject")
            lenient = origin is not None
            if not signed_by(rating, rater.document, what="interaction rating", lenient=lenient):
                return _REVOKED_KEY
            if policy is not None:
                policy()
            rated_at = parse_timestamp(rating["rated_at"])
            seq = await self.database.write(partial(insert_rating_txn, rating, rated_at))
            if seq is None:
                return _DUPLICATE
            self._remember_rating(rating)
        return self._committed(
            seq, "rating", origin, levels=False, defer=True, event="rating_stored",
            rater=rater_id, subject=subject,
        )  # fmt: skip

    # --- certifications (Level 4) ----------------------------------------------------------

    async def apply_certification(
        self,
        certification: dict[str, Any],
        *,
        origin: str | None = None,
        defer_levels: bool = False,
    ) -> Outcome:
        """A certification signed by the certifier key it names (D7).

        Checked in this order: rules (OCP-400), the signature under the named
        key (OCP-401: a forgery), that key being configured here (OCP-403 over
        HTTP, not stored from a peer), the subject being registered (OCP-404).
        """
        now = self.clock.now()
        verify_certification(certification, now=now, clock_skew=self.clock_skew)
        certification_id = certification["certification_id"]
        async with self._locks.hold(f"certification:{certification_id}"):
            known = self.ledger.certifications.get(certification_id)
            if known is not None and known.artifact == certification:
                return _DUPLICATE
            if certification["certifier"] not in self.ledger.certifier_keys:
                if origin is None:
                    raise ForbiddenError(
                        "the certifier key is not one this registry recognises",
                        details={"reason": "unknown_certifier"},
                    )
                return Outcome(stored=False, reason="unknown_certifier")
            self.registered(certification["subject"], "subject")
            if known is not None:
                if origin is None:
                    raise MalformedError("a certification with this id is already stored")
                return Outcome(stored=False, reason="conflict")
            issued = parse_timestamp(certification["issued_at"])
            expires = parse_timestamp(certification["expires_at"])
            seq = await self.database.write(
                partial(insert_certification_txn, certification, issued, expires)
            )
            self._remember_certification(certification, revoked=False)
        return self._committed(
            seq, "certification", origin, levels=True, defer=defer_levels,
            event="certification_stored", certification_id=certification_id,
            subject=certification["subject"], certifier=certification["certifier"],
        )  # fmt: skip

    async def apply_certification_revocation(
        self, revocation: dict[str, Any], *, origin: str | None = None, defer_levels: bool = False
    ) -> Outcome:
        """A revocation signed by the certifier key of a certification held here."""
        schema.validate("certification-revocation", revocation)
        certification_id = revocation["certification_id"]
        async with self._locks.hold(f"certification:{certification_id}"):
            entry = self.ledger.certifications.get(certification_id)
            if entry is None:
                if origin is not None and revocation["certifier"] not in self.ledger.certifier_keys:
                    # Its certification was not taken here either: nothing to wait for.
                    return Outcome(stored=False, reason="unknown_certifier")
                raise NotFoundError("no such certification")
            now = self.clock.now()
            verify_certification_revocation(
                revocation, entry.artifact, now=now, clock_skew=self.clock_skew
            )
            if entry.fact.revoked:
                return _DUPLICATE
            seq = await self.database.write(
                partial(revoke_txn, "certification_revocation", certification_id, revocation, now)
            )
            entry.fact = attrs.evolve(entry.fact, revoked=True)
        return self._committed(
            seq, "certification_revocation", origin, levels=True, defer=defer_levels,
            event="certification_revoked", certification_id=certification_id,
            subject=entry.fact.subject,
        )  # fmt: skip
