"""Thin access layer over the kubernetes client: raw JSON dicts in and out, retries, re-auth.

Why raw dicts (`_preload_content=False`): the driver reads a handful of fields, and the model
classes change between client majors; the JSON shape of the API does not. Why retries here: the
client retries nothing, and API servers answer 429 under load (priority and fairness) and 5xx
during control-plane upgrades.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from typing import Any

from .azure import AzureCredentials
from ..base import ProviderError
from ..readiness import poll
from .auth import Access, build_access

log = logging.getLogger(__name__)
RETRY_STATUSES = {429, 500, 502, 503, 504}
FATAL_WAITING = {
    "ErrImagePull": False,  # transient on its own; fatal once it turns into ImagePullBackOff
    "ImagePullBackOff": True,
    "InvalidImageName": True,
    "CreateContainerConfigError": True,
    "CreateContainerError": True,
    "CrashLoopBackOff": True,
}


class ApiError(ProviderError):
    def __init__(self, message: str, status: int | None = None) -> None:
        super().__init__(message)
        self.status = status


# kind -> (api group attribute, method suffix)
KINDS = {
    "pods": ("core", "pod"),
    "services": ("core", "service"),
    "secrets": ("core", "secret"),
    "jobs": ("batch", "job"),
}


class Api:
    """Lazily connected, thread-safe facade; credentials that expire are rebuilt before use."""

    def __init__(
        self,
        *,
        kubeconfig: str | dict[str, Any] | None,
        context: str | None,
        in_cluster: bool,
        azure: AzureCredentials | None,
        max_attempts: int = 5,
    ) -> None:
        self._conf = dict(kubeconfig=kubeconfig, context=context, in_cluster=in_cluster, azure=azure)
        self._lock = threading.Lock()
        self._access: Access | None = None
        self._apis: dict[str, Any] = {}
        self.max_attempts = max_attempts

    def ensure(self) -> None:
        """Connect now (kubeconfig checks, AAD token): raises ProviderError naming the fix."""
        self._group("core")

    def _group(self, group: str) -> Any:
        with self._lock:
            if self._access is None or not self._access.fresh():
                from kubernetes import client as k8s

                self._access = build_access(**self._conf)
                self._apis = {
                    "core": k8s.CoreV1Api(self._access.api_client),
                    "batch": k8s.BatchV1Api(self._access.api_client),
                }
            return self._apis[group]

    def _call(self, kind: str, verb: str, *args: Any, **kwargs: Any) -> Any:
        from kubernetes.client.exceptions import ApiException
        from urllib3.exceptions import HTTPError as Urllib3Error

        group, suffix = KINDS[kind]
        delay = 0.5
        for attempt in range(1, self.max_attempts + 1):
            method = getattr(self._group(group), f"{verb}_namespaced_{suffix}")
            try:
                resp = method(*args, _preload_content=False, **kwargs)
                data = resp.data
                return json.loads(data) if data else {}
            except ApiException as exc:
                if exc.status == 401 and attempt == 1 and self._conf["azure"] is not None:
                    with self._lock:
                        self._access = None  # token revoked or expired early: fetch a new one
                    continue
                if exc.status in RETRY_STATUSES and attempt < self.max_attempts:
                    wait = _retry_after(exc)
                    time.sleep(wait if wait is not None else delay)
                    delay = min(delay * 2, 10)
                    continue
                raise ApiError(_describe(exc, kind, verb), exc.status) from None
            except (OSError, Urllib3Error) as exc:  # refused / reset / TLS (urllib3 already retried)
                if attempt < min(self.max_attempts, 3):
                    time.sleep(delay)
                    delay = min(delay * 2, 10)
                    continue
                host = getattr(self._access.api_client.configuration, "host", "?") if self._access else "?"
                raise ApiError(
                    f"Kubernetes API at {host} unreachable ({type(exc).__name__}); check the "
                    "kubeconfig's server address and that this machine can reach it"
                ) from None
        raise AssertionError("unreachable")

    # -- verbs ---------------------------------------------------------------------------
    def list(self, kind: str, namespace: str, selector: str) -> list[dict[str, Any]]:
        body = self._call(kind, "list", namespace, label_selector=selector)
        items = body.get("items") or []
        singular = {"pods": "Pod", "services": "Service", "secrets": "Secret", "jobs": "Job"}[kind]
        for item in items:  # list items carry no kind in real API responses
            item.setdefault("kind", singular)
            item.setdefault("status", {})
        return items

    def get(self, kind: str, namespace: str, name: str) -> dict[str, Any] | None:
        try:
            obj = self._call(kind, "read", name, namespace)
        except ApiError as exc:
            if exc.status == 404:
                return None
            raise
        obj.setdefault("status", {})
        return obj

    def create(
        self, kind: str, namespace: str, body: dict[str, Any], exist_ok: bool = False
    ) -> dict[str, Any] | None:
        """The created object, or None when it existed and exist_ok."""
        try:
            return self._call(kind, "create", namespace, body)
        except ApiError as exc:
            if exc.status == 409 and exist_ok:
                return None
            raise

    def patch(self, kind: str, namespace: str, name: str, body: dict[str, Any]) -> dict[str, Any]:
        return self._call(kind, "patch", name, namespace, body)

    def delete(self, kind: str, namespace: str, name: str) -> bool:
        """Delete with background cascade (Jobs default to orphaning their pods); False on 404."""
        try:
            self._call(kind, "delete", name, namespace, propagation_policy="Background")
            return True
        except ApiError as exc:
            if exc.status == 404:
                return False
            raise

    def portforward(self, namespace: str, pod: str, port: int) -> tuple[Any, Any]:
        """(PortForward, socket to the pod's port) over a WebSocket through the API server.

        `kubernetes.stream.portforward` swaps `call_api` on the ApiClient it is given for the
        duration of the call, so it gets an ApiClient of its own and one caller at a time.
        """
        from kubernetes import client as k8s
        from kubernetes.stream import portforward

        self._group("core")  # fresh credentials
        with self._lock:
            assert self._access is not None
            if self._apis.get("stream_for") is not self._access:
                stream_client = k8s.ApiClient(self._access.api_client.configuration)
                self._apis["stream"] = k8s.CoreV1Api(stream_client)
                self._apis["stream_for"] = self._access
            core = self._apis["stream"]
            try:
                forward = portforward(core.connect_get_namespaced_pod_portforward, pod, namespace, ports=str(port))
            except Exception as exc:  # noqa: BLE001 - ApiException(status=0) wraps handshake errors
                reason = str(getattr(exc, "reason", exc)).split(" -+-+- ")[0]  # drop the header dump
                raise ApiError(f"port-forward to pod {pod}:{port} failed: {reason}") from None
        return forward, forward.socket(port)

    def pod_log(self, namespace: str, name: str, tail: int) -> str:
        try:
            core = self._group("core")
            resp = core.read_namespaced_pod_log(name, namespace, tail_lines=tail, _preload_content=False)
            return resp.data.decode(errors="replace")
        except Exception as exc:  # logs are best effort: a pod not started yet has none
            return f"(no logs: {type(exc).__name__})"


def _retry_after(exc: Any) -> float | None:
    try:
        value = (exc.headers or {}).get("Retry-After")
        return min(float(value), 30.0) if value else None
    except (TypeError, ValueError, AttributeError):
        return None


def _describe(exc: Any, kind: str, verb: str) -> str:
    message = exc.reason or ""
    try:
        message = json.loads(exc.body).get("message") or message
    except (TypeError, ValueError, AttributeError):
        pass
    hint = ""
    if exc.status == 403:
        hint = " (the account lacks RBAC permissions: apply the Role in docs/kubernetes.md)"
    elif exc.status == 401:
        hint = " (credentials rejected: refresh the kubeconfig or its token)"
    return f"Kubernetes {verb} {kind} failed: HTTP {exc.status} {message}{hint}"


def pod_ready(pod: dict[str, Any]) -> bool:
    status = pod.get("status") or {}
    if status.get("phase") != "Running":
        return False
    for cond in status.get("conditions") or []:
        if cond.get("type") == "Ready":
            return cond.get("status") == "True"
    return all(c.get("ready") for c in status.get("containerStatuses") or [{}])


def pod_failure(pod: dict[str, Any]) -> str | None:
    """Why a pod cannot become ready, or None while it still may."""
    status = pod.get("status") or {}
    for cs in status.get("containerStatuses") or []:
        state = cs.get("state") or {}
        waiting = state.get("waiting") or {}
        if FATAL_WAITING.get(waiting.get("reason", "")):
            return f"{waiting['reason']}: {waiting.get('message', '')}".rstrip(": ")
        term = state.get("terminated")
        if term:
            return (
                f"container exited with code {term.get('exitCode')} "
                f"({term.get('reason', '')}) {term.get('message', '')}".rstrip()
            )
    if status.get("phase") in ("Failed", "Succeeded"):
        return f"pod {status['phase']}: {status.get('reason', '')} {status.get('message', '')}".rstrip()
    return None


def wait_server_pod(api: "Api", namespace: str, name: str, deadline: float, interval: float) -> None:
    """Until the server pod is ready; a failed pod is an error at once, with its log's tail."""
    last: dict[str, Any] = {}

    def ready() -> bool:
        pod = api.get("pods", namespace, name)
        if pod is None:
            raise ProviderError(f"server pod {name} was deleted while starting")
        last["pod"] = pod
        failure = pod_failure(pod)
        if failure:
            tail = api.pod_log(namespace, name, 20).strip()
            raise ProviderError(f"server pod {name} failed: {failure}" + (f"\n{tail}" if tail else ""))
        return pod_ready(pod)

    try:
        poll(ready, deadline - time.monotonic(), f"server pod {name} to be ready", interval)
    except TimeoutError as exc:
        conds = [c.get("message") for c in (last.get("pod", {}).get("status", {}).get("conditions") or [])]
        hint = "; ".join(c for c in conds if c)
        raise ProviderError(f"{exc}" + (f" ({hint})" if hint else "")) from None

