"""What an agent does with a message before its application sees it.

In order (cheap, input-only checks first, as on the node):

1. strict I-JSON, envelope and payload schema, freshness
   (:func:`~ocpd.proto.envelope.parse_message`);
2. addressed to this agent (or a broadcast on its network);
3. the sender's signature, against keys from its DID document
   (:class:`~ocpd.client.didcache.DidCache`), re-resolved once when a cached
   document may be stale;
4. dedup by ``(sender, message_id)`` (:class:`~ocpd.client.delivery.DedupWindow`):
   a repeat is reported as such and not decrypted again;
5. payload decryption with the agent's own key (D5), then the payload schema
   of the message type on the plaintext.

A message that fails any step raises :class:`Dropped` with the reason; the
application never sees it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import attrs

from ocpd.client.delivery import DedupWindow
from ocpd.client.errors import UnknownAgent
from ocpd.proto import schema
from ocpd.proto.envelope import (
    DEFAULT_TTL,
    check_freshness,
    decrypt_payload,
    parse_message,
    verify_message_signature,
)
from ocpd.proto.errors import AuthError, OcpError
from ocpd.proto.ids import broadcast_did

if TYPE_CHECKING:
    from collections.abc import Callable

    from ocpd.client.didcache import DidCache
    from ocpd.client.keys import AgentKey

__all__ = ["Dropped", "Inbox", "ReceivedMessage"]


class Dropped(Exception):
    """A message that did not pass; ``reason`` says which check failed."""

    def __init__(self, reason: str, *, message_id: str | None = None) -> None:
        self.reason = reason
        self.message_id = message_id
        super().__init__(reason)


@attrs.frozen
class ReceivedMessage:
    """A verified message for this agent.

    ``message`` and ``raw`` are as received (an encrypted payload stays
    encrypted there); ``payload`` is the plaintext object.
    """

    message: dict[str, Any]
    raw: bytes
    payload: dict[str, Any]
    sender: str
    receiver: str
    message_id: str
    message_type: str
    encrypted: bool
    sent_at: float
    expires_at: float

    @property
    def metadata(self) -> dict[str, Any]:
        metadata = self.message.get("metadata")
        return dict(metadata) if isinstance(metadata, dict) else {}

    @property
    def requires_ack(self) -> bool:
        return self.metadata.get("requires_ack") is True

    @property
    def correlation_id(self) -> str | None:
        value = self.metadata.get("correlation_id")
        return value if isinstance(value, str) else None

    @property
    def ttl(self) -> int:
        ttl = self.message.get("ttl", DEFAULT_TTL)
        return ttl if isinstance(ttl, int) else DEFAULT_TTL

    def summary(self) -> dict[str, Any]:
        """The message with its plaintext payload, for logs and JSON lines."""
        return {
            "message_id": self.message_id,
            "timestamp": self.message.get("timestamp"),
            "sender": self.sender,
            "receiver": self.receiver,
            "message_type": self.message_type,
            "encrypted": self.encrypted,
            "payload": self.payload,
            "metadata": self.metadata,
        }


class Inbox:
    """Checks incoming messages for one agent; see the module docstring."""

    def __init__(
        self,
        agent: AgentKey,
        documents: DidCache,
        *,
        wall_clock: Callable[[], float],
        dedup: DedupWindow | None = None,
    ) -> None:
        self._agent = agent
        self._documents = documents
        self._wall_clock = wall_clock
        self.dedup = dedup or DedupWindow()

    async def accept(
        self, raw: bytes, parsed: dict[str, Any] | None = None
    ) -> tuple[ReceivedMessage, bool]:
        """The checked message and whether it is new (``False`` for a repeat).

        ``parsed`` is ``raw`` already read with strict I-JSON rules, when the
        caller had to look inside it first (to tell frames from messages).
        """
        now = self._wall_clock()
        try:
            if parsed is None:
                message, sent_at, expires_at = parse_message(raw, now=now)
            else:
                schema.validate_envelope(parsed)
                message = parsed
                sent_at, expires_at = check_freshness(message, now=now)
        except OcpError as exc:
            raise Dropped(f"{exc.code}: {exc.message}") from None
        message_id: str = message["message_id"]
        sender: str = message["sender"]["agent_id"]
        receiver: str = message["receiver"]["agent_id"]
        if receiver not in {self._agent.agent_id, broadcast_did(self._agent.network)}:
            raise Dropped(f"addressed to {receiver}", message_id=message_id)
        await self._verify(message, sender, message_id)
        ttl = message.get("ttl", DEFAULT_TTL)
        fresh = self.dedup.first_sighting(sender, message_id, sent_at=sent_at, ttl=ttl, now=now)
        encrypted = "encryption" in message
        payload = message["payload"] if isinstance(message["payload"], dict) else {}
        if fresh and encrypted:
            payload = self._decrypt(message, message_id)
        received = ReceivedMessage(
            message=message,
            raw=raw,
            payload=payload,
            sender=sender,
            receiver=receiver,
            message_id=message_id,
            message_type=message["message_type"],
            encrypted=encrypted,
            sent_at=sent_at,
            expires_at=expires_at,
        )
        return received, fresh

    async def _verify(self, message: dict[str, Any], sender: str, message_id: str) -> None:
        try:
            document = await self._documents.get(sender)
            try:
                verify_message_signature(message, document.verification_keys())
            except AuthError:
                fresher = await self._documents.refresh(sender)
                if fresher is None:
                    raise
                verify_message_signature(message, fresher.verification_keys())
        except UnknownAgent as exc:
            raise Dropped(f"sender unknown: {exc.message}", message_id=message_id) from None
        except OcpError as exc:
            raise Dropped(f"{exc.code}: {exc.message}", message_id=message_id) from None

    def _decrypt(self, message: dict[str, Any], message_id: str) -> dict[str, Any]:
        try:
            payload = decrypt_payload(message, self._agent.key)
            schema.validate(f"payload.{message['message_type']}", payload)
        except OcpError as exc:
            raise Dropped(
                f"encrypted payload refused: {exc.code}: {exc.message}", message_id=message_id
            ) from None
        return payload
