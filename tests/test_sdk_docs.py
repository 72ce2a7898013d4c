"""Every code block of docs/sdk.md runs, in order, against a real daemon (registry and node)."""

from __future__ import annotations

import argparse
import contextlib
import io
import os
import re
import shlex
import ssl
from pathlib import Path

import pytest
import trio

from daemon_process import Daemon, TlsFiles
from ocpd import agent_cli
from ocpd.client import AgentKey, CertifierKey, RegistryClient

DOC = Path(__file__).parent.parent / "docs" / "sdk.md"


def _blocks() -> list[str]:
    return re.findall(r"```python\n(.*?)```", DOC.read_text(), flags=re.DOTALL)


def _shell_commands() -> list[list[str]]:
    """The ``ocpd agent …`` command lines of the guide's shell examples, as argv lists."""
    commands = []
    for block in re.findall(r"```sh\n(.*?)```", DOC.read_text(), flags=re.DOTALL):
        for line in block.replace("\\\n", " ").splitlines():
            words = shlex.split(line, comments=True)
            if words[:2] == ["ocpd", "agent"]:
                commands.append(words[1:])
    return commands


async def _register_anchors(url: str, anchors: list[AgentKey], verify: ssl.SSLContext) -> None:
    for anchor in anchors:
        async with RegistryClient(url, anchor, verify=verify) as registry:
            record = registry.build_record(
                display_name="anchor",
                capabilities=[{"id": "cap:data:clustering", "name": "Clustering", "version": "1"}],
                domains=["finance"],
                endpoints=[
                    {
                        "transport": "ocp-http",
                        "url": "https://a.example/ocp/v1/messages",
                        "priority": 1,
                    }
                ],
            )
            await registry.register(record)


def test_the_guide_has_examples() -> None:
    assert len(_blocks()) >= 6


def test_every_shell_example_is_a_valid_command_line() -> None:
    parser = argparse.ArgumentParser(prog="ocpd")
    agent_cli.add_parser(parser.add_subparsers(dest="command", required=True))
    commands = _shell_commands()
    actions = set()
    for argv in commands:
        try:
            args = parser.parse_args(argv)
        except SystemExit as exc:  # argparse reports the problem on stderr
            raise AssertionError(f"the guide shows an invalid command: {shlex.join(argv)}") from exc
        actions.add(
            " ".join(
                filter(
                    None,
                    (
                        args.agent_command,
                        getattr(args, "task_command", None),
                        getattr(args, "consensus_command", None),
                    ),
                )
            )
        )
    for action in ("pvl", "share", "task delegate", "task answer", "consensus run",
                   "consensus vote", "send", "listen"):  # fmt: skip
        assert action in actions, action


def test_every_example_runs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    tls = TlsFiles(tmp_path)
    anchors = [AgentKey.generate("testnet") for _ in range(3)]
    key_files = []
    for i, anchor in enumerate(anchors):
        path = tmp_path / f"anchor{i}.key"
        anchor.save(path)
        key_files.append(str(path))
    certifier = CertifierKey.generate()
    certifier.save(tmp_path / "certifier.key")
    config = tmp_path / "ocpd.yml"
    config.write_text(
        "trust:\n  anchors: [" + ", ".join(a.agent_id for a in anchors) + "]\n"
        f"  certifier_keys: [{certifier.multibase}]\n"
    )
    # The whole daemon: the guide goes on from the registry to messages through the node.
    daemon = Daemon(tmp_path / "data", component="all", tls=tls, env={"OCP_CONFIG": str(config)})
    daemon.start()
    try:
        listeners = daemon.wait_ready()
        url = listeners["registry"]
        monkeypatch.setenv("OCP_REGISTRY_URL", url)
        monkeypatch.setenv("OCP_NODE_URL", listeners["ws"])
        monkeypatch.setenv("OCP_NODE_HTTP_URL", listeners["http"])
        monkeypatch.setenv("OCP_CA_FILE", str(tls.ca_file))
        monkeypatch.setenv("OCP_ANCHOR_KEYS", ",".join(key_files))
        monkeypatch.setenv("OCP_NETWORK", "testnet")
        monkeypatch.setenv("OCP_CERTIFIER_KEY", str(tmp_path / "certifier.key"))
        # The anchors register first, as an operator would have them do.
        trio.run(_register_anchors, url, anchors, tls.client_context())
        namespace: dict[str, object] = {"os": os}
        output = io.StringIO()
        with contextlib.redirect_stdout(output):
            for number, block in enumerate(_blocks(), start=1):
                exec(compile(block, f"docs/sdk.md block {number}", "exec"), namespace)  # noqa: S102 - our docs
        printed = output.getvalue()
        assert "active 1" in printed
        assert "2 3" in printed  # level 2 after three vouches
        assert "OCP-403" in printed
        assert "certified 4" in printed
        assert "ws {'status': 'received'}" in printed  # an encrypted message, acknowledged
        assert "OCP-404 404" in printed  # over HTTPS, to an unknown agent
        assert "alice got processed" in printed
        assert "asyncio http True" in printed
        # Layers 3 and 4: the bond, knowledge, tasks, a consensus round.
        assert "bonded [3, 3]" in printed
        for kind in ("embedding", "insight", "model_delta"):
            assert f"bob accepted {kind} True" in printed
            assert f"shared {kind} accepted" in printed
        for code in ("PVL-004", "PVL-001", "PVL-003"):
            assert f"refused {code} " in printed
        assert "'kind': 'email'" in printed
        assert "node refused PVL-001 403" in printed
        assert "bob refused PVL-004" in printed
        assert "ack rejected PVL-004" in printed
        assert "bob got task_request {'scan': 'scan-0042'}" in printed
        assert "task ['accepted', 'in_progress', 'completed'] {'regions': 3}" in printed
        assert "task refused OCP-403 no_bond" in printed
        assert "declined rejected True no capacity today" in printed
        assert "vote refused True OCP-403 ineligible" in printed
        assert "round yes 4 False" in printed
        assert "bob heard yes" in printed
    finally:
        assert daemon.stop() == 0
