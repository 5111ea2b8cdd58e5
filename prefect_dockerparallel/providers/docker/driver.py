"""DockerDriver: one cluster per flow run on a Docker engine (local socket, ssh:// or tcp:// + TLS).

The server and every worker container join the cluster's own bridge network, where workers reach
Redis by the server container's name. The flow runner reaches Redis on a port published on one
address of the engine's machine (127.0.0.1 for a local engine). `worker_cpu`/`worker_memory` become
the container's CPU quota and memory limit (times `workers_per_container`). Secrets travel as a
0600 file copied into each container before it starts, never in its environment or command.

What the engine does not do by itself is done here: exited worker containers are removed when the
cluster converges (their exit reason is kept, so a task lost with an OOM-killed container says so),
and a janitor process removes the cluster's stopped containers and network after a driver SIGKILL.
The Docker SDK is imported lazily (engine.py), only in this folder.
"""

from __future__ import annotations

import io
import logging
import secrets as random
import subprocess
import tarfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from ..base import Provider, ProviderError, server_env, worker_env
from .. import tls as tls_mod
from ..readiness import redis_answers
from ...specs import ClusterRecord, ClusterSecrets, ClusterSpec, ContainerCounts, Endpoint, ServerHandle
from . import inventory, janitor, provision
from . import objects as O
from .engine import EngineConfig, docker_sdk, driver_address, engine_machine, publish_address

log = logging.getLogger(__name__)
PULL_POLICIES = ("missing", "always", "never")
WORKER_EXIT_GRACE = 4.0  # at teardown, time for workers to flush their Prefect events and leave
STOP_TIMEOUT = 10  # docker stop's SIGTERM -> SIGKILL grace when scaling in


class DockerDriver(Provider):
    """Provider for one Docker engine; takes plain values (the DockerProvider block builds it)."""

    kind = "docker"

    def __init__(
        self,
        *,
        docker_host: str | None = None,
        tls_cert_path: str | None = None,
        use_ssh_client: bool = True,
        publish_address: str | None = None,
        server_address: str | None = None,
        pull: str = "missing",
        start_timeout: float = 120.0,
        janitor: bool = True,
        tls: bool = True,
        tls_lifetime: float = tls_mod.DEFAULT_LIFETIME,
    ) -> None:
        if pull not in PULL_POLICIES:
            raise ValueError(f"pull={pull!r} is invalid: choose one of {', '.join(PULL_POLICIES)}")
        self.engine = EngineConfig(docker_host, tls_cert_path, use_ssh_client)
        self.publish_address = publish_address
        self.server_address = server_address
        self.pull = pull
        self.start_timeout = start_timeout
        self.janitor = janitor
        self.tls = tls
        self.tls_lifetime = tls_lifetime
        self._client: Any = None
        self._lock = threading.Lock()
        self._images: set[str] = set()
        self._exits: dict[str, str] = {}  # worker container suffix -> how it ended (it is removed)
        self._janitors: dict[str, subprocess.Popen[bytes]] = {}

    def __repr__(self) -> str:
        return f"DockerDriver(docker_host={self.engine.host!r})"

    @property
    def client(self) -> Any:
        with self._lock:
            if self._client is None:
                self._client = self.engine.connect()
            return self._client

    @property
    def is_remote(self) -> bool:
        return True  # containers cannot reach the flow runner's loopback addresses

    # -- checks before anything is created -------------------------------------------------
    def validate(self, spec: ClusterSpec) -> None:
        slots = spec.container.workers_per_container
        sizes = (
            ("worker", f"worker_cpu={spec.worker_cpu} x workers_per_container={slots}",
             spec.worker_cpu * slots, f"worker_memory={spec.worker_memory}", spec.worker_memory),
            ("server", f"server_cpu={spec.server_cpu}", spec.server_cpu,
             f"server_memory={spec.server_memory}", spec.server_memory),
        )
        for _, _, _, mem_field, memory in sizes:
            if memory < O.MIN_MEMORY_MB:
                raise ValueError(f"{mem_field} MB is below Docker's minimum memory limit of {O.MIN_MEMORY_MB} MB")
        ncpu = int(self.client.info().get("NCPU") or 0)
        for role, cpu_field, units, _, _ in sizes:
            if ncpu and O.cpus(units) > ncpu:
                raise ValueError(
                    f"{cpu_field} asks for {O.cpus(units):g} CPUs per {role} container, but the Docker engine at "
                    f"{self.engine.host} has {ncpu}: lower it (1024 = 1 CPU) or use a bigger engine"
                )
        if self.pull == "never":
            self._ensure_image(spec.container.image)

    # -- server ----------------------------------------------------------------------------
    def start_server(self, spec: ClusterSpec, secrets: ClusterSecrets) -> ServerHandle:
        """Create the network and the server container (idempotent for a running cluster of the
        same name and secrets) and wait until Redis answers; a failed start removes what it made."""
        existing = self._server(spec)
        if existing and existing["State"] == "running":
            if self.read_secrets(spec) != secrets:
                raise ProviderError(
                    f"cluster {spec.name!r} already runs on {self.engine.host} with other credentials: "
                    f"reconnect to it, choose another name, or run `prefect-dockerparallel clusters cleanup "
                    f"--provider docker --name {spec.name}`"
                )
            handle = self._handle_of(spec, existing)
            if handle:
                return handle
        self._ensure_image(spec.container.server_image or spec.container.image)
        created = provision.ensure_network(self.client, spec)
        try:
            if existing:
                inventory.remove_containers(self.client, [existing])  # a stopped leftover of this name
            published = publish_address(self.engine.host, self.publish_address)
            tls = self._certificate(spec, published)
            env, hidden = O.split_secrets(server_env(spec, secrets, port=O.REDIS_PORT, tls=tls))
            config = O.server_container(spec, env, published, ca_pem=tls.ca_pem if tls else None)
            container = self._create(config, O.secrets_json(secrets, extra=hidden))
            handle = self._wait_for_redis(spec, container, secrets, tls.ca_pem if tls else None)
        except BaseException:
            if created:
                self._remove_quietly(spec)
            raise
        self._start_janitor(spec)
        log.info("cluster %s: Redis at %s on %s (workers use %s)", spec.name, handle.driver, self.engine.host,
                 handle.workers)
        return handle

    def stop_server(self, spec: ClusterSpec) -> None:
        found = self._server(spec)
        if found:
            inventory.remove_containers(self.client, [found])

    def server_handle(self, spec: ClusterSpec) -> ServerHandle | None:
        found = self._server(spec)
        return self._handle_of(spec, found) if found and found["State"] == "running" else None

    def read_secrets(self, spec: ClusterSpec) -> ClusterSecrets | None:
        """The secrets file of the running server container (how another process reconnects)."""
        found = self._server(spec)
        if not found:
            return None
        try:
            stream, _ = self.client.api.get_archive(found["Id"], O.SECRETS_PATH)
            with tarfile.open(fileobj=io.BytesIO(b"".join(stream))) as tar:
                member = tar.extractfile(Path(O.SECRETS_PATH).name)
                return O.secrets_from_json(member.read()) if member else None
        except (docker_sdk().errors.APIError, tarfile.TarError, KeyError):
            return None

    # -- workers ---------------------------------------------------------------------------
    def set_worker_containers(
        self, spec: ClusterSpec, count: int, secrets: ClusterSecrets, server: ServerHandle
    ) -> None:
        """Converge to `count` live worker containers: remove exited ones (keeping how they
        ended), create the missing ones, stop the surplus (SIGTERM: their tasks go back)."""
        current = inventory.containers(self.client, spec.name, "worker")
        for summary in [c for c in current if c["State"] in inventory.DEAD_STATES]:
            self._forget_exited(spec, summary)
        alive = [c for c in current if c["State"] not in inventory.DEAD_STATES]
        missing = count - len(alive)
        if missing > 0:
            self._ensure_image(spec.container.image)
            tls_mod.check_not_expired(spec.name, server.ca_pem)  # a new worker could not verify the server
            env, _ = O.split_secrets(worker_env(spec, secrets, server.workers, tls=server.tls, ca_pem=server.ca_pem))
            payload = O.secrets_json(secrets)

            def start_one(_: int) -> None:
                self._create(O.worker_container(spec, env, random.token_hex(3)), payload)

            self._in_parallel(start_one, range(missing))
        elif missing < 0:
            # not yet running first, then the newest: the oldest have warm caches
            surplus = sorted(alive, key=lambda c: (c["State"] == "running", -c.get("Created", 0)))[:-missing]
            self._in_parallel(self._stop_container, surplus)

    def worker_containers(self, spec: ClusterSpec) -> ContainerCounts:
        running = initializing = 0
        for c in inventory.containers(self.client, spec.name, "worker"):
            if c["State"] == "running":
                running += 1
            elif c["State"] in ("created", "restarting"):
                initializing += 1
        return ContainerCounts(running=running, initializing=initializing)

    def server_lost_reason(self, spec: ClusterSpec) -> str | None:
        """An exited or removed server container never comes back (no restart policy)."""
        found = self._server(spec)
        if found is None:
            return f"its container {O.server_name(spec)} was removed"
        if found["State"] not in inventory.DEAD_STATES:
            return None
        state = self.client.api.inspect_container(found["Id"])["State"]
        return inventory.exit_reason(state, inventory.name_of(found), spec.server_memory)

    def lost_worker_reason(self, spec: ClusterSpec, worker_id: str) -> str | None:
        suffix = O.suffix_of_worker_id(worker_id)
        if suffix is None:
            return None
        if suffix in self._exits:
            return self._exits[suffix]
        name = O.worker_name(spec, suffix)
        try:
            attrs = self.client.api.inspect_container(name)
        except docker_sdk().errors.NotFound:
            return None
        if (attrs["Config"].get("Labels") or {}).get(O.CLUSTER_LABEL) != spec.name:
            return None
        state = attrs["State"]
        if state.get("Status") in inventory.DEAD_STATES:
            return inventory.exit_reason(state, name, self._memory_mb(spec))
        if O.network_name(spec) not in (attrs.get("NetworkSettings", {}).get("Networks") or {}):
            return f"container {name} is running but was disconnected from network {O.network_name(spec)}"
        return None

    # -- teardown, leftovers, logs ---------------------------------------------------------
    def stop(self, spec: ClusterSpec) -> None:
        """Let workers leave on their own (they flush their Prefect events), then remove
        everything of the cluster by label."""
        running = [c["Id"] for c in inventory.containers(self.client, spec.name, "worker") if c["State"] == "running"]
        if not self.server_handle(spec):
            running = []  # no Redis: nothing tells them to leave, nothing is left to flush
        deadline = time.monotonic() + WORKER_EXIT_GRACE
        while running and time.monotonic() < deadline:
            time.sleep(0.1)
            live = {c["Id"] for c in inventory.containers(self.client, spec.name, "worker") if c["State"] == "running"}
            running = [i for i in running if i in live]
        removed = inventory.cleanup(self.client, spec.name)
        self._stop_janitor(spec.name)
        log.info("cluster %s: removed %d Docker objects", spec.name, len(removed))

    def detached(self, spec: ClusterSpec) -> None:
        """A warm cluster outlives this driver: its janitor now waits for the lease to end (the
        server container exits), then removes the stopped containers and the network."""
        self._stop_janitor(spec.name)
        if self.janitor:
            janitor.spawn(spec.name, self.engine, detached=True)

    def cleanup(self, cluster_name: str) -> list[str]:
        removed = inventory.cleanup(self.client, cluster_name)
        self._stop_janitor(cluster_name)
        return removed

    def list_clusters(self) -> list[ClusterRecord]:
        return inventory.list_clusters(self.client)

    def logs(self, spec: ClusterSpec, tail: int = 200) -> str:
        return inventory.logs(self.client, spec.name, tail)

    # -- helpers ---------------------------------------------------------------------------
    def _server(self, spec: ClusterSpec) -> dict[str, Any] | None:
        found = inventory.containers(self.client, spec.name, "server")
        return found[0] if found else None

    def _handle_of(self, spec: ClusterSpec, summary: dict[str, Any]) -> ServerHandle | None:
        ports = [p for p in summary.get("Ports") or [] if p.get("PrivatePort") == O.REDIS_PORT and p.get("PublicPort")]
        if not ports:
            return None
        host = driver_address(self.engine.host, ports[0].get("IP", ""), self.server_address)
        ca_pem = (summary.get("Labels") or {}).get(O.CA_LABEL) or None
        return ServerHandle(driver=Endpoint(host, int(ports[0]["PublicPort"])),
                            workers=Endpoint(O.server_name(spec), O.REDIS_PORT), tls=bool(ca_pem), ca_pem=ca_pem)

    def _certificate(self, spec: ClusterSpec, published: str) -> tls_mod.ClusterTLS | None:
        """The cluster's CA and server certificate, for every name a client uses; None (and a
        warning, at every start) when TLS was turned off."""
        if not self.tls:
            log.warning(
                "cluster %s: TLS is OFF (tls=False on the Docker provider): the Redis password, task "
                "payloads, results and the flow run's settings (PREFECT_API_KEY included) cross the "
                "network between this machine and %s unencrypted", spec.name, self.engine.host,
            )
            return None
        names = [O.server_name(spec), O.server_name(spec)[:63], published, self.server_address,
                 engine_machine(self.engine.host)]
        return tls_mod.generate(spec.name, [n for n in names if n], self.tls_lifetime)

    def _wait_for_redis(
        self, spec: ClusterSpec, container: Any, secrets: ClusterSecrets, ca_pem: str | None
    ) -> ServerHandle:
        deadline = time.monotonic() + self.start_timeout
        while True:
            container.reload()
            state = container.attrs["State"]
            if state["Status"] in inventory.DEAD_STATES:
                tail = container.logs(tail=20).decode(errors="replace").strip()
                reason = inventory.exit_reason(state, container.name, spec.server_memory)
                raise ProviderError(f"the server did not start: {reason}" + (f"\n{tail}" if tail else ""))
            bindings = (container.attrs["NetworkSettings"].get("Ports") or {}).get(f"{O.REDIS_PORT}/tcp") or []
            if bindings:
                host = driver_address(self.engine.host, bindings[0].get("HostIp", ""), self.server_address)
                handle = ServerHandle(driver=Endpoint(host, int(bindings[0]["HostPort"])),
                                      workers=Endpoint(O.server_name(spec), O.REDIS_PORT),
                                      tls=bool(ca_pem), ca_pem=ca_pem)
                if redis_answers(handle.driver, secrets.redis_password, timeout=2, ca_pem=ca_pem):
                    return handle
            if time.monotonic() > deadline:
                raise ProviderError(
                    f"Redis in container {container.name} did not answer within {self.start_timeout:.0f} s"
                    + (f" at {handle.driver}: check that this machine reaches that address (set "
                       "publish_address / server_address)" if bindings else "")
                )
            time.sleep(0.1)

    def _forget_exited(self, spec: ClusterSpec, summary: dict[str, Any]) -> None:
        name = inventory.name_of(summary)
        try:
            state = self.client.api.inspect_container(summary["Id"])["State"]
        except docker_sdk().errors.NotFound:
            return
        reason = inventory.exit_reason(state, name, self._memory_mb(spec))
        suffix = name.rpartition("-w-")[2]
        self._exits[suffix] = reason
        if state.get("ExitCode"):
            log.warning("cluster %s: %s", spec.name, reason)
        inventory.remove_containers(self.client, [summary])

    def _stop_container(self, summary: dict[str, Any]) -> None:
        errors = docker_sdk().errors
        try:
            self.client.api.stop(summary["Id"], timeout=STOP_TIMEOUT)
        except errors.NotFound:
            return
        except errors.APIError as exc:
            log.warning("could not stop container %s: %s", inventory.name_of(summary), exc)
        inventory.remove_containers(self.client, [summary])

    def _memory_mb(self, spec: ClusterSpec) -> int:
        return spec.worker_memory * spec.container.workers_per_container

    @staticmethod
    def _in_parallel(fn: Any, items: Any) -> None:
        items = list(items)
        if len(items) <= 1:
            for item in items:
                fn(item)
            return
        with ThreadPoolExecutor(max_workers=min(8, len(items))) as pool:
            for _ in pool.map(fn, items):  # re-raises the first error
                pass

    def _create(self, config: dict[str, Any], secrets_json: bytes) -> Any:
        return provision.create_container(self.client, config, provision.secrets_files(secrets_json), self.engine.host)

    def _ensure_image(self, image: str) -> None:
        if image not in self._images:
            provision.ensure_image(self.client, image, self.pull, self.engine.host)
            self._images.add(image)

    def _start_janitor(self, spec: ClusterSpec) -> None:
        """The process that removes the cluster's leftovers if this one dies (see janitor.py)."""
        if self.janitor and spec.name not in self._janitors:
            self._janitors[spec.name] = janitor.spawn(spec.name, self.engine)

    def _stop_janitor(self, cluster: str) -> None:
        proc = self._janitors.pop(cluster, None)
        if proc is not None:
            janitor.terminate(proc)

    def _remove_quietly(self, spec: ClusterSpec) -> None:
        try:
            inventory.cleanup(self.client, spec.name)
        except Exception as exc:  # noqa: BLE001 - the original error matters more
            log.warning("could not remove cluster %s after a failed start: %s", spec.name, exc)

def from_env() -> DockerDriver:
    """Driver for the engine DOCKER_HOST names (the local socket by default): the CLI's default."""
    return DockerDriver()
