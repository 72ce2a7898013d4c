"""Consensus tally and vote admission (``make bench``).

Run from the repository root::

    .venv/bin/python -m bench.consensus --out bench/results/consensus.json

A weighted round with three options receives ``--votes`` (10,000) votes, each
signed by its own fresh Ed25519 key (random option, confidence and trust
score from a seeded generator; the clock is fixed).

* ``admit_vote``: every vote goes once through
  :func:`ocpd.proto.consensus.admit_vote` as a node runs it (schema, voter,
  round, option, one Ed25519 verify, deadline, eligibility, the ``already``
  map kept up to date); each call is timed on its own with
  :func:`time.perf_counter_ns`. For reference, the two costly parts are timed
  the same way over the same votes: the D2 digest (JCS + SHA3-256) and the
  Ed25519 verify.
* ``tally``: :func:`ocpd.proto.consensus.tally` over the 10,000 admitted
  votes, after ``WARMUP_RUNS`` untimed runs, ``--runs`` (at least 50) times.
  **Target: median ≤ 50 ms.** The garbage collector stays enabled: a node
  tallies with it on, and the tally allocates.

Reported per measure: median, p99 (nearest rank), min, max and mean. The exit
status is 0 even above the target: a benchmark is not a test.
"""

from __future__ import annotations

import argparse
import gc
import json
import math
import platform
import random
import statistics
import sys
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from time import perf_counter_ns
from typing import TYPE_CHECKING, Any, Final

from bench.harness import load_average, machine_facts, target_status
from ocpd.proto import consensus as cs
from ocpd.proto.crypto import SigningKey, ed25519_verify
from ocpd.proto.encoding import b64url_decode, format_timestamp
from ocpd.proto.ids import derive_agent_id
from ocpd.proto.signing import artifact_digest

if TYPE_CHECKING:
    from collections.abc import Callable, Sequence

__all__ = ["main", "run"]

#: The clock of the benchmark: 2026-01-01T00:00:00Z; the round closes an hour later.
NOW: Final = 1_767_225_600.0
NETWORK: Final = "bench"
CONSENSUS_ID: Final = "con-6f1c2a9e-4b7d-4c21-9e0a-3d5b8f217c44"
OPTIONS: Final = ("confirm", "reject", "abstain")

VOTES: Final = 10_000
RUNS: Final = 100
MIN_RUNS: Final = 50
WARMUP_RUNS: Final = 5
TALLY_TARGET_MS: Final = 50.0
SEED: Final = 17


@dataclass(frozen=True)
class Stats:
    """Summary of samples in one unit."""

    median: float
    p99: float
    min: float
    max: float
    mean: float
    count: int

    @classmethod
    def of(cls, samples: Sequence[float]) -> Stats:
        ordered = sorted(samples)
        rank = max(1, math.ceil(0.99 * len(ordered)))  # nearest rank
        return cls(
            median=statistics.median(ordered),
            p99=ordered[rank - 1],
            min=ordered[0],
            max=ordered[-1],
            mean=statistics.fmean(ordered),
            count=len(ordered),
        )

    def record(self, digits: int = 3) -> dict[str, float | int]:
        return {
            "median": round(self.median, digits),
            "p99": round(self.p99, digits),
            "min": round(self.min, digits),
            "max": round(self.max, digits),
            "mean": round(self.mean, digits),
            "count": self.count,
        }


def _check(condition: object, what: str) -> None:
    """A sanity check that survives ``python -O``."""
    if not condition:
        raise RuntimeError(f"benchmark setup is wrong: {what}")


# --- the round and its votes -------------------------------------------------------------


def build_round(deadline: float) -> cs.ConsensusRound:
    initiate = {
        "consensus_id": CONSENSUS_ID,
        "topic": "Classify pattern FP-2026-0042 as confirmed fraud indicator",
        "options": list(OPTIONS),
        "quorum": {"min_participants": 5, "threshold": 0.5, "weighted": True},
        "deadline": format_timestamp(deadline),
        "eligible_agents": {"min_trust_level": 2, "required_domains": ["finance"]},
    }
    initiator = derive_agent_id(SigningKey(bytes(32)).public_key, NETWORK)
    return cs.ConsensusRound.from_initiate(initiate, initiator=initiator, now=NOW)


@dataclass(frozen=True)
class Ballot:
    """A signed vote as it arrives, with what the node knows about its sender."""

    vote: dict[str, Any]
    facts: cs.VoterFacts


def build_ballots(count: int, rng: random.Random) -> list[Ballot]:
    ballots = []
    for _ in range(count):
        key = SigningKey(rng.randbytes(32))
        voter = derive_agent_id(key.public_key, NETWORK)
        vote = cs.sign_vote(
            CONSENSUS_ID,
            rng.choice(OPTIONS),
            round(rng.random(), 3),
            cs.rationale_hash(rng.randbytes(16)),
            key,
            voter=voter,
        )
        facts = cs.VoterFacts(
            agent_id=voter,
            keys=(key.public_key,),
            level=rng.choice((2, 3, 4)),
            domains=("finance.fraud_detection",),
            trust_score=round(rng.random(), 3),
        )
        ballots.append(Ballot(vote, facts))
    return ballots


# --- measures ----------------------------------------------------------------------------


def _time_each(func: Callable[[Ballot], object], ballots: Sequence[Ballot]) -> list[float]:
    """Microseconds per call of ``func`` on each ballot."""
    samples = []
    for ballot in ballots:
        start = perf_counter_ns()
        func(ballot)
        samples.append((perf_counter_ns() - start) / 1_000)
    return samples


def measure_admission(
    round_: cs.ConsensusRound, ballots: Sequence[Ballot]
) -> tuple[list[cs.AdmittedVote], dict[str, Stats]]:
    already: dict[str, str] = {}
    admitted: list[cs.AdmittedVote] = []
    received_at = NOW + 1

    def admit(ballot: Ballot) -> None:
        vote = cs.admit_vote(
            round_,
            ballot.vote,
            sender=ballot.facts.agent_id,
            voter=ballot.facts,
            received_at=received_at,
            already=already,
        )
        already[vote.voter] = vote.digest
        admitted.append(vote)

    signatures = {
        id(b): b64url_decode(b.vote["signature"], field="signature", length=64) for b in ballots
    }
    digests = {id(b): artifact_digest(b.vote) for b in ballots}

    def verify(ballot: Ballot) -> None:
        key = ballot.facts.keys[0]
        _check(ed25519_verify(key, digests[id(ballot)], signatures[id(ballot)]), "verify")

    gc.collect()
    stats = {
        "admit_vote": Stats.of(_time_each(admit, ballots)),
        "d2_digest": Stats.of(_time_each(lambda b: artifact_digest(b.vote), ballots)),
        "ed25519_verify": Stats.of(_time_each(verify, ballots)),
    }
    _check(len(admitted) == len(ballots), "every vote is admitted")
    _check(not any(v.duplicate for v in admitted), "no vote is a duplicate")
    return admitted, stats


def measure_tally(
    round_: cs.ConsensusRound,
    admitted: Sequence[cs.AdmittedVote],
    scores: dict[str, float],
    runs: int,
) -> tuple[cs.Tally, Stats]:
    expected = cs.tally(round_, admitted, scores=scores)
    _check(expected.participants == len(admitted), "every vote is counted")
    _check(expected.excluded == () and expected.unscored == (), "nobody excluded or unscored")
    for _ in range(WARMUP_RUNS):
        cs.tally(round_, admitted, scores=scores)
    gc.collect()
    samples = []
    for _ in range(runs):
        start = perf_counter_ns()
        result = cs.tally(round_, admitted, scores=scores)
        samples.append((perf_counter_ns() - start) / 1e6)
        _check(result == expected, "the tally is deterministic")
    return expected, Stats.of(samples)


# --- reporting ---------------------------------------------------------------------------


def format_table(measures: dict[str, dict[str, Any]]) -> str:
    header = (
        f"{'measure':<44} {'median':>9} {'p99':>9} {'min':>9} {'max':>9} {'n':>7} {'target':>7}"
    )
    lines = [header, "-" * len(header)]
    for record in measures.values():
        stats = record["stats"]
        target = record["target"]
        status = target_status(record["meets_target"])
        lines.append(
            f"{record['label']:<44} {stats['median']:>9.3f} {stats['p99']:>9.3f} "
            f"{stats['min']:>9.3f} {stats['max']:>9.3f} {stats['count']:>7} "
            f"{'' if target is None else f'{target:g}':>7}  {status}".rstrip()
        )
    return "\n".join(lines)


def run(out: Path, *, votes: int = VOTES, runs: int = RUNS) -> dict[str, Any]:
    started = datetime.now(UTC)
    load_before = load_average()
    rng = random.Random(SEED)
    round_ = build_round(NOW + 3600)
    print(f"building {votes} signed votes (one key each) ...")
    ballots = build_ballots(votes, rng)
    admitted, admission = measure_admission(round_, ballots)
    scores = {b.facts.agent_id: b.facts.trust_score for b in ballots}
    result, tally_stats = measure_tally(round_, admitted, scores, runs)

    measures: dict[str, dict[str, Any]] = {
        "tally": {
            "label": f"tally of {votes} votes, weighted, 3 options",
            "unit": "ms per tally",
            "stats": tally_stats.record(),
            "target": TALLY_TARGET_MS,
            "meets_target": tally_stats.median <= TALLY_TARGET_MS,
        },
        "admit_vote": {
            "label": "admit_vote, per vote (one Ed25519 verify)",
            "unit": "µs per vote",
            "stats": admission["admit_vote"].record(),
            "target": None,
            "meets_target": None,
        },
        "d2_digest": {
            "label": "  of which: D2 digest (JCS + SHA3-256)",
            "unit": "µs per vote",
            "stats": admission["d2_digest"].record(),
            "target": None,
            "meets_target": None,
        },
        "ed25519_verify": {
            "label": "  of which: Ed25519 verify",
            "unit": "µs per vote",
            "stats": admission["ed25519_verify"].record(),
            "target": None,
            "meets_target": None,
        },
    }
    report: dict[str, Any] = {
        "suite": "consensus",
        "timestamp": started.isoformat(timespec="seconds").replace("+00:00", "Z"),
        "machine": {
            **machine_facts(("pynacl", "attrs", "fastjsonschema", "rfc8785")),
            "implementation": platform.python_implementation(),
        },
        "load_average": {"before": load_before, "after": load_average()},
        "method": {
            "timer": "time.perf_counter_ns",
            "gc": "enabled (collected once before each measure)",
            "votes": votes,
            "tally_runs": runs,
            "tally_warmup_runs": WARMUP_RUNS,
            "admission": "each call timed on its own, every vote once",
            "p99": "nearest rank",
            "seed": SEED,
        },
        "tally_outcome": {
            "outcome": result.outcome,
            "participants": result.participants,
            "scores": {option: round(score, 6) for option, score in result.scores.items()},
        },
        "target_ms": TALLY_TARGET_MS,
        "meets_target": measures["tally"]["meets_target"],
        "measures": measures,
    }
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")

    print()
    print("tally in ms per tally; admission in µs per vote")
    print(format_table(measures))
    print()
    print(f"outcome: {result.outcome} ({result.participants} participants)")
    print(f"load average before/after: {load_before} / {report['load_average']['after']}")
    print(f"results written to {out}")
    return report


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bench.consensus",
        description="Consensus tally and vote admission.",
    )
    parser.add_argument(
        "--out", type=Path, default=Path("bench/results/consensus.json"), help="JSON results file"
    )
    parser.add_argument(
        "--votes", type=int, default=VOTES, help=f"votes in the round (default {VOTES})"
    )
    parser.add_argument(
        "--runs",
        type=int,
        default=RUNS,
        help=f"timed tally runs, at least {MIN_RUNS} (default {RUNS})",
    )
    args = parser.parse_args(argv)
    if args.runs < MIN_RUNS:
        parser.error(f"--runs must be at least {MIN_RUNS}")
    if args.votes < 1:
        parser.error("--votes must be at least 1")
    run(args.out, votes=args.votes, runs=args.runs)
    return 0


if __name__ == "__main__":
    sys.exit(main())
