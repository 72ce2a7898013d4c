"""Trust levels, score and permissions (OCP §4.2, §4.3, D7)."""

from __future__ import annotations

import math
import random
from collections.abc import Iterable, Mapping

import attrs
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ocpd.proto.trust import (
    DEFAULT_WEIGHTS,
    RATING_WINDOW,
    TRUST_LEVEL_NAMES,
    AgentFacts,
    BondFact,
    CertificationFact,
    RatingFact,
    TrustScore,
    VouchFact,
    bond_partner_counts,
    check_weights,
    compute_levels,
    compute_score,
    counted_vouches,
    next_level_change,
    permissions_for_level,
)

NOW = 1_775_217_600.0  # 2026-04-03T12:00:00Z
DAY = 86_400.0
KEY = "z6MkCertifierKeyOne"
OTHER_KEY = "z6MkSomebodyElse"


def did(name: str) -> str:
    return f"did:ocp:testnet:{name}"


def facts(
    name: str,
    *,
    verified: bool = True,
    endpoints: int = 1,
    registered_at: float = NOW - 100 * DAY,
    online: float = 0.0,
) -> AgentFacts:
    return AgentFacts(did(name), verified, endpoints, registered_at, online)


def vouch(
    attester: str,
    subject: str,
    *,
    issued: float = NOW - DAY,
    expires: float = NOW + DAY,
    revoked: bool = False,
) -> VouchFact:
    return VouchFact(did(attester), did(subject), issued, expires, revoked)


def bond(
    a: str,
    b: str,
    *,
    established: float = NOW - DAY,
    expires: float = NOW + DAY,
    revoked: bool = False,
) -> BondFact:
    return BondFact(f"bond-{a}-{b}", (did(a), did(b)), established, expires, revoked)


def cert(
    subject: str, *, key: str = KEY, issued: float = NOW - DAY, expires: float = NOW + DAY
) -> CertificationFact:
    return CertificationFact(did(subject), key, issued, expires)


def universe(*agents: AgentFacts | str) -> dict[str, AgentFacts]:
    out = {}
    for agent in agents:
        f = facts(agent) if isinstance(agent, str) else agent
        out[f.agent_id] = f
    return out


def levels_of(
    agents: Mapping[str, AgentFacts],
    vouches: Iterable[VouchFact] = (),
    bonds: Iterable[BondFact] = (),
    certs: Iterable[CertificationFact] = (),
    *,
    anchors: Iterable[str] = (),
    keys: Iterable[str] = (KEY,),
    now: float = NOW,
    threshold: int = 3,
) -> dict[str, int]:
    levels = compute_levels(
        agents,
        list(vouches),
        list(bonds),
        list(certs),
        now=now,
        anchors=frozenset(did(a) for a in anchors),
        certifier_keys=frozenset(keys),
        vouch_threshold=threshold,
    )
    return {agent_id.rsplit(":", 1)[1]: level for agent_id, level in levels.items()}


ANCHORS = ("a1", "a2", "a3")


def anchored(*names: str | AgentFacts) -> dict[str, AgentFacts]:
    return universe(*ANCHORS, *names)


def from_anchors(subject: str, count: int = 3, *, expires: float = NOW + DAY) -> list[VouchFact]:
    return [vouch(a, subject, expires=expires) for a in ANCHORS[:count]]


# --- Levels 0 and 1 -------------------------------------------------------------------------


def test_level_1_needs_a_verified_did_and_an_endpoint() -> None:
    agents = universe(
        "ok",
        facts("unverified", verified=False),
        facts("unreachable", endpoints=0),
        facts("many", endpoints=4),
    )
    assert levels_of(agents) == {"ok": 1, "unverified": 0, "unreachable": 0, "many": 1}


def test_every_registered_agent_gets_a_level_and_nobody_else() -> None:
    agents = universe("x")
    levels = levels_of(agents, [vouch("ghost", "x")], anchors=["ghost", "x"])
    assert levels == {"x": 2}
    assert compute_levels({}, [], [], [], now=NOW) == {}


# --- Level 2 ---------------------------------------------------------------------------------


def test_anchors_are_level_2() -> None:
    assert levels_of(anchored(), anchors=ANCHORS) == {"a1": 2, "a2": 2, "a3": 2}


def test_an_anchor_still_needs_level_1() -> None:
    agents = universe(facts("a1", verified=False), facts("a2", endpoints=0), "a3")
    assert levels_of(agents, anchors=ANCHORS) == {"a1": 0, "a2": 0, "a3": 2}


def test_three_vouches_from_level_2_agents_make_level_2() -> None:
    agents = anchored("x")
    assert levels_of(agents, from_anchors("x", 3), anchors=ANCHORS)["x"] == 2
    assert levels_of(agents, from_anchors("x", 2), anchors=ANCHORS)["x"] == 1


def test_the_threshold_is_configurable() -> None:
    agents = anchored("x")
    assert levels_of(agents, from_anchors("x", 1), anchors=ANCHORS, threshold=1)["x"] == 2
    assert levels_of(agents, from_anchors("x", 2), anchors=ANCHORS, threshold=2)["x"] == 2
    assert levels_of(agents, from_anchors("x", 3), anchors=ANCHORS, threshold=4)["x"] == 1


@pytest.mark.parametrize("bad", [0, -1])
def test_threshold_must_be_positive(bad: int) -> None:
    with pytest.raises(ValueError, match="vouch_threshold"):
        compute_levels({}, [], [], [], now=NOW, vouch_threshold=bad)


def test_threshold_must_be_an_int() -> None:
    with pytest.raises(TypeError):
        compute_levels({}, [], [], [], now=NOW, vouch_threshold=True)
    with pytest.raises(TypeError):
        compute_levels({}, [], [], [], now=NOW, vouch_threshold=2.5)  # type: ignore[arg-type]


def test_vouches_count_distinct_attesters() -> None:
    agents = anchored("x")
    repeated = [vouch("a1", "x", issued=NOW - d * DAY) for d in (1, 2, 3, 4)]
    assert levels_of(agents, repeated, anchors=ANCHORS)["x"] == 1
    assert levels_of(agents, [*repeated, *from_anchors("x", 2)], anchors=ANCHORS)["x"] == 1
    assert levels_of(agents, [*repeated, *from_anchors("x", 3)], anchors=ANCHORS)["x"] == 2


def test_a_vouch_that_expires_at_now_has_expired() -> None:
    agents = anchored("x")
    at_now = [*from_anchors("x", 2), vouch("a3", "x", expires=NOW)]
    assert levels_of(agents, at_now, anchors=ANCHORS)["x"] == 1
    just_after = [*from_anchors("x", 2), vouch("a3", "x", expires=NOW + 0.001)]
    assert levels_of(agents, just_after, anchors=ANCHORS)["x"] == 2
    assert levels_of(agents, just_after, anchors=ANCHORS, now=NOW + 0.001)["x"] == 1


def test_a_vouch_counts_from_its_issue_time() -> None:
    agents = anchored("x")
    issued_now = [*from_anchors("x", 2), vouch("a3", "x", issued=NOW)]
    assert levels_of(agents, issued_now, anchors=ANCHORS)["x"] == 2
    future = [*from_anchors("x", 2), vouch("a3", "x", issued=NOW + 1)]
    assert levels_of(agents, future, anchors=ANCHORS)["x"] == 1


def test_revoked_vouches_do_not_count() -> None:
    agents = anchored("x")
    vouches = [*from_anchors("x", 2), vouch("a3", "x", revoked=True)]
    assert levels_of(agents, vouches, anchors=ANCHORS)["x"] == 1


def test_self_vouches_never_count() -> None:
    agents = anchored("x")
    vouches = [*from_anchors("x", 2), vouch("x", "x")]
    assert levels_of(agents, vouches, anchors=[*ANCHORS, "x"], threshold=3)["x"] == 2
    assert levels_of(agents, [vouch("x", "x")], anchors=["x"]) == {
        "a1": 1,
        "a2": 1,
        "a3": 1,
        "x": 2,
    }
    lonely = universe("x")
    assert levels_of(lonely, [vouch("x", "x")], threshold=1) == {"x": 1}


def test_vouches_from_level_1_or_unknown_agents_do_not_count() -> None:
    agents = anchored("x", "p", "q", facts("r", verified=False))
    vouches = [vouch("a1", "x"), vouch("p", "x"), vouch("q", "x"), vouch("r", "x")]
    vouches.append(vouch("stranger", "x"))
    assert levels_of(agents, vouches, anchors=ANCHORS)["x"] == 1


def test_a_level_0_subject_stays_below_level_2() -> None:
    agents = anchored(facts("x", endpoints=0))
    assert levels_of(agents, from_anchors("x"), anchors=ANCHORS)["x"] == 0


def test_trust_travels_along_chains() -> None:
    agents = anchored("b1", "b2", "b3", "c", "d", "e", "f")
    vouches = [*from_anchors("b1"), *from_anchors("b2"), *from_anchors("b3")]
    vouches += [vouch(b, "c") for b in ("b1", "b2", "b3")]  # no anchor vouches for c
    vouches += [vouch("c", "d"), vouch("b1", "d"), vouch("a1", "d")]
    vouches += [vouch("d", "e"), vouch("c", "e"), vouch("f", "e")]  # f is only Level 1
    expected = {"a1": 2, "a2": 2, "a3": 2, "b1": 2, "b2": 2, "b3": 2, "c": 2, "d": 2}
    expected |= {"e": 1, "f": 1}
    assert levels_of(agents, vouches, anchors=ANCHORS) == expected
    for seed in range(5):
        shuffled = list(vouches)
        random.Random(seed).shuffle(shuffled)
        assert levels_of(agents, shuffled, anchors=ANCHORS) == expected


def test_a_long_chain_resolves_in_one_call() -> None:
    names = [f"n{i}" for i in range(200)]
    agents = anchored(*names)
    vouches = [*from_anchors("n0"), vouch("a1", "n1"), vouch("a2", "n1"), vouch("n0", "n1")]
    for i in range(2, len(names)):
        vouches += [vouch(names[i - 1], names[i]), vouch(names[i - 2], names[i])]
        vouches.append(vouch(names[i - 3] if i >= 3 else "a3", names[i]))
    vouches.reverse()  # deepest first: the worst order for a naive single pass
    levels = levels_of(agents, vouches, anchors=ANCHORS)
    assert all(levels[name] == 2 for name in names)


def test_trust_is_lost_when_the_vouches_it_rests_on_expire() -> None:
    agents = anchored("b1", "b2", "b3", "c")
    vouches = []
    for b in ("b1", "b2", "b3"):
        vouches += from_anchors(b, expires=NOW + DAY)
        vouches.append(vouch(b, "c", expires=NOW + 30 * DAY))
    assert levels_of(agents, vouches, anchors=ANCHORS)["c"] == 2
    later = levels_of(agents, vouches, anchors=ANCHORS, now=NOW + 2 * DAY)
    assert later == {"a1": 2, "a2": 2, "a3": 2, "b1": 1, "b2": 1, "b3": 1, "c": 1}


def test_a_mutual_ring_without_an_anchor_stays_at_level_1() -> None:
    agents = universe("p", "q", "r", "s")
    names = ["p", "q", "r", "s"]
    vouches = [vouch(a, b) for a in names for b in names if a != b]
    assert set(levels_of(agents, vouches).values()) == {1}


# --- sybils ---------------------------------------------------------------------------------


def _sybils(count: int) -> list[str]:
    return [f"sybil-{i:04d}" for i in range(count)]


def test_a_thousand_fresh_agents_cannot_vouch_anyone_up() -> None:
    sybils = _sybils(1000)
    agents = anchored("target", *sybils)
    honest = from_anchors("target", 2)
    swarm = [vouch(s, "target") for s in sybils]
    before = levels_of(agents, honest, anchors=ANCHORS)
    after = levels_of(agents, [*honest, *swarm], anchors=ANCHORS)
    assert before["target"] == after["target"] == 1
    assert after == before


def test_a_thousand_fresh_agents_vouching_for_each_other_stay_at_level_1() -> None:
    sybils = _sybils(1000)
    agents = anchored(*sybils)
    clique = [
        VouchFact(did(a), did(b), NOW - DAY, NOW + DAY) for a in sybils for b in sybils if a != b
    ]
    assert len(clique) == 999_000
    # An honest agent that vouches for two of them does not tip the clique over.
    honest = [vouch("a1", sybils[0]), vouch("a2", sybils[0]), vouch("a1", sybils[1])]
    levels = levels_of(agents, [*clique, *honest], anchors=ANCHORS)
    assert all(levels[s] == 1 for s in sybils)
    assert (
        counted_vouches(
            compute_levels(agents, clique, [], [], now=NOW, anchors=frozenset()),
            clique,
            now=NOW,
        )
        == {}
    )


# --- Level 3 ---------------------------------------------------------------------------------


def test_an_active_bond_on_top_of_level_2_makes_level_3() -> None:
    agents = anchored("x", "y")
    vouches = [*from_anchors("x"), *from_anchors("y")]
    levels = levels_of(agents, vouches, [bond("x", "y")], anchors=ANCHORS)
    assert levels["x"] == levels["y"] == 3
    assert levels["a1"] == 2


def test_a_bond_does_not_lift_a_level_1_agent() -> None:
    agents = anchored("x", "y")
    levels = levels_of(agents, from_anchors("x"), [bond("x", "y")], anchors=ANCHORS)
    assert levels["x"] == 3
    assert levels["y"] == 1


def test_a_bond_with_an_anchor_counts() -> None:
    levels = levels_of(anchored(), [], [bond("a1", "a2")], anchors=ANCHORS)
    assert levels == {"a1": 3, "a2": 3, "a3": 2}


@pytest.mark.parametrize(
    "kwargs",
    [
        {"revoked": True},
        {"expires": NOW},
        {"expires": NOW - 1},
        {"established": NOW + 1},
    ],
)
def test_inactive_bonds_do_not_count(kwargs: dict[str, float | bool]) -> None:
    b = bond("a1", "a2", **kwargs)  # type: ignore[arg-type]
    assert levels_of(anchored(), [], [b], anchors=ANCHORS)["a1"] == 2


def test_a_bond_counts_from_its_establishment() -> None:
    b = bond("a1", "a2", established=NOW)
    assert levels_of(anchored(), [], [b], anchors=ANCHORS)["a1"] == 3


def test_a_bond_with_oneself_does_not_count() -> None:
    b = BondFact("bond-self", (did("a1"), did("a1")), NOW - DAY, NOW + DAY, False)
    assert levels_of(anchored(), [], [b], anchors=ANCHORS)["a1"] == 2


# --- Level 4 ---------------------------------------------------------------------------------


def test_a_configured_certification_on_top_of_level_3_makes_level_4() -> None:
    levels = levels_of(anchored(), [], [bond("a1", "a2")], [cert("a1")], anchors=ANCHORS)
    assert levels == {"a1": 4, "a2": 3, "a3": 2}


def test_certifications_count_only_from_configured_keys() -> None:
    bonds = [bond("a1", "a2")]
    other = [cert("a1", key=OTHER_KEY)]
    assert levels_of(anchored(), [], bonds, other, anchors=ANCHORS)["a1"] == 3
    assert levels_of(anchored(), [], bonds, [cert("a1")], anchors=ANCHORS, keys=())["a1"] == 3
    both = levels_of(anchored(), [], bonds, other, anchors=ANCHORS, keys=(KEY, OTHER_KEY))
    assert both["a1"] == 4


def test_level_4_is_cumulative() -> None:
    # Certified but not bonded: Level 2. Certified but not vouched: Level 1.
    agents = anchored("x", "y")
    certs = [cert("a1"), cert("x")]
    levels = levels_of(agents, [], [bond("x", "y")], certs, anchors=ANCHORS)
    assert levels["a1"] == 2
    assert levels["x"] == 1


@pytest.mark.parametrize(
    ("issued", "expires", "level"),
    [
        (NOW - DAY, NOW, 3),
        (NOW - DAY, NOW + 0.5, 4),
        (NOW, NOW + DAY, 4),
        (NOW + 1, NOW + DAY, 3),
    ],
)
def test_certification_time_window(issued: float, expires: float, level: int) -> None:
    c = cert("a1", issued=issued, expires=expires)
    assert levels_of(anchored(), [], [bond("a1", "a2")], [c], anchors=ANCHORS)["a1"] == level


def test_a_revoked_certification_no_longer_counts() -> None:
    revoked = attrs.evolve(cert("a1"), revoked=True)
    assert levels_of(anchored(), [], [bond("a1", "a2")], [revoked], anchors=ANCHORS)["a1"] == 3
    assert not revoked.in_force(NOW)


# --- when levels change by themselves ----------------------------------------------------------


def test_next_level_change_is_the_first_start_or_expiry_after_now() -> None:
    assert next_level_change([], [], [], now=NOW) == math.inf
    facts_at = (
        [vouch("a1", "x", expires=NOW + 5 * DAY)],
        [bond("a1", "a2", expires=NOW + 3 * DAY)],
        [cert("a1", expires=NOW + 2 * DAY), cert("a2", issued=NOW + DAY, expires=NOW + 9 * DAY)],
    )
    assert next_level_change(*facts_at, now=NOW) == NOW + DAY  # a2's certification starts
    assert next_level_change(*facts_at, now=NOW + DAY) == NOW + 2 * DAY  # a1's expires
    assert next_level_change(*facts_at, now=NOW + 2 * DAY) == NOW + 3 * DAY  # the bond's
    assert next_level_change(*facts_at, now=NOW + 9 * DAY) == math.inf  # all over


def test_revoked_and_expired_facts_never_change_levels_again() -> None:
    revoked = [attrs.evolve(cert("a1", expires=NOW + DAY), revoked=True)]
    assert next_level_change([], [], revoked, now=NOW) == math.inf
    gone = [vouch("a1", "x", issued=NOW - 2 * DAY, expires=NOW - DAY)]
    assert next_level_change(gone, [bond("a1", "a2", revoked=True)], [], now=NOW) == math.inf


def test_facts_must_be_filed_under_their_own_id() -> None:
    with pytest.raises(ValueError, match="describe"):
        compute_levels({did("x"): facts("y")}, [], [], [], now=NOW)


# --- properties ------------------------------------------------------------------------------

NAMES = [f"p{i}" for i in range(6)]
WINDOWS = {
    "valid": (NOW - DAY, NOW + DAY, False),
    "expired": (NOW - 2 * DAY, NOW, False),
    "future": (NOW + 1, NOW + DAY, False),
    "revoked": (NOW - DAY, NOW + DAY, True),
}


@st.composite
def worlds(draw: st.DrawFn) -> dict[str, object]:
    agents = {}
    for name in NAMES:
        agents[did(name)] = facts(
            name, verified=draw(st.booleans()), endpoints=draw(st.sampled_from([0, 1, 1, 2]))
        )
    pair = st.tuples(st.sampled_from(NAMES), st.sampled_from(NAMES), st.sampled_from(list(WINDOWS)))
    vouches = []
    for attester, subject, window in draw(st.lists(pair, max_size=25)):
        start, end, revoked = WINDOWS[window]
        vouches.append(VouchFact(did(attester), did(subject), start, end, revoked))
    bonds = []
    for a, b, window in draw(st.lists(pair, max_size=4)):
        start, end, revoked = WINDOWS[window]
        bonds.append(BondFact(f"bond-{a}-{b}", (did(a), did(b)), start, end, revoked))
    certs = []
    for subject, key, window in draw(
        st.lists(
            st.tuples(
                st.sampled_from(NAMES),
                st.sampled_from([KEY, OTHER_KEY]),
                st.sampled_from(list(WINDOWS)),
            ),
            max_size=3,
        )
    ):
        start, end, _ = WINDOWS[window]
        certs.append(CertificationFact(did(subject), key, start, end))
    anchors = frozenset(did(n) for n in draw(st.sets(st.sampled_from(NAMES), max_size=3)))
    threshold = draw(st.integers(1, 3))
    return {
        "agents": agents,
        "vouches": vouches,
        "bonds": bonds,
        "certs": certs,
        "anchors": anchors,
        "threshold": threshold,
    }


def _levels(world: dict[str, object], **changes: object) -> dict[str, int]:
    w = {**world, **changes}
    return compute_levels(
        w["agents"],  # type: ignore[arg-type]
        w["vouches"],  # type: ignore[arg-type]
        w["bonds"],  # type: ignore[arg-type]
        w["certs"],  # type: ignore[arg-type]
        now=NOW,
        anchors=w["anchors"],  # type: ignore[arg-type]
        certifier_keys=frozenset({KEY}),
        vouch_threshold=w["threshold"],  # type: ignore[arg-type]
    )


def _reference_level2(world: dict[str, object]) -> set[str]:
    """The least fixed point by brute force: apply the rule until nothing changes."""
    agents: dict[str, AgentFacts] = world["agents"]  # type: ignore[assignment]
    vouches: list[VouchFact] = world["vouches"]  # type: ignore[assignment]
    anchors: frozenset[str] = world["anchors"]  # type: ignore[assignment]
    threshold: int = world["threshold"]  # type: ignore[assignment]
    identified = {a for a, f in agents.items() if f.did_verified and f.endpoint_count > 0}
    level2: set[str] = set()
    while True:
        grown = {
            a
            for a in identified
            if a in anchors
            or len(
                {
                    v.attester
                    for v in vouches
                    if v.subject == a
                    and v.attester in level2
                    and v.attester != a
                    and not v.revoked
                    and v.issued_at <= NOW < v.expires_at
                }
            )
            >= threshold
        }
        if grown == level2:
            return level2
        level2 = grown


@settings(max_examples=300, deadline=None)
@given(world=worlds())
def test_levels_match_a_brute_force_fixed_point(world: dict[str, object]) -> None:
    levels = _levels(world)
    assert {a for a, level in levels.items() if level >= 2} == _reference_level2(world)


@settings(max_examples=300, deadline=None)
@given(world=worlds())
def test_levels_are_cumulative(world: dict[str, object]) -> None:
    levels = _levels(world)
    agents: dict[str, AgentFacts] = world["agents"]  # type: ignore[assignment]
    bonds: list[BondFact] = world["bonds"]  # type: ignore[assignment]
    certs: list[CertificationFact] = world["certs"]  # type: ignore[assignment]
    without_bonds = _levels(world, bonds=[], certs=[])
    without_certs = _levels(world, certs=[])
    for agent_id, level in levels.items():
        assert 0 <= level <= 4
        f = agents[agent_id]
        assert (level >= 1) == (f.did_verified and f.endpoint_count >= 1)
        assert (level >= 2) == (without_bonds[agent_id] >= 2)
        has_bond = any(agent_id in b.agents and b.active(NOW) for b in bonds)
        assert (level >= 3) == (level >= 2 and has_bond)
        has_cert = any(
            c.subject == agent_id and c.certifier_key == KEY and c.in_force(NOW) for c in certs
        )
        assert (level == 4) == (without_certs[agent_id] == 3 and has_cert)
        assert min(level, 3) == without_certs[agent_id]


@settings(max_examples=300, deadline=None)
@given(
    world=worlds(),
    attester=st.sampled_from(NAMES),
    subject=st.sampled_from(NAMES),
)
def test_adding_a_valid_vouch_never_lowers_a_level(
    world: dict[str, object], attester: str, subject: str
) -> None:
    before = _levels(world)
    extra = VouchFact(did(attester), did(subject), NOW - DAY, NOW + DAY, False)
    after = _levels(world, vouches=[*world["vouches"], extra])  # type: ignore[misc]
    assert all(after[a] >= before[a] for a in before)


@settings(max_examples=200, deadline=None)
@given(world=worlds(), anchor=st.sampled_from(NAMES))
def test_adding_an_anchor_never_lowers_a_level(world: dict[str, object], anchor: str) -> None:
    before = _levels(world)
    after = _levels(world, anchors=world["anchors"] | {did(anchor)})  # type: ignore[operator]
    assert all(after[a] >= before[a] for a in before)


# --- vouch and bond counts for the score ---------------------------------------------------


def test_counted_vouches_come_from_distinct_level_2_attesters() -> None:
    agents = anchored("x", "p")
    vouches = [*from_anchors("x", 2), vouch("a1", "x"), vouch("p", "x")]
    vouches += [vouch("a3", "x", revoked=True), vouch("a3", "p", expires=NOW)]
    levels = compute_levels(agents, vouches, [], [], now=NOW, anchors=frozenset(map(did, ANCHORS)))
    assert counted_vouches(levels, vouches, now=NOW) == {did("x"): 2}


def test_bond_partner_counts_count_partners_not_bonds() -> None:
    bonds = [
        bond("x", "y"),
        BondFact("bond-2", (did("y"), did("x")), NOW - DAY, NOW + DAY, False),
        bond("x", "z"),
        bond("x", "w", revoked=True),
        bond("y", "z", expires=NOW),
    ]
    assert bond_partner_counts(bonds, now=NOW) == {did("x"): 2, did("y"): 1, did("z"): 1}


# --- permissions -----------------------------------------------------------------------------


def test_permissions_are_cumulative() -> None:
    assert permissions_for_level(0) == {"read_broadcast"}
    assert permissions_for_level(1) == {"read_broadcast", "direct_message"}
    assert {"knowledge_exchange", "initiate_bond", "issue_vouch"} <= permissions_for_level(2)
    assert {"task_delegation", "full_collaboration"} <= permissions_for_level(3)
    assert {"governance_vote", "priority_routing", "enterprise_sla"} <= permissions_for_level(4)
    for level in range(1, 5):
        assert permissions_for_level(level - 1) < permissions_for_level(level)
    assert "governance_vote" not in permissions_for_level(3)
    assert "task_delegation" not in permissions_for_level(2)
    assert "issue_vouch" not in permissions_for_level(1)
    assert len(TRUST_LEVEL_NAMES) == 5


@pytest.mark.parametrize("bad", [-1, 5, True, 2.0, "2"])
def test_permissions_reject_unknown_levels(bad: object) -> None:
    with pytest.raises(ValueError, match="trust level"):
        permissions_for_level(bad)  # type: ignore[arg-type]


# --- score -----------------------------------------------------------------------------------


def rating(rater: str, value: float, *, at: float = NOW - DAY, subject: str = "x") -> RatingFact:
    return RatingFact(did(rater), did(subject), value, at)


def score(
    f: AgentFacts | None = None,
    *,
    vouches: int = 0,
    bonds: int = 0,
    ratings: Iterable[RatingFact] = (),
    weights: Mapping[str, float] = DEFAULT_WEIGHTS,
    now: float = NOW,
) -> TrustScore:
    return compute_score(
        f or facts("x"),
        vouch_count=vouches,
        bond_count=bonds,
        ratings=list(ratings),
        now=now,
        weights=weights,
    )


def test_score_with_default_weights() -> None:
    f = facts("x", registered_at=NOW - 100 * DAY, online=50 * DAY)
    s = score(f, vouches=3, bonds=1, ratings=[rating("p", 0.75), rating("q", 0.25)])
    assert s.identity_verification == 1.0
    assert s.vouch_count_normalized == pytest.approx(0.3, abs=1e-15)
    assert s.bond_count_normalized == pytest.approx(0.2, abs=1e-15)
    assert s.interaction_reputation == 0.5
    assert s.uptime_ratio == 0.5
    expected = 0.20 * 1 + 0.25 * 0.3 + 0.25 * 0.2 + 0.20 * 0.5 + 0.10 * 0.5  # 0.475
    assert s.score == pytest.approx(expected, abs=1e-12)
    assert s.score == pytest.approx(0.475, abs=1e-12)


def test_score_with_dyadic_weights_is_exact() -> None:
    weights = {
        "identity_verification": 0.5,
        "vouch_count_normalized": 0.25,
        "bond_count_normalized": 0.125,
        "interaction_reputation": 0.125,
        "uptime_ratio": 0.0,
    }
    f = facts("x", registered_at=NOW - 4 * DAY, online=DAY)
    s = score(f, vouches=5, bonds=5, ratings=[rating("p", 1.0)], weights=weights)
    assert (s.vouch_count_normalized, s.bond_count_normalized) == (0.5, 1.0)
    assert s.uptime_ratio == 0.25
    assert s.score == 0.5 + 0.125 + 0.125 + 0.125  # 0.875


def test_a_fresh_unverified_agent() -> None:
    s = score(facts("x", verified=False, registered_at=NOW, online=0.0))
    assert s.components == {
        "identity_verification": 0.0,
        "vouch_count_normalized": 0.0,
        "bond_count_normalized": 0.0,
        "interaction_reputation": 0.5,
        "uptime_ratio": 0.0,
    }
    assert s.score == pytest.approx(0.1, abs=1e-15)


def test_counts_saturate() -> None:
    s = score(vouches=10, bonds=5)
    assert (s.vouch_count_normalized, s.bond_count_normalized) == (1.0, 1.0)
    s = score(vouches=1000, bonds=1000)
    assert (s.vouch_count_normalized, s.bond_count_normalized) == (1.0, 1.0)
    assert score(vouches=9, bonds=4).vouch_count_normalized == pytest.approx(0.9)


def test_a_perfect_agent_scores_one() -> None:
    f = facts("x", registered_at=NOW - DAY, online=DAY)
    s = score(f, vouches=10, bonds=5, ratings=[rating("p", 1.0)])
    assert s.score == 1.0


def test_score_rejects_negative_counts() -> None:
    with pytest.raises(ValueError, match="count"):
        score(vouches=-1)
    with pytest.raises(ValueError, match="count"):
        score(bonds=-1)


def test_uptime_is_capped_and_survives_a_zero_age() -> None:
    assert score(facts("x", registered_at=NOW - 10, online=50)).uptime_ratio == 1.0
    assert score(facts("x", registered_at=NOW, online=0.5)).uptime_ratio == 0.5
    assert score(facts("x", registered_at=NOW + 30, online=0.25)).uptime_ratio == 0.25
    assert score(facts("x", registered_at=NOW - 8, online=2)).uptime_ratio == 0.25


def test_reputation_is_neutral_without_ratings() -> None:
    assert score().interaction_reputation == 0.5


def test_reputation_takes_each_raters_latest_rating() -> None:
    ratings = [
        rating("p", 0.0, at=NOW - 5 * DAY),
        rating("p", 1.0, at=NOW - DAY),
        rating("p", 0.2, at=NOW - 3 * DAY),
        rating("q", 0.5, at=NOW - 2 * DAY),
    ]
    assert score(ratings=ratings).interaction_reputation == 0.75
    assert score(ratings=reversed(ratings)).interaction_reputation == 0.75


def test_reputation_tie_on_time_does_not_depend_on_order() -> None:
    ratings = [rating("p", 0.25, at=NOW - DAY), rating("p", 0.75, at=NOW - DAY)]
    assert score(ratings=ratings).interaction_reputation == 0.75
    assert score(ratings=ratings[::-1]).interaction_reputation == 0.75


def test_reputation_ignores_self_ratings_and_other_subjects() -> None:
    ratings = [
        rating("x", 1.0),
        rating("p", 0.25),
        rating("p", 1.0, subject="y"),
    ]
    assert score(ratings=ratings).interaction_reputation == 0.25
    assert score(ratings=[rating("x", 1.0)]).interaction_reputation == 0.5


def test_reputation_window_is_90_days() -> None:
    assert RATING_WINDOW == 90 * 86_400
    edge = NOW - RATING_WINDOW
    assert score(ratings=[rating("p", 1.0, at=edge)]).interaction_reputation == 0.5
    assert score(ratings=[rating("p", 1.0, at=edge + 1)]).interaction_reputation == 1.0
    mixed = [rating("p", 1.0, at=edge - DAY), rating("q", 0.0, at=NOW - DAY)]
    assert score(ratings=mixed).interaction_reputation == 0.0
    # An old rating that the rater has since renewed counts with its new value.
    renewed = [rating("p", 1.0, at=edge - DAY), rating("p", 0.5, at=NOW)]
    assert score(ratings=renewed).interaction_reputation == 0.5


def test_reputation_ignores_ratings_dated_after_now() -> None:
    ratings = [rating("p", 0.25, at=NOW - DAY), rating("p", 1.0, at=NOW + 1)]
    assert score(ratings=ratings).interaction_reputation == 0.25
    assert score(ratings=[rating("p", 1.0, at=NOW + 1)]).interaction_reputation == 0.5


def test_a_thousand_fresh_raters_are_a_thousand_voices_each_counted_once() -> None:
    # Which raters count is the registry's choice; here each counts once.
    ratings = [rating(f"r{i}", 1.0, at=NOW - DAY + i) for i in range(1000)]
    ratings += [rating("r0", 0.0, at=NOW - 10 * DAY)]
    assert score(ratings=ratings).interaction_reputation == 1.0


def test_score_components_are_not_rounded() -> None:
    f = facts("x", registered_at=NOW - 3 * DAY, online=DAY)
    s = score(f, ratings=[rating("p", 0.1), rating("q", 0.2), rating("r", 0.2)])
    assert s.uptime_ratio == 1 / 3
    assert s.interaction_reputation == math.fsum([0.1, 0.2, 0.2]) / 3


def test_trust_score_is_a_frozen_value() -> None:
    s = score()
    with pytest.raises(attrs.exceptions.FrozenInstanceError):
        s.score = 1.0  # type: ignore[misc]
    assert list(s.components) == [
        "identity_verification",
        "vouch_count_normalized",
        "bond_count_normalized",
        "interaction_reputation",
        "uptime_ratio",
    ]


# --- weights and fact validation ---------------------------------------------------------


def test_default_weights_are_the_spec_defaults() -> None:
    assert dict(DEFAULT_WEIGHTS) == {
        "identity_verification": 0.20,
        "vouch_count_normalized": 0.25,
        "bond_count_normalized": 0.25,
        "interaction_reputation": 0.20,
        "uptime_ratio": 0.10,
    }
    assert check_weights(DEFAULT_WEIGHTS) == dict(DEFAULT_WEIGHTS)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"uptime_ratio": None}, "name exactly"),
        ({"extra": 0.0}, "name exactly"),
        ({"uptime_ratio": 0.09}, "sum to 1"),
        ({"uptime_ratio": 0.11}, "sum to 1"),
        ({"uptime_ratio": -0.1, "identity_verification": 0.4}, ">= 0"),
        ({"uptime_ratio": math.nan}, "finite"),
        ({"uptime_ratio": math.inf}, "finite"),
        ({"uptime_ratio": True}, "finite"),
        ({"uptime_ratio": "0.1"}, "finite"),
    ],
)
def test_bad_weights_are_refused(change: dict[str, object], message: str) -> None:
    weights: dict[str, object] = dict(DEFAULT_WEIGHTS)
    for key, value in change.items():
        if value is None:
            del weights[key]
        else:
            weights[key] = value
    with pytest.raises(ValueError, match=message):
        check_weights(weights)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=message):
        score(weights=weights)  # type: ignore[arg-type]


def test_weights_sum_tolerance_and_score_clamp() -> None:
    nearly = {**DEFAULT_WEIGHTS, "uptime_ratio": 0.10 + 5e-10}
    check_weights(nearly)
    f = facts("x", registered_at=NOW - DAY, online=DAY)
    assert score(f, vouches=10, bonds=5, ratings=[rating("p", 1.0)], weights=nearly).score == 1.0
    with pytest.raises(ValueError, match="sum to 1"):
        check_weights({**DEFAULT_WEIGHTS, "uptime_ratio": 0.10 + 2e-9})


def test_integer_weights_are_accepted() -> None:
    one_hot = {name: 0 for name in DEFAULT_WEIGHTS} | {"identity_verification": 1}
    assert check_weights(one_hot)["identity_verification"] == 1.0
    assert score(weights=one_hot).score == 1.0


@pytest.mark.parametrize("bad", [-0.01, 1.01, math.nan, math.inf])
def test_ratings_must_lie_in_the_unit_interval(bad: float) -> None:
    with pytest.raises(ValueError, match="rating"):
        RatingFact(did("p"), did("x"), bad, NOW)


def test_agent_facts_are_validated() -> None:
    with pytest.raises(ValueError, match="endpoint_count"):
        AgentFacts(did("x"), True, -1, NOW, 0.0)
    with pytest.raises(ValueError, match="online_seconds"):
        AgentFacts(did("x"), True, 1, NOW, -1.0)
    with pytest.raises(ValueError, match="online_seconds"):
        AgentFacts(did("x"), True, 1, NOW, math.nan)
