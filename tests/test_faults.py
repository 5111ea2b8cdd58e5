"""Fault tolerance with real processes: worker SIGKILL, exhausted attempts, driver SIGKILL."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import pytest
from prefect import flow, task
from prefect.context import FlowRunContext

from helpers import cluster_processes, driver_script, kill_a_busy_worker, kill_all, wait_until
from prefect_dockerparallel import DockerParallelTaskRunner

pytestmark = pytest.mark.usefixtures("no_leftover_processes")


@task
def slow_square(x: int, seconds: float) -> tuple[int, int]:
    time.sleep(seconds)
    return x * x, os.getpid()


def _current_cluster():
    return FlowRunContext.get().task_runner.docker_cluster


_kill_a_busy_worker = kill_a_busy_worker


def test_worker_sigkilled_mid_task_is_recovered():
    @flow(task_runner=DockerParallelTaskRunner(workers=2))
    def f():
        futures = slow_square.map(range(6), seconds=1.5)
        killed = _kill_a_busy_worker(_current_cluster())
        return killed, futures.result()

    killed, results = f()
    assert [value for value, _ in results] == [i * i for i in range(6)]
    killed_pid = int(killed.split("-")[-2])
    assert killed_pid not in {pid for _, pid in results}  # the lost task ran again elsewhere


def test_task_whose_attempts_are_spent_ends_crashed_naming_the_worker():
    @flow(task_runner=DockerParallelTaskRunner(workers=1, max_attempts=1))
    def f():
        future = slow_square.submit(3, 30)
        killed = _kill_a_busy_worker(_current_cluster())
        future.wait(60)
        return killed, future.state.is_crashed(), future.state.message

    killed, crashed, message = f()
    assert crashed
    assert killed in message and "lost with worker" in message


def test_driver_sigkilled_leaves_no_process_after_idle_timeout(tmp_path):
    script = tmp_path / "driver.py"
    script.write_text(driver_script())
    driver = subprocess.Popen([sys.executable, str(script)], stdout=subprocess.PIPE, text=True)
    try:
        name = None
        deadline = time.monotonic() + 120
        while name is None and time.monotonic() < deadline:
            line = driver.stdout.readline()
            if not line:
                break
            if line.startswith("CLUSTER "):
                name = line.split()[1]
        assert name, "the driver never reported its cluster"
        assert len(cluster_processes(name)) >= 4  # server, redis-server, two workers
        driver.send_signal(signal.SIGKILL)
        driver.wait()
        killed_at = time.monotonic()
        assert wait_until(lambda: not cluster_processes(name), 5 + 10, interval=0.2), (
            f"left after idle_timeout+10s: {[p.cmdline() for p in cluster_processes(name)]}"
        )
        print(f"cluster gone {time.monotonic() - killed_at:.1f}s after the driver was killed")
    finally:
        kill_all(driver, name)


def test_sigterm_releases_the_running_task_at_once():
    """Fargate Spot reclaim / scale-in: SIGTERM hands the claimed task back without waiting for
    the 10 s lease to expire."""

    @flow(task_runner=DockerParallelTaskRunner(workers=2))
    def f():
        future = slow_square.submit(7, 3)
        queue = _current_cluster().queue
        holder = wait_until(
            lambda: next(
                (w.decode() for w in queue.redis.smembers(queue.keys.workers)
                 if queue.redis.llen(queue.keys.processing(w.decode()))),
                None,
            ),
            60,
        )
        os.kill(int(holder.split("-")[-2]), signal.SIGTERM)
        released = wait_until(
            lambda: not queue.redis.exists(queue.keys.lease(holder))
            and not queue.redis.llen(queue.keys.processing(holder)),
            5,  # the lease alone would hold the task for 10 s
        )
        return released, future.result()

    released, (value, _) = f()
    assert released
    assert value == 49
