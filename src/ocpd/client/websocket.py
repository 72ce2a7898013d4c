"""A small WebSocket client: wsproto over an anyio byte stream.

It runs wherever anyio runs (trio and asyncio), which trio-websocket does not.
Only what OCP needs is here: one subprotocol, text messages, pings, the
close handshake, and a bound on message size.

One task reads (:meth:`WebSocket.receive`), any number of tasks send;
sends, pong replies and close frames share one lock so that frames never
interleave on the stream.
"""

from __future__ import annotations

import ssl
from collections import deque
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Final, NoReturn
from urllib.parse import urlsplit

import anyio
import anyio.abc
import attrs
from wsproto import ConnectionType, WSConnection
from wsproto.connection import ConnectionState
from wsproto.events import (
    AcceptConnection,
    BytesMessage,
    CloseConnection,
    Ping,
    RejectConnection,
    RejectData,
    Request,
    TextMessage,
)
from wsproto.utilities import LocalProtocolError, RemoteProtocolError

from ocpd.proto.hosts import is_loopback_host

if TYPE_CHECKING:
    from wsproto.events import Event

__all__ = [
    "ConnectStream",
    "Endpoint",
    "WebSocket",
    "WebSocketClosed",
    "WebSocketError",
    "client_ssl_context",
    "open_websocket",
    "parse_endpoint",
]

_READ_SIZE: Final = 65_536
ABNORMAL_CLOSURE: Final = 1006
MESSAGE_TOO_BIG: Final = 1009
UNSUPPORTED_DATA: Final = 1003

ConnectStream = Callable[["Endpoint"], Awaitable[anyio.abc.ByteStream]]
"""Opens the byte stream to an endpoint; the default is TCP, plus TLS when secure."""


class WebSocketError(Exception):
    """The connection or the opening handshake failed."""


class WebSocketClosed(Exception):
    """The connection is closed; ``code`` is the close code (1006: no close frame)."""

    def __init__(self, code: int, reason: str = "") -> None:
        self.code = code
        self.reason = reason
        super().__init__(f"WebSocket closed ({code}{': ' + reason if reason else ''})")


@attrs.frozen
class Endpoint:
    """Where to connect: ``secure`` means TLS (``wss``/``https``)."""

    host: str
    port: int
    path: str
    secure: bool

    @property
    def authority(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{host}:{self.port}"

    def url(self, scheme: str) -> str:
        return f"{scheme}{'s' if self.secure else ''}://{self.authority}{self.path}"


def parse_endpoint(url: str, *, kind: str, default_path: str) -> Endpoint:
    """Parse a node URL for the WebSocket (``kind="ws"``) or HTTPS transport.

    ``wss://`` and ``https://`` both mean TLS for the WebSocket (a listener
    is often written down as ``https://host:port``). OCP §3.1 prohibits
    unencrypted transport; ``ws://``/``http://`` is accepted only for
    loopback hosts, which is where ocpd itself serves without TLS
    (development). A URL without a path gets ``default_path``.
    """
    parts = urlsplit(url)
    secure_schemes = {"wss", "https"} if kind == "ws" else {"https"}
    plain_schemes = {"ws", "http"} if kind == "ws" else {"http"}
    if parts.scheme not in secure_schemes | plain_schemes or not parts.hostname:
        wanted = "wss:// (or https://)" if kind == "ws" else "https://"
        raise ValueError(f"{url!r} is not a {wanted} URL")
    secure = parts.scheme in secure_schemes
    if not secure and not is_loopback_host(parts.hostname):
        raise ValueError(f"{url!r}: unencrypted transport is only allowed to loopback hosts")
    if parts.username or parts.password or parts.fragment:
        raise ValueError(f"{url!r} must not carry credentials or a fragment")
    try:
        port = parts.port or (443 if secure else 80)
    except ValueError:
        raise ValueError(f"{url!r} has an invalid port") from None
    path = parts.path if parts.path not in {"", "/"} else default_path
    if parts.query:
        path += "?" + parts.query
    return Endpoint(host=parts.hostname, port=port, path=path, secure=secure)


def client_ssl_context(verify: ssl.SSLContext | str | bool) -> ssl.SSLContext:
    """A client TLS context: the system trust store (``True``), a CA bundle
    (a path), no verification (``False``, for development only), or a
    context of the caller's, used as given.

    Contexts built here refuse anything below TLS 1.3 (OCP §3.1).
    """
    if isinstance(verify, ssl.SSLContext):
        return verify
    if isinstance(verify, str):
        context = ssl.create_default_context(cafile=verify)
    else:
        context = ssl.create_default_context()
        if not verify:
            context.check_hostname = False
            context.verify_mode = ssl.CERT_NONE
    context.minimum_version = ssl.TLSVersion.TLSv1_3
    return context


def tcp_connector(ssl_context: ssl.SSLContext | None) -> ConnectStream:
    """The default :data:`ConnectStream`: TCP, with TLS for secure endpoints."""

    async def connect(endpoint: Endpoint) -> anyio.abc.ByteStream:
        if endpoint.secure:
            return await anyio.connect_tcp(
                endpoint.host,
                endpoint.port,
                tls=True,
                ssl_context=ssl_context or client_ssl_context(True),
                # A WebSocket ends with its own close handshake; waiting for
                # TLS close_notify as well only hangs on peers that skip it.
                tls_standard_compatible=False,
            )
        return await anyio.connect_tcp(endpoint.host, endpoint.port)

    return connect


class WebSocket:
    """An open client connection (after the HTTP upgrade)."""

    def __init__(
        self,
        stream: anyio.abc.ByteStream,
        connection: WSConnection,
        *,
        subprotocol: str | None,
        pending: list[Event],
        max_message_size: int,
    ) -> None:
        self.subprotocol = subprotocol
        self._stream = stream
        self._ws = connection
        self._events: deque[Event] = deque(pending)
        self._send_lock = anyio.Lock()
        self._max = max_message_size
        self._parts: list[str] = []
        self._size = 0
        self._closed: WebSocketClosed | None = None
        self.last_received = anyio.current_time()

    @property
    def closed(self) -> WebSocketClosed | None:
        """Why the connection ended, once it has."""
        return self._closed

    @property
    def is_open(self) -> bool:
        return self._closed is None and self._ws.state is ConnectionState.OPEN

    async def _write(self, data: bytes) -> None:
        async with self._send_lock:
            try:
                await self._stream.send(data)
            except (anyio.BrokenResourceError, anyio.ClosedResourceError, OSError) as exc:
                raise self._lost(f"send failed: {exc}") from None

    def _lost(self, reason: str) -> WebSocketClosed:
        if self._closed is None:
            self._closed = WebSocketClosed(ABNORMAL_CLOSURE, reason)
        return self._closed

    async def send(self, text: str) -> None:
        """Send one text message."""
        if self._closed is not None:
            raise self._closed
        if self._ws.state is not ConnectionState.OPEN:
            raise WebSocketClosed(ABNORMAL_CLOSURE, "closing")
        try:
            data = self._ws.send(TextMessage(data=text))
        except LocalProtocolError as exc:
            raise WebSocketClosed(ABNORMAL_CLOSURE, str(exc)) from None
        await self._write(data)

    async def ping(self, payload: bytes = b"") -> None:
        if self._ws.state is ConnectionState.OPEN and self._closed is None:
            await self._write(self._ws.send(Ping(payload=payload)))

    async def close(self, code: int = 1000, reason: str = "") -> None:
        """Start the close handshake; :meth:`receive` ends when the peer answers."""
        if self._closed is not None or self._ws.state is not ConnectionState.OPEN:
            return
        await self._write(self._ws.send(CloseConnection(code=code, reason=reason or None)))

    async def aclose(self) -> None:
        """Drop the transport now (after :meth:`close`, or instead of it)."""
        self._lost("closed locally")
        with anyio.CancelScope(shield=True):
            await self._stream.aclose()

    async def _next_event(self) -> Event:
        while not self._events:
            try:
                data: bytes | None = await self._stream.receive(_READ_SIZE)
            except anyio.EndOfStream:
                data = None
            except (anyio.BrokenResourceError, anyio.ClosedResourceError, OSError) as exc:
                raise self._lost(f"receive failed: {exc}") from None
            self.last_received = anyio.current_time()
            try:
                self._ws.receive_data(data)
                self._events.extend(self._ws.events())
            except RemoteProtocolError as exc:
                raise self._lost(f"protocol error: {exc}") from None
            if data is None and not self._events:
                raise self._lost("connection closed without a close frame")
        return self._events.popleft()

    async def receive(self) -> str:
        """The next text message; answers pings on the way.

        Raises :class:`WebSocketClosed` once the connection has ended (after
        the peer's close frame, or with 1006 when the stream broke).
        """
        if self._closed is not None:
            raise self._closed
        while True:
            event = await self._next_event()
            if isinstance(event, TextMessage):
                self._size += len(event.data)
                if self._size > self._max:
                    await self._abort(MESSAGE_TOO_BIG, "message too big")
                self._parts.append(event.data)
                if event.message_finished:
                    text = "".join(self._parts)
                    self._parts.clear()
                    self._size = 0
                    return text
            elif isinstance(event, BytesMessage):
                await self._abort(UNSUPPORTED_DATA, "binary frames are not OCP messages")
            elif isinstance(event, Ping):
                if self._ws.state is ConnectionState.OPEN:
                    await self._write(self._ws.send(event.response()))
            elif isinstance(event, CloseConnection):
                if self._ws.state is ConnectionState.REMOTE_CLOSING:
                    try:
                        await self._write(self._ws.send(event.response()))
                    except WebSocketClosed:
                        pass
                self._closed = WebSocketClosed(event.code, event.reason or "")
                raise self._closed

    async def _abort(self, code: int, reason: str) -> NoReturn:
        try:
            await self.close(code, reason)
        except WebSocketClosed:
            pass
        self._closed = WebSocketClosed(code, reason)
        raise self._closed


async def open_websocket(
    endpoint: Endpoint,
    *,
    subprotocols: list[str],
    connect_stream: ConnectStream,
    max_message_size: int,
) -> WebSocket:
    """Connect and upgrade; the server must pick one of ``subprotocols``.

    Raises :class:`WebSocketError`. Bound the time with the caller's cancel
    scope: nothing here waits on its own clock.
    """
    try:
        stream = await connect_stream(endpoint)
    except (OSError, ssl.SSLError, anyio.BrokenResourceError) as exc:
        raise WebSocketError(f"cannot connect to {endpoint.authority}: {exc}") from None
    try:
        return await _upgrade(stream, endpoint, subprotocols, max_message_size)
    except BaseException:
        with anyio.CancelScope(shield=True):
            await stream.aclose()
        raise


async def _upgrade(
    stream: anyio.abc.ByteStream,
    endpoint: Endpoint,
    subprotocols: list[str],
    max_message_size: int,
) -> WebSocket:
    ws = WSConnection(ConnectionType.CLIENT)
    request = Request(host=endpoint.authority, target=endpoint.path, subprotocols=subprotocols)
    try:
        await stream.send(ws.send(request))
    except (anyio.BrokenResourceError, OSError) as exc:
        raise WebSocketError(f"cannot send the upgrade request: {exc}") from None
    reject_status: int | None = None
    reject_body = b""
    while True:
        try:
            data: bytes | None = await stream.receive(_READ_SIZE)
        except anyio.EndOfStream:
            data = None
        except (anyio.BrokenResourceError, OSError) as exc:
            raise WebSocketError(f"upgrade failed: {exc}") from None
        try:
            ws.receive_data(data)
            events = list(ws.events())
        except RemoteProtocolError as exc:
            raise WebSocketError(f"upgrade failed: {exc}") from None
        for index, event in enumerate(events):
            if isinstance(event, AcceptConnection):
                if event.subprotocol not in subprotocols:
                    raise WebSocketError(
                        f"the server did not accept subprotocol {subprotocols[0]!r}"
                    )
                return WebSocket(
                    stream,
                    ws,
                    subprotocol=event.subprotocol,
                    pending=events[index + 1 :],
                    max_message_size=max_message_size,
                )
            if isinstance(event, RejectConnection):
                reject_status = event.status_code
                if not event.has_body:
                    raise WebSocketError(f"upgrade refused with HTTP {reject_status}")
            elif isinstance(event, RejectData):
                reject_body += event.data[: 512 - len(reject_body)]
                if event.body_finished:
                    text = reject_body.decode("utf-8", "replace").strip()
                    raise WebSocketError(
                        f"upgrade refused with HTTP {reject_status}" + (f": {text}" if text else "")
                    )
        if data is None:
            raise WebSocketError("the server closed the connection during the upgrade")
