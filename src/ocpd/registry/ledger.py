"""The registry's in-memory ledger: agents, vouches, bonds, ratings, levels.

The SQLite database is the durable copy; the ledger is rebuilt from it at
start and updated after each committed write, so reads (resolution,
discovery, trust) never touch the disk. Discovery uses two indexes: every
ancestor path of every agent domain (so ``healthcare`` finds agents
registered under ``healthcare.oncology``) and every capability id.

Trust levels are recomputed from all facts with
:func:`ocpd.proto.trust.compute_levels` whenever a vouch, bond,
certification or agent status changes, and once ``levels_until`` has come
(a fact started or stopped being in force by itself); a registration of a
new agent only adds that agent, whose level follows from its own facts.
"""

from __future__ import annotations

import bisect
import json
import math
from itertools import chain, compress, islice
from operator import ne
from typing import TYPE_CHECKING, Any

import attrs

from ocpd.proto.diddoc import DidDocument, parse_did_document
from ocpd.proto.encoding import parse_timestamp
from ocpd.proto.taxonomy import path_prefixes
from ocpd.proto.trust import (
    AgentFacts,
    BondFact,
    CertificationFact,
    RatingFact,
    TrustScore,
    Uptime,
    VouchFact,
    bond_partner_counts,
    compute_levels,
    compute_score,
    counted_vouches,
    next_level_change,
)

if TYPE_CHECKING:
    from collections.abc import Iterable, Mapping, Sequence
    from collections.abc import Set as AbstractSet

    from ocpd.proto.taxonomy import Taxonomy

__all__ = ["AgentEntry", "BondEntry", "CertificationEntry", "Ledger", "VouchEntry"]


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
    uptime: Uptime = attrs.field(
        default=attrs.Factory(lambda self: Uptime(since=self.registered_at), takes_self=True)
    )

    def facts(self) -> AgentFacts:
        endpoints = len(self.record.get("endpoints", ())) if self.status == "active" else 0
        return AgentFacts(
            agent_id=self.agent_id,
            did_verified=True,
            endpoint_count=endpoints,
            registered_at=self.uptime.since,
            online_seconds=self.uptime.online_seconds,
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


@attrs.define
class CertificationEntry:
    certification_id: str
    artifact: dict[str, Any]
    text: str
    fact: CertificationFact


def agent_entry(
    record_text: str,
    document_text: str,
    *,
    status: str,
    taxonomy: Taxonomy,
    uptime: Uptime | None = None,
) -> AgentEntry:
    """An entry from stored (already verified) texts; ``uptime`` starts at its registration."""
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
        domains=tuple(taxonomy.stored_path(d) for d in record["domains"]),
        capabilities=frozenset(c["id"] for c in record["capabilities"]),
        uptime=Uptime(since=registered_at) if uptime is None else uptime,
    )


class Ledger:
    def __init__(
        self,
        taxonomy: Taxonomy,
        *,
        anchors: Iterable[str] = (),
        certifier_keys: Iterable[str] = (),
        vouch_threshold: int = 3,
        weights: Mapping[str, float],
    ) -> None:
        self.taxonomy = taxonomy
        self.anchors = frozenset(anchors)
        self.certifier_keys = frozenset(certifier_keys)
        self.vouch_threshold = vouch_threshold
        self.weights = dict(weights)
        self.agents: dict[str, AgentEntry] = {}
        self.vouches: dict[str, VouchEntry] = {}
        self.bonds: dict[str, BondEntry] = {}
        #: Each agent's bonds by id, whatever their state (see :meth:`bonds_of`).
        self._bonds_by_agent: dict[str, set[str]] = {}
        self.certifications: dict[str, CertificationEntry] = {}
        self.ratings: dict[str, list[RatingFact]] = {}
        self.levels: dict[str, int] = {}
        self.levels_until = math.inf
        """When a vouch, bond or certification starts or stops being in force."""
        # Discovery index: key ("*", "d:<domain path>", "c:<capability>") ->
        # (status, level) -> the agents in that bucket, both as a sorted list
        # of ids (``_index``: pages are read off it in result order) and as a
        # set of ordinals (``_members``: combined filters intersect buckets in
        # C). Empty buckets are dropped; a key stays once any agent used it.
        # Ordinals are small ints numbered afresh, in id order, by every
        # rebuild, so they sit together in memory: intersecting sets of them
        # is several times faster than of id strings spread over the heap.
        self._index: dict[str, dict[tuple[str, int], list[str]]] = {}
        self._members: dict[str, dict[tuple[str, int], set[int]]] = {}
        self._ordinals: dict[str, int] = {}
        self._ids: list[str] = []  # by ordinal
        self._placed: dict[str, tuple[str, int, tuple[str, ...]]] = {}
        self._involved_cache: frozenset[str] = frozenset()
        self._involved_key: tuple[int, int] = (-1, -1)

    # --- agents -------------------------------------------------------------------

    def _keys(self, entry: AgentEntry) -> tuple[str, ...]:
        keys = {"*"}
        for domain in entry.domains:  # already full paths (see Taxonomy.stored_path)
            keys.update(f"d:{path}" for path in path_prefixes(domain))
        keys.update(f"c:{capability}" for capability in entry.capabilities)
        return tuple(sorted(keys))

    def _place(self, agent_id: str) -> None:
        """Put the agent in the buckets of its current status and level."""
        self._unplace(agent_id)
        entry = self.agents[agent_id]
        slot = (entry.status, self.levels.get(agent_id, 0))
        keys = self._keys(entry)
        ordinal = self._ordinals.get(agent_id)
        if ordinal is None:
            ordinal = self._ordinals[agent_id] = len(self._ids)
            self._ids.append(agent_id)
        for key in keys:
            bisect.insort(self._index.setdefault(key, {}).setdefault(slot, []), agent_id)
            self._members.setdefault(key, {}).setdefault(slot, set()).add(ordinal)
        self._placed[agent_id] = (*slot, keys)

    def _unplace(self, agent_id: str) -> None:
        placed = self._placed.pop(agent_id, None)
        if placed is None:
            return
        status, level, keys = placed
        slot = (status, level)
        ordinal = self._ordinals[agent_id]
        for key in keys:
            buckets, members = self._index[key], self._members[key]
            bucket = buckets[slot]
            del bucket[bisect.bisect_left(bucket, agent_id)]
            members[slot].discard(ordinal)
            if not bucket:
                del buckets[slot], members[slot]

    def _rebuild_index(self) -> None:
        self._index.clear()
        self._members.clear()
        self._placed.clear()
        self._ids = sorted(self.agents)
        # Made in one go, the ordinals' int objects are neighbours in memory.
        self._ordinals = {agent_id: n for n, agent_id in enumerate(self._ids)}
        for agent_id, ordinal in self._ordinals.items():
            entry = self.agents[agent_id]
            slot = (entry.status, self.levels.get(agent_id, 0))
            keys = self._keys(entry)
            for key in keys:
                # Sorted iteration: appending keeps every bucket in order.
                self._index.setdefault(key, {}).setdefault(slot, []).append(agent_id)
                self._members.setdefault(key, {}).setdefault(slot, set()).add(ordinal)
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

    # --- bonds ------------------------------------------------------------------------

    def put_bond(self, entry: BondEntry) -> None:
        self.bonds[entry.bond_id] = entry
        for agent_id in entry.fact.agents:
            self._bonds_by_agent.setdefault(agent_id, set()).add(entry.bond_id)

    def bonds_of(self, agent_id: str, *, now: float) -> list[BondEntry]:
        """The agent's bonds in force at ``now``, newest established first."""
        found = [
            self.bonds[bond_id]
            for bond_id in self._bonds_by_agent.get(agent_id, ())
            if self.bonds[bond_id].fact.active(now)
        ]
        found.sort(key=lambda e: (-e.fact.established_at, e.bond_id))
        return found

    # --- trust ------------------------------------------------------------------------

    def recompute_levels(self, *, now: float) -> dict[str, int]:
        """Recompute every level; returns the agents whose level changed."""
        levels = compute_levels(
            {a: e.facts() for a, e in self.agents.items()},
            (v.fact for v in self.vouches.values()),
            (b.fact for b in self.bonds.values()),
            (c.fact for c in self.certifications.values()),
            now=now,
            anchors=self.anchors,
            certifier_keys=self.certifier_keys,
            vouch_threshold=self.vouch_threshold,
        )
        self.levels_until = next_level_change(
            (v.fact for v in self.vouches.values()),
            (b.fact for b in self.bonds.values()),
            (c.fact for c in self.certifications.values()),
            now=now,
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
        looking at non-matching agents; combined filters count their matches
        with set operations per bucket and read the page off a sorted bucket.
        """
        statuses = ("active", "inactive") if status is None else (status,)
        levels = range(4, min_trust_level - 1, -1)
        paths = {self.taxonomy.normalise(d) for d in domains}
        # An agent filed under a path is filed under all its ancestors, so a
        # queried path below another queried path adds nobody.
        domain_keys = [
            f"d:{p}" for p in sorted(paths) if not any(p.startswith(f"{q}.") for q in paths)
        ]
        required = [f"c:{c}" for c in sorted(set(capabilities))]
        if any(key not in self._index for key in required):
            return 0, []
        domain_keys = [k for k in domain_keys if k in self._index]
        if domains and not domain_keys:
            return 0, []
        keys = domain_keys + required
        if len(keys) <= 1:
            return self._single(keys[0] if keys else "*", statuses, levels, limit, offset)
        return self._combined(domain_keys, required, statuses, levels, limit, offset)

    def _single(
        self, key: str, statuses: tuple[str, ...], levels: range, limit: int, offset: int
    ) -> tuple[int, list[AgentEntry]]:
        buckets = self._index.get(key, {})
        total = 0
        page: list[str] = []
        for level in levels:
            runs = [buckets.get((s, level), _NO_IDS) for s in statuses]
            size = sum(map(len, runs))
            skip = max(0, offset - total)
            if len(page) < limit and skip < size:
                page += _merged_slice(runs, skip, limit - len(page))
            total += size
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
        # Per level, count the matches of every status bucket; only in the
        # levels the page falls into, find the first ``skip + take`` matches of
        # each status in id order, then merge the statuses (they are disjoint).
        total = 0
        page: list[str] = []
        for level in levels:
            found = [self._matches(domain_keys, required, (s, level)) for s in statuses]
            size = sum(f.size for f in found)
            skip = max(0, offset - total)
            if len(page) < limit and skip < size:
                take = limit - len(page)
                firsts = [self._first(f, skip + take) for f in found]
                page += _merged_slice(firsts, skip, take)
            total += size
        return total, [self.agents[a] for a in page]

    def _matches(
        self, domain_keys: list[str], required: list[str], slot: tuple[str, int]
    ) -> _Matches:
        """The agents in one (status, level) bucket that match the filters."""
        if required:
            # Intersect smallest first: ``a & b`` iterates the smaller set and
            # every step can only shrink the result.
            caps: list[AbstractSet[int]] = sorted(
                (self._members[k].get(slot, _NO_MEMBERS) for k in required), key=len
            )
            found = caps[0]
            for members in caps[1:]:
                found = found & members
            outside: AbstractSet[int] = _NO_MEMBERS
            if len(domain_keys) == 1:
                found = found & self._members[domain_keys[0]].get(slot, _NO_MEMBERS)
            elif domain_keys:
                # Count what no queried domain holds: each step shrinks, where
                # a union of intersections would build every match again.
                outside = found
                for key in domain_keys:
                    outside = outside - self._members[key].get(slot, _NO_MEMBERS)
            # Any required capability's bucket holds every match; so does the
            # domain's when there is only one.
            covering = required + domain_keys if len(domain_keys) == 1 else required
            source = min((self._index[k].get(slot, _NO_IDS) for k in covering), key=len)
            return _Matches(
                size=len(found) - len(outside), members=found, outside=outside, sources=[source]
            )
        # Several domains and no capability: the union of the domain buckets.
        # Count it as the largest bucket plus what the others add to it.
        sets: list[AbstractSet[int]] = sorted(
            (self._members[k].get(slot, _NO_MEMBERS) for k in domain_keys), key=len
        )
        largest = sets.pop()
        if len(sets) == 1:
            added = len(sets[0] - largest)
        else:
            added = len(set().union(*(d - largest for d in sets)))
        sources = [self._index[k].get(slot, _NO_IDS) for k in domain_keys]
        return _Matches(size=len(largest) + added, members=None, sources=sources)

    def _first(self, found: _Matches, count: int) -> list[str]:
        """The first ``count`` matches in one bucket, in id order."""
        if found.members is None:
            return _distinct_prefix(found.sources, count)
        members, source = found.members, found.sources[0]
        if found.outside:
            members = members - found.outside
        if len(members) == len(source):
            return list(source[:count])
        # Walking the sorted bucket finds ``len(members) / len(source)``
        # matches per id and costs about three comparisons of a sort per id;
        # sort the matches instead when that is cheaper.
        size = len(members)
        if 3 * count * len(source) <= size * size * size.bit_length():
            wanted = map(members.__contains__, map(self._ordinals.__getitem__, source))
            return list(islice(compress(source, wanted), count))
        return sorted(map(self._ids.__getitem__, members))[:count]


_NO_IDS: tuple[str, ...] = ()
_NO_MEMBERS: frozenset[int] = frozenset()


@attrs.frozen
class _Matches:
    """The matches in one (status, level) bucket of a combined discovery query.

    The matches are the ordinals in ``members`` less those in ``outside``,
    and ``sources[0]`` is a sorted bucket that holds all of them; or, when
    ``members`` is ``None``, they are the union of the sorted ``sources``.
    """

    size: int
    members: AbstractSet[int] | None
    sources: Sequence[Sequence[str]]
    outside: AbstractSet[int] = _NO_MEMBERS


def _merged_slice(runs: Sequence[Sequence[str]], skip: int, take: int) -> list[str]:
    """``sorted(chain(*runs))[skip : skip + take]`` for disjoint sorted runs."""
    runs = [r for r in runs if r]
    if len(runs) == 1:
        return list(runs[0][skip : skip + take])
    if len(runs) == 2:
        # Binary search for how many of the first ``skip`` come from ``a``:
        # the smallest ``i`` with ``b[skip - i - 1] < a[i]``.
        a, b = runs
        lo, hi = max(0, skip - len(b)), min(skip, len(a))
        while lo < hi:
            i = (lo + hi) // 2
            if b[skip - i - 1] < a[i]:
                hi = i
            else:
                lo = i + 1
        return sorted(chain(a[lo : lo + take], b[skip - lo : skip - lo + take]))[:take]
    return sorted(chain.from_iterable(r[: skip + take] for r in runs))[skip : skip + take]


def _distinct_prefix(runs: Sequence[Sequence[str]], count: int) -> list[str]:
    """The first ``count`` ids of the union of sorted (possibly overlapping) runs.

    Every id up to the ``count``-th distinct one sits within the first
    ``count`` of each run, so the prefixes suffice. Sorting concatenated runs
    is a merge, and equal ids end up next to each other.
    """
    merged = sorted(chain.from_iterable(r[:count] for r in runs))
    if len(runs) > 1 and merged:
        merged = [merged[0], *compress(merged[1:], map(ne, merged[1:], merged))]
    return merged[:count]
