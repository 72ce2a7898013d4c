"""The WebSocket connection under a peer session, seen the same from both ends.

A session does not care who opened the connection: :class:`Carrier` is the
four things it does with it. :class:`AsgiCarrier` is a connection another
node opened to this node's WebSocket port (served by :mod:`ocpd.server`);
:func:`dial` opens one to another node with trio-websocket, validating the
server's certificate against the hostname in the URL (NET FR-008c) with the
system's trust roots plus the deployment's own (FR-008d).
"""

from __future__ import annotations

import ssl
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING, Any, Final, Protocol

import trio
from trio_websocket import (
    ConnectionClosed,
    ConnectionRejected,
    HandshakeError,
    WebSocketConnection,
    open_websocket_url,
)

from ocpd.proto.errors import NetError
from ocpd.proto.peer import PEER_SUBPROTOCOL

if TYPE_CHECKING:
    from collections.abc import AsyncIterator

    from ocpd.asgi import Receive, Send

__all__ = ["AsgiCarrier", "Carrier", "CarrierClosed", "DialedCarrier", "client_context", "dial"]

#: How long the TCP, TLS and WebSocket opening of a dial may take.
CONNECT_TIMEOUT: Final = 10.0
#: How long a closing handshake may take before the connection is dropped.
CLOSE_TIMEOUT: Final = 3.0
CLOSE_NORMAL: Final = 1000
CLOSE_GOING_AWAY: Final = 1001
CLOSE_POLICY: Final = 1008
CLOSE_TRY_LATER: Final = 1013


class CarrierClosed(Exception):
    """The connection is gone (closed by either side, or broken)."""

    def __init__(self, code: int | None = None, reason: str = "") -> None:
        super().__init__(f"connection closed ({code}{': ' + reason if reason else ''})")
        self.code = code
        self.reason = reason


class Carrier(Protocol):
    #: ``host:port`` of the other end, for logs.
    remote: str

    async def receive(self) -> bytes | str:
        """The next message; :class:`CarrierClosed` once there are no more."""
        ...

    async def send(self, data: bytes | str) -> None:
        """Send one message; :class:`CarrierClosed` if the connection is gone."""
        ...

    async def close(self, code: int = CLOSE_NORMAL, reason: str = "") -> None:
        """Close (idempotent, never raises)."""
        ...


class AsgiCarrier:
    """A connection accepted on this node's WebSocket port, through ASGI."""

    def __init__(self, receive: Receive, send: Send, remote: str) -> None:
        self._receive = receive
        self._send = send
        self.remote = remote
        self.closed = False

    async def receive(self) -> bytes | str:
        if self.closed:
            raise CarrierClosed()
        message = await self._receive()
        if message["type"] == "websocket.receive":
            data = message.get("bytes")
            return data if data is not None else str(message.get("text", ""))
        self.closed = True
        raise CarrierClosed(message.get("code"))

    async def send(self, data: bytes | str) -> None:
        if self.closed:
            raise CarrierClosed()
        key = "bytes" if isinstance(data, bytes) else "text"
        try:
            await self._send({"type": "websocket.send", key: data})
        except (OSError, trio.BrokenResourceError, trio.ClosedResourceError) as exc:
            self.closed = True
            raise CarrierClosed() from exc

    async def close(self, code: int = CLOSE_NORMAL, reason: str = "") -> None:
        if self.closed:
            return
        self.closed = True
        with trio.move_on_after(CLOSE_TIMEOUT) as scope:
            scope.shield = True
            try:
                await self._send({"type": "websocket.close", "code": code, "reason": reason})
            except (OSError, trio.BrokenResourceError, trio.ClosedResourceError, RuntimeError):
                pass


class DialedCarrier:
    """A connection this node opened (trio-websocket)."""

    def __init__(self, connection: WebSocketConnection, remote: str) -> None:
        self._connection = connection
        self.remote = remote

    async def receive(self) -> bytes | str:
        try:
            return await self._connection.get_message()
        except ConnectionClosed as exc:
            reason = exc.reason
            raise CarrierClosed(
                getattr(reason, "code", None), str(getattr(reason, "reason", "") or "")
            ) from None

    async def send(self, data: bytes | str) -> None:
        try:
            await self._connection.send_message(data)
        except ConnectionClosed as exc:
            raise CarrierClosed(getattr(exc.reason, "code", None)) from None

    async def close(self, code: int = CLOSE_NORMAL, reason: str = "") -> None:
        with trio.move_on_after(CLOSE_TIMEOUT) as scope:
            scope.shield = True
            try:
                await self._connection.aclose(code, reason or None)
            except (OSError, trio.BrokenResourceError, ConnectionClosed):
                pass


def client_context(ca_file: str | None = None) -> ssl.SSLContext:
    """TLS 1.3 with hostname checks: the system's roots plus ``ca_file``."""
    context = ssl.create_default_context()
    context.minimum_version = ssl.TLSVersion.TLSv1_3
    if ca_file is not None:
        context.load_verify_locations(ca_file)
    return context


@asynccontextmanager
async def dial(
    url: str, context: ssl.SSLContext, *, max_message_bytes: int
) -> AsyncIterator[DialedCarrier]:
    """Open a peer connection to ``url``; ``E_TRANSPORT_UNAVAILABLE`` when that fails.

    A server that refuses the upgrade or does not speak ``ocp.peer.v1`` is
    ``E_TRANSPORT_REJECTED``.
    """
    options: dict[str, Any] = {
        "subprotocols": [PEER_SUBPROTOCOL],
        "max_message_size": max_message_bytes,
        "connect_timeout": CONNECT_TIMEOUT,
        "disconnect_timeout": CLOSE_TIMEOUT,
        "receive_buffer_size": 65_536,
        "message_queue_size": 64,
    }
    entered = False
    try:
        async with open_websocket_url(
            url, context if url.startswith("wss:") else None, **options
        ) as connection:
            entered = True
            if connection.subprotocol != PEER_SUBPROTOCOL:
                raise NetError(
                    f"{url} does not speak {PEER_SUBPROTOCOL}", code="E_TRANSPORT_REJECTED"
                )
            remote = connection.remote
            where = str(remote) if isinstance(remote, str) else f"{remote.address}:{remote.port}"
            yield DialedCarrier(connection, where)
    except ConnectionRejected as exc:
        raise NetError(
            f"{url} refused the peer connection (HTTP {exc.status_code})",
            code="E_TRANSPORT_REJECTED",
        ) from None
    except (HandshakeError, OSError, trio.TooSlowError) as exc:
        if entered:
            return  # the closing handshake failed: the session is over anyway
        raise NetError(
            f"cannot reach {url}: {type(exc).__name__} {exc}"[:200],
            code="E_TRANSPORT_UNAVAILABLE",
        ) from None
