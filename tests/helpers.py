"""Small test utilities: polling with a deadline, finding cluster processes, a raw Redis."""

from __future__ import annotations

import os
import time
from typing import Callable, TypeVar

import psutil

T = TypeVar("T")

_DRIVER_SCRIPT = """\
import time
from prefect import flow, task
from prefect.context import FlowRunContext
from prefect_dockerparallel import DockerParallelTaskRunner

@task
def forever(x):
    time.sleep(600)

@flow(task_runner=DockerParallelTaskRunner(workers=2, idle_timeout=5{extra}))
def f():
    futures = forever.map(range({tasks}))
    cluster = FlowRunContext.get().task_runner.docker_cluster
    while cluster.worker_numbers().running < 2:
        time.sleep(0.1)
    print("CLUSTER", cluster.name, flush=True)
    futures.wait()

f()
"""


def driver_script(extra: str = "", tasks: int = 4) -> str:
    """A flow runner to SIGKILL: 2 workers busy with `tasks` endless tasks; it prints
    `CLUSTER <name>` once both workers run. `extra`: more runner arguments (", keep_alive=8")."""
    return _DRIVER_SCRIPT.format(extra=extra, tasks=tasks)


def wait_until(predicate: Callable[[], T], timeout: float, interval: float = 0.05) -> T:
    """Poll `predicate` until it is truthy or `timeout` passes; returns its last value."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value or time.monotonic() > deadline:
            return value
        time.sleep(interval)


def cluster_processes(cluster: str | None = None) -> list[psutil.Process]:
    """Worker/server entrypoints and redis-servers started by this test session."""
    me = os.getpid()
    found = []
    for proc in psutil.process_iter(["pid", "cmdline", "environ"]):
        try:
            cmd = " ".join(proc.info["cmdline"] or [])
            if proc.pid == me:
                continue
            if "prefect_dockerparallel.container.worker" in cmd or "prefect_dockerparallel.container.server" in cmd:
                env = proc.info["environ"] or {}
                if env.get("DOCKERPARALLEL_STATE_DIR") != os.environ.get("DOCKERPARALLEL_STATE_DIR"):
                    continue  # not started by this test session (another run, a system redis)
                if cluster is None or env.get("DOCKERPARALLEL_CLUSTER") == cluster:
                    found.append(proc)
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue
    # redis-server rewrites its process title over its environment: find it as a child instead
    for proc in list(found):
        try:
            found.extend(c for c in proc.children(recursive=True) if c not in found)
        except psutil.NoSuchProcess:
            continue
    return found


class RedisServer:
    """A real, password-protected redis-server on a free loopback port (context manager)."""

    def __init__(self, password: str = "test-password"):
        self.password = password
        self.port = 0
        self.proc = None

    def __enter__(self) -> "RedisServer":
        from prefect_dockerparallel.providers.local import free_port
        from prefect_dockerparallel.container.server import find_redis_server, start_redis, wait_ready
        from prefect_dockerparallel.protocol import connect

        self.port = free_port()
        self.proc = start_redis(find_redis_server(), self.port, self.password, "127.0.0.1")
        wait_ready(connect("127.0.0.1", self.port, self.password), self.proc)
        return self

    def client(self, password: str | None = "__default__"):
        from prefect_dockerparallel.protocol import connect

        return connect("127.0.0.1", self.port, self.password if password == "__default__" else password)

    def __exit__(self, *exc) -> None:
        from prefect_dockerparallel.container.server import stop_redis

        if self.proc:
            stop_redis(self.proc, timeout=0)


def kill_a_busy_worker(cluster) -> str:
    """SIGKILL the worker process that holds a claimed task; returns its worker id."""
    import signal

    queue = cluster.queue

    def busy_worker():
        for wid in queue.redis.smembers(queue.keys.workers):
            wid = wid.decode()
            if queue.redis.llen(queue.keys.processing(wid)) > 0:
                return wid
        return None

    worker_id = wait_until(busy_worker, 60)
    assert worker_id, "no worker ever claimed a task"
    os.kill(int(worker_id.split("-")[-2]), signal.SIGKILL)
    return worker_id


def api_state_type(task_run_id, expected, timeout: float = 30.0):
    """The task run's state type in the Prefect API once it is `expected` (or at the deadline);
    None while the API has no such run."""
    from prefect import get_client
    from prefect.exceptions import ObjectNotFound

    with get_client(sync_client=True) as client:

        def read():
            try:
                run = client.read_task_run(task_run_id)
            except ObjectNotFound:
                return None
            return run.state.type if run.state else None

        seen = {"last": None}

        def matches():
            seen["last"] = read()
            return seen["last"] == expected

        wait_until(matches, timeout, interval=0.2)
        return seen["last"]


def kill_all(driver, cluster: str | None) -> None:
    """Test cleanup: the driver subprocess and every process of its cluster, whatever happened."""
    if driver.poll() is None:
        driver.kill()
        driver.wait()
    for proc in cluster_processes(cluster) if cluster else []:
        try:
            proc.kill()
        except psutil.NoSuchProcess:
            pass
