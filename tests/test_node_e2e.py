"""The node component end to end: a real daemon over TLS, agents on HTTPS and WebSocket."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import ssl
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx
import pytest
import trio
from trio_websocket import ConnectionClosed, WebSocketConnection, open_websocket_url

from daemon_process import Daemon, TlsFiles
from ocpd.client import AgentKey, RegistryClient
from ocpd.proto.auth import build_ws_auth_handshake, message_post_headers
from ocpd.proto.crypto import SigningKey
from ocpd.proto.envelope import build_message, sign_message
from ocpd.storage import integrity_check

NETWORK = "testnet"
CAPS = [{"id": "cap:nlp:classification", "name": "Classify", "version": "1.0"}]
PATH = "/ocp/v1/messages"


def _agent(seed: int) -> AgentKey:
    return AgentKey(SigningKey(bytes([seed]) * 32), NETWORK)


def _message(
    sender: AgentKey,
    receiver: str,
    *,
    now: float | None = None,
    payload: dict[str, Any] | None = None,
    message_id: str | None = None,
    ttl: int = 3600,
) -> bytes:
    unsigned = build_message(
        sender=sender.agent_id,
        receiver=receiver,
        message_type="discovery_ping",
        payload=payload or {},
        now=time.time() if now is None else now,
        ttl=ttl,
        message_id=message_id,
    )
    return json.dumps(sign_message(unsigned, sender.key), separators=(",", ":")).encode()


class Node:
    def __init__(self, tmp: Path, tls: TlsFiles, config: str = "") -> None:
        self.tls = tls
        config_file = tmp / "ocpd.yml"
        config_file.write_text(config)
        self.daemon = Daemon(tmp / "data", tls=tls, env={"OCP_CONFIG": str(config_file)})

    def start(self) -> None:
        self.daemon.start()
        self.daemon.wait_ready()

    def url(self, name: str) -> str:
        return self.daemon.listeners[name]

    def ws_url(self) -> str:
        return self.url("ws").replace("https://", "wss://") + "/ocp/v1/ws"

    def context(self) -> ssl.SSLContext:
        return self.tls.client_context()

    async def register(self, *agents: AgentKey, http: bool = False) -> None:
        endpoints = [{"transport": "ocp-ws", "url": self.ws_url(), "priority": 1}]
        if http:
            url = self.url("http") + PATH
            endpoints.append({"transport": "ocp-http", "url": url, "priority": 2})
        for agent in agents:
            async with RegistryClient(self.url("registry"), agent, verify=self.context()) as c:
                record = c.build_record(
                    display_name="e2e",
                    capabilities=CAPS,
                    domains=["healthcare"],
                    endpoints=endpoints,
                )
                assert (await c.register(record))["trust_level"] == 1

    def http(self) -> httpx.AsyncClient:
        return httpx.AsyncClient(base_url=self.url("http"), verify=self.context(), timeout=20)

    @asynccontextmanager
    async def websocket(self) -> AsyncIterator[WebSocketConnection]:
        stream: trio.abc.AsyncResource | None = None
        try:
            async with open_websocket_url(
                self.ws_url(),
                ssl_context=self.context(),
                subprotocols=["ocp.v1"],
                max_message_size=32 * 1024 * 1024,
                connect_timeout=10,
                disconnect_timeout=5,
            ) as ws:
                stream = ws._stream
                yield ws
        finally:
            # trio-websocket leaves its TCP stream open when the server closes
            # first (it waits for the server's FIN, then forgets to close).
            if stream is not None:
                with contextlib.suppress(trio.BrokenResourceError, trio.ClosedResourceError):
                    await stream.aclose()

    @asynccontextmanager
    async def session(self, agent: AgentKey) -> AsyncIterator[WebSocketConnection]:
        async with self.websocket() as ws:
            frame = build_ws_auth_handshake(agent.key, agent_id=agent.agent_id, now=time.time())
            await ws.send_message(json.dumps(frame))
            result = json.loads(await ws.get_message())
            assert result["status"] == "accepted", result
            yield ws


async def post(
    client: httpx.AsyncClient, sender: AgentKey, body: bytes, **headers: str
) -> httpx.Response:
    sent = message_post_headers(
        sender.key, agent_id=sender.agent_id, path_and_query=PATH, body=body, now=time.time()
    )
    sent.update(headers)
    return await client.post(PATH, content=body, headers=sent)


def _error_code(response: httpx.Response) -> str:
    body = response.json()
    assert body["message_type"] == "error"
    return str(body["payload"]["error_code"])


async def collect(ws: WebSocketConnection, *, quiet: float = 2.0) -> list[dict[str, Any]]:
    """Messages pushed to a session until it stays quiet for ``quiet`` seconds."""
    out: list[dict[str, Any]] = []
    while True:
        with trio.move_on_after(quiet):
            out.append(json.loads(await ws.get_message()))
            continue
        return out


@pytest.fixture(scope="module")
def tls(tmp_path_factory: pytest.TempPathFactory) -> TlsFiles:
    return TlsFiles(tmp_path_factory.mktemp("tls"))


@pytest.fixture
def node(tmp_path: Path, tls: TlsFiles) -> Iterator[Node]:
    # Signatures in the helper process, whatever the machine's CPU count.
    n = Node(tmp_path, tls, "transport:\n  signature_checks: helper\n")
    n.start()
    yield n
    n.daemon.stop()


async def test_two_agents_exchange_messages(node: Node) -> None:
    a, b = _agent(31), _agent(32)
    with trio.fail_after(60):
        await node.register(a, b)
        async with node.http() as http, node.session(b) as b_ws:
            body = _message(a, b.agent_id)
            response = await post(http, a, body)
            assert response.status_code == 202, response.text
            message_id = json.loads(body)["message_id"]
            assert response.json() == {"status": "accepted", "message_id": message_id}
            # B gets exactly the bytes A sent
            assert (await b_ws.get_message()).encode() == body
            # a duplicate is acknowledged again and not delivered again
            again = await post(http, a, body)
            assert again.status_code == 202 and again.json()["duplicate"] is True
            # same id, other content
            other = _message(a, b.agent_id, payload={"trust_level": 1}, message_id=message_id)
            conflict = await post(http, a, other)
            assert conflict.status_code == 400 and _error_code(conflict) == "OCP-400"
            assert await collect(b_ws, quiet=1.0) == []

            # B answers over its WebSocket while A is offline; A connects later
            reply = _message(b, a.agent_id)
            await b_ws.send_message(reply.decode())
            receipt = json.loads(await b_ws.get_message())
            assert receipt == {
                "frame_type": "receipt",
                "message_id": json.loads(reply)["message_id"],
                "status": "accepted",
            }
        async with node.session(a) as a_ws:
            assert (await a_ws.get_message()).encode() == reply

        # B's session time reached the registry in the same process (D7 uptime)
        async with RegistryClient(node.url("registry"), b, verify=node.context()) as client:
            deadline = trio.current_time() + 10
            while (await client.trust(b.agent_id))["components"]["uptime_ratio"] == 0:
                assert trio.current_time() < deadline, "no session time reached the registry"
                await trio.sleep(0.1)

        # metrics count what happened
        _, metrics, _ = node.daemon.get("http", "/metrics")
        text = metrics.decode()
        assert 'ocp_messages_total{status="accepted",type="discovery_ping"} 2.0' in text
        assert 'ocp_messages_total{status="duplicate",type="discovery_ping"} 1.0' in text
        assert "ocp_active_websockets 0.0" in text
        events = [e for e in node.daemon.events() if e.get("event") == "message"]
        assert len(events) >= 4
        assert {"message_id", "type", "sender", "duration_ms"} <= set(events[0])
        assert not any("payload" in e for e in events)


async def test_offline_receiver_gets_messages_in_order(node: Node) -> None:
    a, b = _agent(33), _agent(34)
    with trio.fail_after(60):
        await node.register(a, b)
        sent: list[bytes] = []
        async with node.http() as http:
            for i in range(10):
                body = _message(a, b.agent_id, payload={"trust_level": i % 5})
                assert (await post(http, a, body)).status_code == 202
                sent.append(body)
        async with node.session(a) as a_ws:
            for _ in range(10):
                body = _message(a, b.agent_id)
                await a_ws.send_message(body.decode())
                assert json.loads(await a_ws.get_message())["status"] == "accepted"
                sent.append(body)
        async with node.session(b) as b_ws:
            got = [(await b_ws.get_message()).encode() for _ in sent]
            assert got == sent
            assert await collect(b_ws, quiet=1.0) == []


async def test_hostile_requests(node: Node) -> None:
    a, b = _agent(35), _agent(36)
    with trio.fail_after(60):
        await node.register(a, b)
        async with node.http() as http:
            body = _message(a, b.agent_id)
            # a flipped bit in the signature, then in the body
            signed = json.loads(body)
            signature = signed["sender"]["signature"]
            signed["sender"]["signature"] = ("B" if signature[0] == "A" else "A") + signature[1:]
            flipped_signature = json.dumps(signed, separators=(",", ":")).encode()
            response = await post(http, a, flipped_signature)
            assert response.status_code == 401 and _error_code(response) == "OCP-401"
            flipped_body = body.replace(b'"priority":"normal"', b'"priority":"high"')
            response = await post(http, a, flipped_body)
            assert response.status_code == 401
            # the Authorization header speaks for another agent than the sender
            response = await post(http, b, body)
            assert response.status_code == 401
            # expired, and too far in the future
            for when in (time.time() - 7200, time.time() + 600):
                response = await post(http, a, _message(a, b.agent_id, now=when))
                assert response.status_code == 400
                assert response.json()["payload"]["details"]["reason"] in {"expired", "future"}
            # I-JSON violations and depth bombs are 400, never 500
            for hostile in (
                b'{"a":1,"a":2}',
                b'{"a":NaN}',
                b'{"a":9007199254740993}',
                b'{"a":"\\udc00"}',
                b"[" * 100_000 + b"]" * 100_000,
                b'{"a":' * 5000 + b"1" + b"}" * 5000,
                b"\xff\xfe",
            ):
                response = await post(http, a, hostile)
                assert response.status_code == 400, hostile[:20]
                assert _error_code(response) == "OCP-400"
            response = await post(http, a, body, **{"X-OCF-Version": "2.0"})
            assert response.status_code == 400
            # refused before its body was read: the client is told not to reuse the connection
            assert response.headers["connection"] == "close"
            assert (await post(http, a, body)).status_code == 202


async def test_oversized_body_is_413_before_it_is_read(node: Node) -> None:
    host, port = urlsplit(node.url("http")).hostname, urlsplit(node.url("http")).port
    assert host is not None and port is not None
    with trio.fail_after(30):
        stream = await trio.open_ssl_over_tcp_stream(host, port, ssl_context=node.context())
        async with stream:
            head = (
                f"POST {PATH} HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/json\r\n"
                f"Content-Length: {16 * 1024 * 1024 + 1}\r\n\r\n"
            ).encode()
            await stream.send_all(head + b"{")
            data = b""
            while b"\r\n\r\n" not in data:
                data += await stream.receive_some(65536)
        assert data.startswith(b"HTTP/1.1 413")


async def test_the_http_port_speaks_http_1_1_and_honours_expect_100_continue(
    node: Node,
) -> None:
    host, port = urlsplit(node.url("http")).hostname, urlsplit(node.url("http")).port
    assert host is not None and port is not None
    context = node.context()
    context.set_alpn_protocols(["h2", "http/1.1"])  # as curl and HTTP/2 clients offer
    with trio.fail_after(30):
        stream = await trio.open_ssl_over_tcp_stream(host, port, ssl_context=context)
        async with stream:
            await stream.do_handshake()
            assert stream.selected_alpn_protocol() == "http/1.1"
            # Refused on its headers: no "100 Continue", the body is never sent.
            await stream.send_all(
                (
                    f"POST {PATH} HTTP/1.1\r\nHost: {host}\r\nExpect: 100-continue\r\n"
                    f"Content-Length: {16 * 1024 * 1024 + 1}\r\n\r\n"
                ).encode()
            )
            data = b""
            while b"\r\n\r\n" not in data:
                data += await stream.receive_some(65536)
            assert data.startswith(b"HTTP/1.1 413")
    async with httpx.AsyncClient(verify=node.context()) as http:
        health = await http.get(node.url("http") + "/health")
    assert health.status_code == 200
    assert "date" in health.headers


def _verifier_helpers(daemon_pid: int) -> list[int]:
    """The daemon's signature helper processes."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        with contextlib.suppress(OSError):
            parent = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            command = (entry / "cmdline").read_bytes().split(b"\0")
            if parent == daemon_pid and b"ocpd.verifier" in command:
                found.append(int(entry.name))
    return found


async def test_a_killed_signature_helper_costs_no_message(node: Node) -> None:
    a, b = _agent(41), _agent(42)
    assert node.daemon.proc is not None
    with trio.fail_after(60):
        await node.register(a, b)
        (helper,) = _verifier_helpers(node.daemon.proc.pid)
        async with node.http() as http:
            assert (await post(http, a, _message(a, b.agent_id))).status_code == 202
            os.kill(helper, signal.SIGKILL)
            # Checked on the loop until a new helper runs: same answers.
            for _ in range(20):
                assert (await post(http, a, _message(a, b.agent_id))).status_code == 202
            forged = json.loads(_message(a, b.agent_id))
            forged["ttl"] -= 1  # still a valid message, no longer the signed one
            response = await post(http, a, json.dumps(forged).encode())
            assert response.status_code == 401
            pid = node.daemon.proc.pid
            for _ in range(300):
                if _verifier_helpers(pid) not in ([], [helper]):
                    break
                await trio.sleep(0.1)
            assert _verifier_helpers(pid) not in ([], [helper])
            assert (await post(http, a, _message(a, b.agent_id))).status_code == 202
            response = await post(http, a, json.dumps(forged).encode())
            assert response.status_code == 401
    node.daemon.wait_for("verifier_restart")


async def _send_then_read(ws: WebSocketConnection, text: str) -> str | bytes:
    await ws.send_message(text)
    return await ws.get_message()


async def test_websocket_limits(node: Node) -> None:
    a = _agent(37)
    with trio.fail_after(60):
        await node.register(a)
        # never authenticating: closed within the 5 s limit
        async with node.websocket() as ws:
            started = trio.current_time()
            rejected = json.loads(await ws.get_message())
            assert rejected["status"] == "rejected" and rejected["error_code"] == "OCP-408"
            with pytest.raises(ConnectionClosed) as closed:
                await ws.get_message()
            assert closed.value.reason.code == 1008
            assert 4.5 <= trio.current_time() - started <= 6.5
        # a replayed auth_handshake
        frame = json.dumps(build_ws_auth_handshake(a.key, agent_id=a.agent_id, now=time.time()))
        async with node.websocket() as first:
            await first.send_message(frame)
            assert json.loads(await first.get_message())["status"] == "accepted"
            async with node.websocket() as second:
                await second.send_message(frame)
                replayed = json.loads(await second.get_message())
                assert replayed["status"] == "rejected" and replayed["error_code"] == "OCP-401"
            # a frame over 16 MiB: closed with 1009 as soon as its header arrives,
            # so the close may reach the client while it is still sending
            with pytest.raises(ConnectionClosed) as too_big:
                await _send_then_read(first, "x" * (16 * 1024 * 1024 + 1))
            assert too_big.value.reason.code == 1009


async def test_1001st_message_in_a_minute_is_429(node: Node) -> None:
    a, b = _agent(38), _agent(39)
    with trio.fail_after(120):
        await node.register(a, b)
        statuses: list[int] = []
        limited: list[httpx.Response] = []
        async with node.http() as http:

            async def sender() -> None:
                while not limited:
                    response = await post(http, a, _message(a, b.agent_id))
                    statuses.append(response.status_code)
                    if response.status_code == 429:
                        limited.append(response)

            started = trio.current_time()
            async with trio.open_nursery() as nursery:
                for _ in range(8):
                    nursery.start_soon(sender)
            elapsed = trio.current_time() - started
        accepted_before = statuses.index(429)
        # the bucket holds 1000 and refills 1000 per 60 s while we send
        assert 1000 <= accepted_before <= 1000 + int(elapsed * 1000 / 60) + 8
        response = limited[0]
        assert 1 <= int(response.headers["Retry-After"]) <= 60
        assert _error_code(response) == "OCP-429"
        _, metrics, _ = node.daemon.get("http", "/metrics")
        assert b'ocp_rate_limit_hits_total{operation="messages"}' in metrics


async def test_accepted_messages_survive_a_restart(node: Node) -> None:
    a, b = _agent(40), _agent(41)
    with trio.fail_after(90):
        await node.register(a, b)
        sent: list[bytes] = []
        async with node.http() as http:
            for _ in range(20):
                body = _message(a, b.agent_id)
                assert (await post(http, a, body)).status_code == 202
                sent.append(body)
        # a connected agent is told the node is going away (1001)
        async with node.session(a) as a_ws:
            started = time.monotonic()
            node.daemon.signal(signal.SIGTERM)
            with pytest.raises(ConnectionClosed) as closed:
                await a_ws.get_message()
            assert closed.value.reason.code == 1001
        assert node.daemon.wait_exit() == 0
        assert time.monotonic() - started < 10
        node.start()
        async with node.http() as http:
            # the dedup window survived too
            again = await post(http, a, sent[0])
            assert again.status_code == 202 and again.json()["duplicate"] is True
        async with node.session(b) as b_ws:
            got = [(await b_ws.get_message()).encode() for _ in sent]
            assert got == sent
            assert await collect(b_ws, quiet=1.0) == []


async def test_sigkill_under_load_loses_nothing_accepted(node: Node) -> None:
    a, b, c = _agent(42), _agent(43), _agent(44)
    with trio.fail_after(120):
        await node.register(a, b, c)
        accepted: set[str] = set()
        killed = trio.Event()

        async def over_http(sender: AgentKey) -> None:
            # A bare HTTP/1.1 client: the libraries leak resources (httpx's
            # body generators, sockets) when the server dies mid-request.
            url = urlsplit(node.url("http"))
            assert url.hostname is not None and url.port is not None
            try:
                stream = await trio.open_ssl_over_tcp_stream(
                    url.hostname, url.port, ssl_context=node.context()
                )
            except OSError:
                return
            async with stream:
                buffer = b""
                while True:
                    body = _message(sender, b.agent_id)
                    headers = message_post_headers(
                        sender.key,
                        agent_id=sender.agent_id,
                        path_and_query=PATH,
                        body=body,
                        now=time.time(),
                    )
                    lines = "".join(f"{name}: {value}\r\n" for name, value in headers.items())
                    head = (
                        f"POST {PATH} HTTP/1.1\r\nHost: {url.hostname}\r\n{lines}"
                        f"Content-Length: {len(body)}\r\n\r\n"
                    ).encode()
                    try:
                        await stream.send_all(head + body)
                        while b"\r\n\r\n" not in buffer:
                            data = await stream.receive_some(65536)
                            if not data:
                                return
                            buffer += data
                        headers, _, buffer = buffer.partition(b"\r\n\r\n")
                        length = int(
                            headers.lower().split(b"content-length: ")[1].split(b"\r\n")[0]
                        )
                        while len(buffer) < length:
                            data = await stream.receive_some(65536)
                            if not data:
                                return
                            buffer += data
                        buffer = buffer[length:]
                    except (trio.BrokenResourceError, trio.ClosedResourceError, OSError):
                        return
                    if headers.startswith(b"HTTP/1.1 202"):
                        accepted.add(json.loads(body)["message_id"])
                    if len(accepted) >= 150 and not killed.is_set():
                        killed.set()

        async def over_ws() -> None:
            try:
                async with node.session(c) as ws:
                    while True:
                        body = _message(c, b.agent_id)
                        await ws.send_message(body.decode())
                        receipt = json.loads(await ws.get_message())
                        if receipt["status"] == "accepted":
                            accepted.add(receipt["message_id"])
            except (ConnectionClosed, OSError, trio.BrokenResourceError):
                return

        async with trio.open_nursery() as nursery:
            nursery.start_soon(over_ws)
            for sender in (a, a, c):
                nursery.start_soon(over_http, sender)
            # under load (150 accepted), or after 30 s whatever was accepted by then
            with trio.move_on_after(30):
                await killed.wait()
            node.daemon.signal(signal.SIGKILL)
            node.daemon.wait_exit()
        assert accepted, "nothing was accepted before the kill"
        node.start()
        async with node.session(b) as b_ws:
            received = await collect(b_ws, quiet=3.0)
        ids = [m["message_id"] for m in received]
        assert len(ids) == len(set(ids)), "a queued message was delivered twice"
        assert accepted <= set(ids), f"{len(accepted - set(ids))} accepted messages lost"
        node.daemon.stop()
        assert integrity_check(node.daemon.data_dir / "node" / "ocp_node.db") == ["ok"]


async def test_node_alone_asks_a_registry_over_https(tmp_path: Path, tls: TlsFiles) -> None:
    registry = Daemon(tmp_path / "registry", component="registry", tls=tls)
    registry.start()
    try:
        registry.wait_ready()
        config = tmp_path / "node.yml"
        config.write_text(f"transport:\n  registry_ca_file: {tls.ca_file}\n")
        (tmp_path / "n").mkdir()
        alone = Node(tmp_path / "n", tls)
        alone.daemon = Daemon(
            tmp_path / "node",
            component="node",
            tls=tls,
            env={"OCP_CONFIG": str(config), "OCP_REGISTRY_URL": registry.listeners["registry"]},
        )
        alone.start()
        try:
            alone.daemon.listeners["registry"] = registry.listeners["registry"]
            a, b, c = _agent(45), _agent(46), _agent(47)
            with trio.fail_after(60):
                await alone.register(a, b)
                async with alone.http() as http, alone.session(b) as b_ws:
                    body = _message(a, b.agent_id)
                    assert (await post(http, a, body)).status_code == 202
                    assert (await b_ws.get_message()).encode() == body
                    # an agent the registry does not know
                    unknown = await post(http, c, _message(c, b.agent_id))
                    assert unknown.status_code == 401
                    missing = await post(http, a, _message(a, c.agent_id))
                    assert missing.status_code == 404
        finally:
            alone.daemon.stop()
    finally:
        registry.stop()


async def test_pings_keep_an_idle_session_alive(tmp_path: Path, tls: TlsFiles) -> None:
    # hypercorn drops a connection silent for int(2 * 1 + 1) + 1 = 4 s; pongs count
    quick = Node(
        tmp_path,
        tls,
        "transport:\n  websocket:\n    ping_interval_seconds: 1\n    auth_timeout_seconds: 1\n",
    )
    quick.start()
    try:
        a, b = _agent(48), _agent(49)
        with trio.fail_after(60):
            await quick.register(a, b)
            async with quick.session(a) as ws:
                await trio.sleep(6)
                body = _message(a, b.agent_id)
                await ws.send_message(body.decode())
                receipt = json.loads(await ws.get_message())
                assert receipt["status"] == "accepted"
    finally:
        quick.daemon.stop()


async def test_two_nodes_hand_messages_on_through_the_registry(
    tmp_path: Path, tls: TlsFiles
) -> None:
    """Node A (with the registry) and node B (asking A's registry) carry a conversation."""
    trusted = f"transport:\n  delivery_ca_file: {tls.ca_file}\n  registry_ca_file: {tls.ca_file}\n"
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    a_node = Node(tmp_path / "a", tls, trusted)
    a_node.start()
    b_node = Node(tmp_path / "b", tls, trusted)
    try:
        b_node.daemon.component = "node"
        b_node.daemon.args = ["run", "--component", "node"]
        b_node.daemon.env["OCP_REGISTRY_URL"] = a_node.url("registry")
        b_node.start()
        b_node.daemon.listeners["registry"] = a_node.url("registry")
        # each node registered its service agent (in process on A, over HTTPS on B)
        a_service = a_node.daemon.wait_for("service_agent_registered")["agent_id"]
        b_service = b_node.daemon.wait_for("service_agent_registered")["agent_id"]
        alice, bob, dave = _agent(81), _agent(82), _agent(83)
        with trio.fail_after(60):
            await a_node.register(alice, http=True)
            await b_node.register(bob, http=True)
            # dave's only HTTPS endpoint answers every message with a 404
            broken = a_node.url("registry") + "/ocp/v1/messages"
            async with RegistryClient(a_node.url("registry"), dave, verify=a_node.context()) as c:
                record = c.build_record(
                    display_name="e2e",
                    capabilities=CAPS,
                    domains=["healthcare"],
                    endpoints=[{"transport": "ocp-http", "url": broken, "priority": 1}],
                )
                await c.register(record)
                nodes = await c.discover(domains=["ocp.node"])
                assert {a["agent_id"] for a in nodes["results"]} >= {a_service, b_service}

            async with a_node.session(alice) as a_ws, b_node.session(bob) as b_ws:
                # over WebSocket to A, handed on to B, pushed to bob
                first = _message(alice, bob.agent_id)
                await a_ws.send_message(first.decode())
                receipt = json.loads(await a_ws.get_message())
                assert receipt["status"] == "accepted", receipt
                assert (await b_ws.get_message()).encode() == first
                # bob's answer takes the way back
                reply = _message(bob, alice.agent_id)
                await b_ws.send_message(reply.decode())
                assert json.loads(await b_ws.get_message())["status"] == "accepted"
                assert (await a_ws.get_message()).encode() == reply
                # over HTTPS to A as well
                async with a_node.http() as http:
                    second = _message(alice, bob.agent_id)
                    assert (await post(http, alice, second)).status_code == 202
                    assert (await b_ws.get_message()).encode() == second
                    # the same message again is acknowledged and not handed on again
                    assert (await post(http, alice, second)).status_code == 202
                # a receiver whose endpoint refuses: alice hears OCP-502 from A
                lost = _message(alice, dave.agent_id)
                await a_ws.send_message(lost.decode())
                assert json.loads(await a_ws.get_message())["status"] == "accepted"
                error = json.loads(await a_ws.get_message())
                assert error["message_type"] == "error"
                assert error["sender"]["agent_id"] == a_service
                assert error["payload"]["error_code"] == "OCP-502"
                assert error["payload"]["reference_message_id"] == json.loads(lost)["message_id"]
                assert await collect(b_ws, quiet=1.0) == []
        _, metrics, _ = a_node.daemon.get("http", "/metrics")
        assert 'ocpd_deliveries_total{outcome="forwarded"} 2.0' in metrics.decode()
        assert 'ocpd_deliveries_total{outcome="failed"} 1.0' in metrics.decode()
    finally:
        # Both stop promptly although each holds pooled connections to the other.
        started = time.monotonic()
        assert b_node.daemon.stop() == 0
        assert a_node.daemon.stop() == 0
        assert time.monotonic() - started < 10
