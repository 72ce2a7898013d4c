"""``ocpd identity rotate`` and the node-overlap-bundle.v1 it can write (NET FR-002b/c)."""

from __future__ import annotations

import copy
import io
import json
import os
import socket
import sqlite3
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import trio

from daemon_process import Daemon
from ocpd import cli
from ocpd.control import call, daemon_listening
from ocpd.identity import (
    IdentityError,
    init_identity,
    load_identity,
    read_key_file,
    rotate_identity,
)
from ocpd.net.adverts import SEQUENCE_KEY, OwnAdvertisement, sequence_key
from ocpd.proto.crypto import SigningKey, ed25519_verify
from ocpd.proto.encoding import b64url_decode, b64url_encode
from ocpd.proto.errors import NetError
from ocpd.proto.ids import derive_agent_id, format_node_id
from ocpd.proto.overlap import (
    NO_CONTINUITY,
    build_overlap_bundle,
    overlap_signing_input,
    verify_overlap_bundle,
)
from ocpd.storage import open_database

T0 = 1_775_217_600.0  # 2026-04-03T12:00:00Z
OLD = SigningKey(bytes([7]) * 32)
NEW = SigningKey(bytes([8]) * 32)
THIRD = SigningKey(bytes([9]) * 32)
ENDPOINTS = [{"transport": "wss", "url": "wss://a.example:8421/ocp/v1/peer", "priority": 1}]


def _env(data_dir: Path) -> dict[str, str]:
    return {
        **{k: v for k, v in os.environ.items() if not k.startswith(("OCP_", "NOTIFY_SOCKET"))},
        "OCP_DATA_DIR": str(data_dir),
        "OCP_NETWORK": "testnet",
    }


def _cli(args: list[str], env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    """``python -m ocpd`` with no terminal on stdin (as in a script)."""
    return subprocess.run(
        [sys.executable, "-m", "ocpd", *args],
        env=env,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )


@pytest.fixture
def daemons() -> Iterator[list[Daemon]]:
    started: list[Daemon] = []
    yield started
    for daemon in started:
        daemon.stop()


# ------------------------------------------------------------------ the overlap bundle


def test_bundle_is_signed_by_both_keys_over_the_same_bytes() -> None:
    bundle = build_overlap_bundle(OLD, NEW, now=T0)
    link = verify_overlap_bundle(json.loads(json.dumps(bundle)))
    assert (link.predecessor, link.successor) == (
        format_node_id(OLD.public_key),
        format_node_id(NEW.public_key),
    )
    assert link.created_at == T0
    assert bundle["statement"] == NO_CONTINUITY
    assert bundle["predecessor"]["key/public"] == b64url_encode(OLD.public_key)
    message = overlap_signing_input(bundle)
    assert message.startswith(b"node-overlap-bundle.v1\x00{")
    for role, key in (("predecessor", OLD), ("successor", NEW)):
        signature = b64url_decode(bundle["signatures"][role])
        assert ed25519_verify(key.public_key, message, signature)
    with pytest.raises(NetError) as exc:
        build_overlap_bundle(OLD, OLD, now=T0)
    assert exc.value.code == "E_PROTO_INVALID"


def _swap_ids(b: dict[str, Any]) -> None:
    p, s = b["predecessor"], b["successor"]
    p["node/id"], s["node/id"] = s["node/id"], p["node/id"]


def _swap_parties(b: dict[str, Any]) -> None:
    b["predecessor"], b["successor"] = b["successor"], b["predecessor"]


def _swap_signatures(b: dict[str, Any]) -> None:
    sigs = b["signatures"]
    sigs["predecessor"], sigs["successor"] = sigs["successor"], sigs["predecessor"]


def _flip(role: str) -> Callable[[dict[str, Any]], None]:
    def flip(b: dict[str, Any]) -> None:
        raw = bytearray(b64url_decode(b["signatures"][role]))
        raw[0] ^= 1
        b["signatures"][role] = b64url_encode(bytes(raw))

    return flip


def _third_successor(b: dict[str, Any]) -> None:
    b["successor"] = {
        "node/id": format_node_id(THIRD.public_key),
        "key/public": b64url_encode(THIRD.public_key),
    }


def _same_twice(b: dict[str, Any]) -> None:
    b["successor"] = dict(b["predecessor"])


TAMPERINGS: list[tuple[str, Callable[[dict[str, Any]], None], str]] = [
    ("predecessor-signature", _flip("predecessor"), "E_SIG_INVALID"),
    ("successor-signature", _flip("successor"), "E_SIG_INVALID"),
    ("signatures-swapped", _swap_signatures, "E_SIG_INVALID"),
    ("ids-swapped", _swap_ids, "E_SIG_UNKNOWN_SIGNER"),
    ("parties-swapped", _swap_parties, "E_SIG_INVALID"),
    ("successor-replaced", _third_successor, "E_SIG_INVALID"),
    (
        "created-at-edited",
        lambda b: b.update({"created-at": "2026-04-03T12:00:01Z"}),
        "E_SIG_INVALID",
    ),
    ("statement-edited", lambda b: b.update(statement="continuity granted"), "E_PROTO_INVALID"),
    ("extra-field", lambda b: b.update({"trust/carry-over": True}), "E_PROTO_INVALID"),
    ("same-id-twice", _same_twice, "E_PROTO_INVALID"),
    ("signature-missing", lambda b: b["signatures"].pop("successor"), "E_PROTO_INVALID"),
]


@pytest.mark.parametrize(
    ("tamper", "code"), [pytest.param(t, c, id=name) for name, t, c in TAMPERINGS]
)
def test_tampered_bundle_is_refused(tamper: Callable[[dict[str, Any]], None], code: str) -> None:
    bundle = copy.deepcopy(build_overlap_bundle(OLD, NEW, now=T0))
    tamper(bundle)
    with pytest.raises(NetError) as exc:
        verify_overlap_bundle(bundle)
    assert exc.value.code == code


def test_bundle_that_is_not_an_object_is_refused() -> None:
    with pytest.raises(NetError) as exc:
        verify_overlap_bundle([])
    assert exc.value.code == "E_PROTO_INVALID"


# ------------------------------------------------------------------ rotation on disk


def test_rotation_gives_a_new_id_and_retires_the_old_material_intact(tmp_path: Path) -> None:
    before = init_identity(tmp_path, now=T0)
    identity_dir = tmp_path / "identity"
    old_record = (identity_dir / "node-identity.json").read_bytes()
    old_key = (identity_dir / "node.key").read_bytes()

    rotation = rotate_identity(tmp_path, now=T0 + 60, key=NEW)

    assert rotation.previous.node_id == before.node_id
    assert rotation.current.node_id == format_node_id(NEW.public_key) != before.node_id
    assert rotation.current.service_agent_id("testnet") != before.service_agent_id("testnet")
    assert rotation.current.service_agent_id("testnet") == derive_agent_id(
        NEW.public_key, "testnet"
    )
    fingerprint = before.node_id.removeprefix("node:did:key:")
    assert rotation.retired == identity_dir / "retired" / f"20260403T120100Z-{fingerprint}"
    assert (rotation.retired / "node-identity.json").read_bytes() == old_record
    assert (rotation.retired / "node.key").read_bytes() == old_key
    assert (rotation.retired / "node.key").stat().st_mode & 0o777 == 0o600
    assert read_key_file(rotation.retired / "node.key").public_key == before.key.public_key

    loaded = load_identity(tmp_path)
    assert loaded.node_id == rotation.current.node_id
    assert loaded.record["identity/status"] == "active"
    assert loaded.record["key/storage-ref"] == "local-file:node.key"
    assert (identity_dir / "node.key").stat().st_mode & 0o777 == 0o600
    assert sorted(p.name for p in identity_dir.iterdir()) == [
        "node-identity.json",
        "node.key",
        "retired",
    ]

    # a second rotation keeps both earlier identities
    again = rotate_identity(tmp_path, now=T0 + 120)
    assert len(list((identity_dir / "retired").iterdir())) == 2
    assert again.previous.node_id == rotation.current.node_id
    with pytest.raises(IdentityError):
        rotate_identity(tmp_path, now=T0 + 180, key=again.current.key)


def test_rotation_needs_an_identity(tmp_path: Path) -> None:
    with pytest.raises(IdentityError, match="identity init"):
        rotate_identity(tmp_path, now=T0)


async def _next_sequence(path: Path, key: SigningKey) -> int:
    with trio.fail_after(30):
        db = await open_database(path, "node")
        async with trio.open_nursery() as nursery:
            await nursery.start(db.run)
            try:
                made = await OwnAdvertisement(db, key).next(endpoints=ENDPOINTS, now=T0)
            finally:
                db.close()
    return int(made["sequence/no"])


async def test_advertisement_sequence_starts_fresh_for_the_new_id(tmp_path: Path) -> None:
    """A counter written before counters were per node id stays with the old id."""
    data = tmp_path / "data"
    old_id = init_identity(data, now=T0).node_id
    db_path = data / "node" / "ocp_node.db"
    assert await _next_sequence(db_path, OLD) == 1  # create the database
    conn = sqlite3.connect(db_path)
    with conn:
        conn.execute("DELETE FROM ocpd_meta WHERE key LIKE 'net/advertisement-sequence%'")
        conn.execute("INSERT INTO ocpd_meta (key, value) VALUES (?, '41')", (SEQUENCE_KEY,))
    conn.close()

    result = await trio.to_thread.run_sync(_cli, ["identity", "rotate", "--yes"], _env(data))
    assert result.returncode == 0, result.stderr
    new = load_identity(data)

    conn = sqlite3.connect(db_path)
    rows = dict(conn.execute("SELECT key, value FROM ocpd_meta WHERE key LIKE 'net/adv%'"))
    conn.close()
    assert rows == {sequence_key(old_id): "41"}
    assert await _next_sequence(db_path, new.key) == 1
    assert await _next_sequence(db_path, new.key) == 2
    old_key = read_key_file(next((data / "identity" / "retired").iterdir()) / "node.key")
    assert await _next_sequence(db_path, old_key) == 42


# ------------------------------------------------------------------ the command line


def test_rotation_is_refused_without_yes_in_a_script(tmp_path: Path) -> None:
    env = _env(tmp_path)
    assert _cli(["identity", "init"], env).returncode == 0
    before = (tmp_path / "identity" / "node-identity.json").read_bytes()
    result = _cli(["identity", "rotate"], env)
    assert result.returncode == 1
    assert "new node id" in result.stderr and "service agent id" in result.stderr
    assert "--yes" in result.stderr and "Traceback" not in result.stderr
    assert (tmp_path / "identity" / "node-identity.json").read_bytes() == before
    assert not (tmp_path / "identity" / "retired").exists()


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


@pytest.mark.parametrize(("answer", "rotated"), [("no\n", False), ("rotate\n", True)])
def test_rotation_asks_at_a_terminal(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    answer: str,
    rotated: bool,
) -> None:
    for name in [k for k in os.environ if k.startswith("OCP_")]:
        monkeypatch.delenv(name)
    monkeypatch.setenv("OCP_DATA_DIR", str(tmp_path))
    before = init_identity(tmp_path, now=T0).node_id
    monkeypatch.setattr(sys, "stdin", _Terminal(answer))
    assert cli.main(["identity", "rotate"]) == (0 if rotated else 1)
    out, err = capsys.readouterr()
    assert "new service agent id" in err
    assert (load_identity(tmp_path).node_id != before) is rotated
    assert (f"old node id: {before}" in out) is rotated


def test_stale_control_socket_is_not_a_running_daemon(tmp_path: Path) -> None:
    path = tmp_path / "ocpd.sock"
    assert daemon_listening(path) is False
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as left_behind:
        left_behind.bind(str(path))
    assert path.exists() and daemon_listening(path) is False
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as live:
        path.unlink()
        live.bind(str(path))
        live.listen(1)
        assert daemon_listening(path) is True
    assert daemon_listening(tmp_path / ("x" * 120)) is None


def test_rotate_with_the_daemon_stopped_and_start_with_the_new_id(
    tmp_path: Path, daemons: list[Daemon]
) -> None:
    data = tmp_path / "d"
    env = _env(data)
    daemon = Daemon(data)
    daemons.append(daemon)
    daemon.start()
    daemon.wait_ready()
    old_id = daemon.wait_for("identity/generated")["node/self"]
    old_shown = json.loads(_cli(["identity", "show"], env).stdout)
    bundle = tmp_path / "overlap.json"

    refused = _cli(["identity", "rotate", "--yes", "--overlap-bundle", str(bundle)], env)
    assert refused.returncode == 1
    assert "running" in refused.stderr and "stop it" in refused.stderr
    assert not bundle.exists() and not (data / "identity" / "retired").exists()
    assert load_identity(data).node_id == old_id

    assert daemon.stop() == 0
    rotated = _cli(["identity", "rotate", "--yes", "--overlap-bundle", str(bundle)], env)
    assert rotated.returncode == 0, rotated.stderr
    new_shown = json.loads(_cli(["identity", "show"], env).stdout)
    new_id = new_shown["record"]["node/id"]
    assert new_id != old_id
    assert new_shown["service_agent_id"] != old_shown["service_agent_id"]
    assert f"old node id: {old_id}" in rotated.stdout
    assert f"new node id: {new_id}" in rotated.stdout
    assert f"new service agent id: {new_shown['service_agent_id']}" in rotated.stdout
    (retired,) = (data / "identity" / "retired").iterdir()
    assert str(retired) in rotated.stdout and str(bundle) in rotated.stdout
    assert json.loads((retired / "node-identity.json").read_text()) == old_shown["record"]
    assert (data / "identity" / "node.key").stat().st_mode & 0o777 == 0o600

    again = _cli(["identity", "rotate", "--yes", "--overlap-bundle", str(bundle)], env)
    assert again.returncode == 1 and "already exists" in again.stderr
    assert load_identity(data).node_id == new_id

    checked = _cli(["identity", "verify-overlap", str(bundle)], env)
    assert checked.returncode == 0, checked.stderr
    assert f"predecessor: {old_id}" in checked.stdout
    assert f"successor: {new_id}" in checked.stdout
    tampered = json.loads(bundle.read_text())
    tampered["created-at"] = "2020-01-01T00:00:00Z"
    bad = tmp_path / "tampered.json"
    bad.write_text(json.dumps(tampered))
    refused_bundle = _cli(["identity", "verify-overlap", str(bad)], env)
    assert refused_bundle.returncode == 1
    assert refused_bundle.stderr.startswith("ocpd: E_SIG_INVALID: ")
    bad.write_text("{not json")
    not_json = _cli(["identity", "verify-overlap", str(bad)], env)
    assert not_json.returncode == 1 and "E_PROTO_INVALID" in not_json.stderr

    daemon.start()
    daemon.wait_ready()
    loaded = daemon.wait_for("identity/loaded")
    assert loaded["node/self"] == new_id
    assert loaded["service_agent_id"] == new_shown["service_agent_id"]
    assert daemon.stop() == 0


@pytest.mark.parametrize("component", ["registry", "custodian"])
def test_a_daemon_without_the_node_component_is_noticed_too(
    tmp_path: Path, daemons: list[Daemon], component: str
) -> None:
    data = tmp_path / "d"
    env = _env(data)
    daemon = Daemon(data, component=component)
    daemons.append(daemon)
    daemon.start()
    daemon.wait_ready()
    status = call(data / "ocpd.sock", "daemon.status")
    assert daemon.proc is not None
    assert status["components"] == [component] and status["pid"] == daemon.proc.pid
    refused = _cli(["identity", "rotate", "--yes"], env)
    assert refused.returncode == 1 and "running" in refused.stderr
    assert not (data / "identity" / "retired").exists()
    assert daemon.stop() == 0
    assert _cli(["identity", "rotate", "--yes"], env).returncode == 0
