"""Layers 3 and 4 for agents: knowledge with local privacy checks, tasks, consensus rounds.

Each helper works over a connected :class:`~ocpd.client.NodeClient` (and a
:class:`~ocpd.client.RegistryClient` where the registry must be asked) and
leaves the receiving loop to the application: what arrives is passed in as
:class:`~ocpd.client.ReceivedMessage`.

:class:`KnowledgeExchange`
    :meth:`~KnowledgeExchange.share` runs the Privacy Validation Layer
    (:func:`ocpd.proto.pvl.validate_knowledge`) on the plaintext before it is
    encrypted and sent, under the bond the registry lists between the two
    agents; :meth:`~KnowledgeExchange.accept` runs it again on a share that
    arrived (after decryption) and answers ``knowledge_ack``. Nothing that
    fails leaves the agent, or is taken in by it.
:class:`TaskDelegation`
    Delegating (``task_request``), answering (``task_response``, one call per
    status change) and following a task to its end.
:class:`ConsensusRoundRunner` and :func:`cast_vote`
    The initiator opens a round with every participant, collects the votes
    that reach it (checked again here: signature, option, deadline), tallies
    them with each voter's trust score from the registry (§6.2.3) and sends
    ``consensus_result`` to every participant; voters sign their vote.
"""

from __future__ import annotations

import uuid
from typing import TYPE_CHECKING, Any, Final

import anyio
import attrs

from ocpd.proto import consensus, schema
from ocpd.proto.encoding import format_timestamp
from ocpd.proto.errors import OcpError
from ocpd.proto.pvl import KnowledgePermissions, PvlPolicy, check_outgoing
from ocpd.proto.tasks import TERMINAL

if TYPE_CHECKING:
    from collections.abc import Iterable, Mapping, Sequence

    from ocpd.client.inbox import ReceivedMessage
    from ocpd.client.node import Delivery, NodeClient
    from ocpd.client.registry import RegistryClient

__all__ = [
    "ConsensusRoundRunner",
    "KnowledgeExchange",
    "TaskDelegation",
    "bond_permissions",
    "cast_vote",
    "misplaced_result",
    "new_consensus_id",
    "new_task_id",
    "send_vote",
    "task_request_payload",
]

#: Receiving loops in :meth:`TaskDelegation.wait` give up after this long by default.
DEFAULT_WAIT: Final = 600.0


def new_task_id() -> str:
    return f"task-{uuid.uuid4()}"


def new_consensus_id() -> str:
    return f"con-{uuid.uuid4()}"


def _knowledge_id(payload: Mapping[str, Any], message_id: str) -> str:
    found = payload.get("insight_id") or payload.get("delta_id")
    return found if isinstance(found, str) else message_id


# --- knowledge ------------------------------------------------------------------------


async def bond_permissions(
    registry: RegistryClient, agent_id: str, peer: str
) -> KnowledgePermissions | None:
    """The knowledge permissions of the newest bond in force between two agents."""
    for bond in await registry.bonds(agent_id):
        if peer in bond["agents"] and peer != agent_id:
            return KnowledgePermissions.from_bond(bond["permissions"])
    return None


class KnowledgeExchange:
    """Share and take in knowledge (OCP §5), with the PVL on both sides."""

    def __init__(
        self,
        node: NodeClient,
        registry: RegistryClient | None = None,
        *,
        policy: PvlPolicy | None = None,
    ) -> None:
        self.node = node
        self.registry = registry
        self.policy = policy or PvlPolicy()

    async def permissions(self, peer: str) -> KnowledgePermissions | None:
        """What the newest bond in force with ``peer`` allows (``None``: no bond or registry)."""
        if self.registry is None:
            return None
        return await bond_permissions(self.registry, self.node.agent.agent_id, peer)

    async def check(self, receiver: str, payload: Mapping[str, Any]) -> None:
        """The checks :meth:`share` makes, without sending: schema, then the PVL."""
        check_outgoing(payload, policy=self.policy, bond=await self.permissions(receiver))

    async def share(
        self,
        receiver: str,
        payload: Mapping[str, Any],
        *,
        encrypt: bool = True,
        requires_ack: bool = False,
    ) -> Delivery:
        """Check ``payload`` here (:class:`~ocpd.proto.errors.PvlRejection`), then send it."""
        await self.check(receiver, payload)
        return await self.node.send(
            receiver, "knowledge_share", payload, encrypt=encrypt, requires_ack=requires_ack
        )

    async def accept(self, received: ReceivedMessage) -> dict[str, Any]:
        """Check a ``knowledge_share`` that arrived and answer it with ``knowledge_ack``.

        Returns the payload when it passes. When it fails, the ack says
        ``rejected`` with the code, and the error is raised.
        """
        error = await self.review(received)
        await self.acknowledge(received, error)
        if error is not None:
            raise error
        return received.payload

    async def review(self, received: ReceivedMessage) -> OcpError | None:
        """Run the PVL on a ``knowledge_share`` that arrived, under the bond
        with its sender; returns why it fails, or ``None`` when it passes.

        Sends nothing: :meth:`acknowledge` answers it. A registry that cannot
        be asked raises (the share is then neither taken in nor answered).
        """
        if received.message_type != "knowledge_share":
            raise ValueError(f"not a knowledge_share but a {received.message_type}")
        bond = await self.permissions(received.sender)
        try:
            check_outgoing(received.payload, policy=self.policy, bond=bond)
        except OcpError as exc:
            return exc
        return None

    async def acknowledge(self, received: ReceivedMessage, error: OcpError | None) -> Delivery:
        """Answer a ``knowledge_share`` with ``knowledge_ack``: ``accepted``, or
        ``rejected`` with ``error``'s code and message."""
        knowledge_id = _knowledge_id(received.payload, received.message_id)
        ack: dict[str, Any] = {
            "knowledge_id": knowledge_id[:256],
            "status": "accepted" if error is None else "rejected",
        }
        if error is not None:
            ack["error_code"] = error.code
            ack["message"] = error.message[:4096]
        return await self.node.send(
            received.sender,
            "knowledge_ack",
            ack,
            encrypt=received.encrypted,
            metadata={"correlation_id": received.message_id},
        )


# --- tasks ------------------------------------------------------------------------------


def task_request_payload(
    task_type: str,
    data: Any,
    *,
    max_duration: int,
    input_format: str = "application/json",
    description: str | None = None,
    schema_ref: str | None = None,
    required_capabilities: Sequence[str] = (),
    min_trust_level: int | None = None,
    callback: str | None = None,
    task_id: str | None = None,
) -> dict[str, Any]:
    """A schema-valid ``task_request`` payload (OCP §6.1.1)."""
    task_input: dict[str, Any] = {"format": input_format, "data": data}
    if schema_ref is not None:
        task_input["schema_ref"] = schema_ref
    constraints: dict[str, Any] = {"max_duration_seconds": max_duration}
    if required_capabilities:
        constraints["required_capabilities"] = list(required_capabilities)
    if min_trust_level is not None:
        constraints["min_trust_level"] = min_trust_level
    payload: dict[str, Any] = {
        "task_id": task_id or new_task_id(),
        "task_type": task_type,
        "input": task_input,
        "constraints": constraints,
    }
    if description is not None:
        payload["description"] = description
    if callback is not None:
        payload["callback"] = {"type": "ocp_message", "agent_id": callback}
    schema.validate("payload.task_request", payload)
    return payload


def misplaced_result(status: str, *, data: Any = None, confidence: Any = None) -> list[str]:
    """Which of ``data`` and ``confidence`` are given with a ``status`` that
    carries no result (any but ``completed``): the names, in that order."""
    if status == "completed":
        return []
    given = (("data", data), ("confidence", confidence))
    return [name for name, value in given if value is not None]


@attrs.define
class TaskUpdate:
    """One ``task_response`` about a task: its status, and the whole payload."""

    task_id: str
    status: str
    payload: dict[str, Any]
    sender: str

    @property
    def final(self) -> bool:
        return self.status in TERMINAL


class TaskDelegation:
    """Delegate tasks to bonded peers and serve the tasks they delegate (OCP §6.1)."""

    def __init__(self, node: NodeClient) -> None:
        self.node = node
        #: Messages :meth:`wait` received that were not about its task, in order.
        self.set_aside: list[ReceivedMessage] = []

    async def delegate(
        self, receiver: str, task_type: str, data: Any, *, max_duration: int, **options: Any
    ) -> str:
        """Send a ``task_request``; returns its ``task_id``.

        ``options`` are those of :func:`task_request_payload`. The node refuses
        (:class:`~ocpd.client.MessageRejected`, OCP-403 with a reason) without a
        bond that enables ``task_delegate``, past ``max_concurrent``, or when
        the receiver lacks the level or capabilities asked for.
        """
        payload = task_request_payload(task_type, data, max_duration=max_duration, **options)
        await self.node.send(receiver, "task_request", payload)
        task_id: str = payload["task_id"]
        return task_id

    async def respond(
        self,
        request: ReceivedMessage,
        status: str,
        **details: Any,
    ) -> Delivery:
        """Answer a ``task_request`` that arrived; ``details`` as for :meth:`answer`."""
        if request.message_type != "task_request":
            raise ValueError(f"not a task_request but a {request.message_type}")
        return await self.answer(
            request.sender,
            request.payload["task_id"],
            status,
            correlation_id=request.message_id,
            **details,
        )

    async def answer(
        self,
        requester: str,
        task_id: str,
        status: str,
        *,
        data: Any = None,
        result_format: str = "application/json",
        confidence: float | None = None,
        reason: str | None = None,
        execution_metadata: Mapping[str, Any] | None = None,
        correlation_id: str | None = None,
    ) -> Delivery:
        """Send a ``task_response``: ``accepted`` or ``rejected`` first, then the outcome.

        A ``completed`` answer carries ``data`` (and ``confidence``) as its
        result; giving either with another status is a ``ValueError``, since
        only a completed task has a result to carry them.
        """
        misplaced = misplaced_result(status, data=data, confidence=confidence)
        if misplaced:
            raise ValueError(
                f"a {status} answer carries no result ({' and '.join(misplaced)}): "
                "only a completed one does"
            )
        payload: dict[str, Any] = {"task_id": task_id, "status": status}
        if status == "completed":
            result: dict[str, Any] = {"format": result_format, "data": data}
            if confidence is not None:
                result["confidence"] = confidence
            payload["result"] = result
        if reason is not None:
            payload["reason"] = reason
        if execution_metadata is not None:
            payload["execution_metadata"] = dict(execution_metadata)
        schema.validate("payload.task_response", payload)
        metadata = {"correlation_id": correlation_id} if correlation_id is not None else None
        return await self.node.send(requester, "task_response", payload, metadata=metadata)

    @staticmethod
    def update(received: ReceivedMessage) -> TaskUpdate | None:
        """The task update a message carries, if it is a ``task_response``."""
        if received.message_type != "task_response":
            return None
        payload = received.payload
        return TaskUpdate(payload["task_id"], payload["status"], payload, received.sender)

    async def wait(self, task_id: str, *, limit: float = DEFAULT_WAIT) -> list[TaskUpdate]:
        """Receive until the task reaches a final status; returns every update, in order.

        A ``timeout`` from the node's service agent is final too. Messages
        about anything else are kept in :attr:`set_aside`.
        """
        updates: list[TaskUpdate] = []
        with anyio.fail_after(limit):
            while True:
                received = await self.node.receive()
                update = self.update(received)
                if update is None or update.task_id != task_id:
                    self.set_aside.append(received)
                    continue
                updates.append(update)
                if update.final:
                    return updates


# --- consensus ---------------------------------------------------------------------------


async def cast_vote(
    node: NodeClient,
    initiate: ReceivedMessage,
    choice: str,
    *,
    confidence: float,
    rationale: str | bytes,
) -> Delivery:
    """Sign a vote in the round ``initiate`` opened and send it to its initiator.

    Only the SHA3-256 of ``rationale`` leaves the agent (``rationale_hash``).
    """
    if initiate.message_type != "consensus_initiate":
        raise ValueError(f"not a consensus_initiate but a {initiate.message_type}")
    return await send_vote(
        node,
        initiate.sender,
        initiate.payload["consensus_id"],
        choice,
        confidence=confidence,
        rationale=rationale,
        correlation_id=initiate.message_id,
    )


async def send_vote(
    node: NodeClient,
    initiator: str,
    consensus_id: str,
    choice: str,
    *,
    confidence: float,
    rationale: str | bytes,
    correlation_id: str | None = None,
) -> Delivery:
    """:func:`cast_vote` for a round known by its id and initiator."""
    vote = consensus.sign_vote(
        consensus_id,
        choice,
        confidence,
        consensus.rationale_hash(rationale),
        node.agent.key,
        voter=node.agent.agent_id,
    )
    metadata = {"correlation_id": correlation_id} if correlation_id is not None else None
    return await node.send(initiator, "consensus_vote", vote, metadata=metadata)


class ConsensusRoundRunner:
    """One round run by its initiator: open, collect, tally, announce (OCP §6.2)."""

    def __init__(
        self,
        node: NodeClient,
        registry: RegistryClient,
        *,
        participants: Iterable[str],
        topic: str,
        options: Sequence[str],
        deadline: float,
        min_participants: int,
        threshold: float,
        weighted: bool = True,
        min_trust_level: int | None = None,
        required_domains: Sequence[str] = (),
        consensus_id: str | None = None,
    ) -> None:
        self.node = node
        self.registry = registry
        self.participants = tuple(dict.fromkeys(participants))
        if not self.participants:
            raise ValueError("a round needs participants")
        payload: dict[str, Any] = {
            "consensus_id": consensus_id or new_consensus_id(),
            "topic": topic,
            "options": list(options),
            "quorum": {
                "min_participants": min_participants,
                "threshold": threshold,
                "weighted": weighted,
            },
            "deadline": format_timestamp(deadline),
        }
        eligible: dict[str, Any] = {}
        if min_trust_level is not None:
            eligible["min_trust_level"] = min_trust_level
        if required_domains:
            eligible["required_domains"] = list(required_domains)
        if eligible:
            payload["eligible_agents"] = eligible
        self.payload = payload
        self.round = consensus.ConsensusRound.from_initiate(
            payload, initiator=node.agent.agent_id, now=node.now()
        )
        self.votes: list[consensus.AdmittedVote] = []
        self._digests: dict[str, str] = {}
        #: Votes refused here, with the reason (they do not count).
        self.refused: list[tuple[str, str]] = []

    @property
    def consensus_id(self) -> str:
        return self.round.consensus_id

    async def start(self) -> None:
        """Send ``consensus_initiate`` to every participant."""
        for participant in self.participants:
            await self.node.send(participant, "consensus_initiate", self.payload)

    async def offer(self, received: ReceivedMessage) -> bool:
        """Take a ``consensus_vote`` for this round; ``False`` when it is not one, or fails.

        Checked again here: signature under the voter's DID keys, option and
        deadline. Eligibility (level, domains) is judged by the initiator's
        node, which reads the voter's registry facts; a second, different
        vote of one agent is kept, so that the tally leaves that agent out.
        """
        if received.message_type != "consensus_vote":
            return False
        vote = received.payload
        if vote.get("consensus_id") != self.consensus_id:
            return False
        document = await self.node.documents.get(received.sender)
        facts = consensus.VoterFacts(
            agent_id=received.sender,
            keys=tuple(document.verification_keys()),
            level=0,
            domains=(),
            trust_score=0.0,
        )
        judged_by_node = attrs.evolve(self.round, min_trust_level=0, required_domains=())
        try:
            admitted = consensus.admit_vote(
                judged_by_node,
                vote,
                sender=received.sender,
                voter=facts,
                received_at=received.sent_at,
                already={},
            )
        except OcpError as exc:
            self.refused.append((received.sender, str(exc.details.get("reason", exc.code))))
            return False
        if self._digests.get(received.sender) == admitted.digest:
            return True
        self._digests.setdefault(received.sender, admitted.digest)
        self.votes.append(admitted)
        return True

    async def collect(self) -> None:
        """Receive until the deadline, offering every vote; other messages are dropped."""
        remaining = self.round.deadline - self.node.now()
        with anyio.move_on_after(max(0.0, remaining)):
            while True:
                await self.offer(await self.node.receive())

    async def scores(self) -> dict[str, float]:
        """Each voter's trust score, from the registry."""
        found: dict[str, float] = {}
        for voter in dict.fromkeys(v.voter for v in self.votes):
            report = await self.registry.trust(voter)
            found[voter] = float(report["trust_score"])
        return found

    async def finish(self, *, include_votes: bool = True) -> consensus.Tally:
        """Tally (§6.2.3) and send ``consensus_result`` to every participant and voter.

        Call it after the deadline and within 60 s of it: the nodes refuse a
        result outside that window.
        """
        weights = await self.scores() if self.round.weighted else {}
        result = consensus.tally(self.round, self.votes, scores=weights)
        votes = [v.artifact for v in self.votes] if include_votes else []
        payload = consensus.result_payload(self.round, result, include_votes=votes)
        for receiver in dict.fromkeys([*self.participants, *(v.voter for v in self.votes)]):
            if receiver != self.node.agent.agent_id:
                await self.node.send(receiver, "consensus_result", payload)
        return result
