"""Layers 3 and 4 end to end: the SDK's helpers against the real daemon (registry and node).

An encrypted insight between bonded agents, checked on both sides; PVL
refusals by the SDK and by the node; a task through accept to completion;
a consensus round with honest votes, a second vote and a forged one.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Iterator
from contextlib import AsyncExitStack, asynccontextmanager
from typing import Any

import pytest
import trio

from daemon_process import Daemon, TlsFiles
from ocpd.client import AgentKey, MessageRejected, NodeClient, RegistryClient
from ocpd.client.collab import (
    ConsensusRoundRunner,
    KnowledgeExchange,
    TaskDelegation,
    cast_vote,
)
from ocpd.client.registry import build_bond
from ocpd.proto import consensus
from ocpd.proto.errors import PvlRejection

NETWORK = "testnet"
NAMES = ("alice", "bob", "carol", "dave", "erin")
PERMISSIONS = {
    "knowledge_share": {"enabled": True, "allowed_types": ["insight"]},
    "task_delegate": {"enabled": True, "max_concurrent": 2, "timeout_seconds": 300},
    "model_delta_share": {"enabled": False},
}
CAP = "cap:finance:risk_analysis"
CHOICES = {"bob": "confirm", "carol": "confirm", "dave": "confirm", "erin": "reject"}


def insight(**payload: Any) -> dict[str, Any]:
    return {
        "knowledge_type": "insight",
        "insight_id": "ins-0b6d3f4e-8a51-4c1e-9d7a-2f3b4c5d6e7f",
        "topic": "fraud_pattern_detection",
        "confidence": 0.91,
        "anonymized": True,
        "payload": payload or {"pattern_id": "FP-2026-0042", "threshold": 42.0},
        "provenance": {
            "source_agent": AGENTS["alice"].agent_id,
            "derived_from": "anonymized_transaction_logs",
            "methodology": "unsupervised_clustering",
            "timestamp": "2026-03-09T09:00:00Z",
            "reproducibility_hash": "ab" * 32,
        },
    }


AGENTS = {name: AgentKey.generate(NETWORK) for name in NAMES}


class World:
    def __init__(self, daemon: Daemon, tls: TlsFiles) -> None:
        self.daemon = daemon
        self.tls = tls

    def registry(self, name: str) -> RegistryClient:
        return RegistryClient(
            self.daemon.listeners["registry"], AGENTS[name], verify=self.tls.client_context()
        )

    def node(self, name: str, registry: RegistryClient) -> NodeClient:
        return NodeClient(
            AGENTS[name],
            resolve_did=registry.resolve_did,
            ws_url=self.daemon.listeners["ws"],
            http_url=self.daemon.listeners["http"],
            verify=str(self.tls.ca_file),
        )

    @asynccontextmanager
    async def agents(
        self, *names: str
    ) -> AsyncIterator[dict[str, tuple[RegistryClient, NodeClient]]]:
        async with AsyncExitStack() as stack:
            found = {}
            for name in names:
                registry = await stack.enter_async_context(self.registry(name))
                node = await stack.enter_async_context(self.node(name, registry))
                found[name] = (registry, node)
            yield found


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    tmp = tmp_path_factory.mktemp("collab")
    tls = TlsFiles(tmp)
    anchors = ",".join(a.agent_id for a in AGENTS.values())
    daemon = Daemon(tmp / "data", component="all", tls=tls, env={"OCP_TRUST_ANCHORS": anchors})
    daemon.start()
    try:
        daemon.wait_ready()
        world = World(daemon, tls)
        trio.run(_set_up, world)
        yield world
    finally:
        assert daemon.stop() == 0


async def _set_up(world: World) -> None:
    """Everyone registers (Level 2 as anchors); alice and bob bond (Level 3)."""
    ws = world.daemon.listeners["ws"].replace("https://", "wss://") + "/ocp/v1/ws"
    for name in NAMES:
        async with world.registry(name) as registry:
            record = registry.build_record(
                display_name=name,
                capabilities=[{"id": CAP, "name": "Risk", "version": "1.0"}],
                domains=["finance.fraud_detection"],
                endpoints=[{"transport": "ocp-ws", "url": ws, "priority": 1}],
            )
            await registry.register(record)
    async with world.registry("alice") as mine, world.registry("bob") as theirs:
        bond = build_bond(
            AGENTS["alice"].agent_id,
            AGENTS["bob"].agent_id,
            permissions=PERMISSIONS,
            now=time.time(),
        )
        assert (await mine.submit_bond(theirs.sign_bond(mine.sign_bond(bond))))["state"] == (
            "active"
        )


def test_an_encrypted_insight_is_checked_on_both_sides(world: World) -> None:
    async def run() -> None:
        with trio.fail_after(60):
            async with world.agents("alice", "bob") as agents:
                (alice_registry, alice), (bob_registry, bob) = agents["alice"], agents["bob"]
                mine = KnowledgeExchange(alice, alice_registry)
                theirs = KnowledgeExchange(bob, bob_registry)
                # the SDK refuses before anything leaves
                with pytest.raises(PvlRejection) as refused:
                    await mine.share(
                        AGENTS["bob"].agent_id, insight(contact="jane.doe@example.com")
                    )
                assert refused.value.code == "PVL-001"
                embedding = {
                    "knowledge_type": "embedding", "encoding": "float32", "dimensions": 1,
                    "vectors": [{"id": "e", "vector": "AACAPw"}],
                }  # fmt: skip
                with pytest.raises(PvlRejection) as refused:
                    await mine.share(AGENTS["bob"].agent_id, embedding)
                assert refused.value.code == "PVL-006"  # the bond allows insights only
                # the node refuses a readable payload that fails, whoever sent it
                with pytest.raises(MessageRejected) as rejected:
                    await alice.send(
                        AGENTS["bob"].agent_id,
                        "knowledge_share",
                        insight(ssn="078-05-1120"),
                        transport="http",
                    )
                assert (rejected.value.code, rejected.value.status) == ("PVL-001", 403)
                # an encrypted insight passes, and the receiver's check answers with an ack
                delivery = await mine.share(AGENTS["bob"].agent_id, insight())
                received = await bob.receive()
                assert received.message_id == delivery.message_id and received.encrypted
                assert (await theirs.accept(received))["topic"] == "fraud_pattern_detection"
                ack = await alice.receive()
                assert ack.message_type == "knowledge_ack"
                assert ack.payload == {
                    "knowledge_id": "ins-0b6d3f4e-8a51-4c1e-9d7a-2f3b4c5d6e7f",
                    "status": "accepted",
                }

    trio.run(run)


def test_a_task_is_delegated_accepted_and_completed(world: World) -> None:
    async def run() -> None:
        with trio.fail_after(60):
            async with world.agents("alice", "bob") as agents:
                alice, bob = agents["alice"][1], agents["bob"][1]
                requester, worker = TaskDelegation(alice), TaskDelegation(bob)

                async def serve() -> None:
                    request = await bob.receive()
                    assert request.message_type == "task_request"
                    await worker.respond(request, "accepted")
                    await worker.respond(
                        request, "completed", data={"risk": 0.12}, confidence=0.8,
                        execution_metadata={"duration_ms": 5},
                    )  # fmt: skip

                async with trio.open_nursery() as nursery:
                    nursery.start_soon(serve)
                    task_id = await requester.delegate(
                        AGENTS["bob"].agent_id, "analysis", {"portfolio": "p-1"},
                        max_duration=120, required_capabilities=[CAP],
                    )  # fmt: skip
                    updates = await requester.wait(task_id, limit=30)
                assert [u.status for u in updates] == ["accepted", "completed"]
                assert updates[-1].payload["result"]["data"] == {"risk": 0.12}
                # carol has no bond with alice: the node refuses
                with pytest.raises(MessageRejected) as refused:
                    await requester.delegate(
                        AGENTS["carol"].agent_id, "analysis", {}, max_duration=60
                    )
                assert refused.value.code == "OCP-403"

    trio.run(run)


def test_a_round_counts_honest_votes_only(world: World) -> None:
    async def run() -> None:
        with trio.fail_after(90):
            async with world.agents("alice", "bob", "carol", "dave", "erin") as agents:
                alice_registry, alice = agents["alice"]
                voters = {name: agents[name][1] for name in ("bob", "carol", "dave", "erin")}
                runner = ConsensusRoundRunner(
                    alice, alice_registry,
                    participants=[AGENTS[n].agent_id for n in voters],
                    topic="Classify FP-2026-0042", options=["confirm", "reject"],
                    deadline=time.time() + 8, min_participants=3, threshold=0.6,
                    required_domains=["finance"],
                )  # fmt: skip
                await runner.start()
                refusals: list[str | None] = []

                async def vote(name: str, choice: str) -> None:
                    node = voters[name]
                    initiate = await node.receive()
                    await cast_vote(node, initiate, choice, confidence=0.9, rationale=name)
                    if name == "dave":  # changes its mind: refused by the node
                        with pytest.raises(MessageRejected) as again:
                            await cast_vote(node, initiate, "reject", confidence=0.1, rationale="x")
                        refusals.append(again.value.details.get("reason"))
                    if name == "erin":  # a vote signed with another agent's key
                        forged = consensus.sign_vote(
                            runner.consensus_id, "reject", 1.0, "00" * 32,
                            AGENTS["bob"].key, voter=AGENTS["erin"].agent_id,
                        )  # fmt: skip
                        with pytest.raises(MessageRejected) as bad:
                            await node.send(AGENTS["alice"].agent_id, "consensus_vote", forged)
                        refusals.append(bad.value.details.get("reason"))

                async with trio.open_nursery() as nursery:
                    for name, choice in (
                        ("bob", "confirm"),
                        ("carol", "confirm"),
                        ("dave", "confirm"),
                        ("erin", "reject"),
                    ):
                        nursery.start_soon(vote, name, choice)
                    await runner.collect()
                await trio.sleep(max(0.0, runner.round.deadline - time.time()) + 1.0)
                result = await runner.finish()
                assert sorted(refusals, key=str) == ["already_voted", "bad_vote_signature"]
                assert result.outcome == "confirm"
                assert result.participants == 4
                announced = await voters["bob"].receive()
                assert announced.message_type == "consensus_result"
                assert announced.payload["outcome"] == "confirm"

    trio.run(run)
