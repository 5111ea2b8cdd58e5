"""End to end: a real Prefect flow whose mapped tasks run in pods of the fake Kubernetes, each
pod a real container.

`DockerParallelTaskRunner(provider=AKSProvider(...))` creates the Secret, the Service, the server
pod and the worker Job; the fake kubelet (tests/k8s_fake_kubelet.py, container mode) runs each pod
as a container of its image with its start script, env (secretKeyRef resolved from the Secret)
and limits. Workers reach Redis by the Service's DNS name (a network alias of the server
container on the cluster's Docker network); the flow runner through a port-forward or the
LoadBalancer (a published loopback port). Verified against the fake API and a Docker engine,
not a real cluster.

The tasks of this module are pickled by value (cloudpickle.register_pickle_by_value): the
worker image does not have this test module.
"""

from __future__ import annotations

import re
import socket
import threading
import time

import pytest
import yaml
from containers import docker_engine, docker_tracker, test_images  # noqa: F401
from docker_runtime import container_runtime  # noqa: F401
from docker_support import container_api, dev_worker_image, ship_by_value  # noqa: F401
from helpers import wait_until
from k8s_fixtures import fake_k8s_containers, free_port  # noqa: F401
from kubernetes import client as k8s_client
from kubernetes import config as k8s_config
from prefect import flow, task

from prefect_dockerparallel import DockerParallelTaskRunner
from prefect_dockerparallel.blocks.aks import AKSProvider
from prefect_dockerparallel.specs import ContainerSpec

ship_by_value(__name__)

MANAGED = "app.kubernetes.io/managed-by=prefect-dockerparallel"
MARKER = re.compile(r"dp-marker (\d+) started on (\S+)")


def aks(fake, access: str = "auto") -> AKSProvider:
    return AKSProvider(kubeconfig=yaml.safe_dump(fake.kubeconfig()), source_ranges=["127.0.0.1/32"],
                       redis_port=free_port(), start_timeout=90, access=access)


@pytest.fixture
def worker_container(dev_worker_image: str) -> ContainerSpec:  # noqa: F811
    # The `worker` image with this checkout's package copied over; one slot per pod keeps CI fast.
    return ContainerSpec(image=dev_worker_image, workers_per_container=1, install_self=None)


@task
def square(x: int) -> tuple[int, str, str]:
    import os

    time.sleep(0.2)
    return x * x, socket.gethostname(), os.environ.get("DOCKERPARALLEL_CLUSTER", "")


def test_mapped_tasks_run_in_worker_pod_containers_and_teardown_leaves_nothing(
    fake_k8s_containers, worker_container: ContainerSpec  # noqa: F811
) -> None:
    fake = fake_k8s_containers

    pods: dict[str, dict] = {}  # every pod the flow run created, seen while it ran
    done = threading.Event()

    def watch() -> None:
        while not done.wait(0.1):
            pods.update({p["metadata"]["name"]: p for p in fake.store.list("pods", None, MANAGED)})

    @flow(task_runner=DockerParallelTaskRunner(provider=aks(fake), container=worker_container, workers=2,
                                               idle_timeout=20))
    def sweep(n: int) -> list[tuple[int, str, str]]:
        return square.map(range(n)).result()

    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    try:
        results = sweep(8)
    finally:
        done.set()
        watcher.join()
    # TLS by default, inside the port-forward: the server's key is a reference to the cluster's
    # Secret, never a value in a pod; every pod carries the (public) CA to verify the server
    envs = {name: {e["name"]: e for e in p["spec"]["containers"][0]["env"]} for name, p in pods.items()}
    [server] = [env for name, env in envs.items() if name.endswith("-server")]
    assert server["DOCKERPARALLEL_REDIS_TLS_KEY"]["valueFrom"]["secretKeyRef"]["key"] == "redis-tls-key"
    assert "value" not in server["DOCKERPARALLEL_REDIS_TLS_KEY"]
    workers = [env for name, env in envs.items() if not name.endswith("-server")]
    assert workers and all(w["DOCKERPARALLEL_REDIS_CA"]["value"] == server["DOCKERPARALLEL_REDIS_CA"]["value"]
                           and "DOCKERPARALLEL_REDIS_TLS_KEY" not in w for w in workers)
    assert [r[0] for r in results] == [i * i for i in range(8)]
    [cluster] = {r[2] for r in results}
    pods = {r[1] for r in results}
    assert pods and all(p.startswith(f"dp-{cluster}-workers-") for p in pods), pods
    assert wait_until(lambda: not fake.labelled(MANAGED), 60), fake.labelled(MANAGED)
    assert wait_until(lambda: not fake.pids(), 30), fake.pids()
    # Every pod's container ended by itself or on SIGTERM, none at the grace period's SIGKILL.
    codes = {key: p.poll() for key, p in fake.kubelet.finished.items()}
    assert len(codes) >= 3 and all(c in (0, 143) for c in codes.values()), codes
    fake.kubelet.runtime.report("k8s mapped")


@task
def slow(x: int) -> int:
    print(f"dp-marker {x} started on {socket.gethostname()}", flush=True)
    time.sleep(2)  # long enough to be killed mid-task: the killer polls every 50 ms
    return x + 100


def test_a_worker_pod_killed_mid_task_is_recovered(
    fake_k8s_containers, worker_container: ContainerSpec  # noqa: F811
) -> None:
    """Force-deleting a busy worker pod (SIGKILL, as on node loss): its task is re-queued when the
    worker's lease expires, the Job replaces the pod, and every result comes back right."""
    fake = fake_k8s_containers
    core = k8s_client.CoreV1Api(k8s_config.new_client_from_config_dict(fake.kubeconfig()))
    killed: list[tuple[str, str]] = []
    stop = threading.Event()

    def busy_pod() -> tuple[str, str] | None:
        for proc in list(fake.kubelet.procs.values()):
            found = MARKER.search(proc.workload.logs()) if proc.poll() is None else None
            if found:
                return found.group(1), found.group(2)
        return None

    def killer() -> None:  # a thread, so the flow's closure (pickled to workers) stays plain
        found = wait_until(lambda: stop.is_set() or busy_pod(), 180)
        if isinstance(found, tuple):
            killed.append(found)
            core.delete_namespaced_pod(found[1], "default", grace_period_seconds=0)

    provider = aks(fake, access="loadbalancer")  # the other flow test uses the port-forward default

    @flow(task_runner=DockerParallelTaskRunner(provider=provider, container=worker_container, workers=2,
                                               idle_timeout=20))
    def resilient() -> list[int]:
        return slow.map(range(4)).result()

    thread = threading.Thread(target=killer, daemon=True)
    thread.start()
    try:
        assert resilient() == [100, 101, 102, 103]
    finally:
        stop.set()
        thread.join(timeout=10)
    assert killed, "no pod was killed"
    task_index, pod = killed[0]
    runs = [m.group(2) for m in MARKER.finditer(fake.kubelet.runtime.all_logs()) if m.group(1) == task_index]
    assert len(runs) == 2 and pod in runs, runs  # the killed attempt and the re-queued one
    assert fake.kubelet.finished[("default", pod)].poll() == 137  # SIGKILL, as asked
    assert wait_until(lambda: not fake.labelled(MANAGED), 60), fake.labelled(MANAGED)
    fake.kubelet.runtime.report("k8s pod killed")
