"""Session time reported by transport nodes: the second source of ``uptime_ratio`` (D7).

A node reports that an agent held an authenticated WebSocket session over
``[started_at, ended_at]`` (wall-clock epoch seconds). Reports are merged
into the agent's :class:`~ocpd.proto.trust.Uptime` as a union of intervals,
so a node may report a long session again and again as ``[start, now]``, or
the same session twice, without counting any second twice. Nothing here
travels to federation peers: each registry counts the sessions reported to
it, and re-registrations (which every registry sees) count everywhere.

Reports are applied under the agents' apply locks (the ones a
re-registration takes), in one group commit per batch; the ledger changes
once the write is durable.
"""

from __future__ import annotations

import logging
import math
from functools import partial
from typing import TYPE_CHECKING, Final

import attrs

from ocpd.logs import get_logger, log_event
from ocpd.proto.errors import MalformedError
from ocpd.registry.tables import save_uptime_txn

if TYPE_CHECKING:
    from collections.abc import Iterable

    from ocpd.proto.trust import Uptime
    from ocpd.registry.intake import ArtifactStore

__all__ = [
    "MAX_SESSIONS_PER_REPORT",
    "SessionReport",
    "SessionsRecorded",
    "check_session",
    "record_sessions",
]

MAX_SESSIONS_PER_REPORT: Final = 1000
"""Sessions one HTTP report may carry."""

log = get_logger("registry")


@attrs.frozen
class SessionReport:
    """Agent ``agent_id`` held an authenticated session from ``started_at`` to ``ended_at``."""

    agent_id: str
    started_at: float
    ended_at: float


@attrs.frozen
class SessionsRecorded:
    counted: int
    """Reports of registered agents (time already counted is not counted again)."""
    unknown_agents: tuple[str, ...]
    """Agent ids this registry does not hold, sorted; their reports are dropped."""


def check_session(report: SessionReport, *, now: float, clock_skew: float) -> None:
    """OCP-400 unless the interval is finite, ordered and not in the future."""
    start, end = report.started_at, report.ended_at
    if not (math.isfinite(start) and math.isfinite(end)):
        raise MalformedError("session times must be finite")
    if start > end:
        raise MalformedError("a session ends after it starts", details={"reason": "order"})
    if end > now + clock_skew:
        raise MalformedError("a session cannot end in the future", details={"reason": "future"})


async def record_sessions(
    store: ArtifactStore, reports: Iterable[SessionReport], *, now: float
) -> SessionsRecorded:
    """Count the reported session time (see the module notes); checks every report first."""
    reports = list(reports)
    for report in reports:
        check_session(report, now=now, clock_skew=store.clock_skew)
    mine = [r for r in reports if r.agent_id in store.ledger.agents]
    unknown = sorted({r.agent_id for r in reports} - {r.agent_id for r in mine})
    if not mine:
        return SessionsRecorded(counted=0, unknown_agents=tuple(unknown))
    async with store.holding_agents(r.agent_id for r in mine):
        updated: dict[str, Uptime] = {}
        for report in mine:
            before = updated.get(report.agent_id) or store.ledger.agents[report.agent_id].uptime
            updated[report.agent_id] = before.add(report.started_at, report.ended_at, now=now)
        changed = [
            (agent_id, uptime)
            for agent_id, uptime in updated.items()
            if uptime != store.ledger.agents[agent_id].uptime
        ]
        if changed:
            await store.database.write(partial(save_uptime_txn, changed))
            for agent_id, uptime in changed:
                store.ledger.agents[agent_id].uptime = uptime
    log_event(log, "sessions_recorded", level=logging.DEBUG, reports=len(mine), agents=len(changed))
    return SessionsRecorded(counted=len(mine), unknown_agents=tuple(unknown))
