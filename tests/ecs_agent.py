"""A fake Fargate agent for tests: it watches moto for RUNNING tasks of an ECS cluster and runs
each one, the way the real agent would run the container.

Like the real agent it resolves the task definition's `secrets` from SSM (SecureString values
injected as environment variables), applies container overrides, stops the task when the
essential container exits, and ships the container's output to CloudWatch Logs.

mode="containers" (end-to-end; needs a Docker engine, see `docker_runtime.py`): each task runs
as a real container of the task definition's image with its entryPoint + command as written
(install steps included), task CPU / memory as limits, `initProcessEnabled` as `--init`, the
task's private IP (from DescribeTasks) as its address. StopTask is `docker stop` with the
container's `stopTimeout`; the task shows DEACTIVATING until the container is gone, then
STOPPED with the container's exit code and, after an OOM kill, ECS's
"OutOfMemoryError: Container killed due to memory usage" reason. moto picks task IPs at
random in 10.0.0.0/8, not in the subnet, so a task with port mappings (the server) gets a
Docker network of its own around its IP; every task of the agent joins every such network (one
VPC). The driver reaches a mapped port through a published loopback port (`map_endpoint`).
Exit codes and stop states are written into moto's in-process model: moto has no API for them.

mode="redis" (unit tests, no engine): server tasks run a local redis-server on a loopback port,
worker tasks an idle process; private IP + port map to that loopback port (`map_endpoint`).
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from typing import Any

import boto3
from ecs_support import free_port

from prefect_dockerparallel.protocol import keys as K
from prefect_dockerparallel.specs import Endpoint

CLOSED = Endpoint("127.0.0.1", 1)  # refused at once: "not reachable yet"
OOM_REASON = "OutOfMemoryError: Container killed due to memory usage"
EXITED_REASON = "Essential container in task exited"
_LIVE: set[str] = set()  # task ARNs whose container some agent still runs


class FakeFargateAgent:
    def __init__(
        self, url: str, ecs_cluster: str, mode: str = "redis", poll: float = 0.05, runtime: Any = None
    ) -> None:
        assert mode in ("redis", "containers"), mode
        assert (mode == "containers") == (runtime is not None), "containers need a DockerRuntime"
        session = boto3.session.Session(
            aws_access_key_id="testing", aws_secret_access_key="testing", region_name="us-east-1"
        )
        self.ecs = session.client("ecs", endpoint_url=url)
        self.ssm = session.client("ssm", endpoint_url=url)
        self.logs = session.client("logs", endpoint_url=url)
        self.ecs_cluster, self.mode, self.poll, self.runtime = ecs_cluster, mode, poll, runtime
        self.procs: dict[str, subprocess.Popen[bytes]] = {}  # mode="redis"
        self.workloads: dict[str, Any] = {}  # mode="containers": task ARN -> docker_runtime.Workload
        self.networks: list[Any] = []  # the "VPC": one Docker network per task with port mappings
        self.envs: dict[str, dict[str, str]] = {}  # task ARN -> environment it was started with
        self.ports: dict[str, int] = {}  # private IP -> loopback port
        self.exited: dict[str, int] = {}  # task ARN -> exit code of its container / process
        self.stop_seconds: dict[str, float] = {}  # task ARN -> StopTask seen -> container gone
        self.errors: list[str] = []
        self._meta: dict[str, tuple[str, str, str]] = {}  # arn -> (log group, stream, output file)
        self._tmp = tempfile.mkdtemp(prefix="fake-fargate-")
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self._loop, name="fake-fargate-agent", daemon=True)
        if mode == "containers":
            _install_stop_hook()

    def __enter__(self) -> FakeFargateAgent:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def map_endpoint(self, ep: Endpoint) -> Endpoint:
        port = self.ports.get(ep.host)
        return Endpoint("127.0.0.1", port) if port else CLOSED

    def running(self) -> list[str]:
        with self._lock:
            procs = [a for a, p in self.procs.items() if p.poll() is None]
            return procs + [a for a, w in self.workloads.items() if w.running]

    def workload_of(self, hostname: str) -> str | None:
        """The task ARN whose container has this hostname."""
        with self._lock:
            return next((a for a, w in self.workloads.items() if w.request.hostname == hostname), None)

    def close(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout=30)
        for arn in list(self.procs):
            self._kill(arn)
        for arn, workload in list(self.workloads.items()):
            _LIVE.discard(arn)
            workload.remove()
        shutil.rmtree(self._tmp, ignore_errors=True)

    # -- the agent loop ---------------------------------------------------------------------
    def _loop(self) -> None:
        while not self._stop.is_set():
            try:
                self._tick()
            except Exception as exc:  # keep playing; tests assert on `errors`
                if "ClusterNotFound" not in repr(exc):  # before the driver created it
                    self.errors.append(repr(exc))
            self._stop.wait(self.poll)

    def _tick(self) -> None:
        arns: list[str] = []
        for page in self.ecs.get_paginator("list_tasks").paginate(
            cluster=self.ecs_cluster, desiredStatus="RUNNING"
        ):
            arns.extend(page["taskArns"])
        for arn in [a for a in self.procs if a not in arns]:
            self._kill(arn)  # StopTask was called: the "container" gets SIGTERM, then SIGKILL
        for arn, workload in list(self.workloads.items()):
            if arn not in arns and workload.running:  # StopTask: `docker stop -t stopTimeout`
                workload.stop(workload.request.stop_timeout or 30)
            elif not workload.running:
                self._finish(arn, workload, stopped_by_api=arn not in arns)
        new = [a for a in arns if a not in self.procs and a not in self.workloads and a not in self.exited]
        for i in range(0, len(new), 100):
            for task in self.ecs.describe_tasks(cluster=self.ecs_cluster, tasks=new[i : i + 100])["tasks"]:
                if task["lastStatus"] == "RUNNING":
                    self._start(task)
        for arn, proc in list(self.procs.items()):
            if proc.poll() is not None and arn not in self.exited:
                self.exited[arn] = proc.returncode
                self.ecs.stop_task(cluster=self.ecs_cluster, task=arn, reason=EXITED_REASON)

    def _start(self, task: dict[str, Any]) -> None:
        arn = task["taskArn"]
        try:
            td = self.ecs.describe_task_definition(taskDefinition=task["taskDefinitionArn"])["taskDefinition"]
        except self.ecs.exceptions.ClientException:
            # Teardown raced us: the task was stopped and its definition deleted since ListTasks.
            (now,) = self.ecs.describe_tasks(cluster=self.ecs_cluster, tasks=[arn])["tasks"]
            if now["desiredStatus"] == "STOPPED":
                return
            raise
        cdef = td["containerDefinitions"][0]
        env = {e["name"]: e["value"] for e in cdef.get("environment", [])}
        names = {s["valueFrom"].split(":parameter", 1)[-1]: s["name"] for s in cdef.get("secrets", [])}
        if names:
            got = self.ssm.get_parameters(Names=list(names), WithDecryption=True)["Parameters"]
            env.update({names[p["Name"]]: p["Value"] for p in got})
        for override in task.get("overrides", {}).get("containerOverrides", []):
            if override.get("name") == cdef["name"]:
                env.update({e["name"]: e["value"] for e in override.get("environment", [])})
        eni = {d["name"]: d["value"] for att in task.get("attachments", []) for d in att.get("details", [])}
        log_opts = cdef.get("logConfiguration", {}).get("options", {})
        stream = f"{log_opts.get('awslogs-stream-prefix', 'x')}/{cdef['name']}/{arn.rsplit('/', 1)[-1]}"
        out_path = os.path.join(self._tmp, arn.rsplit("/", 1)[-1] + ".log")
        self._meta[arn] = (log_opts.get("awslogs-group", ""), stream, out_path)
        self.envs[arn] = env
        if self.mode == "containers":
            try:
                self._start_container(arn, td, cdef, env, eni)
            except Exception as exc:  # a harness bug: fail the task at once, not at a timeout
                self.errors.append(f"start {arn}: {exc!r}")
                self._failed_to_start(arn, f"fake agent could not start the container: {exc!r}")
            return
        argv, env = self._command(cdef, env, eni["privateIPv4Address"])
        with open(out_path, "wb") as out, self._lock:
            self.procs[arn] = subprocess.Popen(
                argv, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
            )

    # -- mode="containers" ------------------------------------------------------------------
    def _start_container(
        self, arn: str, td: dict[str, Any], cdef: dict[str, Any], env: dict[str, str], eni: dict[str, str]
    ) -> None:
        from docker_runtime import ContainerRequest, ContainerStartError

        ip = eni["privateIPv4Address"]
        ports = [int(p["containerPort"]) for p in cdef.get("portMappings", [])]
        network = self._network_for(ip) if ports else (self.networks[0] if self.networks else None)
        publish = {port: free_port() for port in ports}
        memory = min(int(m) for m in (td.get("memory"), cdef.get("memory")) if m)
        request = ContainerRequest(
            image=cdef["image"],
            name=f"{self.runtime.prefix}-ecs-{arn.rsplit('/', 1)[-1]}",
            entrypoint=cdef.get("entryPoint"),
            command=cdef.get("command"),
            env=env,
            hostname=eni.get("privateDnsName", "").split(".")[0] or None,
            cpus=int(td.get("cpu") or cdef.get("cpu") or 1024) / 1024,  # 1024 CPU units = 1 vCPU
            memory_mb=memory,
            init=bool((cdef.get("linuxParameters") or {}).get("initProcessEnabled")),
            stop_timeout=int(cdef.get("stopTimeout", 30)),  # Fargate's default
            network=network.name if network else None,
            ipv4_address=ip if ports else None,
            publish=publish,
            labels={"dp-fake": "ecs-fargate", "dp-fake-task": arn},
        )
        try:
            workload = self.runtime.start(request)
        except ContainerStartError as exc:
            self._failed_to_start(arn, str(exc))
            return
        with self._lock:
            self.workloads[arn] = workload
            _LIVE.add(arn)
        for other in self.networks:
            if network is None or other.id != network.id:
                self.runtime.connect(workload, other)
        for port in publish.values():
            self.ports[ip] = self.ports.get(ip) or port

    def _network_for(self, ip: str) -> Any:
        network = self.runtime.network_around(ip)
        if all(n.id != network.id for n in self.networks):
            self.networks.append(network)
            for workload in list(self.workloads.values()):  # the VPC grew: everyone is in it
                self.runtime.connect(workload, network)
        return network

    def _failed_to_start(self, arn: str, reason: str) -> None:
        self.exited[arn] = -1
        self.ecs.stop_task(cluster=self.ecs_cluster, task=arn, reason=reason[:255])
        task = _moto_task(arn)
        if task is not None:
            task.stop_code = "TaskFailedToStart"
            task.containers[0].reason = reason[:255]
            task.containers[0].exitCode = None
            task.containers[0].last_status = "STOPPED"

    def _finish(self, arn: str, workload: Any, stopped_by_api: bool) -> None:
        """The container is gone: report it as ECS would, ship its output, remove it."""
        _LIVE.discard(arn)
        code = int(workload.exit_code)
        self.exited[arn] = code
        if workload.stop_seconds is not None:
            self.stop_seconds[arn] = workload.stop_seconds
        if not stopped_by_api:
            self.ecs.stop_task(cluster=self.ecs_cluster, task=arn, reason=EXITED_REASON)
        task = _moto_task(arn)
        if task is not None:
            container = task.containers[0]
            container.exitCode, container.last_status = code, "STOPPED"
            if workload.oom_killed:
                container.reason = OOM_REASON
            if not stopped_by_api:
                task.stop_code = "EssentialContainerExited"
            task.last_status = "STOPPED"
        self._ship_logs(arn, workload.logs())
        with self._lock:
            self.workloads.pop(arn, None)
        workload.remove()

    # -- mode="redis" -----------------------------------------------------------------------
    def _command(
        self, cdef: dict[str, Any], env: dict[str, str], ip: str
    ) -> tuple[list[str], dict[str, str]]:
        role = cdef["name"]
        if role == "server":
            port = free_port()
            self.ports[ip] = port  # container port -> loopback port, like `docker run -p`
            argv = ["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", ""]
            return argv + ["--requirepass", env[K.ENV_REDIS_PASSWORD]], {"PATH": os.environ["PATH"], **env}
        return [sys.executable, "-c", "import time; time.sleep(3600)"], {**os.environ, **env}

    def _kill(self, arn: str) -> None:
        with self._lock:
            proc = self.procs.pop(arn, None)
        if proc is None:
            return
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
        path = self._meta.get(arn, ("", "", ""))[2]
        text = open(path, "rb").read().decode(errors="replace") if path and os.path.exists(path) else ""
        self._ship_logs(arn, text)

    def _ship_logs(self, arn: str, text: str) -> None:
        """Copy the container's output to moto's CloudWatch Logs, as the awslogs driver would."""
        group, stream, _ = self._meta.pop(arn, ("", "", ""))
        lines = [ln for ln in text.splitlines() if ln.strip()]
        if not group or not lines:
            return
        try:
            self.logs.create_log_stream(logGroupName=group, logStreamName=stream)
            now = int(time.time() * 1000)
            events = [{"timestamp": now + i, "message": ln} for i, ln in enumerate(lines[-1000:])]
            self.logs.put_log_events(logGroupName=group, logStreamName=stream, logEvents=events)
        except Exception as exc:
            self.errors.append(f"logs: {exc!r}")


def _moto_task(arn: str) -> Any:
    """moto's in-process model of a task (the agent and moto share a process in these tests)."""
    from moto.ecs.models import ecs_backends

    _, _, _, region, account = arn.split(":")[:5]
    for tasks in ecs_backends[account][region].tasks.values():
        if arn in tasks:
            return tasks[arn]
    return None


def _install_stop_hook() -> None:
    """ECS keeps a stopped task DEACTIVATING until its container is gone; moto says STOPPED at
    once. The hook keeps tasks whose container still runs out of STOPPED (idempotent)."""
    from moto.ecs.models import EC2ContainerServiceBackend

    original = EC2ContainerServiceBackend.stop_task
    if getattr(original, "_fake_fargate", False):
        return

    def stop_task(self: Any, cluster_str: str, task_str: str, reason: str) -> Any:
        task = original(self, cluster_str, task_str, reason)
        if task.task_arn in _LIVE:
            task.last_status = "DEACTIVATING"
            task.stop_code = "SpotInterruption" if "spot" in reason.lower() else "UserInitiated"
        return task

    stop_task._fake_fargate = True  # type: ignore[attr-defined]
    EC2ContainerServiceBackend.stop_task = stop_task  # type: ignore[method-assign]
