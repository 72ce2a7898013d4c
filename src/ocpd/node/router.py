"""Sessions and local delivery: from committed queue rows to WebSocket frames.

Theory of operation
-------------------
Every accepted message has one queue row per receiver (``deliveries``,
ordered by ``seq``) and its exact bytes in ``message_bodies``. A row leaves
the queue once its frame was handed to the receiver's WebSocket, or when the
message's TTL runs out (the sweeper).

An agent may hold several authenticated sessions; the newest one *owns* its
delivery (a reconnecting client's half-dead old session must not swallow
messages). When the owner closes, the next newest takes over. Each owner
runs in one of two modes:

* **catch-up**: start collecting newly committed rows in the session's
  queue (:meth:`Router.notify`), then read the agent's rows from the
  database in ``seq`` order (``seq > last_seq``), send them, drop them;
  repeat until a read comes back short. Every row committed since the read
  began is then in the queue, so the session goes live without another read
  (however busy the agent's senders are);
* **live**: the intake hands each newly committed row straight to the
  session: no database read. A row the session already passed
  (``seq <= last_seq``, e.g. one the last catch-up read also returned) is
  skipped; when the queue overflows the session drops it and catches up
  from the database again, which holds every row that was not sent.

Both modes send rows in ``seq`` order, and rows are committed in the order
their messages were accepted, so messages from one sender reach a receiver
in the order the node accepted them (per-sender FIFO, OCP §3.4). Delivery is
at least once: a row is dropped after its frame was written, so a crash
between the two sends it again; receivers deduplicate by ``message_id``.

Which receivers are served here is decided when a message is committed
(:meth:`Router.placement`): an agent with a session, or one that
authenticated here before, is local; for any other the
:class:`RemoteDelivery` decides (:class:`ocpd.node.forward.Forwarder` hands
rows for agents served by other nodes on to them). Rows of a *remote*
receiver are handed to it once committed. :class:`HoldForLocal` keeps every
row here, so the agent gets it if it connects to this node before it
expires.
"""

from __future__ import annotations

import bisect
import logging
from typing import TYPE_CHECKING, Final, Protocol

import attrs
import trio

from ocpd.logs import get_logger, log_event
from ocpd.node.store import PENDING_BATCH

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable

    from ocpd.clock import WallClock
    from ocpd.node.directory import AgentInfo
    from ocpd.node.store import MessageStore, Placement
    from ocpd.web import Metrics

__all__ = ["LIVE_QUEUE", "RemoteDelivery", "Router", "Session", "Sweeper"]

#: Rows a live session may hold before it falls back to catching up.
LIVE_QUEUE: Final = 1024
#: Receipts waiting to be written before a session stops reading frames.
RECEIPT_BUFFER: Final = 256

log = get_logger("node")


class RemoteDelivery(Protocol):
    """Delivery to agents served by other nodes (OCP §3.3.2)."""

    def placement(self, info: AgentInfo) -> Placement:
        """Where rows for an agent that never authenticated here are delivered from."""
        ...

    def submit(self, receiver: AgentInfo, seq: int) -> None: ...


class HoldForLocal:
    """Keeps every row here until its receiver connects or the row expires."""

    def placement(self, info: AgentInfo) -> Placement:
        return "local"

    def submit(self, receiver: AgentInfo, seq: int) -> None:
        return None


@attrs.define(eq=False)
class Session:
    """One authenticated WebSocket session and its delivery state."""

    agent_id: str
    session_id: str
    send_text: Callable[[str], Awaitable[None]]
    owner: bool = False
    live: bool = False
    #: Newly committed rows go to :attr:`queue` (live, or catching up with
    #: nothing lost since the current read began).
    collecting: bool = False
    closed: bool = False
    last_seq: int = 0
    queue: list[tuple[int, bytes, float]] = attrs.Factory(list)
    #: Receipt frames to write, and the events :meth:`flush` waits on.
    receipts: list[str | trio.Event] = attrs.Factory(list)
    #: There is something to write (set by :meth:`wake`, cleared by the writer).
    woken: bool = False
    #: Told by :meth:`wake`: the endpoint starts the session's writer.
    on_wake: Callable[[], None] | None = None
    #: Set when a receipt was taken, for a :meth:`send_receipt` waiting for room.
    _room: trio.Event | None = None

    def wake(self) -> None:
        self.woken = True
        if self.on_wake is not None and not self.closed:
            self.on_wake()

    def is_closed(self) -> bool:
        # A method, not the attribute: the connection may close during any await.
        return self.closed

    def owns(self) -> bool:
        return self.owner

    def start_collecting(self) -> None:
        self.queue.clear()
        self.collecting = True

    def catch_up(self) -> None:
        """Forget the queue; the next round reads the database from ``last_seq``."""
        self.live = False
        self.collecting = False
        self.queue.clear()

    async def send_receipt(self, frame: str) -> None:
        """Queue a receipt frame; waits while ``RECEIPT_BUFFER`` are waiting to be written."""
        while len(self.receipts) >= RECEIPT_BUFFER and not self.closed:
            if self._room is None:
                self._room = trio.Event()
            await self._room.wait()
        self.receipts.append(frame)
        self.wake()

    def take_receipt(self) -> str | None:
        """The next receipt frame to write (``None``: none is waiting)."""
        while self.receipts:
            frame = self.receipts.pop(0)
            if self._room is not None:
                self._room.set()
                self._room = None
            if isinstance(frame, str):
                return frame
            frame.set()
        return None

    async def flush(self) -> None:
        """Wait until every receipt queued so far has been handed to the connection."""
        written = trio.Event()
        self.receipts.append(written)
        self.wake()
        await written.wait()


@attrs.define(eq=False)
class Router:
    store: MessageStore
    clock: WallClock
    metrics: Metrics
    remote: RemoteDelivery = attrs.Factory(HoldForLocal)
    local: set[str] = attrs.Factory(set)
    _sessions: dict[str, list[Session]] = attrs.Factory(dict)
    #: Rows written to a session whose deletion is not committed yet: a
    #: session that takes over meanwhile must not send them again.
    _sent: set[int] = attrs.Factory(set)

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Load the agents that authenticated here before."""
        self.local.update(await self.store.local_agents())
        task_status.started()

    # --- sessions ------------------------------------------------------------------

    def owner(self, agent_id: str) -> Session | None:
        sessions = self._sessions.get(agent_id)
        return sessions[-1] if sessions else None

    def session_count(self) -> int:
        return sum(len(s) for s in self._sessions.values())

    async def attach(self, session: Session) -> None:
        """Make ``session`` its agent's delivery owner, and remember the agent as local."""
        agent = session.agent_id
        if agent not in self.local:
            await self.store.touch_local_agent(agent, now=self.clock.now())
            self.local.add(agent)
        sessions = self._sessions.setdefault(agent, [])
        if sessions:
            sessions[-1].owner = False
        sessions.append(session)
        self._own(session)

    def detach(self, session: Session) -> None:
        session.closed = True
        session.owner = False
        sessions = self._sessions.get(session.agent_id, [])
        if session in sessions:
            was_owner = sessions[-1] is session
            sessions.remove(session)
            if not sessions:
                del self._sessions[session.agent_id]
            elif was_owner:
                self._own(sessions[-1])

    @staticmethod
    def _own(session: Session) -> None:
        session.owner = True
        session.last_seq = 0
        session.catch_up()
        session.wake()

    # --- routing ---------------------------------------------------------------------

    def placement(self, info: AgentInfo) -> Placement:
        if info.agent_id in self.local or info.agent_id in self._sessions:
            return "local"
        return self.remote.placement(info)

    def notify(
        self, receiver: AgentInfo, seq: int, raw: bytes, expires_at: float, placement: Placement
    ) -> None:
        """A row for ``receiver`` was committed as ``placement``: hand it to its session, or on."""
        session = self.owner(receiver.agent_id)
        if session is None:
            if placement == "remote":
                self.remote.submit(receiver, seq)
            return
        if session.collecting and seq > session.last_seq:
            if len(session.queue) < LIVE_QUEUE:
                bisect.insort(session.queue, (seq, raw, expires_at))
            else:
                session.catch_up()
        session.wake()

    async def deliver(self, session: Session) -> None:
        """One delivery round for an owner session; see the module docstring."""
        sent: list[int] = []
        try:
            while session.owns() and session.live and session.queue:
                seq, raw, expires_at = session.queue.pop(0)
                if seq > session.last_seq:
                    await self._send(session, seq, raw, expires_at, sent)
            while session.owns() and not session.live:
                if not session.collecting:
                    session.start_collecting()
                rows = await self.store.pending(session.agent_id, after=session.last_seq)
                for row in rows:
                    if not session.owns():
                        break
                    if row.seq in self._sent:
                        session.last_seq = max(session.last_seq, row.seq)
                        continue
                    await self._send(session, row.seq, row.raw, row.expires_at, sent)
                await self._drop(sent)
                if session.owns() and len(rows) < PENDING_BATCH and session.collecting:
                    # Whatever was committed since the read began is queued.
                    session.live = True
                    if session.queue:
                        session.wake()
        finally:
            with trio.CancelScope(shield=True):
                await self._drop(sent)

    async def _send(
        self, session: Session, seq: int, raw: bytes, expires_at: float, sent: list[int]
    ) -> None:
        if session.closed:
            return
        if expires_at >= self.clock.now():
            await session.send_text(raw.decode("utf-8"))
            if session.is_closed():
                # The connection went away while the frame was written:
                # leave the row for the next session.
                return
            self.metrics.deliveries.labels("sent").inc()
        else:
            self.metrics.deliveries.labels("expired").inc()
        session.last_seq = max(session.last_seq, seq)
        sent.append(seq)
        self._sent.add(seq)

    async def _drop(self, sent: list[int]) -> None:
        if sent:
            batch = list(sent)
            sent.clear()
            try:
                await self.store.delivered(batch)
            finally:
                # Committed: gone for good. Failed: the rows stay queued and
                # may be sent again (at least once).
                self._sent.difference_update(batch)


@attrs.define(eq=False)
class Sweeper:
    """Deletes expired queue rows, forgotten message ids and old interactions."""

    store: MessageStore
    clock: WallClock
    interval: float
    interaction_retention: float

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        task_status.started()
        while True:
            await trio.sleep(self.interval)
            await self.sweep()

    async def sweep(self) -> None:
        now = self.clock.now()
        counts = await self.store.sweep(
            now=now, interactions_before=now - self.interaction_retention
        )
        if counts.deliveries or counts.message_ids or counts.interactions:
            log_event(
                log,
                "sweep",
                level=logging.DEBUG,
                expired_deliveries=counts.deliveries,
                forgotten_ids=counts.message_ids,
                old_interactions=counts.interactions,
            )
