"""Structured logs to stdout (Docker §7.5): one JSON object per line, or text.

Every line has ``timestamp`` (UTC, milliseconds, ``Z``), ``level``,
``component`` and ``event``; further fields are passed as keyword arguments
to :func:`log_event`. Callers never pass keys, shares or payloads: the fields
are meant for agent DIDs, message ids, error codes and durations.
"""

from __future__ import annotations

import atexit
import json
import logging
import queue
import sys
import threading
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, Final

if TYPE_CHECKING:
    from collections.abc import Mapping

__all__ = ["configure_logging", "flush_logs", "get_logger", "log_event", "log_fields"]

_LEVELS: Final = {
    "debug": logging.DEBUG,
    "info": logging.INFO,
    "warning": logging.WARNING,
    "error": logging.ERROR,
}
_ROOT: Final = "ocpd"


class _JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        stamp = datetime.fromtimestamp(record.created, tz=UTC)
        line: dict[str, Any] = {
            "timestamp": stamp.strftime("%Y-%m-%dT%H:%M:%S.") + f"{stamp.microsecond // 1000:03d}Z",
            "level": record.levelname.lower(),
            "component": getattr(record, "component", record.name.rpartition(".")[2]),
            "event": getattr(record, "event", "log"),
        }
        fields = getattr(record, "fields", None)
        if fields:
            line.update(fields)
        if getattr(record, "event", None) is None:
            line["message"] = record.getMessage()
        if record.exc_info:
            line["error"] = self.formatException(record.exc_info).splitlines()[-1]
        return json.dumps(line, ensure_ascii=False, default=str)


class _TextFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        stamp = datetime.fromtimestamp(record.created, tz=UTC).strftime("%H:%M:%S")
        component = getattr(record, "component", record.name.rpartition(".")[2])
        event = getattr(record, "event", None) or record.getMessage()
        fields = getattr(record, "fields", None) or {}
        extra = " ".join(f"{k}={v}" for k, v in fields.items())
        return f"{stamp} {record.levelname.lower():7} {component:9} {event} {extra}".rstrip()


class _LineWriter:
    """Writes formatted lines to a stream from its own thread.

    A busy node logs a line per message; writing (and flushing) each one
    from the event loop cost a system call per message there. Lines are
    formatted by the caller, queued, and written in batches, flushed
    whenever the queue runs empty, so a quiet node's lines appear at once.
    Lines still queued when the process is killed outright are lost; a
    normal exit writes them all (:func:`flush_logs`).
    """

    def __init__(self, stream: Any) -> None:
        self._stream = stream
        self._queue: queue.SimpleQueue[str | None] = queue.SimpleQueue()
        self._thread = threading.Thread(target=self._run, name="ocpd-log-writer", daemon=True)
        self._thread.start()

    def put(self, line: str) -> None:
        self._queue.put(line)

    def _run(self) -> None:
        while True:
            line = self._queue.get()
            lines = [] if line is None else [line]
            done = line is None
            while not done:
                try:
                    more = self._queue.get_nowait()
                except queue.Empty:
                    break
                if more is None:
                    done = True
                else:
                    lines.append(more)
            if lines:
                try:
                    self._stream.write("\n".join(lines) + "\n")
                    self._stream.flush()
                except (OSError, ValueError):
                    pass  # stdout is gone: nothing left to tell
            if done:
                return

    def close(self) -> None:
        if self._thread.is_alive():
            self._queue.put(None)
            self._thread.join(timeout=5)


class _QueuedHandler(logging.Handler):
    def __init__(self, writer: _LineWriter) -> None:
        super().__init__()
        self.writer = writer

    def emit(self, record: logging.LogRecord) -> None:
        try:
            self.writer.put(self.format(record))
        except Exception:
            self.handleError(record)


_writer: _LineWriter | None = None


def flush_logs() -> None:
    """Write every queued line and stop the writer (at exit; idempotent)."""
    global _writer
    if _writer is not None:
        _writer.close()
        _writer = None


def configure_logging(*, level: str = "info", fmt: str = "json", background: bool = False) -> None:
    """Send ocpd's logs to stdout in ``fmt`` at ``level`` (idempotent).

    ``background`` writes them from a thread (the daemon: see
    :class:`_LineWriter`); otherwise each line is written as it is logged.
    """
    global _writer
    root = logging.getLogger(_ROOT)
    root.setLevel(_LEVELS[level])
    root.propagate = False
    for old in list(root.handlers):
        root.removeHandler(old)
    flush_logs()
    handler: logging.Handler
    if background:
        _writer = _LineWriter(sys.stdout)
        atexit.register(flush_logs)
        handler = _QueuedHandler(_writer)
    else:
        handler = logging.StreamHandler(sys.stdout)
    handler.setFormatter(_JsonFormatter() if fmt == "json" else _TextFormatter())
    root.addHandler(handler)
    # Frameworks log through their own loggers; keep their noise at warning.
    for name in ("hypercorn.error", "hypercorn.access", "quart.app", "quart.serving"):
        logging.getLogger(name).setLevel(logging.WARNING)


def get_logger(component: str) -> logging.Logger:
    return logging.getLogger(f"{_ROOT}.{component}")


def log_event(
    logger: logging.Logger, event: str, *, level: int = logging.INFO, **fields: Any
) -> None:
    """Log one structured event with its fields."""
    log_fields(logger, event, fields, level=level)


def log_fields(
    logger: logging.Logger,
    event: str,
    fields: Mapping[str, object],
    *,
    level: int = logging.INFO,
) -> None:
    """:func:`log_event` for field names that are not identifiers (``node/self``)."""
    if logger.isEnabledFor(level):
        component = logger.name.rpartition(".")[2]
        extra = {"event": event, "component": component, "fields": dict(fields)}
        logger.log(level, event, extra=extra)
