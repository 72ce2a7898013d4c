"""A stand-in for the node's agent-facing side, for SDK tests.

It speaks OCP §3.1 as D2, D3 and D6 pin it down: the WebSocket upgrade with
subprotocol ``ocp.v1``, ``auth_handshake`` / ``auth_result``, one OCPUMF
message per text frame answered by a ``receipt`` frame, local routing to the
receiver's session (or a queue while it is offline), dedup by message id,
and ``POST /ocp/v1/messages`` with ``Authorization: OCP-Ed25519`` answering
202 or a signed ``error`` message.

Two fronts serve it: :func:`memory_connector` runs wsproto's server side
over in-memory byte streams (no sockets, so trio's autojump clock can drive
timeouts exactly), and :func:`asgi_app` is an ASGI application for hypercorn
over real TLS. Knobs (``reject_auth``, ``reject_codes``, ``drop``...) let a
test make the node misbehave on purpose.
"""

from __future__ import annotations

import json
import math
import os
import socket
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from functools import partial
from typing import Any, Protocol

import anyio
import anyio.abc
import anyio.lowlevel
from anyio.streams.memory import MemoryObjectReceiveStream, MemoryObjectSendStream
from wsproto import ConnectionType, WSConnection
from wsproto.events import (
    AcceptConnection,
    CloseConnection,
    Ping,
    RejectConnection,
    Request,
    TextMessage,
)

from ocpd.client import AgentKey, RegistryError
from ocpd.client.websocket import Endpoint
from ocpd.proto.auth import (
    ReplayWindow,
    parse_authorization,
    verify_authorization,
    verify_ws_auth_handshake,
)
from ocpd.proto.crypto import SigningKey
from ocpd.proto.diddoc import parse_did_document
from ocpd.proto.envelope import build_error_message, sign_message, verify_message
from ocpd.proto.errors import AuthError, MalformedError, NotFoundError, OcpError, RateLimited
from ocpd.proto.ids import derive_agent_id


class Conn(Protocol):
    async def send_text(self, text: str) -> None: ...
    async def receive_text(self) -> str | None: ...
    async def close(self, code: int) -> None: ...


class Directory:
    """Agents' DID documents: the fake registry for the node and for clients."""

    def __init__(self) -> None:
        self.documents: dict[str, dict[str, Any]] = {}
        self.lookups = 0

    def add(self, agent: AgentKey) -> AgentKey:
        self.documents[agent.agent_id] = agent.did_document()
        return agent

    def keys(self, agent_id: str) -> list[bytes]:
        document = self.documents.get(agent_id)
        if document is None:
            raise NotFoundError(f"{agent_id} is not registered")
        return parse_did_document(document).verification_keys()

    async def resolve_did(self, agent_id: str) -> dict[str, Any]:
        self.lookups += 1
        await anyio.lowlevel.checkpoint()
        document = self.documents.get(agent_id)
        if document is None:
            raise RegistryError(404, "OCP-404", "agent not found", {})
        return document


class FakeNode:
    def __init__(self, directory: Directory, *, ttl: int = 86_400, network: str = "testnet"):
        self.directory = directory
        self.key = SigningKey(b"\x42" * 32)
        self.service_agent = derive_agent_id(self.key.public_key, network)
        self.ttl = ttl
        self.replay = ReplayWindow(window=60.0)
        self.sessions: dict[str, list[MemoryObjectSendStream[str]]] = {}
        self.conns: dict[str, list[Conn]] = {}
        self.queued: dict[str, list[str]] = {}
        self.digests: dict[str, str] = {}
        # What happened, for assertions: (anyio time, ...) tuples.
        self.handshakes: list[tuple[float, str]] = []
        self.frames: list[tuple[float, str, dict[str, Any]]] = []  # (time, transport, message)
        self.delivered: list[tuple[float, str, str]] = []  # (time, receiver, message_id)
        # Knobs.
        self.reject_auth: str | None = None
        self.reject_codes: list[str] = []
        self.drop: set[str] = set()  # message types whose next delivery is lost
        self.answer_pings = True
        self.receipts = True
        self.down = False
        self.changed = anyio.Event()

    def _notify(self) -> None:
        self.changed.set()
        self.changed = anyio.Event()

    async def wait_for(self, predicate: Callable[[], bool]) -> None:
        while not predicate():
            await self.changed.wait()

    # --- sessions ---------------------------------------------------------------------

    async def run_session(self, conn: Conn) -> None:
        text = await conn.receive_text()
        if text is None:
            return
        frame = json.loads(text)
        agent_id = frame.get("agent_id")
        try:
            keys = self.directory.keys(agent_id) if isinstance(agent_id, str) else []
            verify_ws_auth_handshake(frame, public_keys=keys, now=time.time(), replay=self.replay)
            if self.reject_auth is not None:
                raise OcpError("refused by the test", code=self.reject_auth)
        except OcpError as exc:
            code = exc.code if not isinstance(exc, NotFoundError) else "OCP-401"
            result = {"frame_type": "auth_result", "status": "rejected", "error_code": code}
            if isinstance(exc, RateLimited) or code == "OCP-429":
                result["retry_after"] = 7
            await conn.send_text(json.dumps(result))
            await conn.close(1008)
            return
        self.handshakes.append((anyio.current_time(), agent_id))
        await conn.send_text(
            json.dumps(
                {
                    "frame_type": "auth_result",
                    "status": "accepted",
                    "session_id": f"sess-{uuid.uuid4()}",
                    "ttl": self.ttl,
                }
            )
        )
        outbox_send, outbox_receive = anyio.create_memory_object_stream[str](math.inf)
        self.sessions.setdefault(agent_id, []).append(outbox_send)
        self.conns.setdefault(agent_id, []).append(conn)
        for queued in self.queued.pop(agent_id, []):
            outbox_send.send_nowait(queued)
        self._notify()
        try:
            async with anyio.create_task_group() as tasks:
                tasks.start_soon(self._write, conn, outbox_receive)
                while True:
                    text = await conn.receive_text()
                    if text is None:
                        break
                    receipt = self.accept(text.encode(), transport="ws", agent=agent_id)
                    if self.receipts:
                        receipt.pop("_error", None)
                        outbox_send.send_nowait(json.dumps(receipt))
                tasks.cancel_scope.cancel()
        finally:
            outbox_send.close()
            outbox_receive.close()
            self.sessions[agent_id].remove(outbox_send)
            self.conns[agent_id].remove(conn)
            self._notify()

    @staticmethod
    async def _write(conn: Conn, outbox: MemoryObjectReceiveStream[str]) -> None:
        async for text in outbox:
            await conn.send_text(text)

    async def kick(self, agent_id: str, code: int = 1001) -> None:
        """Close the agent's sessions (as a node shutting down would)."""
        for conn in list(self.conns.get(agent_id, [])):
            await conn.close(code)

    def inject(self, agent_id: str, text: str) -> None:
        """Deliver raw text to the agent's live session (e.g. a duplicate)."""
        self.sessions[agent_id][-1].send_nowait(text)

    # --- messages ---------------------------------------------------------------------

    def accept(self, raw: bytes, *, transport: str, agent: str | None) -> dict[str, Any]:
        """Check, dedup and route one message; the receipt frame to answer with."""
        message_id = None
        try:
            verified = verify_message(raw, now=time.time(), resolve_keys=self.directory.keys)
            message_id = verified.message_id
            if agent is not None and verified.sender != agent:
                raise AuthError("sender.agent_id is not the agent of this session")
            if self.reject_codes:
                code = self.reject_codes.pop(0)
                if code == "OCP-429":
                    raise RateLimited("slow down", retry_after=3)
                raise OcpError("refused by the test", code=code)
            self.frames.append((anyio.current_time(), transport, verified.message))
            self._notify()
            digest = verified.digest.hex()
            previous = self.digests.get(message_id)
            if previous is not None and previous != digest:
                raise MalformedError("message_id was already used for a different message")
            if previous is None:
                self.digests[message_id] = digest
                self._route(verified.receiver, verified.message_type, raw.decode(), message_id)
        except OcpError as exc:
            # As ocpd does: the signed error message it would answer over HTTP.
            return {
                "frame_type": "receipt",
                "message_id": message_id,
                "status": "rejected",
                "error": self.error_message(exc, message_id),
                "_error": exc,
            }
        return {"frame_type": "receipt", "message_id": message_id, "status": "accepted"}

    def _route(self, receiver: str, message_type: str, text: str, message_id: str) -> None:
        if message_type in self.drop:
            self.drop.discard(message_type)
            return
        live = self.sessions.get(receiver)
        if live:
            live[-1].send_nowait(text)
            self.delivered.append((anyio.current_time(), receiver, message_id))
        else:
            self.queued.setdefault(receiver, []).append(text)

    def http_post(
        self, path: str, headers: dict[str, str], body: bytes
    ) -> tuple[int, dict[str, str], bytes]:
        if path != "/ocp/v1/messages":
            return 404, {}, b""
        try:
            if headers.get("x-ocf-version") != "1.0":
                raise MalformedError("X-OCF-Version must be 1.0")
            header = headers.get("authorization", "")
            agent_id = parse_authorization(header).agent_id
            verify_authorization(
                header,
                method="POST",
                path_and_query=path,
                body=body,
                public_keys=self.directory.keys(agent_id),
                now=time.time(),
                replay=self.replay,
            )
        except OcpError as exc:
            return self._http_error(exc, None)
        receipt = self.accept(body, transport="http", agent=agent_id)
        if receipt["status"] == "accepted":
            return 202, {"content-type": "application/json"}, b'{"status":"accepted"}'
        return self._http_error(receipt["_error"], receipt["message_id"])

    def error_message(self, error: OcpError, message_id: str | None) -> dict[str, Any]:
        return sign_message(
            build_error_message(
                error,
                sender=self.service_agent,
                receiver=self.service_agent,
                now=time.time(),
                reference_message_id=message_id,
            ),
            self.key,
        )

    def _http_error(
        self, error: OcpError, message_id: str | None
    ) -> tuple[int, dict[str, str], bytes]:
        message = self.error_message(error, message_id)
        headers = {"content-type": "application/json"}
        if isinstance(error, RateLimited):
            headers["retry-after"] = str(error.retry_after)
        return error.http_status, headers, json.dumps(message).encode()


# --- memory front ----------------------------------------------------------------------


class MemoryByteStream(anyio.abc.ByteStream):
    """One end of an in-memory byte pipe; :meth:`aclose` wakes a pending receive."""

    def __init__(
        self, send: MemoryObjectSendStream[bytes], receive: MemoryObjectReceiveStream[bytes]
    ) -> None:
        self._send = send
        self._receive = receive
        self._closed = False
        self._scope: anyio.CancelScope | None = None

    async def send(self, item: bytes) -> None:
        if self._closed:
            raise anyio.ClosedResourceError
        try:
            self._send.send_nowait(item)
        except (anyio.BrokenResourceError, anyio.ClosedResourceError):
            raise anyio.BrokenResourceError from None

    async def receive(self, max_bytes: int = 65536) -> bytes:
        if self._closed:
            raise anyio.ClosedResourceError
        data = b""
        with anyio.CancelScope() as scope:
            self._scope = scope
            data = await self._receive.receive()
        self._scope = None
        if scope.cancelled_caught:
            raise anyio.ClosedResourceError
        return data

    async def send_eof(self) -> None:
        self._send.close()

    async def aclose(self) -> None:
        self._closed = True
        if self._scope is not None:
            self._scope.cancel()
        self._send.close()
        self._receive.close()


def memory_pair() -> tuple[MemoryByteStream, MemoryByteStream]:
    a_send, a_receive = anyio.create_memory_object_stream[bytes](math.inf)
    b_send, b_receive = anyio.create_memory_object_stream[bytes](math.inf)
    return MemoryByteStream(a_send, b_receive), MemoryByteStream(b_send, a_receive)


class WsprotoConn:
    """The server side of one WebSocket over a byte stream."""

    def __init__(self, stream: MemoryByteStream, ws: WSConnection, node: FakeNode) -> None:
        self.stream = stream
        self.ws = ws
        self.node = node
        self.parts: list[str] = []
        self.lock = anyio.Lock()

    async def _write(self, data: bytes) -> None:
        async with self.lock:
            try:
                await self.stream.send(data)
            except (anyio.BrokenResourceError, anyio.ClosedResourceError):
                pass

    async def send_text(self, text: str) -> None:
        if self.ws.state.name == "OPEN":
            await self._write(self.ws.send(TextMessage(data=text)))

    async def close(self, code: int) -> None:
        if self.ws.state.name == "OPEN":
            await self._write(self.ws.send(CloseConnection(code=code)))

    async def receive_text(self) -> str | None:
        while True:
            try:
                data: bytes | None = await self.stream.receive()
            except (anyio.EndOfStream, anyio.ClosedResourceError, anyio.BrokenResourceError):
                data = None
            self.ws.receive_data(data)
            for event in self.ws.events():
                if isinstance(event, TextMessage):
                    self.parts.append(event.data)
                    if event.message_finished:
                        text = "".join(self.parts)
                        self.parts.clear()
                        return text
                elif isinstance(event, Ping) and self.node.answer_pings:
                    await self._write(self.ws.send(event.response()))
                elif isinstance(event, CloseConnection):
                    if self.ws.state.name == "REMOTE_CLOSING":
                        await self._write(self.ws.send(event.response()))
                    await self.stream.aclose()
                    return None
            if data is None:
                return None


async def _serve_memory(stream: MemoryByteStream, node: FakeNode) -> None:
    ws = WSConnection(ConnectionType.SERVER)
    request: Request | None = None
    while request is None:
        try:
            data = await stream.receive()
        except (anyio.EndOfStream, anyio.ClosedResourceError):
            return
        ws.receive_data(data)
        for event in ws.events():
            if isinstance(event, Request):
                request = event
    if "ocp.v1" not in request.subprotocols:
        await stream.send(ws.send(RejectConnection(status_code=400)))
        await stream.aclose()
        return
    await stream.send(ws.send(AcceptConnection(subprotocol="ocp.v1")))
    conn = WsprotoConn(stream, ws, node)
    try:
        await node.run_session(conn)
    finally:
        await stream.aclose()


def memory_connector(
    node: FakeNode, tasks: anyio.abc.TaskGroup
) -> Callable[[Endpoint], Awaitable[anyio.abc.ByteStream]]:
    """A ``connect_stream`` for :class:`NodeClient` that reaches ``node`` in memory."""

    async def connect(endpoint: Endpoint) -> anyio.abc.ByteStream:
        await anyio.lowlevel.checkpoint()
        if node.down:
            raise ConnectionRefusedError(111, "Connection refused")
        client, server = memory_pair()
        tasks.start_soon(_serve_memory, server, node)
        return client

    return connect


# --- ASGI front over real TLS --------------------------------------------------------


class _AsgiConn:
    def __init__(self, receive: Any, send: Any) -> None:
        self._receive = receive
        self._send = send
        self.closed = False

    async def send_text(self, text: str) -> None:
        if not self.closed:
            await self._send({"type": "websocket.send", "text": text})

    async def close(self, code: int) -> None:
        if not self.closed:
            self.closed = True
            await self._send({"type": "websocket.close", "code": code})

    async def receive_text(self) -> str | None:
        while True:
            event = await self._receive()
            if event["type"] == "websocket.receive":
                if event.get("text") is not None:
                    return str(event["text"])
            elif event["type"] == "websocket.disconnect":
                self.closed = True
                return None


async def answer_lifespan(receive: Any, send: Any) -> None:
    """Answer an ASGI ``lifespan`` scope: startup and shutdown both complete."""
    while True:
        event = await receive()
        if event["type"] == "lifespan.startup":
            await send({"type": "lifespan.startup.complete"})
        elif event["type"] == "lifespan.shutdown":
            await send({"type": "lifespan.shutdown.complete"})
            return


async def read_body(receive: Any) -> bytes:
    """The whole body of an ASGI HTTP request."""
    body = b""
    while True:
        event = await receive()
        body += event.get("body", b"")
        if not event.get("more_body"):
            return body


async def send_json(send: Any, status: int, answer: Any) -> None:
    """Answer an ASGI HTTP request with ``answer`` as JSON."""
    headers = [(b"content-type", b"application/json")]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": json.dumps(answer).encode()})


def asgi_app(node: FakeNode) -> Callable[..., Awaitable[None]]:
    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] == "lifespan":
            await answer_lifespan(receive, send)
            return
        if scope["type"] == "websocket":
            await receive()  # websocket.connect
            if scope["path"] != "/ocp/v1/ws" or "ocp.v1" not in scope.get("subprotocols", []):
                await send({"type": "websocket.close", "code": 1002})
                return
            await send({"type": "websocket.accept", "subprotocol": "ocp.v1"})
            await node.run_session(_AsgiConn(receive, send))
            return
        body = await read_body(receive)
        headers = {k.decode().lower(): v.decode() for k, v in scope["headers"]}
        status, out_headers, out_body = node.http_post(scope["path"], headers, body)
        await send(
            {
                "type": "http.response.start",
                "status": status,
                "headers": [(k.encode(), v.encode()) for k, v in out_headers.items()],
            }
        )
        await send({"type": "http.response.body", "body": out_body})

    return app


def _listening_config(*, graceful_timeout: float) -> tuple[Any, int]:
    """A hypercorn config bound to a free port on 127.0.0.1, and the port.

    The listening socket is bound here and handed over as ``fd://``, so the
    port is known before the server starts.
    """
    from hypercorn.config import Config

    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(64)
    port = listener.getsockname()[1]
    config = Config()
    config.bind = [f"fd://{os.dup(listener.fileno())}"]
    listener.close()
    config.accesslog = None
    config.graceful_timeout = graceful_timeout
    return config, port


@asynccontextmanager
async def serve_tls(app: Callable[..., Awaitable[None]], cert: str, key: str) -> AsyncIterator[int]:
    """Serve ``app`` with hypercorn on 127.0.0.1 (TLS 1.3) under the running loop.

    Yields the port. The listening socket is bound here and handed over as
    ``fd://``, so the port is known under asyncio too.
    """
    import sniffio

    config, port = _listening_config(graceful_timeout=1.0)
    config.certfile = cert
    config.keyfile = key
    stop = anyio.Event()
    async with anyio.create_task_group() as tasks:
        if sniffio.current_async_library() == "trio":
            from hypercorn.trio import serve as trio_serve

            await tasks.start(partial(trio_serve, app, config, shutdown_trigger=stop.wait))
        else:
            from hypercorn.asyncio import serve as asyncio_serve

            tasks.start_soon(partial(asyncio_serve, app, config, shutdown_trigger=stop.wait))
        try:
            yield port
        finally:
            stop.set()


@asynccontextmanager
async def serve_plain(app: Callable[..., Awaitable[None]]) -> AsyncIterator[str]:
    """``app`` served by hypercorn on 127.0.0.1 without TLS, under trio; yields its base URL."""
    from hypercorn.trio import serve

    config, port = _listening_config(graceful_timeout=0.5)
    stop = anyio.Event()
    async with anyio.create_task_group() as tasks:
        await tasks.start(partial(serve, app, config, shutdown_trigger=stop.wait))
        try:
            yield f"http://127.0.0.1:{port}"
        finally:
            stop.set()
