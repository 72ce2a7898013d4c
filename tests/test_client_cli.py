"""``ocpd agent …`` as a subprocess against a real daemon (registry and node)."""

from __future__ import annotations

import json
import os
import signal
import stat
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from daemon_process import Daemon, TlsFiles, run_cli
from ocpd.client import AgentKey

INSIGHT = {
    "knowledge_type": "insight",
    "insight_id": "ins-0b6d3f4e-8a51-4c1e-9d7a-2f3b4c5d6e7f",
    "topic": "tumour response",
    "confidence": 0.87,
    "anonymized": True,
    "payload": {"finding": "responders share marker X"},
}


ANCHORS = ("alice", "bob")


class Env:
    def __init__(self, tmp: Path, daemon: Daemon, tls: TlsFiles) -> None:
        self.tmp = tmp
        self.daemon = daemon
        listeners = daemon.listeners
        self.env = {
            **{k: v for k, v in os.environ.items() if not k.startswith("OCP_")},
            "OCP_REGISTRY_URL": listeners["registry"],
            "OCP_NODE_URL": listeners["ws"],
            "OCP_NODE_HTTP_URL": listeners["http"],
            "OCP_CA_FILE": str(tls.ca_file),
            "OCP_NETWORK": "testnet",
        }

    def run(self, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
        return run_cli(["agent", *args], env={**self.env, **env})

    def agent(self, name: str, *, register: bool = True, anchor: bool = False) -> tuple[str, str]:
        """A new agent's id and key file; ``anchor``: one of the daemon's trust anchors."""
        if anchor:
            key = str(self.daemon.data_dir.parent / "anchors" / f"{name}.key")
            agent_id = json.loads(Path(key).read_text())["agent_id"]
        else:
            key = str(self.tmp / f"{name}.key")
            made = self.run("keygen", "--out", key)
            assert made.returncode == 0, made.stderr
            agent_id = made.stdout.strip()
        if register:
            done = self.run(
                "register",
                "--key",
                key,
                "--domain",
                "healthcare.oncology",
                "--capability",
                "cap:vision:imaging",
                "--endpoint",
                self.env["OCP_NODE_URL"].replace("https://", "wss://") + "/ocp/v1/ws",
            )
            assert done.returncode == 0, done.stderr
        return agent_id, key


@pytest.fixture(scope="module")
def daemon(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Daemon, TlsFiles]]:
    tmp = tmp_path_factory.mktemp("cli-daemon")
    tls = TlsFiles(tmp)
    # Level 2 agents for knowledge exchange: trust anchors by configuration.
    (tmp / "anchors").mkdir()
    anchors = []
    for name in ANCHORS:
        key = AgentKey.generate("testnet")
        key.save(tmp / "anchors" / f"{name}.key")
        anchors.append(key.agent_id)
    daemon = Daemon(
        tmp / "data", component="all", tls=tls, env={"OCP_TRUST_ANCHORS": ",".join(anchors)}
    )
    daemon.start()
    try:
        daemon.wait_ready()
        yield daemon, tls
    finally:
        daemon.stop()


@pytest.fixture
def env(tmp_path: Path, daemon: tuple[Daemon, TlsFiles]) -> Env:
    return Env(tmp_path, *daemon)


def one_error_line(result: subprocess.CompletedProcess[str]) -> str:
    assert result.returncode == 1, result
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("ocpd agent: ")
    return lines[0]


def test_keygen_writes_a_private_key_and_prints_the_id(env: Env) -> None:
    agent_id, key = env.agent("alice", register=False)
    assert agent_id.startswith("did:ocp:testnet:agent-")
    assert stat.S_IMODE(os.stat(key).st_mode) == 0o600
    assert json.loads(Path(key).read_text())["agent_id"] == agent_id
    again = env.run("keygen", "--out", key)
    assert "already exists" in one_error_line(again)
    other = env.run("keygen", "--out", str(env.tmp / "x.key"), "--network", "Bad_Net")
    assert "--network" in one_error_line(other)


def test_register_then_discover(env: Env) -> None:
    agent_id, key = env.agent("alice")
    found = env.run(
        "discover", "--key", key, "--domain", "healthcare", "--capability", "cap:vision:imaging"
    )
    assert found.returncode == 0, found.stderr
    assert agent_id in {r["agent_id"] for r in json.loads(found.stdout)["results"]}


def test_failures_are_one_line_on_stderr(env: Env) -> None:
    _, key = env.agent("alice", register=False)
    assert "no key file" in one_error_line(env.run("discover", "--domain", "healthcare"))
    missing = env.run("discover", "--key", str(env.tmp / "none.key"))
    assert "does not exist" in one_error_line(missing)
    unreachable = env.run("discover", "--key", key, OCP_REGISTRY_URL="https://127.0.0.1:9")
    assert "cannot reach" in one_error_line(unreachable)
    untrusted = env.run("discover", "--key", key, "--ca-file", str(Path(__file__)))
    assert one_error_line(untrusted)
    bad_json = env.run("send", "--key", key, "--to", "did:ocp:testnet:agent-000000000000",
                       "--payload", "{nope")  # fmt: skip
    assert "OCP-400" in one_error_line(bad_json)
    # Alice is not registered: the node refuses her.
    refused = env.run(
        "send",
        "--key",
        key,
        "--to",
        "did:ocp:testnet:agent-000000000000",
        "--type",
        "discovery_ping",
        "--payload",
        "{}",
    )
    assert "OCP-401" in one_error_line(refused)
    unknown = env.run(
        "send",
        "--key",
        key,
        "--to",
        "did:ocp:testnet:agent-000000000000",
        "--payload",
        json.dumps(INSIGHT),
        "--encrypt",
    )
    assert "cannot resolve" in one_error_line(unknown)


class Listener:
    """``ocpd agent listen`` in the background, its stdout collected line by line."""

    def __init__(self, env: Env, key: str, *args: str) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "ocpd", "agent", "listen", "--key", key, *args],
            env=env.env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        assert self.proc.stderr is not None
        ready = self.proc.stderr.readline()
        assert '"listening"' in ready, ready + self.proc.stderr.read()
        self.lines: list[dict[str, Any]] = []
        self.reader = threading.Thread(target=self._read, daemon=True)
        self.reader.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.append(json.loads(line))

    def wait(self, timeout: float = 30) -> int:
        code = self.proc.wait(timeout=timeout)
        self.reader.join(timeout=5)
        return code

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=10)
        self.reader.join(timeout=5)
        for pipe in (self.proc.stdout, self.proc.stderr):
            if pipe is not None:
                pipe.close()


def test_send_encrypted_with_ack_over_websocket_and_https(env: Env) -> None:
    alice_id, alice_key = env.agent("alice", anchor=True)
    bob_id, bob_key = env.agent("bob", anchor=True)
    listener = Listener(env, bob_key, "--count", "2")
    try:
        results = []
        for via in ("ws", "http"):
            sent = env.run(
                "send",
                "--key",
                alice_key,
                "--to",
                bob_id,
                "--payload",
                json.dumps(INSIGHT),
                "--encrypt",
                "--ack",
                "--via",
                via,
            )
            assert sent.returncode == 0, sent.stderr
            results.append(json.loads(sent.stdout))
        assert listener.wait() == 0
    finally:
        listener.close()
    assert [r["transport"] for r in results] == ["ws", "http"]
    for result, line in zip(results, listener.lines, strict=True):
        assert result["ack"]["sender"] == bob_id
        assert result["ack"]["metadata"]["correlation_id"] == result["message_id"]
        assert line["message_id"] == result["message_id"]
        assert line["sender"] == alice_id
        assert line["encrypted"] is True
        assert line["payload"] == INSIGHT


def test_send_over_https_without_a_session(env: Env) -> None:
    _, alice_key = env.agent("alice")
    bob_id, _ = env.agent("bob")
    sent = env.run(
        "send",
        "--key",
        alice_key,
        "--to",
        bob_id,
        "--type",
        "discovery_ping",
        "--payload",
        '{"trust_level": 1}',
        OCP_NODE_URL="",
    )
    assert sent.returncode == 0, sent.stderr
    assert json.loads(sent.stdout)["transport"] == "http"


def test_listen_stops_cleanly_on_sigterm(env: Env) -> None:
    _, key = env.agent("carol")
    listener = Listener(env, key)
    try:
        listener.proc.send_signal(signal.SIGTERM)
        assert listener.wait() == 0
        assert listener.lines == []
    finally:
        listener.close()


def test_pvl_checks_a_payload_without_sending_it(env: Env) -> None:
    _, key = env.agent("erin", register=False)
    good = {
        **INSIGHT,
        "provenance": {
            "source_agent": "did:ocp:testnet:agent-0123456789ab",
            "derived_from": "anonymized_records",
            "methodology": "cohort_analysis",
            "timestamp": "2026-03-09T09:00:00Z",
            "reproducibility_hash": "ab" * 32,
        },
    }
    passed = env.run("pvl", "--key", key, "--payload", json.dumps(good))
    assert passed.returncode == 0, passed.stderr
    assert json.loads(passed.stdout) == {"status": "passed", "knowledge_type": "insight"}
    personal = {**good, "payload": {"contact": "+44 20 7946 0958"}}
    refused = env.run("pvl", "--key", key, "--payload", json.dumps(personal))
    assert "PVL-001" in one_error_line(refused)
    no_provenance = env.run("pvl", "--key", key, "--payload", json.dumps(INSIGHT))
    assert "PVL-004" in one_error_line(no_provenance)
