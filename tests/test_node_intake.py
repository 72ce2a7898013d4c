"""The intake pipeline: each check, its order, dedup and rate limits (in-process)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import trio
from trio.testing import MockClock

from conftest import NETWORK, Agent
from node_helpers import (
    SERVICE_AGENT,
    Node,
    authorization,
    message,
    running_node,
)
from ocpd.config import RateLimitingSection
from ocpd.node.intake import Attempt, HttpCredentials, Outcome
from ocpd.proto.crypto import SigningKey
from ocpd.proto.envelope import verify_message_signature
from ocpd.proto.errors import (
    AuthError,
    ForbiddenError,
    MalformedError,
    NotFoundError,
    OcpError,
    PayloadTooLarge,
    RateLimited,
)
from ocpd.proto.ids import broadcast_did
from ocpd.proto.schema import validate_envelope

BROADCAST = broadcast_did(NETWORK)


@pytest.fixture(autouse=True, params=["loop", "wire"])
def verifier(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """Every test twice: signatures checked on the loop, and examined as by the helper process."""
    monkeypatch.setenv("OCPD_TEST_VERIFIER", request.param)
    return str(request.param)


@pytest.fixture
def clock() -> MockClock:
    """Autojump once the test has been idle for a moment of real time.

    A threshold above zero keeps the clock still while SQLite works in a
    thread (with 0 it would jump to the next deadline during every write).
    """
    return MockClock(autojump_threshold=0.2)


async def _accept(node: Node, raw: bytes, **kw: object) -> Outcome | OcpError:
    attempt = Attempt("ws", trio.current_time())
    try:
        checked = await node.intake.check(raw, attempt, **kw)  # type: ignore[arg-type]
    except OcpError as exc:
        return exc
    return (await node.intake.commit([checked]))[0]


async def _check_fails(node: Node, raw: bytes, error: type[OcpError], **kw: object) -> OcpError:
    with pytest.raises(error) as info:
        await node.intake.check(raw, Attempt("http", 0.0), **kw)  # type: ignore[arg-type]
    return info.value


async def test_accepted_message_is_queued_as_received(
    tmp_path: Path, clock: MockClock, alice: Agent, bob: Agent
) -> None:
    with trio.fail_after(30):
        async with running_node(tmp_path) as node:
            node.directory.add(alice)
            node.directory.add(bob)
            raw = message(alice, bob.id, clock_now=node.clock.now())
            result = await _accept(node, raw)
            assert isinstance(result, Outcome) and not result.duplicate
            pending = await node.store.pending(bob.id, after=0)
            assert [p.raw for p in pending] == [raw]


async def test_duplicate_is_acknowledged_and_queued_once(
    tmp_path: Path, clock: MockClock, alice: Agent, bob: Agent
) -> None:
    with trio.fail_after(30):
        async with running_node(tmp_path) as node:
            node.directory.add(alice)
            node.directory.add(bob)
            raw = message(alice, bob.id, clock_now=node.clock.now())
            first, second = await _accept(node, raw), await _accept(node, raw)
            assert isinstance(second, Outcome) and second.duplicate
            assert isinstance(first, Outcome) and first.message_id == second.message_id
            assert len(await node.store.pending(bob.id, after=0)) == 1
            other = message(
                alice,
                bob.id,
                clock_now=node.clock.now(),
                payload={"trust_level": 1},
                message_id=json.loads(raw)["message_id"],
            )
            conflict = await _accept(node, other)
            assert isinstance(conflict, MalformedError)
            assert conflict.details["reason"] == "reused"


async def test_forged_or_malformed_input_spends_no_token_and_no_id(
    tmp_path: Path, clock: MockClock, alice: Agent, bob: Agent
) -> None:
    limits = RateLimitingSection(messages_per_minute=2)
    with trio.fail_after(30):
        async with running_node(tmp_path, limits=limits) as node:
            node.directory.add(alice)
            node.directory.add(bob)
            now = node.clock.now()
            genuine = message(alice, bob.id, clock_now=now)
            message_id = json.loads(genuine)["message_id"]
            mallory = SigningKey(bytes([66]) * 32)
            forged = message(alice, bob.id, clock_now=now, message_id=message_id, key=mallory)
            flipped = bytearray(genuine)
            flipped[genuine.index(b'"payload":{') + 11 : genuine.index(b'"payload":{') + 11] = (
                b'"x":1'
            )
            for _ in range(5):
                assert isinstance(await _accept(node, forged), AuthError)
                assert isinstance(await _accept(node, bytes(flipped)), MalformedError)
                assert isinstance(await _accept(node, b'{"a":1,"a":2}'), MalformedError)
            # the id was not taken by the forgery, and both tokens are still there
            assert isinstance(await _accept(node, genuine), Outcome)
            assert isinstance(await _accept(node, message(alice, bob.id, clock_now=now)), Outcome)
            limited = await _accept(node, message(alice, bob.id, clock_now=now))
            assert isinstance(limited, RateLimited)


async def test_the_1001st_message_in_a_minute_is_429(
    tmp_path: Path, clock: MockClock, alice: Agent, bob: Agent
) -> None:
    with trio.fail_after(120):
        async with running_node(tmp_path) as node:
            node.directory.add(alice)
            node.directory.add(bob)
            now = node.clock.now()
            for _ in range(1000):
                await node.intake.check(
                    message(alice, bob.id, clock_now=now), Attempt("ws", trio.current_time())
                )
            assert trio.current_time() == 0
            error = await _check_fails(node, message(alice, bob.id, clock_now=now), RateLimited)
            assert isinstance(error, RateLimited)
            assert error.retry_after == 1 and error.details["operation"] == "messages"
            hits = node.metrics.rate_limit_hits.labels("messages")._value.get()
            assert hits == 1
            # one token back after 60/1000 s
            await trio.sleep(0.06)
            await node.intake.check(
                message(alice, bob.id, clock_now=now), Attempt("ws", trio.current_time())
            )
            # another agent has its own bucket
            node.directory.add(bob)
            await node.intake.check(
                message(bob, alice.id, clock_now=now), Attempt("ws", trio.current_time())
            )


async def test_broadcasts_have_their_own_limit(
    tmp_path: Path, clock: MockClock, alice: Agent, bob: Agent
) -> None:
    with trio.fail_after(30):
        async with running_node(tmp_path) as node:
            node.directory.add(alice)
            now = node.clock.now()

            def ping() -> bytes:
                return message(alice, BROADCAST, clock_now=now, broadcast=True)

            for _ in range(5):
                await node.intake.check(ping(), Attempt("ws", 0.0))
            error = await _check_fails(node, ping(), RateLimited)
            assert error.details["operation"] == "broadcasts" and error.details["retry_after"] == 12
            # the refused broadcast gave its "messages" token back: 994 direct ones remain
            node.directory.add(bob)
            for _ in range(995):
                await node.intake.check(message(alice, bob.id, clock_now=now), Attempt("ws", 0.0))
            await _check_fails(node, message(alice, bob.id, clock_now=now), RateLimited)


async def test_who_may_send_and_receive(
    tmp_path: Path, clock: MockClock, alice: Agent, bob: Agent, carol: Agent
) -> None:
    with trio.fail_after(30):
        async with running_node(tmp_path) as node:
            now = node.clock.now()
            error = await _check_fails(node, message(alice, bob.id, clock_now=now), AuthError)
            assert "not a registered agent" in error.message
            node.directory.add(alice, level=0)
            node.directory.add(bob)
            error = await _check_fails(node, message(alice, bob.id, clock_now=now), ForbiddenError)
            assert error.details == {"trust_level": 0}
            node.directory.add(alice)
            await _check_fails(node, message(alice, carol.id, clock_now=now), NotFoundError)
            node.directory.add(carol, level=0)
            await _check_fails(node, message(alice, carol.id, clock_now=now), ForbiddenError)
            # a session speaks for its own agent only
            await _check_fails(
                node, message(alice, bob.id, clock_now=now), AuthError, session_agent=bob.id
            )


async def test_freshness(tmp_path: Path, clock: MockClock, alice: Agent, bob: Agent) -> None:
    with trio.fail_after(30):
        async with running_node(tmp_path) as node:
            node.directory.add(alice)
            node.directory.add(bob)
            now = node.clock.now()
            expired = await _check_fails(
                node, message(alice, bob.id, clock_now=now - 61, ttl=60), MalformedError
            )
            assert expired.details["reason"] == "expired"
            future = await _check_fails(
                node, message(alice, bob.id, clock_now=now + 61), MalformedError
            )
            assert future.details["reason"] == "future"
            await node.intake.check(message(alice, bob.id, clock_now=now + 59), Attempt("ws", 0))
            await node.intake.check(
                message(alice, bob.id, clock_now=now - 60, ttl=60), Attempt("ws", 0)
            )


async def test_a_refused_message_is_refused_before_its_sender_is(
    tmp_path: Path, clock: MockClock, alice: Agent, bob: Agent, carol: Agent
) -> None:
    """OCP-400 for the message itself comes before OCP-401 for who sent it, however the
    message is checked; the error still names the message."""
    with trio.fail_after(30):
        async with running_node(tmp_path) as node:
            node.directory.add(bob)
            now = node.clock.now()
            expired = message(alice, bob.id, clock_now=now - 61, ttl=60)
            # alice is not registered, and the message is on bob's session
            for kw in ({}, {"session_agent": bob.id}):
                attempt = Attempt("ws", 0.0)
                with pytest.raises(MalformedError) as refused:
                    await node.intake.check(expired, attempt, **kw)  # type: ignore[arg-type]
                assert refused.value.details["reason"] == "expired"
                assert attempt.sender == alice.id
                assert attempt.message_id is not None
            headers = {"authorization": authorization(carol, expired, now=now)}
            with pytest.raises(MalformedError):
                await node.intake.check(
                    expired,
                    Attempt("http", 0.0),
                    http=HttpCredentials(headers["authorization"]),
                )


HOSTILE = {
    "duplicate-key": b'{"a":1,"a":1}',
    "nan": b'{"a":NaN}',
    "big-int": b'{"a":9007199254740992}',
    "lone-surrogate": b'{"a":"\\ud800"}',
    "depth-bomb": b"[" * 100_000 + b"]" * 100_000,
    "object-depth": b'{"a":' * 65 + b"1" + b"}" * 65,
    "not-json": b"hello",
    "bom": b'\xef\xbb\xbf{"a":1}',
    "bad-utf8": b'{"a":"\xff"}',
    "array": b"[]",
    "empty": b"",
}


@pytest.mark.parametrize("name", sorted(HOSTILE))
async def test_hostile_json_is_400(tmp_path: Path, clock: MockClock, name: str) -> None:
    with trio.fail_after(30):
        async with running_node(tmp_path) as node:
            await _check_fails(node, HOSTILE[name], MalformedError)
            assert node.directory.lookups == 0


async def test_size_limits(tmp_path: Path, clock: MockClock, alice: Agent, bob: Agent) -> None:
    with trio.fail_after(30):
        async with running_node(tmp_path, max_message_bytes=4096, max_payload_bytes=1024) as node:
            node.directory.add(alice)
            node.directory.add(bob)
            now = node.clock.now()
            small = message(
                alice, bob.id, clock_now=now, message_type="broadcast", payload={"x": "a" * 900}
            )
            await node.intake.check(small, Attempt("ws", 0))
            big_payload = message(
                alice, bob.id, clock_now=now, message_type="broadcast", payload={"x": "a" * 1100}
            )
            error = await _check_fails(node, big_payload, PayloadTooLarge)
            assert error.details["field"] == "payload"
            huge = message(
                alice, bob.id, clock_now=now, message_type="broadcast", payload={"x": "a" * 5000}
            )
            await _check_fails(node, huge, PayloadTooLarge)
            # only the accepted message looked up its sender and receiver
            assert node.directory.lookups == 2


async def test_http_authorization(
    tmp_path: Path, clock: MockClock, alice: Agent, bob: Agent
) -> None:
    with trio.fail_after(30):
        async with running_node(tmp_path) as node:
            node.directory.add(alice)
            node.directory.add(bob)
            now = node.clock.now()
            raw = message(alice, bob.id, clock_now=now)
            await _check_fails(node, raw, AuthError, http=HttpCredentials(None))
            as_bob = HttpCredentials(authorization(bob, raw, now=now))
            error = await _check_fails(node, raw, AuthError, http=as_bob)
            assert "differs" in error.message
            wrong_body = HttpCredentials(authorization(alice, raw + b" ", now=now))
            await _check_fails(node, raw, AuthError, http=wrong_body)
            good = HttpCredentials(authorization(alice, raw, now=now))
            await node.intake.check(raw, Attempt("http", 0), http=good)
            error = await _check_fails(node, raw, AuthError, http=good)
            assert "already used" in error.message


async def test_broadcast_reaches_matching_local_agents(
    tmp_path: Path, clock: MockClock, alice: Agent, bob: Agent, carol: Agent
) -> None:
    dave, erin = Agent(4), Agent(5)
    with trio.fail_after(30):
        async with running_node(tmp_path) as node:
            node.directory.add(alice, domains=["healthcare"])
            node.directory.add(bob, domains=["healthcare.oncology"])
            node.directory.add(carol, domains=["finance"], level=0)
            node.directory.add(dave, domains=["healthcare.radiology"], active=False)
            node.directory.add(erin, domains=["finance"])
            node.router.local.update({alice.id, bob.id, carol.id, dave.id})
            now = node.clock.now()

            async def recipients(tags: list[str] | None) -> set[str]:
                metadata = {"tags": tags} if tags is not None else None
                raw = message(alice, BROADCAST, clock_now=now, broadcast=True, metadata=metadata)
                checked = await node.intake.check(raw, Attempt("ws", 0))
                return {r.agent_id for r in checked.receivers}

            assert await recipients(["healthcare"]) == {bob.id}
            assert await recipients(["oncology"]) == {bob.id}
            assert await recipients(["finance", "healthcare.oncology"]) == {bob.id, carol.id}
            assert await recipients(["no-such-domain"]) == set()
            assert await recipients(None) == {bob.id, carol.id}
            inconsistent = message(alice, BROADCAST, clock_now=now, broadcast=False)
            await _check_fails(node, inconsistent, MalformedError)
            flagged = message(alice, bob.id, clock_now=now, broadcast=True)
            await _check_fails(node, flagged, MalformedError)
            other_net = message(alice, broadcast_did("othernet"), clock_now=now, broadcast=True)
            await _check_fails(node, other_net, MalformedError)


async def test_error_messages_are_signed_by_the_service_agent(
    tmp_path: Path, clock: MockClock, alice: Agent
) -> None:
    with trio.fail_after(30):
        async with running_node(tmp_path) as node:
            attempt = Attempt("http", 0, message_id="msg-00000000-0000-0000-0000", sender=alice.id)
            error = node.intake.error_message(RateLimited("slow down", retry_after=3), attempt)
            validate_envelope(error)
            assert error["sender"]["agent_id"] == SERVICE_AGENT
            assert error["receiver"]["agent_id"] == alice.id
            assert error["payload"]["error_code"] == "OCP-429"
            assert error["payload"]["reference_message_id"] == attempt.message_id
            assert error["payload"]["details"] == {"retry_after": 3}
            from node_helpers import NODE_KEY

            verify_message_signature(error, [NODE_KEY.public_key])
            anonymous = node.intake.error_message(MalformedError("x"), Attempt("http", 0))
            assert anonymous["receiver"]["agent_id"] == BROADCAST
