"""``ocpd custodian …``: the custodian operator's commands.

``keygen`` writes a new database key file; ``requests``, ``approve`` and
``reject`` ask the running daemon over its control socket.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ocpd.custodian.store import DatabaseKey
from ocpd.proto.encoding import format_timestamp

if TYPE_CHECKING:
    import argparse
    from collections.abc import Callable

    from ocpd.config import Config

__all__ = ["add_parser", "run"]


def add_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    custodian = sub.add_parser(
        "custodian",
        help="the recovery custodian: database key and operator approvals",
        description="Operator commands of the recovery custodian. 'requests', 'approve' "
        "and 'reject' ask the running daemon (on this data directory).",
    )
    actions = custodian.add_subparsers(dest="custodian_command", metavar="ACTION", required=True)
    keygen = actions.add_parser(
        "keygen",
        help="write a new database key file (mode 0600) for custodian.key_file",
        description="Write 32 random bytes, base64url, to a new file of mode 0600. Point "
        "OCP_CUSTODIAN_KEY_FILE (or custodian.key_file) at it, or load it as a Docker or "
        "systemd secret. Losing it loses every share the custodian holds.",
    )
    keygen.add_argument("path", metavar="PATH")
    requests = actions.add_parser(
        "requests",
        help="recovery requests waiting for approval (and approved ones not yet collected)",
    )
    requests.add_argument(
        "--all", action="store_true", help="also answered, rejected and expired requests"
    )
    requests.add_argument("--json", action="store_true", help="print the daemon's answer as JSON")
    for name, verb in (("approve", "approve"), ("reject", "reject")):
        action = actions.add_parser(
            name,
            help=f"{verb} a pending recovery request, once its requester is verified out of band",
        )
        action.add_argument("request_id", metavar="ID")


def run(args: argparse.Namespace, load_config: Callable[[], Config]) -> int:
    from ocpd.cli import CliError
    from ocpd.control import SOCKET_NAME, ControlError, call

    if args.custodian_command == "keygen":
        path = Path(args.path)
        if path.exists():
            raise CliError(f"{path} already exists; refusing to overwrite a key")
        try:
            DatabaseKey.generate().write(path)
        except OSError as exc:
            raise CliError(f"cannot write {path}: {exc.strerror}") from None
        print(f"wrote {path} (mode 0600); set OCP_CUSTODIAN_KEY_FILE={path.resolve()}")
        return 0
    socket = load_config().data_dir / SOCKET_NAME
    try:
        if args.custodian_command == "requests":
            result = call(socket, "custodian.requests", all=args.all)
        else:
            result = call(socket, f"custodian.{args.custodian_command}", request_id=args.request_id)
    except ControlError as exc:
        raise CliError(f"{exc.code}: {exc.message}") from None
    if args.custodian_command != "requests":
        print(f"{result['request_id']}: {result['status']} ({result['agent_id']})")
        return 0
    if args.json:
        print(json.dumps(result, indent=2))
        return 0
    rows = result["requests"]
    if not rows:
        print("no requests" if args.all else "no requests waiting")
    for row in rows:
        print(_describe(row))
    return 0


def _describe(row: dict[str, Any]) -> str:
    return (
        f"{row['request_id']}  {row['status']}  {row['agent_id']}  key {row['fingerprint']}  "
        f"ephemeral {row['ephemeral_public_key']}  received {format_timestamp(row['received_at'])}"
        f"  from {row['remote'] or '?'}"
    )
