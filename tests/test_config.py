from __future__ import annotations

from pathlib import Path

import pytest

from ocpd.config import Config, ConfigError, NodeSection, TransportSection, load_config


def _load(tmp_path: Path, text: str | None = None, **env: str):  # type: ignore[no-untyped-def]
    path = None
    if text is not None:
        path = tmp_path / "ocpd.yml"
        path.write_text(text)
    return load_config(path, environ=env)[0]


def test_defaults(tmp_path: Path) -> None:
    config = _load(tmp_path)
    assert config.transport.http_port == 8420 and config.transport.ws_port == 8421
    assert config.registry.port == 8422 and config.custodian.port == 8423
    assert config.node.network == "mainnet" and config.registry.max_agents == 100_000
    assert config.rate_limiting.enabled is True
    assert config.node.host == "127.0.0.1"


def test_precedence_env_over_file_over_defaults(tmp_path: Path) -> None:
    config = _load(
        tmp_path, "node:\n  network: filenet\n  log_level: debug\n", OCP_NETWORK="envnet"
    )
    assert config.node.network == "envnet"
    assert config.node.log_level == "debug"
    assert config.node.log_format == "json"


def test_environment_variables(tmp_path: Path) -> None:
    config = _load(
        tmp_path,
        OCP_DATA_DIR=str(tmp_path),
        OCP_HTTP_PORT="1",
        OCP_WS_PORT="2",
        OCP_REGISTRY_PORT="3",
        OCP_CUSTODIAN_PORT="4",
        OCP_REGISTRY_PEERS="https://a.example/ocp/v1, https://b.example/ocp/v1",
        OCP_MAX_AGENTS="5",
        OCP_RATE_LIMIT_ENABLED="false",
        OCP_LOG_FORMAT="text",
        OCP_TAXONOMY_EXTENSIONS="energy.grid, energy.storage",
    )
    assert config.data_dir == tmp_path
    assert config.ports("node") == {"http": 1, "ws": 2}
    assert config.ports("registry") == {"registry": 3}
    assert config.ports("custodian") == {"custodian": 4}
    assert config.registry.peers == ("https://a.example/ocp/v1", "https://b.example/ocp/v1")
    assert config.registry.max_agents == 5 and config.rate_limiting.enabled is False
    assert config.taxonomy.extensions == ("energy.grid", "energy.storage")


@pytest.mark.parametrize(
    ("text", "env", "key"),
    [
        ("node:\n  netwrk: x\n", {}, "node.netwrk"),
        ("node:\n  network: Main_Net\n", {}, "node.network"),
        ("transport:\n  http_port: 70000\n", {}, "transport.http_port"),
        ("transport:\n  http_port: '8420'\n", {}, "transport.http_port"),
        (
            "transport:\n  websocket:\n    max_connections: 0\n",
            {},
            "transport.websocket.max_connections",
        ),
        ("rate_limiting:\n  enabled: 'yes'\n", {}, "rate_limiting.enabled"),
        ("registry:\n  mode: dht\n", {}, "registry.mode"),
        ("registry:\n  mode: federated\n", {}, "registry.peers"),
        ("registry:\n  peers: [ftp://x]\n", {}, "registry.peers.0"),
        ("trust:\n  weights: {identity_verification: 1.0}\n", {}, "trust.weights"),
        ("trust:\n  certifier_keys: [z6MkNotAKey]\n", {}, "trust.certifier_keys.0"),
        (
            # an X25519 multibase key, not an Ed25519 one
            "trust:\n  certifier_keys: [z6LSbysY2xFMRpGMhb7tFTLMpeuPRaqaWM1yECx2AtzE3KCc]\n",
            {},
            "trust.certifier_keys.0",
        ),
        (
            "transport:\n  tls_cert: /nonexistent.pem\n  tls_key: /nonexistent.key\n",
            {},
            "transport.tls_cert",
        ),
        ("custodian:\n  key_file: /nonexistent\n", {}, "custodian.key_file"),
        ("taxonomy:\n  extensions: [energy, Energy.Grid]\n", {}, "taxonomy.extensions.1"),
        ("taxonomy:\n  extensions: energy\n", {}, "taxonomy.extensions"),
        ("trust:\n  anchors: did:ocp:x\n", {}, "trust.anchors"),
        ("registry:\n  peers: [1]\n", {}, "registry.peers"),
        (None, {"OCP_TAXONOMY_EXTENSIONS": "energy..grid"}, "taxonomy.extensions.0"),
        ("- a\n- b\n", {}, "config"),
        ("node: [\n", {}, "config"),
        (None, {"OCP_HTTP_PORT": "http"}, "transport.http_port"),
        (None, {"OCP_RATE_LIMIT_ENABLED": "maybe"}, "rate_limiting.enabled"),
        (None, {"OCP_HEALTH_PORT": "0"}, "OCP_HEALTH_PORT"),
        (None, {"OCP_LOG_LEVEL": "verbose"}, "node.log_level"),
    ],
)
def test_invalid_values_name_their_key(
    tmp_path: Path, text: str | None, env: dict[str, str], key: str
) -> None:
    with pytest.raises(ConfigError) as info:
        _load(tmp_path, text, **env)
    assert info.value.key == key


def test_explicit_missing_file_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(tmp_path / "missing.yml", environ={})
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(None, environ={"OCP_CONFIG": str(tmp_path / "missing.yml")})


def test_example_file_is_valid_and_documents_every_key() -> None:
    example = Path(__file__).parent.parent / "ocpd.example.yml"
    config, _ = load_config(example, environ={})
    documented = example.read_text()

    def keys(data: dict, prefix: str = "") -> list[str]:  # type: ignore[type-arg]
        out = []
        for k, v in data.items():
            if isinstance(v, dict) and k != "weights":
                out += keys(v, f"{prefix}{k}.")
            else:
                out.append(f"{prefix}{k}")
        return out

    for key in keys(config.unstructure()):
        assert f"{key.rsplit('.', 1)[-1]}:" in documented, key


def test_unreadable_or_bad_tls_files_are_one_line_errors(tmp_path: Path) -> None:
    cert, key = tmp_path / "c.pem", tmp_path / "k.pem"
    cert.write_text("not a certificate")
    key.write_text("not a key")
    with pytest.raises(ConfigError) as info:
        _load(tmp_path, OCP_TLS_CERT=str(cert), OCP_TLS_KEY=str(key))
    assert info.value.key == "transport.tls_cert" and "cannot load" in info.value.reason
    with pytest.raises(ConfigError) as directory:
        _load(tmp_path, OCP_TLS_CERT=str(tmp_path), OCP_TLS_KEY=str(key))
    assert "directory" in directory.value.reason


def test_public_urls_come_from_settings_then_listeners_then_host_and_ports() -> None:
    plain = Config()
    assert plain.public_urls() == (
        "http://127.0.0.1:8420/ocp/v1/messages",
        "ws://127.0.0.1:8421/ocp/v1/ws",
    )
    bound = {"http": "http://127.0.0.1:41000", "ws": "http://127.0.0.1:41001"}
    assert plain.public_urls(bound) == (
        "http://127.0.0.1:41000/ocp/v1/messages",
        "ws://127.0.0.1:41001/ocp/v1/ws",
    )
    proxied = Config(
        node=NodeSection(host="::1"), transport=TransportSection(tls_terminated_upstream=True)
    )
    assert proxied.public_urls() == (
        "https://[::1]:8420/ocp/v1/messages",
        "wss://[::1]:8421/ocp/v1/ws",
    )
    named = Config(
        transport=TransportSection(
            public_http_url="https://node.example/ocp/v1/messages",
            public_ws_url="wss://node.example/ocp/v1/ws",
        )
    )
    assert named.public_urls(bound) == (
        "https://node.example/ocp/v1/messages",
        "wss://node.example/ocp/v1/ws",
    )
