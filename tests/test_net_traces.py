"""Networking trace events: the required members, bounded detail, error classes."""

from __future__ import annotations

import json

import pytest

from ocpd.logs import configure_logging
from ocpd.net.traces import ERROR_OCCURRED, MAX_DETAIL, TRACE_EVENTS, Tracer
from ocpd.proto.errors import NET_ERROR_CLASSES, NetError

NODE = "node:did:key:z6MkhaXgBZDvotDkL5257faiztiGiC2QtKLGpbnnEGta2doK"
PEER = "node:did:key:z6MkrJVnaZkeFzdQyMZu1cgjg7k1pZZ6pvBQ7XJPt4swbTQ2"
T0 = 1_775_217_600.0


pytestmark = pytest.mark.usefixtures("restore_logging")


def _lines(capsys: pytest.CaptureFixture[str]) -> list[dict[str, object]]:
    return [json.loads(line) for line in capsys.readouterr().out.splitlines()]


def test_every_event_carries_trace_id_type_ts_and_node(capsys: pytest.CaptureFixture[str]) -> None:
    configure_logging(level="info", fmt="json")
    seen: list[str] = []
    tracer = Tracer(NODE, wall=lambda: T0, on_event=lambda event, _line: seen.append(event))
    trace = tracer.emit("handshake/started", peer=PEER)
    assert tracer.emit("handshake/accepted", trace_id=trace, peer=PEER) == trace
    tracer.emit("peer/discovered", detail="x" * 1000, fields={"source": "seed-peer"})
    started, accepted, discovered = _lines(capsys)
    for line in (started, accepted, discovered):
        assert line["ts"] == "2026-04-03T12:00:00Z"
        assert line["node/self"] == NODE
        assert line["event"] == line["event/type"]
        assert str(line["trace/id"]).startswith("trace-")
    assert started["trace/id"] == accepted["trace/id"] == trace
    assert discovered["trace/id"] != trace
    assert started["peer"] == PEER and "detail" not in started
    assert "peer" not in discovered
    assert discovered["detail"] == "x" * MAX_DETAIL
    assert discovered["source"] == "seed-peer"
    assert seen == ["handshake/started", "handshake/accepted", "peer/discovered"]


@pytest.mark.parametrize("code", sorted(NET_ERROR_CLASSES))
def test_errors_carry_their_frozen_code_and_class(
    code: str, capsys: pytest.CaptureFixture[str]
) -> None:
    configure_logging(level="info", fmt="json")
    Tracer(NODE, wall=lambda: T0).error(NetError("it failed", code=code), peer=PEER)
    [line] = _lines(capsys)
    assert line["event/type"] == ERROR_OCCURRED
    assert line["level"] == "warning"
    assert (line["error/code"], line["error/class"]) == (code, NET_ERROR_CLASSES[code])
    assert line["detail"] == "it failed"


def test_only_the_listed_event_types_exist() -> None:
    assert len(TRACE_EVENTS) == len(set(TRACE_EVENTS)) == 18
    with pytest.raises(ValueError, match="not a networking trace event"):
        Tracer(NODE, wall=lambda: T0).emit("session/teleported")
