"""Consensus rounds, vote admission, the tally and results (OCP §6.2, D10)."""

from __future__ import annotations

import math
from typing import Any

import attrs
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from conftest import NETWORK, NOW
from ocpd.proto import consensus as cs
from ocpd.proto import schema
from ocpd.proto.artifacts import verify_signed
from ocpd.proto.crypto import SigningKey, sha3_256
from ocpd.proto.encoding import format_timestamp
from ocpd.proto.errors import AuthError, ForbiddenError, MalformedError, OcpError
from ocpd.proto.ids import derive_agent_id
from ocpd.proto.signing import artifact_digest
from ocpd.proto.taxonomy import Taxonomy

CID = "con-6f1c2a9e-4b7d-4c21-9e0a-3d5b8f217c44"
OTHER_CID = "con-00000000-1111-2222-3333-444444444444"
DEADLINE = NOW + 3600
OPTIONS = ("confirm", "reject", "abstain")
TAXONOMY = Taxonomy.load_default()
FRAUD = ("finance.fraud_detection",)
RATIONALE = cs.rationale_hash("private rationale")


@attrs.frozen
class Voter:
    """A test agent: its key and id."""

    key: SigningKey
    id: str

    def facts(
        self,
        *,
        level: int = 2,
        domains: tuple[str, ...] = FRAUD,
        trust: float = 0.8,
        keys: tuple[bytes, ...] | None = None,
    ) -> cs.VoterFacts:
        return cs.VoterFacts(
            agent_id=self.id,
            keys=(self.key.public_key,) if keys is None else keys,
            level=level,
            domains=domains,
            trust_score=trust,
        )

    def vote(
        self,
        option: str = "confirm",
        confidence: float = 0.9,
        *,
        consensus_id: str = CID,
        voter: str | None = None,
        rationale: str = RATIONALE,
        key: SigningKey | None = None,
    ) -> dict[str, Any]:
        return cs.sign_vote(
            consensus_id, option, confidence, rationale, key or self.key, voter=voter
        )


def _voter(label: str) -> Voter:
    key = SigningKey(sha3_256(f"consensus test {label}".encode()))
    return Voter(key=key, id=derive_agent_id(key.public_key, NETWORK))


VOTERS = tuple(_voter(str(i)) for i in range(40))
INITIATOR = _voter("initiator")
FORGER_KEY = SigningKey(sha3_256(b"consensus test forger"))


def _initiate(**changes: Any) -> dict[str, Any]:
    payload: dict[str, Any] = {
        "consensus_id": CID,
        "topic": "Classify pattern FP-2026-0042 as confirmed fraud indicator",
        "options": list(OPTIONS),
        "quorum": {"min_participants": 3, "threshold": 0.67, "weighted": True},
        "deadline": format_timestamp(DEADLINE),
        "eligible_agents": {
            "min_trust_level": 2,
            "required_domains": ["finance", "fraud_detection"],
        },
    }
    payload.update(changes)
    return payload


def _round(**changes: Any) -> cs.ConsensusRound:
    return cs.ConsensusRound.from_initiate(
        _initiate(**changes), initiator=INITIATOR.id, now=NOW, taxonomy=TAXONOMY
    )


def _plain_round(**changes: Any) -> cs.ConsensusRound:
    """A round built directly, for the tally (no eligibility rules)."""
    fields: dict[str, Any] = {
        "consensus_id": CID,
        "initiator": INITIATOR.id,
        "topic": "t",
        "options": OPTIONS,
        "min_participants": 1,
        "threshold": 0.5,
        "weighted": True,
        "deadline": DEADLINE,
    }
    fields.update(changes)
    return cs.ConsensusRound(**fields)


def _ballot(
    voter: Voter | str,
    option: str,
    confidence: float,
    *,
    digest: str | None = None,
    consensus_id: str = CID,
) -> cs.AdmittedVote:
    """An admitted vote without signing (the tally never looks at signatures)."""
    voter_id = voter if isinstance(voter, str) else voter.id
    return cs.AdmittedVote(
        consensus_id=consensus_id,
        voter=voter_id,
        vote=option,
        confidence=confidence,
        digest=digest or sha3_256(f"{voter_id} {option} {confidence}".encode()).hex(),
        received_at=NOW,
        duplicate=False,
        artifact={},
    )


def _reason(info: pytest.ExceptionInfo[OcpError]) -> object:
    return info.value.details.get("reason")


# --- rounds ------------------------------------------------------------------------------


def test_from_initiate_builds_the_round() -> None:
    round_ = _round()
    assert round_ == cs.ConsensusRound(
        consensus_id=CID,
        initiator=INITIATOR.id,
        topic="Classify pattern FP-2026-0042 as confirmed fraud indicator",
        options=OPTIONS,
        min_participants=3,
        threshold=0.67,
        weighted=True,
        deadline=DEADLINE,
        min_trust_level=2,
        required_domains=("finance", "finance.fraud_detection"),
    )


def test_eligibility_defaults_to_everyone() -> None:
    payload = _initiate()
    del payload["eligible_agents"]
    round_ = cs.ConsensusRound.from_initiate(payload, initiator=INITIATOR.id, now=NOW)
    assert (round_.min_trust_level, round_.required_domains) == (0, ())
    empty = _round(eligible_agents={})
    assert (empty.min_trust_level, empty.required_domains) == (0, ())


def test_whole_number_floats_become_integers() -> None:
    round_ = _round(
        quorum={"min_participants": 5.0, "threshold": 1, "weighted": False},
        eligible_agents={"min_trust_level": 3.0},
    )
    assert round_.min_participants == 5
    assert isinstance(round_.min_participants, int)
    assert round_.threshold == 1.0
    assert isinstance(round_.threshold, float)
    assert round_.min_trust_level == 3
    assert isinstance(round_.min_trust_level, int)


@pytest.mark.parametrize("deadline", [NOW, NOW - 1, NOW - 86_400])
def test_deadline_must_lie_in_the_future(deadline: float) -> None:
    with pytest.raises(MalformedError) as info:
        _round(deadline=format_timestamp(deadline))
    assert info.value.details == {"field": "deadline"}


def test_deadline_may_lie_at_most_30_days_ahead_plus_skew() -> None:
    limit = NOW + cs.MAX_ROUND_DURATION + 60
    assert _round(deadline=format_timestamp(limit)).deadline == limit
    with pytest.raises(MalformedError) as info:
        _round(deadline=format_timestamp(limit + 1))
    assert info.value.details == {"field": "deadline", "max_seconds": cs.MAX_ROUND_DURATION}
    strict = cs.ConsensusRound.from_initiate
    with pytest.raises(MalformedError):
        strict(
            _initiate(deadline=format_timestamp(limit)),
            initiator=INITIATOR.id,
            now=NOW,
            clock_skew=0,
        )


def test_deadline_must_be_a_real_date() -> None:
    with pytest.raises(MalformedError) as info:
        _round(deadline="2026-02-30T00:00:00Z")
    assert info.value.details == {"field": "deadline"}


@pytest.mark.parametrize(
    "change",
    [
        {"options": ["confirm", "confirm"]},
        {"options": ["confirm"]},
        {"options": ["confirm", ""]},
        {"quorum": {"min_participants": 0, "threshold": 0.5, "weighted": True}},
        {"quorum": {"min_participants": 1, "threshold": 0, "weighted": True}},
        {"quorum": {"min_participants": 1, "threshold": 1.5, "weighted": True}},
        {"quorum": {"min_participants": 1, "threshold": 0.5}},
        {"eligible_agents": {"min_trust_level": 5}},
        {"consensus_id": "con-not-a-uuid"},
        {"topic": ""},
        {"secret_extra": "hunter2"},
        {"deadline": "2026-04-03 18:00:00"},
    ],
)
def test_schema_refusals_name_the_place_not_the_value(change: dict[str, Any]) -> None:
    with pytest.raises(MalformedError) as info:
        _round(**change)
    assert info.value.code == "OCP-400"
    assert info.value.details["schema"] == "payload.consensus_initiate"
    assert "hunter2" not in str(info.value)
    assert "hunter2" not in str(info.value.details)


def test_no_option_may_be_called_no_consensus() -> None:
    with pytest.raises(MalformedError) as info:
        _round(options=["confirm", cs.NO_CONSENSUS])
    assert info.value.details == {"field": "options"}


@pytest.mark.parametrize("domain", ["astrology", "Finance", "risk_analysis.x"])
def test_unknown_required_domain_names_the_index_not_the_value(domain: str) -> None:
    with pytest.raises(MalformedError) as info:
        _round(eligible_agents={"required_domains": ["finance", domain]})
    assert info.value.details == {"field": "eligible_agents.required_domains[1]"}
    assert domain not in info.value.message


def test_required_domains_without_taxonomy_are_checked_paths_kept_as_given() -> None:
    payload = _initiate(eligible_agents={"required_domains": ["fraud_detection", "finance.x"]})
    round_ = cs.ConsensusRound.from_initiate(payload, initiator=INITIATOR.id, now=NOW)
    assert round_.required_domains == ("fraud_detection", "finance.x")
    bad = _initiate(eligible_agents={"required_domains": ["Fraud Detection"]})
    with pytest.raises(MalformedError) as info:
        cs.ConsensusRound.from_initiate(bad, initiator=INITIATOR.id, now=NOW)
    assert info.value.details == {"field": "eligible_agents.required_domains[0]"}


def test_required_domains_are_deduplicated_after_normalising() -> None:
    round_ = _round(
        eligible_agents={
            "required_domains": ["fraud_detection", "finance.fraud_detection", "finance"]
        }
    )
    assert round_.required_domains == ("finance.fraud_detection", "finance")


def test_initiator_must_be_an_agent_id() -> None:
    with pytest.raises(MalformedError) as info:
        cs.ConsensusRound.from_initiate(_initiate(), initiator="alice", now=NOW)
    assert info.value.details == {"field": "initiator"}


# --- vote signing ------------------------------------------------------------------------


def test_rationale_hash_is_sha3_256_hex_of_utf8() -> None:
    # SHA3-256 of the empty string (FIPS 202 test vector).
    empty = "a7ffc6f8bf1ed76651c14756a061d662f580ff4de43b49fa82d80a4b80f8434a"
    assert cs.rationale_hash("") == empty
    assert cs.rationale_hash(b"") == empty
    assert cs.rationale_hash("données") == cs.rationale_hash("données".encode())
    assert cs.rationale_hash("a") != cs.rationale_hash("b")


def test_sign_vote_makes_a_verifiable_schema_valid_vote() -> None:
    voter = VOTERS[0]
    vote = voter.vote("reject", 0.88)
    schema.validate("payload.consensus_vote", vote)
    assert set(vote) == {"consensus_id", "vote", "confidence", "rationale_hash", "signature"}
    assert verify_signed(vote, [voter.key.public_key], what="vote") == artifact_digest(vote)
    named = voter.vote("reject", 0.88, voter=voter.id)
    assert named["voter"] == voter.id
    assert verify_signed(named, [voter.key.public_key], what="vote") == artifact_digest(named)
    assert artifact_digest(named) != artifact_digest(vote)


@pytest.mark.parametrize(
    "args",
    [
        (CID, "confirm", 1.5, RATIONALE),
        (CID, "confirm", 0.5, "not-hex"),
        ("con-x", "confirm", 0.5, RATIONALE),
        (CID, "", 0.5, RATIONALE),
    ],
)
def test_sign_vote_refuses_malformed_votes(args: tuple[str, str, float, str]) -> None:
    with pytest.raises(MalformedError):
        cs.sign_vote(*args, VOTERS[0].key)


# --- admission ---------------------------------------------------------------------------


def _admit(
    vote: dict[str, Any],
    facts: cs.VoterFacts,
    *,
    round_: cs.ConsensusRound | None = None,
    received_at: float = NOW + 10,
    already: dict[str, str] | None = None,
    sender: str | None = None,
) -> cs.AdmittedVote:
    return cs.admit_vote(
        round_ or _round(),
        vote,
        sender=sender or facts.agent_id,
        voter=facts,
        received_at=received_at,
        already=already or {},
    )


def test_admit_vote() -> None:
    voter = VOTERS[0]
    vote = voter.vote("reject", 1)
    admitted = _admit(vote, voter.facts())
    assert admitted == cs.AdmittedVote(
        consensus_id=CID,
        voter=voter.id,
        vote="reject",
        confidence=1.0,
        digest=artifact_digest(vote).hex(),
        received_at=NOW + 10,
        duplicate=False,
        artifact=vote,
    )
    assert isinstance(admitted.confidence, float)


def test_the_initiator_may_vote_like_anyone_eligible() -> None:
    admitted = _admit(INITIATOR.vote(), INITIATOR.facts())
    assert admitted.voter == INITIATOR.id
    with pytest.raises(ForbiddenError) as info:
        _admit(INITIATOR.vote(), INITIATOR.facts(level=1))
    assert _reason(info) == "ineligible"


def test_facts_of_another_agent_are_a_caller_error() -> None:
    with pytest.raises(ValueError, match="another agent"):
        _admit(VOTERS[0].vote(), VOTERS[1].facts(), sender=VOTERS[0].id)


@pytest.mark.parametrize("field", ["signature", "confidence", "rationale_hash"])
def test_schema_refusal(field: str) -> None:
    vote = VOTERS[0].vote()
    del vote[field]
    with pytest.raises(MalformedError) as info:
        _admit(vote, VOTERS[0].facts())
    assert _reason(info) == "schema"
    assert info.value.details["schema"] == "consensus-vote"


def test_schema_refuses_extra_fields() -> None:
    vote = {**VOTERS[0].vote(), "weight": 100}
    with pytest.raises(MalformedError) as info:
        _admit(vote, VOTERS[0].facts())
    assert _reason(info) == "schema"


def test_explicit_voter_must_be_the_sender() -> None:
    voter, other = VOTERS[0], VOTERS[1]
    assert _admit(voter.vote(voter=voter.id), voter.facts()).voter == voter.id
    with pytest.raises(AuthError) as info:
        _admit(voter.vote(voter=other.id), voter.facts())
    assert info.value.code == "OCP-401"
    assert _reason(info) == "voter_mismatch"


def test_vote_for_another_round_is_400() -> None:
    with pytest.raises(MalformedError) as info:
        _admit(VOTERS[0].vote(consensus_id=OTHER_CID), VOTERS[0].facts())
    assert _reason(info) == "wrong_round"


def test_vote_for_an_unknown_option_is_400() -> None:
    with pytest.raises(MalformedError) as info:
        _admit(VOTERS[0].vote("maybe"), VOTERS[0].facts())
    assert info.value.code == "OCP-400"
    assert _reason(info) == "unknown_option"


def test_signature_by_another_key_is_401() -> None:
    voter = VOTERS[0]
    with pytest.raises(AuthError) as info:
        _admit(voter.vote(key=FORGER_KEY), voter.facts())
    assert info.value.code == "OCP-401"
    assert _reason(info) == "bad_vote_signature"


def test_a_vote_changed_after_signing_is_401() -> None:
    vote = {**VOTERS[0].vote("confirm", 0.5), "confidence": 1.0}
    with pytest.raises(AuthError) as info:
        _admit(vote, VOTERS[0].facts())
    assert _reason(info) == "bad_vote_signature"


def test_a_vote_signed_by_someone_else_is_not_the_senders() -> None:
    # Bob replays Alice's vote (without a voter field) as his own.
    alice, bob = VOTERS[0], VOTERS[1]
    with pytest.raises(AuthError) as info:
        _admit(alice.vote(), bob.facts())
    assert _reason(info) == "bad_vote_signature"


def test_any_active_key_of_the_voter_verifies() -> None:
    voter = VOTERS[0]
    facts = voter.facts(keys=(FORGER_KEY.public_key, voter.key.public_key))
    assert _admit(voter.vote(), facts).voter == voter.id
    with pytest.raises(AuthError) as info:
        _admit(voter.vote(), voter.facts(keys=()))
    assert _reason(info) == "bad_vote_signature"


def test_vote_at_the_deadline_counts_and_after_it_is_403() -> None:
    voter = VOTERS[0]
    assert _admit(voter.vote(), voter.facts(), received_at=DEADLINE).received_at == DEADLINE
    with pytest.raises(ForbiddenError) as info:
        _admit(voter.vote(), voter.facts(), received_at=DEADLINE + 0.001)
    assert info.value.code == "OCP-403"
    assert _reason(info) == "after_deadline"


@pytest.mark.parametrize(
    ("level", "domains"),
    [
        (1, FRAUD),
        (0, FRAUD),
        (2, ()),
        (2, ("finance",)),
        (2, ("finance.risk_analysis",)),
        (2, ("finance.fraud_detection_extra",)),
        (4, ("healthcare.oncology",)),
    ],
)
def test_ineligible_voters_are_403(level: int, domains: tuple[str, ...]) -> None:
    voter = VOTERS[0]
    with pytest.raises(ForbiddenError) as info:
        _admit(voter.vote(), voter.facts(level=level, domains=domains))
    assert _reason(info) == "ineligible"


@pytest.mark.parametrize(
    "domains",
    [
        FRAUD,
        ("finance.fraud_detection.cards",),
        ("healthcare.oncology", "finance.fraud_detection"),
        ("finance", "finance.fraud_detection"),
    ],
)
def test_eligible_domains(domains: tuple[str, ...]) -> None:
    voter = VOTERS[0]
    assert _admit(voter.vote(), voter.facts(level=2, domains=domains)).voter == voter.id


def test_round_without_requirements_admits_level_0() -> None:
    round_ = _round(eligible_agents={})
    voter = VOTERS[0]
    assert _admit(voter.vote(), voter.facts(level=0, domains=()), round_=round_).voter == voter.id


def test_one_vote_per_agent_per_round() -> None:
    voter, other = VOTERS[0], VOTERS[1]
    first = voter.vote("confirm")
    admitted = _admit(first, voter.facts())
    already = {voter.id: admitted.digest, other.id: "00" * 32}
    resend = _admit(dict(first), voter.facts(), already=already)
    assert resend.duplicate is True
    assert resend.digest == admitted.digest
    with pytest.raises(ForbiddenError) as info:
        _admit(voter.vote("reject"), voter.facts(), already=already)
    assert _reason(info) == "already_voted"
    # Only the sender's own entry matters.
    assert (
        _admit(other.vote(), other.facts(), already={voter.id: admitted.digest}).duplicate is False
    )


@pytest.mark.parametrize(
    ("vote_kind", "facts_kind", "received_at", "expected"),
    [
        # wrong round and unknown option: the round is checked first
        ("other_round_unknown_option", "eligible", NOW, "wrong_round"),
        # unknown option from a forger: the option is checked before the signature
        ("unknown_option_forged", "eligible", NOW, "unknown_option"),
        # forged and late: no refusal tells an unauthenticated sender about timing
        ("forged", "eligible", DEADLINE + 1, "bad_vote_signature"),
        # late and ineligible: the deadline comes first
        ("valid", "ineligible", DEADLINE + 1, "after_deadline"),
        # ineligible and already voted: eligibility comes first
        ("valid_other", "ineligible", NOW, "ineligible"),
    ],
)
def test_order_of_checks(
    vote_kind: str, facts_kind: str, received_at: float, expected: str
) -> None:
    voter = VOTERS[0]
    votes = {
        "other_round_unknown_option": voter.vote("maybe", consensus_id=OTHER_CID),
        "unknown_option_forged": voter.vote("maybe", key=FORGER_KEY),
        "forged": voter.vote(key=FORGER_KEY),
        "valid": voter.vote(),
        "valid_other": voter.vote("reject"),
    }
    facts = voter.facts(level=0 if facts_kind == "ineligible" else 2)
    already = {voter.id: artifact_digest(voter.vote()).hex()}
    with pytest.raises(OcpError) as info:
        _admit(votes[vote_kind], facts, received_at=received_at, already=already)
    assert _reason(info) == expected


# --- tally: examples by hand ---------------------------------------------------------------


def test_weighted_tally_by_hand() -> None:
    # threshold 0.6; trust x confidence:
    #   v0 confirm 0.5 x 1.0  = 0.5
    #   v1 confirm 0.25 x 1.0 = 0.25
    #   v2 reject  1.0 x 0.25 = 0.25
    #   v3 abstain 0.5 x 0.5  = 0.25
    # total 1.25; confirm 0.75 >= 0.6 x 1.25 = 0.75 -> confirm (threshold exactly met)
    round_ = _plain_round(threshold=0.6, min_participants=4)
    votes = [
        _ballot(VOTERS[0], "confirm", 1.0),
        _ballot(VOTERS[1], "confirm", 1.0),
        _ballot(VOTERS[2], "reject", 0.25),
        _ballot(VOTERS[3], "abstain", 0.5),
    ]
    scores = {VOTERS[0].id: 0.5, VOTERS[1].id: 0.25, VOTERS[2].id: 1.0, VOTERS[3].id: 0.5}
    result = cs.tally(round_, votes, scores=scores)
    assert result.outcome == "confirm"
    assert result.decided
    assert result.reason is None
    assert dict(result.scores) == {"confirm": 0.75, "reject": 0.25, "abstain": 0.25}
    assert list(result.scores) == list(OPTIONS)
    assert result.total_weighted_score == 1.25
    assert result.participants == 4
    assert result.counted == tuple(sorted(v.id for v in VOTERS[:4]))
    assert result.excluded == ()
    assert result.unscored == ()
    # The same votes fall just short of a slightly higher threshold.
    higher = cs.tally(_plain_round(threshold=0.61, min_participants=4), votes, scores=scores)
    assert (higher.outcome, higher.reason) == (cs.NO_CONSENSUS, "threshold")


def test_threshold_exactly_met_with_decimal_fractions() -> None:
    # confirm 0.6, reject 0.4, total 1.0: 0.6 >= 0.6 x 1.0 holds exactly.
    round_ = _plain_round(threshold=0.6)
    votes = [_ballot(VOTERS[0], "confirm", 0.6), _ballot(VOTERS[1], "reject", 0.4)]
    scores = {VOTERS[0].id: 1.0, VOTERS[1].id: 1.0}
    result = cs.tally(round_, votes, scores=scores)
    assert result.total_weighted_score == 1.0
    assert result.outcome == "confirm"


def test_threshold_one_needs_every_weight_on_one_option() -> None:
    round_ = _plain_round(threshold=1.0)
    scores = {v.id: 0.7 for v in VOTERS}
    unanimous = [_ballot(VOTERS[i], "reject", 0.3) for i in range(3)]
    assert cs.tally(round_, unanimous, scores=scores).outcome == "reject"
    split = [*unanimous, _ballot(VOTERS[3], "abstain", 0.01)]
    assert cs.tally(round_, split, scores=scores).reason == "threshold"


def test_unweighted_tally_weighs_confidence_only() -> None:
    #            trust  confidence   weighted    unweighted
    # v0 confirm  0.1     0.5         0.05        0.5
    # v1 confirm  0.1     0.5         0.05        0.5
    # v2 reject   1.0     0.75        0.75        0.75
    # unweighted: confirm 1.0 of 1.75 >= 0.5 x 1.75 -> confirm
    # weighted:   reject 0.75 of 0.85 >= 0.5 x 0.85 -> reject
    votes = [
        _ballot(VOTERS[0], "confirm", 0.5),
        _ballot(VOTERS[1], "confirm", 0.5),
        _ballot(VOTERS[2], "reject", 0.75),
    ]
    scores = {VOTERS[0].id: 0.1, VOTERS[1].id: 0.1, VOTERS[2].id: 1.0}
    unweighted = cs.tally(_plain_round(weighted=False), votes, scores=scores)
    assert unweighted.outcome == "confirm"
    assert dict(unweighted.scores) == {"confirm": 1.0, "reject": 0.75, "abstain": 0.0}
    assert unweighted.total_weighted_score == 1.75
    weighted = cs.tally(_plain_round(weighted=True), votes, scores=scores)
    assert weighted.outcome == "reject"
    assert weighted.scores["confirm"] == pytest.approx(0.1)
    assert weighted.total_weighted_score == pytest.approx(0.85)
    # Without trust weighting no score is needed, and nobody is reported unscored.
    assert cs.tally(_plain_round(weighted=False), votes, scores={}) == unweighted
    assert unweighted.unscored == ()


def test_tie_for_the_highest_score_is_no_consensus() -> None:
    votes = [_ballot(VOTERS[0], "confirm", 0.5), _ballot(VOTERS[1], "reject", 0.5)]
    scores = {VOTERS[0].id: 1.0, VOTERS[1].id: 1.0}
    result = cs.tally(_plain_round(threshold=0.5), votes, scores=scores)
    assert (result.outcome, result.reason) == (cs.NO_CONSENSUS, "tie")
    assert not result.decided


def test_a_tie_below_the_top_does_not_matter() -> None:
    votes = [
        _ballot(VOTERS[0], "confirm", 1.0),
        _ballot(VOTERS[1], "reject", 0.25),
        _ballot(VOTERS[2], "abstain", 0.25),
    ]
    scores = dict.fromkeys((v.id for v in VOTERS[:3]), 1.0)
    assert cs.tally(_plain_round(threshold=0.5), votes, scores=scores).outcome == "confirm"


def test_quorum_not_met() -> None:
    votes = [_ballot(VOTERS[0], "confirm", 1.0), _ballot(VOTERS[1], "confirm", 1.0)]
    scores = dict.fromkeys((v.id for v in VOTERS[:2]), 1.0)
    result = cs.tally(_plain_round(min_participants=3), votes, scores=scores)
    assert (result.outcome, result.reason, result.participants) == (cs.NO_CONSENSUS, "quorum", 2)
    assert result.scores["confirm"] == 2.0
    met = cs.tally(_plain_round(min_participants=2), votes, scores=scores)
    assert met.outcome == "confirm"


def test_no_votes_at_all() -> None:
    result = cs.tally(_plain_round(), [], scores={})
    assert (result.outcome, result.reason, result.participants) == (cs.NO_CONSENSUS, "quorum", 0)
    assert dict(result.scores) == dict.fromkeys(OPTIONS, 0.0)


def test_total_zero_is_no_consensus() -> None:
    votes = [_ballot(VOTERS[0], "confirm", 0.0), _ballot(VOTERS[1], "reject", 0.0)]
    scores = dict.fromkeys((v.id for v in VOTERS[:2]), 1.0)
    result = cs.tally(_plain_round(), votes, scores=scores)
    assert (result.outcome, result.reason, result.total_weighted_score) == (
        cs.NO_CONSENSUS,
        "no_weight",
        0.0,
    )
    assert result.participants == 2


def test_a_voter_without_a_trust_score_weighs_zero_and_is_reported() -> None:
    votes = [
        _ballot(VOTERS[0], "confirm", 1.0),
        _ballot(VOTERS[1], "reject", 1.0),
        _ballot(VOTERS[2], "reject", 1.0),
    ]
    result = cs.tally(_plain_round(), votes, scores={VOTERS[0].id: 0.5})
    assert result.outcome == "confirm"
    assert dict(result.scores) == {"confirm": 0.5, "reject": 0.0, "abstain": 0.0}
    assert result.unscored == tuple(sorted((VOTERS[1].id, VOTERS[2].id)))
    assert result.participants == 3
    nobody = cs.tally(_plain_round(), votes, scores={})
    assert (nobody.reason, len(nobody.unscored)) == ("no_weight", 3)


def test_equivocators_are_excluded_and_identical_votes_count_once() -> None:
    honest = [_ballot(VOTERS[i], "confirm", 0.5) for i in range(3)]
    resend = attrs.evolve(honest[0], duplicate=True, received_at=NOW + 5)
    two_faced = [
        _ballot(VOTERS[3], "reject", 1.0),
        _ballot(VOTERS[3], "reject", 0.9),
        _ballot(VOTERS[3], "reject", 1.0),
    ]
    scores = {v.id: 1.0 for v in VOTERS[:4]}
    result = cs.tally(_plain_round(), [*honest, resend, *two_faced], scores=scores)
    assert result.outcome == "confirm"
    assert result.excluded == (VOTERS[3].id,)
    assert result.participants == 3
    assert VOTERS[3].id not in result.counted
    assert dict(result.scores) == {"confirm": 1.5, "reject": 0.0, "abstain": 0.0}


def test_same_option_with_another_rationale_is_still_equivocation() -> None:
    voter = VOTERS[0]
    a = _admit(voter.vote("confirm", rationale=cs.rationale_hash("one")), voter.facts())
    b = _admit(voter.vote("confirm", rationale=cs.rationale_hash("two")), voter.facts())
    result = cs.tally(_plain_round(), [a, b], scores={voter.id: 1.0})
    assert result.excluded == (voter.id,)
    assert result.participants == 0


@pytest.mark.parametrize(
    ("ballot", "scores", "message"),
    [
        (_ballot(VOTERS[0], "confirm", 1.0, consensus_id=OTHER_CID), {}, "another round"),
        (_ballot(VOTERS[0], "maybe", 1.0), {VOTERS[0].id: 1.0}, "option"),
        (_ballot(VOTERS[0], "confirm", 1.0), {VOTERS[0].id: 1.5}, r"\[0, 1\]"),
        (_ballot(VOTERS[0], "confirm", 1.0), {VOTERS[0].id: math.nan}, r"\[0, 1\]"),
        (_ballot(VOTERS[0], "confirm", 1.0), {VOTERS[0].id: -0.1}, r"\[0, 1\]"),
    ],
)
def test_tally_refuses_caller_errors(
    ballot: cs.AdmittedVote, scores: dict[str, float], message: str
) -> None:
    with pytest.raises(ValueError, match=message):
        cs.tally(_plain_round(), [ballot], scores=scores)


def test_tally_is_an_immutable_value() -> None:
    result = cs.tally(_plain_round(), [_ballot(VOTERS[0], "confirm", 1.0)], scores={})
    with pytest.raises(TypeError):
        result.scores["confirm"] = 5.0  # type: ignore[index]
    with pytest.raises(attrs.exceptions.FrozenInstanceError):
        result.outcome = "reject"  # type: ignore[misc]


# --- tally: properties ---------------------------------------------------------------------

_confidences = st.floats(min_value=0.0, max_value=1.0, allow_nan=False)
_ballots = st.lists(
    st.tuples(st.integers(0, 11), st.sampled_from(OPTIONS), _confidences),
    max_size=40,
)


def _ballots_from(raw: list[tuple[int, str, float]]) -> list[cs.AdmittedVote]:
    return [_ballot(VOTERS[i], option, confidence) for i, option, confidence in raw]


@settings(max_examples=200)
@given(
    raw=_ballots,
    trust=st.lists(_confidences, min_size=12, max_size=12),
    weighted=st.booleans(),
    threshold=st.sampled_from([0.01, 0.5, 0.6, 0.67, 0.75, 1.0]),
    min_participants=st.integers(1, 12),
    order=st.randoms(use_true_random=False),
)
def test_tally_properties(
    raw: list[tuple[int, str, float]],
    trust: list[float],
    weighted: bool,
    threshold: float,
    min_participants: int,
    order: Any,
) -> None:
    round_ = _plain_round(weighted=weighted, threshold=threshold, min_participants=min_participants)
    votes = _ballots_from(raw)
    scores = {VOTERS[i].id: trust[i] for i in range(12)}
    result = cs.tally(round_, votes, scores=scores)

    # Order does not matter, not even in the last bit of a score.
    shuffled = list(votes)
    order.shuffle(shuffled)
    assert cs.tally(round_, shuffled, scores=scores) == result

    # Equivocators are exactly the voters with two distinct votes.
    distinct: dict[str, set[str]] = {}
    for vote in votes:
        distinct.setdefault(vote.voter, set()).add(vote.digest)
    two_faced = {voter for voter, digests in distinct.items() if len(digests) > 1}
    assert set(result.excluded) == two_faced
    assert set(result.counted) == set(distinct) - two_faced
    assert result.participants == len(result.counted)

    assert list(result.scores) == list(OPTIONS)
    assert all(score >= 0.0 for score in result.scores.values())
    assert math.fsum(result.scores.values()) == pytest.approx(result.total_weighted_score)
    if result.decided:
        top = result.scores[result.outcome]
        assert all(s < top for o, s in result.scores.items() if o != result.outcome)
        assert top >= threshold * result.total_weighted_score * (1 - 1e-12)
        assert result.participants >= min_participants
    else:
        assert result.reason in {"quorum", "no_weight", "tie", "threshold"}


@settings(max_examples=200)
@given(
    raw=_ballots,
    extra_option=st.sampled_from(OPTIONS),
    extra_confidences=st.tuples(_confidences, _confidences).filter(lambda c: c[0] != c[1]),
    new_confidence=_confidences,
)
def test_tally_equivocation_and_support_properties(
    raw: list[tuple[int, str, float]],
    extra_option: str,
    extra_confidences: tuple[float, float],
    new_confidence: float,
) -> None:
    round_ = _plain_round(threshold=0.6, min_participants=2)
    votes = _ballots_from(raw)
    scores = {v.id: 0.75 for v in VOTERS}
    before = cs.tally(round_, votes, scores=scores)

    # A newcomer that equivocates changes nothing but the excluded list.
    newcomer = VOTERS[20]
    pair = [_ballot(newcomer, extra_option, c) for c in extra_confidences]
    after = cs.tally(round_, [*votes, *pair], scores=scores)
    assert attrs.evolve(after, excluded=before.excluded) == before
    assert newcomer.id in after.excluded

    # More support for a decided winner keeps it the winner.
    if before.decided:
        support = _ballot(VOTERS[21], before.outcome, new_confidence)
        assert cs.tally(round_, [*votes, support], scores=scores).outcome == before.outcome


# --- the adversarial test ------------------------------------------------------------------

BEHAVIOURS = (
    "equivocate",  # two different valid votes through two nodes
    "late",  # a valid vote received after the deadline
    "forged_key",  # signed by a key that is not the agent's
    "claims_other",  # names another agent as voter
    "replays_other",  # sends an honest agent's signed vote as its own
    "wrong_round",  # a vote for another round
    "ineligible",  # level too low or a required domain missing
)


@attrs.frozen
class Sent:
    """One consensus_vote message as a node receives it."""

    node: int
    sender: str
    vote: dict[str, Any]
    received_at: float
    expect: str | None  # the refusal reason, or None when it is admitted
    sequence: int = 0  # messages of one agent to one node keep this order


def _faulty_messages(
    data: st.DataObject, agent: Voter, victim: Voter, behaviours: frozenset[str]
) -> list[Sent]:
    """The messages a faulty agent sends, each with the refusal it must meet."""
    ineligible = "ineligible" in behaviours
    at, at2 = data.draw(st.lists(st.floats(NOW, DEADLINE), min_size=2, max_size=2), label="at")
    node = data.draw(st.integers(0, 1), label="node")
    out: list[Sent] = []
    if "equivocate" in behaviours:
        first, second = agent.vote("confirm", 1.0), agent.vote("reject", 1.0)
        admitted = "ineligible" if ineligible else None
        out.append(Sent(0, agent.id, first, at, admitted))
        out.append(Sent(1, agent.id, second, at2, admitted))
        # The second vote through the first node too, after the first vote: refused.
        refused = "ineligible" if ineligible else "already_voted"
        out.append(Sent(0, agent.id, second, at2, refused, sequence=1))
    if "late" in behaviours:
        out.append(Sent(node, agent.id, agent.vote("reject"), DEADLINE + 1, "after_deadline"))
    if "forged_key" in behaviours:
        out.append(Sent(node, agent.id, agent.vote(key=FORGER_KEY), at, "bad_vote_signature"))
    if "claims_other" in behaviours:
        out.append(Sent(node, agent.id, agent.vote(voter=victim.id), at, "voter_mismatch"))
    if "replays_other" in behaviours:
        named = data.draw(st.booleans(), label="replay named")
        stolen = victim.vote("abstain", voter=victim.id if named else None)
        expect = "voter_mismatch" if named else "bad_vote_signature"
        out.append(Sent(node, agent.id, stolen, at, expect))
    if "wrong_round" in behaviours:
        out.append(Sent(node, agent.id, agent.vote(consensus_id=OTHER_CID), at, "wrong_round"))
    if behaviours == {"ineligible"}:
        out.append(Sent(node, agent.id, agent.vote(), at, "ineligible"))
    return out


@settings(
    max_examples=120,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
@given(data=st.data())
def test_a_faulty_minority_cannot_change_the_outcome(data: st.DataObject) -> None:
    """f < n/3 faulty agents, whatever they send, leave the outcome of the honest votes.

    Two nodes admit votes, each keeping its own ``already`` like a node; the
    initiator tallies what both admitted. Faulty agents equivocate (through
    both nodes, so both votes reach the tally), vote late, forge signatures,
    claim or replay other agents' votes, vote in another round, or are
    ineligible; every one of their votes is refused or excluded.
    """
    n = data.draw(st.integers(4, 40), label="n")
    f = data.draw(st.integers(0, (n - 1) // 3), label="f")
    assert 3 * f < n
    agents = VOTERS[:n]
    faulty = frozenset(data.draw(st.permutations(range(n)), label="faulty")[:f])
    honest = [agents[i] for i in range(n) if i not in faulty]
    round_ = _round(
        quorum={
            "min_participants": data.draw(st.integers(1, n), label="min_participants"),
            "threshold": data.draw(st.sampled_from([0.34, 0.5, 0.6, 0.67, 1.0]), label="t"),
            "weighted": data.draw(st.booleans(), label="weighted"),
        }
    )
    eligible_facts = st.sampled_from([(2, FRAUD), (4, ("healthcare.oncology", *FRAUD))])
    ineligible_facts = st.sampled_from([(1, FRAUD), (3, ("finance.risk_analysis",)), (2, ())])

    facts: dict[str, cs.VoterFacts] = {}
    scores: dict[str, float] = {}
    sent: list[Sent] = []
    equivocators: set[str] = set()
    for i in sorted(faulty):
        agent = agents[i]
        behaviours = frozenset(
            data.draw(st.sets(st.sampled_from(BEHAVIOURS), min_size=1), label="behaviours")
        )
        strategy = ineligible_facts if "ineligible" in behaviours else eligible_facts
        level, domains = data.draw(strategy, label="facts")
        facts[agent.id] = agent.facts(level=level, domains=domains)
        scores[agent.id] = 1.0  # faulty agents with the highest trust
        victim = data.draw(st.sampled_from(honest), label="victim")
        sent += _faulty_messages(data, agent, victim, behaviours)
        if "equivocate" in behaviours and "ineligible" not in behaviours:
            equivocators.add(agent.id)

    honest_votes: list[tuple[str, dict[str, Any], float]] = []
    for agent in honest:
        level, domains = data.draw(eligible_facts, label="facts")
        facts[agent.id] = agent.facts(level=level, domains=domains)
        if data.draw(st.booleans(), label="scored"):  # some honest agents have no score
            scores[agent.id] = data.draw(_confidences, label="trust")
        vote = agent.vote(
            data.draw(st.sampled_from(OPTIONS), label="option"),
            data.draw(_confidences, label="confidence"),
            voter=agent.id if data.draw(st.booleans(), label="named") else None,
        )
        at = data.draw(st.floats(NOW, DEADLINE), label="at")
        honest_votes.append((agent.id, vote, at))
        sent.append(Sent(data.draw(st.integers(0, 1), label="node"), agent.id, vote, at, None))
        for node in data.draw(st.lists(st.integers(0, 1), max_size=2), label="resends"):
            sent.append(Sent(node, agent.id, vote, at, None, sequence=1))

    order = data.draw(st.permutations(range(len(sent))), label="delivery order")
    delivered = _keep_sequences([sent[k] for k in order])

    already: tuple[dict[str, str], dict[str, str]] = ({}, {})
    admitted: tuple[list[cs.AdmittedVote], list[cs.AdmittedVote]] = ([], [])
    for message in delivered:
        try:
            ballot = cs.admit_vote(
                round_,
                message.vote,
                sender=message.sender,
                voter=facts[message.sender],
                received_at=message.received_at,
                already=already[message.node],
            )
        except OcpError as exc:
            assert exc.details["reason"] == message.expect, message
            continue
        assert message.expect is None, message
        if not ballot.duplicate:
            already[message.node][ballot.voter] = ballot.digest
            admitted[message.node].append(ballot)

    result = cs.tally(round_, [*admitted[0], *admitted[1]], scores=scores)
    alone = cs.tally(
        round_,
        [
            cs.admit_vote(round_, v, sender=s, voter=facts[s], received_at=at, already={})
            for s, v, at in honest_votes
        ],
        scores=scores,
    )
    assert result.outcome == alone.outcome
    assert result.reason == alone.reason
    assert result.scores == alone.scores
    assert result.total_weighted_score == alone.total_weighted_score
    assert result.participants == alone.participants == len(honest)
    assert result.counted == alone.counted
    assert set(result.excluded) == equivocators
    assert alone.excluded == ()


def _keep_sequences(messages: list[Sent]) -> list[Sent]:
    """The delivery order, except that one agent's messages to one node keep their
    ``sequence`` order (a resend after the vote it repeats, an equivocator's
    second vote after its first): the expectations depend on it."""
    slots: dict[tuple[int, str], list[int]] = {}
    for position, message in enumerate(messages):
        slots.setdefault((message.node, message.sender), []).append(position)
    ordered = list(messages)
    for positions in slots.values():
        group = sorted((messages[p] for p in positions), key=lambda m: m.sequence)
        for position, message in zip(positions, group, strict=True):
            ordered[position] = message
    return ordered


def test_equivocation_through_two_nodes_would_flip_the_outcome_if_counted() -> None:
    # Five honest agents confirm with modest trust; two faulty high-trust agents
    # send "reject" through node 0 and "abstain" through node 1.
    round_ = _round(quorum={"min_participants": 3, "threshold": 0.6, "weighted": True})
    honest, faulty = VOTERS[:5], VOTERS[5:7]
    scores = {**{a.id: 0.5 for a in honest}, **{a.id: 1.0 for a in faulty}}
    node0 = [_admit(a.vote("confirm", 0.5), a.facts(), round_=round_) for a in honest]
    node0 += [_admit(a.vote("reject", 1.0), a.facts(), round_=round_) for a in faulty]
    node1 = [_admit(a.vote("abstain", 1.0), a.facts(), round_=round_) for a in faulty]
    # Node 0 alone would be fooled: reject 2.0 of 3.25 >= 0.6 x 3.25.
    assert cs.tally(round_, node0, scores=scores).outcome == "reject"
    combined = cs.tally(round_, [*node0, *node1], scores=scores)
    assert combined.outcome == "confirm"
    assert combined.excluded == tuple(sorted(a.id for a in faulty))
    assert combined.total_weighted_score == 1.25


# --- results and round status ---------------------------------------------------------------


def _decided() -> tuple[cs.ConsensusRound, cs.Tally, list[dict[str, Any]]]:
    round_ = _round()
    votes = [VOTERS[i].vote("confirm", 0.9) for i in range(3)]
    admitted = [_admit(v, VOTERS[i].facts(), round_=round_) for i, v in enumerate(votes)]
    return round_, cs.tally(round_, admitted, scores={v.voter: 0.8 for v in admitted}), votes


def test_result_payload() -> None:
    round_, result, votes = _decided()
    payload = cs.result_payload(round_, result)
    assert payload == {
        "consensus_id": CID,
        "outcome": "confirm",
        "scores": {"confirm": pytest.approx(2.16), "reject": 0.0, "abstain": 0.0},
        "total_weighted_score": pytest.approx(2.16),
        "participants": 3,
    }
    with_votes = cs.result_payload(round_, result, include_votes=votes)
    assert with_votes["votes"] == votes
    schema.validate("payload.consensus_result", with_votes)


def test_result_payload_of_no_consensus() -> None:
    round_ = _round()
    payload = cs.result_payload(round_, cs.tally(round_, [], scores={}))
    assert payload["outcome"] == cs.NO_CONSENSUS
    assert payload["participants"] == 0
    assert payload["scores"] == dict.fromkeys(OPTIONS, 0.0)


def test_result_payload_refuses_votes_of_another_round() -> None:
    round_, result, _ = _decided()
    with pytest.raises(MalformedError) as info:
        cs.result_payload(round_, result, include_votes=[VOTERS[0].vote(consensus_id=OTHER_CID)])
    assert info.value.details == {"field": "votes"}


def test_check_result_accepts_the_initiators_result_in_time() -> None:
    round_, result, votes = _decided()
    payload = cs.result_payload(round_, result, include_votes=votes)
    for now in (DEADLINE + 0.001, DEADLINE + 30, DEADLINE + cs.RESULT_WITHIN):
        assert cs.check_result(round_, payload, sender=INITIATOR.id, now=now) == "confirm"


@pytest.mark.parametrize(
    ("change", "sender", "now", "error", "reason"),
    [
        ({}, VOTERS[0].id, DEADLINE + 1, ForbiddenError, "not_initiator"),
        ({}, INITIATOR.id, DEADLINE, ForbiddenError, "before_deadline"),
        ({}, INITIATOR.id, DEADLINE + 60.001, ForbiddenError, "result_too_late"),
        ({"consensus_id": OTHER_CID}, INITIATOR.id, DEADLINE + 1, MalformedError, "wrong_round"),
        ({"outcome": "maybe"}, INITIATOR.id, DEADLINE + 1, MalformedError, "unknown_option"),
        (
            {"scores": {"confirm": 1.0}},
            INITIATOR.id,
            DEADLINE + 1,
            MalformedError,
            "unknown_option",
        ),
        ({"participants": -1}, INITIATOR.id, DEADLINE + 1, MalformedError, "schema"),
    ],
)
def test_check_result_refusals(
    change: dict[str, Any], sender: str, now: float, error: type[OcpError], reason: str
) -> None:
    round_, result, _ = _decided()
    payload = {**cs.result_payload(round_, result), **change}
    with pytest.raises(error) as info:
        cs.check_result(round_, payload, sender=sender, now=now)
    assert _reason(info) == reason


def test_check_result_refuses_listed_votes_of_another_round() -> None:
    round_, result, votes = _decided()
    payload = cs.result_payload(round_, result, include_votes=votes)
    payload["votes"].append(VOTERS[5].vote(consensus_id=OTHER_CID))
    with pytest.raises(MalformedError) as info:
        cs.check_result(round_, payload, sender=INITIATOR.id, now=DEADLINE + 1)
    assert _reason(info) == "wrong_round"


@pytest.mark.parametrize(
    ("now", "result_seen", "status"),
    [
        (NOW, None, "open"),
        (DEADLINE, None, "open"),
        (DEADLINE + 0.5, None, "awaiting_result"),
        (DEADLINE + 60, None, "awaiting_result"),
        (DEADLINE + 60.5, None, "unresolved"),
        (DEADLINE + 86_400, None, "unresolved"),
        (DEADLINE + 10, "confirm", "decided"),
        (DEADLINE + 10, cs.NO_CONSENSUS, "no_consensus"),
    ],
)
def test_round_status(now: float, result_seen: str | None, status: str) -> None:
    assert cs.round_status(_round(), now=now, result_seen=result_seen) == status
