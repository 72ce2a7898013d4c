"""Run a server as a subprocess until its JSON ``ready`` line, and stop it with SIGTERM.

ocpd (and the bench's bare server) log one JSON object per line on stdout and
announce readiness with ``"event": "ready"``. :class:`ReadyProcess` is a trio
service in the house style::

    async with trio.open_nursery() as nursery:
        ready = await nursery.start(server.run)   # the parsed ready line
        ...                                       # use ready["listeners"]
        nursery.cancel_scope.cancel()             # SIGTERM, wait, kill fallback

``run`` reads stdout (stderr merged into it) until the ready line, reports it
through ``task_status.started``, and keeps draining the pipe so the child can
never block on a full one. Cancelling it stops the child: SIGTERM, then up to
``stop_timeout`` seconds for it to exit, then SIGKILL. The stop runs shielded,
so it also happens when the caller fails. A child that exits before it is
ready, or on its own while in use, is an error (:class:`ProcessFailed`) with
the tail of its output.
"""

from __future__ import annotations

import json
import signal
import subprocess
from collections import deque
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Final

import trio

if TYPE_CHECKING:
    from collections.abc import Mapping, Sequence
    from pathlib import Path

__all__ = ["ProcessFailed", "ReadyProcess"]

#: Lines of output kept for diagnostics.
KEEP_LINES: Final = 2000


class ProcessFailed(Exception):
    """The child exited before it was ready, or while it was in use."""


def ready_event(line: str) -> dict[str, Any] | None:
    """The parsed line if it is a JSON ``ready`` event."""
    line = line.strip()
    if not line.startswith("{"):
        return None
    try:
        event = json.loads(line)
    except ValueError:
        return None
    if isinstance(event, dict) and event.get("event") == "ready":
        return event
    return None


@dataclass
class ReadyProcess:
    command: Sequence[str]
    env: Mapping[str, str] | None = None
    cwd: Path | None = None
    name: str = "server"
    startup_timeout: float = 30.0
    stop_timeout: float = 15.0
    #: The last :data:`KEEP_LINES` lines of output (stdout and stderr).
    output: deque[str] = field(default_factory=lambda: deque(maxlen=KEEP_LINES))
    #: The exit status once stopped (negative: killed by that signal).
    returncode: int | None = None
    _buffer: bytes = b""

    def tail(self, lines: int = 20) -> str:
        return "\n".join(list(self.output)[-lines:])

    def _take_lines(self, chunk: bytes | bytearray) -> list[str]:
        self._buffer += bytes(chunk)
        *complete, self._buffer = self._buffer.split(b"\n")
        decoded = [raw.decode("utf-8", errors="replace") for raw in complete]
        self.output.extend(decoded)
        return decoded

    async def run(
        self, *, task_status: trio.TaskStatus[dict[str, Any]] = trio.TASK_STATUS_IGNORED
    ) -> None:
        process = await trio.lowlevel.open_process(
            list(self.command),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            env=dict(self.env) if self.env is not None else None,
            cwd=self.cwd,
        )
        assert process.stdout is not None
        try:
            ready = await self._wait_ready(process.stdout)
            task_status.started(ready)
            async for chunk in process.stdout:
                self._take_lines(chunk)
            await process.wait()
            raise ProcessFailed(
                f"{self.name} exited on its own with status {process.returncode}:\n{self.tail()}"
            )
        finally:
            with trio.CancelScope(shield=True):
                await self._stop(process)

    async def _wait_ready(self, stdout: trio.abc.ReceiveStream) -> dict[str, Any]:
        with trio.move_on_after(self.startup_timeout):
            async for chunk in stdout:
                for line in self._take_lines(chunk):
                    event = ready_event(line)
                    if event is not None:
                        return event
            raise ProcessFailed(f"{self.name} exited before it was ready:\n{self.tail()}")
        raise ProcessFailed(
            f"{self.name} not ready within {self.startup_timeout:g} s:\n{self.tail()}"
        )

    async def _stop(self, process: trio.Process) -> None:
        if process.returncode is None:
            process.send_signal(signal.SIGTERM)
            with trio.move_on_after(self.stop_timeout):
                if process.stdout is not None:
                    async for chunk in process.stdout:
                        self._take_lines(chunk)
                await process.wait()
            if process.returncode is None:
                self.output.append(f"[{self.name} did not stop within {self.stop_timeout:g} s]")
                process.kill()
                await process.wait()
        if self._buffer:
            self._take_lines(b"\n")
        self.returncode = process.returncode
        if process.stdout is not None:
            await process.stdout.aclose()
