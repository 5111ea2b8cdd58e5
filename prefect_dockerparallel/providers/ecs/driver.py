"""AWS ECS Fargate provider: a Redis server task and worker tasks per cluster (flow run).

Account-level pieces (ECS cluster, VPC, subnet, gateway, routes, execution role, log group) are
found by tag/name or created once and reused. Per-run pieces (tasks, a security group, SSM
SecureString parameters holding the secrets, task definition revisions) carry the cluster's
labels and are removed by `stop()` or, after a crash, by `clusters cleanup --provider ecs`.
Only this package imports boto3 (through `aws.py`).
"""

from __future__ import annotations

import logging
import os
import re
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from ...specs import ClusterRecord, ClusterSecrets, ClusterSpec, ContainerCounts, Endpoint, ServerHandle
from . import inventory as inv
from . import secrets as sec
from .. import tls as tls_mod
from ..base import Provider, ProviderError, server_env, worker_env
from .aws import make_client, make_session, with_backoff
from .network import (
    Network,
    create_run_security_group,
    detect_egress_cidr,
    ensure_network,
    find_run_security_groups,
)
from .server import ca_of, certificate, endpoints, server_command, tls_name, wait_ready
from .settings import EcsSettings
from .tasks import (
    ContainerPlan,
    Launch,
    TaskInfo,
    cluster_tasks,
    describe,
    ensure_ecs_cluster,
    register_task_definition,
    run_tasks,
    stop_tasks,
)
from .sizes import FargateSize, check_exact, worker_container_size

log = logging.getLogger("prefect_dockerparallel.ecs")


@dataclass
class _Run:
    """What this driver instance remembers of one cluster (everything is also findable by tag)."""

    security_group: str | None = None
    secret_arns: dict[str, str] = field(default_factory=dict)
    task_definitions: list[str] = field(default_factory=list)
    worker_definition: tuple[str, str] | None = None  # (server address it names, ARN)
    launched: set[str] = field(default_factory=set)
    stopped_by_us: set[str] = field(default_factory=set)
    reported: set[str] = field(default_factory=set)
    failures: list[str] = field(default_factory=list)


class EcsDriver(Provider):
    """Runs the cluster's containers as Fargate tasks. Takes plain values (no Prefect, no blocks):
    `EcsDriver(region_name=..., cluster_name=..., ...)` with the fields of `EcsSettings`.

    `endpoint_map` rewrites the address the driver dials for Redis (SSH tunnels, port forwards,
    the tests' fake agent); workers always dial the server task's private IP.
    """

    kind = "ecs"

    def __init__(
        self,
        settings: EcsSettings | None = None,
        *,
        endpoint_map: Callable[[Endpoint], Endpoint] | None = None,
        **kwargs: Any,
    ) -> None:
        self.cfg = settings or EcsSettings(**kwargs)
        self.endpoint_map = endpoint_map
        self._lock = threading.RLock()
        self._clients: dict[str, Any] = {}
        self._network: Network | None = None
        self._execution_role_arn = self.cfg.execution_role_arn
        self._runs: dict[str, _Run] = {}
        self._cas: dict[str, str | None] = {}  # server task definition ARN -> its cluster CA

    # -- plumbing ---------------------------------------------------------------------------
    def __repr__(self) -> str:
        return f"EcsDriver({self.cfg!r})"

    def __getstate__(self) -> dict[str, Any]:
        """Pickled copies (shipped with a task runner) carry no credentials and no clients."""
        state = self.__dict__.copy()
        cfg = self.cfg
        state.update(_lock=None, _clients={}, _runs={}, _network=None)
        state["cfg"] = EcsSettings(
            **{
                **cfg.__dict__,
                "aws_access_key_id": None,
                "aws_secret_access_key": None,
                "aws_session_token": None,
            }
        )
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._lock = threading.RLock()

    def client(self, service: str) -> Any:
        """One boto3 client per service for the driver's lifetime (clients are thread-safe)."""
        with self._lock:
            if service not in self._clients:
                if "_session" not in self._clients:
                    c = self.cfg
                    self._clients["_session"] = make_session(
                        c.region_name,
                        c.aws_access_key_id,
                        c.aws_secret_access_key,
                        c.aws_session_token,
                        c.profile_name,
                    )
                self._clients[service] = make_client(
                    self._clients["_session"], service, self.cfg.endpoint_url
                )
            return self._clients[service]

    def _run(self, name: str) -> _Run:
        with self._lock:
            return self._runs.setdefault(name, _Run())

    # -- validation -------------------------------------------------------------------------
    def validate(self, spec: ClusterSpec) -> None:
        """Fargate sizes, before anything is created or paid for."""
        check_exact(spec.server_cpu, spec.server_memory, "server")
        self.worker_size(spec)

    def worker_size(self, spec: ClusterSpec) -> FargateSize:
        return worker_container_size(
            spec.worker_cpu, spec.worker_memory, spec.container.workers_per_container
        )

    # -- account-level and per-run pieces ---------------------------------------------------
    def _prepare_account(self) -> Network:
        with self._lock:
            if self._network is not None:
                return self._network
            cfg = self.cfg
            ensure_ecs_cluster(self.client("ecs"), cfg.cluster_name, cfg.spot_workers)
            network = ensure_network(self.client("ec2"), cfg.cluster_name, **cfg.given_network)
            if not self._execution_role_arn:
                self._execution_role_arn = sec.ensure_execution_role(
                    self.client("iam"), cfg.execution_role_name, cfg.cluster_name
                )
            assert cfg.log_group
            sec.ensure_log_group(self.client("logs"), cfg.log_group, cfg.log_retention_days, cfg.cluster_name)
            self._network = network
            return network

    def _security_groups(self, spec: ClusterSpec, network: Network) -> tuple[str, ...]:
        run = self._run(spec.name)
        if run.security_group is None:
            cidr = self.cfg.runner_cidr or detect_egress_cidr(self.cfg.ip_check_url)
            run.security_group = create_run_security_group(
                self.client("ec2"),
                network.vpc_id,
                f"{self.cfg.security_group_name}-{spec.name}",
                spec.labels,
                cidr,
                self.cfg.redis_port,
                ssh=bool(spec.container.ssh_public_key),
            )
        extra = (self.cfg.security_group_id,) if self.cfg.security_group_id else ()
        return (run.security_group, *extra)

    def _register(self, spec: ClusterSpec, role: str, env: dict[str, str]) -> str:
        """A per-run task definition revision: plain env inline, secret env as SSM references."""
        cfg, run = self.cfg, self._run(spec.name)
        plain, secret = sec.split_env(env)
        missing = {k: v for k, v in secret.items() if k not in run.secret_arns}
        if missing:
            run.secret_arns.update(
                sec.put_secrets(self.client("ssm"), cfg.cluster_name, spec.name, missing, spec.labels)
            )
        server = role == "server"
        assert self._execution_role_arn and cfg.log_group
        plan = ContainerPlan(
            family=cfg.server_task_family if server else cfg.worker_task_family,
            role=role,
            image=(spec.container.server_image or spec.container.image) if server else spec.container.image,
            command=server_command(spec) if server else spec.container.startup_script("worker"),
            size=FargateSize(spec.server_cpu, spec.server_memory) if server else self.worker_size(spec),
            environment=plain,
            secrets={k: run.secret_arns[k] for k in secret},
            labels=spec.labels,
            log_group=cfg.log_group,
            log_prefix=spec.name,
            region=cfg.region_name,
            execution_role_arn=self._execution_role_arn,
            task_role_arn=cfg.task_role_arn,
            port=cfg.redis_port if server else None,
            stop_timeout=30 if server else 120,  # workers re-queue their tasks on SIGTERM (Spot)
            cpu_architecture=cfg.cpu_architecture,
        )
        arn = register_task_definition(self.client("ecs"), plan)
        run.task_definitions.append(arn)
        return arn

    def _launch(self, spec: ClusterSpec, role: str, definition: str, count: int) -> list[str]:
        network = self._prepare_account()
        launch = Launch(
            ecs_cluster=self.cfg.cluster_name,
            task_definition=definition,
            cluster=spec.name,
            role=role,
            labels=spec.labels,
            subnets=(network.subnet_id,),
            security_groups=self._security_groups(spec, network),
            assign_public_ip=self.cfg.assign_public_ip,
            spot=self.cfg.spot_workers and role == "worker",
            platform_version=self.cfg.platform_version,
        )
        base = self.cfg.backoff_base
        arns, failures = run_tasks(
            self.client("ecs"), launch, count, backoff=lambda call, what: with_backoff(call, what, base=base)
        )
        run = self._run(spec.name)
        run.launched.update(arns)
        run.failures.extend(failures)
        return arns

    def _tasks(self, spec: ClusterSpec, role: str) -> list[TaskInfo]:
        run = self._run(spec.name)
        pending = tuple(a for a in run.launched if a not in run.reported and a not in run.stopped_by_us)
        tasks = cluster_tasks(self.client("ecs"), self.cfg.cluster_name, spec.name, pending)
        return [t for t in tasks if t.role == role]

    # -- server -----------------------------------------------------------------------------
    def start_server(self, spec: ClusterSpec, secrets: ClusterSecrets) -> ServerHandle:
        self.validate(spec)
        existing = [t for t in self._tasks(spec, "server") if t.active]
        if existing:  # idempotent: same cluster name, same server
            return self._wait(spec, existing[0].arn, secrets)
        try:
            self._prepare_account()
            tls = certificate(self.cfg, spec)
            env = server_env(spec, secrets, port=self.cfg.redis_port, tls=tls)
            definition = self._register(spec, "server", env)
            if tls:
                self._cas[definition] = tls.ca_pem
            (arn,) = self._launch(spec, "server", definition, 1)
            log.info(
                "cluster %s: server task %s started; waiting for Redis", spec.name, arn.rsplit("/", 1)[-1]
            )
            return self._wait(spec, arn, secrets)
        except BaseException:
            log.warning("cluster %s: server did not start; removing what was created", spec.name)
            try:
                self.stop(spec)
            except Exception as cleanup_exc:  # report the original error, not the cleanup's
                log.warning("cleanup after the failed start failed too: %s", cleanup_exc)
            raise

    def _wait(self, spec: ClusterSpec, arn: str, secrets: ClusterSecrets) -> ServerHandle:
        ecs, ec2 = self.client("ecs"), self.client("ec2")
        found = describe(ecs, self.cfg.cluster_name, [arn])
        ca_pem = ca_of(ecs, found[0], self._cas) if found else None
        return wait_ready(self.cfg, ecs, ec2, spec, arn, secrets.redis_password, self.endpoint_map, ca_pem)

    def server_handle(self, spec: ClusterSpec) -> ServerHandle | None:
        running = [t for t in self._tasks(spec, "server") if t.running]
        if not running:
            return None
        return endpoints(self.cfg, self.client("ec2"), running[0], self.endpoint_map,
                         ca_of(self.client("ecs"), running[0], self._cas), tls_name(spec))

    def stop_server(self, spec: ClusterSpec) -> None:
        arns = [t.arn for t in self._tasks(spec, "server") if t.active]
        self._run(spec.name).stopped_by_us.update(arns)
        stop_tasks(self.client("ecs"), self.cfg.cluster_name, arns, "dockerparallel: stop_server")

    def read_secrets(self, spec: ClusterSpec) -> ClusterSecrets | None:
        return sec.read_secrets(self.client("ssm"), self.cfg.cluster_name, spec.name)

    # -- workers ----------------------------------------------------------------------------
    def set_worker_containers(
        self, spec: ClusterSpec, count: int, secrets: ClusterSecrets, server: ServerHandle
    ) -> None:
        self.validate(spec)
        run = self._run(spec.name)
        workers = [t for t in self._worker_tasks(spec) if t.active]
        if count > len(workers):
            if len(run.failures) >= self.cfg.max_worker_failures:
                raise ProviderError(
                    f"cluster {spec.name}: {len(run.failures)} worker tasks failed to start or crashed; "
                    f"not starting more. Last reasons: {'; '.join(run.failures[-3:])}"
                )
            address = str(server.workers)
            tls_mod.check_not_expired(spec.name, server.ca_pem)  # a new worker could not verify the server
            if run.worker_definition is None or run.worker_definition[0] != address:
                env = worker_env(spec, secrets, server.workers, tls=server.tls, ca_pem=server.ca_pem,
                                 tls_name=server.tls_name)
                run.worker_definition = (address, self._register(spec, "worker", env))
            self._launch(spec, "worker", run.worker_definition[1], count - len(workers))
        elif count < len(workers):
            # Initializing tasks hold no work yet: stop those first.
            victims = sorted(workers, key=lambda t: (t.running, t.arn))[: len(workers) - count]
            run.stopped_by_us.update(t.arn for t in victims)
            reason = f"dockerparallel: scale down to {count}"
            stop_tasks(self.client("ecs"), self.cfg.cluster_name, [t.arn for t in victims], reason)

    def _worker_tasks(self, spec: ClusterSpec) -> list[TaskInfo]:
        """Worker tasks, reporting once, with its stoppedReason, each that stopped on its own."""
        run = self._run(spec.name)
        tasks = self._tasks(spec, "worker")
        for t in tasks:
            if t.last_status == "STOPPED" and t.arn not in run.stopped_by_us and t.arn not in run.reported:
                run.reported.add(t.arn)
                why = t.why_stopped()
                if t.stop_kind == "normal":
                    log.info("cluster %s: worker task %s exited: %s", spec.name, t.short_id, why)
                    continue
                if t.stop_kind == "failed":  # interrupted Spot tasks do not count as failures
                    run.failures.append(f"{t.short_id}: {why}")
                log.warning("cluster %s: worker task %s stopped: %s", spec.name, t.short_id, why)
        return tasks

    def worker_containers(self, spec: ClusterSpec) -> ContainerCounts:
        active = [t for t in self._worker_tasks(spec) if t.active]
        running = sum(1 for t in active if t.running)
        return ContainerCounts(running=running, initializing=len(active) - running)

    def lost_worker_reason(self, spec: ClusterSpec, worker_id: str) -> str | None:
        """Why a lost worker's task stopped (OOM, Spot reclaim, exit code): a worker id starts
        with its container's hostname, on Fargate the task's private DNS name (ip-10-0-1-23...)."""
        found = re.match(r"ip-(\d+)-(\d+)-(\d+)-(\d+)(?!\d)", worker_id)
        if not found:
            return None
        ip, run = ".".join(found.groups()), self._run(spec.name)
        for t in cluster_tasks(self.client("ecs"), self.cfg.cluster_name, spec.name, tuple(run.launched)):
            if t.private_ip == ip and t.role == "worker" and t.desired_status == "STOPPED":
                return f"worker task {t.short_id} stopped: {t.why_stopped()}"
        return None

    def worker_failures(self, spec: ClusterSpec) -> list[str]:
        """`stoppedReason`s of worker tasks that stopped on their own (for the cluster's status)."""
        return list(self._run(spec.name).failures)

    # -- teardown, inventory, logs ----------------------------------------------------------
    def stop(self, spec: ClusterSpec) -> None:
        self._teardown(spec.name, "dockerparallel: cluster stopped")

    def _teardown(self, name: str, reason: str) -> list[str]:
        cfg, run = self.cfg, self._run(name)
        ecs, ec2, ssm = self.client("ecs"), self.client("ec2"), self.client("ssm")
        found = inv.Found(
            tasks=[
                t
                for t in cluster_tasks(ecs, cfg.cluster_name, name, tuple(run.launched))
                if t.last_status != "STOPPED"
            ],
            security_groups=[g["GroupId"] for g in find_run_security_groups(ec2, name)],
            parameters=sec.find_parameters(ssm, cfg.cluster_name).get(name, []),
            # revisions this driver registered; a driver that did not start the cluster searches
            task_definitions=list(run.task_definitions)
            or inv.tagged_task_definitions(ecs, cfg.families, name).get(name, []),
        )
        run.stopped_by_us.update(t.arn for t in found.tasks)
        removed = inv.remove(
            ecs, ec2, ssm, cfg.cluster_name, found, reason, cfg.stop_timeout, cfg.poll_interval
        )
        with self._lock:
            self._runs.pop(name, None)
        return removed

    def list_clusters(self) -> list[ClusterRecord]:
        ecs, ec2, ssm = self.client("ecs"), self.client("ec2"), self.client("ssm")
        return inv.records(inv.inventory(ecs, ec2, ssm, self.cfg.cluster_name, self.cfg.families))

    def cleanup(self, cluster_name: str) -> list[str]:
        return self._teardown(cluster_name, "dockerparallel: clusters cleanup")

    def logs(self, spec: ClusterSpec, tail: int = 200) -> str:
        assert self.cfg.log_group
        return sec.tail_logs(self.client("logs"), self.cfg.log_group, f"{spec.name}/", tail)


def from_env() -> EcsDriver:
    """A driver from environment variables (the CLI, when no block is named)."""
    env = os.environ
    region = env.get("DOCKERPARALLEL_ECS_REGION") or env.get("AWS_REGION") or env.get("AWS_DEFAULT_REGION")
    return EcsDriver(
        region_name=region or "us-east-1",
        cluster_name=env.get("DOCKERPARALLEL_ECS_CLUSTER_NAME", "docker-parallel-cluster"),
        server_task_family=env.get("DOCKERPARALLEL_ECS_SERVER_FAMILY", "docker-parallel-server"),
        worker_task_family=env.get("DOCKERPARALLEL_ECS_WORKER_FAMILY", "docker-parallel-worker"),
        endpoint_url=env.get("DOCKERPARALLEL_ECS_ENDPOINT_URL") or env.get("AWS_ENDPOINT_URL") or None,
        profile_name=env.get("AWS_PROFILE") or None,
    )
