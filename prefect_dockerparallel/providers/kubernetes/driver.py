"""KubernetesDriver: one cluster per flow run in a Kubernetes namespace (AKS, EKS, GKE, kind...).

Redis runs in a server Pod behind a Service; workers are pods of a work-queue Job whose
`parallelism` is the number of worker containers. Workers reach Redis by the Service's cluster
DNS name. The driver (flow runner) reaches it in one of three ways:

- "port-forward" (default outside a cluster): a local port tunnelled to the server pod through the
  API server (TLS, kubeconfig auth, no public endpoint; needs `pods/portforward` RBAC);
- "loadbalancer": the Service becomes a LoadBalancer open only to `loadBalancerSourceRanges`
  (this machine's egress IP by default) — more throughput, but a public IP, and Redis traffic is
  not encrypted on the way;
- "direct" (default in a cluster): the Service DNS name, as the workers do.

The object graph and why it is shaped so is in `objects.py`. This package is the only one
importing `kubernetes` (in `ops.py` and `auth.py`): the import happens on first API use.
"""

from __future__ import annotations

import ipaddress
import logging
import os
import threading
import time
from typing import Any, Callable

from . import objects as O
from .azure import AzureCredentials
from ..base import REDIS_PORT, Provider, ProviderError, server_env, worker_env
from .. import tls as tls_mod
from . import security
from ..readiness import poll, redis_answers
from .forward import PortForwarder
from .inventory import WorkerFailures, plan_workers, summarize
from .ops import Api, pod_failure, pod_ready, wait_server_pod
from ...specs import (
    ClusterRecord,
    ClusterSecrets,
    ClusterSpec,
    ContainerCounts,
    Endpoint,
    ServerHandle,
)

log = logging.getLogger(__name__)
ACCESS_MODES = ("auto", "port-forward", "loadbalancer", "direct")
DEFAULT_EGRESS_IP_URL = "https://api.ipify.org"


class KubernetesDriver(Provider):
    """Provider for any Kubernetes API; takes plain values (the AKSProvider block builds it)."""

    kind = "aks"

    def __init__(
        self,
        *,
        namespace: str = "default",
        kubeconfig: str | dict[str, Any] | None = None,
        context: str | None = None,
        in_cluster: bool = False,
        azure: AzureCredentials | None = None,
        access: str = "auto",
        source_ranges: list[str] | tuple[str, ...] | None = None,
        egress_ip_url: str = DEFAULT_EGRESS_IP_URL,
        redis_port: int = REDIS_PORT,
        service_annotations: dict[str, str] | None = None,
        service_account_name: str | None = None,
        image_pull_secrets: list[str] | tuple[str, ...] = (),
        node_selector: dict[str, str] | None = None,
        backoff_limit: int = 20,
        start_timeout: float = 600.0,
        poll_interval: float = 1.0,
        tls: bool = True,
        tls_lifetime: float = tls_mod.DEFAULT_LIFETIME,
    ) -> None:
        if access not in ACCESS_MODES:
            raise ValueError(f"access={access!r} is invalid: choose one of {ACCESS_MODES}")
        if not 1 <= redis_port <= 65535:
            raise ValueError(f"redis_port={redis_port} is invalid: use 1-65535")
        self.namespace = namespace
        self.access = ("direct" if in_cluster else "port-forward") if access == "auto" else access
        self.source_ranges = list(source_ranges) if source_ranges is not None else None
        self.egress_ip_url = egress_ip_url
        self.redis_port = redis_port
        self.service_annotations = dict(service_annotations or {})
        self.options = {
            "service_account_name": service_account_name,
            "image_pull_secrets": list(image_pull_secrets),
            "node_selector": dict(node_selector or {}),
            "backoff_limit": backoff_limit,
        }
        self.start_timeout = start_timeout
        self.poll_interval = poll_interval
        self.tls = tls
        self.tls_lifetime = tls_lifetime
        self.api = Api(kubeconfig=kubeconfig, context=context, in_cluster=in_cluster, azure=azure)
        self._forwards: dict[str, PortForwarder] = {}  # cluster name -> local port to its Redis
        self._forwards_lock = threading.Lock()
        self._failures = WorkerFailures()

    def __repr__(self) -> str:
        return f"KubernetesDriver(namespace={self.namespace!r}, access={self.access!r})"

    @property
    def is_remote(self) -> bool:
        return True

    # -- checks before anything is created -------------------------------------------------
    def validate(self, spec: ClusterSpec) -> None:
        O.validate_labels(O.labels(spec, "server"))
        for rng in self.source_ranges or []:
            try:
                ipaddress.ip_network(rng, strict=False)
            except ValueError:
                raise ValueError(f"source range {rng!r} is not a CIDR such as 203.0.113.7/32") from None
        self.api.ensure()  # rejects unusable kubeconfigs (missing exec plugins) up front

    # -- server --------------------------------------------------------------------------
    def start_server(self, spec: ClusterSpec, secrets: ClusterSecrets) -> ServerHandle:
        """Create (or find) the Secret, Service and server pod; wait until Redis answers.

        A start that fails after creating the cluster's Secret deletes what it created, so a
        failed flow run leaves nothing to pay for.
        """
        self.validate(spec)
        lb = self.access == "loadbalancer"
        ranges = security.source_ranges(self.source_ranges, self.egress_ip_url) if lb else []  # before creating anything
        tls = security.certificate(spec, self.namespace, self.tls, self.tls_lifetime)
        if lb and not tls:
            log.warning(
                "cluster %s: access='loadbalancer' with tls=False sends Redis traffic (password, task "
                "payloads with the Prefect API key) unencrypted to a public IP limited to %s",
                spec.name, ", ".join(ranges),
            )
        parent, created = self._ensure_secret(spec, secrets, tls)
        try:
            svc = O.service(
                spec, self.redis_port, parent, load_balancer=lb, source_ranges=ranges,
                annotations=self.service_annotations,
            )
            self.api.create("services", self.namespace, svc, exist_ok=True)
            pod_name = O.server_pod_name(spec)
            existing = self.api.get("pods", self.namespace, pod_name)
            if existing is not None and existing["status"].get("phase") in ("Succeeded", "Failed"):
                log.info("server pod %s had exited; replacing it", pod_name)
                self.api.delete("pods", self.namespace, pod_name)
                self._wait(lambda: self.api.get("pods", self.namespace, pod_name) is None, 60, "old server pod to go")
                existing = None
            if existing is None:
                stored = security.stored_tls(self.api, self.namespace, spec)  # this call's, or that of the cluster's existing Secret
                env = server_env(spec, secrets, port=self.redis_port, tls=stored)
                body = O.server_pod(spec, env, self.redis_port, parent, self.options)
                self.api.create("pods", self.namespace, body, exist_ok=True)
            deadline = time.monotonic() + self.start_timeout
            wait_server_pod(self.api, self.namespace, pod_name, deadline, self.poll_interval)
            handle = self._handle(spec, deadline)
            self._wait_redis(handle, secrets.redis_password, deadline)
        except BaseException:
            if created:
                try:
                    self.stop(spec)
                except Exception as exc:  # noqa: BLE001 - the original error matters more
                    log.warning("could not remove cluster %s after a failed start: %s", spec.name, exc)
            raise
        log.info("cluster %s: Redis reachable at %s (workers use %s)", spec.name, handle.driver, handle.workers)
        return handle

    def stop_server(self, spec: ClusterSpec) -> None:
        self._close_forward(spec)
        self.api.delete("pods", self.namespace, O.server_pod_name(spec))
        self.api.delete("services", self.namespace, O.service_name(spec))

    def server_handle(self, spec: ClusterSpec) -> ServerHandle | None:
        pod = self.api.get("pods", self.namespace, O.server_pod_name(spec))
        if pod is None or not pod_ready(pod):
            return None
        try:
            return self._handle(spec, time.monotonic() + 5)
        except ProviderError:
            return None

    def read_secrets(self, spec: ClusterSpec) -> ClusterSecrets | None:
        return security.stored_secrets(self.api, self.namespace, spec)

    # -- workers -------------------------------------------------------------------------
    def set_worker_containers(
        self, spec: ClusterSpec, count: int, secrets: ClusterSecrets, server: ServerHandle
    ) -> None:
        """Patch the Job's parallelism; a Job that stopped making pods is replaced.

        A work-queue Job makes no new pod once one pod succeeded (a worker retired on scale
        down), so scaling up after that needs a new Job generation. Pods of older generations
        keep running and count toward `count`.
        """
        jobs = self.api.list("jobs", self.namespace, O.cluster_selector(spec.name) + f",{O.ROLE_LABEL}=worker")
        plan = plan_workers(jobs, count)
        if plan.failed:
            raise ProviderError(
                f"worker pods of cluster {spec.name} keep failing ({plan.failed}); see "
                f"`prefect-dockerparallel logs {spec.name} --provider aks`"
            )
        for name in plan.deletes:
            self.api.delete("jobs", self.namespace, name)
        for name, parallelism in plan.patches:
            self.api.patch("jobs", self.namespace, name, {"spec": {"parallelism": parallelism}})
        if plan.create:
            tls_mod.check_not_expired(spec.name, server.ca_pem)  # a new worker could not verify the server
            parent = self._parent(spec)
            env = worker_env(spec, secrets, server.workers, tls=server.tls, ca_pem=server.ca_pem)
            body = O.worker_job(spec, env, plan.create, plan.generation, parent, self.options)
            self.api.create("jobs", self.namespace, body)

    def worker_containers(self, spec: ClusterSpec) -> ContainerCounts:
        running = initializing = 0
        selector = O.cluster_selector(spec.name) + f",{O.ROLE_LABEL}=worker"
        for pod in self.api.list("pods", self.namespace, selector):
            if pod["metadata"].get("deletionTimestamp"):
                continue
            phase = pod["status"].get("phase")
            if phase == "Running" and pod_ready(pod):
                running += 1
            elif phase in ("Pending", "Running"):
                initializing += 1
            elif phase == "Failed":
                self._report_failure(spec, pod)
        return ContainerCounts(running=running, initializing=initializing)

    def _report_failure(self, spec: ClusterSpec, pod: dict[str, Any]) -> None:
        """Say once why a worker pod failed (OOMKilled, exit code), as ECS reports stoppedReason."""
        new = self._failures.add(spec.name, pod["metadata"]["name"], pod_failure(pod) or "pod Failed")
        if new:
            log.warning("cluster %s: worker pod %s", spec.name, new)

    def lost_worker_reason(self, spec: ClusterSpec, worker_id: str) -> str | None:
        """Why a lost worker's pod ended (OOMKilled, exit code): a worker id starts with its
        container's hostname, the pod name (cut at 40 characters)."""
        host = worker_id.rsplit("-", 2)[0]
        selector = O.cluster_selector(spec.name) + f",{O.ROLE_LABEL}=worker"
        for pod in self.api.list("pods", self.namespace, selector):
            if pod["metadata"]["name"][:40] == host and pod["status"].get("phase") == "Failed":
                self._report_failure(spec, pod)
        why = self._failures.of_host(spec.name, host)
        return f"worker pod {why}" if why else None

    def worker_failures(self, spec: ClusterSpec) -> list[str]:
        """Why worker pods of the cluster failed (seen by `worker_containers`), oldest first."""
        return self._failures.of(spec.name)

    # -- teardown, leftovers, logs ---------------------------------------------------------
    def stop(self, spec: ClusterSpec) -> None:
        self._close_forward(spec)
        self._failures.forget(spec.name)
        removed = self.cleanup(spec.name)
        log.info("cluster %s: deleted %d Kubernetes objects", spec.name, len(removed))

    def cleanup(self, cluster_name: str) -> list[str]:
        """Delete every object with the cluster's label; Jobs first so no pod is re-created."""
        removed: list[str] = []
        selector = O.cluster_selector(cluster_name)
        for kind in ("jobs", "services", "pods", "secrets"):
            for obj in self.api.list(kind, self.namespace, selector):
                name = obj["metadata"]["name"]
                if kind == "pods" and obj["metadata"].get("ownerReferences"):
                    owners = {r.get("kind") for r in obj["metadata"]["ownerReferences"]}
                    if "Job" in owners:
                        continue  # the Job's deletion removes it (counted once, via the Job)
                if self.api.delete(kind, self.namespace, name):
                    removed.append(f"{obj['kind']}/{name}")
        return removed

    def list_clusters(self) -> list[ClusterRecord]:
        objects = []
        for kind in ("secrets", "services", "jobs", "pods"):
            objects += self.api.list(kind, self.namespace, O.cluster_selector())
        return summarize(objects, self.kind)

    def logs(self, spec: ClusterSpec, tail: int = 200) -> str:
        parts = []
        pods = self.api.list("pods", self.namespace, O.cluster_selector(spec.name))
        pods.sort(key=lambda p: (p["metadata"]["labels"].get(O.ROLE_LABEL) != "server", p["metadata"]["name"]))
        for pod in pods:
            name = pod["metadata"]["name"]
            text = self.api.pod_log(self.namespace, name, tail)
            parts.append(f"==> {name} ({pod['status'].get('phase')}) <==\n{text.rstrip()}")
        return "\n".join(parts)

    # -- helpers -------------------------------------------------------------------------
    def _close_forward(self, spec: ClusterSpec) -> None:
        with self._forwards_lock:
            fwd = self._forwards.pop(spec.name, None)
        if fwd is not None:
            fwd.close()

    def _ensure_secret(
        self, spec: ClusterSpec, secrets: ClusterSecrets, tls: tls_mod.ClusterTLS | None = None
    ) -> tuple[dict[str, Any], bool]:
        """(parent reference, whether this call created it)."""
        body = O.secret(spec, secrets, tls)
        created = self.api.create("secrets", self.namespace, body, exist_ok=True)
        if created is None:  # existed: same cluster (idempotent start) only with the same secrets
            found = self.read_secrets(spec)
            if found != secrets:
                raise ProviderError(
                    f"cluster {spec.name!r} already exists in namespace {self.namespace!r} with other "
                    "credentials: reconnect to it, choose another name, or run "
                    f"`prefect-dockerparallel clusters cleanup --provider aks --name {spec.name}`"
                )
        return self._parent(spec), created is not None

    def _parent(self, spec: ClusterSpec) -> dict[str, Any]:
        obj = self.api.get("secrets", self.namespace, O.secret_name(spec))
        if obj is None:
            raise ProviderError(f"the Secret of cluster {spec.name} is gone: the cluster was stopped")
        return {"name": obj["metadata"]["name"], "uid": obj["metadata"]["uid"]}

    def _handle(self, spec: ClusterSpec, deadline: float) -> ServerHandle:
        workers = Endpoint(O.service_dns(spec, self.namespace), self.redis_port)
        stored = security.stored_tls(self.api, self.namespace, spec)
        ca = stored.ca_pem if stored else None
        if self.access == "direct":
            return ServerHandle(driver=workers, workers=workers, tls=bool(ca), ca_pem=ca)
        if self.access == "port-forward":
            with self._forwards_lock:
                fwd = self._forwards.get(spec.name)
                if fwd is None or not fwd.alive:
                    pod, port, ns = O.server_pod_name(spec), self.redis_port, self.namespace
                    fwd = PortForwarder(lambda: self.api.portforward(ns, pod, port), f"{ns}/{pod}:{port}")
                    self._forwards[spec.name] = fwd
            # TLS inside the tunnel: 127.0.0.1 is in every cluster certificate
            return ServerHandle(driver=Endpoint("127.0.0.1", fwd.port), workers=workers, tls=bool(ca), ca_pem=ca)
        name = O.service_name(spec)
        host: list[str] = []

        def ingress() -> bool:
            svc = self.api.get("services", self.namespace, name)
            if svc is None:
                raise ProviderError(f"Service {name} disappeared while waiting for its load balancer")
            for item in ((svc.get("status") or {}).get("loadBalancer") or {}).get("ingress") or []:
                if item.get("ip") or item.get("hostname"):
                    host.append(item.get("ip") or item.get("hostname"))
                    return True
            return False

        self._wait(ingress, deadline - time.monotonic(), f"a load balancer address for Service {name}")
        # the load balancer's address is known only now: check the certificate for the Service's name
        return ServerHandle(driver=Endpoint(host[0], self.redis_port), workers=workers, tls=bool(ca), ca_pem=ca,
                            tls_name=workers.host if ca else None)

    def _wait_redis(self, handle: ServerHandle, password: str, deadline: float) -> None:
        at = handle.driver
        try:
            self._wait(lambda: redis_answers(at, password, timeout=5, ca_pem=handle.ca_pem, tls_name=handle.tls_name),
                       deadline - time.monotonic(), f"Redis at {at} to accept clients")
        except TimeoutError as exc:
            raise ProviderError(
                f"{exc}: with access='loadbalancer' behind a NAT or proxy, set source_ranges to the "
                "egress CIDR; inside the cluster use access='direct'; else try access='port-forward'"
            ) from None

    def _wait(self, cond: Callable[[], bool], timeout: float, what: str) -> None:
        poll(cond, timeout, what, self.poll_interval)


def from_env() -> KubernetesDriver:
    """Driver configured from the environment (the CLI's default without --block).

    DOCKERPARALLEL_K8S_NAMESPACE, DOCKERPARALLEL_K8S_CONTEXT, KUBECONFIG (kubectl's rules); inside a
    pod (KUBERNETES_SERVICE_HOST set, no KUBECONFIG) the in-cluster service account; with
    AZURE_TENANT_ID, AZURE_CLIENT_ID, AZURE_CLIENT_SECRET, AZURE_SUBSCRIPTION_ID,
    DOCKERPARALLEL_AKS_RESOURCE_GROUP and DOCKERPARALLEL_AKS_CLUSTER, the AKS kubeconfig over ARM.
    """
    env = os.environ
    azure_keys = ("AZURE_TENANT_ID", "AZURE_CLIENT_ID", "AZURE_CLIENT_SECRET", "AZURE_SUBSCRIPTION_ID",
                  "DOCKERPARALLEL_AKS_RESOURCE_GROUP", "DOCKERPARALLEL_AKS_CLUSTER")
    azure = None
    if all(env.get(k) for k in azure_keys) and not env.get("KUBECONFIG"):
        azure = AzureCredentials(
            tenant_id=env["AZURE_TENANT_ID"], client_id=env["AZURE_CLIENT_ID"],
            client_secret=env["AZURE_CLIENT_SECRET"], subscription_id=env["AZURE_SUBSCRIPTION_ID"],
            resource_group=env["DOCKERPARALLEL_AKS_RESOURCE_GROUP"], cluster_name=env["DOCKERPARALLEL_AKS_CLUSTER"],
        )
    in_cluster = azure is None and not env.get("KUBECONFIG") and bool(env.get("KUBERNETES_SERVICE_HOST"))
    return KubernetesDriver(
        namespace=env.get("DOCKERPARALLEL_K8S_NAMESPACE", "default"),
        context=env.get("DOCKERPARALLEL_K8S_CONTEXT") or None,
        in_cluster=in_cluster,
        azure=azure,
    )
