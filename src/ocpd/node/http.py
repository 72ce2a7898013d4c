"""``POST /ocp/v1/messages``: the HTTPS transport, as a raw ASGI route.

The route sits in front of the port's Quart app (``app.asgi_app`` wrapped,
Quart's documented way to add ASGI middleware); every other path goes on to
Quart. It skips Quart's request machinery because this is the hot path, and
because the body must be read with the size limit applied while it streams:
a declared ``Content-Length`` over the limit is refused before one byte of
the body is read, and a streamed body is refused as soon as it passes the
limit (the connection is then closed, as its body was not consumed).

Answers (D6):

* ``202 {"status": "accepted", "message_id": …}`` once the message is
  durably committed; a duplicate (same id, same content) gets the same
  answer with ``"duplicate": true`` and is not delivered again;
* otherwise the HTTP status of the OCP code, with a signed OCPUMF ``error``
  message from the node's service agent as the body, and ``Retry-After`` on
  429.

``X-OCF-Version`` (or ``X-OCP-Version``, D1) must be ``1.0`` when present; a
request without it is taken as 1.0, the version its envelope must declare.
"""

from __future__ import annotations

import json
import re
from typing import TYPE_CHECKING, Final, cast

import trio

from ocpd.node.intake import MESSAGES_PATH, Attempt, HttpCredentials, Outcome
from ocpd.proto.auth import OCF_VERSION
from ocpd.proto.errors import MalformedError, OcpError, PayloadTooLarge, RateLimited

if TYPE_CHECKING:
    from quart_trio import QuartTrio

    from ocpd.asgi import ASGIApp, Receive, Scope, Send
    from ocpd.node.intake import Intake
    from ocpd.web import Metrics

__all__ = ["MessagesEndpoint"]


_JSON: Final = (b"content-type", b"application/json")
#: The agent an ``Authorization`` header names (checked properly by the intake).
_CLAIM: Final = re.compile(rb"OCP-Ed25519 (did:ocp:[a-z0-9-]{1,32}:agent-[0-9a-f]{12}):")


class _ClientGone(Exception):
    """The client disconnected before its body arrived."""


def _dumps(value: object) -> bytes:
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False).encode("utf-8")


class MessagesEndpoint:
    def __init__(self, intake: Intake, metrics: Metrics, *, max_message_bytes: int) -> None:
        self.intake = intake
        self.metrics = metrics
        self.max_bytes = max_message_bytes

    def install(self, app: QuartTrio) -> None:
        inner = cast("ASGIApp", app.asgi_app)

        async def front(scope: Scope, receive: Receive, send: Send) -> None:
            if scope["type"] == "http" and scope["path"] == MESSAGES_PATH:
                await self.handle(scope, receive, send)
            else:
                await inner(scope, receive, send)

        app.asgi_app = front  # type: ignore[method-assign,assignment]

    async def handle(self, scope: Scope, receive: Receive, send: Send) -> None:
        started = trio.current_time()
        if scope["method"] != "POST":
            await _respond(send, 405, b"", [(b"allow", b"POST")])
            self._observe(started, 405)
            return
        attempt = Attempt("http", started)
        headers = _headers(scope)
        result: Outcome | OcpError
        extra: list[tuple[bytes, bytes]] = []
        try:
            result = await self._process(scope, receive, headers, attempt)
        except _ClientGone:
            return
        self.intake.finish(attempt, result)
        if isinstance(result, Outcome):
            body: dict[str, object] = {"status": "accepted", "message_id": result.message_id}
            if result.duplicate:
                body["duplicate"] = True
            status = 202
            payload = _dumps(body)
        else:
            status = result.http_status
            payload = _dumps(self.intake.error_message(result, attempt))
            if isinstance(result, RateLimited):
                extra.append((b"retry-after", str(result.retry_after).encode()))
            if isinstance(result, PayloadTooLarge):
                extra.append((b"connection", b"close"))
        await _respond(send, status, payload, extra)
        self._observe(started, status)

    def _observe(self, started: float, status: int) -> None:
        self.metrics.request_duration.labels(MESSAGES_PATH).observe(trio.current_time() - started)
        self.metrics.requests.labels(MESSAGES_PATH, str(status)).inc()

    async def _process(
        self, scope: Scope, receive: Receive, headers: dict[bytes, bytes], attempt: Attempt
    ) -> Outcome | OcpError:
        header = headers.get(b"authorization")
        authorization = None if header is None else header.decode("latin-1")
        claim = _CLAIM.match(header) if header is not None else None
        if claim is not None:
            # Who the request claims to be: early refusals are addressed to it.
            attempt.sender = claim.group(1).decode("ascii")
        try:
            version = headers.get(b"x-ocf-version", headers.get(b"x-ocp-version"))
            if version is not None and version.strip() != OCF_VERSION.encode():
                raise MalformedError(
                    "unsupported protocol version",
                    details={"header": "X-OCF-Version", "supported": [OCF_VERSION]},
                )
            content_type = headers.get(b"content-type")
            if content_type is not None and (
                content_type.split(b";")[0].strip().lower() != b"application/json"
            ):
                raise MalformedError("Content-Type must be application/json")
            declared = headers.get(b"content-length")
            if declared is not None:
                if not declared.strip().isdigit():
                    raise MalformedError("Content-Length is not a number")
                if int(declared) > self.max_bytes:
                    raise PayloadTooLarge(
                        f"body of {int(declared)} bytes exceeds the limit of {self.max_bytes}",
                        details={"limit": self.max_bytes},
                    )
            raw = await self._read_body(receive)
            query = scope.get("query_string", b"")
            path = scope.get("raw_path") or scope["path"].encode("ascii")
            credentials = HttpCredentials(
                authorization=authorization,
                path_and_query=(path + b"?" + query if query else path).decode("latin-1"),
            )
            checked = await self.intake.check(raw, attempt, http=credentials)
            return (await self.intake.commit([checked]))[0]
        except OcpError as exc:
            return exc

    async def _read_body(self, receive: Receive) -> bytes:
        chunks: list[bytes] = []
        size = 0
        while True:
            event = await receive()
            if event["type"] == "http.disconnect":
                raise _ClientGone
            chunk = event.get("body", b"")
            size += len(chunk)
            if size > self.max_bytes:
                raise PayloadTooLarge(
                    f"body exceeds the limit of {self.max_bytes} bytes",
                    details={"limit": self.max_bytes},
                )
            if chunk:
                chunks.append(chunk)
            if not event.get("more_body", False):
                return b"".join(chunks)


def _headers(scope: Scope) -> dict[bytes, bytes]:
    """Request headers by lower-case name (the first of repeated ones)."""
    out: dict[bytes, bytes] = {}
    for name, value in scope["headers"]:
        out.setdefault(name.lower(), value)
    return out


async def _respond(send: Send, status: int, body: bytes, extra: list[tuple[bytes, bytes]]) -> None:
    headers = [(b"content-length", str(len(body)).encode()), *extra]
    if body:
        headers.append(_JSON)
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})
