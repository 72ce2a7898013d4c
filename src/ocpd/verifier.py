"""Message checks in a helper process, so that the node's second core does them.

Every message costs one or two Ed25519 verifications (the envelope's, and
over HTTPS the ``Authorization`` header's), about 60 µs each, plus its
strict parse, schema gate and canonical digest: together most of a
message's cost after the transport's. A worker thread does not help
(decision 94: each call's return to Python waits for the GIL the loop
holds), a separate process does.

Theory of operation
-------------------
:meth:`Verifier.run` keeps one helper process (``python -m ocpd.verifier``)
running, talking over its stdin and stdout. :meth:`Verifier.submit` queues
a caller's signature checks, :meth:`Verifier.submit_message` a whole
message to :func:`examine` (decision 103); each is one frame, and
:meth:`Answer.wait` waits for its answer. A sender task, started when
frames are queued and gone once they are sent, writes the frames queued in
the same scheduling round in one write. The helper reads many frames at once
and answers them in order, a few answers per write, so the first callers
go on (to the group commit) while it works on the later ones.

Frames are a 4-byte big-endian length and a body whose first byte is its
kind. Kind 0 is a caller's signature checks, each: the number of keys (1
byte), the 32-byte keys, the 64-byte signature, the message's length (4
bytes) and the message; the answer is one byte per check: 1 when some key
verifies the signature, else 0. Kind 1 is a :class:`MessageCheck`
(:func:`encode_message_check`); the answer is its :class:`MessageVerdict`
(:func:`encode_verdict`: fixed fields when the message passed, the error's
code, message and details as JSON when it was refused). An answer that
does not read as one is worked out on the loop instead.

When there is no helper (disabled, not started yet, crashed, stopping),
the work is done on the loop, by the same functions; what a crashed helper
had not answered is done there as well, so a caller always gets its answer.
A crashed helper is started again after 1 s, doubling to 60 s while it
keeps failing.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import struct
import subprocess
import sys
from collections import deque
from typing import TYPE_CHECKING, Any, Final, Generic, NamedTuple, Protocol, TypeVar

import attrs
import trio

from ocpd.logs import get_logger, log_event
from ocpd.ondemand import OnDemand
from ocpd.proto.crypto import ed25519_verify
from ocpd.proto.envelope import parse_message_within, signed_digest
from ocpd.proto.errors import (
    AuthError,
    MalformedError,
    OcpError,
    PayloadTooLarge,
    ProtocolError,
)

if TYPE_CHECKING:
    from collections.abc import Sequence

__all__ = [
    "Answer",
    "MessageCheck",
    "MessageVerdict",
    "SignatureCheck",
    "Verifier",
    "answer_frame",
    "examine",
    "helper_wanted",
]

_LENGTH: Final = struct.Struct(">I")
_KIND_CHECKS: Final = b"\x00"
_KIND_MESSAGE: Final = b"\x01"
_KEY: Final = 32
_SIGNATURE: Final = 64
_MAX_KEYS: Final = 255
RESTART_FIRST_S: Final = 1.0
RESTART_MAX_S: Final = 60.0

log = get_logger("verifier")

T = TypeVar("T")
T_co = TypeVar("T_co", covariant=True)


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
    body = _checks_body(checks)
    return _LENGTH.pack(len(body) + 1) + _KIND_CHECKS + body


def _checks_body(checks: Sequence[SignatureCheck]) -> bytes:
    parts: list[bytes] = []
    for check in checks:
        keys = [k for k in check.keys if len(k) == _KEY][:_MAX_KEYS]
        signature = check.signature if len(check.signature) == _SIGNATURE else bytes(_SIGNATURE)
        parts += [bytes([len(keys)]), *keys, signature, _LENGTH.pack(len(check.message))]
        parts.append(check.message)
    return b"".join(parts)


def decode_checks(body: bytes | memoryview) -> list[SignatureCheck]:
    """The checks of a frame body after its kind byte."""
    checks: list[SignatureCheck] = []
    at = 0
    while at < len(body):
        count = body[at]
        at += 1
        keys = [bytes(body[at + i * _KEY : at + (i + 1) * _KEY]) for i in range(count)]
        at += count * _KEY
        signature = bytes(body[at : at + _SIGNATURE])
        at += _SIGNATURE
        (size,) = _LENGTH.unpack_from(body, at)
        at += _LENGTH.size
        checks.append(SignatureCheck(keys, bytes(body[at : at + size]), signature))
        at += size
    return checks


# --- whole messages ------------------------------------------------------------------


class MessageCheck(NamedTuple):
    """Everything about one received message that needs no state, in one trip.

    The message is parsed strictly, checked against the schemas, for
    freshness at ``now`` and for its payload size
    (:func:`~ocpd.proto.envelope.parse_message_within`); its digest is
    computed and its signature checked against ``keys``. ``header`` is an
    HTTP ``Authorization`` signature to check in the same trip.
    """

    raw: bytes
    now: float
    clock_skew: float
    max_size: int
    max_payload: int
    keys: Sequence[bytes]
    header: SignatureCheck | None = None


@attrs.frozen
class MessageVerdict:
    """What :func:`examine` found, for the caller to act on in its own order."""

    #: Why the message was refused before its signature (OCP-400, OCP-413).
    refused: OcpError | None = None
    sent_at: float = 0.0
    expires_at: float = 0.0
    #: The digest ``sender.signature`` signs, and whether one of the keys verified it.
    digest: bytes = b""
    signature_ok: bool = False
    #: Why ``sender.signature`` could not be checked at all.
    unreadable: OcpError | None = None
    #: The header's signature (``None``: there was none to check).
    header_ok: bool | None = None


def examine(check: MessageCheck) -> MessageVerdict:
    try:
        message, sent_at, expires_at = parse_message_within(
            check.raw,
            now=check.now,
            clock_skew=check.clock_skew,
            max_size=check.max_size,
            max_payload=check.max_payload,
        )
    except OcpError as exc:
        return MessageVerdict(refused=exc)
    header_ok = check_here(check.header) if check.header is not None else None
    try:
        digest, signature = signed_digest(message)
    except OcpError as exc:
        return MessageVerdict(
            sent_at=sent_at, expires_at=expires_at, unreadable=exc, header_ok=header_ok
        )
    valid = check_here(SignatureCheck(check.keys, digest, signature))
    return MessageVerdict(
        sent_at=sent_at,
        expires_at=expires_at,
        digest=digest,
        signature_ok=valid,
        header_ok=header_ok,
    )


_HEAD: Final = struct.Struct(">ddII")
_VERDICT: Final = struct.Struct(">BB?32sdd")
_OK, _REFUSED, _UNREADABLE = 0, 1, 2
_ERRORS: Final[dict[str, type[OcpError]]] = {
    e.code: e for e in (MalformedError, AuthError, PayloadTooLarge)
}


def encode_message_check(check: MessageCheck) -> bytes:
    keys = [k for k in check.keys if len(k) == _KEY][:_MAX_KEYS]
    header = _checks_body([check.header]) if check.header is not None else b""
    body = b"".join(
        (
            _KIND_MESSAGE,
            _HEAD.pack(check.now, check.clock_skew, check.max_size, check.max_payload),
            bytes([len(keys)]),
            *keys,
            _LENGTH.pack(len(header)),
            header,
            check.raw,
        )
    )
    return _LENGTH.pack(len(body)) + body


def decode_message_check(body: bytes | memoryview) -> MessageCheck:
    """A message check from a frame body after its kind byte."""
    now, skew, max_size, max_payload = _HEAD.unpack_from(body)
    at = _HEAD.size
    count = body[at]
    at += 1
    keys = [bytes(body[at + i * _KEY : at + (i + 1) * _KEY]) for i in range(count)]
    at += count * _KEY
    (size,) = _LENGTH.unpack_from(body, at)
    at += _LENGTH.size
    headers = decode_checks(body[at : at + size])
    at += size
    return MessageCheck(
        bytes(body[at:]), now, skew, max_size, max_payload, keys, headers[0] if headers else None
    )


def encode_verdict(verdict: MessageVerdict) -> bytes:
    header = 0 if verdict.header_ok is None else 1 if verdict.header_ok else 2
    error = verdict.refused or verdict.unreadable
    if error is None:
        return _VERDICT.pack(
            _OK, header, verdict.signature_ok, verdict.digest, verdict.sent_at, verdict.expires_at
        )
    status = _REFUSED if verdict.refused is not None else _UNREADABLE
    described = {"code": error.code, "message": error.message, "details": error.details}
    text = json.dumps(described, ensure_ascii=False, default=str).encode("utf-8")
    return bytes([status, header]) + text


def decode_verdict(answer: bytes) -> MessageVerdict | None:
    """The verdict in ``answer``; ``None`` when it is not one (the helper is confused)."""
    try:
        status, header = answer[0], answer[1]
        header_ok = None if header == 0 else header == 1
        if status == _OK:
            _, _, valid, digest, sent_at, expires_at = _VERDICT.unpack(answer)
            return MessageVerdict(
                sent_at=sent_at,
                expires_at=expires_at,
                digest=digest,
                signature_ok=valid,
                header_ok=header_ok,
            )
        described = json.loads(answer[2:])
        kind = _ERRORS.get(described["code"], ProtocolError)
        error = kind(described["message"], code=described["code"], details=described["details"])
    except (IndexError, struct.error, ValueError, KeyError, TypeError):
        return None
    if status == _REFUSED:
        return MessageVerdict(refused=error)
    return MessageVerdict(unreadable=error, header_ok=header_ok)


class _Request(Protocol[T_co]):
    """Work for the helper: its frame, its answer read back, or done here instead."""

    def frame(self) -> bytes: ...

    def read(self, answer: bytes) -> T_co | None: ...

    def here(self) -> T_co: ...


class _Checks:
    __slots__ = ("checks",)

    def __init__(self, checks: Sequence[SignatureCheck]) -> None:
        self.checks = checks

    def frame(self) -> bytes:
        return encode_checks(self.checks)

    def read(self, answer: bytes) -> list[bool] | None:
        if len(answer) != len(self.checks):  # not an answer to be trusted
            return None
        return [b == 1 for b in answer]

    def here(self) -> list[bool]:
        return [check_here(c) for c in self.checks]


class _Message:
    __slots__ = ("check",)

    def __init__(self, check: MessageCheck) -> None:
        self.check = check

    def frame(self) -> bytes:
        return encode_message_check(self.check)

    def read(self, answer: bytes) -> MessageVerdict | None:
        return decode_verdict(answer)

    def here(self) -> MessageVerdict:
        return examine(self.check)


class Answer(Generic[T]):
    """The answer to one caller's request, on its way (:meth:`Verifier.submit`)."""

    __slots__ = ("done", "request", "result")

    def __init__(self, request: _Request[T]) -> None:
        self.request = request
        self.result: T
        self.done = trio.Event()

    def answer_here(self) -> None:
        if not self.done.is_set():
            self.result = self.request.here()
            self.done.set()

    def take(self, answer: bytes) -> None:
        """The helper's answer; one that does not read as an answer is worked out here."""
        result = self.request.read(answer)
        if result is None:
            self.answer_here()
        else:
            self.result = result
            self.done.set()

    async def wait(self) -> T:
        if not self.done.is_set():
            await self.done.wait()
        return self.result


class Verifier:
    def __init__(self, *, helper: bool) -> None:
        self.helper = helper
        self._stdin: trio.abc.SendStream | None = None
        self._queued: list[Answer[Any]] = []
        self._sent: deque[Answer[Any]] = deque()
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

    def submit(self, checks: Sequence[SignatureCheck]) -> Answer[list[bool]]:
        """Start checking ``checks`` without waiting; :meth:`Answer.wait` gives the answers.

        A caller that submits several in a row before waiting (a WebSocket
        session reading ahead) gets them all into one write to the helper.
        Without a helper the checks run here and now.
        """
        return self._submit(_Checks(checks))

    def submit_message(self, check: MessageCheck) -> Answer[MessageVerdict]:
        """Start :func:`examine` of a message without waiting, as :meth:`submit` does."""
        return self._submit(_Message(check))

    def _submit(self, request: _Request[T]) -> Answer[T]:
        answer = Answer(request)
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
                try:
                    await self._read_answers(stdout)
                finally:
                    # From here on callers are answered here: the nursery
                    # the sender ran in takes no new tasks while it closes.
                    self._stdin = self._sender = None
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
                await self._stdin.send_all(b"".join(a.request.frame() for a in batch))
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

    def _answer(self, answer: bytes) -> None:
        self._sent.popleft().take(answer)


# --- the helper process -------------------------------------------------------------------


def answer_frame(body: bytes) -> bytes:
    """The answer to one frame; an unknown kind gets an empty answer (the daemon works it out)."""
    if body[:1] == _KIND_CHECKS:
        return bytes(check_here(check) for check in decode_checks(memoryview(body)[1:]))
    if body[:1] == _KIND_MESSAGE:
        return encode_verdict(examine(decode_message_check(memoryview(body)[1:])))
    return b""


#: The most bytes the helper reads at once (many frames in one system call).
READ_SIZE: Final = 1 << 20

#: Answers the helper writes together when frames are waiting: the first
#: callers of a group go on while it works on the rest, with one system call
#: for several answers.
ANSWERS_PER_WRITE: Final = 8


def _write_all(fd: int, data: bytes) -> None:
    out = memoryview(data)
    while out:
        out = out[os.write(fd, out) :]


def serve(read_fd: int, write_fd: int) -> None:
    """Answer frames until the input closes.

    Input is read in large chunks; the frames complete in a chunk are
    answered in order, :data:`ANSWERS_PER_WRITE` at a time, and the last
    answers of a chunk are written before the helper waits for more.
    """
    buffer = bytearray()
    while True:
        chunk = os.read(read_fd, READ_SIZE)
        if not chunk:
            return
        buffer += chunk
        answers: list[bytes] = []
        at = 0
        while len(buffer) - at >= _LENGTH.size:
            (size,) = _LENGTH.unpack_from(buffer, at)
            end = at + _LENGTH.size + size
            if len(buffer) < end:
                break
            answer = answer_frame(bytes(buffer[at + _LENGTH.size : end]))
            at = end
            answers.append(_LENGTH.pack(len(answer)) + answer)
            if len(answers) >= ANSWERS_PER_WRITE:
                _write_all(write_fd, b"".join(answers))
                answers.clear()
        del buffer[:at]
        if answers:
            _write_all(write_fd, b"".join(answers))


if __name__ == "__main__":
    # The daemon stops the helper by closing its input (or dies, which does
    # the same): a terminal's Ctrl-C or the service manager's SIGTERM to the
    # whole group must not end it first, while the daemon still needs answers.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    serve(sys.stdin.fileno(), sys.stdout.fileno())
