"""``ocpd agent recovery …``: an agent's key over custodians, from a shell.

* ``split``   deposit one share of the agent's key with each custodian and
  write the receipts to a manifest file (no secret in it);
* ``recover`` ask the manifest's custodians for their shares, rebuild the key
  and write it to a new key file; proved by the recovery key, or approved
  by each custodian's operator;
* ``rotate``  right after a recovery: a new key in a new key file, the old
  one revoked in the DID document, the old shares revoked, new shares
  deposited and a new manifest written.

Every file this writes is new (mode 0600): nothing is overwritten, and a
key file is on disk before the key is put to use. Output is one JSON object
on stdout; a failure is one line on stderr and exit status 1 (with whatever
was done, such as a manifest of the deposits that went through, still
written and printed).
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import TYPE_CHECKING

import trio

from ocpd.agent_cli import (
    _add_key,
    _add_registry,
    _add_tls,
    _fail,
    _load_agent,
    _print,
    _registry,
    _verify,
)
from ocpd.client import AgentKey
from ocpd.client.custodian import CustodianClient
from ocpd.client.recovery import (
    DistributionIncomplete,
    Manifest,
    ManifestError,
    distribute_shares,
    recover_key_from,
    rotate_after_recovery,
)
from ocpd.identity import read_key_file
from ocpd.proto.crypto import SigningKey
from ocpd.proto.diddoc import parse_did_document
from ocpd.proto.errors import OcpError
from ocpd.proto.ids import key_fingerprint, parse_agent_id
from ocpd.proto.recovery import RecoveryFailed

if TYPE_CHECKING:
    import argparse
    from collections.abc import Sequence


__all__ = ["add_parser", "run"]

DAY = 86_400.0


def add_parser(actions: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add ``recovery`` and its steps to ``ocpd agent``."""
    recovery = actions.add_parser(
        "recovery",
        help="split the agent's key over custodians, recover it, rotate it",
        description="Key recovery with t of n custodians (see docs/recovery.md).",
    )
    steps = recovery.add_subparsers(dest="recovery_command", metavar="STEP", required=True)

    split = steps.add_parser(
        "split", help="deposit one share of the key with each custodian; write a manifest"
    )
    _add_key(split)
    _add_tls(split)
    _add_custodians(split, required=True, what="custodian to deposit a share with")
    split.add_argument(
        "--threshold", type=int, required=True, help="shares needed to recover (≥ 2)"
    )
    split.add_argument(
        "--recovery-key",
        required=True,
        metavar="PATH",
        help="the recovery key file; its public half is deposited with each share",
    )
    split.add_argument("--manifest", required=True, metavar="PATH", help="manifest to write")
    split.add_argument(
        "--expires-in-days",
        type=float,
        default=None,
        metavar="DAYS",
        help="ask the custodians to keep the shares this long (default: theirs, 90 days)",
    )

    recover = steps.add_parser("recover", help="rebuild the key from the manifest's custodians")
    recover.add_argument("--manifest", required=True, metavar="PATH")
    recover.add_argument(
        "--recovery-key",
        default=None,
        metavar="PATH",
        help="prove the requests with the recovery key; without it each custodian's "
        "operator must approve the request",
    )
    recover.add_argument(
        "--wait-approval",
        type=float,
        default=3600.0,
        metavar="SECONDS",
        help="without --recovery-key: how long to wait for the operators (default 3600)",
    )
    recover.add_argument(
        "--poll", type=float, default=5.0, metavar="SECONDS", help="ask again this often"
    )
    recover.add_argument(
        "--out", required=True, metavar="PATH", help="key file to write the recovered key to"
    )
    _add_tls(recover)

    rotate = steps.add_parser(
        "rotate",
        help="replace a recovered key: DID update, old shares revoked, new shares deposited",
    )
    _add_key(rotate)
    _add_registry(rotate, required=True)
    _add_tls(rotate)
    rotate.add_argument(
        "--manifest", required=True, metavar="PATH", help="the manifest of the recovered key"
    )
    rotate.add_argument("--out", required=True, metavar="PATH", help="key file for the new key")
    rotate.add_argument(
        "--new-manifest", required=True, metavar="PATH", help="manifest for the new shares"
    )
    _add_custodians(
        rotate, required=False, what="custodian for the new shares (default: the manifest's)"
    )
    rotate.add_argument(
        "--threshold", type=int, default=None, help="default: the manifest's threshold"
    )
    rotate.add_argument(
        "--recovery-key",
        default=None,
        metavar="PATH",
        help="a recovery key for the new shares (default: the manifest's)",
    )


def _add_custodians(parser: argparse.ArgumentParser, *, required: bool, what: str) -> None:
    parser.add_argument(
        "--custodian",
        action="append",
        default=[],
        required=required,
        metavar="URL[=AGENT_ID]",
        help=f"{what}, e.g. https://host:8423; with =AGENT_ID, only that custodian (repeat)",
    )


# --- helpers ----------------------------------------------------------------------------


def _custodian_clients(args: argparse.Namespace, specs: Sequence[str]) -> list[CustodianClient]:
    """Clients for ``URL[=AGENT_ID]`` specs, pinned to the agent ids given."""
    verify = _verify(args)
    pinned: list[tuple[str, str | None]] = []
    for spec in specs:
        url, _, agent_id = spec.partition("=")
        if not url.startswith(("https://", "http://")):
            _fail(f"--custodian {spec}: give the custodian's https:// URL")
        if agent_id:
            try:
                parse_agent_id(agent_id)
            except OcpError as exc:
                _fail(f"--custodian {spec}: {exc.message}")
        pinned.append((url, agent_id or None))
    if len({url.rstrip("/") for url, _ in pinned}) != len(pinned):
        _fail("a custodian is named twice; each may hold one share of a key")
    return [CustodianClient(url, agent_id=agent_id, verify=verify) for url, agent_id in pinned]


async def _close(clients: Sequence[CustodianClient]) -> None:
    for client in clients:
        await client.aclose()


def _recovery_public_key(path: str) -> bytes:
    return read_key_file(Path(path)).public_key


def _new_file(path: str, what: str) -> Path:
    target = Path(path)
    if target.exists():
        _fail(f"{what} {target} already exists; refusing to overwrite it")
    if not target.parent.is_dir():
        _fail(f"{what} {target}: the directory {target.parent} does not exist")
    return target


def _listed(failures: dict[str, str]) -> str:
    return "; ".join(f"{url}: {why}" for url, why in sorted(failures.items()))


def _warn(text: str) -> None:
    print(f"ocpd agent recovery: {text}", file=sys.stderr, flush=True)


def _load_manifest(path: str) -> Manifest:
    try:
        return Manifest.load(path)
    except ManifestError as exc:
        _fail(str(exc))


# --- steps ------------------------------------------------------------------------------


async def _split(args: argparse.Namespace) -> int:
    agent = _load_agent(args)
    manifest_path = _new_file(args.manifest, "manifest")
    recovery_public_key = _recovery_public_key(args.recovery_key)
    expires_at = None
    if args.expires_in_days is not None:
        if args.expires_in_days <= 0:
            _fail("--expires-in-days must be more than 0")
        expires_at = agent.now() + args.expires_in_days * DAY
    clients = _custodian_clients(args, args.custodian)
    failures: dict[str, str] = {}
    try:
        deposits = await distribute_shares(
            agent,
            clients,
            threshold=args.threshold,
            recovery_public_key=recovery_public_key,
            expires_at=expires_at,
        )
    except DistributionIncomplete as exc:
        deposits, failures = exc.deposits, exc.failures
    finally:
        await _close(clients)
    manifest = Manifest.of(
        agent,
        deposits,
        threshold=args.threshold,
        total_shares=len(clients),
        recovery_public_key=recovery_public_key,
    )
    manifest.save(manifest_path)
    _print({"manifest": str(manifest_path), **manifest.to_json()})
    if failures:
        _fail(
            f"{len(failures)} of {len(clients)} deposits failed ({_listed(failures)}); "
            f"{manifest_path} lists the {len(deposits)} that went through, and "
            f"{args.threshold} are needed to recover"
        )
    return 0


def _show_pending(url: str, approval_id: str, ephemeral_public_key: str) -> None:
    _warn(
        f"{url} waits for its operator: ask them to run `ocpd custodian approve "
        f"{approval_id}` after checking that the request's ephemeral key is "
        f"{ephemeral_public_key}"
    )


async def _recover(args: argparse.Namespace) -> int:
    manifest = _load_manifest(args.manifest)
    out = _new_file(args.out, "key file")
    network, _ = parse_agent_id(manifest.agent_id)
    recovery_key = read_key_file(Path(args.recovery_key)) if args.recovery_key else None
    if len(manifest.deposits) < manifest.threshold:
        _fail(
            f"the manifest lists {len(manifest.deposits)} custodians and {manifest.threshold} "
            "shares are needed"
        )
    clients = manifest.clients(verify=_verify(args))
    try:
        recovered = await recover_key_from(
            clients,
            agent_id=manifest.agent_id,
            fingerprint=manifest.fingerprint,
            threshold=manifest.threshold,
            recovery_key=recovery_key,
            recovery_key_id=manifest.recovery_key_id,
            now=AgentKey.now(),
            on_pending=_show_pending,
            approval_timeout=max(args.wait_approval, 0.0),
            poll_interval=max(args.poll, 0.1),
        )
    except RecoveryFailed as exc:
        failures = exc.details.get("failures")
        listed = f" ({_listed(failures)})" if isinstance(failures, dict) and failures else ""
        _fail(exc.message + listed)
    finally:
        await _close(clients)
    AgentKey(recovered.key, network, agent_id=manifest.agent_id).save(out)
    if recovered.disagreeing:
        _warn(
            "these custodians returned a share that does not belong to the key, check them: "
            + ", ".join(recovered.disagreeing)
        )
    _print(
        {
            "agent_id": manifest.agent_id,
            "key_fingerprint": manifest.fingerprint,
            "key_file": str(out),
            "answered": recovered.answered,
            "disagreeing": list(recovered.disagreeing),
            "failures": recovered.failures,
        }
    )
    return 0


async def _rotate(args: argparse.Namespace) -> int:
    old = _load_agent(args)
    manifest = _load_manifest(args.manifest)
    if old.agent_id != manifest.agent_id:
        _fail(f"the key file is {old.agent_id}'s, the manifest {manifest.agent_id}'s")
    if key_fingerprint(old.key.public_key) != manifest.fingerprint:
        _fail("the key file holds another key than the one the manifest's shares are of")
    out = _new_file(args.out, "key file")
    new_manifest_path = _new_file(args.new_manifest, "manifest")
    threshold = args.threshold or manifest.threshold
    recovery_public_key = (
        _recovery_public_key(args.recovery_key)
        if args.recovery_key
        else manifest.recovery_public_key
    )
    old_clients = manifest.clients(verify=_verify(args))
    new_clients = (
        _custodian_clients(args, args.custodian)
        if args.custodian
        else manifest.clients(verify=_verify(args))
    )
    new_key = SigningKey.generate()
    new_agent = AgentKey(new_key, old.network, agent_id=old.agent_id)
    # The new key is on disk before the DID document names it.
    new_agent.save(out)
    try:
        async with _registry(args, old) as registry:
            rotated = await rotate_after_recovery(
                old,
                registry,
                old_deposits=manifest.deposits,
                old_custodians=old_clients,
                new_custodians=new_clients,
                threshold=threshold,
                recovery_public_key=recovery_public_key,
                new_key=new_key,
            )
    except Exception:
        await _explain_stop(args, old, new_key, out)
        raise
    finally:
        await _close([*old_clients, *new_clients])
    new_manifest = Manifest.of(
        rotated.agent,
        rotated.deposits,
        threshold=threshold,
        total_shares=len(new_clients),
        recovery_public_key=recovery_public_key,
        recovery_key_id=manifest.recovery_key_id,
    )
    new_manifest.save(new_manifest_path)
    _print(
        {
            "agent_id": rotated.agent.agent_id,
            "key_file": str(out),
            "key_fingerprint": new_manifest.fingerprint,
            "revoked_key_fingerprint": manifest.fingerprint,
            "revoked": list(rotated.revoked),
            "revoke_failures": rotated.revoke_failures,
            "manifest": str(new_manifest_path),
            "custodians": new_manifest.to_json()["custodians"],
            "deposit_failures": rotated.deposit_failures,
        }
    )
    if rotated.revoke_failures:
        _warn(
            "the old key is revoked, but these custodians still hold its shares until they "
            f"expire: {_listed(rotated.revoke_failures)}"
        )
    if rotated.deposit_failures:
        _fail(
            f"the new key is in use, but {len(rotated.deposit_failures)} deposits failed "
            f"({_listed(rotated.deposit_failures)}); {new_manifest_path} lists the "
            f"{len(rotated.deposits)} that went through, and {threshold} are needed to recover"
        )
    return 0


async def _explain_stop(
    args: argparse.Namespace, old: AgentKey, new_key: SigningKey, out: Path
) -> None:
    """After a failed rotation, say whether the new key in ``out`` is already in use."""
    try:
        async with _registry(args, old) as registry:
            document = parse_did_document(await registry.resolve_did(old.agent_id))
    except Exception as exc:  # the rotation's own error follows
        _warn(f"could not read the DID document to tell which key is in use ({exc})")
        return
    if new_key.public_key in document.active_keys.values():
        _warn(f"the DID document names the new key: {out} holds the agent's key now")
    else:
        _warn(f"the DID document still names the old key; {out} holds a key not in use")


def run(args: argparse.Namespace) -> int:
    """Run one step; ``ocpd.agent_cli.run`` turns failures into one line and exit 1."""
    steps = {"split": _split, "recover": _recover, "rotate": _rotate}
    return trio.run(steps[args.recovery_command], args)
