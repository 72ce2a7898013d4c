"""The operator's control socket: ``ocpd peer …`` talking to the running daemon.

The daemon listens on a Unix socket in its data directory
(``<data_dir>/ocpd.sock``, mode 0600: only the account that runs ocpd, and
root, may connect). A client sends one JSON object on one line,
``{"command": "peer.list", ...arguments}``, and reads one line back:
``{"ok": true, "result": …}`` or ``{"ok": false, "error": {"code", "message"}}``.
One request per connection.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import stat
from contextlib import suppress
from typing import TYPE_CHECKING, Any, Final

import attrs
import trio

from ocpd.logs import get_logger, log_event
from ocpd.proto.errors import OcpError

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable, Mapping
    from pathlib import Path

__all__ = ["SOCKET_NAME", "ControlError", "ControlSocket", "call", "daemon_listening"]

SOCKET_NAME: Final = "ocpd.sock"
MAX_REQUEST: Final = 65_536
#: Unix socket paths longer than this cannot be bound (``sun_path``).
MAX_PATH: Final = 107
REQUEST_TIMEOUT: Final = 10.0


log = get_logger("daemon")


class ControlError(Exception):
    """The daemon refused a command, or could not be reached."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


@attrs.define(eq=False)
class ControlSocket:
    path: Path
    handlers: dict[str, Callable[[Mapping[str, Any]], Awaitable[Any]]] = attrs.Factory(dict)

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        if len(os.fsencode(self.path)) > MAX_PATH:
            log_event(
                log,
                "control_socket_unavailable",
                level=logging.WARNING,
                path=str(self.path),
                detail=f"the path is longer than {MAX_PATH} bytes; ocpd peer commands "
                "cannot reach this daemon",
            )
            task_status.started()
            return
        with suppress(FileNotFoundError):
            if stat.S_ISSOCK(os.lstat(self.path).st_mode):
                os.unlink(self.path)
        sock = trio.socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        old_umask = os.umask(0o177)
        try:
            await sock.bind(str(self.path))
        finally:
            os.umask(old_umask)
        sock.listen(16)
        listener = trio.SocketListener(sock)
        try:
            async with trio.open_nursery() as nursery:
                task_status.started()
                await trio.serve_listeners(self._serve, [listener], handler_nursery=nursery)
        finally:
            with suppress(FileNotFoundError):
                os.unlink(self.path)

    async def _serve(self, stream: trio.SocketStream) -> None:
        async with stream:
            with trio.move_on_after(REQUEST_TIMEOUT):
                reply = await self._answer(stream)
                with suppress(trio.BrokenResourceError, trio.ClosedResourceError):
                    await stream.send_all(json.dumps(reply).encode() + b"\n")

    async def _answer(self, stream: trio.SocketStream) -> dict[str, Any]:
        data = b""
        while b"\n" not in data:
            chunk = await stream.receive_some(4096)
            if not chunk:
                break
            data += chunk
            if len(data) > MAX_REQUEST:
                return _error("E_PROTO_INVALID", "request too large")
        try:
            request = json.loads(data.split(b"\n", 1)[0] or b"null")
        except ValueError:
            return _error("E_PROTO_INVALID", "the request is not JSON")
        if not isinstance(request, dict) or not isinstance(request.get("command"), str):
            return _error("E_PROTO_INVALID", "the request needs a command")
        handler = self.handlers.get(request["command"])
        if handler is None:
            return _error("E_PROTO_INVALID", f"unknown command {request['command'][:64]!r}")
        try:
            return {"ok": True, "result": await handler(request)}
        except OcpError as exc:
            return _error(exc.code, exc.message)
        except (TypeError, ValueError, KeyError) as exc:
            return _error("E_PROTO_INVALID", f"bad arguments: {exc}")


def _error(code: str, message: str) -> dict[str, Any]:
    return {"ok": False, "error": {"code": code, "message": message}}


def call(path: Path, command: str, *, timeout: float = REQUEST_TIMEOUT, **arguments: Any) -> Any:
    """One command to the daemon at ``path`` (blocking): its result, or :class:`ControlError`."""
    request = json.dumps({"command": command, **arguments}).encode() + b"\n"
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
            sock.settimeout(timeout)
            sock.connect(str(path))
            sock.sendall(request)
            data = b""
            while not data.endswith(b"\n"):
                chunk = sock.recv(65_536)
                if not chunk:
                    break
                data += chunk
    except (FileNotFoundError, ConnectionRefusedError):
        raise ControlError(
            "E_TRANSPORT_UNAVAILABLE", f"ocpd is not running (no control socket at {path})"
        ) from None
    except OSError as exc:
        raise ControlError(
            "E_TRANSPORT_UNAVAILABLE", f"cannot reach ocpd at {path}: {exc}"
        ) from None
    try:
        reply = json.loads(data)
    except ValueError:
        raise ControlError("E_PROTO_INVALID", "the daemon's answer is not JSON") from None
    if not reply.get("ok"):
        error = reply.get("error") or {}
        raise ControlError(str(error.get("code")), str(error.get("message")))
    return reply.get("result")


def daemon_listening(path: Path, *, timeout: float = 2.0) -> bool | None:
    """Whether a daemon accepts connections on the control socket at ``path``.

    ``False`` when there is no socket or nobody listens on it (a stale file
    left by a crash); ``None`` when the path is too long to ever be bound, so
    the question cannot be answered this way. Any other connection failure
    counts as listening: the callers use this to refuse work that must not
    happen under a running daemon.
    """
    if len(os.fsencode(path)) > MAX_PATH:
        return None
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
            sock.settimeout(timeout)
            sock.connect(str(path))
    except (FileNotFoundError, ConnectionRefusedError):
        return False
    except OSError:
        return True
    return True
