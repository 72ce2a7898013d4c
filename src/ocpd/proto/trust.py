"""Trust levels, the trust score and what each level may do (OCP §4.2, D7).

The registry turns verified artifacts into small facts (:class:`VouchFact`,
:class:`BondFact`, ...) and asks this module for levels and scores. Nothing
here checks a signature or reads a clock: every function takes ``now`` in
epoch seconds, and every fact is assumed verified already.

Theory of operation
-------------------
Levels are cumulative; each one requires the one below it:

0. anonymous: anything registered.
1. identified: a verified DID and at least one endpoint.
2. vouched: Level 1, and either a configured trust anchor or the subject of
   in-force vouches from at least ``vouch_threshold`` distinct Level 2+
   agents. An anchor without Level 1 stays below Level 2: configuration can
   bootstrap trust in an identity, not in an identity that is unproven or
   unreachable.
3. bonded: Level 2 and a party to at least one active bond.
4. certified: Level 3 and holder of an in-force certification issued under
   a certifier key named in configuration.

Level 2 refers to itself (vouches count only from Level 2 agents), so it is
defined as the smallest set closed under the rule, grown from the anchors
outwards. Agents that only vouch for each other never enter it, however many
of them there are: a vouch passes trust on, it cannot create it. The growth
is a worklist: each Level 2 agent is visited once and adds one unit of
support to each agent it vouches for, which makes the whole computation
linear in agents plus vouches.

Time windows are half-open: an artifact is in force from its start
(``issued_at``, ``established_at``) up to, but not at, its ``expires_at``.

Uptime
------
``uptime_ratio`` is the time a registry has seen an agent online divided by
the time since it first held the agent's registration (:class:`Uptime`).
Online time is the union of two kinds of interval, both bounded by moments
the registry itself witnessed, so that a signed timestamp cannot stretch it:

* an on-time re-registration: a new record that arrives before the held one
  expired proves the span from when the held record took effect here (the
  later of its ``registered_at`` and its arrival) to the new one's
  ``registered_at`` (at most its arrival). A late one proves nothing for the
  gap;
* authenticated session time reported by a transport node.

Intervals are merged as they come, so overlapping and repeated reports (a
long session reported as ``[start, now]`` every few minutes) count once.
Only the latest :data:`UPTIME_RECENT_INTERVALS` disjoint intervals are kept;
older ones are folded into a total and nothing before the end of the folded
ones (the ``horizon``) can be added any more. That keeps the state bounded
and can only undercount, never count time twice.
"""

from __future__ import annotations

import itertools
import math
from types import MappingProxyType
from typing import TYPE_CHECKING, Final

import attrs

if TYPE_CHECKING:
    from collections.abc import Iterable, Mapping

__all__ = [
    "DEFAULT_VOUCH_THRESHOLD",
    "DEFAULT_WEIGHTS",
    "MAX_TRUST_LEVEL",
    "RATING_WINDOW",
    "TRUST_LEVEL_NAMES",
    "UPTIME_RECENT_INTERVALS",
    "AgentFacts",
    "BondFact",
    "CertificationFact",
    "RatingFact",
    "TrustScore",
    "Uptime",
    "VouchFact",
    "bond_partner_counts",
    "check_weights",
    "compute_levels",
    "compute_score",
    "counted_vouches",
    "next_level_change",
    "permissions_for_level",
]

MAX_TRUST_LEVEL: Final = 4
TRUST_LEVEL_NAMES: Final = ("anonymous", "identified", "vouched", "bonded", "certified")
DEFAULT_VOUCH_THRESHOLD: Final = 3
RATING_WINDOW: Final = 90 * 86_400
"""Ratings older than this no longer count towards ``interaction_reputation``."""

UPTIME_RECENT_INTERVALS: Final = 32
"""Disjoint online intervals an :class:`Uptime` keeps before folding the oldest."""

VOUCHES_FOR_FULL_SCORE: Final = 10
BONDS_FOR_FULL_SCORE: Final = 5
NEUTRAL_REPUTATION: Final = 0.5
WEIGHT_TOLERANCE: Final = 1e-9

COMPONENTS: Final = (
    "identity_verification",
    "vouch_count_normalized",
    "bond_count_normalized",
    "interaction_reputation",
    "uptime_ratio",
)
DEFAULT_WEIGHTS: Final[Mapping[str, float]] = MappingProxyType(
    {
        "identity_verification": 0.20,
        "vouch_count_normalized": 0.25,
        "bond_count_normalized": 0.25,
        "interaction_reputation": 0.20,
        "uptime_ratio": 0.10,
    }
)

# What each level adds to the one below it; levels hold everything beneath them.
_LEVEL_GRANTS: Final = (
    frozenset({"read_broadcast"}),
    frozenset({"direct_message"}),
    frozenset({"knowledge_exchange", "initiate_bond", "issue_vouch"}),
    frozenset({"full_collaboration", "task_delegation"}),
    frozenset({"enterprise_sla", "priority_routing", "governance_vote"}),
)


def _cumulative(grants: tuple[frozenset[str], ...]) -> tuple[frozenset[str], ...]:
    held: frozenset[str] = frozenset()
    out = []
    for grant in grants:
        held |= grant
        out.append(held)
    return tuple(out)


_LEVEL_PERMISSIONS: Final = _cumulative(_LEVEL_GRANTS)


def _non_negative(_inst: object, attribute: attrs.Attribute[float], value: float) -> None:
    if not (isinstance(value, int | float) and math.isfinite(value) and value >= 0):
        raise ValueError(f"{attribute.name} must be a finite number >= 0, not {value!r}")


def _count(_inst: object, attribute: attrs.Attribute[int], value: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ValueError(f"{attribute.name} must be an int >= 0, not {value!r}")


def _unit_interval(_inst: object, attribute: attrs.Attribute[float], value: float) -> None:
    if not (isinstance(value, int | float) and 0.0 <= value <= 1.0):
        raise ValueError(f"{attribute.name} must lie in [0, 1], not {value!r}")


# --- facts ---------------------------------------------------------------------------------


@attrs.frozen
class AgentFacts:
    """What the registry knows about one agent, reduced to what trust needs."""

    agent_id: str
    did_verified: bool
    endpoint_count: int = attrs.field(validator=_count)
    registered_at: float
    """When the uptime window starts: the agent's first registration (:attr:`Uptime.since`)."""
    online_seconds: float = attrs.field(validator=_non_negative)
    """Authenticated session time plus on-time re-registrations (D7, :class:`Uptime`)."""

    @property
    def identified(self) -> bool:
        """Level 1: a verified DID and somewhere to reach the agent."""
        return self.did_verified and self.endpoint_count >= 1


@attrs.frozen
class VouchFact:
    """A verified vouch; ``revoked`` once its attester published a revocation."""

    attester: str
    subject: str
    issued_at: float
    expires_at: float
    revoked: bool = False

    def in_force(self, now: float) -> bool:
        return (
            not self.revoked
            and self.attester != self.subject
            and self.issued_at <= now < self.expires_at
        )


@attrs.frozen
class BondFact:
    """A verified bond, signed by both agents; ``revoked`` once either party revoked it."""

    bond_id: str
    agents: tuple[str, str]
    established_at: float
    expires_at: float
    revoked: bool = False

    def active(self, now: float) -> bool:
        return (
            not self.revoked
            and self.agents[0] != self.agents[1]
            and self.established_at <= now < self.expires_at
        )


@attrs.frozen
class CertificationFact:
    """A certification whose signature verified under ``certifier_key``.

    ``revoked`` once its certifier published a revocation.
    """

    subject: str
    certifier_key: str
    issued_at: float
    expires_at: float
    revoked: bool = False

    def in_force(self, now: float) -> bool:
        return not self.revoked and self.issued_at <= now < self.expires_at


@attrs.frozen
class RatingFact:
    """A verified interaction rating (D7) of ``subject`` by ``rater``."""

    rater: str
    subject: str
    rating: float = attrs.field(validator=_unit_interval)
    rated_at: float


# --- uptime --------------------------------------------------------------------------------


def _finite(*values: float) -> None:
    for value in values:
        if (
            isinstance(value, bool)
            or not isinstance(value, int | float)
            or not math.isfinite(value)
        ):
            raise ValueError(f"times must be finite numbers, not {value!r}")


@attrs.frozen
class Uptime:
    """The online time of one agent as one registry saw it (see the module notes).

    A value: every change returns a new one. ``recent`` holds disjoint,
    sorted ``(start, end)`` intervals, none before ``horizon``; ``settled``
    is the online time folded away before ``horizon``.
    """

    since: float
    """When this registry first held the agent's registration: the uptime window starts."""
    settled: float = attrs.field(default=0.0, validator=_non_negative)
    horizon: float = attrs.field(default=attrs.Factory(lambda self: self.since, takes_self=True))
    recent: tuple[tuple[float, float], ...] = ()
    renewal_from: float = attrs.field(
        default=attrs.Factory(lambda self: self.since, takes_self=True)
    )
    """Where the interval an on-time renewal proves starts: when the held record took effect."""

    @classmethod
    def first(cls, registered_at: float, *, now: float) -> Uptime:
        """A first registration, dated ``registered_at``, arriving at ``now``."""
        _finite(registered_at, now)
        return cls(since=max(registered_at, now))

    @property
    def online_seconds(self) -> float:
        return self.settled + math.fsum(end - start for start, end in self.recent)

    def ratio(self, *, now: float) -> float:
        """``uptime_ratio``: online time over the time since :attr:`since`, at most 1."""
        return min(self.online_seconds / max(now - self.since, 1.0), 1.0)

    def add(self, start: float, end: float, *, now: float) -> Uptime:
        """Count ``[start, end]`` as online; not the parts before the horizon or after ``now``.

        Overlaps with what is counted already are counted once.
        """
        _finite(start, end, now)
        start, end = max(start, self.horizon), min(end, now)
        if end <= start:
            return self
        merged: list[tuple[float, float]] = []
        for s, e in self.recent:
            if e < start or s > end:
                merged.append((s, e))
            else:  # overlapping or touching: absorb it
                start, end = min(start, s), max(end, e)
        merged.append((start, end))
        merged.sort()
        settled, horizon = self.settled, self.horizon
        excess = len(merged) - UPTIME_RECENT_INTERVALS
        if excess > 0:
            folded, merged = merged[:excess], merged[excess:]
            settled += math.fsum(e - s for s, e in folded)
            horizon = folded[-1][1]
        return attrs.evolve(self, settled=settled, horizon=horizon, recent=tuple(merged))

    def renewed(
        self,
        *,
        registered_at: float,
        previous_registered_at: float,
        previous_expires_at: float,
        now: float,
        grace: float,
    ) -> Uptime:
        """A newer record dated ``registered_at`` replaced the held one, arriving at ``now``.

        On time (dated, and arrived within ``grace`` of clock skew, before the
        held record expired), it proves the agent online from
        :attr:`renewal_from` to ``registered_at``. Either way the new record
        takes effect here at the later of its date and its arrival, so a
        back-dated record cannot claim time this registry did not see.
        """
        _finite(registered_at, previous_registered_at, previous_expires_at, now, grace)
        uptime = self
        if registered_at <= previous_expires_at and now <= previous_expires_at + grace:
            start = max(self.renewal_from, previous_registered_at)
            uptime = self.add(start, min(registered_at, now), now=now)
        return attrs.evolve(uptime, renewal_from=max(registered_at, now))


# --- levels --------------------------------------------------------------------------------


def _vouched(
    identified: set[str],
    vouches: Iterable[VouchFact],
    *,
    now: float,
    anchors: frozenset[str],
    threshold: int,
) -> set[str]:
    """The least set of Level 2 agents, grown from the anchors (see the module notes)."""
    # Only vouches between identified agents can ever count: the attester
    # must reach Level 2 and so must the subject.
    vouchees: dict[str, set[str]] = {}
    for vouch in vouches:
        if vouch.attester in identified and vouch.subject in identified and vouch.in_force(now):
            vouchees.setdefault(vouch.attester, set()).add(vouch.subject)

    level2 = {agent for agent in anchors if agent in identified}
    support: dict[str, int] = {}
    pending = list(level2)
    while pending:
        attester = pending.pop()
        for subject in vouchees.get(attester, ()):
            if subject in level2:
                continue
            count = support.get(subject, 0) + 1
            if count >= threshold:
                level2.add(subject)
                pending.append(subject)
                support.pop(subject, None)
            else:
                support[subject] = count
    return level2


def _bonded(bonds: Iterable[BondFact], now: float) -> set[str]:
    parties: set[str] = set()
    for bond in bonds:
        if bond.active(now):
            parties.update(bond.agents)
    return parties


def compute_levels(
    agents: Mapping[str, AgentFacts],
    vouches: Iterable[VouchFact],
    bonds: Iterable[BondFact],
    certifications: Iterable[CertificationFact],
    *,
    now: float,
    anchors: frozenset[str] = frozenset(),
    certifier_keys: frozenset[str] = frozenset(),
    vouch_threshold: int = DEFAULT_VOUCH_THRESHOLD,
) -> dict[str, int]:
    """The trust level (0-4) of every agent in ``agents`` at ``now``.

    Facts about agents missing from ``agents`` are ignored: an unknown
    attester lends no support and an unknown anchor gains no level.
    """
    if isinstance(vouch_threshold, bool) or not isinstance(vouch_threshold, int):
        raise TypeError("vouch_threshold must be an int")
    if vouch_threshold < 1:
        raise ValueError("vouch_threshold must be at least 1")
    identified: set[str] = set()
    for agent_id, facts in agents.items():
        if facts.agent_id != agent_id:
            raise ValueError(f"facts for {agent_id!r} describe {facts.agent_id!r}")
        if facts.identified:
            identified.add(agent_id)

    level2 = _vouched(identified, vouches, now=now, anchors=anchors, threshold=vouch_threshold)
    level3 = _bonded(bonds, now) & level2
    level4 = {
        cert.subject
        for cert in certifications
        if cert.subject in level3 and cert.certifier_key in certifier_keys and cert.in_force(now)
    }

    levels: dict[str, int] = {}
    for agent_id in agents:
        if agent_id in level4:
            levels[agent_id] = 4
        elif agent_id in level3:
            levels[agent_id] = 3
        elif agent_id in level2:
            levels[agent_id] = 2
        elif agent_id in identified:
            levels[agent_id] = 1
        else:
            levels[agent_id] = 0
    return levels


def next_level_change(
    vouches: Iterable[VouchFact],
    bonds: Iterable[BondFact],
    certifications: Iterable[CertificationFact],
    *,
    now: float,
) -> float:
    """The first time after ``now`` at which a fact starts or stops being in force.

    Levels computed at ``now`` hold until then (``math.inf`` if no fact
    changes by itself): a registry recomputes them once that time has come
    rather than on every read. Revoked facts never come back.
    """
    upcoming = math.inf
    windows = itertools.chain(
        ((v.issued_at, v.expires_at, v.revoked) for v in vouches),
        ((b.established_at, b.expires_at, b.revoked) for b in bonds),
        ((c.issued_at, c.expires_at, c.revoked) for c in certifications),
    )
    for start, end, revoked in windows:
        if revoked:
            continue
        if start > now:
            upcoming = min(upcoming, start)
        elif end > now:
            upcoming = min(upcoming, end)
    return upcoming


def counted_vouches(
    levels: Mapping[str, int], vouches: Iterable[VouchFact], *, now: float
) -> dict[str, int]:
    """Per subject, how many distinct Level 2+ attesters vouch for it at ``now``.

    This is the ``vouch_count`` of the score: the same vouches that decide
    Level 2, so that vouches from unvouched agents move neither.
    """
    attesters: dict[str, set[str]] = {}
    for vouch in vouches:
        if levels.get(vouch.attester, 0) >= 2 and vouch.in_force(now):
            attesters.setdefault(vouch.subject, set()).add(vouch.attester)
    return {subject: len(seen) for subject, seen in attesters.items()}


def bond_partner_counts(bonds: Iterable[BondFact], *, now: float) -> dict[str, int]:
    """Per agent, how many distinct partners it holds an active bond with at ``now``.

    This is the ``bond_count`` of the score. Partners, not bonds, are counted:
    two agents cannot raise each other's score by signing many bonds.
    """
    partners: dict[str, set[str]] = {}
    for bond in bonds:
        if bond.active(now):
            first, second = bond.agents
            partners.setdefault(first, set()).add(second)
            partners.setdefault(second, set()).add(first)
    return {agent: len(seen) for agent, seen in partners.items()}


def permissions_for_level(level: int) -> frozenset[str]:
    """Everything an agent of ``level`` may do, including what lower levels may."""
    if isinstance(level, bool) or not isinstance(level, int) or not 0 <= level <= MAX_TRUST_LEVEL:
        raise ValueError(f"trust level must be an int from 0 to {MAX_TRUST_LEVEL}, not {level!r}")
    return _LEVEL_PERMISSIONS[level]


# --- score ---------------------------------------------------------------------------------


@attrs.frozen
class TrustScore:
    """The composite score and the five components it was computed from."""

    score: float
    identity_verification: float
    vouch_count_normalized: float
    bond_count_normalized: float
    interaction_reputation: float
    uptime_ratio: float

    @property
    def components(self) -> dict[str, float]:
        return {name: getattr(self, name) for name in COMPONENTS}


def check_weights(weights: Mapping[str, float]) -> dict[str, float]:
    """``weights`` as a plain dict if they name the five components and sum to 1."""
    if set(weights) != set(COMPONENTS):
        raise ValueError(f"trust weights must name exactly {', '.join(COMPONENTS)}")
    checked: dict[str, float] = {}
    for name in COMPONENTS:
        weight = weights[name]
        if (
            isinstance(weight, bool)
            or not isinstance(weight, int | float)
            or not math.isfinite(weight)
            or weight < 0
        ):
            raise ValueError(f"trust weight {name} must be a finite number >= 0, not {weight!r}")
        checked[name] = float(weight)
    total = math.fsum(checked.values())
    if abs(total - 1.0) > WEIGHT_TOLERANCE:
        raise ValueError(f"trust weights must sum to 1.0, not {total!r}")
    return checked


def _reputation(agent_id: str, ratings: Iterable[RatingFact], now: float) -> float:
    # One voice per rater: its most recent rating that is not in the future.
    # Equal timestamps are settled by the value so that input order never matters.
    latest: dict[str, tuple[float, float]] = {}
    for rating in ratings:
        if rating.subject != agent_id or rating.rater == agent_id or rating.rated_at > now:
            continue
        key = (rating.rated_at, rating.rating)
        if key > latest.get(rating.rater, (-math.inf, -math.inf)):
            latest[rating.rater] = key
    recent = [value for at, value in latest.values() if at + RATING_WINDOW > now]
    if not recent:
        return NEUTRAL_REPUTATION
    return math.fsum(recent) / len(recent)


def compute_score(
    facts: AgentFacts,
    *,
    vouch_count: int,
    bond_count: int,
    ratings: Iterable[RatingFact],
    now: float,
    weights: Mapping[str, float] = DEFAULT_WEIGHTS,
) -> TrustScore:
    """The trust score of one agent at ``now``.

    ``vouch_count`` and ``bond_count`` come from :func:`counted_vouches` and
    :func:`bond_partner_counts`. Ratings of other subjects, self-ratings and
    ratings dated after ``now`` are ignored. Nothing is rounded.
    """
    checked = check_weights(weights)
    if vouch_count < 0 or bond_count < 0:
        raise ValueError("vouch_count and bond_count must be >= 0")
    seconds_registered = max(now - facts.registered_at, 1.0)
    components = {
        "identity_verification": 1.0 if facts.did_verified else 0.0,
        "vouch_count_normalized": min(vouch_count / VOUCHES_FOR_FULL_SCORE, 1.0),
        "bond_count_normalized": min(bond_count / BONDS_FOR_FULL_SCORE, 1.0),
        "interaction_reputation": _reputation(facts.agent_id, ratings, now),
        "uptime_ratio": min(facts.online_seconds / seconds_registered, 1.0),
    }
    total = math.fsum(checked[name] * components[name] for name in COMPONENTS)
    # Weights may sum to 1 only within the tolerance; keep the score in range.
    return TrustScore(score=min(max(total, 0.0), 1.0), **components)
