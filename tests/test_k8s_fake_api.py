"""The fake Kubernetes API itself, through the real client: if it lied, the driver tests would too."""

from __future__ import annotations

import pytest
from kubernetes import client as k8s_client
from kubernetes import config as k8s_config
from kubernetes.client.exceptions import ApiException

from helpers import wait_until
from k8s_fake_api import matches, parse_selector
from k8s_fixtures import fake_k8s  # noqa: F401


@pytest.mark.parametrize(
    "selector, expected",
    [
        ("app=a", {"p1", "p2"}),
        ("app==a,tier=web", {"p1"}),
        ("app!=a", {"p3", "p4"}),
        ("tier", {"p1", "p2", "p3"}),
        ("!tier", {"p4"}),
        ("tier in (web, db)", {"p1", "p2"}),
        ("tier notin (web)", {"p2", "p3", "p4"}),
        ("app=a,tier notin (db)", {"p1"}),
    ],
)
def test_label_selectors(selector: str, expected: set[str]) -> None:
    objs = {"p1": {"app": "a", "tier": "web"}, "p2": {"app": "a", "tier": "db"},
            "p3": {"app": "b", "tier": "cache"}, "p4": {"app": "b"}}
    reqs = parse_selector(selector)
    assert {name for name, labels in objs.items() if matches(labels, reqs)} == expected


@pytest.fixture
def apis(fake_k8s):
    api_client = k8s_config.new_client_from_config_dict(fake_k8s.kubeconfig())
    return k8s_client.CoreV1Api(api_client), k8s_client.BatchV1Api(api_client)


def _job(name: str, parallelism: int, owner=None) -> dict:
    meta = {"name": name, "labels": {"t": "1"}}
    if owner:
        meta["ownerReferences"] = [owner]
    return {"metadata": meta, "spec": {"parallelism": parallelism, "template": {"spec": {
        "restartPolicy": "Never", "containers": [{"name": "c", "image": "busybox", "command": ["sleep", "60"]}]}}}}


def test_job_parallelism_patch_and_orphan_default(fake_k8s, apis) -> None:
    core, batch = apis
    batch.create_namespaced_job("default", _job("j", 2))
    pods = lambda: core.list_namespaced_pod("default", label_selector="job-name=j").items  # noqa: E731
    assert wait_until(lambda: len([p for p in pods() if p.status.phase == "Running"]) == 2, 10)
    batch.patch_namespaced_job("j", "default", {"spec": {"parallelism": 3}})  # strategic merge patch
    assert wait_until(lambda: len([p for p in pods() if p.status.phase == "Running"]) == 3, 10)
    batch.patch_namespaced_job("j", "default", [{"op": "replace", "path": "/spec/parallelism", "value": 1}])
    assert wait_until(lambda: len(pods()) == 1, 10)
    assert batch.read_namespaced_job("j", "default").status.failed is None  # scale-down is no failure
    with pytest.raises(ApiException) as err:
        batch.patch_namespaced_job("j", "default", {"spec": {"template": {"spec": {"restartPolicy": "OnFailure"}}}})
    assert err.value.status == 422
    batch.delete_namespaced_job("j", "default")  # batch/v1 default: orphan the pods
    assert wait_until(lambda: len(pods()) == 1 and not pods()[0].metadata.owner_references, 10)
    core.delete_namespaced_pod(pods()[0].metadata.name, "default", grace_period_seconds=0)
    assert wait_until(lambda: not pods() and not fake_k8s.pids(), 10)


def test_owner_reference_cascade_and_errors(fake_k8s, apis) -> None:
    core, batch = apis
    core.create_namespaced_config_map("default", {"metadata": {"name": "parent"}})
    parent = core.read_namespaced_config_map("parent", "default")
    owner = {"apiVersion": "v1", "kind": "ConfigMap", "name": "parent", "uid": parent.metadata.uid}
    batch.create_namespaced_job("default", _job("child", 1, owner))
    core.create_namespaced_service("default", {"metadata": {"name": "svc", "ownerReferences": [owner]},
                                               "spec": {"ports": [{"port": 80}]}})
    assert wait_until(lambda: fake_k8s.pids(), 10)
    with pytest.raises(ApiException) as err:
        core.create_namespaced_service("default", {"metadata": {"name": "svc"}, "spec": {"ports": [{"port": 80}]}})
    assert err.value.status == 409 and "already exists" in err.value.body
    core.delete_namespaced_config_map("parent", "default", propagation_policy="Background")
    assert wait_until(lambda: not fake_k8s.labelled("") and not fake_k8s.pids(), 10), fake_k8s.labelled("")
    with pytest.raises(ApiException) as err:
        core.read_namespaced_service("svc", "default")
    assert err.value.status == 404 and '"reason": "NotFound"' in err.value.body
