"""Key recovery end to end: five custodian processes, threshold three.

One daemon runs the registry, a transport node and the first custodian
(``--component all``); four more run ``--component custodian`` and look
agents up in that registry over HTTP. Every custodian has a database key
file. An agent registers, splits its key over the five, loses it, and gets
it back from the three still running (one of them restarted in between);
then it rotates: new key in its DID document, old key revoked, old shares
revoked, new shares deposited. The node accepts the new key and refuses the
old one.
"""

from __future__ import annotations

import json
import sqlite3
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from daemon_process import Daemon, free_port, run_cli
from ocpd.client import AgentKey, RegistryClient
from ocpd.client.custodian import CustodianClient, CustodianRefused
from ocpd.client.recovery import distribute_shares, recover_key_from, rotate_after_recovery
from ocpd.custodian.store import DatabaseKey
from ocpd.proto.auth import message_post_headers
from ocpd.proto.crypto import SigningKey, X25519KeyPair
from ocpd.proto.envelope import build_message, sign_message
from ocpd.proto.errors import MalformedError
from ocpd.proto.ids import key_fingerprint

NETWORK = "testnet"
THRESHOLD = 3


class Custodians:
    def __init__(self, tmp: Path) -> None:
        self.tmp = tmp
        self.daemons: list[Daemon] = []

    def key_file(self, name: str) -> Path:
        path = self.tmp / f"{name}.key"
        DatabaseKey.generate().write(path)
        return path

    def start(self) -> None:
        first = Daemon(
            self.tmp / "c1",
            component="all",
            env={
                "OCP_CUSTODIAN_DEV_MODE": "false",
                "OCP_CUSTODIAN_KEY_FILE": str(self.key_file("c1")),
            },
        )
        self.daemons.append(first.start())
        first.wait_ready()
        for n in range(2, 6):
            daemon = Daemon(
                self.tmp / f"c{n}",
                component="custodian",
                env={
                    "OCP_CUSTODIAN_DEV_MODE": "false",
                    "OCP_CUSTODIAN_KEY_FILE": str(self.key_file(f"c{n}")),
                    "OCP_CUSTODIAN_PORT": str(free_port()),
                    "OCP_REGISTRY_URL": first.listeners["registry"],
                },
            )
            self.daemons.append(daemon.start())
        for daemon in self.daemons[1:]:
            daemon.wait_ready()

    @property
    def urls(self) -> list[str]:
        return [d.listeners["custodian"] for d in self.daemons]

    @property
    def registry_url(self) -> str:
        return self.daemons[0].listeners["registry"]

    @property
    def node_url(self) -> str:
        return self.daemons[0].listeners["http"]

    def clients(self) -> list[CustodianClient]:
        return [CustodianClient(url) for url in self.urls]


@pytest.fixture
def custodians(tmp_path: Path) -> Iterator[Custodians]:
    world = Custodians(tmp_path)
    try:
        world.start()
        yield world
    finally:
        for daemon in world.daemons:
            daemon.stop()


async def _post_to_node(node_url: str, agent: AgentKey) -> int:
    """A signed message from ``agent`` to itself through the node: the node's status."""
    message = build_message(
        sender=agent.agent_id,
        receiver=agent.agent_id,
        message_type="ack",
        payload={"status": "received"},
        now=time.time(),
    )
    body = json.dumps(sign_message(message, agent.key)).encode()
    headers = message_post_headers(
        agent.key,
        agent_id=agent.agent_id,
        path_and_query="/ocp/v1/messages",
        body=body,
        now=time.time(),
    )
    headers["Content-Type"] = "application/json"
    async with httpx.AsyncClient() as http:
        response = await http.post(node_url + "/ocp/v1/messages", content=body, headers=headers)
    return response.status_code


async def test_five_custodians_recover_and_rotate(custodians: Custodians, tmp_path: Path) -> None:
    agent = AgentKey.generate(NETWORK)
    recovery = SigningKey.generate()
    async with RegistryClient(custodians.registry_url, agent) as registry:
        record = registry.build_record(
            display_name="recovering agent",
            capabilities=[{"id": "cap:vision:imaging", "name": "Imaging", "version": "1.0"}],
            domains=["healthcare.oncology"],
            endpoints=[
                {"transport": "ocp-http", "url": "https://agent.example/ocp", "priority": 1}
            ],
        )
        await registry.register(record, agent.did_document(recovery_public_key=recovery.public_key))
    clients = custodians.clients()
    try:
        # Fewer custodians than the threshold is refused before anything is sent.
        with pytest.raises(MalformedError, match="custodians"):
            await distribute_shares(
                agent, clients[:2], threshold=THRESHOLD, recovery_public_key=recovery.public_key
            )
        deposits = await distribute_shares(
            agent, clients, threshold=THRESHOLD, recovery_public_key=recovery.public_key
        )
        assert [d.share_index for d in deposits] == [1, 2, 3, 4, 5]
        assert len({d.custodian_id for d in deposits}) == 5
        fingerprint = key_fingerprint(agent.key.public_key)

        # One custodian restarts (its shares are on disk); two go away for good.
        restarted = custodians.daemons[1]
        assert restarted.stop() == 0
        restarted.start().wait_ready()
        for daemon in custodians.daemons[3:]:
            daemon.stop()

        recovered = await recover_key_from(
            clients,
            agent_id=agent.agent_id,
            fingerprint=fingerprint,
            threshold=THRESHOLD,
            recovery_key=recovery,
            now=time.time(),
        )
        assert recovered.key.seed() == agent.key.seed()
        assert sorted(recovered.answered.values()) == [1, 2, 3]
        assert sorted(recovered.failures) == sorted(custodians.urls[3:])
        assert recovered.disagreeing == ()

        # Each running custodian's database holds no share bytes in the clear.
        for daemon in custodians.daemons[:3]:
            for path in daemon.data_dir.rglob("ocp_node.db*"):
                assert recovered.key.seed() not in path.read_bytes()

        # Rotate with the recovered key: DID update, old shares revoked, new ones out.
        old = AgentKey(recovered.key, NETWORK)
        alive = clients[:3]
        async with RegistryClient(custodians.registry_url, old) as registry:
            rotated = await rotate_after_recovery(
                old,
                registry,
                old_deposits=deposits,
                old_custodians=clients,
                new_custodians=alive,
                threshold=THRESHOLD,
                recovery_public_key=recovery.public_key,
            )
        assert rotated.agent.agent_id == agent.agent_id
        assert rotated.revoked == tuple(sorted(custodians.urls[:3]))
        assert sorted(rotated.revoke_failures) == sorted(custodians.urls[3:])
        assert [d.share_index for d in rotated.deposits] == [1, 2, 3]
        new_fingerprint = key_fingerprint(rotated.agent.key.public_key)
        assert {d.fingerprint for d in rotated.deposits} == {new_fingerprint}

        # The old key's shares are gone; the new key's come back.
        with pytest.raises(CustodianRefused) as gone:
            await alive[0].request_share(
                agent_id=agent.agent_id,
                fingerprint=fingerprint,
                ephemeral=X25519KeyPair.generate(),
                recovery_key=recovery,
                recovery_key_id=f"{agent.agent_id}#recovery-key-1",
                now=time.time(),
            )
        assert gone.value.code == "OCP-404"
        again = await recover_key_from(
            alive,
            agent_id=agent.agent_id,
            fingerprint=new_fingerprint,
            threshold=THRESHOLD,
            recovery_key=recovery,
            now=time.time(),
        )
        assert again.key.seed() == rotated.agent.key.seed()

        # The node takes messages signed by the new key and refuses the old one.
        assert await _post_to_node(custodians.node_url, rotated.agent) == 202
        assert await _post_to_node(custodians.node_url, old) == 401
    finally:
        for client in clients:
            await client.aclose()

    # The operator sees the audit trail of the first custodian; no share bytes in it.
    database = custodians.daemons[0].data_dir / "custodian" / "ocp_node.db"
    with sqlite3.connect(f"file:{database}?mode=ro", uri=True) as conn:
        rows = conn.execute("SELECT event, outcome, detail FROM audit ORDER BY seq").fetchall()
    assert [(event, outcome) for event, outcome, _ in rows] == [
        ("share_deposit", "stored"),
        ("recovery_request", "answered"),
        ("share_revoke", "revoked"),
        ("share_deposit", "stored"),
        ("recovery_request", "OCP-404"),
        ("recovery_request", "answered"),
    ]
    assert all(recovered.key.seed().hex() not in detail for _, _, detail in rows)


def test_custodian_refuses_to_start_without_a_key(tmp_path: Path) -> None:
    env = {
        "OCP_DATA_DIR": str(tmp_path),
        "OCP_CUSTODIAN_PORT": "0",
        "PATH": "/usr/bin:/bin",
    }
    result = run_cli(["run", "--component", "custodian"], env=env)
    assert result.returncode == 1
    assert "custodian.key_file" in result.stderr and "OCP_CUSTODIAN_DEV_MODE" in result.stderr
    # A key file other users may read is refused too, naming the file.
    loose = tmp_path / "loose.key"
    DatabaseKey.generate().write(loose)
    loose.chmod(0o644)
    result = run_cli(
        ["run", "--component", "custodian"], env={**env, "OCP_CUSTODIAN_KEY_FILE": str(loose)}
    )
    assert result.returncode == 1 and "open to other users" in result.stderr
    # ocpd custodian keygen writes one that is accepted.
    # (even when the configuration already names the file it is to make).
    key = tmp_path / "custodian.key"
    made = run_cli(
        ["custodian", "keygen", str(key)], env={**env, "OCP_CUSTODIAN_KEY_FILE": str(key)}
    )
    assert made.returncode == 0 and oct(key.stat().st_mode & 0o777) == "0o600"
    assert run_cli(["custodian", "keygen", str(key)], env=env).returncode == 1
