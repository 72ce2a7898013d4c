"""Task delegation: request admission, the status machine and timeouts (OCP §6.1, D10)."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from conftest import NOW
from ocpd.proto import schema
from ocpd.proto import tasks as tk
from ocpd.proto.artifacts import intersect_permissions
from ocpd.proto.errors import ForbiddenError, MalformedError, OcpError

TASK_ID = "task-6f1c2a9e-4b7d-4c21-9e0a-3d5b8f217c44"
RISK = "cap:finance:risk_analysis"
GRANT = tk.TaskGrant(enabled=True, max_concurrent=5, timeout_seconds=300)
CAPABILITIES = frozenset({RISK, "cap:nlp:summarize"})


def _request(**constraints: Any) -> dict[str, Any]:
    """The §6.1.1 example, with the constraints inside the payload."""
    return {
        "task_id": TASK_ID,
        "task_type": "analysis",
        "description": "Analyze portfolio for emerging credit risk patterns",
        "input": {
            "format": "application/json",
            "schema_ref": "https://ocp.foundation/schemas/portfolio_summary_v1",
            "data": {"positions": 12},
        },
        "constraints": {
            "max_duration_seconds": 300,
            "required_capabilities": [RISK],
            "min_trust_level": 3,
            **constraints,
        },
        "callback": {"type": "ocp_message", "agent_id": "did:ocp:testnet:agent-abc123abc123"},
    }


def _check(
    payload: dict[str, Any] | None = None,
    *,
    requester_level: int = 3,
    receiver_level: int = 3,
    receiver_capabilities: frozenset[str] = CAPABILITIES,
    grant: tk.TaskGrant | None = GRANT,
    open_tasks: int = 0,
) -> tk.TaskTerms:
    return tk.check_task_request(
        _request() if payload is None else payload,
        requester_level=requester_level,
        receiver_level=receiver_level,
        receiver_capabilities=receiver_capabilities,
        grant=grant,
        open_tasks=open_tasks,
    )


def _reason(info: pytest.ExceptionInfo[OcpError]) -> object:
    return info.value.details.get("reason")


# --- constants and grants ----------------------------------------------------------------


def test_statuses_are_the_schemas() -> None:
    status = schema.load_schema("payload.task_response")["properties"]["status"]  # type: ignore[index]
    assert list(tk.STATUSES) == status["enum"]
    assert frozenset({"completed", "failed", "rejected", "timeout"}) == tk.TERMINAL
    assert tk.TERMINAL < frozenset(tk.STATUSES)
    assert tk.ACCEPT_WITHIN == 30


def test_grant_from_the_spec_example_bond() -> None:
    permissions = {
        "knowledge_share": {"enabled": True, "allowed_types": ["insight", "embedding"]},
        "task_delegate": {"enabled": True, "max_concurrent": 5, "timeout_seconds": 300},
        "model_delta_share": {"enabled": False},
    }
    assert tk.TaskGrant.from_bond(permissions) == GRANT


def test_grant_of_intersected_permissions() -> None:
    mine = {"task_delegate": {"enabled": True, "max_concurrent": 5}}
    theirs = {"task_delegate": {"enabled": True, "max_concurrent": 3, "timeout_seconds": 300}}
    agreed = intersect_permissions(mine, theirs)
    assert tk.TaskGrant.from_bond(agreed) == tk.TaskGrant(True, 3, 300)
    refused = intersect_permissions(mine, {"task_delegate": {"enabled": False}})
    assert tk.TaskGrant.from_bond(refused).enabled is False


@pytest.mark.parametrize(
    ("permissions", "grant"),
    [
        ({}, tk.TaskGrant(enabled=False)),
        ({"knowledge_share": {"enabled": True}}, tk.TaskGrant(enabled=False)),
        ({"task_delegate": {"enabled": True}}, tk.TaskGrant(enabled=True)),
        ({"task_delegate": {"enabled": True, "max_concurrent": 2.0}}, tk.TaskGrant(True, 2)),
    ],
)
def test_grant_defaults(permissions: dict[str, Any], grant: tk.TaskGrant) -> None:
    assert tk.TaskGrant.from_bond(permissions) == grant


@pytest.mark.parametrize(
    ("block", "field"),
    [
        ({}, "task_delegate.enabled"),
        ({"enabled": "yes"}, "task_delegate.enabled"),
        ({"enabled": True, "max_concurrent": 0}, "task_delegate.max_concurrent"),
        ({"enabled": True, "max_concurrent": True}, "task_delegate.max_concurrent"),
        ({"enabled": True, "max_concurrent": "3"}, "task_delegate.max_concurrent"),
        ({"enabled": True, "timeout_seconds": 1.5}, "task_delegate.timeout_seconds"),
        ({"enabled": True, "timeout_seconds": float("inf")}, "task_delegate.timeout_seconds"),
    ],
)
def test_grant_refuses_malformed_blocks(block: dict[str, Any], field: str) -> None:
    with pytest.raises(MalformedError) as info:
        tk.TaskGrant.from_bond({"task_delegate": block})
    assert info.value.details == {"field": field}


# --- request admission -------------------------------------------------------------------


def test_request_admitted() -> None:
    assert _check() == tk.TaskTerms(task_id=TASK_ID, max_duration=300, accept_within=30)


def test_minimal_request_needs_no_optional_constraint() -> None:
    payload = {
        "task_id": TASK_ID,
        "task_type": "analysis",
        "input": {"format": "text/plain"},
        "constraints": {"max_duration_seconds": 60},
    }
    terms = _check(payload, receiver_level=0, receiver_capabilities=frozenset())
    assert terms == tk.TaskTerms(task_id=TASK_ID, max_duration=60)


@pytest.mark.parametrize(
    "change",
    [
        {"constraints": {"required_capabilities": [RISK]}},
        {"constraints": {"max_duration_seconds": 0}},
        {"task_id": "task-1"},
        {"input": {"data": 1}},
        {"priority": "high"},
        {"callback": {"type": "webhook", "agent_id": "did:ocp:testnet:agent-abc123abc123"}},
    ],
)
def test_schema_refusal(change: dict[str, Any]) -> None:
    with pytest.raises(MalformedError) as info:
        _check({**_request(), **change})
    assert info.value.code == "OCP-400"
    assert info.value.details["schema"] == "payload.task_request"


@pytest.mark.parametrize("level", [0, 1, 2])
def test_requester_must_be_level_3(level: int) -> None:
    with pytest.raises(ForbiddenError) as info:
        _check(requester_level=level)
    assert info.value.code == "OCP-403"
    assert _reason(info) == "trust_level"
    assert _check(requester_level=4).task_id == TASK_ID


def test_no_bond() -> None:
    with pytest.raises(ForbiddenError) as info:
        _check(grant=None)
    assert _reason(info) == "no_bond"


def test_bond_without_task_delegation() -> None:
    with pytest.raises(ForbiddenError) as info:
        _check(grant=tk.TaskGrant(enabled=False, max_concurrent=5))
    assert _reason(info) == "not_permitted"


def test_max_concurrent() -> None:
    assert _check(open_tasks=4).task_id == TASK_ID
    for open_tasks in (5, 6):
        with pytest.raises(ForbiddenError) as info:
            _check(open_tasks=open_tasks)
        assert info.value.code == "OCP-403"
        assert info.value.details == {"reason": "max_concurrent", "max_concurrent": 5}
    unlimited = tk.TaskGrant(enabled=True)
    assert _check(grant=unlimited, open_tasks=10_000).task_id == TASK_ID


def test_receiver_trust_level() -> None:
    assert _check(receiver_level=3).task_id == TASK_ID
    with pytest.raises(ForbiddenError) as info:
        _check(receiver_level=2)
    assert _reason(info) == "receiver_trust_level"


def test_capabilities() -> None:
    payload = _request(required_capabilities=[RISK, "cap:vision:imaging", "cap:nlp:summarize"])
    with pytest.raises(ForbiddenError) as info:
        _check(payload)
    assert info.value.details == {"reason": "capabilities", "missing": ["cap:vision:imaging"]}
    assert _check(_request(required_capabilities=[])).task_id == TASK_ID


def test_max_duration_within_the_bonds_timeout() -> None:
    assert _check(_request(max_duration_seconds=300)).max_duration == 300
    with pytest.raises(ForbiddenError) as info:
        _check(_request(max_duration_seconds=301))
    assert info.value.details == {"reason": "max_duration", "timeout_seconds": 300}
    no_timeout = tk.TaskGrant(enabled=True, max_concurrent=5)
    terms = _check(_request(max_duration_seconds=86_400), grant=no_timeout)
    assert terms.max_duration == 86_400


def test_order_of_checks() -> None:
    """Relaxing one failing condition at a time uncovers the next reason."""
    failing: dict[str, Any] = {
        "requester_level": 2,
        "grant": None,
        "open_tasks": 5,
        "receiver_level": 0,
        "receiver_capabilities": frozenset(),
    }
    payload = _request(max_duration_seconds=9_999)
    fixes: list[tuple[str, dict[str, Any]]] = [
        ("trust_level", {"requester_level": 3}),
        ("no_bond", {"grant": tk.TaskGrant(enabled=False, max_concurrent=5, timeout_seconds=300)}),
        ("not_permitted", {"grant": GRANT}),
        ("max_concurrent", {"open_tasks": 0}),
        ("receiver_trust_level", {"receiver_level": 3}),
        ("capabilities", {"receiver_capabilities": CAPABILITIES}),
    ]
    for reason, fix in fixes:
        with pytest.raises(ForbiddenError) as info:
            _check(payload, **failing)
        assert _reason(info) == reason
        failing.update(fix)
    with pytest.raises(ForbiddenError) as info:
        _check(payload, **failing)
    assert _reason(info) == "max_duration"
    # The schema comes before everything.
    with pytest.raises(MalformedError):
        _check({**payload, "task_id": "x"}, requester_level=0, grant=None)


# --- deadlines and timeouts -----------------------------------------------------------------


def test_deadlines_count_from_the_request() -> None:
    assert tk.deadlines(NOW, tk.TaskTerms(TASK_ID, 300)) == (NOW + 30, NOW + 300)
    # A task shorter than the window to answer ends before the window does.
    assert tk.deadlines(NOW, tk.TaskTerms(TASK_ID, 10)) == (NOW + 30, NOW + 10)


@pytest.mark.parametrize(
    ("status", "now", "is_due"),
    [
        (None, NOW + 29, False),
        (None, NOW + 30, False),  # the deadline itself is still on time
        (None, NOW + 30.001, True),
        ("accepted", NOW + 31, False),
        ("in_progress", NOW + 300, False),
        ("accepted", NOW + 300.5, True),
        ("in_progress", NOW + 301, True),
        *((status, NOW + 10_000, False) for status in sorted(tk.TERMINAL)),
    ],
)
def test_due(status: str | None, now: float, is_due: bool) -> None:
    accept_by, finish_by = tk.deadlines(NOW, tk.TaskTerms(TASK_ID, 300))
    assert tk.due(status, accept_by, finish_by, now) is is_due


def test_short_task_is_due_at_its_finish_even_unanswered() -> None:
    accept_by, finish_by = tk.deadlines(NOW, tk.TaskTerms(TASK_ID, 10))
    assert not tk.due(None, accept_by, finish_by, NOW + 10)
    assert tk.due(None, accept_by, finish_by, NOW + 11)
    assert tk.timeout_reason(None, finish_by, NOW + 11) == tk.REASON_NOT_COMPLETED


def test_timeout_reasons() -> None:
    finish_by = NOW + 300
    assert tk.timeout_reason(None, finish_by, NOW + 31) == "no accept or reject within 30 s"
    assert (
        tk.timeout_reason("accepted", finish_by, NOW + 301)
        == "not completed within max_duration_seconds"
    )
    assert tk.timeout_reason("in_progress", finish_by, NOW + 301) == tk.REASON_NOT_COMPLETED


@pytest.mark.parametrize("reason", [tk.REASON_NOT_ANSWERED, tk.REASON_NOT_COMPLETED, ""])
def test_timeout_payload(reason: str) -> None:
    payload = tk.timeout_payload(TASK_ID, reason=reason)
    assert payload == {"task_id": TASK_ID, "status": "timeout", "reason": reason}
    schema.validate("payload.task_response", payload)


@pytest.mark.parametrize(("task_id", "reason"), [("task-1", "x"), (TASK_ID, "x" * 4097)])
def test_timeout_payload_refuses_malformed_input(task_id: str, reason: str) -> None:
    with pytest.raises(MalformedError):
        tk.timeout_payload(task_id, reason=reason)


# --- status machine -------------------------------------------------------------------------

ALLOWED: dict[str | None, set[str]] = {
    None: {"accepted", "in_progress", "completed", "failed", "rejected", "timeout"},
    "accepted": {"in_progress", "completed", "failed", "timeout"},
    "in_progress": {"in_progress", "completed", "failed", "timeout"},
}


@pytest.mark.parametrize("current", [None, *tk.STATUSES])
@pytest.mark.parametrize("reported", tk.STATUSES)
def test_transitions(current: str | None, reported: str) -> None:
    if current in tk.TERMINAL:
        with pytest.raises(ForbiddenError) as closed:
            tk.next_status(current, reported, by_receiver=True)
        assert _reason(closed) == "task_closed"
    elif reported in ALLOWED[current]:
        assert tk.next_status(current, reported, by_receiver=True) == reported
    else:
        with pytest.raises(MalformedError) as bad:
            tk.next_status(current, reported, by_receiver=True)
        assert _reason(bad) == "bad_transition"
    with pytest.raises(ForbiddenError) as other:
        tk.next_status(current, reported, by_receiver=False)
    assert other.value.code == "OCP-403"
    assert _reason(other) == "not_receiver"


def test_completed_without_an_explicit_accept() -> None:
    assert tk.next_status(None, "completed", by_receiver=True) == "completed"
    assert tk.next_status(None, "failed", by_receiver=True) == "failed"


@pytest.mark.parametrize(
    ("current", "reported"), [("accepted", "rejected"), ("in_progress", "accepted")]
)
def test_no_way_back(current: str, reported: str) -> None:
    with pytest.raises(MalformedError) as info:
        tk.next_status(current, reported, by_receiver=True)
    assert _reason(info) == "bad_transition"


def test_unknown_statuses() -> None:
    with pytest.raises(MalformedError) as info:
        tk.next_status("accepted", "paused", by_receiver=True)
    assert _reason(info) == "unknown_status"
    with pytest.raises(ValueError, match="unknown current"):
        tk.next_status("paused", "completed", by_receiver=True)


@settings(max_examples=300)
@given(reports=st.lists(st.sampled_from((*tk.STATUSES, "paused")), max_size=12))
def test_status_machine_properties(reports: list[str]) -> None:
    """Whatever a receiver reports, a closed task stays closed and never goes back."""
    status: str | None = None
    seen: list[str] = []
    rank = {"accepted": 1, "in_progress": 2}
    for reported in reports:
        before = status
        try:
            status = tk.next_status(status, reported, by_receiver=True)
        except (ForbiddenError, MalformedError) as exc:
            assert status == before
            if reported not in tk.STATUSES:
                assert exc.details["reason"] == "unknown_status"
            elif before in tk.TERMINAL:
                assert exc.details["reason"] == "task_closed"
            continue
        seen.append(status)
        assert before not in tk.TERMINAL
        if before in rank and status in rank:
            assert rank[status] >= rank[before]
        if status in tk.TERMINAL:
            assert not tk.due(status, NOW, NOW, NOW + 10**9)
    assert seen.count("accepted") <= 1
    assert sum(s in tk.TERMINAL for s in seen) <= 1


@given(
    status=st.sampled_from((None, *tk.STATUSES)),
    max_duration=st.integers(1, 10_000),
    nows=st.lists(st.floats(0, 20_000), min_size=2, max_size=2).map(sorted),
)
def test_due_stays_due(status: str | None, max_duration: int, nows: list[float]) -> None:
    accept_by, finish_by = tk.deadlines(NOW, tk.TaskTerms(TASK_ID, max_duration))
    earlier, later = (NOW + t for t in nows)
    if tk.due(status, accept_by, finish_by, earlier):
        assert tk.due(status, accept_by, finish_by, later)
        assert status not in tk.TERMINAL


def test_a_task_from_request_to_timeout() -> None:
    """What a node does: admit, track, relay the receiver's answers, time out."""
    terms = _check()
    accept_by, finish_by = tk.deadlines(NOW, terms)
    status = tk.next_status(None, "accepted", by_receiver=True)
    assert not tk.due(status, accept_by, finish_by, NOW + 31)
    status = tk.next_status(status, "in_progress", by_receiver=True)
    status = tk.next_status(status, "in_progress", by_receiver=True)
    assert tk.due(status, accept_by, finish_by, NOW + 301)
    payload = tk.timeout_payload(
        terms.task_id, reason=tk.timeout_reason(status, finish_by, NOW + 301)
    )
    assert payload["reason"] == tk.REASON_NOT_COMPLETED
    status = "timeout"
    with pytest.raises(ForbiddenError) as info:
        tk.next_status(status, "completed", by_receiver=True)
    assert _reason(info) == "task_closed"
