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

import bisect
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
        # Discovery index: key ("*", "d:<domain path>", "c:<capability>") ->
        # (status, level) -> agent ids in sorted order. Pages are read off the
        # buckets in result order and totals are sums of bucket sizes.
        self._index: dict[str, dict[tuple[str, int], list[str]]] = {}
        self._members: dict[str, set[str]] = {}
        self._placed: dict[str, tuple[str, int, tuple[str, ...]]] = {}
        self._involved_cache: frozenset[str] = frozenset()
        self._involved_key: tuple[int, int] = (-1, -1)

    # --- agents -------------------------------------------------------------------

    def _keys(self, entry: AgentEntry) -> tuple[str, ...]:
        keys = {"*"}
        for domain in entry.domains:
            keys.update(f"d:{path}" for path in self.taxonomy.ancestors(domain))
        keys.update(f"c:{capability}" for capability in entry.capabilities)
        return tuple(sorted(keys))

    def _place(self, agent_id: str) -> None:
        """Put the agent in the buckets of its current status and level."""
        self._unplace(agent_id)
        entry = self.agents[agent_id]
        slot = (entry.status, self.levels.get(agent_id, 0))
        keys = self._keys(entry)
        for key in keys:
            bisect.insort(self._index.setdefault(key, {}).setdefault(slot, []), agent_id)
            self._members.setdefault(key, set()).add(agent_id)
        self._placed[agent_id] = (*slot, keys)

    def _unplace(self, agent_id: str) -> None:
        placed = self._placed.pop(agent_id, None)
        if placed is None:
            return
        status, level, keys = placed
        for key in keys:
            bucket = self._index[key][(status, level)]
            del bucket[bisect.bisect_left(bucket, agent_id)]
            self._members[key].discard(agent_id)

    def _rebuild_index(self) -> None:
        self._index.clear()
        self._members.clear()
        self._placed.clear()
        for agent_id in sorted(self.agents):
            entry = self.agents[agent_id]
            slot = (entry.status, self.levels.get(agent_id, 0))
            keys = self._keys(entry)
            for key in keys:
                # Sorted iteration: appending keeps every bucket in order.
                self._index.setdefault(key, {}).setdefault(slot, []).append(agent_id)
                self._members.setdefault(key, set()).add(agent_id)
            self._placed[agent_id] = (*slot, keys)

    def put_agent(self, entry: AgentEntry) -> None:
        self.agents[entry.agent_id] = entry
        self._place(entry.agent_id)

    def set_status(self, agent_id: str, status: str) -> None:
        self.agents[agent_id].status = status
        self._place(agent_id)

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
        if len(changed) > len(self.agents) // 10:
            self._rebuild_index()
        else:
            for agent_id in changed:
                self._place(agent_id)
        return changed

    def admit(self, agent_id: str) -> bool:
        """Set the level of an agent no vouch or bond mentions, without a recompute.

        Such an agent's level depends on its own facts only (Level 2 and up
        need vouches, bonds or being an anchor). Returns ``False`` when a full
        recompute is needed instead.
        """
        if agent_id in self.anchors or agent_id in self._involved():
            return False
        facts = self.agents[agent_id].facts()
        self.levels[agent_id] = 1 if facts.did_verified and facts.endpoint_count > 0 else 0
        self._place(agent_id)
        return True

    def _involved(self) -> frozenset[str]:
        """Agents named by any vouch or bond, cached until either table grows or shrinks."""
        key = (len(self.vouches), len(self.bonds))
        if self._involved_key != key:
            names: set[str] = set()
            for vouch in self.vouches.values():
                names.add(vouch.fact.attester)
                names.add(vouch.fact.subject)
            for bond in self.bonds.values():
                names.update(bond.fact.agents)
            self._involved_cache = frozenset(names)
            self._involved_key = key
        return self._involved_cache

    def status_count(self, status: str) -> int:
        return sum(1 for e in self.agents.values() if e.status == status)

    def level(self, agent_id: str) -> int:
        return self.levels.get(agent_id, 0)

    def counts(self, agent_id: str, *, now: float) -> tuple[int, int]:
        """``(vouch_count, bond_count)`` as the score counts them."""
        vouches = counted_vouches(
            self.levels,
            (v.fact for v in self.vouches.values() if v.fact.subject == agent_id),
            now=now,
        )
        bonds = bond_partner_counts(
            (b.fact for b in self.bonds.values() if agent_id in b.fact.agents), now=now
        )
        return vouches.get(agent_id, 0), bonds.get(agent_id, 0)

    def score(self, agent_id: str, *, now: float) -> tuple[TrustScore, int, int]:
        """The trust score with the vouch and bond counts it was computed from."""
        vouches, bonds = self.counts(agent_id, now=now)
        score = compute_score(
            self.agents[agent_id].facts(),
            vouch_count=vouches,
            bond_count=bonds,
            ratings=self.ratings.get(agent_id, ()),
            now=now,
            weights=self.weights,
        )
        return score, vouches, bonds

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
        pages are stable. A single filter is answered from its buckets without
        looking at non-matching agents; combined filters walk the smallest
        index in order and test membership in the others.
        """
        statuses = ("active", "inactive") if status is None else (status,)
        levels = range(4, min_trust_level - 1, -1)
        domain_keys = sorted({f"d:{self.taxonomy.normalise(d)}" for d in domains})
        required = [f"c:{c}" for c in capabilities]
        if any(key not in self._index for key in required):
            return 0, []
        domain_keys = [k for k in domain_keys if k in self._index]
        if domains and not domain_keys:
            return 0, []
        if len(domain_keys) <= 1 and not (domain_keys and required) and len(required) <= 1:
            key = (domain_keys or required or ["*"])[0]
            return self._single(key, statuses, levels, limit, offset)
        return self._combined(domain_keys, required, statuses, levels, limit, offset)

    def _single(
        self, key: str, statuses: tuple[str, ...], levels: range, limit: int, offset: int
    ) -> tuple[int, list[AgentEntry]]:
        buckets = self._index.get(key, {})
        total = 0
        page: list[str] = []
        for level in levels:
            merged = [buckets.get((s, level), []) for s in statuses]
            ordered = merged[0] if len(merged) == 1 else sorted(merged[0] + merged[1])
            start = max(0, offset - total)
            if len(page) < limit and start < len(ordered):
                page.extend(ordered[start : start + limit - len(page)])
            total += len(ordered)
        return total, [self.agents[a] for a in page]

    def _combined(
        self,
        domain_keys: list[str],
        required: list[str],
        statuses: tuple[str, ...],
        levels: range,
        limit: int,
        offset: int,
    ) -> tuple[int, list[AgentEntry]]:
        # Walk, in result order, an index that holds every result (a required
        # capability, or the only domain); test the other filters per agent.
        candidates = [(len(self._members[k]), k) for k in required]
        if len(domain_keys) == 1:
            candidates.append((len(self._members[domain_keys[0]]), domain_keys[0]))
        _, walk = min(candidates) if candidates else (0, "*")
        domain_union: set[str] | None = None
        if domain_keys and domain_keys != [walk]:
            domain_union = set().union(*(self._members[k] for k in domain_keys))
        sets = [self._members[k] for k in required if k != walk]
        buckets = self._index.get(walk, {})
        total = 0
        page: list[str] = []
        for level in levels:
            merged = [buckets.get((s, level), []) for s in statuses]
            ordered = merged[0] if len(merged) == 1 else sorted(merged[0] + merged[1])
            for agent_id in ordered:
                if domain_union is not None and agent_id not in domain_union:
                    continue
                if any(agent_id not in members for members in sets):
                    continue
                if total >= offset and len(page) < limit:
                    page.append(agent_id)
                total += 1
        return total, [self.agents[a] for a in page]
