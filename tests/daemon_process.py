"""Run the real ocpd as a subprocess for end-to-end tests."""

from __future__ import annotations

import json
import os
import queue
import signal
import socket
import ssl
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path
from typing import Any

import trustme

READY_TIMEOUT = 20.0


def free_port() -> int:
    """A TCP port free on 127.0.0.1 now (for a daemon that must keep its address)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


class TlsFiles:
    """A throwaway CA and a server certificate for 127.0.0.1/localhost."""

    def __init__(self, directory: Path) -> None:
        self.ca = trustme.CA()
        cert = self.ca.issue_cert("127.0.0.1", "localhost")
        self.cert = directory / "server.pem"
        self.key = directory / "server.key"
        self.ca_file = directory / "ca.pem"
        cert.private_key_pem.write_to_path(str(self.key))
        cert.cert_chain_pems[0].write_to_path(str(self.cert))
        for extra in cert.cert_chain_pems[1:]:
            with open(self.cert, "ab") as handle:
                handle.write(extra.bytes())
        self.ca.cert_pem.write_to_path(str(self.ca_file))

    def client_context(self) -> ssl.SSLContext:
        context = ssl.create_default_context(cafile=str(self.ca_file))
        return context


class Daemon:
    """``python -m ocpd run`` with ports 0 and a private data directory."""

    def __init__(
        self,
        data_dir: Path,
        *,
        component: str = "all",
        tls: TlsFiles | None = None,
        env: dict[str, str] | None = None,
        args: list[str] | None = None,
    ) -> None:
        self.data_dir = data_dir
        self.component = component
        self.tls = tls
        self.env = {
            **{k: v for k, v in os.environ.items() if not k.startswith(("OCP_", "NOTIFY_SOCKET"))},
            "OCP_DATA_DIR": str(data_dir),
            "OCP_HTTP_PORT": "0",
            "OCP_WS_PORT": "0",
            "OCP_REGISTRY_PORT": "0",
            "OCP_CUSTODIAN_PORT": "0",
            "OCP_NETWORK": "testnet",
            "OCP_LOG_FORMAT": "json",
            # The custodian makes its own database key next to its database.
            "OCP_CUSTODIAN_DEV_MODE": "true",
        }
        if tls is not None:
            self.env["OCP_TLS_CERT"] = str(tls.cert)
            self.env["OCP_TLS_KEY"] = str(tls.key)
        self.env.update(env or {})
        self.args = args if args is not None else ["run", "--component", component]
        self.proc: subprocess.Popen[str] | None = None
        self.lines: list[str] = []
        self._queue: queue.Queue[str | None] = queue.Queue()
        self.listeners: dict[str, str] = {}

    def start(self) -> Daemon:
        """Start (or restart) the process; ``lines`` and events are this run's only."""
        self.lines = []
        self._queue = queue.Queue()
        self.listeners = {}
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "ocpd", *self.args],
            env=self.env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        threading.Thread(target=self._pump, args=(self.proc, self._queue), daemon=True).start()
        return self

    @staticmethod
    def _pump(proc: subprocess.Popen[str], lines: queue.Queue[str | None]) -> None:
        assert proc.stdout is not None
        with proc.stdout:
            for line in proc.stdout:
                lines.put(line)
        lines.put(None)

    def events(self) -> list[dict[str, Any]]:
        self._drain()
        out = []
        for line in self.lines:
            try:
                out.append(json.loads(line))
            except ValueError:
                continue
        return out

    def _drain(self) -> None:
        while True:
            try:
                line = self._queue.get_nowait()
            except queue.Empty:
                return
            if line is not None:
                self.lines.append(line)

    def wait_for(self, event: str, timeout: float = READY_TIMEOUT) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        seen = 0
        while time.monotonic() < deadline:
            self._drain()
            for line in self.lines[seen:]:
                seen += 1
                try:
                    record = json.loads(line)
                except ValueError:
                    continue
                if record.get("event") == event:
                    return record
            if self.proc is not None and self.proc.poll() is not None:
                self._drain()
                raise AssertionError(
                    f"ocpd exited {self.proc.returncode} before {event!r}:\n" + "".join(self.lines)
                )
            time.sleep(0.02)
        raise AssertionError(f"no {event!r} within {timeout} s:\n" + "".join(self.lines))

    def wait_ready(self) -> dict[str, str]:
        self.listeners = self.wait_for("ready")["listeners"]
        return self.listeners

    def get(self, name: str, path: str, *, timeout: float = 5.0) -> tuple[int, bytes, str]:
        url = self.listeners[name] + path
        context = self.tls.client_context() if self.tls is not None else None
        request = urllib.request.Request(url)
        try:
            with urllib.request.urlopen(request, timeout=timeout, context=context) as response:
                return response.status, response.read(), response.headers.get("Content-Type", "")
        except urllib.error.HTTPError as exc:
            return exc.code, exc.read(), exc.headers.get("Content-Type", "")

    def signal(self, signum: int = signal.SIGTERM) -> None:
        assert self.proc is not None
        self.proc.send_signal(signum)

    def wait_exit(self, timeout: float = 15.0) -> int:
        assert self.proc is not None
        code = self.proc.wait(timeout=timeout)
        self._drain()
        return code

    def stop(self) -> int | None:
        if self.proc is None or self.proc.poll() is not None:
            return None if self.proc is None else self.proc.returncode
        self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            return self.proc.wait(timeout=5)


def run_cli(
    args: list[str], *, env: dict[str, str], timeout: float = 30.0
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "ocpd", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
