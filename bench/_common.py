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


def wait_for_quiet_server(max_wait: float = 180.0, busy_below: float = 0.15) -> float:
    """Wait until the Prefect server has worked through the previous run's events; returns seconds.

    Why: the server ingests every task's state events after the map has finished. Without this
    the next runner's flow run waits behind that backlog (30 s and more for 1,000 tasks), which
    would be charged to whichever runner happens to run next.
    """
    import psutil

    start = time.monotonic()
    servers = [p for p in psutil.process_iter(["cmdline"]) if _role(" ".join(p.info["cmdline"] or []), -1) == "prefect server"]
    quiet_since = None
    last = sum(_cpu(p) for p in servers)
    while time.monotonic() - start < max_wait:
        time.sleep(0.5)
        used = sum(_cpu(p) for p in servers)
        busy = (used - last) / 0.5
        last = used
        if busy < busy_below:
            quiet_since = quiet_since or time.monotonic()
            if time.monotonic() - quiet_since >= 1.5:
                break
        else:
            quiet_since = None
    return time.monotonic() - start


def _cpu(proc) -> float:
    try:
        times = proc.cpu_times()
        return times.user + times.system
    except Exception:  # noqa: BLE001 - process gone
        return 0.0


def _role(cmd: str, pid: int) -> str:
    if pid == os.getpid():
        return "flow process"
    if "prefect_dockerparallel" in cmd and "worker" in cmd:
        return "workers"
    if "redis-server" in cmd:
        return "redis"
    if ("prefect" in cmd and "server" in cmd) or "uvicorn" in cmd:
        return "prefect server"
    if "distributed" in cmd or "dask" in cmd or "multiprocessing" in cmd or "loky" in cmd:
        return "pool workers"
    return "other"


def cpu_by_role() -> dict[str, float]:
    """CPU seconds (user+system) used so far by every process on the machine, summed by role.

    Roles: this flow process, the Prefect server, our workers, redis-server, and everything else.
    Why: on a 2-core machine throughput is bounded by total CPU per task, so the benchmark shows
    where each task's CPU goes, not only how fast the map finished.
    """
    import psutil

    totals: dict[str, float] = {}
    for proc in psutil.process_iter(["pid", "cmdline", "cpu_times"]):
        try:
            cmd = " ".join(proc.info["cmdline"] or [])
            times = proc.info["cpu_times"]
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue
        if times is None:
            continue
        role = _role(cmd, proc.info["pid"])
        totals[role] = totals.get(role, 0.0) + times.user + times.system
    return totals
