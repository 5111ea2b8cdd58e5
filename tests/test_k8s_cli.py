"""`prefect-dockerparallel clusters ls|cleanup --provider aks` against the fake Kubernetes.

The CLI builds its driver with `providers.kubernetes.from_env()` (KUBECONFIG here), finds
clusters by label, calls a cluster dead when its server pod is gone or exited (the dead-man's
switch stopped it, or the node died), and removes a dead cluster's leftovers.
"""

from __future__ import annotations

import signal

import pytest
import yaml

from helpers import wait_until
from k8s_fixtures import fake_k8s, make_driver, make_spec  # noqa: F401

from prefect_dockerparallel import cli
from prefect_dockerparallel.providers.kubernetes.driver import from_env
from prefect_dockerparallel.specs import ClusterSecrets


def test_cleanup_removes_a_dead_cluster_and_keeps_a_live_one(fake_k8s, tmp_path, monkeypatch, capsys) -> None:
    path = tmp_path / "kubeconfig"
    path.write_text(yaml.safe_dump(fake_k8s.kubeconfig()))
    monkeypatch.setenv("KUBECONFIG", str(path))
    monkeypatch.setenv("DOCKERPARALLEL_K8S_NAMESPACE", "default")
    # One driver per cluster: pods of the fake share the host network, so ports must differ.
    drivers = {}
    dead, live = make_spec(), make_spec()
    try:
        for spec in (dead, live):
            drv = drivers[spec.name] = make_driver(fake_k8s)
            secrets = ClusterSecrets.generate()
            handle = drv.start_server(spec, secrets)
            drv.set_worker_containers(spec, 1, secrets, handle)
        assert wait_until(lambda: drv.worker_containers(dead).running + drv.worker_containers(live).running == 2, 30)
        # The flow runner died long ago and the server pod's process is gone with its node.
        proc = fake_k8s.kubelet.procs[("default", f"dp-{dead.name}-server")].popen
        proc.send_signal(signal.SIGKILL)
        assert wait_until(lambda: fake_k8s.store.get("pods", "default", f"dp-{dead.name}-server")["status"]["phase"] == "Failed", 20)

        assert cli.main(["clusters", "ls", "--provider", "aks"]) == 0
        out = capsys.readouterr().out
        assert f"{dead.name}\taks\tdead\tflow_run={dead.flow_run_id}" in out
        assert f"{live.name}\taks\talive\tflow_run={live.flow_run_id}" in out

        assert cli.main(["clusters", "cleanup", "--provider", "aks"]) == 0
        out = capsys.readouterr().out
        assert f"removed 4 resources of {dead.name}" in out and live.name not in out
        assert wait_until(lambda: not fake_k8s.labelled(f"dockerparallel-cluster={dead.name}"), 20)
        assert len(fake_k8s.labelled(f"dockerparallel-cluster={live.name}")) == 5  # secret svc pod job pod
        assert [r.name for r in from_env().list_clusters()] == [live.name]

        assert cli.main(["clusters", "cleanup", "--provider", "aks", "--name", live.name]) == 0
        assert wait_until(lambda: not fake_k8s.labelled("app.kubernetes.io/managed-by=prefect-dockerparallel"), 20)
        assert cli.main(["clusters", "ls", "--provider", "aks"]) == 0
        assert "no clusters found" in capsys.readouterr().out
    finally:
        for spec in (dead, live):
            if spec.name in drivers:
                drivers[spec.name].stop(spec)


def test_from_env_picks_access_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    for key in ("KUBECONFIG", "AZURE_TENANT_ID", "KUBERNETES_SERVICE_HOST"):
        monkeypatch.delenv(key, raising=False)
    monkeypatch.setenv("KUBERNETES_SERVICE_HOST", "10.0.0.1")
    drv = from_env()
    assert drv.api._conf["in_cluster"] and drv.access == "direct"
    for key, value in {"AZURE_TENANT_ID": "t", "AZURE_CLIENT_ID": "c", "AZURE_CLIENT_SECRET": "s3cr3t",
                       "AZURE_SUBSCRIPTION_ID": "s", "DOCKERPARALLEL_AKS_RESOURCE_GROUP": "rg",
                       "DOCKERPARALLEL_AKS_CLUSTER": "aks", "DOCKERPARALLEL_K8S_NAMESPACE": "batch"}.items():
        monkeypatch.setenv(key, value)
    drv = from_env()
    assert drv.api._conf["azure"].cluster_name == "aks" and drv.namespace == "batch" and drv.access == "port-forward"
    assert "s3cr3t" not in repr(drv.api._conf["azure"])
