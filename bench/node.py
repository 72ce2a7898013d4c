"""The transport node under load: HTTPS and WebSocket messages, latency, idle sessions.

Run from the repository root (``make bench`` runs it after ``bench.federation``)::

    .venv/bin/python -m bench.node --out bench/results/node.json

Signed ~1 KB OCPUMF ``knowledge_share`` messages between agents registered at
the daemon's own registry, over TLS 1.3 on 127.0.0.1 (a ``trustme`` CA). One
ocpd process (``ocpd run --component all``, rate limits off with
``OCP_RATE_LIMIT_ENABLED=false``) serves; the load comes from other processes:

1. HTTPS ``POST /ocp/v1/messages`` requests/s through ocpd, and through a bare
   hypercorn + Quart-Trio app (``serve-bare``, TLS 1.3 too) in the same run,
   with the same client (``wrk``, one thread; or ``http-load`` here), the same
   connections and the same requests: each a distinct signed message with its
   own D3 ``Authorization``, all built before the clock starts.
2. WebSocket messages/s: sender agents pipeline frames over their sessions to
   one connected receiving agent, until every receipt (sent once the message
   is durably committed) came back and every message was delivered.
3. Latency agent -> node -> agent over WebSocket at half the rate of 2.
4. Memory per idle authenticated WebSocket session: ``--sessions`` (10,000)
   agents connect to a fresh daemon; ``(VmRSS after - before) / sessions``.

Each figure comes with the CPU time the daemon (all threads, and its event
loop alone), the load generator and the rest of the machine used meanwhile.
``bench/README.md`` describes the method and the JSON. ``--profile DIR`` runs
the daemons under cProfile (figures then not comparable). A benchmark is not
a test: the exit status is 1 only when a server or a run fails.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import platform
import resource
import shutil
import ssl
import statistics
import sys
import time
from datetime import UTC, datetime
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final
from urllib.parse import urlsplit

import httpx
import trio
from conformance.local import write_tls_files
from conformance.process import ReadyProcess
from hypercorn.trio import serve
from quart import Response, request
from quart_trio import QuartTrio

from bench.core import insight_payload
from bench.framework import bare_hypercorn_config, stop_on_signal
from bench.harness import load_average, machine_facts, run_and_report, wrk_version
from ocpd.client import AgentKey, NodeError, RegistryClient, RegistryError
from ocpd.client.session import dumps, open_session
from ocpd.client.websocket import WebSocketClosed, parse_endpoint, tcp_connector
from ocpd.proto.auth import message_post_headers, signed_post_headers
from ocpd.proto.crypto import SigningKey, sha3_256
from ocpd.proto.encoding import format_timestamp
from ocpd.proto.envelope import build_message, sign_message

if TYPE_CHECKING:
    from collections.abc import Iterator, Sequence

    from conformance.local import TlsFiles

    from ocpd.client.session import Session
    from ocpd.client.websocket import Endpoint

__all__ = ["bare_app", "main", "message_text", "summarize_ms"]

ROOT: Final = Path(__file__).resolve().parents[1]
NETWORK: Final = "benchnet"
MESSAGES_PATH: Final = "/ocp/v1/messages"
WS_PATH: Final = "/ocp/v1/ws"
REGISTER_PATH: Final = "/ocp/v1/registry/agents"
#: The bare app's answer: the size and shape of ocpd's 202.
BARE_BODY: Final = '{"status":"accepted","message_id":"msg-00000000-0000-4000-8000-000000000000"}'
CAPABILITIES: Final = [{"id": "cap:nlp:classification", "name": "Classify", "version": "1.0"}]
COMMON: Final = {
    "message_type": "knowledge_share (insight), Ed25519-signed OCPUMF",
    "transport": "TLS 1.3 on 127.0.0.1 (trustme CA)",
    "rate_limiting": "off (OCP_RATE_LIMIT_ENABLED=false)",
    "signature_helper": "its CPU is part of server_cpu_s, and alone in signature_helper_cpu_s",
}

RATIO_TARGET: Final = 0.75
WS_RATE_TARGET: Final = 3000.0
SESSION_KIB_TARGET: Final = 40.0

CONNECTIONS: Final = 16
WARMUP_S: Final = 1.0
DURATION_S: Final = 8.0
HTTP_SENDERS: Final = 4
#: Timed runs of each server, in turn; the reported ratio is their median.
HTTP_ROUNDS: Final = 3
BARE_POOL: Final = 4000
WS_MESSAGES: Final = 15_000
WS_WARMUP_MESSAGES: Final = 1_000
WS_SENDERS: Final = 4
WS_WINDOW: Final = 256
LATENCY_S: Final = 6.0
SESSIONS: Final = 10_000
WARM_SESSIONS: Final = 100
CONNECT_CONCURRENCY: Final = 48
REGISTER_CONCURRENCY: Final = 8
SETTLE_S: Final = 3.0
TRAFFIC_LIMIT_S: Final = 180.0
REQUEST_TIMEOUT_S: Final = 5.0
#: Cores used by other processes during a measure above which a note says so.
BUSY_MACHINE: Final = 0.25
WRK_MARK: Final = "BENCH_NODE "

# Hands out the pre-built requests (NUL-terminated in the file) in order from
# an offset, each once: "stop" ends the thread when they run out (the node
# would refuse a replayed Authorization), "wrap" starts again. ``used`` and
# ``exhausted`` are globals so that done() can read them from the thread.
WRK_SCRIPT: Final = r"""
local requests, offset, count, wrap, threads = {}, 0, 0, false, {}
used, exhausted = 0, false

function setup(thread) table.insert(threads, thread) end

function init(args)
  local file = assert(io.open(args[1], "rb"))
  local data, pos = file:read("*a"), 1
  file:close()
  while true do
    local stop = string.find(data, "\0", pos, true)
    if not stop then break end
    requests[#requests + 1] = string.sub(data, pos, stop - 1)
    pos = stop + 1
  end
  count, offset, wrap = #requests, tonumber(args[2]), args[3] == "wrap"
end

function request()
  local index = offset + used
  used = used + 1
  if index >= count then
    if not wrap then
      exhausted = true
      wrk.thread:stop()
      return requests[count]
    end
    index = index % count
  end
  return requests[index + 1]
end

function done(summary, latency, _)
  local total, out = 0, false
  for _, t in ipairs(threads) do total, out = total + t:get("used"), out or t:get("exhausted") end
  local e = summary.errors
  io.write(string.format('BENCH_NODE {"requests":%d,"duration_us":%d,"status_errors":%d,' ..
    '"socket_errors":%d,"p50_us":%d,"p90_us":%d,"p99_us":%d,"max_us":%d,"used":%d,' ..
    '"exhausted":%s}\n', summary.requests, summary.duration, e.status,
    e.connect + e.read + e.write + e.timeout, latency:percentile(50), latency:percentile(90),
    latency:percentile(99), latency.max, total, tostring(out)))
end
"""


# --- messages -----------------------------------------------------------------------------------


def message_text(sender: AgentKey, receiver: str, *, now: float) -> str:
    """One signed message, as the SDK puts it on the wire."""
    unsigned = build_message(
        sender=sender.agent_id,
        receiver=receiver,
        message_type="knowledge_share",
        payload=insight_payload(sender.agent_id),
        now=now,
        metadata={"language": "en"},
    )
    return dumps(sign_message(unsigned, sender.key))


def _message_id(text: str) -> str:
    start = text.index('"message_id":"') + 14
    return text[start : text.index('"', start)]


def write_request_pool(path: Path, senders: Sequence[AgentKey], receiver: str, count: int) -> int:
    """``count`` distinct signed POSTs with their D3 header, NUL-terminated; mean body size."""
    total = 0
    with path.open("wb") as out:
        for i in range(count):
            sender, now = senders[i % len(senders)], time.time()
            body = message_text(sender, receiver, now=now).encode()
            headers = message_post_headers(
                sender.key,
                agent_id=sender.agent_id,
                path_and_query=MESSAGES_PATH,
                body=body,
                now=now,
            )
            lines = "".join(f"{name}: {value}\r\n" for name, value in headers.items())
            head = (
                f"POST {MESSAGES_PATH} HTTP/1.1\r\nHost: 127.0.0.1\r\n{lines}"
                f"Content-Length: {len(body)}\r\n\r\n"
            )
            out.write(head.encode("ascii") + body + b"\0")
            total += len(body)
    return round(total / count)


def agents(count: int, seed: bytes) -> list[AgentKey]:
    """Deterministic keys: agent ``i`` of a group is the same in every run."""
    keys = (SigningKey(sha3_256(seed + i.to_bytes(4, "big"))) for i in range(count))
    return [AgentKey(key, NETWORK) for key in keys]


# --- the bare server ----------------------------------------------------------------------------


def bare_app() -> QuartTrio:
    app = QuartTrio("bench.node.bare")

    @app.post(MESSAGES_PATH)
    async def accept() -> Response:
        await request.get_data()
        return Response(BARE_BODY, status=202, content_type="application/json")

    return app


async def serve_bare(cert: str, key: str) -> None:
    """Serve :func:`bare_app` with TLS until SIGTERM; announce it as a JSON ``ready`` line."""
    stop = trio.Event()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(stop_on_signal, stop)
        config = bare_hypercorn_config(cert, key)
        urls = await nursery.start(partial(serve, bare_app(), config, shutdown_trigger=stop.wait))
        ready = {"event": "ready", "listeners": {"http": urls[0]}, "pid": os.getpid()}
        print(json.dumps(ready), flush=True)


# --- HTTP load ----------------------------------------------------------------------------------


def _load_result(
    done: int, socket_errors: int, status_errors: int, duration_s: float, used: int, out: bool
) -> dict[str, Any]:
    ok = done - status_errors
    return {
        "requests": done,
        "ok": ok,
        "non_2xx": status_errors,
        "socket_errors": socket_errors,
        "duration_s": round(duration_s, 3),
        "rps": round(ok / duration_s, 1) if duration_s > 0 else 0.0,
        "used": used,
        "exhausted": out,
    }


async def _read_status(stream: trio.abc.Stream, buffer: bytearray) -> int:
    """Read one response (with Content-Length) off ``stream``; its status code."""
    while (end := buffer.find(b"\r\n\r\n")) < 0:
        chunk = await stream.receive_some(65536)
        if not chunk:
            raise ConnectionError("connection closed in the response head")
        buffer += chunk
    head = bytes(buffer[:end]).decode("latin-1").split("\r\n")
    lengths = [v for n, _, v in (h.partition(":") for h in head) if n.lower() == "content-length"]
    total = end + 4 + int(lengths[0] if lengths else 0)
    while len(buffer) < total:
        chunk = await stream.receive_some(65536)
        if not chunk:
            raise ConnectionError("connection closed in the body")
        buffer += chunk
    del buffer[:total]
    return int(head[0].split(" ", 2)[1])


async def python_http_load(args: argparse.Namespace, pool: list[bytes]) -> dict[str, Any]:
    """The client without wrk: keep-alive TLS connections, pre-built requests in order."""
    parts = urlsplit(args.url)
    context = ssl.create_default_context(cafile=args.ca)
    count = {"next": int(args.offset), "done": 0, "socket": 0, "status": 0, "out": 0}
    latencies: list[float] = []
    started = trio.current_time()
    deadline = started + args.duration

    def take() -> bytes | None:
        index = count["next"]
        if index >= len(pool) and args.mode != "wrap":
            count["out"] = 1
            return None
        count["next"] += 1
        return pool[index % len(pool)]

    async def connection() -> None:
        stream: trio.SSLStream[trio.SocketStream] | None = None
        buffer = bytearray()
        while trio.current_time() < deadline and (item := take()) is not None:
            try:
                if stream is None:
                    host, port = parts.hostname or "127.0.0.1", parts.port or 443
                    stream = await trio.open_ssl_over_tcp_stream(host, port, ssl_context=context)
                    buffer.clear()
                sent = trio.current_time()
                with trio.fail_after(REQUEST_TIMEOUT_S):
                    await stream.send_all(item)
                    status = await _read_status(stream, buffer)
                latencies.append((trio.current_time() - sent) * 1000)
                count["done"] += 1
                count["status"] += status >= 400
            except (OSError, ConnectionError, trio.BrokenResourceError, trio.TooSlowError):
                count["socket"] += 1
                if stream is not None:
                    await trio.aclose_forcefully(stream)
                stream = None
        if stream is not None:
            await trio.aclose_forcefully(stream)

    async with trio.open_nursery() as nursery:
        for _ in range(args.connections):
            nursery.start_soon(connection)
    elapsed = trio.current_time() - started
    used, out = count["next"] - args.offset, bool(count["out"])
    result = _load_result(count["done"], count["socket"], count["status"], elapsed, used, out)
    figures = summarize_ms(latencies)
    return {**result, "latency_ms": {k: figures[k] for k in ("p50", "p90", "p99", "max")}}


def _parse_wrk(output: str) -> dict[str, Any]:
    lines = [line for line in output.splitlines() if line.startswith(WRK_MARK)]
    if not lines:
        raise RuntimeError(f"wrk printed no figures:\n{output}")
    raw = json.loads(lines[0][len(WRK_MARK) :])
    result = _load_result(
        raw["requests"],
        raw["socket_errors"],
        raw["status_errors"],
        raw["duration_us"] / 1e6,
        raw["used"],
        raw["exhausted"],
    )
    quantiles = ("p50", "p90", "p99", "max")
    return {**result, "latency_ms": {k: round(raw[f"{k}_us"] / 1000, 3) for k in quantiles}}


async def http_load(
    bench: NodeBench, url: str, pool: Path, pid: int, *, wrap: bool, duration: float, offset: int
) -> dict[str, Any]:
    """One run of the client against ``url``, from ``offset`` in ``pool``, each run its own
    process; its figures with the CPU time the server spent on it."""
    args, mode = bench.args, "wrap" if wrap else "stop"
    if bench.wrk is not None:
        command = [bench.wrk, "-t1", f"-c{args.connections}", f"-d{duration:g}s"]
        command += [f"--timeout={REQUEST_TIMEOUT_S:g}s", "-s", str(bench.script), url]
        command += ["--", str(pool), str(offset), mode]
    else:
        command = [sys.executable, "-m", "bench.node", "http-load", "--url", url, "--ca"]
        command += [str(bench.tls.ca), "--file", str(pool), "--offset", str(offset)]
        command += ["--mode", mode, "--connections", str(args.connections)]
        command += ["--duration", f"{duration:g}"]
    before, watch = resource.getrusage(resource.RUSAGE_CHILDREN), CpuWatch(pid)
    with trio.fail_after(duration + 60):
        done = await trio.run_process(command, capture_stdout=True, cwd=ROOT)
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    output = done.stdout.decode()
    result = _parse_wrk(output) if bench.wrk is not None else json.loads(output)
    client = after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime
    result.update(watch.result(result["ok"], client_cpu_s=client))
    return result


# --- processes ----------------------------------------------------------------------------------


def _ticks(stat: str) -> int:
    fields = Path(stat).read_text().rsplit(")", 1)[1].split()
    return int(fields[11]) + int(fields[12])  # utime + stime


def _machine_busy_ticks() -> int:
    # cpu  user nice system idle iowait irq softirq steal ...
    fields = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    return sum(fields[:3]) + sum(fields[5:8])


def _children_ticks(pid: int) -> int:
    """CPU of the daemon's child processes (its signature helper)."""
    total = 0
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            with contextlib.suppress(OSError, IndexError, ValueError):
                if int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1]) == pid:
                    total += _ticks(str(entry / "stat"))
    return total


class CpuWatch:
    """CPU time while a measure runs: the daemon (all threads; its event-loop thread
    alone), the load generator, and the machine (to see what else ran)."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.started = self._now()

    def _now(self) -> tuple[float, ...]:
        pid = self.pid
        server, loop = _ticks(f"/proc/{pid}/stat"), _ticks(f"/proc/{pid}/task/{pid}/stat")
        helper = _children_ticks(pid)
        return (
            trio.current_time(),
            server + helper,
            loop,
            _machine_busy_ticks(),
            time.process_time(),
            helper,
        )

    def result(self, count: int, *, client_cpu_s: float | None = None) -> dict[str, Any]:
        """Figures since the start; the client is this process unless ``client_cpu_s``."""
        end, tick = self._now(), os.sysconf("SC_CLK_TCK")
        wall = end[0] - self.started[0]
        server, loop, machine, helper = ((end[i] - self.started[i]) / tick for i in (1, 2, 3, 5))
        client = end[4] - self.started[4] if client_cpu_s is None else client_cpu_s
        return {
            "server_cpu_s": round(server, 2),
            "server_event_loop_cpu_s": round(loop, 2),
            "signature_helper_cpu_s": round(helper, 2),
            "server_cpu_us_per_message": round(server / count * 1e6, 1) if count else None,
            "server_event_loop_us_per_message": round(loop / count * 1e6, 1) if count else None,
            "client_cpu_s": round(client, 2),
            "machine_busy_cpu_s": round(machine, 2),
            "other_processes_cpu_cores": round(max(0.0, machine - server - client) / wall, 2),
        }


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise RuntimeError(f"no VmRSS for process {pid}")


def daemon_process(
    workdir: Path,
    tls: TlsFiles,
    *,
    sessions: int,
    name: str,
    profile: Path | None,
    signature_checks: str = "auto",
) -> ReadyProcess:
    """``ocpd run --component all``: TLS, ports 0, rate limits off, room for the sessions."""
    config = workdir / "ocpd.yml"
    config.write_text(
        "node:\n  log_format: json\n  shutdown_grace_seconds: 2\n"
        "transport:\n  websocket:\n"
        f"    max_connections: {sessions + 1000}\n    max_pending_per_ip: {sessions + 1000}\n"
        "rate_limiting:\n  enabled: false\n",
        encoding="utf-8",
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith(("OCP_", "NOTIFY_SOCKET"))}
    env.update(
        {
            "OCP_CONFIG": str(config),
            "OCP_DATA_DIR": str(workdir / "data"),
            "OCP_NETWORK": NETWORK,
            "OCP_TLS_CERT": str(tls.cert),
            "OCP_TLS_KEY": str(tls.key),
            "OCP_RATE_LIMIT_ENABLED": "false",
            "OCP_SIGNATURE_CHECKS": signature_checks,
            **{f"OCP_{port}_PORT": "0" for port in ("HTTP", "WS", "REGISTRY", "CUSTODIAN")},
        }
    )
    python = [sys.executable, *(["-m", "cProfile", "-o", str(profile)] if profile else [])]
    return ReadyProcess(
        command=[*python, "-m", "ocpd", "run", "--component", "all"],
        env=env,
        cwd=workdir,
        name=name,
        startup_timeout=60,
        stop_timeout=30,
    )


async def register_many(
    url: str, keys: Sequence[AgentKey], context: ssl.SSLContext, ws_url: str
) -> None:
    """Many agents over a few keep-alive connections: the request ``RegistryClient.register``
    sends (signed record, DID document, D3 header), without a client per agent."""
    pending = iter(keys)

    async def worker() -> None:
        async with httpx.AsyncClient(base_url=url, verify=context, timeout=30) as http:
            for agent in pending:
                now = time.time()
                record = {
                    "agent_id": agent.agent_id,
                    "display_name": f"idle {agent.agent_id[-6:]}",
                    "version": "1.0.0",
                    "capabilities": CAPABILITIES,
                    "domains": ["nlp"],
                    "endpoints": [{"transport": "ocp-ws", "url": ws_url, "priority": 1}],
                    "status": "active",
                    "registered_at": format_timestamp(now),
                    "ttl": 86_400,
                }
                document = agent.did_document()
                body = dumps({"record": agent.sign(record), "did_document": document}).encode()
                headers = signed_post_headers(
                    agent.key,
                    agent_id=agent.agent_id,
                    path_and_query=REGISTER_PATH,
                    body=body,
                    now=now,
                )
                response = await http.post(REGISTER_PATH, content=body, headers=headers)
                if response.status_code != 201:
                    raise RuntimeError(f"registration: HTTP {response.status_code} {response.text}")

    async with trio.open_nursery() as nursery:
        for _ in range(REGISTER_CONCURRENCY):
            nursery.start_soon(worker)


async def _active_websockets(url: str, context: ssl.SSLContext) -> int | None:
    """The daemon's ``ocp_active_websockets`` gauge."""
    async with httpx.AsyncClient(verify=context, timeout=30) as http:
        response = await http.get(url.rstrip("/") + "/metrics")
    for line in response.text.splitlines():
        if line.startswith("ocp_active_websockets "):
            return int(float(line.split()[1]))
    return None


# --- WebSocket traffic --------------------------------------------------------------------------


class Traffic:
    """One batch of messages: when each was sent and delivered, what the receipts said."""

    def __init__(self, total: int) -> None:
        self.total = total
        self.sent_at: dict[str, float] = {}
        self.delivered_at: dict[str, float] = {}
        self.accepted = 0
        self.refused: list[dict[str, Any]] = []
        self.duplicate_deliveries = 0
        self.foreign_deliveries = 0
        self.last_receipt = 0.0


async def _receive_all(receiver: Session, traffic: Traffic) -> None:
    while len(traffic.delivered_at) < traffic.total:
        text = await receiver.ws.receive()
        now, message_id = trio.current_time(), _message_id(text)
        if message_id not in traffic.sent_at:
            traffic.foreign_deliveries += 1
        elif message_id in traffic.delivered_at:
            traffic.duplicate_deliveries += 1
        else:
            traffic.delivered_at[message_id] = now


async def _send_all(
    session: Session,
    texts: Sequence[str],
    traffic: Traffic,
    window: int,
    schedule: Iterator[float] | None,
) -> None:
    """Send ``texts`` with at most ``window`` unanswered; read the receipts alongside."""
    slots = trio.Semaphore(window)

    async def read_receipts() -> None:
        answered = 0
        while answered < len(texts):
            frame = json.loads(await session.ws.receive())
            if frame.get("frame_type") != "receipt":
                continue
            answered += 1
            traffic.last_receipt = trio.current_time()
            if frame.get("status") == "accepted" and not frame.get("duplicate"):
                traffic.accepted += 1
            elif len(traffic.refused) < 5:
                traffic.refused.append(frame)
            slots.release()

    async with trio.open_nursery() as nursery:
        nursery.start_soon(read_receipts)
        for text in texts:
            await slots.acquire()
            if schedule is not None:
                await trio.sleep_until(next(schedule))
            traffic.sent_at[_message_id(text)] = trio.current_time()
            await session.ws.send(text)


async def run_traffic(
    senders: Sequence[Session],
    receiver: Session,
    batches: Sequence[Sequence[str]],
    *,
    window: int,
    rate: float | None = None,
) -> tuple[Traffic, float]:
    """Each batch on its session (paced at ``rate`` in all, if given) until every message
    is accepted and delivered; the traffic, and the trio time it started."""
    traffic = Traffic(sum(len(b) for b in batches))
    started = trio.current_time()
    with trio.fail_after(TRAFFIC_LIMIT_S):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(_receive_all, receiver, traffic)
            for j, (session, texts) in enumerate(zip(senders, batches, strict=True)):
                # Session j sends messages j, j+k, j+2k... of one evenly spaced series.
                k, n = len(senders), len(texts)
                schedule = (
                    None if rate is None else (started + (i * k + j) / rate for i in range(n))
                )
                nursery.start_soon(_send_all, session, texts, traffic, window, schedule)
    if traffic.accepted != traffic.total:
        raise RuntimeError(f"{traffic.total - traffic.accepted} refused: {traffic.refused}")
    return traffic, started


def build_batches(senders: Sequence[AgentKey], receiver: str, count: int) -> list[list[str]]:
    k = len(senders)
    return [
        [message_text(sender, receiver, now=time.time()) for _ in range(j, count, k)]
        for j, sender in enumerate(senders)
    ]


async def connect(endpoint: Endpoint, agent: AgentKey, context: ssl.SSLContext) -> Session:
    """A session through the SDK: TLS, upgrade with ``ocp.v1``, ``auth_handshake``."""
    return await open_session(
        endpoint,
        agent,
        connect_stream=tcp_connector(context),
        now=time.time,
        connect_limit=30,
        reauth_fraction=0.9,
    )


def summarize_ms(samples: list[float]) -> dict[str, float | None]:
    """p50/p90/p99/max (nearest rank) and mean of millisecond samples."""
    if not samples:
        return dict.fromkeys(("p50", "p90", "p99", "max", "mean"))
    ordered = sorted(samples)

    def rank(fraction: float) -> float:
        return round(ordered[max(0, math.ceil(fraction * len(ordered)) - 1)], 3)

    figures = {f"p{round(f * 100)}": rank(f) for f in (0.5, 0.9, 0.99)}
    return {**figures, "max": round(ordered[-1], 3), "mean": round(statistics.fmean(ordered), 3)}


# --- the measures -------------------------------------------------------------------------------


class NodeBench:
    def __init__(self, args: argparse.Namespace, workdir: Path, wrk: str | None) -> None:
        self.args, self.workdir, self.wrk = args, workdir, wrk
        self.phases = set(args.phases.split(","))
        self.tls = write_tls_files(workdir / "tls")
        self.context = ssl.create_default_context(cafile=str(self.tls.ca))
        self.script = workdir / "requests.lua"
        self.script.write_text(WRK_SCRIPT, encoding="utf-8")
        self.http_senders = agents(HTTP_SENDERS, b"http-sender")
        self.http_sink = agents(1, b"http-sink")[0]
        self.ws_senders = agents(args.ws_senders, b"ws-sender")
        self.ws_receiver = agents(1, b"ws-receiver")[0]
        with_sessions = "sessions" in self.phases
        self.idle = agents(args.sessions + WARM_SESSIONS, b"idle") if with_sessions else []
        self.message_bytes = len(message_text(self.ws_senders[0], self.ws_receiver.agent_id, now=0))
        self.durations: dict[str, float] = {}
        self.notes: list[str] = []

    def _daemon(self, name: str) -> ReadyProcess:
        profile = None
        if self.args.profile is not None:
            self.args.profile.mkdir(parents=True, exist_ok=True)
            profile = self.args.profile.resolve() / f"daemon-{name}.prof"
        data = self.workdir / "ocpd"
        data.mkdir(exist_ok=True)
        return daemon_process(
            data,
            self.tls,
            sessions=self.args.sessions,
            name=f"ocpd {name}",
            profile=profile,
            signature_checks=self.args.signature_checks,
        )

    def _conditions(self, **specific: Any) -> dict[str, Any]:
        python = platform.python_version()
        checks = f"transport.signature_checks: {self.args.signature_checks}"
        return {
            "cpu_count": os.cpu_count(),
            "python": python,
            **COMMON,
            "signature_checks": checks,
            **specific,
        }

    def _phase(self, name: str, started: float) -> None:
        self.durations[name] = round(trio.current_time() - started, 1)

    async def run(self) -> dict[str, Any]:
        measures: dict[str, Any] = {}
        async with trio.open_nursery() as nursery:
            started = trio.current_time()
            ready = await nursery.start(self._daemon("a").run)
            urls, pid = ready["listeners"], int(ready["pid"])
            ws_url = urls["ws"].replace("https://", "wss://") + WS_PATH
            for agent in [*self.http_senders, self.http_sink, *self.ws_senders, self.ws_receiver]:
                async with RegistryClient(urls["registry"], agent, verify=self.context) as client:
                    endpoints = [{"transport": "ocp-ws", "url": ws_url, "priority": 1}]
                    record = client.build_record(
                        display_name="bench",
                        capabilities=CAPABILITIES,
                        domains=["nlp"],
                        endpoints=endpoints,
                    )
                    if (await client.register(record)).get("trust_level", 0) < 1:
                        raise RuntimeError(f"{agent.agent_id} is not Level 1")
            if self.idle:
                print(f"  registering {len(self.idle)} agents for the idle sessions", flush=True)
                await register_many(urls["registry"], self.idle, self.context, ws_url)
            self._phase("start_and_registration", started)
            if "http" in self.phases:
                measures["https_messages"] = await self.measure_http(urls["http"], pid)
            if "ws" in self.phases:
                measures["ws_throughput"], measures["ws_latency"] = await self.measure_ws(
                    urls["ws"], pid
                )
            nursery.cancel_scope.cancel()
        if self.idle:
            async with trio.open_nursery() as nursery:
                ready = await nursery.start(self._daemon("b").run)
                measures["ws_idle_sessions"] = await self.measure_sessions(
                    ready["listeners"], int(ready["pid"])
                )
                nursery.cancel_scope.cancel()
        return measures

    # --- 1. HTTPS ------------------------------------------------------------------------------

    async def measure_http(self, node_url: str, node_pid: int) -> dict[str, Any]:
        """Bare app and ocpd in turn, ``HTTP_ROUNDS`` times each after a warm-up of each:
        drift in the machine's speed (a shared VM's) then falls on both alike."""
        started, sink = trio.current_time(), self.http_sink.agent_id
        bare_pool = self.workdir / "bare.requests"
        body_bytes = write_request_pool(bare_pool, self.http_senders, sink, BARE_POOL)
        cert, key = str(self.tls.cert), str(self.tls.key)
        bare_command = [sys.executable, "-m", "bench.node", "serve-bare", "--cert", cert]
        bare_server = ReadyProcess(command=[*bare_command, "--key", key], cwd=ROOT, name="bare")
        round_s = self.args.duration / 2
        rounds: list[dict[str, Any]] = []
        async with trio.open_nursery() as nursery:
            ready = await nursery.start(bare_server.run)
            bare_url, bare_pid = ready["listeners"]["http"] + MESSAGES_PATH, int(ready["pid"])
            probe = await http_load(
                self, bare_url, bare_pool, bare_pid, wrap=True, duration=self.args.warmup, offset=0
            )
            # Distinct messages enough for the node at 1.3 times the bare rate.
            timed = self.args.warmup + round_s * HTTP_ROUNDS
            count = math.ceil(probe["rps"] * timed * 1.3) + 1000
            node_pool = self.workdir / "node.requests"
            built = trio.current_time()
            await trio.to_thread.run_sync(
                write_request_pool, node_pool, self.http_senders, sink, count
            )
            build_s = round(trio.current_time() - built, 2)
            node_target, offset = node_url + MESSAGES_PATH, 0
            warm = await http_load(
                self,
                node_target,
                node_pool,
                node_pid,
                wrap=False,
                duration=self.args.warmup,
                offset=offset,
            )
            offset += warm["used"]
            for _ in range(HTTP_ROUNDS):
                bare = await http_load(
                    self, bare_url, bare_pool, bare_pid, wrap=True, duration=round_s, offset=0
                )
                node = await http_load(
                    self,
                    node_target,
                    node_pool,
                    node_pid,
                    wrap=False,
                    duration=round_s,
                    offset=offset,
                )
                offset += node["used"]
                if node["exhausted"]:
                    self.notes.append(
                        "https: ocpd used up the pre-built requests; its rps is understated"
                    )
                ratio = round(node["rps"] / bare["rps"], 3) if bare["rps"] else 0.0
                rounds.append({"ratio": ratio, "bare": bare, "ocpd": node})
                print(
                    f"  bare {bare['rps']:.1f}, ocpd {node['rps']:.1f} requests/s: {ratio:.3f}",
                    flush=True,
                )
            nursery.cancel_scope.cancel()
        middle = sorted(rounds, key=lambda r: float(r["ratio"]))[len(rounds) // 2]
        bare, node = middle["bare"], middle["ocpd"]
        ratio = middle["ratio"] if bare["rps"] else None
        self._phase("https", started)
        return {
            "value": node["rps"],
            "unit": "requests/s (2xx) through ocpd",
            "bare_value": bare["rps"],
            "ratio": ratio,
            "target": RATIO_TARGET,
            "target_of": "ratio = ocpd rps / bare rps",
            "met": ratio is not None and ratio >= RATIO_TARGET,
            "conditions": self._conditions(
                message_bytes=body_bytes,
                connections=self.args.connections,
                warmup_s=self.args.warmup,
                rounds=HTTP_ROUNDS,
                round_s=round_s,
                client="wrk, one thread" if self.wrk else "python -m bench.node http-load",
                request="POST /ocp/v1/messages, HTTP/1.1 keep-alive, a distinct signed message "
                f"and D3 Authorization each, from {HTTP_SENDERS} agents in turn to one "
                "registered agent that is not connected (the messages stay queued)",
                bare="hypercorn trio worker + Quart-Trio, one process: the same requests, "
                "body read, a fixed 202 JSON answer of ocpd's size",
                ocpd_requests_built=count,
                ocpd_requests_build_s=build_s,
            ),
            "ocpd": node,
            "bare": bare,
            "rounds": rounds,
        }

    # --- 2 and 3. WebSocket throughput and latency ---------------------------------------------

    async def measure_ws(self, ws_url: str, pid: int) -> tuple[dict[str, Any], dict[str, Any]]:
        started, args = trio.current_time(), self.args
        endpoint = parse_endpoint(ws_url, kind="ws", default_path=WS_PATH)
        receiver_id = self.ws_receiver.agent_id
        receiver = await connect(endpoint, self.ws_receiver, self.context)
        senders = [await connect(endpoint, agent, self.context) for agent in self.ws_senders]
        try:
            warm = build_batches(self.ws_senders, receiver_id, WS_WARMUP_MESSAGES)
            await run_traffic(senders, receiver, warm, window=args.ws_window)
            batches = await trio.to_thread.run_sync(
                build_batches, self.ws_senders, receiver_id, args.ws_messages
            )
            watch = CpuWatch(pid)
            traffic, began = await run_traffic(senders, receiver, batches, window=args.ws_window)
            cpu = watch.result(traffic.total)
            last_delivery = max(traffic.delivered_at.values())
            elapsed = max(traffic.last_receipt, last_delivery) - began
            rate = traffic.total / elapsed
            print(f"  ws: {rate:.1f} messages/s accepted and delivered", flush=True)
            throughput = {
                "value": round(rate, 1),
                "unit": "messages/s, accepted (receipt) and delivered to the receiver",
                "target": WS_RATE_TARGET,
                "met": rate >= WS_RATE_TARGET,
                "accepted_per_s": round(traffic.total / (traffic.last_receipt - began), 1),
                "delivered_per_s": round(traffic.total / (last_delivery - began), 1),
                "messages": traffic.total,
                "duplicate_deliveries": traffic.duplicate_deliveries,
                "foreign_deliveries": traffic.foreign_deliveries,
                **cpu,
                "conditions": self._conditions(
                    message_bytes=self.message_bytes,
                    sender_sessions=len(senders),
                    window_per_session=args.ws_window,
                    receiver_sessions=1,
                    warmup_messages=WS_WARMUP_MESSAGES,
                    duration_s=round(elapsed, 3),
                    timed="from the first frame until every receipt was read and every "
                    "message delivered to the one receiving agent (same node)",
                ),
            }
            latency = await self._latency(senders, receiver, rate / 2, pid)
        finally:
            for session in [receiver, *senders]:
                await session.ws.aclose()
        self._phase("websocket", started)
        return throughput, latency

    async def _latency(
        self, senders: Sequence[Session], receiver: Session, rate: float, pid: int
    ) -> dict[str, Any]:
        count = max(len(senders), round(rate * self.args.latency_seconds))
        batches = await trio.to_thread.run_sync(
            build_batches, self.ws_senders, self.ws_receiver.agent_id, count
        )
        watch = CpuWatch(pid)
        traffic, began = await run_traffic(
            senders, receiver, batches, window=self.args.ws_window, rate=rate
        )
        cpu = watch.result(traffic.total)
        sent = traffic.sent_at
        figures = summarize_ms([(at - sent[i]) * 1000 for i, at in traffic.delivered_at.items()])
        print(f"  latency at {rate:.0f}/s: p50 {figures['p50']}, p99 {figures['p99']} ms")
        return {
            "value": figures,
            "unit": "ms, agent -> node -> agent",
            "target": None,
            "met": None,
            "rate_per_s": round(rate, 1),
            "achieved_send_rate_per_s": round((count - 1) / (max(sent.values()) - began), 1),
            "messages": count,
            **cpu,
            "conditions": self._conditions(
                message_bytes=self.message_bytes,
                rate="half the throughput measured just before, evenly spaced",
                sender_sessions=len(senders),
                duration_s=self.args.latency_seconds,
                clock="one process sends and receives: from just before a frame is written "
                "until the receiving agent has read it",
            ),
        }

    # --- 4. idle sessions --------------------------------------------------------------------

    async def hold_sessions(
        self, keys: Sequence[AgentKey], urls: dict[str, str], *, pid: int | None = None
    ) -> dict[str, Any]:
        """Open a session per key, hold them idle (answering pings); with ``pid``, read its
        memory and CPU time once all are open; then close them all."""
        endpoint = parse_endpoint(urls["ws"], kind="ws", default_path=WS_PATH)
        limiter = trio.CapacityLimiter(self.args.connect_concurrency)
        counts = {"opened": 0, "failed": 0, "dropped": 0}
        found: dict[str, Any] = {"errors": []}
        all_tried = trio.Event()

        async def hold(agent: AgentKey) -> None:
            session: Session | None = None
            try:
                async with limiter:
                    try:
                        session = await connect(endpoint, agent, self.context)
                        counts["opened"] += 1
                    except NodeError as exc:
                        counts["failed"] += 1
                        found["errors"] = [*found["errors"], str(exc)][:5]
                    if counts["opened"] + counts["failed"] == len(keys):
                        all_tried.set()
                while session is not None:  # idle; receive() answers the node's pings
                    await session.ws.receive()
            except WebSocketClosed:
                counts["dropped"] += 1
            finally:
                if session is not None:
                    await session.ws.aclose()

        watch = CpuWatch(pid) if pid is not None else None
        async with trio.open_nursery() as nursery:
            for agent in keys:
                nursery.start_soon(hold, agent)
            await all_tried.wait()
            if watch is not None and pid is not None:
                found["opening"] = watch.result(counts["opened"])
                found["ramp_s"] = trio.current_time() - watch.started[0]
                await trio.sleep(SETTLE_S)
                found["rss_after_kib"] = rss_kib(pid)
                found["active_websockets"] = await _active_websockets(urls["http"], self.context)
                found["dropped_before_measure"] = counts["dropped"]
            nursery.cancel_scope.cancel()
        return {**counts, **found}

    async def measure_sessions(self, urls: dict[str, str], pid: int) -> dict[str, Any]:
        started = trio.current_time()
        warm, idle = self.idle[:WARM_SESSIONS], self.idle[WARM_SESSIONS:]
        # Every code path once (TLS, upgrade, auth, a first-time agent, close), then settle.
        await self.hold_sessions(warm, urls)
        await self._wait_sessions_gone(urls)
        rss_before = rss_kib(pid)
        print(f"  opening {len(idle)} sessions (rss {rss_before} kB)", flush=True)
        held = await self.hold_sessions(idle, urls, pid=pid)
        await self._wait_sessions_gone(urls)
        opened = held["opened"]
        per_session = (held["rss_after_kib"] - rss_before) / opened if opened else None
        if opened < len(idle):
            self.notes.append(f"sessions: {opened} of {len(idle)} opened: {held['errors']}")
        print(f"  sessions: {opened} open, {per_session and round(per_session, 1)} kB each")
        opening = {k.replace("message", "session"): v for k, v in held["opening"].items()}
        self._phase("sessions", started)
        return {
            "value": round(per_session, 2) if per_session is not None else None,
            "unit": "KiB of daemon VmRSS per idle authenticated session",
            "target": SESSION_KIB_TARGET,
            "met": opened == len(idle) and (per_session or math.inf) <= SESSION_KIB_TARGET,
            "sessions": opened,
            "requested": len(idle),
            "failed": held["failed"],
            "errors": held["errors"],
            "dropped_before_measure": held["dropped_before_measure"],
            "active_websockets_gauge": held["active_websockets"],
            "rss_before_kib": rss_before,
            "rss_after_kib": held["rss_after_kib"],
            "rss_after_close_kib": rss_kib(pid),
            "ramp_s": round(held["ramp_s"], 2),
            "sessions_opened_per_s": round(opened / held["ramp_s"], 1) if opened else None,
            "opening": opening,
            "conditions": self._conditions(
                daemon="a fresh ocpd process on the data directory of the other measures",
                agents="one registered agent per session, none seen by this node before",
                warmup=f"{WARM_SESSIONS} sessions opened and closed before 'before'",
                connect_concurrency=self.args.connect_concurrency,
                settle_s=SETTLE_S,
                rss="VmRSS from /proc/<pid>/status, 'after' settle_s after the last opened",
                ping_interval_s=30.0,
                rlimit_nofile=list(resource.getrlimit(resource.RLIMIT_NOFILE)),
                client="this process: SDK open_session per agent, one task per session "
                "reading (answering pings)",
            ),
        }

    async def _wait_sessions_gone(self, urls: dict[str, str]) -> None:
        """Until the daemon counts no WebSocket (at most a minute), then ``SETTLE_S``."""
        with trio.move_on_after(60):
            while True:
                if not await _active_websockets(urls["http"], self.context):
                    break
                await trio.sleep(0.5)
        await trio.sleep(SETTLE_S)


# --- running ------------------------------------------------------------------------------------


def _machine(wrk: str | None) -> dict[str, Any]:
    facts = machine_facts(("trio", "hypercorn", "quart-trio", "wsproto", "h11", "anyio", "pynacl"))
    return {
        **facts,
        "openssl": ssl.OPENSSL_VERSION,
        "http_load_generator": wrk or "python -m bench.node http-load",
    }


async def run_bench(args: argparse.Namespace, workdir: Path) -> dict[str, Any]:
    wrk = None if args.client == "python" else shutil.which("wrk")
    if args.client == "wrk" and wrk is None:
        raise SystemExit("bench.node: --client wrk, but wrk is not installed")
    wrk_name = wrk_version(wrk) if wrk is not None else None
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:  # the daemon inherits it
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    nofile = resource.getrlimit(resource.RLIMIT_NOFILE)
    if nofile[0] < args.sessions + 1000:
        args.sessions = max(0, nofile[0] - 1000)
        print(f"bench.node: RLIMIT_NOFILE {nofile[0]}: {args.sessions} sessions at most")
    load_before = load_average()
    bench = NodeBench(args, workdir, wrk)
    print(
        f"bench.node: {os.cpu_count()} CPUs, messages of {bench.message_bytes} bytes, "
        f"HTTP load from {wrk_name or 'the python client'}",
        flush=True,
    )
    started = trio.current_time()
    measures = await bench.run()
    bench.durations["total"] = round(trio.current_time() - started, 1)
    for name, measure in measures.items():
        parts = [measure, measure.get("ocpd"), measure.get("bare"), measure.get("opening")]
        busy = max((p or {}).get("other_processes_cpu_cores", 0.0) for p in parts)
        if busy > BUSY_MACHINE:
            bench.notes.append(
                f"{name}: other processes used up to {busy} cores meanwhile; "
                "its figures are pessimistic, run again on an idle machine"
            )
    return {
        "suite": "node",
        "timestamp": datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "measures": measures,
        "notes": bench.notes,
        "arrangement": "one ocpd process (ocpd run --component all: registry and node, "
        "SQLite synchronous=FULL in a temporary directory) at a time; HTTP load from a "
        "separate process (wrk); WebSocket clients in the bench process; with 2 cores, "
        "server and client each get about one, shared with the daemon's SQLite thread",
        "registered_agents": 2 + HTTP_SENDERS + args.ws_senders + len(bench.idle),
        "profiled": args.profile is not None,
        "durations_s": bench.durations,
        "machine": _machine(wrk_name),
        "rlimit_nofile": list(nofile),
        "load_average": {"before": load_before, "after": load_average()},
    }


def _print_summary(result: dict[str, Any]) -> None:
    m, rows = result["measures"], []
    if "https_messages" in m:
        h = m["https_messages"]
        value = f"{h['value']:.0f} vs bare {h['bare_value']:.0f} rps: ratio {h['ratio']}"
        rows.append(("HTTPS POST messages", value, ">= 0.75", h["met"]))
    if "ws_throughput" in m:
        w = m["ws_throughput"]
        value = f"{w['value']:.0f} msg/s ({w['server_cpu_us_per_message']:.0f} us CPU/msg)"
        rows.append(("WS accepted+delivered", value, ">= 3000", w["met"]))
    if "ws_latency" in m:
        lat, v = m["ws_latency"], m["ws_latency"]["value"]
        value = f"@{lat['rate_per_s']:.0f}/s p50 {v['p50']} p99 {v['p99']} max {v['max']} ms"
        rows.append(("WS latency", value, "-", None))
    if "ws_idle_sessions" in m:
        s = m["ws_idle_sessions"]
        rows.append(("idle WS sessions", f"{s['value']} KiB x {s['sessions']}", "<= 40", s["met"]))
    print(f"{'measure':<22} {'value':<46} {'target':<8} result")
    for name, value, target, met in rows:
        verdict = {True: "met", False: "NOT MET"}.get(met, "-")
        print(f"{name:<22} {value:<46} {target:<8} {verdict}")
    for note in result["notes"]:
        print(f"note: {note}")


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m bench.node",
        description="Throughput, latency and session memory of ocpd's transport node.",
    )
    add = parser.add_argument
    add("--out", type=Path, default=ROOT / "bench" / "results" / "node.json")
    add("--phases", default="http,ws,sessions", help="any of http,ws,sessions")
    add("--client", choices=("auto", "wrk", "python"), default="auto")
    add("--connections", type=int, default=CONNECTIONS)
    add("--warmup", type=float, default=WARMUP_S, metavar="S")
    add("--duration", type=float, default=DURATION_S, metavar="S")
    add("--ws-messages", type=int, default=WS_MESSAGES)
    add("--ws-senders", type=int, default=WS_SENDERS)
    add("--ws-window", type=int, default=WS_WINDOW)
    add("--latency-seconds", type=float, default=LATENCY_S, metavar="S")
    add("--sessions", type=int, default=SESSIONS)
    add("--connect-concurrency", type=int, default=CONNECT_CONCURRENCY)
    add("--profile", type=Path, default=None, metavar="DIR")
    add("--signature-checks", choices=("auto", "helper", "loop"), default="auto")
    sub = parser.add_subparsers(dest="command")
    bare = sub.add_parser("serve-bare", help="(internal) the bare TLS app, until SIGTERM")
    bare.add_argument("--cert", required=True)
    bare.add_argument("--key", required=True)
    load = sub.add_parser("http-load", help="(internal) the python HTTP client; prints JSON")
    for option in ("--url", "--ca", "--file"):
        load.add_argument(option, required=True)
    load.add_argument("--offset", type=int, default=0)
    load.add_argument("--mode", choices=("wrap", "stop"), default="stop")
    load.add_argument("--connections", type=int, default=CONNECTIONS)
    load.add_argument("--duration", type=float, default=DURATION_S)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.command == "serve-bare":
        trio.run(serve_bare, args.cert, args.key)
        return 0
    if args.command == "http-load":
        pool = Path(args.file).read_bytes().split(b"\0")[:-1]
        print(json.dumps(trio.run(python_http_load, args, pool)))
        return 0
    return run_and_report(
        "bench.node",
        partial(run_bench, args),
        out=args.out,
        summary=_print_summary,
        errors=(RegistryError, NodeError, RuntimeError, httpx.HTTPError),
    )


if __name__ == "__main__":
    sys.exit(main())
