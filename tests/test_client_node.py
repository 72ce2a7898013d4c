"""NodeClient against the fake node in memory, on trio's autojump clock.

No sockets: the WebSocket runs over in-memory byte streams, so session ttls,
backoff, keepalive and ack retries happen at exact virtual times.
"""

from __future__ import annotations

import json
import random
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import anyio
import pytest
import trio
import trio.testing

from fake_node import Directory, FakeNode, memory_connector
from ocpd.client import (
    AckTimeout,
    AgentKey,
    AuthenticationRejected,
    ConnectionFailed,
    MessageRejected,
    NodeClient,
    ReceivedMessage,
    UnknownAgent,
)
from ocpd.client.delivery import Timings
from ocpd.proto.crypto import SigningKey
from ocpd.proto.envelope import build_error_message, build_message, sign_message
from ocpd.proto.errors import UpstreamUnreachable
from ocpd.proto.ids import broadcast_did, format_node_id

NETWORK = "testnet"
PING = {"capabilities": ["cap:vision:imaging"], "domains": ["healthcare"], "trust_level": 1}
INSIGHT = {
    "knowledge_type": "insight",
    "insight_id": "ins-0b6d3f4e-8a51-4c1e-9d7a-2f3b4c5d6e7f",
    "topic": "tumour response",
    "confidence": 0.87,
    "anonymized": True,
    "payload": {"finding": "responders share marker X"},
}


class NoJitter(random.Random):
    """Backoff draws at the bottom of each range: 0.5, 1, 2, 4... seconds."""

    def random(self) -> float:
        return 0.0


@pytest.fixture
def directory() -> Directory:
    return Directory()


@pytest.fixture
def alice(directory: Directory) -> AgentKey:
    return directory.add(AgentKey(SigningKey(b"\x01" * 32), NETWORK))


@pytest.fixture
def bob(directory: Directory) -> AgentKey:
    return directory.add(AgentKey(SigningKey(b"\x02" * 32), NETWORK))


class World:
    def __init__(self, node: FakeNode, tasks: anyio.abc.TaskGroup) -> None:
        self.node = node
        self.tasks = tasks

    def client(self, agent: AgentKey, **kwargs: Any) -> NodeClient:
        return NodeClient(
            agent,
            resolve_did=self.node.directory.resolve_did,
            ws_url="wss://node.test:8421",
            connect_stream=memory_connector(self.node, self.tasks),
            rng=NoJitter(),
            **kwargs,
        )


@asynccontextmanager
async def world(directory: Directory, **node_options: Any) -> AsyncIterator[World]:
    node = FakeNode(directory, **node_options)
    async with anyio.create_task_group() as tasks:
        yield World(node, tasks)
        tasks.cancel_scope.cancel()


def sent(node: FakeNode, message_type: str) -> list[tuple[float, dict[str, Any]]]:
    return [(t, m) for t, _, m in node.frames if m["message_type"] == message_type]


async def test_authenticates_and_exchanges_signed_messages(
    directory: Directory, alice: AgentKey, bob: AgentKey, autojump_clock: trio.abc.Clock
) -> None:
    with trio.fail_after(5):
        async with world(directory) as w, w.client(alice) as a, w.client(bob) as b:
            assert a.connected
            assert a.session_id is not None
            assert a.session_id.startswith("sess-")
            delivery = await a.send(bob.agent_id, "discovery_ping", PING)
            assert delivery.transport == "ws"
            received = await b.receive()
            assert received.sender == alice.agent_id
            assert received.message_id == delivery.message_id
            assert received.payload == PING
            assert not received.encrypted
            assert [agent for _, agent in w.node.handshakes] == [alice.agent_id, bob.agent_id]


async def test_encrypts_to_the_receivers_key_agreement_key(
    directory: Directory, alice: AgentKey, bob: AgentKey, autojump_clock: trio.abc.Clock
) -> None:
    with trio.fail_after(5):
        async with world(directory) as w, w.client(alice) as a, w.client(bob) as b:
            await a.send(bob.agent_id, "knowledge_share", INSIGHT, encrypt=True)
            on_the_wire = sent(w.node, "knowledge_share")[0][1]
            assert isinstance(on_the_wire["payload"], str)
            assert on_the_wire["encryption"]["key_exchange"] == "ECDH-X25519"
            received = await b.receive()
            assert received.encrypted
            assert received.payload == INSIGHT
            assert received.message["payload"] == on_the_wire["payload"]


async def test_encrypting_to_an_unknown_agent_fails_before_sending(
    directory: Directory, alice: AgentKey, autojump_clock: trio.abc.Clock
) -> None:
    stranger = AgentKey(SigningKey(b"\x09" * 32), NETWORK)
    with trio.fail_after(5):
        async with world(directory) as w, w.client(alice) as a:
            with pytest.raises(UnknownAgent) as caught:
                await a.send(stranger.agent_id, "knowledge_share", INSIGHT, encrypt=True)
            assert caught.value.code == "OCP-404"
            assert w.node.frames == []


async def test_a_rejected_receipt_raises_with_the_code(
    directory: Directory, alice: AgentKey, bob: AgentKey, autojump_clock: trio.abc.Clock
) -> None:
    with trio.fail_after(5):
        async with world(directory) as w, w.client(alice) as a:
            w.node.reject_codes = ["OCP-403"]
            with pytest.raises(MessageRejected) as caught:
                await a.send(bob.agent_id, "discovery_ping", PING)
            assert caught.value.code == "OCP-403"
            # The session survives a refusal.
            await a.send(bob.agent_id, "discovery_ping", PING)


async def test_a_rejected_handshake_raises_when_entering(
    directory: Directory, alice: AgentKey, autojump_clock: trio.abc.Clock
) -> None:
    with trio.fail_after(5):
        async with world(directory) as w:
            w.node.reject_auth = "OCP-401"
            with pytest.raises(AuthenticationRejected) as caught:
                async with w.client(alice):
                    pass
            assert caught.value.code == "OCP-401"


async def test_an_unreachable_node_raises_when_entering(
    directory: Directory, alice: AgentKey, autojump_clock: trio.abc.Clock
) -> None:
    with trio.fail_after(5):
        async with world(directory) as w:
            w.node.down = True
            with pytest.raises(ConnectionFailed, match="refused"):
                async with w.client(alice):
                    pass


async def test_reauthenticates_before_the_session_ttl_runs_out(
    directory: Directory, alice: AgentKey, bob: AgentKey, autojump_clock: trio.abc.Clock
) -> None:
    with trio.fail_after(500):
        async with world(directory, ttl=100) as w, w.client(alice) as a, w.client(bob) as b:
            await w.node.wait_for(lambda: len(w.node.handshakes) == 6)
            times = [t for t, agent in w.node.handshakes if agent == alice.agent_id]
            assert times == [0, 90, 180]
            # Messages flow on the new session.
            await a.send(bob.agent_id, "discovery_ping", PING)
            assert (await b.receive()).sender == alice.agent_id
            assert a.sessions_opened == 3


async def test_reconnects_with_backoff_and_sends_wait_for_the_session(
    directory: Directory, alice: AgentKey, bob: AgentKey, autojump_clock: trio.abc.Clock
) -> None:
    with trio.fail_after(100):
        async with world(directory) as w, w.client(alice) as a, w.client(bob) as b:
            await trio.sleep(10)
            w.node.down = True
            await w.node.kick(alice.agent_id)

            async def node_returns() -> None:
                await trio.sleep(2)  # until t = 12
                w.node.down = False

            w.tasks.start_soon(node_returns)
            # Sent during the outage: it waits for the next session.
            delivery = await a.send(bob.agent_id, "discovery_ping", PING)
            # Attempts at 10.5 and 11.5 fail; 13.5 = 11.5 + 2 succeeds.
            assert [t for t, agent in w.node.handshakes if agent == alice.agent_id] == [0, 13.5]
            assert (await b.receive()).message_id == delivery.message_id


async def test_a_send_gives_up_when_no_session_comes_back(
    directory: Directory, alice: AgentKey, bob: AgentKey, autojump_clock: trio.abc.Clock
) -> None:
    timings = Timings(send_wait=20.0)
    with trio.fail_after(100):
        async with world(directory) as w, w.client(alice, timings=timings) as a:
            w.node.down = True
            await w.node.kick(alice.agent_id)
            await trio.sleep(0.1)
            with pytest.raises(ConnectionFailed, match="no session"):
                await a.send(bob.agent_id, "discovery_ping", PING)
            assert trio.current_time() == pytest.approx(20.1)


async def test_a_silent_connection_is_replaced(
    directory: Directory, alice: AgentKey, autojump_clock: trio.abc.Clock
) -> None:
    with trio.fail_after(100):
        async with world(directory) as w, w.client(alice):
            w.node.answer_pings = False
            await w.node.wait_for(lambda: len(w.node.handshakes) == 2)
            # Pinged at 30 with no answer, given up at 60, back 0.5 s later.
            assert [t for t, _ in w.node.handshakes] == [0, 60.5]


async def test_requires_ack_waits_for_the_receivers_ack(
    directory: Directory, alice: AgentKey, bob: AgentKey, autojump_clock: trio.abc.Clock
) -> None:
    with trio.fail_after(5):
        async with world(directory) as w, w.client(alice) as a, w.client(bob) as b:
            async with anyio.create_task_group() as tasks:
                tasks.start_soon(b.receive)
                delivery = await a.send(
                    bob.agent_id, "knowledge_share", INSIGHT, encrypt=True, requires_ack=True
                )
            assert delivery.attempts == 1
            assert delivery.ack is not None
            assert delivery.ack.sender == bob.agent_id
            assert delivery.ack.correlation_id == delivery.message_id
            assert delivery.ack.payload == {"status": "received"}
            # The ack went to Alice's SDK, not to her application.
            with trio.move_on_after(1):
                await a.receive()
                pytest.fail("the ack must not reach the application")


async def test_manual_ack(
    directory: Directory, alice: AgentKey, bob: AgentKey, autojump_clock: trio.abc.Clock
) -> None:
    with trio.fail_after(10):
        async with world(directory) as w, w.client(alice) as a, w.client(bob, auto_ack=False) as b:

            async def bob_processes() -> None:
                received = await b.receive()
                assert received.requires_ack
                await trio.sleep(3)
                await b.ack(received, status="processed")

            async with anyio.create_task_group() as tasks:
                tasks.start_soon(bob_processes)
                delivery = await a.send(bob.agent_id, "discovery_ping", PING, requires_ack=True)
            assert trio.current_time() == 3
            assert delivery.ack is not None
            assert delivery.ack.payload == {"status": "processed"}


async def test_resends_without_ack_on_the_appendix_d_schedule(
    directory: Directory, alice: AgentKey, bob: AgentKey, autojump_clock: trio.abc.Clock
) -> None:
    with trio.fail_after(500):
        async with world(directory) as w, w.client(alice) as a, w.client(bob, auto_ack=False) as b:
            with pytest.raises(AckTimeout) as caught:
                await a.send(bob.agent_id, "discovery_ping", PING, requires_ack=True)
            assert caught.value.code == "OCP-408"
            assert caught.value.attempts == 6
            assert trio.current_time() == 211  # 6 x 30 s + 1 + 2 + 4 + 8 + 16
            attempts = sent(w.node, "discovery_ping")
            assert [t for t, _ in attempts] == [0, 31, 63, 97, 135, 181]
            assert len({m["message_id"] for _, m in attempts}) == 1
            assert len({m["sender"]["signature"] for _, m in attempts}) == 1
            # The node deduplicated: Bob's application saw the message once.
            assert (await b.receive()).message_id == attempts[0][1]["message_id"]
            with trio.move_on_after(1):
                await b.receive()
                pytest.fail("delivered twice")


async def test_a_transient_refusal_is_retried(
    directory: Directory, alice: AgentKey, bob: AgentKey, autojump_clock: trio.abc.Clock
) -> None:
    with trio.fail_after(100):
        async with world(directory) as w, w.client(alice) as a, w.client(bob) as b:
            w.node.reject_codes = ["OCP-503"]
            async with anyio.create_task_group() as tasks:
                tasks.start_soon(b.receive)
                delivery = await a.send(bob.agent_id, "discovery_ping", PING, requires_ack=True)
            assert delivery.attempts == 2
            assert trio.current_time() == 31


async def test_a_permanent_refusal_is_not_retried(
    directory: Directory, alice: AgentKey, bob: AgentKey, autojump_clock: trio.abc.Clock
) -> None:
    with trio.fail_after(100):
        async with world(directory) as w, w.client(alice) as a:
            w.node.reject_codes = ["OCP-404"]
            with pytest.raises(MessageRejected) as caught:
                await a.send(bob.agent_id, "discovery_ping", PING, requires_ack=True)
            assert caught.value.code == "OCP-404"
            assert trio.current_time() == 0


async def test_an_error_from_the_receiver_ends_the_wait(
    directory: Directory, alice: AgentKey, bob: AgentKey, autojump_clock: trio.abc.Clock
) -> None:
    with trio.fail_after(10):
        async with world(directory) as w, w.client(alice) as a, w.client(bob, auto_ack=False) as b:

            async def bob_refuses() -> None:
                received = await b.receive()
                error = {
                    "error_code": "OCP-403",
                    "message": "no bond",
                    "reference_message_id": received.message_id,
                }
                await b.send(
                    alice.agent_id,
                    "error",
                    error,
                    metadata={"correlation_id": received.message_id},
                )

            async with anyio.create_task_group() as tasks:
                tasks.start_soon(bob_refuses)
                with pytest.raises(MessageRejected) as caught:
                    await a.send(bob.agent_id, "discovery_ping", PING, requires_ack=True)
            assert caught.value.code == "OCP-403"
            assert caught.value.message == "no bond"


def _signed(sender: AgentKey, receiver: str, **kwargs: Any) -> dict[str, Any]:
    message = build_message(
        sender=sender.agent_id,
        receiver=receiver,
        message_type="discovery_ping",
        payload=PING,
        now=sender.now(),
        **kwargs,
    )
    return sign_message(message, sender.key)


async def test_duplicates_are_dropped_and_acknowledged_again(
    directory: Directory, alice: AgentKey, bob: AgentKey, autojump_clock: trio.abc.Clock
) -> None:
    with trio.fail_after(10):
        async with world(directory) as w, w.client(bob) as b:
            text = json.dumps(_signed(alice, bob.agent_id, metadata={"requires_ack": True}))
            w.node.inject(bob.agent_id, text)
            w.node.inject(bob.agent_id, text)
            first = await b.receive()
            with trio.move_on_after(1):
                await b.receive()
                pytest.fail("delivered twice")
            acks = sent(w.node, "ack")
            assert len(acks) == 2
            assert {m["metadata"]["correlation_id"] for _, m in acks} == {first.message_id}


async def test_forged_and_misaddressed_messages_never_reach_the_application(
    directory: Directory, alice: AgentKey, bob: AgentKey, autojump_clock: trio.abc.Clock
) -> None:
    carol = directory.add(AgentKey(SigningKey(b"\x03" * 32), NETWORK))
    impostor = AgentKey(SigningKey(b"\x04" * 32), NETWORK)
    with trio.fail_after(10):
        async with world(directory) as w, w.client(bob) as b:
            forged = _signed(impostor, bob.agent_id)
            forged["sender"]["agent_id"] = alice.agent_id  # claims to be Alice
            w.node.inject(bob.agent_id, json.dumps(forged))
            w.node.inject(bob.agent_id, json.dumps(_signed(alice, carol.agent_id)))
            w.node.inject(bob.agent_id, json.dumps(_signed(impostor, bob.agent_id)))
            w.node.inject(bob.agent_id, "not json")
            w.node.inject(bob.agent_id, json.dumps({"frame_type": "future_thing"}))
            genuine = _signed(alice, bob.agent_id)
            # Same message id as the forgery: the forgery must not shadow it.
            genuine = _signed(alice, bob.agent_id, message_id=forged["message_id"])
            w.node.inject(bob.agent_id, json.dumps(genuine))
            received = await b.receive()
            assert received.message == genuine


async def test_broadcasts_are_received(
    directory: Directory, alice: AgentKey, bob: AgentKey, autojump_clock: trio.abc.Clock
) -> None:
    with trio.fail_after(10):
        async with world(directory) as w, w.client(bob) as b:
            message = _signed(alice, broadcast_did(NETWORK), broadcast=True)
            w.node.inject(bob.agent_id, json.dumps(message))
            assert (await b.receive()).receiver == broadcast_did(NETWORK)


async def test_a_refused_reauthentication_ends_the_client(
    directory: Directory, alice: AgentKey, autojump_clock: trio.abc.Clock
) -> None:
    with trio.fail_after(500):
        async with world(directory, ttl=100) as w, w.client(alice) as a:
            w.node.reject_auth = "OCP-403"
            with pytest.raises(AuthenticationRejected) as caught:
                await a.receive()
            assert caught.value.code == "OCP-403"
            assert trio.current_time() == 90
            with pytest.raises(AuthenticationRejected):
                await a.send(alice.agent_id, "discovery_ping", PING)


async def test_iterating_ends_when_the_client_closes(
    directory: Directory, alice: AgentKey, bob: AgentKey, autojump_clock: trio.abc.Clock
) -> None:
    seen: list[ReceivedMessage] = []
    with trio.fail_after(10):
        async with world(directory) as w, w.client(alice) as a:
            b = w.client(bob)
            async with b:
                await a.send(bob.agent_id, "discovery_ping", PING)

                async def close_soon() -> None:
                    await trio.sleep(1)
                    await b.aclose()

                w.tasks.start_soon(close_soon)
                async for message in b:
                    seen.append(message)
            assert len(seen) == 1
            assert not b.connected
            # Bob's close handshake completed on the node's side too.
            await w.node.wait_for(lambda: not w.node.conns.get(bob.agent_id))


async def test_drain_returns_what_arrived_without_waiting(
    directory: Directory, alice: AgentKey, bob: AgentKey, autojump_clock: trio.abc.Clock
) -> None:
    with trio.fail_after(10):
        async with world(directory) as w, w.client(bob) as b:
            assert b.drain() == []
            first, second = _signed(alice, bob.agent_id), _signed(alice, bob.agent_id)
            w.node.inject(bob.agent_id, json.dumps(first))
            w.node.inject(bob.agent_id, json.dumps(second))
            assert (await b.receive()).message == first
            await trio.testing.wait_all_tasks_blocked()
            assert [m.message for m in b.drain()] == [second]


async def test_the_nodes_own_errors_count_once_its_id_is_pinned(
    directory: Directory, alice: AgentKey, bob: AgentKey, autojump_clock: trio.abc.Clock
) -> None:
    """An OCP-502 from the node's service agent ends the wait for an ack."""

    def undeliverable(node: FakeNode, message_id: str) -> str:
        error = build_error_message(
            UpstreamUnreachable("no endpoint answered"),
            sender=node.service_agent,
            receiver=alice.agent_id,
            now=alice.now(),
            reference_message_id=message_id,
        )
        return json.dumps(sign_message(error, node.key))

    async def node_gives_up(node: FakeNode) -> None:
        await node.wait_for(lambda: bool(sent(node, "discovery_ping")))
        node.inject(
            alice.agent_id, undeliverable(node, sent(node, "discovery_ping")[0][1]["message_id"])
        )

    with trio.fail_after(500):
        async with world(directory) as w:
            w.node.drop.add("discovery_ping")
            node_id = format_node_id(w.node.key.public_key)
            async with w.client(alice, node_id=node_id) as a:
                w.tasks.start_soon(node_gives_up, w.node)
                with pytest.raises(MessageRejected) as caught:
                    await a.send(bob.agent_id, "discovery_ping", PING, requires_ack=True)
                assert caught.value.code == "OCP-502"
                assert trio.current_time() == 0
            # Without the pin the same error is unverifiable: dropped, and the
            # sender keeps waiting for an ack until it gives up.
            w.node.frames.clear()
            async with w.client(alice) as a:
                w.tasks.start_soon(node_gives_up, w.node)
                with pytest.raises(AckTimeout):
                    await a.send(bob.agent_id, "discovery_ping", PING, requires_ack=True)
