"""The daemon's log lines: one JSON object per line, the same by either path."""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator

import pytest

from ocpd.logs import _JsonFormatter, configure_logging, get_logger, log_event


@pytest.fixture(autouse=True)
def restore_logging() -> Iterator[None]:
    root = logging.getLogger("ocpd")
    saved = (list(root.handlers), root.level, root.propagate)
    yield
    root.handlers[:], root.level, root.propagate = saved[0], saved[1], saved[2]


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
