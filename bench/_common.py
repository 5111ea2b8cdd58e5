"""Shared bench setup: an isolated PREFECT_HOME and one real `prefect server start`.

Import this module before anything imports prefect: it sets PREFECT_HOME, PREFECT_API_URL and the
local cluster's state dir in the environment, so every thread and subprocess sees the same server.
"""

from __future__ import annotations

import os
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "tests"))


def setup_prefect(api_url: str | None = None):
    """Start (or reuse, when api_url is given) a Prefect server; returns the API URL."""
    os.environ.setdefault("PREFECT_HOME", tempfile.mkdtemp(prefix="dp-bench-home-"))
    os.environ.setdefault("DOCKERPARALLEL_STATE_DIR", tempfile.mkdtemp(prefix="dp-bench-state-"))
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    os.environ.setdefault("PREFECT_LOGGING_LEVEL", "WARNING")
    if api_url is None:
        from prefect_server import shared_server  # tests/prefect_server.py

        api_url = shared_server().api_url
    os.environ["PREFECT_API_URL"] = api_url
    return api_url


class RssSampler:
    """Peak RSS of this process (and optionally its children), sampled in a thread."""

    def __init__(self, interval: float = 0.01, children: bool = False):
        import psutil

        self.proc = psutil.Process()
        self.interval = interval
        self.children = children
        self.peak = 0
        self.base = self.proc.memory_info().rss
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)

    def _loop(self) -> None:
        while not self._stop.is_set():
            rss = self.proc.memory_info().rss
            self.peak = max(self.peak, rss)
            self._stop.wait(self.interval)

    def __enter__(self) -> "RssSampler":
        self.base = self.proc.memory_info().rss
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()


def spread(values: list[float]) -> str:
    if not values:
        return "n/a"
    if len(values) == 1:
        return f"{values[0]:.1f}"
    return f"median {statistics.median(values):.1f} (min {min(values):.1f}, max {max(values):.1f}, n={len(values)})"


def now() -> float:
    return time.perf_counter()
