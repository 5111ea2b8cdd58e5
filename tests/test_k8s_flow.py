"""End to end: a real Prefect flow whose mapped tasks run in pods of the fake Kubernetes.

`DockerParallelTaskRunner(provider=AKSProvider(...))` starts the real server entrypoint
(redis-server under the watchdog) and real worker entrypoints as pod processes; the flow runner
reaches Redis through the LoadBalancer Service, workers through the Service DNS name, with the
password and signing key from the cluster's Secret.
"""

from __future__ import annotations

import os
import threading
import time
from pathlib import Path

import pytest
import yaml
from kubernetes import client as k8s_client
from kubernetes import config as k8s_config
from prefect import flow, task

from helpers import wait_until
from k8s_fixtures import TEST_CONTAINER, fake_k8s, free_port  # noqa: F401

from prefect_dockerparallel import DockerParallelTaskRunner
from prefect_dockerparallel.blocks.aks import AKSProvider

MANAGED = "app.kubernetes.io/managed-by=prefect-dockerparallel"


@pytest.fixture(autouse=True)
def _loopback_api(monkeypatch: pytest.MonkeyPatch) -> None:
    # The test Prefect server listens on 127.0.0.1, which the fake's pods (local processes) reach.
    monkeypatch.setenv("DOCKERPARALLEL_ALLOW_LOOPBACK_API", "1")


def aks(fake, access: str = "auto") -> AKSProvider:
    return AKSProvider(kubeconfig=yaml.safe_dump(fake.kubeconfig()), source_ranges=["127.0.0.1/32"],
                       redis_port=free_port(), start_timeout=60, access=access)


@task
def square(x: int) -> tuple[int, str, str]:
    time.sleep(0.2)
    return x * x, os.environ.get("HOSTNAME", ""), os.environ.get("DOCKERPARALLEL_CLUSTER", "")


def test_mapped_tasks_run_in_worker_pods_and_teardown_leaves_nothing(fake_k8s) -> None:
    @flow(task_runner=DockerParallelTaskRunner(provider=aks(fake_k8s), container=TEST_CONTAINER, workers=2))
    def sweep(n: int) -> list[tuple[int, str, str]]:
        return square.map(range(n)).result()

    results = sweep(12)
    assert [r[0] for r in results] == [i * i for i in range(12)]
    [cluster] = {r[2] for r in results}
    pods = {r[1] for r in results}
    assert pods and all(p.startswith(f"dp-{cluster}-workers-") for p in pods), pods
    assert wait_until(lambda: not fake_k8s.labelled(MANAGED), 30), fake_k8s.labelled(MANAGED)
    assert wait_until(lambda: not fake_k8s.pids(), 30)


@task
def slow(x: int, marker_dir: str) -> int:
    Path(marker_dir, f"{x}-{os.environ.get('HOSTNAME')}").write_text("started")
    time.sleep(2)  # long enough to be killed mid-task: the killer polls every 50 ms
    return x + 100


def test_a_worker_pod_killed_mid_task_is_recovered(fake_k8s, tmp_path: Path) -> None:
    """Force-deleting a busy worker pod (SIGKILL, as on node loss): its task is re-queued when the
    worker's lease expires, the Job replaces the pod, and every result comes back right."""
    core = k8s_client.CoreV1Api(k8s_config.new_client_from_config_dict(fake_k8s.kubeconfig()))
    killed: list[str] = []
    stop = threading.Event()

    def killer() -> None:  # a thread, so the flow's closure (pickled to workers) stays plain
        started = wait_until(lambda: stop.is_set() or list(tmp_path.iterdir()), 120)
        if started is True or not started:
            return
        killed.append(started[0].name)
        core.delete_namespaced_pod(started[0].name.split("-", 1)[1], "default", grace_period_seconds=0)

    provider = aks(fake_k8s, access="loadbalancer")  # the other flow test uses the port-forward default

    @flow(task_runner=DockerParallelTaskRunner(provider=provider, container=TEST_CONTAINER, workers=2))
    def resilient(marker_dir: str) -> list[int]:
        return slow.map(range(4), marker_dir=marker_dir).result()

    thread = threading.Thread(target=killer, daemon=True)
    thread.start()
    try:
        assert resilient(str(tmp_path)) == [100, 101, 102, 103]
    finally:
        stop.set()
        thread.join(timeout=10)
    assert killed, "no pod was killed"
    task_index = killed[0].split("-", 1)[0]
    runs = [p.name for p in tmp_path.iterdir() if p.name.split("-", 1)[0] == task_index]
    assert len(runs) == 2, runs  # the killed attempt and the re-queued one, on another pod
    assert wait_until(lambda: not fake_k8s.labelled(MANAGED), 30), fake_k8s.labelled(MANAGED)
