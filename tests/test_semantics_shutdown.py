"""How a flow run's end treats its tasks (issue 13, item 2), side by side with ThreadPoolTaskRunner.

On a normal return ThreadPool's executor shuts down with `cancel_futures=True`: running tasks
finish, tasks that have not started are cancelled. Ours does the same, and also records the
cancelled ones in the API. When the flow ends by an exception, a timeout or a cancellation, ours
stops at once (ThreadPool waits for its running threads), and its pending tasks end Cancelled.
"""

from __future__ import annotations

import time
from pathlib import Path

import pytest
from prefect import flow, task
from prefect.client.schemas.objects import StateType

from helpers import api_state_type, wait_until
from prefect_dockerparallel import DockerParallelTaskRunner
from semantics import is_ours, make_runner  # noqa: F401  (fixture)

FUTURES: list = []


@task
def slow(marker: str, seconds: float) -> str:
    Path(marker).write_text("started")
    time.sleep(seconds)  # the task's own work, not synchronisation
    return "done"


@task
def quick() -> str:
    return "quick"


def test_running_tasks_finish_and_unstarted_ones_are_cancelled_on_return(make_runner, tmp_path):
    """Both runners: the running task finishes (Completed, in the API too) and the one that had not
    started is cancelled. Better than ThreadPool: ours records it as Cancelled in the API, where
    ThreadPool leaves no task run at all."""
    marker = str(tmp_path / "started")
    runner = make_runner(workers=1)
    FUTURES.clear()  # the flow (and so this list) is pickled into the payload

    @flow(task_runner=runner)
    def f():
        running = slow.submit(marker, 3)
        unstarted = quick.submit()
        assert wait_until(lambda: Path(marker).exists(), 60), "the first task never started"
        FUTURES[:] = [running, unstarted]
        return "returned"

    assert f() == "returned"
    running, unstarted = FUTURES
    assert running.state.is_completed() and running.result() == "done"
    assert api_state_type(running.task_run_id, StateType.COMPLETED) == StateType.COMPLETED
    assert unstarted._wrapped_future.done()
    if is_ours(runner):
        assert unstarted.state.is_cancelled(), unstarted.state
        assert api_state_type(unstarted.task_run_id, StateType.CANCELLED) == StateType.CANCELLED
    else:
        assert unstarted._wrapped_future.cancelled()


@pytest.mark.usefixtures("no_leftover_processes")
def test_a_flow_that_raises_stops_promptly_and_its_running_task_ends_cancelled(tmp_path):
    """Ours only, on purpose different from ThreadPool (which would wait the full 60 s for the
    running thread): the cluster stops at once and the task ends Cancelled, in the API too."""
    marker = str(tmp_path / "started")
    FUTURES.clear()  # the flow (and so this list) is pickled into the payload

    @flow(task_runner=DockerParallelTaskRunner(workers=1))
    def f():
        FUTURES[:] = [slow.submit(marker, 60)]
        assert wait_until(lambda: Path(marker).exists(), 60), "the task never started"
        raise ValueError("flow-bad")

    started = time.monotonic()
    with pytest.raises(ValueError, match="flow-bad"):
        f()
    assert time.monotonic() - started < 45
    (running,) = FUTURES
    assert running.state.is_cancelled(), running.state
    assert "ended before this task finished" in running.state.message
    assert api_state_type(running.task_run_id, StateType.CANCELLED) == StateType.CANCELLED


@pytest.mark.usefixtures("no_leftover_processes")
def test_a_flow_that_times_out_stops_promptly(tmp_path):
    """Ours only (ThreadPool would wait the full 60 s for its thread): the flow run ends TimedOut
    within seconds and its running task ends Cancelled, saying why."""
    marker = str(tmp_path / "started")
    FUTURES.clear()

    @flow(task_runner=DockerParallelTaskRunner(workers=1), timeout_seconds=8)
    def f():
        FUTURES[:] = [slow.submit(marker, 60)]
        # Polls rather than blocks: under pytest-timeout's SIGALRM, Prefect's timeout falls back
        # to interrupting the flow's thread between bytecodes, which a blocked wait never reaches.
        wait_until(lambda: False, 120, interval=0.1)

    started = time.monotonic()
    state = f(return_state=True)
    assert state.name == "TimedOut", state
    assert time.monotonic() - started < 45
    (running,) = FUTURES
    assert running.state.is_cancelled() and "TimedOut" in running.state.message, running.state
