"""Delivery bookkeeping for agents, without I/O: dedup, acks, retries, backoff.

OCP §3.4 promises at-least-once delivery: a sender that asked for an ack
(``metadata.requires_ack``) and got none within ``ACK_TIMEOUT`` sends the
*same* message again (same ``message_id``, same signature) after
``RETRY_BASE_DELAY * 2**n`` seconds, at most ``MAX_RETRY_COUNT`` times.
Receivers drop repeats by ``message_id`` for ``max(ttl, 3600)`` seconds, so
the application sees each message once; a repeat of a message that was
already acknowledged is acknowledged again, since the first ack may be the
thing that got lost.

Nothing here reads a clock: ``now`` comes in as an argument.
"""

from __future__ import annotations

import heapq
import random
import re
from typing import TYPE_CHECKING, Any, Final

import attrs

from ocpd.client.errors import MessageRejected, NodeError
from ocpd.proto.envelope import DEFAULT_CLOCK_SKEW, build_message

if TYPE_CHECKING:
    from collections.abc import Mapping

__all__ = [
    "ACK_TIMEOUT",
    "AUTH_HANDSHAKE_TIMEOUT",
    "DEDUP_MIN_WINDOW",
    "MAX_RETRY_COUNT",
    "RETRY_BASE_DELAY",
    "TRANSIENT_CODES",
    "Backoff",
    "DedupWindow",
    "Timings",
    "build_ack",
    "error_from_payload",
    "error_from_receipt",
    "is_transient",
    "retry_delays",
]

# OCP Appendix D.
ACK_TIMEOUT: Final = 30.0
AUTH_HANDSHAKE_TIMEOUT: Final = 5.0
MAX_RETRY_COUNT: Final = 5
RETRY_BASE_DELAY: Final = 1.0
# OCP §3.4: the dedup window is max(ttl, 3600) seconds.
DEDUP_MIN_WINDOW: Final = 3600

#: Refusals that may go away by themselves; anything else will not get better
#: by sending the same bytes again.
TRANSIENT_CODES: Final = frozenset({"OCP-408", "OCP-429", "OCP-500", "OCP-502", "OCP-503"})

_CODE: Final = re.compile(r"OCP-[0-9]{3}|PVL-[0-9]{3}|E_[A-Z][A-Z0-9_]{0,63}", re.ASCII)


@attrs.frozen
class Timings:
    """Every duration the client waits for, in seconds.

    The ack and retry values are OCP Appendix D's ``ACK_TIMEOUT``,
    ``MAX_RETRY_COUNT`` and ``RETRY_BASE_DELAY``.
    """

    connect_timeout: float = 10.0
    """TCP, TLS, upgrade and ``auth_result`` together."""
    receipt_timeout: float = 30.0
    send_wait: float = 30.0
    """How long a send waits for a session while reconnecting."""
    ack_timeout: float = ACK_TIMEOUT
    max_retry_count: int = MAX_RETRY_COUNT
    retry_base_delay: float = RETRY_BASE_DELAY
    reconnect_base: float = 1.0
    reconnect_max: float = 60.0
    reauth_fraction: float = 0.9
    """Share of the session ``ttl`` after which the client re-authenticates."""
    keepalive_interval: float = 30.0
    """Ping when idle this long; give the connection up after twice as long."""
    close_timeout: float = 5.0


def retry_delays(*, count: int = MAX_RETRY_COUNT, base: float = RETRY_BASE_DELAY) -> list[float]:
    """The pauses before each resend: 1, 2, 4, 8, 16 s with the Appendix D values."""
    return [base * float(2**n) for n in range(count)]


def is_transient(error: NodeError) -> bool:
    """Whether sending the same message again later may succeed.

    Connection failures (no code) are transient; so are timeouts, rate limits
    and unavailability. Malformed, unauthenticated, forbidden, unknown
    receivers and PVL refusals are not.
    """
    return error.code is None or error.code in TRANSIENT_CODES


@attrs.define
class Backoff:
    """Exponential reconnect delays with "equal jitter": each delay is drawn
    from ``[d/2, d)`` where ``d = min(maximum, base * 2**attempt)``.

    The jitter spreads the reconnects of many agents after a node restart;
    the lower half keeps the growth that protects a struggling node.
    """

    base: float = 1.0
    maximum: float = 60.0
    rng: random.Random = attrs.field(factory=random.Random)
    attempt: int = 0

    def next_delay(self) -> float:
        ceiling = min(self.maximum, self.base * float(2 ** min(self.attempt, 62)))
        self.attempt += 1
        return ceiling / 2 + self.rng.random() * ceiling / 2

    def reset(self) -> None:
        self.attempt = 0


class DedupWindow:
    """Which messages the application has already been given (OCP §3.4, D6).

    Keys are ``(sender, message_id)``: a message id is only unique per
    sender as far as a receiver can check, so keying by the id alone would
    let any agent suppress another's message by reusing its id. Entries live
    until ``timestamp + max(ttl, 3600) + clock_skew``; a message older than
    that is expired and refused before it gets here. Record only messages
    whose signature verified, so forgeries cannot shadow genuine ones.

    ``max_entries`` bounds memory; past it the entries closest to expiry go
    first.
    """

    def __init__(
        self, *, clock_skew: float = DEFAULT_CLOCK_SKEW, max_entries: int = 100_000
    ) -> None:
        self._skew = clock_skew
        self._max = max_entries
        self._entries: dict[tuple[str, str], list[Any]] = {}  # key -> [expires, acked]
        self._heap: list[tuple[float, tuple[str, str]]] = []

    def __len__(self) -> int:
        return len(self._entries)

    def _prune(self, now: float) -> None:
        heap = self._heap
        while heap and (heap[0][0] <= now or len(self._entries) > self._max):
            expires, key = heapq.heappop(heap)
            entry = self._entries.get(key)
            if entry is not None and entry[0] == expires:
                del self._entries[key]

    def first_sighting(
        self, sender: str, message_id: str, *, sent_at: float, ttl: int, now: float
    ) -> bool:
        """Record the message; ``False`` if it was seen inside its window already."""
        self._prune(now)
        key = (sender, message_id)
        if key in self._entries:
            return False
        expires = sent_at + max(ttl, DEDUP_MIN_WINDOW) + self._skew
        self._entries[key] = [expires, False]
        heapq.heappush(self._heap, (expires, key))
        if len(self._entries) > self._max:
            self._prune(now)
        return True

    def mark_acked(self, sender: str, message_id: str) -> None:
        entry = self._entries.get((sender, message_id))
        if entry is not None:
            entry[1] = True

    def was_acked(self, sender: str, message_id: str) -> bool:
        entry = self._entries.get((sender, message_id))
        return bool(entry is not None and entry[1])


def build_ack(
    *,
    sender: str,
    receiver: str,
    acknowledged_id: str,
    now: float,
    status: str = "received",
    note: str | None = None,
) -> dict[str, Any]:
    """An unsigned ``ack`` for ``acknowledged_id`` (``metadata.correlation_id``, D6)."""
    payload: dict[str, object] = {"status": status}
    if note is not None:
        payload["note"] = note
    return build_message(
        sender=sender,
        receiver=receiver,
        message_type="ack",
        payload=payload,
        now=now,
        metadata={"correlation_id": acknowledged_id},
    )


def _retry_after(details: Mapping[str, Any]) -> float | None:
    value = details.get("retry_after")
    if isinstance(value, int | float) and not isinstance(value, bool) and value >= 0:
        return float(value)
    return None


def error_from_payload(
    payload: Mapping[str, Any],
    *,
    status: int | None = None,
    retry_after: float | None = None,
    fallback: str = "message refused",
) -> MessageRejected:
    """The exception for an OCP ``error`` payload (OCP §7.4)."""
    code = payload.get("error_code")
    details = payload.get("details")
    details = dict(details) if isinstance(details, dict) else {}
    text = payload.get("message")
    return MessageRejected(
        text if isinstance(text, str) and text else fallback,
        code=code if isinstance(code, str) and _CODE.fullmatch(code) else None,
        details=details,
        status=status,
        retry_after=retry_after if retry_after is not None else _retry_after(details),
    )


def error_from_receipt(frame: Mapping[str, Any]) -> MessageRejected:
    """The exception for a ``rejected`` receipt.

    ocpd puts the node's signed ``error`` message in ``error``, as it would
    answer over HTTP (D6 leaves the shape open). Also understood: an object
    like an ``error`` payload (``error_code`` or ``code``, ``message``,
    ``details``), a bare code, or a sentence.
    """
    error = frame.get("error")
    if isinstance(error, dict) and isinstance(error.get("payload"), dict):
        error = error["payload"]
    if isinstance(error, dict):
        body = dict(error)
        if "error_code" not in body and "code" in body:
            body["error_code"] = body["code"]
        return error_from_payload(body, fallback="the node rejected the message")
    if isinstance(error, str) and _CODE.fullmatch(error):
        return MessageRejected("the node rejected the message", code=error)
    if isinstance(error, str) and error:
        return MessageRejected(error)
    return MessageRejected("the node rejected the message")
