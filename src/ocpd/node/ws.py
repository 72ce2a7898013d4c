"""``/ocp/v1/ws``: the WebSocket transport (OCP §3.1.1, D2, D6), raw ASGI.

Theory of operation
-------------------
A connection must offer the subprotocol ``ocp.v1`` (otherwise the upgrade
is refused, HTTP 403). Once accepted it is *pending*: it counts against
``transport.websocket.max_connections`` and against its address's
``max_pending_per_ip`` (beyond either: close 1013). Within
``auth_timeout_seconds`` of the upgrade it must send one valid
``auth_handshake`` frame; then the node answers::

    {"frame_type": "auth_result", "status": "accepted", "session_id": "sess-<uuid>", "ttl": 86400}

or ``{"frame_type": "auth_result", "status": "rejected", "error_code": …,
"message": …}`` followed by close 1008 (a bad or replayed handshake, an
unknown agent, or nothing valid in time: OCP-408).

An authenticated session lasts until the agent leaves, its ``ttl`` runs
out (close 1000: authenticate again) or the daemon stops (close 1001).
Whichever it is, the node stops reading and commits what it already read
(for at most ``DRAIN_SECONDS``): messages still waiting for their checks
when the agent's close arrived are not lost. In the last two cases it also
writes those receipts, then closes. An idle session is one task, the connection's, waiting for a
frame; two more run only while they have work:

* the connection's task **reads** one text frame at a time, runs it
  through the intake's first checks (:meth:`Intake.start`: parsing, the
  sender, its signatures sent to the verifier without waiting) and puts
  it in the session's pipeline (a frame over the size limit ends the session with 1009; the
  port's server, :mod:`ocpd.server`, enforces the same limit while the
  frame arrives, so it is never buffered whole);
* the **committer** finishes the checks of whatever messages are waiting
  (the verifier's answers, trust, rate limits), writes those that passed
  in one group commit and queues a receipt for each, in order:
  ``{"frame_type": "receipt", "message_id": …, "status": "accepted"}`` (plus
  ``"duplicate": true`` for a duplicate) or ``"status": "rejected"`` with
  ``"error"``: the signed ``error`` message, as over HTTP;
* the **writer** writes receipts and, while the session owns its agent's
  delivery, the agent's queued messages (the exact bytes received, one text
  frame each; see :mod:`ocpd.node.router`).

The port's server sends a WebSocket ping after ``ping_interval_seconds`` of
silence and drops a connection that stays silent for another interval. The
authentication deadline runs from the TCP accept when the server reports it
(:data:`ocpd.server.ACCEPTED_EXTENSION`), else from the upgrade.

Authenticated session time is reported to the registry (D7 uptime): every
``UPTIME_REPORT_SECONDS`` the endpoint's own task (:meth:`WebSocketEndpoint.run`,
which also ends every session when the daemon stops) reports each session
that is open as ``[start, now]``, in one report; each session reports itself
once more when it ends.
"""

from __future__ import annotations

import json
import uuid
from functools import partial
from typing import TYPE_CHECKING, Final, cast

import attrs
import trio

from ocpd.node.intake import Attempt, Checked, Outcome, Started
from ocpd.node.router import Session
from ocpd.ondemand import OnDemand
from ocpd.proto import schema
from ocpd.proto.auth import verify_ws_auth_handshake
from ocpd.proto.errors import AuthError, MalformedError, OcpError, RequestTimeout
from ocpd.proto.strictjson import loads_strict
from ocpd.server import ACCEPTED_EXTENSION

if TYPE_CHECKING:
    from quart_trio import QuartTrio

    from ocpd.asgi import ASGIApp, Receive, Scope, Send
    from ocpd.clock import WallClock
    from ocpd.config import WebSocketSection
    from ocpd.node.directory import AgentDirectory
    from ocpd.node.intake import Intake
    from ocpd.node.router import Router
    from ocpd.proto.auth import ReplayWindow
    from ocpd.web import Metrics

__all__ = ["SUBPROTOCOL", "WS_PATH", "WebSocketEndpoint"]

WS_PATH: Final = "/ocp/v1/ws"
SUBPROTOCOL: Final = "ocp.v1"
HANDSHAKE_MAX: Final = 4096
#: Checked messages waiting for their write before the reader stops reading.
PIPELINE: Final = 64
#: How long a session that is ending may take to answer what it already read.
DRAIN_SECONDS: Final = 3.0
#: How often a long session's time so far is reported to the registry.
UPTIME_REPORT_SECONDS: Final = 300.0

CLOSE_NORMAL: Final = 1000
CLOSE_GOING_AWAY: Final = 1001
CLOSE_POLICY: Final = 1008
CLOSE_TOO_BIG: Final = 1009
CLOSE_TRY_LATER: Final = 1013


Item = tuple[Attempt, Started | OcpError]


def _dumps(value: object) -> str:
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False)


@attrs.define(eq=False)
class WebSocketEndpoint:
    intake: Intake
    router: Router
    directory: AgentDirectory
    replay: ReplayWindow
    clock: WallClock
    metrics: Metrics
    settings: WebSocketSection
    max_message_bytes: int
    clock_skew: float
    stopping: trio.Event | None = None
    active: int = 0
    pending: dict[str, int] = attrs.Factory(dict)
    _live: set[_Live] = attrs.Factory(set)

    def install(self, app: QuartTrio) -> None:
        inner = cast("ASGIApp", app.asgi_app)

        async def front(scope: Scope, receive: Receive, send: Send) -> None:
            if scope["type"] == "websocket" and scope["path"] == WS_PATH:
                await self.handle(scope, receive, send)
            else:
                await inner(scope, receive, send)

        app.asgi_app = front  # type: ignore[method-assign,assignment]

    async def handle(self, scope: Scope, receive: Receive, send: Send) -> None:
        accepted = scope.get("extensions", {}).get(ACCEPTED_EXTENSION, {})
        opened = float(accepted.get("at", trio.current_time()))
        if (await receive())["type"] != "websocket.connect":
            return
        if SUBPROTOCOL not in scope.get("subprotocols", ()):
            await send({"type": "websocket.close", "code": CLOSE_POLICY})
            return
        await send({"type": "websocket.accept", "subprotocol": SUBPROTOCOL})
        client = scope.get("client")
        address = str(client[0]) if client else "unknown"
        if self.active >= self.settings.max_connections:
            await _close(send, CLOSE_TRY_LATER, "too many connections")
            return
        if self.pending.get(address, 0) >= self.settings.max_pending_per_ip:
            await _close(send, CLOSE_TRY_LATER, "too many unauthenticated connections")
            return
        self.active += 1
        self.metrics.active_websockets.set(self.active)
        self.pending[address] = self.pending.get(address, 0) + 1
        counted_pending = True
        try:
            agent = await self._authenticate(
                receive, send, opened + self.settings.auth_timeout_seconds
            )
            if agent is None:
                return
            self._unpend(address)
            counted_pending = False
            await self._serve(agent, receive, send)
        finally:
            if counted_pending:
                self._unpend(address)
            self.active -= 1
            self.metrics.active_websockets.set(self.active)

    def _unpend(self, address: str) -> None:
        left = self.pending.get(address, 1) - 1
        if left > 0:
            self.pending[address] = left
        else:
            self.pending.pop(address, None)

    # --- authentication -------------------------------------------------------------

    async def _authenticate(self, receive: Receive, send: Send, deadline: float) -> str | None:
        """The agent of a valid handshake, or ``None`` once the connection is closed."""
        error: OcpError = RequestTimeout(
            f"no valid auth_handshake within {self.settings.auth_timeout_seconds:g} s"
        )
        with trio.move_on_at(deadline):
            try:
                event = await receive()
                if event["type"] == "websocket.disconnect":
                    return None
                text = event.get("text")
                if not isinstance(text, str) or len(text) > HANDSHAKE_MAX:
                    raise MalformedError("the first frame must be a text auth_handshake")
                frame = loads_strict(text.encode("utf-8"), max_size=HANDSHAKE_MAX)
                schema.validate("auth-handshake", frame)
                if not isinstance(frame, dict):  # pragma: no cover - the schema requires one
                    raise MalformedError("auth_handshake is an object")
                info = await self.directory.lookup(frame["agent_id"])
                if info is None:
                    raise AuthError("the agent is not registered")
                return verify_ws_auth_handshake(
                    frame,
                    public_keys=info.keys,
                    now=self.clock.now(),
                    replay=self.replay,
                    window=self.clock_skew,
                )
            except OcpError as exc:
                error = exc
        reply = {
            "frame_type": "auth_result",
            "status": "rejected",
            "error_code": error.code,
            "message": error.message,
        }
        await send({"type": "websocket.send", "text": _dumps(reply)})
        await _close(send, CLOSE_POLICY, "authentication failed")
        return None

    # --- the session ----------------------------------------------------------------

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Ends every session when the daemon stops; reports long sessions' time so far."""
        task_status.started()
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self._report_uptime)
            if self.stopping is not None:
                await self.stopping.wait()
                for live in list(self._live):
                    live.stop()

    async def _report_uptime(self) -> None:
        while True:
            await trio.sleep(UPTIME_REPORT_SECONDS)
            now = self.clock.now()
            spans = [(live.session.agent_id, live.started_at, now) for live in self._live]
            if spans:
                await self.directory.report_sessions(spans)

    async def _serve(self, agent: str, receive: Receive, send: Send) -> None:
        async def send_text(text: str) -> None:
            await send({"type": "websocket.send", "text": text})

        session = Session(agent, f"sess-{uuid.uuid4()}", send_text)
        ttl = self.settings.session_ttl_seconds
        live = _Live(
            session, self.clock.now(), trio.CancelScope(deadline=trio.current_time() + ttl)
        )
        await self.router.attach(session)
        self._live.add(live)
        try:
            accepted = {
                "frame_type": "auth_result",
                "status": "accepted",
                "session_id": session.session_id,
                "ttl": ttl,
            }
            await send_text(_dumps(accepted))
            async with trio.open_nursery() as nursery:
                writer = OnDemand(nursery, partial(self._write, session))
                session.on_wake = writer.kick
                if session.woken:
                    writer.kick()
                try:
                    pipeline = _Pipeline(self, session, nursery)
                    if self.stopping is not None and self.stopping.is_set():
                        live.stop()
                    with live.reading:
                        await self._read(session, receive, pipeline, live)
                    # However reading ended, what was read is checked and committed;
                    # on the ttl or the daemon's stop, its receipts are written too.
                    with trio.move_on_after(DRAIN_SECONDS):
                        await pipeline.settle()
                        if live.reading.cancelled_caught:
                            await session.flush()
                finally:
                    # The writer's nursery takes no new task once it closes.
                    session.on_wake = None
                nursery.cancel_scope.cancel()
        finally:
            self._live.discard(live)
            session.on_wake = None
            self.router.detach(session)
        if live.code is not None:
            await _close(send, live.code, live.reason)
        with trio.CancelScope(shield=True, deadline=trio.current_time() + 5):
            await self.directory.report_sessions([(agent, live.started_at, self.clock.now())])

    async def _read(
        self, session: Session, receive: Receive, pipeline: _Pipeline, live: _Live
    ) -> None:
        while True:
            event = await receive()
            if event["type"] == "websocket.disconnect":
                session.closed = True
                live.code = None
                return
            attempt = Attempt("ws", trio.current_time(), sender=session.agent_id)
            item: Started | OcpError
            text = event.get("text")
            if not isinstance(text, str):
                item = MalformedError("OCP messages travel as text frames")
            else:
                raw = text.encode("utf-8")
                if len(raw) > self.max_message_bytes:
                    live.code, live.reason = CLOSE_TOO_BIG, "message too big"
                    return
                try:
                    item = await self.intake.start(raw, attempt, session_agent=session.agent_id)
                except OcpError as exc:
                    item = exc
            await pipeline.put((attempt, item))

    async def _write(self, session: Session) -> None:
        """Receipts and, while the session owns its agent's delivery, the agent's queued
        messages, until :attr:`Session.woken` says there is nothing more."""
        while session.woken:
            session.woken = False
            while (frame := session.take_receipt()) is not None:
                await session.send_text(frame)
            if session.owner:
                await self.router.deliver(session)

    async def commit_batch(self, session: Session, batch: list[Item]) -> None:
        """Finish the checks of ``batch``, commit what passed in one write; a receipt each."""
        completed: list[Checked | OcpError] = []
        for _, item in batch:
            if isinstance(item, Started):
                try:
                    completed.append(await self.intake.complete(item))
                except OcpError as exc:
                    completed.append(exc)
            else:
                completed.append(item)
        checked = [item for item in completed if isinstance(item, Checked)]
        results = iter(await self.intake.commit(checked) if checked else [])
        for (attempt, _), done in zip(batch, completed, strict=True):
            result = next(results) if isinstance(done, Checked) else done
            self.intake.finish(attempt, result)
            await session.send_receipt(_dumps(self._receipt(attempt, result)))

    def _receipt(self, attempt: Attempt, result: Outcome | OcpError) -> dict[str, object]:
        if isinstance(result, Outcome):
            receipt: dict[str, object] = {
                "frame_type": "receipt",
                "message_id": result.message_id,
                "status": "accepted",
            }
            if result.duplicate:
                receipt["duplicate"] = True
            return receipt
        return {
            "frame_type": "receipt",
            "message_id": attempt.message_id,
            "status": "rejected",
            "error": self.intake.error_message(result, attempt),
        }


@attrs.define(eq=False)
class _Live:
    """A session while it lasts: when it began, its reading, and how it is to end."""

    session: Session
    started_at: float
    #: Reading frames; its deadline is the session's ttl.
    reading: trio.CancelScope
    #: The close code to send (``None``: the agent left).
    code: int | None = CLOSE_NORMAL
    reason: str = "session ttl reached"

    def stop(self) -> None:
        self.code, self.reason = CLOSE_GOING_AWAY, "node stopping"
        self.reading.cancel()


class _Pipeline:
    """Checked messages on their way to a group commit.

    The committing task runs only while messages are waiting: it takes all
    of them (at most ``PIPELINE``), commits them in one write and queues
    their receipts, in order. The reader waits while ``PIPELINE`` are waiting.
    """

    __slots__ = ("committer", "endpoint", "items", "room", "session")

    def __init__(
        self, endpoint: WebSocketEndpoint, session: Session, nursery: trio.Nursery
    ) -> None:
        self.endpoint = endpoint
        self.session = session
        self.items: list[Item] = []
        self.room: trio.Event | None = None
        self.committer = OnDemand(nursery, self._commit_waiting)

    async def put(self, item: Item) -> None:
        while len(self.items) >= PIPELINE:
            if self.room is None:
                self.room = trio.Event()
            await self.room.wait()
        self.items.append(item)
        self.committer.kick()

    async def _commit_waiting(self) -> None:
        while self.items:
            batch, self.items = self.items, []
            if self.room is not None:
                self.room.set()
                self.room = None
            await self.endpoint.commit_batch(self.session, batch)

    async def settle(self) -> None:
        """Wait until every message put so far is committed and its receipt queued."""
        await self.committer.settle()


async def _close(send: Send, code: int, reason: str) -> None:
    await send({"type": "websocket.close", "code": code, "reason": reason})
