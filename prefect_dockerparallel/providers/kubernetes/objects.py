"""Kubernetes manifests of one cluster, as plain dicts (no kubernetes import: testable alone).

Object graph of cluster `x` in one namespace:

    Secret dp-x            parent: redis password + signing key; every other object is owned by it
    Service dp-x-redis     ClusterIP (workers, in-cluster driver) or LoadBalancer (outside driver)
    Pod dp-x-server        redis-server under the watchdog
    Job dp-x-workers[-g]   work-queue Job; parallelism = number of worker pods

Deleting the Secret with propagationPolicy=Background removes everything (the Job's pods via
the Job). Nothing secret is inline: env entries of secret variables are `secretKeyRef`s.
"""

from __future__ import annotations

import re
from typing import Any

from ...protocol import keys as K
from ...specs import ClusterSecrets, ClusterSpec

MANAGED_BY = "app.kubernetes.io/managed-by"
MANAGER = "prefect-dockerparallel"
CLUSTER_LABEL = "dockerparallel-cluster"
FLOW_RUN_LABEL = "dockerparallel-flow-run"
ROLE_LABEL = "dockerparallel-role"
GENERATION_LABEL = "dockerparallel-generation"
SECRET_KEYS = {K.ENV_REDIS_PASSWORD: "redis-password", K.ENV_SIGNING_KEY: "signing-key",
               K.ENV_REDIS_TLS_KEY: "redis-tls-key"}
CA_KEY = "redis-ca"  # the cluster CA (public) kept in the Secret: how a reconnecting driver verifies
CERT_KEY = "redis-tls-cert"  # the server certificate (public): a replaced server pod gets it back
_LABEL_VALUE = re.compile(r"^(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?$")
_LABEL_KEY_NAME = re.compile(r"^([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]$")


def secret_name(spec: ClusterSpec) -> str:
    return f"dp-{spec.name}"


def service_name(spec: ClusterSpec) -> str:
    return f"dp-{spec.name}-redis"


def server_pod_name(spec: ClusterSpec) -> str:
    return f"dp-{spec.name}-server"


def job_name(spec: ClusterSpec, generation: int) -> str:
    return f"dp-{spec.name}-workers" + (f"-{generation}" if generation else "")


def service_dns(spec: ClusterSpec, namespace: str) -> str:
    """Cluster DNS name workers use; `<svc>.<ns>.svc` resolves under any cluster domain."""
    return f"{service_name(spec)}.{namespace}.svc"


def validate_labels(labels: dict[str, str]) -> None:
    """Kubernetes rejects bad labels only at create time; fail before anything exists."""
    for key, value in labels.items():
        prefix, _, name = key.rpartition("/")
        if len(name) > 63 or not _LABEL_KEY_NAME.fullmatch(name) or len(prefix) > 253:
            raise ValueError(f"tag key {key!r} is not a valid Kubernetes label key")
        if len(value) > 63 or not _LABEL_VALUE.fullmatch(value):
            raise ValueError(
                f"tag {key}={value!r} is not a valid Kubernetes label value: use at most 63 "
                "letters, digits, '-', '_' or '.', starting and ending with a letter or digit"
            )


def labels(spec: ClusterSpec, role: str) -> dict[str, str]:
    out = dict(spec.labels)
    out[MANAGED_BY] = MANAGER
    out[ROLE_LABEL] = role
    return out


def cluster_selector(cluster: str | None = None) -> str:
    """Label selector of one cluster's objects, or of every cluster this package made."""
    base = f"{MANAGED_BY}={MANAGER}"
    return f"{base},{CLUSTER_LABEL}={cluster}" if cluster else f"{base},{CLUSTER_LABEL}"


def owner_ref(parent: dict[str, Any]) -> list[dict[str, Any]]:
    """ownerReferences pointing at the parent Secret (`parent` is its API dict: kind, name, uid)."""
    return [
        {
            "apiVersion": "v1",
            "kind": "Secret",
            "name": parent["name"],
            "uid": parent["uid"],
            "blockOwnerDeletion": False,
        }
    ]


def _meta(name: str, lbls: dict[str, str], owner: dict[str, Any] | None) -> dict[str, Any]:
    meta: dict[str, Any] = {"name": name, "labels": lbls}
    if owner:
        meta["ownerReferences"] = owner_ref(owner)
    return meta


def secret(spec: ClusterSpec, secrets: ClusterSecrets, tls: Any = None) -> dict[str, Any]:
    """The cluster's Secret: password, signing key and (with TLS) the server's key and the CA."""
    data = {
        SECRET_KEYS[K.ENV_REDIS_PASSWORD]: secrets.redis_password,
        SECRET_KEYS[K.ENV_SIGNING_KEY]: secrets.signing_key.hex(),
    }
    if tls is not None:  # a providers.tls.ClusterTLS
        data.update({SECRET_KEYS[K.ENV_REDIS_TLS_KEY]: tls.key_pem, CA_KEY: tls.ca_pem, CERT_KEY: tls.cert_pem})
    return {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": _meta(secret_name(spec), labels(spec, "secret"), None),
        "type": "Opaque",
        "stringData": data,
    }


def tls_names(spec: ClusterSpec, namespace: str) -> list[str]:
    """Every name clients use for the server: the Service in its DNS forms (127.0.0.1, for a
    port-forward, is in every certificate)."""
    svc = service_name(spec)
    return [service_dns(spec, namespace), f"{service_dns(spec, namespace)}.cluster.local", f"{svc}.{namespace}", svc]


def env_list(spec: ClusterSpec, env: dict[str, str]) -> list[dict[str, Any]]:
    """Pod env; secret variables become references to the cluster Secret, never values."""
    out: list[dict[str, Any]] = []
    for key, value in env.items():
        if key in SECRET_KEYS:
            ref = {"name": secret_name(spec), "key": SECRET_KEYS[key]}
            out.append({"name": key, "valueFrom": {"secretKeyRef": ref}})
        elif key in K.SECRET_ENV_NAMES:
            raise ValueError(f"secret variable {key} has no Secret key")  # keep the invariant
        else:
            out.append({"name": key, "value": value})
    return out


def _cpu(units: int) -> str:
    """ECS-style CPU units (1024 = 1 vCPU) to millicores."""
    return f"{max(1, round(units * 1000 / 1024))}m"


def resources(cpu_units: int, memory_mb: int) -> dict[str, Any]:
    """Requests equal limits: Guaranteed QoS, so a busy node does not evict a worker first."""
    amount = {"cpu": _cpu(cpu_units), "memory": f"{memory_mb}Mi"}
    return {"requests": dict(amount), "limits": dict(amount)}


def _pod_spec(
    container: dict[str, Any], restart: str, options: dict[str, Any]
) -> dict[str, Any]:
    spec: dict[str, Any] = {
        "restartPolicy": restart,
        "containers": [container],
        # Workers never talk to the API server, and Service env vars would only add noise.
        "automountServiceAccountToken": False,
        "enableServiceLinks": False,
        "terminationGracePeriodSeconds": 10,
        # The pod's pause process becomes PID 1: without it the start script (`sh -c "pip
        # install ... && exec python ..."`) is PID 1, which the kernel shields from SIGTERM, so a
        # pod deleted while installing lingered until the grace period's SIGKILL. It also reaps
        # zombies, as ECS's initProcessEnabled does.
        "shareProcessNamespace": True,
    }
    if options.get("service_account_name"):
        spec["serviceAccountName"] = options["service_account_name"]
    if options.get("image_pull_secrets"):
        spec["imagePullSecrets"] = [{"name": n} for n in options["image_pull_secrets"]]
    if options.get("node_selector"):
        spec["nodeSelector"] = dict(options["node_selector"])
    return spec


def server_pod(
    spec: ClusterSpec, env: dict[str, str], port: int, owner: dict[str, Any], options: dict[str, Any]
) -> dict[str, Any]:
    container = {
        "name": "server",
        "image": spec.container.server_image or spec.container.image,
        "command": ["sh", "-c", spec.container.startup_script("server")],
        "env": env_list(spec, env),
        "ports": [{"name": "redis", "containerPort": port, "protocol": "TCP"}],
        "resources": resources(spec.server_cpu, spec.server_memory),
        "readinessProbe": {"tcpSocket": {"port": port}, "periodSeconds": 2, "failureThreshold": 3},
    }
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": _meta(server_pod_name(spec), labels(spec, "server"), owner),
        # Never: a server that exits (dead-man's switch) must stay down so billing stops.
        "spec": _pod_spec(container, "Never", options),
    }


def service(
    spec: ClusterSpec,
    port: int,
    owner: dict[str, Any],
    *,
    load_balancer: bool,
    source_ranges: list[str],
    annotations: dict[str, str],
) -> dict[str, Any]:
    sel = {CLUSTER_LABEL: spec.name, ROLE_LABEL: "server", MANAGED_BY: MANAGER}
    body: dict[str, Any] = {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": _meta(service_name(spec), labels(spec, "server"), owner),
        "spec": {
            "type": "ClusterIP",
            "selector": sel,
            "ports": [{"name": "redis", "port": port, "targetPort": port, "protocol": "TCP"}],
        },
    }
    if load_balancer:
        if not source_ranges:
            raise ValueError("a LoadBalancer Service needs loadBalancerSourceRanges")
        body["spec"]["type"] = "LoadBalancer"
        body["spec"]["loadBalancerSourceRanges"] = list(source_ranges)
        if annotations:
            body["metadata"]["annotations"] = dict(annotations)
    return body


def worker_job(
    spec: ClusterSpec,
    env: dict[str, str],
    parallelism: int,
    generation: int,
    owner: dict[str, Any],
    options: dict[str, Any],
) -> dict[str, Any]:
    """Work-queue Job (completions unset): pods run until the queue tells them to exit."""
    slots = spec.container.workers_per_container
    container = {
        "name": "worker",
        "image": spec.container.image,
        "command": ["sh", "-c", spec.container.startup_script("worker")],
        "env": env_list(spec, env),
        "resources": resources(spec.worker_cpu * slots, spec.worker_memory * slots),
    }
    pod_labels = labels(spec, "worker")
    pod_labels[GENERATION_LABEL] = str(generation)
    return {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": _meta(job_name(spec, generation), dict(pod_labels), owner),
        "spec": {
            "parallelism": parallelism,
            "backoffLimit": int(options.get("backoff_limit", 20)),
            "template": {
                "metadata": {"labels": pod_labels},
                "spec": _pod_spec(container, "Never", options),
            },
        },
    }
