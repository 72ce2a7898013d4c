"""The checks that talk to the node under test, one per requirement id.

A check gets a :class:`Probe` (the component URLs and how to reach them) and
returns an :class:`Outcome`: ``pass`` or ``fail`` with a one-line detail. It
never raises for a non-conformant answer; the runner turns an unexpected
exception or a timeout into ``fail`` as well.

The validators (:func:`health_problems`, :func:`metrics_problems`,
:func:`info_problems`, :func:`trust_problems`) are pure functions of what came
over the wire, so they are tested without a node.

Registry checks act as fresh agents: each check generates its own Ed25519
keys, registers the agents it needs on the network the registry reports in
``/info`` and signs with ``ocpd.proto`` only (D2 artifacts, D3
``Authorization``). They rely only on what OCP and the decisions define, so
they run against any OCP registry, and they leave nothing behind that another
check depends on. Fresh agents are Level 1 (a verified DID and an endpoint,
D7); nothing a black-box client can do lifts them higher, so the Level 2
rules are observed here from the refusals a Level 1 agent gets. (Only with
the keys of the registry's trust anchors, ``--anchor-keys``, can the suite
have agents vouched to Level 2: :mod:`conformance.collab` does, for the
knowledge and collaboration checks.)
"""

from __future__ import annotations

import json
import math
import re
import secrets
import ssl
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from functools import wraps
from typing import Any, Final, Literal, TypeGuard

from prometheus_client.parser import text_string_to_metric_families

from conformance.client import (
    HttpResponse,
    endpoint_url,
    http_get,
    http_request,
    path_and_query,
    tls_handshake,
    tls_probe_context,
)
from ocpd.proto.artifacts import sign, sign_bond
from ocpd.proto.auth import build_authorization
from ocpd.proto.crypto import SigningKey
from ocpd.proto.diddoc import build_did_document
from ocpd.proto.encoding import b64url_encode, format_timestamp
from ocpd.proto.ids import derive_agent_id, multibase_ed25519, new_prefixed_uuid
from ocpd.proto.netartifacts import build_node_advertisement
from ocpd.proto.signing import artifact_digest

__all__ = [
    "CHECKS",
    "NET_CLASSES",
    "Answer",
    "Component",
    "Outcome",
    "Probe",
    "ProbeAgent",
    "RouteListener",
    "TargetRegistry",
    "Unexpected",
    "checked",
    "compact",
    "health_problems",
    "info_problems",
    "metrics_problems",
    "trust_problems",
]

#: Docker §7.1: the fields of GET /health and their JSON types.
HEALTH_FIELDS: Final[dict[str, type]] = {
    "status": str,
    "component": str,
    "version": str,
    "network": str,
    "uptime_seconds": int,
    "database": str,
    "checks": dict,
}
HEALTH_CHECKS: Final = ("database_writable", "disk_space_ok", "memory_ok")
HEALTH_CODES: Final = {"healthy": 200, "degraded": 200, "unhealthy": 503}
DATABASE_VALUES: Final = ("connected", "unavailable")

#: Docker §7.4: families every component must expose, with their type.
REQUIRED_FAMILIES: Final = {
    "ocp_request_duration_seconds": "histogram",
    "ocp_database_size_bytes": "gauge",
}
#: Prometheus text exposition format versions (0.0.4 and the 1.0.0 of newer clients).
PROMETHEUS_TEXT_VERSIONS: Final = ("0.0.4", "1.0.0")


@dataclass(frozen=True)
class Component:
    """One listener under test: a label for the report, its role and its base URL."""

    label: str
    role: Literal["node", "registry", "custodian"]
    url: str


#: Whether the routing check may run its own refusing endpoints on 127.0.0.1 (``auto``:
#: when the node under test is on a loopback address too).
RouteListener = Literal["auto", "on", "off"]


@dataclass(frozen=True)
class Probe:
    """What a check needs: the listeners and the TLS context of ordinary requests."""

    components: tuple[Component, ...]
    context: ssl.SSLContext
    request_timeout: float
    route_listener: RouteListener = "auto"
    #: The node's peer endpoint (``wss://…/ocp/v1/peer``) when given explicitly; by
    #: default the peer checks derive it from the node's WebSocket listener.
    peer_url: str | None = None
    #: Keys of agents the target registry trusts as anchors (``--anchor-keys``): the
    #: knowledge and collaboration checks need them to lift probe agents to Level 2.
    anchor_keys: tuple[SigningKey, ...] = ()
    #: How long a task's receiver has to accept or reject it (OCP §6.1.3: 30 s).
    task_accept_window: float = 30.0

    async def get(self, component: Component, path: str) -> HttpResponse:
        url = endpoint_url(component.url, path)
        return await http_get(url, context=self.context, socket_timeout=self.request_timeout)

    async def request(
        self,
        component: Component,
        method: str,
        path: str,
        body: bytes | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> HttpResponse:
        url = endpoint_url(component.url, path)
        return await http_request(
            url,
            context=self.context,
            socket_timeout=self.request_timeout,
            method=method,
            body=body,
            headers=headers,
        )

    def role(self, role: str) -> Component:
        """The first listener of ``role``."""
        for component in self.components:
            if component.role == role:
                return component
        raise LookupError(f"no {role} listener under test")

    def listener(self, label: str) -> Component | None:
        """The listener labelled ``label`` (``node-ws``...), if there is one."""
        for component in self.components:
            if component.label == label:
                return component
        return None


@dataclass(frozen=True)
class Outcome:
    """What a check found. ``not_tested``: the check could not judge (it says why)."""

    status: Literal["pass", "fail", "not_tested"]
    detail: str

    @classmethod
    def of(cls, problems: list[str], ok_detail: str) -> Outcome:
        if problems:
            return cls("fail", "; ".join(problems))
        return cls("pass", ok_detail)


Check = Callable[[Probe], Awaitable[Outcome]]


# --- health (Docker §7.1) -------------------------------------------------------------------


def _media_type(content_type: str | None) -> tuple[str, dict[str, str]]:
    if not content_type:
        return "", {}
    kind, *params = (p.strip() for p in content_type.split(";"))
    parsed = {}
    for param in params:
        name, _, value = param.partition("=")
        parsed[name.strip().lower()] = value.strip().strip('"')
    return kind.lower(), parsed


def health_problems(
    role: str, status_code: int, content_type: str | None, body: bytes
) -> tuple[list[str], str | None]:
    """What is wrong with one /health answer, and the reported status if there is one."""
    problems: list[str] = []
    if _media_type(content_type)[0] != "application/json":
        problems.append(f"Content-Type is {content_type!r}, not application/json")
    try:
        document: Any = json.loads(body)
    except ValueError:
        return [*problems, f"HTTP {status_code}, body is not JSON"], None
    if not isinstance(document, dict):
        return [*problems, "body is not a JSON object"], None
    missing = [f for f in HEALTH_FIELDS if f not in document]
    extra = sorted(set(document) - set(HEALTH_FIELDS))
    if missing:
        problems.append(f"missing fields {missing}")
    if extra:
        problems.append(f"fields outside Docker §7.1 {extra}")
    for name, kind in HEALTH_FIELDS.items():
        value = document.get(name)
        # bool is an int in Python, not in JSON.
        if name in document and (not isinstance(value, kind) or isinstance(value, bool)):
            problems.append(f"{name} is {type(value).__name__}, not {kind.__name__}")
    status = document.get("status")
    if isinstance(status, str) and status not in HEALTH_CODES:
        problems.append(f"status {status!r} is not healthy, degraded or unhealthy")
    elif isinstance(status, str) and status_code != HEALTH_CODES[status]:
        problems.append(f"status {status!r} answered with HTTP {status_code}")
    if status == "unhealthy":
        problems.append("component reports unhealthy")
    if "component" in document and document["component"] != role:
        problems.append(f"component is {document['component']!r}, expected {role!r}")
    if isinstance(document.get("uptime_seconds"), int) and document["uptime_seconds"] < 0:
        problems.append("uptime_seconds is negative")
    database = document.get("database")
    if isinstance(database, str) and database not in DATABASE_VALUES:
        problems.append(f"database {database!r} is not connected or unavailable")
    checks = document.get("checks")
    if isinstance(checks, dict):
        if sorted(checks) != sorted(HEALTH_CHECKS):
            problems.append(f"checks has {sorted(checks)}, expected {list(HEALTH_CHECKS)}")
        wrong = [k for k in HEALTH_CHECKS if k in checks and not isinstance(checks[k], bool)]
        if wrong:
            problems.append(f"checks {wrong} are not booleans")
    return problems, status if isinstance(status, str) else None


async def check_health(probe: Probe) -> Outcome:
    problems: list[str] = []
    seen: list[str] = []
    for component in probe.components:
        try:
            response = await probe.get(component, "/health")
        except OSError as exc:
            problems.append(f"{component.label}: no answer ({exc})")
            continue
        found, status = health_problems(
            component.role, response.status, response.header("content-type"), response.body
        )
        problems.extend(f"{component.label}: {p}" for p in found)
        seen.append(f"{component.label} {status} ({response.status})")
    return Outcome.of(problems, ", ".join(seen))


# --- metrics (Docker §7.4) ------------------------------------------------------------------


def metrics_problems(content_type: str | None, text: str) -> list[str]:
    """What is wrong with one /metrics answer (Prometheus text format)."""
    problems: list[str] = []
    kind, params = _media_type(content_type)
    if kind != "text/plain":
        problems.append(f"Content-Type is {content_type!r}, not Prometheus text/plain")
    elif params.get("version") not in (None, *PROMETHEUS_TEXT_VERSIONS):
        problems.append(f"Content-Type version {params['version']!r} is not a text format")
    try:
        families = {f.name: f for f in text_string_to_metric_families(text)}
    except ValueError as exc:
        return [*problems, f"does not parse as Prometheus text: {exc}"]
    for name, kind_expected in REQUIRED_FAMILIES.items():
        family = families.get(name)
        if family is None:
            problems.append(f"no {name}")
            continue
        if family.type != kind_expected:
            problems.append(f"{name} is a {family.type}, not a {kind_expected}")
        elif kind_expected == "histogram" and family.samples:
            suffixes = {s.name.removeprefix(name) for s in family.samples}
            has_inf = any(s.labels.get("le") == "+Inf" for s in family.samples)
            if not {"_bucket", "_count", "_sum"} <= suffixes or not has_inf:
                problems.append(f"{name} lacks _bucket (le=+Inf), _count or _sum samples")
    return problems


async def check_metrics(probe: Probe) -> Outcome:
    problems: list[str] = []
    seen: list[str] = []
    for component in probe.components:
        try:
            response = await probe.get(component, "/metrics")
        except OSError as exc:
            problems.append(f"{component.label}: no answer ({exc})")
            continue
        if response.status != 200:
            problems.append(f"{component.label}: HTTP {response.status}")
            continue
        try:
            text = response.body.decode("utf-8")
        except UnicodeDecodeError:
            problems.append(f"{component.label}: body is not UTF-8")
            continue
        found = metrics_problems(response.header("content-type"), text)
        problems.extend(f"{component.label}: {p}" for p in found)
        seen.append(component.label)
    families = ", ".join(REQUIRED_FAMILIES)
    return Outcome.of(problems, f"{', '.join(seen)}: Prometheus text with {families}")


# --- TLS (OCP §3.1) -------------------------------------------------------------------------


async def check_tls13(probe: Probe) -> Outcome:
    """Each listener is https and a default client negotiates TLS 1.3 with it."""
    problems: list[str] = []
    for component in probe.components:
        if not component.url.startswith("https://"):
            problems.append(f"{component.label}: plaintext {component.url}")
            continue
        outcome = await tls_handshake(component.url, context=probe.context)
        if outcome.version is None:
            problems.append(f"{component.label}: handshake failed ({outcome.error})")
        elif outcome.version != "TLSv1.3":
            problems.append(f"{component.label}: negotiated {outcome.version}")
    return Outcome.of(problems, f"TLSv1.3 on {len(probe.components)} listener(s)")


async def check_tls12_refused(probe: Probe) -> Outcome:
    """A client that offers only TLS 1.2 gets no session from any listener."""
    problems: list[str] = []
    reasons: set[str] = set()
    only_12 = tls_probe_context(ssl.TLSVersion.TLSv1_2)
    control = tls_probe_context(ssl.TLSVersion.TLSv1_3)
    for component in probe.components:
        if not component.url.startswith("https://"):
            problems.append(f"{component.label}: plaintext {component.url}, nothing to refuse")
            continue
        # The control handshake tells a refusal from a listener that is down.
        reachable = await tls_handshake(component.url, context=control)
        if reachable.version is None:
            problems.append(f"{component.label}: TLS 1.3 control failed ({reachable.error})")
            continue
        outcome = await tls_handshake(component.url, context=only_12)
        if outcome.version is not None:
            problems.append(f"{component.label}: accepted a TLS 1.2-only client")
        elif not outcome.handshake_failed:
            problems.append(f"{component.label}: {outcome.error}")
        else:
            reasons.add(outcome.error or "handshake failed")
    how = ", ".join(sorted(reasons))
    return Outcome.of(problems, f"refused by {len(probe.components)} listener(s) ({how})")


# --- registry: plumbing ------------------------------------------------------------------------

REGISTRY_API: Final = "/ocp/v1/registry"
REGISTRY_MODES: Final = ("federated", "dht", "centralized")
NETWORK_NAME: Final = re.compile(r"[a-z0-9-]{1,32}")
DAY: Final = 86_400
#: OCP §4.2.2: the five components of the trust score and their default weights.
TRUST_COMPONENTS: Final = (
    "identity_verification",
    "vouch_count_normalized",
    "bond_count_normalized",
    "interaction_reputation",
    "uptime_ratio",
)
#: D7: with no ratings, interaction_reputation is 0.5.
NEUTRAL_REPUTATION: Final = 0.5
#: Tolerance for sums and weighted sums of floats sent as JSON numbers.
EPSILON: Final = 1e-6
#: An endpoint that cannot exist (RFC 2606 .invalid): probe agents receive nothing.
PROBE_ENDPOINTS: Final = (
    {"transport": "ocp-ws", "url": "wss://conformance.invalid/ocp/v1/ws", "priority": 1},
)
PROBE_DOMAIN: Final = "finance"
#: OCP §9 default: discovery queries per agent per 60 s.
DISCOVERY_LIMIT: Final = 100
BOND_PERMISSIONS: Final = {
    "knowledge_share": {"enabled": True, "allowed_types": ["insight"]},
    "task_delegate": {"enabled": False},
    "model_delta_share": {"enabled": False},
}
#: Capability ids outside OCP App. B: no prefix, upper case, no name, a part too many.
MALFORMED_CAPABILITY_IDS: Final = (
    "nlp-classification",
    "cap:NLP:Classification",
    "cap:vision",
    "cap:nlp:classification:extra",
)
#: OCP §3.2.3: the fields of one discovery result.
DISCOVERY_RESULT_FIELDS: Final = (
    "agent_id",
    "display_name",
    "domains",
    "capabilities",
    "trust_level",
    "endpoints",
)
#: How many pages of the seed directory feed a check reads at most.
MAX_FEED_PAGES: Final = 50


class Unexpected(Exception):
    """The target answered something that ends a check early (its message is the detail)."""


def checked(check: Check) -> Check:
    """Turn :class:`Unexpected` and unreachable listeners into a ``fail`` outcome."""

    @wraps(check)
    async def run(probe: Probe) -> Outcome:
        try:
            return await check(probe)
        except Unexpected as exc:
            return Outcome("fail", str(exc))
        except OSError as exc:
            return Outcome("fail", f"no answer ({exc})")

    return run


def compact(value: object) -> bytes:
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False).encode("utf-8")


@dataclass(frozen=True)
class Answer:
    """One HTTP answer with its JSON body (``None`` when it is not JSON)."""

    status: int
    body: Any
    headers: dict[str, str]

    @classmethod
    def of(cls, response: HttpResponse) -> Answer:
        try:
            body = json.loads(response.body) if response.body else None
        except ValueError:
            body = None
        return cls(response.status, body, response.headers)

    @property
    def error_code(self) -> str | None:
        if isinstance(self.body, dict) and isinstance(self.body.get("error_code"), str):
            return str(self.body["error_code"])
        return None

    def describe(self) -> str:
        code = self.error_code
        return f"HTTP {self.status}" + (f" {code}" if code else "")

    def refused_with(self, *statuses: int) -> bool:
        """An OCP error answer with one of ``statuses`` and the matching ``OCP-<status>`` code.

        D6: an error over HTTP travels with the status of its OCP code.
        """
        return self.status in statuses and self.error_code == f"OCP-{self.status}"

    def object(self, what: str) -> dict[str, Any]:
        if not isinstance(self.body, dict):
            raise Unexpected(f"{what}: {self.describe()}, body is not a JSON object")
        return self.body


class ProbeAgent:
    """A fresh agent: a new Ed25519 key and its did:ocp id on the registry's network (D4)."""

    def __init__(
        self, network: str, key: SigningKey | None = None, *, claimed_id: str | None = None
    ) -> None:
        self.key = key or SigningKey.generate()
        self.network = network
        #: ``claimed_id`` lets a check speak for an id its key does not derive.
        self.agent_id = claimed_id or derive_agent_id(self.key.public_key, network)

    def did_document(self) -> dict[str, Any]:
        return build_did_document(self.key.public_key, network=self.network)

    def record(self, **overrides: Any) -> dict[str, Any]:
        """A signed agent record (OCP §3.2.2); ``overrides`` replace fields before signing."""
        unsigned: dict[str, Any] = {
            "agent_id": self.agent_id,
            "display_name": f"conformance probe {self.agent_id[-6:]}",
            "version": "1.0.0",
            "capabilities": [{"id": "cap:nlp:classification", "name": "Probe", "version": "1.0"}],
            "domains": [PROBE_DOMAIN],
            "endpoints": [dict(e) for e in PROBE_ENDPOINTS],
            "status": "active",
            "registered_at": format_timestamp(time.time()),
            "ttl": 3600,
        }
        unsigned.update(overrides)
        return sign(unsigned, self.key)

    def sign(self, artifact: dict[str, Any]) -> dict[str, Any]:
        return sign(artifact, self.key)

    def vouch(self, subject: str, *, days: int = 180) -> dict[str, Any]:
        """A signed vouch (OCP §4.2.3) for ``subject``, issued now."""
        at = time.time()
        return self.sign(
            {
                "vouch_type": "endorsement",
                "attester": self.agent_id,
                "subject": subject,
                "level": "vouch",
                "issued_at": format_timestamp(at),
                "expires_at": format_timestamp(at + days * DAY),
            }
        )


def unsigned_bond(
    first: str,
    second: str,
    *,
    days: int = 180,
    permissions: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """A bond record (OCP §4.3.2) without signatures; each party adds its own."""
    now = time.time()
    return {
        "bond_id": new_prefixed_uuid("bond"),
        "agents": [first, second],
        "permissions": dict(BOND_PERMISSIONS if permissions is None else permissions),
        "established_at": format_timestamp(now),
        "expires_at": format_timestamp(now + days * DAY),
        "renewal": "manual",
        "signatures": {},
    }


class TargetRegistry:
    """The registry under test, seen through its HTTP API (D7) by probe agents."""

    def __init__(self, probe: Probe, component: Component, network: str) -> None:
        self.probe = probe
        self.component = component
        self.network = network

    @classmethod
    async def open(cls, probe: Probe) -> TargetRegistry:
        """The registry listener and its network, from ``GET /info``."""
        component = probe.role("registry")
        answer = Answer.of(await probe.get(component, f"{REGISTRY_API}/info"))
        info = answer.object("GET info")
        network = info.get("network")
        if answer.status != 200 or not isinstance(network, str):
            raise Unexpected(f"GET info: {answer.describe()}, no network name")
        return cls(probe, component, network)

    def agent(self) -> ProbeAgent:
        return ProbeAgent(self.network)

    def authorization(
        self, agent: ProbeAgent, method: str, path: str, body: bytes, *, now: float | None = None
    ) -> str:
        url = endpoint_url(self.component.url, path)
        return build_authorization(
            agent.key,
            agent_id=agent.agent_id,
            method=method,
            path_and_query=path_and_query(url),
            body=body,
            now=time.time() if now is None else now,
        )

    async def send(
        self,
        method: str,
        path: str,
        body: bytes | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> Answer:
        sent = dict(headers or {})
        if body is not None:
            sent.setdefault("Content-Type", "application/json")
        response = await self.probe.request(self.component, method, path, body, sent)
        return Answer.of(response)

    async def call(
        self, method: str, path: str, value: object = None, *, agent: ProbeAgent | None = None
    ) -> Answer:
        """``method`` on ``REGISTRY_API + path`` with ``value`` as JSON, signed by ``agent``."""
        full = REGISTRY_API + path
        body = None if value is None else compact(value)
        headers = {}
        if agent is not None:
            headers["Authorization"] = self.authorization(agent, method, full, body or b"")
        return await self.send(method, full, body, headers)

    async def register(self, agent: ProbeAgent, **overrides: Any) -> Answer:
        registration = {"record": agent.record(**overrides), "did_document": agent.did_document()}
        return await self.call("POST", "/agents", registration, agent=agent)

    async def registered(self, agent: ProbeAgent, **overrides: Any) -> dict[str, Any]:
        """Register ``agent``; a refusal ends the check."""
        answer = await self.register(agent, **overrides)
        if answer.status not in (200, 201):
            raise Unexpected(f"registering a valid probe agent: {answer.describe()}")
        return answer.object("registration")

    async def discover(self, agent: ProbeAgent, query: Mapping[str, Any]) -> dict[str, Any]:
        answer = await self.call("POST", "/discover", dict(query), agent=agent)
        if answer.status != 200:
            raise Unexpected(f"discovery {json.dumps(query)}: {answer.describe()}")
        return answer.object("discovery")


def _unique_capability() -> str:
    """A custom capability id (OCP App. B) no other agent has: isolates a check's agents."""
    return f"cap:custom:conformance:probe_{secrets.token_hex(6)}"


def _capability(capability_id: str) -> list[dict[str, str]]:
    return [{"id": capability_id, "name": "Conformance probe", "version": "1.0"}]


def _expect(problems: list[str], what: str, answer: Answer, *statuses: int) -> None:
    if not answer.refused_with(*statuses):
        wanted = " or ".join(f"OCP-{s}" for s in statuses)
        problems.append(f"{what}: {answer.describe()}, expected {wanted}")


# --- registry: validators --------------------------------------------------------------------


def _number(value: object) -> TypeGuard[float]:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def _weights_problems(name: str, weights: object) -> list[str]:
    if not isinstance(weights, dict):
        return [f"{name} is not an object"]
    problems = []
    if sorted(weights) != sorted(TRUST_COMPONENTS):
        problems.append(f"{name} has {sorted(weights)}, expected {list(TRUST_COMPONENTS)}")
    values = [weights[k] for k in TRUST_COMPONENTS if k in weights]
    if not all(_number(v) and v >= 0 for v in values):
        problems.append(f"{name} are not all numbers >= 0")
    elif abs(math.fsum(values) - 1.0) > EPSILON:
        problems.append(f"{name} sum to {math.fsum(values):.6g}, not 1")
    return problems


def info_problems(info: object) -> list[str]:
    """What is wrong with a ``GET /info`` body (OCP §3.2.1, §4.2.2, D7)."""
    if not isinstance(info, dict):
        return ["body is not a JSON object"]
    problems = []
    mode = info.get("mode")
    if mode not in REGISTRY_MODES:
        problems.append(f"mode {mode!r} is not one of {', '.join(REGISTRY_MODES)}")
    network = info.get("network")
    if not isinstance(network, str) or not NETWORK_NAME.fullmatch(network):
        problems.append(f"network {network!r} is not a network name")
    problems += _weights_problems("trust_weights", info.get("trust_weights"))
    taxonomy = info.get("taxonomy_version")
    if not isinstance(taxonomy, str) or not taxonomy:
        problems.append(f"taxonomy_version {taxonomy!r} is not a non-empty string")
    return problems


def trust_problems(report: object, agent_id: str) -> list[str]:
    """What is wrong with a ``GET /agents/{id}/trust`` body (OCP §4.2, D7)."""
    if not isinstance(report, dict):
        return ["body is not a JSON object"]
    problems = []
    if report.get("agent_id") != agent_id:
        problems.append(f"agent_id is {report.get('agent_id')!r}, not {agent_id}")
    level = report.get("trust_level")
    if not isinstance(level, int) or isinstance(level, bool) or not 0 <= level <= 4:
        problems.append(f"trust_level {level!r} is not an integer from 0 to 4")
    score = report.get("trust_score")
    if not _number(score) or not 0 <= score <= 1:
        problems.append(f"trust_score {score!r} is not in [0, 1]")
    components = report.get("components")
    if not isinstance(components, dict) or sorted(components) != sorted(TRUST_COMPONENTS):
        problems.append(f"components are not exactly {list(TRUST_COMPONENTS)}")
        return problems
    if not all(_number(v) and 0 <= v <= 1 for v in components.values()):
        problems.append("components are not all in [0, 1]")
        return problems
    weights = report.get("weights")
    found = _weights_problems("weights", weights)
    problems += found
    if not found and _number(score) and isinstance(weights, dict):
        expected = math.fsum(weights[k] * components[k] for k in TRUST_COMPONENTS)
        if abs(expected - score) > EPSILON:
            problems.append(f"trust_score {score!r} is not the weighted sum {expected:.6g}")
    for name in ("vouch_count", "bond_count"):
        count = report.get(name)
        if not isinstance(count, int) or isinstance(count, bool) or count < 0:
            problems.append(f"{name} {count!r} is not a count")
    return problems


# --- registry: checks ------------------------------------------------------------------------


@checked
async def check_registry_info(probe: Probe) -> Outcome:
    """OCP-CORE-REG-001: a supported mode, the network, published weights, taxonomy version."""
    component = probe.role("registry")
    answer = Answer.of(await probe.get(component, f"{REGISTRY_API}/info"))
    if answer.status != 200:
        return Outcome("fail", f"GET info: {answer.describe()}")
    problems = info_problems(answer.body)
    info = answer.object("GET info")
    return Outcome.of(
        problems,
        f"mode {info.get('mode')}, network {info.get('network')}, trust weights sum to 1, "
        f"taxonomy {info.get('taxonomy_version')}",
    )


@checked
async def check_registration(probe: Probe) -> Outcome:
    """OCP-CORE-REG-002: a signed record with its DID document is registered and served back."""
    registry = await TargetRegistry.open(probe)
    agent = registry.agent()
    record = agent.record()
    registration = {"record": record, "did_document": agent.did_document()}
    answer = await registry.call("POST", "/agents", registration, agent=agent)
    if answer.status not in (200, 201):
        return Outcome("fail", f"POST agents: {answer.describe()}")
    problems = []
    result = answer.object("POST agents")
    if result.get("agent_id") != agent.agent_id:
        problems.append(f"registration answered agent_id {result.get('agent_id')!r}")
    if result.get("status") != "active":
        problems.append(f"registration answered status {result.get('status')!r}")
    fetched = await registry.call("GET", f"/agents/{agent.agent_id}")
    if fetched.status != 200:
        return Outcome("fail", f"GET agents/{{id}} after registering: {fetched.describe()}")
    view = fetched.object("GET agents/{id}")
    if view.get("record") != record:
        problems.append("GET agents/{id} does not serve the record as registered")
    if view.get("status") != "active":
        problems.append(f"GET agents/{{id}} says status {view.get('status')!r}")
    return Outcome.of(
        problems, f"registered {agent.agent_id} (HTTP {answer.status}); the record is served back"
    )


@checked
async def check_registration_rules(probe: Probe) -> Outcome:
    """OCP-CORE-REG-003: invalid agent ids, empty lists and bad signatures are refused."""
    registry = await TargetRegistry.open(probe)
    problems: list[str] = []
    for field in ("capabilities", "domains", "endpoints"):
        agent = registry.agent()
        _expect(problems, f"empty {field}", await registry.register(agent, **{field: []}), 400)
    agent = registry.agent()
    record = agent.record()
    record["display_name"] += " (altered after signing)"
    registration = {"record": record, "did_document": agent.did_document()}
    answer = await registry.call("POST", "/agents", registration, agent=agent)
    _expect(problems, "record signature not over the record", answer, 400, 401)
    agent = registry.agent()
    shouting = agent.agent_id.replace("agent-", "AGENT-")
    answer = await registry.register(agent, agent_id=shouting)
    _expect(problems, "agent_id not in did:ocp form", answer, 400, 401)
    return Outcome.of(
        problems, "empty capabilities, domains and endpoints, a bad signature and a bad id refused"
    )


@checked
async def check_taxonomy(probe: Probe) -> Outcome:
    """OCP-CORE-REG-004: domains outside the taxonomy are refused."""
    registry = await TargetRegistry.open(probe)
    agent = registry.agent()
    answer = await registry.register(agent, domains=["conformance-nonexistent.domain"])
    problems: list[str] = []
    _expect(problems, "domain outside the taxonomy", answer, 400)
    await registry.registered(agent, domains=[PROBE_DOMAIN])
    return Outcome.of(
        problems, f"unknown domain refused ({answer.describe()}); {PROBE_DOMAIN} accepted"
    )


@checked
async def check_capability_ids(probe: Probe) -> Outcome:
    """OCP-CORE-REG-005: capability ids are cap:<domain>:<name> or cap:custom:<org>:<name>."""
    registry = await TargetRegistry.open(probe)
    problems: list[str] = []
    for bad in MALFORMED_CAPABILITY_IDS:
        answer = await registry.register(registry.agent(), capabilities=_capability(bad))
        _expect(problems, f"capability id {bad!r}", answer, 400)
    custom = _unique_capability()
    await registry.registered(registry.agent(), capabilities=_capability(custom))
    return Outcome.of(problems, f"malformed capability ids refused; {custom} accepted")


@checked
async def check_registry_auth(probe: Probe) -> Outcome:
    """OCP-CORE-REG-008: registry writes need a fresh D3 Authorization that is used once."""
    registry = await TargetRegistry.open(probe)
    agent, stranger = registry.agent(), registry.agent()
    path = f"{REGISTRY_API}/agents"
    body = compact({"record": agent.record(), "did_document": agent.did_document()})
    problems: list[str] = []
    _expect(problems, "no Authorization", await registry.send("POST", path, body), 401)
    stale = registry.authorization(agent, "POST", path, body, now=time.time() - 900)
    answer = await registry.send("POST", path, body, {"Authorization": stale})
    _expect(problems, "Authorization 15 minutes old", answer, 401)
    forged = registry.authorization(stranger, "POST", path, body).replace(
        stranger.agent_id, agent.agent_id
    )
    answer = await registry.send("POST", path, body, {"Authorization": forged})
    _expect(problems, "Authorization signed by another key", answer, 401)
    header = {"Authorization": registry.authorization(agent, "POST", path, body)}
    first = await registry.send("POST", path, body, header)
    if first.status not in (200, 201):
        problems.append(f"the valid request: {first.describe()}")
    replay = await registry.send("POST", path, body, header)
    _expect(problems, "the same request and Authorization again", replay, 401)
    return Outcome.of(
        problems, "missing, 15 min old, foreign-key and replayed Authorization refused with OCP-401"
    )


@checked
async def check_agent_id_derivation(probe: Probe) -> Outcome:
    """OCP-CORE-DID-001: an agent id that does not derive from the initial key is refused."""
    registry = await TargetRegistry.open(probe)
    holder = registry.agent()
    claimed = registry.agent().agent_id  # an id derived from some other key
    document = json.loads(json.dumps(holder.did_document()).replace(holder.agent_id, claimed))
    record = holder.record(agent_id=claimed)
    body = compact({"record": record, "did_document": document})
    path = f"{REGISTRY_API}/agents"
    impostor = ProbeAgent(registry.network, holder.key, claimed_id=claimed)
    header = {"Authorization": registry.authorization(impostor, "POST", path, body)}
    answer = await registry.send("POST", path, body, header)
    problems: list[str] = []
    _expect(problems, "an id not derived from the document's key", answer, 401, 400)
    fetched = await registry.call("GET", f"/agents/{claimed}")
    if fetched.status != 404:
        problems.append(f"the claimed id resolves afterwards: {fetched.describe()}")
    return Outcome.of(problems, f"id not derived from the key refused ({answer.describe()})")


@checked
async def check_did_resolution(probe: Probe) -> Outcome:
    """OCP-CORE-DID-002: the registry serves the registered DID document (did.json)."""
    registry = await TargetRegistry.open(probe)
    agent = registry.agent()
    await registry.registered(agent)
    answer = await registry.call("GET", f"/agents/{agent.agent_id}/did.json")
    if answer.status != 200:
        return Outcome("fail", f"GET did.json: {answer.describe()}")
    media = _media_type(answer.headers.get("content-type"))[0]
    problems = []
    if media not in ("application/did+json", "application/did+ld+json", "application/json"):
        problems.append(f"Content-Type {media!r} is not a JSON DID document type")
    if answer.body != agent.did_document():
        problems.append("did.json differs from the registered document")
    return Outcome.of(problems, f"did.json of {agent.agent_id} equals the registered document")


@checked
async def check_discovery(probe: Probe) -> Outcome:
    """OCP-CORE-DISC-001: filters, total, limit and offset of POST /discover (OCP §3.2.3)."""
    registry = await TargetRegistry.open(probe)
    capability = _unique_capability()
    agents = [registry.agent() for _ in range(3)]
    domains = [["finance"], ["healthcare.oncology"], ["finance"]]
    for agent, where in zip(agents, domains, strict=True):
        await registry.registered(agent, capabilities=_capability(capability), domains=where)
    ids = {a.agent_id for a in agents}
    asker = agents[0]
    problems: list[str] = []

    def query(limit: int = 20, offset: int = 0, **filters: Any) -> dict[str, Any]:
        return {
            "filters": {"capabilities": [capability], **filters},
            "limit": limit,
            "offset": offset,
        }

    everything = await registry.discover(asker, query())
    found = {r.get("agent_id") for r in everything.get("results", []) if isinstance(r, dict)}
    if everything.get("total") != 3 or found != ids:
        problems.append(f"by capability: total {everything.get('total')!r}, {len(found)} found")
    for result in everything.get("results", []):
        missing = [f for f in DISCOVERY_RESULT_FIELDS if f not in result]
        if missing:
            problems.append(f"a result lacks {missing}")
            break
        if capability not in result["capabilities"]:
            problems.append("a result does not list the capability it was found by")
            break
    finance = await registry.discover(asker, query(domains=["finance"]))
    found = {r.get("agent_id") for r in finance.get("results", [])}
    if finance.get("total") != 2 or found != {agents[0].agent_id, agents[2].agent_id}:
        problems.append(f"by capability and domain: total {finance.get('total')!r}")
    first = await registry.discover(asker, query(limit=2))
    second = await registry.discover(asker, query(limit=2, offset=2))
    pages = [{r.get("agent_id") for r in page.get("results", [])} for page in (first, second)]
    if [len(p) for p in pages] != [2, 1] or pages[0] | pages[1] != ids:
        problems.append(f"limit 2 then offset 2: pages of {[len(p) for p in pages]}")
    if first.get("total") != 3 or second.get("total") != 3:
        problems.append("total is not the number of all matches on every page")
    level = await registry.discover(asker, query(min_trust_level=2))
    if level.get("total") != 0:
        problems.append(f"min_trust_level 2 finds {level.get('total')!r} Level 1 agents")
    inactive = await registry.discover(asker, query(status="inactive"))
    if inactive.get("total") != 0:
        problems.append(f"status inactive finds {inactive.get('total')!r} active agents")
    return Outcome.of(
        problems, "capabilities, domains, min_trust_level, status, limit, offset and total"
    )


@checked
async def check_discovery_hierarchy(probe: Probe) -> Outcome:
    """OCP-CORE-DISC-002: an agent in healthcare.oncology is found under healthcare."""
    registry = await TargetRegistry.open(probe)
    capability = _unique_capability()
    agent = registry.agent()
    await registry.registered(
        agent, capabilities=_capability(capability), domains=["healthcare.oncology"]
    )
    problems: list[str] = []
    for domain, expected in (("healthcare", 1), ("healthcare.oncology", 1), ("finance", 0)):
        filters = {"domains": [domain], "capabilities": [capability]}
        result = await registry.discover(agent, {"filters": filters})
        if result.get("total") != expected:
            problems.append(f"domain {domain}: total {result.get('total')!r}, expected {expected}")
    return Outcome.of(problems, "found under healthcare and healthcare.oncology, not under finance")


@checked
async def check_trust_levels(probe: Probe) -> Outcome:
    """OCP-CORE-TRUST-001: a fresh agent is Level 1, and Level 2 actions are refused (OCP-403)."""
    registry = await TargetRegistry.open(probe)
    first, second = registry.agent(), registry.agent()
    problems: list[str] = []
    for agent in (first, second):
        result = await registry.registered(agent)
        if result.get("trust_level") != 1:
            problems.append(f"registration answered trust_level {result.get('trust_level')!r}")
    view = (await registry.call("GET", f"/agents/{first.agent_id}")).object("GET agents/{id}")
    trust = (await registry.call("GET", f"/agents/{first.agent_id}/trust")).object("GET trust")
    for where, level in (
        ("GET agents/{id}", view.get("trust_level")),
        ("GET trust", trust.get("trust_level")),
    ):
        if level != 1:
            problems.append(f"{where}: trust_level {level!r} for a verified DID with an endpoint")
    answer = await registry.call("POST", "/vouches", first.vouch(second.agent_id), agent=first)
    _expect(problems, "a vouch by a Level 1 agent", answer, 403)
    bond = unsigned_bond(first.agent_id, second.agent_id)
    bond = sign_bond(sign_bond(bond, first.key, first.agent_id), second.key, second.agent_id)
    answer = await registry.call("POST", "/bonds", bond, agent=first)
    _expect(problems, "a bond between Level 1 agents", answer, 403)
    return Outcome.of(problems, "fresh agents are Level 1; their vouch and bond get OCP-403")


@checked
async def check_trust_score(probe: Probe) -> Outcome:
    """OCP-CORE-TRUST-002: score and components in [0, 1], the published weights, sum to 1."""
    registry = await TargetRegistry.open(probe)
    agent = registry.agent()
    await registry.registered(agent)
    answer = await registry.call("GET", f"/agents/{agent.agent_id}/trust")
    if answer.status != 200:
        return Outcome("fail", f"GET trust: {answer.describe()}")
    report = answer.object("GET trust")
    problems = trust_problems(report, agent.agent_id)
    info = (await registry.call("GET", "/info")).object("GET info")
    if report.get("weights") != info.get("trust_weights"):
        problems.append("the weights differ from the trust_weights /info publishes")
    components = report.get("components")
    if not problems and isinstance(components, dict):
        expected = {
            "identity_verification": 1.0,
            "vouch_count_normalized": 0.0,
            "bond_count_normalized": 0.0,
            "interaction_reputation": NEUTRAL_REPUTATION,
        }
        for name, value in expected.items():
            if abs(components[name] - value) > EPSILON:
                problems.append(f"{name} of a fresh agent is {components[name]!r}, not {value}")
    score = report.get("trust_score")
    shown = f"{score:.6g}" if _number(score) else repr(score)
    return Outcome.of(problems, f"trust_score {shown} = weighted sum of 5 components in [0, 1]")


@checked
async def check_vouch_level(probe: Probe) -> Outcome:
    """OCP-CORE-VOUCH-001: only Level 2+ agents may vouch."""
    registry = await TargetRegistry.open(probe)
    attester, subject = registry.agent(), registry.agent()
    await registry.registered(attester)
    await registry.registered(subject)
    answer = await registry.call(
        "POST", "/vouches", attester.vouch(subject.agent_id), agent=attester
    )
    problems: list[str] = []
    _expect(problems, "a valid vouch by a Level 1 agent", answer, 403)
    return Outcome.of(problems, "a Level 1 agent's vouch is refused with OCP-403")


@checked
async def check_vouch_rules(probe: Probe) -> Outcome:
    """OCP-CORE-VOUCH-002: self-vouches and vouches over 365 days are invalid (OCP-400)."""
    registry = await TargetRegistry.open(probe)
    attester, subject = registry.agent(), registry.agent()
    await registry.registered(attester)
    await registry.registered(subject)
    problems: list[str] = []
    own = attester.vouch(attester.agent_id)
    _expect(
        problems, "a self-vouch", await registry.call("POST", "/vouches", own, agent=attester), 400
    )
    long = attester.vouch(subject.agent_id, days=366)
    answer = await registry.call("POST", "/vouches", long, agent=attester)
    _expect(problems, "a vouch of 366 days", answer, 400)
    return Outcome.of(problems, "a self-vouch and a 366-day vouch are refused with OCP-400")


@checked
async def check_bond_signatures(probe: Probe) -> Outcome:
    """OCP-CORE-BOND-001: a bond needs both parties' signatures over the same bytes."""
    registry = await TargetRegistry.open(probe)
    first, second, stranger = registry.agent(), registry.agent(), registry.agent()
    await registry.registered(first)
    await registry.registered(second)
    problems: list[str] = []
    one_sided = sign_bond(unsigned_bond(first.agent_id, second.agent_id), first.key, first.agent_id)
    answer = await registry.call("POST", "/bonds", one_sided, agent=first)
    _expect(problems, "a bond signed by one party", answer, 400, 401)
    forged = sign_bond(unsigned_bond(first.agent_id, second.agent_id), first.key, first.agent_id)
    digest = artifact_digest(forged, field="signatures")
    forged["signatures"][second.agent_id] = b64url_encode(stranger.key.sign(digest))
    answer = await registry.call("POST", "/bonds", forged, agent=first)
    _expect(problems, "a bond with another key's signature for a party", answer, 400, 401)
    return Outcome.of(problems, "one-sided and foreign-signed bonds are refused")


@checked
async def check_bond_duration(probe: Probe) -> Outcome:
    """OCP-CORE-BOND-002: a bond may last at most 365 days."""
    registry = await TargetRegistry.open(probe)
    first, second = registry.agent(), registry.agent()
    await registry.registered(first)
    await registry.registered(second)
    bond = unsigned_bond(first.agent_id, second.agent_id, days=366)
    bond = sign_bond(sign_bond(bond, first.key, first.agent_id), second.key, second.agent_id)
    answer = await registry.call("POST", "/bonds", bond, agent=first)
    problems: list[str] = []
    _expect(problems, "a bond of 366 days signed by both", answer, 400)
    return Outcome.of(problems, "a 366-day bond is refused with OCP-400")


def certification(
    certifier: SigningKey, subject: str, *, days: int = 90, key: SigningKey | None = None
) -> dict[str, Any]:
    """A certification (D7) naming ``certifier`` as its key, signed by ``key`` (default: it)."""
    at = time.time()
    unsigned = {
        "certification_type": "certified",
        "certification_id": new_prefixed_uuid("cert"),
        "subject": subject,
        "certifier": multibase_ed25519(certifier.public_key),
        "level": 4,
        "issued_at": format_timestamp(at),
        "expires_at": format_timestamp(at + days * DAY),
    }
    return sign(unsigned, key or certifier)


@checked
async def check_certification_authority(probe: Probe) -> Outcome:
    """OCP-CORE-CERT-001: only a configured certifier key's signature can make Level 4.

    The suite cannot hold a key the target names, so it checks the refusals:
    a certification under a key of its own (OCP-403), one signed by another
    key than the one it names (OCP-401, or OCP-403 for a registry that asks
    about the key first) and one of 366 days (OCP-400, or OCP-403 likewise).
    None of them may change the subject's level.
    """
    registry = await TargetRegistry.open(probe)
    subject, submitter = registry.agent(), registry.agent()
    await registry.registered(subject)
    await registry.registered(submitter)
    own, other = SigningKey.generate(), SigningKey.generate()
    problems: list[str] = []

    async def submit(body: dict[str, Any]) -> Answer:
        return await registry.call("POST", "/certifications", body, agent=submitter)

    answer = await submit(certification(own, subject.agent_id))
    _expect(problems, "a certification under a key the registry does not name", answer, 403)
    answer = await submit(certification(own, subject.agent_id, key=other))
    _expect(problems, "a certification signed by another key than it names", answer, 401, 403)
    answer = await submit(certification(own, subject.agent_id, days=366))
    _expect(problems, "a certification of 366 days", answer, 400, 403)
    trust = (await registry.call("GET", f"/agents/{subject.agent_id}/trust")).object("GET trust")
    if trust.get("trust_level") != 1:
        problems.append(f"the subject is Level {trust.get('trust_level')!r} after the refusals")
    return Outcome.of(problems, "unknown-key, forged and 366-day certifications are refused")


@checked
async def check_discovery_rate_limit(probe: Probe) -> Outcome:
    """OCP-CORE-RATE-002: over 100 discovery queries in 60 s get OCP-429 with Retry-After."""
    registry = await TargetRegistry.open(probe)
    agent = registry.agent()
    await registry.registered(agent)
    # A token bucket refills while the queries run (100 per 60 s): allow for
    # that, so a slow link or a busy target does not read as "never limited".
    started = time.monotonic()
    sent = 0
    while True:
        sent += 1
        # Each query differs (offset), so no two carry the same Authorization.
        query = {"filters": {"capabilities": [_unique_capability()]}, "limit": 1, "offset": sent}
        answer = await registry.call("POST", "/discover", query, agent=agent)
        if answer.status == 429:
            break
        if answer.status != 200:
            return Outcome("fail", f"discovery query {sent}: {answer.describe()}")
        elapsed = time.monotonic() - started
        if elapsed >= 60 or sent > DISCOVERY_LIMIT * (1 + elapsed / 60) + 1:
            return Outcome(
                "fail",
                f"{sent} queries by one agent in {elapsed:.1f} s, none limited (OCP §9)",
            )
    problems: list[str] = []
    _expect(problems, f"query {sent}", answer, 429)
    if sent <= DISCOVERY_LIMIT:
        problems.append(f"limited after only {sent - 1} queries; OCP §9 allows {DISCOVERY_LIMIT}")
    retry = answer.headers.get("retry-after", "")
    if not retry.isdigit() or not 1 <= int(retry) <= 60:
        problems.append(f"Retry-After {retry!r} is not whole seconds from 1 to 60")
    return Outcome.of(problems, f"query {sent} of one agent got OCP-429, Retry-After {retry}")


# --- seed directory (NET FR-007a, FR-004d, D8) -------------------------------------------------

SEED_ENDPOINTS: Final = (
    {"url": "wss://conformance.invalid/ocp/v1/peer", "transport": "wss", "priority": 0},
)
#: NET FR-022/FR-023: the frozen boundary error codes, each with its frozen class (the
#: two lists of the specification, pairwise). Copied from the specification, not from
#: ocpd, so that the suite judges the node by the text.
NET_CLASSES: Final = {
    "E_TRANSPORT_UNAVAILABLE": "transport/unavailable",
    "E_TRANSPORT_REJECTED": "transport/rejected",
    "E_ADV_EXPIRED": "advertisement/expired",
    "E_ADV_STALE_SEQ": "advertisement/stale-sequence",
    "E_SIG_INVALID": "signature/invalid",
    "E_SIG_UNKNOWN_SIGNER": "signature/unknown-signer",
    "E_HS_REPLAY": "handshake/replay-suspected",
    "E_HS_UNKNOWN_REF": "handshake/unknown-ref",
    "E_PROTO_VERSION": "protocol/version-mismatch",
    "E_PROTO_INVALID": "protocol/invalid-contract",
    "E_PROTO_CAP_MISSING": "protocol/capability-missing",
}


def _advertisement(key: SigningKey, sequence: int, *, now: float | None = None) -> dict[str, Any]:
    return build_node_advertisement(
        key,
        sequence=sequence,
        endpoints=SEED_ENDPOINTS,
        now=time.time() if now is None else now,
        lifetime=3600,
    )


class SeedDirectory:
    def __init__(self, probe: Probe) -> None:
        self.probe = probe
        self.component = probe.role("registry")

    async def put(self, adv: Mapping[str, Any], node_id: str | None = None) -> Answer:
        path = f"/adv/{node_id or adv['node/id']}"
        response = await self.probe.request(
            self.component, "PUT", path, compact(adv), {"Content-Type": "application/json"}
        )
        return Answer.of(response)

    async def published(self, adv: Mapping[str, Any]) -> Answer:
        answer = await self.put(adv)
        if answer.status not in (200, 201):
            raise Unexpected(f"PUT /adv/{{node-id}} of a valid advertisement: {answer.describe()}")
        return answer

    async def get(self, path: str) -> Answer:
        return Answer.of(await self.probe.get(self.component, path))


def _net_refusal(problems: list[str], what: str, answer: Answer, code: str) -> None:
    body = answer.body if isinstance(answer.body, dict) else {}
    if not 400 <= answer.status < 500 or answer.error_code != code:
        problems.append(f"{what}: {answer.describe()}, expected a 4xx with {code}")
    elif body.get("error_class") != NET_CLASSES[code]:
        problems.append(f"{what}: error_class {body.get('error_class')!r}, not {NET_CLASSES[code]}")


@checked
async def check_seed_directory(probe: Probe) -> Outcome:
    """NET-DIR-001: PUT /adv/{node-id}, GET /adv/{node-id} and GET /adv?since= on the registry."""
    seeds = SeedDirectory(probe)
    key = SigningKey.generate()
    first = _advertisement(key, 1)
    node_id = first["node/id"]
    problems: list[str] = []
    await seeds.published(first)
    fetched = await seeds.get(f"/adv/{node_id}")
    if fetched.status != 200 or fetched.body != first:
        problems.append(f"GET /adv/{{node-id}} after publishing: {fetched.describe()}")
    second = _advertisement(key, 2)
    await seeds.published(second)
    fetched = await seeds.get(f"/adv/{node_id}")
    if fetched.body != second:
        problems.append("GET /adv/{node-id} does not serve the newer sequence/no")
    since, pages, seen = 0, 0, False
    while not seen and pages < MAX_FEED_PAGES:
        page = (await seeds.get(f"/adv?since={since}")).object("GET /adv?since=")
        pages += 1
        advertisements = page.get("advertisements")
        cursor = page.get("cursor")
        if not isinstance(advertisements, list) or not isinstance(cursor, int):
            problems.append("GET /adv?since= is not {advertisements, cursor, more}")
            break
        seen = second in advertisements
        if not page.get("more") or cursor == since:
            break
        since = cursor
    if not seen:
        problems.append(f"the advertisement is not in the feed ({pages} page(s) read)")
    return Outcome.of(
        problems, f"published, fetched, replaced and found in the feed ({pages} page(s))"
    )


@checked
async def check_seed_stale_sequence(probe: Probe) -> Outcome:
    """NET-ADV-002: a stale or equal sequence/no is refused (E_ADV_STALE_SEQ)."""
    seeds = SeedDirectory(probe)
    key = SigningKey.generate()
    current = _advertisement(key, 5)
    await seeds.published(current)
    problems: list[str] = []
    statuses = set()
    for sequence in (5, 4):
        answer = await seeds.put(_advertisement(key, sequence))
        statuses.add(answer.status)
        _net_refusal(problems, f"sequence/no {sequence} after 5", answer, "E_ADV_STALE_SEQ")
    fetched = await seeds.get(f"/adv/{current['node/id']}")
    if fetched.body != current:
        problems.append("a stale advertisement replaced the current one")
    shown = "/".join(str(s) for s in sorted(statuses))
    return Outcome.of(
        problems, f"equal and older sequence/no refused (HTTP {shown} E_ADV_STALE_SEQ)"
    )


@checked
async def check_seed_invalid_advertisements(probe: Probe) -> Outcome:
    """NET-ADV-003: malformed, expired and badly signed advertisements are refused."""
    seeds = SeedDirectory(probe)
    key = SigningKey.generate()
    problems: list[str] = []
    tampered = _advertisement(key, 1)
    tampered["endpoints"] = [{**SEED_ENDPOINTS[0], "url": "wss://elsewhere.invalid/ocp/v1/peer"}]
    _net_refusal(problems, "an altered advertisement", await seeds.put(tampered), "E_SIG_INVALID")
    expired = build_node_advertisement(
        key, sequence=2, endpoints=SEED_ENDPOINTS, now=time.time() - 2 * DAY, lifetime=DAY
    )
    _net_refusal(problems, "an expired advertisement", await seeds.put(expired), "E_ADV_EXPIRED")
    malformed = {k: v for k, v in _advertisement(key, 3).items() if k != "key/alg"}
    node_id = expired["node/id"]
    answer = await seeds.put(malformed, node_id)
    _net_refusal(problems, "an advertisement without key/alg", answer, "E_PROTO_INVALID")
    fetched = await seeds.get(f"/adv/{node_id}")
    if fetched.status != 404:
        problems.append(f"the node has an advertisement afterwards: {fetched.describe()}")
    return Outcome.of(problems, "altered (E_SIG_INVALID), expired and malformed ones refused")


#: Requirement id -> the check against the target that covers it.
CHECKS: Final[dict[str, Check]] = {
    "OCP-CORE-HEALTH-001": check_health,
    "OCP-CORE-METRICS-001": check_metrics,
    "OCP-CORE-TLS-001": check_tls13,
    "OCP-CORE-TLS-002": check_tls12_refused,
    "OCP-CORE-REG-001": check_registry_info,
    "OCP-CORE-REG-002": check_registration,
    "OCP-CORE-REG-003": check_registration_rules,
    "OCP-CORE-REG-004": check_taxonomy,
    "OCP-CORE-REG-005": check_capability_ids,
    "OCP-CORE-REG-008": check_registry_auth,
    "OCP-CORE-DISC-001": check_discovery,
    "OCP-CORE-DISC-002": check_discovery_hierarchy,
    "OCP-CORE-DID-001": check_agent_id_derivation,
    "OCP-CORE-DID-002": check_did_resolution,
    "OCP-CORE-TRUST-001": check_trust_levels,
    "OCP-CORE-TRUST-002": check_trust_score,
    "OCP-CORE-CERT-001": check_certification_authority,
    "OCP-CORE-VOUCH-001": check_vouch_level,
    "OCP-CORE-VOUCH-002": check_vouch_rules,
    "OCP-CORE-BOND-001": check_bond_signatures,
    "OCP-CORE-BOND-002": check_bond_duration,
    "OCP-CORE-RATE-002": check_discovery_rate_limit,
    "NET-DIR-001": check_seed_directory,
    "NET-ADV-002": check_seed_stale_sequence,
    "NET-ADV-003": check_seed_invalid_advertisements,
}
