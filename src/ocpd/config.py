"""ocpd configuration: built-in defaults < YAML file < ``OCP_*`` environment.

The model is a tree of frozen attrs classes, one per section of the Docker
specification (§6.3). The file is structured with cattrs (unknown keys are
refused), then environment overrides are applied, then every value is
validated. Any problem raises :class:`ConfigError` naming the dotted key and
the reason, which the command line prints as one line before exiting 1.
"""

from __future__ import annotations

import os
import re
import ssl
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final, Literal
from urllib.parse import urlsplit, urlunsplit

import attrs
import cattrs
import yaml
from cattrs.errors import ClassValidationError, ForbiddenExtraKeysError, IterableValidationError

from ocpd.proto.errors import MalformedError
from ocpd.proto.ids import parse_agent_id, parse_multibase_ed25519, parse_node_id
from ocpd.proto.taxonomy import check_path
from ocpd.proto.trust import DEFAULT_WEIGHTS, check_weights

if TYPE_CHECKING:
    from collections.abc import Callable, Mapping

__all__ = [
    "COMPONENTS",
    "Config",
    "ConfigError",
    "default_config_path",
    "default_data_dir",
    "load_config",
]

COMPONENTS: Final = ("node", "registry", "custodian")
SYSTEM_CONFIG: Final = Path("/etc/ocpd/ocpd.yml")


class ConfigError(Exception):
    """A configuration value is missing, malformed or out of range."""

    def __init__(self, key: str, reason: str) -> None:
        self.key = key
        self.reason = reason
        super().__init__(f"{key}: {reason}")


def _port(name: str) -> Callable[[Any, attrs.Attribute[Any], int], None]:
    def check(_inst: Any, _attr: attrs.Attribute[Any], value: int) -> None:
        if not 0 <= value <= 65535:
            raise ConfigError(name, f"must be a TCP port from 0 to 65535, not {value}")

    return check


def _range(
    name: str, low: float | None = None, high: float | None = None
) -> Callable[[Any, attrs.Attribute[Any], float], None]:
    def check(_inst: Any, _attr: attrs.Attribute[Any], value: float) -> None:
        if (low is not None and value < low) or (high is not None and value > high):
            bounds = f"from {low} to {high}" if high is not None else f"at least {low}"
            raise ConfigError(name, f"must be {bounds}, not {value}")

    return check


def _choice(
    name: str, choices: tuple[str, ...]
) -> Callable[[Any, attrs.Attribute[Any], str], None]:
    def check(_inst: Any, _attr: attrs.Attribute[Any], value: str) -> None:
        if value not in choices:
            raise ConfigError(name, f"must be one of {', '.join(choices)}, not {value!r}")

    return check


def default_data_dir() -> Path:
    """systemd's StateDirectory, else /var/lib/ocpd for root, else the XDG data home."""
    state = os.environ.get("STATE_DIRECTORY")
    if state:
        return Path(state.split(":")[0])
    if hasattr(os, "geteuid") and os.geteuid() == 0:
        return Path("/var/lib/ocpd")
    xdg = os.environ.get("XDG_DATA_HOME")
    return (Path(xdg) if xdg else Path.home() / ".local" / "share") / "ocpd"


def default_config_path() -> Path | None:
    """``/etc/ocpd/ocpd.yml`` when it exists (the packaged location), else none."""
    return SYSTEM_CONFIG if SYSTEM_CONFIG.is_file() else None


_NETWORK_RE: Final = re.compile(r"[a-z0-9-]{1,32}")


def _network(_inst: Any, _attr: attrs.Attribute[Any], value: str) -> None:
    if _NETWORK_RE.fullmatch(value) is None:
        raise ConfigError("node.network", f"must match [a-z0-9-]{{1,32}}, not {value!r}")


@attrs.frozen
class HealthSection:
    min_free_disk_mb: int = attrs.field(
        default=100, validator=_range("node.health.min_free_disk_mb", 0)
    )
    min_available_memory_mb: int = attrs.field(
        default=64, validator=_range("node.health.min_available_memory_mb", 0)
    )


@attrs.frozen
class NodeSection:
    network: str = attrs.field(default="mainnet", validator=_network)
    data_dir: str = ""
    log_level: str = attrs.field(
        default="info", validator=_choice("node.log_level", ("debug", "info", "warning", "error"))
    )
    log_format: str = attrs.field(
        default="json", validator=_choice("node.log_format", ("json", "text"))
    )
    host: str = "127.0.0.1"
    shutdown_grace_seconds: float = attrs.field(
        default=30.0, validator=_range("node.shutdown_grace_seconds", 0, 3600)
    )
    health: HealthSection = attrs.Factory(HealthSection)


@attrs.frozen
class WebSocketSection:
    max_connections: int = attrs.field(
        default=10_000, validator=_range("transport.websocket.max_connections", 1)
    )
    auth_timeout_seconds: float = attrs.field(
        default=5.0, validator=_range("transport.websocket.auth_timeout_seconds", 0.1, 60)
    )
    session_ttl_seconds: int = attrs.field(
        default=86_400, validator=_range("transport.websocket.session_ttl_seconds", 60, 604_800)
    )
    ping_interval_seconds: float = attrs.field(
        default=30.0, validator=_range("transport.websocket.ping_interval_seconds", 1, 3600)
    )
    max_pending_per_ip: int = attrs.field(
        default=64, validator=_range("transport.websocket.max_pending_per_ip", 1)
    )


@attrs.frozen
class TransportSection:
    http_port: int = attrs.field(default=8420, validator=_port("transport.http_port"))
    ws_port: int = attrs.field(default=8421, validator=_port("transport.ws_port"))
    tls_cert: str | None = None
    tls_key: str | None = None
    tls_terminated_upstream: bool = False
    max_message_bytes: int = attrs.field(
        default=16_777_216, validator=_range("transport.max_message_bytes", 1024, 16_777_216)
    )
    clock_skew_seconds: float = attrs.field(
        default=60.0, validator=_range("transport.clock_skew_seconds", 0, 600)
    )
    registry_url: str | None = None
    registry_ca_file: str | None = None
    directory_cache_seconds: float = attrs.field(
        default=30.0, validator=_range("transport.directory_cache_seconds", 0, 3600)
    )
    directory_negative_cache_seconds: float = attrs.field(
        default=5.0, validator=_range("transport.directory_negative_cache_seconds", 0, 3600)
    )
    sweep_interval_seconds: float = attrs.field(
        default=60.0, validator=_range("transport.sweep_interval_seconds", 1, 86_400)
    )
    interaction_retention_days: int = attrs.field(
        default=30, validator=_range("transport.interaction_retention_days", 1, 3650)
    )
    public_http_url: str | None = None
    """Where agents and other nodes reach ``POST /ocp/v1/messages`` on this node."""
    public_ws_url: str | None = None
    """Where agents reach ``/ocp/v1/ws`` on this node."""
    delivery_ca_file: str | None = None
    """Extra CA certificates trusted when delivering to other nodes and agents."""
    register_service_agent: bool = True
    """Register the node's service agent (``ocp.node``) with the registry at start."""
    signature_checks: str = attrs.field(
        default="auto",
        validator=_choice("transport.signature_checks", ("auto", "helper", "loop")),
    )
    """Where Ed25519 signatures are verified: a helper process, the event loop, or
    ``auto`` (the helper when the daemon may use two CPUs or more)."""
    websocket: WebSocketSection = attrs.Factory(WebSocketSection)


@attrs.frozen
class SeedPeer:
    """A statically configured peer (NET FR-006): who it is and where to dial it.

    ``label`` is the operator's own name for it; it never enters signed data
    (FR-006a).
    """

    node_id: str
    address: str
    label: str | None = None


@attrs.frozen
class PeeringSection:
    """Node-to-node sessions (NET, D8): bootstrap, limits and trust roots."""

    enabled: bool = True
    seed_peers: tuple[SeedPeer, ...] = ()
    #: Seed directories (registries serving ``/adv``): base URLs.
    seed_directories: tuple[str, ...] = ()
    #: Deployment-local CA certificates (PEM) trusted for peers' WSS endpoints,
    #: on top of the system trust store (FR-008d).
    ca_file: str | None = None
    #: This node's peer endpoint as others reach it; by default the public
    #: WebSocket URL with the path ``/ocp/v1/peer``.
    public_url: str | None = None
    advertisement_lifetime_seconds: int = attrs.field(
        default=86_400,
        validator=_range("peering.advertisement_lifetime_seconds", 600, 7 * 86_400),
    )
    directory_sync_seconds: float = attrs.field(
        default=300.0, validator=_range("peering.directory_sync_seconds", 5, 86_400)
    )
    max_sessions: int = attrs.field(
        default=256, validator=_range("peering.max_sessions", 1, 100_000)
    )
    max_pending_handshakes: int = attrs.field(
        default=128, validator=_range("peering.max_pending_handshakes", 1, 100_000)
    )
    #: Handshakes (either direction) allowed per peer node id and minute.
    handshakes_per_minute: int = attrs.field(
        default=20, validator=_range("peering.handshakes_per_minute", 1, 10_000)
    )
    #: Session frames taken from one peer node per second (with a one-second
    #: burst); beyond it the node stops reading from that peer for a while.
    frames_per_second: int = attrs.field(
        default=20_000, validator=_range("peering.frames_per_second", 10, 1_000_000)
    )


@attrs.frozen
class RegistrySection:
    port: int = attrs.field(default=8422, validator=_port("registry.port"))
    mode: str = attrs.field(
        default="centralized", validator=_choice("registry.mode", ("centralized", "federated"))
    )
    peers: tuple[str, ...] = ()
    sync_interval_seconds: float = attrs.field(
        default=60.0, validator=_range("registry.sync_interval_seconds", 1, 86_400)
    )
    peer_ca_file: str | None = None
    max_agents: int = attrs.field(default=100_000, validator=_range("registry.max_agents", 1))
    record_default_ttl: int = attrs.field(
        default=86_400, validator=_range("registry.record_default_ttl", 60, 604_800)
    )
    cleanup_interval_seconds: float = attrs.field(
        default=60.0, validator=_range("registry.cleanup_interval_seconds", 1, 86_400)
    )
    session_reporters: tuple[str, ...] = ()
    """did:ocp agent ids of node service agents that may report session time (D7 uptime)."""


@attrs.frozen
class TrustSection:
    weights: dict[str, float] = attrs.Factory(lambda: dict(DEFAULT_WEIGHTS))
    vouch_threshold: int = attrs.field(default=3, validator=_range("trust.vouch_threshold", 1, 100))
    anchors: tuple[str, ...] = ()
    certifier_keys: tuple[str, ...] = ()


@attrs.frozen
class TaxonomySection:
    """Domain paths added to the shipped taxonomy (D7); ancestors are implied."""

    extensions: tuple[str, ...] = ()


@attrs.frozen
class KnowledgeSection:
    max_payload_bytes: int = attrs.field(
        default=10_485_760, validator=_range("knowledge.max_payload_bytes", 1, 10_485_760)
    )
    max_epsilon: float = attrs.field(default=10.0, validator=_range("knowledge.max_epsilon", 0, 10))


@attrs.frozen
class CollaborationSection:
    task_default_timeout_seconds: int = attrs.field(
        default=300, validator=_range("collaboration.task_default_timeout_seconds", 1, 86_400)
    )
    ack_timeout_seconds: int = attrs.field(
        default=30, validator=_range("collaboration.ack_timeout_seconds", 1, 3600)
    )


@attrs.frozen
class CustodianSection:
    port: int = attrs.field(default=8423, validator=_port("custodian.port"))
    key_file: str | None = None
    development_mode: bool = False
    share_expiry_days: int = attrs.field(
        default=90, validator=_range("custodian.share_expiry_days", 1, 3650)
    )
    #: A recovery_request older than this (by its timestamp) is refused.
    request_max_age_seconds: int = attrs.field(
        default=300, validator=_range("custodian.request_max_age_seconds", 10, 3600)
    )
    #: Messages per minute from one agent id, and (ten times that) from one address.
    requests_per_minute: int = attrs.field(
        default=30, validator=_range("custodian.requests_per_minute", 1)
    )
    #: How long a request waits for the operator, and an approval for the agent.
    approval_ttl_seconds: int = attrs.field(
        default=86_400, validator=_range("custodian.approval_ttl_seconds", 60, 2_592_000)
    )
    sweep_interval_seconds: int = attrs.field(
        default=3600, validator=_range("custodian.sweep_interval_seconds", 1, 86_400)
    )


@attrs.frozen
class RateLimitingSection:
    enabled: bool = True
    messages_per_minute: int = attrs.field(
        default=1000, validator=_range("rate_limiting.messages_per_minute", 1)
    )
    bond_requests_per_hour: int = attrs.field(
        default=10, validator=_range("rate_limiting.bond_requests_per_hour", 1)
    )
    discovery_per_minute: int = attrs.field(
        default=100, validator=_range("rate_limiting.discovery_per_minute", 1)
    )
    broadcasts_per_minute: int = attrs.field(
        default=5, validator=_range("rate_limiting.broadcasts_per_minute", 1)
    )
    knowledge_per_minute: int = attrs.field(
        default=50, validator=_range("rate_limiting.knowledge_per_minute", 1)
    )
    session_reports_per_minute: int = attrs.field(
        default=60, validator=_range("rate_limiting.session_reports_per_minute", 1)
    )


@attrs.frozen
class CryptoSection:
    """Informational: the suite is fixed by the protocol and not configurable."""

    signature: str = attrs.field(
        default="Ed25519", validator=_choice("crypto.signature", ("Ed25519",))
    )
    key_exchange: str = attrs.field(
        default="X25519", validator=_choice("crypto.key_exchange", ("X25519",))
    )
    symmetric: str = attrs.field(
        default="AES-256-GCM", validator=_choice("crypto.symmetric", ("AES-256-GCM",))
    )
    hash: str = attrs.field(default="SHA3-256", validator=_choice("crypto.hash", ("SHA3-256",)))


@attrs.frozen
class Config:
    node: NodeSection = attrs.Factory(NodeSection)
    transport: TransportSection = attrs.Factory(TransportSection)
    registry: RegistrySection = attrs.Factory(RegistrySection)
    trust: TrustSection = attrs.Factory(TrustSection)
    taxonomy: TaxonomySection = attrs.Factory(TaxonomySection)
    knowledge: KnowledgeSection = attrs.Factory(KnowledgeSection)
    collaboration: CollaborationSection = attrs.Factory(CollaborationSection)
    custodian: CustodianSection = attrs.Factory(CustodianSection)
    rate_limiting: RateLimitingSection = attrs.Factory(RateLimitingSection)
    crypto: CryptoSection = attrs.Factory(CryptoSection)
    peering: PeeringSection = attrs.Factory(PeeringSection)

    @property
    def data_dir(self) -> Path:
        return Path(self.node.data_dir) if self.node.data_dir else default_data_dir()

    @property
    def tls_enabled(self) -> bool:
        return self.transport.tls_cert is not None

    def public_urls(self, bound: Mapping[str, str] | None = None) -> tuple[str, str]:
        """``(messages URL, WebSocket URL)`` of this node as others reach it.

        Configured, or else built from the bound listeners (``bound``, by
        port name, as the daemon reports them), or else from ``node.host``
        and the ports: ``https``/``wss`` with TLS here or upstream, plain
        only on a loopback development node.
        """
        t = self.transport
        bound = bound or {}
        secure = self.tls_enabled or t.tls_terminated_upstream
        host = f"[{self.node.host}]" if ":" in self.node.host else self.node.host

        def authority(name: str, port: int) -> str:
            return urlsplit(bound[name]).netloc if name in bound else f"{host}:{port}"

        http = t.public_http_url or (
            f"{'https' if secure else 'http'}://{authority('http', t.http_port)}/ocp/v1/messages"
        )
        ws = t.public_ws_url or (
            f"{'wss' if secure else 'ws'}://{authority('ws', t.ws_port)}/ocp/v1/ws"
        )
        return http, ws

    def peer_url(self, bound: Mapping[str, str] | None = None) -> str | None:
        """This node's peer endpoint (``wss://…/ocp/v1/peer``), or none without TLS.

        Advertised endpoints are always ``wss`` (NET FR-008): a node without
        TLS, here or upstream, cannot take part in peering.
        """
        if self.peering.public_url is not None:
            return self.peering.public_url
        ws = urlsplit(self.public_urls(bound)[1])
        if ws.scheme != "wss":
            return None
        return urlunsplit(("wss", ws.netloc, "/ocp/v1/peer", "", ""))

    def ports(self, component: str) -> dict[str, int]:
        """The ports a component binds, by name."""
        return {
            "node": {"http": self.transport.http_port, "ws": self.transport.ws_port},
            "registry": {"registry": self.registry.port},
            "custodian": {"custodian": self.custodian.port},
        }[component]

    def unstructure(self, *, mask_secrets: bool = True) -> dict[str, Any]:
        data: dict[str, Any] = _CONVERTER.unstructure(self)
        data["node"]["data_dir"] = str(self.data_dir)
        if mask_secrets:
            data["registry"]["peers"] = [_mask_url(u) for u in self.registry.peers]
            if self.transport.registry_url is not None:
                data["transport"]["registry_url"] = _mask_url(self.transport.registry_url)
        return data


def _mask_url(url: str) -> str:
    """Hide credentials embedded in a URL (``https://user:pass@host``)."""
    parts = urlsplit(url)
    if parts.username is None and parts.password is None:
        return url
    host = parts.hostname or ""
    if parts.port is not None:
        host = f"{host}:{parts.port}"
    return urlunsplit((parts.scheme, f"***@{host}", parts.path, parts.query, parts.fragment))


def _make_converter() -> cattrs.Converter:
    converter = cattrs.Converter(forbid_extra_keys=True)

    def strict_bool(value: object, _: type) -> bool:
        if isinstance(value, bool):
            return value
        raise TypeError("must be true or false")

    def strict_int(value: object, _: type) -> int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise TypeError("must be a whole number")
        return value

    def strict_float(value: object, _: type) -> float:
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise TypeError("must be a number")
        return float(value)

    def strict_str(value: object, _: type) -> str:
        if not isinstance(value, str):
            raise TypeError("must be a string")
        return value

    def strict_str_list(value: object, _: type) -> tuple[str, ...]:
        # A bare string is iterable: without this check "a" would become ("a",)
        # and "abc" three one-letter entries.
        if not isinstance(value, list | tuple):
            raise TypeError("must be a list of strings")
        for item in value:
            if not isinstance(item, str):
                raise TypeError("must be a list of strings")
        return tuple(value)

    def seed_peer(value: object, _: type) -> SeedPeer:
        # ``NODE-ID@wss://host:port/ocp/v1/peer`` (the environment's form) or a mapping.
        if isinstance(value, str):
            node_id, sep, address = value.partition("@wss://")
            if not sep:
                raise TypeError("must be NODE-ID@wss://host:port/ocp/v1/peer or a mapping")
            return SeedPeer(node_id=node_id.strip(), address="wss://" + address.strip())
        if not isinstance(value, dict):
            raise TypeError("must be a mapping with node_id and address")
        extra = set(value) - {"node_id", "address", "label"}
        if extra:
            raise ConfigError("peering.seed_peers", f"unknown key {sorted(extra)[0]!r}")
        for key in ("node_id", "address"):
            if not isinstance(value.get(key), str):
                raise TypeError(f"{key} must be a string")
        label = value.get("label")
        if label is not None and not isinstance(label, str):
            raise TypeError("label must be a string")
        return SeedPeer(node_id=value["node_id"], address=value["address"], label=label)

    def seed_peers(value: object, _: type) -> tuple[SeedPeer, ...]:
        if not isinstance(value, list | tuple):
            raise TypeError("must be a list of seed peers")
        return tuple(seed_peer(item, SeedPeer) for item in value)

    converter.register_structure_hook_func(lambda t: t == tuple[str, ...], strict_str_list)
    converter.register_structure_hook_func(lambda t: t == tuple[SeedPeer, ...], seed_peers)
    converter.register_structure_hook(bool, strict_bool)
    converter.register_structure_hook(int, strict_int)
    converter.register_structure_hook(float, strict_float)
    converter.register_structure_hook(str, strict_str)
    return converter


_CONVERTER: Final = _make_converter()


def _first_error(exc: BaseException, path: str) -> ConfigError:
    """Translate a cattrs error tree into the first offending dotted key."""
    if isinstance(exc, ConfigError):
        return exc
    if isinstance(exc, ForbiddenExtraKeysError):
        extra = sorted(exc.extra_fields)[0]
        key = f"{path}.{extra}" if path else extra
        return ConfigError(key, "is not a known setting")
    if isinstance(exc, ClassValidationError | IterableValidationError):
        for sub in exc.exceptions:
            note = next(iter(getattr(sub, "__notes__", [])), "")
            m = re.search(r"attribute '?(\w+)'?", note) or re.search(r"index (\d+)", note)
            sub_path = path
            if m is not None:
                sub_path = f"{path}.{m.group(1)}" if path else m.group(1)
            return _first_error(sub, sub_path)
    reason = str(exc) or type(exc).__name__
    if isinstance(exc, KeyError | TypeError | ValueError) and "must" not in reason:
        reason = f"has the wrong type ({reason})"
    return ConfigError(path or "config", reason)


# --- environment -------------------------------------------------------------------------

Section = Literal[
    "node",
    "transport",
    "registry",
    "custodian",
    "rate_limiting",
    "trust",
    "knowledge",
    "peering",
]

#: ``OCP_*`` variable -> (dotted key, parser). OCP_CONFIG and OCP_HEALTH_PORT
#: are handled separately (the first picks the file, the second only feeds
#: container health checks).
ENVIRONMENT: Final[dict[str, tuple[str, str]]] = {
    "OCP_DATA_DIR": ("node.data_dir", "str"),
    "OCP_NETWORK": ("node.network", "str"),
    "OCP_LOG_LEVEL": ("node.log_level", "str"),
    "OCP_LOG_FORMAT": ("node.log_format", "str"),
    "OCP_HOST": ("node.host", "str"),
    "OCP_HTTP_PORT": ("transport.http_port", "int"),
    "OCP_WS_PORT": ("transport.ws_port", "int"),
    "OCP_REGISTRY_PORT": ("registry.port", "int"),
    "OCP_CUSTODIAN_PORT": ("custodian.port", "int"),
    "OCP_TLS_CERT": ("transport.tls_cert", "str"),
    "OCP_TLS_KEY": ("transport.tls_key", "str"),
    "OCP_TLS_UPSTREAM": ("transport.tls_terminated_upstream", "bool"),
    "OCP_REGISTRY_PEERS": ("registry.peers", "list"),
    "OCP_REGISTRY_URL": ("transport.registry_url", "str"),
    "OCP_REGISTRY_CA_FILE": ("transport.registry_ca_file", "str"),
    "OCP_PUBLIC_HTTP_URL": ("transport.public_http_url", "str"),
    "OCP_PUBLIC_WS_URL": ("transport.public_ws_url", "str"),
    "OCP_DELIVERY_CA_FILE": ("transport.delivery_ca_file", "str"),
    "OCP_SIGNATURE_CHECKS": ("transport.signature_checks", "str"),
    "OCP_REGISTRY_MODE": ("registry.mode", "str"),
    "OCP_MAX_AGENTS": ("registry.max_agents", "int"),
    "OCP_REGISTRY_SESSION_REPORTERS": ("registry.session_reporters", "list"),
    "OCP_TAXONOMY_EXTENSIONS": ("taxonomy.extensions", "list"),
    "OCP_TRUST_ANCHORS": ("trust.anchors", "list"),
    "OCP_RATE_LIMIT_ENABLED": ("rate_limiting.enabled", "bool"),
    "OCP_CUSTODIAN_KEY_FILE": ("custodian.key_file", "str"),
    "OCP_CUSTODIAN_DEV_MODE": ("custodian.development_mode", "bool"),
    "OCP_PEERING_ENABLED": ("peering.enabled", "bool"),
    "OCP_SEED_PEERS": ("peering.seed_peers", "list"),
    "OCP_SEED_DIRECTORIES": ("peering.seed_directories", "list"),
    "OCP_PEER_CA_FILE": ("peering.ca_file", "str"),
    "OCP_PUBLIC_PEER_URL": ("peering.public_url", "str"),
}

_TRUE: Final = {"1", "true", "yes", "on"}
_FALSE: Final = {"0", "false", "no", "off"}


def _parse_env(name: str, kind: str, raw: str) -> object:
    key = ENVIRONMENT[name][0]
    if kind == "int":
        try:
            return int(raw.strip())
        except ValueError:
            raise ConfigError(key, f"{name} must be a whole number, not {raw!r}") from None
    if kind == "bool":
        lowered = raw.strip().lower()
        if lowered in _TRUE:
            return True
        if lowered in _FALSE:
            return False
        raise ConfigError(key, f"{name} must be true or false, not {raw!r}")
    if kind == "list":
        return [item.strip() for item in raw.split(",") if item.strip()]
    return raw


def _apply_env(data: dict[str, Any], environ: Mapping[str, str]) -> None:
    for name, (key, kind) in ENVIRONMENT.items():
        if name not in environ:
            continue
        section, _, leaf = key.partition(".")
        target = data.setdefault(section, {})
        if not isinstance(target, dict):
            raise ConfigError(section, "must be a mapping")
        target[leaf] = _parse_env(name, kind, environ[name])
    health_port = environ.get("OCP_HEALTH_PORT")
    if health_port is not None and not (health_port.isdigit() and 0 < int(health_port) < 65536):
        raise ConfigError("OCP_HEALTH_PORT", f"must be a TCP port, not {health_port!r}")


def _check_cross_field(config: Config) -> None:
    t = config.transport
    if (t.tls_cert is None) != (t.tls_key is None):
        raise ConfigError("transport.tls_key", "TLS needs both a certificate and a key file")
    for key, path in (("transport.tls_cert", t.tls_cert), ("transport.tls_key", t.tls_key)):
        if path is not None:
            _check_readable(key, path)
    if t.tls_cert is not None and t.tls_key is not None:
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        try:
            context.load_cert_chain(t.tls_cert, t.tls_key)
        except (ssl.SSLError, OSError) as exc:
            reason = getattr(exc, "reason", None) or exc.strerror or type(exc).__name__
            raise ConfigError(
                "transport.tls_cert", f"cannot load the certificate and key: {reason}"
            ) from None
    try:
        check_weights(config.trust.weights)
    except ValueError as exc:
        raise ConfigError("trust.weights", str(exc)) from None
    for i, certifier in enumerate(config.trust.certifier_keys):
        try:
            parse_multibase_ed25519(certifier, field="certifier key")
        except MalformedError:
            raise ConfigError(
                f"trust.certifier_keys.{i}", "must be a multibase Ed25519 public key (z6Mk…)"
            ) from None
    for i, peer in enumerate(config.registry.peers):
        parts = urlsplit(peer)
        if parts.scheme not in {"http", "https"} or not parts.hostname:
            raise ConfigError(f"registry.peers.{i}", "must be an http(s) URL")
    if t.registry_url is not None:
        parts = urlsplit(t.registry_url)
        if parts.scheme not in {"http", "https"} or not parts.hostname:
            raise ConfigError("transport.registry_url", "must be an http(s) URL")
    for key, url, schemes in (
        ("transport.public_http_url", t.public_http_url, {"http", "https"}),
        ("transport.public_ws_url", t.public_ws_url, {"ws", "wss"}),
    ):
        if url is not None:
            parts = urlsplit(url)
            if parts.scheme not in schemes or not parts.hostname:
                raise ConfigError(key, f"must be a {'/'.join(sorted(schemes))} URL")
    for key, path in (
        ("transport.registry_ca_file", t.registry_ca_file),
        ("transport.delivery_ca_file", t.delivery_ca_file),
    ):
        if path is not None:
            _check_ca_file(key, path)
    for i, reporter in enumerate(config.registry.session_reporters):
        try:
            network, _ = parse_agent_id(reporter)
        except MalformedError:
            raise ConfigError(
                f"registry.session_reporters.{i}", "must be a did:ocp agent id"
            ) from None
        if network != config.node.network:
            raise ConfigError(
                f"registry.session_reporters.{i}",
                f"must be an agent of network {config.node.network!r}",
            )
    if config.registry.mode == "federated" and not config.registry.peers:
        raise ConfigError("registry.peers", "federated mode needs at least one peer")
    if config.registry.peer_ca_file is not None:
        _check_ca_file("registry.peer_ca_file", config.registry.peer_ca_file)
    for i, path in enumerate(config.taxonomy.extensions):
        try:
            check_path(path)
        except MalformedError as exc:
            raise ConfigError(f"taxonomy.extensions.{i}", exc.message) from None
    if config.custodian.key_file is not None:
        _check_readable("custodian.key_file", config.custodian.key_file)
    _check_peering(config.peering)


def _check_peering(p: PeeringSection) -> None:
    seen: set[str] = set()
    for i, seed in enumerate(p.seed_peers):
        try:
            parse_node_id(seed.node_id)
        except MalformedError:
            raise ConfigError(
                f"peering.seed_peers.{i}.node_id", "must be a node id (node:did:key:z6Mk…)"
            ) from None
        if seed.node_id in seen:
            raise ConfigError(f"peering.seed_peers.{i}.node_id", "is listed twice")
        seen.add(seed.node_id)
        parts = urlsplit(seed.address)
        if parts.scheme != "wss" or not parts.hostname:
            raise ConfigError(f"peering.seed_peers.{i}.address", "must be a wss:// URL")
        if seed.label is not None and (len(seed.label) > 128 or not seed.label.isprintable()):
            raise ConfigError(
                f"peering.seed_peers.{i}.label", "must be printable, at most 128 characters"
            )
    for i, url in enumerate(p.seed_directories):
        parts = urlsplit(url)
        if parts.scheme not in {"http", "https"} or not parts.hostname:
            raise ConfigError(f"peering.seed_directories.{i}", "must be an http(s) URL")
    if p.public_url is not None:
        parts = urlsplit(p.public_url)
        if parts.scheme != "wss" or not parts.hostname:
            raise ConfigError("peering.public_url", "must be a wss:// URL")
    if p.ca_file is not None:
        _check_ca_file("peering.ca_file", p.ca_file)


def _check_ca_file(key: str, path: str) -> None:
    _check_readable(key, path)
    try:
        ssl.create_default_context().load_verify_locations(path)
    except (ssl.SSLError, OSError) as exc:
        reason = getattr(exc, "reason", None) or exc.strerror or type(exc).__name__
        raise ConfigError(key, f"cannot load the CA certificates: {reason}") from None


def _check_readable(key: str, path: str) -> None:
    """The file exists and this process can read it (one clear line otherwise)."""
    try:
        with open(path, "rb"):
            pass
    except FileNotFoundError:
        raise ConfigError(key, f"file {path} does not exist") from None
    except IsADirectoryError:
        raise ConfigError(key, f"{path} is a directory, not a file") from None
    except OSError as exc:
        raise ConfigError(key, f"cannot read {path}: {exc.strerror}") from None


def load_config(
    path: str | os.PathLike[str] | None = None,
    *,
    environ: Mapping[str, str] | None = None,
) -> tuple[Config, Path | None]:
    """The effective configuration and the file it came from (``None``: defaults only).

    ``path`` (the ``--config`` option) wins over ``OCP_CONFIG``, which wins
    over the platform default. An explicitly named file must exist.
    """
    env = os.environ if environ is None else environ
    explicit = path if path is not None else env.get("OCP_CONFIG") or None
    source = Path(explicit) if explicit is not None else default_config_path()
    data: dict[str, Any] = {}
    if source is not None:
        try:
            text = source.read_text(encoding="utf-8")
        except FileNotFoundError:
            raise ConfigError("config", f"file {source} does not exist") from None
        except OSError as exc:
            raise ConfigError("config", f"cannot read {source}: {exc.strerror}") from None
        try:
            loaded = yaml.safe_load(text)
        except yaml.YAMLError as exc:
            mark = getattr(exc, "problem_mark", None)
            where = f" at line {mark.line + 1}" if mark is not None else ""
            raise ConfigError("config", f"{source} is not valid YAML{where}") from None
        if loaded is None:
            loaded = {}
        if not isinstance(loaded, dict):
            raise ConfigError("config", f"{source} must contain a mapping of sections")
        data = loaded
    _apply_env(data, env)
    try:
        config = _CONVERTER.structure(data, Config)
    except Exception as exc:  # cattrs raises grouped errors; find the first leaf
        raise _first_error(exc, "") from None
    _check_cross_field(config)
    return config, source


def config_to_yaml(config: Config) -> str:
    return yaml.safe_dump(config.unstructure(), sort_keys=False)
