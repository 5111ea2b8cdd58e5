"""End to end on "ECS": a real Prefect flow whose mapped tasks run in real containers of moto's
Fargate tasks.

The fake Fargate agent (tests/ecs_agent.py, mode="containers") plays AWS's side: every RUNNING
task of the cluster becomes a container of the task definition's image with its start script as
written, its environment with the SSM secrets resolved, its CPU/memory as limits and the task's
private IP as its address; workers dial the server at the IP DescribeTasks reports, the driver
through a published loopback port. StopTask is `docker stop` with the task's stopTimeout.
Verified against moto and a Docker engine, not live AWS.

The tasks of this module are pickled by value (cloudpickle.register_pickle_by_value): the
worker image does not have this test module.
"""

from __future__ import annotations

import re
import socket
import threading
import time
from collections.abc import Iterator
from dataclasses import replace

import boto3
import pytest
from containers import docker_engine, docker_tracker, test_images  # noqa: F401
from docker_runtime import DockerRuntime, container_runtime  # noqa: F401
from docker_support import container_api, dev_worker_image, ship_by_value  # noqa: F401
from ecs_agent import FakeFargateAgent
from ecs_support import make_driver, moto_server
from helpers import wait_until
from prefect import flow, task

from prefect_dockerparallel import DockerParallelTaskRunner
from prefect_dockerparallel.specs import ClusterSpec, ContainerSpec

ship_by_value(__name__)

ECS_CLUSTER = "docker-parallel-cluster"
MARKER = re.compile(r"dp-marker (\d+) started on (\S+)")


@pytest.fixture
def ecs(
    container_runtime: DockerRuntime, container_api: object  # noqa: F811
) -> Iterator[tuple[str, FakeFargateAgent]]:
    with moto_server() as url, FakeFargateAgent(
        url, ECS_CLUSTER, mode="containers", runtime=container_runtime, poll=0.1
    ) as agent:
        yield url, agent
        assert not agent.errors, agent.errors


@pytest.fixture
def worker_container(dev_worker_image: str) -> ContainerSpec:  # noqa: F811
    # The `worker` image with this checkout's package copied over (issue 11 will test stock
    # images + self-shipping through the same harness). One slot per container keeps CI fast.
    return ContainerSpec(image=dev_worker_image, workers_per_container=1, install_self=None)


def driver_for(url: str, agent: FakeFargateAgent, **kw: object):  # noqa: ANN201
    return make_driver(url, endpoint_map=agent.map_endpoint, poll_interval=0.1, start_timeout=90,
                       stop_timeout=30, **{"tls": True, **kw})


@task
def square(x: int) -> tuple[int, str, str, str]:
    import os

    import tomli_w  # not in the image: installed by the start script's pip step

    time.sleep(0.2)
    return x * x, os.environ.get("DOCKERPARALLEL_CLUSTER", ""), socket.gethostname(), tomli_w.__name__


def test_mapped_tasks_run_in_fargate_task_containers_and_teardown_leaves_nothing(
    ecs: tuple[str, FakeFargateAgent], worker_container: ContainerSpec
) -> None:
    url, agent = ecs
    driver = driver_for(url, agent)
    # The start script as a user would have it: a pip install step before the worker starts.
    container = replace(worker_container, pip_packages=("tomli-w",))

    @flow(task_runner=DockerParallelTaskRunner(provider=driver, container=container, workers=2, idle_timeout=20))
    def sweep(n: int) -> list[tuple[int, str, str, str]]:
        return square.map(range(n)).result()

    results = sweep(8)
    assert [r[0] for r in results] == [i * i for i in range(8)]
    (cluster,) = {r[1] for r in results}
    assert cluster.startswith("dp-")
    assert {r[3] for r in results} == {"tomli_w"}  # the install step ran in the container
    # 2 slots / 1 per container = 2 worker tasks + 1 server task, each a container.
    started = {a: env for a, env in agent.envs.items() if env.get("DOCKERPARALLEL_CLUSTER") == cluster}
    workers = {a for a, env in started.items() if "DOCKERPARALLEL_SLOTS" in env}
    assert len(started) == 3 and len(workers) == 2
    # TLS by default: the server got its key through SSM (the agent resolved the SecureString
    # reference), workers got only the CA and the certificate's name, and verified the server
    [server_env] = [env for a, env in started.items() if a not in workers]
    assert server_env["DOCKERPARALLEL_REDIS_TLS"] == "1" and "PRIVATE KEY" in server_env["DOCKERPARALLEL_REDIS_TLS_KEY"]
    for arn in workers:
        assert started[arn]["DOCKERPARALLEL_REDIS_CA"] == server_env["DOCKERPARALLEL_REDIS_CA"]
        assert started[arn]["DOCKERPARALLEL_REDIS_TLS_NAME"] == f"dp-{cluster}-server"
        assert "DOCKERPARALLEL_REDIS_TLS_KEY" not in started[arn]
    # Tasks ran inside the worker containers: their hostname is the task's private DNS name.
    worker_hosts = {w.request.hostname for w in agent.runtime.finished + list(agent.workloads.values())
                    if w.request.labels.get("dp-fake-task") in workers}
    assert {r[2] for r in results} <= worker_hosts and len(worker_hosts) == 2
    assert all(host.startswith("ip-10-") for host in worker_hosts)
    assert wait_until(lambda: not agent.running(), 60), agent.running()
    # Every container ended by itself or by StopTask's SIGTERM, none was SIGKILLed at the timeout.
    assert all(agent.exited[a] in (0, 143) for a in started), {a: agent.exited.get(a) for a in started}
    assert [r for r in driver.list_clusters() if r.name == cluster] == []
    logs = wait_until(lambda: "joined cluster" in driver.logs(ClusterSpec(name=cluster)), 20)
    assert logs, driver.logs(ClusterSpec(name=cluster))
    agent.runtime.report("ecs mapped")


@task
def slow(x: int) -> int:
    print(f"dp-marker {x} started on {socket.gethostname()}", flush=True)
    time.sleep(2)
    return x + 100


def test_spot_interruption_requeues_the_workers_tasks(
    ecs: tuple[str, FakeFargateAgent], worker_container: ContainerSpec
) -> None:
    """ECS stops a busy Spot worker task (`docker stop`: SIGTERM): its task goes back to the
    queue, the cluster starts a replacement task, every result comes back right, and the
    container exits on SIGTERM (143), not at the stop timeout's SIGKILL."""
    url, agent = ecs
    driver = driver_for(url, agent, spot_workers=True)
    ecs_client = boto3.client("ecs", endpoint_url=url, region_name="us-east-1",
                              aws_access_key_id="t", aws_secret_access_key="t")
    interrupted: list[str] = []
    stop = threading.Event()

    def busy_worker() -> str | None:
        for arn, workload in list(agent.workloads.items()):
            if workload.running and MARKER.search(workload.logs()):
                return arn
        return None

    def reclaim() -> None:  # plays AWS reclaiming Spot capacity under a busy worker
        arn = wait_until(lambda: stop.is_set() or busy_worker(), 180)
        if isinstance(arn, str):
            interrupted.append(arn)
            ecs_client.stop_task(cluster=ECS_CLUSTER, task=arn, reason="Your Spot Task was interrupted.")

    @flow(task_runner=DockerParallelTaskRunner(provider=driver, container=worker_container, workers=2,
                                               idle_timeout=20))
    def resilient() -> list[int]:
        return slow.map(range(4)).result()

    thread = threading.Thread(target=reclaim, daemon=True)
    thread.start()
    try:
        assert resilient() == [100 + i for i in range(4)]
    finally:
        stop.set()
        thread.join(timeout=10)
    assert interrupted, "no worker task was interrupted"
    runs = [m.group(1) for m in MARKER.finditer(agent.runtime.all_logs())]
    assert len(runs) > 4, f"no task ran twice after the interruption: {sorted(runs)}"
    assert wait_until(lambda: not agent.running(), 60), agent.running()
    assert agent.exited[interrupted[0]] == 143, agent.exited
    agent.runtime.report("ecs spot")
