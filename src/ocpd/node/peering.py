"""OCP messages arriving over peer sessions: the node's side of :class:`ocpd.net.peers.PeerService`.

A peer node hands on messages for agents served here (and broadcasts) as
their exact signed bytes. Each goes through the same intake as a message
posted over HTTPS by a relaying node (:mod:`ocpd.node.intake`), except that
the session has already authenticated the peer node. Messages are taken in
groups as they arrive: all of a group are started (their signatures travel
to the verifier together), completed, committed in one write, and answered
in one ``receipts`` frame, in order; the next group is started while one
completes and one commits.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Final, TypeAlias

import attrs
import trio

from ocpd.node.intake import Attempt, Checked, Outcome, Started
from ocpd.proto.errors import NetError, OcpError
from ocpd.proto.peer import ReceiptReceived

if TYPE_CHECKING:
    from ocpd.clock import WallClock
    from ocpd.net.peers import Live
    from ocpd.node.intake import Intake
    from ocpd.web import Metrics

__all__ = ["NodeTraffic"]

#: The most messages taken into one group.
GROUP: Final = 64

#: Groups started and waiting for their verdicts.
AHEAD: Final = 1

#: A group's messages once started, each with its attempt.
_Started: TypeAlias = list[tuple[Attempt, "Started | OcpError"]]
#: A group's messages after the checks, each with its attempt.
_Checked: TypeAlias = list[tuple[Attempt, "Checked | OcpError"]]


@attrs.define(eq=False)
class NodeTraffic:
    intake: Intake
    clock: WallClock
    metrics: Metrics

    async def serve(self, live: Live, inbox: trio.MemoryReceiveChannel[bytes]) -> None:
        # Three stages, each a group behind the one before: starting a
        # group (its signatures go to the verifier together), completing
        # it as the verdicts come back, committing it. The verifier always
        # has the next group in hand while one completes and one commits.
        started_send, started_receive = trio.open_memory_channel[_Started](AHEAD)
        checked_send, checked_receive = trio.open_memory_channel[_Checked](1)
        async with inbox, trio.open_nursery() as nursery:
            nursery.start_soon(self._complete_groups, started_receive, checked_send)
            nursery.start_soon(self._commit_groups, live, checked_receive)
            async with started_send:
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
                    await started_send.send(await self._start(live, group))

    async def _start(self, live: Live, group: list[bytes]) -> _Started:
        started: _Started = []
        for raw in group:
            attempt = Attempt(transport="peer", started=trio.current_time())
            try:
                started.append((attempt, await self.intake.start(raw, attempt, peer=live.node_id)))
            except OcpError as exc:
                started.append((attempt, exc))
        return started

    async def _complete_groups(
        self,
        groups: trio.MemoryReceiveChannel[_Started],
        checked: trio.MemorySendChannel[_Checked],
    ) -> None:
        async with groups, checked:
            async for started in groups:
                await checked.send(await self._complete(started))

    async def _complete(self, started: _Started) -> _Checked:
        results: _Checked = []
        for attempt, begun in started:
            if isinstance(begun, OcpError):
                results.append((attempt, begun))
                continue
            try:
                results.append((attempt, await self.intake.complete(begun)))
            except OcpError as exc:
                results.append((attempt, exc))
        return results

    async def _commit_groups(self, live: Live, groups: trio.MemoryReceiveChannel[_Checked]) -> None:
        async with groups:
            async for results in groups:
                await self._commit(live, results)

    async def _commit(self, live: Live, results: _Checked) -> None:
        checked = [done for _, done in results if isinstance(done, Checked)]
        committed = iter(await self.intake.commit(checked) if checked else [])
        now = self.clock.now()
        receipts = []
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
                receipts.append(
                    ReceiptReceived(
                        attempt.message_id, "duplicate" if result.duplicate else "accepted"
                    )
                )
            else:
                receipts.append(ReceiptReceived(attempt.message_id, "rejected", result.code))
        live.receipts(receipts, now=now)
