"""A task that exists only while it has work.

Per-connection work that is usually idle (writing queued frames,
committing queued messages) costs a waiting task per connection when it
runs as a loop. :class:`OnDemand` starts the task when work arrives
(:meth:`OnDemand.kick`) and lets it end once its body returns; a kick while
it runs does nothing, so the body must check for work queued meanwhile
before it returns (there is no await between that check and the task's
end, so nothing is missed).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import trio

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable

__all__ = ["OnDemand"]


class OnDemand:
    """Runs ``body`` in ``nursery`` whenever kicked and not already running."""

    __slots__ = ("_body", "_idle", "_nursery", "running")

    def __init__(self, nursery: trio.Nursery, body: Callable[[], Awaitable[None]]) -> None:
        self._nursery = nursery
        self._body = body
        self._idle: trio.Event | None = None
        self.running = False

    def kick(self) -> None:
        if not self.running:
            self.running = True
            self._nursery.start_soon(self._run)

    async def _run(self) -> None:
        try:
            await self._body()
        finally:
            self.running = False
            if self._idle is not None:
                self._idle.set()
                self._idle = None

    async def settle(self) -> None:
        """Wait until the task is not running (returns at once if it is not)."""
        while self.running:
            if self._idle is None:
                self._idle = trio.Event()
            await self._idle.wait()
