"""The real ocpd daemon as a subprocess: ports, health, metrics, TLS, signals, storage."""

from __future__ import annotations

import json
import signal
import socket
import sqlite3
import ssl
import threading
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from daemon_process import Daemon, TlsFiles, run_cli
from ocpd.storage import integrity_check

HEALTH_FIELDS = {
    "status",
    "component",
    "version",
    "network",
    "uptime_seconds",
    "database",
    "checks",
}
CHECK_FIELDS = {"database_writable", "disk_space_ok", "memory_ok"}
PORTS = {
    "node": {"http", "ws"},
    "registry": {"registry"},
    "custodian": {"custodian"},
    "all": {"http", "ws", "registry", "custodian"},
}
OWNER = {"http": "node", "ws": "node", "registry": "registry", "custodian": "custodian"}


@pytest.fixture(scope="module")
def tls(tmp_path_factory: pytest.TempPathFactory) -> TlsFiles:
    return TlsFiles(tmp_path_factory.mktemp("tls"))


@pytest.fixture
def daemons() -> Iterator[list[Daemon]]:
    started: list[Daemon] = []
    yield started
    for daemon in started:
        daemon.stop()


def _start(daemons: list[Daemon], *args: object, **kwargs: object) -> Daemon:
    daemon = Daemon(*args, **kwargs)  # type: ignore[arg-type]
    daemons.append(daemon)
    daemon.start()
    return daemon


@pytest.mark.parametrize("component", ["node", "registry", "custodian", "all"])
def test_component_binds_its_ports_and_reports_health(
    tmp_path: Path, tls: TlsFiles, daemons: list[Daemon], component: str
) -> None:
    daemon = _start(daemons, tmp_path, component=component, tls=tls)
    listeners = daemon.wait_ready()
    assert set(listeners) == PORTS[component]
    for name, url in listeners.items():
        assert url.startswith("https://127.0.0.1:")
        status, body, content_type = daemon.get(name, "/health")
        assert status == 200 and content_type.startswith("application/json")
        health = json.loads(body)
        assert set(health) == HEALTH_FIELDS and set(health["checks"]) == CHECK_FIELDS
        assert health["status"] == "healthy" and health["database"] == "connected"
        assert health["component"] == OWNER[name]
        assert health["network"] == "testnet" and all(health["checks"].values())
        assert isinstance(health["uptime_seconds"], int)
    assert daemon.stop() == 0


def test_metrics_parse_as_prometheus_text(
    tmp_path: Path, tls: TlsFiles, daemons: list[Daemon]
) -> None:
    daemon = _start(daemons, tmp_path, tls=tls)
    daemon.wait_ready()
    daemon.get("registry", "/health")
    status, body, content_type = daemon.get("registry", "/metrics")
    assert status == 200 and content_type.startswith("text/plain")
    families = {f.name: f for f in text_string_to_metric_families(body.decode())}
    assert families["ocp_request_duration_seconds"].type == "histogram"
    sizes = {s.labels["component"]: s.value for s in families["ocp_database_size_bytes"].samples}
    assert set(sizes) == {"node", "registry", "custodian"} and all(v > 0 for v in sizes.values())
    observed = [
        s
        for s in families["ocp_request_duration_seconds"].samples
        if s.name.endswith("_count") and s.labels["endpoint"] == "/health"
    ]
    assert observed and observed[0].value >= 1


def test_invalid_configuration_exits_1_naming_the_key(tmp_path: Path) -> None:
    config = tmp_path / "ocpd.yml"
    config.write_text("transport:\n  websocket:\n    max_connections: 0\n")
    env = {"OCP_DATA_DIR": str(tmp_path), "PATH": "/usr/bin:/bin"}
    result = run_cli(["--config", str(config), "run"], env=env)
    assert result.returncode == 1
    assert "transport.websocket.max_connections" in result.stderr
    assert "Traceback" not in result.stderr
    result = run_cli(["config", "check"], env={**env, "OCP_HTTP_PORT": "eighty"})
    assert result.returncode == 1 and "transport.http_port" in result.stderr
    config.write_text("node:\n  network: testnet\n")
    assert run_cli(["--config", str(config), "config", "check"], env=env).returncode == 0


def test_config_show_masks_secrets(tmp_path: Path) -> None:
    env = {
        "OCP_DATA_DIR": str(tmp_path),
        "OCP_REGISTRY_PEERS": "https://alice:s3cret@registry.example/ocp/v1",
        "OCP_REGISTRY_MODE": "federated",
    }
    result = run_cli(["config", "show"], env=env)
    assert result.returncode == 0
    assert "s3cret" not in result.stdout and "***@registry.example" in result.stdout


def test_sigterm_exits_0_promptly_and_node_id_survives_restart(
    tmp_path: Path, tls: TlsFiles, daemons: list[Daemon]
) -> None:
    first = _start(daemons, tmp_path, tls=tls)
    first.wait_ready()
    node_id = first.wait_for("identity/generated")["node/self"]
    started = time.monotonic()
    first.signal(signal.SIGTERM)
    assert first.wait_exit() == 0
    assert time.monotonic() - started < 5
    assert any(e.get("event") == "stopped" for e in first.events())
    seed = json.loads((tmp_path / "identity" / "node.key").read_text())["seed"]
    assert seed not in "".join(first.lines)
    second = _start(daemons, tmp_path, tls=tls)
    second.wait_ready()
    assert second.wait_for("identity/loaded")["node/self"] == node_id
    assert second.stop() == 0


def test_second_signal_stops_at_once(tmp_path: Path, daemons: list[Daemon]) -> None:
    daemon = _start(daemons, tmp_path, env={"OCP_HOST": "127.0.0.1"})
    daemon.wait_ready()
    # A slow client keeps a request in flight so the graceful stop must wait.
    url = daemon.listeners["registry"].removeprefix("http://")
    host, port = url.rsplit(":", 1)
    with socket.create_connection((host, int(port))) as slow:
        slow.sendall(b"POST /health HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n")
        time.sleep(0.2)
        daemon.signal(signal.SIGTERM)
        daemon.wait_for("shutdown_requested")
        daemon.signal(signal.SIGINT)
        assert daemon.wait_exit(timeout=10) == 1
    assert any(e.get("event") == "shutdown_forced" for e in daemon.events())


def test_non_active_identity_is_refused(tmp_path: Path) -> None:
    env = {"OCP_DATA_DIR": str(tmp_path)}
    assert run_cli(["identity", "init"], env=env).returncode == 0
    record_path = tmp_path / "identity" / "node-identity.json"
    record = json.loads(record_path.read_text())
    record["identity/status"] = "retired"
    record_path.write_text(json.dumps(record))
    result = run_cli(
        ["run"],
        env={
            **env,
            "OCP_HTTP_PORT": "0",
            "OCP_WS_PORT": "0",
            "OCP_REGISTRY_PORT": "0",
            "OCP_CUSTODIAN_PORT": "0",
        },
    )
    assert result.returncode == 1
    assert "retired" in result.stderr and "active" in result.stderr
    assert "Traceback" not in result.stderr


def test_identity_commands(tmp_path: Path) -> None:
    env = {"OCP_DATA_DIR": str(tmp_path), "OCP_NETWORK": "testnet"}
    created = run_cli(["identity", "init"], env=env)
    assert created.returncode == 0
    assert run_cli(["identity", "init"], env=env).returncode == 1
    shown = json.loads(run_cli(["identity", "show"], env=env).stdout)
    assert shown["record"]["node/id"].startswith("node:did:key:z6Mk")
    assert shown["service_agent_id"].startswith("did:ocp:testnet:agent-")
    assert shown["record"]["key/storage-ref"] == "local-file:node.key"
    assert (tmp_path / "identity" / "node.key").stat().st_mode & 0o777 == 0o600
    assert "seed" not in json.dumps(shown)
    # export, then import into another data directory: same node id, key checked
    exported = tmp_path / "exported.json"
    exported.write_text(run_cli(["identity", "show", "--record-only"], env=env).stdout)
    other = {"OCP_DATA_DIR": str(tmp_path / "other")}
    key = tmp_path / "identity" / "node.key"
    imported = run_cli(
        ["identity", "import", "--record", str(exported), "--key", str(key)], env=other
    )
    assert imported.returncode == 0, imported.stderr
    again = json.loads(run_cli(["identity", "show", "--record-only"], env=other).stdout)
    assert again["node/id"] == shown["record"]["node/id"]
    wrong = tmp_path / "wrong.key"
    run_cli(["keygen", "--out", str(wrong)], env=env)
    refused = run_cli(
        ["identity", "import", "--record", str(exported), "--key", str(wrong)],
        env={"OCP_DATA_DIR": str(tmp_path / "third")},
    )
    assert refused.returncode == 1 and "does not belong" in refused.stderr
    tampered = json.loads(exported.read_text()) | {"node/id": "node:did:key:z6Mk"}
    exported.write_text(json.dumps(tampered))
    schema_refused = run_cli(
        ["identity", "import", "--record", str(exported), "--key", str(key)],
        env={"OCP_DATA_DIR": str(tmp_path / "fourth")},
    )
    assert schema_refused.returncode == 1 and "node/id" in schema_refused.stderr


def test_keygen(tmp_path: Path) -> None:
    out = tmp_path / "agent.key"
    result = run_cli(
        ["keygen", "--out", str(out), "--network", "testnet"], env={"OCP_DATA_DIR": str(tmp_path)}
    )
    assert result.returncode == 0
    body = json.loads(result.stdout)
    assert body["agent_id"].startswith("did:ocp:testnet:agent-")
    assert body["did_document"]["id"] == body["agent_id"]
    assert out.stat().st_mode & 0o777 == 0o600
    again = run_cli(["keygen", "--out", str(out)], env={"OCP_DATA_DIR": str(tmp_path)})
    assert again.returncode == 1 and "already exists" in again.stderr


def test_tls12_client_is_refused(tmp_path: Path, tls: TlsFiles, daemons: list[Daemon]) -> None:
    daemon = _start(daemons, tmp_path, component="registry", tls=tls)
    daemon.wait_ready()
    host, port = daemon.listeners["registry"].removeprefix("https://").rsplit(":", 1)
    old = tls.client_context()
    old.minimum_version = ssl.TLSVersion.TLSv1_2
    old.maximum_version = ssl.TLSVersion.TLSv1_2
    with socket.create_connection((host, int(port)), timeout=5) as raw, pytest.raises(ssl.SSLError):
        old.wrap_socket(raw, server_hostname="127.0.0.1")
    modern = tls.client_context()
    with socket.create_connection((host, int(port)), timeout=5) as raw:
        with modern.wrap_socket(raw, server_hostname="127.0.0.1") as wrapped:
            assert wrapped.version() == "TLSv1.3"


def test_plaintext_on_a_public_address_is_refused(tmp_path: Path) -> None:
    env = {"OCP_DATA_DIR": str(tmp_path), "OCP_HOST": "0.0.0.0"}
    result = run_cli(["run", "--component", "registry"], env=env)
    assert result.returncode == 1 and "node.host" in result.stderr


def test_tls_terminated_upstream_is_allowed_with_a_warning(
    tmp_path: Path, daemons: list[Daemon]
) -> None:
    daemon = _start(
        daemons,
        tmp_path,
        component="registry",
        env={"OCP_HOST": "0.0.0.0", "OCP_TLS_UPSTREAM": "true"},
    )
    daemon.wait_ready()
    warning = daemon.wait_for("tls_upstream")
    assert warning["level"] == "warning"


def test_backup_under_write_load(tmp_path: Path, daemons: list[Daemon]) -> None:
    daemon = _start(daemons, tmp_path / "data", component="registry")
    daemon.wait_ready()
    stop = threading.Event()
    writes = [0]

    def load() -> None:
        while not stop.is_set():
            assert daemon.get("registry", "/health")[0] == 200  # each probe is a committed write
            writes[0] += 1

    workers = [threading.Thread(target=load) for _ in range(3)]
    for worker in workers:
        worker.start()
    try:
        time.sleep(0.3)
        dest = tmp_path / "backup.db"
        result = run_cli(
            ["backup", "--component", "registry", str(dest)],
            env={"OCP_DATA_DIR": str(tmp_path / "data")},
        )
    finally:
        stop.set()
        for worker in workers:
            worker.join(timeout=10)
    assert result.returncode == 0, result.stderr
    assert writes[0] > 10
    assert integrity_check(dest) == ["ok"]
    assert dest.stat().st_mode & 0o777 == 0o600
    # a registry copy gets its own feed epoch: restored, it is read afresh by peers
    feed = daemon.listeners["registry"] + "/ocp/v1/registry/sync?since=0"
    with urllib.request.urlopen(feed, timeout=5) as response:
        live_epoch = response.headers["OCP-Feed-Epoch"]

    def epoch(path: Path) -> str:
        conn = sqlite3.connect(path)
        try:
            row = conn.execute("SELECT value FROM ocpd_meta WHERE key = 'feed_epoch'").fetchone()
        finally:
            conn.close()
        return str(row[0])

    assert len(epoch(dest)) == 32 and epoch(dest) != live_epoch
    check = run_cli(
        ["db", "check", "--component", "registry"], env={"OCP_DATA_DIR": str(tmp_path / "data")}
    )
    assert check.returncode == 0 and "ok" in check.stdout


def test_systemd_notify(tmp_path: Path, daemons: list[Daemon]) -> None:
    address = str(tmp_path / "notify.sock")
    server = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    server.bind(address)
    server.settimeout(10)
    try:
        daemon = _start(
            daemons,
            tmp_path / "data",
            component="custodian",
            env={"NOTIFY_SOCKET": address, "WATCHDOG_USEC": "400000"},
        )
        messages: list[str] = []

        def receive_until(marker: str) -> None:
            while not any(marker in m for m in messages):
                messages.append(server.recv(4096).decode())

        receive_until("READY=1")
        daemon.wait_ready()
        assert any(m.startswith("READY=1") and "STATUS=serving custodian" in m for m in messages)
        receive_until("WATCHDOG=1")
        daemon.signal(signal.SIGTERM)
        receive_until("STOPPING=1")
        assert daemon.wait_exit() == 0
    finally:
        server.close()


def test_database_files_are_private(tmp_path: Path, daemons: list[Daemon]) -> None:
    daemon = _start(daemons, tmp_path, component="all")
    daemon.wait_ready()
    daemon.get("http", "/health")
    for component in ("node", "registry", "custodian"):
        for path in (tmp_path / component).iterdir():
            assert path.stat().st_mode & 0o777 == 0o600, path
    assert integrity_check(tmp_path / "node" / "ocp_node.db") == ["ok"]
