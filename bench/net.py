"""Node-to-node sessions, measured between two real daemons over TLS on this machine.

Node A runs ``--component all`` (its registry serves both nodes); node B runs
``--component node`` with A as its seed peer. Three figures:

* ``handshake_ms``: B's dial to A, from ``handshake/started`` to
  ``capabilities/exchanged`` in B's trace (log timestamps, ms);
* ``reconnect_ms``: B stopped and started again at the same address, from
  B's ``ready`` line to A's ``keepalive/restored`` for B (target <= 2 s);
* ``forwarded_per_s``: the session itself. Messages for an agent on B are
  accepted by A while B is down and held there; B is started again and A
  hands the backlog on over the restored session. From A's
  ``keepalive/restored`` for B to B's log line for the last message it took
  in (verified, stored, receipted), in log timestamps (target >= 2,000
  msg/s);
* ``end_to_end_per_s``: agents on A send to one agent on B over WebSocket;
  every message is taken in by A, crosses the one A-B session, is taken in
  by B and delivered to the receiver's session on B, from the first send to
  the last delivery. Both nodes, both signature helpers and the agents share
  the machine's cores; no target, reported for what it is.

``python -m bench.net --out bench/results/net.json [--messages N]``
"""

from __future__ import annotations

import argparse
import json
import os
import ssl
import sys
import tempfile
import time
from datetime import datetime
from pathlib import Path
from typing import Any, Final

import trio
from conformance.local import write_tls_files
from conformance.process import ReadyProcess

from bench.federation import free_port
from bench.harness import load_average, machine_facts
from bench.node import (
    NETWORK,
    Traffic,
    _children_ticks,
    _machine_busy_ticks,
    _send_all,
    _ticks,
    agents,
    build_batches,
    connect,
    register_many,
    run_traffic,
)
from ocpd.client.websocket import parse_endpoint
from ocpd.identity import init_identity

RECONNECT_TARGET_MS: Final = 2000.0
FORWARD_TARGET: Final = 2000.0
SENDERS: Final = 8
WINDOW: Final = 64


def _events(process: ReadyProcess) -> list[dict[str, Any]]:
    out = []
    for line in list(process.output):
        if line.startswith("{"):
            try:
                out.append(json.loads(line))
            except ValueError:
                continue
    return out


def _stamp(event: dict[str, Any]) -> float:
    return datetime.fromisoformat(event["timestamp"].replace("Z", "+00:00")).timestamp()


#: ``--profile DIR``: each daemon runs under cProfile, writing ``DIR/<name>-<n>.prof``.
PROFILE: dict[str, Path] = {}
PROFILE_RUNS: list[str] = []


class _Daemon(ReadyProcess):
    """A daemon whose log lines for OCP messages taken in over a peer session are counted."""

    peer_accepted: int = 0
    last_peer_accepted: str = ""

    def _take_lines(self, chunk: bytes | bytearray) -> list[str]:
        lines = super()._take_lines(chunk)
        for line in lines:
            if '"transport": "peer"' in line and '"status": "accepted"' in line:
                self.peer_accepted += 1
                self.last_peer_accepted = line
        return lines


def _daemon(workdir: Path, name: str, tls: Any, env: dict[str, str], component: str) -> _Daemon:
    base = {k: v for k, v in os.environ.items() if not k.startswith(("OCP_", "NOTIFY_SOCKET"))}
    base.update(
        {
            "OCP_DATA_DIR": str(workdir / name),
            "OCP_NETWORK": NETWORK,
            "OCP_LOG_FORMAT": "json",
            "OCP_TLS_CERT": str(tls.cert),
            "OCP_TLS_KEY": str(tls.key),
            "OCP_RATE_LIMIT_ENABLED": "false",
            "OCP_PEER_CA_FILE": str(tls.ca),
            "OCP_DELIVERY_CA_FILE": str(tls.ca),
            **env,
        }
    )
    python = [sys.executable]
    if "dir" in PROFILE:
        runs = sum(1 for started in PROFILE_RUNS if started == name)
        PROFILE_RUNS.append(name)
        python += ["-m", "cProfile", "-o", str(PROFILE["dir"] / f"{name}-{runs}.prof")]
    return _Daemon(
        command=[*python, "-m", "ocpd", "run", "--component", component],
        env=base,
        cwd=workdir,
        name=name,
        startup_timeout=60,
        stop_timeout=30,
    )


async def _wait_event(
    process: ReadyProcess, event: str, peer: str, after: float, limit: float = 30.0
) -> dict[str, Any]:
    with trio.fail_after(limit):
        while True:
            for e in _events(process):
                if e.get("event/type") == event and e.get("peer") == peer and _stamp(e) >= after:
                    return e
            await trio.sleep(0.01)


async def _send_only(sessions: list[Any], batches: list[list[str]]) -> None:
    """Each batch on its session until every message has its receipt (accepted)."""
    traffic = Traffic(sum(len(b) for b in batches))
    async with trio.open_nursery() as nursery:
        for session, texts in zip(sessions, batches, strict=True):
            nursery.start_soon(_send_all, session, texts, traffic, WINDOW, None)
    if traffic.accepted != traffic.total:
        raise RuntimeError(f"{traffic.total - traffic.accepted} refused: {traffic.refused}")


async def run_bench(messages: int, workdir: Path) -> dict[str, Any]:
    tls = write_tls_files(workdir / "tls")
    context = ssl.create_default_context(cafile=str(tls.ca))
    a_id = init_identity(workdir / "a", now=time.time()).node_id
    b_id = init_identity(workdir / "b", now=time.time()).node_id
    a_ports = {p: str(free_port()) for p in ("HTTP", "WS", "REGISTRY", "CUSTODIAN")}
    b_ports = {p: str(free_port()) for p in ("HTTP", "WS", "REGISTRY", "CUSTODIAN")}
    a_env = {f"OCP_{p}_PORT": v for p, v in a_ports.items()}
    registry = f"https://127.0.0.1:{a_ports['REGISTRY']}"
    b_env = {
        **{f"OCP_{p}_PORT": v for p, v in b_ports.items()},
        "OCP_REGISTRY_URL": registry,
        "OCP_SEED_PEERS": f"{a_id}@wss://127.0.0.1:{a_ports['WS']}/ocp/v1/peer",
        "OCP_CONFIG": str(workdir / "b.yml"),
    }
    # The registry's CA has no environment variable: it goes in a file.
    (workdir / "b.yml").write_text(f"transport:\n  registry_ca_file: {tls.ca}\n", encoding="utf-8")
    a = _daemon(workdir, "a", tls, a_env, "all")
    result: dict[str, Any] = {}
    async with trio.open_nursery() as nursery:
        await nursery.start(a.run)
        b = _daemon(workdir, "b", tls, b_env, "node")
        b_started = time.time()
        b_scope, run_b = _scoped(b)
        await nursery.start(_start_in, run_b, b)
        restored = await _wait_event(b, "capabilities/exchanged", a_id, b_started)
        started = next(
            e
            for e in _events(b)
            if e.get("event/type") == "handshake/started"
            and e.get("trace/id") == restored["trace/id"]
        )
        result["handshake_ms"] = round((_stamp(restored) - _stamp(started)) * 1000, 1)
        await _wait_event(a, "capabilities/exchanged", b_id, b_started)
        # Restart B where it was; A must restore the session.
        b_scope.cancel()
        await _wait_event(a, "keepalive/lost", b_id, b_started)
        b = _daemon(workdir, "b", tls, b_env, "node")
        b_scope, run_b = _scoped(b)
        ready_at = time.time()
        await nursery.start(_start_in, run_b, b)
        ready = next(e for e in _events(b) if e.get("event") == "ready")
        restored = await _wait_event(a, "keepalive/restored", b_id, ready_at)
        result["reconnect_ms"] = round((_stamp(restored) - _stamp(ready)) * 1000, 1)
        result["reconnect_from_start_ms"] = round((_stamp(restored) - ready_at) * 1000, 1)

        # End to end: agents on A to an agent on B, across the one session.
        senders = agents(SENDERS, b"\x61")
        (receiver,) = agents(1, b"\x62")
        a_ws = f"wss://127.0.0.1:{a_ports['WS']}/ocp/v1/ws"
        b_ws = f"wss://127.0.0.1:{b_ports['WS']}/ocp/v1/ws"
        await register_many(registry, senders, context, a_ws)
        await register_many(registry, [receiver], context, b_ws)
        sessions = [
            await connect(parse_endpoint(a_ws, kind="ws", default_path="/ocp/v1/ws"), s, context)
            for s in senders
        ]
        inbox = await connect(
            parse_endpoint(b_ws, kind="ws", default_path="/ocp/v1/ws"), receiver, context
        )
        warm = build_batches(senders, receiver.agent_id, 400)
        await run_traffic(sessions, inbox, warm, window=WINDOW)
        batches = build_batches(senders, receiver.agent_id, messages)
        pids = {name: _pid(process) for name, process in (("a", a), ("b", b))}
        cpu_before = _cpu(pids)
        traffic, began = await run_traffic(sessions, inbox, batches, window=WINDOW)
        cpu_after = _cpu(pids)
        elapsed = max(traffic.delivered_at.values()) - began
        result["end_to_end_messages"] = messages
        result["end_to_end_seconds"] = round(elapsed, 3)
        result["end_to_end_per_s"] = round(messages / elapsed, 1)
        result["duplicate_deliveries"] = traffic.duplicate_deliveries
        # Where the CPU went: each daemon with its signature helper, this
        # process (the agents' side), and the whole machine (2 cores here).
        spent = {k: cpu_after[k] - cpu_before[k] for k in cpu_before}
        result["end_to_end_cpu_ms_per_message"] = {
            k: round(v * 1000 / messages, 3) for k, v in spent.items() if k != "machine"
        }
        result["end_to_end_busy_cores"] = round(spent["machine"] / elapsed, 2)

        # The session alone: a backlog held on A while B is down, handed on
        # when B is back (its receiver is not connected: B stores each one).
        await inbox.ws.aclose()
        b_scope.cancel()
        down_at = time.time()
        await _wait_event(a, "keepalive/lost", b_id, down_at)
        await _send_only(sessions, build_batches(senders, receiver.agent_id, messages))
        b = _daemon(workdir, "b", tls, b_env, "node")
        b_scope, run_b = _scoped(b)
        ready_at = time.time()
        await nursery.start(_start_in, run_b, b)
        restored = await _wait_event(a, "keepalive/restored", b_id, ready_at)
        pids["b"] = _pid(b)
        cpu_before = _cpu(pids)
        with trio.fail_after(600):
            while b.peer_accepted < messages:  # noqa: ASYNC110 - counted by its output reader
                await trio.sleep(0.05)
        cpu_after = _cpu(pids)
        last = json.loads(b.last_peer_accepted)
        drained = _stamp(last) - _stamp(restored)
        result["forwarded_messages"] = messages
        result["forwarded_seconds"] = round(drained, 3)
        result["forwarded_per_s"] = round(messages / drained, 1)
        spent = {k: cpu_after[k] - cpu_before[k] for k in cpu_before}
        result["forwarded_cpu_ms_per_message"] = {
            k: round(v * 1000 / messages, 3) for k, v in spent.items() if k in ("a", "b")
        }
        for session in sessions:
            await session.ws.aclose()
        b_scope.cancel()
        nursery.cancel_scope.cancel()
    result["targets"] = {
        "reconnect_ms": RECONNECT_TARGET_MS,
        "forwarded_per_s": FORWARD_TARGET,
        "reconnect_met": result["reconnect_ms"] <= RECONNECT_TARGET_MS,
        "forwarded_met": result["forwarded_per_s"] >= FORWARD_TARGET,
    }
    return result


def _pid(process: ReadyProcess) -> int:
    return int(next(e for e in _events(process) if e.get("event") == "ready")["pid"])


def _cpu(pids: dict[str, int]) -> dict[str, float]:
    """CPU seconds so far: each daemon and its helper, this process, the machine."""
    tick = os.sysconf("SC_CLK_TCK")
    out = {
        name: (_ticks(f"/proc/{pid}/stat") + _children_ticks(pid)) / tick
        for name, pid in pids.items()
    }
    out["bench"] = time.process_time()
    out["machine"] = _machine_busy_ticks() / tick
    return out


def _scoped(process: ReadyProcess) -> tuple[trio.CancelScope, Any]:
    scope = trio.CancelScope()

    async def run() -> None:
        with scope:
            await process.run()

    return scope, run


async def _start_in(
    run: Any,
    process: ReadyProcess,
    *,
    task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Run ``run`` (which runs ``process``) and report started once the process is ready."""
    async with trio.open_nursery() as inner:
        inner.start_soon(run)
        with trio.fail_after(60):
            while True:
                if any(e.get("event") == "ready" for e in _events(process)):
                    break
                await trio.sleep(0.01)
        task_status.started()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.net", description=__doc__)
    parser.add_argument("--out", default="bench/results/net.json")
    parser.add_argument("--messages", type=int, default=20_000)
    parser.add_argument(
        "--profile", type=Path, metavar="DIR", help="run the daemons under cProfile (slower)"
    )
    args = parser.parse_args(argv)
    if args.profile is not None:
        args.profile.mkdir(parents=True, exist_ok=True)
        PROFILE["dir"] = args.profile.resolve()
    before = load_average()
    with tempfile.TemporaryDirectory(prefix="ocpd-bench-net-") as tmp:
        result = trio.run(run_bench, args.messages, Path(tmp))
    report = {
        "bench": "net",
        "machine": machine_facts(["trio", "trio-websocket", "cryptography"]),
        "load_before": before,
        "load_after": load_average(),
        "profiled": args.profile is not None,
        "results": result,
    }
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
