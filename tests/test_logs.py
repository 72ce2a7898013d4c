"""The daemon's log lines: one JSON object per line, the same by either path."""

from __future__ import annotations

import json
import logging
import sys
import threading
from collections.abc import Iterator

import pytest
import trio

from ocpd.daemon import FlushLogs
from ocpd.logs import (
    _JsonFormatter,
    configure_logging,
    get_logger,
    hold_lines,
    log_event,
    release_lines,
)

pytestmark = pytest.mark.usefixtures("restore_logging")


FIELDS = {
    "transport": "ws",
    "message_id": "msg-98f99d3c-4b08-4674-80d5",
    "sender": "did:ocp:testnet:agent-95fdf2e21cf7",
    "error_code": None,
    "duration_ms": 1.234,
    "node/self": "did:key:z6Mk",
}


def test_an_event_is_one_json_line_with_its_fields(capsys: pytest.CaptureFixture[str]) -> None:
    configure_logging(level="info", fmt="json")
    log_event(get_logger("node"), "message", **FIELDS)
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 1
    line = json.loads(lines[0])
    assert list(line)[:4] == ["timestamp", "level", "component", "event"]
    assert line["timestamp"].endswith("Z") and len(line["timestamp"]) == 24
    assert {k: line[k] for k in ("level", "component", "event")} == {
        "level": "info",
        "component": "node",
        "event": "message",
    }
    assert {k: line[k] for k in FIELDS} == FIELDS


def test_the_direct_line_is_the_formatters_line(capsys: pytest.CaptureFixture[str]) -> None:
    configure_logging(level="debug", fmt="json")
    logger = get_logger("registry")
    log_event(logger, "sweep", level=logging.WARNING, **FIELDS)
    direct = json.loads(capsys.readouterr().out)
    record = logger.makeRecord(
        logger.name,
        logging.WARNING,
        __file__,
        1,
        "sweep",
        (),
        None,
        extra={"event": "sweep", "component": "registry", "fields": dict(FIELDS)},
    )
    formatted = json.loads(_JsonFormatter().format(record))
    direct.pop("timestamp"), formatted.pop("timestamp")
    assert direct == formatted


def test_levels_below_the_configured_one_are_dropped(capsys: pytest.CaptureFixture[str]) -> None:
    configure_logging(level="warning", fmt="json")
    log_event(get_logger("node"), "message", **FIELDS)
    log_event(get_logger("node"), "store_failed", level=logging.ERROR, error="disk full")
    lines = capsys.readouterr().out.splitlines()
    assert [json.loads(line)["event"] for line in lines] == ["store_failed"]


def test_text_lines_and_other_handlers_go_through_logging(
    capsys: pytest.CaptureFixture[str], caplog: pytest.LogCaptureFixture
) -> None:
    configure_logging(level="info", fmt="text")
    log_event(get_logger("node"), "message", transport="ws")
    out = capsys.readouterr().out
    assert " info    node      message transport=ws" in out
    # A handler added by someone else (here: pytest's) sees the event as a record.
    configure_logging(level="info", fmt="json")
    root = logging.getLogger("ocpd")
    root.addHandler(caplog.handler)
    log_event(get_logger("node"), "message", transport="http")
    assert [r.getMessage() for r in caplog.records] == ["message"]
    assert json.loads(capsys.readouterr().out)["transport"] == "http"


class FlushRecorder:
    """A stream that shows only what was flushed."""

    def __init__(self) -> None:
        self.buffered = ""
        self.flushed = ""
        self.flushes = 0

    def write(self, text: str) -> int:
        self.buffered += text
        return len(text)

    def flush(self) -> None:
        self.flushes += 1
        self.flushed += self.buffered
        self.buffered = ""


@pytest.fixture
def recorder(monkeypatch: pytest.MonkeyPatch) -> Iterator[FlushRecorder]:
    """JSON lines into a :class:`FlushRecorder` (set up in the test's own phase,
    as pytest puts its own ``sys.stdout`` back between phases)."""
    stream = FlushRecorder()

    def configure() -> None:
        monkeypatch.setattr(sys, "stdout", stream)
        configure_logging(level="info", fmt="json")

    stream.configure = configure  # type: ignore[attr-defined]
    yield stream
    release_lines()


def test_held_lines_leave_together_at_the_flush(recorder: FlushRecorder) -> None:
    recorder.configure()  # type: ignore[attr-defined]
    flush = hold_lines()
    assert flush is not None
    log = get_logger("node")
    for n in range(3):
        log_event(log, "message", n=n)
    assert recorder.flushed == ""
    flush()
    assert [json.loads(line)["n"] for line in recorder.flushed.splitlines()] == [0, 1, 2]
    assert recorder.flushes == 1
    flush()  # nothing held: no system call
    assert recorder.flushes == 1


def test_lines_from_other_threads_are_not_held(recorder: FlushRecorder) -> None:
    recorder.configure()  # type: ignore[attr-defined]
    assert hold_lines() is not None
    worker = threading.Thread(target=log_event, args=(get_logger("storage"), "from_a_thread"))
    worker.start()
    worker.join()
    assert json.loads(recorder.flushed)["event"] == "from_a_thread"


def test_released_lines_flush_at_once_again(recorder: FlushRecorder) -> None:
    recorder.configure()  # type: ignore[attr-defined]
    assert hold_lines() is not None
    log_event(get_logger("node"), "held")
    release_lines()
    assert json.loads(recorder.flushed)["event"] == "held"
    log_event(get_logger("node"), "direct")
    assert json.loads(recorder.flushed.splitlines()[1])["event"] == "direct"


def test_the_daemon_flushes_held_lines_before_the_loop_waits(recorder: FlushRecorder) -> None:
    seen: list[str] = []

    async def main() -> None:
        recorder.configure()  # type: ignore[attr-defined]
        flush = hold_lines()
        assert flush is not None
        trio.lowlevel.add_instrument(FlushLogs(flush))
        log_event(get_logger("node"), "in_the_loop")
        seen.append(recorder.flushed)
        await trio.sleep(0.01)  # the loop waits for I/O: the line leaves first
        seen.append(recorder.flushed)

    trio.run(main)
    assert seen[0] == ""
    assert json.loads(seen[1])["event"] == "in_the_loop"


def test_holding_needs_the_json_handler(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sys, "stdout", FlushRecorder())
    configure_logging(level="info", fmt="text")
    assert hold_lines() is None
