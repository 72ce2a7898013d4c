"""Discovery over the ledger's ordered buckets equals a plain filter-and-sort."""

from __future__ import annotations

import itertools
import json
import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ocpd.proto.artifacts import sign
from ocpd.proto.crypto import SigningKey
from ocpd.proto.diddoc import build_did_document, parse_did_document
from ocpd.proto.ids import derive_agent_id
from ocpd.proto.taxonomy import Taxonomy
from ocpd.proto.trust import DEFAULT_WEIGHTS
from ocpd.registry.ledger import (
    AgentEntry,
    Ledger,
    _distinct_prefix,
    _merged_slice,
    agent_entry,
)

DOMAINS = [
    "healthcare.oncology",
    "healthcare.radiology",
    "finance.fraud_detection",
    "nlp",
    "vision",
]
CAPS = ["cap:nlp:classification", "cap:vision:imaging", "cap:data:clustering"]


def _ledger(count: int, seed: int) -> Ledger:
    rng = random.Random(seed)
    taxonomy = Taxonomy.load_default()
    ledger = Ledger(taxonomy, weights=DEFAULT_WEIGHTS)
    for i in range(count):
        key = SigningKey(rng.randbytes(32))
        agent_id = derive_agent_id(key.public_key, "testnet")
        record = sign(
            {
                "agent_id": agent_id,
                "display_name": str(i),
                "version": "1",
                "capabilities": [{"id": c, "name": c, "version": "1"} for c in rng.sample(CAPS, 2)],
                "domains": rng.sample(DOMAINS, rng.choice([1, 2])),
                "endpoints": [{"transport": "ocp-ws", "url": "wss://x/ocp/v1/ws", "priority": 1}],
                "status": "active",
                "registered_at": "2026-04-03T12:00:00Z",
                "ttl": 3600,
            },
            key,
        )
        entry = agent_entry(
            json.dumps(record),
            json.dumps(build_did_document(key.public_key, network="testnet")),
            status=rng.choice(["active", "active", "inactive"]),
            taxonomy=taxonomy,
        )
        ledger.put_agent(entry)
    ledger.recompute_levels(now=1_775_217_600.0)
    for agent_id in rng.sample(sorted(ledger.agents), count // 5):  # spread the levels
        ledger.levels[agent_id] = rng.choice([0, 2, 3, 4])
        ledger._place(agent_id)
    return ledger


def _reference(ledger: Ledger, domains, capabilities, min_level, status):  # type: ignore[no-untyped-def]
    out = []
    for agent_id, entry in ledger.agents.items():
        if status is not None and entry.status != status:
            continue
        if ledger.levels.get(agent_id, 0) < min_level:
            continue
        if domains and not any(
            ledger.taxonomy.matches(d, q) for d in entry.domains for q in domains
        ):
            continue
        if not set(capabilities) <= entry.capabilities:
            continue
        out.append(agent_id)
    out.sort(key=lambda a: (-ledger.levels.get(a, 0), a))
    return out


QUERIES = [
    ([], [], 0, "active"),
    ([], [], 2, None),
    (["healthcare"], [], 0, "active"),
    (["oncology"], [], 1, "active"),
    (["healthcare", "finance"], [], 0, "active"),
    ([], ["cap:vision:imaging"], 0, "active"),
    ([], ["cap:vision:imaging", "cap:nlp:classification"], 0, None),
    (["healthcare"], ["cap:data:clustering"], 2, "active"),
    (["nlp", "vision"], ["cap:nlp:classification"], 0, "inactive"),
    (["code"], [], 0, "active"),
    ([], ["cap:code:review"], 0, "active"),
]


@pytest.mark.parametrize("query", QUERIES)
@pytest.mark.parametrize(("limit", "offset"), [(20, 0), (7, 13), (100, 90), (5, 10_000)])
def test_discovery_matches_reference(query, limit: int, offset: int) -> None:  # type: ignore[no-untyped-def]
    ledger = _ledger(300, seed=5)
    domains, capabilities, min_level, status = query
    expected = _reference(ledger, domains, capabilities, min_level, status)
    total, entries = ledger.discover(
        domains=domains,
        capabilities=capabilities,
        min_trust_level=min_level,
        status=status,
        limit=limit,
        offset=offset,
    )
    assert total == len(expected)
    assert [e.agent_id for e in entries] == expected[offset : offset + limit]


def test_status_and_level_moves_keep_the_index_consistent() -> None:
    ledger = _ledger(120, seed=9)
    some = sorted(ledger.agents)[:30]
    for agent_id in some:
        ledger.set_status(agent_id, "inactive")
    for agent_id in some[:10]:
        ledger.put_agent(ledger.agents[agent_id])  # re-registration
    ledger.recompute_levels(now=1_775_217_600.0)
    for query in QUERIES:
        domains, capabilities, min_level, status = query
        expected = _reference(ledger, domains, capabilities, min_level, status)
        total, entries = ledger.discover(
            domains=domains,
            capabilities=capabilities,
            min_trust_level=min_level,
            status=status,
            limit=1000,
            offset=0,
        )
        assert (total, [e.agent_id for e in entries]) == (len(expected), expected)


# --- differential property test: discovery against brute force ---------------------------

# Three-level paths, so that a query two levels up still finds an agent.
TAXONOMY = Taxonomy.load_default().extended(
    ["healthcare.oncology.paediatric", "vision.imaging.medical"]
)
AGENT_DOMAINS = [
    "healthcare",
    "healthcare.oncology",
    "healthcare.oncology.paediatric",
    "healthcare.radiology",
    "finance.fraud_detection",
    "vision.imaging.medical",
    "nlp",
]
QUERY_DOMAINS = [
    *AGENT_DOMAINS,
    "oncology",  # bare leaves
    "paediatric",
    "imaging",
    "vision",  # ancestors only
    "finance",
    "code",  # held by nobody
]
AGENT_CAPS = ["cap:nlp:classification", "cap:vision:imaging", "cap:data:clustering"]
QUERY_CAPS = [*AGENT_CAPS, "cap:code:review"]  # the last is held by nobody
STATUSES = ["active", "inactive"]
_DOCUMENT = parse_did_document(
    build_did_document(SigningKey(bytes(32)).public_key, network="testnet")
)

agent_ids = st.integers(0, 2**48 - 1).map(lambda n: f"did:ocp:testnet:agent-{n:012x}")
registrations = st.fixed_dictionaries(
    {
        "domains": st.lists(st.sampled_from(AGENT_DOMAINS), min_size=1, max_size=3, unique=True),
        "capabilities": st.frozensets(st.sampled_from(AGENT_CAPS), max_size=3),
        "status": st.sampled_from(STATUSES),
        "level": st.integers(0, 4),
    }
)
moves = st.tuples(
    st.integers(0, 10_000),  # which agent, modulo the count
    st.sampled_from(["status", "level", "re-register"]),
    registrations,
)
queries = st.fixed_dictionaries(
    {
        "domains": st.lists(st.sampled_from(QUERY_DOMAINS), max_size=3),
        "capabilities": st.lists(st.sampled_from(QUERY_CAPS), max_size=3),
        "min_trust_level": st.integers(0, 4),
        "status": st.sampled_from([None, *STATUSES]),
        "limit": st.integers(1, 12),
        "offset": st.one_of(st.just(0), st.integers(0, 10), st.integers(0, 50)),
    }
)


def _fake_entry(agent_id: str, registration: dict[str, object]) -> AgentEntry:
    """An entry without signatures: discovery reads only ids, domains, capabilities, status."""
    domains = registration["domains"]
    capabilities = registration["capabilities"]
    status = registration["status"]
    assert isinstance(domains, list)
    assert isinstance(capabilities, frozenset)
    assert isinstance(status, str)
    return AgentEntry(
        agent_id=agent_id,
        record={},
        record_text="{}",
        document=_DOCUMENT,
        document_text="{}",
        registered_at=0.0,
        expires_at=3600.0,
        status=status,
        domains=tuple(TAXONOMY.normalise(d) for d in domains),
        capabilities=capabilities,
    )


def _brute_force(
    ledger: Ledger,
    *,
    domains: list[str],
    capabilities: list[str],
    min_trust_level: int,
    status: str | None,
) -> list[str]:
    """OCP §3.2.3 read literally: filter every agent, then sort."""
    statuses = ("active", "inactive") if status is None else (status,)
    out = [
        entry.agent_id
        for entry in ledger.agents.values()
        if entry.status in statuses
        and ledger.level(entry.agent_id) >= min_trust_level
        and (
            not domains
            or any(TAXONOMY.matches(mine, query) for mine in entry.domains for query in domains)
        )
        and all(c in entry.capabilities for c in capabilities)
    ]
    return sorted(out, key=lambda a: (-ledger.level(a), a))


@settings(max_examples=300, deadline=None)
@given(
    agents=st.dictionaries(agent_ids, registrations, max_size=40),
    rebuild=st.booleans(),
    changes=st.lists(moves, max_size=12),
    asked=st.lists(queries, min_size=1, max_size=6),
)
def test_discovery_equals_brute_force(
    agents: dict[str, dict[str, object]],
    rebuild: bool,
    changes: list[tuple[int, str, dict[str, object]]],
    asked: list[dict[str, object]],
) -> None:
    ledger = Ledger(TAXONOMY, weights=DEFAULT_WEIGHTS)
    for agent_id, registration in agents.items():
        level = registration["level"]
        assert isinstance(level, int)
        ledger.levels[agent_id] = level
        if rebuild:
            ledger.agents[agent_id] = _fake_entry(agent_id, registration)
        else:
            ledger.put_agent(_fake_entry(agent_id, registration))
    if rebuild:
        ledger._rebuild_index()
    ids = sorted(agents)
    for which, move, registration in changes if ids else ():
        agent_id = ids[which % len(ids)]
        if move == "status":
            flipped = "inactive" if ledger.agents[agent_id].status == "active" else "active"
            ledger.set_status(agent_id, flipped)
        elif move == "level":
            level = registration["level"]
            assert isinstance(level, int)
            ledger.levels[agent_id] = level
            ledger._place(agent_id)
        else:  # new domains, capabilities and status under the same id
            ledger.put_agent(_fake_entry(agent_id, registration))
    for key, buckets in ledger._index.items():  # lists and sets agree; no empty buckets
        assert buckets.keys() == ledger._members[key].keys()
        for slot, bucket in buckets.items():
            assert bucket
            assert bucket == sorted(bucket)
            assert {ledger._ordinals[a] for a in bucket} == ledger._members[key][slot]
    assert all(ledger._ids[n] == a for a, n in ledger._ordinals.items())
    for query in asked:
        filters = {k: query[k] for k in ("domains", "capabilities", "min_trust_level", "status")}
        expected = _brute_force(ledger, **filters)  # type: ignore[arg-type]
        limit, offset = query["limit"], query["offset"]
        assert isinstance(limit, int)
        assert isinstance(offset, int)
        total, entries = ledger.discover(**filters, limit=limit, offset=offset)  # type: ignore[arg-type]
        assert total == len(expected), query
        assert [e.agent_id for e in entries] == expected[offset : offset + limit], query


def test_discovery_equals_brute_force_on_a_larger_ledger() -> None:
    """Big enough buckets that pages are found by walking as well as by sorting."""
    rng = random.Random(3)
    ledger = Ledger(TAXONOMY, weights=DEFAULT_WEIGHTS)
    for n in range(3000):
        agent_id = f"did:ocp:testnet:agent-{rng.getrandbits(48):012x}"
        ledger.levels[agent_id] = rng.choice([0, 1, 1, 1, 2, 3, 4])
        registration = {
            "domains": rng.sample(AGENT_DOMAINS, rng.choice([1, 2])),
            "capabilities": frozenset(rng.sample(AGENT_CAPS, rng.choice([1, 2]))),
            "status": "inactive" if n % 5 == 0 else "active",
        }
        ledger.put_agent(_fake_entry(agent_id, registration))
    shapes = [
        (["healthcare"], ["cap:vision:imaging"]),
        (["paediatric"], ["cap:nlp:classification"]),
        (["healthcare", "nlp"], []),
        (["healthcare", "nlp", "vision"], ["cap:data:clustering"]),
        ([], ["cap:vision:imaging", "cap:nlp:classification"]),
        (["finance"], ["cap:vision:imaging", "cap:data:clustering"]),
    ]
    for (domains, capabilities), status, min_level, (limit, offset) in itertools.product(
        shapes, [None, "active"], [0, 2], [(20, 0), (100, 100), (7, 900), (50, 2990)]
    ):
        expected = _brute_force(
            ledger,
            domains=domains,
            capabilities=capabilities,
            min_trust_level=min_level,
            status=status,
        )
        total, entries = ledger.discover(
            domains=domains,
            capabilities=capabilities,
            min_trust_level=min_level,
            status=status,
            limit=limit,
            offset=offset,
        )
        assert total == len(expected)
        assert [e.agent_id for e in entries] == expected[offset : offset + limit]


@given(
    ids=st.lists(st.text(alphabet="abcdef", max_size=4), unique=True, max_size=30),
    cuts=st.lists(st.integers(0, 3), max_size=30),
    skip=st.integers(0, 40),
    take=st.integers(1, 10),
)
def test_merged_slice_of_disjoint_runs(
    ids: list[str], cuts: list[int], skip: int, take: int
) -> None:
    runs: list[list[str]] = [[], [], [], []]
    for n, agent_id in enumerate(ids):
        runs[cuts[n] if n < len(cuts) else 0].append(agent_id)
    for count in (1, 2, 4):
        chosen = [sorted(r) for r in runs[:count]]
        merged = sorted(itertools.chain(*chosen))
        assert _merged_slice(chosen, skip, take) == merged[skip : skip + take]


@given(
    runs=st.lists(st.lists(st.text(alphabet="abc", max_size=3), unique=True), max_size=4),
    count=st.integers(1, 30),
)
def test_distinct_prefix_of_overlapping_runs(runs: list[list[str]], count: int) -> None:
    chosen = [sorted(r) for r in runs]
    assert _distinct_prefix(chosen, count) == sorted(set(itertools.chain(*chosen)))[:count]
