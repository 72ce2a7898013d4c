"""The daemon's log lines: JSON, one per event, written off the event loop."""

from __future__ import annotations

import json
import logging

import pytest

from ocpd.logs import configure_logging, flush_logs, get_logger, log_event


@pytest.fixture(autouse=True)
def _restore() -> object:
    root = logging.getLogger("ocpd")
    level, propagate = root.level, root.propagate
    yield
    flush_logs()
    root.handlers.clear()
    root.setLevel(level)
    root.propagate = propagate


def test_background_lines_are_all_written_in_order(capsys: pytest.CaptureFixture[str]) -> None:
    configure_logging(level="info", fmt="json", background=True)
    log = get_logger("node")
    for i in range(2000):
        log_event(log, "message", message_id=f"m{i}", duration_ms=0.5)
    log_event(log, "hidden", level=logging.DEBUG)
    flush_logs()
    lines = capsys.readouterr().out.splitlines()
    records = [json.loads(line) for line in lines]
    assert [r["message_id"] for r in records] == [f"m{i}" for i in range(2000)]
    assert {r["component"] for r in records} == {"node"}
    assert all(r["event"] == "message" and r["level"] == "info" for r in records)


def test_an_exception_is_summarised_on_its_line(capsys: pytest.CaptureFixture[str]) -> None:
    configure_logging(level="info", fmt="json", background=True)
    log = get_logger("daemon")
    try:
        raise ValueError("broken thing")
    except ValueError:
        log.exception("failed")
    flush_logs()
    record = json.loads(capsys.readouterr().out)
    assert record["error"] == "ValueError: broken thing"
    assert record["message"] == "failed"


def test_flushing_twice_is_harmless(capsys: pytest.CaptureFixture[str]) -> None:
    configure_logging(level="info", fmt="text", background=True)
    log_event(get_logger("registry"), "ready", agents=3)
    flush_logs()
    flush_logs()
    out = capsys.readouterr().out
    assert out.count("\n") == 1 and "registry" in out and "agents=3" in out
