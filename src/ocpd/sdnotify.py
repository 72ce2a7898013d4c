"""The systemd notification protocol (sd_notify), without libsystemd.

Active only when ``NOTIFY_SOCKET`` is set: ``READY=1`` once every port is
bound, ``STATUS=...`` lines, ``STOPPING=1`` at shutdown and ``WATCHDOG=1`` at
half of ``WATCHDOG_USEC`` when the manager asked for a watchdog.
"""

from __future__ import annotations

import os
import socket
from typing import TYPE_CHECKING

import trio

if TYPE_CHECKING:
    from collections.abc import Mapping

__all__ = ["Notifier"]


class Notifier:
    def __init__(self, environ: Mapping[str, str] | None = None) -> None:
        env = os.environ if environ is None else environ
        address = env.get("NOTIFY_SOCKET", "")
        self._address: str | None = None
        if address.startswith("@"):
            self._address = "\0" + address[1:]
        elif address.startswith("/"):
            self._address = address
        self.watchdog_interval: float | None = None
        usec = env.get("WATCHDOG_USEC", "")
        pid = env.get("WATCHDOG_PID", "")
        if usec.isdigit() and int(usec) > 0 and (not pid or pid == str(os.getpid())):
            self.watchdog_interval = int(usec) / 1_000_000 / 2

    @property
    def enabled(self) -> bool:
        return self._address is not None

    def notify(self, *lines: str) -> None:
        if self._address is None:
            return
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
            try:
                sock.connect(self._address)
                sock.sendall("\n".join(lines).encode())
            except OSError:
                # The manager went away; notifications are best effort.
                return

    async def run_watchdog(self) -> None:
        """Send WATCHDOG=1 at half the requested interval until cancelled."""
        if self.watchdog_interval is None or self._address is None:
            return
        while True:
            self.notify("WATCHDOG=1")
            await trio.sleep(self.watchdog_interval)
