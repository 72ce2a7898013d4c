"""The SDK's WebSocket client (wsproto over anyio) against a scripted wsproto server."""

from __future__ import annotations

import ssl
from collections.abc import Awaitable, Callable

import anyio
import pytest
import trio
from wsproto import ConnectionType, WSConnection
from wsproto.events import (
    AcceptConnection,
    BytesMessage,
    CloseConnection,
    Event,
    Ping,
    Pong,
    RejectConnection,
    RejectData,
    Request,
    TextMessage,
)

from fake_node import MemoryByteStream, memory_pair
from ocpd.client.websocket import (
    Endpoint,
    WebSocket,
    WebSocketClosed,
    WebSocketError,
    client_ssl_context,
    open_websocket,
    parse_endpoint,
)

ENDPOINT = Endpoint(host="node.test", port=8421, path="/ocp/v1/ws", secure=True)


class Server:
    """The peer: a wsproto server driven by the test, one step at a time."""

    def __init__(self, stream: MemoryByteStream) -> None:
        self.stream = stream
        self.ws = WSConnection(ConnectionType.SERVER)
        self.events: list[Event] = []

    async def next_event(self) -> Event:
        while not self.events:
            try:
                data: bytes | None = await self.stream.receive()
            except anyio.EndOfStream:
                data = None
            self.ws.receive_data(data)
            self.events.extend(self.ws.events())
            if data is None and not self.events:
                raise EOFError
        return self.events.pop(0)

    async def send(self, event: Event) -> None:
        await self.stream.send(self.ws.send(event))

    async def accept(self, subprotocol: str | None = "ocp.v1") -> Request:
        request = await self.next_event()
        assert isinstance(request, Request)
        await self.send(AcceptConnection(subprotocol=subprotocol))
        return request


async def connected(
    script: Callable[[Server], Awaitable[None]], nursery: trio.Nursery, **kwargs: int
) -> WebSocket:
    client_stream, server_stream = memory_pair()

    async def run_script() -> None:
        try:
            await script(Server(server_stream))
        finally:
            await server_stream.aclose()

    nursery.start_soon(run_script)

    async def connect(endpoint: Endpoint) -> anyio.abc.ByteStream:
        return client_stream

    return await open_websocket(
        ENDPOINT,
        subprotocols=["ocp.v1"],
        connect_stream=connect,
        max_message_size=kwargs.get("max_message_size", 1 << 20),
    )


@pytest.mark.parametrize(
    ("url", "kind", "expected"),
    [
        ("wss://node.example", "ws", ("node.example", 443, "/ocp/v1/ws", True)),
        ("wss://node.example:8421/", "ws", ("node.example", 8421, "/ocp/v1/ws", True)),
        ("https://node.example:8421", "ws", ("node.example", 8421, "/ocp/v1/ws", True)),
        ("wss://[::1]:8421/custom?x=1", "ws", ("::1", 8421, "/custom?x=1", True)),
        ("ws://127.0.0.1:8421", "ws", ("127.0.0.1", 8421, "/ocp/v1/ws", False)),
        ("http://localhost:8420", "http", ("localhost", 8420, "/ocp/v1/messages", False)),
        ("https://node.example", "http", ("node.example", 443, "/ocp/v1/messages", True)),
    ],
)
def test_endpoints(url: str, kind: str, expected: tuple[str, int, str, bool]) -> None:
    default = "/ocp/v1/ws" if kind == "ws" else "/ocp/v1/messages"
    endpoint = parse_endpoint(url, kind=kind, default_path=default)
    assert (endpoint.host, endpoint.port, endpoint.path, endpoint.secure) == expected


@pytest.mark.parametrize(
    ("url", "kind", "error"),
    [
        ("ws://node.example:8421", "ws", "unencrypted"),
        ("http://10.0.0.1:8420", "http", "unencrypted"),
        ("wss://node.example", "http", "https://"),
        ("ftp://node.example", "ws", "wss://"),
        ("wss://user:pw@node.example", "ws", "credentials"),
        ("wss://node.example:99999", "ws", "port"),
        ("wss:///path", "ws", "wss://"),
    ],
)
def test_refused_endpoints(url: str, kind: str, error: str) -> None:
    with pytest.raises(ValueError, match=error):
        parse_endpoint(url, kind=kind, default_path="/")


def test_tls_contexts_require_tls_13() -> None:
    assert client_ssl_context(True).minimum_version == ssl.TLSVersion.TLSv1_3
    loose = client_ssl_context(False)
    assert loose.verify_mode == ssl.CERT_NONE
    assert loose.minimum_version == ssl.TLSVersion.TLSv1_3
    own = ssl.create_default_context()
    assert client_ssl_context(own) is own


async def test_upgrade_offers_the_subprotocol_and_reassembles_fragments() -> None:
    seen: list[Request] = []

    async def script(server: Server) -> None:
        seen.append(await server.accept())
        await server.send(TextMessage(data="hel", message_finished=False))
        await server.send(TextMessage(data="lo", message_finished=True))
        await server.send(Ping(payload=b"p"))
        pong = await server.next_event()
        assert isinstance(pong, Pong)
        assert pong.payload == b"p"
        await server.send(CloseConnection(code=1001, reason="bye"))
        reply = await server.next_event()
        assert isinstance(reply, CloseConnection)

    with trio.fail_after(5):
        async with trio.open_nursery() as nursery:
            ws = await connected(script, nursery)
            assert ws.subprotocol == "ocp.v1"
            assert await ws.receive() == "hello"
            with pytest.raises(WebSocketClosed) as closed:
                await ws.receive()
            assert (closed.value.code, closed.value.reason) == (1001, "bye")
            assert ws.closed is closed.value
            with pytest.raises(WebSocketClosed):
                await ws.send("late")
            await ws.aclose()
    assert seen[0].subprotocols == ["ocp.v1"]
    assert seen[0].host == "node.test:8421"
    assert seen[0].target == "/ocp/v1/ws"


async def test_client_close_handshake() -> None:
    async def script(server: Server) -> None:
        await server.accept()
        text = await server.next_event()
        assert isinstance(text, TextMessage)
        close = await server.next_event()
        assert isinstance(close, CloseConnection)
        assert close.code == 1000
        await server.send(close.response())

    with trio.fail_after(5):
        async with trio.open_nursery() as nursery:
            ws = await connected(script, nursery)
            await ws.send("one")
            await ws.close(1000, "done")
            assert not ws.is_open
            with pytest.raises(WebSocketClosed) as closed:
                await ws.receive()
            assert closed.value.code == 1000
            await ws.aclose()


@pytest.mark.parametrize(
    ("event", "code"),
    [(TextMessage(data="x" * 100), 1009), (BytesMessage(data=b"\x00"), 1003)],
)
async def test_oversized_and_binary_messages_end_the_connection(event: Event, code: int) -> None:
    async def script(server: Server) -> None:
        await server.accept()
        await server.send(event)
        close = await server.next_event()
        assert isinstance(close, CloseConnection)
        assert close.code == code

    with trio.fail_after(5):
        async with trio.open_nursery() as nursery:
            ws = await connected(script, nursery, max_message_size=10)
            with pytest.raises(WebSocketClosed) as closed:
                await ws.receive()
            assert closed.value.code == code
            await ws.aclose()


async def test_a_dropped_stream_is_1006() -> None:
    async def script(server: Server) -> None:
        await server.accept()
        await server.stream.aclose()

    with trio.fail_after(5):
        async with trio.open_nursery() as nursery:
            ws = await connected(script, nursery)
            with pytest.raises(WebSocketClosed) as closed:
                await ws.receive()
            assert closed.value.code == 1006
            await ws.aclose()


async def test_refused_upgrades() -> None:
    async def refuse(server: Server) -> None:
        await server.next_event()
        await server.send(RejectConnection(status_code=403, has_body=True))
        await server.send(RejectData(data=b"no subprotocol", body_finished=True))

    async def wrong_subprotocol(server: Server) -> None:
        await server.accept(subprotocol=None)

    with trio.fail_after(5):
        async with trio.open_nursery() as nursery:
            with pytest.raises(WebSocketError, match="HTTP 403: no subprotocol"):
                await connected(refuse, nursery)
            with pytest.raises(WebSocketError, match="subprotocol"):
                await connected(wrong_subprotocol, nursery)


async def test_connection_errors_become_websocket_errors() -> None:
    async def refuse(endpoint: Endpoint) -> anyio.abc.ByteStream:
        raise ConnectionRefusedError(111, "Connection refused")

    with trio.fail_after(5), pytest.raises(WebSocketError, match=r"node\.test:8421"):
        await open_websocket(
            ENDPOINT, subprotocols=["ocp.v1"], connect_stream=refuse, max_message_size=10
        )
