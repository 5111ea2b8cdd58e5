"""KubernetesDriver against the fake Kubernetes API, through the real `kubernetes` client.

Server pods run the real `prefect_dockerparallel.container.server` entrypoint (redis-server under the
watchdog). Worker pods here run a stand-in that only proves what a worker needs from its pod:
the Secret-referenced password and the Service DNS name reach Redis (`test_k8s_flow.py` runs real
workers under a Prefect flow).
"""

from __future__ import annotations

import json
import socket
import sys
from typing import Any

import pytest
import redis
from kubernetes import client as k8s_client
from kubernetes import config as k8s_config

from helpers import wait_until
from k8s_fake_kubelet import FakeKubernetes, rewrite_startup
from k8s_fixtures import cluster, driver, fake_k8s, make_driver, make_spec  # noqa: F401

from prefect_dockerparallel.protocol import keys as K
from prefect_dockerparallel.providers.base import ProviderError
from prefect_dockerparallel.providers.kubernetes.driver import KubernetesDriver
from prefect_dockerparallel.specs import ClusterSecrets

STANDIN_WORKER = """
import os, socket, time, redis
r = redis.Redis(os.environ["DOCKERPARALLEL_REDIS_HOST"], int(os.environ["DOCKERPARALLEL_REDIS_PORT"]),
                password=os.environ["DOCKERPARALLEL_REDIS_PASSWORD"])
r.sadd("standin:" + os.environ["DOCKERPARALLEL_CLUSTER"], os.environ["DOCKERPARALLEL_CLUSTER_SECRET"])
print("stand-in worker joined", flush=True)
time.sleep(3600)
"""


def standin_rewrite(command: list[str]) -> list[str]:
    if "prefect_dockerparallel.container.worker" in command[-1]:
        return [sys.executable, "-c", STANDIN_WORKER]
    return rewrite_startup(command)


@pytest.fixture
def fake_k8s():  # noqa: F811 - overrides the shared fixture with stand-in workers
    with FakeKubernetes(rewrite=standin_rewrite) as fake:
        yield fake
    assert not fake.pids()
    assert not fake.kubelet.errors, fake.kubelet.errors


def objects(fake: FakeKubernetes, cluster_name: str) -> dict[str, dict[str, Any]]:
    out = {}
    for plural in ("secrets", "services", "pods", "jobs"):
        for o in fake.store.list(plural, None, f"dockerparallel-cluster={cluster_name}"):
            out[f"{o['kind']}/{o['metadata']['name']}"] = o
    return out


def writes(fake: FakeKubernetes) -> int:
    return sum(n for k, n in fake.store.requests.items() if not k.startswith("GET"))


def test_server_objects_are_labelled_owned_by_the_secret_and_hold_no_secret(fake_k8s, cluster) -> None:
    drv, spec, secrets = cluster
    drv.access = "loadbalancer"
    handle = drv.start_server(spec, secrets)

    objs = objects(fake_k8s, spec.name)
    assert set(objs) == {f"Secret/dp-{spec.name}", f"Service/dp-{spec.name}-redis", f"Pod/dp-{spec.name}-server"}
    parent_uid = objs[f"Secret/dp-{spec.name}"]["metadata"]["uid"]
    for key, obj in objs.items():
        labels = obj["metadata"]["labels"]
        assert labels["dockerparallel-cluster"] == spec.name and labels["dockerparallel-flow-run"] == spec.flow_run_id
        if not key.startswith("Secret/"):
            assert [r["uid"] for r in obj["metadata"]["ownerReferences"]] == [parent_uid], key
            text = json.dumps(obj)
            assert secrets.redis_password not in text and secrets.signing_key.hex() not in text, key
    svc = objs[f"Service/dp-{spec.name}-redis"]
    assert svc["spec"]["type"] == "LoadBalancer" and svc["spec"]["loadBalancerSourceRanges"] == ["127.0.0.1/32"]
    env = {e["name"]: e for e in objs[f"Pod/dp-{spec.name}-server"]["spec"]["containers"][0]["env"]}
    assert env[K.ENV_REDIS_PASSWORD]["valueFrom"]["secretKeyRef"] == {"name": f"dp-{spec.name}", "key": "redis-password"}

    assert handle.workers.host == f"dp-{spec.name}-redis.default.svc" and handle.driver.host == "127.0.0.1"
    assert redis.Redis(handle.driver.host, handle.driver.port, password=secrets.redis_password).ping()
    with pytest.raises(redis.AuthenticationError):
        redis.Redis(handle.driver.host, handle.driver.port, password="wrong").ping()
    assert drv.read_secrets(spec) == secrets
    assert drv.server_handle(spec) == handle
    assert drv.start_server(spec, secrets) == handle  # idempotent for the same cluster
    with pytest.raises(ProviderError, match="other credentials"):
        drv.start_server(spec, ClusterSecrets.generate())
    [record] = [r for r in drv.list_clusters() if r.name == spec.name]
    assert record.alive and record.flow_run_id == spec.flow_run_id and len(record.resources) == 3


def test_port_forward_reaches_redis_without_any_public_endpoint(fake_k8s, cluster) -> None:
    drv, spec, secrets = cluster
    assert drv.access == "port-forward"  # the default outside a cluster
    handle = drv.start_server(spec, secrets)
    svc = fake_k8s.store.get("services", "default", f"dp-{spec.name}-redis")
    assert svc["spec"]["type"] == "ClusterIP" and "loadBalancerSourceRanges" not in svc["spec"]
    assert handle.driver.host == "127.0.0.1" and handle.driver.port != drv.redis_port
    clients = [redis.Redis(handle.driver.host, handle.driver.port, password=secrets.redis_password) for _ in range(3)]
    for i, r in enumerate(clients):
        r.set(f"k{i}", b"x" * 200_000)
    assert [len(r.get(f"k{i}")) for i, r in enumerate(clients)] == [200_000] * 3
    opened = fake_k8s.server.forwards.opened
    assert opened >= 3 and fake_k8s.store.requests["GET pods/portforward"] == opened
    assert drv.server_handle(spec) == handle  # same tunnel for the same cluster
    drv.stop_server(spec)
    with pytest.raises(ConnectionRefusedError):  # the local end of the tunnel is closed
        socket.create_connection((handle.driver.host, handle.driver.port), timeout=5)


def test_port_forward_rides_out_rejected_handshakes_and_dropped_streams(fake_k8s, cluster) -> None:
    """Issue 13: a forward dropped under load (`Handshake status 400`) failed the flow 15 s later
    with WorkerLost; the forwarder re-opens it with backoff and the client carries on."""
    drv, spec, secrets = cluster
    handle = drv.start_server(spec, secrets)
    from redis.backoff import NoBackoff
    from redis.retry import Retry

    # One retry: for the pooled connection the drop cut, not for the refused handshakes.
    client = redis.Redis(handle.driver.host, handle.driver.port, password=secrets.redis_password,
                         socket_timeout=30, retry=Retry(NoBackoff(), 1))
    client.set("before", b"1")
    forwards = fake_k8s.server.forwards
    forwards.reject_next = 5
    forwards.drop_all()  # the API server cut the stream; the next 5 handshakes are refused
    assert client.get("before") == b"1"
    assert forwards.rejected == 5
    client.set("after", b"2")
    assert client.get("after") == b"2"
    drv.stop_server(spec)


def test_workers_scale_by_patching_the_job_and_reach_redis_by_service_name(fake_k8s, cluster) -> None:
    drv, spec, secrets = cluster
    handle = drv.start_server(spec, secrets)
    r = redis.Redis(handle.driver.host, handle.driver.port, password=secrets.redis_password)

    drv.set_worker_containers(spec, 2, secrets, handle)
    assert wait_until(lambda: drv.worker_containers(spec).running == 2, 20)
    # Each stand-in found Redis by the Service DNS name and got the key from the Secret.
    assert wait_until(lambda: r.smembers("standin:" + spec.name) == {secrets.signing_key.hex().encode()}, 20)
    job = fake_k8s.store.get("jobs", "default", f"dp-{spec.name}-workers")
    assert job["spec"]["parallelism"] == 2 and "completions" not in job["spec"]
    container = job["spec"]["template"]["spec"]["containers"][0]
    assert container["resources"]["requests"] == {"cpu": "1000m", "memory": "2048Mi"} == container["resources"]["limits"]

    # The fake's JSON deserializes into the client's typed models (their required fields exist).
    api_client = k8s_config.new_client_from_config_dict(fake_k8s.kubeconfig())
    core, batch = k8s_client.CoreV1Api(api_client), k8s_client.BatchV1Api(api_client)
    pods = core.list_namespaced_pod("default", label_selector=f"dockerparallel-cluster={spec.name}").items
    assert {p.status.phase for p in pods} == {"Running"} and all(p.status.container_statuses[0].ready for p in pods)
    assert batch.list_namespaced_job("default").items[0].status.active == 2
    assert core.list_namespaced_service("default").items[0].spec.type == "ClusterIP"
    assert core.read_namespaced_secret(f"dp-{spec.name}", "default").type == "Opaque"

    patches = fake_k8s.store.requests["PATCH jobs"]
    drv.set_worker_containers(spec, 3, secrets, handle)
    assert fake_k8s.store.requests["PATCH jobs"] == patches + 1
    assert wait_until(lambda: drv.worker_containers(spec).running == 3, 20)
    drv.set_worker_containers(spec, 1, secrets, handle)
    assert wait_until(lambda: drv.worker_containers(spec).running == 1, 20)
    assert wait_until(lambda: len(fake_k8s.pids()) == 2, 20)  # server + 1 worker process left
    assert fake_k8s.store.get("jobs", "default", f"dp-{spec.name}-workers")["status"].get("failed") is None


def test_scale_up_after_a_worker_exited_cleanly_uses_a_new_job(fake_k8s, cluster) -> None:
    """A work-queue Job creates no pod once one succeeded (a retired worker exits 0)."""
    drv, spec, secrets = cluster
    handle = drv.start_server(spec, secrets)
    drv.set_worker_containers(spec, 1, secrets, handle)
    first = f"dp-{spec.name}-workers"
    assert wait_until(lambda: drv.worker_containers(spec).running == 1, 20)
    [pod] = fake_k8s.store.list("pods", "default", f"job-name={first}")
    fake_k8s.kubelet.procs[("default", pod["metadata"]["name"])].popen.terminate()  # exits 0? no: -15
    assert wait_until(lambda: fake_k8s.store.get("jobs", "default", first)["status"].get("failed") == 1, 20)
    assert wait_until(lambda: drv.worker_containers(spec).running == 1, 20)  # failure: replaced
    # Now a clean exit: mark the Job's pods succeeded the way a retired worker would.
    [pod] = [p for p in fake_k8s.store.list("pods", "default", f"job-name={first}") if p["status"]["phase"] == "Running"]
    key = ("default", pod["metadata"]["name"])
    fake_k8s.kubelet.procs[key].popen.kill()
    fake_k8s.kubelet.procs[key].popen.wait()
    fake_k8s.kubelet.procs[key].popen.returncode = 0  # the kubelet reads the exit code from here
    assert wait_until(lambda: fake_k8s.store.get("jobs", "default", first)["status"].get("succeeded") == 1, 20)
    assert wait_until(lambda: drv.worker_containers(spec).running == 0, 20)

    drv.set_worker_containers(spec, 2, secrets, handle)
    assert wait_until(lambda: drv.worker_containers(spec).running == 2, 20)
    jobs = {j["metadata"]["name"]: j for j in fake_k8s.store.list("jobs", "default", f"dockerparallel-cluster={spec.name}")}
    assert set(jobs) == {f"{first}-1"} and jobs[f"{first}-1"]["spec"]["parallelism"] == 2


def test_crash_looping_workers_stop_at_the_backoff_limit_with_the_reason(fake_k8s) -> None:
    fake_k8s.kubelet.rewrite = lambda c: ["sh", "-c", "exit 1"] if "worker" in c[-1] else rewrite_startup(c)
    drv, spec, secrets = make_driver(fake_k8s, backoff_limit=2), make_spec(), ClusterSecrets.generate()
    try:
        handle = drv.start_server(spec, secrets)
        drv.set_worker_containers(spec, 1, secrets, handle)
        job = f"dp-{spec.name}-workers"
        assert wait_until(lambda: fake_k8s.store.get("jobs", "default", job)["status"].get("conditions"), 20)
        assert fake_k8s.store.get("jobs", "default", job)["status"]["failed"] == 3
        with pytest.raises(ProviderError, match="keep failing \\(BackoffLimitExceeded\\).*logs"):
            drv.set_worker_containers(spec, 1, secrets, handle)
        assert len(fake_k8s.store.list("jobs", "default")) == 1  # no new generation
    finally:
        drv.stop(spec)


def test_worker_numbers_count_pending_pods_as_initializing(fake_k8s, driver: KubernetesDriver) -> None:
    spec = make_spec()
    labels = {"dockerparallel-cluster": spec.name, "dockerparallel-role": "worker",
              "app.kubernetes.io/managed-by": "prefect-dockerparallel"}
    for i, (phase, ready) in enumerate([("Running", "True"), ("Running", "False"), ("Pending", "False"), ("Succeeded", "False")]):
        fake_k8s.store.create("pods", "default", {"metadata": {"name": f"w{i}", "labels": labels},
                                                    "spec": {"nodeName": "other-node", "containers": []}})
        fake_k8s.store.update("pods", "default", f"w{i}", lambda o, p=phase, r=ready: {
            **o, "status": {"phase": p, "conditions": [{"type": "Ready", "status": r}]}})
    counts = driver.worker_containers(spec)
    assert (counts.running, counts.initializing) == (1, 2)
    driver.cleanup(spec.name)


def test_stop_deletes_every_labelled_object_and_process(fake_k8s, cluster) -> None:
    drv, spec, secrets = cluster
    handle = drv.start_server(spec, secrets)
    drv.set_worker_containers(spec, 2, secrets, handle)
    assert wait_until(lambda: drv.worker_containers(spec).running == 2, 20)
    deletes = {k: v for k, v in fake_k8s.store.requests.items() if k.startswith("DELETE")}
    assert not deletes
    drv.stop(spec)
    assert wait_until(lambda: not fake_k8s.labelled(f"dockerparallel-cluster={spec.name}"), 20), fake_k8s.labelled("")
    assert wait_until(lambda: not fake_k8s.pids(), 20)
    assert fake_k8s.store.requests["DELETE services"] == 1  # explicitly, not only by cascade
    assert drv.server_handle(spec) is None and drv.read_secrets(spec) is None


def test_deleting_the_parent_secret_cascades_to_everything(fake_k8s, cluster) -> None:
    drv, spec, secrets = cluster
    handle = drv.start_server(spec, secrets)
    drv.set_worker_containers(spec, 2, secrets, handle)
    assert wait_until(lambda: drv.worker_containers(spec).running == 2, 20)
    api = k8s_client.CoreV1Api(k8s_config.new_client_from_config_dict(fake_k8s.kubeconfig()))
    api.delete_namespaced_secret(f"dp-{spec.name}", "default", propagation_policy="Background")
    assert wait_until(lambda: not fake_k8s.labelled(f"dockerparallel-cluster={spec.name}"), 20), fake_k8s.labelled("")
    assert wait_until(lambda: not fake_k8s.pids(), 20)


def test_server_failure_is_reported_with_its_log(fake_k8s) -> None:
    def failing(command: list[str]) -> list[str]:
        return ["sh", "-c", "echo redis-server: cannot allocate memory; exit 3"]

    fake_k8s.kubelet.rewrite = failing
    drv, spec = make_driver(fake_k8s), make_spec()
    try:
        with pytest.raises(ProviderError, match=r"exited with code 3(.|\n)*cannot allocate memory"):
            drv.start_server(spec, ClusterSecrets.generate())
        # A failed start removes what it created.
        assert wait_until(lambda: not fake_k8s.labelled(f"dockerparallel-cluster={spec.name}"), 20)
    finally:
        drv.stop(spec)


@pytest.mark.parametrize(
    "command, fix",
    [("kubelogin", "az aks install-cli"), ("gke-gcloud-auth-plugin", "gcloud components install")],
)
def test_kubeconfig_needing_a_missing_exec_plugin_is_rejected_before_any_request(
    fake_k8s, command, fix, tmp_path, monkeypatch
) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))  # this machine may have the plugin installed
    user = {"exec": {"apiVersion": "client.authentication.k8s.io/v1beta1", "command": command,
                     "args": ["get-token"], "interactiveMode": "Never"}}
    drv = make_driver(fake_k8s, kubeconfig=fake_k8s.kubeconfig(user=user))
    spec = make_spec()
    with pytest.raises(ProviderError, match=f"{command}(.|\n)*{fix}") as err:
        drv.validate(spec)
    assert "nothing was created" in str(err.value)
    with pytest.raises(ProviderError):
        drv.start_server(spec, ClusterSecrets.generate())
    assert sum(fake_k8s.store.requests.values()) == 0


def test_an_installed_exec_plugin_is_used(fake_k8s, tmp_path, monkeypatch) -> None:
    plugin = tmp_path / "fake-auth-plugin"
    cred = {"apiVersion": "client.authentication.k8s.io/v1beta1", "kind": "ExecCredential",
            "status": {"token": fake_k8s.token}}
    plugin.write_text(f"#!/bin/sh\necho '{json.dumps(cred)}'\n")
    plugin.chmod(0o755)
    monkeypatch.setenv("PATH", f"{tmp_path}:{__import__('os').environ['PATH']}")
    user = {"exec": {"apiVersion": "client.authentication.k8s.io/v1beta1", "command": "fake-auth-plugin"}}
    drv = make_driver(fake_k8s, kubeconfig=fake_k8s.kubeconfig(user=user))
    drv.validate(make_spec())
    assert drv.list_clusters() == []


def test_rejected_credentials_and_missing_rbac_are_named(fake_k8s) -> None:
    drv = make_driver(fake_k8s, kubeconfig=fake_k8s.kubeconfig(user={"token": "stale"}))
    with pytest.raises(ProviderError, match="HTTP 401.*credentials rejected"):
        drv.start_server(make_spec(), ClusterSecrets.generate())
    assert writes(fake_k8s) == 0 or fake_k8s.store.list("secrets", None) == []


def test_an_unreachable_api_server_is_named() -> None:
    from k8s_fixtures import free_port

    port = free_port()
    config = {"apiVersion": "v1", "kind": "Config", "current-context": "x",
              "clusters": [{"name": "x", "cluster": {"server": f"http://127.0.0.1:{port}"}}],
              "contexts": [{"name": "x", "context": {"cluster": "x", "user": "u"}}],
              "users": [{"name": "u", "user": {"token": "t"}}]}
    with pytest.raises(ProviderError, match=f"API at http://127.0.0.1:{port} unreachable"):
        KubernetesDriver(kubeconfig=config).list_clusters()
