"""Progress messages while a cluster provisions: expected / running / initializing workers.

Cloud containers take tens of seconds to a few minutes to start; without a message the flow run
looks stuck. `ProvisioningProgress` polls the cluster's worker numbers from a daemon thread and
logs a line whenever they change (and at least every `heartbeat` seconds), until every expected
worker runs, `stop()` is called, or `timeout` passes. It logs to the logger it was given, so the
runner can hand it the flow run's logger (a thread has no run context of its own).
"""

from __future__ import annotations

import logging
import threading
import time
from typing import Callable, Optional

from ..specs import WorkerNumbers

_default_log = logging.getLogger("prefect_dockerparallel.progress")


def run_logger_or_default() -> logging.Logger | logging.LoggerAdapter:
    """The current flow run's logger (shown in the UI) when there is one, else a module logger."""
    try:
        from prefect.logging import get_run_logger

        return get_run_logger()
    except Exception:  # noqa: BLE001 - outside a run context (plain Python, tests)
        return _default_log


def progress_message(cluster_name: str, numbers: WorkerNumbers, elapsed: float) -> str:
    return (
        f"cluster {cluster_name}: {numbers.running}/{numbers.expected} workers running, "
        f"{numbers.initializing} initializing ({elapsed:.0f} s)"
    )


class ProvisioningProgress:
    """Log worker numbers until the cluster is fully up (a daemon thread; cheap to stop)."""

    def __init__(
        self,
        cluster_name: str,
        numbers: Callable[[], WorkerNumbers],
        logger: Optional[logging.Logger | logging.LoggerAdapter] = None,
        interval: float = 2.0,
        heartbeat: float = 30.0,
        timeout: float = 1800.0,
    ):
        self.cluster_name = cluster_name
        self._numbers = numbers
        self._log = logger or _default_log
        self._interval, self._heartbeat, self._timeout = interval, heartbeat, timeout
        self._stop = threading.Event()
        self._thread: Optional[threading.Thread] = None
        self.messages: list[str] = []

    def start(self) -> "ProvisioningProgress":
        self._thread = threading.Thread(target=self._run, name=f"dp-progress-{self.cluster_name}", daemon=True)
        self._thread.start()
        return self

    def stop(self, timeout: float = 5.0) -> None:
        self._stop.set()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(timeout)

    def _emit(self, numbers: WorkerNumbers, started: float) -> None:
        message = progress_message(self.cluster_name, numbers, time.monotonic() - started)
        self.messages.append(message)
        self._log.info(message)

    def _run(self) -> None:
        started = last_at = time.monotonic()
        last: Optional[WorkerNumbers] = None
        while not self._stop.is_set() and time.monotonic() - started < self._timeout:
            try:
                numbers = self._numbers()
            except Exception as exc:  # noqa: BLE001 - a progress line must never break a run
                self._log.debug("could not read worker numbers: %s", exc)
                numbers = None
            if numbers is not None:
                now = time.monotonic()
                if numbers != last or now - last_at >= self._heartbeat:
                    self._emit(numbers, started)
                    last, last_at = numbers, now
                if numbers.expected and numbers.running >= numbers.expected:
                    return
            self._stop.wait(self._interval)
