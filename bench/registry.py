"""Registry benchmark: discovery and registration latency with many agents.

Populates a registry database with N signed agent records (written straight
into SQLite in the registry's own format, because registering 100,000 agents
over HTTP would take far longer than the measurement), starts the real
daemon on it, then measures over HTTP on 127.0.0.1:

* discovery latency for a mix of filters (hierarchical domain, capability,
  minimum trust level), sequentially, p50/p99, plus the registry's own
  in-process discovery histogram;
* registration latency of fresh agents (signed record, DID document, D3
  header), p50/p99;
* the daemon's resident memory after loading, after the discovery run and
  after the registrations (its ``process_resident_memory_bytes``).

Results go to ``bench/results/registry.json``. Loopback only; bounded counts.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import sqlite3
import statistics
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import trio
from conformance.process import ReadyProcess

from ocpd.proto.artifacts import sign
from ocpd.proto.auth import build_authorization
from ocpd.proto.crypto import SigningKey
from ocpd.proto.diddoc import build_did_document
from ocpd.proto.encoding import format_timestamp
from ocpd.proto.ids import derive_agent_id
from ocpd.storage import MIGRATIONS, migrate

NETWORK = "benchnet"
DOMAINS = [
    "healthcare.oncology",
    "healthcare.radiology",
    "healthcare.cardiology",
    "finance.fraud_detection",
    "finance.risk_analysis",
    "nlp",
    "vision",
    "data",
    "code",
]
CAPABILITIES = [
    "cap:nlp:classification",
    "cap:nlp:summarization",
    "cap:vision:imaging",
    "cap:finance:risk_analysis",
    "cap:data:clustering",
    "cap:code:review",
]


def _record(key: SigningKey, rng: random.Random, now: float) -> tuple[str, str, str, float]:
    agent_id = derive_agent_id(key.public_key, NETWORK)
    caps = rng.sample(CAPABILITIES, 2)
    record = sign(
        {
            "agent_id": agent_id,
            "display_name": f"bench {agent_id[-6:]}",
            "version": "1.0.0",
            "capabilities": [{"id": c, "name": c, "version": "1.0"} for c in caps],
            "domains": rng.sample(DOMAINS, 2),
            "endpoints": [
                {"transport": "ocp-ws", "url": "wss://bench.example/ocp/v1/ws", "priority": 1}
            ],
            "status": "active",
            "registered_at": format_timestamp(now),
            "ttl": 604_800,
        },
        key,
    )
    document = build_did_document(key.public_key, network=NETWORK)
    return (
        agent_id,
        json.dumps(record, separators=(",", ":")),
        json.dumps(document, separators=(",", ":")),
        now,
    )


def populate(path: Path, count: int, *, seed: int = 7) -> float:
    """Write ``count`` agents into a fresh registry database; returns seconds taken."""
    started = time.perf_counter()
    rng = random.Random(seed)
    now = time.time()
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute("PRAGMA journal_mode = WAL")
    migrate(conn, MIGRATIONS["registry"])
    conn.execute("BEGIN")
    batch = []
    for i in range(count):
        key = SigningKey(rng.randbytes(32))
        batch.append(_record(key, rng, now))
        if len(batch) == 5000 or i == count - 1:
            conn.executemany(
                "INSERT INTO agents (agent_id, record, did_document, registered_at, "
                "expires_at, status) VALUES (?, ?, ?, ?, ?, 'active')",
                [(a, r, d, t, t + 604_800) for a, r, d, t in batch],
            )
            batch = []
    conn.execute("COMMIT")
    conn.close()
    os.chmod(path, 0o600)
    return time.perf_counter() - started


def _percentiles(samples: list[float]) -> dict[str, float]:
    ordered = sorted(samples)
    return {
        "p50_ms": round(statistics.median(ordered) * 1000, 3),
        "p99_ms": round(ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))] * 1000, 3),
        "max_ms": round(ordered[-1] * 1000, 3),
        "count": len(ordered),
    }


def measure_discovery(client: httpx.Client, queries: int, rng: random.Random) -> dict[str, Any]:
    samples = []
    totals = []
    by_kind: dict[str, list[float]] = {}
    for _ in range(queries):
        filters: dict[str, Any] = {}
        choice = rng.random()
        if choice < 0.4:
            kind = "domain"
            filters["domains"] = [rng.choice(["healthcare", "finance", "oncology", "vision"])]
        elif choice < 0.7:
            kind = "capability"
            filters["capabilities"] = [rng.choice(CAPABILITIES)]
        else:
            kind = "domain+capability"
            filters["domains"] = [rng.choice(DOMAINS)]
            filters["capabilities"] = [rng.choice(CAPABILITIES)]
        body = {"filters": filters, "limit": 20, "offset": rng.choice([0, 0, 20, 100])}
        started = time.perf_counter()
        response = client.post("/ocp/v1/registry/discover", json=body)
        elapsed = time.perf_counter() - started
        samples.append(elapsed)
        by_kind.setdefault(kind, []).append(elapsed)
        response.raise_for_status()
        totals.append(response.json()["total"])
    return {
        **_percentiles(samples),
        "mean_matches": round(statistics.mean(totals)),
        "by_kind": {kind: _percentiles(s) for kind, s in sorted(by_kind.items())},
    }


def measure_registration(client: httpx.Client, count: int, rng: random.Random) -> dict[str, Any]:
    samples = []
    for _ in range(count):
        key = SigningKey(rng.randbytes(32))
        agent_id, record, document, _ = _record(key, rng, time.time())
        body = json.dumps(
            {"record": json.loads(record), "did_document": json.loads(document)}
        ).encode()
        path = "/ocp/v1/registry/agents"
        header = build_authorization(
            key, agent_id=agent_id, method="POST", path_and_query=path, body=body, now=time.time()
        )
        started = time.perf_counter()
        response = client.post(
            path,
            content=body,
            headers={"Authorization": header, "Content-Type": "application/json"},
        )
        samples.append(time.perf_counter() - started)
        if response.status_code != 201:
            raise RuntimeError(f"registration failed: {response.status_code} {response.text}")
    return _percentiles(samples)


def _rss_mb(client: httpx.Client) -> float:
    """The daemon's resident set size, from its process collector on ``/metrics``."""
    from prometheus_client.parser import text_string_to_metric_families

    for family in text_string_to_metric_families(client.get("/metrics").text):
        if family.name == "process_resident_memory_bytes":
            return round(family.samples[0].value / 2**20, 1)
    raise RuntimeError("the daemon reports no process_resident_memory_bytes")


def _server_histogram(client: httpx.Client) -> dict[str, float]:
    from prometheus_client.parser import text_string_to_metric_families

    text = client.get("/metrics").text
    for family in text_string_to_metric_families(text):
        if family.name == "ocpd_registry_discovery_seconds":
            buckets = {
                s.labels["le"]: s.value for s in family.samples if s.name.endswith("_bucket")
            }
            total = buckets.get("+Inf", 0.0)
            return {le: round(v / total, 4) for le, v in buckets.items()} if total else {}
    return {}


Measured = tuple[dict[str, Any], dict[str, Any], dict[str, float], dict[str, float]]


async def _run_daemon(
    env: dict[str, str], args: argparse.Namespace, rng: random.Random
) -> tuple[float, Measured]:
    server = ReadyProcess(
        [sys.executable, "-m", "ocpd", "run", "--component", "registry"],
        env={**os.environ, **env},
        name="ocpd registry",
        startup_timeout=300,
    )
    async with trio.open_nursery() as nursery:
        ready_line = await nursery.start(server.run)
        ready_at = time.perf_counter()
        url = ready_line["listeners"]["registry"]

        def measure() -> Measured:
            with httpx.Client(base_url=url, timeout=30) as client:
                rss_loaded = _rss_mb(client)
                measure_discovery(client, 50, rng)  # warm-up
                discovery = measure_discovery(client, args.queries, rng)
                rss_discovered = _rss_mb(client)
                registration = measure_registration(client, args.registrations, rng)
                memory = {
                    "rss_after_load_mb": rss_loaded,
                    "rss_after_discovery_mb": rss_discovered,
                    "rss_after_registration_mb": _rss_mb(client),
                }
                return discovery, registration, _server_histogram(client), memory

        measured = await trio.to_thread.run_sync(measure)
        nursery.cancel_scope.cancel()
    return ready_at, measured


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--agents", type=int, default=100_000)
    parser.add_argument("--queries", type=int, default=2000)
    parser.add_argument("--registrations", type=int, default=500)
    parser.add_argument("--out", default="bench/results/registry.json")
    args = parser.parse_args(argv)
    rng = random.Random(11)
    with tempfile.TemporaryDirectory() as tmp:
        data = Path(tmp)
        print(f"populating {args.agents} agents ...", flush=True)
        populate_s = populate(data / "ocp_node.db", args.agents)
        env = {
            "OCP_DATA_DIR": str(data),
            "OCP_NETWORK": NETWORK,
            "OCP_REGISTRY_PORT": "0",
            "OCP_RATE_LIMIT_ENABLED": "false",
            "OCP_MAX_AGENTS": str(args.agents + args.registrations + 100),
        }
        started = time.perf_counter()
        ready, measured = trio.run(_run_daemon, env, args, rng)
        load_s = ready - started
        discovery, registration, server, memory = measured
    result = {
        "suite": "registry",
        "timestamp": datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "machine": {
            "python": platform.python_version(),
            "platform": platform.platform(),
            "cpu_count": os.cpu_count(),
        },
        "agents": args.agents,
        "populate_seconds": round(populate_s, 1),
        "start_and_load_seconds": round(load_s, 1),
        "discovery": {**discovery, "target_p99_ms": 10.0},
        "discovery_server_side_cdf": server,
        "registration": {**registration, "target_p99_ms": 20.0},
        "daemon_memory": memory,
    }
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    json.dump(result, sys.stdout, indent=2)
    print()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
