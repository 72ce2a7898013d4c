"""The registry's in-memory ledger: agents, vouches, bonds, ratings, levels.

The SQLite database is the durable copy; the ledger is rebuilt from it at
start and updated after each committed write, so reads (resolution,
discovery, trust) never touch the disk. Discovery uses two indexes: every
ancestor path of every agent domain (so ``healthcare`` finds agents
registered under ``healthcare.oncology``) and every capability id.

Trust levels are recomputed from all facts with
:func:`ocpd.proto.trust.compute_levels` whenever a vouch, bond or agent
status changes; a registration of a new agent only adds that agent, whose
level follows from its own facts.
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

import attrs

from ocpd.proto.diddoc import DidDocument, parse_did_document
from ocpd.proto.encoding import parse_timestamp
from ocpd.proto.trust import (
    AgentFacts,
    BondFact,
    RatingFact,
    TrustScore,
    VouchFact,
    bond_partner_counts,
    compute_levels,
    compute_score,
    counted_vouches,
)

if TYPE_CHECKING:
    from collections.abc import Iterable, Mapping

    from ocpd.proto.taxonomy import Taxonomy

__all__ = ["AgentEntry", "BondEntry", "Ledger", "VouchEntry"]


@attrs.define
class AgentEntry:
    agent_id: str
    record: dict[str, Any]
    record_text: str
    document: DidDocument
    document_text: str
    registered_at: float
    expires_at: float
    status: str
    domains: tuple[str, ...]
    capabilities: frozenset[str]
    online_seconds: float = 0.0

    def facts(self) -> AgentFacts:
        endpoints = len(self.record.get("endpoints", ())) if self.status == "active" else 0
        return AgentFacts(
            agent_id=self.agent_id,
            did_verified=True,
            endpoint_count=endpoints,
            registered_at=self.registered_at,
            online_seconds=self.online_seconds,
        )


@attrs.define
class VouchEntry:
    digest: str
    artifact: dict[str, Any]
    text: str
    fact: VouchFact


@attrs.define
class BondEntry:
    bond_id: str
    artifact: dict[str, Any]
    text: str
    fact: BondFact


def agent_entry(
    record_text: str,
    document_text: str,
    *,
    status: str,
    taxonomy: Taxonomy,
    online_seconds: float = 0.0,
) -> AgentEntry:
    """An entry from stored (already verified) texts."""
    record = json.loads(record_text)
    document = parse_did_document(json.loads(document_text))
    registered_at = parse_timestamp(record["registered_at"])
    return AgentEntry(
        agent_id=record["agent_id"],
        record=record,
        record_text=record_text,
        document=document,
        document_text=document_text,
        registered_at=registered_at,
        expires_at=registered_at + int(record["ttl"]),
        status=status,
        domains=tuple(taxonomy.normalise(d) for d in record["domains"]),
        capabilities=frozenset(c["id"] for c in record["capabilities"]),
        online_seconds=online_seconds,
    )


class Ledger:
    def __init__(
        self,
        taxonomy: Taxonomy,
        *,
        anchors: Iterable[str] = (),
        vouch_threshold: int = 3,
        weights: Mapping[str, float],
    ) -> None:
        self.taxonomy = taxonomy
        self.anchors = frozenset(anchors)
        self.vouch_threshold = vouch_threshold
        self.weights = dict(weights)
        self.agents: dict[str, AgentEntry] = {}
        self.vouches: dict[str, VouchEntry] = {}
        self.bonds: dict[str, BondEntry] = {}
        self.ratings: dict[str, list[RatingFact]] = {}
        self.levels: dict[str, int] = {}
        self._by_domain: dict[str, set[str]] = {}
        self._by_capability: dict[str, set[str]] = {}

    # --- agents -------------------------------------------------------------------

    def put_agent(self, entry: AgentEntry) -> None:
        old = self.agents.get(entry.agent_id)
        if old is not None:
            self._unindex(old)
        self.agents[entry.agent_id] = entry
        for domain in entry.domains:
            for path in self.taxonomy.ancestors(domain):
                self._by_domain.setdefault(path, set()).add(entry.agent_id)
        for capability in entry.capabilities:
            self._by_capability.setdefault(capability, set()).add(entry.agent_id)

    def _unindex(self, entry: AgentEntry) -> None:
        for domain in entry.domains:
            for path in self.taxonomy.ancestors(domain):
                self._by_domain.get(path, set()).discard(entry.agent_id)
        for capability in entry.capabilities:
            self._by_capability.get(capability, set()).discard(entry.agent_id)

    def keys_of(self, agent_id: str) -> list[bytes]:
        entry = self.agents.get(agent_id)
        return [] if entry is None else entry.document.verification_keys()

    # --- trust ------------------------------------------------------------------------

    def recompute_levels(self, *, now: float) -> dict[str, int]:
        """Recompute every level; returns the agents whose level changed."""
        levels = compute_levels(
            {a: e.facts() for a, e in self.agents.items()},
            (v.fact for v in self.vouches.values()),
            (b.fact for b in self.bonds.values()),
            (),
            now=now,
            anchors=self.anchors,
            vouch_threshold=self.vouch_threshold,
        )
        changed = {a: lv for a, lv in levels.items() if self.levels.get(a) != lv}
        self.levels = levels
        return changed

    def level(self, agent_id: str) -> int:
        return self.levels.get(agent_id, 0)

    def score(self, agent_id: str, *, now: float) -> TrustScore:
        entry = self.agents[agent_id]
        vouches = counted_vouches(
            self.levels,
            (v.fact for v in self.vouches.values() if v.fact.subject == agent_id),
            now=now,
        )
        bonds = bond_partner_counts(
            (b.fact for b in self.bonds.values() if agent_id in b.fact.agents), now=now
        )
        return compute_score(
            entry.facts(),
            vouch_count=vouches.get(agent_id, 0),
            bond_count=bonds.get(agent_id, 0),
            ratings=self.ratings.get(agent_id, ()),
            now=now,
            weights=self.weights,
        )

    def counts(self, agent_id: str, *, now: float) -> tuple[int, int]:
        vouches = counted_vouches(
            self.levels,
            (v.fact for v in self.vouches.values() if v.fact.subject == agent_id),
            now=now,
        )
        bonds = bond_partner_counts(
            (b.fact for b in self.bonds.values() if agent_id in b.fact.agents), now=now
        )
        return vouches.get(agent_id, 0), bonds.get(agent_id, 0)

    # --- discovery ----------------------------------------------------------------------

    def discover(
        self,
        *,
        domains: list[str],
        capabilities: list[str],
        min_trust_level: int,
        status: str | None,
        limit: int,
        offset: int,
    ) -> tuple[int, list[AgentEntry]]:
        """Agents matching every filter: any of ``domains``, all ``capabilities``.

        Results are ordered by trust level (highest first), then agent id, so
        pages are stable.
        """
        candidates: set[str] | None = None
        if domains:
            candidates = set()
            for domain in domains:
                candidates |= self._by_domain.get(self.taxonomy.normalise(domain), set())
        for capability in capabilities:
            having = self._by_capability.get(capability, set())
            candidates = set(having) if candidates is None else candidates & having
        pool = self.agents.keys() if candidates is None else candidates
        levels = self.levels
        matched = [
            a
            for a in pool
            if levels.get(a, 0) >= min_trust_level
            and (status is None or self.agents[a].status == status)
        ]
        matched.sort(key=lambda a: (-levels.get(a, 0), a))
        page = matched[offset : offset + limit]
        return len(matched), [self.agents[a] for a in page]
