"""Messaging with an OCP node over WebSocket and HTTPS (OCP §3.1, §3.4, §7; D2-D6).

Theory of operation
-------------------
A :class:`NodeClient` holds at most one authenticated WebSocket session. One
supervisor task opens it (TCP, TLS, upgrade with subprotocol ``ocp.v1``,
``auth_handshake``, ``auth_result``), serves it, and opens the next one:

* after the connection breaks, following a backoff delay (exponential from
  1 s to 60 s with jitter, so that agents do not stampede a restarted node);
* when 90 % of the session's ``ttl`` has passed, at once: the session stops
  taking new sends, its outstanding receipts come in, it closes with 1000,
  and a fresh handshake opens the next (break before make: the node keeps
  messages for an agent that is briefly offline, and need not allow two
  sessions per agent).

While no session is up, sends wait for the next one (``Timings.send_wait``).
A rejected handshake ends the client for good unless its code is transient
(``OCP-429``, ``OCP-503``...): the application sees the error on its next
call.

::

    agent                                                  node
      |--- TLS; GET /ocp/v1/ws; Sec-WebSocket-Protocol: ocp.v1 -->|
      |<-- 101 (ocp.v1) -------------------------------------------|
      |--- {"frame_type": "auth_handshake", ...} ----------------->|
      |<-- {"frame_type": "auth_result", "status": "accepted"} ----|
      |--- message ----------------------------------------------->|
      |<-- {"frame_type": "receipt", "status": "accepted"} --------|
      |<-- message from another agent -----------------------------|  Inbox checks it
      |--- ack (metadata.correlation_id = its message_id) -------->|  if requires_ack

The session's reader handles every frame in order: receipts complete the
sends waiting for them; messages go through the :class:`Inbox` into a bounded
channel the application reads. That channel is back-pressure: while it is
full the reader waits, and so do the receipts behind it, so keep reading.
An ``ack`` (or ``error``) answering one of our own pending sends completes
that send instead of reaching the application.
"""

from __future__ import annotations

import logging
import random
from typing import TYPE_CHECKING, Any, Final, Literal

import anyio
import anyio.abc
import attrs
import httpx

from ocpd.client.delivery import (
    Backoff,
    Timings,
    build_ack,
    error_from_payload,
    error_from_receipt,
    is_transient,
    retry_delays,
)
from ocpd.client.didcache import DidCache, DidResolver
from ocpd.client.errors import (
    AckTimeout,
    AuthenticationRejected,
    ConnectionFailed,
    NodeError,
)
from ocpd.client.https import post_message
from ocpd.client.inbox import Dropped, Inbox, ReceivedMessage
from ocpd.client.session import Session, Slot, dumps, open_session
from ocpd.client.websocket import (
    ConnectStream,
    Endpoint,
    WebSocketClosed,
    client_ssl_context,
    parse_endpoint,
    tcp_connector,
)
from ocpd.proto import schema
from ocpd.proto.diddoc import build_did_document
from ocpd.proto.envelope import (
    DEFAULT_TTL,
    MAX_MESSAGE_SIZE,
    build_message,
    encrypt_payload,
    sign_message,
)
from ocpd.proto.errors import OcpError
from ocpd.proto.ids import is_broadcast_did, parse_node_id
from ocpd.proto.strictjson import loads_strict

if TYPE_CHECKING:
    import ssl
    from collections.abc import Callable, Mapping
    from types import TracebackType

    from ocpd.client.keys import AgentKey

__all__ = ["Delivery", "NodeClient", "ReceivedMessage", "Timings"]

log = logging.getLogger("ocpd.client")

WS_PATH: Final = "/ocp/v1/ws"
MESSAGES_PATH: Final = "/ocp/v1/messages"

Transport = Literal["ws", "http"]


@attrs.frozen
class Delivery:
    """The outcome of a send: accepted by the node, and acknowledged if asked."""

    message_id: str
    message: dict[str, Any]
    transport: Transport
    attempts: int = 1
    ack: ReceivedMessage | None = None
    response: dict[str, Any] | None = None
    """The body of an HTTP 200 (a synchronous answer), unverified."""


@attrs.define(eq=False)
class _AckWait:
    receiver: str
    slot: Slot[ReceivedMessage] = attrs.Factory(Slot)


class NodeClient:
    """An agent's connection to its node: send, receive, encrypt, acknowledge.

    ``ws_url`` is the node's WebSocket endpoint (``wss://host:8421``; the path
    defaults to ``/ocp/v1/ws``); ``http_url`` its HTTPS endpoint
    (``https://host:8420``, path ``/ocp/v1/messages``). Either may be left
    out: without ``ws_url`` nothing is received (and acks cannot be awaited),
    without ``http_url`` everything goes over the WebSocket.

    ``resolve_did`` returns another agent's DID document (use
    ``RegistryClient.resolve_did``); documents are cached (:class:`DidCache`).
    ``pinned_documents`` are trusted without resolving. ``node_id`` (the
    node's ``node:did:key:z…``, from ``ocpd identity show``) pins the node's
    service agent. Its messages (an ``OCP-502`` for a message it could not
    deliver, task timeouts) verify through the registry anyway, since an
    ocpd node registers that agent; pinning also lets such an error end a
    pending :meth:`send` that waits for an ack, which an error from any
    other agent than the receiver never does.

    Use as ``async with NodeClient(...) as node:``; entering connects and
    authenticates (raising :class:`ConnectionFailed` or
    :class:`AuthenticationRejected`), leaving closes the session cleanly.
    """

    def __init__(
        self,
        agent: AgentKey,
        *,
        resolve_did: DidResolver,
        ws_url: str | None = None,
        http_url: str | None = None,
        verify: ssl.SSLContext | str | bool = True,
        auto_ack: bool = True,
        inbox_size: int = 1000,
        timings: Timings | None = None,
        pinned_documents: Mapping[str, Mapping[str, Any]] | None = None,
        node_id: str | None = None,
        wall_clock: Callable[[], float] | None = None,
        rng: random.Random | None = None,
        connect_stream: ConnectStream | None = None,
    ) -> None:
        if ws_url is None and http_url is None:
            raise ValueError("give the node's ws_url, http_url or both")
        self.agent = agent
        self.timings = timings or Timings()
        self.auto_ack = auto_ack
        self._ws_endpoint = (
            parse_endpoint(ws_url, kind="ws", default_path=WS_PATH) if ws_url else None
        )
        self._http_endpoint = (
            parse_endpoint(http_url, kind="http", default_path=MESSAGES_PATH) if http_url else None
        )
        self._ssl = client_ssl_context(verify)
        self._connect_stream = connect_stream or tcp_connector(self._ssl)
        self._wall_clock = wall_clock or agent.now
        pinned = dict(pinned_documents or {})
        if node_id is not None:
            # The node's service agent shares the node key (D4).
            service = build_did_document(parse_node_id(node_id), network=agent.network)
            pinned[service["id"]] = service
        self.documents = DidCache(resolve_did, pinned=pinned)
        self.inbox = Inbox(agent, self.documents, wall_clock=self._wall_clock)
        self._inbox_size = inbox_size
        self._backoff = Backoff(
            base=self.timings.reconnect_base,
            maximum=self.timings.reconnect_max,
            rng=rng or random.Random(),  # noqa: S311 - jitter, not secrets
        )
        self._session: Session | None = None
        self._fatal: NodeError | None = None
        self._closing = False
        self._acks: dict[str, _AckWait] = {}
        self.sessions_opened = 0

    # --- lifecycle ------------------------------------------------------------------

    async def __aenter__(self) -> NodeClient:
        self._changed = anyio.Event()
        self._inbox_send, self._inbox_receive = anyio.create_memory_object_stream[ReceivedMessage](
            self._inbox_size
        )
        self._http = httpx.AsyncClient(verify=self._ssl, timeout=self.timings.receipt_timeout)
        self._run_scope = anyio.CancelScope()
        self._task_group = anyio.create_task_group()
        await self._task_group.__aenter__()
        try:
            if self._ws_endpoint is not None:
                await self._task_group.start(self._run_ws, self._ws_endpoint)
        except BaseException:
            self._run_scope.cancel()
            await self._task_group.__aexit__(None, None, None)
            await self._http.aclose()
            self._inbox_send.close()
            self._inbox_receive.close()
            raise
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()
        # The body's own exception is not the task group's business: passing it
        # in would only wrap it in an exception group.
        await self._task_group.__aexit__(None, None, None)
        self._inbox_receive.close()

    async def aclose(self) -> None:
        """Close the session (close handshake, bounded) and stop reconnecting."""
        if self._closing:
            return
        self._closing = True
        self._notify()
        with anyio.CancelScope(shield=True):
            session = self._session
            if session is not None:
                with anyio.move_on_after(self.timings.close_timeout):
                    await self._drain(session)
                    try:
                        await session.ws.close(1000, "client closing")
                    except WebSocketClosed:
                        pass
                    await session.finished.wait()
            self._run_scope.cancel()
            self._inbox_send.close()
            await self._http.aclose()

    def now(self) -> float:
        """The wall clock this client signs timestamps with (epoch seconds)."""
        return self._wall_clock()

    @property
    def connected(self) -> bool:
        session = self._session
        return session is not None and not session.draining

    @property
    def session_id(self) -> str | None:
        return self._session.session_id if self._session is not None else None

    def _notify(self) -> None:
        self._changed.set()
        self._changed = anyio.Event()

    def _set_session(self, session: Session | None) -> None:
        self._session = session
        self._notify()

    def _fail(self, error: NodeError) -> None:
        self._fatal = error
        self._inbox_send.close()
        for waiter in self._acks.values():
            waiter.slot.fail(error)
        self._notify()

    async def wait_connected(self) -> None:
        """Wait until a session is up (e.g. after a node restart), at most ``send_wait``."""
        await self._wait_session(self.timings.send_wait)

    # --- sessions ---------------------------------------------------------------------

    async def _run_ws(self, endpoint: Endpoint, *, task_status: anyio.abc.TaskStatus[None]) -> None:
        with self._run_scope:
            first = True
            while not self._closing:
                try:
                    session = await open_session(
                        endpoint,
                        self.agent,
                        connect_stream=self._connect_stream,
                        now=self._wall_clock,
                        connect_limit=self.timings.connect_timeout,
                        reauth_fraction=self.timings.reauth_fraction,
                    )
                    self.sessions_opened += 1
                except NodeError as exc:
                    if first:
                        raise
                    if isinstance(exc, AuthenticationRejected) and not is_transient(exc):
                        log.error("the node refused this agent: %s", exc)
                        self._fail(exc)
                        return
                    delay = max(self._backoff.next_delay(), exc.retry_after or 0.0)
                    log.info("reconnect failed (%s); next attempt in %.1f s", exc, delay)
                    await anyio.sleep(delay)
                    continue
                self._backoff.reset()
                self._set_session(session)
                if first:
                    first = False
                    task_status.started()
                try:
                    await self._serve(session)
                finally:
                    self._set_session(None)
                    session.fail_all(ConnectionFailed("the session ended before the receipt"))
                    session.finished.set()
                    with anyio.CancelScope(shield=True):
                        await session.ws.aclose()
                if not session.refreshing and not self._closing:
                    delay = self._backoff.next_delay()
                    log.info("connection lost; reconnecting in %.1f s", delay)
                    await anyio.sleep(delay)

    async def _serve(self, session: Session) -> None:
        async with anyio.create_task_group() as tasks:
            tasks.start_soon(self._refresh_when_due, session)
            tasks.start_soon(self._keepalive, session)
            await self._read(session)
            tasks.cancel_scope.cancel()

    async def _read(self, session: Session) -> None:
        while True:
            try:
                text = await session.ws.receive()
            except WebSocketClosed as exc:
                if not (session.refreshing or self._closing):
                    log.warning("session %s closed: %s", session.session_id, exc)
                return
            await self._on_frame(session, text)

    async def _drain(self, session: Session) -> None:
        """Stop new sends on ``session`` and wait for its outstanding receipts."""
        session.draining = True
        self._notify()
        with anyio.move_on_after(self.timings.receipt_timeout):
            await session.wait_receipts()

    async def _refresh_when_due(self, session: Session) -> None:
        await anyio.sleep_until(session.refresh_at)
        log.info("session %s: re-authenticating before its ttl runs out", session.session_id)
        session.refreshing = True
        await self._drain(session)
        try:
            await session.ws.close(1000, "re-authenticating")
        except WebSocketClosed:
            return
        await anyio.sleep(self.timings.close_timeout)
        await session.ws.aclose()  # the node never answered the close frame

    async def _keepalive(self, session: Session) -> None:
        interval = self.timings.keepalive_interval
        while True:
            await anyio.sleep(interval)
            idle = anyio.current_time() - session.ws.last_received
            if idle >= 2 * interval:
                log.warning("session %s silent for %.0f s; reconnecting", session.session_id, idle)
                await session.ws.aclose()
                return
            if idle >= interval:
                try:
                    await session.ws.ping()
                except WebSocketClosed:
                    return

    # --- incoming ---------------------------------------------------------------------

    async def _on_frame(self, session: Session, text: str) -> None:
        raw = text.encode("utf-8")
        try:
            value = loads_strict(raw, max_size=MAX_MESSAGE_SIZE)
        except OcpError as exc:
            log.warning("dropped a frame that is not I-JSON: %s", exc.message)
            return
        if not isinstance(value, dict):
            log.warning("dropped a frame that is not a JSON object")
            return
        frame_type = value.get("frame_type")
        if frame_type == "receipt":
            if not session.settle(value) and value.get("status") == "rejected":
                error = error_from_receipt(value)
                log.warning("the node rejected %s: %s", value.get("message_id"), error)
            return
        if frame_type is not None:
            log.debug("ignored a %r frame", frame_type)
            return
        await self._on_message(session, raw, value)

    async def _on_message(self, session: Session, raw: bytes, value: dict[str, Any]) -> None:
        try:
            received, fresh = await self.inbox.accept(raw, value)
        except Dropped as exc:
            log.warning("dropped message %s: %s", exc.message_id or "?", exc.reason)
            return
        if not fresh:
            if received.requires_ack and self.inbox.dedup.was_acked(
                received.sender, received.message_id
            ):
                await self._ack_quietly(session, received)
            log.debug("dropped repeat of %s", received.message_id)
            return
        if self._answers_pending_send(received):
            return
        if self.auto_ack and received.requires_ack and received.message_type != "ack":
            await self._ack_quietly(session, received)
        try:
            await self._inbox_send.send(received)
        except (anyio.ClosedResourceError, anyio.BrokenResourceError):
            log.debug("client closing; %s not delivered", received.message_id)

    def _answers_pending_send(self, received: ReceivedMessage) -> bool:
        if received.message_type == "ack":
            waiter = self._acks.get(received.correlation_id or "")
            if waiter is not None and waiter.receiver == received.sender:
                waiter.slot.set(received)
                return True
        elif received.message_type == "error":
            reference = received.payload.get("reference_message_id") or received.correlation_id
            waiter = self._acks.get(reference) if isinstance(reference, str) else None
            if waiter is not None and (
                waiter.receiver == received.sender or self.documents.is_pinned(received.sender)
            ):
                waiter.slot.fail(error_from_payload(received.payload))
                return True
        return False

    async def receive(self) -> ReceivedMessage:
        """The next message for this agent (verified, deduplicated, decrypted).

        Raises the error that ended the client (e.g. a rejected
        re-authentication), or :class:`ConnectionFailed` once it is closed.
        """
        if self._ws_endpoint is None:
            raise ConnectionFailed("no ws_url: this client cannot receive messages")
        try:
            return await self._inbox_receive.receive()
        except (anyio.EndOfStream, anyio.ClosedResourceError):
            raise self._fatal or ConnectionFailed("the client is closed") from None

    def drain(self) -> list[ReceivedMessage]:
        """The messages received and not read yet, without waiting."""
        found: list[ReceivedMessage] = []
        while True:
            try:
                found.append(self._inbox_receive.receive_nowait())
            except (anyio.WouldBlock, anyio.EndOfStream, anyio.ClosedResourceError):
                return found

    def __aiter__(self) -> NodeClient:
        return self

    async def __anext__(self) -> ReceivedMessage:
        try:
            return await self.receive()
        except ConnectionFailed:
            if self._fatal is None and self._closing:
                raise StopAsyncIteration from None
            raise

    # --- outgoing ---------------------------------------------------------------------

    async def prepare(
        self,
        receiver: str,
        message_type: str,
        payload: Mapping[str, Any],
        *,
        encrypt: bool = False,
        requires_ack: bool = False,
        ttl: int = DEFAULT_TTL,
        priority: str = "normal",
        metadata: Mapping[str, Any] | None = None,
        message_id: str | None = None,
    ) -> dict[str, Any]:
        """A signed message, its payload encrypted to ``receiver`` if asked (D5).

        The plaintext payload is checked against its schema here, since
        nobody on the way can check it once it is encrypted.
        """
        meta = dict(metadata or {})
        if requires_ack:
            meta["requires_ack"] = True
        broadcast = is_broadcast_did(receiver)
        message = build_message(
            sender=self.agent.agent_id,
            receiver=receiver,
            message_type=message_type,
            payload=payload,
            now=self._wall_clock(),
            ttl=ttl,
            priority=priority,
            broadcast=broadcast,
            metadata=meta or None,
            message_id=message_id,
        )
        schema.validate(f"payload.{message_type}", message["payload"])
        if encrypt:
            if broadcast:
                raise ValueError("a broadcast cannot be encrypted to one receiver")
            document = await self.documents.get(receiver)
            message = encrypt_payload(message, document.newest_key_agreement())
        signed = sign_message(message, self.agent.key)
        schema.validate_envelope(signed)
        return signed

    async def send(
        self,
        receiver: str,
        message_type: str,
        payload: Mapping[str, Any],
        *,
        encrypt: bool = False,
        requires_ack: bool = False,
        wait_ack: bool | None = None,
        transport: Transport | None = None,
        ttl: int = DEFAULT_TTL,
        priority: str = "normal",
        metadata: Mapping[str, Any] | None = None,
    ) -> Delivery:
        """Sign (and encrypt), send, and with ``requires_ack`` wait for the ack.

        Waiting for the ack (``wait_ack``, by default ``requires_ack``) means
        up to ``ack_timeout`` after each attempt, then resending the same
        message after 1, 2, 4, 8, 16 s (OCP §3.4, Appendix D) until an ack
        comes or :class:`AckTimeout`. The node or the receiver refusing it
        raises :class:`MessageRejected` with the code.
        """
        message = await self.prepare(
            receiver,
            message_type,
            payload,
            encrypt=encrypt,
            requires_ack=requires_ack,
            ttl=ttl,
            priority=priority,
            metadata=metadata,
        )
        if requires_ack if wait_ack is None else wait_ack:
            return await self.send_until_acked(message, transport=transport)
        return await self.transmit(message, transport=transport)

    def _pick(self, transport: Transport | None) -> Transport:
        if transport is None:
            return "ws" if self._ws_endpoint is not None else "http"
        if transport == "ws" and self._ws_endpoint is None:
            raise ValueError("no ws_url given")
        if transport == "http" and self._http_endpoint is None:
            raise ValueError("no http_url given")
        return transport

    async def transmit(
        self, message: Mapping[str, Any], *, transport: Transport | None = None
    ) -> Delivery:
        """Send a signed message once; returns when the node accepted it."""
        chosen = self._pick(transport)
        text = dumps(message)
        message_id = str(message["message_id"])
        if chosen == "ws":
            await self._send_ws(message_id, text)
            return Delivery(message_id=message_id, message=dict(message), transport="ws")
        if self._http_endpoint is None:  # pragma: no cover - _pick checked it
            raise ValueError("no http_url given")
        response = await post_message(
            self._http,
            self._http_endpoint,
            self.agent,
            text.encode("utf-8"),
            now=self._wall_clock(),
        )
        return Delivery(
            message_id=message_id, message=dict(message), transport="http", response=response
        )

    async def send_until_acked(
        self, message: Mapping[str, Any], *, transport: Transport | None = None
    ) -> Delivery:
        """Send a signed message and resend it until the receiver acks it."""
        if self._ws_endpoint is None:
            raise ValueError("acks arrive over the WebSocket session: give ws_url")
        receiver = message["receiver"]["agent_id"]
        if is_broadcast_did(receiver):
            raise ValueError("acks are awaited for direct messages only")
        message_id = str(message["message_id"])
        if message_id in self._acks:
            raise ValueError(f"already waiting for the ack of {message_id}")
        waiter = _AckWait(receiver=receiver)
        self._acks[message_id] = waiter
        try:
            attempts, chosen = await self._attempts(message, waiter, transport)
            ack = await waiter.slot.wait()
        finally:
            del self._acks[message_id]
        return Delivery(
            message_id=message_id,
            message=dict(message),
            transport=chosen,
            attempts=attempts,
            ack=ack,
        )

    async def _attempts(
        self, message: Mapping[str, Any], waiter: _AckWait, transport: Transport | None
    ) -> tuple[int, Transport]:
        chosen = self._pick(transport)
        delays = retry_delays(
            count=self.timings.max_retry_count, base=self.timings.retry_base_delay
        )
        for attempt in range(len(delays) + 1):
            if attempt:
                # An ack that comes late, during the pause, still counts.
                with anyio.move_on_after(delays[attempt - 1]):
                    await waiter.slot.wait_done()
                if waiter.slot.done:
                    return attempt, chosen
            try:
                await self.transmit(message, transport=chosen)
            except NodeError as exc:
                if not is_transient(exc):
                    raise
                log.info("attempt %d of %s failed: %s", attempt + 1, message["message_id"], exc)
            with anyio.move_on_after(self.timings.ack_timeout):
                await waiter.slot.wait_done()
            if waiter.slot.done:
                return attempt + 1, chosen
        raise AckTimeout(
            f"no ack for {message['message_id']} after {len(delays) + 1} attempts",
            attempts=len(delays) + 1,
        )

    async def ack(
        self, received: ReceivedMessage, *, status: str = "received", note: str | None = None
    ) -> Delivery:
        """Acknowledge a message (``ack`` with ``metadata.correlation_id``)."""
        self.inbox.dedup.mark_acked(received.sender, received.message_id)
        ack = self._signed_ack(received, status=status, note=note)
        return await self.transmit(ack)

    def _signed_ack(
        self, received: ReceivedMessage, *, status: str = "received", note: str | None = None
    ) -> dict[str, Any]:
        ack = build_ack(
            sender=self.agent.agent_id,
            receiver=received.sender,
            acknowledged_id=received.message_id,
            now=self._wall_clock(),
            status=status,
            note=note,
        )
        return sign_message(ack, self.agent.key)

    async def _ack_quietly(self, session: Session, received: ReceivedMessage) -> None:
        """Ack from the reader: on its own session, without waiting for the receipt
        (only the reader could read it). A lost ack is repaired by the sender's
        retry, which is acknowledged again."""
        self.inbox.dedup.mark_acked(received.sender, received.message_id)
        try:
            await session.ws.send(dumps(self._signed_ack(received)))
        except WebSocketClosed as exc:
            log.info("could not ack %s: %s", received.message_id, exc)

    async def _wait_session(self, limit: float) -> Session:
        with anyio.move_on_after(max(limit, 0.0)):
            while True:
                if self._fatal is not None:
                    raise self._fatal
                if self._closing:
                    raise ConnectionFailed("the client is closed")
                session = self._session
                if session is not None and not session.draining:
                    return session
                await self._changed.wait()
        raise ConnectionFailed(f"no session with the node within {limit:g} s")

    async def _send_ws(self, message_id: str, text: str) -> None:
        """Send on the current session and wait for the receipt.

        A session that ends between the send and the receipt leaves it open
        whether the node took the message; it is sent again on the next
        session (the node acknowledges a repeat of the same bytes again and
        delivers it once, D6), as long as a session comes within
        ``send_wait``.
        """
        deadline = anyio.current_time() + self.timings.send_wait
        while True:
            session = await self._wait_session(deadline - anyio.current_time())
            try:
                frame = await self._send_on(session, message_id, text)
            except ConnectionFailed as exc:
                if anyio.current_time() >= deadline or self._closing:
                    raise
                log.info("%s: %s; sending again on the next session", message_id, exc)
                continue
            if frame.get("status") == "accepted":
                return
            raise error_from_receipt(frame)

    async def _send_on(self, session: Session, message_id: str, text: str) -> dict[str, Any]:
        slot = session.expect_receipt(message_id)
        try:
            await session.ws.send(text)
        except WebSocketClosed as exc:
            session.forget(message_id, slot)
            raise ConnectionFailed(f"connection lost while sending: {exc}") from None
        with anyio.move_on_after(self.timings.receipt_timeout):
            return await slot.wait()
        session.forget(message_id, slot)
        raise NodeError(
            f"no receipt for {message_id} within {self.timings.receipt_timeout:g} s",
            code="OCP-408",
        )
