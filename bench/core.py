"""Microbenchmarks of the protocol core's hot path (``make bench``).

Run from the repository root::

    .venv/bin/python -m bench.core --out bench/results/core.json

A realistic signed OCPUMF message of about 1 KB (a ``knowledge_share``
insight package, signed with a fresh Ed25519 key, clock fixed) goes through
each step of :func:`ocpd.proto.envelope.verify_message` separately, then
through the whole of it, and the primitives behind signing and payload
encryption are timed on their own.

Method (the ``timeit`` approach): each step is calibrated and warmed up by
running batches of doubling size until one lasts ``CALIBRATION_NS``; ``N`` is
chosen so that a repeat lasts about ``REPEAT_NS``; then ``R`` repeats of ``N``
calls each are timed with :func:`time.perf_counter_ns` while the garbage
collector is disabled. The per-call time of a repeat is its duration over
``N``. Reported per step, in microseconds: median, min and max over the
repeats, and the spread ``p90 - p10``. The loop and closure overhead of one
call (measured with a no-op) is recorded but not subtracted.

The exit status is 0 even when a step is above its target: a benchmark is not
a test. Such steps are marked ``ABOVE TARGET`` in the table.
"""

from __future__ import annotations

import argparse
import gc
import itertools
import json
import platform
import statistics
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from time import perf_counter_ns
from typing import Any, Final

import rfc8785

from bench.harness import load_average, machine_facts, target_status
from ocpd.proto.crypto import (
    SigningKey,
    aes256gcm_decrypt,
    aes256gcm_encrypt,
    ed25519_verify,
    random_bytes,
    sha3_256,
)
from ocpd.proto.encoding import b64url_decode, format_timestamp
from ocpd.proto.envelope import (
    MAX_MESSAGE_SIZE,
    build_message,
    message_aad,
    message_digest,
    sign_message,
    verify_message,
)
from ocpd.proto.ids import derive_agent_id
from ocpd.proto.jcs import canonicalize
from ocpd.proto.schema import validate_envelope
from ocpd.proto.strictjson import loads_strict

__all__ = ["STEPS", "Step", "build_signed_message", "main", "measure"]

#: The clock of the benchmark: 2026-01-01T00:00:00Z. Verification runs one
#: second later, well inside the message's TTL.
NOW: Final = 1_767_225_600.0
NETWORK: Final = "bench"

REPEATS: Final = 15
#: Target duration of one repeat (the middle of the 50-100 ms window).
REPEAT_NS: Final = 75_000_000
#: Batches double in size until one lasts this long (calibration + warm-up).
CALIBRATION_NS: Final = 25_000_000
#: Bounds of the serialized signed message, in bytes.
MESSAGE_MIN_BYTES: Final = 1_000
MESSAGE_MAX_BYTES: Final = 1_100
AES_PLAINTEXT_BYTES: Final = 10 * 1024
#: A spread above this fraction of the median flags a noisy run.
NOISY_SPREAD: Final = 0.10

Thunk = Callable[[], object]


@dataclass(frozen=True)
class Step:
    """One measured operation."""

    key: str
    label: str
    target_us: float | None = None


#: The steps in table order; the keys name them in the JSON output.
STEPS: Final = (
    Step("strict_parse", "strict parse (loads_strict)"),
    Step("schema_gate", "schema gate (validate_envelope)"),
    Step("jcs", "JCS (canonicalize)"),
    Step("jcs_reference", "JCS reference (rfc8785.dumps)"),
    Step("sha3_256", "SHA3-256 of the JCS bytes"),
    Step("ed25519_verify", "Ed25519 verify (ed25519_verify)"),
    Step("verify_message", "envelope verify (verify_message)", target_us=120.0),
    Step("ed25519_sign_verify", "Ed25519 sign+verify, 32-byte digest", target_us=100.0),
    Step("aes256gcm_encrypt_10k", "AES-256-GCM encrypt 10 KB", target_us=20.0),
)


# --- the message -------------------------------------------------------------------


def insight_payload(source_agent: str) -> dict[str, object]:
    """A knowledge_share insight package (payload.knowledge_share, ``insight``)."""
    return {
        "knowledge_type": "insight",
        "insight_id": "ins-6f1c2a9e-4b7d-4c21-9e0a-3d5b8f217c44",
        "topic": "Retry storms after rate limiting",
        "confidence": 0.87,
        "evidence_count": 142,
        "anonymized": True,
        "payload": {
            "summary": (
                "Retrying at once after OCP-429 amplifies upstream load; jittered "
                "backoff capped at 30 s ended the storms."
            ),
            "findings": [
                "Median recovery fell from 412 s to 38 s.",
                "Honouring Retry-After removed 96% of duplicate requests.",
            ],
        },
        "provenance": {
            "source_agent": source_agent,
            "timestamp": format_timestamp(NOW - 86_400),
            "reproducibility_hash": sha3_256(b"bench/core insight v1").hex(),
        },
    }


def build_signed_message(key: SigningKey) -> tuple[dict[str, Any], bytes]:
    """The signed message and its wire bytes (its JCS form)."""
    sender = derive_agent_id(key.public_key, NETWORK)
    receiver = derive_agent_id(sha3_256(b"bench receiver"), NETWORK)
    unsigned = build_message(
        sender=sender,
        receiver=receiver,
        message_type="knowledge_share",
        payload=insight_payload(sender),
        now=NOW,
        metadata={"language": "en", "requires_ack": True},
    )
    signed = sign_message(unsigned, key)
    return signed, canonicalize(signed)


# --- measurement -------------------------------------------------------------------


def _run(func: Thunk, n: int) -> int:
    """Nanoseconds taken by ``n`` calls of ``func``."""
    loop = itertools.repeat(None, n)
    start = perf_counter_ns()
    for _ in loop:
        func()
    return perf_counter_ns() - start


def _calibrate(func: Thunk) -> int:
    """Calls per repeat; the doubling batches double as the warm-up."""
    n = 1
    while True:
        elapsed = _run(func, n)
        if elapsed >= CALIBRATION_NS:
            break
        n *= 2
    return max(1, round(n * REPEAT_NS / elapsed))


@dataclass(frozen=True)
class Result:
    """Per-call times of the repeats of one step, in microseconds."""

    samples_us: tuple[float, ...]
    iterations: int

    @property
    def median_us(self) -> float:
        return statistics.median(self.samples_us)

    @property
    def min_us(self) -> float:
        return min(self.samples_us)

    @property
    def max_us(self) -> float:
        return max(self.samples_us)

    @property
    def spread_us(self) -> float:
        """``p90 - p10`` over the repeats."""
        deciles = statistics.quantiles(self.samples_us, n=10, method="inclusive")
        return deciles[8] - deciles[0]


def measure(func: Thunk, *, repeats: int = REPEATS) -> Result:
    """Warm up, calibrate, then time ``repeats`` batches with the GC disabled."""
    n = _calibrate(func)
    gc.collect()
    gc_was_enabled = gc.isenabled()
    gc.disable()
    try:
        _run(func, n)  # one full untimed repeat
        times = [_run(func, n) for _ in range(repeats)]
    finally:
        if gc_was_enabled:
            gc.enable()
    return Result(samples_us=tuple(t / n / 1_000 for t in times), iterations=n)


def _check(condition: object, what: str) -> None:
    """A sanity check that survives ``python -O``."""
    if not condition:
        raise RuntimeError(f"benchmark setup is wrong: {what}")


def _noop() -> None:
    return None


# --- the steps ---------------------------------------------------------------------


def build_steps(key: SigningKey, signed: dict[str, Any], raw: bytes) -> dict[str, Thunk]:
    """One thunk per step, each checked once for the right answer before timing."""
    public_key = key.public_key
    keys = (public_key,)

    def resolve_keys(agent_id: str) -> Sequence[bytes]:
        return keys

    parsed = loads_strict(raw, max_size=MAX_MESSAGE_SIZE)
    _check(parsed == signed, "strict parse does not round-trip the message")
    validate_envelope(parsed)

    unsigned = dict(signed)
    unsigned["sender"] = {k: v for k, v in signed["sender"].items() if k != "signature"}
    canonical = canonicalize(unsigned)
    _check(canonical == rfc8785.dumps(unsigned), "canonicalize differs from rfc8785")
    digest = sha3_256(canonical)
    _check(digest == message_digest(signed), "digest differs from message_digest")
    signature = b64url_decode(signed["sender"]["signature"], field="signature", length=64)
    _check(ed25519_verify(public_key, digest, signature), "the signature does not verify")
    verified = verify_message(raw, now=NOW + 1, resolve_keys=resolve_keys)
    _check(verified.digest == digest, "verify_message returned another digest")

    digest32 = sha3_256(b"bench: a 32-byte digest to sign")

    def sign_verify() -> bool:
        return ed25519_verify(public_key, digest32, key.sign(digest32))

    _check(sign_verify(), "sign+verify fails")

    # Encryption with a key given as bytes, as encrypt_payload does: the AESGCM
    # object is built inside every call. Reusing the nonce is fine here only
    # because nothing is ever sent.
    aes_key = random_bytes(32)
    nonce = random_bytes(12)
    plaintext = random_bytes(AES_PLAINTEXT_BYTES)
    aad = message_aad(signed)
    ciphertext = aes256gcm_encrypt(aes_key, nonce, plaintext, aad)
    _check(aes256gcm_decrypt(aes_key, nonce, ciphertext, aad) == plaintext, "AES round trip")

    return {
        "strict_parse": lambda: loads_strict(raw, max_size=MAX_MESSAGE_SIZE),
        "schema_gate": lambda: validate_envelope(parsed),
        "jcs": lambda: canonicalize(unsigned),
        "jcs_reference": lambda: rfc8785.dumps(unsigned),
        "sha3_256": lambda: sha3_256(canonical),
        "ed25519_verify": lambda: ed25519_verify(public_key, digest, signature),
        "verify_message": lambda: verify_message(raw, now=NOW + 1, resolve_keys=resolve_keys),
        "ed25519_sign_verify": sign_verify,
        "aes256gcm_encrypt_10k": lambda: aes256gcm_encrypt(aes_key, nonce, plaintext, aad),
    }


# --- reporting ---------------------------------------------------------------------


def machine_info() -> dict[str, object]:
    facts = machine_facts(("pynacl", "cryptography", "rfc8785", "fastjsonschema"))
    return {**facts, "implementation": platform.python_implementation()}


def step_record(step: Step, result: Result, repeats: int) -> dict[str, object]:
    meets = None if step.target_us is None else result.median_us <= step.target_us
    return {
        "label": step.label,
        "median_us": round(result.median_us, 3),
        "min_us": round(result.min_us, 3),
        "max_us": round(result.max_us, 3),
        "spread_us": round(result.spread_us, 3),
        "iterations": result.iterations,
        "repeats": repeats,
        "target_us": step.target_us,
        "meets_target": meets,
    }


def format_table(steps: dict[str, dict[str, Any]]) -> str:
    header = (
        f"{'step':<38} {'median':>9} {'min':>9} {'max':>9} {'p90-p10':>8} "
        f"{'N x R':>9} {'target':>7}"
    )
    lines = [header + "  (µs per call)", "-" * (len(header) + 14)]
    for record in steps.values():
        target = record["target_us"]
        status = target_status(record["meets_target"])
        lines.append(
            f"{record['label']:<38} {record['median_us']:>9.2f} {record['min_us']:>9.2f} "
            f"{record['max_us']:>9.2f} {record['spread_us']:>8.2f} "
            f"{record['iterations']:>6}x{record['repeats']:<2} "
            f"{'' if target is None else f'{target:g}':>7}  {status}".rstrip()
        )
    return "\n".join(lines)


def run(out: Path, *, repeats: int = REPEATS) -> dict[str, Any]:
    started = datetime.now(UTC)
    load_before = load_average()
    key = SigningKey.generate()
    signed, raw = build_signed_message(key)
    size = len(raw)
    print(
        f"message: knowledge_share insight, {size} bytes signed (JCS), "
        f"sender {signed['sender']['agent_id']}"
    )
    if not MESSAGE_MIN_BYTES <= size <= MESSAGE_MAX_BYTES:
        print(f"warning: message is outside {MESSAGE_MIN_BYTES}-{MESSAGE_MAX_BYTES} bytes")
    thunks = build_steps(key, signed, raw)
    overhead = measure(_noop, repeats=repeats)
    print(f"loop + call overhead: {overhead.median_us * 1000:.0f} ns per call (not subtracted)")

    records: dict[str, dict[str, Any]] = {}
    for step in STEPS:
        result = measure(thunks[step.key], repeats=repeats)
        records[step.key] = step_record(step, result, repeats)

    jcs = records["jcs"]["median_us"]
    reference = records["jcs_reference"]["median_us"]
    report: dict[str, Any] = {
        "suite": "core",
        "timestamp": started.isoformat(timespec="seconds").replace("+00:00", "Z"),
        "machine": machine_info(),
        "load_average": {"before": load_before, "after": load_average()},
        "method": {
            "timer": "time.perf_counter_ns",
            "gc": "disabled while timing",
            "repeats": repeats,
            "repeat_target_ms": REPEAT_NS / 1e6,
            "per_call": "repeat time / iterations",
            "spread": "p90 - p10 of the per-call times of the repeats",
            "call_overhead_us": round(overhead.median_us, 4),
        },
        "message_bytes": size,
        "message_type": "knowledge_share",
        "jcs_speedup_vs_reference": round(reference / jcs, 2) if jcs > 0 else None,
        "steps": records,
    }
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")

    print()
    print(format_table(records))
    print()
    print(f"JCS: canonicalize is {report['jcs_speedup_vs_reference']}x rfc8785.dumps")
    print(f"load average before/after: {load_before} / {report['load_average']['after']}")
    noisy = [k for k, r in records.items() if r["spread_us"] > NOISY_SPREAD * r["median_us"]]
    if noisy:
        print(
            f"note: p90-p10 above {NOISY_SPREAD:.0%} of the median for {', '.join(noisy)}: "
            "something else was likely using the CPU; run again before trusting the medians"
        )
    print(f"results written to {out}")
    return report


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bench.core", description="Microbenchmarks of the protocol core's hot path."
    )
    parser.add_argument(
        "--out", type=Path, default=Path("bench/results/core.json"), help="JSON results file"
    )
    parser.add_argument(
        "--repeats", type=int, default=REPEATS, help=f"timed repeats per step (default {REPEATS})"
    )
    args = parser.parse_args(argv)
    if args.repeats < 2:
        parser.error("--repeats must be at least 2")
    run(args.out, repeats=args.repeats)
    return 0


if __name__ == "__main__":
    sys.exit(main())
