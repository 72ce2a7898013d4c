"""Structured logs to stdout (Docker §7.5): one JSON object per line, or text.

Every line has ``timestamp`` (UTC, milliseconds, ``Z``), ``level``,
``component`` and ``event``; further fields are passed as keyword arguments
to :func:`log_event`. Callers never pass keys, shares or payloads: the fields
are meant for agent DIDs, message ids, error codes and durations.
"""

from __future__ import annotations

import json
import logging
import sys
import threading
import time
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, Final

if TYPE_CHECKING:
    from collections.abc import Callable, Mapping

__all__ = [
    "configure_logging",
    "get_logger",
    "hold_lines",
    "log_event",
    "log_fields",
    "release_lines",
]

_LEVELS: Final = {
    "debug": logging.DEBUG,
    "info": logging.INFO,
    "warning": logging.WARNING,
    "error": logging.ERROR,
}
_ROOT: Final = "ocpd"


_stamp_cache: list[Any] = [-1, ""]

#: A log line as JSON (non-ASCII kept, other objects as ``str``), with one
#: encoder for every line rather than one per line (a line holds no cycles).
_ENCODE: Final = json.JSONEncoder(ensure_ascii=False, default=str, check_circular=False).encode


def _timestamp(created: float) -> str:
    """``created`` (epoch s) as UTC with milliseconds; one formatting per millisecond."""
    millis = int(created * 1000)
    if millis != _stamp_cache[0]:
        stamp = datetime.fromtimestamp(created, tz=UTC)
        text = stamp.strftime("%Y-%m-%dT%H:%M:%S.") + f"{stamp.microsecond // 1000:03d}Z"
        _stamp_cache[:] = [millis, text]
    return str(_stamp_cache[1])


class _JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, Any] = {
            "timestamp": _timestamp(record.created),
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
        return _ENCODE(line)


class _TextFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        stamp = datetime.fromtimestamp(record.created, tz=UTC).strftime("%H:%M:%S")
        component = getattr(record, "component", record.name.rpartition(".")[2])
        event = getattr(record, "event", None) or record.getMessage()
        fields = getattr(record, "fields", None) or {}
        extra = " ".join(f"{k}={v}" for k, v in fields.items())
        return f"{stamp} {record.levelname.lower():7} {component:9} {event} {extra}".rstrip()


def configure_logging(*, level: str = "info", fmt: str = "json") -> None:
    """Send ocpd's logs to stdout in ``fmt`` at ``level`` (idempotent)."""
    root = logging.getLogger(_ROOT)
    root.setLevel(_LEVELS[level])
    root.propagate = False
    for handler in list(root.handlers):
        root.removeHandler(handler)
    if fmt == "json":
        lines = _JsonLines(sys.stdout)
        lines.setFormatter(_JsonFormatter())
        root.addHandler(lines)
    else:
        text = logging.StreamHandler(sys.stdout)
        text.setFormatter(_TextFormatter())
        root.addHandler(text)
    # Frameworks log through their own loggers; keep their noise at warning.
    for name in ("hypercorn.error", "hypercorn.access", "quart.app", "quart.serving"):
        logging.getLogger(name).setLevel(logging.WARNING)


def hold_lines() -> Callable[[], None] | None:
    """Let the calling thread's JSON lines wait in the buffer until the returned flush.

    The daemon's event loop writes one line per message; flushing each is a
    system call and a wake-up of whatever reads the logs. With lines held,
    the loop flushes once per scheduling round, before it waits for I/O
    (:class:`ocpd.daemon.FlushLogs`), so every line still leaves within one
    round. Lines from other threads and the text format are flushed at once.
    ``None`` when the JSON handler is not installed; :func:`release_lines`
    undoes it.
    """
    handler = _json_handler()
    if handler is None:
        return None
    handler.held_thread = threading.get_ident()
    return handler.flush_held


def release_lines() -> None:
    """Flush held lines and flush every line at once again."""
    handler = _json_handler()
    if handler is not None:
        handler.held_thread = None
        handler.flush_held()


def _json_handler() -> _JsonLines | None:
    handlers = logging.getLogger(_ROOT).handlers
    found = [h for h in handlers if type(h) is _JsonLines]
    return found[0] if found else None


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
        parent = logger.parent
        if (
            parent is not None
            and parent.name == _ROOT
            and not logger.handlers
            and logger.propagate
            and not parent.propagate
            and len(parent.handlers) == 1
            and type(parent.handlers[0]) is _JsonLines
            and level >= parent.handlers[0].level
        ):
            # The daemon's own setup (configure_logging): the line the
            # formatter would make, without a LogRecord on the way.
            parent.handlers[0].write_event(level, component, event, fields)
            return
        extra = {"event": event, "component": component, "fields": dict(fields)}
        logger.log(level, event, extra=extra)


class _JsonLines(logging.StreamHandler):  # type: ignore[type-arg]
    """The JSON handler; :func:`log_fields` hands it events straight away.

    Building a ``LogRecord`` and passing it through the logging machinery
    cost three times as much as the line itself, and the node writes one
    line per message.
    """

    #: The thread whose lines wait for :meth:`flush_held` (the daemon's event loop).
    held_thread: int | None = None
    _held = False

    def write_event(
        self, level: int, component: str, event: str, fields: Mapping[str, object]
    ) -> None:
        line: dict[str, Any] = {
            "timestamp": _timestamp(time.time()),
            "level": logging.getLevelName(level).lower(),
            "component": component,
            "event": event,
        }
        line.update(fields)
        text = _ENCODE(line) + self.terminator
        with self.lock:  # type: ignore[union-attr]
            try:
                self.stream.write(text)
                if threading.get_ident() == self.held_thread:
                    self._held = True
                else:
                    self.flush()
            except Exception:  # as logging does: a log line never raises
                self.handleError(logging.makeLogRecord({"msg": event}))

    def flush_held(self) -> None:
        if self._held:
            self._held = False
            try:
                self.flush()
            except Exception:
                self.handleError(logging.makeLogRecord({"msg": "flush"}))
