from __future__ import annotations

import contextlib
import logging
import math
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import trio
from trio.testing import MockClock

from ocpd.proto.crypto import SigningKey
from ocpd.proto.ids import derive_agent_id
from ocpd.verifier import Answer

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


class _Hold:
    """Counts work going on outside the trio loop; while there is any, an
    autojump clock does not jump."""

    def __init__(self) -> None:
        self.busy = 0
        self.saved = 0.0

    @contextlib.contextmanager
    def held(self) -> Iterator[None]:
        clock = trio.lowlevel.current_clock()
        if not isinstance(clock, MockClock):
            yield
            return
        if self.busy == 0:
            self.saved, clock.autojump_threshold = clock.autojump_threshold, math.inf
        self.busy += 1
        try:
            yield
        finally:
            self.busy -= 1
            if self.busy == 0:
                clock.autojump_threshold = self.saved


@pytest.fixture(autouse=True)
def outside_work_holds_the_mock_clock(monkeypatch: pytest.MonkeyPatch) -> None:
    """No autojump while a worker thread (SQLite, key files, DNS) or the
    signature helper process is busy.

    An autojump clock counts a task waiting on a thread or a pipe as idle: on
    a loaded machine a slow ``fsync`` or a slow helper would otherwise let it
    jump past every deadline of the test. That is real work; virtual time
    stands still for it.
    """
    hold = _Hold()
    run_sync = trio.to_thread.run_sync

    async def in_thread(fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        with hold.held():
            return await run_sync(fn, *args, **kwargs)

    wait = Answer.wait

    async def answer(self: Answer[Any]) -> Any:
        if self.done.is_set():
            return await wait(self)
        with hold.held():
            return await wait(self)

    monkeypatch.setattr(trio.to_thread, "run_sync", in_thread)
    monkeypatch.setattr(Answer, "wait", answer)
