"""Consensus rounds: opening, admitting votes, tallying, results (OCP §6.2, D10).

Nothing here reads a clock or does I/O: time comes in as epoch seconds
(``now``, ``received_at``), and what the registry knows about a voter comes in
as :class:`VoterFacts` and a ``scores`` mapping.

Theory of operation
-------------------
An agent opens a round with ``consensus_initiate``; nodes keep the round as a
:class:`ConsensusRound` (:meth:`ConsensusRound.from_initiate`). Each vote is a
D2-signed artifact (the ``consensus_vote`` payload) that the voter's node runs
through :func:`admit_vote` before routing it, checking, in this order:

1. schema, and an explicit ``voter`` equal to the authenticated sender
   (docs/decisions.md, entry 19) — OCP-400 ``schema`` / OCP-401
   ``voter_mismatch``;
2. the round's ``consensus_id`` — OCP-400 ``wrong_round``;
3. one of the round's options — OCP-400 ``unknown_option``;
4. the signature, by one of the voter's active keys — OCP-401
   ``bad_vote_signature``;
5. received no later than the deadline — OCP-403 ``after_deadline`` (a vote
   received exactly at the deadline is on time);
6. eligibility: trust level at least ``min_trust_level`` and, for every
   required domain, a domain of the voter equal to it or below it — OCP-403
   ``ineligible``;
7. one vote per agent per round: the node passes ``already`` (voter id ->
   digest of the vote it admitted from that agent). The same digest again is a
   harmless resend (``duplicate=True``); a different one is OCP-403
   ``already_voted``.

The initiator is an agent like any other: it may vote in its own round when it
is eligible, through the same checks, and its vote weighs what anyone's does.

After the deadline the initiator's SDK computes :func:`tally` (§6.2.3) and
sends :func:`result_payload` within :data:`RESULT_WITHIN` seconds; nodes check
it with :func:`check_result` and summarise a round with :func:`round_status`.

Equivocation
------------
Two distinct votes signed by one agent for one round are an equivocation, and
both signatures prove it. A node sees only the votes routed through it: it
admits an agent's first vote and refuses a different later one (step 7), so
an agent that sends two votes through one node gets its first one counted,
which gains it nothing over voting once. An agent that sends different votes
through two nodes gets one admitted by each, and both reach the tally. The
tally then excludes that agent entirely rather than keeping one of its votes:
any rule that picks one ("first received", "lowest digest") would let the
faulty agent, or the order in which nodes deliver, decide which of its votes
counts. Identical votes (the same digest) count once. For this reason the
tallying agent collects votes with an empty ``already`` (every distinct,
valid vote is kept) and leaves deduplication to :func:`tally`.

So every vote of a faulty agent is either refused at admission (forged,
claiming another voter, late, ineligible, for another round) or excluded by
the tally (equivocation), and the outcome equals the tally of the honest
votes alone. A faulty agent that casts a single valid vote is not detectable
and is counted; the specification's ``f < n/3`` bound is the assumption about
how many of those the threshold tolerates, and the checks here do not depend
on it.

Weights and outcome
-------------------
``weighted_score(option)`` is the sum of ``trust_score * confidence`` over the
counted voters who chose the option; in a round with ``weighted: false`` the
trust score is taken as 1, so a vote weighs its confidence. A voter absent
from ``scores`` weighs 0 and is reported in :attr:`Tally.unscored`. Sums use
:func:`math.fsum` (correctly rounded, so the result does not depend on vote
order) and the threshold comparison is exact on those sums. The outcome is
``no_consensus`` when fewer distinct voters were counted than
``min_participants``, when the total is 0, when two options tie for the
highest score, or when the highest score is below ``threshold * total``.
"""

from __future__ import annotations

import math
from fractions import Fraction
from types import MappingProxyType
from typing import TYPE_CHECKING, Any, Final

import attrs

from ocpd.proto import schema
from ocpd.proto.artifacts import check_consensus_vote, sign, verify_signed
from ocpd.proto.crypto import sha3_256
from ocpd.proto.encoding import parse_timestamp
from ocpd.proto.errors import AuthError, ForbiddenError, MalformedError
from ocpd.proto.ids import parse_agent_id
from ocpd.proto.taxonomy import check_path

if TYPE_CHECKING:
    from collections.abc import Iterable, Mapping, Sequence

    from ocpd.proto.crypto import SigningKey
    from ocpd.proto.taxonomy import Taxonomy

__all__ = [
    "MAX_ROUND_DURATION",
    "NO_CONSENSUS",
    "RESULT_WITHIN",
    "AdmittedVote",
    "ConsensusRound",
    "Tally",
    "VoterFacts",
    "admit_vote",
    "check_result",
    "is_eligible",
    "rationale_hash",
    "result_payload",
    "round_status",
    "sign_vote",
    "tally",
]

MAX_ROUND_DURATION: Final = 30 * 86_400
"""A deadline may lie at most 30 days (plus the clock skew) after the round is opened."""

RESULT_WITHIN: Final = 60.0
"""The initiator must send the result within 60 s of the deadline (§6.2.3)."""

NO_CONSENSUS: Final = "no_consensus"
"""The outcome of a round without a winner; no option may carry this name."""

DEFAULT_CLOCK_SKEW: Final = 60.0

_INITIATE_SCHEMA: Final = "payload.consensus_initiate"
_RESULT_SCHEMA: Final = "payload.consensus_result"
_VOTE_SCHEMA: Final = "consensus-vote"
_DOMAINS_FIELD: Final = "eligible_agents.required_domains"


# --- rounds -------------------------------------------------------------------------


@attrs.frozen
class ConsensusRound:
    """A round as a node keeps it, from a checked ``consensus_initiate`` payload."""

    consensus_id: str
    initiator: str
    topic: str
    options: tuple[str, ...]
    min_participants: int
    threshold: float
    weighted: bool
    deadline: float
    min_trust_level: int = 0
    required_domains: tuple[str, ...] = ()

    @classmethod
    def from_initiate(
        cls,
        payload: Mapping[str, Any],
        *,
        initiator: str,
        now: float,
        clock_skew: float = DEFAULT_CLOCK_SKEW,
        taxonomy: Taxonomy | None = None,
    ) -> ConsensusRound:
        """Check a ``consensus_initiate`` payload sent by ``initiator`` at ``now``.

        Beyond the schema: the deadline must lie after ``now`` (a round that
        closes at once could take no vote) and at most :data:`MAX_ROUND_DURATION`
        plus ``clock_skew`` after it; no option may be named ``no_consensus``;
        required domains must be domain paths, normalised through ``taxonomy``
        when one is given. Errors are OCP-400 naming the field, never its value.
        """
        parse_agent_id(initiator, field="initiator")
        schema.validate(_INITIATE_SCHEMA, payload)
        deadline = parse_timestamp(payload["deadline"], field="deadline")
        if deadline <= now:
            raise MalformedError("deadline must lie in the future", details={"field": "deadline"})
        if deadline - now > MAX_ROUND_DURATION + clock_skew:
            raise MalformedError(
                f"deadline may lie at most {MAX_ROUND_DURATION // 86_400} days ahead",
                details={"field": "deadline", "max_seconds": MAX_ROUND_DURATION},
            )
        options = tuple(payload["options"])
        if NO_CONSENSUS in options:
            raise MalformedError(
                f"{NO_CONSENSUS!r} is reserved for the outcome of a round without a winner",
                details={"field": "options"},
            )
        quorum = payload["quorum"]
        eligible = payload.get("eligible_agents", {})
        return cls(
            consensus_id=payload["consensus_id"],
            initiator=initiator,
            topic=payload["topic"],
            options=options,
            min_participants=int(quorum["min_participants"]),
            threshold=float(quorum["threshold"]),
            weighted=quorum["weighted"],
            deadline=deadline,
            min_trust_level=int(eligible.get("min_trust_level", 0)),
            required_domains=_required_domains(eligible.get("required_domains", ()), taxonomy),
        )


def _required_domains(domains: Iterable[str], taxonomy: Taxonomy | None) -> tuple[str, ...]:
    """Normalised required domains, each once, in their order of first appearance."""
    result: dict[str, None] = {}
    for index, domain in enumerate(domains):
        try:
            path = check_path(domain) if taxonomy is None else taxonomy.normalise(domain)
        except MalformedError as exc:
            field = f"{_DOMAINS_FIELD}[{index}]"
            raise MalformedError(
                f"{field} is not a known domain", details={"field": field}
            ) from exc
        result[path] = None
    return tuple(result)


# --- votes --------------------------------------------------------------------------


def rationale_hash(text: bytes | str) -> str:
    """The ``rationale_hash`` of a private rationale: SHA3-256 hex of its (UTF-8) bytes."""
    data = text.encode("utf-8") if isinstance(text, str) else text
    return sha3_256(data).hex()


def sign_vote(
    consensus_id: str,
    vote: str,
    confidence: float,
    rationale_hash: str,
    key: SigningKey,
    *,
    voter: str | None = None,
) -> dict[str, Any]:
    """A signed ``consensus_vote`` payload (D2, field ``signature``); OCP-400 if malformed."""
    body: dict[str, Any] = {
        "consensus_id": consensus_id,
        "vote": vote,
        "confidence": confidence,
        "rationale_hash": rationale_hash,
    }
    if voter is not None:
        body["voter"] = voter
    signed = sign(body, key)
    schema.validate(_VOTE_SCHEMA, signed)
    return signed


@attrs.frozen
class VoterFacts:
    """What the registry knows about a voter, resolved by the node before admission.

    ``keys`` are the raw Ed25519 keys active in the voter's DID document,
    ``domains`` its normalised domain paths, ``trust_score`` in [0, 1].
    """

    agent_id: str
    keys: tuple[bytes, ...]
    level: int
    domains: tuple[str, ...]
    trust_score: float


@attrs.frozen
class AdmittedVote:
    """A vote that passed :func:`admit_vote`.

    ``digest`` is the hex D2 signing digest: it identifies the vote, so two
    admitted votes of one voter with different digests are an equivocation.
    ``duplicate`` marks a resend of the vote already admitted from the voter.
    """

    consensus_id: str
    voter: str
    vote: str
    confidence: float
    digest: str
    received_at: float
    duplicate: bool
    artifact: Mapping[str, Any]


def _is_under(domain: str, required: str) -> bool:
    """Whether the path ``domain`` is ``required`` or below it."""
    return domain == required or domain.startswith(required + ".")


def is_eligible(round_: ConsensusRound, voter: VoterFacts, /) -> bool:
    """Level at least ``min_trust_level``, and every required domain covered."""
    if voter.level < round_.min_trust_level:
        return False
    return all(
        any(_is_under(domain, required) for domain in voter.domains)
        for required in round_.required_domains
    )


def admit_vote(
    round_: ConsensusRound,
    vote: Mapping[str, Any],
    /,
    *,
    sender: str,
    voter: VoterFacts,
    received_at: float,
    already: Mapping[str, str],
) -> AdmittedVote:
    """A node's checks of §6.2.4 and D10 on a vote from ``sender``, in the order of the
    module docstring; every refusal carries ``details["reason"]``.

    ``voter`` must be the facts of ``sender``; ``already`` maps each voter to the
    digest of the vote admitted from it in this round.
    """
    if voter.agent_id != sender:
        raise ValueError("voter facts belong to another agent than the sender")
    try:
        check_consensus_vote(vote, sender=sender)
    except AuthError as exc:
        raise AuthError(exc.message, details={"reason": "voter_mismatch"}) from exc
    except MalformedError as exc:
        raise MalformedError(exc.message, details={**exc.details, "reason": "schema"}) from exc
    if vote["consensus_id"] != round_.consensus_id:
        raise MalformedError("vote is for another round", details={"reason": "wrong_round"})
    if vote["vote"] not in round_.options:
        raise MalformedError(
            "vote names an option the round does not offer", details={"reason": "unknown_option"}
        )
    try:
        digest = verify_signed(vote, voter.keys, what="consensus vote").hex()
    except AuthError as exc:
        raise AuthError(
            "consensus vote signature does not verify under the voter's keys",
            details={"reason": "bad_vote_signature"},
        ) from exc
    if received_at > round_.deadline:
        raise ForbiddenError(
            "vote received after the deadline", details={"reason": "after_deadline"}
        )
    if not is_eligible(round_, voter):
        raise ForbiddenError(
            "voter is not eligible in this round", details={"reason": "ineligible"}
        )
    previous = already.get(sender)
    if previous is not None and previous != digest:
        raise ForbiddenError(
            "agent already voted in this round", details={"reason": "already_voted"}
        )
    return AdmittedVote(
        consensus_id=round_.consensus_id,
        voter=sender,
        vote=vote["vote"],
        confidence=float(vote["confidence"]),
        digest=digest,
        received_at=received_at,
        duplicate=previous is not None,
        artifact=vote,
    )


# --- tally --------------------------------------------------------------------------


@attrs.frozen
class Tally:
    """The outcome of a round (§6.2.3) and how it was reached.

    ``scores`` holds every option of the round, in the round's order.
    ``participants`` is the number of distinct voters counted (zero-weight
    ones included); ``counted``, ``excluded`` (equivocators) and ``unscored``
    (counted with weight 0: no trust score) list voter ids, sorted.
    ``reason`` says why there is no winner (``quorum``, ``no_weight``, ``tie``,
    ``threshold``), or is ``None`` when there is one.
    """

    outcome: str
    scores: Mapping[str, float]
    total_weighted_score: float
    participants: int
    counted: tuple[str, ...]
    excluded: tuple[str, ...]
    unscored: tuple[str, ...]
    reason: str | None

    @property
    def decided(self) -> bool:
        return self.outcome != NO_CONSENSUS


def tally(
    round_: ConsensusRound,
    votes: Iterable[AdmittedVote],
    /,
    *,
    scores: Mapping[str, float],
) -> Tally:
    """Tally admitted votes (§6.2.3) with each voter's trust score from ``scores``.

    Pure: no signature is checked here (that happened at admission). A vote
    for another round or for an option the round does not offer is a caller
    error (:class:`ValueError`), as is a trust score outside [0, 1].
    """
    consensus_id = round_.consensus_id
    first: dict[str, AdmittedVote] = {}
    equivocators: set[str] = set()
    for ballot in votes:
        if ballot.consensus_id != consensus_id:
            raise ValueError("a vote for another round was given to the tally")
        held = first.setdefault(ballot.voter, ballot)
        if held.digest != ballot.digest:
            equivocators.add(ballot.voter)

    weights: dict[str, list[float]] = {option: [] for option in round_.options}
    unscored: list[str] = []
    counted: list[str] = []
    weighted = round_.weighted
    for voter, ballot in first.items():
        if voter in equivocators:
            continue
        counted.append(voter)
        weight = ballot.confidence
        if weighted:
            trust = scores.get(voter)
            if trust is None:
                unscored.append(voter)
                weight = 0.0
            elif not 0.0 <= trust <= 1.0:
                raise ValueError("a trust score lies outside [0, 1]")
            else:
                weight *= trust
        try:
            weights[ballot.vote].append(weight)
        except KeyError:
            raise ValueError("a vote names an option the round does not offer") from None

    per_option = {option: math.fsum(values) for option, values in weights.items()}
    total = math.fsum(w for values in weights.values() for w in values)
    outcome, reason = _outcome(round_, per_option, total, len(counted))
    return Tally(
        outcome=outcome,
        scores=MappingProxyType(per_option),
        total_weighted_score=total,
        participants=len(counted),
        counted=tuple(sorted(counted)),
        excluded=tuple(sorted(equivocators)),
        unscored=tuple(sorted(unscored)),
        reason=reason,
    )


def _outcome(
    round_: ConsensusRound, scores: Mapping[str, float], total: float, participants: int
) -> tuple[str, str | None]:
    if participants < round_.min_participants:
        return NO_CONSENSUS, "quorum"
    if total <= 0.0:
        return NO_CONSENSUS, "no_weight"
    top = max(scores.values())
    leaders = [option for option, score in scores.items() if score == top]
    if len(leaders) > 1:
        return NO_CONSENSUS, "tie"
    if Fraction(top) < Fraction(round_.threshold) * Fraction(total):
        return NO_CONSENSUS, "threshold"
    return leaders[0], None


# --- results ------------------------------------------------------------------------


def result_payload(
    round_: ConsensusRound,
    result: Tally,
    /,
    *,
    include_votes: Sequence[Mapping[str, Any]] = (),
) -> dict[str, Any]:
    """The ``consensus_result`` payload of a tally, optionally with the signed votes."""
    payload: dict[str, Any] = {
        "consensus_id": round_.consensus_id,
        "outcome": result.outcome,
        "scores": dict(result.scores),
        "total_weighted_score": result.total_weighted_score,
        "participants": result.participants,
    }
    if include_votes:
        if any(v.get("consensus_id") != round_.consensus_id for v in include_votes):
            raise MalformedError("a listed vote is for another round", details={"field": "votes"})
        payload["votes"] = [dict(v) for v in include_votes]
    schema.validate(_RESULT_SCHEMA, payload)
    return payload


def check_result(
    round_: ConsensusRound, payload: Mapping[str, Any], /, *, sender: str, now: float
) -> str:
    """A node's checks on a ``consensus_result`` from ``sender`` at ``now``; returns the outcome.

    Only the initiator sends it (OCP-403 ``not_initiator``), after the deadline
    (``before_deadline``) and within :data:`RESULT_WITHIN` s of it
    (``result_too_late``: the round is ``unresolved`` by then, for good). The
    scores must name exactly the round's options and the outcome one of them
    or ``no_consensus`` (OCP-400 ``unknown_option``). The numbers are the
    initiator's: whoever holds the votes can recompute them with :func:`tally`.
    """
    try:
        schema.validate(_RESULT_SCHEMA, payload)
    except MalformedError as exc:
        raise MalformedError(exc.message, details={**exc.details, "reason": "schema"}) from exc
    if payload["consensus_id"] != round_.consensus_id or any(
        v["consensus_id"] != round_.consensus_id for v in payload.get("votes", ())
    ):
        raise MalformedError("result is for another round", details={"reason": "wrong_round"})
    if sender != round_.initiator:
        raise ForbiddenError(
            "only the initiator sends the result", details={"reason": "not_initiator"}
        )
    if now <= round_.deadline:
        raise ForbiddenError(
            "result sent before the deadline", details={"reason": "before_deadline"}
        )
    if now > round_.deadline + RESULT_WITHIN:
        raise ForbiddenError(
            "result sent more than 60 s after the deadline",
            details={"reason": "result_too_late"},
        )
    outcome: str = payload["outcome"]
    if set(payload["scores"]) != set(round_.options) or (
        outcome != NO_CONSENSUS and outcome not in round_.options
    ):
        raise MalformedError(
            "result names options the round does not offer",
            details={"reason": "unknown_option"},
        )
    return outcome


def round_status(round_: ConsensusRound, /, *, now: float, result_seen: str | None) -> str:
    """A node's summary of a round at ``now``.

    ``result_seen`` is the outcome of the accepted ``consensus_result``
    (:func:`check_result`), if any. ``decided`` or ``no_consensus`` once a
    result was accepted; otherwise ``open`` until the deadline (inclusive,
    like vote admission), ``awaiting_result`` for :data:`RESULT_WITHIN` s
    after it (inclusive) and ``unresolved`` from then on (D10).
    """
    if result_seen is not None:
        return "no_consensus" if result_seen == NO_CONSENSUS else "decided"
    if now <= round_.deadline:
        return "open"
    if now <= round_.deadline + RESULT_WITHIN:
        return "awaiting_result"
    return "unresolved"
