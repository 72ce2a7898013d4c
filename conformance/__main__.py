"""``python -m conformance``: run the black-box conformance suite against running components.

Example::

    python -m conformance --node https://127.0.0.1:8420 --registry https://127.0.0.1:8422 \\
        --custodian https://127.0.0.1:8423 --level core --ca-file ca.pem \\
        --report-json conformance/results/report.json --junit conformance/results/junit.xml

For ``--level knowledge`` or ``full`` add ``--anchor-keys FILE`` (keys of trust
anchors of the target registry, see ``conformance/README.md``).

Exit status: 0 when every MUST requirement of the level passed, 1 when one
did not (failed or not tested), 2 for a usage error.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import TYPE_CHECKING, cast
from urllib.parse import urlsplit

import trio

from conformance.collab import TASK_ACCEPT_WINDOW, read_anchor_keys
from conformance.report import format_table, write_json, write_junit
from conformance.requirements import LEVELS
from conformance.suite import SUITE_VERSION, VECTORS_DIR, SuiteConfig, Targets, run_suite

if TYPE_CHECKING:
    from collections.abc import Sequence

    from conformance.requirements import Level

__all__ = ["main"]

EXIT_CONFORMANT = 0
EXIT_NOT_CONFORMANT = 1
EXIT_USAGE = 2


def _base_url(value: str) -> str:
    parts = urlsplit(value)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise argparse.ArgumentTypeError(f"not an http(s) base URL: {value!r}")
    return value.rstrip("/")


def _peer_url(value: str) -> str:
    parts = urlsplit(value)
    if parts.scheme not in ("wss", "ws", "https", "http") or not parts.hostname:
        raise argparse.ArgumentTypeError(f"not a ws(s) or http(s) URL: {value!r}")
    return value


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m conformance",
        description="Black-box OCP conformance suite (ocpd). Runs every requirement of "
        "the level against the given components and reports pass, fail or not_tested.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {SUITE_VERSION}")
    parser.add_argument("--node", required=True, type=_base_url, help="node HTTP base URL")
    parser.add_argument(
        "--node-ws", type=_base_url, help="node WebSocket port base URL (default: --node)"
    )
    parser.add_argument(
        "--node-peer",
        type=_peer_url,
        metavar="URL",
        help="the node's peer endpoint (default: /ocp/v1/peer on --node-ws, else --node)",
    )
    parser.add_argument("--registry", required=True, type=_base_url, help="registry base URL")
    parser.add_argument("--custodian", required=True, type=_base_url, help="custodian base URL")
    parser.add_argument(
        "--level",
        choices=LEVELS,
        default="core",
        help="conformance level to claim (includes the lower ones); default: core",
    )
    parser.add_argument("--report-json", type=Path, metavar="FILE", help="write the JSON report")
    parser.add_argument("--junit", type=Path, metavar="FILE", help="write a JUnit XML report")
    parser.add_argument("--ca-file", type=Path, metavar="PEM", help="CA bundle to verify TLS with")
    parser.add_argument(
        "--insecure",
        action="store_true",
        help="do not verify certificates (the TLS version checks still run)",
    )
    parser.add_argument(
        "--timeout", type=float, default=20.0, metavar="S", help="deadline of one check"
    )
    parser.add_argument(
        "--route-listener",
        choices=("auto", "on", "off"),
        default="auto",
        help="registry-mediated routing check: refuse its messages on a plain HTTP listener "
        "of the suite on 127.0.0.1 (on), use the registry's URL instead (off), or the "
        "listener when the node's URL is a loopback address (auto, the default)",
    )
    parser.add_argument(
        "--vectors", type=Path, metavar="DIR", help="vector directory (default: the bundled one)"
    )
    parser.add_argument(
        "--anchor-keys",
        type=Path,
        action="append",
        default=[],
        metavar="FILE",
        help="keys of trust anchors of the target registry, for the knowledge and full levels: "
        "one unpadded base64url Ed25519 seed per line (# comments), or an `ocpd agent keygen` "
        "key file (repeatable); without enough of them those checks are not_tested",
    )
    parser.add_argument(
        "--task-accept-window",
        type=_seconds,
        default=TASK_ACCEPT_WINDOW,
        metavar="S",
        help="how long a task's receiver has to accept it before the node times it out "
        f"(default: {TASK_ACCEPT_WINDOW:g}, OCP §6.1.3)",
    )
    return parser


def _seconds(value: str) -> float:
    try:
        seconds = float(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number of seconds: {value!r}") from None
    if not 0 < seconds <= 3600:
        raise argparse.ArgumentTypeError(f"not between 0 and 3600 seconds: {value!r}")
    return seconds


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.ca_file is not None and not args.ca_file.is_file():
        print(f"--ca-file: no such file: {args.ca_file}", file=sys.stderr)
        return EXIT_USAGE
    try:
        anchor_keys = read_anchor_keys(args.anchor_keys)
    except ValueError as exc:
        print(f"--anchor-keys: {exc}", file=sys.stderr)
        return EXIT_USAGE
    targets = Targets(
        node=args.node,
        registry=args.registry,
        custodian=args.custodian,
        node_ws=args.node_ws,
        node_peer=args.node_peer,
    )
    config = SuiteConfig(
        targets=targets,
        level=cast("Level", args.level),
        ca_file=args.ca_file,
        insecure=args.insecure,
        check_timeout=args.timeout,
        vectors_dir=args.vectors or VECTORS_DIR,
        route_listener=args.route_listener,
        anchor_keys=anchor_keys,
        task_accept_window=args.task_accept_window,
    )
    report = trio.run(run_suite, config)
    # Files first: a closed stdout must not cost the reports.
    if args.report_json is not None:
        write_json(report, args.report_json)
    if args.junit is not None:
        write_junit(report, args.junit)
    print(format_table(report), end="")
    if args.report_json is not None:
        print(f"JSON report: {args.report_json}")
    if args.junit is not None:
        print(f"JUnit report: {args.junit}")
    return EXIT_CONFORMANT if report.conformant else EXIT_NOT_CONFORMANT


if __name__ == "__main__":
    sys.exit(main())
