"""Controllers and kubelet of the fake Kubernetes: Job controller, LoadBalancer, pod runner.

Two pod runners (network models documented in docs/kubernetes.md):

- processes (default, unit tests): every pod shares the host's network namespace (as with
  hostNetwork: true), so a pod's containerPort is a port on 127.0.0.1 and a Service's port is its
  target pod's port; tests pick a free `redis_port` so concurrent runs do not clash. There is no
  DNS: the kubelet resolves env values that are a Service's DNS name (`svc.ns`, `svc.ns.svc`,
  `svc.ns.svc.cluster.local`) or ClusterIP to 127.0.0.1 when it starts a container, and drops
  the start script's install steps (`rewrite`).
- containers (`runtime=DockerRuntime`, end-to-end): every pod is a real container of its image
  with its command and args as written, its env (secretKeyRef resolved from the Secret), its
  resource limits, its name as hostname, on one Docker network per fake cluster; a Service's
  DNS names are network aliases of the pods it selects (so Service port must equal targetPort),
  and each containerPort is also published on 127.0.0.1 (what the LoadBalancer and port-forward
  reach). Deleting a pod is `docker stop` with its grace period; the exit code and OOMKilled
  come back in the pod's containerStatuses.

A LoadBalancer Service gets status.loadBalancer.ingress [{"ip": "127.0.0.1"}] in both.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Callable

from k8s_fake_api import ApiFailure, FakeApiServer, Store, now

VENV_PYTHON = sys.executable


def rewrite_startup(command: list[str]) -> list[str]:
    """Drop the `pip install … &&` / `apt-get … &&` steps of ContainerSpec.startup_script and run
    the entrypoint with this venv's Python (the image's packages are the venv's)."""
    if command[:2] == ["sh", "-c"] and len(command) == 3:
        steps = [s.strip() for s in command[2].split("&&")]
        steps = [s for s in steps if not s.startswith(("pip ", "apt-get "))]
        script = " && ".join(steps).replace("exec python ", f"exec {VENV_PYTHON} ")
        return ["sh", "-c", script]
    return command


@dataclass
class Proc:
    """A running pod: a local process, or a container (`workload`, a docker_runtime.Workload)."""

    popen: subprocess.Popen[bytes] | None
    log_path: str
    probe_port: int | None
    kill_at: float | None = None
    workload: Any = None

    def poll(self) -> int | None:
        return self.popen.poll() if self.popen is not None else self.workload.exit_code

    @property
    def ip(self) -> str:
        return self.workload.ip if self.workload is not None else "127.0.0.1"


@dataclass
class Kubelet:
    """Runs pods as local processes; also the Job and LoadBalancer controllers (one loop)."""

    store: Store
    rewrite: Callable[[list[str]], list[str]] = rewrite_startup
    runtime: Any = None  # a docker_runtime.DockerRuntime: pods run as real containers
    lb_delay: float = 0.3
    grace: float = 2.0
    procs: dict[tuple[str, str], Proc] = field(default_factory=dict)
    log_dir: str = field(default_factory=lambda: tempfile.mkdtemp(prefix="fake-k8s-logs-"))
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None
    _lb_seen: dict[str, float] = field(default_factory=dict)
    errors: list[str] = field(default_factory=list)
    finished: dict[tuple[str, str], Proc] = field(default_factory=dict)  # deleted pods, for their output
    node_name: str = "fake-node"
    _failures: dict[str, set[str]] = field(default_factory=dict)  # job uid -> failed pod names
    _succeeded: dict[str, set[str]] = field(default_factory=dict)  # job uid -> succeeded pod names
    _scaled_down: set[str] = field(default_factory=set)  # pods the controller itself deleted
    _network: Any = None  # container mode: the cluster's Docker network
    _unstartable: set[tuple[str, str]] = field(default_factory=set)  # pods whose image is missing

    def start(self) -> None:
        self._thread = threading.Thread(target=self._loop, name="fake-kubelet", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        with self.store.lock:
            self.store.changed.notify_all()
        if self._thread:
            self._thread.join(timeout=10)
        for proc in list(self.procs.values()):
            if proc.workload is not None:
                proc.workload.remove()
            else:
                _kill(proc.popen, signal.SIGKILL)
        self.procs.clear()

    def _loop(self) -> None:
        while not self._stop.is_set():
            try:
                self.tick()
            except ApiFailure:
                pass  # an object vanished under us: next tick sees the new state
            except Exception as exc:  # noqa: BLE001 - keep running; tests assert `errors` is empty
                self.errors.append(repr(exc))
            with self.store.lock:
                self.store.changed.wait(timeout=0.05)

    def tick(self) -> None:
        for job in self.store.list("jobs", None):
            self._sync_job(job)
        for svc in self.store.list("services", None):
            self._sync_service(svc)
        for pod in self.store.list("pods", None):
            self._sync_pod(pod)

    # -- Job controller (work-queue semantics: completions unset) ---------------------------
    def _sync_job(self, job: dict[str, Any]) -> None:
        meta, spec = job["metadata"], job["spec"]
        ns, uid = meta["namespace"], meta["uid"]
        pods = [p for p in self.store.list("pods", ns)
                if any(r.get("uid") == uid and r.get("controller") for r in p["metadata"].get("ownerReferences") or [])]
        failures = self._failures.setdefault(uid, set())
        active = []
        for p in pods:
            phase, pname = p["status"].get("phase"), p["metadata"]["name"]
            if phase == "Failed":
                failures.add(pname)
            elif p["metadata"].get("deletionTimestamp"):
                if phase in ("Pending", "Running") and pname not in self._scaled_down:
                    failures.add(pname)  # deleted from outside while active: counts as failed
            elif phase in ("Pending", "Running"):
                active.append(p)
        self._succeeded.setdefault(uid, set()).update(p["metadata"]["name"] for p in pods if p["status"].get("phase") == "Succeeded")
        succeeded = len(self._succeeded[uid])
        conditions = list(job["status"].get("conditions") or [])
        parallelism = int(spec.get("parallelism", 1))
        if not any(c["type"] in ("Complete", "Failed") for c in conditions):
            if len(failures) > int(spec.get("backoffLimit", 6)):
                conditions.append({"type": "Failed", "status": "True", "reason": "BackoffLimitExceeded",
                                   "message": "Job has reached the specified backoff limit", "lastTransitionTime": now()})
                for p in active:
                    self.store.delete("pods", ns, p["metadata"]["name"], "Background")
                active = []
            elif succeeded and not active:
                conditions.append({"type": "Complete", "status": "True", "lastTransitionTime": now()})
            elif not succeeded and len(active) < parallelism:
                for _ in range(parallelism - len(active)):
                    self._create_job_pod(job)
            elif len(active) > parallelism:
                # Like the real controller: not-ready and younger pods go first.
                order = sorted(active, key=lambda p: (p["status"].get("phase") == "Running",
                                                      p["metadata"]["creationTimestamp"]), reverse=False)
                for p in order[: len(active) - parallelism]:
                    self._scaled_down.add(p["metadata"]["name"])
                    self.store.delete("pods", ns, p["metadata"]["name"], "Background")
                active = order[len(active) - parallelism:]
        status = {"active": len(active), "succeeded": succeeded, "failed": len(failures), "conditions": conditions}
        status = {k: v for k, v in status.items() if v}
        if status != job["status"]:
            self.store.update("jobs", ns, meta["name"], lambda o: {**o, "status": status})

    def _create_job_pod(self, job: dict[str, Any]) -> None:
        meta, tpl = job["metadata"], job["spec"]["template"]
        labels = dict((tpl.get("metadata") or {}).get("labels") or {})
        labels.update({"job-name": meta["name"], "batch.kubernetes.io/job-name": meta["name"],
                       "controller-uid": meta["uid"], "batch.kubernetes.io/controller-uid": meta["uid"]})
        body = {"metadata": {"generateName": meta["name"] + "-", "labels": labels,
                             "ownerReferences": [{"apiVersion": "batch/v1", "kind": "Job", "name": meta["name"],
                                                  "uid": meta["uid"], "controller": True, "blockOwnerDeletion": True}]},
                "spec": tpl["spec"]}
        self.store.create("pods", meta["namespace"], body)

    # -- LoadBalancer controller --------------------------------------------------------------
    def _sync_service(self, svc: dict[str, Any]) -> None:
        if svc["spec"].get("type") != "LoadBalancer" or svc["status"].get("loadBalancer", {}).get("ingress"):
            return
        uid = svc["metadata"]["uid"]
        first = self._lb_seen.setdefault(uid, time.monotonic())
        if time.monotonic() - first >= self.lb_delay:
            ingress = {"loadBalancer": {"ingress": [{"ip": "127.0.0.1", "ipMode": "VIP"}]}}
            self.store.update("services", svc["metadata"]["namespace"], svc["metadata"]["name"],
                              lambda o: {**o, "status": ingress})

    # -- kubelet ------------------------------------------------------------------------------
    def _sync_pod(self, pod: dict[str, Any]) -> None:
        meta = pod["metadata"]
        key = (meta["namespace"], meta["name"])
        proc = self.procs.get(key)
        if meta.get("deletionTimestamp"):
            if proc is None:
                self.store.remove("pods", *key)
                return
            if proc.workload is not None:  # `docker stop -t grace`, as the kubelet does
                if proc.kill_at is None:
                    grace = float(meta.get("deletionGracePeriodSeconds", 30))
                    proc.kill_at = time.monotonic() + grace
                    proc.workload.stop(grace) if grace > 0 else proc.workload.kill()
            elif proc.kill_at is None:
                grace = min(self.grace, float(meta.get("deletionGracePeriodSeconds", 30)))
                proc.kill_at = time.monotonic() + grace
                _kill(proc.popen, signal.SIGTERM if grace > 0 else signal.SIGKILL)
            elif time.monotonic() > proc.kill_at:
                _kill(proc.popen, signal.SIGKILL)
            if proc.poll() is not None:
                self.procs.pop(key, None)
                self.finished[key] = proc
                if proc.workload is not None:
                    proc.workload.remove()
                self.store.remove("pods", *key)
            return
        if pod["spec"].get("nodeName", self.node_name) != self.node_name:
            return  # bound to another node: not this kubelet's pod
        phase = pod["status"].get("phase")
        if phase == "Pending" and proc is None and key not in self._unstartable:
            self._start(pod)
        elif proc is not None and phase == "Running":
            self._update_running(pod, proc)

    def _start(self, pod: dict[str, Any]) -> None:
        meta, container = pod["metadata"], pod["spec"]["containers"][0]
        ns, name = meta["namespace"], meta["name"]
        try:
            env = self._env(ns, name, container.get("env") or [])
        except ApiFailure as exc:
            waiting = {"reason": "CreateContainerConfigError", "message": exc.message}
            self._set_status(ns, name, {"containerStatuses": [_cstatus(container, {"waiting": waiting})]})
            return
        if self.runtime is not None:
            from k8s_fake_containers import start_pod_container

            start_pod_container(self, pod, env)
            return
        command = self.rewrite(list(container.get("command") or []) + list(container.get("args") or []))
        log_path = os.path.join(self.log_dir, f"{ns}.{name}.log")
        with open(log_path, "wb") as out:
            popen = subprocess.Popen(command, env=env, stdout=out, stderr=subprocess.STDOUT,
                                     stdin=subprocess.DEVNULL, start_new_session=True)
        probe = ((container.get("readinessProbe") or {}).get("tcpSocket") or {}).get("port")
        self.procs[(ns, name)] = Proc(popen, log_path, int(probe) if probe else None)
        self.store.logs[(ns, name)] = log_path
        self._set_status(ns, name, {
            "phase": "Running", "podIP": "127.0.0.1", "hostIP": "127.0.0.1", "startTime": now(),
            "conditions": [{"type": "PodScheduled", "status": "True"}, {"type": "Ready", "status": "False"}],
            "containerStatuses": [_cstatus(container, {"running": {"startedAt": now()}})],
        })

    def _update_running(self, pod: dict[str, Any], proc: Proc) -> None:
        meta = pod["metadata"]
        ns, name = meta["namespace"], meta["name"]
        container = pod["spec"]["containers"][0]
        code = proc.poll()
        if code is not None:
            oom = proc.workload is not None and proc.workload.oom_killed
            reason = "OOMKilled" if oom else "Completed" if code == 0 else "Error"
            term = {"exitCode": code, "reason": reason, "finishedAt": now(),
                    "startedAt": pod["status"].get("startTime")}
            self._set_status(ns, name, {
                "phase": "Succeeded" if code == 0 else "Failed",
                "conditions": [{"type": "Ready", "status": "False", "reason": "PodCompleted"}],
                "containerStatuses": [_cstatus(container, {"terminated": term})],
            })
            return
        ready = proc.probe_port is None or _tcp_open(proc.ip, proc.probe_port)
        was = pod["status"]["containerStatuses"][0].get("ready")
        if ready != was:
            statuses = [{**pod["status"]["containerStatuses"][0], "ready": ready}]
            conds = [{"type": "PodScheduled", "status": "True"}, {"type": "Ready", "status": str(ready)}]
            self._set_status(ns, name, {"containerStatuses": statuses, "conditions": conds})

    def _set_status(self, ns: str, name: str, status: dict[str, Any]) -> None:
        self.store.update("pods", ns, name, lambda o: {**o, "status": {**o["status"], **status}})

    def _env(self, ns: str, hostname: str, entries: list[dict[str, Any]]) -> dict[str, str]:
        """The pod's env with secretKeyRef resolved; for processes, also PATH/HOME of this machine
        and Service DNS names / ClusterIPs rewritten to 127.0.0.1 (no DNS there)."""
        hosts: dict[str, str] = {}
        if self.runtime is not None:
            env: dict[str, str] = {}
        else:
            env = {k: os.environ[k] for k in ("PATH", "HOME", "LANG", "TMPDIR", "PREFECT_HOME") if k in os.environ}
            env["PATH"] = os.path.dirname(VENV_PYTHON) + os.pathsep + env.get("PATH", "")
            env["HOSTNAME"] = hostname  # as in a real pod: the pod's name
        for svc in self.store.list("services", ns) if self.runtime is None else ():
            n = svc["metadata"]["name"]
            for alias in (f"{n}.{ns}", f"{n}.{ns}.svc", f"{n}.{ns}.svc.cluster.local", svc["spec"].get("clusterIP")):
                hosts[alias] = "127.0.0.1"
        for e in entries:
            if "valueFrom" in e:
                ref = e["valueFrom"].get("secretKeyRef") or {}
                try:
                    secret = self.store.get("secrets", ns, ref.get("name", ""))
                except ApiFailure:
                    raise ApiFailure(404, "NotFound", f'secret "{ref.get("name")}" not found') from None
                if ref.get("key") not in (secret.get("data") or {}):
                    raise ApiFailure(404, "NotFound", f"couldn't find key {ref.get('key')} in Secret {ns}/{ref.get('name')}")
                import base64

                env[e["name"]] = base64.b64decode(secret["data"][ref["key"]]).decode()
            else:
                value = str(e.get("value", ""))
                env[e["name"]] = hosts.get(value, value)
        return env


def _cstatus(container: dict[str, Any], state: dict[str, Any]) -> dict[str, Any]:
    """A containerStatus with every field the API marks required (clients validate them)."""
    image = container.get("image") or ""
    return {"name": container["name"], "image": image, "imageID": f"docker-pullable://{image}@sha256:{'0' * 64}",
            "ready": False, "started": "running" in state, "restartCount": 0, "state": state}


def _tcp_open(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=0.2):
            return True
    except OSError:
        return False


def _kill(popen: subprocess.Popen[bytes], sig: int) -> None:
    if popen.poll() is None:
        try:
            os.killpg(popen.pid, sig)
        except (ProcessLookupError, PermissionError):
            pass
    if sig == signal.SIGKILL:
        try:
            popen.wait(timeout=5)
        except subprocess.TimeoutExpired:
            pass


class FakeKubernetes:
    """API server + kubelet, started and stopped together; `kubeconfig()` points a client at it."""

    def __init__(self, token: str | None = "fake-token", **kubelet_options: Any) -> None:
        self.store = Store()
        self.server = FakeApiServer(self.store, token)
        self.kubelet = Kubelet(self.store, **kubelet_options)
        self.token = token
        self._http: threading.Thread | None = None

    def __enter__(self) -> "FakeKubernetes":
        self._http = threading.Thread(target=self.server.serve_forever, name="fake-apiserver", daemon=True)
        self._http.start()
        self.kubelet.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.kubelet.stop()
        self.server.forwards.close_all()
        self.server.shutdown()
        self.server.server_close()

    @property
    def url(self) -> str:
        return self.server.url

    def kubeconfig(self, user: dict[str, Any] | None = None, namespace: str = "default") -> dict[str, Any]:
        return {
            "apiVersion": "v1", "kind": "Config", "current-context": "fake",
            "clusters": [{"name": "fake", "cluster": {"server": self.url}}],
            "contexts": [{"name": "fake", "context": {"cluster": "fake", "user": "tester", "namespace": namespace}}],
            "users": [{"name": "tester", "user": user if user is not None else {"token": self.token}}],
        }

    def labelled(self, selector: str) -> list[str]:
        """Every object (any kind) whose labels match, as 'Kind/name'."""
        out = []
        for plural in ("pods", "services", "secrets", "configmaps", "jobs"):
            out += [f"{o['kind']}/{o['metadata']['name']}" for o in self.store.list(plural, None, selector)]
        return out

    def pids(self) -> list[int | str]:
        """Live pod processes (pids) or containers (ids)."""
        return [p.popen.pid if p.popen is not None else p.workload.id
                for p in self.kubelet.procs.values() if p.poll() is None]
