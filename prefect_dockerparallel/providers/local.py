"""LocalDriver: the embedded default. Redis and workers as processes on this machine.

Each "container" is a process started with exactly the command and environment a cloud container
gets (`python -m prefect_dockerparallel.container.server|worker` + `base.server_env|worker_env`), so the
local cluster exercises the same entrypoints, watchdog and dead-man's switch as the cloud.
A state file per cluster (mode 0600, in a private 0700 directory: `local_state`) lets `reconnect`,
`clusters ls` and `clusters cleanup` find clusters started by other processes; it records each
process's start time and command line, so cleanup never signals a reused PID.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import redis

from ..protocol.queue import connect
from ..container.server import find_redis_server
from ..specs import ENTRYPOINT_MODULES, validate_cluster_name, ClusterRecord, ClusterSecrets, ClusterSpec, ContainerCounts, Endpoint, ServerHandle
from .base import Provider, ProviderError, server_env, worker_env
from .local_state import identity, is_ours, open_log, read_state, state_dir, write_state

__all__ = ["LocalDriver", "free_port", "pid_alive", "state_dir"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:  # a zombie counts as dead (reap it when it is ours)
        done, _ = os.waitpid(pid, os.WNOHANG)
        return done == 0
    except ChildProcessError:
        pass
    try:
        with open(f"/proc/{pid}/stat") as fh:
            return fh.read().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return True


@dataclass
class _LocalCluster:
    port: int
    secrets: ClusterSecrets
    server: subprocess.Popen[bytes] | None = None
    workers: list[subprocess.Popen[bytes]] = field(default_factory=list)
    failed: bool = False  # a worker died with a non-zero exit code: its log is kept at stop


class LocalDriver(Provider):
    kind = "local"

    def __init__(self, redis_server_path: str | None = None, python: str | None = None):
        self.redis_server_path = redis_server_path
        self.python = python or sys.executable
        self._clusters: dict[str, _LocalCluster] = {}
        self._proofs: dict[int, dict] = {}  # pid -> identity at spawn (start time, command line)

    @property
    def is_remote(self) -> bool:
        return False

    def validate(self, spec: ClusterSpec) -> None:
        # Fail before anything starts when there is no redis-server to run.
        self.redis_server_path = find_redis_server(self.redis_server_path)

    # -- state file ------------------------------------------------------------------------
    def _state_path(self, name: str) -> Path:
        return state_dir() / f"{validate_cluster_name(name)}.json"

    def _log_path(self, name: str) -> Path:
        return state_dir() / f"{name}.log"

    def _save_state(self, spec: ClusterSpec, c: _LocalCluster) -> None:
        live = [w for w in c.workers if w.poll() is None]
        data = {
            "name": spec.name,
            "flow_run_id": spec.flow_run_id,
            "port": c.port,
            "server_pid": c.server.pid if c.server else None,
            "worker_pids": [w.pid for w in live],
            "server_proc": self._proofs.get(c.server.pid) if c.server else None,
            "worker_procs": [self._proofs[w.pid] for w in live if w.pid in self._proofs],
            "redis_password": c.secrets.redis_password,
            "signing_key": c.secrets.signing_key.hex(),
        }
        write_state(self._state_path(spec.name), data)

    def _load_state(self, name: str) -> dict | None:
        return read_state(self._state_path(name))

    def _spawn(self, spec: ClusterSpec, entrypoint: str, env: dict[str, str]) -> subprocess.Popen[bytes]:
        # Local workers see the driver's import path, so tasks defined in the user's own
        # modules unpickle without installing them (a cloud image must contain them instead).
        paths = [p for p in sys.path if p and os.path.isdir(p)]
        full_env = {**os.environ, "PYTHONPATH": os.pathsep.join(paths), **env}
        log = open_log(self._log_path(spec.name))
        try:
            args = [self.python, "-m", ENTRYPOINT_MODULES[entrypoint]]
            proc = subprocess.Popen(
                args,
                env=full_env,
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,  # Ctrl-C in the terminal reaches the driver only
            )
        finally:
            log.close()
        proof = identity(proc.pid)  # the start time is fixed at fork; the command line is ours
        if proof:
            self._proofs[proc.pid] = {**proof, "cmdline": args}
        return proc

    # -- server ----------------------------------------------------------------------------
    def start_server(self, spec: ClusterSpec, secrets: ClusterSecrets) -> ServerHandle:
        existing = self.server_handle(spec)
        if existing:
            return existing
        self.sweep()
        binary = find_redis_server(self.redis_server_path)
        port = free_port()
        env = server_env(spec, secrets, port)
        env.update({"DOCKERPARALLEL_REDIS_BIND": "127.0.0.1", "DOCKERPARALLEL_REDIS_SERVER": binary})
        cluster = _LocalCluster(port=port, secrets=secrets)
        cluster.server = self._spawn(spec, "server", env)
        self._clusters[spec.name] = cluster
        self._save_state(spec, cluster)
        client = connect("127.0.0.1", port, secrets.redis_password)
        deadline = time.monotonic() + 30
        started = False
        try:
            while True:
                if cluster.server.poll() is not None:
                    raise ProviderError(
                        f"local redis server exited with code {cluster.server.returncode}; "
                        f"see {self._log_path(spec.name)}"
                    )
                try:
                    client.ping()
                    break
                except redis.RedisError:
                    if time.monotonic() > deadline:
                        raise ProviderError("local redis server did not start within 30 s")
                    time.sleep(0.02)
            started = True
        finally:
            client.close()
            if not started:  # leave no process and no secrets behind (the log stays for the user)
                _terminate([cluster.server], [])
                self._clusters.pop(spec.name, None)
                self._state_path(spec.name).unlink(missing_ok=True)
        endpoint = Endpoint("127.0.0.1", port)
        return ServerHandle(driver=endpoint, workers=endpoint)

    def server_handle(self, spec: ClusterSpec) -> ServerHandle | None:
        state = self._load_state(spec.name)
        if not state or not is_ours(state.get("server_proc")):
            return None
        endpoint = Endpoint("127.0.0.1", int(state["port"]))
        return ServerHandle(driver=endpoint, workers=endpoint)

    def read_secrets(self, spec: ClusterSpec) -> ClusterSecrets | None:
        state = self._load_state(spec.name)
        if not state:
            return None
        return ClusterSecrets(state["redis_password"], bytes.fromhex(state["signing_key"]))

    def stop_server(self, spec: ClusterSpec) -> None:
        state = self._load_state(spec.name) or {}
        cluster = self._clusters.get(spec.name)
        procs = [cluster.server] if cluster and cluster.server else []
        _terminate(procs, [state.get("server_proc")] if not procs else [])
        if cluster:
            cluster.server = None

    # -- workers ---------------------------------------------------------------------------
    def set_worker_containers(
        self, spec: ClusterSpec, count: int, secrets: ClusterSecrets, server: ServerHandle
    ) -> None:
        cluster = self._clusters.setdefault(spec.name, _LocalCluster(server.workers.port, secrets))
        cluster.failed = cluster.failed or any(w.poll() not in (None, 0) for w in cluster.workers)
        cluster.workers = [w for w in cluster.workers if w.poll() is None]
        env = worker_env(spec, secrets, server.workers, tls=server.tls)
        while len(cluster.workers) < count:
            cluster.workers.append(self._spawn(spec, "worker", env))
        if len(cluster.workers) > count:
            extra, cluster.workers = cluster.workers[count:], cluster.workers[:count]
            _terminate(extra, [])
        self._save_state(spec, cluster)

    def worker_containers(self, spec: ClusterSpec) -> ContainerCounts:
        cluster = self._clusters.get(spec.name)
        if cluster is None:
            state = self._load_state(spec.name) or {}
            alive = sum(is_ours(p) for p in state.get("worker_procs", []))
        else:
            alive = sum(w.poll() is None for w in cluster.workers)
        return ContainerCounts(running=alive, initializing=0)

    # -- teardown, logs, discovery ---------------------------------------------------------
    def stop(self, spec: ClusterSpec) -> None:
        state = self._load_state(spec.name) or {}
        cluster = self._clusters.pop(spec.name, None)
        # Workers first, so none of them is left talking to a Redis that is going away. They saw
        # the cluster's `stopping` flag: give them a moment to flush their Prefect events.
        clean = False
        if cluster:
            _wait_for_exit(cluster.workers, WORKER_EXIT_GRACE)
            clean = not cluster.failed and all(w.poll() == 0 for w in cluster.workers)
            _terminate(cluster.workers, [])
            _terminate([cluster.server] if cluster.server else [], [])
        else:
            _terminate([], state.get("worker_procs", []))
            _terminate([], [state.get("server_proc")])
        self._state_path(spec.name).unlink(missing_ok=True)
        # A clean stop leaves nothing behind; after a failure the log stays for `logs NAME`,
        # and only the newest KEPT_LOGS logs of stopped clusters are kept.
        if clean:
            self._log_path(spec.name).unlink(missing_ok=True)
        else:
            prune_logs(KEPT_LOGS)

    def logs(self, spec: ClusterSpec, tail: int = 200) -> str:
        try:
            lines = self._log_path(spec.name).read_text(errors="replace").splitlines()
        except FileNotFoundError:
            return ""
        return "\n".join(lines[-tail:])

    def list_clusters(self) -> list[ClusterRecord]:
        records = []
        for path in sorted(state_dir().glob("*.json")):
            state = self._load_state(path.stem)
            if not state or not isinstance(state.get("name"), str):
                continue
            procs = [p for p in [state.get("server_proc"), *state.get("worker_procs", [])] if is_ours(p)]
            records.append(
                ClusterRecord(
                    name=state["name"],
                    provider=self.kind,
                    flow_run_id=state.get("flow_run_id"),
                    resources=tuple(f"pid:{p['pid']}" for p in procs),
                    alive=is_ours(state.get("server_proc")),
                )
            )
        return records

    def cleanup(self, cluster_name: str, keep_log: bool = False) -> list[str]:
        """Stop the cluster's processes (only those proven to be its own) and remove its state.

        A recorded PID whose start time or command line no longer matches belongs to someone
        else now: it is left alone, and only the state file (with the secrets) goes.
        """
        state = self._load_state(cluster_name) or {}
        procs = [p for p in [*state.get("worker_procs", []), state.get("server_proc")] if is_ours(p)]
        _terminate([], procs)
        self._state_path(cluster_name).unlink(missing_ok=True)
        if not keep_log:
            self._log_path(cluster_name).unlink(missing_ok=True)
        return [f"pid:{p['pid']}" for p in procs]

    def sweep(self) -> list[str]:
        """Remove the state (secrets included) of every dead cluster: a SIGKILLed driver's leftovers.

        Called at each cluster start; logs are kept for `clusters logs` until `clusters cleanup`.
        """
        swept = []
        for record in self.list_clusters():
            if not record.alive and record.name not in self._clusters:
                self.cleanup(record.name, keep_log=True)
                swept.append(record.name)
        return swept


WORKER_EXIT_GRACE = 4.0
KEPT_LOGS = 20  # logs of clusters that stopped after a failure (or were stopped from elsewhere)


def prune_logs(keep: int) -> None:
    """Remove all but the `keep` newest logs of clusters that are gone (no state file)."""
    directory = state_dir()
    stale = [p for p in directory.glob("*.log") if not (directory / f"{p.stem}.json").exists()]
    stale.sort(key=lambda p: p.stat().st_mtime, reverse=True)
    for path in stale[keep:]:
        path.unlink(missing_ok=True)


def _wait_for_exit(procs: list[subprocess.Popen[bytes]], timeout: float) -> None:
    deadline = time.monotonic() + timeout
    for proc in procs:
        try:
            proc.wait(timeout=max(0.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            return


def _terminate(procs: list[subprocess.Popen[bytes]], records: list[dict | None], grace: float = 5.0) -> None:
    """SIGTERM, then SIGKILL after `grace` seconds; reaps our own children.

    `records` are processes of another driver, known by their identity (`local_state.identity`):
    each is signalled only while it is still provably that process.
    """
    for proc in procs:
        if proc.poll() is None:
            proc.terminate()
    other = [r for r in records if r and is_ours(r)]
    for rec in other:
        _signal(rec, signal.SIGTERM)
    deadline = time.monotonic() + grace
    for proc in procs:
        try:
            proc.wait(timeout=max(0.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    for rec in other:
        while is_ours(rec) and time.monotonic() < deadline:
            time.sleep(0.05)
        _signal(rec, signal.SIGKILL)


def _signal(record: dict, sig: int) -> None:
    if is_ours(record):
        try:
            os.kill(record["pid"], sig)
        except ProcessLookupError:
            pass


def from_env() -> LocalDriver:
    return LocalDriver()
