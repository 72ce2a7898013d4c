"""``ocpd agent …`` as a subprocess against a real daemon (registry and node)."""

from __future__ import annotations

import argparse
import json
import os
import signal
import ssl
import stat
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import trio

from daemon_process import Daemon, TlsFiles, run_cli
from ocpd import agent_cli
from ocpd.client import AgentKey, RegistryClient
from ocpd.client.registry import build_bond
from ocpd.proto.pvl import compress_delta

INSIGHT = {
    "knowledge_type": "insight",
    "insight_id": "ins-0b6d3f4e-8a51-4c1e-9d7a-2f3b4c5d6e7f",
    "topic": "tumour response",
    "confidence": 0.87,
    "anonymized": True,
    "payload": {"finding": "responders share marker X"},
}


# Level 2 agents (trust anchors): each test that needs some has its own.
ANCHORS = (
    "alice",
    "bob",
    "sharer",
    "reader",
    "requester",
    "worker",
    "boss",
    "helper",
    "initiator",
    "voter1",
    "voter2",
)


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
    package = insight_package(alice_id)
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
                json.dumps(package),
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
        assert line["payload"] == package
        assert line["knowledge"] == {"status": "accepted"}


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


# --- layers 3 and 4: share, task, consensus ----------------------------------------------

PROVENANCE = {
    "derived_from": "anonymized_records",
    "methodology": "cohort_analysis",
    "timestamp": "2026-03-09T09:00:00Z",
    "reproducibility_hash": "ab" * 32,
}
TEAM = {
    "knowledge_share": {"enabled": True},
    "task_delegate": {"enabled": True, "max_concurrent": 2, "timeout_seconds": 300},
    "model_delta_share": {"enabled": True},
}


def insight_package(source: str, **payload: Any) -> dict[str, Any]:
    return {
        **INSIGHT,
        "payload": payload or INSIGHT["payload"],
        "provenance": {"source_agent": source, **PROVENANCE},
    }


def model_delta(source: str) -> dict[str, Any]:
    weights = np.random.default_rng(7).normal(0.0, 0.01, 2048).astype("<f4")
    return {
        "knowledge_type": "model_delta",
        "delta_id": "md-cli-1",
        "format": "federated_avg",
        "compression": "gzip",
        "architecture": {"family": "transformer", "parameter_count": "7B", "target_layers": ["q"]},
        "differential_privacy": {
            "mechanism": "gaussian",
            "epsilon": 2.0,
            "delta": 1e-6,
            "noise_multiplier": 1.1,
        },
        "payload": compress_delta(weights.tobytes(), "gzip"),
        "provenance": {
            "source_agent": source,
            "training_samples": 50_000,
            "timestamp": "2026-03-09T09:00:00Z",
        },
    }


def bond(env: Env, first_key: str, second_key: str, permissions: dict[str, Any]) -> None:
    """Both agents sign a bond and the first submits it (there is no CLI action for bonds)."""
    first, second = (AgentKey.load(key, "testnet") for key in (first_key, second_key))

    async def submit() -> None:
        url = env.env["OCP_REGISTRY_URL"]
        verify = ssl.create_default_context(cafile=env.env["OCP_CA_FILE"])
        async with (
            RegistryClient(url, first, verify=verify) as mine,
            RegistryClient(url, second, verify=verify) as theirs,
        ):
            record = build_bond(
                first.agent_id, second.agent_id, permissions=permissions, now=first.now()
            )
            stored = await mine.submit_bond(theirs.sign_bond(mine.sign_bond(record)))
            assert stored["levels"][first.agent_id] == 3

    trio.run(submit)


def ping(env: Env, key: str, to: str) -> str:
    """Send a ``discovery_ping`` over HTTPS; its message id."""
    sent = env.run("send", "--key", key, "--to", to, "--type", "discovery_ping",
                   "--payload", '{"trust_level": 2}')  # fmt: skip
    assert sent.returncode == 0, sent.stderr
    message_id: str = json.loads(sent.stdout)["message_id"]
    return message_id


def shown(stderr: str) -> list[str]:
    """The ids of the messages a CLI action showed on stderr (those that came in meanwhile)."""
    return [json.loads(line)["message_id"] for line in stderr.splitlines()]


def start(env: Env, *args: str, **extra: str) -> subprocess.Popen[str]:
    """``ocpd agent …`` in the background."""
    return subprocess.Popen(
        [sys.executable, "-m", "ocpd", "agent", *args],
        env={**env.env, **extra},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def first_line(proc: subprocess.Popen[str]) -> dict[str, Any]:
    assert proc.stdout is not None
    line = proc.stdout.readline()
    if not line:
        _, err = proc.communicate(timeout=10)
        raise AssertionError(f"exited {proc.returncode} before any output: {err}")
    found: dict[str, Any] = json.loads(line)
    return found


def finish(proc: subprocess.Popen[str], timeout: float = 30) -> tuple[list[dict[str, Any]], str]:
    """Wait for a background CLI; its remaining stdout as JSON lines, and its stderr."""
    try:
        out, err = proc.communicate(timeout=timeout)
    finally:
        stop(proc)
    return [json.loads(line) for line in out.splitlines()], err


def stop(proc: subprocess.Popen[str]) -> None:
    if proc.poll() is None:
        proc.kill()
        proc.communicate(timeout=10)


def trust_score(env: Env, key: str, agent_id: str) -> float:
    agent = AgentKey.load(key, "testnet")

    async def ask() -> float:
        verify = ssl.create_default_context(cafile=env.env["OCP_CA_FILE"])
        async with RegistryClient(env.env["OCP_REGISTRY_URL"], agent, verify=verify) as registry:
            return float((await registry.trust(agent_id))["trust_score"])

    return trio.run(ask)


def test_share_is_checked_by_the_pvl_then_sent_encrypted(env: Env) -> None:
    sharer_id, sharer_key = env.agent("sharer", anchor=True)
    reader_id, reader_key = env.agent("reader", anchor=True)
    package, delta = insight_package(sharer_id), model_delta(sharer_id)
    personal = insight_package(sharer_id, contact="jane.doe@example.com")
    # Refused by the sender's PVL: nothing leaves (the listener sees only what passed).
    refused = env.run("share", "--key", sharer_key, "--to", reader_id,
                      "--payload", json.dumps(personal))  # fmt: skip
    assert "PVL-001" in one_error_line(refused)
    unbonded = env.run("share", "--key", sharer_key, "--to", reader_id,
                       "--payload", json.dumps(delta))  # fmt: skip
    assert "PVL-006" in one_error_line(unbonded)  # model deltas need a bond that allows them
    bond(env, sharer_key, reader_key, TEAM)
    checked = env.run("pvl", "--key", sharer_key, "--to", reader_id, "--payload", json.dumps(delta))
    assert json.loads(checked.stdout) == {"status": "passed", "knowledge_type": "model_delta"}
    # A message for the sharer, waiting at the node: --ack opens a session, which gets it.
    waiting = ping(env, reader_key, sharer_id)
    listener = Listener(env, reader_key, "--count", "3")
    try:
        shared = env.run("share", "--key", sharer_key, "--to", reader_id,
                         "--payload", json.dumps(package), "--ack")  # fmt: skip
        assert shared.returncode == 0, shared.stderr
        # readable, so the node runs the PVL on it too
        plain = env.run("share", "--key", sharer_key, "--to", reader_id,
                        "--payload", json.dumps(delta), "--plain")  # fmt: skip
        assert plain.returncode == 0, plain.stderr
        # Sent raw and encrypted, PII passes the sender's side and the node
        # (which cannot read it): the receiver's PVL refuses it.
        smuggled = env.run("send", "--key", sharer_key, "--to", reader_id,
                           "--type", "knowledge_share", "--payload", json.dumps(personal),
                           "--encrypt")  # fmt: skip
        assert smuggled.returncode == 0, smuggled.stderr
        assert listener.wait() == 0
    finally:
        listener.close()
    results = [json.loads(out.stdout) for out in (shared, plain, smuggled)]
    assert [r["encrypted"] for r in results[:2]] == [True, False]
    assert results[0]["ack"]["sender"] == reader_id
    assert results[0]["ack"]["metadata"]["correlation_id"] == results[0]["message_id"]
    assert "ack" not in results[1]
    assert plain.stderr == ""
    received = listener.lines
    assert [m["message_id"] for m in received] == [r["message_id"] for r in results]
    assert [m["encrypted"] for m in received] == [True, False, True]
    assert {(m["sender"], m["message_type"]) for m in received} == {(sharer_id, "knowledge_share")}
    # The listener ran the PVL on each share: what passed is printed, what failed is not.
    assert [m["payload"] for m in received] == [package, delta, None]
    assert [m["knowledge"]["status"] for m in received] == ["accepted", "accepted", "rejected"]
    assert received[2]["knowledge"]["error_code"] == "PVL-001"
    assert received[2]["knowledge"]["details"] == {
        "findings": [{"kind": "email", "path": "$.payload.contact", "where": "value"}]
    }
    # ... and answered each with a knowledge_ack, which reaches the sharer: on the
    # session of `share --ack` if it was still open, else when it listens.
    during = [json.loads(line) for line in shared.stderr.splitlines()]
    assert during[0]["message_id"] == waiting
    acks = during[1:]
    later = Listener(env, sharer_key, "--count", str(3 - len(acks)))
    try:
        assert later.wait() == 0
    finally:
        later.close()
    acks += later.lines
    assert {(m["sender"], m["message_type"]) for m in acks} == {(reader_id, "knowledge_ack")}
    by_share = {m["metadata"]["correlation_id"]: m["payload"] for m in acks}
    assert by_share == {
        results[0]["message_id"]: {"knowledge_id": package["insight_id"], "status": "accepted"},
        results[1]["message_id"]: {"knowledge_id": delta["delta_id"], "status": "accepted"},
        results[2]["message_id"]: {
            "knowledge_id": personal["insight_id"],
            "status": "rejected",
            "error_code": "PVL-001",
            "message": received[2]["knowledge"]["message"],
        },
    }
    # the ack of the smuggled share went back encrypted, like the share
    assert [
        m["encrypted"] for m in acks if m["metadata"]["correlation_id"] == results[2]["message_id"]
    ] == [True]


def test_task_delegate_wait_and_answer(env: Env) -> None:
    requester_id, requester_key = env.agent("requester", anchor=True)
    worker_id, worker_key = env.agent("worker", anchor=True)
    bond(env, requester_key, worker_key, TEAM)
    waiting = ping(env, worker_key, requester_id)  # comes in while the requester waits
    listener = Listener(env, worker_key, "--count", "1")
    delegate = start(env, "task", "delegate", "--key", requester_key, "--to", worker_id,
                     "--task-type", "segmentation", "--data", '{"scan": "scan-0042"}',
                     "--max-duration", "120", "--capability", "cap:vision:imaging",
                     "--description", "count the regions", "--wait")  # fmt: skip
    try:
        task_id = first_line(delegate)["task_id"]
        assert listener.wait() == 0
        [request] = listener.lines
        answers = []
        for status, extra in (
            ("accepted", ()),
            ("completed", ("--data", '{"regions": 3}', "--confidence", "0.8")),
        ):
            answered = env.run("task", "answer", "--key", worker_key, "--to", requester_id,
                               "--task-id", task_id, "--status", status, *extra)  # fmt: skip
            assert answered.returncode == 0, answered.stderr
            answers.append(json.loads(answered.stdout))
        updates, err = finish(delegate)
    finally:
        listener.close()
        stop(delegate)
    # the worker got the request as delegated
    assert (request["sender"], request["message_type"]) == (requester_id, "task_request")
    assert request["payload"]["task_id"] == task_id
    assert request["payload"]["input"] == {
        "format": "application/json",
        "data": {"scan": "scan-0042"},
    }
    assert request["payload"]["constraints"] == {
        "max_duration_seconds": 120,
        "required_capabilities": ["cap:vision:imaging"],
    }
    assert [a["status"] for a in answers] == ["accepted", "completed"]
    # the requester printed each update until the task ended, then exited 0
    assert delegate.returncode == 0, err
    assert shown(err) == [waiting]
    assert updates == [
        {"task_id": task_id, "status": "accepted"},
        {
            "task_id": task_id,
            "status": "completed",
            "result": {"format": "application/json", "data": {"regions": 3}, "confidence": 0.8},
        },
    ]
    # a closed task takes no more answers
    late = env.run("task", "answer", "--key", worker_key, "--to", requester_id,
                   "--task-id", task_id, "--status", "in_progress")  # fmt: skip
    assert "OCP-403: the task is closed" in one_error_line(late)
    # a result belongs to a completed answer only: refused before anything is sent
    misplaced = env.run("task", "answer", "--key", worker_key, "--to", requester_id,
                        "--task-id", task_id, "--status", "failed", "--data", '{"regions": 3}',
                        "--confidence", "0.5", OCP_NODE_URL="", OCP_NODE_HTTP_URL="")  # fmt: skip
    assert one_error_line(misplaced) == (
        "ocpd agent: --data and --confidence: only a completed task has a result"
        " (--status completed)"
    )


def test_task_delegate_is_refused_without_a_bond_that_permits_it(env: Env) -> None:
    boss_id, boss_key = env.agent("boss", anchor=True)
    helper_id, helper_key = env.agent("helper", anchor=True)

    def delegate(
        key: str, to: str, *extra: str, **environ: str
    ) -> subprocess.CompletedProcess[str]:
        return env.run("task", "delegate", "--key", key, "--to", to, "--task-type", "segmentation",
                       "--max-duration", "60", *extra, **environ)  # fmt: skip

    # Following a task needs the registry, to verify the answers
    blind = delegate(boss_key, helper_id, "--wait", OCP_REGISTRY_URL="")
    assert "--wait needs the registry" in one_error_line(blind)
    # Level 2 without a bond: task delegation is a Level 3 permission
    unbonded = delegate(boss_key, helper_id)
    assert "OCP-403: task delegation needs a Level 3 requester" in one_error_line(unbonded)
    bond(env, boss_key, helper_key, {**TEAM, "task_delegate": {"enabled": False}})
    not_permitted = delegate(boss_key, helper_id)
    assert "OCP-403: the bond does not permit task delegation" in one_error_line(not_permitted)
    # Level 3 now, but no bond with this receiver
    sharer_id, _ = env.agent("sharer", anchor=True)
    stranger = delegate(boss_key, sharer_id)
    assert "OCP-403: no bond with the receiver" in one_error_line(stranger)
    # A message that comes in on the session of an action that then fails is
    # shown on stderr before the error, not lost.
    waiting = ping(env, helper_key, boss_id)
    over_ws = delegate(boss_key, sharer_id, OCP_NODE_HTTP_URL="")
    assert over_ws.returncode == 1, over_ws
    *others, error = over_ws.stderr.strip().splitlines()
    assert error.startswith("ocpd agent: OCP-403: no bond with the receiver")
    assert [json.loads(line)["message_id"] for line in others] == [waiting]
    # Nothing refused reached the helper: the node delivers in the order it accepted,
    # so the first message the helper gets is the ping sent after the refusals.
    sentinel = ping(env, boss_key, helper_id)
    listener = Listener(env, helper_key, "--count", "1")
    try:
        assert listener.wait() == 0
    finally:
        listener.close()
    [first] = listener.lines
    assert (first["message_id"], first["sender"]) == (sentinel, boss_id)


def test_consensus_run_collects_votes_and_announces_the_result(env: Env) -> None:
    initiator_id, initiator_key = env.agent("initiator", anchor=True)
    voters = {name: env.agent(name, anchor=True) for name in ("voter1", "voter2")}
    outsider_id, outsider_key = env.agent("outsider")  # Level 1: not eligible
    participants = [voters["voter1"][0], voters["voter2"][0], outsider_id]
    waiting = ping(env, outsider_key, initiator_id)  # not a vote: shown, not counted
    rounds = start(env, "consensus", "run", "--key", initiator_key,
                   *(arg for p in participants for arg in ("--participant", p)),
                   "--topic", "Does marker X predict the response?", "--option", "yes",
                   "--option", "no", "--deadline-in", "8", "--min-participants", "2",
                   "--threshold", "0.6", "--min-trust-level", "2")  # fmt: skip

    def vote(key: str, choice: str, confidence: str) -> subprocess.Popen[str]:
        return start(env, "consensus", "vote", "--key", key, "--to", initiator_id,
                     "--consensus-id", consensus_id, "--vote", choice,
                     "--confidence", confidence, "--rationale", "private notes")  # fmt: skip

    try:
        opened = first_line(rounds)
        consensus_id = opened["consensus_id"]
        first = {
            "voter1": vote(voters["voter1"][1], "yes", "0.9"),
            "voter2": vote(voters["voter2"][1], "no", "0.2"),
            "outsider": vote(outsider_key, "yes", "1.0"),
            "unknown option": vote(voters["voter1"][1], "maybe", "0.5"),
        }
        outcomes = {name: (proc, *finish(proc)) for name, proc in first.items()}
        again = vote(voters["voter2"][1], "yes", "1.0")  # a different second vote
        outcomes["again"] = (again, *finish(again))
        tallied, round_err = finish(rounds)
    finally:
        stop(rounds)
    for name in ("voter1", "voter2"):
        proc, lines, err = outcomes[name]
        assert proc.returncode == 0, err
        assert lines[0]["consensus_id"] == consensus_id
    refusals = {}
    for name in ("outsider", "unknown option", "again"):
        proc, lines, err = outcomes[name]
        assert (proc.returncode, lines) == (1, []), err
        [refusals[name]] = err.strip().splitlines()
    assert refusals["outsider"] == "ocpd agent: OCP-403: voter is not eligible in this round"
    assert refusals["again"].startswith("ocpd agent: OCP-403: ")
    assert refusals["again"].endswith("already voted in this round")
    assert refusals["unknown option"].startswith("ocpd agent: OCP-400: ")
    # the tally: two eligible voters, weighted by trust score and confidence
    assert rounds.returncode == 0, round_err
    assert shown(round_err) == [waiting]
    [result] = tallied
    assert result["consensus_id"] == consensus_id
    assert (result["outcome"], result["reason"], result["participants"]) == ("yes", None, 2)
    scores = {v: trust_score(env, initiator_key, voters[v][0]) for v in ("voter1", "voter2")}
    assert result["scores"] == {
        "yes": pytest.approx(0.9 * scores["voter1"]),
        "no": pytest.approx(0.2 * scores["voter2"]),
    }
    assert result["total_weighted_score"] == pytest.approx(sum(result["scores"].values()))
    assert result["counted"] == sorted(voters[v][0] for v in ("voter1", "voter2"))
    assert (result["unscored"], result["excluded"], result["refused"]) == ([], [], [])
    # a voter got the round, then its result
    listener = Listener(env, voters["voter1"][1], "--count", "2")
    try:
        assert listener.wait() == 0
    finally:
        listener.close()
    initiate, announced = listener.lines
    assert {initiate["sender"], announced["sender"]} == {initiator_id}
    assert initiate["message_type"] == "consensus_initiate"
    assert initiate["payload"]["consensus_id"] == consensus_id
    assert initiate["payload"]["options"] == ["yes", "no"]
    assert initiate["payload"]["eligible_agents"] == {"min_trust_level": 2}
    assert announced["message_type"] == "consensus_result"
    assert announced["payload"]["outcome"] == "yes"
    assert len(announced["payload"]["votes"]) == 2


def test_consensus_run_needs_a_level_2_initiator(env: Env) -> None:
    _, key = env.agent("newcomer")
    voter_id, _ = env.agent("voter1", anchor=True)
    refused = env.run("consensus", "run", "--key", key, "--participant", voter_id,
                      "--topic", "t", "--option", "yes", "--option", "no", "--deadline-in", "30",
                      "--min-participants", "1", "--threshold", "0.5")  # fmt: skip
    assert "OCP-403: initiating a consensus round needs trust level 2" in one_error_line(refused)
    reserved = env.run("consensus", "run", "--key", key, "--participant", voter_id,
                       "--topic", "t", "--option", "yes", "--option", "no_consensus",
                       "--deadline-in", "30", "--min-participants", "1",
                       "--threshold", "0.5")  # fmt: skip
    assert "OCP-400" in one_error_line(reserved)


async def test_delegate_wait_without_a_final_answer_fails_naming_the_limit(
    capsys: pytest.CaptureFixture[str],
) -> None:
    # In process: the real wait ends with the node's timeout answer, 60 s
    # after max_duration at the latest; this stands in for a node that never sends it.
    task_id = "task-6f1c2a9e-4b7d-4c21-9e0a-3d5b8f217c44"

    class SilentTasks:
        def __init__(self) -> None:
            self.set_aside: list[Any] = []

        async def delegate(self, *args: Any, **kwargs: Any) -> str:
            return task_id

        async def wait(self, waited: str, *, limit: float) -> list[Any]:
            assert (waited, limit) == (task_id, 90.0)
            raise TimeoutError

    args = argparse.Namespace(
        to="did:ocp:testnet:agent-0123456789ab", task_type="segmentation", data="null",
        max_duration=30, description=None, capability=[], min_trust_level=None,
    )  # fmt: skip
    with pytest.raises(agent_cli.AgentCliError) as failed:
        await agent_cli._delegate(args, SilentTasks(), wait=True)  # type: ignore[arg-type]
    assert str(failed.value) == f"no final answer for {task_id} within 90 s"
    assert json.loads(capsys.readouterr().out) == {"task_id": task_id}
