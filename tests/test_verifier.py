"""Signature checks in the helper process, and on the loop when there is none."""

from __future__ import annotations

import os
import signal
import threading
from collections.abc import Callable

import pytest
import trio

from conftest import Agent
from node_helpers import authorization, message
from ocpd.proto.auth import authorization_digest, parse_authorization
from ocpd.proto.crypto import SigningKey
from ocpd.proto.envelope import signed_digest
from ocpd.proto.errors import AuthError, MalformedError, OcpError, PayloadTooLarge
from ocpd.proto.strictjson import loads_strict
from ocpd.verifier import (
    Answer,
    MessageCheck,
    MessageVerdict,
    SignatureCheck,
    Verifier,
    check_here,
    decode_checks,
    decode_message_check,
    decode_verdict,
    encode_checks,
    encode_message_check,
    encode_verdict,
    examine,
    helper_wanted,
    serve,
)

KEYS = [SigningKey(bytes([n]) * 32) for n in range(1, 4)]


def good(n: int) -> SignatureCheck:
    key = KEYS[n % len(KEYS)]
    message = f"message {n}".encode()
    keys = [KEYS[(n + 1) % 3].public_key, key.public_key]
    return SignatureCheck(keys, message, key.sign(message))


def bad(n: int) -> SignatureCheck:
    check = good(n)
    return check._replace(message=check.message + b"!")


def mixed(count: int) -> list[SignatureCheck]:
    return [good(n) if n % 3 else bad(n) for n in range(count)]


def test_frames_carry_every_check_whole() -> None:
    checks = [*mixed(5), SignatureCheck([], b"", bytes(64))]
    frame = encode_checks(checks)
    assert int.from_bytes(frame[:4], "big") == len(frame) - 4
    assert frame[4] == 0  # the kind: signature checks
    assert decode_checks(frame[5:]) == [c._replace(keys=list(c.keys)) for c in checks]


def test_malformed_keys_and_signatures_are_sent_as_failing_checks() -> None:
    check = good(1)
    odd = SignatureCheck([b"short", *check.keys], check.message, check.signature[:10])
    (decoded,) = decode_checks(encode_checks([odd])[5:])
    assert decoded.keys == list(check.keys)
    assert not check_here(decoded)
    assert not check_here(odd)


def test_auto_means_a_helper_only_with_two_cpus() -> None:
    assert helper_wanted("helper")
    assert not helper_wanted("loop")
    assert helper_wanted("auto") == (len(os.sched_getaffinity(0)) >= 2)


async def test_without_a_helper_checks_run_on_the_loop() -> None:
    verifier = Verifier(helper=False)
    checks = mixed(6)
    assert await verifier.verify(checks) == [bool(n % 3) for n in range(6)]
    assert verifier.frames_sent == 0


async def until(condition: Callable[[], bool]) -> None:
    """Poll ``condition`` (the helper starts in its own time), for at most 30 s."""
    for _ in range(3000):
        if condition():
            return
        await trio.sleep(0.01)
    raise AssertionError("still not so after 30 s")


async def running(verifier: Verifier) -> None:
    await until(lambda: verifier.running)


async def test_the_helper_answers_batches_in_order() -> None:
    verifier = Verifier(helper=True)
    async with trio.open_nursery() as nursery:
        await nursery.start(verifier.run)
        await running(verifier)
        results: dict[int, list[bool]] = {}

        async def ask(n: int) -> None:
            results[n] = await verifier.verify([good(n), bad(n), good(n + 1)])

        async with trio.open_nursery() as askers:
            for n in range(40):
                askers.start_soon(ask, n)
        nursery.cancel_scope.cancel()
    assert results == {n: [True, False, True] for n in range(40)}
    # A frame per caller; forty callers in one scheduling round: few writes.
    assert verifier.frames_sent == 40
    assert 1 <= verifier.writes < 10
    assert verifier.helper_starts == 1


async def test_a_crashed_helper_loses_no_answer_and_is_started_again() -> None:
    verifier = Verifier(helper=True)
    async with trio.open_nursery() as nursery:
        await nursery.start(verifier.run)
        await running(verifier)
        assert verifier.helper_pid is not None
        first_pid = verifier.helper_pid
        results: list[list[bool]] = []

        async def ask() -> None:
            results.append(await verifier.verify(mixed(9)))

        async with trio.open_nursery() as askers:
            for _ in range(20):
                askers.start_soon(ask)
            os.kill(first_pid, signal.SIGKILL)
        # Answered by the helper, or on the loop once it was gone: the same answers.
        assert results == [[bool(n % 3) for n in range(9)]] * 20
        await until(lambda: verifier.helper_pid not in (None, first_pid))
        assert verifier.helper_starts == 2
        assert await verifier.verify([good(1), bad(2)]) == [True, False]
        nursery.cancel_scope.cancel()


async def test_checks_asked_while_a_dead_helper_is_cleared_away_are_answered() -> None:
    verifier = Verifier(helper=True)
    async with trio.open_nursery() as nursery:
        await nursery.start(verifier.run)
        await running(verifier)
        first_pid = verifier.helper_pid
        assert first_pid is not None
        answers: list[Answer[list[bool]]] = []

        async def hammer() -> None:
            # A caller in every scheduling round, through the whole time the
            # dead helper's pipes and tasks are being cleared away.
            while verifier.helper_pid in (None, first_pid):
                answers.append(verifier.submit([good(len(answers)), bad(1)]))
                await trio.lowlevel.checkpoint()

        async with trio.open_nursery() as callers:
            callers.start_soon(hammer)
            await trio.sleep(0.05)
            os.kill(first_pid, signal.SIGKILL)
        assert len(answers) > 10
        assert [await a.wait() for a in answers] == [[True, False]] * len(answers)
        nursery.cancel_scope.cancel()


async def test_stopping_the_service_stops_the_helper() -> None:
    verifier = Verifier(helper=True)
    async with trio.open_nursery() as nursery:
        await nursery.start(verifier.run)
        await running(verifier)
        pid = verifier.helper_pid
        nursery.cancel_scope.cancel()
    assert pid is not None
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)
    # Afterwards checks still work, on the loop.
    assert await verifier.verify([good(1), bad(1)]) == [True, False]


# --- whole messages -------------------------------------------------------------------

NOW = 1_800_000_000.0
ALICE, BOB = Agent(1), Agent(2)


def message_check(
    raw: bytes, *, keys: list[bytes] | None = None, **changes: object
) -> MessageCheck:
    check = MessageCheck(
        raw=raw,
        now=NOW,
        clock_skew=60.0,
        max_size=16_777_216,
        max_payload=10_485_760,
        keys=[ALICE.public_key] if keys is None else keys,
    )
    return check._replace(**changes)  # type: ignore[arg-type]


def signed(**changes: object) -> bytes:
    return message(ALICE, BOB.id, clock_now=NOW, **changes)  # type: ignore[arg-type]


def header_check(raw: bytes, agent: Agent = ALICE) -> SignatureCheck:
    auth = parse_authorization(authorization(agent, raw, now=NOW))
    _, digest = authorization_digest(
        auth, method="POST", path_and_query="/ocp/v1/messages", body=raw, now=NOW
    )
    return SignatureCheck([agent.public_key], digest, auth.signature)


def test_a_good_message_is_examined_whole() -> None:
    raw = signed(ttl=600)
    verdict = examine(message_check(raw, header=header_check(raw)))
    digest, _ = signed_digest(loads_strict(raw, max_size=1 << 24))  # type: ignore[arg-type]
    assert verdict == MessageVerdict(
        sent_at=NOW, expires_at=NOW + 600, digest=digest, signature_ok=True, header_ok=True
    )


def test_signatures_by_other_keys_fail() -> None:
    raw = signed()
    verdict = examine(message_check(raw, keys=[BOB.public_key], header=header_check(raw, BOB)))
    assert verdict.refused is None
    assert not verdict.signature_ok
    # Bob's header over Alice's message verifies under Bob's key: the caller decides who may sign.
    assert verdict.header_ok


@pytest.mark.parametrize(
    ("raw", "kind", "code"),
    [
        (b"{not json", MalformedError, "OCP-400"),
        (b'{"message_id": 1, "message_id": 2}', MalformedError, "OCP-400"),
        (b'{"ocp_version": "1.0"}', MalformedError, "OCP-400"),
        (b"x" * 100, PayloadTooLarge, "OCP-413"),
    ],
)
def test_messages_refused_before_their_signature(
    raw: bytes, kind: type[OcpError], code: str
) -> None:
    verdict = examine(message_check(raw, max_size=64 if code == "OCP-413" else 1 << 24))
    assert isinstance(verdict.refused, kind)
    assert verdict.refused.code == code
    assert verdict.header_ok is None


def test_an_expired_message_is_refused() -> None:
    verdict = examine(message_check(signed(ttl=60), now=NOW + 3600))
    assert isinstance(verdict.refused, MalformedError)


def test_an_oversized_payload_is_refused() -> None:
    raw = signed(message_type="broadcast", payload={"blob": "x" * 400})
    verdict = examine(message_check(raw, max_payload=100))
    assert isinstance(verdict.refused, PayloadTooLarge)
    assert verdict.refused.details["field"] == "payload"


def test_verdicts_and_checks_cross_the_pipe_unchanged() -> None:
    raw = signed()
    check = message_check(raw, header=header_check(raw))
    frame = encode_message_check(check)
    assert int.from_bytes(frame[:4], "big") == len(frame) - 4
    assert frame[4] == 1  # the kind: a whole message
    assert decode_message_check(frame[5:]) == check._replace(
        keys=list(check.keys),
        header=check.header._replace(keys=list(check.header.keys)),  # type: ignore[union-attr]
    )
    for verdict in (
        examine(check),
        examine(message_check(b"[]")),
        MessageVerdict(unreadable=AuthError("odd", details={"field": "x"}), header_ok=False),
    ):
        back = decode_verdict(encode_verdict(verdict))
        assert back is not None
        assert type(back.refused) is type(verdict.refused)
        assert type(back.unreadable) is type(verdict.unreadable)
        for got, sent in ((back.refused, verdict.refused), (back.unreadable, verdict.unreadable)):
            if sent is not None:
                assert got is not None
                assert (got.code, got.message, got.details) == (
                    sent.code,
                    sent.message,
                    sent.details,
                )
        assert (back.digest, back.signature_ok, back.header_ok) == (
            verdict.digest,
            verdict.signature_ok,
            verdict.header_ok,
        )


def test_the_helper_loop_answers_frames_however_they_are_cut() -> None:
    """Frames split across reads and many frames in one read: every answer, in order."""
    checks = [[c] for c in mixed(40)]
    stream = b"".join(encode_checks(c) for c in checks)
    to_helper, helper_in = os.pipe()
    helper_out, from_helper = os.pipe()
    pieces = [stream[:3], stream[3:700], stream[700:701], stream[701:]]
    done = []

    def feed() -> None:
        for piece in pieces:
            os.write(helper_in, piece)
        os.close(helper_in)

    writer = threading.Thread(target=feed)
    writer.start()
    serve(to_helper, from_helper)
    writer.join()
    os.close(from_helper)
    with os.fdopen(helper_out, "rb") as answers:
        data = answers.read()
    os.close(to_helper)
    while data:
        size = int.from_bytes(data[:4], "big")
        done.append(data[4 : 4 + size])
        data = data[4 + size :]
    assert done == [bytes([check_here(c[0])]) for c in checks]
    assert b"\x00" in done and b"\x01" in done


@pytest.mark.parametrize("answer", [b"", b"\x00", b"\x01\x00not json", b"\x00\x00short"])
def test_an_answer_that_is_not_a_verdict_is_worked_out_here(answer: bytes) -> None:
    assert decode_verdict(answer) is None
    verifier = Verifier(helper=False)
    raw = signed()
    expected = examine(message_check(raw))
    pending: Answer[MessageVerdict] = verifier.submit_message(message_check(raw))
    assert pending.done.is_set()  # no helper: answered at once
    assert pending.result == expected
    confused = Answer(pending.request)
    confused.take(answer)
    assert confused.result == expected


async def test_the_helper_examines_messages_between_signature_checks() -> None:
    verifier = Verifier(helper=True)
    raws = [signed(), signed(ttl=5), b"{}", signed(message_type="nonsense")]
    checks = [message_check(raw, header=header_check(raw)) for raw in raws]
    async with trio.open_nursery() as nursery:
        await nursery.start(verifier.run)
        await running(verifier)
        answers = []
        for check in checks:
            answers.append(verifier.submit_message(check))
            answers.append(verifier.submit([good(1), bad(1)]))
        results = [await a.wait() for a in answers]
        nursery.cancel_scope.cancel()
    assert verifier.writes == 1
    for i, check in enumerate(checks):
        got, here = results[2 * i], examine(check)
        assert isinstance(got, MessageVerdict)
        assert (got.digest, got.signature_ok, got.header_ok, got.sent_at) == (
            here.digest,
            here.signature_ok,
            here.header_ok,
            here.sent_at,
        )
        assert type(got.refused) is type(here.refused)
        assert results[2 * i + 1] == [True, False]
    assert results[0].signature_ok  # type: ignore[union-attr]
    assert results[4].refused is not None  # type: ignore[union-attr]
