"""DockerCluster: the seed's cluster lifecycle, provider-agnostic.

start / stop / start_server / stop_server / is_server_running / set_worker_number /
worker_numbers / update / exists / reconnect / stop_on_exit, plus the driver's heartbeat thread
(driver_beat.py: the dead-man's switch, the reaper of lost workers' tasks, healing).
"""

from __future__ import annotations

import dataclasses
import logging
import os
import threading
import time
import weakref
from typing import Any

from .adaptive import AdaptivePolicy, Autoscaler
from .runner.futures import ResultListener
from .protocol import Signer, TaskQueue, connect
from .protocol.blobs import BlobStore
from .protocol.queue import versions
from .providers.base import Provider
from .providers.tls import check_not_expired
from .specs import ClusterSecrets, ClusterSpec, ContainerSpec, ServerHandle, WorkerNumbers, new_cluster_name

log = logging.getLogger("prefect_dockerparallel.cluster")

LOCAL_CONTAINER = ContainerSpec(workers_per_container=1, install_self=None)
STOPPED = "the cluster stopped before the task finished"


def as_driver(provider: Any) -> Provider:
    """A provider driver from a driver, a provider block, or None (the local default)."""
    if provider is None:
        from .providers.local import LocalDriver

        return LocalDriver()
    if isinstance(provider, Provider):
        return provider
    if hasattr(provider, "build_provider"):
        return provider.build_provider()
    raise ValueError(
        f"provider={provider!r} is not a provider: pass LocalProvider(), DockerProvider(...), "
        "ECSFargateProvider(...), AKSProvider(...) or a prefect_dockerparallel.providers.base.Provider"
    )


def as_container(container: Any, driver: Provider) -> ContainerSpec:
    if container is None:
        return LOCAL_CONTAINER if not driver.is_remote else ContainerSpec()
    if isinstance(container, ContainerSpec):
        return container
    if hasattr(container, "to_spec"):
        return container.to_spec()
    raise ValueError(f"container={container!r} is not a WorkerContainer or ContainerSpec")


class DockerCluster:
    """One cluster: a Redis server and worker containers from one provider."""

    def __init__(
        self,
        provider: Any = None,
        container: Any = None,
        workers: int | None = None,
        worker_cpu: int = 1024,
        worker_memory: int = 2048,
        server_cpu: int = 256,
        server_memory: int = 512,
        idle_timeout: float = 60.0,
        name: str | None = None,
        flow_run_id: str | None = None,
        tags: dict[str, str] | None = None,
        max_attempts: int = 3,
        max_payload_bytes: int = 512 * 1024 * 1024,
        stop_on_exit: bool = True,
        heal: bool = True,
        min_workers: int | None = None,
        max_workers: int | None = None,
        scale_down_after: float | None = None,
        keep_alive: float | None = None,
    ):
        if workers is not None and workers < 0:
            raise ValueError(f"workers={workers} is invalid: the number of workers must be >= 0")
        policy = AdaptivePolicy.from_fields(min_workers, max_workers, scale_down_after)
        self.autoscaler = Autoscaler(policy) if policy else None
        if policy is not None:  # adaptive: start at `workers` if given (within the bounds), else the minimum
            workers = policy.clamp(policy.min_workers if workers is None else workers)
        self.driver = as_driver(provider)
        self.spec = ClusterSpec(
            name=name or new_cluster_name(),
            container=as_container(container, self.driver),
            workers=(os.cpu_count() or 2) if workers is None else workers,
            worker_cpu=worker_cpu,
            worker_memory=worker_memory,
            server_cpu=server_cpu,
            server_memory=server_memory,
            idle_timeout=idle_timeout,
            tags=tuple(sorted((tags or {}).items())),
            flow_run_id=flow_run_id,
            max_attempts=max_attempts,
            max_payload_bytes=max_payload_bytes,
        )
        if keep_alive is not None and (isinstance(keep_alive, bool) or not keep_alive > 0):
            raise ValueError(f"keep_alive={keep_alive!r} is invalid: give the seconds a warm cluster stays up "
                             "after its last flow run, a number > 0 (or None to tear down at once)")
        self.keep_alive = float(keep_alive) if keep_alive else None
        self._prepared: Any = None
        if self.keep_alive and name is None:
            from .warm import warm_cluster_name

            # Workers of a warm cluster bootstrapped with the code of the run that started them:
            # other code (the package's sources, the user's modules) must get another cluster.
            self._prepare_shipping()
            shipped = self._prepared.digests() if self._prepared is not None else ()
            self.spec = dataclasses.replace(
                self.spec, name=warm_cluster_name(self.spec, self.keep_alive, self.driver.kind, shipped)
            )
        if self.keep_alive:
            stop_on_exit = False  # a warm cluster outlives this object; its lease stops it
        self.driver.validate(self.spec)
        self.expected = self.spec.workers
        self.stop_on_exit = stop_on_exit
        self.heal = heal
        self.secrets: ClusterSecrets | None = None
        self.server: ServerHandle | None = None
        self.queue: TaskQueue | None = None
        self.signer: Signer | None = None
        self.dead_lettered = 0  # elements put aside in Redis (oversized, forged, un-ackable): reported
        self.blobs: BlobStore | None = None
        self.listener: ResultListener | None = None
        self.extra_meta: dict[str, str] = {}
        self.shipment: Any = None  # what the last publish of worker code sent (shipping.Shipment)
        self.started_at: float | None = None
        self._beat_stop = threading.Event()
        self._beat: threading.Thread | None = None
        self._lock = threading.RLock()
        self._finalizer: weakref.finalize | None = None
        # Where scaling decisions are told: the task runner sets its flow run's logger (the UI).
        self.decision_log: logging.Logger | logging.LoggerAdapter = log

    @property
    def name(self) -> str:
        return self.spec.name

    def __repr__(self) -> str:
        status = "Running" if self.queue else "Stopped"
        return f"DockerCluster(name={self.name!r}, provider={self.driver.kind}, server={status}, workers={self.expected})"

    # -- lifecycle -------------------------------------------------------------------------
    def start(self) -> "DockerCluster":
        with self._lock:
            if self.queue is None:
                self.start_server()
            self.set_worker_number(self.expected)
            if self.autoscaler is not None and not self.autoscaler.history:
                self.autoscaler.history.append((self.started_at or time.monotonic(), self.expected))
        return self

    def start_server(self) -> None:
        with self._lock:
            if self.queue is not None:
                return
            self._prepare_shipping()  # a project too large to ship fails before anything starts
            self.secrets = ClusterSecrets.generate()
            self.started_at = time.monotonic()
            log.info("starting Redis server of cluster %s on %s", self.name, self.driver.kind)
            self.server = self.driver.start_server(self.spec, self.secrets)
            self._connect()

    def _connect(self) -> None:
        assert self.server and self.secrets
        client = connect(self.server.driver.host, self.server.driver.port, self.secrets.redis_password,
                         self.server.tls, ca_pem=self.server.ca_pem, tls_name=self.server.tls_name)
        self.queue = TaskQueue(client, self.name)
        self.signer = Signer(self.secrets.signing_key, self.spec.max_payload_bytes, cluster=self.name)
        self.blobs = BlobStore(self.queue, self.signer)
        self.queue.beat_driver(self.lease_ttl)
        self.queue.publish_meta(self._meta())
        self._ship()
        self.listener = ResultListener(self.queue, self.signer)
        self._beat_stop.clear()
        self._beat = threading.Thread(target=self._heartbeat_loop, name="dp-driver-heartbeat", daemon=True)
        self._beat.start()
        if self.stop_on_exit and self._finalizer is None:
            self._finalizer = weakref.finalize(self, DockerCluster._stop_quietly, self.driver, self.spec)

    def _prepare_shipping(self) -> None:
        """Build the archives the workers' bootstrap fetches (remote providers only: local
        workers share this machine's files)."""
        if self.driver.is_remote and self._prepared is None:
            from .shipping import prepare

            self._prepared = prepare(self.spec.container)

    def _ship(self) -> None:
        self._prepare_shipping()
        if self._prepared is not None and self.queue is not None and self.secrets is not None:
            from .shipping import ship

            self.shipment = ship(self.queue.redis, self.name, self.secrets.signing_key, self._prepared)

    def _meta(self) -> dict[str, str]:
        """What every joining worker reads first: versions, and the size it may read from Redis."""
        return {**versions(), "max_payload_bytes": str(self.spec.max_payload_bytes), **self.extra_meta}

    def is_server_running(self) -> bool:
        return self.driver.server_handle(self.spec) is not None

    def exists(self) -> bool:
        """True when a server for this cluster name is running (seed: clusterExists)."""
        return self.is_server_running()

    def reconnect(self) -> "DockerCluster":
        """Attach to a running cluster of the same name (seed: reconnect)."""
        with self._lock:
            handle = self.driver.server_handle(self.spec)
            secrets = self.driver.read_secrets(self.spec)
            if handle is None or secrets is None:
                raise RuntimeError(f"cluster {self.name!r} is not running on {self.driver.kind}; start() it instead")
            check_not_expired(self.name, handle.ca_pem)
            self.server, self.secrets = handle, secrets
            self.started_at = time.monotonic()  # this object's share of the cluster's time
            self._connect()
            self.expected = self.worker_numbers().running or self.expected
        return self

    @property
    def lease_ttl(self) -> float:
        """How long the cluster lives on after this driver's last heartbeat (dead-man's switch)."""
        return max(self.spec.idle_timeout, self.keep_alive or 0.0)

    def detach(self, pending: tuple[str, str] | None = None) -> None:
        """Leave a warm cluster running for the next flow run (see warm.py)."""
        from .warm import detach

        detach(self, pending)

    def stop_server(self) -> None:
        self._shutdown_channel()
        self.driver.stop_server(self.spec)

    def stop(self, pending: tuple[str, str] = ("lost", STOPPED)) -> None:
        """Remove every process, container and Redis key of the cluster.

        Futures still pending are resolved with `pending` (status, message) only once the workers
        are gone, so that no engine can report a later state over the one the driver decided."""
        with self._lock:
            listener = self.listener
            self._shutdown_channel(fail_pending=False)
            try:
                self.driver.stop(self.spec)
            finally:
                if listener is not None:
                    listener.fail_all(pending[1], status=pending[0])
            if self._finalizer:
                self._finalizer.detach()
                self._finalizer = None
            log.info("cluster %s stopped", self.name)

    def disconnect(self) -> None:
        """Stop this object's heartbeat and listener; the cluster keeps running (reconnect later)."""
        self._stop_threads()
        if self.queue:
            self.queue.redis.close()
            self.queue = None

    def _stop_threads(self, fail_pending: bool = True) -> None:
        self._beat_stop.set()
        if self._beat:
            self._beat.join(timeout=10)
            self._beat = None
        if self.listener:
            self.listener.close(STOPPED if fail_pending else None)
            self.listener = None

    def _shutdown_channel(self, fail_pending: bool = True) -> None:
        self._stop_threads(fail_pending)
        if self.queue:
            try:
                self.queue.mark_stopping()
                slots = self.queue.joined_slots()
                self.queue.purge()
                self.queue.mark_stopping()  # purge removed it; workers still polling see it
                self.queue.wake_for_stop(slots)
            except Exception as exc:  # noqa: BLE001 - server already gone
                log.debug("could not purge Redis keys: %s", exc)
            self.queue.redis.close()
            self.queue = None

    @staticmethod
    def _stop_quietly(driver: Provider, spec: ClusterSpec) -> None:
        try:
            driver.stop(spec)
        except Exception:  # noqa: BLE001 - interpreter exit
            pass

    def __enter__(self) -> "DockerCluster":
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        if self.stop_on_exit:
            self.stop()

    # -- workers ---------------------------------------------------------------------------
    def set_worker_number(self, n: int) -> None:
        if n < 0:
            raise ValueError(f"workers={n} is invalid: the number of workers must be >= 0")
        with self._lock:
            previous, self.expected = self.expected, n
            if self.queue is None or self.server is None or self.secrets is None:
                return  # seed: with no server, only the expectation changes
            log.info("setting worker number of %s to %d", self.name, n)
            self.driver.set_worker_containers(self.spec, self.spec.containers_for(n), self.secrets, self.server)
            wpc = self.spec.container.workers_per_container
            surplus_slots = self.spec.containers_for(n) * wpc - n
            if n < previous and surplus_slots > 0:
                self.queue.retire(surplus_slots)

    def _adapt(self) -> None:
        """One adaptive-scaling step, from the heartbeat thread (see adaptive.py)."""
        if self.autoscaler is not None and self.queue is not None:
            from .adaptive import step

            step(self)

    def worker_numbers(self) -> WorkerNumbers:
        running = self.queue.live_workers() if self.queue else 0
        counts = self.driver.worker_containers(self.spec)
        started = (counts.running + counts.initializing) * self.spec.container.workers_per_container
        initializing = max(0, min(self.expected, started) - running)
        return WorkerNumbers(expected=self.expected, running=running, initializing=initializing)

    def wait_for_workers(self, timeout: float = 300.0, interval: float = 0.5) -> WorkerNumbers:
        """Block until every expected worker slot has joined (start() and set_worker_number()
        return as soon as the containers are asked for); returns the numbers then."""
        deadline = time.monotonic() + timeout
        while True:
            numbers = self.worker_numbers()
            if numbers.running >= numbers.expected:
                return numbers
            if time.monotonic() > deadline:
                raise TimeoutError(
                    f"cluster {self.name}: {numbers} after {timeout:.0f} s; see cluster.logs() for why "
                    "workers did not join"
                )
            time.sleep(interval)  # polling the provider and Redis, not synchronisation

    def update(self) -> WorkerNumbers:
        """Reconcile: bring back lost worker containers (seed: update)."""
        with self._lock:
            if self.queue and self.server and self.secrets:
                counts = self.driver.worker_containers(self.spec)
                if counts.running + counts.initializing < self.spec.containers_for(self.expected):
                    self.driver.set_worker_containers(
                        self.spec, self.spec.containers_for(self.expected), self.secrets, self.server
                    )
        return self.worker_numbers()

    def logs(self, tail: int = 200) -> str:
        return self.driver.logs(self.spec, tail=tail)

    def executor(self) -> Any:
        from .executor import ClusterExecutor

        if self.queue is None:
            self.start()
        return ClusterExecutor(self)

    # -- driver heartbeat, reaper, healing (driver_beat.py) ----------------------------------
    def _heartbeat_loop(self) -> None:
        from .driver_beat import heartbeat_loop

        heartbeat_loop(self)

    def _beat_once(self) -> None:
        from .driver_beat import beat_once

        beat_once(self)
