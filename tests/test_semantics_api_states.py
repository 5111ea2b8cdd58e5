"""What the driver decides reaches the Prefect API (issue 13, item 4): the UI shows the future's state.

A worker's engine reports its own task run; when the driver decides the end instead (a lost worker,
a result that cannot be pickled), the API must not stay Running, say COMPLETED, or 404.
"""

from __future__ import annotations

import os
import threading
import time

import pytest
from prefect import flow, task
from prefect.client.schemas.objects import StateType
from prefect.context import FlowRunContext

from helpers import api_state_type, kill_a_busy_worker
from prefect_dockerparallel import DockerParallelTaskRunner
from semantics import is_ours, make_runner  # noqa: F401  (fixture)


@task
def returns_a_lock() -> object:
    return threading.Lock()


def test_unpicklable_return_value_has_the_same_state_in_the_future_and_the_api(make_runner):
    """Ours must pickle the value to bring it back, so the task is Failed (ThreadPool keeps it in
    memory: Completed); on both runners the API shows exactly what the future holds."""

    @flow(task_runner=make_runner())
    def f():
        future = returns_a_lock.submit()
        future.wait()
        return future.task_run_id, future.state.type, future.state.message

    runner_is_ours = is_ours(make_runner())
    task_run_id, future_type, message = f()
    assert future_type == (StateType.FAILED if runner_is_ours else StateType.COMPLETED)
    if runner_is_ours:
        assert "could not be serialized" in message
    assert api_state_type(task_run_id, future_type) == future_type


@task
def sleeps(seconds: float) -> int:
    time.sleep(seconds)
    return os.getpid()


@pytest.mark.usefixtures("no_leftover_processes")
def test_task_lost_until_attempts_run_out_is_crashed_in_the_api():
    """Ours only: ThreadPool has no worker to lose. The future and the API both say Crashed."""

    @flow(task_runner=DockerParallelTaskRunner(workers=1, max_attempts=1))
    def f():
        future = sleeps.submit(60)
        kill_a_busy_worker(FlowRunContext.get().task_runner.docker_cluster)
        future.wait(60)
        return future.task_run_id, future.state.type, future.state.message

    task_run_id, future_type, message = f()
    assert future_type == StateType.CRASHED
    assert "lost with worker" in message
    assert api_state_type(task_run_id, StateType.CRASHED) == StateType.CRASHED
