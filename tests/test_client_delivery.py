"""The SDK's delivery bookkeeping without I/O: dedup, backoff, retries, acks, errors."""

from __future__ import annotations

import random
import subprocess
import sys

import pytest
from hypothesis import given
from hypothesis import strategies as st

from conftest import NOW, Agent
from ocpd.client.delivery import (
    ACK_TIMEOUT,
    AUTH_HANDSHAKE_TIMEOUT,
    MAX_RETRY_COUNT,
    RETRY_BASE_DELAY,
    Backoff,
    DedupWindow,
    build_ack,
    error_from_payload,
    error_from_receipt,
    is_transient,
    retry_delays,
)
from ocpd.client.errors import ConnectionFailed, MessageRejected, NodeError
from ocpd.proto import schema
from ocpd.proto.envelope import build_error_message, sign_message
from ocpd.proto.errors import RateLimited


class Fixed(random.Random):
    def __init__(self, value: float) -> None:
        super().__init__()
        self.value = value

    def random(self) -> float:
        return self.value


def test_appendix_d_constants() -> None:
    assert (ACK_TIMEOUT, AUTH_HANDSHAKE_TIMEOUT) == (30.0, 5.0)
    assert (MAX_RETRY_COUNT, RETRY_BASE_DELAY) == (5, 1.0)
    assert retry_delays() == [1, 2, 4, 8, 16]
    assert retry_delays(count=3, base=0.5) == [0.5, 1, 2]


def test_backoff_grows_to_its_ceiling_with_equal_jitter() -> None:
    low = Backoff(base=1.0, maximum=60.0, rng=Fixed(0.0))
    assert [low.next_delay() for _ in range(8)] == [0.5, 1, 2, 4, 8, 16, 30, 30]
    high = Backoff(base=1.0, maximum=60.0, rng=Fixed(0.5))
    assert [high.next_delay() for _ in range(3)] == [0.75, 1.5, 3]
    high.reset()
    assert high.next_delay() == 0.75
    many = Backoff(rng=Fixed(0.99))
    assert max(many.next_delay() for _ in range(200)) < 60


def test_dedup_by_sender_and_id_for_max_ttl_3600_plus_skew() -> None:
    window = DedupWindow(clock_skew=60)
    assert window.first_sighting("a", "m1", sent_at=0, ttl=60, now=0)
    assert not window.first_sighting("a", "m1", sent_at=0, ttl=60, now=3659)
    # Another sender may use the same id without shadowing the first.
    assert window.first_sighting("b", "m1", sent_at=0, ttl=60, now=1)
    # Gone once max(ttl, 3600) + skew has passed.
    assert window.first_sighting("a", "m1", sent_at=0, ttl=60, now=3660)
    assert window.first_sighting("a", "m2", sent_at=0, ttl=7200, now=0)
    assert not window.first_sighting("a", "m2", sent_at=0, ttl=7200, now=7259)


def test_dedup_remembers_acks_and_is_bounded() -> None:
    window = DedupWindow(max_entries=3)
    for i in range(3):
        window.first_sighting("a", f"m{i}", sent_at=i, ttl=60, now=10)
    window.mark_acked("a", "m1")
    assert window.was_acked("a", "m1")
    assert not window.was_acked("a", "m2")
    window.first_sighting("a", "m9", sent_at=100, ttl=60, now=10)
    assert len(window) == 3
    # The entry closest to expiry went first.
    assert window.first_sighting("a", "m0", sent_at=0, ttl=60, now=10)


@given(
    st.lists(
        st.tuples(st.sampled_from("ab"), st.sampled_from(["m1", "m2", "m3"]), st.integers(0, 50)),
        max_size=40,
    )
)
def test_dedup_never_lets_a_repeat_through_inside_its_window(
    events: list[tuple[str, str, int]],
) -> None:
    window = DedupWindow()
    first_seen: dict[tuple[str, str], int] = {}
    now = 0
    for sender, message_id, step in events:
        now += step
        fresh = window.first_sighting(sender, message_id, sent_at=now, ttl=60, now=now)
        key = (sender, message_id)
        if key in first_seen and now < first_seen[key] + 3600 + 60:
            assert not fresh
        if fresh:
            first_seen[key] = now


def test_ack_messages_pass_the_schema_gate() -> None:
    bob = Agent(2)
    ack = build_ack(
        sender=bob.id, receiver=Agent(1).id, acknowledged_id="msg-01234567-89ab-4cde-8f01", now=NOW
    )
    assert ack["metadata"] == {"correlation_id": "msg-01234567-89ab-4cde-8f01"}
    assert ack["payload"] == {"status": "received"}
    schema.validate_envelope(sign_message(ack, bob.key))
    noted = build_ack(
        sender=bob.id, receiver=Agent(1).id, acknowledged_id="x", now=NOW, status="processed",
        note="done",
    )  # fmt: skip
    assert noted["payload"] == {"status": "processed", "note": "done"}


def test_receipt_errors_in_every_shape() -> None:
    node = Agent(9)
    signed_error = sign_message(
        build_error_message(
            RateLimited("slow down", retry_after=4),
            sender=node.id,
            receiver=Agent(1).id,
            now=NOW,
            reference_message_id="msg-01234567-89ab-4cde-8f01",
        ),
        node.key,
    )
    from_node = error_from_receipt({"status": "rejected", "error": signed_error})
    assert (from_node.code, from_node.message, from_node.retry_after) == (
        "OCP-429",
        "slow down",
        4.0,
    )
    as_payload = error_from_receipt({"error": {"code": "OCP-403", "message": "no"}})
    assert (as_payload.code, as_payload.message) == ("OCP-403", "no")
    assert error_from_receipt({"error": "PVL-004"}).code == "PVL-004"
    sentence = error_from_receipt({"error": "went wrong"})
    assert (sentence.code, sentence.message) == (None, "went wrong")
    assert error_from_receipt({}).code is None


def test_error_payloads() -> None:
    error = error_from_payload(
        {"error_code": "OCP-503", "message": "busy", "details": {"retry_after": 2}}, status=503
    )
    assert isinstance(error, MessageRejected)
    assert (error.code, error.status, error.retry_after) == ("OCP-503", 503, 2.0)
    assert str(error) == "OCP-503: busy"
    assert error_from_payload({"error_code": "nonsense"}).code is None
    assert error_from_payload({}, retry_after=9).retry_after == 9


@pytest.mark.parametrize(
    ("error", "transient"),
    [
        (ConnectionFailed("down"), True),
        (NodeError("x", code="OCP-408"), True),
        (NodeError("x", code="OCP-429"), True),
        (NodeError("x", code="OCP-503"), True),
        (NodeError("x", code="OCP-400"), False),
        (NodeError("x", code="OCP-401"), False),
        (NodeError("x", code="OCP-404"), False),
        (NodeError("x", code="PVL-001"), False),
    ],
)
def test_which_refusals_are_retried(error: NodeError, transient: bool) -> None:
    assert is_transient(error) is transient


def test_the_sdk_loads_none_of_the_daemon_stack() -> None:
    """An asyncio agent importing ocpd.client pulls in neither trio nor the server stack."""
    probe = (
        "import sys, ocpd.client\n"
        "loaded = {'trio', 'quart', 'quart_trio', 'hypercorn', 'sqlite3', 'trio_websocket'}\n"
        "print(sorted(loaded & set(sys.modules)))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, check=True, timeout=60
    )
    assert out.stdout.strip() == "[]"
