"""Signature checks in the helper process, and on the loop when there is none."""

from __future__ import annotations

import os
import signal
from collections.abc import Callable

import pytest
import trio

from ocpd.proto.crypto import SigningKey
from ocpd.verifier import (
    SignatureCheck,
    Verifier,
    check_here,
    decode_checks,
    encode_checks,
    helper_wanted,
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
    assert decode_checks(frame[4:]) == [c._replace(keys=list(c.keys)) for c in checks]


def test_malformed_keys_and_signatures_are_sent_as_failing_checks() -> None:
    check = good(1)
    odd = SignatureCheck([b"short", *check.keys], check.message, check.signature[:10])
    (decoded,) = decode_checks(encode_checks([odd])[4:])
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
