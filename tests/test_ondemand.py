"""OnDemand: one task while there is work, none otherwise."""

from __future__ import annotations

import trio
import trio.testing

from ocpd.ondemand import OnDemand


async def test_one_task_at_a_time_and_none_once_done() -> None:
    queued: list[int] = []
    done: list[int] = []
    runs = 0
    gate = trio.Event()

    async def body() -> None:
        nonlocal runs
        runs += 1
        await gate.wait()
        while queued:
            done.append(queued.pop(0))
            await trio.lowlevel.checkpoint()

    async with trio.open_nursery() as nursery:
        worker = OnDemand(nursery, body)
        await worker.settle()  # not running: returns at once
        queued.append(1)
        worker.kick()
        queued.append(2)
        worker.kick()  # already running: no second task
        await trio.testing.wait_all_tasks_blocked()
        assert worker.running and runs == 1
        gate.set()
        await worker.settle()
        assert not worker.running and done == [1, 2]
        assert len(nursery.child_tasks) == 0
        queued.append(3)
        worker.kick()  # idle again: a new run
        await worker.settle()
    assert runs == 2 and done == [1, 2, 3]
