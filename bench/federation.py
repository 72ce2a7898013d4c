"""Federation benchmark: how long a new agent record takes to reach every registry.

Run from the repository root (``make bench`` runs it after ``bench.registry``)::

    .venv/bin/python -m bench.federation --out bench/results/federation.json

The requirement measured: *a new record reaches every one of 5 federated
registries within 2 s of registration when peers are up.*

Five registries (``ocpd run --component registry``), each its own process
with its own data directory, run on 127.0.0.1 with TLS from a throwaway
``trustme`` CA (also every registry's ``registry.peer_ca_file``), in
``registry.mode: federated`` with every other registry as a peer (full
mesh). Ports are picked before start, because peers must know each other's
URLs. ``registry.sync_interval_seconds`` is 60 s; a puller's interval
starts again after every pull, and notifications come every fraction of a
second, so every timed pull is one a notification asked for: what is
measured is the push path. The origin notifies each peer
(``POST .../federation/push``), the peer pulls the origin's feed
(``GET .../sync?since=``), verifies and stores.

Before timing, the bench waits until every registry has pulled from every
peer once (so that peers know each other's node ids), then registers one
untimed agent at each registry (so that every push connection is open).

Then N agents, one at a time, each at a registry picked at random, through
the SDK (:class:`ocpd.client.RegistryClient`, a signed record, its DID
document and a D3 ``Authorization`` header). The clock starts when the
registration request is sent. As soon as the origin answers 201, the four
other registries are polled in parallel (``GET /ocp/v1/registry/agents/{id}``,
one keep-alive connection per registry, 10 ms between polls) until each
answers 200; an agent's figure is the time until the *last* of them did.
Registrations do not overlap: the next one starts when the previous agent is
everywhere (or after the give-up limit).

Polling is not free: every miss is a request, a 404 and a log line in a
registry that is busy verifying the same record, on the same CPUs. 10 ms
between polls (``--poll-interval-ms``) keeps that cost small and adds at
most 10 ms to a figure. A cross-check that no poller perturbs: every
registry logs ``agent_registered`` when it stores a record (millisecond
timestamps, one machine, one clock); ``stored_spread_ms`` is the time from
the origin's entry to the last peer's.

A benchmark is not a test: the exit status is 0 whatever the numbers; it is
1 only when a registry cannot be started or the run fails.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import random
import socket
import ssl
import sys
from collections import deque
from datetime import UTC, datetime
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final

import httpx
import trio
from conformance.local import write_tls_files
from conformance.process import ReadyProcess
from prometheus_client.parser import text_string_to_metric_families

from bench.harness import load_average, machine_facts, run_and_report
from ocpd.client import AgentKey, RegistryClient, RegistryError
from ocpd.proto.crypto import SigningKey

if TYPE_CHECKING:
    from conformance.local import TlsFiles

__all__ = ["main", "summarize"]

ROOT: Final = Path(__file__).resolve().parents[1]
NETWORK: Final = "benchnet"
REGISTRIES: Final = 5
AGENTS: Final = 200
TARGET_MS: Final = 2000.0
SYNC_INTERVAL_S: Final = 60.0
POLL_INTERVAL_MS: Final = 10.0
GIVE_UP_S: Final = 10.0
REQUIREMENT: Final = (
    "a new record reaches every one of 5 federated registries within 2 s of registration "
    "when peers are up"
)
API: Final = "/ocp/v1/registry"
CAPABILITIES: Final = [{"id": "cap:nlp:summarization", "name": "Summarization", "version": "1.0"}]
ENDPOINTS: Final = [{"transport": "ocp-ws", "url": "wss://bench.example/ocp/v1/ws", "priority": 1}]
STARTUP_TIMEOUT_S: Final = 60.0
FIRST_SYNC_TIMEOUT_S: Final = 60.0
SHUTDOWN_GRACE_S: Final = 1.0


# --- the registries ---------------------------------------------------------------------------


def free_port() -> int:
    """A port free right now (bound to 0 and released): peers must know URLs before start."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def registry_process(
    workdir: Path, index: int, ports: list[int], tls: TlsFiles, sync_interval: float
) -> ReadyProcess:
    """Registry ``index`` of the mesh: federated, TLS, its own data directory and config."""
    directory = workdir / f"r{index}"
    directory.mkdir(parents=True)
    peers = [f"https://127.0.0.1:{port}" for i, port in enumerate(ports) if i != index]
    config = directory / "ocpd.yml"
    config.write_text(
        # Peers hold idle keep-alive connections to each other, and hypercorn
        # waits for those for the whole grace period at SIGTERM: keep it short.
        f"node:\n  log_format: json\n  shutdown_grace_seconds: {SHUTDOWN_GRACE_S:g}\n"
        "registry:\n"
        "  mode: federated\n"
        f"  sync_interval_seconds: {sync_interval:g}\n"
        f"  peer_ca_file: {tls.ca}\n"
        f"  peers: [{', '.join(peers)}]\n"
        "rate_limiting:\n  enabled: false\n",
        encoding="utf-8",
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith(("OCP_", "NOTIFY_SOCKET"))}
    env.update(
        {
            "OCP_CONFIG": str(config),
            "OCP_DATA_DIR": str(directory / "data"),
            "OCP_NETWORK": NETWORK,
            "OCP_REGISTRY_PORT": str(ports[index]),
            "OCP_TLS_CERT": str(tls.cert),
            "OCP_TLS_KEY": str(tls.key),
        }
    )
    return ReadyProcess(
        command=[sys.executable, "-m", "ocpd", "run", "--component", "registry"],
        env=env,
        cwd=directory,
        name=f"registry r{index}",
        startup_timeout=STARTUP_TIMEOUT_S,
        output=deque(),  # every line: the log cross-check reads them all at the end
    )


async def _metrics(http: httpx.AsyncClient) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    response = await http.get("/metrics")
    response.raise_for_status()
    samples = {}
    for family in text_string_to_metric_families(response.text):
        for sample in family.samples:
            samples[(sample.name, frozenset(sample.labels.items()))] = sample.value
    return samples


async def wait_first_sync(clients: list[httpx.AsyncClient], urls: list[str]) -> float:
    """Until every registry has pulled from every peer once; returns the seconds it took.

    A notification from an unknown sender wakes every puller, so one empty
    push to each registry cuts short the backoff of pulls that failed while
    the later registries were still starting.
    """
    started = trio.current_time()
    for http in clients:
        await http.post(f"{API}/federation/push", json={})
    with trio.fail_after(FIRST_SYNC_TIMEOUT_S):
        for index, http in enumerate(clients):
            expected = {url for i, url in enumerate(urls) if i != index}
            while True:
                synced = {
                    dict(labels)["peer"]
                    for name, labels in await _metrics(http)
                    if name == "ocpd_federation_last_sync_timestamp_seconds"
                }
                if expected <= synced:
                    break
                await trio.sleep(0.1)
    return trio.current_time() - started


async def federation_totals(http: httpx.AsyncClient) -> dict[str, int]:
    """This registry's federation counters, summed over peers (and kinds)."""
    wanted = {
        "ocpd_federation_ingested_total": "ingested",
        "ocpd_federation_rejected_total": "rejected",
        "ocpd_federation_deferred_total": "deferred",
        "ocpd_federation_sync_errors_total": "sync_errors",
        "ocpd_federation_notifications_total": "notifications_received",
    }
    totals = dict.fromkeys(
        [*wanted.values(), "pushes_ok", "pushes_error", "announcements_dropped"], 0.0
    )
    for (name, labels), value in (await _metrics(http)).items():
        if name in wanted:
            totals[wanted[name]] += value
        elif name == "ocpd_federation_pushes_total":
            totals[f"pushes_{dict(labels)['result']}"] += value
        elif name == "ocpd_federation_announcements_dropped":
            totals["announcements_dropped"] = value
    return {k: int(v) for k, v in totals.items()}


# --- one agent ----------------------------------------------------------------------------------


async def wait_resolvable(
    http: httpx.AsyncClient, agent_id: str, interval: float, limit: float
) -> float | None:
    """Poll until ``agent_id`` resolves here: the trio time of the 200, or None after ``limit``."""
    with trio.move_on_after(limit):
        while True:
            response = await http.get(f"{API}/agents/{agent_id}")
            if response.status_code == 200:
                return trio.current_time()
            if response.status_code != 404:
                raise RuntimeError(f"resolution answered HTTP {response.status_code}")
            await trio.sleep(interval)
    return None


async def register_and_track(
    agent: AgentKey,
    origin: int,
    urls: list[str],
    clients: list[httpx.AsyncClient],
    context: ssl.SSLContext,
    args: argparse.Namespace,
) -> dict[str, Any]:
    """Register ``agent`` at registry ``origin``; when each other registry could resolve it."""
    async with RegistryClient(urls[origin], agent, verify=context) as client:
        try:  # opens the connection (and checks the agent is new) before the clock starts
            await client.get_agent(agent.agent_id)
        except RegistryError as exc:
            if exc.status != 404:
                raise
        else:
            raise RuntimeError(f"{agent.agent_id} is registered already")
        record = client.build_record(
            display_name=f"bench {agent.agent_id[-6:]}",
            capabilities=CAPABILITIES,
            domains=["nlp"],
            endpoints=ENDPOINTS,
        )
        started = trio.current_time()
        with trio.fail_after(30):
            await client.register(record)
        acknowledged = trio.current_time()
    arrivals: dict[int, float | None] = {}

    async def track(index: int) -> None:
        arrivals[index] = await wait_resolvable(
            clients[index], agent.agent_id, args.poll_interval_ms / 1000, args.give_up
        )

    async with trio.open_nursery() as nursery:
        for index in range(len(urls)):
            if index != origin:
                nursery.start_soon(track, index)
    per_registry = {
        i: None if at is None else round((at - started) * 1000, 3)
        for i, at in sorted(arrivals.items())
    }
    values = list(per_registry.values())
    return {
        "agent_id": agent.agent_id,
        "origin": origin,
        "register_ms": round((acknowledged - started) * 1000, 3),
        "per_registry_ms": per_registry,
        "last_ms": None if None in values else max(v for v in values if v is not None),
    }


# --- figures ------------------------------------------------------------------------------------


def _rank(ordered: list[float], fraction: float) -> float | None:
    """Nearest-rank percentile of ascending ``ordered``, where ``inf`` is "never arrived"."""
    value = ordered[max(0, math.ceil(fraction * len(ordered)) - 1)]
    return None if math.isinf(value) else round(value, 3)


def summarize(values: list[float | None], target_ms: float) -> dict[str, Any]:
    """p50/p90/p99/max (nearest rank, ms) of ``values``; None is a sample that never arrived.

    A percentile that falls on such a sample is None.
    """
    if not values:
        return {"count": 0}
    ordered = sorted(math.inf if v is None else v for v in values)
    arrived = [v for v in ordered if not math.isinf(v)]
    within = sum(1 for v in arrived if v <= target_ms)
    return {
        "count": len(ordered),
        "p50": _rank(ordered, 0.50),
        "p90": _rank(ordered, 0.90),
        "p99": _rank(ordered, 0.99),
        "max": _rank(ordered, 1.0),
        "min": _rank(ordered, 0.0),
        "mean": round(sum(arrived) / len(arrived), 3) if arrived else None,
        "never_arrived": len(ordered) - len(arrived),
        "within_target": within,
        "fraction_within_target": round(within / len(ordered), 4),
    }


def _stored_times(process: ReadyProcess) -> dict[str, datetime]:
    """When this registry logged ``agent_registered``, first time per agent."""
    stored: dict[str, datetime] = {}
    for line in process.output:
        if '"agent_registered"' not in line:
            continue
        try:
            event = json.loads(line)
        except ValueError:
            continue
        if event.get("event") == "agent_registered" and event["agent_id"] not in stored:
            stored[event["agent_id"]] = datetime.fromisoformat(event["timestamp"])
    return stored


def stored_spreads(
    samples: list[dict[str, Any]], processes: list[ReadyProcess]
) -> list[float | None]:
    """Per agent, ms from the origin's ``agent_registered`` log entry to the last peer's."""
    stored = [_stored_times(p) for p in processes]
    spreads: list[float | None] = []
    for sample in samples:
        agent_id, origin = sample["agent_id"], sample["origin"]
        times = [s.get(agent_id) for s in stored]
        first = times[origin]
        if first is None or any(t is None for t in times):
            spreads.append(None)
            continue
        last = max(t for t in times if t is not None)
        spreads.append(round((last - first).total_seconds() * 1000, 3))
    return spreads


# --- orchestration ------------------------------------------------------------------------------


async def run_bench(args: argparse.Namespace, workdir: Path) -> dict[str, Any]:
    load_before = load_average()
    tls = write_tls_files(workdir / "tls")
    ports = [free_port() for _ in range(args.registries)]
    urls = [f"https://127.0.0.1:{port}" for port in ports]
    processes = [
        registry_process(workdir, i, ports, tls, args.sync_interval) for i in range(args.registries)
    ]
    context = ssl.create_default_context(cafile=str(tls.ca))
    rng = random.Random(args.seed)
    keys = [AgentKey(SigningKey(rng.randbytes(32)), NETWORK) for _ in range(args.agents)]
    warmup = [AgentKey(SigningKey(rng.randbytes(32)), NETWORK) for _ in urls]
    samples: list[dict[str, Any]] = []
    async with trio.open_nursery() as nursery:
        started = trio.current_time()
        for process in processes:
            ready = await nursery.start(process.run)
            assert ready["listeners"]["registry"].rstrip("/") in urls
        start_s = trio.current_time() - started
        clients = [httpx.AsyncClient(base_url=url, verify=context, timeout=10) for url in urls]
        try:
            first_sync_s = await wait_first_sync(clients, urls)
            print(
                f"bench.federation: {len(urls)} registries up in {start_s:.1f} s, "
                f"first pulls done {first_sync_s:.1f} s later",
                flush=True,
            )
            for origin, agent in enumerate(warmup):
                await register_and_track(agent, origin, urls, clients, context, args)
            before = [await federation_totals(http) for http in clients]
            timed = trio.current_time()
            for number, agent in enumerate(keys, 1):
                origin = rng.randrange(len(urls))
                samples.append(
                    await register_and_track(agent, origin, urls, clients, context, args)
                )
                if number % 50 == 0:
                    print(f"  {number}/{len(keys)} agents", flush=True)
            timed_s = trio.current_time() - timed
            after = [await federation_totals(http) for http in clients]
        finally:
            for http in clients:
                await http.aclose()
        nursery.cancel_scope.cancel()
    last = [s["last_ms"] for s in samples]
    each = [v for s in samples for v in s["per_registry_ms"].values()]
    return {
        "suite": "federation",
        "timestamp": datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "requirement": REQUIREMENT,
        "target_ms": args.target_ms,
        "registries": len(urls),
        "agents": len(samples),
        "meets_target": all(v is not None and v <= args.target_ms for v in last),
        "all_registries_ms": summarize(last, args.target_ms),
        "each_registry_ms": summarize(each, args.target_ms),
        "registration_ms": summarize([s["register_ms"] for s in samples], args.target_ms),
        "stored_spread_ms": summarize(stored_spreads(samples, processes), args.target_ms),
        "origins": {f"r{i}": sum(1 for s in samples if s["origin"] == i) for i in range(len(urls))},
        "federation_counters": {
            f"r{i}": {k: a[k] - b[k] for k in a}
            for i, (b, a) in enumerate(zip(before, after, strict=True))
        },
        "durations_s": {
            "start": round(start_s, 2),
            "first_sync": round(first_sync_s, 2),
            "timed": round(timed_s, 2),
        },
        "method": {
            "topology": f"{len(urls)} registry processes, full mesh of peers",
            "transport": "HTTPS (TLS 1.3, trustme CA as registry.peer_ca_file) on 127.0.0.1",
            "sync_interval_seconds": args.sync_interval,
            "path_measured": "push notification, then the peer pulls sync?since= and verifies",
            "registration": "RegistryClient.register at a random registry, one agent at a time",
            "clock_starts": "when the registration request is sent (connection already open)",
            "polling": "GET /ocp/v1/registry/agents/{id} at the other registries in parallel, "
            "one keep-alive connection each, from the 201 until 200",
            "poll_interval_ms": args.poll_interval_ms,
            "give_up_s": args.give_up,
            "percentiles": "nearest rank",
            "all_registries_ms": "per agent: until the last of the other registries resolved it",
            "each_registry_ms": "every (agent, other registry) pair",
            "stored_spread_ms": "per agent: origin's agent_registered log entry to the last "
            "peer's (millisecond log timestamps, no polling involved)",
            "warmup_agents": len(warmup),
            "seed": args.seed,
        },
        "machine": machine_facts(
            ("trio", "httpx", "hypercorn", "quart-trio", "cryptography", "pynacl")
        ),
        "load_average": {"before": load_before, "after": load_average()},
        "last_ms_by_agent": last,
    }


def _print_summary(result: dict[str, Any]) -> None:
    print(f"{'figure':<18} {'p50 ms':>9} {'p99 ms':>9} {'max ms':>9} {'within 2 s':>11}")
    for key in ("all_registries_ms", "each_registry_ms", "stored_spread_ms", "registration_ms"):
        r = result[key]
        row = [r["p50"], r["p99"], r["max"]]
        cells = " ".join(f"{'-' if v is None else f'{v:.1f}':>9}" for v in row)
        print(f"{key:<18} {cells} {r['fraction_within_target']:>11.2%}")
    counters = result["federation_counters"]
    rejected = sum(c["rejected"] for c in counters.values())
    errors = sum(c["pushes_error"] + c["sync_errors"] for c in counters.values())
    print(
        f"target {result['target_ms']:g} ms for every agent at every registry: "
        f"{'met' if result['meets_target'] else 'NOT MET'}; "
        f"rejected {rejected}, push/sync errors {errors}"
    )


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m bench.federation",
        description="Time until a new agent record is resolvable at every federated registry.",
    )
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "federation.json")
    parser.add_argument("--registries", type=int, default=REGISTRIES)
    parser.add_argument("--agents", type=int, default=AGENTS)
    parser.add_argument("--poll-interval-ms", type=float, default=POLL_INTERVAL_MS, metavar="MS")
    parser.add_argument("--give-up", type=float, default=GIVE_UP_S, metavar="S")
    parser.add_argument("--sync-interval", type=float, default=SYNC_INTERVAL_S, metavar="S")
    parser.add_argument("--target-ms", type=float, default=TARGET_MS, metavar="MS")
    parser.add_argument("--seed", type=int, default=17)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.registries < 2:
        raise SystemExit("bench.federation: --registries must be at least 2")
    return run_and_report(
        "bench.federation",
        partial(run_bench, args),
        out=args.out,
        summary=_print_summary,
        errors=(RegistryError, RuntimeError, httpx.HTTPError),
    )


if __name__ == "__main__":
    sys.exit(main())
