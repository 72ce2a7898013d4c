"""Three custodians over TLS for recovery tests that drive ``ocpd`` as a user would.

One daemon runs the registry, the node and the first custodian
(``--component all``); two more run ``--component custodian`` and ask that
registry about agents. :attr:`World.env` is the environment an agent
operator's shell would have.
"""

from __future__ import annotations

import json
import os
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from daemon_process import Daemon, TlsFiles, free_port, run_cli


class World:
    def __init__(self, tmp: Path) -> None:
        self.tmp = tmp
        self.tls = TlsFiles(tmp)
        self.daemons: list[Daemon] = []
        self.env: dict[str, str] = {}

    def start(self) -> None:
        first = Daemon(self.tmp / "c1", component="all", tls=self.tls)
        self.daemons.append(first.start())
        first.wait_ready()
        for n in (2, 3):
            daemon = Daemon(
                self.tmp / f"c{n}",
                component="custodian",
                tls=self.tls,
                env={
                    "OCP_CUSTODIAN_PORT": str(free_port()),
                    "OCP_REGISTRY_URL": first.listeners["registry"],
                    "OCP_REGISTRY_CA_FILE": str(self.tls.ca_file),
                },
            )
            self.daemons.append(daemon.start())
        for daemon in self.daemons[1:]:
            daemon.wait_ready()
        self.env = {
            **{k: v for k, v in os.environ.items() if not k.startswith("OCP_")},
            "OCP_REGISTRY_URL": first.listeners["registry"],
            "OCP_NODE_HTTP_URL": first.listeners["http"],
            "OCP_CA_FILE": str(self.tls.ca_file),
            "OCP_NETWORK": "testnet",
        }

    @property
    def urls(self) -> list[str]:
        return [d.listeners["custodian"] for d in self.daemons]

    def agent(self, *args: str) -> subprocess.CompletedProcess[str]:
        return run_cli(["agent", *args], env=self.env)

    def ok(self, *args: str) -> dict[str, Any]:
        done = self.agent(*args)
        assert done.returncode == 0, done.stderr
        answer: dict[str, Any] = json.loads(done.stdout)
        return answer

    def path(self, name: str) -> str:
        return str(self.tmp / name)


@contextmanager
def running_world(tmp: Path) -> Iterator[World]:
    """A started :class:`World`, stopped on the way out."""
    made = World(tmp)
    try:
        made.start()
        yield made
    finally:
        for daemon in made.daemons:
            daemon.stop()
