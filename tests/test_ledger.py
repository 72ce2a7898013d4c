"""Discovery over the ledger's ordered buckets equals a plain filter-and-sort."""

from __future__ import annotations

import json
import random

import pytest

from ocpd.proto.artifacts import sign
from ocpd.proto.crypto import SigningKey
from ocpd.proto.diddoc import build_did_document
from ocpd.proto.ids import derive_agent_id
from ocpd.proto.taxonomy import Taxonomy
from ocpd.proto.trust import DEFAULT_WEIGHTS
from ocpd.registry.ledger import Ledger, agent_entry

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
