"""One authenticated WebSocket session with a node (OCP §3.1.1, D2, D6).

:func:`open_session` connects, upgrades with subprotocol ``ocp.v1``, sends the
``auth_handshake`` and reads ``auth_result``. A :class:`Session` then keeps
the sends that wait for their ``receipt`` frame; the reader settles them, and
when the session ends whatever is still waiting fails with
:class:`ConnectionFailed`.
"""

from __future__ import annotations

import json
import logging
from typing import TYPE_CHECKING, Any, Final, Generic, TypeVar, cast

import anyio
import attrs

from ocpd.client.errors import AuthenticationRejected, ConnectionFailed, NodeError
from ocpd.client.websocket import (
    ConnectStream,
    Endpoint,
    WebSocket,
    WebSocketClosed,
    WebSocketError,
    open_websocket,
)
from ocpd.proto.auth import build_ws_auth_handshake
from ocpd.proto.envelope import MAX_MESSAGE_SIZE
from ocpd.proto.errors import OcpError
from ocpd.proto.strictjson import loads_strict

if TYPE_CHECKING:
    from collections.abc import Callable, Mapping

    from ocpd.client.keys import AgentKey

__all__ = ["SUBPROTOCOL", "Session", "Slot", "dumps", "number", "open_session"]

SUBPROTOCOL: Final = "ocp.v1"
_AUTH_RESULT_MAX: Final = 65_536

log = logging.getLogger("ocpd.client")

T = TypeVar("T")


def dumps(message: Mapping[str, Any]) -> str:
    """Compact JSON as sent on the wire (strictly JSON: no NaN)."""
    return json.dumps(message, separators=(",", ":"), ensure_ascii=False, allow_nan=False)


def number(value: object) -> float | None:
    """A non-negative JSON number as a float, else ``None``."""
    if isinstance(value, int | float) and not isinstance(value, bool) and value >= 0:
        return float(value)
    return None


class Slot(Generic[T]):
    """A one-shot result that tasks can wait for."""

    def __init__(self) -> None:
        self._event = anyio.Event()
        self._value: T | None = None
        self._error: NodeError | None = None

    @property
    def done(self) -> bool:
        return self._event.is_set()

    def set(self, value: T) -> None:
        if not self.done:
            self._value = value
            self._event.set()

    def fail(self, error: NodeError) -> None:
        if not self.done:
            self._error = error
            self._event.set()

    async def wait_done(self) -> None:
        await self._event.wait()

    async def wait(self) -> T:
        await self._event.wait()
        if self._error is not None:
            raise self._error
        return cast("T", self._value)


@attrs.define(eq=False)
class Session:
    """An authenticated session; ``refresh_at`` is on the anyio clock."""

    ws: WebSocket
    session_id: str
    ttl: int
    refresh_at: float
    receipts: dict[str, list[Slot[dict[str, Any]]]] = attrs.Factory(dict)
    draining: bool = False
    """No new sends: the session is about to close."""
    refreshing: bool = False
    """Closing to re-authenticate (reconnect at once, no backoff)."""
    finished: anyio.Event = attrs.Factory(anyio.Event)

    def expect_receipt(self, message_id: str) -> Slot[dict[str, Any]]:
        slot: Slot[dict[str, Any]] = Slot()
        self.receipts.setdefault(message_id, []).append(slot)
        return slot

    def forget(self, message_id: str, slot: Slot[dict[str, Any]]) -> None:
        slots = self.receipts.get(message_id, [])
        if slot in slots:
            slots.remove(slot)
        if not slots:
            self.receipts.pop(message_id, None)

    def settle(self, frame: dict[str, Any]) -> bool:
        """Complete the sends waiting for this receipt; ``False`` if none was."""
        message_id = frame.get("message_id")
        slots = self.receipts.pop(message_id, []) if isinstance(message_id, str) else []
        for slot in slots:
            slot.set(frame)
        return bool(slots)

    def fail_all(self, error: NodeError) -> None:
        for slots in self.receipts.values():
            for slot in slots:
                slot.fail(error)
        self.receipts.clear()

    async def wait_receipts(self) -> None:
        """Return once no send on this session waits for its receipt."""
        while self.receipts:
            slot = next(iter(self.receipts.values()))[0]
            await slot.wait_done()


async def open_session(
    endpoint: Endpoint,
    agent: AgentKey,
    *,
    connect_stream: ConnectStream,
    now: Callable[[], float],
    connect_limit: float,
    reauth_fraction: float,
) -> Session:
    """Connect and authenticate within ``connect_limit`` seconds.

    Raises :class:`ConnectionFailed`, or :class:`AuthenticationRejected`
    with the node's ``error_code``.
    """
    url = endpoint.url("ws")
    try:
        with anyio.fail_after(connect_limit):
            ws = await open_websocket(
                endpoint,
                subprotocols=[SUBPROTOCOL],
                connect_stream=connect_stream,
                max_message_size=MAX_MESSAGE_SIZE,
            )
            try:
                session_id, ttl = await _authenticate(ws, agent, now())
            except BaseException:
                await ws.aclose()
                raise
    except TimeoutError:
        raise ConnectionFailed(f"{url}: no session within {connect_limit:g} s") from None
    except WebSocketError as exc:
        raise ConnectionFailed(f"{url}: {exc}") from None
    except WebSocketClosed as exc:
        raise ConnectionFailed(f"{url}: closed during authentication ({exc})") from None
    log.info("session %s open (ttl %d s)", session_id, ttl)
    return Session(
        ws=ws,
        session_id=session_id,
        ttl=ttl,
        refresh_at=anyio.current_time() + ttl * reauth_fraction,
    )


async def _authenticate(ws: WebSocket, agent: AgentKey, now: float) -> tuple[str, int]:
    handshake = build_ws_auth_handshake(agent.key, agent_id=agent.agent_id, now=now)
    await ws.send(dumps(handshake))
    text = await ws.receive()
    try:
        frame = loads_strict(text.encode("utf-8"), max_size=_AUTH_RESULT_MAX)
    except OcpError:
        frame = None
    if not isinstance(frame, dict) or frame.get("frame_type") != "auth_result":
        raise ConnectionFailed("the node did not answer the handshake with auth_result")
    if frame.get("status") != "accepted":
        code = frame.get("error_code")
        message = frame.get("message")
        raise AuthenticationRejected(
            message if isinstance(message, str) and message else "authentication rejected",
            code=code if isinstance(code, str) else None,
            retry_after=number(frame.get("retry_after")),
        )
    session_id, ttl = frame.get("session_id"), frame.get("ttl")
    if not isinstance(session_id, str) or type(ttl) is not int or ttl <= 0:
        raise ConnectionFailed("auth_result lacks session_id or a positive ttl")
    return session_id, ttl
