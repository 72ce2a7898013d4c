"""DID resolution from an agent's host (method 1), over real TLS sockets."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Awaitable, Callable
from functools import partial
from typing import Any

import pytest
import trio
from hypercorn.config import Config
from hypercorn.trio import serve

from daemon_process import TlsFiles
from ocpd.client import AgentKey, ResolutionError, resolve_well_known
from ocpd.client.resolve import MAX_DOCUMENT_BYTES, WELL_KNOWN_PATH, well_known_url
from ocpd.proto.crypto import SigningKey

NETWORK = "testnet"
ALICE = AgentKey(SigningKey(bytes([1]) * 32), NETWORK)
BOB = AgentKey(SigningKey(bytes([2]) * 32), NETWORK)

Scope = dict[str, Any]
Send = Callable[[dict[str, Any]], Awaitable[None]]


class AgentHost:
    """An agent's web server: ``responses`` maps a path to (status, body, headers)."""

    def __init__(self) -> None:
        self.responses: dict[str, tuple[int, bytes, list[tuple[bytes, bytes]]]] = {}
        self.url = ""

    async def __call__(self, scope: Scope, receive: Any, send: Send) -> None:
        if scope["type"] == "lifespan":
            while True:
                message = (await receive())["type"]
                await send({"type": message + ".complete"})
                if message == "lifespan.shutdown":
                    return
        status, body, headers = self.responses.get(scope["path"], (404, b"", []))
        await send({"type": "http.response.start", "status": status, "headers": headers})
        await send({"type": "http.response.body", "body": body})

    def serve_json(self, document: object, *, path: str = WELL_KNOWN_PATH) -> None:
        self.responses[path] = (
            200,
            json.dumps(document).encode(),
            [(b"content-type", b"application/did+json")],
        )


@pytest.fixture(scope="module")
def tls(tmp_path_factory: pytest.TempPathFactory) -> TlsFiles:
    return TlsFiles(tmp_path_factory.mktemp("tls"))


@pytest.fixture
async def host(tls: TlsFiles) -> AsyncIterator[AgentHost]:
    app = AgentHost()
    config = Config()
    config.bind = ["127.0.0.1:0"]
    config.certfile = str(tls.cert)
    config.keyfile = str(tls.key)
    config.accesslog = None
    stop = trio.Event()
    async with trio.open_nursery() as nursery:
        urls = await nursery.start(partial(serve, app, config, shutdown_trigger=stop.wait))
        app.url = urls[0]
        yield app
        stop.set()


def _authority(host: AgentHost) -> str:
    return host.url.removeprefix("https://")


async def test_resolves_a_published_document(host: AgentHost, tls: TlsFiles) -> None:
    document = ALICE.did_document(endpoints=["https://agent.example/ocp"])
    host.serve_json(document)
    with trio.fail_after(10):
        got = await resolve_well_known(
            _authority(host), agent_id=ALICE.agent_id, verify=tls.client_context()
        )
    assert got == document
    # the full URL form, as an agent record's did_document_url gives it
    got = await resolve_well_known(host.url + WELL_KNOWN_PATH, verify=tls.client_context())
    assert got == document


async def test_refuses_what_it_cannot_check(host: AgentHost, tls: TlsFiles) -> None:
    context = tls.client_context()
    authority = _authority(host)

    async def refused(reason: str, **kw: Any) -> None:
        with trio.fail_after(10), pytest.raises(ResolutionError, match=reason):
            await resolve_well_known(authority, verify=context, **kw)

    await refused("HTTP 404")
    # another agent's document where Alice's is expected
    host.serve_json(BOB.did_document())
    await refused("not " + ALICE.agent_id, agent_id=ALICE.agent_id)
    # an id that does not derive from #key-1
    forged = BOB.did_document()
    forged["id"] = ALICE.agent_id
    host.serve_json(forged)
    await refused("does not derive|controlled by|must")
    # not I-JSON, not an object, too large
    host.responses[WELL_KNOWN_PATH] = (200, b'{"id": 1, "id": 2}', [])
    await refused("duplicate|Duplicate")
    host.serve_json(["not", "a", "document"])
    await refused("must be an object")
    big = b"{" + b" " * MAX_DOCUMENT_BYTES + b"}"
    length = str(len(big)).encode()
    host.responses[WELL_KNOWN_PATH] = (200, big, [(b"content-length", length)])
    await refused("larger than")  # declared: refused before the body is read
    # a server certificate the client does not trust
    with trio.fail_after(10), pytest.raises(ResolutionError, match="cannot fetch"):
        await resolve_well_known(authority, verify=True)


# Leaving httpx's body iterator early leaves its inner async generators to the
# garbage collector (encode/httpx#3686); trio then finalises them and warns.
@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")
async def test_stops_reading_an_endless_document(host: AgentHost, tls: TlsFiles) -> None:
    big = b"{" + b" " * (4 * MAX_DOCUMENT_BYTES) + b"}"
    host.responses[WELL_KNOWN_PATH] = (200, big, [])  # no length: chunked
    with trio.fail_after(10), pytest.raises(ResolutionError, match="larger than"):
        await resolve_well_known(_authority(host), verify=tls.client_context())


def test_url_forms() -> None:
    assert well_known_url("agent.example") == "https://agent.example/.well-known/ocp/did.json"
    assert well_known_url("agent.example:8443").startswith("https://agent.example:8443/")
    assert well_known_url("https://a.example/x.json") == "https://a.example/x.json"
    for bad in ("http://agent.example/.well-known/ocp/did.json", "", "a/b", "user@host"):
        with pytest.raises(ValueError, match="not"):
            well_known_url(bad)
