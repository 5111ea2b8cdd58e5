"""DockerCluster lifecycle on the local provider, and the plain-Python executor."""

from __future__ import annotations

import operator

import pytest

from helpers import cluster_processes, wait_until
from prefect_dockerparallel import DockerCluster
from prefect_dockerparallel.runner.futures import WorkerLost

pytestmark = pytest.mark.usefixtures("no_leftover_processes")


def _divide(a, b):
    return a / b


def test_lifecycle_scale_reconnect_and_stop():
    cluster = DockerCluster(workers=1, idle_timeout=30)
    assert not cluster.is_server_running() and not cluster.exists()
    cluster.start()
    try:
        assert cluster.exists()
        assert wait_until(lambda: cluster.worker_numbers().running == 1, 60)
        cluster.set_worker_number(3)
        numbers = cluster.worker_numbers()
        assert numbers.expected == 3 and numbers.running + numbers.initializing == 3
        assert wait_until(lambda: cluster.worker_numbers().running == 3, 60)
        cluster.set_worker_number(1)
        assert wait_until(lambda: cluster.worker_numbers().running == 1, 30)

        other = DockerCluster(name=cluster.name, stop_on_exit=False).reconnect()
        try:
            with other.executor() as ex:
                assert list(ex.map(operator.mul, [1, 2, 3], [4, 5, 6])) == [4, 10, 18]
        finally:
            other.disconnect()
        assert cluster.exists()  # disconnecting a second handle leaves the cluster running
        assert "worker" in cluster.logs()
    finally:
        cluster.stop()
    assert not cluster.exists()
    assert not cluster_processes(cluster.name)


def test_readme_example_prints_what_it_says():
    """README's DockerCluster example, with its printed numbers (issue 13: it said 4 / 2 / 2)."""
    cluster = DockerCluster(workers=2, idle_timeout=30)
    cluster.start()
    try:
        first = cluster.worker_numbers()
        assert first.expected == 2 and first.running + first.initializing == 2
        cluster.set_worker_number(4)
        assert str(cluster.wait_for_workers(timeout=120)).startswith("4 / 4 / 0")
        with cluster.executor() as ex:
            assert list(ex.map(pow, [2, 3], [10, 10])) == [1024, 59049]
    finally:
        cluster.stop()


def test_executor_returns_values_and_raises_original_exceptions():
    with DockerCluster(workers=2, idle_timeout=30) as cluster:
        ex = cluster.executor()
        assert ex.submit(_divide, 6, 3).result(timeout=60) == 2
        with pytest.raises(ZeroDivisionError):
            ex.submit(_divide, 1, 0).result(timeout=60)
        queue = cluster.queue
        name = cluster.name
    assert not cluster_processes(name)
    with pytest.raises(Exception):
        queue.redis.ping()  # the server is gone with every key


def test_stop_fails_pending_futures_instead_of_hanging():
    import time

    cluster = DockerCluster(workers=1, idle_timeout=30).start()
    future = cluster.executor().submit(time.sleep, 60)
    cluster.stop()
    with pytest.raises(WorkerLost, match="stopped"):
        future.result(timeout=10)


def test_update_replaces_a_lost_worker_container():
    cluster = DockerCluster(workers=2, idle_timeout=30, heal=False).start()
    try:
        assert wait_until(lambda: cluster.worker_numbers().running == 2, 60)
        victim = [p for p in cluster_processes(cluster.name) if "worker" in " ".join(p.cmdline())][0]
        victim.kill()
        assert wait_until(lambda: cluster.driver.worker_containers(cluster.spec).running == 1, 10)
        cluster.update()
        assert wait_until(lambda: cluster.worker_numbers().running == 2, 60)
    finally:
        cluster.stop()


def test_invalid_sizes_are_rejected_before_anything_starts():
    with pytest.raises(ValueError, match="workers=-2"):
        DockerCluster(workers=-2)
    with pytest.raises(ValueError, match="idle_timeout"):
        DockerCluster(workers=1, idle_timeout=1)
    with pytest.raises(ValueError, match="cluster name"):
        DockerCluster(workers=1, name="Bad_Name")


def test_a_container_with_two_slots_runs_two_worker_processes():
    from prefect_dockerparallel import ContainerSpec

    container = ContainerSpec(workers_per_container=2, install_self=None)
    with DockerCluster(workers=2, container=container, idle_timeout=30) as cluster:
        assert cluster.driver.worker_containers(cluster.spec).running == 1  # one "container"
        assert wait_until(lambda: cluster.worker_numbers().running == 2, 60)  # two slots joined
        pids = {cluster.executor().submit(_getpid).result(timeout=60) for _ in range(20)}
        assert len(pids) >= 1
        name = cluster.name
    assert not cluster_processes(name)


def _getpid():
    import os

    return os.getpid()
