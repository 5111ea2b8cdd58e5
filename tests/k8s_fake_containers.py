"""The fake kubelet's container mode: a pod becomes a real container (see k8s_fake_kubelet.py).

What a container runtime does for the kubelet: the pod's first container with its image,
`command` as the entrypoint and `args` as the command, its env (secretKeyRef already resolved
by the kubelet), its limits, the pod name as hostname, `shareProcessNamespace` as an init
process, on the fake cluster's Docker network with the DNS names of the Services selecting the
pod as aliases, and each containerPort published on 127.0.0.1 (what the LoadBalancer address
and port-forward reach).
"""

from __future__ import annotations

from typing import Any

from docker_runtime import ContainerRequest, ContainerStartError, DockerRuntime
from k8s_fake_api import now


def start_pod_container(kubelet: Any, pod: dict[str, Any], env: dict[str, str]) -> None:
    """Start the pod's container and set its status, as the kubelet's container runtime would."""
    from k8s_fake_kubelet import Proc, _cstatus

    meta, container = pod["metadata"], pod["spec"]["containers"][0]
    ns, name = meta["namespace"], meta["name"]
    if kubelet._network is None:
        kubelet._network = kubelet.runtime.network()
    labels = meta.get("labels") or {}
    services = [s["metadata"]["name"] for s in kubelet.store.list("services", ns)
                if s["spec"].get("selector") and all(labels.get(k) == v for k, v in s["spec"]["selector"].items())]
    request = k8s_pod_request(kubelet.runtime, pod, env, kubelet._network.name, services)
    try:
        workload = kubelet.runtime.start(request)
    except ContainerStartError as exc:  # a real kubelet retries; its back-off is what the API shows
        reason = "ImagePullBackOff" if exc.reason == "CannotPullContainerError" else "CreateContainerError"
        waiting = {"reason": reason, "message": exc.message}
        kubelet._set_status(ns, name, {"containerStatuses": [_cstatus(container, {"waiting": waiting})]})
        kubelet._unstartable.add((ns, name))
        return
    probe = ((container.get("readinessProbe") or {}).get("tcpSocket") or {}).get("port")
    kubelet.procs[(ns, name)] = Proc(None, "", int(probe) if probe else None, workload=workload)
    kubelet.store.logs[(ns, name)] = workload.logs
    kubelet._set_status(ns, name, {
        "phase": "Running", "podIP": workload.ip, "hostIP": "127.0.0.1", "startTime": now(),
        "conditions": [{"type": "PodScheduled", "status": "True"}, {"type": "Ready", "status": "False"}],
        "containerStatuses": [_cstatus(container, {"running": {"startedAt": now()}})],
    })


def k8s_quantity_cpus(value: str | None) -> float | None:
    if not value:
        return None
    return int(value[:-1]) / 1000 if value.endswith("m") else float(value)


def k8s_quantity_mb(value: str | None) -> int | None:
    if not value:
        return None
    units = {"Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "K": 10**3, "M": 10**6, "G": 10**9}
    for suffix, factor in units.items():
        if value.endswith(suffix):
            return max(6, int(float(value[: -len(suffix)]) * factor) // 2**20)
    return max(6, int(value) // 2**20)


def k8s_pod_request(
    runtime: DockerRuntime, pod: dict[str, Any], env: dict[str, str], network: str, services: list[str]
) -> ContainerRequest:
    """A pod's first container as Docker runs it (what a container runtime does for the kubelet).

    `services`: names of the Services selecting the pod, whose DNS names become aliases.
    """
    meta, container = pod["metadata"], pod["spec"]["containers"][0]
    ns, name = meta["namespace"], meta["name"]
    limits = (container.get("resources") or {}).get("limits") or {}
    aliases = [a for svc in services for a in (svc, f"{svc}.{ns}", f"{svc}.{ns}.svc", f"{svc}.{ns}.svc.cluster.local")]
    ports = [int(p["containerPort"]) for p in container.get("ports") or []]
    # Kubernetes: `command` replaces the image's ENTRYPOINT, `args` its CMD.
    return ContainerRequest(
        image=container["image"],
        name=runtime.name(f"k8s-{name[:40]}"),
        entrypoint=container.get("command") or None,
        command=container.get("args") or None,
        env=env,
        hostname=name[:63],
        # shareProcessNamespace: the pause process is PID 1 and the main process gets SIGTERM
        # like any process; Docker's --init (tini as PID 1) has the same effect.
        init=bool(pod["spec"].get("shareProcessNamespace")),
        cpus=k8s_quantity_cpus(limits.get("cpu")),
        memory_mb=k8s_quantity_mb(limits.get("memory")),
        stop_timeout=int(pod["spec"].get("terminationGracePeriodSeconds", 30)),
        network=network,
        aliases=aliases,
        publish={p: p for p in ports},  # like a hostPort on the loopback: LoadBalancer / port-forward
        labels={"dp-fake": "kubernetes", "dp-fake-pod": f"{ns}/{name}"[:200]},
    )
