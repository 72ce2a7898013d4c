from __future__ import annotations

import logging
from collections.abc import Iterator

import pytest
import trio

from ocpd.proto.crypto import SigningKey
from ocpd.proto.ids import derive_agent_id

NOW = 1_775_217_600.0  # 2026-04-03T12:00:00Z
NETWORK = "testnet"


class Agent:
    """A test agent: a key and its did:ocp id."""

    def __init__(self, seed_byte: int) -> None:
        self.key = SigningKey(bytes([seed_byte]) * 32)
        self.public_key = self.key.public_key
        self.id = derive_agent_id(self.public_key, NETWORK)


@pytest.fixture
def alice() -> Agent:
    return Agent(1)


@pytest.fixture
def bob() -> Agent:
    return Agent(2)


@pytest.fixture
def carol() -> Agent:
    return Agent(3)


def task_count() -> int:
    """Every task in this run, from the root task down."""
    pending = [trio.lowlevel.current_root_task()]
    count = 0
    while pending:
        task = pending.pop()
        if task is None:
            continue
        count += 1
        pending.extend(t for n in task.child_nurseries for t in n.child_tasks)
    return count


@pytest.fixture
def restore_logging() -> Iterator[None]:
    """Put the ``ocpd`` logger back as it was after a test that configures logging."""
    root = logging.getLogger("ocpd")
    saved = (list(root.handlers), root.level, root.propagate)
    yield
    root.handlers[:], root.level, root.propagate = saved[0], saved[1], saved[2]
