"""Layers 3 and 4 on the node (:mod:`ocpd.node.collab`) through ``POST /ocp/v1/messages``.

Tasks through every status, both timeouts (autojump clock), the bond and
trust checks; consensus rounds with votes admitted, refused and counted;
knowledge shares under the PVL and bond permissions.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import trio
from trio.testing import MockClock

from conftest import NETWORK, Agent
from node_helpers import (
    NODE_KEY,
    SERVICE_AGENT,
    Node,
    message,
    message_headers,
    post,
    running_node,
)
from ocpd.client.collab import new_consensus_id, task_request_payload
from ocpd.proto import consensus
from ocpd.proto.crypto import SigningKey
from ocpd.proto.encoding import format_timestamp
from ocpd.proto.envelope import (
    build_message,
    encrypt_payload,
    sign_message,
    verify_message_signature,
)
from ocpd.proto.ids import broadcast_did
from ocpd.proto.pvl import compress_delta, encode_vector
from ocpd.proto.schema import validate_envelope

TASKS = {"task_delegate": {"enabled": True, "max_concurrent": 2, "timeout_seconds": 600}}
INSIGHT_ONLY = {"knowledge_share": {"enabled": True, "allowed_types": ["insight"]}}
CAP = "cap:finance:risk_analysis"


@pytest.fixture
def clock() -> MockClock:
    return MockClock(autojump_threshold=0.1)


@asynccontextmanager
async def node_with(tmp_path: Path, **kwargs: Any) -> AsyncIterator[Node]:
    # (virtual time: the tests wait out deadlines of several minutes)
    with trio.fail_after(3600):
        async with running_node(tmp_path, **kwargs) as node:
            yield node


async def send(
    node: Node,
    sender: Agent,
    receiver: str,
    message_type: str,
    payload: Any,
    *,
    key: SigningKey | None = None,
) -> tuple[int, dict[str, Any]]:
    now = node.clock.now()
    body = message(
        sender, receiver, clock_now=now, message_type=message_type, payload=payload, key=key
    )
    answer = await post(node.http, body, headers=message_headers(sender, body, now))
    answered: dict[str, Any] = answer.json()
    if answer.status != 202:
        validate_envelope(answered)
        verify_message_signature(answered, [NODE_KEY.public_key])
        return answer.status, answered["payload"]
    return answer.status, answered


async def rows(node: Node, sql: str, *args: Any) -> list[tuple[Any, ...]]:
    return await node.database.read(lambda conn: conn.execute(sql, args).fetchall())


async def delivered_to(node: Node, agent: Agent) -> list[dict[str, Any]]:
    return [json.loads(p.raw) for p in await node.store.pending(agent.id, after=0)]


def task(**kwargs: Any) -> dict[str, Any]:
    options: dict[str, Any] = {"max_duration": 300, "required_capabilities": [CAP]}
    options.update(kwargs)
    return task_request_payload("analysis", {"portfolio": "p-1"}, **options)


def bonded(node: Node, alice: Agent, bob: Agent, permissions: Any = None) -> None:
    node.directory.add(alice, level=3)
    node.directory.add(bob, level=3, capabilities=[CAP])
    node.directory.bond(alice, bob, TASKS if permissions is None else permissions)


# --- tasks -----------------------------------------------------------------------------


async def test_a_task_goes_through_accept_progress_and_completion(
    tmp_path: Path, clock: MockClock, alice: Agent, bob: Agent
) -> None:
    async with node_with(tmp_path) as node:
        bonded(node, alice, bob)
        request = task()
        assert (await send(node, alice, bob.id, "task_request", request))[0] == 202
        task_id = request["task_id"]
        for status in ("accepted", "in_progress", "in_progress"):
            answer = await send(
                node, bob, alice.id, "task_response", {"task_id": task_id, "status": status}
            )
            assert answer[0] == 202
        done = {
            "task_id": task_id,
            "status": "completed",
            "result": {"format": "application/json", "data": {"risk": 0.2}, "confidence": 0.9},
        }
        assert (await send(node, bob, alice.id, "task_response", done))[0] == 202
        assert await rows(node, "SELECT status, requester, receiver FROM tasks") == [
            ("completed", alice.id, bob.id)
        ]
        # a closed task takes no more answers
        status, error = await send(
            node, bob, alice.id, "task_response", {"task_id": task_id, "status": "failed"}
        )
        assert (status, error["error_code"], error["details"]["reason"]) == (
            403,
            "OCP-403",
            "task_closed",
        )
        # nothing timed out later
        await trio.sleep(400)
        assert [m["payload"]["status"] for m in await delivered_to(node, alice)] == [
            "accepted",
            "in_progress",
            "in_progress",
            "completed",
        ]
        tasks_total = node.metrics.tasks
        assert tasks_total.labels("completed")._value.get() == 1
        assert tasks_total.labels("timeout")._value.get() == 0


@pytest.mark.parametrize("final", ["rejected", "failed"])
async def test_rejected_and_failed_close_a_task(
    tmp_path: Path, clock: MockClock, alice: Agent, bob: Agent, final: str
) -> None:
    async with node_with(tmp_path) as node:
        bonded(node, alice, bob)
        request = task()
        await send(node, alice, bob.id, "task_request", request)
        if final == "failed":
            await send(
                node,
                bob,
                alice.id,
                "task_response",
                {"task_id": request["task_id"], "status": "accepted"},
            )
        answer = await send(
            node, bob, alice.id, "task_response",
            {"task_id": request["task_id"], "status": final, "reason": "cannot"},
        )  # fmt: skip
        assert answer[0] == 202
        assert await rows(node, "SELECT status FROM tasks") == [(final,)]


async def test_no_answer_within_30_s_times_the_task_out(
    tmp_path: Path, clock: MockClock, alice: Agent, bob: Agent
) -> None:
    async with node_with(tmp_path) as node:
        bonded(node, alice, bob)
        request = task()
        started = trio.current_time()
        await send(node, alice, bob.id, "task_request", request)
        await trio.sleep(29)
        assert await rows(node, "SELECT status FROM tasks") == [("requested",)]
        await trio.sleep(2)
        assert await rows(node, "SELECT status FROM tasks") == [("timeout",)]
        (notice,) = await delivered_to(node, alice)
        validate_envelope(notice)
        verify_message_signature(notice, [NODE_KEY.public_key])
        assert notice["sender"]["agent_id"] == SERVICE_AGENT
        assert notice["message_type"] == "task_response"
        assert notice["payload"]["task_id"] == request["task_id"]
        assert notice["payload"]["status"] == "timeout"
        assert "30 s" in notice["payload"]["reason"]
        assert 30 <= trio.current_time() - started < 31.5
        # the receiver answers too late
        status, error = await send(
            node,
            bob,
            alice.id,
            "task_response",
            {"task_id": request["task_id"], "status": "accepted"},
        )
        assert (status, error["details"]["reason"]) == (403, "task_closed")
        assert node.metrics.tasks.labels("timeout")._value.get() == 1


async def test_an_accepted_task_not_done_within_max_duration_times_out(
    tmp_path: Path, clock: MockClock, alice: Agent, bob: Agent
) -> None:
    async with node_with(tmp_path) as node:
        bonded(node, alice, bob)
        request = task(max_duration=90)
        await send(node, alice, bob.id, "task_request", request)
        await send(
            node,
            bob,
            alice.id,
            "task_response",
            {"task_id": request["task_id"], "status": "accepted"},
        )
        await trio.sleep(85)
        assert await rows(node, "SELECT status FROM tasks") == [("accepted",)]
        await trio.sleep(10)
        assert await rows(node, "SELECT status FROM tasks") == [("timeout",)]
        notices = [
            m for m in await delivered_to(node, alice) if m["sender"]["agent_id"] == SERVICE_AGENT
        ]
        assert [n["payload"]["reason"] for n in notices] == [
            "not completed within max_duration_seconds"
        ]


async def test_deadlines_survive_a_restart(
    tmp_path: Path, clock: MockClock, alice: Agent, bob: Agent
) -> None:
    """The next deadline is read from the database when the node starts again."""
    request = task(max_duration=120)
    async with node_with(tmp_path) as node:
        bonded(node, alice, bob)
        await send(node, alice, bob.id, "task_request", request)
    async with node_with(tmp_path) as node:  # the same database file
        bonded(node, alice, bob)
        await trio.sleep(40)
        assert await rows(node, "SELECT status FROM tasks") == [("timeout",)]
        (notice,) = await delivered_to(node, alice)
        assert notice["payload"]["status"] == "timeout"


async def test_task_requests_the_node_refuses(
    tmp_path: Path, clock: MockClock, alice: Agent, bob: Agent, carol: Agent
) -> None:
    async with node_with(tmp_path) as node:
        bonded(node, alice, bob)
        node.directory.add(carol, level=3, capabilities=[CAP])

        async def refused(sender: Agent, receiver: Agent, payload: Any) -> tuple[int, str, Any]:
            status, error = await send(node, sender, receiver.id, "task_request", payload)
            return status, error["error_code"], error.get("details", {}).get("reason")

        # no bond between alice and carol
        assert await refused(alice, carol, task()) == (403, "OCP-403", "no_bond")
        # a bond that does not enable task delegation
        node.directory.bond(alice, carol, {"task_delegate": {"enabled": False}})
        assert await refused(alice, carol, task()) == (403, "OCP-403", "not_permitted")
        # the receiver lacks a capability, or the level asked for
        assert await refused(alice, bob, task(required_capabilities=["cap:finance:audit"])) == (
            403, "OCP-403", "capabilities",
        )  # fmt: skip
        assert await refused(alice, bob, task(min_trust_level=4)) == (
            403, "OCP-403", "receiver_trust_level",
        )  # fmt: skip
        # longer than the bond's timeout_seconds
        assert await refused(alice, bob, task(max_duration=601)) == (403, "OCP-403", "max_duration")
        # an encrypted task cannot be tracked
        status, error = await send(node, alice, bob.id, "task_request", "A" * 64)
        assert (status, error["error_code"]) == (400, "OCP-400")
        # max_concurrent: two open tasks, the third is refused, a closed one frees a slot
        first, second = task(), task()
        assert (await send(node, alice, bob.id, "task_request", first))[0] == 202
        assert (await send(node, alice, bob.id, "task_request", second))[0] == 202
        assert await refused(alice, bob, task()) == (403, "OCP-403", "max_concurrent")
        await send(
            node,
            bob,
            alice.id,
            "task_response",
            {"task_id": first["task_id"], "status": "rejected"},
        )
        assert (await send(node, alice, bob.id, "task_request", task()))[0] == 202
        # the same task_id again
        assert (await refused(alice, bob, second))[:2] == (400, "OCP-400")
        # a Level 2 requester
        node.directory.add(alice, level=2)
        assert await refused(alice, bob, task()) == (403, "OCP-403", "trust_level")
        # refused requests, also those refused inside the commit, left nothing for bob
        queued = [m["payload"]["task_id"] for m in await delivered_to(node, bob)]
        assert len(queued) == 3 and queued[:2] == [first["task_id"], second["task_id"]]
        assert len(await rows(node, "SELECT 1 FROM tasks")) == 3


async def test_task_responses_the_node_refuses(
    tmp_path: Path, clock: MockClock, alice: Agent, bob: Agent, carol: Agent
) -> None:
    async with node_with(tmp_path) as node:
        bonded(node, alice, bob)
        node.directory.add(carol, level=3)
        request = task()
        await send(node, alice, bob.id, "task_request", request)
        answer = {"task_id": request["task_id"], "status": "accepted"}
        # only the receiver answers, and only to the requester
        status, error = await send(node, carol, alice.id, "task_response", answer)
        assert (status, error["details"]["reason"]) == (403, "not_receiver")
        status, error = await send(node, bob, carol.id, "task_response", answer)
        assert status == 403
        # an unknown task
        unknown = {"task_id": task()["task_id"], "status": "accepted"}
        assert (await send(node, bob, alice.id, "task_response", unknown))[0] == 404
        # accepted once, then accepted again is no transition
        assert (await send(node, bob, alice.id, "task_response", answer))[0] == 202
        status, error = await send(node, bob, alice.id, "task_response", answer)
        assert (status, error["details"]["reason"]) == (400, "bad_transition")
        assert await rows(node, "SELECT status FROM tasks") == [("accepted",)]


# --- consensus ---------------------------------------------------------------------------


def initiate(now: float, *, deadline_in: float = 120, **eligible: Any) -> dict[str, Any]:
    payload: dict[str, Any] = {
        "consensus_id": new_consensus_id(),
        "topic": "Classify pattern FP-2026-0042",
        "options": ["confirm", "reject", "abstain"],
        "quorum": {"min_participants": 2, "threshold": 0.67, "weighted": True},
        "deadline": format_timestamp(now + deadline_in),
    }
    if eligible:
        payload["eligible_agents"] = eligible
    return payload


def vote(
    round_: dict[str, Any], voter: Agent, choice: str, *, key: SigningKey | None = None
) -> dict[str, Any]:
    return consensus.sign_vote(
        round_["consensus_id"], choice, 0.9, consensus.rationale_hash(f"{voter.id} thinks so"),
        key or voter.key, voter=voter.id,
    )  # fmt: skip


async def test_a_round_admits_each_eligible_vote_once_and_closes_with_its_result(
    tmp_path: Path, clock: MockClock, alice: Agent, bob: Agent, carol: Agent
) -> None:
    dave, erin = Agent(4), Agent(5)
    async with node_with(tmp_path) as node:
        node.directory.add(alice, level=2, domains=["finance"])
        for voter in (bob, carol, dave):
            node.directory.add(voter, level=2, domains=["finance.fraud_detection"])
        node.directory.add(erin, level=1, domains=["finance"])
        round_ = initiate(node.clock.now(), min_trust_level=2, required_domains=["finance"])
        for participant in (bob, carol, dave, erin):
            assert (await send(node, alice, participant.id, "consensus_initiate", round_))[0] == 202
        assert await rows(node, "SELECT initiator, status FROM consensus_rounds") == [
            (alice.id, "open")
        ]

        async def cast(voter: Agent, ballot: dict[str, Any]) -> tuple[int, Any]:
            status, answer = await send(node, voter, alice.id, "consensus_vote", ballot)
            return status, answer.get("details", {}).get("reason")

        assert await cast(bob, vote(round_, bob, "confirm")) == (202, None)
        same_again = vote(round_, bob, "confirm")
        assert await cast(bob, same_again) == (202, None)  # a resend: harmless
        assert await cast(bob, vote(round_, bob, "reject")) == (403, "already_voted")
        assert await cast(carol, vote(round_, carol, "confirm", key=bob.key)) == (
            401, "bad_vote_signature",
        )  # fmt: skip
        assert await cast(erin, vote(round_, erin, "reject")) == (403, "ineligible")
        assert (await cast(carol, vote(round_, carol, "maybe")))[0] == 400
        assert await cast(carol, vote(round_, carol, "confirm")) == (202, None)
        await trio.sleep(121)
        assert await cast(dave, vote(round_, dave, "reject")) == (403, "after_deadline")
        stored = await rows(node, "SELECT voter, vote FROM consensus_votes ORDER BY voter")
        assert sorted(stored) == sorted([(bob.id, "confirm"), (carol.id, "confirm")])

        result = {
            "consensus_id": round_["consensus_id"],
            "outcome": "confirm",
            "scores": {"confirm": 1.2, "reject": 0.0, "abstain": 0.0},
            "total_weighted_score": 1.2,
            "participants": 2,
        }
        # only the initiator announces it
        status, error = await send(node, bob, carol.id, "consensus_result", result)
        assert (status, error["details"]["reason"]) == (403, "not_initiator")
        for participant in (bob, carol):
            assert (await send(node, alice, participant.id, "consensus_result", result))[0] == 202
        assert await rows(node, "SELECT status, outcome FROM consensus_rounds") == [
            ("resolved", "confirm")
        ]
        assert node.metrics.consensus_rounds.labels("resolved")._value.get() == 1


async def test_round_refusals_before_the_deadline_and_unknown_rounds(
    tmp_path: Path, clock: MockClock, alice: Agent, bob: Agent
) -> None:
    async with node_with(tmp_path) as node:
        node.directory.add(alice, level=2)
        node.directory.add(bob, level=2)
        round_ = initiate(node.clock.now())
        # a vote in a round nobody opened, to an agent served here
        status, error = await send(
            node, bob, alice.id, "consensus_vote", vote(round_, bob, "confirm")
        )
        assert (status, error["error_code"]) == (404, "OCP-404")
        await send(node, alice, bob.id, "consensus_initiate", round_)
        # the same id for another round
        other = {**round_, "topic": "something else"}
        assert (await send(node, alice, bob.id, "consensus_initiate", other))[0] == 400
        result = {
            "consensus_id": round_["consensus_id"],
            "outcome": "no_consensus",
            "scores": {"confirm": 0.0, "reject": 0.0, "abstain": 0.0},
            "total_weighted_score": 0.0,
            "participants": 0,
        }
        status, error = await send(node, alice, bob.id, "consensus_result", result)
        assert (status, error["details"]["reason"]) == (403, "before_deadline")
        # a Level 1 agent cannot open a round
        node.directory.add(bob, level=1)
        assert (await send(node, bob, alice.id, "consensus_initiate", initiate(node.clock.now())))[
            0
        ] == 403


async def test_a_round_without_a_result_becomes_unresolved(
    tmp_path: Path, clock: MockClock, alice: Agent, bob: Agent
) -> None:
    async with node_with(tmp_path) as node:
        node.directory.add(alice, level=2)
        node.directory.add(bob, level=2)
        round_ = initiate(node.clock.now(), deadline_in=30)
        await send(node, alice, bob.id, "consensus_initiate", round_)
        await trio.sleep(30 + 59)
        assert await rows(node, "SELECT status FROM consensus_rounds") == [("open",)]
        await trio.sleep(2)
        assert await rows(node, "SELECT status FROM consensus_rounds") == [("unresolved",)]
        assert node.metrics.consensus_rounds.labels("unresolved")._value.get() == 1


# --- knowledge ----------------------------------------------------------------------------


def insight(**changes: Any) -> dict[str, Any]:
    payload: dict[str, Any] = {
        "knowledge_type": "insight",
        "insight_id": "ins-0b6d3f4e-8a51-4c1e-9d7a-2f3b4c5d6e7f",
        "topic": "fraud_pattern_detection",
        "confidence": 0.91,
        "anonymized": True,
        "payload": {"pattern_id": "FP-2026-0042", "threshold": 42.0},
        "provenance": {
            "source_agent": Agent(1).id,
            "derived_from": "anonymized_transaction_logs",
            "methodology": "unsupervised_clustering",
            "timestamp": "2026-03-09T09:00:00Z",
            "reproducibility_hash": "ab" * 32,
        },
    }
    payload.update(changes)
    return payload


def embedding() -> dict[str, Any]:
    return {
        "knowledge_type": "embedding",
        "encoding": "float32",
        "dimensions": 4,
        "normalization": "l2",
        "vectors": [{"id": "emb-001", "vector": encode_vector([0.5, 0.5, 0.5, 0.5])}],
    }


def model_delta(epsilon: float) -> dict[str, Any]:
    noise = np.random.default_rng(7).normal(0, 0.01, 4096).astype("<f4").tobytes()
    return {
        "knowledge_type": "model_delta",
        "delta_id": "md-1",
        "format": "federated_avg",
        "compression": "gzip",
        "architecture": {"family": "transformer", "parameter_count": "7B", "target_layers": ["q"]},
        "differential_privacy": {
            "mechanism": "gaussian", "epsilon": epsilon, "delta": 1e-6, "noise_multiplier": 1.1,
        },
        "payload": compress_delta(noise, "gzip"),
        "provenance": {
            "source_agent": Agent(1).id, "training_samples": 50_000,
            "timestamp": "2026-03-09T09:00:00Z",
        },
    }  # fmt: skip


async def share_encrypted(
    node: Node, sender: Agent, receiver: Agent, payload: Any
) -> tuple[int, str | None]:
    now = node.clock.now()
    unsigned = build_message(
        sender=sender.id, receiver=receiver.id, message_type="knowledge_share",
        payload=payload, now=now,
    )  # fmt: skip
    encrypted = encrypt_payload(unsigned, receiver.key.x25519_public_key())
    body = json.dumps(sign_message(encrypted, sender.key)).encode()
    answer = await post(node.http, body, headers=message_headers(sender, body, now))
    if answer.status == 202:
        return 202, None
    return answer.status, answer.json()["payload"]["error_code"]


async def test_knowledge_passes_the_pvl_under_the_bond(
    tmp_path: Path, clock: MockClock, alice: Agent, bob: Agent, carol: Agent
) -> None:
    async with node_with(tmp_path) as node:
        node.directory.add(alice, level=2)
        node.directory.add(bob, level=2)
        node.directory.add(carol, level=1)

        async def share(payload: Any, to: Agent = bob) -> tuple[int, str | None]:
            status, answer = await send(node, alice, to.id, "knowledge_share", payload)
            return status, answer.get("error_code")

        # unbonded Level 2 agents: insights and embeddings, not model deltas
        assert await share(insight()) == (202, None)
        assert await share(embedding()) == (202, None)
        assert await share(model_delta(1.0)) == (403, "PVL-006")
        # each PVL code, on a readable payload
        email = insight(payload={"contact": "jane.doe@example.com"})
        assert await share(email) == (403, "PVL-001")
        assert await share(insight(anonymized=False)) == (403, "PVL-002")
        no_provenance = insight()
        del no_provenance["provenance"]
        assert await share(no_provenance) == (403, "PVL-004")
        node.directory.bond(
            alice, bob,
            {
                "knowledge_share": {
                    "enabled": True, "allowed_types": ["insight"], "max_payload_bytes": 2048,
                },
                "model_delta_share": {"enabled": True},
            },
        )  # fmt: skip
        assert await share(embedding()) == (403, "PVL-006")
        assert await share(insight(topic="x" * 1000, payload={"notes": "y" * 1500})) == (
            413,
            "PVL-005",
        )
        # an encrypted share is held to the bond's size limit too (its exact plaintext size)
        oversized = insight(payload={"n": "y" * 3000})
        assert await share_encrypted(node, alice, bob, oversized) == (413, "PVL-005")
        assert await share_encrypted(node, alice, bob, insight()) == (202, None)
        # a model delta over the epsilon limit, with a bond that allows deltas
        node.directory.bond(
            alice, bob,
            {"knowledge_share": {"enabled": True}, "model_delta_share": {"enabled": True}},
        )  # fmt: skip
        assert await share(model_delta(10.5)) == (403, "PVL-003")
        assert await share(model_delta(2.0)) == (202, None)
        # a bond that switches knowledge off holds for encrypted shares too
        node.directory.bond(alice, bob, {"knowledge_share": {"enabled": False}})
        assert await share_encrypted(node, alice, bob, insight()) == (403, "PVL-006")
        # Level 1 receivers and senders are out of knowledge exchange
        assert await share(insight(), to=carol) == (403, "OCP-403")
        status, error = await send(node, carol, alice.id, "knowledge_share", insight())
        assert (status, error["error_code"]) == (403, "OCP-403")

        logged = await rows(
            node, "SELECT knowledge_type, knowledge_id, encrypted FROM knowledge_log ORDER BY id"
        )
        assert logged == [
            ("insight", "ins-0b6d3f4e-8a51-4c1e-9d7a-2f3b4c5d6e7f", 0),
            ("embedding", None, 0),
            (None, None, 1),
            ("model_delta", "md-1", 0),
        ]
        rejections = node.metrics.pvl_rejections
        counted = {
            c: rejections.labels(c)._value.get()
            for c in ("PVL-001", "PVL-003", "PVL-005", "PVL-006")
        }
        assert counted == {"PVL-001": 1, "PVL-003": 1, "PVL-005": 2, "PVL-006": 3}
        refused = node.metrics.messages.labels("knowledge_share", "pvl_rejected")._value.get()
        assert refused == 9
        # nothing refused was queued for bob
        assert len(await delivered_to(node, bob)) == 4


async def test_a_broadcast_share_reaches_level_2_agents_only(
    tmp_path: Path, clock: MockClock, alice: Agent, bob: Agent, carol: Agent
) -> None:
    async with node_with(tmp_path) as node:
        node.directory.add(alice, level=2, domains=["finance"])
        node.directory.add(bob, level=2, domains=["finance"])
        node.directory.add(carol, level=1, domains=["finance"])
        node.router.local.update({alice.id, bob.id, carol.id})
        now = node.clock.now()
        body = message(
            alice, broadcast_did(NETWORK), clock_now=now, message_type="knowledge_share",
            payload=insight(), broadcast=True, metadata={"tags": ["finance"]},
        )  # fmt: skip
        answer = await post(node.http, body, headers=message_headers(alice, body, now))
        assert answer.status == 202
        assert len(await delivered_to(node, bob)) == 1
        assert await delivered_to(node, carol) == []
        # and a model delta, which needs a bond, is refused as unbonded
        body = message(
            alice, broadcast_did(NETWORK), clock_now=now, message_type="knowledge_share",
            payload=model_delta(1.0), broadcast=True, metadata={"tags": ["finance"]},
        )  # fmt: skip
        answer = await post(node.http, body, headers=message_headers(alice, body, now))
        assert (answer.status, answer.json()["payload"]["error_code"]) == (403, "PVL-006")
