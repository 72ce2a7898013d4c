"""``python -m conformance.local``: the suite against a throwaway local ocpd (``make conformance``).

1. A throwaway CA from ``trustme`` issues a certificate for 127.0.0.1 and
   localhost; certificate, key and CA go to a temporary directory.
2. ``ocpd run --component all`` starts with TLS, every port 0 (any free
   port), peering on (``/ocp/v1/peer`` for the peer checks), a temporary
   data directory and its own minimal config file (so no system
   configuration or ``OCP_*`` variable of the caller leaks in).
   Three fresh Ed25519 keys are its registry's trust anchors
   (``OCP_TRUST_ANCHORS``, on network ``mainnet``, ocpd's default); their
   seeds go to ``anchors.keys`` in the temporary directory.
3. Its JSON ``ready`` line names the listener URLs; the suite runs against
   them as a separate process (``python -m conformance ... --ca-file
   --anchor-keys``), exactly as it would against a remote node, and writes
   ``<out>/report.json`` and ``<out>/junit.xml``.
4. ocpd is stopped with SIGTERM (killed if it does not stop); its log is kept
   in ``<out>/ocpd.log``.

The exit status is the suite's (0 conformant, 1 not). 2 means the daemon
could not be started or the harness failed; the reason is printed.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final

import trio
import trustme

from conformance.collab import DEFAULT_VOUCH_THRESHOLD, anchor_keys_text
from conformance.process import ProcessFailed, ReadyProcess
from conformance.requirements import LEVELS
from conformance.suite import Targets
from ocpd.custodian.store import DatabaseKey
from ocpd.proto.crypto import SigningKey
from ocpd.proto.ids import derive_agent_id

if TYPE_CHECKING:
    from collections.abc import Mapping, Sequence

__all__ = [
    "ANCHOR_COUNT",
    "LOCAL_NETWORK",
    "TlsFiles",
    "anchor_env",
    "main",
    "ocpd_process",
    "targets_from_ready",
    "write_anchor_keys",
    "write_tls_files",
]

ROOT: Final = Path(__file__).resolve().parents[1]
RESULTS_DIR: Final = ROOT / "conformance" / "results"
EXIT_HARNESS: Final = 2
CONFIG_TEXT: Final = (
    "# conformance.local: built-in defaults, JSON logs\nnode:\n  log_format: json\n"
)
#: The daemon's network (ocpd's default, named so that the anchors' ids derive on it).
LOCAL_NETWORK: Final = "mainnet"
#: Trust anchors of the local registry: as many as its vouch threshold, the fewest the
#: knowledge and collaboration checks need.
ANCHOR_COUNT: Final = DEFAULT_VOUCH_THRESHOLD


@dataclass(frozen=True)
class TlsFiles:
    cert: Path
    key: Path
    ca: Path


def write_tls_files(directory: Path) -> TlsFiles:
    """A fresh CA and a server certificate for 127.0.0.1, ::1 and localhost, as PEM files."""
    directory.mkdir(parents=True, exist_ok=True)
    ca = trustme.CA()
    server = ca.issue_cert("127.0.0.1", "::1", "localhost")
    files = TlsFiles(directory / "cert.pem", directory / "key.pem", directory / "ca.pem")
    for i, blob in enumerate(server.cert_chain_pems):
        blob.write_to_path(str(files.cert), append=i > 0)
    server.private_key_pem.write_to_path(str(files.key))
    files.key.chmod(0o600)
    ca.cert_pem.write_to_path(str(files.ca))
    return files


def write_anchor_keys(path: Path, keys: Sequence[SigningKey]) -> Path:
    """An ``--anchor-keys`` file of ``keys``, mode 0600 (the seeds are secret)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(anchor_keys_text(keys), encoding="utf-8")
    path.chmod(0o600)
    return path


def anchor_env(keys: Sequence[SigningKey], network: str = LOCAL_NETWORK) -> dict[str, str]:
    """The daemon's environment that makes ``keys`` its registry's trust anchors."""
    anchors = ",".join(derive_agent_id(key.public_key, network) for key in keys)
    return {"OCP_NETWORK": network, "OCP_TRUST_ANCHORS": anchors}


def ocpd_process(
    workdir: Path,
    *,
    tls: TlsFiles | None,
    extra_env: Mapping[str, str] | None = None,
    name: str = "ocpd",
    config_text: str = CONFIG_TEXT,
) -> ReadyProcess:
    """``ocpd run --component all`` on ports 0 with its data and config under ``workdir``."""
    workdir.mkdir(parents=True, exist_ok=True)
    config = workdir / "ocpd.yml"
    config.write_text(config_text, encoding="utf-8")
    env = {k: v for k, v in os.environ.items() if not k.startswith("OCP_")}
    env.update(
        {
            "OCP_CONFIG": str(config),
            "OCP_DATA_DIR": str(workdir / "data"),
            "OCP_HTTP_PORT": "0",
            "OCP_WS_PORT": "0",
            "OCP_REGISTRY_PORT": "0",
            "OCP_CUSTODIAN_PORT": "0",
            # The peer checks dial /ocp/v1/peer (on by default; said here so it stays on).
            "OCP_PEERING_ENABLED": "true",
        }
    )
    if tls is not None:
        env["OCP_TLS_CERT"] = str(tls.cert)
        env["OCP_TLS_KEY"] = str(tls.key)
        # The node hands messages on to endpoints under the same private CA.
        env["OCP_DELIVERY_CA_FILE"] = str(tls.ca)
    key_file = workdir / "custodian.key"
    if not key_file.exists():
        DatabaseKey.generate().write(key_file)
    env["OCP_CUSTODIAN_KEY_FILE"] = str(key_file)
    env.update(extra_env or {})
    command = [sys.executable, "-m", "ocpd", "run", "--component", "all"]
    return ReadyProcess(command=command, env=env, cwd=workdir, name=name)


def targets_from_ready(ready: Mapping[str, Any]) -> Targets:
    """The suite's targets from ocpd's ``ready`` event (``listeners``: port name -> URL)."""
    listeners = ready["listeners"]
    return Targets(
        node=listeners["http"],
        node_ws=listeners.get("ws"),
        registry=listeners["registry"],
        custodian=listeners["custodian"],
    )


def _suite_command(
    targets: Targets, ca: Path, level: str, out: Path, anchors: Path | None
) -> list[str]:
    command = [sys.executable, "-m", "conformance", "--level", level, "--ca-file", str(ca)]
    if anchors is not None:
        command += ["--anchor-keys", str(anchors)]
    command += ["--node", targets.node, "--registry", targets.registry]
    command += ["--custodian", targets.custodian]
    if targets.node_ws:
        command += ["--node-ws", targets.node_ws]
    if targets.node_peer:
        command += ["--node-peer", targets.node_peer]
    command += ["--report-json", str(out / "report.json"), "--junit", str(out / "junit.xml")]
    return command


async def run_local(
    daemon: ReadyProcess, ca: Path, level: str, out: Path, anchors: Path | None = None
) -> int:
    """Start ``daemon``, run the suite as a subprocess against it, stop it; the suite's status."""
    status = EXIT_HARNESS
    try:
        async with trio.open_nursery() as nursery:
            ready = await nursery.start(daemon.run)
            targets = targets_from_ready(ready)
            print(f"ocpd ready (pid {ready.get('pid')}): {ready['listeners']}", flush=True)
            suite = await trio.run_process(
                _suite_command(targets, ca, level, out, anchors), check=False, cwd=ROOT
            )
            status = suite.returncode
            nursery.cancel_scope.cancel()
    except* ProcessFailed as group:
        for exc in group.exceptions:
            print(f"conformance.local: {exc}", file=sys.stderr)
    return status


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m conformance.local",
        description="Start a throwaway ocpd with TLS and run the conformance suite against it.",
    )
    parser.add_argument("--level", choices=LEVELS, default="core")
    parser.add_argument(
        "--out", type=Path, default=RESULTS_DIR, help="report directory (conformance/results)"
    )
    args = parser.parse_args(argv)
    out: Path = args.out.resolve()
    out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="ocpd-conformance-") as tmp:
        tls = write_tls_files(Path(tmp) / "tls")
        keys = [SigningKey.generate() for _ in range(ANCHOR_COUNT)]
        anchors = write_anchor_keys(Path(tmp) / "anchors.keys", keys)
        daemon = ocpd_process(Path(tmp) / "ocpd", tls=tls, extra_env=anchor_env(keys))
        try:
            status = trio.run(run_local, daemon, tls.ca, args.level, out, anchors)
        finally:
            (out / "ocpd.log").write_text("\n".join(daemon.output) + "\n", encoding="utf-8")
    if daemon.returncode not in (0, None):
        print(f"warning: ocpd exited with status {daemon.returncode} after SIGTERM (expected 0)")
    print(f"ocpd log: {out / 'ocpd.log'}")
    return status


if __name__ == "__main__":
    sys.exit(main())
