"""Ed25519 verification in a helper process, so that the node's second core checks signatures.

Every message costs the event loop one or two Ed25519 verifications (the
envelope's, and over HTTPS the ``Authorization`` header's), about 60 µs
each: the largest single cost of a message after the HTTP machinery. A
worker thread does not help (decision 94: each verification's return to
Python waits for the GIL the loop holds), a separate process does.

Theory of operation
-------------------
:meth:`Verifier.run` keeps one helper process (``python -m ocpd.verifier``)
running, talking over its stdin and stdout. :meth:`Verifier.submit` queues
a caller's checks (one frame per caller) and :meth:`Answer.wait` waits for
them; a sender task, started when checks are queued and gone once they are
sent, writes the frames queued in the same scheduling round in one write.
The helper answers each frame, in order, as soon as it has checked it, so
the first callers go on (to the group commit) while it checks the later
ones.

Frames are a 4-byte big-endian length and a body. A request body is one
caller's checks, each: the number of keys (1 byte), the 32-byte keys, the 64-byte
signature, the message's length (4 bytes) and the message. An answer body
is one byte per check: 1 when some key verifies the signature, else 0.

When there is no helper (disabled, not started yet, crashed, stopping),
checks run on the loop as before; the checks a crashed helper had not
answered are run there as well, so a caller always gets its answer. A
crashed helper is started again after 1 s, doubling to 60 s while it keeps
failing.
"""

from __future__ import annotations

import logging
import os
import signal
import struct
import subprocess
import sys
from collections import deque
from typing import TYPE_CHECKING, Final, NamedTuple

import trio

from ocpd.logs import get_logger, log_event
from ocpd.ondemand import OnDemand
from ocpd.proto.crypto import ed25519_verify

if TYPE_CHECKING:
    from collections.abc import Sequence

__all__ = ["Answer", "SignatureCheck", "Verifier", "helper_wanted"]

_LENGTH: Final = struct.Struct(">I")
_KEY: Final = 32
_SIGNATURE: Final = 64
_MAX_KEYS: Final = 255
RESTART_FIRST_S: Final = 1.0
RESTART_MAX_S: Final = 60.0

log = get_logger("verifier")


class SignatureCheck(NamedTuple):
    """Does ``signature`` verify ``message`` under any of ``keys``?"""

    keys: Sequence[bytes]
    message: bytes
    signature: bytes


def check_here(check: SignatureCheck) -> bool:
    return any(ed25519_verify(key, check.message, check.signature) for key in check.keys)


def helper_wanted(setting: str) -> bool:
    """``helper``, ``loop``, or ``auto``: a helper when the process may use two CPUs or more."""
    if setting == "auto":
        try:
            cpus = len(os.sched_getaffinity(0))
        except (AttributeError, OSError):  # not Linux, or a system-call filter said no
            cpus = os.cpu_count() or 1
        return cpus >= 2
    return setting == "helper"


def encode_checks(checks: Sequence[SignatureCheck]) -> bytes:
    parts: list[bytes] = []
    for check in checks:
        keys = [k for k in check.keys if len(k) == _KEY][:_MAX_KEYS]
        signature = check.signature if len(check.signature) == _SIGNATURE else bytes(_SIGNATURE)
        parts += [bytes([len(keys)]), *keys, signature, _LENGTH.pack(len(check.message))]
        parts.append(check.message)
    body = b"".join(parts)
    return _LENGTH.pack(len(body)) + body


def decode_checks(body: bytes) -> list[SignatureCheck]:
    checks: list[SignatureCheck] = []
    at = 0
    while at < len(body):
        count = body[at]
        at += 1
        keys = [body[at + i * _KEY : at + (i + 1) * _KEY] for i in range(count)]
        at += count * _KEY
        signature = body[at : at + _SIGNATURE]
        at += _SIGNATURE
        (size,) = _LENGTH.unpack_from(body, at)
        at += _LENGTH.size
        checks.append(SignatureCheck(keys, body[at : at + size], signature))
        at += size
    return checks


class Answer:
    """The answer to one caller's checks, on its way (:meth:`Verifier.submit`)."""

    __slots__ = ("checks", "done", "results")

    def __init__(self, checks: Sequence[SignatureCheck]) -> None:
        self.checks = checks
        self.results: list[bool] = []
        self.done = trio.Event()

    def answer_here(self) -> None:
        if not self.done.is_set():
            self.results = [check_here(c) for c in self.checks]
            self.done.set()

    async def wait(self) -> list[bool]:
        """One answer per check, in order."""
        if not self.done.is_set():
            await self.done.wait()
        return self.results


class Verifier:
    def __init__(self, *, helper: bool) -> None:
        self.helper = helper
        self._stdin: trio.abc.SendStream | None = None
        self._queued: list[Answer] = []
        self._sent: deque[Answer] = deque()
        self._sender: OnDemand | None = None
        self.helper_starts = 0
        self.frames_sent = 0
        self.writes = 0
        self.helper_pid: int | None = None

    @property
    def running(self) -> bool:
        return self._stdin is not None

    async def verify(self, checks: Sequence[SignatureCheck]) -> list[bool]:
        """One answer per check, in order."""
        return await self.submit(checks).wait()

    def submit(self, checks: Sequence[SignatureCheck]) -> Answer:
        """Start checking ``checks`` without waiting; :meth:`Answer.wait` gives the answers.

        A caller that submits several in a row before waiting (a WebSocket
        session reading ahead) gets them all into one write to the helper.
        Without a helper the checks run here and now.
        """
        answer = Answer(checks)
        if self._stdin is None or self._sender is None:
            answer.answer_here()
        else:
            self._queued.append(answer)
            self._sender.kick()
        return answer

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """The service: keeps a helper running while enabled, until cancelled."""
        task_status.started()
        if not self.helper:
            await trio.sleep_forever()
        delay = RESTART_FIRST_S
        while True:
            began = trio.current_time()
            await self._one_helper()
            if trio.current_time() - began > RESTART_MAX_S:
                delay = RESTART_FIRST_S
            log_event(log, "verifier_restart", level=logging.WARNING, in_seconds=delay)
            await trio.sleep(delay)
            delay = min(delay * 2, RESTART_MAX_S)

    async def _one_helper(self) -> None:
        command = [sys.executable, "-m", "ocpd.verifier"]
        try:
            process = await trio.lowlevel.open_process(
                command, stdin=subprocess.PIPE, stdout=subprocess.PIPE
            )
        except OSError as exc:
            log_event(log, "verifier_failed", level=logging.WARNING, error=repr(exc))
            return
        self.helper_starts += 1
        self.helper_pid = process.pid
        try:
            stdin, stdout = process.stdin, process.stdout
            if stdin is None or stdout is None:  # pragma: no cover - both are pipes
                return
            async with trio.open_nursery() as nursery:
                self._sender = OnDemand(nursery, self._send_queued)
                self._stdin = stdin
                await self._read_answers(stdout)
                nursery.cancel_scope.cancel()
            log_event(log, "verifier_exited", level=logging.WARNING, returncode=process.poll())
        except (trio.BrokenResourceError, trio.ClosedResourceError, OSError) as exc:
            log_event(log, "verifier_failed", level=logging.WARNING, error=repr(exc))
        finally:
            self._stdin = self._sender = None
            self.helper_pid = None
            # What the helper had not answered is answered here.
            for waiter in self._sent:
                waiter.answer_here()
            for waiter in self._queued:
                waiter.answer_here()
            self._sent.clear()
            self._queued.clear()
            with trio.CancelScope(shield=True):
                if process.returncode is None:
                    process.kill()
                await process.wait()
                for pipe in (process.stdin, process.stdout):
                    if pipe is not None:
                        await trio.aclose_forcefully(pipe)

    async def _send_queued(self) -> None:
        while self._queued and self._stdin is not None:
            batch, self._queued = self._queued, []
            self._sent.extend(batch)
            self.frames_sent += len(batch)
            self.writes += 1
            try:
                await self._stdin.send_all(b"".join(encode_checks(w.checks) for w in batch))
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                return  # the reader sees the helper gone and answers everything here

    async def _read_answers(self, stdout: trio.abc.ReceiveStream) -> None:
        buffer = bytearray()
        while True:
            data = await stdout.receive_some(65_536)
            if not data:
                return
            buffer += data
            while len(buffer) >= _LENGTH.size:
                (size,) = _LENGTH.unpack_from(buffer)
                if len(buffer) < _LENGTH.size + size:
                    break
                answers = bytes(buffer[_LENGTH.size : _LENGTH.size + size])
                del buffer[: _LENGTH.size + size]
                if not self._sent:
                    log_event(log, "verifier_confused", level=logging.ERROR)
                    return  # an answer to nothing: the helper is replaced
                self._answer(answers)

    def _answer(self, answers: bytes) -> None:
        waiter = self._sent.popleft()
        if len(answers) != len(waiter.checks):  # not an answer to be trusted
            waiter.answer_here()
            return
        waiter.results = [b == 1 for b in answers]
        waiter.done.set()


# --- the helper process -------------------------------------------------------------------


def _read_exactly(fd: int, size: int) -> bytes | None:
    chunks: list[bytes] = []
    while size:
        chunk = os.read(fd, size)
        if not chunk:
            return None
        chunks.append(chunk)
        size -= len(chunk)
    return b"".join(chunks)


def serve(read_fd: int, write_fd: int) -> None:
    """Answer frames until the input closes."""
    while True:
        head = _read_exactly(read_fd, _LENGTH.size)
        if head is None:
            return
        body = _read_exactly(read_fd, _LENGTH.unpack(head)[0])
        if body is None:
            return
        answers = bytes(check_here(check) for check in decode_checks(body))
        out = memoryview(_LENGTH.pack(len(answers)) + answers)
        while out:
            out = out[os.write(write_fd, out) :]


if __name__ == "__main__":
    # The daemon stops the helper by closing its input (or dies, which does
    # the same): a terminal's Ctrl-C or the service manager's SIGTERM to the
    # whole group must not end it first, while the daemon still needs answers.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    serve(sys.stdin.fileno(), sys.stdout.fileno())
