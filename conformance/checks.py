"""The checks that talk to the node under test, one per requirement id.

A check gets a :class:`Probe` (the component URLs and how to reach them) and
returns an :class:`Outcome`: ``pass`` or ``fail`` with a one-line detail. It
never raises for a non-conformant answer; the runner turns an unexpected
exception or a timeout into ``fail`` as well.

The validators (:func:`health_problems`, :func:`metrics_problems`) are pure
functions of what came over the wire, so they are tested without a node.
"""

from __future__ import annotations

import json
import ssl
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Final, Literal

from prometheus_client.parser import text_string_to_metric_families

from conformance.client import (
    HttpResponse,
    endpoint_url,
    http_get,
    tls_handshake,
    tls_probe_context,
)

__all__ = [
    "CHECKS",
    "Component",
    "Outcome",
    "Probe",
    "health_problems",
    "metrics_problems",
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


@dataclass(frozen=True)
class Probe:
    """What a check needs: the listeners and the TLS context of ordinary requests."""

    components: tuple[Component, ...]
    context: ssl.SSLContext
    request_timeout: float

    async def get(self, component: Component, path: str) -> HttpResponse:
        url = endpoint_url(component.url, path)
        return await http_get(url, context=self.context, socket_timeout=self.request_timeout)


@dataclass(frozen=True)
class Outcome:
    status: Literal["pass", "fail"]
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


#: Requirement id -> the check against the target that covers it.
CHECKS: Final[dict[str, Check]] = {
    "OCP-CORE-HEALTH-001": check_health,
    "OCP-CORE-METRICS-001": check_metrics,
    "OCP-CORE-TLS-001": check_tls13,
    "OCP-CORE-TLS-002": check_tls12_refused,
}
