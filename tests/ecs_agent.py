"""A fake Fargate agent for tests: it watches moto for RUNNING tasks of an ECS cluster and runs
each one as a local process, the way the real agent would run the container.

Like the real agent it resolves the task definition's `secrets` from SSM, applies container
overrides, and stops the task (StopTask) when the essential process exits. Because every "task"
runs on this machine, it also plays the network: a task's private IP + container port maps to a
loopback port (`map_endpoint`), like a NAT, and worker environments are rewritten accordingly.

mode="redis": server tasks run plain redis-server, worker tasks run an idle process (unit tests).
mode="entrypoints": tasks run `python -m prefect_dockerparallel.container.<server|worker>` (end-to-end).
"""

from __future__ import annotations

import os
import re
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

ENTRYPOINT = re.compile(r"exec python -m prefect_dockerparallel\.container\.(server|worker)$")
CLOSED = Endpoint("127.0.0.1", 1)  # refused at once: "not reachable yet"


class FakeFargateAgent:
    def __init__(self, url: str, ecs_cluster: str, mode: str = "redis", poll: float = 0.05) -> None:
        session = boto3.session.Session(
            aws_access_key_id="testing", aws_secret_access_key="testing", region_name="us-east-1"
        )
        self.ecs = session.client("ecs", endpoint_url=url)
        self.ssm = session.client("ssm", endpoint_url=url)
        self.logs = session.client("logs", endpoint_url=url)
        self.ecs_cluster, self.mode, self.poll = ecs_cluster, mode, poll
        self.procs: dict[str, subprocess.Popen[bytes]] = {}
        self.envs: dict[str, dict[str, str]] = {}  # task ARN -> environment it was started with
        self.ports: dict[str, int] = {}  # server private IP -> loopback port
        self.exited: dict[str, int] = {}  # task ARN -> exit code of processes that ended alone
        self.errors: list[str] = []
        self._meta: dict[str, tuple[str, str, str]] = {}  # arn -> (log group, stream, output file)
        self._tmp = tempfile.mkdtemp(prefix="fake-fargate-")
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self._loop, name="fake-fargate-agent", daemon=True)

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
            return [a for a, p in self.procs.items() if p.poll() is None]

    def close(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout=30)
        for arn in list(self.procs):
            self._kill(arn)
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
        new = [a for a in arns if a not in self.procs]
        for i in range(0, len(new), 100):
            for task in self.ecs.describe_tasks(cluster=self.ecs_cluster, tasks=new[i : i + 100])["tasks"]:
                if task["lastStatus"] == "RUNNING":
                    self._start(task)
        for arn, proc in list(self.procs.items()):
            if proc.poll() is not None and arn not in self.exited:
                self.exited[arn] = proc.returncode
                self.ecs.stop_task(
                    cluster=self.ecs_cluster, task=arn, reason="Essential container in task exited"
                )

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
        ip = next(
            d["value"]
            for att in task.get("attachments", [])
            for d in att.get("details", [])
            if d["name"] == "privateIPv4Address"
        )
        argv, env = self._command(cdef, env, ip)
        out_path = os.path.join(self._tmp, arn.rsplit("/", 1)[-1] + ".log")
        log_opts = cdef.get("logConfiguration", {}).get("options", {})
        stream = f"{log_opts.get('awslogs-stream-prefix', 'x')}/{cdef['name']}/{arn.rsplit('/', 1)[-1]}"
        with open(out_path, "wb") as out, self._lock:
            self.procs[arn] = subprocess.Popen(
                argv, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
            )
        self.envs[arn] = env
        self._meta[arn] = (log_opts.get("awslogs-group", ""), stream, out_path)

    def _command(
        self, cdef: dict[str, Any], env: dict[str, str], ip: str
    ) -> tuple[list[str], dict[str, str]]:
        role, command = cdef["name"], cdef["command"][-1]
        match = ENTRYPOINT.search(command)
        assert match and match.group(1) == role, f"unexpected container command: {command}"
        if role == "server":
            port = free_port()
            self.ports[ip] = port  # container port -> loopback port, like `docker run -p`
            env = {**env, K.ENV_REDIS_PORT: str(port), "DOCKERPARALLEL_REDIS_BIND": "127.0.0.1"}
        else:
            mapped = self.map_endpoint(Endpoint(env[K.ENV_REDIS_HOST], int(env[K.ENV_REDIS_PORT])))
            env = {**env, K.ENV_REDIS_HOST: mapped.host, K.ENV_REDIS_PORT: str(mapped.port)}
        if self.mode == "entrypoints":
            return [sys.executable, "-m", f"prefect_dockerparallel.container.{role}"], {**os.environ, **env}
        if role == "server":
            argv = ["redis-server", "--port", env[K.ENV_REDIS_PORT], "--bind", "127.0.0.1", "--save", ""]
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
        self._ship_logs(arn)

    def _ship_logs(self, arn: str) -> None:
        """Copy the process output to moto's CloudWatch Logs, as the awslogs driver would."""
        group, stream, path = self._meta.pop(arn, ("", "", ""))
        if not group or not os.path.exists(path):
            return
        with open(path, "rb") as f:
            lines = [ln for ln in f.read().decode(errors="replace").splitlines() if ln.strip()]
        if not lines:
            return
        try:
            self.logs.create_log_stream(logGroupName=group, logStreamName=stream)
            now = int(time.time() * 1000)
            events = [{"timestamp": now + i, "message": ln} for i, ln in enumerate(lines[-1000:])]
            self.logs.put_log_events(logGroupName=group, logStreamName=stream, logEvents=events)
        except Exception as exc:
            self.errors.append(f"logs: {exc!r}")
