"""The wire examples of docs/node.md have the shapes the node really produces."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import trio

from conftest import Agent
from node_helpers import handshake, running_node
from ocpd.node.intake import Attempt, Outcome
from ocpd.proto.errors import MalformedError, RateLimited

DOC = (Path(__file__).parent.parent / "docs" / "node.md").read_text(encoding="utf-8")


def _blocks() -> list[str]:
    return re.findall(r"```json\n(.*?)```", DOC, re.DOTALL)


def _shape(value: Any) -> Any:
    """Keys, recursively, with leaves reduced to their JSON type."""
    if isinstance(value, dict):
        return {k: _shape(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_shape(v) for v in value[:1]]
    return type(value).__name__


async def test_error_example(tmp_path: Path, alice: Agent) -> None:
    (example,) = [json.loads(b) for b in _blocks() if '"message_type": "error"' in b]
    with trio.fail_after(30):
        async with running_node(tmp_path) as node:
            attempt = Attempt("http", 0, message_id="msg-00000000-0000-0000-0000", sender=alice.id)
            error = RateLimited(
                "messages rate limit reached", retry_after=4, details={"operation": "messages"}
            )
            real = node.intake.error_message(error, attempt)
    assert _shape(real) == _shape(example)
    assert real["payload"]["message"] == example["payload"]["message"]


async def test_frame_examples(tmp_path: Path, alice: Agent) -> None:
    (receipts,) = [b for b in _blocks() if '"frame_type": "receipt"' in b]
    documented = [
        json.loads(line.replace("{<signed error message>}", "{}"))
        for line in receipts.strip().splitlines()
    ]
    (auth,) = [json.loads(b) for b in _blocks() if '"auth_handshake"' in b]
    with trio.fail_after(30):
        async with running_node(tmp_path) as node:
            attempt = Attempt("ws", 0, message_id="msg-00000000-0000-0000-0000", sender=alice.id)
            real = [
                node.ws._receipt(attempt, Outcome(attempt.message_id or "")),
                node.ws._receipt(attempt, Outcome(attempt.message_id or "", duplicate=True)),
                node.ws._receipt(attempt, MalformedError("x")),
            ]
            real[2]["error"] = {}
            assert [sorted(r) for r in real] == [sorted(d) for d in documented]
            assert [r["status"] for r in real] == [d["status"] for d in documented]
            assert sorted(json.loads(handshake(alice, now=node.clock.now()))) == sorted(auth)
