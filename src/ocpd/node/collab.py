"""Layers 3 and 4 on the node: knowledge exchange, tasks and consensus rounds.

:class:`Collaboration` is one more step of the intake (after trust, receivers
and rate limits, before the durable write) for the message types these
layers add. Its ruling is either a refusal (an :class:`OcpError` or a
:class:`PvlRejection`, answered to the sender like any other) or a
:class:`Ruling` whose ``effect`` runs inside the message's own commit
(:func:`ocpd.node.store.accept_txn`): a task row, a vote, a round. Checks that
depend on what is stored (how many tasks are open, whether this agent voted
already) run there, on the database's writer, so two messages racing each
other are decided one after the other.

``knowledge_share`` (OCP §4.2.1, §4.3.2, §5)
    Both agents need Level 2. A bond in force between them decides what
    may pass (:class:`ocpd.proto.pvl.KnowledgePermissions`); without one,
    embeddings and insights may, model deltas may not. A readable payload
    goes through the whole Privacy Validation Layer
    (:func:`ocpd.proto.pvl.validate_knowledge`); an encrypted one through
    the checks that need no plaintext (the bond's switch and size limit: an
    AES-GCM ciphertext is exactly as long as its plaintext). A node never
    accepts, so never forwards, a readable payload that fails. A broadcast
    share reaches only Level 2+ receivers and is checked as unbonded.

``task_request`` / ``task_response`` (OCP §6.1, D10)
    A request goes to one agent over a bond whose ``task_delegate`` is
    enabled, within its ``max_concurrent``, from a Level 3 requester to a
    receiver with the required capabilities and level
    (:func:`ocpd.proto.tasks.check_task_request`). The node keeps each task
    in ``tasks``; only its receiver may answer, along the transitions of
    :func:`ocpd.proto.tasks.next_status`. :class:`Deadlines` marks a task
    ``timeout`` when its accept (``collaboration.ack_timeout_seconds``) or
    its completion (``max_duration_seconds``) is overdue, and the node that
    serves the requester sends it the ``task_response`` saying so.

``consensus_*`` (OCP §6.2, D10)
    An initiate opens a round (``consensus_rounds``); votes go to the
    initiator and are admitted by :func:`ocpd.proto.consensus.admit_vote`
    (signature, option, deadline, eligibility) and, in the commit, once per
    agent (``consensus_votes``). The initiator's ``consensus_result``
    closes the round; a round with no result 60 s after its deadline is
    ``unresolved``. Rounds this node never saw are not its to judge: their
    votes pass through to the initiator's node, which did see the round.

These payloads must be readable by the node (decision 124): a task or a
round it cannot read, it cannot enforce.
"""

from __future__ import annotations

import heapq
import json
import logging
import math
from typing import TYPE_CHECKING, Any, Final

import attrs
import trio

from ocpd.logs import get_logger, log_event
from ocpd.node.store import Accept
from ocpd.proto import consensus, tasks
from ocpd.proto.crypto import AEAD_TAG_SIZE
from ocpd.proto.envelope import build_message, message_digest, payload_size, sign_message
from ocpd.proto.errors import (
    ForbiddenError,
    MalformedError,
    NotFoundError,
    OcpError,
)
from ocpd.proto.pvl import (
    KnowledgePermissions,
    PvlPolicy,
    validate_knowledge,
    validate_sealed,
)

if TYPE_CHECKING:
    import sqlite3
    from collections.abc import Callable, Sequence

    from ocpd.clock import WallClock
    from ocpd.node.directory import AgentDirectory, AgentInfo
    from ocpd.node.router import Router
    from ocpd.node.store import Accepted, MessageStore
    from ocpd.proto.crypto import SigningKey
    from ocpd.storage import Database
    from ocpd.web import Metrics

__all__ = ["COLLABORATION_TYPES", "Collaboration", "Deadlines", "Ruling"]

log = get_logger("node")

COLLABORATION_TYPES: Final = frozenset(
    {
        "knowledge_share",
        "task_request",
        "task_response",
        "consensus_initiate",
        "consensus_vote",
        "consensus_result",
    }
)
#: Payloads above this size are validated off the event loop.
OFFLOAD_BYTES: Final = 65_536
#: How long the node's timeout ``task_response`` lives.
NOTICE_TTL: Final = 3600
#: Rounds kept in memory (they are read from the database on a miss).
ROUND_CACHE: Final = 4096
#: How long after a deadline :class:`Deadlines` looks (a limit is passed once exceeded).
TICK: Final = 0.01


@attrs.frozen
class Ruling:
    """What accepting one message changes: ``effect`` in its commit, ``after`` once durable."""

    effect: Callable[[sqlite3.Connection], object] | None = None
    after: Callable[[], None] | None = None
    #: The receivers the message may reach, when the rules narrowed them (broadcasts).
    receivers: tuple[AgentInfo, ...] | None = None


def _readable(message: dict[str, Any]) -> dict[str, Any]:
    payload = message["payload"]
    if not isinstance(payload, dict):
        raise MalformedError(
            f"a {message['message_type']} payload must be readable by the node",
            details={"field": "payload", "reason": "encrypted"},
        )
    return payload


def _direct(message: dict[str, Any], broadcast: bool) -> None:
    if broadcast:
        raise MalformedError(
            f"a {message['message_type']} goes to one agent, not to a broadcast",
            details={"field": "receiver"},
        )


def _encrypted_size(payload: str) -> int:
    """The plaintext length of a D5 payload: its ciphertext less the tag."""
    return max(0, len(payload) * 3 // 4 - AEAD_TAG_SIZE)


@attrs.define(eq=False)
class Collaboration:
    """The node's rules for knowledge, tasks and consensus (see the module docstring)."""

    directory: AgentDirectory
    database: Database
    clock: WallClock
    metrics: Metrics
    policy: PvlPolicy
    router: Router
    #: How long a receiver has to accept or reject a task.
    accept_within: float = tasks.ACCEPT_WITHIN
    #: The longest ``max_duration_seconds`` under a bond that sets no ``timeout_seconds``.
    default_max_duration: int = 300
    clock_skew: float = 60.0
    cpu: trio.CapacityLimiter = attrs.Factory(lambda: trio.CapacityLimiter(2))
    deadlines: Deadlines | None = None
    _rounds: dict[str, consensus.ConsensusRound] = attrs.Factory(dict)

    async def check(
        self,
        message: dict[str, Any],
        sender: AgentInfo,
        receivers: Sequence[AgentInfo],
        *,
        broadcast: bool,
        raw_size: int,
        sent_at: float,
    ) -> Ruling | None:
        """The ruling on one verified message; raises the error to answer with."""
        kind = message["message_type"]
        if kind == "knowledge_share":
            return await self._knowledge(message, sender, receivers, broadcast, raw_size)
        if kind == "task_request":
            _direct(message, broadcast)
            return await self._task_request(message, sender, receivers[0], sent_at)
        if kind == "task_response":
            _direct(message, broadcast)
            return self._task_response(message, sender)
        if kind == "consensus_initiate":
            return self._initiate(message, sender)
        if kind == "consensus_vote":
            _direct(message, broadcast)
            return await self._vote(message, sender, receivers[0])
        if kind == "consensus_result":
            _direct(message, broadcast)
            return await self._result(message, sender)
        return None

    # --- knowledge -------------------------------------------------------------------

    async def _knowledge(
        self,
        message: dict[str, Any],
        sender: AgentInfo,
        receivers: Sequence[AgentInfo],
        broadcast: bool,
        raw_size: int,
    ) -> Ruling:
        if sender.level < 2:
            raise ForbiddenError(
                "knowledge exchange needs trust level 2",
                details={"trust_level": sender.level},
            )
        bond: KnowledgePermissions | None = None
        narrowed: tuple[AgentInfo, ...] | None = None
        if broadcast:
            narrowed = tuple(r for r in receivers if r.level >= 2)
        else:
            receiver = receivers[0]
            if receiver.level < 2:
                raise ForbiddenError(
                    "the receiver cannot take part in knowledge exchange (trust level below 2)",
                    details={"receiver_trust_level": receiver.level},
                )
            found = await self.directory.bond_between(sender.agent_id, receiver.agent_id)
            if found is not None:
                bond = KnowledgePermissions.from_bond(found.permissions)
        payload = message["payload"]
        if isinstance(payload, str):
            size = _encrypted_size(payload)
            validate_sealed(size, policy=self.policy, bond=bond)
            kind: str | None = None
            knowledge_id: str | None = None
        else:
            # The raw message bounds the payload: measure it only when that could matter.
            limit, _ = self.policy.limit(bond)
            size = raw_size if raw_size <= limit else payload_size(message)
            if raw_size > OFFLOAD_BYTES:
                await trio.to_thread.run_sync(self._validate, payload, size, bond, limiter=self.cpu)
            else:
                self._validate(payload, size, bond)
            kind = payload["knowledge_type"]
            knowledge_id = payload.get("insight_id") or payload.get("delta_id")
        at = self.clock.now()
        rows = [
            (
                message["message_id"],
                sender.agent_id,
                r.agent_id,
                kind,
                knowledge_id,
                size,
                int(kind is None),
                at,
            )
            for r in (receivers if narrowed is None else narrowed)
        ]

        def log_share(conn: sqlite3.Connection) -> None:
            conn.executemany(
                "INSERT INTO knowledge_log (message_id, sender, receiver, knowledge_type, "
                "knowledge_id, payload_bytes, encrypted, at) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                rows,
            )

        return Ruling(effect=log_share, receivers=narrowed)

    def _validate(
        self, payload: dict[str, Any], size: int, bond: KnowledgePermissions | None
    ) -> None:
        validate_knowledge(payload, size=size, policy=self.policy, bond=bond)

    # --- tasks ---------------------------------------------------------------------------

    async def _task_request(
        self, message: dict[str, Any], sender: AgentInfo, receiver: AgentInfo, sent_at: float
    ) -> Ruling:
        payload = _readable(message)
        bond = await self.directory.bond_between(sender.agent_id, receiver.agent_id)
        grant = tasks.TaskGrant.from_bond(bond.permissions) if bond is not None else None
        terms = tasks.check_task_request(
            payload,
            requester_level=sender.level,
            receiver_level=receiver.level,
            receiver_capabilities=receiver.capabilities,
            grant=grant,
            open_tasks=0,
        )
        if grant is None or bond is None:  # pragma: no cover - check_task_request refused
            raise ForbiddenError("no bond permits task delegation")
        if grant.timeout_seconds is None and terms.max_duration > self.default_max_duration:
            raise ForbiddenError(
                "max_duration_seconds exceeds the node's limit for bonds without timeout_seconds",
                details={"reason": "max_duration", "limit": self.default_max_duration},
            )
        accept_by = sent_at + self.accept_within
        finish_by = sent_at + terms.max_duration
        notify = self.router.placement(sender) == "local"
        row = (
            terms.task_id,
            sender.agent_id,
            receiver.agent_id,
            bond.bond_id,
            payload["task_type"],
            "requested",
            sent_at,
            accept_by,
            finish_by,
            sent_at,
            int(notify),
            message["message_id"],
        )
        max_concurrent = grant.max_concurrent

        def open_task(conn: sqlite3.Connection) -> None:
            if conn.execute("SELECT 1 FROM tasks WHERE task_id = ?", (terms.task_id,)).fetchone():
                raise MalformedError(
                    "task_id is already in use", details={"field": "payload.task_id"}
                )
            if max_concurrent is not None:
                (open_now,) = conn.execute(
                    "SELECT count(*) FROM tasks WHERE requester = ? AND receiver = ? "
                    "AND status IN ('requested', 'accepted', 'in_progress')",
                    (sender.agent_id, receiver.agent_id),
                ).fetchone()
                if open_now >= max_concurrent:
                    raise ForbiddenError(
                        "the bond's max_concurrent tasks are already open",
                        details={"reason": "max_concurrent", "limit": max_concurrent},
                    )
            conn.execute("INSERT INTO tasks VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)", row)

        def opened() -> None:
            self.metrics.tasks.labels("requested").inc()
            if self.deadlines is not None:
                self.deadlines.wake(min(accept_by, finish_by))

        return Ruling(effect=open_task, after=opened)

    def _task_response(self, message: dict[str, Any], sender: AgentInfo) -> Ruling:
        payload = _readable(message)
        task_id = payload["task_id"]
        reported = payload["status"]
        requester = message["receiver"]["agent_id"]
        now = self.clock.now()
        changed: list[str] = []

        def answer(conn: sqlite3.Connection) -> None:
            row = conn.execute(
                "SELECT requester, receiver, status FROM tasks WHERE task_id = ?", (task_id,)
            ).fetchone()
            if row is None:
                raise NotFoundError("no such task", details={"field": "payload.task_id"})
            if row[0] != requester:
                raise ForbiddenError(
                    "a task_response goes to the task's requester", details={"field": "receiver"}
                )
            current = None if row[2] == "requested" else row[2]
            status = tasks.next_status(current, reported, by_receiver=row[1] == sender.agent_id)
            if status != row[2]:
                conn.execute(
                    "UPDATE tasks SET status = ?, updated_at = ? WHERE task_id = ?",
                    (status, now, task_id),
                )
                changed.append(status)

        def answered() -> None:
            for status in changed:
                self.metrics.tasks.labels(status).inc()

        return Ruling(effect=answer, after=answered)

    # --- consensus ---------------------------------------------------------------------

    def _initiate(self, message: dict[str, Any], sender: AgentInfo) -> Ruling:
        payload = _readable(message)
        if sender.level < 2:
            raise ForbiddenError(
                "initiating a consensus round needs trust level 2",
                details={"trust_level": sender.level},
            )
        now = self.clock.now()
        round_ = consensus.ConsensusRound.from_initiate(
            payload,
            initiator=sender.agent_id,
            now=now,
            clock_skew=self.clock_skew,
            taxonomy=self.directory.taxonomy,
        )
        text = json.dumps(payload, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
        opened: list[bool] = []

        def open_round(conn: sqlite3.Connection) -> None:
            row = conn.execute(
                "SELECT initiator, initiate FROM consensus_rounds WHERE consensus_id = ?",
                (round_.consensus_id,),
            ).fetchone()
            if row is not None:
                if row[0] != sender.agent_id or row[1] != text:
                    raise MalformedError(
                        "consensus_id is already in use by another round",
                        details={"field": "payload.consensus_id"},
                    )
                return  # the same round again, to another participant
            conn.execute(
                "INSERT INTO consensus_rounds (consensus_id, initiator, initiate, deadline, "
                "status, created_at) VALUES (?, ?, ?, ?, 'open', ?)",
                (round_.consensus_id, sender.agent_id, text, round_.deadline, now),
            )
            opened.append(True)

        def remember() -> None:
            self._remember(round_)
            if opened and self.deadlines is not None:
                self.deadlines.wake(round_.deadline + consensus.RESULT_WITHIN)

        return Ruling(effect=open_round, after=remember)

    def _remember(self, round_: consensus.ConsensusRound) -> None:
        if len(self._rounds) >= ROUND_CACHE:
            self._rounds.pop(next(iter(self._rounds)))
        self._rounds[round_.consensus_id] = round_

    async def _round(self, consensus_id: str) -> consensus.ConsensusRound | None:
        found = self._rounds.get(consensus_id)
        if found is not None:
            return found
        row = await self.database.read(
            lambda conn: conn.execute(
                "SELECT initiator, initiate, created_at FROM consensus_rounds "
                "WHERE consensus_id = ?",
                (consensus_id,),
            ).fetchone()
        )
        if row is None:
            return None
        round_ = consensus.ConsensusRound.from_initiate(
            json.loads(row[1]),
            initiator=row[0],
            now=float(row[2]),
            clock_skew=self.clock_skew,
            taxonomy=self.directory.taxonomy,
        )
        self._remember(round_)
        return round_

    async def _vote(
        self, message: dict[str, Any], sender: AgentInfo, to: AgentInfo
    ) -> Ruling | None:
        payload = _readable(message)
        round_ = await self._round(payload.get("consensus_id", ""))
        receiver = to.agent_id
        if round_ is None:
            if self.router.placement(to) == "local":
                raise NotFoundError(
                    "no such consensus round", details={"field": "payload.consensus_id"}
                )
            return None  # the initiator's node saw the round and judges the vote
        if receiver != round_.initiator:
            raise MalformedError("votes go to the round's initiator", details={"field": "receiver"})
        admitted = consensus.admit_vote(
            round_,
            payload,
            sender=sender.agent_id,
            voter=consensus.VoterFacts(
                agent_id=sender.agent_id,
                keys=sender.keys,
                level=sender.level,
                domains=sender.domains,
                trust_score=0.0,
            ),
            received_at=self.clock.now(),
            already={},
        )
        text = json.dumps(payload, sort_keys=True, separators=(",", ":"), ensure_ascii=False)

        def record(conn: sqlite3.Connection) -> None:
            row = conn.execute(
                "SELECT digest FROM consensus_votes WHERE consensus_id = ? AND voter = ?",
                (round_.consensus_id, sender.agent_id),
            ).fetchone()
            if row is not None:
                if row[0] != admitted.digest:
                    raise ForbiddenError(
                        "this agent has already voted in this round",
                        details={"reason": "already_voted"},
                    )
                return  # the same vote again
            conn.execute(
                "INSERT INTO consensus_votes VALUES (?, ?, ?, ?, ?, ?, ?)",
                (
                    round_.consensus_id,
                    sender.agent_id,
                    admitted.vote,
                    admitted.confidence,
                    admitted.digest,
                    text,
                    admitted.received_at,
                ),
            )

        return Ruling(effect=record)

    async def _result(self, message: dict[str, Any], sender: AgentInfo) -> Ruling | None:
        payload = _readable(message)
        round_ = await self._round(payload["consensus_id"])
        if round_ is None:
            return None
        now = self.clock.now()
        outcome = consensus.check_result(round_, payload, sender=sender.agent_id, now=now)
        status = "no_consensus" if outcome == "no_consensus" else "resolved"
        closed: list[str] = []

        def close(conn: sqlite3.Connection) -> None:
            changed = conn.execute(
                "UPDATE consensus_rounds SET status = ?, outcome = ?, resolved_at = ? "
                "WHERE consensus_id = ? AND status = 'open'",
                (status, outcome, now, round_.consensus_id),
            ).rowcount
            if changed:
                closed.append(status)

        def count() -> None:
            for status in closed:
                self.metrics.consensus_rounds.labels(status).inc()

        return Ruling(effect=close, after=count)


@attrs.define(eq=False)
class Deadlines:
    """Task and round deadlines: a service that wakes when the next one is due.

    Due tasks become ``timeout`` (those whose requester is served here get a
    ``task_response`` saying so from the node's service agent); open rounds
    past their deadline and grace become ``unresolved``. The next time to
    wake is kept in memory and read again from the database after each pass,
    so a restart picks up where the node stopped.
    """

    store: MessageStore
    clock: WallClock
    metrics: Metrics
    router: Router
    directory: AgentDirectory
    key: SigningKey
    service_agent: str
    clock_skew: float = 60.0
    _wakeups: list[float] = attrs.Factory(list)
    _changed: trio.Event = attrs.Factory(trio.Event)

    def wake(self, at: float) -> None:
        """Something falls due at ``at`` (epoch seconds)."""
        heapq.heappush(self._wakeups, at)
        self._changed.set()

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        next_due = await self.store.database.read(_next_due_txn)
        if next_due is not None:
            heapq.heappush(self._wakeups, next_due)
        task_status.started()
        while True:
            self._changed = trio.Event()
            delay = (self._wakeups[0] - self.clock.now()) if self._wakeups else math.inf
            if delay < 0:
                await self.sweep()
                continue
            # A deadline is passed once the clock is beyond it (a task is due
            # strictly after its limit): wake a moment later.
            with trio.move_on_after(delay + TICK):
                await self._changed.wait()

    async def sweep(self) -> None:
        """Close everything due now; then plan the next wakeup."""
        now = self.clock.now()
        due = await self.store.database.write(lambda conn: _due_txn(conn, now))
        for task_id, requester in due.timed_out:
            self.metrics.tasks.labels("timeout").inc()
            log_event(log, "task_timeout", task_id=task_id, requester=requester)
        for task_id, requester, reason in due.notify:
            await self._notify(task_id, requester, reason)
        for _ in range(due.unresolved):
            self.metrics.consensus_rounds.labels("unresolved").inc()
        while self._wakeups and self._wakeups[0] <= now:
            heapq.heappop(self._wakeups)
        next_due = await self.store.database.read(_next_due_txn)
        if next_due is not None:
            heapq.heappush(self._wakeups, next_due)

    async def _notify(self, task_id: str, requester: str, reason: str) -> None:
        try:
            info = await self.directory.lookup(requester)
        except OcpError as exc:
            log_event(
                log, "task_timeout_undelivered", level=logging.WARNING, task_id=task_id,
                error_code=exc.code,
            )  # fmt: skip
            return
        if info is None:
            return
        now = self.clock.now()
        message = sign_message(
            build_message(
                sender=self.service_agent,
                receiver=requester,
                message_type="task_response",
                payload=tasks.timeout_payload(task_id, reason=reason),
                now=now,
                ttl=NOTICE_TTL,
                priority="high",
            ),
            self.key,
        )
        raw = json.dumps(message, separators=(",", ":"), ensure_ascii=False).encode("utf-8")
        placement = self.router.placement(info)
        notice = Accept(
            message_id=message["message_id"],
            digest=message_digest(message),
            sender=self.service_agent,
            receiver=requester,
            message_type="task_response",
            raw=raw,
            expires_at=now + NOTICE_TTL,
            dedup_until=now + NOTICE_TTL + self.clock_skew,
            recipients=((requester, placement),),
            at=now,
        )

        def hand_on(results: list[Accepted]) -> None:
            for seq in results[0].seqs:
                self.router.notify(info, seq, raw, notice.expires_at, placement)

        await self.store.accept([notice], then=hand_on)


@attrs.frozen
class _Due:
    timed_out: list[tuple[str, str]]
    notify: list[tuple[str, str, str]]
    unresolved: int


def _due_txn(conn: sqlite3.Connection, now: float) -> _Due:
    rows = conn.execute(
        "SELECT task_id, requester, status, requested_at, accept_by, finish_by, notify "
        "FROM tasks WHERE status IN ('requested', 'accepted', 'in_progress') "
        "AND (finish_by <= ?1 OR (status = 'requested' AND accept_by <= ?1))",
        (now,),
    ).fetchall()
    timed_out: list[tuple[str, str]] = []
    notify: list[tuple[str, str, str]] = []
    for task_id, requester, stored, requested_at, accept_by, finish_by, wants in rows:
        status = None if stored == "requested" else stored
        if not tasks.due(status, accept_by, finish_by, now):
            continue
        reason = tasks.timeout_reason(status, finish_by, now)
        if reason == tasks.REASON_NOT_ANSWERED:
            reason = f"no accept or reject within {round(accept_by - requested_at)} s"
        conn.execute(
            "UPDATE tasks SET status = 'timeout', updated_at = ? WHERE task_id = ?",
            (now, task_id),
        )
        timed_out.append((task_id, requester))
        if wants:
            notify.append((task_id, requester, reason))
    unresolved = conn.execute(
        "UPDATE consensus_rounds SET status = 'unresolved', resolved_at = ? "
        "WHERE status = 'open' AND deadline + ? < ?",
        (now, consensus.RESULT_WITHIN, now),
    ).rowcount
    return _Due(timed_out, notify, unresolved)


def _next_due_txn(conn: sqlite3.Connection) -> float | None:
    (task,) = conn.execute(
        "SELECT min(CASE WHEN status = 'requested' THEN min(accept_by, finish_by) "
        "ELSE finish_by END) FROM tasks WHERE status IN ('requested', 'accepted', 'in_progress')"
    ).fetchone()
    (round_,) = conn.execute(
        "SELECT min(deadline) + ? FROM consensus_rounds WHERE status = 'open'",
        (consensus.RESULT_WITHIN,),
    ).fetchone()
    found = [float(t) for t in (task, round_) if t is not None]
    return min(found) if found else None
