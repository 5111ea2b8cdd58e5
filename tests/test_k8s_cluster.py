"""DockerCluster (the provider-agnostic lifecycle) on KubernetesDriver: reconnect from another
process by cluster name, and the in-cluster `direct` access mode."""

from __future__ import annotations

import socket
from typing import Any

import pytest

from helpers import wait_until
from k8s_fixtures import TEST_CONTAINER, fake_k8s, free_port, make_driver  # noqa: F401

from prefect_dockerparallel.cluster import DockerCluster


@pytest.fixture
def cluster_dns(monkeypatch: pytest.MonkeyPatch) -> None:
    """This process resolves `*.svc` names to 127.0.0.1, as the fake kubelet does for pods."""
    real = socket.getaddrinfo

    def getaddrinfo(host: Any, *args: Any, **kwargs: Any) -> Any:
        if isinstance(host, str) and (host.endswith(".svc") or host.endswith(".svc.cluster.local")):
            host = "127.0.0.1"
        return real(host, *args, **kwargs)

    monkeypatch.setattr(socket, "getaddrinfo", getaddrinfo)


START_AND_LEAVE = """
import json, sys, yaml
sys.path.insert(0, {tests!r})
from k8s_fixtures import TEST_CONTAINER
from prefect_dockerparallel.cluster import DockerCluster
from prefect_dockerparallel.providers.kubernetes.driver import KubernetesDriver
driver = KubernetesDriver(kubeconfig=json.loads(sys.argv[1]), redis_port=int(sys.argv[2]), poll_interval=0.05,
                          tls=False)  # pods as processes: a plain redis-server
cluster = DockerCluster(provider=driver, container=TEST_CONTAINER, workers=2, idle_timeout=30, stop_on_exit=False)
cluster.start()
print(cluster.name, flush=True)
"""


def test_a_second_process_reconnects_by_cluster_name(fake_k8s) -> None:
    """Process A starts a cluster and exits without stopping it; process B (this one) knows only
    the cluster name and the provider settings, and finds the server, secrets and workers."""
    import json
    import subprocess
    import sys
    from pathlib import Path

    port = free_port()
    script = START_AND_LEAVE.format(tests=str(Path(__file__).parent))
    out = subprocess.run([sys.executable, "-c", script, json.dumps(fake_k8s.kubeconfig()), str(port)],
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    name = out.stdout.strip().splitlines()[-1]
    cluster = DockerCluster(provider=make_driver(fake_k8s, redis_port=port), container=TEST_CONTAINER,
                            name=name, idle_timeout=30, stop_on_exit=False)
    try:
        assert cluster.exists()
        cluster.reconnect()  # within idle_timeout of A's last heartbeat
        assert cluster.secrets is not None and cluster.server.driver.host == "127.0.0.1"
        assert wait_until(lambda: cluster.worker_numbers().running == 2, 60), cluster.worker_numbers()
    finally:
        cluster.stop()
    assert wait_until(lambda: not fake_k8s.labelled(f"dockerparallel-cluster={name}"), 30)
    assert not cluster.exists()


def test_direct_access_uses_the_service_dns_name(fake_k8s, cluster_dns) -> None:
    drv = make_driver(fake_k8s, access="direct")
    with DockerCluster(provider=drv, container=TEST_CONTAINER, workers=1, idle_timeout=30) as cluster:
        assert cluster.server.driver == cluster.server.workers
        assert cluster.server.driver.host == f"dp-{cluster.name}-redis.default.svc"
        assert wait_until(lambda: cluster.worker_numbers().running == 1, 60), cluster.worker_numbers()
        assert fake_k8s.store.requests["GET pods/portforward"] == 0
    assert wait_until(lambda: not fake_k8s.labelled(f"dockerparallel-cluster={cluster.name}"), 30)
