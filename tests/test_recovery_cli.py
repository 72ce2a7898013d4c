"""``ocpd agent recovery split|recover|rotate`` as subprocesses against real daemons.

Three custodians over TLS: one daemon runs the registry, the node and the
first custodian (``--component all``), two more run ``--component
custodian`` and ask that registry about agents. An agent registers with a
recovery key, splits its key 2 of 3, loses it, recovers it with one
custodian down, and again with no recovery key by having each custodian's
operator approve the request (``ocpd custodian approve``); then rotates.
The node takes the new key and refuses the old one.
"""

from __future__ import annotations

import json
import re
import ssl
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from custodian_world import World, running_world
from daemon_process import run_cli
from ocpd.client.recovery import Manifest, ManifestError
from ocpd.identity import read_key_file
from ocpd.proto.ids import key_fingerprint


@pytest.fixture
def world(tmp_path: Path) -> Iterator[World]:
    with running_world(tmp_path) as made:
        yield made


def one_error_line(result: subprocess.CompletedProcess[str]) -> str:
    assert result.returncode == 1, result.stdout
    lines = result.stderr.strip().splitlines()
    assert lines and lines[-1].startswith("ocpd agent: "), result.stderr
    return lines[-1]


def ping(world: World, key: str, agent_id: str) -> subprocess.CompletedProcess[str]:
    """A signed message from the agent to itself through the node, over HTTPS."""
    return world.agent(
        "send", "--key", key, "--via", "http", "--to", agent_id,
        "--type", "ack", "--payload", '{"status": "received"}',
    )  # fmt: skip


def test_split_recover_approve_and_rotate_from_the_shell(world: World) -> None:
    key, recovery = world.path("agent.key"), world.path("recovery.key")
    agent_id = world.agent("keygen", "--out", key).stdout.strip()
    assert world.agent("keygen", "--out", recovery).returncode == 0
    world.ok(
        "register", "--key", key, "--recovery-key", recovery, "--domain", "healthcare.oncology",
        "--capability", "cap:vision:imaging", "--endpoint", "https://agent.example/ocp",
    )  # fmt: skip
    seed = read_key_file(Path(key)).seed()

    # Split 2 of 3; the second custodian is pinned to its agent id.
    c1, c2, c3 = world.urls
    context = ssl.create_default_context(cafile=str(world.tls.ca_file))
    c2_agent = httpx.get(f"{c2}/ocp/v1/custodian", verify=context).json()["agent_id"]
    manifest = world.path("manifest.json")
    split = world.ok(
        "recovery", "split", "--key", key, "--recovery-key", recovery, "--threshold", "2",
        "--custodian", c1, "--custodian", f"{c2}={c2_agent}", "--custodian", c3,
        "--manifest", manifest,
    )  # fmt: skip
    assert split["manifest"] == manifest and split["agent_id"] == agent_id
    assert [c["share_index"] for c in split["custodians"]] == [1, 2, 3]
    assert split["custodians"][1]["custodian_id"] == c2_agent
    assert oct(Path(manifest).stat().st_mode & 0o777) == "0o600"
    text = Path(manifest).read_text()
    assert seed.hex() not in text and "seed" not in text
    loaded = Manifest.load(manifest)
    assert loaded.threshold == 2 and loaded.urls == [c1, c2, c3]
    assert loaded.fingerprint == key_fingerprint(read_key_file(Path(key)).public_key)

    # Nothing is overwritten, and a custodian that is not the one pinned is refused.
    again = world.agent(
        "recovery", "split", "--key", key, "--recovery-key", recovery, "--threshold", "2",
        "--custodian", c1, "--custodian", c2, "--custodian", c3, "--manifest", manifest,
    )  # fmt: skip
    assert "already exists" in one_error_line(again)
    wrong_pin = world.agent(
        "recovery", "split", "--key", key, "--recovery-key", recovery, "--threshold", "2",
        "--custodian", f"{c1}={c2_agent}", "--custodian", c2, "--custodian", c3,
        "--manifest", world.path("other.json"),
    )  # fmt: skip
    assert "not the expected" in one_error_line(wrong_pin)
    assert not Path(world.path("other.json")).exists()

    # The key is lost; one custodian is down. Two answer, proved by the recovery key.
    Path(key).rename(world.path("lost.key"))
    world.daemons[2].stop()
    recovered = world.ok(
        "recovery", "recover", "--manifest", manifest, "--recovery-key", recovery,
        "--out", world.path("recovered.key"),
    )  # fmt: skip
    assert read_key_file(Path(world.path("recovered.key"))).seed() == seed
    assert sorted(recovered["answered"]) == sorted([c1, c2])
    assert list(recovered["failures"]) == [c3] and recovered["disagreeing"] == []
    assert json.loads(Path(world.path("recovered.key")).read_text())["agent_id"] == agent_id
    world.daemons[2].start().wait_ready()

    # No recovery key: each custodian's operator approves the request by hand.
    waiting = subprocess.Popen(
        [sys.executable, "-m", "ocpd", "agent", "recovery", "recover", "--manifest", manifest,
         "--out", world.path("approved.key"), "--poll", "0.2", "--wait-approval", "60"],
        env=world.env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    assert waiting.stderr is not None
    asked: dict[str, str] = {}
    while len(asked) < 3:
        line = waiting.stderr.readline()
        assert line, "the recovery ended before every custodian asked for approval"
        found = re.search(r"(https://\S+) waits for its operator: .*approve (rr-[0-9a-f]+)`", line)
        if found:
            asked[found.group(1)] = found.group(2)
    assert sorted(asked) == sorted(world.urls)
    for daemon in world.daemons[:2]:
        listed = run_cli(["custodian", "requests", "--json"], env=daemon.env)
        assert asked[daemon.listeners["custodian"]] in listed.stdout, listed.stderr
        approved = run_cli(
            ["custodian", "approve", asked[daemon.listeners["custodian"]]], env=daemon.env
        )
        assert approved.returncode == 0, approved.stderr
    # Two approvals rebuild the key; the third custodian is no longer waited for.
    out, err = waiting.communicate(timeout=30)
    assert waiting.returncode == 0, err
    answer = json.loads(out)
    assert sorted(answer["answered"]) == sorted([c1, c2])
    assert "not needed" in answer["failures"][c3]
    assert read_key_file(Path(world.path("approved.key"))).seed() == seed

    # Rotate: new key file and manifest, old key revoked, old shares revoked.
    rotated = world.ok(
        "recovery", "rotate", "--key", world.path("recovered.key"), "--manifest", manifest,
        "--out", world.path("new.key"), "--new-manifest", world.path("new-manifest.json"),
    )  # fmt: skip
    assert rotated["agent_id"] == agent_id
    assert rotated["revoked"] == sorted(world.urls) and rotated["revoke_failures"] == {}
    assert [c["share_index"] for c in rotated["custodians"]] == [1, 2, 3]
    new_key = read_key_file(Path(world.path("new.key")))
    assert rotated["key_fingerprint"] == key_fingerprint(new_key.public_key)
    assert json.loads(Path(world.path("new.key")).read_text())["agent_id"] == agent_id

    # The node takes the new key and refuses the old one.
    assert ping(world, world.path("new.key"), agent_id).returncode == 0
    assert "OCP-401" in one_error_line(ping(world, world.path("recovered.key"), agent_id))

    # The old manifest's shares are gone; the new one recovers the new key.
    gone = world.agent(
        "recovery", "recover", "--manifest", manifest, "--recovery-key", recovery,
        "--out", world.path("stale.key"),
    )  # fmt: skip
    assert "too_few_shares" in one_error_line(gone) or "needed" in one_error_line(gone)
    assert not Path(world.path("stale.key")).exists()
    world.ok(
        "recovery", "recover", "--manifest", world.path("new-manifest.json"),
        "--recovery-key", recovery, "--out", world.path("again.key"),
    )  # fmt: skip
    assert read_key_file(Path(world.path("again.key"))).seed() == new_key.seed()


def test_manifest_errors_name_the_field(tmp_path: Path) -> None:
    good = {
        "format": "ocpd-recovery-manifest/1",
        "agent_id": "did:ocp:testnet:agent-25dc6af5b9ab",
        "key_fingerprint": "25dc6af5b9ab0ab0",
        "threshold": 2,
        "total_shares": 3,
        "recovery_public_key": "8_Tvw" + "A" * 38,
        "recovery_key_id": "did:ocp:testnet:agent-25dc6af5b9ab#recovery-key-1",
        "created_at": "2026-11-22T00:00:00Z",
        "custodians": [
            {
                "url": f"https://c{n}.example:8423",
                "custodian_id": "did:ocp:testnet:agent-0123456789ab",
                "share_id": f"share-25dc6af5b9ab-{n}",
                "share_index": n,
                "note": "",
            }
            for n in (1, 2, 3)
        ],
    }
    manifest = Manifest.from_json(good)
    assert Manifest.from_json(manifest.to_json()) == manifest
    cases: list[tuple[dict[str, Any], str]] = [
        ({"format": "other"}, "not a recovery manifest"),
        ({"agent_id": "alice"}, "agent id"),
        ({"threshold": 1}, "threshold must be a whole number from 2"),
        ({"threshold": 4}, "larger than total_shares"),
        ({"recovery_public_key": "abc"}, "recovery_public_key"),
        ({"custodians": {}}, "custodians must be a list"),
        ({"custodians": [{**good["custodians"][0], "share_index": True}]}, "[0].share_index"),
        ({"custodians": [good["custodians"][0]] * 2}, "listed twice"),
    ]  # fmt: skip
    for change, expected in cases:
        with pytest.raises(ManifestError, match=re.escape(expected)):
            Manifest.from_json({**good, **change})
    broken = tmp_path / "broken.json"
    broken.write_text("{")
    with pytest.raises(ManifestError, match="not JSON"):
        Manifest.load(broken)
    with pytest.raises(ManifestError, match="cannot read"):
        Manifest.load(tmp_path / "missing.json")
    saved = tmp_path / "saved.json"
    manifest.save(saved)
    assert Manifest.load(saved) == manifest
    with pytest.raises(FileExistsError):
        manifest.save(saved)
