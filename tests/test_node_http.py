"""``POST /ocp/v1/messages`` over its raw ASGI route: statuses, bodies, streaming limits."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import trio
from quart import Response
from quart_trio import QuartTrio
from trio.testing import MockClock

from conftest import Agent
from node_helpers import (
    NODE_KEY,
    SERVICE_AGENT,
    authorization,
    message,
    message_headers,
    post,
    running_node,
)
from ocpd.config import RateLimitingSection
from ocpd.proto.envelope import verify_message_signature
from ocpd.proto.schema import validate_envelope


@pytest.fixture(autouse=True, params=["loop", "wire"])
def verifier(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """Every test twice: signatures checked on the loop, and examined as by the helper process."""
    monkeypatch.setenv("OCPD_TEST_VERIFIER", request.param)
    return str(request.param)


@pytest.fixture
def clock() -> MockClock:
    return MockClock(autojump_threshold=0.2)


def _error(answer: Any) -> dict[str, Any]:
    error = answer.json()
    validate_envelope(error)
    assert error["sender"]["agent_id"] == SERVICE_AGENT
    verify_message_signature(error, [NODE_KEY.public_key])
    return error["payload"]  # type: ignore[no-any-return]


async def test_accepted_then_duplicate(
    tmp_path: Path, clock: MockClock, alice: Agent, bob: Agent
) -> None:
    with trio.fail_after(30):
        async with running_node(tmp_path) as node:
            node.directory.add(alice)
            node.directory.add(bob)
            now = node.clock.now()
            body = message(alice, bob.id, clock_now=now)
            message_id = json.loads(body)["message_id"]
            answer = await post(node.http, body, headers=message_headers(alice, body, now))
            assert answer.status == 202
            assert answer.json() == {"status": "accepted", "message_id": message_id}
            assert answer.headers[b"content-type"] == b"application/json"
            # the same message again (a retry: fresh Authorization) is acknowledged again
            await trio.sleep(0.01)
            now = node.clock.now()
            again = await post(node.http, body, headers=message_headers(alice, body, now))
            assert again.status == 202
            assert again.json() == {
                "status": "accepted",
                "message_id": message_id,
                "duplicate": True,
            }
            assert len(await node.store.pending(bob.id, after=0)) == 1
            requests = node.metrics.requests.labels("/ocp/v1/messages", "202")._value.get()
            assert requests == 2
            accepted = node.metrics.messages.labels("discovery_ping", "accepted")._value.get()
            duplicate = node.metrics.messages.labels("discovery_ping", "duplicate")._value.get()
            assert (accepted, duplicate) == (1, 1)


async def test_declared_length_over_the_limit_is_refused_before_reading(
    tmp_path: Path, clock: MockClock, alice: Agent
) -> None:
    with trio.fail_after(30):
        async with running_node(tmp_path, max_message_bytes=2048) as node:
            body = b"x" * 4096
            answer = await post(
                node.http, body, headers={"Authorization": authorization(alice, body, now=0)}
            )
            assert answer.status == 413 and answer.chunks_read == 0
            assert answer.headers[b"connection"] == b"close"
            error = _error(answer)
            assert error["error_code"] == "OCP-413"
            assert error["details"] == {"limit": 2048}
            # addressed to the agent the request claimed to be
            assert answer.json()["receiver"]["agent_id"] == alice.id


async def test_streamed_body_is_cut_off_at_the_limit(tmp_path: Path, clock: MockClock) -> None:
    with trio.fail_after(30):
        async with running_node(tmp_path, max_message_bytes=2048) as node:
            answer = await post(node.http, b"x" * 100_000, chunk=1000, content_length=False)
            assert answer.status == 413
            # three chunks are 3000 bytes: the third passed the limit, no more were read
            assert answer.chunks_read == 3
            assert _error(answer)["error_code"] == "OCP-413"


@pytest.mark.parametrize(
    ("headers", "status"),
    [
        ({"X-OCF-Version": "2.0"}, 400),
        ({"X-OCP-Version": "1.1"}, 400),
        ({"X-OCP-Version": "1.0"}, 202),
        ({}, 202),
        ({"Content-Type": "text/plain"}, 400),
        ({"Content-Type": "application/json; charset=utf-8"}, 202),
    ],
)
async def test_version_and_content_type(
    tmp_path: Path,
    clock: MockClock,
    alice: Agent,
    bob: Agent,
    headers: dict[str, str],
    status: int,
) -> None:
    with trio.fail_after(30):
        async with running_node(tmp_path) as node:
            node.directory.add(alice)
            node.directory.add(bob)
            now = node.clock.now()
            body = message(alice, bob.id, clock_now=now)
            sent = {"Authorization": authorization(alice, body, now=now), **headers}
            answer = await post(node.http, body, headers=sent)
            assert answer.status == status
            if status == 400:
                assert _error(answer)["error_code"] == "OCP-400"


async def test_rejections_carry_their_status(
    tmp_path: Path, clock: MockClock, alice: Agent, bob: Agent
) -> None:
    limits = RateLimitingSection(messages_per_minute=1)
    with trio.fail_after(30):
        async with running_node(tmp_path, limits=limits) as node:
            node.directory.add(alice)
            node.directory.add(bob)
            now = node.clock.now()
            first = message(alice, bob.id, clock_now=now)
            assert (
                await post(node.http, first, headers=message_headers(alice, first, now))
            ).status == 202
            second = message(alice, bob.id, clock_now=now)
            limited = await post(node.http, second, headers=message_headers(alice, second, now))
            assert limited.status == 429 and limited.headers[b"retry-after"] == b"60"
            payload = _error(limited)
            assert payload["error_code"] == "OCP-429"
            assert payload["reference_message_id"] == json.loads(second)["message_id"]
            spoofed = await post(node.http, second, headers=message_headers(bob, second, now))
            assert spoofed.status == 401 and _error(spoofed)["error_code"] == "OCP-401"
            garbage = await post(node.http, b'{"a":NaN}', headers={})
            assert garbage.status == 400
            _error(garbage)  # a valid envelope: broadcast DID, receiver.broadcast true
            assert garbage.json()["receiver"] == {
                "agent_id": "did:ocp:testnet:broadcast",
                "broadcast": True,
            }
            # refused before it was verified, a readable message is still named
            expired = message(alice, bob.id, clock_now=now - 7200)
            late = await post(node.http, expired, headers=message_headers(alice, expired, now))
            assert late.status == 400
            assert _error(late)["reference_message_id"] == json.loads(expired)["message_id"]
            assert late.json()["receiver"] == {"agent_id": alice.id, "broadcast": False}
            # no Authorization: the error still goes to the message's sender
            unsigned = await post(node.http, second, headers={"X-OCF-Version": "1.0"})
            assert unsigned.status == 401
            assert unsigned.json()["receiver"]["agent_id"] == alice.id
            hits = node.metrics.rate_limit_hits.labels("messages")._value.get()
            assert hits == 1


async def test_other_methods_and_paths(tmp_path: Path, clock: MockClock) -> None:
    with trio.fail_after(30):
        async with running_node(tmp_path) as node:
            answer = await post(node.http, b"", method="GET")
            assert answer.status == 405 and answer.headers[b"allow"] == b"POST"
            app = QuartTrio("test")

            @app.get("/other")
            async def other() -> Response:
                return Response("quart", status=200)

            node.http.install(app)
            sent: list[dict[str, Any]] = []

            requests = [{"type": "http.request", "body": b"", "more_body": False}]

            async def receive() -> dict[str, Any]:
                if requests:
                    return requests.pop()
                await trio.sleep_forever()
                raise AssertionError("unreachable")

            async def send(event: dict[str, Any]) -> None:
                sent.append(event)

            scope = {
                "type": "http",
                "http_version": "1.1",
                "asgi": {"spec_version": "2.3", "version": "3.0"},
                "method": "GET",
                "scheme": "http",
                "path": "/other",
                "raw_path": b"/other",
                "query_string": b"",
                "root_path": "",
                "headers": [(b"host", b"localhost")],
                "client": ("127.0.0.1", 1),
                "server": ("127.0.0.1", 2),
                "extensions": {},
            }
            await app(scope, receive, send)  # type: ignore[arg-type]
            assert sent[0]["status"] == 200
            assert b"".join(e.get("body", b"") for e in sent[1:]) == b"quart"
