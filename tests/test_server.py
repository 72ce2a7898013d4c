"""The WebSocket port's server, driven over in-memory streams (autojump clock for timeouts)."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, MutableMapping
from contextlib import asynccontextmanager
from typing import Any

import attrs
import pytest
import trio
import trio.testing
from wsproto import ConnectionType, WSConnection
from wsproto.events import (
    AcceptConnection,
    CloseConnection,
    Ping,
    RejectConnection,
    Request,
    TextMessage,
)

from conftest import task_count
from ocpd.asgi import ASGIApp
from ocpd.server import MAX_HEAD_BYTES, ServerSettings, _Server

SETTINGS = ServerSettings(max_message_bytes=1000, ping_interval=10.0, handshake_timeout=5.0)


@attrs.define
class Recorder:
    """An ASGI app that records what it receives and echoes text frames."""

    scopes: list[MutableMapping[str, Any]] = attrs.Factory(list)
    events: list[MutableMapping[str, Any]] = attrs.Factory(list)
    accept: bool = True
    echo_times: int = 1

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        self.scopes.append(scope)
        if scope["type"] == "http":
            body = b""
            while True:
                event = await receive()
                body += event.get("body", b"")
                if not event.get("more_body"):
                    break
            answer = f"{scope['method']} {scope['path']} {len(body)}".encode()
            await send(
                {
                    "type": "http.response.start",
                    "status": 200,
                    "headers": [(b"content-length", str(len(answer)).encode())],
                }
            )
            await send({"type": "http.response.body", "body": answer})
            return
        event = await receive()
        self.events.append(event)
        if not self.accept:
            await send({"type": "websocket.close", "code": 1008})
            return
        await send({"type": "websocket.accept", "subprotocol": "ocp.v1"})
        while True:
            event = await receive()
            self.events.append(event)
            if event["type"] == "websocket.disconnect":
                return
            for _ in range(self.echo_times):
                await send({"type": "websocket.send", "text": event["text"].upper()})


class CountingStream(trio.abc.Stream):
    """The server's end of the connection, counting its writes."""

    def __init__(self, inner: trio.abc.Stream) -> None:
        self.inner = inner
        self.writes: list[bytes] = []

    async def send_all(self, data: bytes | bytearray | memoryview) -> None:
        self.writes.append(bytes(data))
        await self.inner.send_all(data)

    async def wait_send_all_might_not_block(self) -> None:
        await self.inner.wait_send_all_might_not_block()

    async def receive_some(self, max_bytes: int | None = None) -> bytes | bytearray:
        return await self.inner.receive_some(max_bytes)

    async def aclose(self) -> None:
        await self.inner.aclose()


@attrs.define
class Client:
    stream: trio.abc.Stream
    ws: WSConnection = attrs.Factory(lambda: WSConnection(ConnectionType.CLIENT))
    pending: list[Any] = attrs.Factory(list)

    async def handshake(self, subprotocols: list[str] | None = None) -> Any:
        request = Request(host="node.test", target="/ocp/v1/ws", subprotocols=subprotocols or [])
        await self.stream.send_all(self.ws.send(request))
        return await self.next_event()

    async def send_text(self, text: str) -> None:
        await self.stream.send_all(self.ws.send(TextMessage(data=text)))

    async def next_event(self) -> Any:
        while not self.pending:
            data = await self.stream.receive_some(65536)
            if not data:
                return None
            self.ws.receive_data(bytes(data))
            self.pending.extend(self.ws.events())
        return self.pending.pop(0)


@asynccontextmanager
async def served(
    app: ASGIApp, settings: ServerSettings = SETTINGS
) -> AsyncIterator[tuple[trio.abc.Stream, CountingStream]]:
    client_end, server_end = trio.testing.memory_stream_pair()
    counting = CountingStream(server_end)
    server = _Server(app, settings, secure=True)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(server.connection, counting)
        yield client_end, counting
        nursery.cancel_scope.cancel()


async def read_until(stream: trio.abc.Stream, end: bytes) -> bytes:
    data = b""
    with trio.fail_after(5):
        while not data.endswith(end):
            data += await stream.receive_some(65536)
    return data


async def get_health(stream: trio.abc.Stream) -> bytes:
    """Send ``GET /health`` on a kept-alive connection and read the Recorder's answer."""
    await stream.send_all(b"GET /health HTTP/1.1\r\nHost: node.test\r\n\r\n")
    return await read_until(stream, b"GET /health 0")


async def read_all(stream: trio.abc.Stream) -> bytes:
    data = b""
    while chunk := await stream.receive_some(65536):
        data += chunk
    return data


async def test_plain_http_goes_to_the_app_with_keep_alive() -> None:
    app = Recorder()
    async with served(app) as (client, _):
        first = await get_health(client)
        assert first.startswith(b"HTTP/1.1 200 ")
        body = b"hello"
        await client.send_all(
            b"POST /x?y=1 HTTP/1.1\r\nHost: node.test\r\nContent-Length: 5\r\n\r\n" + body
        )
        second = await read_until(client, b"POST /x 5")
        assert second.startswith(b"HTTP/1.1 200 ")
    assert [s["type"] for s in app.scopes] == ["http", "http"]
    assert app.scopes[1]["query_string"] == b"y=1"
    assert app.scopes[1]["scheme"] == "https"


async def test_a_websocket_session_echoes_and_coalesces_writes() -> None:
    app = Recorder(echo_times=5)
    async with served(app) as (client_end, server_end):
        client = Client(client_end)
        accepted = await client.handshake(["ocp.v1"])
        assert isinstance(accepted, AcceptConnection)
        assert accepted.subprotocol == "ocp.v1"
        writes_before = len(server_end.writes)
        await client.send_text("hello")
        echoes = [await client.next_event() for _ in range(5)]
        assert [e.data for e in echoes] == ["HELLO"] * 5
        # Five frames queued in one scheduling round leave in one write.
        assert len(server_end.writes) - writes_before == 1
        await client_end.send_all(client.ws.send(CloseConnection(code=1000)))
        reply = await client.next_event()
        assert isinstance(reply, CloseConnection)
    scope = app.scopes[0]
    assert scope["type"] == "websocket"
    assert scope["subprotocols"] == ["ocp.v1"]
    assert scope["scheme"] == "wss"
    assert app.events[0] == {"type": "websocket.connect"}
    assert app.events[1] == {"type": "websocket.receive", "text": "hello"}
    assert app.events[-1] == {"type": "websocket.disconnect", "code": 1000}


async def test_closing_before_accepting_refuses_the_upgrade_with_403() -> None:
    app = Recorder(accept=False)
    async with served(app) as (client_end, _):
        client = Client(client_end)
        refused = await client.handshake([])
        assert isinstance(refused, RejectConnection)
        assert refused.status_code == 403


async def test_silence_before_the_request_head_ends_the_connection(
    autojump_clock: trio.testing.MockClock,
) -> None:
    app = Recorder()
    async with served(app) as (client, _):
        started = trio.current_time()
        await client.send_all(b"GET /ocp/v1/ws HTTP/1.1\r\n")  # and then nothing
        with trio.fail_after(60):
            assert await read_all(client) == b""
        assert trio.current_time() - started == pytest.approx(SETTINGS.handshake_timeout)
    assert app.scopes == []


async def test_an_oversized_head_is_refused_with_431() -> None:
    app = Recorder()
    async with served(app) as (client, _):
        await client.send_all(b"GET / HTTP/1.1\r\nX-Big: " + b"a" * (MAX_HEAD_BYTES + 10))
        answer = await read_all(client)
        assert answer.startswith(b"HTTP/1.1 431 ")
    assert app.scopes == []


async def test_a_garbled_request_is_refused_with_400() -> None:
    app = Recorder()
    async with served(app) as (client, _):
        await client.send_all(b"NOT HTTP AT ALL\r\n\r\n")
        answer = await read_all(client)
        assert answer.startswith(b"HTTP/1.1 400 ")


async def test_idle_sessions_are_pinged_and_silent_ones_dropped(
    autojump_clock: trio.testing.MockClock,
) -> None:
    app = Recorder()
    async with served(app) as (client_end, _):
        client = Client(client_end)
        await client.handshake(["ocp.v1"])
        opened = trio.current_time()
        ping = await client.next_event()
        assert isinstance(ping, Ping)
        assert trio.current_time() - opened == pytest.approx(SETTINGS.ping_interval)
        await client_end.send_all(client.ws.send(ping.response()))
        # Answered: the session stays; the next ping comes an interval later.
        again = await client.next_event()
        assert isinstance(again, Ping)
        assert trio.current_time() - opened == pytest.approx(2 * SETTINGS.ping_interval)
        # Not answered: dropped one interval after the ping.
        assert await client.next_event() is None
        assert trio.current_time() - opened == pytest.approx(3 * SETTINGS.ping_interval)
    assert app.events[-1] == {"type": "websocket.disconnect", "code": 1006}


async def closed_after(data_for: Callable[[Client], bytes]) -> tuple[int, Recorder]:
    """The close code the server answers ``data_for(client)`` with, sent after the upgrade."""
    app = Recorder()
    async with served(app) as (client_end, _):
        client = Client(client_end)
        await client.handshake(["ocp.v1"])
        await client_end.send_all(data_for(client))
        closing = await client.next_event()
        assert isinstance(closing, CloseConnection)
    return closing.code, app


async def test_a_message_over_the_limit_closes_1009_before_it_is_whole() -> None:
    # Only the first 1,500 bytes of the frame are sent: already over 1,000.
    code, app = await closed_after(lambda c: c.ws.send(TextMessage(data="x" * 5000))[:1500])
    assert code == 1009
    assert app.events[-1] == {"type": "websocket.disconnect", "code": 1009}
    assert not any(e.get("text") for e in app.events)


async def test_a_malformed_frame_closes_1002() -> None:
    # An unmasked client frame is a protocol error (RFC 6455 §5.1).
    code, app = await closed_after(lambda _: b"\x81\x02hi")
    assert code == 1002
    assert app.events[-1] == {"type": "websocket.disconnect", "code": 1002}


async def test_the_limit_counts_utf8_bytes_not_characters() -> None:
    # 400 characters, 1,200 bytes: over the 1,000-byte limit.
    code, _ = await closed_after(lambda c: c.ws.send(TextMessage(data="€" * 400)))
    assert code == 1009


async def test_an_idle_session_is_one_task() -> None:
    app = Recorder()
    before = task_count()
    async with served(app) as (client_end, _server_end):
        client = Client(client_end)
        assert isinstance(await client.handshake(["ocp.v1"]), AcceptConnection)
        await client.send_text("hello")
        assert (await client.next_event()).data == "HELLO"
        await trio.testing.wait_all_tasks_blocked()
        # The connection's task and nothing else: no reading task, and the
        # writer's task is gone once it has sent.
        assert task_count() == before + 1
        await client_end.send_all(client.ws.send(CloseConnection(code=1000)))
        assert isinstance(await client.next_event(), CloseConnection)


# --- plain HTTP/1.1 (the node's HTTP port) --------------------------------------------------


class RefusingApp:
    """Answers 413 on the headers alone, as the messages route does for a declared size."""

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        await send({"type": "http.response.start", "status": 413, "headers": []})
        await send({"type": "http.response.body", "body": b""})


class FailingApp:
    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["path"] == "/fail":
            raise RuntimeError("the app broke")
        await Recorder()(scope, receive, send)


def status_line(answer: bytes) -> bytes:
    return answer.split(b"\r\n", 1)[0]


async def test_an_answer_leaves_in_one_write_with_a_date_header() -> None:
    app = Recorder()
    async with served(app) as (client, server_end):
        answer = await get_health(client)
    head = answer.split(b"\r\n\r\n", 1)[0].lower()
    assert b"\r\ndate: " in head
    assert b" gmt" in head
    # The head, the body and the end of the message: one TLS record, one send.
    assert server_end.writes == [answer]


async def test_expect_100_continue_is_answered_when_the_app_reads_the_body() -> None:
    app = Recorder()
    async with served(app) as (client, _):
        await client.send_all(
            b"POST /x HTTP/1.1\r\nHost: node.test\r\nContent-Length: 5\r\n"
            b"Expect: 100-continue\r\n\r\n"
        )
        interim = await read_until(client, b"\r\n\r\n")
        assert status_line(interim) == b"HTTP/1.1 100 "
        await client.send_all(b"hello")
        answer = await read_until(client, b"POST /x 5")
        assert status_line(answer) == b"HTTP/1.1 200 "


async def test_a_request_refused_on_its_headers_is_never_asked_for_its_body() -> None:
    async with served(RefusingApp()) as (client, _):
        await client.send_all(
            b"POST /ocp/v1/messages HTTP/1.1\r\nHost: node.test\r\nContent-Length: 999999\r\n"
            b"Expect: 100-continue\r\n\r\n"
        )
        answer = await read_all(client)
    # No 100 first; the unread body means the connection cannot be reused.
    assert status_line(answer) == b"HTTP/1.1 413 "
    assert answer.count(b"HTTP/1.1") == 1


async def test_an_answer_before_the_body_is_read_says_connection_close() -> None:
    async with served(RefusingApp()) as (client, _):
        await client.send_all(
            b"POST /ocp/v1/messages HTTP/1.1\r\nHost: node.test\r\nContent-Length: 5\r\n\r\nhello"
        )
        answer = await read_all(client)
    # The unread body ends the connection: the client is told not to reuse it.
    assert status_line(answer) == b"HTTP/1.1 413 "
    assert b"\r\nconnection: close\r\n" in answer.lower()


async def test_an_idle_keep_alive_connection_closes(
    autojump_clock: trio.testing.MockClock,
) -> None:
    app = Recorder()
    async with served(app) as (client, _):
        await get_health(client)
        answered = trio.current_time()
        with trio.fail_after(60):
            assert await read_all(client) == b""
        assert trio.current_time() - answered == pytest.approx(SETTINGS.keep_alive_timeout)


async def test_a_trickled_second_request_head_is_cut_off(
    autojump_clock: trio.testing.MockClock,
) -> None:
    app = Recorder()
    async with served(app) as (client, _):
        await get_health(client)
        started = trio.current_time()

        async def trickle() -> None:
            for byte in b"GET /health HTTP/1.1\r\nX-Slow: " + b"a" * 1000:
                await client.send_all(bytes([byte]))
                await trio.sleep(1)

        async with trio.open_nursery() as nursery:
            nursery.start_soon(trickle)
            with trio.fail_after(60):
                assert await read_all(client) == b""
            nursery.cancel_scope.cancel()
        # The first byte came at once; the head then had handshake_timeout.
        assert trio.current_time() - started == pytest.approx(SETTINGS.handshake_timeout)
    assert len(app.scopes) == 1


async def test_a_failing_app_gets_500_and_the_connection_closes() -> None:
    async with served(FailingApp()) as (client, _):
        await client.send_all(b"GET /fail HTTP/1.1\r\nHost: node.test\r\n\r\n")
        answer = await read_all(client)
    assert status_line(answer).startswith(b"HTTP/1.1 500 ")
    assert b"connection: close" in answer.lower()


async def test_head_answers_carry_no_body_and_keep_the_connection() -> None:
    app = Recorder()
    async with served(app) as (client, _):
        await client.send_all(b"HEAD /health HTTP/1.1\r\nHost: node.test\r\n\r\n")
        head = await read_until(client, b"\r\n\r\n")
        assert status_line(head) == b"HTTP/1.1 200 "
        assert b"content-length: 14" in head.lower()  # what a GET would carry
        second = await get_health(client)
    # Nothing of the HEAD answer's body came before the second answer.
    assert status_line(second) == b"HTTP/1.1 200 "


async def test_an_http_1_0_request_is_answered_and_the_connection_closed() -> None:
    app = Recorder()
    async with served(app) as (client, _):
        await client.send_all(b"GET /health HTTP/1.0\r\n\r\n")
        answer = await read_all(client)
    assert status_line(answer) == b"HTTP/1.1 200 "
    assert answer.endswith(b"GET /health 0")
    assert app.scopes[0]["http_version"] == "1.0"


async def test_a_garbled_second_request_is_refused_with_400() -> None:
    app = Recorder()
    async with served(app) as (client, _):
        await get_health(client)
        await client.send_all(b"NOT HTTP AT ALL\r\n\r\n")
        answer = await read_all(client)
    assert status_line(answer).startswith(b"HTTP/1.1 400 ")
    assert len(app.scopes) == 1
