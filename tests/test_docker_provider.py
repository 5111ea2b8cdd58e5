"""DockerProvider on the real Docker engine: the cluster lifecycle, limits, labels, secrets, flows.

Worker containers run the `worker` image of scripts/prepare_docker.py with this checkout's package
(`dev_worker_image`); the functions and tasks of this module travel pickled by value.
"""

from __future__ import annotations

import json
import os
import socket
import uuid

import pytest
from prefect import flow, task

from containers import OWNER_LABEL, docker_engine, docker_tracker, test_images  # noqa: F401
from docker_support import (  # noqa: F401
    cluster_objects,
    container_api,
    dev_worker_image,
    docker_cluster_kwargs,
    ship_by_value,
)
from helpers import wait_until

from prefect_dockerparallel import DockerCluster, DockerParallelTaskRunner
from prefect_dockerparallel.providers.base import ProviderError

ship_by_value(__name__)


def where(x: int) -> tuple[int, str]:
    return x * 2, socket.gethostname()


def test_cluster_lifecycle_labels_limits_and_no_secret_in_inspect(docker_engine, docker_tracker, dev_worker_image):
    flow_run_id = str(uuid.uuid4())
    kwargs = docker_cluster_kwargs(docker_tracker, dev_worker_image, worker_cpu=512, worker_memory=300)
    cluster = DockerCluster(workers=1, idle_timeout=30, flow_run_id=flow_run_id, **kwargs)
    name = cluster.name
    try:
        cluster.start()
        assert cluster.exists()
        assert wait_until(lambda: cluster.worker_numbers().running == 1, 90), cluster.worker_numbers()
        with cluster.executor() as ex:
            results = list(ex.map(where, range(4)))
        assert [r[0] for r in results] == [0, 2, 4, 6]
        assert all(host.startswith(f"dp-{name}"[:31] + "-w-") for _, host in results), results

        net = docker_engine.networks.get(f"dp-{name}")
        server = docker_engine.containers.get(f"dp-{name}-server")
        [worker] = docker_engine.containers.list(filters={"label": [f"dockerparallel-cluster={name}", "dockerparallel-role=worker"]})
        for obj in (net, server, worker):
            labels = obj.attrs["Labels"] if obj is net else obj.attrs["Config"]["Labels"]
            assert labels["dockerparallel-cluster"] == name and labels["dockerparallel-flow-run"] == flow_run_id
            assert labels[OWNER_LABEL] == docker_tracker.owner
        # workers reach the server by name on the cluster's own network; the port is published on
        # 127.0.0.1 only, and no worker port at all
        assert set(server.attrs["NetworkSettings"]["Networks"]) == {f"dp-{name}"}
        assert set(worker.attrs["NetworkSettings"]["Networks"]) == {f"dp-{name}"}
        bindings = server.attrs["HostConfig"]["PortBindings"]
        assert list(bindings) == ["6379/tcp"] and [b["HostIp"] for b in bindings["6379/tcp"]] == ["127.0.0.1"]
        assert not worker.attrs["HostConfig"]["PortBindings"]
        # worker_cpu=512 -> half a CPU (a CFS quota), worker_memory=300 -> 300 MiB without swap
        assert worker.attrs["HostConfig"]["NanoCpus"] == 500_000_000
        assert worker.attrs["HostConfig"]["Memory"] == worker.attrs["HostConfig"]["MemorySwap"] == 300 * 2**20
        assert server.attrs["HostConfig"]["NanoCpus"] == 250_000_000  # server_cpu=256
        # the secrets are in a 0600 file inside the container, never in what `docker inspect` shows
        password, key = cluster.secrets.redis_password, cluster.secrets.signing_key.hex()
        for container in (server, worker):
            shown = json.dumps(docker_engine.api.inspect_container(container.id))
            assert password not in shown and key not in shown
            mode = container.exec_run(["stat", "-c", "%a %U", "/run/dockerparallel/secrets.json"]).output.decode()
            assert mode.split() == ["600", "root"]
            env = dict(e.split("=", 1) for e in container.attrs["Config"]["Env"])
            assert "DOCKERPARALLEL_REDIS_PASSWORD" not in env and "DOCKERPARALLEL_CLUSTER_SECRET" not in env
        assert password not in cluster.logs() and key not in cluster.logs()

        # scale up and down; update() replaces a lost container
        cluster.set_worker_number(3)
        assert wait_until(lambda: cluster.worker_numbers().running == 3, 120), cluster.worker_numbers()
        cluster.set_worker_number(1)
        assert wait_until(lambda: cluster.driver.worker_containers(cluster.spec).running == 1, 60)
        [survivor] = docker_engine.containers.list(filters={"label": [f"dockerparallel-cluster={name}", "dockerparallel-role=worker"]})
        survivor.kill()
        assert wait_until(lambda: cluster.driver.worker_containers(cluster.spec).running == 0, 30)
        cluster.update()
        assert wait_until(lambda: cluster.worker_numbers().running == 1, 90), cluster.worker_numbers()

        # another object (another process, in real life) reconnects by name and uses the cluster
        other = DockerCluster(name=name, stop_on_exit=False, **kwargs).reconnect()
        try:
            with other.executor() as ex:
                assert ex.submit(where, 21).result(timeout=60)[0] == 42
        finally:
            other.disconnect()

        cluster.stop()
        assert not cluster.exists()
        assert cluster_objects(docker_engine, name) == {"containers": [], "networks": [], "volumes": []}
    finally:
        cluster.stop()


@task
def square(x: int) -> tuple[int, str, str]:
    return x * x, socket.gethostname(), os.environ.get("DOCKERPARALLEL_CLUSTER", "")


def test_flow_tasks_run_in_containers_and_the_api_shows_them_completed(
    docker_engine, docker_tracker, dev_worker_image, container_api
):
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId

    runner = DockerParallelTaskRunner(workers=2, **docker_cluster_kwargs(docker_tracker, dev_worker_image))

    @flow(task_runner=runner)
    def sweep(n: int):
        from prefect.runtime import flow_run

        return flow_run.id, square.map(range(n)).result()

    flow_run_id, results = sweep(10)
    assert [r[0] for r in results] == [i * i for i in range(10)]
    [cluster] = {r[2] for r in results}
    assert all(r[1].startswith(f"dp-{cluster}"[:31] + "-w-") for r in results)
    assert cluster_objects(docker_engine, cluster) == {"containers": [], "networks": [], "volumes": []}
    with get_client(sync_client=True) as client:
        runs = client.read_task_runs(flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[flow_run_id])))
    assert len(runs) == 10 and {r.state.type.value for r in runs} == {"COMPLETED"}


def test_bad_sizes_and_unreachable_engines_fail_before_anything_is_created(docker_engine, docker_tracker, dev_worker_image):
    from prefect_dockerparallel import DockerProvider

    kwargs = docker_cluster_kwargs(docker_tracker, dev_worker_image, slots=4)
    with pytest.raises(ValueError, match=r"worker_cpu=1024 x workers_per_container=4 asks for 4 CPUs"):
        DockerCluster(workers=4, **kwargs)
    with pytest.raises(ValueError, match=r"worker_memory=4 MB is below Docker's minimum"):
        DockerCluster(workers=1, **{**kwargs, "worker_cpu": 256, "worker_memory": 4})
    with pytest.raises(ProviderError, match=r"cannot reach the Docker engine at tcp://127\.0\.0\.1:9"):
        DockerCluster(workers=1, **{**kwargs, "provider": DockerProvider(docker_host="tcp://127.0.0.1:9")})
    missing = {**kwargs, "provider": DockerProvider(pull="never"), "worker_cpu": 256}
    missing["container"] = missing["container"].model_copy(update={"image": "dp-test/no-such-image:1"})
    with pytest.raises(ProviderError, match=r"image 'dp-test/no-such-image:1' is not on the Docker engine"):
        DockerCluster(workers=1, **missing)
    assert not any(docker_tracker.leftovers().values())


def test_a_loopback_api_url_is_refused_before_provisioning(docker_tracker, dev_worker_image, monkeypatch):
    """Containers cannot reach the flow runner's 127.0.0.1: say so before starting anything."""
    from prefect.settings import PREFECT_API_URL, temporary_settings

    from prefect_dockerparallel.runner.config import build_cluster

    monkeypatch.delenv("DOCKERPARALLEL_ALLOW_LOOPBACK_API", raising=False)
    with temporary_settings({PREFECT_API_URL: "http://127.0.0.1:4200/api"}):
        with pytest.raises(ValueError, match="which docker workers cannot reach"):
            build_cluster(None, docker_cluster_kwargs(docker_tracker, dev_worker_image, workers=1))
    assert not any(docker_tracker.leftovers().values())
