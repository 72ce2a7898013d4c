"""The ``ocpd`` command line.

Every failure an operator can cause (bad configuration, missing identity,
unreadable files) is reported as one line on stderr with exit status 1;
tracebacks are reserved for bugs.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import TYPE_CHECKING

import trio

import ocpd
from ocpd import agent_cli
from ocpd.clock import WallClock
from ocpd.config import COMPONENTS, Config, ConfigError, config_to_yaml, load_config
from ocpd.custodian import cli as custodian_cli
from ocpd.identity import (
    IdentityError,
    import_identity,
    init_identity,
    load_identity,
    write_key_file,
)
from ocpd.proto.crypto import SigningKey
from ocpd.proto.diddoc import build_did_document
from ocpd.proto.encoding import format_timestamp
from ocpd.proto.ids import derive_agent_id
from ocpd.storage import StorageError, backup_database, integrity_check

if TYPE_CHECKING:
    from collections.abc import Sequence

__all__ = ["main"]


class CliError(Exception):
    """A problem the user can fix; printed as one line."""


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="ocpd",
        description="ocpd, the reference node of the OpenCognition Protocol (OCP).",
    )
    parser.add_argument("--version", action="version", version=f"ocpd {ocpd.__version__}")
    parser.add_argument(
        "--config",
        metavar="PATH",
        help="configuration file (default: $OCP_CONFIG, else /etc/ocpd/ocpd.yml if present)",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    run = sub.add_parser("run", help="run the daemon", description="Run ocpd components.")
    run.add_argument(
        "--component",
        choices=(*COMPONENTS, "all"),
        default="all",
        help="which component to run: node (8420/8421), registry (8422), custodian (8423) "
        "or all of them in one process (development); default: all",
    )
    run.add_argument("--config", metavar="PATH", dest="sub_config", help=argparse.SUPPRESS)

    config = sub.add_parser("config", help="check or show the configuration")
    config_sub = config.add_subparsers(dest="config_command", metavar="ACTION", required=True)
    config_sub.add_parser(
        "check", help="validate the effective configuration (exit 1 names the bad key)"
    )
    config_sub.add_parser("show", help="print the effective configuration, secrets masked")

    identity = sub.add_parser("identity", help="the node identity (node:did:key)")
    identity_sub = identity.add_subparsers(dest="identity_command", metavar="ACTION", required=True)
    identity_sub.add_parser("init", help="create the node identity under the data directory")
    show = identity_sub.add_parser(
        "show", help="print the public node-identity.v1 record and the service agent id"
    )
    show.add_argument("--record-only", action="store_true", help="print only the record (export)")
    imp = identity_sub.add_parser(
        "import",
        help="install an exported identity record and its key file into the data directory",
    )
    imp.add_argument("--record", required=True, metavar="FILE", help="node-identity.v1 JSON")
    imp.add_argument("--key", required=True, metavar="FILE", help="the matching key file")
    rotate = identity_sub.add_parser(
        "rotate",
        help="replace the node key: a new node id and service agent id (daemon stopped)",
        description="Generate a new node key, hence a new node id and a new service agent "
        "id, and make it the node identity. The old record and key are kept under "
        "<data_dir>/identity/retired/. Peers, seed directories and agents know the node "
        "by its node id: after rotation they see a new node, and nothing carries over. "
        "Refused while ocpd runs on this data directory: stop it, rotate, start it.",
    )
    rotate.add_argument(
        "--overlap-bundle",
        metavar="FILE",
        help="also write a node-overlap-bundle.v1 linking the old and new node ids, signed "
        "by both keys (a local record: it grants the new id nothing)",
    )
    rotate.add_argument(
        "--yes", action="store_true", help="do not ask for confirmation (required without a TTY)"
    )
    verify = identity_sub.add_parser(
        "verify-overlap",
        help="check a node-overlap-bundle.v1: both signatures and both node ids",
    )
    verify.add_argument("file", metavar="FILE")

    keygen = sub.add_parser(
        "keygen", help="create an agent key file, its did:ocp id and DID document"
    )
    keygen.add_argument("--out", required=True, metavar="PATH", help="key file to write (0600)")
    keygen.add_argument("--network", help="network name (default: node.network)")
    keygen.add_argument(
        "--endpoint", action="append", default=[], metavar="URL", help="service endpoint (repeat)"
    )

    backup = sub.add_parser(
        "backup",
        help="consistent online backup of the databases",
        description="Copy the databases with SQLite's online backup API; safe while ocpd runs. "
        "For one component DEST is a file; for 'all' it is a directory that receives "
        "node.db, registry.db and custodian.db.",
    )
    backup.add_argument("dest", metavar="DEST")
    backup.add_argument("--component", choices=(*COMPONENTS, "all"), default="all")

    health = sub.add_parser(
        "healthcheck",
        help="probe a running component's /health (for container health checks)",
        description="GET /health of a local component; exit 0 when healthy or degraded, "
        "1 otherwise. Uses TLS when transport.tls_cert is configured (the local "
        "certificate is not verified: the probe only ever talks to this host).",
    )
    health.add_argument("--component", choices=COMPONENTS, default=None)
    health.add_argument("--port", type=int, help="port to probe (default: $OCP_HEALTH_PORT)")
    health.add_argument("--timeout", type=float, default=4.0)

    agent_cli.add_parser(sub)
    custodian_cli.add_parser(sub)

    peer = sub.add_parser("peer", help="sessions with other nodes (asks the running daemon)")
    peer_sub = peer.add_subparsers(dest="peer_command", metavar="ACTION", required=True)
    peer_list = peer_sub.add_parser(
        "list", help="sessions, their state and last keepalive; dials under way; known peers"
    )
    peer_list.add_argument("--json", action="store_true", help="print the daemon's answer as JSON")
    signal = peer_sub.add_parser(
        "signal",
        help="send a signal-marker to a connected peer node",
        description="Send a participant-signed signal-marker (NET FR-017) over the session "
        "with NODE-ID; prints the trace id to look for in both nodes' logs.",
    )
    signal.add_argument("node_id", metavar="NODE-ID")
    signal.add_argument(
        "--kind", required=True, help="signal kind, e.g. ops/ping (lowercase path segments)"
    )
    signal.add_argument("--body", help="short text carried in the marker")

    db = sub.add_parser("db", help="database maintenance")
    db_sub = db.add_subparsers(dest="db_command", metavar="ACTION", required=True)
    check = db_sub.add_parser("check", help="run PRAGMA integrity_check on the databases")
    check.add_argument("--component", choices=(*COMPONENTS, "all"), default="all")
    return parser


def _load(args: argparse.Namespace) -> tuple[Config, Path | None]:
    path = getattr(args, "sub_config", None) or args.config
    return load_config(path)


def _databases(config: Config, selection: str) -> dict[str, Path]:
    """Database files of the selection: the ``all`` layout, or one component's.

    A single component's database is looked for in the ``all`` layout first,
    so that ``--component node`` also finds the node database of a data
    directory that ran ``all``.
    """
    from ocpd.daemon import database_path

    chosen = COMPONENTS if selection == "all" else (selection,)
    result = {}
    for component in chosen:
        nested = database_path(config.data_dir, component, "all")
        single = database_path(config.data_dir, component, component)
        result[component] = nested if selection == "all" or nested.exists() else single
    return result


def _cmd_run(args: argparse.Namespace) -> int:
    from ocpd.daemon import run_daemon
    from ocpd.logs import configure_logging

    config, source = _load(args)
    configure_logging(level=config.node.log_level, fmt=config.node.log_format)
    return trio.run(lambda: run_daemon(config, args.component, config_source=source))


def _cmd_config(args: argparse.Namespace) -> int:
    config, source = _load(args)
    if args.config_command == "check":
        where = source if source is not None else "built-in defaults"
        print(f"configuration OK ({where})")
    else:
        sys.stdout.write(config_to_yaml(config))
    return 0


def _cmd_identity(args: argparse.Namespace) -> int:
    if args.identity_command == "verify-overlap":
        return _verify_overlap(Path(args.file))
    config, _ = _load(args)
    if args.identity_command == "rotate":
        return _rotate(config, args)
    if args.identity_command == "init":
        identity = init_identity(config.data_dir, now=WallClock().now())
        print(f"created node identity {identity.node_id}")
        print(f"record: {identity.path}")
        return 0
    if args.identity_command == "import":
        identity = import_identity(config.data_dir, Path(args.record), Path(args.key))
        print(f"imported node identity {identity.node_id}")
        return 0
    identity = load_identity(config.data_dir, require_active=False)
    if args.record_only:
        print(json.dumps(identity.record, indent=2))
        return 0
    print(
        json.dumps(
            {
                "record": identity.record,
                "service_agent_id": identity.service_agent_id(config.node.network),
            },
            indent=2,
        )
    )
    return 0


ROTATE_CONSEQUENCES = (
    "rotating gives this node a new node id and a new service agent id; peers, seed "
    "directories and agents will see a new node, and nothing carries over from the old id"
)
MAX_BUNDLE_BYTES = 65_536


def _rotate(config: Config, args: argparse.Namespace) -> int:
    from ocpd.control import SOCKET_NAME, daemon_listening
    from ocpd.identity import rotate_identity
    from ocpd.proto.overlap import build_overlap_bundle

    socket_path = config.data_dir / SOCKET_NAME
    running = daemon_listening(socket_path)
    if running is None:
        print(
            f"ocpd: warning: cannot check for a running daemon ({socket_path} is too long "
            "for a Unix socket); make sure ocpd is stopped",
            file=sys.stderr,
        )
    elif running:
        raise CliError(
            f"ocpd is running on {config.data_dir} (its control socket {socket_path} "
            "accepts connections); stop it, rotate, then start it again"
        )
    bundle_path = Path(args.overlap_bundle) if args.overlap_bundle else None
    if bundle_path is not None:
        if bundle_path.exists():
            raise CliError(f"{bundle_path} already exists; refusing to overwrite it")
        if not bundle_path.parent.is_dir():
            raise CliError(f"{bundle_path.parent} is not a directory")
    previous = load_identity(config.data_dir, require_active=False)
    _confirm_rotation(args.yes, previous.node_id)
    _retire_sequence(config, previous.node_id)

    clock = WallClock()
    rotation = rotate_identity(config.data_dir, now=clock.now())
    network = config.node.network
    print(f"rotated the node identity of {config.data_dir}")
    print(f"old node id: {rotation.previous.node_id}")
    print(f"new node id: {rotation.current.node_id}")
    print(f"old service agent id: {rotation.previous.service_agent_id(network)}")
    print(f"new service agent id: {rotation.current.service_agent_id(network)}")
    print(f"record: {rotation.current.path}")
    print(f"old record and key kept in: {rotation.retired}")
    if bundle_path is not None:
        bundle = build_overlap_bundle(rotation.previous.key, rotation.current.key, now=clock.now())
        try:
            _write_public(bundle_path, json.dumps(bundle, indent=2) + "\n")
        except OSError as exc:
            raise CliError(
                f"the identity was rotated, but the overlap bundle was not written: {exc}"
            ) from None
        print(f"overlap bundle: {bundle_path} (a local record; it grants the new id nothing)")
    return 0


def _confirm_rotation(yes: bool, node_id: str) -> None:
    if yes:
        return
    if not sys.stdin.isatty():
        raise CliError(f"{ROTATE_CONSEQUENCES}; run again with --yes to rotate {node_id}")
    print(f"{ROTATE_CONSEQUENCES}.", file=sys.stderr)
    answer = input(f"rotate {node_id}? type 'rotate' to go on: ")
    if answer.strip() != "rotate":
        raise CliError("not rotated")


def _retire_sequence(config: Config, node_id: str) -> None:
    """Leave a pre-rotation advertisement counter with ``node_id`` (decision 115)."""
    import sqlite3

    from ocpd.daemon import database_path
    from ocpd.net.adverts import claim_legacy_sequence_txn

    layouts = ("all", "node")  # either layout may hold the node database (decision 36)
    for path in dict.fromkeys(database_path(config.data_dir, "node", s) for s in layouts):
        if not path.exists():
            continue
        try:
            conn = sqlite3.connect(path)
            try:
                with conn:
                    has_meta = conn.execute(
                        "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'ocpd_meta'"
                    ).fetchone()
                    if has_meta:
                        claim_legacy_sequence_txn(conn, node_id)
            finally:
                conn.close()
        except sqlite3.Error as exc:
            raise CliError(f"cannot update {path}: {exc}") from None


def _write_public(path: Path, text: str) -> None:
    """Write a new file that anyone may read: a temporary file, then a rename."""
    import os

    tmp = path.with_name(f".{path.name}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    with os.fdopen(fd, "w", encoding="utf-8") as handle:
        handle.write(text)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(tmp, path)


def _verify_overlap(path: Path) -> int:
    from ocpd.proto.errors import MalformedError, NetError, PayloadTooLarge
    from ocpd.proto.overlap import NO_CONTINUITY, verify_overlap_bundle
    from ocpd.proto.strictjson import loads_strict

    try:
        data = path.read_bytes()
    except OSError as exc:
        raise CliError(f"cannot read {path}: {exc}") from None
    try:
        link = verify_overlap_bundle(loads_strict(data, max_size=MAX_BUNDLE_BYTES))
    except (MalformedError, PayloadTooLarge) as exc:
        raise CliError(f"E_PROTO_INVALID: {path} is not an overlap bundle: {exc.message}") from None
    except NetError as exc:
        raise CliError(f"{exc.code}: {path}: {exc.message}") from None
    print(f"overlap bundle OK, made {format_timestamp(link.created_at)}")
    print(f"predecessor: {link.predecessor}")
    print(f"successor: {link.successor}")
    print(f"({NO_CONTINUITY})")
    return 0


def _cmd_keygen(args: argparse.Namespace) -> int:
    config, _ = _load(args)
    network = args.network or config.node.network
    out = Path(args.out)
    if out.exists():
        raise CliError(f"{out} already exists; refusing to overwrite a key")
    key = SigningKey.generate()
    try:
        agent_id = derive_agent_id(key.public_key, network)
    except ValueError as exc:
        raise CliError(f"--network: {exc}") from None
    document = build_did_document(key.public_key, network=network, service_endpoints=args.endpoint)
    write_key_file(out, key, extra={"agent_id": agent_id})
    print(
        json.dumps({"agent_id": agent_id, "key_file": str(out), "did_document": document}, indent=2)
    )
    return 0


def _cmd_backup(args: argparse.Namespace) -> int:
    config, _ = _load(args)
    sources = _databases(config, args.component)
    dest = Path(args.dest)
    if args.component == "all":
        dest.mkdir(parents=True, exist_ok=True, mode=0o700)
        targets = {c: dest / f"{c}.db" for c in sources}
    else:
        targets = {args.component: dest}
    for component, source in sources.items():
        if not source.exists():
            if args.component == "all":
                continue
            raise CliError(f"no {component} database at {source}")
        backup_database(source, targets[component])
        if component == "registry":
            _new_feed_epoch(targets[component])
        status = integrity_check(targets[component])
        if status != ["ok"]:
            raise CliError(f"backup of {component} failed its integrity check: {status[0]}")
        print(f"{component}: {source} -> {targets[component]}")
    return 0


def _new_feed_epoch(path: Path) -> None:
    """Give a registry backup its own feed epoch.

    Restored, the copy numbers new changes from its own position, which its
    federation peers' cursors may have passed; a new epoch tells them to read
    its feed again from the start (decision 56).
    """
    import sqlite3

    from ocpd.registry.tables import new_feed_epoch_txn

    conn = sqlite3.connect(path)
    try:
        with conn:
            new_feed_epoch_txn(conn)
    finally:
        conn.close()


def _cmd_db(args: argparse.Namespace) -> int:
    config, _ = _load(args)
    failures = 0
    found = 0
    for component, path in _databases(config, args.component).items():
        if not path.exists():
            continue
        found += 1
        rows = integrity_check(path)
        print(f"{component}: {path}: {'ok' if rows == ['ok'] else '; '.join(rows[:5])}")
        failures += rows != ["ok"]
    if not found:
        raise CliError(f"no database found under {config.data_dir}")
    return 1 if failures else 0


def _cmd_peer(args: argparse.Namespace) -> int:
    from ocpd.control import SOCKET_NAME, ControlError, call

    config, _ = _load(args)
    path = config.data_dir / SOCKET_NAME
    try:
        if args.peer_command == "signal":
            sent = call(path, "peer.signal", node_id=args.node_id, kind=args.kind, body=args.body)
            print(f"sent {sent['marker/id']} (trace {sent['trace/id']})")
            return 0
        result = call(path, "peer.list")
    except ControlError as exc:
        raise CliError(f"{exc.code}: {exc.message}") from None
    if args.json:
        print(json.dumps(result, indent=2))
        return 0
    print(f"this node: {result['node_id']}")
    sessions = result["sessions"]
    if not sessions:
        print("no sessions")
    for s in sessions:
        keepalive = s["last_keepalive"]
        last = format_timestamp(keepalive) if keepalive is not None else "none yet"
        label = f" ({s['label']})" if s.get("label") else ""
        print(
            f"{s['node_id']}{label}  {s['state']}  {s['direction']}  {s['address']}  "
            f"since {format_timestamp(s['established_at'])}  last keepalive {last}"
        )
    for d in result["dialling"]:
        print(f"{d['node_id']}  dialling  {d['url']}")
    connected = {s["node_id"] for s in sessions} | {d["node_id"] for d in result["dialling"]}
    for k in result["known"]:
        if k["node_id"] not in connected:
            label = f" ({k['label']})" if k.get("label") else ""
            print(f"{k['node_id']}{label}  not connected  {', '.join(k['urls'])}")
    return 0


def _cmd_custodian(args: argparse.Namespace) -> int:
    # keygen reads no configuration: it makes the very file custodian.key_file may name.
    return custodian_cli.run(args, lambda: _load(args)[0])


def _cmd_healthcheck(args: argparse.Namespace) -> int:
    import os
    import ssl
    import urllib.error
    import urllib.request

    config, _ = _load(args)
    port = args.port
    if port is None and args.component is not None:
        port = next(iter(config.ports(args.component).values()))
    if port is None:
        env_port = os.environ.get("OCP_HEALTH_PORT", "")
        port = int(env_port) if env_port.isdigit() else config.transport.http_port
    host = config.node.host if config.node.host not in {"0.0.0.0", "::"} else "127.0.0.1"  # noqa: S104
    scheme = "https" if config.tls_enabled else "http"
    url = f"{scheme}://{'[' + host + ']' if ':' in host else host}:{port}/health"
    context = None
    if config.tls_enabled:
        context = ssl.create_default_context()
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    try:
        with urllib.request.urlopen(url, timeout=args.timeout, context=context) as response:  # noqa: S310
            body = json.loads(response.read())
    except urllib.error.HTTPError as exc:
        print(f"unhealthy: HTTP {exc.code} from {url}")
        return 1
    except (OSError, ValueError) as exc:
        print(f"unreachable: {url}: {exc}")
        return 1
    print(f"{body.get('status')}: {body.get('component')} at {url}")
    return 0 if body.get("status") in {"healthy", "degraded"} else 1


def main(argv: Sequence[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 2
    handlers = {
        "run": _cmd_run,
        "config": _cmd_config,
        "identity": _cmd_identity,
        "keygen": _cmd_keygen,
        "backup": _cmd_backup,
        "db": _cmd_db,
        "healthcheck": _cmd_healthcheck,
        "agent": agent_cli.run,
        "peer": _cmd_peer,
        "custodian": _cmd_custodian,
    }
    try:
        return handlers[args.command](args)
    except ConfigError as exc:
        print(f"ocpd: configuration error: {exc}", file=sys.stderr)
        return 1
    except (IdentityError, StorageError, CliError) as exc:
        print(f"ocpd: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
