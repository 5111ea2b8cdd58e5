"""Adaptive scaling on the real Docker engine: containers appear while tasks wait and leave when
their slot retires (the container exits by itself; nothing is stopped from outside)."""

from __future__ import annotations

from containers import docker_engine, docker_tracker, test_images  # noqa: F401
from docker_support import cluster_objects, dev_worker_image, docker_cluster_kwargs, ship_by_value  # noqa: F401
from helpers import wait_until

from prefect_dockerparallel import DockerCluster

ship_by_value(__name__)


def square_after(x: int, delay: float) -> int:
    import time

    time.sleep(delay)
    return x * x


def worker_containers(client, cluster: str, status: str = "running") -> list:
    return client.containers.list(all=True, filters={
        "label": [f"dockerparallel-cluster={cluster}", "dockerparallel-role=worker"], "status": status})


def test_from_zero_to_max_containers_and_back_to_zero(docker_engine, docker_tracker, dev_worker_image):
    """200 tasks on a cluster of 0 workers (max 2 single-slot containers): two containers start,
    every result is right, and once idle both containers exit 0 on their own (retired, not
    stopped) and are removed; new work brings a container back."""
    kwargs = docker_cluster_kwargs(docker_tracker, dev_worker_image, worker_cpu=512, worker_memory=256)
    cluster = DockerCluster(min_workers=0, max_workers=2, scale_down_after=1, idle_timeout=30, **kwargs)
    with cluster:
        assert worker_containers(docker_engine, cluster.name, "created") + worker_containers(docker_engine, cluster.name) == []
        ex = cluster.executor()
        futures = [ex.submit(square_after, i, 0.05) for i in range(200)]
        assert wait_until(lambda: len(worker_containers(docker_engine, cluster.name)) == 2, 120)
        assert [f.result(timeout=180) for f in futures] == [i * i for i in range(200)]
        assert wait_until(lambda: not worker_containers(docker_engine, cluster.name), 90), (
            f"idle containers did not retire: {cluster.worker_numbers()}")
        exited = worker_containers(docker_engine, cluster.name, "exited")
        assert all(c.attrs["State"]["ExitCode"] == 0 for c in exited), [c.attrs["State"] for c in exited]
        assert cluster.expected == 0
        assert ex.submit(square_after, 9, 0).result(timeout=120) == 81  # back from zero
        name = cluster.name
    assert not any(cluster_objects(docker_engine, name).values())
