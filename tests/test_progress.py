"""Provisioning progress lines: emitted on change, stop when every worker runs or on stop()."""

from __future__ import annotations

import threading

from helpers import wait_until
from prefect_dockerparallel.runner.progress import ProvisioningProgress, progress_message, run_logger_or_default
from prefect_dockerparallel.specs import WorkerNumbers


class _Numbers:
    """Worker numbers the test advances step by step."""

    def __init__(self, *steps: WorkerNumbers):
        self.steps, self.i, self.lock = list(steps), 0, threading.Lock()

    def __call__(self) -> WorkerNumbers:
        with self.lock:
            return self.steps[self.i]

    def advance(self) -> None:
        with self.lock:
            self.i += 1


def test_logs_each_change_and_stops_when_all_workers_run() -> None:
    numbers = _Numbers(WorkerNumbers(4, 0, 4), WorkerNumbers(4, 2, 2), WorkerNumbers(4, 4, 0))
    progress = ProvisioningProgress("dp-test", numbers, interval=0.01).start()
    try:
        assert wait_until(lambda: len(progress.messages) == 1, 5)
        numbers.advance()
        assert wait_until(lambda: len(progress.messages) == 2, 5)
        numbers.advance()
        assert wait_until(lambda: not progress._thread.is_alive(), 5)
    finally:
        progress.stop()
    assert progress.messages[0].startswith("cluster dp-test: 0/4 workers running, 4 initializing")
    assert "2/4 workers running, 2 initializing" in progress.messages[1]
    assert "4/4 workers running, 0 initializing" in progress.messages[2]
    assert len(progress.messages) == 3  # no repeats while nothing changes


def test_stop_ends_the_thread_and_errors_do_not_escape() -> None:
    def broken() -> WorkerNumbers:
        raise RuntimeError("redis unreachable")

    progress = ProvisioningProgress("dp-x", broken, interval=0.01).start()
    progress.stop()
    assert not progress._thread.is_alive() and progress.messages == []


def test_message_and_default_logger_outside_a_run() -> None:
    assert progress_message("c", WorkerNumbers(2, 1, 1), 12.4) == "cluster c: 1/2 workers running, 1 initializing (12 s)"
    assert run_logger_or_default().name == "prefect_dockerparallel.progress"
