"""Checks of the ``knowledge`` and ``full`` levels: knowledge exchange, tasks, consensus.

Knowledge exchange (OCP §5) needs Level 2 agents, task delegation (OCP §6.1)
Level 3: Level 2 and a bond in force (OCP §4.2.1). A black-box client cannot
make its own agents Level 2: that level comes from being a trust anchor the
registry is configured with, or from the vouches of at least
``vouch_threshold`` Level 2 agents (3 unless the registry's ``/info`` says
otherwise). So the suite is given the keys of trust anchors of the target
registry (``--anchor-keys``, see :func:`read_anchor_keys`) and uses them for
one thing only: vouching. Every check registers its own fresh probe agents and
has ``vouch_threshold`` anchors vouch for each one that must be Level 2; the
agents it needs at Level 3 then form the bonds it needs, with exactly the
permissions the check is about (the suite's :class:`Cohort`). Without enough
anchor keys every check here answers ``not_tested``, saying so.

Fresh agents for every check keep the checks apart, whatever order they run
in and however often the suite runs against the same deployment: no bond of
one check decides what another may send (a pair of agents has one bond in
force), no open task of one counts against another's ``max_concurrent``, no
rate limit bucket (knowledge shares per agent, bond submissions per agent) is
shared, and a node that caches levels and bonds for a while (ocpd in ``node``
mode, 30 s) sees every agent first with its final level and bonds: each
check sets them up before its first message. The anchors only ever vouch; an
anchor the registry does not hold (or holds inactive) is registered first,
one it holds is left as it is.

Messages are built and signed with ``ocpd.proto`` only and sent over HTTPS
(``POST /ocp/v1/messages``, D3); what reaches an agent is read from its
WebSocket session, as in :mod:`conformance.transport`. A refusal is an
OCPUMF ``error`` message with the code: OCP codes travel with their status
(D6), PVL codes with 403, PVL-005 (a size limit) with 413 (``docs/decisions.md``,
entry 32). The
specification names no code for refused votes: any of OCP-400, OCP-401 and
OCP-403 is taken as a refusal, and the detail says which came.

What the checks assume beyond the specification's words:

* a knowledge share whose embedding vectors do not match their declared
  ``dimensions``, are not L2-normalised while they say so (or say nothing),
  or whose insight ``confidence`` is outside [0, 1], is malformed: OCP-400;
* model deltas are sent over a bond that permits them (``model_delta_share``),
  so a node that refuses unbonded deltas (ocpd does) is judged on the rule
  under test, not on that;
* the task accept window is 30 s (OCP §6.1.3), or ``--task-accept-window``;
  the node may time a task out 1 s early (timestamps are whole seconds), and
  must have done so within :data:`TIMEOUT_GRACE` of its deadline;
* clocks agree to within :data:`LATE_BY`: the late vote of
  ``OCP-FULL-CONS-003`` is sent that long after the round's deadline.
"""

from __future__ import annotations

import json
import math
import random
import struct
import time
import uuid
from dataclasses import dataclass, field
from functools import wraps
from typing import TYPE_CHECKING, Any, Final

import trio

from conformance.checks import (
    Answer,
    Outcome,
    ProbeAgent,
    Unexpected,
    checked,
    compact,
    unsigned_bond,
)
from conformance.transport import (
    ACCEPTED,
    Signers,
    TargetNode,
    describe,
    expect_delivery,
    flip_signature,
    node_error_code,
)
from ocpd.proto import consensus
from ocpd.proto.artifacts import sign_bond
from ocpd.proto.crypto import SigningKey
from ocpd.proto.encoding import b64url_decode, b64url_encode, format_timestamp, parse_timestamp
from ocpd.proto.errors import MalformedError, OcpError

if TYPE_CHECKING:
    from collections.abc import Callable, Mapping, Sequence
    from pathlib import Path

    from conformance.checks import Check, Probe
    from conformance.transport import AgentSession

__all__ = [
    "CHECKS",
    "DEFAULT_VOUCH_THRESHOLD",
    "TASK_ACCEPT_WINDOW",
    "TIMEOUT_GRACE",
    "VOTE_REFUSALS",
    "Case",
    "Cohort",
    "NotTested",
    "Observed",
    "anchor_keys_text",
    "code_status",
    "parse_anchor_keys",
    "read_anchor_keys",
    "refusal_problems",
    "run_cases",
]

#: OCP §4.2.1: Level 2 needs the vouches of three Level 2 agents (a registry may say
#: otherwise in ``/info`` as ``vouch_threshold``).
DEFAULT_VOUCH_THRESHOLD: Final = 3
#: How long a task's receiver has to answer (OCP §6.1.3); ``--task-accept-window``.
TASK_ACCEPT_WINDOW: Final = 30.0
#: ``max_duration_seconds`` of the task that is accepted and then left to time out.
SHORT_DURATION: Final = 2
#: How long after a deadline the node's timeout ``task_response`` may come.
TIMEOUT_GRACE: Final = 5.0
#: Timestamps are whole seconds (D1): a deadline may be met up to this much early.
TIMESTAMP_PRECISION: Final = 1.0
#: Seconds from opening a round to its deadline in ``OCP-FULL-CONS-003``.
ROUND_DEADLINE: Final = 3.0
#: How long after that deadline the late vote is sent.
LATE_BY: Final = 2.0
#: Deadline of the rounds that are not about deadlines.
ROUND_OPEN: Final = 600.0
#: The bond limit on payload bytes under which ``OCP-KNOW-PVL-005`` sends a larger insight.
BOND_PAYLOAD_LIMIT: Final = 2048
#: docs/decisions.md, entry 32: PVL rejections travel with HTTP 403, PVL-005 (a size limit)
#: with 413.
PVL_SIZE_STATUS: Final = 413
PVL_STATUS: Final = 403
#: Codes a refused vote may carry: OCP §6.2.4 says "rejected" and names none.
VOTE_REFUSALS: Final = ("OCP-400", "OCP-401", "OCP-403")
KNOWLEDGE_OFF: Final = {"knowledge_share": {"enabled": False}}


class NotTested(Exception):
    """The check cannot judge the target (its message says why): ``not_tested``."""


def needs_anchors(check: Check) -> Check:
    """:func:`checked`, and :class:`NotTested` turned into a ``not_tested`` outcome."""
    inner = checked(check)

    @wraps(check)
    async def run(probe: Probe) -> Outcome:
        try:
            return await inner(probe)
        except NotTested as exc:
            return Outcome("not_tested", str(exc))

    return run


# --- anchor keys --------------------------------------------------------------------------------


def _seed(value: object, where: str) -> SigningKey:
    try:
        return SigningKey(b64url_decode(value, field="seed", length=32))
    except MalformedError:
        raise ValueError(f"{where}: not an unpadded base64url Ed25519 seed of 32 bytes") from None


def parse_anchor_keys(text: str, *, source: str = "anchor keys") -> list[SigningKey]:
    """The keys of one ``--anchor-keys`` file.

    Either one unpadded base64url Ed25519 seed (32 bytes, 43 characters) per
    line, with blank lines and ``#`` comments ignored, or a key file of
    ``ocpd agent keygen`` (a JSON object with ``"key/alg": "ed25519"`` and
    its ``seed`` in the same form). Raises ``ValueError`` naming the line.
    """
    if text.lstrip().startswith("{"):
        try:
            body = json.loads(text)
        except ValueError as exc:
            raise ValueError(f"{source}: not a JSON key file ({exc})") from None
        if not isinstance(body, dict) or body.get("key/alg") != "ed25519":
            raise ValueError(f"{source}: not an ed25519 key file of ocpd agent keygen")
        return [_seed(body.get("seed"), f"{source}: seed")]
    keys = []
    for number, line in enumerate(text.splitlines(), 1):
        content = line.split("#", 1)[0].strip()
        if content:
            keys.append(_seed(content, f"{source}, line {number}"))
    if not keys:
        raise ValueError(f"{source}: no keys")
    return keys


def read_anchor_keys(paths: Sequence[Path]) -> tuple[SigningKey, ...]:
    """The keys of every file in ``paths``, in order, each distinct key once."""
    found: dict[bytes, SigningKey] = {}
    for path in paths:
        try:
            text = path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            raise ValueError(f"{path}: {exc}") from None
        for key in parse_anchor_keys(text, source=str(path)):
            found.setdefault(key.public_key, key)
    return tuple(found.values())


def anchor_keys_text(keys: Sequence[SigningKey]) -> str:
    """An ``--anchor-keys`` file holding ``keys`` (secret: write it with mode 0600)."""
    lines = ["# Ed25519 seeds (unpadded base64url) of trust anchors, one per line"]
    lines += [b64url_encode(key.seed()) for key in keys]
    return "\n".join(lines) + "\n"


# --- probe agents at the levels the checks need ------------------------------------------------


def _not_enough(needed: int | None, given: int) -> NotTested:
    count = (
        f"at least {needed} keys (the registry's vouch_threshold)"
        if needed is not None
        else f"as many keys as the registry's vouch_threshold ({DEFAULT_VOUCH_THRESHOLD} unless"
        " its /info says otherwise)"
    )
    return NotTested(
        f"needs --anchor-keys with {count} of trust anchors of the target registry:"
        f" Level 2 comes only from anchors and their vouches (OCP §4.2.1); {given} given"
    )


def _level_of(answer: Answer, agent: ProbeAgent) -> int:
    report = answer.object(f"GET trust of {agent.agent_id}")
    level = report.get("trust_level")
    if answer.status != 200 or not isinstance(level, int) or isinstance(level, bool):
        raise Unexpected(f"GET trust of {agent.agent_id}: {answer.describe()}, no trust_level")
    return level


class Cohort:
    """Fresh probe agents of one check, lifted to Level 2 by the anchors' vouches."""

    def __init__(self, node: TargetNode, anchors: list[ProbeAgent]) -> None:
        self.node = node
        self.registry = node.registry
        self.anchors = anchors

    @classmethod
    async def open(cls, probe: Probe) -> Cohort:
        """The node, and ``vouch_threshold`` anchors registered at Level 2 or more.

        :class:`NotTested` when too few keys were given, or an anchor is not
        Level 2 at the registry (the key is not one of its trust anchors).
        """
        if not probe.anchor_keys:
            raise _not_enough(None, 0)
        node = await TargetNode.open(probe)
        info = (await node.registry.call("GET", "/info")).object("GET info")
        threshold = info.get("vouch_threshold", DEFAULT_VOUCH_THRESHOLD)
        if not isinstance(threshold, int) or isinstance(threshold, bool) or threshold < 1:
            raise Unexpected(f"GET info: vouch_threshold {threshold!r} is not a positive integer")
        if len(probe.anchor_keys) < threshold:
            raise _not_enough(threshold, len(probe.anchor_keys))
        anchors = [ProbeAgent(node.network, key) for key in probe.anchor_keys[:threshold]]
        cohort = cls(node, anchors)
        for anchor in anchors:
            await cohort._anchor_ready(anchor)
        return cohort

    async def _anchor_ready(self, anchor: ProbeAgent) -> None:
        view = await self.registry.call("GET", f"/agents/{anchor.agent_id}")
        body = view.body if isinstance(view.body, dict) else {}
        if view.status == 404 or (view.status == 200 and body.get("status") != "active"):
            await self.registry.registered(anchor, endpoints=self.node.endpoints())
        elif view.status != 200:
            raise Unexpected(f"GET agents/{{id}} of anchor {anchor.agent_id}: {view.describe()}")
        level = await self.level(anchor)
        if level < 2:
            raise NotTested(
                f"{anchor.agent_id} (a key of --anchor-keys) is Level {level} at the target"
                " registry: it is not one of its trust anchors (ocpd: trust.anchors,"
                " OCP_TRUST_ANCHORS)"
            )

    async def level(self, agent: ProbeAgent) -> int:
        return _level_of(await self.registry.call("GET", f"/agents/{agent.agent_id}/trust"), agent)

    async def newcomer(self, **record: Any) -> ProbeAgent:
        """A fresh Level 1 agent, reached through the node under test."""
        agent = self.registry.agent()
        await self.registry.registered(agent, endpoints=self.node.endpoints(), **record)
        return agent

    async def agent(self, **record: Any) -> ProbeAgent:
        """A fresh agent the anchors vouch for: Level 2 (``record``: fields of its record)."""
        agent = await self.newcomer(**record)
        for anchor in self.anchors:
            answer = await self.registry.call(
                "POST", "/vouches", anchor.vouch(agent.agent_id), agent=anchor
            )
            if answer.status not in (200, 201):
                raise Unexpected(f"a vouch by the anchor {anchor.agent_id}: {answer.describe()}")
        await self.require_level(agent, 2, f"after the vouches of {len(self.anchors)} anchors")
        return agent

    async def require_level(self, agent: ProbeAgent, level: int, how: str) -> None:
        found = await self.level(agent)
        if found < level:
            raise Unexpected(f"a probe agent is Level {found} {how}, not Level {level}")

    async def bond(
        self, first: ProbeAgent, second: ProbeAgent, permissions: Mapping[str, Any]
    ) -> None:
        """A bond signed by both, submitted by ``first``; both are Level 3 afterwards."""
        bond = unsigned_bond(first.agent_id, second.agent_id, permissions=permissions)
        bond = sign_bond(bond, first.key, first.agent_id)
        bond = sign_bond(bond, second.key, second.agent_id)
        answer = await self.registry.call("POST", "/bonds", bond, agent=first)
        if answer.status not in (200, 201):
            raise Unexpected(f"a bond between two Level 2 probe agents: {answer.describe()}")
        for agent in (first, second):
            await self.require_level(agent, 3, "with a bond in force")


# --- what the checks send ------------------------------------------------------------------------


def insight(source: ProbeAgent, **changes: Any) -> dict[str, Any]:
    """A valid insight (OCP §5.1.2) by ``source``; ``changes`` replace fields."""
    payload: dict[str, Any] = {
        "knowledge_type": "insight",
        "insight_id": f"ins-{uuid.uuid4()}",
        "topic": "fraud_pattern_detection",
        "confidence": 0.91,
        "anonymized": True,
        "payload": {"pattern_id": "FP-2026-0042", "threshold": 42.0},
        "provenance": {
            "source_agent": source.agent_id,
            "derived_from": "anonymized_transaction_logs",
            "methodology": "unsupervised_clustering",
            "timestamp": format_timestamp(time.time()),
            "reproducibility_hash": "ab" * 32,
        },
    }
    payload.update(changes)
    return payload


def _without(payload: Mapping[str, Any], name: str) -> dict[str, Any]:
    return {k: v for k, v in payload.items() if k != name}


def vector(values: Sequence[float]) -> str:
    """One float32 vector: little-endian IEEE 754 values, unpadded base64url (OCP §5.1.1)."""
    return b64url_encode(struct.pack(f"<{len(values)}f", *values))


def embedding(
    values: Sequence[float],
    *,
    dimensions: int | None = None,
    normalization: str | None = "l2",
    label: str | None = None,
) -> dict[str, Any]:
    """A float32 embedding of one vector; ``normalization`` ``None`` leaves the field out."""
    item = {"id": "emb-001", "vector": vector(values)}
    if label is not None:
        item["label"] = label
    payload: dict[str, Any] = {
        "knowledge_type": "embedding",
        "encoding": "float32",
        "dimensions": len(values) if dimensions is None else dimensions,
        "vectors": [item],
    }
    if normalization is not None:
        payload["normalization"] = normalization
    return payload


#: A unit vector and one of norm sqrt(30).
UNIT: Final = (0.5, 0.5, 0.5, 0.5)
LONG: Final = (1.0, 2.0, 3.0, 4.0)
DP: Final = {"mechanism": "gaussian", "epsilon": 1.0, "delta": 1e-6, "noise_multiplier": 1.1}


def _tensor(count: int = 1024) -> bytes:
    """Small float32 noise: what a model update looks like (no text, no repeated records)."""
    noise = random.Random(count)  # noqa: S311 - test data, not a secret
    return struct.pack(f"<{count}f", *(noise.gauss(0.0, 0.01) for _ in range(count)))


def model_delta(source: ProbeAgent, **changes: Any) -> dict[str, Any]:
    """A valid model delta (OCP §5.1.3) by ``source``; ``changes`` replace fields."""
    payload: dict[str, Any] = {
        "knowledge_type": "model_delta",
        "delta_id": f"md-{uuid.uuid4()}",
        "format": "federated_avg",
        "compression": "none",
        "architecture": {
            "family": "transformer",
            "parameter_count": "7B",
            "target_layers": ["q_proj"],
        },
        "differential_privacy": dict(DP),
        "payload": b64url_encode(_tensor()),
        "provenance": {
            "source_agent": source.agent_id,
            "training_samples": 50_000,
            "timestamp": format_timestamp(time.time()),
        },
    }
    payload.update(changes)
    return payload


def task_permissions(
    *, enabled: bool = True, max_concurrent: int | None = None, timeout: int = 600
) -> dict[str, Any]:
    """Bond permissions (OCP §4.3.2) for task delegation only."""
    block: dict[str, Any] = {"enabled": enabled}
    if enabled:
        block["timeout_seconds"] = timeout
        if max_concurrent is not None:
            block["max_concurrent"] = max_concurrent
    return {**KNOWLEDGE_OFF, "task_delegate": block}


def task_request(*, max_duration: int = 300) -> dict[str, Any]:
    """A ``task_request`` payload (OCP §6.1.1) with a fresh ``task_id``."""
    return {
        "task_id": f"task-{uuid.uuid4()}",
        "task_type": "conformance_probe",
        "input": {"format": "application/json", "data": {"probe": uuid.uuid4().hex[:8]}},
        "constraints": {"max_duration_seconds": max_duration},
    }


def task_response(task_id: str, status: str, **fields: Any) -> dict[str, Any]:
    return {"task_id": task_id, "status": status, **fields}


def consensus_round(deadline: float, **eligible: Any) -> dict[str, Any]:
    """A ``consensus_initiate`` payload (OCP §6.2.1) with a fresh ``consensus_id``."""
    payload: dict[str, Any] = {
        "consensus_id": f"con-{uuid.uuid4()}",
        "topic": "conformance probe round",
        "options": ["confirm", "reject"],
        "quorum": {"min_participants": 1, "threshold": 0.5, "weighted": False},
        "deadline": format_timestamp(deadline),
    }
    if eligible:
        payload["eligible_agents"] = eligible
    return payload


def vote(
    round_: Mapping[str, Any], voter: ProbeAgent, choice: str, *, key: SigningKey | None = None
) -> dict[str, Any]:
    """A signed vote (OCP §6.2.2) of ``voter``, signed by its key (or by ``key``)."""
    return consensus.sign_vote(
        round_["consensus_id"],
        choice,
        0.9,
        consensus.rationale_hash(f"{voter.agent_id} {choice}"),
        key or voter.key,
        voter=voter.agent_id,
    )


# --- what the checks expect ----------------------------------------------------------------------


def code_status(code: str) -> int:
    """The HTTP status a refusal with ``code`` travels with (D6; docs/decisions.md, entry 32)."""
    if code.startswith("OCP-"):
        return int(code[4:])
    return PVL_SIZE_STATUS if code == "PVL-005" else PVL_STATUS


def refusal_problems(answer: Answer, codes: Sequence[str]) -> list[str]:
    """What keeps ``answer`` from being a refusal with one of ``codes`` (an OCPUMF error)."""
    code = node_error_code(answer)
    if code is None or code not in codes or answer.status != code_status(code):
        wanted = " or ".join(f"HTTP {code_status(c)} {c}" for c in codes)
        return [f"{describe(answer)}, expected {wanted}"]
    body: dict[str, Any] = answer.body
    problems = []
    if body.get("message_type") != "error":
        problems.append(
            f"the refusal is a message of type {body.get('message_type')!r}, not an error"
        )
    sender = body.get("sender")
    if not isinstance(sender, dict) or not isinstance(sender.get("signature"), str):
        problems.append("the refusal carries no sender.signature")
    return problems


@dataclass(frozen=True)
class Case:
    """One message of a check: who sends it, and whether it must be refused."""

    what: str
    sender: ProbeAgent
    message: dict[str, Any]
    #: The codes its refusal may carry; empty: it must be accepted (and delivered).
    refused_with: tuple[str, ...] = ()


@dataclass
class Observed:
    """What a check saw: its problems, and the refusals it got (for the detail)."""

    problems: list[str] = field(default_factory=list)
    #: ``what: HTTP 403 PVL-001`` for each refusal, in order.
    refusals: list[str] = field(default_factory=list)

    def merge(self, other: Observed) -> None:
        self.problems += other.problems
        self.refusals += other.refusals

    def outcome(self, summary: str) -> Outcome:
        refused = "; ".join(self.refusals)
        return Outcome.of(self.problems, f"{refused}; {summary}" if refused else summary)


async def run_cases(
    node: TargetNode, cases: Sequence[Case], inbox: AgentSession | None
) -> Observed:
    """Send ``cases`` in order over HTTPS; accepted ones must reach ``inbox`` as sent.

    The receiver's messages from one sender come in order (D6), so a refused
    message that was delivered all the same shows up in place of the next
    accepted one.
    """
    seen = Observed()
    for case in cases:
        answer = await node.send(case.message, signer=case.sender)
        if case.refused_with:
            found = refusal_problems(answer, case.refused_with)
            seen.problems += [f"{case.what}: {p}" for p in found]
            seen.refusals.append(f"{case.what}: {describe(answer)}")
        elif answer.status not in ACCEPTED:
            seen.problems.append(f"{case.what}: {describe(answer)}, expected 202")
        elif inbox is not None:
            text = compact(case.message).decode("utf-8")
            await expect_delivery(seen.problems, inbox, text, f"{case.what}, at its receiver")
    return seen


# --- knowledge exchange (OCP §4.2.1, §5) ---------------------------------------------------------


def _share(node: TargetNode, sender: ProbeAgent, to: ProbeAgent, payload: Any) -> dict[str, Any]:
    return node.message(sender, to.agent_id, message_type="knowledge_share", payload=payload)


@needs_anchors
async def check_knowledge_trust(probe: Probe) -> Outcome:
    """OCP-KNOW-TRUST-001: knowledge exchange needs Level 2 on both sides (OCP-403)."""
    cohort = await Cohort.open(probe)
    node = cohort.node
    sender, receiver = await cohort.agent(), await cohort.agent()
    newcomer = await cohort.newcomer()
    cases = [
        Case(
            "an insight from a Level 1 agent to a Level 2 agent",
            newcomer,
            _share(node, newcomer, receiver, insight(newcomer)),
            ("OCP-403",),
        ),
        Case(
            "an insight from a Level 2 agent to a Level 1 agent",
            sender,
            _share(node, sender, newcomer, insight(sender)),
            ("OCP-403",),
        ),
        Case(
            "the same insight from a Level 2 agent to a Level 2 agent",
            sender,
            _share(node, sender, receiver, insight(sender)),
        ),
    ]
    async with node.session(receiver) as inbox:
        seen = await run_cases(node, cases, inbox)
    return seen.outcome("Level 2 to Level 2: accepted and delivered")


async def _knowledge_cases(
    probe: Probe,
    build: Callable[[TargetNode, ProbeAgent, ProbeAgent], list[Case]],
    *,
    bond: Mapping[str, Any] | None = None,
) -> Observed:
    """Fresh Level 2 sender and receiver (bonded with ``bond``), ``build``'s cases sent."""
    cohort = await Cohort.open(probe)
    node = cohort.node
    sender, receiver = await cohort.agent(), await cohort.agent()
    if bond is not None:
        await cohort.bond(sender, receiver, bond)
    async with node.session(receiver) as inbox:
        return await run_cases(node, build(node, sender, receiver), inbox)


def _shares(
    node: TargetNode, sender: ProbeAgent, receiver: ProbeAgent, *items: tuple[str, Any, str | None]
) -> list[Case]:
    """Cases of ``(what, payload, code)`` from ``sender`` to ``receiver``; no code: accepted."""
    return [
        Case(what, sender, _share(node, sender, receiver, payload), (code,) if code else ())
        for what, payload, code in items
    ]


#: A bond that permits every kind of knowledge, model deltas included.
DELTA_BOND: Final = {"knowledge_share": {"enabled": True}, "model_delta_share": {"enabled": True}}


@needs_anchors
async def check_embeddings(probe: Probe) -> Outcome:
    """OCP-KNOW-EMB-001: float32 vectors, matching dimensions, L2-normalised unless declared."""

    def build(node: TargetNode, sender: ProbeAgent, receiver: ProbeAgent) -> list[Case]:
        return _shares(
            node,
            sender,
            receiver,
            ("a float32 unit vector", embedding(UNIT), None),
            ("dimensions 5 for a vector of 4 values", embedding(UNIT, dimensions=5), "OCP-400"),
            ("dimensions 3 for a vector of 4 values", embedding(UNIT, dimensions=3), "OCP-400"),
            ("normalization l2 with a vector of norm 5.5", embedding(LONG), "OCP-400"),
            (
                "no normalization (l2) with a vector of norm 5.5",
                embedding(LONG, normalization=None),
                "OCP-400",
            ),
            (
                "normalization none with a vector of norm 5.5",
                embedding(LONG, normalization="none"),
                None,
            ),
        )

    seen = await _knowledge_cases(probe, build)
    return seen.outcome(
        "the float32 unit vector and the declared unnormalised one accepted and delivered"
    )


@needs_anchors
async def check_insights(probe: Probe) -> Outcome:
    """OCP-KNOW-INS-001: confidence in [0, 1], anonymized true, provenance present."""

    def build(node: TargetNode, sender: ProbeAgent, receiver: ProbeAgent) -> list[Case]:
        return _shares(
            node,
            sender,
            receiver,
            ("confidence 1.5", insight(sender, confidence=1.5), "OCP-400"),
            ("confidence -0.1", insight(sender, confidence=-0.1), "OCP-400"),
            ("anonymized false", insight(sender, anonymized=False), "PVL-002"),
            ("no provenance", _without(insight(sender), "provenance"), "PVL-004"),
            ("confidence 0", insight(sender, confidence=0), None),
            ("confidence 1", insight(sender, confidence=1), None),
        )

    seen = await _knowledge_cases(probe, build)
    return seen.outcome("insights with confidence 0 and 1 accepted and delivered")


@needs_anchors
async def check_model_deltas(probe: Probe) -> Outcome:
    """OCP-KNOW-DELTA-001: model deltas carry DP parameters; epsilon over 10.0 is refused."""

    def build(node: TargetNode, sender: ProbeAgent, receiver: ProbeAgent) -> list[Case]:
        return _shares(
            node,
            sender,
            receiver,
            (
                "epsilon 10.5",
                model_delta(sender, differential_privacy={**DP, "epsilon": 10.5}),
                "PVL-003",
            ),
            (
                "no differential_privacy",
                _without(model_delta(sender), "differential_privacy"),
                "PVL-003",
            ),
            ("epsilon 1.0", model_delta(sender), None),
            (
                "epsilon 10.0",
                model_delta(sender, differential_privacy={**DP, "epsilon": 10.0}),
                None,
            ),
        )

    seen = await _knowledge_cases(probe, build, bond=DELTA_BOND)
    return seen.outcome(
        "deltas with epsilon 1.0 and 10.0 accepted and delivered (over a bond permitting them)"
    )


@needs_anchors
async def check_pvl_pii(probe: Probe) -> Outcome:
    """OCP-KNOW-PVL-001: PII in a knowledge payload gets PVL-001."""

    def build(node: TargetNode, sender: ProbeAgent, receiver: ProbeAgent) -> list[Case]:
        return _shares(
            node,
            sender,
            receiver,
            (
                "an insight with an e-mail address",
                insight(sender, payload={"contact": "jane.doe@example.com"}),
                "PVL-001",
            ),
            (
                "an insight with a US SSN",
                insight(sender, payload={"note": "case of 078-05-1120"}),
                "PVL-001",
            ),
            (
                "an embedding with a phone number in its label",
                embedding(UNIT, label="call +1 415-555-2671"),
                "PVL-001",
            ),
            ("the insight without them", insight(sender), None),
        )

    seen = await _knowledge_cases(probe, build)
    return seen.outcome("the same insight without personal data accepted and delivered")


@needs_anchors
async def check_pvl_raw_data(probe: Probe) -> Outcome:
    """OCP-KNOW-PVL-002: raw, non-anonymized data gets PVL-002."""

    def build(node: TargetNode, sender: ProbeAgent, receiver: ProbeAgent) -> list[Case]:
        return _shares(
            node,
            sender,
            receiver,
            ("an insight with anonymized false", insight(sender, anonymized=False), "PVL-002"),
            ("the insight with anonymized true", insight(sender), None),
        )

    seen = await _knowledge_cases(probe, build)
    return seen.outcome("the anonymized insight accepted and delivered")


@needs_anchors
async def check_pvl_privacy(probe: Probe) -> Outcome:
    """OCP-KNOW-PVL-003: unmet differential privacy requirements get PVL-003."""

    def build(node: TargetNode, sender: ProbeAgent, receiver: ProbeAgent) -> list[Case]:
        return _shares(
            node,
            sender,
            receiver,
            (
                "a model delta with epsilon 10.5",
                model_delta(sender, differential_privacy={**DP, "epsilon": 10.5}),
                "PVL-003",
            ),
            (
                "a model delta without differential_privacy",
                _without(model_delta(sender), "differential_privacy"),
                "PVL-003",
            ),
            (
                "a model delta whose differential_privacy lacks epsilon",
                model_delta(sender, differential_privacy=_without(DP, "epsilon")),
                "PVL-003",
            ),
            ("a model delta with epsilon 1.0", model_delta(sender), None),
        )

    seen = await _knowledge_cases(probe, build, bond=DELTA_BOND)
    return seen.outcome("the delta with epsilon 1.0 accepted and delivered")


@needs_anchors
async def check_pvl_provenance(probe: Probe) -> Outcome:
    """OCP-KNOW-PVL-004: missing provenance gets PVL-004."""

    def build(node: TargetNode, sender: ProbeAgent, receiver: ProbeAgent) -> list[Case]:
        return _shares(
            node,
            sender,
            receiver,
            ("an insight without provenance", _without(insight(sender), "provenance"), "PVL-004"),
            (
                "a model delta without provenance",
                _without(model_delta(sender), "provenance"),
                "PVL-004",
            ),
            ("the insight with its provenance", insight(sender), None),
        )

    seen = await _knowledge_cases(probe, build, bond=DELTA_BOND)
    return seen.outcome("the insight with its provenance accepted and delivered")


@needs_anchors
async def check_pvl_size(probe: Probe) -> Outcome:
    """OCP-KNOW-PVL-005: a payload over the size limit (here the bond's) gets PVL-005."""
    limit = BOND_PAYLOAD_LIMIT

    def build(node: TargetNode, sender: ProbeAgent, receiver: ProbeAgent) -> list[Case]:
        return _shares(
            node,
            sender,
            receiver,
            (
                f"an insight of over {2 * limit} bytes",
                insight(sender, payload={"notes": "y" * (2 * limit)}),
                "PVL-005",
            ),
            ("an insight of under 1 KiB", insight(sender), None),
        )

    bond = {"knowledge_share": {"enabled": True, "max_payload_bytes": limit}}
    seen = await _knowledge_cases(probe, build, bond=bond)
    return seen.outcome(
        f"under a bond with max_payload_bytes {limit}; the small insight accepted and delivered"
    )


@needs_anchors
async def check_pvl_bond_types(probe: Probe) -> Outcome:
    """OCP-KNOW-PVL-006: a knowledge type the bond does not permit gets PVL-006."""

    def build(node: TargetNode, sender: ProbeAgent, receiver: ProbeAgent) -> list[Case]:
        return _shares(
            node,
            sender,
            receiver,
            ("an embedding", embedding(UNIT), "PVL-006"),
            ("a model delta", model_delta(sender), "PVL-006"),
            ("an insight", insight(sender), None),
        )

    bond = {
        "knowledge_share": {"enabled": True, "allowed_types": ["insight"]},
        "model_delta_share": {"enabled": False},
    }
    seen = await _knowledge_cases(probe, build, bond=bond)
    return seen.outcome("under a bond allowing insights only; the insight accepted and delivered")


# --- tasks (OCP §6.1, D10) --------------------------------------------------------------------


@needs_anchors
async def check_task_permissions(probe: Probe) -> Outcome:
    """OCP-FULL-TASK-001: a bond enabling task_delegate, within its max_concurrent."""
    cohort = await Cohort.open(probe)
    node = cohort.node
    requester = await cohort.agent()
    worker, stranger, unpermitted = await cohort.agent(), await cohort.agent(), await cohort.agent()
    await cohort.bond(requester, worker, task_permissions(max_concurrent=1))
    await cohort.bond(requester, unpermitted, task_permissions(enabled=False))

    def request(what: str, to: ProbeAgent, *codes: str) -> Case:
        message = node.message(
            requester, to.agent_id, message_type="task_request", payload=task_request()
        )
        return Case(what, requester, message, codes)

    def rejection(task: Case) -> Case:
        payload = task_response(
            task.message["payload"]["task_id"], "rejected", reason="conformance probe"
        )
        message = node.message(
            worker, requester.agent_id, message_type="task_response", payload=payload
        )
        return Case(f"the worker's rejection of {task.what}", worker, message)

    first = request("a task to a bonded worker (max_concurrent 1)", worker)
    third = request("a task after the worker rejected the first", worker)
    async with node.session(worker) as inbox:
        seen = await run_cases(
            node,
            [
                request("a task to a Level 2 agent without a bond", stranger, "OCP-403"),
                request(
                    "a task over a bond whose task_delegate is disabled", unpermitted, "OCP-403"
                ),
                first,
                request("a second task while the first is open", worker, "OCP-403"),
            ],
            inbox,
        )
        # Closing the first task frees its place: the next one is taken again.
        seen.merge(await run_cases(node, [rejection(first)], None))
        seen.merge(await run_cases(node, [third], inbox))
        seen.merge(await run_cases(node, [rejection(third)], None))
    return seen.outcome(
        "tasks within the bond's max_concurrent accepted and delivered to the worker, before"
        " and after it rejected the first"
    )


def _notice_problems(notice: Mapping[str, Any], requester: ProbeAgent) -> list[str]:
    receiver = notice.get("receiver")
    to = receiver.get("agent_id") if isinstance(receiver, dict) else None
    if to != requester.agent_id:
        return [f"is addressed to {to!r}, not the requester"]
    return []


def _timeout_of(text: str, task_ids: set[str]) -> tuple[str, dict[str, Any]] | None:
    """``(task_id, message)`` when ``text`` is a task_response timeout for one of ``task_ids``."""
    try:
        message = json.loads(text)
    except ValueError:
        return None
    if not isinstance(message, dict) or message.get("message_type") != "task_response":
        return None
    payload = message.get("payload")
    if not isinstance(payload, dict) or payload.get("status") != "timeout":
        return None
    task_id = payload.get("task_id")
    return (task_id, message) if task_id in task_ids else None


@dataclass(frozen=True)
class Timed:
    """A task the node must time out: its request and when the timeout is due."""

    what: str
    message: dict[str, Any]
    #: Seconds after the request's timestamp.
    due: float
    sent_at: float


@needs_anchors
async def check_task_timeouts(probe: Probe) -> Outcome:
    """OCP-FULL-TASK-002: the node answers task_response timeout when a task is overdue.

    Two tasks at once: one nobody answers (timeout after the accept window,
    30 s) and one accepted at once with ``max_duration_seconds`` 2, never
    completed. Each timeout must come to the requester's session no earlier
    than its limit after the request (by the timestamps: the node's notice
    against the request) and within :data:`TIMEOUT_GRACE` of it.
    """
    window = probe.task_accept_window
    cohort = await Cohort.open(probe)
    node = cohort.node
    requester, worker = await cohort.agent(), await cohort.agent()
    slow = math.ceil(window) + 60
    await cohort.bond(requester, worker, task_permissions(max_concurrent=2, timeout=slow + 60))
    signers = Signers(cohort.registry)
    tasks: dict[str, Timed] = {}
    found: dict[str, tuple[dict[str, Any], float]] = {}

    async def send(what: str, duration: int, due: float) -> str:
        payload = task_request(max_duration=duration)
        message = node.message(
            requester, worker.agent_id, message_type="task_request", payload=payload
        )
        sent_at = trio.current_time()
        await node.accepted(message, requester, what)
        tasks[payload["task_id"]] = Timed(what, message, due, sent_at)
        return str(payload["task_id"])

    async with node.session(requester) as inbox:
        await send("the task nobody answers", slow, window)
        short = await send(
            f"the task accepted, max_duration_seconds {SHORT_DURATION}",
            SHORT_DURATION,
            float(SHORT_DURATION),
        )
        accept = node.message(
            worker,
            requester.agent_id,
            message_type="task_response",
            payload=task_response(short, "accepted"),
        )
        await node.accepted(accept, worker, "the worker's accepted answer")
        last = max(timed.sent_at + timed.due for timed in tasks.values()) + TIMEOUT_GRACE
        with trio.move_on_after(last - trio.current_time()):
            while len(found) < len(tasks):
                text = await inbox.delivery("the requester", wait=math.inf)
                timeout = _timeout_of(text, set(tasks) - set(found))
                if timeout is not None:
                    found[timeout[0]] = (timeout[1], trio.current_time())
    problems: list[str] = []
    seen: list[str] = []
    for task_id, timed in tasks.items():
        if task_id not in found:
            problems.append(
                f"{timed.what}: no task_response timeout within {timed.due + TIMEOUT_GRACE:g} s"
                " of its request"
            )
            continue
        notice, arrived = found[task_id]
        waited = arrived - timed.sent_at
        problems += [f"{timed.what}: the timeout {p}" for p in _notice_problems(notice, requester)]
        problems += [f"{timed.what}: the timeout: {p}" for p in await signers.problems(notice)]
        try:
            late = parse_timestamp(notice.get("timestamp")) - parse_timestamp(
                timed.message["timestamp"]
            )
        except OcpError:
            problems.append(f"{timed.what}: the timeout's timestamp is not a D1 timestamp")
            continue
        if late < timed.due - TIMESTAMP_PRECISION:
            problems.append(
                f"{timed.what}: timed out {late:g} s after its request (by the timestamps),"
                f" before its {timed.due:g} s"
            )
        if waited > timed.due + TIMEOUT_GRACE:
            problems.append(f"{timed.what}: the timeout came only after {waited:.1f} s")
        seen.append(
            f"{timed.what}: timeout {late:g} s after its request by the timestamps"
            f" ({waited:.1f} s after it was sent)"
        )
    if problems:
        return Outcome("fail", "; ".join(problems))
    by = sorted({found[t][0]["sender"]["agent_id"] for t in found})
    return Outcome(
        "pass",
        f"{'; '.join(seen)} (accept window {window:g} s); task_response timeout messages to the"
        f" requester signed by {', '.join(by)} (keys from the registry)",
    )


@needs_anchors
async def check_task_statuses(probe: Probe) -> Outcome:
    """OCP-FULL-TASK-003: task_response statuses; each answer reaches the requester."""
    cohort = await Cohort.open(probe)
    node = cohort.node
    requester, worker = await cohort.agent(), await cohort.agent()
    await cohort.bond(requester, worker, task_permissions(max_concurrent=3))
    ids = []
    for index in range(3):
        payload = task_request()
        message = node.message(
            requester, worker.agent_id, message_type="task_request", payload=payload
        )
        await node.accepted(message, requester, f"task request {index + 1}")
        ids.append(payload["task_id"])
    done, failing, declined = ids

    def answer(what: str, task_id: str, status: str, *codes: str, **fields: Any) -> Case:
        payload = task_response(task_id, status, **fields)
        message = node.message(
            worker, requester.agent_id, message_type="task_response", payload=payload
        )
        return Case(what, worker, message, codes)

    result = {"format": "application/json", "data": {"risk": 0.12}, "confidence": 0.8}
    cases = [
        answer("task 1 accepted", done, "accepted"),
        answer("task 1 in_progress", done, "in_progress"),
        answer("task 2 accepted", failing, "accepted"),
        answer("status 'paused' for task 3", declined, "paused", "OCP-400"),
        answer("task 1 completed", done, "completed", result=result),
        answer("task 2 failed", failing, "failed", reason="conformance probe"),
        answer("task 3 rejected", declined, "rejected", reason="conformance probe"),
    ]
    async with node.session(requester) as inbox:
        seen = await run_cases(node, cases, inbox)
    return seen.outcome(
        "accepted, in_progress, completed; accepted, failed; rejected: each accepted and"
        " delivered to the requester"
    )


# --- consensus (OCP §6.2, D10) --------------------------------------------------------------------


def _initiate(node: TargetNode, initiator: ProbeAgent, to: ProbeAgent, round_: Any) -> Case:
    message = node.message(
        initiator, to.agent_id, message_type="consensus_initiate", payload=round_
    )
    return Case(f"consensus_initiate to {to.agent_id}", initiator, message)


def _ballot(
    node: TargetNode,
    what: str,
    voter: ProbeAgent,
    initiator: ProbeAgent,
    ballot: Any,
    *codes: str,
) -> Case:
    message = node.message(voter, initiator.agent_id, message_type="consensus_vote", payload=ballot)
    return Case(what, voter, message, codes)


async def _opened(
    node: TargetNode, initiator: ProbeAgent, round_: Any, *voters: ProbeAgent
) -> None:
    """Send ``round_`` to every voter; each must be accepted (the round is then open)."""
    seen = await run_cases(node, [_initiate(node, initiator, v, round_) for v in voters], None)
    if seen.problems:
        raise Unexpected("opening the round: " + "; ".join(seen.problems))


@needs_anchors
async def check_single_vote(probe: Probe) -> Outcome:
    """OCP-FULL-CONS-001: a second, different vote of one agent in a round is refused."""
    cohort = await Cohort.open(probe)
    node = cohort.node
    initiator, voter = await cohort.agent(), await cohort.agent()
    round_ = consensus_round(time.time() + ROUND_OPEN)
    await _opened(node, initiator, round_, voter)
    marker = node.message(voter, initiator.agent_id)
    cases = [
        _ballot(node, "the vote", voter, initiator, vote(round_, voter, "confirm")),
        _ballot(
            node,
            "a second vote of the same agent",
            voter,
            initiator,
            vote(round_, voter, "reject"),
            *VOTE_REFUSALS,
        ),
        Case("a later message of the voter", voter, marker),
    ]
    async with node.session(initiator) as inbox:
        seen = await run_cases(node, cases, inbox)
    return seen.outcome(
        "the first vote accepted and delivered to the initiator, the second never delivered"
    )


@needs_anchors
async def check_vote_signatures(probe: Probe) -> Outcome:
    """OCP-FULL-CONS-002: a vote whose signature does not verify is refused."""
    cohort = await Cohort.open(probe)
    node = cohort.node
    initiator, voter = await cohort.agent(), await cohort.agent()
    round_ = consensus_round(time.time() + ROUND_OPEN)
    await _opened(node, initiator, round_, voter)
    altered = vote(round_, voter, "confirm") | {"vote": "reject"}
    cases = [
        _ballot(
            node,
            "a vote signed by another key",
            voter,
            initiator,
            vote(round_, voter, "reject", key=SigningKey.generate()),
            *VOTE_REFUSALS,
        ),
        _ballot(
            node,
            "a vote with a bit-flipped signature",
            voter,
            initiator,
            _flip(vote(round_, voter, "reject")),
            *VOTE_REFUSALS,
        ),
        _ballot(node, "a vote changed after signing", voter, initiator, altered, *VOTE_REFUSALS),
        _ballot(
            node,
            "the voter's correctly signed vote",
            voter,
            initiator,
            vote(round_, voter, "reject"),
        ),
    ]
    async with node.session(initiator) as inbox:
        seen = await run_cases(node, cases, inbox)
    return seen.outcome("the correctly signed vote accepted and delivered to the initiator")


def _flip(ballot: Mapping[str, Any]) -> dict[str, Any]:
    """``ballot`` with one bit of its ``signature`` flipped."""
    flipped = flip_signature({"sender": {"signature": ballot["signature"]}})
    return {**ballot, "signature": flipped["sender"]["signature"]}


@needs_anchors
async def check_vote_deadline(probe: Probe) -> Outcome:
    """OCP-FULL-CONS-003: a vote after the round's deadline is refused."""
    cohort = await Cohort.open(probe)
    node = cohort.node
    initiator, early, late = await cohort.agent(), await cohort.agent(), await cohort.agent()
    deadline = time.time() + ROUND_DEADLINE
    round_ = consensus_round(deadline)
    await _opened(node, initiator, round_, early, late)
    async with node.session(initiator) as inbox:
        seen = await run_cases(
            node,
            [
                _ballot(
                    node,
                    "a vote before the deadline",
                    early,
                    initiator,
                    vote(round_, early, "confirm"),
                )
            ],
            inbox,
        )
        await trio.sleep(max(0.0, deadline - time.time()) + LATE_BY)
        after = await run_cases(
            node,
            [
                _ballot(
                    node,
                    f"a vote {LATE_BY:g} s after the deadline",
                    late,
                    initiator,
                    vote(round_, late, "reject"),
                    *VOTE_REFUSALS,
                )
            ],
            inbox,
        )
    seen.merge(after)
    return seen.outcome(
        f"a round with a deadline {ROUND_DEADLINE:g} s ahead: the vote before it accepted and"
        " delivered to the initiator"
    )


@needs_anchors
async def check_vote_eligibility(probe: Probe) -> Outcome:
    """OCP-FULL-CONS-004: only agents with min_trust_level and the required domains vote."""
    cohort = await Cohort.open(probe)
    node = cohort.node
    initiator = await cohort.agent()
    low = await cohort.agent(domains=["healthcare"])
    elsewhere = await cohort.agent(domains=["finance"])
    eligible = await cohort.agent(domains=["healthcare.oncology"])
    await cohort.bond(elsewhere, eligible, KNOWLEDGE_OFF)
    round_ = consensus_round(
        time.time() + ROUND_OPEN, min_trust_level=3, required_domains=["healthcare"]
    )
    await _opened(node, initiator, round_, low, elsewhere, eligible)
    cases = [
        _ballot(
            node,
            "a Level 2 voter in healthcare",
            low,
            initiator,
            vote(round_, low, "confirm"),
            *VOTE_REFUSALS,
        ),
        _ballot(
            node,
            "a Level 3 voter in finance only",
            elsewhere,
            initiator,
            vote(round_, elsewhere, "confirm"),
            *VOTE_REFUSALS,
        ),
        _ballot(
            node,
            "a Level 3 voter in healthcare.oncology",
            eligible,
            initiator,
            vote(round_, eligible, "confirm"),
        ),
    ]
    async with node.session(initiator) as inbox:
        seen = await run_cases(node, cases, inbox)
    return seen.outcome(
        "round for min_trust_level 3 in healthcare: the eligible vote accepted and delivered"
    )


#: Requirement id -> the check of the knowledge and full levels that covers it.
CHECKS: Final[dict[str, Check]] = {
    "OCP-KNOW-TRUST-001": check_knowledge_trust,
    "OCP-KNOW-EMB-001": check_embeddings,
    "OCP-KNOW-INS-001": check_insights,
    "OCP-KNOW-DELTA-001": check_model_deltas,
    "OCP-KNOW-PVL-001": check_pvl_pii,
    "OCP-KNOW-PVL-002": check_pvl_raw_data,
    "OCP-KNOW-PVL-003": check_pvl_privacy,
    "OCP-KNOW-PVL-004": check_pvl_provenance,
    "OCP-KNOW-PVL-005": check_pvl_size,
    "OCP-KNOW-PVL-006": check_pvl_bond_types,
    "OCP-FULL-TASK-001": check_task_permissions,
    "OCP-FULL-TASK-002": check_task_timeouts,
    "OCP-FULL-TASK-003": check_task_statuses,
    "OCP-FULL-CONS-001": check_single_vote,
    "OCP-FULL-CONS-002": check_vote_signatures,
    "OCP-FULL-CONS-003": check_vote_deadline,
    "OCP-FULL-CONS-004": check_vote_eligibility,
}
