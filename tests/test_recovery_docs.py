"""docs/recovery.md, executed: its shell walkthrough and its Python blocks run against
a registry and three custodian processes; its other command lines are checked
against the commands' options.

The example URLs ``https://custodian-N.example:8423`` stand for the real
custodians. While the Python blocks run, a thread plays the custodians'
operators: it approves every request that waits for them, as an operator
would after checking the ephemeral key.
"""

from __future__ import annotations

import contextlib
import io
import json
import re
import shlex
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from custodian_world import World, running_world
from daemon_process import run_cli
from ocpd import cli
from ocpd.identity import read_key_file

DOC = Path(__file__).parent.parent / "docs" / "recovery.md"
EXAMPLE_URL = re.compile(r"https://custodian-(\d)\.example:8423")


def _section(title: str) -> str:
    text = DOC.read_text()
    start = text.index(f"## {title}")
    end = text.find("\n## ", start + 1)
    return text[start : end if end != -1 else len(text)]


def _command_lines(text: str, fence: str, prompt: str = "") -> list[list[str]]:
    lines = []
    for block in re.findall(rf"```{fence}\n(.*?)```", text, flags=re.DOTALL):
        for line in block.replace("\\\n", " ").splitlines():
            if not line.startswith(prompt + "ocpd "):
                continue
            lines.append(shlex.split(line.removeprefix(prompt), comments=True))
    return lines


def _python_blocks() -> list[str]:
    return re.findall(r"```python\n(.*?)```", DOC.read_text(), flags=re.DOTALL)


@pytest.fixture
def world(tmp_path: Path) -> Iterator[World]:
    with running_world(tmp_path) as made:
        yield made


def test_every_command_line_is_valid() -> None:
    parser = cli._parser()
    shown = [
        *_command_lines(DOC.read_text(), "sh"),
        *_command_lines(DOC.read_text(), "text", prompt="$ "),
    ]
    steps = set()
    for argv in shown:
        try:
            args = parser.parse_args(argv[1:])
        except SystemExit as exc:  # argparse reports the problem on stderr
            raise AssertionError(f"the page shows an invalid command: {shlex.join(argv)}") from exc
        steps.add(getattr(args, "recovery_command", None) or getattr(args, "custodian_command", ""))
    assert {"split", "recover", "rotate", "keygen", "requests", "approve", "reject"} <= steps


def test_the_shell_walkthrough_runs(world: World, tmp_path: Path) -> None:
    workdir = tmp_path / "shell"
    workdir.mkdir()
    commands = _command_lines(_section("For agent operators"), "sh")
    assert [argv[1:4] for argv in commands if argv[2] == "recovery"] == [
        ["agent", "recovery", "split"],
        ["agent", "recovery", "recover"],
        ["agent", "recovery", "rotate"],
    ]
    outputs = {}
    for argv in commands:
        argv = [EXAMPLE_URL.sub(lambda m: world.urls[int(m[1]) - 1], word) for word in argv]
        done = subprocess.run(
            [sys.executable, "-m", "ocpd", *argv[1:]],
            cwd=workdir,
            env=world.env,
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        assert done.returncode == 0, f"{shlex.join(argv)}: {done.stderr}"
        outputs[" ".join(argv[1:4])] = done.stdout
    seed = read_key_file(workdir / "agent.key").seed()
    assert read_key_file(workdir / "recovered.key").seed() == seed
    rotated = json.loads(outputs["agent recovery rotate"])
    assert rotated["revoked"] == sorted(world.urls)
    assert (workdir / "agent-2.key").exists() and (workdir / "recovery-2.json").exists()
    assert read_key_file(workdir / "agent-2.key").seed() != seed


def _approve_until(stop: threading.Event, world: World, approved: list[str]) -> None:
    """The custodians' operators: approve whatever waits for them."""
    while not stop.wait(0.3):
        for daemon in world.daemons:
            listed = run_cli(["custodian", "requests", "--json"], env=daemon.env)
            if listed.returncode != 0:
                continue
            for request in json.loads(listed.stdout).get("requests", []):
                if request.get("status") == "pending":
                    done = run_cli(["custodian", "approve", request["request_id"]], env=daemon.env)
                    if done.returncode == 0:
                        approved.append(request["request_id"])


def test_every_python_block_runs(world: World, monkeypatch: pytest.MonkeyPatch) -> None:
    blocks = _python_blocks()
    assert len(blocks) >= 5
    for name in ("OCP_REGISTRY_URL", "OCP_CA_FILE", "OCP_NETWORK"):
        monkeypatch.setenv(name, world.env[name])
    monkeypatch.setenv("CUSTODIAN_URLS", ",".join(world.urls))
    stop = threading.Event()
    approved: list[str] = []
    operators = threading.Thread(target=_approve_until, args=(stop, world, approved))
    operators.start()
    output = io.StringIO()
    namespace: dict[str, object] = {"__name__": "recovery_md"}
    try:
        with contextlib.redirect_stdout(output):
            for number, block in enumerate(blocks, start=1):
                exec(compile(block, f"docs/recovery.md block {number}", "exec"), namespace)  # noqa: S102 - our docs
    finally:
        stop.set()
        operators.join()
    printed = output.getvalue()
    assert "shares [1, 2, 3]" in printed
    assert "recovered True ()" in printed
    assert printed.count("ask the operator of https://") == 3
    assert "approved True" in printed
    assert len(approved) >= 2
    assert "revoked 3 new shares 3" in printed
    assert "same agent True" in printed
