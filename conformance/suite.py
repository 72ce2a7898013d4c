"""The black-box conformance suite: run every requirement of a level, build a report.

Theory of operation: the requirements of the level (and every lower level)
are taken in the order of :data:`conformance.requirements.REQUIREMENTS`. A
requirement with a check against the target (:data:`TARGET_CHECKS`: the
operations, TLS and registry checks of :mod:`conformance.checks`, the node
transport checks of :mod:`conformance.transport`, the peer session checks of
:mod:`conformance.peer`, where the suite plays a remote node, the knowledge
and collaboration checks of :mod:`conformance.collab` and the recovery
custodian checks of :mod:`conformance.custodian`) runs it under its own
deadline: ``--timeout``, or longer for a check that waits out one of the
target's own timers (:data:`MIN_DEADLINES`); a ``vector`` requirement
re-verifies the published vectors (:data:`conformance.vectorcheck.VECTOR_CHECKS`);
anything else is ``not_tested``. Checks run one after another, so their
traffic never overlaps and a report is reproducible.

Verdict: a claim of a level holds only if every MUST requirement of it
passed. ``not_tested`` is not a pass: a requirement that nobody checked is
not met as far as this suite can tell. SHOULD requirements are reported and
counted, but never fail the run.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final, Literal

import trio

from conformance import checks, collab, custodian, peer, transport
from conformance.checks import Check, Component, Outcome, Probe, RouteListener
from conformance.client import suite_ssl_context
from conformance.requirements import Level, Requirement, for_level
from conformance.vectorcheck import VECTOR_CHECKS

if TYPE_CHECKING:
    from collections.abc import Callable

    from ocpd.proto.crypto import SigningKey

__all__ = [
    "MIN_DEADLINES",
    "SUITE_NAME",
    "SUITE_VERSION",
    "TARGET_CHECKS",
    "VECTORS_DIR",
    "VECTOR_NOTE",
    "Report",
    "Result",
    "SuiteConfig",
    "Targets",
    "check_deadline",
    "run_suite",
]

SUITE_NAME: Final = "ocpd-conformance"
SUITE_VERSION: Final = "0.1.0"
VECTORS_DIR: Final = Path(__file__).resolve().parent / "vectors"
VECTOR_NOTE: Final = (
    "Requirements of kind 'vector' re-verify the published vectors (conformance/vectors) "
    "with this suite's own crypto (ocpd.proto); they check the vectors and the suite, "
    "not the target node."
)

_MODULES: Final = (checks.CHECKS, transport.CHECKS, peer.CHECKS, collab.CHECKS, custodian.CHECKS)
#: Requirement id -> the check against the target that covers it.
TARGET_CHECKS: Final[dict[str, Check]] = {k: v for m in _MODULES for k, v in m.items()}
assert len(TARGET_CHECKS) == sum(len(m) for m in _MODULES), "one check per id"

Status = Literal["pass", "fail", "not_tested"]
NOT_IMPLEMENTED: Final = "no check implemented yet"


@dataclass(frozen=True)
class Targets:
    """Base URLs of the components under test (``https://host:port``).

    ``node_peer`` is the node's peer endpoint (``wss://host:port/ocp/v1/peer``)
    when it is not the default, ``/ocp/v1/peer`` on ``node_ws`` (else ``node``).
    It is not a listener of its own (no ``/health`` there): only the peer
    checks use it.
    """

    node: str
    registry: str
    custodian: str
    node_ws: str | None = None
    node_peer: str | None = None

    def components(self) -> tuple[Component, ...]:
        found = [Component("node", "node", self.node)]
        if self.node_ws:
            found.append(Component("node-ws", "node", self.node_ws))
        found.append(Component("registry", "registry", self.registry))
        found.append(Component("custodian", "custodian", self.custodian))
        return tuple(found)

    def as_json(self) -> dict[str, str | None]:
        return {
            "node": self.node,
            "node_ws": self.node_ws,
            "registry": self.registry,
            "custodian": self.custodian,
            "node_peer": self.node_peer,
        }


@dataclass(frozen=True)
class SuiteConfig:
    targets: Targets
    level: Level = "core"
    ca_file: Path | None = None
    insecure: bool = False
    #: Deadline of one check (all its requests together).
    check_timeout: float = 20.0
    #: Deadline of one request or handshake.
    request_timeout: float = 5.0
    vectors_dir: Path = VECTORS_DIR
    #: The routing check's own refusing endpoints on 127.0.0.1 (see ``--route-listener``).
    route_listener: RouteListener = "auto"
    #: Keys of trust anchors of the target registry (``--anchor-keys``): without enough
    #: of them the knowledge and collaboration checks are ``not_tested``.
    anchor_keys: tuple[SigningKey, ...] = ()
    #: How long a task's receiver has to answer before the node times the task out.
    task_accept_window: float = collab.TASK_ACCEPT_WINDOW


#: Checks that wait out one of the target's own timers, with the deadline they need at
#: least; a longer ``check_timeout`` still wins. ``OCP-FULL-TASK-002`` waits for the task
#: accept window (30 s) and then up to :data:`conformance.collab.TIMEOUT_GRACE` for the
#: node's notice, after setting up its agents. ``OCP-FULL-CUST-004`` waits until a share
#: it deposited has expired (:data:`conformance.custodian.SHARE_LIFETIME` and
#: :data:`~conformance.custodian.EXPIRY_GRACE`), around a dozen requests.
MIN_DEADLINES: Final[dict[str, Callable[[SuiteConfig], float]]] = {
    "OCP-FULL-TASK-002": lambda config: config.task_accept_window + 30.0,
    "OCP-FULL-CUST-004": lambda config: custodian.SHARE_LIFETIME + custodian.EXPIRY_GRACE + 20.0,
}


def check_deadline(requirement_id: str, config: SuiteConfig) -> float:
    """The deadline of the check of ``requirement_id`` under ``config``."""
    least = MIN_DEADLINES.get(requirement_id)
    return config.check_timeout if least is None else max(config.check_timeout, least(config))


@dataclass(frozen=True)
class Result:
    requirement: Requirement
    status: Status
    detail: str
    duration_seconds: float = 0.0

    def as_json(self) -> dict[str, Any]:
        r = self.requirement
        return {
            "id": r.id,
            "level": r.level,
            "strength": r.strength,
            "kind": r.kind,
            "section": r.section,
            "title": r.title,
            "status": self.status,
            "detail": self.detail,
            "duration_seconds": round(self.duration_seconds, 4),
        }


@dataclass
class Report:
    level: Level
    targets: Targets
    started_at: datetime
    finished_at: datetime | None = None
    results: list[Result] = field(default_factory=list)

    def count(self, status: Status, strength: str | None = None) -> int:
        return sum(
            1
            for r in self.results
            if r.status == status and strength in (None, r.requirement.strength)
        )

    def unmet(self, strength: str) -> list[Result]:
        """Requirements of ``strength`` that did not pass (failed or not tested)."""
        return [
            r for r in self.results if r.requirement.strength == strength and r.status != "pass"
        ]

    @property
    def conformant(self) -> bool:
        """Every MUST of the level passed; SHOULD results never decide."""
        return bool(self.results) and not self.unmet("MUST")

    def summary(self) -> dict[str, Any]:
        return {
            "passed": self.count("pass"),
            "failed": self.count("fail"),
            "not_tested": self.count("not_tested"),
            "total": len(self.results),
            "must_unmet": len(self.unmet("MUST")),
            "should_unmet": len(self.unmet("SHOULD")),
            "conformant": self.conformant,
        }

    def as_json(self) -> dict[str, Any]:
        return {
            "suite": SUITE_NAME,
            "suite_version": SUITE_VERSION,
            "started_at": _timestamp(self.started_at),
            "finished_at": _timestamp(self.finished_at) if self.finished_at else None,
            "targets": self.targets.as_json(),
            "level": self.level,
            "verdict_rule": (
                "conformant only if every MUST requirement of the level passed; "
                "not_tested counts as not met; SHOULD requirements never fail the run"
            ),
            "vector_note": VECTOR_NOTE,
            "summary": self.summary(),
            "requirements": [r.as_json() for r in self.results],
        }


def _timestamp(moment: datetime) -> str:
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _now() -> datetime:
    return datetime.now(UTC)


async def _run_target_check(requirement: Requirement, probe: Probe, limit: float) -> Outcome:
    check = TARGET_CHECKS[requirement.id]
    try:
        with trio.fail_after(limit):
            return await check(probe)
    except trio.TooSlowError:
        return Outcome("fail", f"no result within {limit:g} s")
    except Exception as exc:  # a crashing check is a failed requirement, not a crashed suite
        return Outcome("fail", f"check error: {type(exc).__name__}: {exc}")


async def _run_vector_check(requirement: Requirement, directory: Path) -> Outcome:
    verify = VECTOR_CHECKS[requirement.id]
    try:
        outcome = await trio.to_thread.run_sync(verify, directory)
    except Exception as exc:
        return Outcome("fail", f"check error: {type(exc).__name__}: {exc}")
    what = "files" if requirement.id == "OCP-CORE-VEC-MANIFEST-001" else "cases"
    return Outcome("pass" if outcome.ok else "fail", outcome.describe(what))


async def run_suite(config: SuiteConfig) -> Report:
    """Run the requirements of ``config.level`` against ``config.targets``."""
    probe = Probe(
        components=config.targets.components(),
        context=suite_ssl_context(ca_file=config.ca_file, insecure=config.insecure),
        request_timeout=config.request_timeout,
        route_listener=config.route_listener,
        peer_url=config.targets.node_peer,
        anchor_keys=config.anchor_keys,
        task_accept_window=config.task_accept_window,
    )
    report = Report(level=config.level, targets=config.targets, started_at=_now())
    for requirement in for_level(config.level):
        started = trio.current_time()
        if requirement.id in TARGET_CHECKS:
            limit = check_deadline(requirement.id, config)
            outcome = await _run_target_check(requirement, probe, limit)
        elif requirement.id in VECTOR_CHECKS:
            outcome = await _run_vector_check(requirement, config.vectors_dir)
        else:
            report.results.append(Result(requirement, "not_tested", NOT_IMPLEMENTED))
            continue
        elapsed = trio.current_time() - started
        report.results.append(Result(requirement, outcome.status, outcome.detail, elapsed))
    report.finished_at = _now()
    return report
