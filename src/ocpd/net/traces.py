"""Networking trace events (NET FR-020…FR-023, NFR-005).

Each event is one JSON log line whose ``event`` is the stable label (also in
``event/type``), with ``trace/id``, ``ts`` (RFC 3339 UTC) and ``node/self``
always, and ``peer`` and ``detail`` when given. ``detail`` is short human
text (at most :data:`MAX_DETAIL` characters); machines match on the label
and, for ``error/occurred``, on ``error/code`` and ``error/class``.

A trace id ties together the events of one attempt (a dial, a handshake,
one signal-marker): pass the id returned by the first event to the next.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Final

from ocpd.logs import get_logger, log_fields
from ocpd.proto.encoding import format_timestamp
from ocpd.proto.ids import new_prefixed_uuid

if TYPE_CHECKING:
    from collections.abc import Callable, Mapping

    from ocpd.proto.errors import NetError

__all__ = ["ERROR_OCCURRED", "MAX_DETAIL", "TRACE_EVENTS", "Tracer"]

ERROR_OCCURRED: Final = "error/occurred"

#: Every event type the runtime emits (FR-020), in the order of the list there.
TRACE_EVENTS: Final = (
    "identity/loaded",
    "identity/generated",
    "advertisement/published",
    "advertisement/fetched",
    "advertisement/rejected",
    "peer/discovered",
    "peer/connected",
    "peer/disconnected",
    "handshake/started",
    "handshake/accepted",
    "handshake/rejected",
    "session/established",
    "capabilities/exchanged",
    "keepalive/lost",
    "keepalive/restored",
    "signal-marker/sent",
    "signal-marker/received",
    ERROR_OCCURRED,
)

MAX_DETAIL: Final = 200

_log = get_logger("net")


class Tracer:
    """Writes trace events for one node identity."""

    def __init__(
        self,
        node_self: str,
        *,
        wall: Callable[[], float],
        logger: logging.Logger = _log,
        on_event: Callable[[str, dict[str, object]], None] | None = None,
    ) -> None:
        self.node_self = node_self
        self._wall = wall
        self._logger = logger
        self._on_event = on_event

    def emit(
        self,
        event_type: str,
        *,
        trace_id: str | None = None,
        peer: str | None = None,
        detail: str | None = None,
        level: int = logging.INFO,
        fields: Mapping[str, object] | None = None,
    ) -> str:
        """Write one event; returns its trace id (a new one unless given).

        ``fields`` add event-specific members (``error/code``, ``sequence/no``...).
        """
        if event_type not in TRACE_EVENTS:
            raise ValueError(f"not a networking trace event: {event_type!r}")
        trace_id = trace_id or new_prefixed_uuid("trace")
        line: dict[str, object] = {
            "trace/id": trace_id,
            "event/type": event_type,
            "ts": format_timestamp(self._wall()),
            "node/self": self.node_self,
        }
        if peer is not None:
            line["peer"] = peer
        if detail is not None:
            line["detail"] = detail[:MAX_DETAIL]
        if fields:
            line.update(fields)
        log_fields(self._logger, event_type, line, level=level)
        if self._on_event is not None:
            self._on_event(event_type, line)
        return trace_id

    def error(
        self,
        error: NetError,
        *,
        trace_id: str | None = None,
        peer: str | None = None,
        fields: Mapping[str, object] | None = None,
    ) -> str:
        """``error/occurred`` with the frozen code and its class (FR-022, FR-023)."""
        return self.emit(
            ERROR_OCCURRED,
            trace_id=trace_id,
            peer=peer,
            detail=error.message,
            level=logging.WARNING,
            fields={"error/code": error.code, "error/class": error.cls, **(fields or {})},
        )
