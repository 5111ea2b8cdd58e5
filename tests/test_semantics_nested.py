"""Nested submits never deadlock (issue 13, item 5): a waiting parent lends its slot.

Better than ThreadPoolTaskRunner on purpose: with `max_workers=1` a parent waiting on its child
deadlocks there (the only thread is the parent's), so these scenarios run on ours only.
"""

from __future__ import annotations

import pytest
from prefect import flow, task

from prefect_dockerparallel import DockerParallelTaskRunner

pytestmark = [pytest.mark.usefixtures("no_leftover_processes"), pytest.mark.timeout(240)]


@task
def grandchild(x: int) -> int:
    return x + 1


@task
def child(x: int) -> int:
    return grandchild.submit(x * 10).result() + 1


@task
def parent(x: int) -> int:
    return child.submit(x).result() + 1


def test_one_slot_completes_parent_child_grandchild():
    @flow(task_runner=DockerParallelTaskRunner(workers=1))
    def f():
        return parent.submit(4).result()

    assert f() == 43


@task
def waits_on_children(x: int) -> list[int]:
    futures = [grandchild.submit(x + i) for i in range(3)]
    return [future.result() for future in futures]


def test_as_many_waiting_parents_as_slots_complete():
    @flow(task_runner=DockerParallelTaskRunner(workers=2))
    def f():
        return waits_on_children.map([0, 100]).result()

    assert f() == [[1, 2, 3], [101, 102, 103]]
