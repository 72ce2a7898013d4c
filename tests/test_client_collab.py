"""The Layer 3 and 4 SDK helpers' own logic, over a node that records what is sent.

The flows through a real daemon are in ``test_collab_e2e`` and ``test_client_cli``.
"""

from __future__ import annotations

from typing import Any

import pytest

from ocpd.client.collab import KnowledgeExchange, TaskDelegation
from ocpd.client.inbox import ReceivedMessage
from ocpd.proto.errors import MalformedError, PvlRejection

SENDER = "did:ocp:testnet:agent-0123456789ab"
TASK = "task-6f1c2a9e-4b7d-4c21-9e0a-3d5b8f217c44"
ME = "did:ocp:testnet:agent-ba9876543210"
PROVENANCE = {
    "source_agent": SENDER,
    "derived_from": "anonymized_records",
    "methodology": "cohort_analysis",
    "timestamp": "2026-03-09T09:00:00Z",
    "reproducibility_hash": "ab" * 32,
}


def insight(**payload: Any) -> dict[str, Any]:
    return {
        "knowledge_type": "insight",
        "insight_id": "ins-0b6d3f4e-8a51-4c1e-9d7a-2f3b4c5d6e7f",
        "topic": "tumour response",
        "confidence": 0.87,
        "anonymized": True,
        "payload": payload or {"finding": "responders share marker X"},
        "provenance": PROVENANCE,
    }


class RecordingNode:
    """Stands in for a NodeClient: keeps each send and answers with a delivery id."""

    def __init__(self) -> None:
        self.sent: list[dict[str, Any]] = []

    async def send(self, receiver: str, message_type: str, payload: Any, **options: Any) -> str:
        self.sent.append(
            {"to": receiver, "type": message_type, "payload": payload, "options": options}
        )
        return f"msg-{len(self.sent)}"


def received(payload: dict[str, Any], *, message_type: str = "knowledge_share") -> ReceivedMessage:
    return ReceivedMessage(
        message={"message_type": message_type},
        raw=b"",
        payload=payload,
        sender=SENDER,
        receiver=ME,
        message_id="msg-in-1",
        message_type=message_type,
        encrypted=True,
        sent_at=0.0,
        expires_at=3600.0,
    )


async def test_review_says_why_a_share_fails_and_sends_nothing() -> None:
    node = RecordingNode()
    knowledge = KnowledgeExchange(node)  # type: ignore[arg-type]
    assert await knowledge.review(received(insight())) is None
    error = await knowledge.review(received(insight(contact="jane.doe@example.com")))
    assert isinstance(error, PvlRejection)
    assert error.code == "PVL-001"
    unsigned = await knowledge.review(received({**insight(), "anonymized": False}))
    assert unsigned is not None and unsigned.code == "PVL-002"
    assert node.sent == []
    with pytest.raises(ValueError, match="not a knowledge_share but a task_request"):
        await knowledge.review(received(insight(), message_type="task_request"))


async def test_acknowledge_answers_in_kind_and_accept_raises_after_the_rejection() -> None:
    node = RecordingNode()
    knowledge = KnowledgeExchange(node)  # type: ignore[arg-type]
    good = insight()
    assert await knowledge.accept(received(good)) == good
    with pytest.raises(PvlRejection) as refused:
        await knowledge.accept(received(insight(contact="jane.doe@example.com")))
    accepted, rejected = node.sent
    assert accepted == {
        "to": SENDER,
        "type": "knowledge_ack",
        "payload": {"knowledge_id": good["insight_id"], "status": "accepted"},
        "options": {"encrypt": True, "metadata": {"correlation_id": "msg-in-1"}},
    }
    assert rejected["payload"] == {
        "knowledge_id": good["insight_id"],
        "status": "rejected",
        "error_code": "PVL-001",
        "message": refused.value.message,
    }
    # a share without an insight or delta id is named by its message id
    await knowledge.acknowledge(received({"knowledge_type": "embedding"}), MalformedError("bad"))
    assert node.sent[-1]["payload"] == {
        "knowledge_id": "msg-in-1",
        "status": "rejected",
        "error_code": "OCP-400",
        "message": "bad",
    }


async def test_only_a_completed_answer_carries_a_result() -> None:
    node = RecordingNode()
    tasks = TaskDelegation(node)  # type: ignore[arg-type]
    await tasks.answer(SENDER, TASK, "completed", data={"regions": 3}, confidence=0.8)
    await tasks.answer(SENDER, TASK, "failed", reason="scanner offline")
    assert [sent["payload"] for sent in node.sent] == [
        {
            "task_id": TASK,
            "status": "completed",
            "result": {"format": "application/json", "data": {"regions": 3}, "confidence": 0.8},
        },
        {"task_id": TASK, "status": "failed", "reason": "scanner offline"},
    ]
    for status, extra in (
        ("accepted", {"data": {"regions": 3}}),
        ("in_progress", {"confidence": 0.5}),
        ("failed", {"data": [], "confidence": 0.1}),
    ):
        with pytest.raises(ValueError, match=f"a {status} answer carries no result"):
            await tasks.answer(SENDER, TASK, status, **extra)
    assert len(node.sent) == 2
