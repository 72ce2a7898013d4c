"""The node's server: ASGI over trio, h11 and wsproto's handshake, without hypercorn.

It serves both of the node's ports: ``POST /ocp/v1/messages`` on the HTTP
port and the sessions on the WebSocket port. Hypercorn serves the other
components' ports. On both node ports hypercorn's per-event machinery (each
event through its stream, protocol and server layers, then one TLS record
and one ``send()`` per event) cost more than the messages' own checks; see
decisions 95 and 99.

Theory of operation
-------------------
Each connection is one task. It reads the request head (TLS handshake and
head within ``handshake_timeout``, head at most ``MAX_HEAD_BYTES``) and
then either

* upgrades to WebSocket (wsproto's handshake, then :mod:`ocpd.wsframes`
  for the frames): the app gets an ASGI ``websocket`` scope. Its
  ``receive()`` reads the connection itself (no reading task: an
  idle session is the app's one waiting task), answers pings, and sends a
  ping of its own after ``ping_interval`` of silence (a connection silent
  for another interval is dropped). A message that grows past
  ``max_message_bytes`` is refused with close 1009 as soon as it does,
  before it is buffered whole. Or
* serves HTTP/1.1 (h11) to the same app, one request at a time on a
  keep-alive connection: the next request's first byte must come within
  ``keep_alive_timeout`` and its head within ``handshake_timeout`` after
  that; a body that stalls for ``keep_alive_timeout`` is abandoned. ``Expect:
  100-continue`` is answered when the app first reads the body, so a request
  refused on its headers never sends its body; an answer given before the
  request's body was read says ``Connection: close``, as the connection
  then closes. An answer's head leaves with its body's first part. A
  request the app fails on gets 500. TLS offers only ``http/1.1`` in ALPN.

``send()`` only queues the frame's bytes; a writer task, started when
something is queued and gone once all of it is sent, sends everything
queued in one ``send_all``: frames produced in the same scheduling round
leave in one TLS record and one system call. Producers wait only while more
than ``HIGH_WATER`` bytes are queued. Once upgraded, a session keeps only
its frame reader's state, not the handshake's HTTP parsing.

Once ``shutdown_trigger`` returns the listeners close; connections end on
their own (the app closes its sessions when the daemon stops) or when the
caller cancels.
"""

from __future__ import annotations

import logging
import ssl
from email.utils import formatdate
from functools import partial
from http import HTTPStatus
from typing import TYPE_CHECKING, Any, Final
from urllib.parse import unquote

import attrs
import h11
import trio
from hypercorn.utils import repr_socket_addr
from wsproto.connection import ConnectionType
from wsproto.events import AcceptConnection, RejectConnection, Request
from wsproto.handshake import H11Handshake
from wsproto.utilities import LocalProtocolError, RemoteProtocolError

from ocpd.clock import WallClock
from ocpd.logs import get_logger, log_event
from ocpd.ondemand import OnDemand
from ocpd.wsframes import (
    CLOSE_NO_STATUS,
    Close,
    FrameError,
    FrameReader,
    Message,
    Ping,
    binary_frame,
    close_frame,
    ping_frame,
    pong_frame,
    text_frame,
)

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable, MutableMapping

    from hypercorn.config import Config as HypercornConfig

    from ocpd.asgi import ASGIApp

__all__ = ["ACCEPTED_EXTENSION", "ServerSettings", "serve_asgi"]


#: The ASGI scope extension that carries the TCP accept time (``{"at": trio time}``).
ACCEPTED_EXTENSION: Final = "ocpd.accepted"
MAX_HEAD_BYTES: Final = 16_384
READ_BYTES: Final = 65_536
HIGH_WATER: Final = 262_144
CLOSE_ABNORMAL: Final = 1006
_STREAM_ERRORS: Final = (trio.BrokenResourceError, trio.ClosedResourceError, ssl.SSLError, OSError)

log = get_logger("server")


@attrs.frozen
class ServerSettings:
    max_message_bytes: int
    ping_interval: float
    handshake_timeout: float
    keep_alive_timeout: float = 5.0


class _Writer:
    """Queued outgoing bytes and the task that sends them, which runs only while there is
    something to send: frames queued in the same scheduling round leave in one ``send_all``."""

    __slots__ = ("broken", "queued", "sender", "size", "stream")

    def __init__(self, stream: trio.abc.Stream, nursery: trio.Nursery) -> None:
        self.stream = stream
        self.queued: list[bytes] = []
        self.size = 0
        self.broken = False
        self.sender = OnDemand(nursery, self._send_queued)

    async def put(self, data: bytes) -> None:
        if self.broken:
            raise trio.BrokenResourceError("connection lost")
        self.queued.append(data)
        self.size += len(data)
        self.sender.kick()
        if self.size > HIGH_WATER:
            await self.settle()

    async def _send_queued(self) -> None:
        try:
            while self.queued:
                chunk = b"".join(self.queued)
                self.queued.clear()
                self.size = 0
                await self.stream.send_all(chunk)
        except _STREAM_ERRORS:
            self.broken = True
            self.queued.clear()
            self.size = 0

    async def settle(self) -> None:
        """Wait until what is queued has been sent (or the connection broke)."""
        await self.sender.settle()


class _WebSocket:
    """One upgraded connection as ASGI ``receive``/``send``.

    There is no reading task: ``receive()`` reads the connection itself, so an
    idle session costs one waiting task (the app's).
    """

    __slots__ = (
        "accepted",
        "closed",
        "connected",
        "ended",
        "handshake",
        "pinged",
        "reader",
        "ready",
        "settings",
        "stream",
        "trailing",
        "writer",
    )

    def __init__(
        self,
        stream: trio.abc.Stream,
        handshake: H11Handshake,
        settings: ServerSettings,
        writer: _Writer,
        trailing: bytes,
    ) -> None:
        self.stream = stream
        self.handshake: H11Handshake | None = handshake
        self.reader: FrameReader | None = None
        self.settings = settings
        self.writer = writer
        self.connected = False
        self.accepted = False
        self.closed = False
        #: Set once the connection ended: the close code ``receive()`` reports.
        self.ended: int | None = None
        #: Messages read but not yet taken by the app.
        self.ready: list[MutableMapping[str, Any]] = []
        self.pinged = False
        #: Bytes that came after the upgrade request, parsed once accepted.
        self.trailing = trailing

    async def receive(self) -> MutableMapping[str, Any]:
        if not self.connected:
            self.connected = True
            return {"type": "websocket.connect"}
        if self.reader is None:
            # Nothing is read before the app accepts (ASGI: it answers the connect first).
            await trio.sleep_forever()
        while not self.ready:
            if self.ended is not None:
                return {"type": "websocket.disconnect", "code": self.ended}
            await self._read()
        return self.ready.pop(0)

    async def send(self, message: MutableMapping[str, Any]) -> None:
        kind = message["type"]
        if self.closed:
            return
        if kind == "websocket.send":
            if self.reader is None:
                raise LocalProtocolError("websocket.send before websocket.accept")
            text = message.get("text")
            if isinstance(text, str):
                await self.writer.put(text_frame(text))
            else:
                await self.writer.put(binary_frame(bytes(message["bytes"])))
        elif kind == "websocket.accept":
            if self.handshake is None:
                raise LocalProtocolError("websocket.accept sent twice")
            headers = [(bytes(k), bytes(v)) for k, v in message.get("headers", ())]
            data = self.handshake.send(
                AcceptConnection(subprotocol=message.get("subprotocol"), extra_headers=headers)
            )
            # The handshake (and its h11 connection) is done with: keep only the frames' state.
            self.handshake = None
            self.reader = FrameReader(self.settings.max_message_bytes)
            self.accepted = True
            await self.writer.put(data)
        elif kind == "websocket.close":
            self.closed = True
            if self.reader is None:
                # Closing before accepting refuses the upgrade (ASGI): HTTP 403.
                assert self.handshake is not None  # noqa: S101 - one of the two is always set
                await self.writer.put(self.handshake.send(RejectConnection(status_code=403)))
            else:
                code = int(message.get("code") or 1000)
                await self.writer.put(close_frame(code, message.get("reason") or ""))
        else:
            raise ValueError(f"unexpected ASGI message {kind!r}")

    async def _read(self) -> None:
        """One read from the connection: messages to :attr:`ready`, or :attr:`ended` set."""
        if self.trailing:
            trailing, self.trailing = self.trailing, b""
            await self._absorb(trailing)
            return
        with trio.move_on_after(self.settings.ping_interval) as idle:
            try:
                data = await self.stream.receive_some(READ_BYTES)
            except _STREAM_ERRORS:
                self.ended = CLOSE_ABNORMAL
                return
        if idle.cancelled_caught:
            if self.pinged:
                self.ended = CLOSE_ABNORMAL
                return
            self.pinged = True
            await self._put(ping_frame(b"ocpd"))
            return
        self.pinged = False
        if not data:
            self.ended = CLOSE_ABNORMAL
            return
        await self._absorb(data)

    async def _absorb(self, data: bytes | bytearray) -> None:
        """Handle the frames ``data`` completes."""
        reader = self.reader
        assert reader is not None  # noqa: S101 - receive() reads only once accepted
        try:
            events = reader.feed(data)
        except FrameError as exc:
            await self._close(exc.code)
            self.ended = exc.code
            return
        for event in events:
            if isinstance(event, Message):
                if isinstance(event.data, str):
                    self.ready.append({"type": "websocket.receive", "text": event.data})
                else:
                    self.ready.append({"type": "websocket.receive", "bytes": event.data})
            elif isinstance(event, Ping):
                await self._put(pong_frame(event.payload))
            elif isinstance(event, Close):
                if not self.closed:
                    self.closed = True
                    echoed = None if event.code == CLOSE_NO_STATUS else event.code
                    await self._put(close_frame(echoed))
                self.ended = event.code
                return

    async def _put(self, data: bytes) -> None:
        try:
            await self.writer.put(data)
        except trio.BrokenResourceError:
            pass

    async def _close(self, code: int) -> None:
        if not self.closed and self.reader is not None:
            self.closed = True
            await self._put(close_frame(code))


def _scope_base(request: h11.Request, stream: trio.abc.Stream) -> dict[str, Any]:
    target = request.target
    path, _, query = target.partition(b"?")
    client = server = None
    socket_stream = stream.transport_stream if isinstance(stream, trio.SSLStream) else stream
    if isinstance(socket_stream, trio.SocketStream):
        peer, local = socket_stream.socket.getpeername(), socket_stream.socket.getsockname()
        client, server = (str(peer[0]), int(peer[1])), (str(local[0]), int(local[1]))
    return {
        "asgi": {"version": "3.0", "spec_version": "2.3"},
        "http_version": "1.1",
        "path": unquote(path.decode("ascii", "replace")),
        "raw_path": path,
        "query_string": query,
        "root_path": "",
        "headers": [(bytes(name), bytes(value)) for name, value in request.headers],
        "client": client,
        "server": server,
        "extensions": {},
        "state": {},
    }


async def _read_head(stream: trio.abc.Stream) -> bytes | None:
    buffer = b""
    while b"\r\n\r\n" not in buffer:
        if len(buffer) > MAX_HEAD_BYTES:
            return None
        data = await stream.receive_some(READ_BYTES)
        if not data:
            return None
        buffer += data
    return buffer


def _is_upgrade(request: h11.Request) -> bool:
    for name, value in request.headers:
        if name == b"upgrade" and value.lower() == b"websocket":
            return True
    return False


async def _simple_response(stream: trio.abc.Stream, status: HTTPStatus) -> None:
    """An empty answer, then the connection closes (the request could not be read)."""
    head = (
        f"HTTP/1.1 {status.value} {status.phrase}\r\ncontent-length: 0\r\nconnection: close\r\n\r\n"
    )
    with trio.move_on_after(1):
        await stream.send_all(head.encode("ascii"))


@attrs.define(eq=False)
class _Opening:
    """A connection's request head, parsed; dropped once the app has its scope."""

    head: bytes
    request: h11.Request
    probe: h11.Connection


class _Server:
    def __init__(
        self, app: ASGIApp, settings: ServerSettings, secure: bool, clock: WallClock | None = None
    ) -> None:
        self.app = app
        self.settings = settings
        self.secure = secure
        self.clock = clock if clock is not None else WallClock()
        self._date_at = -1
        self._date_value = b""

    async def connection(self, stream: trio.abc.Stream) -> None:
        accepted_at = trio.current_time()
        try:
            opening: _Opening | None = None
            with trio.move_on_after(self.settings.handshake_timeout):
                opening = await self._open(stream)
            if opening is None:
                return
            if _is_upgrade(opening.request):
                await self._websocket(stream, opening, accepted_at)
            else:
                await self._http(stream, opening.probe, opening.request)
        except _STREAM_ERRORS:
            pass
        except Exception as exc:  # one connection must never end the server
            log_event(log, "connection_failed", level=logging.ERROR, error=repr(exc))
        finally:
            await trio.aclose_forcefully(stream)

    @staticmethod
    async def _open(stream: trio.abc.Stream) -> _Opening | None:
        """The request head, or ``None`` once an unreadable one was answered."""
        head = await _read_head(stream)
        if head is None:
            await _simple_response(stream, HTTPStatus.REQUEST_HEADER_FIELDS_TOO_LARGE)
            return None
        probe = h11.Connection(h11.SERVER)
        probe.receive_data(head)
        try:
            request = probe.next_event()
        except h11.RemoteProtocolError:
            await _simple_response(stream, HTTPStatus.BAD_REQUEST)
            return None
        if not isinstance(request, h11.Request):
            return None
        return _Opening(head, request, probe)

    async def _websocket(
        self, stream: trio.abc.Stream, opening: _Opening, accepted_at: float
    ) -> None:
        handshake = H11Handshake(ConnectionType.SERVER)
        try:
            handshake.receive_data(opening.head)
            upgrade = next(iter(handshake.events()), None)
        except RemoteProtocolError:
            upgrade = None
        if not isinstance(upgrade, Request):
            await _simple_response(stream, HTTPStatus.BAD_REQUEST)
            return
        scope = _scope_base(opening.request, stream)
        # Frames the client sent right behind its upgrade request.
        trailing = opening.head[opening.head.index(b"\r\n\r\n") + 4 :]
        # The session lasts long: keep none of the head's parsing.
        del opening.head, opening.request, opening.probe
        scope.update(
            type="websocket",
            scheme="wss" if self.secure else "ws",
            subprotocols=list(upgrade.subprotocols),
        )
        del upgrade
        # When the TCP connection was accepted (trio's clock), for deadlines
        # that run from there rather than from the upgrade.
        scope["extensions"][ACCEPTED_EXTENSION] = {"at": accepted_at}
        async with trio.open_nursery() as nursery:
            writer = _Writer(stream, nursery)
            session = _WebSocket(stream, handshake, self.settings, writer, trailing)
            del handshake
            await self.app(scope, session.receive, session.send)
            if not session.accepted and not session.closed:
                await session.send({"type": "websocket.close", "code": 1000})
            # Let what the app queued last (its close frame) leave.
            with trio.move_on_after(1):
                await writer.settle()
            nursery.cancel_scope.cancel()

    async def _http(
        self, stream: trio.abc.Stream, connection: h11.Connection, request: Any
    ) -> None:
        """Requests one at a time on a keep-alive connection (pipelined ones wait their turn)."""
        while isinstance(request, h11.Request):
            await self._one_request(stream, connection, request)
            if connection.our_state is not h11.DONE or connection.their_state is not h11.DONE:
                return
            connection.start_next_cycle()
            try:
                request = await self._next_request(stream, connection)
            except h11.RemoteProtocolError:
                await _simple_response(stream, HTTPStatus.BAD_REQUEST)
                return

    async def _next_request(self, stream: trio.abc.Stream, connection: h11.Connection) -> Any:
        """The next request on the connection, or ``None`` when it closes or times out.

        Its first byte must come within ``keep_alive_timeout`` of the last
        answer, and the rest of its head within ``handshake_timeout`` after that.
        """
        event = connection.next_event()
        if event is not h11.NEED_DATA:
            return event
        if not await self._read_more(stream, connection):
            return None
        with trio.move_on_after(self.settings.handshake_timeout):
            return await self._next_event(stream, connection)
        return None

    async def _next_event(self, stream: trio.abc.Stream, connection: h11.Connection) -> Any:
        """The next h11 event; ``None`` after ``keep_alive_timeout`` without a byte."""
        while True:
            event = connection.next_event()
            if event is not h11.NEED_DATA:
                return event
            if not await self._read_more(stream, connection):
                return None

    async def _read_more(self, stream: trio.abc.Stream, connection: h11.Connection) -> bool:
        """Feed h11 what arrives within ``keep_alive_timeout``; false if nothing did."""
        with trio.move_on_after(self.settings.keep_alive_timeout) as idle:
            data = await stream.receive_some(READ_BYTES)
        if idle.cancelled_caught:
            return False
        connection.receive_data(bytes(data))
        return True

    async def _one_request(
        self, stream: trio.abc.Stream, connection: h11.Connection, request: h11.Request
    ) -> None:
        scope = _scope_base(request, stream)
        scope.update(
            type="http",
            scheme="https" if self.secure else "http",
            method=request.method.decode("ascii"),
            http_version=request.http_version.decode("ascii"),
        )
        head_only = request.method == b"HEAD"
        started = gone = False
        held = b""

        async def receive() -> MutableMapping[str, Any]:
            nonlocal gone
            if gone:
                return {"type": "http.disconnect"}
            if connection.they_are_waiting_for_100_continue:
                # The client holds its body back until told to send it.
                await stream.send_all(
                    connection.send(h11.InformationalResponse(status_code=100, headers=[])) or b""
                )
            try:
                event = await self._next_event(stream, connection)
            except h11.RemoteProtocolError:
                event = None
            if isinstance(event, h11.Data):
                return {"type": "http.request", "body": bytes(event.data), "more_body": True}
            if isinstance(event, h11.EndOfMessage):
                return {"type": "http.request", "body": b"", "more_body": False}
            gone = True
            return {"type": "http.disconnect"}

        async def send(message: MutableMapping[str, Any]) -> None:
            nonlocal started, held
            if message["type"] == "http.response.start":
                started = True
                headers = [(bytes(k), bytes(v)) for k, v in message.get("headers", ())]
                headers.append((b"date", self._date()))
                if connection.their_state is not h11.DONE and not any(
                    name.lower() == b"connection" for name, _ in headers
                ):
                    # Answered before the body was read: the connection cannot be
                    # reused, and the client must know before it tries.
                    headers.append((b"connection", b"close"))
                response = h11.Response(status_code=int(message["status"]), headers=headers)
                # Held back to leave with the body's first part (one TLS record, one send).
                held = connection.send(response) or b""
            elif message["type"] == "http.response.body":
                body = b"" if head_only else bytes(message.get("body", b""))
                chunk = (connection.send(h11.Data(data=body)) or b"") if body else b""
                out = [held, chunk]
                held = b""
                if not message.get("more_body", False):
                    out.append(connection.send(h11.EndOfMessage()) or b"")
                await stream.send_all(b"".join(out))

        failed = False
        try:
            await self.app(scope, receive, send)
        except Exception as exc:
            failed = True
            log_event(
                log, "request_failed", level=logging.ERROR, path=scope["path"], error=repr(exc)
            )
        complete = started and not held and connection.our_state is h11.DONE
        if gone or complete:
            return
        if not started or held:
            # Nothing of an answer has left: a 500, and the connection closes
            # (h11 is left mid-message, so it cannot be reused).
            date = self._date().decode("ascii")
            await stream.send_all(
                b"HTTP/1.1 500 Internal Server Error\r\ncontent-length: 0\r\n"
                + f"connection: close\r\ndate: {date}\r\n\r\n".encode("ascii")
            )
        elif not failed:
            log_event(log, "response_unfinished", level=logging.ERROR, path=scope["path"])

    def _date(self) -> bytes:
        """The ``Date`` header's value, formatted at most once a second."""
        now = int(self.clock.now())
        if now != self._date_at:
            self._date_at, self._date_value = now, formatdate(now, usegmt=True).encode("ascii")
        return self._date_value


async def _lifespan(app: ASGIApp, started: trio.Event, stop: trio.Event) -> None:
    """Run the app's lifespan protocol: startup now, shutdown once ``stop`` is set."""
    phase = "startup"

    async def receive() -> MutableMapping[str, Any]:
        nonlocal phase
        if phase == "startup":
            phase = "running"
            return {"type": "lifespan.startup"}
        await stop.wait()
        return {"type": "lifespan.shutdown"}

    async def send(message: MutableMapping[str, Any]) -> None:
        if message["type"].startswith("lifespan.startup"):
            started.set()

    scope = {"type": "lifespan", "asgi": {"version": "3.0", "spec_version": "2.0"}, "state": {}}
    try:
        await app(scope, receive, send)
    finally:
        started.set()


async def serve_asgi(
    app: ASGIApp,
    config: HypercornConfig,
    settings: ServerSettings,
    *,
    shutdown_trigger: Callable[[], Awaitable[object]],
    clock: WallClock | None = None,
    task_status: trio.TaskStatus[list[str]] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Serve ``app`` on the sockets of a hypercorn ``config`` (binding, TLS) until stopped."""
    sockets = config.create_sockets()
    context: ssl.SSLContext | None = config.create_ssl_context()
    if context is not None:
        context.set_alpn_protocols(["http/1.1"])  # hypercorn's context also offers h2
    listeners: list[trio.abc.Listener[Any]] = []
    binds: list[str] = []
    for sock in sockets.secure_sockets:
        sock.listen(config.backlog)
        plain = trio.SocketListener(trio.socket.from_stdlib_socket(sock))
        assert context is not None  # noqa: S101 - hypercorn makes secure sockets only with TLS
        listeners.append(trio.SSLListener(plain, context, https_compatible=True))
        binds.append(f"https://{repr_socket_addr(sock.family, sock.getsockname())}")
    for sock in sockets.insecure_sockets:
        sock.listen(config.backlog)
        listeners.append(trio.SocketListener(trio.socket.from_stdlib_socket(sock)))
        binds.append(f"http://{repr_socket_addr(sock.family, sock.getsockname())}")
    server = _Server(app, settings, secure=bool(sockets.secure_sockets), clock=clock)
    lifespan_started, lifespan_stop = trio.Event(), trio.Event()
    async with trio.open_nursery() as lifespan:
        lifespan.start_soon(_lifespan, app, lifespan_started, lifespan_stop)
        await lifespan_started.wait()
        try:
            async with trio.open_nursery() as connections:
                async with trio.open_nursery() as accepting:
                    accepting.start_soon(
                        partial(
                            trio.serve_listeners,
                            server.connection,
                            listeners,
                            handler_nursery=connections,
                        )
                    )
                    task_status.started(binds)
                    await shutdown_trigger()
                    accepting.cancel_scope.cancel()
                for listener in listeners:
                    await listener.aclose()
        finally:
            lifespan_stop.set()
