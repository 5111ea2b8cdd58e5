"""End to end on "ECS": a real Prefect flow whose mapped tasks run in Fargate tasks of moto.

The fake Fargate agent (tests/ecs_agent.py) plays AWS's side: for every RUNNING task of the
cluster it starts the container's entrypoint (`python -m prefect_dockerparallel.container.server` or
`.worker`) as a local process, with the environment of the task definition, the SSM secrets it
references resolved, and the server's private IP mapped to a loopback port. Stopping a task
stops its process. Verified against moto only, not live AWS.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterator

import pytest
from ecs_agent import FakeFargateAgent
from ecs_support import make_driver, moto_server
from helpers import wait_until
from prefect import flow, task

from prefect_dockerparallel import DockerParallelTaskRunner
from prefect_dockerparallel.specs import ContainerSpec

ECS_CLUSTER = "docker-parallel-cluster"
# The agent runs this checkout's entrypoints, so nothing is pip-installed at "container" start.
TEST_CONTAINER = ContainerSpec(workers_per_container=2, install_self=None)


@pytest.fixture(autouse=True)
def _loopback_api(monkeypatch: pytest.MonkeyPatch) -> None:
    # The test Prefect server listens on 127.0.0.1, which the agent's "containers" can reach.
    monkeypatch.setenv("DOCKERPARALLEL_ALLOW_LOOPBACK_API", "1")


@pytest.fixture
def ecs() -> Iterator[tuple[str, FakeFargateAgent]]:
    with moto_server() as url, FakeFargateAgent(url, ECS_CLUSTER, mode="entrypoints") as agent:
        yield url, agent
        assert not agent.errors, agent.errors


@task
def square(x: int) -> tuple[int, str, int]:
    time.sleep(0.1)
    return x * x, os.environ.get("DOCKERPARALLEL_CLUSTER", ""), os.getpid()


def test_mapped_tasks_run_in_fargate_tasks_and_teardown_leaves_nothing(
    ecs: tuple[str, FakeFargateAgent], no_leftover_processes: None
) -> None:
    url, agent = ecs
    driver = make_driver(
        url, endpoint_map=agent.map_endpoint, poll_interval=0.1, start_timeout=60, stop_timeout=20
    )

    @flow(task_runner=DockerParallelTaskRunner(provider=driver, container=TEST_CONTAINER, workers=4))
    def sweep(n: int) -> list[tuple[int, str, int]]:
        return square.map(range(n)).result()

    results = sweep(16)
    assert [r[0] for r in results] == [i * i for i in range(16)]
    (cluster,) = {r[1] for r in results}
    assert cluster.startswith("dp-")
    assert len({r[2] for r in results}) >= 2, "work was spread over more than one worker process"
    # 4 slots / 2 per container = 2 worker tasks + 1 server task ran; all are gone now.
    started = [env for env in agent.envs.values() if env.get("DOCKERPARALLEL_CLUSTER") == cluster]
    assert sorted("DOCKERPARALLEL_SLOTS" in env for env in started) == [False, True, True]
    assert wait_until(lambda: not agent.running(), 30), agent.running()
    assert [r for r in driver.list_clusters() if r.name == cluster] == []
    logs = wait_until(lambda: "server-" in driver.logs(_spec(cluster)), 20)
    assert logs


def _spec(name: str):  # noqa: ANN202
    from prefect_dockerparallel.specs import ClusterSpec

    return ClusterSpec(name=name)


@task
def slow(x: int, marker_dir: str) -> int:
    from pathlib import Path

    Path(marker_dir, f"{x}-{os.getpid()}").write_text("started")
    time.sleep(3)
    return x + 100


def test_spot_interruption_requeues_the_workers_tasks(
    ecs: tuple[str, FakeFargateAgent], tmp_path, no_leftover_processes: None
) -> None:
    """ECS stops a busy Spot worker task (SIGTERM): its tasks go back to the queue, the cluster
    starts a replacement task, every result comes back right, and it is not counted a failure."""
    import threading

    import boto3
    import psutil

    url, agent = ecs
    driver = make_driver(
        url,
        endpoint_map=agent.map_endpoint,
        poll_interval=0.1,
        start_timeout=60,
        stop_timeout=20,
        spot_workers=True,
    )
    ecs_client = boto3.client(
        "ecs", endpoint_url=url, region_name="us-east-1", aws_access_key_id="t", aws_secret_access_key="t"
    )
    interrupted: list[str] = []
    stop = threading.Event()

    def reclaim() -> None:  # plays AWS reclaiming Spot capacity under a busy worker
        started = wait_until(lambda: stop.is_set() or list(tmp_path.iterdir()), 120)
        if started is True or not started:
            return
        pid = int(started[0].name.split("-")[1])
        parents = {p.pid for p in psutil.Process(pid).parents()} | {pid}
        arn = next(a for a, p in list(agent.procs.items()) if p.pid in parents)
        interrupted.append(arn)
        ecs_client.stop_task(cluster=ECS_CLUSTER, task=arn, reason="Your Spot Task was interrupted.")

    @flow(task_runner=DockerParallelTaskRunner(provider=driver, container=TEST_CONTAINER, workers=4))
    def resilient(marker_dir: str) -> list[int]:
        return slow.map(range(6), marker_dir=marker_dir).result()

    thread = threading.Thread(target=reclaim, daemon=True)
    thread.start()
    try:
        assert resilient(str(tmp_path)) == [100 + i for i in range(6)]
    finally:
        stop.set()
        thread.join(timeout=10)
    assert interrupted, "no worker task was interrupted"
    runs = sorted(p.name.split("-")[0] for p in tmp_path.iterdir())
    assert len(runs) > 6, f"no task ran twice after the interruption: {runs}"
    assert wait_until(lambda: not agent.running(), 30), agent.running()
