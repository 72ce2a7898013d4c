"""Errors of the messaging half of the SDK.

Like :class:`~ocpd.client.registry.RegistryError`, each carries the wire
``code`` the node (or the receiving agent) gave, so that an application can
branch on ``OCP-429`` or ``PVL-006`` without parsing text. ``code`` is
``None`` for failures that happened before anybody could answer (the node
was unreachable, the connection dropped).
"""

from __future__ import annotations

from typing import Any

__all__ = [
    "AckTimeout",
    "AuthenticationRejected",
    "ConnectionFailed",
    "MessageRejected",
    "NodeError",
    "UnknownAgent",
]


class NodeError(Exception):
    """A messaging call failed.

    ``status`` is the HTTP status where there was one; ``retry_after`` the
    seconds the node asked to wait (``Retry-After``, or
    ``details.retry_after``) before trying again.
    """

    def __init__(
        self,
        message: str,
        *,
        code: str | None = None,
        details: dict[str, Any] | None = None,
        status: int | None = None,
        retry_after: float | None = None,
    ) -> None:
        self.code = code
        self.message = message
        self.details: dict[str, Any] = dict(details or {})
        self.status = status
        self.retry_after = retry_after
        super().__init__(f"{code}: {message}" if code else message)


class ConnectionFailed(NodeError):
    """The node could not be reached, or the session broke before it answered."""


class AuthenticationRejected(NodeError):
    """The node answered the WebSocket ``auth_handshake`` with ``rejected``."""


class MessageRejected(NodeError):
    """The node refused a message (a ``rejected`` receipt or an HTTP error), or the
    receiver answered it with an ``error`` message."""


class AckTimeout(NodeError):
    """No ``ack`` arrived after the first send and every retry (OCP §3.4)."""

    def __init__(self, message: str, *, attempts: int) -> None:
        self.attempts = attempts
        super().__init__(message, code="OCP-408")


class UnknownAgent(NodeError):
    """An agent's DID document could not be resolved (to verify or encrypt)."""
