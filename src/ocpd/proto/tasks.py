"""Task delegation: admission of requests, the status machine, timeouts (OCP §6.1, D10).

Nothing here reads a clock or does I/O: times are epoch seconds passed in,
and what the registry and the bond store know (trust levels, capabilities,
the bond's ``task_delegate`` block, the number of open tasks) comes in as
arguments.

Theory of operation
-------------------
A node that routes a ``task_request`` checks it with
:func:`check_task_request`, in this order, each refusal carrying
``details["reason"]``:

1. schema — OCP-400;
2. the requester is Level 3 (bonded; task delegation is a Level 3 permission,
   §4.2.1) — OCP-403 ``trust_level``;
3. a bond between the two agents (OCP-403 ``no_bond``) whose intersected
   ``task_delegate`` block (D22) is enabled (``not_permitted``);
4. fewer open tasks between them than the bond's ``max_concurrent`` —
   OCP-403 ``max_concurrent``. It is a permission of the bond, not a rate:
   retrying does not help until a task closes, so it is not OCP-429. A block
   without ``max_concurrent`` sets no limit (the node's rate limits still
   apply);
5. the receiver's level is at least ``constraints.min_trust_level`` —
   OCP-403 ``receiver_trust_level``;
6. the receiver advertises every required capability — OCP-403
   ``capabilities``;
7. ``max_duration_seconds`` is at most the bond's ``timeout_seconds``, when
   the block has one — OCP-403 ``max_duration``.

The node then tracks the task (:func:`deadlines`): the receiver must answer
within :data:`ACCEPT_WITHIN` seconds and finish within
``max_duration_seconds``, both counted from the request. A deadline is the
last moment that is still on time, as for consensus votes, so a task is
:func:`due` for a ``timeout`` only once ``now`` is past it; the node then
sends :func:`timeout_payload` to the requester itself, without going
through :func:`next_status`.

Statuses
--------
Every ``task_response`` for a task comes from its receiver (anyone else:
OCP-403 ``not_receiver``) and moves the task along::

    (requested) --> accepted | in_progress | completed | failed | rejected | timeout
    accepted    --> in_progress | completed | failed | timeout
    in_progress --> in_progress | completed | failed | timeout

A receiver may answer ``in_progress``, ``completed`` or ``failed`` without an
explicit ``accepted`` first: each of them answers the request, a quick task
can finish inside the 30 s window, and an extra message would add nothing.
``in_progress`` may repeat (progress reports). Going back (``accepted`` after
``in_progress``, ``accepted`` twice) or rejecting an accepted task is
OCP-400 ``bad_transition``; anything after a terminal status is OCP-403
``task_closed``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Final

import attrs

from ocpd.proto import schema
from ocpd.proto.errors import ForbiddenError, MalformedError

if TYPE_CHECKING:
    from collections.abc import Mapping

__all__ = [
    "ACCEPT_WITHIN",
    "REASON_NOT_ANSWERED",
    "REASON_NOT_COMPLETED",
    "REQUIRED_LEVEL",
    "STATUSES",
    "TERMINAL",
    "TaskGrant",
    "TaskTerms",
    "check_task_request",
    "deadlines",
    "due",
    "next_status",
    "timeout_payload",
    "timeout_reason",
]

ACCEPT_WITHIN: Final = 30
"""Seconds the receiver has to answer a request (§6.1.3)."""

REQUIRED_LEVEL: Final = 3
"""Task delegation is a Level 3 (bonded) permission (§4.2.1)."""

STATUSES: Final = ("accepted", "in_progress", "completed", "failed", "rejected", "timeout")
TERMINAL: Final = frozenset({"completed", "failed", "rejected", "timeout"})

REASON_NOT_ANSWERED: Final = "no accept or reject within 30 s"
REASON_NOT_COMPLETED: Final = "not completed within max_duration_seconds"

_REQUEST_SCHEMA: Final = "payload.task_request"
_RESPONSE_SCHEMA: Final = "payload.task_response"

#: What may follow each open state; ``None`` is a request not answered yet.
_NEXT: Final[Mapping[str | None, frozenset[str]]] = {
    None: frozenset(STATUSES),
    "accepted": frozenset({"in_progress", "completed", "failed", "timeout"}),
    "in_progress": frozenset({"in_progress", "completed", "failed", "timeout"}),
}


@attrs.frozen
class TaskGrant:
    """The ``task_delegate`` block of a bond's (intersected) permissions."""

    enabled: bool
    max_concurrent: int | None = None
    timeout_seconds: int | None = None

    @classmethod
    def from_bond(cls, permissions: Mapping[str, Any]) -> TaskGrant:
        """The grant of a bond's ``permissions``; a missing block grants nothing."""
        block = permissions.get("task_delegate")
        if block is None:
            return cls(enabled=False)
        if not isinstance(block.get("enabled"), bool):
            raise MalformedError(
                "task_delegate.enabled must be a boolean",
                details={"field": "task_delegate.enabled"},
            )
        return cls(
            enabled=block["enabled"],
            max_concurrent=_positive(block, "max_concurrent"),
            timeout_seconds=_positive(block, "timeout_seconds"),
        )


def _positive(block: Mapping[str, Any], name: str) -> int | None:
    value = block.get(name)
    if value is None:
        return None
    whole = isinstance(value, int) or (isinstance(value, float) and value.is_integer())
    if isinstance(value, bool) or not whole:
        raise MalformedError(
            f"task_delegate.{name} must be an integer", details={"field": f"task_delegate.{name}"}
        )
    if value < 1:
        raise MalformedError(
            f"task_delegate.{name} must be at least 1", details={"field": f"task_delegate.{name}"}
        )
    return int(value)


@attrs.frozen
class TaskTerms:
    """What a node tracks for an admitted request: seconds to answer and to finish."""

    task_id: str
    max_duration: int
    accept_within: int = ACCEPT_WITHIN


def check_task_request(
    payload: Mapping[str, Any],
    *,
    requester_level: int,
    receiver_level: int,
    receiver_capabilities: frozenset[str],
    grant: TaskGrant | None,
    open_tasks: int,
) -> TaskTerms:
    """A node's checks on a ``task_request``, in the order of the module docstring.

    ``grant`` is the ``task_delegate`` grant of the bond between requester and
    receiver (``None`` without a bond); ``open_tasks`` counts the tasks
    between them that are not closed yet.
    """
    schema.validate(_REQUEST_SCHEMA, payload)
    if requester_level < REQUIRED_LEVEL:
        raise ForbiddenError(
            "task delegation needs a Level 3 requester",
            details={"reason": "trust_level", "required_level": REQUIRED_LEVEL},
        )
    if grant is None:
        raise ForbiddenError("no bond with the receiver", details={"reason": "no_bond"})
    if not grant.enabled:
        raise ForbiddenError(
            "the bond does not permit task delegation", details={"reason": "not_permitted"}
        )
    if grant.max_concurrent is not None and open_tasks >= grant.max_concurrent:
        raise ForbiddenError(
            "the bond's max_concurrent tasks are open",
            details={"reason": "max_concurrent", "max_concurrent": grant.max_concurrent},
        )
    constraints = payload["constraints"]
    if receiver_level < constraints.get("min_trust_level", 0):
        raise ForbiddenError(
            "the receiver's trust level is below the task's min_trust_level",
            details={"reason": "receiver_trust_level"},
        )
    missing = set(constraints.get("required_capabilities", ())) - receiver_capabilities
    if missing:
        raise ForbiddenError(
            "the receiver lacks a required capability",
            details={"reason": "capabilities", "missing": sorted(missing)},
        )
    max_duration = int(constraints["max_duration_seconds"])
    if grant.timeout_seconds is not None and max_duration > grant.timeout_seconds:
        raise ForbiddenError(
            "max_duration_seconds exceeds the bond's timeout_seconds",
            details={"reason": "max_duration", "timeout_seconds": grant.timeout_seconds},
        )
    return TaskTerms(task_id=payload["task_id"], max_duration=max_duration)


def deadlines(requested_at: float, terms: TaskTerms) -> tuple[float, float]:
    """``(accept_by, finish_by)``, both counted from the request.

    With ``max_duration_seconds`` under 30 the task times out at ``finish_by``
    even though the window to answer is still open.
    """
    return requested_at + terms.accept_within, requested_at + terms.max_duration


def next_status(current: str | None, reported: str, *, by_receiver: bool) -> str:
    """The status after the receiver reports ``reported`` on a task in ``current``.

    ``current`` is ``None`` while the request is unanswered. See the module
    docstring for the transitions and the errors.
    """
    if current is not None and current not in STATUSES:
        raise ValueError(f"unknown current task status {current!r}")
    if not by_receiver:
        raise ForbiddenError(
            "only the task's receiver answers a task request", details={"reason": "not_receiver"}
        )
    if reported not in STATUSES:
        raise MalformedError("unknown task status", details={"reason": "unknown_status"})
    if current in TERMINAL:
        raise ForbiddenError("the task is closed", details={"reason": "task_closed"})
    if reported not in _NEXT[current]:
        raise MalformedError(
            "task status cannot follow the current one", details={"reason": "bad_transition"}
        )
    return reported


def due(status: str | None, accept_by: float, finish_by: float, now: float) -> bool:
    """Whether the node must time the task out at ``now``.

    An unanswered task is due past ``accept_by`` or ``finish_by``; an accepted
    or running one past ``finish_by``; a closed one never.
    """
    if status in TERMINAL:
        return False
    if status is None and now > accept_by:
        return True
    return now > finish_by


def timeout_reason(status: str | None, finish_by: float, now: float) -> str:
    """The ``reason`` of a timeout that :func:`due` called for."""
    if status is None and now <= finish_by:
        return REASON_NOT_ANSWERED
    return REASON_NOT_COMPLETED


def timeout_payload(task_id: str, *, reason: str) -> dict[str, Any]:
    """A schema-valid ``task_response`` payload with status ``timeout``."""
    payload: dict[str, Any] = {"task_id": task_id, "status": "timeout", "reason": reason}
    schema.validate(_RESPONSE_SCHEMA, payload)
    return payload
