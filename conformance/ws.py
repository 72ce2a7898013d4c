"""The suite's WebSocket client: wsproto over a trio stream, nothing more.

The transport checks need to see what a node does at the edges (an upgrade
refused with its HTTP status, the subprotocol it picked, the close code it
sent, a connection dropped without a close frame), so this client reports
all of that instead of hiding it. It has no clock of its own: bound every
call with a cancel scope (:func:`receive_within` does).

``https://`` and ``wss://`` URLs mean TLS with the suite's context; ``http://``
and ``ws://`` plain TCP (a plaintext node is reported by the TLS checks, the
transport checks still run against it).
"""

from __future__ import annotations

from collections import deque
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING, Final
from urllib.parse import urlsplit

import trio
from wsproto import ConnectionType, WSConnection
from wsproto.connection import ConnectionState
from wsproto.events import (
    AcceptConnection,
    BytesMessage,
    CloseConnection,
    Ping,
    RejectConnection,
    Request,
    TextMessage,
)
from wsproto.utilities import LocalProtocolError, RemoteProtocolError

from conformance.client import USER_AGENT, host_port, open_stream

if TYPE_CHECKING:
    import ssl
    from collections.abc import AsyncIterator, Sequence

    from wsproto.events import Event

__all__ = [
    "NO_CLOSE_FRAME",
    "WsClosed",
    "WsConnection",
    "WsFailed",
    "WsRefused",
    "receive_within",
    "ws_connect",
]

#: RFC 6455: the code reported when the connection ended without a close frame.
NO_CLOSE_FRAME: Final = 1006
_READ_SIZE: Final = 65_536
#: How long a local close waits for the peer's close frame before dropping the stream.
_CLOSE_WAIT: Final = 1.0


class WsFailed(Exception):
    """No WebSocket: the connection or the upgrade failed."""


class WsRefused(WsFailed):
    """The server answered the upgrade with an HTTP status instead of 101."""

    def __init__(self, status: int) -> None:
        self.status = status
        super().__init__(f"upgrade refused with HTTP {status}")


class WsClosed(Exception):
    """The connection ended; ``code`` is the peer's close code (1006: no close frame)."""

    def __init__(self, code: int, reason: str = "") -> None:
        self.code = code
        self.reason = reason
        super().__init__(f"closed with {code}" + (f" ({reason})" if reason else ""))


async def _receive(stream: trio.abc.Stream) -> bytes | None:
    """The next bytes, or ``None`` at the end of the stream (what wsproto wants)."""
    data = await stream.receive_some(_READ_SIZE)
    return bytes(data) if data else None


class WsConnection:
    """An open connection after the upgrade: text (and binary) frames in and out, the close code.

    :meth:`receive` is for text-only protocols (``ocp.v1``): binary messages are
    skipped. :meth:`receive_message` returns either kind, for the peer protocol
    (``ocp.peer.v1``), whose session frames are binary.
    """

    def __init__(
        self,
        stream: trio.abc.Stream,
        connection: WSConnection,
        subprotocol: str | None,
        pending: Sequence[Event],
    ) -> None:
        self.subprotocol = subprotocol
        self._stream = stream
        self._ws = connection
        self._events: deque[Event] = deque(pending)
        self._parts: list[str] = []
        self._binary_parts: list[bytes] = []
        self._lock = trio.Lock()
        self.closed: WsClosed | None = None

    async def _write(self, data: bytes) -> None:
        async with self._lock:
            try:
                await self._stream.send_all(data)
            except (trio.BrokenResourceError, trio.ClosedResourceError) as exc:
                raise self._lost(f"send failed: {exc}") from None

    def _lost(self, reason: str) -> WsClosed:
        if self.closed is None:
            self.closed = WsClosed(NO_CLOSE_FRAME, reason)
        return self.closed

    async def send(self, text: str) -> None:
        await self._send_message(TextMessage(data=text))

    async def send_bytes(self, data: bytes) -> None:
        """Send one binary message."""
        await self._send_message(BytesMessage(data=data))

    async def _send_message(self, message: TextMessage | BytesMessage) -> None:
        if self.closed is not None:
            raise self.closed
        try:
            data = self._ws.send(message)
        except LocalProtocolError as exc:
            raise self._lost(f"cannot send: {exc}") from None
        await self._write(data)

    async def _next_event(self) -> Event:
        while not self._events:
            try:
                data = await _receive(self._stream)
            except (trio.BrokenResourceError, trio.ClosedResourceError) as exc:
                raise self._lost(f"receive failed: {exc}") from None
            try:
                self._ws.receive_data(data)
                self._events.extend(self._ws.events())
            except RemoteProtocolError as exc:
                raise self._lost(f"protocol error: {exc}") from None
            if data is None and not self._events:
                raise self._lost("connection closed without a close frame")
        return self._events.popleft()

    async def receive(self) -> str:
        """The next text message (pings are answered on the way); :class:`WsClosed` at the end."""
        while True:
            message = await self._receive(binary=False)
            if isinstance(message, str):
                return message

    async def receive_message(self) -> str | bytes:
        """The next message, text or binary; :class:`WsClosed` at the end."""
        return await self._receive(binary=True)

    async def _receive(self, *, binary: bool) -> str | bytes:
        if self.closed is not None:
            raise self.closed
        while True:
            event = await self._next_event()
            if isinstance(event, TextMessage):
                self._parts.append(event.data)
                if event.message_finished:
                    text = "".join(self._parts)
                    self._parts.clear()
                    return text
            elif isinstance(event, BytesMessage):
                if not binary:
                    continue  # a text-only protocol: skipped, as before
                self._binary_parts.append(bytes(event.data))
                if event.message_finished:
                    data = b"".join(self._binary_parts)
                    self._binary_parts.clear()
                    return data
            elif isinstance(event, Ping) and self._ws.state is ConnectionState.OPEN:
                await self._write(self._ws.send(event.response()))
            elif isinstance(event, CloseConnection):
                if self._ws.state is ConnectionState.REMOTE_CLOSING:
                    try:
                        await self._write(self._ws.send(event.response()))
                    except WsClosed:
                        pass
                self.closed = WsClosed(event.code, event.reason or "")
                raise self.closed

    async def close(self, code: int = 1000) -> None:
        """Close politely: send a close frame and wait a little for the answer."""
        if self.closed is None and self._ws.state is ConnectionState.OPEN:
            try:
                await self._write(self._ws.send(CloseConnection(code=code)))
                with trio.move_on_after(_CLOSE_WAIT):
                    while True:
                        await self.receive()
            except WsClosed:
                pass
        self._lost("closed locally")
        await trio.aclose_forcefully(self._stream)


async def _upgrade(stream: trio.abc.Stream, url: str, subprotocols: Sequence[str]) -> WsConnection:
    parts = urlsplit(url)
    host, port = host_port(url)
    authority = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    ws = WSConnection(ConnectionType.CLIENT)
    request = Request(
        host=authority,
        target=target,
        subprotocols=list(subprotocols),
        extra_headers=[(b"user-agent", USER_AGENT.encode())],
    )
    await stream.send_all(ws.send(request))
    while True:
        data = await _receive(stream)
        try:
            ws.receive_data(data)
            events = list(ws.events())
        except RemoteProtocolError as exc:
            raise WsFailed(f"upgrade failed: {exc}") from None
        for index, event in enumerate(events):
            if isinstance(event, AcceptConnection):
                return WsConnection(stream, ws, event.subprotocol, events[index + 1 :])
            if isinstance(event, RejectConnection):
                raise WsRefused(event.status_code)
        if data is None:
            raise WsFailed("the server closed the connection during the upgrade")


@asynccontextmanager
async def ws_connect(
    url: str, *, context: ssl.SSLContext, subprotocols: Sequence[str]
) -> AsyncIterator[WsConnection]:
    """Connect to ``url`` and upgrade, offering ``subprotocols``; close on exit.

    Raises :class:`WsRefused` when the server answers the upgrade with an HTTP
    status, :class:`WsFailed` when there is no WebSocket for another reason.
    Whether the server picked a subprotocol is left to the caller to judge
    (:attr:`WsConnection.subprotocol`).
    """
    try:
        stream = await open_stream(url, context)
    except (OSError, trio.BrokenResourceError) as exc:
        raise WsFailed(f"cannot connect to {url}: {exc}") from None
    try:
        connection = await _upgrade(stream, url, subprotocols)
    except (trio.BrokenResourceError, trio.ClosedResourceError) as exc:
        await trio.aclose_forcefully(stream)
        raise WsFailed(f"upgrade failed: {exc}") from None
    except BaseException:
        await trio.aclose_forcefully(stream)
        raise
    try:
        yield connection
    finally:
        with trio.CancelScope(shield=True):
            await connection.close()


async def receive_within(connection: WsConnection, seconds: float) -> str | None:
    """The next text message, or ``None`` if none came within ``seconds``.

    :class:`WsClosed` when the connection ends first.
    """
    with trio.move_on_after(seconds):
        return await connection.receive()
    return None
