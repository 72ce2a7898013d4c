"""OCP messages arriving over peer sessions: the node's side of :class:`ocpd.net.peers.PeerService`.

A peer node hands on messages for agents served here (and broadcasts) as
their exact signed bytes. Each goes through the same intake as a message
posted over HTTPS by a relaying node (:mod:`ocpd.node.intake`), except that
the session has already authenticated the peer node. Messages are taken in
groups as they arrive: all of a group are started (their signatures travel
to the verifier together), completed, committed in one write, and answered
with one receipt each, in order.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Final

import attrs
import trio

from ocpd.node.intake import Attempt, Checked, Outcome, Started
from ocpd.proto.errors import NetError, OcpError

if TYPE_CHECKING:
    from ocpd.clock import WallClock
    from ocpd.net.peers import Live
    from ocpd.node.intake import Intake
    from ocpd.web import Metrics

__all__ = ["NodeTraffic"]

#: The most messages taken into one group.
GROUP: Final = 64


@attrs.define(eq=False)
class NodeTraffic:
    intake: Intake
    clock: WallClock
    metrics: Metrics

    async def serve(self, live: Live, inbox: trio.MemoryReceiveChannel[bytes]) -> None:
        async with inbox:
            while True:
                try:
                    group = [await inbox.receive()]
                except trio.EndOfChannel:
                    return
                while len(group) < GROUP:
                    try:
                        group.append(inbox.receive_nowait())
                    except (trio.WouldBlock, trio.EndOfChannel):
                        break
                await self._take(live, group)

    async def _take(self, live: Live, group: list[bytes]) -> None:
        started: list[tuple[Attempt, Started | OcpError]] = []
        for raw in group:
            attempt = Attempt(transport="peer", started=trio.current_time())
            try:
                started.append((attempt, await self.intake.start(raw, attempt, peer=live.node_id)))
            except OcpError as exc:
                started.append((attempt, exc))
        results: list[tuple[Attempt, Checked | OcpError]] = []
        for attempt, begun in started:
            if isinstance(begun, OcpError):
                results.append((attempt, begun))
                continue
            try:
                results.append((attempt, await self.intake.complete(begun)))
            except OcpError as exc:
                results.append((attempt, exc))
        checked = [done for _, done in results if isinstance(done, Checked)]
        committed = iter(await self.intake.commit(checked) if checked else [])
        now = self.clock.now()
        for attempt, done in results:
            result: Outcome | OcpError = next(committed) if isinstance(done, Checked) else done
            self.intake.finish(attempt, result)
            outcome = "accepted" if isinstance(result, Outcome) else "rejected"
            self.metrics.peer_messages.labels("received", outcome).inc()
            if attempt.message_id is None:
                live.refuse(
                    NetError(
                        f"an OCP message that cannot be read: {result.message}"
                        if isinstance(result, OcpError)
                        else "an OCP message without message_id"
                    ),
                    now=now,
                )
            elif isinstance(result, Outcome):
                live.receipt(
                    attempt.message_id,
                    "duplicate" if result.duplicate else "accepted",
                    now=now,
                )
            else:
                live.receipt(attempt.message_id, "rejected", now=now, code=result.code)
