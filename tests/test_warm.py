"""Warm clusters (keep_alive): later flow runs attach; several runs share one; the lease ends it."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest
from prefect import flow, task

from helpers import cluster_processes, driver_script, wait_until
from prefect_dockerparallel import DockerCluster, DockerParallelTaskRunner

pytestmark = pytest.mark.usefixtures("prefect_server_session", "no_leftover_processes")

KEEP_ALIVE = 8  # seconds; idle_timeout 5 (the block's minimum), so the lease is keep_alive


@task
def double(x: int) -> int:
    return 2 * x


@task
def wait_for(gate: str, marker: str) -> str:
    import os
    import time

    Path(marker).write_text("running")
    while not os.path.exists(gate):
        time.sleep(0.02)
    return "b-done"


def _runner(**extra) -> DockerParallelTaskRunner:
    return DockerParallelTaskRunner(workers=2, idle_timeout=5, keep_alive=KEEP_ALIVE, **extra)


def _worker_pids(name: str) -> set[int]:
    """Live worker processes of the cluster (a retired worker may be a zombie until reaped)."""
    import psutil

    pids = set()
    for proc in cluster_processes(name):
        try:
            if proc.status() != psutil.STATUS_ZOMBIE and "container.worker" in " ".join(proc.cmdline()):
                pids.add(proc.pid)
        except psutil.Error:
            continue  # exited meanwhile
    return pids


def test_runs_2_and_3_attach_to_the_warm_cluster_and_it_stops_keep_alive_after_the_last() -> None:
    seen: list[tuple[str, set[int]]] = []

    @flow(task_runner=_runner())
    def doubles(n: int) -> list[int]:
        from prefect.context import FlowRunContext

        values = double.map(range(n)).result()
        cluster = FlowRunContext.get().task_runner.docker_cluster
        seen.append((cluster.name, _worker_pids(cluster.name)))
        return values

    def run(n: int) -> list[int]:
        return doubles(n)

    for n in (5, 6, 7):
        assert run(n) == [2 * i for i in range(n)]
    names = {name for name, _ in seen}
    assert len(names) == 1 and next(iter(names)).startswith("dpw-"), seen
    assert seen[0][1] and seen[0][1] == seen[1][1] == seen[2][1], seen  # no new worker process
    [name] = names
    # nobody attaches any more: the lease runs out and everything of the cluster stops by itself
    assert cluster_processes(name)
    assert wait_until(lambda: not cluster_processes(name), KEEP_ALIVE + 10), cluster_processes(name)


def test_a_changed_configuration_never_attaches_to_the_old_cluster() -> None:
    a = DockerCluster(workers=1, keep_alive=30, worker_memory=512)
    b = DockerCluster(workers=1, keep_alive=30, worker_memory=1024)
    c = DockerCluster(workers=1, keep_alive=30, worker_memory=512)
    assert a.name == c.name != b.name
    assert DockerCluster(workers=1, keep_alive=60, worker_memory=512).name != a.name
    with pytest.raises(ValueError, match="keep_alive=0 is invalid"):
        DockerParallelTaskRunner(keep_alive=0)


def test_two_flows_at_once_share_a_warm_cluster_without_crossing(tmp_path: Path) -> None:
    """B's task is still running when A's flow ends and detaches: B's task goes on, and each
    flow gets only its own results."""
    gate, marker = tmp_path / "gate", tmp_path / "b-running"
    results: dict[str, object] = {}

    @flow(task_runner=_runner())
    def flow_b() -> str:
        return wait_for.submit(str(gate), str(marker)).result()

    @flow(task_runner=_runner())
    def flow_a() -> list[int]:
        return double.map(range(10)).result()

    b = threading.Thread(target=lambda: results.setdefault("b", flow_b()))
    b.start()
    try:
        assert wait_until(marker.exists, 90)
        results["a"] = flow_a()  # attaches, runs, detaches while B's task runs
        assert results["a"] == [2 * i for i in range(10)]
        assert b.is_alive()  # A's end did not stop B's task
    finally:
        gate.write_text("open")
        b.join(timeout=90)
    assert results["b"] == "b-done"


def test_a_sigkilled_driver_leaves_nothing_once_the_lease_ends(tmp_path: Path) -> None:
    """The dead-man's switch of a warm cluster is its lease: with every driver SIGKILLed, the
    server and workers stop themselves within keep_alive + 10 s."""
    import signal
    import subprocess
    import sys

    from helpers import kill_all

    script = tmp_path / "driver.py"
    script.write_text(driver_script(f", keep_alive={KEEP_ALIVE}, worker_memory=777", tasks=2))
    driver = subprocess.Popen([sys.executable, str(script)], stdout=subprocess.PIPE, text=True)
    name = None
    try:
        for line in driver.stdout:
            if line.startswith("CLUSTER "):
                name = line.split()[1]
                break
        assert name and name.startswith("dpw-"), "the driver never reported its warm cluster"
        assert len(cluster_processes(name)) >= 4
        driver.send_signal(signal.SIGKILL)
        driver.wait()
        assert wait_until(lambda: not cluster_processes(name), KEEP_ALIVE + 10, interval=0.2), (
            [p.cmdline() for p in cluster_processes(name)])
    finally:
        kill_all(driver, name)


def test_an_adaptive_warm_cluster_idles_at_min_workers_between_runs() -> None:
    """With min_workers=0, the workers a run scaled up to leave when it detaches (they retire when
    idle), and the next run attaches to the warm server and scales up again from zero."""

    @flow(task_runner=DockerParallelTaskRunner(min_workers=0, max_workers=2, scale_down_after=60,
                                               idle_timeout=5, keep_alive=KEEP_ALIVE))
    def adaptive_doubles(n: int) -> tuple[str, list[int]]:
        from prefect.context import FlowRunContext

        values = double.map(range(n)).result()
        return FlowRunContext.get().task_runner.docker_cluster.name, values

    name, values = adaptive_doubles(8)
    assert values == [2 * i for i in range(8)]
    assert wait_until(lambda: not _worker_pids(name), 30), "the idle workers did not retire at detach"
    assert cluster_processes(name)  # the warm server is still there
    again, values = adaptive_doubles(5)
    assert again == name and values == [2 * i for i in range(5)]
    assert wait_until(lambda: not cluster_processes(name), KEEP_ALIVE + 10), cluster_processes(name)
