"""Throughput of the bare web framework, and of ocpd's ``/health`` relative to it.

Run from the repository root (``make bench`` runs it after ``bench.core``)::

    .venv/bin/python -m bench.framework --out bench/results/framework.json

Two servers are measured one after the other, never at the same time, each in
its own process on 127.0.0.1 over plaintext HTTP/1.1:

- **bare**: a hello-world route (``GET /hello``, 13 bytes of text) on the same
  stack as ocpd (hypercorn's trio worker serving a Quart-Trio app, one
  process, access log off, no ``Server`` header), started as
  ``python -m bench.framework serve-bare``;
- **ocpd**: the real daemon (``ocpd run --component all``, every port 0, a
  temporary data directory, no TLS), ``GET /health`` on the node's HTTP
  port. That request does the real health work: a write probe through the
  group-commit writer, disk and memory checks, request metrics.

The load generator is a third process: ``wrk`` when it is installed (one
thread, keep-alive connections, latency distribution), otherwise a small
trio HTTP/1.1 keep-alive client in this module
(``python -m bench.framework load``) with a bound on both requests and time.
Each target gets a warm-up, then a timed run; ``rps`` counts 2xx responses
only. The headline is ``ratio = ocpd_health_rps / bare_rps``: the share of
the bare framework's throughput that ocpd's health endpoint keeps.

A benchmark is not a test: the exit status is 0 whatever the numbers; it is
1 only when a server cannot be started or the load generator fails.
"""

from __future__ import annotations

import argparse
import json
import logging
import re
import shutil
import signal
import statistics
import sys
from datetime import UTC, datetime
from functools import partial
from pathlib import Path
from typing import Any, Final
from urllib.parse import urlsplit

import trio
from conformance.local import ocpd_process
from conformance.process import ReadyProcess
from hypercorn.trio import serve
from quart import Response
from quart_trio import QuartTrio

from bench.harness import load_average, machine_facts, run_and_report, wrk_version
from ocpd.daemon import Tls13Config

__all__ = ["bare_app", "main", "parse_wrk", "percentiles"]

ROOT: Final = Path(__file__).resolve().parents[1]
BODY: Final = "hello, world\n"
CONNECTIONS: Final = 16
WARMUP_S: Final = 1.0
DURATION_S: Final = 8.0
#: Upper bound of requests per timed run of the Python client (wrk is bounded by time).
MAX_REQUESTS: Final = 200_000
REQUEST_TIMEOUT_S: Final = 5.0

log = logging.getLogger("bench.framework")


# --- the bare server ------------------------------------------------------------------------


def bare_app() -> QuartTrio:
    app = QuartTrio("bench.bare")

    @app.get("/hello")
    async def hello() -> Response:
        return Response(BODY, status=200, content_type="text/plain; charset=utf-8")

    return app


def bare_hypercorn_config(cert: str | None = None, key: str | None = None) -> Tls13Config:
    """Loopback, any free port, and ocpd's settings (``ocpd.daemon._hypercorn_config``),
    with TLS (1.3 at least, as ocpd's listeners) when given a certificate and key."""
    config = Tls13Config()
    config.bind = ["127.0.0.1:0"]
    config.certfile, config.keyfile = cert, key
    config.graceful_timeout = 5.0
    config.accesslog = None
    config.errorlog = logging.getLogger("hypercorn.error")
    config.include_server_header = False
    return config


async def stop_on_signal(stop: trio.Event) -> None:
    with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
        async for _ in signals:
            stop.set()
            return


async def serve_bare() -> None:
    """Serve :func:`bare_app` until SIGTERM; announce the URL as a JSON ``ready`` line."""
    logging.getLogger("hypercorn.error").setLevel(logging.WARNING)
    stop = trio.Event()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(stop_on_signal, stop)
        urls = await nursery.start(
            partial(serve, bare_app(), bare_hypercorn_config(), shutdown_trigger=stop.wait)
        )
        print(json.dumps({"event": "ready", "listeners": {"http": urls[0]}}), flush=True)


# --- the Python load generator --------------------------------------------------------------


class _Budget:
    """Requests left for all connections together (one trio thread: no lock needed)."""

    def __init__(self, total: int) -> None:
        self.left = total

    def take(self) -> bool:
        if self.left <= 0:
            return False
        self.left -= 1
        return True


async def _read_response(stream: trio.abc.Stream, buffer: bytearray) -> int:
    """Read one response with a Content-Length body from ``stream``; its status code.

    ``buffer`` holds bytes already received and keeps what follows the response.
    """
    while (end := buffer.find(b"\r\n\r\n")) < 0:
        chunk = await stream.receive_some(65536)
        if not chunk:
            raise ConnectionError("connection closed in the response head")
        buffer += chunk
    head = bytes(buffer[:end]).decode("latin-1").split("\r\n")
    status = int(head[0].split(" ", 2)[1])
    length = None
    for line in head[1:]:
        name, _, value = line.partition(":")
        if name.strip().lower() == "content-length":
            length = int(value.strip())
    if length is None:
        raise ConnectionError("response without Content-Length")
    total = end + 4 + length
    while len(buffer) < total:
        chunk = await stream.receive_some(65536)
        if not chunk:
            raise ConnectionError("connection closed in the body")
        buffer += chunk
    del buffer[:total]
    return status


async def _connection(
    url: str, deadline: float, budget: _Budget, latencies: list[float], counts: dict[str, int]
) -> None:
    parts = urlsplit(url)
    host, port = parts.hostname or "127.0.0.1", parts.port or 80
    request = (
        f"GET {parts.path or '/'} HTTP/1.1\r\nHost: {parts.netloc}\r\n"
        "User-Agent: bench.framework\r\nAccept: */*\r\n\r\n"
    ).encode("ascii")
    stream: trio.abc.Stream | None = None
    buffer = bytearray()
    try:
        while trio.current_time() < deadline and budget.take():
            try:
                if stream is None:
                    stream = await trio.open_tcp_stream(host, port)
                    buffer.clear()
                started = trio.current_time()
                with trio.fail_after(REQUEST_TIMEOUT_S):
                    await stream.send_all(request)
                    status = await _read_response(stream, buffer)
                latencies.append(trio.current_time() - started)
                counts["ok" if 200 <= status < 300 else "non_2xx"] += 1
            except (OSError, ConnectionError, trio.BrokenResourceError, trio.TooSlowError):
                counts["errors"] += 1
                if stream is not None:
                    await trio.aclose_forcefully(stream)
                stream = None
    finally:
        if stream is not None:
            await trio.aclose_forcefully(stream)


async def python_load(
    url: str, *, connections: int, duration: float, max_requests: int
) -> dict[str, Any]:
    """``connections`` keep-alive connections, until ``duration`` s or ``max_requests``."""
    latencies: list[float] = []
    counts = {"ok": 0, "non_2xx": 0, "errors": 0}
    budget = _Budget(max_requests)
    started = trio.current_time()
    deadline = started + duration
    async with trio.open_nursery() as nursery:
        for _ in range(connections):
            nursery.start_soon(_connection, url, deadline, budget, latencies, counts)
    elapsed = trio.current_time() - started
    p50, p99 = percentiles(latencies)
    return {
        "requests": counts["ok"] + counts["non_2xx"],
        "ok": counts["ok"],
        "non_2xx": counts["non_2xx"],
        "errors": counts["errors"],
        "duration_s": round(elapsed, 3),
        "rps": round(counts["ok"] / elapsed, 1) if elapsed > 0 else 0.0,
        "latency_ms": {"p50": p50, "p99": p99},
    }


def percentiles(samples: list[float]) -> tuple[float | None, float | None]:
    """p50 and p99 of ``samples`` (seconds), in milliseconds."""
    if len(samples) < 2:
        return None, None
    cuts = statistics.quantiles(samples, n=100, method="inclusive")
    return round(cuts[49] * 1000, 3), round(cuts[98] * 1000, 3)


# --- wrk --------------------------------------------------------------------------------------

_UNITS: Final = {"us": 0.001, "ms": 1.0, "s": 1000.0, "m": 60_000.0}


def _to_ms(value: str, unit: str) -> float:
    return round(float(value) * _UNITS[unit], 3)


def parse_wrk(output: str) -> dict[str, Any]:
    """The numbers of one ``wrk --latency`` run."""
    found = re.search(r"(\d+) requests in ([\d.]+)(us|ms|s|m),", output)
    if found is None:
        raise ValueError(f"unexpected wrk output:\n{output}")
    requests = int(found.group(1))
    duration_s = _to_ms(found.group(2), found.group(3)) / 1000
    latency = dict(re.findall(r"^\s+(50|99)(?:\.0+)?%\s+([\d.]+(?:us|ms|s|m))", output, re.M))

    def ms(text: str | None) -> float | None:
        if text is None:
            return None
        number = re.match(r"([\d.]+)(us|ms|s|m)", text)
        return _to_ms(number.group(1), number.group(2)) if number else None

    non_2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", output)
    socket = re.search(
        r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", output
    )
    bad = int(non_2xx.group(1)) if non_2xx else 0
    return {
        "requests": requests,
        "ok": requests - bad,
        "non_2xx": bad,
        "errors": sum(int(n) for n in socket.groups()) if socket else 0,
        "duration_s": round(duration_s, 3),
        "rps": round((requests - bad) / duration_s, 1) if duration_s > 0 else 0.0,
        "latency_ms": {"p50": ms(latency.get("50")), "p99": ms(latency.get("99"))},
    }


async def _run_wrk(wrk: str, url: str, connections: int, duration: float) -> dict[str, Any]:
    command = [wrk, "-t1", f"-c{connections}", f"-d{duration:g}s", "--latency"]
    command += [f"--timeout={REQUEST_TIMEOUT_S:g}s", url]
    with trio.fail_after(duration + 30):
        done = await trio.run_process(command, capture_stdout=True, capture_stderr=True)
    return parse_wrk(done.stdout.decode())


async def _run_python_client(
    url: str, connections: int, duration: float, max_requests: int
) -> dict[str, Any]:
    command = [sys.executable, "-m", "bench.framework", "load", "--url", url]
    command += ["--connections", str(connections), "--duration", f"{duration:g}"]
    command += ["--max-requests", str(max_requests)]
    with trio.fail_after(duration + 30):
        done = await trio.run_process(command, capture_stdout=True, cwd=ROOT)
    result: dict[str, Any] = json.loads(done.stdout)
    return result


# --- orchestration ----------------------------------------------------------------------------


async def _measure(
    server: ReadyProcess, path: str, args: argparse.Namespace, wrk: str | None
) -> dict[str, Any]:
    """Start ``server``, warm it up, load it for the timed run, stop it."""
    async with trio.open_nursery() as nursery:
        ready = await nursery.start(server.run)
        url = ready["listeners"]["http"].rstrip("/") + path
        print(f"  {server.name}: {url}", flush=True)

        async def load(duration: float, max_requests: int) -> dict[str, Any]:
            if wrk is not None:
                return await _run_wrk(wrk, url, args.connections, duration)
            return await _run_python_client(url, args.connections, duration, max_requests)

        await load(args.warmup, args.max_requests)
        result = await load(args.duration, args.max_requests)
        nursery.cancel_scope.cancel()
    result["url_path"] = path
    return result


def _machine(wrk: str | None) -> dict[str, Any]:
    facts = machine_facts(("hypercorn", "quart", "quart-trio", "trio", "h11"))
    return {**facts, "load_generator": wrk or "python trio client (bench.framework load)"}


async def run_bench(args: argparse.Namespace, workdir: Path) -> dict[str, Any]:
    wrk = None if args.client == "python" else shutil.which("wrk")
    if args.client == "wrk" and wrk is None:
        raise SystemExit("bench.framework: --client wrk, but wrk is not installed")
    wrk_name = wrk_version(wrk) if wrk else None
    load_before = load_average()
    print(
        f"bench.framework: {wrk_name or 'python client'}, {args.connections} connections, "
        f"{args.warmup:g} s warm-up + {args.duration:g} s per target",
        flush=True,
    )
    bare = ReadyProcess(
        command=[sys.executable, "-m", "bench.framework", "serve-bare"], cwd=ROOT, name="bare"
    )
    bare_result = await _measure(bare, "/hello", args, wrk)
    ocpd = ocpd_process(workdir / "ocpd", tls=None)
    ocpd_result = await _measure(ocpd, "/health", args, wrk)
    ratio = ocpd_result["rps"] / bare_result["rps"] if bare_result["rps"] else None
    return {
        "suite": "framework",
        "timestamp": datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "bare_rps": bare_result["rps"],
        "ocpd_health_rps": ocpd_result["rps"],
        "ratio": round(ratio, 3) if ratio is not None else None,
        "bare_latency_ms": bare_result["latency_ms"],
        "ocpd_health_latency_ms": ocpd_result["latency_ms"],
        "method": {
            "client": "wrk" if wrk else "python",
            "client_version": wrk_name,
            "connections": args.connections,
            "client_threads": 1,
            "warmup_s": args.warmup,
            "duration_s": args.duration,
            "max_requests": None if wrk else args.max_requests,
            "request_timeout_s": REQUEST_TIMEOUT_S,
            "transport": "plaintext HTTP/1.1 keep-alive on 127.0.0.1",
            "bare": "hypercorn trio worker + Quart-Trio, one process, GET /hello (13 bytes)",
            "ocpd": "ocpd run --component all, ports 0, temporary data dir, GET /health (node)",
            "rps": "2xx responses per second of the timed run",
        },
        "machine": _machine(wrk_name),
        "load_average": {"before": load_before, "after": load_average()},
        "bare": bare_result,
        "ocpd_health": ocpd_result,
    }


def _print_summary(result: dict[str, Any]) -> None:
    rows = [("bare /hello", result["bare"]), ("ocpd /health", result["ocpd_health"])]
    print(f"{'target':<14} {'rps':>10} {'p50 ms':>9} {'p99 ms':>9} {'non-2xx':>8} {'errors':>7}")
    for name, r in rows:
        lat = r["latency_ms"]
        print(
            f"{name:<14} {r['rps']:>10.1f} {lat['p50'] or 0:>9.3f} {lat['p99'] or 0:>9.3f} "
            f"{r['non_2xx']:>8} {r['errors']:>7}"
        )
    print(f"ratio ocpd /health / bare: {result['ratio']}")


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m bench.framework",
        description="Requests per second of the bare hypercorn + Quart-Trio stack and of "
        "ocpd's /health, measured over loopback.",
    )
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "framework.json")
    parser.add_argument("--client", choices=("auto", "wrk", "python"), default="auto")
    parser.add_argument("--connections", type=int, default=CONNECTIONS)
    parser.add_argument("--warmup", type=float, default=WARMUP_S, metavar="S")
    parser.add_argument("--duration", type=float, default=DURATION_S, metavar="S")
    parser.add_argument("--max-requests", type=int, default=MAX_REQUESTS)
    sub = parser.add_subparsers(dest="command")
    sub.add_parser("serve-bare", help="(internal) serve the bare app until SIGTERM")
    load = sub.add_parser("load", help="(internal) the Python load generator; prints JSON")
    load.add_argument("--url", required=True)
    load.add_argument("--connections", type=int, default=CONNECTIONS)
    load.add_argument("--duration", type=float, default=DURATION_S)
    load.add_argument("--max-requests", type=int, default=MAX_REQUESTS)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.command == "serve-bare":
        trio.run(serve_bare)
        return 0
    if args.command == "load":
        load_result = trio.run(
            partial(
                python_load,
                args.url,
                connections=args.connections,
                duration=args.duration,
                max_requests=args.max_requests,
            )
        )
        print(json.dumps(load_result))
        return 0
    return run_and_report(
        "bench.framework",
        partial(run_bench, args),
        out=args.out,
        summary=_print_summary,
    )


if __name__ == "__main__":
    sys.exit(main())
