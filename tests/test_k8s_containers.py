"""The Kubernetes provider's pods as real containers (fake API, kubelet in container mode): what
only a real container shows — signals reaching the start script, memory limits, exit reasons.

The functions run on workers are pickled by value (the worker image lacks this module).
"""

from __future__ import annotations

import logging

import pytest
from containers import docker_engine, docker_tracker, test_images  # noqa: F401
from docker_runtime import container_runtime  # noqa: F401
from docker_support import container_api, dev_worker_image, ship_by_value  # noqa: F401
from helpers import wait_until
from k8s_fixtures import fake_k8s_containers, make_driver, make_spec  # noqa: F401
from kubernetes import client as k8s_client
from kubernetes import config as k8s_config

from prefect_dockerparallel import DockerCluster
from prefect_dockerparallel.providers.kubernetes import objects as O
from prefect_dockerparallel.runner.futures import WorkerLost
from prefect_dockerparallel.specs import ClusterSecrets, ContainerSpec

ship_by_value(__name__)
MEMORY_MB = 512  # the pod's limit: the worker idles at about 150 MB


def worker_pods(fake, spec) -> list:  # noqa: ANN001
    return [p for (ns, name), p in list(fake.kubelet.procs.items()) if name.startswith(O.job_name(spec, 0))]


def test_a_worker_pod_deleted_during_its_install_step_stops_on_sigterm(
    fake_k8s_containers, dev_worker_image: str  # noqa: F811
) -> None:
    """The start script (`pip install ... && exec python ...`) is the container's main process
    while packages install. Without an init, as PID 1 it ignores SIGTERM and the pod lingers
    until the grace period's SIGKILL (exit 137); the pod spec shares the process namespace, so
    the pod's pause process is PID 1 and SIGTERM ends the script at once (exit 143)."""
    fake = fake_k8s_containers
    driver = make_driver(fake, start_timeout=90, tls=True)
    container = ContainerSpec(image=dev_worker_image, workers_per_container=1, install_self=None, pip_packages=("tomli-w",))
    spec, secrets = make_spec(container=container), ClusterSecrets.generate()
    core = k8s_client.CoreV1Api(k8s_config.new_client_from_config_dict(fake.kubeconfig()))
    try:
        handle = driver.start_server(spec, secrets)
        driver.set_worker_containers(spec, 1, secrets, handle)
        assert wait_until(lambda: [p for p in worker_pods(fake, spec) if p.poll() is None], 60)
        (proc,) = worker_pods(fake, spec)
        core.delete_namespaced_pod(proc.workload.request.hostname, "default")  # grace: the pod's 10 s
        assert wait_until(lambda: proc.poll() is not None, 30)
        assert proc.poll() == 143, (proc.poll(), proc.workload.logs()[-2000:])
    finally:
        driver.stop(spec)
    assert wait_until(lambda: not fake.pids(), 30), fake.pids()


def hog(megabytes: int) -> int:
    block = bytearray(megabytes * 2**20)
    for i in range(0, len(block), 4096):  # touch every page: resident, not just reserved
        block[i] = 1
    return len(block)


def test_a_worker_pod_killed_for_memory_is_reported_with_its_reason(
    fake_k8s_containers, dev_worker_image: str, caplog: pytest.LogCaptureFixture  # noqa: F811
) -> None:
    """A task that outgrows the pod's memory limit: the kernel OOM-kills the container; the task
    fails with a message that says so (Kubernetes' reason), and the driver lists the failure."""
    fake = fake_k8s_containers
    driver = make_driver(fake, start_timeout=90, tls=True)
    container = ContainerSpec(image=dev_worker_image, workers_per_container=1, install_self=None)
    cluster = DockerCluster(provider=driver, container=container, workers=1, worker_cpu=1024,
                            worker_memory=MEMORY_MB, idle_timeout=20, max_attempts=1, heal=False)
    with caplog.at_level(logging.WARNING, logger="prefect_dockerparallel"), cluster:
        future = cluster.executor().submit(hog, 2 * MEMORY_MB)
        # The task's Crashed message names the worker and says why its pod ended.
        with pytest.raises(WorkerLost, match=r"lost with worker \S+ after 1 attempt: worker pod \S+: container exited with code 137 \(OOMKilled\)"):
            future.result(timeout=120)
        failures = driver.worker_failures(cluster.spec)
        assert failures and "OOMKilled" in failures[0], failures
    assert "OOMKilled" in caplog.text
    assert wait_until(lambda: not fake.labelled(O.cluster_selector(cluster.name)), 30)


def whence() -> str:
    import os

    import dp_ship_helper  # a module of the user's, shipped with code_paths

    import prefect_dockerparallel

    return f"{prefect_dockerparallel.__file__} {os.environ.get('DOCKERPARALLEL_SHIPPED')} {dp_ship_helper.MARK}"


def _helper(tmp_path) -> str:  # noqa: ANN001
    path = tmp_path / "dp_ship_helper.py"
    path.write_text("MARK = 'helper-from-redis'\n")
    return str(path)


def test_a_stock_prefect_worker_pod_gets_the_package_and_code_from_redis(
    fake_k8s_containers, dev_worker_image: str, test_images: dict, tmp_path  # noqa: F811
) -> None:
    """Zero-build workers on Kubernetes: the worker pod's image has Prefect but not this
    package; its command (the inline bootstrap) fetches the package from the cluster's Redis."""
    from containers import image_of

    driver = make_driver(fake_k8s_containers, start_timeout=90)
    container = ContainerSpec(image=image_of(test_images, "prefect"), server_image=dev_worker_image,
                              workers_per_container=1, install_self=None,
                              code_paths=(_helper(tmp_path),))
    with DockerCluster(provider=driver, container=container, workers=1, worker_cpu=1024, worker_memory=MEMORY_MB,
                       idle_timeout=20) as cluster:
        got = cluster.executor().submit(whence).result(timeout=180)
        assert got.startswith("/tmp/dp-ship-") and "prefect_dockerparallel=" in got and "user-code=" in got, got
        assert got.endswith("helper-from-redis"), got
