"""Sending one message with ``POST /ocp/v1/messages`` (OCP §3.1.2, D3, D6).

The request carries ``Authorization: OCP-Ed25519 …`` over the exact body and
``X-OCF-Version: 1.0``. The node answers 202 once the message is durably
accepted, 200 with a response message for requests it answers itself, and
otherwise with its signed OCPUMF ``error`` message, whose HTTP status is
the number in the code (``Retry-After`` with OCP-429).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import httpx

from ocpd.client.delivery import error_from_payload
from ocpd.client.errors import ConnectionFailed, MessageRejected
from ocpd.proto.auth import message_post_headers
from ocpd.proto.envelope import MAX_MESSAGE_SIZE
from ocpd.proto.errors import OCP_ERROR_CODES, OcpError
from ocpd.proto.strictjson import loads_strict

if TYPE_CHECKING:
    from ocpd.client.keys import AgentKey
    from ocpd.client.websocket import Endpoint

__all__ = ["http_error", "post_message"]


async def post_message(
    http: httpx.AsyncClient, endpoint: Endpoint, agent: AgentKey, body: bytes, *, now: float
) -> dict[str, Any] | None:
    """POST a signed message; the 200 answer (unverified) or ``None`` for 202.

    Raises :class:`MessageRejected` with the node's code, or
    :class:`ConnectionFailed`.
    """
    headers = message_post_headers(
        agent.key, agent_id=agent.agent_id, path_and_query=endpoint.path, body=body, now=now
    )
    url = endpoint.url("http")
    try:
        response = await http.post(url, content=body, headers=headers)
    except httpx.HTTPError as exc:
        raise ConnectionFailed(f"{url}: {exc}") from None
    if response.status_code == 200:
        try:
            answer = loads_strict(response.content, max_size=MAX_MESSAGE_SIZE)
        except OcpError:
            return None
        return answer if isinstance(answer, dict) else None
    if 200 <= response.status_code < 300:
        return None
    raise http_error(response)


def http_error(response: httpx.Response) -> MessageRejected:
    """The node's ``error`` message (D6) as an exception.

    Its signature is not checked: the answer came back on the TLS connection
    the request went out on, and it only ever becomes an exception.
    """
    header = response.headers.get("retry-after", "").strip()
    retry_after = float(header) if header.isdigit() else None
    try:
        body = loads_strict(response.content, max_size=MAX_MESSAGE_SIZE)
    except OcpError:
        body = None
    fallback = f"HTTP {response.status_code}"
    if isinstance(body, dict) and isinstance(body.get("payload"), dict):
        body = body["payload"]
    if isinstance(body, dict):
        return error_from_payload(
            body, status=response.status_code, retry_after=retry_after, fallback=fallback
        )
    code = f"OCP-{response.status_code}"
    return MessageRejected(
        fallback,
        code=code if code in OCP_ERROR_CODES else None,
        status=response.status_code,
        retry_after=retry_after,
    )
