"""The suite's view of a remote node: HTTP requests and bare TLS handshakes.

Dependency-free on purpose: requests go through the standard library's
``urllib`` in a worker thread (so a slow node never blocks the trio loop), and
TLS probes use ``trio.open_ssl_over_tcp_stream`` with a context pinned to the
protocol versions under test. Proxies from the environment are ignored: the
suite talks to the URLs it was given, nothing else.

Bodies are sent exactly as given: a check that signs a request (D3) signs the
bytes that go over the wire.
"""

from __future__ import annotations

import ssl
import urllib.error
import urllib.request
from dataclasses import dataclass
from functools import partial
from typing import TYPE_CHECKING, Final
from urllib.parse import urlsplit

import trio

if TYPE_CHECKING:
    from collections.abc import Mapping
    from pathlib import Path

__all__ = [
    "HttpResponse",
    "TlsOutcome",
    "endpoint_url",
    "host_port",
    "http_get",
    "http_head_only",
    "http_request",
    "open_stream",
    "path_and_query",
    "suite_ssl_context",
    "tls_handshake",
    "tls_probe_context",
    "ws_scheme",
]

USER_AGENT: Final = "ocpd-conformance"


@dataclass(frozen=True)
class HttpResponse:
    status: int
    #: Header names in lower case.
    headers: dict[str, str]
    body: bytes

    def header(self, name: str) -> str | None:
        return self.headers.get(name.lower())


def endpoint_url(base: str, path: str) -> str:
    """``base`` (``https://host:port`` with an optional path prefix) joined with ``path``."""
    return base.rstrip("/") + "/" + path.lstrip("/")


def ws_scheme(url: str) -> str:
    """``url`` with ``https``/``http`` spelled ``wss``/``ws`` (other schemes kept)."""
    if url.startswith("https://"):
        return "wss://" + url.removeprefix("https://")
    if url.startswith("http://"):
        return "ws://" + url.removeprefix("http://")
    return url


def host_port(url: str) -> tuple[str, int]:
    parts = urlsplit(url)
    if parts.hostname is None:
        raise ValueError(f"no host in {url!r}")
    default = 443 if parts.scheme in ("https", "wss") else 80
    return parts.hostname, parts.port or default


def suite_ssl_context(*, ca_file: Path | None = None, insecure: bool = False) -> ssl.SSLContext:
    """The context for ordinary requests: verify against ``ca_file`` (or the system store).

    ``insecure`` turns verification off; the TLS version checks still run.
    """
    context = ssl.create_default_context(cafile=str(ca_file) if ca_file else None)
    if insecure:
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    return context


def tls_probe_context(version: ssl.TLSVersion) -> ssl.SSLContext:
    """A client context that offers exactly ``version``.

    Certificates are not verified: this context asks only which protocol
    versions the server accepts, so a certificate problem must not be mistaken
    for a refusal (the requests made with :func:`suite_ssl_context` verify).
    """
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    context.minimum_version = version
    context.maximum_version = version
    return context


def path_and_query(url: str) -> str:
    """The request target of ``url`` as the server sees it (what D3 signs)."""
    parts = urlsplit(url)
    return (parts.path or "/") + (f"?{parts.query}" if parts.query else "")


def _request_blocking(
    url: str,
    method: str,
    body: bytes | None,
    headers: Mapping[str, str],
    context: ssl.SSLContext,
    timeout: float,
) -> HttpResponse:
    if urlsplit(url).scheme not in ("http", "https"):
        raise ValueError(f"not an http(s) URL: {url!r}")
    opener = urllib.request.build_opener(
        urllib.request.ProxyHandler({}), urllib.request.HTTPSHandler(context=context)
    )
    request = urllib.request.Request(  # noqa: S310 - scheme checked above
        url, data=body, method=method, headers={"User-Agent": USER_AGENT, **headers}
    )
    try:
        with opener.open(request, timeout=timeout) as response:
            found = {k.lower(): v for k, v in response.headers.items()}
            return HttpResponse(response.status, found, response.read())
    except urllib.error.HTTPError as exc:
        # A 4xx/5xx is an answer, not a transport failure.
        found = {k.lower(): v for k, v in exc.headers.items()}
        with exc:
            return HttpResponse(exc.code, found, exc.read())


async def http_get(url: str, *, context: ssl.SSLContext, socket_timeout: float) -> HttpResponse:
    """GET ``url``; raises ``OSError`` (``urllib.error.URLError``) if nothing answers.

    ``socket_timeout`` bounds each blocking socket operation of the worker
    thread; a caller's cancel scope abandons the thread at once.
    """
    return await http_request(url, context=context, socket_timeout=socket_timeout)


async def http_request(
    url: str,
    *,
    context: ssl.SSLContext,
    socket_timeout: float,
    method: str = "GET",
    body: bytes | None = None,
    headers: Mapping[str, str] | None = None,
) -> HttpResponse:
    """One request with ``body`` sent as given; raises ``OSError`` if nothing answers."""
    return await trio.to_thread.run_sync(
        partial(_request_blocking, url, method, body, dict(headers or {}), context, socket_timeout),
        abandon_on_cancel=True,
    )


#: The most a response head may take before the suite gives up on it.
MAX_HEAD_BYTES: Final = 65_536


async def open_stream(url: str, context: ssl.SSLContext) -> trio.abc.Stream:
    """A TCP stream to ``url``'s host and port, TLS (handshake done) for https and wss."""
    host, port = host_port(url)
    if urlsplit(url).scheme in ("https", "wss"):
        stream = await trio.open_ssl_over_tcp_stream(
            host, port, ssl_context=context, https_compatible=True
        )
        await stream.do_handshake()
        return stream
    return await trio.open_tcp_stream(host, port)


def _parse_head(head: bytes) -> tuple[int, dict[str, str]]:
    status_line, *lines = head.decode("latin-1").split("\r\n")
    version, _, rest = status_line.partition(" ")
    code = rest[:3]
    if not version.startswith("HTTP/") or not code.isdigit():
        raise OSError(f"not an HTTP response: {status_line[:80]!r}")
    headers: dict[str, str] = {}
    for line in lines:
        name, sep, value = line.partition(":")
        if sep:
            headers.setdefault(name.strip().lower(), value.strip())
    return int(code), headers


async def http_head_only(
    url: str, *, context: ssl.SSLContext, method: str, headers: Mapping[str, str]
) -> HttpResponse:
    """Send only the head of a request (HTTP/1.1) and read the answer; no body follows.

    For a request whose ``Content-Length`` announces a body the server must
    refuse unread: a server that waits for the body never answers, and the
    caller's cancel scope ends the wait. Raises ``OSError`` when the
    connection fails or what comes back is not HTTP.
    """
    parts = urlsplit(url)
    host, port = host_port(url)
    target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    lines = [f"{method} {target} HTTP/1.1", f"Host: {parts.netloc}", f"User-Agent: {USER_AGENT}"]
    lines += [f"{name}: {value}" for name, value in headers.items()]
    try:
        stream = await open_stream(url, context)
    except trio.BrokenResourceError as exc:
        raise OSError(f"cannot connect to {host}:{port}: {exc}") from None
    try:
        await stream.send_all(("\r\n".join(lines) + "\r\n\r\n").encode("latin-1"))
        received = b""
        while b"\r\n\r\n" not in received:
            chunk = await stream.receive_some(MAX_HEAD_BYTES)
            if not chunk or len(received) > MAX_HEAD_BYTES:
                raise OSError("the connection ended before a complete response head")
            received += chunk
        head, _, body = received.partition(b"\r\n\r\n")
        status, found = _parse_head(head)
        length = found.get("content-length", "")
        while (not length.isdigit() or len(body) < int(length)) and (
            chunk := await stream.receive_some(MAX_HEAD_BYTES)
        ):
            body += chunk
        if length.isdigit():
            body = body[: int(length)]
        return HttpResponse(status, found, body)
    except (trio.BrokenResourceError, trio.ClosedResourceError) as exc:
        raise OSError(f"connection to {host}:{port} failed: {exc}") from None
    finally:
        await trio.aclose_forcefully(stream)


@dataclass(frozen=True)
class TlsOutcome:
    """The result of one handshake: the negotiated version, or why it failed."""

    version: str | None
    error: str | None = None
    #: True when TCP connected and the failure happened in the TLS handshake.
    handshake_failed: bool = False


async def tls_handshake(url: str, *, context: ssl.SSLContext) -> TlsOutcome:
    """Connect to ``url``'s host and port and run one TLS handshake."""
    host, port = host_port(url)
    try:
        stream = await trio.open_ssl_over_tcp_stream(
            host, port, ssl_context=context, https_compatible=True
        )
    except OSError as exc:
        return TlsOutcome(None, f"cannot connect: {exc}")
    try:
        await stream.do_handshake()
    except trio.BrokenResourceError as exc:
        cause = exc.__cause__
        reason = getattr(cause, "reason", None) or str(cause or exc)
        return TlsOutcome(None, str(reason), handshake_failed=True)
    else:
        version: str | None = stream.version()
        return TlsOutcome(version)
    finally:
        await trio.aclose_forcefully(stream)
